//! A bounded LRU cache of verified tree blocks.
//!
//! Tree blocks are immutable once written (copy-on-write), so a block is identified by where it
//! lives *and* the checksum its parent records: a block rewritten in place during a later sync
//! pass gets a new checksum, hence a new key, and a stale entry can never be returned. Memory is
//! bounded by a byte budget; the least recently used entries go first, so memory does not grow
//! with the size of the volumes.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;

use parking_lot::Mutex;

#[derive(Debug)]
struct Entry<V> {
    value: V,
    bytes: usize,
    tick: u64,
}

#[derive(Debug)]
struct Inner<K, V> {
    map: HashMap<K, Entry<V>>,
    /// tick -> key, oldest first.
    order: BTreeMap<u64, K>,
    tick: u64,
    bytes: usize,
    hits: u64,
    misses: u64,
}

/// Statistics of a [`LruCache`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Entries held.
    pub entries: usize,
    /// Bytes held (as accounted by the caller's size).
    pub bytes: usize,
    /// Lookups that found their block.
    pub hits: u64,
    /// Lookups that did not.
    pub misses: u64,
}

/// A thread-safe LRU cache with a byte budget. Values are cheap to clone (`Arc`s).
#[derive(Debug)]
pub struct LruCache<K, V> {
    inner: Mutex<Inner<K, V>>,
    limit: usize,
}

impl<K: Hash + Eq + Clone, V: Clone> LruCache<K, V> {
    /// A cache holding at most `limit` bytes.
    pub fn new(limit: usize) -> Self {
        LruCache {
            inner: Mutex::new(Inner {
                map: HashMap::new(),
                order: BTreeMap::new(),
                tick: 0,
                bytes: 0,
                hits: 0,
                misses: 0,
            }),
            limit,
        }
    }

    /// Look a block up, marking it most recently used.
    pub fn get(&self, key: &K) -> Option<V> {
        let mut g = self.inner.lock();
        g.tick += 1;
        let tick = g.tick;
        let Some(e) = g.map.get_mut(key) else {
            g.misses += 1;
            return None;
        };
        let old = e.tick;
        e.tick = tick;
        let v = e.value.clone();
        g.order.remove(&old);
        g.order.insert(tick, key.clone());
        g.hits += 1;
        Some(v)
    }

    /// Insert (or replace) a block of `bytes` bytes, evicting the oldest entries over budget.
    pub fn insert(&self, key: K, value: V, bytes: usize) {
        let mut g = self.inner.lock();
        g.tick += 1;
        let tick = g.tick;
        if let Some(old) = g.map.insert(key.clone(), Entry { value, bytes, tick }) {
            g.order.remove(&old.tick);
            g.bytes -= old.bytes;
        }
        g.order.insert(tick, key);
        g.bytes += bytes;
        while g.bytes > self.limit && g.map.len() > 1 {
            let Some((_, k)) = g.order.pop_first() else {
                break;
            };
            if let Some(e) = g.map.remove(&k) {
                g.bytes -= e.bytes;
            }
        }
    }

    /// Drop one entry if present.
    pub fn remove(&self, key: &K) {
        let mut g = self.inner.lock();
        if let Some(e) = g.map.remove(key) {
            g.order.remove(&e.tick);
            g.bytes -= e.bytes;
        }
    }

    /// Drop everything.
    pub fn clear(&self) {
        let mut g = self.inner.lock();
        g.map.clear();
        g.order.clear();
        g.bytes = 0;
    }

    /// Current statistics.
    pub fn stats(&self) -> CacheStats {
        let g = self.inner.lock();
        CacheStats {
            entries: g.map.len(),
            bytes: g.bytes,
            hits: g.hits,
            misses: g.misses,
        }
    }

    /// The byte budget.
    pub fn limit(&self) -> usize {
        self.limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_least_recently_used_within_budget() {
        let c: LruCache<u32, u32> = LruCache::new(300);
        c.insert(1, 10, 100);
        c.insert(2, 20, 100);
        c.insert(3, 30, 100);
        assert_eq!(c.get(&1), Some(10)); // 1 is now the newest
        c.insert(4, 40, 100); // evicts 2
        assert_eq!(c.get(&2), None);
        assert_eq!(c.get(&1), Some(10));
        assert_eq!(c.get(&3), Some(30));
        assert_eq!(c.get(&4), Some(40));
        let s = c.stats();
        assert_eq!((s.entries, s.bytes), (3, 300));
        c.insert(3, 31, 50);
        assert_eq!(c.stats().bytes, 250);
        c.remove(&3);
        assert_eq!(c.stats().bytes, 200);
    }
}

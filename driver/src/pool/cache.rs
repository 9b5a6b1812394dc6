//! A bounded LRU cache of verified tree blocks.
//!
//! Tree blocks are immutable once written (copy-on-write), so a block is identified by where it
//! lives *and* the checksum its parent records: a block rewritten in place during a later sync
//! pass gets a new checksum, hence a new key, and a stale entry can never be returned. Memory is
//! bounded by a byte budget; the least recently used entries go first (CLOCK / second chance,
//! so a hit never reorders anything), so memory does not grow with the size of the volumes.
//! Large caches are split into shards by key hash so reactors do not serialize on one lock.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hash};
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;

/// Budget per shard below which the cache is not split (a tiny cache stays one exact LRU).
const MIN_SHARD_BYTES: usize = 4 << 20;
/// Most shards (reactors contend on one shard lock only when they hit the same shard).
const MAX_SHARDS: usize = 16;

/// A fast, non-cryptographic hasher (FxHash-style multiply-rotate): the keys are block
/// addresses and checksums of verified blocks, and a lookup runs on every read, so SipHash's
/// cost (and its flooding resistance, which nothing here needs) is not worth it.
#[derive(Debug, Default, Clone, Copy)]
pub struct FastHasher(u64);

const FX_K: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl FastHasher {
    fn add(&mut self, w: u64) {
        self.0 = (self.0.rotate_left(5) ^ w).wrapping_mul(FX_K);
    }
}

impl std::hash::Hasher for FastHasher {
    fn finish(&self) -> u64 {
        // Fold the high bits down: HashMap uses the low bits for buckets, the shard index
        // the high ones.
        self.0 ^ (self.0 >> 29)
    }
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.add(u64::from_le_bytes(w));
        }
        for b in chunks.remainder() {
            self.add(u64::from(*b));
        }
    }
    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }
    fn write_u16(&mut self, i: u16) {
        self.add(u64::from(i));
    }
    fn write_u32(&mut self, i: u32) {
        self.add(u64::from(i));
    }
    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }
}

type FastBuild = std::hash::BuildHasherDefault<FastHasher>;

#[derive(Debug)]
struct Entry<V> {
    value: V,
    bytes: usize,
    /// Set on every hit; eviction gives a referenced entry a second chance instead of
    /// reordering on every hit (a hit is then a hash lookup and a flag store).
    referenced: AtomicBool,
    /// Generation of this entry's slot in the queue (stale queue slots are skipped).
    gen: u64,
}

#[derive(Debug)]
struct Inner<K, V> {
    map: HashMap<K, Entry<V>, FastBuild>,
    /// Insertion order (oldest first) as (key, generation); may hold stale slots.
    queue: VecDeque<(K, u64)>,
    gen: u64,
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

/// A thread-safe cache with a byte budget evicting (approximately) the least recently used
/// entries: CLOCK / second chance per shard. Values are cheap to clone (`Arc`s).
#[derive(Debug)]
pub struct LruCache<K, V> {
    shards: Vec<Mutex<Inner<K, V>>>,
    hasher: FastBuild,
    limit: usize,
    shard_limit: usize,
}

impl<K: Hash + Eq + Clone, V: Clone> LruCache<K, V> {
    /// A cache holding at most `limit` bytes.
    pub fn new(limit: usize) -> Self {
        let n = (limit / MIN_SHARD_BYTES).clamp(1, MAX_SHARDS);
        LruCache {
            shards: (0..n)
                .map(|_| {
                    Mutex::new(Inner {
                        map: HashMap::default(),
                        queue: VecDeque::new(),
                        gen: 0,
                        bytes: 0,
                        hits: 0,
                        misses: 0,
                    })
                })
                .collect(),
            hasher: FastBuild::default(),
            limit,
            shard_limit: limit / n,
        }
    }

    fn shard(&self, key: &K) -> &Mutex<Inner<K, V>> {
        if self.shards.len() == 1 {
            return &self.shards[0];
        }
        let h = self.hasher.hash_one(key);
        let i = usize::try_from((h >> 48) % self.shards.len() as u64).unwrap_or(0);
        &self.shards[i]
    }

    /// Look a block up, marking it recently used.
    pub fn get(&self, key: &K) -> Option<V> {
        let mut g = self.shard(key).lock();
        let Some(e) = g.map.get(key) else {
            g.misses += 1;
            return None;
        };
        e.referenced.store(true, Ordering::Relaxed);
        let v = e.value.clone();
        g.hits += 1;
        Some(v)
    }

    /// Insert (or replace) a block of `bytes` bytes, evicting old entries over budget.
    pub fn insert(&self, key: K, value: V, bytes: usize) {
        let mut g = self.shard(&key).lock();
        g.gen += 1;
        let gen = g.gen;
        let entry = Entry {
            value,
            bytes,
            referenced: AtomicBool::new(false),
            gen,
        };
        if let Some(old) = g.map.insert(key.clone(), entry) {
            g.bytes -= old.bytes;
        }
        g.queue.push_back((key, gen));
        g.bytes += bytes;
        // Second chance: a referenced entry at the head goes to the back (flag cleared); the
        // first unreferenced one is evicted. Every entry is passed over at most once per
        // eviction round, so this ends.
        let mut budget = g.queue.len() * 2 + 1;
        while g.bytes > self.shard_limit && g.map.len() > 1 && budget > 0 {
            budget -= 1;
            let Some((k, gen)) = g.queue.pop_front() else {
                break;
            };
            let verdict = match g.map.get(&k) {
                Some(e) if e.gen == gen => Some(e.referenced.swap(false, Ordering::Relaxed)),
                _ => None, // stale slot
            };
            match verdict {
                Some(true) => {
                    g.gen += 1;
                    let ng = g.gen;
                    if let Some(e) = g.map.get_mut(&k) {
                        e.gen = ng;
                    }
                    g.queue.push_back((k, ng));
                }
                Some(false) => {
                    if let Some(e) = g.map.remove(&k) {
                        g.bytes -= e.bytes;
                    }
                }
                None => {}
            }
        }
        // Keep stale slots from piling up (entries replaced or removed).
        if g.queue.len() > 2 * g.map.len() + 64 {
            let Inner { map, queue, .. } = &mut *g;
            queue.retain(|(k, gen)| map.get(k).is_some_and(|e| e.gen == *gen));
        }
    }

    /// Drop one entry if present.
    pub fn remove(&self, key: &K) {
        let mut g = self.shard(key).lock();
        if let Some(e) = g.map.remove(key) {
            g.bytes -= e.bytes;
        }
    }

    /// Drop everything.
    pub fn clear(&self) {
        for s in &self.shards {
            let mut g = s.lock();
            g.map.clear();
            g.queue.clear();
            g.bytes = 0;
        }
    }

    /// Current statistics.
    pub fn stats(&self) -> CacheStats {
        let mut out = CacheStats::default();
        for s in &self.shards {
            let g = s.lock();
            out.entries += g.map.len();
            out.bytes += g.bytes;
            out.hits += g.hits;
            out.misses += g.misses;
        }
        out
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
    fn large_cache_is_sharded_and_stays_within_budget() {
        let c: LruCache<u32, u32> = LruCache::new(64 << 20);
        assert!(c.shards.len() > 1);
        for i in 0..40_000u32 {
            c.insert(i, i, 4096);
            if i % 3 == 0 {
                // Hot keys keep being hit.
                let _ = c.get(&0);
            }
        }
        let s = c.stats();
        assert!(s.bytes <= 64 << 20, "{s:?}");
        assert!(s.entries >= (48 << 20) / 4096, "{s:?}");
        assert_eq!(c.get(&0), Some(0), "a hot entry survives");
        assert_eq!(c.get(&39_999), Some(39_999));
    }

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

//! `BlockMap`: an ordered map stored as a sorted list of sorted leaves (a B+tree of height two).
//!
//! Why not `std::collections::BTreeMap`: a range tree does a handful of ordered lookups per
//! allocation and per free; `BTreeMap` nodes hold 11 entries, so every lookup chases 4-6
//! pointers into cold memory and most updates (split segment, merge neighbours) cost a full
//! remove + insert descent each. Here:
//! * the leaf directory `mins` (first key of every leaf) is one dense array, binary-searched
//!   (a metaslab with 100k segments has ~1000 leaves: 4-8 KiB, cache resident);
//! * a leaf is one contiguous array of up to `CAP` entries (1 KiB for a range tree's 8-byte
//!   entries), binary-searched and updated in place with a short `memmove`;
//! * positions ([`Pos`]) let a caller look up once and then read, rewrite the value, rewrite
//!   the key (when the order is kept), step to the neighbours or remove, without a second
//!   descent;
//! * memory is allocated only when a leaf splits (never per operation), and leaves are kept at
//!   least a quarter full (merging or rebalancing with a neighbour), so a map of `n` 8-byte
//!   entries uses about `8n / fill` bytes (fill ~ 0.7 under random updates).
//!
//! A directory insert/remove (leaf split or merge) shifts the directory: O(n / CAP), rare.

use std::fmt;

/// Default entries per leaf.
pub const DEFAULT_CAP: usize = 128;

/// A position in a [`BlockMap`]; valid until the map is next modified structurally (insert or
/// remove). `set_val`/`set_key` keep positions valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pos {
    leaf: usize,
    idx: usize,
}

/// Ordered map of `K -> V` (see the module documentation).
#[derive(Clone)]
pub struct BlockMap<K, V, const CAP: usize = DEFAULT_CAP> {
    /// `mins[i]` = first key of `leaves[i]`; no leaf is empty.
    mins: Vec<K>,
    leaves: Vec<Vec<(K, V)>>,
    len: usize,
}

impl<K, V, const CAP: usize> Default for BlockMap<K, V, CAP> {
    fn default() -> Self {
        Self {
            mins: Vec::new(),
            leaves: Vec::new(),
            len: 0,
        }
    }
}

impl<K, V, const CAP: usize> fmt::Debug for BlockMap<K, V, CAP> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlockMap")
            .field("len", &self.len)
            .field("leaves", &self.leaves.len())
            .finish()
    }
}

impl<K: Copy + Ord, V: Copy, const CAP: usize> BlockMap<K, V, CAP> {
    const MIN_FILL: usize = CAP / 4;

    /// An empty map.
    pub fn new() -> Self {
        assert!(CAP >= 4, "leaf capacity too small");
        Self::default()
    }

    /// A map of `entries`, which must be sorted by key without duplicates (checked; `None`
    /// otherwise). Leaves are filled to three quarters so the next inserts do not split at once.
    pub fn from_sorted(entries: &[(K, V)]) -> Option<Self> {
        if entries.windows(2).any(|w| w[0].0 >= w[1].0) {
            return None;
        }
        let mut m = Self::new();
        let per = (CAP * 3 / 4).max(1);
        m.leaves.reserve(entries.len().div_ceil(per));
        m.mins.reserve(entries.len().div_ceil(per));
        for chunk in entries.chunks(per) {
            let mut l = Vec::with_capacity(CAP);
            l.extend_from_slice(chunk);
            m.mins.push(chunk[0].0);
            m.leaves.push(l);
        }
        m.len = entries.len();
        Some(m)
    }

    /// Number of entries.
    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    /// No entries.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Remove every entry (releases the leaves).
    pub fn clear(&mut self) {
        self.mins.clear();
        self.leaves.clear();
        self.len = 0;
    }

    /// Heap bytes held (leaf arrays and the directory), for memory accounting.
    pub fn heap_bytes(&self) -> usize {
        self.leaves.len() * CAP * std::mem::size_of::<(K, V)>()
            + self.leaves.capacity() * std::mem::size_of::<Vec<(K, V)>>()
            + self.mins.capacity() * std::mem::size_of::<K>()
    }

    /// The entry at `p`.
    #[inline]
    pub fn get(&self, p: Pos) -> (K, V) {
        self.leaves[p.leaf][p.idx]
    }

    /// Rewrite the value at `p`.
    #[inline]
    pub fn set_val(&mut self, p: Pos, v: V) {
        self.leaves[p.leaf][p.idx].1 = v;
    }

    /// Rewrite the key at `p`. The caller guarantees the new key sorts strictly between the
    /// keys of `p`'s neighbours (debug-checked).
    #[inline]
    pub fn set_key(&mut self, p: Pos, k: K) {
        debug_assert!(self.prev(p).is_none_or(|q| self.get(q).0 < k));
        debug_assert!(self.next(p).is_none_or(|q| self.get(q).0 > k));
        self.leaves[p.leaf][p.idx].0 = k;
        if p.idx == 0 {
            self.mins[p.leaf] = k;
        }
    }

    /// Position of the last entry with key `<= k`.
    #[inline]
    pub fn pred(&self, k: K) -> Option<Pos> {
        let li = dir_partition(&self.mins, |m| m <= k);
        if li == 0 {
            return None;
        }
        let leaf = li - 1;
        // mins[leaf] <= k, so at least the first entry qualifies.
        let idx = leaf_partition(&self.leaves[leaf], |e| e <= k) - 1;
        Some(Pos { leaf, idx })
    }

    /// Position of the last entry with key `< k`.
    #[inline]
    pub fn pred_lt(&self, k: K) -> Option<Pos> {
        let li = dir_partition(&self.mins, |m| m < k);
        if li == 0 {
            return None;
        }
        let leaf = li - 1;
        let idx = leaf_partition(&self.leaves[leaf], |e| e < k) - 1;
        Some(Pos { leaf, idx })
    }

    /// For each of `keys`, the position of the last entry with key `< k` (like
    /// [`BlockMap::pred_lt`]), appended to `out`. The leaves of the keys `AHEAD` places later are
    /// requested while a key is searched, so the cache misses of cold leaves overlap instead of
    /// being paid one after another.
    pub fn pred_lt_many(&self, keys: &[K], out: &mut Vec<Option<Pos>>) {
        const AHEAD: usize = 12;
        for &k in keys.iter().take(AHEAD) {
            self.prefetch(k);
        }
        for (i, &k) in keys.iter().enumerate() {
            if let Some(&ka) = keys.get(i + AHEAD) {
                self.prefetch(ka);
            }
            out.push(self.pred_lt(k));
        }
    }

    /// Start loading, into the cache, the whole leaf that a lookup of `k` (`pred`, `pred_lt`,
    /// `insert`, `remove`) will binary-search. A cold leaf costs one memory latency per probe
    /// (about 5 dependent misses for 128 entries); prefetched, the misses overlap, with each
    /// other and with work on other keys. Only the (small, hot) directory is searched here.
    #[inline]
    pub fn prefetch(&self, k: K) {
        let li = dir_partition(&self.mins, |m| m <= k).saturating_sub(1);
        if let Some(leaf) = self.leaves.get(li) {
            prefetch_slice(leaf);
        }
    }

    /// Like [`BlockMap::prefetch`] for keys visited in ascending order: the leaf is requested
    /// only when it is not `last` (the previous call's result, which it returns), so a run of
    /// keys in one leaf requests it once.
    #[inline]
    pub fn prefetch_once(&self, k: K, last: usize) -> usize {
        let li = dir_partition(&self.mins, |m| m <= k).saturating_sub(1);
        if li != last {
            if let Some(leaf) = self.leaves.get(li) {
                prefetch_slice(leaf);
            }
        }
        li
    }

    /// Like [`BlockMap::prefetch`], returning the leaf it requested: a hint for
    /// [`BlockMap::insert_hinted`] and [`BlockMap::remove_hinted`], which then skip the
    /// directory search (checked there, so a hint gone stale by a split or merge in between
    /// costs only the search it would have saved).
    #[inline]
    pub fn prefetch_hint(&self, k: K) -> usize {
        let li = dir_partition(&self.mins, |m| m <= k).saturating_sub(1);
        if let Some(leaf) = self.leaves.get(li) {
            prefetch_slice(leaf);
        }
        li
    }

    /// The leaf a lookup of `k` searches: `hint` when it is that leaf (two compares on the
    /// hot directory), else found by a directory search.
    #[inline]
    fn leaf_for(&self, k: K, hint: usize) -> usize {
        let n = self.mins.len();
        if hint < n
            && (hint == 0 || self.mins[hint] <= k)
            && (hint + 1 >= n || self.mins[hint + 1] > k)
        {
            return hint;
        }
        dir_partition(&self.mins, |m| m <= k).saturating_sub(1)
    }

    /// Replaces `k`'s value in `leaf` when present, else inserts it there (the leaf whose
    /// range holds `k`).
    #[inline]
    fn insert_in_leaf(&mut self, leaf: usize, k: K, v: V) -> Option<V> {
        let idx = leaf_partition(&self.leaves[leaf], |e| e < k);
        if let Some(e) = self.leaves[leaf].get_mut(idx) {
            if e.0 == k {
                return Some(std::mem::replace(&mut e.1, v));
            }
        }
        self.insert_at(leaf, idx, k, v);
        None
    }

    /// [`BlockMap::insert`] in the leaf `hint` names (a [`BlockMap::prefetch_hint`] result;
    /// any value is safe: a wrong hint is ignored).
    pub fn insert_hinted(&mut self, k: K, v: V, hint: usize) -> Option<V> {
        if self.leaves.is_empty() {
            return self.insert(k, v);
        }
        let leaf = self.leaf_for(k, hint);
        self.insert_in_leaf(leaf, k, v)
    }

    /// [`BlockMap::remove`] in the leaf `hint` names (see [`BlockMap::insert_hinted`]).
    pub fn remove_hinted(&mut self, k: K, hint: usize) -> Option<V> {
        if self.leaves.is_empty() {
            return None;
        }
        let leaf = self.leaf_for(k, hint);
        let idx = leaf_partition(&self.leaves[leaf], |e| e <= k).checked_sub(1)?;
        if self.leaves[leaf][idx].0 != k {
            return None;
        }
        Some(self.remove_at(Pos { leaf, idx }).1)
    }

    /// Position of the first entry with key `>= k`.
    #[inline]
    pub fn succ(&self, k: K) -> Option<Pos> {
        let li = dir_partition(&self.mins, |m| m < k);
        if li > 0 {
            let leaf = li - 1;
            let idx = leaf_partition(&self.leaves[leaf], |e| e < k);
            if idx < self.leaves[leaf].len() {
                return Some(Pos { leaf, idx });
            }
        }
        (li < self.leaves.len()).then_some(Pos { leaf: li, idx: 0 })
    }

    /// Position of the entry with key `k`.
    #[inline]
    pub fn find(&self, k: K) -> Option<Pos> {
        self.pred(k).filter(|&p| self.get(p).0 == k)
    }

    /// Whether key `k` is present.
    pub fn contains_key(&self, k: K) -> bool {
        self.find(k).is_some()
    }

    /// The entry after `p`.
    #[inline]
    pub fn next(&self, p: Pos) -> Option<Pos> {
        if p.idx + 1 < self.leaves[p.leaf].len() {
            Some(Pos {
                leaf: p.leaf,
                idx: p.idx + 1,
            })
        } else {
            (p.leaf + 1 < self.leaves.len()).then_some(Pos {
                leaf: p.leaf + 1,
                idx: 0,
            })
        }
    }

    /// The entry before `p`.
    #[inline]
    pub fn prev(&self, p: Pos) -> Option<Pos> {
        if p.idx > 0 {
            Some(Pos {
                leaf: p.leaf,
                idx: p.idx - 1,
            })
        } else if p.leaf > 0 {
            let leaf = p.leaf - 1;
            Some(Pos {
                leaf,
                idx: self.leaves[leaf].len() - 1,
            })
        } else {
            None
        }
    }

    /// The entry at `p` if `p` is a position of the map (a position kept across changes may
    /// point past a leaf's end or at another entry: the caller checks the entry).
    #[inline]
    pub fn get_checked(&self, p: Pos) -> Option<(K, V)> {
        self.leaves.get(p.leaf)?.get(p.idx).copied()
    }

    /// Position of the first entry.
    #[inline]
    pub fn first_pos(&self) -> Option<Pos> {
        (!self.leaves.is_empty()).then_some(Pos { leaf: 0, idx: 0 })
    }

    /// First entry.
    pub fn first(&self) -> Option<(K, V)> {
        self.leaves.first().map(|l| l[0])
    }

    /// Last entry.
    #[inline]
    pub fn last(&self) -> Option<(K, V)> {
        self.leaves.last().and_then(|l| l.last().copied())
    }

    /// Insert `k -> v`; returns the previous value when `k` was present (then replaced).
    pub fn insert(&mut self, k: K, v: V) -> Option<V> {
        if self.leaves.is_empty() {
            let mut l = Vec::with_capacity(CAP);
            l.push((k, v));
            self.leaves.push(l);
            self.mins.push(k);
            self.len = 1;
            return None;
        }
        let leaf = dir_partition(&self.mins, |m| m <= k).saturating_sub(1);
        self.insert_in_leaf(leaf, k, v)
    }

    /// Insert `k -> v` unless `conflict(prev, next)` says no, where `prev` and `next` are the
    /// entries that would precede and follow `k` (`next` may have key `k` itself): one descent
    /// for a check against the neighbours and the insert (a queue of disjoint ranges refusing
    /// an overlapping one). Returns whether it inserted.
    pub fn insert_unless(
        &mut self,
        k: K,
        v: V,
        conflict: impl FnOnce(Option<(K, V)>, Option<(K, V)>) -> bool,
    ) -> bool {
        if self.leaves.is_empty() {
            if conflict(None, None) {
                return false;
            }
            self.insert(k, v);
            return true;
        }
        let leaf = dir_partition(&self.mins, |m| m <= k).saturating_sub(1);
        let l = &self.leaves[leaf];
        let idx = leaf_partition(l, |e| e < k);
        // idx == 0 only in the first leaf or when `k` is that leaf's first key (the directory
        // picked the last leaf starting at or before `k`): no predecessor to check then, or
        // `next` is `k` itself.
        let prev = idx.checked_sub(1).map(|i| l[i]);
        let next = l
            .get(idx)
            .copied()
            .or_else(|| self.leaves.get(leaf + 1).map(|n| n[0]));
        if conflict(prev, next) || next.is_some_and(|n| n.0 == k) {
            return false;
        }
        self.insert_at(leaf, idx, k, v);
        true
    }

    /// Insert `k -> v` right after position `p` (at the front when `None`), from a lookup
    /// the caller just made: no second descent. The caller guarantees that `k` sorts strictly
    /// between the entry at `p` and the one after it (debug-checked).
    pub fn insert_after(&mut self, p: Option<Pos>, k: K, v: V) {
        debug_assert!(p.is_none_or(|q| self.get(q).0 < k));
        debug_assert!(match p {
            Some(q) => self.next(q).is_none_or(|n| self.get(n).0 > k),
            None => self.first().is_none_or(|f| f.0 > k),
        });
        match p {
            _ if self.leaves.is_empty() => {
                self.insert(k, v);
            }
            Some(q) => self.insert_at(q.leaf, q.idx + 1, k, v),
            None => self.insert_at(0, 0, k, v),
        }
    }

    /// Insert a new key at its place `idx` of `leaf` (splitting a full leaf).
    fn insert_at(&mut self, mut leaf: usize, mut idx: usize, k: K, v: V) {
        if self.leaves[leaf].len() >= CAP {
            let half = CAP / 2;
            let mut right = Vec::with_capacity(CAP);
            right.extend_from_slice(&self.leaves[leaf][half..]);
            self.leaves[leaf].truncate(half);
            self.mins.insert(leaf + 1, right[0].0);
            self.leaves.insert(leaf + 1, right);
            if idx > half {
                leaf += 1;
                idx -= half;
            }
        }
        self.leaves[leaf].insert(idx, (k, v));
        if idx == 0 {
            self.mins[leaf] = k;
        }
        self.len += 1;
    }

    /// Remove the entry at `p` and return it.
    pub fn remove_at(&mut self, p: Pos) -> (K, V) {
        let e = self.leaves[p.leaf].remove(p.idx);
        self.len -= 1;
        let n = self.leaves[p.leaf].len();
        if n == 0 {
            self.leaves.remove(p.leaf);
            self.mins.remove(p.leaf);
            return e;
        }
        if p.idx == 0 {
            self.mins[p.leaf] = self.leaves[p.leaf][0].0;
        }
        if n < Self::MIN_FILL && self.leaves.len() > 1 {
            self.rebalance(p.leaf);
        }
        e
    }

    /// Remove key `k`; returns its value when present.
    pub fn remove(&mut self, k: K) -> Option<V> {
        let p = self.find(k)?;
        Some(self.remove_at(p).1)
    }

    /// Leaf `i` fell below a quarter: merge it with a neighbour, or even the two out.
    fn rebalance(&mut self, i: usize) {
        let a = if i + 1 < self.leaves.len() { i } else { i - 1 };
        let b = a + 1;
        let (la, lb) = (self.leaves[a].len(), self.leaves[b].len());
        let total = la + lb;
        if total <= CAP {
            let right = self.leaves.remove(b);
            self.mins.remove(b);
            self.leaves[a].extend_from_slice(&right);
            return;
        }
        let keep = total / 2;
        let (left, rest) = self.leaves.split_at_mut(b);
        let (la_v, lb_v) = (&mut left[a], &mut rest[0]);
        if la < lb {
            let n = lb - (total - keep);
            la_v.extend_from_slice(&lb_v[..n]);
            lb_v.drain(..n);
        } else {
            let n = la - keep;
            lb_v.extend_from_slice(&la_v[keep..]);
            lb_v.rotate_right(n);
            la_v.truncate(keep);
        }
        self.mins[b] = self.leaves[b][0].0;
    }

    /// Entries in key order.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = (K, V)> + '_ {
        self.leaves.iter().flat_map(|l| l.iter().copied())
    }

    /// Entries from position `p` (inclusive) in key order.
    pub fn iter_at(&self, p: Option<Pos>) -> impl Iterator<Item = (K, V)> + '_ {
        let (first, rest) = match p {
            Some(p) => (&self.leaves[p.leaf][p.idx..], &self.leaves[p.leaf + 1..]),
            None => (&[][..], &[][..]),
        };
        first
            .iter()
            .copied()
            .chain(rest.iter().flat_map(|l| l.iter().copied()))
    }

    /// Entries with key `>= k` in key order.
    pub fn iter_from(&self, k: K) -> impl Iterator<Item = (K, V)> + '_ {
        self.iter_at(self.succ(k))
    }

    /// Take every entry out (the map is left empty), in key order.
    pub fn drain_all(&mut self) -> impl Iterator<Item = (K, V)> {
        let leaves = std::mem::take(&mut self.leaves);
        self.mins.clear();
        self.len = 0;
        leaves.into_iter().flatten()
    }

    /// Check the structure: keys strictly increasing, directory consistent, no empty or
    /// over-full leaf, length right.
    pub fn check(&self) -> Result<(), String> {
        if self.mins.len() != self.leaves.len() {
            return Err("directory length differs from leaf count".into());
        }
        let mut n = 0usize;
        let mut prev: Option<K> = None;
        for (i, l) in self.leaves.iter().enumerate() {
            if l.is_empty() || l.len() > CAP {
                return Err(format!("leaf {i} has {} entries (cap {CAP})", l.len()));
            }
            if self.mins[i] != l[0].0 {
                return Err(format!("directory key of leaf {i} is stale"));
            }
            for e in l {
                if prev.is_some_and(|p| p >= e.0) {
                    return Err(format!("keys out of order in leaf {i}"));
                }
                prev = Some(e.0);
            }
            n += l.len();
        }
        if n != self.len {
            return Err(format!("length {} != {n} entries", self.len));
        }
        Ok(())
    }
}

/// Entries per group of [`leaf_partition`]'s first round.
const GROUP: usize = 16;

/// Ranges at most this long are searched by [`dir_partition`] with one counting pass.
const LINEAR_MAX: usize = 32;

/// `partition_point` of a leaf by key (`pred` true on a prefix), in two rounds of independent
/// loads instead of a binary search's chain of ~7 dependent ones: count the group heads (every
/// `GROUP`-th key) that satisfy `pred`, then count inside the one group where the prefix ends.
/// A binary search of a cold leaf waits for one miss per probe; here the misses of each round
/// overlap, and a warm leaf costs ~2 x `GROUP` compares without unpredictable branches.
#[inline]
fn leaf_partition<K: Copy, V>(leaf: &[(K, V)], pred: impl Fn(K) -> bool) -> usize {
    let n = leaf.len();
    let mut g = 0usize;
    let mut i = GROUP;
    while i < n {
        g += usize::from(pred(leaf[i].0));
        i += GROUP;
    }
    // Every key before `base` satisfies `pred` (the head at `base` does, or base = 0) and the
    // head after the group does not (or is past the end).
    let base = g * GROUP;
    let end = (base + GROUP).min(n);
    base + leaf[base..end].iter().filter(|e| pred(e.0)).count()
}

/// `partition_point` of the leaf directory: binary steps while the range is long (the top
/// levels of a hot directory stay cached), then one counting pass over the last
/// `LINEAR_MAX` keys (independent loads, no unpredictable branches).
#[inline]
fn dir_partition<K: Copy>(keys: &[K], pred: impl Fn(K) -> bool) -> usize {
    let mut lo = 0usize;
    let mut len = keys.len();
    while len > LINEAR_MAX {
        let half = len / 2;
        // pred(keys[lo + half - 1]) true: the whole lower half is in the prefix. Otherwise the
        // end lies in the first `half` keys, and keeping `len - half >= half` of them is still
        // right (the branch-free form of the step).
        if pred(keys[lo + half - 1]) {
            lo += half;
        }
        len -= half;
    }
    lo + keys[lo..lo + len].iter().filter(|&&k| pred(k)).count()
}

/// Prefetch every cache line of `s` (a hint: no effect on results).
#[inline]
fn prefetch_slice<T>(s: &[T]) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let p = s.as_ptr().cast::<i8>();
        let bytes = std::mem::size_of_val(s);
        let mut off = 0;
        while off < bytes {
            // SAFETY: SSE is part of the x86_64 baseline, so the intrinsic's target feature is
            // always present; a prefetch never faults and does not access memory
            // architecturally (the address is inside the slice anyway: off < bytes).
            unsafe { _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(off)) };
            off += 64;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = s;
}

#[cfg(test)]
mod tests;

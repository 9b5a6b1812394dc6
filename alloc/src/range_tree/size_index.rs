//! The by-size index of a [`RangeTree`]: building and dropping it, its size floor, the
//! largest-segment hint kept beside it, and the per-segment index updates.
//!
//! Segments shorter than the floor are kept out of the index (ZFS `range_tree` ops with
//! `mra_floor_shift` = `metaslab_by_size_min_shift`): they are only in the offset index and the
//! histogram. On a fragmented metaslab most free segments are a few units long, and every
//! deferred free merged into one costs up to three by-size updates (old neighbour out, grown
//! neighbour in, swallowed neighbour out), each into a different, cold leaf. Below the floor
//! those updates are skipped; requests smaller than the floor find space with
//! [`RangeTree::find_near_fit`] (offset order, from a cursor) before they fall back to the
//! index. Best fit stays exact for requests at or above the floor: every candidate is indexed.

use super::{hist_bucket, RangeTree, SegUnit, NO_HINT};
use crate::blockmap::BlockMap;

impl<U: SegUnit> RangeTree<U> {
    /// Keep segments shorter than `bytes` (rounded up to whole units) out of the by-size index;
    /// 0 or one unit indexes every segment. A built index is rebuilt for the new floor.
    pub fn set_size_floor(&mut self, bytes: u64) {
        let floor = bytes.div_ceil(1 << self.shift);
        if floor == self.floor {
            return;
        }
        self.floor = floor;
        if self.by_size.take().is_some() {
            self.build_size_index();
        }
    }

    /// The size floor in bytes (segments shorter than this are not in the by-size index).
    pub fn size_floor(&self) -> u64 {
        self.floor << self.shift
    }

    /// Whether a segment of `len` units belongs in the by-size index.
    #[inline]
    pub(super) fn indexes(&self, len: u64) -> bool {
        len >= self.floor
    }

    /// Release the by-size index (ZFS keeps only large segments of idle metaslabs indexed;
    /// we keep none): adds and removes then touch the offset index only, and `largest` stays
    /// O(1) as long as only adds happen. [`RangeTree::find_best`] scans until
    /// [`RangeTree::build_size_index`] runs.
    pub fn drop_size_index(&mut self) {
        if let Some(ix) = self.by_size.take() {
            match ix.last() {
                Some((k, ())) => {
                    self.largest_hint = U::unpack(k).0;
                    self.largest_exact = true;
                }
                None if self.by_start.is_empty() => {
                    self.largest_hint = 0;
                    self.largest_exact = true;
                }
                // Only segments below the floor: the kept hint still bounds them.
                None => {}
            }
        }
    }

    /// Make the largest-segment hint exact (a scan when it is only a bound and no indexed
    /// segment gives the answer), so [`RangeTree::largest_bound`] is exact.
    pub fn refresh_largest(&mut self) {
        let index_answers = self.by_size.as_ref().is_some_and(|ix| !ix.is_empty());
        if !index_answers && !self.largest_exact {
            self.largest_hint = self.longest_scan();
            self.largest_exact = true;
        }
    }

    /// Build the by-size index of an indexed tree if it is not built (ZFS
    /// `metaslab_size_tree_full_load`): one sort of the segments at or above the floor,
    /// O(n log n). No-op for trees without an index.
    pub fn build_size_index(&mut self) {
        // A compact tree's summaries answer best fit instead (see `compact`).
        if !self.indexed || self.by_size.is_some() || self.is_compact() {
            return;
        }
        let mut keys: Vec<(U::SizeKey, ())> = self
            .by_start
            .iter()
            .filter(|(_, l)| self.indexes(l.get()))
            .map(|(s, l)| (U::size_key(l.get(), s.get()), ()))
            .collect();
        keys.sort_unstable();
        // Keys are distinct (distinct starts), so the sorted build cannot fail.
        let ix = BlockMap::from_sorted(&keys).unwrap_or_default();
        if let Some((k, ())) = ix.last() {
            self.largest_hint = U::unpack(k).0;
            self.largest_exact = true;
        }
        self.by_size = Some(ix);
    }

    /// The longest segment in units, by a scan of the segments.
    pub(super) fn longest_scan(&self) -> u64 {
        match self.compact_longest() {
            Some(l) => l,
            None => self
                .by_start
                .iter()
                .map(|(_, l)| l.get())
                .max()
                .unwrap_or(0),
        }
    }

    /// Account a new segment: histogram, largest hint, and the by-size index when it is built
    /// and the segment reaches the floor (`hint`: its leaf, from `prefetch_size_keys`).
    #[inline]
    pub(super) fn index_insert(&mut self, start: u64, len: u64, hint: usize) {
        self.hist[hist_bucket(len << self.shift)] += 1;
        self.large.add(len);
        if len >= self.largest_hint {
            // The hint bounds every other segment, so this one is the longest.
            self.largest_hint = len;
            self.largest_exact = true;
        }
        if len >= self.floor {
            if let Some(ix) = self.by_size.as_mut() {
                ix.insert_hinted(U::size_key(len, start), (), hint);
            }
        }
    }

    /// Undo [`RangeTree::index_insert`] for a segment that goes away.
    #[inline]
    pub(super) fn index_remove(&mut self, start: u64, len: u64, hint: usize) {
        self.hist[hist_bucket(len << self.shift)] -= 1;
        self.large.sub(len);
        if len >= self.largest_hint {
            // Possibly the longest one went: the hint is only a bound now.
            self.largest_exact = false;
        }
        if len >= self.floor {
            if let Some(ix) = self.by_size.as_mut() {
                ix.remove_hinted(U::size_key(len, start), hint);
            }
        }
    }

    /// Start loading the by-size leaves that the index updates of `(len, start)` keys (units;
    /// len 0 = none) will search, so their cache misses overlap instead of following each other.
    /// Returns the leaves found, as hints for `index_insert`/`index_remove` (which then skip
    /// the directory search; `NO_HINT` for none). Keys below the floor are skipped: they are
    /// not updated.
    #[inline]
    pub(super) fn prefetch_size_keys(&self, keys: [(u64, u64); 3]) -> [usize; 3] {
        let mut hints = [NO_HINT; 3];
        if let Some(ix) = &self.by_size {
            for (h, (l, s)) in hints.iter_mut().zip(keys) {
                if l > 0 && l >= self.floor {
                    *h = ix.prefetch_hint(U::size_key(l, s));
                }
            }
        }
        hints
    }
}

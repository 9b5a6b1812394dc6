//! Moving one [`RangeTree`] into another: O(1) swap into an empty tree, a linear merge of
//! sorted runs for large batches, per-segment adds with prefetched destination leaves
//! otherwise (the deferred frees of a txg into a metaslab's free tree).

use super::{
    hist_bucket, LargeSegs, RangeTree, Seg, SegUnit, BULK_MERGE_RATIO, HISTOGRAM_BUCKETS,
    MOVE_PREFETCH_AHEAD, NO_HINT,
};
use crate::blockmap::BlockMap;
use crate::error::AllocError;

impl<U: SegUnit> RangeTree<U> {
    /// Empty the tree into `dst` (every segment added there). O(1) when `dst` is empty and has
    /// the same geometry and indexing. On error (overlap), the segments not yet moved stay
    /// in `self` and the ones moved stay in `dst`.
    pub fn move_into(&mut self, dst: &mut RangeTree<U>) -> Result<(), AllocError> {
        // A compact destination takes the per-segment adds below (a word or two each).
        self.expand();
        if dst.is_empty()
            && !dst.is_compact()
            && dst.base == self.base
            && dst.shift == self.shift
            && dst.span == self.span
            && dst.indexed == self.indexed
            && dst.floor == self.floor
            && dst.large.min == self.large.min
        {
            std::mem::swap(self, dst);
            return Ok(());
        }
        let same_geometry =
            dst.base == self.base && dst.shift == self.shift && dst.span == self.span;
        if same_geometry
            && !dst.is_compact()
            && self.by_start.len().saturating_mul(BULK_MERGE_RATIO) >= dst.by_start.len()
            && dst.bulk_merge(self)
        {
            self.clear();
            return Ok(());
        }
        let map = std::mem::take(&mut self.by_start);
        self.clear();
        // The destination leaves are cold (a metaslab's free tree, visited once per txg):
        // prefetch a few segments ahead so the misses overlap.
        // The source is sorted: a run of segments bound for one leaf requests it once.
        let mut ahead = map.iter().skip(MOVE_PREFETCH_AHEAD);
        let mut last_leaf = usize::MAX;
        for (i, (s, l)) in map.iter().enumerate() {
            if let Some((ps, pl)) = ahead.next() {
                let (ps, pl) = (self.to_bytes(ps.get()), pl.get() << self.shift);
                last_leaf = dst.prefetch_range_once(ps, pl, last_leaf);
            }
            let (s, l) = (s.get(), l.get());
            if let Err(e) = dst.add(self.to_bytes(s), l << self.shift) {
                // Put back what was not moved (this segment included).
                for (s, l) in map.iter().skip(i) {
                    let (s, l) = (s.get(), l.get());
                    self.by_start.insert(U::from_u64(s), U::from_u64(l));
                    self.index_insert(s, l, NO_HINT);
                    self.space += l << self.shift;
                }
                return Err(e);
            }
        }
        Ok(())
    }

    /// Merge every segment of `src` (same geometry) into `self` in one linear pass over both
    /// trees, rebuilding the indexes from sorted runs: O(n + m) sequential work instead of `m`
    /// cold descents, each with its by-size updates. Returns false, changing nothing, when a
    /// segment of `src` overlaps one of `self` (the caller then takes the per-segment path,
    /// which reports the overlap). `src` is left as it was (the caller clears it).
    fn bulk_merge(&mut self, src: &RangeTree<U>) -> bool {
        let indexed = self.by_size.is_some();
        // Segments shorter than this have no by-size key (`u64::MAX`: no index at all).
        let floor = if indexed { self.floor } else { u64::MAX };
        let mut merged: Vec<(U, U)> = Vec::with_capacity(self.by_start.len() + src.by_start.len());
        let mut size_removes: Vec<U::SizeKey> = Vec::new();
        let mut size_inserts: Vec<U::SizeKey> = Vec::new();
        let mut hist = self.hist;
        let mut large = self.large;
        let mut a = self
            .by_start
            .iter()
            .map(|(s, l)| (s.get(), l.get()))
            .peekable();
        let mut b = src
            .by_start
            .iter()
            .map(|(s, l)| (s.get(), l.get()))
            .peekable();
        // The output segment being built: start, length, and the untouched `self` segment it
        // still equals (None once anything joined it or when it started from `src`).
        let mut cur: Option<(u64, u64, Option<Seg>)> = None;
        let mut merged_max: Option<u64> = None;
        loop {
            let from_a = match (a.peek(), b.peek()) {
                (Some(x), Some(y)) => x.0 < y.0,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (None, None) => break,
            };
            let (s, l) = if from_a { a.next() } else { b.next() }.unwrap_or_default();
            match cur.as_mut() {
                Some((cs, cl, orig)) if *cs + *cl >= s => {
                    if *cs + *cl > s {
                        return false; // overlap: a double free
                    }
                    // Touching: coalesce. An original `self` segment stops being untouched.
                    if let Some((os, ol)) = orig.take() {
                        hist[hist_bucket(ol << self.shift)] -= 1;
                        large.sub(ol);
                        if ol >= floor {
                            size_removes.push(U::size_key(ol, os));
                        }
                    }
                    if from_a {
                        hist[hist_bucket(l << self.shift)] -= 1;
                        large.sub(l);
                        if l >= floor {
                            size_removes.push(U::size_key(l, s));
                        }
                    }
                    *cl += l;
                }
                _ => {
                    if let Some((cs, cl, orig)) = cur.take() {
                        Self::flush_merged(
                            &mut merged,
                            &mut size_inserts,
                            (&mut hist, &mut large, &mut merged_max),
                            (cs, cl, orig.is_some()),
                            self.shift,
                            floor,
                        );
                    }
                    cur = Some((s, l, from_a.then_some((s, l))));
                }
            }
        }
        if let Some((cs, cl, orig)) = cur {
            Self::flush_merged(
                &mut merged,
                &mut size_inserts,
                (&mut hist, &mut large, &mut merged_max),
                (cs, cl, orig.is_some()),
                self.shift,
                floor,
            );
        }
        drop((a, b));
        // Everything checked: install the new state.
        self.by_start = BlockMap::from_sorted(&merged).unwrap_or_default();
        if let Some(ix) = self.by_size.as_mut() {
            size_removes.sort_unstable();
            size_inserts.sort_unstable();
            let mut rm = size_removes.iter().peekable();
            let mut ins = size_inserts.iter().copied().peekable();
            let mut keys: Vec<(U::SizeKey, ())> = Vec::with_capacity(ix.len() + size_inserts.len());
            for (k, ()) in ix.iter() {
                if rm.peek().is_some_and(|&&r| r == k) {
                    rm.next();
                    continue;
                }
                while let Some(i) = ins.next_if(|&i| i < k) {
                    keys.push((i, ()));
                }
                keys.push((k, ()));
            }
            keys.extend(ins.map(|i| (i, ())));
            *ix = BlockMap::from_sorted(&keys).unwrap_or_default();
        }
        self.hist = hist;
        self.large = large;
        self.space += src.space;
        // Only adds: the longest segment is the old one or a merged one (see `index_insert`).
        if let Some(mx) = merged_max {
            if mx >= self.largest_hint {
                self.largest_hint = mx;
                self.largest_exact = true;
            }
        }
        true
    }

    /// Emit one output segment of [`RangeTree::bulk_merge`]; a segment that is not an
    /// untouched original gets its histogram entry, counts towards the largest merged
    /// segment, and gets its size-index entry when it reaches `floor`.
    fn flush_merged(
        merged: &mut Vec<(U, U)>,
        size_inserts: &mut Vec<U::SizeKey>,
        (hist, large, merged_max): (
            &mut [u64; HISTOGRAM_BUCKETS],
            &mut LargeSegs,
            &mut Option<u64>,
        ),
        (s, l, untouched): (u64, u64, bool),
        shift: u32,
        floor: u64,
    ) {
        merged.push((U::from_u64(s), U::from_u64(l)));
        if !untouched {
            *merged_max = (*merged_max).max(Some(l));
            hist[hist_bucket(l << shift)] += 1;
            large.add(l);
            if l >= floor {
                size_inserts.push(U::size_key(l, s));
            }
        }
    }
}

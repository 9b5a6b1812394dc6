//! Pickers and size queries of a [`RangeTree`]: best fit through the by-size index, first
//! fit from a cursor, the largest segment.

use super::{align_up, RangeTree, SearchLimit, SegUnit, ALIGN_PROBE};
use crate::blockmap::{BlockMap, Pos};

/// A place found by a picker ([`RangeTree::find_best_fit`], [`RangeTree::find_first_fit`]):
/// the aligned start in bytes and the segment holding it, so that [`RangeTree::take`] can
/// request every leaf its removal touches at once instead of one after another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fit {
    /// First byte of the range found.
    pub start: u64,
    /// The segment containing it, `(start, len)` in units.
    pub(super) seg: (u64, u64),
    /// Its position in the offset index when the picker walked that index (first fit, near
    /// fit): [`RangeTree::take`] then skips the descent (checked there, so a stale position
    /// only costs the descent).
    pub(super) pos: Option<Pos>,
}

impl<U: SegUnit> RangeTree<U> {
    /// Position of the segment containing unit `cu`, or else of the first one after it: one
    /// descent (a lookup of the segment and then a search for its successor were two).
    fn pos_at_cursor(&self, cu: u64) -> Option<Pos> {
        match self.by_start.pred(U::from_u64(cu)) {
            Some(p) => {
                let (s, l) = self.by_start.get(p);
                if s.get() + l.get() > cu {
                    Some(p)
                } else {
                    self.by_start.next(p)
                }
            }
            None => self.by_start.first_pos(),
        }
    }

    /// The segments from position `p` on in offset order, with their positions, in units.
    fn walk_from(&self, p: Option<Pos>) -> impl Iterator<Item = (Pos, (u64, u64))> + '_ {
        std::iter::successors(p, |&p| self.by_start.next(p)).map(|p| {
            let (s, l) = self.by_start.get(p);
            (p, (s.get(), l.get()))
        })
    }

    /// Best fit: the start of an `align`-aligned range of `len` bytes inside the smallest segment
    /// that can hold it (ties: lowest offset). Does not modify the tree. With a size floor
    /// ([`RangeTree::set_size_floor`]) and the index built, only indexed segments are
    /// candidates: a request below the floor gets the smallest indexed segment that holds it,
    /// or `None` although a segment below the floor might hold it.
    pub fn find_best(&self, len: u64, align: u64) -> Option<u64> {
        self.find_best_fit(len, align).map(|f| f.start)
    }

    /// [`RangeTree::find_best`] with the segment it found.
    pub fn find_best_fit(&self, len: u64, align: u64) -> Option<Fit> {
        if let Some(fit) = self.compact_best_fit(len, align) {
            return fit;
        }
        if len == 0 || !align.is_power_of_two() {
            return None;
        }
        let unit = 1u64 << self.shift;
        let ulen = len.div_ceil(unit);
        if ulen > self.span {
            return None;
        }
        let fits = |s: u64, l: u64| -> Option<Fit> {
            let sb = self.to_bytes(s);
            let a = align_up(sb, align.max(unit))?;
            (a + len <= sb + (l << self.shift)).then_some(Fit {
                start: a,
                seg: (s, l),
                pos: None,
            })
        };
        let scan = || {
            let mut best: Option<Fit> = None;
            for (s, l) in self.by_start.iter() {
                let (s, l) = (s.get(), l.get());
                if best.is_some_and(|b| l >= b.seg.1) {
                    continue;
                }
                best = fits(s, l).or(best);
            }
            best
        };
        let Some(ix) = &self.by_size else {
            return scan();
        };
        let mut examined = 0usize;
        for (k, ()) in ix.iter_from(U::size_key(ulen, 0)) {
            let (l, s) = U::unpack(k);
            if let Some(a) = fits(s, l) {
                return Some(a);
            }
            examined += 1;
            if examined >= ALIGN_PROBE {
                break;
            }
        }
        if align > unit {
            // Any segment of at least len + align - unit bytes fits whatever its start.
            let need = (len + align - unit).div_ceil(unit);
            if need <= U::MAX {
                let found = ix.iter_from(U::size_key(need, 0)).find_map(|(k, ())| {
                    let (l, s) = U::unpack(k);
                    fits(s, l)
                });
                if found.is_some() {
                    return found;
                }
            }
        }
        // No indexed segment fits. Segments below the floor are not indexed: a request shorter
        // than the floor may still fit one of them, which this does not look for (a full
        // scan per request would cost O(n) whenever a metaslab has only short segments left);
        // the caller walks the offset order instead (`find_near_fit`, `find_first_fit`).
        None
    }

    /// Best fit among the `max_count` segments that follow `cursor` in offset order (the
    /// one containing it, or the first after it, first; wrapping to the start of the tree):
    /// the shortest one where an `align`-aligned range of `len` bytes fits, the first of those
    /// in that order, stopping early at a segment exactly `len` long. For requests below the
    /// size floor, whose best fit the by-size index cannot give: the walk stays in a few
    /// neighbouring offset leaves (warm: the cursor moves with the allocations) and prefers
    /// small segments, so they are used up instead of splitting larger ones.
    pub fn find_near_fit(
        &self,
        cursor: u64,
        len: u64,
        align: u64,
        max_count: usize,
    ) -> Option<Fit> {
        if let Some(fit) = self.compact_near_fit(cursor, len, align, max_count) {
            return fit;
        }
        if len == 0 || !align.is_power_of_two() {
            return None;
        }
        let unit = 1u64 << self.shift;
        let ulen = len.div_ceil(unit);
        let cu = (cursor.saturating_sub(self.base) >> self.shift).min(self.span);
        // Wrapping to the first segment past the last one.
        let window = self
            .walk_from(self.pos_at_cursor(cu))
            .chain(self.walk_from(self.by_start.first_pos()))
            .take(max_count.min(self.by_start.len()));
        let mut best: Option<Fit> = None;
        for (p, (s, l)) in window {
            if best.is_some_and(|b| l >= b.seg.1) {
                continue;
            }
            let sb = self.to_bytes(s);
            let Some(a) = align_up(sb, align.max(unit)) else {
                continue;
            };
            if a + len <= sb + (l << self.shift) {
                best = Some(Fit {
                    start: a,
                    seg: (s, l),
                    pos: Some(p),
                });
                if l == ulen {
                    break;
                }
            }
        }
        best
    }

    /// First fit from a cursor (ZFS `metaslab_block_picker`): starting with the segment that
    /// contains `cursor` (or the first one after it), return the first `align`-aligned start
    /// where `len` bytes fit. The search stops after `limit.max_count` segments, or, once
    /// `limit.min_count` were examined, at the first segment more than `limit.max_bytes` past
    /// the first one examined.
    pub fn find_first_from(
        &self,
        cursor: u64,
        len: u64,
        align: u64,
        limit: SearchLimit,
    ) -> Option<u64> {
        self.find_first_fit(cursor, len, align, limit)
            .map(|f| f.start)
    }

    /// [`RangeTree::find_first_from`] with the segment it found.
    pub fn find_first_fit(
        &self,
        cursor: u64,
        len: u64,
        align: u64,
        limit: SearchLimit,
    ) -> Option<Fit> {
        if let Some(fit) = self.compact_first_fit(cursor, len, align, limit) {
            return fit;
        }
        if len == 0 || !align.is_power_of_two() {
            return None;
        }
        let unit = 1u64 << self.shift;
        let cu = cursor.saturating_sub(self.base) >> self.shift;
        let cu = cu.min(self.span);
        let mut first: Option<u64> = None;
        for (count, (p, (s, l))) in self.walk_from(self.pos_at_cursor(cu)).enumerate() {
            let sb = self.to_bytes(s);
            let f = *first.get_or_insert(sb);
            if count >= limit.max_count || (count >= limit.min_count && sb - f > limit.max_bytes) {
                break;
            }
            if let Some(a) = align_up(sb, align.max(unit)) {
                if a + len <= sb + (l << self.shift) {
                    return Some(Fit {
                        start: a,
                        seg: (s, l),
                        pos: Some(p),
                    });
                }
            }
        }
        None
    }

    /// Length in bytes of the largest segment (0 when empty). O(1) with the by-size index (when
    /// it holds a segment: segments below the floor are shorter than any indexed one) or while
    /// only adds happened since it was dropped; otherwise a scan.
    pub fn largest(&self) -> u64 {
        if let Some(units) = self.compact_longest() {
            return units << self.shift;
        }
        let units = match self.by_size.as_ref().and_then(BlockMap::last) {
            Some((k, ())) => U::unpack(k).0,
            None if self.largest_exact => self.largest_hint,
            None => self.longest_scan(),
        };
        units << self.shift
    }

    /// An upper bound of [`RangeTree::largest`] in O(1) (exact whenever `largest` is O(1);
    /// else the tighter of the kept bound and the histogram's).
    pub fn largest_bound(&self) -> u64 {
        if let Some(units) = self.compact_longest_bound() {
            return units << self.shift;
        }
        match self.by_size.as_ref().and_then(BlockMap::last) {
            Some((k, ())) => U::unpack(k).0 << self.shift,
            None if self.largest_exact => self.largest_hint << self.shift,
            None => {
                let Some(b) = self.hist.iter().rposition(|&c| c != 0) else {
                    return 0;
                };
                let unit = 1u64 << self.shift;
                // Bucket b holds lengths below 2^(b+1) bytes, a multiple of the unit.
                let hist_bound = (1u64 << b).saturating_mul(2).saturating_sub(unit);
                hist_bound.min(self.largest_hint << self.shift)
            }
        }
    }

    /// Index of the first of `ranges` (byte `(start, len)`, inside the region and aligned to
    /// the unit, as a metaslab's queued frees are) that overlaps a segment; the lookups run in
    /// lockstep batches ([`BlockMap::pred_lt_many`]). Ranges that are misaligned or outside
    /// the region fall back to [`RangeTree::overlaps`].
    pub fn first_overlap(&self, ranges: &[(u64, u64)]) -> Option<usize> {
        if self.is_empty() || ranges.is_empty() {
            return None;
        }
        if self.is_compact() {
            return ranges.iter().position(|&(s, l)| self.overlaps(s, l));
        }
        let mut units = Vec::with_capacity(ranges.len());
        for &(start, len) in ranges {
            match self.to_units(start, len) {
                Ok(u) => units.push(u),
                Err(_) => return ranges.iter().position(|&(s, l)| self.overlaps(s, l)),
            }
        }
        let keys: Vec<U> = units.iter().map(|&(s, l)| U::from_u64(s + l)).collect();
        let mut preds = Vec::with_capacity(keys.len());
        self.by_start.pred_lt_many(&keys, &mut preds);
        units.iter().zip(&preds).position(|(&(s, _), p)| {
            p.is_some_and(|p| {
                let (ps, pl) = self.by_start.get(p);
                ps.get() + pl.get() > s
            })
        })
    }

    /// Like [`RangeTree::first_overlap`] for `ranges` sorted by start and disjoint (a metaslab's
    /// queued frees), in one merge-like pass over both sequences: O(ranges + segments) without
    /// descents, for the small trees of the txg pipeline. Unsorted input falls back to
    /// `first_overlap`.
    pub fn first_overlap_sorted(&self, ranges: &[(u64, u64)]) -> Option<usize> {
        if self.is_empty() || ranges.is_empty() {
            return None;
        }
        if ranges
            .windows(2)
            .any(|w| w[0].0.saturating_add(w[0].1) > w[1].0)
        {
            return self.first_overlap(ranges);
        }
        let mut segs = self.iter().peekable();
        for (i, &(start, len)) in ranges.iter().enumerate() {
            // Segments ending at or before this range cannot overlap it or any later one.
            while segs.next_if(|&(s, l)| s + l <= start).is_some() {}
            match segs.peek() {
                None => return None,
                Some(&(s, _)) if len > 0 && s < start.saturating_add(len) => return Some(i),
                Some(_) => {}
            }
        }
        None
    }
}

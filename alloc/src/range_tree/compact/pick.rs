//! The pickers of a compact [`RangeTree`]: the same results as the indexes give (see the
//! parent module), found in the bitmap's summaries and runs.

use super::{Compact, Runs, LONG};
use crate::range_tree::{align_up, Fit, RangeTree, SearchLimit, SegUnit, ALIGN_PROBE};

impl<U: SegUnit> RangeTree<U> {
    /// A fit in segment `(s, l)` (units) for `len` bytes aligned to `align` (`>=` the unit).
    fn fit_in(&self, s: u64, l: u64, len: u64, align: u64) -> Option<Fit> {
        let sb = self.to_bytes(s);
        let a = align_up(sb, align)?;
        (a + len <= sb + (l << self.shift)).then_some(Fit {
            start: a,
            seg: (s, l),
            pos: None,
        })
    }

    /// [`RangeTree::find_best_fit`] of a compact tree (`None`: not compact). As with the
    /// by-size index, an indexed tree's segments below the size floor are no candidates.
    pub(in crate::range_tree) fn compact_best_fit(
        &self,
        len: u64,
        align: u64,
    ) -> Option<Option<Fit>> {
        let c = self.compact.as_deref()?;
        let unit = 1u64 << self.shift;
        let ulen = len.div_ceil(unit);
        if len == 0 || !align.is_power_of_two() || ulen > self.span {
            return Some(None);
        }
        let floor = if self.indexed { self.floor } else { 0 };
        let min = ulen.max(floor).max(1);
        if align > unit {
            return Some(self.compact_best_aligned(c, len, align, min));
        }
        if min < LONG {
            // Classes below LONG are exact lengths: the lowest one at or above `min` is the
            // best fit, and its first block holds the lowest start of that length.
            let cand = c.present & (u64::MAX << (min - 1)) & !(1 << (LONG - 1));
            if cand != 0 {
                let class = cand.trailing_zeros() as usize;
                let l = class as u64 + 1;
                let found = c.first_block_of(class).and_then(|b| {
                    // Its counts change when the run is taken: load them beside the bitmap.
                    c.prefetch_counts(b);
                    c.find_in_block(b, |_, rl| rl == l)
                });
                return Some(found.and_then(|(s, _)| self.fit_in(s, l, len, unit)));
            }
        }
        let mut best: Option<(u64, u64)> = None;
        for (s, l) in c.long_runs() {
            if l >= min && best.is_none_or(|b| l < b.1) {
                best = Some((s, l));
            }
        }
        Some(best.and_then(|(s, l)| self.fit_in(s, l, len, unit)))
    }

    /// Best fit with an alignment above the unit: the index's probe order (length, then
    /// start; [`ALIGN_PROBE`] candidates, then any segment long enough for every start),
    /// or the offset-order scan of a tree without an index. Slow (sorts the candidates): the
    /// metaslabs allocate unit-aligned.
    fn compact_best_aligned(&self, c: &Compact, len: u64, align: u64, min: u64) -> Option<Fit> {
        let unit = 1u64 << self.shift;
        if !self.indexed {
            let mut best: Option<Fit> = None;
            for (s, l) in (Runs { c, pos: 0 }) {
                if best.is_some_and(|b| l >= b.seg.1) {
                    continue;
                }
                best = self.fit_in(s, l, len, align).or(best);
            }
            return best;
        }
        let mut cand: Vec<(u64, u64)> = Runs { c, pos: 0 }
            .filter(|&(_, l)| l >= min)
            .map(|(s, l)| (l, s))
            .collect();
        cand.sort_unstable();
        if let Some(f) = cand
            .iter()
            .take(ALIGN_PROBE)
            .find_map(|&(l, s)| self.fit_in(s, l, len, align))
        {
            return Some(f);
        }
        let need = (len + align - unit).div_ceil(unit);
        if need > U::MAX {
            return None;
        }
        cand.iter()
            .filter(|&&(l, _)| l >= need)
            .find_map(|&(l, s)| self.fit_in(s, l, len, align))
    }

    /// The runs of a compact tree from the one containing unit `cu` (or the first after it)
    /// on, in offset order.
    fn compact_walk<'a>(&self, c: &'a Compact, cu: u64) -> Runs<'a> {
        match c.run_at_or_after(cu) {
            Some((s, _)) => Runs { c, pos: s },
            None => Runs { c, pos: self.span },
        }
    }

    /// [`RangeTree::find_near_fit`] of a compact tree (`None`: not compact).
    pub(in crate::range_tree) fn compact_near_fit(
        &self,
        cursor: u64,
        len: u64,
        align: u64,
        max_count: usize,
    ) -> Option<Option<Fit>> {
        let c = self.compact.as_deref()?;
        if len == 0 || !align.is_power_of_two() {
            return Some(None);
        }
        let unit = 1u64 << self.shift;
        let ulen = len.div_ceil(unit);
        let cu = (cursor.saturating_sub(self.base) >> self.shift).min(self.span);
        let window = self
            .compact_walk(c, cu)
            .chain(Runs { c, pos: 0 })
            .take(max_count.min(c.segs));
        let mut best: Option<Fit> = None;
        for (s, l) in window {
            if best.is_some_and(|b| l >= b.seg.1) {
                continue;
            }
            if let Some(f) = self.fit_in(s, l, len, align.max(unit)) {
                best = Some(f);
                if l == ulen {
                    break;
                }
            }
        }
        if let Some(f) = best {
            c.prefetch_counts(super::block(f.seg.0));
        }
        Some(best)
    }

    /// [`RangeTree::find_first_fit`] of a compact tree (`None`: not compact).
    pub(in crate::range_tree) fn compact_first_fit(
        &self,
        cursor: u64,
        len: u64,
        align: u64,
        limit: SearchLimit,
    ) -> Option<Option<Fit>> {
        let c = self.compact.as_deref()?;
        if len == 0 || !align.is_power_of_two() {
            return Some(None);
        }
        let unit = 1u64 << self.shift;
        let cu = (cursor.saturating_sub(self.base) >> self.shift).min(self.span);
        let mut first: Option<u64> = None;
        for (count, (s, l)) in self.compact_walk(c, cu).enumerate() {
            let sb = self.to_bytes(s);
            let f = *first.get_or_insert(sb);
            if count >= limit.max_count || (count >= limit.min_count && sb - f > limit.max_bytes) {
                break;
            }
            if let Some(fit) = self.fit_in(s, l, len, align.max(unit)) {
                c.prefetch_counts(super::block(s));
                return Some(Some(fit));
            }
        }
        Some(None)
    }
}

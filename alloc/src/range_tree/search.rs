//! Pickers and size queries of a [`RangeTree`]: best fit through the by-size index, first
//! fit from a cursor, the largest segment.

use super::{align_up, RangeTree, SearchLimit, SegUnit, ALIGN_PROBE};

impl<U: SegUnit> RangeTree<U> {
    /// Best fit: the start of an `align`-aligned range of `len` bytes inside the smallest segment
    /// that can hold it (ties: lowest offset). Does not modify the tree.
    pub fn find_best(&self, len: u64, align: u64) -> Option<u64> {
        if len == 0 || !align.is_power_of_two() {
            return None;
        }
        let unit = 1u64 << self.shift;
        let ulen = len.div_ceil(unit);
        if ulen > self.span {
            return None;
        }
        let fits = |s: u64, l: u64| -> Option<u64> {
            let sb = self.to_bytes(s);
            let a = align_up(sb, align.max(unit))?;
            (a + len <= sb + (l << self.shift)).then_some(a)
        };
        match &self.by_size {
            Some(ix) => {
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
                if align <= unit {
                    return None;
                }
                // Any segment of at least len + align - unit bytes fits whatever its start.
                let need = (len + align - unit).div_ceil(unit);
                if need > U::MAX {
                    return None;
                }
                ix.iter_from(U::size_key(need, 0)).find_map(|(k, ())| {
                    let (l, s) = U::unpack(k);
                    fits(s, l)
                })
            }
            None => {
                let mut best: Option<(u64, u64)> = None;
                for (s, l) in self.by_start.iter() {
                    let (s, l) = (s.get(), l.get());
                    if let Some(a) = fits(s, l) {
                        if best.is_none_or(|(bl, _)| l < bl) {
                            best = Some((l, a));
                        }
                    }
                }
                best.map(|(_, a)| a)
            }
        }
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
        if len == 0 || !align.is_power_of_two() {
            return None;
        }
        let unit = 1u64 << self.shift;
        let cu = cursor.saturating_sub(self.base) >> self.shift;
        let cu = cu.min(self.span);
        let first_key = match self.seg_at_or_before(cu) {
            Some((ps, pl)) if ps + pl > cu => ps,
            _ => cu,
        };
        let mut first: Option<u64> = None;
        for (count, (s, l)) in self.by_start.iter_from(U::from_u64(first_key)).enumerate() {
            let sb = self.to_bytes(s.get());
            let f = *first.get_or_insert(sb);
            if count >= limit.max_count || (count >= limit.min_count && sb - f > limit.max_bytes) {
                break;
            }
            if let Some(a) = align_up(sb, align.max(unit)) {
                if a + len <= sb + (l.get() << self.shift) {
                    return Some(a);
                }
            }
        }
        None
    }

    /// Length in bytes of the largest segment (0 when empty). O(1) with the by-size index or
    /// while only adds happened since it was dropped; otherwise a scan.
    pub fn largest(&self) -> u64 {
        let units = match &self.by_size {
            Some(ix) => ix.last().map_or(0, |(k, ())| U::unpack(k).0),
            None if self.largest_exact => self.largest_hint,
            None => self
                .by_start
                .iter()
                .map(|(_, l)| l.get())
                .max()
                .unwrap_or(0),
        };
        units << self.shift
    }

    /// An upper bound of [`RangeTree::largest`] in O(1) (exact whenever `largest` is O(1);
    /// else the tighter of the kept bound and the histogram's).
    pub fn largest_bound(&self) -> u64 {
        match &self.by_size {
            Some(ix) => ix.last().map_or(0, |(k, ())| U::unpack(k).0) << self.shift,
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
}

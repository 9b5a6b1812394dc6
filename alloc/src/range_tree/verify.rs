//! The internal consistency check of a [`RangeTree`], used by tests and debug builds.

use super::{hist_bucket, RangeTree, SegUnit, HISTOGRAM_BUCKETS};
use crate::error::AllocError;

impl<U: SegUnit> RangeTree<U> {
    /// Check the internal consistency of the tree (indexes, histogram, space, coalescing).
    pub fn verify(&self) -> Result<(), AllocError> {
        let bad = |m: String| Err(AllocError::Invariant(m));
        let mut hist = [0u64; HISTOGRAM_BUCKETS];
        let mut space = 0u64;
        let mut prev_end: Option<u64> = None;
        let mut longest = 0u64;
        let mut indexed = 0usize;
        self.by_start.check().map_err(AllocError::Invariant)?;
        let segments: Vec<(u64, u64)> = match self.compact_segments() {
            Some(runs) => runs.map_err(AllocError::Invariant)?,
            None => self
                .by_start
                .iter()
                .map(|(s, l)| (s.get(), l.get()))
                .collect(),
        };
        if let Some(ix) = &self.by_size {
            ix.check().map_err(AllocError::Invariant)?;
        }
        for &(s, l) in &segments {
            if l == 0 || s + l > self.span {
                return bad(format!(
                    "segment {s}+{l} empty or outside span {}",
                    self.span
                ));
            }
            if let Some(pe) = prev_end {
                if s <= pe {
                    return bad(format!(
                        "segment at {s} overlaps or touches previous end {pe}"
                    ));
                }
            }
            prev_end = Some(s + l);
            hist[hist_bucket(l << self.shift)] += 1;
            space += l << self.shift;
            longest = longest.max(l);
            if l >= self.floor {
                indexed += 1;
                if let Some(ix) = &self.by_size {
                    if !ix.contains_key(U::size_key(l, s)) {
                        return bad(format!("segment {s}+{l} missing from the size index"));
                    }
                }
            }
        }
        if let Some(ix) = &self.by_size {
            if !self.indexed {
                return bad("size index built on a tree without one".into());
            }
            // Every key is a segment's (checked above for the segments at or above the
            // floor), so equal counts mean no stale or below-floor key.
            if ix.len() != indexed {
                return bad(format!(
                    "size index holds {} keys for {indexed} segments of at least {} units",
                    ix.len(),
                    self.floor
                ));
            }
        }
        if self.largest_hint < longest || (self.largest_exact && self.largest_hint != longest) {
            return bad(format!(
                "largest hint {} (exact: {}) but the longest segment has {longest} units",
                self.largest_hint, self.largest_exact
            ));
        }
        if hist != self.hist {
            return bad("histogram differs from segments".into());
        }
        let (count, units, pieces) = segments
            .iter()
            .map(|&(_, l)| l)
            .filter(|&l| l >= self.large.min)
            .fold((0, 0, 0), |(c, u, p), l| {
                (c + 1, u + l, p + l / self.large.min)
            });
        if (count, units, pieces) != (self.large.count, self.large.units, self.large.pieces) {
            return bad(format!(
                "{} segments of {} units ({} pieces) counted as large, the tree has {count} of \
                 {units} ({pieces} pieces)",
                self.large.count, self.large.units, self.large.pieces
            ));
        }
        if space != self.space {
            return bad(format!("space {} != sum of segments {space}", self.space));
        }
        Ok(())
    }
}

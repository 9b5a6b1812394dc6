//! Invariant checks of a metaslab (I1, I4, I6 locally), used by debug builds and tests.

use super::{FreeMap, Metaslab};
use crate::error::AllocError;
use crate::range_tree::RangeTree;

impl Metaslab {
    /// Check the invariants local to the metaslab: every tree internally consistent, the trees
    /// pairwise disjoint (a checkpointed or deferred range is never allocatable, I1), queued frees
    /// disjoint and not free anywhere (with eager checks), and the space identity I4:
    /// `size - sm_allocated = |allocatable| + sum |allocating| + |freed| + sum |defer|`.
    pub fn verify(&self) -> Result<(), AllocError> {
        let mut all: Vec<(u64, u64, &'static str)> = Vec::new();
        let named: [(&RangeTree, &'static str); 10] = [
            (&self.allocatable, "allocatable"),
            (&self.allocating[0], "allocating[0]"),
            (&self.allocating[1], "allocating[1]"),
            (&self.allocating[2], "allocating[2]"),
            (&self.allocating[3], "allocating[3]"),
            (&self.freeing, "freeing"),
            (&self.freed, "freed"),
            (&self.defer[0], "defer[0]"),
            (&self.defer[1], "defer[1]"),
            (&self.checkpointing, "checkpointing"),
        ];
        for (t, name) in &named {
            t.verify().map_err(|e| {
                AllocError::Invariant(format!("ms {}/{} {name}: {e}", self.dev, self.index))
            })?;
            all.extend(t.iter().map(|(s, l)| (s, l, *name)));
        }
        all.sort_unstable_by_key(|x| x.0);
        for w in all.windows(2) {
            if w[0].0 + w[0].1 > w[1].0 {
                return Err(AllocError::Invariant(format!(
                    "ms {}/{}: {} [{:#x},+{:#x}) overlaps {} [{:#x},+{:#x})",
                    self.dev, self.index, w[0].2, w[0].0, w[0].1, w[1].2, w[1].0, w[1].1
                )));
            }
        }
        // The free map is exactly the space free on disk outside `checkpointing`.
        let mut map = FreeMap::empty(self.size >> self.ashift);
        for t in [
            &self.allocatable,
            &self.freeing,
            &self.freed,
            &self.defer[0],
            &self.defer[1],
        ] {
            for (s, l) in t.iter() {
                let (u, n) = self.map_units(s, l);
                map.set(u, n);
            }
        }
        if map != self.free_map {
            return Err(AllocError::Invariant(format!(
                "ms {}/{}: free map differs from the free trees",
                self.dev, self.index
            )));
        }
        // Queued frees may overlap each other or free space (double frees) until their txg's
        // check refuses them; with eager checks `free` refuses them at once.
        if self.cfg.eager_free_checks {
            let mut pend: Vec<(u64, u64)> = self.queued_ranges().collect();
            pend.sort_unstable();
            for w in pend.windows(2) {
                if w[0].0 + w[0].1 > w[1].0 {
                    return Err(AllocError::Invariant(format!(
                        "ms {}/{}: queued frees [{:#x},+{:#x}) and [{:#x},+{:#x}) overlap",
                        self.dev, self.index, w[0].0, w[0].1, w[1].0, w[1].1
                    )));
                }
            }
            for &(s, l) in &pend {
                if self.is_free_somewhere(s, l) {
                    return Err(AllocError::Invariant(format!(
                        "ms {}/{}: queued free [{s:#x},+{l:#x}) is already free",
                        self.dev, self.index
                    )));
                }
            }
        }
        let rhs = self.allocatable.space()
            + self.allocating.iter().map(RangeTree::space).sum::<u64>()
            + self.freed.space()
            + self.defer[0].space()
            + self.defer[1].space();
        if self.size.checked_sub(self.sm_alloc) != Some(rhs) {
            return Err(AllocError::Invariant(format!(
                "ms {}/{}: I4 size {} - sm_alloc {} != free trees {rhs}",
                self.dev, self.index, self.size, self.sm_alloc
            )));
        }
        Ok(())
    }

    /// [`Metaslab::verify`] plus I6: between txgs `freeing`, `freed`, `checkpointing` are empty.
    pub fn verify_quiesced(&self) -> Result<(), AllocError> {
        self.verify()?;
        if !self.freeing.is_empty() || !self.freed.is_empty() || !self.checkpointing.is_empty() {
            return Err(AllocError::Invariant(format!(
                "ms {}/{}: I6 freeing/freed/checkpointing not empty between txgs",
                self.dev, self.index
            )));
        }
        Ok(())
    }
}

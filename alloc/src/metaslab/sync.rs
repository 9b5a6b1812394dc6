//! The txg pipeline of a metaslab: `sync` (routing the queued frees, emitting space-map
//! records, condensing) and `sync_done` (rotating the deferred frees).

use super::{Metaslab, MetaslabSyncOutput};
use crate::error::AllocError;
use crate::record::SmRecord;

impl Metaslab {
    /// Whether `sync(txg)` has anything to do (or would condense).
    pub fn needs_sync(&self, txg: u64) -> bool {
        let slot = Self::slot(txg);
        !self.allocating[slot].is_empty()
            || !self.pending_frees[slot].is_empty()
            || !self.freeing.is_empty()
            || !self.checkpointing.is_empty()
            || (self.last_sync_txg != txg && self.condense_wanted())
    }

    /// Whether the map is long enough, relative to the state it describes, to be rewritten.
    pub fn condense_wanted(&self) -> bool {
        // Optimal: about one one-word entry per allocated segment (~ free segments + 1) plus
        // the batch's debug word.
        let optimal = (self.allocatable.segment_count() as u64 + 1) * 8 + 8;
        self.sm_length >= self.cfg.condense_min_bytes
            && self.sm_length.saturating_mul(100) >= optimal.saturating_mul(self.cfg.condense_pct)
    }

    /// The condensed map for the txg about to sync: ALLOC records for exactly the ranges that
    /// are allocated on disk once this txg is synced, in offset order. Free on disk are the
    /// allocatable, freeing, freed and deferred ranges and allocations of later txgs (not yet
    /// synced); allocations of `txg`, pending frees and checkpointed ranges stay allocated (so
    /// checkpointed blocks are never exposed by a condense, I1).
    pub fn condensed_records(&self, txg: u64) -> Vec<SmRecord> {
        let slot = Self::slot(txg);
        // `allocatable` is walked in order; the other free trees are small (a few txgs of
        // frees and allocations) and are sorted aside, then the two runs are merged.
        let mut others: Vec<(u64, u64)> = Vec::new();
        for t in [&self.freeing, &self.freed, &self.defer[0], &self.defer[1]] {
            others.extend(t.iter());
        }
        for (s, t) in self.allocating.iter().enumerate() {
            if s != slot {
                others.extend(t.iter());
            }
        }
        others.sort_unstable();
        let mut out = Vec::with_capacity(self.allocatable.segment_count() + others.len() + 1);
        let mut a = self.allocatable.iter().peekable();
        let mut b = others.into_iter().peekable();
        let mut pos = self.start;
        loop {
            let next = match (a.peek(), b.peek()) {
                (Some(x), Some(y)) if x.0 <= y.0 => a.next(),
                (_, Some(_)) => b.next(),
                (Some(_), None) => a.next(),
                (None, None) => None,
            };
            let Some((s, l)) = next else { break };
            if s > pos {
                out.push(SmRecord::alloc(pos, s - pos));
            }
            pos = pos.max(s + l);
        }
        if pos < self.end() {
            out.push(SmRecord::alloc(pos, self.end() - pos));
        }
        out
    }

    /// Sync `txg` (may be called once per pass): route the txg's queued frees (see
    /// [`Metaslab::free`]) using `checkpoint_txg` (0 = none), then emit ALLOC(allocating[txg&3])
    /// and FREE(freeing) for the metaslab's map (or, on the first pass when the map is too long,
    /// the condensed map) and FREE(checkpointing) for the device's checkpoint map. Afterwards
    /// `freeing` has moved to `freed` and the txg's allocating tree is empty.
    pub fn sync(
        &mut self,
        txg: u64,
        checkpoint_txg: u64,
    ) -> Result<MetaslabSyncOutput, AllocError> {
        self.check_open(txg)?;
        let slot = Self::slot(txg);
        if !self.allocating[slot].is_empty() && self.allocating_txg[slot] != txg {
            return Err(AllocError::Invariant(format!(
                "sync of txg {txg} found allocations of txg {}",
                self.allocating_txg[slot]
            )));
        }
        if !self.pending_frees[slot].is_empty() && self.pending_txg[slot] != txg {
            return Err(AllocError::Invariant(format!(
                "sync of txg {txg} found frees of txg {}",
                self.pending_txg[slot]
            )));
        }
        let first_pass = self.last_sync_txg != txg;
        self.last_sync_txg = txg;

        if self.queue_checked_txg != txg {
            self.check_queued_frees(txg)?;
        }
        self.queue_checked_txg = 0;
        // The check sorted the queue and found it disjoint: each destination is built in one
        // pass.
        let mut to_free = Vec::with_capacity(self.pending_frees[slot].len());
        let mut to_hold = Vec::new();
        let (base, shift) = (self.start, self.ashift);
        for f in self.pending_frees[slot].drain(..) {
            let (start, len, birth) = f.range(base, shift);
            let held = checkpoint_txg != 0 && birth <= checkpoint_txg && txg > checkpoint_txg;
            if held {
                to_hold.push((start, len));
            } else {
                to_free.push((start, len));
            }
        }
        self.freeing.fill_sorted(&to_free)?;
        for &(start, len) in &to_free {
            // Free on disk from now on (held frees look allocated once their records are out).
            let (u, n) = self.map_units(start, len);
            self.free_map.set(u, n);
        }
        self.checkpointing.fill_sorted(&to_hold)?;

        let mut out = MetaslabSyncOutput::default();
        if first_pass && self.condense_wanted() {
            out.sm_records = self.condensed_records(txg);
            out.condensed = true;
            self.sm_alloc = out.sm_records.iter().map(|r| r.len).sum();
            self.sm_length = self.records_bytes(&out.sm_records);
        } else {
            let alloc_space = self.allocating[slot].space();
            let free_space = self.freeing.space();
            let mut recs = Vec::with_capacity(
                self.allocating[slot].segment_count() + self.freeing.segment_count(),
            );
            self.allocating[slot].walk(|s, l| recs.push(SmRecord::alloc(s, l)));
            self.freeing.walk(|s, l| recs.push(SmRecord::free(s, l)));
            self.sm_length += self.records_bytes(&recs);
            self.sm_alloc = self.sm_alloc + alloc_space - free_space;
            out.sm_records = recs;
        }
        self.allocating[slot].clear();
        let freed = &mut self.freed;
        self.freeing.move_into(freed)?;

        out.ckpt_space = self.checkpointing.space();
        let mut ck = Vec::with_capacity(self.checkpointing.segment_count());
        self.checkpointing
            .vacate(|s, l| ck.push(SmRecord::free(s, l)));
        out.ckpt_records = ck;
        Ok(out)
    }

    /// Switch `allocatable` between its indexes and the bitmap by its segment density (see
    /// [`MetaslabConfig::compact_density`](super::MetaslabConfig) and `compact_min_segments`),
    /// with a quarter's hysteresis.
    fn choose_representation(&mut self) {
        let d = self.cfg.compact_density;
        let min = self.cfg.compact_min_segments;
        let units = self.size >> self.ashift;
        let segs = self.allocatable.segment_count() as u64;
        if self.allocatable.is_compact() {
            if d == 0 || segs < min / 4 || segs.saturating_mul(d).saturating_mul(4) < units {
                // The next allocation builds the by-size index.
                self.allocatable.expand();
            }
        } else if d != 0 && segs >= min && segs.saturating_mul(d) >= units {
            self.allocatable.compact();
        }
    }

    /// Finish `txg` after its uberblock is durable: the frees of `txg - 2` (in `defer[txg % 2]`)
    /// become allocatable and this txg's `freed` takes their place.
    pub fn sync_done(&mut self, txg: u64) -> Result<(), AllocError> {
        self.check_open(txg)?;
        let slot = Self::slot(txg);
        if !self.pending_frees[slot].is_empty() && self.pending_txg[slot] == txg {
            return Err(AllocError::Invariant(format!(
                "sync_done({txg}) with unsynced frees of that txg"
            )));
        }
        if !self.allocating[slot].is_empty() && self.allocating_txg[slot] == txg {
            return Err(AllocError::Invariant(format!(
                "sync_done({txg}) with unsynced allocations of that txg"
            )));
        }
        if self.allocatable.has_size_index()
            && self.cfg.drop_index_after_txgs != 0
            && txg
                >= self
                    .active_txg
                    .saturating_add(self.cfg.drop_index_after_txgs)
        {
            // Idle: drop the index before the deferred frees are merged in.
            self.passivate();
        }
        self.choose_representation();
        let d = usize::try_from(txg % 2).unwrap_or(0);
        let alloc = &mut self.allocatable;
        self.defer[d].move_into(alloc)?;
        let dst = &mut self.defer[d];
        self.freed.move_into(dst)?;
        self.synced_txg = txg;
        debug_assert!(self.verify().is_ok(), "{:?}", self.verify());
        Ok(())
    }
}

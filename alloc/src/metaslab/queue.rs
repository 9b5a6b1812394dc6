//! The per-txg queues of frees. `free` appends to its txg's queue (no lookup at call time: a
//! lookup in a sorted queue was a cold leaf per free); the txg's check at sync sorts the queue
//! once and refuses double frees there: frees overlapping each other or a later txg's queued
//! frees, and frees of ranges that are already free (in the free map).

use super::{Metaslab, TXG_SIZE};
use crate::error::AllocError;

/// One queued free: start and length in units of the metaslab (relative to its start; a
/// metaslab holds at most 2^32 units, as its range trees do) and the birth txg: 16 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct QueuedFree {
    start: u32,
    len: u32,
    birth: u64,
}

impl QueuedFree {
    /// `(start, len, birth)`, start and length in bytes for a metaslab at `base` with unit
    /// `2^shift`.
    pub(super) fn range(self, base: u64, shift: u32) -> (u64, u64, u64) {
        (
            base + (u64::from(self.start) << shift),
            u64::from(self.len) << shift,
            self.birth,
        )
    }

    /// One past the last unit.
    fn end(self) -> u64 {
        u64::from(self.start) + u64::from(self.len)
    }
}

/// Frees queued for one txg, in call order until the txg's check sorts them by start. Not
/// coalesced: each free keeps its birth for the routing decision at sync.
pub(super) type QueuedFrees = Vec<QueuedFree>;

/// Index in `later` of the first entry overlapping an entry of `q`, both sorted by start and
/// `q` disjoint: one merge-like pass.
fn first_overlap_between(q: &[QueuedFree], later: &[QueuedFree]) -> Option<usize> {
    let mut i = 0;
    for (j, f) in later.iter().enumerate() {
        // Entries of `q` ending at or before this start end before every later start too.
        while q.get(i).is_some_and(|g| g.end() <= u64::from(f.start)) {
            i += 1;
        }
        let g = q.get(i)?;
        if u64::from(g.start) < f.end() {
            return Some(j);
        }
    }
    None
}

impl Metaslab {
    /// Queue the free of `[start, start + len)`, born in `birth_txg`, as part of txg `txg`
    /// (the txg whose sync commits the removal of the last reference). At `sync(txg)` it goes to
    /// `checkpointing` if a checkpoint txg `C` is set, `birth_txg <= C` and `txg > C`, else to
    /// `freeing`. Double frees are refused with [`AllocError::DoubleFree`] by the txg's check
    /// ([`Metaslab::check_queued_frees`], run by `sync(txg)`), which validates the whole queue
    /// before anything changes (nothing is emitted; only the offending free is dropped): a free
    /// overlapping another of the same txg, or one of a later txg queued meanwhile, or a range
    /// that is already free (allocatable, freed, deferred). With
    /// [`MetaslabConfig::eager_free_checks`](super::MetaslabConfig) they are refused here
    /// instead (a debug option: it scans the queues).
    pub fn free(
        &mut self,
        start: u64,
        len: u64,
        birth_txg: u64,
        txg: u64,
    ) -> Result<(), AllocError> {
        self.check_range(start, len)?;
        self.check_open(txg)?;
        let slot = Self::slot(txg);
        if self.pending_txg[slot] != txg && !self.pending_frees[slot].is_empty() {
            return Err(AllocError::Invariant(format!(
                "free slot {slot} still holds txg {} while freeing for txg {txg}",
                self.pending_txg[slot]
            )));
        }
        if self.cfg.eager_free_checks
            && (self.is_free_somewhere(start, len) || self.is_queued(start, len))
        {
            return Err(AllocError::DoubleFree { start, len });
        }
        // In range (checked above), so both fit the metaslab's 32-bit unit count.
        let units = |b: u64| {
            u32::try_from(b >> self.ashift).map_err(|_| AllocError::OutOfRange {
                start,
                len,
                region_start: self.start,
                region_end: self.end(),
            })
        };
        let f = QueuedFree {
            start: units(start - self.start)?,
            len: units(len)?,
            birth: birth_txg,
        };
        self.pending_frees[slot].push(f);
        self.pending_txg[slot] = txg;
        if self.queue_checked_txg == txg {
            self.queue_checked_txg = 0;
        }
        self.touched = true;
        Ok(())
    }

    /// Whether any part of the range is queued for freeing. A scan of the queues: for the
    /// checkpoint discard and the eager checks, not for the free path.
    pub(super) fn is_queued(&self, start: u64, len: u64) -> bool {
        let end = start + len;
        self.pending_frees.iter().flatten().any(|f| {
            let (s, l, _) = f.range(self.start, self.ashift);
            s < end && start < s + l
        })
    }

    /// Every queued free as `(start, len)` in bytes, the queues in slot order.
    pub(super) fn queued_ranges(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.pending_frees.iter().flatten().map(|f| {
            let (s, l, _) = f.range(self.start, self.ashift);
            (s, l)
        })
    }

    /// Drop entry `i` of queue `q` and report it as a double free.
    fn refuse_queued(&mut self, q: usize, i: usize) -> Result<(), AllocError> {
        let f = self.pending_frees[q].remove(i);
        self.queue_checked_txg = 0;
        let (start, len, _) = f.range(self.start, self.ashift);
        Err(AllocError::DoubleFree { start, len })
    }

    /// Check the frees queued for `txg` before its sync; the first double free found is
    /// [`AllocError::DoubleFree`] and is dropped from its queue (nothing else changes; call
    /// again for the next). The queue is sorted here, once, and then:
    /// * two frees of `txg` overlap: the later one in offset order is refused (which of the two
    ///   came second is not kept);
    /// * a free queued for a later txg overlaps one of `txg`: the later txg's is refused (after
    ///   this sync a free routed to the checkpoint looks allocated, so this is the last chance);
    /// * a free of a range that is free (allocatable, freeing, freed, deferred, checkpointing).
    ///
    /// The last test reads the metaslab's free map (one bit per unit, see `free_map`), in
    /// ascending order with prefetches, so no tree is searched. `sync` runs it itself unless it already ran for this txg with
    /// no free of `txg` since (the class checks every metaslab before syncing any, so a failed
    /// check leaves no metaslab half-synced; a later txg's free arriving between the two is
    /// then checked at its own sync, against the free space only).
    pub fn check_queued_frees(&mut self, txg: u64) -> Result<(), AllocError> {
        let slot = Self::slot(txg);
        self.pending_frees[slot].sort_unstable_by_key(|f| f.start);
        let own = &self.pending_frees[slot];
        if let Some(i) = own
            .windows(2)
            .position(|w| w[0].end() > u64::from(w[1].start))
        {
            return self.refuse_queued(slot, i + 1);
        }
        for later in 0..TXG_SIZE {
            if later == slot
                || self.pending_frees[later].is_empty()
                || self.pending_txg[later] <= txg
            {
                continue;
            }
            self.pending_frees[later].sort_unstable_by_key(|f| f.start);
            let hit = first_overlap_between(&self.pending_frees[slot], &self.pending_frees[later]);
            if let Some(j) = hit {
                return self.refuse_queued(later, j);
            }
        }
        // The free map answers for allocatable, freeing, freed and deferred space: one word per
        // free, requested a few frees ahead (the queue is sorted, so the words ascend).
        const AHEAD: usize = 8;
        let own = &self.pending_frees[slot];
        let map = &self.free_map;
        for f in own.iter().take(AHEAD) {
            map.prefetch(u64::from(f.start));
        }
        let mut first_bad = None;
        for (i, f) in own.iter().enumerate() {
            if let Some(a) = own.get(i + AHEAD) {
                map.prefetch(u64::from(a.start));
            }
            if map.any(u64::from(f.start), u64::from(f.len)) {
                first_bad = Some(i);
                break;
            }
        }
        if first_bad.is_none() && !self.checkpointing.is_empty() {
            // Not in the map (a sync fills and empties it in one call): walked beside the queue.
            let (base, shift) = (self.start, self.ashift);
            let queued: Vec<(u64, u64)> = own
                .iter()
                .map(|f| {
                    let (s, l, _) = f.range(base, shift);
                    (s, l)
                })
                .collect();
            first_bad = self.checkpointing.first_overlap_sorted(&queued);
        }
        if let Some(i) = first_bad {
            return self.refuse_queued(slot, i);
        }
        self.queue_checked_txg = txg;
        Ok(())
    }
}

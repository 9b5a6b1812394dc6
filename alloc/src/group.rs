//! Metaslab group: the metaslabs of one device, each behind its own lock.

use std::sync::atomic::{
    AtomicU32, AtomicU64,
    Ordering::{Relaxed, SeqCst},
};

use parking_lot::Mutex;

use crate::class::DeviceSyncOutput;
use crate::error::AllocError;
use crate::metaslab::{Metaslab, MetaslabConfig};
use crate::reserve::alloc_within;

/// Geometry of one device's allocatable region, as the pool's label records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceSpec {
    /// Device index in the pool.
    pub dev: u32,
    /// First allocatable byte (after the front labels), a multiple of `2^ashift`.
    pub start: u64,
    /// One past the last allocatable byte (before the back labels); rounded down to the unit.
    pub end: u64,
    /// log2 of the allocation unit (the device's physical block size).
    pub ashift: u32,
    /// log2 of the metaslab size; metaslab `i` covers `[start + i<<ms_shift, ...)`, the last one
    /// may be shorter.
    pub ms_shift: u32,
}

/// ZFS's metaslab sizing (`vdev_metaslab_set_size`): 512 MiB metaslabs while that gives 16 to
/// 200 of them; fewer than 16 -> `highbit(size / 16)`; more than 200 -> `highbit(size / 200)`;
/// at most 2^34 (16 GiB) unless that exceeds 131072 metaslabs; never below 2^24 (16 MiB).
pub fn default_ms_shift(region_bytes: u64) -> u32 {
    let highbit = |x: u64| 64 - x.leading_zeros();
    let count = region_bytes >> 29;
    let mut shift = if count < 16 {
        highbit(region_bytes / 16)
    } else if count > 200 {
        highbit(region_bytes / 200)
    } else {
        29
    };
    if shift >= 34 {
        shift = 34;
        if (region_bytes >> shift) > 131_072 {
            shift = highbit(region_bytes / 131_072);
        }
    }
    shift.max(24)
}

/// Owner value of a metaslab no shard has activated.
pub(crate) const NO_OWNER: u32 = u32::MAX;

/// One metaslab with the lock-free selection hints read by allocating shards. Aligned so that
/// neighbouring metaslabs' locks do not share a cache line.
#[repr(align(128))]
#[derive(Debug)]
pub(crate) struct MsSlot {
    pub(crate) ms: Mutex<Metaslab>,
    /// Segment-based weight as of the last update (hint).
    pub(crate) weight: AtomicU64,
    /// Largest allocatable segment as of the last update (hint).
    pub(crate) max_free: AtomicU64,
    /// Shard that has this metaslab active, or [`NO_OWNER`].
    pub(crate) owner: AtomicU32,
}

impl MsSlot {
    /// Publish the metaslab's weight and largest-free hint.
    pub(crate) fn refresh(&self, ms: &Metaslab, bound: &FreeBound) {
        self.weight.store(ms.weight(), Relaxed);
        self.set_hint(ms.max_free(), bound);
    }

    /// Publish a largest-free hint. A hint that grew raises the group's bound after the slot
    /// is written, so a scan that read the bound before the raise cannot lower it below `v`.
    pub(crate) fn set_hint(&self, v: u64, bound: &FreeBound) {
        if v > self.max_free.swap(v, SeqCst) {
            bound.raise(v);
        }
    }
}

/// Bits of [`FreeBound`]'s word holding the version.
const BOUND_VER_BITS: u32 = 18;
const BOUND_VER_MASK: u64 = (1 << BOUND_VER_BITS) - 1;

/// An upper bound of every slot's `max_free` hint, so an allocation no metaslab can hold fails
/// in O(1) instead of scanning every slot (ganged allocations on a fragmented pool try sizes
/// that fit nowhere several times each). One word: the bound in 512-byte units rounded up (46
/// bits) and a version (18 bits) that every raise bumps; a lowering is a compare-exchange
/// against the word read before the scan that justified it, so it fails when any slot grew in
/// between. On its own cache line: written only when a hint grows (sync_done) or by a lowering.
#[repr(align(128))]
#[derive(Debug)]
pub(crate) struct FreeBound(AtomicU64);

impl FreeBound {
    fn pack(bytes: u64, ver: u64) -> u64 {
        let units = bytes.div_ceil(512).min((1 << (64 - BOUND_VER_BITS)) - 1);
        (units << BOUND_VER_BITS) | (ver & BOUND_VER_MASK)
    }

    /// Bytes of a word (at least the bound it was packed from).
    pub(crate) fn bytes(w: u64) -> u64 {
        (w >> BOUND_VER_BITS) << 9
    }

    pub(crate) fn load(&self) -> u64 {
        self.0.load(SeqCst)
    }

    /// A hint grew to `bytes`.
    pub(crate) fn raise(&self, bytes: u64) {
        let _ = self.0.fetch_update(SeqCst, SeqCst, |w| {
            Some(Self::pack(
                Self::bytes(w).max(bytes),
                (w & BOUND_VER_MASK) + 1,
            ))
        });
    }

    /// Lower to `bytes` (the largest hint a scan saw) unless a hint grew since `w0` was read.
    pub(crate) fn lower(&self, w0: u64, bytes: u64) {
        let new = Self::pack(bytes, w0 & BOUND_VER_MASK);
        if new < w0 {
            let _ = self.0.compare_exchange(w0, new, SeqCst, Relaxed);
        }
    }
}

/// The metaslabs of one device.
#[derive(Debug)]
pub struct MetaslabGroup {
    spec: DeviceSpec,
    pub(crate) slots: Box<[MsSlot]>,
    /// Bytes held by the checkpoint on this device (-smp_alloc of its checkpoint map).
    pub(crate) ckpt_space: AtomicU64,
    /// Allocatable bytes as of the last sync_done (for the rotor's free-space bias).
    pub(crate) free_hint: AtomicU64,
    /// Upper bound of every slot's `max_free`.
    pub(crate) bound: FreeBound,
}

impl MetaslabGroup {
    /// Cut `spec`'s region into fully free metaslabs.
    pub fn new(spec: DeviceSpec, cfg: MetaslabConfig) -> Result<Self, AllocError> {
        if !(9..=24).contains(&spec.ashift) {
            return Err(AllocError::InvalidGeometry(format!(
                "ashift {} not in 9..=24",
                spec.ashift
            )));
        }
        if spec.ms_shift < spec.ashift || spec.ms_shift > 62 || spec.ms_shift - spec.ashift > 31 {
            return Err(AllocError::InvalidGeometry(format!(
                "ms_shift {} with ashift {}: a metaslab must hold 1..2^31 units",
                spec.ms_shift, spec.ashift
            )));
        }
        let unit = 1u64 << spec.ashift;
        let end = spec.end & !(unit - 1);
        if !spec.start.is_multiple_of(unit) || end <= spec.start {
            return Err(AllocError::InvalidGeometry(format!(
                "device {} region [{:#x}, {:#x}) empty or misaligned",
                spec.dev, spec.start, spec.end
            )));
        }
        let spec = DeviceSpec { end, ..spec };
        let mut max_hint = 0;
        let ms_size = 1u64 << spec.ms_shift;
        let count = (end - spec.start).div_ceil(ms_size);
        let mut slots = Vec::with_capacity(usize::try_from(count).unwrap_or(0));
        for i in 0..count {
            let s = spec.start + i * ms_size;
            let len = ms_size.min(end - s);
            let ms = Metaslab::new(spec.dev, i, s, len, spec.ashift, cfg)?;
            max_hint = max_hint.max(ms.max_free());
            slots.push(MsSlot {
                weight: AtomicU64::new(ms.weight()),
                max_free: AtomicU64::new(ms.max_free()),
                owner: AtomicU32::new(NO_OWNER),
                ms: Mutex::new(ms),
            });
        }
        Ok(Self {
            spec,
            slots: slots.into_boxed_slice(),
            ckpt_space: AtomicU64::new(0),
            free_hint: AtomicU64::new(end - spec.start),
            bound: FreeBound(AtomicU64::new(FreeBound::pack(max_hint, 0))),
        })
    }

    /// The device geometry (with `end` rounded down to the unit).
    pub fn spec(&self) -> &DeviceSpec {
        &self.spec
    }

    /// Allocatable region size in bytes.
    pub fn size(&self) -> u64 {
        self.spec.end - self.spec.start
    }

    /// Number of metaslabs.
    pub fn metaslab_count(&self) -> usize {
        self.slots.len()
    }

    /// Sum of the metaslabs' reserve space ([`Metaslab::reserve_space`]; locks each briefly).
    pub fn reserve_space(&self) -> u64 {
        self.slots
            .iter()
            .map(|s| s.ms.lock().reserve_space())
            .fold(0u64, u64::saturating_add)
    }

    /// Bytes held by the checkpoint on this device.
    pub fn checkpoint_space(&self) -> u64 {
        self.ckpt_space.load(Relaxed)
    }

    /// Index of the metaslab holding `[start, start + len)`; the range must not cross one.
    pub fn metaslab_of(&self, start: u64, len: u64) -> Result<usize, AllocError> {
        let out = || AllocError::OutOfRange {
            start,
            len,
            region_start: self.spec.start,
            region_end: self.spec.end,
        };
        if start < self.spec.start || len == 0 {
            return Err(out());
        }
        let end = start.checked_add(len).ok_or_else(out)?;
        if end > self.spec.end {
            return Err(out());
        }
        let i = (start - self.spec.start) >> self.spec.ms_shift;
        let last = (end - 1 - self.spec.start) >> self.spec.ms_shift;
        if i != last {
            let ms_start = self.spec.start + (i << self.spec.ms_shift);
            return Err(AllocError::OutOfRange {
                start,
                len,
                region_start: ms_start,
                region_end: ms_start + (1 << self.spec.ms_shift),
            });
        }
        usize::try_from(i).map_err(|_| out())
    }

    /// Run `f` on metaslab `index` under its lock.
    pub fn with_metaslab<R>(&self, index: usize, f: impl FnOnce(&mut Metaslab) -> R) -> Option<R> {
        let slot = self.slots.get(index)?;
        let mut ms = slot.ms.lock();
        let r = f(&mut ms);
        slot.refresh(&ms, &self.bound);
        Some(r)
    }

    /// Allocate `asize` bytes for `txg` on behalf of `shard` from one of the shard's two active
    /// metaslabs `active` (ZFS's primary and secondary); when neither can hold it, activate the
    /// heaviest metaslab no other shard has active (any metaslab when `try_hard`) in place of
    /// the active one with the smaller largest-free hint. Returns the offset and the change of
    /// reserve space; `max_loss` limits that change (see [`crate::reserve`]).
    ///
    /// Why two: on a fragmented device a metaslab's few large segments go first, and a single
    /// active metaslab is abandoned at the first request larger than what is left although it
    /// still serves smaller ones; requests of mixed sizes then hop over every metaslab within a
    /// few txgs, each hop onto cold trees (and keeping every metaslab from being idle, see
    /// `MetaslabConfig::lazy_merge_txgs`). With two, large requests wear down the second one
    /// while small ones keep using the first.
    pub(crate) fn alloc(
        &self,
        active: &mut [Option<usize>; 2],
        asize: u64,
        txg: u64,
        shard: u32,
        try_hard: bool,
        max_loss: Option<u64>,
    ) -> Result<(u64, i64), AllocError> {
        let w0 = self.bound.load();
        if asize > FreeBound::bytes(w0) {
            return Err(AllocError::NoSpace { size: asize });
        }
        for i in active.iter().flatten() {
            let slot = &self.slots[*i];
            if slot.max_free.load(Relaxed) >= asize {
                let mut ms = slot.ms.lock();
                match alloc_within(&mut ms, asize, txg, max_loss) {
                    Ok(r) => {
                        slot.set_hint(ms.max_free(), &self.bound);
                        return Ok(r);
                    }
                    Err(AllocError::NoSpace { .. }) => slot.refresh(&ms, &self.bound),
                    Err(e) => return Err(e),
                }
            }
        }
        // Neither fits: the one with less left (or an empty place) makes room.
        let hint = |a: Option<usize>| a.map_or(0, |i| self.slots[i].max_free.load(Relaxed));
        let victim = usize::from(active[0].is_some() && hint(active[1]) <= hint(active[0]));
        if let Some(i) = active[victim].take() {
            // Passivate: release it for other shards.
            let _ = self.slots[i]
                .owner
                .compare_exchange(shard, NO_OWNER, Relaxed, Relaxed);
        }
        // Each metaslab is tried at most once per call.
        let mut tried = vec![false; self.slots.len()];
        // The other active metaslab was just tried.
        if let Some(i) = active[1 - victim] {
            tried[i] = true;
        }
        let mut first_scan = true;
        loop {
            let mut best: Option<(u64, usize)> = None;
            let mut seen_max = 0;
            for (i, slot) in self.slots.iter().enumerate() {
                let hint = slot.max_free.load(SeqCst);
                seen_max = seen_max.max(hint);
                if tried[i] || hint < asize {
                    continue;
                }
                let owner = slot.owner.load(Relaxed);
                if !try_hard && owner != NO_OWNER && owner != shard {
                    continue;
                }
                let w = slot.weight.load(Relaxed);
                if best.is_none_or(|(bw, _)| w > bw) {
                    best = Some((w, i));
                }
            }
            let Some((_, i)) = best else {
                if first_scan {
                    // Nothing fits anywhere: later requests this large fail at the bound.
                    self.bound.lower(w0, seen_max);
                }
                return Err(AllocError::NoSpace { size: asize });
            };
            first_scan = false;
            tried[i] = true;
            let slot = &self.slots[i];
            let owned = slot
                .owner
                .compare_exchange(NO_OWNER, shard, Relaxed, Relaxed)
                .is_ok()
                || slot.owner.load(Relaxed) == shard;
            if !owned && !try_hard {
                continue;
            }
            let mut ms = slot.ms.lock();
            match alloc_within(&mut ms, asize, txg, max_loss) {
                Ok(r) => {
                    slot.set_hint(ms.max_free(), &self.bound);
                    active[victim] = Some(i);
                    return Ok(r);
                }
                Err(AllocError::NoSpace { .. }) => {
                    slot.refresh(&ms, &self.bound);
                    if owned {
                        let _ = slot
                            .owner
                            .compare_exchange(shard, NO_OWNER, Relaxed, Relaxed);
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Release every activation held by `shard`.
    pub(crate) fn release_shard(&self, shard: u32) {
        for slot in self.slots.iter() {
            let _ = slot
                .owner
                .compare_exchange(shard, NO_OWNER, Relaxed, Relaxed);
        }
    }

    /// Check the queued frees of `txg` in every metaslab (see [`Metaslab::check_queued_frees`]).
    pub(crate) fn check_queued_frees(&self, txg: u64) -> Result<(), AllocError> {
        for slot in self.slots.iter() {
            slot.ms.lock().check_queued_frees(txg)?;
        }
        Ok(())
    }

    /// Sync every metaslab with work for `txg`.
    pub(crate) fn sync(
        &self,
        txg: u64,
        checkpoint_txg: u64,
    ) -> Result<DeviceSyncOutput, AllocError> {
        let mut outs = Vec::new();
        let mut ck = Vec::new();
        let mut ck_space = 0;
        for slot in self.slots.iter() {
            let mut ms = slot.ms.lock();
            if !ms.needs_sync(txg) {
                continue;
            }
            let mut out = ms.sync(txg, checkpoint_txg)?;
            ck.append(&mut out.ckpt_records);
            ck_space += out.ckpt_space;
            if !out.sm_records.is_empty() || out.condensed || out.ckpt_space != 0 {
                outs.push((ms.index(), out));
            }
        }
        self.ckpt_space.fetch_add(ck_space, Relaxed);
        Ok(DeviceSyncOutput {
            dev: self.spec.dev,
            metaslabs: outs,
            ckpt_records: ck,
            ckpt_space: ck_space,
        })
    }

    /// `sync_done(txg)` on every metaslab; returns the change of allocatable bytes and of
    /// reserve space.
    pub(crate) fn sync_done(&self, txg: u64) -> Result<(i128, i128), AllocError> {
        let mut before = 0u64;
        let mut after = 0u64;
        let mut reserve = 0i128;
        for slot in self.slots.iter() {
            let mut ms = slot.ms.lock();
            before += ms.free_space();
            reserve -= i128::from(ms.reserve_space());
            ms.sync_done(txg)?;
            after += ms.free_space();
            reserve += i128::from(ms.reserve_space());
            slot.refresh(&ms, &self.bound);
        }
        self.free_hint.store(after, Relaxed);
        // Tighten the bound to the refreshed hints (unless one grew meanwhile).
        let w0 = self.bound.load();
        let max = self
            .slots
            .iter()
            .map(|s| s.max_free.load(SeqCst))
            .max()
            .unwrap_or(0);
        self.bound.lower(w0, max);
        Ok((i128::from(after) - i128::from(before), reserve))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ms_shift_follows_zfs_sizing() {
        assert_eq!(default_ms_shift(128 << 30), 30);
        assert_eq!(default_ms_shift(100 << 30), 29);
        assert_eq!(default_ms_shift(8 << 30), 29);
        assert_eq!(default_ms_shift(1 << 40), 33);
        assert_eq!(default_ms_shift(64 << 20), 24);
        assert_eq!(default_ms_shift(4 << 30), 29);
        assert_eq!(default_ms_shift(1 << 50), 34);
        assert_eq!(default_ms_shift(1 << 52), 36);
    }

    #[test]
    fn partial_last_metaslab() {
        let spec = DeviceSpec {
            dev: 3,
            start: 4 << 20,
            end: (4 << 20) + (40 << 20) + 0x234,
            ashift: 12,
            ms_shift: 24,
        };
        let g = MetaslabGroup::new(spec, MetaslabConfig::default()).unwrap();
        assert_eq!(g.metaslab_count(), 3);
        assert_eq!(g.size(), 40 << 20);
        assert!(g
            .metaslab_of((4 << 20) + (16 << 20) - 0x1000, 0x2000)
            .is_err());
        assert_eq!(g.metaslab_of((4 << 20) + (16 << 20), 0x2000).unwrap(), 1);
    }
}

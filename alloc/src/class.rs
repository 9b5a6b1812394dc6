//! The pool-wide metaslab class: one group per device, one allocator shard per reactor.
//!
//! Each shard has its own two active metaslabs per device and its own rotor over the devices, so
//! reactors allocating concurrently lock different metaslabs. Free-space accounting for the slop
//! check is batched per shard (at most [`ACCOUNTING_BATCH`] bytes of drift per shard) so the
//! write path does not bounce a shared counter between cores.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::OnceLock;

use parking_lot::Mutex;

use crate::error::AllocError;
use crate::frag::fragmentation;
use crate::group::{DeviceSpec, MetaslabGroup};
use crate::metaslab::{Metaslab, MetaslabConfig, MetaslabSyncOutput};
use crate::range_tree::HISTOGRAM_BUCKETS;
use crate::record::{SmAction, SmRecord};
use crate::reserve::{max_loss, min_loss, RESERVE_BATCH};

/// Allocated bytes a shard may accumulate before publishing them to the class counter.
pub const ACCOUNTING_BATCH: i64 = 1 << 20;

/// Whether an allocation may use the slop reserve.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AllocClass {
    /// Ordinary writes: fail with `NoSpace` rather than eat into the slop reserve.
    #[default]
    Normal,
    /// Sync-context metadata, checkpoint discard and other allocations that must succeed on a
    /// full pool: may use the slop reserve.
    Reserved,
}

/// An allocated (or to-be-freed) extent: bytes `[start, start + len)` of device `dev`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Extent {
    /// Device index.
    pub dev: u32,
    /// First byte (absolute device offset).
    pub start: u64,
    /// Length in bytes (a multiple of the device's unit).
    pub len: u64,
}

/// Class tunables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClassConfig {
    /// Number of allocator shards (one per reactor); shard ids passed to `alloc` are taken
    /// modulo this.
    pub shards: usize,
    /// Largest device index + 1 the class can hold.
    pub max_devices: u32,
    /// Slop reserve = `max(size >> slop_shift, slop_min)`, at most half the pool.
    pub slop_shift: u32,
    /// Lower bound of the slop reserve in bytes.
    pub slop_min: u64,
    /// Bytes a shard places on one device before its rotor moves on (scaled by the device's
    /// share of free space, ZFS `metaslab_aliquot`).
    pub aliquot: u64,
    /// Metaslab tunables.
    pub metaslab: MetaslabConfig,
}

impl Default for ClassConfig {
    fn default() -> Self {
        Self {
            shards: 1,
            max_devices: 1024,
            slop_shift: 5,
            slop_min: 16 << 20,
            aliquot: 2 << 20,
            metaslab: MetaslabConfig::default(),
        }
    }
}

/// Space accounting of a device or of the class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SpaceStats {
    /// Allocatable region in bytes.
    pub size: u64,
    /// Bytes not free (`size - free - deferred`), including checkpoint-held space.
    pub allocated: u64,
    /// Bytes allocatable now.
    pub free: u64,
    /// Bytes freed in the last txgs, free on disk, allocatable after the defer period.
    pub deferred: u64,
    /// Bytes held by the checkpoint (freed since it was taken, still allocated on disk).
    pub checkpointed: u64,
    /// ZFS fragmentation metric of the free space, percent.
    pub fragmentation: u64,
    /// Number of allocatable segments.
    pub free_segments: u64,
}

/// Per-device statistics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceStats {
    /// Device index.
    pub dev: u32,
    /// Number of metaslabs.
    pub metaslabs: usize,
    /// Space accounting.
    pub space: SpaceStats,
}

/// Class statistics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassStats {
    /// Totals over all devices.
    pub total: SpaceStats,
    /// Bytes normal allocations may not use.
    pub slop: u64,
    /// Per device, in device-index order.
    pub devices: Vec<DeviceStats>,
}

/// What `sync(txg)` produced for one device.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceSyncOutput {
    /// Device index.
    pub dev: u32,
    /// `(metaslab index, output)` for each metaslab with records, in index order. The per-
    /// metaslab `ckpt_records` are moved into `ckpt_records` below.
    pub metaslabs: Vec<(u64, MetaslabSyncOutput)>,
    /// FREE records to append to the device's checkpoint space map (offset order per metaslab).
    pub ckpt_records: Vec<SmRecord>,
    /// Bytes described by `ckpt_records`.
    pub ckpt_space: u64,
}

/// What `sync(txg)` produced for the class.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClassSyncOutput {
    /// The txg synced.
    pub txg: u64,
    /// Devices with anything to write, in index order.
    pub devices: Vec<DeviceSyncOutput>,
}

#[derive(Debug, Default)]
struct ShardState {
    generation: u64,
    devs: Vec<u32>,
    rotor: usize,
    aliquot_used: u64,
    /// Active metaslabs (primary, secondary) per device index.
    active: Vec<[Option<usize>; 2]>,
    /// Change of free bytes not yet published to the class counter.
    unflushed: i64,
    /// Change of reserve space not yet published (see [`crate::reserve`]).
    reserve_unflushed: i64,
}

#[repr(align(128))]
#[derive(Debug)]
struct ShardSlot(Mutex<ShardState>);

/// The class's free-space counter on its own cache line: shards add to it (batched) while
/// every allocation reads the read-mostly fields next to it.
#[repr(align(128))]
#[derive(Debug)]
struct PaddedI64(AtomicI64);

impl std::ops::Deref for PaddedI64 {
    type Target = AtomicI64;
    fn deref(&self) -> &AtomicI64 {
        &self.0
    }
}

/// The pool-wide allocator. All methods take `&self`; share it with an `Arc`.
#[derive(Debug)]
pub struct MetaslabClass {
    cfg: ClassConfig,
    groups: Box<[OnceLock<MetaslabGroup>]>,
    dev_list: Mutex<Vec<u32>>,
    generation: AtomicU64,
    shards: Box<[ShardSlot]>,
    checkpoint_txg: AtomicU64,
    /// Allocatable bytes (minus what shards have not published yet).
    free_space: PaddedI64,
    /// Sum of the metaslabs' reserve space (minus what shards have not published yet).
    reserve: PaddedI64,
    total_size: AtomicU64,
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl MetaslabClass {
    /// An empty class (add devices with [`MetaslabClass::add_device`]).
    pub fn new(cfg: ClassConfig) -> Self {
        let cfg = ClassConfig {
            shards: cfg.shards.max(1),
            ..cfg
        };
        let groups = (0..cfg.max_devices).map(|_| OnceLock::new()).collect();
        let shards = (0..cfg.shards)
            .map(|_| ShardSlot(Mutex::new(ShardState::default())))
            .collect();
        Self {
            cfg,
            groups,
            dev_list: Mutex::new(Vec::new()),
            generation: AtomicU64::new(1),
            shards,
            checkpoint_txg: AtomicU64::new(0),
            free_space: PaddedI64(AtomicI64::new(0)),
            reserve: PaddedI64(AtomicI64::new(0)),
            total_size: AtomicU64::new(0),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &ClassConfig {
        &self.cfg
    }

    /// Add a device (a new group of fully free metaslabs; load its space maps with
    /// [`MetaslabClass::load_metaslab`] before allocating when the device has history).
    pub fn add_device(&self, spec: DeviceSpec) -> Result<(), AllocError> {
        let cell = self
            .groups
            .get(usize::try_from(spec.dev).unwrap_or(usize::MAX))
            .ok_or_else(|| {
                AllocError::InvalidGeometry(format!(
                    "device index {} >= max_devices {}",
                    spec.dev, self.cfg.max_devices
                ))
            })?;
        let group = MetaslabGroup::new(spec, self.cfg.metaslab)?;
        let size = group.size();
        let reserve = group.reserve_space();
        let mut list = self.dev_list.lock();
        cell.set(group)
            .map_err(|_| AllocError::DeviceExists { dev: spec.dev })?;
        list.push(spec.dev);
        list.sort_unstable();
        self.total_size.fetch_add(size, Relaxed);
        self.free_space.fetch_add(to_i64(size), Relaxed);
        self.reserve.fetch_add(to_i64(reserve), Relaxed);
        self.generation.fetch_add(1, Relaxed);
        Ok(())
    }

    /// The group of device `dev`.
    pub fn group(&self, dev: u32) -> Result<&MetaslabGroup, AllocError> {
        self.groups
            .get(usize::try_from(dev).unwrap_or(usize::MAX))
            .and_then(OnceLock::get)
            .ok_or(AllocError::UnknownDevice { dev })
    }

    /// Device indexes in ascending order.
    pub fn devices(&self) -> Vec<u32> {
        self.dev_list.lock().clone()
    }

    /// Run `f` on metaslab `index` of `dev` under its lock (inspection, tests, tools).
    pub fn with_metaslab<R>(
        &self,
        dev: u32,
        index: usize,
        f: impl FnOnce(&mut Metaslab) -> R,
    ) -> Result<R, AllocError> {
        let g = self.group(dev)?;
        g.with_metaslab(index, f).ok_or(AllocError::OutOfRange {
            start: u64::try_from(index).unwrap_or(u64::MAX),
            len: 1,
            region_start: 0,
            region_end: u64::try_from(g.metaslab_count()).unwrap_or(0),
        })
    }

    /// Replay a metaslab's space map (see [`Metaslab::load`]).
    pub fn load_metaslab<I: IntoIterator<Item = SmRecord>>(
        &self,
        dev: u32,
        index: usize,
        records: I,
    ) -> Result<(), AllocError> {
        let (before, after) = self.with_metaslab(dev, index, |ms| {
            let before = (ms.free_space(), ms.reserve_space());
            let r = ms.load(records);
            let after = (ms.free_space(), ms.reserve_space());
            (before, r.map(|()| after))
        })?;
        // A failed load may have changed the trees too: account what is there now.
        let after = match after {
            Ok(a) => a,
            Err(e) => {
                let now =
                    self.with_metaslab(dev, index, |ms| (ms.free_space(), ms.reserve_space()))?;
                self.account(before, now);
                return Err(e);
            }
        };
        self.account(before, after);
        Ok(())
    }

    /// Account a device's checkpoint space map at import: every record must be FREE, lie inside
    /// one metaslab and be allocated there (I2). Returns the bytes held (-smp_alloc).
    pub fn load_checkpoint_map<I: IntoIterator<Item = SmRecord>>(
        &self,
        dev: u32,
        records: I,
    ) -> Result<u64, AllocError> {
        let g = self.group(dev)?;
        let mut held = 0u64;
        for r in records {
            self.check_checkpoint_extent(g, &r)?;
            held += r.len;
        }
        g.ckpt_space.store(held, Relaxed);
        Ok(held)
    }

    fn check_checkpoint_extent(&self, g: &MetaslabGroup, r: &SmRecord) -> Result<(), AllocError> {
        if r.action != SmAction::Free {
            return Err(AllocError::Invariant(format!(
                "checkpoint map of device {} holds an ALLOC record at {:#x}",
                g.spec().dev,
                r.start
            )));
        }
        let i = g.metaslab_of(r.start, r.len)?;
        let free = g
            .with_metaslab(i, |ms| ms.range_is_free_anywhere(r.start, r.len))
            .unwrap_or(true);
        if free {
            return Err(AllocError::Invariant(format!(
                "checkpointed extent [{:#x},+{:#x}) of device {} is free in its metaslab (I1/I2)",
                r.start,
                r.len,
                g.spec().dev
            )));
        }
        Ok(())
    }

    /// Check I1/I2 for extents of a device's checkpoint map: each is FREE, inside one metaslab
    /// and not free anywhere in it.
    pub fn verify_checkpoint_extents<I: IntoIterator<Item = SmRecord>>(
        &self,
        dev: u32,
        records: I,
    ) -> Result<(), AllocError> {
        let g = self.group(dev)?;
        records
            .into_iter()
            .try_for_each(|r| self.check_checkpoint_extent(g, &r))
    }

    /// Whether any byte of `extent` is free: allocatable, allocated in a txg not yet synced,
    /// queued for freeing, or free on disk (freeing, freed, deferred). `false` means the whole
    /// extent is allocated on disk and live (or held by the checkpoint): what `ringpool verify`
    /// expects of every referenced block.
    pub fn is_free(&self, extent: Extent) -> Result<bool, AllocError> {
        let g = self.group(extent.dev)?;
        let i = g.metaslab_of(extent.start, extent.len)?;
        Ok(g.slots[i]
            .ms
            .lock()
            .range_is_free_anywhere(extent.start, extent.len))
    }

    /// Set the checkpoint txg (early sync task of checkpoint create, before `sync` of the txg).
    pub fn set_checkpoint_txg(&self, txg: u64) {
        self.checkpoint_txg.store(txg, Relaxed);
    }

    /// Clear the checkpoint txg (early sync task of checkpoint discard).
    pub fn clear_checkpoint_txg(&self) {
        self.checkpoint_txg.store(0, Relaxed);
    }

    /// The checkpoint txg, 0 when none.
    pub fn checkpoint_txg(&self) -> u64 {
        self.checkpoint_txg.load(Relaxed)
    }

    /// Slop reserve: `max(size >> slop_shift, slop_min)`, at most half the pool.
    pub fn slop_space(&self) -> u64 {
        let size = self.total_size.load(Relaxed);
        (size >> self.cfg.slop_shift)
            .max(self.cfg.slop_min)
            .min(size / 2)
    }

    fn shard_slot(&self, shard: usize) -> (&ShardSlot, u32) {
        let i = shard % self.shards.len();
        // shards.len() comes from a usize config; an id beyond u32 is clamped (owner ids only
        // need to be distinct for realistic shard counts).
        (&self.shards[i], u32::try_from(i).unwrap_or(u32::MAX - 1))
    }

    fn refresh_shard(&self, st: &mut ShardState) {
        let gen = self.generation.load(Relaxed);
        if st.generation == gen {
            return;
        }
        st.devs = self.dev_list.lock().clone();
        let max = st.devs.iter().max().map_or(0, |&d| d as usize + 1);
        st.active.resize(max, [None; 2]);
        st.generation = gen;
        if st.rotor >= st.devs.len() {
            st.rotor = 0;
        }
    }

    fn flush_shard(&self, st: &mut ShardState) {
        if st.unflushed != 0 {
            self.free_space.fetch_add(st.unflushed, Relaxed);
            st.unflushed = 0;
        }
        if st.reserve_unflushed != 0 {
            self.reserve.fetch_add(st.reserve_unflushed, Relaxed);
            st.reserve_unflushed = 0;
        }
    }

    /// How many bytes a shard places on `g` before rotating: the aliquot scaled by the device's
    /// free fraction relative to the class's (ZFS `mg_bias`).
    fn aliquot_for(&self, g: &MetaslabGroup) -> u64 {
        let total = self.total_size.load(Relaxed).max(1);
        let free = u64::try_from(self.free_space.load(Relaxed).max(0)).unwrap_or(0);
        let gsize = g.size().max(1);
        let gfree = g.free_hint.load(Relaxed);
        // ratio in percent of (device free %) / (class free %)
        let dev_pct = u128::from(gfree) * 100 / u128::from(gsize);
        let class_pct = (u128::from(free) * 100 / u128::from(total)).max(1);
        let ratio = (dev_pct * 100 / class_pct).clamp(25, 400);
        u64::try_from(u128::from(self.cfg.aliquot) * ratio / 100).unwrap_or(self.cfg.aliquot)
    }

    /// Allocate `size` bytes (rounded up to the device's unit) for `txg` on behalf of `shard`.
    /// Devices are visited from the shard's rotor; within a device the shard's active metaslab
    /// is used first. Normal allocations fail with `NoSpace` when they would leave less than the
    /// slop reserve free, or less than the slop in pieces the sync can use (see
    /// [`crate::reserve`]).
    pub fn alloc(
        &self,
        size: u64,
        txg: u64,
        shard: usize,
        kind: AllocClass,
    ) -> Result<Extent, AllocError> {
        if size == 0 {
            return Err(AllocError::Misaligned {
                start: 0,
                len: 0,
                unit: 0,
            });
        }
        let (slot, shard_id) = self.shard_slot(shard);
        let mut st = slot.0.lock();
        self.refresh_shard(&mut st);
        let mut limit = None;
        if kind == AllocClass::Normal {
            let free = self.free_space.load(Relaxed) + st.unflushed;
            let slop = self.slop_space();
            if free - to_i64(size) < to_i64(slop) {
                return Err(AllocError::NoSpace { size });
            }
            limit = max_loss(
                self.reserve.load(Relaxed),
                st.reserve_unflushed,
                self.shards.len(),
                slop,
                size,
                self.cfg.metaslab.reserve_piece,
            );
            // Refused wherever it would go (see `min_loss`): no metaslab need be tried.
            let least = min_loss(size, self.cfg.metaslab.reserve_piece, 1);
            if limit.is_some_and(|max| least > max) {
                return Err(AllocError::NoSpace { size });
            }
        }
        let ndev = st.devs.len();
        for try_hard in [false, true] {
            for _ in 0..ndev {
                let dev = st.devs[st.rotor % ndev];
                let Ok(g) = self.group(dev) else {
                    st.rotor = (st.rotor + 1) % ndev;
                    continue;
                };
                let unit = 1u64 << g.spec().ashift;
                let asize = size.div_ceil(unit) * unit;
                let di = dev as usize;
                let mut active = st.active[di];
                let r = g.alloc(&mut active, asize, txg, shard_id, try_hard, limit);
                st.active[di] = active;
                match r {
                    Ok((start, reserve_delta)) => {
                        st.unflushed -= to_i64(asize);
                        st.reserve_unflushed += reserve_delta;
                        if st.unflushed.abs() >= ACCOUNTING_BATCH
                            || st.reserve_unflushed.abs() >= RESERVE_BATCH
                        {
                            self.flush_shard(&mut st);
                        }
                        st.aliquot_used += asize;
                        if ndev > 1 && st.aliquot_used >= self.aliquot_for(g) {
                            st.aliquot_used = 0;
                            st.rotor = (st.rotor + 1) % ndev;
                        }
                        return Ok(Extent {
                            dev,
                            start,
                            len: asize,
                        });
                    }
                    Err(AllocError::NoSpace { .. }) => {
                        st.aliquot_used = 0;
                        st.rotor = (st.rotor + 1) % ndev;
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        Err(AllocError::NoSpace { size })
    }

    /// Publish a metaslab's change of `(free, reserve)` bytes from `before` to `after`.
    fn account(&self, before: (u64, u64), after: (u64, u64)) {
        self.free_space
            .fetch_add(to_i64(after.0) - to_i64(before.0), Relaxed);
        self.reserve
            .fetch_add(to_i64(after.1) - to_i64(before.1), Relaxed);
    }

    /// Allocate exactly `extent` for `txg` (it must be allocatable).
    pub fn claim(&self, extent: Extent, txg: u64) -> Result<(), AllocError> {
        let g = self.group(extent.dev)?;
        let i = g.metaslab_of(extent.start, extent.len)?;
        let (before, after) = self.with_metaslab(extent.dev, i, |ms| {
            let before = (ms.free_space(), ms.reserve_space());
            let r = ms.claim(extent.start, extent.len, txg);
            (before, r.map(|()| (ms.free_space(), ms.reserve_space())))
        })?;
        self.account(before, after?);
        Ok(())
    }

    /// Free `extent`, born in `birth_txg`, as part of txg `txg` (see [`Metaslab::free`]: routed
    /// to the checkpoint at sync time when `birth_txg <= checkpoint txg < txg`).
    pub fn free(&self, extent: Extent, birth_txg: u64, txg: u64) -> Result<(), AllocError> {
        let g = self.group(extent.dev)?;
        let i = g.metaslab_of(extent.start, extent.len)?;
        let slot = &g.slots[i];
        slot.ms
            .lock()
            .free(extent.start, extent.len, birth_txg, txg)
    }

    /// Undo an allocation made for the still-open `txg`: allocatable again at once.
    pub fn free_now(&self, extent: Extent, txg: u64) -> Result<(), AllocError> {
        let g = self.group(extent.dev)?;
        let i = g.metaslab_of(extent.start, extent.len)?;
        let slot = &g.slots[i];
        let mut ms = slot.ms.lock();
        let before = (ms.free_space(), ms.reserve_space());
        ms.free_now(extent.start, extent.len, txg)?;
        let after = (ms.free_space(), ms.reserve_space());
        slot.refresh(&ms, &g.bound);
        drop(ms);
        self.account(before, after);
        Ok(())
    }

    /// Move a checkpoint-map extent of `dev` back into its metaslab's `freeing` (checkpoint
    /// discard; call from the sync task of the txg that removes it from the checkpoint map,
    /// before that txg's `sync`). The checkpoint's held space shrinks by `len`.
    pub fn discard_checkpoint_extent(
        &self,
        dev: u32,
        start: u64,
        len: u64,
    ) -> Result<(), AllocError> {
        let g = self.group(dev)?;
        let i = g.metaslab_of(start, len)?;
        g.with_metaslab(i, |ms| ms.discard_checkpoint_extent(start, len))
            .unwrap_or(Err(AllocError::UnknownDevice { dev }))?;
        let prev = g.ckpt_space.fetch_sub(len, Relaxed);
        if prev < len {
            g.ckpt_space.store(0, Relaxed);
            return Err(AllocError::Invariant(format!(
                "device {dev}: discarded {len} bytes but only {prev} were checkpointed"
            )));
        }
        Ok(())
    }

    /// Sync `txg` on every device (once per pass): see [`Metaslab::sync`]. The frees queued for
    /// `txg` are checked on every metaslab first: a double free fails the call before any
    /// metaslab is synced (and is dropped from the queue, so the txg can be synced again).
    pub fn sync(&self, txg: u64) -> Result<ClassSyncOutput, AllocError> {
        let ckpt = self.checkpoint_txg();
        let mut out = ClassSyncOutput {
            txg,
            devices: Vec::new(),
        };
        let devices = self.devices();
        for &dev in &devices {
            self.group(dev)?.check_queued_frees(txg)?;
        }
        for dev in devices {
            let g = self.group(dev)?;
            let d = g.sync(txg, ckpt)?;
            if !d.metaslabs.is_empty() || !d.ckpt_records.is_empty() {
                out.devices.push(d);
            }
        }
        Ok(out)
    }

    /// Finish `txg` after its uberblock is durable: deferred frees of `txg - 2` become
    /// allocatable and every metaslab's selection hints (weight, largest free) are refreshed.
    pub fn sync_done(&self, txg: u64) -> Result<(), AllocError> {
        for dev in self.devices() {
            let g = self.group(dev)?;
            let (free, reserve) = g.sync_done(txg)?;
            self.free_space
                .fetch_add(i64::try_from(free).unwrap_or(0), Relaxed);
            self.reserve
                .fetch_add(i64::try_from(reserve).unwrap_or(0), Relaxed);
        }
        Ok(())
    }

    /// Publish every shard's batched accounting.
    fn flush_all_shards(&self) {
        for s in self.shards.iter() {
            self.flush_shard(&mut s.0.lock());
        }
    }

    /// Sum of the metaslabs' reserve space: a lower bound of the allocatable bytes that
    /// blocks of `MetaslabConfig::reserve_piece` can use (see [`crate::reserve`]). Exact:
    /// locks every metaslab briefly.
    pub fn reserve_space(&self) -> u64 {
        let mut total = 0u64;
        for dev in self.devices() {
            if let Ok(g) = self.group(dev) {
                total = total.saturating_add(g.reserve_space());
            }
        }
        total
    }

    /// Exact statistics (locks every metaslab briefly).
    pub fn stats(&self) -> ClassStats {
        self.flush_all_shards();
        let mut devices = Vec::new();
        let mut total = SpaceStats::default();
        let mut class_hist = [0u64; HISTOGRAM_BUCKETS];
        for dev in self.devices() {
            let Ok(g) = self.group(dev) else { continue };
            let mut s = SpaceStats {
                size: g.size(),
                checkpointed: g.checkpoint_space(),
                ..SpaceStats::default()
            };
            let mut hist = [0u64; HISTOGRAM_BUCKETS];
            for slot in g.slots.iter() {
                let ms = slot.ms.lock();
                s.free += ms.free_space();
                s.deferred += ms.deferred_space();
                s.free_segments += ms.allocatable().segment_count() as u64;
                for (a, b) in hist.iter_mut().zip(ms.sm_histogram()) {
                    *a += b;
                }
            }
            s.allocated = s.size - s.free - s.deferred;
            s.fragmentation = fragmentation(&hist);
            for (a, b) in class_hist.iter_mut().zip(hist) {
                *a += b;
            }
            total.size += s.size;
            total.allocated += s.allocated;
            total.free += s.free;
            total.deferred += s.deferred;
            total.checkpointed += s.checkpointed;
            total.free_segments += s.free_segments;
            devices.push(DeviceStats {
                dev,
                metaslabs: g.metaslab_count(),
                space: s,
            });
        }
        total.fragmentation = fragmentation(&class_hist);
        ClassStats {
            total,
            slop: self.slop_space(),
            devices,
        }
    }

    /// Visit every allocatable segment of `dev` (offset order per metaslab).
    pub fn walk_free(&self, dev: u32, mut f: impl FnMut(u64, u64)) -> Result<(), AllocError> {
        let g = self.group(dev)?;
        for slot in g.slots.iter() {
            slot.ms.lock().walk_free(&mut f);
        }
        Ok(())
    }

    /// Check every metaslab's invariants ([`Metaslab::verify`]) and the class accounting.
    pub fn verify(&self) -> Result<(), AllocError> {
        self.flush_all_shards();
        let mut free = 0u64;
        let mut reserve = 0u64;
        for dev in self.devices() {
            let g = self.group(dev)?;
            for slot in g.slots.iter() {
                let ms = slot.ms.lock();
                ms.verify()?;
                free += ms.free_space();
                reserve += ms.reserve_space();
            }
        }
        let counted = self.free_space.load(Relaxed);
        if counted != to_i64(free) {
            return Err(AllocError::Invariant(format!(
                "class free counter {counted} != sum of allocatable {free}"
            )));
        }
        let counted = self.reserve.load(Relaxed);
        if counted != to_i64(reserve) {
            return Err(AllocError::Invariant(format!(
                "class reserve counter {counted} != sum of the metaslabs' reserve space {reserve}"
            )));
        }
        Ok(())
    }

    /// [`MetaslabClass::verify`] plus I6 (call between txgs, after `sync_done`).
    pub fn verify_quiesced(&self) -> Result<(), AllocError> {
        self.verify()?;
        for dev in self.devices() {
            let g = self.group(dev)?;
            for slot in g.slots.iter() {
                slot.ms.lock().verify_quiesced()?;
            }
        }
        Ok(())
    }

    /// Release every metaslab activation held by `shard` (e.g. when a reactor stops).
    pub fn release_shard(&self, shard: usize) {
        let (slot, id) = self.shard_slot(shard);
        let mut st = slot.0.lock();
        self.flush_shard(&mut st);
        st.active.iter_mut().for_each(|a| *a = [None; 2]);
        for dev in self.devices() {
            if let Ok(g) = self.group(dev) {
                g.release_shard(id);
            }
        }
    }
}

//! State shared by the reactors (data path) and the sync thread: devices, the allocator, the
//! txg engine, the block cache, reader epochs, the volume table and the sync-task queue.
//! Everything here is safe to touch from any thread with short lock hold times; the state only
//! the sync thread mutates lives in [`super::syncer::SyncState`], owned by that thread.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::{Mutex, RwLock};
use ringpool_alloc::{AllocClass, AllocError, Extent, MetaslabClass};
use ringpool_ondisk::blkptr::{DataPtr, Dva};
use ringpool_ondisk::checksum::Checksum;

use super::cache::LruCache;
use super::error::{PoolError, Result};
use super::indirect::Indirect;
use super::objtree::{key_of, BlockKey};
use super::readers::ReaderTracker;
use super::syncer::SyncTask;
use super::txg::TxgEngine;
use super::vdev::Vdev;
use super::volume::VolumeInner;
use crate::io::IoBuf;

/// A queued sync task and where its result goes.
pub(crate) struct QueuedTask {
    pub txg: u64,
    pub early: bool,
    pub task: SyncTask,
    pub result: Arc<Mutex<Option<Result<()>>>>,
}

impl std::fmt::Debug for QueuedTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueuedTask")
            .field("txg", &self.txg)
            .field("early", &self.early)
            .finish()
    }
}

/// Shared pool state.
pub struct Shared {
    pub(crate) name: String,
    /// Pool GUID (changed online by `reguid`).
    guid: AtomicU64,
    pub(crate) read_only: bool,
    pub(crate) vdevs: RwLock<Vec<Arc<Vdev>>>,
    pub(crate) txg: Arc<TxgEngine>,
    pub(crate) class: Arc<MetaslabClass>,
    pub(crate) cache: LruCache<BlockKey, Arc<Indirect>>,
    pub(crate) readers: Arc<ReaderTracker<(Dva, u64)>>,
    pub(crate) volumes: RwLock<BTreeMap<String, Arc<VolumeInner>>>,
    pub(crate) tasks: Mutex<Vec<QueuedTask>>,
    /// Allocation unit used for block sizes (the largest device ashift).
    pub(crate) max_ashift: AtomicU64,
    /// Highest txg holding any change (FLUSH waits for it).
    pub(crate) last_dirty: AtomicU64,
    /// The last committed uberblock.
    pub(crate) last_ub: Mutex<Option<ringpool_ondisk::uberblock::Uberblock>>,
    /// Set by export: the sync thread marks the labels exported when it stops.
    pub(crate) exporting: std::sync::atomic::AtomicBool,
    /// Overwritten blocks whose txg closed before their readers finished.
    pub(crate) late_frees: Mutex<Vec<(Dva, u64)>>,
    /// Checkpoint state mirror and discard reactor.
    pub(crate) ckpt: super::checkpoint::CkptShared,
    /// Why the pool was suspended, once a sync failed.
    pub(crate) suspension: super::health::Suspension,
    /// Passes, deferred frees and time of the syncs so far.
    pub(crate) sync_stats: Mutex<super::txg::SyncStats>,
    /// Writes that found no space and waited for a sync to bring deferred frees back
    /// (`Volume::prepare_commit`).
    space_waits: AtomicU64,
    next_shard: AtomicUsize,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("name", &self.name)
            .field("guid", &format_args!("{:#x}", self.guid()))
            .field("read_only", &self.read_only)
            .field("vdevs", &self.vdevs.read().len())
            .field("txg", &self.txg)
            .finish_non_exhaustive()
    }
}

thread_local! {
    static SHARD: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
}

impl Shared {
    /// The pool GUID.
    pub(crate) fn guid(&self) -> u64 {
        self.guid.load(Ordering::SeqCst)
    }

    /// Changes the pool GUID (`reguid`, from sync context: the next labels and uberblocks
    /// carry it).
    pub(crate) fn set_guid(&self, guid: u64) {
        self.guid.store(guid, Ordering::SeqCst);
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        name: String,
        guid: u64,
        read_only: bool,
        vdevs: Vec<Arc<Vdev>>,
        txg: Arc<TxgEngine>,
        class: Arc<MetaslabClass>,
        cache_bytes: usize,
    ) -> Arc<Shared> {
        let max_ashift = vdevs.iter().map(|v| v.ashift).max().unwrap_or(12);
        Arc::new_cyclic(|weak: &Weak<Shared>| {
            let w = weak.clone();
            let readers = ReaderTracker::new(move |items: Vec<(Dva, u64)>| {
                if let Some(s) = w.upgrade() {
                    for (dva, birth) in items {
                        s.release_overwritten(dva, birth);
                    }
                }
            });
            Shared {
                name,
                guid: AtomicU64::new(guid),
                read_only,
                vdevs: RwLock::new(vdevs),
                txg,
                class,
                cache: LruCache::new(cache_bytes),
                readers,
                volumes: RwLock::new(BTreeMap::new()),
                tasks: Mutex::new(Vec::new()),
                max_ashift: AtomicU64::new(u64::from(max_ashift)),
                last_dirty: AtomicU64::new(0),
                last_ub: Mutex::new(None),
                exporting: std::sync::atomic::AtomicBool::new(false),
                late_frees: Mutex::new(Vec::new()),
                ckpt: Default::default(),
                suspension: Default::default(),
                sync_stats: Default::default(),
                space_waits: AtomicU64::new(0),
                next_shard: AtomicUsize::new(0),
            }
        })
    }

    /// Device `index`.
    pub(crate) fn vdev(&self, index: u32) -> Result<Arc<Vdev>> {
        let v = self.vdevs.read();
        usize::try_from(index)
            .ok()
            .and_then(|i| v.get(i).cloned())
            .ok_or_else(|| PoolError::Corrupt {
                object: "block pointer".into(),
                offset: 0,
                reason: format!("device {index} does not exist"),
            })
    }

    /// Allocated size for `len` logical bytes.
    pub(crate) fn asize(&self, len: u32) -> u32 {
        let unit = 1u32 << self.max_ashift.load(Ordering::Relaxed);
        len.div_ceil(unit) * unit
    }

    /// Allocator shard of the calling thread (one per reactor thread, round robin).
    fn shard(&self) -> usize {
        SHARD.with(|s| match s.get() {
            Some(v) => v,
            None => {
                let v = self.next_shard.fetch_add(1, Ordering::Relaxed);
                s.set(Some(v));
                v
            }
        })
    }

    fn map_alloc(e: AllocError) -> PoolError {
        match e {
            AllocError::NoSpace { .. } => PoolError::NoSpace,
            other => PoolError::Alloc(other),
        }
    }

    /// Allocates `n` blocks of `bs` bytes for open txg `txg` (one extent when possible).
    pub(crate) fn alloc_blocks(&self, bs: u64, n: usize, txg: u64) -> Result<Vec<Dva>> {
        let asize = u64::from(self.asize(u32::try_from(bs).unwrap_or(u32::MAX)));
        let shard = self.shard();
        let total = asize * u64::try_from(n).unwrap_or(0);
        if n > 1 {
            if let Ok(ext) = self.class.alloc(total, txg, shard, AllocClass::Normal) {
                if ext.len == total {
                    return Ok((0..n)
                        .map(|i| Dva {
                            device: ext.dev,
                            offset: ext.start + asize * u64::try_from(i).unwrap_or(0),
                            asize: u32::try_from(asize).unwrap_or(u32::MAX),
                        })
                        .collect());
                }
                let _ = self.class.free_now(ext, txg);
            }
        }
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            match self.class.alloc(asize, txg, shard, AllocClass::Normal) {
                Ok(ext) => out.push(Dva {
                    device: ext.dev,
                    offset: ext.start,
                    asize: u32::try_from(ext.len).unwrap_or(u32::MAX),
                }),
                Err(e) => {
                    for d in &out {
                        self.free_now(d, txg);
                    }
                    return Err(Self::map_alloc(e));
                }
            }
        }
        Ok(out)
    }

    /// Sync-context allocation of `asize` bytes (may use the slop reserve).
    pub(crate) fn alloc_meta(&self, asize: u32, txg: u64) -> Result<Dva> {
        let ext = self
            .class
            .alloc(u64::from(asize), txg, usize::MAX, AllocClass::Reserved)
            .map_err(Self::map_alloc)?;
        Ok(Dva {
            device: ext.dev,
            offset: ext.start,
            asize: u32::try_from(ext.len).unwrap_or(u32::MAX),
        })
    }

    pub(crate) fn extent(d: &Dva) -> Extent {
        Extent {
            dev: d.device,
            start: d.offset,
            len: u64::from(d.asize),
        }
    }

    /// Frees a committed block (born `birth`) as part of txg `txg`.
    pub(crate) fn free(&self, d: &Dva, birth: u64, txg: u64) -> Result<()> {
        self.class
            .free(Self::extent(d), birth, txg)
            .map_err(PoolError::Alloc)
    }

    /// Undoes an allocation of the open txg `txg` at once.
    pub(crate) fn free_now(&self, d: &Dva, txg: u64) {
        if let Err(e) = self.class.free_now(Self::extent(d), txg) {
            tracing::error!(?d, txg, "free_now failed: {e}");
        }
    }

    /// A block born in open txg `txg` was overwritten: free it once no reader can see it.
    pub(crate) fn free_after_readers(&self, d: Dva, txg: u64) {
        if let Some((d, t)) = self.readers.defer((d, txg)) {
            self.release_overwritten(d, t);
        }
    }

    /// Returns an overwritten block born in `birth`: at once if that txg is still open (we hold
    /// it, so it cannot sync meanwhile), else as an ordinary free of the open txg.
    fn release_overwritten(&self, d: Dva, birth: u64) {
        let Ok(hold) = self.txg.hold() else {
            return;
        };
        if hold.txg() == birth {
            self.free_now(&d, birth);
        } else {
            // Its txg closed: the sync thread frees it in the first txg it syncs (>= birth).
            self.late_frees.lock().push((d, birth));
        }
    }

    /// Sync of `txg`: frees every overwritten block born at or before it that is still waiting
    /// (for readers, or because its txg closed), so none is left allocated and unreferenced.
    pub(crate) fn free_overwritten(&self, txg: u64) -> Result<()> {
        let mut items = self.readers.take_pending(|(_, b)| *b <= txg);
        {
            let mut late = self.late_frees.lock();
            let (now, keep): (Vec<_>, Vec<_>) = late.drain(..).partition(|(_, b)| *b <= txg);
            *late = keep;
            items.extend(now);
        }
        for (d, birth) in items {
            self.free(&d, birth, txg)?;
        }
        Ok(())
    }

    /// Reads the block `d` points to and checks it against the parent's checksum.
    pub(crate) async fn read_verified(
        &self,
        d: &DataPtr,
        object: &str,
        offset: u64,
    ) -> Result<Vec<u8>> {
        let vdev = self.vdev(d.dva.device)?;
        let buf = vdev.read(d.dva.offset, d.dva.asize).await?;
        let lsize = usize::try_from(d.lsize)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        Self::verify(d, &buf[..lsize], object, offset).map_err(|e| self.count_checksum(e))?;
        Ok(buf[..lsize].to_vec())
    }

    /// Counts a checksum mismatch against the device it was read from (CKSUM column of
    /// [`super::Pool::status`]); passes any other error through uncounted.
    pub(crate) fn count_checksum(&self, e: PoolError) -> PoolError {
        if let PoolError::Checksum { device, .. } = &e {
            if let Ok(v) = self.vdev(*device) {
                v.errors.checksum_error();
            }
        }
        e
    }

    /// Checks `data` (the block's logical bytes, read from where `d` points) against the
    /// checksum `d` records. The error (and its strings) is only built on a mismatch.
    pub(crate) fn verify(d: &DataPtr, data: &[u8], object: &str, offset: u64) -> Result<()> {
        let actual = Checksum::compute(d.checksum.algo, data);
        if actual == d.checksum {
            return Ok(());
        }
        Err(PoolError::Checksum {
            object: object.to_string(),
            offset,
            level: d.level,
            device: d.dva.device,
            dev_offset: d.dva.offset,
            expected: d.checksum.to_string(),
            actual: actual.to_string(),
        })
    }

    /// Reads `range.len()` bytes at `dev_offset` of device `dev` into `buf[range]` (straight
    /// into the caller's buffer where the engine can, e.g. an NBD reply buffer).
    pub(crate) async fn read_raw_into(
        &self,
        dev: u32,
        dev_offset: u64,
        buf: IoBuf,
        range: std::ops::Range<usize>,
    ) -> (Result<()>, IoBuf) {
        let vdev = match self.vdev(dev) {
            Ok(v) => v,
            Err(e) => return (Err(e), buf),
        };
        vdev.read_into(buf, range, dev_offset).await
    }

    /// Writes `buf` (already laid out block after block, `asize` apart) at `dev_offset` of
    /// device `dev` in one request, handing the buffer back.
    pub(crate) async fn write_raw(
        &self,
        dev: u32,
        dev_offset: u64,
        buf: IoBuf,
    ) -> (Result<()>, IoBuf) {
        let vdev = match self.vdev(dev) {
            Ok(v) => v,
            Err(e) => return (Err(e), buf),
        };
        vdev.write_keep(buf, dev_offset).await
    }

    /// An indirect block's pointers, through the cache.
    pub(crate) async fn load_indirect(
        &self,
        d: &DataPtr,
        object: &str,
        offset: u64,
    ) -> Result<Arc<Indirect>> {
        let key = key_of(d);
        if let Some(v) = self.cache.get(&key) {
            return Ok(v);
        }
        // Outside the read window: the data read waiting for this block cannot be made yet.
        let data = crate::io::outside_read_window(self.read_verified(d, object, offset)).await?;
        let len = data.len();
        let corrupt = |reason: String| PoolError::Corrupt {
            object: object.to_string(),
            offset,
            reason,
        };
        let ind = Indirect::from_bytes(data, |p| match p.data() {
            Some(pd) if pd.level + 1 != d.level => Err(corrupt(format!(
                "child of a level-{} block claims level {}",
                d.level, pd.level
            ))),
            _ => Ok(()),
        })
        .map_err(|e| match e {
            PoolError::OnDisk(e) => corrupt(format!("indirect block at level {}: {e}", d.level)),
            other => other,
        })?;
        let v = Arc::new(ind);
        self.cache.insert(key, Arc::clone(&v), len);
        Ok(v)
    }

    /// Writes `nblk` consecutive blocks of `content` (each `bs` bytes) to `dvas`, merging
    /// device-contiguous runs into single writes.
    pub(crate) async fn write_extents(
        &self,
        dvas: &[Dva],
        content: &[u8],
        bs: usize,
    ) -> Result<()> {
        let mut futs = Vec::new();
        let mut i = 0;
        while i < dvas.len() {
            let mut j = i + 1;
            while j < dvas.len()
                && dvas[j].device == dvas[i].device
                && dvas[j].offset == dvas[j - 1].offset + u64::from(dvas[j - 1].asize)
            {
                j += 1;
            }
            let vdev = self.vdev(dvas[i].device)?;
            let asize = usize::try_from(dvas[i].asize).unwrap_or(0);
            let mut buf = crate::io::buf::alloc(asize * (j - i));
            for k in i..j {
                let dst = (k - i) * asize;
                buf[dst..dst + bs].copy_from_slice(&content[k * bs..(k + 1) * bs]);
                // Only the allocation padding past the block (if any) needs zeroes.
                buf[dst + bs..dst + asize].fill(0);
            }
            let off = dvas[i].offset;
            futs.push(async move { vdev.write(off, buf).await });
            i = j;
        }
        super::join::try_join_chunks(futs, 64).await
    }

    /// Counts a write that waited for a sync because the pool was short of space.
    pub(crate) fn count_space_wait(&self) {
        self.space_waits.fetch_add(1, Ordering::Relaxed);
    }

    /// Writes so far that waited for a sync because the pool was short of space.
    pub(crate) fn space_waits(&self) -> u64 {
        self.space_waits.load(Ordering::Relaxed)
    }

    /// Marks txg `txg` as holding changes (FLUSH waits for the highest such txg).
    pub(crate) fn mark_dirty(&self, txg: u64) {
        self.last_dirty.fetch_max(txg, Ordering::AcqRel);
    }

    /// Waits until `txg` is committed.
    pub(crate) async fn wait_synced(&self, txg: u64) -> Result<()> {
        // The txg waits for the write-backs it holds, whose device writes this reactor may
        // be deferring to merge them (`crate::io::deferred_writes`): not while this waits.
        let _wanted = crate::io::writes_wanted();
        self.txg
            .wait_synced(txg)
            .await
            .map_err(PoolError::Suspended)
    }

    /// A write acknowledged before it reached the device (`Volume::write_back`) failed there:
    /// suspend the pool, as a failed sync would, so that no later FLUSH or FUA write succeeds
    /// and no txg without it commits. The caller still holds the write's txg `txg`.
    pub(crate) fn suspend_write_back(&self, txg: u64, e: &PoolError) {
        tracing::error!(pool = %self.name, txg, "acknowledged write failed, pool suspended: {e}");
        self.suspension.set(
            txg,
            e.errno(),
            format!("a write acknowledged before it reached the device failed: {e}"),
        );
        self.txg.suspend(e.errno());
    }

    /// Commits every change made so far.
    pub(crate) async fn flush(&self) -> Result<()> {
        let t = self.last_dirty.load(Ordering::Acquire);
        if t <= self.txg.synced_txg() {
            if let Some(e) = self.txg.failure() {
                return Err(PoolError::Suspended(e));
            }
            return Ok(());
        }
        self.wait_synced(t).await
    }
}

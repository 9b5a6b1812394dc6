//! The pool: labels, uberblocks, txgs, the CoW object store, volumes, checkpoint hooks.
//!
//! * [`Pool`]: create / import / export, devices, volumes, sync tasks, accounting, verify.
//! * [`Volume`]: the async data path (read, write, punch, block status, flush) used by NBD.
//!
//! Threads: callers (reactor tasks) run the data path; one dedicated txg sync thread with its
//! own ring owns the syncing state ([`SyncState`]) and commits txgs (see [`syncer`]).
//! Administrative changes are sync tasks executed by that thread.

pub mod blocklock;
pub mod cache;
pub mod checkpoint;
pub mod deferred;
pub mod directory;
pub mod discard;
pub mod error;
pub mod health;
pub(crate) mod idhash;
pub mod indirect;
pub mod inspect;
pub mod join;
pub mod lifecycle;
pub mod nbd_export;
pub mod objtree;
pub mod readers;
pub mod reguid;
pub mod shared;
pub mod syncer;
pub mod txg;
pub mod vdev;
pub mod verify;
pub mod volume;

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;

use parking_lot::Mutex;
use ringpool_ondisk::blkptr::BlockPointer;
use ringpool_ondisk::object::{ObjectRecord, ObjectType};
use ringpool_ondisk::uberblock::Uberblock;

use crate::io::engine::BlockEngine;

pub use checkpoint::{CheckpointState, CheckpointStatus};
pub use error::{PoolError, Result};
pub use health::{DeviceErrors, DeviceHealth, PoolHealth, PoolStatus};
pub use lifecycle::{CreateOptions, FoundPool, ImportOptions, PoolOptions, TXG_INITIAL};
pub use syncer::{SyncCtx, SyncState, SyncTask};
pub use txg::{Limits, SyncStats, TxgConfig};
pub use verify::{VerifyProgress, VerifyReport};
pub use volume::{Extent, Volume};

use directory::VolumeEntry;
use shared::{QueuedTask, Shared};
use syncer::{destroy_object, INDIRECT_BLOCK_SIZE};
use volume::{check_block_size, volume_geom, VolMap, VolumeInner};

/// Space accounting of a device or of the pool.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SpaceInfo {
    /// Allocatable bytes.
    pub size: u64,
    /// Allocated bytes (including checkpoint-held space).
    pub allocated: u64,
    /// Free bytes (allocatable now).
    pub free: u64,
    /// Freed recently, allocatable after the defer period.
    pub deferred: u64,
    /// Held by the checkpoint.
    pub checkpointed: u64,
    /// Fragmentation of the free space, percent.
    pub fragmentation: u64,
}

/// Pool statistics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolStats {
    /// Pool name.
    pub name: String,
    /// Pool GUID.
    pub guid: u64,
    /// Totals.
    pub space: SpaceInfo,
    /// Held back from ordinary writes.
    pub slop: u64,
    /// Per device: (index, name, space).
    pub devices: Vec<(u32, String, SpaceInfo)>,
    /// Last committed txg.
    pub synced_txg: u64,
    /// Open txg.
    pub open_txg: u64,
    /// Tree-block cache: entries, bytes, hits, misses.
    pub cache: cache::CacheStats,
    /// Writes that found the pool short of space and waited for a sync to bring the frees of
    /// overwritten blocks back (instead of failing with ENOSPC) since import.
    pub space_waits: u64,
}

/// A volume as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeInfo {
    /// Name.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// Block size in bytes.
    pub block_size: u32,
    /// Data object number.
    pub object: u64,
    /// Txg of creation.
    pub created_txg: u64,
}

/// An imported pool. Dropping it exports it (use [`Pool::export`] to see errors).
#[derive(Debug)]
pub struct Pool {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

fn run_blocking<T>(
    opts: &PoolOptions,
    fut: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    crate::io::block_on(&opts.reactor, fut)?
}

/// Engines for device paths: opened O_DIRECT and exclusively, driven through io_uring.
pub fn open_devices(paths: &[PathBuf]) -> Result<Vec<Arc<dyn BlockEngine>>> {
    let mut out: Vec<Arc<dyn BlockEngine>> = Vec::new();
    for p in paths {
        let dev = crate::io::Device::open(p, &crate::io::DeviceOptions::default())?;
        out.push(Arc::new(crate::io::UringEngine::new(Arc::new(dev))));
    }
    Ok(out)
}

/// Candidate device files in `dir` (regular files and block devices, sorted).
pub fn scan_dir(dir: &Path) -> Result<Vec<PathBuf>> {
    let rd = std::fs::read_dir(dir)
        .map_err(|e| PoolError::Invalid(format!("{}: {e}", dir.display())))?;
    let mut out = Vec::new();
    for e in rd.flatten() {
        let Ok(ft) = e.file_type() else { continue };
        use std::os::unix::fs::FileTypeExt;
        if ft.is_file() || ft.is_block_device() {
            out.push(e.path());
        }
    }
    out.sort();
    Ok(out)
}

impl Pool {
    /// Creates a pool named `name` on `engines` (blocking; call from a non-reactor thread).
    pub fn create(
        name: &str,
        engines: Vec<Arc<dyn BlockEngine>>,
        opts: &CreateOptions,
    ) -> Result<Pool> {
        let (shared, st) = run_blocking(&opts.pool, lifecycle::create(name, engines, opts))?;
        Ok(Pool::start(shared, st, &opts.pool))
    }

    /// Creates a pool on device paths.
    pub fn create_paths(name: &str, paths: &[PathBuf], opts: &CreateOptions) -> Result<Pool> {
        Pool::create(name, open_devices(paths)?, opts)
    }

    /// Imports the pool found on `engines` (blocking).
    pub fn import(engines: Vec<Arc<dyn BlockEngine>>, opts: &ImportOptions) -> Result<Pool> {
        let (shared, st) = run_blocking(&opts.pool, lifecycle::import(engines, opts))?;
        Ok(Pool::start(shared, st, &opts.pool))
    }

    /// Imports from device paths.
    pub fn import_paths(paths: &[PathBuf], opts: &ImportOptions) -> Result<Pool> {
        Pool::import(open_devices(paths)?, opts)
    }

    /// Imports by scanning `dir` for devices (files or block devices that are not ours are
    /// skipped; devices in use by another opener are skipped too).
    pub fn import_dir(dir: &Path, opts: &ImportOptions) -> Result<Pool> {
        let mut engines: Vec<Arc<dyn BlockEngine>> = Vec::new();
        for p in scan_dir(dir)? {
            if let Ok(dev) = crate::io::Device::open(&p, &crate::io::DeviceOptions::default()) {
                engines.push(Arc::new(crate::io::UringEngine::new(Arc::new(dev))));
            }
        }
        Pool::import(engines, opts)
    }

    /// Lists the pools on `engines` without importing them.
    pub fn discover(
        engines: Vec<Arc<dyn BlockEngine>>,
        opts: &PoolOptions,
    ) -> Result<Vec<FoundPool>> {
        run_blocking(opts, lifecycle::discover(engines))
    }

    fn start(shared: Arc<Shared>, st: SyncState, opts: &PoolOptions) -> Pool {
        let sh = Arc::clone(&shared);
        let cfg = opts.reactor.clone();
        let read_only = shared.read_only;
        let ck = checkpoint::state_of(st.directory()).unwrap_or_default();
        let thread = std::thread::Builder::new()
            .name(format!("txg-{}", shared.name))
            .spawn(move || sync_thread(sh, st, cfg, read_only))
            .ok();
        checkpoint::on_start(&shared, ck);
        lifecycle::note_imported(shared.guid());
        Pool {
            shared,
            thread: Mutex::new(thread),
        }
    }

    /// Pool name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Pool GUID.
    pub fn guid(&self) -> u64 {
        self.shared.guid()
    }

    /// Whether imported read-only.
    pub fn read_only(&self) -> bool {
        self.shared.read_only
    }

    /// The txg engine (holds, waits).
    pub fn txg(&self) -> &Arc<txg::TxgEngine> {
        &self.shared.txg
    }

    /// The allocator.
    pub fn class(&self) -> &Arc<ringpool_alloc::MetaslabClass> {
        &self.shared.class
    }

    /// The last committed uberblock.
    pub fn last_uberblock(&self) -> Option<Uberblock> {
        *self.shared.last_ub.lock()
    }

    /// Queues `task` for the open txg and waits (async) until that txg committed. Early tasks
    /// run at the very start of pass 1, before any free of the txg is routed.
    pub async fn sync_task(&self, early: bool, task: SyncTask) -> Result<()> {
        let (txg, slot) = self.queue_task(early, task)?;
        self.shared.wait_synced(txg).await?;
        take_result(&slot)
    }

    /// Blocking variant of [`Pool::sync_task`] (non-reactor threads).
    pub fn sync_task_blocking(&self, early: bool, task: SyncTask) -> Result<()> {
        let (txg, slot) = self.queue_task(early, task)?;
        self.shared
            .txg
            .wait_synced_blocking(txg)
            .map_err(PoolError::Suspended)?;
        take_result(&slot)
    }

    fn queue_task(&self, early: bool, task: SyncTask) -> Result<(u64, TaskSlot)> {
        if self.shared.read_only {
            return Err(PoolError::ReadOnly);
        }
        let hold = self.shared.txg.hold().map_err(PoolError::Suspended)?;
        let txg = hold.txg();
        let slot = Arc::new(Mutex::new(None));
        self.shared.tasks.lock().push(QueuedTask {
            txg,
            early,
            task,
            result: Arc::clone(&slot),
        });
        self.shared.mark_dirty(txg);
        drop(hold);
        self.shared.txg.request_sync(txg);
        Ok((txg, slot))
    }

    /// Commits everything written so far (async).
    pub async fn sync(&self) -> Result<()> {
        let t = self.shared.txg.open_txg();
        self.shared.wait_synced(t).await
    }

    /// Commits everything written so far (blocking).
    pub fn sync_blocking(&self) -> Result<()> {
        let t = self.shared.txg.open_txg();
        self.shared
            .txg
            .wait_synced_blocking(t)
            .map_err(PoolError::Suspended)
    }

    /// Creates a volume (blocking). `block_size` 4 KiB..128 KiB, power of two.
    pub fn create_volume(&self, name: &str, size: u64, block_size: u32) -> Result<Volume> {
        check_volume_name(name)?;
        check_block_size(block_size)?;
        if size == 0 || !size.is_multiple_of(u64::from(block_size)) {
            return Err(PoolError::Invalid(format!(
                "volume size {size} must be a non-zero multiple of the block size {block_size}"
            )));
        }
        let shared = Arc::clone(&self.shared);
        let n = name.to_string();
        self.sync_task_blocking(
            false,
            Box::new(move |ctx: &mut SyncCtx<'_>| {
                if ctx.st.dir.volumes.contains_key(&n) {
                    return Err(PoolError::Exists(n));
                }
                let geom = volume_geom(block_size, size, INDIRECT_BLOCK_SIZE);
                let mut rec = ObjectRecord::new(
                    ObjectType::VolumeData,
                    block_size,
                    INDIRECT_BLOCK_SIZE,
                    ctx.txg,
                )?;
                rec.levels = geom.levels;
                rec.length = size;
                let obj = ctx.st.new_object(rec);
                ctx.st.directory_mut().volumes.insert(
                    n.clone(),
                    VolumeEntry {
                        object: obj,
                        block_size,
                        size,
                        created_txg: ctx.txg,
                    },
                );
                let txg = ctx.txg;
                ctx.log(format!("volume create {n} size={size} block={block_size}"));
                let _ = txg;
                let inner = VolumeInner::new(
                    n.clone(),
                    obj,
                    block_size,
                    size,
                    VolMap {
                        root: BlockPointer::EMPTY,
                        geom,
                    },
                );
                shared.volumes.write().insert(n, Arc::new(inner));
                Ok(())
            }),
        )?;
        self.open_volume(name)
    }

    /// Opens an existing volume.
    pub fn open_volume(&self, name: &str) -> Result<Volume> {
        let inner = self
            .shared
            .volumes
            .read()
            .get(name)
            .cloned()
            .ok_or_else(|| PoolError::NoSuchVolume(name.to_string()))?;
        Ok(Volume {
            shared: Arc::clone(&self.shared),
            inner,
        })
    }

    /// Lists the volumes.
    pub fn list_volumes(&self) -> Vec<VolumeInfo> {
        self.shared
            .volumes
            .read()
            .values()
            .map(|v| VolumeInfo {
                name: v.name.clone(),
                size: *v.size.read(),
                block_size: v.block_size,
                object: v.object,
                created_txg: 0,
            })
            .collect()
    }

    /// Destroys a volume and frees its blocks (blocking).
    pub fn destroy_volume(&self, name: &str) -> Result<()> {
        let shared = Arc::clone(&self.shared);
        let n = name.to_string();
        self.sync_task_blocking(
            false,
            Box::new(move |ctx: &mut SyncCtx<'_>| {
                let e = ctx
                    .st
                    .dir
                    .volumes
                    .get(&n)
                    .cloned()
                    .ok_or_else(|| PoolError::NoSuchVolume(n.clone()))?;
                ctx.st.directory_mut().volumes.remove(&n);
                if let Some(v) = shared.volumes.write().remove(&n) {
                    *v.destroyed.lock() = true;
                    ctx.st.zombies.push((v, ctx.txg + 3));
                }
                destroy_object(ctx.st, e.object);
                ctx.log(format!("volume destroy {n}"));
                Ok(())
            }),
        )
    }

    /// Changes a volume's size (blocking). Shrinking punches the blocks past the new end.
    pub fn resize_volume(&self, name: &str, size: u64) -> Result<()> {
        let vol = self.open_volume(name)?;
        let bs = u64::from(vol.block_size());
        if size == 0 || !size.is_multiple_of(bs) {
            return Err(PoolError::Invalid(format!(
                "volume size {size} must be a non-zero multiple of the block size {bs}"
            )));
        }
        let old = vol.size();
        if size < old {
            *vol.inner.size.write() = size;
            crate::io::block_on(
                &PoolOptions::default().reactor,
                vol.punch_tail(size / bs, old / bs),
            )??;
        }
        let n = name.to_string();
        let inner = Arc::clone(&vol.inner);
        self.sync_task_blocking(
            false,
            Box::new(move |ctx: &mut SyncCtx<'_>| {
                let e = ctx
                    .st
                    .directory_mut()
                    .volumes
                    .get_mut(&n)
                    .ok_or_else(|| PoolError::NoSuchVolume(n.clone()))?;
                e.size = size;
                let obj = e.object;
                if let Some(r) = ctx.st.objects.get_mut(&obj) {
                    r.length = size;
                }
                ctx.st.dirty_records.insert(obj);
                *inner.size.write() = size;
                ctx.log(format!("volume resize {n} size={size}"));
                Ok(())
            }),
        )
    }

    /// Sets a user property (blocking).
    pub fn set_property(&self, key: &str, value: &str) -> Result<()> {
        let (k, v) = (key.to_string(), value.to_string());
        self.sync_task_blocking(
            false,
            Box::new(move |ctx: &mut SyncCtx<'_>| {
                ctx.log(format!("set {k}={v}"));
                ctx.st.directory_mut().props.insert(k, v);
                Ok(())
            }),
        )
    }

    /// Reads the directory through a sync task (properties, history, features...).
    pub fn directory(&self) -> Result<directory::Directory> {
        let out = Arc::new(Mutex::new(None));
        let o = Arc::clone(&out);
        self.sync_task_blocking(
            false,
            Box::new(move |ctx: &mut SyncCtx<'_>| {
                *o.lock() = Some(ctx.st.dir.clone());
                Ok(())
            }),
        )?;
        let d = out.lock().take();
        d.ok_or_else(|| PoolError::Internal("directory task produced nothing".into()))
    }

    /// Adds a device to the pool (blocking).
    pub fn add_device(
        &self,
        engine: Arc<dyn BlockEngine>,
        ashift: Option<u8>,
        ms_shift: Option<u8>,
    ) -> Result<u32> {
        let g = engine.geometry();
        let ashift = ashift.unwrap_or_else(|| {
            let pb = g.physical_block_size.max(g.logical_block_size).max(512);
            u8::try_from(pb.trailing_zeros()).unwrap_or(12).clamp(9, 16)
        });
        let layout = ringpool_ondisk::layout::DeviceLayout::new(g.size_bytes, ashift)?;
        let ms_shift = ms_shift.unwrap_or_else(|| layout.default_ms_shift());
        ringpool_ondisk::layout::check_ms_shift(ms_shift)?;
        // Wipe its labels first (outside the sync thread; the device is not in the pool yet).
        let probe = vdev::Vdev {
            index: 0,
            guid: 0,
            engine: Arc::clone(&engine),
            layout,
            ashift,
            ms_shift,
            added_txg: 0,
            errors: Default::default(),
        };
        crate::io::block_on(&PoolOptions::default().reactor, async {
            for l in 0..4 {
                probe.clear_label(l).await?;
            }
            Ok::<(), PoolError>(())
        })??;
        let shared = Arc::clone(&self.shared);
        let index = Arc::new(Mutex::new(0u32));
        let idx2 = Arc::clone(&index);
        self.sync_task_blocking(
            false,
            Box::new(move |ctx: &mut SyncCtx<'_>| {
                let idx = u32::try_from(shared.vdevs.read().len()).unwrap_or(u32::MAX);
                let v = Arc::new(vdev::Vdev {
                    index: idx,
                    guid: lifecycle::random_guid(),
                    engine,
                    layout,
                    ashift,
                    ms_shift,
                    added_txg: ctx.txg,
                    errors: Default::default(),
                });
                shared.class.add_device(lifecycle_spec(&v))?;
                lifecycle::new_device_objects(ctx.st, &v, ctx.txg)?;
                shared.vdevs.write().push(Arc::clone(&v));
                shared.txg.cap_dirty(shared.class.slop_space());
                shared
                    .max_ashift
                    .fetch_max(u64::from(ashift), Ordering::Relaxed);
                ctx.st.labels_dirty = true;
                ctx.log(format!("add device {}", v.engine.name()));
                *idx2.lock() = idx;
                Ok(())
            }),
        )?;
        let i = *index.lock();
        Ok(i)
    }

    /// Space accounting.
    pub fn stats(&self) -> PoolStats {
        let cs = self.shared.class.stats();
        let conv = |s: &ringpool_alloc::SpaceStats| SpaceInfo {
            size: s.size,
            allocated: s.allocated,
            free: s.free,
            deferred: s.deferred,
            checkpointed: s.checkpointed,
            fragmentation: s.fragmentation,
        };
        let vdevs = self.shared.vdevs.read();
        PoolStats {
            name: self.shared.name.clone(),
            guid: self.shared.guid(),
            space: conv(&cs.total),
            slop: cs.slop,
            devices: cs
                .devices
                .iter()
                .map(|d| {
                    let name = vdevs
                        .get(d.dev as usize)
                        .map(|v| v.engine.name().to_string())
                        .unwrap_or_default();
                    (d.dev, name, conv(&d.space))
                })
                .collect(),
            synced_txg: self.shared.txg.synced_txg(),
            open_txg: self.shared.txg.open_txg(),
            cache: self.shared.cache.stats(),
            space_waits: self.shared.space_waits(),
        }
    }

    /// ONLINE, or SUSPENDED with the txg, errno and reason of the failed sync (see
    /// [`health`] for what a suspension means and how to recover).
    pub fn health(&self) -> PoolHealth {
        self.shared.suspension.health(self.shared.txg.failure())
    }

    /// Health plus every device's READ / WRITE / CKSUM error counters (`zpool status`).
    pub fn status(&self) -> PoolStatus {
        let devices = self
            .shared
            .vdevs
            .read()
            .iter()
            .map(|v| DeviceHealth {
                index: v.index,
                name: v.engine.name().to_string(),
                guid: v.guid,
                errors: v.errors.snapshot(),
            })
            .collect();
        PoolStatus {
            health: self.health(),
            devices,
        }
    }

    /// Passes, deferred frees, condensed space maps and time spent by the syncs since import.
    pub fn sync_stats(&self) -> SyncStats {
        self.shared.sync_stats.lock().clone()
    }

    /// Resets every device's error counters (`zpool clear`; a suspension stays: it ends only
    /// by export and import).
    pub fn clear_errors(&self) {
        for v in self.shared.vdevs.read().iter() {
            v.errors.clear();
        }
    }

    /// Walks every block pointer, checks every checksum and reconciles the space maps with
    /// the blocks found (blocking; syncs first).
    pub fn verify(&self) -> Result<VerifyReport> {
        verify::verify(self, &|_| {})
    }

    /// [`Pool::verify`], calling `progress` on this thread after every block it checks.
    pub fn verify_with_progress(
        &self,
        progress: &dyn Fn(verify::VerifyProgress),
    ) -> Result<VerifyReport> {
        verify::verify(self, progress)
    }

    /// Every block of the last committed state (object, type, level, place): for `inspect`
    /// and fault-injection tests (syncs first).
    pub fn block_map(&self) -> Result<Vec<verify::BlockInfo>> {
        verify::block_map(self)
    }

    /// Final sync, labels marked exported, devices released.
    pub fn export(self) -> Result<()> {
        self.close(true)
    }

    fn close(&self, export: bool) -> Result<()> {
        let Some(t) = self.thread.lock().take() else {
            return Ok(());
        };
        checkpoint::on_close(&self.shared);
        self.shared.exporting.store(export, Ordering::SeqCst);
        self.shared.txg.shutdown();
        let _ = t.join();
        lifecycle::release_imported(self.shared.guid());
        if let Some(e) = self.shared.txg.failure() {
            return Err(PoolError::Suspended(e));
        }
        Ok(())
    }

    /// Stops the sync thread without a final sync and without touching the labels: what a
    /// crash looks like to the devices (tests).
    pub fn abandon(self) {
        self.shared.txg.sync_failed(libc::ESHUTDOWN);
        checkpoint::on_close(&self.shared);
        if let Some(t) = self.thread.lock().take() {
            let _ = t.join();
            lifecycle::release_imported(self.shared.guid());
        }
    }

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }
}

fn lifecycle_spec(v: &vdev::Vdev) -> ringpool_alloc::DeviceSpec {
    let start = ringpool_ondisk::layout::ALLOC_START;
    ringpool_alloc::DeviceSpec {
        dev: v.index,
        start,
        end: start + (v.ms_count() << v.ms_shift),
        ashift: u32::from(v.ashift),
        ms_shift: u32::from(v.ms_shift),
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        let _ = self.close(true);
    }
}

/// Where a sync task's result lands.
type TaskSlot = Arc<Mutex<Option<Result<()>>>>;

fn take_result(slot: &Mutex<Option<Result<()>>>) -> Result<()> {
    slot.lock()
        .take()
        .unwrap_or_else(|| Err(PoolError::Internal("sync task did not run".into())))
}

fn check_volume_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 200
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'));
    if !ok {
        return Err(PoolError::Invalid(format!(
            "bad volume name '{name}' (letters, digits, - _ . : ; up to 200)"
        )));
    }
    Ok(())
}

/// Wakes every waiter when the sync thread ends, also by a panic (a panicking sync task must
/// not leave callers waiting forever).
struct StopGuard(Arc<Shared>);

impl Drop for StopGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let txg = self.0.txg.syncing_txg().unwrap_or(0);
            self.0
                .suspension
                .set(txg, libc::EIO, "the txg sync thread panicked".into());
            self.0.txg.sync_failed(libc::EIO);
        }
        self.0.txg.stopped();
    }
}

fn sync_thread(
    shared: Arc<Shared>,
    mut st: SyncState,
    cfg: crate::io::ReactorConfig,
    read_only: bool,
) {
    let _guard = StopGuard(Arc::clone(&shared));
    let sh = Arc::clone(&shared);
    let r = crate::io::block_on(&cfg, async move {
        loop {
            let has_work = |t: u64| sh.tasks.lock().iter().any(|q| q.txg <= t);
            let Some((txg, _why)) = sh.txg.next_to_sync(&has_work) else {
                break;
            };
            if read_only {
                // Nothing may be written: drop whatever was queued and pretend it committed.
                for t in sh.tasks.lock().drain(..) {
                    *t.result.lock() = Some(Err(PoolError::ReadOnly));
                }
                sh.txg.sync_done(txg);
                continue;
            }
            match syncer::sync_txg(&sh, &mut st, txg).await {
                Ok(()) => sh.txg.sync_done(txg),
                Err(e) => {
                    tracing::error!(pool = %sh.name, txg, "sync failed, pool suspended: {e}");
                    sh.suspension.set(txg, e.errno(), e.to_string());
                    for t in sh.tasks.lock().drain(..) {
                        *t.result.lock() = Some(Err(PoolError::Suspended(e.errno())));
                    }
                    sh.txg.sync_failed(e.errno());
                    break;
                }
            }
        }
        if sh.exporting.load(Ordering::SeqCst) && sh.txg.failure().is_none() && !read_only {
            st.label.state = ringpool_ondisk::label::PoolState::Exported;
            if let Err(e) = syncer::write_labels(&sh, &st).await {
                tracing::error!(pool = %sh.name, "export: writing labels failed: {e}");
            }
        }
    });
    if let Err(e) = r {
        tracing::error!(pool = %shared.name, "sync thread ring failed: {e}");
        let txg = shared.txg.syncing_txg().unwrap_or(0);
        shared.suspension.set(
            txg,
            libc::EIO,
            format!("the txg sync thread's ring failed: {e}"),
        );
        shared.txg.sync_failed(libc::EIO);
    }
}

impl Volume {
    /// Punches blocks `[lo, hi)` regardless of the current size (resize).
    pub(crate) async fn punch_tail(&self, lo: u64, hi: u64) -> Result<()> {
        self.punch_blocks_raw(lo, hi).await
    }
}

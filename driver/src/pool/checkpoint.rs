//! Pool checkpoint (DESIGN.md §6, OpenZFS `spa_checkpoint.c`): create, status, discard,
//! rewind at import, and the checkpoint part of `verify`.
//!
//! Persistent state lives in the pool directory only, so it survives export and crashes:
//! * the checkpointed uberblock (`Directory::checkpoint_ub`, its `checkpoint_txg` = its txg);
//! * the feature refcount [`CHECKPOINT_FEATURE`] (1 while a checkpoint exists *or* is being
//!   discarded);
//! * per device, the checkpoint space map (`DeviceObjects::checkpoint_sm`), created lazily by
//!   the syncer when a checkpointed block is first freed and removed when discard empties it.
//!
//! State = NONE (feature 0), EXISTS (feature + uberblock), DISCARDING (feature, no uberblock).
//! The space held (CKPOINT) is recomputed from the maps at import (the allocator's
//! `load_checkpoint_map`), never trusted across restarts.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};
use ringpool_ondisk::label::LabelHeader;
use ringpool_ondisk::space_map::SM2_OFFSET_BITS;
use ringpool_ondisk::uberblock::Uberblock;

use super::directory::Directory;
use super::error::{PoolError, Result};
use super::lifecycle::ImportOptions;
use super::shared::{QueuedTask, Shared};
use super::syncer::{now_secs, SyncCtx, SyncState, SyncTask};
use super::vdev::Vdev;
use super::Pool;

/// Feature refcount key (OpenZFS `com.delphix:zpool_checkpoint`).
pub const CHECKPOINT_FEATURE: &str = "com.delphix:zpool_checkpoint";
/// Pool property bounding the discard reactor's read-ahead (bytes).
pub const DISCARD_MEMORY_LIMIT_PROP: &str = "checkpoint_discard_memory_limit";
/// Default of [`DISCARD_MEMORY_LIMIT_PROP`] (OpenZFS `zfs_spa_discard_memory_limit`).
pub const DEFAULT_DISCARD_MEMORY_LIMIT: u64 = 16 << 20;
/// Pool property bounding the sync-thread time one discard round may spend moving extents
/// (microseconds). A round is one txg: a long round lengthens that txg while foreground
/// writers wait on the dirty-data throttle, so the discard is cut into rounds short enough
/// not to show in their tail latency (issue 5).
pub const DISCARD_SYNC_TIME_PROP: &str = "checkpoint_discard_sync_time_us";
/// Default of [`DISCARD_SYNC_TIME_PROP`]: 20 ms (driver/README.md, checkpoint discard
/// benchmark: rounds of ~260 ms put the foreground p99 at up to 2.5x).
pub const DEFAULT_DISCARD_SYNC_TIME_US: u64 = 20_000;
/// Pool property: how long (milliseconds) a discard round waits for its txg to be synced by
/// somebody else (the foreground's dirty-data trigger, FLUSH, the txg timeout) before asking
/// for the sync itself. A round that forces its own txg makes the sync thread commit small
/// txgs back to back, taking a core from the foreground for the whole discard (issue 5);
/// riding the txgs the foreground syncs anyway adds the round's work to them instead. An
/// idle pool (nothing dirty) is synced at once. 0 = every round forces its txg.
pub const DISCARD_TXG_WAIT_PROP: &str = "checkpoint_discard_txg_wait_ms";
/// Default of [`DISCARD_TXG_WAIT_PROP`]: 1 s (a tenth of what a 5 s txg timeout would make
/// a discard of ten rounds take on a pool written slowly).
pub const DEFAULT_DISCARD_TXG_WAIT_MS: u64 = 1000;

/// Checkpoint state of a pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CheckpointState {
    /// No checkpoint.
    #[default]
    None,
    /// A checkpoint exists (rewind possible).
    Exists,
    /// Being discarded in the background (no rewind; new checkpoint refused until done).
    Discarding,
}

impl std::fmt::Display for CheckpointState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CheckpointState::None => "NONE",
            CheckpointState::Exists => "EXISTS",
            CheckpointState::Discarding => "DISCARDING",
        })
    }
}

/// What `checkpoint_status` reports (OpenZFS `pool_checkpoint_stat`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CheckpointStatus {
    /// State.
    pub state: CheckpointState,
    /// Creation time of the checkpoint (UTC seconds, the checkpointed uberblock's timestamp);
    /// 0 when none (and while discarding after an import).
    pub created: u64,
    /// Txg of the checkpointed uberblock (0 when none or discarding).
    pub txg: u64,
    /// Bytes held by the checkpoint (EXISTS) or still to release (DISCARDING).
    pub space: u64,
}

#[derive(Debug, Default, Clone, Copy)]
struct Mirror {
    state: CheckpointState,
    created: u64,
    txg: u64,
}

/// In-memory checkpoint state shared by callers, the sync thread and the discard reactor.
#[derive(Debug, Default)]
pub struct CkptShared {
    mirror: Mutex<Mirror>,
    cv: Condvar,
    pub(crate) thread: Mutex<Option<JoinHandle<()>>>,
    pub(crate) cancel: AtomicBool,
    /// Why the discard reactor stopped early (it resumes at the next import).
    pub(crate) error: Mutex<Option<String>>,
    /// [`DISCARD_TXG_WAIT_PROP`] as the discard's last sync task read it (properties live in
    /// the directory, which only syncing context reads).
    pub(crate) txg_wait_ms: TxgWaitMs,
}

/// Milliseconds, [`DEFAULT_DISCARD_TXG_WAIT_MS`] until a sync task reads the property.
#[derive(Debug)]
pub(crate) struct TxgWaitMs(pub(crate) AtomicU64);

impl Default for TxgWaitMs {
    fn default() -> Self {
        TxgWaitMs(AtomicU64::new(DEFAULT_DISCARD_TXG_WAIT_MS))
    }
}

impl CkptShared {
    pub(crate) fn state(&self) -> CheckpointState {
        self.mirror.lock().state
    }

    fn set(&self, m: Mirror) {
        *self.mirror.lock() = m;
        self.cv.notify_all();
    }

    pub(crate) fn set_none(&self) {
        self.set(Mirror::default());
    }

    pub(crate) fn set_error(&self, e: String) {
        *self.error.lock() = Some(e);
        self.cv.notify_all();
    }
}

/// The state as recorded in a directory: (state, created, txg).
pub(crate) fn state_of(dir: &Directory) -> Result<(CheckpointState, u64, u64)> {
    let active = dir.features.get(CHECKPOINT_FEATURE).copied().unwrap_or(0) > 0;
    match (&dir.checkpoint_ub, active) {
        (Some(b), _) => {
            let ub = Uberblock::decode(b).map_err(|e| PoolError::Corrupt {
                object: "pool directory".into(),
                offset: 0,
                reason: format!("checkpointed uberblock: {e}"),
            })?;
            Ok((CheckpointState::Exists, ub.timestamp, ub.checkpoint_txg))
        }
        (None, true) => Ok((CheckpointState::Discarding, 0, 0)),
        (None, false) => Ok((CheckpointState::None, 0, 0)),
    }
}

/// The checkpointed uberblock stored in `dir`, if any.
pub(crate) fn checkpointed_ub(dir: &Directory) -> Result<Option<Uberblock>> {
    dir.checkpoint_ub
        .as_ref()
        .map(|b| {
            Uberblock::decode(b).map_err(|e| PoolError::Corrupt {
                object: "pool directory".into(),
                offset: 0,
                reason: format!("checkpointed uberblock: {e}"),
            })
        })
        .transpose()
}

/// Pool start: mirror the directory's state and resume a discard found on disk.
pub(crate) fn on_start(shared: &Arc<Shared>, dir_state: (CheckpointState, u64, u64)) {
    let (state, created, txg) = dir_state;
    shared.ckpt.set(Mirror {
        state,
        created,
        txg,
    });
    if state == CheckpointState::Discarding && !shared.read_only {
        super::discard::start(shared);
    }
}

/// Pool close: stop the discard reactor (it resumes from disk at the next import).
pub(crate) fn on_close(shared: &Arc<Shared>) {
    shared.ckpt.cancel.store(true, Ordering::SeqCst);
    shared.ckpt.cv.notify_all();
    let h = shared.ckpt.thread.lock().take();
    if let Some(h) = h {
        let _ = h.join();
    }
}

/// Refuses a device-configuration change a rewind could not undo (OpenZFS refuses remove,
/// attach, detach, split and reguid while the checkpoint feature is active).
pub fn check_config_change(st: &SyncState) -> Result<()> {
    match state_of(st.directory())?.0 {
        CheckpointState::None => Ok(()),
        CheckpointState::Exists => Err(PoolError::CheckpointExists),
        CheckpointState::Discarding => Err(PoolError::DiscardingCheckpoint),
    }
}

/// Whether every device can be addressed by a device-wide checkpoint space map: offsets are
/// stored in units of `2^ashift` in at most [`SM2_OFFSET_BITS`] bits.
fn check_addressable(vdevs: &[Arc<Vdev>]) -> Result<()> {
    for v in vdevs {
        let units = v.layout.device_size() >> v.ashift;
        if units >> SM2_OFFSET_BITS != 0 {
            return Err(PoolError::DeviceTooBig);
        }
    }
    Ok(())
}

/// Where a sync task's result lands.
pub(crate) type TaskResult = Arc<Mutex<Option<Result<()>>>>;

/// Queues a sync task for the open txg (like `Pool::sync_task`, usable from the discard
/// reactor which holds only the shared state). Returns the txg and the result slot.
pub(crate) fn queue_task(
    shared: &Shared,
    early: bool,
    task: SyncTask,
) -> Result<(u64, TaskResult)> {
    let (txg, slot) = queue_task_unrequested(shared, early, task)?;
    shared.txg.request_sync(txg);
    Ok((txg, slot))
}

/// Queues `task` in the open txg without asking for that txg to be synced: it runs whenever
/// the txg is synced for another reason (the caller decides when to ask).
pub(crate) fn queue_task_unrequested(
    shared: &Shared,
    early: bool,
    task: SyncTask,
) -> Result<(u64, TaskResult)> {
    if shared.read_only {
        return Err(PoolError::ReadOnly);
    }
    let hold = shared.txg.hold().map_err(PoolError::Suspended)?;
    let txg = hold.txg();
    let slot = Arc::new(Mutex::new(None));
    shared.tasks.lock().push(QueuedTask {
        txg,
        early,
        task,
        result: Arc::clone(&slot),
    });
    shared.mark_dirty(txg);
    drop(hold);
    Ok((txg, slot))
}

pub(crate) fn take(slot: &Mutex<Option<Result<()>>>) -> Result<()> {
    slot.lock()
        .take()
        .unwrap_or_else(|| Err(PoolError::Internal("sync task did not run".into())))
}

/// Bytes held by the checkpoint now (sum over devices; I5).
pub(crate) fn held_space(shared: &Shared) -> u64 {
    shared
        .class
        .devices()
        .into_iter()
        .filter_map(|d| shared.class.group(d).ok().map(|g| g.checkpoint_space()))
        .sum()
}

impl Pool {
    /// Takes a checkpoint (`zpool checkpoint`): waits for the open txg to sync, then an early
    /// sync task stores the last synced uberblock in the directory and sets the checkpoint
    /// txg, before any free of its txg is routed. O(1): nothing is copied.
    pub fn checkpoint(&self) -> Result<()> {
        if self.read_only() {
            return Err(PoolError::ReadOnly);
        }
        match self.shared().ckpt.state() {
            CheckpointState::Exists => return Err(PoolError::CheckpointExists),
            CheckpointState::Discarding => return Err(PoolError::DiscardingCheckpoint),
            CheckpointState::None => {}
        }
        self.sync_blocking()?;
        self.sync_task_blocking(true, Box::new(create_task))
    }

    /// The checkpoint's state, creation time, txg and the space it holds (or, while
    /// discarding, still holds).
    pub fn checkpoint_status(&self) -> CheckpointStatus {
        let m = *self.shared().ckpt.mirror.lock();
        let space = match m.state {
            CheckpointState::None => 0,
            _ => held_space(self.shared()),
        };
        CheckpointStatus {
            state: m.state,
            created: m.created,
            txg: m.txg,
            space,
        }
    }

    /// Starts discarding the checkpoint (`zpool checkpoint -d`): an early sync task removes
    /// the stored uberblock and clears the checkpoint txg (state DISCARDING, persisted); the
    /// discard reactor then releases the held space in the background. Works on a full pool.
    pub fn discard_checkpoint(&self) -> Result<()> {
        if self.read_only() {
            return Err(PoolError::ReadOnly);
        }
        self.sync_task_blocking(true, Box::new(discard_task))?;
        super::discard::start(self.shared());
        Ok(())
    }

    /// Blocks until no discard is running (`zpool wait -t discard`). Returns at once when none
    /// runs; fails if the pool is suspended or closed meanwhile.
    pub fn wait_discard(&self) -> Result<()> {
        let ck = &self.shared().ckpt;
        let mut g = ck.mirror.lock();
        while g.state == CheckpointState::Discarding {
            if let Some(e) = self.shared().txg.failure() {
                return Err(PoolError::Suspended(e));
            }
            if let Some(e) = ck.error.lock().clone() {
                return Err(PoolError::Busy(format!("checkpoint discard stopped: {e}")));
            }
            if ck.cancel.load(Ordering::SeqCst) || self.read_only() {
                return Err(PoolError::Busy(
                    "the discard reactor is not running (pool closing or read-only)".into(),
                ));
            }
            ck.cv.wait_for(&mut g, Duration::from_millis(200));
        }
        Ok(())
    }
}

/// Early sync task of checkpoint create (OpenZFS `spa_checkpoint_check` + `_sync`).
fn create_task(ctx: &mut SyncCtx<'_>) -> Result<()> {
    check_addressable(&ctx.shared.vdevs.read())?;
    match state_of(ctx.st.directory())?.0 {
        CheckpointState::Exists => return Err(PoolError::CheckpointExists),
        CheckpointState::Discarding => return Err(PoolError::DiscardingCheckpoint),
        CheckpointState::None => {}
    }
    // The last committed uberblock: txgs between it and this one were no-ops (nothing
    // written, nothing freed), so every block it references is born <= its txg.
    let mut ub = *ctx.st.last_uberblock();
    if ub.txg >= ctx.txg {
        return Err(PoolError::Internal(format!(
            "checkpoint: last synced uberblock is txg {} while syncing {}",
            ub.txg, ctx.txg
        )));
    }
    ub.checkpoint_txg = ub.txg;
    // A reguid earlier in this txg renamed the pool, not its state: a rewind must write an
    // uberblock the current labels accept.
    ub.pool_guid = ctx.shared.guid();
    let bytes = ub.to_bytes()?.to_vec();
    {
        let d = ctx.st.directory_mut();
        d.checkpoint_ub = Some(bytes);
        d.features.insert(CHECKPOINT_FEATURE.to_string(), 1);
    }
    // Before any free of this txg is routed: from here on frees of blocks born <= ub.txg go
    // to the checkpoint.
    ctx.shared.class.set_checkpoint_txg(ub.txg);
    ctx.log(format!(
        "checkpoint created: checkpointed uberblock txg={}",
        ub.txg
    ));
    ctx.shared.ckpt.set(Mirror {
        state: CheckpointState::Exists,
        created: ub.timestamp,
        txg: ub.txg,
    });
    Ok(())
}

/// Early sync task of checkpoint discard (OpenZFS `spa_checkpoint_discard_check` + `_sync`).
fn discard_task(ctx: &mut SyncCtx<'_>) -> Result<()> {
    match state_of(ctx.st.directory())?.0 {
        CheckpointState::None => return Err(PoolError::NoCheckpoint),
        CheckpointState::Discarding => return Err(PoolError::DiscardingCheckpoint),
        CheckpointState::Exists => {}
    }
    let txg = ctx.shared.class.checkpoint_txg();
    ctx.st.directory_mut().checkpoint_ub = None;
    // Early task: no free of this txg lands in `checkpointing`, so no checkpoint map is
    // re-created behind the discard reactor.
    ctx.shared.class.clear_checkpoint_txg();
    ctx.log(format!("checkpoint discard started (checkpoint txg={txg})"));
    ctx.shared.ckpt.set(Mirror {
        state: CheckpointState::Discarding,
        created: 0,
        txg: 0,
    });
    Ok(())
}

/// Import with `rewind_to_checkpoint` (OpenZFS `spa_load_checkpoint_rewind` / C.6): load the
/// current state, read the stored uberblock, write it back with txg = `newest_seen + 1` (the
/// point of no return; `newest_seen` is the highest txg in any label, above `ub.txg` when `-T`
/// or `-F` chose an older state: the uberblocks between must never win again), then load from it. Devices added after the checkpoint leave the pool (their
/// labels are cleared). Read-only: nothing is written and the pool opens at the checkpointed
/// state; a later plain import finds the current state with its checkpoint intact.
pub(crate) async fn rewind_load(
    config: &LabelHeader,
    vdevs: &[Arc<Vdev>],
    ub: Uberblock,
    opts: &ImportOptions,
    newest_seen: u64,
) -> Result<(Arc<Shared>, SyncState)> {
    let ro = ImportOptions {
        read_only: true,
        ..opts.clone()
    };
    let ckpt = {
        let (_cur, st) = super::lifecycle::load(config, vdevs, ub, &ro, ub.txg).await?;
        match state_of(st.directory())?.0 {
            CheckpointState::Exists => {}
            _ => return Err(PoolError::NoCheckpoint),
        }
        checkpointed_ub(st.directory())?.ok_or(PoolError::NoCheckpoint)?
    };
    let mut new_ub = ckpt;
    new_ub.txg = newest_seen.max(ub.txg) + 1;
    new_ub.timestamp = now_secs().max(ub.timestamp);
    if opts.read_only {
        return super::lifecycle::load(config, vdevs, new_ub, opts, new_ub.txg).await;
    }
    // Which devices the checkpointed state has (those added later are dropped).
    let kept: Vec<Arc<Vdev>> = {
        let (sh, _) = super::lifecycle::load(config, vdevs, new_ub, &ro, new_ub.txg).await?;
        let k = sh.vdevs.read().clone();
        k
    };
    // The point of no return: the rewritten uberblock wins the next selection.
    super::lifecycle::commit_rewind(&kept, &new_ub).await?;
    let (shared, mut st) = super::lifecycle::load(config, vdevs, new_ub, opts, new_ub.txg).await?;
    for v in vdevs.iter().skip(kept.len()) {
        for l in 0..4 {
            v.clear_label(l).await?;
        }
        v.flush().await?;
    }
    st.directory_mut().log(
        now_secs(),
        new_ub.txg + 1,
        format!(
            "checkpoint rewind: rewound state to txg={} (was txg={})",
            ckpt.checkpoint_txg, ub.txg
        ),
    );
    let (t, _) = shared
        .txg
        .next_to_sync_now()
        .ok_or_else(|| PoolError::Internal("txg engine closed".into()))?;
    super::syncer::sync_txg(&shared, &mut st, t).await?;
    shared.txg.sync_done(t);
    Ok((shared, st))
}

/// Per device, merged `[start, end)` ranges.
type Ranges = std::collections::BTreeMap<u32, Vec<(u64, u64)>>;

/// Replays ALLOC/FREE records into a set of disjoint ranges (start -> end).
fn replay(set: &mut std::collections::BTreeMap<u64, u64>, s: u64, e: u64, alloc: bool) {
    let hit: Vec<(u64, u64)> = set
        .range(..e)
        .rev()
        .take_while(|(_, &end)| end > s)
        .map(|(&a, &b)| (a, b))
        .collect();
    for (a, b) in hit {
        set.remove(&a);
        if a < s {
            set.insert(a, s);
        }
        if b > e {
            set.insert(e, b);
        }
    }
    if alloc {
        set.insert(s, e);
    }
}

/// Parts of `a` not covered by the ranges of `cover` (both sorted; `cover` disjoint).
fn uncovered(a: &[(u64, u64)], cover: &std::collections::BTreeMap<u64, u64>) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    for &(s0, e) in a {
        let mut s = s0;
        // The covering range that may start before s.
        if let Some((_, &ce)) = cover.range(..=s).next_back() {
            s = s.max(ce.min(e));
        }
        for (&cs, &ce) in cover.range(s..e) {
            if cs > s {
                out.push((s, cs));
            }
            s = s.max(ce);
            if s >= e {
                break;
            }
        }
        if s < e {
            out.push((s, e));
        }
    }
    out
}

/// The allocated ranges (per the metaslab space maps) and the checkpoint-map extents of the
/// state committed by `ub`.
async fn space_of(
    shared: &Shared,
    ub: &Uberblock,
    what: &str,
) -> Result<(Directory, Ranges, Ranges, Vec<String>)> {
    use super::syncer::{
        decode_root_block, read_object_bytes, read_objects, read_space_map, DIRECTORY_OBJECT,
    };
    let mut problems = Vec::new();
    let root = ub.root.data().copied().ok_or_else(|| PoolError::Corrupt {
        object: format!("{what} uberblock"),
        offset: 0,
        reason: "root is a hole".into(),
    })?;
    let meta = decode_root_block(&shared.read_verified(&root, "root block", 0).await?)?;
    let objects = read_objects(shared, &meta).await?;
    let dir_rec = objects
        .get(&DIRECTORY_OBJECT)
        .ok_or_else(|| PoolError::Internal(format!("{what}: no directory")))?;
    let dir = Directory::decode(
        &read_object_bytes(shared, "pool directory", dir_rec, dir_rec.length).await?,
    )?;
    let vdevs = shared.vdevs.read().clone();
    let mut alloc = Ranges::new();
    let mut held = Ranges::new();
    for (di, dobj) in dir.devices.iter().enumerate() {
        let Some(v) = vdevs.get(di) else {
            problems.push(format!("{what}: device {di} is not open"));
            continue;
        };
        let dev = u32::try_from(di).unwrap_or(u32::MAX);
        let arr = objects
            .get(&dobj.ms_array)
            .ok_or_else(|| PoolError::Internal(format!("{what}: metaslab array of {di}")))?;
        let ab = read_object_bytes(shared, "metaslab array", arr, arr.length).await?;
        let mut set = std::collections::BTreeMap::new();
        for (ms, c) in ab.chunks_exact(8).enumerate() {
            let obj = u64::from_le_bytes(c.try_into().unwrap_or([0; 8]));
            let Some(rec) = objects.get(&obj) else {
                problems.push(format!("{what}: space map {obj} of dev{di}/ms{ms} missing"));
                continue;
            };
            let (start, end) = v
                .layout
                .metaslab_range(v.ms_shift, u64::try_from(ms).unwrap_or(0))?;
            let name = format!("{what} space map dev{di}/ms{ms}");
            let (recs, _) =
                read_space_map(shared, rec, &name, start, v.ashift, end - start).await?;
            for r in recs {
                replay(
                    &mut set,
                    r.start,
                    r.end(),
                    r.action == ringpool_alloc::SmAction::Alloc,
                );
            }
        }
        alloc.insert(dev, set.into_iter().collect());
        if dobj.checkpoint_sm != 0 {
            let Some(rec) = objects.get(&dobj.checkpoint_sm) else {
                problems.push(format!("{what}: checkpoint map of dev{di} missing"));
                continue;
            };
            let name = format!("{what} checkpoint space map dev{di}");
            let (recs, _) =
                read_space_map(shared, rec, &name, 0, v.ashift, v.layout.device_size()).await?;
            let sum: u64 = recs.iter().map(|r| r.len).sum();
            let header_alloc = match &rec.bonus {
                ringpool_ondisk::object::Bonus::SpaceMap(h) => h.alloc,
                _ => 0,
            };
            if i128::from(header_alloc) != -i128::from(sum) {
                problems.push(format!(
                    "{what}: checkpoint map of dev{di}: header accounts {header_alloc}, entries hold {sum}"
                ));
            }
            let mut v: Vec<(u64, u64)> = recs.iter().map(|r| (r.start, r.end())).collect();
            v.sort_unstable();
            held.insert(dev, v);
        }
    }
    Ok((dir, alloc, held, problems))
}

/// The checkpoint part of `verify` (OpenZFS zdb's checkpoint checks, C.9): every
/// checkpoint-map extent is allocated in the current state (I2) and in the checkpointed
/// state; everything allocated in the checkpointed state is still allocated now (I3); the
/// space held equals the sum over the maps (I5).
pub(crate) async fn verify_checkpoint(
    shared: &Shared,
    ub: Uberblock,
    report: &mut super::VerifyReport,
) -> Result<()> {
    // The uberblock and the in-core held space as of the same moment: a sync task runs before
    // its txg's metaslab sync, when the held space matches the last committed uberblock.
    let (ub, mem) = if shared.read_only {
        (ub, held_space(shared))
    } else {
        let out = Arc::new(Mutex::new(None));
        let o = Arc::clone(&out);
        let (txg, slot) = queue_task(
            shared,
            false,
            Box::new(move |ctx: &mut SyncCtx<'_>| {
                *o.lock() = Some((*ctx.st.last_uberblock(), held_space(ctx.shared)));
                Ok(())
            }),
        )?;
        shared.wait_synced(txg).await?;
        take(&slot)?;
        let v = *out.lock();
        v.ok_or_else(|| PoolError::Internal("verify snapshot task produced nothing".into()))?
    };
    let (dir, cur, held, problems) = space_of(shared, &ub, "current").await?;
    report.errors.extend(problems);
    let sum: u64 = held.values().flatten().map(|(s, e)| e - s).sum();
    let state = state_of(&dir)?.0;
    // While discarding, the reactor may have moved on since `ub`: compare only when stable.
    if state != CheckpointState::Discarding && sum != mem {
        report.errors.push(format!(
            "I5: checkpoint maps hold {sum} bytes, the pool accounts {mem}"
        ));
    }
    if state == CheckpointState::None && sum != 0 {
        report.errors.push(format!(
            "no checkpoint but checkpoint maps hold {sum} bytes"
        ));
    }
    let cur_sets: std::collections::BTreeMap<u32, std::collections::BTreeMap<u64, u64>> = cur
        .iter()
        .map(|(d, v)| (*d, v.iter().copied().collect()))
        .collect();
    let empty = std::collections::BTreeMap::new();
    for (dev, ext) in &held {
        let c = cur_sets.get(dev).unwrap_or(&empty);
        for (s, e) in uncovered(ext, c) {
            report.errors.push(format!(
                "dev{dev}: checkpoint-held [{s:#x},{e:#x}) is free in the current space maps (I2)"
            ));
        }
    }
    let Some(cub) = checkpointed_ub(&dir)? else {
        return Ok(());
    };
    if cub.checkpoint_txg != cub.txg || cub.checkpoint_txg == 0 {
        report.errors.push(format!(
            "I8: checkpointed uberblock txg {} has checkpoint_txg {}",
            cub.txg, cub.checkpoint_txg
        ));
    }
    let (cdir, ck, cheld, problems) = space_of(shared, &cub, "checkpointed").await?;
    report.errors.extend(problems);
    if cheld.values().any(|v| !v.is_empty()) || cdir.checkpoint_ub.is_some() {
        report
            .errors
            .push("the checkpointed state itself holds a checkpoint".into());
    }
    let ck_sets: std::collections::BTreeMap<u32, std::collections::BTreeMap<u64, u64>> = ck
        .iter()
        .map(|(d, v)| (*d, v.iter().copied().collect()))
        .collect();
    for (dev, ext) in &held {
        let Some(c) = ck_sets.get(dev) else {
            report.errors.push(format!(
                "dev{dev}: has a checkpoint map but did not exist at the checkpoint"
            ));
            continue;
        };
        for (s, e) in uncovered(ext, c) {
            report.errors.push(format!(
                "dev{dev}: checkpoint-held [{s:#x},{e:#x}) was not allocated in the checkpointed state"
            ));
        }
    }
    for (dev, ext) in &ck {
        let c = cur_sets.get(dev).unwrap_or(&empty);
        for (s, e) in uncovered(ext, c) {
            report.errors.push(format!(
                "dev{dev}: [{s:#x},{e:#x}) allocated in the checkpointed state is free now (I3)"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::{BlockEngine, FaultyEngine};
    use crate::pool::{CreateOptions, PoolOptions};

    /// verify must catch a checkpoint map that holds space the pool does not (a discard bug
    /// that moved an extent without truncating the map, a corrupt map...).
    #[test]
    fn verify_detects_a_bad_checkpoint_map() {
        let dev: Arc<dyn BlockEngine> = Arc::new(FaultyEngine::new(64 << 20, 4096));
        let opts = CreateOptions {
            pool: PoolOptions {
                shards: 2,
                ..Default::default()
            },
            ..Default::default()
        };
        let pool = Pool::create("t", vec![dev], &opts).unwrap();
        let vol = pool.create_volume("v", 1 << 20, 4096).unwrap();
        let rc = PoolOptions::default().reactor;
        crate::io::block_on(&rc, async { vol.write(0, &[7u8; 4096], false).await })
            .unwrap()
            .unwrap();
        pool.sync_blocking().unwrap();
        pool.checkpoint().unwrap();
        crate::io::block_on(&rc, async { vol.write(0, &[8u8; 4096], false).await })
            .unwrap()
            .unwrap();
        pool.sync_blocking().unwrap();
        let rep = pool.verify().unwrap();
        assert!(rep.is_clean(), "{:?}", rep.errors);
        let mut free = None;
        pool.class()
            .walk_free(0, |s, l| {
                if free.is_none() && l >= 1 << 20 {
                    free = Some(s + ((l / 2) & !4095));
                }
            })
            .unwrap();
        let at = free.unwrap();
        pool.sync_task_blocking(
            false,
            Box::new(move |ctx: &mut SyncCtx<'_>| {
                let obj = ctx.st.dir.devices[0].checkpoint_sm;
                assert_ne!(obj, 0);
                let vdev = ctx.shared.vdev(0)?;
                let recs = [ringpool_alloc::SmRecord::free(at, 4096)];
                super::super::syncer::sm_append(
                    ctx.shared, ctx.st, obj, &vdev, 0, &recs, false, ctx.txg, 1,
                )
            }),
        )
        .unwrap();
        let rep = pool.verify().unwrap();
        assert!(
            rep.errors.iter().any(|e| e.contains("(I2)")),
            "{:?}",
            rep.errors
        );
        assert!(
            rep.errors.iter().any(|e| e.starts_with("I5")),
            "{:?}",
            rep.errors
        );
        assert!(
            rep.errors.iter().any(|e| e.contains("checkpointed state")),
            "{:?}",
            rep.errors
        );
    }

    #[test]
    fn range_helpers() {
        let mut set = std::collections::BTreeMap::new();
        replay(&mut set, 0, 100, true);
        replay(&mut set, 20, 30, false);
        replay(&mut set, 25, 28, true);
        assert_eq!(
            set.iter().map(|(a, b)| (*a, *b)).collect::<Vec<_>>(),
            vec![(0, 20), (25, 28), (30, 100)]
        );
        assert_eq!(uncovered(&[(10, 40)], &set), vec![(20, 25), (28, 30)]);
        assert_eq!(uncovered(&[(0, 20), (30, 100)], &set), vec![]);
        assert_eq!(uncovered(&[(100, 120)], &set), vec![(100, 120)]);
    }
}

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

use std::sync::atomic::{AtomicBool, Ordering};
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
    shared.txg.request_sync(txg);
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
    let mut ub = *ctx.st.last_uberblock();
    if ub.txg + 1 != ctx.txg {
        return Err(PoolError::Internal(format!(
            "checkpoint: last synced uberblock is txg {} while syncing {}",
            ub.txg, ctx.txg
        )));
    }
    ub.checkpoint_txg = ub.txg;
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
/// current state, read the stored uberblock, write it back with txg = current + 1 (the point
/// of no return), then load from it. Devices added after the checkpoint leave the pool (their
/// labels are cleared). Read-only: nothing is written and the pool opens at the checkpointed
/// state; a later plain import finds the current state with its checkpoint intact.
pub(crate) async fn rewind_load(
    config: &LabelHeader,
    vdevs: &[Arc<Vdev>],
    ub: Uberblock,
    opts: &ImportOptions,
) -> Result<(Arc<Shared>, SyncState)> {
    let ro = ImportOptions {
        read_only: true,
        ..opts.clone()
    };
    let ckpt = {
        let (_cur, st) = super::lifecycle::load(config, vdevs, ub, &ro).await?;
        match state_of(st.directory())?.0 {
            CheckpointState::Exists => {}
            _ => return Err(PoolError::NoCheckpoint),
        }
        checkpointed_ub(st.directory())?.ok_or(PoolError::NoCheckpoint)?
    };
    let mut new_ub = ckpt;
    new_ub.txg = ub.txg + 1;
    new_ub.timestamp = now_secs().max(ub.timestamp);
    if opts.read_only {
        return super::lifecycle::load(config, vdevs, new_ub, opts).await;
    }
    // Which devices the checkpointed state has (those added later are dropped).
    let kept: Vec<Arc<Vdev>> = {
        let (sh, _) = super::lifecycle::load(config, vdevs, new_ub, &ro).await?;
        let k = sh.vdevs.read().clone();
        k
    };
    // The point of no return: the rewritten uberblock wins the next selection.
    for pair in [[0usize, 1], [2, 3]] {
        for v in &kept {
            for l in pair {
                v.write_uberblock(l, &new_ub).await?;
            }
        }
        for v in &kept {
            v.flush().await?;
        }
    }
    let (shared, mut st) = super::lifecycle::load(config, vdevs, new_ub, opts).await?;
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

//! Transaction groups: the open / quiescing / syncing pipeline, holds, and waiting for a sync.
//!
//! Writers take a [`TxgHold`] on the open txg for the duration of one change (allocate, write
//! the data, publish the new block pointer). The sync thread closes the open txg (a new one
//! opens at once), waits for the holds of the closed txg to drain (quiescing), then syncs it.
//! Reactor tasks never block here: waiting for a txg to commit is an async future woken by the
//! sync thread; the sync thread itself blocks on a condition variable.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

#[path = "txg_config.rs"]
mod config;
#[cfg(test)]
use config::physical_memory;
pub use config::{default_dirty_max, default_dirty_sync, TxgConfig};

/// Per-txg arrays are indexed by `txg & TXG_MASK` (OpenZFS's TXG_SIZE = 4).
pub const TXG_SIZE: usize = 4;
const TXG_MASK: u64 = 3;
/// Frees become allocatable this many txgs after the txg that freed them.
pub const TXG_DEFER_SIZE: u64 = 2;
/// Longest single write delay (OpenZFS `zfs_delay_max_ns`, 100 ms).
const MAX_DELAY: Duration = Duration::from_millis(100);
/// Data bytes a txg may hold, in slops (see [`TxgEngine::cap_dirty`]). One, not two: 4k
/// randwrite QD32 over NBD on a 10 GiB pool (slop 320 MiB), quiet, 6 alternated rounds: two
/// slops (a sync at 320 MiB) over one cut the sync thread's CPU per write to 0.57x (1.8 to
/// 1.0 us) but gave only 1.02x / 1.008x the IOPS (both ways round). On a fuller pool it costs:
/// the open, syncing and two deferred txgs keep about four txgs of overwrites from the
/// allocator, which with two slops is more than a 3 GiB volume on a 4 GiB pool has free
/// (~600 MiB above the slop), so overwrites keep waiting for syncs to give space back
/// (`Volume::prepare_commit`): 0.675x the IOPS and 1.5x the p99 there in one A/B (loaded,
/// 4 rounds; 0.95x with the sides swapped).
const DATA_SLOPS: u64 = 1;

/// What the txg sync thread has done since import (`Pool::sync_stats`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncStats {
    /// Txgs committed.
    pub txgs: u64,
    /// Sync passes of the last txg (1 = nothing had to be rewritten).
    pub last_passes: u32,
    /// Most passes any txg needed.
    pub max_passes: u32,
    /// Frees the last txg deferred to the next one.
    pub last_deferred_frees: u64,
    /// Frees deferred in total.
    pub deferred_frees: u64,
    /// Space maps rewritten condensed.
    pub condensed_maps: u64,
    /// Time the last txg's sync took (passes and commit).
    pub last_sync: Duration,
    /// Longest sync.
    pub max_sync: Duration,
    /// Time spent syncing in total.
    pub total_sync: Duration,
}

impl SyncStats {
    /// Accounts one committed txg.
    pub fn record(&mut self, passes: u32, deferred: u64, condensed: u64, took: Duration) {
        self.txgs += 1;
        self.last_passes = passes;
        self.max_passes = self.max_passes.max(passes);
        self.last_deferred_frees = deferred;
        self.deferred_frees += deferred;
        self.condensed_maps += condensed;
        self.last_sync = took;
        self.max_sync = self.max_sync.max(took);
        self.total_sync += took;
    }

    /// Mean sync time per txg.
    pub fn mean_sync(&self) -> Duration {
        u32::try_from(self.txgs)
            .ok()
            .filter(|n| *n > 0)
            .map_or(Duration::ZERO, |n| self.total_sync / n)
    }
}

#[derive(Debug)]
struct Inner {
    open: u64,
    quiescing: Option<u64>,
    syncing: Option<u64>,
    /// Last txg whose uberblock is on stable storage.
    synced: u64,
    holds: [u64; TXG_SIZE],
    /// Dirty data bytes per txg.
    dirty: [u64; TXG_SIZE],
    /// Estimated metadata bytes per txg.
    meta: [u64; TXG_SIZE],
    /// When the last delayed writer was let through (delays space writers out, as OpenZFS's
    /// `dp_last_wakeup`, rather than each waiting on its own).
    last_wakeup: Instant,
    /// Writers delayed, and their total delay (for `SyncStats`).
    delayed: u64,
    delay_total: Duration,
    /// Writers that had to wait for a sync at a dirty limit.
    throttled: u64,
    /// Highest txg somebody asked to see committed.
    requested: u64,
    /// Tasks waiting for `synced >= txg`.
    sync_waiters: Vec<(u64, Waker)>,
    /// Writers throttled on dirty data.
    throttle_waiters: Vec<Waker>,
    /// Set once a sync failed: the pool is suspended, waiters get this errno.
    failed: Option<i32>,
    shutdown: bool,
    /// Set when the sync thread found nothing left after a shutdown (its last pass): from
    /// then on no hold is given, since a change made under it would never commit and a write
    /// acknowledged from it would be lost without a word.
    closed: bool,
    /// When the open txg's timer started: the last sync, or the first change after the sync
    /// thread found nothing to do.
    last_sync: Instant,
    /// The sync thread sleeps with nothing in the open txg (no hold, no dirty byte, no queued
    /// work) and no timer running: the next hold wakes it (see `note_hold`).
    sync_idle: bool,
    /// Times the sync thread woke from a wait in `next_to_sync` (for tests: an idle pool's
    /// sync thread must not wake).
    sync_wakeups: u64,
}

/// The txg state machine shared by writers and the sync thread.
#[derive(Debug)]
pub struct TxgEngine {
    inner: Mutex<Inner>,
    /// Wakes the sync thread (new request, dirty threshold, holds drained, shutdown).
    cv: Condvar,
    cfg: TxgConfig,
    /// Effective dirty limits (the configured data ones, lowered for small pools; the
    /// metadata ones from the pool's slop).
    limits: Mutex<Limits>,
}

/// Effective dirty limits, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Data bytes that start a sync.
    pub data_sync: u64,
    /// Data bytes at which writers wait for the sync.
    pub data_max: u64,
    /// Metadata bytes that start a sync.
    pub meta_sync: u64,
    /// Metadata bytes at which writers wait for the sync.
    pub meta_max: u64,
}

impl Limits {
    fn sync_due(&self, data: u64, meta: u64) -> bool {
        data >= self.data_sync || meta >= self.meta_sync
    }

    fn at_max(&self, data: u64, meta: u64) -> bool {
        data >= self.data_max || meta >= self.meta_max
    }

    /// How full the fuller of the two budgets is, in parts per million.
    fn fill_ppm(&self, data: u64, meta: u64) -> u64 {
        let ppm = |v: u64, max: u64| {
            u64::try_from(u128::from(v) * 1_000_000 / u128::from(max.max(1))).unwrap_or(u64::MAX)
        };
        ppm(data, self.data_max).max(ppm(meta, self.meta_max))
    }
}

/// A hold on one txg: the txg cannot finish quiescing while the hold lives.
#[derive(Debug)]
pub struct TxgHold {
    engine: Arc<TxgEngine>,
    txg: u64,
}

impl TxgHold {
    /// The txg this hold pins (the one the change belongs to).
    pub fn txg(&self) -> u64 {
        self.txg
    }

    /// Another hold on the same txg (which cannot have finished quiescing: this one pins
    /// it). For a guard that must outlive every other hold of a change.
    pub fn another(&self) -> TxgHold {
        let mut g = self.engine.inner.lock();
        g.holds[slot(self.txg)] += 1;
        TxgHold {
            engine: Arc::clone(&self.engine),
            txg: self.txg,
        }
    }

    /// Account `data` dirty data bytes and `meta` estimated metadata bytes to this txg
    /// (drives the sync trigger and the write throttle).
    pub fn add_dirty(&self, data: u64, meta: u64) {
        let lim = *self.engine.limits.lock();
        let mut g = self.engine.inner.lock();
        let slot = slot(self.txg);
        g.dirty[slot] = g.dirty[slot].saturating_add(data);
        g.meta[slot] = g.meta[slot].saturating_add(meta);
        if lim.sync_due(g.dirty[slot], g.meta[slot]) {
            self.engine.cv.notify_all();
        }
    }
}

impl Drop for TxgHold {
    fn drop(&mut self) {
        let mut g = self.engine.inner.lock();
        let slot = slot(self.txg);
        g.holds[slot] = g.holds[slot].saturating_sub(1);
        if g.holds[slot] == 0 && g.quiescing == Some(self.txg) {
            self.engine.cv.notify_all();
        }
    }
}

fn slot(txg: u64) -> usize {
    // The mask keeps the value below TXG_SIZE, so the conversion cannot fail.
    usize::try_from(txg & TXG_MASK).unwrap_or(0)
}

/// Why the sync thread woke up with a txg to sync.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncReason {
    /// Somebody waits for this txg (FLUSH/FUA, a sync task, export).
    Requested,
    /// The open txg passed the dirty-data threshold.
    Dirty,
    /// The periodic timer fired.
    Timeout,
    /// The engine is shutting down: final sync.
    Shutdown,
}

impl TxgEngine {
    /// A new engine whose last committed txg is `synced`; the open txg is `synced + 1`.
    pub fn new(synced: u64, cfg: TxgConfig) -> Arc<TxgEngine> {
        Arc::new(TxgEngine {
            inner: Mutex::new(Inner {
                open: synced + 1,
                quiescing: None,
                syncing: None,
                synced,
                holds: [0; TXG_SIZE],
                dirty: [0; TXG_SIZE],
                meta: [0; TXG_SIZE],
                last_wakeup: Instant::now(),
                delayed: 0,
                delay_total: Duration::ZERO,
                throttled: 0,
                requested: 0,
                sync_waiters: Vec::new(),
                throttle_waiters: Vec::new(),
                failed: None,
                shutdown: false,
                closed: false,
                last_sync: Instant::now(),
                sync_idle: false,
                sync_wakeups: 0,
            }),
            cv: Condvar::new(),
            limits: Mutex::new(Limits {
                data_sync: cfg.dirty_sync_bytes.min(cfg.dirty_max_bytes),
                data_max: cfg.dirty_max_bytes,
                meta_sync: cfg.dirty_sync_bytes.min(cfg.dirty_max_bytes),
                meta_max: cfg.dirty_max_bytes,
            }),
            cfg,
        })
    }

    /// Sets the dirty limits from `reserve`, the allocator's slop. The metadata a txg
    /// allocates in syncing context comes out of the slop: at most half of it per txg, a sync
    /// started at a quarter. That alone bounds what the sync takes from the slop, however
    /// large the data limits. Data does not come out of it (its blocks are allocated, under
    /// the slop check, when they are written), but every overwrite frees a block that becomes
    /// allocatable only [`TXG_DEFER_SIZE`] txgs after its own, so the open, syncing and
    /// deferred txgs keep about four txgs' worth of data from the allocator. So a txg holds
    /// at most [`DATA_SLOPS`] slops of data (a sync started at half that): on a pool past
    /// 512 MiB (slop 1/32) about four slops, an eighth of the pool, are then in flight at
    /// worst, and an overwrite that is short of space only because of them waits for the
    /// syncs that bring them back (`Volume::prepare_commit`) rather than failing; the smaller
    /// that is, the fuller a pool can be before its writers wait. Pools whose
    /// slop is larger than the configured (memory-sized) limits are bounded by those.
    pub fn cap_dirty(&self, reserve: u64) {
        let data_cap = reserve.saturating_mul(DATA_SLOPS);
        let data_max = self.cfg.dirty_max_bytes.min(data_cap).max(1 << 20);
        let data_sync = self.cfg.dirty_sync_bytes.min(data_cap / 2).max(1 << 19);
        let meta_max = (reserve / 2).max(1 << 20);
        *self.limits.lock() = Limits {
            data_sync: data_sync.min(data_max),
            data_max,
            meta_sync: meta_max / 2,
            meta_max,
        };
        // Lower limits may make a sync due now: the sync thread waits for a notification.
        let _g = self.inner.lock();
        self.cv.notify_all();
    }

    /// The effective dirty limits.
    pub fn limits(&self) -> Limits {
        *self.limits.lock()
    }

    /// Dirty (data, metadata) bytes of the open txg.
    pub fn open_dirty(&self) -> (u64, u64) {
        let g = self.inner.lock();
        let s = slot(g.open);
        (g.dirty[s], g.meta[s])
    }

    /// Writers delayed by the throttle, their total delay, and writers that waited for a sync
    /// at a dirty limit, since the engine started.
    pub fn throttle_stats(&self) -> (u64, Duration, u64) {
        let g = self.inner.lock();
        (g.delayed, g.delay_total, g.throttled)
    }

    /// How long a writer should wait before taking its hold (the write throttle, as OpenZFS's
    /// `dmu_tx_delay`): nothing while the open txg is below `delay_min_dirty_percent` of both
    /// limits, then `delay_scale * (fill - min) / (1 - fill)`, growing steeply toward the limit.
    /// Delayed writers are spaced out one delay after the other, so the throttle bounds the
    /// write rate instead of adding the same pause to every writer in flight. Zero when no
    /// delay is due.
    pub fn write_delay(&self) -> Duration {
        let lim = *self.limits.lock();
        let mut g = self.inner.lock();
        if g.failed.is_some() || g.shutdown {
            return Duration::ZERO;
        }
        let s = slot(g.open);
        let fill = lim.fill_ppm(g.dirty[s], g.meta[s]);
        let min = u64::from(self.cfg.delay_min_dirty_percent.min(100)) * 10_000;
        if fill <= min {
            return Duration::ZERO;
        }
        // At or past the limit the hold itself waits for the sync.
        if fill >= 1_000_000 {
            return Duration::ZERO;
        }
        let scale = u64::try_from(self.cfg.delay_scale.as_nanos()).unwrap_or(u64::MAX);
        let ns = scale.saturating_mul(fill - min) / (1_000_000 - fill);
        let step = Duration::from_nanos(ns).min(MAX_DELAY);
        let now = Instant::now();
        let wake = (g.last_wakeup + step).max(now);
        g.last_wakeup = wake;
        let wait = (wake - now).min(MAX_DELAY);
        g.delayed += 1;
        g.delay_total += wait;
        wait
    }

    /// How many tree-block writes the sync should keep in flight now (OpenZFS
    /// `vdev_queue_max_async_writes`): the maximum when somebody waits for the syncing txg
    /// (FLUSH, FUA, a sync task, export) or the engine shuts down; otherwise the minimum while
    /// the open txg is light, the maximum once it is filling, linear in between.
    ///
    /// Measured on the 2-vCPU VM (4k randwrite QD32, 1 GiB volume on a 2 GiB pool file,
    /// ringperf alternating): a fixed 32 put the writers' p99 at 8.2-8.8 ms, the time the
    /// device takes for one txg's ~15 MiB of tree blocks queued in front of their writes;
    /// 2 in flight up to 60 % fill and 32 from 90 % gave 1.6-1.7 ms and 1.6-1.7x the IOPS
    /// (the slower sync makes fewer, larger txgs, which rewrite fewer tree blocks per write).
    /// A ramp of 30-60 %, as OpenZFS's, starts below this engine's sync trigger (50 % of a
    /// limit) and so ran at nearly the maximum all the time: no gain.
    pub fn sync_write_window(&self) -> usize {
        let lim = *self.limits.lock();
        let lo_n = self.cfg.sync_write_min_active.max(1);
        let hi_n = self.cfg.sync_write_max_active.max(lo_n);
        let (fill, hurry) = {
            let g = self.inner.lock();
            let s = slot(g.open);
            let hurry = g.shutdown || g.syncing.is_some_and(|t| g.requested >= t);
            (lim.fill_ppm(g.dirty[s], g.meta[s]), hurry)
        };
        if hurry {
            return hi_n;
        }
        let (lo_pct, hi_pct) = self.cfg.sync_write_active_dirty_percent;
        let lo = u64::from(lo_pct.min(100)) * 10_000;
        let hi = (u64::from(hi_pct.min(100)) * 10_000).max(lo + 1);
        if fill <= lo {
            return lo_n;
        }
        if fill >= hi {
            return hi_n;
        }
        let span = u64::try_from(hi_n - lo_n).unwrap_or(0);
        lo_n + usize::try_from(span * (fill - lo) / (hi - lo)).unwrap_or(0)
    }

    /// The engine's tunables.
    pub fn config(&self) -> &TxgConfig {
        &self.cfg
    }

    /// Hold the open txg (never blocks).
    pub fn hold(self: &Arc<Self>) -> Result<TxgHold, i32> {
        let mut g = self.inner.lock();
        if let Some(e) = g.failed {
            return Err(e);
        }
        if g.closed {
            return Err(libc::ESHUTDOWN);
        }
        let txg = g.open;
        g.holds[slot(txg)] += 1;
        self.note_hold(&mut g);
        Ok(TxgHold {
            engine: Arc::clone(self),
            txg,
        })
    }

    /// Hold the open txg, first waiting (asynchronously) while it is over the dirty limit.
    pub fn hold_throttled(self: &Arc<Self>) -> HoldThrottled {
        HoldThrottled {
            engine: Arc::clone(self),
            counted: false,
        }
    }

    /// The open txg.
    pub fn open_txg(&self) -> u64 {
        self.inner.lock().open
    }

    /// The last committed txg.
    pub fn synced_txg(&self) -> u64 {
        self.inner.lock().synced
    }

    /// The txg being synced now, if any.
    pub fn syncing_txg(&self) -> Option<u64> {
        self.inner.lock().syncing
    }

    /// The errno the pool failed with, if a sync failed (the pool is then suspended).
    pub fn failure(&self) -> Option<i32> {
        self.inner.lock().failed
    }

    /// Ask for `txg` to be committed soon (does not wait).
    pub fn request_sync(&self, txg: u64) {
        let mut g = self.inner.lock();
        if txg > g.requested {
            g.requested = txg;
        }
        self.cv.notify_all();
    }

    /// Wait until `txg` is committed (requests its sync).
    pub fn wait_synced(self: &Arc<Self>, txg: u64) -> WaitSynced {
        self.request_sync(txg);
        WaitSynced {
            engine: Arc::clone(self),
            txg,
        }
    }

    /// Commit everything held so far: the open txg at call time.
    pub fn sync_now(self: &Arc<Self>) -> WaitSynced {
        let txg = self.open_txg();
        self.wait_synced(txg)
    }

    /// Blocking variant of [`wait_synced`](Self::wait_synced) for non-reactor threads.
    pub fn wait_synced_blocking(&self, txg: u64) -> Result<(), i32> {
        self.request_sync(txg);
        let mut g = self.inner.lock();
        loop {
            if g.synced >= txg {
                return Ok(());
            }
            if let Some(e) = g.failed {
                return Err(e);
            }
            if g.shutdown && g.syncing.is_none() && g.quiescing.is_none() && g.requested <= g.synced
            {
                return Err(libc::ESHUTDOWN);
            }
            self.cv.wait_for(&mut g, Duration::from_millis(50));
        }
    }

    /// Ask the sync thread to do a final sync and stop.
    pub fn shutdown(&self) {
        let mut g = self.inner.lock();
        g.shutdown = true;
        self.cv.notify_all();
    }

    /// Whether shutdown was requested.
    pub fn is_shutdown(&self) -> bool {
        self.inner.lock().shutdown
    }

    /// Sync thread: wait until a txg should be synced, close it and wait for its holds to drain.
    /// Returns the txg to sync, or `None` once shut down with nothing left to do.
    /// `has_work` reports whether anything (beyond holds) is pending for the open txg.
    pub fn next_to_sync(&self, has_work: &dyn Fn(u64) -> bool) -> Option<(u64, SyncReason)> {
        let mut g = self.inner.lock();
        let reason = loop {
            let open = g.open;
            let dirty = g.dirty[slot(open)].max(g.meta[slot(open)]);
            if g.failed.is_some() {
                return None;
            }
            if g.requested >= open {
                break SyncReason::Requested;
            }
            if g.shutdown {
                // A hold without dirty bytes yet is a change on its way (a write-back
                // write already acknowledged, see `Volume::write_back`): the final sync
                // waits for it like any quiesce does.
                if dirty > 0 || g.holds[slot(open)] > 0 || has_work(open) {
                    break SyncReason::Shutdown;
                }
                g.closed = true;
                return None;
            }
            if self
                .limits
                .lock()
                .sync_due(g.dirty[slot(open)], g.meta[slot(open)])
            {
                break SyncReason::Dirty;
            }
            if dirty == 0 && g.holds[slot(open)] == 0 && !has_work(open) {
                // Nothing to commit and no timer to run: sleep until a change starts (every
                // change, queued work included, takes a hold first, and the first hold wakes
                // us), a sync is requested, or shutdown. Waking every so often instead cost a
                // wake-up on a CPU a reader may be waiting for, four times a second.
                g.sync_idle = true;
                self.cv.wait(&mut g);
                g.sync_idle = false;
                g.sync_wakeups += 1;
                // The timer of the open txg starts with its first change.
                g.last_sync = Instant::now();
                continue;
            }
            let elapsed = g.last_sync.elapsed();
            if elapsed >= self.cfg.timeout {
                break SyncReason::Timeout;
            }
            // Everything else that ends this wait notifies: `add_dirty` past the sync
            // threshold, `cap_dirty`, `request_sync`, `shutdown`, a failure.
            self.cv.wait_for(&mut g, self.cfg.timeout - elapsed);
            g.sync_wakeups += 1;
        };
        // Close the open txg: new holds go to the next one.
        let txg = g.open;
        g.open = txg + 1;
        g.quiescing = Some(txg);
        let s = slot(txg + 1);
        g.holds[s] = 0;
        g.dirty[s] = 0;
        g.meta[s] = 0;
        // Throttled writers may proceed in the fresh txg.
        for w in g.throttle_waiters.drain(..) {
            w.wake();
        }
        while g.holds[slot(txg)] > 0 {
            self.cv.wait_for(&mut g, Duration::from_millis(100));
        }
        g.quiescing = None;
        if g.failed.is_some() {
            // Suspended while the holds drained (a write-back write failed, see
            // `suspend`): this txg lacks an acknowledged write and must never commit.
            return None;
        }
        g.syncing = Some(txg);
        Some((txg, reason))
    }

    /// A hold was just taken (`g` is locked): if the sync thread sleeps with nothing to do,
    /// wake it so that the open txg's timer starts.
    fn note_hold(&self, g: &mut Inner) {
        if g.sync_idle {
            g.sync_idle = false;
            self.cv.notify_all();
        }
    }

    /// Times the sync thread woke up in [`next_to_sync`](Self::next_to_sync) so far.
    pub fn sync_wakeups(&self) -> u64 {
        self.inner.lock().sync_wakeups
    }

    /// Close the open txg now (create, import-time syncs): like [`next_to_sync`](Self::next_to_sync)
    /// without waiting for a trigger.
    pub fn next_to_sync_now(&self) -> Option<(u64, SyncReason)> {
        let open = self.open_txg();
        self.request_sync(open);
        self.next_to_sync(&|_| false)
    }

    /// Sync thread: `txg` is committed (its uberblock is stable).
    pub fn sync_done(&self, txg: u64) {
        let mut g = self.inner.lock();
        g.synced = txg;
        g.syncing = None;
        g.dirty[slot(txg)] = 0;
        g.meta[slot(txg)] = 0;
        g.last_sync = Instant::now();
        let mut keep = Vec::with_capacity(g.sync_waiters.len());
        for (t, w) in g.sync_waiters.drain(..) {
            if t <= txg {
                w.wake();
            } else {
                keep.push((t, w));
            }
        }
        g.sync_waiters = keep;
        self.cv.notify_all();
    }

    /// Sync thread: syncing `txg` failed; suspend the pool and fail every waiter.
    pub fn sync_failed(&self, errno: i32) {
        let mut g = self.inner.lock();
        g.failed = Some(errno);
        g.syncing = None;
        for (_, w) in g.sync_waiters.drain(..) {
            w.wake();
        }
        for w in g.throttle_waiters.drain(..) {
            w.wake();
        }
        self.cv.notify_all();
    }

    /// Suspends the pool from outside the sync thread: an acknowledged write of a txg that is
    /// still held failed to reach the device (`Volume::write_back`). Call it before dropping
    /// the hold: no txg from the open one on then commits (the sync thread stops at the next
    /// txg boundary, see `next_to_sync`), and every waiter and writer gets `errno`.
    pub fn suspend(&self, errno: i32) {
        let mut g = self.inner.lock();
        if g.failed.is_none() {
            g.failed = Some(errno);
        }
        for (_, w) in g.sync_waiters.drain(..) {
            w.wake();
        }
        for w in g.throttle_waiters.drain(..) {
            w.wake();
        }
        self.cv.notify_all();
    }

    /// Sync thread exit: wake everyone still waiting so they observe the shutdown.
    pub fn stopped(&self) {
        let mut g = self.inner.lock();
        g.shutdown = true;
        g.closed = true;
        for (_, w) in g.sync_waiters.drain(..) {
            w.wake();
        }
        for w in g.throttle_waiters.drain(..) {
            w.wake();
        }
        self.cv.notify_all();
    }
}

/// Future of [`TxgEngine::wait_synced`].
#[derive(Debug)]
pub struct WaitSynced {
    engine: Arc<TxgEngine>,
    txg: u64,
}

impl Future for WaitSynced {
    type Output = Result<(), i32>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut g = self.engine.inner.lock();
        if g.synced >= self.txg {
            return Poll::Ready(Ok(()));
        }
        if let Some(e) = g.failed {
            return Poll::Ready(Err(e));
        }
        if g.shutdown && g.syncing.is_none() && g.quiescing.is_none() && g.requested < g.open {
            // Nobody will ever sync it.
            return Poll::Ready(Err(libc::ESHUTDOWN));
        }
        g.sync_waiters.push((self.txg, cx.waker().clone()));
        Poll::Pending
    }
}

/// Future of [`TxgEngine::hold_throttled`].
#[derive(Debug)]
pub struct HoldThrottled {
    engine: Arc<TxgEngine>,
    /// Already counted as throttled (a writer waiting through several wake-ups counts once).
    counted: bool,
}

impl Future for HoldThrottled {
    type Output = Result<TxgHold, i32>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let lim = *this.engine.limits.lock();
        let mut g = this.engine.inner.lock();
        if let Some(e) = g.failed {
            return Poll::Ready(Err(e));
        }
        if g.closed {
            return Poll::Ready(Err(libc::ESHUTDOWN));
        }
        let txg = g.open;
        if lim.at_max(g.dirty[slot(txg)], g.meta[slot(txg)]) && !g.shutdown {
            if !this.counted {
                this.counted = true;
                g.throttled += 1;
            }
            g.throttle_waiters.push(cx.waker().clone());
            this.engine.cv.notify_all();
            return Poll::Pending;
        }
        g.holds[slot(txg)] += 1;
        this.engine.note_hold(&mut g);
        Poll::Ready(Ok(TxgHold {
            engine: Arc::clone(&this.engine),
            txg,
        }))
    }
}

#[cfg(test)]
#[path = "txg_tests.rs"]
mod tests;

//! Per-thread reactors: a minimal single-threaded async executor driving one io_uring.
//!
//! * [`block_on`] runs a reactor on the calling thread until a future completes (tests, CLI,
//!   the txg sync thread, the discard thread).
//! * [`ReactorSet`] starts one pinned thread per reactor; [`ReactorSet::spawn_on`] ships a
//!   `Send` closure to a reactor which builds the (possibly `!Send`) future there.
//! * Inside a reactor: [`spawn_local`], [`spawn_local_first`], [`prefer_current_task`],
//!   [`current_reactor_index`], [`ring_info`],
//!   [`crate::io::sleep`], [`crate::io::yield_now`] and the ring ops of [`crate::io::ops`].
//!
//! The loop: poll the root future when woken, drain cross-thread wake-ups and injected spawns,
//! poll up to a budget of runnable tasks, then one ring turn (submit everything queued; block
//! for a completion only when nothing is runnable). Tasks that queue several operations in one
//! iteration see them submitted in groups of [`ReactorConfig::submit_batch`] as they go. Cross-thread wakes write the reactor's
//! eventfd, on which a read is kept armed in the ring, so a blocked reactor wakes up.

mod driver;
mod files;
mod poll;
mod set;
pub(crate) mod task;

use std::cell::RefCell;
use std::future::Future;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::pin::pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use parking_lot::Mutex;

pub(crate) use driver::{Completion, Driver, MsgData, OpData, SockAddrBuf, WriteReq};
pub use driver::{
    RingStats, DEFAULT_WRITE_AGGREGATE, DEFAULT_WRITE_AGGREGATE_WINDOW, DEFAULT_WRITE_DEFER,
    DEFAULT_WRITE_DEFER_FOR,
};
pub(crate) use files::{file_for_device, FileRegistrations};
pub use set::{ReactorHandle, ReactorSet};
pub use task::{JoinError, JoinHandle};

use crate::io::buf::Arena;
use crate::io::error::{IoError, OpKind};
use task::{Executor, JoinInner, TaskFuture, TaskWaker, MAIN_TASK};

/// Reactor configuration.
#[derive(Debug, Clone)]
pub struct ReactorConfig {
    /// Number of reactor threads for [`ReactorSet`] (default: number of cores).
    pub reactors: usize,
    /// Pin reactor `i` to core `i % cores` (default true). Ignored by [`block_on`]. The
    /// environment variable `RINGPOOL_REACTOR_PIN=0` makes the default false: unpinned, the
    /// scheduler may run a reactor on the core where its wake-ups come from (the disk's
    /// interrupt, the client) or on whichever core is free, instead of waiting for its own
    /// core. Measured on the shared 2-vCPU test box (disk interrupts on CPU 1, builds running,
    /// `ringpool serve`, 4k randread QD32 over NBD): unpinned did 1.04–1.59x the IOPS of pinned
    /// in each of 4 alternated rounds; QD1 latency did not separate from the noise. A knob for
    /// comparisons on a quiet machine.
    pub pin: bool,
    /// SQ size (rounded up to a power of two; default 256). The CQ is twice as large.
    pub entries: u32,
    /// SQPOLL with this idle time in ms (default off: on 2 cores it costs a core).
    pub sqpoll: Option<u32>,
    /// Bytes of the per-reactor buffer arena used by [`crate::io::buf::alloc`] (default
    /// 16 MiB; 0 disables the arena). Mapped lazily on first use.
    pub arena_bytes: usize,
    /// Register the arena with the ring (fixed buffers) when RLIMIT_MEMLOCK allows
    /// (default true).
    pub register_buffers: bool,
    /// Maximum tasks polled per loop iteration before the ring is serviced (default 128). The
    /// environment variable `RINGPOOL_REACTOR_TASK_BUDGET` sets the default, for A/B runs: a
    /// small budget interleaves a burst of woken request tasks with ring turns (the replies'
    /// sends, new requests' receives). Over NBD, 4k reads at QD32, a budget of 8 with
    /// `RINGPOOL_NBD_REPLY_FLUSH=1` did 0.96x the IOPS of the defaults (median of 6 alternated
    /// rounds, perf/results/README-nbd.md), so the default stays.
    pub task_budget: usize,
    /// Thread name prefix for [`ReactorSet`] threads (default "ringpool-r").
    pub thread_name: String,
    /// Force one task-run mode instead of probing (tests and benchmarks); setup fails if the
    /// kernel refuses it. `None` (default) probes DeferTaskrun, CoopTaskrun, Plain in order.
    pub ring_mode: Option<TaskRunMode>,
    /// Before blocking for a completion, poll the ring up to this long while an operation
    /// other than the wake-up read is in flight (a device read, the next request of a client
    /// at queue depth 1), instead of putting the thread to sleep and waking it again. The poll
    /// looks at the ring from user space and stops for a while once it finds itself
    /// descheduled (see the `poll` module). Off by default (zero): when the client shares the
    /// reactor's core, polling for its next request only delays it; like SQPOLL, it is for
    /// machines with cores to spare (perf/results/README-nbd.md). The environment variable
    /// `RINGPOOL_REACTOR_SPIN_US` sets the default. Ignored by [`block_on`] (sync, discard and
    /// CLI threads sleep at once).
    pub spin: std::time::Duration,
    /// Before blocking for a completion while at least one and at most
    /// [`ReactorConfig::read_spin_max`] device reads are in flight, watch the ring from user
    /// space (no syscall per look) for up to this long, instead of putting the thread to sleep
    /// and waking it again when the read completes (see the `poll` module). Unlike
    /// [`ReactorConfig::spin`] it never waits for a socket: at queue depth 1 the client is
    /// itself blocked on the read's reply meanwhile. Off by default (zero): on the 2-vCPU test
    /// VM the polling reactor's busier CPU made the scheduler move the client to the other
    /// vCPU, and the two cross-vCPU wake-ups per request that brings cost more than the poll
    /// saves: QD1 p50 1.09-1.41x over NBD with the client free to move, 0.87x with the client
    /// pinned to the reactor's CPU
    /// (perf/results/README-nbd.md, "QD1 on this VM"). The environment variable
    /// `RINGPOOL_REACTOR_READ_SPIN_US` sets the default; `ringpool serve --read-spin-us`.
    /// Ignored by [`block_on`].
    pub read_spin: std::time::Duration,
    /// Most device reads in flight for [`ReactorConfig::read_spin`] to poll (default 1; the
    /// environment variable `RINGPOOL_REACTOR_READ_SPIN_MAX` sets the default).
    pub read_spin_max: usize,
    /// After a poll before sleeping ([`ReactorConfig::spin`], [`ReactorConfig::read_spin`])
    /// during which the thread was descheduled, sleep at once for this long (default 100 ms;
    /// `RINGPOOL_REACTOR_POLL_BACKOFF_MS` sets the default; 0: never give up a poll early):
    /// another thread wants the core (a build), and under CFS a thread that keeps its core
    /// busy is made to wait a whole time slice once it has used its share.
    pub poll_backoff: std::time::Duration,
    /// Enter the kernel as soon as this many SQEs are queued, besides once per loop turn for
    /// whatever is left (0: only once per turn; 1: each operation as it is made, as fio does
    /// with its default `iodepth_batch_submit=1`). Default 4: when a batch of completions wakes
    /// many tasks, their new operations reach the device in small groups while the rest of the
    /// batch is still being processed, instead of in one burst at the end of the turn; it never
    /// delays an operation (the turn submits the remainder). Side by side on the virtio disk of
    /// perf/README.md: `ringpool serve` 4k QD32 over NBD did 1.14x the reads and 1.17x the
    /// writes of per-turn bursts and 1.08x / 1.09x of one enter per operation; a file read at
    /// QD32 went from 0.86x fio's IOPS with bursts to 1.02x. The environment variable
    /// `RINGPOOL_REACTOR_SUBMIT_BATCH` sets the default.
    pub submit_batch: usize,
    /// Largest vectored write that adjacent positioned writes made in one loop turn are merged
    /// into, in bytes (0: every write is submitted as it is made). See the driver's `wagg`
    /// module: a write waits at most for the end of its turn, members keep their own results,
    /// nothing is merged across files or across an fsync. Default
    /// [`DEFAULT_WRITE_AGGREGATE`]; the environment variable `RINGPOOL_WRITE_AGGREGATE_KIB`
    /// sets the default (for A/B runs).
    pub write_aggregate: usize,
    /// While this many writes to a file are in flight, writes to it made later are held past
    /// the end of their turn until one completes, and merged with what arrived meanwhile
    /// (OpenZFS queues writes beyond a device's active limit the same way). 0: writes are
    /// only held to the end of their turn. A write made while fewer are in flight (every write
    /// at queue depth 1) is never held longer. The environment variable
    /// `RINGPOOL_WRITE_AGGREGATE_WINDOW` sets the default (for A/B runs).
    pub write_aggregate_window: usize,
    /// Positioned writes made inside [`deferred_writes`] (write-back device writes, whose
    /// client was answered already) stay staged, even with nothing in flight, until this
    /// many bytes of writes to their file are staged, so that a sequential stream reaches the
    /// device in fewer, larger writes (see the driver's `wagg` module). 0: never deferred.
    /// Default [`DEFAULT_WRITE_DEFER`]; the environment variable `RINGPOOL_WRITE_DEFER_KIB`
    /// sets the default (for A/B runs).
    pub write_defer: usize,
    /// The longest a deferred write waits for [`ReactorConfig::write_defer`] bytes. Default
    /// [`DEFAULT_WRITE_DEFER_FOR`]; `RINGPOOL_WRITE_DEFER_US` sets the default.
    pub write_defer_for: std::time::Duration,
    /// Most positioned reads of one file in flight on the ring; later ones wait in the ring's
    /// queue and go to the kernel, oldest first, as soon as a reap completes earlier ones
    /// (before the tasks it woke run). 0: no limit. See the driver's `rwin` module. The
    /// environment variable `RINGPOOL_READ_WINDOW` sets the default.
    pub read_window: usize,
}

/// Default of [`ReactorConfig::submit_batch`].
pub const DEFAULT_SUBMIT_BATCH: usize = 4;

/// Default of [`ReactorConfig::read_window`]: 16 small reads of a file in flight per ring (half
/// of a QD32 client's reads wait in the ring while the disk works on the other half, and reach
/// the disk the moment that half completes; OpenZFS keeps 10 synchronous reads active per
/// vdev). On the virtio disk of the test box, which completes all it holds at once and then
/// idles until new work arrives, 4k randread QD32 over NBD on a quiet machine (load ~1, nice
/// -10, 8 alternated rounds, both ways round) did 1.06x / 1.15x the IOPS of no window at
/// 0.90x / 0.84x the p50 and the same p99 (1.02 / 1.00), QD1 unchanged
/// (perf/results/nbd-read-window-quiet-2026-12-07.txt). Under heavy CPU load (three builds and
/// A/Bs at once) the p99 went up to 1.9x in two A/Bs of three: the all-32 stalls of the host
/// then also hold the window's second half. A device that wants more depth per ring (NVMe
/// queues) should raise it or set `RINGPOOL_READ_WINDOW=0` (no window).
pub const DEFAULT_READ_WINDOW: usize = 16;
/// Default of [`ReactorConfig::read_spin`], in microseconds.
pub const DEFAULT_READ_SPIN_US: u64 = 0;

impl Default for ReactorConfig {
    fn default() -> ReactorConfig {
        ReactorConfig {
            reactors: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            pin: crate::knob::enabled("RINGPOOL_REACTOR_PIN"),
            entries: 256,
            sqpoll: None,
            arena_bytes: 16 << 20,
            register_buffers: true,
            task_budget: crate::knob::env("RINGPOOL_REACTOR_TASK_BUDGET").unwrap_or(128),
            thread_name: "ringpool-r".to_string(),
            ring_mode: None,
            spin: std::time::Duration::from_micros(
                crate::knob::env("RINGPOOL_REACTOR_SPIN_US").unwrap_or(0),
            ),
            read_spin: std::time::Duration::from_micros(
                crate::knob::env("RINGPOOL_REACTOR_READ_SPIN_US").unwrap_or(DEFAULT_READ_SPIN_US),
            ),
            read_spin_max: crate::knob::env("RINGPOOL_REACTOR_READ_SPIN_MAX").unwrap_or(1),
            poll_backoff: std::time::Duration::from_millis(
                crate::knob::env("RINGPOOL_REACTOR_POLL_BACKOFF_MS").unwrap_or(100),
            ),
            submit_batch: crate::knob::env("RINGPOOL_REACTOR_SUBMIT_BATCH")
                .unwrap_or(DEFAULT_SUBMIT_BATCH),
            write_aggregate: crate::knob::env::<usize>("RINGPOOL_WRITE_AGGREGATE_KIB")
                .map_or(DEFAULT_WRITE_AGGREGATE, |k| k.saturating_mul(1024)),
            write_aggregate_window: crate::knob::env("RINGPOOL_WRITE_AGGREGATE_WINDOW")
                .unwrap_or(DEFAULT_WRITE_AGGREGATE_WINDOW),
            write_defer: crate::knob::env::<usize>("RINGPOOL_WRITE_DEFER_KIB")
                .map_or(DEFAULT_WRITE_DEFER, |k| k.saturating_mul(1024)),
            write_defer_for: crate::knob::env::<u64>("RINGPOOL_WRITE_DEFER_US")
                .map_or(DEFAULT_WRITE_DEFER_FOR, std::time::Duration::from_micros),
            read_window: crate::knob::env("RINGPOOL_READ_WINDOW").unwrap_or(DEFAULT_READ_WINDOW),
        }
    }
}

/// How the ring runs completion task work (chosen by probing at setup).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TaskRunMode {
    /// IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN.
    DeferTaskrun,
    /// IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG.
    CoopTaskrun,
    /// No special flags.
    Plain,
}

/// What a reactor's ring ended up with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RingInfo {
    /// Task-run mode chosen by the probe.
    pub mode: TaskRunMode,
    /// Actual SQ entries.
    pub sq_entries: u32,
    /// Actual CQ entries.
    pub cq_entries: u32,
    /// SQPOLL active.
    pub sqpoll: bool,
    /// The buffer arena is registered as fixed buffer 0.
    pub registered_buffers: bool,
    /// Merged writes whose members all lie in the registered arena go as
    /// IORING_OP_WRITEV_FIXED (Linux 6.15+; the pages are not pinned per write).
    pub vectored_fixed: bool,
    /// Bytes of the arena (0 until first [`crate::io::buf::alloc`] or when disabled).
    pub arena_bytes: usize,
}

/// State of a reactor shared with other threads (wakers, spawners).
pub(crate) struct Shared {
    /// Cross-thread wake-ups (task key, generation).
    pub(crate) remote: Mutex<Vec<(usize, u64)>>,
    /// Closures shipped by spawn_on; called with `true` to spawn, `false` to reject.
    injected: Mutex<Injected>,
    /// An eventfd write is outstanding (its read CQE not yet processed).
    pub(crate) signal_pending: AtomicBool,
    /// The root future was woken.
    pub(crate) main_woken: AtomicBool,
    /// ReactorSet asked this reactor to stop.
    shutdown: AtomicBool,
    pub(crate) eventfd: OwnedFd,
}

type InjectedFn = Box<dyn FnOnce(bool) + Send>;

struct Injected {
    accepting: bool,
    queue: Vec<InjectedFn>,
}

impl Shared {
    fn new() -> Result<Arc<Shared>, IoError> {
        // SAFETY: plain syscall without pointers.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(IoError::last_os(OpKind::Other));
        }
        // SAFETY: fd is a fresh descriptor we own.
        let eventfd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Arc::new(Shared {
            remote: Mutex::new(Vec::new()),
            injected: Mutex::new(Injected {
                accepting: true,
                queue: Vec::new(),
            }),
            signal_pending: AtomicBool::new(false),
            main_woken: AtomicBool::new(false),
            shutdown: AtomicBool::new(false),
            eventfd,
        }))
    }

    /// Wake the reactor thread (at most one eventfd write per processed wake-up CQE).
    pub(crate) fn signal(&self) {
        if !self.signal_pending.swap(true, Ordering::SeqCst) {
            let one: u64 = 1;
            // SAFETY: writes 8 bytes from a live local into our eventfd.
            let r = unsafe {
                libc::write(
                    self.eventfd.as_raw_fd(),
                    std::ptr::from_ref(&one).cast::<libc::c_void>(),
                    8,
                )
            };
            debug_assert_eq!(r, 8);
        }
    }

    /// Queue a spawn closure; returns it back if the reactor no longer accepts work.
    fn inject(&self, f: InjectedFn) -> Result<(), InjectedFn> {
        {
            let mut inj = self.injected.lock();
            if !inj.accepting {
                return Err(f);
            }
            inj.queue.push(f);
        }
        self.signal();
        Ok(())
    }
}

/// Everything a reactor thread owns.
pub(crate) struct Core {
    pub(crate) index: Option<usize>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) exec: Executor,
    // Declared before `arena`: the ring is torn down (after quiescing) before the arena's
    // Arc is released.
    pub(crate) driver: RefCell<Driver>,
    arena: RefCell<Option<Arc<Arena>>>,
    files: RefCell<files::FileTable>,
    arena_tried: std::cell::Cell<bool>,
    /// When the loop may poll the ring before sleeping again (see `poll`).
    poll: poll::PollState,
    cfg: ReactorConfig,
}

thread_local! {
    static CURRENT: RefCell<Option<Rc<Core>>> = const { RefCell::new(None) };
}

/// The reactor running on this thread, if any.
pub(crate) fn current_core() -> Option<Rc<Core>> {
    CURRENT
        .try_with(|c| c.try_borrow().ok().and_then(|c| c.clone()))
        .ok()
        .flatten()
}

/// Run `f` with the current reactor's arena (mapping and registering it on first use).
pub(crate) fn with_arena<R>(f: impl FnOnce(&Arc<Arena>) -> R) -> Option<R> {
    let core = current_core()?;
    core.ensure_arena();
    let arena = core.arena.borrow().clone()?;
    Some(f(&arena))
}

/// Id of the current reactor's registered arena (fixed buffers usable with this ring).
pub(crate) fn current_registered_arena() -> Option<u64> {
    let core = current_core()?;
    let a = core.arena.borrow();
    a.as_ref().filter(|a| a.registered).map(|a| a.id)
}

impl Core {
    fn new(cfg: &ReactorConfig, index: Option<usize>) -> Result<Rc<Core>, IoError> {
        let shared = Shared::new()?;
        // Only a reactor that polls before sleeping looks at IORING_SQ_TASKRUN.
        let polls = index.is_some() && !(cfg.read_spin.is_zero() && cfg.spin.is_zero());
        let mut driver = Driver::new(
            cfg.entries,
            cfg.sqpoll,
            cfg.ring_mode,
            polls,
            Arc::clone(&shared),
        )
        .map_err(IoError::RingSetup)?;
        driver.set_submit_batch(cfg.submit_batch);
        driver.set_write_aggregate(cfg.write_aggregate, cfg.write_aggregate_window);
        driver.set_write_defer(cfg.write_defer, cfg.write_defer_for);
        driver.set_read_window(cfg.read_window);
        Ok(Rc::new(Core {
            index,
            shared,
            exec: Executor::new(),
            driver: RefCell::new(driver),
            arena: RefCell::new(None),
            files: RefCell::new(files::FileTable::default()),
            arena_tried: std::cell::Cell::new(false),
            poll: poll::PollState::default(),
            cfg: cfg.clone(),
        }))
    }

    /// Map the arena and register it as fixed buffer 0 if allowed (once).
    fn ensure_arena(&self) {
        if self.arena_tried.replace(true) || self.cfg.arena_bytes == 0 {
            return;
        }
        let Some(mut arena) = Arena::map(self.cfg.arena_bytes) else {
            return;
        };
        if self.cfg.register_buffers && memlock_allows(arena.iovec().iov_len) {
            let iov = [arena.iovec()];
            let driver = self.driver.borrow();
            // SAFETY: the iovec describes the arena mapping, which lives until the last Arc
            // (held by the Core and by every arena IoBuf) is dropped; the kernel pins the pages
            // at registration and unpins them when the ring closes.
            let r = unsafe { driver.ring().submitter().register_buffers(&iov) };
            if r.is_ok() {
                arena.registered = true;
            } else {
                tracing::debug!("register_buffers refused ({r:?}); arena used unregistered");
            }
        }
        {
            let mut d = self.driver.borrow_mut();
            let info = d.info_mut();
            info.registered_buffers = arena.registered;
            info.arena_bytes = arena.iovec().iov_len;
        }
        *self.arena.borrow_mut() = Some(Arc::new(arena));
    }

    /// Drain cross-thread wake-ups and injected spawns into the local run queue.
    fn drain_remote(self: &Rc<Self>) {
        let woken: Vec<(usize, u64)> = std::mem::take(&mut *self.shared.remote.lock());
        for (k, g) in woken {
            self.exec.schedule(k, g);
        }
        let injected: Vec<InjectedFn> = {
            let mut inj = self.shared.injected.lock();
            if inj.queue.is_empty() {
                Vec::new()
            } else {
                std::mem::take(&mut inj.queue)
            }
        };
        for f in injected {
            f(true);
        }
    }

    fn has_remote_work(&self) -> bool {
        !self.shared.remote.lock().is_empty() || !self.shared.injected.lock().queue.is_empty()
    }

    /// The loop has something to do without waiting for the ring: a task is runnable, the
    /// root future was woken or work was shipped in. The loop blocks in the ring only when
    /// this is false after the last reap (see `poll`).
    fn has_work(&self) -> bool {
        !self.exec.is_idle()
            || self.shared.main_woken.load(Ordering::SeqCst)
            || self.has_remote_work()
    }

    /// Run the loop until `fut` completes.
    fn run<F: Future>(self: &Rc<Self>, fut: F) -> Result<F::Output, IoError> {
        let mut fut = pin!(fut);
        let main_waker = Waker::from(Arc::new(TaskWaker {
            shared: Arc::clone(&self.shared),
            key: MAIN_TASK,
            gen: 0,
        }));
        let mut cx = Context::from_waker(&main_waker);
        self.shared.main_woken.store(true, Ordering::SeqCst);
        let budget = self.cfg.task_budget.max(1);
        loop {
            if self.shared.main_woken.swap(false, Ordering::SeqCst) {
                if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
                    return Ok(v);
                }
            }
            self.drain_remote();
            self.exec.run_ready(budget);
            let mut idle = !self.has_work();
            if idle {
                if let Some(limit) = self.poll_limit() {
                    idle = self.poll_ring(limit)?;
                }
            }
            let r = self.driver.borrow_mut().turn(idle);
            if let Err(e) = r {
                return Err(IoError::from_std(OpKind::Other, &e));
            }
        }
    }

    /// Stop accepting injected work and reject what is queued.
    fn close_injection(&self) {
        let rejected: Vec<InjectedFn> = {
            let mut inj = self.shared.injected.lock();
            inj.accepting = false;
            std::mem::take(&mut inj.queue)
        };
        for f in rejected {
            f(false);
        }
    }
}

fn memlock_allows(bytes: usize) -> bool {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into our local struct.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) } != 0 {
        return false;
    }
    // Root normally has CAP_IPC_LOCK, which bypasses the limit.
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    root || lim.rlim_cur == libc::RLIM_INFINITY
        || u64::try_from(bytes).is_ok_and(|b| b <= lim.rlim_cur)
}

/// Installs `core` as the thread's reactor; on drop cancels the tasks and uninstalls it.
struct CurrentGuard {
    core: Rc<Core>,
}

impl CurrentGuard {
    fn install(core: Rc<Core>) -> Result<CurrentGuard, IoError> {
        CURRENT.with(|c| {
            let mut c = c.borrow_mut();
            if c.is_some() {
                return Err(IoError::ReactorStart {
                    index: core.index.unwrap_or(0),
                    reason: "a reactor is already running on this thread (nested block_on)".into(),
                });
            }
            *c = Some(Rc::clone(&core));
            Ok(())
        })?;
        Ok(CurrentGuard { core })
    }
}

impl Drop for CurrentGuard {
    fn drop(&mut self) {
        self.core.close_injection();
        // Tasks are dropped while the reactor is still current, so their in-flight ops can
        // orphan themselves into the slab.
        self.core.exec.cancel_all();
        // Wait for every op (so no op uses a fixed slot), then release registered files
        // synchronously so exclusive claims end when the reactor does.
        self.core.driver.borrow_mut().quiesce();
        self.core.unregister_all_files();
        let _ = CURRENT.try_with(|c| c.borrow_mut().take());
    }
}

fn run_reactor<F: Future>(
    cfg: &ReactorConfig,
    index: Option<usize>,
    fut: F,
) -> Result<F::Output, IoError> {
    let core = Core::new(cfg, index)?;
    run_on_core(core, fut)
}

fn run_on_core<F: Future>(core: Rc<Core>, fut: F) -> Result<F::Output, IoError> {
    let guard = CurrentGuard::install(Rc::clone(&core))?;
    let r = core.run(fut);
    drop(guard);
    // The last Rc: the driver quiesces the ring (waits for every in-flight CQE) on drop.
    drop(core);
    r
}

/// Run a reactor on the current thread until `fut` completes. Tasks spawned with
/// [`spawn_local`] that are still running when `fut` completes are cancelled (dropped).
pub fn block_on<F: Future>(cfg: &ReactorConfig, fut: F) -> Result<F::Output, IoError> {
    run_reactor(cfg, None, fut)
}

/// Spawn a task on the current reactor. The future need not be `Send`.
///
/// # Panics
/// When called outside a reactor thread (a programming error; every caller of this is code
/// that already runs inside `block_on` or a `ReactorSet`).
pub fn spawn_local<F>(fut: F) -> JoinHandle<F::Output>
where
    F: Future + 'static,
    F::Output: 'static,
{
    spawn_on_current(fut, false)
}

/// Like [`spawn_local`], but the task's first poll comes before every task already waiting to
/// run (after other tasks spawned this way, in order). For work that should start before the
/// reactor goes through a backlog of woken tasks, e.g. a request whose device read should be
/// queued before the replies of a burst of completions are built.
///
/// # Panics
/// When called outside a reactor thread, like [`spawn_local`].
pub fn spawn_local_first<F>(fut: F) -> JoinHandle<F::Output>
where
    F: Future + 'static,
    F::Output: 'static,
{
    spawn_on_current(fut, true)
}

fn spawn_on_current<F>(fut: F, first: bool) -> JoinHandle<F::Output>
where
    F: Future + 'static,
    F::Output: 'static,
{
    let core = current_core().expect("io::spawn_local called outside a reactor");
    let join = JoinInner::new();
    core.exec.spawn(
        &core.shared,
        Box::pin(TaskFuture::new(fut, Arc::clone(&join))),
        first,
    );
    JoinHandle::from_inner(join)
}

/// From now on, whenever the calling task is woken it is polled before the tasks waiting in
/// the ordinary run queue (see [`spawn_local_first`]). For a task that feeds others, such as a
/// connection's request reader. Returns false when not called from a task of a reactor.
pub fn prefer_current_task() -> bool {
    current_core().is_some_and(|c| c.exec.prefer_current())
}

/// Runs `fut` with the positioned reads it makes outside the ring's read window (never held,
/// not counted; see [`ReactorConfig::read_window`]): for reads that gate others, such as the
/// indirect block a lookup must load before the data read it resolves can be made.
pub async fn outside_read_window<F: Future>(fut: F) -> F::Output {
    with_flag(driver::set_outside_read_window, fut).await
}

/// Runs `fut` with the positioned writes it makes deferred: held by the ring until enough
/// writes to their file are staged to go merged, or for at most
/// [`ReactorConfig::write_defer_for`] (see [`ReactorConfig::write_defer`]). For writes
/// nobody waits on soon: write-back device writes, acknowledged to their client already.
pub(crate) async fn deferred_writes<F: Future>(fut: F) -> F::Output {
    with_flag(driver::set_deferring, fut).await
}

/// Polls `fut` with a thread-local flag of the ring on (`set` turns it on or off and returns
/// the old value), restored after every poll: what the ring decides from the flag applies to
/// the ops `fut` makes, not to other tasks that run in between.
async fn with_flag<F: Future>(set: fn(bool) -> bool, fut: F) -> F::Output {
    let mut fut = pin!(fut);
    std::future::poll_fn(|cx| {
        let was = set(true);
        let r = fut.as_mut().poll(cx);
        set(was);
        r
    })
    .await
}

/// Somebody on this reactor waits for writes to reach the device (see [`writes_wanted`]).
#[derive(Debug)]
#[must_use = "deferral resumes as soon as this is dropped"]
pub(crate) struct WritesWanted {
    counted: bool,
}

/// While the returned guard lives, no positioned write of the current reactor is deferred
/// ([`deferred_writes`]), and those deferred already go at once: for whoever is about to wait
/// on a write-back's device write (a FLUSH waiting for the txg the write-back holds, a read
/// or a rewrite waiting for its blocks' locks), which may not even have been made yet (its
/// task has not run). No-op outside a reactor.
pub(crate) fn writes_wanted() -> WritesWanted {
    let counted = current_core().is_some_and(|core| {
        core.driver.borrow_mut().want_writes(true);
        true
    });
    WritesWanted { counted }
}

impl Drop for WritesWanted {
    fn drop(&mut self) {
        if !self.counted {
            return;
        }
        // Dropped on the reactor that counted it (futures do not leave their reactor), with
        // no driver borrow held (as `Op` is); if it were, deferral would just stay off.
        if let Some(core) = current_core() {
            if let Ok(mut d) = core.driver.try_borrow_mut() {
                d.want_writes(false);
            }
        }
    }
}

/// Submits the operations queued on the current reactor's ring now instead of at the end of
/// the loop turn (or once [`ReactorConfig::submit_batch`] of them wait). For an operation whose
/// result somebody else is waiting for while the reactor still has a long turn ahead, e.g. a
/// reply send made while many completions are still being processed. No-op outside a reactor.
pub fn submit_now() {
    if let Some(core) = current_core() {
        core.driver.borrow_mut().submit_now();
    }
}

/// Pushes the writes staged for aggregation into the SQ (merged as usual), so that an op made
/// next (an fsync, a discard) is never submitted before a write made earlier. No-op outside a
/// reactor.
pub(crate) fn flush_staged_writes() {
    if let Some(core) = current_core() {
        core.driver.borrow_mut().flush_staged(true);
    }
}

/// Like [`spawn_local`] but returns `None` instead of panicking outside a reactor.
pub fn try_spawn_local<F>(fut: F) -> Option<JoinHandle<F::Output>>
where
    F: Future + 'static,
    F::Output: 'static,
{
    current_core()?;
    Some(spawn_local(fut))
}

/// Index of the current reactor within its [`ReactorSet`]; `None` in `block_on` or outside.
pub fn current_reactor_index() -> Option<usize> {
    current_core().and_then(|c| c.index)
}

/// True when the calling thread runs a reactor.
pub fn in_reactor() -> bool {
    current_core().is_some()
}

/// What the current reactor's ring setup probe chose.
pub fn ring_info() -> Option<RingInfo> {
    current_core().map(|c| c.driver.borrow().info().clone())
}

/// Submission and completion counters of the current reactor's ring.
pub fn ring_stats() -> Option<RingStats> {
    current_core().map(|c| c.driver.borrow().stats())
}

/// Number of live tasks and ops with a slot on the current reactor (diagnostics and tests).
pub fn reactor_stats() -> Option<(usize, usize)> {
    current_core().map(|c| (c.exec.task_count(), c.driver.borrow().op_count()))
}

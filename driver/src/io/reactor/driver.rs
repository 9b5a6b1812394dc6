//! The ring driver: one io_uring, the in-flight table and submission/completion bookkeeping.
//!
//! * Every op lives in a `Slab<Slot>`; `user_data = key + 1` (never 0). The slot owns every
//!   resource the kernel may touch (buffer, timespec, sockaddr) until the op's terminal CQE,
//!   even when the future that issued it is dropped (the slot becomes `Orphaned` and is freed
//!   when the CQE arrives; an AsyncCancel is issued to hurry it along).
//! * `user_data >= RESERVED_MIN` marks internal ops: the armed eventfd read, cancellations and
//!   the timer of deferred writes.
//! * CQ overflow protection: `in_flight` counts SQEs handed to the SQ and not yet reaped; an op
//!   is only pushed while `in_flight < cq_capacity`, otherwise it waits in a local backlog that
//!   drains as completions are reaped.
//! * Submission is batched: ops are pushed to the SQ as they are created and the ring is
//!   entered once per reactor loop iteration (or when the SQ is full), and also as soon as
//!   [`super::ReactorConfig::submit_batch`] SQEs are waiting, so a device sees requests in
//!   small groups as they are made instead of in one burst per loop iteration.
//! * [`RingStats`] counts the enters and the SQEs they submitted (SQEs per enter is the burst
//!   size a device sees; the diagnostics ringperf prints).
//! * Positioned writes are aggregated: those made in one turn to adjacent offsets of one file
//!   go to the kernel as one vectored write ([`wagg`]).

use std::collections::VecDeque;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use io_uring::{opcode, squeue, types, IoUring};
use slab::Slab;

use crate::io::buf::IoBuf;

use super::{RingInfo, Shared, TaskRunMode};

mod perfile;
mod rwin;

pub(crate) use rwin::set_outside as set_outside_read_window;
mod wagg;

pub(crate) use wagg::{set_deferring, WriteReq};
pub use wagg::{
    DEFAULT_WRITE_AGGREGATE, DEFAULT_WRITE_AGGREGATE_WINDOW, DEFAULT_WRITE_DEFER,
    DEFAULT_WRITE_DEFER_FOR,
};

/// Lowest user_data value reserved for internal ops.
pub(crate) const RESERVED_MIN: u64 = u64::MAX - 15;
/// user_data of the armed eventfd read.
const TOKEN_EVENTFD: u64 = u64::MAX;
/// user_data of AsyncCancel requests (their CQEs are ignored).
const TOKEN_CANCEL: u64 = u64::MAX - 1;
// u64::MAX - 2: the write deferral timer (`wagg::TOKEN_DEFER`).

/// `IORING_ENTER_GETEVENTS`: also needed with DEFER_TASKRUN to run completion task work.
const ENTER_GETEVENTS: u32 = 1;

/// A socket address buffer that the kernel fills (accept) or reads (connect).
#[derive(Debug)]
pub(crate) struct SockAddrBuf {
    pub(crate) storage: libc::sockaddr_storage,
    pub(crate) len: libc::socklen_t,
}

/// A sendmsg request: the buffers, the iovecs pointing into them and the header pointing at
/// the iovecs. Boxed so every address stays put while the slot owns it.
pub(crate) struct MsgData {
    pub(crate) bufs: Vec<IoBuf>,
    pub(crate) iov: Vec<libc::iovec>,
    pub(crate) hdr: libc::msghdr,
}

impl std::fmt::Debug for MsgData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MsgData")
            .field("bufs", &self.bufs.len())
            .field("iov", &self.iov.len())
            .finish()
    }
}

/// Resources an op lends to the kernel; kept in the slot until the terminal CQE.
#[derive(Debug)]
pub(crate) enum OpData {
    None,
    Buf(IoBuf),
    // The boxes below are never read by Rust: they are held only so the memory the kernel
    // reads stays alive until the CQE.
    #[allow(dead_code)]
    Timespec(Box<types::Timespec>),
    #[allow(dead_code)]
    Addr(Box<SockAddrBuf>),
    Msg(Box<MsgData>),
}

/// The result of one op.
#[derive(Debug)]
pub(crate) struct Completion {
    pub(crate) res: i32,
    #[allow(dead_code)]
    pub(crate) flags: u32,
    pub(crate) data: OpData,
}

#[derive(Debug)]
enum Lifecycle {
    /// Submitted (or backlogged); the waker of the awaiting task, once polled.
    Waiting(Option<Waker>),
    /// The CQE arrived; waiting for the future to collect it.
    Done { res: i32, flags: u32 },
    /// The future was dropped; free the slot when the CQE arrives.
    Orphaned,
}

#[derive(Debug)]
struct Slot {
    life: Lifecycle,
    data: OpData,
    /// A member of a vectored write in flight (its user_data is not known to the kernel).
    grouped: bool,
    /// A positioned write to this file (counted in flight per file by the aggregator).
    write_fd: Option<crate::io::ops::FileRef>,
    /// A positioned read of this file counted by the read window.
    read_fd: Option<crate::io::ops::FileRef>,
    /// A positioned read, counted in `Driver::reads_in_flight` until its CQE is reaped or it
    /// is dropped before the kernel saw it.
    read: bool,
}

/// Counters of one ring since it was set up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RingStats {
    /// io_uring_enter calls that submitted at least one SQE.
    pub submit_enters: u64,
    /// SQEs the kernel accepted.
    pub submitted: u64,
    /// io_uring_enter calls that waited for a completion.
    pub waits: u64,
    /// CQEs reaped.
    pub reaped: u64,
    /// Positioned writes requested (`ops::write_at` and the loops over it).
    pub writes: u64,
    /// Write SQEs made for them: a vectored write of several counts once, a write re-issued
    /// after its vectored write failed counts again. Fewer than `writes` when aggregated.
    pub write_sqes: u64,
    /// Vectored writes of several requested writes.
    pub vectored_writes: u64,
    /// Requested writes that went as part of a vectored write.
    pub merged_writes: u64,
    /// Vectored writes that failed or came back short, whose members were re-issued alone.
    pub vectored_fallbacks: u64,
    /// Reads held back by the read window until earlier reads of their file completed.
    pub held_reads: u64,
}

impl RingStats {
    /// The growth of every counter since `earlier` (a snapshot of the same ring).
    pub fn since(&self, earlier: &RingStats) -> RingStats {
        RingStats {
            submit_enters: self.submit_enters.saturating_sub(earlier.submit_enters),
            submitted: self.submitted.saturating_sub(earlier.submitted),
            waits: self.waits.saturating_sub(earlier.waits),
            reaped: self.reaped.saturating_sub(earlier.reaped),
            writes: self.writes.saturating_sub(earlier.writes),
            write_sqes: self.write_sqes.saturating_sub(earlier.write_sqes),
            vectored_writes: self.vectored_writes.saturating_sub(earlier.vectored_writes),
            merged_writes: self.merged_writes.saturating_sub(earlier.merged_writes),
            vectored_fallbacks: self
                .vectored_fallbacks
                .saturating_sub(earlier.vectored_fallbacks),
            held_reads: self.held_reads.saturating_sub(earlier.held_reads),
        }
    }
}

pub(crate) struct Driver {
    // Field order matters for Drop: `ring` must be closed only after every in-flight op has
    // completed (Drop for Driver waits for that), and before `ops` releases the buffers.
    ring: IoUring,
    ops: Slab<Slot>,
    backlog: VecDeque<squeue::Entry>,
    in_flight: usize,
    cq_capacity: usize,
    shared: Arc<Shared>,
    /// Target of the armed eventfd read (8 bytes); boxed so its address is stable.
    efd_buf: Box<u64>,
    efd_armed: bool,
    info: RingInfo,
    /// Enter the kernel as soon as this many SQEs wait in the SQ (0: once per loop turn).
    submit_batch: usize,
    stats: RingStats,
    wagg: wagg::Aggregator,
    rwin: rwin::ReadWindow,
    /// Positioned reads (`submit_read`) made and not yet completed: held by the read window,
    /// backlogged or with the kernel. What a reactor polls for (`Core::poll_for_read`).
    reads_in_flight: usize,
}

impl std::fmt::Debug for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver")
            .field("ops", &self.ops.len())
            .field("backlog", &self.backlog.len())
            .field("in_flight", &self.in_flight)
            .field("info", &self.info)
            .finish()
    }
}

impl Driver {
    /// Set up a ring: SINGLE_ISSUER|DEFER_TASKRUN, else SINGLE_ISSUER|COOP_TASKRUN|TASKRUN_FLAG,
    /// else plain (SQPOLL rings skip the taskrun modes, which the kernel refuses with SQPOLL).
    pub(crate) fn new(
        entries: u32,
        sqpoll_idle_ms: Option<u32>,
        forced: Option<TaskRunMode>,
        taskrun_flag: bool,
        shared: Arc<Shared>,
    ) -> io::Result<Driver> {
        let entries = entries.clamp(2, 32768).next_power_of_two();
        let cq = entries.saturating_mul(2);
        let mut last_err = None;
        let forced = forced.map(|m| [m]);
        let modes: &[TaskRunMode] = if let Some(m) = &forced {
            m
        } else if sqpoll_idle_ms.is_some() {
            &[TaskRunMode::Plain]
        } else {
            &[
                TaskRunMode::DeferTaskrun,
                TaskRunMode::CoopTaskrun,
                TaskRunMode::Plain,
            ]
        };
        for &mode in modes {
            let mut b = IoUring::builder();
            b.setup_cqsize(cq).setup_clamp();
            match mode {
                TaskRunMode::DeferTaskrun => {
                    b.setup_single_issuer().setup_defer_taskrun();
                    if taskrun_flag {
                        // The kernel raises IORING_SQ_TASKRUN when completion work is queued,
                        // so a reactor polling before it sleeps (the `poll` module) sees a
                        // device read's completion without a syscall per look.
                        b.setup_taskrun_flag();
                    }
                }
                TaskRunMode::CoopTaskrun => {
                    b.setup_single_issuer()
                        .setup_coop_taskrun()
                        .setup_taskrun_flag();
                }
                TaskRunMode::Plain => {}
            }
            if let Some(idle) = sqpoll_idle_ms {
                b.setup_sqpoll(idle);
            }
            match b.build(entries) {
                Ok(ring) => {
                    let p = ring.params();
                    let info = RingInfo {
                        mode,
                        sq_entries: p.sq_entries(),
                        cq_entries: p.cq_entries(),
                        sqpoll: p.is_setup_sqpoll(),
                        registered_buffers: false,
                        vectored_fixed: false,
                        arena_bytes: 0,
                    };
                    let cq_capacity = usize::try_from(p.cq_entries()).unwrap_or(usize::MAX);
                    return Ok(Driver {
                        ring,
                        ops: Slab::with_capacity(usize::try_from(entries).unwrap_or(256)),
                        backlog: VecDeque::new(),
                        in_flight: 0,
                        cq_capacity,
                        shared,
                        efd_buf: Box::new(0),
                        efd_armed: false,
                        info,
                        submit_batch: 0,
                        stats: RingStats::default(),
                        wagg: wagg::Aggregator::new(),
                        rwin: rwin::ReadWindow::new(),
                        reads_in_flight: 0,
                    });
                }
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap_or_else(|| io::Error::from_raw_os_error(libc::EINVAL)))
    }

    pub(crate) fn info(&self) -> &RingInfo {
        &self.info
    }

    pub(crate) fn info_mut(&mut self) -> &mut RingInfo {
        &mut self.info
    }

    pub(crate) fn ring(&self) -> &IoUring {
        &self.ring
    }

    /// Enter the kernel as soon as `n` SQEs are queued (0: only once per loop turn).
    pub(crate) fn set_submit_batch(&mut self, n: usize) {
        self.submit_batch = n;
    }

    pub(crate) fn stats(&self) -> RingStats {
        self.stats
    }

    /// An operation other than the wake-up read is in flight, backlogged or staged.
    pub(crate) fn busy(&self) -> bool {
        self.in_flight > usize::from(self.efd_armed)
            || !self.backlog.is_empty()
            || self.wagg.has_staged()
            || self.rwin.has_held()
    }

    /// Ops that have a slot (in flight, backlogged or completed-but-uncollected).
    pub(crate) fn op_count(&self) -> usize {
        self.ops.len()
    }

    /// Positioned reads made on this ring that have not completed (see `Slot::read`).
    pub(crate) fn reads_in_flight(&self) -> usize {
        self.reads_in_flight
    }

    /// Slot `key` leaves before its CQE (the kernel never saw it): uncount it if a read.
    fn forget_read(&mut self, key: usize) {
        if self.ops.get(key).is_some_and(|s| s.read) {
            self.reads_in_flight = self.reads_in_flight.saturating_sub(1);
        }
    }

    /// Whether the kernel has something for the reactor, seen without a syscall: CQEs in the
    /// ring, or completion work queued for this thread (IORING_SQ_TASKRUN, raised under
    /// TASKRUN_FLAG; with DEFER_TASKRUN a device read's completion arrives that way and only
    /// becomes a CQE when the thread enters the kernel).
    pub(crate) fn completion_pending(&mut self) -> bool {
        self.ring.submission().taskrun() || !self.ring.completion().is_empty()
    }

    /// Register an op: the slot takes `data`; returns the slab key.
    pub(crate) fn submit(&mut self, entry: squeue::Entry, data: OpData) -> usize {
        let key = self.ops.insert(Slot {
            life: Lifecycle::Waiting(None),
            data,
            grouped: false,
            write_fd: None,
            read_fd: None,
            read: false,
        });
        let ud = u64::try_from(key).unwrap_or(u64::MAX) + 1;
        debug_assert!(ud < RESERVED_MIN);
        self.push(entry.user_data(ud));
        key
    }

    /// Hand an SQE to the ring, or backlog it if the CQ could overflow or the SQ is full.
    fn push(&mut self, entry: squeue::Entry) {
        if !self.backlog.is_empty() || self.in_flight >= self.cq_capacity {
            self.backlog.push_back(entry);
            return;
        }
        if let Err(entry) = self.try_push_sq(entry) {
            self.backlog.push_back(entry);
            return;
        }
        if self.submit_batch > 0
            && !self.info.sqpoll
            && self.ring.submission().len() >= self.submit_batch
        {
            // Submit only: completions are reaped at the loop turn as usual. An error here
            // (EBUSY, EAGAIN) leaves the SQEs queued for that turn, which reports it.
            let _ = self.enter(false);
        }
    }

    /// Hands the SQEs queued so far to the kernel now, without waiting for a completion
    /// (an SQPOLL ring's kernel thread picks them up by itself).
    pub(crate) fn submit_now(&mut self) {
        if !self.info.sqpoll && !self.ring.submission().is_empty() {
            // An error (EBUSY, EAGAIN) leaves the SQEs queued for the loop turn, which reports it.
            let _ = self.enter(false);
        }
    }

    /// Push into the SQ, submitting once to make room if it is full.
    fn try_push_sq(&mut self, entry: squeue::Entry) -> Result<(), squeue::Entry> {
        for attempt in 0..2 {
            // SAFETY: every resource the entry points at is owned by a slot in `self.ops`
            // (or is `self.efd_buf`), which stays alive until the terminal CQE is reaped;
            // Drop for Driver waits for all CQEs before releasing them.
            let pushed = unsafe { self.ring.submission().push(&entry) };
            if pushed.is_ok() {
                self.in_flight += 1;
                return Ok(());
            }
            if attempt == 0 {
                // SQ full: flush it to the kernel (no wait) and retry once.
                let _ = self.enter(false);
            }
        }
        Err(entry)
    }

    /// Move backlogged SQEs into the SQ while the CQ has room.
    fn drain_backlog(&mut self) {
        while self.in_flight < self.cq_capacity {
            let Some(e) = self.backlog.pop_front() else {
                break;
            };
            if let Err(e) = self.try_push_sq(e) {
                self.backlog.push_front(e);
                break;
            }
        }
    }

    /// Poll the op in slot `key`.
    pub(crate) fn poll_op(&mut self, key: usize, cx: &mut Context<'_>) -> Poll<Completion> {
        let Some(slot) = self.ops.get_mut(key) else {
            // Cannot happen: the future owns the key until it collects the result.
            return Poll::Ready(Completion {
                res: -libc::ECANCELED,
                flags: 0,
                data: OpData::None,
            });
        };
        match &mut slot.life {
            Lifecycle::Done { res, flags } => {
                let (res, flags) = (*res, *flags);
                let slot = self.ops.remove(key);
                Poll::Ready(Completion {
                    res,
                    flags,
                    data: slot.data,
                })
            }
            Lifecycle::Waiting(w) => {
                match w {
                    Some(w) if w.will_wake(cx.waker()) => {}
                    _ => *w = Some(cx.waker().clone()),
                }
                Poll::Pending
            }
            Lifecycle::Orphaned => Poll::Pending,
        }
    }

    /// The future of slot `key` was dropped before collecting its completion.
    pub(crate) fn orphan(&mut self, key: usize) {
        let ud = u64::try_from(key).unwrap_or(u64::MAX) + 1;
        // A staged write: the kernel never saw it either.
        if self.unstage(key) {
            self.ops.remove(key);
            return;
        }
        // A held read: the kernel never saw it either.
        if self.unhold_read(key) {
            self.forget_read(key);
            self.ops.remove(key);
            return;
        }
        // Still only in the local backlog: the kernel never saw it, free at once.
        if let Some(pos) = self.backlog.iter().position(|e| e.get_user_data() == ud) {
            self.backlog.remove(pos);
            self.forget_read(key);
            self.ops.remove(key);
            return;
        }
        let Some(slot) = self.ops.get_mut(key) else {
            return;
        };
        match slot.life {
            Lifecycle::Done { .. } => {
                self.ops.remove(key);
            }
            Lifecycle::Waiting(_) if slot.grouped => {
                // Part of a vectored write: freed when that completes (disk I/O does).
                slot.life = Lifecycle::Orphaned;
            }
            Lifecycle::Waiting(_) => {
                slot.life = Lifecycle::Orphaned;
                // Ask the kernel to finish it early (sockets, timers); disk I/O just completes.
                let cancel = opcode::AsyncCancel::new(ud).build().user_data(TOKEN_CANCEL);
                self.push(cancel);
            }
            Lifecycle::Orphaned => {}
        }
    }

    /// Make sure a read on the wake-up eventfd is armed.
    fn arm_eventfd(&mut self) {
        if self.efd_armed {
            return;
        }
        let fd = self.shared.eventfd.as_raw_fd();
        let entry = opcode::Read::new(
            types::Fd(fd),
            std::ptr::from_mut(&mut *self.efd_buf).cast::<u8>(),
            8,
        )
        .build()
        .user_data(TOKEN_EVENTFD);
        self.efd_armed = true;
        self.push(entry);
    }

    /// Enter the kernel: submit the SQ and, if `wait`, block for at least one completion.
    fn enter(&mut self, wait: bool) -> io::Result<()> {
        let want = usize::from(wait);
        let queued = self.ring.submission().len();
        let r = if self.info.sqpoll {
            self.ring.submitter().submit_and_wait(want)
        } else {
            let to_submit = u32::try_from(queued).unwrap_or(u32::MAX);
            // SAFETY: no argument pointer is passed (None); GETEVENTS only runs task work and
            // reaps into the CQ ring, which we own.
            unsafe {
                self.ring.submitter().enter::<libc::sigset_t>(
                    to_submit,
                    u32::from(wait),
                    ENTER_GETEVENTS,
                    None,
                )
            }
        };
        self.stats.waits += u64::from(wait);
        match r {
            Ok(n) => {
                if !self.info.sqpoll && n > 0 {
                    self.stats.submit_enters += 1;
                    self.stats.submitted += u64::try_from(n).unwrap_or(0);
                } else if self.info.sqpoll && queued > 0 {
                    self.stats.submitted += u64::try_from(queued).unwrap_or(0);
                }
                Ok(())
            }
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EINTR) | Some(libc::EBUSY) | Some(libc::EAGAIN) | Some(libc::ETIME)
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// One I/O turn of the reactor loop: arm the eventfd, submit, optionally wait, reap.
    /// Returns true if the eventfd fired (remote wake-ups may be queued).
    pub(crate) fn turn(&mut self, wait: bool) -> io::Result<bool> {
        self.arm_eventfd();
        self.flush_staged(false);
        self.drain_backlog();
        // Nothing to submit and nothing but the eventfd read in flight: no completion can be
        // pending except a wake-up, which the caller's queues already reflect; skip the syscall.
        let idle_ring = self.ring.submission().is_empty()
            && self.in_flight <= usize::from(self.efd_armed)
            && self.ring.completion().is_empty();
        if wait || !idle_ring {
            self.enter(wait)?;
        }
        let (fired, released) = self.reap();
        self.drain_backlog();
        if released > 0 && !self.info.sqpoll && !self.ring.submission().is_empty() {
            // Reads the window held go to the device now, before the tasks this reap woke
            // (the replies of the reads that completed) run: see `rwin`.
            self.enter(false)?;
        }
        Ok(fired)
    }

    /// Reap all available CQEs, then push the reads the read window held that now have room.
    /// Returns whether the eventfd read completed and how many held reads were pushed.
    fn reap(&mut self) -> (bool, usize) {
        let mut fired = false;
        let mut groups: Vec<(usize, i32)> = Vec::new();
        let mut cq = self.ring.completion();
        cq.sync();
        for cqe in &mut cq {
            self.in_flight = self.in_flight.saturating_sub(1);
            self.stats.reaped += 1;
            let ud = cqe.user_data();
            if ud == TOKEN_EVENTFD {
                self.efd_armed = false;
                fired = true;
                continue;
            }
            if ud == wagg::TOKEN_DEFER {
                self.wagg.timer_fired();
                continue;
            }
            if ud >= RESERVED_MIN || ud == 0 {
                continue;
            }
            if let Some(g) = wagg::group_of(ud) {
                // Completed after the loop: a failed one pushes SQEs, which needs the ring.
                groups.push((g, cqe.result()));
                continue;
            }
            let Ok(key) = usize::try_from(ud - 1) else {
                continue;
            };
            if let Some(slot) = self.ops.get(key) {
                if let Some(fd) = slot.write_fd {
                    self.wagg.write_done(fd);
                }
                if let Some(fd) = slot.read_fd {
                    self.rwin.done(fd);
                }
                if slot.read {
                    self.reads_in_flight = self.reads_in_flight.saturating_sub(1);
                }
            }
            complete_slot(&mut self.ops, key, cqe.result(), cqe.flags());
        }
        drop(cq);
        for (g, res) in groups {
            self.complete_group(g, res);
        }
        let released = if self.rwin.has_held() {
            self.release_held_reads()
        } else {
            0
        };
        if fired {
            // Clear before the reactor drains its remote queue, so a wake that races with the
            // drain signals again (see Shared::signal).
            self.shared
                .signal_pending
                .store(false, std::sync::atomic::Ordering::SeqCst);
        }
        (fired, released)
    }

    /// Cancel everything and wait (bounded) until the kernel has released every resource.
    pub(crate) fn quiesce(&mut self) -> bool {
        self.backlog.clear();
        self.wagg.clear_staged();
        self.rwin.clear_held();
        // Entries already pushed but never submitted are submitted by the next enter and then
        // cancelled/complete normally; count is in `in_flight`.
        let any = opcode::AsyncCancel2::new(types::CancelBuilder::any())
            .build()
            .user_data(TOKEN_CANCEL);
        let _ = self.try_push_sq(any);
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut last_cancel = Instant::now();
        while self.in_flight > 0 {
            if Instant::now() > deadline {
                return false;
            }
            if self.enter(true).is_err() {
                return false;
            }
            self.reap();
            if self.in_flight > 0 && last_cancel.elapsed() > Duration::from_millis(100) {
                let any = opcode::AsyncCancel2::new(types::CancelBuilder::any())
                    .build()
                    .user_data(TOKEN_CANCEL);
                let _ = self.try_push_sq(any);
                last_cancel = Instant::now();
            }
        }
        true
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        if self.in_flight > 0 && !self.quiesce() {
            // The kernel may still write into these buffers: leak them rather than free memory
            // that is still in use.
            tracing::error!(
                in_flight = self.in_flight,
                "io_uring ops did not complete at reactor exit; leaking their buffers"
            );
            let ops = std::mem::take(&mut self.ops);
            std::mem::forget(ops);
            self.wagg.leak();
            let efd = std::mem::replace(&mut self.efd_buf, Box::new(0));
            std::mem::forget(efd);
        }
    }
}

/// Records the completion of slot `key` and wakes its future (or frees an orphan's slot).
fn complete_slot(ops: &mut Slab<Slot>, key: usize, res: i32, flags: u32) {
    let orphaned = match ops.get_mut(key) {
        Some(slot) => match &mut slot.life {
            Lifecycle::Waiting(w) => {
                let w = w.take();
                slot.life = Lifecycle::Done { res, flags };
                if let Some(w) = w {
                    w.wake();
                }
                false
            }
            Lifecycle::Orphaned => true,
            Lifecycle::Done { .. } => false,
        },
        None => false,
    };
    if orphaned {
        // The kernel is done with the resources: release them now.
        drop(ops.remove(key));
    }
}

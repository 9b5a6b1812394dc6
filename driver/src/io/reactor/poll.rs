//! Polling the ring from user space before sleeping ([`super::ReactorConfig::read_spin`],
//! [`super::ReactorConfig::spin`]).
//!
//! Why: on the test VM (perf/results/README-nbd.md, "QD1 on this VM") a reactor that sleeps
//! in `io_uring_enter` for a device read pays a context switch and the wake-up of a halted
//! vCPU when the read completes (estimated at ~20 us of a ~90 us request at queue depth 1). While one read
//! is in flight and nothing else is runnable, the reactor can instead watch the ring: with
//! DEFER_TASKRUN and TASKRUN_FLAG the kernel raises `IORING_SQ_TASKRUN` in the shared SQ
//! flags when the read's completion work is queued, so a look costs no syscall, and the
//! reactor then collects the completion with one non-blocking enter.
//!
//! What it does there (fio QD1 over NBD, the read's submission to its CQE, p50, one 0.5 s
//! trace each): 47 us polling, 51 us sleeping with the client on the other vCPU, 77 us
//! sleeping with the client on the reactor's vCPU (the woken reactor then waits for the
//! client's CPU). What it costs: the CPU of the wait, and the placement of the client, which
//! the scheduler keeps off the polling reactor's busier vCPU: every request then crosses
//! vCPUs twice, and QD1 p50 came out worse unless the client was pinned to the reactor's CPU.
//! Hence off by default.
//!
//! Bounded and cheap to lose: a poll lasts at most its limit, and gives up at once when the
//! thread finds itself descheduled (a gap between two looks at the ring); the reactor then
//! sleeps at once before every completion for [`super::ReactorConfig::poll_backoff`]:
//! another thread wants the CPU, and under CFS a thread that keeps a CPU busy ends up
//! waiting a whole time slice. Preemptions outside the poll do not count: the client woken
//! by a reply preempts the reactor on its own CPU after every request at queue depth 1 (a
//! backoff after any involuntary context switch, as branch `lat-poll` had, kept the poll off
//! for good whenever the client ran on the reactor's CPU).
//!
//! The rule that keeps it from hanging: the loop may block in the ring only if, after the
//! last reap, no task is runnable, the root future was not woken and no work was shipped in
//! (`Core::has_work`). The poll's first ring turn submits the read and reaps what is there:
//! a read served from the page cache completes inside it, and so does a device read that
//! completed while the thread was preempted in it. Branch `lat-poll` decided after that turn
//! that the thread had been preempted and told the loop to block without looking at what the
//! turn had woken: the reactor slept with the reader runnable and nothing left in flight to
//! wake it (its hangs in nbd-ab; the test `a_preempted_poll_never_sleeps_with_a_task_runnable`
//! in driver/tests/io_poll.rs hung the same way). Now nothing returns from the poll after
//! that turn without looking for work first.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::Core;
use crate::io::error::{IoError, OpKind};

/// Two looks at the ring this far apart mean the thread lost its CPU between them for longer
/// than a poll is worth (preempted, or its vCPU taken by the host). A look takes well under a
/// microsecond, but interrupts are slow on the test VM: a thread spinning for 2 s on a vCPU
/// (load ~2) saw ~375 gaps of 20-100 us a second (the timer tick under nested virtualization),
/// ~10 of 100-500 us, and 8 involuntary context switches in all (gaps of ms). A threshold
/// below those interrupts kept the poll backed off nearly all the time.
const DESCHEDULED_GAP: Duration = Duration::from_micros(200);

/// When a reactor may poll again.
#[derive(Debug, Default)]
pub(super) struct PollState {
    /// No polling until then (a poll was descheduled).
    backoff_until: Cell<Option<Instant>>,
}

impl Core {
    /// How long the loop may poll the ring before it sleeps now, if at all: `cfg.read_spin`
    /// while at least one and at most `cfg.read_spin_max` positioned reads are in flight,
    /// else `cfg.spin` while any operation is (the next request of a client); never within
    /// `cfg.poll_backoff` of a preemption, never in [`super::block_on`].
    pub(super) fn poll_limit(&self) -> Option<Duration> {
        self.index?;
        if self.cfg.read_spin.is_zero() && self.cfg.spin.is_zero() {
            return None;
        }
        let limit = {
            let d = self.driver.borrow();
            let reads = d.reads_in_flight();
            if reads > 0 && reads <= self.cfg.read_spin_max {
                self.cfg.read_spin.max(self.cfg.spin)
            } else if d.busy() {
                self.cfg.spin
            } else {
                Duration::ZERO
            }
        };
        if limit.is_zero() {
            return None;
        }
        match self.poll.backoff_until.get() {
            Some(t) if Instant::now() < t => None,
            _ => Some(limit),
        }
    }

    /// Submits what is queued, then watches the ring from user space for up to `limit`
    /// until a completion is pending, a task is runnable, the root future was woken or
    /// another thread signalled; the loop's next (non-blocking) turn collects it. Returns
    /// whether the loop may block (nothing turned up). Called only when the loop found no
    /// work (`!Core::has_work()`).
    pub(super) fn poll_ring(self: &Rc<Self>, limit: Duration) -> Result<bool, IoError> {
        let watch = !self.cfg.poll_backoff.is_zero();
        // The read waited for was usually made in this loop iteration: submit it.
        if let Err(e) = self.driver.borrow_mut().turn(false) {
            return Err(IoError::from_std(OpKind::Other, &e));
        }
        // That turn may have completed operations (a read from the page cache, a read that
        // completed while the thread was preempted in the turn) and reaped the wake-up read,
        // clearing `signal_pending` (work shipped before it is only in the queues now).
        if self.has_work() {
            return Ok(false);
        }
        let start = Instant::now();
        let mut last = start;
        loop {
            // The time before the look: a gap that ends with the completion (its interrupt
            // took the CPU) is not a reason to stop polling.
            let now = Instant::now();
            if !self.exec.is_idle()
                || self.shared.main_woken.load(Ordering::SeqCst)
                || self.shared.signal_pending.load(Ordering::SeqCst)
                || self.driver.borrow_mut().completion_pending()
            {
                return Ok(false);
            }
            if watch && now.duration_since(last) >= DESCHEDULED_GAP {
                // Descheduled while polling: sleep instead, and stop polling for a while.
                self.back_off();
                return Ok(true);
            }
            if now.duration_since(start) >= limit {
                return Ok(true);
            }
            last = now;
            std::hint::spin_loop();
        }
    }

    fn back_off(&self) {
        self.poll
            .backoff_until
            .set(Some(Instant::now() + self.cfg.poll_backoff));
    }
}

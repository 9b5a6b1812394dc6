//! Write gathering: small WRITE requests (without FUA) that arrive while earlier ones are still
//! being written are handed to the backend several at a time
//! ([`ExportBackend::write_batch`](super::super::backend::ExportBackend::write_batch)), so a
//! copy-on-write backend can store a whole batch with one device write.
//!
//! No request waits for company: the first write of an idle connection starts a gather task
//! at once, and a few tasks ([`MAX_TASKS`]) may write at the same time. Whatever arrives while
//! they are busy queues up and is taken by the next task that looks, so batches grow with the
//! client's queue depth and stay single writes at queue depth 1. Every request keeps its own
//! reply and its own result.
//! With write-back on ([`NbdServerConfig::write_back`](super::super::NbdServerConfig::write_back))
//! a batch goes to
//! [`ExportBackend::write_batch_back`](super::super::backend::ExportBackend::write_batch_back)
//! (a lone write to `write_back`), so its replies may go out before its device write.
//!
//! A burst is shared out, not swallowed whole: a task takes only its share of what is pending
//! (split over itself and the tasks that may still start) and starts the next task for the
//! rest. A client that pipelines in bursts (it sends everything queued in one go, as
//! ringperf's batched client and the kernel's do) otherwise had its 32 writes written as one
//! batch, all 32 replies then came back together, and the next burst waited for them: one
//! batch in flight instead of [`MAX_TASKS`], 0.75x the IOPS of the same client sending one
//! request per send (perf/README.md, `perf/compare-nbd-fio.sh`).

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;

use super::super::proto::Errno;
use super::Conn;
use crate::io::IoBuf;

/// WRITE payloads up to this size are gathered; larger ones are written on their own (they
/// already make a large device write, straight from their buffer).
pub(super) const GATHER_MAX_WRITE: usize = 64 * 1024;
/// Gather tasks writing at the same time per connection.
const MAX_TASKS: usize = 4;
/// Most writes in one batch.
const MAX_BATCH: usize = 64;
/// Most payload bytes in one batch.
const MAX_BATCH_BYTES: usize = 1 << 20;

/// A received WRITE waiting for a gather task.
pub(super) struct PendingWrite {
    pub(super) cookie: u64,
    /// The request's offset as the client sent it (for the reply).
    pub(super) roff: u64,
    pub(super) offset: u64,
    pub(super) data: IoBuf,
    pub(super) credit: u64,
}

/// Per-connection gathering state.
#[derive(Default)]
pub(super) struct Gather {
    pending: RefCell<VecDeque<PendingWrite>>,
    /// Gather tasks alive.
    running: Cell<usize>,
    /// A task was spawned and has not taken its first batch yet (it will take this write).
    scheduled: Cell<bool>,
}

/// Queues a WRITE for gathering and makes sure a task will take it.
pub(super) fn push(conn: &Rc<Conn>, w: PendingWrite) {
    conn.gather.pending.borrow_mut().push_back(w);
    ensure_task(conn);
}

/// Starts a gather task unless one is already on its way or all [`MAX_TASKS`] are writing.
fn ensure_task(conn: &Rc<Conn>) {
    let g = &conn.gather;
    if !g.scheduled.get() && g.running.get() < MAX_TASKS {
        g.scheduled.set(true);
        g.running.set(g.running.get() + 1);
        crate::io::spawn_local(task(Rc::clone(conn)));
    }
}

/// How many of `pending` writes a task takes when `running` tasks are alive (itself
/// included): an equal share between itself and the tasks that may still start, so a burst
/// is written by several tasks at once. At least one, at most [`MAX_BATCH`].
fn share(pending: usize, running: usize) -> usize {
    let could_start = MAX_TASKS.saturating_sub(running);
    pending.div_ceil(could_start + 1).clamp(1, MAX_BATCH)
}

/// Takes the next batch: this task's [`share`] of the pending writes, at most
/// [`MAX_BATCH_BYTES`] (at least one write).
fn take(g: &Gather) -> Vec<PendingWrite> {
    let mut q = g.pending.borrow_mut();
    let cap = share(q.len(), g.running.get());
    let mut out = Vec::new();
    let mut bytes = 0;
    while let Some(w) = q.front() {
        if !out.is_empty() && (out.len() >= cap || bytes + w.data.len() > MAX_BATCH_BYTES) {
            break;
        }
        bytes += w.data.len();
        out.extend(q.pop_front());
    }
    out
}

/// A gather task: writes batches until nothing is pending.
async fn task(conn: Rc<Conn>) {
    let g = &conn.gather;
    g.scheduled.set(false);
    let backend = &conn.export.backend;
    // Write-back (as for WRITEs executed one by one, see `exec`): a batch is acknowledged
    // once ordered, so the client's next writes need not wait for this batch's device write.
    let back = conn.shared.cfg.write_back;
    loop {
        let mut batch = take(g);
        if !g.pending.borrow().is_empty() {
            // The rest of a burst: another task writes it alongside this batch.
            ensure_task(&conn);
        }
        if batch.len() == 1 {
            if let Some(w) = batch.pop() {
                let (r, _data) = if back {
                    backend.write_back(w.offset, w.data).await
                } else {
                    backend.write(w.offset, w.data, false).await
                };
                conn.queue_result(w.credit, w.cookie, w.roff, r);
            }
            continue;
        }
        if batch.is_empty() {
            g.running.set(g.running.get().saturating_sub(1));
            return;
        }
        let mut replies = Vec::with_capacity(batch.len());
        let mut writes = Vec::with_capacity(batch.len());
        for w in batch {
            replies.push((w.cookie, w.roff, w.credit));
            writes.push((w.offset, w.data));
        }
        let results = if back {
            backend.write_batch_back(writes).await
        } else {
            backend.write_batch(writes).await
        };
        let mut results = results.into_iter();
        for (cookie, roff, credit) in replies {
            match results.next() {
                Some((r, _data)) => conn.queue_result(credit, cookie, roff, r),
                // A backend that answered fewer writes than it was given.
                None => conn.queue_error(credit, cookie, roff, Errno::Io, "write not answered"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{share, MAX_BATCH, MAX_TASKS};

    #[test]
    fn a_burst_is_shared_between_the_tasks_that_may_run() {
        // One task alive and three more may start: a burst of 32 goes out as four batches.
        assert_eq!(share(32, 1), 8);
        assert_eq!(share(24, 2), 8);
        assert_eq!(share(16, 3), 8);
        assert_eq!(share(8, MAX_TASKS), 8);
        // Every task busy: the one that looks takes what is there, up to the batch limit.
        assert_eq!(share(500, MAX_TASKS), MAX_BATCH);
        assert_eq!(share(3, 1), 1);
        assert_eq!(share(0, 1), 1);
        assert_eq!(share(1, 1), 1);
    }
}

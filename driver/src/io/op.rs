//! The future of one ring operation.

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use io_uring::squeue;

use crate::io::error::IoError;
use crate::io::ops::FileRef;
use crate::io::reactor::{current_core, Completion, Core, OpData, WriteReq};

/// One submitted SQE. Resolves to its [`Completion`], which hands back the resources the op
/// lent to the kernel. Dropping it before completion orphans the slot: the reactor keeps the
/// resources until the CQE and asks the kernel to cancel.
pub(crate) struct Op {
    core: Rc<Core>,
    key: usize,
    done: bool,
}

impl Op {
    /// Submit `entry` (whose pointers reference memory owned by `data`) to the current reactor.
    ///
    /// The caller guarantees that every pointer in `entry` points into `data` (or to memory
    /// that outlives the op, such as the fd number).
    pub(crate) fn submit(entry: squeue::Entry, data: OpData) -> Result<Op, (IoError, OpData)> {
        let Some(core) = current_core() else {
            return Err((IoError::NotInReactor, data));
        };
        let key = core.driver.borrow_mut().submit(entry, data);
        Ok(Op {
            core,
            key,
            done: false,
        })
    }

    /// Submit a positioned read of `fd` (whose target memory is owned by `data`) to the current
    /// reactor, which holds it while its read window for `fd` is full.
    pub(crate) fn submit_read(
        entry: squeue::Entry,
        data: OpData,
        fd: FileRef,
        len: u32,
    ) -> Result<Op, (IoError, OpData)> {
        let Some(core) = current_core() else {
            return Err((IoError::NotInReactor, data));
        };
        let key = core.driver.borrow_mut().submit_read(entry, data, fd, len);
        Ok(Op {
            core,
            key,
            done: false,
        })
    }

    /// Submit a positioned write (whose memory is owned by `data`) to the current reactor,
    /// which may merge it with adjacent writes of the same turn (the future still resolves to
    /// this write's own completion).
    pub(crate) fn submit_write(req: WriteReq, data: OpData) -> Result<Op, (IoError, OpData)> {
        let Some(core) = current_core() else {
            return Err((IoError::NotInReactor, data));
        };
        let key = core.driver.borrow_mut().submit_write(req, data);
        Ok(Op {
            core,
            key,
            done: false,
        })
    }
}

impl Future for Op {
    type Output = Completion;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Completion> {
        let r = self.core.driver.borrow_mut().poll_op(self.key, cx);
        if r.is_ready() {
            self.done = true;
        }
        r
    }
}

impl Drop for Op {
    fn drop(&mut self) {
        if !self.done {
            match self.core.driver.try_borrow_mut() {
                Ok(mut d) => d.orphan(self.key),
                Err(_) => {
                    // Cannot happen (no driver borrow is held while futures are dropped); if
                    // it did, the slot would simply keep its resources forever, which is safe.
                    tracing::error!("Op dropped while the driver was borrowed; slot leaked");
                }
            }
        }
    }
}

/// Submit and await, resubmitting on EAGAIN/EINTR. `make` builds the SQE from the op's data
/// (called again for each retry, so pointers always refer to the data's current owner).
pub(crate) async fn run_op(
    make: impl FnMut(&mut OpData) -> squeue::Entry,
    data: OpData,
) -> (Result<i32, IoError>, OpData) {
    resubmitting(make, Op::submit, data).await
}

/// [`run_op`] for a positioned read of `len` bytes of `fd` (see [`Op::submit_read`]).
pub(crate) async fn run_read_op(
    make: impl FnMut(&mut OpData) -> squeue::Entry,
    fd: FileRef,
    len: u32,
    data: OpData,
) -> (Result<i32, IoError>, OpData) {
    resubmitting(make, |e, d| Op::submit_read(e, d, fd, len), data).await
}

/// [`run_op`] for a positioned write: `make` describes the write (see [`Op::submit_write`]).
pub(crate) async fn run_write_op(
    make: impl FnMut(&mut OpData) -> WriteReq,
    data: OpData,
) -> (Result<i32, IoError>, OpData) {
    resubmitting(make, Op::submit_write, data).await
}

/// The loop of [`run_op`] and [`run_write_op`]: describe the op with `make`, hand it to the
/// ring with `submit`, await it, and go round again on EAGAIN/EINTR.
async fn resubmitting<R>(
    mut make: impl FnMut(&mut OpData) -> R,
    submit: impl Fn(R, OpData) -> Result<Op, (IoError, OpData)>,
    mut data: OpData,
) -> (Result<i32, IoError>, OpData) {
    loop {
        let req = make(&mut data);
        let op = match submit(req, data) {
            Ok(op) => op,
            Err((e, d)) => return (Err(e), d),
        };
        let c = op.await;
        data = c.data;
        if c.res == -libc::EAGAIN || c.res == -libc::EINTR {
            continue;
        }
        return (Ok(c.res), data);
    }
}

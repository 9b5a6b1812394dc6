//! The send side of a connection: the reply queue the request tasks fill and the writer task
//! that empties it.
//!
//! Replies up to [`INLINE_REPLY_MAX`] bytes (headers, errors, small reads) are appended to one
//! batch buffer that goes out in a single send (full batches are set aside and go out together
//! in one vectored send); larger reads are sent straight from the buffer the backend read into
//! (the reply header sits in the page before the data). Every reply releases its request's
//! credit once it is sent (or dropped on a broken connection).

use std::collections::VecDeque;
use std::ops::Range;
use std::rc::Rc;

use super::super::backend::BackendError;
use super::super::proto::Errno;
use super::super::reply;
use super::Conn;
use crate::io::IoBuf;

/// Capacity of one send batch of small replies.
const SEND_BATCH: usize = 64 * 1024;
/// Replies up to this size are copied into the send batch; larger ones are sent zero-copy.
pub(super) const INLINE_REPLY_MAX: usize = 16 * 1024;

/// A large reply sent straight from its buffer.
pub(super) struct DataItem {
    buf: IoBuf,
    range: Range<usize>,
    credit: u64,
}

pub(super) struct OutQueue {
    /// Batched small replies.
    pub(super) small: IoBuf,
    /// Earlier batches that filled up (sent before `small`, in one vectored send).
    pub(super) full: Vec<IoBuf>,
    pub(super) small_credit: u64,
    pub(super) small_reqs: usize,
    pub(super) data: VecDeque<DataItem>,
}

impl OutQueue {
    pub(super) fn new() -> OutQueue {
        OutQueue {
            small: IoBuf::with_capacity(SEND_BATCH),
            full: Vec::new(),
            small_credit: 0,
            small_reqs: 0,
            data: VecDeque::new(),
        }
    }
}

impl Conn {
    pub(super) fn charge(&self, credit: u64) {
        self.inflight_bytes.set(self.inflight_bytes.get() + credit);
        self.inflight_reqs.set(self.inflight_reqs.get() + 1);
    }

    pub(super) fn release(&self, credit: u64, reqs: usize) {
        self.inflight_bytes
            .set(self.inflight_bytes.get().saturating_sub(credit));
        self.inflight_reqs
            .set(self.inflight_reqs.get().saturating_sub(reqs));
        self.space.notify_one();
    }

    /// Queues a small reply built by `f` (which appends to a scratch vector).
    pub(super) fn queue_small(&self, credit: u64, f: impl FnOnce(&mut Vec<u8>)) {
        if self.broken.get() {
            self.release(credit, 1);
            return;
        }
        let mut scratch = self.scratch.borrow_mut();
        scratch.clear();
        f(&mut scratch);
        self.queue_parts(credit, &[&scratch]);
    }

    /// Queues a small reply made of `parts` (e.g. a read header and its data), copied once
    /// into the send batch. A batch that is full is set aside whole (sent with the next ones
    /// in one vectored send) instead of being grown and copied.
    pub(super) fn queue_parts(&self, credit: u64, parts: &[&[u8]]) {
        if self.broken.get() {
            self.release(credit, 1);
            return;
        }
        let need: usize = parts.iter().map(|p| p.len()).sum();
        let mut q = self.out.borrow_mut();
        if q.small.len() + need > q.small.capacity() {
            let cap = need.max(SEND_BATCH);
            let fresh = crate::io::buf::alloc(cap);
            let mut fresh = fresh;
            fresh.clear();
            let old = std::mem::replace(&mut q.small, fresh);
            if !old.is_empty() {
                q.full.push(old);
            }
        }
        for p in parts {
            let ok = q.small.extend_from_slice(p);
            debug_assert!(ok, "send batch sized for the reply");
        }
        q.small_credit += credit;
        q.small_reqs += 1;
        drop(q);
        self.writer_wake.notify_one();
    }

    pub(super) fn queue_data(&self, credit: u64, buf: IoBuf, range: Range<usize>) {
        if self.broken.get() {
            self.release(credit, 1);
            return;
        }
        self.out
            .borrow_mut()
            .data
            .push_back(DataItem { buf, range, credit });
        self.writer_wake.notify_one();
    }

    pub(super) fn queue_error(
        &self,
        credit: u64,
        cookie: u64,
        offset: u64,
        errno: Errno,
        msg: &str,
    ) {
        let mode = self.mode;
        self.queue_small(credit, |v| {
            reply::error(v, mode, cookie, offset, errno, msg)
        });
    }

    pub(super) fn queue_result(
        &self,
        credit: u64,
        cookie: u64,
        offset: u64,
        r: Result<(), BackendError>,
    ) {
        match r {
            Ok(()) => {
                let mode = self.mode;
                self.queue_small(credit, |v| reply::success(v, mode, cookie, offset));
            }
            Err(e) => self.queue_error(credit, cookie, offset, e.errno, &e.message),
        }
    }
}

/// The writer task: sends batched small replies and large data replies until the connection
/// closes and every reply is out.
pub(super) async fn writer(conn: Rc<Conn>) {
    let mut spare: Option<IoBuf> = None;
    loop {
        let taken = {
            let mut q = conn.out.borrow_mut();
            if q.small.is_empty() && q.full.is_empty() && q.data.is_empty() {
                None
            } else {
                let fresh = spare.take().unwrap_or_else(|| {
                    let mut b = crate::io::buf::alloc(SEND_BATCH);
                    b.clear();
                    b
                });
                let last = std::mem::replace(&mut q.small, fresh);
                let mut batches = std::mem::take(&mut q.full);
                if !last.is_empty() {
                    batches.push(last);
                }
                let c = std::mem::take(&mut q.small_credit);
                let r = std::mem::take(&mut q.small_reqs);
                Some((batches, c, r, std::mem::take(&mut q.data)))
            }
        };
        let Some((mut batches, credit, reqs, data)) = taken else {
            if conn.closing.get() && conn.inflight_reqs.get() == 0 {
                return;
            }
            conn.writer_wake.notified().await;
            continue;
        };
        if !batches.is_empty() && !conn.broken.get() {
            let r = if batches.len() == 1 {
                let (r, b) = conn.stream.send_all(batches.remove(0)).await;
                batches.push(b);
                r
            } else {
                let (r, b) = conn.stream.send_all_vectored(batches).await;
                batches = b;
                r
            };
            if let Err(e) = r {
                tracing::debug!(conn = conn.id, error = %e, "send failed");
                conn.broken.set(true);
            }
        }
        if reqs > 0 {
            conn.release(credit, reqs);
        }
        // Keep one ordinary batch buffer for reuse (not one grown for a huge reply).
        if let Some(mut b) = batches.pop() {
            if b.capacity() == SEND_BATCH {
                b.clear();
                spare = Some(b);
            }
        }
        for item in data {
            if !conn.broken.get() {
                let mut buf = item.buf;
                let mut at = item.range.start;
                while at < item.range.end {
                    let (r, b) = conn.stream.send_range(buf, at..item.range.end).await;
                    buf = b;
                    match r {
                        Ok(n) if n > 0 => at += n,
                        Ok(_) => {
                            conn.broken.set(true);
                            break;
                        }
                        Err(e) => {
                            tracing::debug!(conn = conn.id, error = %e, "send failed");
                            conn.broken.set(true);
                            break;
                        }
                    }
                }
            }
            conn.release(item.credit, 1);
        }
    }
}

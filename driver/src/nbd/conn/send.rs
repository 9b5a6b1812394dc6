//! The send side of a connection: the reply queue the request tasks fill and the writer task
//! that empties it.
//!
//! Replies up to [`INLINE_REPLY_MAX`] bytes (headers, errors, reads of less than a page) are
//! appended to one batch buffer that goes out in a single send (full batches are set aside and
//! go out together in one vectored send); reads of a page or more are sent straight from the
//! buffer the backend read into (the reply header sits in the page before the data). Whatever
//! is queued when the writer runs goes out in one vectored send, and a send carrying large
//! replies (over [`INLINE_REPLY_MAX`]) is made by a kernel io-wq worker on another core
//! ([`NbdServerConfig::offload_min`](super::super::NbdServerConfig::offload_min)). Every reply
//! releases its request's credit once it is sent (or dropped on a broken connection).
//!
//! **Early flush** (off by default, see
//! [`NbdServerConfig::reply_flush`](super::super::NbdServerConfig::reply_flush)): when a burst of
//! completions arrives (a virtio disk completes a whole queue of reads at once), the request
//! tasks all run before the writer, so the first reply waits until the last one is built and
//! the client (which resubmits as soon as it has replies) waits meanwhile. With
//! `reply_flush = N`, once N replies are queued and no send is in flight, the request task that
//! queued the last of them sends the batch itself and submits the send at once
//! ([`crate::io::submit_now`]). One send is in flight per connection at any time
//! (`Conn::sending`), whoever makes it, so replies never interleave on the socket.

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
/// Most buffers handed to one vectored send (Linux's IOV_MAX is 1024).
const SEND_IOVECS: usize = 256;
/// Replies up to this size may be copied into the send batch (READ replies only up to
/// `exec::DEFAULT_INLINE_READ_MAX`); larger ones are sent zero-copy, and count towards
/// [`NbdServerConfig::offload_min`](super::super::NbdServerConfig::offload_min).
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
    /// Page-sized read replies (up to [`INLINE_REPLY_MAX`]) sent from their read buffers: they
    /// go out with the small replies, early flushes included.
    pub(super) page_data: Vec<DataItem>,
    /// An emptied batch buffer kept for reuse.
    spare: Option<IoBuf>,
}

impl OutQueue {
    pub(super) fn new() -> OutQueue {
        OutQueue {
            small: IoBuf::with_capacity(SEND_BATCH),
            full: Vec::new(),
            small_credit: 0,
            small_reqs: 0,
            data: VecDeque::new(),
            page_data: Vec::new(),
            spare: None,
        }
    }
}

/// What one send pass takes out of the queue.
struct Taken {
    batches: Vec<IoBuf>,
    credit: u64,
    reqs: usize,
    data: VecDeque<DataItem>,
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
        let mut q = self.out.borrow_mut();
        let item = DataItem { buf, range, credit };
        if item.range.len() <= INLINE_REPLY_MAX {
            q.page_data.push(item);
        } else {
            q.data.push_back(item);
        }
        drop(q);
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

impl Conn {
    /// Takes the batched small replies and the page-sized read replies (and, with `with_data`,
    /// the large ones) out of the queue; `None` if there is nothing to send.
    fn take_out(&self, with_data: bool) -> Option<Taken> {
        let mut q = self.out.borrow_mut();
        let data_waits = with_data && !q.data.is_empty();
        if q.small.is_empty() && q.full.is_empty() && q.page_data.is_empty() && !data_waits {
            return None;
        }
        let mut batches = std::mem::take(&mut q.full);
        if !q.small.is_empty() {
            let fresh = q.spare.take().unwrap_or_else(|| {
                let mut b = crate::io::buf::alloc(SEND_BATCH);
                b.clear();
                b
            });
            batches.push(std::mem::replace(&mut q.small, fresh));
        }
        let mut data: VecDeque<DataItem> = q.page_data.drain(..).collect();
        if with_data {
            data.append(&mut q.data);
        }
        Some(Taken {
            batches,
            credit: std::mem::take(&mut q.small_credit),
            reqs: std::mem::take(&mut q.small_reqs),
            data,
        })
    }

    /// Whether a send carrying `len` bytes of large read replies (longer than
    /// [`INLINE_REPLY_MAX`] each) goes to a kernel worker
    /// ([`NbdServerConfig::offload_min`](super::super::NbdServerConfig::offload_min)). Sends
    /// of small replies only (however many) stay on the reactor: their cost is the client's
    /// wake-up, which a worker would only trade for its own.
    fn offloads(&self, len: usize) -> bool {
        let min = self.shared.cfg.offload_min;
        min > 0 && len >= min
    }

    /// Sends what [`Conn::take_out`] took (nothing on a broken connection) and releases its
    /// credit. The caller holds `sending`. The batches of small replies and the large replies
    /// go out together, in order, with one vectored send (a few when there are very many):
    /// one ring op and one wake-up of the client for everything queued.
    async fn send_taken(&self, t: Taken) {
        let Taken {
            batches,
            credit,
            reqs,
            data,
        } = t;
        let n_batches = batches.len();
        let mut bufs: Vec<IoBuf> = batches;
        let mut ranges: Vec<Range<usize>> = bufs.iter().map(|b| 0..b.len()).collect();
        let mut credits: Vec<u64> = Vec::with_capacity(data.len());
        for item in data {
            bufs.push(item.buf);
            ranges.push(item.range);
            credits.push(item.credit);
        }
        let mut sent: Vec<IoBuf> = Vec::with_capacity(bufs.len());
        let mut pending_ranges = ranges.into_iter();
        let mut pending_bufs = bufs.into_iter();
        loop {
            let part_bufs: Vec<IoBuf> = pending_bufs.by_ref().take(SEND_IOVECS).collect();
            if part_bufs.is_empty() {
                break;
            }
            let part_ranges: Vec<Range<usize>> =
                pending_ranges.by_ref().take(part_bufs.len()).collect();
            if self.broken.get() {
                sent.extend(part_bufs);
                continue;
            }
            let skip = n_batches.saturating_sub(sent.len());
            let offload = self.offloads(large_reply_bytes(&part_ranges, skip));
            let (r, b) = self
                .stream
                .send_all_ranges(part_bufs, part_ranges, offload)
                .await;
            sent.extend(b);
            if let Err(e) = r {
                tracing::debug!(conn = self.id, error = %e, "send failed");
                self.broken.set(true);
            }
        }
        if reqs > 0 {
            self.release(credit, reqs);
        }
        for c in credits {
            self.release(c, 1);
        }
        // Keep one ordinary batch buffer for reuse (not one grown for a huge reply).
        sent.truncate(n_batches);
        if let Some(mut b) = sent.pop() {
            let mut q = self.out.borrow_mut();
            if b.capacity() == SEND_BATCH && q.spare.is_none() {
                b.clear();
                q.spare = Some(b);
            }
        }
    }

    /// Called by a request task after queueing its reply: with `Conn::reply_flush` or more
    /// small replies (page-sized reads included) queued and no send in flight, sends them now
    /// from this task instead of leaving them to the writer, which runs only after every task
    /// already woken (see the module docs). Large replies stay with the writer.
    pub(super) async fn flush_early(&self) {
        if self.reply_flush == 0 || self.sending.get() || self.broken.get() {
            return;
        }
        let queued = {
            let q = self.out.borrow();
            q.small_reqs + q.page_data.len()
        };
        if queued < self.reply_flush {
            return;
        }
        let Some(t) = self.take_out(false) else {
            return;
        };
        self.sending.set(true);
        self.shared
            .early_flushes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        submit_at_once(self.send_taken(t)).await;
        self.sending.set(false);
        // Replies queued meanwhile went to the writer, which waits for this send to end.
        self.writer_wake.notify_one();
    }
}

/// Bytes of large replies (longer than [`INLINE_REPLY_MAX`]) among the ranges of one send, of
/// which the first `batches` are batches of small replies. Only large replies count towards
/// the offload: many page-sized ones (4 KiB random reads) go out from the reactor, where the
/// send is made at once; handed to a worker, its wake-up delayed every reply of the batch
/// (0.91x the IOPS at 4k randread QD32 on the 2-vCPU test box).
fn large_reply_bytes(ranges: &[Range<usize>], batches: usize) -> usize {
    ranges
        .iter()
        .skip(batches)
        .map(|r| r.len())
        .filter(|&l| l > INLINE_REPLY_MAX)
        .sum()
}

/// Polls `f`; if its first poll leaves an operation queued on the ring, submits it at once.
async fn submit_at_once<F: std::future::Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let mut first = true;
    std::future::poll_fn(|cx| {
        let r = f.as_mut().poll(cx);
        if r.is_pending() && std::mem::take(&mut first) {
            crate::io::submit_now();
        }
        r
    })
    .await
}

/// The writer task: sends batched small replies and large data replies until the connection
/// closes and every reply is out.
pub(super) async fn writer(conn: Rc<Conn>) {
    loop {
        let taken = if conn.sending.get() {
            // An early flush is sending: it wakes us when it is done.
            None
        } else {
            conn.take_out(true)
        };
        let Some(t) = taken else {
            if !conn.sending.get() && conn.closing.get() && conn.inflight_reqs.get() == 0 {
                return;
            }
            conn.writer_wake.notified().await;
            continue;
        };
        conn.sending.set(true);
        conn.send_taken(t).await;
        conn.sending.set(false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_large_replies_count_towards_the_offload() {
        let page = 4096 - 16..8192;
        let large = 4096 - 16..4096 + 128 * 1024;
        // Batches of small replies never count, however long.
        assert_eq!(large_reply_bytes(&[0..SEND_BATCH, 0..SEND_BATCH], 2), 0);
        // 32 page-sized replies: 128 KiB of data, none of it large.
        let pages: Vec<Range<usize>> = (0..32).map(|_| page.clone()).collect();
        assert_eq!(large_reply_bytes(&pages, 0), 0);
        // A batch, page-sized replies and large ones: the large ones only.
        let mixed = [0..100, page.clone(), large.clone(), page, large.clone()];
        assert_eq!(large_reply_bytes(&mixed, 1), 2 * large.len());
        // A part of a send that starts past the batches counts from its first range.
        assert_eq!(large_reply_bytes(&mixed[2..], 0), 2 * large.len());
        // Just over the inline limit counts.
        let edge = 0..INLINE_REPLY_MAX + 1;
        assert_eq!(large_reply_bytes(&[edge], 0), INLINE_REPLY_MAX + 1);
    }
}

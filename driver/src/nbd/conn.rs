//! One NBD connection on its reactor: handshake, then the transmission loop.
//!
//! * The **reader** (the connection task) parses request headers out of a large receive
//!   buffer, receives WRITE payloads straight into an [`IoBuf`] that goes to the backend, and
//!   spawns one local task per request, so many requests are in flight and complete in any
//!   order.
//! * Request tasks queue their reply with the **writer** task: replies up to
//!   [`INLINE_REPLY_MAX`] bytes (headers, errors, small reads) are appended to one batch buffer
//!   that goes out in a single send; larger reads are sent straight from the buffer the backend
//!   read into (the reply header sits in the page before the data).
//! * **Bounded memory**: every request holds a credit (its payload or read length) until its
//!   reply is sent; the reader stops reading while the connection is over
//!   `max_inflight_bytes`/`max_inflight_requests`, so a client that does not read its
//!   replies gets TCP back-pressure, not server memory growth.
//! * **Ending**: DISC, EOF, a framing error or a server shutdown stop the reader; requests
//!   already received complete and their replies are sent, then the socket closes. A WRITE whose
//!   payload did not fully arrive is never applied.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::ops::Range;
use std::rc::Rc;
use std::sync::Arc;

use super::backend::{BackendError, ReadLayout};
use super::exports::{Catalog, ExportHandle};
use super::handshake::{Handshake, Negotiated, Step};
use super::proto::{self, Errno};
use super::reply::{self, Extent, ReplyMode};
use super::request::{Command, Request, RequestDecoder};
use super::server::Shared;
use super::NbdError;
use crate::io::net::Stream;
use crate::io::IoBuf;
use crate::io::Notify;

/// Size of the receive buffer (headers and small payloads are parsed out of it).
const RECV_BUF: usize = 256 * 1024;
/// Most bytes asked of one receive into the buffer. A smaller window would let more of a
/// large WRITE payload arrive straight in its own buffer, but each extra receive is a ring
/// round trip: on the 2-vCPU test box a 32 KiB window made 128 KiB writes slower (QD1 p50
/// 241 us against 179 us) than copying out of a full-size receive.
const RECV_WINDOW: usize = RECV_BUF;
/// WRITE payloads larger than this are received straight into their own buffer once the
/// receive buffer is exhausted; smaller ones always pass through the receive buffer.
const DIRECT_PAYLOAD_MIN: usize = 64 * 1024;
/// Capacity of one send batch of small replies.
const SEND_BATCH: usize = 64 * 1024;
/// Replies up to this size are copied into the send batch; larger ones are sent zero-copy.
pub const INLINE_REPLY_MAX: usize = 16 * 1024;
/// Read data starts at this (page-aligned) offset of a large reply buffer; the header sits
/// just before it.
const DATA_OFFSET: usize = 4096;
/// Credit charged for a request beyond its data (reply header, bookkeeping).
const REQUEST_OVERHEAD: u64 = 64;
/// SO_SNDBUF asked for a connection in transmission (the kernel caps it at
/// `net.core.wmem_max`). The default (about 208 KiB) holds less than two 128 KiB read replies:
/// with more queued, a send would wait (poll and retry through the ring) until the client has
/// drained the socket, instead of handing the whole reply to the kernel at once.
const SEND_BUFFER: usize = 4 << 20;

/// The receive side: a buffer with unparsed bytes in `start..end`.
struct RecvBuf {
    buf: Option<IoBuf>,
    start: usize,
    end: usize,
}

impl RecvBuf {
    fn new() -> RecvBuf {
        RecvBuf {
            buf: Some(IoBuf::with_capacity(RECV_BUF)),
            start: 0,
            end: 0,
        }
    }

    fn buffered(&self) -> usize {
        self.end - self.start
    }

    /// Ensures at least `n` (<= RECV_BUF) bytes are buffered. `Ok(false)`: clean EOF before
    /// any byte of them arrived; EOF in the middle is an error.
    async fn fill(&mut self, stream: &Stream, n: usize) -> Result<bool, NbdError> {
        let mut buf = self.buf.take().ok_or(NbdError::Closed)?;
        if buf.capacity() - self.start < n {
            // Compact: move the unparsed tail to the front.
            buf.spare_and_all_mut().copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let cap = buf.capacity();
        let mut result = Ok(true);
        while self.end - self.start < n {
            let want = (n - (self.end - self.start)).max(RECV_WINDOW);
            let stop = cap.min(self.end + want);
            let (r, b) = stream.recv_into(buf, self.end..stop).await;
            buf = b;
            match r {
                Ok(0) if self.end == self.start => {
                    result = Ok(false);
                    break;
                }
                Ok(0) => {
                    result = Err(NbdError::Truncated);
                    break;
                }
                Ok(k) => self.end += k,
                Err(e) => {
                    result = Err(NbdError::Io(e));
                    break;
                }
            }
        }
        self.buf = Some(buf);
        result
    }

    /// Takes `n` buffered bytes (callers ensured they are there).
    fn take(&mut self, n: usize) -> &[u8] {
        let s = self.start;
        let n = n.min(self.buffered());
        self.start += n;
        match &self.buf {
            Some(b) => &b.as_full_slice()[s..s + n],
            None => &[],
        }
    }

    /// Reads and drops `n` bytes.
    async fn discard(&mut self, stream: &Stream, mut n: u64) -> Result<(), NbdError> {
        let have = u64::try_from(self.buffered()).unwrap_or(u64::MAX).min(n);
        self.take(usize::try_from(have).unwrap_or(0));
        n -= have;
        while n > 0 {
            // Everything buffered is consumed: receive into the whole buffer.
            self.start = 0;
            self.end = 0;
            if !self.fill(stream, 1).await? {
                return Err(NbdError::Truncated);
            }
            let have = u64::try_from(self.buffered()).unwrap_or(u64::MAX).min(n);
            self.take(usize::try_from(have).unwrap_or(0));
            n -= have;
        }
        Ok(())
    }

    /// Receives exactly `len` payload bytes into a fresh buffer (buffered bytes first).
    async fn payload(&mut self, stream: &Stream, len: usize) -> Result<IoBuf, NbdError> {
        // A small payload that has not fully arrived is received into this buffer together
        // with whatever follows it (usually the next requests): one ring round trip instead
        // of one for the payload's tail and another for the next header.
        if len <= DIRECT_PAYLOAD_MIN && self.buffered() < len && !self.fill(stream, len).await? {
            return Err(NbdError::Truncated);
        }
        let mut p = crate::io::buf::alloc(len);
        p.set_len(len);
        let have = self.buffered().min(len);
        p[..have].copy_from_slice(self.take(have));
        if have < len {
            let (r, b) = stream.recv_exact_into(p, have..len).await;
            p = b;
            r.map_err(|e| match e {
                crate::io::IoError::UnexpectedEof { .. } => NbdError::Truncated,
                e => NbdError::Io(e),
            })?;
        }
        Ok(p)
    }
}

async fn send_bytes(stream: &Stream, bytes: &[u8]) -> Result<(), NbdError> {
    let (r, _) = stream.send_all(IoBuf::from_slice(bytes)).await;
    r.map_err(NbdError::Io)
}

/// Runs the handshake. `Ok(None)`: the client aborted (or vanished) during negotiation.
async fn handshake(
    stream: &Stream,
    rx: &mut RecvBuf,
    shared: &Shared,
) -> Result<Option<Negotiated<ExportHandle>>, NbdError> {
    let mut hs = Handshake::new(shared.cfg.handshake.clone());
    send_bytes(stream, &hs.greeting()).await?;
    let mut out = Vec::new();
    let mut step = hs.first_step();
    loop {
        let catalog = Catalog {
            exports: &shared.exports,
            max_payload: shared.cfg.max_payload,
            shutting_down: shared.stopping(),
        };
        step = match step {
            Step::Need(n) => {
                if !rx.fill(stream, n).await? {
                    return Ok(None);
                }
                hs.receive(rx.take(n), &catalog, &mut out)?
            }
            Step::Discard(n) => {
                rx.discard(stream, n).await?;
                hs.receive(&[], &catalog, &mut out)?
            }
            Step::Done(n) => {
                send_bytes(stream, &out).await?;
                return Ok(Some(*n));
            }
            Step::Close => {
                send_bytes(stream, &out).await?;
                return Ok(None);
            }
        };
        if !out.is_empty() && matches!(step, Step::Need(_) | Step::Discard(_)) {
            send_bytes(stream, &out).await?;
            out.clear();
        }
    }
}

/// A large reply sent straight from its buffer.
struct DataItem {
    buf: IoBuf,
    range: Range<usize>,
    credit: u64,
}

struct OutQueue {
    /// Batched small replies.
    small: IoBuf,
    /// Earlier batches that filled up (sent before `small`, in one vectored send).
    full: Vec<IoBuf>,
    small_credit: u64,
    small_reqs: usize,
    data: VecDeque<DataItem>,
}

/// State shared by the reader, the writer and the request tasks of one connection.
struct Conn {
    id: u64,
    stream: Stream,
    export: ExportHandle,
    mode: ReplyMode,
    min_block: u32,
    out: RefCell<OutQueue>,
    scratch: RefCell<Vec<u8>>,
    writer_wake: Notify,
    space: Notify,
    inflight_bytes: Cell<u64>,
    inflight_reqs: Cell<usize>,
    broken: Cell<bool>,
    closing: Cell<bool>,
}

impl Conn {
    fn charge(&self, credit: u64) {
        self.inflight_bytes.set(self.inflight_bytes.get() + credit);
        self.inflight_reqs.set(self.inflight_reqs.get() + 1);
    }

    fn release(&self, credit: u64, reqs: usize) {
        self.inflight_bytes
            .set(self.inflight_bytes.get().saturating_sub(credit));
        self.inflight_reqs
            .set(self.inflight_reqs.get().saturating_sub(reqs));
        self.space.notify_one();
    }

    /// Queues a small reply built by `f` (which appends to a scratch vector).
    fn queue_small(&self, credit: u64, f: impl FnOnce(&mut Vec<u8>)) {
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
    fn queue_parts(&self, credit: u64, parts: &[&[u8]]) {
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

    fn queue_data(&self, credit: u64, buf: IoBuf, range: Range<usize>) {
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

    fn queue_error(&self, credit: u64, cookie: u64, offset: u64, errno: Errno, msg: &str) {
        let mode = self.mode;
        self.queue_small(credit, |v| {
            reply::error(v, mode, cookie, offset, errno, msg)
        });
    }

    fn queue_result(&self, credit: u64, cookie: u64, offset: u64, r: Result<(), BackendError>) {
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
async fn writer(conn: Rc<Conn>) {
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

/// Runs `f` for at most `limit` (`None`: no limit). Dropping `f` cancels its ring operations.
async fn timeout<F: Future>(limit: Option<std::time::Duration>, f: F) -> Option<F::Output> {
    let Some(limit) = limit else {
        return Some(f.await);
    };
    let mut f = std::pin::pin!(f);
    let mut sleep = std::pin::pin!(crate::io::sleep(limit));
    std::future::poll_fn(|cx| {
        if let std::task::Poll::Ready(v) = f.as_mut().poll(cx) {
            return std::task::Poll::Ready(Some(v));
        }
        sleep.as_mut().poll(cx).map(|()| None)
    })
    .await
}

/// Serves one accepted connection to the end.
pub(crate) async fn serve(stream: Stream, shared: Arc<Shared>, id: u64) {
    let mut rx = RecvBuf::new();
    let limit = shared.cfg.handshake_timeout;
    let negotiated = match timeout(limit, handshake(&stream, &mut rx, &shared)).await {
        Some(Ok(Some(n))) => n,
        Some(Ok(None)) => {
            tracing::debug!(conn = id, "client left during the handshake");
            return;
        }
        Some(Err(e)) => {
            tracing::info!(conn = id, error = %e, "handshake failed");
            return;
        }
        None => {
            tracing::info!(conn = id, limit = ?limit, "handshake timed out");
            return;
        }
    };
    tracing::debug!(
        conn = id,
        export = %negotiated.export.name,
        mode = ?negotiated.mode,
        flags = format_args!("{:#x}", negotiated.flags),
        "transmission"
    );
    if let Err(e) = stream.set_send_buffer(SEND_BUFFER) {
        tracing::debug!(conn = id, error = %e, "cannot enlarge the send buffer");
    }
    let info = &negotiated.info;
    let decoder = RequestDecoder {
        mode: negotiated.mode,
        size: info.size,
        flags: negotiated.flags,
        min_block: info.min_block,
        max_payload: info.max_payload,
        max_discard: shared.cfg.max_discard.max(u64::from(info.max_payload)),
        base_allocation: negotiated.base_allocation,
    };
    let conn = Rc::new(Conn {
        id,
        stream,
        export: negotiated.export,
        mode: negotiated.mode,
        min_block: info.min_block,
        out: RefCell::new(OutQueue {
            small: IoBuf::with_capacity(SEND_BATCH),
            full: Vec::new(),
            small_credit: 0,
            small_reqs: 0,
            data: VecDeque::new(),
        }),
        scratch: RefCell::new(Vec::with_capacity(4096)),
        writer_wake: Notify::new(),
        space: Notify::new(),
        inflight_bytes: Cell::new(0),
        inflight_reqs: Cell::new(0),
        broken: Cell::new(false),
        closing: Cell::new(false),
    });
    let writer_task = crate::io::spawn_local(writer(Rc::clone(&conn)));
    let end = transmission(&conn, &mut rx, &decoder, &shared).await;
    match &end {
        Ok(()) => tracing::debug!(conn = id, "client disconnected"),
        Err(NbdError::Truncated) => {
            tracing::info!(conn = id, "connection closed in the middle of a request")
        }
        Err(e) => tracing::info!(conn = id, error = %e, "closing connection"),
    }
    // Drain: every request already received completes and its reply goes out.
    conn.closing.set(true);
    while conn.inflight_reqs.get() > 0 {
        conn.writer_wake.notify_one();
        conn.space.notified().await;
    }
    conn.writer_wake.notify_one();
    let _ = writer_task.await;
    let _ = conn.stream.shutdown(std::net::Shutdown::Both);
}

/// The reader loop. Returns on DISC (`Ok`), EOF (`Ok`) or an error.
async fn transmission(
    conn: &Rc<Conn>,
    rx: &mut RecvBuf,
    decoder: &RequestDecoder,
    shared: &Shared,
) -> Result<(), NbdError> {
    let hlen = decoder.header_len();
    let max_bytes = shared.cfg.max_inflight_bytes;
    let max_reqs = shared.cfg.max_inflight_requests.max(1);
    loop {
        if conn.broken.get() {
            return Err(NbdError::Closed);
        }
        if !rx.fill(&conn.stream, hlen).await? {
            return Ok(());
        }
        let mut header = [0u8; proto::EXT_REQUEST_LEN];
        header[..hlen].copy_from_slice(rx.take(hlen));
        let req = decoder.decode(&header[..hlen])?;
        let data_len = match req.command {
            Ok(Command::Read { length, .. }) => u64::from(length),
            _ => req.payload_len,
        };
        let credit = data_len + REQUEST_OVERHEAD;
        // Back-pressure: wait for replies to drain before taking on more.
        while conn.inflight_reqs.get() > 0
            && (conn.inflight_bytes.get() + credit > max_bytes
                || conn.inflight_reqs.get() >= max_reqs)
        {
            if conn.broken.get() {
                return Err(NbdError::Closed);
            }
            conn.space.notified().await;
        }
        let command = match req.command {
            Ok(Command::Disconnect) => return Ok(()),
            Ok(c) => c,
            Err(rej) => {
                if req.payload_len > 0 {
                    rx.discard(&conn.stream, req.payload_len).await?;
                }
                tracing::debug!(conn = conn.id, kind = req.kind, errno = %rej.errno, reason = rej.reason, "request refused");
                conn.charge(credit);
                conn.queue_error(credit, req.cookie, req.offset, rej.errno, rej.reason);
                continue;
            }
        };
        let payload = if let Command::Write { length, .. } = command {
            Some(
                rx.payload(&conn.stream, usize::try_from(length).unwrap_or(0))
                    .await?,
            )
        } else {
            None
        };
        conn.charge(credit);
        if conn.export.revoked() {
            conn.queue_error(
                credit,
                req.cookie,
                req.offset,
                Errno::Shutdown,
                "export removed",
            );
            continue;
        }
        crate::io::spawn_local(run(Rc::clone(conn), req, command, payload, credit));
    }
}

/// Executes one request and queues its reply.
async fn run(conn: Rc<Conn>, req: Request, command: Command, payload: Option<IoBuf>, credit: u64) {
    let backend = &conn.export.backend;
    let (cookie, roff, mode) = (req.cookie, req.offset, conn.mode);
    match command {
        Command::Read { offset, length, df } => {
            read(&conn, credit, cookie, roff, offset, length, df).await
        }
        Command::Write { offset, fua, .. } => {
            let Some(data) = payload else {
                conn.queue_error(credit, cookie, roff, Errno::Io, "write without payload");
                return;
            };
            let (r, data) = backend.write(offset, data, fua).await;
            drop(data);
            conn.queue_result(credit, cookie, roff, r);
        }
        Command::Flush => {
            let r = backend.flush().await;
            conn.queue_result(credit, cookie, roff, r);
        }
        Command::Trim {
            offset,
            length,
            fua,
        } => {
            let mut r = backend.trim(offset, length).await;
            if r.is_ok() && fua {
                r = backend.flush().await;
            }
            conn.queue_result(credit, cookie, roff, r);
        }
        Command::WriteZeroes {
            offset,
            length,
            fua,
            may_trim,
            fast_only,
        } => {
            let mut r = backend
                .write_zeroes(offset, length, may_trim, fast_only)
                .await;
            if r.is_ok() && fua {
                r = backend.flush().await;
            }
            conn.queue_result(credit, cookie, roff, r);
        }
        Command::Cache { offset, length } => {
            let r = backend.cache(offset, length).await;
            conn.queue_result(credit, cookie, roff, r);
        }
        Command::BlockStatus {
            offset,
            length,
            req_one,
            context,
        } => match backend.block_status(offset, length).await {
            Ok(ext) => {
                let ext = clip_extents(ext, length, req_one, conn.min_block);
                conn.queue_small(credit, |v| {
                    reply::block_status(v, mode, cookie, roff, context, &ext, true);
                });
            }
            Err(e) => conn.queue_error(credit, cookie, roff, e.errno, &e.message),
        },
        Command::Disconnect => conn.release(credit, 1),
    }
}

/// Keeps extents within the request (dropping empty ones), one extent with REQ_ONE, and
/// always at least one (status 0 covering the whole range is always a safe answer).
fn clip_extents(ext: Vec<Extent>, length: u64, req_one: bool, min_block: u32) -> Vec<Extent> {
    let mut out = Vec::with_capacity(ext.len().min(1 << 16));
    let mut left = length;
    for e in ext {
        if left == 0 || (req_one && !out.is_empty()) {
            break;
        }
        if e.length == 0 {
            continue;
        }
        let l = e.length.min(left);
        left -= l;
        out.push(Extent {
            length: l,
            flags: e.flags,
        });
    }
    // Extents other than the last must be multiples of the minimum block size.
    let mask = u64::from(min_block.max(1)) - 1;
    if let Some(pos) = out.iter().position(|e| e.length & mask != 0) {
        if pos + 1 < out.len() {
            out.truncate(pos + 1);
            if let Some(last) = out.last_mut() {
                last.length &= !mask;
                if last.length == 0 {
                    out.pop();
                }
            }
        }
    }
    if out.is_empty() {
        out.push(Extent { length, flags: 0 });
    }
    out
}

#[allow(clippy::too_many_arguments)]
async fn read(
    conn: &Conn,
    credit: u64,
    cookie: u64,
    roff: u64,
    offset: u64,
    length: u32,
    df: bool,
) {
    let mode = conn.mode;
    let len = usize::try_from(length).unwrap_or(0);
    if len == 0 {
        conn.queue_small(credit, |v| reply::none_done(v, mode, cookie, roff));
        return;
    }
    let inline = len + reply::MAX_READ_PREFIX <= INLINE_REPLY_MAX;
    let (start, total) = if inline {
        (0, len)
    } else {
        (DATA_OFFSET, DATA_OFFSET + len)
    };
    let mut buf = crate::io::buf::alloc(total);
    buf.set_len(total);
    let (r, mut buf) = conn.export.backend.read(offset, buf, start..total).await;
    let layout = match r {
        Ok(l) => l,
        Err(e) => {
            tracing::debug!(conn = conn.id, offset, length, error = %e, "read failed");
            conn.queue_error(credit, cookie, roff, e.errno, &e.message);
            return;
        }
    };
    let structured = mode.structured();
    match layout {
        ReadLayout::Hole if structured => {
            conn.queue_small(credit, |v| {
                reply::hole_chunk(v, mode, cookie, roff, offset, length, true)
            });
        }
        ReadLayout::Holes(holes) if structured && !df && inline => {
            let data = &buf[..len];
            conn.queue_small(credit, |v| {
                chunks_with_holes(v, mode, cookie, roff, offset, data, &holes)
            });
        }
        _ if inline => {
            let data = &buf[..len];
            let mut h = [0u8; reply::MAX_READ_PREFIX];
            let n = reply::read_data_header(
                &mut h,
                mode,
                cookie,
                roff,
                offset,
                u64::from(length),
                true,
            );
            // Header and data go into the send batch with one copy.
            conn.queue_parts(credit, &[&h[..n], data]);
        }
        _ => {
            let n = mode.read_prefix_len();
            let hstart = DATA_OFFSET - n;
            reply::read_data_header(
                &mut buf[hstart..DATA_OFFSET],
                mode,
                cookie,
                roff,
                offset,
                u64::from(length),
                true,
            );
            conn.queue_data(credit, buf, hstart..total);
        }
    }
}

/// Encodes a read as alternating data and hole chunks (the last one carries DONE).
fn chunks_with_holes(
    v: &mut Vec<u8>,
    mode: ReplyMode,
    cookie: u64,
    roff: u64,
    offset: u64,
    data: &[u8],
    holes: &[Range<u32>],
) {
    let len = data.len();
    let mut segs: Vec<(Range<usize>, bool)> = Vec::with_capacity(holes.len() * 2 + 1);
    let mut at = 0usize;
    for h in holes {
        let (s, e) = (
            usize::try_from(h.start).unwrap_or(len).min(len),
            usize::try_from(h.end).unwrap_or(len).min(len),
        );
        if s < at || s >= e {
            continue;
        }
        if s > at {
            segs.push((at..s, false));
        }
        segs.push((s..e, true));
        at = e;
    }
    if at < len {
        segs.push((at..len, false));
    }
    let last = segs.len().saturating_sub(1);
    for (i, (r, hole)) in segs.into_iter().enumerate() {
        let done = i == last;
        let pos = offset + u64::try_from(r.start).unwrap_or(0);
        let rl = u32::try_from(r.len()).unwrap_or(0);
        if hole {
            reply::hole_chunk(v, mode, cookie, roff, pos, rl, done);
        } else {
            let mut h = [0u8; reply::MAX_READ_PREFIX];
            let n = reply::read_data_header(&mut h, mode, cookie, roff, pos, u64::from(rl), done);
            v.extend_from_slice(&h[..n]);
            v.extend_from_slice(&data[r]);
        }
    }
}

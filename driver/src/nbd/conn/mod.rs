//! One NBD connection on its reactor: handshake, then the transmission loop.
//!
//! * The **reader** (the connection task) parses request headers out of a large receive
//!   buffer, receives WRITE payloads straight into an [`IoBuf`] that goes to the backend, and
//!   spawns one local task per request, so many requests are in flight and complete in any
//!   order. The reader and each request's first poll run ahead of other woken tasks (replies
//!   being built), so a request reaches the backend as soon as it is parsed.
//! * Request tasks queue their reply with the **writer** task: replies up to
//!   [`send::INLINE_REPLY_MAX`] bytes (headers, errors, reads of less than a page) are appended
//!   to one batch buffer that goes out in a single send; reads of a page or more are sent
//!   straight from the buffer the backend read into (the reply header sits in the page before
//!   the data). Optionally, when a burst
//!   of completions queues many small replies, the task that queues the
//!   [`NbdServerConfig::reply_flush`](super::NbdServerConfig::reply_flush)-th sends the batch
//!   itself at once (the writer would run only after the whole burst).
//! * **Bounded memory**: every request holds a credit (its payload or read length) until its
//!   reply is sent; the reader stops reading while the connection is over
//!   `max_inflight_bytes`/`max_inflight_requests`, so a client that does not read its
//!   replies gets TCP back-pressure, not server memory growth.
//! * **Ending**: DISC, EOF, a framing error or a server shutdown stop the reader; requests
//!   already received complete and their replies are sent, then the socket closes. A WRITE whose
//!   payload did not fully arrive is never applied.
//!
//! Modules: [`recv`] (the receive buffer), [`send`] (the reply queue and the writer task),
//! [`exec`] (running one request on the backend); this file has the connection state, the
//! handshake and the reader loop.

mod exec;
mod gather;
mod recv;
mod send;

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::rc::Rc;
use std::sync::Arc;

use super::exports::{Catalog, ExportHandle};
use super::handshake::{Handshake, Negotiated, Step};
use super::proto::{self, Errno};
use super::reply::ReplyMode;
use super::request::{Command, RequestDecoder};
use super::server::Shared;
use super::NbdError;
use crate::io::net::Stream;
use crate::io::IoBuf;
use crate::io::Notify;
use recv::RecvBuf;
use send::OutQueue;

/// Credit charged for a request beyond its data (reply header, bookkeeping).
const REQUEST_OVERHEAD: u64 = 64;
/// SO_SNDBUF asked for a connection in transmission (the kernel caps it at
/// `net.core.wmem_max`). The default (about 208 KiB) holds less than two 128 KiB read replies:
/// with more queued, a send would wait (poll and retry through the ring) until the client has
/// drained the socket, instead of handing the whole reply to the kernel at once.
const SEND_BUFFER: usize = 4 << 20;

async fn send_bytes(stream: &Stream, bytes: &[u8]) -> Result<(), NbdError> {
    let (r, _) = stream.send_all(IoBuf::from_slice(bytes)).await;
    r.map_err(NbdError::Io)
}

/// Runs the handshake. `Ok(None)`: the client aborted (or vanished) during negotiation.
/// After NBD_OPT_STARTTLS, `stream` is the plain-text end of the TLS pump ([`super::tls`]).
async fn handshake(
    stream: &mut Stream,
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
            Step::StartTls => {
                send_bytes(stream, &out).await?;
                out.clear();
                let Some(tls) = shared.cfg.tls.as_ref() else {
                    return Err(NbdError::Config("STARTTLS without TLS settings".into()));
                };
                // A client sends nothing between STARTTLS and its TLS ClientHello, but
                // whatever was received past the option belongs to TLS, not to the options.
                let early = rx.take_all();
                super::tls::start(stream, early, tls)?;
                hs.next_step()
            }
        };
        if !out.is_empty() && matches!(step, Step::Need(_) | Step::Discard(_)) {
            send_bytes(stream, &out).await?;
            out.clear();
        }
    }
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
    /// Small WRITEs waiting to be written together (when the backend gathers writes).
    gather: gather::Gather,
    gathers_writes: bool,
    /// A send of queued replies is in flight (by the writer or an early flush): one at a time.
    sending: Cell<bool>,
    /// Queued small replies that make a request task send them itself (0: the writer only);
    /// see [`send`].
    reply_flush: usize,
    shared: Arc<Shared>,
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
pub(crate) async fn serve(mut stream: Stream, shared: Arc<Shared>, id: u64) {
    let mut rx = RecvBuf::new();
    let limit = shared.cfg.handshake_timeout;
    let negotiated = match timeout(limit, handshake(&mut stream, &mut rx, &shared)).await {
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
    let gathers_writes = shared.cfg.gather_writes && negotiated.export.backend.gathers_writes();
    let conn = Rc::new(Conn {
        id,
        stream,
        export: negotiated.export,
        mode: negotiated.mode,
        min_block: info.min_block,
        out: RefCell::new(OutQueue::new()),
        scratch: RefCell::new(Vec::with_capacity(4096)),
        writer_wake: Notify::new(),
        space: Notify::new(),
        inflight_bytes: Cell::new(0),
        inflight_reqs: Cell::new(0),
        broken: Cell::new(false),
        closing: Cell::new(false),
        gather: gather::Gather::default(),
        gathers_writes,
        sending: Cell::new(false),
        reply_flush: shared.cfg.reply_flush,
        shared: Arc::clone(&shared),
    });
    let writer_task = crate::io::spawn_local(send::writer(Rc::clone(&conn)));
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
    // Requests first: when a burst of reads completes, the reader (woken by its receive) and
    // the requests it parses run before the replies of the burst are built, so new reads reach
    // the device while the replies are made (see `crate::io::spawn_local_first`).
    crate::io::prefer_current_task();
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
        let gathered = conn.gathers_writes
            && matches!(command, Command::Write { fua: false, .. })
            && payload
                .as_ref()
                .is_some_and(|d| d.len() <= gather::GATHER_MAX_WRITE);
        if gathered {
            if let (Command::Write { offset, .. }, Some(data)) = (command, payload) {
                let w = gather::PendingWrite {
                    cookie: req.cookie,
                    roff: req.offset,
                    offset,
                    data,
                    credit,
                };
                gather::push(conn, w);
            }
            continue;
        }
        crate::io::spawn_local_first(exec::run(Rc::clone(conn), req, command, payload, credit));
    }
}

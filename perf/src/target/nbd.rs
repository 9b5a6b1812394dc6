//! ringperf's own NBD client, on the job's reactor: `--nbd-conns` connections per job, each with
//! a writer task (batches queued requests into one send) and a reader task (one big recv,
//! then every complete reply in it is dispatched by cookie). Structured replies are used when
//! the server offers them; simple replies otherwise. `--client-mode libnbd` sends each request
//! from the call that makes it and receives each reply on its own instead, with direct
//! non-blocking send(2)/recv(2) and the ring only to wait, as libnbd (fio's nbd engine) does.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::io::{self, Write as _};
use std::net::TcpStream;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::rc::Rc;
use std::task::{Poll, Waker};

use ringpool_driver::io::{ops, spawn_local, yield_now, IoBuf, JoinHandle};
use slab::Slab;

use super::nbd_proto::{self as p, ExportInfo, ReplyHeader};
use super::{Conn, IoResult, TargetInfo};
use crate::cli::ClientMode;
use crate::error::{io_err, PerfError};

const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Where the server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NbdAddr {
    Tcp(String),
    Unix(PathBuf),
}

#[derive(Debug, Clone)]
pub struct NbdSpec {
    pub uri: String,
    pub addr: NbdAddr,
    pub export: String,
    pub conns: u32,
    pub mode: ClientMode,
}

/// A blocking socket for the handshake.
enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl io::Read for Stream {
    fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(b),
            Stream::Unix(s) => s.read(b),
        }
    }
}
impl io::Write for Stream {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(b),
            Stream::Unix(s) => s.write(b),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl NbdSpec {
    /// `nbd://HOST[:PORT]/EXPORT` or `nbd+unix:///EXPORT?socket=PATH`.
    pub fn parse(uri: &str, conns: u32) -> Result<NbdSpec, PerfError> {
        let bad = |why: &str| PerfError::Config(format!("target '{uri}': {why}"));
        if conns == 0 {
            return Err(bad("--nbd-conns must be at least 1"));
        }
        if let Some(rest) = uri.strip_prefix("nbd+unix://") {
            let (path, query) = rest
                .split_once('?')
                .ok_or_else(|| bad("expected nbd+unix:///EXPORT?socket=PATH"))?;
            let export = path.strip_prefix('/').unwrap_or(path).to_string();
            let sock = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("socket="))
                .ok_or_else(|| bad("missing socket=PATH"))?;
            return Ok(NbdSpec {
                uri: uri.to_string(),
                addr: NbdAddr::Unix(PathBuf::from(sock)),
                export,
                conns,
                mode: ClientMode::Batched,
            });
        }
        let rest = uri
            .strip_prefix("nbd://")
            .ok_or_else(|| bad("expected nbd://HOST:PORT/EXPORT"))?;
        let (hostport, export) = rest.split_once('/').unwrap_or((rest, ""));
        if hostport.is_empty() {
            return Err(bad("missing host"));
        }
        let hostport = if hostport
            .rsplit_once(':')
            .is_some_and(|(_, p)| !p.contains(']'))
        {
            hostport.to_string()
        } else {
            format!("{hostport}:10809")
        };
        Ok(NbdSpec {
            uri: uri.to_string(),
            addr: NbdAddr::Tcp(hostport),
            export: export.to_string(),
            conns,
            mode: ClientMode::Batched,
        })
    }

    fn err(&self, e: io::Error) -> PerfError {
        PerfError::target(&self.uri, e)
    }

    fn dial(&self) -> io::Result<(Stream, ExportInfo)> {
        let mut s = match &self.addr {
            NbdAddr::Tcp(a) => {
                let t = TcpStream::connect(a)?;
                t.set_nodelay(true)?;
                t.set_read_timeout(Some(HANDSHAKE_TIMEOUT))?;
                Stream::Tcp(t)
            }
            NbdAddr::Unix(pth) => {
                let u = UnixStream::connect(pth)?;
                u.set_read_timeout(Some(HANDSHAKE_TIMEOUT))?;
                Stream::Unix(u)
            }
        };
        let info = p::handshake(&mut s, &self.export).map_err(|e| {
            if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) {
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no handshake from the server within 10 s (does it accept this many connections? qemu-nbd needs -e N for N > 1)",
                )
            } else {
                e
            }
        })?;
        // Transmission runs on the ring; the timeout only guarded the handshake.
        match &s {
            Stream::Tcp(t) => t.set_read_timeout(None)?,
            Stream::Unix(u) => u.set_read_timeout(None)?,
        }
        Ok((s, info))
    }

    /// Handshakes once to learn the export's size and block size, then disconnects.
    pub fn probe(&self) -> Result<TargetInfo, PerfError> {
        let (mut s, info) = self.dial().map_err(|e| self.err(e))?;
        let mut disc = Vec::new();
        p::encode_request(&mut disc, p::CMD_DISC, 0, 0, 0, 0);
        let _ = s.write_all(&disc);
        let min = info.block_size.map_or(512, |b| b.0).max(512);
        Ok(TargetInfo {
            size: info.size,
            block: u64::from(min),
            describe: format!(
                "NBD {} (export '{}', {} replies, flags {:#x}{}, {} conn/job{})",
                match &self.addr {
                    NbdAddr::Tcp(a) => a.clone(),
                    NbdAddr::Unix(pth) => pth.display().to_string(),
                },
                self.export,
                if info.structured {
                    "structured"
                } else {
                    "simple"
                },
                info.flags,
                if info.flags & p::TFLAG_CAN_MULTI_CONN != 0 {
                    " multi-conn"
                } else {
                    ""
                },
                self.conns,
                match self.mode {
                    ClientMode::Batched => "",
                    ClientMode::Libnbd => ", libnbd client mode",
                }
            ),
        })
    }

    /// Opens this job's connections and starts their reader and writer tasks.
    pub async fn connect(&self, _job: u32) -> io::Result<NbdConn> {
        let mut socks = Vec::new();
        let mut tasks = Vec::new();
        let mut flags = 0;
        for _ in 0..self.conns {
            // The handshake is blocking on purpose: it happens before the clock starts.
            let (s, info) = self.dial()?;
            flags = info.flags;
            // Structured replies are parsed whenever they arrive; nothing to switch.
            let fd: OwnedFd = match s {
                Stream::Tcp(t) => t.into(),
                Stream::Unix(u) => u.into(),
            };
            let sock = Rc::new(Sock::new(fd, self.mode));
            tasks.push(spawn_local(writer(Rc::clone(&sock))));
            tasks.push(spawn_local(reader(Rc::clone(&sock))));
            socks.push(sock);
        }
        Ok(NbdConn {
            socks,
            next: Cell::new(0),
            flags,
            tasks,
        })
    }
}

/// One request waiting for its reply.
#[derive(Debug)]
struct Pending {
    is_read: bool,
    off: u64,
    buf: Option<IoBuf>,
    /// First error chunk of a structured reply.
    error: Option<u32>,
    /// NBD error code (0 = success) or a connection failure.
    result: Option<Result<(), io::Error>>,
    waker: Option<Waker>,
}

/// One connection's shared state.
#[derive(Debug)]
struct Sock {
    fd: OwnedFd,
    /// Bytes queued for the writer (request headers and write payloads).
    out: RefCell<Vec<u8>>,
    /// Where each queued segment (a header, a payload) ends in `out`, for the libnbd mode.
    marks: RefCell<Vec<usize>>,
    mode: ClientMode,
    writer_waker: RefCell<Option<Waker>>,
    /// The writer holds bytes taken from `out` that are not all sent yet (libnbd mode: a
    /// request may only be sent directly while nothing is ahead of it).
    writer_busy: Cell<bool>,
    pending: RefCell<Slab<Pending>>,
    /// Set when the connection failed or closed: every waiter gets this error.
    dead: RefCell<Option<String>>,
}

impl Sock {
    fn new(fd: OwnedFd, mode: ClientMode) -> Sock {
        Sock {
            fd,
            out: RefCell::new(Vec::with_capacity(1 << 20)),
            marks: RefCell::new(Vec::new()),
            mode,
            writer_waker: RefCell::new(None),
            writer_busy: Cell::new(false),
            pending: RefCell::new(Slab::new()),
            dead: RefCell::new(None),
        }
    }

    fn wake_writer(&self) {
        if let Some(w) = self.writer_waker.borrow_mut().take() {
            w.wake();
        }
    }

    /// Fails every waiter and stops the tasks.
    fn kill(&self, why: String) {
        for (_, pd) in self.pending.borrow_mut().iter_mut() {
            if pd.result.is_none() {
                pd.result = Some(Err(io::Error::new(io::ErrorKind::BrokenPipe, why.clone())));
                if let Some(w) = pd.waker.take() {
                    w.wake();
                }
            }
        }
        *self.dead.borrow_mut() = Some(why);
        self.wake_writer();
    }

    /// Queues a request and waits for its reply.
    async fn request(
        &self,
        cmd: u16,
        flags: u16,
        off: u64,
        buf: Option<IoBuf>,
    ) -> (io::Result<()>, Option<IoBuf>) {
        if let Some(why) = self.dead.borrow().clone() {
            return (Err(io::Error::new(io::ErrorKind::BrokenPipe, why)), buf);
        }
        let len = buf.as_ref().map_or(0, |b| b.len());
        let Ok(len32) = u32::try_from(len) else {
            return (
                Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "request too large",
                )),
                buf,
            );
        };
        let key = self.pending.borrow_mut().insert(Pending {
            is_read: cmd == p::CMD_READ,
            off,
            buf: None,
            error: None,
            result: None,
            waker: None,
        });
        if self.mode == ClientMode::Libnbd
            && !self.writer_busy.get()
            && self.out.borrow().is_empty()
        {
            // libnbd sends a request from within the call that makes it (fio's queue), with a
            // non-blocking send(2) of the header and one of the payload; only what the socket
            // does not take is left to the writer task.
            let mut hdr = Vec::with_capacity(28);
            p::encode_request(&mut hdr, cmd, flags, key as u64, off, len32);
            let payload = match (&buf, cmd == p::CMD_WRITE) {
                (Some(b), true) => &b[..],
                _ => &[][..],
            };
            let mut out = self.out.borrow_mut();
            let mut marks = self.marks.borrow_mut();
            for seg in [&hdr[..], payload] {
                if seg.is_empty() {
                    continue;
                }
                let sent = if out.is_empty() {
                    match send_now(&self.fd, seg) {
                        Ok(n) => n,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
                        // The writer meets the same error on the rest and fails the
                        // connection.
                        Err(_) => 0,
                    }
                } else {
                    0
                };
                if sent < seg.len() {
                    out.extend_from_slice(&seg[sent..]);
                    marks.push(out.len());
                }
            }
        } else {
            let mut out = self.out.borrow_mut();
            let mut marks = self.marks.borrow_mut();
            p::encode_request(&mut out, cmd, flags, key as u64, off, len32);
            marks.push(out.len());
            if cmd == p::CMD_WRITE {
                if let Some(b) = &buf {
                    out.extend_from_slice(b);
                    marks.push(out.len());
                }
            }
        }
        self.pending.borrow_mut()[key].buf = buf;
        self.wake_writer();
        poll_fn(|cx| {
            let mut pend = self.pending.borrow_mut();
            let pd = &mut pend[key];
            if pd.result.is_some() {
                let pd = pend.remove(key);
                Poll::Ready((pd.result.unwrap_or(Ok(())), pd.buf))
            } else {
                pd.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }
}

/// Sends whatever is queued, in one send per batch.
async fn writer(sock: Rc<Sock>) {
    let mut spare = IoBuf::with_capacity(1 << 20);
    loop {
        poll_fn(|cx| {
            if !sock.out.borrow().is_empty() || sock.dead.borrow().is_some() {
                Poll::Ready(())
            } else {
                *sock.writer_waker.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await;
        if sock.dead.borrow().is_some() {
            return;
        }
        let batch = std::mem::take(&mut *sock.out.borrow_mut());
        let marks = std::mem::take(&mut *sock.marks.borrow_mut());
        if sock.mode == ClientMode::Libnbd {
            sock.writer_busy.set(true);
            // One send per header and per payload, as libnbd does: a non-blocking send(2)
            // right away, and only when the socket is full a wait (here an io_uring send of
            // the rest). Sending each segment through the ring instead cost a reactor turn per
            // segment, so 32 requests queued at once left one by one, turns apart, and a
            // server that gathers concurrent writes saw another rhythm than fio's.
            let mut start = 0;
            for end in marks {
                let seg = &batch[start..end];
                start = end;
                let sent = match send_now(&sock.fd, seg) {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
                    Err(e) => {
                        sock.kill(format!("NBD send failed: {e}"));
                        return;
                    }
                };
                if sent == seg.len() {
                    continue;
                }
                spare.clear();
                spare.extend_from_slice(&seg[sent..]);
                let (r, b) = ops::send_all(sock.fd.as_raw_fd(), spare).await;
                spare = b;
                if let Err(e) = r {
                    sock.kill(format!("NBD send failed: {}", io_err(&e)));
                    return;
                }
            }
            sock.writer_busy.set(false);
            continue;
        }
        if spare.capacity() < batch.len() {
            spare = IoBuf::with_capacity(batch.len().next_power_of_two());
        }
        spare.clear();
        spare.extend_from_slice(&batch);
        // Give the Vec's capacity back so the next batch does not reallocate.
        {
            let mut out = sock.out.borrow_mut();
            if out.is_empty() {
                let mut b = batch;
                b.clear();
                *out = b;
            }
        }
        let (r, b) = ops::send_all(sock.fd.as_raw_fd(), spare).await;
        spare = b;
        if let Err(e) = r {
            sock.kill(format!("NBD send failed: {}", io_err(&e)));
            return;
        }
    }
}

/// Receives replies and completes their requests.
async fn reader(sock: Rc<Sock>) {
    // Large enough for any reply (payload up to 32 MiB + header); grows on demand.
    let mut rbuf = IoBuf::with_capacity(256 << 10);
    // In the libnbd mode: how much of the next message is still missing (a reply header
    // first, then a read's payload), so that each recv takes one part of one reply.
    let mut want = p::SIMPLE_REPLY_LEN;
    loop {
        let start = rbuf.len();
        let end = match sock.mode {
            ClientMode::Batched => rbuf.capacity(),
            ClientMode::Libnbd => (start + want).min(rbuf.capacity()),
        };
        // libnbd reads with a non-blocking recv(2) until it would block and only then waits
        // (poll); the ring's recv is that wait here.
        let direct = match sock.mode {
            ClientMode::Libnbd => match recv_now(&sock.fd, &mut rbuf, start..end) {
                Ok(n) => Some(Ok(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
                Err(e) => Some(Err(e.to_string())),
            },
            ClientMode::Batched => None,
        };
        let r = match direct {
            Some(r) => r,
            None => {
                let (r, b) = ops::recv_into(sock.fd.as_raw_fd(), rbuf, start..end).await;
                rbuf = b;
                r.map_err(|e| io_err(&e).to_string())
            }
        };
        if let Ok(n) = r {
            rbuf.set_len(start + n);
        }
        match r {
            Ok(0) => {
                sock.kill("NBD server closed the connection".into());
                return;
            }
            Ok(_) => {}
            Err(e) => {
                sock.kill(format!("NBD recv failed: {e}"));
                return;
            }
        }
        let used = match dispatch(&sock, &rbuf) {
            Ok(Dispatch { used, need }) => {
                want = need.saturating_sub(rbuf.len() - used).max(1);
                if need > rbuf.capacity() {
                    let mut bigger = IoBuf::with_capacity(need.next_power_of_two());
                    bigger.extend_from_slice(&rbuf[used..]);
                    rbuf = bigger;
                    continue;
                }
                used
            }
            Err(e) => {
                sock.kill(format!("NBD protocol error: {e}"));
                return;
            }
        };
        // Keep the unparsed tail at the front.
        let len = rbuf.len();
        rbuf.spare_and_all_mut().copy_within(used..len, 0);
        rbuf.set_len(len - used);
        if sock.mode == ClientMode::Libnbd && used > 0 {
            // fio reaps one completion per nbd_poll (iodepth_batch_complete_min=1) and queues
            // the next request, sent at once, before it reads the next reply: let the woken
            // workers do that before reading on.
            yield_now().await;
        }
    }
}

/// One non-blocking send(2) of `b` (libnbd's way of sending; may be short).
fn send_now(fd: &OwnedFd, b: &[u8]) -> io::Result<usize> {
    // SAFETY: `b` is a live borrowed slice for the duration of this synchronous call; the
    // kernel copies out of it before send(2) returns.
    let n = unsafe {
        libc::send(
            fd.as_raw_fd(),
            b.as_ptr().cast::<libc::c_void>(),
            b.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

/// One non-blocking recv(2) into `buf[range]` (libnbd's way of reading). Does not change
/// `buf`'s length; returns the bytes received.
fn recv_now(fd: &OwnedFd, buf: &mut IoBuf, range: std::ops::Range<usize>) -> io::Result<usize> {
    if range.start > range.end || range.end > buf.capacity() {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    // SAFETY: range lies within the buffer's capacity (checked above), `buf` is borrowed
    // mutably for this synchronous call, and the kernel writes at most range.len() bytes
    // before recv(2) returns; the caller sets the length only over what was written.
    let n = unsafe {
        libc::recv(
            fd.as_raw_fd(),
            buf.as_mut_ptr().add(range.start).cast::<libc::c_void>(),
            range.end - range.start,
            libc::MSG_DONTWAIT,
        )
    };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

struct Dispatch {
    /// Bytes consumed from the front.
    used: usize,
    /// Bytes needed to parse the next message (to grow the buffer).
    need: usize,
}

/// Parses every complete reply in `b`.
fn dispatch(sock: &Sock, b: &[u8]) -> io::Result<Dispatch> {
    let mut at = 0;
    loop {
        let Some((hdr, hlen)) = p::parse_reply(&b[at..])? else {
            // A simple reply's header, or (once 16 bytes show a structured reply's magic)
            // a chunk's.
            let need = if b.len() - at < p::SIMPLE_REPLY_LEN {
                p::SIMPLE_REPLY_LEN
            } else {
                p::STRUCTURED_HDR_LEN
            };
            return Ok(Dispatch { used: at, need });
        };
        let bad = |m: String| io::Error::new(io::ErrorKind::InvalidData, m);
        let mut pend = sock.pending.borrow_mut();
        match hdr {
            ReplyHeader::Simple { cookie, error } => {
                let key = usize::try_from(cookie).unwrap_or(usize::MAX);
                let pd = pend
                    .get_mut(key)
                    .ok_or_else(|| bad(format!("reply for unknown cookie {cookie}")))?;
                let payload = if pd.is_read && error == 0 {
                    pd.buf.as_ref().map_or(0, |x| x.len())
                } else {
                    0
                };
                if b.len() - at < hlen + payload {
                    return Ok(Dispatch {
                        used: at,
                        need: hlen + payload,
                    });
                }
                if payload > 0 {
                    if let Some(dst) = pd.buf.as_mut() {
                        dst.copy_from_slice(&b[at + hlen..at + hlen + payload]);
                    }
                }
                complete(pd, error);
                at += hlen + payload;
            }
            ReplyHeader::Chunk {
                cookie,
                flags,
                ty,
                len,
            } => {
                let plen = usize::try_from(len).unwrap_or(usize::MAX);
                if b.len() - at < hlen.saturating_add(plen) {
                    return Ok(Dispatch {
                        used: at,
                        need: hlen.saturating_add(plen),
                    });
                }
                let key = usize::try_from(cookie).unwrap_or(usize::MAX);
                let pd = pend
                    .get_mut(key)
                    .ok_or_else(|| bad(format!("chunk for unknown cookie {cookie}")))?;
                let payload = &b[at + hlen..at + hlen + plen];
                let mut err = 0;
                match ty {
                    p::CHUNK_NONE => {}
                    p::CHUNK_OFFSET_DATA | p::CHUNK_OFFSET_HOLE => {
                        let coff = p::chunk_offset(payload)
                            .ok_or_else(|| bad("short offset chunk".into()))?;
                        let dst = pd
                            .buf
                            .as_mut()
                            .ok_or_else(|| bad("data chunk for a non-read".into()))?;
                        let rel = coff
                            .checked_sub(pd.off)
                            .and_then(|r| usize::try_from(r).ok())
                            .ok_or_else(|| bad("chunk before the request".into()))?;
                        let n = if ty == p::CHUNK_OFFSET_DATA {
                            plen - 8
                        } else {
                            usize::try_from(p::hole_len(payload).unwrap_or(0)).unwrap_or(0)
                        };
                        let end = rel
                            .checked_add(n)
                            .filter(|&e| e <= dst.len())
                            .ok_or_else(|| bad("chunk past the request".into()))?;
                        if ty == p::CHUNK_OFFSET_DATA {
                            dst[rel..end].copy_from_slice(&payload[8..]);
                        } else {
                            dst[rel..end].fill(0);
                        }
                    }
                    t if t & 0x8000 != 0 => err = p::chunk_error(payload),
                    t => return Err(bad(format!("unexpected chunk type {t}"))),
                }
                if err != 0 {
                    // Not final until the DONE chunk: keep the first error.
                    pd.error.get_or_insert(err);
                }
                if flags & p::CHUNK_FLAG_DONE != 0 {
                    let e = pd.error.unwrap_or(0);
                    complete(pd, e);
                }
                at += hlen + plen;
            }
        }
    }
}

fn nbd_errno(e: u32) -> io::Error {
    io::Error::from_raw_os_error(i32::try_from(e).unwrap_or(libc::EIO))
}

fn complete(pd: &mut Pending, error: u32) {
    pd.result = Some(if error == 0 {
        Ok(())
    } else {
        Err(nbd_errno(error))
    });
    if let Some(w) = pd.waker.take() {
        w.wake();
    }
}

/// A job's NBD connections; requests go round-robin over them.
#[derive(Debug)]
pub struct NbdConn {
    socks: Vec<Rc<Sock>>,
    next: Cell<usize>,
    flags: u16,
    tasks: Vec<JoinHandle<()>>,
}

impl NbdConn {
    fn pick(&self) -> &Rc<Sock> {
        let i = self.next.get();
        self.next.set((i + 1) % self.socks.len());
        &self.socks[i]
    }

    /// Sends DISC on every connection and stops the tasks.
    pub async fn close(&self) {
        for s in &self.socks {
            if s.dead.borrow().is_none() {
                p::encode_request(&mut s.out.borrow_mut(), p::CMD_DISC, 0, 0, 0, 0);
                s.wake_writer();
            }
        }
        // Let the writers flush the DISC requests.
        for _ in 0..8 {
            if self.socks.iter().all(|s| s.out.borrow().is_empty()) {
                break;
            }
            ringpool_driver::io::yield_now().await;
        }
        for t in &self.tasks {
            t.abort();
        }
        for s in &self.socks {
            let _ = ops::shutdown(s.fd.as_raw_fd(), std::net::Shutdown::Both);
        }
    }
}

fn take_buf(r: (io::Result<()>, Option<IoBuf>), fallback_len: usize) -> IoResult {
    (r.0, r.1.unwrap_or_else(|| IoBuf::zeroed(fallback_len)))
}

impl Conn for NbdConn {
    async fn read(&self, buf: IoBuf, off: u64) -> IoResult {
        let n = buf.len();
        take_buf(self.pick().request(p::CMD_READ, 0, off, Some(buf)).await, n)
    }

    async fn write(&self, buf: IoBuf, off: u64, fua: bool) -> IoResult {
        let n = buf.len();
        let flags = if fua && self.flags & p::TFLAG_SEND_FUA != 0 {
            p::CMD_FLAG_FUA
        } else {
            0
        };
        take_buf(
            self.pick()
                .request(p::CMD_WRITE, flags, off, Some(buf))
                .await,
            n,
        )
    }

    async fn flush(&self) -> io::Result<()> {
        if self.flags & p::TFLAG_SEND_FLUSH == 0 {
            return Ok(());
        }
        // A flush covers the writes completed on its own connection; send one on each.
        let mut res = Ok(());
        for s in &self.socks {
            let (r, _) = s.request(p::CMD_FLUSH, 0, 0, None).await;
            if res.is_ok() {
                res = r;
            }
        }
        res
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris() {
        let s = NbdSpec::parse("nbd://127.0.0.1:10900/vol0", 2).unwrap();
        assert_eq!(s.addr, NbdAddr::Tcp("127.0.0.1:10900".into()));
        assert_eq!(s.export, "vol0");
        let s = NbdSpec::parse("nbd://localhost", 1).unwrap();
        assert_eq!(s.addr, NbdAddr::Tcp("localhost:10809".into()));
        assert_eq!(s.export, "");
        let s = NbdSpec::parse("nbd+unix:///pool/v1?socket=/run/x.sock", 1).unwrap();
        assert_eq!(s.addr, NbdAddr::Unix("/run/x.sock".into()));
        assert_eq!(s.export, "pool/v1");
        assert!(NbdSpec::parse("nbd+unix:///x", 1).is_err());
        assert!(NbdSpec::parse("nbd:///x", 1).is_err());
        assert!(NbdSpec::parse("nbd://h/x", 0).is_err());
    }
}

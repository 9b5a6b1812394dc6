//! Ring operations, ownership-passing like tokio-uring: buffers go in by value and come back
//! with the result, so the reactor's in-flight slot can own them while the kernel works.
//!
//! All functions must be awaited on a reactor thread; elsewhere they return
//! [`IoError::NotInReactor`]. EAGAIN/EINTR completions are resubmitted transparently. Errors
//! carry no device context ([`IoError::Os`]); the engines add it.
//!
//! Buffer regions:
//! * `read_at`/`write_at` transfer `buf[..len]` (one op; may be short). `read_exact_at` /
//!   `write_all_at` loop over short transfers; a read that hits EOF fails with
//!   [`IoError::UnexpectedEof`].
//! * `recv` appends: it receives into `buf[len..capacity]` and grows `len`. `recv_into`
//!   receives into an explicit window `buf[range]` (any range within the capacity) and leaves
//!   `len` alone; `recv_exact_into` loops until the window is full (EOF = UnexpectedEof).
//! * `send` sends `buf[..len]` once; `send_all` loops until all of it is sent; `send_range`
//!   sends a window. Sends use MSG_NOSIGNAL (a closed peer gives EPIPE, not SIGPIPE).
//!
//! A file descriptor is passed as [`FileRef`]: a raw fd (kept open by the caller until the op
//! completes) or an index into the ring's registered file table.

use std::ops::Range;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use io_uring::{opcode, squeue, types};

use crate::io::buf::IoBuf;
use crate::io::error::{IoError, OpKind};
use crate::io::op::{run_op, run_read_op, run_write_op};
use crate::io::reactor::{
    current_registered_arena, flush_staged_writes, MsgData, OpData, SockAddrBuf, WriteReq,
};

/// Largest single read/write/send/recv submitted; longer transfers are split by the loops.
const MAX_XFER: usize = 1 << 30;

/// A file for a ring op: a raw descriptor or a registered (fixed) file index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileRef {
    /// A plain descriptor.
    Raw(RawFd),
    /// An index into the current ring's registered file table.
    Fixed(u32),
}

impl From<RawFd> for FileRef {
    fn from(fd: RawFd) -> FileRef {
        FileRef::Raw(fd)
    }
}

/// Build an SQE with either a raw or a fixed fd.
macro_rules! with_fd {
    ($f:expr, |$t:ident| $e:expr) => {
        match $f {
            FileRef::Raw(r) => {
                let $t = types::Fd(r);
                $e
            }
            FileRef::Fixed(i) => {
                let $t = types::Fixed(i);
                $e
            }
        }
    };
}

fn os(op: OpKind, res: i32) -> IoError {
    IoError::Os {
        op,
        errno: res.saturating_neg(),
    }
}

/// A completion's result as a byte count: negative results are the errno of `op`.
fn count(r: Result<i32, IoError>, op: OpKind) -> Result<usize, IoError> {
    match r {
        Ok(n) if n >= 0 => Ok(usize::try_from(n).unwrap_or(0)),
        Ok(n) => Err(os(op, n)),
        Err(e) => Err(e),
    }
}

/// The buffer an op was given back from its slot. The op functions always get back the data
/// they gave, so the other arm is never taken; it maps to `Cancelled` rather than a panic.
fn given_buf(data: OpData) -> Result<IoBuf, IoError> {
    match data {
        OpData::Buf(buf) => Ok(buf),
        _ => Err(IoError::Cancelled),
    }
}

/// The pair an op function returns when its buffer did not come back.
fn lost_buf(e: IoError) -> (Result<usize, IoError>, IoBuf) {
    (Err(e), IoBuf::with_capacity(0))
}

/// Repeat `step` (one op on `buf[at..range.end]`, the `done` bytes before `at` already moved)
/// until `buf[range]` is transferred. A step that moves 0 bytes ends the loop with `on_zero`,
/// given how much was done.
async fn until_full<F, Fut>(
    mut buf: IoBuf,
    range: Range<usize>,
    mut step: F,
    on_zero: impl Fn(usize) -> IoError,
) -> (Result<(), IoError>, IoBuf)
where
    F: FnMut(IoBuf, Range<usize>, usize) -> Fut,
    Fut: std::future::Future<Output = (Result<usize, IoError>, IoBuf)>,
{
    let mut at = range.start;
    while at < range.end {
        let (r, b) = step(buf, at..range.end, at - range.start).await;
        buf = b;
        match r {
            Ok(0) => return (Err(on_zero(at - range.start)), buf),
            Ok(n) => at += n,
            Err(e) => return (Err(e), buf),
        }
    }
    (Ok(()), buf)
}

/// The error of a transfer that hit EOF after `done` of `expected` bytes.
fn eof(op: OpKind, offset: u64, done: usize, expected: usize) -> IoError {
    IoError::UnexpectedEof {
        op,
        offset,
        done: done as u64,
        expected: expected as u64,
    }
}

fn to_u32(n: usize) -> u32 {
    u32::try_from(n.min(MAX_XFER)).unwrap_or(u32::MAX)
}

/// Fixed-buffer index usable for `buf` on this ring, if any.
fn fixed_index(buf: &IoBuf) -> Option<u16> {
    let (idx, arena) = buf.fixed()?;
    (current_registered_arena() == Some(arena)).then_some(idx)
}

/// Read into `buf[range]` at `offset` (one op). `range` must lie within the capacity.
async fn read_window(
    fd: FileRef,
    mut buf: IoBuf,
    range: Range<usize>,
    offset: u64,
) -> (Result<usize, IoError>, IoBuf) {
    if range.start > range.end || range.end > buf.capacity() {
        return (Err(os(OpKind::Read, -libc::EINVAL)), buf);
    }
    // SAFETY: range.start <= capacity, so the pointer stays within (or one past) the block.
    let ptr = unsafe { buf.as_mut_ptr().add(range.start) };
    let len = to_u32(range.end - range.start);
    let fixed = fixed_index(&buf);
    let make = move |_: &mut OpData| -> squeue::Entry {
        match fixed {
            Some(idx) => with_fd!(fd, |f| opcode::ReadFixed::new(f, ptr, len, idx)
                .offset(offset)
                .build()),
            None => with_fd!(fd, |f| opcode::Read::new(f, ptr, len)
                .offset(offset)
                .build()),
        }
    };
    let (r, data) = run_read_op(make, fd, len, OpData::Buf(buf)).await;
    match given_buf(data) {
        Ok(buf) => (count(r, OpKind::Read), buf),
        Err(e) => lost_buf(e),
    }
}

/// Write `buf[range]` at `offset` (one op; the reactor may merge it with adjacent writes of
/// the same turn into one vectored write, see `ReactorConfig::write_aggregate`).
async fn write_window(
    fd: FileRef,
    buf: IoBuf,
    range: Range<usize>,
    offset: u64,
) -> (Result<usize, IoError>, IoBuf) {
    if range.start > range.end || range.end > buf.capacity() {
        return (Err(os(OpKind::Write, -libc::EINVAL)), buf);
    }
    // SAFETY: range.start <= capacity.
    let ptr = unsafe { buf.as_ptr().add(range.start) };
    let len = to_u32(range.end - range.start);
    let fixed = fixed_index(&buf);
    let make = move |_: &mut OpData| -> WriteReq {
        let single = match fixed {
            Some(idx) => with_fd!(fd, |f| opcode::WriteFixed::new(f, ptr, len, idx)
                .offset(offset)
                .build()),
            None => with_fd!(fd, |f| opcode::Write::new(f, ptr, len)
                .offset(offset)
                .build()),
        };
        WriteReq {
            fd,
            offset,
            ptr,
            len,
            fixed,
            single,
        }
    };
    let (r, data) = run_write_op(make, OpData::Buf(buf)).await;
    match given_buf(data) {
        Ok(buf) => (count(r, OpKind::Write), buf),
        Err(e) => lost_buf(e),
    }
}

/// Read up to `buf.len()` bytes at `offset` into `buf[..len]` (one op; may be short).
pub async fn read_at(
    fd: impl Into<FileRef>,
    buf: IoBuf,
    offset: u64,
) -> (Result<usize, IoError>, IoBuf) {
    let len = buf.len();
    read_window(fd.into(), buf, 0..len, offset).await
}

/// Write up to `buf.len()` bytes of `buf[..len]` at `offset` (one op; may be short).
pub async fn write_at(
    fd: impl Into<FileRef>,
    buf: IoBuf,
    offset: u64,
) -> (Result<usize, IoError>, IoBuf) {
    let len = buf.len();
    write_window(fd.into(), buf, 0..len, offset).await
}

/// Read exactly `buf.len()` bytes at `offset`, continuing after short reads.
pub async fn read_exact_at(
    fd: impl Into<FileRef>,
    buf: IoBuf,
    offset: u64,
) -> (Result<(), IoError>, IoBuf) {
    let len = buf.len();
    read_exact_range(fd, buf, 0..len, offset).await
}

/// Read exactly `range.len()` bytes at `offset` into `buf[range]` (the rest of `buf` is left
/// alone), continuing after short reads. `range` must lie within the capacity.
pub async fn read_exact_range(
    fd: impl Into<FileRef>,
    buf: IoBuf,
    range: Range<usize>,
    offset: u64,
) -> (Result<(), IoError>, IoBuf) {
    let fd = fd.into();
    let total = range.len();
    until_full(
        buf,
        range,
        |buf, rest, done| read_window(fd, buf, rest, offset + done as u64),
        |done| eof(OpKind::Read, offset, done, total),
    )
    .await
}

/// Write all of `buf[..len]` at `offset`, continuing after short writes.
pub async fn write_all_at(
    fd: impl Into<FileRef>,
    buf: IoBuf,
    offset: u64,
) -> (Result<(), IoError>, IoBuf) {
    let fd = fd.into();
    let total = buf.len();
    until_full(
        buf,
        0..total,
        |buf, rest, done| write_window(fd, buf, rest, offset + done as u64),
        |done| eof(OpKind::Write, offset, done, total),
    )
    .await
}

/// fsync (or fdatasync when `datasync`) through the ring.
pub async fn fsync(fd: impl Into<FileRef>, datasync: bool) -> Result<(), IoError> {
    let fd = fd.into();
    // Writes made before this fsync reach the SQ before it (see `flush_staged_writes`).
    flush_staged_writes();
    let flags = if datasync {
        types::FsyncFlags::DATASYNC
    } else {
        types::FsyncFlags::empty()
    };
    let make = move |_: &mut OpData| with_fd!(fd, |f| opcode::Fsync::new(f).flags(flags).build());
    count(run_op(make, OpData::None).await.0, OpKind::Flush).map(|_| ())
}

/// fallocate(2) through the ring (`mode` as in fallocate, e.g.
/// `FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE`).
pub async fn fallocate(
    fd: impl Into<FileRef>,
    mode: i32,
    offset: u64,
    len: u64,
) -> Result<(), IoError> {
    let fd = fd.into();
    flush_staged_writes();
    let make = move |_: &mut OpData| {
        with_fd!(fd, |f| opcode::Fallocate::new(f, len)
            .offset(offset)
            .mode(mode)
            .build())
    };
    count(run_op(make, OpData::None).await.0, OpKind::Fallocate).map(|_| ())
}

/// `BLOCK_URING_CMD_DISCARD` (`_IO(0x12, 0)`), Linux 6.12+.
const BLOCK_URING_CMD_DISCARD: u32 = 0x1200;

/// Discard `[offset, offset+len)` of a block device through the ring (the block layer's
/// uring_cmd, Linux 6.12+; asynchronous, unlike the BLKDISCARD ioctl). The descriptor must be
/// open for writing. Older kernels answer EINVAL/EOPNOTSUPP/ENOTTY: callers fall back to the
/// ioctl.
pub async fn block_discard(fd: impl Into<FileRef>, offset: u64, len: u64) -> Result<(), IoError> {
    let fd = fd.into();
    flush_staged_writes();
    // The 16-byte command area starts at the SQE's addr3 field, which carries the length.
    let mut cmd = [0u8; 16];
    cmd[..8].copy_from_slice(&len.to_ne_bytes());
    let make = move |_: &mut OpData| {
        with_fd!(fd, |f| opcode::UringCmd16::new(f, BLOCK_URING_CMD_DISCARD)
            .addr(Some(offset))
            .cmd(cmd)
            .build())
    };
    count(run_op(make, OpData::None).await.0, OpKind::Discard).map(|_| ())
}

/// Receive into `buf[range]` (one op). Returns the byte count (0 = EOF). `len` is unchanged.
pub async fn recv_into(
    fd: impl Into<FileRef>,
    mut buf: IoBuf,
    range: Range<usize>,
) -> (Result<usize, IoError>, IoBuf) {
    let fd = fd.into();
    if range.start > range.end || range.end > buf.capacity() {
        return (Err(os(OpKind::Recv, -libc::EINVAL)), buf);
    }
    // SAFETY: range.start <= capacity.
    let ptr = unsafe { buf.as_mut_ptr().add(range.start) };
    let len = to_u32(range.end - range.start);
    let make = move |_: &mut OpData| with_fd!(fd, |f| opcode::Recv::new(f, ptr, len).build());
    let (r, data) = run_op(make, OpData::Buf(buf)).await;
    match given_buf(data) {
        Ok(buf) => (count(r, OpKind::Recv), buf),
        Err(e) => lost_buf(e),
    }
}

/// Receive into the spare capacity `buf[len..capacity]` and grow `len` (one op).
pub async fn recv(fd: impl Into<FileRef>, buf: IoBuf) -> (Result<usize, IoError>, IoBuf) {
    let start = buf.len();
    let cap = buf.capacity();
    let (r, mut buf) = recv_into(fd, buf, start..cap).await;
    if let Ok(n) = r {
        buf.set_len(start + n);
    }
    (r, buf)
}

/// Receive until `buf[range]` is full. EOF before that is [`IoError::UnexpectedEof`].
pub async fn recv_exact_into(
    fd: impl Into<FileRef>,
    buf: IoBuf,
    range: Range<usize>,
) -> (Result<(), IoError>, IoBuf) {
    let fd = fd.into();
    let total = range.len();
    until_full(
        buf,
        range,
        |buf, rest, _| recv_into(fd, buf, rest),
        |done| eof(OpKind::Recv, 0, done, total),
    )
    .await
}

/// Send `buf[range]` once (may be short).
pub async fn send_range(
    fd: impl Into<FileRef>,
    buf: IoBuf,
    range: Range<usize>,
) -> (Result<usize, IoError>, IoBuf) {
    send_range_flags(fd.into(), buf, range, squeue::Flags::empty()).await
}

async fn send_range_flags(
    fd: FileRef,
    buf: IoBuf,
    range: Range<usize>,
    sqe_flags: squeue::Flags,
) -> (Result<usize, IoError>, IoBuf) {
    if range.start > range.end || range.end > buf.capacity() {
        return (Err(os(OpKind::Send, -libc::EINVAL)), buf);
    }
    // SAFETY: range.start <= capacity.
    let ptr = unsafe { buf.as_ptr().add(range.start) };
    let len = to_u32(range.end - range.start);
    let make = move |_: &mut OpData| {
        with_fd!(fd, |f| opcode::Send::new(f, ptr, len)
            .flags(libc::MSG_NOSIGNAL)
            .build()
            .flags(sqe_flags))
    };
    let (r, data) = run_op(make, OpData::Buf(buf)).await;
    match given_buf(data) {
        Ok(buf) => (count(r, OpKind::Send), buf),
        Err(e) => lost_buf(e),
    }
}

/// Send `buf[..len]` once (may be short).
pub async fn send(fd: impl Into<FileRef>, buf: IoBuf) -> (Result<usize, IoError>, IoBuf) {
    let len = buf.len();
    send_range(fd, buf, 0..len).await
}

/// Send all of `buf[..len]`.
pub async fn send_all(fd: impl Into<FileRef>, buf: IoBuf) -> (Result<(), IoError>, IoBuf) {
    let total = buf.len();
    send_all_range(fd.into(), buf, 0..total, squeue::Flags::empty()).await
}

/// Send all of `buf[range]` (more sends after short ones).
async fn send_all_range(
    fd: FileRef,
    buf: IoBuf,
    range: Range<usize>,
    sqe_flags: squeue::Flags,
) -> (Result<(), IoError>, IoBuf) {
    until_full(
        buf,
        range,
        |buf, rest, _| send_range_flags(fd, buf, rest, sqe_flags),
        |_| os(OpKind::Send, -libc::EPIPE),
    )
    .await
}

/// Upper bound on buffers per vectored send (Linux IOV_MAX).
pub const MAX_IOVECS: usize = 1024;

/// One sendmsg of `bufs[i][ranges[i]]` for `i >= first`, skipping `skip` bytes of the first
/// one; with `sqe_flags` ASYNC from an io-wq worker (see [`send_all_ranges`]).
async fn sendmsg_from(
    fd: FileRef,
    bufs: Vec<IoBuf>,
    ranges: &[Range<usize>],
    first: usize,
    skip: usize,
    sqe_flags: squeue::Flags,
) -> (Result<usize, IoError>, Vec<IoBuf>) {
    if bufs.len().saturating_sub(first) > MAX_IOVECS || ranges.len() != bufs.len() {
        return (Err(os(OpKind::Send, -libc::EINVAL)), bufs);
    }
    let mut iov = Vec::with_capacity(bufs.len() - first);
    for (i, (b, r)) in bufs.iter().zip(ranges).enumerate().skip(first) {
        if r.start > r.end || r.end > b.capacity() {
            return (Err(os(OpKind::Send, -libc::EINVAL)), bufs);
        }
        let off = if i == first {
            r.start + skip.min(r.len())
        } else {
            r.start
        };
        iov.push(libc::iovec {
            // SAFETY: off <= r.end <= capacity (checked above).
            iov_base: unsafe { b.as_ptr().add(off) }
                .cast_mut()
                .cast::<libc::c_void>(),
            iov_len: r.end - off,
        });
    }
    // SAFETY: msghdr is plain old data; all-zero is a valid empty header.
    let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
    hdr.msg_iov = iov.as_mut_ptr();
    hdr.msg_iovlen = iov.len();
    let msg = Box::new(MsgData { bufs, iov, hdr });
    // Heap addresses: the box, the iovec array (never resized again) and the IoBuf memory
    // all stay put while the slot owns `msg`.
    let hdr_ptr = std::ptr::from_ref(&msg.hdr);
    let make = move |_: &mut OpData| {
        with_fd!(fd, |f| opcode::SendMsg::new(f, hdr_ptr)
            .flags(u32::try_from(libc::MSG_NOSIGNAL).unwrap_or(0))
            .build()
            .flags(sqe_flags))
    };
    let (r, data) = run_op(make, OpData::Msg(msg)).await;
    let OpData::Msg(msg) = data else {
        return (Err(IoError::Cancelled), Vec::new());
    };
    (count(r, OpKind::Send), msg.bufs)
}

fn whole(bufs: &[IoBuf]) -> Vec<Range<usize>> {
    bufs.iter().map(|b| 0..b.len()).collect()
}

/// Send `buf[..len]` of every buffer in order with one sendmsg (may be short). At most
/// [`MAX_IOVECS`] buffers. Lets a server send a reply header and its payload in one op.
pub async fn send_vectored(
    fd: impl Into<FileRef>,
    bufs: Vec<IoBuf>,
) -> (Result<usize, IoError>, Vec<IoBuf>) {
    let ranges = whole(&bufs);
    sendmsg_from(fd.into(), bufs, &ranges, 0, 0, squeue::Flags::empty()).await
}

/// Send all bytes of all buffers in order, continuing after short sends.
pub async fn send_all_vectored(
    fd: impl Into<FileRef>,
    bufs: Vec<IoBuf>,
) -> (Result<(), IoError>, Vec<IoBuf>) {
    let ranges = whole(&bufs);
    send_all_ranges(fd, bufs, ranges, false).await
}

/// Send all of `bufs[i][ranges[i]]` in order (one sendmsg, more after short sends).
///
/// With `offload` the sendmsg runs on one of the kernel's io-wq worker threads
/// (IOSQE_ASYNC) instead of inside the reactor's `io_uring_enter`. A socket send copies its
/// bytes into the socket buffer and, on a local connection, also does the receiver's wake-up:
/// for large read replies that is most of a reactor's CPU per request, which a worker can
/// spend on another core while the reactor goes on with the next requests. When the socket
/// is full the worker arms a poll and the retry runs like any other op.
pub async fn send_all_ranges(
    fd: impl Into<FileRef>,
    mut bufs: Vec<IoBuf>,
    ranges: Vec<Range<usize>>,
    offload: bool,
) -> (Result<(), IoError>, Vec<IoBuf>) {
    let fd = fd.into();
    let flags = if offload {
        squeue::Flags::ASYNC
    } else {
        squeue::Flags::empty()
    };
    if let ([_], [range]) = (bufs.as_slice(), ranges.as_slice()) {
        // One buffer: a plain send (no message header to build and copy in).
        let Some(buf) = bufs.pop() else {
            return (Ok(()), bufs);
        };
        let (r, buf) = send_all_range(fd, buf, range.clone(), flags).await;
        bufs.push(buf);
        return (r, bufs);
    }
    let (mut first, mut skip) = (0usize, 0usize);
    loop {
        // Skip ranges that are fully sent (and empty ones).
        while first < ranges.len() && skip >= ranges[first].len() {
            skip -= ranges[first].len();
            first += 1;
        }
        if first >= ranges.len() {
            return (Ok(()), bufs);
        }
        let (r, b) = sendmsg_from(fd, bufs, &ranges, first, skip, flags).await;
        bufs = b;
        match r {
            Ok(0) => return (Err(os(OpKind::Send, -libc::EPIPE)), bufs),
            Ok(n) => skip += n,
            Err(e) => return (Err(e), bufs),
        }
    }
}

/// Connect a socket to `addr` through the ring.
pub async fn connect(fd: impl Into<FileRef>, addr: &std::net::SocketAddr) -> Result<(), IoError> {
    connect_raw(fd.into(), crate::io::net::sockaddr_from(addr)).await
}

/// Accept one connection on a listening socket (the new fd is CLOEXEC).
pub async fn accept(fd: impl Into<FileRef>) -> Result<OwnedFd, IoError> {
    let fd = fd.into();
    let make = move |_: &mut OpData| {
        with_fd!(fd, |f| opcode::Accept::new(
            f,
            std::ptr::null_mut(),
            std::ptr::null_mut()
        )
        .flags(libc::SOCK_CLOEXEC)
        .build())
    };
    match run_op(make, OpData::None).await.0 {
        // SAFETY: a non-negative accept result is a fresh descriptor owned by us.
        Ok(n) if n >= 0 => Ok(unsafe { OwnedFd::from_raw_fd(n) }),
        Ok(n) => Err(os(OpKind::Accept, n)),
        Err(e) => Err(e),
    }
}

/// Connect a socket to `addr` through the ring.
pub(crate) async fn connect_raw(fd: FileRef, addr: SockAddrBuf) -> Result<(), IoError> {
    let addr = Box::new(addr);
    let ptr = std::ptr::from_ref(&addr.storage).cast::<libc::sockaddr>();
    let len = addr.len;
    let make = move |_: &mut OpData| with_fd!(fd, |f| opcode::Connect::new(f, ptr, len).build());
    count(run_op(make, OpData::Addr(addr)).await.0, OpKind::Connect).map(|_| ())
}

/// Shut down one or both directions of a socket (plain syscall; never blocks).
pub fn shutdown(fd: RawFd, how: std::net::Shutdown) -> Result<(), IoError> {
    let how = match how {
        std::net::Shutdown::Read => libc::SHUT_RD,
        std::net::Shutdown::Write => libc::SHUT_WR,
        std::net::Shutdown::Both => libc::SHUT_RDWR,
    };
    // SAFETY: plain syscall on a descriptor number.
    if unsafe { libc::shutdown(fd, how) } < 0 {
        return Err(IoError::last_os(OpKind::Other));
    }
    Ok(())
}

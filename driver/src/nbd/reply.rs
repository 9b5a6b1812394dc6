//! Transmission reply encoding: simple replies, structured chunks and extended-header chunks.
//!
//! The encoders write headers only; bulk read data never passes through here. A READ reply
//! places its header directly in front of the data inside the reply buffer (see
//! [`ReplyMode::read_prefix_len`]), so one send carries header and data without a copy.

use super::proto::{self, chunk, chunk_flags, Errno};

/// How replies are framed, fixed by the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReplyMode {
    /// 16-byte simple replies only.
    Simple,
    /// Structured chunks (20-byte headers) for READ and BLOCK_STATUS; simple replies otherwise.
    Structured,
    /// Extended headers: 32-byte requests and 32-byte chunks for everything.
    Extended,
}

/// The longest header that precedes read data ([`ReplyMode::Extended`]).
pub const MAX_READ_PREFIX: usize = proto::EXT_HEADER_LEN + 8;

impl ReplyMode {
    /// Structured replies (or extended headers) were negotiated.
    pub fn structured(self) -> bool {
        self != ReplyMode::Simple
    }

    /// Length of a request header in this mode.
    pub fn request_header_len(self) -> usize {
        match self {
            ReplyMode::Extended => proto::EXT_REQUEST_LEN,
            _ => proto::REQUEST_LEN,
        }
    }

    /// Bytes of header in front of the data of a one-chunk READ reply.
    pub fn read_prefix_len(self) -> usize {
        match self {
            ReplyMode::Simple => proto::SIMPLE_REPLY_LEN,
            ReplyMode::Structured => proto::STRUCTURED_HEADER_LEN + 8,
            ReplyMode::Extended => proto::EXT_HEADER_LEN + 8,
        }
    }
}

/// One `base:allocation` extent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// Length in bytes.
    pub length: u64,
    /// [`proto::state`] flags.
    pub flags: u32,
}

fn simple(out: &mut Vec<u8>, errno: u32, cookie: u64) {
    out.extend_from_slice(&proto::SIMPLE_REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&errno.to_be_bytes());
    out.extend_from_slice(&cookie.to_be_bytes());
}

/// Appends a chunk header (structured or extended). `payload_len` must fit u32 when structured;
/// callers keep every structured payload below 4 GiB (reads are capped by the max payload).
fn chunk_header(
    out: &mut Vec<u8>,
    mode: ReplyMode,
    flags: u16,
    kind: u16,
    cookie: u64,
    req_offset: u64,
    payload_len: u64,
) {
    match mode {
        ReplyMode::Extended => {
            out.extend_from_slice(&proto::EXT_REPLY_MAGIC.to_be_bytes());
            out.extend_from_slice(&flags.to_be_bytes());
            out.extend_from_slice(&kind.to_be_bytes());
            out.extend_from_slice(&cookie.to_be_bytes());
            out.extend_from_slice(&req_offset.to_be_bytes());
            out.extend_from_slice(&payload_len.to_be_bytes());
        }
        _ => {
            out.extend_from_slice(&proto::STRUCTURED_REPLY_MAGIC.to_be_bytes());
            out.extend_from_slice(&flags.to_be_bytes());
            out.extend_from_slice(&kind.to_be_bytes());
            out.extend_from_slice(&cookie.to_be_bytes());
            out.extend_from_slice(&u32::try_from(payload_len).unwrap_or(u32::MAX).to_be_bytes());
        }
    }
}

fn done_flag(done: bool) -> u16 {
    if done {
        chunk_flags::DONE
    } else {
        0
    }
}

/// Writes into `dst` the header of a READ reply whose `data_len` bytes follow it directly and
/// belong at `data_offset`. Returns the header length ([`ReplyMode::read_prefix_len`]).
///
/// Simple mode ignores the offsets and `done` (a simple reply is always complete).
/// `dst` must hold at least [`MAX_READ_PREFIX`] bytes; a shorter one gets nothing written and 0
/// returned, which the caller treats as a bug.
pub fn read_data_header(
    dst: &mut [u8],
    mode: ReplyMode,
    cookie: u64,
    req_offset: u64,
    data_offset: u64,
    data_len: u64,
    done: bool,
) -> usize {
    let n = mode.read_prefix_len();
    if dst.len() < n {
        return 0;
    }
    let mut v = Vec::with_capacity(MAX_READ_PREFIX);
    match mode {
        ReplyMode::Simple => simple(&mut v, 0, cookie),
        _ => {
            chunk_header(
                &mut v,
                mode,
                done_flag(done),
                chunk::OFFSET_DATA,
                cookie,
                req_offset,
                data_len + 8,
            );
            v.extend_from_slice(&data_offset.to_be_bytes());
        }
    }
    dst[..n].copy_from_slice(&v);
    n
}

/// Appends an OFFSET_HOLE chunk (structured modes only): `hole_len` zero bytes at `hole_offset`.
pub fn hole_chunk(
    out: &mut Vec<u8>,
    mode: ReplyMode,
    cookie: u64,
    req_offset: u64,
    hole_offset: u64,
    hole_len: u32,
    done: bool,
) {
    chunk_header(
        out,
        mode,
        done_flag(done),
        chunk::OFFSET_HOLE,
        cookie,
        req_offset,
        12,
    );
    out.extend_from_slice(&hole_offset.to_be_bytes());
    out.extend_from_slice(&hole_len.to_be_bytes());
}

/// Appends the reply of a successful command without data: a simple reply, or under extended
/// headers (where simple replies are forbidden) a NONE chunk with DONE.
pub fn success(out: &mut Vec<u8>, mode: ReplyMode, cookie: u64, req_offset: u64) {
    match mode {
        ReplyMode::Extended => chunk_header(
            out,
            mode,
            chunk_flags::DONE,
            chunk::NONE,
            cookie,
            req_offset,
            0,
        ),
        _ => simple(out, 0, cookie),
    }
}

/// Appends a final NONE chunk (ends a structured reply whose other chunks went out earlier).
/// In simple mode this is a plain success reply.
pub fn none_done(out: &mut Vec<u8>, mode: ReplyMode, cookie: u64, req_offset: u64) {
    match mode {
        ReplyMode::Simple => simple(out, 0, cookie),
        _ => chunk_header(
            out,
            mode,
            chunk_flags::DONE,
            chunk::NONE,
            cookie,
            req_offset,
            0,
        ),
    }
}

/// `msg` as an ERROR or ERROR_OFFSET chunk carries it (cut to the protocol's longest
/// string), with its length field.
fn error_message(msg: &str) -> (&[u8], u16) {
    let b = msg.as_bytes();
    let m = &b[..b.len().min(proto::MAX_STRING_LEN)];
    let mlen = u16::try_from(m.len()).unwrap_or(0);
    (&m[..usize::from(mlen)], mlen)
}

/// The part an ERROR and an ERROR_OFFSET chunk share: errno, message length, message.
fn push_error_body(out: &mut Vec<u8>, errno: Errno, m: &[u8], mlen: u16) {
    out.extend_from_slice(&errno.code().to_be_bytes());
    out.extend_from_slice(&mlen.to_be_bytes());
    out.extend_from_slice(m);
}

/// Appends a final error reply: a simple reply with the errno, or an ERROR chunk (with DONE)
/// carrying `msg` for humans.
pub fn error(
    out: &mut Vec<u8>,
    mode: ReplyMode,
    cookie: u64,
    req_offset: u64,
    errno: Errno,
    msg: &str,
) {
    match mode {
        ReplyMode::Simple => simple(out, errno.code(), cookie),
        _ => {
            let (m, mlen) = error_message(msg);
            chunk_header(
                out,
                mode,
                chunk_flags::DONE,
                chunk::ERROR,
                cookie,
                req_offset,
                6 + u64::from(mlen),
            );
            push_error_body(out, errno, m, mlen);
        }
    }
}

/// Appends an ERROR_OFFSET chunk (structured modes): the read failed at `at`. `done` ends the reply.
#[allow(clippy::too_many_arguments)]
pub fn error_offset(
    out: &mut Vec<u8>,
    mode: ReplyMode,
    cookie: u64,
    req_offset: u64,
    errno: Errno,
    msg: &str,
    at: u64,
    done: bool,
) {
    let (m, mlen) = error_message(msg);
    chunk_header(
        out,
        mode,
        done_flag(done),
        chunk::ERROR_OFFSET,
        cookie,
        req_offset,
        14 + u64::from(mlen),
    );
    push_error_body(out, errno, m, mlen);
    out.extend_from_slice(&at.to_be_bytes());
}

/// Largest extent length a compact BLOCK_STATUS descriptor can carry, kept 64 KiB aligned.
const MAX_COMPACT_EXTENT: u64 = (u32::MAX as u64) & !0xffff;

/// Appends one BLOCK_STATUS chunk (BLOCK_STATUS_EXT under extended headers) for context `ctx`.
/// Extents that do not fit a 32-bit descriptor end the list (clamped): fewer extents are allowed.
/// Returns the number of extents encoded.
pub fn block_status(
    out: &mut Vec<u8>,
    mode: ReplyMode,
    cookie: u64,
    req_offset: u64,
    ctx: u32,
    extents: &[Extent],
    done: bool,
) -> usize {
    match mode {
        ReplyMode::Extended => {
            let n = extents.len().min(1 << 20);
            let count = u32::try_from(n).unwrap_or(u32::MAX);
            let len = 8 + 16 * u64::from(count);
            chunk_header(
                out,
                mode,
                done_flag(done),
                chunk::BLOCK_STATUS_EXT,
                cookie,
                req_offset,
                len,
            );
            out.extend_from_slice(&ctx.to_be_bytes());
            out.extend_from_slice(&count.to_be_bytes());
            for e in &extents[..n] {
                out.extend_from_slice(&e.length.to_be_bytes());
                out.extend_from_slice(&u64::from(e.flags).to_be_bytes());
            }
            n
        }
        _ => {
            let mut n = 0usize;
            let mut clamp_last = false;
            for e in extents.iter().take(1 << 20) {
                n += 1;
                if e.length > u64::from(u32::MAX) {
                    clamp_last = true;
                    break;
                }
            }
            let len = 4 + 8 * u64::try_from(n).unwrap_or(0);
            chunk_header(
                out,
                mode,
                done_flag(done),
                chunk::BLOCK_STATUS,
                cookie,
                req_offset,
                len,
            );
            out.extend_from_slice(&ctx.to_be_bytes());
            for (i, e) in extents[..n].iter().enumerate() {
                let l = if clamp_last && i + 1 == n {
                    MAX_COMPACT_EXTENT
                } else {
                    e.length
                };
                out.extend_from_slice(&u32::try_from(l).unwrap_or(u32::MAX).to_be_bytes());
                out.extend_from_slice(&e.flags.to_be_bytes());
            }
            n
        }
    }
}

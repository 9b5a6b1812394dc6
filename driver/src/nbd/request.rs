//! Transmission request decoding and validation (sans-IO).
//!
//! [`RequestDecoder::decode`] turns one request header into either a validated [`Command`] or a
//! [`Rejection`] carrying the errno to reply with. Either way it says how many payload bytes
//! follow the header ([`Request::payload_len`]): the connection must consume them (into the
//! write buffer, or discarded for a rejected write) before the next header, or the stream
//! desyncs. Only unrecoverable framing errors are [`RequestError`]s (hard disconnect).

use super::proto::{self, be, cflags, cmd, tflags, Errno};
use super::reply::ReplyMode;

/// What the decoder knows about the session.
#[derive(Debug, Clone)]
pub struct RequestDecoder {
    /// Reply mode (extended mode also means 32-byte request headers).
    pub mode: ReplyMode,
    /// Export size in bytes.
    pub size: u64,
    /// Transmission flags advertised.
    pub flags: u16,
    /// Minimum block size (power of two): offsets and lengths must be multiples.
    pub min_block: u32,
    /// Largest READ/WRITE payload.
    pub max_payload: u32,
    /// Largest oversized write payload that is discarded (with EINVAL) instead of disconnecting.
    pub max_discard: u64,
    /// `base:allocation` context id, if negotiated.
    pub base_allocation: Option<u32>,
}

/// A validated command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Read `length` bytes at `offset`; `df`: reply in one data chunk.
    Read {
        /// Byte offset.
        offset: u64,
        /// Length (at most the max payload).
        length: u32,
        /// Do not fragment.
        df: bool,
    },
    /// Write the `length`-byte payload at `offset`.
    Write {
        /// Byte offset.
        offset: u64,
        /// Payload length.
        length: u32,
        /// Force unit access.
        fua: bool,
    },
    /// Make every acknowledged write durable.
    Flush,
    /// Discard a range.
    Trim {
        /// Byte offset.
        offset: u64,
        /// Length.
        length: u64,
        /// Force unit access.
        fua: bool,
    },
    /// Zero a range.
    WriteZeroes {
        /// Byte offset.
        offset: u64,
        /// Length.
        length: u64,
        /// Force unit access.
        fua: bool,
        /// Holes may be punched (NO_HOLE clear).
        may_trim: bool,
        /// FAST_ZERO: fail with ENOTSUP rather than write zeroes slowly.
        fast_only: bool,
    },
    /// Prefetch hint.
    Cache {
        /// Byte offset.
        offset: u64,
        /// Length.
        length: u64,
    },
    /// Allocation status of a range.
    BlockStatus {
        /// Byte offset.
        offset: u64,
        /// Length.
        length: u64,
        /// One extent only.
        req_one: bool,
        /// Context id to answer for.
        context: u32,
    },
    /// Soft disconnect: finish in-flight requests, then close. No reply.
    Disconnect,
}

/// A request refused with an error reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejection {
    /// Error to reply with.
    pub errno: Errno,
    /// Why (sent as the message of a structured error chunk).
    pub reason: &'static str,
}

/// One decoded request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// Opaque cookie (handle) to echo.
    pub cookie: u64,
    /// Raw offset field (echoed in extended replies).
    pub offset: u64,
    /// Command type as sent.
    pub kind: u16,
    /// Payload bytes that follow the header and must be consumed.
    pub payload_len: u64,
    /// The command, or why it is refused.
    pub command: Result<Command, Rejection>,
}

/// Framing errors after which the stream cannot be trusted: hard disconnect.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// The header did not start with the request magic of the negotiated mode.
    #[error("bad request magic {0:#010x}")]
    BadMagic(u32),
    /// The header slice had the wrong length (a driver bug).
    #[error("request header of {0} bytes")]
    BadHeaderLength(usize),
    /// A payload too large to be skipped safely.
    #[error("payload of {0} bytes exceeds the limit")]
    PayloadTooLarge(u64),
}

fn reject(errno: Errno, reason: &'static str) -> Result<Command, Rejection> {
    Err(Rejection { errno, reason })
}

impl RequestDecoder {
    /// Length of a request header in this session.
    pub fn header_len(&self) -> usize {
        self.mode.request_header_len()
    }

    /// Decodes one request header (exactly [`RequestDecoder::header_len`] bytes).
    pub fn decode(&self, h: &[u8]) -> Result<Request, RequestError> {
        if h.len() != self.header_len() {
            return Err(RequestError::BadHeaderLength(h.len()));
        }
        let extended = self.mode == ReplyMode::Extended;
        let magic = be::u32_at(h, 0).unwrap_or(0);
        let want = if extended {
            proto::EXT_REQUEST_MAGIC
        } else {
            proto::REQUEST_MAGIC
        };
        if magic != want {
            return Err(RequestError::BadMagic(magic));
        }
        let flags = be::u16_at(h, 4).unwrap_or(0);
        let kind = be::u16_at(h, 6).unwrap_or(0);
        let cookie = be::u64_at(h, 8).unwrap_or(0);
        let offset = be::u64_at(h, 16).unwrap_or(0);
        let length = if extended {
            be::u64_at(h, 24).unwrap_or(0)
        } else {
            u64::from(be::u32_at(h, 24).unwrap_or(0))
        };
        // How many bytes follow: a write always carries `length` bytes; under extended headers
        // any command flagged PAYLOAD_LEN does too (we advertise no such command, so it is
        // consumed and refused).
        let payload_len = if kind == cmd::WRITE || (extended && flags & cflags::PAYLOAD_LEN != 0) {
            length
        } else {
            0
        };
        let max = u64::from(self.max_payload);
        if payload_len > max && (extended || payload_len > self.max_discard) {
            return Err(RequestError::PayloadTooLarge(payload_len));
        }
        let command = if payload_len > max {
            reject(Errno::Inval, "payload larger than the maximum payload size")
        } else {
            self.validate(kind, flags, offset, length, extended)
        };
        Ok(Request {
            cookie,
            offset,
            kind,
            payload_len,
            command,
        })
    }

    fn validate(
        &self,
        kind: u16,
        flags: u16,
        offset: u64,
        length: u64,
        extended: bool,
    ) -> Result<Command, Rejection> {
        let fua_ok = self.flags & tflags::SEND_FUA != 0;
        let structured = self.mode.structured();
        let mut allowed: u16 = if fua_ok { cflags::FUA } else { 0 };
        match kind {
            cmd::READ if structured && self.flags & tflags::SEND_DF != 0 => allowed |= cflags::DF,
            cmd::WRITE if extended => allowed |= cflags::PAYLOAD_LEN,
            cmd::WRITE_ZEROES => allowed |= cflags::NO_HOLE | cflags::FAST_ZERO,
            cmd::BLOCK_STATUS => allowed |= cflags::REQ_ONE,
            cmd::DISC => return Ok(Command::Disconnect),
            _ => {}
        }
        if !matches!(
            kind,
            cmd::READ
                | cmd::WRITE
                | cmd::FLUSH
                | cmd::TRIM
                | cmd::CACHE
                | cmd::WRITE_ZEROES
                | cmd::BLOCK_STATUS
        ) {
            return reject(Errno::Inval, "unknown command");
        }
        if flags & !allowed != 0 {
            return reject(Errno::Inval, "unknown or inapplicable command flag");
        }
        let fua = flags & cflags::FUA != 0;
        if kind == cmd::FLUSH {
            return Ok(Command::Flush);
        }
        let writes = matches!(kind, cmd::WRITE | cmd::TRIM | cmd::WRITE_ZEROES);
        if writes && self.flags & tflags::READ_ONLY != 0 {
            return reject(Errno::Perm, "export is read-only");
        }
        if (kind == cmd::TRIM && self.flags & tflags::SEND_TRIM == 0)
            || (kind == cmd::WRITE_ZEROES && self.flags & tflags::SEND_WRITE_ZEROES == 0)
            || (kind == cmd::CACHE && self.flags & tflags::SEND_CACHE == 0)
        {
            return reject(Errno::Inval, "command not advertised");
        }
        let mask = u64::from(self.min_block.max(1)) - 1;
        if offset & mask != 0 || length & mask != 0 {
            return reject(
                Errno::Inval,
                "request not aligned to the minimum block size",
            );
        }
        let in_range = offset
            .checked_add(length)
            .is_some_and(|end| end <= self.size);
        if !in_range {
            let e = if matches!(kind, cmd::WRITE | cmd::WRITE_ZEROES) {
                Errno::NoSpc
            } else {
                Errno::Inval
            };
            return reject(e, "request beyond the end of the export");
        }
        let max = u64::from(self.max_payload);
        match kind {
            cmd::READ => {
                if length > max {
                    return reject(Errno::Inval, "read larger than the maximum payload size");
                }
                let length = u32::try_from(length).unwrap_or(u32::MAX);
                Ok(Command::Read {
                    offset,
                    length,
                    df: flags & cflags::DF != 0,
                })
            }
            cmd::WRITE => {
                let length = u32::try_from(length).unwrap_or(u32::MAX);
                Ok(Command::Write {
                    offset,
                    length,
                    fua,
                })
            }
            cmd::TRIM => Ok(Command::Trim {
                offset,
                length,
                fua,
            }),
            cmd::WRITE_ZEROES => {
                let fast_only = flags & cflags::FAST_ZERO != 0;
                if fast_only && self.flags & tflags::SEND_FAST_ZERO == 0 {
                    return reject(Errno::Inval, "FAST_ZERO not advertised");
                }
                Ok(Command::WriteZeroes {
                    offset,
                    length,
                    fua,
                    may_trim: flags & cflags::NO_HOLE == 0,
                    fast_only,
                })
            }
            cmd::CACHE => Ok(Command::Cache { offset, length }),
            _ => {
                let Some(context) = self.base_allocation else {
                    return reject(Errno::Inval, "no metadata context negotiated");
                };
                if length == 0 {
                    return reject(Errno::Inval, "zero-length block status");
                }
                Ok(Command::BlockStatus {
                    offset,
                    length,
                    req_one: flags & cflags::REQ_ONE != 0,
                    context,
                })
            }
        }
    }
}

/// Encodes a request header (client side: tests, benchmarks and tools).
pub fn encode_request(
    extended: bool,
    flags: u16,
    kind: u16,
    cookie: u64,
    offset: u64,
    length: u64,
) -> Vec<u8> {
    let mut v = Vec::with_capacity(proto::EXT_REQUEST_LEN);
    let magic = if extended {
        proto::EXT_REQUEST_MAGIC
    } else {
        proto::REQUEST_MAGIC
    };
    v.extend_from_slice(&magic.to_be_bytes());
    v.extend_from_slice(&flags.to_be_bytes());
    v.extend_from_slice(&kind.to_be_bytes());
    v.extend_from_slice(&cookie.to_be_bytes());
    v.extend_from_slice(&offset.to_be_bytes());
    if extended {
        v.extend_from_slice(&length.to_be_bytes());
    } else {
        v.extend_from_slice(&u32::try_from(length).unwrap_or(u32::MAX).to_be_bytes());
    }
    v
}

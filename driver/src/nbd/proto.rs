//! Wire constants of the NBD protocol (fixed newstyle, structured replies, extended headers).
//!
//! Every integer on the wire is big-endian. Names follow the protocol document without the
//! `NBD_` prefix, grouped by the field they belong to.

/// `NBDMAGIC`, first word of the server greeting.
pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
/// `IHAVEOPT`, second word of the greeting and the magic of every option request.
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
/// Magic of every option reply.
pub const OPT_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;

/// Handshake flags (server, u16).
pub mod handshake_flags {
    /// Fixed newstyle negotiation.
    pub const FIXED_NEWSTYLE: u16 = 1 << 0;
    /// The server can omit the 124 zero bytes after EXPORT_NAME.
    pub const NO_ZEROES: u16 = 1 << 1;
}

/// Client flags (u32).
pub mod client_flags {
    /// The client speaks fixed newstyle.
    pub const C_FIXED_NEWSTYLE: u32 = 1 << 0;
    /// The client does not want the 124 zero bytes.
    pub const C_NO_ZEROES: u32 = 1 << 1;
}

/// Option numbers.
pub mod opt {
    /// Legacy end of negotiation; cannot return errors.
    pub const EXPORT_NAME: u32 = 1;
    /// Soft disconnect.
    pub const ABORT: u32 = 2;
    /// List exports.
    pub const LIST: u32 = 3;
    /// TLS upgrade (refused: NOTLS mode).
    pub const STARTTLS: u32 = 5;
    /// Query an export.
    pub const INFO: u32 = 6;
    /// Query an export and enter transmission.
    pub const GO: u32 = 7;
    /// Structured replies.
    pub const STRUCTURED_REPLY: u32 = 8;
    /// List metadata contexts.
    pub const LIST_META_CONTEXT: u32 = 9;
    /// Select metadata contexts.
    pub const SET_META_CONTEXT: u32 = 10;
    /// 32-byte request and reply headers with 64-bit lengths.
    pub const EXTENDED_HEADERS: u32 = 11;
}

/// Option reply types. Errors have bit 31 set.
pub mod rep {
    /// Final success reply.
    pub const ACK: u32 = 1;
    /// One export of a LIST.
    pub const SERVER: u32 = 2;
    /// One information item of INFO/GO.
    pub const INFO: u32 = 3;
    /// One metadata context.
    pub const META_CONTEXT: u32 = 4;
    const E: u32 = 1 << 31;
    /// Option unknown to this server.
    pub const ERR_UNSUP: u32 = E + 1;
    /// Known but forbidden by policy.
    pub const ERR_POLICY: u32 = E + 2;
    /// Syntactically invalid.
    pub const ERR_INVALID: u32 = E + 3;
    /// Unsupported on this platform.
    pub const ERR_PLATFORM: u32 = E + 4;
    /// TLS required.
    pub const ERR_TLS_REQD: u32 = E + 5;
    /// Unknown export.
    pub const ERR_UNKNOWN: u32 = E + 6;
    /// The server is shutting down.
    pub const ERR_SHUTDOWN: u32 = E + 7;
    /// The client must ask for block sizes.
    pub const ERR_BLOCK_SIZE_REQD: u32 = E + 8;
    /// Request too big.
    pub const ERR_TOO_BIG: u32 = E + 9;
    /// Extended headers required.
    pub const ERR_EXT_HEADER_REQD: u32 = E + 10;
}

/// Information items of INFO/GO.
pub mod info {
    /// u64 size, u16 transmission flags. Always sent.
    pub const EXPORT: u16 = 0;
    /// The canonical export name.
    pub const NAME: u16 = 1;
    /// A human-readable description.
    pub const DESCRIPTION: u16 = 2;
    /// u32 minimum, u32 preferred, u32 maximum payload.
    pub const BLOCK_SIZE: u16 = 3;
}

/// Transmission flags (u16).
pub mod tflags {
    /// Always set.
    pub const HAS_FLAGS: u16 = 1 << 0;
    /// Writes fail with EPERM.
    pub const READ_ONLY: u16 = 1 << 1;
    /// FLUSH accepted.
    pub const SEND_FLUSH: u16 = 1 << 2;
    /// FUA accepted on every command.
    pub const SEND_FUA: u16 = 1 << 3;
    /// Rotational medium hint.
    pub const ROTATIONAL: u16 = 1 << 4;
    /// TRIM accepted.
    pub const SEND_TRIM: u16 = 1 << 5;
    /// WRITE_ZEROES (and NO_HOLE) accepted.
    pub const SEND_WRITE_ZEROES: u16 = 1 << 6;
    /// READ accepts DF (only with structured replies).
    pub const SEND_DF: u16 = 1 << 7;
    /// FLUSH/FUA on one connection are visible on all.
    pub const CAN_MULTI_CONN: u16 = 1 << 8;
    /// RESIZE (experimental, not supported).
    pub const SEND_RESIZE: u16 = 1 << 9;
    /// CACHE accepted.
    pub const SEND_CACHE: u16 = 1 << 10;
    /// WRITE_ZEROES accepts FAST_ZERO.
    pub const SEND_FAST_ZERO: u16 = 1 << 11;
    /// BLOCK_STATUS may carry a payload (extended headers; not supported).
    pub const BLOCK_STATUS_PAYLOAD: u16 = 1 << 12;
}

/// Compact request magic (28-byte header).
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// Extended request magic (32-byte header).
pub const EXT_REQUEST_MAGIC: u32 = 0x21e4_1c71;
/// Simple reply magic (16-byte header).
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
/// Structured reply chunk magic (20-byte header).
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;
/// Extended reply chunk magic (32-byte header).
pub const EXT_REPLY_MAGIC: u32 = 0x6e8a_278c;

/// Length of a compact request header.
pub const REQUEST_LEN: usize = 28;
/// Length of an extended request header.
pub const EXT_REQUEST_LEN: usize = 32;
/// Length of a simple reply.
pub const SIMPLE_REPLY_LEN: usize = 16;
/// Length of a structured chunk header.
pub const STRUCTURED_HEADER_LEN: usize = 20;
/// Length of an extended chunk header.
pub const EXT_HEADER_LEN: usize = 32;

/// Command types.
pub mod cmd {
    /// Read.
    pub const READ: u16 = 0;
    /// Write (carries a payload).
    pub const WRITE: u16 = 1;
    /// Disconnect (no reply).
    pub const DISC: u16 = 2;
    /// Flush.
    pub const FLUSH: u16 = 3;
    /// Trim (discard).
    pub const TRIM: u16 = 4;
    /// Prefetch hint.
    pub const CACHE: u16 = 5;
    /// Write zeroes.
    pub const WRITE_ZEROES: u16 = 6;
    /// Block status query.
    pub const BLOCK_STATUS: u16 = 7;
    /// Resize (experimental; refused).
    pub const RESIZE: u16 = 8;
}

/// Command flags.
pub mod cflags {
    /// Force unit access.
    pub const FUA: u16 = 1 << 0;
    /// WRITE_ZEROES must not punch holes.
    pub const NO_HOLE: u16 = 1 << 1;
    /// READ must come back in one data chunk.
    pub const DF: u16 = 1 << 2;
    /// BLOCK_STATUS: one extent only.
    pub const REQ_ONE: u16 = 1 << 3;
    /// WRITE_ZEROES: fail fast with ENOTSUP unless fast.
    pub const FAST_ZERO: u16 = 1 << 4;
    /// Extended headers: the length field is a payload length.
    pub const PAYLOAD_LEN: u16 = 1 << 5;
}

/// Structured reply chunk flags.
pub mod chunk_flags {
    /// Last chunk of the reply.
    pub const DONE: u16 = 1 << 0;
}

/// Structured reply chunk types.
pub mod chunk {
    /// Empty final chunk.
    pub const NONE: u16 = 0;
    /// u64 offset + data.
    pub const OFFSET_DATA: u16 = 1;
    /// u64 offset + u32 length of zeroes.
    pub const OFFSET_HOLE: u16 = 2;
    /// u32 context id + (u32 length, u32 flags) extents.
    pub const BLOCK_STATUS: u16 = 5;
    /// u32 context id + u32 count + (u64 length, u64 flags) extents (extended headers).
    pub const BLOCK_STATUS_EXT: u16 = 6;
    /// u32 error, u16 message length, message.
    pub const ERROR: u16 = (1 << 15) + 1;
    /// u32 error, u16 message length, message, u64 offset.
    pub const ERROR_OFFSET: u16 = (1 << 15) + 2;
}

/// `base:allocation` extent flags.
pub mod state {
    /// Unallocated.
    pub const HOLE: u32 = 1 << 0;
    /// Reads as zeroes.
    pub const ZERO: u32 = 1 << 1;
}

/// The only metadata context this server knows.
pub const BASE_ALLOCATION: &str = "base:allocation";

/// Longest string (export name, description, message) the protocol allows.
pub const MAX_STRING_LEN: usize = 4096;

/// Errors a transmission reply can carry. The values are the protocol's (Linux errno values).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Errno {
    /// Operation not permitted (writes to a read-only export).
    Perm,
    /// I/O error.
    Io,
    /// Out of memory (avoid).
    NoMem,
    /// Invalid argument (bad flags, range, alignment, unknown command).
    Inval,
    /// No space left (writes past the end, pool full).
    NoSpc,
    /// Value too large (DF read that cannot be served unfragmented).
    Overflow,
    /// Not supported (FAST_ZERO that would not be fast).
    NotSup,
    /// The server is shutting down.
    Shutdown,
}

impl Errno {
    /// The value sent on the wire.
    pub fn code(self) -> u32 {
        match self {
            Errno::Perm => 1,
            Errno::Io => 5,
            Errno::NoMem => 12,
            Errno::Inval => 22,
            Errno::NoSpc => 28,
            Errno::Overflow => 75,
            Errno::NotSup => 95,
            Errno::Shutdown => 108,
        }
    }

    /// Maps an OS errno (from a device or file error) to the nearest NBD error, as the protocol
    /// asks: EDQUOT and EFBIG become ENOSPC, EROFS and EACCES become EPERM, anything without an
    /// NBD counterpart becomes EIO.
    pub fn from_os(errno: i32) -> Errno {
        match errno {
            libc::EPERM | libc::EACCES | libc::EROFS => Errno::Perm,
            libc::ENOMEM => Errno::NoMem,
            libc::EINVAL => Errno::Inval,
            libc::ENOSPC | libc::EDQUOT | libc::EFBIG => Errno::NoSpc,
            libc::EOVERFLOW => Errno::Overflow,
            libc::EOPNOTSUPP => Errno::NotSup,
            libc::ESHUTDOWN => Errno::Shutdown,
            _ => Errno::Io,
        }
    }

    /// Decodes a wire value; unknown values are treated as EINVAL, as the protocol asks clients to.
    pub fn from_code(code: u32) -> Errno {
        match code {
            1 => Errno::Perm,
            5 => Errno::Io,
            12 => Errno::NoMem,
            28 => Errno::NoSpc,
            75 => Errno::Overflow,
            95 => Errno::NotSup,
            108 => Errno::Shutdown,
            _ => Errno::Inval,
        }
    }
}

impl std::fmt::Display for Errno {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = match self {
            Errno::Perm => "EPERM",
            Errno::Io => "EIO",
            Errno::NoMem => "ENOMEM",
            Errno::Inval => "EINVAL",
            Errno::NoSpc => "ENOSPC",
            Errno::Overflow => "EOVERFLOW",
            Errno::NotSup => "ENOTSUP",
            Errno::Shutdown => "ESHUTDOWN",
        };
        f.write_str(s)
    }
}

/// Big-endian readers over a byte slice that never panic: a short slice yields `None`.
pub(crate) mod be {
    pub(crate) fn u16_at(b: &[u8], at: usize) -> Option<u16> {
        let s = b.get(at..at.checked_add(2)?)?;
        Some(u16::from_be_bytes([s[0], s[1]]))
    }
    pub(crate) fn u32_at(b: &[u8], at: usize) -> Option<u32> {
        let s = b.get(at..at.checked_add(4)?)?;
        Some(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
    }
    pub(crate) fn u64_at(b: &[u8], at: usize) -> Option<u64> {
        let s = b.get(at..at.checked_add(8)?)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(s);
        Some(u64::from_be_bytes(a))
    }
}

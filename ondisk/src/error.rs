//! The one error type of the on-disk layer.
//!
//! Every decoder returns [`OnDiskError`] for anything it does not like; nothing in this crate
//! panics on input bytes. Encoders return it too when a value cannot be represented (a run that
//! does not fit, a name too long, a buffer too small).

use crate::checksum::Checksum;

/// Linux `EIO`: what a corrupt structure means to a client (the data cannot be read).
const EIO: i32 = 5;
/// Linux `EINVAL`: what an unrepresentable value means to a caller (a bad request).
const EINVAL: i32 = 22;

/// Errors of the on-disk formats.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OnDiskError {
    /// The input (or output) buffer is shorter than the structure needs.
    #[error("{what}: buffer too small: need {need} bytes, have {have}")]
    BufferTooSmall {
        /// Structure being decoded or encoded.
        what: &'static str,
        /// Bytes needed.
        need: usize,
        /// Bytes available.
        have: usize,
    },
    /// The buffer length is not what the format allows (e.g. not a multiple of an entry size).
    #[error("{what}: bad buffer length {len}: {reason}")]
    BadLength {
        /// Structure being decoded.
        what: &'static str,
        /// The offending length.
        len: usize,
        /// Why it is wrong.
        reason: &'static str,
    },
    /// The slot or area is all zeroes: nothing was ever written there.
    #[error("{what}: empty (all zero)")]
    Empty {
        /// Structure expected there.
        what: &'static str,
    },
    /// The magic number does not identify this structure.
    #[error("{what}: bad magic {found:#018x}")]
    BadMagic {
        /// Structure being decoded.
        what: &'static str,
        /// The magic that was found.
        found: u64,
    },
    /// A format version this code does not understand.
    #[error("{what}: unsupported format version {version}")]
    UnsupportedVersion {
        /// Structure being decoded.
        what: &'static str,
        /// The version found.
        version: u64,
    },
    /// The stored checksum does not match the bytes: the structure is corrupt.
    #[error("{what}: checksum mismatch: stored {expected}, computed {actual}")]
    ChecksumMismatch {
        /// Structure being verified.
        what: &'static str,
        /// Checksum stored on disk.
        expected: Checksum,
        /// Checksum computed over the bytes read.
        actual: Checksum,
    },
    /// An enumerated field holds a value with no meaning.
    #[error("{what}: field {field}: unknown value {value}")]
    UnknownEnum {
        /// Structure being decoded.
        what: &'static str,
        /// Field name.
        field: &'static str,
        /// Value found.
        value: u64,
    },
    /// A field holds a value outside its allowed range or breaks an invariant.
    #[error("{what}: field {field}: invalid value {value}: {reason}")]
    InvalidField {
        /// Structure being decoded or encoded.
        what: &'static str,
        /// Field name.
        field: &'static str,
        /// Value found (truncated to u64 for display).
        value: u64,
        /// Which rule it breaks.
        reason: &'static str,
    },
    /// A string field is not UTF-8 or breaks the naming rules.
    #[error("{what}: field {field}: bad string: {reason}")]
    BadString {
        /// Structure being decoded or encoded.
        what: &'static str,
        /// Field name.
        field: &'static str,
        /// Which rule it breaks.
        reason: &'static str,
    },
    /// A count or length exceeds the bound the format allows.
    #[error("{what}: {field}: {len} exceeds the limit {max}")]
    TooLong {
        /// Structure being decoded or encoded.
        what: &'static str,
        /// Field name.
        field: &'static str,
        /// Length or count found.
        len: u64,
        /// The bound.
        max: u64,
    },
    /// Reserved bytes or bits that must be zero are not.
    #[error("{what}: reserved field {field} is not zero")]
    NonZeroReserved {
        /// Structure being decoded.
        what: &'static str,
        /// Field name.
        field: &'static str,
    },
    /// A checksum algorithm this build does not implement.
    #[error("checksum algorithm {0} is not supported")]
    UnsupportedChecksum(u8),
    /// A key the caller required is missing from a key-value list.
    #[error("nvlist: missing key {0:?}")]
    MissingKey(String),
    /// A key exists with a value of another type.
    #[error("nvlist: key {key:?} holds a {found}, expected a {expected}")]
    WrongType {
        /// The key.
        key: String,
        /// Type the caller asked for.
        expected: &'static str,
        /// Type stored.
        found: &'static str,
    },
}

impl OnDiskError {
    /// The errno to report to a client (NBD reply, CLI exit): corrupt input is `EIO`, a value
    /// that cannot be encoded or a missing key is `EINVAL`.
    pub fn errno(&self) -> i32 {
        match self {
            OnDiskError::MissingKey(_) | OnDiskError::WrongType { .. } => EINVAL,
            _ => EIO,
        }
    }

    /// True if the error says the bytes are damaged (as opposed to absent or a caller mistake):
    /// checksum mismatches.
    pub fn is_checksum_error(&self) -> bool {
        matches!(self, OnDiskError::ChecksumMismatch { .. })
    }
}

/// Shorthand used throughout the crate.
pub type Result<T> = std::result::Result<T, OnDiskError>;

//! The pool layer's error type.

use crate::io::IoError;
use ringpool_alloc::AllocError;
use ringpool_ondisk::error::OnDiskError;

/// Errors of the pool layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PoolError {
    /// A device operation failed.
    #[error(transparent)]
    Io(#[from] IoError),
    /// On-disk bytes did not decode (corrupt or foreign structure).
    #[error(transparent)]
    OnDisk(#[from] OnDiskError),
    /// The allocator refused.
    #[error(transparent)]
    Alloc(#[from] AllocError),
    /// A block's content does not match the checksum its parent records.
    #[error("checksum error in {object} at offset {offset} (level {level}, device {device} offset {dev_offset}): expected {expected}, found {actual}")]
    Checksum {
        /// Object name (e.g. `volume vm1`, `space map dev0/ms3`, `directory`).
        object: String,
        /// Logical byte offset inside the object (of the block, or covered by the indirect).
        offset: u64,
        /// Tree level of the damaged block (0 = data).
        level: u8,
        /// Device index.
        device: u32,
        /// Device byte offset.
        dev_offset: u64,
        /// What the parent says.
        expected: String,
        /// What the block hashes to.
        actual: String,
    },
    /// A block decoded but its content is inconsistent (bad tree structure).
    #[error("corrupt {object} at offset {offset}: {reason}")]
    Corrupt {
        /// Object name.
        object: String,
        /// Logical byte offset inside the object.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// The pool (or not enough of it) was not found on the given devices.
    #[error("no pool found: {0}")]
    NotFound(String),
    /// The pool is active on another host or process and `force` was not given.
    #[error("pool '{pool}' is in use by host '{host}' (pid {pid}); import with force to override")]
    InUse {
        /// Pool name.
        pool: String,
        /// Host that last had it active.
        host: String,
        /// Process id recorded in the label.
        pid: u64,
    },
    /// No valid uberblock anywhere.
    #[error("no valid uberblock found for pool '{0}'")]
    NoUberblock(String),
    /// A device of the pool's configuration is missing.
    #[error("pool '{pool}': device {index} (guid {guid:#x}) is missing")]
    MissingDevice {
        /// Pool name.
        pool: String,
        /// Device index.
        index: u32,
        /// Device guid.
        guid: u64,
    },
    /// Out of space (slop space is held back for syncing).
    #[error("out of space")]
    NoSpace,
    /// Invalid argument (bad name, size, block size, range).
    #[error("invalid argument: {0}")]
    Invalid(String),
    /// The named volume or object does not exist.
    #[error("no such volume: {0}")]
    NoSuchVolume(String),
    /// The name is taken.
    #[error("already exists: {0}")]
    Exists(String),
    /// The pool is read-only (imported read-only).
    #[error("pool is read-only")]
    ReadOnly,
    /// The pool is suspended after a failed sync (errno given) or is closing.
    #[error("pool is suspended or closed (errno {0})")]
    Suspended(i32),
    /// A feature or state makes the operation impossible (checkpoint exists, ...).
    #[error("{0}")]
    Busy(String),
    /// Checkpoint create while one exists (OpenZFS ZFS_ERR_CHECKPOINT_EXISTS).
    #[error("checkpoint exists")]
    CheckpointExists,
    /// Checkpoint create/discard (or a refused config change) while a discard runs
    /// (ZFS_ERR_DISCARDING_CHECKPOINT).
    #[error("currently discarding checkpoint")]
    DiscardingCheckpoint,
    /// Discard or rewind without a checkpoint (ZFS_ERR_NO_CHECKPOINT).
    #[error("checkpoint does not exist")]
    NoCheckpoint,
    /// A device too large for a checkpoint space map to address (ZFS_ERR_VDEV_TOO_BIG).
    #[error("device exceeds supported size")]
    DeviceTooBig,
    /// An invariant of the pool was broken: a bug, reported instead of panicking.
    #[error("internal error: {0}")]
    Internal(String),
}

impl PoolError {
    /// The errno to report to a client (NBD replies, CLI exit codes).
    pub fn errno(&self) -> i32 {
        match self {
            PoolError::Io(e) => io_errno(e),
            PoolError::OnDisk(_)
            | PoolError::Checksum { .. }
            | PoolError::Corrupt { .. }
            | PoolError::NoUberblock(_)
            | PoolError::MissingDevice { .. }
            | PoolError::Internal(_) => libc::EIO,
            PoolError::Alloc(e) => match e {
                AllocError::NoSpace { .. } => libc::ENOSPC,
                _ => libc::EIO,
            },
            PoolError::NoSpace => libc::ENOSPC,
            PoolError::Invalid(_) => libc::EINVAL,
            PoolError::NotFound(_) | PoolError::NoSuchVolume(_) => libc::ENOENT,
            PoolError::Exists(_) => libc::EEXIST,
            PoolError::InUse { .. } | PoolError::Busy(_) => libc::EBUSY,
            PoolError::ReadOnly => libc::EROFS,
            PoolError::Suspended(e) => *e,
            PoolError::CheckpointExists => libc::EEXIST,
            PoolError::DiscardingCheckpoint => libc::EBUSY,
            PoolError::NoCheckpoint => libc::ENOENT,
            PoolError::DeviceTooBig => libc::EFBIG,
        }
    }

    /// True for checksum mismatches (data damaged, detected by a parent's checksum).
    pub fn is_checksum(&self) -> bool {
        matches!(self, PoolError::Checksum { .. })
            || matches!(self, PoolError::OnDisk(e) if e.is_checksum_error())
    }
}

fn io_errno(e: &IoError) -> i32 {
    match e {
        IoError::Device { errno, .. } | IoError::Os { errno, .. } => *errno,
        IoError::OutOfRange { .. } | IoError::Alignment { .. } => libc::EINVAL,
        IoError::ReadOnly { .. } => libc::EROFS,
        IoError::InUse { .. } => libc::EBUSY,
        IoError::NotFound { .. } => libc::ENOENT,
        IoError::Unsupported { .. } => libc::EOPNOTSUPP,
        _ => libc::EIO,
    }
}

/// Result of the pool layer.
pub type Result<T, E = PoolError> = std::result::Result<T, E>;

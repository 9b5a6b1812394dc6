//! The `io` layer's error type.
//!
//! One enum for the whole layer (reactor, ops, devices, engines). Callers that answer a wire
//! protocol (NBD) use [`IoError::errno`] to pick the reply code.

use std::fmt;
use std::path::PathBuf;

/// What kind of operation failed; used in error context.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum OpKind {
    /// A read from a file or device.
    Read,
    /// A write to a file or device.
    Write,
    /// fsync / fdatasync.
    Flush,
    /// BLKDISCARD or a hole punch.
    Discard,
    /// fallocate(2).
    Fallocate,
    /// A socket receive.
    Recv,
    /// A socket send.
    Send,
    /// accept(2).
    Accept,
    /// connect(2).
    Connect,
    /// A timer.
    Timeout,
    /// open(2), stat or an ioctl while opening a device.
    Open,
    /// Any other helper syscall (eventfd, ring setup, registration).
    Other,
}

impl fmt::Display for OpKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            OpKind::Read => "read",
            OpKind::Write => "write",
            OpKind::Flush => "flush",
            OpKind::Discard => "discard",
            OpKind::Fallocate => "fallocate",
            OpKind::Recv => "recv",
            OpKind::Send => "send",
            OpKind::Accept => "accept",
            OpKind::Connect => "connect",
            OpKind::Timeout => "timeout",
            OpKind::Open => "open",
            OpKind::Other => "syscall",
        };
        f.write_str(s)
    }
}

/// Errors of the `io` layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IoError {
    /// The device (or file) failed an I/O: EIO and every other errno a data op may return
    /// that is not an alignment bug.
    #[error("{op} on {device} at offset {offset} failed: {}", errno_str(*.errno))]
    Device {
        /// Device path or label.
        device: String,
        /// Byte offset of the failed request.
        offset: u64,
        /// The failed operation.
        op: OpKind,
        /// The positive errno.
        errno: i32,
    },
    /// An O_DIRECT request violated the device's alignment rules (EINVAL from the kernel, or
    /// caught before submission). Always a bug in the caller.
    #[error(
        "misaligned {op} on {device}: offset {offset}, length {len}, buffer address {addr:#x} \
         (logical block {block}, memory alignment {mem_align})"
    )]
    Alignment {
        /// Device path or label.
        device: String,
        /// The operation.
        op: OpKind,
        /// Byte offset of the request.
        offset: u64,
        /// Length of the request in bytes.
        len: u64,
        /// Address of the data buffer.
        addr: usize,
        /// Required offset/length granularity.
        block: u32,
        /// Required buffer address alignment.
        mem_align: u32,
    },
    /// The request reaches past the end of the device.
    #[error("{op} on {device}: range {offset}+{len} is beyond the device size {size}")]
    OutOfRange {
        /// Device path or label.
        device: String,
        /// The operation.
        op: OpKind,
        /// Byte offset of the request.
        offset: u64,
        /// Length of the request.
        len: u64,
        /// Device size in bytes.
        size: u64,
    },
    /// A read hit end-of-file (or a socket hit EOF) before the requested length was transferred.
    #[error("{op}: unexpected end of file at offset {offset} ({done} of {expected} bytes done)")]
    UnexpectedEof {
        /// The operation.
        op: OpKind,
        /// Offset at which the operation started.
        offset: u64,
        /// Bytes transferred before EOF.
        done: u64,
        /// Bytes requested.
        expected: u64,
    },
    /// A syscall or ring op without device context failed (sockets, setup, raw-fd ops).
    #[error("{op} failed: {}", errno_str(*.errno))]
    Os {
        /// The operation.
        op: OpKind,
        /// The positive errno.
        errno: i32,
    },
    /// The operation was cancelled (its future was dropped, or the reactor shut down).
    #[error("operation cancelled")]
    Cancelled,
    /// A ring operation was attempted on a thread that runs no reactor.
    #[error("not on a reactor thread (use io::block_on or a ReactorSet)")]
    NotInReactor,
    /// io_uring setup failed (kernel too old, io_uring disabled, limits).
    #[error("io_uring setup failed: {0}")]
    RingSetup(std::io::Error),
    /// Starting a reactor thread failed.
    #[error("reactor {index} failed to start: {reason}")]
    ReactorStart {
        /// Reactor index.
        index: usize,
        /// What went wrong.
        reason: String,
    },
    /// The device path does not exist.
    #[error("{path}: no such file or device")]
    NotFound {
        /// The path.
        path: PathBuf,
    },
    /// The path is neither a regular file nor a block device.
    #[error("{path}: not a regular file or block device")]
    NotFileOrBlockDevice {
        /// The path.
        path: PathBuf,
    },
    /// The device is smaller than required.
    #[error("{path}: size {size} is below the required minimum {min}")]
    TooSmall {
        /// The path.
        path: PathBuf,
        /// Actual size.
        size: u64,
        /// Required size.
        min: u64,
    },
    /// O_DIRECT was required but the file system cannot provide it (e.g. tmpfs, which accepts
    /// O_DIRECT but does not enforce alignment and caches in RAM).
    #[error("{path}: O_DIRECT required but unsupported: {reason}")]
    DirectIoUnsupported {
        /// The path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Another opener holds the device (EBUSY on O_EXCL, or the flock is taken).
    #[error("{path}: device in use (exclusive open failed)")]
    InUse {
        /// The path.
        path: PathBuf,
    },
    /// The device was opened read-only.
    #[error("{device}: opened read-only")]
    ReadOnly {
        /// Device path or label.
        device: String,
    },
    /// The operation is not supported by this device or engine.
    #[error("{op} on {device}: not supported")]
    Unsupported {
        /// Device path or label.
        device: String,
        /// The operation.
        op: OpKind,
    },
    /// Opening or inspecting a path failed with an unexpected errno.
    #[error("{path}: {op} failed: {}", errno_str(*.errno))]
    Path {
        /// The path.
        path: PathBuf,
        /// What was being done.
        op: OpKind,
        /// The positive errno.
        errno: i32,
    },
}

fn errno_str(errno: i32) -> String {
    std::io::Error::from_raw_os_error(errno).to_string()
}

impl IoError {
    /// The errno that best describes this error, for protocol replies (NBD).
    pub fn errno(&self) -> i32 {
        match self {
            IoError::Device { errno, .. }
            | IoError::Os { errno, .. }
            | IoError::Path { errno, .. } => *errno,
            IoError::Alignment { .. } => libc::EINVAL,
            IoError::OutOfRange { op, .. } => {
                if *op == OpKind::Write {
                    libc::ENOSPC
                } else {
                    libc::EINVAL
                }
            }
            IoError::UnexpectedEof { .. } => libc::EIO,
            IoError::Cancelled => libc::ECANCELED,
            IoError::NotInReactor => libc::EINVAL,
            IoError::RingSetup(e) => e.raw_os_error().unwrap_or(libc::EIO),
            IoError::ReactorStart { .. } => libc::EIO,
            IoError::NotFound { .. } => libc::ENOENT,
            IoError::NotFileOrBlockDevice { .. } => libc::ENODEV,
            IoError::TooSmall { .. } => libc::ENOSPC,
            IoError::DirectIoUnsupported { .. } => libc::EINVAL,
            IoError::InUse { .. } => libc::EBUSY,
            IoError::ReadOnly { .. } => libc::EROFS,
            IoError::Unsupported { .. } => libc::EOPNOTSUPP,
        }
    }

    /// Build an [`IoError::Os`] from the thread's last errno.
    pub(crate) fn last_os(op: OpKind) -> IoError {
        IoError::Os {
            op,
            errno: std::io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO),
        }
    }

    /// Build an [`IoError::Os`] from a `std::io::Error`.
    pub(crate) fn from_std(op: OpKind, e: &std::io::Error) -> IoError {
        IoError::Os {
            op,
            errno: e.raw_os_error().unwrap_or(libc::EIO),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_mapping() {
        let e = IoError::Device {
            device: "d".into(),
            offset: 0,
            op: OpKind::Read,
            errno: libc::EIO,
        };
        assert_eq!(e.errno(), libc::EIO);
        assert!(e.to_string().contains("read on d at offset 0"));
        let a = IoError::Alignment {
            device: "d".into(),
            op: OpKind::Write,
            offset: 1,
            len: 2,
            addr: 3,
            block: 512,
            mem_align: 512,
        };
        assert_eq!(a.errno(), libc::EINVAL);
    }

    #[test]
    fn error_is_reasonably_small() {
        // The hot path returns Result<(), IoError>; keep it from growing unnoticed.
        assert!(
            std::mem::size_of::<IoError>() <= 64,
            "{}",
            std::mem::size_of::<IoError>()
        );
    }
}

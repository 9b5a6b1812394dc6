//! What the NBD server serves: the [`ExportBackend`] trait and its error type.
//!
//! A backend is shared by every connection and reactor (`Send + Sync`); the futures it returns
//! run on the reactor of the connection that asked and need not be `Send`. Buffers are passed
//! by value (ownership passing, as with io_uring ops) and handed back with the result.
//!
//! Contract for implementors:
//! * **Ranges are validated** by the server: `offset + len <= size()`, aligned to
//!   [`ExportBackend::min_block_size`], READ/WRITE lengths at most the max payload (32 MiB).
//!   TRIM, WRITE_ZEROES, CACHE and BLOCK_STATUS ranges may be larger.
//! * **Read** fills `buf[range]` (holes as zeroes) and says which parts were holes
//!   ([`ReadLayout`]), so the server can answer with hole chunks instead of data.
//!   `range.start` is a multiple of 4096 and `buf` is page aligned, so O_DIRECT can read straight
//!   into it; the bytes before `range.start` belong to the server (reply header) and must not
//!   be touched. A backend may instead hand back another buffer of the same length with the
//!   data at `range` (e.g. one it read ahead, without copying); the server then writes the
//!   reply header into that one.
//! * **Write** stores all of `data[..]` (its whole length) at `offset`. With `fua` it returns
//!   only once the data is durable.
//! * **Flush** returns once every write that completed before it was called is durable, on
//!   every connection: the server advertises CAN_MULTI_CONN when [`ExportBackend::multi_conn`].
//! * **Trim** may discard the range (content then undefined until rewritten); it is a hint.
//! * **Write zeroes** makes the range read as zeroes; `may_trim` allows holes; with
//!   `fast_only` it must fail quickly with [`Errno::NotSup`] (and change nothing) unless it can
//!   zero without writing data.
//! * **Block status** describes `[offset, offset + len)` as extents in order from `offset`
//!   (at least one, at most covering `len`); fewer than the whole range is allowed.
//! * Errors carry an [`Errno`] (EIO, ENOSPC, EINVAL, EPERM, EOVERFLOW, ENOTSUP...) that goes to
//!   the client as is.

use std::borrow::Cow;
use std::future::Future;
use std::ops::Range;
use std::pin::Pin;

use super::proto::Errno;
use super::reply::Extent;
use crate::io::IoBuf;

/// A boxed, reactor-local future returned by backend methods.
pub type BackendFuture<'a, T> = Pin<Box<dyn Future<Output = T> + 'a>>;

/// A backend failure, with the errno the client receives.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{errno}: {message}")]
pub struct BackendError {
    /// What the client is told.
    pub errno: Errno,
    /// Detail for logs and structured error chunks.
    pub message: Cow<'static, str>,
}

impl BackendError {
    /// A new error.
    pub fn new(errno: Errno, message: impl Into<Cow<'static, str>>) -> BackendError {
        BackendError {
            errno,
            message: message.into(),
        }
    }
    /// EIO.
    pub fn io(message: impl Into<Cow<'static, str>>) -> BackendError {
        BackendError::new(Errno::Io, message)
    }
    /// ENOSPC.
    pub fn no_space(message: impl Into<Cow<'static, str>>) -> BackendError {
        BackendError::new(Errno::NoSpc, message)
    }
    /// EINVAL.
    pub fn invalid(message: impl Into<Cow<'static, str>>) -> BackendError {
        BackendError::new(Errno::Inval, message)
    }
    /// EPERM.
    pub fn read_only(message: impl Into<Cow<'static, str>>) -> BackendError {
        BackendError::new(Errno::Perm, message)
    }
    /// ENOTSUP (a FAST_ZERO that would not be fast).
    pub fn not_supported(message: impl Into<Cow<'static, str>>) -> BackendError {
        BackendError::new(Errno::NotSup, message)
    }
}

/// Which parts of a read were holes (unallocated, returned as zeroes).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ReadLayout {
    /// Everything was allocated data (also the safe answer when unknown).
    #[default]
    Data,
    /// The whole range is a hole.
    Hole,
    /// These subranges, relative to the start of the read, sorted and disjoint, are holes.
    Holes(Vec<Range<u32>>),
}

/// Result of a read: the layout (or an error) and the buffer back.
pub type ReadResult = (Result<ReadLayout, BackendError>, IoBuf);
/// Result of a write: success (or an error) and the buffer back.
pub type WriteResult = (Result<(), BackendError>, IoBuf);

/// A block device the NBD server exports. See the module docs for the contract.
pub trait ExportBackend: Send + Sync + std::fmt::Debug {
    /// Size in bytes (fixed for the life of a connection).
    fn size(&self) -> u64;
    /// Preferred I/O size: a power of two >= 512; smaller writes may read-modify-write.
    fn block_size(&self) -> u32;
    /// Minimum I/O alignment accepted (power of two, 1..=64 KiB). Default 1: any byte range.
    fn min_block_size(&self) -> u32 {
        1
    }
    /// Refuse writes (the registry can also export a writable backend read-only).
    fn read_only(&self) -> bool {
        false
    }
    /// FLUSH/FUA on any connection commit the whole backend (default true).
    fn multi_conn(&self) -> bool {
        true
    }
    /// Rotational medium hint (default false).
    fn rotational(&self) -> bool {
        false
    }
    /// Human-readable description for NBD_INFO_DESCRIPTION and LIST.
    fn description(&self) -> String {
        String::new()
    }
    /// Fills `buf[range]` with the bytes at `offset` (`range.len()` of them).
    fn read(&self, offset: u64, buf: IoBuf, range: Range<usize>) -> BackendFuture<'_, ReadResult>;
    /// Writes all of `data` at `offset`; durable before returning when `fua`.
    fn write(&self, offset: u64, data: IoBuf, fua: bool) -> BackendFuture<'_, WriteResult>;
    /// Writes all of `data` at `offset` without FUA, and may return before the data reached
    /// the device as long as every later read, block-status query and write sees it, a later
    /// FLUSH makes it durable, and a failure to store it fails every later FLUSH. The buffer
    /// may be kept (an empty one comes back). Default: [`ExportBackend::write`].
    fn write_back(&self, offset: u64, data: IoBuf) -> BackendFuture<'_, WriteResult> {
        self.write(offset, data, false)
    }
    /// Whether [`ExportBackend::write_batch`] stores several writes more cheaply than one by
    /// one (default false). The server then hands it WRITE requests (without FUA) that arrive
    /// while earlier ones are still being written, several at a time.
    fn gathers_writes(&self) -> bool {
        false
    }
    /// Writes each `(offset, data)` (no FUA) and returns each result with its buffer, in the
    /// order given. The writes are concurrent requests: a later one overlapping an earlier one
    /// may land in either order. Default: one after the other.
    fn write_batch(&self, writes: Vec<(u64, IoBuf)>) -> BackendFuture<'_, Vec<WriteResult>> {
        Box::pin(async move {
            let mut out = Vec::with_capacity(writes.len());
            for (offset, data) in writes {
                out.push(self.write(offset, data, false).await);
            }
            out
        })
    }
    /// Like [`ExportBackend::write_batch`], but each write may be acknowledged before its
    /// data reached the device, under the contract of [`ExportBackend::write_back`] (buffers
    /// may be kept: empty ones come back). Default: [`ExportBackend::write_batch`].
    fn write_batch_back(&self, writes: Vec<(u64, IoBuf)>) -> BackendFuture<'_, Vec<WriteResult>> {
        self.write_batch(writes)
    }
    /// Makes every completed write durable.
    fn flush(&self) -> BackendFuture<'_, Result<(), BackendError>>;
    /// Discards a range (a hint).
    fn trim(&self, offset: u64, len: u64) -> BackendFuture<'_, Result<(), BackendError>>;
    /// Zeroes a range; see the module docs for `may_trim` and `fast_only`.
    fn write_zeroes(
        &self,
        offset: u64,
        len: u64,
        may_trim: bool,
        fast_only: bool,
    ) -> BackendFuture<'_, Result<(), BackendError>>;
    /// Prefetch hint (default: nothing to do).
    fn cache(&self, offset: u64, len: u64) -> BackendFuture<'_, Result<(), BackendError>> {
        let _ = (offset, len);
        Box::pin(std::future::ready(Ok(())))
    }
    /// Allocation status of `[offset, offset + len)` (default: all data, which is always safe).
    fn block_status(
        &self,
        offset: u64,
        len: u64,
    ) -> BackendFuture<'_, Result<Vec<Extent>, BackendError>> {
        let _ = offset;
        Box::pin(std::future::ready(Ok(vec![Extent {
            length: len,
            flags: 0,
        }])))
    }
}

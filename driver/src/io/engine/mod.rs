//! Block engines: the one interface the pool uses for all device I/O, with three backends.
//!
//! * [`UringEngine`]: submits to the *current thread's* reactor (must be awaited on a reactor).
//! * [`SyncEngine`]: pread/pwrite/fdatasync inline; the futures are ready immediately, so it
//!   works under any executor (and `block_on`).
//! * [`FaultyEngine`]: in memory, records every write/flush/discard, builds crash images,
//!   injects EIO and bit flips.
//!
//! Every engine enforces the same request rules before touching the medium: offsets and
//! lengths are multiples of the logical block size, direct-I/O buffers are aligned to
//! `mem_align` (both [`IoError::Alignment`]), and the range lies inside the device
//! ([`IoError::OutOfRange`]). `read_at`/`write_at` transfer exactly `buf.len()` bytes.

mod faulty;
mod sync;
mod uring;

use std::future::Future;
use std::ops::Range;
use std::pin::Pin;

pub use faulty::{CrashMode, FaultEvent, FaultyEngine};
pub use sync::SyncEngine;
pub use uring::UringEngine;

use crate::io::buf::IoBuf;
use crate::io::device::Geometry;
use crate::io::error::{IoError, OpKind};

/// Future of a read or write: the buffer always comes back.
pub type IoFuture = Pin<Box<dyn Future<Output = (Result<(), IoError>, IoBuf)> + 'static>>;
/// Future of a flush or discard.
pub type UnitFuture = Pin<Box<dyn Future<Output = Result<(), IoError>> + 'static>>;

/// The device I/O interface of the pool. See the module docs for the request rules.
pub trait BlockEngine: Send + Sync + std::fmt::Debug {
    /// Size and alignment of the device.
    fn geometry(&self) -> Geometry;
    /// Device path or label (for errors).
    fn name(&self) -> &str;
    /// Read exactly `buf.len()` bytes at `offset`.
    fn read_at(&self, buf: IoBuf, offset: u64) -> IoFuture;
    /// Read exactly `range.len()` bytes at `offset` into `buf[range]`, leaving the rest of
    /// `buf` alone (a reader fills its part of a larger reply buffer without a bounce copy).
    /// `range` must lie within `buf.capacity()`. The default reads into a temporary buffer
    /// and copies; engines that can target the range directly override it.
    fn read_into(&self, mut buf: IoBuf, range: Range<usize>, offset: u64) -> IoFuture {
        if range.start > range.end || range.end > buf.capacity() {
            let e = IoError::Os {
                op: OpKind::Read,
                errno: libc::EINVAL,
            };
            return Box::pin(std::future::ready((Err(e), buf)));
        }
        let tmp = crate::io::buf::alloc(range.len());
        let fut = self.read_at(tmp, offset);
        Box::pin(async move {
            let (r, tmp) = fut.await;
            if r.is_ok() {
                buf.spare_and_all_mut()[range].copy_from_slice(&tmp);
            }
            (r, buf)
        })
    }
    /// Write exactly `buf.len()` bytes at `offset`.
    fn write_at(&self, buf: IoBuf, offset: u64) -> IoFuture;
    /// Make every completed write durable (fdatasync through the ring).
    fn flush(&self) -> UnitFuture;
    /// Discard `[offset, offset+len)`. Contents afterwards are zero on files and the
    /// in-memory engine, device-defined on block devices.
    fn discard(&self, offset: u64, len: u64) -> UnitFuture;
}

/// Validate a data request against `geom` (shared by every engine).
pub fn check_io(
    geom: &Geometry,
    name: &str,
    op: OpKind,
    offset: u64,
    len: usize,
    addr: usize,
) -> Result<(), IoError> {
    let block = u64::from(geom.logical_block_size.max(1));
    let len64 = len as u64;
    let mem = usize::try_from(geom.mem_align.max(1)).unwrap_or(1);
    if !offset.is_multiple_of(block)
        || !len64.is_multiple_of(block)
        || (geom.direct && !addr.is_multiple_of(mem))
    {
        return Err(IoError::Alignment {
            device: name.to_string(),
            op,
            offset,
            len: len64,
            addr,
            block: geom.logical_block_size,
            mem_align: geom.mem_align,
        });
    }
    check_range(geom, name, op, offset, len64)
}

/// Validate a discard (block-aligned, in range).
pub fn check_discard(geom: &Geometry, name: &str, offset: u64, len: u64) -> Result<(), IoError> {
    let block = u64::from(geom.logical_block_size.max(1));
    if !offset.is_multiple_of(block) || !len.is_multiple_of(block) {
        return Err(IoError::Alignment {
            device: name.to_string(),
            op: OpKind::Discard,
            offset,
            len,
            addr: 0,
            block: geom.logical_block_size,
            mem_align: geom.mem_align,
        });
    }
    check_range(geom, name, OpKind::Discard, offset, len)
}

fn check_range(
    geom: &Geometry,
    name: &str,
    op: OpKind,
    offset: u64,
    len: u64,
) -> Result<(), IoError> {
    match offset.checked_add(len) {
        Some(end) if end <= geom.size_bytes => Ok(()),
        _ => Err(IoError::OutOfRange {
            device: name.to_string(),
            op,
            offset,
            len,
            size: geom.size_bytes,
        }),
    }
}

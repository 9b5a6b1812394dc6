//! [`UringEngine`]: device I/O through the current thread's reactor ring.

use std::ops::Range;
use std::sync::Arc;

use super::{check_discard, check_io, BlockEngine, IoFuture, UnitFuture};
use crate::io::buf::IoBuf;
use crate::io::device::{Device, Geometry};
use crate::io::error::{IoError, OpKind};
use crate::io::ops;

/// io_uring engine over a [`Device`]. Cheap to clone; usable from any reactor (each op goes
/// to the ring of the thread that awaits it). Awaiting outside a reactor yields
/// [`IoError::NotInReactor`].
#[derive(Debug, Clone)]
pub struct UringEngine {
    dev: Arc<Device>,
}

impl UringEngine {
    /// Wrap an open device.
    pub fn new(dev: Arc<Device>) -> UringEngine {
        UringEngine { dev }
    }

    /// The device.
    pub fn device(&self) -> &Arc<Device> {
        &self.dev
    }
}

impl BlockEngine for UringEngine {
    fn geometry(&self) -> Geometry {
        self.dev.geometry()
    }

    fn name(&self) -> &str {
        self.dev.name()
    }

    fn read_at(&self, buf: IoBuf, offset: u64) -> IoFuture {
        let dev = Arc::clone(&self.dev);
        Box::pin(async move {
            let g = dev.geometry();
            let (len, addr) = (buf.len(), buf.addr());
            if let Err(e) = check_io(&g, dev.name(), OpKind::Read, offset, len, addr) {
                return (Err(e), buf);
            }
            let (r, buf) = ops::read_exact_at(dev.ring_file(), buf, offset).await;
            (
                r.map_err(|e| map(&dev, OpKind::Read, offset, len, addr, e)),
                buf,
            )
        })
    }

    fn read_into(&self, buf: IoBuf, range: Range<usize>, offset: u64) -> IoFuture {
        let dev = Arc::clone(&self.dev);
        Box::pin(async move {
            let g = dev.geometry();
            let len = range.len();
            let addr = buf.addr().wrapping_add(range.start);
            if range.start > range.end || range.end > buf.capacity() {
                let e = IoError::Os {
                    op: OpKind::Read,
                    errno: libc::EINVAL,
                };
                return (Err(e), buf);
            }
            if let Err(e) = check_io(&g, dev.name(), OpKind::Read, offset, len, addr) {
                return (Err(e), buf);
            }
            let (r, buf) = ops::read_exact_range(dev.ring_file(), buf, range, offset).await;
            (
                r.map_err(|e| map(&dev, OpKind::Read, offset, len, addr, e)),
                buf,
            )
        })
    }

    fn write_at(&self, buf: IoBuf, offset: u64) -> IoFuture {
        let dev = Arc::clone(&self.dev);
        Box::pin(async move {
            if dev.is_read_only() {
                let e = IoError::ReadOnly {
                    device: dev.name().to_string(),
                };
                return (Err(e), buf);
            }
            let g = dev.geometry();
            let (len, addr) = (buf.len(), buf.addr());
            if let Err(e) = check_io(&g, dev.name(), OpKind::Write, offset, len, addr) {
                return (Err(e), buf);
            }
            let (r, buf) = ops::write_all_at(dev.ring_file(), buf, offset).await;
            (
                r.map_err(|e| map(&dev, OpKind::Write, offset, len, addr, e)),
                buf,
            )
        })
    }

    fn flush(&self) -> UnitFuture {
        let dev = Arc::clone(&self.dev);
        Box::pin(async move {
            ops::fsync(dev.ring_file(), true)
                .await
                .map_err(|e| map(&dev, OpKind::Flush, 0, 0, 0, e))
        })
    }

    fn discard(&self, offset: u64, len: u64) -> UnitFuture {
        let dev = Arc::clone(&self.dev);
        Box::pin(async move {
            check_discard(&dev.geometry(), dev.name(), offset, len)?;
            if dev.is_read_only() {
                return Err(IoError::ReadOnly {
                    device: dev.name().to_string(),
                });
            }
            if dev.geometry().is_block_device {
                if dev.uring_discard_usable() {
                    match ops::block_discard(dev.ring_file(), offset, len).await {
                        Ok(()) => return Ok(()),
                        Err(IoError::Os {
                            errno: libc::EINVAL | libc::ENOTTY | libc::EOPNOTSUPP,
                            ..
                        }) => {
                            // Kernel without block uring_cmd (or a device refusing it):
                            // remember, and use the ioctl.
                            dev.disable_uring_discard();
                        }
                        Err(IoError::Os { errno, .. }) => {
                            return Err(dev.discard_err(offset, errno))
                        }
                        Err(e) => return Err(e),
                    }
                }
                // BLKDISCARD ioctl, issued inline (it blocks this reactor while it runs).
                return dev.discard_blocking(offset, len);
            }
            let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
            match ops::fallocate(dev.ring_file(), mode, offset, len).await {
                Ok(()) => Ok(()),
                Err(IoError::Os { errno, .. }) => Err(dev.discard_err(offset, errno)),
                Err(e) => Err(e),
            }
        })
    }
}

/// Add device context to a raw op error.
fn map(dev: &Device, op: OpKind, offset: u64, len: usize, addr: usize, e: IoError) -> IoError {
    match e {
        IoError::Os { errno, .. } => dev.map_errno(op, offset, len as u64, addr, errno),
        IoError::UnexpectedEof { done, expected, .. } => IoError::UnexpectedEof {
            op,
            offset,
            done,
            expected,
        },
        other => other,
    }
}

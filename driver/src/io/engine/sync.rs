//! [`SyncEngine`]: plain pread/pwrite/fdatasync, completed inline.

use std::sync::Arc;

use super::{check_discard, check_io, BlockEngine, IoFuture, UnitFuture};
use crate::io::buf::IoBuf;
use crate::io::device::{Device, Geometry};
use crate::io::error::{IoError, OpKind};

/// Synchronous engine over a [`Device`]; its futures are ready on first poll.
#[derive(Debug, Clone)]
pub struct SyncEngine {
    dev: Arc<Device>,
}

impl SyncEngine {
    /// Wrap an open device.
    pub fn new(dev: Arc<Device>) -> SyncEngine {
        SyncEngine { dev }
    }

    /// The device.
    pub fn device(&self) -> &Arc<Device> {
        &self.dev
    }

    /// Blocking read of exactly `buf.len()` bytes.
    pub fn read_blocking(&self, buf: &mut IoBuf, offset: u64) -> Result<(), IoError> {
        let g = self.dev.geometry();
        check_io(
            &g,
            self.dev.name(),
            OpKind::Read,
            offset,
            buf.len(),
            buf.addr(),
        )?;
        let (total, addr, fd) = (buf.len(), buf.addr(), self.dev.fd());
        self.transfer(OpKind::Read, offset, total, addr, |done, off| {
            let rest = &mut buf[done..];
            // SAFETY: reads into our exclusive slice, at most its length.
            unsafe {
                libc::pread(
                    fd,
                    rest.as_mut_ptr().cast::<libc::c_void>(),
                    rest.len(),
                    off,
                )
            }
        })
    }

    /// Blocking write of exactly `buf.len()` bytes.
    pub fn write_blocking(&self, buf: &IoBuf, offset: u64) -> Result<(), IoError> {
        if self.dev.is_read_only() {
            return Err(IoError::ReadOnly {
                device: self.dev.name().to_string(),
            });
        }
        let g = self.dev.geometry();
        check_io(
            &g,
            self.dev.name(),
            OpKind::Write,
            offset,
            buf.len(),
            buf.addr(),
        )?;
        let fd = self.dev.fd();
        self.transfer(OpKind::Write, offset, buf.len(), buf.addr(), |done, off| {
            let rest = &buf[done..];
            // SAFETY: writes from our slice, at most its length.
            unsafe { libc::pwrite(fd, rest.as_ptr().cast::<libc::c_void>(), rest.len(), off) }
        })
    }

    /// Blocking fdatasync.
    pub fn flush_blocking(&self) -> Result<(), IoError> {
        // SAFETY: plain syscall on our descriptor.
        if unsafe { libc::fdatasync(self.dev.fd()) } != 0 {
            return Err(self.err(OpKind::Flush, 0, 0, 0, last_errno()));
        }
        Ok(())
    }

    /// Move `total` bytes at `offset` with `step(done, file offset)` (one pread/pwrite of the
    /// rest), retrying EINTR/EAGAIN and continuing after short transfers. A read that returns 0
    /// hit the end of the file; a write that moves nothing found no room (ENOSPC).
    fn transfer(
        &self,
        op: OpKind,
        offset: u64,
        total: usize,
        addr: usize,
        mut step: impl FnMut(usize, libc::off_t) -> isize,
    ) -> Result<(), IoError> {
        let mut done = 0usize;
        while done < total {
            let off = offset + done as u64;
            let Ok(off_t) = libc::off_t::try_from(off) else {
                return Err(self.err(op, off, 0, addr, libc::EINVAL));
            };
            let n = step(done, off_t);
            if n < 0 {
                let e = last_errno();
                if e == libc::EINTR || e == libc::EAGAIN {
                    continue;
                }
                return Err(self.err(op, offset, total, addr, e));
            }
            if n == 0 {
                return Err(match op {
                    OpKind::Read => IoError::UnexpectedEof {
                        op,
                        offset,
                        done: done as u64,
                        expected: total as u64,
                    },
                    _ => self.err(op, off, total, addr, libc::ENOSPC),
                });
            }
            done += usize::try_from(n).unwrap_or(0);
        }
        Ok(())
    }

    fn err(&self, op: OpKind, offset: u64, len: usize, addr: usize, errno: i32) -> IoError {
        self.dev.map_errno(op, offset, len as u64, addr, errno)
    }
}

fn last_errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

impl BlockEngine for SyncEngine {
    fn geometry(&self) -> Geometry {
        self.dev.geometry()
    }

    fn name(&self) -> &str {
        self.dev.name()
    }

    fn read_at(&self, mut buf: IoBuf, offset: u64) -> IoFuture {
        let r = self.read_blocking(&mut buf, offset);
        Box::pin(std::future::ready((r, buf)))
    }

    fn write_at(&self, buf: IoBuf, offset: u64) -> IoFuture {
        let r = self.write_blocking(&buf, offset);
        Box::pin(std::future::ready((r, buf)))
    }

    fn flush(&self) -> UnitFuture {
        Box::pin(std::future::ready(self.flush_blocking()))
    }

    fn discard(&self, offset: u64, len: u64) -> UnitFuture {
        let r = check_discard(&self.dev.geometry(), self.dev.name(), offset, len).and_then(|()| {
            if self.dev.is_read_only() {
                return Err(IoError::ReadOnly {
                    device: self.dev.name().to_string(),
                });
            }
            self.dev.discard_blocking(offset, len)
        });
        Box::pin(std::future::ready(r))
    }
}

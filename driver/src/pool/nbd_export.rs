//! Volumes as NBD exports: [`ExportBackend`] for [`Volume`].
//!
//! Reads report holes (so the server can send hole chunks), FLUSH commits the whole pool (hence
//! multi-conn is safe), FUA waits for the txg holding the write, TRIM and WRITE_ZEROES punch
//! holes (WRITE_ZEROES with NO_HOLE writes zero blocks instead), and block status answers from
//! the volume's tree and overlays.

use std::ops::Range;

use crate::io::IoBuf;
use crate::nbd::backend::{
    BackendError, BackendFuture, ExportBackend, ReadLayout, ReadResult, WriteResult,
};
use crate::nbd::proto::{state, Errno};
use crate::nbd::reply::Extent as NbdExtent;

use super::error::PoolError;
use super::volume::Volume;

/// Largest zero buffer written at once by WRITE_ZEROES with NO_HOLE.
const ZERO_CHUNK: u64 = 1 << 20;

fn to_backend(e: &PoolError) -> BackendError {
    let errno = match e.errno() {
        libc::ENOSPC => Errno::NoSpc,
        libc::EINVAL => Errno::Inval,
        libc::EROFS | libc::EPERM => Errno::Perm,
        libc::ESHUTDOWN => Errno::Shutdown,
        _ => Errno::Io,
    };
    BackendError::new(errno, e.to_string())
}

impl ExportBackend for Volume {
    fn size(&self) -> u64 {
        Volume::size(self)
    }

    fn block_size(&self) -> u32 {
        Volume::block_size(self)
    }

    fn read_only(&self) -> bool {
        Volume::read_only(self)
    }

    fn description(&self) -> String {
        format!("ringpool volume {}", self.name())
    }

    fn read(&self, offset: u64, buf: IoBuf, range: Range<usize>) -> BackendFuture<'_, ReadResult> {
        Box::pin(async move {
            let mut holes = Vec::new();
            let len = range.len();
            // Straight into the reply buffer (the volume verifies every block in place).
            let (r, buf) = self.read_into(offset, buf, range, Some(&mut holes)).await;
            let res = r.map_err(|e| to_backend(&e)).map(|()| {
                if holes.is_empty() {
                    ReadLayout::Data
                } else if holes.len() == 1 && holes[0] == (0..len) {
                    ReadLayout::Hole
                } else {
                    ReadLayout::Holes(
                        holes
                            .into_iter()
                            .map(|h| {
                                u32::try_from(h.start).unwrap_or(u32::MAX)
                                    ..u32::try_from(h.end).unwrap_or(u32::MAX)
                            })
                            .collect(),
                    )
                }
            });
            (res, buf)
        })
    }

    fn write(&self, offset: u64, data: IoBuf, fua: bool) -> BackendFuture<'_, WriteResult> {
        Box::pin(async move {
            let (r, data) = self.write_buf(offset, data, fua).await;
            (r.map_err(|e| to_backend(&e)), data)
        })
    }

    fn write_back(&self, offset: u64, data: IoBuf) -> BackendFuture<'_, WriteResult> {
        Box::pin(async move {
            let (r, data) = Volume::write_back(self, offset, data).await;
            let data = data.unwrap_or_else(|| IoBuf::with_capacity(0));
            (r.map_err(|e| to_backend(&e)), data)
        })
    }

    fn gathers_writes(&self) -> bool {
        true
    }

    fn write_batch(&self, writes: Vec<(u64, IoBuf)>) -> BackendFuture<'_, Vec<WriteResult>> {
        Box::pin(async move {
            self.write_gather(writes)
                .await
                .into_iter()
                .map(|(r, data)| (r.map_err(|e| to_backend(&e)), data))
                .collect()
        })
    }

    fn write_batch_back(&self, writes: Vec<(u64, IoBuf)>) -> BackendFuture<'_, Vec<WriteResult>> {
        Box::pin(async move {
            self.write_gather_back(writes)
                .await
                .into_iter()
                .map(|(r, data)| (r.map_err(|e| to_backend(&e)), data))
                .collect()
        })
    }

    fn flush(&self) -> BackendFuture<'_, Result<(), BackendError>> {
        Box::pin(async move { Volume::flush(self).await.map_err(|e| to_backend(&e)) })
    }

    fn trim(&self, offset: u64, len: u64) -> BackendFuture<'_, Result<(), BackendError>> {
        Box::pin(async move {
            self.punch(offset, len, false)
                .await
                .map_err(|e| to_backend(&e))
        })
    }

    fn write_zeroes(
        &self,
        offset: u64,
        len: u64,
        may_trim: bool,
        fast_only: bool,
    ) -> BackendFuture<'_, Result<(), BackendError>> {
        Box::pin(async move {
            if may_trim {
                return self
                    .punch(offset, len, false)
                    .await
                    .map_err(|e| to_backend(&e));
            }
            if fast_only {
                return Err(BackendError::not_supported(
                    "zeroing without holes writes data",
                ));
            }
            let mut pos = offset;
            let end = offset + len;
            while pos < end {
                let n = (end - pos).min(ZERO_CHUNK);
                let zeros = vec![0u8; usize::try_from(n).unwrap_or(0)];
                Volume::write(self, pos, &zeros, false)
                    .await
                    .map_err(|e| to_backend(&e))?;
                pos += n;
            }
            Ok(())
        })
    }

    fn block_status(
        &self,
        offset: u64,
        len: u64,
    ) -> BackendFuture<'_, Result<Vec<NbdExtent>, BackendError>> {
        Box::pin(async move {
            // Bound the work per request: the client asks again for the rest.
            let len = len.min(1 << 30);
            let ext = Volume::block_status(self, offset, len)
                .await
                .map_err(|e| to_backend(&e))?;
            Ok(ext
                .into_iter()
                .map(|e| NbdExtent {
                    length: e.len,
                    flags: if e.hole { state::HOLE | state::ZERO } else { 0 },
                })
                .collect())
        })
    }
}

//! A pool volume as an NBD export: the [`ExportBackend`] that `serve` publishes.

use std::ops::Range;

use ringpool_driver::io::IoBuf;
use ringpool_driver::nbd::{
    BackendError, BackendFuture, Errno, ExportBackend, Extent, ReadLayout, ReadResult, WriteResult,
};
use ringpool_driver::pool::{PoolError, Volume};

/// `base:allocation` flags (NBD_STATE_HOLE | NBD_STATE_ZERO for a hole).
const STATE_HOLE_ZERO: u32 = 0b11;
/// Largest zero buffer written at once for WRITE_ZEROES with NO_HOLE.
const ZERO_CHUNK: u64 = 1 << 20;

#[derive(Debug)]
pub struct VolumeExport {
    volume: Volume,
    description: String,
}

impl VolumeExport {
    pub fn new(volume: Volume, pool: &str) -> VolumeExport {
        let description = format!("ringpool volume {pool}/{}", volume.name());
        VolumeExport {
            volume,
            description,
        }
    }
}

/// The pool's error as the client sees it: the errno it carries, the text for logs.
fn to_backend(e: PoolError) -> BackendError {
    let errno = match e.errno() {
        libc::ENOSPC => Errno::NoSpc,
        libc::EINVAL => Errno::Inval,
        libc::EROFS | libc::EPERM => Errno::Perm,
        _ => Errno::Io,
    };
    BackendError::new(errno, e.to_string())
}

impl ExportBackend for VolumeExport {
    fn size(&self) -> u64 {
        self.volume.size()
    }

    fn block_size(&self) -> u32 {
        self.volume.block_size()
    }

    fn read_only(&self) -> bool {
        self.volume.read_only()
    }

    fn description(&self) -> String {
        self.description.clone()
    }

    fn read(
        &self,
        offset: u64,
        mut buf: IoBuf,
        range: Range<usize>,
    ) -> BackendFuture<'_, ReadResult> {
        Box::pin(async move {
            let res = match buf.get_mut(range) {
                Some(slice) => self.volume.read(offset, slice).await.map_err(to_backend),
                None => Err(BackendError::invalid("read range outside the buffer")),
            };
            (res.map(|()| ReadLayout::Data), buf)
        })
    }

    fn write(&self, offset: u64, data: IoBuf, fua: bool) -> BackendFuture<'_, WriteResult> {
        Box::pin(async move {
            let res = self
                .volume
                .write(offset, &data, fua)
                .await
                .map_err(to_backend);
            (res, data)
        })
    }

    fn flush(&self) -> BackendFuture<'_, Result<(), BackendError>> {
        Box::pin(async move { self.volume.flush().await.map_err(to_backend) })
    }

    fn trim(&self, offset: u64, len: u64) -> BackendFuture<'_, Result<(), BackendError>> {
        Box::pin(async move {
            self.volume
                .punch(offset, len, false)
                .await
                .map_err(to_backend)
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
                // A hole reads as zeroes and costs no data write: always the fast way.
                return self
                    .volume
                    .punch(offset, len, false)
                    .await
                    .map_err(to_backend);
            }
            if fast_only {
                return Err(BackendError::not_supported(
                    "zeroing without holes writes data",
                ));
            }
            let chunk = usize::try_from(len.min(ZERO_CHUNK)).unwrap_or(0);
            let zeros = vec![0u8; chunk];
            let mut done = 0u64;
            while done < len {
                let n = (len - done).min(ZERO_CHUNK);
                let n_usize = usize::try_from(n).unwrap_or(chunk);
                self.volume
                    .write(offset + done, &zeros[..n_usize], false)
                    .await
                    .map_err(to_backend)?;
                done += n;
            }
            Ok(())
        })
    }

    fn block_status(
        &self,
        offset: u64,
        len: u64,
    ) -> BackendFuture<'_, Result<Vec<Extent>, BackendError>> {
        Box::pin(async move {
            let extents = self
                .volume
                .block_status(offset, len)
                .await
                .map_err(to_backend)?;
            Ok(extents
                .into_iter()
                .map(|e| Extent {
                    length: e.len,
                    flags: if e.hole { STATE_HOLE_ZERO } else { 0 },
                })
                .collect())
        })
    }
}

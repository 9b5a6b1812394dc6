//! A file or block device, driven by driver::io's ring ops from the job's reactor.
//!
//! Each job opens the target with `driver::io::Device::open` (O_DIRECT required by default,
//! `--direct=false` for buffered I/O; geometry from the device) and issues its I/O through the
//! device's registered file slot on the job's ring, from buffers of the reactor's registered
//! arena (READ_FIXED/WRITE_FIXED) when the memlock limit allows. FUA writes go through a
//! second descriptor opened with O_DSYNC, so each one is a single FUA write in the kernel
//! rather than a write followed by a flush.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::PathBuf;

use rand::{RngCore, SeedableRng};
use ringpool_driver::io::{ops, Device, DeviceOptions, DirectIo, FileRef, IoBuf};

use super::{Conn, IoResult, TargetInfo};
use crate::cli::{Prefill, WorkloadArgs};
use crate::error::{io_err, PerfError};
use crate::verify;

#[derive(Debug, Clone)]
pub struct RawSpec {
    pub path: PathBuf,
    pub direct: bool,
}

impl RawSpec {
    pub fn new(path: &str, direct: bool) -> RawSpec {
        RawSpec {
            path: PathBuf::from(path),
            direct,
        }
    }

    fn err(&self, e: io::Error) -> PerfError {
        PerfError::target(&self.path.display().to_string(), e)
    }

    fn open(&self, direct: bool, dsync: bool) -> io::Result<File> {
        let mut flags = libc::O_CLOEXEC;
        if direct {
            flags |= libc::O_DIRECT;
        }
        if dsync {
            flags |= libc::O_DSYNC;
        }
        OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(flags)
            .open(&self.path)
    }

    /// Size and alignment; creates (or grows) a regular file when `--size` asks for more.
    pub fn probe(&self, w: &WorkloadArgs) -> Result<TargetInfo, PerfError> {
        let want = w.size.map(|s| s + w.offset);
        let meta = match std::fs::metadata(&self.path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound && want.is_some() => {
                File::create(&self.path).map_err(|e| self.err(e))?;
                std::fs::metadata(&self.path).map_err(|e| self.err(e))?
            }
            Err(e) => return Err(self.err(e)),
        };
        if !meta.file_type().is_block_device() && !meta.file_type().is_file() {
            return Err(self.err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a regular file or block device",
            )));
        }
        let mut size = if meta.file_type().is_file() {
            meta.len()
        } else {
            0
        };
        if let Some(want) = want.filter(|_| meta.file_type().is_file()) {
            if want > size {
                let f = OpenOptions::new()
                    .write(true)
                    .open(&self.path)
                    .map_err(|e| self.err(e))?;
                f.set_len(want).map_err(|e| self.err(e))?;
                size = want;
            }
        }
        let dev = Device::open(&self.path, &self.options(false))
            .map_err(|e| self.err(io_err_hint(&e, self.direct)))?;
        let g = dev.geometry();
        Ok(TargetInfo {
            size: g.size_bytes.max(size),
            block: u64::from(g.logical_block_size.max(g.mem_align)).max(1),
            describe: format!(
                "{} {} ({}, logical block {})",
                if g.is_block_device {
                    "block device"
                } else {
                    "file"
                },
                self.path.display(),
                if g.direct { "O_DIRECT" } else { "buffered" },
                g.logical_block_size
            ),
        })
    }

    fn options(&self, exclusive: bool) -> DeviceOptions {
        DeviceOptions {
            direct: if self.direct {
                DirectIo::Required
            } else {
                DirectIo::Disabled
            },
            exclusive,
            read_only: false,
            min_size: 0,
        }
    }

    /// Prefills `[off, off+len)` when asked or when it has holes (files only in auto mode).
    pub fn prepare(
        &self,
        w: &WorkloadArgs,
        region: (u64, u64),
        unit: u64,
        run_id: u64,
    ) -> Result<(), PerfError> {
        let (off, len) = region;
        let is_file = std::fs::metadata(&self.path)
            .map(|m| m.file_type().is_file())
            .unwrap_or(false);
        let needed = match w.prefill {
            Prefill::Never => false,
            Prefill::Always => true,
            Prefill::Auto => is_file && has_hole(&self.path, off, len).map_err(|e| self.err(e))?,
        };
        if !needed {
            return Ok(());
        }
        if !w.quiet {
            eprintln!(
                "ringperf: prefilling {} bytes of {} at offset {off}{}",
                len,
                self.path.display(),
                if w.verify { " with verify headers" } else { "" }
            );
        }
        let f = OpenOptions::new()
            .write(true)
            .open(&self.path)
            .map_err(|e| self.err(e))?;
        let chunk = 1u64 << 20;
        let mut buf = vec![0u8; usize::try_from(chunk).unwrap_or(1 << 20)];
        let mut rng = rand::rngs::SmallRng::seed_from_u64(w.seed ^ 0xF111);
        let unit_us = usize::try_from(unit).unwrap_or(4096);
        let mut pos = off;
        while pos < off + len {
            let n = chunk.min(off + len - pos);
            let b = &mut buf[..usize::try_from(n).unwrap_or(0)];
            if w.verify {
                let mut uoff = pos;
                for u in b.chunks_exact_mut(unit_us) {
                    verify::format_unit(u, uoff, run_id, 0);
                    uoff += unit;
                }
            } else {
                rng.fill_bytes(b);
            }
            f.write_all_at(b, pos).map_err(|e| self.err(e))?;
            pos += n;
        }
        f.sync_data().map_err(|e| self.err(e))?;
        // Drop the page cache copy so buffered runs start cold too.
        // SAFETY: plain syscall on a descriptor we own.
        unsafe {
            libc::posix_fadvise(
                f.as_raw_fd(),
                i64::try_from(off).unwrap_or(0),
                i64::try_from(len).unwrap_or(0),
                libc::POSIX_FADV_DONTNEED,
            );
        }
        Ok(())
    }

    /// Opens the descriptors of one job.
    /// Runs on the job's reactor, so the registered file slot belongs to its ring.
    pub fn connect(&self) -> io::Result<RawConn> {
        let dev = Device::open(&self.path, &self.options(false))
            .map_err(|e| io_err_hint(&e, self.direct))?;
        let file = dev.ring_file();
        let fd_fua: OwnedFd = self.open(dev.geometry().direct, true)?.into();
        Ok(RawConn {
            _dev: dev,
            file,
            fd_fua,
        })
    }
}

/// True if `[off, off+len)` of the file contains a hole (or lies past its end).
fn has_hole(path: &std::path::Path, off: u64, len: u64) -> io::Result<bool> {
    let f = File::open(path)?;
    let end = off + len;
    if f.metadata()?.len() < end {
        return Ok(true);
    }
    let o = libc::off_t::try_from(off).map_err(|_| io::Error::other("offset too large"))?;
    // SAFETY: plain syscall on a descriptor we own.
    let h = unsafe { libc::lseek(f.as_raw_fd(), o, libc::SEEK_HOLE) };
    if h < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(u64::try_from(h).unwrap_or(0) < end)
}

fn io_err_hint(e: &ringpool_driver::io::IoError, direct: bool) -> io::Error {
    let base = io_err(e);
    if direct && matches!(e, ringpool_driver::io::IoError::DirectIoUnsupported { .. }) {
        io::Error::new(
            base.kind(),
            format!("{base}; use --direct=false for buffered I/O"),
        )
    } else {
        base
    }
}

/// One job's device.
#[derive(Debug)]
pub struct RawConn {
    /// Keeps the descriptor (and its registered slot) alive.
    _dev: Device,
    /// The device on this job's ring (a registered slot when available).
    file: FileRef,
    fd_fua: OwnedFd,
}

fn short(what: &str, n: usize, want: usize) -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        format!("short {what}: {n} of {want} bytes"),
    )
}

impl Conn for RawConn {
    async fn read(&self, buf: IoBuf, off: u64) -> IoResult {
        let want = buf.len();
        let (r, buf) = ops::read_at(self.file, buf, off).await;
        let r = match r {
            Ok(n) if n == want => Ok(()),
            Ok(n) => Err(short("read", n, want)),
            Err(e) => Err(io_err(&e)),
        };
        (r, buf)
    }

    async fn write(&self, buf: IoBuf, off: u64, fua: bool) -> IoResult {
        let want = buf.len();
        let (r, buf) = if fua {
            ops::write_at(self.fd_fua.as_raw_fd(), buf, off).await
        } else {
            ops::write_at(self.file, buf, off).await
        };
        let r = match r {
            Ok(n) if n == want => Ok(()),
            Ok(n) => Err(short("write", n, want)),
            Err(e) => Err(io_err(&e)),
        };
        (r, buf)
    }

    async fn flush(&self) -> io::Result<()> {
        ops::fsync(self.file, true).await.map_err(|e| io_err(&e))
    }
}

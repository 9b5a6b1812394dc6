//! Devices: a block device or a regular file, opened with an explicit O_DIRECT policy and an
//! exclusive claim, with its geometry discovered (never hard-coded).
//!
//! * Block devices: `O_EXCL` (EBUSY -> [`IoError::InUse`]); size, logical and physical block
//!   sizes from BLKGETSIZE64 / BLKSSZGET / BLKPBSZGET; discard support from sysfs
//!   `queue/discard_max_bytes`.
//! * Regular files: `flock(LOCK_EX|LOCK_NB)` (EWOULDBLOCK -> InUse); O_DIRECT alignment from
//!   `statx(STATX_DIOALIGN)` when the kernel and file system report it, else the underlying
//!   block device's sysfs `logical_block_size`, else `st_blksize`. tmpfs is detected with
//!   statfs (TMPFS_MAGIC): it accepts O_DIRECT without enforcing alignment, so
//!   `DirectIo::Required` refuses it and `Optional` opens it buffered.
//! * Discard: BLKDISCARD on block devices, `fallocate(PUNCH_HOLE|KEEP_SIZE)` on files (reads
//!   of a punched range return zeroes; after BLKDISCARD the contents are device-defined).

use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::io::error::{IoError, OpKind};
use crate::io::ops::FileRef;
use crate::io::reactor::{file_for_device, FileRegistrations};

// <linux/fs.h> ioctl numbers (not exported by the libc crate).
const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;
const BLKSSZGET: libc::c_ulong = 0x1268;
const BLKPBSZGET: libc::c_ulong = 0x127b;
const BLKDISCARD: libc::c_ulong = 0x1277;

/// O_DIRECT policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DirectIo {
    /// Open O_DIRECT or fail with [`IoError::DirectIoUnsupported`].
    #[default]
    Required,
    /// Use O_DIRECT when the file system supports (and enforces) it; otherwise buffered.
    Optional,
    /// Buffered I/O.
    Disabled,
}

/// How to open a device.
#[derive(Debug, Clone, Default)]
pub struct DeviceOptions {
    /// O_DIRECT policy.
    pub direct: DirectIo,
    /// Claim the device exclusively (O_EXCL / flock).
    pub exclusive: bool,
    /// Open read-only.
    pub read_only: bool,
    /// Refuse devices smaller than this many bytes.
    pub min_size: u64,
}

/// Size and alignment facts of an open device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// Usable size in bytes.
    pub size_bytes: u64,
    /// Granularity of offsets and lengths for (direct) I/O.
    pub logical_block_size: u32,
    /// Preferred write granularity (atomicity hint).
    pub physical_block_size: u32,
    /// Required buffer address alignment for direct I/O (1 when buffered).
    pub mem_align: u32,
    /// A block device (vs a regular file).
    pub is_block_device: bool,
    /// Discard is expected to work.
    pub supports_discard: bool,
    /// Opened with O_DIRECT.
    pub direct: bool,
}

impl Geometry {
    /// Geometry of an in-memory device of `size_bytes` with `sector`-byte blocks.
    pub fn memory(size_bytes: u64, sector: u32) -> Geometry {
        Geometry {
            size_bytes,
            logical_block_size: sector,
            physical_block_size: sector,
            mem_align: sector,
            is_block_device: false,
            supports_discard: true,
            direct: true,
        }
    }
}

/// How long a refused exclusive claim is retried before reporting InUse (see `Device::claim`).
const CLAIM_RETRY: std::time::Duration = std::time::Duration::from_millis(300);

static NEXT_DEVICE_ID: AtomicU64 = AtomicU64::new(1);

/// An open device. The descriptor (and the exclusive claim) is released on drop.
#[derive(Debug)]
pub struct Device {
    file: File,
    /// The exclusive claim, on a descriptor of its own (see [`Device::claim`]). Closing it in
    /// drop releases the claim at once, even while an io_uring ring still holds a reference to
    /// `file` (a fixed-file slot is let go asynchronously by the kernel).
    _claim: Option<File>,
    path: PathBuf,
    name: String,
    geometry: Geometry,
    read_only: bool,
    id: u64,
    /// Reactors whose rings hold this device as a fixed file (released on drop).
    registrations: FileRegistrations,
    /// Cleared once the ring's block discard command was refused (old kernel).
    uring_discard: AtomicBool,
}

impl Drop for Device {
    fn drop(&mut self) {
        self.registrations.release(self.id);
    }
}

fn errno_of(e: &std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(libc::EIO)
}

fn path_err(path: &Path, op: OpKind, errno: i32) -> IoError {
    match errno {
        libc::ENOENT | libc::ENOTDIR => IoError::NotFound {
            path: path.to_owned(),
        },
        libc::EBUSY | libc::EWOULDBLOCK => IoError::InUse {
            path: path.to_owned(),
        },
        _ => IoError::Path {
            path: path.to_owned(),
            op,
            errno,
        },
    }
}

fn ioctl_u64(fd: RawFd, req: libc::c_ulong) -> Result<u64, i32> {
    let mut v: u64 = 0;
    // SAFETY: the request writes one u64 into our local.
    let r = unsafe { libc::ioctl(fd, req, std::ptr::from_mut(&mut v)) };
    if r < 0 {
        return Err(errno_of(&std::io::Error::last_os_error()));
    }
    Ok(v)
}

fn ioctl_int(fd: RawFd, req: libc::c_ulong) -> Result<u32, i32> {
    let mut v: libc::c_int = 0;
    // SAFETY: the request writes one int into our local.
    let r = unsafe { libc::ioctl(fd, req, std::ptr::from_mut(&mut v)) };
    if r < 0 {
        return Err(errno_of(&std::io::Error::last_os_error()));
    }
    u32::try_from(v).map_err(|_| libc::EINVAL)
}

fn read_sysfs_u64(path: &str) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// sysfs queue attribute for the block device `major:minor` (or its parent disk, for
/// partitions).
fn sysfs_queue_attr(major: u32, minor: u32, attr: &str) -> Option<u64> {
    read_sysfs_u64(&format!("/sys/dev/block/{major}:{minor}/queue/{attr}"))
        .or_else(|| read_sysfs_u64(&format!("/sys/dev/block/{major}:{minor}/../queue/{attr}")))
}

fn statfs_type(fd: RawFd) -> Option<libc::c_long> {
    // SAFETY: statfs is plain old data.
    let mut s: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: fstatfs writes into our local.
    if unsafe { libc::fstatfs(fd, &mut s) } != 0 {
        return None;
    }
    #[allow(clippy::useless_conversion)]
    libc::c_long::try_from(s.f_type).ok()
}

/// (offset alignment, memory alignment) reported by statx(STATX_DIOALIGN), if any.
fn statx_dio(fd: RawFd) -> Option<(u32, u32)> {
    // SAFETY: statx is plain old data.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    let empty = c"";
    // SAFETY: valid fd, empty path with AT_EMPTY_PATH, output into our local.
    let r = unsafe {
        libc::statx(
            fd,
            empty.as_ptr(),
            libc::AT_EMPTY_PATH,
            libc::STATX_DIOALIGN,
            &mut stx,
        )
    };
    if r != 0 || stx.stx_mask & libc::STATX_DIOALIGN == 0 || stx.stx_dio_offset_align == 0 {
        return None;
    }
    Some((stx.stx_dio_offset_align, stx.stx_dio_mem_align.max(1)))
}

fn fstat(fd: RawFd) -> Result<libc::stat, i32> {
    // SAFETY: stat is plain old data.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat writes into our local.
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return Err(errno_of(&std::io::Error::last_os_error()));
    }
    Ok(st)
}

fn open_raw(path: &Path, flags: i32) -> Result<File, i32> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(|_| libc::EINVAL)?;
    // SAFETY: c is a valid NUL-terminated path.
    let fd = unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(errno_of(&std::io::Error::last_os_error()));
    }
    // SAFETY: fresh descriptor owned by us.
    Ok(unsafe { File::from_raw_fd(fd) })
}

impl Device {
    /// Open `path` according to `opts`. See the module docs for the policy.
    pub fn open(path: impl AsRef<Path>, opts: &DeviceOptions) -> Result<Device, IoError> {
        let path = path.as_ref();
        let meta =
            std::fs::metadata(path).map_err(|e| path_err(path, OpKind::Open, errno_of(&e)))?;
        let ft = meta.file_type();
        let is_block = ft.is_block_device();
        if !is_block && !ft.is_file() {
            return Err(IoError::NotFileOrBlockDevice {
                path: path.to_owned(),
            });
        }
        let flags = if opts.read_only {
            libc::O_RDONLY
        } else {
            libc::O_RDWR
        };
        // Claim first, on a separate descriptor, so that nothing below races another opener.
        let claim = if opts.exclusive {
            Some(Self::claim(path, is_block)?)
        } else {
            None
        };
        let want_direct = opts.direct != DirectIo::Disabled;
        let (file, direct) = if want_direct {
            match open_raw(path, flags | libc::O_DIRECT) {
                Ok(f) => (f, true),
                Err(libc::EINVAL) if opts.direct == DirectIo::Optional => (
                    open_raw(path, flags).map_err(|e| path_err(path, OpKind::Open, e))?,
                    false,
                ),
                Err(libc::EINVAL) => {
                    return Err(IoError::DirectIoUnsupported {
                        path: path.to_owned(),
                        reason: "open with O_DIRECT returned EINVAL".into(),
                    })
                }
                Err(e) => return Err(path_err(path, OpKind::Open, e)),
            }
        } else {
            (
                open_raw(path, flags).map_err(|e| path_err(path, OpKind::Open, e))?,
                false,
            )
        };
        let fd = file.as_raw_fd();
        // tmpfs accepts O_DIRECT but enforces nothing: refuse or fall back.
        let mut file = file;
        let mut direct = direct;
        if direct && !is_block && statfs_type(fd) == Some(libc::TMPFS_MAGIC) {
            if opts.direct == DirectIo::Required {
                return Err(IoError::DirectIoUnsupported {
                    path: path.to_owned(),
                    reason: "tmpfs does not enforce O_DIRECT alignment".into(),
                });
            }
            file = open_raw(path, flags).map_err(|e| path_err(path, OpKind::Open, e))?;
            direct = false;
        }
        let fd = file.as_raw_fd();
        let st = fstat(fd).map_err(|e| path_err(path, OpKind::Open, e))?;
        let geometry = if is_block {
            let size = ioctl_u64(fd, BLKGETSIZE64).map_err(|e| path_err(path, OpKind::Open, e))?;
            let lbs = ioctl_int(fd, BLKSSZGET).map_err(|e| path_err(path, OpKind::Open, e))?;
            let pbs = ioctl_int(fd, BLKPBSZGET).unwrap_or(lbs);
            let (maj, min) = (libc::major(st.st_rdev), libc::minor(st.st_rdev));
            let discard = sysfs_queue_attr(maj, min, "discard_max_bytes").is_some_and(|v| v > 0);
            Geometry {
                size_bytes: size,
                logical_block_size: lbs,
                physical_block_size: pbs.max(lbs),
                mem_align: if direct { lbs } else { 1 },
                is_block_device: true,
                supports_discard: discard,
                direct,
            }
        } else {
            let (maj, min) = (libc::major(st.st_dev), libc::minor(st.st_dev));
            let blksize = u32::try_from(st.st_blksize).unwrap_or(4096).max(512);
            let sysfs_lbs = sysfs_queue_attr(maj, min, "logical_block_size")
                .and_then(|v| u32::try_from(v).ok())
                .filter(|v| v.is_power_of_two());
            let (lbs, mem) = match statx_dio(fd) {
                Some((off, mem)) => (off, mem),
                None => {
                    let l = sysfs_lbs.unwrap_or(blksize);
                    (l, l)
                }
            };
            let pbs = sysfs_queue_attr(maj, min, "physical_block_size")
                .and_then(|v| u32::try_from(v).ok())
                .unwrap_or(blksize)
                .max(lbs);
            Geometry {
                size_bytes: u64::try_from(st.st_size).unwrap_or(0),
                logical_block_size: lbs,
                physical_block_size: pbs,
                mem_align: if direct { mem } else { 1 },
                is_block_device: false,
                supports_discard: true,
                direct,
            }
        };
        if geometry.size_bytes < opts.min_size {
            return Err(IoError::TooSmall {
                path: path.to_owned(),
                size: geometry.size_bytes,
                min: opts.min_size,
            });
        }
        Ok(Device {
            file,
            _claim: claim,
            path: path.to_owned(),
            name: path.display().to_string(),
            geometry,
            read_only: opts.read_only,
            id: NEXT_DEVICE_ID.fetch_add(1, Ordering::Relaxed),
            registrations: FileRegistrations::default(),
            uring_discard: AtomicBool::new(true),
        })
    }

    /// Take the exclusive claim on `path` through a descriptor used for nothing else: O_EXCL for a
    /// block device (EBUSY -> InUse), `flock(LOCK_EX|LOCK_NB)` for a file (EWOULDBLOCK -> InUse).
    /// The I/O descriptor is opened separately, so the claim's lifetime is exactly the
    /// `Device`'s, whatever the rings that registered the I/O descriptor still hold.
    ///
    /// A refusal is retried for a short while: the claim belongs to the open file description,
    /// so a child that any thread of the previous holder's process forked keeps it alive until
    /// the child execs (descriptors are close-on-exec). A real holder outlasts the retries.
    fn claim(path: &Path, is_block: bool) -> Result<File, IoError> {
        let mut delay = std::time::Duration::from_millis(2);
        let mut waited = std::time::Duration::ZERO;
        loop {
            match Self::try_claim(path, is_block) {
                Err(libc::EBUSY | libc::EWOULDBLOCK) if waited < CLAIM_RETRY => {
                    std::thread::sleep(delay);
                    waited += delay;
                    delay = (delay * 2).min(std::time::Duration::from_millis(50));
                }
                r => return r.map_err(|e| path_err(path, OpKind::Open, e)),
            }
        }
    }

    fn try_claim(path: &Path, is_block: bool) -> Result<File, i32> {
        let flags = libc::O_RDONLY | if is_block { libc::O_EXCL } else { 0 };
        let f = open_raw(path, flags)?;
        if !is_block {
            // SAFETY: flock on a descriptor we own and keep open for the lock's lifetime.
            if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
                return Err(errno_of(&std::io::Error::last_os_error()));
            }
        }
        Ok(f)
    }

    /// Create (or truncate to) a sparse regular file of `size` bytes.
    pub fn create_sparse_file(path: impl AsRef<Path>, size: u64) -> Result<(), IoError> {
        let path = path.as_ref();
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(path)
            .map_err(|e| path_err(path, OpKind::Open, errno_of(&e)))?;
        f.set_len(size)
            .map_err(|e| path_err(path, OpKind::Fallocate, errno_of(&e)))
    }

    /// The descriptor (valid while the device lives).
    pub fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// The path it was opened with.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The path as a string, for error context.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Geometry.
    pub fn geometry(&self) -> Geometry {
        self.geometry
    }

    /// Opened read-only.
    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    /// The file reference for ring ops on the current reactor: its registered (fixed) slot,
    /// registering lazily, or the raw descriptor when registration is unavailable.
    pub fn ring_file(&self) -> FileRef {
        file_for_device(self.id, self.fd(), &self.registrations)
    }

    /// Process-unique id (keys per-reactor fixed-file slots).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Map a raw errno from a data op into a typed error with this device's context.
    pub fn map_errno(&self, op: OpKind, offset: u64, len: u64, addr: usize, errno: i32) -> IoError {
        if errno == libc::EINVAL
            && self.geometry.direct
            && matches!(op, OpKind::Read | OpKind::Write)
        {
            return IoError::Alignment {
                device: self.name.clone(),
                op,
                offset,
                len,
                addr,
                block: self.geometry.logical_block_size,
                mem_align: self.geometry.mem_align,
            };
        }
        IoError::Device {
            device: self.name.clone(),
            offset,
            op,
            errno,
        }
    }

    /// Whether discards may try the ring's block uring_cmd first.
    pub(crate) fn uring_discard_usable(&self) -> bool {
        self.uring_discard.load(Ordering::Relaxed)
    }

    /// The ring refused the block discard command; use the ioctl from now on.
    pub(crate) fn disable_uring_discard(&self) {
        self.uring_discard.store(false, Ordering::Relaxed);
    }

    /// Blocking discard of `[offset, offset+len)`: BLKDISCARD or a hole punch.
    pub fn discard_blocking(&self, offset: u64, len: u64) -> Result<(), IoError> {
        let fd = self.fd();
        if self.geometry.is_block_device {
            let range: [u64; 2] = [offset, len];
            // SAFETY: BLKDISCARD reads two u64 from our local array.
            let r = unsafe { libc::ioctl(fd, BLKDISCARD, range.as_ptr()) };
            if r < 0 {
                let e = errno_of(&std::io::Error::last_os_error());
                return Err(self.discard_err(offset, e));
            }
            return Ok(());
        }
        let (Ok(o), Ok(l)) = (i64::try_from(offset), i64::try_from(len)) else {
            return Err(self.discard_err(offset, libc::EINVAL));
        };
        // SAFETY: plain syscall on our descriptor.
        let r = unsafe {
            libc::fallocate(
                fd,
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                o,
                l,
            )
        };
        if r < 0 {
            let e = errno_of(&std::io::Error::last_os_error());
            return Err(self.discard_err(offset, e));
        }
        Ok(())
    }

    pub(crate) fn discard_err(&self, offset: u64, errno: i32) -> IoError {
        if errno == libc::EOPNOTSUPP {
            return IoError::Unsupported {
                device: self.name.clone(),
                op: OpKind::Discard,
            };
        }
        IoError::Device {
            device: self.name.clone(),
            offset,
            op: OpKind::Discard,
            errno,
        }
    }
}

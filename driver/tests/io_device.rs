//! Device open policy, typed errors, geometry, discard, fixed-file release; loop devices when
//! running as root with /dev/loop-control.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use ringpool_driver::io::{
    self, BlockEngine, Device, DeviceOptions, DirectIo, FileRef, IoBuf, IoError, ReactorConfig,
    ReactorSet, SyncEngine, UringEngine,
};

/// Serializes the tests that assert a claim is released with the tests that spawn processes.
/// A flock (and an O_EXCL open) belongs to the open file description, and a child forked by
/// another test thread holds a copy of every descriptor until it execs: for that instant the
/// claim is still held, and a "reopen succeeds after drop" check would fail spuriously.
static FORK_OR_CLAIM: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn fork_or_claim() -> std::sync::MutexGuard<'static, ()> {
    FORK_OR_CLAIM
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn cfg() -> ReactorConfig {
    ReactorConfig {
        reactors: 2,
        arena_bytes: 1 << 20,
        ..ReactorConfig::default()
    }
}

fn excl() -> DeviceOptions {
    DeviceOptions {
        direct: DirectIo::Required,
        exclusive: true,
        ..DeviceOptions::default()
    }
}

#[test]
fn typed_open_errors() {
    let _serial = fork_or_claim();
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let missing = dir.path().join("missing");
    assert!(matches!(
        Device::open(&missing, &excl()),
        Err(IoError::NotFound { .. })
    ));
    assert!(matches!(
        Device::open(dir.path(), &excl()),
        Err(IoError::NotFileOrBlockDevice { .. })
    ));
    assert!(matches!(
        Device::open("/dev/null", &excl()),
        Err(IoError::NotFileOrBlockDevice { .. })
    ));
    let small = dir.path().join("small");
    Device::create_sparse_file(&small, 1 << 20).unwrap();
    let opts = DeviceOptions {
        min_size: 2 << 20,
        ..excl()
    };
    match Device::open(&small, &opts) {
        Err(e @ IoError::TooSmall { .. }) => assert_eq!(e.errno(), libc::ENOSPC),
        other => panic!("expected TooSmall, got {other:?}"),
    }
    // Exclusive: a second open fails while the first lives, succeeds after.
    let d = Device::open(&small, &excl()).unwrap();
    match Device::open(&small, &excl()) {
        Err(e @ IoError::InUse { .. }) => assert_eq!(e.errno(), libc::EBUSY),
        other => panic!("expected InUse, got {other:?}"),
    }
    // Non-exclusive opens are allowed.
    let shared = DeviceOptions {
        exclusive: false,
        ..excl()
    };
    drop(Device::open(&small, &shared).unwrap());
    drop(d);
    drop(Device::open(&small, &excl()).unwrap());
}

fn is_tmpfs(p: &Path) -> bool {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: statfs is plain old data.
    let mut s: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid C string and output pointer.
    unsafe { libc::statfs(c.as_ptr(), &mut s) == 0 && s.f_type == libc::TMPFS_MAGIC }
}

#[test]
fn tmpfs_direct_policy() {
    let shm = Path::new("/dev/shm");
    if !shm.is_dir() || !is_tmpfs(shm) {
        println!("SKIP: /dev/shm is not a tmpfs here");
        return;
    }
    let Ok(dir) = tempfile::tempdir_in(shm) else {
        println!("SKIP: cannot create a directory in /dev/shm");
        return;
    };
    let p = dir.path().join("img");
    Device::create_sparse_file(&p, 1 << 20).unwrap();
    assert!(matches!(
        Device::open(&p, &excl()),
        Err(IoError::DirectIoUnsupported { .. })
    ));
    let opt = DeviceOptions {
        direct: DirectIo::Optional,
        ..excl()
    };
    let d = Device::open(&p, &opt).unwrap();
    assert!(!d.geometry().direct, "tmpfs falls back to buffered I/O");
}

#[test]
fn file_geometry_and_direct_enforcement() {
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let p = dir.path().join("img");
    Device::create_sparse_file(&p, 16 << 20).unwrap();
    // Real data at the front: reads of holes skip the alignment checks in the kernel.
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
        f.write_all_at(&[7u8; 8192], 0).unwrap();
        f.sync_all().unwrap();
    }
    let d = Device::open(&p, &excl()).unwrap();
    let g = d.geometry();
    println!("geometry of a /tmp file: {g:?}");
    assert_eq!(g.size_bytes, 16 << 20);
    assert!(g.logical_block_size.is_power_of_two() && (512..=4096).contains(&g.logical_block_size));
    assert!(g.physical_block_size >= g.logical_block_size);
    assert!(g.mem_align.is_power_of_two());
    assert!(g.direct && !g.is_block_device && g.supports_discard);
    // The kernel really enforces O_DIRECT alignment on this descriptor: a misaligned buffer
    // through the raw op gets EINVAL (the engines catch it before submission).
    let fd = d.fd();
    let mut keep = Vec::new();
    let misaligned = loop {
        let mut b = IoBuf::with_capacity_aligned(4096, 1);
        b.set_len(4096);
        if !b.addr().is_multiple_of(512) {
            break b;
        }
        keep.push(b);
        assert!(keep.len() < 64, "allocator always returns aligned blocks");
    };
    io::block_on(&cfg(), async move {
        let (r, _) = io::read_at(fd, misaligned, 0).await;
        let e = r.unwrap_err();
        assert_eq!(e.errno(), libc::EINVAL, "{e}");
        // Device::map_errno turns it into the typed alignment error.
        let typed = d.map_errno(io::OpKind::Read, 0, 4096, 1, e.errno());
        assert!(matches!(typed, IoError::Alignment { .. }));
    })
    .unwrap();
}

#[test]
fn discard_punches_holes() {
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let p = dir.path().join("img");
    Device::create_sparse_file(&p, 8 << 20).unwrap();
    let dev = Arc::new(Device::open(&p, &excl()).unwrap());
    let e = UringEngine::new(Arc::clone(&dev));
    let blocks = |p: &PathBuf| {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(p).unwrap().blocks()
    };
    io::block_on(&cfg(), async {
        let mut b = IoBuf::zeroed(4 << 20);
        b.fill(0xab);
        e.write_at(b, 0).await.0.unwrap();
        e.flush().await.unwrap();
        let before = blocks(&p);
        e.discard(0, 4 << 20).await.unwrap();
        let after = blocks(&p);
        assert!(after + 4096 <= before, "blocks {before} -> {after}");
        let (r, b) = e.read_at(IoBuf::zeroed(4 << 20), 0).await;
        r.unwrap();
        assert!(b.iter().all(|&x| x == 0));
    })
    .unwrap();
}

#[test]
fn fixed_files_are_used_and_released() {
    let _serial = fork_or_claim();
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let p = dir.path().join("img");
    Device::create_sparse_file(&p, 8 << 20).unwrap();
    // In block_on: the device gets a fixed slot; dropping it inside the reactor releases the
    // claim at once.
    let p2 = p.clone();
    io::block_on(&cfg(), async move {
        let dev = Arc::new(Device::open(&p2, &excl()).unwrap());
        assert!(matches!(dev.ring_file(), FileRef::Fixed(_)));
        let e = UringEngine::new(Arc::clone(&dev));
        e.write_at(IoBuf::zeroed(4096), 0).await.0.unwrap();
        drop(e);
        drop(dev);
        let again = Device::open(&p2, &excl()).unwrap();
        drop(again);
    })
    .unwrap();
    // Registered in two reactors, dropped on a plain thread: both rings let go.
    let mut set = ReactorSet::start(cfg()).unwrap();
    let dev = Arc::new(Device::open(&p, &excl()).unwrap());
    for i in 0..2 {
        let e = UringEngine::new(Arc::clone(&dev));
        set.spawn_on(i, move || async move {
            let (r, b) = e.read_at(IoBuf::zeroed(4096), 0).await;
            r.unwrap();
            assert!(b.iter().all(|&x| x == 0));
            matches!(e.device().ring_file(), FileRef::Fixed(_))
        })
        .join_blocking()
        .map(|fixed| assert!(fixed))
        .unwrap();
    }
    drop(dev);
    drop(Device::open(&p, &excl()).expect("released by both reactors"));
    // And when the reactors shut down while still holding it.
    let dev = Arc::new(Device::open(&p, &excl()).unwrap());
    let e = UringEngine::new(Arc::clone(&dev));
    set.spawn_on(0, move || async move { e.flush().await })
        .join_blocking()
        .unwrap()
        .unwrap();
    set.shutdown();
    drop(dev);
    drop(Device::open(&p, &excl()).unwrap());
}

/// A loop device over a sparse file in /tmp, detached on drop.
struct LoopDev {
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl LoopDev {
    fn new(size: u64) -> Option<LoopDev> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            println!("SKIP: loop-device test needs root");
            return None;
        }
        if !Path::new("/dev/loop-control").exists() {
            println!("SKIP: no /dev/loop-control");
            return None;
        }
        let dir = tempfile::tempdir_in("/tmp").ok()?;
        let img = dir.path().join("backing");
        Device::create_sparse_file(&img, size).ok()?;
        let out = match Command::new("losetup")
            .arg("-f")
            .arg("--show")
            .arg(&img)
            .output()
        {
            Ok(o) if o.status.success() => o,
            Ok(o) => {
                println!(
                    "SKIP: losetup failed: {}",
                    String::from_utf8_lossy(&o.stderr)
                );
                return None;
            }
            Err(e) => {
                println!("SKIP: losetup unavailable: {e}");
                return None;
            }
        };
        let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        Some(LoopDev { path, _dir: dir })
    }
}

impl Drop for LoopDev {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.path).status();
    }
}

#[test]
fn loop_device_round_trip() {
    let _serial = fork_or_claim();
    let Some(lo) = LoopDev::new(64 << 20) else {
        return;
    };
    let dev = Arc::new(Device::open(&lo.path, &excl()).unwrap());
    let g = dev.geometry();
    println!("loop geometry: {g:?}");
    assert!(g.is_block_device && g.direct);
    assert_eq!(g.size_bytes, 64 << 20);
    assert!(g.logical_block_size >= 512 && g.logical_block_size.is_power_of_two());
    match Device::open(&lo.path, &excl()) {
        Err(IoError::InUse { .. }) => {}
        other => panic!("second exclusive open: {other:?}"),
    }
    let e = UringEngine::new(Arc::clone(&dev));
    let s = SyncEngine::new(Arc::clone(&dev));
    io::block_on(&cfg(), async {
        let data: Vec<u8> = (0..1 << 20)
            .map(|i: u32| u8::try_from(i % 239).unwrap())
            .collect();
        e.write_at(IoBuf::from_slice(&data), 8 << 20)
            .await
            .0
            .unwrap();
        e.flush().await.unwrap();
        let (r, b) = e.read_at(IoBuf::zeroed(1 << 20), 8 << 20).await;
        r.unwrap();
        assert_eq!(&b[..], &data[..]);
        // The sync engine sees the same bytes.
        let (r, b) = s.read_at(IoBuf::zeroed(1 << 20), 8 << 20).await;
        r.unwrap();
        assert_eq!(&b[..], &data[..]);
        if g.supports_discard {
            // The ring's block discard command works on this kernel (6.12+) ...
            let k = io::block_discard(dev.fd(), 9 << 20, 1 << 20).await;
            println!("uring block discard: {k:?}");
            // ... and the engine path (uring_cmd, or the ioctl fallback) zeroes the range.
            e.discard(8 << 20, 1 << 20).await.unwrap();
            let (r, b) = e.read_at(IoBuf::zeroed(1 << 20), 8 << 20).await;
            r.unwrap();
            assert!(
                b.iter().all(|&x| x == 0),
                "loop discard punches the backing file"
            );
        } else {
            println!("loop device reports no discard support");
        }
        let (r, _) = e.read_at(IoBuf::zeroed(4096), 64 << 20).await;
        assert!(matches!(r, Err(IoError::OutOfRange { .. })));
    })
    .unwrap();
    drop((e, s, dev));
    // The claim is gone once the device (and its fixed-file registrations) are dropped.
    drop(Device::open(&lo.path, &excl()).expect("reopen after drop"));
}

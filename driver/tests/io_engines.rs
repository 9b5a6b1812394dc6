//! One test body, run against every BlockEngine implementation.

use std::sync::Arc;

use ringpool_driver::io::{
    self, BlockEngine, Device, DeviceOptions, DirectIo, FaultyEngine, IoBuf, IoError,
    ReactorConfig, SyncEngine, UringEngine,
};

const SIZE: u64 = 8 << 20;

fn cfg() -> ReactorConfig {
    ReactorConfig {
        arena_bytes: 1 << 20,
        ..ReactorConfig::default()
    }
}

/// The shared engine semantics. Must run on a reactor (UringEngine needs one).
async fn engine_body(e: &dyn BlockEngine) {
    let g = e.geometry();
    let bs = usize::try_from(g.logical_block_size).unwrap();
    assert!(bs.is_power_of_two() && bs >= 512, "block size {bs}");
    assert_eq!(g.size_bytes, SIZE);

    // Write, read back.
    let pattern: Vec<u8> = (0..64 * 1024u32)
        .map(|i| u8::try_from(i % 253).unwrap())
        .collect();
    let (r, _) = e.write_at(IoBuf::from_slice(&pattern), 1 << 20).await;
    r.unwrap();
    let (r, b) = e.read_at(IoBuf::zeroed(pattern.len()), 1 << 20).await;
    r.unwrap();
    assert_eq!(&b[..], &pattern[..]);
    e.flush().await.unwrap();

    // Partial overlap read.
    let (r, b) = e
        .read_at(IoBuf::zeroed(2 * bs), (1 << 20) - bs as u64)
        .await;
    r.unwrap();
    assert!(b[..bs].iter().all(|&x| x == 0));
    assert_eq!(&b[bs..], &pattern[..bs]);

    // Last block of the device is reachable; one past is not.
    let (r, _) = e
        .write_at(IoBuf::from_slice(&vec![9u8; bs]), SIZE - bs as u64)
        .await;
    r.unwrap();
    let (r, b) = e.read_at(IoBuf::zeroed(bs), SIZE - bs as u64).await;
    r.unwrap();
    assert!(b.iter().all(|&x| x == 9));
    let (r, _) = e.read_at(IoBuf::zeroed(bs), SIZE).await;
    assert!(matches!(r, Err(IoError::OutOfRange { .. })), "{r:?}");
    let (r, _) = e.write_at(IoBuf::zeroed(2 * bs), SIZE - bs as u64).await;
    assert!(matches!(r, Err(IoError::OutOfRange { .. })), "{r:?}");
    let (r, _) = e.read_at(IoBuf::zeroed(bs), u64::MAX - 511).await;
    assert!(r.is_err());

    // Alignment: offset, length and (for direct devices) buffer address.
    let (r, _) = e.read_at(IoBuf::zeroed(bs), 1).await;
    assert!(matches!(r, Err(IoError::Alignment { .. })), "{r:?}");
    let (r, _) = e.write_at(IoBuf::zeroed(bs + 1), 0).await;
    assert!(matches!(r, Err(IoError::Alignment { .. })), "{r:?}");
    let mut odd = IoBuf::with_capacity_aligned(bs * 2, 1);
    // Force a misaligned address: allocate aligned to 1 and check.
    odd.set_len(bs);
    if g.direct
        && !odd
            .addr()
            .is_multiple_of(usize::try_from(g.mem_align).unwrap())
    {
        let (r, _) = e.read_at(odd, 0).await;
        assert!(matches!(r, Err(IoError::Alignment { .. })), "{r:?}");
        assert_eq!(r.unwrap_err().errno(), libc::EINVAL);
    }

    // Zero-length I/O is a no-op.
    let (r, _) = e.read_at(IoBuf::zeroed(0), 0).await;
    r.unwrap();

    // Discard: aligned ranges read back as zeroes (files and memory).
    let (r, _) = e
        .write_at(IoBuf::from_slice(&vec![0xeeu8; 64 * 1024]), 2 << 20)
        .await;
    r.unwrap();
    e.discard(2 << 20, 32 * 1024).await.unwrap();
    let (r, b) = e.read_at(IoBuf::zeroed(64 * 1024), 2 << 20).await;
    r.unwrap();
    assert!(
        b[..32 * 1024].iter().all(|&x| x == 0),
        "discarded range reads zero"
    );
    assert!(b[32 * 1024..].iter().all(|&x| x == 0xee), "rest untouched");
    assert!(matches!(
        e.discard(SIZE - bs as u64, 2 * bs as u64).await,
        Err(IoError::OutOfRange { .. })
    ));
    assert!(matches!(
        e.discard(1, bs as u64).await,
        Err(IoError::Alignment { .. })
    ));
    e.flush().await.unwrap();

    // Many concurrent I/Os (engine futures are independent).
    let mut futs = Vec::new();
    for i in 0..64u64 {
        let mut b = IoBuf::zeroed(4096);
        b.fill(u8::try_from(i).unwrap());
        futs.push(e.write_at(b, (3 << 20) + i * 4096));
    }
    for f in futs {
        f.await.0.unwrap();
    }
    for i in 0..64u64 {
        let (r, b) = e.read_at(IoBuf::zeroed(4096), (3 << 20) + i * 4096).await;
        r.unwrap();
        assert!(b.iter().all(|&x| u64::from(x) == i));
    }
}

fn file_device(dir: &tempfile::TempDir, name: &str) -> Arc<Device> {
    let path = dir.path().join(name);
    Device::create_sparse_file(&path, SIZE).unwrap();
    let opts = DeviceOptions {
        direct: DirectIo::Required,
        exclusive: true,
        ..DeviceOptions::default()
    };
    Arc::new(Device::open(&path, &opts).unwrap())
}

#[test]
fn engine_sync() {
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let e = SyncEngine::new(file_device(&dir, "sync"));
    assert!(e.geometry().direct);
    io::block_on(&cfg(), async { engine_body(&e).await }).unwrap();
}

#[test]
fn engine_uring() {
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let e = UringEngine::new(file_device(&dir, "uring"));
    io::block_on(&cfg(), async { engine_body(&e).await }).unwrap();
}

#[test]
fn engine_faulty() {
    let e = FaultyEngine::new(SIZE, 512);
    io::block_on(&cfg(), async { engine_body(&e).await }).unwrap();
    let e = FaultyEngine::new(SIZE, 4096);
    io::block_on(&cfg(), async { engine_body(&e).await }).unwrap();
}

#[test]
fn uring_engine_outside_reactor_is_an_error() {
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let e = UringEngine::new(file_device(&dir, "x"));
    let f = e.flush();
    let mut f = std::pin::pin!(f);
    let w = std::task::Waker::noop();
    match std::future::Future::poll(f.as_mut(), &mut std::task::Context::from_waker(w)) {
        std::task::Poll::Ready(r) => assert!(matches!(r, Err(IoError::NotInReactor))),
        std::task::Poll::Pending => panic!("should fail immediately"),
    }
}

//! Set-up shared by the ring driver's tests (io_*.rs): an O_DIRECT device over a file on a
//! real file system, and polling a future once so that its operation is made but not awaited.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;

use ringpool_driver::io::{Device, DeviceOptions, DirectIo, ReactorConfig, UringEngine};

/// One unpinned reactor with a small arena: the base that each test sets its knob on.
pub fn one_reactor() -> ReactorConfig {
    ReactorConfig {
        reactors: 1,
        pin: false,
        arena_bytes: 4 << 20,
        ..ReactorConfig::default()
    }
}

/// An O_DIRECT device over a new `size`-byte file `name` in `dir` (a real file system, /tmp:
/// tmpfs would not enforce O_DIRECT alignment).
pub fn device(dir: &Path, name: &str, size: u64) -> UringEngine {
    let p = dir.join(name);
    Device::create_sparse_file(&p, size).unwrap();
    let opts = DeviceOptions {
        direct: DirectIo::Required,
        exclusive: true,
        ..DeviceOptions::default()
    };
    UringEngine::new(Arc::new(Device::open(&p, &opts).unwrap()))
}

/// Polls `f` once (so its operation is made: staged, held or submitted) and keeps it for later.
pub async fn poll_once<F: Future + ?Sized>(f: &mut Pin<Box<F>>) {
    std::future::poll_fn(|cx| {
        let _ = f.as_mut().poll(cx);
        Poll::Ready(())
    })
    .await;
}

//! Shared helpers of the NBD integration tests: an in-process server on its own reactors, and
//! external client tools that are skipped (with a printed reason) when missing.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ringpool_driver::io::{ReactorConfig, ReactorSet};
use ringpool_driver::nbd::{ExportBackend, Exports, MemBackend, NbdServer, NbdServerConfig};

pub const EXPORT: &str = "pool/vol";

pub struct TestServer {
    pub server: Option<NbdServer>,
    pub reactors: Option<ReactorSet>,
    pub exports: Arc<Exports>,
    pub mem: Arc<MemBackend>,
    pub dir: tempfile::TempDir,
}

impl TestServer {
    pub fn start(size: u64) -> TestServer {
        TestServer::start_with(size, 4096, |_| {})
    }

    pub fn start_with(
        size: u64,
        block: u32,
        tweak: impl FnOnce(&mut NbdServerConfig),
    ) -> TestServer {
        let mem = Arc::new(MemBackend::new(size, block));
        TestServer::start_backend(2, mem.clone(), false, mem, tweak)
    }

    /// A server on `reactors` reactors exporting `backend` as [`EXPORT`] (TCP on a free
    /// loopback port and a unix socket); `mem` is what the test inspects as `self.mem`.
    pub fn start_backend(
        reactors: usize,
        backend: Arc<dyn ExportBackend>,
        read_only: bool,
        mem: Arc<MemBackend>,
        tweak: impl FnOnce(&mut NbdServerConfig),
    ) -> TestServer {
        let reactors = ReactorSet::start(ReactorConfig {
            reactors,
            pin: false,
            ..ReactorConfig::default()
        })
        .expect("reactors");
        TestServer::serve_on(reactors, backend, read_only, mem, tweak)
    }

    /// [`TestServer::start_backend`] on reactors the caller started (e.g. pinned ones).
    pub fn serve_on(
        reactors: ReactorSet,
        backend: Arc<dyn ExportBackend>,
        read_only: bool,
        mem: Arc<MemBackend>,
        tweak: impl FnOnce(&mut NbdServerConfig),
    ) -> TestServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let exports = Arc::new(Exports::new());
        exports.add(EXPORT, backend, read_only).expect("add export");
        let mut cfg = NbdServerConfig {
            tcp: Some("127.0.0.1:0".parse().unwrap()),
            unix: Some(dir.path().join("nbd.sock")),
            ..NbdServerConfig::default()
        };
        tweak(&mut cfg);
        let server = NbdServer::start(cfg, exports.clone(), &reactors).expect("server");
        TestServer {
            server: Some(server),
            reactors: Some(reactors),
            exports,
            mem,
            dir,
        }
    }

    pub fn port(&self) -> u16 {
        self.server.as_ref().unwrap().local_addr().unwrap().port()
    }

    pub fn sock(&self) -> PathBuf {
        self.server
            .as_ref()
            .unwrap()
            .unix_path()
            .unwrap()
            .to_path_buf()
    }

    pub fn tcp_uri(&self, export: &str) -> String {
        format!("nbd://127.0.0.1:{}/{export}", self.port())
    }

    pub fn unix_uri(&self, export: &str) -> String {
        format!("nbd+unix:///{export}?socket={}", self.sock().display())
    }

    pub fn connections(&self) -> usize {
        self.server.as_ref().unwrap().connections()
    }

    /// Waits until the server has no connection left (clients close asynchronously).
    pub fn wait_idle(&self) {
        let t = Instant::now();
        while self.connections() > 0 && t.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(mut s) = self.server.take() {
            s.shutdown();
        }
        if let Some(mut r) = self.reactors.take() {
            r.shutdown();
        }
    }
}

/// True if `bin` is on PATH; otherwise prints why the calling test is skipped.
pub fn have(bin: &str) -> bool {
    let ok = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {bin}"))
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        eprintln!("SKIP: `{bin}` is not installed");
    }
    ok
}

/// Runs a command, panicking with its output when it fails.
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    if !out.status.success() {
        panic!(
            "{cmd:?} failed ({}):\nstdout:\n{}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Writes `len` pseudo-random bytes (with a few zero runs, to exercise holes) to `path`.
pub fn random_file(path: &Path, len: usize, seed: u64) {
    use rand::{RngCore, SeedableRng};
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    let mut v = vec![0u8; len];
    rng.fill_bytes(&mut v);
    // Zero 1 MiB out of every 8 so the image has zero runs.
    for (i, chunk) in v.chunks_mut(1 << 20).enumerate() {
        if i % 8 == 3 {
            chunk.fill(0);
        }
    }
    std::fs::write(path, &v).expect("write random file");
}

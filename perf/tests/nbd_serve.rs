//! ringperf's NBD client against `ringpool serve` (the workspace's own server): verify passes
//! over TCP with several connections, FUA and flushes, a unix-socket export, then the same pool
//! opened in process with the `pool:` target after serve exported it, reading back every unit
//! written through NBD.
//!
//! The `ringpool` binary is built by `cargo test --workspace` (ci/run); when this test runs on
//! its own (`cargo test -p ringpool-perf`) and the binary is missing, it is skipped.

mod common;

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn ringpool_bin() -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_BIN_EXE_ringperf")).with_file_name("ringpool");
    p.is_file().then_some(p)
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

struct Ringpool {
    bin: PathBuf,
    state: PathBuf,
}

impl Ringpool {
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.bin);
        c.env("RINGPOOL_STATE_DIR", &self.state)
            .env("RINGPOOL_LOG", "warn")
            .args(args);
        c
    }

    fn ok(&self, args: &[&str]) {
        let out = self.cmd(args).output().expect("run ringpool");
        assert!(
            out.status.success(),
            "ringpool {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A running `ringpool serve`: SIGTERM (clean export) in `stop`, SIGKILL on drop.
struct Serve {
    child: Option<Child>,
}

impl Serve {
    fn start(rp: &Ringpool, port: u16, sock: &Path) -> Serve {
        let listen = format!("127.0.0.1:{port}");
        let mut child = rp
            .cmd(&[
                "serve",
                "--listen",
                &listen,
                "--socket",
                &path_str(sock),
                "--reactors",
                "1",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn ringpool serve");
        let mut reader = BufReader::new(child.stdout.take().expect("stdout"));
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut seen = Vec::new();
        loop {
            let mut line = String::new();
            let n = reader.read_line(&mut line).expect("read serve stdout");
            assert!(n > 0, "serve exited before it was ready: {seen:?}");
            seen.push(line.trim_end().to_string());
            if line.starts_with("ready:") {
                break;
            }
            assert!(Instant::now() < deadline, "serve not ready: {seen:?}");
        }
        std::thread::spawn(move || for _ in reader.lines() {});
        Serve { child: Some(child) }
    }

    fn stop(mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("child");
        let pid = i32::try_from(child.id()).expect("pid");
        // SAFETY: kill has no memory effects; `pid` is our own child process.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        child.wait().expect("wait serve")
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[test]
fn nbd_client_against_ringpool_serve_then_pool_target_reads_it_back() {
    let Some(bin) = ringpool_bin() else {
        eprintln!(
            "SKIP: no ringpool binary next to ringperf (built by `cargo test --workspace`, or `cargo build --release -p ringpool-tools`)"
        );
        return;
    };
    let dir = scratch();
    let rp = Ringpool {
        bin,
        state: file(&dir, "state"),
    };
    let dev = file(&dir, "dev.img");
    rp.ok(&["create", "--size", "256M", "tank", &path_str(&dev)]);
    rp.ok(&["volume", "create", "-s", "32M", "tank/vol0"]);
    let port = free_port();
    let sock = file(&dir, "nbd.sock");
    let serve = Serve::start(&rp, port, &sock);
    let uri = format!("nbd://127.0.0.1:{port}/tank/vol0");

    // Format the volume with verify headers (one sequential pass over two connections).
    let (code, v) = ringperf_json(&[
        "--target",
        &uri,
        "--rw",
        "write",
        "--verify",
        "--io-limit",
        "32M",
        "--runtime",
        "60",
        "--qd",
        "8",
        "--nbd-conns",
        "2",
    ]);
    assert_eq!(code, Some(0), "{v}");
    assert_eq!(f64_at(&v, "total.write.ios"), 8192.0);
    assert!(
        v["describe"].as_str().unwrap().contains("structured"),
        "{v}"
    );

    // Mixed verified I/O with FUA writes and flushes.
    let (code, v) = ringperf_json(&[
        "--target",
        &uri,
        "--rw",
        "randrw",
        "--bssplit",
        "4k/70:32k/30",
        "--verify",
        "--runtime",
        "2",
        "--qd",
        "8",
        "--nbd-conns",
        "2",
        "--flush-every",
        "64",
        "--fua",
    ]);
    assert_eq!(code, Some(0), "{v}");
    assert!(f64_at(&v, "total.read.ios") > 20.0, "{v}");
    assert!(f64_at(&v, "total.flush.ios") >= 1.0, "{v}");
    assert_eq!(f64_at(&v, "verify_errors") + f64_at(&v, "io_errors"), 0.0);

    // The same export over the unix socket, verified reads.
    let unix = format!("nbd+unix:///tank/vol0?socket={}", path_str(&sock));
    let (code, v) = ringperf_json(&[
        "--target",
        &unix,
        "--rw",
        "randread",
        "--verify",
        "--runtime",
        "1",
        "--qd",
        "4",
    ]);
    assert_eq!(code, Some(0), "{v}");
    assert!(f64_at(&v, "total.read.ios") > 20.0, "{v}");

    // SIGTERM: serve syncs and exports the pool.
    assert!(serve.stop().success());

    // In process now: every unit written through NBD reads back verified, and the pool's own
    // verify is clean.
    let target = format!("pool:{}?volume=vol0&check", path_str(&dev));
    let out = ringperf(&[
        "--target",
        &target,
        "--rw",
        "read",
        "--bs",
        "4k",
        "--qd",
        "16",
        "--verify",
        "--io-limit",
        "32M",
        "--runtime",
        "60",
        "--quiet",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{v}\n{err}");
    assert_eq!(f64_at(&v, "total.read.ios"), 8192.0, "{v}");
    assert_eq!(f64_at(&v, "verify_errors"), 0.0);
    assert!(err.contains("verify clean"), "{err}");
}

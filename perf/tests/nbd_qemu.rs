//! ringperf's NBD client against qemu-nbd (skipped when qemu-nbd is missing): verify passes
//! over several connections, corruption detection through the server, unix sockets, and
//! `ringperf compare` of the file against its NBD export.

mod common;

use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// qemu-nbd serving one file; killed on drop.
struct QemuNbd {
    child: Child,
}

impl Drop for QemuNbd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

fn serve(img: &Path, listen: &[&str]) -> QemuNbd {
    let child = Command::new("qemu-nbd")
        .args(["-f", "raw", "-x", "vol0", "-e", "8", "--persistent"])
        .args(listen)
        .arg(img)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn qemu-nbd");
    QemuNbd { child }
}

fn wait_until(what: &str, mut ready: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ready() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{what} not ready"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn nbd_client_against_qemu_nbd() {
    if !have("qemu-nbd") {
        eprintln!("SKIP: qemu-nbd not installed");
        return;
    }
    let dir = scratch();
    let img = file(&dir, "img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(32 << 20)
        .unwrap();
    let port = free_port();
    let _srv = serve(&img, &["-b", "127.0.0.1", "-p", &port.to_string()]);
    wait_until("qemu-nbd", || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let uri = format!("nbd://127.0.0.1:{port}/vol0");

    // Format the export with verify headers through NBD (one sequential pass).
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
    assert!(v["describe"].as_str().unwrap().contains("structured"));

    // Mixed random I/O with mixed sizes, FUA and flushes, checked on every read.
    let (code, v) = ringperf_json(&[
        "--target",
        &uri,
        "--rw",
        "randrw",
        "--bssplit",
        "4k/70:64k/30",
        "--verify",
        "--runtime",
        "2",
        "--qd",
        "8",
        "--nbd-conns",
        "2",
        "--flush-every",
        "32",
        "--fua",
    ]);
    assert_eq!(code, Some(0), "{v}");
    assert!(f64_at(&v, "total.read.ios") > 50.0);
    assert!(f64_at(&v, "total.flush.ios") >= 1.0);
    assert_eq!(f64_at(&v, "verify_errors") + f64_at(&v, "io_errors"), 0.0);

    // The libnbd client mode (one request per send, one reply part per recv) moves the same
    // data: mixed sizes and reads of 64k (a reply header, then the payload on its own).
    let (code, v) = ringperf_json(&[
        "--target",
        &uri,
        "--rw",
        "randrw",
        "--bssplit",
        "4k/50:64k/50",
        "--verify",
        "--runtime",
        "1",
        "--qd",
        "16",
        "--client-mode",
        "libnbd",
    ]);
    assert_eq!(code, Some(0), "{v}");
    assert!(v["describe"]
        .as_str()
        .unwrap()
        .contains("libnbd client mode"));
    assert!(f64_at(&v, "total.read.ios") > 50.0, "{v}");
    assert!(f64_at(&v, "total.write.ios") > 50.0, "{v}");
    assert_eq!(f64_at(&v, "verify_errors") + f64_at(&v, "io_errors"), 0.0);

    // Corrupt one byte in the served file: the read-back pass through NBD reports it.
    // (64k blocks were written in the mixed pass, so verify at the 4k unit still holds:
    // every unit carries its own header.)
    let mut data = std::fs::read(&img).unwrap();
    data[7 * 4096 + 99] ^= 0xff;
    std::fs::write(&img, &data).unwrap();
    let (code, v) = ringperf_json(&[
        "--target",
        &uri,
        "--rw",
        "read",
        "--bssplit",
        "4k/70:64k/30",
        "--verify",
        "--io-limit",
        "32M",
        "--runtime",
        "60",
        "--qd",
        "4",
    ]);
    assert_eq!(code, Some(2), "{v}");
    assert!(f64_at(&v, "verify_errors") >= 1.0);
    assert!(
        v["errors"][0].as_str().unwrap().contains("offset 28672"),
        "{v}"
    );

    // compare: the file itself vs its NBD export, one short round each.
    let out = ringperf(&[
        "compare",
        &path_str(&img),
        &uri,
        "--rounds",
        "1",
        "--runtime",
        "1",
        "--rw",
        "randread",
        "--qd",
        "4",
        "--json",
    ]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = v["targets"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    assert!((f64_at(&rows[0], "iops_ratio") - 1.0).abs() < 1e-9);
    for r in rows {
        assert!(f64_at(r, "iops_mean") > 0.0, "{r}");
        assert!(f64_at(r, "lat.p99_us") > 0.0, "{r}");
    }
}

#[test]
fn nbd_over_unix_socket() {
    if !have("qemu-nbd") {
        eprintln!("SKIP: qemu-nbd not installed");
        return;
    }
    let dir = scratch();
    let img = file(&dir, "img");
    std::fs::write(&img, vec![0x5au8; 4 << 20]).unwrap();
    let sock = file(&dir, "nbd.sock");
    let _srv = serve(&img, &["-k", &path_str(&sock)]);
    wait_until("qemu-nbd socket", || {
        std::os::unix::net::UnixStream::connect(&sock).is_ok()
    });
    let uri = format!("nbd+unix:///vol0?socket={}", path_str(&sock));
    let (code, v) = ringperf_json(&[
        "--target",
        &uri,
        "--rw",
        "randrw",
        "--runtime",
        "1",
        "--qd",
        "4",
        "--bs",
        "8k",
    ]);
    assert_eq!(code, Some(0), "{v}");
    assert!(f64_at(&v, "total.ios") > 10.0);
    assert_eq!(f64_at(&v, "io_errors"), 0.0);
    // A wrong export name is a clean error, not a hang.
    let out = ringperf(&[
        "--target",
        &format!("nbd+unix:///nope?socket={}", path_str(&sock)),
        "--runtime",
        "1",
    ]);
    assert_eq!(out.status.code(), Some(1));
}

//! Interoperability with real NBD clients: qemu-io, qemu-img, nbdinfo, nbdcopy, nbdsh and fio.
//! Each test skips (printing why) when its client is not installed.

#[path = "nbd/common.rs"]
mod common;

use common::*;
use std::process::Command;

#[test]
fn qemu_io_patterns_flush_discard_zero_fua() {
    if !have("qemu-io") {
        return;
    }
    let s = TestServer::start(64 << 20);
    for uri in [s.tcp_uri(EXPORT), s.unix_uri(EXPORT)] {
        let o = run(Command::new("qemu-io").args(["-f", "raw", &uri]).args([
            "-c",
            "write -P 0xab 0 1M",
            "-c",
            "read -P 0xab 0 1M",
            "-c",
            "write -z 1M 1M",
            "-c",
            "read -P 0 1M 1M",
            "-c",
            "flush",
            "-c",
            "discard 3M 1M",
            "-c",
            "read -P 0 3M 1M",
            "-c",
            "aio_write -P 0xcd 4M 64k",
            "-c",
            "aio_flush",
            "-c",
            "write -f -P 0xee 8M 4k",
            "-c",
            "read -P 0xcd 4M 64k",
            "-c",
            "read -P 0xee 8M 4k",
            "-c",
            "write -P 0x11 100 3000",
            "-c",
            "read -P 0x11 100 3000",
            "-c",
            "read -P 0xab 0 100",
        ]));
        let out = stdout(&o);
        assert!(!out.contains("Pattern verification failed"), "{out}");
        assert!(!out.to_lowercase().contains("error"), "{out}");
    }
    assert_eq!(s.mem.contents(8 << 20, 4096), vec![0xee; 4096]);
    assert!(
        s.mem
            .stats()
            .fua_writes
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 2
    );
    assert!(
        s.mem
            .stats()
            .flushes
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 2
    );
}

#[test]
fn nbdinfo_reports_features_and_map() {
    if !have("nbdinfo") {
        return;
    }
    let s = TestServer::start(64 << 20);
    let o = run(Command::new("nbdinfo").args(["--json", &s.unix_uri(EXPORT)]));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    eprintln!("{}", serde_json::to_string_pretty(&v).unwrap());
    let e = &v["exports"][0];
    assert_eq!(e["export-size"], 64 << 20);
    assert_eq!(e["export-name"], EXPORT);
    assert_eq!(e["block_size_minimum"], 1);
    assert_eq!(e["block_size_preferred"], 4096);
    assert_eq!(e["block_size_maximum"], 32 << 20);
    for f in [
        "can_flush",
        "can_fua",
        "can_trim",
        "can_zero",
        "can_multi_conn",
        "can_cache",
        "can_fast_zero",
        "can_df",
    ] {
        assert_eq!(e[f], true, "{f}");
    }
    assert_eq!(e["is_read_only"], false);
    assert_eq!(v["protocol"], "newstyle-fixed");

    let contexts = e["contexts"].as_array().expect("contexts");
    assert!(
        contexts.iter().any(|c| c == "base:allocation"),
        "{contexts:?}"
    );

    // Write some data, trim part of it, and look at the map.
    if have("qemu-io") {
        run(Command::new("qemu-io").args([
            "-f",
            "raw",
            &s.tcp_uri(EXPORT),
            "-c",
            "write -P 1 0 8M",
            "-c",
            "discard 2M 2M",
        ]));
        let o = run(Command::new("nbdinfo").args(["--map", &s.tcp_uri(EXPORT)]));
        let map = stdout(&o);
        eprintln!("{map}");
        let lines: Vec<Vec<&str>> = map
            .lines()
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(lines[0][..3], ["0", "2097152", "0"]);
        assert_eq!(lines[1][..3], ["2097152", "2097152", "3"]);
        assert_eq!(lines[2][..3], ["4194304", "4194304", "0"]);
        assert_eq!(lines[3][..3], ["8388608", "58720256", "3"]);
    }
}

/// A python3 that can `import nbd` (libnbd's binding, which nbdsh runs on).
fn python_with_nbd() -> Option<String> {
    for py in ["/usr/bin/python3", "python3"] {
        let ok = Command::new(py)
            .args(["-c", "import nbd"])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if ok {
            return Some(py.to_string());
        }
    }
    eprintln!("SKIP: no python3 with libnbd's `nbd` module (python3-libnbd, which provides nbdsh)");
    None
}

#[test]
fn nbdsh_option_and_request_edge_cases() {
    let Some(py) = python_with_nbd() else { return };
    let s = TestServer::start(16 << 20);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/nbd/options.py");
    for uri in [s.unix_uri(EXPORT), s.tcp_uri(EXPORT)] {
        let o = run(Command::new(&py).args([script, &uri, EXPORT, &(16u64 << 20).to_string()]));
        assert!(stdout(&o).contains("options.py: ok"));
    }
}

#[test]
fn qemu_img_convert_round_trip() {
    if !have("qemu-img") {
        return;
    }
    let size = 48usize << 20;
    let s = TestServer::start(u64::try_from(size).unwrap());
    let src = s.dir.path().join("src.img");
    let back = s.dir.path().join("back.img");
    random_file(&src, size, 1);
    let uri = s.tcp_uri(EXPORT);
    run(Command::new("qemu-img")
        .args(["convert", "-n", "-f", "raw", "-O", "raw"])
        .arg(&src)
        .arg(&uri));
    run(Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "raw", &uri])
        .arg(&back));
    let (a, b) = (std::fs::read(&src).unwrap(), std::fs::read(&back).unwrap());
    assert_eq!(a.len(), b.len());
    assert!(a == b, "image differs after the round trip");
    assert!(s.mem.contents(0, size) == a);
    let o = run(Command::new("qemu-img").args(["info", "--output=json", &uri]));
    assert!(
        stdout(&o).contains(&format!("\"virtual-size\": {size}")),
        "{}",
        stdout(&o)
    );
}

#[test]
fn nbdcopy_multi_conn_round_trip() {
    if !have("nbdcopy") {
        return;
    }
    let size = 96usize << 20;
    let s = TestServer::start(u64::try_from(size).unwrap());
    let src = s.dir.path().join("src.img");
    let back = s.dir.path().join("back.img");
    random_file(&src, size, 2);
    let uri = s.unix_uri(EXPORT);
    run(Command::new("nbdcopy")
        .arg("--connections=4")
        .arg("--requests=16")
        .arg(&src)
        .arg(&uri));
    run(Command::new("nbdcopy")
        .arg("--connections=4")
        .arg(&uri)
        .arg(&back));
    let (a, b) = (std::fs::read(&src).unwrap(), std::fs::read(&back).unwrap());
    assert!(a == b, "image differs after the nbdcopy round trip");
    // nbdcopy skips zero runs when copying in: those are holes on the server.
    assert!(s.mem.allocated_bytes() < u64::try_from(size).unwrap());
}

#[test]
fn fio_nbd_engine_verifies() {
    if !have("fio") {
        return;
    }
    let o = Command::new("fio")
        .arg("--enghelp")
        .output()
        .map(|o| stdout(&o))
        .unwrap_or_default();
    if !o.contains("nbd") {
        eprintln!("SKIP: this fio has no nbd engine");
        return;
    }
    let s = TestServer::start(32 << 20);
    let uri = s.unix_uri(EXPORT);
    for (rw, bs, depth) in [("randwrite", "4k", "32"), ("write", "128k", "8")] {
        run(Command::new("fio").args([
            "--name=verify",
            "--ioengine=nbd",
            &format!("--uri={uri}"),
            &format!("--rw={rw}"),
            &format!("--bs={bs}"),
            &format!("--iodepth={depth}"),
            "--size=16M",
            "--verify=crc32c",
            "--do_verify=1",
            "--verify_fatal=1",
            "--verify_state_save=0",
            "--output-format=terse",
        ]));
    }
}

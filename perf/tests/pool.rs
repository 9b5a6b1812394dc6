//! ringperf's in-process pool target (`pool:...`) on O_DIRECT files in /tmp: a verified mixed
//! run with flushes and FUA writes on a fresh pool, a read-back after export and re-import, and
//! a full pool that reports ENOSPC per I/O without crashing and stays consistent.

mod common;

use common::*;

fn stderr_of(args: &[&str]) -> (Option<i32>, serde_json::Value, String) {
    let mut a = args.to_vec();
    a.push("--json");
    let out = ringperf(&a);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}):\n{}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    (
        out.status.code(),
        v,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn pool_verify_run_with_flush_and_fua_then_reimport_and_read_back() {
    let dir = scratch();
    let img = path_str(&file(&dir, "pool.img"));
    // A fresh pool on a new 256 MiB file; the 32 MiB volume is prefilled with verify headers
    // (auto: it is all holes), then a mixed verified run with flushes; `check` runs the
    // pool's own verify (checksums, space maps) after the run.
    let target = format!("pool:{img}?create=256M&volume=bench&bs=4k&check");
    let (code, v, err) = stderr_of(&[
        "--target",
        &target,
        "--size",
        "32M",
        "--rw",
        "randrw",
        "--bssplit",
        "4k/70:16k/30",
        "--qd",
        "8",
        "--runtime",
        "2",
        "--verify",
        "--flush-every",
        "200",
    ]);
    assert_eq!(code, Some(0), "{v}\n{err}");
    assert_eq!(f64_at(&v, "io_errors"), 0.0);
    assert_eq!(f64_at(&v, "verify_errors"), 0.0);
    // A pool target runs on the engine's reactor default, not the raw target's fio pattern.
    assert_eq!(f64_at(&v, "ring.submit_batch"), 4.0, "{v}");
    assert!(f64_at(&v, "total.read.ios") > 100.0, "{v}");
    assert!(f64_at(&v, "total.write.ios") > 100.0, "{v}");
    assert!(f64_at(&v, "total.flush.ios") >= 1.0, "{v}");
    assert!(
        v["describe"]
            .as_str()
            .unwrap_or("")
            .contains("volume bench"),
        "{v}"
    );
    assert!(err.contains("prefilling"), "{err}");
    assert!(err.contains("verify clean"), "{err}");

    // FUA writes: each one returns only after its txg committed. Through the copying slice API
    // this time (`copy`), verified by the read-back below.
    let target = format!("pool:{img}?volume=bench&copy");
    let (code, v, err) = stderr_of(&[
        "--target",
        &target,
        "--size",
        "32M",
        "--rw",
        "randrw",
        "--qd",
        "4",
        "--runtime",
        "1",
        "--verify",
        "--fua",
    ]);
    assert_eq!(code, Some(0), "{v}\n{err}");
    assert!(f64_at(&v, "total.write.ios") > 4.0, "{v}");
    assert!(
        !err.contains("prefilling"),
        "already full, no prefill: {err}"
    );

    // Export happened at the end of each run: import again and read every unit back.
    let (code, v, err) = stderr_of(&[
        "--target",
        &format!("pool:{img}?check"),
        "--size",
        "32M",
        "--rw",
        "read",
        // Same verify unit (the smallest size) as the write pass, mostly large reads.
        "--bssplit",
        "4k/5:64k/95",
        "--qd",
        "4",
        "--verify",
        "--io-limit",
        "32M",
        "--runtime",
        "60",
    ]);
    assert_eq!(code, Some(0), "{v}\n{err}");
    assert_eq!(f64_at(&v, "verify_errors"), 0.0);
    let reads = f64_at(&v, "total.read.ios");
    let mib = f64_at(&v, "total.read.mib_s") * f64_at(&v, "total.runtime_s");
    assert!(
        reads >= 512.0 && (mib - 32.0).abs() < 0.5,
        "one pass over 32 MiB: {v}"
    );
    assert!(err.contains("verify clean"), "{err}");
}

#[test]
fn full_pool_reports_enospc_per_io_and_stays_consistent() {
    let dir = scratch();
    let img = path_str(&file(&dir, "small.img"));
    // Thin: a 512 MiB volume in a 64 MiB pool; random writes fill it.
    let target = format!("pool:{img}?create=64M&volsize=512M&check");
    let (code, v, err) = stderr_of(&[
        "--target",
        &target,
        "--rw",
        "randwrite",
        "--qd",
        "8",
        "--runtime",
        "3",
        "--prefill",
        "never",
    ]);
    assert_eq!(code, Some(2), "errors must give exit status 2: {v}\n{err}");
    assert!(f64_at(&v, "io_errors") > 0.0, "{v}");
    assert!(
        f64_at(&v, "total.write.ios") > 100.0,
        "writes before full: {v}"
    );
    let errors = v["errors"].as_array().expect("errors array");
    assert!(!errors.is_empty());
    for e in errors {
        let e = e.as_str().unwrap_or("");
        assert!(e.contains("No space left on device"), "{e}");
    }
    // Failed writes are counted per second apart from the completed ones.
    let iv = v["intervals"].as_array().expect("intervals");
    let iv_errors: u64 = iv.iter().map(|i| i["errors"].as_u64().unwrap_or(0)).sum();
    assert!(iv_errors > 0, "{v}");
    // The pool was not suspended, synced, passed its own verify and exported.
    assert!(!err.contains("SUSPENDED"), "{err}");
    assert!(err.contains("verify clean"), "{err}");

    // Still importable and readable afterwards.
    let (code, v, err) = stderr_of(&[
        "--target",
        &format!("pool:{img}"),
        "--rw",
        "randread",
        "--qd",
        "4",
        "--runtime",
        "1",
        "--prefill",
        "never",
    ]);
    assert_eq!(code, Some(0), "{v}\n{err}");
    assert!(f64_at(&v, "total.read.ios") > 100.0, "{v}");
}

#[test]
fn pool_target_errors_are_usage_errors() {
    let dir = scratch();
    let img = path_str(&file(&dir, "none.img"));
    // No pool there and no create: a clean setup error (exit 1), not a crash.
    let out = ringperf(&["--target", &format!("pool:{img}"), "--runtime", "1"]);
    assert_eq!(out.status.code(), Some(1));
    let out = ringperf(&["--target", "pool:/tmp/x?nonsense", "--runtime", "1"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown option"));
}

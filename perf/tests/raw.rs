//! ringperf against a file on /tmp: sane JSON, interval log, plot, prefill, verify.

mod common;

use common::*;

#[test]
fn raw_randrw_reports_sane_json_hlog_and_plot() {
    let dir = scratch();
    let img = path_str(&file(&dir, "img"));
    let hlog = path_str(&file(&dir, "run.hlog"));
    let svg = path_str(&file(&dir, "run.svg"));
    let (code, v) = ringperf_json(&[
        "--target",
        &img,
        "--size",
        "32M",
        "--rw",
        "randrw",
        "--rwmixread",
        "70",
        "--bssplit",
        "4k/80:16k/20",
        "--qd",
        "4",
        "--runtime",
        "3",
        "--flush-every",
        "64",
        "--hlog",
        &hlog,
        "--plot",
        &svg,
    ]);
    assert_eq!(code, Some(0), "{v}");
    // The file was created and prefilled: no holes left (st_blocks covers the size).
    let meta = std::fs::metadata(&img).unwrap();
    assert_eq!(meta.len(), 32 << 20);
    assert!(std::os::unix::fs::MetadataExt::blocks(&meta) * 512 >= 32 << 20);

    let ios = f64_at(&v, "total.ios");
    let reads = f64_at(&v, "total.read.ios");
    let writes = f64_at(&v, "total.write.ios");
    assert!(ios > 100.0, "only {ios} I/Os");
    assert!((reads + writes - ios).abs() < 0.5);
    let read_share = reads / ios;
    assert!((0.6..0.8).contains(&read_share), "read share {read_share}");
    assert!(f64_at(&v, "total.flush.ios") >= 1.0);
    let iops = f64_at(&v, "total.iops");
    let rt = f64_at(&v, "total.runtime_s");
    assert!((rt - 3.0).abs() < 0.3, "runtime {rt}");
    assert!((iops * rt - ios).abs() / ios < 0.05);
    let lat = |k: &str| f64_at(&v, &format!("total.lat.{k}"));
    assert!(lat("min_us") > 0.0);
    assert!(lat("min_us") <= lat("p50_us"));
    assert!(lat("p50_us") <= lat("p99_us"));
    assert!(lat("p99_us") <= lat("p99_99_us"));
    assert!(lat("p99_99_us") <= lat("max_us") * 1.001);
    assert!(lat("mean_us") >= lat("min_us") && lat("mean_us") <= lat("max_us"));
    assert_eq!(f64_at(&v, "io_errors"), 0.0);
    assert!(f64_at(&v, "total.cpu_us_per_io") > 0.0);
    assert_eq!(v["jobs"].as_array().unwrap().len(), 1);
    let intervals = v["intervals"].as_array().unwrap();
    // One per second of the 3 s run, and one per second the last I/Os took to drain: the
    // shared disk of a busy machine sometimes stalls for seconds (max 2.8 s seen), and the
    // run reports those seconds too.
    let stalled_s = (0u32..600)
        .take_while(|&s| f64::from(s) * 1e6 < lat("max_us"))
        .count();
    assert!(
        (2..=4 + stalled_s).contains(&intervals.len()),
        "{} intervals (longest I/O {} us)",
        intervals.len(),
        lat("max_us")
    );

    let log = std::fs::read_to_string(&hlog).unwrap();
    assert!(log.contains("#[StartTime:"));
    assert!(log.lines().filter(|l| l.starts_with("Tag=data,")).count() >= 2);
    let plot = std::fs::read_to_string(&svg).unwrap();
    assert!(plot.starts_with("<svg") && plot.contains("<polyline"));
}

#[test]
fn two_jobs_and_text_table() {
    let dir = scratch();
    let img = path_str(&file(&dir, "img"));
    let out = ringperf(&[
        "--target",
        &img,
        "--size",
        "16M",
        "--rw",
        "randread",
        "--qd",
        "2",
        "--jobs",
        "2",
        "--runtime",
        "2",
        "--dist",
        "zipf:1.1",
    ]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!("{text}");
    assert!(text.contains("IOPS") && text.contains("p99.999"));
    assert!(text.lines().any(|l| l.starts_with("Total")), "no Total row");
    assert!(
        text.lines().any(|l| l.starts_with("[    1s]")),
        "no progress line"
    );
}

#[test]
fn verify_catches_a_corrupted_block() {
    let dir = scratch();
    let img = file(&dir, "img");
    let imgs = path_str(&img);
    // Pass 1: write every block once, sequentially, with verify headers.
    let (code, v) = ringperf_json(&[
        "--target",
        &imgs,
        "--size",
        "8M",
        "--rw",
        "write",
        "--verify",
        "--io-limit",
        "8M",
        "--runtime",
        "60",
        "--qd",
        "4",
        "--prefill",
        "never",
    ]);
    assert_eq!(code, Some(0), "{v}");
    assert_eq!(f64_at(&v, "total.write.ios"), 2048.0);
    // Pass 2: random reads and writes with verification: clean.
    let (code, v) = ringperf_json(&[
        "--target",
        &imgs,
        "--rw",
        "randrw",
        "--verify",
        "--runtime",
        "2",
        "--qd",
        "8",
    ]);
    assert_eq!(code, Some(0), "{v}");
    assert!(f64_at(&v, "total.read.ios") > 0.0);
    assert_eq!(f64_at(&v, "verify_errors"), 0.0);

    // Flip one byte in block 100.
    let off = 100 * 4096 + 1234;
    let mut data = std::fs::read(&img).unwrap();
    data[off] ^= 0x5a;
    std::fs::write(&img, &data).unwrap();

    // Pass 3: read everything back: the corrupted block is reported, exit status 2.
    let (code, v) = ringperf_json(&[
        "--target",
        &imgs,
        "--rw",
        "read",
        "--verify",
        "--io-limit",
        "8M",
        "--runtime",
        "60",
        "--qd",
        "4",
    ]);
    assert_eq!(code, Some(2), "{v}");
    assert_eq!(f64_at(&v, "verify_errors"), 1.0);
    let errs = v["errors"].as_array().unwrap();
    let e = errs[0].as_str().unwrap();
    assert!(e.contains("offset 409600") && e.contains("crc32c"), "{e}");

    // A block from elsewhere (misdirected write) is caught too: copy block 5 over block 6.
    let mut data = std::fs::read(&img).unwrap();
    data.copy_within(5 * 4096..6 * 4096, 6 * 4096);
    data[off] ^= 0x5a;
    std::fs::write(&img, &data).unwrap();
    let (code, v) = ringperf_json(&[
        "--target",
        &imgs,
        "--rw",
        "read",
        "--verify",
        "--io-limit",
        "8M",
        "--runtime",
        "60",
    ]);
    assert_eq!(code, Some(2), "{v}");
    let e = v["errors"][0].as_str().unwrap().to_string();
    assert!(
        e.contains("offset 24576") && e.contains("misdirected"),
        "{e}"
    );
}

#[test]
fn bad_arguments_fail_cleanly() {
    let out = ringperf(&["--target", "/tmp/does-not-exist-ringperf"]);
    assert_eq!(out.status.code(), Some(1));
    let out = ringperf(&["--target", "/tmp", "--runtime", "1"]);
    assert_eq!(out.status.code(), Some(1));
    let dir = scratch();
    let img = path_str(&file(&dir, "img"));
    let out = ringperf(&["--target", &img, "--size", "1M", "--bs", "1000"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("multiple"));
    let out = ringperf(&["--target", "pool:tank/vol", "--runtime", "1"]);
    assert_eq!(out.status.code(), Some(1));
}

/// `--submit-batch` reaches the job ring: 1 (the raw target's default, fio's pattern) submits
/// every I/O with its own io_uring_enter, 4 at most 4 per enter, 0 what the workers queued in one reactor turn
/// together (at QD16, several per enter); `--fixed-bufs=false` and `--ring-mode` still
/// give correct runs.
#[test]
fn submit_batch_and_ring_options_reach_the_ring() {
    let dir = scratch();
    let img = path_str(&file(&dir, "img"));
    let run = |extra: &[&str]| {
        let mut args = vec![
            "--target",
            &img,
            "--size",
            "16M",
            "--rw",
            "randread",
            "--qd",
            "16",
            "--runtime",
            "1",
            "--verify",
        ];
        args.extend_from_slice(extra);
        let (code, v) = ringperf_json(&args);
        assert_eq!(code, Some(0), "{extra:?}: {v}");
        // More than a few rounds of the queue, unless the disk stalled for a second or more
        // (the shared disk of a busy machine does; 71 I/Os with a 2.8 s one was seen).
        let stalled = f64_at(&v, "total.lat.max_us") >= 1e6;
        assert!(f64_at(&v, "total.ios") > 100.0 || stalled, "{extra:?}: {v}");
        assert_eq!(f64_at(&v, "verify_errors"), 0.0);
        v
    };
    let each = run(&["--submit-batch", "1"]);
    assert_eq!(f64_at(&each, "ring.submit_batch"), 1.0);
    let spe = f64_at(&each, "ring.sqes_per_enter");
    assert!((1.0..1.01).contains(&spe), "batch 1: {spe} SQEs per enter");
    let batched = run(&["--submit-batch", "0"]);
    let spe = f64_at(&batched, "ring.sqes_per_enter");
    assert!(spe > 2.0, "per-turn batching at QD16: {spe} SQEs per enter");
    let four = run(&["--submit-batch", "4"]);
    assert_eq!(f64_at(&four, "ring.submit_batch"), 4.0);
    let spe = f64_at(&four, "ring.sqes_per_enter");
    assert!((1.0..=4.0).contains(&spe), "batch 4: {spe} SQEs per enter");
    let default = run(&[]);
    assert_eq!(f64_at(&default, "ring.submit_batch"), 1.0);
    let spe = f64_at(&default, "ring.sqes_per_enter");
    assert!(
        (1.0..1.01).contains(&spe),
        "raw default: {spe} SQEs per enter"
    );
    run(&["--fixed-bufs=false", "--ring-mode", "coop"]);
}

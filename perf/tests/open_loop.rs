//! Coordinated omission: a target that freezes for 100 ms every 500 I/Os. A closed loop at
//! QD1 sees one slow I/O per freeze (0.2 % of samples: p99 stays low); the open loop at a
//! fixed rate counts every request that should have started during the freeze from its
//! intended start, so its p99 shows the freezes.
//!
//! The file is read buffered (from the page cache): the only stalls are the injected ones, not
//! a shared disk's, so the test measures the loop discipline and nothing else.

mod common;

use common::*;

#[test]
fn open_loop_reports_stalls_that_closed_loop_hides() {
    let dir = scratch();
    let img = path_str(&file(&dir, "img"));
    let target = format!("delay:500:100:{img}");
    let (code, closed) = ringperf_json(&[
        "--target",
        &target,
        "--size",
        "16M",
        "--rw",
        "randread",
        "--qd",
        "1",
        "--runtime",
        "3",
        "--direct=false",
    ]);
    assert_eq!(code, Some(0), "{closed}");
    let (code, open) = ringperf_json(&[
        "--target",
        &target,
        "--rw",
        "randread",
        "--qd",
        "16",
        "--runtime",
        "3",
        "--rate",
        "1000",
        "--direct=false",
    ]);
    assert_eq!(code, Some(0), "{open}");

    let closed_p99 = f64_at(&closed, "total.lat.p99_us");
    let closed_max = f64_at(&closed, "total.lat.max_us");
    let open_p99 = f64_at(&open, "total.lat.p99_us");
    let open_ios = f64_at(&open, "total.ios");
    eprintln!("closed p99 {closed_p99} max {closed_max}; open p99 {open_p99}, {open_ios} I/Os");
    // The freezes happened in the closed loop too (its max shows one)...
    assert!(
        closed_max >= 90_000.0,
        "closed-loop max {closed_max} us: no stall seen"
    );
    // ...but they are a sliver of its samples, so its p99 stays far below the freeze.
    assert!(closed_p99 < 50_000.0, "closed-loop p99 {closed_p99} us");
    // The open loop kept its schedule (rate x runtime requests) and its p99 shows the freezes.
    assert!(
        (2700.0..=3100.0).contains(&open_ios),
        "open loop issued {open_ios}"
    );
    assert!(
        open_p99 >= 50_000.0,
        "open-loop p99 {open_p99} us hides the stalls"
    );
}

//! `ringpool serve --cpu-latency-us N` holds a PM QoS CPU latency bound of N us for as long as
//! it serves, and not a moment longer; without the flag it holds none. Read back from
//! /dev/cpu_dma_latency (the bound the kernel applies: the smallest one held). Needs root;
//! skipped without it, or when another process already holds a bound this small.

mod common;

use std::io::Read;

use common::{free_port, Env, Serve};

const PATH: &str = "/dev/cpu_dma_latency";

fn applied() -> Option<i32> {
    let mut b = [0u8; 4];
    std::fs::File::open(PATH).ok()?.read_exact(&mut b).ok()?;
    Some(i32::from_ne_bytes(b))
}

#[test]
fn serve_holds_the_bound_while_it_runs() {
    let Some(before) = applied() else {
        eprintln!("SKIP: cannot read {PATH} (not root, or no PM QoS)");
        return;
    };
    let ask = 5;
    if before <= ask {
        eprintln!("SKIP: another process holds a bound of {before} us");
        return;
    }
    let env = Env::new();
    let img = env.path("d0.img");
    env.ok(&["create", "--size", "256M", "qos", img.to_str().unwrap()]);

    let plain = Serve::start(&env, free_port(), &[]);
    assert_eq!(
        applied(),
        Some(before),
        "serve without the flag holds no bound"
    );
    assert_eq!(plain.stop().code(), Some(0));

    let held = Serve::start(&env, free_port(), &["--cpu-latency-us", &ask.to_string()]);
    assert_eq!(
        applied(),
        Some(ask),
        "serve --cpu-latency-us {ask} holds it"
    );
    assert_eq!(held.stop().code(), Some(0));
    assert_eq!(applied(), Some(before), "released when serve exits");

    // Killed rather than stopped: the kernel drops the request with the process.
    let killed = Serve::start(&env, free_port(), &["--cpu-latency-us", &ask.to_string()]);
    assert_eq!(applied(), Some(ask));
    drop(killed); // SIGKILL
    assert_eq!(applied(), Some(before), "released when serve is killed");
}

//! Connection placement: a new connection goes to the serving reactor with the fewest open
//! connections, among those to a preferred one (`NbdServerConfig::prefer_reactors`, e.g. the
//! reactors on the CPUs that take the devices' completion interrupts), else to the first, so
//! where a lone client is served does not depend on the connections that came and went before.

#[path = "nbd/client.rs"]
mod client;
#[path = "nbd/common.rs"]
mod common;

use std::time::{Duration, Instant};

use client::*;
use common::*;

fn per_reactor(s: &TestServer) -> Vec<(usize, usize)> {
    s.server.as_ref().unwrap().connections_per_reactor()
}

/// Waits until the per-reactor counts are `want` (accepts and closes are asynchronous).
fn wait_for(s: &TestServer, want: &[(usize, usize)]) {
    let t = Instant::now();
    while per_reactor(s) != want && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(per_reactor(s), want);
}

#[test]
fn a_lone_connection_goes_to_the_preferred_reactor_every_time() {
    let s = TestServer::start_with(1 << 20, 4096, |c| c.prefer_reactors = vec![1]);
    for round in 1u8..4 {
        // Round robin would alternate; the preferred reactor takes every lone client.
        let mut c = Client::connect(&s, EXPORT, true, false);
        wait_for(&s, &[(0, 0), (1, 1)]);
        assert_eq!(c.write(1, 4096, &[round; 4096]), 0);
        assert_eq!(c.read(2, 4096, 4096).unwrap(), vec![round; 4096]);
        drop(c);
        wait_for(&s, &[(0, 0), (1, 0)]);
    }
}

#[test]
fn connections_spread_by_count_then_preference() {
    let s = TestServer::start_with(1 << 20, 4096, |c| c.prefer_reactors = vec![1]);
    let a = Client::connect(&s, EXPORT, true, false);
    wait_for(&s, &[(0, 0), (1, 1)]);
    let b = Client::connect(&s, EXPORT, true, false);
    wait_for(&s, &[(0, 1), (1, 1)]);
    let c = Client::connect(&s, EXPORT, true, false);
    wait_for(&s, &[(0, 1), (1, 2)]);
    drop(b);
    wait_for(&s, &[(0, 0), (1, 2)]);
    // The emptier reactor wins over the preferred one.
    let d = Client::connect(&s, EXPORT, true, false);
    wait_for(&s, &[(0, 1), (1, 2)]);
    drop((a, c, d));
    wait_for(&s, &[(0, 0), (1, 0)]);
}

#[test]
fn without_a_preference_a_lone_connection_always_gets_the_first_reactor() {
    let s = TestServer::start(1 << 20);
    for _ in 0..3 {
        // Round robin would alternate between the reactors.
        let a = Client::connect(&s, EXPORT, true, false);
        wait_for(&s, &[(0, 1), (1, 0)]);
        drop(a);
        wait_for(&s, &[(0, 0), (1, 0)]);
    }
    let a = Client::connect(&s, EXPORT, true, false);
    wait_for(&s, &[(0, 1), (1, 0)]);
    let b = Client::connect(&s, EXPORT, true, false);
    wait_for(&s, &[(0, 1), (1, 1)]);
    drop(a);
    wait_for(&s, &[(0, 0), (1, 1)]);
    let c = Client::connect(&s, EXPORT, true, false);
    wait_for(&s, &[(0, 1), (1, 1)]);
    let d = Client::connect(&s, EXPORT, true, false);
    wait_for(&s, &[(0, 2), (1, 1)]);
    drop((b, c, d));
    wait_for(&s, &[(0, 0), (1, 0)]);
}

//! Connection placement: a new connection goes to the serving reactor with the fewest open
//! connections, among those to a preferred one (`NbdServerConfig::prefer_reactors`, e.g. the
//! reactors on the CPUs that take the devices' completion interrupts), else to the first, so
//! where a lone client is served does not depend on the connections that came and went before.
//! With `Placement::Client`, among the reactors with the fewest connections the one pinned to the
//! CPU the client connected from wins.

#[path = "nbd/client.rs"]
mod client;
#[path = "nbd/common.rs"]
mod common;

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use client::*;
use common::*;
use ringpool_driver::io::{ReactorConfig, ReactorSet};
use ringpool_driver::nbd::{MemBackend, Placement};

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

/// The CPUs the calling thread may run on.
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain old data; all-zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: sched_getaffinity fills our local set of the size passed.
    let r = unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if r != 0 {
        return Vec::new();
    }
    (0..libc::CPU_SETSIZE as usize)
        // SAFETY: CPU_ISSET reads one bit of our local set.
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .collect()
}

/// Restricts the calling thread to `cpus`; false if the kernel refuses.
fn set_cpus(cpus: &[usize]) -> bool {
    // SAFETY: as in `allowed_cpus`.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &c in cpus {
        // SAFETY: CPU_SET writes one bit of our local set; `c` came from a set of this size.
        unsafe { libc::CPU_SET(c, &mut set) };
    }
    // SAFETY: the set is a live local of the size passed.
    unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0 }
}

/// A server on two reactors pinned to two different CPUs with `Placement::Client` and the
/// second reactor preferred (so a placement that ignored the client would pick it every time),
/// and the CPU of each reactor; `None` (with a printed reason) on a machine where that cannot be
/// had: fewer than two CPUs, or pinning refused.
fn pinned_server() -> Option<(TestServer, Vec<usize>)> {
    if allowed_cpus().len() < 2 {
        eprintln!("SKIP: fewer than 2 CPUs to place connections on");
        return None;
    }
    let reactors = ReactorSet::start(ReactorConfig {
        reactors: 2,
        pin: true,
        ..ReactorConfig::default()
    })
    .expect("reactors");
    let mut cpus = Vec::new();
    for i in 0..2 {
        let h = reactors.handle(i).expect("reactor handle");
        let Some(cpu) = h.cpu() else {
            eprintln!("SKIP: reactor {i} is not pinned");
            return None;
        };
        // The pinning is asked for, not checked, by the reactor set: look from its thread.
        let on = h
            .spawn(|| async { allowed_cpus() })
            .join_blocking()
            .unwrap();
        if on != [cpu] {
            eprintln!("SKIP: reactor {i} should run on CPU {cpu} only but may run on {on:?}");
            return None;
        }
        cpus.push(cpu);
    }
    assert_ne!(cpus[0], cpus[1]);
    let mem = Arc::new(MemBackend::new(1 << 20, 4096));
    let s = TestServer::serve_on(reactors, mem.clone(), false, mem, |c| {
        c.placement = Placement::Client;
        c.prefer_reactors = vec![1];
        // The clients never finish the handshake: a failing check shows where they went.
        c.handshake_timeout = None;
    });
    Some((s, cpus))
}

/// The per-reactor counts with one connection on reactor `k` of 2.
fn one_on(k: usize) -> Vec<(usize, usize)> {
    (0..2).map(|i| (i, usize::from(i == k))).collect()
}

#[test]
fn a_tcp_client_is_served_by_the_reactor_of_its_cpu() {
    let Some((s, cpus)) = pinned_server() else {
        return;
    };
    let port = s.port();
    // Reactor 0 first: the preference alone would give reactor 1.
    for k in [0, 1, 0, 1] {
        let cpu = cpus[k];
        let conn = std::thread::spawn(move || {
            if !set_cpus(&[cpu]) {
                return None;
            }
            let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
            let mut greeting = [0u8; 18];
            c.read_exact(&mut greeting).expect("greeting");
            Some(c)
        })
        .join()
        .unwrap();
        let Some(c) = conn else {
            eprintln!("SKIP: cannot pin a thread to CPU {cpu}");
            return;
        };
        wait_for(&s, &one_on(k));
        drop(c);
        wait_for(&s, &one_on(usize::MAX));
    }
}

#[test]
fn a_unix_client_process_is_served_by_the_reactor_of_its_cpu() {
    if !have("python3") {
        return;
    }
    let Some((s, cpus)) = pinned_server() else {
        return;
    };
    // The client connects from a process of its own: the server learns a unix client's CPU
    // from its process (the peer's credentials), not from the thread of this test.
    let script = "import socket, sys\n\
                  s = socket.socket(socket.AF_UNIX)\n\
                  s.connect(sys.argv[1])\n\
                  g = s.recv(18, socket.MSG_WAITALL)\n\
                  print(len(g), flush=True)\n\
                  sys.stdin.read()\n";
    for k in [0, 1, 0, 1] {
        let cpu = cpus[k];
        let sock = s.sock();
        // A child inherits the CPUs of the thread that forks it.
        let child = std::thread::spawn(move || {
            if !set_cpus(&[cpu]) {
                return None;
            }
            Some(
                Command::new("python3")
                    .arg("-c")
                    .arg(script)
                    .arg(&sock)
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .spawn()
                    .expect("python3"),
            )
        })
        .join()
        .unwrap();
        let Some(mut child) = child else {
            eprintln!("SKIP: cannot pin a thread to CPU {cpu}");
            return;
        };
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "18", "the client did not get the greeting");
        wait_for(&s, &one_on(k));
        drop(child.stdin.take());
        assert!(child.wait().unwrap().success());
        wait_for(&s, &one_on(usize::MAX));
    }
}

//! Reactor tests: block_on, tasks, timers, cross-thread wakes, ReactorSet pinning, deep queues,
//! dropping futures with ops in flight.

use std::future::Future;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ringpool_driver::io::{self, IoBuf, ReactorConfig, ReactorSet};

fn cfg() -> ReactorConfig {
    ReactorConfig {
        reactors: 2,
        arena_bytes: 1 << 20,
        ..ReactorConfig::default()
    }
}

#[test]
fn block_on_runs_tasks_and_timers() {
    let r = io::block_on(&cfg(), async {
        assert!(io::in_reactor());
        assert_eq!(io::current_reactor_index(), None);
        let info = io::ring_info().unwrap();
        assert!(info.cq_entries >= info.sq_entries);
        let counter = Rc::new(std::cell::Cell::new(0));
        let mut hs = Vec::new();
        for i in 0..10u64 {
            let c = Rc::clone(&counter);
            hs.push(io::spawn_local(async move {
                io::sleep(Duration::from_millis(10 - i)).await;
                c.set(c.get() + 1);
                i
            }));
        }
        let t0 = Instant::now();
        let mut sum = 0;
        for h in hs {
            sum += h.await.unwrap();
        }
        assert!(t0.elapsed() >= Duration::from_millis(9));
        io::yield_now().await;
        (sum, counter.get())
    })
    .unwrap();
    assert_eq!(r, (45, 10));
}

#[test]
fn ring_setup_prefers_defer_taskrun() {
    let info = io::block_on(&cfg(), async { io::ring_info().unwrap() }).unwrap();
    println!("ring info: {info:?}");
    // This kernel supports it (6.18); elsewhere the probe falls back.
    assert_eq!(info.mode, io::TaskRunMode::DeferTaskrun);
}

#[test]
fn cross_thread_wake_via_oneshot() {
    io::block_on(&cfg(), async {
        let (tx, rx) = io::oneshot::channel::<u32>();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            tx.send(7).unwrap();
        });
        // The reactor sleeps in io_uring_enter; only the eventfd can wake it.
        assert_eq!(rx.await.unwrap(), 7);
        t.join().unwrap();
        let (tx, rx) = io::oneshot::channel::<u32>();
        std::thread::spawn(move || drop(tx));
        assert!(rx.await.is_err());
        let n = Arc::new(io::Notify::new());
        let n2 = Arc::clone(&n);
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            n2.notify_one();
        });
        n.notified().await;
    })
    .unwrap();
}

#[test]
fn reactor_set_pins_and_spawns() {
    let mut set = ReactorSet::start(cfg()).unwrap();
    assert_eq!(set.len(), 2);
    let cores = core_ids();
    let mut hs = Vec::new();
    for i in 0..set.len() {
        hs.push(set.spawn_on(i, move || async move {
            io::sleep(Duration::from_millis(5)).await;
            // SAFETY: sched_getcpu has no preconditions.
            let cpu = unsafe { libc::sched_getcpu() };
            (io::current_reactor_index(), cpu)
        }));
    }
    for (i, h) in hs.into_iter().enumerate() {
        let (idx, cpu) = h.join_blocking().unwrap();
        assert_eq!(idx, Some(i));
        if cores >= 2 {
            assert_eq!(
                usize::try_from(cpu).unwrap(),
                i % cores,
                "reactor {i} on cpu {cpu}"
            );
        }
    }
    // A task on reactor 0 awaits a task on reactor 1.
    let h1 = set.spawn_on(1, || async { 41u32 });
    let h0 = set.spawn_on(0, move || async move { h1.await.unwrap() + 1 });
    assert_eq!(h0.join_blocking().unwrap(), 42);
    // Panics are contained.
    let hp = set.spawn_on(0, || async { panic!("boom") });
    assert!(matches!(hp.join_blocking(), Err(io::JoinError::Panicked(m)) if m.contains("boom")));
    // Long-running tasks are cancelled at shutdown.
    let hl = set.spawn_on(1, || async {
        io::sleep(Duration::from_secs(3600)).await;
    });
    std::thread::sleep(Duration::from_millis(20));
    set.shutdown();
    assert_eq!(hl.join_blocking(), Err(io::JoinError::Cancelled));
    let hr = set.spawn_on(0, || async {});
    assert_eq!(hr.join_blocking(), Err(io::JoinError::Rejected));
}

fn core_ids() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

#[test]
fn deep_queue_beyond_ring_size() {
    // 8-entry SQ, 16-entry CQ, 2000 concurrent reads: the backlog must keep the CQ from
    // overflowing and every op must complete.
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let path = dir.path().join("f");
    let data: Vec<u8> = (0..1024 * 1024u32)
        .map(|i| u8::try_from(i * 7 % 251).unwrap())
        .collect();
    std::fs::write(&path, &data).unwrap();
    let file = std::fs::File::open(&path).unwrap();
    let fd = file.as_raw_fd();
    let c = ReactorConfig {
        entries: 8,
        ..cfg()
    };
    io::block_on(&c, async {
        let mut hs = Vec::new();
        for i in 0..2000u64 {
            hs.push(io::spawn_local(async move {
                let off = (i * 4096) % (1024 * 1024);
                let (r, b) = io::read_exact_at(fd, IoBuf::zeroed(4096), off).await;
                r.unwrap();
                (off, b)
            }));
        }
        for h in hs {
            let (off, b) = h.await.unwrap();
            let o = usize::try_from(off).unwrap();
            assert_eq!(&b[..], &data[o..o + 4096]);
        }
        let (_, ops) = io::reactor_stats().unwrap();
        assert_eq!(ops, 0, "no op slots left behind");
    })
    .unwrap();
}

#[test]
fn dropping_in_flight_futures_is_safe() {
    io::block_on(&cfg(), async {
        // A pipe with no writer: the read stays in flight until cancelled.
        let mut fds = [0i32; 2];
        // SAFETY: pipe writes two fds into our array.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        for _ in 0..50 {
            let h = io::spawn_local(async move {
                let (r, _b) = io::read_at(fds[0], IoBuf::zeroed(4096), 0).await;
                r
            });
            io::yield_now().await;
            h.abort();
            assert!(matches!(h.await, Err(io::JoinError::Cancelled)));
        }
        // Sleep futures dropped early.
        for _ in 0..50 {
            let s = io::sleep(Duration::from_secs(100));
            let mut s = Box::pin(s);
            let w = std::task::Waker::noop();
            let _ = s.as_mut().poll(&mut std::task::Context::from_waker(w));
            drop(s);
        }
        // Let the cancellations complete.
        io::sleep(Duration::from_millis(20)).await;
        let (_, ops) = io::reactor_stats().unwrap();
        assert_eq!(ops, 0, "orphaned slots freed after their CQEs");
        // SAFETY: closing our own pipe fds.
        unsafe {
            libc::close(fds[0]);
            libc::close(fds[1]);
        }
    })
    .unwrap();
}

#[test]
fn arena_buffers_use_fixed_io() {
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let path = dir.path().join("f");
    std::fs::write(&path, vec![0u8; 1 << 20]).unwrap();
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let fd = f.as_raw_fd();
    io::block_on(&cfg(), async {
        let mut b = io::buf::alloc(8192);
        assert!(b.is_arena());
        b.fill(0x5a);
        let (r, b) = io::write_all_at(fd, b, 4096).await;
        r.unwrap();
        let info = io::ring_info().unwrap();
        println!("ring info after arena use: {info:?}");
        assert!(info.registered_buffers, "root can register 1 MiB");
        drop(b);
        let rb = io::buf::alloc(8192);
        let (r, rb) = io::read_exact_at(fd, rb, 4096).await;
        r.unwrap();
        assert!(rb.iter().all(|&x| x == 0x5a));
        // Arena exhaustion falls back to the heap.
        let big = io::buf::alloc(2 << 20);
        assert!(!big.is_arena());
        // Arena buffers can be sent to and dropped on another thread.
        std::thread::spawn(move || drop(rb)).join().unwrap();
    })
    .unwrap();
}

/// Every ring mode (and SQPOLL) completes file I/O, timers and cross-thread wakes.
#[test]
fn every_ring_mode_works() {
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let path = dir.path().join("f");
    std::fs::write(&path, vec![3u8; 1 << 20]).unwrap();
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let fd = file.as_raw_fd();
    let variants = [
        (Some(io::TaskRunMode::DeferTaskrun), None),
        (Some(io::TaskRunMode::CoopTaskrun), None),
        (Some(io::TaskRunMode::Plain), None),
        (None, Some(50u32)),
    ];
    for (mode, sqpoll) in variants {
        let c = ReactorConfig {
            ring_mode: mode,
            sqpoll,
            entries: 16,
            ..cfg()
        };
        let info = io::block_on(&c, async move {
            let mut hs = Vec::new();
            for i in 0..100u64 {
                hs.push(io::spawn_local(async move {
                    let mut b = io::buf::alloc(4096);
                    b.fill(u8::try_from(i).unwrap());
                    let (r, _) = io::write_all_at(fd, b, i * 4096).await;
                    r.unwrap();
                    let (r, b) = io::read_exact_at(fd, io::buf::alloc_zeroed(4096), i * 4096).await;
                    r.unwrap();
                    assert!(b.iter().all(|&x| u64::from(x) == i));
                }));
            }
            for h in hs {
                h.await.unwrap();
            }
            io::fsync(fd, true).await.unwrap();
            let (tx, rx) = io::oneshot::channel();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(10));
                tx.send(()).unwrap();
            });
            rx.await.unwrap();
            io::sleep(Duration::from_millis(1)).await;
            io::ring_info().unwrap()
        })
        .unwrap();
        println!("{mode:?} sqpoll={sqpoll:?}: {info:?}");
        if let Some(m) = mode {
            assert_eq!(info.mode, m);
        }
        assert_eq!(info.sqpoll, sqpoll.is_some());
    }
}

/// CPU time of the whole process (user + system).
fn process_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into our local timespec.
    let r = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    assert_eq!(r, 0);
    Duration::new(
        u64::try_from(ts.tv_sec).unwrap(),
        u32::try_from(ts.tv_nsec).unwrap(),
    )
}

#[test]
fn polling_reactors_exchange_messages_and_then_sleep() {
    use std::os::unix::net::UnixStream;
    let mut set = ReactorSet::start(ReactorConfig {
        reactors: 2,
        pin: false,
        arena_bytes: 1 << 20,
        spin: Duration::from_micros(200),
        ..ReactorConfig::default()
    })
    .unwrap();
    // Ping-pong across the two reactors: every wake-up is found by the poll or by the
    // blocking wait, in order, none lost.
    let (a, b) = UnixStream::pair().unwrap();
    let rounds = 2000u32;
    let hb = set.spawn_on(1, move || async move {
        let s = io::net::Stream::from_fd(b.into());
        for i in 0..rounds {
            let mut buf = IoBuf::with_capacity(4);
            buf.set_len(4);
            let (r, got) = s.recv_exact_into(buf, 0..4).await;
            r.unwrap();
            assert_eq!(u32::from_le_bytes(got[..4].try_into().unwrap()), 2 * i);
            let (r, _) = s
                .send_all(IoBuf::from_slice(&(2 * i + 1).to_le_bytes()))
                .await;
            r.unwrap();
        }
    });
    let ha = set.spawn_on(0, move || async move {
        let s = io::net::Stream::from_fd(a.into());
        for i in 0..rounds {
            let (r, _) = s.send_all(IoBuf::from_slice(&(2 * i).to_le_bytes())).await;
            r.unwrap();
            let mut buf = IoBuf::with_capacity(4);
            buf.set_len(4);
            let (r, got) = s.recv_exact_into(buf, 0..4).await;
            r.unwrap();
            assert_eq!(u32::from_le_bytes(got[..4].try_into().unwrap()), 2 * i + 1);
        }
    });
    ha.join_blocking().unwrap();
    hb.join_blocking().unwrap();
    // A receive that never completes keeps an op in flight: the reactor polls for at most
    // its spin time after each wake-up, then sleeps. One that polled for as long as an op is
    // in flight would burn the whole idle period.
    let (c, d) = UnixStream::pair().unwrap();
    let hidle = set.spawn_on(1, move || async move {
        let s = io::net::Stream::from_fd(c.into());
        let (r, _) = s.recv(IoBuf::with_capacity(8)).await;
        r.unwrap()
    });
    std::thread::sleep(Duration::from_millis(50));
    let t0 = process_cpu();
    std::thread::sleep(Duration::from_millis(500));
    let used = process_cpu() - t0;
    assert!(
        used < Duration::from_millis(150),
        "{used:?} of CPU in 500 ms with one idle receive"
    );
    drop(d);
    assert_eq!(
        hidle.join_blocking().unwrap(),
        0,
        "EOF once the peer closed"
    );
    set.shutdown();
}

/// `submit_batch` bounds how many SQEs wait in the SQ: with 1 every op is submitted by its own
/// io_uring_enter as it is made, with 4 at most 4 go in one enter, and by default (0) the ops
/// the runnable tasks queued in one loop turn go in together. Data stays correct either way,
/// including past the ring size (backlog) with a small SQ.
#[test]
fn submit_batch_bounds_sqes_per_enter() {
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let path = dir.path().join("f");
    let data: Vec<u8> = (0..256 * 4096u32)
        .map(|i| u8::try_from(i % 253).unwrap())
        .collect();
    std::fs::write(&path, &data).unwrap();
    let file = std::fs::File::open(&path).unwrap();
    let fd = file.as_raw_fd();
    let run = |batch: usize, entries: u32| {
        let c = ReactorConfig {
            submit_batch: batch,
            entries,
            ..cfg()
        };
        let data = &data;
        io::block_on(&c, async move {
            let before = io::ring_stats().unwrap();
            let mut hs = Vec::new();
            for i in 0..64u64 {
                hs.push(io::spawn_local(async move {
                    let off = (i * 3 % 256) * 4096;
                    let (r, b) = io::read_exact_at(fd, IoBuf::zeroed(4096), off).await;
                    r.unwrap();
                    (off, b)
                }));
            }
            for h in hs {
                let (off, b) = h.await.unwrap();
                let o = usize::try_from(off).unwrap();
                assert_eq!(&b[..], &data[o..o + 4096]);
            }
            let after = io::ring_stats().unwrap();
            (
                after.submitted - before.submitted,
                after.submit_enters - before.submit_enters,
                after.reaped - before.reaped,
            )
        })
        .unwrap()
    };
    // 64 reads plus the reactor's own eventfd read (and possibly a re-arm).
    let (sqes, enters, reaped) = run(1, 256);
    println!("batch 1: {sqes} SQEs in {enters} enters, {reaped} reaped");
    assert!(sqes >= 64 && reaped >= 64);
    assert!(
        enters >= 64,
        "one enter per read: {enters} enters for {sqes} SQEs"
    );
    let (sqes, enters, _) = run(4, 256);
    println!("batch 4: {sqes} SQEs in {enters} enters");
    assert!(sqes >= 64);
    assert!(
        enters >= 16,
        "at most 4 SQEs per enter: {enters} enters for {sqes} SQEs"
    );
    assert!(
        enters < 64,
        "batches of 4 need fewer enters than reads: {enters}"
    );
    let (sqes, enters, _) = run(0, 256);
    println!("batch 0: {sqes} SQEs in {enters} enters");
    assert!(sqes >= 64);
    assert!(
        enters * 8 <= sqes,
        "per-turn batching: {enters} enters for {sqes} SQEs"
    );
    // A small SQ with immediate submission: the backlog path still completes everything.
    let (sqes, _, _) = run(1, 8);
    assert!(sqes >= 64);
}

//! Reactors that poll the ring before sleeping (`ReactorConfig::spin`, `read_spin`): no
//! wake-up is lost, and a device read in flight is collected without a blocking wait.

use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use ringpool_driver::io::{self, IoBuf, ReactorConfig, ReactorSet};

fn polling(spin_us: u64, read_spin_us: u64) -> ReactorConfig {
    ReactorConfig {
        reactors: 1,
        pin: false,
        arena_bytes: 1 << 20,
        spin: Duration::from_micros(spin_us),
        read_spin: Duration::from_micros(read_spin_us),
        read_spin_max: 1,
        // A busy test machine preempts the poll now and then: keep polling regardless.
        poll_backoff: Duration::ZERO,
        ..ReactorConfig::default()
    }
}

/// Tasks shipped from another thread while the reactor polls (a receive that never completes
/// keeps it polling before every sleep) all run. A poll whose first turn reaped the wake-up
/// read of an earlier signal, and which then looked only at the wake-up flag, went to sleep
/// with work shipped meanwhile (whose signal found that flag still set and wrote nothing)
/// still queued: the reactor hung on the first such race.
#[test]
fn work_shipped_to_a_polling_reactor_is_never_lost() {
    let mut set = ReactorSet::start(polling(300, 0)).unwrap();
    let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
    let idle = set.spawn_on(0, move || async move {
        let s = io::net::Stream::from_fd(a.into());
        let (r, _) = s.recv(IoBuf::with_capacity(8)).await;
        r.map(|n| n == 0).unwrap_or(false)
    });
    let done = Arc::new(AtomicU64::new(0));
    let (tx, rx) = mpsc::channel();
    let handle = set.handle(0).unwrap();
    let counter = Arc::clone(&done);
    let driver = std::thread::spawn(move || {
        for round in 0..400u64 {
            // Spawns a few microseconds apart, so that some land while the reactor is running
            // the previous one (its wake-up read not yet reaped), then one at a time.
            let hs: Vec<_> = (0..8u64)
                .map(|k| {
                    let until = Instant::now() + Duration::from_micros((round * 8 + k) % 41);
                    while Instant::now() < until {
                        std::hint::spin_loop();
                    }
                    let c = Arc::clone(&counter);
                    handle.spawn(move || async move {
                        c.fetch_add(1, Ordering::SeqCst);
                    })
                })
                .collect();
            for h in hs {
                h.join_blocking().unwrap();
            }
            let c = Arc::clone(&counter);
            handle
                .spawn(move || async move {
                    c.fetch_add(1, Ordering::SeqCst);
                })
                .join_blocking()
                .unwrap();
        }
        tx.send(()).unwrap();
    });
    if rx.recv_timeout(Duration::from_secs(60)).is_err() {
        panic!(
            "shipped tasks stopped running after {} of 3600: a lost wake-up",
            done.load(Ordering::SeqCst)
        );
    }
    driver.join().unwrap();
    assert_eq!(done.load(Ordering::SeqCst), 400 * 9);
    drop(b);
    assert!(idle.join_blocking().unwrap(), "EOF once the peer closed");
    set.shutdown();
}

/// Blocking waits (`RingStats::waits`) during `reads` O_DIRECT reads at queue depth 1, on a
/// reactor with `cfg`. A 4 KiB read that leaves the page cache alone takes the disk's
/// latency, so a reactor that sleeps waits once per read.
fn waits_for_direct_reads(cfg: ReactorConfig, path: &std::path::Path, reads: u64) -> u64 {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .unwrap();
    let mut set = ReactorSet::start(cfg).unwrap();
    let h = set.spawn_on(0, move || async move {
        let fd = f.as_raw_fd();
        let before = io::ring_stats().unwrap();
        for i in 0..reads {
            let buf = io::buf::alloc(4096);
            let off = (i * 7919 % 256) * 4096;
            let (r, buf) = io::read_exact_at(fd, buf, off).await;
            r.unwrap();
            let want = u8::try_from(off / 4096 % 251).unwrap();
            assert!(buf.iter().all(|&x| x == want), "read at {off}");
        }
        let waits = io::ring_stats().unwrap().since(&before).waits;
        drop(f);
        waits
    });
    let waits = h.join_blocking().unwrap();
    set.shutdown();
    waits
}

/// With `read_spin`, a reactor whose only work is a device read polls the ring for its
/// completion instead of sleeping in the kernel; without it, it sleeps once per read. A
/// poll can still run out of time (a read slower than the limit, the thread descheduled on a
/// busy test machine), so the polled side gets three attempts.
#[test]
fn device_reads_are_collected_by_polling_instead_of_sleeping() {
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let path = dir.path().join("f");
    let data: Vec<u8> = (0..256u32)
        .flat_map(|b| std::iter::repeat_n(u8::try_from(b % 251).unwrap(), 4096))
        .collect();
    std::fs::write(&path, &data).unwrap();
    let reads = 200;
    let slept = waits_for_direct_reads(polling(0, 0), &path, reads);
    assert!(
        slept * 2 >= reads,
        "a reactor that does not poll sleeps for device reads ({slept} waits for {reads})"
    );
    let polled: Vec<u64> = (0..3)
        .map(|_| waits_for_direct_reads(polling(0, 20_000), &path, reads))
        .collect();
    assert!(
        polled.iter().any(|&w| w * 4 < reads),
        "a polling reactor still slept for its reads: {polled:?} waits for {reads} each"
    );
    // More reads in flight than `read_spin_max`: no polling, the reactor sleeps.
    let mut wide = polling(0, 20_000);
    wide.read_spin_max = 0;
    let unpolled = waits_for_direct_reads(wide, &path, reads);
    assert!(
        unpolled * 2 >= reads,
        "read_spin_max 0 still polled ({unpolled} waits for {reads})"
    );
}

/// Pins the calling thread to CPU `cpu`.
fn pin_to(cpu: usize) {
    // SAFETY: cpu_set_t is plain old data; all-zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: CPU_SET writes one bit of our local set; `cpu` is below CPU_SETSIZE.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: the set is a live local of the size passed.
    let r = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    assert_eq!(r, 0, "sched_setaffinity({cpu})");
}

/// The first CPU this process may run on.
fn first_cpu() -> usize {
    // SAFETY: as in `pin_to`.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: sched_getaffinity fills our local set of the size passed.
    let r = unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    assert_eq!(r, 0);
    // SAFETY: CPU_ISSET reads one bit of our local set.
    (0..libc::CPU_SETSIZE as usize)
        .find(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .unwrap()
}

/// A polling reactor that shares its CPU with a busy thread (so it is preempted all the time
/// and its poll keeps backing off) reads a file from the page cache, one read at a time, and
/// never goes to sleep with the read's task runnable. A page-cache read completes inside the
/// poll's first ring turn, the one that submits it; the poll then found the thread had been
/// preempted since its last poll and told the loop to block without looking whether that turn
/// had woken a task: the reactor slept in `io_uring_enter` with the reader runnable and
/// nothing left in flight to wake it (the nbd-ab hangs of branch `lat-poll`, where a device
/// read that completed while the reactor was preempted inside that turn did the same).
#[test]
fn a_preempted_poll_never_sleeps_with_a_task_runnable() {
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let path = dir.path().join("f");
    std::fs::write(&path, vec![7u8; 64 * 1024]).unwrap();
    let cpu = first_cpu();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let busy = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            pin_to(cpu);
            while !stop.load(Ordering::Relaxed) {
                std::hint::spin_loop();
            }
        })
    };
    let mut cfg = polling(0, 50_000);
    // Backoffs short enough that the poll resumes (and is preempted again) many times.
    cfg.poll_backoff = Duration::from_micros(500);
    let mut set = ReactorSet::start(cfg).unwrap();
    let done = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&done);
    let f = std::fs::File::open(&path).unwrap();
    let h = set.spawn_on(0, move || async move {
        pin_to(cpu);
        let until = Instant::now() + Duration::from_secs(2);
        while Instant::now() < until {
            let (r, buf) = io::read_exact_at(f.as_raw_fd(), io::buf::alloc(4096), 8192).await;
            r.unwrap();
            assert!(buf.iter().all(|&x| x == 7));
            counter.fetch_add(1, Ordering::SeqCst);
        }
        drop(f);
    });
    let (tx, rx) = mpsc::channel();
    let waiter = std::thread::spawn(move || {
        h.join_blocking().unwrap();
        let _ = tx.send(());
    });
    let finished = rx.recv_timeout(Duration::from_secs(30)).is_ok();
    stop.store(true, Ordering::Relaxed);
    busy.join().unwrap();
    if !finished {
        // The reactor thread sleeps for good: leave it (and its set) behind.
        std::mem::forget(set);
        panic!(
            "the reactor went to sleep with its reader runnable after {} reads",
            done.load(Ordering::SeqCst)
        );
    }
    waiter.join().unwrap();
    assert!(done.load(Ordering::SeqCst) > 0);
    set.shutdown();
}

//! The read window of the ring driver (`ReactorConfig::read_window`): reads of a file past the
//! window wait in the ring and go to the kernel as earlier ones complete, every read still
//! gets its own data; a held read whose future is dropped is freed; no window holds nothing.
//! On a real O_DIRECT file in /tmp.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;

use ringpool_driver::io::{
    self, BlockEngine, Device, DeviceOptions, DirectIo, IoBuf, ReactorConfig, UringEngine,
};

const BLK: usize = 4096;

fn cfg(window: usize) -> ReactorConfig {
    ReactorConfig {
        reactors: 1,
        pin: false,
        arena_bytes: 4 << 20,
        read_window: window,
        ..ReactorConfig::default()
    }
}

fn device(dir: &Path, size: u64) -> UringEngine {
    let p = dir.join("d");
    Device::create_sparse_file(&p, size).unwrap();
    let opts = DeviceOptions {
        direct: DirectIo::Required,
        exclusive: true,
        ..DeviceOptions::default()
    };
    UringEngine::new(Arc::new(Device::open(&p, &opts).unwrap()))
}

fn block(i: usize) -> Vec<u8> {
    (0..BLK)
        .map(|j| u8::try_from((i * 13 + j) % 251).unwrap())
        .collect()
}

async fn fill(e: &UringEngine, n: usize) {
    for i in 0..n {
        let (r, _) = e
            .write_at(IoBuf::from_slice(&block(i)), (i * BLK) as u64)
            .await;
        r.unwrap();
    }
}

/// Reads blocks `0..n` concurrently (each in its own task, all made in one turn) and checks
/// every one; returns how many reads the window held.
async fn read_all(e: &UringEngine, n: usize) -> u64 {
    let before = io::ring_stats().unwrap();
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let f = e.read_at(IoBuf::zeroed(BLK), (i * BLK) as u64);
            io::spawn_local(async move {
                let (r, b) = f.await;
                r.unwrap();
                b.to_vec()
            })
        })
        .collect();
    for (i, t) in tasks.into_iter().enumerate() {
        assert_eq!(t.await.unwrap(), block(i), "block {i}");
    }
    io::ring_stats().unwrap().since(&before).held_reads
}

#[test]
fn reads_past_the_window_wait_and_all_complete_with_their_data() {
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let e = device(dir.path(), 1 << 20);
    io::block_on(&cfg(3), async move {
        fill(&e, 32).await;
        let held = read_all(&e, 32).await;
        assert_eq!(held, 29, "32 reads made at once, 3 at a time in flight");
        // Fewer reads than the window: none waits.
        assert_eq!(read_all(&e, 3).await, 0);
        let (tasks, ops) = io::reactor_stats().unwrap();
        assert_eq!((tasks, ops), (0, 0), "no task or slot left behind");
    })
    .unwrap();
}

#[test]
fn without_a_window_no_read_waits() {
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let e = device(dir.path(), 1 << 20);
    io::block_on(&cfg(0), async move {
        fill(&e, 32).await;
        assert_eq!(read_all(&e, 32).await, 0);
    })
    .unwrap();
}

/// Polls `f` once (so its read is made) and keeps it for later.
async fn poll_once<F: Future + ?Sized>(f: &mut Pin<Box<F>>) {
    std::future::poll_fn(|cx| {
        let _ = f.as_mut().poll(cx);
        Poll::Ready(())
    })
    .await;
}

#[test]
fn a_held_read_dropped_before_it_was_issued_is_freed() {
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let e = device(dir.path(), 1 << 20);
    io::block_on(&cfg(1), async move {
        fill(&e, 4).await;
        let (_, ops0) = io::reactor_stats().unwrap();
        let before = io::ring_stats().unwrap();
        let mut reads: Vec<_> = (0..4)
            .map(|i| e.read_at(IoBuf::zeroed(BLK), (i * BLK) as u64))
            .collect();
        for r in &mut reads {
            poll_once(r).await;
        }
        assert_eq!(io::ring_stats().unwrap().since(&before).held_reads, 3);
        // Drop two of the held reads; the first and the last still complete.
        let last = reads.pop().unwrap();
        reads.truncate(1);
        let first = reads.pop().unwrap();
        let (r, b) = first.await;
        r.unwrap();
        assert_eq!(b.to_vec(), block(0));
        let (r, b) = last.await;
        r.unwrap();
        assert_eq!(b.to_vec(), block(3));
        let (_, ops) = io::reactor_stats().unwrap();
        assert_eq!(ops, ops0, "no slot left behind");
        // The window is free again.
        assert_eq!(read_all(&e, 2).await, 1);
    })
    .unwrap();
}

#[test]
fn large_reads_are_never_held() {
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let e = device(dir.path(), 4 << 20);
    io::block_on(&cfg(1), async move {
        fill(&e, 64).await;
        let before = io::ring_stats().unwrap();
        // Four 64 KiB reads at once with a window of 1: none waits.
        let big = 16 * BLK;
        let tasks: Vec<_> = (0..4)
            .map(|i| {
                let f = e.read_at(IoBuf::zeroed(big), (i * big) as u64);
                io::spawn_local(async move {
                    let (r, b) = f.await;
                    r.unwrap();
                    b.to_vec()
                })
            })
            .collect();
        for (i, t) in tasks.into_iter().enumerate() {
            let got = t.await.unwrap();
            for (j, b) in got.chunks(BLK).enumerate() {
                assert_eq!(b, &block(i * 16 + j)[..], "read {i} block {j}");
            }
        }
        assert_eq!(io::ring_stats().unwrap().since(&before).held_reads, 0);
    })
    .unwrap();
}

#[test]
fn reads_made_outside_the_window_are_never_held() {
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let e = device(dir.path(), 1 << 20);
    io::block_on(&cfg(1), async move {
        fill(&e, 8).await;
        let before = io::ring_stats().unwrap();
        let tasks: Vec<_> = (0..8)
            .map(|i| {
                let f = e.read_at(IoBuf::zeroed(BLK), (i * BLK) as u64);
                io::spawn_local(async move {
                    let (r, b) = io::outside_read_window(f).await;
                    r.unwrap();
                    b.to_vec()
                })
            })
            .collect();
        for (i, t) in tasks.into_iter().enumerate() {
            assert_eq!(t.await.unwrap(), block(i), "block {i}");
        }
        assert_eq!(io::ring_stats().unwrap().since(&before).held_reads, 0);
        // The same reads made plainly wait for the window of 1.
        assert_eq!(read_all(&e, 8).await, 7);
    })
    .unwrap();
}

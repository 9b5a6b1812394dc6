//! The read window of the ring driver (`ReactorConfig::read_window`): reads of a file past the
//! window wait in the ring and go to the kernel as earlier ones complete, every read still
//! gets its own data; a held read whose future is dropped is freed; no window holds nothing.
//! On a real O_DIRECT file in /tmp.

use std::path::Path;

mod io_common;

use io_common::poll_once;
use ringpool_driver::io::{self, BlockEngine, IoBuf, ReactorConfig, UringEngine};

const BLK: usize = 4096;

fn cfg(window: usize) -> ReactorConfig {
    ReactorConfig {
        read_window: window,
        ..io_common::one_reactor()
    }
}

fn device(dir: &Path, size: u64) -> UringEngine {
    io_common::device(dir, "d", size)
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

/// Reads `n` consecutive reads of `len` bytes from offset 0 concurrently (each in its own task,
/// all made in one turn; `outside`: inside [`io::outside_read_window`]) and checks every block
/// of every one; returns how many reads the window held.
async fn read_concurrently(e: &UringEngine, n: usize, len: usize, outside: bool) -> u64 {
    let before = io::ring_stats().unwrap();
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let f = e.read_at(IoBuf::zeroed(len), (i * len) as u64);
            io::spawn_local(async move {
                let (r, b) = if outside {
                    io::outside_read_window(f).await
                } else {
                    f.await
                };
                r.unwrap();
                b.to_vec()
            })
        })
        .collect();
    for (i, t) in tasks.into_iter().enumerate() {
        let got = t.await.unwrap();
        for (j, b) in got.chunks(BLK).enumerate() {
            let k = i * len / BLK + j;
            assert_eq!(b, &block(k)[..], "read {i}, block {k}");
        }
    }
    io::ring_stats().unwrap().since(&before).held_reads
}

/// Reads blocks `0..n` concurrently, a block per read; returns how many the window held.
async fn read_all(e: &UringEngine, n: usize) -> u64 {
    read_concurrently(e, n, BLK, false).await
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
        // Four 64 KiB reads at once with a window of 1: none waits.
        assert_eq!(read_concurrently(&e, 4, 16 * BLK, false).await, 0);
    })
    .unwrap();
}

#[test]
fn reads_made_outside_the_window_are_never_held() {
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let e = device(dir.path(), 1 << 20);
    io::block_on(&cfg(1), async move {
        fill(&e, 8).await;
        assert_eq!(read_concurrently(&e, 8, BLK, true).await, 0);
        // The same reads made plainly wait for the window of 1.
        assert_eq!(read_all(&e, 8).await, 7);
    })
    .unwrap();
}

#[test]
fn each_file_has_its_own_window_and_queue() {
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let a = io_common::device(dir.path(), "a", 1 << 20);
    let b = io_common::device(dir.path(), "b", 1 << 20);
    io::block_on(&cfg(2), async move {
        fill(&a, 4).await;
        fill(&b, 4).await;
        let (_, ops0) = io::reactor_stats().unwrap();
        let before = io::ring_stats().unwrap();
        // Four reads of each file, interleaved, made in one turn: two of each wait.
        let mut of_a = Vec::new();
        let mut of_b = Vec::new();
        for i in 0..4 {
            let mut r = a.read_at(IoBuf::zeroed(BLK), (i * BLK) as u64);
            poll_once(&mut r).await;
            of_a.push(r);
            let mut r = b.read_at(IoBuf::zeroed(BLK), (i * BLK) as u64);
            poll_once(&mut r).await;
            of_b.push(r);
        }
        assert_eq!(io::ring_stats().unwrap().since(&before).held_reads, 4);
        // Every held read of `a` is dropped: `b`'s held reads are untouched and all of `b`'s
        // reads return their own blocks.
        of_a.truncate(2);
        for (i, r) in of_b.into_iter().enumerate() {
            let (res, buf) = r.await;
            res.unwrap();
            assert_eq!(buf.to_vec(), block(i), "block {i} of b");
        }
        for (i, r) in of_a.into_iter().enumerate() {
            let (res, buf) = r.await;
            res.unwrap();
            assert_eq!(buf.to_vec(), block(i), "block {i} of a");
        }
        let (_, ops) = io::reactor_stats().unwrap();
        assert_eq!(ops, ops0, "no slot left behind");
        // Both windows are free again.
        assert_eq!(read_all(&a, 2).await, 0);
        assert_eq!(read_all(&b, 3).await, 1);
    })
    .unwrap();
}

//! Write aggregation in the ring driver (`ReactorConfig::write_aggregate`): positioned writes
//! made in one reactor turn to adjacent offsets of one file go to the kernel as one vectored
//! write, on a real O_DIRECT file in /tmp; what must not merge does not, and an fsync made
//! after writes reaches the kernel after them.

mod io_common;

use io_common::{device, poll_once};
use ringpool_driver::io::{
    self, BlockEngine, IoBuf, IoError, ReactorConfig, RingStats, UringEngine,
};

const BLK: usize = 4096;

fn cfg(aggregate: usize) -> ReactorConfig {
    ReactorConfig {
        write_aggregate: aggregate,
        ..io_common::one_reactor()
    }
}

/// Block `i`'s content: every byte tells the block and the device apart.
fn block(dev: u8, i: usize) -> Vec<u8> {
    (0..BLK)
        .map(|j| dev ^ u8::try_from((i * 7 + j) % 251).unwrap())
        .collect()
}

/// Makes every write in its own task, all in one turn, and returns their results in order with
/// the ring counters' growth.
async fn write_concurrently(
    writes: Vec<(UringEngine, u64, IoBuf)>,
) -> (Vec<Result<(), IoError>>, RingStats) {
    let before = io::ring_stats().unwrap();
    let tasks: Vec<_> = writes
        .into_iter()
        .map(|(e, off, buf)| {
            let f = e.write_at(buf, off);
            io::spawn_local(async move { f.await.0 })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.expect("write task"));
    }
    (out, io::ring_stats().unwrap().since(&before))
}

async fn read(e: &UringEngine, off: u64, len: usize) -> Vec<u8> {
    let (r, b) = e.read_at(IoBuf::zeroed(len), off).await;
    r.unwrap();
    b.to_vec()
}

#[test]
fn adjacent_writes_made_in_one_turn_are_one_vectored_write() {
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let e = device(dir.path(), "d", 8 << 20);
    for arena in [true, false] {
        let e = e.clone();
        io::block_on(&cfg(1 << 20), async move {
            let base = if arena { 1u64 << 20 } else { 2 << 20 };
            // In the registered arena (a fixed vectored write) or on the heap (a plain one).
            let buf = |i: usize| {
                let data = block(1, i);
                if arena {
                    let mut b = io::buf::alloc(BLK);
                    assert!(b.is_arena(), "the arena gives the buffer");
                    b.copy_from_slice(&data);
                    b
                } else {
                    IoBuf::from_slice(&data)
                }
            };
            let writes = (0..64)
                .map(|i| (e.clone(), base + (i * BLK) as u64, buf(i)))
                .collect();
            let (res, d) = write_concurrently(writes).await;
            assert!(res.iter().all(Result::is_ok), "{res:?}");
            assert_eq!(d.writes, 64);
            assert_eq!(
                d.write_sqes, 1,
                "64 adjacent 4 KiB writes: one device write {d:?}"
            );
            assert_eq!((d.vectored_writes, d.merged_writes), (1, 64), "{d:?}");
            assert_eq!(d.vectored_fallbacks, 0);
            let got = read(&e, base, 64 * BLK).await;
            for (i, b) in got.chunks(BLK).enumerate() {
                assert_eq!(b, &block(1, i)[..], "block {i} (arena {arena})");
            }
            // A lone write goes as it is.
            let (res, d) =
                write_concurrently(vec![(e.clone(), base, IoBuf::from_slice(&block(2, 0)))]).await;
            assert!(res[0].is_ok());
            assert_eq!((d.write_sqes, d.vectored_writes), (1, 0), "{d:?}");
            assert_eq!(read(&e, base, BLK).await, block(2, 0));
        })
        .unwrap();
    }
    // Off: one device write per write.
    io::block_on(&cfg(0), async move {
        let writes = (0..64)
            .map(|i| {
                let off = (3 << 20) + (i * BLK) as u64;
                (e.clone(), off, IoBuf::from_slice(&block(3, i)))
            })
            .collect();
        let (res, d) = write_concurrently(writes).await;
        assert!(res.iter().all(Result::is_ok));
        assert_eq!((d.writes, d.write_sqes, d.vectored_writes), (64, 64, 0));
        let got = read(&e, 3 << 20, 64 * BLK).await;
        for (i, b) in got.chunks(BLK).enumerate() {
            assert_eq!(b, &block(3, i)[..], "block {i}");
        }
    })
    .unwrap();
}

#[test]
fn the_aggregation_limit_bounds_a_vectored_write() {
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let e = device(dir.path(), "d", 8 << 20);
    let run = |limit: usize, n: usize| {
        let e = e.clone();
        // Every write task polled in one turn (the default budget is 128 tasks per turn).
        let cfg = ReactorConfig {
            task_budget: 1024,
            ..cfg(limit)
        };
        io::block_on(&cfg, async move {
            let writes = (0..n)
                .map(|i| (e.clone(), (i * BLK) as u64, IoBuf::from_slice(&block(4, i))))
                .collect();
            let (res, d) = write_concurrently(writes).await;
            assert!(res.iter().all(Result::is_ok));
            let got = read(&e, 0, n * BLK).await;
            for (i, b) in got.chunks(BLK).enumerate() {
                assert_eq!(b, &block(4, i)[..], "block {i}");
            }
            d
        })
        .unwrap()
    };
    // 2 MiB of adjacent writes under a 1 MiB limit: two vectored writes of 1 MiB.
    let d = run(1 << 20, 512);
    assert_eq!(
        (d.write_sqes, d.vectored_writes, d.merged_writes),
        (2, 2, 512),
        "{d:?}"
    );
    // 256 KiB under a 64 KiB limit: four.
    let d = run(64 << 10, 64);
    assert_eq!(
        (d.write_sqes, d.vectored_writes, d.merged_writes),
        (4, 4, 64),
        "{d:?}"
    );
}

#[test]
fn writes_to_other_places_or_other_devices_are_not_merged() {
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let a = device(dir.path(), "a", 8 << 20);
    let b = device(dir.path(), "b", 8 << 20);
    io::block_on(&cfg(1 << 20), async move {
        // Every other block on each device, interleaved: by offset alone (ignoring the
        // device) they would be back to back.
        let mut writes = Vec::new();
        for k in 0..16 {
            let off = (k * 2 * BLK) as u64;
            writes.push((a.clone(), off, IoBuf::from_slice(&block(5, k))));
            writes.push((b.clone(), off + BLK as u64, IoBuf::from_slice(&block(6, k))));
        }
        let (res, d) = write_concurrently(writes).await;
        assert!(res.iter().all(Result::is_ok));
        assert_eq!(
            (d.writes, d.write_sqes, d.vectored_writes),
            (32, 32, 0),
            "{d:?}"
        );
        for k in 0..16 {
            let off = (k * 2 * BLK) as u64;
            assert_eq!(read(&a, off, BLK).await, block(5, k), "a {k}");
            assert_eq!(read(&b, off + BLK as u64, BLK).await, block(6, k), "b {k}");
        }
        // A run on one device that ends where a run on the other begins: one vectored write
        // each, not one over both.
        let mut writes = Vec::new();
        for k in 0..4 {
            let off = (512 << 10) + (k * BLK) as u64;
            writes.push((a.clone(), off, IoBuf::from_slice(&block(11, k))));
            let off = off + (4 * BLK) as u64;
            writes.push((b.clone(), off, IoBuf::from_slice(&block(12, k))));
        }
        let (res, d) = write_concurrently(writes).await;
        assert!(res.iter().all(Result::is_ok));
        assert_eq!(
            (d.write_sqes, d.vectored_writes, d.merged_writes),
            (2, 2, 8),
            "{d:?}"
        );
        let (ga, gb) = (
            read(&a, 512 << 10, 8 * BLK).await,
            read(&b, 512 << 10, 8 * BLK).await,
        );
        for k in 0..4 {
            assert_eq!(&ga[k * BLK..(k + 1) * BLK], &block(11, k)[..], "a {k}");
            assert!(
                ga[(k + 4) * BLK..(k + 5) * BLK].iter().all(|&x| x == 0),
                "a {}",
                k + 4
            );
            assert!(gb[k * BLK..(k + 1) * BLK].iter().all(|&x| x == 0), "b {k}");
            assert_eq!(
                &gb[(k + 4) * BLK..(k + 5) * BLK],
                &block(12, k)[..],
                "b {}",
                k + 4
            );
        }
        // The same adjacent range on both devices: one vectored write each, each device
        // with its own data.
        let mut writes = Vec::new();
        for k in 0..8 {
            let off = (1 << 20) + (k * BLK) as u64;
            writes.push((a.clone(), off, IoBuf::from_slice(&block(7, k))));
            writes.push((b.clone(), off, IoBuf::from_slice(&block(8, k))));
        }
        let (res, d) = write_concurrently(writes).await;
        assert!(res.iter().all(Result::is_ok));
        assert_eq!(
            (d.write_sqes, d.vectored_writes, d.merged_writes),
            (2, 2, 16),
            "{d:?}"
        );
        let (ga, gb) = (
            read(&a, 1 << 20, 8 * BLK).await,
            read(&b, 1 << 20, 8 * BLK).await,
        );
        for k in 0..8 {
            assert_eq!(&ga[k * BLK..(k + 1) * BLK], &block(7, k)[..], "a {k}");
            assert_eq!(&gb[k * BLK..(k + 1) * BLK], &block(8, k)[..], "b {k}");
        }
    })
    .unwrap();
}

#[test]
fn an_fsync_made_after_writes_is_submitted_after_them() {
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let e = device(dir.path(), "d", 8 << 20);
    io::block_on(&cfg(1 << 20), async move {
        let before = io::ring_stats().unwrap();
        let mut writes: Vec<_> = (0..8)
            .map(|i| e.write_at(IoBuf::from_slice(&block(9, i)), (i * BLK) as u64))
            .collect();
        for w in &mut writes {
            poll_once(w).await;
        }
        let d = io::ring_stats().unwrap().since(&before);
        assert_eq!(
            (d.writes, d.write_sqes),
            (8, 0),
            "made and held for the turn: {d:?}"
        );
        // The fsync is made in the same turn: the writes go to the ring before it, merged.
        let mut flush = e.flush();
        poll_once(&mut flush).await;
        let d = io::ring_stats().unwrap().since(&before);
        assert_eq!(
            (d.write_sqes, d.vectored_writes),
            (1, 1),
            "the writes were pushed before the fsync: {d:?}"
        );
        for w in writes {
            w.await.0.unwrap();
        }
        flush.await.unwrap();
        let got = read(&e, 0, 8 * BLK).await;
        for (i, b) in got.chunks(BLK).enumerate() {
            assert_eq!(b, &block(9, i)[..], "block {i}");
        }
    })
    .unwrap();
}

#[test]
fn a_write_dropped_while_held_for_the_turn_is_never_written() {
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let e = device(dir.path(), "d", 8 << 20);
    io::block_on(&cfg(1 << 20), async move {
        let before = io::ring_stats().unwrap();
        let mut kept = e.write_at(IoBuf::from_slice(&block(10, 0)), 0);
        let mut dropped = e.write_at(IoBuf::from_slice(&block(10, 1)), BLK as u64);
        poll_once(&mut kept).await;
        poll_once(&mut dropped).await;
        drop(dropped);
        kept.await.0.unwrap();
        let d = io::ring_stats().unwrap().since(&before);
        assert_eq!(
            (d.writes, d.write_sqes, d.vectored_writes),
            (2, 1, 0),
            "{d:?}"
        );
        assert_eq!(read(&e, 0, BLK).await, block(10, 0));
        assert!(read(&e, BLK as u64, BLK).await.iter().all(|&x| x == 0));
        assert_eq!(io::reactor_stats().unwrap().1, 0, "no slot is left behind");
    })
    .unwrap();
}

//! FaultyEngine: crash images over a larger workload, from_image/reset_log, EIO and bit flips
//! through the BlockEngine interface.

use ringpool_driver::io::{self, BlockEngine, CrashMode, FaultEvent, FaultyEngine, IoBuf, IoError};

fn cfg() -> io::ReactorConfig {
    io::ReactorConfig {
        arena_bytes: 0,
        ..io::ReactorConfig::default()
    }
}

#[test]
fn crash_images_over_a_workload() {
    const SECTOR: u32 = 4096;
    const SIZE: u64 = 16 << 20;
    let e = FaultyEngine::new(SIZE, SECTOR);
    // Rounds of writes followed by a flush; each write stamps (round, index) in every sector.
    let rounds = 8u8;
    let per_round = 16u64;
    io::block_on(&cfg(), async {
        for r in 0..rounds {
            for i in 0..per_round {
                let sectors = 1 + (i % 4);
                let mut b = IoBuf::zeroed(usize::try_from(sectors).unwrap() * 4096);
                b.fill(r + 1);
                let off = (i * 8 + u64::from(r) * 128) * 4096 % SIZE;
                e.write_at(b, off).await.0.unwrap();
            }
            if r % 2 == 1 {
                e.flush().await.unwrap();
            }
        }
    })
    .unwrap();
    let flushes = e.flush_points();
    assert_eq!(flushes.len(), usize::from(rounds / 2));
    let n = e.event_count();
    let events = e.events();
    // For many crash points and seeds: every write before the last preceding flush is intact;
    // every sector is either entirely from one write or untouched (no sub-sector tearing);
    // within a write, kept sectors form a prefix.
    for at in (0..=n).step_by(11).chain([n]) {
        let last_flush = events[..at].iter().rposition(|e| *e == FaultEvent::Flush);
        for seed in 0..4 {
            let img = e.crash_image(
                at,
                seed,
                CrashMode {
                    drop_unflushed_subset: true,
                    tear_writes: true,
                },
            );
            assert_eq!(img.len() as u64, SIZE);
            for (idx, ev) in events[..at].iter().enumerate() {
                let FaultEvent::Write { offset, data } = ev else {
                    continue;
                };
                let o = usize::try_from(*offset).unwrap();
                let got = &img[o..o + data.len()];
                // Later writes in this window may overwrite the range; only check ranges that no
                // later write (before `at`) touches.
                let overwritten = events[idx + 1..at].iter().any(|l| match l {
                    FaultEvent::Write {
                        offset: lo,
                        data: ld,
                    } => *lo < offset + data.len() as u64 && *offset < lo + ld.len() as u64,
                    _ => false,
                });
                if overwritten {
                    continue;
                }
                let durable = last_flush.is_some_and(|f| idx < f);
                if durable {
                    assert_eq!(got, &data[..], "flushed write lost (at {at}, seed {seed})");
                } else {
                    let kept: Vec<bool> = got
                        .chunks(4096)
                        .zip(data.chunks(4096))
                        .map(|(g, d)| g == d)
                        .collect();
                    let first_missing = kept.iter().position(|k| !k).unwrap_or(kept.len());
                    assert!(kept[first_missing..].iter().all(|k| !k), "not a prefix");
                }
            }
        }
    }
    // Without dropping or tearing, the crash image at the end is the current image.
    assert!(e.crash_image(n, 0, CrashMode::default()) == e.image());
}

#[test]
fn from_image_and_reset_log() {
    let mut img = vec![0u8; 1 << 20];
    img[4096..8192].fill(5);
    let e = FaultyEngine::from_image(img.clone(), 512).with_name("mem0");
    assert_eq!(e.name(), "mem0");
    assert!(e.durable_image() == img);
    io::block_on(&cfg(), async {
        let (r, b) = e.read_at(IoBuf::zeroed(4096), 4096).await;
        r.unwrap();
        assert!(b.iter().all(|&x| x == 5));
        e.write_at(IoBuf::from_slice(&[9u8; 512]), 0)
            .await
            .0
            .unwrap();
        assert_eq!(e.event_count(), 1);
        // Not flushed: a crash may lose it.
        assert_eq!(e.durable_image()[0], 0);
        e.reset_log();
        assert_eq!(e.event_count(), 0);
        assert_eq!(
            e.durable_image()[0],
            9,
            "reset_log makes the current image durable"
        );
        // A clone is the same device.
        let c = e.clone();
        c.write_at(IoBuf::from_slice(&[1u8; 512]), 512)
            .await
            .0
            .unwrap();
        assert_eq!(e.event_count(), 1);
        c.discard(0, 1024).await.unwrap();
        assert!(e.image()[..1024].iter().all(|&x| x == 0));
    })
    .unwrap();
}

#[test]
fn eio_injection_through_the_trait() {
    let e = FaultyEngine::new(1 << 20, 512);
    e.inject_eio(8192..8704, false, true);
    io::block_on(&cfg(), async {
        // 4096..12288 overlaps the rule.
        let (r, _) = e.write_at(IoBuf::from_slice(&[7u8; 8192]), 4096).await;
        match r {
            Err(err @ IoError::Device { .. }) => {
                assert_eq!(err.errno(), libc::EIO);
                assert!(
                    err.to_string().contains("write on faulty at offset 8192"),
                    "{err}"
                );
            }
            other => panic!("expected EIO, got {other:?}"),
        }
        // Reads of the same range are fine (write-only rule); the failed write left no trace.
        let (r, b) = e.read_at(IoBuf::zeroed(8192), 4096).await;
        r.unwrap();
        assert!(b.iter().all(|&x| x == 0));
        assert_eq!(e.event_count(), 0);
        e.clear_faults();
        e.write_at(IoBuf::zeroed(4096), 4096).await.0.unwrap();
        // Bit flips are visible to reads and survive crashes.
        e.flip_bit(4097, 0);
        let (r, b) = e.read_at(IoBuf::zeroed(512), 4096).await;
        r.unwrap();
        assert_eq!(b[1], 1);
        let img = e.crash_image(
            e.event_count(),
            1,
            CrashMode {
                drop_unflushed_subset: true,
                tear_writes: true,
            },
        );
        assert_eq!(img[4097], 1);
    })
    .unwrap();
}

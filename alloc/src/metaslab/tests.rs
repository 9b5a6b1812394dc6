//! Unit tests of the metaslab txg pipeline.

use super::*;

const MS: u64 = 1 << 20;

fn ms() -> Metaslab {
    Metaslab::new(0, 0, MS, MS, 12, MetaslabConfig::default()).unwrap()
}

#[test]
fn alloc_sync_free_defer_cycle() {
    let mut m = ms();
    let a = m.alloc(0x4000, 5).unwrap();
    assert_eq!(a, MS);
    let out = m.sync(5, 0).unwrap();
    assert_eq!(out.sm_records, vec![SmRecord::alloc(MS, 0x4000)]);
    m.sync_done(5).unwrap();
    m.free(a, 0x4000, 5, 6).unwrap();
    assert!(matches!(
        m.free(a, 0x1000, 5, 6),
        Err(AllocError::DoubleFree { .. }) | Ok(())
    ));
    let mut m = ms();
    let a = m.alloc(0x4000, 5).unwrap();
    m.sync(5, 0).unwrap();
    m.sync_done(5).unwrap();
    m.free(a, 0x4000, 5, 6).unwrap();
    let out = m.sync(6, 0).unwrap();
    assert_eq!(out.sm_records, vec![SmRecord::free(a, 0x4000)]);
    m.sync_done(6).unwrap();
    assert_eq!(m.free_space(), MS - 0x4000);
    m.sync(7, 0).unwrap();
    m.sync_done(7).unwrap();
    assert_eq!(m.free_space(), MS - 0x4000);
    m.sync(8, 0).unwrap();
    m.sync_done(8).unwrap();
    assert_eq!(m.free_space(), MS);
    m.verify_quiesced().unwrap();
}

#[test]
fn checkpointed_free_is_held() {
    let mut m = ms();
    let a = m.alloc(0x2000, 5).unwrap();
    m.sync(5, 0).unwrap();
    m.sync_done(5).unwrap();
    // Free issued in open txg 6 before the checkpoint (txg 5) is created at 6's sync.
    m.free(a, 0x2000, 5, 6).unwrap();
    let out = m.sync(6, 5).unwrap();
    assert!(out.sm_records.is_empty());
    assert_eq!(out.ckpt_records, vec![SmRecord::free(a, 0x2000)]);
    assert_eq!(out.ckpt_space, 0x2000);
    for t in 6..12 {
        if t > 6 {
            m.sync(t, 5).unwrap();
        }
        m.sync_done(t).unwrap();
    }
    assert_eq!(m.free_space(), MS - 0x2000);
    m.discard_checkpoint_extent(a, 0x2000).unwrap();
    assert!(m.discard_checkpoint_extent(a, 0x2000).is_err());
    let out = m.sync(12, 0).unwrap();
    assert_eq!(out.sm_records, vec![SmRecord::free(a, 0x2000)]);
    for t in 12..15 {
        if t > 12 {
            m.sync(t, 0).unwrap();
        }
        m.sync_done(t).unwrap();
    }
    assert_eq!(m.free_space(), MS);
}

#[test]
fn free_now_returns_immediately() {
    let mut m = ms();
    let a = m.alloc(0x3000, 9).unwrap();
    m.free_now(a, 0x3000, 9).unwrap();
    assert_eq!(m.free_space(), MS);
    assert!(m.free_now(a, 0x3000, 9).is_err());
    assert!(m.sync(9, 0).unwrap().is_empty());
}

#[test]
fn load_replays() {
    let mut m = ms();
    m.load([
        SmRecord::alloc(MS, 0x10000),
        SmRecord::free(MS + 0x4000, 0x1000),
    ])
    .unwrap();
    assert_eq!(m.free_space(), MS - 0x10000 + 0x1000);
    assert_eq!(m.sm_allocated(), 0x10000 - 0x1000);
    m.verify().unwrap();
    let mut m = ms();
    assert!(m.load([SmRecord::free(MS, 0x1000)]).is_err());
}

#[test]
fn idle_metaslab_drops_and_rebuilds_size_index() {
    let mut m = ms();
    let offs: Vec<u64> = (0..8).map(|_| m.alloc(0x4000, 5).unwrap()).collect();
    m.sync(5, 0).unwrap();
    m.sync_done(5).unwrap();
    assert!(m.is_active_indexed());
    // Free every other block in txg 6; no allocation after txg 5.
    for &o in offs.iter().step_by(2) {
        m.free(o, 0x4000, 5, 6).unwrap();
    }
    for t in 6..10 {
        m.sync(t, 0).unwrap();
        m.sync_done(t).unwrap();
    }
    assert!(!m.is_active_indexed(), "idle for 2 txgs: index dropped");
    m.verify_quiesced().unwrap();
    // The hint stays exact without the index: the untouched tail is the longest segment.
    assert_eq!(m.max_free(), MS - 8 * 0x4000);
    // Freeing the rest makes the whole metaslab one segment: still exact, still no index.
    for &o in offs.iter().skip(1).step_by(2) {
        m.free(o, 0x4000, 5, 10).unwrap();
    }
    for t in 10..13 {
        m.sync(t, 0).unwrap();
        m.sync_done(t).unwrap();
    }
    assert!(!m.is_active_indexed());
    assert_eq!(m.max_free(), MS);
    assert_eq!(m.free_space(), MS);
    let builds = m.index_builds();
    // Allocating rebuilds the index once, and best fit sees every segment again.
    let a = m.alloc(0x4000, 13).unwrap();
    assert!(m.is_active_indexed());
    assert_eq!(m.index_builds(), builds + 1);
    m.alloc(0x4000, 13).unwrap();
    assert_eq!(m.index_builds(), builds + 1);
    assert_eq!(m.max_free(), MS - 0x8000);
    m.free_now(a, 0x4000, 13).unwrap();
    m.verify().unwrap();
}

/// A free overlapping one queued for the same txg (starting before, inside or after it,
/// covering or repeating it) is queued, and the txg's sync refuses one of the two (the later in
/// offset order) and syncs the other; nothing else changes.
#[test]
fn queued_free_overlaps_are_refused_at_sync() {
    let good = (0x4000u64, 0x4000u64);
    for bad in [
        (0x5000u64, 0x1000u64),
        (0x2000, 0x3000),
        (0x7000, 0x2000),
        (0x3000, 0x6000),
        (0x4000, 0x4000),
    ] {
        let mut m = ms();
        let a = m.alloc(0x10000, 5).unwrap();
        m.sync(5, 0).unwrap();
        m.sync_done(5).unwrap();
        m.free(a + good.0, good.1, 5, 6).unwrap();
        m.free(a + bad.0, bad.1, 5, 6).unwrap();
        let (refused, kept) = if bad.0 >= good.0 {
            (bad, good)
        } else {
            (good, bad)
        };
        let err = m.sync(6, 0).unwrap_err();
        if bad.0 == good.0 {
            // Same start: either is the second one.
            assert!(matches!(err, AllocError::DoubleFree { start, .. } if start == a + bad.0));
        } else {
            assert_eq!(
                err,
                AllocError::DoubleFree {
                    start: a + refused.0,
                    len: refused.1
                }
            );
        }
        m.verify().unwrap();
        let out = m.sync(6, 0).unwrap();
        assert_eq!(out.sm_records.len(), 1);
        if bad.0 != good.0 {
            assert_eq!(out.sm_records, vec![SmRecord::free(a + kept.0, kept.1)]);
        }
        m.sync_done(6).unwrap();
        m.verify().unwrap();
    }
}

/// A free of a later txg overlapping one queued for the syncing txg is refused by that sync
/// (one check per call); touching neighbours are accepted, in either txg.
#[test]
fn later_txg_overlapping_a_queued_free_is_refused() {
    let mut m = ms();
    let a = m.alloc(0x10000, 5).unwrap();
    m.sync(5, 0).unwrap();
    m.sync_done(5).unwrap();
    m.free(a + 0x4000, 0x4000, 5, 6).unwrap();
    m.free(a + 0x2000, 0x2000, 5, 6).unwrap();
    m.free(a + 0x8000, 0x1000, 5, 6).unwrap();
    m.free(a + 0x6000, 0x1000, 5, 7).unwrap();
    m.free(a + 0x9000, 0x1000, 5, 7).unwrap();
    assert_eq!(
        m.sync(6, 0).unwrap_err(),
        AllocError::DoubleFree {
            start: a + 0x6000,
            len: 0x1000
        }
    );
    m.verify().unwrap();
    let out = m.sync(6, 0).unwrap();
    assert_eq!(out.sm_records, vec![SmRecord::free(a + 0x2000, 0x7000)]);
    m.sync_done(6).unwrap();
    let out = m.sync(7, 0).unwrap();
    assert_eq!(out.sm_records, vec![SmRecord::free(a + 0x9000, 0x1000)]);
}

/// A metaslab allocated whole in txg 5 whose `holes` (unit, units) are allocatable again.
fn holed(cfg: MetaslabConfig, holes: &[(u64, u64)]) -> Metaslab {
    let mut m = Metaslab::new(0, 0, MS, MS, 12, cfg).unwrap();
    assert_eq!(m.alloc(MS, 5).unwrap(), MS);
    m.sync(5, 0).unwrap();
    m.sync_done(5).unwrap();
    for &(u, n) in holes {
        m.free(MS + (u << 12), n << 12, 5, 6).unwrap();
    }
    for t in 6..9 {
        m.sync(t, 0).unwrap();
        m.sync_done(t).unwrap();
    }
    assert_eq!(m.free_space(), holes.iter().map(|h| h.1 << 12).sum::<u64>());
    m
}

/// Segments below the size floor (16 KiB = 4 units) are not in the by-size index; a request
/// below the floor takes the shortest fitting segment after its cursor instead of splitting
/// the shortest indexed one; a request at the floor takes best fit from the index.
#[test]
fn short_requests_take_short_segments_near_the_cursor() {
    let mut m = holed(
        MetaslabConfig::default(),
        &[(10, 1), (20, 2), (40, 8), (100, 3)],
    );
    assert_eq!(m.max_free(), 8 << 12);
    let unit = |u: u64| MS + (u << 12);
    assert_eq!(m.alloc(0x1000, 9).unwrap(), unit(10));
    assert_eq!(m.alloc(0x2000, 9).unwrap(), unit(20));
    // The 4 KiB cursor is past unit 10: the 3-unit segment at 100 is the shortest after it.
    assert_eq!(m.alloc(0x3000, 9).unwrap(), unit(100));
    assert_eq!(m.alloc(0x4000, 9).unwrap(), unit(40));
    assert_eq!(m.free_space(), 4 << 12);
    m.verify().unwrap();
}

/// With only segments below the floor left (an empty by-size index) and a window too small to
/// reach a fit, a first fit from the cursor (wrapping) finds one; when nothing fits, the
/// largest-free hint is made exact so the group stops sending that size here.
#[test]
fn only_short_segments_left_still_serve_and_report_exactly() {
    let cfg = MetaslabConfig {
        df_max_search_count: 1,
        ..MetaslabConfig::default()
    };
    let mut m = holed(cfg, &[(10, 1), (20, 2), (30, 3)]);
    let unit = |u: u64| MS + (u << 12);
    // The window holds only the 1-unit segment at 10 (wrapping from the cursor at the end).
    assert_eq!(m.alloc(0x3000, 9).unwrap(), unit(30));
    // 1 and 2 units left: the histogram bounds the largest at 3 units.
    assert_eq!(m.max_free(), 0x3000);
    assert_eq!(
        m.alloc(0x3000, 9),
        Err(AllocError::NoSpace { size: 0x3000 })
    );
    assert_eq!(m.max_free(), 0x2000);
    assert_eq!(m.alloc(0x2000, 9).unwrap(), unit(20));
    assert_eq!(m.alloc(0x1000, 9).unwrap(), unit(10));
    assert_eq!(m.free_space(), 0);
    m.verify().unwrap();
}

/// The first fit for a short request that only a short segment can hold wraps around: a fit
/// before the cursor is found once nothing after it fits.
#[test]
fn short_first_fit_wraps_to_before_the_cursor() {
    let cfg = MetaslabConfig {
        df_max_search_count: 1,
        ..MetaslabConfig::default()
    };
    let mut m = holed(cfg, &[(10, 2), (20, 2), (100, 1)]);
    let unit = |u: u64| MS + (u << 12);
    assert_eq!(m.alloc(0x2000, 9).unwrap(), unit(10));
    assert_eq!(m.alloc(0x2000, 9).unwrap(), unit(20));
    // Back before the 8 KiB cursor (now past unit 20); after it only 1 unit at 100.
    m.free_now(unit(10), 0x2000, 9).unwrap();
    assert_eq!(m.alloc(0x2000, 9).unwrap(), unit(10));
    assert_eq!(m.alloc(0x1000, 9).unwrap(), unit(100));
    assert_eq!(m.free_space(), 0);
    m.verify().unwrap();
}

/// A metaslab whose `allocatable` is a bitmap whenever it has a segment (`compact_density`
/// saturating) and one that never is, fed the same random txgs of allocations (short and
/// long, so near fit, best fit and first fit all run), frees (whole and partial, deferred
/// through the pipeline), free-nows and syncs: every allocation, every sync output and every
/// metric is identical, and both verify after each txg. Small enough for debug builds, fragmented
/// enough (hundreds of short segments in 32 MiB, 10 % free) that the bitmap's classes, long runs
/// and block boundaries are all exercised.
#[test]
fn bitmap_representation_allocates_like_the_indexes() {
    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};
    const SIZE: u64 = 32 << 20;
    for seed in 0..4u64 {
        let mk = |density| {
            let cfg = MetaslabConfig {
                compact_density: density,
                compact_min_segments: 1,
                ..MetaslabConfig::default()
            };
            Metaslab::new(0, 0, SIZE, SIZE, 12, cfg).unwrap()
        };
        let (mut tree, mut bits) = (mk(0), mk(u64::MAX));
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut owned: Vec<(u64, u64, u64)> = Vec::new();
        let mut compact_txgs = 0;
        for txg in 5..200u64 {
            for _ in 0..rng.random_range(50..250) {
                // Hover around 10 % free, like the benchmark's fragmented phase.
                let free_pct = (tree.free_space() + tree.deferred_space()) * 100 / SIZE;
                if rng.random_bool(if free_pct > 10 { 0.7 } else { 0.3 }) {
                    // Mostly 4-64 KiB; sometimes 256 KiB to 1 MiB (first fit, long runs).
                    let size = if rng.random_bool(0.05) {
                        rng.random_range(64..=256u64) << 12
                    } else {
                        rng.random_range(1..=16u64) << 12
                    };
                    let (a, b) = (tree.alloc(size, txg), bits.alloc(size, txg));
                    assert_eq!(a, b, "seed {seed} txg {txg} alloc {size}");
                    if let Ok(off) = a {
                        if rng.random_bool(0.02) {
                            tree.free_now(off, size, txg).unwrap();
                            bits.free_now(off, size, txg).unwrap();
                        } else {
                            owned.push((off, size, txg));
                        }
                    }
                } else if !owned.is_empty() {
                    let i = rng.random_range(0..owned.len());
                    let (off, len, birth) = owned.swap_remove(i);
                    if birth == txg {
                        owned.push((off, len, birth));
                        continue;
                    }
                    // A piece of it at a random place: the rest stays owned.
                    let units = len >> 12;
                    let cut = rng.random_range(1..=units.min(16));
                    let at = rng.random_range(0..=units - cut) << 12;
                    let cut = cut << 12;
                    if at > 0 {
                        owned.push((off, at, birth));
                    }
                    if at + cut < len {
                        owned.push((off + at + cut, len - at - cut, birth));
                    }
                    tree.free(off + at, cut, birth, txg).unwrap();
                    bits.free(off + at, cut, birth, txg).unwrap();
                }
            }
            assert_eq!(
                tree.sync(txg, 0),
                bits.sync(txg, 0),
                "seed {seed} txg {txg}"
            );
            tree.sync_done(txg).unwrap();
            bits.sync_done(txg).unwrap();
            compact_txgs += u64::from(bits.allocatable.is_compact());
            assert!(!tree.allocatable.is_compact());
            let probe = |m: &Metaslab| {
                (
                    m.free_space(),
                    m.max_free_exact(),
                    m.max_free() >= m.max_free_exact(),
                    m.reserve_space(),
                    m.fragmentation(),
                    m.weight(),
                    m.allocatable.segment_count(),
                    m.allocatable.iter().collect::<Vec<_>>(),
                )
            };
            assert_eq!(probe(&tree), probe(&bits), "seed {seed} txg {txg}");
            tree.verify_quiesced().unwrap();
            bits.verify_quiesced().unwrap();
        }
        assert!(
            compact_txgs > 100,
            "the bitmap was used ({compact_txgs} txgs)"
        );
        assert!(
            tree.allocatable.segment_count() > 300,
            "fragmented: {} segments",
            tree.allocatable.segment_count()
        );
    }
}

//! The sync reserve, kept in pieces the sync can use.
//!
//! The slop check alone (`free - size >= slop` for ordinary allocations) holds back enough
//! *bytes* for the pool's sync, but not enough *pieces*: the sync writes its tree and
//! space-map blocks in pieces of `MetaslabConfig::reserve_piece` bytes (16 KiB), while random
//! overwrites of a nearly full pool free single data blocks all over it. Left alone, data
//! writes carve up the last long segments, the free space ends as single-block holes, and the
//! next sync finds no piece for its metadata: the pool suspends with "out of space" while a
//! tenth of it is free. OpenZFS escapes with gang blocks (a block written as several smaller
//! ones); our block pointers have no gang form, so the allocator keeps the reserve whole
//! instead.
//!
//! Every metaslab knows the bytes its free segments can hand out in such pieces
//! ([`Metaslab::reserve_space`], from the piece count its free tree keeps). The class sums it like the free-space counter: each shard
//! publishes the change its allocations made in batches of [`RESERVE_BATCH`], and syncs,
//! loads and undos publish theirs at once. An ordinary allocation may shrink that sum only
//! while it stays at least the slop: when it is close ([`max_loss`] returns a limit), each
//! allocation is measured and undone if it cut into the reserve, so data then fills the
//! short holes (which cost the reserve nothing; [`Metaslab::alloc_short`] finds them) or gets
//! `NoSpace`, and sync-context allocations ([`crate::AllocClass::Reserved`]) always find their
//! pieces.

use crate::error::AllocError;
use crate::metaslab::Metaslab;

/// Change of reserve space a shard may accumulate before publishing it. Small, because the
/// check in [`max_loss`] must allow for every other shard's unpublished change.
pub const RESERVE_BATCH: i64 = 256 << 10;

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// How much reserve space an ordinary allocation of `size` bytes may take, or `None` when it
/// cannot matter: `published` is the class's counter, `own` the shard's unpublished change,
/// `shards` the number of shards (each other one may hold up to [`RESERVE_BATCH`] of losses
/// not yet published), `slop` what must stay. One allocation loses at most its size plus a
/// piece (it may cut one segment into two short ones).
pub(crate) fn max_loss(
    published: i64,
    own: i64,
    shards: usize,
    slop: u64,
    size: u64,
    piece: u64,
) -> Option<u64> {
    let others = i64::try_from(shards.saturating_sub(1))
        .unwrap_or(i64::MAX)
        .saturating_mul(RESERVE_BATCH);
    let slack = published
        .saturating_add(own)
        .saturating_sub(others)
        .saturating_sub(to_i64(slop));
    if slack >= to_i64(size.saturating_add(piece)) {
        None
    } else {
        Some(u64::try_from(slack.max(0)).unwrap_or(0))
    }
}

/// The least reserve space an allocation of `size` bytes can cost, whatever segment it takes
/// (`unit`: the allocation unit; 1 when the device is not known yet). In units, with `p` the
/// piece and `s` the size: a segment of `l` holds `floor(l / p)` pieces and what is left of it
/// `floor((l - s) / p)` at most, so it loses at least `floor(s / p)` of them (exactly that when
/// `l mod p >= s mod p`): 0 below a piece.
pub fn min_loss(size: u64, piece: u64, unit: u64) -> u64 {
    let unit = unit.max(1);
    let p = piece.div_ceil(unit);
    if p == 0 {
        return 0;
    }
    let s = size.div_ceil(unit);
    (s / p).saturating_mul(p).saturating_mul(unit)
}

/// Allocate `asize` bytes from `ms` for `txg`: the offset and the change of the metaslab's
/// reserve space. With `max_loss`, an allocation that shrinks the reserve space by more is
/// undone at once (the range goes back to `allocatable`) and reported as `NoSpace`, so the
/// caller tries another metaslab.
pub(crate) fn alloc_within(
    ms: &mut Metaslab,
    asize: u64,
    txg: u64,
    max_loss: Option<u64>,
) -> Result<(u64, i64), AllocError> {
    if max_loss.is_some_and(|max| ms.min_reserve_loss(asize) > max) {
        // It would be undone whatever segment it took: refuse it without taking one (on a
        // pool at its reserve, every request of a piece or more used to be allocated and
        // undone in every metaslab before it ganged).
        return Err(AllocError::NoSpace { size: asize });
    }
    let before = ms.reserve_space();
    if max_loss.is_some() {
        // Close to the reserve: a short hole costs it nothing, so one is used first wherever it
        // is in the metaslab (the ordinary picker may not look at it).
        match ms.alloc_short(asize, txg) {
            Ok(off) => return Ok((off, to_i64(ms.reserve_space()) - to_i64(before))),
            Err(AllocError::NoSpace { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    let off = ms.alloc(asize, txg)?;
    let after = ms.reserve_space();
    if let Some(max) = max_loss {
        if before.saturating_sub(after) > max {
            ms.free_now(off, asize, txg)?;
            return Err(AllocError::NoSpace { size: asize });
        }
    }
    Ok((off, to_i64(after) - to_i64(before)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metaslab::MetaslabConfig;

    #[test]
    fn max_loss_allows_for_other_shards_and_one_allocations_worst_case() {
        let piece = 16 << 10;
        let slop = 16 << 20;
        // Far from the slop: no limit.
        assert_eq!(max_loss(64 << 20, 0, 2, slop, 4096, piece), None);
        // Exactly the slop plus one allocation's worst case plus the other shard's batch.
        let edge = to_i64(slop + 4096 + piece) + RESERVE_BATCH;
        assert_eq!(max_loss(edge, 0, 2, slop, 4096, piece), None);
        assert_eq!(
            max_loss(edge - 1, 0, 2, slop, 4096, piece),
            Some(4096 + piece - 1)
        );
        // The shard's own unpublished losses count.
        assert_eq!(
            max_loss(edge, -1, 2, slop, 4096, piece),
            Some(4096 + piece - 1)
        );
        // Below the slop: nothing may be taken.
        assert_eq!(max_loss(1 << 20, 0, 1, slop, 4096, piece), Some(0));
    }

    #[test]
    fn min_loss_is_zero_below_a_piece_and_whole_pieces_above() {
        let piece = 16 << 10;
        assert_eq!(min_loss(12 << 10, piece, 4096), 0);
        assert_eq!(min_loss(piece, piece, 4096), piece);
        assert_eq!(min_loss(28 << 10, piece, 4096), piece);
        assert_eq!(min_loss(64 << 10, piece, 4096), 64 << 10);
        // Device not known: the bound for the smallest unit.
        assert_eq!(min_loss(60 << 10, piece, 1), 48 << 10);
        // A unit larger than the piece: every unit is a piece.
        assert_eq!(min_loss(128 << 10, piece, 64 << 10), 128 << 10);
        assert_eq!(min_loss(64 << 10, 0, 4096), 0);
    }

    /// The exact count, checked against every segment length and request size a metaslab of
    /// 64 units can have: what an allocation from the start of a segment costs is never below
    /// `min_loss`, and `min_loss` is reached.
    #[test]
    fn min_loss_is_the_least_loss_over_every_segment() {
        let unit = 4096u64;
        let p = 4u64;
        for s in 1..=16u64 {
            let least = (s..=64)
                .map(|l| (l / p - (l - s) / p) * p * unit)
                .min()
                .unwrap();
            assert_eq!(min_loss(s * unit, p * unit, unit), least, "size {s} units");
        }
    }

    #[test]
    fn alloc_within_undoes_an_allocation_that_cuts_into_the_reserve() {
        let unit = 4096u64;
        let cfg = MetaslabConfig {
            reserve_piece: 4 * unit,
            ..MetaslabConfig::default()
        };
        let mut ms = Metaslab::new(0, 0, 0, 64 * unit, 12, cfg).unwrap();
        // Leave one single-unit hole at 0 and a long segment from 8 units on.
        ms.claim(unit, 7 * unit, 1).unwrap();
        let full = ms.reserve_space();
        assert_eq!(full, 56 * unit);
        // A unit from the long segment costs reserve space: refused with no budget, and
        // nothing changed.
        let free = ms.free_space();
        let r = alloc_within(&mut ms, unit, 1, Some(0));
        match r {
            // The picker took the hole: free of charge, allowed.
            Ok((off, delta)) => {
                assert_eq!((off, delta), (0, 0));
                let again = alloc_within(&mut ms, unit, 1, Some(0));
                assert!(
                    matches!(again, Err(AllocError::NoSpace { .. })),
                    "{again:?}"
                );
                assert_eq!(ms.free_space(), free - unit);
            }
            Err(AllocError::NoSpace { .. }) => assert_eq!(ms.free_space(), free),
            Err(e) => panic!("{e}"),
        }
        assert_eq!(ms.reserve_space(), full);
        // A unit of the 56-unit segment costs one of its 14 pieces: refused with a budget of
        // less than a piece, allowed with a piece.
        let r = alloc_within(&mut ms, unit, 1, Some(4 * unit - 1));
        assert!(matches!(r, Err(AllocError::NoSpace { .. })), "{r:?}");
        let (_, delta) = alloc_within(&mut ms, unit, 1, Some(4 * unit)).unwrap();
        assert_eq!(delta, -to_i64(4 * unit));
        // The next three units of what is left of that piece cost nothing.
        for _ in 0..3 {
            let (_, delta) = alloc_within(&mut ms, unit, 1, Some(0)).unwrap();
            assert_eq!(delta, 0);
        }
        ms.verify().unwrap();
    }

    /// A metaslab of 100 segments of exactly one piece (4 units) from the start, then short
    /// holes far past the cursor: more segments than the near-fit window.
    fn long_segments_then_short_holes(unit: u64) -> Metaslab {
        let cfg = MetaslabConfig {
            reserve_piece: 4 * unit,
            size_index_floor: 4 * unit,
            ..MetaslabConfig::default()
        };
        let mut ms = Metaslab::new(0, 0, 0, 1024 * unit, 12, cfg).unwrap();
        // Units 4, 9, 14, ... 499 used: 100 segments of 4 units; then 500..600 used.
        for i in 0..100 {
            ms.claim((5 * i + 4) * unit, unit, 1).unwrap();
        }
        ms.claim(500 * unit, 100 * unit, 1).unwrap();
        // From 600 on: [1 free, 2 used] x 10 (ten 1-unit holes), then the rest used.
        for i in 0..10 {
            ms.claim((600 + 3 * i + 1) * unit, 2 * unit, 1).unwrap();
        }
        ms.claim(630 * unit, (1024 - 630) * unit, 1).unwrap();
        ms
    }

    #[test]
    fn at_the_reserve_short_holes_anywhere_in_the_metaslab_are_used() {
        let unit = 4096u64;
        for compact in [false, true] {
            let mut ms = long_segments_then_short_holes(unit);
            if compact {
                ms.passivate();
            }
            let reserve = ms.reserve_space();
            assert_eq!(reserve, 100 * 4 * unit);
            let free = ms.free_space();
            // No reserve may be lost: the ten short holes serve ten allocations for free.
            let mut got = Vec::new();
            for _ in 0..10 {
                let (off, delta) = alloc_within(&mut ms, unit, 1, Some(0))
                    .unwrap_or_else(|e| panic!("compact {compact}: {e}"));
                assert_eq!(delta, 0, "compact {compact}");
                got.push(off / unit);
            }
            got.sort_unstable();
            let holes: Vec<u64> = (0..10).map(|i| 600 + 3 * i).collect();
            assert_eq!(got, holes, "compact {compact}");
            assert_eq!(ms.reserve_space(), reserve);
            assert_eq!(ms.free_space(), free - 10 * unit);
            // Then only long segments are left: refused, nothing taken.
            let r = alloc_within(&mut ms, unit, 1, Some(0));
            assert!(matches!(r, Err(AllocError::NoSpace { .. })), "{r:?}");
            assert_eq!(ms.free_space(), free - 10 * unit);
            // Without a limit the ordinary picker serves from the long segments (a unit of one
            // costs its piece).
            let (_, delta) = alloc_within(&mut ms, unit, 1, None).unwrap();
            assert_eq!(delta, -to_i64(4 * unit));
            ms.verify().unwrap();
        }
    }

    #[test]
    fn short_holes_are_not_searched_for_requests_of_a_piece_or_without_a_limit() {
        let unit = 4096u64;
        let mut ms = long_segments_then_short_holes(unit);
        // A request of a piece never fits a short hole.
        assert!(matches!(
            ms.alloc_short(4 * unit, 1),
            Err(AllocError::NoSpace { .. })
        ));
        // Two units fit no 1-unit hole (the histogram bucket of 4-8 KiB is empty).
        assert!(matches!(
            ms.alloc_short(2 * unit, 1),
            Err(AllocError::NoSpace { .. })
        ));
        // Far from the reserve the ordinary picker decides (it takes a long segment here).
        let (off, _) = alloc_within(&mut ms, unit, 1, None).unwrap();
        assert!(off < 600 * unit, "{off}");
        ms.verify().unwrap();
    }

    #[test]
    fn a_request_that_must_cut_into_the_reserve_is_refused_without_an_allocation() {
        let unit = 4096u64;
        let cfg = MetaslabConfig {
            reserve_piece: 4 * unit,
            ..MetaslabConfig::default()
        };
        let mut ms = Metaslab::new(0, 0, 0, 64 * unit, 12, cfg).unwrap();
        // Idle: an allocation attempt builds the by-size index again (counted).
        ms.passivate();
        assert_eq!(ms.min_reserve_loss(3 * unit), 0);
        assert_eq!(ms.min_reserve_loss(4 * unit), 4 * unit);
        // Any 8 units cost at least 8 units of reserve: with a budget of 4 the metaslab is not
        // even searched (an allocation would build its by-size index).
        let r = alloc_within(&mut ms, 8 * unit, 1, Some(4 * unit));
        assert!(matches!(r, Err(AllocError::NoSpace { .. })), "{r:?}");
        assert_eq!(ms.index_builds(), 0);
        assert_eq!(ms.free_space(), 64 * unit);
        // With a budget of 8 units it is allocated (the loss is exactly 8: the rest stays long).
        let (_, delta) = alloc_within(&mut ms, 8 * unit, 1, Some(8 * unit)).unwrap();
        assert_eq!(delta, -to_i64(8 * unit));
        ms.verify().unwrap();
    }
}

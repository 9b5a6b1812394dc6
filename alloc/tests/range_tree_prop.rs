//! Differential property test of `RangeTree` against `rangemap::RangeSet` (the oracle).

use proptest::prelude::*;
use rangemap::RangeSet;
use ringpool_alloc::range_tree::SearchLimit;
use ringpool_alloc::{AllocError, RangeTree, WideRangeTree};

const BASE: u64 = 0x10_0000;
const UNITS: u64 = 256;
const SHIFT: u32 = 12;

#[derive(Debug, Clone)]
enum Op {
    Add(u64, u64),
    Remove(u64, u64),
    ClearRange(u64, u64),
    Best(u64, u64),
    First(u64, u64, u64),
    /// Best fit found and taken in one step (`find_best_fit` + `take`).
    TakeBest(u64, u64),
    /// First fit from a cursor found and taken (`find_first_fit` + `take`).
    TakeFirst(u64, u64, u64),
    /// Best fit in a window after a cursor (`find_near_fit`: cursor, len, align, window),
    /// taken.
    TakeNear(u64, u64, u64, usize),
    /// Build (true) or drop (false) the by-size index.
    Index(bool),
    /// Recompute the exact largest-segment hint.
    RefreshLargest,
    /// Set the by-size floor (units; rebuilds a built index).
    Floor(u64),
    /// Switch to the bitmap (true) or back to the offset index (false).
    Compact(bool),
}

fn range(units: u64, max_len: u64) -> impl Strategy<Value = (u64, u64)> {
    (0..units, 1..max_len).prop_map(move |(s, l)| (s, l.min(units - s).max(1)))
}

fn op_in(units: u64, max_len: u64) -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => range(units, max_len).prop_map(|(s, l)| Op::Add(s, l)),
        3 => range(units, max_len).prop_map(|(s, l)| Op::Remove(s, l)),
        1 => range(units, max_len).prop_map(|(s, l)| Op::ClearRange(s, l)),
        1 => (1..20u64, 0..4u32).prop_map(|(l, a)| Op::Best(l, 1 << a)),
        1 => (0..units, 1..20u64, 0..3u32).prop_map(|(c, l, a)| Op::First(c, l, 1 << a)),
        1 => (1..20u64, 0..4u32).prop_map(|(l, a)| Op::TakeBest(l, 1 << a)),
        1 => (0..units, 1..20u64, 0..3u32).prop_map(|(c, l, a)| Op::TakeFirst(c, l, 1 << a)),
        1 => (0..units, 1..8u64, 0..3u32, 0..40usize)
            .prop_map(|(c, l, a, w)| Op::TakeNear(c, l, 1 << a, w)),
        1 => any::<bool>().prop_map(Op::Index),
        1 => Just(Op::RefreshLargest),
        1 => (0..5u64).prop_map(Op::Floor),
        1 => any::<bool>().prop_map(Op::Compact),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    op_in(UNITS, 24)
}

/// Many short ranges over a larger region: hundreds of segments, so the trees' leaves split,
/// merge and rebalance (a leaf holds 128 segments).
fn dense_op() -> impl Strategy<Value = Op> {
    op_in(DENSE_UNITS, 4)
}

const DENSE_UNITS: u64 = 4096;

fn b(u: u64) -> u64 {
    BASE + (u << SHIFT)
}

fn oracle_fits(o: &RangeSet<u64>, start: u64, len: u64) -> bool {
    // the whole range lies inside one oracle range
    o.get(&start).is_some_and(|r| r.end >= start + len)
}

fn check_same<U: ringpool_alloc::SegUnit>(t: &RangeTree<U>, o: &RangeSet<u64>) {
    let ours: Vec<(u64, u64)> = t.iter().collect();
    let theirs: Vec<(u64, u64)> = o.iter().map(|r| (r.start, r.end - r.start)).collect();
    assert_eq!(ours, theirs);
    assert_eq!(t.space(), theirs.iter().map(|x| x.1).sum::<u64>());
    assert_eq!(t.segment_count(), theirs.len());
    t.verify().unwrap();
}

fn run<U: ringpool_alloc::SegUnit>(mut t: RangeTree<U>, ops: Vec<Op>) {
    let mut o: RangeSet<u64> = RangeSet::new();
    for op in ops {
        match op {
            Op::Add(s, l) => {
                let (s, l) = (b(s), l << SHIFT);
                let overlap = o.overlaps(&(s..s + l));
                let r = t.add(s, l);
                if overlap {
                    assert_eq!(r, Err(AllocError::DoubleFree { start: s, len: l }));
                } else {
                    r.unwrap();
                    o.insert(s..s + l);
                }
                assert!(t.overlaps(s, l));
            }
            Op::Remove(s, l) => {
                let (s, l) = (b(s), l << SHIFT);
                let present = oracle_fits(&o, s, l);
                assert_eq!(t.contains(s, l), present);
                let r = t.remove(s, l);
                if present {
                    r.unwrap();
                    o.remove(s..s + l);
                } else {
                    assert_eq!(r, Err(AllocError::DoubleAlloc { start: s, len: l }));
                }
                assert!(!t.overlaps(s, l) || !present);
            }
            Op::ClearRange(s, l) => {
                let (s, l) = (b(s), l << SHIFT);
                t.clear_range(s, l).unwrap();
                o.remove(s..s + l);
                assert!(!t.overlaps(s, l));
            }
            Op::Best(l, a) => {
                let (len, align) = (l << SHIFT, a << SHIFT);
                // oracle: smallest segment (then lowest offset) that fits aligned; with a
                // size floor and the index built, the smallest at or above the floor (none:
                // short segments are left to the offset-order pickers)
                // (a bitmap of an indexed tree answers as its index would)
                let floor = if t.has_size_index() || (t.is_compact() && t.is_indexed()) {
                    t.size_floor()
                } else {
                    0
                };
                let best_of = |min_len: u64| {
                    let mut best: Option<(u64, u64)> = None;
                    for r in o.iter() {
                        let st = r.start.div_ceil(align) * align;
                        let sl = r.end - r.start;
                        if st + len <= r.end && sl >= min_len && best.is_none_or(|(bl, _)| sl < bl)
                        {
                            best = Some((sl, st));
                        }
                    }
                    best
                };
                let best = best_of(floor);
                let got = t.find_best(len, align);
                match (got, best) {
                    (None, None) => {}
                    (Some(g), Some((bl, _))) => {
                        // same segment size class: the chosen segment is a smallest fit
                        let seg = o.get(&g).unwrap();
                        assert!(g % align == 0 && g + len <= seg.end);
                        assert_eq!(seg.end - seg.start, bl);
                    }
                    other => panic!("find_best mismatch {other:?}"),
                }
            }
            Op::TakeBest(l, a) => {
                let (len, align) = (l << SHIFT, a << SHIFT);
                let fit = t.find_best_fit(len, align);
                assert_eq!(fit.map(|f| f.start), t.find_best(len, align));
                if let Some(f) = fit {
                    assert!(oracle_fits(&o, f.start, len) && f.start % align == 0);
                    t.take(f, len).unwrap();
                    o.remove(f.start..f.start + len);
                }
            }
            Op::TakeFirst(c, l, a) => {
                let (cur, len, align) = (b(c), l << SHIFT, a << SHIFT);
                let fit = t.find_first_fit(cur, len, align, SearchLimit::UNBOUNDED);
                if let Some(f) = fit {
                    assert!(oracle_fits(&o, f.start, len) && f.start % align == 0);
                    t.take(f, len).unwrap();
                    o.remove(f.start..f.start + len);
                }
            }
            Op::TakeNear(c, l, a, w) => {
                let (cur, len, align) = (b(c), l << SHIFT, a << SHIFT);
                // oracle: the `w` segments from the one containing the cursor (or the first
                // after it), wrapping; the shortest that fits aligned, the first of those
                let segs: Vec<(u64, u64)> = o.iter().map(|r| (r.start, r.end)).collect();
                let first = segs
                    .iter()
                    .position(|&(_, e)| e > cur)
                    .unwrap_or(segs.len());
                let exp = segs[first..]
                    .iter()
                    .chain(&segs[..first])
                    .take(w)
                    .filter_map(|&(s, e)| {
                        let st = s.div_ceil(align) * align;
                        (st + len <= e).then_some((e - s, st))
                    })
                    .min_by_key(|&(sl, _)| sl)
                    .map(|(_, st)| st);
                let fit = t.find_near_fit(cur, len, align, w);
                assert_eq!(fit.map(|f| f.start), exp);
                if let Some(f) = fit {
                    t.take(f, len).unwrap();
                    o.remove(f.start..f.start + len);
                }
            }
            Op::Index(true) => {
                t.build_size_index();
                // A bitmap needs no index: its summaries give best fit.
                assert_eq!(t.has_size_index(), t.is_indexed() && !t.is_compact());
            }
            Op::Index(false) => {
                t.drop_size_index();
                assert!(!t.has_size_index());
            }
            Op::Floor(f) => {
                let built = t.has_size_index();
                t.set_size_floor(f << SHIFT);
                assert_eq!(t.size_floor(), f << SHIFT);
                // Large-segment counting set on a filled tree too (checked by `verify`).
                t.set_large_min(f << SHIFT);
                assert_eq!(t.has_size_index(), built);
            }
            Op::Compact(true) => {
                let before: Vec<(u64, u64)> = t.iter().collect();
                t.compact();
                assert!(t.is_compact());
                assert!(!t.has_size_index());
                assert_eq!(t.iter().collect::<Vec<_>>(), before);
            }
            Op::Compact(false) => {
                t.expand();
                assert!(!t.is_compact());
            }
            Op::RefreshLargest => {
                t.refresh_largest();
                let largest = o.iter().map(|r| r.end - r.start).max().unwrap_or(0);
                assert_eq!(t.largest_bound(), largest);
            }
            Op::First(c, l, a) => {
                let (cur, len, align) = (b(c), l << SHIFT, a << SHIFT);
                // oracle: first segment (in offset order) containing or after the cursor
                let exp = o.iter().filter(|r| r.end > cur).find_map(|r| {
                    let st = r.start.div_ceil(align) * align;
                    (st + len <= r.end).then_some(st)
                });
                assert_eq!(
                    t.find_first_from(cur, len, align, SearchLimit::UNBOUNDED),
                    exp
                );
            }
        }
        check_same(&t, &o);
        assert!(t.largest_bound() >= t.largest());
    }
    let largest = o.iter().map(|r| r.end - r.start).max().unwrap_or(0);
    assert_eq!(t.largest(), largest);
    // Batched overlap probes agree with the oracle, in both orders.
    let units = (t.region_end() - BASE) >> SHIFT;
    let mut probes: Vec<(u64, u64)> = (0..units)
        .step_by(3)
        .map(|u| (b(u), (2u64.min(units - u)) << SHIFT))
        .collect();
    for _ in 0..2 {
        let want = probes.iter().position(|&(s, l)| o.overlaps(&(s..s + l)));
        assert_eq!(t.first_overlap(&probes), want);
        probes.reverse();
    }
    // The ordered walk agrees for sorted disjoint probes, and falls back for unsorted ones.
    let want = probes.iter().position(|&(s, l)| o.overlaps(&(s..s + l)));
    assert_eq!(t.first_overlap_sorted(&probes), want);
    probes.reverse();
    assert_eq!(t.first_overlap_sorted(&probes), t.first_overlap(&probes));
    let mut seen = Vec::new();
    t.vacate(|s, l| seen.push((s, l)));
    assert_eq!(seen.len(), o.iter().count());
    assert!(t.is_empty() && t.space() == 0);
    t.verify().unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn indexed_u32_matches_rangemap(ops in prop::collection::vec(op(), 1..200)) {
        run(RangeTree::<u32>::new(BASE, UNITS << SHIFT, SHIFT).unwrap(), ops);
    }

    #[test]
    fn unindexed_u32_matches_rangemap(ops in prop::collection::vec(op(), 1..200)) {
        run(RangeTree::<u32>::with_index(BASE, UNITS << SHIFT, SHIFT, false).unwrap(), ops);
    }

    #[test]
    fn wide_matches_rangemap(ops in prop::collection::vec(op(), 1..200)) {
        run(WideRangeTree::new(BASE, UNITS << SHIFT, SHIFT).unwrap(), ops);
    }

    /// Segments below a size floor stay out of the by-size index (checked by `verify` after
    /// every op); best fit of short requests and the near fit still agree with the oracle.
    #[test]
    fn floored_u32_matches_rangemap(
        ops in prop::collection::vec(op(), 1..200),
        floor in 2..6u64,
    ) {
        run(floored(RangeTree::<u32>::new(BASE, UNITS << SHIFT, SHIFT).unwrap(), floor), ops);
    }

    #[test]
    fn floored_wide_matches_rangemap(
        ops in prop::collection::vec(op(), 1..200),
        floor in 2..6u64,
    ) {
        run(floored(WideRangeTree::new(BASE, UNITS << SHIFT, SHIFT).unwrap(), floor), ops);
    }
}

/// `t` with a by-size floor of `units` (set on the empty tree or, below, on a filled one).
fn floored<U: ringpool_alloc::SegUnit>(mut t: RangeTree<U>, units: u64) -> RangeTree<U> {
    t.set_size_floor(units << SHIFT);
    assert_eq!(t.size_floor(), units << SHIFT);
    // Count segments of 3 units and more: `verify` checks the counts after every step.
    t.set_large_min(3 << SHIFT);
    t
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn dense_indexed_u32_matches_rangemap(ops in prop::collection::vec(dense_op(), 1..2500)) {
        run(RangeTree::<u32>::new(BASE, DENSE_UNITS << SHIFT, SHIFT).unwrap(), ops);
    }

    #[test]
    fn dense_wide_matches_rangemap(ops in prop::collection::vec(dense_op(), 1..2500)) {
        run(WideRangeTree::new(BASE, DENSE_UNITS << SHIFT, SHIFT).unwrap(), ops);
    }

    #[test]
    fn dense_floored_u32_matches_rangemap(
        ops in prop::collection::vec(dense_op(), 1..2500),
        floor in 2..5u64,
    ) {
        run(floored(RangeTree::<u32>::new(BASE, DENSE_UNITS << SHIFT, SHIFT).unwrap(), floor), ops);
    }
}

/// Operations of the bitmap-versus-indexes differential test.
#[derive(Debug, Clone)]
enum Pick {
    Add(u64, u64),
    Remove(u64, u64),
    /// Best fit of `len` units, taken.
    Best(u64),
    /// Near fit (cursor, len, window), taken.
    Near(u64, u64, usize),
    /// First fit (cursor, len, min_count, max_bytes in units, max_count), taken.
    First(u64, u64, usize, u64, usize),
    /// Expand the bitmap and build the index, then compact again.
    Roundtrip,
}

/// A span that is not a multiple of a word or a block, so the last ones are partial.
const PICK_UNITS: u64 = 3001;

fn pick_op() -> impl Strategy<Value = Pick> {
    prop_oneof![
        6 => (range(PICK_UNITS, 6), 0..10u64)
            .prop_map(|((s, l), long)| Pick::Add(s, if long == 0 { l * 30 } else { l })),
        3 => range(PICK_UNITS, 6).prop_map(|(s, l)| Pick::Remove(s, l)),
        3 => (1..80u64).prop_map(Pick::Best),
        2 => (0..PICK_UNITS + 8, 1..6u64, 0..70usize).prop_map(|(c, l, w)| Pick::Near(c, l, w)),
        2 => (0..PICK_UNITS + 8, 1..90u64, 0..20usize, 0..400u64, 1..100usize)
            .prop_map(|(c, l, n, b, m)| Pick::First(c, l, n, b, m)),
        1 => Just(Pick::Roundtrip),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// A tree kept as a bitmap (`compact`) and the same tree with its indexes built, given the
    /// same adds, removes and picks (best fit at and below the size floor, near fit, bounded
    /// first fit) and, now and then, a round trip back to the indexes: every result and every
    /// fit is the same, and so are the segments, histogram, large-segment counts, largest and
    /// largest bound; both verify after each step.
    #[test]
    fn bitmap_picks_like_the_indexes(
        floor in 0..6u64,
        ops in prop::collection::vec(pick_op(), 1..1500),
    ) {
        let mk = || {
            let mut t: RangeTree = RangeTree::new(BASE, PICK_UNITS << SHIFT, SHIFT).unwrap();
            t.set_size_floor(floor << SHIFT);
            t.set_large_min(4 << SHIFT);
            t.add(BASE, PICK_UNITS << SHIFT).unwrap();
            t
        };
        let (mut ix, mut bm) = (mk(), mk());
        bm.compact();
        prop_assert!(bm.is_compact() && ix.has_size_index());
        let unit = 1u64 << SHIFT;
        for op in ops {
            match op {
                Pick::Add(s, l) => {
                    let (s, l) = (b(s), (l.min(PICK_UNITS - s)) << SHIFT);
                    prop_assert_eq!(ix.add(s, l), bm.add(s, l));
                }
                Pick::Remove(s, l) => {
                    let (s, l) = (b(s), l << SHIFT);
                    prop_assert_eq!(ix.remove(s, l), bm.remove(s, l));
                }
                Pick::Best(l) => {
                    let len = l << SHIFT;
                    let (f, g) = (ix.find_best_fit(len, unit), bm.find_best_fit(len, unit));
                    prop_assert_eq!(f.map(|f| f.start), g.map(|g| g.start));
                    if let (Some(f), Some(g)) = (f, g) {
                        ix.take(f, len).unwrap();
                        bm.take(g, len).unwrap();
                    }
                }
                Pick::Near(c, l, w) => {
                    let (cur, len) = (b(c), l << SHIFT);
                    let f = ix.find_near_fit(cur, len, unit, w);
                    let g = bm.find_near_fit(cur, len, unit, w);
                    prop_assert_eq!(f.map(|f| f.start), g.map(|g| g.start));
                    if let (Some(f), Some(g)) = (f, g) {
                        ix.take(f, len).unwrap();
                        bm.take(g, len).unwrap();
                    }
                }
                Pick::First(c, l, n, bytes, m) => {
                    let (cur, len) = (b(c), l << SHIFT);
                    let limit = SearchLimit { min_count: n, max_bytes: bytes << SHIFT, max_count: m };
                    let f = ix.find_first_fit(cur, len, unit, limit);
                    let g = bm.find_first_fit(cur, len, unit, limit);
                    prop_assert_eq!(f.map(|f| f.start), g.map(|g| g.start));
                    if let (Some(f), Some(g)) = (f, g) {
                        ix.take(f, len).unwrap();
                        bm.take(g, len).unwrap();
                    }
                }
                Pick::Roundtrip => {
                    bm.expand();
                    bm.build_size_index();
                    bm.verify().unwrap();
                    bm.compact();
                }
            }
            prop_assert!(bm.is_compact());
            prop_assert_eq!(ix.iter().collect::<Vec<_>>(), bm.iter().collect::<Vec<_>>());
            prop_assert_eq!(ix.histogram(), bm.histogram());
            prop_assert_eq!(ix.large_segments(), bm.large_segments());
            prop_assert_eq!(ix.segment_count(), bm.segment_count());
            prop_assert_eq!(ix.space(), bm.space());
            prop_assert_eq!(ix.largest(), bm.largest());
            prop_assert!(bm.largest_bound() >= bm.largest());
            ix.verify().unwrap();
            bm.verify().unwrap();
        }
        bm.refresh_largest();
        prop_assert_eq!(bm.largest_bound(), ix.largest_bound());
    }
}

#[test]
fn span_limits_and_move() {
    assert!(RangeTree::<u32>::new(0, 1 << 45, 12).is_err());
    assert!(WideRangeTree::new(0, 1 << 45, 12).is_ok());
    let mut a = RangeTree::<u32>::with_index(0, 1 << 20, 12, false).unwrap();
    let mut b = RangeTree::<u32>::new(0, 1 << 20, 12).unwrap();
    a.add(0x1000, 0x1000).unwrap();
    a.add(0x3000, 0x1000).unwrap();
    b.add(0x2000, 0x1000).unwrap();
    a.move_into(&mut b).unwrap();
    assert!(a.is_empty());
    assert_eq!(b.iter().collect::<Vec<_>>(), vec![(0x1000, 0x3000)]);
    b.verify().unwrap();
    let mut c = RangeTree::<u32>::with_index(0, 1 << 20, 12, false).unwrap();
    c.add(0x2000, 0x1000).unwrap();
    assert!(matches!(
        c.move_into(&mut b),
        Err(AllocError::DoubleFree { .. })
    ));
    assert_eq!(c.space(), 0x1000);
}

/// Build a tree from possibly overlapping ranges (later ones that overlap are skipped), with
/// the oracle of what it holds.
fn build(
    ranges: &[(u64, u64)],
    indexed: bool,
    drop_index: bool,
    floor: u64,
) -> (RangeTree<u32>, RangeSet<u64>) {
    let mut t = RangeTree::<u32>::with_index(BASE, DENSE_UNITS << SHIFT, SHIFT, indexed).unwrap();
    t.set_size_floor(floor << SHIFT);
    t.set_large_min((floor + 2) << SHIFT);
    if drop_index {
        t.drop_size_index();
    }
    let mut o = RangeSet::new();
    for &(s, l) in ranges {
        let (s, l) = (b(s), l << SHIFT);
        if t.add(s, l).is_ok() {
            o.insert(s..s + l);
        }
    }
    (t, o)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    /// `move_into` of a non-empty source into a non-empty destination, through the bulk merge
    /// (source at least 1/8 of the destination) and the per-segment path (tiny source): the
    /// union when disjoint, `DoubleFree` and conserved space when not.
    #[test]
    fn move_into_merges_like_union(
        dst in prop::collection::vec(range(DENSE_UNITS, 6), 0..300),
        src in prop::collection::vec(range(DENSE_UNITS, 6), 0..120),
        drop_index in any::<bool>(),
        floor in 0..5u64,
    ) {
        let (mut d, od) = build(&dst, true, drop_index, floor);
        let (mut s, os) = build(&src, false, false, 0);
        let overlap = os.iter().any(|r| od.overlaps(r));
        let before = d.space() + s.space();
        let r = s.move_into(&mut d);
        d.verify().unwrap();
        s.verify().unwrap();
        if overlap {
            let refused = matches!(r, Err(AllocError::DoubleFree { .. }));
            prop_assert!(refused);
            prop_assert_eq!(d.space() + s.space(), before);
        } else {
            r.unwrap();
            let mut u = od.clone();
            for r in os.iter() {
                u.insert(r.clone());
            }
            check_same(&d, &u);
            prop_assert!(s.is_empty());
            let largest = u.iter().map(|r| r.end - r.start).max().unwrap_or(0);
            prop_assert_eq!(d.largest(), largest);
            // Adds keep the largest-segment hint exact without the index.
            prop_assert_eq!(d.largest_bound(), largest);
        }
    }
}

/// A fit is taken only while it still describes the tree: after the segment it came from
/// changed, `take` refuses like `remove` (`DoubleAlloc`, tree unchanged).
#[test]
fn stale_fit_is_refused() {
    let mut t = RangeTree::<u32>::new(BASE, UNITS << SHIFT, SHIFT).unwrap();
    t.add(b(10), 8 << SHIFT).unwrap();
    t.add(b(40), 2 << SHIFT).unwrap();
    let fit = t.find_best_fit(2 << SHIFT, 1 << SHIFT).unwrap();
    assert_eq!(fit.start, b(40));
    t.remove(b(40), 2 << SHIFT).unwrap();
    let before: Vec<_> = t.iter().collect();
    assert_eq!(
        t.take(fit, 2 << SHIFT),
        Err(AllocError::DoubleAlloc {
            start: b(40),
            len: 2 << SHIFT
        })
    );
    assert_eq!(t.iter().collect::<Vec<_>>(), before);
    t.verify().unwrap();
    // A fit of another length than found is checked against the tree as well.
    let fit = t.find_best_fit(1 << SHIFT, 1 << SHIFT).unwrap();
    assert!(t.take(fit, 9 << SHIFT).is_err());
    t.take(fit, 8 << SHIFT).unwrap();
    assert!(t.is_empty());
    t.verify().unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    /// `fill_sorted` builds the same tree (segments, indexes, histogram, largest) as adding the
    /// ranges one by one, for sorted disjoint input with touching runs (the one-pass build)
    /// and for anything else (the fallback, errors included), into empty and non-empty trees.
    #[test]
    fn fill_sorted_equals_adds(
        ranges in prop::collection::vec(range(DENSE_UNITS, 6), 0..300),
        sort in any::<bool>(),
        indexed in any::<bool>(),
        prefill in any::<bool>(),
        floor in 0..4u64,
    ) {
        let mut segs: Vec<(u64, u64)> = ranges.iter().map(|&(s, l)| (b(s), l << SHIFT)).collect();
        if sort {
            segs.sort_unstable();
            let mut end = 0;
            segs.retain(|&(s, l)| {
                let keep = s >= end;
                if keep {
                    end = s + l;
                }
                keep
            });
        }
        let new = || {
            RangeTree::<u32>::with_index(BASE, DENSE_UNITS << SHIFT, SHIFT, indexed)
                .map(|t| floored(t, floor))
        };
        let (mut a, mut f) = (new().unwrap(), new().unwrap());
        if prefill {
            a.add(b(DENSE_UNITS - 2), 2 << SHIFT).unwrap();
            f.add(b(DENSE_UNITS - 2), 2 << SHIFT).unwrap();
        }
        let mut want = Ok(());
        for &(s, l) in &segs {
            if let Err(e) = a.add(s, l) {
                want = Err(e);
                break;
            }
        }
        prop_assert_eq!(f.fill_sorted(&segs), want);
        f.verify().unwrap();
        prop_assert_eq!(f.iter().collect::<Vec<_>>(), a.iter().collect::<Vec<_>>());
        prop_assert_eq!(f.histogram(), a.histogram());
        prop_assert_eq!(f.largest_bound(), a.largest_bound());
    }
}

/// The large-segment counts follow a bulk merge in which segments of both trees join (the
/// destination's large segment grows, a short one of the source becomes part of it), the
/// per-segment path, and removals that cut a large segment into short ones.
#[test]
fn large_segment_counts_follow_merges_and_cuts() {
    let unit = 1u64 << 12;
    let mut d = RangeTree::<u32>::new(0, 1 << 20, 12).unwrap();
    d.set_large_min(2 * unit);
    d.add(10 * unit, 4 * unit).unwrap();
    d.add(40 * unit, unit).unwrap();
    assert_eq!(d.large_segments(), (1, 4 * unit));
    // Bulk merge: the source is more than an eighth of the destination.
    let mut s = RangeTree::<u32>::with_index(0, 1 << 20, 12, false).unwrap();
    s.add(8 * unit, 2 * unit).unwrap();
    s.add(14 * unit, unit).unwrap();
    s.add(41 * unit, unit).unwrap();
    s.move_into(&mut d).unwrap();
    d.verify().unwrap();
    assert_eq!(d.large_segments(), (2, 9 * unit));
    // Cut the 7-unit segment into 1 + 1 + 5 units: one large segment of 5 left.
    d.remove(9 * unit, unit).unwrap();
    d.verify().unwrap();
    assert_eq!(d.large_segments(), (2, 7 * unit));
    d.remove(14 * unit, unit).unwrap();
    assert_eq!(d.large_segments(), (2, 6 * unit));
    d.verify().unwrap();
    // Per-segment path: a tiny source joining the 1-unit and 4-unit segments at 8 and 10.
    for i in 0..64 {
        d.add((100 + 2 * i) * unit, unit).unwrap();
    }
    let mut s = RangeTree::<u32>::with_index(0, 1 << 20, 12, false).unwrap();
    s.add(9 * unit, unit).unwrap();
    s.move_into(&mut d).unwrap();
    d.verify().unwrap();
    assert_eq!(d.large_segments(), (2, 8 * unit));
}

//! Property tests of [`BlockMap`] against `BTreeMap`, and its edge cases.

use super::*;
use proptest::prelude::*;
use std::collections::BTreeMap;

#[derive(Debug, Clone)]
enum Op {
    Insert(u16, u8),
    /// Insert as a range `[k, k + 5)` unless it overlaps a neighbour's range.
    InsertRange(u16, u8),
    /// Insert a missing key through `insert_after(pred_lt(k))`.
    InsertAfter(u16, u8),
    Remove(u16),
    /// `insert_hinted` with a leaf hint that may be right, wrong or out of range.
    InsertHinted(u16, u8, usize),
    RemoveHinted(u16, usize),
    SetVal(u16, u8),
    Pred(u16),
    PredLt(u16),
    Succ(u16),
    Walk(u16),
}

/// A leaf hint: the right leaf (from `prefetch_hint`, marked by `usize::MAX - 1`), a small
/// index (often wrong), or one past any leaf.
fn hint() -> impl Strategy<Value = usize> {
    prop_oneof![Just(usize::MAX - 1), 0..120usize, Just(usize::MAX)]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (0..400u16, any::<u8>()).prop_map(|(k, v)| Op::Insert(k, v)),
        2 => (0..400u16, any::<u8>()).prop_map(|(k, v)| Op::InsertRange(k, v)),
        2 => (0..400u16, any::<u8>()).prop_map(|(k, v)| Op::InsertAfter(k, v)),
        4 => (0..400u16).prop_map(Op::Remove),
        2 => (0..400u16, any::<u8>(), hint()).prop_map(|(k, v, h)| Op::InsertHinted(k, v, h)),
        2 => (0..400u16, hint()).prop_map(|(k, h)| Op::RemoveHinted(k, h)),
        1 => (0..400u16, any::<u8>()).prop_map(|(k, v)| Op::SetVal(k, v)),
        1 => (0..420u16).prop_map(Op::Pred),
        1 => (0..420u16).prop_map(Op::PredLt),
        1 => (0..420u16).prop_map(Op::Succ),
        1 => (0..420u16).prop_map(Op::Walk),
    ]
}

fn run<const CAP: usize>(ops: &[Op]) {
    let mut m: BlockMap<u16, u8, CAP> = BlockMap::new();
    let mut o: BTreeMap<u16, u8> = BTreeMap::new();
    for op in ops {
        match *op {
            Op::Insert(k, v) => assert_eq!(m.insert(k, v), o.insert(k, v)),
            Op::InsertAfter(k, v) => {
                if let std::collections::btree_map::Entry::Vacant(slot) = o.entry(k) {
                    let p = m.pred_lt(k);
                    m.insert_after(p, k, v);
                    slot.insert(v);
                }
            }
            Op::InsertRange(k, v) => {
                // Every key stands for [key, key + 5): refused when the range overlaps the
                // one before or the one after (what the oracle's neighbours say).
                let done = m.insert_unless(k, v, |p, n| {
                    p.is_some_and(|(pk, _)| pk + 5 > k) || n.is_some_and(|(nk, _)| nk < k + 5)
                });
                let neighbours = o.range(..k).next_back().is_some_and(|(pk, _)| pk + 5 > k)
                    || o.range(k..).next().is_some_and(|(nk, _)| *nk < k + 5);
                assert_eq!(done, !neighbours);
                if done {
                    o.insert(k, v);
                }
            }
            Op::Remove(k) => assert_eq!(m.remove(k), o.remove(&k)),
            Op::InsertHinted(k, v, h) => {
                let h = if h == usize::MAX - 1 {
                    m.prefetch_hint(k)
                } else {
                    h
                };
                assert_eq!(m.insert_hinted(k, v, h), o.insert(k, v));
            }
            Op::RemoveHinted(k, h) => {
                let h = if h == usize::MAX - 1 {
                    m.prefetch_hint(k)
                } else {
                    h
                };
                assert_eq!(m.remove_hinted(k, h), o.remove(&k));
            }
            Op::SetVal(k, v) => {
                if let Some(p) = m.find(k) {
                    m.set_val(p, v);
                    o.insert(k, v);
                } else {
                    assert!(!o.contains_key(&k));
                }
            }
            Op::Pred(k) => assert_eq!(
                m.pred(k).map(|p| m.get(p)),
                o.range(..=k).next_back().map(|(a, b)| (*a, *b))
            ),
            Op::PredLt(k) => {
                let want = o.range(..k).next_back().map(|(a, b)| (*a, *b));
                assert_eq!(m.pred_lt(k).map(|p| m.get(p)), want);
                // The lockstep batch agrees for a batch of nearby keys (9 > one lane group).
                let keys: Vec<u16> = (0..9u16).map(|d| k.saturating_add(d * 37)).collect();
                let mut out = Vec::new();
                m.pred_lt_many(&keys, &mut out);
                for (&kk, got) in keys.iter().zip(&out) {
                    assert_eq!(
                        got.map(|p| m.get(p)),
                        o.range(..kk).next_back().map(|(a, b)| (*a, *b))
                    );
                }
            }
            Op::Succ(k) => {
                let got = m.succ(k);
                assert_eq!(
                    got.map(|p| m.get(p)),
                    o.range(k..).next().map(|(a, b)| (*a, *b))
                );
                // Stepping forward and back from the successor matches the oracle.
                if let Some(p) = got {
                    assert_eq!(
                        m.next(p).map(|q| m.get(q)),
                        o.range(k..).nth(1).map(|(a, b)| (*a, *b))
                    );
                    assert_eq!(
                        m.prev(p).map(|q| m.get(q)),
                        o.range(..k).next_back().map(|(a, b)| (*a, *b))
                    );
                }
            }
            Op::Walk(k) => {
                let a: Vec<_> = m.iter_from(k).collect();
                let b: Vec<_> = o.range(k..).map(|(a, b)| (*a, *b)).collect();
                assert_eq!(a, b);
            }
        }
        m.check().unwrap();
        assert_eq!(m.len(), o.len());
        assert_eq!(m.first(), o.first_key_value().map(|(a, b)| (*a, *b)));
        assert_eq!(m.last(), o.last_key_value().map(|(a, b)| (*a, *b)));
    }
    let all: Vec<_> = m.iter().collect();
    let want: Vec<_> = o.iter().map(|(a, b)| (*a, *b)).collect();
    assert_eq!(all, want);
    assert_eq!(m.drain_all().collect::<Vec<_>>(), want);
    assert!(m.is_empty());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    #[test]
    fn matches_btreemap_small_leaves(ops in proptest::collection::vec(op(), 1..600)) {
        run::<4>(&ops);
        run::<8>(&ops);
        // Leaves of several search groups (GROUP = 16): both rounds of `leaf_partition`.
        run::<64>(&ops);
    }

    /// The searches agree with `partition_point` for every length (several groups, the
    /// directory's binary steps) and every threshold, including none and all.
    #[test]
    fn searches_match_partition_point(
        mut keys in proptest::collection::vec(0..2000u32, 0..300),
        t in 0..2001u32,
    ) {
        keys.sort_unstable();
        keys.dedup();
        let leaf: Vec<(u32, u8)> = keys.iter().map(|&k| (k, 0)).collect();
        prop_assert_eq!(leaf_partition(&leaf, |k| k < t), keys.partition_point(|&k| k < t));
        prop_assert_eq!(leaf_partition(&leaf, |k| k <= t), keys.partition_point(|&k| k <= t));
        prop_assert_eq!(dir_partition(&keys, |k| k < t), keys.partition_point(|&k| k < t));
        prop_assert_eq!(dir_partition(&keys, |k| k <= t), keys.partition_point(|&k| k <= t));
    }
}

#[test]
fn from_sorted_builds_and_refuses_unsorted() {
    let v: Vec<(u32, ())> = (0..1000).map(|k| (k * 3, ())).collect();
    let mut m: BlockMap<u32, (), 8> = BlockMap::from_sorted(&v).unwrap();
    m.check().unwrap();
    assert_eq!(m.len(), 1000);
    assert_eq!(m.iter().collect::<Vec<_>>(), v);
    m.insert(4, ());
    m.remove(0);
    m.check().unwrap();
    assert!(BlockMap::<u32, (), 8>::from_sorted(&[(2, ()), (1, ())]).is_none());
    assert!(BlockMap::<u32, (), 8>::from_sorted(&[]).unwrap().is_empty());
}

#[test]
fn set_key_moves_directory() {
    let mut m: BlockMap<u32, u32, 4> = BlockMap::new();
    for k in (0..40).map(|i| i * 10) {
        m.insert(k, k);
    }
    let p = m.find(40).unwrap();
    m.set_key(p, 35);
    m.check().unwrap();
    assert_eq!(m.pred(39).map(|p| m.get(p)), Some((35, 40)));
    // Sequential fill then drain from the front keeps leaves at least a quarter full.
    for k in (0..40).map(|i| i * 10).filter(|&k| k != 40) {
        m.remove(k);
        m.check().unwrap();
    }
    assert_eq!(m.len(), 1);
}

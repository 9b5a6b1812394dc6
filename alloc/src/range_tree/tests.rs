use super::*;

fn tree() -> RangeTree {
    RangeTree::new(0x1000, 0x100_0000, 12).unwrap()
}

#[test]
fn add_merges_both_sides() {
    let mut t = tree();
    t.add(0x1000, 0x1000).unwrap();
    t.add(0x3000, 0x1000).unwrap();
    assert_eq!(t.segment_count(), 2);
    t.add(0x2000, 0x1000).unwrap();
    assert_eq!(t.iter().collect::<Vec<_>>(), vec![(0x1000, 0x3000)]);
    assert_eq!(t.largest(), 0x3000);
    t.verify().unwrap();
}

#[test]
fn overlap_and_missing_are_errors() {
    let mut t = tree();
    t.add(0x4000, 0x4000).unwrap();
    assert!(matches!(
        t.add(0x7000, 0x2000),
        Err(AllocError::DoubleFree { .. })
    ));
    assert!(matches!(
        t.add(0x2000, 0x3000),
        Err(AllocError::DoubleFree { .. })
    ));
    assert!(matches!(
        t.remove(0x7000, 0x2000),
        Err(AllocError::DoubleAlloc { .. })
    ));
    assert!(matches!(
        t.remove(0x2000, 0x1000),
        Err(AllocError::DoubleAlloc { .. })
    ));
    assert!(matches!(
        t.add(0x1800, 0x1000),
        Err(AllocError::Misaligned { .. })
    ));
    assert!(matches!(
        t.add(0x0, 0x1000),
        Err(AllocError::OutOfRange { .. })
    ));
    assert_eq!(t.space(), 0x4000);
    t.verify().unwrap();
}

#[test]
fn remove_splits() {
    let mut t = tree();
    t.add(0x1000, 0x10000).unwrap();
    t.remove(0x5000, 0x2000).unwrap();
    assert_eq!(
        t.iter().collect::<Vec<_>>(),
        vec![(0x1000, 0x4000), (0x7000, 0xa000)]
    );
    t.verify().unwrap();
}

#[test]
fn pickers() {
    let mut t = tree();
    t.add(0x1000, 0x2000).unwrap();
    t.add(0x10000, 0x8000).unwrap();
    t.add(0x40000, 0x3000).unwrap();
    assert_eq!(t.find_best(0x3000, 0x1000), Some(0x40000));
    assert_eq!(t.find_best(0x2000, 0x1000), Some(0x1000));
    assert_eq!(t.find_best(0x2000, 0x8000), Some(0x40000));
    assert_eq!(t.find_best(0x4000, 0x8000), Some(0x10000));
    assert_eq!(t.find_best(0x9000, 0x1000), None);
    assert_eq!(
        t.find_first_from(0x2000, 0x1000, 0x1000, SearchLimit::UNBOUNDED),
        Some(0x1000)
    );
    assert_eq!(
        t.find_first_from(0x3000, 0x1000, 0x1000, SearchLimit::UNBOUNDED),
        Some(0x10000)
    );
    assert_eq!(
        t.find_first_from(0x41000, 0x3000, 0x1000, SearchLimit::UNBOUNDED),
        Some(0x40000)
    );
    assert_eq!(
        t.find_first_from(0x50000, 0x1000, 0x1000, SearchLimit::UNBOUNDED),
        None
    );
}

/// A fit taken after the tree changed: the position it carries now names another segment
/// (or none); `take` must still remove exactly the range found, from the segment holding it.
#[test]
fn take_with_a_stale_position_removes_the_right_range() {
    let three = || {
        let mut t = tree();
        for s in [0x10000, 0x20000, 0x30000] {
            t.add(s, 0x4000).unwrap();
        }
        t
    };
    // The position of the middle segment then names the last one.
    let mut t = three();
    let fit = t
        .find_first_fit(0x20000, 0x1000, 0x1000, SearchLimit::UNBOUNDED)
        .unwrap();
    assert_eq!(fit.start, 0x20000);
    assert!(fit.pos.is_some());
    t.remove(0x10000, 0x4000).unwrap();
    t.take(fit, 0x1000).unwrap();
    assert_eq!(
        t.iter().collect::<Vec<_>>(),
        vec![(0x21000, 0x3000), (0x30000, 0x4000)]
    );
    t.verify().unwrap();
    // The position of the last segment then points past the end of its leaf.
    let mut t = three();
    let fit = t.find_near_fit(0x30000, 0x1000, 0x1000, 8).unwrap();
    assert_eq!(fit.start, 0x30000);
    assert!(fit.pos.is_some());
    t.remove(0x10000, 0x4000).unwrap();
    t.take(fit, 0x1000).unwrap();
    assert_eq!(
        t.iter().collect::<Vec<_>>(),
        vec![(0x20000, 0x4000), (0x31000, 0x3000)]
    );
    t.verify().unwrap();
    // The segment found is gone: refused, nothing changes.
    let mut t = three();
    let fit = t.find_near_fit(0x20000, 0x1000, 0x1000, 8).unwrap();
    t.remove(0x20000, 0x4000).unwrap();
    assert!(matches!(
        t.take(fit, 0x1000),
        Err(AllocError::DoubleAlloc { .. })
    ));
    assert_eq!(
        t.iter().collect::<Vec<_>>(),
        vec![(0x10000, 0x4000), (0x30000, 0x4000)]
    );
}

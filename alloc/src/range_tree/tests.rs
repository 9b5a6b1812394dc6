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

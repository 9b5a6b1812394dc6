//! Class-level behaviour: sharded allocation over devices, slop, sync records, checkpoint.

use ringpool_alloc::{
    AllocClass, AllocError, ClassConfig, DeviceSpec, MetaslabClass, SmAction, SmRecord,
};

const MIB: u64 = 1 << 20;

fn class(devs: u32, shards: usize) -> MetaslabClass {
    let c = MetaslabClass::new(ClassConfig {
        shards,
        slop_min: 2 * MIB,
        ..ClassConfig::default()
    });
    for dev in 0..devs {
        c.add_device(DeviceSpec {
            dev,
            start: 4 * MIB,
            end: 68 * MIB,
            ashift: 12,
            ms_shift: 24,
        })
        .unwrap();
    }
    c
}

#[test]
fn fills_to_slop_then_reserved_gets_the_rest() {
    let c = class(2, 2);
    let slop = c.slop_space();
    assert_eq!(slop, 4 * MIB); // 128 MiB >> 5
    let mut got = 0u64;
    let mut per_dev = [0u64; 2];
    loop {
        match c.alloc(64 << 10, 5, (got >> 16) as usize % 2, AllocClass::Normal) {
            Ok(e) => {
                got += e.len;
                per_dev[e.dev as usize] += e.len;
            }
            Err(AllocError::NoSpace { .. }) => break,
            Err(e) => panic!("{e}"),
        }
    }
    assert!(got >= 128 * MIB - slop - 2 * (1 << 20), "got {got}");
    assert!(got <= 128 * MIB - slop + 2 * (1 << 20), "got {got}");
    assert!(
        per_dev[0] > 0 && per_dev[1] > 0,
        "rotor spreads: {per_dev:?}"
    );
    while c.alloc(64 << 10, 5, 0, AllocClass::Reserved).is_ok() {
        got += 64 << 10;
    }
    assert_eq!(got, 128 * MIB);
    let st = c.stats();
    assert_eq!(st.total.free, 0);
    assert_eq!(st.total.allocated, 128 * MIB);
    c.verify().unwrap();
    let out = c.sync(5).unwrap();
    let allocs: u64 = out
        .devices
        .iter()
        .flat_map(|d| d.metaslabs.iter())
        .flat_map(|(_, o)| o.sm_records.iter())
        .map(|r| {
            assert_eq!(r.action, SmAction::Alloc);
            r.len
        })
        .sum();
    assert_eq!(allocs, 128 * MIB);
    c.sync_done(5).unwrap();
    c.verify_quiesced().unwrap();
}

#[test]
fn checkpoint_holds_and_discard_releases() {
    let c = class(1, 1);
    let e = c.alloc(8192, 5, 0, AllocClass::Normal).unwrap();
    c.sync(5).unwrap();
    c.sync_done(5).unwrap();
    // checkpoint of txg 5 taken by an early task of txg 6
    c.set_checkpoint_txg(5);
    c.free(e, 5, 6).unwrap();
    // Queued again, in this txg and in the next: both refused by txg 6's sync (after it, the
    // checkpointed block looks allocated), one per call, nothing synced meanwhile.
    c.free(e, 5, 6).unwrap();
    c.free(e, 5, 7).unwrap();
    for _ in 0..2 {
        assert_eq!(
            c.sync(6).unwrap_err(),
            AllocError::DoubleFree {
                start: e.start,
                len: e.len
            }
        );
        c.verify().unwrap();
    }
    let out = c.sync(6).unwrap();
    assert_eq!(
        out.devices[0].ckpt_records,
        vec![SmRecord::free(e.start, e.len)]
    );
    assert!(out.devices[0]
        .metaslabs
        .iter()
        .all(|(_, o)| o.sm_records.is_empty()));
    c.sync_done(6).unwrap();
    assert_eq!(c.stats().total.checkpointed, 8192);
    c.verify_checkpoint_extents(0, out.devices[0].ckpt_records.clone())
        .unwrap();
    for txg in 7..10 {
        c.sync(txg).unwrap();
        c.sync_done(txg).unwrap();
    }
    assert_eq!(c.stats().total.free, 64 * MIB - 8192);
    // discard: early task clears the txg, then the extent goes back to freeing
    c.clear_checkpoint_txg();
    c.discard_checkpoint_extent(0, e.start, e.len).unwrap();
    let out = c.sync(10).unwrap();
    let recs: Vec<_> = out.devices[0]
        .metaslabs
        .iter()
        .flat_map(|(_, o)| o.sm_records.clone())
        .collect();
    assert_eq!(recs, vec![SmRecord::free(e.start, e.len)]);
    c.sync_done(10).unwrap();
    assert_eq!(c.stats().total.checkpointed, 0);
    c.sync(11).unwrap();
    c.sync_done(11).unwrap();
    c.sync(12).unwrap();
    c.sync_done(12).unwrap();
    assert_eq!(c.stats().total.free, 64 * MIB);
    c.verify_quiesced().unwrap();
}

#[test]
fn errors_are_typed() {
    let c = class(1, 1);
    let e = c.alloc(4096, 5, 0, AllocClass::Normal).unwrap();
    assert!(matches!(
        c.free(ringpool_alloc::Extent { dev: 9, ..e }, 5, 5),
        Err(AllocError::UnknownDevice { dev: 9 })
    ));
    assert!(matches!(
        c.free(
            ringpool_alloc::Extent {
                start: e.start + 1,
                ..e
            },
            5,
            5
        ),
        Err(AllocError::Misaligned { .. })
    ));
    assert!(matches!(
        c.free(
            ringpool_alloc::Extent {
                start: 20 * MIB - 4096,
                len: 8192,
                dev: 0
            },
            1,
            5
        ),
        Err(AllocError::OutOfRange { .. })
    ));
    assert!(
        c.is_free(e).unwrap(),
        "allocated in an unsynced txg: free on disk"
    );
    c.sync(5).unwrap();
    c.sync_done(5).unwrap();
    assert!(!c.is_free(e).unwrap());
    assert!(matches!(c.free(e, 5, 5), Err(AllocError::TxgClosed { .. })));
    c.free(e, 5, 6).unwrap();
    c.sync(6).unwrap();
    c.sync_done(6).unwrap();
    // e is deferred now: the double free is refused by sync (default) with nothing emitted...
    c.free(e, 5, 7).unwrap();
    let err = c.sync(7).unwrap_err();
    assert!(matches!(err, AllocError::DoubleFree { .. }));
    assert_eq!(err.errno(), 5);
    assert_eq!(AllocError::NoSpace { size: 1 }.errno(), 28);
    c.verify().unwrap();
    assert!(c
        .add_device(DeviceSpec {
            dev: 0,
            start: 0,
            end: 64 * MIB,
            ashift: 12,
            ms_shift: 24
        })
        .is_err());
    // ... or at free time with eager checks.
    let c = MetaslabClass::new(ClassConfig {
        metaslab: ringpool_alloc::MetaslabConfig {
            eager_free_checks: true,
            ..Default::default()
        },
        ..ClassConfig::default()
    });
    c.add_device(DeviceSpec {
        dev: 0,
        start: 4 * MIB,
        end: 68 * MIB,
        ashift: 12,
        ms_shift: 24,
    })
    .unwrap();
    let e = c.alloc(4096, 5, 0, AllocClass::Normal).unwrap();
    c.sync(5).unwrap();
    c.sync_done(5).unwrap();
    c.free(e, 5, 6).unwrap();
    c.sync(6).unwrap();
    c.sync_done(6).unwrap();
    assert!(matches!(
        c.free(e, 5, 7),
        Err(AllocError::DoubleFree { .. })
    ));
    let never = ringpool_alloc::Extent {
        start: e.start + 8192,
        ..e
    };
    assert!(matches!(
        c.free(never, 5, 7),
        Err(AllocError::DoubleFree { .. })
    ));
}

/// A shard keeps two active metaslabs: a request the first cannot hold activates another one
/// as the second, and smaller requests keep going to the first instead of following it.
#[test]
fn large_request_does_not_evict_the_primary_metaslab() {
    let c = class(1, 1);
    let ms_of = |e: ringpool_alloc::Extent| (e.start - 4 * MIB) >> 24;
    // Fill the first metaslab up to its last 64 KiB.
    let big = c
        .alloc(16 * MIB - (64 << 10), 5, 0, AllocClass::Normal)
        .unwrap();
    let primary = ms_of(big);
    // 1 MiB does not fit there: another metaslab serves it.
    let a = c.alloc(MIB, 5, 0, AllocClass::Normal).unwrap();
    let secondary = ms_of(a);
    assert_ne!(secondary, primary);
    // Small requests still use the primary's last 64 KiB ...
    for _ in 0..16 {
        let e = c.alloc(4 << 10, 5, 0, AllocClass::Normal).unwrap();
        assert_eq!(ms_of(e), primary);
    }
    // ... and once it is full they go to the secondary, as do larger ones.
    assert_eq!(
        ms_of(c.alloc(4 << 10, 5, 0, AllocClass::Normal).unwrap()),
        secondary
    );
    assert_eq!(
        ms_of(c.alloc(MIB, 5, 0, AllocClass::Normal).unwrap()),
        secondary
    );
    c.verify().unwrap();
}

/// `reserve_space` counts the 16 KiB blocks the free segments can hold (`floor(len / 16 KiB)`
/// per segment, exactly), and the class's counter follows every allocation, undo and sync
/// (checked by `verify`).
#[test]
fn reserve_space_counts_only_segments_long_enough() {
    let c = class(1, 1);
    // Four whole 16 MiB metaslabs.
    assert_eq!(c.reserve_space(), 64 * MIB, "fresh: whole metaslabs");
    let mut blocks = Vec::new();
    while let Ok(e) = c.alloc(4096, 5, 0, AllocClass::Reserved) {
        blocks.push(e);
    }
    assert_eq!(blocks.len() as u64, 64 * MIB / 4096);
    assert_eq!(c.reserve_space(), 0);
    c.verify().unwrap();
    blocks.sort_by_key(|e| e.start);
    // Every other block back: 4 KiB holes only.
    for e in blocks.iter().step_by(2) {
        c.free_now(*e, 5).unwrap();
    }
    c.verify().unwrap();
    assert_eq!(c.reserve_space(), 0);
    // Blocks 1 and 3 back too: blocks 0-4 make one 20 KiB segment, which holds one 16 KiB
    // block.
    c.free_now(blocks[1], 5).unwrap();
    c.free_now(blocks[3], 5).unwrap();
    assert_eq!(c.reserve_space(), 16 << 10);
    // Blocks 5 and 7 back too (6 is back already): blocks 0-8 make 36 KiB, two of them.
    c.free_now(blocks[5], 5).unwrap();
    c.free_now(blocks[7], 5).unwrap();
    assert_eq!(c.reserve_space(), 32 << 10);
    c.verify().unwrap();
}

/// Ordinary allocations keep the slop in pieces the sync can use: on a class whose free space
/// is half single-block holes and half whole metaslabs, 4 KiB data allocations go on until the
/// free space reaches the slop, and what is left then takes 16 KiB sync-context blocks for at
/// least the slop. Without the reserve check the data took the whole metaslabs first (they
/// weigh most) and left the sync only holes.
#[test]
fn ordinary_allocations_leave_the_slop_in_whole_pieces() {
    let c = class(1, 1);
    let slop = c.slop_space();
    assert_eq!(slop, 2 * MIB);
    let mut blocks = Vec::new();
    while let Ok(e) = c.alloc(4096, 5, 0, AllocClass::Reserved) {
        blocks.push(e);
    }
    blocks.sort_by_key(|e| e.start);
    let ms_of = |e: &ringpool_alloc::Extent| (e.start - 4 * MIB) >> 24;
    // Metaslabs 0 and 1: every other block back (16 MiB of 4 KiB holes); 2 and 3: all back.
    for (i, e) in blocks.iter().enumerate() {
        if ms_of(e) >= 2 || i % 2 == 0 {
            c.free_now(*e, 5).unwrap();
        }
    }
    assert_eq!(c.stats().total.free, 48 * MIB);
    assert_eq!(c.reserve_space(), 32 * MIB);
    let mut data = 0u64;
    while c.alloc(4096, 5, 0, AllocClass::Normal).is_ok() {
        data += 4096;
    }
    c.verify().unwrap();
    assert!(
        data >= 46 * MIB - 64 * 1024,
        "data got only {data} bytes of the 46 MiB above the slop"
    );
    assert!(c.reserve_space() >= slop, "{} < {slop}", c.reserve_space());
    let mut meta = 0u64;
    while c.alloc(16 << 10, 5, 0, AllocClass::Reserved).is_ok() {
        meta += 16 << 10;
    }
    assert!(
        meta >= slop,
        "the sync found only {meta} bytes in 16 KiB pieces"
    );
    c.verify().unwrap();
}

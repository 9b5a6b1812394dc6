//! Pool checkpoint scenarios (OpenZFS `tests/functional/pool_checkpoint`, volumes instead of
//! filesystems, `verify` instead of zdb) on the in-memory fault-injecting engine.

use std::sync::Arc;
use std::time::Duration;

use ringpool_driver::io::{self, BlockEngine, CrashMode, FaultyEngine, ReactorConfig};
use ringpool_driver::pool::checkpoint::DISCARD_MEMORY_LIMIT_PROP;
use ringpool_driver::pool::{
    CheckpointState, CreateOptions, ImportOptions, Pool, PoolError, PoolOptions, TxgConfig,
};

const DEV: u64 = 64 << 20;
const BS: u32 = 4096;

fn rcfg() -> ReactorConfig {
    ReactorConfig {
        reactors: 1,
        pin: false,
        arena_bytes: 0,
        ..Default::default()
    }
}

fn popts() -> PoolOptions {
    PoolOptions {
        txg: TxgConfig {
            timeout: Duration::from_millis(200),
            ..Default::default()
        },
        shards: 2,
        ..Default::default()
    }
}

fn copts() -> CreateOptions {
    CreateOptions {
        pool: popts(),
        ms_shift: None,
        ..Default::default()
    }
}

fn iopts() -> ImportOptions {
    ImportOptions {
        pool: popts(),
        ..Default::default()
    }
}

fn rewind_opts(read_only: bool) -> ImportOptions {
    ImportOptions {
        rewind_to_checkpoint: true,
        read_only,
        ..iopts()
    }
}

fn engines(devs: &[FaultyEngine]) -> Vec<Arc<dyn BlockEngine>> {
    devs.iter()
        .map(|d| Arc::new(d.clone()) as Arc<dyn BlockEngine>)
        .collect()
}

fn new_devs(n: usize) -> Vec<FaultyEngine> {
    (0..n).map(|_| FaultyEngine::new(DEV, BS)).collect()
}

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x & 0xff) as u8
        })
        .collect()
}

fn write(pool: &Pool, vol: &str, off: u64, data: &[u8]) -> Result<(), PoolError> {
    let v = pool.open_volume(vol)?;
    io::block_on(&rcfg(), async { v.write(off, data, false).await })?
}

fn read(pool: &Pool, vol: &str, off: u64, len: usize) -> Result<Vec<u8>, PoolError> {
    let v = pool.open_volume(vol)?;
    let mut buf = vec![0u8; len];
    io::block_on(&rcfg(), async { v.read(off, &mut buf).await })??;
    Ok(buf)
}

fn punch(pool: &Pool, vol: &str, off: u64, len: u64) -> Result<(), PoolError> {
    let v = pool.open_volume(vol)?;
    io::block_on(&rcfg(), async { v.punch(off, len, false).await })?
}

const PRE0: u64 = 1;
const PRE1: u64 = 2;
const POST0: u64 = 3;
const POST2: u64 = 4;
const LEN: usize = 256 << 10;

/// `populate`: two volumes with known contents.
fn populate(pool: &Pool) -> anyhow::Result<()> {
    pool.create_volume("fs0", 8 << 20, BS)?;
    pool.create_volume("fs1", 8 << 20, BS)?;
    write(pool, "fs0", 0, &pattern(PRE0, LEN))?;
    write(pool, "fs1", 0, &pattern(PRE1, LEN))?;
    pool.sync_blocking()?;
    Ok(())
}

/// `change_state_after_checkpoint`: destroy fs1, create fs2, overwrite fs0, write fs2.
fn change_state(pool: &Pool) -> anyhow::Result<()> {
    pool.destroy_volume("fs1")?;
    pool.create_volume("fs2", 8 << 20, BS)?;
    write(pool, "fs0", 0, &pattern(POST0, LEN))?;
    write(pool, "fs2", 0, &pattern(POST2, LEN))?;
    pool.sync_blocking()?;
    Ok(())
}

fn verify_clean(pool: &Pool) -> anyhow::Result<()> {
    let rep = pool.verify()?;
    anyhow::ensure!(rep.is_clean(), "verify: {:?}", rep.errors);
    Ok(())
}

fn verify_pre(pool: &Pool, run_verify: bool) -> anyhow::Result<()> {
    assert_eq!(read(pool, "fs0", 0, LEN)?, pattern(PRE0, LEN));
    assert_eq!(read(pool, "fs1", 0, LEN)?, pattern(PRE1, LEN));
    assert!(pool.open_volume("fs2").is_err(), "fs2 must not exist");
    if run_verify {
        verify_clean(pool)?;
    }
    Ok(())
}

fn verify_post(pool: &Pool) -> anyhow::Result<()> {
    assert_eq!(read(pool, "fs0", 0, LEN)?, pattern(POST0, LEN));
    assert_eq!(read(pool, "fs2", 0, LEN)?, pattern(POST2, LEN));
    assert!(pool.open_volume("fs1").is_err(), "fs1 must be gone");
    verify_clean(pool)
}

fn history(pool: &Pool) -> anyhow::Result<Vec<String>> {
    Ok(pool
        .directory()?
        .history
        .into_iter()
        .map(|(_, _, t)| t)
        .collect())
}

/// E.1 checkpoint_rewind (+ history, E.2-style verify of the checkpointed state).
#[test]
fn e01_rewind() -> anyhow::Result<()> {
    let devs = new_devs(1);
    let pool = Pool::create("tank", engines(&devs), &copts())?;
    populate(&pool)?;
    pool.checkpoint()?;
    let st = pool.checkpoint_status();
    assert_eq!(st.state, CheckpointState::Exists);
    assert!(st.txg > 0 && st.created > 0);
    change_state(&pool)?;
    assert!(
        pool.checkpoint_status().space > 0,
        "overwrites and the destroy of checkpointed data hold space"
    );
    let s = pool.stats();
    assert_eq!(s.space.checkpointed, pool.checkpoint_status().space);
    verify_clean(&pool)?;
    pool.export()?;
    let pool = Pool::import(engines(&devs), &rewind_opts(false))?;
    verify_pre(&pool, true)?;
    assert_eq!(pool.checkpoint_status().state, CheckpointState::None);
    assert_eq!(pool.stats().space.checkpointed, 0);
    assert!(history(&pool)?
        .iter()
        .any(|h| h.starts_with("checkpoint rewind")));
    pool.export()?;
    // The rewind is durable; the checkpoint was consumed.
    let pool = Pool::import(engines(&devs), &iopts())?;
    verify_pre(&pool, true)?;
    pool.export()?;
    let e = Pool::import(engines(&devs), &rewind_opts(false)).unwrap_err();
    assert!(matches!(e, PoolError::NoCheckpoint), "{e}");
    Ok(())
}

/// E.2 checkpoint_open: a checkpoint does not alter normal opens.
#[test]
fn e02_open() -> anyhow::Result<()> {
    let devs = new_devs(1);
    let pool = Pool::create("tank", engines(&devs), &copts())?;
    populate(&pool)?;
    pool.checkpoint()?;
    change_state(&pool)?;
    let space = pool.checkpoint_status().space;
    pool.export()?;
    let pool = Pool::import(engines(&devs), &iopts())?;
    verify_post(&pool)?;
    let st = pool.checkpoint_status();
    assert_eq!(st.state, CheckpointState::Exists);
    assert_eq!(
        st.space, space,
        "CKPOINT recomputed from the maps at import"
    );
    assert!(history(&pool)?
        .iter()
        .any(|h| h.starts_with("checkpoint created")));
    Ok(())
}

/// E.3 checkpoint_ro_rewind.
#[test]
fn e03_ro_rewind() -> anyhow::Result<()> {
    let devs = new_devs(1);
    let pool = Pool::create("tank", engines(&devs), &copts())?;
    populate(&pool)?;
    pool.checkpoint()?;
    change_state(&pool)?;
    pool.export()?;
    let pool = Pool::import(engines(&devs), &rewind_opts(true))?;
    verify_pre(&pool, false)?;
    assert!(pool.checkpoint().is_err());
    pool.export()?;
    let pool = Pool::import(engines(&devs), &iopts())?;
    verify_post(&pool)?;
    assert_eq!(pool.checkpoint_status().state, CheckpointState::Exists);
    Ok(())
}

/// E.4 checkpoint_after_rewind.
#[test]
fn e04_checkpoint_after_rewind() -> anyhow::Result<()> {
    let devs = new_devs(1);
    let pool = Pool::create("tank", engines(&devs), &copts())?;
    populate(&pool)?;
    pool.checkpoint()?;
    change_state(&pool)?;
    pool.export()?;
    let pool = Pool::import(engines(&devs), &rewind_opts(false))?;
    verify_pre(&pool, true)?;
    pool.checkpoint()?;
    change_state(&pool)?;
    verify_post(&pool)?;
    pool.export()?;
    let pool = Pool::import(engines(&devs), &rewind_opts(false))?;
    verify_pre(&pool, true)?;
    Ok(())
}

/// E.5 checkpoint_discard: rewind after a discard fails; plain import shows the current state.
#[test]
fn e05_discard_then_rewind_fails() -> anyhow::Result<()> {
    let devs = new_devs(1);
    let pool = Pool::create("tank", engines(&devs), &copts())?;
    populate(&pool)?;
    pool.checkpoint()?;
    change_state(&pool)?;
    pool.discard_checkpoint()?;
    pool.export()?;
    let e = Pool::import(engines(&devs), &rewind_opts(false)).unwrap_err();
    assert!(matches!(e, PoolError::NoCheckpoint), "{e}");
    assert_eq!(e.to_string(), "checkpoint does not exist");
    let pool = Pool::import(engines(&devs), &iopts())?;
    pool.wait_discard()?;
    verify_post(&pool)?;
    let h = history(&pool)?;
    assert!(h
        .iter()
        .any(|h| h.starts_with("checkpoint discard started")));
    assert!(h
        .iter()
        .any(|h| h.starts_with("checkpoint discard finished")));
    Ok(())
}

/// E.6 checkpoint_discard_many: the discard reactor runs repeatedly.
#[test]
fn e06_discard_many() -> anyhow::Result<()> {
    let devs = new_devs(1);
    let pool = Pool::create("tank", engines(&devs), &copts())?;
    populate(&pool)?;
    pool.checkpoint()?;
    change_state(&pool)?;
    pool.discard_checkpoint()?;
    pool.wait_discard()?;
    assert_eq!(pool.checkpoint_status().state, CheckpointState::None);
    pool.create_volume("big", 16 << 20, BS)?;
    write(&pool, "big", 0, &pattern(9, 4 << 20))?;
    for i in 0..100u64 {
        write(
            &pool,
            "big",
            (i * 37 % 1024) * 4096,
            &pattern(100 + i, 4096),
        )?;
    }
    pool.checkpoint()?;
    for i in 0..100u64 {
        write(
            &pool,
            "big",
            (i * 53 % 1024) * 4096,
            &pattern(300 + i, 4096),
        )?;
    }
    pool.sync_blocking()?;
    assert!(pool.checkpoint_status().space > 0);
    pool.discard_checkpoint()?;
    pool.wait_discard()?;
    let st = pool.checkpoint_status();
    assert_eq!((st.state, st.space), (CheckpointState::None, 0));
    verify_clean(&pool)?;
    Ok(())
}

/// E.7 checkpoint_twice; E.8 checkpoint_invalid (no checkpoint: discard and rewind fail).
#[test]
fn e07_e08_twice_and_invalid() -> anyhow::Result<()> {
    let devs = new_devs(1);
    let pool = Pool::create("tank", engines(&devs), &copts())?;
    let e = pool.discard_checkpoint().unwrap_err();
    assert!(matches!(e, PoolError::NoCheckpoint), "{e}");
    pool.checkpoint()?;
    let e = pool.checkpoint().unwrap_err();
    assert!(matches!(e, PoolError::CheckpointExists), "{e}");
    assert_eq!(e.to_string(), "checkpoint exists");
    pool.discard_checkpoint()?;
    pool.wait_discard()?;
    let e = pool.discard_checkpoint().unwrap_err();
    assert!(matches!(e, PoolError::NoCheckpoint), "{e}");
    pool.export()?;
    let e = Pool::import(engines(&devs), &rewind_opts(false)).unwrap_err();
    assert!(matches!(e, PoolError::NoCheckpoint), "{e}");
    let pool = Pool::import(engines(&devs), &iopts())?;
    assert_eq!(pool.checkpoint_status().state, CheckpointState::None);
    verify_clean(&pool)?;
    Ok(())
}

/// E.11 checkpoint_vdev_add: a device added after the checkpoint is gone after the rewind.
#[test]
fn e11_vdev_add_then_rewind() -> anyhow::Result<()> {
    let devs = new_devs(2);
    let pool = Pool::create("tank", engines(&devs[..1]), &copts())?;
    populate(&pool)?;
    pool.checkpoint()?;
    pool.add_device(Arc::new(devs[1].clone()), None, None)?;
    assert_eq!(pool.stats().devices.len(), 2);
    change_state(&pool)?;
    // Put data on the new device too.
    pool.create_volume("fs3", 16 << 20, BS)?;
    write(&pool, "fs3", 0, &pattern(7, 8 << 20))?;
    pool.sync_blocking()?;
    assert!(pool.stats().devices[1].2.allocated > 0);
    verify_clean(&pool)?;
    pool.export()?;
    let pool = Pool::import(engines(&devs), &rewind_opts(false))?;
    verify_pre(&pool, true)?;
    assert_eq!(pool.stats().devices.len(), 1);
    pool.export()?;
    let pool = Pool::import(engines(&devs), &iopts())?;
    assert_eq!(pool.stats().devices.len(), 1);
    verify_pre(&pool, true)?;
    pool.export()?;
    // Its labels were cleared: alone it holds no pool.
    let found = Pool::discover(engines(&devs[1..]), &popts())?;
    assert!(found.is_empty(), "{found:?}");
    Ok(())
}

/// E.14 checkpoint_capacity: with a checkpoint, trimming frees nothing (ENOSPC persists);
/// discard works on the full pool and the space returns.
#[test]
fn e14_capacity() -> anyhow::Result<()> {
    let devs = new_devs(1);
    let pool = Pool::create("tank", engines(&devs), &copts())?;
    pool.create_volume("big", 64 << 20, BS)?;
    let chunk = pattern(11, 1 << 20);
    let mut written = 0u64;
    loop {
        match write(&pool, "big", written, &chunk) {
            Ok(()) => written += 1 << 20,
            Err(e) => {
                assert_eq!(e.errno(), libc::ENOSPC, "{e}");
                break;
            }
        }
        pool.sync_blocking()?;
    }
    assert!(written >= 16 << 20, "wrote only {written}");
    let first = read(&pool, "big", 0, 100)?;
    pool.checkpoint()?;
    punch(&pool, "big", 0, 64 << 20)?;
    for _ in 0..4 {
        pool.sync_blocking()?;
    }
    let st = pool.checkpoint_status();
    assert!(
        st.space >= written - (1 << 20),
        "held {} of {written}",
        st.space
    );
    let e = write(&pool, "big", 0, &chunk).unwrap_err();
    assert_eq!(e.errno(), libc::ENOSPC, "{e}");
    verify_clean(&pool)?;
    pool.export()?;
    // Rewind preview: the data is back.
    let p2 = Pool::import(engines(&devs), &rewind_opts(true))?;
    assert_eq!(read(&p2, "big", 0, 100)?, first);
    p2.export()?;
    let pool = Pool::import(engines(&devs), &iopts())?;
    assert_eq!(read(&pool, "big", 0, 100)?, vec![0u8; 100]);
    pool.discard_checkpoint()?;
    pool.wait_discard()?;
    for _ in 0..3 {
        pool.sync_blocking()?;
    }
    write(&pool, "big", 0, &chunk)?;
    pool.sync_blocking()?;
    assert!(pool.stats().space.free > written / 2);
    verify_clean(&pool)?;
    Ok(())
}

/// E.16 checkpoint_big_rewind: churn after the checkpoint never reuses a checkpointed block.
#[test]
fn e16_big_rewind_after_churn() -> anyhow::Result<()> {
    let devs = new_devs(2);
    let pool = Pool::create("tank", engines(&devs), &copts())?;
    populate(&pool)?;
    pool.create_volume("churn", 32 << 20, BS)?;
    let blocks = (32u64 << 20) / u64::from(BS);
    for i in 0..2000u64 {
        let b = (i * 7919) % blocks;
        write(&pool, "churn", b * 4096, &pattern(1000 + i, 4096))?;
    }
    pool.sync_blocking()?;
    let sample: Vec<(u64, Vec<u8>)> = (0..50u64)
        .map(|i| {
            let b = (i * 613) % blocks;
            (b, read(&pool, "churn", b * 4096, 4096).unwrap())
        })
        .collect();
    pool.checkpoint()?;
    change_state(&pool)?;
    for round in 0..4u64 {
        for i in 0..1500u64 {
            let b = (i * 104_729 + round * 31) % blocks;
            write(
                &pool,
                "churn",
                b * 4096,
                &pattern(5000 + round * 10_000 + i, 4096),
            )?;
        }
        punch(&pool, "churn", (round * 1024) * 4096, 512 * 4096)?;
        pool.sync_blocking()?;
    }
    verify_clean(&pool)?;
    pool.export()?;
    let pool = Pool::import(engines(&devs), &rewind_opts(false))?;
    verify_pre(&pool, true)?;
    for (b, data) in &sample {
        assert_eq!(&read(&pool, "churn", b * 4096, 4096)?, data, "block {b}");
    }
    pool.export()?;
    Ok(())
}

/// Derived 20: a free of a block born at or before the checkpoint is held (CKPOINT grows by
/// its size); a block born after it is freed normally.
#[test]
fn d20_checkpointed_free_routing() -> anyhow::Result<()> {
    let devs = new_devs(1);
    let pool = Pool::create("tank", engines(&devs), &copts())?;
    pool.create_volume("v", 8 << 20, BS)?;
    write(&pool, "v", 0, &pattern(1, 4096))?;
    pool.sync_blocking()?;
    pool.checkpoint()?;
    pool.sync_blocking()?;
    // Metadata rewritten since (root block, object set) is held too: measure from here.
    let base = pool.checkpoint_status().space;
    write(&pool, "v", 0, &pattern(2, 4096))?;
    pool.sync_blocking()?;
    let after = pool.checkpoint_status().space;
    assert!(after >= base + 4096, "{base} -> {after}");
    // Born after the checkpoint: an ordinary free (warm up the metadata first).
    for (off, seed) in [(8192u64, 5u64), (4096, 3)] {
        write(&pool, "v", off, &pattern(seed, 4096))?;
        pool.sync_blocking()?;
        write(&pool, "v", off, &pattern(seed + 10, 4096))?;
        pool.sync_blocking()?;
        pool.sync_blocking()?;
    }
    let s1 = pool.checkpoint_status().space;
    write(&pool, "v", 4096, &pattern(4, 4096))?;
    pool.sync_blocking()?;
    punch(&pool, "v", 4096, 4096)?;
    pool.sync_blocking()?;
    assert_eq!(pool.checkpoint_status().space, s1);
    let s = pool.stats();
    assert!(s.space.allocated >= s.space.checkpointed);
    verify_clean(&pool)?;
    Ok(())
}

fn fragmented_checkpoint(pool: &Pool, blocks: u64) -> anyhow::Result<()> {
    pool.create_volume("frag", 16 << 20, BS)?;
    for i in 0..blocks {
        write(pool, "frag", i * 4096, &pattern(i, 4096))?;
        if i % 64 == 63 {
            pool.sync_blocking()?;
        }
    }
    pool.sync_blocking()?;
    pool.checkpoint()?;
    // Every other block: extents that never coalesce in the checkpoint map.
    for i in (0..blocks).step_by(2) {
        punch(pool, "frag", i * 4096, 4096)?;
    }
    pool.sync_blocking()?;
    Ok(())
}

/// Derived 23: a tiny memory limit spreads the discard over many txgs; the space still held
/// decreases monotonically to 0; verify is clean at the end.
#[test]
fn d23_discard_tiny_memory_limit() -> anyhow::Result<()> {
    let devs = new_devs(1);
    let pool = Pool::create("tank", engines(&devs), &copts())?;
    pool.set_property(DISCARD_MEMORY_LIMIT_PROP, "128")?;
    fragmented_checkpoint(&pool, 240)?;
    let held = pool.checkpoint_status().space;
    assert!(held >= 120 * 4096, "{held}");
    let t0 = pool.stats().synced_txg;
    pool.discard_checkpoint()?;
    let mut last = held;
    let mut samples = 0;
    loop {
        let st = pool.checkpoint_status();
        assert!(st.space <= last, "space grew from {last} to {}", st.space);
        last = st.space;
        samples += 1;
        if st.state == CheckpointState::None {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(last, 0);
    assert!(samples > 3);
    // 120 entries, 4 per round: at least 30 destroy txgs.
    assert!(pool.stats().synced_txg - t0 >= 30);
    verify_clean(&pool)?;
    Ok(())
}

/// Derived 23: export mid-discard, re-import resumes from disk.
#[test]
fn d23_export_mid_discard_resumes() -> anyhow::Result<()> {
    let devs = new_devs(1);
    let pool = Pool::create("tank", engines(&devs), &copts())?;
    pool.set_property(DISCARD_MEMORY_LIMIT_PROP, "128")?;
    fragmented_checkpoint(&pool, 240)?;
    let held = pool.checkpoint_status().space;
    pool.discard_checkpoint()?;
    while pool.checkpoint_status().space == held {
        std::thread::sleep(Duration::from_millis(1));
    }
    pool.export()?;
    // Discarding (or discarded): no rewind.
    let e = Pool::import(engines(&devs), &rewind_opts(false)).unwrap_err();
    assert!(matches!(e, PoolError::NoCheckpoint), "{e}");
    let e = Pool::import(engines(&devs), &rewind_opts(true)).unwrap_err();
    assert!(matches!(e, PoolError::NoCheckpoint), "{e}");
    let pool = Pool::import(engines(&devs), &iopts())?;
    let st = pool.checkpoint_status();
    if st.state == CheckpointState::Discarding {
        assert!(st.space < held && st.space > 0, "{st:?}");
    }
    let e = pool.checkpoint().unwrap_err();
    if st.state == CheckpointState::Discarding {
        assert!(matches!(e, PoolError::DiscardingCheckpoint), "{e}");
    }
    pool.wait_discard()?;
    assert_eq!(pool.checkpoint_status().space, 0);
    verify_clean(&pool)?;
    pool.export()?;
    let e = Pool::import(engines(&devs), &rewind_opts(false)).unwrap_err();
    assert!(matches!(e, PoolError::NoCheckpoint), "{e}");
    Ok(())
}

/// Derived 23: crash mid-discard (unflushed writes dropped or torn), import resumes.
#[test]
fn d23_crash_mid_discard_resumes() -> anyhow::Result<()> {
    let devs = new_devs(1);
    let pool = Pool::create("tank", engines(&devs), &copts())?;
    pool.set_property(DISCARD_MEMORY_LIMIT_PROP, "256")?;
    fragmented_checkpoint(&pool, 200)?;
    let held = pool.checkpoint_status().space;
    devs[0].reset_log();
    pool.discard_checkpoint()?;
    while pool.checkpoint_status().space > held / 2 {
        std::thread::sleep(Duration::from_millis(1));
    }
    pool.abandon();
    let n = devs[0].event_count();
    for (k, at) in [n / 3, n / 2, n].into_iter().enumerate() {
        let img = devs[0].crash_image(
            at,
            k as u64,
            CrashMode {
                drop_unflushed_subset: true,
                tear_writes: true,
            },
        );
        let d = vec![FaultyEngine::from_image(img, BS)];
        let pool = Pool::import(
            engines(&d),
            &ImportOptions {
                force: true,
                ..iopts()
            },
        )?;
        if pool.checkpoint_status().state == CheckpointState::Exists {
            // Crashed before the discard's txg committed.
            pool.discard_checkpoint()?;
        }
        pool.wait_discard()?;
        assert_eq!(pool.checkpoint_status().space, 0);
        verify_clean(&pool)?;
        pool.export()?;
    }
    Ok(())
}

/// Derived 25: a crash at any point of a rewind import leaves either the current state with
/// its checkpoint (before the point of no return) or the rewound state (after it).
#[test]
fn d25_crash_during_rewind() -> anyhow::Result<()> {
    let devs = new_devs(1);
    let pool = Pool::create("tank", engines(&devs), &copts())?;
    populate(&pool)?;
    pool.checkpoint()?;
    change_state(&pool)?;
    pool.export()?;
    devs[0].reset_log();
    let pool = Pool::import(engines(&devs), &rewind_opts(false))?;
    pool.abandon();
    let n = devs[0].event_count();
    let (mut pre, mut post) = (0, 0);
    // Every flush point (and just before it), plus the start and the end.
    let mut points: Vec<usize> = devs[0]
        .flush_points()
        .into_iter()
        .flat_map(|f| [f.saturating_sub(1), f])
        .collect();
    points.extend([0, n]);
    points.sort_unstable();
    points.dedup();
    for at in points {
        for seed in 0..2u64 {
            let mode = CrashMode {
                drop_unflushed_subset: seed == 1,
                tear_writes: seed == 1,
            };
            let d = vec![FaultyEngine::from_image(
                devs[0].crash_image(at, seed, mode),
                BS,
            )];
            let p = Pool::import(
                engines(&d),
                &ImportOptions {
                    force: true,
                    ..iopts()
                },
            )?;
            if p.checkpoint_status().state == CheckpointState::Exists {
                verify_post(&p)?;
                post += 1;
            } else {
                verify_pre(&p, true)?;
                pre += 1;
            }
            p.abandon();
        }
    }
    assert!(pre > 0 && post > 0, "pre {pre} post {post} of {n} events");
    Ok(())
}

/// On O_DIRECT files in /tmp: checkpoint, rewind preview, export mid-discard (the discard
/// reactor must release the exclusively opened devices), resume at import.
#[test]
fn files_rewind_and_discard_resume() -> anyhow::Result<()> {
    let dir = tempfile::tempdir_in("/tmp")?;
    let path = dir.path().join("dev0");
    std::fs::File::create(&path)?.set_len(DEV)?;
    let paths = vec![path];
    let pool = Pool::create_paths("ftank", &paths, &copts())?;
    populate(&pool)?;
    pool.set_property(DISCARD_MEMORY_LIMIT_PROP, "256")?;
    pool.checkpoint()?;
    change_state(&pool)?;
    pool.export()?;
    let pool = Pool::import_paths(&paths, &rewind_opts(true))?;
    verify_pre(&pool, false)?;
    pool.export()?;
    let pool = Pool::import_paths(&paths, &iopts())?;
    verify_post(&pool)?;
    let held = pool.checkpoint_status().space;
    pool.discard_checkpoint()?;
    while pool.checkpoint_status().space == held {
        std::thread::sleep(Duration::from_millis(1));
    }
    pool.export()?;
    let pool = Pool::import_paths(&paths, &iopts())?;
    pool.wait_discard()?;
    let st = pool.checkpoint_status();
    assert_eq!((st.state, st.space), (CheckpointState::None, 0));
    verify_post(&pool)?;
    Ok(())
}

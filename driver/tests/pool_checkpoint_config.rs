//! Configuration changes around a checkpoint (reference E.9, E.10, E.11, E.15, D.3, derived 25)
//! and `reguid`. Scenario map: `pool_checkpoint.rs`.

mod pool_common;

use std::sync::Arc;

use pool_common::ckpt::*;
use pool_common::{copts, copts_with, engines, iopts, popts};
use ringpool_driver::io::{CrashMode, FaultyEngine};
use ringpool_driver::pool::{CheckpointState, CreateOptions, ImportOptions, Pool, PoolError};

/// Reguid without a checkpoint: a new GUID in the labels and uberblocks; the pool re-imports
/// under it (by name and by the new GUID, not by the old one) with its data.
#[test]
fn reguid_reimports_under_the_new_guid() -> anyhow::Result<()> {
    let devs = new_devs(2);
    let pool = Pool::create("tank", engines(&devs), &copts())?;
    populate(&pool)?;
    let g0 = pool.guid();
    let g1 = pool.reguid()?;
    assert_ne!(g0, g1);
    assert_eq!(pool.guid(), g1);
    assert_eq!(pool.stats().guid, g1);
    assert_eq!(pool.last_uberblock().map(|u| u.pool_guid), Some(g1));
    assert!(history(&pool)?.iter().any(|h| h.starts_with("reguid")));
    verify_pre(&pool, true)?;
    pool.export()?;
    let found = Pool::discover(engines(&devs), &popts())?;
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].guid, g1);
    assert_eq!(found[0].found, 2);
    let by_old = ImportOptions {
        name: Some(g0.to_string()),
        ..iopts()
    };
    let e = Pool::import(engines(&devs), &by_old).unwrap_err();
    assert!(matches!(e, PoolError::NotFound(_)), "{e}");
    let by_new = ImportOptions {
        name: Some(g1.to_string()),
        ..iopts()
    };
    let pool = Pool::import(engines(&devs), &by_new)?;
    assert_eq!(pool.guid(), g1);
    verify_pre(&pool, true)?;
    // Twice in a row, then a checkpoint taken under the new GUID rewinds fine.
    let g2 = pool.reguid()?;
    assert_ne!(g2, g1);
    pool.checkpoint()?;
    change_state(&pool)?;
    pool.export()?;
    let pool = Pool::import(engines(&devs), &rewind_opts(false))?;
    assert_eq!(pool.guid(), g2);
    verify_pre(&pool, true)?;
    Ok(())
}

/// E.9 checkpoint_conf_change: with a checkpoint, reguid is refused (OpenZFS also refuses
/// attach, replace and remove, which ringpool does not have); the GUID is unchanged on disk.
/// Once the checkpoint is discarded, reguid works again.
#[test]
fn e09_conf_change_refused() -> anyhow::Result<()> {
    let devs = new_devs(1);
    let pool = Pool::create("tank", engines(&devs), &copts())?;
    populate(&pool)?;
    let g0 = pool.guid();
    pool.checkpoint()?;
    let e = pool.reguid().unwrap_err();
    assert!(matches!(e, PoolError::CheckpointExists), "{e}");
    assert_eq!(e.to_string(), "checkpoint exists");
    assert_eq!(pool.guid(), g0);
    change_state(&pool)?;
    pool.export()?;
    let pool = Pool::import(engines(&devs), &iopts())?;
    assert_eq!(pool.guid(), g0);
    let e = pool.reguid().unwrap_err();
    assert!(matches!(e, PoolError::CheckpointExists), "{e}");
    pool.export()?;
    // The rewind still works: nothing a rewind cannot undo happened.
    let pool = Pool::import(engines(&devs), &rewind_opts(false))?;
    verify_pre(&pool, true)?;
    pool.checkpoint()?;
    pool.discard_checkpoint()?;
    pool.wait_discard()?;
    let g1 = pool.reguid()?;
    assert_ne!(g1, g0);
    Ok(())
}

/// Read-only pools refuse reguid.
#[test]
fn reguid_read_only_refused() -> anyhow::Result<()> {
    let devs = new_devs(1);
    let pool = Pool::create("tank", engines(&devs), &copts())?;
    pool.export()?;
    let ro = Pool::import(
        engines(&devs),
        &ImportOptions {
            read_only: true,
            ..iopts()
        },
    )?;
    assert!(matches!(ro.reguid(), Err(PoolError::ReadOnly)));
    Ok(())
}

/// Adding a device is allowed with a checkpoint (E.11); after the rewind removed it, the pool
/// has no checkpoint and reguid is allowed again.
#[test]
fn reguid_allowed_after_rewind_removed_device() -> anyhow::Result<()> {
    let devs = new_devs(2);
    let pool = Pool::create("tank", engines(&devs[..1]), &copts())?;
    populate(&pool)?;
    pool.checkpoint()?;
    pool.add_device(Arc::new(devs[1].clone()), None, None)?;
    assert!(matches!(pool.reguid(), Err(PoolError::CheckpointExists)));
    pool.export()?;
    let pool = Pool::import(engines(&devs), &rewind_opts(false))?;
    assert_eq!(pool.stats().devices.len(), 1);
    let g = pool.reguid()?;
    pool.export()?;
    let pool = Pool::import(engines(&devs), &iopts())?;
    assert_eq!(pool.guid(), g);
    verify_pre(&pool, true)?;
    Ok(())
}

/// A power loss at any point of a reguid leaves a pool that imports by name, under the old or
/// the new GUID, with its data; once imported (which rewrites every label) the GUID is stable.
/// Two devices, cut independently at each of their flush points (unflushed writes dropped or
/// torn at random).
#[test]
fn reguid_crash_at_every_flush_point() -> anyhow::Result<()> {
    let devs: Vec<FaultyEngine> = (0..2).map(|_| FaultyEngine::new(DEV, BS)).collect();
    let pool = Pool::create("tank", engines(&devs), &copts())?;
    populate(&pool)?;
    pool.sync_blocking()?;
    let g0 = pool.guid();
    for d in &devs {
        d.reset_log();
    }
    let g1 = pool.reguid()?;
    pool.abandon();
    let flushes: Vec<Vec<usize>> = devs.iter().map(FaultyEngine::flush_points).collect();
    let rounds = flushes.iter().map(Vec::len).max().unwrap_or(0) + 1;
    let (mut old, mut new) = (0, 0);
    for k in 0..rounds {
        for seed in 0..3u64 {
            let mode = CrashMode {
                drop_unflushed_subset: seed > 0,
                tear_writes: seed > 0,
            };
            // Device d stopped just before its k-th flush (or, seed 2 on device 1, right
            // after it: devices do not finish a flush at the same instant).
            let imgs: Vec<FaultyEngine> = devs
                .iter()
                .zip(&flushes)
                .enumerate()
                .map(|(d, (dev, f))| {
                    let at = f
                        .get(k)
                        .map_or(usize::MAX, |&i| i + usize::from(seed == 2 && d == 1));
                    FaultyEngine::from_image(dev.crash_image(at, seed * 31 + k as u64, mode), BS)
                })
                .collect();
            let p = Pool::import(
                engines(&imgs),
                &ImportOptions {
                    force: true,
                    ..iopts()
                },
            )
            .map_err(|e| anyhow::anyhow!("cut {k} seed {seed}: {e}"))?;
            let g = p.guid();
            assert!(g == g0 || g == g1, "cut {k}: guid {g:#x}");
            if g == g0 {
                old += 1;
            } else {
                new += 1;
            }
            verify_pre(&p, true)?;
            p.export()?;
            let p = Pool::import(engines(&imgs), &iopts())?;
            assert_eq!(p.guid(), g, "cut {k}: the GUID changed across an import");
            p.abandon();
        }
    }
    assert!(old > 0 && new > 0, "old {old} new {new}");
    Ok(())
}

/// E.10 checkpoint_removal, ported: ringpool has no device removal, so there is no
/// DEVRM_IN_PROGRESS; what carries over is that checkpoint create and configuration changes
/// are serialized by the sync thread. A device added concurrently with the create survives a
/// rewind exactly when its txg is not after the checkpointed one.
#[test]
fn e10_config_ops_serialize_with_checkpoint() -> anyhow::Result<()> {
    for round in 0..3 {
        let devs = new_devs(2);
        let pool = Arc::new(Pool::create("tank", engines(&devs[..1]), &copts())?);
        populate(&pool)?;
        let p2 = Arc::clone(&pool);
        let extra = devs[1].clone();
        let adder = std::thread::spawn(move || p2.add_device(Arc::new(extra), None, None));
        if round == 1 {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        pool.checkpoint()?;
        adder
            .join()
            .map_err(|_| anyhow::anyhow!("adder panicked"))??;
        let ck = pool.checkpoint_status().txg;
        let added = pool
            .directory()?
            .history
            .iter()
            .find(|(_, _, t)| t.starts_with("add device"))
            .map(|(_, txg, _)| *txg)
            .ok_or_else(|| anyhow::anyhow!("no add record"))?;
        let pool = Arc::into_inner(pool).ok_or_else(|| anyhow::anyhow!("pool still shared"))?;
        pool.export()?;
        let pool = Pool::import(engines(&devs), &rewind_opts(false))?;
        let want = if added <= ck { 2 } else { 1 };
        assert_eq!(
            pool.stats().devices.len(),
            want,
            "add txg {added}, checkpoint txg {ck}"
        );
        verify_pre(&pool, true)?;
    }
    Ok(())
}

/// E.15 checkpoint_sm_scale, ported: OpenZFS refuses a checkpoint when a device's offsets do
/// not fit a space map (VDEV_TOO_BIG). Ringpool's two-word entries carry 63-bit offsets in
/// units of at least 2^9 bytes, so every device a u64 can size is addressable and the refusal
/// (kept in `checkpoint.rs`) cannot trigger; the smallest unit is exercised end to end.
#[test]
fn e15_every_device_is_addressable() -> anyhow::Result<()> {
    use ringpool_ondisk::space_map::SM2_OFFSET_BITS;
    const { assert!(SM2_OFFSET_BITS + 9 >= 64) };
    let devs = vec![FaultyEngine::new(DEV, 512)];
    let opts = CreateOptions {
        ashift: Some(9),
        ..copts_with(popts())
    };
    let pool = Pool::create("tank", engines(&devs), &opts)?;
    populate(&pool)?;
    pool.checkpoint()?;
    assert_eq!(pool.checkpoint_status().state, CheckpointState::Exists);
    change_state(&pool)?;
    verify_clean(&pool)?;
    pool.export()?;
    let pool = Pool::import(engines(&devs), &rewind_opts(false))?;
    verify_pre(&pool, true)?;
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

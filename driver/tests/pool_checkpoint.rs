//! Pool checkpoint scenarios (OpenZFS `tests/functional/pool_checkpoint`, reference section E)
//! on the in-memory fault-injecting engine: volumes instead of filesystems, `verify` instead of
//! zdb. The scenarios are spread over four binaries by theme:
//!
//! | scenario | test |
//! |---|---|
//! | E1 checkpoint_rewind | `pool_checkpoint::e01_rewind` |
//! | E2 checkpoint_open | `pool_checkpoint::e02_open` |
//! | E3 checkpoint_ro_rewind | `pool_checkpoint::e03_ro_rewind` |
//! | E4 checkpoint_after_rewind | `pool_checkpoint::e04_checkpoint_after_rewind` |
//! | E5 checkpoint_discard | `pool_checkpoint::e05_discard_then_rewind_fails` |
//! | E6 checkpoint_discard_many | `pool_checkpoint::e06_discard_many` |
//! | E7 checkpoint_twice, E8 checkpoint_invalid | `pool_checkpoint::e07_e08_twice_and_invalid` (argument parsing: the `ringpool checkpoint` CLI tests) |
//! | E9 checkpoint_conf_change | `pool_checkpoint_config::e09_conf_change_refused` (reguid; attach/replace/remove do not exist) |
//! | E10 checkpoint_removal | `pool_checkpoint_config::e10_config_ops_serialize_with_checkpoint` (no device removal: the create refusals that exist, and a device add racing the create) |
//! | E11 checkpoint_vdev_add | `pool_checkpoint::e11_vdev_add_then_rewind`, `pool_checkpoint_config::reguid_allowed_after_rewind_removed_device` |
//! | E12 checkpoint_lun_expsz | not portable: ringpool has no online device expansion (`zpool online -e`) |
//! | E13 checkpoint_zhack_feat | `pool_checkpoint::e13_directory_state_after_checkpoint_rewinds` (no feature gate at import: directory features/properties set after the checkpoint vanish) |
//! | E14 checkpoint_capacity | `pool_checkpoint::e14_capacity` |
//! | E15 checkpoint_sm_scale | `pool_checkpoint_config::e15_every_device_is_addressable` (two-word offsets span any u64 device: DEVICE_TOO_BIG is unreachable) |
//! | E16 checkpoint_big_rewind | `pool_checkpoint_churn::e16_big_rewind_after_churn` |
//! | E17 checkpoint_indirect | `pool_checkpoint_churn::e17_grown_pool_churn_and_verify` (no removal/indirect devices: a pool grown by add, then churn) |
//! | E18 checkpoint_discard_busy | `pool_checkpoint_discard::e18_discard_busy` |
//! | E19 checkpoint_zdb | `pool_checkpoint::e19_inspect_checkpointed_state` |
//! | 20 | `pool_checkpoint_churn::d20_checkpointed_free_routing` |
//! | 21 | `pool_checkpoint_churn::d21_frees_up_to_checkpoint_txg_are_not_held` |
//! | 22 | `pool_checkpoint_churn::d22_condense_and_reload_never_expose_held_ranges` |
//! | 23 | `pool_checkpoint_discard::d23_*` (tiny limit, export, crash), `files_rewind_and_discard_resume` |
//! | 24 | `pool_checkpoint_discard::d24_two_word_entries_and_budget_stops` (+ `ringpool_ondisk` tail-pop unit tests) |
//! | 25 | `pool_checkpoint_config::d25_crash_during_rewind` |
//! | 26 | `pool_checkpoint::e14_capacity` (deleting frees nothing, discard works on the full pool) |

mod pool_common;

use std::sync::Arc;

use pool_common::ckpt::*;
use pool_common::{copts, engines, iopts, pattern, popts};
use ringpool_driver::pool::{CheckpointState, Pool, PoolError};

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

/// E.13 checkpoint_zhack_feat, ported: ringpool has no feature gate that could make the current
/// state unimportable, so the part that carries over is checked: directory state created after
/// the checkpoint (features, properties) is not part of the rewound pool, and what changed
/// comes back.
#[test]
fn e13_directory_state_after_checkpoint_rewinds() -> anyhow::Result<()> {
    use ringpool_driver::pool::checkpoint::CHECKPOINT_FEATURE;
    let devs = new_devs(1);
    let pool = Pool::create("tank", engines(&devs), &copts())?;
    populate(&pool)?;
    pool.set_property("user:before", "1")?;
    pool.checkpoint()?;
    change_state(&pool)?;
    pool.set_property("user:before", "changed")?;
    pool.set_property("user:after", "2")?;
    pool.export()?;
    let pool = Pool::import(engines(&devs), &iopts())?;
    let d = pool.directory()?;
    assert_eq!(d.props.get("user:after").map(String::as_str), Some("2"));
    assert_eq!(d.features.get(CHECKPOINT_FEATURE), Some(&1));
    pool.export()?;
    let pool = Pool::import(engines(&devs), &rewind_opts(false))?;
    let d = pool.directory()?;
    assert_eq!(d.props.get("user:before").map(String::as_str), Some("1"));
    assert!(!d.props.contains_key("user:after"), "{:?}", d.props);
    assert!(
        !d.features.contains_key(CHECKPOINT_FEATURE),
        "{:?}",
        d.features
    );
    assert!(d.checkpoint_ub.is_none());
    verify_pre(&pool, true)?;
    Ok(())
}

/// E.19 checkpoint_zdb: the checkpointed uberblock is visible in the current state and absent
/// from the checkpointed one; the checkpointed state shows the volume destroyed since; the same
/// holds after an export; after a discard there is nothing to inspect.
#[test]
fn e19_inspect_checkpointed_state() -> anyhow::Result<()> {
    let devs = new_devs(1);
    let pool = Pool::create("tank", engines(&devs), &copts())?;
    populate(&pool)?;
    pool.checkpoint()?;
    let txg = pool.checkpoint_status().txg;
    change_state(&pool)?;
    // `zdb P`: "Checkpointed uberblock found", fs1 absent; verify walks both states.
    let d = pool.directory()?;
    assert!(d.checkpoint_ub.is_some(), "checkpointed uberblock found");
    assert!(!d.volumes.contains_key("fs1"));
    let rep = pool.verify()?;
    assert!(rep.is_clean(), "{:?}", rep.errors);
    assert_eq!(rep.checkpoint_bytes, pool.checkpoint_status().space);
    assert!(rep.checkpoint_bytes > 0);
    pool.export()?;
    let found = Pool::discover(engines(&devs), &popts())?;
    assert_eq!(found.len(), 1, "{found:?}");
    // Twice: the read-only look at the checkpointed state changes nothing.
    for _ in 0..2 {
        exported_inspection(&devs, txg)?;
    }
    let pool = Pool::import(engines(&devs), &iopts())?;
    pool.discard_checkpoint()?;
    pool.wait_discard()?;
    // No checkpoint line any more; `zdb -k` fails.
    assert!(pool.directory()?.checkpoint_ub.is_none());
    assert_eq!(pool.verify()?.checkpoint_bytes, 0);
    pool.export()?;
    let e = Pool::import(engines(&devs), &rewind_opts(true)).unwrap_err();
    assert!(matches!(e, PoolError::NoCheckpoint), "{e}");
    Ok(())
}

/// The `zdb -e` half of E.19 (the pool is exported): `-k` is a read-only rewind import.
fn exported_inspection(devs: &[ringpool_driver::io::FaultyEngine], txg: u64) -> anyhow::Result<()> {
    // The checkpointed universe: fs1 exists, no checkpoint inside it.
    let ck = Pool::import(engines(devs), &rewind_opts(true))?;
    assert!(ck.open_volume("fs1").is_ok());
    assert_eq!(ck.checkpoint_status().state, CheckpointState::None);
    assert_eq!(ck.last_uberblock().map(|u| u.checkpoint_txg), Some(txg));
    verify_pre(&ck, false)?;
    ck.export()?;
    // The current universe still has the checkpoint.
    let cur = Pool::import(engines(devs), &iopts())?;
    assert_eq!(cur.checkpoint_status().state, CheckpointState::Exists);
    assert_eq!(cur.checkpoint_status().txg, txg);
    assert!(cur.open_volume("fs1").is_err());
    cur.export()?;
    Ok(())
}

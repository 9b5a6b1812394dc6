//! Checkpointed frees under churn (reference E.16, E.17, derived 20, 21, 22). Scenario map:
//! `pool_checkpoint.rs`.

mod pool_common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use pool_common::ckpt::*;
use pool_common::{copts, copts_with, engines, pattern, popts, rcfg};
use ringpool_driver::io;
use ringpool_driver::pool::{CreateOptions, Pool};

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

/// E.17 checkpoint_indirect, ported: ringpool has no device removal (hence no indirect
/// devices); the part that carries over is a checkpoint of a pool whose configuration grew
/// (a device added, data spread over both) followed by fragmenting churn: verify checks every
/// checkpoint-held extent against both states, and the rewind gives back the data.
#[test]
fn e17_grown_pool_churn_and_verify() -> anyhow::Result<()> {
    let devs = new_devs(2);
    let pool = Pool::create("tank", engines(&devs[..1]), &copts())?;
    populate(&pool)?;
    pool.add_device(Arc::new(devs[1].clone()), None, None)?;
    pool.create_volume("churn", 24 << 20, BS)?;
    write(&pool, "churn", 0, &pattern(50, 16 << 20))?;
    pool.sync_blocking()?;
    assert!(pool.stats().devices.iter().all(|d| d.2.allocated > 0));
    let before = read(&pool, "churn", 0, 16 << 20)?;
    pool.checkpoint()?;
    change_state(&pool)?;
    let blocks = (24u64 << 20) / 4096;
    let v = pool.open_volume("churn")?;
    io::block_on(&rcfg(), async {
        for i in 0..3000u64 {
            let b = (i * 7919) % blocks;
            v.write(b * 4096, &pattern(900 + i, 4096), false).await?;
            if i.is_multiple_of(7) {
                v.punch(((i * 104_729) % blocks) * 4096, 4096, false)
                    .await?;
            }
        }
        v.flush().await
    })??;
    pool.sync_blocking()?;
    verify_clean(&pool)?;
    pool.export()?;
    let pool = Pool::import(engines(&devs), &rewind_opts(false))?;
    assert_eq!(read(&pool, "churn", 0, 16 << 20)?, before);
    verify_pre(&pool, true)?;
    Ok(())
}

/// Derived 21: frees issued in the checkpointed txg or earlier are ordinary frees, those after
/// it are held; checkpoint create races a writer that overwrites and trims all the time.
/// verify catches both mistakes: a held extent that the checkpointed state did not allocate
/// (a free of txg <= T routed to the checkpoint) and an extent the checkpointed state
/// allocates that is free now (a later free not routed).
#[test]
fn d21_frees_up_to_checkpoint_txg_are_not_held() -> anyhow::Result<()> {
    let devs = new_devs(1);
    let pool = Arc::new(Pool::create("tank", engines(&devs), &copts())?);
    populate(&pool)?;
    pool.create_volume("hot", 4 << 20, BS)?;
    write(&pool, "hot", 0, &pattern(5, 4 << 20))?;
    pool.sync_blocking()?;
    // Deterministic part: 4 MiB overwritten just before the checkpoint (the frees land in
    // the txg the checkpoint captures, or earlier) are not held; only metadata rewritten
    // since the checkpoint is.
    write(&pool, "hot", 0, &pattern(6, 4 << 20))?;
    pool.checkpoint()?;
    for _ in 0..3 {
        pool.sync_blocking()?;
    }
    let held = pool.checkpoint_status().space;
    assert!(held < 1 << 20, "{held} bytes held");
    verify_clean(&pool)?;
    // And 4 MiB overwritten after it are.
    write(&pool, "hot", 0, &pattern(7, 4 << 20))?;
    pool.sync_blocking()?;
    let now = pool.checkpoint_status().space;
    assert!(now >= held + (4 << 20), "{held} -> {now}");
    verify_clean(&pool)?;
    pool.discard_checkpoint()?;
    pool.wait_discard()?;
    // Racing part.
    for round in 0..3u64 {
        let stop = Arc::new(AtomicBool::new(false));
        let (p2, s2) = (Arc::clone(&pool), Arc::clone(&stop));
        let writer = std::thread::spawn(move || -> anyhow::Result<()> {
            let v = p2.open_volume("hot")?;
            let mut i = 0u64;
            io::block_on(&rcfg(), async {
                while !s2.load(Ordering::Relaxed) {
                    let b = (i * 7919 + round) % 1024;
                    v.write(b * 4096, &pattern(i, 4096), false).await?;
                    if i.is_multiple_of(5) {
                        v.punch(((i * 31) % 1024) * 4096, 4096, false).await?;
                    }
                    i += 1;
                }
                anyhow::Ok(())
            })??;
            Ok(())
        });
        std::thread::sleep(std::time::Duration::from_millis(20));
        pool.checkpoint()?;
        std::thread::sleep(std::time::Duration::from_millis(50));
        stop.store(true, Ordering::Relaxed);
        writer
            .join()
            .map_err(|_| anyhow::anyhow!("writer panicked"))??;
        pool.sync_blocking()?;
        verify_clean(&pool)?;
        pool.discard_checkpoint()?;
        pool.wait_discard()?;
        verify_clean(&pool)?;
    }
    Ok(())
}

/// Derived 22: churn with a checkpoint on large metaslabs makes their space maps long enough to
/// be condensed; condensing and reloading the metaslabs (export/import) must keep every held
/// range allocated. Filling the pool afterwards would overwrite checkpointed data if a reload
/// offered a held range: verify (I1-I3) and the rewound contents catch it.
#[test]
fn d22_condense_and_reload_never_expose_held_ranges() -> anyhow::Result<()> {
    let devs = new_devs(1);
    let opts = CreateOptions {
        ms_shift: Some(24),
        ..copts_with(popts())
    };
    let pool = Pool::create("tank", engines(&devs), &opts)?;
    pool.create_volume("churn", 20 << 20, BS)?;
    write(&pool, "churn", 0, &pattern(60, 20 << 20))?;
    pool.sync_blocking()?;
    let before = read(&pool, "churn", 0, 20 << 20)?;
    pool.checkpoint()?;
    let v = pool.open_volume("churn")?;
    // Overwrite and trim the same blocks over and over (each txg appends ALLOC and FREE runs to
    // the metaslab maps: long maps describing little, i.e. condense candidates).
    for round in 0..6u64 {
        io::block_on(&rcfg(), async {
            for i in 0..800u64 {
                let b = (i * 37 + round) % 1024;
                v.write(b * 4096, &pattern(round * 1000 + i, 4096), false)
                    .await?;
            }
            v.punch((round % 4) * 256 * 4096, 256 * 4096, false).await?;
            v.flush().await
        })??;
        pool.sync_blocking()?;
    }
    verify_clean(&pool)?;
    pool.export()?;
    let pool = Pool::import(engines(&devs), &pool_common::iopts())?;
    verify_clean(&pool)?;
    // Allocate everything the reloaded metaslabs offer.
    pool.create_volume("fill", 64 << 20, BS)?;
    let chunk = pattern(61, 1 << 20);
    let mut off = 0u64;
    while off < (64 << 20) && write(&pool, "fill", off, &chunk).is_ok() {
        off += 1 << 20;
        pool.sync_blocking()?;
    }
    assert!(off > 0);
    verify_clean(&pool)?;
    pool.export()?;
    let pool = Pool::import(engines(&devs), &rewind_opts(false))?;
    assert_eq!(read(&pool, "churn", 0, 20 << 20)?, before);
    verify_clean(&pool)?;
    Ok(())
}

//! Write-back (`Volume::write_back`, what the NBD server does with WRITEs without FUA): the
//! write returns before its device write, and still every later read and block-status query
//! sees it, a FLUSH after it makes it durable, and a device write that fails after the
//! acknowledgement suspends the pool so that no later FLUSH succeeds.

mod pool_common;

use pool_common::{create_one_shard, pattern, rcfg};
use std::sync::Arc;
use std::time::Duration;

use ringpool_driver::io::{self, FaultyEngine, IoBuf};
use ringpool_driver::pool::{Pool, PoolHealth};

const BS: u32 = 4096;
const LEN: usize = 128 << 10;

#[test]
fn acknowledged_writes_are_seen_by_reads_and_block_status_and_made_durable_by_flush(
) -> anyhow::Result<()> {
    let dev = FaultyEngine::new(64 << 20, 4096);
    // No timer sync: only the FLUSH below commits.
    let pool = create_one_shard("wb1", vec![Arc::new(dev.clone())], Duration::from_secs(60))?;
    let size = 4usize << 20;
    let vol = pool.create_volume("v", size as u64, BS)?;
    let (old, new, fresh) = (pattern(1, LEN), pattern(2, LEN), pattern(3, LEN));
    let durable = io::block_on(&rcfg(), async {
        vol.write(0, &old, false).await?;
        vol.flush().await?;
        // Overwrite committed data; a read right after the acknowledgement (the device write
        // has not even been issued: it runs in a task of its own) sees the new data.
        let (r, kept) = vol.write_back(0, IoBuf::from_slice(&new)).await;
        r?;
        anyhow::ensure!(kept.is_none(), "the write went the write-back way");
        let mut got = vec![0u8; LEN];
        vol.read(0, &mut got).await?;
        anyhow::ensure!(
            got == new,
            "a read after the acknowledgement sees the write"
        );
        // A hole written back is data for block status at once.
        let at = 1u64 << 20;
        let (r, kept) = vol.write_back(at, IoBuf::from_slice(&fresh)).await;
        r?;
        anyhow::ensure!(kept.is_none(), "the second write went the write-back way");
        let st = vol.block_status(at, LEN as u64).await?;
        anyhow::ensure!(
            st.iter().all(|e| !e.hole),
            "block status after the acknowledgement reports data: {st:?}"
        );
        // FLUSH right after: what the device holds once it returns has both writes.
        vol.flush().await?;
        anyhow::Ok(dev.durable_image())
    })??;
    drop(vol);
    pool.export()?;
    check_image(
        durable,
        vec![
            (
                0,
                new,
                "the flushed overwrite survives a crash after the flush".into(),
            ),
            (
                1 << 20,
                fresh,
                "the flushed write into a hole survives too".into(),
            ),
        ],
    )
}

#[test]
fn a_device_error_after_the_acknowledgement_suspends_the_pool() -> anyhow::Result<()> {
    let dev = FaultyEngine::new(64 << 20, 4096);
    let pool = create_one_shard("wb2", vec![Arc::new(dev.clone())], Duration::from_secs(60))?;
    let vol = pool.create_volume("v", 4 << 20, BS)?;
    let durable = io::block_on(&rcfg(), async {
        vol.write(0, &pattern(1, LEN), false).await?;
        vol.flush().await?;
        let durable = dev.durable_image();
        dev.inject_eio(0..64 << 20, false, true);
        // Nothing failed yet when the write is acknowledged...
        let (r, kept) = vol.write_back(0, IoBuf::from_slice(&pattern(2, LEN))).await;
        r?;
        anyhow::ensure!(kept.is_none(), "the write went the write-back way");
        // ...so the FLUSH after it must fail.
        anyhow::ensure!(
            vol.flush().await.is_err(),
            "FLUSH after a lost acknowledged write fails"
        );
        anyhow::ensure!(
            vol.write(8 << 10, &pattern(3, 4096), true).await.is_err(),
            "so does a FUA write"
        );
        anyhow::Ok(durable)
    })??;
    match pool.health() {
        PoolHealth::Suspended { reason, .. } => assert!(
            reason.contains("acknowledged"),
            "suspended for the lost write, not a later sync: {reason}"
        ),
        h => panic!("pool not suspended: {h}"),
    }
    dev.clear_faults();
    drop(vol);
    let _ = pool.export();
    // The device still holds the state of the last successful flush.
    check_image(
        durable,
        vec![(0, pattern(1, LEN), "the last flushed data is intact".into())],
    )
}

/// A clean export while acknowledged write-backs have not reached the device yet (their
/// tasks cannot run: the reactor is busy) waits for them and commits them: nothing
/// acknowledged is lost on a clean shutdown, and the pool imports clean.
#[test]
fn an_export_with_write_backs_in_flight_commits_them() -> anyhow::Result<()> {
    let dev = FaultyEngine::new(64 << 20, 4096);
    let pool = create_one_shard("wb3", vec![Arc::new(dev.clone())], Duration::from_secs(60))?;
    let vol = pool.create_volume("v", 4 << 20, BS)?;
    let n = 8u64;
    let (go, started) = std::sync::mpsc::channel::<()>();
    let exporter = std::thread::spawn(move || {
        started.recv().ok();
        pool.export()
    });
    io::block_on(&rcfg(), async {
        for k in 0..n {
            let at = k * LEN as u64;
            let (r, kept) = vol
                .write_back(at, IoBuf::from_slice(&pattern(k + 1, LEN)))
                .await;
            r?;
            anyhow::ensure!(kept.is_none(), "write {k} went the write-back way");
        }
        go.send(())?;
        // Keep the reactor from running the write-back tasks while the export starts its
        // final sync (a blocking sleep: no yield).
        std::thread::sleep(Duration::from_millis(300));
        while !exporter.is_finished() {
            io::sleep(Duration::from_millis(5)).await;
        }
        anyhow::Ok(())
    })??;
    drop(vol);
    exporter
        .join()
        .map_err(|_| anyhow::anyhow!("export thread panicked"))??;
    check_image(
        dev.durable_image(),
        (0..n)
            .map(|k| {
                (
                    k * LEN as u64,
                    pattern(k + 1, LEN),
                    format!("write {k}, acknowledged before the export, is on disk after it"),
                )
            })
            .collect(),
    )
}

/// Write-back tasks dropped with their reactor (it stopped before they ran) lose acknowledged
/// writes: that must not be silent. The pool is suspended (no FLUSH succeeds, the export
/// reports it) and the devices keep the last committed state, which imports clean.
#[test]
fn write_backs_cancelled_with_their_reactor_suspend_the_pool() -> anyhow::Result<()> {
    let dev = FaultyEngine::new(64 << 20, 4096);
    let pool = create_one_shard("wb4", vec![Arc::new(dev.clone())], Duration::from_secs(60))?;
    let vol = pool.create_volume("v", 4 << 20, BS)?;
    io::block_on(&rcfg(), async {
        vol.write(0, &pattern(1, LEN), false).await?;
        vol.flush().await?;
        let (r, kept) = vol.write_back(0, IoBuf::from_slice(&pattern(2, LEN))).await;
        r?;
        anyhow::ensure!(kept.is_none(), "the write went the write-back way");
        // Returning ends the reactor: the task that would write it back is dropped.
        anyhow::Ok(())
    })??;
    match pool.health() {
        PoolHealth::Suspended { reason, .. } => assert!(
            reason.contains("cancelled"),
            "suspended for the cancelled write: {reason}"
        ),
        h => panic!("an acknowledged write was dropped and the pool is {h}"),
    }
    let flushed = io::block_on(&rcfg(), vol.flush())?;
    assert!(flushed.is_err(), "no FLUSH succeeds after the loss");
    drop(vol);
    assert!(pool.export().is_err(), "the export reports the loss");
    check_image(
        dev.durable_image(),
        vec![(0, pattern(1, LEN), "the last flushed data is intact".into())],
    )
}

/// A gathered batch written back (`Volume::write_gather_back`, what the NBD server does with
/// small WRITEs that arrive together): acknowledged before its device write, seen by reads
/// and block status at once, made durable by the FLUSH after it; the write of the batch that
/// cannot be gathered (a partial block) is written too, in order after the earlier write it
/// overlaps.
#[test]
fn a_gathered_batch_written_back_is_seen_at_once_and_made_durable_by_flush() -> anyhow::Result<()> {
    let dev = FaultyEngine::new(64 << 20, 4096);
    let pool = create_one_shard("wb5", vec![Arc::new(dev.clone())], Duration::from_secs(60))?;
    let size = 4usize << 20;
    let vol = pool.create_volume("v", size as u64, BS)?;
    let bs = BS as usize;
    // Scattered whole blocks, one of them in a hole (block 700).
    let blocks = [513usize, 3, 700, 41, 42, 900];
    let mut model = pattern(1, size);
    let durable = io::block_on(&rcfg(), async {
        vol.write(0, &model, false).await?;
        vol.flush().await?;
        vol.punch(700 * BS as u64, u64::from(BS), false).await?;
        model[700 * bs..701 * bs].fill(0);
        let writes: Vec<(u64, IoBuf)> = blocks
            .iter()
            .zip(10u64..)
            .map(|(&b, seed)| ((b * bs) as u64, IoBuf::from_slice(&pattern(seed, bs))))
            .collect();
        let before = dev.event_count();
        let results = vol.write_gather_back(writes).await;
        anyhow::ensure!(
            dev.event_count() == before,
            "the batch is acknowledged before its device write"
        );
        anyhow::ensure!(results.len() == blocks.len(), "one result per write");
        for ((&b, seed), (r, _)) in blocks.iter().zip(10u64..).zip(results) {
            r?;
            model[b * bs..(b + 1) * bs].copy_from_slice(&pattern(seed, bs));
        }
        let mut got = vec![0u8; size];
        vol.read(0, &mut got).await?;
        anyhow::ensure!(
            got == model,
            "a read after the acknowledgement sees the batch"
        );
        let st = vol.block_status(700 * BS as u64, u64::from(BS)).await?;
        anyhow::ensure!(
            st.iter().all(|e| !e.hole),
            "the hole written back is data for block status at once: {st:?}"
        );
        // A batch with a partial write overlapping an earlier one: gathered and not.
        let part = pattern(30, 100);
        let writes = vec![
            ((3 * bs) as u64, IoBuf::from_slice(&pattern(31, bs))),
            ((3 * bs + 50) as u64, IoBuf::from_slice(&part)),
            ((5 * bs) as u64, IoBuf::from_slice(&pattern(32, bs))),
        ];
        for (r, _) in vol.write_gather_back(writes).await {
            r?;
        }
        model[3 * bs..4 * bs].copy_from_slice(&pattern(31, bs));
        model[3 * bs + 50..3 * bs + 150].copy_from_slice(&part);
        model[5 * bs..6 * bs].copy_from_slice(&pattern(32, bs));
        vol.read(0, &mut got).await?;
        anyhow::ensure!(
            got == model,
            "the partial write lands after the gathered one"
        );
        vol.flush().await?;
        anyhow::Ok(dev.durable_image())
    })??;
    drop(vol);
    pool.export()?;
    check_image(
        durable,
        vec![(
            0,
            model,
            "the flushed batches survive a crash after the flush".into(),
        )],
    )
}

/// A gathered batch acknowledged before its device write failed: the pool is suspended and
/// no FLUSH after it succeeds.
#[test]
fn a_gathered_batch_lost_after_its_acknowledgement_fails_the_flush() -> anyhow::Result<()> {
    let dev = FaultyEngine::new(64 << 20, 4096);
    let pool = create_one_shard("wb6", vec![Arc::new(dev.clone())], Duration::from_secs(60))?;
    let vol = pool.create_volume("v", 4 << 20, BS)?;
    let bs = BS as usize;
    io::block_on(&rcfg(), async {
        vol.write(0, &pattern(1, LEN), false).await?;
        vol.flush().await?;
        dev.inject_eio(0..64 << 20, false, true);
        let writes: Vec<(u64, IoBuf)> = [7usize, 2, 19]
            .iter()
            .map(|&b| ((b * bs) as u64, IoBuf::from_slice(&pattern(5, bs))))
            .collect();
        for (r, _) in vol.write_gather_back(writes).await {
            r?;
        }
        anyhow::ensure!(
            vol.flush().await.is_err(),
            "FLUSH after a lost acknowledged batch fails"
        );
        anyhow::ensure!(vol.flush().await.is_err(), "and so does the next");
        anyhow::Ok(())
    })??;
    assert!(
        matches!(pool.health(), PoolHealth::Suspended { .. }),
        "the pool is suspended"
    );
    dev.clear_faults();
    drop(vol);
    assert!(pool.export().is_err(), "the export reports the loss");
    Ok(())
}

/// Imports a pool from `image` (what a crash left on the device), checks that each
/// `(offset, data, what)` reads back as `data`, that the pool verifies clean, and exports it.
fn check_image(image: Vec<u8>, expect: Vec<(u64, Vec<u8>, String)>) -> anyhow::Result<()> {
    let pool = import_image(image)?;
    let vol = pool.open_volume("v")?;
    io::block_on(&rcfg(), async {
        for (off, data, what) in &expect {
            let mut got = vec![0u8; data.len()];
            vol.read(*off, &mut got).await?;
            anyhow::ensure!(&got == data, "{what}");
        }
        anyhow::Ok(())
    })??;
    drop(vol);
    assert!(pool.verify()?.is_clean());
    pool.export()?;
    Ok(())
}

/// Imports a pool from a device image (what a crash left on the device).
fn import_image(image: Vec<u8>) -> anyhow::Result<Pool> {
    Ok(Pool::import(
        vec![Arc::new(FaultyEngine::from_image(image, 4096))],
        &pool_common::iopts(),
    )?)
}

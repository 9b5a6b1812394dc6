//! Gathered writes (`Volume::write_gather`, what the NBD server uses for small WRITEs that
//! arrive together): one device write for a batch of scattered whole-block writes, the same
//! result as the writes done one by one in the given order (overlaps, partial blocks, blocks
//! written twice), each write's own failure, and durability after a flush.

// Test arithmetic on small sizes: the casts cannot truncate here.
#![allow(clippy::cast_possible_truncation)]

mod pool_common;

use pool_common::{create_one_shard, pattern, rcfg};
use std::sync::Arc;
use std::time::Duration;

use ringpool_driver::io::{self, FaultEvent, FaultyEngine, IoBuf};
use ringpool_driver::pool::{Pool, Volume};

fn device_writes(dev: &FaultyEngine) -> usize {
    dev.events()
        .iter()
        .filter(|e| matches!(e, FaultEvent::Write { .. }))
        .count()
}

async fn read_all(vol: &Volume, size: usize) -> anyhow::Result<Vec<u8>> {
    let mut out = vec![0u8; size];
    vol.read(0, &mut out).await?;
    Ok(out)
}

/// `(offset, data)` writes as a batch, checked against applying them one by one in order.
async fn gather_and_check(
    vol: &Volume,
    model: &mut [u8],
    writes: &[(usize, Vec<u8>)],
) -> anyhow::Result<()> {
    let batch: Vec<(u64, IoBuf)> = writes
        .iter()
        .map(|(o, d)| (*o as u64, IoBuf::from_slice(d)))
        .collect();
    let results = vol.write_gather(batch).await;
    anyhow::ensure!(results.len() == writes.len(), "one result per write");
    for (k, ((o, d), (r, back))) in writes.iter().zip(results).enumerate() {
        r.map_err(|e| anyhow::anyhow!("write {k} at {o}: {e}"))?;
        anyhow::ensure!(
            back[..] == d[..],
            "write {k}: its buffer comes back unchanged"
        );
        model[*o..*o + d.len()].copy_from_slice(d);
    }
    let got = read_all(vol, model.len()).await?;
    if got != model {
        let first = (0..got.len()).find(|&i| got[i] != model[i]).unwrap_or(0);
        anyhow::bail!("volume differs from the model at byte {first}");
    }
    Ok(())
}

#[test]
fn scattered_block_writes_become_one_device_write() -> anyhow::Result<()> {
    let dev = FaultyEngine::new(64 << 20, 4096);
    let pool = create_one_shard("g1", vec![Arc::new(dev.clone())], Duration::from_secs(10))?;
    let size = 8usize << 20;
    let vol = pool.create_volume("v", size as u64, 4096)?;
    io::block_on(&rcfg(), async {
        let mut model = vec![0u8; size];
        // 24 single blocks far apart, in no particular order, and a few multi-block writes.
        let mut writes: Vec<(usize, Vec<u8>)> = (0..24)
            .map(|k| {
                (
                    (k * 37 % 24) * 300 * 1024 / 4096 * 4096,
                    pattern(k as u64 + 1, 4096),
                )
            })
            .collect();
        writes.push((7 << 20, pattern(100, 3 * 4096)));
        writes.push((5 << 20, pattern(101, 16 * 4096)));
        let before = device_writes(&dev);
        gather_and_check(&vol, &mut model, &writes).await?;
        let n = device_writes(&dev) - before;
        // One by one these are 26 device writes; gathered, one (two if the allocator had to
        // split the extent).
        anyhow::ensure!(n <= 2, "{n} device writes for one gathered batch");
        vol.flush().await?;
        anyhow::Ok(())
    })??;
    assert!(pool.verify()?.is_clean());
    pool.export()?;
    Ok(())
}

#[test]
fn batch_equals_writes_in_order_with_overlaps_and_partial_blocks() -> anyhow::Result<()> {
    let dev = FaultyEngine::new(64 << 20, 4096);
    let pool = create_one_shard("g2", vec![Arc::new(dev.clone())], Duration::from_secs(10))?;
    let size = 1usize << 20;
    let vol = pool.create_volume("v", size as u64, 4096)?;
    io::block_on(&rcfg(), async {
        let mut model = pattern(9, size);
        vol.write(0, &model, false).await?;
        let b = 4096;
        let writes = vec![
            // A later write inside an earlier one lands last...
            (b, pattern(1, 4 * b)),
            (2 * b, pattern(2, b)),
            // ...and an earlier one under a later, larger one is overwritten by it.
            (20 * b, pattern(3, b)),
            (19 * b, pattern(4, 3 * b)),
            // A partial block (read-modify-write) overlapping a gathered block.
            (40 * b, pattern(5, b)),
            (40 * b + 100, pattern(6, 300)),
            // The same block twice.
            (60 * b, pattern(7, b)),
            (60 * b, pattern(8, b)),
            // Plain scattered blocks.
            (80 * b, pattern(10, b)),
            (3 * b / 2 + 200 * b, pattern(11, 2 * b)),
            (150 * b, pattern(12, 2 * b)),
        ];
        gather_and_check(&vol, &mut model, &writes).await?;
        // Reversed order: the other write of each overlapping pair wins now.
        let mut rev = writes.clone();
        rev.reverse();
        for (k, w) in rev.iter_mut().enumerate() {
            w.1 = pattern(50 + k as u64, w.1.len());
        }
        gather_and_check(&vol, &mut model, &rev).await?;
        vol.flush().await?;
        anyhow::Ok(())
    })??;
    assert!(pool.verify()?.is_clean());
    pool.export()?;
    Ok(())
}

#[test]
fn each_write_reports_its_own_failure_and_flushed_batches_survive() -> anyhow::Result<()> {
    let dev = FaultyEngine::new(64 << 20, 4096);
    let pool = create_one_shard("g3", vec![Arc::new(dev.clone())], Duration::from_secs(10))?;
    let size = 1usize << 20;
    let vol = pool.create_volume("v", size as u64, 4096)?;
    let model = io::block_on(&rcfg(), async {
        let mut model = vec![0u8; size];
        let writes: Vec<(usize, Vec<u8>)> = (0..16)
            .map(|k| (k * 5 * 4096, pattern(k as u64 + 20, 4096)))
            .collect();
        gather_and_check(&vol, &mut model, &writes).await?;
        // Out of range and empty writes fail alone; the valid ones around them are stored.
        let batch = vec![
            (0u64, IoBuf::from_slice(&pattern(40, 4096))),
            (size as u64, IoBuf::from_slice(&pattern(41, 4096))),
            (8192, IoBuf::from_slice(&pattern(42, 4096))),
            (size as u64 - 2048, IoBuf::from_slice(&pattern(43, 4096))),
        ];
        let r = vol.write_gather(batch).await;
        anyhow::ensure!(r.len() == 4);
        anyhow::ensure!(r[0].0.is_ok() && r[2].0.is_ok(), "valid writes succeed");
        anyhow::ensure!(
            r[1].0.is_err() && r[3].0.is_err(),
            "out-of-range writes fail"
        );
        model[..4096].copy_from_slice(&pattern(40, 4096));
        model[8192..12288].copy_from_slice(&pattern(42, 4096));
        vol.flush().await?;
        anyhow::Ok(model)
    })??;
    assert!(pool.verify()?.is_clean());
    drop(vol);
    pool.export()?;
    // What the device holds after the flush: the batch is there.
    let image = FaultyEngine::from_image(dev.durable_image(), 4096);
    let pool = Pool::import(vec![Arc::new(image)], &pool_common::iopts())?;
    let vol = pool.open_volume("v")?;
    let got = io::block_on(&rcfg(), async { read_all(&vol, size).await })??;
    assert!(
        got == model,
        "flushed batches survive an import of the durable image"
    );
    pool.export()?;
    Ok(())
}

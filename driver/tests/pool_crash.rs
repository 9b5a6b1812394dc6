//! Power-loss crash tests: the real pool on the fault-injecting in-memory device.
//!
//! A seeded workload of writes (whole and partial blocks), trims, write-zeroes, FUA writes and
//! flushes runs on two volumes while the sync thread commits txgs (short timer). The device
//! logs every write and flush. Crash images are then built at every flush point and at random
//! points in between, with random subsets of the unflushed writes dropped and multi-sector
//! writes torn. Each image must import; every block must read back as one of the versions the
//! model allows (the version acknowledged before the last completed FLUSH, or a newer one —
//! never garbage, never another block's data); verify must be clean.
//!
//! Odd seeds defer every sync-time free to the next txg (the persisted deferred free list).
//!
//! `RINGPOOL_CRASH_SEED=<n>` replays one workload seed; `RINGPOOL_CRASH_IMAGES=<n>` sets the
//! number of crash images per seed (default 560, four seeds = 2240 images).

// Test arithmetic on small in-memory sizes: the casts cannot truncate here.
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::type_complexity
)]

mod pool_common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use ringpool_driver::io::{self, BlockEngine, FaultEvent, FaultyEngine};
use ringpool_driver::pool::{CreateOptions, ImportOptions, Pool, PoolError, PoolOptions, Volume};

use pool_common::rcfg;

const DEV_SIZE: u64 = 64 << 20;
const SECTOR: u32 = 512;

/// Sync timer `timeout_ms`, and a small tree-block cache so eviction is exercised.
fn popts(timeout_ms: u64) -> PoolOptions {
    PoolOptions {
        cache_bytes: 1 << 20,
        ..pool_common::popts_with(timeout_ms, 2)
    }
}

/// The workload's pool: a 15 ms sync timer; odd seeds defer every sync-time free to the next
/// txg (`deferred_free_pass = 1`), so crash images also cut through persisted deferred frees.
fn workload_opts(seed: u64) -> PoolOptions {
    let mut o = popts(15);
    if seed % 2 == 1 {
        o.txg.deferred_free_pass = 1;
    }
    o
}

/// The states a block went through: (content, acknowledged-before-this-op-index).
#[derive(Debug, Default, Clone)]
struct BlockHist {
    /// Every state in order; state 0 is all zeroes.
    states: Vec<Arc<Vec<u8>>>,
}

#[derive(Debug)]
struct Model {
    bs: Vec<usize>,
    /// (volume, block) -> history.
    blocks: HashMap<(usize, u64), BlockHist>,
    /// Durability points: (device events when the flush returned, required state index per
    /// block as of when the flush was issued).
    flushes: Vec<(usize, HashMap<(usize, u64), usize>)>,
}

impl Model {
    fn current(&self, vol: usize, blk: u64) -> Arc<Vec<u8>> {
        self.blocks
            .get(&(vol, blk))
            .and_then(|h| h.states.last().cloned())
            .unwrap_or_else(|| Arc::new(vec![0u8; self.bs[vol]]))
    }

    fn push(&mut self, vol: usize, blk: u64, content: Vec<u8>) {
        let bs = self.bs[vol];
        let h = self.blocks.entry((vol, blk)).or_insert_with(|| BlockHist {
            states: vec![Arc::new(vec![0u8; bs])],
        });
        h.states.push(Arc::new(content));
    }

    fn snapshot(&self) -> HashMap<(usize, u64), usize> {
        self.blocks
            .iter()
            .map(|(k, h)| (*k, h.states.len() - 1))
            .collect()
    }
}

fn stamp(rng: &mut SmallRng, vol: usize, blk: u64, len: usize) -> Vec<u8> {
    // A unique header (volume, block, random tag) then random bytes: no two writes alike.
    let mut v = vec![0u8; len];
    rng.fill(&mut v[..]);
    let tag: u64 = rng.random();
    let hdr = [vol as u64, blk, tag];
    for (i, w) in hdr.iter().enumerate() {
        if (i + 1) * 8 <= len {
            v[i * 8..(i + 1) * 8].copy_from_slice(&w.to_le_bytes());
        }
    }
    v
}

/// Runs the workload; returns the image before it, the device's event log and the model.
fn run_workload(seed: u64, ops: usize) -> anyhow::Result<(Arc<Vec<u8>>, Vec<FaultEvent>, Model)> {
    let dev = FaultyEngine::new(DEV_SIZE, SECTOR);
    let engines: Vec<Arc<dyn BlockEngine>> = vec![Arc::new(dev.clone())];
    let pool = Pool::create(
        "crash",
        engines,
        &CreateOptions {
            pool: workload_opts(seed),
            ashift: Some(12),
            ms_shift: None,
        },
    )?;
    let vols = [
        pool.create_volume("a", 2 << 20, 4096)?,
        pool.create_volume("b", 2 << 20, 16384)?,
    ];
    pool.sync_blocking()?;
    // Start the log after setup: earlier crash points are covered by the creation tests.
    let base = Arc::new(dev.image());
    dev.reset_log();
    let mut model = Model {
        bs: vec![4096, 16384],
        blocks: HashMap::new(),
        flushes: vec![(0, HashMap::new())],
    };
    let mut rng = SmallRng::seed_from_u64(seed);
    io::block_on(&rcfg(), async {
        for _ in 0..ops {
            let vi = rng.random_range(0..2usize);
            let vol: &Volume = &vols[vi];
            let bs = model.bs[vi] as u64;
            let nblocks = vol.size() / bs;
            let op = rng.random_range(0..100u32);
            if op < 55 {
                // Whole-block write of 1..4 blocks (sometimes FUA).
                let n = rng.random_range(1..=4u64).min(nblocks);
                let first = rng.random_range(0..=nblocks - n);
                let mut data = Vec::new();
                let mut contents = Vec::new();
                for b in first..first + n {
                    let c = stamp(&mut rng, vi, b, bs as usize);
                    data.extend_from_slice(&c);
                    contents.push((b, c));
                }
                let fua = rng.random_range(0..10) == 0;
                let snap = fua.then(|| model.snapshot());
                vol.write(first * bs, &data, fua).await?;
                for (b, c) in contents {
                    model.push(vi, b, c);
                }
                if let Some(mut s) = snap {
                    // FUA: this write is durable too.
                    for b in first..first + n {
                        let idx = model.blocks[&(vi, b)].states.len() - 1;
                        s.insert((vi, b), idx);
                    }
                    model.flushes.push((dev.event_count(), s));
                }
            } else if op < 75 {
                // Partial write inside one block (read-modify-write), sector aligned or not.
                let b = rng.random_range(0..nblocks);
                let off = rng.random_range(0..bs - 1);
                let len = rng.random_range(1..=(bs - off).min(3000));
                let bytes = stamp(&mut rng, vi, b, len as usize);
                vol.write(b * bs + off, &bytes, false).await?;
                let mut c = model.current(vi, b).as_ref().clone();
                c[off as usize..(off + len) as usize].copy_from_slice(&bytes);
                model.push(vi, b, c);
            } else if op < 85 {
                // Trim / write-zeroes of a range (whole blocks become holes, edges zeroed).
                let start = rng.random_range(0..vol.size() - 1);
                let len = rng.random_range(1..=(vol.size() - start).min(5 * bs));
                vol.punch(start, len, false).await?;
                let end = start + len;
                for b in start / bs..end.div_ceil(bs) {
                    let bstart = b * bs;
                    let lo = start.max(bstart) - bstart;
                    let hi = end.min(bstart + bs) - bstart;
                    let mut c = model.current(vi, b).as_ref().clone();
                    c[lo as usize..hi as usize].fill(0);
                    model.push(vi, b, c);
                }
            } else if op < 95 {
                let snap = model.snapshot();
                vol.flush().await?;
                model.flushes.push((dev.event_count(), snap));
            } else {
                // Let the timer-driven syncs run between writes.
                io::sleep(Duration::from_millis(rng.random_range(1..20))).await;
            }
        }
        Ok::<(), PoolError>(())
    })??;
    // Crash: stop the sync thread without a final sync or label update.
    pool.abandon();
    Ok((base, dev.events(), model))
}

/// Imports a crash image and checks it against the model.
fn check_image(
    img: pool_common::SparseImage,
    at: usize,
    model: &Model,
    writable: bool,
) -> anyhow::Result<()> {
    let engines: Vec<Arc<dyn BlockEngine>> = vec![Arc::new(img)];
    let pool = Pool::import(
        engines,
        &ImportOptions {
            pool: popts(10_000),
            force: true,
            read_only: !writable,
            ..Default::default()
        },
    )
    .map_err(|e| anyhow::anyhow!("import failed: {e}"))?;
    // The newest durability point at or before the crash.
    let required = model
        .flushes
        .iter()
        .rev()
        .find(|(ev, _)| *ev <= at)
        .map(|(_, s)| s.clone())
        .unwrap_or_default();
    let vols = [pool.open_volume("a")?, pool.open_volume("b")?];
    io::block_on(&rcfg(), async {
        for (&(vi, blk), hist) in &model.blocks {
            let bs = model.bs[vi];
            let mut got = vec![0u8; bs];
            vols[vi]
                .read(blk * bs as u64, &mut got)
                .await
                .map_err(|e| anyhow::anyhow!("read vol {vi} block {blk}: {e}"))?;
            let min = required.get(&(vi, blk)).copied().unwrap_or(0);
            let ok = hist.states[min..]
                .iter()
                .any(|s| s.as_slice() == got.as_slice());
            if !ok {
                let older = hist.states[..min]
                    .iter()
                    .any(|s| s.as_slice() == got.as_slice());
                anyhow::bail!(
                    "vol {vi} block {blk}: content matches no allowed state (required >= {min} of {}; matches an older one: {older})",
                    hist.states.len()
                );
            }
        }
        Ok::<(), anyhow::Error>(())
    })??;
    if writable {
        // The pool keeps working after the crash.
        let v = &vols[0];
        io::block_on(&rcfg(), async {
            let data = vec![0xabu8; 8192];
            v.write(0, &data, true).await?;
            let mut r = vec![0u8; 8192];
            v.read(0, &mut r).await?;
            assert_eq!(r, data);
            Ok::<(), PoolError>(())
        })??;
    }
    let rep = pool.verify()?;
    anyhow::ensure!(rep.is_clean(), "verify: {:?}", rep.errors);
    pool.abandon();
    Ok(())
}

fn crash_points(events: &[FaultEvent], rng: &mut SmallRng, images: usize) -> Vec<usize> {
    let total = events.len();
    let mut pts = Vec::new();
    // Every flush point (just after it and just before it), then random points.
    for f in pool_common::flush_points(events) {
        pts.push(f + 1);
        pts.push(f);
    }
    pts.truncate(images);
    while pts.len() < images {
        pts.push(rng.random_range(0..=total));
    }
    pts.sort_unstable();
    pts
}

fn run_seed(seed: u64, images: usize) -> anyhow::Result<usize> {
    let t0 = std::time::Instant::now();
    let (base, events, model) = run_workload(seed, 260)?;
    let mut rng = SmallRng::seed_from_u64(seed ^ 0x5eed);
    let pts = crash_points(&events, &mut rng, images);
    let mut n = 0;
    for (i, &at) in pts.iter().enumerate() {
        let (drop_subset, tear) = (i % 3 != 0, i % 2 == 0);
        let img_seed = seed.wrapping_mul(1_000_003).wrapping_add(i as u64);
        let img = pool_common::crash_image(&base, &events, at, img_seed, drop_subset, tear, SECTOR);
        check_image(img, at, &model, i % 25 == 0).map_err(|e| {
            anyhow::anyhow!(
                "seed {seed} image {i} (event {at}/{}, image seed {img_seed}, drop {drop_subset} tear {tear}): {e}",
                events.len()
            )
        })?;
        n += 1;
    }
    println!(
        "seed {seed}: {} events, {} flushes, {n} images in {:?}",
        events.len(),
        pool_common::flush_points(&events).len(),
        t0.elapsed()
    );
    Ok(n)
}

#[test]
fn power_loss_crash_images() -> anyhow::Result<()> {
    let images: usize = std::env::var("RINGPOOL_CRASH_IMAGES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(560);
    let seeds: Vec<u64> = match std::env::var("RINGPOOL_CRASH_SEED") {
        Ok(s) => vec![s.parse()?],
        Err(_) => {
            let base: u64 = rand::random::<u32>().into();
            (0..4).map(|i| base * 4 + i).collect()
        }
    };
    let mut total = 0;
    for seed in seeds {
        println!("crash workload seed {seed} (replay: RINGPOOL_CRASH_SEED={seed})");
        total += run_seed(seed, images)?;
    }
    println!("{total} crash images imported and checked");
    Ok(())
}

//! The volume read path end to end: multi-block reads merged into device-contiguous runs,
//! across holes, data and partial blocks, read straight into a caller's buffer (the NBD reply
//! buffer layout), a checksum error in the middle of a large read naming the damaged block,
//! and reads racing overwrites (copy-on-write reuse of freed space) never returning another
//! block's bytes.

// Test arithmetic on small sizes: the casts cannot truncate here.
#![allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]

mod pool_common;

use pool_common::{create_one_shard, file_engine, pattern, rcfg, volume_data_blocks};
use std::cell::RefCell;
use std::ops::Range;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use ringpool_driver::io::{self, FaultyEngine, IoBuf};
use ringpool_driver::pool::Volume;

/// Hole ranges of `model` (None = hole) within `[off, off+len)`, relative to `off`.
fn model_holes(holes: &[bool], bs: usize, off: usize, len: usize) -> Vec<Range<usize>> {
    let mut out: Vec<Range<usize>> = Vec::new();
    let mut pos = off;
    while pos < off + len {
        let b = pos / bs;
        let end = ((b + 1) * bs).min(off + len);
        if holes[b] {
            let r = pos - off..end - off;
            match out.last_mut() {
                Some(l) if l.end == r.start => l.end = r.end,
                _ => out.push(r),
            }
        }
        pos = end;
    }
    out
}

/// Writes data, punches holes, overwrites pieces unaligned, then checks many reads (aligned,
/// unaligned, spanning holes, long) against a model, through `read_holes` and `read_into`
/// at the NBD reply-buffer offset (bytes before the range untouched).
async fn check_mixed_reads(vol: &Volume) -> anyhow::Result<()> {
    let bs = vol.block_size() as usize;
    let nblk = 512usize;
    let size = nblk * bs;
    let mut model = vec![0u8; size];
    let mut holes = vec![true; nblk];
    // Sequential data over most of the range (contiguous on the device: merged reads).
    let data = pattern(1, 384 * bs);
    vol.write(0, &data, false).await?;
    model[..data.len()].copy_from_slice(&data);
    holes[..384].iter_mut().for_each(|h| *h = false);
    // A few scattered single blocks (not contiguous with their neighbours).
    for (i, b) in [400usize, 402, 450, 511].into_iter().enumerate() {
        let d = pattern(10 + i as u64, bs);
        vol.write((b * bs) as u64, &d, false).await?;
        model[b * bs..(b + 1) * bs].copy_from_slice(&d);
        holes[b] = false;
    }
    // Holes inside the sequential part.
    for (lo, hi) in [(10usize, 12usize), (100, 101), (200, 232)] {
        vol.punch((lo * bs) as u64, ((hi - lo) * bs) as u64, false)
            .await?;
        model[lo * bs..hi * bs].fill(0);
        holes[lo..hi].iter_mut().for_each(|h| *h = true);
    }
    // Unaligned overwrites (read-modify-write), one of them into a hole.
    for (k, (off, len)) in [
        (5 * bs + 100, 3000usize),
        (11 * bs + 7, 513),
        (300 * bs - 1, 2),
    ]
    .into_iter()
    .enumerate()
    {
        let d = pattern(100 + k as u64, len);
        vol.write(off as u64, &d, false).await?;
        model[off..off + len].copy_from_slice(&d);
        holes[off / bs..=(off + len - 1) / bs]
            .iter_mut()
            .for_each(|h| *h = false);
    }
    // Rewrite a block in the middle of a run: breaks device contiguity there.
    let d = pattern(7, bs);
    vol.write((50 * bs) as u64, &d, false).await?;
    model[50 * bs..51 * bs].copy_from_slice(&d);
    let reads: &[(usize, usize)] = &[
        (0, size),
        (0, bs),
        (3 * bs, 40 * bs),
        (5 * bs + 100, 3000),
        (9 * bs, 4 * bs),
        (11 * bs + 7, 513),
        (190 * bs, 50 * bs),
        (199 * bs + 512, 34 * bs),
        (384 * bs, 128 * bs),
        (401 * bs, bs),
        (48 * bs, 5 * bs),
        (299 * bs + 4095, 3),
        (1000, 128 * 1024),
    ];
    for &(off, len) in reads {
        let want = &model[off..off + len];
        let mut got = vec![0xAAu8; len];
        let mut h = Vec::new();
        vol.read_holes(off as u64, &mut got, Some(&mut h)).await?;
        assert!(got == want, "read_holes {off}+{len}: data differs");
        assert_eq!(h, model_holes(&holes, bs, off, len), "holes of {off}+{len}");
        // Straight into a reply-like buffer: header page first, data after it.
        let mut buf = IoBuf::zeroed(4096 + len);
        buf[..4096].fill(0x5C);
        buf[4096..].fill(0xAA);
        let mut h2 = Vec::new();
        let (r, buf) = vol
            .read_into(off as u64, buf, 4096..4096 + len, Some(&mut h2))
            .await;
        r?;
        assert!(
            buf[..4096].iter().all(|b| *b == 0x5C),
            "header page touched"
        );
        assert!(&buf[4096..] == want, "read_into {off}+{len}: data differs");
        assert_eq!(h2, h, "read_into holes of {off}+{len}");
    }
    Ok(())
}

#[test]
fn merged_reads_across_holes_and_data_on_a_file() -> anyhow::Result<()> {
    let dir = tempfile::tempdir_in("/tmp")?;
    let pool = create_one_shard(
        "r",
        vec![file_engine(&dir.path().join("dev.img"), 64 << 20)?],
        Duration::from_secs(10),
    )?;
    let vol = pool.create_volume("v", 8 << 20, 4096)?;
    io::block_on(&rcfg(), async {
        check_mixed_reads(&vol).await?;
        // Again once the overlays are folded into the committed tree.
        vol.flush().await?;
        check_mixed_reads(&vol).await
    })??;
    assert!(pool.verify()?.is_clean());
    pool.export()?;
    Ok(())
}

#[test]
fn merged_reads_on_large_blocks_in_memory() -> anyhow::Result<()> {
    let dev = FaultyEngine::new(128 << 20, 4096);
    let pool = create_one_shard("r", vec![Arc::new(dev)], Duration::from_secs(10))?;
    let vol = pool.create_volume("v", 64 << 20, 16384)?;
    io::block_on(&rcfg(), async {
        check_mixed_reads(&vol).await?;
        vol.flush().await?;
        check_mixed_reads(&vol).await
    })??;
    assert!(pool.verify()?.is_clean());
    pool.export()?;
    Ok(())
}

#[test]
fn checksum_error_in_a_long_read_names_the_damaged_block() -> anyhow::Result<()> {
    let dev = FaultyEngine::new(64 << 20, 4096);
    let pool = create_one_shard("r", vec![Arc::new(dev.clone())], Duration::from_secs(10))?;
    let vol = pool.create_volume("v", 8 << 20, 4096)?;
    let data = pattern(3, 2 << 20);
    io::block_on(&rcfg(), async {
        vol.write(0, &data, false).await?;
        vol.flush().await
    })??;
    // The data block in the middle of the device-contiguous run the 2 MiB write made.
    let blocks = volume_data_blocks(&pool, &vol)?;
    assert_eq!(blocks.len(), 512);
    let victim = &blocks[300];
    dev.flip_bit(victim.offset + 123, 5);
    // Which logical block is damaged: the one a block-by-block read fails on.
    let per_block: Vec<bool> = io::block_on(&rcfg(), async {
        let mut out = Vec::new();
        for b in 0..512u64 {
            let mut buf = vec![0u8; 4096];
            out.push(vol.read(b * 4096, &mut buf).await.is_err());
        }
        out
    })?;
    let bad: Vec<usize> = (0..512).filter(|b| per_block[*b]).collect();
    assert_eq!(bad.len(), 1, "exactly one damaged block: {bad:?}");
    let bad_off = bad[0] as u64 * 4096;
    assert!(bad[0] > 0 && bad[0] < 511, "the victim is inside the run");
    let (whole, before, after) = io::block_on(&rcfg(), async {
        let mut buf = vec![0u8; 2 << 20];
        let whole = vol.read(0, &mut buf).await;
        // Unaligned, starting mid-run, ending after the damaged block.
        let mut b2 = vec![0u8; (bad_off - 1000) as usize];
        let before = vol.read(1000, &mut b2).await.map(|()| b2);
        let mut b3 = vec![0u8; (2 << 20) - bad_off as usize - 4096];
        let after = vol.read(bad_off + 4096, &mut b3).await.map(|()| b3);
        (whole, before, after)
    })?;
    let err = whole.expect_err("the damaged block fails the whole read");
    assert!(err.is_checksum(), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("volume 'v'") && msg.contains(&format!("at offset {bad_off}")),
        "{msg}"
    );
    assert_eq!(
        before?,
        &data[1000..bad_off as usize],
        "data before the damage"
    );
    assert_eq!(
        after?,
        &data[bad_off as usize + 4096..],
        "data after the damage"
    );
    pool.abandon();
    Ok(())
}

/// Block `b` at version `v`: every 8-byte word is `b << 32 | v`.
fn stamp(b: u64, v: u64, bs: usize) -> Vec<u8> {
    let w = (b << 32 | v).to_le_bytes();
    w.iter().copied().cycle().take(bs).collect()
}

#[test]
fn reads_racing_overwrites_never_see_another_blocks_bytes() -> anyhow::Result<()> {
    let dir = tempfile::tempdir_in("/tmp")?;
    // Short txgs: syncs fold overlays into the tree and free old blocks while reads run.
    let pool = create_one_shard(
        "r",
        vec![file_engine(&dir.path().join("dev.img"), 64 << 20)?],
        Duration::from_millis(20),
    )?;
    let bs = 4096usize;
    let nblk = 256u64;
    let vol = pool.create_volume("v", nblk * bs as u64, bs as u32)?;
    let (checked, writes) = io::block_on(&rcfg(), async {
        let mut all = Vec::new();
        for b in 0..nblk {
            all.extend(stamp(b, 0, bs));
        }
        vol.write(0, &all, false).await?;
        let version = Rc::new(RefCell::new(0u64));
        let failures: Rc<RefCell<Vec<String>>> = Rc::default();
        let mut tasks = Vec::new();
        for w in 0..3u64 {
            let (vol, version) = (vol.clone(), Rc::clone(&version));
            tasks.push(io::spawn_local(async move {
                let mut x = 0x1234_5678u64 + w;
                let mut n = 0u64;
                for _ in 0..300 {
                    x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                    let first = (x >> 20) % nblk;
                    let count = ((x >> 40) % 8 + 1).min(nblk - first);
                    let v = {
                        let mut g = version.borrow_mut();
                        *g += 1;
                        *g
                    };
                    let mut d = Vec::new();
                    for b in first..first + count {
                        d.extend(stamp(b, v, bs));
                    }
                    vol.write(first * bs as u64, &d, false).await?;
                    n += 1;
                }
                anyhow::Ok(n)
            }));
        }
        let mut readers = Vec::new();
        for r in 0..3u64 {
            let (vol, failures) = (vol.clone(), Rc::clone(&failures));
            readers.push(io::spawn_local(async move {
                let mut x = 0x9876_5432u64 + r;
                let mut blocks = 0u64;
                for _ in 0..300 {
                    x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                    let first = (x >> 20) % nblk;
                    let count = ((x >> 40) % 64 + 1).min(nblk - first);
                    let mut buf = vec![0u8; count as usize * bs];
                    vol.read(first * bs as u64, &mut buf).await?;
                    for (i, blk) in buf.chunks_exact(bs).enumerate() {
                        let b = first + i as u64;
                        let w = u64::from_le_bytes(blk[..8].try_into()?);
                        let ok = w >> 32 == b && blk == stamp(b, w & 0xFFFF_FFFF, bs);
                        if !ok {
                            failures
                                .borrow_mut()
                                .push(format!("block {b}: word {w:#x} (torn or foreign)"));
                        }
                        blocks += 1;
                    }
                }
                anyhow::Ok(blocks)
            }));
        }
        let mut writes = 0;
        for t in tasks {
            writes += t.await??;
        }
        let mut checked = 0;
        for t in readers {
            checked += t.await??;
        }
        let bad: Vec<String> = failures.borrow().clone();
        anyhow::ensure!(
            bad.is_empty(),
            "{} bad blocks, e.g. {:?}",
            bad.len(),
            &bad[..bad.len().min(5)]
        );
        vol.flush().await?;
        anyhow::Ok((checked, writes))
    })??;
    assert!(
        checked > 1000 && writes == 900,
        "{checked} blocks checked, {writes} writes"
    );
    assert!(pool.verify()?.is_clean());
    pool.export()?;
    Ok(())
}

/// Block lookups resolve a whole level-1 block's share of a read at once: reads spanning
/// several level-1 blocks (256 blocks of 4 KiB each) where committed tree blocks, newer overlay
/// blocks (written after the last commit), holes in the tree, holes punched in the overlay and
/// a level-1 block that is a hole altogether alternate must return every block's own bytes;
/// then the same after the overlay is committed into the tree.
#[test]
fn lookups_across_level1_blocks_mix_tree_overlay_and_holes() -> anyhow::Result<()> {
    const BS: usize = 4096;
    const NBLK: usize = 1280;
    let dev = FaultyEngine::new(64 << 20, 4096);
    let pool = create_one_shard("l1", vec![Arc::new(dev)], Duration::from_secs(3600))?;
    let vol = pool.create_volume("v", (NBLK * BS) as u64, BS as u32)?;
    // model[b] = Some(version) or None for a hole.
    let mut model: Vec<Option<u64>> = vec![None; NBLK];
    io::block_on(&rcfg(), async {
        // Committed: every block of level-1 blocks 0, 1, 3 and 4 but each 7th, in runs of
        // 64 blocks (device-contiguous inside a run); level-1 block 2 stays a hole.
        for run in (0..NBLK).step_by(64) {
            if (512..768).contains(&run) {
                continue;
            }
            let mut data = Vec::with_capacity(64 * BS);
            for (b, m) in model.iter_mut().enumerate().skip(run).take(64) {
                data.extend(stamp(b as u64, 1, BS));
                *m = Some(1);
            }
            vol.write((run * BS) as u64, &data, false).await?;
        }
        for b in (3..NBLK).step_by(7) {
            vol.punch((b * BS) as u64, BS as u64, false).await?;
            model[b] = None;
        }
        vol.flush().await?;
        // Overlay only (no commit): across the boundary of level-1 blocks 0 and 1, all of
        // level-1 block 3, a few blocks in the hole of level-1 block 2, holes punched over
        // committed data, and single blocks here and there.
        for (lo, hi) in [(200usize, 300usize), (768, 1024), (600, 610)] {
            let mut data = Vec::with_capacity((hi - lo) * BS);
            for (b, m) in model.iter_mut().enumerate().take(hi).skip(lo) {
                data.extend(stamp(b as u64, 2, BS));
                *m = Some(2);
            }
            vol.write((lo * BS) as u64, &data, false).await?;
        }
        for b in [255usize, 1100, 1279] {
            vol.write((b * BS) as u64, &stamp(b as u64, 3, BS), false)
                .await?;
            model[b] = Some(3);
        }
        vol.punch((280 * BS) as u64, (4 * BS) as u64, false).await?;
        vol.punch((1030 * BS) as u64, (20 * BS) as u64, false)
            .await?;
        model[280..284].fill(None);
        model[1030..1050].fill(None);
        anyhow::Ok(())
    })??;
    let check = |what: &str| -> anyhow::Result<()> {
        let holes: Vec<bool> = model.iter().map(Option::is_none).collect();
        let want_of = |off: usize, len: usize| -> Vec<u8> {
            let mut out = Vec::with_capacity(len);
            for pos in off..off + len {
                let b = pos / BS;
                let byte = match model[b] {
                    Some(v) => stamp(b as u64, v, 8)[pos % 8],
                    None => 0,
                };
                out.push(byte);
            }
            out
        };
        let reads: &[(usize, usize)] = &[
            (0, NBLK * BS),
            (250 * BS, 32 * BS),
            (256 * BS - 1000, 128 * 1024),
            (500 * BS + 17, 300 * BS),
            (767 * BS, 2 * BS),
            (1000 * BS, 280 * BS),
            (1279 * BS + 5, BS - 5),
        ];
        io::block_on(&rcfg(), async {
            for &(off, len) in reads {
                let mut got = vec![0xAAu8; len];
                let mut h = Vec::new();
                vol.read_holes(off as u64, &mut got, Some(&mut h)).await?;
                assert!(got == want_of(off, len), "{what}: read {off}+{len} differs");
                assert_eq!(
                    h,
                    model_holes(&holes, BS, off, len),
                    "{what}: holes of {off}+{len}"
                );
            }
            anyhow::Ok(())
        })?
    };
    check("tree and overlay")?;
    io::block_on(&rcfg(), vol.flush())??;
    check("all committed")?;
    pool.abandon();
    Ok(())
}

/// Voluntary context switches so far of this process's thread named `comm`, if there is one.
fn thread_switches(comm: &str) -> Option<u64> {
    for t in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let name = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        if name.trim_end() != comm {
            continue;
        }
        let status = std::fs::read_to_string(t.path().join("status")).ok()?;
        return status
            .lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .and_then(|v| v.trim().parse().ok());
    }
    None
}

/// A pool that only serves reads leaves its txg sync thread asleep: the thread blocks until a
/// change starts, not for a timer period at a time (it woke four times a second, on a CPU a
/// lone reader's requests may be waiting for). A write then wakes it and its timer commits
/// the write without being asked.
#[test]
fn reads_never_wake_the_sync_thread() -> anyhow::Result<()> {
    let devs = [FaultyEngine::new(64 << 20, 4096)];
    // A short timer: a sync thread woken by it would wake some fifty times below.
    let pool = create_one_shard(
        "quietsync",
        pool_common::engines(&devs),
        Duration::from_millis(20),
    )?;
    let vol = pool.create_volume("v", 4 << 20, 4096)?;
    let data = pattern(7, 4 << 20);
    io::block_on(&rcfg(), async { vol.write(0, &data, false).await })??;
    pool.sync_blocking()?;
    // Let the sync thread get back to its wait before counting.
    std::thread::sleep(Duration::from_millis(100));
    let before = thread_switches("txg-quietsync").expect("the sync thread runs");
    let txgs = pool.sync_stats().txgs;
    let start = std::time::Instant::now();
    let mut reads = 0u64;
    io::block_on(&rcfg(), async {
        let mut buf = vec![0u8; 4096];
        while start.elapsed() < Duration::from_secs(1) {
            let off = (reads * 7919 % 1024) * 4096;
            vol.read(off, &mut buf).await?;
            assert_eq!(buf[..], data[off as usize..off as usize + 4096]);
            reads += 1;
        }
        anyhow::Ok(())
    })??;
    let after = thread_switches("txg-quietsync").expect("the sync thread runs");
    assert!(reads > 0);
    assert_eq!(
        after - before,
        0,
        "the sync thread woke during {reads} reads"
    );
    assert_eq!(pool.sync_stats().txgs, txgs, "a txg was synced for reads");
    // A write starts the timer: its txg commits on its own.
    io::block_on(&rcfg(), async { vol.write(0, &data[..4096], false).await })??;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while pool.sync_stats().txgs == txgs && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        pool.sync_stats().txgs > txgs,
        "the timer never synced the write"
    );
    pool.export()?;
    Ok(())
}

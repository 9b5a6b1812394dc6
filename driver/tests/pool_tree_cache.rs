//! Issue 4: the cache of tree blocks is bounded (byte budget, LRU eviction), so memory does not
//! grow with the volume size. A 64 GiB sparse volume on a 2 GiB file pool gets one 4 KiB write
//! in each of 8192 stripes of 8 MiB — every write in its own level-0 indirect block, 128 MiB of
//! tree blocks in all against a 1 MiB cache — then, imported cold, every block and a hole next
//! to it are read back. The cache's own accounting stays under the budget throughout, the reads
//! miss at least once per indirect block (the blocks were evicted and read again, not kept),
//! and the process's peak RSS during the reads grows far less than the tree it walked.
//!
//! One test in this binary: the RSS measurement must not see other tests' memory.

mod pool_common;

use pool_common::{pattern, popts_with, rcfg};
use ringpool_driver::io;
use ringpool_driver::pool::{CreateOptions, ImportOptions, Pool, PoolOptions};

const VOL: u64 = 64 << 30;
const BLOCKS: u64 = 8192;
const STRIDE: u64 = VOL / BLOCKS;
const CACHE: usize = 1 << 20;
/// The on-disk size of an indirect block (16 KiB: 128 block pointers, 512 KiB of data).
const IBS: u64 = 16 << 10;

fn popts() -> PoolOptions {
    PoolOptions {
        cache_bytes: CACHE,
        ..popts_with(10_000, 2)
    }
}

/// Block `i`'s offset: a pseudo-random 4 KiB block inside stripe `i`.
fn offset(i: u64) -> u64 {
    let h = i.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 40;
    i * STRIDE + (h % (STRIDE / 4096 / 2)) * 4096
}

/// A field of /proc/self/status in KiB.
fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn cache_bytes(pool: &Pool) -> usize {
    pool.stats().cache.bytes
}

#[test]
fn tree_cache_stays_bounded_on_a_large_sparse_volume() -> anyhow::Result<()> {
    let dir = tempfile::tempdir_in("/tmp")?;
    let path = dir.path().join("dev0");
    std::fs::File::create(&path)?.set_len(2 << 30)?;
    let paths = vec![path];
    let pool = Pool::create_paths(
        "cachetank",
        &paths,
        &CreateOptions {
            pool: popts(),
            ..Default::default()
        },
    )?;
    let vol = pool.create_volume("big", VOL, 4096)?;
    let mut max_bytes = 0usize;
    io::block_on(&rcfg(), async {
        for i in 0..BLOCKS {
            vol.write(offset(i), &pattern(i, 4096), false).await?;
            if i % 256 == 255 {
                max_bytes = max_bytes.max(cache_bytes(&pool));
            }
        }
        vol.flush().await
    })??;
    max_bytes = max_bytes.max(cache_bytes(&pool));
    assert!(max_bytes <= CACHE, "writes: cache held {max_bytes} B");
    pool.export()?;

    // Cold: every indirect block on the read path comes from the device.
    let pool = Pool::import_paths(
        &paths,
        &ImportOptions {
            pool: popts(),
            ..Default::default()
        },
    )?;
    let vol = pool.open_volume("big")?;
    let before = pool.stats().cache;
    // 5: reset the peak RSS (VmHWM) to the current RSS.
    std::fs::write("/proc/self/clear_refs", "5")?;
    let rss0 = status_kib("VmRSS:");
    let mut max_bytes = 0usize;
    io::block_on(&rcfg(), async {
        let mut buf = vec![0u8; 4096];
        for i in 0..BLOCKS {
            vol.read(offset(i), &mut buf).await?;
            assert!(buf == pattern(i, 4096), "block {i} read back wrong");
            // A hole in the same level-0 indirect block: zeroes.
            vol.read(offset(i) ^ 4096, &mut buf).await?;
            assert!(buf.iter().all(|&b| b == 0), "hole next to block {i}");
            if i % 64 == 63 {
                max_bytes = max_bytes.max(cache_bytes(&pool));
            }
        }
        Ok::<(), ringpool_driver::pool::PoolError>(())
    })??;
    let hwm = status_kib("VmHWM:");
    let after = pool.stats().cache;
    max_bytes = max_bytes.max(after.bytes);
    let misses = after.misses - before.misses;
    let walked = misses * IBS;
    println!(
        "reads: {misses} cache misses ({} MiB of tree blocks read), cache max {max_bytes} B of \
         {CACHE}, {} entries at the end; RSS {rss0} KiB, peak +{} KiB",
        walked >> 20,
        after.entries,
        hwm.saturating_sub(rss0)
    );
    assert!(max_bytes <= CACHE, "reads: cache held {max_bytes} B");
    // Each block sits in its own level-0 indirect block: at least one miss each, i.e. the
    // walk needed ~128 MiB of tree blocks through a 1 MiB cache.
    assert!(
        misses >= BLOCKS,
        "{misses} misses for {BLOCKS} indirect blocks"
    );
    // Without eviction the decoded pointers of the walked blocks would stay resident
    // (~128 MiB); with it the peak grows by the budget plus transient buffers.
    let grown = (hwm.saturating_sub(rss0)) << 10;
    assert!(
        grown < walked / 4,
        "peak RSS grew {grown} B while walking {walked} B of tree blocks"
    );
    pool.export()?;
    Ok(())
}

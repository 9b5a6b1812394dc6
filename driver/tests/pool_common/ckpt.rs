//! Fixtures of the checkpoint test binaries (OpenZFS `pool_checkpoint.kshlib`, with volumes
//! instead of filesystems and `verify` instead of zdb).

use std::time::Duration;

use ringpool_driver::io::{self, FaultyEngine};
use ringpool_driver::pool::{CheckpointState, ImportOptions, Pool, PoolError};

use super::setup::{iopts, pattern, rcfg};

/// Device size of the in-memory test devices.
pub const DEV: u64 = 64 << 20;
/// Sector and volume block size.
pub const BS: u32 = 4096;

const PRE0: u64 = 1;
const PRE1: u64 = 2;
const POST0: u64 = 3;
const POST2: u64 = 4;
/// Bytes `populate` / `change_state` write per volume.
pub const LEN: usize = 256 << 10;

/// `n` fresh in-memory devices of [`DEV`] bytes.
pub fn new_devs(n: usize) -> Vec<FaultyEngine> {
    (0..n).map(|_| FaultyEngine::new(DEV, BS)).collect()
}

/// Import options for `--rewind-to-checkpoint` (read-only: the preview).
pub fn rewind_opts(read_only: bool) -> ImportOptions {
    ImportOptions {
        rewind_to_checkpoint: true,
        read_only,
        ..iopts()
    }
}

/// Writes `data` at `off` of volume `vol`.
pub fn write(pool: &Pool, vol: &str, off: u64, data: &[u8]) -> Result<(), PoolError> {
    let v = pool.open_volume(vol)?;
    io::block_on(&rcfg(), async { v.write(off, data, false).await })?
}

/// Reads `len` bytes at `off` of volume `vol`.
pub fn read(pool: &Pool, vol: &str, off: u64, len: usize) -> Result<Vec<u8>, PoolError> {
    let v = pool.open_volume(vol)?;
    let mut buf = vec![0u8; len];
    io::block_on(&rcfg(), async { v.read(off, &mut buf).await })??;
    Ok(buf)
}

/// Deallocates `[off, off + len)` of volume `vol`.
pub fn punch(pool: &Pool, vol: &str, off: u64, len: u64) -> Result<(), PoolError> {
    let v = pool.open_volume(vol)?;
    io::block_on(&rcfg(), async { v.punch(off, len, false).await })?
}

/// `populate`: volumes fs0 and fs1 with known contents, synced.
pub fn populate(pool: &Pool) -> anyhow::Result<()> {
    pool.create_volume("fs0", 8 << 20, BS)?;
    pool.create_volume("fs1", 8 << 20, BS)?;
    write(pool, "fs0", 0, &pattern(PRE0, LEN))?;
    write(pool, "fs1", 0, &pattern(PRE1, LEN))?;
    pool.sync_blocking()?;
    Ok(())
}

/// `change_state_after_checkpoint`: destroy fs1, create fs2, overwrite fs0, write fs2.
pub fn change_state(pool: &Pool) -> anyhow::Result<()> {
    pool.destroy_volume("fs1")?;
    pool.create_volume("fs2", 8 << 20, BS)?;
    write(pool, "fs0", 0, &pattern(POST0, LEN))?;
    write(pool, "fs2", 0, &pattern(POST2, LEN))?;
    pool.sync_blocking()?;
    Ok(())
}

/// `verify` (zdb) must find nothing.
pub fn verify_clean(pool: &Pool) -> anyhow::Result<()> {
    let rep = pool.verify()?;
    anyhow::ensure!(rep.is_clean(), "verify: {:?}", rep.errors);
    Ok(())
}

/// `verify_pre_checkpoint_state` (verify skipped for a read-only rewind, as zdb is).
pub fn verify_pre(pool: &Pool, run_verify: bool) -> anyhow::Result<()> {
    anyhow::ensure!(
        read(pool, "fs0", 0, LEN)? == pattern(PRE0, LEN),
        "fs0 not pre"
    );
    anyhow::ensure!(
        read(pool, "fs1", 0, LEN)? == pattern(PRE1, LEN),
        "fs1 not pre"
    );
    anyhow::ensure!(pool.open_volume("fs2").is_err(), "fs2 must not exist");
    if run_verify {
        verify_clean(pool)?;
    }
    Ok(())
}

/// `verify_post_checkpoint_state`.
pub fn verify_post(pool: &Pool) -> anyhow::Result<()> {
    anyhow::ensure!(
        read(pool, "fs0", 0, LEN)? == pattern(POST0, LEN),
        "fs0 not post"
    );
    anyhow::ensure!(
        read(pool, "fs2", 0, LEN)? == pattern(POST2, LEN),
        "fs2 not post"
    );
    anyhow::ensure!(pool.open_volume("fs1").is_err(), "fs1 must be gone");
    verify_clean(pool)
}

/// The pool history texts.
pub fn history(pool: &Pool) -> anyhow::Result<Vec<String>> {
    Ok(pool
        .directory()?
        .history
        .into_iter()
        .map(|(_, _, t)| t)
        .collect())
}

/// Volume "frag" with `blocks` 4 KiB blocks, checkpointed, then every other block punched:
/// `blocks / 2` checkpoint-map extents that never coalesce.
pub fn fragmented_checkpoint(pool: &Pool, blocks: u64) -> anyhow::Result<()> {
    pool.create_volume("frag", blocks.max(4096) * 4096, BS)?;
    let chunk = 64u64;
    let mut b = 0;
    while b < blocks {
        let n = chunk.min(blocks - b);
        let data: Vec<u8> = (b..b + n).flat_map(|i| pattern(i, 4096)).collect();
        write(pool, "frag", b * 4096, &data)?;
        b += n;
    }
    pool.sync_blocking()?;
    pool.checkpoint()?;
    let v = pool.open_volume("frag")?;
    io::block_on(&rcfg(), async {
        for i in (0..blocks).step_by(2) {
            v.punch(i * 4096, 4096, false).await?;
        }
        Ok::<(), PoolError>(())
    })??;
    pool.sync_blocking()?;
    Ok(())
}

/// Waits until the discard made progress from `held` (or finished).
pub fn wait_progress(pool: &Pool, held: u64) {
    loop {
        let st = pool.checkpoint_status();
        if st.space != held || st.state != CheckpointState::Discarding {
            return;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

//! The pool options, engines and data patterns every pool test binary starts from.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ringpool_driver::io::{
    BlockEngine, Device, DeviceOptions, DirectIo, FaultyEngine, ReactorConfig, UringEngine,
};
use ringpool_driver::pool::verify::BlockInfo;
use ringpool_driver::pool::{CreateOptions, ImportOptions, Pool, PoolOptions, TxgConfig, Volume};
use ringpool_ondisk::object::ObjectType;

/// A device file of `size` bytes at `path` (created sparse) behind the io_uring engine, opened
/// with O_DIRECT as a pool opens its devices.
pub fn file_engine(path: &Path, size: u64) -> anyhow::Result<Arc<dyn BlockEngine>> {
    std::fs::File::create(path)?.set_len(size)?;
    let dev = Device::open(
        path,
        &DeviceOptions {
            direct: DirectIo::Required,
            ..Default::default()
        },
    )?;
    Ok(Arc::new(UringEngine::new(Arc::new(dev))))
}

/// One unpinned reactor without a registered arena: what a test thread drives futures with.
pub fn rcfg() -> ReactorConfig {
    ReactorConfig {
        reactors: 1,
        pin: false,
        arena_bytes: 0,
        ..Default::default()
    }
}

/// Pool options with a sync timer of `timeout_ms` and `shards` allocator shards.
pub fn popts_with(timeout_ms: u64, shards: usize) -> PoolOptions {
    PoolOptions {
        txg: TxgConfig {
            timeout: Duration::from_millis(timeout_ms),
            ..Default::default()
        },
        shards,
        ..Default::default()
    }
}

/// The usual test pool: a 200 ms sync timer, two allocator shards.
pub fn popts() -> PoolOptions {
    popts_with(200, 2)
}

/// Create options around `pool` (ashift and metaslab size from the device).
pub fn copts_with(pool: PoolOptions) -> CreateOptions {
    CreateOptions {
        pool,
        ..Default::default()
    }
}

/// Create options around [`popts`].
pub fn copts() -> CreateOptions {
    copts_with(popts())
}

/// Import options around `pool` (no force, no rewind, writable).
pub fn iopts_with(pool: PoolOptions) -> ImportOptions {
    ImportOptions {
        pool,
        ..Default::default()
    }
}

/// Import options around [`popts`].
pub fn iopts() -> ImportOptions {
    iopts_with(popts())
}

/// The in-memory devices as pool engines (clones share the image).
pub fn engines(devs: &[FaultyEngine]) -> Vec<Arc<dyn BlockEngine>> {
    devs.iter()
        .map(|d| Arc::new(d.clone()) as Arc<dyn BlockEngine>)
        .collect()
}

/// `len` pseudo-random bytes determined by `seed` (xorshift).
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()[0]
        })
        .collect()
}

/// A one-shard pool named `name` on `engines` whose sync timer is `txg_timeout` (tests that
/// control when txgs commit pass a long one).
pub fn create_one_shard(
    name: &str,
    engines: Vec<Arc<dyn BlockEngine>>,
    txg_timeout: Duration,
) -> anyhow::Result<Pool> {
    let mut pool = popts_with(0, 1);
    pool.txg.timeout = txg_timeout;
    Ok(Pool::create(name, engines, &copts_with(pool))?)
}

/// The committed data blocks of `vol`, in device-offset order.
pub fn volume_data_blocks(pool: &Pool, vol: &Volume) -> anyhow::Result<Vec<BlockInfo>> {
    let mut blocks: Vec<_> = pool
        .block_map()?
        .into_iter()
        .filter(|b| {
            b.object == Some(vol.object()) && b.level == 0 && b.kind == ObjectType::VolumeData
        })
        .collect();
    blocks.sort_by_key(|b| b.offset);
    Ok(blocks)
}

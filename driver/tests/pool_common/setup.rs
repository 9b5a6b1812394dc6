//! The pool options, engines and data patterns every pool test binary starts from.

use std::sync::Arc;
use std::time::Duration;

use ringpool_driver::io::{BlockEngine, FaultyEngine, ReactorConfig};
use ringpool_driver::pool::{CreateOptions, ImportOptions, PoolOptions, TxgConfig};

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

//! The txg engine's tunables, and the default dirty limits sized from physical memory.

use std::time::Duration;

/// Tunables of the txg engine.
///
/// A txg carries two kinds of dirty bytes. *Data*: blocks already written whose pointers wait
/// for the sync to fold them into the trees (cheap to hold, but the bigger the txg, the fewer
/// tree blocks the sync rewrites per write). *Metadata*: an estimate of the tree and space-map
/// blocks the sync will allocate, which come out of the allocator's slop reserve and so are
/// bounded by it (see [`TxgEngine::cap_dirty`](super::TxgEngine::cap_dirty)). Either reaching its sync threshold starts a
/// sync; past `delay_min_dirty_percent` of either limit writers are delayed smoothly, and at
/// the limit they wait for the sync.
#[derive(Debug, Clone)]
pub struct TxgConfig {
    /// Sync at least this often when something is dirty (OpenZFS `zfs_txg_timeout`, 5 s).
    pub timeout: Duration,
    /// Start a sync once the open txg holds this many dirty data bytes (default: half of
    /// `dirty_max_bytes`; the pool's slop lowers both, see [`TxgEngine::cap_dirty`](super::TxgEngine::cap_dirty)).
    pub dirty_sync_bytes: u64,
    /// Writers wait (asynchronously) while the open txg holds more data bytes than this
    /// (default: [`default_dirty_max`], from physical memory).
    pub dirty_max_bytes: u64,
    /// Writers are delayed once the open txg is past this percentage of a dirty limit
    /// (OpenZFS `zfs_delay_min_dirty_percent`, 60).
    pub delay_min_dirty_percent: u32,
    /// Scale of the write delay: halfway between the start of the delay and the limit, writes
    /// are let through this far apart. It should be about the inverse of the pool's write
    /// rate in requests per second; the delay then smooths rates from a tenth to ten times
    /// that. OpenZFS's `zfs_delay_scale` is 500 us (2,000 ops/s, for transactions of up to
    /// 128 KiB and more); here a write is one 4 KiB-1 MiB request and a device takes tens of
    /// thousands per second, so 25 us (40,000/s).
    pub delay_scale: Duration,
    /// From this sync pass on, frees go to the next txg so that the passes converge
    /// (OpenZFS `zfs_sync_pass_deferred_free`, 2; `u32::MAX` never defers).
    pub deferred_free_pass: u32,
    /// Tree-block writes the sync keeps in flight while the open txg is light (OpenZFS
    /// `zfs_vdev_async_write_min_active`). Few, so that a sync's burst of metadata does not
    /// stand in front of the writers' data writes in the device queue for milliseconds.
    pub sync_write_min_active: usize,
    /// ... and once the open txg is filling up (`zfs_vdev_async_write_max_active`): then the
    /// sync must finish before writers reach the throttle.
    pub sync_write_max_active: usize,
    /// Open-txg fill (percent of a dirty limit) below which the sync writes at the minimum,
    /// and at or above which at the maximum, linear in between (as OpenZFS's
    /// `zfs_vdev_async_write_active_{min,max}_dirty_percent`; 60 and 90 here, because this
    /// engine starts a sync at 50 %, not 20 %, and delays writers from 60 %).
    pub sync_write_active_dirty_percent: (u32, u32),
}

/// Bytes of physical memory, 0 if the system does not say.
pub(super) fn physical_memory() -> u64 {
    // SAFETY: sysconf only reads system configuration; it has no preconditions and returns
    // -1 for a name it does not know.
    let (pages, page) = unsafe {
        (
            libc::sysconf(libc::_SC_PHYS_PAGES),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    u64::try_from(pages)
        .ok()
        .zip(u64::try_from(page).ok())
        .map_or(0, |(n, p)| n.saturating_mul(p))
}

/// `RINGPOOL_TXG_<name>_MIB` from the environment, in bytes (for A/B comparisons only).
fn env_mib(name: &str) -> Option<u64> {
    crate::knob::env::<u64>(&format!("RINGPOOL_TXG_{name}_MIB")).map(|m| m.saturating_mul(1 << 20))
}

/// The default data limit of a txg, as OpenZFS sizes `zfs_dirty_data_max`: 10 % of physical
/// memory, at most 4 GiB (`zfs_dirty_data_max_max`), at least 64 MiB; 256 MiB if memory is
/// unknown. `RINGPOOL_TXG_DIRTY_MAX_MIB` overrides it (read once; for comparisons).
///
/// Why that large: the sync rewrites every level-1 block a txg touched, and random writes
/// touch nearly all of them in every txg (a 3 GiB volume of 4 KiB blocks has ~3,000 of
/// 16 KiB: ~48 MiB per txg whatever its size), so the sync's cost per write falls with the
/// txg's size. Measured on the 2-vCPU VM (4k randwrite QD32 over NBD, 3 GiB volume on a
/// 10 GiB pool, with the limits capped at one slop, 160/320 MiB): syncing at 160 MiB instead
/// of 64 MiB cut the sync thread's CPU per write to 0.55x (4.6 to 2.5 us) and the server's to
/// 0.89x, for 1.06x the IOPS and 0.89x the p99 (6 alternated rounds, load ~2). Unlike OpenZFS's dirty data, a txg here holds only block pointers (the data is
/// already on the device, see `volume/writeback.rs`): ~100 bytes of memory per 4 KiB block,
/// so 10 % of memory in dirty bytes is a fortieth of that in memory. What bounds a txg on
/// most pools is the slop (see [`TxgEngine::cap_dirty`](super::TxgEngine::cap_dirty)), and FLUSH latency grows with it
/// only by the per-write part of a sync (the tree-block rewrite is the same).
pub fn default_dirty_max() -> u64 {
    static MAX: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *MAX.get_or_init(|| {
        env_mib("DIRTY_MAX").unwrap_or_else(|| match physical_memory() {
            0 => 256 << 20,
            ram => (ram / 10).clamp(64 << 20, 4 << 30),
        })
    })
}

/// The default sync threshold: half of [`default_dirty_max`] (this engine starts a sync at
/// 50 % of the limit and delays writers from 60 %, see [`TxgConfig::delay_min_dirty_percent`]).
/// `RINGPOOL_TXG_DIRTY_SYNC_MIB` overrides it (read once; for comparisons).
pub fn default_dirty_sync() -> u64 {
    static SYNC: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *SYNC.get_or_init(|| env_mib("DIRTY_SYNC").unwrap_or_else(|| default_dirty_max() / 2))
}

impl Default for TxgConfig {
    fn default() -> Self {
        TxgConfig {
            timeout: Duration::from_secs(5),
            dirty_sync_bytes: default_dirty_sync(),
            dirty_max_bytes: default_dirty_max(),
            delay_min_dirty_percent: 60,
            delay_scale: Duration::from_micros(25),
            deferred_free_pass: 2,
            sync_write_min_active: 2,
            sync_write_max_active: 32,
            sync_write_active_dirty_percent: (60, 90),
        }
    }
}

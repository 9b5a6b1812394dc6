//! ringpool allocator: range trees, metaslabs with their txg pipeline, metaslab groups (one per
//! device) and the pool-wide, lock-sharded, checkpoint-aware [`MetaslabClass`].
//!
//! Pure in-memory: `sync` returns the space-map records ([`SmRecord`]) the pool must persist
//! (per metaslab, and per device for the checkpoint space map); loading replays them.
//!
//! Typical pool use:
//! ```
//! use ringpool_alloc::{AllocClass, ClassConfig, DeviceSpec, MetaslabClass};
//! let class = MetaslabClass::new(ClassConfig { shards: 2, ..ClassConfig::default() });
//! class.add_device(DeviceSpec { dev: 0, start: 4 << 20, end: 1 << 30, ashift: 12, ms_shift: 26 })?;
//! let txg = 5;
//! let e = class.alloc(64 << 10, txg, 0, AllocClass::Normal)?;
//! let out = class.sync(txg)?; // persist out.devices[..].metaslabs[..].1.sm_records
//! class.sync_done(txg)?;
//! class.free(e, txg, txg + 1)?; // FREE at sync(6), allocatable after sync_done(8)
//! # assert_eq!(out.devices[0].metaslabs.len(), 1);
//! # Ok::<(), ringpool_alloc::AllocError>(())
//! ```
//!
//! The allocator benchmark (Ceph's `test_alloc_bench2_90_500_x2`, adapted) is
//! `cargo run --release -p ringpool-alloc --example allocbench -- --help`; see alloc/README.md.

pub mod blockmap;
pub mod class;
pub mod error;
pub mod frag;
pub mod group;
pub mod metaslab;
pub mod range_tree;
pub mod record;
pub mod reserve;

pub use class::{
    AllocClass, ClassConfig, ClassStats, ClassSyncOutput, DeviceStats, DeviceSyncOutput, Extent,
    MetaslabClass, SpaceStats,
};
pub use error::AllocError;
pub use group::{default_ms_shift, DeviceSpec, MetaslabGroup};
pub use metaslab::{
    Metaslab, MetaslabConfig, MetaslabSyncOutput, TXG_DEFER_SIZE, TXG_MASK, TXG_SIZE,
};
pub use range_tree::{RangeTree, SegUnit, WideRangeTree};
pub use record::{SmAction, SmRecord};

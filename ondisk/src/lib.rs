//! ringpool on-disk formats: byte layouts only, no I/O.
//!
//! Every structure has an explicit little-endian encoder and a validating decoder that never
//! panics and never allocates from an untrusted length without bounding it by the bytes present.
//! Errors are [`OnDiskError`]. The byte layout of each format is tabled in its module:
//!
//! * [`layout`] — device layout (labels, uberblock ring, allocatable region, metaslabs).
//! * [`label`] — label header (pool identity, device list, state, last host).
//! * [`uberblock`] — uberblock.
//! * [`blkptr`] — block pointers and indirect blocks.
//! * [`object`] — object records ("dnodes") and object-set blocks.
//! * [`space_map`] — space-map entry words, encoder/replay, header.
//! * [`nvlist`] — typed key-value lists for the pool directory.
//! * [`checksum`] — checksums.

pub mod blkptr;
mod bytes;
pub mod checksum;
pub mod error;
pub mod label;
pub mod layout;
pub mod nvlist;
pub mod object;
pub mod space_map;
pub mod uberblock;

pub use blkptr::{BlockPointer, DataPtr, Dva, HolePtr, BLKPTR_SIZE};
pub use checksum::{Checksum, ChecksumAlgo};
pub use error::{OnDiskError, Result};
pub use label::{DeviceEntry, HostInfo, LabelHeader, PoolState};
pub use layout::DeviceLayout;
pub use nvlist::{NvList, NvValue};
pub use object::{Bonus, ObjectFlags, ObjectRecord, ObjectType};
pub use space_map::{
    ReplayEntry, SmAction, SmDebug, SmItem, SmRecord, SpaceMapEncoder, SpaceMapEntry,
    SpaceMapHeader, SpaceMapIter, TailPop,
};
pub use uberblock::Uberblock;

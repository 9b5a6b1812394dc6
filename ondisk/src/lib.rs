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
//!
//! # Example: format a device's label and commit an uberblock
//!
//! ```
//! use ringpool_ondisk::label::{DeviceEntry, HostInfo, LabelHeader, PoolState};
//! use ringpool_ondisk::layout::{DeviceLayout, LABEL_HEADER_AREA_SIZE};
//! use ringpool_ondisk::{BlockPointer, Uberblock};
//!
//! let size = 1u64 << 30;
//! let layout = DeviceLayout::new(size, 12)?;
//! let ms_shift = layout.default_ms_shift();
//! let dev = DeviceEntry { guid: 0xd1, size, ashift: 12, ms_shift, added_txg: 4 };
//! let header = LabelHeader {
//!     pool_name: "tank".into(),
//!     pool_guid: 0x9001,
//!     device_guid: dev.guid,
//!     device_index: 0,
//!     devices: vec![dev],
//!     ashift: 12,
//!     ms_shift,
//!     state: PoolState::Active,
//!     host: HostInfo { hostname: "host".into(), host_id: 1, pid: 42 },
//!     creation_time: 1_700_000_000,
//!     config_txg: 4,
//! };
//! // The header area of each label (written at layout.label_header_offset(i)).
//! let mut area = vec![0u8; LABEL_HEADER_AREA_SIZE];
//! header.encode_area(&mut area)?;
//! assert_eq!(LabelHeader::decode(&area)?, header);
//!
//! // The uberblock of txg 5 goes to slot 5 % 32 of every label.
//! let ub = Uberblock {
//!     txg: 5,
//!     guid_sum: header.guid_sum(),
//!     timestamp: 1_700_000_005,
//!     checkpoint_txg: 0,
//!     root: BlockPointer::hole(0),
//!     pool_guid: header.pool_guid,
//! };
//! let mut slot = vec![0u8; layout.slot_size()];
//! ub.encode_slot(&mut slot)?;
//! let offset = layout.uberblock_offset(0, ub.txg)?;
//! assert_eq!(offset, 128 * 1024 + 5 * 4096);
//! assert_eq!(Uberblock::decode_slot(&slot, layout.slot_of(5), layout.slot_count())?, ub);
//! # Ok::<(), ringpool_ondisk::OnDiskError>(())
//! ```

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

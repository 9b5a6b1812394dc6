//! The allocator layer's error type.

use thiserror::Error;

/// Every failure the allocator reports. Nothing in this crate panics on a bad request: a double
/// free, an out-of-range extent or a corrupt space-map record all come back as one of these.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum AllocError {
    /// No device has a free segment large enough (or the request would eat into the slop
    /// reserve and was not marked [`crate::AllocClass::Reserved`]).
    #[error("no space left in the pool for {size} bytes")]
    NoSpace {
        /// The requested size in bytes.
        size: u64,
    },
    /// Freeing (adding to a free tree) a range that is already free, in whole or in part.
    #[error("double free of [{start:#x}, +{len:#x})")]
    DoubleFree {
        /// First byte of the offending range.
        start: u64,
        /// Length in bytes.
        len: u64,
    },
    /// Allocating (removing from a tree) a range that is not entirely present in it.
    #[error("range [{start:#x}, +{len:#x}) is not (entirely) present: double allocation")]
    DoubleAlloc {
        /// First byte of the offending range.
        start: u64,
        /// Length in bytes.
        len: u64,
    },
    /// A range not aligned to the tree's or device's unit (2^ashift), or of length zero.
    #[error("range [{start:#x}, +{len:#x}) is misaligned or empty (unit {unit:#x})")]
    Misaligned {
        /// First byte of the offending range.
        start: u64,
        /// Length in bytes.
        len: u64,
        /// The alignment unit in bytes.
        unit: u64,
    },
    /// A range outside the region a tree, metaslab or device covers, or crossing a metaslab.
    #[error("range [{start:#x}, +{len:#x}) lies outside [{region_start:#x}, {region_end:#x})")]
    OutOfRange {
        /// First byte of the offending range.
        start: u64,
        /// Length in bytes.
        len: u64,
        /// Start of the permitted region.
        region_start: u64,
        /// End (exclusive) of the permitted region.
        region_end: u64,
    },
    /// The device index is not part of the class.
    #[error("unknown device {dev}")]
    UnknownDevice {
        /// The device index given.
        dev: u32,
    },
    /// The device index is already part of the class.
    #[error("device {dev} already exists")]
    DeviceExists {
        /// The device index given.
        dev: u32,
    },
    /// Geometry the allocator cannot represent (ashift, metaslab shift, region, too many devices).
    #[error("invalid geometry: {0}")]
    InvalidGeometry(String),
    /// A free or allocation for a txg that has already been synced (its slot was closed).
    #[error("txg {txg} is already synced (last synced {synced})")]
    TxgClosed {
        /// The txg given.
        txg: u64,
        /// The last txg that went through sync_done.
        synced: u64,
    },
    /// Loading a metaslab into one that already has state.
    #[error("metaslab {index} of device {dev} is already loaded or has pending changes")]
    AlreadyLoaded {
        /// Device index.
        dev: u32,
        /// Metaslab index within the device.
        index: u64,
    },
    /// An allocator invariant (reference A.8) does not hold.
    #[error("allocator invariant violated: {0}")]
    Invariant(String),
}

impl AllocError {
    /// The errno a protocol reply should carry: `ENOSPC` for [`AllocError::NoSpace`], `EINVAL`
    /// for requests the caller got wrong, `EIO` for state inconsistencies.
    pub fn errno(&self) -> i32 {
        // Linux values (asm-generic/errno-base.h); alloc/ has no libc dependency.
        const EIO: i32 = 5;
        const EINVAL: i32 = 22;
        const ENOSPC: i32 = 28;
        match self {
            AllocError::NoSpace { .. } => ENOSPC,
            AllocError::Misaligned { .. }
            | AllocError::OutOfRange { .. }
            | AllocError::UnknownDevice { .. }
            | AllocError::DeviceExists { .. }
            | AllocError::InvalidGeometry(_)
            | AllocError::TxgClosed { .. } => EINVAL,
            AllocError::DoubleFree { .. }
            | AllocError::DoubleAlloc { .. }
            | AllocError::AlreadyLoaded { .. }
            | AllocError::Invariant(_) => EIO,
        }
    }
}

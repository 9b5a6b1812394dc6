//! Space maps: append-only logs of ALLOC/FREE extents, and the header kept in the map object's
//! bonus.
//!
//! Offsets and runs are in units of `2^shift` bytes (the device's ashift) relative to the start
//! of the map's region (a metaslab, or the whole allocatable region for a checkpoint map).
//! Replaying a map in order rebuilds its state: the region starts all free, ALLOC removes, FREE
//! adds (or the reverse for the allocated set).
//!
//! # Entry words (64-bit little-endian words; bit 63 is the most significant)
//!
//! | kind             | identify          | layout                                                                   |
//! |------------------|-------------------|--------------------------------------------------------------------------|
//! | one-word entry   | bit 63 = 0        | 62..16 offset (47 bits) · 15 action (0 alloc, 1 free) · 14..0 run − 1    |
//! | debug word       | bits 63..62 = 10  | 61..60 action · 59..50 sync pass (10 bits) · 49..0 txg (50 bits)          |
//! | two-word, word 1 | bits 63..62 = 11  | 61..60 zero · 59..24 run − 1 (36 bits) · 23..0 device index + 1 (0 = none) |
//! | two-word, word 2 | follows word 1    | 63 action · 62..0 offset (63 bits)                                        |
//!
//! * One-word entries carry runs of 1..=2^15 units at offsets below 2^47 units and no device;
//!   anything else uses two words (runs up to 2^36 units; longer runs are split).
//! * A debug word with txg 0 (and every other field 0) is **padding**: a two-word entry never
//!   straddles a block boundary, so when only one word is left in a block the encoder writes
//!   a padding word first. Readers skip padding without touching their txg/pass context.
//! * Every batch ([`SpaceMapEncoder::write_batch`]) starts with a debug word (action, sync pass,
//!   txg); readers annotate the following entries with it.
//!
//! # Header (272 bytes, the bonus of the map object)
//!
//! | offset | size | field                                                              |
//! |--------|------|--------------------------------------------------------------------|
//! | 0      | 8    | length: bytes of entry words in the map object                     |
//! | 8      | 8    | net allocated bytes (i64: +run·2^shift per ALLOC, − per FREE)      |
//! | 16     | 256  | 32 × u64 histogram: bucket i counts free segments of size `[2^(i+shift), 2^(i+shift+1))`; bucket 31 also holds every larger segment |

mod decode;
mod encode;
mod header;
#[cfg(test)]
mod tests;

pub use decode::{decode_block, pop_tail, ReplayEntry, SpaceMapIter, TailPop};
pub use encode::{SmChunk, SmChunks, SpaceMapEncoder};
pub use header::{histogram_bucket, SpaceMapHeader};

use crate::bytes::len_u64;
use crate::error::{OnDiskError, Result};
use crate::layout::{MAX_BLOCK_SIZE, MIN_BLOCK_SIZE};

/// Bits of the offset in a one-word entry.
pub const SM_OFFSET_BITS: u32 = 47;
/// Bits of `run - 1` in a one-word entry.
pub const SM_RUN_BITS: u32 = 15;
/// Longest run of a one-word entry, in units.
pub const SM_RUN_MAX: u64 = 1 << SM_RUN_BITS;
/// Bits of `run - 1` in a two-word entry.
pub const SM2_RUN_BITS: u32 = 36;
/// Longest run of a two-word entry, in units.
pub const SM2_RUN_MAX: u64 = 1 << SM2_RUN_BITS;
/// Bits of the offset in a two-word entry.
pub const SM2_OFFSET_BITS: u32 = 63;
/// Bits of the device field in a two-word entry.
pub const SM2_DEVICE_BITS: u32 = 24;
/// Largest device index a two-word entry can carry (the field stores index + 1).
pub const SM2_DEVICE_MAX: u32 = (1 << SM2_DEVICE_BITS) - 2;
/// Bits of the sync pass in a debug word.
pub const SM_DEBUG_PASS_BITS: u32 = 10;
/// Bits of the txg in a debug word.
pub const SM_DEBUG_TXG_BITS: u32 = 50;
/// Buckets of the free-segment histogram.
pub const SPACE_MAP_HISTOGRAM_SIZE: usize = 32;
/// Encoded size of [`SpaceMapHeader`].
pub const SPACE_MAP_HEADER_SIZE: usize = 16 + 8 * SPACE_MAP_HISTOGRAM_SIZE;
/// The padding word (a debug word with every field zero).
pub const SM_PADDING_WORD: u64 = 1 << 63;

pub(crate) const WHAT: &str = "space map";
pub(crate) const WORD: usize = 8;

/// Whether an entry allocates or frees its extent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SmAction {
    /// The extent became allocated.
    Alloc,
    /// The extent became free.
    Free,
}

impl SmAction {
    pub(crate) fn bit(self) -> u64 {
        match self {
            SmAction::Alloc => 0,
            SmAction::Free => 1,
        }
    }

    pub(crate) fn from_bit(bit: u64) -> SmAction {
        if bit & 1 == 0 {
            SmAction::Alloc
        } else {
            SmAction::Free
        }
    }
}

/// An extent record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SpaceMapEntry {
    /// Alloc or free.
    pub action: SmAction,
    /// Start, in units of `2^shift` relative to the map's start.
    pub offset: u64,
    /// Length in units (≥ 1).
    pub run: u64,
    /// Device index, for pool-wide maps; `None` for per-metaslab / per-device maps.
    pub vdev: Option<u32>,
}

impl SpaceMapEntry {
    /// An entry without a device.
    pub fn new(action: SmAction, offset: u64, run: u64) -> SpaceMapEntry {
        SpaceMapEntry {
            action,
            offset,
            run,
            vdev: None,
        }
    }

    /// The entry for the byte range `[start, start + len)` of a map whose region begins at byte
    /// `map_start`, with units of `2^shift` bytes. Both ends must be unit aligned.
    pub fn from_bytes(
        action: SmAction,
        start: u64,
        len: u64,
        map_start: u64,
        shift: u8,
    ) -> Result<SpaceMapEntry> {
        let unit = 1u64.checked_shl(u32::from(shift)).ok_or(invalid(
            "shift",
            u64::from(shift),
            "too large",
        ))?;
        let rel = start.checked_sub(map_start).ok_or(invalid(
            "offset",
            start,
            "before the map's region",
        ))?;
        if !rel.is_multiple_of(unit) || !len.is_multiple_of(unit) {
            return Err(invalid(
                "offset",
                start,
                "extent not aligned to the map's unit",
            ));
        }
        let e = SpaceMapEntry {
            action,
            offset: rel >> shift,
            run: len >> shift,
            vdev: None,
        };
        e.validate()?;
        Ok(e)
    }

    /// The entry's byte range `(start, len)` in a map whose region begins at byte `map_start`
    /// (`None` if it overflows u64).
    pub fn byte_range(&self, map_start: u64, shift: u8) -> Option<(u64, u64)> {
        let off = self
            .offset
            .checked_shl(u32::from(shift))
            .filter(|o| o >> shift == self.offset)?;
        let len = self
            .run
            .checked_shl(u32::from(shift))
            .filter(|l| l >> shift == self.run)?;
        let start = map_start.checked_add(off)?;
        start.checked_add(len)?;
        Some((start, len))
    }

    /// End (exclusive) in units.
    pub fn end(&self) -> u64 {
        self.offset.saturating_add(self.run)
    }

    /// Checks the entry's ranges (run ≥ 1, end within 2^63 units, device index bound).
    pub fn validate(&self) -> Result<()> {
        if self.run == 0 {
            return Err(invalid("run", 0, "an entry covers at least one unit"));
        }
        if self
            .offset
            .checked_add(self.run)
            .is_none_or(|e| e > 1u64 << SM2_OFFSET_BITS)
        {
            return Err(invalid(
                "offset",
                self.offset,
                "extent ends beyond 2^63 units",
            ));
        }
        if let Some(v) = self.vdev {
            if v > SM2_DEVICE_MAX {
                return Err(invalid("vdev", u64::from(v), "device index above 2^24 - 2"));
            }
        }
        Ok(())
    }

    /// Whether this entry needs the two-word form (it fits one word otherwise).
    pub fn needs_two_words(&self) -> bool {
        self.vdev.is_some() || self.run > SM_RUN_MAX || self.offset >= 1 << SM_OFFSET_BITS
    }
}

/// A debug word: context for the entries that follow it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SmDebug {
    /// Action of the batch that follows.
    pub action: SmAction,
    /// Sync pass that wrote it (< 1024).
    pub sync_pass: u16,
    /// Txg that wrote it (1..2^50; 0 is reserved for padding).
    pub txg: u64,
}

impl SmDebug {
    /// Checks the field ranges.
    pub fn validate(&self) -> Result<()> {
        if self.txg == 0 || self.txg >= 1 << SM_DEBUG_TXG_BITS {
            return Err(invalid("txg", self.txg, "debug txg outside 1..2^50"));
        }
        if u64::from(self.sync_pass) >= 1 << SM_DEBUG_PASS_BITS {
            return Err(invalid(
                "sync_pass",
                u64::from(self.sync_pass),
                "above 1023",
            ));
        }
        Ok(())
    }
}

/// One decoded record of a space-map log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SmRecord {
    /// A debug word.
    Debug(SmDebug),
    /// A padding word (skipped by replay).
    Padding,
    /// An extent.
    Entry(SpaceMapEntry),
}

/// A record with its place in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SmItem {
    /// The record.
    pub record: SmRecord,
    /// Byte offset of its first word (in the block for [`decode_block`], in the map for
    /// [`SpaceMapIter`]).
    pub pos: u64,
    /// Encoded length: 8 or 16 bytes.
    pub len: u8,
}

pub(crate) fn invalid(field: &'static str, value: u64, reason: &'static str) -> OnDiskError {
    OnDiskError::InvalidField {
        what: WHAT,
        field,
        value,
        reason,
    }
}

/// Checks a space-map block size: a power of two in 512 B..=16 MiB.
pub fn check_block_size(block_size: usize) -> Result<()> {
    let ok = block_size.is_power_of_two()
        && (MIN_BLOCK_SIZE as usize..=MAX_BLOCK_SIZE as usize).contains(&block_size);
    if !ok {
        return Err(invalid(
            "block_size",
            len_u64(block_size),
            "not a power of two in 512 B..=16 MiB",
        ));
    }
    Ok(())
}

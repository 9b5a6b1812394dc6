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

use crate::bytes::{len_u64, need, Reader};
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

const WHAT: &str = "space map";
const WORD: usize = 8;

/// Whether an entry allocates or frees its extent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SmAction {
    /// The extent became allocated.
    Alloc,
    /// The extent became free.
    Free,
}

impl SmAction {
    fn bit(self) -> u64 {
        match self {
            SmAction::Alloc => 0,
            SmAction::Free => 1,
        }
    }

    fn from_bit(bit: u64) -> SmAction {
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

fn invalid(field: &'static str, value: u64, reason: &'static str) -> OnDiskError {
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

fn debug_word(d: &SmDebug) -> u64 {
    (0b10 << 62) | (d.action.bit() << 60) | (u64::from(d.sync_pass) << 50) | d.txg
}

/// Appends space-map records to a log that already holds `existing_length` bytes, padding so
/// that no two-word entry straddles a block boundary.
#[derive(Debug, Clone)]
pub struct SpaceMapEncoder {
    block_size: u64,
    base_len: u64,
    buf: Vec<u8>,
    alloc_delta: i64,
}

impl SpaceMapEncoder {
    /// An encoder continuing a map of `existing_length` bytes in blocks of `block_size`.
    pub fn new(block_size: usize, existing_length: u64) -> Result<SpaceMapEncoder> {
        check_block_size(block_size)?;
        if !existing_length.is_multiple_of(8) {
            return Err(invalid("length", existing_length, "not a multiple of 8"));
        }
        Ok(SpaceMapEncoder {
            block_size: len_u64(block_size),
            base_len: existing_length,
            buf: Vec::new(),
            alloc_delta: 0,
        })
    }

    /// Map length once the pending bytes are appended.
    pub fn length(&self) -> u64 {
        self.base_len + len_u64(self.buf.len())
    }

    /// Map length before this encoder's bytes.
    pub fn base_length(&self) -> u64 {
        self.base_len
    }

    /// The encoded bytes to append at [`Self::base_length`].
    pub fn bytes(&self) -> &[u8] {
        &self.buf
    }

    /// Consumes the encoder, returning the encoded bytes.
    pub fn into_bytes(self) -> Vec<u8> {
        self.buf
    }

    /// Net change of allocated units (ALLOC runs minus FREE runs) of the entries encoded.
    pub fn alloc_delta_units(&self) -> i64 {
        self.alloc_delta
    }

    fn push_word(&mut self, w: u64) {
        self.buf.extend_from_slice(&w.to_le_bytes());
    }

    /// Appends a debug word.
    pub fn debug(&mut self, d: SmDebug) -> Result<()> {
        d.validate()?;
        self.push_word(debug_word(&d));
        Ok(())
    }

    /// Appends an entry, split into several if its run exceeds one encoded entry.
    pub fn entry(&mut self, e: SpaceMapEntry) -> Result<()> {
        e.validate()?;
        let delta = i64::try_from(e.run).map_err(|_| invalid("run", e.run, "too long"))?;
        let delta = match e.action {
            SmAction::Alloc => delta,
            SmAction::Free => -delta,
        };
        let new_delta = self.alloc_delta.checked_add(delta).ok_or(invalid(
            "run",
            e.run,
            "net allocation overflows i64",
        ))?;
        let mut offset = e.offset;
        let mut left = e.run;
        while left > 0 {
            let piece = SpaceMapEntry {
                run: left.min(SM2_RUN_MAX),
                offset,
                ..e
            };
            let piece = if piece.needs_two_words() {
                piece
            } else {
                SpaceMapEntry {
                    run: piece.run.min(SM_RUN_MAX),
                    ..piece
                }
            };
            self.push_one(&piece);
            offset += piece.run;
            left -= piece.run;
        }
        self.alloc_delta = new_delta;
        Ok(())
    }

    fn push_one(&mut self, e: &SpaceMapEntry) {
        if e.needs_two_words() {
            // Only one word left in this block: pad so the pair stays in one block.
            if (self.length() + 8).is_multiple_of(self.block_size) {
                self.push_word(SM_PADDING_WORD);
            }
            let dev = e.vdev.map_or(0, |v| u64::from(v) + 1);
            let w1 = (0b11 << 62) | ((e.run - 1) << 24) | dev;
            let w2 = (e.action.bit() << 63) | e.offset;
            self.push_word(w1);
            self.push_word(w2);
        } else {
            let w = (e.offset << 16) | (e.action.bit() << 15) | (e.run - 1);
            self.push_word(w);
        }
    }

    /// Appends a batch like OpenZFS's `space_map_write`: one debug word (action, pass, txg),
    /// then one entry per `(offset, run)` segment, all with `action` and `vdev`.
    pub fn write_batch<I>(
        &mut self,
        action: SmAction,
        sync_pass: u16,
        txg: u64,
        vdev: Option<u32>,
        segments: I,
    ) -> Result<()>
    where
        I: IntoIterator<Item = (u64, u64)>,
    {
        self.debug(SmDebug {
            action,
            sync_pass,
            txg,
        })?;
        for (offset, run) in segments {
            self.entry(SpaceMapEntry {
                action,
                offset,
                run,
                vdev,
            })?;
        }
        Ok(())
    }

    /// Like [`Self::write_batch`] with byte ranges `(start, len)` (absolute device offsets, as
    /// the allocator reports them) converted to units of the map whose region starts at
    /// `map_start` with unit `2^shift`.
    pub fn write_byte_batch<I>(
        &mut self,
        action: SmAction,
        sync_pass: u16,
        txg: u64,
        map_start: u64,
        shift: u8,
        ranges: I,
    ) -> Result<()>
    where
        I: IntoIterator<Item = (u64, u64)>,
    {
        self.debug(SmDebug {
            action,
            sync_pass,
            txg,
        })?;
        for (start, len) in ranges {
            self.entry(SpaceMapEntry::from_bytes(
                action, start, len, map_start, shift,
            )?)?;
        }
        Ok(())
    }

    /// The pending bytes cut at block boundaries: `(block id, offset in block, bytes)`.
    pub fn chunks(&self) -> SmChunks<'_> {
        SmChunks {
            bytes: &self.buf,
            pos: self.base_len,
            block_size: self.block_size,
        }
    }
}

/// Iterator over block-sized pieces of encoded bytes (see [`SpaceMapEncoder::chunks`]).
#[derive(Debug, Clone)]
pub struct SmChunks<'a> {
    bytes: &'a [u8],
    pos: u64,
    block_size: u64,
}

/// One block's share of encoded bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SmChunk<'a> {
    /// Block id in the map object.
    pub block_id: u64,
    /// Byte offset inside that block.
    pub offset_in_block: usize,
    /// The bytes.
    pub bytes: &'a [u8],
}

impl<'a> Iterator for SmChunks<'a> {
    type Item = SmChunk<'a>;

    fn next(&mut self) -> Option<SmChunk<'a>> {
        if self.bytes.is_empty() {
            return None;
        }
        let in_block = self.pos % self.block_size;
        let room = usize::try_from(self.block_size - in_block).unwrap_or(usize::MAX);
        let take = room.min(self.bytes.len());
        let (now, rest) = self.bytes.split_at(take);
        let chunk = SmChunk {
            block_id: self.pos / self.block_size,
            offset_in_block: usize::try_from(in_block).unwrap_or(0),
            bytes: now,
        };
        self.bytes = rest;
        self.pos += len_u64(take);
        Some(chunk)
    }
}

/// Decodes the record starting at `data[pos..]`. `block_end` is where the current block ends in
/// `data` (a two-word entry must end at or before it).
fn decode_at(data: &[u8], pos: usize, block_end: usize) -> Result<(SmRecord, u8)> {
    let word = |at: usize| -> Result<u64> {
        let b = data.get(at..at + WORD).ok_or(OnDiskError::BufferTooSmall {
            what: WHAT,
            need: at + WORD,
            have: data.len(),
        })?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    };
    let w = word(pos)?;
    match w >> 62 {
        0 | 1 => {
            let offset = (w >> 16) & ((1 << SM_OFFSET_BITS) - 1);
            let action = SmAction::from_bit(w >> 15);
            let run = (w & ((1 << SM_RUN_BITS) - 1)) + 1;
            Ok((
                SmRecord::Entry(SpaceMapEntry {
                    action,
                    offset,
                    run,
                    vdev: None,
                }),
                8,
            ))
        }
        2 => {
            let txg = w & ((1 << SM_DEBUG_TXG_BITS) - 1);
            let pass = (w >> 50) & ((1 << SM_DEBUG_PASS_BITS) - 1);
            let action = (w >> 60) & 3;
            if txg == 0 {
                if w != SM_PADDING_WORD {
                    return Err(invalid("padding", w, "padding word with non-zero fields"));
                }
                return Ok((SmRecord::Padding, 8));
            }
            if action > 1 {
                return Err(OnDiskError::UnknownEnum {
                    what: WHAT,
                    field: "debug action",
                    value: action,
                });
            }
            let sync_pass =
                u16::try_from(pass).map_err(|_| invalid("sync_pass", pass, "too large"))?;
            Ok((
                SmRecord::Debug(SmDebug {
                    action: SmAction::from_bit(action),
                    sync_pass,
                    txg,
                }),
                8,
            ))
        }
        _ => {
            if pos + 2 * WORD > block_end {
                return Err(invalid(
                    "two-word entry",
                    len_u64(pos),
                    "straddles a block boundary or the end of the map",
                ));
            }
            if (w >> 60) & 3 != 0 {
                return Err(OnDiskError::NonZeroReserved {
                    what: WHAT,
                    field: "two-word padding bits",
                });
            }
            let run = ((w >> 24) & ((1 << SM2_RUN_BITS) - 1)) + 1;
            let dev = w & ((1 << SM2_DEVICE_BITS) - 1);
            let vdev = match dev {
                0 => None,
                d => Some(u32::try_from(d - 1).map_err(|_| invalid("vdev", d, "too large"))?),
            };
            let w2 = word(pos + WORD)?;
            let action = SmAction::from_bit(w2 >> 63);
            let offset = w2 & ((1 << SM2_OFFSET_BITS) - 1);
            let e = SpaceMapEntry {
                action,
                offset,
                run,
                vdev,
            };
            e.validate()?;
            Ok((SmRecord::Entry(e), 16))
        }
    }
}

/// Decodes the valid bytes of one block (`block.len()` must be a multiple of 8): every record
/// with its position in the block, in log order. Entries can only be parsed forwards (the second
/// word of a pair looks like anything), so a destroy-from-the-end walks this list backwards.
pub fn decode_block(block: &[u8]) -> Result<Vec<SmItem>> {
    if !block.len().is_multiple_of(WORD) {
        return Err(OnDiskError::BadLength {
            what: WHAT,
            len: block.len(),
            reason: "not a multiple of 8",
        });
    }
    let mut out = Vec::with_capacity(block.len() / WORD);
    let mut pos = 0;
    while pos < block.len() {
        let (record, len) = decode_at(block, pos, block.len())?;
        out.push(SmItem {
            record,
            pos: len_u64(pos),
            len,
        });
        pos += usize::from(len);
    }
    Ok(out)
}

/// What [`pop_tail`] removed from the end of a map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TailPop {
    /// Entries removed, last one first (reverse log order).
    pub entries: Vec<SpaceMapEntry>,
    /// Bytes to cut from the map's length (entries, debug and padding words).
    pub bytes_removed: u64,
    /// Change to apply to the map's net allocation, in units (−run per ALLOC removed, +run per
    /// FREE removed).
    pub alloc_delta_units: i64,
    /// True if the whole block was consumed (continue with the previous block).
    pub block_emptied: bool,
}

/// Removes entries from the end of a map, for a tail-first incremental destroy (checkpoint
/// discard): `block` is the valid part of the map's last block (from the block start up to the
/// map length). Walks the block's records backwards, dropping debug and padding words and up to
/// `max_entries` entries; stops before the first entry over budget (debug words after it are
/// still dropped, as they describe nothing that remains).
pub fn pop_tail(block: &[u8], max_entries: usize) -> Result<TailPop> {
    let items = decode_block(block)?;
    let mut out = TailPop {
        entries: Vec::new(),
        bytes_removed: 0,
        alloc_delta_units: 0,
        block_emptied: false,
    };
    let mut consumed_all = true;
    for item in items.iter().rev() {
        if let SmRecord::Entry(e) = item.record {
            if out.entries.len() >= max_entries {
                consumed_all = false;
                break;
            }
            let run = i64::try_from(e.run).map_err(|_| invalid("run", e.run, "too long"))?;
            let d = match e.action {
                SmAction::Alloc => -run,
                SmAction::Free => run,
            };
            out.alloc_delta_units = out.alloc_delta_units.checked_add(d).ok_or(invalid(
                "run",
                e.run,
                "net allocation overflows i64",
            ))?;
            out.entries.push(e);
        }
        out.bytes_removed += u64::from(item.len);
    }
    out.block_emptied = consumed_all;
    Ok(out)
}

/// An entry as seen by replay: the extent plus the context of the last debug word.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ReplayEntry {
    /// The extent.
    pub entry: SpaceMapEntry,
    /// Txg of the most recent debug word (0 if none yet).
    pub txg: u64,
    /// Sync pass of the most recent debug word.
    pub sync_pass: u16,
    /// Byte offset of the entry in the map.
    pub pos: u64,
    /// Encoded length (8 or 16).
    pub len: u8,
}

/// Replays a map's bytes (read from map offset `start`, a multiple of the block size, up to the
/// header's length): yields each extent entry with its debug context, validating every word
/// and, if a region size is set, that each extent lies inside the region. Stops after the first
/// error.
#[derive(Debug, Clone)]
pub struct SpaceMapIter<'a> {
    data: &'a [u8],
    pos: usize,
    start: u64,
    block_size: usize,
    region_units: Option<u64>,
    txg: u64,
    sync_pass: u16,
    done: bool,
}

impl<'a> SpaceMapIter<'a> {
    /// Replays `data`, the map bytes from map offset `start`, with blocks of `block_size`.
    pub fn new(data: &'a [u8], block_size: usize, start: u64) -> Result<SpaceMapIter<'a>> {
        check_block_size(block_size)?;
        if !start.is_multiple_of(len_u64(block_size)) {
            return Err(invalid("start", start, "not block aligned"));
        }
        if !data.len().is_multiple_of(WORD) {
            return Err(OnDiskError::BadLength {
                what: WHAT,
                len: data.len(),
                reason: "not a multiple of 8",
            });
        }
        Ok(SpaceMapIter {
            data,
            pos: 0,
            start,
            block_size,
            region_units: None,
            txg: 0,
            sync_pass: 0,
            done: false,
        })
    }

    /// Requires every extent to end at or before `units` (the map's region size).
    pub fn with_region(mut self, units: u64) -> SpaceMapIter<'a> {
        self.region_units = Some(units);
        self
    }

    /// Txg of the last debug word seen.
    pub fn txg(&self) -> u64 {
        self.txg
    }

    fn step(&mut self) -> Result<Option<ReplayEntry>> {
        while self.pos < self.data.len() {
            let block_end = (self.pos / self.block_size + 1)
                .saturating_mul(self.block_size)
                .min(self.data.len());
            let (record, len) = decode_at(self.data, self.pos, block_end)?;
            let pos = self.start + len_u64(self.pos);
            self.pos += usize::from(len);
            match record {
                SmRecord::Padding => {}
                SmRecord::Debug(d) => {
                    self.txg = d.txg;
                    self.sync_pass = d.sync_pass;
                }
                SmRecord::Entry(entry) => {
                    if let Some(units) = self.region_units {
                        if entry.end() > units {
                            return Err(invalid(
                                "offset",
                                entry.offset,
                                "extent beyond the map's region",
                            ));
                        }
                    }
                    return Ok(Some(ReplayEntry {
                        entry,
                        txg: self.txg,
                        sync_pass: self.sync_pass,
                        pos,
                        len,
                    }));
                }
            }
        }
        Ok(None)
    }
}

impl Iterator for SpaceMapIter<'_> {
    type Item = Result<ReplayEntry>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        match self.step() {
            Ok(Some(e)) => Some(Ok(e)),
            Ok(None) => {
                self.done = true;
                None
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

/// The header of a space-map object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SpaceMapHeader {
    /// Bytes of entry words.
    pub length: u64,
    /// Net allocated bytes.
    pub alloc: i64,
    /// Free-segment histogram (see the module docs).
    pub histogram: [u64; SPACE_MAP_HISTOGRAM_SIZE],
}

/// Histogram bucket of a segment of `size` bytes in a map of unit `2^shift` (0 for sizes
/// below one unit).
pub fn histogram_bucket(size: u64, shift: u8) -> usize {
    if size == 0 {
        return 0;
    }
    let log = 63 - size.leading_zeros();
    let idx = log.saturating_sub(u32::from(shift));
    usize::try_from(idx)
        .unwrap_or(usize::MAX)
        .min(SPACE_MAP_HISTOGRAM_SIZE - 1)
}

impl SpaceMapHeader {
    /// Checks the fields (the length is a whole number of words).
    pub fn validate(&self) -> Result<()> {
        if !self.length.is_multiple_of(8) {
            return Err(invalid("length", self.length, "not a multiple of 8"));
        }
        Ok(())
    }

    /// Counts a free segment of `size` bytes.
    pub fn histogram_add(&mut self, size: u64, shift: u8) {
        let b = histogram_bucket(size, shift);
        self.histogram[b] = self.histogram[b].saturating_add(1);
    }

    /// Uncounts a free segment of `size` bytes (saturating at zero).
    pub fn histogram_remove(&mut self, size: u64, shift: u8) {
        let b = histogram_bucket(size, shift);
        self.histogram[b] = self.histogram[b].saturating_sub(1);
    }

    /// Replaces the histogram with a byte-length histogram (`bytes_hist[i]` counts segments
    /// of `[2^i, 2^(i+1))` bytes, as the allocator's range trees keep it) folded into this
    /// header's buckets for unit `2^shift`.
    pub fn set_histogram_from_bytes(&mut self, bytes_hist: &[u64], shift: u8) {
        self.histogram = [0; SPACE_MAP_HISTOGRAM_SIZE];
        for (i, &n) in bytes_hist.iter().enumerate() {
            let b = i
                .saturating_sub(usize::from(shift))
                .min(SPACE_MAP_HISTOGRAM_SIZE - 1);
            self.histogram[b] = self.histogram[b].saturating_add(n);
        }
    }

    /// Applies an encoder's output: new length and net allocation (`shift` converts units to
    /// bytes).
    pub fn apply(&mut self, enc: &SpaceMapEncoder, shift: u8) -> Result<()> {
        if enc.base_length() != self.length {
            return Err(invalid(
                "length",
                enc.base_length(),
                "encoder does not continue this map",
            ));
        }
        let bytes = enc
            .alloc_delta_units()
            .checked_mul(1i64 << shift.min(62))
            .and_then(|d| self.alloc.checked_add(d))
            .ok_or(invalid(
                "alloc",
                self.length,
                "net allocation overflows i64",
            ))?;
        self.alloc = bytes;
        self.length = enc.length();
        Ok(())
    }

    /// Encodes into [`SPACE_MAP_HEADER_SIZE`] bytes.
    pub fn to_bytes(&self) -> [u8; SPACE_MAP_HEADER_SIZE] {
        let mut b = [0u8; SPACE_MAP_HEADER_SIZE];
        b[0..8].copy_from_slice(&self.length.to_le_bytes());
        b[8..16].copy_from_slice(&self.alloc.to_le_bytes());
        for (i, h) in self.histogram.iter().enumerate() {
            b[16 + 8 * i..24 + 8 * i].copy_from_slice(&h.to_le_bytes());
        }
        b
    }

    /// Decodes and validates.
    pub fn decode(buf: &[u8]) -> Result<SpaceMapHeader> {
        need(buf, SPACE_MAP_HEADER_SIZE, "space map header")?;
        let mut r = Reader::new(buf, "space map header");
        let length = r.u64()?;
        let alloc = r.i64()?;
        let mut histogram = [0u64; SPACE_MAP_HISTOGRAM_SIZE];
        for h in histogram.iter_mut() {
            *h = r.u64()?;
        }
        let h = SpaceMapHeader {
            length,
            alloc,
            histogram,
        };
        h.validate()?;
        Ok(h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(b: &[u8]) -> Vec<u64> {
        b.chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
            .collect()
    }

    #[test]
    fn word_layouts() {
        let mut enc = SpaceMapEncoder::new(4096, 0).unwrap();
        enc.debug(SmDebug {
            action: SmAction::Free,
            sync_pass: 3,
            txg: 77,
        })
        .unwrap();
        enc.entry(SpaceMapEntry::new(SmAction::Alloc, 5, 3))
            .unwrap();
        enc.entry(SpaceMapEntry::new(SmAction::Free, 9, SM_RUN_MAX))
            .unwrap();
        enc.entry(SpaceMapEntry::new(SmAction::Free, 9, SM_RUN_MAX + 1))
            .unwrap();
        enc.entry(SpaceMapEntry {
            action: SmAction::Alloc,
            offset: 1,
            run: 1,
            vdev: Some(0),
        })
        .unwrap();
        let w = words(enc.bytes());
        assert_eq!(w[0], (0b10 << 62) | (1 << 60) | (3 << 50) | 77);
        assert_eq!(w[1], (5 << 16) | 2);
        assert_eq!(w[2], (9 << 16) | (1 << 15) | (SM_RUN_MAX - 1));
        assert_eq!(w[3], (0b11 << 62) | (SM_RUN_MAX << 24));
        assert_eq!(w[4], (1 << 63) | 9);
        assert_eq!(w[5], (0b11 << 62) | 1);
        assert_eq!(w[6], 1);
        assert_eq!(w.len(), 7);
        assert_eq!(
            enc.alloc_delta_units(),
            3 - 2 * i64::try_from(SM_RUN_MAX).unwrap() - 1 + 1
        );
    }

    #[test]
    fn two_word_entry_never_straddles() {
        // One word left in the block: the encoder pads, the pair starts the next block.
        let mut enc = SpaceMapEncoder::new(512, 512 - 8).unwrap();
        enc.entry(SpaceMapEntry::new(SmAction::Alloc, 0, SM_RUN_MAX + 1))
            .unwrap();
        let w = words(enc.bytes());
        assert_eq!(w[0], SM_PADDING_WORD);
        assert_eq!(w[1] >> 62, 0b11);
        assert_eq!(enc.length(), 512 + 16);
        let chunks: Vec<_> = enc.chunks().collect();
        assert_eq!(chunks.len(), 2);
        assert_eq!(
            (
                chunks[0].block_id,
                chunks[0].offset_in_block,
                chunks[0].bytes.len()
            ),
            (0, 504, 8)
        );
        assert_eq!(
            (
                chunks[1].block_id,
                chunks[1].offset_in_block,
                chunks[1].bytes.len()
            ),
            (1, 0, 16)
        );
        // One-word entries need no padding.
        let mut enc = SpaceMapEncoder::new(512, 512 - 8).unwrap();
        enc.entry(SpaceMapEntry::new(SmAction::Alloc, 0, 1))
            .unwrap();
        assert_eq!(enc.bytes().len(), 8);
        // Exactly two words left: no padding.
        let mut enc = SpaceMapEncoder::new(512, 512 - 16).unwrap();
        enc.entry(SpaceMapEntry::new(SmAction::Alloc, 0, SM_RUN_MAX + 1))
            .unwrap();
        assert_eq!(enc.bytes().len(), 16);
    }

    #[test]
    fn long_runs_split() {
        let mut enc = SpaceMapEncoder::new(4096, 0).unwrap();
        enc.entry(SpaceMapEntry::new(SmAction::Free, 10, 2 * SM2_RUN_MAX + 5))
            .unwrap();
        let got: Vec<_> = SpaceMapIter::new(enc.bytes(), 4096, 0)
            .unwrap()
            .map(|r| r.unwrap().entry)
            .collect();
        assert_eq!(
            got,
            vec![
                SpaceMapEntry::new(SmAction::Free, 10, SM2_RUN_MAX),
                SpaceMapEntry::new(SmAction::Free, 10 + SM2_RUN_MAX, SM2_RUN_MAX),
                SpaceMapEntry::new(SmAction::Free, 10 + 2 * SM2_RUN_MAX, 5),
            ]
        );
        assert_eq!(
            enc.alloc_delta_units(),
            -(2 * i64::try_from(SM2_RUN_MAX).unwrap() + 5)
        );
    }

    #[test]
    fn large_offsets_use_two_words() {
        let e = SpaceMapEntry::new(SmAction::Alloc, 1 << SM_OFFSET_BITS, 1);
        assert!(e.needs_two_words());
        let mut enc = SpaceMapEncoder::new(4096, 0).unwrap();
        enc.entry(e).unwrap();
        assert_eq!(enc.bytes().len(), 16);
        let got = decode_block(enc.bytes()).unwrap();
        assert_eq!(
            got,
            vec![SmItem {
                record: SmRecord::Entry(e),
                pos: 0,
                len: 16
            }]
        );
    }

    #[test]
    fn invalid_inputs_rejected() {
        let enc_err = |e: SpaceMapEntry| SpaceMapEncoder::new(4096, 0).unwrap().entry(e).is_err();
        assert!(enc_err(SpaceMapEntry::new(SmAction::Alloc, 0, 0)));
        assert!(enc_err(SpaceMapEntry::new(SmAction::Alloc, u64::MAX, 1)));
        assert!(enc_err(SpaceMapEntry::new(SmAction::Alloc, 1 << 63, 1)));
        assert!(enc_err(SpaceMapEntry {
            action: SmAction::Alloc,
            offset: 0,
            run: 1,
            vdev: Some(SM2_DEVICE_MAX + 1)
        }));
        let mut enc = SpaceMapEncoder::new(4096, 0).unwrap();
        assert!(enc
            .debug(SmDebug {
                action: SmAction::Alloc,
                sync_pass: 0,
                txg: 0
            })
            .is_err());
        assert!(enc
            .debug(SmDebug {
                action: SmAction::Alloc,
                sync_pass: 1024,
                txg: 1
            })
            .is_err());
        assert!(enc
            .debug(SmDebug {
                action: SmAction::Alloc,
                sync_pass: 1,
                txg: 1 << 50
            })
            .is_err());
        assert!(SpaceMapEncoder::new(4095, 0).is_err());
        assert!(SpaceMapEncoder::new(4096, 4).is_err());
        assert!(SpaceMapEncoder::new(256, 0).is_err());

        let w = |v: u64| v.to_le_bytes().to_vec();
        // A two-word entry cut by the end of the block.
        assert!(decode_block(&w(0b11 << 62)).is_err());
        // Two-word padding bits set.
        let mut b = w((0b11 << 62) | (1 << 60));
        b.extend(w(0));
        assert!(matches!(
            decode_block(&b),
            Err(OnDiskError::NonZeroReserved { .. })
        ));
        // Debug action 2.
        assert!(decode_block(&w((0b10 << 62) | (2 << 60) | 1)).is_err());
        // Padding word with a non-zero pass.
        assert!(decode_block(&w((0b10 << 62) | (1 << 50))).is_err());
        // Two-word entry whose extent overflows 2^63 units.
        let mut b = w((0b11 << 62) | (5 << 24));
        b.extend(w((1 << 63) - 1));
        assert!(decode_block(&b).is_err());
        // Odd length.
        assert!(decode_block(&[0u8; 12]).is_err());
        assert!(SpaceMapIter::new(&[0u8; 12], 4096, 0).is_err());
        assert!(SpaceMapIter::new(&[0u8; 8], 4096, 8).is_err());
    }

    #[test]
    fn replay_context_region_and_straddle() {
        let mut enc = SpaceMapEncoder::new(512, 0).unwrap();
        enc.write_batch(SmAction::Alloc, 1, 40, None, [(0, 4), (8, 2)])
            .unwrap();
        enc.write_batch(SmAction::Free, 2, 41, None, [(0, 1)])
            .unwrap();
        let got: Vec<_> = SpaceMapIter::new(enc.bytes(), 512, 0)
            .unwrap()
            .map(|r| r.unwrap())
            .collect();
        assert_eq!(got.len(), 3);
        assert_eq!((got[0].txg, got[0].sync_pass, got[0].pos), (40, 1, 8));
        assert_eq!(
            (got[2].txg, got[2].sync_pass, got[2].entry.action),
            (41, 2, SmAction::Free)
        );
        // Region bound.
        let mut it = SpaceMapIter::new(enc.bytes(), 512, 0)
            .unwrap()
            .with_region(9);
        assert!(it.next().unwrap().is_ok());
        assert!(it.next().unwrap().is_err());
        assert!(it.next().is_none(), "the iterator stops after an error");
        // A pair placed across a block boundary by a broken writer is rejected by replay.
        let mut map = vec![0u8; 512 - 8];
        map.extend(((0b11u64 << 62) | (1 << 24)).to_le_bytes());
        map.extend(5u64.to_le_bytes());
        map.resize(1024, 0);
        let r: Result<Vec<_>> = SpaceMapIter::new(&map, 512, 0).unwrap().collect();
        assert!(r.is_err());
    }

    #[test]
    fn header_apply_and_histogram() {
        let mut h = SpaceMapHeader::default();
        let mut enc = SpaceMapEncoder::new(4096, 0).unwrap();
        enc.write_batch(SmAction::Alloc, 1, 5, None, [(0, 10), (20, 6)])
            .unwrap();
        enc.write_batch(SmAction::Free, 1, 5, None, [(0, 4)])
            .unwrap();
        h.apply(&enc, 12).unwrap();
        assert_eq!(h.length, enc.length());
        assert_eq!(h.alloc, 12 * 4096);
        let stale = SpaceMapEncoder::new(4096, 0).unwrap();
        assert!(h.apply(&stale, 12).is_err());
        assert_eq!(histogram_bucket(4096, 12), 0);
        assert_eq!(histogram_bucket(8191, 12), 0);
        assert_eq!(histogram_bucket(8192, 12), 1);
        assert_eq!(histogram_bucket(1 << 60, 12), SPACE_MAP_HISTOGRAM_SIZE - 1);
        assert_eq!(histogram_bucket(100, 12), 0);
        let mut bytes_hist = [0u64; 64];
        bytes_hist[12] = 3;
        bytes_hist[13] = 1;
        bytes_hist[63] = 2;
        h.set_histogram_from_bytes(&bytes_hist, 12);
        assert_eq!((h.histogram[0], h.histogram[1], h.histogram[31]), (3, 1, 2));
        h.histogram = [0; SPACE_MAP_HISTOGRAM_SIZE];
        h.histogram_add(1 << 20, 12);
        assert_eq!(h.histogram[8], 1);
        h.histogram_remove(1 << 20, 12);
        h.histogram_remove(1 << 20, 12);
        assert_eq!(h.histogram[8], 0);
        assert!(SpaceMapHeader::decode(&[0u8; 100]).is_err());
        let mut b = h.to_bytes();
        b[0] = 3;
        assert!(SpaceMapHeader::decode(&b).is_err());
    }

    #[test]
    fn tail_pop_walks_backwards_with_budget() {
        let mut enc = SpaceMapEncoder::new(512, 0).unwrap();
        enc.write_batch(SmAction::Free, 1, 10, None, [(0, 1), (4, 2)])
            .unwrap();
        enc.write_batch(SmAction::Free, 1, 11, None, [(10, SM_RUN_MAX + 1)])
            .unwrap();
        // Layout: dbg, e(0,1), e(4,2), dbg, pair(10, big) = 6 words.
        assert_eq!(enc.bytes().len(), 48);
        let p = pop_tail(enc.bytes(), 2).unwrap();
        assert_eq!(
            p.entries,
            vec![
                SpaceMapEntry::new(SmAction::Free, 10, SM_RUN_MAX + 1),
                SpaceMapEntry::new(SmAction::Free, 4, 2)
            ]
        );
        // pair (16) + dbg (8) + one-word (8)
        assert_eq!(p.bytes_removed, 32);
        assert_eq!(p.alloc_delta_units, i64::try_from(SM_RUN_MAX).unwrap() + 3);
        assert!(!p.block_emptied);
        // The rest of the block.
        let rest = &enc.bytes()[..48 - 32];
        let p2 = pop_tail(rest, 100).unwrap();
        assert_eq!(p2.entries, vec![SpaceMapEntry::new(SmAction::Free, 0, 1)]);
        assert_eq!(p2.bytes_removed, 16);
        assert!(p2.block_emptied);
        // Zero budget still drops trailing debug words.
        let mut enc = SpaceMapEncoder::new(512, 0).unwrap();
        enc.entry(SpaceMapEntry::new(SmAction::Alloc, 0, 1))
            .unwrap();
        enc.debug(SmDebug {
            action: SmAction::Alloc,
            sync_pass: 1,
            txg: 3,
        })
        .unwrap();
        let p = pop_tail(enc.bytes(), 0).unwrap();
        assert_eq!(
            (p.entries.len(), p.bytes_removed, p.block_emptied),
            (0, 8, false)
        );
    }

    #[test]
    fn byte_batch() {
        let mut enc = SpaceMapEncoder::new(4096, 0).unwrap();
        enc.write_byte_batch(
            SmAction::Alloc,
            1,
            9,
            1 << 22,
            12,
            [((1 << 22) + 4096, 8192)],
        )
        .unwrap();
        let got: Vec<_> = SpaceMapIter::new(enc.bytes(), 4096, 0)
            .unwrap()
            .map(|r| r.unwrap().entry)
            .collect();
        assert_eq!(got, vec![SpaceMapEntry::new(SmAction::Alloc, 1, 2)]);
        assert!(enc
            .write_byte_batch(SmAction::Alloc, 1, 9, 1 << 22, 12, [(0, 4096)])
            .is_err());
    }

    #[test]
    fn byte_conversions() {
        let e =
            SpaceMapEntry::from_bytes(SmAction::Free, (1 << 24) + 8192, 4096, 1 << 24, 12).unwrap();
        assert_eq!((e.offset, e.run), (2, 1));
        assert_eq!(e.byte_range(1 << 24, 12), Some(((1 << 24) + 8192, 4096)));
        assert!(SpaceMapEntry::from_bytes(SmAction::Free, 100, 4096, 0, 12).is_err());
        assert!(SpaceMapEntry::from_bytes(SmAction::Free, 0, 0, 0, 12).is_err());
        assert!(SpaceMapEntry::from_bytes(SmAction::Free, 0, 4096, 4096, 12).is_err());
        assert_eq!(
            SpaceMapEntry::new(SmAction::Free, 1 << 62, 1).byte_range(0, 12),
            None
        );
    }
}

//! Space-map decoding: one record at a time, whole blocks, replay with debug context, and the
//! tail-first pop used by incremental destroy.

use super::{
    check_block_size, invalid, SmAction, SmDebug, SmItem, SmRecord, SpaceMapEntry, SM2_DEVICE_BITS,
    SM2_OFFSET_BITS, SM2_RUN_BITS, SM_DEBUG_PASS_BITS, SM_DEBUG_TXG_BITS, SM_OFFSET_BITS,
    SM_PADDING_WORD, SM_RUN_BITS, WHAT, WORD,
};
use crate::bytes::{len_u64, word_at};
use crate::error::{OnDiskError, Result};

/// Decodes the record starting at `data[pos..]`. `block_end` is where the current block ends in
/// `data` (a two-word entry must end at or before it).
fn decode_at(data: &[u8], pos: usize, block_end: usize) -> Result<(SmRecord, u8)> {
    let word = |at: usize| -> Result<u64> {
        word_at(data, at).ok_or(OnDiskError::BufferTooSmall {
            what: WHAT,
            need: at.saturating_add(WORD),
            have: data.len(),
        })
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

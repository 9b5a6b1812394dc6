//! The space-map encoder: entries and debug words into log bytes, padded so that no two-word
//! entry straddles a block, and cut into block-sized chunks.

use super::{
    check_block_size, invalid, SmAction, SmDebug, SpaceMapEntry, SM2_RUN_MAX, SM_PADDING_WORD,
    SM_RUN_MAX,
};
use crate::bytes::len_u64;
use crate::error::Result;

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

//! Block pointers and indirect blocks.
//!
//! A block pointer names a block (device, offset, allocated size), says what it holds (type,
//! level, logical size, birth txg, fill count) and carries the checksum of the block it points
//! to, so every read from the uberblock down is verified by its parent (a Merkle tree): a torn,
//! lost or misdirected write shows up as a checksum mismatch.
//!
//! # Encoding (64 bytes, little endian)
//!
//! | offset | size | field                                                               |
//! |--------|------|---------------------------------------------------------------------|
//! | 0      | 8    | offset: device byte offset of the block (0 for a hole)              |
//! | 8      | 4    | device index in the pool's device list (0 for a hole)               |
//! | 12     | 4    | allocated size in bytes (0 for a hole)                              |
//! | 16     | 4    | logical size in bytes                                               |
//! | 20     | 1    | object type ([`ObjectType`])                                        |
//! | 21     | 1    | level (0 = data, n = indirect block n levels above the data)        |
//! | 22     | 1    | checksum algorithm; **0 marks a hole**                              |
//! | 23     | 1    | flags, reserved, 0                                                  |
//! | 24     | 8    | birth txg (a hole's birth txg records when it was punched; 0 = never written) |
//! | 32     | 8    | fill: data blocks with content below this pointer (1 for level 0)   |
//! | 40     | 16   | checksum value of the pointed-to block (0 for a hole)               |
//! | 56     | 8    | reserved, 0                                                         |
//!
//! Sixty-four zero bytes are the empty hole: a zero-filled indirect block holds only holes.
//!
//! # Indirect block
//!
//! An indirect block is an array of encoded block pointers, `block_size / 64` of them, with no
//! header; its own checksum lives in its parent pointer.

use std::fmt;

use crate::bytes::{head, rd16b, rd32, rd64, reserved_zero};
use crate::checksum::{Checksum, ChecksumAlgo};
use crate::error::{OnDiskError, Result};
use crate::layout::{MAX_BLOCK_SIZE, MAX_DEVICES, MIN_BLOCK_SIZE};
use crate::object::{ObjectType, MAX_LEVELS};

/// Encoded size of one block pointer.
pub const BLKPTR_SIZE: usize = 64;

const WHAT: &str = "block pointer";

/// Where a block lives: device index, byte offset, allocated size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Dva {
    /// Index of the device in the pool's device list.
    pub device: u32,
    /// Byte offset on the device (a multiple of 512; of the device's block size in practice).
    pub offset: u64,
    /// Allocated bytes on the device.
    pub asize: u32,
}

/// A pointer to no data: reads return zeroes. `birth_txg` is the txg that punched it (TRIM,
/// WRITE_ZEROES, truncation), 0 for a block never written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct HolePtr {
    /// Txg that created the hole (0 = never written).
    pub birth_txg: u64,
    /// Type of the object the hole belongs to (may be `None`).
    pub kind: ObjectType,
    /// Level of the hole in its tree.
    pub level: u8,
    /// Logical size the hole stands for (0 if unknown).
    pub lsize: u32,
}

/// A pointer to a written block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DataPtr {
    /// Location.
    pub dva: Dva,
    /// Logical size (bytes of content; equal to `asize` without compression).
    pub lsize: u32,
    /// Type of the object the block belongs to.
    pub kind: ObjectType,
    /// Level in the object's tree (0 = data).
    pub level: u8,
    /// Txg in which the block was written.
    pub birth_txg: u64,
    /// Number of non-hole data blocks at or below this pointer.
    pub fill: u64,
    /// Checksum of the block's `asize` bytes.
    pub checksum: Checksum,
}

impl DataPtr {
    /// A pointer to `block` (its whole length is both the allocated and the logical size) at
    /// `(device, offset)`, with the checksum computed over it and a fill of 1 (set `fill`
    /// afterwards for an indirect block).
    pub fn for_block(
        device: u32,
        offset: u64,
        block: &[u8],
        kind: ObjectType,
        level: u8,
        birth_txg: u64,
        algo: ChecksumAlgo,
    ) -> Result<DataPtr> {
        let size = u32::try_from(block.len()).map_err(|_| {
            invalid(
                "asize",
                crate::bytes::len_u64(block.len()),
                "block too large",
            )
        })?;
        let d = DataPtr {
            dva: Dva {
                device,
                offset,
                asize: size,
            },
            lsize: size,
            kind,
            level,
            birth_txg,
            fill: 1,
            checksum: Checksum::compute(algo, block),
        };
        BlockPointer::Data(d).validate()?;
        Ok(d)
    }

    /// Verifies a block read through this pointer: its length is the allocated size and its
    /// checksum matches (a torn, stale or misdirected block fails here).
    pub fn verify(&self, block: &[u8]) -> Result<()> {
        if crate::bytes::len_u64(block.len()) != u64::from(self.dva.asize) {
            return Err(OnDiskError::BadLength {
                what: "block",
                len: block.len(),
                reason: "differs from the pointer's asize",
            });
        }
        self.checksum.verify(block, "block")
    }
}

/// A block pointer: a hole or a written block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BlockPointer {
    /// No data.
    Hole(HolePtr),
    /// A written block.
    Data(DataPtr),
}

impl fmt::Display for BlockPointer {
    /// zdb-like one-line form: `DVA=<dev:offset:asize> L0 VolumeData lsize=… birth=… fill=… crc32c:…`
    /// or `HOLE birth=…`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BlockPointer::Hole(h) => {
                write!(
                    f,
                    "HOLE L{} {:?} lsize={:#x} birth={}",
                    h.level, h.kind, h.lsize, h.birth_txg
                )
            }
            BlockPointer::Data(d) => write!(
                f,
                "DVA=<{}:{:#x}:{:#x}> L{} {:?} lsize={:#x} birth={} fill={} {}",
                d.dva.device,
                d.dva.offset,
                d.dva.asize,
                d.level,
                d.kind,
                d.lsize,
                d.birth_txg,
                d.fill,
                d.checksum
            ),
        }
    }
}

impl Default for BlockPointer {
    fn default() -> Self {
        BlockPointer::EMPTY
    }
}

impl BlockPointer {
    /// The never-written hole (64 zero bytes).
    pub const EMPTY: BlockPointer = BlockPointer::Hole(HolePtr {
        birth_txg: 0,
        kind: ObjectType::None,
        level: 0,
        lsize: 0,
    });

    /// A hole punched in `birth_txg`.
    pub fn hole(birth_txg: u64) -> BlockPointer {
        BlockPointer::Hole(HolePtr {
            birth_txg,
            kind: ObjectType::None,
            level: 0,
            lsize: 0,
        })
    }

    /// True for holes (including the empty pointer).
    pub fn is_hole(&self) -> bool {
        matches!(self, BlockPointer::Hole(_))
    }

    /// True for the never-written hole.
    pub fn is_empty(&self) -> bool {
        matches!(self, BlockPointer::Hole(h) if h.birth_txg == 0)
    }

    /// Birth txg (of the data, or of the hole).
    pub fn birth_txg(&self) -> u64 {
        match self {
            BlockPointer::Hole(h) => h.birth_txg,
            BlockPointer::Data(d) => d.birth_txg,
        }
    }

    /// Level in the tree.
    pub fn level(&self) -> u8 {
        match self {
            BlockPointer::Hole(h) => h.level,
            BlockPointer::Data(d) => d.level,
        }
    }

    /// Object type.
    pub fn kind(&self) -> ObjectType {
        match self {
            BlockPointer::Hole(h) => h.kind,
            BlockPointer::Data(d) => d.kind,
        }
    }

    /// Fill count (0 for holes).
    pub fn fill(&self) -> u64 {
        match self {
            BlockPointer::Hole(_) => 0,
            BlockPointer::Data(d) => d.fill,
        }
    }

    /// Location of a data block.
    pub fn dva(&self) -> Option<&Dva> {
        match self {
            BlockPointer::Hole(_) => None,
            BlockPointer::Data(d) => Some(&d.dva),
        }
    }

    /// The data pointer, if not a hole.
    pub fn data(&self) -> Option<&DataPtr> {
        match self {
            BlockPointer::Hole(_) => None,
            BlockPointer::Data(d) => Some(d),
        }
    }

    /// Checks every field against the format's rules (the encoder calls it too, so an invalid
    /// pointer never reaches the disk).
    pub fn validate(&self) -> Result<()> {
        match self {
            BlockPointer::Hole(h) => {
                check_level(h.level)?;
                if h.lsize > MAX_BLOCK_SIZE {
                    return Err(invalid(
                        "lsize",
                        u64::from(h.lsize),
                        "above the block size limit",
                    ));
                }
                Ok(())
            }
            BlockPointer::Data(d) => {
                check_level(d.level)?;
                if d.kind == ObjectType::None {
                    return Err(invalid("type", 0, "a data block needs an object type"));
                }
                if d.birth_txg == 0 {
                    return Err(invalid("birth_txg", 0, "a data block is born in a txg > 0"));
                }
                if d.dva.device >= MAX_DEVICES {
                    return Err(invalid(
                        "device",
                        u64::from(d.dva.device),
                        "beyond the device limit",
                    ));
                }
                check_size("asize", d.dva.asize)?;
                if d.dva.asize % MIN_BLOCK_SIZE != 0 {
                    return Err(invalid(
                        "asize",
                        u64::from(d.dva.asize),
                        "not a multiple of 512",
                    ));
                }
                check_size("lsize", d.lsize)?;
                if d.dva.offset % u64::from(MIN_BLOCK_SIZE) != 0 {
                    return Err(invalid("offset", d.dva.offset, "not a multiple of 512"));
                }
                if d.dva
                    .offset
                    .checked_add(u64::from(d.dva.asize))
                    .is_none_or(|e| e > 1u64 << 63)
                {
                    return Err(invalid("offset", d.dva.offset, "block end beyond 2^63"));
                }
                Ok(())
            }
        }
    }

    /// Encodes into exactly [`BLKPTR_SIZE`] bytes.
    pub fn to_bytes(&self) -> Result<[u8; BLKPTR_SIZE]> {
        let mut b = [0u8; BLKPTR_SIZE];
        self.encode_slot(&mut b)?;
        Ok(b)
    }

    /// Validates, then writes all [`BLKPTR_SIZE`] bytes of `b` (the one encoder; indirect
    /// blocks use it on their slots directly, without a temporary array).
    fn encode_slot(&self, b: &mut [u8; BLKPTR_SIZE]) -> Result<()> {
        self.validate()?;
        *b = [0u8; BLKPTR_SIZE];
        match self {
            BlockPointer::Hole(h) => {
                b[16..20].copy_from_slice(&h.lsize.to_le_bytes());
                b[20] = h.kind.tag();
                b[21] = h.level;
                b[24..32].copy_from_slice(&h.birth_txg.to_le_bytes());
            }
            BlockPointer::Data(d) => {
                b[0..8].copy_from_slice(&d.dva.offset.to_le_bytes());
                b[8..12].copy_from_slice(&d.dva.device.to_le_bytes());
                b[12..16].copy_from_slice(&d.dva.asize.to_le_bytes());
                b[16..20].copy_from_slice(&d.lsize.to_le_bytes());
                b[20] = d.kind.tag();
                b[21] = d.level;
                b[22] = d.checksum.algo.tag();
                b[24..32].copy_from_slice(&d.birth_txg.to_le_bytes());
                b[32..40].copy_from_slice(&d.fill.to_le_bytes());
                b[40..56].copy_from_slice(&d.checksum.value_bytes());
            }
        }
        Ok(())
    }

    /// Encodes into the first [`BLKPTR_SIZE`] bytes of `out`.
    pub fn encode_into(&self, out: &mut [u8]) -> Result<()> {
        let have = out.len();
        let dst = out
            .get_mut(..BLKPTR_SIZE)
            .ok_or(OnDiskError::BufferTooSmall {
                what: WHAT,
                need: BLKPTR_SIZE,
                have,
            })?;
        dst.copy_from_slice(&self.to_bytes()?);
        Ok(())
    }

    /// Decodes and validates the first [`BLKPTR_SIZE`] bytes of `buf`.
    pub fn decode(buf: &[u8]) -> Result<BlockPointer> {
        let b = head::<BLKPTR_SIZE>(buf, WHAT)?;
        let offset = rd64::<0, BLKPTR_SIZE>(b);
        let device = rd32::<8, BLKPTR_SIZE>(b);
        let asize = rd32::<12, BLKPTR_SIZE>(b);
        let lsize = rd32::<16, BLKPTR_SIZE>(b);
        let kind = ObjectType::from_tag(b[20])?;
        let level = b[21];
        let algo = b[22];
        let flags = b[23];
        let birth_txg = rd64::<24, BLKPTR_SIZE>(b);
        let fill = rd64::<32, BLKPTR_SIZE>(b);
        let value = rd16b::<40, BLKPTR_SIZE>(b);
        let reserved = rd64::<56, BLKPTR_SIZE>(b);
        reserved_zero(u64::from(flags), WHAT, "flags")?;
        reserved_zero(reserved, WHAT, "reserved")?;
        let bp = if algo == 0 {
            // A hole: the location, fill and checksum must be zero so each hole has one
            // encoding and a damaged data pointer cannot pass for a hole silently.
            reserved_zero(offset, WHAT, "hole offset")?;
            reserved_zero(u64::from(device), WHAT, "hole device")?;
            reserved_zero(u64::from(asize), WHAT, "hole asize")?;
            reserved_zero(fill, WHAT, "hole fill")?;
            if value != [0u8; 16] {
                return Err(OnDiskError::NonZeroReserved {
                    what: WHAT,
                    field: "hole checksum",
                });
            }
            BlockPointer::Hole(HolePtr {
                birth_txg,
                kind,
                level,
                lsize,
            })
        } else {
            let checksum = Checksum::from_parts(algo, value, WHAT)?;
            BlockPointer::Data(DataPtr {
                dva: Dva {
                    device,
                    offset,
                    asize,
                },
                lsize,
                kind,
                level,
                birth_txg,
                fill,
                checksum,
            })
        };
        bp.validate()?;
        Ok(bp)
    }
}

fn invalid(field: &'static str, value: u64, reason: &'static str) -> OnDiskError {
    OnDiskError::InvalidField {
        what: WHAT,
        field,
        value,
        reason,
    }
}

fn check_level(level: u8) -> Result<()> {
    if level >= MAX_LEVELS {
        return Err(invalid("level", u64::from(level), "too many levels"));
    }
    Ok(())
}

fn check_size(field: &'static str, size: u32) -> Result<()> {
    if size == 0 || size > MAX_BLOCK_SIZE {
        return Err(invalid(field, u64::from(size), "outside 1..=16 MiB"));
    }
    Ok(())
}

/// Computes the checksum of `block` with `algo` (convenience for building a [`DataPtr`]).
pub fn block_checksum(algo: ChecksumAlgo, block: &[u8]) -> Checksum {
    Checksum::compute(algo, block)
}

/// Number of block pointers an indirect block of `block_size` bytes holds.
pub fn pointers_per_block(block_size: usize) -> usize {
    block_size / BLKPTR_SIZE
}

fn check_indirect_len(len: usize) -> Result<()> {
    if len == 0 || !len.is_multiple_of(BLKPTR_SIZE) || len > MAX_BLOCK_SIZE as usize {
        return Err(OnDiskError::BadLength {
            what: "indirect block",
            len,
            reason: "not a non-zero multiple of 64 bytes up to 16 MiB",
        });
    }
    Ok(())
}

/// Encodes `ptrs` into the indirect block `out` (whose length is the block size); slots past
/// `ptrs.len()` are filled with empty holes.
pub fn encode_indirect(ptrs: &[BlockPointer], out: &mut [u8]) -> Result<()> {
    encode_indirect_fill(ptrs, out).map(|_| ())
}

/// [`encode_indirect`] that also returns the sum of the pointers' fill counts (the fill of the
/// parent pointer), so that the sync reads the pointer array once rather than twice.
pub fn encode_indirect_fill(ptrs: &[BlockPointer], out: &mut [u8]) -> Result<u64> {
    check_indirect_len(out.len())?;
    let slots = out.len() / BLKPTR_SIZE;
    if ptrs.len() > slots {
        return Err(OnDiskError::TooLong {
            what: "indirect block",
            field: "pointers",
            len: crate::bytes::len_u64(ptrs.len()),
            max: crate::bytes::len_u64(slots),
        });
    }
    let mut fill = 0u64;
    for (chunk, bp) in out.chunks_exact_mut(BLKPTR_SIZE).zip(ptrs) {
        let slot: &mut [u8; BLKPTR_SIZE] =
            chunk.try_into().map_err(|_| OnDiskError::BadLength {
                what: "indirect block",
                len: BLKPTR_SIZE,
                reason: "slot is not 64 bytes",
            })?;
        bp.encode_slot(slot)?;
        fill = fill.saturating_add(bp.fill());
    }
    out[ptrs.len() * BLKPTR_SIZE..].fill(0);
    Ok(fill)
}

/// What an encoded indirect block sums up to, read straight from its slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IndirectSummary {
    /// Sum of the slots' fill counts (saturating, as [`encode_indirect_fill`] sums them): the
    /// fill of the parent pointer.
    pub fill: u64,
    /// Slots holding a data pointer (not a hole).
    pub data: usize,
}

/// The fill sum and data-pointer count of an indirect block that is a valid encoding (every
/// slot written by the encoder or accepted by [`decode_indirect`]). Reads two fields per slot
/// and decodes nothing, so a sync that edits a few slots of a block in place (with
/// [`set_indirect_entry`]) gets the same fill as re-encoding the whole pointer array with
/// [`encode_indirect_fill`] would return: a hole encodes fill 0 and a zero checksum
/// algorithm, a data pointer a non-zero algorithm.
pub fn indirect_summary(block: &[u8]) -> Result<IndirectSummary> {
    check_indirect_len(block.len())?;
    let mut out = IndirectSummary::default();
    for chunk in block.chunks_exact(BLKPTR_SIZE) {
        let b = head::<BLKPTR_SIZE>(chunk, WHAT)?;
        out.fill = out.fill.saturating_add(rd64::<32, BLKPTR_SIZE>(b));
        out.data += usize::from(b[22] != 0);
    }
    Ok(out)
}

/// Decodes every pointer of an indirect block.
pub fn decode_indirect(block: &[u8]) -> Result<Vec<BlockPointer>> {
    let mut out = Vec::new();
    decode_indirect_into(block, &mut out)?;
    Ok(out)
}

/// Decodes every pointer of an indirect block into `out` (cleared first), so a tree walk can
/// reuse one buffer. On error `out` holds the pointers before the bad one.
pub fn decode_indirect_into(block: &[u8], out: &mut Vec<BlockPointer>) -> Result<()> {
    check_indirect_len(block.len())?;
    out.clear();
    out.reserve(block.len() / BLKPTR_SIZE);
    for chunk in block.chunks_exact(BLKPTR_SIZE) {
        out.push(BlockPointer::decode(chunk)?);
    }
    Ok(())
}

/// Decodes pointer `index` of an indirect block without decoding the others.
pub fn indirect_entry(block: &[u8], index: usize) -> Result<BlockPointer> {
    check_indirect_len(block.len())?;
    let start = index
        .checked_mul(BLKPTR_SIZE)
        .filter(|s| *s < block.len())
        .ok_or(OnDiskError::InvalidField {
            what: "indirect block",
            field: "index",
            value: crate::bytes::len_u64(index),
            reason: "beyond the block",
        })?;
    BlockPointer::decode(&block[start..])
}

/// Writes pointer `index` of an indirect block in place.
pub fn set_indirect_entry(block: &mut [u8], index: usize, bp: &BlockPointer) -> Result<()> {
    check_indirect_len(block.len())?;
    let len = block.len();
    let start =
        index
            .checked_mul(BLKPTR_SIZE)
            .filter(|s| *s < len)
            .ok_or(OnDiskError::InvalidField {
                what: "indirect block",
                field: "index",
                value: crate::bytes::len_u64(index),
                reason: "beyond the block",
            })?;
    let slot: &mut [u8; BLKPTR_SIZE] = (&mut block[start..start + BLKPTR_SIZE])
        .try_into()
        .map_err(|_| OnDiskError::BadLength {
            what: "indirect block",
            len: BLKPTR_SIZE,
            reason: "slot is not 64 bytes",
        })?;
    bp.encode_slot(slot)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn for_block_and_verify() {
        let block = vec![7u8; 4096];
        let d = DataPtr::for_block(
            2,
            1 << 22,
            &block,
            ObjectType::VolumeData,
            0,
            9,
            ChecksumAlgo::Crc32c,
        )
        .unwrap();
        assert_eq!((d.dva.asize, d.lsize), (4096, 4096));
        d.verify(&block).unwrap();
        let mut torn = block.clone();
        torn[4095] = 0;
        assert!(d.verify(&torn).unwrap_err().is_checksum_error());
        assert!(d.verify(&block[..512]).is_err());
        assert!(
            DataPtr::for_block(0, 100, &block, ObjectType::Raw, 0, 1, ChecksumAlgo::Crc32c)
                .is_err()
        );
        assert!(
            DataPtr::for_block(0, 0, &block, ObjectType::None, 0, 1, ChecksumAlgo::Crc32c).is_err()
        );
        assert!(
            DataPtr::for_block(0, 0, &[], ObjectType::Raw, 0, 1, ChecksumAlgo::Crc32c).is_err()
        );
        let text = BlockPointer::Data(d).to_string();
        assert!(
            text.starts_with("DVA=<2:0x400000:0x1000> L0 VolumeData"),
            "{text}"
        );
    }
}

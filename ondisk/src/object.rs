//! Object records ("dnodes"): the small fixed record that describes one object, a copy-on-write
//! tree of fixed-size blocks.
//!
//! An object with `levels = L` has `nroots` root pointers at level `L − 1`; each indirect block
//! of `indirect_block_size` bytes holds `indirect_block_size / 64` pointers one level down; level
//! 0 pointers point to data blocks of `data_block_size` bytes. Object sets (the pool's root
//! object set) are arrays of records packed into blocks of type [`ObjectType::ObjectSet`].
//!
//! # Encoding (512 bytes, little endian)
//!
//! | offset | size | field                                                              |
//! |--------|------|--------------------------------------------------------------------|
//! | 0      | 1    | object type ([`ObjectType`]); 0 = free slot (the whole record zero) |
//! | 1      | 1    | levels, 1..=8                                                      |
//! | 2      | 1    | number of root pointers in use, 1..=3                              |
//! | 3      | 1    | flags ([`ObjectFlags`]); unknown bits are rejected                 |
//! | 4      | 1    | bonus type (0 none, 1 space-map header, 2 raw bytes)               |
//! | 5      | 1    | checksum algorithm for the object's blocks                         |
//! | 6      | 2    | bonus length, ≤ 272                                                |
//! | 8      | 4    | data block size (power of two, 512 B..=16 MiB)                     |
//! | 12     | 4    | indirect block size (power of two, 512 B..=16 MiB)                 |
//! | 16     | 8    | max block id: highest block id that may hold data                  |
//! | 24     | 8    | length in bytes (meaning set by the type: volume size, map length…) |
//! | 32     | 8    | txg the object was created in                                      |
//! | 40     | 8    | bytes allocated by the object's blocks                             |
//! | 48     | 192  | three root block pointers (unused ones are empty holes)            |
//! | 240    | 272  | bonus bytes (zero past the bonus length)                           |

use crate::blkptr::{BlockPointer, BLKPTR_SIZE};
use crate::bytes::{need, Reader};
use crate::checksum::ChecksumAlgo;
use crate::error::{OnDiskError, Result};
use crate::layout::{MAX_BLOCK_SIZE, MIN_BLOCK_SIZE};
use crate::space_map::{SpaceMapHeader, SPACE_MAP_HEADER_SIZE};

/// Encoded size of an object record.
pub const OBJECT_RECORD_SIZE: usize = 512;
/// Root block pointers per record.
pub const MAX_ROOTS: usize = 3;
/// Bytes available for the bonus.
pub const BONUS_SIZE: usize = 272;
/// Most levels an object tree may have (also bounds block-pointer levels).
pub const MAX_LEVELS: u8 = 8;

const WHAT: &str = "object record";
const ROOTS_OFFSET: usize = 48;
const BONUS_OFFSET: usize = ROOTS_OFFSET + MAX_ROOTS * BLKPTR_SIZE;

/// What an object (and each of its blocks) holds. The value is the on-disk tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
#[repr(u8)]
pub enum ObjectType {
    /// Free object slot / untyped hole.
    None = 0,
    /// An object set: an array of object records.
    ObjectSet = 1,
    /// The pool directory (an nvlist).
    Directory = 2,
    /// A space map (metaslab or checkpoint map) log.
    SpaceMap = 3,
    /// A volume's data.
    VolumeData = 4,
    /// A packed nvlist.
    Nvlist = 5,
    /// An append-only history log.
    History = 6,
    /// An array of little-endian u64 (e.g. a device's metaslab space-map object ids).
    U64Array = 7,
    /// Opaque bytes.
    Raw = 8,
}

impl ObjectType {
    /// On-disk tag.
    pub fn tag(self) -> u8 {
        self as u8
    }

    /// Decodes a tag.
    pub fn from_tag(tag: u8) -> Result<ObjectType> {
        Ok(match tag {
            0 => ObjectType::None,
            1 => ObjectType::ObjectSet,
            2 => ObjectType::Directory,
            3 => ObjectType::SpaceMap,
            4 => ObjectType::VolumeData,
            5 => ObjectType::Nvlist,
            6 => ObjectType::History,
            7 => ObjectType::U64Array,
            8 => ObjectType::Raw,
            other => {
                return Err(OnDiskError::UnknownEnum {
                    what: "object type",
                    field: "type",
                    value: u64::from(other),
                })
            }
        })
    }
}

/// Object flags (a bit set).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ObjectFlags(u8);

impl ObjectFlags {
    /// No flag.
    pub const NONE: ObjectFlags = ObjectFlags(0);
    /// The object is being destroyed in the background; its blocks are being freed.
    pub const DESTROYING: ObjectFlags = ObjectFlags(1);
    /// The object refuses writes (e.g. a read-only volume).
    pub const READ_ONLY: ObjectFlags = ObjectFlags(2);
    const KNOWN: u8 = 0b11;

    /// Raw bits.
    pub fn bits(self) -> u8 {
        self.0
    }

    /// Builds from raw bits, rejecting unknown ones.
    pub fn from_bits(bits: u8) -> Result<ObjectFlags> {
        if bits & !Self::KNOWN != 0 {
            return Err(OnDiskError::InvalidField {
                what: WHAT,
                field: "flags",
                value: u64::from(bits),
                reason: "unknown flag bits",
            });
        }
        Ok(ObjectFlags(bits))
    }

    /// True if every bit of `other` is set.
    pub fn contains(self, other: ObjectFlags) -> bool {
        self.0 & other.0 == other.0
    }

    /// Union.
    pub fn with(self, other: ObjectFlags) -> ObjectFlags {
        ObjectFlags(self.0 | other.0)
    }

    /// Difference.
    pub fn without(self, other: ObjectFlags) -> ObjectFlags {
        ObjectFlags(self.0 & !other.0)
    }
}

/// The bonus area of a record: small typed data stored with the record itself.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Bonus {
    /// Nothing.
    #[default]
    None,
    /// A space map's header (length, net allocation, histogram).
    SpaceMap(Box<SpaceMapHeader>),
    /// Up to [`BONUS_SIZE`] opaque bytes.
    Raw(Vec<u8>),
}

impl Bonus {
    fn tag(&self) -> u8 {
        match self {
            Bonus::None => 0,
            Bonus::SpaceMap(_) => 1,
            Bonus::Raw(_) => 2,
        }
    }
}

/// One object record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectRecord {
    /// Object type (never `None` for a live record).
    pub kind: ObjectType,
    /// Levels of the tree (1 = the roots point at data blocks).
    pub levels: u8,
    /// Root pointers in use (1..=3).
    pub nroots: u8,
    /// Flags.
    pub flags: ObjectFlags,
    /// Checksum algorithm for the object's blocks.
    pub checksum: ChecksumAlgo,
    /// Data block size.
    pub data_block_size: u32,
    /// Indirect block size.
    pub indirect_block_size: u32,
    /// Highest block id that may hold data.
    pub max_block_id: u64,
    /// Length in bytes (type-defined meaning).
    pub length: u64,
    /// Txg of creation.
    pub created_txg: u64,
    /// Bytes allocated by the object's blocks.
    pub used_bytes: u64,
    /// Root pointers; those at index ≥ `nroots` must be empty.
    pub roots: [BlockPointer; MAX_ROOTS],
    /// Bonus data.
    pub bonus: Bonus,
}

fn invalid(field: &'static str, value: u64, reason: &'static str) -> OnDiskError {
    OnDiskError::InvalidField {
        what: WHAT,
        field,
        value,
        reason,
    }
}

fn check_block_size(field: &'static str, size: u32) -> Result<()> {
    if !size.is_power_of_two() || !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&size) {
        return Err(invalid(
            field,
            u64::from(size),
            "not a power of two in 512 B..=16 MiB",
        ));
    }
    Ok(())
}

impl ObjectRecord {
    /// A new, empty object (one level, one root, all holes).
    pub fn new(
        kind: ObjectType,
        data_block_size: u32,
        indirect_block_size: u32,
        created_txg: u64,
    ) -> Result<ObjectRecord> {
        let rec = ObjectRecord {
            kind,
            levels: 1,
            nroots: 1,
            flags: ObjectFlags::NONE,
            checksum: ChecksumAlgo::Crc32c,
            data_block_size,
            indirect_block_size,
            max_block_id: 0,
            length: 0,
            created_txg,
            used_bytes: 0,
            roots: [BlockPointer::EMPTY; MAX_ROOTS],
            bonus: Bonus::None,
        };
        rec.validate()?;
        Ok(rec)
    }

    /// Block pointers per indirect block.
    pub fn pointers_per_indirect(&self) -> u64 {
        u64::from(self.indirect_block_size) / crate::bytes::len_u64(BLKPTR_SIZE)
    }

    /// Number of data blocks the tree can address with its current levels (saturating).
    pub fn capacity_blocks(&self) -> u64 {
        capacity_blocks(self.levels, self.nroots, self.indirect_block_size)
    }

    /// Checks every field.
    pub fn validate(&self) -> Result<()> {
        if self.kind == ObjectType::None {
            return Err(invalid("type", 0, "a live record needs a type"));
        }
        if self.levels == 0 || self.levels > MAX_LEVELS {
            return Err(invalid("levels", u64::from(self.levels), "outside 1..=8"));
        }
        if self.nroots == 0 || usize::from(self.nroots) > MAX_ROOTS {
            return Err(invalid("nroots", u64::from(self.nroots), "outside 1..=3"));
        }
        check_block_size("data_block_size", self.data_block_size)?;
        check_block_size("indirect_block_size", self.indirect_block_size)?;
        if self.max_block_id >= self.capacity_blocks() {
            return Err(invalid(
                "max_block_id",
                self.max_block_id,
                "beyond the tree's capacity",
            ));
        }
        for (i, bp) in self.roots.iter().enumerate() {
            bp.validate()?;
            if i >= usize::from(self.nroots) {
                if !bp.is_empty() {
                    return Err(invalid(
                        "roots",
                        crate::bytes::len_u64(i),
                        "unused root is not empty",
                    ));
                }
                continue;
            }
            if let BlockPointer::Data(d) = bp {
                if d.level + 1 != self.levels {
                    return Err(invalid(
                        "roots",
                        u64::from(d.level),
                        "root level is not levels - 1",
                    ));
                }
                if d.kind != self.kind {
                    return Err(invalid(
                        "roots",
                        u64::from(d.kind.tag()),
                        "root type differs from the object's",
                    ));
                }
            }
        }
        if let Bonus::Raw(b) = &self.bonus {
            if b.len() > BONUS_SIZE {
                return Err(OnDiskError::TooLong {
                    what: WHAT,
                    field: "bonus",
                    len: crate::bytes::len_u64(b.len()),
                    max: crate::bytes::len_u64(BONUS_SIZE),
                });
            }
        }
        if let Bonus::SpaceMap(h) = &self.bonus {
            h.validate()?;
        }
        Ok(())
    }

    /// Encodes into exactly [`OBJECT_RECORD_SIZE`] bytes.
    pub fn to_bytes(&self) -> Result<[u8; OBJECT_RECORD_SIZE]> {
        self.validate()?;
        let mut b = [0u8; OBJECT_RECORD_SIZE];
        b[0] = self.kind.tag();
        b[1] = self.levels;
        b[2] = self.nroots;
        b[3] = self.flags.bits();
        b[4] = self.bonus.tag();
        b[5] = self.checksum.tag();
        let bonus_len: usize = match &self.bonus {
            Bonus::None => 0,
            Bonus::SpaceMap(h) => {
                b[BONUS_OFFSET..BONUS_OFFSET + SPACE_MAP_HEADER_SIZE]
                    .copy_from_slice(&h.to_bytes());
                SPACE_MAP_HEADER_SIZE
            }
            Bonus::Raw(raw) => {
                b[BONUS_OFFSET..BONUS_OFFSET + raw.len()].copy_from_slice(raw);
                raw.len()
            }
        };
        let bonus_len =
            u16::try_from(bonus_len).map_err(|_| invalid("bonus_len", 0, "too long"))?;
        b[6..8].copy_from_slice(&bonus_len.to_le_bytes());
        b[8..12].copy_from_slice(&self.data_block_size.to_le_bytes());
        b[12..16].copy_from_slice(&self.indirect_block_size.to_le_bytes());
        b[16..24].copy_from_slice(&self.max_block_id.to_le_bytes());
        b[24..32].copy_from_slice(&self.length.to_le_bytes());
        b[32..40].copy_from_slice(&self.created_txg.to_le_bytes());
        b[40..48].copy_from_slice(&self.used_bytes.to_le_bytes());
        for (i, bp) in self.roots.iter().enumerate() {
            let at = ROOTS_OFFSET + i * BLKPTR_SIZE;
            b[at..at + BLKPTR_SIZE].copy_from_slice(&bp.to_bytes()?);
        }
        Ok(b)
    }

    /// Decodes the first [`OBJECT_RECORD_SIZE`] bytes of `buf`: `Ok(None)` for a free slot
    /// (all zero), the validated record otherwise.
    pub fn decode(buf: &[u8]) -> Result<Option<ObjectRecord>> {
        need(buf, OBJECT_RECORD_SIZE, WHAT)?;
        let buf = &buf[..OBJECT_RECORD_SIZE];
        if buf.iter().all(|&x| x == 0) {
            return Ok(None);
        }
        let mut r = Reader::new(buf, WHAT);
        let kind = ObjectType::from_tag(r.u8()?)?;
        let levels = r.u8()?;
        let nroots = r.u8()?;
        let flags = ObjectFlags::from_bits(r.u8()?)?;
        let bonus_type = r.u8()?;
        let checksum = ChecksumAlgo::from_tag(r.u8()?)?;
        let bonus_len = usize::from(r.u16()?);
        let data_block_size = r.u32()?;
        let indirect_block_size = r.u32()?;
        let max_block_id = r.u64()?;
        let length = r.u64()?;
        let created_txg = r.u64()?;
        let used_bytes = r.u64()?;
        let mut roots = [BlockPointer::EMPTY; MAX_ROOTS];
        for root in roots.iter_mut() {
            *root = BlockPointer::decode(r.bytes(BLKPTR_SIZE)?)?;
        }
        let bonus_area = r.bytes(BONUS_SIZE)?;
        if bonus_len > BONUS_SIZE {
            return Err(OnDiskError::TooLong {
                what: WHAT,
                field: "bonus_len",
                len: crate::bytes::len_u64(bonus_len),
                max: crate::bytes::len_u64(BONUS_SIZE),
            });
        }
        let (bonus_bytes, bonus_tail) = bonus_area.split_at(bonus_len);
        if bonus_tail.iter().any(|&x| x != 0) {
            return Err(OnDiskError::NonZeroReserved {
                what: WHAT,
                field: "bonus padding",
            });
        }
        let bonus = match bonus_type {
            0 => {
                if bonus_len != 0 {
                    return Err(invalid(
                        "bonus_len",
                        crate::bytes::len_u64(bonus_len),
                        "no bonus but a length",
                    ));
                }
                Bonus::None
            }
            1 => {
                if bonus_len != SPACE_MAP_HEADER_SIZE {
                    return Err(invalid(
                        "bonus_len",
                        crate::bytes::len_u64(bonus_len),
                        "space-map header size",
                    ));
                }
                Bonus::SpaceMap(Box::new(SpaceMapHeader::decode(bonus_bytes)?))
            }
            2 => Bonus::Raw(bonus_bytes.to_vec()),
            other => {
                return Err(OnDiskError::UnknownEnum {
                    what: WHAT,
                    field: "bonus type",
                    value: u64::from(other),
                })
            }
        };
        let rec = ObjectRecord {
            kind,
            levels,
            nroots,
            flags,
            checksum,
            data_block_size,
            indirect_block_size,
            max_block_id,
            length,
            created_txg,
            used_bytes,
            roots,
            bonus,
        };
        rec.validate()?;
        Ok(Some(rec))
    }
}

/// Data blocks addressable by a tree of `levels` levels with `nroots` roots and indirect blocks
/// of `indirect_block_size` bytes (saturating at `u64::MAX`).
pub fn capacity_blocks(levels: u8, nroots: u8, indirect_block_size: u32) -> u64 {
    let per = u64::from(indirect_block_size) / crate::bytes::len_u64(BLKPTR_SIZE);
    let mut cap = u64::from(nroots);
    for _ in 1..levels {
        cap = cap.saturating_mul(per);
    }
    cap
}

/// Smallest number of levels whose tree addresses `blocks` data blocks (`None` if even
/// [`MAX_LEVELS`] cannot).
pub fn levels_for(blocks: u64, nroots: u8, indirect_block_size: u32) -> Option<u8> {
    (1..=MAX_LEVELS).find(|&l| capacity_blocks(l, nroots, indirect_block_size) >= blocks)
}

/// Object records per object-set block of `block_size` bytes.
pub fn records_per_block(block_size: u32) -> u64 {
    u64::from(block_size) / crate::bytes::len_u64(OBJECT_RECORD_SIZE)
}

/// Where object `object_id` lives in an object set with blocks of `block_size` bytes:
/// `(block id, byte offset in the block)`; `None` if the block size holds no record.
pub fn object_location(object_id: u64, block_size: u32) -> Option<(u64, usize)> {
    let per = records_per_block(block_size);
    let block = object_id.checked_div(per)?;
    let slot = usize::try_from(object_id % per).ok()?;
    Some((block, slot * OBJECT_RECORD_SIZE))
}

fn check_object_block_len(len: usize) -> Result<()> {
    if len == 0 || !len.is_multiple_of(OBJECT_RECORD_SIZE) || len > MAX_BLOCK_SIZE as usize {
        return Err(OnDiskError::BadLength {
            what: "object block",
            len,
            reason: "not a non-zero multiple of 512 bytes up to 16 MiB",
        });
    }
    Ok(())
}

/// Encodes a block of an object set: record slots in order (`None` = free slot); slots past
/// `records.len()` are free.
pub fn encode_object_block(records: &[Option<ObjectRecord>], out: &mut [u8]) -> Result<()> {
    check_object_block_len(out.len())?;
    let slots = out.len() / OBJECT_RECORD_SIZE;
    if records.len() > slots {
        return Err(OnDiskError::TooLong {
            what: "object block",
            field: "records",
            len: crate::bytes::len_u64(records.len()),
            max: crate::bytes::len_u64(slots),
        });
    }
    out.fill(0);
    for (chunk, rec) in out.chunks_exact_mut(OBJECT_RECORD_SIZE).zip(records) {
        if let Some(rec) = rec {
            chunk.copy_from_slice(&rec.to_bytes()?);
        }
    }
    Ok(())
}

/// Decodes every slot of an object-set block.
pub fn decode_object_block(block: &[u8]) -> Result<Vec<Option<ObjectRecord>>> {
    check_object_block_len(block.len())?;
    let mut out = Vec::with_capacity(block.len() / OBJECT_RECORD_SIZE);
    for chunk in block.chunks_exact(OBJECT_RECORD_SIZE) {
        out.push(ObjectRecord::decode(chunk)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_and_levels() {
        // 16 KiB indirect blocks hold 256 pointers.
        assert_eq!(capacity_blocks(1, 1, 16384), 1);
        assert_eq!(capacity_blocks(2, 3, 16384), 768);
        assert_eq!(capacity_blocks(3, 1, 16384), 65536);
        assert_eq!(capacity_blocks(8, 3, 1 << 24), u64::MAX);
        assert_eq!(levels_for(0, 1, 16384), Some(1));
        assert_eq!(levels_for(1, 1, 16384), Some(1));
        assert_eq!(levels_for(2, 1, 16384), Some(2));
        assert_eq!(levels_for(257, 1, 16384), Some(3));
        assert_eq!(levels_for(u64::MAX, 1, 512), None);
        assert_eq!(records_per_block(16384), 32);
        assert_eq!(object_location(33, 16384), Some((1, 512)));
        assert_eq!(object_location(1, 256), None);
    }

    #[test]
    fn record_rules() {
        let mut r = ObjectRecord::new(ObjectType::VolumeData, 4096, 16384, 7).unwrap();
        assert_eq!(
            ObjectRecord::decode(&r.to_bytes().unwrap()).unwrap(),
            Some(r.clone())
        );
        assert_eq!(
            ObjectRecord::decode(&[0u8; OBJECT_RECORD_SIZE]).unwrap(),
            None
        );
        assert!(ObjectRecord::new(ObjectType::None, 4096, 16384, 7).is_err());
        assert!(ObjectRecord::new(ObjectType::Raw, 4095, 16384, 7).is_err());
        assert!(ObjectRecord::new(ObjectType::Raw, 4096, 1 << 25, 7).is_err());
        r.max_block_id = 1;
        assert!(r.to_bytes().is_err(), "one level, one root: only block 0");
        r.max_block_id = 0;
        r.roots[1] = BlockPointer::hole(3);
        assert!(r.to_bytes().is_err(), "unused root must be empty");
        r.roots[1] = BlockPointer::EMPTY;
        r.bonus = Bonus::Raw(vec![1; BONUS_SIZE + 1]);
        assert!(r.to_bytes().is_err());
        r.bonus = Bonus::Raw(vec![1; BONUS_SIZE]);
        let b = r.to_bytes().unwrap();
        assert_eq!(ObjectRecord::decode(&b).unwrap().unwrap(), r);
        assert!(ObjectFlags::from_bits(0x80).is_err());
        let f = ObjectFlags::NONE.with(ObjectFlags::DESTROYING);
        assert!(f.contains(ObjectFlags::DESTROYING) && !f.contains(ObjectFlags::READ_ONLY));
        assert_eq!(f.without(ObjectFlags::DESTROYING), ObjectFlags::NONE);
    }
}

//! The uberblock: the root of everything, the only structure written in place (into a ring
//! slot of every label, see [`crate::layout`]).
//!
//! Import reads every slot of every label of every device, keeps those that decode (magic,
//! version, checksum, fields) and belong to the pool, and takes the highest `(txg, timestamp)`
//! ([`Uberblock::is_newer_than`]).
//!
//! # Encoding (128 bytes, little endian; written zero padded into a slot)
//!
//! | offset | size | field                                                               |
//! |--------|------|---------------------------------------------------------------------|
//! | 0      | 8    | magic [`UBERBLOCK_MAGIC`] ("RPUBERBK")                              |
//! | 8      | 8    | format version ([`UBERBLOCK_VERSION`])                              |
//! | 16     | 8    | txg that wrote it (≥ 1)                                             |
//! | 24     | 8    | sum of the pool's device GUIDs (wrapping), a config sanity check    |
//! | 32     | 8    | timestamp: UTC seconds of the sync                                  |
//! | 40     | 8    | checkpoint txg: 0 normally, = txg in a checkpointed uberblock, kept by a rewind |
//! | 48     | 64   | root block pointer (the pool's root object set)                     |
//! | 112    | 8    | pool GUID (a slot left by an older pool on a reused device is ignored) |
//! | 120    | 8    | crc32c of bytes 0..120, zero-extended                               |
//!
//! A slot of zeroes decodes to [`OnDiskError::Empty`]; any other damage (including a flipped
//! bit anywhere in the 128 bytes) to [`OnDiskError::ChecksumMismatch`], because the checksum is
//! verified before any field is interpreted.

use std::fmt;

use crate::blkptr::{BlockPointer, BLKPTR_SIZE};
use crate::bytes::need;
use crate::checksum::{open_sealed, seal};
use crate::error::{OnDiskError, Result};
use crate::object::ObjectType;

/// Encoded size of an uberblock.
pub const UBERBLOCK_SIZE: usize = 128;
/// Uberblock magic ("RPUBERBK" read as a little-endian u64).
pub const UBERBLOCK_MAGIC: u64 = u64::from_le_bytes(*b"RPUBERBK");
/// Current uberblock format version.
pub const UBERBLOCK_VERSION: u64 = 1;

const WHAT: &str = "uberblock";

/// An uberblock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Uberblock {
    /// Txg that wrote it.
    pub txg: u64,
    /// Wrapping sum of the device GUIDs.
    pub guid_sum: u64,
    /// UTC seconds.
    pub timestamp: u64,
    /// Checkpoint txg (0 = not a checkpointed uberblock).
    pub checkpoint_txg: u64,
    /// Root block pointer.
    pub root: BlockPointer,
    /// Pool GUID.
    pub pool_guid: u64,
}

fn invalid(field: &'static str, value: u64, reason: &'static str) -> OnDiskError {
    OnDiskError::InvalidField {
        what: WHAT,
        field,
        value,
        reason,
    }
}

impl fmt::Display for Uberblock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "txg={} pool_guid={:#x} guid_sum={:#x} timestamp={} checkpoint_txg={} root=[{}]",
            self.txg, self.pool_guid, self.guid_sum, self.timestamp, self.checkpoint_txg, self.root
        )
    }
}

impl Uberblock {
    /// Checks the fields.
    pub fn validate(&self) -> Result<()> {
        if self.txg == 0 {
            return Err(invalid("txg", 0, "txg 0 is never synced"));
        }
        if self.checkpoint_txg > self.txg {
            return Err(invalid(
                "checkpoint_txg",
                self.checkpoint_txg,
                "after the uberblock's own txg",
            ));
        }
        if self.pool_guid == 0 {
            return Err(invalid("pool_guid", 0, "GUIDs are non-zero"));
        }
        self.root.validate()?;
        if self.root.birth_txg() > self.txg {
            return Err(invalid(
                "root birth_txg",
                self.root.birth_txg(),
                "born after the uberblock",
            ));
        }
        if !self.root.is_hole() && self.root.kind() != ObjectType::ObjectSet {
            return Err(invalid(
                "root type",
                u64::from(self.root.kind().tag()),
                "the root is an object set",
            ));
        }
        Ok(())
    }

    /// Encodes into exactly [`UBERBLOCK_SIZE`] bytes.
    pub fn to_bytes(&self) -> Result<[u8; UBERBLOCK_SIZE]> {
        self.validate()?;
        let mut b = [0u8; UBERBLOCK_SIZE];
        b[0..8].copy_from_slice(&UBERBLOCK_MAGIC.to_le_bytes());
        b[8..16].copy_from_slice(&UBERBLOCK_VERSION.to_le_bytes());
        b[16..24].copy_from_slice(&self.txg.to_le_bytes());
        b[24..32].copy_from_slice(&self.guid_sum.to_le_bytes());
        b[32..40].copy_from_slice(&self.timestamp.to_le_bytes());
        b[40..48].copy_from_slice(&self.checkpoint_txg.to_le_bytes());
        b[48..48 + BLKPTR_SIZE].copy_from_slice(&self.root.to_bytes()?);
        b[112..120].copy_from_slice(&self.pool_guid.to_le_bytes());
        seal(&mut b);
        Ok(b)
    }

    /// Encodes into a ring slot (any length ≥ [`UBERBLOCK_SIZE`]), zeroing the rest of it.
    pub fn encode_slot(&self, slot: &mut [u8]) -> Result<()> {
        need(slot, UBERBLOCK_SIZE, WHAT)?;
        let bytes = self.to_bytes()?;
        let (head, tail) = slot.split_at_mut(UBERBLOCK_SIZE);
        head.copy_from_slice(&bytes);
        tail.fill(0);
        Ok(())
    }

    /// Decodes the uberblock at the start of `buf` (a slot or exactly 128 bytes).
    pub fn decode(buf: &[u8]) -> Result<Uberblock> {
        // Exactly the record: the decoder must not read into what follows it in a slot.
        let b = buf.get(..UBERBLOCK_SIZE).unwrap_or(buf);
        let mut r = open_sealed(b, UBERBLOCK_SIZE, UBERBLOCK_MAGIC, WHAT)?;
        let version = r.u64()?;
        if version != UBERBLOCK_VERSION {
            return Err(OnDiskError::UnsupportedVersion {
                what: WHAT,
                version,
            });
        }
        let txg = r.u64()?;
        let guid_sum = r.u64()?;
        let timestamp = r.u64()?;
        let checkpoint_txg = r.u64()?;
        let root = BlockPointer::decode(r.bytes(BLKPTR_SIZE)?)?;
        let pool_guid = r.u64()?;
        let ub = Uberblock {
            txg,
            guid_sum,
            timestamp,
            checkpoint_txg,
            root,
            pool_guid,
        };
        ub.validate()?;
        Ok(ub)
    }

    /// Decodes the uberblock of ring slot `slot` in a ring of `slots` slots, rejecting one whose
    /// txg belongs to another slot (a misdirected write).
    pub fn decode_slot(buf: &[u8], slot: u64, slots: u64) -> Result<Uberblock> {
        let ub = Uberblock::decode(buf)?;
        if crate::layout::uberblock_slot(ub.txg, slots) != slot {
            return Err(invalid(
                "txg",
                ub.txg,
                "uberblock found in the wrong ring slot",
            ));
        }
        Ok(ub)
    }

    /// Import's ordering: higher txg wins, then the later timestamp.
    pub fn is_newer_than(&self, other: &Uberblock) -> bool {
        (self.txg, self.timestamp) > (other.txg, other.timestamp)
    }

    /// True for a checkpointed uberblock as stored in the pool directory.
    pub fn is_checkpoint(&self) -> bool {
        self.checkpoint_txg != 0 && self.checkpoint_txg == self.txg
    }
}

/// Decodes every slot of an uberblock ring (`ring` is the ring area of one label, `slot_size`
/// from the device layout): yields `(slot, result)` per slot, checking that each uberblock sits
/// in the slot of its txg and, if `pool_guid` is given, belongs to that pool. Empty slots yield
/// [`OnDiskError::Empty`].
pub fn scan_ring(
    ring: &[u8],
    slot_size: usize,
    pool_guid: Option<u64>,
) -> impl Iterator<Item = (u64, Result<Uberblock>)> + '_ {
    let slot_size = slot_size.max(UBERBLOCK_SIZE);
    let slots = crate::bytes::len_u64(ring.len() / slot_size);
    ring.chunks_exact(slot_size)
        .zip(0u64..)
        .map(move |(buf, slot)| {
            let r = Uberblock::decode_slot(buf, slot, slots).and_then(|ub| match pool_guid {
                Some(g) if g != ub.pool_guid => Err(invalid(
                    "pool_guid",
                    ub.pool_guid,
                    "uberblock of another pool",
                )),
                _ => Ok(ub),
            });
            (slot, r)
        })
}

/// The newest of `candidates` with txg ≤ `max_txg` (use `u64::MAX` for no bound), as import
/// chooses among every valid slot of every label.
pub fn select_best<'a, I>(candidates: I, max_txg: u64) -> Option<&'a Uberblock>
where
    I: IntoIterator<Item = &'a Uberblock>,
{
    candidates
        .into_iter()
        .filter(|u| u.txg <= max_txg)
        .fold(None, |best: Option<&Uberblock>, u| match best {
            Some(b) if !u.is_newer_than(b) => Some(b),
            _ => Some(u),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ub(txg: u64, timestamp: u64) -> Uberblock {
        Uberblock {
            txg,
            guid_sum: 1,
            timestamp,
            checkpoint_txg: 0,
            root: BlockPointer::EMPTY,
            pool_guid: 9,
        }
    }

    #[test]
    fn best_selection_and_slots() {
        let all = [ub(5, 100), ub(7, 50), ub(7, 60), ub(6, 999)];
        assert_eq!(select_best(&all, u64::MAX), Some(&all[2]));
        assert_eq!(select_best(&all, 6), Some(&all[3]));
        assert_eq!(select_best(&all, 4), None);
        let mut slot = vec![0u8; 4096];
        ub(33, 1).encode_slot(&mut slot).unwrap();
        assert_eq!(Uberblock::decode_slot(&slot, 1, 32).unwrap().txg, 33);
        assert!(Uberblock::decode_slot(&slot, 2, 32).is_err());
    }

    #[test]
    fn ring_scan() {
        let slot = 1024;
        let mut ring = vec![0u8; 8 * slot];
        ub(9, 1).encode_slot(&mut ring[slot..2 * slot]).unwrap(); // 9 % 8 == 1
        ub(10, 1)
            .encode_slot(&mut ring[3 * slot..4 * slot])
            .unwrap(); // misplaced
        Uberblock {
            pool_guid: 5,
            ..ub(12, 1)
        }
        .encode_slot(&mut ring[4 * slot..5 * slot])
        .unwrap();
        ring[6 * slot + 3] = 1; // damaged
        let got: Vec<_> = scan_ring(&ring, slot, Some(9)).collect();
        assert_eq!(got.len(), 8);
        assert!(matches!(got[0].1, Err(OnDiskError::Empty { .. })));
        assert_eq!(got[1].1.as_ref().unwrap().txg, 9);
        assert!(got[3].1.is_err());
        assert!(got[4].1.is_err());
        assert!(got[6].1.as_ref().unwrap_err().is_checksum_error());
        let valid: Vec<_> = scan_ring(&ring, slot, None)
            .filter_map(|(_, r)| r.ok())
            .collect();
        assert_eq!(valid.len(), 2);
        assert_eq!(select_best(&valid, u64::MAX).unwrap().txg, 12);
        let text = ub(9, 1).to_string();
        assert!(
            text.contains("txg=9") && text.contains("root=[HOLE"),
            "{text}"
        );
    }

    #[test]
    fn field_rules() {
        assert!(ub(0, 0).to_bytes().is_err());
        assert!(Uberblock {
            checkpoint_txg: 6,
            ..ub(5, 0)
        }
        .to_bytes()
        .is_err());
        assert!(Uberblock {
            pool_guid: 0,
            ..ub(5, 0)
        }
        .to_bytes()
        .is_err());
        assert!(Uberblock {
            checkpoint_txg: 5,
            ..ub(5, 0)
        }
        .is_checkpoint());
        assert!(!Uberblock {
            checkpoint_txg: 4,
            ..ub(5, 0)
        }
        .is_checkpoint());
        let late_root = BlockPointer::hole(6);
        assert!(Uberblock {
            root: late_root,
            ..ub(5, 0)
        }
        .to_bytes()
        .is_err());
        // Valid seal, wrong magic / version: typed errors, not a value.
        let mut b = ub(5, 0).to_bytes().unwrap();
        b[0] ^= 1;
        crate::checksum::seal(&mut b);
        assert!(matches!(
            Uberblock::decode(&b),
            Err(OnDiskError::BadMagic { .. })
        ));
        let mut b = ub(5, 0).to_bytes().unwrap();
        b[8] = 2;
        crate::checksum::seal(&mut b);
        assert!(matches!(
            Uberblock::decode(&b),
            Err(OnDiskError::UnsupportedVersion { .. })
        ));
    }
}

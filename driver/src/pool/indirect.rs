//! A verified indirect block as the block cache and the sync hold it: its encoded bytes.
//!
//! The encoded form is the only form kept. Readers decode the one pointer they follow (a few
//! nanoseconds), and the sync rewrites an indirect block by copying the old bytes and encoding
//! only the slots that changed: under random writes a txg changes one or a few of a block's
//! 256 pointers, and re-encoding all of them (validation included) was about a third of the
//! sync thread's CPU. The encoding is canonical (every field is checked on decode, reserved
//! bytes must be zero), so bytes edited slot by slot are exactly the bytes the whole-array
//! encoder would write, and [`indirect_summary`] reads the parent's fill off the slots.

use ringpool_ondisk::blkptr::{
    indirect_entry, indirect_summary, set_indirect_entry, BlockPointer, IndirectSummary,
    BLKPTR_SIZE,
};
use ringpool_ondisk::error::OnDiskError;

use super::error::PoolError;

/// An indirect block whose every slot decodes (checked when it is built from bytes, and kept
/// so by [`Indirect::set`], which encodes through the validating encoder).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Indirect {
    raw: Vec<u8>,
}

impl Indirect {
    /// An indirect block of `len` bytes holding only never-written holes.
    pub fn empty(len: usize) -> Indirect {
        Indirect { raw: vec![0; len] }
    }

    /// Takes the bytes of an indirect block read from disk (already checksummed): checks that
    /// every slot decodes (else [`PoolError::OnDisk`]) and that `check` accepts it (e.g. that
    /// children are one level down).
    pub fn from_bytes(
        raw: Vec<u8>,
        mut check: impl FnMut(&BlockPointer) -> Result<(), PoolError>,
    ) -> Result<Indirect, PoolError> {
        if raw.is_empty() || !raw.len().is_multiple_of(BLKPTR_SIZE) {
            return Err(PoolError::OnDisk(OnDiskError::BadLength {
                what: "indirect block",
                len: raw.len(),
                reason: "not a non-zero multiple of 64 bytes",
            }));
        }
        for chunk in raw.chunks_exact(BLKPTR_SIZE) {
            check(&BlockPointer::decode(chunk)?)?;
        }
        Ok(Indirect { raw })
    }

    /// Number of slots.
    pub fn len(&self) -> usize {
        self.raw.len() / BLKPTR_SIZE
    }

    /// True if the block has no slot (never: construction requires one; for clippy).
    pub fn is_empty(&self) -> bool {
        self.raw.is_empty()
    }

    /// Pointer `index`; an index past the block reads as the never-written hole, as a pointer
    /// array shorter than the fanout always did.
    pub fn get(&self, index: usize) -> Result<BlockPointer, OnDiskError> {
        if index >= self.len() {
            return Ok(BlockPointer::EMPTY);
        }
        indirect_entry(&self.raw, index)
    }

    /// Every pointer, in slot order.
    pub fn iter(&self) -> impl Iterator<Item = Result<BlockPointer, OnDiskError>> + '_ {
        self.raw.chunks_exact(BLKPTR_SIZE).map(BlockPointer::decode)
    }

    /// Copies pointers `start..end` (clamped to the block) to `out`.
    pub fn extend_range(
        &self,
        start: usize,
        end: usize,
        out: &mut Vec<BlockPointer>,
    ) -> Result<(), OnDiskError> {
        let have = self.len();
        for i in start..end {
            out.push(if i < have {
                indirect_entry(&self.raw, i)?
            } else {
                BlockPointer::EMPTY
            });
        }
        Ok(())
    }

    /// Writes pointer `index` (validated by the encoder first: an invalid pointer leaves the
    /// block unchanged).
    pub fn set(&mut self, index: usize, bp: &BlockPointer) -> Result<(), OnDiskError> {
        set_indirect_entry(&mut self.raw, index, bp)
    }

    /// Makes the block `len` bytes long: slots past `len` are dropped, new ones are holes (the
    /// block size is the object's; only a damaged pointer's size can differ).
    pub fn resize(&mut self, len: usize) {
        self.raw.resize(len, 0);
    }

    /// Fill sum and data-pointer count.
    pub fn summary(&self) -> Result<IndirectSummary, OnDiskError> {
        indirect_summary(&self.raw)
    }

    /// The encoded block.
    pub fn bytes(&self) -> &[u8] {
        &self.raw
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringpool_ondisk::blkptr::{encode_indirect_fill, DataPtr, Dva};
    use ringpool_ondisk::checksum::{Checksum, ChecksumAlgo};
    use ringpool_ondisk::object::ObjectType;

    fn data(i: u64) -> BlockPointer {
        BlockPointer::Data(DataPtr {
            dva: Dva {
                device: 0,
                offset: i * 4096,
                asize: 4096,
            },
            lsize: 4096,
            kind: ObjectType::VolumeData,
            level: 0,
            birth_txg: 3 + i,
            fill: 1 + i % 3,
            checksum: Checksum::compute(ChecksumAlgo::Crc32c, &i.to_le_bytes()),
        })
    }

    #[test]
    fn edited_block_equals_a_fresh_encoding() {
        let mut ptrs: Vec<BlockPointer> = (0..256)
            .map(|i| {
                if i % 5 == 0 {
                    data(i)
                } else {
                    BlockPointer::hole(i)
                }
            })
            .collect();
        let mut bytes = vec![0u8; 256 * BLKPTR_SIZE];
        encode_indirect_fill(&ptrs, &mut bytes).unwrap();
        let mut ind = Indirect::from_bytes(bytes, |_| Ok(())).unwrap();
        for (i, bp) in [(3, data(1000)), (0, BlockPointer::hole(9)), (255, data(7))] {
            ind.set(i, &bp).unwrap();
            ptrs[i] = bp;
        }
        let mut fresh = vec![0u8; 256 * BLKPTR_SIZE];
        let fill = encode_indirect_fill(&ptrs, &mut fresh).unwrap();
        assert_eq!(ind.bytes(), &fresh[..]);
        let s = ind.summary().unwrap();
        assert_eq!(s.fill, fill);
        assert_eq!(s.data, ptrs.iter().filter(|p| !p.is_hole()).count());
        assert_eq!(ind.get(3).unwrap(), data(1000));
        assert_eq!(ind.get(256).unwrap(), BlockPointer::EMPTY);
        let all: Vec<_> = ind.iter().map(Result::unwrap).collect();
        assert_eq!(all, ptrs);
    }

    #[test]
    fn rejects_bad_bytes_and_bad_pointers() {
        assert!(Indirect::from_bytes(vec![0; 100], |_| Ok(())).is_err());
        assert!(Indirect::from_bytes(Vec::new(), |_| Ok(())).is_err());
        let mut b = vec![0u8; 4 * BLKPTR_SIZE];
        b[64 + 23] = 1; // flags of slot 1
        assert!(Indirect::from_bytes(b, |_| Ok(())).is_err());
        assert!(
            Indirect::from_bytes(vec![0; 128], |_| Err(PoolError::Internal("no".into()))).is_err()
        );
        let mut ind = Indirect::empty(4 * BLKPTR_SIZE);
        let mut bad = data(1);
        if let BlockPointer::Data(d) = &mut bad {
            d.birth_txg = 0;
        }
        assert!(ind.set(1, &bad).is_err());
        assert_eq!(
            ind,
            Indirect::empty(4 * BLKPTR_SIZE),
            "a rejected pointer changes nothing"
        );
        assert!(ind.set(4, &data(1)).is_err());
    }
}

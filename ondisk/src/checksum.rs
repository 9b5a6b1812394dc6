//! Checksums of blocks and self-checksummed structures.
//!
//! A [`Checksum`] is an algorithm tag plus a 128-bit value, wide enough for a future 128-bit
//! hash (xxh3-128) without changing the block-pointer layout. Today only crc32c exists; its
//! 32-bit value is stored zero-extended and decoders reject non-zero high bits so that the
//! encoding stays canonical (one value, one byte pattern).
//!
//! Encoded checksum (inside a block pointer): 1 byte algorithm (in the pointer's header) and
//! 16 bytes value, little endian.
//!
//! Self-checksummed structures (label header, uberblock) end with a "seal": the last 8 bytes
//! hold the crc32c of every byte before them, zero-extended to a u64.

use std::fmt;

use crate::bytes::{need, Reader};
use crate::error::{OnDiskError, Result};

/// CRC-32C (Castagnoli, the iSCSI polynomial) of `data`, by the `crc32c` crate (the `crc32`
/// instruction on three streams).
///
/// `crc-fast` (AVX-512/VPCLMULQDQ folding, 40-48 GB/s against 10-15 here) was tried and taken
/// out again: in quiet alternated A/Bs of `ringpool serve` on this 2-vCPU VM it made 128 KiB
/// sequential writes 1.08x faster but sequential reads 0.92x slower (6 of 7 rounds each way,
/// both sides swapped), with less server CPU per read. Our guess, not proven: the 512-bit
/// instructions slow down other work sharing the core (the client's receive copies). Branch
/// `lead-crcfast-attempt`; perf/results/README-nbd.md.
pub fn crc32c(data: &[u8]) -> u32 {
    ::crc32c::crc32c(data)
}

/// Checksum algorithms. The numeric value is the on-disk tag; 0 means "no checksum" (holes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
#[repr(u8)]
pub enum ChecksumAlgo {
    /// CRC-32C (Castagnoli), hardware accelerated by the `crc32c` crate.
    Crc32c = 1,
}

impl ChecksumAlgo {
    /// On-disk tag.
    pub fn tag(self) -> u8 {
        self as u8
    }

    /// Decodes an on-disk tag (0 is not an algorithm: callers handle "no checksum" first).
    pub fn from_tag(tag: u8) -> Result<Self> {
        match tag {
            1 => Ok(ChecksumAlgo::Crc32c),
            other => Err(OnDiskError::UnsupportedChecksum(other)),
        }
    }
}

/// A checksum value with its algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Checksum {
    /// The algorithm that produced `value`.
    pub algo: ChecksumAlgo,
    /// The value (crc32c: the low 32 bits, the rest zero).
    pub value: u128,
}

impl fmt::Display for Checksum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.algo {
            ChecksumAlgo::Crc32c => write!(f, "crc32c:{:08x}", self.value),
        }
    }
}

impl Checksum {
    /// Computes the checksum of `data` with `algo`.
    pub fn compute(algo: ChecksumAlgo, data: &[u8]) -> Checksum {
        match algo {
            ChecksumAlgo::Crc32c => Checksum {
                algo,
                value: u128::from(crc32c(data)),
            },
        }
    }

    /// Verifies that `data` has this checksum; `what` names the block in the error.
    pub fn verify(&self, data: &[u8], what: &'static str) -> Result<()> {
        let actual = Checksum::compute(self.algo, data);
        if actual != *self {
            return Err(OnDiskError::ChecksumMismatch {
                what,
                expected: *self,
                actual,
            });
        }
        Ok(())
    }

    /// The 16-byte on-disk form of the value.
    pub fn value_bytes(&self) -> [u8; 16] {
        self.value.to_le_bytes()
    }

    /// Rebuilds a checksum from its tag and 16 value bytes, rejecting non-canonical values.
    pub fn from_parts(tag: u8, value: [u8; 16], what: &'static str) -> Result<Checksum> {
        let algo = ChecksumAlgo::from_tag(tag)?;
        let value = u128::from_le_bytes(value);
        match algo {
            ChecksumAlgo::Crc32c => {
                if value > u128::from(u32::MAX) {
                    return Err(OnDiskError::InvalidField {
                        what,
                        field: "checksum",
                        value: u64::try_from(value >> 64).unwrap_or(u64::MAX),
                        reason: "crc32c value wider than 32 bits",
                    });
                }
            }
        }
        Ok(Checksum { algo, value })
    }
}

/// Size of the seal at the end of a self-checksummed structure.
pub const SEAL_SIZE: usize = 8;

/// Writes the seal: crc32c of `buf[..len-8]` into the last 8 bytes of `buf`.
pub(crate) fn seal(buf: &mut [u8]) {
    let Some(body_len) = buf.len().checked_sub(SEAL_SIZE) else {
        return;
    };
    let (body, tail) = buf.split_at_mut(body_len);
    let crc = u64::from(crc32c(body));
    tail.copy_from_slice(&crc.to_le_bytes());
}

/// Opens a sealed record that starts with the u64 `magic`: its first `sealed_len` bytes of
/// `buf` end in a seal. All zeroes is [`OnDiskError::Empty`] (a slot never written, told apart
/// from damage), then the seal is checked before any field is trusted, then the magic. Returns
/// a reader over `buf` just past the magic.
pub(crate) fn open_sealed<'a>(
    buf: &'a [u8],
    sealed_len: usize,
    magic: u64,
    what: &'static str,
) -> Result<Reader<'a>> {
    need(buf, sealed_len, what)?;
    let sealed = &buf[..sealed_len];
    if sealed.iter().all(|&x| x == 0) {
        return Err(OnDiskError::Empty { what });
    }
    check_seal(sealed, what)?;
    let mut r = Reader::new(buf, what);
    let found = r.u64()?;
    if found != magic {
        return Err(OnDiskError::BadMagic { what, found });
    }
    Ok(r)
}

/// Checks the seal of `buf` (see [`seal`]).
pub(crate) fn check_seal(buf: &[u8], what: &'static str) -> Result<()> {
    let body_len = buf
        .len()
        .checked_sub(SEAL_SIZE)
        .ok_or(OnDiskError::BufferTooSmall {
            what,
            need: SEAL_SIZE,
            have: buf.len(),
        })?;
    let (body, tail) = buf.split_at(body_len);
    let mut word = [0u8; 8];
    word.copy_from_slice(tail);
    let stored = u128::from(u64::from_le_bytes(word));
    let actual = u128::from(crc32c(body));
    if stored != actual {
        return Err(OnDiskError::ChecksumMismatch {
            what,
            expected: Checksum {
                algo: ChecksumAlgo::Crc32c,
                value: stored,
            },
            actual: Checksum {
                algo: ChecksumAlgo::Crc32c,
                value: actual,
            },
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_known_vector() {
        // RFC 3720 test vector: 32 bytes of zeroes.
        let c = Checksum::compute(ChecksumAlgo::Crc32c, &[0u8; 32]);
        assert_eq!(c.value, 0x8a91_36aa);
        assert!(c.verify(&[0u8; 32], "t").is_ok());
        assert!(c.verify(&[1u8; 32], "t").unwrap_err().is_checksum_error());
    }

    #[test]
    fn non_canonical_crc_rejected() {
        let mut v = [0u8; 16];
        v[4] = 1;
        assert!(Checksum::from_parts(1, v, "t").is_err());
        assert!(Checksum::from_parts(9, [0; 16], "t").is_err());
        assert!(Checksum::from_parts(0, [0; 16], "t").is_err());
    }

    /// CRC-32C one bit at a time (reflected polynomial 0x82F63B78): the definition, as the
    /// reference for whatever implementation `crc32c` uses.
    fn bitwise(data: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &b in data {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ 0x82F6_3B78
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    proptest::proptest! {
        /// `crc32c` agrees with the definition for every length and start alignment,
        /// including the short tails a wide implementation leaves over.
        #[test]
        fn crc32c_matches_the_reference(
            data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..9000),
            skip in 0usize..64,
        ) {
            let d = &data[skip.min(data.len())..];
            proptest::prop_assert_eq!(crc32c(d), bitwise(d));
        }
    }

    #[test]
    fn crc32c_matches_the_reference_on_large_blocks() {
        let mut b = vec![0u8; 1 << 17];
        let mut x = 0x9e37_79b9_u32;
        for v in b.iter_mut() {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            *v = x.to_le_bytes()[0];
        }
        for len in [4096, 8192, 65536, 131_072, 131_071, 4095] {
            assert_eq!(crc32c(&b[..len]), bitwise(&b[..len]), "{len}");
            assert_eq!(crc32c(&b[3..len]), bitwise(&b[3..len]), "{len}");
        }
    }

    #[test]
    fn seal_roundtrip_and_detects_flip() {
        let mut b = vec![7u8; 64];
        seal(&mut b);
        check_seal(&b, "t").unwrap();
        b[3] ^= 0x10;
        assert!(check_seal(&b, "t").unwrap_err().is_checksum_error());
    }
}

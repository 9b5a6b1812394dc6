//! Bounds-checked little-endian cursors used by every codec in this crate.
//!
//! Decoders read through [`Reader`], which turns every out-of-bounds access into
//! [`OnDiskError::BufferTooSmall`] instead of a panic. Encoders write into a `Vec<u8>` or, for
//! fixed-size structures, into a fixed array through [`put_u64`] & co.

use crate::error::{OnDiskError, Result};

/// A forward-only reader over untrusted bytes.
#[derive(Debug)]
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    what: &'static str,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8], what: &'static str) -> Self {
        Reader { buf, pos: 0, what }
    }

    pub(crate) fn pos(&self) -> usize {
        self.pos
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    pub(crate) fn bytes(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).ok_or(OnDiskError::BufferTooSmall {
            what: self.what,
            need: usize::MAX,
            have: self.buf.len(),
        })?;
        let out = self
            .buf
            .get(self.pos..end)
            .ok_or(OnDiskError::BufferTooSmall {
                what: self.what,
                need: end,
                have: self.buf.len(),
            })?;
        self.pos = end;
        Ok(out)
    }

    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let b = self.bytes(N)?;
        let mut out = [0u8; N];
        out.copy_from_slice(b);
        Ok(out)
    }

    pub(crate) fn u8(&mut self) -> Result<u8> {
        Ok(self.array::<1>()?[0])
    }

    pub(crate) fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    pub(crate) fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    pub(crate) fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    pub(crate) fn i64(&mut self) -> Result<i64> {
        Ok(i64::from_le_bytes(self.array()?))
    }
}

/// Appends little-endian values to a `Vec<u8>`.
pub(crate) trait PutLe {
    fn put_u8(&mut self, v: u8);
    fn put_u16(&mut self, v: u16);
    fn put_u32(&mut self, v: u32);
    fn put_u64(&mut self, v: u64);
    fn put_i64(&mut self, v: i64);
}

impl PutLe for Vec<u8> {
    fn put_u8(&mut self, v: u8) {
        self.push(v);
    }
    fn put_u16(&mut self, v: u16) {
        self.extend_from_slice(&v.to_le_bytes());
    }
    fn put_u32(&mut self, v: u32) {
        self.extend_from_slice(&v.to_le_bytes());
    }
    fn put_u64(&mut self, v: u64) {
        self.extend_from_slice(&v.to_le_bytes());
    }
    fn put_i64(&mut self, v: i64) {
        self.extend_from_slice(&v.to_le_bytes());
    }
}

/// Requires `buf.len() >= need`, naming the structure in the error.
pub(crate) fn need(buf: &[u8], need: usize, what: &'static str) -> Result<()> {
    if buf.len() < need {
        return Err(OnDiskError::BufferTooSmall {
            what,
            need,
            have: buf.len(),
        });
    }
    Ok(())
}

/// Rejects a non-zero reserved field.
pub(crate) fn reserved_zero(v: u64, what: &'static str, field: &'static str) -> Result<()> {
    if v != 0 {
        return Err(OnDiskError::NonZeroReserved { what, field });
    }
    Ok(())
}

/// Pads `v` with zeroes to the next multiple of 8 bytes.
pub(crate) fn pad8(v: &mut Vec<u8>) {
    while !v.len().is_multiple_of(8) {
        v.push(0);
    }
}

/// Number of zero bytes that pad `len` to a multiple of 8.
pub(crate) fn pad8_len(len: usize) -> usize {
    (8 - len % 8) % 8
}

/// Converts a length to u64 (lossless on every supported target).
pub(crate) fn len_u64(len: usize) -> u64 {
    u64::try_from(len).unwrap_or(u64::MAX)
}

/// Reads the little-endian u64 at the constant offset `OFF` of a fixed-size array. The bound is
/// checked at compile time, so hot fixed-layout decoders pay no per-field `Result`.
#[inline]
pub(crate) fn rd64<const OFF: usize, const N: usize>(b: &[u8; N]) -> u64 {
    const { assert!(OFF + 8 <= N) };
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[OFF..OFF + 8]);
    u64::from_le_bytes(a)
}

/// Reads the little-endian u32 at the constant offset `OFF` (see [`rd64`]).
#[inline]
pub(crate) fn rd32<const OFF: usize, const N: usize>(b: &[u8; N]) -> u32 {
    const { assert!(OFF + 4 <= N) };
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[OFF..OFF + 4]);
    u32::from_le_bytes(a)
}

/// Reads the 16 bytes at the constant offset `OFF` (see [`rd64`]).
#[inline]
pub(crate) fn rd16b<const OFF: usize, const N: usize>(b: &[u8; N]) -> [u8; 16] {
    const { assert!(OFF + 16 <= N) };
    let mut a = [0u8; 16];
    a.copy_from_slice(&b[OFF..OFF + 16]);
    a
}

/// The first `N` bytes of `buf` as an array, or `BufferTooSmall`.
#[inline]
pub(crate) fn head<'a, const N: usize>(buf: &'a [u8], what: &'static str) -> Result<&'a [u8; N]> {
    buf.first_chunk::<N>().ok_or(OnDiskError::BufferTooSmall {
        what,
        need: N,
        have: buf.len(),
    })
}

/// The little-endian u64 at byte `at` of `data`, if all 8 bytes are there.
#[inline]
pub(crate) fn word_at(data: &[u8], at: usize) -> Option<u64> {
    data.get(at..)?
        .first_chunk::<8>()
        .map(|a| u64::from_le_bytes(*a))
}

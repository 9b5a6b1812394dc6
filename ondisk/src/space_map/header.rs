//! The space-map header kept in the map object's bonus (layout in the parent module's docs).

use super::{invalid, SpaceMapEncoder, SPACE_MAP_HEADER_SIZE, SPACE_MAP_HISTOGRAM_SIZE};
use crate::bytes::{need, Reader};
use crate::error::Result;

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
        let unit = 1i64
            .checked_shl(u32::from(shift))
            .filter(|_| shift < 63)
            .ok_or(invalid("shift", u64::from(shift), "unit does not fit i64"))?;
        let bytes = enc
            .alloc_delta_units()
            .checked_mul(unit)
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

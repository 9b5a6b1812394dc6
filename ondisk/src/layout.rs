//! Where things live on a device: labels, the uberblock ring, the allocatable region and its
//! metaslabs.
//!
//! # Device layout
//!
//! | offset (bytes)              | size      | content                                      |
//! |-----------------------------|-----------|----------------------------------------------|
//! | 0                           | 256 KiB   | label L0                                     |
//! | 256 KiB                     | 256 KiB   | label L1                                     |
//! | 512 KiB                     | 3.5 MiB   | reserved (zero; room for future boot data)   |
//! | 4 MiB ([`ALLOC_START`])     | …         | allocatable region, `2^ms_shift` metaslabs   |
//! | `usable − 512 KiB`          | 256 KiB   | label L2                                     |
//! | `usable − 256 KiB`          | 256 KiB   | label L3                                     |
//!
//! `usable` is the device size rounded down to a multiple of [`LABEL_SIZE`], so the back labels
//! stay at the same place whatever the tail of the device looks like. The allocatable region is
//! `[ALLOC_START, usable − 512 KiB)`; metaslab `i` covers
//! `[ALLOC_START + i·2^ms_shift, ALLOC_START + (i+1)·2^ms_shift)` and the tail after the last
//! whole metaslab is unused.
//!
//! # Label layout (each of the four)
//!
//! | offset in label | size    | content                                                     |
//! |-----------------|---------|-------------------------------------------------------------|
//! | 0               | 16 KiB  | blank, never written (partition tables, boot sectors)       |
//! | 16 KiB          | 112 KiB | label header ([`crate::label::LabelHeader`]), zero padded    |
//! | 128 KiB         | 128 KiB | uberblock ring: `slots` slots of `slot_size` bytes           |
//!
//! `slot_size = max(1 KiB, 2^ashift)` so a slot is one O_DIRECT write of whole logical blocks;
//! `slots = 128 KiB / slot_size` (128 at ashift ≤ 10, 32 at ashift 12, 2 at ashift 16). The
//! uberblock of txg `t` goes to slot `t mod slots`, in every label.

use crate::error::{OnDiskError, Result};

/// Size of one label.
pub const LABEL_SIZE: u64 = 256 * 1024;
/// Number of labels per device (two at the front, two at the back).
pub const LABEL_COUNT: usize = 4;
/// Blank area at the start of every label.
pub const LABEL_BLANK_SIZE: u64 = 16 * 1024;
/// Offset of the label header inside a label.
pub const LABEL_HEADER_OFFSET: u64 = LABEL_BLANK_SIZE;
/// Size of the label header area (the encoded header plus zero padding).
pub const LABEL_HEADER_AREA_SIZE: usize = 112 * 1024;
/// Offset of the uberblock ring inside a label.
pub const LABEL_RING_OFFSET: u64 = 128 * 1024;
/// Size of the uberblock ring.
pub const LABEL_RING_SIZE: u64 = 128 * 1024;
/// Start of the allocatable region (after L0, L1 and a reserved gap, 4 MiB aligned).
pub const ALLOC_START: u64 = 4 * 1024 * 1024;
/// Smallest supported logical block size shift (512 B).
pub const MIN_ASHIFT: u8 = 9;
/// Largest supported logical block size shift (64 KiB).
pub const MAX_ASHIFT: u8 = 16;
/// Smallest uberblock slot.
pub const MIN_UBERBLOCK_SLOT: usize = 1024;
/// Smallest metaslab shift (16 MiB metaslabs).
pub const MIN_MS_SHIFT: u8 = 24;
/// Largest metaslab shift chosen by [`choose_ms_shift`] while the count bound allows (16 GiB).
pub const MAX_MS_SHIFT: u8 = 34;
/// Hard upper bound of a metaslab shift accepted by decoders (devices above 2 PiB).
pub const MS_SHIFT_LIMIT: u8 = 48;
/// Most metaslabs [`choose_ms_shift`] gives a device while they stay ≤ 16 GiB.
pub const TARGET_METASLABS: u64 = 200;
/// Metaslab count [`choose_ms_shift`] aims for on small devices.
pub const MIN_TARGET_METASLABS: u64 = 16;
/// Upper bound on the metaslab count per device.
pub const MAX_METASLABS: u64 = 1 << 17;
/// Smallest block (allocated or logical) a block pointer may describe.
pub const MIN_BLOCK_SIZE: u32 = 512;
/// Largest block (allocated or logical) a block pointer may describe.
pub const MAX_BLOCK_SIZE: u32 = 16 * 1024 * 1024;
/// Most devices a pool may have (bounds the label's device list and block pointers' indexes).
pub const MAX_DEVICES: u32 = 1024;
/// Smallest device accepted: both label pairs, the reserved gap and one smallest metaslab fit.
pub const MIN_DEVICE_SIZE: u64 = 64 * 1024 * 1024;

const WHAT: &str = "layout";

/// Checks that `ashift` is supported.
pub fn check_ashift(ashift: u8) -> Result<()> {
    if !(MIN_ASHIFT..=MAX_ASHIFT).contains(&ashift) {
        return Err(OnDiskError::InvalidField {
            what: WHAT,
            field: "ashift",
            value: u64::from(ashift),
            reason: "outside 9..=16",
        });
    }
    Ok(())
}

/// Checks that `ms_shift` is supported.
pub fn check_ms_shift(ms_shift: u8) -> Result<()> {
    if !(MIN_MS_SHIFT..=MS_SHIFT_LIMIT).contains(&ms_shift) {
        return Err(OnDiskError::InvalidField {
            what: WHAT,
            field: "ms_shift",
            value: u64::from(ms_shift),
            reason: "outside 24..=48",
        });
    }
    Ok(())
}

/// Uberblock slot size for a device of logical block size `2^ashift`.
pub fn uberblock_slot_size(ashift: u8) -> Result<usize> {
    check_ashift(ashift)?;
    Ok(MIN_UBERBLOCK_SLOT.max(1usize << ashift))
}

/// Number of uberblock slots in a ring for `2^ashift` blocks.
pub fn uberblock_slot_count(ashift: u8) -> Result<u64> {
    let slot = crate::bytes::len_u64(uberblock_slot_size(ashift)?);
    Ok(LABEL_RING_SIZE / slot)
}

/// The ring slot of txg `txg` in a ring of `slots` slots (0 slots yields slot 0).
pub fn uberblock_slot(txg: u64, slots: u64) -> u64 {
    txg.checked_rem(slots).unwrap_or(0)
}

/// Number of whole metaslabs of `2^ms_shift` bytes in `alloc_size` bytes.
pub fn metaslab_count(alloc_size: u64, ms_shift: u8) -> u64 {
    alloc_size.checked_shr(u32::from(ms_shift)).unwrap_or(0)
}

/// Picks the metaslab shift for an allocatable region of `alloc_size` bytes, with OpenZFS's
/// sizing rule (the same rule as the allocator's `default_ms_shift`): 512 MiB metaslabs while
/// that gives 16..=[`TARGET_METASLABS`] of them; a smaller region gets about 16 metaslabs
/// (`highbit(size / 16)`), a larger one at most 200 (`highbit(size / 200)`); never above 16 GiB
/// unless that would exceed [`MAX_METASLABS`]; never below 16 MiB.
pub fn choose_ms_shift(alloc_size: u64) -> u8 {
    // 1-based index of the highest set bit (0 for 0), like OpenZFS's highbit64.
    let highbit = |x: u64| 64 - x.leading_zeros();
    let count = alloc_size >> 29;
    let mut shift = if count < MIN_TARGET_METASLABS {
        highbit(alloc_size / MIN_TARGET_METASLABS)
    } else if count > TARGET_METASLABS {
        highbit(alloc_size / TARGET_METASLABS)
    } else {
        29
    };
    if shift >= u32::from(MAX_MS_SHIFT) {
        shift = u32::from(MAX_MS_SHIFT);
        if alloc_size >> shift > MAX_METASLABS {
            shift = highbit(alloc_size / MAX_METASLABS);
        }
    }
    u8::try_from(shift.max(u32::from(MIN_MS_SHIFT))).unwrap_or(MS_SHIFT_LIMIT)
}

/// Rounds `v` down to a multiple of the power of two `align`.
pub fn align_down(v: u64, align: u64) -> u64 {
    v & !(align.saturating_sub(1))
}

/// Rounds `v` up to a multiple of the power of two `align`, `None` on overflow.
pub fn align_up(v: u64, align: u64) -> Option<u64> {
    let mask = align.saturating_sub(1);
    v.checked_add(mask).map(|x| x & !mask)
}

/// The computed layout of one device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceLayout {
    device_size: u64,
    usable_size: u64,
    ashift: u8,
}

impl DeviceLayout {
    /// Layout of a device of `device_size` bytes with logical blocks of `2^ashift` bytes.
    pub fn new(device_size: u64, ashift: u8) -> Result<DeviceLayout> {
        check_ashift(ashift)?;
        if device_size < MIN_DEVICE_SIZE {
            return Err(OnDiskError::InvalidField {
                what: WHAT,
                field: "device_size",
                value: device_size,
                reason: "smaller than the 64 MiB minimum",
            });
        }
        Ok(DeviceLayout {
            device_size,
            usable_size: align_down(device_size, LABEL_SIZE),
            ashift,
        })
    }

    /// The raw device size given at construction.
    pub fn device_size(&self) -> u64 {
        self.device_size
    }

    /// Device size rounded down to a whole number of labels.
    pub fn usable_size(&self) -> u64 {
        self.usable_size
    }

    /// Logical block shift.
    pub fn ashift(&self) -> u8 {
        self.ashift
    }

    /// Byte offset of label `index` (0..4) on the device.
    pub fn label_offset(&self, index: usize) -> Result<u64> {
        match index {
            0 => Ok(0),
            1 => Ok(LABEL_SIZE),
            2 => Ok(self.usable_size - 2 * LABEL_SIZE),
            3 => Ok(self.usable_size - LABEL_SIZE),
            _ => Err(OnDiskError::InvalidField {
                what: WHAT,
                field: "label index",
                value: crate::bytes::len_u64(index),
                reason: "labels are 0..4",
            }),
        }
    }

    /// Offsets of all four labels, front first.
    pub fn label_offsets(&self) -> [u64; LABEL_COUNT] {
        [
            0,
            LABEL_SIZE,
            self.usable_size - 2 * LABEL_SIZE,
            self.usable_size - LABEL_SIZE,
        ]
    }

    /// Byte offset of label `index`'s header area.
    pub fn label_header_offset(&self, index: usize) -> Result<u64> {
        Ok(self.label_offset(index)? + LABEL_HEADER_OFFSET)
    }

    /// Uberblock slot size on this device.
    pub fn slot_size(&self) -> usize {
        MIN_UBERBLOCK_SLOT.max(1usize << self.ashift)
    }

    /// Number of uberblock slots per label.
    pub fn slot_count(&self) -> u64 {
        LABEL_RING_SIZE / crate::bytes::len_u64(self.slot_size())
    }

    /// Slot of `txg` in the ring.
    pub fn slot_of(&self, txg: u64) -> u64 {
        uberblock_slot(txg, self.slot_count())
    }

    /// Byte offset on the device of ring slot `slot` of label `label`.
    pub fn slot_offset(&self, label: usize, slot: u64) -> Result<u64> {
        if slot >= self.slot_count() {
            return Err(OnDiskError::InvalidField {
                what: WHAT,
                field: "slot",
                value: slot,
                reason: "beyond the ring",
            });
        }
        Ok(self.label_offset(label)?
            + LABEL_RING_OFFSET
            + slot * crate::bytes::len_u64(self.slot_size()))
    }

    /// Byte offset on the device of the uberblock slot of `txg` in label `label`.
    pub fn uberblock_offset(&self, label: usize, txg: u64) -> Result<u64> {
        self.slot_offset(label, self.slot_of(txg))
    }

    /// First byte of the allocatable region.
    pub fn alloc_start(&self) -> u64 {
        ALLOC_START
    }

    /// End (exclusive) of the allocatable region.
    pub fn alloc_end(&self) -> u64 {
        self.usable_size - 2 * LABEL_SIZE
    }

    /// Size of the allocatable region.
    pub fn alloc_size(&self) -> u64 {
        self.alloc_end() - ALLOC_START
    }

    /// The metaslab shift [`choose_ms_shift`] picks for this device.
    pub fn default_ms_shift(&self) -> u8 {
        choose_ms_shift(self.alloc_size())
    }

    /// Number of whole metaslabs of `2^ms_shift` bytes.
    pub fn metaslab_count(&self, ms_shift: u8) -> u64 {
        metaslab_count(self.alloc_size(), ms_shift)
    }

    /// Byte range `[start, end)` on the device of metaslab `id`.
    pub fn metaslab_range(&self, ms_shift: u8, id: u64) -> Result<(u64, u64)> {
        if id >= self.metaslab_count(ms_shift) {
            return Err(OnDiskError::InvalidField {
                what: WHAT,
                field: "metaslab id",
                value: id,
                reason: "beyond the last metaslab",
            });
        }
        let size = 1u64 << ms_shift;
        let start = ALLOC_START + id * size;
        Ok((start, start + size))
    }

    /// Metaslab holding device byte `offset`, if it lies in a whole metaslab.
    pub fn metaslab_of(&self, ms_shift: u8, offset: u64) -> Option<u64> {
        let rel = offset.checked_sub(ALLOC_START)?;
        let id = rel >> ms_shift;
        (id < self.metaslab_count(ms_shift)).then_some(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;
    const GIB: u64 = 1024 * MIB;

    #[test]
    fn labels_inside_device_and_disjoint() {
        for size in [
            MIN_DEVICE_SIZE,
            MIN_DEVICE_SIZE + 12345,
            GIB + 4096 + 17,
            3 * GIB,
        ] {
            let l = DeviceLayout::new(size, 12).unwrap();
            let offs = l.label_offsets();
            for (i, &o) in offs.iter().enumerate() {
                assert_eq!(o % LABEL_SIZE, 0);
                assert!(o + LABEL_SIZE <= size, "label {i} beyond device");
                assert_eq!(l.label_offset(i).unwrap(), o);
            }
            assert!(offs[1] + LABEL_SIZE <= l.alloc_start());
            assert!(l.alloc_end() <= offs[2]);
            assert_eq!(offs[3] + LABEL_SIZE, l.usable_size());
            assert!(l.label_offset(4).is_err());
        }
    }

    #[test]
    fn too_small_and_bad_ashift() {
        assert!(DeviceLayout::new(MIN_DEVICE_SIZE - 1, 12).is_err());
        assert!(DeviceLayout::new(GIB, 8).is_err());
        assert!(DeviceLayout::new(GIB, 17).is_err());
    }

    #[test]
    fn slot_math() {
        assert_eq!(uberblock_slot_size(9).unwrap(), 1024);
        assert_eq!(uberblock_slot_size(10).unwrap(), 1024);
        assert_eq!(uberblock_slot_size(12).unwrap(), 4096);
        assert_eq!(uberblock_slot_count(9).unwrap(), 128);
        assert_eq!(uberblock_slot_count(12).unwrap(), 32);
        assert_eq!(uberblock_slot_count(16).unwrap(), 2);
        assert_eq!(uberblock_slot(33, 32), 1);
        assert_eq!(uberblock_slot(5, 0), 0);
        let l = DeviceLayout::new(GIB, 12).unwrap();
        for label in 0..LABEL_COUNT {
            for txg in [0u64, 1, 31, 32, 1000] {
                let off = l.uberblock_offset(label, txg).unwrap();
                let base = l.label_offset(label).unwrap();
                assert_eq!(off % 4096, 0, "slot must be block aligned");
                assert!(off >= base + LABEL_RING_OFFSET);
                assert!(off + 4096 <= base + LABEL_SIZE);
                assert_eq!(off, base + LABEL_RING_OFFSET + (txg % 32) * 4096);
            }
        }
        assert!(l.slot_offset(0, 32).is_err());
    }

    #[test]
    fn alignment_to_ashift() {
        for ashift in MIN_ASHIFT..=MAX_ASHIFT {
            let l = DeviceLayout::new(10 * GIB + 3 * 4096 + 5, ashift).unwrap();
            let a = 1u64 << ashift;
            assert_eq!(l.alloc_start() % a, 0);
            assert_eq!(l.alloc_end() % a, 0);
            for o in l.label_offsets() {
                assert_eq!(o % a, 0);
                assert_eq!((o + LABEL_HEADER_OFFSET) % a.min(LABEL_BLANK_SIZE), 0);
            }
            assert_eq!(l.slot_size() % usize::try_from(a).unwrap(), 0);
        }
    }

    #[test]
    fn ms_shift_choice() {
        assert_eq!(choose_ms_shift(0), MIN_MS_SHIFT);
        // Small regions: about 16 metaslabs, never below 16 MiB.
        assert_eq!(choose_ms_shift(GIB), 27);
        assert_eq!(choose_ms_shift(60 * MIB), MIN_MS_SHIFT);
        // 8..100 GiB: 512 MiB metaslabs.
        assert_eq!(choose_ms_shift(10 * GIB), 29);
        assert_eq!(choose_ms_shift(100 * GIB), 29);
        // Larger: at most 200.
        assert_eq!(choose_ms_shift(1 << 40), 33);
        assert_eq!(choose_ms_shift(1 << 50), MAX_MS_SHIFT);
        let huge = 1u64 << 55;
        let s = choose_ms_shift(huge);
        assert!(s > MAX_MS_SHIFT && metaslab_count(huge, s) <= MAX_METASLABS);
        for size in [
            64 * MIB,
            GIB,
            7 * GIB,
            9 * GIB,
            100 * GIB,
            101 * GIB,
            3 << 40,
            1 << 51,
        ] {
            let s = choose_ms_shift(size);
            assert!((MIN_MS_SHIFT..=MAX_MS_SHIFT).contains(&s));
            let n = metaslab_count(size, s);
            assert!(
                n <= TARGET_METASLABS || (s == MAX_MS_SHIFT && n <= MAX_METASLABS),
                "{size}: {n}"
            );
            assert!(n >= 8 || s == MIN_MS_SHIFT, "{size}: {n}");
        }
    }

    #[test]
    fn metaslab_ranges() {
        let l = DeviceLayout::new(GIB, 12).unwrap();
        let s = l.default_ms_shift();
        let n = l.metaslab_count(s);
        assert!(n >= 1);
        let (first, _) = l.metaslab_range(s, 0).unwrap();
        assert_eq!(first, ALLOC_START);
        let (_, last_end) = l.metaslab_range(s, n - 1).unwrap();
        assert!(last_end <= l.alloc_end());
        assert!(l.metaslab_range(s, n).is_err());
        assert_eq!(l.metaslab_of(s, ALLOC_START), Some(0));
        assert_eq!(l.metaslab_of(s, ALLOC_START - 1), None);
        assert_eq!(l.metaslab_of(s, last_end - 1), Some(n - 1));
        assert_eq!(l.metaslab_of(s, last_end), None);
        // Minimum device still holds one metaslab.
        let m = DeviceLayout::new(MIN_DEVICE_SIZE, 9).unwrap();
        assert!(m.metaslab_count(m.default_ms_shift()) >= 1);
    }
}

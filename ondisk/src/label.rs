//! The label header: who this device is, which pool it belongs to, and the pool's device list.
//!
//! The header is written into the header area of each of the four labels (see
//! [`crate::layout`]); the rest of the area is zero. It carries two crc32c seals: one over the
//! fixed part (so a damaged length or magic is reported as a checksum error before anything is
//! trusted) and one over the whole header.
//!
//! # Encoding (little endian; total length a multiple of 8, at most 112 KiB)
//!
//! | offset | size | field                                                          |
//! |--------|------|----------------------------------------------------------------|
//! | 0      | 8    | magic [`LABEL_MAGIC`] ("RPLABEL\0")                            |
//! | 8      | 4    | format version ([`LABEL_VERSION`])                             |
//! | 12     | 4    | total header length in bytes, seals included                   |
//! | 16     | 8    | pool GUID                                                      |
//! | 24     | 8    | this device's GUID                                             |
//! | 32     | 4    | this device's index in the device list                         |
//! | 36     | 4    | device count (1..=1024)                                        |
//! | 40     | 1    | ashift of this device                                          |
//! | 41     | 1    | metaslab shift of this device                                  |
//! | 42     | 1    | pool state: 1 active, 2 exported, 3 destroyed                  |
//! | 43     | 1    | pool name length (1..=255)                                     |
//! | 44     | 2    | hostname length (0..=255)                                      |
//! | 46     | 2    | reserved, 0                                                    |
//! | 48     | 8    | pool creation time (UTC seconds)                               |
//! | 56     | 8    | config txg: txg of the last config change written to the labels |
//! | 64     | 8    | last host: host id                                             |
//! | 72     | 4    | last host: pid                                                 |
//! | 76     | 4    | reserved, 0                                                    |
//! | 80     | 8    | crc32c of bytes 0..80 (fixed-part seal)                        |
//! | 88     | n    | pool name (UTF-8), zero padded to 8                            |
//! | …      | m    | hostname (UTF-8), zero padded to 8                             |
//! | …      | 32·c | device list, `c` entries (below)                               |
//! | len−8  | 8    | crc32c of bytes 0..len−8 (header seal)                         |
//!
//! Device entry (32 bytes): GUID (8) · device size in bytes as recorded when added, which fixes
//! where its back labels are (8) · txg it was added in (8) · ashift (1) · metaslab shift (1) ·
//! reserved zero (6).

use crate::bytes::{len_u64, need, pad8, pad8_len, reserved_zero, PutLe, Reader};
use crate::checksum::{check_seal, open_sealed, seal, SEAL_SIZE};
use crate::error::{OnDiskError, Result};
use crate::layout::{
    check_ashift, check_ms_shift, LABEL_HEADER_AREA_SIZE, MAX_DEVICES, MIN_DEVICE_SIZE,
};

/// Label magic ("RPLABEL\0" read as a little-endian u64).
pub const LABEL_MAGIC: u64 = u64::from_le_bytes(*b"RPLABEL\0");
/// Current label format version.
pub const LABEL_VERSION: u32 = 1;
/// Longest pool name in bytes.
pub const MAX_POOL_NAME: usize = 255;
/// Longest hostname in bytes.
pub const MAX_HOSTNAME: usize = 255;
/// Encoded size of a device entry.
pub const DEVICE_ENTRY_SIZE: usize = 32;

const WHAT: &str = "label";
const FIXED: usize = 80;

/// Pool state recorded in the labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PoolState {
    /// Imported (or crashed while imported) by `last host`.
    Active,
    /// Cleanly exported.
    Exported,
    /// Destroyed; importable only on explicit request.
    Destroyed,
}

impl PoolState {
    /// On-disk tag.
    pub fn tag(self) -> u8 {
        match self {
            PoolState::Active => 1,
            PoolState::Exported => 2,
            PoolState::Destroyed => 3,
        }
    }

    /// Decodes a tag.
    pub fn from_tag(tag: u8) -> Result<PoolState> {
        match tag {
            1 => Ok(PoolState::Active),
            2 => Ok(PoolState::Exported),
            3 => Ok(PoolState::Destroyed),
            v => Err(OnDiskError::UnknownEnum {
                what: WHAT,
                field: "pool state",
                value: u64::from(v),
            }),
        }
    }
}

/// The host that last imported the pool.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct HostInfo {
    /// Hostname (≤ 255 bytes, may be empty).
    pub hostname: String,
    /// Host id (e.g. derived from /etc/machine-id; 0 if unknown).
    pub host_id: u64,
    /// Process id of the importing process.
    pub pid: u32,
}

/// One device of the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DeviceEntry {
    /// Device GUID (non-zero, unique in the pool).
    pub guid: u64,
    /// Device size in bytes when it was added (the layout derives from it).
    pub size: u64,
    /// Logical block shift.
    pub ashift: u8,
    /// Metaslab shift.
    pub ms_shift: u8,
    /// Txg the device was added in.
    pub added_txg: u64,
}

/// The label header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelHeader {
    /// Pool name.
    pub pool_name: String,
    /// Pool GUID (non-zero).
    pub pool_guid: u64,
    /// This device's GUID (= `devices[device_index].guid`).
    pub device_guid: u64,
    /// This device's index in `devices`.
    pub device_index: u32,
    /// The pool's devices.
    pub devices: Vec<DeviceEntry>,
    /// This device's ashift (= `devices[device_index].ashift`).
    pub ashift: u8,
    /// This device's metaslab shift (= `devices[device_index].ms_shift`).
    pub ms_shift: u8,
    /// Pool state.
    pub state: PoolState,
    /// Last host.
    pub host: HostInfo,
    /// Pool creation time (UTC seconds).
    pub creation_time: u64,
    /// Txg of the config written.
    pub config_txg: u64,
}

fn invalid(field: &'static str, value: u64, reason: &'static str) -> OnDiskError {
    OnDiskError::InvalidField {
        what: WHAT,
        field,
        value,
        reason,
    }
}

/// Checks a pool name: 1..=255 bytes, starts with an ASCII letter, then ASCII letters, digits,
/// `_`, `-`, `.`, `:` (no `/`: export names are `POOL/VOLUME`).
pub fn validate_pool_name(name: &str) -> Result<()> {
    let bad = |reason| OnDiskError::BadString {
        what: WHAT,
        field: "pool name",
        reason,
    };
    if name.is_empty() {
        return Err(bad("empty"));
    }
    if name.len() > MAX_POOL_NAME {
        return Err(OnDiskError::TooLong {
            what: WHAT,
            field: "pool name",
            len: len_u64(name.len()),
            max: len_u64(MAX_POOL_NAME),
        });
    }
    if !name.as_bytes()[0].is_ascii_alphabetic() {
        return Err(bad("must start with a letter"));
    }
    if !name
        .bytes()
        .all(|c| c.is_ascii_alphanumeric() || b"_-.:".contains(&c))
    {
        return Err(bad("only letters, digits, '_', '-', '.', ':' are allowed"));
    }
    Ok(())
}

fn check_hostname(name: &str) -> Result<()> {
    if name.len() > MAX_HOSTNAME {
        return Err(OnDiskError::TooLong {
            what: WHAT,
            field: "hostname",
            len: len_u64(name.len()),
            max: len_u64(MAX_HOSTNAME),
        });
    }
    if name.contains('\0') {
        return Err(OnDiskError::BadString {
            what: WHAT,
            field: "hostname",
            reason: "contains NUL",
        });
    }
    Ok(())
}

impl LabelHeader {
    /// Wrapping sum of the device GUIDs (compare with [`crate::Uberblock::guid_sum`]).
    pub fn guid_sum(&self) -> u64 {
        self.devices
            .iter()
            .fold(0u64, |s, d| s.wrapping_add(d.guid))
    }

    /// This device's entry.
    pub fn this_device(&self) -> Option<&DeviceEntry> {
        self.devices.get(usize::try_from(self.device_index).ok()?)
    }

    /// Checks every field and cross-field rule.
    pub fn validate(&self) -> Result<()> {
        validate_pool_name(&self.pool_name)?;
        check_hostname(&self.host.hostname)?;
        if self.pool_guid == 0 {
            return Err(invalid("pool_guid", 0, "GUIDs are non-zero"));
        }
        let count = len_u64(self.devices.len());
        if count == 0 || count > u64::from(MAX_DEVICES) {
            return Err(OnDiskError::TooLong {
                what: WHAT,
                field: "device count",
                len: count,
                max: u64::from(MAX_DEVICES),
            });
        }
        check_ashift(self.ashift)?;
        check_ms_shift(self.ms_shift)?;
        let me = self.this_device().ok_or(invalid(
            "device_index",
            u64::from(self.device_index),
            "beyond the device list",
        ))?;
        if me.guid != self.device_guid {
            return Err(invalid(
                "device_guid",
                self.device_guid,
                "differs from the device list entry",
            ));
        }
        if me.ashift != self.ashift || me.ms_shift != self.ms_shift {
            return Err(invalid(
                "ashift",
                u64::from(self.ashift),
                "differs from the device list entry",
            ));
        }
        let mut guids = Vec::with_capacity(self.devices.len());
        for d in &self.devices {
            if d.guid == 0 {
                return Err(invalid("device guid", 0, "GUIDs are non-zero"));
            }
            if d.size < MIN_DEVICE_SIZE {
                return Err(invalid(
                    "device size",
                    d.size,
                    "smaller than the 64 MiB minimum",
                ));
            }
            check_ashift(d.ashift)?;
            check_ms_shift(d.ms_shift)?;
            guids.push(d.guid);
        }
        guids.sort_unstable();
        if guids.windows(2).any(|w| w[0] == w[1]) {
            return Err(invalid("device guid", 0, "duplicate device GUID"));
        }
        Ok(())
    }

    /// Encoded length in bytes.
    pub fn encoded_len(&self) -> usize {
        let n = self.pool_name.len();
        let h = self.host.hostname.len();
        FIXED
            + SEAL_SIZE
            + n
            + pad8_len(n)
            + h
            + pad8_len(h)
            + DEVICE_ENTRY_SIZE * self.devices.len()
            + SEAL_SIZE
    }

    /// Encodes the header.
    pub fn encode(&self) -> Result<Vec<u8>> {
        self.validate()?;
        let total = self.encoded_len();
        if total > LABEL_HEADER_AREA_SIZE {
            return Err(OnDiskError::TooLong {
                what: WHAT,
                field: "header",
                len: len_u64(total),
                max: len_u64(LABEL_HEADER_AREA_SIZE),
            });
        }
        let total32 =
            u32::try_from(total).map_err(|_| invalid("length", len_u64(total), "too long"))?;
        let name_len =
            u8::try_from(self.pool_name.len()).map_err(|_| invalid("pool name", 0, "too long"))?;
        let host_len = u16::try_from(self.host.hostname.len())
            .map_err(|_| invalid("hostname", 0, "too long"))?;
        let count = u32::try_from(self.devices.len())
            .map_err(|_| invalid("device count", 0, "too many"))?;
        let mut v = Vec::with_capacity(total);
        v.put_u64(LABEL_MAGIC);
        v.put_u32(LABEL_VERSION);
        v.put_u32(total32);
        v.put_u64(self.pool_guid);
        v.put_u64(self.device_guid);
        v.put_u32(self.device_index);
        v.put_u32(count);
        v.put_u8(self.ashift);
        v.put_u8(self.ms_shift);
        v.put_u8(self.state.tag());
        v.put_u8(name_len);
        v.put_u16(host_len);
        v.put_u16(0);
        v.put_u64(self.creation_time);
        v.put_u64(self.config_txg);
        v.put_u64(self.host.host_id);
        v.put_u32(self.host.pid);
        v.put_u32(0);
        v.put_u64(0);
        seal(&mut v[..FIXED + SEAL_SIZE]);
        v.extend_from_slice(self.pool_name.as_bytes());
        pad8(&mut v);
        v.extend_from_slice(self.host.hostname.as_bytes());
        pad8(&mut v);
        for d in &self.devices {
            v.put_u64(d.guid);
            v.put_u64(d.size);
            v.put_u64(d.added_txg);
            v.put_u8(d.ashift);
            v.put_u8(d.ms_shift);
            v.extend_from_slice(&[0u8; 6]);
        }
        v.put_u64(0);
        seal(&mut v);
        debug_assert_eq!(v.len(), total);
        Ok(v)
    }

    /// Encodes into a label header area (`area.len()` ≥ the encoded length, normally
    /// [`LABEL_HEADER_AREA_SIZE`]), zeroing the rest of it.
    pub fn encode_area(&self, area: &mut [u8]) -> Result<()> {
        let bytes = self.encode()?;
        need(area, bytes.len(), WHAT)?;
        let (head, tail) = area.split_at_mut(bytes.len());
        head.copy_from_slice(&bytes);
        tail.fill(0);
        Ok(())
    }

    /// Decodes and validates a header from the start of `buf` (a header area or the exact bytes).
    pub fn decode(buf: &[u8]) -> Result<LabelHeader> {
        let mut r = open_sealed(buf, FIXED + SEAL_SIZE, LABEL_MAGIC, WHAT)?;
        let version = r.u32()?;
        if version != LABEL_VERSION {
            return Err(OnDiskError::UnsupportedVersion {
                what: WHAT,
                version: u64::from(version),
            });
        }
        let total = usize::try_from(r.u32()?).unwrap_or(usize::MAX);
        if total > LABEL_HEADER_AREA_SIZE || total % 8 != 0 || total < FIXED + 2 * SEAL_SIZE {
            return Err(OnDiskError::BadLength {
                what: WHAT,
                len: total,
                reason: "header length out of bounds",
            });
        }
        need(buf, total, WHAT)?;
        let body = &buf[..total];
        check_seal(body, WHAT)?;
        let mut r2 = Reader::new(body, WHAT);
        r2.bytes(r.pos())?;
        let mut r = r2;
        let pool_guid = r.u64()?;
        let device_guid = r.u64()?;
        let device_index = r.u32()?;
        let count = r.u32()?;
        let ashift = r.u8()?;
        let ms_shift = r.u8()?;
        let state = PoolState::from_tag(r.u8()?)?;
        let name_len = usize::from(r.u8()?);
        let host_len = usize::from(r.u16()?);
        reserved_zero(u64::from(r.u16()?), WHAT, "reserved@46")?;
        let creation_time = r.u64()?;
        let config_txg = r.u64()?;
        let host_id = r.u64()?;
        let pid = r.u32()?;
        reserved_zero(u64::from(r.u32()?), WHAT, "reserved@76")?;
        r.u64()?; // fixed-part seal, already checked
        if host_len > MAX_HOSTNAME {
            return Err(OnDiskError::TooLong {
                what: WHAT,
                field: "hostname",
                len: len_u64(host_len),
                max: len_u64(MAX_HOSTNAME),
            });
        }
        if count == 0 || count > MAX_DEVICES {
            return Err(OnDiskError::TooLong {
                what: WHAT,
                field: "device count",
                len: u64::from(count),
                max: u64::from(MAX_DEVICES),
            });
        }
        let pool_name = read_string(&mut r, name_len, "pool name")?;
        let hostname = read_string(&mut r, host_len, "hostname")?;
        let count = usize::try_from(count).unwrap_or(usize::MAX);
        // Bound the allocation by what the buffer can actually hold.
        if count.saturating_mul(DEVICE_ENTRY_SIZE) > r.remaining() {
            return Err(OnDiskError::BufferTooSmall {
                what: WHAT,
                need: r
                    .pos()
                    .saturating_add(count.saturating_mul(DEVICE_ENTRY_SIZE)),
                have: total,
            });
        }
        let mut devices = Vec::with_capacity(count);
        for _ in 0..count {
            let guid = r.u64()?;
            let size = r.u64()?;
            let added_txg = r.u64()?;
            let ashift = r.u8()?;
            let ms_shift = r.u8()?;
            let pad = r.array::<6>()?;
            if pad != [0; 6] {
                return Err(OnDiskError::NonZeroReserved {
                    what: WHAT,
                    field: "device entry",
                });
            }
            devices.push(DeviceEntry {
                guid,
                size,
                ashift,
                ms_shift,
                added_txg,
            });
        }
        if r.remaining() != SEAL_SIZE {
            return Err(OnDiskError::BadLength {
                what: WHAT,
                len: total,
                reason: "length disagrees with the contents",
            });
        }
        let h = LabelHeader {
            pool_name,
            pool_guid,
            device_guid,
            device_index,
            devices,
            ashift,
            ms_shift,
            state,
            host: HostInfo {
                hostname,
                host_id,
                pid,
            },
            creation_time,
            config_txg,
        };
        h.validate()?;
        Ok(h)
    }
}

fn read_string(r: &mut Reader<'_>, len: usize, field: &'static str) -> Result<String> {
    let bytes = r.bytes(len)?;
    let pad = r.bytes(pad8_len(len))?;
    if pad.iter().any(|&b| b != 0) {
        return Err(OnDiskError::NonZeroReserved { what: WHAT, field });
    }
    String::from_utf8(bytes.to_vec()).map_err(|_| OnDiskError::BadString {
        what: WHAT,
        field,
        reason: "not UTF-8",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn largest_label_fits_the_area() {
        let devices: Vec<_> = (1..=u64::from(MAX_DEVICES))
            .map(|g| DeviceEntry {
                guid: g,
                size: 1 << 40,
                ashift: 12,
                ms_shift: 30,
                added_txg: g,
            })
            .collect();
        let h = LabelHeader {
            pool_name: "p".repeat(MAX_POOL_NAME),
            pool_guid: 1,
            device_guid: 1024,
            device_index: 1023,
            devices,
            ashift: 12,
            ms_shift: 30,
            state: PoolState::Exported,
            host: HostInfo {
                hostname: "h".repeat(MAX_HOSTNAME),
                host_id: 1,
                pid: 1,
            },
            creation_time: 0,
            config_txg: 0,
        };
        let b = h.encode().unwrap();
        assert!(b.len() <= LABEL_HEADER_AREA_SIZE);
        assert_eq!(LabelHeader::decode(&b).unwrap(), h);
        let mut too_many = h.clone();
        too_many.devices.push(DeviceEntry {
            guid: 5000,
            size: 1 << 40,
            ashift: 12,
            ms_shift: 30,
            added_txg: 0,
        });
        assert!(too_many.encode().is_err());
    }

    #[test]
    fn pool_names() {
        for ok in ["tank", "a", "Pool_1.x:y-z"] {
            validate_pool_name(ok).unwrap();
        }
        for bad in ["", "1tank", "ta/nk", "tank ", "t\0", "tänk", "-x"] {
            assert!(validate_pool_name(bad).is_err(), "{bad:?}");
        }
    }
}

//! The pool directory (object 1): configuration, volume table, properties, history, the
//! checkpointed uberblock slot, feature refcounts, and where each device's space maps live.
//!
//! Encoded as a versioned, length-checked tag/length/value stream; decoding never panics and
//! rejects truncated or oversized fields. Unknown tags are skipped (forward compatible).

use std::collections::BTreeMap;

use super::error::{PoolError, Result};

const MAGIC: u64 = u64::from_le_bytes(*b"RPDIR\0\0\x01");
/// Largest directory accepted on decode (bounds memory on corrupt input).
pub const MAX_DIRECTORY_BYTES: usize = 64 << 20;
/// History entries kept (oldest dropped first).
pub const MAX_HISTORY: usize = 1000;

const T_NEXT_OBJECT: u16 = 1;
const T_VOLUME: u16 = 2;
const T_PROP: u16 = 3;
const T_HISTORY: u16 = 4;
const T_DEVICE: u16 = 5;
const T_CHECKPOINT_UB: u16 = 6;
const T_FEATURE: u16 = 7;
const T_CREATED: u16 = 8;
const T_DEFERRED_FREES: u16 = 9;

/// One volume of the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeEntry {
    /// Data object number.
    pub object: u64,
    /// Block size in bytes.
    pub block_size: u32,
    /// Size in bytes.
    pub size: u64,
    /// Txg of creation.
    pub created_txg: u64,
}

/// Per-device metadata objects.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeviceObjects {
    /// Object holding the array of the device's metaslab space-map object numbers.
    pub ms_array: u64,
    /// Number of metaslabs.
    pub ms_count: u64,
    /// The device's checkpoint space map object (0 = none).
    pub checkpoint_sm: u64,
}

/// The decoded directory.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Directory {
    /// Next object number to hand out.
    pub next_object: u64,
    /// Creation time (UTC seconds).
    pub created: u64,
    /// Volumes by name.
    pub volumes: BTreeMap<String, VolumeEntry>,
    /// User properties.
    pub props: BTreeMap<String, String>,
    /// (UTC seconds, txg, text), oldest first.
    pub history: Vec<(u64, u64, String)>,
    /// Per device, by device index.
    pub devices: Vec<DeviceObjects>,
    /// The checkpointed uberblock (encoded), when a checkpoint exists.
    pub checkpoint_ub: Option<Vec<u8>>,
    /// Feature refcounts.
    pub features: BTreeMap<String, u64>,
    /// Object listing the frees deferred from sync passes >= 2 of the last committed txg
    /// (OpenZFS's deferred bpobj); 0 = not created yet.
    pub deferred_frees: u64,
}

fn put_tlv(out: &mut Vec<u8>, tag: u16, val: &[u8]) {
    out.extend_from_slice(&tag.to_le_bytes());
    let len = u32::try_from(val.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(val);
}

fn put_str(v: &mut Vec<u8>, s: &str) {
    let len = u32::try_from(s.len()).unwrap_or(u32::MAX);
    v.extend_from_slice(&len.to_le_bytes());
    v.extend_from_slice(s.as_bytes());
}

struct Rd<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Rd<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|e| *e <= self.b.len())
            .ok_or_else(|| corrupt("truncated field"))?;
        let s = &self.b[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u16(&mut self) -> Result<u16> {
        let s = self.take(2)?;
        Ok(u16::from_le_bytes([s[0], s[1]]))
    }
    fn u32(&mut self) -> Result<u32> {
        let s = self.take(4)?;
        Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    }
    fn u64(&mut self) -> Result<u64> {
        let s = self.take(8)?;
        let mut w = [0u8; 8];
        w.copy_from_slice(s);
        Ok(u64::from_le_bytes(w))
    }
    fn str(&mut self) -> Result<String> {
        let n = usize::try_from(self.u32()?).map_err(|_| corrupt("length"))?;
        let s = self.take(n)?;
        String::from_utf8(s.to_vec()).map_err(|_| corrupt("string is not UTF-8"))
    }
    fn done(&self) -> bool {
        self.pos >= self.b.len()
    }
}

fn corrupt(reason: &str) -> PoolError {
    PoolError::Corrupt {
        object: "pool directory".into(),
        offset: 0,
        reason: reason.into(),
    }
}

impl Directory {
    /// Encodes the directory.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(4096);
        out.extend_from_slice(&MAGIC.to_le_bytes());
        put_tlv(&mut out, T_NEXT_OBJECT, &self.next_object.to_le_bytes());
        put_tlv(&mut out, T_CREATED, &self.created.to_le_bytes());
        if self.deferred_frees != 0 {
            put_tlv(
                &mut out,
                T_DEFERRED_FREES,
                &self.deferred_frees.to_le_bytes(),
            );
        }
        for (name, v) in &self.volumes {
            let mut b = Vec::new();
            put_str(&mut b, name);
            b.extend_from_slice(&v.object.to_le_bytes());
            b.extend_from_slice(&v.block_size.to_le_bytes());
            b.extend_from_slice(&v.size.to_le_bytes());
            b.extend_from_slice(&v.created_txg.to_le_bytes());
            put_tlv(&mut out, T_VOLUME, &b);
        }
        for (k, v) in &self.props {
            let mut b = Vec::new();
            put_str(&mut b, k);
            put_str(&mut b, v);
            put_tlv(&mut out, T_PROP, &b);
        }
        for (time, txg, text) in &self.history {
            let mut b = Vec::new();
            b.extend_from_slice(&time.to_le_bytes());
            b.extend_from_slice(&txg.to_le_bytes());
            put_str(&mut b, text);
            put_tlv(&mut out, T_HISTORY, &b);
        }
        for d in &self.devices {
            let mut b = Vec::new();
            b.extend_from_slice(&d.ms_array.to_le_bytes());
            b.extend_from_slice(&d.ms_count.to_le_bytes());
            b.extend_from_slice(&d.checkpoint_sm.to_le_bytes());
            put_tlv(&mut out, T_DEVICE, &b);
        }
        if let Some(ub) = &self.checkpoint_ub {
            put_tlv(&mut out, T_CHECKPOINT_UB, ub);
        }
        for (k, v) in &self.features {
            let mut b = Vec::new();
            put_str(&mut b, k);
            b.extend_from_slice(&v.to_le_bytes());
            put_tlv(&mut out, T_FEATURE, &b);
        }
        out
    }

    /// Decodes a directory (exactly the encoded bytes, no padding).
    pub fn decode(buf: &[u8]) -> Result<Directory> {
        if buf.len() > MAX_DIRECTORY_BYTES {
            return Err(corrupt("directory too large"));
        }
        let mut r = Rd { b: buf, pos: 0 };
        if r.u64()? != MAGIC {
            return Err(corrupt("bad magic"));
        }
        let mut d = Directory::default();
        while !r.done() {
            let tag = r.u16()?;
            let len = usize::try_from(r.u32()?).map_err(|_| corrupt("length"))?;
            let val = r.take(len)?;
            let mut v = Rd { b: val, pos: 0 };
            match tag {
                T_NEXT_OBJECT => d.next_object = v.u64()?,
                T_CREATED => d.created = v.u64()?,
                T_DEFERRED_FREES => d.deferred_frees = v.u64()?,
                T_VOLUME => {
                    let name = v.str()?;
                    let e = VolumeEntry {
                        object: v.u64()?,
                        block_size: v.u32()?,
                        size: v.u64()?,
                        created_txg: v.u64()?,
                    };
                    d.volumes.insert(name, e);
                }
                T_PROP => {
                    let k = v.str()?;
                    let val = v.str()?;
                    d.props.insert(k, val);
                }
                T_HISTORY => {
                    let time = v.u64()?;
                    let txg = v.u64()?;
                    let text = v.str()?;
                    d.history.push((time, txg, text));
                }
                T_DEVICE => d.devices.push(DeviceObjects {
                    ms_array: v.u64()?,
                    ms_count: v.u64()?,
                    checkpoint_sm: v.u64()?,
                }),
                T_CHECKPOINT_UB => d.checkpoint_ub = Some(val.to_vec()),
                T_FEATURE => {
                    let k = v.str()?;
                    let n = v.u64()?;
                    d.features.insert(k, n);
                }
                _ => {}
            }
        }
        Ok(d)
    }

    /// Appends a history record, dropping the oldest beyond [`MAX_HISTORY`].
    pub fn log(&mut self, time: u64, txg: u64, text: impl Into<String>) {
        self.history.push((time, txg, text.into()));
        if self.history.len() > MAX_HISTORY {
            let drop = self.history.len() - MAX_HISTORY;
            self.history.drain(..drop);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_truncation() {
        let mut d = Directory {
            next_object: 42,
            created: 7,
            deferred_frees: 11,
            ..Default::default()
        };
        d.volumes.insert(
            "vm1".into(),
            VolumeEntry {
                object: 9,
                block_size: 4096,
                size: 1 << 30,
                created_txg: 5,
            },
        );
        d.props.insert("comment".into(), "hi".into());
        d.log(1, 2, "create");
        d.devices.push(DeviceObjects {
            ms_array: 3,
            ms_count: 4,
            checkpoint_sm: 0,
        });
        d.checkpoint_ub = Some(vec![1, 2, 3]);
        d.features.insert("checkpoint".into(), 1);
        let b = d.encode();
        assert_eq!(Directory::decode(&b).unwrap(), d);
        for cut in 0..b.len() {
            let _ = Directory::decode(&b[..cut]);
        }
        assert!(Directory::decode(&b[..b.len() - 1]).is_err());
    }
}

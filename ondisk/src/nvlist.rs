//! A small typed key-value list ("nvlist"), for the pool directory, properties, the volume table,
//! history records and the checkpointed uberblock.
//!
//! Keys are unique UTF-8 strings (1..=255 bytes) kept in insertion order. Values are u64, i64,
//! bool, bytes, strings, u64 arrays or nested lists (at most [`MAX_DEPTH`] deep).
//!
//! # Encoding (little endian, no alignment)
//!
//! Top level:
//!
//! | offset | size | field                                            |
//! |--------|------|--------------------------------------------------|
//! | 0      | 4    | magic "RPNV"                                     |
//! | 4      | 2    | version ([`NVLIST_VERSION`])                     |
//! | 6      | 2    | reserved, 0                                      |
//! | 8      | 8    | length of the list body that follows             |
//! | 16     | …    | list body                                        |
//!
//! List body: u32 pair count, then the pairs. Pair:
//!
//! | size | field                                                        |
//! |------|--------------------------------------------------------------|
//! | 1    | value type: 1 u64, 2 i64, 3 bool, 4 bytes, 5 string, 6 list, 7 u64 array |
//! | 1    | key length (1..=255)                                         |
//! | 2    | reserved, 0                                                  |
//! | 4    | value length in bytes                                        |
//! | k    | key (UTF-8)                                                  |
//! | v    | value: u64/i64 8 bytes, bool 1 byte (0/1), bytes/string raw, list a list body, u64 array 8·n bytes |
//!
//! Decoding checks every length against the bytes actually present before allocating, rejects
//! duplicate keys, unknown types, bad UTF-8, trailing bytes inside a value and nesting deeper
//! than [`MAX_DEPTH`].

use std::collections::HashSet;

use crate::bytes::{len_u64, PutLe, Reader};
use crate::error::{OnDiskError, Result};

/// Magic of an encoded nvlist.
pub const NVLIST_MAGIC: u32 = u32::from_le_bytes(*b"RPNV");
/// Current nvlist version.
pub const NVLIST_VERSION: u16 = 1;
/// Deepest nesting of lists.
pub const MAX_DEPTH: usize = 16;
/// Longest key.
pub const MAX_KEY_LEN: usize = 255;

const WHAT: &str = "nvlist";
const PAIR_HEADER: usize = 8;

/// A value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NvValue {
    /// Unsigned 64-bit integer.
    U64(u64),
    /// Signed 64-bit integer.
    I64(i64),
    /// Boolean.
    Bool(bool),
    /// Opaque bytes.
    Bytes(Vec<u8>),
    /// UTF-8 string.
    Str(String),
    /// Nested list.
    List(NvList),
    /// Array of u64.
    U64Array(Vec<u64>),
}

impl NvValue {
    fn tag(&self) -> u8 {
        match self {
            NvValue::U64(_) => 1,
            NvValue::I64(_) => 2,
            NvValue::Bool(_) => 3,
            NvValue::Bytes(_) => 4,
            NvValue::Str(_) => 5,
            NvValue::List(_) => 6,
            NvValue::U64Array(_) => 7,
        }
    }

    /// Name of the value's type (for errors).
    pub fn type_name(&self) -> &'static str {
        match self {
            NvValue::U64(_) => "u64",
            NvValue::I64(_) => "i64",
            NvValue::Bool(_) => "bool",
            NvValue::Bytes(_) => "bytes",
            NvValue::Str(_) => "string",
            NvValue::List(_) => "list",
            NvValue::U64Array(_) => "u64 array",
        }
    }

    fn encoded_len(&self) -> usize {
        match self {
            NvValue::U64(_) | NvValue::I64(_) => 8,
            NvValue::Bool(_) => 1,
            NvValue::Bytes(b) => b.len(),
            NvValue::Str(s) => s.len(),
            NvValue::List(l) => l.body_len(),
            NvValue::U64Array(a) => 8 * a.len(),
        }
    }
}

/// An ordered list of unique keys with typed values.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NvList {
    pairs: Vec<(String, NvValue)>,
}

fn check_key(key: &str) -> Result<()> {
    if key.is_empty() {
        return Err(OnDiskError::BadString {
            what: WHAT,
            field: "key",
            reason: "empty",
        });
    }
    if key.len() > MAX_KEY_LEN {
        return Err(OnDiskError::TooLong {
            what: WHAT,
            field: "key",
            len: len_u64(key.len()),
            max: len_u64(MAX_KEY_LEN),
        });
    }
    Ok(())
}

macro_rules! getter {
    ($name:ident, $opt:ident, $variant:ident, $ty:ty, $tyname:literal, |$v:ident| $conv:expr) => {
        /// The value of `key`, which must exist with this type.
        pub fn $name(&self, key: &str) -> Result<$ty> {
            self.$opt(key)?
                .ok_or_else(|| OnDiskError::MissingKey(key.to_string()))
        }

        /// The value of `key` if present; an error if present with another type.
        pub fn $opt(&self, key: &str) -> Result<Option<$ty>> {
            match self.get(key) {
                None => Ok(None),
                Some(NvValue::$variant($v)) => Ok(Some($conv)),
                Some(other) => Err(OnDiskError::WrongType {
                    key: key.to_string(),
                    expected: $tyname,
                    found: other.type_name(),
                }),
            }
        }
    };
}

impl NvList {
    /// An empty list.
    pub fn new() -> NvList {
        NvList::default()
    }

    /// Number of pairs.
    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    /// True if there is no pair.
    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// Pairs in insertion order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &NvValue)> {
        self.pairs.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&NvValue> {
        self.pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// True if `key` exists.
    pub fn contains(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// Sets `key` (replacing an existing value in place); returns the old value.
    pub fn insert(&mut self, key: impl Into<String>, value: NvValue) -> Result<Option<NvValue>> {
        let key = key.into();
        check_key(&key)?;
        if let Some((_, v)) = self.pairs.iter_mut().find(|(k, _)| *k == key) {
            return Ok(Some(std::mem::replace(v, value)));
        }
        self.pairs.push((key, value));
        Ok(None)
    }

    /// Removes `key`, returning its value.
    pub fn remove(&mut self, key: &str) -> Option<NvValue> {
        let i = self.pairs.iter().position(|(k, _)| k == key)?;
        Some(self.pairs.remove(i).1)
    }

    /// Builder-style insert of a u64.
    pub fn with_u64(mut self, key: &str, v: u64) -> Result<NvList> {
        self.insert(key, NvValue::U64(v))?;
        Ok(self)
    }

    /// Builder-style insert of a string.
    pub fn with_str(mut self, key: &str, v: &str) -> Result<NvList> {
        self.insert(key, NvValue::Str(v.to_string()))?;
        Ok(self)
    }

    getter!(u64, opt_u64, U64, u64, "u64", |v| *v);
    getter!(i64, opt_i64, I64, i64, "i64", |v| *v);
    getter!(bool, opt_bool, Bool, bool, "bool", |v| *v);
    getter!(bytes, opt_bytes, Bytes, &[u8], "bytes", |v| v.as_slice());
    getter!(str, opt_str, Str, &str, "string", |v| v.as_str());
    getter!(list, opt_list, List, &NvList, "list", |v| v);
    getter!(
        u64_array,
        opt_u64_array,
        U64Array,
        &[u64],
        "u64 array",
        |v| v.as_slice()
    );

    fn body_len(&self) -> usize {
        4 + self
            .pairs
            .iter()
            .map(|(k, v)| PAIR_HEADER + k.len() + v.encoded_len())
            .sum::<usize>()
    }

    /// Encoded length in bytes.
    pub fn encoded_len(&self) -> usize {
        16 + self.body_len()
    }

    fn check(&self, depth: usize) -> Result<()> {
        if depth > MAX_DEPTH {
            return Err(OnDiskError::TooLong {
                what: WHAT,
                field: "nesting",
                len: len_u64(depth),
                max: len_u64(MAX_DEPTH),
            });
        }
        u32::try_from(self.pairs.len()).map_err(|_| OnDiskError::TooLong {
            what: WHAT,
            field: "pairs",
            len: len_u64(self.pairs.len()),
            max: u64::from(u32::MAX),
        })?;
        if has_duplicate(self.pairs.iter().map(|(k, _)| k.as_str())) {
            return Err(dup_key());
        }
        for (k, v) in &self.pairs {
            check_key(k)?;
            if u32::try_from(v.encoded_len()).is_err() {
                return Err(OnDiskError::TooLong {
                    what: WHAT,
                    field: "value",
                    len: len_u64(v.encoded_len()),
                    max: u64::from(u32::MAX),
                });
            }
            if let NvValue::List(l) = v {
                l.check(depth + 1)?;
            }
        }
        Ok(())
    }

    fn encode_body(&self, out: &mut Vec<u8>) {
        // Lengths were checked by `check`.
        out.put_u32(u32::try_from(self.pairs.len()).unwrap_or(u32::MAX));
        for (k, v) in &self.pairs {
            out.put_u8(v.tag());
            out.put_u8(u8::try_from(k.len()).unwrap_or(u8::MAX));
            out.put_u16(0);
            out.put_u32(u32::try_from(v.encoded_len()).unwrap_or(u32::MAX));
            out.extend_from_slice(k.as_bytes());
            match v {
                NvValue::U64(x) => out.put_u64(*x),
                NvValue::I64(x) => out.put_i64(*x),
                NvValue::Bool(b) => out.put_u8(u8::from(*b)),
                NvValue::Bytes(b) => out.extend_from_slice(b),
                NvValue::Str(s) => out.extend_from_slice(s.as_bytes()),
                NvValue::List(l) => l.encode_body(out),
                NvValue::U64Array(a) => a.iter().for_each(|x| out.put_u64(*x)),
            }
        }
    }

    /// Encodes the list.
    pub fn encode(&self) -> Result<Vec<u8>> {
        self.check(1)?;
        let mut out = Vec::with_capacity(self.encoded_len());
        out.put_u32(NVLIST_MAGIC);
        out.put_u16(NVLIST_VERSION);
        out.put_u16(0);
        out.put_u64(len_u64(self.body_len()));
        self.encode_body(&mut out);
        Ok(out)
    }

    /// Decodes a list from the start of `buf` (bytes after the encoded list are ignored, so a
    /// zero-padded block decodes).
    pub fn decode(buf: &[u8]) -> Result<NvList> {
        Ok(NvList::decode_prefix(buf)?.0)
    }

    /// Decodes the list at the start of `buf` and returns it with the number of bytes it took,
    /// for logs of concatenated lists (e.g. history records).
    pub fn decode_prefix(buf: &[u8]) -> Result<(NvList, usize)> {
        let mut r = Reader::new(buf, WHAT);
        let magic = r.u32()?;
        if magic != NVLIST_MAGIC {
            return Err(OnDiskError::BadMagic {
                what: WHAT,
                found: u64::from(magic),
            });
        }
        let version = r.u16()?;
        if version != NVLIST_VERSION {
            return Err(OnDiskError::UnsupportedVersion {
                what: WHAT,
                version: u64::from(version),
            });
        }
        crate::bytes::reserved_zero(u64::from(r.u16()?), WHAT, "reserved")?;
        let len = r.u64()?;
        let len = usize::try_from(len)
            .ok()
            .filter(|l| *l <= r.remaining())
            .ok_or(OnDiskError::BadLength {
                what: WHAT,
                len: r.remaining(),
                reason: "body length beyond the buffer",
            })?;
        let body = r.bytes(len)?;
        Ok((decode_body(body, 1)?, r.pos()))
    }
}

fn decode_body(body: &[u8], depth: usize) -> Result<NvList> {
    if depth > MAX_DEPTH {
        return Err(OnDiskError::TooLong {
            what: WHAT,
            field: "nesting",
            len: len_u64(depth),
            max: len_u64(MAX_DEPTH),
        });
    }
    let mut r = Reader::new(body, WHAT);
    let count = usize::try_from(r.u32()?).unwrap_or(usize::MAX);
    // Every pair takes at least a header and a one-byte key: bound the allocation by that.
    if count > r.remaining() / (PAIR_HEADER + 1) {
        return Err(OnDiskError::TooLong {
            what: WHAT,
            field: "pair count",
            len: len_u64(count),
            max: len_u64(r.remaining() / (PAIR_HEADER + 1)),
        });
    }
    let mut pairs = Vec::with_capacity(count);
    for _ in 0..count {
        let tag = r.u8()?;
        let key_len = usize::from(r.u8()?);
        crate::bytes::reserved_zero(u64::from(r.u16()?), WHAT, "pair reserved")?;
        let value_len = usize::try_from(r.u32()?).unwrap_or(usize::MAX);
        if key_len == 0 {
            return Err(OnDiskError::BadString {
                what: WHAT,
                field: "key",
                reason: "empty",
            });
        }
        let key = std::str::from_utf8(r.bytes(key_len)?).map_err(|_| OnDiskError::BadString {
            what: WHAT,
            field: "key",
            reason: "not UTF-8",
        })?;
        let raw = r.bytes(value_len)?;
        let fixed = |n: usize| -> Result<()> {
            if value_len != n {
                return Err(OnDiskError::BadLength {
                    what: WHAT,
                    len: value_len,
                    reason: "wrong value length for its type",
                });
            }
            Ok(())
        };
        let value = match tag {
            1 => {
                fixed(8)?;
                NvValue::U64(Reader::new(raw, WHAT).u64()?)
            }
            2 => {
                fixed(8)?;
                NvValue::I64(Reader::new(raw, WHAT).i64()?)
            }
            3 => {
                fixed(1)?;
                match raw.first() {
                    Some(0) => NvValue::Bool(false),
                    Some(1) => NvValue::Bool(true),
                    _ => {
                        return Err(OnDiskError::UnknownEnum {
                            what: WHAT,
                            field: "bool",
                            value: raw.first().map_or(0, |b| u64::from(*b)),
                        })
                    }
                }
            }
            4 => NvValue::Bytes(raw.to_vec()),
            5 => NvValue::Str(String::from_utf8(raw.to_vec()).map_err(|_| {
                OnDiskError::BadString {
                    what: WHAT,
                    field: "value",
                    reason: "not UTF-8",
                }
            })?),
            6 => NvValue::List(decode_body(raw, depth + 1)?),
            7 => {
                if value_len % 8 != 0 {
                    return Err(OnDiskError::BadLength {
                        what: WHAT,
                        len: value_len,
                        reason: "u64 array not a multiple of 8",
                    });
                }
                let mut a = Vec::with_capacity(value_len / 8);
                let mut ar = Reader::new(raw, WHAT);
                for _ in 0..value_len / 8 {
                    a.push(ar.u64()?);
                }
                NvValue::U64Array(a)
            }
            other => {
                return Err(OnDiskError::UnknownEnum {
                    what: WHAT,
                    field: "value type",
                    value: u64::from(other),
                })
            }
        };
        pairs.push((key.to_string(), value));
    }
    if r.remaining() != 0 {
        return Err(OnDiskError::BadLength {
            what: WHAT,
            len: body.len(),
            reason: "trailing bytes after the last pair",
        });
    }
    if has_duplicate(pairs.iter().map(|(k, _)| k.as_str())) {
        return Err(dup_key());
    }
    Ok(NvList { pairs })
}

fn dup_key() -> OnDiskError {
    OnDiskError::BadString {
        what: WHAT,
        field: "key",
        reason: "duplicate key",
    }
}

/// Whether `keys` repeats a key: pairwise for the small lists the pool writes (no allocation),
/// hashed for larger ones (whose size the bytes present already bound).
fn has_duplicate<'a>(keys: impl ExactSizeIterator<Item = &'a str> + Clone) -> bool {
    const SMALL: usize = 16;
    if keys.len() <= SMALL {
        let mut rest = keys;
        while let Some(k) = rest.next() {
            if rest.clone().any(|o| o == k) {
                return true;
            }
        }
        return false;
    }
    let mut seen = HashSet::with_capacity(keys.len());
    keys.into_iter().any(|k| !seen.insert(k))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_small_and_large() {
        assert!(!has_duplicate(["a", "b", "c"].into_iter()));
        assert!(has_duplicate(["a", "b", "a"].into_iter()));
        let many: Vec<String> = (0..100).map(|i| format!("k{i}")).collect();
        assert!(!has_duplicate(many.iter().map(String::as_str)));
        let mut dup = many.clone();
        dup.push("k42".into());
        assert!(has_duplicate(dup.iter().map(String::as_str)));
        // A large encoded list with a repeated key is refused on decode.
        let mut l = NvList::new();
        for k in &many {
            l.insert(k.as_str(), NvValue::U64(1)).unwrap();
        }
        let mut b = l.encode().unwrap();
        let pos = b.windows(3).position(|w| w == b"k99").unwrap();
        b[pos + 2] = b'8'; // "k99" -> "k98", same length
        assert!(NvList::decode(&b).is_err());
    }
}

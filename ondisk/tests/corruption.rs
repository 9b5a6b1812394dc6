//! Targeted corruption: every single-bit flip of a sealed structure is a checksum error, never a
//! different value; plus the hand-made hostile inputs that bound allocations and recursion.

mod common;

use common::*;
use proptest::prelude::*;
use ringpool_ondisk::label::LABEL_MAGIC;
use ringpool_ondisk::nvlist::{MAX_DEPTH, NVLIST_MAGIC};
use ringpool_ondisk::{LabelHeader, NvList, NvValue, OnDiskError, Uberblock};

fn flip_every_bit(bytes: &[u8], decode: impl Fn(&[u8]) -> Result<(), OnDiskError>) {
    for byte in 0..bytes.len() {
        for bit in 0..8 {
            let mut b = bytes.to_vec();
            b[byte] ^= 1 << bit;
            match decode(&b) {
                Err(e) if e.is_checksum_error() => {}
                other => panic!(
                    "flip of byte {byte} bit {bit}: expected a checksum error, got {other:?}"
                ),
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn uberblock_bit_flips(ub in uberblock()) {
        flip_every_bit(&ub.to_bytes().unwrap(), |b| Uberblock::decode(b).map(|_| ()));
    }

    #[test]
    fn label_bit_flips(h in label()) {
        flip_every_bit(&h.encode().unwrap(), |b| LabelHeader::decode(b).map(|_| ()));
    }
}

#[test]
fn empty_slot_and_area() {
    assert!(matches!(
        Uberblock::decode(&[0u8; 1024]),
        Err(OnDiskError::Empty { .. })
    ));
    assert!(matches!(
        LabelHeader::decode(&[0u8; 4096]),
        Err(OnDiskError::Empty { .. })
    ));
    assert!(matches!(
        NvList::decode(&[0u8; 64]),
        Err(OnDiskError::BadMagic { .. })
    ));
}

#[test]
fn label_with_valid_seals_but_bad_fields() {
    let h = sample_label();
    // Re-seal after tampering, so only field validation can catch it.
    let tamper = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut b = h.encode().unwrap();
        f(&mut b);
        reseal(&mut b);
        LabelHeader::decode(&b)
    };
    assert!(matches!(
        tamper(&|b| b[0] ^= 1),
        Err(OnDiskError::BadMagic { .. })
    ));
    assert!(matches!(
        tamper(&|b| b[8] = 9),
        Err(OnDiskError::UnsupportedVersion { .. })
    ));
    assert!(matches!(
        tamper(&|b| b[42] = 7),
        Err(OnDiskError::UnknownEnum { .. })
    ));
    assert!(tamper(&|b| b[40] = 30).is_err(), "ashift out of range");
    assert!(
        tamper(&|b| b[32] = 200).is_err(),
        "device index beyond the list"
    );
    assert!(tamper(&|b| b[88] = b'/').is_err(), "bad pool name");
    assert!(tamper(&|b| b[12] = 0xF0).is_err(), "length beyond the area");
    let h2 = LabelHeader::decode(&h.encode().unwrap()).unwrap();
    assert_eq!(h2, h);
    assert_eq!(
        u64::from_le_bytes(h.encode().unwrap()[..8].try_into().unwrap()),
        LABEL_MAGIC
    );
}

fn reseal(b: &mut [u8]) {
    let fixed = crc32c::crc32c(&b[..80]);
    b[80..88].copy_from_slice(&u64::from(fixed).to_le_bytes());
    let n = b.len();
    let all = crc32c::crc32c(&b[..n - 8]);
    b[n - 8..].copy_from_slice(&u64::from(all).to_le_bytes());
}

fn sample_label() -> LabelHeader {
    use ringpool_ondisk::label::{DeviceEntry, HostInfo, PoolState};
    let devices = vec![
        DeviceEntry {
            guid: 11,
            size: 1 << 30,
            ashift: 12,
            ms_shift: 24,
            added_txg: 4,
        },
        DeviceEntry {
            guid: 22,
            size: 1 << 31,
            ashift: 9,
            ms_shift: 25,
            added_txg: 90,
        },
    ];
    LabelHeader {
        pool_name: "tank".into(),
        pool_guid: 0xfeed,
        device_guid: 22,
        device_index: 1,
        devices,
        ashift: 9,
        ms_shift: 25,
        state: PoolState::Active,
        host: HostInfo {
            hostname: "box".into(),
            host_id: 7,
            pid: 1234,
        },
        creation_time: 1_700_000_000,
        config_txg: 90,
    }
}

#[test]
fn label_validation_on_encode() {
    let mut h = sample_label();
    h.devices[0].guid = 22;
    assert!(h.encode().is_err(), "duplicate GUID");
    let mut h = sample_label();
    h.device_guid = 11;
    assert!(h.encode().is_err(), "device GUID differs from its entry");
    let mut h = sample_label();
    h.pool_name = "9tank".into();
    assert!(h.encode().is_err());
    let mut h = sample_label();
    h.pool_name = "a".repeat(256);
    assert!(h.encode().is_err());
    let mut h = sample_label();
    h.devices.clear();
    assert!(h.encode().is_err());
    let mut h = sample_label();
    h.devices[0].size = 1 << 20;
    assert!(h.encode().is_err());
    assert_eq!(sample_label().guid_sum(), 33);
}

/// Hand-builds an nvlist body with an arbitrary pair count and nothing behind it.
fn nv_with_count(count: u32) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend(NVLIST_MAGIC.to_le_bytes());
    b.extend(1u16.to_le_bytes());
    b.extend(0u16.to_le_bytes());
    b.extend(4u64.to_le_bytes());
    b.extend(count.to_le_bytes());
    b
}

#[test]
fn nvlist_hostile_counts_and_depth() {
    // A huge count with no bytes behind it fails before allocating.
    assert!(matches!(
        NvList::decode(&nv_with_count(u32::MAX)),
        Err(OnDiskError::TooLong { .. })
    ));
    assert_eq!(NvList::decode(&nv_with_count(0)).unwrap(), NvList::new());
    // Nesting beyond MAX_DEPTH is refused on encode, and a crafted deep encoding on decode.
    let mut l = NvList::new();
    for _ in 0..MAX_DEPTH {
        let mut outer = NvList::new();
        outer.insert("x", NvValue::List(l)).unwrap();
        l = outer;
    }
    assert!(l.encode().is_err());
    let mut inner = NvList::new();
    for _ in 0..MAX_DEPTH - 1 {
        let mut outer = NvList::new();
        outer.insert("x", NvValue::List(inner)).unwrap();
        inner = outer;
    }
    let ok = inner.encode().unwrap();
    assert_eq!(NvList::decode(&ok).unwrap(), inner);
    // Crafted: 10_000 nested single-pair lists decode to an error, not a stack overflow.
    let depth = 10_000usize;
    let mut body: Vec<u8> = 0u32.to_le_bytes().to_vec();
    for _ in 0..depth {
        let mut outer = Vec::new();
        outer.extend(1u32.to_le_bytes());
        outer.push(6);
        outer.push(1);
        outer.extend(0u16.to_le_bytes());
        outer.extend(u32::try_from(body.len()).unwrap().to_le_bytes());
        outer.push(b'x');
        outer.extend(&body);
        body = outer;
    }
    let mut b = Vec::new();
    b.extend(NVLIST_MAGIC.to_le_bytes());
    b.extend(1u16.to_le_bytes());
    b.extend(0u16.to_le_bytes());
    b.extend(u64::try_from(body.len()).unwrap().to_le_bytes());
    b.extend(body);
    assert!(matches!(
        NvList::decode(&b),
        Err(OnDiskError::TooLong { .. })
    ));
}

#[test]
fn nvlist_duplicate_key_and_getters() {
    let l = NvList::new()
        .with_u64("a", 1)
        .unwrap()
        .with_str("name", "tank")
        .unwrap();
    // Two pairs with the same key (the nvlist has no checksum of its own: the key check must
    // catch it).
    let mut dup = nv_with_count(2);
    let pair = |k: &[u8]| {
        let mut p = vec![1u8, u8::try_from(k.len()).unwrap(), 0, 0];
        p.extend(8u32.to_le_bytes());
        p.extend(k);
        p.extend(7u64.to_le_bytes());
        p
    };
    let body_len = 4 + 2 * pair(b"k").len();
    dup[8..16].copy_from_slice(&u64::try_from(body_len).unwrap().to_le_bytes());
    dup.extend(pair(b"k"));
    dup.extend(pair(b"k"));
    assert!(NvList::decode(&dup).is_err());
    // Getters.
    assert_eq!(l.u64("a").unwrap(), 1);
    assert_eq!(l.str("name").unwrap(), "tank");
    assert!(matches!(l.u64("name"), Err(OnDiskError::WrongType { .. })));
    assert!(matches!(l.u64("zz"), Err(OnDiskError::MissingKey(_))));
    assert_eq!(l.opt_u64("zz").unwrap(), None);
    let mut l2 = l.clone();
    assert_eq!(
        l2.insert("a", NvValue::Bool(true)).unwrap(),
        Some(NvValue::U64(1))
    );
    assert!(l2.bool("a").unwrap());
    assert_eq!(l2.remove("a"), Some(NvValue::Bool(true)));
    assert!(!l2.contains("a"));
    assert!(l2.insert("", NvValue::U64(0)).is_err());
    assert!(l2.insert("k".repeat(256), NvValue::U64(0)).is_err());
}

//! Proptest strategies shared by the ondisk test binaries.
#![allow(dead_code)]

use proptest::collection::{btree_set, vec};
use proptest::prelude::*;
use ringpool_ondisk::label::{DeviceEntry, HostInfo, LabelHeader, PoolState};
use ringpool_ondisk::layout::{MAX_ASHIFT, MIN_ASHIFT, MIN_DEVICE_SIZE, MIN_MS_SHIFT};
use ringpool_ondisk::object::{
    capacity_blocks, Bonus, ObjectFlags, ObjectRecord, ObjectType, MAX_ROOTS,
};
use ringpool_ondisk::space_map::{
    SmAction, SmDebug, SpaceMapEntry, SpaceMapHeader, SM2_DEVICE_MAX, SM2_RUN_MAX,
};
use ringpool_ondisk::{
    BlockPointer, Checksum, ChecksumAlgo, DataPtr, Dva, HolePtr, NvList, NvValue, Uberblock,
};

pub fn object_type() -> impl Strategy<Value = ObjectType> {
    (1u8..=8).prop_map(|t| ObjectType::from_tag(t).unwrap())
}

pub fn any_object_type() -> impl Strategy<Value = ObjectType> {
    (0u8..=8).prop_map(|t| ObjectType::from_tag(t).unwrap())
}

pub fn checksum() -> impl Strategy<Value = Checksum> {
    any::<u32>().prop_map(|v| Checksum {
        algo: ChecksumAlgo::Crc32c,
        value: u128::from(v),
    })
}

pub fn data_ptr(
    kind: ObjectType,
    level: u8,
    max_birth: u64,
) -> impl Strategy<Value = BlockPointer> {
    (
        0u32..1024,
        0u64..(1 << 50),
        1u32..=32768,
        1u32..=(16 << 20),
        1..=max_birth,
        any::<u64>(),
        checksum(),
    )
        .prop_map(
            move |(device, off, asize, lsize, birth_txg, fill, checksum)| {
                BlockPointer::Data(DataPtr {
                    dva: Dva {
                        device,
                        offset: off * 512,
                        asize: asize * 512,
                    },
                    lsize,
                    kind,
                    level,
                    birth_txg,
                    fill,
                    checksum,
                })
            },
        )
}

pub fn hole_ptr(max_birth: u64) -> impl Strategy<Value = BlockPointer> {
    (0..=max_birth, any_object_type(), 0u8..8, 0u32..=(16 << 20)).prop_map(
        |(birth_txg, kind, level, lsize)| {
            BlockPointer::Hole(HolePtr {
                birth_txg,
                kind,
                level,
                lsize,
            })
        },
    )
}

pub fn blkptr() -> impl Strategy<Value = BlockPointer> {
    prop_oneof![
        hole_ptr(u64::MAX),
        (object_type(), 0u8..8).prop_flat_map(|(k, l)| data_ptr(k, l, u64::MAX)),
    ]
}

pub fn uberblock() -> impl Strategy<Value = Uberblock> {
    (1u64..u64::MAX).prop_flat_map(|txg| {
        (
            Just(txg),
            any::<u64>(),
            any::<u64>(),
            prop_oneof![Just(0), 0..=txg, Just(txg)],
            prop_oneof![hole_ptr(txg), data_ptr(ObjectType::ObjectSet, 3, txg)],
            1u64..,
        )
            .prop_map(
                |(txg, guid_sum, timestamp, checkpoint_txg, root, pool_guid)| Uberblock {
                    txg,
                    guid_sum,
                    timestamp,
                    checkpoint_txg,
                    root,
                    pool_guid,
                },
            )
    })
}

pub fn device_entry(guid: u64) -> impl Strategy<Value = DeviceEntry> {
    (
        MIN_DEVICE_SIZE..(1u64 << 52),
        MIN_ASHIFT..=MAX_ASHIFT,
        MIN_MS_SHIFT..=40u8,
        any::<u64>(),
    )
        .prop_map(move |(size, ashift, ms_shift, added_txg)| DeviceEntry {
            guid,
            size,
            ashift,
            ms_shift,
            added_txg,
        })
}

pub fn label() -> impl Strategy<Value = LabelHeader> {
    btree_set(1u64.., 1..24)
        .prop_flat_map(|guids| {
            let entries: Vec<_> = guids.into_iter().map(device_entry).collect();
            let n = entries.len();
            (entries, 0..n)
        })
        .prop_flat_map(|(devices, idx)| {
            (
                Just(devices),
                Just(idx),
                "[a-zA-Z][a-zA-Z0-9_.:-]{0,40}",
                "[^\0]{0,40}",
                1u64..,
                prop_oneof![
                    Just(PoolState::Active),
                    Just(PoolState::Exported),
                    Just(PoolState::Destroyed)
                ],
                any::<u64>(),
                any::<u32>(),
                any::<u64>(),
                any::<u64>(),
            )
        })
        .prop_map(
            |(
                devices,
                idx,
                pool_name,
                hostname,
                pool_guid,
                state,
                host_id,
                pid,
                creation_time,
                config_txg,
            )| {
                let me = devices[idx];
                LabelHeader {
                    pool_name,
                    pool_guid,
                    device_guid: me.guid,
                    device_index: u32::try_from(idx).unwrap(),
                    devices,
                    ashift: me.ashift,
                    ms_shift: me.ms_shift,
                    state,
                    host: HostInfo {
                        hostname,
                        host_id,
                        pid,
                    },
                    creation_time,
                    config_txg,
                }
            },
        )
}

pub fn space_map_header() -> impl Strategy<Value = SpaceMapHeader> {
    (
        any::<u64>(),
        any::<i64>(),
        proptest::array::uniform32(any::<u64>()),
    )
        .prop_map(|(len, alloc, histogram)| SpaceMapHeader {
            length: len & !7,
            alloc,
            histogram,
        })
}

pub fn bonus() -> impl Strategy<Value = Bonus> {
    prop_oneof![
        Just(Bonus::None),
        space_map_header().prop_map(|h| Bonus::SpaceMap(Box::new(h))),
        vec(any::<u8>(), 0..=272).prop_map(Bonus::Raw),
    ]
}

pub fn object_record() -> impl Strategy<Value = ObjectRecord> {
    (
        object_type(),
        1u8..=8,
        1u8..=3,
        9u32..=24,
        9u32..=24,
        0u8..4,
    )
        .prop_flat_map(|(kind, levels, nroots, dbs, ibs, flags)| {
            let ibs = 1u32 << ibs;
            let cap = capacity_blocks(levels, nroots, ibs);
            let root = prop_oneof![hole_ptr(u64::MAX), data_ptr(kind, levels - 1, u64::MAX)];
            (
                Just((kind, levels, nroots, 1u32 << dbs, ibs, flags)),
                0..cap,
                any::<u64>(),
                any::<u64>(),
                any::<u64>(),
                vec(root, usize::from(nroots)),
                bonus(),
            )
        })
        .prop_map(
            |(
                (kind, levels, nroots, dbs, ibs, flags),
                max_block_id,
                length,
                created_txg,
                used_bytes,
                rs,
                bonus,
            )| {
                let mut roots = [BlockPointer::EMPTY; MAX_ROOTS];
                roots[..rs.len()].copy_from_slice(&rs);
                ObjectRecord {
                    kind,
                    levels,
                    nroots,
                    flags: ObjectFlags::from_bits(flags).unwrap(),
                    checksum: ChecksumAlgo::Crc32c,
                    data_block_size: dbs,
                    indirect_block_size: ibs,
                    max_block_id,
                    length,
                    created_txg,
                    used_bytes,
                    roots,
                    bonus,
                }
            },
        )
}

pub fn sm_action() -> impl Strategy<Value = SmAction> {
    prop_oneof![Just(SmAction::Alloc), Just(SmAction::Free)]
}

/// Entries that encode as exactly one entry (no split).
pub fn sm_entry() -> impl Strategy<Value = SpaceMapEntry> {
    let offset = prop_oneof![0u64..(1 << 20), 0u64..(1 << 47), (1u64 << 47)..(1 << 62)];
    let run = prop_oneof![1u64..=64, 1u64..=(1 << 15), 1u64..=SM2_RUN_MAX];
    let vdev = prop_oneof![3 => Just(None), 1 => (0..=SM2_DEVICE_MAX).prop_map(Some)];
    (sm_action(), offset, run, vdev).prop_map(|(action, offset, run, vdev)| SpaceMapEntry {
        action,
        offset,
        run,
        vdev,
    })
}

#[derive(Debug, Clone)]
pub enum SmOp {
    Debug(SmDebug),
    Entry(SpaceMapEntry),
}

pub fn sm_ops() -> impl Strategy<Value = Vec<SmOp>> {
    let debug = (sm_action(), 0u16..1024, 1u64..(1 << 50)).prop_map(|(action, sync_pass, txg)| {
        SmOp::Debug(SmDebug {
            action,
            sync_pass,
            txg,
        })
    });
    vec(
        prop_oneof![1 => debug, 4 => sm_entry().prop_map(SmOp::Entry)],
        0..300,
    )
}

pub fn nvvalue() -> impl Strategy<Value = NvValue> {
    let leaf = prop_oneof![
        any::<u64>().prop_map(NvValue::U64),
        any::<i64>().prop_map(NvValue::I64),
        any::<bool>().prop_map(NvValue::Bool),
        vec(any::<u8>(), 0..64).prop_map(NvValue::Bytes),
        ".{0,20}".prop_map(NvValue::Str),
        vec(any::<u64>(), 0..16).prop_map(NvValue::U64Array),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| nvlist_of(inner).prop_map(NvValue::List))
}

fn nvlist_of(values: impl Strategy<Value = NvValue>) -> impl Strategy<Value = NvList> {
    vec(("[a-z][a-z0-9:_.]{0,12}", values), 0..8).prop_map(|pairs| {
        let mut l = NvList::new();
        for (k, v) in pairs {
            l.insert(k, v).unwrap();
        }
        l
    })
}

pub fn nvlist() -> impl Strategy<Value = NvList> {
    nvlist_of(nvvalue())
}

//! Unit tests of the space-map codec.

use super::*;
use crate::error::{OnDiskError, Result};

fn words(b: &[u8]) -> Vec<u64> {
    b.chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

#[test]
fn word_layouts() {
    let mut enc = SpaceMapEncoder::new(4096, 0).unwrap();
    enc.debug(SmDebug {
        action: SmAction::Free,
        sync_pass: 3,
        txg: 77,
    })
    .unwrap();
    enc.entry(SpaceMapEntry::new(SmAction::Alloc, 5, 3))
        .unwrap();
    enc.entry(SpaceMapEntry::new(SmAction::Free, 9, SM_RUN_MAX))
        .unwrap();
    enc.entry(SpaceMapEntry::new(SmAction::Free, 9, SM_RUN_MAX + 1))
        .unwrap();
    enc.entry(SpaceMapEntry {
        action: SmAction::Alloc,
        offset: 1,
        run: 1,
        vdev: Some(0),
    })
    .unwrap();
    let w = words(enc.bytes());
    assert_eq!(w[0], (0b10 << 62) | (1 << 60) | (3 << 50) | 77);
    assert_eq!(w[1], (5 << 16) | 2);
    assert_eq!(w[2], (9 << 16) | (1 << 15) | (SM_RUN_MAX - 1));
    assert_eq!(w[3], (0b11 << 62) | (SM_RUN_MAX << 24));
    assert_eq!(w[4], (1 << 63) | 9);
    assert_eq!(w[5], (0b11 << 62) | 1);
    assert_eq!(w[6], 1);
    assert_eq!(w.len(), 7);
    assert_eq!(
        enc.alloc_delta_units(),
        3 - 2 * i64::try_from(SM_RUN_MAX).unwrap() - 1 + 1
    );
}

#[test]
fn two_word_entry_never_straddles() {
    // One word left in the block: the encoder pads, the pair starts the next block.
    let mut enc = SpaceMapEncoder::new(512, 512 - 8).unwrap();
    enc.entry(SpaceMapEntry::new(SmAction::Alloc, 0, SM_RUN_MAX + 1))
        .unwrap();
    let w = words(enc.bytes());
    assert_eq!(w[0], SM_PADDING_WORD);
    assert_eq!(w[1] >> 62, 0b11);
    assert_eq!(enc.length(), 512 + 16);
    let chunks: Vec<_> = enc.chunks().collect();
    assert_eq!(chunks.len(), 2);
    assert_eq!(
        (
            chunks[0].block_id,
            chunks[0].offset_in_block,
            chunks[0].bytes.len()
        ),
        (0, 504, 8)
    );
    assert_eq!(
        (
            chunks[1].block_id,
            chunks[1].offset_in_block,
            chunks[1].bytes.len()
        ),
        (1, 0, 16)
    );
    // One-word entries need no padding.
    let mut enc = SpaceMapEncoder::new(512, 512 - 8).unwrap();
    enc.entry(SpaceMapEntry::new(SmAction::Alloc, 0, 1))
        .unwrap();
    assert_eq!(enc.bytes().len(), 8);
    // Exactly two words left: no padding.
    let mut enc = SpaceMapEncoder::new(512, 512 - 16).unwrap();
    enc.entry(SpaceMapEntry::new(SmAction::Alloc, 0, SM_RUN_MAX + 1))
        .unwrap();
    assert_eq!(enc.bytes().len(), 16);
}

#[test]
fn long_runs_split() {
    let mut enc = SpaceMapEncoder::new(4096, 0).unwrap();
    enc.entry(SpaceMapEntry::new(SmAction::Free, 10, 2 * SM2_RUN_MAX + 5))
        .unwrap();
    let got: Vec<_> = SpaceMapIter::new(enc.bytes(), 4096, 0)
        .unwrap()
        .map(|r| r.unwrap().entry)
        .collect();
    assert_eq!(
        got,
        vec![
            SpaceMapEntry::new(SmAction::Free, 10, SM2_RUN_MAX),
            SpaceMapEntry::new(SmAction::Free, 10 + SM2_RUN_MAX, SM2_RUN_MAX),
            SpaceMapEntry::new(SmAction::Free, 10 + 2 * SM2_RUN_MAX, 5),
        ]
    );
    assert_eq!(
        enc.alloc_delta_units(),
        -(2 * i64::try_from(SM2_RUN_MAX).unwrap() + 5)
    );
}

#[test]
fn large_offsets_use_two_words() {
    let e = SpaceMapEntry::new(SmAction::Alloc, 1 << SM_OFFSET_BITS, 1);
    assert!(e.needs_two_words());
    let mut enc = SpaceMapEncoder::new(4096, 0).unwrap();
    enc.entry(e).unwrap();
    assert_eq!(enc.bytes().len(), 16);
    let got = decode_block(enc.bytes()).unwrap();
    assert_eq!(
        got,
        vec![SmItem {
            record: SmRecord::Entry(e),
            pos: 0,
            len: 16
        }]
    );
}

#[test]
fn invalid_inputs_rejected() {
    let enc_err = |e: SpaceMapEntry| SpaceMapEncoder::new(4096, 0).unwrap().entry(e).is_err();
    assert!(enc_err(SpaceMapEntry::new(SmAction::Alloc, 0, 0)));
    assert!(enc_err(SpaceMapEntry::new(SmAction::Alloc, u64::MAX, 1)));
    assert!(enc_err(SpaceMapEntry::new(SmAction::Alloc, 1 << 63, 1)));
    assert!(enc_err(SpaceMapEntry {
        action: SmAction::Alloc,
        offset: 0,
        run: 1,
        vdev: Some(SM2_DEVICE_MAX + 1)
    }));
    let mut enc = SpaceMapEncoder::new(4096, 0).unwrap();
    assert!(enc
        .debug(SmDebug {
            action: SmAction::Alloc,
            sync_pass: 0,
            txg: 0
        })
        .is_err());
    assert!(enc
        .debug(SmDebug {
            action: SmAction::Alloc,
            sync_pass: 1024,
            txg: 1
        })
        .is_err());
    assert!(enc
        .debug(SmDebug {
            action: SmAction::Alloc,
            sync_pass: 1,
            txg: 1 << 50
        })
        .is_err());
    assert!(SpaceMapEncoder::new(4095, 0).is_err());
    assert!(SpaceMapEncoder::new(4096, 4).is_err());
    assert!(SpaceMapEncoder::new(256, 0).is_err());

    let w = |v: u64| v.to_le_bytes().to_vec();
    // A two-word entry cut by the end of the block.
    assert!(decode_block(&w(0b11 << 62)).is_err());
    // Two-word padding bits set.
    let mut b = w((0b11 << 62) | (1 << 60));
    b.extend(w(0));
    assert!(matches!(
        decode_block(&b),
        Err(OnDiskError::NonZeroReserved { .. })
    ));
    // Debug action 2.
    assert!(decode_block(&w((0b10 << 62) | (2 << 60) | 1)).is_err());
    // Padding word with a non-zero pass.
    assert!(decode_block(&w((0b10 << 62) | (1 << 50))).is_err());
    // Two-word entry whose extent overflows 2^63 units.
    let mut b = w((0b11 << 62) | (5 << 24));
    b.extend(w((1 << 63) - 1));
    assert!(decode_block(&b).is_err());
    // Odd length.
    assert!(decode_block(&[0u8; 12]).is_err());
    assert!(SpaceMapIter::new(&[0u8; 12], 4096, 0).is_err());
    assert!(SpaceMapIter::new(&[0u8; 8], 4096, 8).is_err());
}

#[test]
fn replay_context_region_and_straddle() {
    let mut enc = SpaceMapEncoder::new(512, 0).unwrap();
    enc.write_batch(SmAction::Alloc, 1, 40, None, [(0, 4), (8, 2)])
        .unwrap();
    enc.write_batch(SmAction::Free, 2, 41, None, [(0, 1)])
        .unwrap();
    let got: Vec<_> = SpaceMapIter::new(enc.bytes(), 512, 0)
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    assert_eq!(got.len(), 3);
    assert_eq!((got[0].txg, got[0].sync_pass, got[0].pos), (40, 1, 8));
    assert_eq!(
        (got[2].txg, got[2].sync_pass, got[2].entry.action),
        (41, 2, SmAction::Free)
    );
    // Region bound.
    let mut it = SpaceMapIter::new(enc.bytes(), 512, 0)
        .unwrap()
        .with_region(9);
    assert!(it.next().unwrap().is_ok());
    assert!(it.next().unwrap().is_err());
    assert!(it.next().is_none(), "the iterator stops after an error");
    // A pair placed across a block boundary by a broken writer is rejected by replay.
    let mut map = vec![0u8; 512 - 8];
    map.extend(((0b11u64 << 62) | (1 << 24)).to_le_bytes());
    map.extend(5u64.to_le_bytes());
    map.resize(1024, 0);
    let r: Result<Vec<_>> = SpaceMapIter::new(&map, 512, 0).unwrap().collect();
    assert!(r.is_err());
}

#[test]
fn header_apply_and_histogram() {
    let mut h = SpaceMapHeader::default();
    let mut enc = SpaceMapEncoder::new(4096, 0).unwrap();
    enc.write_batch(SmAction::Alloc, 1, 5, None, [(0, 10), (20, 6)])
        .unwrap();
    enc.write_batch(SmAction::Free, 1, 5, None, [(0, 4)])
        .unwrap();
    h.apply(&enc, 12).unwrap();
    assert_eq!(h.length, enc.length());
    assert_eq!(h.alloc, 12 * 4096);
    let mut h2 = h;
    let next = SpaceMapEncoder::new(4096, h2.length).unwrap();
    assert!(h2.apply(&next, 63).is_err());
    let stale = SpaceMapEncoder::new(4096, 0).unwrap();
    assert!(h.apply(&stale, 12).is_err());
    assert_eq!(histogram_bucket(4096, 12), 0);
    assert_eq!(histogram_bucket(8191, 12), 0);
    assert_eq!(histogram_bucket(8192, 12), 1);
    assert_eq!(histogram_bucket(1 << 60, 12), SPACE_MAP_HISTOGRAM_SIZE - 1);
    assert_eq!(histogram_bucket(100, 12), 0);
    let mut bytes_hist = [0u64; 64];
    bytes_hist[12] = 3;
    bytes_hist[13] = 1;
    bytes_hist[63] = 2;
    h.set_histogram_from_bytes(&bytes_hist, 12);
    assert_eq!((h.histogram[0], h.histogram[1], h.histogram[31]), (3, 1, 2));
    h.histogram = [0; SPACE_MAP_HISTOGRAM_SIZE];
    h.histogram_add(1 << 20, 12);
    assert_eq!(h.histogram[8], 1);
    h.histogram_remove(1 << 20, 12);
    h.histogram_remove(1 << 20, 12);
    assert_eq!(h.histogram[8], 0);
    assert!(SpaceMapHeader::decode(&[0u8; 100]).is_err());
    let mut b = h.to_bytes();
    b[0] = 3;
    assert!(SpaceMapHeader::decode(&b).is_err());
}

#[test]
fn tail_pop_walks_backwards_with_budget() {
    let mut enc = SpaceMapEncoder::new(512, 0).unwrap();
    enc.write_batch(SmAction::Free, 1, 10, None, [(0, 1), (4, 2)])
        .unwrap();
    enc.write_batch(SmAction::Free, 1, 11, None, [(10, SM_RUN_MAX + 1)])
        .unwrap();
    // Layout: dbg, e(0,1), e(4,2), dbg, pair(10, big) = 6 words.
    assert_eq!(enc.bytes().len(), 48);
    let p = pop_tail(enc.bytes(), 2).unwrap();
    assert_eq!(
        p.entries,
        vec![
            SpaceMapEntry::new(SmAction::Free, 10, SM_RUN_MAX + 1),
            SpaceMapEntry::new(SmAction::Free, 4, 2)
        ]
    );
    // pair (16) + dbg (8) + one-word (8)
    assert_eq!(p.bytes_removed, 32);
    assert_eq!(p.alloc_delta_units, i64::try_from(SM_RUN_MAX).unwrap() + 3);
    assert!(!p.block_emptied);
    // The rest of the block.
    let rest = &enc.bytes()[..48 - 32];
    let p2 = pop_tail(rest, 100).unwrap();
    assert_eq!(p2.entries, vec![SpaceMapEntry::new(SmAction::Free, 0, 1)]);
    assert_eq!(p2.bytes_removed, 16);
    assert!(p2.block_emptied);
    // Zero budget still drops trailing debug words.
    let mut enc = SpaceMapEncoder::new(512, 0).unwrap();
    enc.entry(SpaceMapEntry::new(SmAction::Alloc, 0, 1))
        .unwrap();
    enc.debug(SmDebug {
        action: SmAction::Alloc,
        sync_pass: 1,
        txg: 3,
    })
    .unwrap();
    let p = pop_tail(enc.bytes(), 0).unwrap();
    assert_eq!(
        (p.entries.len(), p.bytes_removed, p.block_emptied),
        (0, 8, false)
    );
}

#[test]
fn byte_batch() {
    let mut enc = SpaceMapEncoder::new(4096, 0).unwrap();
    enc.write_byte_batch(
        SmAction::Alloc,
        1,
        9,
        1 << 22,
        12,
        [((1 << 22) + 4096, 8192)],
    )
    .unwrap();
    let got: Vec<_> = SpaceMapIter::new(enc.bytes(), 4096, 0)
        .unwrap()
        .map(|r| r.unwrap().entry)
        .collect();
    assert_eq!(got, vec![SpaceMapEntry::new(SmAction::Alloc, 1, 2)]);
    assert!(enc
        .write_byte_batch(SmAction::Alloc, 1, 9, 1 << 22, 12, [(0, 4096)])
        .is_err());
}

#[test]
fn byte_conversions() {
    let e = SpaceMapEntry::from_bytes(SmAction::Free, (1 << 24) + 8192, 4096, 1 << 24, 12).unwrap();
    assert_eq!((e.offset, e.run), (2, 1));
    assert_eq!(e.byte_range(1 << 24, 12), Some(((1 << 24) + 8192, 4096)));
    assert!(SpaceMapEntry::from_bytes(SmAction::Free, 100, 4096, 0, 12).is_err());
    assert!(SpaceMapEntry::from_bytes(SmAction::Free, 0, 0, 0, 12).is_err());
    assert!(SpaceMapEntry::from_bytes(SmAction::Free, 0, 4096, 4096, 12).is_err());
    assert_eq!(
        SpaceMapEntry::new(SmAction::Free, 1 << 62, 1).byte_range(0, 12),
        None
    );
}

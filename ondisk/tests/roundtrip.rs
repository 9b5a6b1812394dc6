//! Round trips: every valid value encodes, decodes to itself, and re-encodes to the same bytes.

mod common;

use common::*;
use proptest::prelude::*;
use ringpool_ondisk::blkptr::{
    decode_indirect, encode_indirect, encode_indirect_fill, indirect_entry, indirect_summary,
    set_indirect_entry,
};
use ringpool_ondisk::object::{decode_object_block, encode_object_block, OBJECT_RECORD_SIZE};
use ringpool_ondisk::space_map::{decode_block, SmRecord, SpaceMapIter, SM_PADDING_WORD};
use ringpool_ondisk::{
    BlockPointer, LabelHeader, NvList, ObjectRecord, SpaceMapEncoder, SpaceMapHeader, Uberblock,
    BLKPTR_SIZE,
};

proptest! {
    #[test]
    fn blkptr_roundtrip(bp in blkptr()) {
        let bytes = bp.to_bytes().unwrap();
        let back = BlockPointer::decode(&bytes).unwrap();
        prop_assert_eq!(back, bp);
        prop_assert_eq!(back.to_bytes().unwrap(), bytes);
    }

    #[test]
    fn indirect_roundtrip(ptrs in proptest::collection::vec(blkptr(), 0..64), extra in 0usize..8) {
        let slots = (ptrs.len() + extra).max(1).next_power_of_two().max(8);
        let mut block = vec![0xAAu8; slots * BLKPTR_SIZE];
        encode_indirect(&ptrs, &mut block).unwrap();
        let back = decode_indirect(&block).unwrap();
        prop_assert_eq!(back.len(), slots);
        prop_assert_eq!(&back[..ptrs.len()], &ptrs[..]);
        prop_assert!(back[ptrs.len()..].iter().all(|b| b.is_empty()));
        for (i, bp) in ptrs.iter().enumerate() {
            prop_assert_eq!(indirect_entry(&block, i).unwrap(), *bp);
        }
        prop_assert!(indirect_entry(&block, slots).is_err());
        if let Some(first) = ptrs.first() {
            set_indirect_entry(&mut block, slots - 1, first).unwrap();
            prop_assert_eq!(indirect_entry(&block, slots - 1).unwrap(), *first);
        }
    }

    /// The sync edits a cached indirect block slot by slot and reads the fill off the slots;
    /// that must give the very bytes and fill of encoding the edited pointer array whole.
    #[test]
    fn indirect_edited_in_place_equals_fresh_encoding(
        shift in 2u32..9,
        init in proptest::collection::vec(small_fill_blkptr(), 0..256),
        edits in proptest::collection::vec((any::<usize>(), small_fill_blkptr()), 0..48),
    ) {
        let slots = 1usize << shift;
        let mut ptrs = init;
        ptrs.truncate(slots);
        ptrs.resize(slots, BlockPointer::EMPTY);
        let mut block = vec![0u8; slots * BLKPTR_SIZE];
        encode_indirect(&ptrs, &mut block).unwrap();
        for (i, bp) in edits {
            let i = i % slots;
            set_indirect_entry(&mut block, i, &bp).unwrap();
            ptrs[i] = bp;
        }
        let mut fresh = vec![0x5Au8; slots * BLKPTR_SIZE];
        let fill = encode_indirect_fill(&ptrs, &mut fresh).unwrap();
        prop_assert!(block == fresh, "edited block differs from a fresh encoding");
        let s = indirect_summary(&block).unwrap();
        prop_assert_eq!(s.fill, fill);
        prop_assert_eq!(s.data, ptrs.iter().filter(|p| !p.is_hole()).count());
    }

    #[test]
    fn uberblock_roundtrip(ub in uberblock(), slot_extra in 0usize..4096) {
        let bytes = ub.to_bytes().unwrap();
        prop_assert_eq!(Uberblock::decode(&bytes).unwrap(), ub);
        let mut slot = vec![0x55u8; 128 + slot_extra];
        ub.encode_slot(&mut slot).unwrap();
        prop_assert!(slot[128..].iter().all(|&b| b == 0));
        prop_assert_eq!(Uberblock::decode(&slot).unwrap(), ub);
    }

    #[test]
    fn label_roundtrip(h in label()) {
        let bytes = h.encode().unwrap();
        prop_assert_eq!(bytes.len(), h.encoded_len());
        prop_assert_eq!(bytes.len() % 8, 0);
        let back = LabelHeader::decode(&bytes).unwrap();
        prop_assert_eq!(&back, &h);
        let mut area = vec![0xffu8; ringpool_ondisk::layout::LABEL_HEADER_AREA_SIZE];
        h.encode_area(&mut area).unwrap();
        prop_assert_eq!(LabelHeader::decode(&area).unwrap(), h);
    }

    #[test]
    fn object_roundtrip(rec in object_record()) {
        let bytes = rec.to_bytes().unwrap();
        let back = ObjectRecord::decode(&bytes).unwrap().unwrap();
        prop_assert_eq!(&back, &rec);
        prop_assert_eq!(back.to_bytes().unwrap(), bytes);
    }

    #[test]
    fn object_block_roundtrip(recs in proptest::collection::vec(proptest::option::of(object_record()), 0..8)) {
        let mut block = vec![1u8; 8 * OBJECT_RECORD_SIZE];
        encode_object_block(&recs, &mut block).unwrap();
        let back = decode_object_block(&block).unwrap();
        prop_assert_eq!(&back[..recs.len()], &recs[..]);
        prop_assert!(back[recs.len()..].iter().all(Option::is_none));
    }

    #[test]
    fn space_map_header_roundtrip(h in space_map_header()) {
        prop_assert_eq!(SpaceMapHeader::decode(&h.to_bytes()).unwrap(), h);
    }

    #[test]
    fn space_map_roundtrip(ops in sm_ops(), bs_shift in 9u32..13, prior_words in 0u64..200) {
        let block_size = 1usize << bs_shift;
        let prior = prior_words * 8;
        let mut enc = SpaceMapEncoder::new(block_size, prior).unwrap();
        let mut want = Vec::new();
        for op in &ops {
            match op {
                SmOp::Debug(d) => enc.debug(*d).unwrap(),
                SmOp::Entry(e) => {
                    enc.entry(*e).unwrap();
                    want.push(*e);
                }
            }
        }
        // The map so far: prior padding words, then the new bytes.
        let mut map = Vec::new();
        for _ in 0..prior_words {
            map.extend_from_slice(&SM_PADDING_WORD.to_le_bytes());
        }
        map.extend_from_slice(enc.bytes());
        prop_assert_eq!(u64::try_from(map.len()).unwrap(), enc.length());
        // Chunks cover the new bytes exactly, each inside one block.
        let mut rebuilt = map[..usize::try_from(prior).unwrap()].to_vec();
        for c in enc.chunks() {
            prop_assert_eq!(c.block_id * block_size as u64 + c.offset_in_block as u64, rebuilt.len() as u64);
            prop_assert!(c.offset_in_block + c.bytes.len() <= block_size);
            rebuilt.extend_from_slice(c.bytes);
        }
        prop_assert_eq!(&rebuilt, &map);
        // Replay yields the entries in order with the right debug context.
        let got: Vec<_> = SpaceMapIter::new(&map, block_size, 0).unwrap().collect::<Result<_, _>>().unwrap();
        let entries: Vec<_> = got.iter().map(|r| r.entry).collect();
        prop_assert_eq!(&entries, &want);
        let mut txg = 0;
        let mut it = got.iter();
        for op in &ops {
            match op {
                SmOp::Debug(d) => txg = d.txg,
                SmOp::Entry(_) => prop_assert_eq!(it.next().unwrap().txg, txg),
            }
        }
        // Each block decodes on its own (no pair straddles a boundary).
        let mut n_entries = 0;
        for block in map.chunks(block_size) {
            for item in decode_block(block).unwrap() {
                prop_assert!(item.pos + u64::from(item.len) <= block.len() as u64);
                if matches!(item.record, SmRecord::Entry(_)) {
                    n_entries += 1;
                }
            }
        }
        prop_assert_eq!(n_entries, want.len());
        // Net allocation matches.
        let delta: i64 = want.iter().map(|e| match e.action {
            ringpool_ondisk::SmAction::Alloc => i64::try_from(e.run).unwrap(),
            ringpool_ondisk::SmAction::Free => -i64::try_from(e.run).unwrap(),
        }).sum();
        prop_assert_eq!(enc.alloc_delta_units(), delta);
    }

    #[test]
    fn nvlist_roundtrip(l in nvlist(), pad in 0usize..64) {
        let mut bytes = l.encode().unwrap();
        prop_assert_eq!(bytes.len(), l.encoded_len());
        bytes.extend(std::iter::repeat_n(0u8, pad));
        let back = NvList::decode(&bytes).unwrap();
        prop_assert_eq!(back, l);
    }
}

proptest! {
    /// Destroying a map from the tail with random budgets, block by block, yields exactly the
    /// replayed entries in reverse, cuts the length to zero and brings the net allocation to zero.
    #[test]
    fn space_map_tail_destroy(ops in sm_ops(), budgets in proptest::collection::vec(0usize..20, 1..50)) {
        use ringpool_ondisk::space_map::pop_tail;
        let bs = 512usize;
        let mut enc = SpaceMapEncoder::new(bs, 0).unwrap();
        for op in &ops {
            match op {
                SmOp::Debug(d) => enc.debug(*d).unwrap(),
                SmOp::Entry(e) => enc.entry(*e).unwrap(),
            }
        }
        let map = enc.bytes().to_vec();
        let forward: Vec<_> = SpaceMapIter::new(&map, bs, 0).unwrap().map(|r| r.unwrap().entry).collect();
        let mut len = map.len();
        let mut alloc = enc.alloc_delta_units();
        let mut popped = Vec::new();
        let mut i = 0;
        while len > 0 {
            let block_start = (len - 1) / bs * bs;
            let budget = budgets[i % budgets.len()] + usize::from(i > 100);
            i += 1;
            let p = pop_tail(&map[block_start..len], budget).unwrap();
            prop_assert!(p.entries.len() <= budget);
            len -= usize::try_from(p.bytes_removed).unwrap();
            prop_assert_eq!(p.block_emptied, len == block_start);
            alloc += p.alloc_delta_units;
            popped.extend(p.entries);
        }
        popped.reverse();
        prop_assert_eq!(popped, forward);
        prop_assert_eq!(alloc, 0);
    }
}

proptest! {
    /// A log of concatenated lists (history records) splits back into the same lists.
    #[test]
    fn nvlist_concatenated(lists in proptest::collection::vec(nvlist(), 0..6)) {
        let mut log = Vec::new();
        for l in &lists {
            log.extend(l.encode().unwrap());
        }
        let mut got = Vec::new();
        let mut at = 0;
        while at < log.len() {
            let (l, n) = NvList::decode_prefix(&log[at..]).unwrap();
            got.push(l);
            at += n;
        }
        prop_assert_eq!(got, lists);
    }
}

/// A block pointer whose fill is usually small, so that fill sums are exercised below
/// saturation as well as at it.
fn small_fill_blkptr() -> impl Strategy<Value = BlockPointer> {
    (blkptr(), any::<bool>()).prop_map(|(mut bp, small)| {
        if let BlockPointer::Data(d) = &mut bp {
            if small {
                d.fill %= 1000;
            }
        }
        bp
    })
}

//! Decoders against hostile bytes: arbitrary buffers and mutated valid encodings never panic;
//! what they accept is canonical (re-encodes to the same bytes), so damage can never decode to a
//! different-but-plausible value silently.

mod common;

use common::*;
use proptest::collection::vec;
use proptest::prelude::*;
use ringpool_ondisk::blkptr::decode_indirect;
use ringpool_ondisk::object::{decode_object_block, OBJECT_RECORD_SIZE};
use ringpool_ondisk::space_map::{decode_block, pop_tail, SpaceMapIter};
use ringpool_ondisk::uberblock::{scan_ring, UBERBLOCK_SIZE};
use ringpool_ondisk::{
    BlockPointer, LabelHeader, NvList, ObjectRecord, SpaceMapEncoder, SpaceMapHeader, Uberblock,
    BLKPTR_SIZE,
};

fn whole_words(b: &[u8]) -> &[u8] {
    &b[..b.len() / 8 * 8]
}

/// Runs every decoder over `b`; checks canonical re-encoding where a decode succeeds.
fn all_decoders(b: &[u8]) {
    if let Ok(bp) = BlockPointer::decode(b) {
        assert_eq!(&bp.to_bytes().unwrap()[..], &b[..BLKPTR_SIZE]);
    }
    let _ = decode_indirect(b);
    if let Ok(ub) = Uberblock::decode(b) {
        assert_eq!(&ub.to_bytes().unwrap()[..], &b[..UBERBLOCK_SIZE]);
    }
    if let Ok(h) = LabelHeader::decode(b) {
        let e = h.encode().unwrap();
        assert_eq!(&e[..], &b[..e.len()]);
    }
    if let Ok(Some(rec)) = ObjectRecord::decode(b) {
        assert_eq!(&rec.to_bytes().unwrap()[..], &b[..OBJECT_RECORD_SIZE]);
    }
    let _ = decode_object_block(b);
    if let Ok(h) = SpaceMapHeader::decode(b) {
        assert_eq!(&h.to_bytes()[..], &b[..h.to_bytes().len()]);
    }
    let _ = decode_block(b);
    if let Ok(p) = pop_tail(whole_words(b), 3) {
        assert!(p.entries.len() <= 3);
        assert!(p.bytes_removed <= b.len() as u64);
    }
    for (_, r) in scan_ring(b, 128, None) {
        if let Ok(ub) = r {
            ub.validate().unwrap();
        }
    }
    let whole = whole_words(b);
    if let Ok(it) = SpaceMapIter::new(whole, 512, 0) {
        for r in it.with_region(1 << 40) {
            if r.is_err() {
                break;
            }
        }
    }
    if let Ok(l) = NvList::decode(b) {
        let e = l.encode().unwrap();
        assert_eq!(&e[..], &b[..e.len()]);
    }
}

/// Overwrites bytes of `b` at the given (position, value) pairs.
fn mutate(mut b: Vec<u8>, muts: &[(usize, u8)]) -> Vec<u8> {
    if b.is_empty() {
        return b;
    }
    let n = b.len();
    for &(i, v) in muts {
        b[i % n] = v;
    }
    b
}

fn muts() -> impl Strategy<Value = Vec<(usize, u8)>> {
    vec((any::<usize>(), any::<u8>()), 1..6)
}

/// Case count: `default`, or `PROPTEST_CASES` when set (for long fuzz runs:
/// `PROPTEST_CASES=1000000 cargo test --release -p ringpool-ondisk --test fuzz`).
fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(2048), ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes(b in vec(any::<u8>(), 0..1200)) {
        all_decoders(&b);
    }

    #[test]
    fn arbitrary_block_sized(b in vec(any::<u8>(), 512..=512)) {
        all_decoders(&b);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(512), ..ProptestConfig::default() })]

    #[test]
    fn mutated_blkptr(bp in blkptr(), m in muts()) {
        all_decoders(&mutate(bp.to_bytes().unwrap().to_vec(), &m));
    }

    #[test]
    fn mutated_uberblock(ub in uberblock(), m in muts()) {
        let b = mutate(ub.to_bytes().unwrap().to_vec(), &m);
        if let Ok(back) = Uberblock::decode(&b) {
            // Only a mutation that rewrote nothing may pass.
            prop_assert_eq!(back, ub);
        }
        all_decoders(&b);
    }

    #[test]
    fn mutated_label(h in label(), m in muts()) {
        let b = mutate(h.encode().unwrap(), &m);
        if let Ok(back) = LabelHeader::decode(&b) {
            prop_assert_eq!(back, h);
        }
        all_decoders(&b);
    }

    #[test]
    fn mutated_object(rec in object_record(), m in muts()) {
        all_decoders(&mutate(rec.to_bytes().unwrap().to_vec(), &m));
    }

    #[test]
    fn mutated_space_map(ops in sm_ops(), m in muts()) {
        let mut enc = SpaceMapEncoder::new(512, 0).unwrap();
        for op in ops {
            match op {
                SmOp::Debug(d) => enc.debug(d).unwrap(),
                SmOp::Entry(e) => enc.entry(e).unwrap(),
            }
        }
        all_decoders(&mutate(enc.into_bytes(), &m));
    }

    #[test]
    fn mutated_nvlist(l in nvlist(), m in muts()) {
        all_decoders(&mutate(l.encode().unwrap(), &m));
    }

    #[test]
    fn truncated_encodings(h in label(), l in nvlist(), ub in uberblock(), cut in any::<usize>()) {
        let lb = h.encode().unwrap();
        prop_assert!(LabelHeader::decode(&lb[..cut % lb.len()]).is_err());
        let nb = l.encode().unwrap();
        prop_assert!(NvList::decode(&nb[..cut % nb.len()]).is_err());
        let ubb = ub.to_bytes().unwrap();
        prop_assert!(Uberblock::decode(&ubb[..cut % ubb.len()]).is_err());
    }
}

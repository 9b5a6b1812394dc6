//! Tree updates over many txgs against a model: every block id reads back what was last
//! installed, and every rewritten indirect block and its parent pointer are what encoding the
//! whole pointer array would give (the sync re-encodes only the changed slots and reads the
//! fill off the encoded block).

use super::*;
use ringpool_ondisk::blkptr::encode_indirect_fill;

use crate::pool::syncer::BufPool;

/// A small deterministic generator (xorshift64*), so a failure replays.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn data_ptr(offset: u64, txg: u64) -> BlockPointer {
    BlockPointer::Data(DataPtr {
        dva: Dva {
            device: 0,
            offset,
            asize: 4096,
        },
        lsize: 4096,
        kind: ObjectType::VolumeData,
        level: 0,
        birth_txg: txg,
        fill: 1,
        checksum: Checksum::compute(ChecksumAlgo::Crc32c, &offset.to_le_bytes()),
    })
}

/// Pointer of `blkid` in the tree under `root`, through the blocks written so far.
fn lookup(
    geom: &TreeGeom,
    root: BlockPointer,
    blkid: u64,
    blocks: &HashMap<BlockKey, Arc<Indirect>>,
) -> BlockPointer {
    let mut bp = root;
    let mut level = geom.levels - 1;
    while level > 0 {
        let BlockPointer::Data(d) = bp else {
            return BlockPointer::EMPTY;
        };
        bp = blocks[&key_of(&d)]
            .get(geom.child_index(level, blkid))
            .unwrap();
        level -= 1;
    }
    bp
}

fn run_txgs(seed: u64, holes_pct: u64) {
    let mut rng = Rng(seed | 1);
    let mut geom = TreeGeom {
        levels: 1,
        ibs: 1024, // 16 pointers per indirect block: deep trees with few blocks
        bs: 4096,
    };
    let mut root = BlockPointer::EMPTY;
    let mut model: HashMap<u64, BlockPointer> = HashMap::new();
    let mut blocks: HashMap<BlockKey, Arc<Indirect>> = HashMap::new();
    let mut next_off = 1u64 << 30;
    let mut bufs = BufPool::default();
    for txg in 1..40u64 {
        // Block ids spread over up to three levels, some txgs growing the tree.
        let span = 16u64.pow(u32::try_from(1 + txg.min(20) / 8).unwrap_or(1));
        let n = 1 + rng.below(24);
        let mut ids: Vec<u64> = (0..n).map(|_| rng.below(span)).collect();
        ids.sort_unstable();
        ids.dedup();
        let changes: Vec<(u64, Change)> = ids
            .iter()
            .map(|&b| {
                let bp = if rng.below(100) < holes_pct {
                    BlockPointer::hole(txg)
                } else {
                    next_off += 4096;
                    data_ptr(next_off, txg)
                };
                (b, Change::Ptr(bp))
            })
            .collect();
        let mut loaded = HashMap::new();
        let max = *ids.last().unwrap();
        if max >= geom.capacity_blocks() {
            let want = geom.levels_for(max + 1);
            let mut k = 0u64;
            root = grow(&mut geom, root, want, &mut loaded, &mut || {
                k += 1;
                (
                    Dva {
                        device: 0,
                        offset: u64::MAX - k * 4096,
                        asize: 4096,
                    },
                    Checksum::compute(ChecksumAlgo::Crc32c, &k.to_le_bytes()),
                )
            })
            .unwrap();
        }
        loop {
            let need = paths_to_load(&geom, &root, &ids, &loaded).unwrap();
            if need.is_empty() {
                break;
            }
            for d in need {
                loaded.insert(key_of(&d), Arc::clone(&blocks[&key_of(&d)]));
            }
        }
        let mut alloc = |asize: u32| {
            next_off += 1 << 20;
            Ok(Dva {
                device: 0,
                offset: next_off,
                asize,
            })
        };
        let asize_of = |l: u32| l;
        let mut up = TreeUpdate {
            txg,
            kind: ObjectType::VolumeData,
            loaded: &mut loaded,
            alloc: &mut alloc,
            asize_of: &asize_of,
            bufs: &mut bufs,
            frees: Vec::new(),
            writes: Vec::new(),
            new_indirect: Vec::new(),
        };
        root = up.apply(&geom, root, &changes).unwrap();
        for w in &up.writes {
            let WriteData::Indirect(ind) = &w.data else {
                panic!("a volume update writes only indirect blocks");
            };
            let ptrs: Vec<BlockPointer> = ind.iter().map(Result::unwrap).collect();
            let mut fresh = vec![0u8; ind.bytes().len()];
            let fill = encode_indirect_fill(&ptrs, &mut fresh).unwrap();
            assert_eq!(
                ind.bytes(),
                &fresh[..],
                "txg {txg}: block differs from a fresh encoding"
            );
            assert_eq!(
                w.bp.fill, fill,
                "txg {txg}: parent fill is not the sum of the slots"
            );
            assert_eq!(
                w.bp.checksum,
                Checksum::compute(ChecksumAlgo::Crc32c, &fresh)
            );
            assert!(
                ptrs.iter().any(|p| !p.is_hole()),
                "txg {txg}: an indirect block of holes only is written (its parent should hold a hole)"
            );
        }
        for (k, v) in up.new_indirect.drain(..) {
            blocks.insert(k, v);
        }
        for (b, c) in &changes {
            let Change::Ptr(bp) = c else { unreachable!() };
            model.insert(*b, *bp);
        }
        let total: u64 = model.values().map(BlockPointer::fill).sum();
        assert_eq!(root.fill(), total, "txg {txg}: root fill");
        for (b, bp) in &model {
            let got = lookup(&geom, root, *b, &blocks);
            if bp.is_hole() {
                assert!(got.is_hole(), "txg {txg}: block {b} should be a hole");
            } else {
                assert_eq!(got, *bp, "txg {txg}: block {b}");
            }
        }
    }
}

#[test]
fn updates_match_a_model_and_a_fresh_encoding() {
    for seed in 1..=12u64 {
        run_txgs(seed * 0x9E37_79B9, 10);
    }
}

#[test]
fn updates_that_punch_most_blocks_collapse_to_holes() {
    for seed in 1..=12u64 {
        run_txgs(seed * 0x85EB_CA6B, 70);
    }
}

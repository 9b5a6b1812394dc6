//! Differential property test: the same random sequence of reads, writes (single and
//! concurrent batches) and flushes through UringEngine (on a reactor) and SyncEngine, each on
//! its own O_DIRECT file in /tmp, yields identical read buffers and byte-identical files.

use std::sync::Arc;

use proptest::prelude::*;
use ringpool_driver::io::{
    self, BlockEngine, Device, DeviceOptions, DirectIo, IoBuf, ReactorConfig, SyncEngine,
    UringEngine,
};

const UNIT: u64 = 4096;
const UNITS: u64 = 256; // 1 MiB files

#[derive(Debug, Clone)]
enum Op {
    Write { unit: u64, len: u64, fill: u8 },
    Batch(Vec<(u64, u64, u8)>),
    Read { unit: u64, len: u64 },
    Flush,
}

fn op() -> impl Strategy<Value = Op> {
    let range = (0..UNITS).prop_flat_map(|u| (Just(u), 1..=(UNITS - u).min(32)));
    prop_oneof![
        4 => (range.clone(), any::<u8>()).prop_map(|((unit, len), fill)| Op::Write { unit, len, fill }),
        2 => prop::collection::vec((range.clone(), any::<u8>()), 1..12)
            .prop_map(|v| Op::Batch(v.into_iter().map(|((u, l), f)| (u, l, f)).collect())),
        3 => range.prop_map(|(unit, len)| Op::Read { unit, len }),
        1 => Just(Op::Flush),
    ]
}

/// Pattern for a write: distinct per byte so misplaced data is detected.
fn pattern(unit: u64, len: u64, fill: u8) -> IoBuf {
    let n = usize::try_from(len * UNIT).unwrap();
    let mut b = io::buf::alloc(n);
    for (i, x) in b.iter_mut().enumerate() {
        *x = fill ^ u8::try_from((i + usize::try_from(unit).unwrap()) % 256).unwrap();
    }
    b
}

/// Drop batch entries that overlap an earlier one (concurrent overlapping writes are racy).
fn disjoint(batch: &[(u64, u64, u8)]) -> Vec<(u64, u64, u8)> {
    let mut taken: Vec<(u64, u64)> = Vec::new();
    let mut out = Vec::new();
    for &(u, l, f) in batch {
        if taken.iter().all(|&(s, e)| u + l <= s || u >= e) {
            taken.push((u, u + l));
            out.push((u, l, f));
        }
    }
    out
}

async fn run(e: Arc<dyn BlockEngine>, ops: &[Op]) -> Vec<Vec<u8>> {
    let mut reads = Vec::new();
    for op in ops {
        match op {
            Op::Write { unit, len, fill } => {
                let (r, _) = e.write_at(pattern(*unit, *len, *fill), unit * UNIT).await;
                r.unwrap();
            }
            Op::Batch(v) => {
                let mut hs = Vec::new();
                for (u, l, f) in disjoint(v) {
                    let fut = e.write_at(pattern(u, l, f), u * UNIT);
                    hs.push(io::spawn_local(fut));
                }
                for h in hs {
                    h.await.unwrap().0.unwrap();
                }
            }
            Op::Read { unit, len } => {
                let n = usize::try_from(len * UNIT).unwrap();
                let (r, b) = e.read_at(io::buf::alloc(n), unit * UNIT).await;
                r.unwrap();
                reads.push(b.to_vec());
            }
            Op::Flush => e.flush().await.unwrap(),
        }
    }
    e.flush().await.unwrap();
    reads
}

fn open(dir: &tempfile::TempDir, name: &str) -> (Arc<Device>, std::path::PathBuf) {
    let p = dir.path().join(name);
    Device::create_sparse_file(&p, UNITS * UNIT).unwrap();
    let opts = DeviceOptions {
        direct: DirectIo::Required,
        exclusive: true,
        ..DeviceOptions::default()
    };
    (Arc::new(Device::open(&p, &opts).unwrap()), p)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn uring_matches_sync(ops in prop::collection::vec(op(), 1..40)) {
        let dir = tempfile::tempdir_in("/tmp").unwrap();
        let (du, pu) = open(&dir, "uring");
        let (ds, ps) = open(&dir, "sync");
        let cfg = ReactorConfig { entries: 16, arena_bytes: 4 << 20, ..ReactorConfig::default() };
        let uring: Arc<dyn BlockEngine> = Arc::new(UringEngine::new(du));
        let sync: Arc<dyn BlockEngine> = Arc::new(SyncEngine::new(ds));
        let ops2 = ops.clone();
        let ru = io::block_on(&cfg, async move { run(uring, &ops2).await }).unwrap();
        let rs = io::block_on(&cfg, async move { run(sync, &ops).await }).unwrap();
        prop_assert_eq!(ru, rs);
        let fu = std::fs::read(&pu).unwrap();
        let fs = std::fs::read(&ps).unwrap();
        prop_assert!(fu == fs, "files differ");
    }
}

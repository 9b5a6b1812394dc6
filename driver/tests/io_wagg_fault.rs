//! A vectored write that fails (write aggregation, `ReactorConfig::write_aggregate`) on a real
//! O_DIRECT file: the kernel's own error, injected with RLIMIT_FSIZE (a write past the limit
//! fails with EFBIG; one that crosses it is cut short there). Every member is re-issued alone
//! and gets its own result with its own offset; an acknowledged write-back among them still
//! suspends the pool.
//!
//! RLIMIT_FSIZE is per process: this binary's tests take turns ([`turn`]).

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use ringpool_driver::io::{
    self, BlockEngine, Device, DeviceOptions, DirectIo, IoBuf, IoError, ReactorConfig, RingStats,
    UringEngine,
};
use ringpool_driver::pool::{CreateOptions, Pool, PoolHealth, PoolOptions, TxgConfig};

const BLK: usize = 4096;

/// The whole of a test that sets a limit runs alone: another one's writes would fail too.
fn turn() -> MutexGuard<'static, ()> {
    static LIMIT: Mutex<()> = Mutex::new(());
    LIMIT.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Writes at or past `bytes` fail with EFBIG until the guard is dropped.
struct FsizeLimit {
    old: libc::rlimit,
}

impl FsizeLimit {
    fn set(bytes: u64) -> FsizeLimit {
        let mut old = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: plain syscalls on a local struct; ignoring SIGXFSZ makes the write fail with
        // EFBIG instead of killing the process.
        unsafe {
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            assert_eq!(libc::getrlimit(libc::RLIMIT_FSIZE, &mut old), 0);
            let new = libc::rlimit {
                rlim_cur: bytes,
                rlim_max: old.rlim_max,
            };
            assert_eq!(libc::setrlimit(libc::RLIMIT_FSIZE, &new), 0);
        }
        FsizeLimit { old }
    }
}

impl Drop for FsizeLimit {
    fn drop(&mut self) {
        // SAFETY: restores the limit read in `set`.
        unsafe { libc::setrlimit(libc::RLIMIT_FSIZE, &self.old) };
    }
}

fn cfg() -> ReactorConfig {
    ReactorConfig {
        reactors: 1,
        pin: false,
        arena_bytes: 0,
        write_aggregate: 1 << 20,
        ..ReactorConfig::default()
    }
}

fn open(p: &std::path::Path, size: u64) -> Arc<Device> {
    Device::create_sparse_file(p, size).unwrap();
    let opts = DeviceOptions {
        direct: DirectIo::Required,
        exclusive: true,
        ..DeviceOptions::default()
    };
    Arc::new(Device::open(p, &opts).unwrap())
}

fn block(i: usize) -> Vec<u8> {
    (0..BLK)
        .map(|j| u8::try_from((i * 13 + j) % 253).unwrap())
        .collect()
}

fn since(a: RingStats) -> RingStats {
    io::ring_stats().unwrap().since(&a)
}

#[test]
fn each_member_of_a_failed_vectored_write_gets_its_own_result_and_offset() {
    let _turn = turn();
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let e = UringEngine::new(open(&dir.path().join("d"), 4 << 20));
    let limit = 1u64 << 20;
    // 16 adjacent blocks crossing the limit (2 below it: a short write), 8 past it (EIO-like:
    // the whole write fails).
    let offsets: Vec<u64> = (0..16)
        .map(|i| limit - 2 * BLK as u64 + (i * BLK) as u64)
        .chain((0..8).map(|i| (2 << 20) + (i * BLK) as u64))
        .collect();
    let _limit = FsizeLimit::set(limit);
    let e2 = e.clone();
    let offs = offsets.clone();
    let (results, d) = io::block_on(&cfg(), async move {
        let before = io::ring_stats().unwrap();
        let tasks: Vec<_> = offs
            .iter()
            .enumerate()
            .map(|(i, &off)| {
                let f = e2.write_at(IoBuf::from_slice(&block(i)), off);
                io::spawn_local(async move { f.await.0 })
            })
            .collect();
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        (out, since(before))
    })
    .unwrap();
    assert_eq!(
        (d.vectored_writes, d.merged_writes, d.vectored_fallbacks),
        (2, 24, 2),
        "both runs went as vectored writes and both were re-issued member by member: {d:?}"
    );
    assert_eq!(d.write_sqes, 2 + 24, "{d:?}");
    for (i, (&off, r)) in offsets.iter().zip(&results).enumerate() {
        if off + BLK as u64 <= limit {
            assert!(r.is_ok(), "write {i} at {off} is below the limit: {r:?}");
        } else {
            match r {
                Err(IoError::Device {
                    offset,
                    errno: libc::EFBIG,
                    ..
                }) => assert_eq!(*offset, off, "write {i} reports its own offset"),
                other => panic!("write {i} at {off}: expected EFBIG, got {other:?}"),
            }
        }
    }
    io::block_on(&cfg(), async move {
        for (i, &off) in offsets.iter().enumerate().take(2) {
            let (r, b) = e.read_at(IoBuf::zeroed(BLK), off).await;
            r.unwrap();
            assert_eq!(&b[..], &block(i)[..], "write {i} landed");
        }
    })
    .unwrap();
}

#[test]
fn an_acknowledged_write_back_whose_vectored_write_fails_suspends_the_pool() {
    let _turn = turn();
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let dev = open(&dir.path().join("pool"), 64 << 20);
    let engines: Vec<Arc<dyn BlockEngine>> = vec![Arc::new(UringEngine::new(dev))];
    // One allocator shard (the write-backs get adjacent places) and no timer sync (only a
    // FLUSH commits).
    let popts = PoolOptions {
        txg: TxgConfig {
            timeout: Duration::from_secs(600),
            ..Default::default()
        },
        shards: 1,
        ..Default::default()
    };
    let copts = CreateOptions {
        pool: popts,
        ..Default::default()
    };
    let pool = Pool::create("wagg", engines, &copts).unwrap();
    let vol = pool.create_volume("v", 4 << 20, 4096).unwrap();
    let old: Vec<u8> = (0..16).flat_map(block).collect();
    {
        let vol = vol.clone();
        let old = old.clone();
        io::block_on(&cfg(), async move {
            vol.write(0, &old, false).await.unwrap();
            vol.flush().await.unwrap();
        })
        .unwrap();
    }
    // From here every write to the file fails.
    let limit = FsizeLimit::set(0);
    let v = vol.clone();
    let d = io::block_on(&cfg(), async move {
        let before = io::ring_stats().unwrap();
        let tasks: Vec<_> = (0..16)
            .map(|i| {
                let v = v.clone();
                io::spawn_local(async move {
                    let data = IoBuf::from_slice(&block(100 + i));
                    v.write_back((i * BLK) as u64, data).await
                })
            })
            .collect();
        for t in tasks {
            let (r, kept) = t.await.unwrap();
            r.expect("acknowledged before the device write");
            assert!(kept.is_none(), "the write went the write-back way");
        }
        assert!(
            v.flush().await.is_err(),
            "FLUSH after lost acknowledged writes fails"
        );
        let mut got = vec![0u8; 16 * BLK];
        v.read(0, &mut got).await.unwrap();
        (got, since(before))
    })
    .unwrap();
    let (got, d) = d;
    assert!(
        d.vectored_writes >= 1 && d.vectored_fallbacks >= 1,
        "the write-backs' device writes went (and failed) as vectored writes: {d:?}"
    );
    assert!(
        got == old,
        "reads see the last data that reached the device"
    );
    match pool.health() {
        PoolHealth::Suspended { reason, .. } => assert!(
            reason.contains("acknowledged"),
            "suspended for the lost write, not a sync: {reason}"
        ),
        h => panic!("pool not suspended: {h}"),
    }
    drop(limit);
    drop(vol);
    let _ = pool.export();
}

//! Throughput of the on-disk codecs: what metaslab load (space-map replay), tree walks
//! (indirect-block decode + checksum) and import (uberblock ring scan) cost in CPU.
//!
//! Times are thread CPU time (wall time if /proc does not report it).
//!
//! `cargo run --release -p ringpool-ondisk --example codecbench [-- SCALE]` (SCALE multiplies
//! the work, default 1).

use std::hint::black_box;
use std::time::Instant;

use ringpool_ondisk::blkptr::{decode_indirect, encode_indirect};
use ringpool_ondisk::label::{DeviceEntry, HostInfo, PoolState};
use ringpool_ondisk::space_map::{SpaceMapIter, SM_RUN_MAX};
use ringpool_ondisk::{
    BlockPointer, Checksum, ChecksumAlgo, DataPtr, Dva, LabelHeader, NvList, NvValue, ObjectType,
    SmAction, SpaceMapEncoder, SpaceMapEntry, Uberblock,
};

/// CPU time of this thread in nanoseconds (from /proc/thread-self/schedstat), so numbers stay
/// meaningful on a loaded machine; falls back to 0 (wall time only) when unavailable.
fn thread_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|f| f.parse().ok()))
        .unwrap_or(0)
}

/// A wall clock plus a thread CPU clock.
struct Clock {
    wall: Instant,
    cpu: u64,
}

impl Clock {
    fn start() -> Clock {
        Clock {
            wall: Instant::now(),
            cpu: thread_cpu_ns(),
        }
    }

    /// CPU time if the kernel reports it, wall time otherwise.
    fn elapsed(&self) -> std::time::Duration {
        let cpu = thread_cpu_ns().saturating_sub(self.cpu);
        if cpu > 0 {
            std::time::Duration::from_nanos(cpu)
        } else {
            self.wall.elapsed()
        }
    }
}

fn report(what: &str, n: u64, bytes: u64, t: std::time::Duration) {
    let s = t.as_secs_f64();
    #[allow(clippy::cast_precision_loss)]
    let (per_sec, mib) = (n as f64 / s, bytes as f64 / s / (1024.0 * 1024.0));
    println!(
        "{what:<40} {n:>10} ops  {:>9.1} ns/op  {:>12.0} ops/s  {mib:>9.0} MiB/s",
        s * 1e9 / n.max(1) as f64,
        per_sec
    );
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let scale: u64 = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(1);

    // crc32c over 128 KiB blocks.
    let block = vec![0x5au8; 128 * 1024];
    let n = 4000 * scale;
    let t = Clock::start();
    for _ in 0..n {
        black_box(Checksum::compute(ChecksumAlgo::Crc32c, black_box(&block)));
    }
    report(
        "crc32c 128 KiB block",
        n,
        n * block.len() as u64,
        t.elapsed(),
    );

    // Space map: encode 1M entries (90 % one-word, 10 % two-word), then replay them.
    let entries = 1_000_000 * scale;
    let t = Clock::start();
    let mut enc = SpaceMapEncoder::new(128 * 1024, 0)?;
    let mut off = 0u64;
    for i in 0..entries {
        let run = if i % 10 == 0 {
            SM_RUN_MAX + 7
        } else {
            1 + i % 64
        };
        let action = if i % 3 == 0 {
            SmAction::Free
        } else {
            SmAction::Alloc
        };
        enc.entry(SpaceMapEntry::new(action, off, run))?;
        off += run + 1;
    }
    let bytes = enc.into_bytes();
    report("space map encode", entries, bytes.len() as u64, t.elapsed());
    let t = Clock::start();
    let mut sum = 0u64;
    for r in SpaceMapIter::new(&bytes, 128 * 1024, 0)? {
        sum = sum.wrapping_add(r?.entry.run);
    }
    black_box(sum);
    report("space map replay", entries, bytes.len() as u64, t.elapsed());

    // Indirect blocks: 128 KiB = 2048 pointers, encode + decode.
    let bp = |i: u64| {
        BlockPointer::Data(DataPtr {
            dva: Dva {
                device: 1,
                offset: i * 4096 + (4 << 20),
                asize: 4096,
            },
            lsize: 4096,
            kind: ObjectType::VolumeData,
            level: 0,
            birth_txg: 100 + i,
            fill: 1,
            checksum: Checksum {
                algo: ChecksumAlgo::Crc32c,
                value: u128::from(u32::try_from(i % 1000).unwrap_or(0)),
            },
        })
    };
    let ptrs: Vec<_> = (0..2048).map(bp).collect();
    let mut ib = vec![0u8; 128 * 1024];
    let rounds = 500 * scale;
    let t = Clock::start();
    for _ in 0..rounds {
        encode_indirect(black_box(&ptrs), &mut ib)?;
    }
    report(
        "indirect encode (per pointer)",
        rounds * 2048,
        rounds * ib.len() as u64,
        t.elapsed(),
    );
    let t = Clock::start();
    for _ in 0..rounds {
        black_box(decode_indirect(black_box(&ib))?);
    }
    report(
        "indirect decode (per pointer)",
        rounds * 2048,
        rounds * ib.len() as u64,
        t.elapsed(),
    );

    // Uberblock ring scan: decode a 4 KiB slot.
    let ub = Uberblock {
        txg: 77,
        guid_sum: 3,
        timestamp: 1,
        checkpoint_txg: 0,
        root: BlockPointer::hole(1),
        pool_guid: 9,
    };
    let mut slot = vec![0u8; 4096];
    ub.encode_slot(&mut slot)?;
    let n = 1_000_000 * scale;
    let t = Clock::start();
    for _ in 0..n {
        black_box(Uberblock::decode(black_box(&slot))?);
    }
    report("uberblock decode", n, n * 128, t.elapsed());

    // Label with 64 devices.
    let devices: Vec<_> = (1..=64)
        .map(|g| DeviceEntry {
            guid: g,
            size: 1 << 40,
            ashift: 12,
            ms_shift: 30,
            added_txg: 4,
        })
        .collect();
    let h = LabelHeader {
        pool_name: "tank".into(),
        pool_guid: 42,
        device_guid: 1,
        device_index: 0,
        devices,
        ashift: 12,
        ms_shift: 30,
        state: PoolState::Active,
        host: HostInfo {
            hostname: "host".into(),
            host_id: 1,
            pid: 1,
        },
        creation_time: 0,
        config_txg: 4,
    };
    let lb = h.encode()?;
    let n = 200_000 * scale;
    let t = Clock::start();
    for _ in 0..n {
        black_box(LabelHeader::decode(black_box(&lb))?);
    }
    report(
        "label decode (64 devices)",
        n,
        n * lb.len() as u64,
        t.elapsed(),
    );

    // A volume table of 1000 volumes.
    let mut table = NvList::new();
    for i in 0..1000u64 {
        let mut v = NvList::new();
        v.insert("object", NvValue::U64(i + 100))?;
        v.insert("size", NvValue::U64(i << 30))?;
        v.insert("block_size", NvValue::U64(4096))?;
        v.insert("read_only", NvValue::Bool(false))?;
        table.insert(format!("vol{i}"), NvValue::List(v))?;
    }
    let n = 200 * scale;
    let t = Clock::start();
    let mut nb = Vec::new();
    for _ in 0..n {
        nb = black_box(table.encode()?);
    }
    report(
        "nvlist encode (1000-volume table)",
        n,
        n * nb.len() as u64,
        t.elapsed(),
    );
    let t = Clock::start();
    for _ in 0..n {
        black_box(NvList::decode(black_box(&nb))?);
    }
    report(
        "nvlist decode (1000-volume table)",
        n,
        n * nb.len() as u64,
        t.elapsed(),
    );
    Ok(())
}

//! allocbench: Ceph's `test_alloc_bench2_90_500_x2` adapted to ringpool's metaslab class.
//!
//! A device of `--scale` GiB (default 128, in-memory metaslabs only) is prefilled to 90 % with
//! 1-4 MiB pieces, 5 % is freed at random, then each of T threads repeatedly frees a random
//! 4-64 KiB piece of what it owns and allocates 4-64 KiB, until 5x the capacity has been
//! rewritten. A txg sync (sync + sync_done, through the real defer pipeline) runs every
//! `--sync-every` operations. The fragmented phase runs once per entry of `--threads`, each from
//! a fresh prefill with the same seed.
//!
//! Reported: phase time, allocations/s, alloc+free pairs/s per thread, p50/p99/p99.9 allocation
//! latency (hdrhistogram), ZFS fragmentation and Ceph's fragmentation score of the free space,
//! heap bytes per free segment (a counting global allocator), and the speed-up of T threads
//! over 1.
//!
//! Run: `cargo run --release -p ringpool-alloc --example allocbench -- --scale 8`

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use ringpool_alloc::{
    default_ms_shift, AllocClass, AllocError, ClassConfig, DeviceSpec, Extent, MetaslabClass,
};

mod ceph;
mod heap;

use ceph::CephScore;
use heap::{heap_bytes, isz};

#[derive(Parser, Debug)]
#[command(about = "Ceph-style allocator benchmark for ringpool-alloc")]
struct Args {
    /// Device size in GiB.
    #[arg(long, default_value_t = 128)]
    scale: u64,
    /// Thread counts for the fragmented phase, each run from a fresh prefill.
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    threads: Vec<usize>,
    /// Run a txg sync (sync + sync_done) every this many operations (allocs + frees); default:
    /// about 0.5 % of the capacity allocated per txg.
    #[arg(long)]
    sync_every: Option<u64>,
    /// Rewrite this many times the capacity in the fragmented phase.
    #[arg(long, default_value_t = 5.0)]
    rewrite: f64,
    /// log2 of the allocation unit.
    #[arg(long, default_value_t = 12)]
    ashift: u32,
    /// RNG seed.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Pin thread i to core i.
    #[arg(long)]
    pin: bool,
    /// Print one JSON object per run instead of text.
    #[arg(long)]
    json: bool,
    /// Free segments shorter than this many bytes stay out of the by-size index
    /// (`MetaslabConfig::size_index_floor`; default: the library's).
    #[arg(long)]
    size_index_floor: Option<u64>,
    /// Drop an idle metaslab's by-size index after this many txgs without an allocation
    /// (`MetaslabConfig::drop_index_after_txgs`, 0: never; default: the library's).
    #[arg(long)]
    drop_index_after_txgs: Option<u64>,
    /// Segments a first-fit or near-fit search examines at most
    /// (`MetaslabConfig::df_max_search_count`; default: the library's).
    #[arg(long)]
    df_max_search_count: Option<usize>,
    /// Keep a metaslab's free segments as a bitmap while it has at least one per this many
    /// units (`MetaslabConfig::compact_density`, 0: never; default: the library's).
    #[arg(long)]
    compact_density: Option<u64>,
}

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const GIB: u64 = 1024 * MIB;
const BATCH: u64 = 32;

/// Txg machinery shared by the workers: the open txg, one hold per worker, a sync lock.
struct Txg {
    open: AtomicU64,
    holds: Vec<HoldSlot>,
    sync_lock: Mutex<()>,
    ops: AtomicU64,
    syncs: AtomicU64,
    sync_time_ns: AtomicU64,
    /// Time workers spent waiting for another worker's sync to finish (serialisation).
    sync_wait_ns: AtomicU64,
    /// Thread CPU time spent syncing (sync + sync_done), nanoseconds.
    sync_cpu_ns: AtomicU64,
}

#[repr(align(128))]
struct HoldSlot(AtomicU64);

impl Txg {
    fn new(workers: usize, first: u64) -> Self {
        Self {
            open: AtomicU64::new(first),
            holds: (0..workers).map(|_| HoldSlot(AtomicU64::new(0))).collect(),
            sync_lock: Mutex::new(()),
            ops: AtomicU64::new(0),
            syncs: AtomicU64::new(0),
            sync_time_ns: AtomicU64::new(0),
            sync_wait_ns: AtomicU64::new(0),
            sync_cpu_ns: AtomicU64::new(0),
        }
    }

    fn hold(&self, w: usize) -> u64 {
        loop {
            let t = self.open.load(Ordering::SeqCst);
            self.holds[w].0.store(t, Ordering::SeqCst);
            if self.open.load(Ordering::SeqCst) == t {
                return t;
            }
        }
    }

    fn release(&self, w: usize) {
        self.holds[w].0.store(0, Ordering::SeqCst);
    }

    /// Close the open txg, wait for its holders to drain, sync it and finish it.
    fn sync(&self, class: &MetaslabClass) -> Result<()> {
        let w0 = Instant::now();
        let _g = self.sync_lock.lock();
        self.sync_wait_ns.fetch_add(
            u64::try_from(w0.elapsed().as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        let start = Instant::now();
        let cpu0 = thread_cpu_s();
        let t = self.open.fetch_add(1, Ordering::SeqCst);
        for h in &self.holds {
            // Yield rather than spin: the holder may be descheduled on a busy machine.
            while h.0.load(Ordering::SeqCst) == t {
                std::thread::yield_now();
            }
        }
        let out = class.sync(t).context("sync")?;
        drop(out);
        class.sync_done(t).context("sync_done")?;
        self.syncs.fetch_add(1, Ordering::Relaxed);
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let cpu_ns = ((thread_cpu_s() - cpu0) * 1e9) as u64;
        self.sync_cpu_ns.fetch_add(cpu_ns, Ordering::Relaxed);
        self.sync_time_ns.fetch_add(
            u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        Ok(())
    }

    /// Count `n` operations; sync when a multiple of `every` is crossed.
    fn tick(&self, n: u64, every: u64, class: &MetaslabClass) -> Result<()> {
        let before = self.ops.fetch_add(n, Ordering::Relaxed);
        if (before + n) / every != before / every {
            self.sync(class)?;
        }
        Ok(())
    }
}

/// Operations per txg: `--sync-every`, or enough for ~0.5 % of the capacity (34 KiB average
/// allocation, one free per allocation).
fn sync_every(args: &Args) -> u64 {
    args.sync_every
        .unwrap_or(2 * (args.scale * GIB / 200 / (34 * KIB)))
        .max(1)
}

struct Prepared {
    class: Arc<MetaslabClass>,
    owned: Vec<Extent>,
    txg: Arc<Txg>,
    prefill_s: f64,
}

fn build_class(args: &Args, shards: usize) -> Result<MetaslabClass> {
    let size = args.scale * GIB;
    let mut cfg = ClassConfig {
        shards,
        ..ClassConfig::default()
    };
    if let Some(f) = args.size_index_floor {
        cfg.metaslab.size_index_floor = f;
    }
    if let Some(t) = args.drop_index_after_txgs {
        cfg.metaslab.drop_index_after_txgs = t;
    }
    if let Some(n) = args.df_max_search_count {
        cfg.metaslab.df_max_search_count = n;
    }
    if let Some(d) = args.compact_density {
        cfg.metaslab.compact_density = d;
    }
    let class = MetaslabClass::new(cfg);
    class.add_device(DeviceSpec {
        dev: 0,
        start: 4 * MIB,
        end: 4 * MIB + size,
        ashift: args.ashift,
        ms_shift: default_ms_shift(size),
    })?;
    Ok(class)
}

/// Prefill 90 % with 1-4 MiB pieces, free 5 % at random, and let the defer period pass.
fn prepare(args: &Args, workers: usize) -> Result<Prepared> {
    let class = Arc::new(build_class(args, workers)?);
    let txg = Arc::new(Txg::new(workers, 4));
    let cap = args.scale * GIB;
    let unit = 1u64 << args.ashift;
    let mut rng = SmallRng::seed_from_u64(args.seed);
    let start = Instant::now();
    let mut owned = Vec::new();
    let mut filled = 0u64;
    while filled < cap / 10 * 9 {
        let t = txg.hold(0);
        let size = rng.random_range(MIB / unit..=4 * MIB / unit) * unit;
        let e = class.alloc(size, t, 0, AllocClass::Normal)?;
        txg.release(0);
        filled += e.len;
        owned.push(e);
        txg.tick(1, sync_every(args), &class)?;
    }
    let mut freed = 0u64;
    while freed < cap / 20 {
        let i = rng.random_range(0..owned.len());
        let e = owned.swap_remove(i);
        let t = txg.hold(0);
        class.free(e, 1, t)?;
        txg.release(0);
        freed += e.len;
        txg.tick(1, sync_every(args), &class)?;
    }
    for _ in 0..3 {
        txg.sync(&class)?;
    }
    Ok(Prepared {
        class,
        owned,
        txg,
        prefill_s: start.elapsed().as_secs_f64(),
    })
}

struct WorkerResult {
    cpu_s: f64,
    ganged: u64,
    allocs: u64,
    frees: u64,
    nospace: u64,
    hist: Histogram<u64>,
}

/// Allocate `size` bytes as one extent or, when no single extent fits, as several smaller ones
/// (halving the piece size down to one unit), like Ceph's `allocate` returning an extent vector.
/// Returns false (and undoes the pieces) when even single units run out.
fn alloc_ganged(
    class: &MetaslabClass,
    size: u64,
    txg: u64,
    shard: usize,
    unit: u64,
    out: &mut Vec<Extent>,
) -> Result<bool> {
    match class.alloc(size, txg, shard, AllocClass::Normal) {
        Ok(e) => {
            out.push(e);
            return Ok(true);
        }
        Err(AllocError::NoSpace { .. }) => {}
        Err(e) => bail!("alloc: {e}"),
    }
    let first = out.len();
    let mut rem = size;
    let mut chunk = (size / 2 / unit).max(1) * unit;
    while rem > 0 {
        let c = chunk.min(rem);
        match class.alloc(c, txg, shard, AllocClass::Normal) {
            Ok(e) => {
                out.push(e);
                rem -= c;
            }
            Err(AllocError::NoSpace { .. }) if chunk > unit => {
                chunk = (chunk / 2 / unit).max(1) * unit;
            }
            Err(AllocError::NoSpace { .. }) => {
                for e in out.drain(first..) {
                    class.free_now(e, txg)?;
                }
                return Ok(false);
            }
            Err(e) => bail!("alloc: {e}"),
        }
    }
    Ok(true)
}

fn worker(
    w: usize,
    args: &Args,
    class: &MetaslabClass,
    txg: &Txg,
    mut owned: Vec<Extent>,
    quota: u64,
    go: &AtomicBool,
) -> Result<WorkerResult> {
    if args.pin {
        if let Some(ids) = core_affinity::get_core_ids() {
            if let Some(id) = ids.get(w % ids.len().max(1)) {
                core_affinity::set_for_current(*id);
            }
        }
    }
    let unit = 1u64 << args.ashift;
    let max_units = 64 * KIB / unit;
    let mut rng =
        SmallRng::seed_from_u64(args.seed ^ ((w as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15)));
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
    let (mut allocs, mut frees, mut nospace, mut ganged) = (0u64, 0u64, 0u64, 0u64);
    let mut written = 0u64;
    while !go.load(Ordering::Acquire) {
        std::thread::yield_now();
    }
    let cpu0 = thread_cpu_s();
    // The pieces to free are drawn `PICK_AHEAD` picks before they are used and their entries
    // prefetched, so the benchmark's own cache miss (a random entry of a vector of millions)
    // overlaps the allocator calls in between instead of adding to them (and to the store
    // that follows it, which the next locked instruction would wait for). A pick is an index
    // drawn over the vector as it was then, made uniform over the vector as it is when used
    // (`PickQueue::next`), so the prefetched line is the one read.
    let mut picks = PickQueue::new(&mut rng, &owned);
    while written < quota {
        let t = txg.hold(w);
        for i in 0..BATCH {
            // Free exactly `size` bytes (a random 4-64 KiB amount) from random places of what
            // we own, then allocate `size` bytes: the fill level stays constant.
            let size = rng.random_range(1..=max_units) * unit;
            let mut to_free = size;
            while to_free > 0 && !owned.is_empty() {
                let idx = picks.next(&mut rng, &owned);
                let e = owned[idx];
                let piece = if e.len <= to_free {
                    owned.swap_remove(idx);
                    e
                } else {
                    let units = e.len / unit;
                    let off = rng.random_range(0..=units - to_free / unit) * unit;
                    let p = Extent {
                        dev: e.dev,
                        start: e.start + off,
                        len: to_free,
                    };
                    let left = Extent { len: off, ..e };
                    let right = Extent {
                        dev: e.dev,
                        start: p.start + to_free,
                        len: e.len - off - to_free,
                    };
                    match (left.len > 0, right.len > 0) {
                        (true, true) => {
                            owned[idx] = left;
                            owned.push(right);
                        }
                        (true, false) => owned[idx] = left,
                        (false, true) => owned[idx] = right,
                        (false, false) => {
                            owned.swap_remove(idx);
                        }
                    }
                    p
                };
                class.free(piece, 1, t)?;
                to_free -= piece.len;
                frees += 1;
            }
            let timed = i % 4 == 0;
            let t0 = timed.then(Instant::now);
            let before = owned.len();
            match alloc_ganged(class, size, t, w, unit, &mut owned)? {
                true => {
                    if let Some(t0) = t0 {
                        let ns = u64::try_from(t0.elapsed().as_nanos()).unwrap_or(u64::MAX);
                        hist.record(ns.max(1))?;
                    }
                    written += size;
                    allocs += 1;
                    if owned.len() - before > 1 {
                        ganged += 1;
                    }
                }
                false => nospace += 1,
            }
        }
        txg.release(w);
        txg.tick(2 * BATCH, sync_every(args), class)?;
    }
    let cpu_s = thread_cpu_s() - cpu0;
    Ok(WorkerResult {
        cpu_s,
        ganged,
        allocs,
        frees,
        nospace,
        hist,
    })
}

/// Index `r * len / 2^64`: uniform over `0..len` for a uniform 64-bit `r` (Lemire's
/// multiply-shift; the bias, below `len / 2^64`, is far under anything measurable).
fn pick(r: u64, len: usize) -> usize {
    // The product of a u64 and a usize shifted right by 64 is below `len`: it fits a usize.
    #[allow(clippy::cast_possible_truncation)]
    let i = ((u128::from(r) * len as u128) >> 64) as usize;
    i
}

/// Request the cache lines of `v[i]` (an entry may straddle two; `i` may be past the end: a
/// prefetch of an address that is not read has no effect but the hint).
fn prefetch_entry(v: &[Extent], i: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let first = v.as_ptr().wrapping_add(i).cast::<i8>();
        let last = first.wrapping_add(std::mem::size_of::<Extent>() - 1);
        // SAFETY: SSE is part of the x86_64 baseline; a prefetch never faults and does not
        // access memory architecturally, whatever the address (wrapping_add computes it
        // without dereferencing).
        unsafe {
            _mm_prefetch::<_MM_HINT_T0>(first);
            _mm_prefetch::<_MM_HINT_T0>(last);
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (v, i);
}

/// Picks drawn ahead of their use (see `worker`).
const PICK_AHEAD: usize = 4;

/// A ring of `PICK_AHEAD` picks, each an index drawn uniformly over the vector's length at
/// the time (kept beside it) with its entry requested.
struct PickQueue {
    ring: [(usize, usize); PICK_AHEAD],
    head: usize,
}

impl PickQueue {
    fn draw(rng: &mut SmallRng, owned: &[Extent]) -> (usize, usize) {
        let i = pick(rng.random(), owned.len());
        prefetch_entry(owned, i);
        (i, owned.len())
    }

    fn new(rng: &mut SmallRng, owned: &[Extent]) -> Self {
        let mut ring = [(0, 0); PICK_AHEAD];
        for r in &mut ring {
            *r = Self::draw(rng, owned);
        }
        Self { ring, head: 0 }
    }

    /// The oldest pick as an index uniform over `owned` now (`owned` not empty), replaced by
    /// a new one whose entry is requested now.
    fn next(&mut self, rng: &mut SmallRng, owned: &[Extent]) -> usize {
        let (i, then) = self.ring[self.head];
        self.ring[self.head] = Self::draw(rng, owned);
        self.head = (self.head + 1) % PICK_AHEAD;
        uniform_now(i, then, owned.len(), rng)
    }
}

/// Make `i`, uniform over `0..then`, uniform over `0..now` (`now > 0`): when the vector grew,
/// each of the `now - then` new slots is taken with probability `1 / now`; when it shrank, a
/// pick past the end is drawn again. The slots' contents may have moved meanwhile
/// (`swap_remove`), but a uniform slot is a uniform entry.
fn uniform_now(i: usize, then: usize, now: usize, rng: &mut SmallRng) -> usize {
    if now > then {
        let j = pick(rng.random(), now);
        return if j >= then { j } else { i };
    }
    if i >= now {
        return pick(rng.random(), now);
    }
    i
}

/// CPU time consumed by the calling thread, in seconds (the machine may be shared: wall time
/// alone does not say what the allocator costs).
fn thread_cpu_s() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec owned by this frame for the whole call.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return 0.0;
    }
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

struct RunReport {
    cpu_s: f64,
    ganged: u64,
    seconds: f64,
    allocs: u64,
    frees: u64,
    nospace: u64,
    p50_ns: u64,
    p99_ns: u64,
    p999_ns: u64,
    max_ns: u64,
    zfs_frag: u64,
    ceph_score: f64,
    free_segments: u64,
    class_heap: isize,
    syncs: u64,
    sync_ms_avg: f64,
    prefill_s: f64,
    free_bytes: u64,
    /// Metaslabs with a full by-size index (allocated from lately), of all.
    indexed_ms: (usize, usize),
    /// By-size index rebuilds (an allocation from a metaslab whose index was dropped).
    index_builds: u64,
    /// /proc/loadavg (1, 5, 15 min) when the phase started.
    loadavg: String,
    /// Seconds workers waited for another worker's sync.
    sync_wait_s: f64,
    /// Worker CPU seconds spent in txg syncs (part of `cpu_s`).
    sync_cpu_s: f64,
}

fn run(args: &Args, threads: usize) -> Result<RunReport> {
    let prep = prepare(args, threads)?;
    let Prepared {
        class,
        owned,
        txg,
        prefill_s,
    } = prep;
    let cap = args.scale * GIB;
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let quota = (cap as f64 * args.rewrite / threads as f64) as u64;
    // Deal the prefilled extents out round-robin.
    let mut shares: Vec<Vec<Extent>> = (0..threads).map(|_| Vec::new()).collect();
    for (i, e) in owned.into_iter().enumerate() {
        shares[i % threads].push(e);
    }
    let go = Arc::new(AtomicBool::new(false));
    let syncs0 = txg.syncs.load(Ordering::Relaxed);
    let sync_ns0 = txg.sync_time_ns.load(Ordering::Relaxed);
    let wait_ns0 = txg.sync_wait_ns.load(Ordering::Relaxed);
    let sync_cpu0 = txg.sync_cpu_ns.load(Ordering::Relaxed);
    let loadavg = std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default();
    let mut results = Vec::new();
    let elapsed = std::thread::scope(|s| -> Result<f64> {
        let mut hs = Vec::new();
        for (w, share) in shares.into_iter().enumerate() {
            let (class, txg, go) = (&class, &txg, &go);
            hs.push(s.spawn(move || worker(w, args, class, txg, share, quota, go)));
        }
        std::thread::sleep(Duration::from_millis(50));
        let start = Instant::now();
        go.store(true, Ordering::Release);
        for h in hs {
            match h.join() {
                Ok(r) => results.push(r?),
                Err(_) => bail!("worker panicked"),
            }
        }
        Ok(start.elapsed().as_secs_f64())
    })?;
    let syncs = txg.syncs.load(Ordering::Relaxed) - syncs0;
    let sync_ns = txg.sync_time_ns.load(Ordering::Relaxed) - sync_ns0;
    let sync_wait_s = (txg.sync_wait_ns.load(Ordering::Relaxed) - wait_ns0) as f64 / 1e9;
    let sync_cpu_s = (txg.sync_cpu_ns.load(Ordering::Relaxed) - sync_cpu0) as f64 / 1e9;
    // Let the last frees through the defer pipeline so the free space is what is measured.
    for _ in 0..3 {
        txg.sync(&class)?;
    }
    class.verify()?;
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
    let (mut allocs, mut frees, mut nospace) = (0, 0, 0);
    for r in &results {
        hist.add(&r.hist)?;
        allocs += r.allocs;
        frees += r.frees;
        nospace += r.nospace;
    }
    let stats = class.stats();
    let nms = class.group(0)?.metaslab_count();
    let mut indexed_ms = 0;
    let mut index_builds = 0;
    for i in 0..nms {
        let (ix, builds) =
            class.with_metaslab(0, i, |m| (m.is_active_indexed(), m.index_builds()))?;
        indexed_ms += usize::from(ix);
        index_builds += builds;
    }
    let ceph_score = CephScore::score(&class, 1 << args.ashift)?;
    let cpu_s: f64 = results.iter().map(|r| r.cpu_s).sum();
    let ganged: u64 = results.iter().map(|r| r.ganged).sum();
    drop(results);
    let before = heap_bytes();
    let class = Arc::try_unwrap(class).map_err(|_| anyhow::anyhow!("class still shared"))?;
    drop(class);
    let class_heap = before - heap_bytes();
    Ok(RunReport {
        cpu_s,
        ganged,
        seconds: elapsed,
        allocs,
        frees,
        nospace,
        p50_ns: hist.value_at_quantile(0.50),
        p99_ns: hist.value_at_quantile(0.99),
        p999_ns: hist.value_at_quantile(0.999),
        max_ns: hist.max(),
        zfs_frag: stats.total.fragmentation,
        ceph_score,
        free_segments: stats.total.free_segments,
        class_heap,
        syncs,
        sync_ms_avg: if syncs > 0 {
            sync_ns as f64 / syncs as f64 / 1e6
        } else {
            0.0
        },
        prefill_s,
        free_bytes: stats.total.free,
        indexed_ms: (indexed_ms, nms),
        index_builds,
        loadavg,
        sync_wait_s,
        sync_cpu_s,
    })
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.threads.is_empty() || args.threads.contains(&0) {
        bail!("--threads needs positive counts");
    }
    let mut one: Option<f64> = None;
    let mut one_cpu: Option<f64> = None;
    for &t in &args.threads {
        let r = run(&args, t)?;
        let pairs_per_thread = r.allocs.min(r.frees) as f64 / r.seconds / t as f64;
        let rate = r.allocs as f64 / r.seconds;
        let per_seg = r.class_heap as f64 / r.free_segments.max(1) as f64;
        if t == 1 {
            one = Some(rate);
            one_cpu = Some(r.cpu_s);
        }
        let speedup = one.map(|o| rate / o);
        // With t idle cores the phase would take cpu_t / t: the speed-up the CPU cost allows.
        let cpu_speedup = one_cpu.map(|c1| t as f64 * c1 / r.cpu_s.max(1e-9));
        let cores_used = r.cpu_s / r.seconds.max(1e-9);
        if args.json {
            println!(
                "{{\"scale_gib\":{},\"threads\":{},\"seconds\":{:.3},\"cpu_s\":{:.3},\"allocs\":{},\"frees\":{},\"nospace\":{},\"ganged\":{},\"allocs_per_s\":{:.0},\"pairs_per_s_per_thread\":{:.0},\"p50_ns\":{},\"p99_ns\":{},\"p999_ns\":{},\"max_ns\":{},\"zfs_frag_pct\":{},\"ceph_frag_score\":{:.4},\"free_segments\":{},\"free_bytes\":{},\"heap_bytes\":{},\"bytes_per_free_segment\":{:.1},\"syncs\":{},\"sync_ms_avg\":{:.2},\"prefill_s\":{:.3},\"speedup_vs_1\":{},\"cpu_speedup_vs_1\":{},\"cores_used\":{:.2},\"sync_wait_s\":{:.3},\"sync_cpu_s\":{:.3},\"loadavg\":\"{}\"}}",
                args.scale, t, r.seconds, r.cpu_s, r.allocs, r.frees, r.nospace, r.ganged, rate, pairs_per_thread,
                r.p50_ns, r.p99_ns, r.p999_ns, r.max_ns, r.zfs_frag, r.ceph_score, r.free_segments,
                r.free_bytes, r.class_heap, per_seg, r.syncs, r.sync_ms_avg, r.prefill_s,
                speedup.map_or("null".to_string(), |s| format!("{s:.3}")),
                cpu_speedup.map_or("null".to_string(), |s| format!("{s:.3}")),
                cores_used,
                r.sync_wait_s,
                r.sync_cpu_s,
                r.loadavg
            );
        } else {
            println!(
                "== {} GiB, {} thread(s), txg sync every {} ops ==",
                args.scale,
                t,
                sync_every(&args)
            );
            println!(
                "prefill (90% in 1-4 MiB, free 5%): {:.2} s; load average at start {}",
                r.prefill_s, r.loadavg
            );
            println!(
                "fragmented phase: {:.2} s for {:.1}x capacity; {} allocs ({} ganged), {} frees, {} ENOSPC",
                r.seconds, args.rewrite, r.allocs, r.ganged, r.frees, r.nospace
            );
            println!(
                "  allocations/s {:.0}; alloc+free pairs/s per thread {:.0} (wall clock)",
                rate, pairs_per_thread
            );
            let pairs = r.allocs.min(r.frees) as f64;
            println!(
                "  worker CPU {:.2} s ({:.2} cores busy of {}): {:.0} alloc+free pairs per CPU-second",
                r.cpu_s,
                cores_used,
                t,
                pairs / r.cpu_s.max(1e-9)
            );
            println!(
                "    of which txg syncs {:.2} s ({:.0} %); alloc/free calls + benchmark loop alone: {:.0} pairs per CPU-second",
                r.sync_cpu_s,
                100.0 * r.sync_cpu_s / r.cpu_s.max(1e-9),
                pairs / (r.cpu_s - r.sync_cpu_s).max(1e-9)
            );
            println!(
                "  alloc latency p50 {} ns, p99 {} ns, p99.9 {} ns, max {} ns",
                r.p50_ns, r.p99_ns, r.p999_ns, r.max_ns
            );
            println!(
                "  txg syncs {} (avg {:.2} ms each, sync+sync_done); workers waited {:.2} s for each other's syncs",
                r.syncs, r.sync_ms_avg, r.sync_wait_s
            );
            println!(
                "  free {} MiB in {} segments; ZFS frag {}%; Ceph score {:.4}",
                r.free_bytes / MIB,
                r.free_segments,
                r.zfs_frag,
                r.ceph_score
            );
            println!(
                "  allocator heap {} MiB = {:.1} bytes per free segment; {} of {} metaslabs with a by-size index; {} index builds",
                r.class_heap / isz(usize::try_from(MIB).unwrap_or(usize::MAX)),
                per_seg,
                r.indexed_ms.0,
                r.indexed_ms.1,
                r.index_builds
            );
            if let (Some(s), Some(c)) = (speedup, cpu_speedup) {
                if t != 1 {
                    println!(
                        "  speed-up over 1 thread: {s:.2}x wall; {c:.2}x by CPU time (what {t} idle cores would give)"
                    );
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{uniform_now, SmallRng};
    use rand::SeedableRng;

    /// Draws `then`-uniform indexes, resolves them for `now` slots and checks every slot got
    /// its `1 / now` share (within 5 %), new slots included.
    fn shares(then: usize, now: usize) {
        let mut rng = SmallRng::seed_from_u64(7);
        let trials = 200_000 * now;
        let mut hits = vec![0usize; now];
        for t in 0..trials {
            let i = t % then.max(1);
            hits[uniform_now(i, then, now, &mut rng)] += 1;
        }
        for (slot, &h) in hits.iter().enumerate() {
            assert!(
                h.abs_diff(200_000) < 10_000,
                "then {then} now {now}: slot {slot} drawn {h} times, want ~200000"
            );
        }
    }

    #[test]
    fn picks_stay_uniform_when_the_vector_changes() {
        shares(10, 10);
        shares(10, 13);
        shares(10, 7);
        shares(0, 3);
    }
}

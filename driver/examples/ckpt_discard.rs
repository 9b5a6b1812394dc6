//! Issue 5's checkpoint-discard benchmark, on a pool of O_DIRECT files (default in /tmp; ext4,
//! not tmpfs).
//!
//! `cargo run --release -p ringpool-driver --example ckpt_discard -- [DIR] [EXTENTS] [LIMIT] [QD] [SECS]`
//!
//! 1. Builds a checkpoint holding EXTENTS (default 1 000 000) extents that never coalesce:
//!    volume "frag" gets 2 x EXTENTS 4 KiB blocks, the pool is checkpointed, every other
//!    block is punched.
//! 2. Starts a foreground 4 KiB random-write load at queue depth QD (default 16; 0 = none) on
//!    volume "fg" (1 GiB, written once beforehand, so every write is an overwrite) and records
//!    each write's latency in an HDR histogram per window: SECS one-second windows (default
//!    10) without a discard, one window while the discard runs (`discard_checkpoint` +
//!    `wait_discard`, memory limit property LIMIT bytes, default 16 MiB), SECS one-second
//!    windows without again. The windows before and after bracket the discard, so drift shows
//!    as a difference between them; the per-window p99s show how much a window of that length
//!    varies on its own.
//! 3. Reports the discard's total time, entries/s and txgs; the process's peak RSS during the
//!    discard (VmHWM reset through /proc/self/clear_refs just before it, VmRSS sampled every
//!    2 ms) against the RSS just before, and the limit; the writes' p50/p99/p99.9, IOPS and
//!    the longest txg sync without / during / without; p99(during) / p99(without), and where
//!    the discard window's p99 ranks among the one-second windows without it.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use ringpool_driver::io::{self, ReactorConfig};
use ringpool_driver::pool::checkpoint::{
    DEFAULT_DISCARD_SYNC_TIME_US, DEFAULT_DISCARD_TXG_WAIT_MS, DISCARD_MEMORY_LIMIT_PROP,
    DISCARD_SYNC_TIME_PROP, DISCARD_TXG_WAIT_PROP,
};
use ringpool_driver::pool::{CheckpointState, CreateOptions, Pool, Volume};

const BS: u64 = 4096;
const FG_BYTES: u64 = 1 << 30;

/// Window 0 is the warm-up; the others are numbered by the main thread (see `Plan`).
const STOP: u32 = u32::MAX;

/// Which windows are which: 1..=secs without, then one per second of the discard (the last
/// one ends with it), then secs more without. The discard's length is known only once it
/// is over, so the first window after it is published then.
#[derive(Debug)]
struct Plan {
    secs: u32,
    /// First window after the discard; `u32::MAX` while it runs.
    after: AtomicU32,
}

impl Plan {
    fn during(&self) -> u32 {
        self.secs + 1
    }
    /// 0 warm-up, 1 before, 2 during, 3 after.
    fn kind(&self, w: u32) -> usize {
        match w {
            0 => 0,
            w if w < self.during() => 1,
            w if w < self.after.load(Ordering::Relaxed) => 2,
            _ => 3,
        }
    }
}

fn rc() -> ReactorConfig {
    ReactorConfig {
        reactors: 1,
        pin: false,
        arena_bytes: 0,
        ..Default::default()
    }
}

/// A field of /proc/self/status in KiB.
fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Writes `[0, len)` of `vol` in 1 MiB writes.
fn fill(vol: &Volume, len: u64) -> anyhow::Result<()> {
    let data = vec![0x5au8; 1 << 20];
    io::block_on(&rc(), async {
        let mut off = 0;
        while off < len {
            let n = (len - off).min(1 << 20);
            vol.write(off, &data[..usize::try_from(n)?], false).await?;
            off += n;
        }
        vol.flush().await?;
        anyhow::Ok(())
    })?
}

/// Punches every other block of `[0, blocks)`, 64 punches in flight.
fn punch_every_other(vol: &Volume, blocks: u64) -> anyhow::Result<()> {
    io::block_on(&rc(), async {
        let lanes = 64u64;
        let tasks: Vec<_> = (0..lanes)
            .map(|lane| {
                let vol = vol.clone();
                io::spawn_local(async move {
                    let mut b = lane * 2;
                    while b < blocks {
                        vol.punch(b * BS, BS, false).await?;
                        b += lanes * 2;
                    }
                    anyhow::Ok(())
                })
            })
            .collect();
        for t in tasks {
            t.await??;
        }
        vol.flush().await?;
        anyhow::Ok(())
    })?
}

/// The foreground load: `qd` writers of random 4 KiB blocks until the window is STOP. Each
/// write is recorded in the histogram of the window it started and ended in (writes that
/// straddle a window change are dropped).
fn foreground(
    vol: Volume,
    qd: usize,
    window: Arc<AtomicU32>,
) -> anyhow::Result<Vec<Histogram<u64>>> {
    let hists: Vec<Histogram<u64>> = Vec::new();
    let hists = Rc::new(RefCell::new(hists));
    let h = Rc::clone(&hists);
    io::block_on(&rc(), async move {
        let blocks = vol.size() / BS;
        let tasks: Vec<_> = (0..qd)
            .map(|i| {
                let vol = vol.clone();
                let window = Arc::clone(&window);
                let h = Rc::clone(&h);
                io::spawn_local(async move {
                    let mut rng = SmallRng::seed_from_u64(i as u64 + 1);
                    let mut buf = io::buf::alloc(usize::try_from(BS)?);
                    buf.fill(u8::try_from(i % 251)?);
                    loop {
                        let w = window.load(Ordering::Relaxed);
                        if w == STOP {
                            return anyhow::Ok(());
                        }
                        let off = rng.random_range(0..blocks) * BS;
                        let t = Instant::now();
                        let (r, b) = vol.write_buf(off, buf, false).await;
                        buf = b;
                        r?;
                        let ns = u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX);
                        if window.load(Ordering::Relaxed) == w {
                            let mut hs = h.borrow_mut();
                            while hs.len() <= w as usize {
                                hs.push(Histogram::new_with_bounds(1, 60_000_000_000, 3)?);
                            }
                            hs[w as usize].saturating_record(ns.max(1));
                        }
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await??;
        }
        anyhow::Ok(())
    })??;
    let out = hists.borrow().clone();
    Ok(out)
}

fn us(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1e3
}

/// What the sampler saw in one phase.
#[derive(Debug, Default, Clone, Copy)]
struct PhaseSample {
    max_rss_kib: u64,
    max_sync: Duration,
    txgs: u64,
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dir = tempfile::tempdir_in(args.first().map_or("/tmp", String::as_str))?;
    let extents: u64 = args.get(1).map_or(Ok(1_000_000), |s| s.parse())?;
    let limit: u64 = args.get(2).map_or(Ok(16 << 20), |s| s.parse())?;
    let qd: usize = args.get(3).map_or(Ok(16), |s| s.parse())?;
    let secs: u32 = args.get(4).map_or(Ok(10), |s| s.parse())?;
    let sync_us: u64 = args
        .get(5)
        .map_or(Ok(DEFAULT_DISCARD_SYNC_TIME_US), |s| s.parse())?;
    let wait_ms: u64 = args
        .get(6)
        .map_or(Ok(DEFAULT_DISCARD_TXG_WAIT_MS), |s| s.parse())?;
    let blocks = extents * 2;
    let path = dir.path().join("dev0");
    // Room for the data, the CoW tree and the foreground volume's churn.
    let dev_size = (blocks * BS + blocks * BS / 4 + 4 * FG_BYTES).next_multiple_of(1 << 30);
    std::fs::File::create(&path)?.set_len(dev_size)?;
    println!(
        "device {} ({} GiB, sparse), {extents} extents, limit {limit} B, sync time {sync_us} us, txg wait {wait_ms} ms, QD {qd}, {secs} s phases",
        path.display(),
        dev_size >> 30
    );
    let pool = Pool::create_paths("bench", &[path], &CreateOptions::default())?;
    pool.set_property(DISCARD_MEMORY_LIMIT_PROP, &limit.to_string())?;
    pool.set_property(DISCARD_SYNC_TIME_PROP, &sync_us.to_string())?;
    pool.set_property(DISCARD_TXG_WAIT_PROP, &wait_ms.to_string())?;
    let frag = pool.create_volume("frag", blocks * BS, 4096)?;
    let fg = pool.create_volume("fg", FG_BYTES, 4096)?;
    let t = Instant::now();
    fill(&frag, blocks * BS)?;
    println!("write {} GiB: {:?}", (blocks * BS) >> 30, t.elapsed());
    let t = Instant::now();
    pool.checkpoint()?;
    println!("checkpoint create: {:?}", t.elapsed());
    let t = Instant::now();
    punch_every_other(&frag, blocks)?;
    pool.sync_blocking()?;
    println!("punch {extents} blocks: {:?}", t.elapsed());
    let held = pool.checkpoint_status().space;
    anyhow::ensure!(
        held >= extents * BS,
        "the checkpoint holds {held} B, expected at least {}",
        extents * BS
    );
    // The foreground volume is born after the checkpoint: its overwrites free normally.
    fill(&fg, FG_BYTES)?;

    let plan = Plan {
        secs,
        after: AtomicU32::new(u32::MAX),
    };
    let plan = &plan;
    let window = Arc::new(AtomicU32::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let samples = Arc::new(parking_lot::Mutex::new([PhaseSample::default(); 4]));
    let (disc_time, txgs, rss_before, hwm, rss_end, last_len, hists) = std::thread::scope(|s| {
        let fgh = (qd > 0).then(|| {
            let vol = fg.clone();
            let w = Arc::clone(&window);
            s.spawn(move || foreground(vol, qd, w))
        });
        // Sampler: per kind of window, the largest RSS and the longest txg sync.
        let sampler = {
            let (window, done, samples, pool) = (&window, &done, &samples, &pool);
            s.spawn(move || {
                let mut last_txgs = pool.sync_stats().txgs;
                while !done.load(Ordering::Relaxed) {
                    let k = plan.kind(window.load(Ordering::Relaxed));
                    let st = pool.sync_stats();
                    let rss = status_kib("VmRSS:");
                    let mut g = samples.lock();
                    g[k].max_rss_kib = g[k].max_rss_kib.max(rss);
                    if st.txgs != last_txgs {
                        g[k].max_sync = g[k].max_sync.max(st.last_sync);
                        g[k].txgs += st.txgs - last_txgs;
                        last_txgs = st.txgs;
                    }
                    drop(g);
                    std::thread::sleep(Duration::from_millis(2));
                }
            })
        };
        let run = || -> anyhow::Result<_> {
            if qd > 0 {
                std::thread::sleep(Duration::from_secs(2));
                for w in 1..=secs {
                    window.store(w, Ordering::Relaxed);
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
            // Peak RSS from here on (5 = reset VmHWM to the current RSS).
            std::fs::write("/proc/self/clear_refs", "5")?;
            let rss_before = status_kib("VmRSS:");
            let t0 = pool.stats().synced_txg;
            window.store(plan.during(), Ordering::Relaxed);
            let t = Instant::now();
            pool.discard_checkpoint()?;
            // One window per second of the discard, the last one cut short by its end.
            let mut w = plan.during();
            let mut win_start = t;
            while pool.checkpoint_status().state != CheckpointState::None {
                if win_start.elapsed() >= Duration::from_secs(1) {
                    w += 1;
                    window.store(w, Ordering::Relaxed);
                    win_start += Duration::from_secs(1);
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            pool.wait_discard()?;
            let last_len = win_start.elapsed();
            let el = t.elapsed();
            let hwm = status_kib("VmHWM:");
            let rss_end = status_kib("VmRSS:");
            let txgs = pool.stats().synced_txg - t0;
            plan.after.store(w + 1, Ordering::Relaxed);
            if qd > 0 {
                for a in w + 1..=w + secs {
                    window.store(a, Ordering::Relaxed);
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
            Ok((el, txgs, rss_before, hwm, rss_end, last_len))
        };
        let r = run();
        window.store(STOP, Ordering::Relaxed);
        let hists = fgh.map(|h| h.join().map_err(|_| anyhow::anyhow!("foreground panicked")));
        done.store(true, Ordering::Relaxed);
        let _ = sampler.join();
        let (el, txgs, rss_before, hwm, rss_end, last_len) = r?;
        let hists = match hists {
            Some(h) => Some(h??),
            None => None,
        };
        anyhow::Ok((el, txgs, rss_before, hwm, rss_end, last_len, hists))
    })?;
    anyhow::ensure!(
        pool.checkpoint_status().space == 0,
        "space still held after the discard"
    );
    let smp = *samples.lock();
    println!(
        "discard: {extents} entries, {held} B held, limit {limit} B: {disc_time:?}, {txgs} txgs, {:.0} entries/s, longest txg sync during it {:?}",
        extents as f64 / disc_time.as_secs_f64(),
        smp[2].max_sync
    );
    println!(
        "memory: RSS {:.1} MiB before the discard, peak {:.1} MiB during it (VmHWM; sampled {:.1}): +{:.1} MiB against a limit of {:.1} MiB; {:.1} MiB right after (+{:.1} MiB kept)",
        mib(rss_before),
        mib(hwm),
        mib(smp[2].max_rss_kib),
        mib(hwm.saturating_sub(rss_before)),
        limit as f64 / f64::from(1u32 << 20),
        mib(rss_end),
        mib(rss_end.saturating_sub(rss_before)),
    );
    if let Some(h) = hists {
        if qd > 0 {
            println!(
                "  (largest RSS sampled in the windows without a discard: {:.1} MiB before, {:.1} MiB after)",
                mib(smp[1].max_rss_kib),
                mib(smp[3].max_rss_kib)
            );
        }
        report(&h, plan, disc_time, last_len, &smp, qd)?;
    }
    pool.export()?;
    Ok(())
}

fn report(
    h: &[Histogram<u64>],
    plan: &Plan,
    disc_time: Duration,
    last_len: Duration,
    smp: &[PhaseSample; 4],
    qd: usize,
) -> anyhow::Result<()> {
    let mut kinds: Vec<Histogram<u64>> = (0..4)
        .map(|_| Histogram::new_with_bounds(1, 60_000_000_000, 3))
        .collect::<Result<_, _>>()?;
    for (w, hh) in h.iter().enumerate() {
        kinds[plan.kind(u32::try_from(w)?)].add(hh)?;
    }
    println!("foreground 4k randwrite QD{qd} (latency in us):");
    println!(
        "  {:<18} {:>9} {:>8} {:>8} {:>8} {:>9} {:>9} {:>5}",
        "phase", "writes", "IOPS", "p50", "p99", "p99.9", "max", "txgs"
    );
    let names = ["", "without (before)", "during discard", "without (after)"];
    for k in 1..4 {
        let hh = &kinds[k];
        let secs_in = if k == 2 {
            disc_time.as_secs_f64()
        } else {
            f64::from(plan.secs)
        };
        println!(
            "  {:<18} {:>9} {:>8.0} {:>8.1} {:>8.1} {:>9.1} {:>9.1} {:>5}  longest sync {:?}",
            names[k],
            hh.len(),
            hh.len() as f64 / secs_in,
            us(hh, 0.5),
            us(hh, 0.99),
            us(hh, 0.999),
            hh.max() as f64 / 1e3,
            smp[k].txgs,
            smp[k].max_sync,
        );
    }
    let mut without = kinds[1].clone();
    without.add(&kinds[3])?;
    let during = &kinds[2];
    println!(
        "  p99 during / without: {:.2}x (goal <= 1.2x); p50 {:.2}x; p99.9 {:.2}x",
        us(during, 0.99) / us(&without, 0.99),
        us(during, 0.5) / us(&without, 0.5),
        us(during, 0.999) / us(&without, 0.999),
    );
    // How much one window varies on its own: the p99 of every one-second window, in ms.
    let p99_of = |kind: usize| -> Vec<f64> {
        h.iter()
            .enumerate()
            .filter(|(w, hh)| plan.kind(u32::try_from(*w).unwrap_or(0)) == kind && !hh.is_empty())
            .map(|(_, hh)| us(hh, 0.99) / 1e3)
            .collect()
    };
    let fmt = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.1}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let (before, dur, after) = (p99_of(1), p99_of(2), p99_of(3));
    println!("  p99 per one-second window (ms):");
    println!("    before: {}", fmt(&before));
    println!(
        "    during: {}  (the last window {:.2} s)",
        fmt(&dur),
        last_len.as_secs_f64()
    );
    println!("    after:  {}", fmt(&after));
    let median = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
    };
    let mut p99s: Vec<f64> = before.iter().chain(&after).copied().collect();
    p99s.sort_by(f64::total_cmp);
    if let (Some(lo), Some(hi)) = (p99s.first(), p99s.last()) {
        let med = median(&p99s);
        let d = us(during, 0.99) / 1e3;
        let above = p99s.iter().filter(|&&x| x >= d).count();
        println!(
            "  without: min {lo:.1}, median {med:.1}, max {hi:.1} ms; p99 during / median window {:.2}x; \
             {above} of {} windows without at or above it; median window during / without {:.2}x",
            d / med,
            p99s.len(),
            median(&dur) / med
        );
    }
    Ok(())
}

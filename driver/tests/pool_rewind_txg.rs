//! A rewind at import (`-T` max txg, `-F` recovery, `--rewind-to-checkpoint`) leaves newer
//! uberblocks in the label rings. Their blocks are free in the rewound state and get reused,
//! so they must never be selected again: the import renumbers the rewound uberblock above
//! every uberblock seen and writes it durably before anything else (the point of no return),
//! and every later txg is numbered above it. Each test rewinds, commits new data, then imports
//! crash images taken at every flush of the rewind import and of the commit: the state the
//! user rewound away from must never come back, and `verify` must stay clean (no block of a
//! live state reused).

mod pool_common;

use pool_common::ckpt::{read, write, BS, DEV, LEN};
use pool_common::{copts_with, engines, iopts_with, pattern, popts_with};
use ringpool_driver::io::{CrashMode, FaultyEngine};
use ringpool_driver::pool::{CheckpointState, ImportOptions, Pool, PoolOptions};

/// A long sync timer: the tests decide when txgs commit.
fn popts() -> PoolOptions {
    popts_with(10_000, 2)
}

fn iopts() -> ImportOptions {
    ImportOptions {
        force: true,
        ..iopts_with(popts())
    }
}

/// Seeds of the data patterns written to volume "v".
const A: u64 = 11;
const B: u64 = 12;
const C: u64 = 13;

/// What a crash image holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    /// The state rewound to.
    Rewound,
    /// The state rewound away from.
    Abandoned,
    /// The rewound state plus the commit made after the import.
    After,
}

/// Crash points: the start, every flush and the event just before it, `marks`, the end.
fn crash_points(dev: &FaultyEngine, marks: &[usize]) -> Vec<usize> {
    let mut p: Vec<usize> = dev
        .flush_points()
        .into_iter()
        .flat_map(|f| [f.saturating_sub(1), f, f + 1])
        .collect();
    p.extend(marks);
    p.extend([0, dev.event_count()]);
    p.sort_unstable();
    p.dedup();
    p
}

/// Imports every crash image of `dev` (both power-loss modes) and classifies it. Crash points
/// at or after `no_return` (the rewind import returned) must never show the abandoned state;
/// from `committed` on (the post-rewind commit returned) only the committed state.
fn check_crashes(
    dev: &FaultyEngine,
    no_return: usize,
    committed: usize,
    classify: impl Fn(&Pool) -> anyhow::Result<Seen>,
) -> anyhow::Result<[usize; 3]> {
    let mut counts = [0usize; 3];
    for at in crash_points(dev, &[no_return, committed]) {
        for seed in 0..2u64 {
            let mode = CrashMode {
                drop_unflushed_subset: seed == 1,
                tear_writes: seed == 1,
            };
            let img = vec![FaultyEngine::from_image(
                dev.crash_image(at, seed, mode),
                BS,
            )];
            let p = Pool::import(engines(&img), &iopts())
                .map_err(|e| anyhow::anyhow!("crash at event {at} seed {seed}: import: {e}"))?;
            let seen = classify(&p)
                .map_err(|e| anyhow::anyhow!("crash at event {at} seed {seed}: {e}"))?;
            let rep = p.verify()?;
            anyhow::ensure!(
                rep.is_clean(),
                "crash at event {at} seed {seed} ({seen:?}): verify {:?}",
                rep.errors
            );
            if at >= no_return {
                anyhow::ensure!(
                    seen != Seen::Abandoned,
                    "crash at event {at} seed {seed} (rewind import returned at {no_return}): \
                     the abandoned state came back"
                );
            }
            if at >= committed {
                anyhow::ensure!(
                    seen == Seen::After,
                    "crash at event {at} seed {seed} (commit returned at {committed}): {seen:?}"
                );
            }
            if at == no_return {
                anyhow::ensure!(
                    seen == Seen::Rewound,
                    "crash right after the rewind import: {seen:?}"
                );
            }
            counts[seen as usize] += 1;
            p.abandon();
        }
    }
    Ok(counts)
}

/// Volume "v" holds pattern A (txg `t_a`), then eight more txgs overwrite it with B and add
/// volume "late"; exported. Returns (devices, t_a).
fn two_states() -> anyhow::Result<(Vec<FaultyEngine>, u64)> {
    let devs = vec![FaultyEngine::new(DEV, BS)];
    let pool = Pool::create("tank", engines(&devs), &copts_with(popts()))?;
    pool.create_volume("v", 8 << 20, BS)?;
    write(&pool, "v", 0, &pattern(A, LEN))?;
    pool.sync_blocking()?;
    let t_a = pool.last_uberblock().map_or(0, |u| u.txg);
    pool.create_volume("late", 1 << 20, BS)?;
    for i in 0..8u64 {
        // Different offsets too, so the abandoned state allocates well past the rewound one.
        write(&pool, "v", i * LEN as u64, &pattern(B + i * 100, LEN))?;
        write(&pool, "v", 0, &pattern(B, LEN))?;
        pool.sync_blocking()?;
    }
    pool.export()?;
    Ok((devs, t_a))
}

fn classify_v(p: &Pool) -> anyhow::Result<Seen> {
    let d = read(p, "v", 0, LEN)?;
    let late = p.open_volume("late").is_ok();
    if d == pattern(B, LEN) && late {
        return Ok(Seen::Abandoned);
    }
    anyhow::ensure!(!late, "volume 'late' exists without state B");
    if d == pattern(A, LEN) {
        Ok(Seen::Rewound)
    } else if d == pattern(C, LEN) {
        Ok(Seen::After)
    } else {
        anyhow::bail!("volume v holds neither A, B nor C")
    }
}

/// `-T`: rewind to an older txg, commit, crash anywhere: never state B again.
#[test]
fn max_txg_rewind_never_comes_back() -> anyhow::Result<()> {
    let (devs, t_a) = two_states()?;
    let dev = &devs[0];
    dev.reset_log();
    let pool = Pool::import(
        engines(&devs),
        &ImportOptions {
            max_txg: Some(t_a),
            ..iopts()
        },
    )?;
    assert_eq!(classify_v(&pool)?, Seen::Rewound);
    let newest = pool.last_uberblock().map_or(0, |u| u.txg);
    assert!(newest > t_a + 8, "renumbered above B's txgs: {newest}");
    let no_return = dev.event_count();
    write(&pool, "v", 0, &pattern(C, LEN))?;
    pool.sync_blocking()?;
    let committed = dev.event_count();
    pool.abandon();
    let c = check_crashes(dev, no_return, committed, classify_v)?;
    assert!(
        c[Seen::Rewound as usize] > 0 && c[Seen::After as usize] > 0,
        "{c:?}"
    );
    assert!(
        c[Seen::Abandoned as usize] > 0,
        "crashes inside the import: {c:?}"
    );
    Ok(())
}

/// `-F`: the newest state's root block is damaged, recovery loads an older one; same rules.
#[test]
fn recovery_rewind_never_comes_back() -> anyhow::Result<()> {
    let (devs, _t_a) = two_states()?;
    let dev = &devs[0];
    // The newest uberblock's root block (a read-only import writes nothing).
    let ro = Pool::import(
        engines(&devs),
        &ImportOptions {
            read_only: true,
            ..iopts()
        },
    )?;
    let newest = ro.last_uberblock().expect("uberblock");
    ro.export()?;
    let root = newest.root.dva().copied().expect("root block");
    dev.flip_bit(root.offset + 100, 3);
    let e = Pool::import(engines(&devs), &iopts()).unwrap_err();
    assert!(e.is_checksum(), "{e}");
    dev.reset_log();
    let pool = Pool::import(
        engines(&devs),
        &ImportOptions {
            rewind: true,
            ..iopts()
        },
    )?;
    let t = pool.last_uberblock().map_or(0, |u| u.txg);
    assert!(t > newest.txg, "renumbered above the damaged txg: {t}");
    // The previous txg still held B: recovery lost one txg, not the rewind's point.
    let no_return = dev.event_count();
    write(&pool, "v", 0, &pattern(C, LEN))?;
    pool.sync_blocking()?;
    let committed = dev.event_count();
    pool.abandon();
    // Without the damaged state nothing else can come back: every crash image imports plain
    // (no -F) and shows B (the recovered state) before the commit, C after it.
    for at in crash_points(dev, &[no_return, committed]) {
        for seed in 0..2u64 {
            let mode = CrashMode {
                drop_unflushed_subset: seed == 1,
                tear_writes: seed == 1,
            };
            let img = vec![FaultyEngine::from_image(
                dev.crash_image(at, seed, mode),
                BS,
            )];
            let plain = Pool::import(engines(&img), &iopts());
            if at < no_return {
                // Before the point of no return only the damaged state may be found.
                if let Ok(p) = plain {
                    p.abandon();
                }
                continue;
            }
            let p = plain
                .map_err(|e| anyhow::anyhow!("crash at {at} seed {seed}: plain import: {e}"))?;
            let d = read(&p, "v", 0, LEN)?;
            let want = if at >= committed { C } else { B };
            if at >= committed || at == no_return {
                anyhow::ensure!(d == pattern(want, LEN), "crash at {at} seed {seed}");
            } else {
                anyhow::ensure!(
                    d == pattern(B, LEN) || d == pattern(C, LEN),
                    "crash at {at} seed {seed}"
                );
            }
            let rep = p.verify()?;
            anyhow::ensure!(rep.is_clean(), "crash at {at}: {:?}", rep.errors);
            p.abandon();
        }
    }
    Ok(())
}

/// `--rewind-to-checkpoint` from an older txg (`-T`): the checkpoint's rewritten uberblock
/// and every txg after it are above the newer states that still hold the checkpoint.
#[test]
fn checkpoint_rewind_below_newest_never_comes_back() -> anyhow::Result<()> {
    let devs = vec![FaultyEngine::new(DEV, BS)];
    let pool = Pool::create("tank", engines(&devs), &copts_with(popts()))?;
    pool.create_volume("v", 8 << 20, BS)?;
    write(&pool, "v", 0, &pattern(A, LEN))?;
    pool.sync_blocking()?;
    pool.checkpoint()?;
    pool.create_volume("late", 1 << 20, BS)?;
    write(&pool, "v", 0, &pattern(B + 1, LEN))?;
    pool.sync_blocking()?;
    let t_mid = pool.last_uberblock().map_or(0, |u| u.txg);
    for i in 0..8u64 {
        write(&pool, "v", (i + 1) * LEN as u64, &pattern(B + i * 100, LEN))?;
        write(&pool, "v", 0, &pattern(B, LEN))?;
        pool.sync_blocking()?;
    }
    pool.export()?;
    let dev = &devs[0];
    dev.reset_log();
    let pool = Pool::import(
        engines(&devs),
        &ImportOptions {
            rewind_to_checkpoint: true,
            max_txg: Some(t_mid),
            ..iopts()
        },
    )?;
    assert_eq!(classify_v(&pool)?, Seen::Rewound);
    assert_eq!(pool.checkpoint_status().state, CheckpointState::None);
    let no_return = dev.event_count();
    write(&pool, "v", 0, &pattern(C, LEN))?;
    pool.sync_blocking()?;
    let committed = dev.event_count();
    pool.abandon();
    let c = check_crashes(dev, no_return, committed, |p| {
        let s = classify_v(p)?;
        let ck = p.checkpoint_status().state;
        anyhow::ensure!(
            (s == Seen::Abandoned) == (ck == CheckpointState::Exists),
            "{s:?} with checkpoint {ck:?}"
        );
        Ok(s)
    })?;
    assert!(
        c[Seen::Rewound as usize] > 0 && c[Seen::After as usize] > 0,
        "{c:?}"
    );
    Ok(())
}

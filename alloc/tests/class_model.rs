//! Model test: random sequences of alloc, free (whole and partial), free-now, txg sync /
//! sync_done (with allocations and frees continuing in the next open txg while one syncs),
//! checkpoint create, incremental checkpoint discard and reload-from-space-map, checked against
//! a plain per-unit model.
//!
//! Checked after every step: nothing is handed out twice (every allocation lies on model-free
//! units), a checkpointed block is never handed out while the checkpoint holds it, space is
//! conserved (class stats = model counts), the class invariants hold (`verify`), and a `NoSpace`
//! is only returned when the model agrees there is no room outside the slop reserve. At reload
//! points, replaying the emitted space-map records into a fresh class gives exactly the model's
//! on-disk free set, and the checkpoint map passes the I1/I2 check against it.

use std::collections::HashMap;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use ringpool_alloc::class::ACCOUNTING_BATCH;
use ringpool_alloc::{
    AllocClass, AllocError, ClassConfig, DeviceSpec, Extent, MetaslabClass, MetaslabConfig,
    SmAction, SmRecord,
};

const UNIT: u64 = 4096;
const DEV_START: u64 = 1 << 20;
const DEV_SIZE: u64 = 8 << 20;
const MS_SHIFT: u32 = 20;
const SHARDS: usize = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum St {
    Free,
    /// allocated, born in txg
    Live(u64),
    /// freed in the open txg (queued); born in txg
    Pending(u64),
    /// free on disk, allocatable after sync_done(ready)
    Deferred(u64),
    /// held by the checkpoint
    Held,
}

struct Model {
    devs: u32,
    units: Vec<Vec<St>>,
    live: Vec<(Extent, u64)>,
    /// frees queued per txg: (extent, birth)
    queued: HashMap<u64, Vec<(Extent, u64)>>,
    /// the per-device checkpoint space map (FREE records), in append order
    ckpt_log: Vec<Vec<SmRecord>>,
    /// per (dev, ms) space-map log
    sm_log: HashMap<(u32, u64), Vec<SmRecord>>,
    open: u64,
    syncing: Option<u64>,
    last_done: u64,
    ckpt_txg: u64,
    discarding: bool,
    want_checkpoint: bool,
    want_discard: bool,
    /// Double frees injected into the open txg (each must fail its sync once).
    bad_frees: u64,
    seen: Seen,
}

/// What a run exercised (asserted non-zero over all seeds so the test cannot pass vacuously).
#[derive(Debug, Default, Clone, Copy)]
struct Seen {
    checkpoints: u64,
    held_bytes: u64,
    discarded: u64,
    condenses: u64,
    nospace: u64,
    reloads: u64,
    free_now: u64,
    double_frees: u64,
}

impl Model {
    fn idx(e: &Extent) -> (usize, usize, usize) {
        let first = usize::try_from((e.start - DEV_START) / UNIT).unwrap();
        let n = usize::try_from(e.len / UNIT).unwrap();
        (e.dev as usize, first, first + n)
    }

    fn set(&mut self, e: &Extent, s: St) {
        let (d, a, b) = Self::idx(e);
        for u in &mut self.units[d][a..b] {
            *u = s;
        }
    }

    fn count(&self, pred: impl Fn(St) -> bool) -> u64 {
        self.units.iter().flatten().filter(|&&s| pred(s)).count() as u64 * UNIT
    }

    /// Largest run of free units inside one metaslab.
    fn largest_free_run(&self) -> u64 {
        let per_ms = usize::try_from((1u64 << MS_SHIFT) / UNIT).unwrap();
        let mut best = 0u64;
        for dev in &self.units {
            for ms in dev.chunks(per_ms) {
                let mut run = 0u64;
                for &s in ms {
                    if s == St::Free {
                        run += UNIT;
                        best = best.max(run);
                    } else {
                        run = 0;
                    }
                }
            }
        }
        best
    }
}

/// `bitmaps`: every metaslab's free segments are kept as a bitmap whenever it has any
/// (`compact_density` saturating), instead of only when dense and numerous.
fn new_class(bitmaps: bool) -> MetaslabClass {
    let dense = MetaslabConfig::default();
    let c = MetaslabClass::new(ClassConfig {
        shards: SHARDS,
        slop_min: 64 << 10,
        metaslab: MetaslabConfig {
            condense_min_bytes: 512,
            df_alloc_threshold: 64 << 10,
            compact_density: if bitmaps {
                u64::MAX
            } else {
                dense.compact_density
            },
            compact_min_segments: if bitmaps {
                1
            } else {
                dense.compact_min_segments
            },
            ..dense
        },
        ..ClassConfig::default()
    });
    for dev in 0..2 {
        c.add_device(DeviceSpec {
            dev,
            start: DEV_START,
            end: DEV_START + DEV_SIZE,
            ashift: 12,
            ms_shift: MS_SHIFT,
        })
        .unwrap();
    }
    c
}

fn apply_sync_output(m: &mut Model, out: &ringpool_alloc::ClassSyncOutput) -> (u64, u64) {
    let mut alloc = 0;
    let mut ck = 0;
    for d in &out.devices {
        for (i, o) in &d.metaslabs {
            let log = m.sm_log.entry((d.dev, *i)).or_default();
            if o.condensed {
                log.clear();
            }
            for r in &o.sm_records {
                let ms_start = DEV_START + (*i << MS_SHIFT);
                assert!(
                    r.start >= ms_start && r.end() <= ms_start + (1 << MS_SHIFT),
                    "I9"
                );
                if r.action == SmAction::Alloc && !o.condensed {
                    alloc += r.len;
                }
            }
            log.extend_from_slice(&o.sm_records);
            assert!(o.ckpt_records.is_empty(), "moved to the device list");
        }
        for r in &d.ckpt_records {
            assert_eq!(r.action, SmAction::Free);
            ck += r.len;
        }
        m.ckpt_log[d.dev as usize].extend_from_slice(&d.ckpt_records);
    }
    (alloc, ck)
}

/// Replay the emitted maps into a fresh class and compare with the model's on-disk free set.
fn reload_and_compare(m: &Model, c: &MetaslabClass, bitmaps: bool) {
    let fresh = new_class(bitmaps);
    for (&(dev, i), log) in &m.sm_log {
        fresh
            .load_metaslab(dev, usize::try_from(i).unwrap(), log.iter().copied())
            .unwrap();
    }
    for dev in 0..m.devs {
        let mut disk_free = vec![false; m.units[dev as usize].len()];
        fresh
            .walk_free(dev, |s, l| {
                let e = Extent {
                    dev,
                    start: s,
                    len: l,
                };
                let (_, a, b) = Model::idx(&e);
                disk_free[a..b].iter_mut().for_each(|x| *x = true);
            })
            .unwrap();
        for (u, &s) in m.units[dev as usize].iter().enumerate() {
            // Free on disk: free, deferred, or allocated in a txg not yet synced.
            let expect = match s {
                St::Free | St::Deferred(_) => true,
                St::Live(b) | St::Pending(b) => b > m.last_done && Some(b) != m.syncing,
                St::Held => false,
            };
            assert_eq!(
                disk_free[u], expect,
                "dev {dev} unit {u} model {s:?} after reload"
            );
        }
        let held = fresh
            .load_checkpoint_map(dev, m.ckpt_log[dev as usize].iter().copied())
            .unwrap();
        assert_eq!(held, c.group(dev).unwrap().checkpoint_space());
    }
    fresh.verify().unwrap();
}

fn check_stats(m: &Model, c: &MetaslabClass) {
    let st = c.stats();
    assert_eq!(st.total.free, m.count(|s| s == St::Free), "free");
    assert_eq!(
        st.total.deferred,
        m.count(|s| matches!(s, St::Deferred(_))),
        "deferred"
    );
    assert_eq!(
        st.total.checkpointed,
        m.count(|s| s == St::Held),
        "checkpointed"
    );
    let ck: u64 = m.ckpt_log.iter().flatten().map(|r| r.len).sum();
    assert_eq!(st.total.checkpointed, ck, "I5");
    c.verify().unwrap();
}

fn sync_start(m: &mut Model, c: &MetaslabClass, rng: &mut SmallRng) {
    let s = m.open;
    // Early sync tasks.
    if m.want_checkpoint && m.ckpt_txg == 0 && !m.discarding {
        m.ckpt_txg = m.last_done;
        c.set_checkpoint_txg(m.ckpt_txg);
        m.seen.checkpoints += 1;
        m.want_checkpoint = false;
    }
    if m.want_discard && m.ckpt_txg != 0 {
        m.ckpt_txg = 0;
        c.clear_checkpoint_txg();
        m.discarding = true;
        m.want_discard = false;
    }
    let mut discarded = Vec::new();
    if m.discarding {
        // Incremental destroy from the end of each map, a small budget per txg.
        let budget = rng.random_range(1..6);
        for dev in 0..m.devs {
            for _ in 0..budget {
                let Some(r) = m.ckpt_log[dev as usize].pop() else {
                    break;
                };
                c.discard_checkpoint_extent(dev, r.start, r.len).unwrap();
                discarded.push(Extent {
                    dev,
                    start: r.start,
                    len: r.len,
                });
                m.seen.discarded += r.len;
            }
        }
        if m.ckpt_log.iter().all(Vec::is_empty) {
            m.discarding = false;
        }
    }
    // Bytes allocated in s that went through the txg (live, or freed again but not free-now).
    let born_s: u64 = m
        .live
        .iter()
        .filter(|(_, b)| *b == s)
        .map(|(e, _)| e.len)
        .sum::<u64>()
        + m.queued.get(&s).map_or(0, |v| {
            v.iter().filter(|(_, b)| *b == s).map(|(e, _)| e.len).sum()
        });
    // Each injected double free fails one sync attempt (dropped from the queue, nothing synced).
    let mut refused = 0;
    let out = loop {
        match c.sync(s) {
            Ok(out) => break out,
            Err(AllocError::DoubleFree { .. }) => {
                refused += 1;
                assert!(refused <= m.bad_frees, "unexpected double free at sync {s}");
                c.verify().unwrap();
            }
            Err(e) => panic!("sync {s}: {e}"),
        }
    };
    assert_eq!(
        refused, m.bad_frees,
        "every injected double free refused at sync {s}"
    );
    m.seen.double_frees += refused;
    m.bad_frees = 0;
    let (alloc_bytes, ck_bytes) = apply_sync_output(m, &out);
    let condensed = out
        .devices
        .iter()
        .any(|d| d.metaslabs.iter().any(|x| x.1.condensed));
    if condensed {
        m.seen.condenses += 1;
    } else {
        assert_eq!(alloc_bytes, born_s, "ALLOC records of txg {s}");
    }
    // Model routing of the txg's frees.
    let mut expect_ck = 0;
    for (e, birth) in m.queued.remove(&s).unwrap_or_default() {
        let held = m.ckpt_txg != 0 && birth <= m.ckpt_txg && s > m.ckpt_txg;
        if held {
            expect_ck += e.len;
            m.set(&e, St::Held);
        } else {
            m.set(&e, St::Deferred(s + 2));
        }
    }
    for e in discarded {
        m.set(&e, St::Deferred(s + 2));
    }
    assert_eq!(ck_bytes, expect_ck, "checkpoint routing of txg {s}");
    m.seen.held_bytes += ck_bytes;
    m.syncing = Some(s);
    m.open = s + 1;
}

fn sync_done(m: &mut Model, c: &MetaslabClass) {
    let Some(s) = m.syncing.take() else { return };
    c.sync_done(s).unwrap();
    m.last_done = s;
    for dev in &mut m.units {
        for u in dev.iter_mut() {
            if let St::Deferred(r) = *u {
                if r <= s {
                    *u = St::Free;
                }
            }
        }
    }
}

fn run(seed: u64, steps: usize, bitmaps: bool) -> Seen {
    let mut rng = SmallRng::seed_from_u64(seed);
    let c = new_class(bitmaps);
    let units = usize::try_from(DEV_SIZE / UNIT).unwrap();
    let mut m = Model {
        devs: 2,
        units: vec![vec![St::Free; units]; 2],
        live: Vec::new(),
        queued: HashMap::new(),
        ckpt_log: vec![Vec::new(), Vec::new()],
        sm_log: HashMap::new(),
        open: 4,
        syncing: None,
        last_done: 3,
        ckpt_txg: 0,
        discarding: false,
        want_checkpoint: false,
        want_discard: false,
        bad_frees: 0,
        seen: Seen::default(),
    };
    let slop = c.slop_space();
    for step in 0..steps {
        let r = rng.random_range(0..100);
        match r {
            0..=44 => {
                let size = UNIT * rng.random_range(1..=16u64);
                let shard = rng.random_range(0..SHARDS);
                let kind = if rng.random_range(0..10) == 0 {
                    AllocClass::Reserved
                } else {
                    AllocClass::Normal
                };
                match c.alloc(size, m.open, shard, kind) {
                    Ok(e) => {
                        assert_eq!(e.len, size);
                        let (d, a, b) = Model::idx(&e);
                        for u in a..b {
                            assert_eq!(
                                m.units[d][u],
                                St::Free,
                                "seed {seed} step {step}: handed out a non-free unit {e:?}"
                            );
                        }
                        m.set(&e, St::Live(m.open));
                        m.live.push((e, m.open));
                    }
                    Err(AllocError::NoSpace { .. }) => {
                        m.seen.nospace += 1;
                        let free = m.count(|s| s == St::Free);
                        let run = m.largest_free_run();
                        let slop_ok = kind == AllocClass::Normal
                            && free < slop + size + SHARDS as u64 * ACCOUNTING_BATCH as u64;
                        assert!(
                            run < size || slop_ok,
                            "seed {seed} step {step}: NoSpace for {size} with run {run}, free {free}"
                        );
                    }
                    Err(e) => panic!("seed {seed} step {step}: {e}"),
                }
            }
            45..=74 => {
                if m.live.is_empty() {
                    continue;
                }
                let i = rng.random_range(0..m.live.len());
                let (e, birth) = m.live.swap_remove(i);
                // Free a piece (the rest stays live) or the whole extent.
                let units = e.len / UNIT;
                let (piece, rest) = if units > 1 && rng.random_bool(0.5) {
                    let off = rng.random_range(0..units);
                    let len = rng.random_range(1..=units - off);
                    let p = Extent {
                        dev: e.dev,
                        start: e.start + off * UNIT,
                        len: len * UNIT,
                    };
                    let mut rest = Vec::new();
                    if off > 0 {
                        rest.push(Extent {
                            dev: e.dev,
                            start: e.start,
                            len: off * UNIT,
                        });
                    }
                    if off + len < units {
                        rest.push(Extent {
                            dev: e.dev,
                            start: p.start + p.len,
                            len: (units - off - len) * UNIT,
                        });
                    }
                    (p, rest)
                } else {
                    (e, Vec::new())
                };
                for r in rest {
                    m.live.push((r, birth));
                }
                if birth == m.open && rng.random_bool(0.5) {
                    c.free_now(piece, m.open).unwrap();
                    m.seen.free_now += 1;
                    m.set(&piece, St::Free);
                } else {
                    c.free(piece, birth, m.open).unwrap();
                    m.set(&piece, St::Pending(birth));
                    m.queued.entry(m.open).or_default().push((piece, birth));
                    // A second free of the same range is queued and refused by the txg's
                    // sync, never silent.
                    if rng.random_bool(0.3) {
                        c.free(piece, birth, m.open).unwrap();
                        m.bad_frees += 1;
                    }
                }
            }
            75..=84 => {
                if m.syncing.is_none() {
                    sync_start(&mut m, &c, &mut rng);
                } else {
                    sync_done(&mut m, &c);
                }
            }
            85..=89 => {
                sync_done(&mut m, &c);
                sync_start(&mut m, &c, &mut rng);
                sync_done(&mut m, &c);
            }
            90..=92 => {
                if m.ckpt_txg == 0 && !m.discarding {
                    m.want_checkpoint = true;
                }
            }
            93..=94 => {
                if m.ckpt_txg != 0 {
                    m.want_discard = true;
                } else {
                    // Inject a double free of a unit that is free or deferred.
                    let dev = rng.random_range(0..m.devs);
                    let u = rng.random_range(0..m.units[dev as usize].len());
                    // Sync right away: an allocation of the unit in between would make the
                    // queued free look legitimate.
                    if m.syncing.is_none()
                        && matches!(m.units[dev as usize][u], St::Free | St::Deferred(_))
                    {
                        let bad = Extent {
                            dev,
                            start: DEV_START + u as u64 * UNIT,
                            len: UNIT,
                        };
                        c.free(bad, 1, m.open).unwrap();
                        m.bad_frees += 1;
                        sync_start(&mut m, &c, &mut rng);
                    }
                }
            }
            _ => {
                if m.syncing.is_none() {
                    reload_and_compare(&m, &c, bitmaps);
                    m.seen.reloads += 1;
                }
            }
        }
        check_stats(&m, &c);
        // Checkpointed extents stay allocated in their metaslabs (I1/I2).
        for dev in 0..m.devs {
            c.verify_checkpoint_extents(dev, m.ckpt_log[dev as usize].iter().copied())
                .unwrap();
        }
    }
    sync_done(&mut m, &c);
    for _ in 0..3 {
        sync_start(&mut m, &c, &mut rng);
        sync_done(&mut m, &c);
    }
    c.verify_quiesced().unwrap();
    reload_and_compare(&m, &c, bitmaps);
    m.seen
}

#[test]
fn model_random_sequences() {
    model_random_sequences_with(false);
}

/// The same with every metaslab's free space kept as a bitmap (`RangeTree::compact`).
#[test]
fn model_random_sequences_bitmaps() {
    model_random_sequences_with(true);
}

fn model_random_sequences_with(bitmaps: bool) {
    let seeds: u64 = std::env::var("ALLOC_MODEL_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(12);
    let mut total = Seen::default();
    for seed in 0..seeds {
        let s = run(seed, 2500, bitmaps);
        total.checkpoints += s.checkpoints;
        total.held_bytes += s.held_bytes;
        total.discarded += s.discarded;
        total.condenses += s.condenses;
        total.nospace += s.nospace;
        total.reloads += s.reloads;
        total.free_now += s.free_now;
        total.double_frees += s.double_frees;
    }
    println!("{total:?}");
    assert!(total.checkpoints > 0 && total.held_bytes > 0 && total.discarded > 0);
    assert!(total.condenses > 0 && total.nospace > 0 && total.reloads > 0 && total.free_now > 0);
    assert!(total.double_frees > 0);
}

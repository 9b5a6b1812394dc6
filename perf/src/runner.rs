//! Running one workload against one target: plan (probe, validate, prefill), start one pinned
//! reactor per job, keep `qd` I/Os in flight per job, collect the per-second intervals and the
//! final histograms.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant, SystemTime};

use ringpool_driver::io::{
    buf, ring_stats, sleep, spawn_local, yield_now, IoBuf, ReactorConfig, ReactorSet, RingStats,
};

use crate::cli::WorkloadArgs;
use crate::error::PerfError;
use crate::intervals::{Collector, IntervalSummary, JobMsg, INTERVAL};
use crate::stats::{new_interval_hist, record, Cpu, Hist, OpStats};
use crate::target::{AnyConn, Conn, TargetInfo, TargetSpec};
use crate::verify::Verifier;
use crate::workload::{Dist, Generator, OpKind, Pattern};

/// Everything decided before the clock starts.
#[derive(Debug, Clone)]
pub struct RunPlan {
    /// The `--target` string.
    pub label: String,
    pub spec: Arc<TargetSpec>,
    pub info: TargetInfo,
    pub w: WorkloadArgs,
    pub pattern: Pattern,
    /// (start, length) of each job's region.
    pub regions: Vec<(u64, u64)>,
    /// Verify unit (the smallest block size).
    pub unit: u64,
    /// Random id stamped into verify headers.
    pub run_id: u64,
    /// The job rings' submit batch in force (`--submit-batch`, or the target's default).
    pub submit_batch: usize,
}

/// What one job measured.
#[derive(Debug, Clone)]
pub struct JobOutcome {
    pub job: u32,
    pub core: Option<usize>,
    pub stats: OpStats,
    /// Thread CPU time of the job's reactor during the run.
    pub cpu: Cpu,
    /// Length of the measured window.
    pub measured: Duration,
    pub first_errors: Vec<String>,
    /// The job ring's submission counters over the run (ramp included).
    pub ring: RingStats,
}

/// What a run measured.
#[derive(Debug)]
pub struct RunOutcome {
    pub plan: RunPlan,
    pub jobs: Vec<JobOutcome>,
    pub total: OpStats,
    pub measured: Duration,
    /// Process CPU time (all threads) during the run.
    pub process_cpu: Cpu,
    pub intervals: Vec<IntervalSummary>,
    pub interval_hists: Vec<Hist>,
    pub start_wall: SystemTime,
}

/// Probes the target, validates the workload against it and prefills the region.
pub fn plan(target: &str, w: &WorkloadArgs) -> Result<RunPlan, PerfError> {
    let cfg = |m: String| PerfError::Config(m);
    if w.jobs == 0 || w.qd == 0 {
        return Err(cfg("--jobs and --qd must be at least 1".into()));
    }
    let split = w.block_sizes().map_err(cfg)?;
    let dist = Dist::parse(&w.dist).map_err(cfg)?;
    let pattern = Pattern::new(w.rw, w.rwmixread, &split, dist);
    let spec = TargetSpec::parse(target, w)?;
    let info = spec.probe(w)?;
    for &(bs, _) in &split {
        if bs % info.block != 0 || bs % pattern.align != 0 {
            return Err(cfg(format!(
                "block size {bs} must be a multiple of the target's block size {} and of the smallest block size {}",
                info.block, pattern.align
            )));
        }
    }
    if !w.offset.is_multiple_of(info.block) {
        return Err(cfg(format!(
            "--offset {} is not a multiple of the target's block size {}",
            w.offset, info.block
        )));
    }
    let avail = info.size.saturating_sub(w.offset);
    let size = w.size.unwrap_or(avail);
    if size > avail {
        return Err(cfg(format!(
            "--offset {} + --size {size} exceeds the target size {}",
            w.offset, info.size
        )));
    }
    let size = size - size % pattern.align;
    // Sequential patterns and verify mode give every job its own slice (as fio's
    // offset_increment); random patterns share the whole region.
    let split_region = w.verify || !w.rw.is_random();
    let jobs = u64::from(w.jobs);
    let mut regions = Vec::new();
    for j in 0..jobs {
        if split_region {
            let per = size / jobs / pattern.align * pattern.align;
            regions.push((w.offset + j * per, per));
        } else {
            regions.push((w.offset, size));
        }
    }
    let max_bs = pattern.max_bs();
    let min_len = if w.verify {
        // Room for every in-flight I/O plus slack, so busy-range retries terminate.
        max_bs * u64::from(w.qd) * 4
    } else {
        max_bs
    };
    if regions.iter().any(|r| r.1 < min_len) {
        return Err(cfg(format!(
            "region of {size} bytes is too small for {} job(s) with block size {max_bs}{}",
            w.jobs,
            if w.verify {
                " and this queue depth in verify mode"
            } else {
                ""
            }
        )));
    }
    let run_id = rand::random::<u64>() | 1;
    spec.prepare(w, (w.offset, size), pattern.align, run_id)?;
    let submit_batch = w
        .submit_batch
        .unwrap_or_else(|| spec.default_submit_batch());
    Ok(RunPlan {
        label: target.to_string(),
        spec: Arc::new(spec),
        info,
        w: w.clone(),
        unit: pattern.align,
        pattern,
        regions,
        run_id,
        submit_batch,
    })
}

/// Runs a plan; `on_interval` sees every merged second as it completes (progress lines).
pub fn run(
    plan: RunPlan,
    mut on_interval: impl FnMut(&IntervalSummary),
) -> Result<RunOutcome, PerfError> {
    let w = &plan.w;
    let jobs = w.jobs;
    let njobs = usize::try_from(jobs).map_err(|_| PerfError::Config("too many jobs".into()))?;
    let max_bs = usize::try_from(plan.pattern.max_bs()).unwrap_or(usize::MAX);
    let qd = usize::try_from(w.qd).unwrap_or(usize::MAX);
    let entries = u32::try_from((qd * 2).clamp(64, 4096)).unwrap_or(4096);
    let cfg = ReactorConfig {
        reactors: njobs,
        // Pinned by the job itself, to honour --cpus.
        pin: false,
        entries,
        arena_bytes: (qd * max_bs + (1 << 20)).next_power_of_two().max(4 << 20),
        thread_name: "ringperf-job".into(),
        register_buffers: w.fixed_bufs,
        ring_mode: w.ring_mode.map(crate::cli::RingMode::task_run_mode),
        submit_batch: plan.submit_batch,
        ..ReactorConfig::default()
    };
    let mut set = ReactorSet::start(cfg)?;
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let barrier = Arc::new(Barrier::new(njobs + 1));
    let start_at: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));
    let (tx, rx) = mpsc::channel::<JobMsg>();
    let mut handles = Vec::new();
    for j in 0..jobs {
        let ju = usize::try_from(j).unwrap_or(0);
        let core = if w.cpus.is_empty() {
            cores.get(ju % cores.len().max(1)).map(|c| c.id)
        } else {
            Some(w.cpus[ju % w.cpus.len()])
        };
        let ctx = JobCtx {
            job: j,
            core,
            plan: plan.clone(),
            barrier: Arc::clone(&barrier),
            start_at: Arc::clone(&start_at),
            tx: tx.clone(),
        };
        handles.push(set.spawn_on(ju, move || job_main(ctx)));
    }
    drop(tx);
    // Every job has connected (or failed); start all clocks together.
    barrier.wait();
    let t0 = Instant::now() + Duration::from_millis(5);
    let start_wall = SystemTime::now();
    if let Ok(mut s) = start_at.lock() {
        *s = Some(t0);
    }
    let cpu0 = Cpu::now(false);
    barrier.wait();
    let mut collector = Collector::new(jobs, w.ramp);
    while !collector.all_done() {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(msg) => {
                for s in collector.push(msg) {
                    on_interval(&s);
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let process_cpu = Cpu::now(false).since(cpu0);
    let mut outcomes = Vec::new();
    let mut failure = None;
    for (j, h) in (0..jobs).zip(handles) {
        match h.join_blocking() {
            Ok(Ok(o)) => outcomes.push(o),
            Ok(Err(msg)) => failure = failure.or(Some(PerfError::Job { job: j, msg })),
            Err(e) => {
                failure = failure.or(Some(PerfError::Job {
                    job: j,
                    msg: format!("{e:?}"),
                }));
            }
        }
    }
    set.shutdown();
    if let Some(f) = failure {
        return Err(f);
    }
    let mut total = OpStats::default();
    for o in &outcomes {
        total.merge(&o.stats);
    }
    let measured = outcomes
        .iter()
        .map(|o| o.measured)
        .max()
        .unwrap_or_default();
    Ok(RunOutcome {
        plan,
        jobs: outcomes,
        total,
        measured,
        process_cpu,
        intervals: collector.summaries.clone(),
        interval_hists: std::mem::take(&mut collector.hists),
        start_wall,
    })
}

struct JobCtx {
    job: u32,
    core: Option<usize>,
    plan: RunPlan,
    barrier: Arc<Barrier>,
    start_at: Arc<Mutex<Option<Instant>>>,
    tx: Sender<JobMsg>,
}

/// The current interval of a job.
struct IntervalState {
    index: u32,
    ios: u64,
    bytes: u64,
    errors: u64,
    hist: Hist,
}

/// A job's state shared by its I/O workers (all on one reactor thread).
struct Job {
    id: u32,
    conn: AnyConn,
    gen: RefCell<Generator>,
    verifier: Option<RefCell<Verifier>>,
    stats: RefCell<OpStats>,
    iv: RefCell<IntervalState>,
    tx: Sender<JobMsg>,
    t0: Instant,
    measure_from: Instant,
    end: Instant,
    /// Open loop: time between two intended starts of this job.
    period: Option<Duration>,
    next_slot: Cell<u64>,
    io_limit: Option<u64>,
    issued_bytes: Cell<u64>,
    flush_every: u64,
    writes: Cell<u64>,
    fua: bool,
    last_done: Cell<Instant>,
    errors: RefCell<Vec<String>>,
}

const MAX_REPORTED_ERRORS: usize = 10;

impl Job {
    fn interval_of(&self, t: Instant) -> u32 {
        let d = t.saturating_duration_since(self.t0);
        u32::try_from(d.as_nanos() / INTERVAL.as_nanos()).unwrap_or(u32::MAX)
    }

    /// Closes every interval that ended before `now`.
    fn rotate(&self, now: Instant) {
        let k = self.interval_of(now);
        let mut iv = self.iv.borrow_mut();
        while iv.index < k {
            let hist = std::mem::replace(&mut iv.hist, new_interval_hist());
            let _ = self.tx.send(JobMsg::Interval {
                job: self.id,
                index: iv.index,
                ios: iv.ios,
                bytes: iv.bytes,
                errors: iv.errors,
                hist,
            });
            iv.index += 1;
            iv.ios = 0;
            iv.bytes = 0;
            iv.errors = 0;
        }
    }

    fn note_error(&self, what: String) {
        let mut e = self.errors.borrow_mut();
        if e.len() < MAX_REPORTED_ERRORS {
            eprintln!("ringperf: job {}: {what}", self.id);
            e.push(what);
        }
    }

    /// Records one completed data I/O.
    fn complete(&self, kind: OpKind, start: Instant, done: Instant, len: u64, ok: bool) {
        let ns =
            u64::try_from(done.saturating_duration_since(start).as_nanos()).unwrap_or(u64::MAX);
        self.rotate(done);
        {
            // A failed I/O (ENOSPC, EIO...) often fails fast: it would inflate the second's
            // IOPS and drag its latency down, so it is counted apart.
            let mut iv = self.iv.borrow_mut();
            if ok {
                iv.ios += 1;
                iv.bytes += len;
                record(&mut iv.hist, ns);
            } else {
                iv.errors += 1;
            }
        }
        self.last_done.set(done);
        let mut st = self.stats.borrow_mut();
        if !ok {
            // Errors count even during the ramp: a run with failed I/O is not clean.
            st.io_errors += 1;
            return;
        }
        if start < self.measure_from {
            return;
        }
        match kind {
            OpKind::Read => {
                record(&mut st.read, ns);
                st.read_bytes += len;
            }
            OpKind::Write => {
                record(&mut st.write, ns);
                st.write_bytes += len;
            }
        }
    }

    /// The next I/O; in verify mode one whose blocks have nothing in flight.
    async fn next_io(&self) -> (OpKind, u64, u64) {
        loop {
            for _ in 0..64 {
                let io = self.gen.borrow_mut().next_io();
                match &self.verifier {
                    None => return io,
                    Some(v) => {
                        let mut v = v.borrow_mut();
                        if v.is_free(io.1, io.2) {
                            v.set_busy(io.1, io.2, true);
                            return io;
                        }
                    }
                }
            }
            yield_now().await;
        }
    }

    /// Open loop: waits for the next intended start and returns it (None = past the end).
    async fn next_start(&self, period: Duration) -> Option<Instant> {
        let k = self.next_slot.get();
        self.next_slot.set(k + 1);
        let at = self.t0 + period.saturating_mul(u32::try_from(k).unwrap_or(u32::MAX));
        if at >= self.end {
            return None;
        }
        let now = Instant::now();
        if at > now {
            // Sleep short of the target, then yield until it: a timer that fires late would
            // otherwise add its lateness to every measured latency.
            let slack = Duration::from_micros(50);
            if at - now > slack {
                sleep(at - now - slack).await;
            }
            while Instant::now() < at {
                yield_now().await;
            }
        }
        Some(at)
    }
}

async fn worker(job: Rc<Job>, max_bs: usize) {
    let mut b: IoBuf = buf::alloc(max_bs);
    if job.verifier.is_none() {
        // Incompressible payload for writes (reads overwrite it with real data anyway).
        rand::fill(&mut b[..]);
    }
    loop {
        let intended = match job.period {
            Some(p) => match job.next_start(p).await {
                Some(t) => Some(t),
                None => break,
            },
            None => None,
        };
        if Instant::now() >= job.end {
            break;
        }
        let (kind, off, len) = job.next_io().await;
        if let Some(limit) = job.io_limit {
            let issued = job.issued_bytes.get();
            if issued >= limit {
                if let Some(v) = &job.verifier {
                    v.borrow_mut().set_busy(off, len, false);
                }
                break;
            }
            job.issued_bytes.set(issued + len);
        }
        let ulen = usize::try_from(len).unwrap_or(max_bs);
        b.set_len(ulen);
        let gen = match (&job.verifier, kind) {
            (Some(v), OpKind::Write) => v.borrow_mut().fill_write(&mut b[..], off),
            _ => 0,
        };
        let start = intended.unwrap_or_else(Instant::now);
        let (r, nb) = match kind {
            OpKind::Read => job.conn.read(b, off).await,
            OpKind::Write => job.conn.write(b, off, job.fua).await,
        };
        b = nb;
        let done = Instant::now();
        let io_ok = r.is_ok();
        if let Err(e) = &r {
            let what = if kind == OpKind::Read {
                "read"
            } else {
                "write"
            };
            job.note_error(format!("{what} of {len} bytes at offset {off}: {e}"));
        }
        if let Some(v) = &job.verifier {
            let mut v = v.borrow_mut();
            match kind {
                OpKind::Write => v.write_done(off, len, gen, io_ok),
                OpKind::Read if io_ok => {
                    let bad = v.check_read(&b[..], off);
                    if !bad.is_empty() {
                        job.stats.borrow_mut().verify_errors +=
                            u64::try_from(bad.len()).unwrap_or(1);
                        for m in bad {
                            job.note_error(m.to_string());
                        }
                    }
                }
                OpKind::Read => {}
            }
            v.set_busy(off, len, false);
        }
        // A verify failure is a data error, counted above; the I/O itself completed, so its
        // latency is recorded like any other.
        job.complete(kind, start, done, len, io_ok);
        if kind == OpKind::Write && job.flush_every > 0 {
            let n = job.writes.get() + 1;
            job.writes.set(n);
            if n.is_multiple_of(job.flush_every) {
                let fs = Instant::now();
                let fr = job.conn.flush().await;
                let fd = Instant::now();
                if let Err(e) = &fr {
                    job.note_error(format!("flush: {e}"));
                }
                if fs >= job.measure_from {
                    let mut st = job.stats.borrow_mut();
                    if fr.is_ok() {
                        record(
                            &mut st.flush,
                            u64::try_from((fd - fs).as_nanos()).unwrap_or(u64::MAX),
                        );
                    } else {
                        st.io_errors += 1;
                    }
                }
            }
        }
    }
}

fn pin(core: Option<usize>) {
    if let Some(id) = core {
        if !core_affinity::set_for_current(core_affinity::CoreId { id }) {
            eprintln!("ringperf: could not pin to core {id}; running unpinned");
        }
    }
}

async fn job_main(ctx: JobCtx) -> Result<JobOutcome, String> {
    pin(ctx.core);
    let plan = &ctx.plan;
    let w = &plan.w;
    let (rstart, rlen) = plan.regions[usize::try_from(ctx.job).unwrap_or(0)];
    let conn = plan.spec.connect(ctx.job).await;
    let verifier = if w.verify {
        Verifier::new(plan.unit, rstart, rlen, plan.run_id).map(|v| Some(RefCell::new(v)))
    } else {
        Ok(None)
    };
    // Both barriers are always reached, so a failed job cannot hang the others.
    ctx.barrier.wait();
    ctx.barrier.wait();
    let t0 = ctx
        .start_at
        .lock()
        .ok()
        .and_then(|g| *g)
        .unwrap_or_else(Instant::now);
    let done_msg = |n| JobMsg::Done {
        job: ctx.job,
        intervals: n,
    };
    let (conn, verifier) = match (conn, verifier) {
        (Ok(c), Ok(v)) => (c, v),
        (Err(e), _) => {
            let _ = ctx.tx.send(done_msg(0));
            return Err(format!("connecting to {}: {e}", plan.label));
        }
        (_, Err(e)) => {
            let _ = ctx.tx.send(done_msg(0));
            return Err(e);
        }
    };
    let now = Instant::now();
    if t0 > now {
        sleep(t0 - now).await;
    }
    let measure_from = t0 + w.ramp;
    let end = measure_from + w.runtime;
    let seed = w.seed.wrapping_add(u64::from(ctx.job));
    let period = w.rate.filter(|&r| r > 0).map(|r| {
        Duration::from_secs_f64(
            f64::from(w.jobs) / {
                #[allow(clippy::cast_precision_loss)]
                let r = r as f64;
                r
            },
        )
    });
    let job = Rc::new(Job {
        id: ctx.job,
        conn,
        gen: RefCell::new(Generator::new(plan.pattern.clone(), seed, rstart, rlen)),
        verifier,
        stats: RefCell::new(OpStats::default()),
        iv: RefCell::new(IntervalState {
            index: 0,
            ios: 0,
            bytes: 0,
            errors: 0,
            hist: new_interval_hist(),
        }),
        tx: ctx.tx.clone(),
        t0,
        measure_from,
        end,
        period,
        next_slot: Cell::new(0),
        io_limit: w.io_limit,
        issued_bytes: Cell::new(0),
        flush_every: w.flush_every,
        writes: Cell::new(0),
        fua: w.fua,
        last_done: Cell::new(t0),
        errors: RefCell::new(Vec::new()),
    });
    let cpu0 = Cpu::now(true);
    let ring0 = ring_stats().unwrap_or_default();
    // Closes intervals even while every I/O is stuck, so progress lines keep coming.
    let ticker = {
        let job = Rc::clone(&job);
        spawn_local(async move {
            loop {
                let next = job.t0 + INTERVAL * (job.interval_of(Instant::now()) + 1);
                let now = Instant::now();
                if next > now {
                    sleep(next - now).await;
                }
                job.rotate(Instant::now());
            }
        })
    };
    let max_bs = usize::try_from(plan.pattern.max_bs()).unwrap_or(4096);
    let workers: Vec<_> = (0..w.qd)
        .map(|_| spawn_local(worker(Rc::clone(&job), max_bs)))
        .collect();
    for h in workers {
        let _ = h.await;
    }
    ticker.abort();
    let cpu = Cpu::now(true).since(cpu0);
    let ring1 = ring_stats().unwrap_or_default();
    let ring = ring1.since(&ring0);
    let finish = Instant::now();
    // Close the full intervals; the partial one past the end holds only stragglers.
    job.rotate(finish.min(end));
    let sent = job.iv.borrow().index;
    let _ = ctx.tx.send(done_msg(sent));
    job.conn.close().await;
    let measured = job
        .last_done
        .get()
        .min(end)
        .max(finish.min(end))
        .saturating_duration_since(measure_from);
    let stats = job.stats.borrow().clone();
    let first_errors = job.errors.borrow().clone();
    Ok(JobOutcome {
        job: ctx.job,
        core: ctx.core,
        stats,
        cpu,
        measured,
        first_errors,
        ring,
    })
}

//! Human-readable tables (bdevperf-like) and the JSON result.

use std::fmt::Write as _;

use serde::Serialize;

use crate::intervals::IntervalSummary;
use crate::runner::RunOutcome;
use crate::stats::{JobSummary, Lat};
use crate::units::fmt_size;

/// The JSON document of one run.
#[derive(Debug, Serialize)]
pub struct RunReport {
    pub target: String,
    pub describe: String,
    pub workload: WorkloadEcho,
    pub jobs: Vec<JobSummary>,
    pub total: JobSummary,
    /// Whole-process CPU (all threads, including io_uring workers) per I/O, in microseconds.
    pub process_cpu_us_per_io: f64,
    /// The job rings' submission counters, summed over the jobs.
    pub ring: RingReport,
    pub io_errors: u64,
    pub verify_errors: u64,
    /// The first errors seen (at most 10 per job).
    pub errors: Vec<String>,
    pub intervals: Vec<IntervalSummary>,
}

/// How the job rings submitted: the burst size the target sees.
#[derive(Debug, Serialize)]
pub struct RingReport {
    /// The `--submit-batch` in force (0: once per reactor turn).
    pub submit_batch: usize,
    /// io_uring_enter calls that submitted something.
    pub submit_enters: u64,
    /// SQEs submitted (the data I/Os plus the reactor's own wake-up reads and timers).
    pub submitted: u64,
    /// `submitted / submit_enters`.
    pub sqes_per_enter: f64,
    /// io_uring_enter calls that slept waiting for a completion.
    pub waits: u64,
}

/// The workload parameters, echoed for the record.
#[derive(Debug, Serialize)]
pub struct WorkloadEcho {
    pub rw: crate::cli::Rw,
    pub rwmixread: u8,
    pub bs: Vec<(u64, u32)>,
    pub qd: u32,
    pub jobs: u32,
    pub runtime_s: f64,
    pub ramp_s: f64,
    pub offset: u64,
    pub size: u64,
    pub dist: String,
    pub flush_every: u64,
    pub fua: bool,
    pub verify: bool,
    pub rate_iops: Option<u64>,
    pub direct: bool,
    pub seed: u64,
}

impl RunReport {
    pub fn of(o: &RunOutcome) -> RunReport {
        let w = &o.plan.w;
        let jobs: Vec<JobSummary> = o
            .jobs
            .iter()
            .map(|j| {
                JobSummary::of(
                    j.job.to_string(),
                    j.core,
                    &j.stats,
                    j.measured.as_secs_f64(),
                    j.cpu,
                )
            })
            .collect();
        let cpu_sum = o
            .jobs
            .iter()
            .fold(crate::stats::Cpu::default(), |a, j| crate::stats::Cpu {
                user: a.user + j.cpu.user,
                sys: a.sys + j.cpu.sys,
            });
        let total = JobSummary::of(
            "total".into(),
            None,
            &o.total,
            o.measured.as_secs_f64(),
            cpu_sum,
        );
        let ios = o.total.data_ios();
        #[allow(clippy::cast_precision_loss)]
        let process_cpu_us_per_io = if ios > 0 {
            o.process_cpu.total().as_secs_f64() * 1e6 / ios as f64
        } else {
            0.0
        };
        let (submit_enters, submitted, waits) = o.jobs.iter().fold((0, 0, 0), |a, j| {
            (
                a.0 + j.ring.submit_enters,
                a.1 + j.ring.submitted,
                a.2 + j.ring.waits,
            )
        });
        #[allow(clippy::cast_precision_loss)]
        let sqes_per_enter = if submit_enters > 0 {
            submitted as f64 / submit_enters as f64
        } else {
            0.0
        };
        let ring = RingReport {
            submit_batch: o.plan.submit_batch,
            submit_enters,
            submitted,
            sqes_per_enter,
            waits,
        };
        let size: u64 = if w.verify || !w.rw.is_random() {
            o.plan.regions.iter().map(|r| r.1).sum()
        } else {
            o.plan.regions.first().map_or(0, |r| r.1)
        };
        RunReport {
            target: o.plan.label.clone(),
            describe: o.plan.info.describe.clone(),
            workload: WorkloadEcho {
                rw: w.rw,
                rwmixread: w.rwmixread,
                bs: w.block_sizes().unwrap_or_default(),
                qd: w.qd,
                jobs: w.jobs,
                runtime_s: w.runtime.as_secs_f64(),
                ramp_s: w.ramp.as_secs_f64(),
                offset: w.offset,
                size,
                dist: w.dist.clone(),
                flush_every: w.flush_every,
                fua: w.fua,
                verify: w.verify,
                rate_iops: w.rate,
                direct: w.direct,
                seed: w.seed,
            },
            io_errors: o.total.io_errors,
            verify_errors: o.total.verify_errors,
            errors: o.jobs.iter().flat_map(|j| j.first_errors.clone()).collect(),
            jobs,
            total,
            process_cpu_us_per_io,
            ring,
            intervals: o.intervals.clone(),
        }
    }

    /// True if the run saw I/O or verify errors (the exit status is then non-zero).
    pub fn failed(&self) -> bool {
        self.io_errors > 0 || self.verify_errors > 0
    }
}

/// The header line printed before a run.
pub fn banner(r: &RunReport) -> String {
    let w = &r.workload;
    let bs: Vec<String> =
        w.bs.iter()
            .map(|(b, p)| {
                if w.bs.len() == 1 {
                    fmt_size(*b)
                } else {
                    format!("{}/{p}", fmt_size(*b))
                }
            })
            .collect();
    let mut s = format!(
        "ringperf: {} {} bs={} qd={} jobs={} runtime={}s",
        r.describe,
        format!("{:?}", w.rw).to_lowercase(),
        bs.join(":"),
        w.qd,
        w.jobs,
        w.runtime_s
    );
    if w.ramp_s > 0.0 {
        let _ = write!(s, " ramp={}s", w.ramp_s);
    }
    if let Some(rate) = w.rate_iops {
        let _ = write!(s, " rate={rate} IOPS (open loop)");
    }
    if w.verify {
        s.push_str(" verify");
    }
    if w.fua {
        s.push_str(" fua");
    }
    if w.flush_every > 0 {
        let _ = write!(s, " flush-every={}", w.flush_every);
    }
    if w.dist != "uniform" {
        let _ = write!(s, " dist={}", w.dist);
    }
    s
}

fn fmt_us(v: f64) -> String {
    if v >= 100_000.0 {
        format!("{:.0}", v)
    } else if v >= 1000.0 {
        format!("{:.1}", v)
    } else {
        format!("{:.2}", v)
    }
}

/// One progress line.
pub fn interval_line(s: &IntervalSummary) -> String {
    format!(
        "[{:>5.0}s]{} {:>10.0} IOPS {:>9.2} MiB/s  p50 {:>9} us  p99 {:>9} us  max {:>10} us",
        s.t_s,
        if s.ramp { " ramp" } else { "     " },
        s.iops,
        s.mib_s,
        fmt_us(s.p50_us),
        fmt_us(s.p99_us),
        fmt_us(s.max_us)
    ) + &if s.errors > 0 {
        format!("  errors {}", s.errors)
    } else {
        String::new()
    }
}

fn lat_cols(l: &Lat) -> String {
    format!(
        "{:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        fmt_us(l.min_us),
        fmt_us(l.mean_us),
        fmt_us(l.p50_us),
        fmt_us(l.p90_us),
        fmt_us(l.p99_us),
        fmt_us(l.p99_9_us),
        fmt_us(l.p99_99_us),
        fmt_us(l.p99_999_us),
        fmt_us(l.max_us)
    )
}

fn row(out: &mut String, name: &str, core: &str, s: &JobSummary) {
    let _ = writeln!(
        out,
        "{name:<8} {core:>4} {:>11.1} {:>9.2} {} {:>7} {:>8.2}",
        s.iops,
        s.mib_s,
        lat_cols(&s.lat),
        s.io_errors + s.verify_errors,
        s.cpu_us_per_io
    );
    let both = s.read.ios > 0 && s.write.ios > 0;
    if both || s.flush.ios > 0 {
        for (label, o) in [("  read", &s.read), ("  write", &s.write)] {
            if o.ios > 0 {
                let _ = writeln!(
                    out,
                    "{label:<8} {:>4} {:>11.1} {:>9.2} {}",
                    "",
                    o.iops,
                    o.mib_s,
                    lat_cols(&o.lat)
                );
            }
        }
    }
    if s.flush.ios > 0 {
        let _ = writeln!(
            out,
            "{:<8} {:>4} {:>11.1} {:>9} {}",
            "  flush",
            "",
            s.flush.iops,
            "",
            lat_cols(&s.flush.lat)
        );
    }
}

/// The final table: one row per job and the total, latencies in microseconds.
pub fn table(r: &RunReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<8} {:>4} {:>11} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>7} {:>8}",
        "Job", "Core", "IOPS", "MiB/s", "min", "mean", "p50", "p90", "p99", "p99.9", "p99.99",
        "p99.999", "max", "errors", "cpu/IO"
    );
    for j in &r.jobs {
        let core = j.core.map_or("-".to_string(), |c| c.to_string());
        row(&mut out, &j.job, &core, j);
    }
    if r.jobs.len() > 1 {
        row(&mut out, "Total", "", &r.total);
    }
    let _ = writeln!(
        out,
        "latencies and cpu/IO in microseconds; runtime {:.2}s, {} I/Os; ringperf CPU: {:.2} us/IO on the job threads, {:.2} us/IO for the whole process",
        r.total.runtime_s, r.total.ios, r.total.cpu_us_per_io, r.process_cpu_us_per_io
    );
    let _ = writeln!(
        out,
        "job rings: {} SQEs in {} submitting enters ({:.2} per enter, submit batch {}), {} waits",
        r.ring.submitted,
        r.ring.submit_enters,
        r.ring.sqes_per_enter,
        if r.ring.submit_batch == 0 {
            "per turn".to_string()
        } else {
            r.ring.submit_batch.to_string()
        },
        r.ring.waits
    );
    if r.workload.verify {
        let _ = writeln!(
            out,
            "verify: {} error(s) in {} reads",
            r.verify_errors, r.total.read.ios
        );
    }
    if r.io_errors > 0 {
        let _ = writeln!(out, "I/O errors: {}", r.io_errors);
    }
    out
}

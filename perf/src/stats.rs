//! Latency histograms and counters per job, merged at the end, and their summaries.
//!
//! Latencies are recorded in nanoseconds into HdrHistograms with 3 significant digits
//! (relative error <= 0.1 %), auto-resizing so a stall of minutes still lands in range.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::units::ns_to_us;

pub type Hist = Histogram<u64>;

/// A new latency histogram (ns, 3 significant digits, grows as needed).
pub fn new_hist() -> Hist {
    let mut h = Histogram::new(3).unwrap_or_else(|_| unreachable_hist());
    h.auto(true);
    h
}

/// A coarser histogram for per-second intervals (2 significant digits: ~1 % error, 16x smaller).
pub fn new_interval_hist() -> Hist {
    let mut h = Histogram::new(2).unwrap_or_else(|_| unreachable_hist());
    h.auto(true);
    h
}

#[cold]
fn unreachable_hist() -> Hist {
    // Histogram::new only fails for sigfig > 5; 2 and 3 are valid. Keep a fallback anyway.
    Histogram::new_with_bounds(1, u64::MAX / 2, 2).unwrap_or_else(|e| panic!("hdrhistogram: {e}"))
}

/// Records a value, saturating into the top bucket instead of failing.
pub fn record(h: &mut Hist, ns: u64) {
    if h.record(ns.max(1)).is_err() {
        let top = h.high();
        let _ = h.record(top);
    }
}

/// Counters and histograms of one job (or the merge of several).
#[derive(Debug, Clone)]
pub struct OpStats {
    pub read: Hist,
    pub write: Hist,
    pub flush: Hist,
    pub read_bytes: u64,
    pub write_bytes: u64,
    pub io_errors: u64,
    pub verify_errors: u64,
}

impl Default for OpStats {
    fn default() -> Self {
        OpStats {
            read: new_hist(),
            write: new_hist(),
            flush: new_hist(),
            read_bytes: 0,
            write_bytes: 0,
            io_errors: 0,
            verify_errors: 0,
        }
    }
}

impl OpStats {
    pub fn merge(&mut self, o: &OpStats) {
        let _ = self.read.add(&o.read);
        let _ = self.write.add(&o.write);
        let _ = self.flush.add(&o.flush);
        self.read_bytes += o.read_bytes;
        self.write_bytes += o.write_bytes;
        self.io_errors += o.io_errors;
        self.verify_errors += o.verify_errors;
    }

    /// Reads and writes together.
    pub fn data(&self) -> Hist {
        let mut h = self.read.clone();
        let _ = h.add(&self.write);
        h
    }

    pub fn data_ios(&self) -> u64 {
        self.read.len() + self.write.len()
    }
}

/// Thread CPU time.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Cpu {
    pub user: Duration,
    pub sys: Duration,
}

impl Cpu {
    /// getrusage of the calling thread (`RUSAGE_THREAD`) or of the process (`RUSAGE_SELF`).
    pub fn now(thread: bool) -> Cpu {
        let mut ru = std::mem::MaybeUninit::<libc::rusage>::zeroed();
        let who = if thread {
            libc::RUSAGE_THREAD
        } else {
            libc::RUSAGE_SELF
        };
        // SAFETY: getrusage writes one rusage into the zeroed local it is handed; it lives on
        // this stack frame for the whole call.
        let rc = unsafe { libc::getrusage(who, ru.as_mut_ptr()) };
        if rc != 0 {
            return Cpu::default();
        }
        // SAFETY: zero-initialised and, on success, filled by the kernel: a valid rusage.
        let ru = unsafe { ru.assume_init() };
        let tv = |t: libc::timeval| {
            Duration::from_secs(u64::try_from(t.tv_sec).unwrap_or(0))
                + Duration::from_micros(u64::try_from(t.tv_usec).unwrap_or(0))
        };
        Cpu {
            user: tv(ru.ru_utime),
            sys: tv(ru.ru_stime),
        }
    }

    pub fn since(self, start: Cpu) -> Cpu {
        Cpu {
            user: self.user.saturating_sub(start.user),
            sys: self.sys.saturating_sub(start.sys),
        }
    }

    pub fn total(self) -> Duration {
        self.user + self.sys
    }
}

/// The percentile cut-offs every report prints.
pub const PERCENTILES: [(&str, f64); 7] = [
    ("p50", 50.0),
    ("p90", 90.0),
    ("p99", 99.0),
    ("p99.9", 99.9),
    ("p99.99", 99.99),
    ("p99.999", 99.999),
    ("p99.9999", 99.9999),
];

/// Latency summary in microseconds.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Lat {
    pub samples: u64,
    pub min_us: f64,
    pub mean_us: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p99_9_us: f64,
    pub p99_99_us: f64,
    pub p99_999_us: f64,
    pub max_us: f64,
}

impl Lat {
    pub fn of(h: &Hist) -> Lat {
        if h.is_empty() {
            return Lat {
                samples: 0,
                min_us: 0.0,
                mean_us: 0.0,
                p50_us: 0.0,
                p90_us: 0.0,
                p99_us: 0.0,
                p99_9_us: 0.0,
                p99_99_us: 0.0,
                p99_999_us: 0.0,
                max_us: 0.0,
            };
        }
        let q = |p: f64| ns_to_us(h.value_at_percentile(p));
        Lat {
            samples: h.len(),
            min_us: ns_to_us(h.min()),
            mean_us: h.mean() / 1000.0,
            p50_us: q(50.0),
            p90_us: q(90.0),
            p99_us: q(99.0),
            p99_9_us: q(99.9),
            p99_99_us: q(99.99),
            p99_999_us: q(99.999),
            max_us: ns_to_us(h.max()),
        }
    }
}

/// One direction (reads or writes) of a job.
#[derive(Debug, Clone, Serialize)]
pub struct OpSummary {
    pub ios: u64,
    pub iops: f64,
    pub mib_s: f64,
    pub lat: Lat,
}

fn per_sec(n: u64, secs: f64) -> f64 {
    #[allow(clippy::cast_precision_loss)]
    let n = n as f64;
    if secs > 0.0 {
        n / secs
    } else {
        0.0
    }
}

impl OpSummary {
    fn of(h: &Hist, bytes: u64, secs: f64) -> OpSummary {
        OpSummary {
            ios: h.len(),
            iops: per_sec(h.len(), secs),
            mib_s: per_sec(bytes, secs) / 1_048_576.0,
            lat: Lat::of(h),
        }
    }
}

/// A job's (or the total's) row.
#[derive(Debug, Clone, Serialize)]
pub struct JobSummary {
    /// Job index, or "total".
    pub job: String,
    pub core: Option<usize>,
    pub runtime_s: f64,
    pub ios: u64,
    pub iops: f64,
    pub mib_s: f64,
    /// Latency of reads and writes together.
    pub lat: Lat,
    pub read: OpSummary,
    pub write: OpSummary,
    pub flush: OpSummary,
    pub io_errors: u64,
    pub verify_errors: u64,
    pub cpu_user_s: f64,
    pub cpu_sys_s: f64,
    /// ringperf's own CPU time per I/O (user + system), in microseconds.
    pub cpu_us_per_io: f64,
}

impl JobSummary {
    pub fn of(job: String, core: Option<usize>, s: &OpStats, secs: f64, cpu: Cpu) -> JobSummary {
        let data = s.data();
        let ios = data.len();
        let cpu_s = cpu.total().as_secs_f64();
        JobSummary {
            job,
            core,
            runtime_s: secs,
            ios,
            iops: per_sec(ios, secs),
            mib_s: per_sec(s.read_bytes + s.write_bytes, secs) / 1_048_576.0,
            lat: Lat::of(&data),
            read: OpSummary::of(&s.read, s.read_bytes, secs),
            write: OpSummary::of(&s.write, s.write_bytes, secs),
            flush: OpSummary::of(&s.flush, 0, secs),
            io_errors: s.io_errors,
            verify_errors: s.verify_errors,
            cpu_user_s: cpu.user.as_secs_f64(),
            cpu_sys_s: cpu.sys.as_secs_f64(),
            cpu_us_per_io: if ios > 0 {
                cpu_s * 1e6 / per_sec(ios, 1.0)
            } else {
                0.0
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_and_summary() {
        let mut a = OpStats::default();
        let mut b = OpStats::default();
        for i in 1..=1000u64 {
            record(&mut a.read, i * 1000);
            record(&mut b.write, i * 2000);
        }
        a.read_bytes = 1000 * 4096;
        b.write_bytes = 1000 * 4096;
        a.merge(&b);
        let s = JobSummary::of(
            "total".into(),
            None,
            &a,
            2.0,
            Cpu {
                user: Duration::from_millis(10),
                sys: Duration::from_millis(10),
            },
        );
        assert_eq!(s.ios, 2000);
        assert!((s.iops - 1000.0).abs() < 1e-9);
        assert!((s.read.lat.max_us - 1000.0).abs() < 1.0);
        assert!((s.write.lat.max_us - 2000.0).abs() < 2.0);
        assert!((s.cpu_us_per_io - 10.0).abs() < 1e-6);
        assert!(s.lat.p50_us > 640.0 && s.lat.p50_us < 700.0);
    }

    #[test]
    fn cpu_time_moves() {
        let t0 = Cpu::now(true);
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while start.elapsed() < Duration::from_millis(50) {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(1));
        }
        assert!(Cpu::now(true).since(t0).total() >= Duration::from_millis(10));
    }
}

//! Per-second intervals: jobs send one histogram per second; the main thread merges them into
//! a live progress line, keeps them for the HdrHistogram interval log and the plot.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, SystemTime};

use hdrhistogram::serialization::interval_log::{IntervalLogWriterBuilder, Tag};
use hdrhistogram::serialization::V2DeflateSerializer;
use serde::Serialize;

use crate::stats::{new_interval_hist, Hist};
use crate::units::ns_to_us;

/// Length of one interval.
pub const INTERVAL: Duration = Duration::from_secs(1);

/// What a job sends to the main thread.
#[derive(Debug)]
pub enum JobMsg {
    /// Interval `index` (covering `[index, index+1)` seconds after the common start) is over.
    Interval {
        job: u32,
        index: u32,
        ios: u64,
        bytes: u64,
        /// Failed I/Os (not in `ios`, `bytes` or `hist`).
        errors: u64,
        hist: Hist,
    },
    /// The job finished; `intervals` is how many it sent.
    Done { job: u32, intervals: u32 },
}

/// One merged second.
#[derive(Debug, Clone, Serialize)]
pub struct IntervalSummary {
    /// Seconds since the start of the run (ramp included) at the end of this interval.
    pub t_s: f64,
    pub ramp: bool,
    /// Completed I/Os per second (failed ones excluded).
    pub iops: f64,
    pub mib_s: f64,
    /// Failed I/Os in this second.
    pub errors: u64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
}

#[derive(Debug)]
struct Pending {
    reported: u32,
    ios: u64,
    bytes: u64,
    errors: u64,
    hist: Hist,
}

/// Merges interval messages in order.
#[derive(Debug)]
pub struct Collector {
    jobs: u32,
    ramp_intervals: u32,
    /// Per job: the number of intervals it sent once it is done.
    done: BTreeMap<u32, u32>,
    pending: BTreeMap<u32, Pending>,
    next: u32,
    pub summaries: Vec<IntervalSummary>,
    /// Merged histogram of each emitted interval (for the interval log).
    pub hists: Vec<Hist>,
}

impl Collector {
    pub fn new(jobs: u32, ramp: Duration) -> Collector {
        let ramp_intervals =
            u32::try_from(ramp.as_millis().div_ceil(INTERVAL.as_millis())).unwrap_or(u32::MAX);
        Collector {
            jobs,
            ramp_intervals,
            done: BTreeMap::new(),
            pending: BTreeMap::new(),
            next: 0,
            summaries: Vec::new(),
            hists: Vec::new(),
        }
    }

    pub fn all_done(&self) -> bool {
        u32::try_from(self.done.len()).ok() == Some(self.jobs)
    }

    /// Takes one message; returns the intervals that became complete.
    pub fn push(&mut self, msg: JobMsg) -> Vec<IntervalSummary> {
        match msg {
            JobMsg::Interval {
                index,
                ios,
                bytes,
                errors,
                hist,
                ..
            } => {
                let p = self.pending.entry(index).or_insert_with(|| Pending {
                    reported: 0,
                    ios: 0,
                    bytes: 0,
                    errors: 0,
                    hist: new_interval_hist(),
                });
                p.reported += 1;
                p.ios += ios;
                p.bytes += bytes;
                p.errors += errors;
                let _ = p.hist.add(&hist);
            }
            JobMsg::Done { job, intervals } => {
                self.done.insert(job, intervals);
            }
        }
        let mut out = Vec::new();
        loop {
            let k = self.next;
            // Jobs that are done and never sent interval k will not report it.
            let absent =
                u32::try_from(self.done.values().filter(|&&n| n <= k).count()).unwrap_or(u32::MAX);
            let expected = self.jobs.saturating_sub(absent);
            let reported = self.pending.get(&k).map_or(0, |p| p.reported);
            if expected == 0 && self.pending.range(k..).next().is_none() {
                break;
            }
            if reported < expected {
                break;
            }
            let p = self.pending.remove(&k).unwrap_or(Pending {
                reported: 0,
                ios: 0,
                bytes: 0,
                errors: 0,
                hist: new_interval_hist(),
            });
            let secs = INTERVAL.as_secs_f64();
            #[allow(clippy::cast_precision_loss)]
            let s = IntervalSummary {
                t_s: f64::from(k + 1) * secs,
                ramp: k < self.ramp_intervals,
                iops: p.ios as f64 / secs,
                mib_s: p.bytes as f64 / secs / 1_048_576.0,
                errors: p.errors,
                p50_us: ns_to_us(p.hist.value_at_quantile(0.5)),
                p99_us: ns_to_us(p.hist.value_at_quantile(0.99)),
                max_us: ns_to_us(p.hist.max()),
            };
            self.summaries.push(s.clone());
            self.hists.push(p.hist);
            out.push(s);
            self.next += 1;
        }
        out
    }

    /// Writes the HdrHistogram interval log (values in ns; max column in ms as the Java tools
    /// expect, via the max value divisor).
    pub fn write_hlog(&self, path: &Path, start: SystemTime, label: &str) -> std::io::Result<()> {
        let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
        let mut ser = V2DeflateSerializer::new();
        let mut w = IntervalLogWriterBuilder::new()
            .add_comment(&format!("ringperf {label}"))
            .add_comment("values in nanoseconds")
            .with_start_time(start)
            .with_base_time(start)
            .with_max_value_divisor(1e6)
            .begin_log_with(&mut f, &mut ser)
            .map_err(std::io::Error::other)?;
        let tag = Tag::new("data");
        for (k, h) in self.hists.iter().enumerate() {
            let k = u32::try_from(k).unwrap_or(u32::MAX);
            w.write_histogram(h, INTERVAL * k, INTERVAL, tag)
                .map_err(|e| std::io::Error::other(format!("{e:?}")))?;
        }
        drop(w);
        f.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::record;

    fn iv(job: u32, index: u32, ios: u64) -> JobMsg {
        let mut hist = new_interval_hist();
        for i in 0..ios {
            record(&mut hist, 1000 + i);
        }
        JobMsg::Interval {
            job,
            index,
            ios,
            bytes: ios * 4096,
            errors: u64::from(index),
            hist,
        }
    }

    #[test]
    fn waits_for_all_jobs_then_emits_in_order() {
        let mut c = Collector::new(2, Duration::from_secs(1));
        assert!(c.push(iv(0, 0, 10)).is_empty());
        assert!(c.push(iv(0, 1, 10)).is_empty());
        let out = c.push(iv(1, 0, 5));
        assert_eq!(out.len(), 1);
        assert!((out[0].iops - 15.0).abs() < 1e-9);
        assert_eq!(out[0].errors, 0);
        assert!(out[0].ramp);
        // Job 1 finishes after one interval: interval 1 only needs job 0.
        let out = c.push(JobMsg::Done {
            job: 1,
            intervals: 1,
        });
        assert_eq!(out.len(), 1);
        assert!(!out[0].ramp);
        assert_eq!(out[0].errors, 1, "errors are summed per interval");
        c.push(JobMsg::Done {
            job: 0,
            intervals: 2,
        });
        assert!(c.all_done());
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.hlog");
        c.write_hlog(&p, SystemTime::now(), "test").unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        assert_eq!(
            text.lines().filter(|l| l.starts_with("Tag=data,")).count(),
            2
        );
    }
}

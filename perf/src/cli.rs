//! Command line: `ringperf --target T [workload options]` and
//! `ringperf compare T1 T2 ... [workload options]`.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::units::{parse_duration, parse_size};

/// ringperf: latency benchmark for raw devices/files, pool volumes and NBD servers.
#[derive(Debug, Parser)]
#[command(name = "ringperf", version, args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Target: PATH (file or block device), nbd://HOST:PORT/EXPORT,
    /// nbd+unix:///EXPORT?socket=PATH, pool:... (see README), or delay:EVERY:MS:TARGET.
    #[arg(long, short = 't')]
    pub target: Option<String>,
    #[command(flatten)]
    pub workload: WorkloadArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the same workload against several targets, alternating, and print the ratios.
    Compare(CompareArgs),
}

#[derive(Debug, Args)]
pub struct CompareArgs {
    /// Targets to compare (two or more); the first one is the baseline of the ratios.
    #[arg(required = true, num_args = 2..)]
    pub targets: Vec<String>,
    /// Rounds: every round runs each target once, in order.
    #[arg(long, default_value_t = 3)]
    pub rounds: u32,
    #[command(flatten)]
    pub workload: WorkloadArgs,
}

/// Access pattern, named as in fio.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Rw {
    Read,
    Write,
    Randread,
    Randwrite,
    /// Random mix of reads and writes (`--rwmixread` percent reads).
    Randrw,
    /// Sequential mix of reads and writes.
    Rw,
}

impl Rw {
    pub fn is_random(self) -> bool {
        matches!(self, Rw::Randread | Rw::Randwrite | Rw::Randrw)
    }
    /// Percentage of reads.
    pub fn read_pct(self, mix: u8) -> u8 {
        match self {
            Rw::Read | Rw::Randread => 100,
            Rw::Write | Rw::Randwrite => 0,
            Rw::Randrw | Rw::Rw => mix,
        }
    }
}

/// When to fill the measured region with data before the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Prefill {
    /// Prefill a file target if the region has holes (SEEK_HOLE / st_blocks); never block devices.
    Auto,
    Always,
    Never,
}

/// How ringperf's NBD client talks to the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientMode {
    /// Every request queued since the last send goes out in one send; one recv takes every
    /// reply that has arrived (the fastest client).
    #[default]
    Batched,
    /// libnbd's pattern, as fio's nbd engine drives it: each request sent by the call that
    /// makes it, with a non-blocking send(2) of its header and one of a write's payload;
    /// replies read with non-blocking recv(2) (header, then a read's payload), and after each
    /// complete reply the woken workers queue (and send) their next request before the next
    /// reply is read, as fio reaps one completion per poll. For comparing against fio like
    /// for like: the server sees the same traffic shape and rhythm.
    Libnbd,
}

/// io_uring task-run mode of the job rings (see driver::io::TaskRunMode).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RingMode {
    /// SINGLE_ISSUER | DEFER_TASKRUN (what the probe picks on Linux 6.1+).
    Defer,
    /// SINGLE_ISSUER | COOP_TASKRUN | TASKRUN_FLAG.
    Coop,
    /// No task-run flags.
    Plain,
}

impl RingMode {
    pub fn task_run_mode(self) -> ringpool_driver::io::TaskRunMode {
        match self {
            RingMode::Defer => ringpool_driver::io::TaskRunMode::DeferTaskrun,
            RingMode::Coop => ringpool_driver::io::TaskRunMode::CoopTaskrun,
            RingMode::Plain => ringpool_driver::io::TaskRunMode::Plain,
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct WorkloadArgs {
    /// Access pattern.
    #[arg(long, value_enum, default_value_t = Rw::Randread)]
    pub rw: Rw,
    /// Percentage of reads for randrw / rw.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u8).range(0..=100))]
    pub rwmixread: u8,
    /// Block size of every I/O.
    #[arg(long, default_value = "4k", value_parser = parse_size)]
    pub bs: u64,
    /// Mixed block sizes with weights, e.g. 4k/50:64k/50 (overrides --bs).
    #[arg(long)]
    pub bssplit: Option<String>,
    /// I/Os in flight per job.
    #[arg(long, default_value_t = 1)]
    pub qd: u32,
    /// Jobs; each runs on its own reactor thread, pinned to a core.
    #[arg(long, default_value_t = 1)]
    pub jobs: u32,
    /// Measured run time (after the ramp).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub runtime: Duration,
    /// Warm-up time before measuring; its I/O is not counted.
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    pub ramp: Duration,
    /// Stop each job after it moved this many bytes (e.g. one sequential pass: --io-limit = --size).
    #[arg(long, value_parser = parse_size)]
    pub io_limit: Option<u64>,
    /// Size of the region to exercise (default: target size - offset).
    #[arg(long, value_parser = parse_size)]
    pub size: Option<u64>,
    /// Start of the region.
    #[arg(long, default_value = "0", value_parser = parse_size)]
    pub offset: u64,
    /// Offset distribution of random patterns: uniform or zipf:THETA.
    #[arg(long, default_value = "uniform")]
    pub dist: String,
    /// Issue a flush after every N writes of a job (0 = never).
    #[arg(long, default_value_t = 0)]
    pub flush_every: u64,
    /// Writes are FUA (durable on completion).
    #[arg(long)]
    pub fua: bool,
    /// Data-integrity mode: writes carry a checked header, reads verify it.
    #[arg(long)]
    pub verify: bool,
    /// Open loop: total target rate in IOPS (split over the jobs); latency counts from each
    /// request's intended start, so stalls are not hidden (no coordinated omission).
    #[arg(long)]
    pub rate: Option<u64>,
    /// Print the result as JSON on stdout (progress lines go to stderr).
    #[arg(long)]
    pub json: bool,
    /// Write an HdrHistogram interval log (one histogram per second).
    #[arg(long)]
    pub hlog: Option<PathBuf>,
    /// Write an SVG with the latency percentile spectrum and IOPS / p99 over time.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Open files and devices with O_DIRECT (--direct=false for buffered I/O).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub direct: bool,
    /// Fill the region with data before measuring (reading holes measures nothing).
    #[arg(long, value_enum, default_value_t = Prefill::Auto)]
    pub prefill: Prefill,
    /// Seed of the workload generators (job i uses seed + i).
    #[arg(long, default_value_t = 0x5EED_0001)]
    pub seed: u64,
    /// NBD connections per job (I/O workers are spread over them).
    #[arg(long, default_value_t = 1)]
    pub nbd_conns: u32,
    /// NBD client behaviour: batched (default) or libnbd (one request per send, one reply
    /// per recv, as fio's nbd engine; see perf/README.md).
    #[arg(long, value_enum, default_value_t = ClientMode::Batched)]
    pub client_mode: ClientMode,
    /// Submit to the kernel as soon as this many I/Os are queued on a job's ring (the rest at
    /// the end of the reactor turn). 1: every I/O on its own as soon as it is made, as fio's
    /// iodepth_batch_submit=1 does; 0: once per reactor turn, everything the job's workers
    /// queued since the last one. Default: 1 on a raw target, because a device benchmark must
    /// drive the device the way fio does to be comparable with it (groups of 4 wrote 1.08x
    /// fio's IOPS at randwrite QD32 in perf/README.md, one enter per write 1.03x); on a pool
    /// or NBD target the engine's reactor default (4), because there ringperf measures the
    /// engine as `ringpool serve` runs it.
    #[arg(long)]
    pub submit_batch: Option<usize>,
    /// Register each job's buffer arena with its ring (READ_FIXED / WRITE_FIXED).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub fixed_bufs: bool,
    /// Force the ring's task-run mode instead of probing (defer, coop, plain).
    #[arg(long, value_enum)]
    pub ring_mode: Option<RingMode>,
    /// Cores to pin the jobs to (comma separated); default: job i on core i mod ncores.
    #[arg(long, value_delimiter = ',')]
    pub cpus: Vec<usize>,
    /// No per-second progress lines.
    #[arg(long)]
    pub quiet: bool,
}

impl WorkloadArgs {
    /// The block-size split as (size, weight) pairs.
    pub fn block_sizes(&self) -> Result<Vec<(u64, u32)>, String> {
        match &self.bssplit {
            None => Ok(vec![(self.bs, 100)]),
            Some(s) => parse_bssplit(s),
        }
    }
}

/// Parses `4k/50:64k/50` (a missing weight means an equal share of what is left).
pub fn parse_bssplit(s: &str) -> Result<Vec<(u64, u32)>, String> {
    let mut out = Vec::new();
    let mut unweighted = Vec::new();
    let mut total = 0u32;
    for part in s.split(':').filter(|p| !p.is_empty()) {
        let (bs, w) = match part.split_once('/') {
            Some((b, w)) => (b, Some(w)),
            None => (part, None),
        };
        let bs = parse_size(bs)?;
        if bs == 0 {
            return Err(format!("bssplit '{s}': block size 0"));
        }
        match w {
            Some(w) => {
                let w: u32 = w
                    .parse()
                    .map_err(|e| format!("bssplit '{s}': weight '{w}': {e}"))?;
                total = total.saturating_add(w);
                out.push((bs, w));
            }
            None => unweighted.push(bs),
        }
    }
    if total > 100 {
        return Err(format!("bssplit '{s}': weights add up to {total} > 100"));
    }
    if !unweighted.is_empty() {
        let n = u32::try_from(unweighted.len()).map_err(|_| "bssplit: too many sizes")?;
        let share = (100 - total) / n;
        for bs in unweighted {
            out.push((bs, share));
        }
    }
    out.retain(|&(_, w)| w > 0);
    if out.is_empty() {
        return Err(format!("bssplit '{s}': no block size with a weight"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bssplit() {
        assert_eq!(
            parse_bssplit("4k/50:64k/50"),
            Ok(vec![(4096, 50), (65536, 50)])
        );
        assert_eq!(
            parse_bssplit("4k/20:8k:16k"),
            Ok(vec![(4096, 20), (8192, 40), (16384, 40)])
        );
        assert!(parse_bssplit("4k/80:8k/30").is_err());
        assert!(parse_bssplit("0/100").is_err());
        assert!(parse_bssplit("4k/0").is_err());
    }

    #[test]
    fn cli_parses() {
        let c = Cli::try_parse_from([
            "ringperf",
            "--target",
            "/tmp/x",
            "--rw",
            "randrw",
            "--bssplit",
            "4k/50:64k/50",
            "--qd",
            "32",
            "--direct=false",
            "--cpus",
            "0,1",
        ])
        .unwrap();
        assert_eq!(c.target.as_deref(), Some("/tmp/x"));
        assert!(!c.workload.direct);
        assert_eq!(c.workload.cpus, vec![0, 1]);
        let c = Cli::try_parse_from(["ringperf", "compare", "a", "b", "--qd", "4"]).unwrap();
        match c.command {
            Some(Command::Compare(a)) => {
                assert_eq!(a.targets, vec!["a", "b"]);
                assert_eq!(a.workload.qd, 4);
            }
            None => panic!("no subcommand"),
        }
    }
}

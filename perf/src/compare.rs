//! `ringperf compare T1 T2 ...`: the same workload against several targets, alternated round
//! by round (so drift over time hits every target alike), then one row per target with the
//! ratios to the first.

use std::fmt::Write as _;

use serde::Serialize;

use crate::cli::CompareArgs;
use crate::error::PerfError;
use crate::intervals::IntervalSummary;
use crate::plot;
use crate::report::{banner, RunReport};
use crate::runner::{self, RunPlan};
use crate::stats::{new_hist, Hist, Lat};

/// One target's result over all rounds.
#[derive(Debug, Serialize)]
pub struct CompareRow {
    pub target: String,
    pub describe: String,
    /// IOPS of each round.
    pub rounds_iops: Vec<f64>,
    pub iops_mean: f64,
    pub mib_s_mean: f64,
    /// Latency over all rounds (histograms merged).
    pub lat: Lat,
    pub cpu_us_per_io: f64,
    pub errors: u64,
    /// IOPS of this target / IOPS of the first.
    pub iops_ratio: f64,
    /// p99 of this target / p99 of the first.
    pub p99_ratio: f64,
}

fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    #[allow(clippy::cast_precision_loss)]
    let n = v.len() as f64;
    v.iter().sum::<f64>() / n
}

/// Runs the comparison; Ok(false) if any run saw errors.
pub fn run(args: &CompareArgs) -> Result<bool, PerfError> {
    let w = &args.workload;
    let mut plans: Vec<RunPlan> = Vec::new();
    for t in &args.targets {
        plans.push(runner::plan(t, w)?);
    }
    let n = plans.len();
    let mut hists: Vec<Hist> = (0..n).map(|_| new_hist()).collect();
    let mut iops: Vec<Vec<f64>> = vec![Vec::new(); n];
    let mut mibs: Vec<Vec<f64>> = vec![Vec::new(); n];
    let mut cpu: Vec<Vec<f64>> = vec![Vec::new(); n];
    let mut errors = vec![0u64; n];
    let mut last_intervals: Vec<Vec<IntervalSummary>> = vec![Vec::new(); n];
    let mut title = String::new();
    let say = |s: String| {
        if w.json {
            eprintln!("{s}");
        } else {
            println!("{s}");
        }
    };
    for round in 1..=args.rounds {
        for (i, p) in plans.iter().enumerate() {
            let o = runner::run(p.clone(), |_| {})?;
            let rep = RunReport::of(&o);
            if title.is_empty() {
                title = banner(&rep);
            }
            say(format!(
                "round {round} {:<40} {:>11.1} IOPS  p50 {:>8.1} us  p99 {:>8.1} us  p99.9 {:>8.1} us  errors {}",
                p.label,
                rep.total.iops,
                rep.total.lat.p50_us,
                rep.total.lat.p99_us,
                rep.total.lat.p99_9_us,
                rep.io_errors + rep.verify_errors
            ));
            let _ = hists[i].add(o.total.data());
            iops[i].push(rep.total.iops);
            mibs[i].push(rep.total.mib_s);
            cpu[i].push(rep.total.cpu_us_per_io);
            errors[i] += rep.io_errors + rep.verify_errors;
            last_intervals[i] = o.intervals;
        }
    }
    let base_iops = mean(&iops[0]);
    let base_p99 = Lat::of(&hists[0]).p99_us;
    let rows: Vec<CompareRow> = plans
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let lat = Lat::of(&hists[i]);
            let im = mean(&iops[i]);
            CompareRow {
                target: p.label.clone(),
                describe: p.info.describe.clone(),
                rounds_iops: iops[i].clone(),
                iops_mean: im,
                mib_s_mean: mean(&mibs[i]),
                cpu_us_per_io: mean(&cpu[i]),
                errors: errors[i],
                iops_ratio: if base_iops > 0.0 { im / base_iops } else { 0.0 },
                p99_ratio: if base_p99 > 0.0 {
                    lat.p99_us / base_p99
                } else {
                    0.0
                },
                lat,
            }
        })
        .collect();
    if w.json {
        #[derive(Serialize)]
        struct Doc<'a> {
            workload: &'a str,
            rounds: u32,
            targets: &'a [CompareRow],
        }
        let doc = Doc {
            workload: &title,
            rounds: args.rounds,
            targets: &rows,
        };
        println!(
            "{}",
            serde_json::to_string_pretty(&doc).map_err(|e| PerfError::Config(e.to_string()))?
        );
    } else {
        print!("{}", table(&title, args.rounds, &rows));
    }
    if let Some(path) = &w.plot {
        let series: Vec<plot::Series<'_>> = rows
            .iter()
            .enumerate()
            .map(|(i, r)| plot::Series {
                label: r.target.clone(),
                hist: &hists[i],
                intervals: &last_intervals[i],
            })
            .collect();
        std::fs::write(path, plot::render(&title, &series)).map_err(|e| PerfError::Output {
            path: path.display().to_string(),
            source: e,
        })?;
    }
    let mut healthy = true;
    for p in &plans {
        let (lines, ok) = p.spec.finish()?;
        healthy &= ok;
        for l in lines {
            say(l);
        }
    }
    Ok(healthy && errors.iter().all(|&e| e == 0))
}

/// The comparison table.
pub fn table(title: &str, rounds: u32, rows: &[CompareRow]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{title}; {rounds} round(s), latencies in us, ratios against the first target"
    );
    let _ = writeln!(
        s,
        "{:<44} {:>11} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8} {:>7} {:>7}",
        "target", "IOPS", "(x)", "p50", "p99", "(x)", "p99.9", "max", "cpu/IO", "errors", ""
    );
    for r in rows {
        let _ = writeln!(
            s,
            "{:<44} {:>11.1} {:>8.3} {:>9.1} {:>9.1} {:>9.3} {:>9.1} {:>9.1} {:>8.2} {:>7}",
            r.target,
            r.iops_mean,
            r.iops_ratio,
            r.lat.p50_us,
            r.lat.p99_us,
            r.p99_ratio,
            r.lat.p99_9_us,
            r.lat.max_us,
            r.cpu_us_per_io,
            r.errors
        );
    }
    s
}

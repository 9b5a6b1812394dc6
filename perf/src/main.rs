//! ringperf: see perf/README.md.

use std::io::Write as _;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser as _;

use ringpool_perf::cli::{Cli, Command};
use ringpool_perf::{compare, intervals, plot, report, runner};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.command {
        Some(Command::Compare(args)) => compare::run(&args).map_err(anyhow::Error::from),
        None => match cli.target.as_deref() {
            Some(t) => single(t, &cli.workload),
            None => Err(anyhow::anyhow!(
                "no target: use --target PATH|nbd://HOST:PORT/EXPORT|nbd+unix:///EXPORT?socket=PATH, or `ringperf compare T1 T2 ...` (see --help)"
            )),
        },
    };
    match r {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(2),
        Err(e) => {
            eprintln!("ringperf: error: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// One run; Ok(false) when it saw I/O or verify errors.
fn single(target: &str, w: &ringpool_perf::cli::WorkloadArgs) -> anyhow::Result<bool> {
    let plan = runner::plan(target, w)?;
    let json = w.json;
    let quiet = w.quiet;
    let progress = move |s: &intervals::IntervalSummary| {
        if quiet {
            return;
        }
        let line = report::interval_line(s);
        if json {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
    };
    if !json {
        println!(
            "ringperf: {} ({} bytes, block {})",
            plan.info.describe, plan.info.size, plan.info.block
        );
    }
    let outcome = runner::run(plan, progress)?;
    let rep = report::RunReport::of(&outcome);
    if json {
        let mut out = std::io::stdout().lock();
        serde_json::to_writer_pretty(&mut out, &rep)?;
        writeln!(out)?;
    } else {
        println!("{}", report::banner(&rep));
        print!("{}", report::table(&rep));
    }
    if let Some(p) = &w.hlog {
        let c = interval_collector_of(&outcome);
        c.write_hlog(p, outcome.start_wall, &report::banner(&rep))
            .with_context(|| format!("writing {}", p.display()))?;
    }
    if let Some(p) = &w.plot {
        let svg = plot::render(
            &report::banner(&rep),
            &[plot::Series {
                label: target.to_string(),
                hist: &outcome.total.data(),
                intervals: &outcome.intervals,
            }],
        );
        std::fs::write(p, svg).with_context(|| format!("writing {}", p.display()))?;
    }
    let (lines, healthy) = outcome.plan.spec.finish()?;
    for l in lines {
        if json {
            eprintln!("{l}");
        } else {
            println!("{l}");
        }
    }
    Ok(!rep.failed() && healthy)
}

fn interval_collector_of(o: &runner::RunOutcome) -> intervals::Collector {
    let mut c = intervals::Collector::new(0, o.plan.w.ramp);
    c.hists = o.interval_hists.clone();
    c.summaries = o.intervals.clone();
    c
}

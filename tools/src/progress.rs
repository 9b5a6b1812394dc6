//! Progress of `verify`, `checkpoint -d -w` and `wait -t discard`: an indicatif bar on a
//! terminal (stderr), plain lines otherwise (at most one a second by default, so a log stays
//! readable).

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

use crate::request::Progress;
use crate::size::nicenum;

/// How often a plain progress line is printed when stderr is not a terminal, unless the
/// environment variable `RINGPOOL_PROGRESS_EVERY_MS` says otherwise (0: every report, about
/// ten a second).
const LINE_EVERY: Duration = Duration::from_secs(1);

fn line_every() -> Duration {
    ringpool_driver::knob::env("RINGPOOL_PROGRESS_EVERY_MS")
        .map_or(LINE_EVERY, Duration::from_millis)
}

/// What is progressing; decides the words around the numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activity {
    /// `done` = bytes checked, `total` = bytes expected.
    Verify,
    /// `done` = bytes released, `total` = bytes the checkpoint held when the wait began.
    Discard,
}

/// Shows the progress of one activity until [`Reporter::finish`].
#[derive(Debug)]
pub struct Reporter {
    activity: Activity,
    pool: String,
    bar: Option<ProgressBar>,
    /// When the last plain line was printed (or the reporter made).
    last_line: Option<Instant>,
    line_every: Duration,
}

impl Reporter {
    /// A bar on a terminal (drawn from the start, so the wait before the first report shows
    /// too), plain lines otherwise.
    pub fn new(activity: Activity, pool: &str) -> Reporter {
        let bar = std::io::stderr().is_terminal().then(|| {
            let template = match activity {
                Activity::Verify => format!(
                    "verifying '{pool}' {{bar:40}} {{binary_bytes}}/{{binary_total_bytes}} \
                     checked, {{elapsed}} (eta {{eta}})"
                ),
                Activity::Discard => {
                    format!("discarding the checkpoint of '{pool}' {{bar:40}} {{msg}}")
                }
            };
            let b = ProgressBar::new(0);
            b.set_style(
                ProgressStyle::with_template(&template)
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            b.enable_steady_tick(Duration::from_millis(200));
            b
        });
        Reporter {
            activity,
            pool: pool.to_string(),
            bar,
            // The first plain line comes after a second: a quick request prints none.
            last_line: Some(Instant::now()),
            line_every: line_every(),
        }
    }

    /// Shows `p`.
    pub fn update(&mut self, p: Progress) {
        // verify's total is an estimate: the bar never runs past its end.
        let total = p.total.max(p.done);
        let remaining = p.total.saturating_sub(p.done);
        if let Some(b) = &self.bar {
            b.set_length(total);
            b.set_position(p.done);
            if self.activity == Activity::Discard {
                b.set_message(format!("{} remaining", nicenum(remaining)));
            }
            return;
        }
        let now = Instant::now();
        if self
            .last_line
            .is_some_and(|t| now.duration_since(t) < self.line_every)
        {
            return;
        }
        self.last_line = Some(now);
        let percent = p.done.saturating_mul(100).checked_div(total).unwrap_or(100);
        match self.activity {
            Activity::Verify => eprintln!(
                "verify of '{}': {} of {} checked ({percent}%)",
                self.pool,
                nicenum(p.done),
                nicenum(total)
            ),
            Activity::Discard => eprintln!(
                "checkpoint: discarding, {} remaining ({percent}% released)",
                nicenum(remaining)
            ),
        }
    }

    /// Removes the bar (the command prints its result next).
    pub fn finish(self) {
        if let Some(b) = self.bar {
            b.finish_and_clear();
        }
    }
}

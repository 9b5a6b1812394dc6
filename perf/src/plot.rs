//! `--plot FILE.svg`: the latency percentile spectrum (HdrHistogram style: x = percentile on a
//! log(1/(1-p)) axis, y = latency on a log axis) and IOPS + p99 over time. Hand-written SVG.

use std::fmt::Write;

use crate::intervals::IntervalSummary;
use crate::stats::Hist;

/// One run to draw.
#[derive(Debug)]
pub struct Series<'a> {
    pub label: String,
    pub hist: &'a Hist,
    pub intervals: &'a [IntervalSummary],
}

const W: f64 = 960.0;
const H: f64 = 760.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 80.0;
const COLORS: [&str; 6] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn f(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// Renders the SVG document.
pub fn render(title: &str, series: &[Series<'_>]) -> String {
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{}" y="22" font-size="15" text-anchor="middle">{}</text>
"#,
        W / 2.0,
        esc(title)
    );
    spectrum(&mut s, series, 40.0, 340.0);
    timeline(&mut s, series, 420.0, 300.0);
    s.push_str("</svg>\n");
    s
}

/// Top panel: latency by percentile.
fn spectrum(s: &mut String, series: &[Series<'_>], top: f64, height: f64) {
    let pw = W - LEFT - RIGHT;
    // x axis: 0 = p0, 1 = p90, 2 = p99, ... up to what the sample count supports.
    let max_samples = series
        .iter()
        .map(|x| x.hist.len())
        .max()
        .unwrap_or(1)
        .max(10);
    #[allow(clippy::cast_precision_loss)]
    let xmax = (max_samples as f64).log10().floor().clamp(1.0, 7.0);
    let (mut lo, mut hi) = (f64::MAX, 0f64);
    for sr in series.iter().filter(|x| !x.hist.is_empty()) {
        #[allow(clippy::cast_precision_loss)]
        {
            lo = lo.min(sr.hist.min().max(1) as f64 / 1000.0);
            hi = hi.max(sr.hist.max().max(1) as f64 / 1000.0);
        }
    }
    if hi <= 0.0 {
        lo = 1.0;
        hi = 10.0;
    }
    let ylo = lo.log10().floor();
    let yhi = hi.log10().ceil().max(ylo + 1.0);
    let px = |x: f64| LEFT + x / xmax * pw;
    let py = |us: f64| top + height - (us.max(1e-3).log10() - ylo) / (yhi - ylo) * height;
    let _ = writeln!(
        s,
        r##"<text x="{}" y="{}" text-anchor="middle">latency by percentile</text>"##,
        W / 2.0,
        top + 12.0
    );
    let _ = writeln!(
        s,
        r##"<rect x="{LEFT}" y="{top}" width="{pw}" height="{height}" fill="none" stroke="#888"/>"##
    );
    // Decade grid lines on the latency axis.
    let mut d = ylo;
    while d <= yhi {
        let y = f(py(10f64.powf(d)));
        let label = if d >= 3.0 {
            format!("{} ms", 10f64.powf(d - 3.0))
        } else {
            format!("{} µs", 10f64.powf(d))
        };
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" y1="{y}" x2="{}" y2="{y}" stroke="#ddd"/><text x="{}" y="{}" text-anchor="end">{label}</text>"##,
            LEFT + pw,
            LEFT - 6.0,
            y + 4.0
        );
        d += 1.0;
    }
    let mut k = 0.0;
    while k <= xmax {
        let x = f(px(k));
        let label = match k {
            0.0 => "0%".to_string(),
            _ => {
                let p = 100.0 - 100.0 / 10f64.powf(k);
                format!("{p}%")
            }
        };
        let _ = writeln!(
            s,
            r##"<line x1="{x}" y1="{top}" x2="{x}" y2="{}" stroke="#ddd"/><text x="{x}" y="{}" text-anchor="middle">{label}</text>"##,
            top + height,
            top + height + 16.0
        );
        k += 1.0;
    }
    let _ = writeln!(
        s,
        r##"<text x="{}" y="{}" text-anchor="middle">percentile</text>"##,
        W / 2.0,
        top + height + 32.0
    );
    for (i, sr) in series.iter().enumerate() {
        if sr.hist.is_empty() {
            continue;
        }
        let c = COLORS[i % COLORS.len()];
        let mut pts = String::new();
        let steps = 400;
        for j in 0..=steps {
            let x = xmax * f64::from(j) / f64::from(steps);
            let q = 1.0 - 10f64.powf(-x);
            #[allow(clippy::cast_precision_loss)]
            let us = sr.hist.value_at_quantile(q) as f64 / 1000.0;
            let _ = write!(pts, "{},{} ", f(px(x)), f(py(us)));
        }
        let _ = writeln!(
            s,
            r##"<polyline fill="none" stroke="{c}" stroke-width="1.8" points="{pts}"/>"##
        );
        legend(s, i, c, &sr.label, top);
    }
}

fn legend(s: &mut String, i: usize, color: &str, label: &str, top: f64) {
    #[allow(clippy::cast_precision_loss)]
    let y = top + 24.0 + 16.0 * i as f64;
    let _ = writeln!(
        s,
        r##"<line x1="{}" y1="{}" x2="{}" y2="{}" stroke="{color}" stroke-width="3"/><text x="{}" y="{}">{}</text>"##,
        LEFT + 10.0,
        y - 4.0,
        LEFT + 30.0,
        y - 4.0,
        LEFT + 36.0,
        y,
        esc(label)
    );
}

/// Bottom panel: IOPS (solid, left axis) and p99 (dashed, right axis) per second.
fn timeline(s: &mut String, series: &[Series<'_>], top: f64, height: f64) {
    let pw = W - LEFT - RIGHT;
    let tmax = series
        .iter()
        .filter_map(|x| x.intervals.last().map(|i| i.t_s))
        .fold(1.0, f64::max);
    let iops_max = series
        .iter()
        .flat_map(|x| x.intervals.iter().map(|i| i.iops))
        .fold(1.0, f64::max)
        * 1.1;
    let p99_max = series
        .iter()
        .flat_map(|x| x.intervals.iter().map(|i| i.p99_us))
        .fold(1.0, f64::max)
        * 1.1;
    let px = |t: f64| LEFT + t / tmax * pw;
    let _ = writeln!(
        s,
        r##"<text x="{}" y="{}" text-anchor="middle">IOPS (solid, left) and p99 latency (dashed, right) per second</text>
<rect x="{LEFT}" y="{top}" width="{pw}" height="{height}" fill="none" stroke="#888"/>"##,
        W / 2.0,
        top - 8.0
    );
    for j in 0..=4 {
        let fr = f64::from(j) / 4.0;
        let y = f(top + height - fr * height);
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" y1="{y}" x2="{}" y2="{y}" stroke="#eee"/><text x="{}" y="{}" text-anchor="end">{:.0}</text><text x="{}" y="{}">{:.0} µs</text>"##,
            LEFT + pw,
            LEFT - 6.0,
            y + 4.0,
            iops_max * fr,
            LEFT + pw + 6.0,
            y + 4.0,
            p99_max * fr
        );
    }
    let step = (tmax / 10.0).ceil().max(1.0);
    let mut t = 0.0;
    while t <= tmax {
        let _ = writeln!(
            s,
            r##"<text x="{}" y="{}" text-anchor="middle">{t}s</text>"##,
            f(px(t)),
            top + height + 16.0
        );
        t += step;
    }
    for (i, sr) in series.iter().enumerate() {
        let c = COLORS[i % COLORS.len()];
        let (mut a, mut b) = (String::new(), String::new());
        for iv in sr.intervals {
            let x = f(px(iv.t_s));
            let _ = write!(a, "{x},{} ", f(top + height - iv.iops / iops_max * height));
            let _ = write!(b, "{x},{} ", f(top + height - iv.p99_us / p99_max * height));
        }
        let _ = writeln!(
            s,
            r##"<polyline fill="none" stroke="{c}" stroke-width="1.8" points="{a}"/><polyline fill="none" stroke="{c}" stroke-width="1.2" stroke-dasharray="5,3" points="{b}"/>"##
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::{new_hist, record};

    #[test]
    fn renders_well_formed_svg() {
        let mut h = new_hist();
        for i in 1..10_000u64 {
            record(&mut h, 20_000 + i * 7);
        }
        let iv = vec![
            IntervalSummary {
                t_s: 1.0,
                ramp: false,
                iops: 1000.0,
                mib_s: 4.0,
                errors: 0,
                p50_us: 50.0,
                p99_us: 90.0,
                max_us: 100.0,
            };
            3
        ];
        let svg = render(
            "a <test>",
            &[Series {
                label: "x&y".into(),
                hist: &h,
                intervals: &iv,
            }],
        );
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("a &lt;test&gt;") && svg.contains("x&amp;y"));
        assert_eq!(svg.matches("<polyline").count(), 3);
        assert!(!svg.contains("NaN") && !svg.contains("inf"));
    }
}

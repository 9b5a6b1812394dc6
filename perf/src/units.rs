//! Parsing and printing of sizes and durations (`4k`, `1G`, `10s`, `500ms`), the way fio spells
//! them: size suffixes are binary (k = 1024), durations default to seconds.

use std::time::Duration;

/// Parses a byte size: a decimal number with an optional binary suffix
/// (`k`, `m`, `g`, `t`, optionally followed by `i`/`b`/`ib`, case-insensitive).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim().to_ascii_lowercase();
    let digits_end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    if digits_end == 0 {
        return Err(format!("size '{s}': expected a number"));
    }
    let n: u64 = t[..digits_end]
        .parse()
        .map_err(|e| format!("size '{s}': {e}"))?;
    let mult: u64 = match &t[digits_end..] {
        "" | "b" => 1,
        "k" | "kb" | "ki" | "kib" => 1 << 10,
        "m" | "mb" | "mi" | "mib" => 1 << 20,
        "g" | "gb" | "gi" | "gib" => 1 << 30,
        "t" | "tb" | "ti" | "tib" => 1 << 40,
        other => return Err(format!("size '{s}': unknown suffix '{other}'")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("size '{s}': too large"))
}

/// Parses a duration: a number with an optional unit (`us`, `ms`, `s`, `m`, `h`); no unit means
/// seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim().to_ascii_lowercase();
    let digits_end = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let n: f64 = t[..digits_end]
        .parse()
        .map_err(|e| format!("duration '{s}': {e}"))?;
    let secs = match &t[digits_end..] {
        "" | "s" | "sec" => n,
        "us" => n / 1e6,
        "ms" => n / 1e3,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        other => return Err(format!("duration '{s}': unknown unit '{other}'")),
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("duration '{s}': out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Formats a byte count with a binary suffix when it divides evenly (`4k`, `1M`), else bytes.
pub fn fmt_size(n: u64) -> String {
    const UNITS: [(u64, &str); 4] = [
        (1 << 40, "T"),
        (1 << 30, "G"),
        (1 << 20, "M"),
        (1 << 10, "k"),
    ];
    for (m, u) in UNITS {
        if n >= m && n.is_multiple_of(m) {
            return format!("{}{u}", n / m);
        }
    }
    n.to_string()
}

/// Nanoseconds to microseconds as f64, for reports.
pub fn ns_to_us(ns: u64) -> f64 {
    // Precision loss above 2^53 ns (104 days) is irrelevant for latencies.
    #[allow(clippy::cast_precision_loss)]
    let v = ns as f64 / 1000.0;
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4k"), Ok(4096));
        assert_eq!(parse_size("4KiB"), Ok(4096));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("512"), Ok(512));
        assert!(parse_size("k").is_err());
        assert!(parse_size("4x").is_err());
        assert!(parse_size("99999999999999999999t").is_err());
        assert_eq!(fmt_size(65536), "64k");
        assert_eq!(fmt_size(1 << 30), "1G");
        assert_eq!(fmt_size(1000), "1000");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("-1").is_err());
        assert!(parse_duration("3 days").is_err());
    }
}

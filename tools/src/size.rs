//! Human-readable sizes: parsing (`4G`, `128k`, `1.5T`, `4096`) and zpool-style printing.

use anyhow::{bail, Context, Result};

/// Parses a size with an optional binary suffix (K, M, G, T, P; an optional trailing `B`/`iB`).
pub fn parse_size(text: &str) -> Result<u64> {
    let t = text.trim();
    if t.is_empty() {
        bail!("empty size");
    }
    let upper = t.to_ascii_uppercase();
    let stripped = upper
        .strip_suffix("IB")
        .or_else(|| upper.strip_suffix('B'))
        .unwrap_or(&upper);
    let (number, shift) = match stripped.chars().last() {
        Some('K') => (&stripped[..stripped.len() - 1], 10),
        Some('M') => (&stripped[..stripped.len() - 1], 20),
        Some('G') => (&stripped[..stripped.len() - 1], 30),
        Some('T') => (&stripped[..stripped.len() - 1], 40),
        Some('P') => (&stripped[..stripped.len() - 1], 50),
        _ => (stripped, 0),
    };
    if let Ok(whole) = number.parse::<u64>() {
        return whole
            .checked_mul(1u64 << shift)
            .with_context(|| format!("size '{text}' is too large"));
    }
    let value: f64 = number
        .parse()
        .with_context(|| format!("invalid size '{text}'"))?;
    if !value.is_finite() || value < 0.0 {
        bail!("invalid size '{text}'");
    }
    let bytes = value * (1u64 << shift) as f64;
    if bytes >= u64::MAX as f64 {
        bail!("size '{text}' is too large");
    }
    // Checked above: finite, non-negative and below u64::MAX.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    Ok(bytes.round() as u64)
}

/// Formats bytes like zpool's `nicenum`: `0`, `512`, `4K`, `1.50G`, `96.5M`.
pub fn nicenum(bytes: u64) -> String {
    const UNITS: [&str; 7] = ["", "K", "M", "G", "T", "P", "E"];
    if bytes < 1024 {
        return bytes.to_string();
    }
    let mut index = 0;
    let mut value = bytes as f64;
    while value >= 1024.0 && index < UNITS.len() - 1 {
        value /= 1024.0;
        index += 1;
    }
    let unit = UNITS[index];
    if bytes.is_multiple_of(1u64 << (10 * index)) {
        return format!("{}{unit}", bytes >> (10 * index));
    }
    if value < 10.0 {
        format!("{value:.2}{unit}")
    } else if value < 100.0 {
        format!("{value:.1}{unit}")
    } else {
        format!("{value:.0}{unit}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_suffixes() {
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("4k").unwrap(), 4096);
        assert_eq!(parse_size("4KiB").unwrap(), 4096);
        assert_eq!(parse_size("1G").unwrap(), 1 << 30);
        assert_eq!(parse_size("1.5M").unwrap(), 3 << 19);
        assert!(parse_size("").is_err());
        assert!(parse_size("abc").is_err());
        assert!(parse_size("-1G").is_err());
        assert!(parse_size("99999999999P").is_err());
    }

    #[test]
    fn formats_like_zpool() {
        assert_eq!(nicenum(0), "0");
        assert_eq!(nicenum(512), "512");
        assert_eq!(nicenum(4096), "4K");
        assert_eq!(nicenum(1 << 30), "1G");
        assert_eq!(nicenum(3 << 29), "1.50G");
        assert_eq!(nicenum(100 << 20 | 1), "100M");
    }
}

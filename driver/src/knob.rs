//! Tunables read from the environment (`RINGPOOL_*`), with one rule for every knob: the value
//! is trimmed and parsed; unset or unparseable means the built-in default. Knobs are for
//! measuring alternatives (perf/nbd-ab.sh's A_ENV/B_ENV), so a typo must never stop a server.

use std::str::FromStr;

/// The value of the environment variable `name`, if it is set and parses as a `T`.
pub fn env<T: FromStr>(name: &str) -> Option<T> {
    parse(std::env::var(name).ok())
}

/// A switch that is on unless the environment variable `name` is "0".
pub fn enabled(name: &str) -> bool {
    switch(std::env::var(name).ok())
}

fn parse<T: FromStr>(value: Option<String>) -> Option<T> {
    value?.trim().parse().ok()
}

fn switch(value: Option<String>) -> bool {
    value.is_none_or(|v| v.trim() != "0")
}

#[cfg(test)]
mod tests {
    use super::*;

    // The rules are tested on values, not by setting variables: the test threads share the
    // process environment, and setenv racing a getenv is undefined in glibc.
    #[test]
    fn values_are_trimmed_and_bad_ones_are_ignored() {
        assert_eq!(parse::<u64>(Some(" 42\n".into())), Some(42));
        assert_eq!(parse::<u64>(Some("4x".into())), None);
        assert_eq!(parse::<u64>(Some(String::new())), None);
        assert_eq!(parse::<u64>(None), None);
    }

    #[test]
    fn a_switch_is_off_only_for_zero() {
        assert!(!switch(Some(" 0 ".into())));
        assert!(switch(Some("1".into())));
        assert!(switch(Some("off".into())));
        assert!(switch(None));
    }
}

//! Durations written the short way: `500ms`, `30s`, `2m`, `1h`, `1h30m`.
//!
//! Tier topic names are derived from these strings (`orders.retry-2m`), so parsing is strict and
//! formatting is canonical: `format(parse(s))` is the shortest spelling of the same duration.

use std::fmt;
use std::time::Duration;

/// Why a duration string was rejected. The message says what a valid one looks like.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {input:?}: {problem} (write it like 500ms, 30s, 2m, 1h or 1h30m)")]
pub struct DurationError {
    input: String,
    problem: &'static str,
}

const UNITS: [(&str, u64); 5] = [
    ("d", 86_400_000),
    ("h", 3_600_000),
    ("m", 60_000),
    ("s", 1_000),
    ("ms", 1),
];

/// Parses `1h30m`, `500ms`, `2m`, … into a [`Duration`] with millisecond resolution.
///
/// Each part is digits followed by one of `d`, `h`, `m`, `s`, `ms`; parts are summed. Zero is
/// allowed here (`0s`); callers that need a positive duration check that themselves.
pub fn parse(input: &str) -> Result<Duration, DurationError> {
    let err = |problem| DurationError {
        input: input.to_string(),
        problem,
    };
    let s = input.trim();
    if s.is_empty() {
        return Err(err("it is empty"));
    }
    let bytes = s.as_bytes();
    let mut i = 0;
    let mut total_ms: u64 = 0;
    while i < bytes.len() {
        let start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            return Err(err("expected a number"));
        }
        let number: u64 = s[start..i].parse().map_err(|_| err("number too large"))?;
        let unit_start = i;
        while i < bytes.len() && bytes[i].is_ascii_alphabetic() {
            i += 1;
        }
        let unit = &s[unit_start..i];
        let factor = match unit {
            "" => return Err(err("a number needs a unit")),
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return Err(err("unknown unit")),
        };
        total_ms = number
            .checked_mul(factor)
            .and_then(|v| total_ms.checked_add(v))
            .ok_or_else(|| err("duration too large"))?;
    }
    Ok(Duration::from_millis(total_ms))
}

/// The canonical short spelling: `2m`, `1h30m`, `1500ms` is written `1s500ms`.
pub fn format(d: Duration) -> String {
    let mut ms = d.as_millis() as u64;
    if ms == 0 {
        return "0s".to_string();
    }
    let mut out = String::new();
    for (unit, factor) in UNITS {
        if ms >= factor {
            let n = ms / factor;
            ms %= factor;
            out.push_str(&n.to_string());
            out.push_str(unit);
        }
    }
    out
}

/// A duration that prints in the short form; handy in log fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Short(pub Duration);

impl fmt::Display for Short {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format(self.0))
    }
}

/// Serde adapter: a duration field written as a short string in TOML.
pub mod serde_short {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let s: Option<String> = Option::deserialize(d)?;
        s.map(|s| super::parse(&s).map_err(serde::de::Error::custom))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_the_contract_examples() {
        assert_eq!(parse("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse(" 2d ").unwrap(), Duration::from_secs(172_800));
    }

    #[test]
    fn rejects_what_is_not_a_short_duration() {
        for bad in [
            "",
            "2",
            "m",
            "2 m",
            "2min",
            "-1s",
            "1.5s",
            "1h30",
            "99999999999999999999s",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} should be rejected");
        }
        let msg = parse("2min").unwrap_err().to_string();
        assert!(msg.contains("2min") && msg.contains("1h30m"), "{msg}");
    }

    #[test]
    fn formats_canonically() {
        assert_eq!(format(Duration::from_secs(120)), "2m");
        assert_eq!(format(Duration::from_secs(5400)), "1h30m");
        assert_eq!(format(Duration::from_millis(1500)), "1s500ms");
        assert_eq!(format(Duration::from_millis(250)), "250ms");
        assert_eq!(format(Duration::ZERO), "0s");
    }

    proptest! {
        #[test]
        fn format_then_parse_round_trips(ms in 0u64..10_000_000_000) {
            let d = Duration::from_millis(ms);
            prop_assert_eq!(parse(&format(d)).unwrap(), d);
        }

        #[test]
        fn parts_are_summed_whatever_the_spelling(
            h in 0u64..100, m in 0u64..120, sec in 0u64..120, ms in 0u64..2000,
        ) {
            let want = Duration::from_millis(((h * 60 + m) * 60 + sec) * 1000 + ms);
            prop_assert_eq!(parse(&format!("{h}h{m}m{sec}s{ms}ms")).unwrap(), want);
            prop_assert_eq!(parse(&format!(" {ms}ms ")).unwrap(), Duration::from_millis(ms));
            prop_assert!(parse(&format!("{h}x")).is_err(), "unknown unit");
            prop_assert!(parse(&format!("{h}")).is_err(), "a number needs a unit");
        }

        #[test]
        fn parse_never_panics(s in "\\PC{0,12}") {
            let _ = parse(&s);
        }
    }
}

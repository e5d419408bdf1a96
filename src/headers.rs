//! The contract's header names and the encoding of their values (pure; no Kafka types).
//!
//! A message's headers are modelled as an ordered list of raw `(name, value)` pairs so that the
//! user's own headers — including duplicates, non-UTF-8 names and null values — are carried to the
//! next hop byte for byte. rebound only ever replaces the headers it owns (see [`OWNED`]).

use chrono::{DateTime, SecondsFormat, TimeZone, Utc};

pub const PROCESS_AFTER: &str = "process_after";
pub const ATTEMPT: &str = "rebound-attempt";
pub const ORIGINAL_TOPIC: &str = "rebound-original-topic";
pub const ORIGINAL_PARTITION: &str = "rebound-original-partition";
pub const ORIGINAL_OFFSET: &str = "rebound-original-offset";
pub const ORIGINAL_TIMESTAMP: &str = "rebound-original-timestamp";
pub const FIRST_FAILED_AT: &str = "rebound-first-failed-at";
pub const ERROR_KIND: &str = "rebound-error-kind";
pub const ERROR_CLASS: &str = "rebound-error-class";
pub const ERROR_MESSAGE: &str = "rebound-error-message";
pub const DLQ_REASON: &str = "rebound-dlq-reason";
pub const REPLAY_COUNT: &str = "rebound-replay-count";
pub const REPLAYED_AT: &str = "rebound-replayed-at";

/// Headers whose value rebound decides; every other header is the user's and passes unchanged.
/// (`rebound-replay-count` / `-replayed-at` are set by `replay-dlq` only and otherwise carried.)
pub const OWNED: [&str; 11] = [
    PROCESS_AFTER,
    ATTEMPT,
    ORIGINAL_TOPIC,
    ORIGINAL_PARTITION,
    ORIGINAL_OFFSET,
    ORIGINAL_TIMESTAMP,
    FIRST_FAILED_AT,
    ERROR_KIND,
    ERROR_CLASS,
    ERROR_MESSAGE,
    DLQ_REASON,
];

/// `rebound-error-message` is cut to this many bytes, on a character boundary.
pub const MAX_ERROR_MESSAGE: usize = 1024;

/// Largest `rebound-attempt` accepted on read; anything above is treated as corrupt.
pub const MAX_ATTEMPT: u32 = 1_000_000;

/// Epoch-millisecond values below this (1973-03-03) are almost certainly epoch *seconds*.
const MIN_EPOCH_MILLIS: i64 = 100_000_000_000;

/// One Kafka header: the name as raw bytes (Kafka does not promise UTF-8) and an optional value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub name: Vec<u8>,
    pub value: Option<Vec<u8>>,
}

impl Header {
    pub fn new(name: &str, value: impl Into<Vec<u8>>) -> Self {
        Header {
            name: name.as_bytes().to_vec(),
            value: Some(value.into()),
        }
    }
}

/// The value of the *last* header called `name` (Kafka's `lastHeader` convention), if any.
pub fn last<'a>(headers: &'a [Header], name: &str) -> Option<&'a Header> {
    headers.iter().rev().find(|h| h.name == name.as_bytes())
}

/// A header that is present but cannot be read. Routed to the DLQ with reason `invalid`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("header {name}: {problem} (value: {shown})")]
pub struct InvalidHeader {
    pub name: &'static str,
    pub problem: String,
    /// The start of the offending value, printable.
    pub shown: String,
}

impl InvalidHeader {
    fn new(name: &'static str, problem: impl Into<String>, value: &[u8]) -> Self {
        let lossy = String::from_utf8_lossy(&value[..value.len().min(64)]).into_owned();
        let shown = if value.len() > 64 {
            format!("{lossy:?}…")
        } else {
            format!("{lossy:?}")
        };
        InvalidHeader {
            name,
            problem: problem.into(),
            shown,
        }
    }
}

/// The latest time RFC 3339 can spell (its years have four digits): `9999-12-31T23:59:59.999Z`.
pub fn latest_time() -> DateTime<Utc> {
    Utc.timestamp_millis_opt(253_402_300_799_999)
        .single()
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// The earliest time RFC 3339 can spell: `0000-01-01T00:00:00.000Z`.
pub fn earliest_time() -> DateTime<Utc> {
    Utc.timestamp_millis_opt(-62_167_219_200_000)
        .single()
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// RFC 3339, UTC, milliseconds: `2026-11-24T14:30:00.000Z`.
///
/// A time outside the years 0000–9999 is written as the nearest one inside: chrono would write
/// `+33715-08-27T…`, which is not RFC 3339 and which [`parse_time`] (like any RFC 3339 reader)
/// refuses. So every time rebound writes is one it reads back.
pub fn format_time(t: DateTime<Utc>) -> String {
    t.clamp(earliest_time(), latest_time())
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Reads a time header: RFC 3339 (any offset) or epoch milliseconds.
pub fn parse_time(
    name: &'static str,
    value: Option<&[u8]>,
) -> Result<DateTime<Utc>, InvalidHeader> {
    let raw = value.ok_or_else(|| InvalidHeader::new(name, "has no value", b""))?;
    let text = std::str::from_utf8(raw)
        .map_err(|_| InvalidHeader::new(name, "is not UTF-8", raw))?
        .trim();
    if text.is_empty() {
        return Err(InvalidHeader::new(name, "is empty", raw));
    }
    if text.bytes().all(|b| b.is_ascii_digit()) {
        let ms: i64 = text
            .parse()
            .map_err(|_| InvalidHeader::new(name, "epoch milliseconds out of range", raw))?;
        if ms < MIN_EPOCH_MILLIS {
            return Err(InvalidHeader::new(
                name,
                "looks like epoch seconds; write epoch milliseconds or RFC 3339",
                raw,
            ));
        }
        return Utc
            .timestamp_millis_opt(ms)
            .single()
            .ok_or_else(|| InvalidHeader::new(name, "epoch milliseconds out of range", raw));
    }
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| InvalidHeader::new(name, format!("is not RFC 3339 ({e})"), raw))
}

/// Reads `rebound-attempt`: a decimal integer from 0 to [`MAX_ATTEMPT`].
pub fn parse_attempt(value: Option<&[u8]>) -> Result<u32, InvalidHeader> {
    let raw = value.ok_or_else(|| InvalidHeader::new(ATTEMPT, "has no value", b""))?;
    let text =
        std::str::from_utf8(raw).map_err(|_| InvalidHeader::new(ATTEMPT, "is not UTF-8", raw))?;
    let n: u32 = text
        .trim()
        .parse()
        .map_err(|_| InvalidHeader::new(ATTEMPT, "is not a non-negative integer", raw))?;
    if n > MAX_ATTEMPT {
        return Err(InvalidHeader::new(
            ATTEMPT,
            format!("is larger than {MAX_ATTEMPT}"),
            raw,
        ));
    }
    Ok(n)
}

/// Cuts `s` to at most `max` bytes without splitting a character.
pub fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// What a message read from a delay tier says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryState {
    pub process_after: DateTime<Utc>,
    /// Failed attempts so far (≥ 1 in a tier).
    pub attempt: u32,
    /// Absent only on messages written by something other than rebound.
    pub first_failed_at: Option<DateTime<Utc>>,
}

/// Decodes the routing headers of a message read from a delay tier.
pub fn read_retry_state(headers: &[Header]) -> Result<RetryState, InvalidHeader> {
    let process_after = match last(headers, PROCESS_AFTER) {
        None => return Err(InvalidHeader::new(PROCESS_AFTER, "is missing", b"")),
        Some(h) => parse_time(PROCESS_AFTER, h.value.as_deref())?,
    };
    let attempt = match last(headers, ATTEMPT) {
        None => return Err(InvalidHeader::new(ATTEMPT, "is missing", b"")),
        Some(h) => parse_attempt(h.value.as_deref())?,
    };
    if attempt == 0 {
        return Err(InvalidHeader::new(
            ATTEMPT,
            "is 0, but a message in a retry tier has failed at least once",
            b"0",
        ));
    }
    let first_failed_at = last(headers, FIRST_FAILED_AT)
        .map(|h| parse_time(FIRST_FAILED_AT, h.value.as_deref()))
        .transpose()?;
    Ok(RetryState {
        process_after,
        attempt,
        first_failed_at,
    })
}

/// Builds the header list of an outgoing copy: every incoming header not named in `set` (in
/// order, duplicates kept), then the headers in `set`. So owned headers that `set` does not name
/// are carried over as they were (e.g. `rebound-original-*` on a tier-to-tier hop).
pub fn rewrite(incoming: &[Header], set: &[(&'static str, String)]) -> Vec<Header> {
    let mut out: Vec<Header> = incoming
        .iter()
        .filter(|h| !set.iter().any(|(name, _)| h.name == name.as_bytes()))
        .cloned()
        .collect();
    for (name, value) in set {
        out.push(Header::new(name, value.as_bytes()));
    }
    out
}

/// Removes every header rebound owns, keeping the user's and replay bookkeeping.
pub fn strip_owned(incoming: &[Header]) -> Vec<Header> {
    incoming
        .iter()
        .filter(|h| !OWNED.iter().any(|name| h.name == name.as_bytes()))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn h(name: &str, value: &str) -> Header {
        Header::new(name, value.as_bytes())
    }

    #[test]
    fn time_round_trips_in_the_contract_format() {
        let t = Utc.with_ymd_and_hms(2026, 11, 24, 14, 30, 0).unwrap();
        assert_eq!(format_time(t), "2026-11-24T14:30:00.000Z");
        assert_eq!(
            parse_time(PROCESS_AFTER, Some(b"2026-11-24T14:30:00.000Z")).unwrap(),
            t
        );
        assert_eq!(
            parse_time(PROCESS_AFTER, Some(b"2026-11-24T15:30:00+01:00")).unwrap(),
            t
        );
        assert_eq!(
            parse_time(
                PROCESS_AFTER,
                Some(t.timestamp_millis().to_string().as_bytes())
            )
            .unwrap(),
            t
        );
    }

    #[test]
    fn times_beyond_year_9999_are_written_as_its_last_millisecond() {
        let far = Utc.timestamp_millis_opt(1_000_000_000_000_000).unwrap();
        assert_eq!(format_time(far), "9999-12-31T23:59:59.999Z");
        assert_eq!(
            parse_time(PROCESS_AFTER, Some(b"9999-12-31T23:59:59.999Z")).unwrap(),
            latest_time()
        );
        let early = Utc.timestamp_millis_opt(-100_000_000_000_000).unwrap();
        assert_eq!(format_time(early), "0000-01-01T00:00:00.000Z");
        assert_eq!(
            parse_time(PROCESS_AFTER, Some(b"0000-01-01T00:00:00.000Z")).unwrap(),
            earliest_time()
        );
    }

    #[test]
    fn bad_times_are_invalid_not_panics() {
        for bad in [
            &b""[..],
            b"  ",
            b"tomorrow",
            b"\xff\xfe",
            b"1732458600",
            b"99999999999999999999999",
        ] {
            let err = parse_time(PROCESS_AFTER, Some(bad)).unwrap_err();
            assert_eq!(err.name, PROCESS_AFTER);
        }
        assert!(parse_time(PROCESS_AFTER, None).is_err());
        let secs = parse_time(PROCESS_AFTER, Some(b"1732458600")).unwrap_err();
        assert!(secs.problem.contains("epoch seconds"), "{secs}");
    }

    #[test]
    fn attempts_must_be_small_non_negative_integers() {
        assert_eq!(parse_attempt(Some(b"3")).unwrap(), 3);
        for bad in [&b"-1"[..], b"x", b"", b"4294967296", b"1000001"] {
            assert!(parse_attempt(Some(bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn retry_state_uses_the_last_duplicate_and_rejects_zero_attempts() {
        let hs = vec![
            h(ATTEMPT, "1"),
            h(PROCESS_AFTER, "2026-11-24T14:30:00.000Z"),
            h(ATTEMPT, "2"),
        ];
        assert_eq!(read_retry_state(&hs).unwrap().attempt, 2);
        let zero = vec![
            h(ATTEMPT, "0"),
            h(PROCESS_AFTER, "2026-11-24T14:30:00.000Z"),
        ];
        assert!(read_retry_state(&zero).is_err());
        let missing = vec![h(ATTEMPT, "1")];
        assert_eq!(read_retry_state(&missing).unwrap_err().name, PROCESS_AFTER);
    }

    #[test]
    fn rewrite_keeps_user_headers_byte_for_byte_and_replaces_owned_ones() {
        let odd = Header {
            name: vec![0xff, b'x'],
            value: None,
        };
        let incoming = vec![
            h("trace", "a"),
            odd.clone(),
            h(ATTEMPT, "1"),
            h("trace", "b"),
            h(ORIGINAL_TOPIC, "orders"),
        ];
        let out = rewrite(&incoming, &[(ATTEMPT, "2".to_string())]);
        assert_eq!(
            out,
            vec![
                h("trace", "a"),
                odd,
                h("trace", "b"),
                h(ORIGINAL_TOPIC, "orders"),
                h(ATTEMPT, "2")
            ]
        );
    }

    #[test]
    fn truncation_respects_char_boundaries() {
        assert_eq!(truncate("héllo", 2), "h");
        assert_eq!(truncate("héllo", 3), "hé");
        assert_eq!(truncate("abc", 10), "abc");
    }

    proptest! {
        #[test]
        fn any_millisecond_time_round_trips(ms in MIN_EPOCH_MILLIS..4_102_444_800_000i64) {
            let t = Utc.timestamp_millis_opt(ms).unwrap();
            prop_assert_eq!(parse_time(PROCESS_AFTER, Some(format_time(t).as_bytes())).unwrap(), t);
        }

        /// Every time that can be formatted reads back: the same time within the years 0000–9999,
        /// the nearest end of that range outside it.
        #[test]
        fn any_time_at_all_is_written_readably(
            ms in DateTime::<Utc>::MIN_UTC.timestamp_millis()..=DateTime::<Utc>::MAX_UTC.timestamp_millis(),
        ) {
            let t = Utc.timestamp_millis_opt(ms).unwrap();
            let back = parse_time(PROCESS_AFTER, Some(format_time(t).as_bytes())).unwrap();
            prop_assert_eq!(back, t.clamp(earliest_time(), latest_time()));
        }

        #[test]
        fn attempt_round_trips(n in 0u32..=MAX_ATTEMPT) {
            prop_assert_eq!(parse_attempt(Some(n.to_string().as_bytes())).unwrap(), n);
        }

        #[test]
        fn header_parsers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..40)) {
            let _ = parse_time(PROCESS_AFTER, Some(&bytes));
            let _ = parse_attempt(Some(&bytes));
        }

        /// What rebound writes on a hop, it reads back on the next, whatever the user's own
        /// headers are (duplicates, non-UTF-8 names and values, null values, stale or garbage
        /// copies of rebound's own headers); the user's headers pass in order, byte for byte.
        #[test]
        fn routing_headers_round_trip_through_a_rewrite_with_any_user_headers(
            user in proptest::collection::vec(
                (
                    prop_oneof![
                        proptest::collection::vec(any::<u8>(), 0..12),
                        Just(b"trace".to_vec()),
                        proptest::sample::select(OWNED.to_vec()).prop_map(|n| n.as_bytes().to_vec()),
                    ],
                    proptest::option::of(proptest::collection::vec(any::<u8>(), 0..24)),
                ),
                0..12,
            ),
            due_ms in MIN_EPOCH_MILLIS..4_102_444_800_000i64,
            first_ms in MIN_EPOCH_MILLIS..4_102_444_800_000i64,
            attempt in 1u32..=MAX_ATTEMPT,
        ) {
            let incoming: Vec<Header> = user
                .into_iter()
                .map(|(name, value)| Header { name, value })
                .collect();
            let due = Utc.timestamp_millis_opt(due_ms).unwrap();
            let first = Utc.timestamp_millis_opt(first_ms).unwrap();
            let out = rewrite(
                &incoming,
                &[
                    (FIRST_FAILED_AT, format_time(first)),
                    (ATTEMPT, attempt.to_string()),
                    (PROCESS_AFTER, format_time(due)),
                ],
            );
            prop_assert_eq!(
                read_retry_state(&out).unwrap(),
                RetryState { process_after: due, attempt, first_failed_at: Some(first) }
            );
            for name in [FIRST_FAILED_AT, ATTEMPT, PROCESS_AFTER] {
                prop_assert_eq!(out.iter().filter(|h| h.name == name.as_bytes()).count(), 1);
            }
            prop_assert_eq!(strip_owned(&out), strip_owned(&incoming));
        }

        #[test]
        fn truncate_is_a_prefix_within_bounds(s in "\\PC{0,300}", max in 0usize..400) {
            let t = truncate(&s, max);
            prop_assert!(t.len() <= max);
            prop_assert!(s.starts_with(t));
        }
    }
}

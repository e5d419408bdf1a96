//! What a DLQ message says about itself ([`Entry`]) and which messages a command works on
//! ([`Filter`]). Pure.

use chrono::{DateTime, TimeZone, Utc};

use crate::headers::{self, Header, InvalidHeader};

/// One message read from the DLQ.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub partition: i32,
    pub offset: i64,
    /// The record's timestamp in epoch milliseconds, when the broker gave one.
    pub timestamp: Option<i64>,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub headers: Vec<Header>,
}

impl Entry {
    /// The last value of header `name` as text (invalid UTF-8 replaced).
    pub fn text(&self, name: &str) -> Option<String> {
        headers::last(&self.headers, name)
            .and_then(|h| h.value.as_deref())
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }

    /// `rebound-dlq-reason`.
    pub fn reason(&self) -> Option<String> {
        self.text(headers::DLQ_REASON)
    }

    /// `rebound-error-class`.
    pub fn error_class(&self) -> Option<String> {
        self.text(headers::ERROR_CLASS)
    }

    /// `rebound-error-message`.
    pub fn error_message(&self) -> Option<String> {
        self.text(headers::ERROR_MESSAGE)
    }

    /// `rebound-original-topic`.
    pub fn original_topic(&self) -> Option<String> {
        self.text(headers::ORIGINAL_TOPIC)
    }

    /// `rebound-attempt`, when present and readable.
    pub fn attempts(&self) -> Option<u32> {
        headers::last(&self.headers, headers::ATTEMPT)
            .and_then(|h| headers::parse_attempt(h.value.as_deref()).ok())
    }

    /// `rebound-first-failed-at`, when present and readable.
    pub fn first_failed_at(&self) -> Option<DateTime<Utc>> {
        headers::last(&self.headers, headers::FIRST_FAILED_AT)
            .and_then(|h| headers::parse_time(headers::FIRST_FAILED_AT, h.value.as_deref()).ok())
    }

    /// The record's timestamp as a time.
    pub fn record_time(&self) -> Option<DateTime<Utc>> {
        self.timestamp
            .and_then(|ms| Utc.timestamp_millis_opt(ms).single())
    }

    /// When the message first failed: `rebound-first-failed-at`, else the record's timestamp.
    /// This is the time `--since`/`--until` and `stats`' oldest/newest use.
    pub fn failed_at(&self) -> Option<DateTime<Utc>> {
        self.first_failed_at().or_else(|| self.record_time())
    }

    /// `rebound-replay-count`: how often this message was replayed already (absent = 0).
    pub fn replay_count(&self) -> Result<u32, InvalidHeader> {
        match headers::last(&self.headers, headers::REPLAY_COUNT) {
            None => Ok(0),
            Some(h) => headers::parse_attempt(h.value.as_deref()).map_err(|e| InvalidHeader {
                name: headers::REPLAY_COUNT,
                ..e
            }),
        }
    }

    /// `partition/offset`, the way `list` shows a message and `show` finds it.
    pub fn position(&self) -> String {
        format!("{}/{}", self.partition, self.offset)
    }
}

/// Which DLQ messages a command works on. Empty lists and `None` select everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// `rebound-dlq-reason` is one of these.
    pub reasons: Vec<String>,
    /// `rebound-error-class` is one of these.
    pub error_classes: Vec<String>,
    /// The key is exactly these bytes.
    pub key: Option<Vec<u8>>,
    /// First failed at or after this time ([`Entry::failed_at`]).
    pub since: Option<DateTime<Utc>>,
    /// First failed before this time.
    pub until: Option<DateTime<Utc>>,
    /// Only this partition is read; the others are not touched at all.
    pub partition: Option<i32>,
    /// Offsets below this are not selected (in every partition read).
    pub from_offset: Option<i64>,
    /// Reading a partition stops after this offset (inclusive); later ones are not touched.
    pub to_offset: Option<i64>,
    /// Only these `(partition, offset)` positions, when not empty: messages chosen one by one
    /// (the console's redrive).
    pub positions: std::collections::BTreeSet<(i32, i64)>,
}

impl Filter {
    /// Whether the message is selected.
    pub fn matches(&self, e: &Entry) -> bool {
        let in_list = |list: &[String], value: Option<String>| {
            list.is_empty() || value.is_some_and(|v| list.contains(&v))
        };
        if self.partition.is_some_and(|p| p != e.partition)
            || self.from_offset.is_some_and(|o| e.offset < o)
            || self.to_offset.is_some_and(|o| e.offset > o)
            || (!self.positions.is_empty() && !self.positions.contains(&(e.partition, e.offset)))
            || !in_list(&self.reasons, e.reason())
            || !in_list(&self.error_classes, e.error_class())
            || self.key.as_ref().is_some_and(|k| e.key.as_ref() != Some(k))
        {
            return false;
        }
        if self.since.is_some() || self.until.is_some() {
            let Some(t) = e.failed_at() else {
                return false;
            };
            if self.since.is_some_and(|s| t < s) || self.until.is_some_and(|u| t >= u) {
                return false;
            }
        }
        true
    }

    /// Whether partition `p` is read at all.
    pub fn reads_partition(&self, p: i32) -> bool {
        self.partition.is_none_or(|only| only == p)
            && (self.positions.is_empty() || self.positions.iter().any(|(pp, _)| *pp == p))
    }
}

/// Messages as rebound writes them to the DLQ, for the unit tests of this module's siblings.
#[cfg(test)]
pub(crate) mod fixtures {
    use super::*;
    use crate::headers as h;

    pub fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    /// A DLQ message as rebound writes it.
    pub fn dead(offset: i64, reason: &str, class: &str, first: &str) -> Entry {
        Entry {
            partition: 0,
            offset,
            timestamp: Some(at(first).timestamp_millis() + 5_000),
            key: Some(format!("k{offset}").into_bytes()),
            payload: Some(format!("p{offset}").into_bytes()),
            headers: vec![
                Header::new("trace", "t"),
                Header::new(h::ORIGINAL_TOPIC, "orders"),
                Header::new(h::ORIGINAL_PARTITION, "0"),
                Header::new(h::ORIGINAL_OFFSET, offset.to_string()),
                Header::new(h::FIRST_FAILED_AT, first),
                Header::new(h::ATTEMPT, "3"),
                Header::new(h::ERROR_KIND, "transient"),
                Header::new(h::ERROR_CLASS, class),
                Header::new(h::ERROR_MESSAGE, format!("{class} happened")),
                Header::new(h::DLQ_REASON, reason),
            ],
        }
    }

    pub fn with_header(mut e: Entry, name: &str, value: &str) -> Entry {
        e.headers.push(Header::new(name, value));
        e
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::*;
    use super::*;
    use crate::headers as h;

    #[test]
    fn entries_read_the_contract_headers() {
        let e = dead(4, "exhausted", "http_503", "2026-11-24T14:30:00.000Z");
        assert_eq!(e.reason().as_deref(), Some("exhausted"));
        assert_eq!(e.error_class().as_deref(), Some("http_503"));
        assert_eq!(e.original_topic().as_deref(), Some("orders"));
        assert_eq!(e.attempts(), Some(3));
        assert_eq!(e.first_failed_at(), Some(at("2026-11-24T14:30:00Z")));
        assert_eq!(e.failed_at(), e.first_failed_at());
        assert_eq!(e.replay_count(), Ok(0));
        let e = with_header(e, h::REPLAY_COUNT, "2");
        assert_eq!(e.replay_count(), Ok(2));
        assert!(with_header(e, h::REPLAY_COUNT, "x").replay_count().is_err());
    }

    #[test]
    fn failed_at_falls_back_to_the_record_timestamp() {
        let mut e = dead(0, "permanent", "x", "2026-11-24T14:30:00.000Z");
        e.headers
            .retain(|x| x.name != h::FIRST_FAILED_AT.as_bytes());
        assert_eq!(e.failed_at(), Some(at("2026-11-24T14:30:05Z")));
        e.timestamp = None;
        assert_eq!(e.failed_at(), None);
    }

    #[test]
    fn each_filter_selects_exactly_its_messages() {
        let a = dead(1, "exhausted", "http_503", "2026-11-24T10:00:00.000Z");
        let b = dead(2, "permanent", "http_400", "2026-11-24T12:00:00.000Z");
        let mut c = dead(3, "expired", "timeout", "2026-11-24T14:00:00.000Z");
        c.partition = 1;
        let all = [&a, &b, &c];
        let picked = |f: &Filter| -> Vec<i64> {
            all.iter()
                .filter(|e| f.matches(e))
                .map(|e| e.offset)
                .collect()
        };
        assert_eq!(picked(&Filter::default()), vec![1, 2, 3]);
        let f = |edit: fn(&mut Filter)| {
            let mut f = Filter::default();
            edit(&mut f);
            f
        };
        assert_eq!(
            picked(&f(|f| f.reasons = vec!["permanent".into()])),
            vec![2]
        );
        assert_eq!(
            picked(&f(
                |f| f.reasons = vec!["permanent".into(), "expired".into()]
            )),
            vec![2, 3]
        );
        assert_eq!(
            picked(&f(|f| f.error_classes = vec!["http_503".into()])),
            vec![1]
        );
        assert_eq!(picked(&f(|f| f.key = Some(b"k3".to_vec()))), vec![3]);
        assert_eq!(
            picked(&f(|f| f.since = Some(at("2026-11-24T12:00:00Z")))),
            vec![2, 3],
            "since is inclusive"
        );
        assert_eq!(
            picked(&f(|f| f.until = Some(at("2026-11-24T12:00:00Z")))),
            vec![1],
            "until is exclusive"
        );
        assert_eq!(picked(&f(|f| f.partition = Some(1))), vec![3]);
        assert_eq!(picked(&f(|f| f.from_offset = Some(2))), vec![2, 3]);
        assert_eq!(picked(&f(|f| f.to_offset = Some(2))), vec![1, 2]);
        assert_eq!(
            picked(&f(|f| f.positions = [(0, 2), (1, 3), (1, 1)].into())),
            vec![2, 3],
            "one by one"
        );
        assert!(f(|f| f.positions = [(1, 3)].into()).reads_partition(1));
        assert!(!f(|f| f.positions = [(1, 3)].into()).reads_partition(0));
        let mut none = dead(9, "exhausted", "x", "2026-11-24T10:00:00.000Z");
        none.headers.clear();
        none.timestamp = None;
        assert!(!f(|f| f.since = Some(at("2000-01-01T00:00:00Z"))).matches(&none));
        assert!(!f(|f| f.reasons = vec!["exhausted".into()]).matches(&none));
        assert!(Filter::default().matches(&none));
    }
}

//! `rebound dlq stats`: counting what the DLQ holds (pure).

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::render::one_line;
use super::select::Entry;
use crate::headers;

/// How many error messages `stats` lists.
pub const TOP_ERRORS: usize = 10;

/// Shown for a header that a message does not have.
pub const NONE: &str = "(none)";

/// Where and when a message first failed: the oldest or newest of the DLQ.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Located {
    /// RFC 3339, milliseconds.
    pub failed_at: String,
    pub partition: i32,
    pub offset: i64,
    #[serde(skip)]
    at: DateTime<Utc>,
}

/// An error message and how many DLQ messages carry it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ErrorCount {
    pub message: String,
    pub count: u64,
}

/// What `rebound dlq stats` reports. Messages without a header are counted under [`NONE`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    pub topic: String,
    pub total: u64,
    pub by_reason: BTreeMap<String, u64>,
    pub by_error_class: BTreeMap<String, u64>,
    pub by_original_topic: BTreeMap<String, u64>,
    /// By [`Entry::failed_at`]; messages without any time are not considered.
    pub oldest: Option<Located>,
    pub newest: Option<Located>,
    /// The most frequent `rebound-error-message`s, most frequent first (ties by text).
    pub top_errors: Vec<ErrorCount>,
    /// The DLQ was not read to its end (see [`EndOfLog`](crate::dlq::EndOfLog)); the counts are a lower bound.
    pub incomplete: bool,
}

/// Accumulates [`Stats`] one message at a time.
#[derive(Debug, Default)]
pub struct StatsBuilder {
    stats: Stats,
    messages: HashMap<String, u64>,
}

impl StatsBuilder {
    pub fn new(topic: &str) -> StatsBuilder {
        StatsBuilder {
            stats: Stats {
                topic: topic.to_string(),
                ..Stats::default()
            },
            messages: HashMap::new(),
        }
    }

    pub fn add(&mut self, e: &Entry) {
        let s = &mut self.stats;
        s.total += 1;
        let or_none = |v: Option<String>| v.unwrap_or_else(|| NONE.to_string());
        *s.by_reason.entry(or_none(e.reason())).or_default() += 1;
        *s.by_error_class
            .entry(or_none(e.error_class()))
            .or_default() += 1;
        *s.by_original_topic
            .entry(or_none(e.original_topic()))
            .or_default() += 1;
        *self.messages.entry(or_none(e.error_message())).or_default() += 1;
        if let Some(at) = e.failed_at() {
            let here = || Located {
                failed_at: headers::format_time(at),
                partition: e.partition,
                offset: e.offset,
                at,
            };
            if s.oldest.as_ref().is_none_or(|o| at < o.at) {
                s.oldest = Some(here());
            }
            if s.newest.as_ref().is_none_or(|n| at > n.at) {
                s.newest = Some(here());
            }
        }
    }

    /// The stats, with the `top` most frequent error messages.
    pub fn finish(self, top: usize) -> Stats {
        let mut stats = self.stats;
        let mut errors: Vec<ErrorCount> = self
            .messages
            .into_iter()
            .map(|(message, count)| ErrorCount { message, count })
            .collect();
        errors.sort_by(|a, b| {
            b.count
                .cmp(&a.count)
                .then_with(|| a.message.cmp(&b.message))
        });
        errors.truncate(top);
        stats.top_errors = errors;
        stats
    }
}

/// `stats` for people.
pub fn render_stats(s: &Stats) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "DLQ {}: {} messages", s.topic, s.total);
    if s.incomplete {
        let _ = writeln!(
            out,
            "(incomplete: the DLQ could not be read to its end; counts are a lower bound)"
        );
    }
    for (label, at) in [("oldest", &s.oldest), ("newest", &s.newest)] {
        if let Some(l) = at {
            let _ = writeln!(
                out,
                "{label}  {}  ({}/{})",
                l.failed_at, l.partition, l.offset
            );
        }
    }
    let table = |out: &mut String, title: &str, counts: &BTreeMap<String, u64>| {
        if counts.is_empty() {
            return;
        }
        let _ = writeln!(out, "\nby {title}:");
        let mut rows: Vec<(&String, &u64)> = counts.iter().collect();
        rows.sort_by(|a, b| b.1.cmp(a.1).then_with(|| a.0.cmp(b.0)));
        let width = rows
            .iter()
            .map(|(k, _)| k.chars().count())
            .max()
            .unwrap_or(0);
        for (k, n) in rows {
            let _ = writeln!(out, "  {k:<width$}  {n:>8}");
        }
    };
    table(&mut out, "reason", &s.by_reason);
    table(&mut out, "error class", &s.by_error_class);
    table(&mut out, "original topic", &s.by_original_topic);
    if !s.top_errors.is_empty() {
        let _ = writeln!(out, "\ntop error messages:");
        for e in &s.top_errors {
            let _ = writeln!(out, "  {:>8}  {}", e.count, one_line(&e.message, 120));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::select::fixtures::*;
    use super::*;
    use crate::headers as h;

    #[test]
    fn stats_count_by_reason_class_and_topic_and_find_the_ends() {
        let mut b = StatsBuilder::new("orders.dlq");
        b.add(&dead(
            0,
            "exhausted",
            "http_503",
            "2026-11-24T12:00:00.000Z",
        ));
        b.add(&dead(
            1,
            "exhausted",
            "http_503",
            "2026-11-24T10:00:00.000Z",
        ));
        b.add(&dead(
            2,
            "permanent",
            "http_400",
            "2026-11-24T14:00:00.000Z",
        ));
        let mut bare = dead(3, "x", "x", "2026-11-24T11:00:00.000Z");
        bare.headers.clear();
        b.add(&bare);
        let s = b.finish(TOP_ERRORS);
        assert_eq!(s.total, 4);
        assert_eq!(s.by_reason["exhausted"], 2);
        assert_eq!(s.by_reason["permanent"], 1);
        assert_eq!(s.by_reason[NONE], 1);
        assert_eq!(s.by_error_class["http_503"], 2);
        assert_eq!(s.by_original_topic["orders"], 3);
        assert_eq!(s.oldest.as_ref().map(|o| o.offset), Some(1));
        assert_eq!(s.newest.as_ref().map(|o| o.offset), Some(2));
        assert_eq!(
            s.newest.as_ref().map(|o| o.failed_at.as_str()),
            Some("2026-11-24T14:00:00.000Z")
        );
        assert_eq!(
            s.top_errors[0],
            ErrorCount {
                message: "http_503 happened".into(),
                count: 2
            }
        );
        let text = render_stats(&s);
        assert!(text.contains("orders.dlq: 4 messages"), "{text}");
        assert!(
            text.contains("oldest  2026-11-24T10:00:00.000Z  (0/1)"),
            "{text}"
        );
        let json: serde_json::Value = serde_json::to_value(&s).unwrap();
        assert_eq!(json["by_reason"]["exhausted"], 2);
        assert_eq!(json["oldest"]["offset"], 1);
    }

    #[test]
    fn top_errors_are_the_ten_most_frequent_ties_by_text() {
        let mut b = StatsBuilder::new("d");
        for i in 0..12i64 {
            for _ in 0..=(i % 3) {
                let mut e = dead(i, "exhausted", "c", "2026-11-24T12:00:00.000Z");
                e.headers = headers::rewrite(&e.headers, &[(h::ERROR_MESSAGE, format!("m{i:02}"))]);
                b.add(&e);
            }
        }
        let top = b.finish(TOP_ERRORS).top_errors;
        assert_eq!(top.len(), 10);
        let names: Vec<&str> = top.iter().map(|e| e.message.as_str()).collect();
        assert_eq!(
            names,
            vec!["m02", "m05", "m08", "m11", "m01", "m04", "m07", "m10", "m00", "m03"]
        );
    }
}

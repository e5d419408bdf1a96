//! What `replay-dlq` does with each message, and what it reports at the end (pure).

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::render::quoted_lossy;
use super::select::{Entry, Filter};
use crate::headers::{self, Header};

/// The replay settings a decision needs.
#[derive(Debug, Clone)]
pub struct ReplayRules<'a> {
    pub filter: &'a Filter,
    /// `--to`: send everything here instead of to `rebound-original-topic`.
    pub to: Option<&'a str>,
    /// The DLQ being read; never a destination.
    pub dlq: &'a str,
    /// Messages replayed this often already are skipped…
    pub max_replays: u32,
    /// …unless this is set.
    pub force: bool,
}

/// What replay does with one DLQ message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Not selected by the filter: skipped; the offset is committed.
    Filtered,
    /// Replayed `--max-replays` times already (`count`), or its count is unreadable (`None`):
    /// skipped with a warning; the offset is committed.
    AtReplayLimit { count: Option<u32> },
    /// Cannot be sent anywhere: a failure. The partition stops here for this run.
    Unreplayable(String),
    /// Produce a copy with these headers (key and payload unchanged) to `topic`.
    Send {
        topic: String,
        headers: Vec<Header>,
        replay_count: u32,
    },
}

/// The headers of a replayed copy: the user's headers and replay bookkeeping kept, rebound's
/// routing headers removed (attempt reset, no `process_after`), `rebound-replay-count` set to
/// `count`, `rebound-replayed-at` to `now`.
pub fn replay_headers(incoming: &[Header], count: u32, now: DateTime<Utc>) -> Vec<Header> {
    headers::rewrite(
        &headers::strip_owned(incoming),
        &[
            (headers::REPLAY_COUNT, count.to_string()),
            (headers::REPLAYED_AT, headers::format_time(now)),
        ],
    )
}

/// Decides what replay does with `e`. Whether the destination exists is checked by the caller.
pub fn decide(e: &Entry, rules: &ReplayRules<'_>, now: DateTime<Utc>) -> Decision {
    if !rules.filter.matches(e) {
        return Decision::Filtered;
    }
    let count = e.replay_count().ok();
    if !rules.force && count.is_none_or(|c| c >= rules.max_replays) {
        return Decision::AtReplayLimit { count };
    }
    let topic = match rules.to {
        Some(to) => to.to_string(),
        None => {
            let Some(h) = headers::last(&e.headers, headers::ORIGINAL_TOPIC) else {
                return Decision::Unreplayable(format!(
                    "no {} header; name the destination with --to TOPIC",
                    headers::ORIGINAL_TOPIC
                ));
            };
            let name = h.value.as_deref().and_then(|v| std::str::from_utf8(v).ok());
            match name {
                Some(n) if crate::topology::check_topic_name(n).is_ok() => n.to_string(),
                _ => {
                    return Decision::Unreplayable(format!(
                        "{} is not a topic name: {}",
                        headers::ORIGINAL_TOPIC,
                        quoted_lossy(h.value.as_deref())
                    ))
                }
            }
        }
    };
    if topic == rules.dlq {
        return Decision::Unreplayable(format!("refusing to replay into the DLQ {topic} itself"));
    }
    let next = count.unwrap_or(0).saturating_add(1);
    Decision::Send {
        topic,
        headers: replay_headers(&e.headers, next, now),
        replay_count: next,
    }
}

/// Whether `e` carries a `rebound-replayed-at` at or after `since`, the start of the current
/// replay: it was sent back by this replay (or a later one) and failed again. Reading on would
/// only replay it in a loop.
pub fn came_back(e: &Entry, since: DateTime<Utc>) -> bool {
    let since_ms = since.timestamp_millis(); // replayed-at has millisecond precision
    headers::last(&e.headers, headers::REPLAYED_AT)
        .and_then(|h| headers::parse_time(headers::REPLAYED_AT, h.value.as_deref()).ok())
        .is_some_and(|t| t.timestamp_millis() >= since_ms)
}

/// What a replay did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ReplaySummary {
    /// Messages read from the DLQ and decided on.
    pub read: u64,
    /// Sent and acknowledged (with `--dry-run`: would have been sent).
    pub replayed: u64,
    /// Not selected by the filters.
    pub skipped_by_filter: u64,
    /// Skipped because they were replayed `--max-replays` times already.
    pub skipped_at_replay_limit: u64,
    /// Chosen, but replayed already by an earlier replay (recorded in the replay ledger).
    pub skipped_already_replayed: u64,
    /// Could not be sent; each stopped its partition for this run.
    pub failed: u64,
    /// `partition/offset: why` of each failure.
    pub failures: Vec<String>,
    pub dry_run: bool,
    /// `--limit` was reached; the rest is left for the next run.
    pub limit_reached: bool,
    /// Stopped by a signal (or the caller) before the end.
    pub interrupted: bool,
    /// The end of the DLQ was not reached (see [`EndOfLog`](crate::dlq::EndOfLog)); the rest is left for the next run.
    pub incomplete: bool,
    /// The final commit failed: a rerun may send some messages again.
    pub commit_failed: bool,
}

impl ReplaySummary {
    /// Whether the replay did everything it was asked to.
    pub fn ok(&self) -> bool {
        self.failed == 0 && !self.interrupted && !self.incomplete && !self.commit_failed
    }

    /// Skipped for any reason.
    pub fn skipped(&self) -> u64 {
        self.skipped_by_filter + self.skipped_at_replay_limit + self.skipped_already_replayed
    }
}

impl std::fmt::Display for ReplaySummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let verb = if self.dry_run {
            "would replay"
        } else {
            "replayed"
        };
        writeln!(
            f,
            "{verb} {}, skipped by filter {}, skipped at replay limit {}{}, failed {} ({} read)",
            self.replayed,
            self.skipped_by_filter,
            self.skipped_at_replay_limit,
            match self.skipped_already_replayed {
                0 => String::new(),
                n => format!(", already replayed {n}"),
            },
            self.failed,
            self.read
        )?;
        for failure in &self.failures {
            writeln!(f, "  failed {failure}")?;
        }
        if self.dry_run {
            writeln!(f, "dry run: nothing was sent and nothing committed")?;
        }
        if self.limit_reached {
            writeln!(f, "stopped at --limit; run again to continue")?;
        }
        if self.interrupted {
            writeln!(f, "interrupted; run the same command again to resume")?;
        }
        if self.incomplete {
            writeln!(f, "the end of the DLQ was not reached; run again to resume")?;
        }
        if self.failed > 0 && !self.dry_run {
            writeln!(
                f,
                "the next run resumes at each failed message: fix the cause (or skip it with a filter) and run again"
            )?;
        }
        if self.commit_failed {
            writeln!(
                f,
                "the final commit failed: a rerun may send some of these again"
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::select::fixtures::*;
    use super::*;
    use crate::headers as h;

    #[test]
    fn a_replayed_copy_keeps_user_headers_and_drops_routing_ones() {
        let e = with_header(
            dead(5, "exhausted", "http_503", "2026-11-24T12:00:00.000Z"),
            h::PROCESS_AFTER,
            "2026-11-24T12:02:00.000Z",
        );
        let filter = Filter::default();
        let rules = ReplayRules {
            filter: &filter,
            to: None,
            dlq: "orders.dlq",
            max_replays: 3,
            force: false,
        };
        let now = at("2026-11-25T09:00:00Z");
        let Decision::Send {
            topic,
            headers,
            replay_count,
        } = decide(&e, &rules, now)
        else {
            panic!("should send");
        };
        assert_eq!(topic, "orders");
        assert_eq!(replay_count, 1);
        assert_eq!(
            headers,
            vec![
                Header::new("trace", "t"),
                Header::new(h::REPLAY_COUNT, "1"),
                Header::new(h::REPLAYED_AT, "2026-11-25T09:00:00.000Z"),
            ]
        );
        let again = with_header(e, h::REPLAY_COUNT, "2");
        match decide(&again, &rules, now) {
            Decision::Send { headers, .. } => {
                assert_eq!(
                    headers::last(&headers, h::REPLAY_COUNT)
                        .unwrap()
                        .value
                        .as_deref(),
                    Some(&b"3"[..])
                );
                assert_eq!(
                    headers
                        .iter()
                        .filter(|x| x.name == h::REPLAY_COUNT.as_bytes())
                        .count(),
                    1
                );
            }
            d => panic!("{d:?}"),
        }
    }

    #[test]
    fn replay_skips_at_the_limit_unless_forced_and_never_targets_the_dlq() {
        let filter = Filter {
            reasons: vec!["exhausted".into()],
            ..Filter::default()
        };
        let mut rules = ReplayRules {
            filter: &filter,
            to: None,
            dlq: "orders.dlq",
            max_replays: 3,
            force: false,
        };
        let now = Utc::now();
        let e = dead(1, "exhausted", "c", "2026-11-24T12:00:00.000Z");
        assert_eq!(
            decide(
                &dead(1, "permanent", "c", "2026-11-24T12:00:00.000Z"),
                &rules,
                now
            ),
            Decision::Filtered
        );
        let thrice = with_header(e.clone(), h::REPLAY_COUNT, "3");
        assert_eq!(
            decide(&thrice, &rules, now),
            Decision::AtReplayLimit { count: Some(3) }
        );
        let garbled = with_header(e.clone(), h::REPLAY_COUNT, "lots");
        assert_eq!(
            decide(&garbled, &rules, now),
            Decision::AtReplayLimit { count: None }
        );
        rules.force = true;
        assert!(matches!(
            decide(&thrice, &rules, now),
            Decision::Send {
                replay_count: 4,
                ..
            }
        ));
        assert!(matches!(
            decide(&garbled, &rules, now),
            Decision::Send {
                replay_count: 1,
                ..
            }
        ));

        rules.to = Some("orders.dlq");
        assert!(matches!(decide(&e, &rules, now), Decision::Unreplayable(_)));
        rules.to = Some("elsewhere");
        assert!(
            matches!(decide(&e, &rules, now), Decision::Send { ref topic, .. } if topic == "elsewhere")
        );
        rules.to = None;
        let mut orphan = e.clone();
        orphan
            .headers
            .retain(|x| x.name != h::ORIGINAL_TOPIC.as_bytes());
        assert!(
            matches!(decide(&orphan, &rules, now), Decision::Unreplayable(w) if w.contains("--to"))
        );
        let odd = with_header(orphan, h::ORIGINAL_TOPIC, "no spaces allowed");
        assert!(matches!(
            decide(&odd, &rules, now),
            Decision::Unreplayable(_)
        ));
    }

    #[test]
    fn messages_replayed_since_the_start_have_come_back() {
        let start = at("2026-11-25T09:00:00.000Z");
        let e = dead(1, "exhausted", "c", "2026-11-24T12:00:00.000Z");
        assert!(!came_back(&e, start));
        let earlier = with_header(e.clone(), h::REPLAYED_AT, "2026-11-25T08:59:59.999Z");
        assert!(
            !came_back(&earlier, start),
            "an earlier run's replay is fair game"
        );
        let this_run = with_header(e.clone(), h::REPLAYED_AT, "2026-11-25T09:00:00.000Z");
        assert!(came_back(
            &this_run,
            start + chrono::Duration::microseconds(400)
        ));
        assert!(!came_back(
            &with_header(e, h::REPLAYED_AT, "garbage"),
            start
        ));
    }

    #[test]
    fn the_summary_says_what_happened() {
        let s = ReplaySummary {
            read: 5,
            replayed: 3,
            skipped_by_filter: 1,
            skipped_at_replay_limit: 0,
            failed: 1,
            failures: vec!["0/4: the destination topic x does not exist".into()],
            ..ReplaySummary::default()
        };
        assert!(!s.ok());
        let text = s.to_string();
        assert!(
            text.starts_with(
                "replayed 3, skipped by filter 1, skipped at replay limit 0, failed 1 (5 read)"
            ),
            "{text}"
        );
        assert!(text.contains("failed 0/4: the destination"), "{text}");
    }
}

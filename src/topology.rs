//! Topic names, delay tiers and the routing decision (pure).
//!
//! `Topology::route` is the one place that decides where a handled message goes next. It takes
//! the clock and the jitter sample as arguments so that it is deterministic under test.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::duration;
use crate::handler::Outcome;
use crate::headers::{self, Header, InvalidHeader, RetryState};

/// The default `--max-delay` is this many times the last tier's delay…
pub const MAX_DELAY_FACTOR: u32 = 4;
/// …and never less than this, so that short test tiers still honour a `Retry-After` of up to an
/// hour (a common rate-limit window).
pub const MAX_DELAY_FLOOR: Duration = Duration::from_secs(3600);
/// A tier message may be due this much beyond `now + max_delay` before it is refused: rebound
/// instances read copies that other instances wrote, and their clocks differ a little.
pub const CLOCK_SKEW_ALLOWANCE: Duration = Duration::from_secs(60);

/// The default `--max-delay` for these tiers: [`MAX_DELAY_FACTOR`] × the last tier's delay, at
/// least [`MAX_DELAY_FLOOR`].
pub fn default_max_delay(delays: &[Duration]) -> Duration {
    let last = delays.last().copied().unwrap_or_default();
    last.saturating_mul(MAX_DELAY_FACTOR).max(MAX_DELAY_FLOOR)
}

/// Why a name is not a valid Kafka topic name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicNameError {
    /// Empty or longer than 249 characters.
    #[error("{0:?} must be 1 to 249 characters long")]
    Length(String),
    /// A character outside `[a-zA-Z0-9._-]`.
    #[error("{0:?} contains {1:?}; topic names use only letters, digits, '.', '_' and '-'")]
    Character(String, char),
    /// `.` or `..`.
    #[error("a topic cannot be named '.' or '..'")]
    Dots,
}

/// Kafka's topic name rules: 1–249 of `[a-zA-Z0-9._-]`, not `.` or `..` (Kafka's
/// `org.apache.kafka.common.internals.Topic.validate`).
pub fn check_topic_name(name: &str) -> Result<(), TopicNameError> {
    if name.is_empty() || name.len() > 249 {
        return Err(TopicNameError::Length(name.to_string()));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(TopicNameError::Character(name.to_string(), c));
    }
    if name == "." || name == ".." {
        return Err(TopicNameError::Dots);
    }
    Ok(())
}

/// Why a message read from a delay tier is dead-lettered as `invalid` without a handler call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unfit {
    /// A routing header cannot be read.
    #[error(transparent)]
    Header(#[from] InvalidHeader),
    /// `process_after` is further ahead than `--max-delay`: holding it would pause the tier
    /// partition (and every message behind it) until then.
    #[error("process_after {due} is more than --max-delay ({max_delay}) after {read_at}, when rebound read it; dead-lettered instead of holding its tier partition until then")]
    TooFar {
        /// The due time as read (RFC 3339).
        due: String,
        /// When rebound read the message (RFC 3339).
        read_at: String,
        /// The cap, in the short duration syntax.
        max_delay: String,
    },
}

impl Unfit {
    /// Every value of [`Unfit::class`].
    pub const CLASSES: [&'static str; 2] = ["invalid_header", "process_after_too_far"];

    /// The `rebound-error-class` of the DLQ copy.
    pub fn class(&self) -> &'static str {
        match self {
            Unfit::Header(_) => "invalid_header",
            Unfit::TooFar { .. } => "process_after_too_far",
        }
    }
}

/// One delay tier: a topic whose messages are not processed before their `process_after`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tier {
    /// How long a message waits in it.
    pub delay: Duration,
    /// `retry-2m`: the tier's label in metrics and the suffix of its topic.
    pub label: String,
    /// `<main>.retry-2m`
    pub topic: String,
}

impl Tier {
    /// The tier of `main` with this delay: `<main>.retry-<delay>`.
    pub fn new(main: &str, delay: Duration) -> Tier {
        let label = format!("retry-{}", duration::format(delay));
        Tier {
            topic: format!("{main}.{label}"),
            label,
            delay,
        }
    }
}

/// Where a message was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Stage {
    /// The main topic.
    Main,
    /// Index into [`Topology::tiers`].
    Tier(usize),
}

/// Why a message went to the dead-letter topic; the value of `rebound-dlq-reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DlqReason {
    /// The handler said the failure is permanent.
    Permanent,
    /// Transient failures used up `1 + max-retries` tries.
    Exhausted,
    /// The first failure is older than `max-age`.
    Expired,
    /// A routing header could not be read.
    Invalid,
}

impl DlqReason {
    /// Every reason, in the order reports list them.
    pub const ALL: [DlqReason; 4] = [
        DlqReason::Permanent,
        DlqReason::Exhausted,
        DlqReason::Expired,
        DlqReason::Invalid,
    ];

    /// The header value: `permanent`, `exhausted`, `expired` or `invalid`.
    pub fn as_str(self) -> &'static str {
        match self {
            DlqReason::Permanent => "permanent",
            DlqReason::Exhausted => "exhausted",
            DlqReason::Expired => "expired",
            DlqReason::Invalid => "invalid",
        }
    }
}

/// The routing decision for one handled message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Handled; nothing to produce.
    Done,
    /// Produce to `tiers[tier]`, not to be processed before `due`. `attempt` = failed attempts so far.
    Retry {
        /// Index into [`Topology::tiers`].
        tier: usize,
        /// The copy's `process_after`.
        due: DateTime<Utc>,
        /// Failed attempts so far.
        attempt: u32,
    },
    /// Produce to the DLQ. `attempt` = failed attempts so far, this one included.
    Dead {
        /// The copy's `rebound-dlq-reason`.
        reason: DlqReason,
        /// Failed attempts so far, this one included.
        attempt: u32,
    },
}

/// A whole topology: the main topic, its tiers and its DLQ, with the retry policy.
#[derive(Debug, Clone, PartialEq)]
pub struct Topology {
    /// The main topic.
    pub main: String,
    /// The delay tiers, shortest first.
    pub tiers: Vec<Tier>,
    /// The dead-letter topic (`<main>.dlq` unless set).
    pub dlq: String,
    /// A message is tried at most `1 + max_retries` times.
    pub max_retries: u32,
    /// Messages whose first failure is older than this go to the DLQ as `expired`.
    pub max_age: Option<Duration>,
    /// Fraction of a tier's delay by which `process_after` is spread (0 = exact).
    pub jitter: f64,
    /// No retry is due later than this after it is written (a `Retry-After` beyond it is cut to
    /// it), and a tier message due later than this after it is read is dead-lettered as
    /// `invalid` (class `process_after_too_far`) instead of pausing its partition.
    /// Default: [`default_max_delay`].
    pub max_delay: Duration,
    /// `--ordering key`: the waiting log, `<main>.waiting` (one partition per main partition),
    /// where later messages of a key wait while an earlier one is in the retry path
    /// (ARCHITECTURE.md, "Key-ordered retries"). `None`: `--ordering none`.
    pub waiting: Option<String>,
}

impl Topology {
    /// A topology with the given tiers and defaults: one retry per tier, no max age, no jitter.
    pub fn new(main: &str, delays: &[Duration]) -> Topology {
        Topology {
            main: main.to_string(),
            tiers: delays.iter().map(|d| Tier::new(main, *d)).collect(),
            dlq: format!("{main}.dlq"),
            max_retries: delays.len() as u32,
            max_age: None,
            jitter: 0.0,
            max_delay: default_max_delay(delays),
            waiting: None,
        }
    }

    /// The waiting log's name for main topic `main`: `<main>.waiting`.
    pub fn waiting_topic(main: &str) -> String {
        format!("{main}.waiting")
    }

    /// Reads the routing headers of a message from a delay tier, read at `now`, and decides
    /// whether it may wait in its tier: a due time more than `max_delay` (plus
    /// [`CLOCK_SKEW_ALLOWANCE`]) ahead is [`Unfit::TooFar`]. The message's own timestamp is not
    /// used: whoever wrote it chose it.
    pub fn read_tier_message(
        &self,
        headers: &[Header],
        now: DateTime<Utc>,
    ) -> Result<RetryState, Unfit> {
        let state = headers::read_retry_state(headers)?;
        let limit = self.max_delay.saturating_add(CLOCK_SKEW_ALLOWANCE);
        let ahead = state.process_after.signed_duration_since(now);
        if ahead.to_std().is_ok_and(|ahead| ahead > limit) {
            return Err(Unfit::TooFar {
                due: headers::format_time(state.process_after),
                read_at: headers::format_time(now),
                max_delay: duration::format(self.max_delay),
            });
        }
        Ok(state)
    }

    /// Every topic of the topology: main, tiers in order, DLQ.
    pub fn topics(&self) -> Vec<&str> {
        let mut v = vec![self.main.as_str()];
        v.extend(self.tiers.iter().map(|t| t.topic.as_str()));
        v.push(self.dlq.as_str());
        v.extend(self.waiting.as_deref());
        v
    }

    /// The stage a topic is consumed as, if it is the main topic or a tier.
    pub fn stage_of(&self, topic: &str) -> Option<Stage> {
        if topic == self.main {
            return Some(Stage::Main);
        }
        self.tiers
            .iter()
            .position(|t| t.topic == topic)
            .map(Stage::Tier)
    }

    /// `main` or the tier's label (`retry-2m`): the `tier` label of metrics.
    pub fn label(&self, stage: Stage) -> &str {
        match stage {
            Stage::Main => "main",
            Stage::Tier(i) => &self.tiers[i].label,
        }
    }

    /// Index of a stage in per-stage tables: main = 0, tier i = i + 1.
    pub fn stage_index(stage: Stage) -> usize {
        match stage {
            Stage::Main => 0,
            Stage::Tier(i) => i + 1,
        }
    }

    /// The topic of `stage`.
    pub fn topic(&self, stage: Stage) -> &str {
        match stage {
            Stage::Main => &self.main,
            Stage::Tier(i) => &self.tiers[i].topic,
        }
    }

    /// Decides where a message goes after the handler's `outcome`.
    ///
    /// * `prior_attempts`: failed attempts before this one (0 on the main topic).
    /// * `first_failed_at`: time of the first failure, if there was one before this.
    /// * `jitter_unit`: a sample in `[-1, 1]`; scaled by `self.jitter` and the tier's delay.
    pub fn route(
        &self,
        outcome: &Outcome,
        prior_attempts: u32,
        first_failed_at: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
        jitter_unit: f64,
    ) -> Route {
        let attempt = prior_attempts.saturating_add(1);
        let failure = match outcome {
            Outcome::Success => return Route::Done,
            Outcome::Permanent(_) => {
                return Route::Dead {
                    reason: DlqReason::Permanent,
                    attempt,
                }
            }
            Outcome::Transient(f) => f,
        };
        // Age first: an expired message is expired whatever attempts it has left.
        if let (Some(max_age), Some(first)) = (self.max_age, first_failed_at) {
            if now
                .signed_duration_since(first)
                .to_std()
                .unwrap_or_default()
                > max_age
            {
                return Route::Dead {
                    reason: DlqReason::Expired,
                    attempt,
                };
            }
        }
        if attempt > self.max_retries || self.tiers.is_empty() {
            return Route::Dead {
                reason: DlqReason::Exhausted,
                attempt,
            };
        }
        let last = self.tiers.len() - 1;
        let mut tier = (attempt as usize - 1).min(last);
        if let Some(wait) = failure.retry_after {
            // The first tier (from the normal next one on) whose delay covers the server's wish.
            tier = (tier..=last)
                .find(|&i| self.tiers[i].delay >= wait)
                .unwrap_or(last);
        }
        let delay = self.tiers[tier].delay;
        let spread = self.jitter.clamp(0.0, 1.0) * jitter_unit.clamp(-1.0, 1.0);
        let jittered = delay.mul_f64(1.0 + spread);
        // A `Retry-After` beyond `max_delay` is cut to it: the copy must stay one that
        // `read_tier_message` accepts.
        let wait = failure
            .retry_after
            .map_or(jittered, |w| w.min(self.max_delay).max(jittered));
        let due = chrono::Duration::from_std(wait)
            .ok()
            .and_then(|w| now.checked_add_signed(w))
            .unwrap_or(DateTime::<Utc>::MAX_UTC)
            .min(headers::latest_time());
        Route::Retry {
            tier,
            due: ceil_millis(due),
            attempt,
        }
    }
}

/// `t` rounded up to the millisecond: `process_after` is written in milliseconds, and rounding
/// down would make a retry due before the delay it was given.
fn ceil_millis(t: DateTime<Utc>) -> DateTime<Utc> {
    let sub_ms = chrono::Duration::nanoseconds(i64::from(t.timestamp_subsec_nanos() % 1_000_000));
    if sub_ms.is_zero() {
        return t;
    }
    (t - sub_ms)
        .checked_add_signed(chrono::Duration::milliseconds(1))
        .unwrap_or(t - sub_ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handler::Failure;
    use chrono::TimeZone;
    use proptest::prelude::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn topo() -> Topology {
        Topology::new("orders", &[secs(120), secs(240), secs(480)])
    }

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 24, 14, 30, 0).unwrap()
    }

    fn transient() -> Outcome {
        Outcome::Transient(Failure::new("http_503", "busy"))
    }

    #[test]
    fn names_follow_the_contract() {
        let t = topo();
        assert_eq!(
            t.topics(),
            vec![
                "orders",
                "orders.retry-2m",
                "orders.retry-4m",
                "orders.retry-8m",
                "orders.dlq"
            ]
        );
        assert_eq!(t.stage_of("orders.retry-4m"), Some(Stage::Tier(1)));
        assert_eq!(t.stage_of("orders"), Some(Stage::Main));
        assert_eq!(t.stage_of("other"), None);
        assert_eq!(t.label(Stage::Tier(0)), "retry-2m");
        assert_eq!(t.label(Stage::Main), "main");
        assert_eq!(
            Tier::new("a", Duration::from_millis(300)).topic,
            "a.retry-300ms"
        );
    }

    #[test]
    fn success_lands_nowhere_but_done() {
        assert_eq!(
            topo().route(&Outcome::Success, 2, None, now(), 0.0),
            Route::Done
        );
    }

    #[test]
    fn permanent_goes_straight_to_the_dlq() {
        let r = topo().route(
            &Outcome::Permanent(Failure::new("http_400", "bad")),
            0,
            None,
            now(),
            0.0,
        );
        assert_eq!(
            r,
            Route::Dead {
                reason: DlqReason::Permanent,
                attempt: 1
            }
        );
    }

    #[test]
    fn transient_walks_the_tiers_then_exhausts() {
        let t = topo();
        let r0 = t.route(&transient(), 0, None, now(), 0.0);
        assert_eq!(
            r0,
            Route::Retry {
                tier: 0,
                due: now() + chrono::Duration::seconds(120),
                attempt: 1
            }
        );
        let r1 = t.route(&transient(), 1, Some(now()), now(), 0.0);
        assert!(matches!(
            r1,
            Route::Retry {
                tier: 1,
                attempt: 2,
                ..
            }
        ));
        let r2 = t.route(&transient(), 2, Some(now()), now(), 0.0);
        assert!(matches!(
            r2,
            Route::Retry {
                tier: 2,
                attempt: 3,
                ..
            }
        ));
        let r3 = t.route(&transient(), 3, Some(now()), now(), 0.0);
        assert_eq!(
            r3,
            Route::Dead {
                reason: DlqReason::Exhausted,
                attempt: 4
            }
        );
    }

    #[test]
    fn the_last_tier_repeats_when_retries_exceed_tiers() {
        let mut t = topo();
        t.max_retries = 5;
        for prior in 2..5 {
            assert!(matches!(
                t.route(&transient(), prior, None, now(), 0.0),
                Route::Retry { tier: 2, .. }
            ));
        }
        assert!(matches!(
            t.route(&transient(), 5, None, now(), 0.0),
            Route::Dead {
                reason: DlqReason::Exhausted,
                ..
            }
        ));
    }

    #[test]
    fn zero_retries_means_one_try() {
        let mut t = topo();
        t.max_retries = 0;
        assert_eq!(
            t.route(&transient(), 0, None, now(), 0.0),
            Route::Dead {
                reason: DlqReason::Exhausted,
                attempt: 1
            }
        );
    }

    #[test]
    fn old_failures_expire() {
        let mut t = topo();
        t.max_age = Some(secs(3600));
        let first = now() - chrono::Duration::seconds(3601);
        assert_eq!(
            t.route(&transient(), 1, Some(first), now(), 0.0),
            Route::Dead {
                reason: DlqReason::Expired,
                attempt: 2
            }
        );
        let recent = now() - chrono::Duration::seconds(10);
        assert!(matches!(
            t.route(&transient(), 1, Some(recent), now(), 0.0),
            Route::Retry { .. }
        ));
    }

    #[test]
    fn retry_after_picks_the_tier_that_covers_it() {
        let mut t = topo();
        t.max_delay = secs(20_000); // above the 10 000 s asked for below
        let mut f = Failure::new("http_429", "slow down");
        f.retry_after = Some(secs(200));
        let r = t.route(&Outcome::Transient(f.clone()), 0, None, now(), 0.0);
        assert_eq!(
            r,
            Route::Retry {
                tier: 1,
                due: now() + chrono::Duration::seconds(240),
                attempt: 1
            }
        );
        f.retry_after = Some(secs(10_000));
        let r = t.route(&Outcome::Transient(f), 0, None, now(), 0.0);
        assert_eq!(
            r,
            Route::Retry {
                tier: 2,
                due: now() + chrono::Duration::seconds(10_000),
                attempt: 1
            }
        );
    }

    #[test]
    fn the_default_max_delay_is_four_last_tiers_at_least_an_hour() {
        assert_eq!(topo().max_delay, secs(4 * 480).max(secs(3600)));
        let long = Topology::new("o", &[secs(120), secs(32 * 60)]);
        assert_eq!(long.max_delay, secs(4 * 32 * 60));
    }

    #[test]
    fn a_tier_message_due_beyond_max_delay_is_unfit_and_one_within_is_not() {
        let t = topo();
        let read = |due: &str| {
            t.read_tier_message(
                &[
                    Header::new(headers::PROCESS_AFTER, due.as_bytes()),
                    Header::new(headers::ATTEMPT, &b"1"[..]),
                ],
                now(),
            )
        };
        let far = read("2999-01-01T00:00:00.000Z").unwrap_err();
        assert_eq!(far.class(), "process_after_too_far");
        let text = far.to_string();
        assert!(
            text.contains("2999-01-01T00:00:00.000Z")
                && text.contains("--max-delay (1h)")
                && text.contains("2026-11-24T14:30:00.000Z"),
            "{text}"
        );
        // Within the cap plus the clock allowance: held as usual.
        assert!(read("2026-11-24T15:31:00.000Z").is_ok());
        assert!(read("2026-11-24T15:31:00.001Z").is_err());
        assert!(read("1990-01-01T00:00:00.000Z").is_ok(), "past is due");
        assert_eq!(read("garbage").unwrap_err().class(), "invalid_header");
    }

    #[test]
    fn a_retry_after_beyond_max_delay_is_cut_to_it() {
        let t = topo();
        let mut f = Failure::new("http_429", "slow down");
        f.retry_after = Some(Duration::MAX);
        let r = t.route(&Outcome::Transient(f), 0, None, now(), 0.0);
        assert_eq!(
            r,
            Route::Retry {
                tier: 2,
                due: now() + chrono::Duration::hours(1),
                attempt: 1
            }
        );
    }

    proptest! {
        #[test]
        fn routing_invariants(
            prior in 0u32..20,
            max_retries in 0u32..8,
            jitter in 0.0f64..0.5,
            unit in -1.0f64..=1.0,
            kind in 0u8..3,
        ) {
            let mut t = topo();
            t.max_retries = max_retries;
            t.jitter = jitter;
            let outcome = match kind {
                0 => Outcome::Success,
                1 => transient(),
                _ => Outcome::Permanent(Failure::new("x", "y")),
            };
            match t.route(&outcome, prior, None, now(), unit) {
                Route::Done => prop_assert!(matches!(outcome, Outcome::Success)),
                Route::Dead { attempt, .. } => {
                    prop_assert!(!matches!(outcome, Outcome::Success), "never DLQ a success");
                    prop_assert_eq!(attempt, prior + 1, "attempts only grow");
                }
                Route::Retry { tier, due, attempt } => {
                    prop_assert_eq!(attempt, prior + 1);
                    prop_assert!(attempt <= max_retries);
                    prop_assert_eq!(tier, (attempt as usize - 1).min(t.tiers.len() - 1), "the last tier repeats");
                    let floor = t.tiers[tier].delay.mul_f64(1.0 - jitter);
                    let waited = (due - now()).to_std().unwrap();
                    prop_assert!(waited + Duration::from_millis(1) >= floor, "never earlier than delay minus jitter");
                }
            }
        }

        #[test]
        fn retry_after_and_max_age_keep_the_invariants(
            prior in 0u32..10,
            max_retries in 0u32..8,
            jitter in 0.0f64..0.5,
            unit in -1.0f64..=1.0,
            retry_after_s in proptest::option::of(0u64..2000),
            age_s in proptest::option::of(0i64..10_000),
            max_age_s in proptest::option::of(1u64..5000),
        ) {
            let mut t = topo();
            t.max_retries = max_retries;
            t.jitter = jitter;
            t.max_age = max_age_s.map(secs);
            let mut f = Failure::new("http_503", "busy");
            f.retry_after = retry_after_s.map(secs);
            let first = age_s.map(|a| now() - chrono::Duration::seconds(a));
            let expired = matches!((max_age_s, age_s), (Some(m), Some(a)) if a as u64 > m);
            let last = t.tiers.len() - 1;
            match t.route(&Outcome::Transient(f), prior, first, now(), unit) {
                Route::Done => prop_assert!(false, "a failure is never done"),
                Route::Dead { reason, attempt } => {
                    prop_assert_eq!(attempt, prior + 1, "attempts only grow");
                    match reason {
                        DlqReason::Expired => prop_assert!(expired, "expired only past max-age"),
                        DlqReason::Exhausted => prop_assert!(!expired && attempt > max_retries),
                        other => prop_assert!(false, "a transient failure is never {:?}", other),
                    }
                }
                Route::Retry { tier, due, attempt } => {
                    prop_assert!(!expired && attempt <= max_retries);
                    prop_assert_eq!(attempt, prior + 1, "attempts only grow");
                    let normal = (attempt as usize - 1).min(last);
                    prop_assert!(tier >= normal && tier <= last, "Retry-After only picks a later tier");
                    let waited = (due - now()).to_std().unwrap();
                    let floor = t.tiers[tier].delay.mul_f64(1.0 - jitter);
                    prop_assert!(waited + Duration::from_millis(1) >= floor, "never earlier than delay minus jitter");
                    if let Some(s) = retry_after_s {
                        prop_assert!(waited >= secs(s), "never earlier than Retry-After");
                    }
                }
            }
        }

        #[test]
        fn transient_failures_walk_the_tiers_the_last_repeats_then_exhaust(
            max_retries in 0u32..12,
            jitter in 0.0f64..0.5,
            units in proptest::collection::vec(-1.0f64..=1.0, 12),
        ) {
            let mut t = topo();
            t.max_retries = max_retries;
            t.jitter = jitter;
            let (mut prior, mut first, mut tiers) = (0u32, None, Vec::new());
            loop {
                match t.route(&transient(), prior, first, now(), units[prior as usize % units.len()]) {
                    Route::Retry { tier, attempt, .. } => {
                        prop_assert_eq!(attempt, prior + 1);
                        tiers.push(tier);
                        prior = attempt;
                        first.get_or_insert(now());
                    }
                    Route::Dead { reason, attempt } => {
                        prop_assert_eq!(reason, DlqReason::Exhausted);
                        prop_assert_eq!(attempt, max_retries + 1, "tried 1 + max-retries times");
                        break;
                    }
                    Route::Done => prop_assert!(false),
                }
            }
            let want: Vec<usize> = (0..max_retries as usize).map(|i| i.min(t.tiers.len() - 1)).collect();
            prop_assert_eq!(tiers, want);
        }
    }
}

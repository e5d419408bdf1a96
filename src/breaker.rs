//! A circuit breaker around the handler (pure): closed → open → half-open → closed. It judges
//! the **downstream**, not single messages: a few poison messages that fail on every try must
//! not stop a topic, and an outage must stop it before it drains every waiting retry into the
//! DLQ.
//!
//! # What it counts
//!
//! Every handler call reports [`Signal::Ok`] (success, or a permanent failure: the downstream
//! answered, the message is bad) or [`Signal::Transient`]. Calls are kept in two sliding windows,
//! each holding at most [`BreakerConfig::window`] calls, none older than
//! [`BreakerConfig::window_time`]:
//!
//! * **first attempts** — messages read from the main topic. A retry of the same bad message is
//!   not new evidence about the downstream; a first attempt is.
//! * **retries** — messages read from a delay tier.
//!
//! # When it opens
//!
//! 1. When the first-attempt window holds at least `min_calls` calls, only first attempts are
//!    judged: the breaker opens when their failure rate reaches `threshold`.
//! 2. Otherwise, if a first attempt in the window **succeeded**, the downstream is known to work:
//!    failing retries are the messages' own problem and never open the breaker.
//! 3. Otherwise (the main topic is idle or slow, and what little of it there is fails), every
//!    call in both windows is judged: at least `min_calls` calls with a failure rate reaching
//!    `threshold` open it. So an outage while only due retries flow still opens the breaker.
//!
//! Results are judged in the order the handler gave them (the router publishes each as soon as
//! the handler answers, before any copy is produced: judged at job ends, failures would arrive
//! in bursts after the successes of the same moment).
//!
//! # What it holds back
//!
//! Closed, a call does not start while the calls already let through whose results are not in
//! yet would, all failing, open the breaker ([`Breaker::try_start`]): an outage costs at most
//! the calls that prove it (40 after a full window of successes, 20 from an empty one, by
//! default), whatever the concurrency. So that this never holds a healthy loop below its
//! concurrency, the windows hold at least `max_in_flight / threshold` calls ([`Breaker::new`]).
//!
//! # How it probes
//!
//! Open, it lets nothing start (the poll loop pauses fetching) for `cooldown`. Half-open, it
//! lets `probes` calls through, **first attempts first**: a due retry may be a probe only when
//! no first attempt is waiting and [`FRESH_PROBE_GRACE`] has passed since it half-opened (time
//! for the resumed main topic to deliver). The probes are judged like the window: as soon as
//! their failure rate is certain to reach `threshold` it opens again for another cool-down; as
//! soon as it is certain to stay below, it closes (with the default 0.8 and 3 probes: one
//! success closes it, three failures re-open it). Results of calls started before it opened,
//! or in an earlier half-open round, change nothing.
//!
//! # Compared with Resilience4j
//!
//! Taken: `failureRateThreshold` (`threshold`), `minimumNumberOfCalls` (`min_calls`), a sliding
//! window bounded both by count (`slidingWindowSize`, COUNT_BASED) and by age (TIME_BASED), in
//! one (`window`, `window_time`), `waitDurationInOpenState` (`cooldown`),
//! `permittedNumberOfCallsInHalfOpenState` (`probes`) judged with the same threshold, and
//! "permanent failures are not failures" (`ignoreExceptions`), and slow calls
//! (`slowCallDurationThreshold` as `slow_call`, [`SlowCalls`]), judged as failures against the
//! same threshold (Resilience4j has a separate `slowCallRateThreshold`) and judged when a call
//! reaches that age, not when it ends: a hung downstream ends calls only at the handler timeout.
//! Not taken: automatic transition from open to half-open without traffic (rebound's loop wakes
//! at the cool-down anyway).
//! Different: the defaults (Resilience4j: 50 %, 100 calls, 60 s, 10 probes) and the split of
//! first attempts from retries with its fallback, which Resilience4j cannot do (it does not know
//! which call is a retry).
//!
//! The defaults ([`BreakerConfig::default`], the one source the CLI and README quote) are 80 %,
//! 50 calls or 5 s, 20 calls at least, 30 s, 3 probes, slow after 3 s (a handler that is that
//! slow when healthy needs a higher `--breaker-slow-call`). 80 % and not 50 %: at a 50 % partial
//! outage the retry topology still delivers (tier copies are at most one per message on
//! average), while a breaker that opens there stalls the topic for a cool-down at a time; the
//! chance that 40 of 50 calls fail when each fails with probability 1/2 is 1.2e-5.

use std::collections::VecDeque;
use std::hash::Hash;
use std::time::{Duration, Instant};

use rustc_hash::FxHashSet;

/// How long a half-open breaker waits for a first attempt (a main-topic message) before it lets
/// a due retry be a probe. Fetching resumes when it half-opens, and the first fetch of the main
/// topic comes back within a few fetch waits (`fetch.wait.max.ms`, 20 ms in rebound).
pub const FRESH_PROBE_GRACE: Duration = Duration::from_secs(1);

/// Breaker settings. [`BreakerConfig::default`] is the only place the defaults are written; the
/// CLI's help and `rebound run --check-config` print them from there.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerConfig {
    /// Failure rate (0..=1) that opens the breaker; 0 turns the breaker off.
    pub threshold: f64,
    /// Most calls each window (first attempts, retries) holds.
    pub window: usize,
    /// Oldest call a window holds.
    pub window_time: Duration,
    /// Fewest calls judged before the breaker may open (see the module doc for which calls).
    pub min_calls: usize,
    /// How long the breaker stays open before probing.
    pub cooldown: Duration,
    /// Calls a half-open breaker lets through.
    pub probes: usize,
    /// A call still in the handler after this long is judged a failure then, without waiting
    /// for its end (Resilience4j's `slowCallDurationThreshold`, judged at the call's age): a
    /// downstream that hangs opens the breaker within this, not after `--handler-timeout`.
    /// `None` judges calls only by their results.
    pub slow_call: Option<Duration>,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            threshold: 0.8,
            window: 50,
            window_time: Duration::from_secs(5),
            min_calls: 20,
            cooldown: Duration::from_secs(30),
            probes: 3,
            slow_call: Some(Duration::from_secs(3)),
        }
    }
}

impl BreakerConfig {
    /// The default settings with the breaker turned off (`threshold` 0).
    pub fn disabled() -> Self {
        BreakerConfig {
            threshold: 0.0,
            ..Default::default()
        }
    }

    /// Whether the breaker can open at all.
    pub fn enabled(&self) -> bool {
        self.threshold > 0.0
    }
}

/// The breaker's state; `as_gauge` gives the `rebound_circuit_state` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Calls go through; failures are counted.
    Closed,
    /// After the cool-down: a few probe calls go through.
    HalfOpen,
    /// Fetching is paused until the cool-down ends.
    Open,
}

impl State {
    /// The `rebound_circuit_state` value: 0 closed, 1 half-open, 2 open.
    pub fn as_gauge(self) -> i64 {
        match self {
            State::Closed => 0,
            State::HalfOpen => 1,
            State::Open => 2,
        }
    }

    /// The state's name in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::HalfOpen => "half-open",
            State::Open => "open",
        }
    }
}

/// What a handler call said, as far as the breaker cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// Success or a permanent failure: the downstream answered.
    Ok,
    /// A transient failure (including a timeout or a panic).
    Transient,
}

/// Which message a call was for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// A main-topic message: its first try.
    First,
    /// A delay-tier message.
    Retry,
}

/// A probe let through by a half-open breaker; hand it back with the call's result
/// ([`Breaker::record`]) or, if the call never happens, to [`Breaker::forget`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    round: u64,
}

/// What [`Breaker::try_start`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Start it (closed breaker).
    Yes,
    /// Start it as a probe.
    Probe(Probe),
    /// Do not start it now.
    No,
}

/// Why the breaker opened: what it judged, for the log.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Evidence {
    /// Calls judged.
    pub calls: usize,
    /// Transient failures among them.
    pub failures: usize,
    /// Whether retries were judged too (no first attempt succeeded in the window).
    pub with_retries: bool,
}

/// One recorded call: when, whether it failed, and the failures pushed up to and including it
/// (so that the failures among the oldest `d` calls cost one subtraction).
#[derive(Debug, Clone, Copy)]
struct Call {
    at: Instant,
    failed: bool,
    cum: u64,
}

/// Calls of one kind in the sliding window, oldest first.
#[derive(Debug, Default)]
struct Window {
    calls: VecDeque<Call>,
    failures: usize,
    pushed_failures: u64,
}

impl Window {
    fn push(&mut self, now: Instant, failed: bool, max: usize) {
        self.pushed_failures += u64::from(failed);
        self.calls.push_back(Call {
            at: now,
            failed,
            cum: self.pushed_failures,
        });
        self.failures += usize::from(failed);
        while self.calls.len() > max {
            self.pop();
        }
    }

    /// (calls, failures) as they would be after `p` more failures, `max` calls at most.
    fn with_failures(&self, p: usize, max: usize) -> (usize, usize) {
        let n = self.calls.len();
        let kept = (n + p).min(max);
        let dropped = n + p - kept;
        if dropped >= n {
            return (kept, kept);
        }
        let failed_dropped = match (self.calls.front(), dropped.checked_sub(1)) {
            (Some(first), Some(last)) => {
                let before = first.cum - u64::from(first.failed);
                (self.calls[last].cum - before) as usize
            }
            _ => 0,
        };
        (kept, self.failures - failed_dropped + p)
    }

    fn counts(&self) -> (usize, usize) {
        (self.calls.len(), self.failures)
    }

    fn expire(&mut self, now: Instant, max_age: Duration) {
        while self
            .calls
            .front()
            .is_some_and(|c| now.saturating_duration_since(c.at) > max_age)
        {
            self.pop();
        }
    }

    fn pop(&mut self) {
        if let Some(c) = self.calls.pop_front() {
            self.failures -= usize::from(c.failed);
        }
    }

    fn clear(&mut self) {
        self.calls.clear();
        self.failures = 0;
    }
}

/// The breaker. Time is passed in (`now`), so every decision is testable without waiting.
#[derive(Debug)]
pub struct Breaker {
    config: BreakerConfig,
    state: State,
    first: Window,
    retries: Window,
    opened_at: Option<Instant>,
    /// The current (or last) half-open round; probes of earlier rounds are ignored.
    round: u64,
    half_opened_at: Option<Instant>,
    /// Half-open: a due retry may be a probe (the fresh-work grace is over).
    retries_may_probe: bool,
    probes_started: usize,
    probes_done: usize,
    probes_failed: usize,
    evidence: Option<Evidence>,
}

impl Breaker {
    /// A closed breaker for a loop that has at most `max_in_flight` calls running. The windows
    /// hold at least `max_in_flight / threshold` calls, so that calls in flight alone, even all
    /// failing, cannot open the breaker while the window is full of successes (and
    /// [`Breaker::try_start`] never holds a healthy loop below `max_in_flight`).
    pub fn new(config: BreakerConfig, max_in_flight: usize) -> Breaker {
        let mut config = config;
        if config.enabled() {
            let needed = (max_in_flight as f64 / config.threshold).floor() as usize + 1;
            config.window = config.window.max(needed.min(100_000));
        }
        Breaker {
            config,
            state: State::Closed,
            first: Window::default(),
            retries: Window::default(),
            opened_at: None,
            round: 0,
            half_opened_at: None,
            retries_may_probe: false,
            probes_started: 0,
            probes_done: 0,
            probes_failed: 0,
            evidence: None,
        }
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// What the breaker judged when it last opened.
    pub fn evidence(&self) -> Option<Evidence> {
        self.evidence
    }

    /// Moves open → half-open once the cool-down has passed (returning the new state), and lets
    /// due retries be probes once [`FRESH_PROBE_GRACE`] has passed in half-open (no state
    /// change: the caller tries to start waiting work after every tick).
    pub fn tick(&mut self, now: Instant) -> Option<State> {
        match self.state {
            State::Open
                if self
                    .opened_at
                    .is_some_and(|t| now >= t + self.config.cooldown) =>
            {
                self.state = State::HalfOpen;
                self.round += 1;
                self.half_opened_at = Some(now);
                self.retries_may_probe = false;
                self.probes_started = 0;
                self.probes_done = 0;
                self.probes_failed = 0;
                Some(State::HalfOpen)
            }
            State::HalfOpen
                if self
                    .half_opened_at
                    .is_some_and(|t| now >= t + FRESH_PROBE_GRACE) =>
            {
                self.retries_may_probe = true;
                None
            }
            _ => None,
        }
    }

    /// Whether a due retry could start now: closed, or half-open after the grace for fresh
    /// probes. While this is false, due retries are better left where they wait (the tier
    /// buffers, whose bounds count them) than queued for a breaker that will refuse them: a queue
    /// of refused retries takes the room that the fresh work a half-open breaker wants first
    /// needs to be read at all.
    pub fn admits_retries(&self) -> bool {
        match self.state {
            State::Closed => true,
            State::Open => false,
            State::HalfOpen => self.retries_may_probe,
        }
    }

    /// When [`Breaker::tick`] has something to do: the end of the cool-down, or of the grace
    /// for fresh probes.
    pub fn wakes_at(&self) -> Option<Instant> {
        match self.state {
            State::Open => self.opened_at.map(|t| t + self.config.cooldown),
            State::HalfOpen if !self.retries_may_probe => {
                self.half_opened_at.map(|t| t + FRESH_PROBE_GRACE)
            }
            _ => None,
        }
    }

    /// Whether a call for an `attempt` may start now, with `unknown` calls started whose results
    /// have not been recorded yet.
    ///
    /// Closed, a call waits while the unknown calls, were they all to fail, would open the
    /// breaker: their results decide first. This bounds the calls an outage costs by what it
    /// takes to open the breaker (40 with a full window, 20 with an empty one, by default),
    /// whatever the concurrency. Half-open, a yes is a [`Probe`]; a retry gets one only after
    /// the grace for first attempts (the caller offers first attempts first).
    pub fn try_start(&mut self, attempt: Attempt, unknown: usize) -> Admit {
        match self.state {
            State::Closed => {
                let first = self.first.with_failures(unknown, self.config.window);
                if unknown > 0
                    && self.config.enabled()
                    && self.verdict(first, self.retries.counts()).is_some()
                {
                    Admit::No
                } else {
                    Admit::Yes
                }
            }
            State::Open => Admit::No,
            State::HalfOpen => {
                let may = attempt == Attempt::First || self.retries_may_probe;
                if may && self.probes_started < self.config.probes {
                    self.probes_started += 1;
                    Admit::Probe(Probe { round: self.round })
                } else {
                    Admit::No
                }
            }
        }
    }

    /// Opens a closed breaker on a handler that answers nothing while `calls` calls have been
    /// in it past the slow-call limit ([`SlowCalls::stalled`]). Returns the new state if it
    /// changed.
    pub fn stall(&mut self, calls: usize, now: Instant) -> Option<State> {
        if self.state != State::Closed || !self.config.enabled() {
            return None;
        }
        self.evidence = Some(Evidence {
            calls,
            failures: calls,
            with_retries: false,
        });
        Some(self.open(now))
    }

    /// A probe that will never report (its message was handed back): another may take its place.
    pub fn forget(&mut self, probe: Probe) {
        if self.state == State::HalfOpen && probe.round == self.round {
            self.probes_started = self.probes_started.saturating_sub(1);
        }
    }

    /// Records a call's result (`probe`: what [`Breaker::try_start`] gave it, if it was one).
    /// Returns the new state if it changed.
    pub fn record(
        &mut self,
        signal: Signal,
        attempt: Attempt,
        probe: Option<Probe>,
        now: Instant,
    ) -> Option<State> {
        if !self.config.enabled() {
            return None;
        }
        let failed = signal == Signal::Transient;
        match self.state {
            State::Closed => {
                self.push(attempt, failed, now);
                self.judge(now).then(|| self.open(now))
            }
            State::HalfOpen => {
                if probe.is_none_or(|p| p.round != self.round) {
                    // Started before it opened, or in an earlier round: not a probe of this one.
                    return None;
                }
                // The probes start the next closed window.
                self.push(attempt, failed, now);
                self.probes_done += 1;
                self.probes_failed += usize::from(failed);
                let limit = self.config.threshold * self.config.probes as f64;
                let undecided = self.config.probes.saturating_sub(self.probes_done);
                if self.probes_failed as f64 >= limit {
                    self.evidence = Some(Evidence {
                        calls: self.probes_done,
                        failures: self.probes_failed,
                        with_retries: false,
                    });
                    Some(self.open(now))
                } else if ((self.probes_failed + undecided) as f64) < limit {
                    self.state = State::Closed;
                    Some(State::Closed)
                } else {
                    None
                }
            }
            // Results of messages started before the breaker opened change nothing.
            State::Open => None,
        }
    }

    fn push(&mut self, attempt: Attempt, failed: bool, now: Instant) {
        let window = match attempt {
            Attempt::First => &mut self.first,
            Attempt::Retry => &mut self.retries,
        };
        window.push(now, failed, self.config.window);
    }

    /// Whether the windows say "open" (the rules in the module doc); sets the evidence if so.
    fn judge(&mut self, now: Instant) -> bool {
        self.first.expire(now, self.config.window_time);
        self.retries.expire(now, self.config.window_time);
        let verdict = self.verdict(self.first.counts(), self.retries.counts());
        if verdict.is_some() {
            self.evidence = verdict;
        }
        verdict.is_some()
    }

    /// The rules of the module doc on (calls, failures) of first attempts and of retries: the
    /// evidence if they open the breaker.
    fn verdict(&self, first: (usize, usize), retries: (usize, usize)) -> Option<Evidence> {
        let (min, rate) = (self.config.min_calls, self.config.threshold);
        let (calls, failures, with_retries) = if first.0 >= min {
            (first.0, first.1, false)
        } else if first.1 < first.0 {
            return None;
        } else {
            (first.0 + retries.0, first.1 + retries.1, true)
        };
        (calls >= min && failures as f64 >= rate * calls as f64).then_some(Evidence {
            calls,
            failures,
            with_retries,
        })
    }

    fn open(&mut self, now: Instant) -> State {
        self.state = State::Open;
        self.opened_at = Some(now);
        self.first.clear();
        self.retries.clear();
        State::Open
    }
}

/// The calls still in the handler, oldest first, for [`BreakerConfig::slow_call`]: a call that
/// passes that age is judged a failure at once (a hung downstream answers only at the handler
/// timeout), and its own result, when it comes, is not counted again.
///
/// Keys identify a call (the pipeline uses partition and offset). Memory: one entry per call in
/// the handler (bounded by `--max-in-flight`), plus calls that ended out of order behind an
/// older one still running, dropped as soon as that one ends.
#[derive(Debug)]
pub struct SlowCalls<K> {
    limit: Option<Duration>,
    order: VecDeque<(Instant, K)>,
    /// Fx hashing: touched per call, keys are the pipeline's own (partition, offset).
    running: FxHashSet<K>,
    /// Judged slow; their result is still to come (or they are handed back).
    judged: FxHashSet<K>,
    /// When the handler last answered a call.
    last_answer: Option<Instant>,
}

impl<K: Hash + Eq + Copy> SlowCalls<K> {
    /// Watches calls slower than `limit`; `None` watches nothing (every method is then a no-op).
    pub fn new(limit: Option<Duration>) -> SlowCalls<K> {
        SlowCalls {
            limit,
            order: VecDeque::new(),
            running: FxHashSet::default(),
            judged: FxHashSet::default(),
            last_answer: None,
        }
    }

    /// A call for `key` started at `now`.
    pub fn started(&mut self, key: K, now: Instant) {
        if self.limit.is_some() && self.running.insert(key) {
            self.order.push_back((now, key));
        }
    }

    /// The handler answered for `key`. True when the call was already judged slow: its result
    /// must not be counted again.
    pub fn answered(&mut self, key: K, now: Instant) -> bool {
        if self.limit.is_none() {
            return false;
        }
        self.last_answer = Some(now);
        if self.running.is_empty() && self.judged.is_empty() {
            // The common case: the call finished in its first poll and was never watched.
            // Nothing runs, so whatever `order` still holds has ended.
            self.order.clear();
            return false;
        }
        if self.judged.remove(&key) {
            return true;
        }
        self.running.remove(&key);
        self.trim();
        false
    }

    /// The call for `key` ended without an answer (handed back). True when it had been judged
    /// slow (and so counted).
    pub fn ended(&mut self, key: K) -> bool {
        if self.limit.is_none() {
            return false;
        }
        if self.running.is_empty() && self.judged.is_empty() {
            self.order.clear();
            return false;
        }
        self.running.remove(&key);
        self.trim();
        self.judged.remove(&key)
    }

    /// The calls that have been in the handler for the limit or longer at `now`, each returned
    /// once, oldest first.
    pub fn slow(&mut self, now: Instant) -> Vec<K> {
        let Some(limit) = self.limit else {
            return Vec::new();
        };
        let mut out = Vec::new();
        while let Some(&(at, key)) = self.order.front() {
            if now < at + limit {
                break;
            }
            self.order.pop_front();
            if self.running.remove(&key) {
                self.judged.insert(key);
                out.push(key);
            }
        }
        out
    }

    /// Whether the handler looks hung: at least `min_calls` calls have been in it for the limit
    /// or longer, and it has answered nothing for that long. The failure rate alone cannot say
    /// so soon: the calls in flight are at most `--max-in-flight`, which the window keeps below
    /// the threshold of a window full of earlier successes (see [`Breaker::new`]), and a hung
    /// handler ends no call before the handler timeout.
    pub fn stalled(&self, now: Instant, min_calls: usize) -> bool {
        self.limit.is_some_and(|limit| {
            self.judged.len() >= min_calls && self.last_answer.is_none_or(|t| now >= t + limit)
        })
    }

    /// When [`SlowCalls::stalled`] turns true if nothing changes: `min_calls` calls are judged
    /// slow and the handler answers nothing more.
    pub fn stalls_at(&self, min_calls: usize) -> Option<Instant> {
        let limit = self.limit?;
        (self.judged.len() >= min_calls)
            .then(|| self.last_answer.map(|t| t + limit))
            .flatten()
    }

    /// Calls judged slow whose result has not come.
    pub fn hung(&self) -> usize {
        self.judged.len()
    }

    /// When the oldest call still in the handler becomes slow.
    pub fn wakes_at(&self) -> Option<Instant> {
        let limit = self.limit?;
        self.order.front().map(|(at, _)| *at + limit)
    }

    /// Drops ended calls from the front, so that the front is the oldest call still running.
    fn trim(&mut self) {
        while let Some((_, key)) = self.order.front() {
            if self.running.contains(key) {
                break;
            }
            self.order.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use Attempt::{First, Retry};
    use Signal::{Ok as Good, Transient as Bad};

    fn cfg() -> BreakerConfig {
        BreakerConfig::default()
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Opens `b` with first attempts that all fail; returns when it opened.
    fn open(b: &mut Breaker, t0: Instant) -> Instant {
        for i in 0..b.config.min_calls {
            if b.record(Bad, First, None, t0) == Some(State::Open) {
                assert_eq!(i + 1, b.config.min_calls);
                return t0;
            }
        }
        panic!("did not open");
    }

    fn half_open(b: &mut Breaker, t0: Instant) -> Instant {
        let t1 = open(b, t0) + b.config.cooldown;
        assert!(!b.admits_retries(), "open");
        assert_eq!(b.tick(t1), Some(State::HalfOpen));
        t1
    }

    #[test]
    fn the_defaults_are_the_documented_ones() {
        let d = BreakerConfig::default();
        assert_eq!(
            (
                d.threshold,
                d.window,
                d.window_time,
                d.min_calls,
                d.cooldown,
                d.probes,
                d.slow_call
            ),
            (
                0.8,
                50,
                Duration::from_secs(5),
                20,
                Duration::from_secs(30),
                3,
                Some(Duration::from_secs(3))
            )
        );
        assert!(d.enabled() && !BreakerConfig::disabled().enabled());
    }

    #[test]
    fn an_outage_opens_after_min_calls_first_attempts_when_the_window_was_empty() {
        let t0 = Instant::now();
        let mut b = Breaker::new(cfg(), 32);
        for _ in 0..19 {
            assert_eq!(b.record(Bad, First, None, t0), None, "fewer than min_calls");
        }
        assert_eq!(b.record(Bad, First, None, t0), Some(State::Open));
        assert_eq!(b.try_start(First, 0), Admit::No);
        let e = b.evidence().unwrap();
        assert_eq!((e.calls, e.failures, e.with_retries), (20, 20, false));
    }

    #[test]
    fn after_a_full_window_of_successes_an_outage_opens_within_40_calls() {
        let t0 = Instant::now();
        let mut b = Breaker::new(cfg(), 32);
        for _ in 0..500 {
            b.record(Good, First, None, t0);
        }
        let mut failed = 0;
        while b.record(Bad, First, None, t0).is_none() {
            failed += 1;
        }
        assert_eq!(failed + 1, 40, "40 of the last 50 first attempts");
    }

    #[test]
    fn at_a_low_rate_old_successes_expire_and_an_outage_opens_within_the_window_time() {
        // 10 calls a second: the window holds 5 s of them (50).
        let t0 = Instant::now();
        let mut b = Breaker::new(cfg(), 32);
        let mut t = t0;
        for _ in 0..100 {
            b.record(Good, First, None, t);
            t += ms(100);
        }
        let outage = t;
        while b.record(Bad, First, None, t).is_none() {
            t += ms(100);
        }
        assert!(t - outage <= Duration::from_secs(4), "{:?}", t - outage);
    }

    #[test]
    fn a_quarter_or_half_of_first_attempts_failing_never_opens_it_whatever_the_retries_do() {
        // (one first attempt in `every` fails, retries: poison that always fails / as first)
        for (every, poison) in [(4, true), (2, false)] {
            let mut b = Breaker::new(cfg(), 32);
            let mut t = Instant::now();
            for i in 0..10_000 {
                let s = if i % every == 0 { Bad } else { Good };
                assert_eq!(b.record(s, First, None, t), None);
                let r = if poison { Bad } else { s };
                assert_eq!(b.record(r, Retry, None, t), None);
                assert_eq!(b.record(r, Retry, None, t), None);
                t += ms(3);
            }
            assert_eq!(b.state(), State::Closed);
        }
    }

    #[test]
    fn with_the_main_topic_idle_failing_retries_open_it() {
        let t0 = Instant::now();
        let mut b = Breaker::new(cfg(), 32);
        for _ in 0..19 {
            assert_eq!(b.record(Bad, Retry, None, t0), None);
        }
        assert_eq!(b.record(Bad, Retry, None, t0), Some(State::Open));
        assert!(b.evidence().unwrap().with_retries);
    }

    #[test]
    fn with_a_slow_main_topic_failing_retries_open_it_only_if_no_first_attempt_succeeded() {
        let t0 = Instant::now();
        let mut b = Breaker::new(cfg(), 32);
        b.record(Good, First, None, t0);
        for _ in 0..100 {
            assert_eq!(b.record(Bad, Retry, None, t0), None, "the downstream works");
        }
        // Once that success is older than the window, the retries are judged.
        let t1 = t0 + Duration::from_secs(6);
        b.record(Bad, First, None, t1);
        let mut n = 1;
        while b.record(Bad, Retry, None, t1).is_none() {
            n += 1;
        }
        assert!(n < 50, "retries judged ({n} calls)");
    }

    #[test]
    fn a_call_past_the_slow_limit_is_judged_once_and_its_late_result_is_not_counted() {
        let t0 = Instant::now();
        let mut w = SlowCalls::new(Some(ms(3000)));
        w.started(1, t0);
        w.started(2, t0 + ms(10));
        w.started(3, t0 + ms(20));
        assert_eq!(w.wakes_at(), Some(t0 + ms(3000)));
        assert!(
            !w.answered(2, t0 + ms(500)),
            "answered in time: counted by its result"
        );
        assert_eq!(w.slow(t0 + ms(2999)), Vec::<i32>::new());
        assert_eq!(w.slow(t0 + ms(3020)), vec![1, 3], "2 answered before");
        assert_eq!(w.slow(t0 + ms(9000)), Vec::<i32>::new(), "each once");
        assert!(
            w.answered(1, t0 + ms(9000)),
            "judged slow: its result is not counted again"
        );
        assert!(w.ended(3), "handed back after being judged");
        assert!(!w.answered(1, t0 + ms(9000)));
        assert_eq!(w.wakes_at(), None);
    }

    #[test]
    fn a_handler_that_answers_nothing_while_min_calls_are_slow_is_stalled_and_opens_it() {
        let t0 = Instant::now();
        let mut w = SlowCalls::new(Some(ms(3000)));
        let mut b = Breaker::new(cfg(), 32);
        for i in 0..50 {
            b.record(Good, First, None, t0);
            w.started(100 + i, t0);
            w.answered(100 + i, t0);
        }
        for i in 0..32 {
            w.started(i, t0 + ms(10));
        }
        let slow = w.slow(t0 + ms(3010));
        for _ in &slow {
            assert_eq!(
                b.record(Bad, First, None, t0 + ms(3010)),
                None,
                "32 of 82: not enough"
            );
        }
        assert!(w.stalled(t0 + ms(3010), 20));
        assert!(!w.stalled(t0 + ms(3010), 33), "fewer than min_calls hung");
        assert_eq!(b.stall(w.hung(), t0 + ms(3010)), Some(State::Open));
        assert_eq!(b.evidence().map(|e| e.calls), Some(32));
        // An answer within the limit: slow, not hung.
        let mut w = SlowCalls::new(Some(ms(3000)));
        for i in 0..25 {
            w.started(i, t0);
        }
        w.started(99, t0 + ms(2000));
        assert!(!w.answered(99, t0 + ms(2500)));
        assert_eq!(w.slow(t0 + ms(3000)).len(), 25);
        assert!(!w.stalled(t0 + ms(3000), 20));
        assert!(w.stalled(t0 + ms(5500), 20));
    }

    #[test]
    fn ended_calls_leave_the_front_so_the_next_wake_is_the_oldest_running_one() {
        let t0 = Instant::now();
        let mut w = SlowCalls::new(Some(ms(100)));
        for (i, at) in [(1, 0), (2, 5), (3, 50)] {
            w.started(i, t0 + ms(at));
        }
        assert!(!w.answered(2, t0 + ms(6)));
        assert!(!w.ended(1));
        assert_eq!(w.wakes_at(), Some(t0 + ms(150)));
        let mut off = SlowCalls::new(None);
        off.started(1, t0);
        assert_eq!((off.slow(t0 + ms(10_000)), off.wakes_at()), (vec![], None));
    }

    #[test]
    fn an_answer_with_nothing_running_leaves_nothing_to_wake_for() {
        let t0 = Instant::now();
        let mut w = SlowCalls::new(Some(ms(100)));
        w.started(1, t0);
        w.started(2, t0 + ms(50));
        assert!(!w.answered(2, t0 + ms(60)));
        assert_eq!(w.slow(t0 + ms(100)), vec![1]);
        // Judged slow, then answered: nothing runs, but 2 is still queued behind it.
        assert!(w.answered(1, t0 + ms(120)));
        // A call never watched (it finished in its first poll) answers.
        assert!(!w.answered(3, t0 + ms(130)));
        assert_eq!(w.wakes_at(), None, "no call is running");
        assert!(!w.ended(4));
        assert_eq!(w.wakes_at(), None);
    }

    #[test]
    fn half_open_probes_first_attempts_first_and_retries_after_the_grace() {
        let t0 = Instant::now();
        let mut b = Breaker::new(cfg(), 32);
        let t1 = half_open(&mut b, t0);
        assert_eq!(b.wakes_at(), Some(t1 + FRESH_PROBE_GRACE));
        assert!(!b.admits_retries());
        assert_eq!(b.try_start(Retry, 0), Admit::No, "fresh work first");
        assert!(matches!(b.try_start(First, 0), Admit::Probe(_)));
        assert_eq!(b.tick(t1 + FRESH_PROBE_GRACE - ms(1)), None);
        assert_eq!(b.try_start(Retry, 0), Admit::No);
        assert_eq!(b.tick(t1 + FRESH_PROBE_GRACE), None);
        assert_eq!(b.wakes_at(), None);
        assert!(b.admits_retries());
        assert!(matches!(b.try_start(Retry, 0), Admit::Probe(_)));
        assert!(matches!(b.try_start(First, 0), Admit::Probe(_)));
        assert_eq!(b.try_start(First, 0), Admit::No, "only `probes` calls");
    }

    #[test]
    fn one_good_probe_closes_it_and_three_failed_probes_reopen_it() {
        let t0 = Instant::now();
        let mut b = Breaker::new(cfg(), 32);
        let t1 = half_open(&mut b, t0);
        let Admit::Probe(p) = b.try_start(First, 0) else {
            panic!()
        };
        assert_eq!(b.record(Good, First, Some(p), t1), Some(State::Closed));
        assert_eq!(b.try_start(Retry, 0), Admit::Yes);

        let mut b = Breaker::new(cfg(), 32);
        let t1 = half_open(&mut b, t0);
        let probes: Vec<Probe> = (0..3)
            .map(|_| match b.try_start(First, 0) {
                Admit::Probe(p) => p,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(b.record(Bad, First, Some(probes[0]), t1), None);
        assert_eq!(b.record(Bad, First, Some(probes[1]), t1), None);
        assert_eq!(b.record(Bad, First, Some(probes[2]), t1), Some(State::Open));
        assert_eq!(b.wakes_at(), Some(t1 + cfg().cooldown));
    }

    #[test]
    fn closing_keeps_the_probes_as_evidence_so_poison_retries_do_not_reopen_it() {
        let t0 = Instant::now();
        let mut b = Breaker::new(cfg(), 32);
        let t1 = half_open(&mut b, t0);
        let Admit::Probe(p) = b.try_start(First, 0) else {
            panic!()
        };
        b.record(Good, First, Some(p), t1);
        for _ in 0..100 {
            assert_eq!(b.record(Bad, Retry, None, t1), None);
        }
    }

    #[test]
    fn results_of_calls_that_are_not_probes_of_this_round_change_nothing() {
        let t0 = Instant::now();
        let mut b = Breaker::new(cfg(), 32);
        let t1 = half_open(&mut b, t0);
        let Admit::Probe(old) = b.try_start(First, 0) else {
            panic!()
        };
        for _ in 0..10 {
            assert_eq!(b.record(Bad, First, None, t1), None, "started before");
        }
        // This round fails; the next one must not count the old probe.
        for _ in 0..2 {
            let Admit::Probe(p) = b.try_start(First, 0) else {
                panic!()
            };
            b.record(Bad, First, Some(p), t1);
        }
        assert_eq!(b.record(Bad, First, Some(old), t1), Some(State::Open));
        let t2 = t1 + cfg().cooldown;
        b.tick(t2);
        assert_eq!(b.record(Good, First, Some(old), t2), None, "earlier round");
        assert_eq!(b.state(), State::HalfOpen);
    }

    #[test]
    fn a_forgotten_probe_frees_its_place() {
        let t0 = Instant::now();
        let mut b = Breaker::new(cfg(), 32);
        half_open(&mut b, t0);
        let ps: Vec<Admit> = (0..3).map(|_| b.try_start(First, 0)).collect();
        assert_eq!(b.try_start(First, 0), Admit::No);
        let Admit::Probe(p) = ps[0] else { panic!() };
        b.forget(p);
        assert!(matches!(b.try_start(First, 0), Admit::Probe(_)));
    }

    #[test]
    fn permanent_failures_are_answers_not_failures() {
        // The router reports a permanent failure as `Ok`; 100 of them never open it.
        let mut b = Breaker::new(cfg(), 32);
        for _ in 0..100 {
            assert_eq!(b.record(Good, First, None, Instant::now()), None);
        }
    }

    #[test]
    fn disabled_never_opens() {
        let now = Instant::now();
        let mut b = Breaker::new(BreakerConfig::disabled(), 32);
        for _ in 0..100 {
            assert_eq!(b.record(Bad, First, None, now), None);
            assert_eq!(b.record(Bad, Retry, None, now), None);
        }
        assert_eq!(b.try_start(Retry, 0), Admit::Yes);
    }

    #[test]
    fn closed_it_holds_calls_back_while_those_in_flight_could_open_it() {
        let now = Instant::now();
        let mut b = Breaker::new(cfg(), 32);
        // Empty window: 19 unknown calls cannot open it, 20 could.
        assert_eq!(b.try_start(First, 19), Admit::Yes);
        assert_eq!(b.try_start(First, 20), Admit::No);
        // A full window of successes absorbs 39 failures, not 40.
        for _ in 0..50 {
            b.record(Good, First, None, now);
        }
        assert_eq!(b.try_start(Retry, 39), Admit::Yes);
        assert_eq!(b.try_start(Retry, 40), Admit::No);
        // With 10 failures among the newest calls: 29 more at most.
        for _ in 0..10 {
            b.record(Bad, First, None, now);
        }
        assert_eq!(b.try_start(First, 29), Admit::Yes);
        assert_eq!(b.try_start(First, 30), Admit::No);
        // Nothing unknown: always (the next call is what may open it).
        assert_eq!(b.try_start(First, 0), Admit::Yes);
    }

    #[test]
    fn an_outage_costs_at_most_what_it_takes_to_open_whatever_the_concurrency() {
        // 32 calls in flight at a time, each failing; calls start only when admitted.
        for warm in [0, 500] {
            let now = Instant::now();
            let mut b = Breaker::new(cfg(), 32);
            for _ in 0..warm {
                b.record(Good, First, None, now);
            }
            let (mut started, mut running) = (0, 0usize);
            loop {
                while running < 32 && b.try_start(First, running) == Admit::Yes {
                    started += 1;
                    running += 1;
                }
                assert!(running > 0, "nothing running and nothing admitted");
                running -= 1;
                if b.record(Bad, First, None, now) == Some(State::Open) {
                    break;
                }
            }
            assert_eq!(started, if warm == 0 { 20 } else { 40 });
        }
    }

    #[test]
    fn a_large_max_in_flight_widens_the_window_so_healthy_calls_are_never_held() {
        let now = Instant::now();
        let mut b = Breaker::new(cfg(), 200);
        for _ in 0..1000 {
            b.record(Good, First, None, now);
        }
        assert_eq!(b.try_start(First, 199), Admit::Yes);
    }

    #[test]
    fn windows_are_bounded() {
        let now = Instant::now();
        let mut b = Breaker::new(cfg(), 32);
        for _ in 0..1000 {
            b.record(Good, First, None, now);
            b.record(Bad, Retry, None, now);
        }
        assert_eq!((b.first.counts().0, b.retries.counts().0), (50, 50));
    }
}

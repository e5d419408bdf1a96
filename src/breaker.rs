//! A circuit breaker around the handler (pure): closed → open → half-open → closed.
//!
//! * **Closed**: outcomes are recorded in a sliding window of the last `window` calls. When the
//!   window holds at least `min_calls` outcomes and the share of transient failures reaches
//!   `threshold`, the breaker opens.
//! * **Open**: no new message is started (the poll loop pauses fetching); messages already read
//!   wait. After `cooldown` the breaker goes half-open.
//! * **Half-open**: up to `probes` messages are let through. If they all succeed (or fail
//!   permanently — a data problem, not an outage) the breaker closes; a transient failure
//!   re-opens it for another cool-down.
//!
//! Only transient failures count: they are the signal that the downstream is unhealthy.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Breaker settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerConfig {
    /// Share of transient failures (0..=1) that opens the breaker; 0 disables it.
    pub threshold: f64,
    /// How many recent outcomes the window holds.
    pub window: usize,
    /// Fewest outcomes in the window before the breaker may open.
    pub min_calls: usize,
    /// How long the breaker stays open before probing.
    pub cooldown: Duration,
    /// Probe messages let through when half-open.
    pub probes: usize,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            threshold: 0.5,
            window: 50,
            min_calls: 20,
            cooldown: Duration::from_secs(30),
            probes: 3,
        }
    }
}

impl BreakerConfig {
    pub fn disabled() -> Self {
        BreakerConfig {
            threshold: 0.0,
            ..Default::default()
        }
    }

    pub fn enabled(&self) -> bool {
        self.threshold > 0.0
    }
}

/// The breaker's state; `as_gauge` gives the `rebound_circuit_state` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Closed,
    HalfOpen,
    Open,
}

impl State {
    pub fn as_gauge(self) -> i64 {
        match self {
            State::Closed => 0,
            State::HalfOpen => 1,
            State::Open => 2,
        }
    }

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
    Ok,
    Transient,
}

#[derive(Debug)]
pub struct Breaker {
    config: BreakerConfig,
    state: State,
    recent: VecDeque<Signal>,
    transient_in_window: usize,
    opened_at: Option<Instant>,
    /// Half-open: probes started, and probes that came back fine.
    probes_started: usize,
    probes_passed: usize,
}

impl Breaker {
    pub fn new(config: BreakerConfig) -> Breaker {
        Breaker {
            config,
            state: State::Closed,
            recent: VecDeque::with_capacity(config.window),
            transient_in_window: 0,
            opened_at: None,
            probes_started: 0,
            probes_passed: 0,
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    /// Moves open → half-open once the cool-down has passed. Returns the new state if it changed.
    pub fn tick(&mut self, now: Instant) -> Option<State> {
        if self.state == State::Open
            && self
                .opened_at
                .is_some_and(|t| now >= t + self.config.cooldown)
        {
            self.state = State::HalfOpen;
            self.probes_started = 0;
            self.probes_passed = 0;
            return Some(State::HalfOpen);
        }
        None
    }

    /// When the open breaker will half-open.
    pub fn wakes_at(&self) -> Option<Instant> {
        match self.state {
            State::Open => self.opened_at.map(|t| t + self.config.cooldown),
            _ => None,
        }
    }

    /// Whether one more message may start now; counts it as a probe when half-open.
    pub fn try_start(&mut self) -> bool {
        match self.state {
            State::Closed => true,
            State::Open => false,
            State::HalfOpen => {
                if self.probes_started < self.config.probes {
                    self.probes_started += 1;
                    true
                } else {
                    false
                }
            }
        }
    }

    /// Records an outcome. Returns the new state if it changed.
    pub fn record(&mut self, signal: Signal, now: Instant) -> Option<State> {
        if !self.config.enabled() {
            return None;
        }
        match self.state {
            State::Closed => {
                self.recent.push_back(signal);
                if signal == Signal::Transient {
                    self.transient_in_window += 1;
                }
                if self.recent.len() > self.config.window
                    && self.recent.pop_front() == Some(Signal::Transient)
                {
                    self.transient_in_window -= 1;
                }
                let n = self.recent.len();
                if n >= self.config.min_calls
                    && self.transient_in_window as f64 >= self.config.threshold * n as f64
                {
                    return Some(self.open(now));
                }
                None
            }
            State::HalfOpen => match signal {
                Signal::Transient => Some(self.open(now)),
                Signal::Ok => {
                    self.probes_passed += 1;
                    if self.probes_passed >= self.config.probes {
                        self.state = State::Closed;
                        self.recent.clear();
                        self.transient_in_window = 0;
                        Some(State::Closed)
                    } else {
                        None
                    }
                }
            },
            // Results of messages started before the breaker opened change nothing.
            State::Open => None,
        }
    }

    fn open(&mut self, now: Instant) -> State {
        self.state = State::Open;
        self.opened_at = Some(now);
        self.recent.clear();
        self.transient_in_window = 0;
        State::Open
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> BreakerConfig {
        BreakerConfig {
            threshold: 0.5,
            window: 10,
            min_calls: 4,
            cooldown: Duration::from_secs(5),
            probes: 2,
        }
    }

    #[test]
    fn opens_when_transient_failures_pass_the_threshold_with_enough_calls() {
        let now = Instant::now();
        let mut b = Breaker::new(cfg());
        assert_eq!(b.record(Signal::Transient, now), None);
        assert_eq!(b.record(Signal::Transient, now), None);
        assert_eq!(
            b.record(Signal::Transient, now),
            None,
            "fewer than min_calls"
        );
        assert_eq!(b.record(Signal::Transient, now), Some(State::Open));
        assert!(!b.try_start());
    }

    #[test]
    fn a_healthy_mix_stays_closed() {
        let now = Instant::now();
        let mut b = Breaker::new(cfg());
        for i in 0..100 {
            let s = if i % 4 == 0 {
                Signal::Transient
            } else {
                Signal::Ok
            };
            assert_eq!(b.record(s, now), None);
        }
        assert_eq!(b.state(), State::Closed);
    }

    #[test]
    fn half_opens_after_cooldown_and_closes_on_good_probes() {
        let t0 = Instant::now();
        let mut b = Breaker::new(cfg());
        for _ in 0..4 {
            b.record(Signal::Transient, t0);
        }
        assert_eq!(b.tick(t0 + Duration::from_secs(4)), None);
        assert_eq!(b.wakes_at(), Some(t0 + Duration::from_secs(5)));
        assert_eq!(b.tick(t0 + Duration::from_secs(5)), Some(State::HalfOpen));
        assert!(b.try_start() && b.try_start());
        assert!(!b.try_start(), "only `probes` messages while half-open");
        assert_eq!(b.record(Signal::Ok, t0), None);
        assert_eq!(b.record(Signal::Ok, t0), Some(State::Closed));
        assert!(b.try_start());
    }

    #[test]
    fn a_failed_probe_reopens() {
        let t0 = Instant::now();
        let mut b = Breaker::new(cfg());
        for _ in 0..4 {
            b.record(Signal::Transient, t0);
        }
        let t1 = t0 + Duration::from_secs(5);
        b.tick(t1);
        assert!(b.try_start());
        assert_eq!(b.record(Signal::Transient, t1), Some(State::Open));
        assert_eq!(b.wakes_at(), Some(t1 + Duration::from_secs(5)));
    }

    #[test]
    fn disabled_never_opens() {
        let now = Instant::now();
        let mut b = Breaker::new(BreakerConfig::disabled());
        for _ in 0..100 {
            assert_eq!(b.record(Signal::Transient, now), None);
        }
        assert!(b.try_start());
    }
}

//! Which read and due job may start now (pure, no I/O): the circuit breaker (with its slow-call
//! watch), the queue of jobs it holds back (FIFO), and the key gate (same-key messages never in
//! flight together), in one place. The poll loop offers jobs with [`Admission::park`], takes the ones to start with
//! [`Admission::next`], and reports every job's end with [`Admission::completed`].

use std::collections::VecDeque;
use std::time::Instant;

use crate::breaker::{Admit, Attempt, Breaker, Probe, Signal, SlowCalls, State as BreakerState};
use crate::ordering::KeyGate;
use crate::router::{Completion, Job, Tp};
use crate::topology::Stage;

/// A probe a half-open breaker let through: which job, to recognise its completion.
struct ProbeJob {
    tp: Tp,
    offset: i64,
    probe: Probe,
}

/// The breaker, the parked queue and the key gate.
pub(super) struct Admission {
    pub(super) breaker: Breaker,
    /// Read and due, waiting for the circuit breaker to let them start (FIFO).
    parked: VecDeque<Job>,
    gate: KeyGate<Tp, Job>,
    /// Probes a half-open breaker let through and that have not reported yet.
    probes: Vec<ProbeJob>,
    /// Handler results taken from the router, reused so that taking them allocates nothing.
    signals: Vec<(Tp, i64, Signal)>,
    /// Jobs whose handler result the breaker has, still running (producing their copy).
    judged_running: usize,
    /// Jobs accounted for as soon as they finished ([`Admission::finished_now`]) whose handler
    /// result is still in the router's queue: unknown to the breaker until [`Admission::judge`]
    /// takes it, which then does not count them as running.
    answered_unjudged: usize,
    /// Calls in the handler, for the breaker's slow-call rule.
    slow: SlowCalls<(Tp, i64)>,
    /// The breaker's `--breaker-min-calls` (the stall rule's quorum).
    min_calls: usize,
}

/// What [`Admission::judge_slow`] found.
pub(super) struct SlowVerdict {
    /// Changes of the breaker's state, last one last.
    pub(super) changes: Vec<BreakerState>,
    /// Calls hung in the handler when that opened the breaker (the stall rule).
    pub(super) stalled: Option<usize>,
}

fn attempt_of(tp: Tp) -> Attempt {
    match tp.stage {
        Stage::Main => Attempt::First,
        Stage::Tier(_) => Attempt::Retry,
    }
}

impl Admission {
    pub(super) fn new(config: crate::breaker::BreakerConfig, max_in_flight: usize) -> Admission {
        Admission {
            breaker: Breaker::new(config, max_in_flight),
            slow: SlowCalls::new(config.slow_call.filter(|_| config.enabled())),
            min_calls: config.min_calls,
            parked: VecDeque::new(),
            gate: KeyGate::default(),
            probes: Vec::new(),
            signals: Vec::new(),
            judged_running: 0,
            answered_unjudged: 0,
        }
    }

    /// Jobs read and not started: parked for the breaker or waiting behind their key.
    pub(super) fn waiting(&self) -> usize {
        self.parked.len() + self.gate.waiting()
    }

    pub(super) fn parked(&self) -> usize {
        self.parked.len()
    }

    /// Queues `job` to start as soon as the breaker allows (at once when closed).
    pub(super) fn park(&mut self, job: Job) {
        self.parked.push_back(job);
    }

    /// The next job that may start now, or `None`. `running` counts the jobs started and not
    /// accounted for; `current` says whether a job still belongs to its partition's assignment
    /// (a job that does not is dropped: handed back). A half-open breaker gets main-topic jobs
    /// first (fresh work is the best probe); it takes a due retry only when none is waiting.
    pub(super) fn next(&mut self, running: usize, current: impl Fn(&Job) -> bool) -> Option<Job> {
        while !self.parked.is_empty() {
            let unknown = self.unknown(running);
            let (at, admit) = match self.breaker.state() {
                BreakerState::Closed => (0, self.breaker.try_start(Attempt::First, unknown)),
                BreakerState::Open => return None,
                BreakerState::HalfOpen => {
                    let fresh = self.parked.iter().position(|j| j.tp.stage == Stage::Main);
                    let (at, attempt) = fresh.map_or((0, Attempt::Retry), |i| (i, Attempt::First));
                    (at, self.breaker.try_start(attempt, unknown))
                }
            };
            if admit == Admit::No {
                return None;
            }
            let job = self.parked.remove(at)?;
            if !current(&job) {
                if let Admit::Probe(probe) = admit {
                    self.breaker.forget(probe);
                }
                continue;
            }
            if let Admit::Probe(probe) = admit {
                self.probes.push(ProbeJob {
                    tp: job.tp,
                    offset: job.message.offset,
                    probe,
                });
            }
            if let Some(job) = self.gate.admit(job.tp, job, |j| j.message.key.as_deref()) {
                return Some(job);
            }
        }
        None
    }

    /// Whether jobs accounted for at once have results the breaker has not judged yet.
    pub(super) fn has_unjudged(&self) -> bool {
        self.answered_unjudged > 0
    }

    /// Calls let through whose result the breaker does not have yet, `running` of them started
    /// and not accounted for.
    fn unknown(&self, running: usize) -> usize {
        (running + self.gate.waiting() + self.answered_unjudged).saturating_sub(self.judged_running)
    }

    /// Whether a first attempt read just now may start at once, without the parked queue: none
    /// is parked (they go first) and the breaker, closed, admits it ([`Breaker::try_start`]).
    /// `running`: as for [`Admission::next`]. It must then go through [`Admission::admit_now`].
    pub(super) fn may_start_now(&mut self, running: usize) -> bool {
        if !self.parked.is_empty() || self.breaker.state() != BreakerState::Closed {
            return false;
        }
        let unknown = self.unknown(running);
        self.breaker.try_start(Attempt::First, unknown) == Admit::Yes
    }

    /// Marks the key of a job [`Admission::may_start_now`] let through as in flight and returns
    /// the job, or keeps it behind an earlier job of its key (`None`; it starts when that one
    /// ends, from [`Admission::completed`] or [`Admission::finished_now`]).
    pub(super) fn admit_now(&mut self, job: Job) -> Option<Job> {
        self.gate.admit(job.tp, job, |j| j.message.key.as_deref())
    }

    /// A job's handler call starts (for the slow-call rule).
    pub(super) fn started(&mut self, tp: Tp, offset: i64, now: Instant) {
        self.slow.started((tp, offset), now);
    }

    /// When the breaker next has something to decide on its own: its cool-down or half-open
    /// grace, a call becoming slow, or (closed) the handler stalling.
    pub(super) fn wakes_at(&self) -> Option<Instant> {
        let stall = (self.breaker.state() == BreakerState::Closed)
            .then(|| self.slow.stalls_at(self.min_calls))
            .flatten();
        [self.breaker.wakes_at(), self.slow.wakes_at(), stall]
            .into_iter()
            .flatten()
            .min()
    }

    /// Judges the calls that have been in the handler for `--breaker-slow-call` as failures,
    /// without waiting for their end; a handler that answers nothing while `--breaker-min-calls`
    /// calls wait past it opens the breaker (a hung downstream).
    pub(super) fn judge_slow(&mut self, now: Instant) -> SlowVerdict {
        let mut changes = Vec::new();
        for (tp, offset) in self.slow.slow(now) {
            self.judged_running += 1;
            let probe = self.take_probe(tp, offset);
            tracing::debug!(
                stage = ?tp.stage,
                partition = tp.partition,
                offset,
                "handler call slower than --breaker-slow-call: the breaker counts it as failed"
            );
            if let Some(new) = self
                .breaker
                .record(Signal::Transient, attempt_of(tp), probe, now)
            {
                if new == BreakerState::Open {
                    self.opened();
                }
                changes.push(new);
            }
        }
        let mut stalled = None;
        if self.slow.stalled(now, self.min_calls) {
            let hung = self.slow.hung();
            if let Some(new) = self.breaker.stall(hung, now) {
                if new == BreakerState::Open {
                    self.opened();
                }
                stalled = Some(hung);
                changes.push(new);
            }
        }
        SlowVerdict { changes, stalled }
    }

    /// A job ended: frees its key (returning the job waiting behind it, which may start now)
    /// and settles its part in the breaker's bookkeeping.
    pub(super) fn completed(&mut self, done: &Completion) -> Option<Job> {
        let next = self.gate.release(done.tp, done.key.as_deref());
        if done.signal.is_some() || self.slow.ended((done.tp, done.offset)) {
            // The breaker had its result (`judge` runs first), or judged it slow.
            self.judged_running = self.judged_running.saturating_sub(1);
        } else {
            self.not_called(done.tp, done.offset);
        }
        next
    }

    /// A job that finished in its first poll, with nothing left to do for it, accounted for at
    /// once instead of through [`Admission::completed`] (`done`: its completion). Its handler
    /// result, if any, is still in the router's queue and counts as unknown until
    /// [`Admission::judge`] takes it. Frees its key, returning the job waiting behind it.
    pub(super) fn finished_now(&mut self, done: &Completion) -> Option<Job> {
        let next = self.gate.release(done.tp, done.key.as_deref());
        if done.signal.is_some() {
            self.answered_unjudged += 1;
        } else {
            self.not_called(done.tp, done.offset);
        }
        next
    }

    /// A job that will not call the handler (a `follow` record enqueued at its start, whose
    /// end comes later, [`crate::router::Completion::pipelined`]) is over as far as admission
    /// goes: frees its key (returning the job waiting behind it) and, if it was a probe, lets
    /// another message probe. Its later completion must not come to [`Admission::completed`].
    pub(super) fn released(&mut self, tp: Tp, offset: i64, key: Option<&[u8]>) -> Option<Job> {
        let next = self.gate.release(tp, key);
        self.not_called(tp, offset);
        next
    }

    /// Handed back or never called: no evidence; another message may probe.
    fn not_called(&mut self, tp: Tp, offset: i64) {
        if let Some(probe) = self.take_probe(tp, offset) {
            self.breaker.forget(probe);
        }
    }

    /// Gives the breaker the handler results in `shared` (the router's), in their order.
    /// Returns each change of the breaker's state, last one last. `now` is asked only when
    /// there are results.
    pub(super) fn judge(
        &mut self,
        shared: &std::sync::Mutex<Vec<(Tp, i64, Signal)>>,
        now: impl FnOnce() -> Instant,
    ) -> Vec<BreakerState> {
        {
            let mut shared = shared
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if shared.is_empty() {
                // Every job accounted for at once pushed its result before it was.
                debug_assert_eq!(self.answered_unjudged, 0);
                self.answered_unjudged = 0;
                return Vec::new();
            }
            std::mem::swap(&mut *shared, &mut self.signals);
        }
        let now = now();
        let mut changes = Vec::new();
        let mut signals = std::mem::take(&mut self.signals);
        for (tp, offset, signal) in signals.drain(..) {
            if self.slow.answered((tp, offset), now) {
                // Judged when it passed --breaker-slow-call.
                continue;
            }
            self.judged_running += 1;
            let probe = self.take_probe(tp, offset);
            if let Some(new) = self.breaker.record(signal, attempt_of(tp), probe, now) {
                if new == BreakerState::Open {
                    // As at once as the original order: later results of this batch find no
                    // probe of the round that just failed.
                    self.opened();
                }
                changes.push(new);
            }
        }
        self.signals = signals;
        // Their results were among these (pushed before they were accounted for): they are not
        // running.
        self.judged_running = self
            .judged_running
            .saturating_sub(std::mem::take(&mut self.answered_unjudged));
        changes
    }

    /// The breaker opened: the probes of an earlier half-open round no longer count.
    pub(super) fn opened(&mut self) {
        self.probes.clear();
    }

    /// Drops every job of `tp` that has not started (parked, or waiting behind its key): they
    /// are handed back. Probes of `tp` will not report as probes: others take their place.
    pub(super) fn remove_partition(&mut self, tp: Tp) -> usize {
        let mut dropped = self.gate.remove_partition(tp).len();
        let before = self.parked.len();
        self.parked.retain(|j| j.tp != tp);
        dropped += before - self.parked.len();
        let breaker = &mut self.breaker;
        self.probes.retain(|p| {
            if p.tp == tp {
                breaker.forget(p.probe);
            }
            p.tp != tp
        });
        dropped
    }

    /// The probe the job for (`tp`, `offset`) was, if it was one.
    fn take_probe(&mut self, tp: Tp, offset: i64) -> Option<Probe> {
        if self.probes.is_empty() {
            return None;
        }
        let i = self
            .probes
            .iter()
            .position(|p| p.tp == tp && p.offset == offset)?;
        Some(self.probes.swap_remove(i).probe)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::breaker::BreakerConfig;
    use crate::router::{Finish, Intake};

    const TP: Tp = Tp {
        stage: Stage::Main,
        partition: 0,
    };

    fn job(offset: i64, key: &str) -> Job {
        Job {
            tp: TP,
            epoch: 1,
            message: crate::handler::Message {
                topic: "main".into(),
                partition: 0,
                offset,
                key: Some(key.as_bytes().to_vec()),
                payload: None,
                headers: Vec::new(),
                timestamp: None,
                attempt: 0,
            },
            intake: Intake::Fresh,
        }
    }

    fn done(offset: i64, key: &str, signal: Signal) -> Completion {
        Completion {
            tp: TP,
            epoch: 1,
            offset,
            key: Some(key.as_bytes().to_vec()),
            finish: Finish::Done,
            signal: Some(signal),
            note: None,
            follower: None,
            pipelined: None,
        }
    }

    /// A job accounted for as soon as it finished counts as an unknown result until the breaker
    /// judges it, and then not as a running job: `unknown(1)` is the one running job's only.
    #[test]
    fn a_job_finished_at_once_is_unknown_until_judged_and_not_running_after() {
        let mut a = Admission::new(BreakerConfig::default(), 32);
        assert!(a.may_start_now(0));
        let started = a
            .admit_now(job(0, "k"))
            .expect("nothing in flight for its key");
        assert!(
            a.admit_now(job(1, "k")).is_none(),
            "its key is in flight: the next one waits"
        );
        let shared = std::sync::Mutex::new(vec![(TP, started.message.offset, Signal::Ok)]);
        let next = a.finished_now(&done(0, "k", Signal::Ok));
        assert_eq!(next.map(|j| j.message.offset), Some(1), "its key is freed");
        assert_eq!(a.unknown(1), 2, "its result is not judged yet");
        assert!(a.judge(&shared, Instant::now).is_empty());
        assert_eq!(a.unknown(1), 1, "judged, and not counted as running");
        assert_eq!(a.judged_running, 0);
    }

    /// Results of jobs accounted for at once still open the breaker, in the window they fall in.
    #[test]
    fn failures_accounted_for_at_once_still_open_the_breaker() {
        let config = BreakerConfig {
            min_calls: 4,
            ..BreakerConfig::default()
        };
        let mut a = Admission::new(config, 32);
        let shared = std::sync::Mutex::new(Vec::new());
        for offset in 0..4 {
            let key = format!("k{offset}");
            assert!(
                a.may_start_now(0),
                "closed, and the results so far cannot open it"
            );
            a.admit_now(job(offset, &key)).expect("key free");
            shared.lock().unwrap().push((TP, offset, Signal::Transient));
            assert!(a
                .finished_now(&done(offset, &key, Signal::Transient))
                .is_none());
        }
        assert!(
            !a.may_start_now(0),
            "four unknown results, were they failures, would open it: the next waits"
        );
        assert_eq!(a.judge(&shared, Instant::now), vec![BreakerState::Open]);
        assert!(!a.may_start_now(0));
        assert_eq!(a.judged_running, 0);
    }
}

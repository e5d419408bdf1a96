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
            // Let through, and the breaker does not have their result yet.
            let unknown = (running + self.gate.waiting()).saturating_sub(self.judged_running);
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

//! The poll loop: one consumer reads the main topic and every delay tier; this loop owns all
//! per-partition state and is the only place that pauses, resumes, stores and commits.
//!
//! ```text
//! recv ──► main message ─────────────────────────────► KeyGate ─► Router job (task)
//!      └─► tier message ─ due, nothing ahead? ─ yes ─►    ▲            │
//!              └─ no: keep in the bounded buffer ───► DelayQueue ─────┘ (timer)
//!                 (full or beyond the horizon: pause; seek back to what was not kept)
//! Router job ─► Completion ─► PartitionOffsets.finish ─► store offset ─► commit (interval)
//! ```
//!
//! Invariants:
//! * an offset is stored (and so committed) only when every earlier message of that partition
//!   read in this assignment is finished — handled, or its copy acknowledged;
//! * a buffered tier message is never dispatched before `Utc::now() >= process_after`, nor
//!   before the messages read ahead of it in its partition;
//! * tier buffers stay within their bounds ([`crate::delay`]); a message not kept is read
//!   again (the partition is sought back to it before it resumes);
//! * on revoke, every trace of the partition (offsets, buffer, waiting jobs) is dropped and
//!   results of its in-flight jobs are ignored (their epoch is gone), so nothing from an old
//!   assignment is committed or resumed in a new one.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::FutureExt;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message as _};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::breaker::{
    Admit, Attempt, Breaker, BreakerConfig, Probe, Signal, SlowCalls, State as BreakerState,
};
use crate::delay::{BufferBounds, DelayQueue, Offer};
use crate::handler::Message;
use crate::kafka::{self, RebalanceEvent, TopologyContext};
use crate::metrics::Metrics;
use crate::offsets::PartitionOffsets;
use crate::ordering::KeyGate;
use crate::router::{Completion, Finish, Intake, Job, Router, Tp};
use crate::status::{self, PartitionStatus, Snapshot};
use crate::topology::Stage;

/// Loop settings.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_in_flight: usize,
    pub breaker: BreakerConfig,
    pub commit_interval: Duration,
    pub shutdown_timeout: Duration,
    /// Bounds of the tier partitions' read-ahead buffer.
    pub tier_buffer: BufferBounds,
}

/// Everything the loop owns besides the consumer.
struct State {
    router: Arc<Router>,
    metrics: Arc<Metrics>,
    limits: Limits,
    /// Assignment generation per assigned partition; absent = not ours.
    epochs: HashMap<Tp, u64>,
    next_epoch: u64,
    offsets: HashMap<Tp, PartitionOffsets>,
    delays: DelayQueue<Tp, Job>,
    /// Per tier: the buffered-messages and buffered-bytes gauges.
    buffered_gauges: Vec<(prometheus::IntGauge, prometheus::IntGauge)>,
    gate: KeyGate<Tp, Job>,
    /// Read and due, waiting for the circuit breaker to let them start (FIFO).
    parked: VecDeque<Job>,
    breaker: Breaker,
    /// Probes a half-open breaker let through and that have not reported yet.
    probes: Vec<ProbeJob>,
    /// Handler results taken from the router, reused so that taking them allocates nothing.
    signals: Vec<(Tp, i64, Signal)>,
    /// Jobs whose handler result the breaker has, still running (producing their copy).
    judged_running: usize,
    /// Calls in the handler, for the breaker's slow-call rule.
    slow: SlowCalls<(Tp, i64)>,
    /// Every assigned partition is paused because the breaker is open.
    fetch_paused: bool,
    jobs: JoinSet<Completion>,
    /// Jobs that finished on their first, inline poll, not yet accounted for.
    finished: Vec<Completion>,
    /// Jobs to spawn without an inline poll first, because a recent inline poll took long.
    spawn_only: u32,
    /// Jobs started so far (inline polls are timed for one in [`TIME_EVERY`]).
    started: u64,
    /// One single-entry list per partition, so that storing its offset allocates nothing.
    store_lists: HashMap<Tp, TopicPartitionList>,
    /// Partitions whose committable offset may have moved since offsets were last stored.
    unstored: Vec<Tp>,
    /// A pause, resume or revoke happened since the paused gauges were last set.
    paused_changed: bool,
    /// When the `/status` snapshot was last published.
    status_published: Option<std::time::Instant>,
    draining: bool,
}

/// Probes of a revoked partition will not report (or not as probes): others take their place.
fn forget_probes(probes: &mut Vec<ProbeJob>, breaker: &mut Breaker, tp: Tp) {
    probes.retain(|p| {
        if p.tp == tp {
            breaker.forget(p.probe);
        }
        p.tp != tp
    });
}

/// A probe a half-open breaker let through: which job, to recognise its completion.
struct ProbeJob {
    tp: Tp,
    offset: i64,
    probe: Probe,
}

/// A job's first poll runs inline in the loop. One that takes longer than this (a handler doing
/// real work on the loop's thread) sends the next [`SPAWN_ONLY_AFTER_SLOW_POLL`] jobs straight to
/// their own tasks, so that such handlers still run in parallel.
const SLOW_INLINE_POLL: Duration = Duration::from_micros(200);
const SPAWN_ONLY_AFTER_SLOW_POLL: u32 = 1000;
/// Inline polls are timed for one job in this many (reading the clock costs per message).
const TIME_EVERY: u64 = 16;

/// Messages taken from the consumer in one loop turn when they are already there.
const RECV_BATCH: usize = 256;

/// The consumer and its loop.
pub struct Pipeline {
    consumer: StreamConsumer<TopologyContext>,
    events: UnboundedReceiver<RebalanceEvent>,
    state: State,
}

impl Pipeline {
    pub fn new(
        consumer: StreamConsumer<TopologyContext>,
        events: UnboundedReceiver<RebalanceEvent>,
        router: Arc<Router>,
        limits: Limits,
    ) -> Pipeline {
        let metrics = router.metrics.clone();
        let buffered_gauges = router
            .topology
            .tiers
            .iter()
            .map(|t| metrics.tier_buffer_series(&t.label))
            .collect();
        Pipeline {
            consumer,
            events,
            state: State {
                router,
                metrics,
                limits,
                epochs: HashMap::new(),
                next_epoch: 0,
                offsets: HashMap::new(),
                delays: DelayQueue::new(limits.tier_buffer),
                buffered_gauges,
                gate: KeyGate::default(),
                parked: VecDeque::new(),
                breaker: Breaker::new(limits.breaker, limits.max_in_flight),
                probes: Vec::new(),
                signals: Vec::new(),
                judged_running: 0,
                slow: SlowCalls::new(
                    limits
                        .breaker
                        .slow_call
                        .filter(|_| limits.breaker.enabled()),
                ),
                fetch_paused: false,
                jobs: JoinSet::new(),
                finished: Vec::new(),
                spawn_only: 0,
                started: 0,
                store_lists: HashMap::new(),
                unstored: Vec::new(),
                paused_changed: true,
                status_published: None,
                draining: false,
            },
        }
    }

    /// Runs until `stop` is cancelled, then finishes or hands back in-flight work, commits, and
    /// closes the consumer within the shutdown timeout.
    pub async fn run(mut self, stop: CancellationToken) {
        let mut commit = tokio::time::interval(self.state.limits.commit_interval);
        commit.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let stopped = stop.cancelled();
        tokio::pin!(stopped);
        // One timer for the earliest buffered head (or buffer wake-up), moved only when that
        // time changes.
        let mut timer = DueTimer::default();
        loop {
            while let Ok(event) = self.events.try_recv() {
                self.state.on_rebalance(&self.consumer, event);
            }
            // Before anything polls the consumer (a revoke callback commits what is stored).
            self.state.store_finished(&self.consumer);
            // Due retries stay in the tier buffers while the breaker would refuse them.
            let retries_wanted = self.state.breaker.admits_retries();
            let wake = timer.wake_for(self.state.delays.next_due().filter(|_| retries_wanted));
            let stall_wake = (self.state.breaker.state() == BreakerState::Closed)
                .then(|| {
                    self.state
                        .slow
                        .stalls_at(self.state.limits.breaker.min_calls)
                })
                .flatten();
            let breaker_wake = [
                self.state.breaker.wakes_at(),
                self.state.slow.wakes_at(),
                stall_wake,
            ]
            .into_iter()
            .flatten()
            .min()
            .map(Instant::from_std);
            let room = self.state.buffered() < self.state.limits.max_in_flight;
            let state = &mut self.state;
            let consumer = &self.consumer;
            tokio::select! {
                biased;
                _ = &mut stopped => break,
                Some(joined) = state.jobs.join_next(), if !state.jobs.is_empty() => {
                    if let Ok(done) = joined {
                        state.finished.push(done);
                    }
                    // Whatever else has finished meanwhile, in the same turn.
                    while let Some(joined) = state.jobs.try_join_next() {
                        if let Ok(done) = joined {
                            state.finished.push(done);
                        }
                    }
                    state.settle(consumer);
                }
                _ = timer.sleep(), if wake => {
                    timer.fired();
                    state.release_due(consumer);
                    state.settle(consumer);
                }
                _ = sleep_until(breaker_wake) => {
                    state.breaker_tick(consumer);
                    state.settle(consumer);
                }
                _ = commit.tick() => {
                    state.store_finished(consumer);
                    commit_offsets(consumer, CommitMode::Async);
                }
                received = consumer.recv(), if room => match received {
                    Ok(m) => {
                        // The message may have come with a rebalance; see it first.
                        while let Ok(event) = self.events.try_recv() {
                            state.on_rebalance(consumer, event);
                        }
                        state.on_message(consumer, &m);
                        drop(m);
                        state.settle(consumer);
                        // More are often there already: take them in this turn while there is
                        // room, storing finished offsets before each poll as the loop does.
                        for _ in 1..RECV_BATCH {
                            if state.buffered() >= state.limits.max_in_flight {
                                break;
                            }
                            state.store_finished(consumer);
                            let Some(Ok(m)) = consumer.recv().now_or_never() else {
                                break;
                            };
                            while let Ok(event) = self.events.try_recv() {
                                state.on_rebalance(consumer, event);
                            }
                            state.on_message(consumer, &m);
                            drop(m);
                            state.settle(consumer);
                        }
                        // A head that came due meanwhile goes now, not a loop turn later.
                        if state.breaker.admits_retries()
                            && state.delays.next_due().is_some_and(|d| d <= Utc::now())
                        {
                            state.release_due(consumer);
                            state.settle(consumer);
                        }
                    }
                    // Informational: librdkafka retries on its own, at its reconnect backoff.
                    // No back-off here: an outage queues hundreds of these behind the messages,
                    // and sleeping on each (as this loop once did) kept the pipeline replaying
                    // that backlog, one error per sleep, long after the brokers were back.
                    Err(e) => {
                        if matches!(e.rdkafka_error_code(), Some(RDKafkaErrorCode::AllBrokersDown)) {
                            kafka::note_client_error(&state.metrics, &e, "consumer");
                        } else {
                            tracing::warn!(error = %e, "consumer error");
                        }
                    }
                },
            }
            state.update_gauges();
            state.publish_status(false);
        }
        self.shutdown().await;
    }

    async fn shutdown(mut self) {
        let state = &mut self.state;
        state
            .metrics
            .health
            .shutting_down
            .store(true, Ordering::Relaxed);
        state.draining = true;
        let buffered_tier = state.delays.len();
        tracing::info!(
            in_flight = state.jobs.len(),
            waiting = state.gate.waiting(),
            buffered_tier,
            "stopping: no more fetching; finishing in-flight work"
        );
        state.settle(&self.consumer);
        let deadline = Instant::now() + state.limits.shutdown_timeout;
        while !state.jobs.is_empty() {
            match tokio::time::timeout_at(deadline, state.jobs.join_next()).await {
                Ok(Some(Ok(done))) => {
                    state.finished.push(done);
                    state.settle(&self.consumer);
                }
                Ok(Some(Err(_))) => {}
                Ok(None) => break,
                Err(_) => {
                    tracing::warn!(
                        in_flight = state.jobs.len(),
                        "shutdown timeout reached; handing back unfinished messages"
                    );
                    state.router.abandon.cancel();
                    while let Some(joined) = state.jobs.join_next().await {
                        if let Ok(done) = joined {
                            state.finished.push(done);
                            state.settle(&self.consumer);
                        }
                    }
                }
            }
        }
        state.update_gauges();
        state.store_finished(&self.consumer);
        commit_offsets(&self.consumer, CommitMode::Sync);
        state.publish_status(true);
        tracing::info!("offsets committed; leaving the group");
        // A list that went through `store_offsets` holds a reference to librdkafka's partition
        // object, and the client does not finish closing while one is alive.
        state.store_lists.clear();
        close_consumer(self.consumer, Duration::from_secs(10));
    }
}

impl State {
    /// Messages read and not finished, except those in tier buffers: what `--max-in-flight`
    /// bounds.
    fn buffered(&self) -> usize {
        self.jobs.len() + self.gate.waiting() + self.parked.len()
    }

    fn on_rebalance(&mut self, consumer: &StreamConsumer<TopologyContext>, event: RebalanceEvent) {
        let topology = &self.router.topology;
        match event {
            RebalanceEvent::Assigned(parts) => {
                for (topic, partition) in parts {
                    let Some(stage) = topology.stage_of(&topic) else {
                        continue;
                    };
                    let tp = Tp { stage, partition };
                    self.next_epoch += 1;
                    self.epochs.insert(tp, self.next_epoch);
                    self.offsets.insert(tp, PartitionOffsets::default());
                }
                self.metrics.health.assigned.store(true, Ordering::Relaxed);
                tracing::info!(assigned = self.epochs.len(), "partitions assigned");
                if self.fetch_paused {
                    // The context resumed them; the open breaker wants them paused.
                    self.set_fetching(consumer, false);
                }
            }
            RebalanceEvent::Revoked(parts) => {
                self.paused_changed = true;
                let mut handed_back = 0;
                for (topic, partition) in parts {
                    let Some(stage) = topology.stage_of(&topic) else {
                        continue;
                    };
                    let tp = Tp { stage, partition };
                    self.epochs.remove(&tp);
                    self.offsets.remove(&tp);
                    self.store_lists.remove(&tp);
                    let (dropped, bytes) = self.delays.remove(&tp);
                    self.count_buffered(tp, -(dropped.len() as i64), -(bytes as i64));
                    handed_back += dropped.len();
                    handed_back += self.gate.remove_partition(tp).len();
                    let before = self.parked.len();
                    self.parked.retain(|j| j.tp != tp);
                    handed_back += before - self.parked.len();
                    forget_probes(&mut self.probes, &mut self.breaker, tp);
                    // The lag of a partition that moved is its new owner's to report.
                    let _ = self
                        .metrics
                        .lag
                        .remove_label_values(&[topology.topic(stage), &partition.to_string()]);
                }
                tracing::info!(
                    remaining = self.epochs.len(),
                    handed_back,
                    "partitions revoked"
                );
            }
        }
    }

    fn on_message(&mut self, consumer: &StreamConsumer<TopologyContext>, m: &BorrowedMessage<'_>) {
        let topology = &self.router.topology;
        let Some(stage) = topology.stage_of(m.topic()) else {
            tracing::warn!(
                topic = m.topic(),
                "message from a topic outside the topology; ignored"
            );
            return;
        };
        let tp = Tp {
            stage,
            partition: m.partition(),
        };
        let epoch = match self.epochs.get(&tp) {
            Some(e) => *e,
            None => {
                // Assignment events arrive before the partition's messages; this is defensive.
                self.next_epoch += 1;
                self.epochs.insert(tp, self.next_epoch);
                self.next_epoch
            }
        };
        let mut message = Message {
            topic: m.topic().to_string(),
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().map(<[u8]>::to_vec),
            payload: m.payload().map(<[u8]>::to_vec),
            headers: kafka::read_headers(m.headers()),
            timestamp: m.timestamp().to_millis(),
            attempt: 0,
        };
        let intake = match stage {
            Stage::Main => Intake::Fresh,
            // A due time beyond --max-delay is refused here, before it could pause the partition.
            Stage::Tier(_) => match topology.read_tier_message(&message.headers, Utc::now()) {
                Ok(state) => {
                    message.attempt = state.attempt;
                    Intake::Retry(state)
                }
                Err(problem) => Intake::Invalid(problem),
            },
        };
        let offset = m.offset();
        let job = Job {
            tp,
            epoch,
            message,
            intake,
        };
        if stage == Stage::Main {
            self.begin(tp, offset);
            self.dispatch(job);
            return;
        }
        self.on_tier_message(consumer, job);
    }

    /// Counts a message as read and its work as begun (so its offset holds commits back).
    fn begin(&mut self, tp: Tp, offset: i64) {
        self.router.series(tp).consumed.inc();
        self.offsets.entry(tp).or_default().begin(offset);
    }

    /// A tier message: handled now if it is due with nothing ahead of it, else kept in the
    /// partition's buffer, or not kept and read again later (see [`crate::delay`]).
    fn on_tier_message(&mut self, consumer: &StreamConsumer<TopologyContext>, job: Job) {
        let tp = job.tp;
        let offset = job.message.offset;
        let due = match &job.intake {
            Intake::Retry(state) => Some(state.process_after),
            _ => None,
        };
        let bytes = footprint(&job.message);
        let now = Utc::now();
        let router = self.router.clone();
        let (tier, topic) = (
            router.topology.label(tp.stage),
            router.topology.topic(tp.stage),
        );
        let (pause, why) = match self.delays.offer(tp, offset, due, bytes, job, now) {
            Offer::Ready(job) => {
                self.begin(tp, offset);
                self.dispatch(job);
                return;
            }
            Offer::Kept { pause } => {
                self.begin(tp, offset);
                self.count_buffered(tp, 1, bytes as i64);
                (pause, "tier buffer full or head beyond the horizon")
            }
            // Not begun: nothing is committed past it, and it is read again after a seek back.
            Offer::Dropped { pause } => (pause, "not kept (beyond the horizon or no room)"),
        };
        if pause {
            self::pause(consumer, topic, tp.partition, true);
            self.paused_changed = true;
            tracing::debug!(
                tier,
                partition = tp.partition,
                offset,
                due_in_ms = due.map(|d| (d - now).num_milliseconds()),
                buffered = self.delays.len(),
                why,
                "tier partition paused"
            );
        }
    }

    /// Moves the buffered-messages and -bytes gauges of `tp`'s tier.
    fn count_buffered(&self, tp: Tp, messages: i64, bytes: i64) {
        if let Stage::Tier(i) = tp.stage {
            if let Some((m, b)) = self.buffered_gauges.get(i) {
                m.add(messages);
                b.add(bytes);
            }
        }
    }

    /// Queues `job` to start as soon as the circuit breaker allows (at once when closed).
    fn dispatch(&mut self, job: Job) {
        if self.draining {
            return;
        }
        self.parked.push_back(job);
        self.pump();
    }

    /// Starts parked jobs while the breaker lets them through; a job waits behind an in-flight
    /// message with the same key. A half-open breaker gets main-topic jobs first (fresh work is
    /// the best probe); it takes a due retry only when none is waiting.
    fn pump(&mut self) {
        while !self.draining && !self.parked.is_empty() {
            // Let through, and the breaker does not have their result yet.
            let unknown = (self.jobs.len() + self.finished.len() + self.gate.waiting())
                .saturating_sub(self.judged_running);
            let (at, admit) = match self.breaker.state() {
                BreakerState::Closed => (0, self.breaker.try_start(Attempt::First, unknown)),
                BreakerState::Open => break,
                BreakerState::HalfOpen => {
                    let fresh = self.parked.iter().position(|j| j.tp.stage == Stage::Main);
                    let (at, attempt) = fresh.map_or((0, Attempt::Retry), |i| (i, Attempt::First));
                    (at, self.breaker.try_start(attempt, unknown))
                }
            };
            if admit == Admit::No {
                break;
            }
            let Some(job) = self.parked.remove(at) else {
                break;
            };
            if self.epochs.get(&job.tp) != Some(&job.epoch) {
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
                self.start(job);
            }
        }
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

    /// Judges the calls that have been in the handler for `--breaker-slow-call` as failures,
    /// without waiting for their end.
    fn judge_slow(&mut self, consumer: &StreamConsumer<TopologyContext>) {
        let now = std::time::Instant::now();
        for (tp, offset) in self.slow.slow(now) {
            self.judged_running += 1;
            let probe = self.take_probe(tp, offset);
            let attempt = match tp.stage {
                Stage::Main => Attempt::First,
                Stage::Tier(_) => Attempt::Retry,
            };
            tracing::debug!(
                tier = self.router.topology.label(tp.stage),
                partition = tp.partition,
                offset,
                "handler call slower than --breaker-slow-call: the breaker counts it as failed"
            );
            if let Some(new) = self.breaker.record(Signal::Transient, attempt, probe, now) {
                self.on_breaker_change(consumer, new);
            }
        }
        if self.slow.stalled(now, self.limits.breaker.min_calls) {
            let hung = self.slow.hung();
            if let Some(new) = self.breaker.stall(hung, now) {
                tracing::warn!(
                    hung,
                    slow_call_ms = self.limits.breaker.slow_call.map_or(0, |d| d.as_millis() as u64),
                    "the handler answered nothing while these calls waited on it past --breaker-slow-call: a hung downstream"
                );
                self.on_breaker_change(consumer, new);
            }
        }
        if !self.parked.is_empty() {
            self.pump();
        }
    }

    /// Gives the breaker the handler results the router has published, in their order.
    fn judge_signals(&mut self, consumer: &StreamConsumer<TopologyContext>) {
        {
            let mut shared = self
                .router
                .signals
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if shared.is_empty() {
                return;
            }
            std::mem::swap(&mut *shared, &mut self.signals);
        }
        let now = std::time::Instant::now();
        let mut signals = std::mem::take(&mut self.signals);
        for (tp, offset, signal) in signals.drain(..) {
            if self.slow.answered((tp, offset), now) {
                // Judged when it passed --breaker-slow-call.
                continue;
            }
            self.judged_running += 1;
            let probe = self.take_probe(tp, offset);
            let attempt = match tp.stage {
                Stage::Main => Attempt::First,
                Stage::Tier(_) => Attempt::Retry,
            };
            if let Some(new) = self.breaker.record(signal, attempt, probe, now) {
                self.on_breaker_change(consumer, new);
            }
        }
        self.signals = signals;
        // A closed breaker may have held jobs back until these results were known.
        if !self.parked.is_empty() {
            self.pump();
        }
    }

    /// Pauses (or resumes) every assigned partition that its tier buffer does not hold paused.
    fn set_fetching(&mut self, consumer: &StreamConsumer<TopologyContext>, on: bool) {
        self.fetch_paused = !on;
        let topology = &self.router.topology;
        let mut tpl = TopicPartitionList::new();
        for tp in self.epochs.keys() {
            if !self.delays.is_held(tp) {
                tpl.add_partition(topology.topic(tp.stage), tp.partition);
            }
        }
        let result = if on {
            consumer.resume(&tpl)
        } else {
            consumer.pause(&tpl)
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, on, "pausing/resuming fetching for the circuit breaker failed");
        }
    }

    fn on_breaker_change(&mut self, consumer: &StreamConsumer<TopologyContext>, new: BreakerState) {
        self.metrics.circuit_state.set(new.as_gauge());
        match new {
            BreakerState::Open => {
                let e = self.breaker.evidence();
                tracing::warn!(
                    waiting = self.parked.len(),
                    calls = e.map_or(0, |e| e.calls),
                    failures = e.map_or(0, |e| e.failures),
                    retries_judged = e.is_some_and(|e| e.with_retries),
                    cooldown_ms = self.limits.breaker.cooldown.as_millis() as u64,
                    "circuit breaker open: the handler's transient failures reached the threshold; fetching paused"
                );
                self.probes.clear();
                self.set_fetching(consumer, false);
            }
            BreakerState::HalfOpen => {
                tracing::info!(
                    probes = self.limits.breaker.probes,
                    "circuit breaker half-open: probing the handler, main-topic messages first"
                );
                self.set_fetching(consumer, true);
                self.pump();
            }
            BreakerState::Closed => {
                tracing::info!("circuit breaker closed: handler healthy again");
                if self.fetch_paused {
                    self.set_fetching(consumer, true);
                }
                self.pump();
                self.release_due(consumer);
            }
        }
    }

    fn breaker_tick(&mut self, consumer: &StreamConsumer<TopologyContext>) {
        self.judge_slow(consumer);
        match self.breaker.tick(std::time::Instant::now()) {
            Some(new) => self.on_breaker_change(consumer, new),
            // Half-open and the grace for fresh probes is over: due retries may probe now.
            None => {
                self.pump();
                self.release_due(consumer);
            }
        }
    }

    /// Dispatches the tier messages that are due, and resumes the partitions whose buffers
    /// drained (seeking each back to the first message it did not keep, if any). Nothing while
    /// the breaker would refuse a retry: they wait in the buffers, within its bounds.
    fn release_due(&mut self, consumer: &StreamConsumer<TopologyContext>) {
        if !self.breaker.admits_retries() {
            return;
        }
        let now = Utc::now();
        let tick = self.delays.pop_due(now);
        for released in tick.released {
            let tp = released.partition;
            self.count_buffered(tp, -(released.items.len() as i64), -(released.bytes as i64));
            let current = self.epochs.get(&tp).copied();
            for job in released.items {
                if Some(job.epoch) == current {
                    self.dispatch(job);
                }
            }
        }
        for resume in tick.resume {
            let tp = resume.partition;
            self.paused_changed = true;
            if !self.epochs.contains_key(&tp) {
                continue;
            }
            let topic = self.router.topology.topic(tp.stage);
            if let Some(offset) = resume.seek_to {
                // Asynchronous (timeout 0): librdkafka orders it before the resume below. It
                // fails at once only for a partition the client does not know.
                if let Err(e) =
                    consumer.seek(topic, tp.partition, Offset::Offset(offset), Duration::ZERO)
                {
                    tracing::warn!(topic, partition = tp.partition, offset, error = %e,
                        "cannot seek back to a message not kept; the partition stays paused and is tried again");
                    self.delays.seek_failed(tp, offset, now);
                    continue;
                }
                tracing::debug!(
                    topic,
                    partition = tp.partition,
                    offset,
                    "reading again from the first message not kept"
                );
            }
            if !self.fetch_paused {
                pause(consumer, topic, tp.partition, false);
            }
        }
    }

    /// Starts a job. Its first poll runs right here: a handler that answers without waiting (the
    /// common case for in-process handlers) then costs no task, no wake-up of another thread and
    /// no trip through the loop. A job that has to wait is moved into its own task, which polls it
    /// again at once, so nothing registered with the throw-away waker is lost.
    fn start(&mut self, job: Job) {
        self.slow
            .started((job.tp, job.message.offset), std::time::Instant::now());
        let mut job = Box::pin(self.router.clone().process(job));
        self.started += 1;
        if self.spawn_only > 0 {
            self.spawn_only -= 1;
        } else {
            let began = (self.started % TIME_EVERY == 0).then(std::time::Instant::now);
            let polled = job
                .as_mut()
                .poll(&mut Context::from_waker(futures::task::noop_waker_ref()));
            if began.is_some_and(|b| b.elapsed() > SLOW_INLINE_POLL) {
                self.spawn_only = SPAWN_ONLY_AFTER_SLOW_POLL;
            }
            if let Poll::Ready(done) = polled {
                self.finished.push(done);
                return;
            }
        }
        self.jobs.spawn(job);
    }

    /// Accounts for every finished job, including those that finishing ones let start. The
    /// breaker gets every handler result before the job that gave it is accounted for.
    fn settle(&mut self, consumer: &StreamConsumer<TopologyContext>) {
        loop {
            self.judge_signals(consumer);
            let Some(done) = self.finished.pop() else {
                break;
            };
            self.on_completion(done);
        }
    }

    fn on_completion(&mut self, done: Completion) {
        if let Some(next) = self.gate.release(done.tp, done.key.as_deref()) {
            if self.draining {
                // Not started: handed back, its offset stays uncommitted.
            } else {
                self.start(next);
            }
        }
        if done.signal.is_some() || self.slow.ended((done.tp, done.offset)) {
            // The breaker had its result (`judge_signals` runs first), or judged it slow.
            self.judged_running = self.judged_running.saturating_sub(1);
        } else if let Some(probe) = self.take_probe(done.tp, done.offset) {
            // Handed back or never called: no evidence; another message may probe.
            self.breaker.forget(probe);
        }
        if !self.parked.is_empty() {
            // One less result unknown: a held-back job may start.
            self.pump();
        }
        if done.finish != Finish::Done || self.epochs.get(&done.tp) != Some(&done.epoch) {
            return;
        }
        let Some(offsets) = self.offsets.get_mut(&done.tp) else {
            return;
        };
        offsets.finish(done.offset);
        if !self.unstored.contains(&done.tp) {
            self.unstored.push(done.tp);
        }
    }

    /// Stores the committable offset of every partition whose finished work moved it. Runs
    /// before anything polls the consumer (a revoke callback inside the poll commits what is
    /// stored), before each commit and at shutdown, so stored offsets are as fresh as with a
    /// store per completion. The list per partition is kept, so a store allocates nothing.
    fn store_finished(&mut self, consumer: &StreamConsumer<TopologyContext>) {
        for tp in self.unstored.drain(..) {
            let Some(next) = self
                .offsets
                .get_mut(&tp)
                .and_then(PartitionOffsets::advance)
            else {
                continue;
            };
            let topic = self.router.topology.topic(tp.stage);
            let list = self.store_lists.entry(tp).or_insert_with(|| {
                let mut list = TopicPartitionList::with_capacity(1);
                list.add_partition(topic, tp.partition);
                list
            });
            let stored =
                kafka::set_only_offset(list, next).and_then(|()| consumer.store_offsets(list));
            if let Err(e) = stored {
                tracing::debug!(topic, partition = tp.partition, error = %e, "offset not stored");
            }
        }
    }

    fn update_gauges(&mut self) {
        let m = &self.metrics;
        m.in_flight
            .set((self.buffered() + self.delays.len()) as i64);
        if !std::mem::take(&mut self.paused_changed) {
            return;
        }
        let topology = &self.router.topology;
        let mut per_tier = vec![0i64; topology.tiers.len()];
        for tp in self.delays.paused_partitions() {
            if let Stage::Tier(i) = tp.stage {
                per_tier[i] += 1;
            }
        }
        for (i, n) in per_tier.into_iter().enumerate() {
            m.paused
                .with_label_values(&[&topology.tiers[i].label])
                .set(n);
        }
    }
}

impl State {
    /// Publishes the `/status` snapshot, at most every [`status::PUBLISH_EVERY`] unless `now`.
    fn publish_status(&mut self, now: bool) {
        if !now
            && self
                .status_published
                .is_some_and(|t| t.elapsed() < status::PUBLISH_EVERY)
        {
            return;
        }
        self.status_published = Some(std::time::Instant::now());
        let topology = &self.router.topology;
        let mut partitions: Vec<PartitionStatus> = self
            .epochs
            .keys()
            .map(|tp| {
                let head = self.delays.head(tp);
                let offsets = self.offsets.get(tp);
                let paused_for = if self.delays.is_held(tp) {
                    Some("due")
                } else if self.fetch_paused {
                    Some("breaker")
                } else {
                    None
                };
                PartitionStatus {
                    topic: topology.topic(tp.stage).to_string(),
                    stage: topology.label(tp.stage).to_string(),
                    partition: tp.partition,
                    paused: paused_for.is_some(),
                    paused_for,
                    head_due: head.map(|(due, _)| crate::headers::format_time(due)),
                    buffered: head.map_or(0, |(_, n)| n),
                    in_flight: offsets.map_or(0, PartitionOffsets::outstanding),
                    committed_offset: offsets.and_then(PartitionOffsets::stored),
                }
            })
            .collect();
        partitions.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
        self.metrics.status.send_replace(Snapshot {
            updated_at: Some(crate::headers::format_time(Utc::now())),
            breaker: self.breaker.state().as_str(),
            in_flight: partitions.iter().map(|p| p.in_flight).sum(),
            partitions,
            ..Snapshot::default()
        });
    }
}

/// The loop's one timer for tier buffers. It is moved only when the earliest due time changes, so
/// that a loop turn does not register and cancel a timer.
struct DueTimer {
    sleep: Pin<Box<tokio::time::Sleep>>,
    /// The due time the timer is set for, while it is armed.
    armed_for: Option<DateTime<Utc>>,
}

impl Default for DueTimer {
    fn default() -> Self {
        DueTimer {
            sleep: Box::pin(tokio::time::sleep(Duration::from_secs(3600))),
            armed_for: None,
        }
    }
}

impl DueTimer {
    /// Sets the timer for `due` unless it already is; returns whether there is a timer to await.
    fn wake_for(&mut self, due: Option<DateTime<Utc>>) -> bool {
        let Some(due) = due else {
            self.armed_for = None;
            return false;
        };
        if self.armed_for != Some(due) {
            self.sleep.as_mut().reset(instant_for(due));
            self.armed_for = Some(due);
        }
        true
    }

    fn sleep(&mut self) -> &mut Pin<Box<tokio::time::Sleep>> {
        &mut self.sleep
    }

    /// The timer went off: the next turn sets it again, even for the same due time (if the wall
    /// clock still says "not due", the loop simply sleeps again).
    fn fired(&mut self) {
        self.armed_for = None;
    }
}

/// Sleeps until `at`, or forever when there is nothing to wait for.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The tokio instant at which wall-clock time `due` is reached (rounded up to the millisecond).
fn instant_for(due: chrono::DateTime<Utc>) -> Instant {
    let wait = (due - Utc::now()).to_std().unwrap_or_default();
    Instant::now() + wait + Duration::from_millis(1)
}

fn pause(consumer: &StreamConsumer<TopologyContext>, topic: &str, partition: i32, paused: bool) {
    let mut tpl = TopicPartitionList::with_capacity(1);
    tpl.add_partition(topic, partition);
    let result = if paused {
        consumer.pause(&tpl)
    } else {
        consumer.resume(&tpl)
    };
    if let Err(e) = result {
        tracing::warn!(topic, partition, paused, error = %e, "pause/resume failed");
    }
}

fn commit_offsets(consumer: &StreamConsumer<TopologyContext>, mode: CommitMode) {
    match consumer.commit_consumer_state(mode) {
        Ok(()) => {}
        Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
        Err(e) => {
            tracing::warn!(error = %e, "offset commit failed; will retry on the next interval")
        }
    }
}

/// Closes the consumer (leaving the group) on a helper thread, waiting at most `limit`.
///
/// librdkafka's close can wait on the broker for a long time (a hang was seen with Tansu when
/// some assigned partitions had never been fetched); offsets are already committed, so the
/// process does not wait past the limit.
fn close_consumer(consumer: StreamConsumer<TopologyContext>, limit: Duration) {
    let (tx, rx) = std::sync::mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name("rebound-close".into())
        .spawn(move || {
            consumer.unsubscribe();
            drop(consumer);
            let _ = tx.send(());
        });
    if spawned.is_err() {
        tracing::warn!(
            "could not start the close thread; leaving the group is left to the session timeout"
        );
        return;
    }
    if rx.recv_timeout(limit).is_err() {
        tracing::warn!(
            limit_s = limit.as_secs(),
            "consumer close did not finish in time; exiting anyway (offsets are committed)"
        );
    }
}

/// What a buffered message is counted as, in bytes: its key, payload, headers and topic name,
/// plus a fixed allowance for the job around it (the allocations are not measured exactly).
fn footprint(m: &Message) -> usize {
    const PER_MESSAGE: usize = 256;
    const PER_HEADER: usize = 48;
    PER_MESSAGE
        + m.topic.len()
        + m.key.as_ref().map_or(0, Vec::len)
        + m.payload.as_ref().map_or(0, Vec::len)
        + m.headers
            .iter()
            .map(|h| PER_HEADER + h.name.len() + h.value.as_ref().map_or(0, Vec::len))
            .sum::<usize>()
}

//! The poll loop: one consumer reads the main topic and every delay tier; this loop owns all
//! per-partition state and is the only place that pauses, resumes, stores and commits.
//!
//! ```text
//! recv ──► main message ─────────────────────────────► Admission ─► Router job (task)
//!      └─► tier message ─ due, nothing ahead? ─ yes ─►    ▲  (breaker, key gate)
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
//! * a revoke is deferred until the loop has let the partition's running jobs finish (at most
//!   `--revoke-timeout`) and committed them; then every trace of the partition (one entry of
//!   [`State::parts`], its buffer, its waiting jobs) is dropped and results of jobs still
//!   running are ignored (their epoch is gone), so nothing from an old assignment is committed
//!   or resumed in a new one. Other partitions are not touched.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::FutureExt;
use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext, RebalanceProtocol, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message as _};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use rustc_hash::FxHashMap;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::breaker::{BreakerConfig, State as BreakerState};
use crate::delay::{BufferBounds, DelayQueue, Offer};
use crate::handler::Message;
use crate::kafka::{self, RebalanceEvent, TopologyContext};
use crate::metrics::Metrics;
use crate::offsets::PartitionOffsets;
use crate::router::{Completion, Finish, HeldCopy, Intake, Job, Router, Tp};
use crate::status::{self, PartitionStatus, Snapshot};
use crate::topology::Stage;

mod admission;
mod txn;
mod waiting;
use admission::Admission;

/// Loop settings.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_in_flight: usize,
    pub breaker: BreakerConfig,
    pub commit_interval: Duration,
    pub shutdown_timeout: Duration,
    /// Bounds of the tier partitions' read-ahead buffer.
    pub tier_buffer: BufferBounds,
    /// How long a revoke waits for the revoked partitions' running jobs before it hands them
    /// back (`--revoke-timeout`).
    pub revoke_timeout: Duration,
}

/// Everything the loop keeps about one assigned partition (its tier buffer lives in
/// [`State::delays`], whose due-time order spans partitions). A revoke removes it in one step
/// ([`State::remove_partition`]).
struct Partition {
    /// Assignment generation: jobs carry it, and a completion of another one is ignored.
    epoch: u64,
    offsets: PartitionOffsets,
    /// A single-entry list, so that storing the partition's offset allocates nothing.
    store_list: Option<TopicPartitionList>,
    /// Offsets of this assignment's jobs that started and have not completed.
    running: Vec<i64>,
    /// Being revoked: nothing new starts; running jobs may still finish and be committed.
    revoking: bool,
    /// `--exactly-once`: copies of finished messages, by source offset, waiting for the
    /// transaction that commits their offset.
    held: BTreeMap<i64, HeldCopy>,
    /// `--exactly-once`: the offset the last transaction committed for this assignment.
    txn_committed: Option<i64>,
    /// The lowest offset seen in this assignment: where a rewind goes when no transaction has
    /// committed for it yet (everything before it was committed before the assignment).
    first_seen: Option<i64>,
}

impl Partition {
    /// The job at `offset` is no longer running (if it was).
    fn stop_running(&mut self, offset: i64) {
        if let Some(i) = self.running.iter().rposition(|o| *o == offset) {
            self.running.swap_remove(i);
        }
    }

    fn new(epoch: u64) -> Partition {
        Partition {
            epoch,
            offsets: PartitionOffsets::default(),
            store_list: None,
            running: Vec::new(),
            revoking: false,
            held: BTreeMap::new(),
            txn_committed: None,
            first_seen: None,
        }
    }
}

/// A revoke librdkafka handed to the loop, not finished yet (see [`State::begin_revoke`]).
struct Revoking {
    /// The partitions as librdkafka named them (the unassign takes the same list).
    list: Vec<(String, i32)>,
    /// Those of the topology.
    tps: Vec<Tp>,
    since: Instant,
    deadline: Instant,
}

/// How the loop ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// The stop token was cancelled.
    Stopped,
    /// The consumer hit a fatal error (librdkafka cannot go on with this client instance).
    Fatal {
        code: RDKafkaErrorCode,
        reason: String,
    },
}

/// Everything the loop owns besides the consumer.
struct State {
    router: Arc<Router>,
    metrics: Arc<Metrics>,
    limits: Limits,
    /// Per assigned partition; absent = not ours. Fx hashing: looked up several times per
    /// message, keyed by the loop's own `Tp`.
    parts: FxHashMap<Tp, Partition>,
    next_epoch: u64,
    delays: DelayQueue<Tp, Job>,
    /// Per tier: the buffered-messages and buffered-bytes gauges.
    buffered_gauges: Vec<(prometheus::IntGauge, prometheus::IntGauge)>,
    admission: Admission,
    /// Every assigned partition is paused because the breaker is open.
    fetch_paused: bool,
    jobs: JoinSet<Completion>,
    /// Jobs that finished on their first, inline poll, not yet accounted for.
    finished: Vec<Completion>,
    /// Jobs to spawn without an inline poll first, because a recent inline poll took long.
    spawn_only: u32,
    /// Jobs started so far (inline polls are timed for one in [`TIME_EVERY`]).
    started: u64,
    /// Partitions whose committable offset may have moved since offsets were last stored.
    unstored: Vec<Tp>,
    /// Partitions of jobs accounted for as soon as they finished ([`State::settle_now`]) since
    /// the last [`State::settle`], which adds them to `unstored`; `passed_count` of those jobs.
    passed: Vec<Tp>,
    passed_count: usize,
    /// A pause, resume or revoke happened since the paused gauges were last set.
    paused_changed: bool,
    /// When the `/status` snapshot was last published.
    status_published: Option<std::time::Instant>,
    /// The revoke in progress, if any.
    revoking: Option<Revoking>,
    draining: bool,
    /// `--exactly-once`: the open transaction's bookkeeping ([`txn`]).
    eos: Option<txn::Eos>,
    /// `--ordering key`: the waiting log's reader and the chains of each main partition
    /// ([`waiting`]).
    waiting: Option<waiting::Waiting>,
    /// `--ordering key`: jobs in `jobs` that are `follow` records waiting for their
    /// acknowledgement ([`State::start_follow`]), and their bytes ([`footprint`]).
    follows: usize,
    follow_bytes: usize,
}

/// A job's first poll runs inline in the loop. One that takes longer than this (a handler doing
/// real work on the loop's thread) sends the next [`SPAWN_ONLY_AFTER_SLOW_POLL`] jobs straight to
/// their own tasks, so that such handlers still run in parallel.
const SLOW_INLINE_POLL: Duration = Duration::from_micros(200);
const SPAWN_ONLY_AFTER_SLOW_POLL: u32 = 1000;
/// Inline polls are timed for one job in this many (reading the clock costs per message).
const TIME_EVERY: u64 = 16;

/// `--ordering key`: `follow` records enqueued and not acknowledged yet, at most (the loop reads
/// no further until fewer are): messages, and bytes as counted by [`footprint`]. They wait
/// outside `--max-in-flight`, so that a key's later messages do not hold the slots of other keys
/// for a produce round trip each (BENCHMARKS.md, scenario 9).
const PENDING_FOLLOWS: usize = 1024;
const PENDING_FOLLOW_BYTES: usize = 16 << 20;

/// Messages taken from the consumer in one loop turn when they are already there.
const RECV_BATCH: usize = 256;

/// Within a receive batch, jobs that finished in their inline poll are accounted for (their
/// handler results given to the breaker, their offsets finished, their keys freed) once this
/// many have gathered, and at the end of the batch: one lock of the router's results, one clock
/// reading and one offset store per partition for the lot, instead of one per message. The
/// breaker already decides with up to `--max-in-flight` results unknown (jobs in flight), and
/// treats unknown results as possible failures; this adds at most as many (the default
/// `--max-in-flight`). The stores before each further receive cover what was accounted for.
const SETTLE_EVERY: usize = 32;

/// The consumer and its loop.
pub struct Pipeline {
    /// Declared (so dropped) before the consumer: a pipeline dropped without its shutdown (its
    /// future cancelled) closes the consumer in the drop, and the revoke that close raises must
    /// not be handed to a loop that is gone (the context answers it itself when sending fails).
    events: UnboundedReceiver<RebalanceEvent>,
    /// Declared (so dropped) before the consumer too: its partitions' stored-offset lists hold
    /// references to librdkafka's partition objects, and while one lives the consumer's
    /// destroy never returns (docs/broker-compat.md, "A stored-offset list keeps the client
    /// open"), so a cancelled pipeline would hang its thread for good.
    state: State,
    consumer: StreamConsumer<TopologyContext>,
}

impl Pipeline {
    /// The loop of `consumer`; `cluster` gives the settings of the waiting log's reader of
    /// `--ordering key`. Errors: that reader cannot be created.
    pub fn new(
        consumer: StreamConsumer<TopologyContext>,
        events: UnboundedReceiver<RebalanceEvent>,
        router: Arc<Router>,
        limits: Limits,
        cluster: &crate::cluster::ClusterConfig,
    ) -> Result<Pipeline, KafkaError> {
        let waiting = match router.topology.waiting.as_deref() {
            Some(topic) => Some(waiting::Waiting::new(cluster, topic)?),
            None => None,
        };
        let metrics = router.metrics.clone();
        let eos = router.exactly_once.then(txn::Eos::default);
        let buffered_gauges = router
            .topology
            .tiers
            .iter()
            .map(|t| metrics.tier_buffer_series(&t.label))
            .collect();
        Ok(Pipeline {
            consumer,
            events,
            state: State {
                router,
                metrics,
                limits,
                parts: FxHashMap::default(),
                next_epoch: 0,
                delays: DelayQueue::new(limits.tier_buffer),
                buffered_gauges,
                admission: Admission::new(limits.breaker, limits.max_in_flight),
                fetch_paused: false,
                jobs: JoinSet::new(),
                finished: Vec::new(),
                spawn_only: 0,
                started: 0,
                unstored: Vec::new(),
                passed: Vec::new(),
                passed_count: 0,
                paused_changed: true,
                status_published: None,
                revoking: None,
                draining: false,
                eos,
                waiting,
                follows: 0,
                follow_bytes: 0,
            },
        })
    }

    /// Runs until `stop` is cancelled (or the consumer fails for good), then finishes or hands
    /// back in-flight work, commits, and closes the consumer within the shutdown timeout.
    pub async fn run(mut self, stop: CancellationToken) -> Ended {
        // With --exactly-once, the "commit" is the transaction's, every txn::INTERVAL (or
        // txn::MAX_MESSAGES finished messages, checked each turn).
        let mut commit = tokio::time::interval(if self.state.eos.is_some() {
            txn::INTERVAL
        } else {
            self.state.limits.commit_interval
        });
        commit.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let stopped = stop.cancelled();
        tokio::pin!(stopped);
        // One timer for the earliest buffered head (or buffer wake-up), moved only when that
        // time changes.
        let mut timer = DueTimer::default();
        let ended = loop {
            while let Ok(event) = self.events.try_recv() {
                self.state.on_rebalance(&self.consumer, event);
            }
            // A revoke first commits (or aborts and rewinds) the open transaction.
            if self.state.eos.is_some() && self.state.revoke_ready(false) {
                if let Err(ended) = self.state.commit_txn(&self.consumer, txn::TIMEOUT).await {
                    break ended;
                }
            }
            self.state.finish_revoke(&self.consumer, false);
            // Before anything polls the consumer (a rebalance callback may commit what is stored).
            self.state.store_finished(&self.consumer);
            // Due retries stay in the tier buffers while the breaker would refuse them.
            let retries_wanted = self.state.admission.breaker.admits_retries();
            let wake = timer.wake_for(self.state.delays.next_due().filter(|_| retries_wanted));
            let breaker_wake = self.state.admission.wakes_at().map(Instant::from_std);
            let revoke_wake = self.state.revoking.as_ref().map(|r| r.deadline);
            let room = self.state.has_room();
            let waiting_consumer = self.state.waiting.as_ref().map(|w| w.consumer.clone());
            let state = &mut self.state;
            let consumer = &self.consumer;
            tokio::select! {
                biased;
                _ = &mut stopped => break Ended::Stopped,
                Some(started) = recv_started(state.waiting.as_mut()) => {
                    state.waiting_started(consumer, started);
                    state.settle(consumer);
                }
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
                // The top of the loop finishes the revoke once its deadline has passed.
                _ = sleep_until(revoke_wake) => {}
                received = recv_waiting(waiting_consumer.as_deref()), if room => {
                    match received {
                        Ok(m) => state.on_waiting_message(consumer, &m),
                        Err(e) => tracing::warn!(error = %e, "waiting log reader error"),
                    }
                    state.settle(consumer);
                }
                _ = commit.tick() => {
                    // --ordering key: every follower and state record needs that producer, and a
                    // fatal one never writes again; a restart gets a new one (nothing is lost:
                    // their offsets wait).
                    if let Some((code, reason)) = state
                        .router
                        .waiting_producer
                        .as_ref()
                        .and_then(crate::produce::Producer::fatal_error)
                    {
                        tracing::error!(error = %code, reason = %reason, "the waiting log's producer failed for good");
                        break Ended::Fatal { code, reason };
                    }
                    state.waiting_checkpoint();
                    if state.eos.is_some() {
                        if let Err(ended) = state.commit_txn(consumer, txn::TIMEOUT).await {
                            break ended;
                        }
                    } else {
                        state.store_finished(consumer);
                        commit_offsets(consumer, CommitMode::Async);
                    }
                }
                received = consumer.recv(), if room => match received {
                    Ok(m) => {
                        // The message may have come with a rebalance; see it first.
                        while let Ok(event) = self.events.try_recv() {
                            state.on_rebalance(consumer, event);
                        }
                        state.on_message(consumer, &m);
                        drop(m);
                        // More are often there already: take them in this turn while there is
                        // room, storing finished offsets before each poll as the loop does.
                        // Jobs that finished inline are accounted for every SETTLE_EVERY
                        // messages (and whenever room runs out), not one by one.
                        for _ in 1..RECV_BATCH {
                            if state.finished.len() + state.passed_count >= SETTLE_EVERY
                                || !state.has_room()
                            {
                                state.settle(consumer);
                                if !state.has_room() {
                                    break;
                                }
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
                        }
                        state.settle(consumer);
                        // A head that came due meanwhile goes now, not a loop turn later.
                        if state.admission.breaker.admits_retries()
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
                        if let Some((code, reason)) = consumer.client().fatal_error() {
                            tracing::error!(error = %code, reason = %reason, "the consumer failed for good");
                            break Ended::Fatal { code, reason };
                        }
                        if matches!(e.rdkafka_error_code(), Some(RDKafkaErrorCode::AllBrokersDown)) {
                            kafka::note_client_error(&state.metrics, &e, "consumer");
                        } else {
                            tracing::warn!(error = %e, "consumer error");
                        }
                    }
                },
            }
            if state.eos.as_ref().is_some_and(txn::Eos::full) {
                if let Err(ended) = state.commit_txn(consumer, txn::TIMEOUT).await {
                    break ended;
                }
            }
            state.update_gauges();
            state.publish_status(false);
        };
        let last = ended == Ended::Stopped;
        self.shutdown(last).await;
        ended
    }

    /// Stops receiving, lets running work finish (within the shutdown timeout), commits and
    /// closes the consumer. `last`: the service stops (else a new consumer takes over, so
    /// `/readyz` is left to it).
    async fn shutdown(mut self, last: bool) {
        let state = &mut self.state;
        if last {
            state
                .metrics
                .health
                .shutting_down
                .store(true, Ordering::Relaxed);
        }
        state.draining = true;
        let buffered_tier = state.delays.len();
        tracing::info!(
            in_flight = state.jobs.len(),
            waiting = state.admission.waiting(),
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
        if state.eos.is_some() {
            // Within what is left of --shutdown-timeout (at least a second to say so).
            let left = deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_secs(1));
            let _ = state.commit_txn(&self.consumer, left).await;
        } else {
            state.store_finished(&self.consumer);
            commit_offsets(&self.consumer, CommitMode::Sync);
        }
        // A revoke librdkafka is waiting for is answered before the close (which would
        // otherwise wait for it); from now on the context answers revokes itself.
        state.finish_revoke(&self.consumer, true);
        let unfinished: Vec<Tp> = state
            .parts
            .iter()
            .filter(|(_, p)| p.offsets.committable() != p.offsets.read_to())
            .map(|(tp, _)| *tp)
            .collect();
        for tp in unfinished {
            state.hand_back(tp, "stopping");
        }
        self.consumer
            .context()
            .closing
            .store(true, Ordering::Relaxed);
        state.publish_status(true);
        tracing::info!("offsets committed; leaving the group");
        // A list that went through `store_offsets` holds a reference to librdkafka's partition
        // object, and the client does not finish closing while one is alive.
        state.parts.clear();
        close_consumer(self.consumer, Duration::from_secs(10));
    }
}

impl State {
    /// Whether the revoke in progress may finish: its partitions have no running job, its
    /// deadline has passed, or `now`.
    fn revoke_ready(&self, now: bool) -> bool {
        let Some(r) = &self.revoking else {
            return false;
        };
        now || Instant::now() >= r.deadline
            || r.tps
                .iter()
                .all(|tp| self.parts.get(tp).is_none_or(|p| p.running.is_empty()))
    }

    /// Messages read and not finished, except those in tier buffers: what `--max-in-flight`
    /// bounds.
    fn buffered(&self) -> usize {
        self.jobs.len().saturating_sub(self.follows) + self.admission.waiting()
    }

    /// Whether another message may be read: fewer than `--max-in-flight` are buffered and, with
    /// `--exactly-once`, fewer than [`txn::MAX_MESSAGES`] copies wait for their transaction (the
    /// memory bound of held copies; the loop commits before that, see [`txn::Eos::full`]).
    fn has_room(&self) -> bool {
        self.buffered() < self.limits.max_in_flight
            && self.follows < PENDING_FOLLOWS
            && self.follow_bytes < PENDING_FOLLOW_BYTES
            && self.eos.as_ref().is_none_or(|e| e.held < txn::MAX_MESSAGES)
    }

    /// Whether `job` still belongs to its partition's assignment and may start.
    fn is_current(parts: &FxHashMap<Tp, Partition>, job: &Job) -> bool {
        parts
            .get(&job.tp)
            .is_some_and(|p| p.epoch == job.epoch && !p.revoking)
    }

    fn stage_of(&self, topic: &str, partition: i32) -> Option<Tp> {
        let stage = self.router.topology.stage_of(topic)?;
        Some(Tp { stage, partition })
    }

    fn on_rebalance(&mut self, consumer: &StreamConsumer<TopologyContext>, event: RebalanceEvent) {
        match event {
            RebalanceEvent::Assigned(list) => {
                for (topic, partition) in &list {
                    let Some(tp) = self.stage_of(topic, *partition) else {
                        continue;
                    };
                    self.next_epoch += 1;
                    self.parts.insert(tp, Partition::new(self.next_epoch));
                    if tp.stage == Stage::Main {
                        self.waiting_assigned(consumer, tp.partition, self.next_epoch);
                    }
                }
                self.metrics.health.assigned.store(true, Ordering::Relaxed);
                tracing::info!(
                    added = list.len(),
                    assigned = self.parts.len(),
                    "partitions assigned"
                );
                if self.fetch_paused {
                    // The context resumed them; the open breaker wants them paused.
                    self.set_fetching(consumer, false);
                }
            }
            RebalanceEvent::Revoked(list) => {
                // Already unassigned (lost, or the consumer is closing): nothing to wait for.
                for (topic, partition) in &list {
                    if let Some(tp) = self.stage_of(topic, *partition) {
                        self.hand_back(tp, "partition lost");
                    }
                }
                tracing::info!(
                    revoked = list.len(),
                    remaining = self.parts.len(),
                    "partitions revoked"
                );
            }
            RebalanceEvent::Revoking(list) => self.begin_revoke(consumer, list),
        }
    }

    /// Starts a revoke: the partitions stop starting work (their buffered, parked and
    /// key-gated jobs are dropped, to be read again by the next owner) and are paused; their
    /// running jobs may finish until `--revoke-timeout`. [`State::finish_revoke`] then commits
    /// and gives the partitions up. Nothing blocks: the loop goes on serving every other
    /// partition and receiving the completions the revoke waits for.
    fn begin_revoke(
        &mut self,
        consumer: &StreamConsumer<TopologyContext>,
        list: Vec<(String, i32)>,
    ) {
        let now = Instant::now();
        let mut tps = Vec::new();
        let mut pause_list = TopicPartitionList::with_capacity(list.len());
        for (topic, partition) in &list {
            pause_list.add_partition(topic, *partition);
            let Some(tp) = self.stage_of(topic, *partition) else {
                continue;
            };
            tps.push(tp);
            if let Some(p) = self.parts.get_mut(&tp) {
                p.revoking = true;
            }
            let (dropped, bytes) = self.delays.remove(&tp);
            self.count_buffered(tp, -(dropped.len() as i64), -(bytes as i64));
            self.admission.remove_partition(tp);
        }
        self.paused_changed = true;
        if let Err(e) = consumer.pause(&pause_list) {
            tracing::debug!(error = %e, "pausing revoked partitions failed");
        }
        let running: usize = tps
            .iter()
            .filter_map(|tp| self.parts.get(tp))
            .map(|p| p.running.len())
            .sum();
        tracing::info!(
            partitions = list.len(),
            running,
            wait_ms = self.limits.revoke_timeout.as_millis() as u64,
            "revoke: letting the running jobs of the revoked partitions finish"
        );
        match &mut self.revoking {
            // librdkafka waits for the answer to one revoke before the next; defensive.
            Some(r) => {
                r.list.extend(list);
                r.tps.extend(tps);
            }
            None => {
                self.revoking = Some(Revoking {
                    list,
                    tps,
                    since: now,
                    deadline: now + self.limits.revoke_timeout,
                })
            }
        }
    }

    /// Finishes the revoke in progress once its partitions have no running job, its deadline
    /// has passed, or `now`: stores and commits (synchronously) what finished, logs what is
    /// handed back, drops the partitions' state and gives them up (`incremental_unassign`, or
    /// `unassign` with an eager assignor).
    fn finish_revoke(&mut self, consumer: &StreamConsumer<TopologyContext>, now: bool) {
        if !self.revoke_ready(now) {
            return;
        }
        let Some(r) = self.revoking.take() else {
            return;
        };
        let drained = r
            .tps
            .iter()
            .all(|tp| self.parts.get(tp).is_none_or(|p| p.running.is_empty()));
        self.store_finished(consumer);
        let router = self.router.clone();
        let topology = &router.topology;
        let mut commit = TopicPartitionList::with_capacity(r.tps.len());
        for tp in &r.tps {
            if let Some(stored) = self.parts.get(tp).and_then(|p| p.offsets.stored()) {
                let _ = commit.add_partition_offset(
                    topology.topic(tp.stage),
                    tp.partition,
                    Offset::Offset(stored),
                );
            }
        }
        // With --exactly-once the transaction committed them just before (the loop's turn).
        if commit.count() > 0 && self.eos.is_none() {
            if let Err(e) = consumer.commit(&commit, CommitMode::Sync) {
                tracing::warn!(error = %e, "commit of revoked partitions failed; the next owner may repeat their finished work");
            }
        }
        for tp in &r.tps {
            self.hand_back(*tp, "partition revoked");
        }
        let mut all = TopicPartitionList::with_capacity(r.list.len());
        for (topic, partition) in &r.list {
            all.add_partition(topic, *partition);
        }
        let given_up = match consumer.rebalance_protocol() {
            RebalanceProtocol::Cooperative => consumer.incremental_unassign(&all),
            _ => consumer.unassign(),
        };
        if let Err(e) = given_up {
            tracing::warn!(error = %e, "giving up revoked partitions failed");
        }
        tracing::info!(
            revoked = r.list.len(),
            remaining = self.parts.len(),
            drained,
            waited_ms = r.since.elapsed().as_millis() as u64,
            "partitions revoked"
        );
    }

    /// Drops every trace of `tp` and logs what is handed back to the next owner, which reads
    /// again from the committable offset (`from`, what was committed) up to the last offset
    /// read (`until`, exclusive): the work not finished, and finished work behind it. `running`
    /// lists the jobs still running (their handler may have been called; their results will be
    /// ignored).
    fn hand_back(&mut self, tp: Tp, why: &'static str) {
        let Some(p) = self.remove_partition(tp) else {
            return;
        };
        let from = p.offsets.committable();
        let until = p.offsets.read_to();
        let mut running = p.running;
        running.sort_unstable();
        tracing::info!(
            topic = self.router.topology.topic(tp.stage),
            partition = tp.partition,
            from,
            until,
            handed_back = until.unwrap_or(0) - from.unwrap_or(0),
            running = ?running,
            "{why}; unfinished work handed back"
        );
    }

    /// Removes `tp` and everything the loop keeps about it.
    fn remove_partition(&mut self, tp: Tp) -> Option<Partition> {
        let part = self.parts.remove(&tp);
        if tp.stage == Stage::Main {
            self.waiting_revoked(tp.partition);
        }
        if let (Some(eos), Some(p)) = (&mut self.eos, &part) {
            eos.held -= p.held.len();
        }
        let (dropped, bytes) = self.delays.remove(&tp);
        self.count_buffered(tp, -(dropped.len() as i64), -(bytes as i64));
        self.admission.remove_partition(tp);
        self.unstored.retain(|t| *t != tp);
        self.passed.retain(|t| *t != tp);
        self.paused_changed = true;
        // The lag of a partition that moved is its new owner's to report.
        let topology = &self.router.topology;
        let _ = self
            .metrics
            .lag
            .remove_label_values(&[topology.topic(tp.stage), &tp.partition.to_string()]);
        part
    }

    fn on_message(&mut self, consumer: &StreamConsumer<TopologyContext>, m: &BorrowedMessage<'_>) {
        // Read once: rdkafka finds the name and checks its UTF-8 on each call.
        let topic = m.topic();
        let Some(stage) = self.router.topology.stage_of(topic) else {
            tracing::warn!(topic, "message from a topic outside the topology; ignored");
            return;
        };
        let tp = Tp {
            stage,
            partition: m.partition(),
        };
        if stage == Stage::Main && !self.waiting_admits_main(m.partition(), m.offset()) {
            // --ordering key: not before the partition's keys in retry are known.
            return;
        }
        let topology = &self.router.topology;
        let epoch = match self.parts.get_mut(&tp) {
            // Being revoked: not begun, so the next owner reads it.
            Some(p) if p.revoking => return,
            Some(p) => {
                p.first_seen = Some(p.first_seen.map_or(m.offset(), |f| f.min(m.offset())));
                p.epoch
            }
            None => {
                // Assignment events arrive before the partition's messages; this is defensive.
                self.next_epoch += 1;
                self.parts.insert(tp, Partition::new(self.next_epoch));
                self.next_epoch
            }
        };
        let mut message = kafka::owned_message(m, topic);
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
            if self.may_start_now() {
                self.start_now(job);
            } else {
                self.begin(tp, offset);
                self.dispatch(job);
            }
            return;
        }
        self.on_tier_message(consumer, job);
    }

    /// Whether a main-topic message read just now may start at once, skipping the parked queue
    /// ([`State::start_now`]): the breaker is closed and admits it with nothing parked ahead,
    /// inline polls are on, and neither `--exactly-once` nor `--ordering key` has a say in it.
    fn may_start_now(&mut self) -> bool {
        if self.draining || self.spawn_only > 0 || self.eos.is_some() || self.waiting.is_some() {
            return false;
        }
        self.admission.may_start_now(self.running())
    }

    /// Jobs started and not accounted for that call the handler (follows waiting for their ack
    /// call none, so the breaker waits for no result of theirs): what [`Admission`] counts as
    /// running.
    fn running(&self) -> usize {
        (self.jobs.len() + self.finished.len()).saturating_sub(self.follows)
    }

    /// Starts a fresh main-topic message that [`State::may_start_now`] let through, unless an
    /// earlier message of its key is in flight (it then waits behind it, begun). Its offset is
    /// begun only if it does not pass at once ([`State::launch`]): the usual case costs no
    /// entry in the partition's outstanding offsets.
    fn start_now(&mut self, job: Job) {
        self.router.series(job.tp).consumed.inc();
        let (tp, offset) = (job.tp, job.message.offset);
        match self.admission.admit_now(job) {
            Some(job) => self.launch(job, true),
            None => self.begin_offset(tp, offset),
        }
    }

    /// Counts a message as read and its work as begun (so its offset holds commits back).
    fn begin(&mut self, tp: Tp, offset: i64) {
        self.router.series(tp).consumed.inc();
        self.begin_offset(tp, offset);
    }

    /// A message's work is begun: its offset holds commits back until it finishes.
    fn begin_offset(&mut self, tp: Tp, offset: i64) {
        if let Some(p) = self.parts.get_mut(&tp) {
            p.offsets.begin(offset);
        }
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
        self.admission.park(job);
        self.pump();
    }

    /// Starts the jobs [`Admission`] lets through now.
    fn pump(&mut self) {
        while !self.draining {
            let running = self.running();
            let parts = &self.parts;
            let Some(job) = self.admission.next(running, |j| Self::is_current(parts, j)) else {
                break;
            };
            self.start(job);
        }
    }

    /// Gives the breaker the handler results the router has published, in their order.
    fn judge_signals(&mut self, consumer: &StreamConsumer<TopologyContext>) {
        let changes = self
            .admission
            .judge(&self.router.signals, std::time::Instant::now);
        for new in changes {
            self.on_breaker_change(consumer, new);
        }
        // A closed breaker may have held jobs back until these results were known.
        if self.admission.parked() > 0 {
            self.pump();
        }
    }

    /// Pauses (or resumes) every assigned partition that its tier buffer does not hold paused.
    fn set_fetching(&mut self, consumer: &StreamConsumer<TopologyContext>, on: bool) {
        self.fetch_paused = !on;
        let topology = &self.router.topology;
        let mut tpl = TopicPartitionList::new();
        for (tp, p) in &self.parts {
            if !p.revoking && !self.delays.is_held(tp) {
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
                let e = self.admission.breaker.evidence();
                tracing::warn!(
                    waiting = self.admission.parked(),
                    calls = e.map_or(0, |e| e.calls),
                    failures = e.map_or(0, |e| e.failures),
                    retries_judged = e.is_some_and(|e| e.with_retries),
                    cooldown_ms = self.limits.breaker.cooldown.as_millis() as u64,
                    "circuit breaker open: the handler's transient failures reached the threshold; fetching paused"
                );
                self.admission.opened();
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
        match self.admission.breaker.tick(std::time::Instant::now()) {
            Some(new) => self.on_breaker_change(consumer, new),
            // Half-open and the grace for fresh probes is over: due retries may probe now.
            None => {
                self.pump();
                self.release_due(consumer);
            }
        }
    }

    /// Judges the calls that have been in the handler for `--breaker-slow-call` as failures,
    /// without waiting for their end ([`Admission::judge_slow`]).
    fn judge_slow(&mut self, consumer: &StreamConsumer<TopologyContext>) {
        let verdict = self.admission.judge_slow(std::time::Instant::now());
        if let Some(hung) = verdict.stalled {
            tracing::warn!(
                hung,
                slow_call_ms = self.limits.breaker.slow_call.map_or(0, |d| d.as_millis() as u64),
                "the handler answered nothing while these calls waited on it past --breaker-slow-call: a hung downstream"
            );
        }
        for new in verdict.changes {
            self.on_breaker_change(consumer, new);
        }
        if self.admission.parked() > 0 {
            self.pump();
        }
    }

    /// Dispatches the tier messages that are due, and resumes the partitions whose buffers
    /// drained (seeking each back to the first message it did not keep, if any). Nothing while
    /// the breaker would refuse a retry: they wait in the buffers, within its bounds.
    fn release_due(&mut self, consumer: &StreamConsumer<TopologyContext>) {
        if !self.admission.breaker.admits_retries() {
            return;
        }
        let now = Utc::now();
        let tick = self.delays.pop_due(now);
        for released in tick.released {
            let tp = released.partition;
            self.count_buffered(tp, -(released.items.len() as i64), -(released.bytes as i64));
            for job in released.items {
                if Self::is_current(&self.parts, &job) {
                    self.dispatch(job);
                }
            }
        }
        for resume in tick.resume {
            let tp = resume.partition;
            self.paused_changed = true;
            if self.parts.get(&tp).is_none_or(|p| p.revoking) {
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
        let Some(job) = self.waiting_main_job(job) else {
            return;
        };
        let (tp, offset) = (job.tp, job.message.offset);
        if let Some(p) = self.parts.get_mut(&tp) {
            p.running.push(offset);
        }
        let job = match self.start_follow(job) {
            Some(job) => job,
            None => return,
        };
        self.launch(job, false);
    }

    /// Runs a started job's first poll here (unless a recent one was slow) and then accounts for
    /// it at once when it passed ([`State::settle_now`]), keeps its completion for
    /// [`State::settle`] when it ended otherwise, or sends it to its own task. `direct`: started
    /// by [`State::start_now`], its offset not begun and not in the partition's running jobs
    /// yet; both are done here unless it passed.
    fn launch(&mut self, job: Job, direct: bool) {
        let (tp, offset) = (job.tp, job.message.offset);
        // When the job began: the one start reading for the slow-call watch, the inline poll's
        // timing and, for a job polled here at once, its handler call's deadline and duration. A
        // job sent to a task reads its call's start when first polled there (time queued for a
        // thread is not the handler's).
        let began = tokio::time::Instant::now();
        self.started += 1;
        let inline = self.spawn_only == 0;
        let mut job = Box::pin(self.router.clone().process(job, inline.then_some(began)));
        if inline {
            let polled = job
                .as_mut()
                .poll(&mut Context::from_waker(futures::task::noop_waker_ref()));
            if self.started % TIME_EVERY == 0 && began.elapsed() > SLOW_INLINE_POLL {
                self.spawn_only = SPAWN_ONLY_AFTER_SLOW_POLL;
            }
            if let Poll::Ready(done) = polled {
                if self.settle_now(&done, direct) {
                    return;
                }
                if direct {
                    self.begin_running(tp, offset);
                }
                // Over before anything could watch it: nothing for the slow-call watch.
                self.finished.push(done);
                return;
            }
        } else {
            self.spawn_only -= 1;
        }
        if direct {
            self.begin_running(tp, offset);
        }
        // Still running: the slow-call watch follows it from when it began.
        self.admission.started(tp, offset, began.into_std());
        self.jobs.spawn(job);
    }

    /// A job started directly ([`State::start_now`]) did not pass in its first poll: its offset
    /// is begun and it is running, as for a job started the usual way. Nothing happened in
    /// between that could see the difference (the poll runs inside this turn of the loop).
    fn begin_running(&mut self, tp: Tp, offset: i64) {
        if let Some(p) = self.parts.get_mut(&tp) {
            p.offsets.begin(offset);
            p.running.push(offset);
        }
    }

    /// Accounts at once for a job that finished in its first poll with nothing left to do for
    /// it (done, no copy held, nothing for `--ordering key`): its offset is finished and its key
    /// freed now, as [`State::on_completion`] would at the next [`State::settle`], without
    /// keeping its completion; its handler result stays in the router's queue for the breaker
    /// ([`Admission::finished_now`]), and its partition's offset is stored after the next
    /// settle. Returns false, changing nothing, for any other job. `direct`: as for
    /// [`State::launch`].
    fn settle_now(&mut self, done: &Completion, direct: bool) -> bool {
        let nothing_left = matches!(done.finish, Finish::Done)
            && done.note.is_none()
            && done.follower.is_none()
            && done.pipelined.is_none();
        if !nothing_left || self.eos.is_some() || self.waiting.is_some() {
            return false;
        }
        let Some(p) = self
            .parts
            .get_mut(&done.tp)
            .filter(|p| p.epoch == done.epoch)
        else {
            return false;
        };
        if !direct {
            // Pushed by `start` just before its poll.
            p.stop_running(done.offset);
        }
        p.offsets.passed(done.offset);
        if self.passed.last() != Some(&done.tp) && !self.passed.contains(&done.tp) {
            self.passed.push(done.tp);
        }
        self.passed_count += 1;
        if let Some(next) = self.admission.finished_now(done) {
            if !self.draining && Self::is_current(&self.parts, &next) {
                self.start(next);
            }
        }
        true
    }

    /// `--ordering key`: a main message whose key is in the retry path has its `follow` record
    /// enqueued now ([`Router::enqueue_follow`]) and waits for the acknowledgement in its own
    /// task, outside `--max-in-flight` (bounded by [`PENDING_FOLLOWS`] and
    /// [`PENDING_FOLLOW_BYTES`] instead); its key's next message may start at once (the producer
    /// keeps their records in order). Returns the job when it is not such a message, or when
    /// the record could not be enqueued (it then waits for its acknowledgement holding its key,
    /// [`Router::process`]).
    fn start_follow(&mut self, job: Job) -> Option<Job> {
        if !matches!(job.intake, Intake::Follow) {
            return Some(job);
        }
        let bytes = footprint(&job.message);
        let pending = match self.router.enqueue_follow(&job, bytes) {
            Ok(pending) => pending,
            Err(e) => {
                tracing::debug!(partition = job.tp.partition, offset = job.message.offset, error = %e,
                    "not enqueuing the follow record now; writing it the awaited way");
                return Some(job);
            }
        };
        self.follows += 1;
        self.follow_bytes += bytes;
        let next = self
            .admission
            .released(job.tp, job.message.offset, job.message.key.as_deref());
        self.jobs
            .spawn(self.router.clone().follow_acked(job, bytes, pending));
        if let Some(next) = next {
            if !self.draining && Self::is_current(&self.parts, &next) {
                self.start(next);
            }
        }
        None
    }

    /// Accounts for every finished job, including those that finishing ones let start. The
    /// breaker gets every handler result before the job that gave it is accounted for.
    fn settle(&mut self, consumer: &StreamConsumer<TopologyContext>) {
        loop {
            self.judge_signals(consumer);
            if let Some(done) = self.finished.pop() {
                self.on_completion(done);
                continue;
            }
            // Jobs that passed while results were judged (a breaker that closed starts the
            // parked ones) count as unknown until their results are judged too: left so, they
            // could hold every parked job back with nothing left to wake the loop (found by
            // `breaker::an_outage_opens_the_breaker_fast_probes_fresh_work_and_loses_nothing`).
            if !self.admission.has_unjudged() {
                break;
            }
        }
        // The results of jobs accounted for at once were judged above.
        // Taken and put back, so that the list keeps its allocation.
        let mut passed = std::mem::take(&mut self.passed);
        for tp in passed.drain(..) {
            self.mark_unstored(tp);
        }
        self.passed = passed;
        self.passed_count = 0;
    }

    fn on_completion(&mut self, done: Completion) {
        // First: the next job of this key (started below) decides on the key's new state.
        self.waiting_completed(&done);
        if let Some(bytes) = done.pipelined {
            // Its key and its part in the breaker were settled when it was enqueued.
            self.follows -= 1;
            self.follow_bytes -= bytes;
        } else if let Some(next) = self.admission.completed(&done) {
            if self.draining || !Self::is_current(&self.parts, &next) {
                // Not started: handed back, its offset stays uncommitted.
            } else {
                self.start(next);
            }
        }
        if self.admission.parked() > 0 {
            // One less result unknown: a held-back job may start.
            self.pump();
        }
        // A job of an earlier assignment (its partition was revoked and maybe came back).
        let Some(p) = self
            .parts
            .get_mut(&done.tp)
            .filter(|p| p.epoch == done.epoch)
        else {
            return;
        };
        p.stop_running(done.offset);
        if done.follower.is_some() {
            // A follower's main offset was finished when it was written to the waiting log.
            return;
        }
        match done.finish {
            Finish::Done => {}
            Finish::HandedBack => return,
            Finish::Held(copy) => {
                if let Some(eos) = &mut self.eos {
                    eos.held += 1;
                }
                p.held.insert(done.offset, *copy);
            }
        }
        if let Some(eos) = &mut self.eos {
            eos.finished += 1;
        }
        p.offsets.finish(done.offset);
        self.mark_unstored(done.tp);
    }

    /// `tp`'s committable offset may have moved: stored by the next [`State::store_finished`].
    fn mark_unstored(&mut self, tp: Tp) {
        if !self.unstored.contains(&tp) {
            self.unstored.push(tp);
        }
    }

    /// Stores the committable offset of every partition whose finished work moved it. Runs
    /// before anything polls the consumer (a rebalance callback inside the poll may commit what
    /// is stored), before each commit (a revoke's included) and at shutdown, so stored offsets are as fresh as with a
    /// store per completion. The list per partition is kept, so a store allocates nothing.
    fn store_finished(&mut self, consumer: &StreamConsumer<TopologyContext>) {
        if self.eos.is_some() {
            // Offsets are committed only inside transactions; nothing is stored for the
            // consumer's own commit (which then commits nothing, on revoke or close).
            self.unstored.clear();
            return;
        }
        for tp in self.unstored.drain(..) {
            let Some(p) = self.parts.get_mut(&tp) else {
                continue;
            };
            let Some(next) = p.offsets.advance() else {
                continue;
            };
            let topic = self.router.topology.topic(tp.stage);
            let list = p.store_list.get_or_insert_with(|| {
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
            .parts
            .iter()
            .map(|(tp, p)| {
                let head = self.delays.head(tp);
                let offsets = Some(&p.offsets);
                let paused_for = if self.delays.is_held(tp) {
                    Some("due")
                } else if p.revoking {
                    Some("revoking")
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
            breaker: self.admission.breaker.state().as_str(),
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
/// The next start of a waiting partition (`--ordering key`); never, without one.
async fn recv_started(
    waiting: Option<&mut waiting::Waiting>,
) -> Option<(i32, u64, Result<(i64, i64), String>)> {
    match waiting {
        Some(w) => w.started_rx.recv().await,
        None => std::future::pending().await,
    }
}

/// The next record of the waiting log (`--ordering key`); never, without one.
async fn recv_waiting(
    consumer: Option<&StreamConsumer>,
) -> Result<BorrowedMessage<'_>, KafkaError> {
    match consumer {
        Some(c) => c.recv().await,
        None => std::future::pending().await,
    }
}

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

/// Pauses (or resumes) one partition of `consumer` (the topology's, or the waiting log's).
fn pause<C: ConsumerContext>(
    consumer: &StreamConsumer<C>,
    topic: &str,
    partition: i32,
    paused: bool,
) {
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

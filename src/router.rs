//! The work for one message: handler → routing decision → acknowledged copy.
//!
//! A [`Job`] is polled first in the poll loop (most in-process handlers answer there) and
//! otherwise runs as its own task; either way it ends in a [`Completion`]. The poll loop marks
//! the offset finished only from a completion whose copy (if any) the broker acknowledged; a
//! job that is stopped before that reports [`Finish::HandedBack`] and its offset stays
//! uncommitted.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::FutureExt;
use rand::Rng;
use std::panic::AssertUnwindSafe;
use tokio_util::sync::CancellationToken;

use crate::breaker::Signal;
use crate::handler::{self, Handler, Message, Outcome};
use crate::headers::{self, RetryState};
use crate::keyorder;
use crate::metrics::Metrics;
use crate::produce::{self, ProduceError, Producer, Record};
use crate::topology::{DlqReason, Route, Stage, Topology, Unfit};
use rdkafka::error::KafkaError;

/// A partition of the topology: which stage it belongs to, and its number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tp {
    pub stage: Stage,
    pub partition: i32,
}

/// What the poll loop learned about a message before handing it over.
#[derive(Debug, Clone)]
pub enum Intake {
    /// From the main topic: a first try.
    Fresh,
    /// From a delay tier, due now.
    Retry(RetryState),
    /// From a delay tier, with a routing header that cannot be read or a due time beyond
    /// `--max-delay`: dead-lettered as `invalid` without a handler call.
    Invalid(Unfit),
    /// `--ordering key`: from the main topic while its key is in the retry path: appended to
    /// the waiting log as a follower, not handled ([`crate::keyorder`]).
    Follow,
    /// `--ordering key`: a follower read back from the waiting log at `log_offset`, its key's
    /// turn now: a first try, like [`Intake::Fresh`].
    Follower { log_offset: i64 },
}

/// What a job of `--ordering key` changed about its key; the poll loop applies it to the
/// partition's [`crate::keyorder::Chains`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyNote {
    /// The message is in the waiting log at `log_offset`.
    Followed { log_offset: i64 },
    /// The `follow` record was not written (the job was stopped).
    FollowAbandoned,
    /// The message at main offset `blocker` (the follower at waiting-log offset `follower`)
    /// went to a tier; its `blocked` record is at `log_offset`.
    Blocked {
        blocker: i64,
        follower: Option<i64>,
        /// The tier it went to (index into [`Topology::tiers`]).
        tier: u16,
        log_offset: i64,
    },
    /// The follower at `follower` was handled or dead-lettered.
    Passed { follower: i64 },
    /// The follower at `follower` was not finished (stopped): it is read again.
    FollowerAbandoned { follower: i64 },
}

/// One message and what to do with it.
#[derive(Debug)]
pub struct Job {
    pub tp: Tp,
    /// The assignment generation of `tp` when the message was read.
    pub epoch: u64,
    pub message: Message,
    pub intake: Intake,
}

/// How a job ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finish {
    /// Handled, or its copy is acknowledged: the offset may be committed.
    Done,
    /// Stopped before it was done: the offset must not be committed.
    HandedBack,
    /// `--exactly-once`: handled, and its copy is held for the poll loop, which produces it in
    /// the transaction that commits its offset ([`crate::pipeline`]); nothing was produced yet.
    Held(Box<HeldCopy>),
}

/// A retry or DLQ copy of `--exactly-once`, not produced yet: the poll loop produces it in the
/// same transaction as the offset of the message it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldCopy {
    /// The tier or DLQ topic.
    pub topic: String,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub headers: Vec<headers::Header>,
    /// The label of the stage the message was read from, for `rebound_routed_total`.
    pub from: String,
    /// The label of the tier it goes to, or `dlq`.
    pub to: String,
    /// Set for a DLQ copy, for `rebound_dlq_total`.
    pub reason: Option<DlqReason>,
}

/// Sent back to the poll loop when a job ends.
#[derive(Debug)]
pub struct Completion {
    pub tp: Tp,
    pub epoch: u64,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub finish: Finish,
    /// What the handler said, for the circuit breaker (`None` when it was not called).
    pub signal: Option<Signal>,
    /// `--ordering key`: what the job changed about its key.
    pub note: Option<KeyNote>,
    /// `--ordering key`: the job was the follower at this waiting-log offset (its `offset` is
    /// its main offset, finished long ago: nothing to commit).
    pub follower: Option<i64>,
    /// `--ordering key`: the job was a `follow` record enqueued when it started
    /// ([`Router::enqueue_follow`]), of this many bytes. Its key gate and its part in the
    /// breaker were settled then; the loop counts it only in its bound of pending follows.
    pub pipelined: Option<usize>,
}

/// What every job shares.
pub struct Router {
    pub topology: Topology,
    pub handler: Arc<dyn Handler>,
    pub producer: Producer,
    pub metrics: Arc<Metrics>,
    pub handler_timeout: Duration,
    /// Cancelled when in-flight work must be abandoned (the shutdown deadline passed).
    pub abandon: CancellationToken,
    /// Per-stage metric series, from [`Metrics::stage_series`].
    pub series: Vec<crate::metrics::StageSeries>,
    /// Handler results the poll loop has not seen yet, in the order the handler gave them: the
    /// circuit breaker takes them then, not when the job's copy is acknowledged (a failure needs
    /// a produce, a success does not, so job ends would reach it successes first).
    pub signals: std::sync::Mutex<Vec<(Tp, i64, Signal)>>,
    /// `--exactly-once`: copies are not produced by jobs but held for the loop's transaction
    /// ([`Finish::Held`]).
    pub exactly_once: bool,
    /// `--ordering key`: the waiting log's producer ([`Producer::ordered`]), which keeps the
    /// order of the records it is given; `None` otherwise.
    pub waiting_producer: Option<Producer>,
    /// `--ordering key`: followers counted larger than this (bytes, as the loop counts them)
    /// are written the awaited way ([`crate::kafka::record_room`]).
    pub waiting_record_room: usize,
}

impl Router {
    /// The metric series of the stage `tp` belongs to.
    pub fn series(&self, tp: Tp) -> &crate::metrics::StageSeries {
        &self.series[Topology::stage_index(tp.stage)]
    }

    /// Runs the job to its end. `started`: the loop's clock reading when it started the job
    /// and polls it at once, which is when the handler call begins (the call's deadline and the
    /// duration histogram count from it, so one reading serves them and the slow-call watch);
    /// `None` when the job's first poll waits for its task, so that time queued for a thread
    /// is not counted against the handler (the call's start is read at that first poll).
    ///
    /// Not an `async fn`: one moves its arguments into locals first, so the job would take room
    /// twice in the future, which the loop allocates (and moves) once per message. The block
    /// below uses the job where it was captured.
    #[allow(clippy::manual_async_fn)] // deliberately not an `async fn`: see above
    pub fn process(
        self: Arc<Self>,
        job: Job,
        started: Option<tokio::time::Instant>,
    ) -> impl std::future::Future<Output = Completion> + Send {
        async move {
            let follower = match job.intake {
                Intake::Follower { log_offset } => Some(log_offset),
                _ => None,
            };
            let parking = matches!(job.intake, Intake::Follow);
            let run =
                AssertUnwindSafe(self.process_message(job.tp, &job.message, &job.intake, started))
                    .catch_unwind();
            let (finish, signal, note) = match run.await {
                Ok(done) => done,
                Err(_) => {
                    tracing::error!(partition = job.tp.partition, offset = job.message.offset,
                        "internal error while routing; the message is handed back and its partition stops committing until restart");
                    (Finish::HandedBack, None, None)
                }
            };
            // A job that did not finish leaves its key as it was.
            let note = match (&finish, note) {
                (Finish::HandedBack, _) | (_, None) if parking => Some(KeyNote::FollowAbandoned),
                (Finish::HandedBack, _) | (_, None) if follower.is_some() => {
                    follower.map(|follower| KeyNote::FollowerAbandoned { follower })
                }
                (_, note) => note,
            };
            Completion {
                tp: job.tp,
                epoch: job.epoch,
                offset: job.message.offset,
                key: job.message.key,
                finish,
                signal,
                note,
                follower,
                pipelined: None,
            }
        }
    }

    /// `--ordering key`: enqueues the `follow` record of `job` (a main message whose key is in
    /// the retry path, [`Intake::Follow`]) on the waiting log's producer now, without waiting
    /// for the broker. The records of a waiting partition are then written in the order of
    /// these calls (the producer is idempotent, [`Producer::ordered`]), so the loop may start
    /// the key's next message at once instead of after this one's acknowledgement. `bytes`: the
    /// message's size as the loop counts it. Returns what finishes the job
    /// ([`Router::follow_acked`]). Errors: the record may be too large for the waiting log
    /// (over [`Router::waiting_record_room`]: a refusal must not leave a later record of its key
    /// written before it), or the client refused to enqueue it (its queue is full); the job then
    /// takes the awaited path ([`Router::process`]), holding its key.
    pub fn enqueue_follow(
        &self,
        job: &Job,
        bytes: usize,
    ) -> Result<produce::PendingAck, KafkaError> {
        // The record adds a few headers of its own to the message.
        if bytes.saturating_add(WAITING_RECORD_EXTRA) > self.waiting_record_room {
            return Err(KafkaError::MessageProduction(
                rdkafka::types::RDKafkaErrorCode::MessageSizeTooLarge,
            ));
        }
        let Some((topic, producer)) = self.waiting_log() else {
            return Err(KafkaError::MessageProduction(
                rdkafka::types::RDKafkaErrorCode::InvalidArgument,
            ));
        };
        let entry = keyorder::Entry::Follow {
            main_offset: job.message.offset,
        };
        let record = waiting_record(
            topic,
            job.tp.partition,
            job.message.key.as_deref(),
            &entry,
            Some(&job.message),
        );
        producer.enqueue_acked(&record)
    }

    /// Finishes a job whose `follow` record [`Router::enqueue_follow`] enqueued (`bytes`: what the
    /// loop counts it as, given back in [`Completion::pipelined`]): when the broker
    /// acknowledges it, the main offset is done and the key's chain has the follower. A record
    /// the broker refuses for good (an ACL; a record that may be too large is not enqueued this
    /// way, [`Router::enqueue_follow`]) is not retried, since a later record of its key may be written already and a retry would
    /// come after it: the message is dead-lettered with the broker's error instead, as a copy a
    /// tier refuses is, and its key goes on without it. Any other failure (the producer's fatal
    /// state) is retried the awaited way. Handed back when the service stops first.
    pub async fn follow_acked(
        self: Arc<Self>,
        job: Job,
        bytes: usize,
        pending: produce::PendingAck,
    ) -> Completion {
        let Job {
            tp, epoch, message, ..
        } = job;
        let acked = async {
            match pending.acked(&self.abandon).await {
                Ok((_, log_offset)) => (Finish::Done, KeyNote::Followed { log_offset }),
                Err(ProduceError::Cancelled) => (Finish::HandedBack, KeyNote::FollowAbandoned),
                Err(rejected @ ProduceError::Rejected { .. }) => (
                    self.dead_letter_follower(tp, &message, &rejected).await,
                    KeyNote::FollowAbandoned,
                ),
                Err(failed @ ProduceError::Failed { .. }) => {
                    tracing::error!(partition = tp.partition, offset = message.offset, error = %failed,
                        "the waiting log's producer failed; writing this follower again");
                    self.write_follower(tp, &message).await
                }
            }
        };
        let (finish, note) = match AssertUnwindSafe(acked).catch_unwind().await {
            Ok(done) => done,
            Err(_) => {
                tracing::error!(partition = tp.partition, offset = message.offset,
                    "internal error while writing a follower; the message is handed back and its partition stops committing until restart");
                (Finish::HandedBack, KeyNote::FollowAbandoned)
            }
        };
        Completion {
            tp,
            epoch,
            offset: message.offset,
            key: message.key,
            finish,
            signal: None,
            note: Some(note),
            follower: None,
            pipelined: Some(bytes),
        }
    }

    /// `--ordering key`: the waiting log and the producer that keeps its order.
    fn waiting_log(&self) -> Option<(&str, &Producer)> {
        Some((
            self.topology.waiting.as_deref()?,
            self.waiting_producer.as_ref()?,
        ))
    }

    /// `--ordering key` is on and `message` takes part in it (it has a key).
    fn orders(&self, message: &Message) -> bool {
        self.topology.waiting.is_some() && message.key.is_some()
    }

    /// Appends `entry` for `message`'s key to waiting-log partition `partition` and waits for
    /// the broker; `with_message`: the record carries the message (a follower). Returns the
    /// record's offset, or `None` when the service stopped first.
    async fn append_waiting(
        &self,
        partition: i32,
        message: &Message,
        entry: keyorder::Entry,
        with_message: bool,
    ) -> Option<i64> {
        let topic = self.topology.waiting.as_deref()?;
        loop {
            match self
                .send_waiting(partition, message, &entry, with_message)
                .await
            {
                Ok(offset) => return Some(offset),
                Err(ProduceError::Cancelled) => return None,
                // Refused for good (too large, an ACL): the order cannot be kept without it, and
                // going on would lose it. Loud, slow retries until someone fixes the topic.
                Err(e) => {
                    tracing::error!(topic, partition, offset = message.offset, kind = entry.kind(), error = %e,
                        "the waiting log refuses this record; the key cannot advance until it is accepted (retrying in 30s)");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(30)) => {}
                        _ = self.abandon.cancelled() => return None,
                    }
                }
            }
        }
    }

    /// Writes `entry` for `message`'s key to waiting-log partition `partition` once (transient
    /// errors are retried by [`Producer::send_acked`]) and returns its offset; `with_message`:
    /// the record carries the message (a follower). Errors: `Rejected` (for good), `Cancelled`.
    async fn send_waiting(
        &self,
        partition: i32,
        message: &Message,
        entry: &keyorder::Entry,
        with_message: bool,
    ) -> Result<i64, ProduceError> {
        let Some(topic) = self.topology.waiting.as_deref() else {
            return Err(ProduceError::Cancelled);
        };
        let record = waiting_record(
            topic,
            partition,
            message.key.as_deref(),
            entry,
            with_message.then_some(message),
        );
        let producer = self.waiting_producer.as_ref().unwrap_or(&self.producer);
        producer
            .send_acked(&record, &self.abandon)
            .await
            .map(|(_, offset)| offset)
    }

    /// Writes the `follow` record of `message` (read from main partition `tp`) and waits for
    /// it, holding its key: the awaited path of [`Router::enqueue_follow`]. A record refused for
    /// good is dead-lettered ([`Router::dead_letter_follower`]); as nothing later of its key was
    /// written meanwhile, that leaves no gap in the key's followers.
    async fn write_follower(&self, tp: Tp, message: &Message) -> (Finish, KeyNote) {
        let entry = keyorder::Entry::Follow {
            main_offset: message.offset,
        };
        match self.send_waiting(tp.partition, message, &entry, true).await {
            Ok(log_offset) => {
                tracing::debug!(
                    partition = tp.partition,
                    offset = message.offset,
                    log_offset,
                    "its key is in the retry path: waiting behind it"
                );
                (Finish::Done, KeyNote::Followed { log_offset })
            }
            Err(ProduceError::Cancelled) => (Finish::HandedBack, KeyNote::FollowAbandoned),
            Err(refused) => (
                self.dead_letter_follower(tp, message, &refused).await,
                KeyNote::FollowAbandoned,
            ),
        }
    }

    /// A follower the waiting log refuses for good: dead-lettered with the broker's error and
    /// where it came from, as a copy a tier refuses is ([`Router::deliver_rejected`]); its key
    /// goes on without it (the *proceed* policy).
    async fn dead_letter_follower(
        &self,
        tp: Tp,
        message: &Message,
        refused: &ProduceError,
    ) -> Finish {
        tracing::error!(partition = tp.partition, offset = message.offset, error = %refused,
            "the waiting log refuses this message for good; dead-lettering it (its key's later messages go on without it)");
        let outcome = Outcome::permanent("produce_rejected", refused.to_string());
        let headers = failure_headers(
            &self.topology,
            tp,
            message,
            &outcome,
            0,
            None,
            Utc::now(),
            None,
            Some(DlqReason::Permanent),
        );
        self.deliver_rejected(tp, message, headers, refused).await
    }

    /// A tier copy of a blocker ended in the DLQ or was handled: appends `done` for it, so
    /// that its key's followers go on. Returns `HandedBack` when the service stopped first.
    async fn end_blocker(&self, message: &Message, finish: Finish) -> Finish {
        if finish != Finish::Done || self.topology.waiting.is_none() {
            return finish;
        }
        let Some((partition, blocker)) = blocker_of(message) else {
            return finish;
        };
        // Boxed: the success path awaits this function, and its future stays small.
        match self
            .append_waiting(partition, message, keyorder::Entry::Done { blocker }, false)
            .boxed()
            .await
        {
            Some(_) => finish,
            None => Finish::HandedBack,
        }
    }

    /// A tier copy of a blocker (it has a `rebound-ordering` header) failed again and its copy
    /// is in tier `tier` now: appends `moved` for it, for the owner's per-tier gauges. Written
    /// without waiting and without retries: only a gauge depends on it.
    fn note_moved(&self, message: &Message, tier: u16) {
        let (Some((topic, producer)), Some((partition, blocker))) =
            (self.waiting_log(), blocker_of(message))
        else {
            return;
        };
        let entry = keyorder::Entry::Moved { blocker, tier };
        let record = waiting_record(topic, partition, message.key.as_deref(), &entry, None);
        if let Err(e) = producer.enqueue_acked(&record) {
            tracing::debug!(topic, partition, error = %e, "the waiting log's moved record was not written (a gauge only)");
        }
    }

    async fn process_message(
        &self,
        tp: Tp,
        message: &Message,
        intake: &Intake,
        started: Option<tokio::time::Instant>,
    ) -> (Finish, Option<Signal>, Option<KeyNote>) {
        let label = self.topology.label(tp.stage);
        let mut follower = None;
        let (prior, first_failed_at) = match intake {
            Intake::Fresh => (0, None),
            Intake::Follower { log_offset } => {
                follower = Some(*log_offset);
                (0, None)
            }
            Intake::Follow => {
                let (finish, note) = self.write_follower(tp, message).boxed().await;
                return (finish, None, Some(note));
            }
            Intake::Retry(state) => {
                let late = Utc::now().signed_duration_since(state.process_after);
                self.series(tp)
                    .lateness
                    .observe(late.num_microseconds().unwrap_or(i64::MAX) as f64 / 1e6);
                (state.attempt, state.first_failed_at)
            }
            Intake::Invalid(problem) => {
                tracing::warn!(tier = label, partition = tp.partition, offset = message.offset, class = problem.class(),
                    problem = %problem, "unfit tier message; dead-lettering as invalid");
                self.metrics
                    .invalid
                    .with_label_values(&[label, problem.class()])
                    .inc();
                let headers = headers::rewrite(
                    &message.headers,
                    &[
                        (headers::ERROR_KIND, "permanent".into()),
                        (headers::ERROR_CLASS, problem.class().into()),
                        (
                            headers::ERROR_MESSAGE,
                            headers::truncate(&problem.to_string(), headers::MAX_ERROR_MESSAGE)
                                .into(),
                        ),
                        (headers::DLQ_REASON, DlqReason::Invalid.as_str().into()),
                    ],
                );
                let (finish, _) = self
                    .deliver(tp, message, None, Some(DlqReason::Invalid), headers)
                    .boxed()
                    .await;
                return (self.end_blocker(message, finish).await, None, None);
            }
        };

        debug_assert_eq!(
            message.attempt, prior,
            "the poll loop sets the attempt it read"
        );
        let started = started.unwrap_or_else(tokio::time::Instant::now);
        // At the shutdown deadline a call still running is handed back, not waited for: its
        // offset stays uncommitted and the message is handled again after the restart. The
        // call is polled first, so one that answers at once never touches the cancellation.
        let outcome = tokio::select! {
            biased;
            outcome = handler::call_since(&self.handler, message, self.handler_timeout, started) => outcome,
            _ = self.abandon.cancelled() => return (Finish::HandedBack, None, None),
        };
        let series = self.series(tp);
        series
            .handler_duration
            .observe(started.elapsed().as_secs_f64());
        series.handled(outcome.label()).inc();
        let signal = signal_of(&outcome);
        self.signals
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push((tp, message.offset, signal));

        let passed = follower.map(|follower| KeyNote::Passed { follower });
        if matches!(outcome, Outcome::Success) {
            // Goes nowhere: no clock, no jitter, no copy.
            tracing::debug!(
                tier = label,
                partition = tp.partition,
                offset = message.offset,
                "handled"
            );
            return (
                self.end_blocker(message, Finish::Done).await,
                Some(signal),
                passed,
            );
        }
        // Boxed: the success path (above) then keeps its future small, which is allocated and
        // moved once per message (a failure's copy costs far more than one allocation).
        self.route_failure(tp, message, outcome, prior, first_failed_at, follower)
            .boxed()
            .await
    }

    /// Routes a failed call's message (`outcome` is not a success; `prior`: failed attempts
    /// before this one) to its next tier or the DLQ, as [`Topology::route`] decides, and, with
    /// `--ordering key`, records what that means for its key.
    async fn route_failure(
        &self,
        tp: Tp,
        message: &Message,
        outcome: Outcome,
        prior: u32,
        first_failed_at: Option<DateTime<Utc>>,
        follower: Option<i64>,
    ) -> (Finish, Option<Signal>, Option<KeyNote>) {
        debug_assert!(
            !matches!(outcome, Outcome::Success),
            "a success is finished in process_message"
        );
        let signal = signal_of(&outcome);
        let label = self.topology.label(tp.stage);
        let now = Utc::now();
        let unit = if self.topology.jitter > 0.0 {
            rand::rng().random_range(-1.0..=1.0)
        } else {
            0.0
        };
        let route = self
            .topology
            .route(&outcome, prior, first_failed_at, now, unit);
        let passed = follower.map(|follower| KeyNote::Passed { follower });
        let (finish, note) = match route {
            Route::Done => {
                tracing::debug!(
                    tier = label,
                    partition = tp.partition,
                    offset = message.offset,
                    "handled"
                );
                (self.end_blocker(message, Finish::Done).await, passed)
            }
            Route::Retry { tier, due, attempt } => {
                let mut headers = failure_headers(
                    &self.topology,
                    tp,
                    message,
                    &outcome,
                    attempt,
                    first_failed_at,
                    now,
                    Some(due),
                    None,
                );
                if let Some(asked) = outcome
                    .failure()
                    .and_then(|f| f.retry_after)
                    .filter(|w| *w > self.topology.max_delay)
                {
                    tracing::warn!(tier = label, partition = tp.partition, offset = message.offset,
                        retry_after_s = asked.as_secs(), max_delay = %crate::duration::Short(self.topology.max_delay),
                        "Retry-After beyond --max-delay; retrying after --max-delay instead");
                }
                tracing::debug!(tier = label, partition = tp.partition, offset = message.offset, attempt,
                    to = %self.topology.tiers[tier].label, due = %headers::format_time(due), "retrying later");
                // --ordering key: a first try that fails blocks its key. Its copy is written
                // first, then its `blocked` record: a crash between the two leaves the message
                // unfinished (handled again), never a key blocked by a copy that does not exist.
                let blocks = tp.stage == Stage::Main && self.orders(message);
                if blocks {
                    headers = headers::rewrite(
                        &headers,
                        &[(
                            keyorder::ORDERING,
                            keyorder::ordering_value(tp.partition, message.offset),
                        )],
                    );
                }
                let (finish, to_dlq) = self.deliver(tp, message, Some(tier), None, headers).await;
                if finish != Finish::Done {
                    return (finish, Some(signal), None);
                }
                if to_dlq {
                    // Refused by the tier and dead-lettered instead: nothing is in retry.
                    if tp.stage != Stage::Main {
                        return (self.end_blocker(message, finish).await, Some(signal), None);
                    }
                    return (finish, Some(signal), passed);
                }
                let mut note = None;
                let tier_index = u16::try_from(tier).unwrap_or(u16::MAX);
                if tp.stage != Stage::Main {
                    self.note_moved(message, tier_index);
                }
                if blocks {
                    let entry = keyorder::Entry::Blocked {
                        blocker: message.offset,
                        follower,
                        tier: Some(tier_index),
                    };
                    let Some(log_offset) = self
                        .append_waiting(tp.partition, message, entry, false)
                        .await
                    else {
                        return (Finish::HandedBack, Some(signal), None);
                    };
                    note = Some(KeyNote::Blocked {
                        blocker: message.offset,
                        follower,
                        tier: tier_index,
                        log_offset,
                    });
                }
                (finish, note)
            }
            Route::Dead { reason, attempt } => {
                let headers = failure_headers(
                    &self.topology,
                    tp,
                    message,
                    &outcome,
                    attempt,
                    first_failed_at,
                    now,
                    None,
                    Some(reason),
                );
                let failure = outcome.failure();
                tracing::info!(
                    tier = label,
                    partition = tp.partition,
                    offset = message.offset,
                    attempt,
                    reason = reason.as_str(),
                    class = failure.map(|f| f.class.as_str()).unwrap_or(""),
                    "dead-lettering"
                );
                let (finish, _) = self.deliver(tp, message, None, Some(reason), headers).await;
                (self.end_blocker(message, finish).await, passed)
            }
        };
        (finish, Some(signal), note)
    }

    /// Produces the copy to a tier (`tier`) or the DLQ (`reason`) and waits for the broker.
    /// A copy the broker rejects for good goes to the DLQ instead, saying why.
    async fn deliver(
        &self,
        tp: Tp,
        message: &Message,
        tier: Option<usize>,
        reason: Option<DlqReason>,
        mut headers: Vec<headers::Header>,
    ) -> (Finish, bool) {
        let from = self.topology.label(tp.stage);
        if reason.is_some() {
            // A dead letter blocks nothing: replayed, it is a new message.
            headers.retain(|h| h.name != keyorder::ORDERING.as_bytes());
        }
        let (topic, to) = match tier {
            Some(i) => (
                self.topology.tiers[i].topic.as_str(),
                self.topology.tiers[i].label.as_str(),
            ),
            None => (self.topology.dlq.as_str(), "dlq"),
        };
        if self.exactly_once {
            // Only the loop produces in this mode, inside the transaction that also commits
            // this message's offset: a copy is never committed without its offset.
            return (
                Finish::Held(Box::new(HeldCopy {
                    topic: topic.to_string(),
                    key: message.key.clone(),
                    payload: message.payload.clone(),
                    headers,
                    from: from.to_string(),
                    to: to.to_string(),
                    reason,
                })),
                false,
            );
        }
        let record = Record {
            topic,
            key: message.key.as_deref(),
            payload: message.payload.as_deref(),
            headers,
            partition: None,
            timestamp: None,
        };
        match self.producer.send_acked(&record, &self.abandon).await {
            Ok(_) => {
                self.metrics.routed.with_label_values(&[from, to]).inc();
                if let Some(reason) = reason {
                    self.metrics.dlq.with_label_values(&[reason.as_str()]).inc();
                }
                (Finish::Done, false)
            }
            Err(ProduceError::Cancelled) => (Finish::HandedBack, false),
            Err(rejected) => {
                tracing::error!(from, to, partition = tp.partition, offset = message.offset, error = %rejected,
                    "copy rejected by the broker; dead-lettering with the reason");
                let mut headers = record.headers;
                headers.retain(|h| h.name != keyorder::ORDERING.as_bytes());
                let finish = self.deliver_rejected(tp, message, headers, &rejected).await;
                (finish, true)
            }
        }
    }

    /// Last resort for a copy the broker refused: the DLQ, with the broker's error and without
    /// rebound's own error text (the part of the copy rebound added). If that is refused as too
    /// large, the DLQ gets the message without its payload (and without a key over 4 KiB), with
    /// the place of the original in `rebound-error-message`. If even that is refused, retry
    /// slowly, loudly, until stopped: the offset is never committed past a message that was not
    /// placed somewhere.
    async fn deliver_rejected(
        &self,
        tp: Tp,
        message: &Message,
        headers: Vec<headers::Header>,
        error: &ProduceError,
    ) -> Finish {
        let from = self.topology.label(tp.stage);
        let mut slim = headers::rewrite(
            &headers,
            &[
                (headers::ERROR_KIND, "permanent".into()),
                (headers::ERROR_CLASS, "produce_rejected".into()),
                (
                    headers::ERROR_MESSAGE,
                    headers::truncate(&error.to_string(), 256).into(),
                ),
                (headers::DLQ_REASON, DlqReason::Permanent.as_str().into()),
            ],
        );
        slim.retain(|h| {
            h.value.as_ref().is_none_or(|v| v.len() <= 4096)
                || headers::OWNED.iter().any(|o| h.name == o.as_bytes())
        });
        let mut record = Record {
            topic: &self.topology.dlq,
            key: message.key.as_deref(),
            payload: message.payload.as_deref(),
            headers: slim,
            partition: None,
            timestamp: None,
        };
        let mut omitted = false;
        loop {
            match self.producer.send_acked(&record, &self.abandon).await {
                Ok(_) => {
                    self.metrics.routed.with_label_values(&[from, "dlq"]).inc();
                    self.metrics
                        .dlq
                        .with_label_values(&[DlqReason::Permanent.as_str()])
                        .inc();
                    return Finish::Done;
                }
                Err(ProduceError::Cancelled) => return Finish::HandedBack,
                Err(ProduceError::Rejected { code, .. })
                    if !omitted && produce::is_too_large(code) =>
                {
                    // The payload (or the key) alone is too large for any copy: waiting would
                    // stall the partition for good. Dead-letter the message by reference — its
                    // headers and where its bytes are — rather than not at all.
                    omitted = true;
                    let size = message.payload.as_ref().map_or(0, Vec::len);
                    let text = format!(
                        "even the DLQ copy is too large ({code:?}); its payload ({size} bytes) is omitted here: read it at {}/{}/{}",
                        message.topic, message.partition, message.offset
                    );
                    tracing::error!(partition = tp.partition, offset = message.offset, payload_bytes = size,
                        "the DLQ refuses this message as too large; dead-lettering it without its payload");
                    record.payload = None;
                    record.key = record.key.filter(|k| k.len() <= 4096);
                    record.headers =
                        headers::rewrite(&record.headers, &[(headers::ERROR_MESSAGE, text)]);
                }
                Err(e) => {
                    tracing::error!(partition = tp.partition, offset = message.offset, error = %e,
                        "the DLQ refuses this message too; the partition cannot advance past it (retrying in 30s)");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(30)) => {}
                        _ = self.abandon.cancelled() => return Finish::HandedBack,
                    }
                }
            }
        }
    }
}

/// `--ordering key`: the blocker a tier copy stands for (its `rebound-ordering` header): the
/// main partition and offset whose waiting-log partition hears of it.
fn blocker_of(message: &Message) -> Option<(i32, i64)> {
    headers::last(&message.headers, keyorder::ORDERING)
        .and_then(|h| h.value.as_deref())
        .and_then(keyorder::parse_ordering)
}

/// What a `follow` record adds to its message (its headers), in bytes, generously.
const WAITING_RECORD_EXTRA: usize = 256;

/// A record of the waiting log (`--ordering key`): `entry` for `key` in `partition`, carrying
/// `message` (its payload, its headers in front of the entry's, its timestamp) for a `follow`.
pub(crate) fn waiting_record<'a>(
    topic: &'a str,
    partition: i32,
    key: Option<&'a [u8]>,
    entry: &keyorder::Entry,
    message: Option<&'a Message>,
) -> Record<'a> {
    let set = entry.headers();
    Record {
        topic,
        key,
        payload: message.and_then(|m| m.payload.as_deref()),
        headers: headers::rewrite(message.map_or(&[][..], |m| &m.headers), &set),
        partition: Some(partition),
        timestamp: message.and_then(|m| m.timestamp),
    }
}

/// The contract's headers for a failed attempt; the user's headers are kept in front.
#[allow(clippy::too_many_arguments)]
pub(crate) fn failure_headers(
    topology: &Topology,
    tp: Tp,
    message: &Message,
    outcome: &Outcome,
    attempt: u32,
    first_failed_at: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
    due: Option<DateTime<Utc>>,
    reason: Option<DlqReason>,
) -> Vec<headers::Header> {
    let failure = outcome.failure();
    let mut set: Vec<(&'static str, String)> = Vec::with_capacity(12);
    if tp.stage == Stage::Main {
        set.push((headers::ORIGINAL_TOPIC, message.topic.clone()));
        set.push((headers::ORIGINAL_PARTITION, message.partition.to_string()));
        set.push((headers::ORIGINAL_OFFSET, message.offset.to_string()));
        if let Some(ts) = message.timestamp {
            set.push((headers::ORIGINAL_TIMESTAMP, ts.to_string()));
        }
    }
    set.push((
        headers::FIRST_FAILED_AT,
        headers::format_time(first_failed_at.unwrap_or(now)),
    ));
    set.push((headers::ATTEMPT, attempt.to_string()));
    if let Some(due) = due {
        set.push((headers::PROCESS_AFTER, headers::format_time(due)));
    }
    let kind = match outcome {
        Outcome::Permanent(_) => "permanent",
        _ => "transient",
    };
    set.push((headers::ERROR_KIND, kind.into()));
    if let Some(f) = failure {
        set.push((headers::ERROR_CLASS, f.class.clone()));
        let mut text = f.message.clone();
        if let Some(asked) = f.retry_after.filter(|w| *w > topology.max_delay) {
            // Said first, so that cutting the message to 1 KiB keeps it.
            text = format!(
                "Retry-After of {}s cut to --max-delay ({}); {text}",
                asked.as_secs(),
                crate::duration::Short(topology.max_delay)
            );
        }
        set.push((
            headers::ERROR_MESSAGE,
            headers::truncate(&text, headers::MAX_ERROR_MESSAGE).into(),
        ));
    }
    if let Some(reason) = reason {
        set.push((headers::DLQ_REASON, reason.as_str().into()));
    }
    headers::rewrite(&message.headers, &set)
}

/// What a handler call's outcome tells the breaker: a transient failure (a timeout and a panic
/// are transient too) counts against the downstream; a success or a permanent failure means it
/// answered.
fn signal_of(outcome: &Outcome) -> Signal {
    match outcome {
        Outcome::Transient(_) => Signal::Transient,
        _ => Signal::Ok,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handler::http::parse_retry_after;
    use crate::handler::Failure;
    use chrono::TimeZone;
    use proptest::prelude::*;
    use std::time::SystemTime;

    /// 0000-01-01 and 9999-12-31 in epoch milliseconds: the clock's whole RFC 3339 range.
    const CLOCK_MS: std::ops::RangeInclusive<i64> = -62_167_219_200_000..=253_402_300_799_999;

    /// A router for `orders` with one tier and a handler that succeeds, whose producers point
    /// at no broker (nothing here sends); `ordering`: with the waiting log and its producer.
    fn offline_router(ordering: bool) -> Router {
        let mut topology = Topology::new("orders", &[Duration::from_secs(60)]);
        if ordering {
            topology.waiting = Some(Topology::waiting_topic("orders"));
        }
        let cluster = crate::cluster::ClusterConfig {
            brokers: "127.0.0.1:1".into(),
            group: "g".into(),
            kafka: Default::default(),
            topology: topology.clone(),
        };
        let metrics = Arc::new(Metrics::new());
        Router {
            series: metrics.stage_series(&topology),
            topology,
            handler: Arc::new(handler::handler_fn(|_| async { Outcome::Success })),
            producer: Producer::new(&cluster).expect("producer"),
            metrics: metrics.clone(),
            handler_timeout: Duration::from_secs(1),
            abandon: CancellationToken::new(),
            signals: Default::default(),
            exactly_once: false,
            waiting_producer: ordering
                .then(|| Producer::ordered(&cluster, metrics).expect("producer")),
            waiting_record_room: 4096,
        }
    }

    /// The loop allocates a job's future, and moves it into that allocation, once per message
    /// ([`Router::process`]). It must stay small: within glibc's per-thread cache (chunks of up
    /// to 1 032 bytes, `tcache`), and so cheap to copy. It was 2 456 bytes while a failure's
    /// awaits (the copy, the waiting log) were inline in it, which put every message through
    /// the allocator's slow path (`_int_malloc`, `_int_free`) and a 2.4 KB copy.
    #[test]
    fn a_jobs_future_stays_small() {
        let router = Arc::new(offline_router(true));
        let (tp, message) = message(Stage::Main);
        // The future's type, so its size, is the same whatever the job.
        let job = Job {
            tp,
            epoch: 1,
            message,
            intake: Intake::Fresh,
        };
        let future = router.process(job, None);
        let size = std::mem::size_of_val(&future);
        assert!(size <= 1024, "a job's future is {size} bytes");
    }

    /// A call's deadline (`--handler-timeout`, 1 s here) counts from the start the loop gives
    /// the job (it polls the job at once), else from the job's first poll (a job queued for a
    /// thread): a handler that takes 20 ms succeeds when nothing is given, and times out when
    /// the job is said to have started 2 s before.
    #[tokio::test]
    async fn a_calls_deadline_counts_from_the_start_given_else_from_its_first_poll() {
        let mut router = offline_router(false);
        router.handler = Arc::new(handler::handler_fn(|_| async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            Outcome::Success
        }));
        let router = Arc::new(router);
        let (tp, message) = message(Stage::Main);
        let job = || Job {
            tp,
            epoch: 1,
            message: message.clone(),
            intake: Intake::Fresh,
        };
        let done = router.clone().process(job(), None).await;
        assert_eq!(done.finish, Finish::Done);
        assert_eq!(router.series(tp).handled("transient").get(), 0);
        // Stopping: the timed-out call's copy is handed back at once, not produced (no broker).
        router.abandon.cancel();
        let long_ago = tokio::time::Instant::now() - Duration::from_secs(2);
        let done = router.clone().process(job(), Some(long_ago)).await;
        assert_eq!(done.signal, Some(Signal::Transient));
        assert_eq!(router.series(tp).handled("transient").get(), 1);
    }

    /// `--ordering key`: a follower that may be too large for the waiting log is not enqueued
    /// (it takes the awaited path, holding its key); a smaller one is.
    #[test]
    fn a_follower_that_may_be_too_large_is_not_enqueued() {
        let router = offline_router(true);
        let (tp, mut m) = message(Stage::Main);
        m.key = Some(b"k".to_vec());
        let job = Job {
            tp,
            epoch: 1,
            message: m,
            intake: Intake::Follow,
        };
        assert!(router.enqueue_follow(&job, 1000).is_ok());
        assert!(
            router
                .enqueue_follow(&job, 4096 - WAITING_RECORD_EXTRA)
                .is_ok(),
            "at the limit"
        );
        let refused = router.enqueue_follow(&job, 4096 - WAITING_RECORD_EXTRA + 1);
        assert!(
            matches!(refused, Err(KafkaError::MessageProduction(c)) if c == rdkafka::types::RDKafkaErrorCode::MessageSizeTooLarge),
            "over it"
        );
    }

    fn message(stage: Stage) -> (Tp, Message) {
        let tp = Tp {
            stage,
            partition: 0,
        };
        let m = Message {
            topic: "orders".into(),
            partition: 0,
            offset: 7,
            key: None,
            payload: None,
            headers: vec![],
            timestamp: Some(1),
            attempt: 0,
        };
        (tp, m)
    }

    /// A `Retry-After` as a server may send it: delay-seconds (any size, the absurd
    /// 999999999999 included), more digits than a u64 holds, or an HTTP date up to 9999.
    fn retry_after() -> impl Strategy<Value = Option<String>> {
        prop_oneof![
            Just(None),
            any::<u64>().prop_map(|s| Some(s.to_string())),
            Just(Some("999999999999".to_string())),
            Just(Some("99999999999999999999999".to_string())),
            (0u64..253_402_300_799).prop_map(|s| Some(httpdate::fmt_http_date(
                SystemTime::UNIX_EPOCH + Duration::from_secs(s)
            ))),
            Just(Some("Fri, 31 Dec 9999 23:59:59 GMT".to_string())),
        ]
    }

    proptest! {
        /// Every retry rebound writes is one it accepts when it reads it back, at any clock,
        /// with any tiers, jitter, `--max-delay` and `Retry-After`: its headers parse, and its
        /// `process_after` is within `--max-delay` of the write, so it is never dead-lettered
        /// as `process_after_too_far` by rebound itself. It is never earlier than its tier's
        /// delay minus jitter, nor than `Retry-After` cut to `--max-delay` (except where the
        /// calendar ends, 9999-12-31).
        #[test]
        fn every_retry_rebound_writes_it_reads_back_and_admits(
            first_ms in 1u64..=86_400_000,
            steps in proptest::collection::vec(1u64..=10_000_000_000, 0..4),
            jitter in 0.0f64..=0.5,
            unit in -1.0f64..=1.0,
            extra_ms in proptest::option::of(0u64..=u64::MAX / 2),
            retry_after in retry_after(),
            clock_ms in CLOCK_MS,
            prior in 0u32..300,
            from_main in any::<bool>(),
        ) {
            let mut delays = vec![Duration::from_millis(first_ms)];
            for s in steps {
                let next = *delays.last().unwrap() + Duration::from_millis(s);
                delays.push(next);
            }
            let mut t = Topology::new("orders", &delays);
            t.max_retries = 1000;
            t.jitter = jitter;
            let longest = delays.last().unwrap().mul_f64(1.0 + jitter);
            if let Some(extra) = extra_ms {
                // Any --max-delay config accepts: at least the last tier with its jitter.
                t.max_delay = longest.saturating_add(Duration::from_millis(extra));
            }
            let now = Utc.timestamp_millis_opt(clock_ms).unwrap();
            let system_now = SystemTime::UNIX_EPOCH
                + Duration::from_millis(u64::try_from(clock_ms).unwrap_or(0));
            let mut f = Failure::new("http_429", "slow down");
            f.retry_after = retry_after.as_deref().and_then(|v| parse_retry_after(v, system_now));
            let outcome = Outcome::Transient(f.clone());
            let (prior, first) = if from_main { (0, None) } else { (prior, Some(now)) };
            let (tp, m) = message(if from_main { Stage::Main } else { Stage::Tier(0) });
            let Route::Retry { tier, due, attempt } = t.route(&outcome, prior, first, now, unit) else {
                return Err(TestCaseError::fail("a transient failure with retries left is retried"));
            };
            let written = failure_headers(&t, tp, &m, &outcome, attempt, first, now, Some(due), None);
            let back = t.read_tier_message(&written, now);
            prop_assert!(back.is_ok(), "{:?} for {:?}", back, written);
            let back = back.unwrap();
            prop_assert_eq!(back.attempt, attempt);
            prop_assert_eq!(back.process_after, due);
            let wanted = f
                .retry_after
                .map_or(Duration::ZERO, |w| w.min(t.max_delay))
                .max(t.tiers[tier].delay.mul_f64(1.0 - jitter));
            let floor = chrono::Duration::from_std(wanted)
                .ok()
                .and_then(|w| now.checked_add_signed(w))
                .unwrap_or(headers::latest_time())
                .min(headers::latest_time());
            prop_assert!(due + chrono::Duration::milliseconds(1) >= floor, "due {due} before {floor}");
            prop_assert!(due - now <= chrono::Duration::from_std(t.max_delay).unwrap_or(chrono::Duration::MAX));
        }
    }

    #[test]
    fn an_absurd_retry_after_is_cut_to_max_delay_and_said_so() {
        let t = Topology::new("orders", &[Duration::from_secs(60)]);
        let now = Utc.with_ymd_and_hms(2026, 11, 30, 12, 0, 0).unwrap();
        let mut f = Failure::new("http_429", "slow down");
        f.retry_after = parse_retry_after("999999999999", SystemTime::now());
        let outcome = Outcome::Transient(f);
        let Route::Retry { due, attempt, .. } = t.route(&outcome, 0, None, now, 0.0) else {
            panic!("retried")
        };
        assert_eq!(
            due,
            now + chrono::Duration::hours(1),
            "cut to the 1 h floor"
        );
        let (tp, m) = message(Stage::Main);
        let hs = failure_headers(&t, tp, &m, &outcome, attempt, None, now, Some(due), None);
        let text = headers::last(&hs, headers::ERROR_MESSAGE)
            .and_then(|h| h.value.clone())
            .unwrap();
        assert!(
            String::from_utf8_lossy(&text)
                .starts_with("Retry-After of 999999999999s cut to --max-delay (1h)"),
            "{}",
            String::from_utf8_lossy(&text)
        );
        assert_eq!(
            headers::last(&hs, headers::PROCESS_AFTER).and_then(|h| h.value.clone()),
            Some(b"2026-11-30T13:00:00.000Z".to_vec())
        );
    }
}

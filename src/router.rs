//! The work for one message: handler → routing decision → acknowledged copy.
//!
//! A [`Job`] runs as its own task and ends in a [`Completion`]. The poll loop marks the offset
//! finished only from a completion whose copy (if any) the broker acknowledged; a job that is
//! stopped before that reports [`Finish::HandedBack`] and its offset stays uncommitted.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures::FutureExt;
use rand::Rng;
use std::panic::AssertUnwindSafe;
use tokio_util::sync::CancellationToken;

use crate::breaker::Signal;
use crate::handler::{self, Handler, Message, Outcome};
use crate::headers::{self, InvalidHeader, RetryState};
use crate::metrics::Metrics;
use crate::produce::{self, ProduceError, Producer, Record};
use crate::topology::{DlqReason, Route, Stage, Topology};

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
    /// From a delay tier, with a routing header that cannot be read.
    Invalid(InvalidHeader),
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
}

impl Router {
    /// The metric series of the stage `tp` belongs to.
    pub fn series(&self, tp: Tp) -> &crate::metrics::StageSeries {
        &self.series[Topology::stage_index(tp.stage)]
    }

    /// Runs the job to its end.
    pub async fn process(self: Arc<Self>, job: Job) -> Completion {
        let Job {
            tp,
            epoch,
            message,
            intake,
        } = job;
        let run = AssertUnwindSafe(self.process_message(tp, &message, intake)).catch_unwind();
        let (finish, signal) = match run.await {
            Ok(done) => done,
            Err(_) => {
                tracing::error!(partition = tp.partition, offset = message.offset,
                    "internal error while routing; the message is handed back and its partition stops committing until restart");
                (Finish::HandedBack, None)
            }
        };
        Completion {
            tp,
            epoch,
            offset: message.offset,
            key: message.key,
            finish,
            signal,
        }
    }

    async fn process_message(
        &self,
        tp: Tp,
        message: &Message,
        intake: Intake,
    ) -> (Finish, Option<Signal>) {
        let label = self.topology.label(tp.stage);
        let (prior, first_failed_at) = match &intake {
            Intake::Fresh => (0, None),
            Intake::Retry(state) => {
                let late = Utc::now().signed_duration_since(state.process_after);
                self.series(tp)
                    .lateness
                    .observe(late.num_microseconds().unwrap_or(i64::MAX) as f64 / 1e6);
                (state.attempt, state.first_failed_at)
            }
            Intake::Invalid(problem) => {
                tracing::warn!(tier = label, partition = tp.partition, offset = message.offset, problem = %problem,
                    "unreadable routing header; dead-lettering as invalid");
                let headers = headers::rewrite(
                    &message.headers,
                    &[
                        (headers::ERROR_KIND, "permanent".into()),
                        (headers::ERROR_CLASS, "invalid_header".into()),
                        (
                            headers::ERROR_MESSAGE,
                            headers::truncate(&problem.to_string(), headers::MAX_ERROR_MESSAGE)
                                .into(),
                        ),
                        (headers::DLQ_REASON, DlqReason::Invalid.as_str().into()),
                    ],
                );
                let finish = self
                    .deliver(tp, message, None, Some(DlqReason::Invalid), headers)
                    .await;
                return (finish, None);
            }
        };

        debug_assert_eq!(
            message.attempt, prior,
            "the poll loop sets the attempt it read"
        );
        let started = Instant::now();
        // At the shutdown deadline a call still running is handed back, not waited for: its
        // offset stays uncommitted and the message is handled again after the restart. The
        // call is polled first, so one that answers at once never touches the cancellation.
        let outcome = tokio::select! {
            biased;
            outcome = handler::call(&self.handler, message, self.handler_timeout) => outcome,
            _ = self.abandon.cancelled() => return (Finish::HandedBack, None),
        };
        let series = self.series(tp);
        series
            .handler_duration
            .observe(started.elapsed().as_secs_f64());
        series.handled(outcome.label()).inc();
        let signal = match outcome {
            Outcome::Transient(_) => Signal::Transient,
            _ => Signal::Ok,
        };
        self.signals
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push((tp, message.offset, signal));

        // A success goes nowhere and needs no clock (`route` does not look at `now` for it).
        let now = match outcome {
            Outcome::Success => DateTime::<Utc>::MIN_UTC,
            _ => Utc::now(),
        };
        let unit = if self.topology.jitter > 0.0 {
            rand::rng().random_range(-1.0..=1.0)
        } else {
            0.0
        };
        let route = self
            .topology
            .route(&outcome, prior, first_failed_at, now, unit);
        let finish = match route {
            Route::Done => {
                tracing::debug!(
                    tier = label,
                    partition = tp.partition,
                    offset = message.offset,
                    "handled"
                );
                Finish::Done
            }
            Route::Retry { tier, due, attempt } => {
                let headers = self.failure_headers(
                    tp,
                    message,
                    &outcome,
                    attempt,
                    first_failed_at,
                    now,
                    Some(due),
                    None,
                );
                tracing::debug!(tier = label, partition = tp.partition, offset = message.offset, attempt,
                    to = %self.topology.tiers[tier].label, due = %headers::format_time(due), "retrying later");
                self.deliver(tp, message, Some(tier), None, headers).await
            }
            Route::Dead { reason, attempt } => {
                let headers = self.failure_headers(
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
                self.deliver(tp, message, None, Some(reason), headers).await
            }
        };
        (finish, Some(signal))
    }

    /// The contract's headers for a failed attempt; the user's headers are kept in front.
    #[allow(clippy::too_many_arguments)]
    fn failure_headers(
        &self,
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
            set.push((
                headers::ERROR_MESSAGE,
                headers::truncate(&f.message, headers::MAX_ERROR_MESSAGE).into(),
            ));
        }
        if let Some(reason) = reason {
            set.push((headers::DLQ_REASON, reason.as_str().into()));
        }
        headers::rewrite(&message.headers, &set)
    }

    /// Produces the copy to a tier (`tier`) or the DLQ (`reason`) and waits for the broker.
    /// A copy the broker rejects for good goes to the DLQ instead, saying why.
    async fn deliver(
        &self,
        tp: Tp,
        message: &Message,
        tier: Option<usize>,
        reason: Option<DlqReason>,
        headers: Vec<headers::Header>,
    ) -> Finish {
        let from = self.topology.label(tp.stage);
        let (topic, to) = match tier {
            Some(i) => (
                self.topology.tiers[i].topic.as_str(),
                self.topology.tiers[i].label.as_str(),
            ),
            None => (self.topology.dlq.as_str(), "dlq"),
        };
        let record = Record {
            topic,
            key: message.key.as_deref(),
            payload: message.payload.as_deref(),
            headers,
        };
        match self.producer.send_acked(&record, &self.abandon).await {
            Ok(_) => {
                self.metrics.routed.with_label_values(&[from, to]).inc();
                if let Some(reason) = reason {
                    self.metrics.dlq.with_label_values(&[reason.as_str()]).inc();
                }
                Finish::Done
            }
            Err(ProduceError::Cancelled) => Finish::HandedBack,
            Err(rejected @ ProduceError::Rejected { .. }) => {
                tracing::error!(from, to, partition = tp.partition, offset = message.offset, error = %rejected,
                    "copy rejected by the broker; dead-lettering with the reason");
                self.deliver_rejected(tp, message, record.headers, &rejected)
                    .await
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

//! The producer that carries retry and DLQ copies, and waits for the broker's acknowledgement.
//!
//! librdkafka already retries transient errors until `message.timeout.ms`; what comes back from
//! it is either permanent (the broker will never take this record) or a timeout. Timeouts and
//! other transient errors are retried here with capped exponential backoff for as long as the
//! service runs — an offset is never committed past a copy that was not acknowledged.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::ConsumerGroupMetadata;
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::TopicPartitionList;
use tokio_util::sync::CancellationToken;

use crate::cluster::ClusterConfig;
use crate::headers::Header;
use crate::kafka::{self, ProducerContext};
use crate::metrics::Metrics;

/// Why a copy could not be delivered.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProduceError {
    /// The broker refuses this record for good (too large, invalid, not authorized, …).
    #[error("the broker rejected the record ({code:?}): {detail}")]
    Rejected {
        code: RDKafkaErrorCode,
        detail: String,
    },
    /// Not written, for a reason a retry may fix or that is not the record's (only from
    /// [`PendingAck::acked`]; [`Producer::send_acked`] retries those itself).
    #[error("the record was not acknowledged: {detail}")]
    Failed { detail: String },
    /// The service is stopping; the copy may or may not have been written.
    #[error("stopped before the broker acknowledged the record")]
    Cancelled,
}

/// A copy to produce. Key and payload are the original bytes.
#[derive(Debug)]
pub struct Record<'a> {
    pub topic: &'a str,
    pub key: Option<&'a [u8]>,
    pub payload: Option<&'a [u8]>,
    pub headers: Vec<Header>,
    /// The partition, when the record must go to one (the waiting log of `--ordering key`);
    /// `None`: the producer's partitioner chooses (by key).
    pub partition: Option<i32>,
    /// The record's timestamp (ms since the epoch); `None`: the time of producing.
    pub timestamp: Option<i64>,
}

/// A record enqueued by [`Producer::enqueue_acked`], not acknowledged yet.
pub struct PendingAck {
    delivery: rdkafka::producer::DeliveryFuture,
}

impl PendingAck {
    /// Waits for the broker: the record's (partition, offset), or the error it ended with
    /// (`Rejected` for one no retry will fix, [`is_permanent`]; `Failed` for any other, e.g. the
    /// producer's fatal state or its purge when it is dropped). `Cancelled` when `stop` is
    /// cancelled first: the record may still be written.
    pub async fn acked(self, stop: &CancellationToken) -> Result<(i32, i64), ProduceError> {
        let result = tokio::select! {
            result = self.delivery => result,
            _ = stop.cancelled() => return Err(ProduceError::Cancelled),
        };
        match result {
            Ok(Ok(delivery)) => Ok((delivery.partition, delivery.offset)),
            Ok(Err((error, _))) => match error.rdkafka_error_code() {
                Some(code) if is_permanent(code) => Err(ProduceError::Rejected {
                    code,
                    detail: error.to_string(),
                }),
                _ => Err(ProduceError::Failed {
                    detail: error.to_string(),
                }),
            },
            Err(_) => Err(ProduceError::Failed {
                detail: "the producer was dropped before it reported".into(),
            }),
        }
    }
}

/// Shared by every in-flight message; cheap to clone.
#[derive(Clone)]
pub struct Producer {
    inner: Arc<FutureProducer<ProducerContext>>,
}

/// `transaction.timeout.ms` of the `--exactly-once` producer unless the user sets it.
pub const DEFAULT_TRANSACTION_TIMEOUT_MS: u64 = 10_000;

/// librdkafka's record for `record` (its headers copied).
fn future_record<'a>(record: &Record<'a>) -> FutureRecord<'a, [u8], [u8]> {
    let mut fr = FutureRecord::to(record.topic).headers(kafka::to_owned_headers(&record.headers));
    if let Some(k) = record.key {
        fr = fr.key(k);
    }
    if let Some(p) = record.payload {
        fr = fr.payload(p);
    }
    if let Some(p) = record.partition {
        fr = fr.partition(p);
    }
    if let Some(t) = record.timestamp {
        fr = fr.timestamp(t);
    }
    fr
}

/// Errors that no retry will fix.
pub fn is_permanent(code: RDKafkaErrorCode) -> bool {
    use RDKafkaErrorCode::*;
    matches!(
        code,
        MessageSizeTooLarge
            | MessageBatchTooLarge
            | InvalidMessage
            | InvalidMessageSize
            | InvalidRecord
            | InvalidRequiredAcks
            | TopicAuthorizationFailed
            | ClusterAuthorizationFailed
            | InvalidTopic
            | UnsupportedForMessageFormat
            | InvalidArgument
            | BadMessage
    )
}

/// Whether a transactional error ends the producer, so that aborting cannot recover it: a fatal
/// librdkafka state, or fenced (a newer producer with the same `transactional.id`, KIP-98, or
/// an older group generation, KIP-447).
pub fn txn_fatal(e: &KafkaError) -> bool {
    let code = e.rdkafka_error_code();
    matches!(e, KafkaError::Transaction(t) if t.is_fatal())
        || code == Some(RDKafkaErrorCode::ProducerFenced)
        || code == Some(RDKafkaErrorCode::InvalidProducerEpoch)
}

/// Errors that say the record is too large (the broker's or the client's size limit).
pub fn is_too_large(code: RDKafkaErrorCode) -> bool {
    use RDKafkaErrorCode::*;
    matches!(
        code,
        MessageSizeTooLarge | MessageBatchTooLarge | InvalidMessageSize
    )
}

impl Producer {
    pub fn new(cluster: &ClusterConfig) -> Result<Producer, KafkaError> {
        Producer::create(cluster, None)
    }

    /// A producer whose client errors reach `/readyz` (an outage turns it 503).
    pub fn reporting_to(
        cluster: &ClusterConfig,
        metrics: Arc<Metrics>,
    ) -> Result<Producer, KafkaError> {
        Producer::create(cluster, Some(metrics))
    }

    /// The transactional producer of `--exactly-once` (issue 18), `transactional.id` =
    /// `transactional_id`. [`Producer::init_transactions`] must run before the first
    /// transaction.
    pub fn transactional(
        cluster: &ClusterConfig,
        metrics: Arc<Metrics>,
        transactional_id: &str,
    ) -> Result<Producer, KafkaError> {
        let mut config = kafka::producer_config(cluster);
        config.set("transactional.id", transactional_id);
        // A transaction lives ~100 ms. An instance paused mid-transaction (a zombie) holds the
        // partitions it wrote to, and its pending offsets, from every read_committed reader (the
        // next owner included) until the coordinator aborts it after this timeout: 10 s instead
        // of librdkafka's 60 s. `-X transaction.timeout.ms=` overrides.
        if !cluster
            .kafka
            .0
            .iter()
            .any(|(k, _)| k == "transaction.timeout.ms")
        {
            config.set(
                "transaction.timeout.ms",
                DEFAULT_TRANSACTION_TIMEOUT_MS.to_string(),
            );
        }
        let inner = config.create_with_context(ProducerContext {
            metrics: Some(metrics),
        })?;
        Ok(Producer {
            inner: Arc::new(inner),
        })
    }

    /// The producer of the waiting log of `--ordering key` ([`crate::keyorder`]): idempotent
    /// (`enable.idempotence=true`, so librdkafka's retries keep the order of the records of a
    /// partition, KIP-98) and without a delivery timeout (`message.timeout.ms=0`: a record is
    /// retried until it is written or refused for good, so a later record of a partition is never
    /// written past an earlier one that timed out). Both are set after `-X`, which cannot turn
    /// them off: the order of a key's `follow` records, enqueued without waiting for each other,
    /// rests on them ([`Producer::enqueue_acked`]).
    pub fn ordered(cluster: &ClusterConfig, metrics: Arc<Metrics>) -> Result<Producer, KafkaError> {
        let inner =
            kafka::ordered_producer_config(cluster).create_with_context(ProducerContext {
                metrics: Some(metrics),
            })?;
        Ok(Producer {
            inner: Arc::new(inner),
        })
    }

    fn create(
        cluster: &ClusterConfig,
        metrics: Option<Arc<Metrics>>,
    ) -> Result<Producer, KafkaError> {
        let inner =
            kafka::producer_config(cluster).create_with_context(ProducerContext { metrics })?;
        Ok(Producer {
            inner: Arc::new(inner),
        })
    }

    /// Registers the `transactional.id` with its coordinator, aborting a predecessor's open
    /// transaction and fencing it (KIP-98). Blocking call, run on tokio's blocking pool; waits at
    /// most `timeout`.
    pub async fn init_transactions(&self, timeout: Duration) -> Result<(), KafkaError> {
        kafka::blocking(&self.inner, move |p| p.init_transactions(timeout)).await
    }

    /// Starts a transaction (local to the client; no broker round trip).
    pub fn begin_transaction(&self) -> Result<(), KafkaError> {
        self.inner.begin_transaction()
    }

    /// Enqueues `record` in the open transaction without waiting for its acknowledgement (the
    /// commit waits for every record). An error here is the client's own refusal (too large for
    /// `message.max.bytes`, queue full, transaction in a failed state).
    pub fn enqueue(&self, record: &Record<'_>) -> Result<(), KafkaError> {
        // The delivery future is dropped: the commit reports a failed record.
        self.inner
            .send_result(future_record(record))
            .map(drop)
            .map_err(|(e, _)| e)
    }

    /// Enqueues `record` now and returns what resolves to its (partition, offset) once the broker
    /// acknowledged it, without waiting here: records enqueued one after another are written in
    /// that order within a partition when the producer keeps order ([`Producer::ordered`]).
    /// Errors: the client's own refusal at enqueue (too large for its `message.max.bytes`, its
    /// queue full); nothing was enqueued then.
    pub fn enqueue_acked(&self, record: &Record<'_>) -> Result<PendingAck, KafkaError> {
        self.inner
            .send_result(future_record(record))
            .map(|delivery| PendingAck { delivery })
            .map_err(|(e, _)| e)
    }

    /// Adds `offsets` (the next offsets to read) to the open transaction as the offsets of the
    /// consumer `group` (KIP-447: fenced by the group generation), then commits it. Blocking,
    /// on tokio's blocking pool; each step waits at most `timeout`.
    pub async fn commit_transaction(
        &self,
        offsets: TopicPartitionList,
        group: ConsumerGroupMetadata,
        timeout: Duration,
    ) -> Result<(), KafkaError> {
        kafka::blocking(&self.inner, move |p| {
            if offsets.count() > 0 {
                p.send_offsets_to_transaction(&offsets, &group, timeout)?;
            }
            p.commit_transaction(timeout)
        })
        .await
    }

    /// Commits the open transaction again after a retriable failure of
    /// [`Producer::commit_transaction`] (librdkafka's rule: the same call is repeated).
    pub async fn retry_commit(&self, timeout: Duration) -> Result<(), KafkaError> {
        kafka::blocking(&self.inner, move |p| p.commit_transaction(timeout)).await
    }

    /// [`Producer::commit_transaction`], repeated up to `retries` times while its error is
    /// retriable (librdkafka's rule for a commit that timed out).
    pub async fn commit_transaction_retrying(
        &self,
        offsets: TopicPartitionList,
        group: ConsumerGroupMetadata,
        timeout: Duration,
        retries: u32,
    ) -> Result<(), KafkaError> {
        let retriable =
            |e: &KafkaError| matches!(e, KafkaError::Transaction(t) if t.is_retriable());
        let mut outcome = self.commit_transaction(offsets, group, timeout).await;
        let mut tries = 0;
        while outcome.as_ref().is_err_and(retriable) && tries < retries {
            tries += 1;
            outcome = self.retry_commit(timeout).await;
        }
        outcome
    }

    /// Aborts the open transaction: none of its records become visible to `read_committed`
    /// readers and none of its offsets are committed. Blocking, on tokio's blocking pool.
    pub async fn abort_transaction(&self, timeout: Duration) -> Result<(), KafkaError> {
        kafka::blocking(&self.inner, move |p| p.abort_transaction(timeout)).await
    }

    /// Produces `record` and returns its (partition, offset) once the broker acknowledged it.
    /// Transient failures are retried until `stop` is cancelled.
    pub async fn send_acked(
        &self,
        record: &Record<'_>,
        stop: &CancellationToken,
    ) -> Result<(i32, i64), ProduceError> {
        let mut backoff = Duration::from_millis(100);
        let mut attempt = 0u32;
        loop {
            let fr = future_record(record);
            let error = tokio::select! {
                result = self.inner.send(fr, Duration::from_secs(5)) => match result {
                    Ok(delivery) => return Ok((delivery.partition, delivery.offset)),
                    Err((e, _)) => e,
                },
                _ = stop.cancelled() => return Err(ProduceError::Cancelled),
            };
            let code = error.rdkafka_error_code();
            if let Some(code) = code.filter(|c| is_permanent(*c)) {
                return Err(ProduceError::Rejected {
                    code,
                    detail: error.to_string(),
                });
            }
            attempt += 1;
            tracing::warn!(topic = record.topic, error = %error, attempt, retry_in_ms = backoff.as_millis() as u64,
                "produce failed; retrying");
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = stop.cancelled() => return Err(ProduceError::Cancelled),
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    /// The producer's fatal error, if it has one (librdkafka cannot go on with this instance;
    /// an idempotent producer can reach it, e.g. on a sequence the broker does not expect).
    pub fn fatal_error(&self) -> Option<(RDKafkaErrorCode, String)> {
        self.inner.client().fatal_error()
    }

    /// Waits for every queued copy to be delivered, up to `timeout`.
    pub fn flush(&self, timeout: Duration) {
        if let Err(e) = self.inner.flush(timeout) {
            tracing::warn!(error = %e, "producer flush incomplete");
        }
    }
}

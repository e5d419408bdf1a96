//! The producer that carries retry and DLQ copies, and waits for the broker's acknowledgement.
//!
//! librdkafka already retries transient errors until `message.timeout.ms`; what comes back from
//! it is either permanent (the broker will never take this record) or a timeout. Timeouts and
//! other transient errors are retried here with capped exponential backoff for as long as the
//! service runs — an offset is never committed past a copy that was not acknowledged.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};
use rdkafka::types::RDKafkaErrorCode;
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
}

/// Shared by every in-flight message; cheap to clone.
#[derive(Clone)]
pub struct Producer {
    inner: FutureProducer<ProducerContext>,
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

    fn create(
        cluster: &ClusterConfig,
        metrics: Option<Arc<Metrics>>,
    ) -> Result<Producer, KafkaError> {
        let inner =
            kafka::producer_config(cluster).create_with_context(ProducerContext { metrics })?;
        Ok(Producer { inner })
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
            let mut fr: FutureRecord<'_, [u8], [u8]> =
                FutureRecord::to(record.topic).headers(kafka::to_owned_headers(&record.headers));
            if let Some(k) = record.key {
                fr = fr.key(k);
            }
            if let Some(p) = record.payload {
                fr = fr.payload(p);
            }
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

    /// Waits for every queued copy to be delivered, up to `timeout`.
    pub fn flush(&self, timeout: Duration) {
        if let Err(e) = self.inner.flush(timeout) {
            tracing::warn!(error = %e, "producer flush incomplete");
        }
    }
}

//! librdkafka glue: client configuration, the consumer context, and byte-exact header access.
//!
//! rdkafka's safe header accessors `unwrap()` a header name as UTF-8 and so panic on a message
//! whose header name is not UTF-8. Kafka allows such names, and a retry service must survive
//! them, so headers are read and written here through librdkafka's C API with raw bytes.

use std::ffi::{c_char, c_void, CStr};
use std::ptr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::bindings as rd;
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedHeaders, BorrowedMessage, Message as _, OwnedHeaders};
use rdkafka::metadata::Metadata;
use rdkafka::{ClientConfig, Statistics, TopicPartitionList};
use tokio::sync::mpsc::UnboundedSender;

use crate::cluster::ClusterConfig;
use crate::handler::Message;
use crate::headers::Header;
use crate::metrics::Metrics;

/// Settings common to every client: brokers and the user's `-X` properties.
pub fn base_config(cluster: &ClusterConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &cluster.brokers);
    // librdkafka's `debug` contexts log at debug level, which this filter would drop: a user who
    // asks for them (`-X debug=broker,fetch`) gets them, shown under RUST_LOG=librdkafka=debug.
    let debug = cluster.kafka.0.iter().any(|(k, _)| k == "debug");
    c.set_log_level(if debug {
        RDKafkaLogLevel::Debug
    } else {
        RDKafkaLogLevel::Warning
    });
    c
}

fn apply_user(c: &mut ClientConfig, cluster: &ClusterConfig, role: Role) {
    let foreign: &[&str] = match role {
        Role::Consumer => &PRODUCER_ONLY,
        Role::Producer => &CONSUMER_ONLY,
    };
    for (k, v) in &cluster.kafka.0 {
        if !foreign.contains(&k.as_str()) {
            c.set(k, v);
        }
    }
}

/// The consumer's `fetch.max.bytes` unless the user sets it (librdkafka's default is 50 MB).
pub const DEFAULT_FETCH_MAX_BYTES: u64 = 4 * 1024 * 1024;
/// The consumer's `fetch.wait.max.ms` unless the user sets it (librdkafka's default is 500).
pub const DEFAULT_FETCH_WAIT_MAX_MS: u64 = 20;
/// The consumer's `fetch.queue.backoff.ms` unless the user sets it (librdkafka's default is
/// 1000).
pub const DEFAULT_FETCH_QUEUE_BACKOFF_MS: u64 = 20;

/// The consumer of the whole topology. Offsets are stored by rebound only when work is done and
/// committed by rebound on an interval, on revoke and on shutdown.
pub fn consumer_config(cluster: &ClusterConfig) -> ClientConfig {
    let mut c = base_config(cluster);
    c.set("auto.offset.reset", "earliest")
        .set("statistics.interval.ms", "5000")
        // Tier partitions sit paused most of the time, and what a fetch brought for a partition
        // that is then paused is thrown away. With librdkafka's 50 MB default the resident size
        // grew with the backlog parked in the tiers (a broker that does not honour
        // max.partition.fetch.bytes, like Tansu 0.6, fills the whole fetch). 4 MiB keeps it
        // flat and costs the main topic little (BENCHMARKS.md). `-X fetch.max.bytes=` overrides.
        .set("fetch.max.bytes", DEFAULT_FETCH_MAX_BYTES.to_string())
        // librdkafka keeps one fetch request in flight per broker, and a broker holds it up to
        // fetch.wait.max.ms while the partitions in it have no new data (idle main topic). A
        // tier partition resumed meanwhile waits for that request to come back before its own
        // fetch is sent, so what sits behind its head is late by up to this wait: with
        // librdkafka's 500 ms, retries were handled 264 ms late at the median (BENCHMARKS.md).
        // 20 ms costs an idle consumer 50 small requests per second and broker.
        .set("fetch.wait.max.ms", DEFAULT_FETCH_WAIT_MAX_MS.to_string())
        // When the messages librdkafka has fetched and the loop has not taken yet pass
        // queued.min.messages (100 000) or queued.max.messages.kbytes (64 MiB), librdkafka
        // postpones the next fetch by fetch.queue.backoff.ms. With its 1 s default, a loop
        // catching up on a backlog drained that queue in a fraction of it and then waited out
        // the rest for nothing: pass-through ran at 0.15x of a plain loop at bench scale 0.2,
        // stalled 0.8 s per run (BENCHMARKS.md). The queue bounds (memory) are unchanged; the
        // cost is a re-check every 20 ms while the queue is full, with no request sent.
        .set(
            "fetch.queue.backoff.ms",
            DEFAULT_FETCH_QUEUE_BACKOFF_MS.to_string(),
        );
    apply_user(&mut c, cluster, Role::Consumer);
    // librdkafka refuses a fetch.max.bytes below message.max.bytes: a user who raised the
    // latter for large records gets a fetch size to match, unless they chose one.
    let user = |k: &str| cluster.kafka.0.iter().rev().find(|(key, _)| key == k);
    if user("fetch.max.bytes").is_none() {
        if let Some(max) = user("message.max.bytes").and_then(|(_, v)| v.trim().parse::<u64>().ok())
        {
            if max > DEFAULT_FETCH_MAX_BYTES {
                c.set("fetch.max.bytes", max.to_string());
            }
        }
    }
    c.set("group.id", &cluster.group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("isolation.level", "read_committed");
    c
}

/// The consumer of `rebound run`: [`consumer_config`] joined with `protocol` (see
/// [`crate::group`]) and, for a static member (KIP-345), `group.instance.id`.
pub fn group_consumer_config(
    cluster: &ClusterConfig,
    protocol: &crate::group::Protocol,
    instance_id: Option<&str>,
) -> ClientConfig {
    let mut c = consumer_config(cluster);
    for (k, v) in protocol.properties() {
        c.set(k, v);
    }
    if let Some(id) = instance_id {
        c.set("group.instance.id", id);
    }
    c
}

/// The producer of retry and DLQ copies: acknowledged by all in-sync replicas.
pub fn producer_config(cluster: &ClusterConfig) -> ClientConfig {
    let mut c = base_config(cluster);
    c.set("acks", "all").set("linger.ms", "5");
    apply_user(&mut c, cluster, Role::Producer);
    c
}

/// The waiting log's producer ([`crate::produce::Producer::ordered`]): the copies' producer
/// with `enable.idempotence=true` and `message.timeout.ms=0`, set after every `-X` property.
pub fn ordered_producer_config(cluster: &ClusterConfig) -> ClientConfig {
    let mut c = producer_config(cluster);
    c.set("enable.idempotence", "true")
        .set("message.timeout.ms", "0");
    c
}

/// The number the user set for librdkafka property `key`, if any.
fn user_number(cluster: &ClusterConfig, key: &str) -> Option<i64> {
    cluster.kafka.get(key)?.trim().parse().ok()
}

/// librdkafka's default `batch.size` (bytes).
const DEFAULT_BATCH_SIZE: i64 = 1_000_000;
/// Room kept under a topic's `max.message.bytes` for the batch framing (Kafka's record batch
/// header is 61 bytes) and librdkafka's estimate of it.
const BATCH_FRAMING: i64 = 512;

/// `cluster` with `batch.size` lowered so that a batch of a producer fits `limit`, the smallest
/// `max.message.bytes` of the topics it writes to ([`crate::topics::Plan::record_limit`]). The
/// broker refuses a whole batch that is over its topic's limit, so without this a record too
/// large for a topic would take the records batched with it down too; librdkafka applies
/// `batch.size` after a batch's first record, so only a record too large on its own is refused
/// then. Returns the lowered configuration and its `batch.size`, or `None` when the user's (or
/// librdkafka's default) already fits.
pub fn cap_batch(cluster: &ClusterConfig, limit: Option<i64>) -> Option<(ClusterConfig, i64)> {
    let cap = (limit? - BATCH_FRAMING).max(1);
    let current = user_number(cluster, "batch.size").unwrap_or(DEFAULT_BATCH_SIZE);
    if current <= cap {
        return None;
    }
    let mut capped = cluster.clone();
    capped.kafka.0.retain(|(k, _)| k != "batch.size");
    capped.kafka.0.push(("batch.size".into(), cap.to_string()));
    Some((capped, cap))
}

/// librdkafka's default `message.max.bytes` (bytes).
const DEFAULT_MESSAGE_MAX_BYTES: i64 = 1_000_000;

/// The largest record (bytes, framing included) a producer of `cluster` can be sure to write to
/// a topic whose `max.message.bytes` is `topic_limit` (`None`: not known): the smaller of that
/// and the client's own `message.max.bytes`, less [`BATCH_FRAMING`]. `--ordering key` writes
/// larger followers the awaited way, holding their key, so that one refused for its size
/// leaves no later record of its key written before it is dead-lettered.
pub fn record_room(cluster: &ClusterConfig, topic_limit: Option<i64>) -> usize {
    let client = user_number(cluster, "message.max.bytes").unwrap_or(DEFAULT_MESSAGE_MAX_BYTES);
    let limit = topic_limit.map_or(client, |t| t.min(client));
    usize::try_from(limit - BATCH_FRAMING).unwrap_or(0)
}

/// The admin client's settings: brokers and every `-X` property.
pub fn admin_config(cluster: &ClusterConfig) -> ClientConfig {
    let mut c = base_config(cluster);
    for (k, v) in &cluster.kafka.0 {
        c.set(k, v);
    }
    c
}

/// Which client a property list is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Consumer,
    Producer,
}

/// Well-known properties that only one kind of client understands. The other client is not
/// given them, so that librdkafka does not warn about `-X fetch.wait.max.ms` on the producer.
const CONSUMER_ONLY: [&str; 7] = [
    "fetch.wait.max.ms",
    "fetch.queue.backoff.ms",
    "fetch.min.bytes",
    "fetch.max.bytes",
    "max.partition.fetch.bytes",
    "queued.min.messages",
    "session.timeout.ms",
];
const PRODUCER_ONLY: [&str; 7] = [
    "acks",
    "linger.ms",
    "batch.num.messages",
    "batch.size",
    "compression.type",
    "message.timeout.ms",
    "enable.idempotence",
];

/// The owned [`Message`] a handler is given for a record read from `topic` (its name, which
/// the caller has read once: rdkafka looks it up and checks its UTF-8 on each call): key,
/// payload and headers copied out of librdkafka's buffer, so a handler may keep it past the
/// poll; `attempt` is 0 (the poll loop sets a tier message's from its headers).
#[inline]
pub fn owned_message(m: &BorrowedMessage<'_>, topic: &str) -> Message {
    Message {
        topic: topic.to_string(),
        partition: m.partition(),
        offset: m.offset(),
        key: m.key().map(<[u8]>::to_vec),
        payload: m.payload().map(<[u8]>::to_vec),
        headers: read_headers(m.headers()),
        timestamp: m.timestamp().to_millis(),
        attempt: 0,
    }
}

/// Reads every header byte for byte, in order, duplicates included.
pub fn read_headers(headers: Option<&BorrowedHeaders>) -> Vec<Header> {
    let Some(h) = headers else {
        return Vec::new();
    };
    let native = h as *const BorrowedHeaders as *const rd::rd_kafka_headers_t;
    let mut out = Vec::new();
    let mut idx = 0;
    loop {
        let mut name: *const c_char = ptr::null();
        let mut value: *const c_void = ptr::null();
        let mut size: usize = 0;
        // SAFETY: `native` is the live header list behind `h`; librdkafka returns pointers into
        // it that stay valid while `h` is borrowed, and we copy them before returning.
        let err =
            unsafe { rd::rd_kafka_header_get_all(native, idx, &mut name, &mut value, &mut size) };
        if err != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR || name.is_null() {
            break;
        }
        let name = unsafe { CStr::from_ptr(name) }.to_bytes().to_vec();
        let value = if value.is_null() {
            None
        } else {
            Some(unsafe { std::slice::from_raw_parts(value as *const u8, size) }.to_vec())
        };
        out.push(Header { name, value });
        idx += 1;
    }
    out
}

/// Builds librdkafka headers from raw `(name, value)` pairs, names not required to be UTF-8.
pub fn to_owned_headers(headers: &[Header]) -> OwnedHeaders {
    let owned = OwnedHeaders::new_with_capacity(headers.len().max(1));
    let native = owned.as_borrowed() as *const BorrowedHeaders as *mut rd::rd_kafka_headers_t;
    for h in headers {
        let (value, size) = match &h.value {
            Some(v) => (v.as_ptr() as *const c_void, v.len() as isize),
            None => (ptr::null(), 0),
        };
        // SAFETY: `owned` is a writable header list we own; librdkafka copies name and value.
        unsafe {
            rd::rd_kafka_header_add(
                native,
                h.name.as_ptr() as *const c_char,
                h.name.len() as isize,
                value,
                size,
            );
        }
    }
    owned
}

/// Sets the offset of the one partition in `list` without the lookups (and allocations) of
/// `TopicPartitionList::set_partition_offset`. Fails unless `list` holds exactly one partition.
pub fn set_only_offset(list: &mut TopicPartitionList, offset: i64) -> Result<(), KafkaError> {
    if list.count() != 1 {
        return Err(KafkaError::SetPartitionOffset(
            rdkafka::types::RDKafkaErrorCode::InvalidArgument,
        ));
    }
    // SAFETY: the list is ours and holds one element, so `elems` points at a valid element;
    // only its offset field is written.
    unsafe {
        let native = list.ptr();
        (*(*native).elems).offset = offset;
    }
    Ok(())
}

/// A change of assignment, seen by the poll loop right after the consumer saw it.
#[derive(Debug)]
pub enum RebalanceEvent {
    /// Added to the assignment (already assigned and resumed).
    Assigned(Vec<(String, i32)>),
    /// Already given up (lost, or the consumer is closing): drop their state.
    Revoked(Vec<(String, i32)>),
    /// To be given up by the loop once their running jobs finished or a deadline passed: the
    /// loop commits them and calls `incremental_unassign` (`unassign` with an eager assignor).
    Revoking(Vec<(String, i32)>),
}

fn partitions(tpl: &TopicPartitionList) -> Vec<(String, i32)> {
    tpl.elements()
        .iter()
        .map(|e| (e.topic().to_string(), e.partition()))
        .collect()
}

/// The consumer's context: logs through `tracing`, hands revokes to the poll loop, resumes on
/// assign, and turns librdkafka statistics into the lag gauge.
pub struct TopologyContext {
    pub events: UnboundedSender<RebalanceEvent>,
    pub metrics: Arc<Metrics>,
    /// Set by the loop before it closes the consumer: revokes are then answered at once.
    pub closing: std::sync::atomic::AtomicBool,
}

impl TopologyContext {
    pub fn new(events: UnboundedSender<RebalanceEvent>, metrics: Arc<Metrics>) -> Self {
        TopologyContext {
            events,
            metrics,
            closing: std::sync::atomic::AtomicBool::new(false),
        }
    }
}

impl ClientContext for TopologyContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        log_rdkafka(level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        note_client_error(&self.metrics, &error, reason);
    }

    fn stats(&self, stats: Statistics) {
        if stats.brokers.values().any(|b| b.state == "UP")
            && self
                .metrics
                .health
                .brokers_down
                .swap(false, Ordering::Relaxed)
        {
            tracing::info!("brokers reachable again");
        }
        for (topic, t) in &stats.topics {
            for (p, part) in &t.partitions {
                if *p < 0 || part.consumer_lag < 0 {
                    continue;
                }
                self.metrics.set_lag(topic, *p, part.consumer_lag);
            }
        }
    }
}

impl ConsumerContext for TopologyContext {
    /// Replaces rdkafka's default, which gives revoked partitions up inside the callback. The
    /// callback runs inside the consumer's poll, on the loop that also receives the jobs'
    /// completions, so it cannot wait for them. Instead a revoke is handed to the loop
    /// ([`RebalanceEvent::Revoking`]) and librdkafka is answered later, from the loop
    /// (`incremental_unassign`): librdkafka keeps the group waiting for that call (heartbeats go
    /// on) and nothing blocks. Lost partitions, and revokes while closing, are answered here.
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: rd::rd_kafka_resp_err_t,
        tpl: &mut TopicPartitionList,
    ) {
        use rd::rd_kafka_resp_err_t::*;
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        match err {
            RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let assigned = if cooperative {
                    consumer.incremental_assign(tpl)
                } else {
                    consumer.assign(tpl)
                };
                if let Err(e) = assigned {
                    tracing::warn!(error = %e, "taking the assigned partitions failed");
                }
                // librdkafka remembers a paused flag across a rebalance that gives a partition
                // back; rebound's own pause state starts empty for a new assignment.
                if let Err(e) = consumer.resume(tpl) {
                    tracing::warn!(error = %e, "resume after assignment failed");
                }
                let _ = self.events.send(RebalanceEvent::Assigned(partitions(tpl)));
            }
            RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let lost = consumer.assignment_lost();
                if !lost
                    && !self.closing.load(Ordering::Relaxed)
                    && self
                        .events
                        .send(RebalanceEvent::Revoking(partitions(tpl)))
                        .is_ok()
                {
                    return;
                }
                if !lost {
                    // Offsets are stored only for finished work.
                    match consumer.commit_consumer_state(rdkafka::consumer::CommitMode::Sync) {
                        Ok(())
                        | Err(KafkaError::ConsumerCommit(
                            rdkafka::types::RDKafkaErrorCode::NoOffset,
                        )) => {}
                        Err(e) => {
                            tracing::warn!(error = %e, "commit before revoke failed; the next owner may repeat some work")
                        }
                    }
                } else {
                    tracing::warn!(partitions = tpl.count(), "partitions lost (the group moved on without this member); their running work will be repeated by the next owner");
                }
                let given_up = if cooperative {
                    consumer.incremental_unassign(tpl)
                } else {
                    consumer.unassign()
                };
                if let Err(e) = given_up {
                    tracing::warn!(error = %e, "giving up revoked partitions failed");
                }
                let _ = self.events.send(RebalanceEvent::Revoked(partitions(tpl)));
            }
            other => {
                // As librdkafka's documentation asks of a rebalance error: drop the assignment.
                tracing::warn!(error = ?other, "rebalance error");
                let _ = if cooperative {
                    consumer.incremental_unassign(tpl)
                } else {
                    consumer.unassign()
                };
                let _ = self.events.send(RebalanceEvent::Revoked(partitions(tpl)));
            }
        }
    }
}

/// Routes librdkafka's own log lines into `tracing`.
pub fn log_rdkafka(level: RDKafkaLogLevel, fac: &str, message: &str) {
    use RDKafkaLogLevel::*;
    match level {
        Emerg | Alert | Critical | Error => tracing::error!(target: "librdkafka", fac, "{message}"),
        Warning => tracing::warn!(target: "librdkafka", fac, "{message}"),
        Notice | Info => tracing::info!(target: "librdkafka", fac, "{message}"),
        Debug => tracing::debug!(target: "librdkafka", fac, "{message}"),
    }
}

/// Displays a [`KafkaError`] without the property value a configuration error carries.
///
/// rdkafka prints `ClientConfig` errors as `desc key value`, so a refused `-X sasl.password=…`
/// (or a secret under a misspelt key, or one this build does not support) would print the
/// secret. librdkafka's own description already quotes a value when the value is the problem
/// ("Invalid value \"x\" for configuration property …"), and never for string properties
/// such as passwords, so the value is left out here.
pub struct Shown<'a>(pub &'a KafkaError);

impl std::fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            KafkaError::ClientConfig(_, desc, key, _) => {
                write!(f, "client configuration error: {desc} (property {key})")
            }
            other => write!(f, "{other}"),
        }
    }
}

/// Logs a client error; when it says every broker is unreachable, `/readyz` turns 503 until
/// the consumer's statistics show a broker up again.
///
/// Called from three places, because librdkafka reports an outage to whichever client notices:
/// the consumer's context, the errors a consumer's `recv()` returns (rdkafka hands a consumer's
/// error events to the application, never to its context), and the retry/DLQ producer's context
/// (the consumer is not polled while `--max-in-flight` jobs wait on the producer).
pub fn note_client_error(metrics: &Metrics, error: &KafkaError, reason: &str) {
    if matches!(
        error.rdkafka_error_code(),
        Some(rdkafka::types::RDKafkaErrorCode::AllBrokersDown)
    ) {
        if !metrics.health.brokers_down.swap(true, Ordering::Relaxed) {
            tracing::error!(error = %error, reason, "every broker is unreachable; retrying");
        }
    } else {
        tracing::warn!(error = %error, reason, "kafka client error");
    }
}

/// The context of rebound's retry/DLQ producer: logs, and reports an outage to `/readyz`.
pub struct ProducerContext {
    /// `None` outside `rebound run` (e.g. `replay-dlq`).
    pub metrics: Option<Arc<Metrics>>,
}

impl ClientContext for ProducerContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        log_rdkafka(level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        match &self.metrics {
            Some(m) => note_client_error(m, &error, reason),
            None => tracing::warn!(error = %error, reason, "kafka client error"),
        }
    }
}

/// A producer context that logs through `tracing`.
pub struct LoggingContext;

impl ClientContext for LoggingContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        log_rdkafka(level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(error = %error, reason, "kafka client error");
    }
}

impl ConsumerContext for LoggingContext {}

/// The brokers did not answer a metadata request (after [`METADATA_TRIES`] tries).
#[derive(Debug, thiserror::Error)]
#[error("cannot reach the brokers at {brokers}: {}", Shown(.error))]
pub struct Unreachable {
    /// The bootstrap brokers tried.
    pub brokers: String,
    /// The last error.
    pub error: KafkaError,
}

/// How often [`metadata`] asks before the brokers count as unreachable.
pub const METADATA_TRIES: u32 = 3;

/// The cluster's metadata (every topic), asked for by a throw-away consumer of `cluster`'s
/// settings, up to [`METADATA_TRIES`] times with `timeout` each. librdkafka's metadata request
/// blocks its thread, so it runs on tokio's blocking pool, off the async workers.
pub async fn metadata(cluster: &ClusterConfig, timeout: Duration) -> Result<Metadata, Unreachable> {
    let mut last = None;
    for attempt in 0..METADATA_TRIES {
        let config = consumer_config(cluster);
        let lookup = tokio::task::spawn_blocking(move || {
            let client: BaseConsumer<LoggingContext> =
                config.create_with_context(LoggingContext)?;
            client.fetch_metadata(None, timeout)
        });
        match lookup.await {
            Ok(Ok(md)) => return Ok(md),
            Ok(Err(e)) => {
                tracing::warn!(error = %Shown(&e), brokers = %cluster.brokers, attempt, "cannot fetch metadata yet");
                last = Some(e);
            }
            Err(join) => tracing::warn!(error = %join, "metadata lookup task failed"),
        }
    }
    Err(Unreachable {
        brokers: cluster.brokers.clone(),
        error: last.unwrap_or(KafkaError::NoMessageReceived),
    })
}

/// The partitions of `topic` in `md`, sorted; `None` when the topic does not exist (or has an
/// error, or no partitions).
pub fn partitions_of(md: &Metadata, topic: &str) -> Option<Vec<i32>> {
    md.topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty())
        .map(|t| {
            let mut ps: Vec<i32> = t.partitions().iter().map(|p| p.id()).collect();
            ps.sort_unstable();
            ps
        })
}

/// Runs a blocking librdkafka call (watermarks, committed offsets, a synchronous commit) on
/// tokio's blocking pool with a shared handle to the client, so that it does not hold up an
/// async worker thread.
pub async fn blocking<C, T>(client: &Arc<C>, call: impl FnOnce(&C) -> T + Send + 'static) -> T
where
    C: Send + Sync + 'static,
    T: Send + 'static,
{
    let client = client.clone();
    match tokio::task::spawn_blocking(move || call(&client)).await {
        Ok(v) => v,
        Err(join) => match join.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            // Only when the runtime shuts down under the call.
            Err(join) => panic!("a blocking librdkafka call was cancelled: {join}"),
        },
    }
}

/// What the broker offers (the KIP-848 consumer group protocol, transactions), from one
/// `ApiVersions` request ([`crate::probe`]); `None` when not known: a TLS or SASL listener (the probe speaks plaintext
/// only) or no answer.
pub async fn probe_features(cluster: &ClusterConfig) -> Option<crate::probe::BrokerFeatures> {
    let plaintext = cluster
        .kafka
        .0
        .iter()
        .rev()
        .find(|(k, _)| k == "security.protocol")
        .is_none_or(|(_, v)| v.trim().eq_ignore_ascii_case("plaintext"));
    if !plaintext {
        return None;
    }
    let brokers = cluster.brokers.clone();
    let probed = tokio::task::spawn_blocking(move || {
        crate::probe::api_versions(&brokers, Duration::from_secs(5))
    })
    .await;
    match probed {
        Ok(Ok(features)) => Some(features),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "cannot ask the broker what it offers (group protocols, transactions)");
            None
        }
        Err(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::KafkaProps;
    use crate::topology::Topology;
    use rdkafka::consumer::BaseConsumer;
    use rdkafka::message::Headers;
    use std::time::Duration;

    fn cluster(props: &[(&str, &str)]) -> ClusterConfig {
        ClusterConfig {
            brokers: "127.0.0.1:1".into(),
            group: "g".into(),
            kafka: KafkaProps(
                props
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            topology: Topology::new("t", &[Duration::from_secs(60)]),
        }
    }

    #[test]
    fn a_batch_is_capped_and_a_record_sized_under_the_smallest_topic_limit() {
        let plain = cluster(&[]);
        assert!(cap_batch(&plain, None).is_none());
        // Kafka's default max.message.bytes takes librdkafka's default batch.size.
        assert!(cap_batch(&plain, Some(1_048_588)).is_none());
        let (capped, size) = cap_batch(&plain, Some(4096)).expect("capped");
        assert_eq!(size, 4096 - 512);
        assert_eq!(
            producer_config(&capped).get("batch.size"),
            Some("3584"),
            "the producer gets it"
        );
        assert_eq!(record_room(&plain, None), 1_000_000 - 512);
        assert_eq!(record_room(&plain, Some(4096)), 4096 - 512);
        assert_eq!(
            record_room(&cluster(&[("message.max.bytes", "2000")]), Some(1_048_588)),
            2000 - 512
        );
        assert_eq!(record_room(&plain, Some(100)), 0);
        let (capped, _) =
            cap_batch(&cluster(&[("batch.size", "100000")]), Some(65_536)).expect("capped");
        assert_eq!(capped.kafka.get("batch.size"), Some("65024"));
        assert!(cap_batch(&cluster(&[("batch.size", "1000")]), Some(65_536)).is_none());
    }

    #[test]
    fn the_waiting_log_producer_keeps_order_whatever_x_says() {
        let user = cluster(&[
            ("enable.idempotence", "false"),
            ("message.timeout.ms", "1000"),
            ("linger.ms", "50"),
        ]);
        let ordered = ordered_producer_config(&user);
        assert_eq!(ordered.get("enable.idempotence"), Some("true"));
        assert_eq!(ordered.get("message.timeout.ms"), Some("0"));
        assert_eq!(ordered.get("acks"), Some("all"));
        // Other -X properties still apply.
        assert_eq!(ordered.get("linger.ms"), Some("50"));
        // The copies' producer is left as the user says.
        assert_eq!(
            producer_config(&user).get("enable.idempotence"),
            Some("false")
        );
        // librdkafka takes the combination.
        let p: Result<rdkafka::producer::BaseProducer, _> =
            ordered_producer_config(&cluster(&[])).create();
        assert!(p.is_ok(), "{:?}", p.err());
    }

    #[test]
    fn fetch_defaults_are_rebounds_own_and_the_user_can_override_them() {
        let get = |key: &str, props: &[(&str, &str)]| {
            consumer_config(&cluster(props))
                .get(key)
                .map(str::to_string)
        };
        let fetch = |props: &[(&str, &str)]| get("fetch.max.bytes", props);
        assert_eq!(fetch(&[]).as_deref(), Some("4194304"));
        for (key, ours, theirs) in [
            ("fetch.wait.max.ms", "20", "500"),
            ("fetch.queue.backoff.ms", "20", "1000"),
        ] {
            assert_eq!(get(key, &[]).as_deref(), Some(ours), "{key}");
            assert_eq!(get(key, &[(key, theirs)]).as_deref(), Some(theirs), "{key}");
        }
        assert_eq!(
            fetch(&[("message.max.bytes", "8000000")]).as_deref(),
            Some("8000000")
        );
        assert_eq!(
            fetch(&[("message.max.bytes", "100000")]).as_deref(),
            Some("4194304")
        );
        assert_eq!(
            fetch(&[
                ("fetch.max.bytes", "1048576"),
                ("message.max.bytes", "8000000")
            ])
            .as_deref(),
            Some("1048576"),
            "the user's own choice is kept (librdkafka then names the conflict)"
        );
        // librdkafka accepts the result (creating a consumer does not connect).
        let consumer: Result<BaseConsumer, _> =
            consumer_config(&cluster(&[("message.max.bytes", "8000000")])).create();
        assert!(consumer.is_ok(), "{:?}", consumer.err());
    }

    proptest::proptest! {
        /// Any header list survives librdkafka byte for byte, names included, as long as no
        /// name holds a NUL byte (see the next test).
        #[test]
        fn any_headers_round_trip_through_librdkafka(
            list in proptest::collection::vec(
                (
                    proptest::collection::vec(1u8..=255, 0..16),
                    proptest::option::of(proptest::collection::vec(proptest::num::u8::ANY, 0..64)),
                ),
                0..10,
            ),
        ) {
            let input: Vec<Header> = list
                .into_iter()
                .map(|(name, value)| Header { name, value })
                .collect();
            proptest::prop_assert_eq!(read_headers(Some(to_owned_headers(&input).as_borrowed())), input);
        }
    }

    #[test]
    fn a_nul_byte_cuts_a_header_name() {
        // librdkafka hands names out as C strings; a known limit, documented in RELIABILITY.md.
        let input = vec![Header {
            name: b"a\0b".to_vec(),
            value: Some(b"v".to_vec()),
        }];
        let read = read_headers(Some(to_owned_headers(&input).as_borrowed()));
        assert_eq!(read[0].name, b"a");
        assert_eq!(read[0].value.as_deref(), Some(&b"v"[..]));
    }

    #[test]
    fn configuration_errors_are_shown_without_the_value() {
        let e = KafkaError::ClientConfig(
            rdkafka::types::RDKafkaConfRes::RD_KAFKA_CONF_UNKNOWN,
            "Configuration property \"sasl.oauthbearer.client.secret\" not supported in this build"
                .into(),
            "sasl.oauthbearer.client.secret".into(),
            "hunter2".into(),
        );
        assert!(
            e.to_string().contains("hunter2"),
            "rdkafka prints the value"
        );
        let shown = Shown(&e).to_string();
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("sasl.oauthbearer.client.secret"), "{shown}");
        let other = KafkaError::NoMessageReceived;
        assert_eq!(Shown(&other).to_string(), other.to_string());
    }

    #[test]
    fn headers_round_trip_byte_for_byte() {
        let input = vec![
            Header::new("a", "1"),
            Header {
                name: vec![0xff, 0xfe, b'k'],
                value: Some(vec![0, 159, 146, 150]),
            },
            Header {
                name: b"null".to_vec(),
                value: None,
            },
            Header::new("a", ""),
        ];
        let owned = to_owned_headers(&input);
        assert_eq!(owned.count(), 4);
        assert_eq!(read_headers(Some(owned.as_borrowed())), input);
        assert!(read_headers(None).is_empty());
    }
}

//! `rebound run` as a library: wire the consumer, the producer, the router and the metrics
//! server together and run until told to stop.
//!
//! ```no_run
//! use std::sync::Arc;
//! use rebound::{handler::{handler_fn, Outcome}, Config, Service, Topology};
//! # async fn example() -> Result<(), rebound::ServiceError> {
//! let topology = Topology::new("orders", &[std::time::Duration::from_secs(120)]);
//! let config = Config::new("127.0.0.1:9092", "orders-worker", topology);
//! let handler = Arc::new(handler_fn(|m| async move {
//!     if m.payload().is_empty() { Outcome::permanent("empty", "no payload") } else { Outcome::Success }
//! }));
//! let stop = tokio_util::sync::CancellationToken::new();
//! Service::new(config, handler).run(stop).await
//! # }
//! ```

use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use tokio_util::sync::CancellationToken;

use crate::cluster::ClusterConfig;
use crate::config::Config;
use crate::handler::Handler;
use crate::kafka::{self, TopologyContext};
use crate::metrics::{self, Metrics};
use crate::pipeline::{Ended, Limits, Pipeline};
use crate::produce::Producer;
use crate::router::Router;

/// Why the service could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// A Kafka client could not be created or failed.
    #[error("kafka client: {}", crate::kafka::Shown(.0))]
    Kafka(#[from] KafkaError),
    /// Topics of the topology do not exist (their names).
    #[error("topics missing: {}; create them with `rebound topics apply` (same flags)", .0.join(", "))]
    MissingTopics(Vec<String>),
    /// The brokers did not answer.
    #[error(transparent)]
    Unreachable(#[from] kafka::Unreachable),
    /// A tier or the DLQ is set up to lose messages (compacted, or retention shorter than a
    /// tier's delay); each line says how to fix it.
    #[error("the topics would lose messages; fix them before starting:\n{}", .0.iter().map(|h| format!("  {h}")).collect::<Vec<_>>().join("\n"))]
    UnsafeTopics(Vec<crate::topics::Hazard>),
    /// A consumer group setting the broker cannot follow (e.g. `group.protocol=consumer` on a
    /// broker without KIP-848).
    #[error("-X: {0}")]
    Group(#[from] crate::group::GroupConflict),
    /// The consumer failed for good (librdkafka's fatal error), other than the one a restarted
    /// static member meets and that rebound waits out.
    #[error("the consumer failed for good: {reason} ({code})")]
    Fatal {
        /// librdkafka's error code.
        code: rdkafka::types::RDKafkaErrorCode,
        /// librdkafka's description.
        reason: String,
    },
    /// `--exactly-once` on a broker without Kafka transactions (no `EndTxn`, or not an Apache
    /// Kafka KRaft cluster, such as Tansu 0.6).
    #[error("--exactly-once needs a broker with Kafka transactions (EndTxn); this one has none ({0}): run without --exactly-once, or on Apache Kafka")]
    NoTransactions(&'static str),
    /// The metrics server could not listen.
    #[error("metrics server cannot listen on {addr}: {error}")]
    MetricsBind {
        /// `--metrics-addr`.
        addr: std::net::SocketAddr,
        /// Why not.
        error: std::io::Error,
    },
}

impl ServiceError {
    /// Whether fixing the configuration (or the topics) is what is needed: exit code 2.
    pub fn is_configuration(&self) -> bool {
        matches!(
            self,
            ServiceError::MissingTopics(_)
                | ServiceError::Group(_)
                | ServiceError::MetricsBind { .. }
                | ServiceError::UnsafeTopics(_)
                | ServiceError::NoTransactions(_)
        )
    }
}

/// A configured retry topology, ready to run.
pub struct Service {
    config: Config,
    handler: Arc<dyn Handler>,
    metrics: Arc<Metrics>,
}

impl Service {
    /// A service of `config` calling `handler`; nothing connects before [`Service::run`].
    pub fn new(config: Config, handler: Arc<dyn Handler>) -> Service {
        Service {
            config,
            handler,
            metrics: Arc::new(Metrics::new()),
        }
    }

    /// The service's metrics (also served on `metrics_addr` when set). Not a stable API: the
    /// tests and the demo read counters from it.
    #[doc(hidden)]
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// Runs until `stop` is cancelled; then finishes or hands back in-flight work, commits and
    /// leaves the group within the configured shutdown timeout.
    pub async fn run(self, stop: CancellationToken) -> Result<(), ServiceError> {
        let Service {
            config,
            handler,
            metrics,
        } = self;
        let cluster = &config.cluster;
        let topology = cluster.topology.clone();
        metrics.init_topology(&topology);
        let server_stop = CancellationToken::new();
        let server = match config.metrics_addr {
            Some(addr) => {
                let (local, task) = metrics::serve(addr, metrics.clone(), server_stop.clone())
                    .await
                    .map_err(|error| ServiceError::MetricsBind { addr, error })?;
                tracing::info!(url = %format!("http://{local}/metrics"), "metrics server listening");
                Some(task)
            }
            None => None,
        };

        let features = kafka::probe_features(cluster).await;
        let choice = crate::group::choose(
            &cluster.kafka.0,
            features
                .as_ref()
                .map(crate::probe::BrokerFeatures::consumer_group_protocol),
        )?;
        if config.membership.exactly_once {
            if let Some(missing) = features
                .as_ref()
                .and_then(crate::probe::BrokerFeatures::transactions_missing)
            {
                return Err(ServiceError::NoTransactions(missing));
            }
        }
        let membership = &config.membership;
        tracing::info!(protocol = %choice.protocol, why = choice.why,
            instance_id = membership.instance_id.as_deref(), "consumer group protocol");
        let consumer_config = kafka::group_consumer_config(
            cluster,
            &choice.protocol,
            membership.instance_id.as_deref(),
        );
        let new_consumer = || -> Result<_, KafkaError> {
            let (events_tx, events_rx) = tokio::sync::mpsc::unbounded_channel();
            let consumer: StreamConsumer<TopologyContext> = consumer_config
                .create_with_context(TopologyContext::new(events_tx, metrics.clone()))?;
            Ok((consumer, events_rx))
        };
        let mut first = Some(new_consumer()?);
        if !check_topics(cluster, &topology.topics(), &stop).await? {
            tracing::info!("stopped before start-up finished");
            server_stop.cancel();
            return Ok(());
        }
        let record_limits = check_topic_settings(cluster).await?;
        let copies_cluster = producer_cluster(cluster, record_limits.copies, "copies");
        let producer = if membership.exactly_once {
            let id = format!(
                "{}.{}",
                cluster.group,
                membership.instance_id.as_deref().unwrap_or_default()
            );
            let producer = Producer::transactional(&copies_cluster, metrics.clone(), &id)?;
            // Fences a predecessor with the same id and aborts its open transaction, so tier
            // and DLQ partitions are not held up for transaction.timeout.ms.
            producer.init_transactions(Duration::from_secs(30)).await?;
            tracing::info!(transactional_id = %id, "exactly-once: transactions initialised");
            producer
        } else {
            Producer::reporting_to(&copies_cluster, metrics.clone())?
        };
        // --ordering key: the waiting log's records go through their own, idempotent producer.
        let waiting_producer = match topology.waiting {
            Some(_) => Some(Producer::ordered(
                &producer_cluster(cluster, record_limits.waiting, "waiting log"),
                metrics.clone(),
            )?),
            None => None,
        };
        let waiting_record_room = kafka::record_room(cluster, record_limits.waiting);
        let mut subscribed: Vec<&str> = vec![topology.main.as_str()];
        subscribed.extend(topology.tiers.iter().map(|t| t.topic.as_str()));
        tracing::info!(group = %cluster.group, topics = ?subscribed, dlq = %topology.dlq, max_retries = topology.max_retries,
            "rebound running");

        let series = metrics.stage_series(&topology);
        let limits = Limits {
            max_in_flight: config.max_in_flight,
            breaker: config.breaker,
            commit_interval: config.commit_interval,
            shutdown_timeout: config.shutdown_timeout,
            tier_buffer: config.tier_buffer,
            revoke_timeout: membership.revoke_timeout,
        };
        // A restarted static member is refused (UNRELEASED_INSTANCE_ID, a fatal error of that
        // client) by a KIP-848 group until its previous member's session expires: join again
        // with a new client, backing off, instead of exiting.
        let mut backoff = Duration::from_millis(500);
        loop {
            let (consumer, events_rx) = match first.take() {
                Some(c) => c,
                None => new_consumer()?,
            };
            consumer.subscribe(&subscribed)?;
            let router = Arc::new(Router {
                topology: topology.clone(),
                handler: handler.clone(),
                producer: producer.clone(),
                metrics: metrics.clone(),
                handler_timeout: config.handler_timeout,
                abandon: CancellationToken::new(),
                series: series.clone(),
                signals: Default::default(),
                exactly_once: membership.exactly_once,
                waiting_producer: waiting_producer.clone(),
                waiting_record_room,
            });
            match Pipeline::new(consumer, events_rx, router, limits, cluster)?
                .run(stop.clone())
                .await
            {
                Ended::Stopped => break,
                Ended::Fatal {
                    code: RDKafkaErrorCode::UnreleasedInstanceId,
                    ..
                } => {
                    tracing::warn!(
                        instance_id = membership.instance_id.as_deref(),
                        retry_in_ms = backoff.as_millis() as u64,
                        "the group still holds this instance id's previous member (UNRELEASED_INSTANCE_ID: its session has not expired yet); joining again"
                    );
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = stop.cancelled() => break,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
                Ended::Fatal { code, reason } => {
                    producer.flush(Duration::from_secs(5));
                    server_stop.cancel();
                    return Err(ServiceError::Fatal { code, reason });
                }
            }
        }
        producer.flush(Duration::from_secs(5));
        server_stop.cancel();
        if let Some(task) = server {
            let _ = tokio::time::timeout(Duration::from_secs(2), task).await;
        }
        tracing::info!("stopped");
        Ok(())
    }
}

/// Refuses a topology whose tiers or DLQ lose messages in normal operation
/// ([`Severity::Loss`](crate::topics::Severity)); warns of the other hazards. A broker that cannot
/// describe topic configurations (or refuses to) gets a warning, not a refusal.
async fn check_topic_settings(cluster: &ClusterConfig) -> Result<RecordLimits, ServiceError> {
    use crate::topics::Role;
    let (hazards, limits) = match crate::topics::check(cluster).await {
        Ok(plan) => {
            if let Some(why) = &plan.unreadable {
                tracing::warn!(error = %why, "cannot read the topics' settings (cleanup.policy, retention.ms); not checked");
            }
            let limits = RecordLimits {
                copies: plan.record_limit(|r| matches!(r, Role::Tier(_) | Role::Dlq)),
                waiting: plan.record_limit(|r| r == Role::Waiting),
            };
            (plan.hazards, limits)
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot check the topics' settings (cleanup.policy, retention.ms); starting anyway");
            return Ok(RecordLimits::default());
        }
    };
    let (fatal, other): (Vec<_>, Vec<_>) = hazards
        .into_iter()
        .partition(|h| h.severity == crate::topics::Severity::Loss);
    for h in &other {
        tracing::warn!(topic = %h.topic, problem = %h.problem, fix = %h.fix, "topic hazard");
    }
    if fatal.is_empty() {
        Ok(limits)
    } else {
        Err(ServiceError::UnsafeTopics(fatal))
    }
}

/// The smallest `max.message.bytes` of the topics each producer writes to, when the broker said.
#[derive(Debug, Default, Clone, Copy)]
struct RecordLimits {
    /// The tiers and the DLQ (the copies' producer).
    copies: Option<i64>,
    /// The waiting log of `--ordering key`.
    waiting: Option<i64>,
}

/// `cluster` for a producer writing to topics that take batches up to `limit` bytes
/// ([`kafka::cap_batch`]); says so when it lowers `batch.size`.
fn producer_cluster(cluster: &ClusterConfig, limit: Option<i64>, what: &str) -> ClusterConfig {
    match kafka::cap_batch(cluster, limit) {
        Some((capped, batch_size)) => {
            tracing::info!(producer = what, batch_size, max_message_bytes = limit,
                "batch.size lowered under the smallest max.message.bytes of the topics this producer writes to, so that a record too large for them is refused alone");
            capped
        }
        None => cluster.clone(),
    }
}

/// Fails with the list of missing topics, so that a typo is not a silent idle consumer.
/// A stop signal ends the wait: `Ok(false)` when stopped before the check finished.
async fn check_topics(
    cluster: &ClusterConfig,
    topics: &[&str],
    stop: &CancellationToken,
) -> Result<bool, ServiceError> {
    let md = tokio::select! {
        md = kafka::metadata(cluster, Duration::from_secs(10)) => md?,
        _ = stop.cancelled() => return Ok(false),
    };
    let missing: Vec<String> = topics
        .iter()
        .filter(|t| kafka::partitions_of(&md, t).is_none())
        .map(|t| t.to_string())
        .collect();
    if missing.is_empty() {
        Ok(true)
    } else {
        Err(ServiceError::MissingTopics(missing))
    }
}

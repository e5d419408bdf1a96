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
use tokio_util::sync::CancellationToken;

use crate::cluster::ClusterConfig;
use crate::config::Config;
use crate::handler::Handler;
use crate::kafka::{self, TopologyContext};
use crate::metrics::{self, Metrics};
use crate::pipeline::{Limits, Pipeline};
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
                | ServiceError::MetricsBind { .. }
                | ServiceError::UnsafeTopics(_)
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

        let (events_tx, events_rx) = tokio::sync::mpsc::unbounded_channel();
        let consumer: StreamConsumer<TopologyContext> = kafka::consumer_config(cluster)
            .create_with_context(TopologyContext {
                events: events_tx,
                metrics: metrics.clone(),
            })?;
        if !check_topics(cluster, &topology.topics(), &stop).await? {
            tracing::info!("stopped before start-up finished");
            server_stop.cancel();
            return Ok(());
        }
        check_topic_settings(cluster).await?;
        let producer = Producer::reporting_to(cluster, metrics.clone())?;
        let mut subscribed: Vec<&str> = vec![topology.main.as_str()];
        subscribed.extend(topology.tiers.iter().map(|t| t.topic.as_str()));
        consumer.subscribe(&subscribed)?;
        tracing::info!(group = %cluster.group, topics = ?subscribed, dlq = %topology.dlq, max_retries = topology.max_retries,
            "rebound running");

        let series = metrics.stage_series(&topology);
        let router = Arc::new(Router {
            topology,
            handler,
            producer: producer.clone(),
            metrics: metrics.clone(),
            handler_timeout: config.handler_timeout,
            abandon: CancellationToken::new(),
            series,
            signals: Default::default(),
        });
        let limits = Limits {
            max_in_flight: config.max_in_flight,
            breaker: config.breaker,
            commit_interval: config.commit_interval,
            shutdown_timeout: config.shutdown_timeout,
            tier_buffer: config.tier_buffer,
        };
        Pipeline::new(consumer, events_rx, router, limits)
            .run(stop)
            .await;
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
async fn check_topic_settings(cluster: &ClusterConfig) -> Result<(), ServiceError> {
    let hazards = match crate::topics::check(cluster).await {
        Ok(plan) => {
            if let Some(why) = plan.unreadable {
                tracing::warn!(error = %why, "cannot read the topics' settings (cleanup.policy, retention.ms); not checked");
            }
            plan.hazards
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot check the topics' settings (cleanup.policy, retention.ms); starting anyway");
            return Ok(());
        }
    };
    let (fatal, other): (Vec<_>, Vec<_>) = hazards
        .into_iter()
        .partition(|h| h.severity == crate::topics::Severity::Loss);
    for h in &other {
        tracing::warn!(topic = %h.topic, problem = %h.problem, fix = %h.fix, "topic hazard");
    }
    if fatal.is_empty() {
        Ok(())
    } else {
        Err(ServiceError::UnsafeTopics(fatal))
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

//! Prometheus metrics from the contract, and the `/metrics`, `/healthz`, `/readyz` server.
//!
//! No label carries a key, an offset or a message text: label values are tier labels, topic
//! names, partition numbers, outcomes and reasons only.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use tokio_util::sync::CancellationToken;

/// Every metric of the contract, registered in one registry.
pub struct Metrics {
    pub registry: Registry,
    pub consumed: IntCounterVec,
    pub handled: IntCounterVec,
    pub routed: IntCounterVec,
    pub dlq: IntCounterVec,
    /// `rebound_invalid_total{tier, class}`: tier messages dead-lettered as `invalid` without a
    /// handler call; `class` is `invalid_header` or `process_after_too_far`.
    pub invalid: IntCounterVec,
    pub handler_duration: HistogramVec,
    pub lateness: HistogramVec,
    pub paused: IntGaugeVec,
    /// Messages kept in tier partitions' read-ahead buffers, by tier.
    pub tier_buffered_messages: IntGaugeVec,
    /// Bytes (approximate: key, payload, headers and a fixed overhead per message) kept in
    /// tier partitions' read-ahead buffers, by tier.
    pub tier_buffered_bytes: IntGaugeVec,
    pub lag: IntGaugeVec,
    pub in_flight: IntGauge,
    /// `--ordering key`: keys whose earlier message is in the retry tiers, by its tier.
    pub ordering_blocked_keys: IntGaugeVec,
    /// `--ordering key`: messages waiting in the waiting log behind their key, by the tier of
    /// the message they wait for.
    pub ordering_waiting: IntGaugeVec,
    pub circuit_state: IntGauge,
    pub build_info: GaugeVec,
    pub health: Health,
    /// What `GET /status` serves; the poll loop publishes it (see `status.rs`).
    pub status: tokio::sync::watch::Sender<crate::status::Snapshot>,
}

/// The per-message series of one stage (`main` or a tier), resolved once: looking a labelled
/// series up hashes its label values under a lock, which is not worth doing per message.
#[derive(Clone)]
pub struct StageSeries {
    pub consumed: prometheus::IntCounter,
    /// By outcome: success, transient, permanent.
    pub handled: [prometheus::IntCounter; 3],
    pub handler_duration: prometheus::Histogram,
    pub lateness: prometheus::Histogram,
}

impl StageSeries {
    pub fn handled(&self, outcome: &str) -> &prometheus::IntCounter {
        match outcome {
            "success" => &self.handled[0],
            "transient" => &self.handled[1],
            _ => &self.handled[2],
        }
    }
}

/// What `/healthz` and `/readyz` report.
#[derive(Default)]
pub struct Health {
    /// Where the metrics server listens, once it does (useful with port 0).
    pub bound: std::sync::OnceLock<SocketAddr>,
    /// The consumer has been given an assignment (possibly empty) by its group.
    pub assigned: AtomicBool,
    /// librdkafka reported every broker down and no statistics have shown one up since.
    pub brokers_down: AtomicBool,
    pub shutting_down: AtomicBool,
}

impl Health {
    pub fn ready(&self) -> bool {
        self.assigned.load(Ordering::Relaxed)
            && !self.brokers_down.load(Ordering::Relaxed)
            && !self.shutting_down.load(Ordering::Relaxed)
    }
}

const LATENESS_BUCKETS: [f64; 17] = [
    0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    300.0,
];
const DURATION_BUCKETS: [f64; 15] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let consumed = counter(
            "rebound_consumed_total",
            "Messages read, by tier (main, retry-2m, ...).",
            &["tier"],
        );
        let handled = counter(
            "rebound_handled_total",
            "Handler outcomes, by tier and outcome.",
            &["tier", "outcome"],
        );
        let routed = counter(
            "rebound_routed_total",
            "Copies produced and acknowledged, by source and destination.",
            &["from", "to"],
        );
        let dlq = counter(
            "rebound_dlq_total",
            "Messages dead-lettered, by reason.",
            &["reason"],
        );
        let invalid = counter(
            "rebound_invalid_total",
            "Tier messages dead-lettered as invalid without a handler call, by tier and class (invalid_header, process_after_too_far).",
            &["tier", "class"],
        );
        let histogram = |name: &str, help: &str, buckets: &[f64]| {
            let h = HistogramVec::new(
                HistogramOpts::new(name, help).buckets(buckets.to_vec()),
                &["tier"],
            )
            .expect("valid metric");
            registry
                .register(Box::new(h.clone()))
                .expect("unique metric");
            h
        };
        let handler_duration = histogram(
            "rebound_handler_duration_seconds",
            "Time spent in the handler per message.",
            &DURATION_BUCKETS,
        );
        let lateness = histogram(
            "rebound_retry_lateness_seconds",
            "Processing start minus process_after, for messages from delay tiers.",
            &LATENESS_BUCKETS,
        );
        let paused = IntGaugeVec::new(
            Opts::new(
                "rebound_paused_partitions",
                "Tier partitions paused by their read-ahead buffer (head beyond the horizon, buffer full, or a message not kept).",
            ),
            &["tier"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(paused.clone()))
            .expect("unique metric");
        let tier_gauge = |name: &str, help: &str| {
            let g = IntGaugeVec::new(Opts::new(name, help), &["tier"]).expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric");
            g
        };
        let tier_buffered_messages = tier_gauge(
            "rebound_tier_buffered_messages",
            "Tier messages read and kept in memory until due (the read-ahead buffer).",
        );
        let tier_buffered_bytes = tier_gauge(
            "rebound_tier_buffered_bytes",
            "Approximate bytes of the tier messages kept in memory until due.",
        );
        let lag = IntGaugeVec::new(
            Opts::new(
                "rebound_consumer_lag",
                "Messages behind the partition's high watermark, from client statistics.",
            ),
            &["topic", "partition"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(lag.clone()))
            .expect("unique metric");
        let in_flight = IntGauge::new("rebound_in_flight", "Messages read and not yet finished.")
            .expect("valid metric");
        registry
            .register(Box::new(in_flight.clone()))
            .expect("unique metric");
        let ordering_blocked_keys = IntGaugeVec::new(
            Opts::new(
                "rebound_ordering_blocked_keys",
                "--ordering key: keys whose earlier message is in the retry tiers (later ones wait), by the tier that message is in.",
            ),
            &["tier"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(ordering_blocked_keys.clone()))
            .expect("unique metric");
        let ordering_waiting = IntGaugeVec::new(
            Opts::new(
                "rebound_ordering_waiting_messages",
                "--ordering key: messages waiting in <main>.waiting behind an earlier message of their key, by the tier that message is in.",
            ),
            &["tier"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(ordering_waiting.clone()))
            .expect("unique metric");
        let circuit_state = IntGauge::new(
            "rebound_circuit_state",
            "Circuit breaker around the handler: 0 closed, 1 half-open, 2 open.",
        )
        .expect("valid metric");
        registry
            .register(Box::new(circuit_state.clone()))
            .expect("unique metric");
        let build_info = GaugeVec::new(
            Opts::new(
                "rebound_build_info",
                "Always 1; the version label says which build.",
            ),
            &["version"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(build_info.clone()))
            .expect("unique metric");
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1.0);
        Metrics {
            registry,
            consumed,
            handled,
            routed,
            dlq,
            invalid,
            handler_duration,
            lateness,
            paused,
            tier_buffered_messages,
            tier_buffered_bytes,
            lag,
            in_flight,
            ordering_blocked_keys,
            ordering_waiting,
            circuit_state,
            build_info,
            health: Health::default(),
            status: tokio::sync::watch::channel(crate::status::Snapshot::default()).0,
        }
    }

    /// Creates every series the topology can produce at zero, so that dashboards and alerts see
    /// them (and `rate()` sees them move) from the first scrape on.
    pub fn init_topology(&self, topology: &crate::topology::Topology) {
        let stages: Vec<&str> = std::iter::once("main")
            .chain(topology.tiers.iter().map(|t| t.label.as_str()))
            .collect();
        for from in &stages {
            self.consumed.with_label_values(&[from]);
            for outcome in ["success", "transient", "permanent"] {
                self.handled.with_label_values(&[from, outcome]);
            }
            self.handler_duration.with_label_values(&[from]);
            self.routed.with_label_values(&[from, "dlq"]);
            for tier in &topology.tiers {
                self.routed.with_label_values(&[*from, tier.label.as_str()]);
            }
        }
        for tier in &topology.tiers {
            for class in crate::topology::Unfit::CLASSES {
                self.invalid.with_label_values(&[&tier.label, class]);
            }
            self.lateness.with_label_values(&[&tier.label]);
            self.paused.with_label_values(&[&tier.label]).set(0);
            self.tier_buffered_messages
                .with_label_values(&[&tier.label])
                .set(0);
            self.tier_buffered_bytes
                .with_label_values(&[&tier.label])
                .set(0);
        }
        for reason in crate::topology::DlqReason::ALL {
            self.dlq.with_label_values(&[reason.as_str()]);
        }
    }

    /// The series of every stage, indexed main = 0, tier i = i + 1.
    pub fn stage_series(&self, topology: &crate::topology::Topology) -> Vec<StageSeries> {
        std::iter::once("main")
            .chain(topology.tiers.iter().map(|t| t.label.as_str()))
            .map(|label| StageSeries {
                consumed: self.consumed.with_label_values(&[label]),
                handled: ["success", "transient", "permanent"]
                    .map(|o| self.handled.with_label_values(&[label, o])),
                handler_duration: self.handler_duration.with_label_values(&[label]),
                lateness: self.lateness.with_label_values(&[label]),
            })
            .collect()
    }

    /// The buffered-messages and buffered-bytes gauges of one tier, resolved once.
    pub fn tier_buffer_series(&self, tier: &str) -> (prometheus::IntGauge, prometheus::IntGauge) {
        (
            self.tier_buffered_messages.with_label_values(&[tier]),
            self.tier_buffered_bytes.with_label_values(&[tier]),
        )
    }

    pub fn set_lag(&self, topic: &str, partition: i32, lag: i64) {
        self.lag
            .with_label_values(&[topic, &partition.to_string()])
            .set(lag);
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// Binds the metrics server now (so a busy port is reported at start-up) and serves until `stop`.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let _ = metrics.health.bound.set(local);
    let app = axum::Router::new()
        .route("/metrics", get(metrics_page))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready_page))
        .route("/status", get(status_page))
        .with_state(metrics);
    let task = tokio::spawn(async move {
        let result = axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await;
        if let Err(e) = result {
            tracing::error!(error = %e, "metrics server stopped");
        }
    });
    Ok((local, task))
}

async fn metrics_page(State(m): State<Arc<Metrics>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        m.render(),
    )
}

/// `GET /status`: the poll loop's last snapshot as JSON.
async fn status_page(State(m): State<Arc<Metrics>>) -> impl IntoResponse {
    let body = serde_json::to_string(&*m.status.borrow()).unwrap_or_default();
    ([(header::CONTENT_TYPE, "application/json")], body)
}

async fn ready_page(State(m): State<Arc<Metrics>>) -> impl IntoResponse {
    if m.health.ready() {
        (StatusCode::OK, "ready\n")
    } else if m.health.shutting_down.load(Ordering::Relaxed) {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n")
    } else if m.health.brokers_down.load(Ordering::Relaxed) {
        (StatusCode::SERVICE_UNAVAILABLE, "brokers unreachable\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "waiting for partition assignment\n",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_contract_metric_is_exported() {
        let m = Metrics::new();
        m.consumed.with_label_values(&["main"]).inc();
        m.handled.with_label_values(&["main", "success"]).inc();
        m.routed.with_label_values(&["main", "retry-2m"]).inc();
        m.dlq.with_label_values(&["permanent"]).inc();
        m.invalid
            .with_label_values(&["retry-2m", "process_after_too_far"])
            .inc();
        m.handler_duration
            .with_label_values(&["main"])
            .observe(0.01);
        m.lateness.with_label_values(&["retry-2m"]).observe(0.01);
        m.paused.with_label_values(&["retry-2m"]).set(0);
        m.tier_buffer_series("retry-2m").0.set(0);
        m.tier_buffer_series("retry-2m").1.set(0);
        m.set_lag("orders", 0, 3);
        let text = m.render();
        for name in [
            "rebound_consumed_total",
            "rebound_handled_total",
            "rebound_routed_total",
            "rebound_dlq_total",
            "rebound_invalid_total",
            "rebound_handler_duration_seconds",
            "rebound_retry_lateness_seconds",
            "rebound_paused_partitions",
            "rebound_tier_buffered_messages",
            "rebound_tier_buffered_bytes",
            "rebound_consumer_lag",
            "rebound_in_flight",
            "rebound_circuit_state",
            "rebound_build_info",
        ] {
            assert!(
                text.contains(&format!("# TYPE {name} ")),
                "{name} missing:\n{text}"
            );
        }
    }

    #[test]
    fn ready_only_when_assigned_connected_and_not_stopping() {
        let h = Health::default();
        assert!(!h.ready());
        h.assigned.store(true, Ordering::Relaxed);
        assert!(h.ready());
        h.brokers_down.store(true, Ordering::Relaxed);
        assert!(!h.ready());
        h.brokers_down.store(false, Ordering::Relaxed);
        h.shutting_down.store(true, Ordering::Relaxed);
        assert!(!h.ready());
    }
}

//! `rebound demo`: a self-contained run of the whole topology against a local broker.
//!
//! Creates a fresh topology with short tiers, produces sample orders, runs the service with a
//! simulated flaky downstream (about 30% transient failures; empty or malformed payloads are
//! permanent), shows live where messages are, and ends with a table of where every message went
//! and after how many tries. Exits 0 only when every message is accounted for: handled, or read
//! back from the DLQ.

use std::collections::{BTreeMap, HashMap};
use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio_util::sync::CancellationToken;

use crate::cli::DemoArgs;
use crate::cluster::{ClusterConfig, KafkaProps};
use crate::config::{Config, ConfigError, TopicsConfig};
use crate::defaults;
use crate::dlq::{self, DlqError, Filter};
use crate::handler::{Handler, Message, Outcome};
use crate::kafka;
use crate::service::{Service, ServiceError};
use crate::topology::Topology;
use crate::{duration, topics};

/// Settings of `rebound demo`.
#[derive(Debug, Clone)]
pub struct DemoConfig {
    pub brokers: String,
    pub messages: usize,
    pub tiers: Vec<Duration>,
    pub transient_rate: f64,
    pub metrics_addr: Option<std::net::SocketAddr>,
    pub keep: bool,
    pub kafka: KafkaProps,
}

impl DemoConfig {
    /// Resolves `rebound demo`'s flags (the demo reads no file).
    pub fn resolve(args: &DemoArgs) -> Result<DemoConfig, ConfigError> {
        let messages = match args.messages.as_deref() {
            Some(s) => s.trim().parse::<usize>().map_err(|_| {
                ConfigError::new("--messages", format!("{s:?} is not a whole number"))
            })?,
            None => defaults::DEMO_MESSAGES,
        };
        if !(1..=1_000_000).contains(&messages) {
            return Err(ConfigError::new("--messages", "must be from 1 to 1000000"));
        }
        let items: Vec<String> = args
            .tiers
            .as_deref()
            .unwrap_or(defaults::DEMO_TIERS)
            .split(',')
            .map(str::to_string)
            .collect();
        let tiers = crate::config::parse_tiers("--tiers", &items)?;
        let transient_rate = match args.failure_rate.as_deref() {
            Some(s) => s.trim().parse::<f64>().map_err(|_| {
                ConfigError::new(
                    "--failure-rate",
                    format!("{s:?} is not a number such as 0.3"),
                )
            })?,
            None => defaults::DEMO_FAILURE_RATE,
        };
        if !(0.0..1.0).contains(&transient_rate) {
            return Err(ConfigError::new(
                "--failure-rate",
                "must be from 0 to below 1",
            ));
        }
        let metrics_addr = match args
            .metrics_addr
            .as_deref()
            .unwrap_or(defaults::DEMO_METRICS_ADDR)
        {
            "off" | "" => None,
            a => Some(a.parse().map_err(|_| {
                ConfigError::new("--metrics-addr", format!("{a:?} is not IP:PORT, or `off`"))
            })?),
        };
        // Against Tansu the demo adds one record per produce batch (`demo::run` probes the
        // broker); -X overrides that.
        let kafka = KafkaProps::parse(Vec::new(), &args.kafka)
            .map_err(|e| ConfigError::new("-X", e.to_string()))?;
        Ok(DemoConfig {
            brokers: args
                .brokers
                .clone()
                .unwrap_or_else(|| defaults::BROKERS.to_string()),
            messages,
            tiers,
            transient_rate,
            metrics_addr,
            keep: args.keep,
            kafka,
        })
    }
}

/// Why the demo failed.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("setting up the topology: {0}")]
    Topics(#[from] topics::TopicsError),
    #[error("kafka: {}", crate::kafka::Shown(.0))]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("the service failed: {0}")]
    Service(#[from] ServiceError),
    #[error("reading the DLQ: {0}")]
    Dlq(#[from] DlqError),
    #[error("{missing} of {total} messages were not accounted for within {waited:?}")]
    Unaccounted {
        missing: usize,
        total: usize,
        waited: Duration,
    },
}

/// What happened to one demo message.
#[derive(Debug, Default, Clone)]
struct Fate {
    tries: u32,
    succeeded: bool,
}

/// The simulated downstream: a flaky order API.
struct FlakyApi {
    transient_rate: f64,
    fates: Arc<Mutex<HashMap<String, Fate>>>,
}

#[async_trait::async_trait]
impl Handler for FlakyApi {
    async fn handle(&self, m: &Message) -> Outcome {
        let id = m.key_lossy();
        let outcome = if m.payload().is_empty() {
            Outcome::permanent("empty_payload", "an order needs a body")
        } else if serde_json::from_slice::<serde_json::Value>(m.payload()).is_err() {
            Outcome::permanent("malformed_json", "the body is not JSON")
        } else if rand::rng().random_bool(self.transient_rate) {
            let class = if rand::rng().random_bool(0.5) {
                "http_503"
            } else {
                "timeout"
            };
            Outcome::transient(class, "the order service is having a bad moment")
        } else {
            Outcome::Success
        };
        let mut fates = self.fates.lock().unwrap_or_else(|e| e.into_inner());
        let fate = fates.entry(id).or_default();
        fate.tries += 1;
        fate.succeeded |= outcome == Outcome::Success;
        outcome
    }
}

/// Runs the demo; returns the final report.
pub async fn run(cfg: DemoConfig, stop: CancellationToken) -> Result<String, DemoError> {
    let main = format!(
        "rebound-demo-{}",
        chrono::Utc::now().format("%Y%m%d%H%M%S%3f")
    );
    let topology = Topology::new(&main, &cfg.tiers);
    let out = &mut std::io::stdout();
    let kafka = with_broker_workarounds(&cfg.brokers, &cfg.kafka, out).await;
    let cluster = ClusterConfig {
        brokers: cfg.brokers.clone(),
        group: format!("{main}.group"),
        kafka: kafka.clone(),
        topology: topology.clone(),
    };
    let _ = writeln!(
        out,
        "rebound demo: {} messages through {main}",
        cfg.messages
    );
    let tiers: Vec<String> = topology
        .tiers
        .iter()
        .map(|t| duration::format(t.delay))
        .collect();
    let _ = writeln!(
        out,
        "  tiers {} · up to {} tries · ~{:.0}% transient failures · empty/malformed payloads are permanent",
        tiers.join(", "),
        topology.max_retries + 1,
        cfg.transient_rate * 100.0
    );
    let plan = topics::apply(&TopicsConfig {
        cluster: cluster.clone(),
        partitions: Some(3),
        replication_factor: None,
        create_main: true,
        force: false,
    })
    .await?;
    let _ = write!(out, "{plan}");

    let ids = produce_samples(&cluster, cfg.messages).await?;
    let bad = ids.iter().filter(|(_, kind)| *kind != "order").count();
    let _ = writeln!(
        out,
        "  produced {} messages ({bad} deliberately bad)",
        ids.len()
    );

    let fates: Arc<Mutex<HashMap<String, Fate>>> = Arc::default();
    let handler = Arc::new(FlakyApi {
        transient_rate: cfg.transient_rate,
        fates: fates.clone(),
    });
    let mut config = Config::new(&cfg.brokers, &cluster.group, topology.clone());
    config.cluster.kafka = kafka;
    config.metrics_addr = cfg.metrics_addr;
    config.commit_interval = Duration::from_millis(500);
    let service = Service::new(config, handler);
    let metrics = service.metrics();
    let service_stop = CancellationToken::new();
    let task = tokio::spawn(service.run(service_stop.clone()));
    if let Some(addr) = cfg.metrics_addr {
        let _ = writeln!(out, "  metrics: http://{addr}/metrics");
    }

    let total = ids.len();
    let budget = cfg.tiers.iter().sum::<Duration>() + Duration::from_secs(60);
    let started = Instant::now();
    let tty = std::io::stdout().is_terminal();
    let mut last_line = Instant::now() - Duration::from_secs(10);
    let accounted = loop {
        let done = metrics
            .handled
            .with_label_values(&["main", "success"])
            .get()
            + topology
                .tiers
                .iter()
                .map(|t| {
                    metrics
                        .handled
                        .with_label_values(&[&t.label, "success"])
                        .get()
                })
                .sum::<u64>();
        let dead: u64 = crate::topology::DlqReason::ALL
            .iter()
            .map(|r| metrics.dlq.with_label_values(&[r.as_str()]).get())
            .sum();
        let stages: Vec<&str> = std::iter::once("main")
            .chain(topology.tiers.iter().map(|t| t.label.as_str()))
            .collect();
        let waiting: Vec<String> = topology
            .tiers
            .iter()
            .map(|t| {
                let into: u64 = stages
                    .iter()
                    .map(|from| {
                        metrics
                            .routed
                            .with_label_values(&[*from, t.label.as_str()])
                            .get()
                    })
                    .sum();
                let out_of = metrics.consumed.with_label_values(&[&t.label]).get();
                format!("{} {}", t.label, into.saturating_sub(out_of))
            })
            .collect();
        let line = format!(
            "  [{:>5.1}s] done {done}/{total} · waiting: {} · dlq {dead}",
            started.elapsed().as_secs_f64(),
            waiting.join(", ")
        );
        if tty {
            let _ = write!(out, "\r{line}   ");
            let _ = out.flush();
        } else if last_line.elapsed() >= Duration::from_secs(2) {
            let _ = writeln!(out, "{line}");
            last_line = Instant::now();
        }
        if (done + dead) as usize >= total {
            break true;
        }
        if started.elapsed() > budget || stop.is_cancelled() {
            break false;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            _ = stop.cancelled() => {}
        }
    };
    if tty {
        let _ = writeln!(out);
    }
    service_stop.cancel();
    let service_result = task.await.map_err(|_| DemoError::Unaccounted {
        missing: total,
        total,
        waited: started.elapsed(),
    })?;
    service_result?;

    // Account for every id: handled successfully, or present in the DLQ.
    let dlq = read_dlq(&cluster).await?;
    let fates = fates.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let mut rows: BTreeMap<String, usize> = BTreeMap::new();
    let mut missing = 0;
    for (id, _) in &ids {
        let fate = fates.get(id).cloned().unwrap_or_default();
        let row = if fate.succeeded {
            format!("succeeded on try {}", fate.tries)
        } else if let Some(reason) = dlq.get(id) {
            format!("dead-lettered: {reason} after {} tries", fate.tries)
        } else {
            missing += 1;
            "missing".to_string()
        };
        *rows.entry(row).or_default() += 1;
    }
    let mut report = String::from("\nwhere every message ended:\n");
    for (row, n) in &rows {
        report.push_str(&format!("  {n:>6}  {row}\n"));
    }
    report.push_str(&format!(
        "  {total:>6}  total, {} accounted for in {:.1}s\n",
        total - missing,
        started.elapsed().as_secs_f64()
    ));
    if !cfg.keep {
        delete_topics(&cluster, &topology).await;
        report.push_str(&format!(
            "\nthe console shows a topology and its dead letters on http://{}/ : run the demo \
             with --keep, then the `rebound console` command it prints\n",
            defaults::CONSOLE_LISTEN
        ));
    } else {
        report.push_str(&format!(
            "  topics kept: {}\n",
            topology.topics().join(", ")
        ));
        let tiers: Vec<String> = topology
            .tiers
            .iter()
            .map(|t| crate::duration::format(t.delay))
            .collect();
        report.push_str(&format!(
            "\nsee them in the console: rebound console --brokers {} --topic {} --tiers {} --group {}\n\
             then open http://{}/ (add --allow-replay to redrive dead letters)\n",
            cluster.brokers,
            topology.main,
            tiers.join(","),
            cluster.group,
            defaults::CONSOLE_LISTEN
        ));
    }
    if !accounted || missing > 0 {
        let _ = write!(out, "{report}");
        return Err(DemoError::Unaccounted {
            missing: missing.max(usize::from(!accounted)),
            total,
            waited: started.elapsed(),
        });
    }
    Ok(report)
}

/// The librdkafka properties the demo runs with: the user's `-X`, plus one record per produced
/// batch when the broker finalizes no KRaft features (Tansu 0.6 skips the rest of a batch when a
/// fetch starts inside it, which a resumed tier partition does; docs/broker-compat.md). A `-X`
/// of the same name wins. A broker that cannot be probed gets no workaround: the demo's own
/// connection errors then say what is wrong.
async fn with_broker_workarounds(
    brokers: &str,
    user: &KafkaProps,
    out: &mut impl std::io::Write,
) -> KafkaProps {
    let addr = brokers.to_string();
    let probe = tokio::task::spawn_blocking(move || {
        crate::probe::api_versions(&addr, Duration::from_secs(5))
    })
    .await;
    let mut props = Vec::new();
    if let Ok(Ok(features)) = probe {
        if features.lacks_kraft_features() {
            let _ = writeln!(
                out,
                "  broker finalizes no KRaft features (Tansu?): producing one record per batch"
            );
            for (k, v) in [("linger.ms", "0"), ("batch.num.messages", "1")] {
                if !user.0.iter().any(|(key, _)| key == k) {
                    props.push((k.to_string(), v.to_string()));
                }
            }
        }
    }
    props.extend(user.0.iter().cloned());
    KafkaProps(props)
}

async fn produce_samples(
    cluster: &ClusterConfig,
    n: usize,
) -> Result<Vec<(String, &'static str)>, DemoError> {
    let producer: FutureProducer = kafka::producer_config(cluster).create()?;
    let mut ids = Vec::with_capacity(n);
    let mut sends = Vec::with_capacity(n);
    for i in 0..n {
        let id = format!("order-{i:05}");
        let (kind, payload) = match i % 50 {
            7 => ("empty", String::new()),
            23 | 41 => ("malformed", format!("{{\"order\": {i}, oops")),
            _ => (
                "order",
                format!(
                    "{{\"order\":{i},\"amount_cents\":{}}}",
                    100 + (i * 37) % 9_900
                ),
            ),
        };
        ids.push((id.clone(), kind));
        let producer = producer.clone();
        let topic = cluster.topology.main.clone();
        sends.push(async move {
            let record = FutureRecord::to(&topic).key(&id).payload(&payload);
            producer
                .send(record, Duration::from_secs(10))
                .await
                .map_err(|(e, _)| e)
        });
    }
    for result in futures::future::join_all(sends).await {
        result?;
    }
    Ok(ids)
}

/// Every message of the DLQ: key → `rebound-dlq-reason`, read with the DLQ commands' reader.
async fn read_dlq(cluster: &ClusterConfig) -> Result<HashMap<String, String>, DlqError> {
    let mut out = HashMap::new();
    dlq::scan(cluster, &Filter::default(), |e| {
        let key = String::from_utf8_lossy(e.key.as_deref().unwrap_or_default()).into_owned();
        out.insert(key, e.reason().unwrap_or_default());
        Ok(true)
    })
    .await?;
    Ok(out)
}

async fn delete_topics(cluster: &ClusterConfig, topology: &Topology) {
    let admin: Result<AdminClient<DefaultClientContext>, _> = kafka::admin_config(cluster).create();
    if let Ok(admin) = admin {
        let names = topology.topics();
        match admin.delete_topics(&names, &AdminOptions::new()).await {
            Ok(_) => println!("  cleaned up the demo topics (pass --keep to keep them)"),
            Err(e) => println!("  could not delete the demo topics: {e}"),
        }
    }
}

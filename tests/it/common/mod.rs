//! Shared helpers for integration tests against the real broker started by `scripts/test`:
//! the broker address, unique topic names, producing, reading a topic with a deadline, and
//! running rebound in-process with a scripted, recording handler.

#![allow(dead_code)]

use std::collections::HashMap;
use std::future::Future;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message as _;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use rebound::config::{Config, KafkaProps};
use rebound::handler::{Handler, Message, Outcome};
use rebound::headers::{self, Header};
use rebound::{Service, Topology};
use tokio_util::sync::CancellationToken;

/// The broker `scripts/test` started.
pub fn brokers() -> String {
    std::env::var("REBOUND_TEST_BROKERS")
        .expect("REBOUND_TEST_BROKERS is not set: run the integration tests through scripts/test")
}

/// A topic name no other test (or earlier run) uses.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() % 1_000_000_000_000)
        .unwrap_or(0);
    format!(
        "{prefix}-{}-{nanos}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Which broker the tests run on, `kafka` (Apache Kafka) or `tansu`, detected by asking it
/// (`rebound::probe`: an `ApiVersions` answer without finalized features is Tansu), once per
/// test binary. `tests/broker_probe.rs` checks it against what `scripts/test` started.
pub fn broker_kind() -> &'static str {
    static KIND: std::sync::OnceLock<&'static str> = std::sync::OnceLock::new();
    KIND.get_or_init(|| {
        let features = rebound::probe::api_versions(&brokers(), Duration::from_secs(10))
            .expect("the test broker answers ApiVersions");
        if features.lacks_kraft_features() {
            "tansu"
        } else {
            "kafka"
        }
    })
}

/// Tansu 0.6 skips the rest of a record batch when a fetch starts inside it
/// (docs/broker-compat.md, "Mid-batch fetch"): every producer a test reads back sends one record
/// per batch there. Apache Kafka needs nothing: tests produce with normal batching on it.
pub fn one_record_per_batch() -> &'static [(&'static str, &'static str)] {
    if broker_kind() == "tansu" {
        &[("linger.ms", "0"), ("batch.num.messages", "1")]
    } else {
        &[]
    }
}

/// librdkafka settings rebound runs with in tests: its defaults, plus the Tansu workaround where
/// the broker is Tansu.
pub fn test_kafka_props() -> Vec<(String, String)> {
    one_record_per_batch()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub async fn create_topics(topics: &[&str], partitions: i32) {
    create_topics_at(&brokers(), topics, partitions).await
}

pub async fn create_topics_at(brokers: &str, topics: &[&str], partitions: i32) {
    create_topics_with(brokers, topics, partitions, &[]).await
}

/// Creates `topics` with `partitions` partitions and the topic configs `configs`, and waits until
/// the broker's metadata lists each with a leader for every partition (Apache Kafka answers
/// CreateTopics before its metadata cache has the topic; a service started at once could find
/// it missing).
pub async fn create_topics_with(
    brokers: &str,
    topics: &[&str],
    partitions: i32,
    configs: &[(&str, &str)],
) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("admin client");
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|t| {
            configs.iter().fold(
                NewTopic::new(t, partitions, TopicReplication::Fixed(1)),
                |n, (k, v)| n.set(k, v),
            )
        })
        .collect();
    let results = admin
        .create_topics(
            &new,
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        )
        .await
        .expect("create topics");
    for r in results {
        r.expect("topic created");
    }
    let client: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("metadata client");
    let until = Instant::now() + Duration::from_secs(30);
    for topic in topics {
        loop {
            let ready = client
                .fetch_metadata(Some(topic), Duration::from_secs(5))
                .ok()
                .and_then(|md| {
                    md.topics().first().map(|t| {
                        t.error().is_none()
                            && t.partitions().len() == partitions as usize
                            && t.partitions().iter().all(|p| p.leader() >= 0)
                    })
                })
                .unwrap_or(false);
            if ready {
                break;
            }
            assert!(
                Instant::now() < until,
                "{topic} not in the metadata 30 s after it was created"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Creates every topic of `topology` with `partitions` partitions.
pub async fn create_topology(topology: &Topology, partitions: i32) {
    create_topics(&topology.topics(), partitions).await;
}

/// One record to produce.
#[derive(Debug, Clone, Default)]
pub struct Out {
    pub partition: Option<i32>,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub headers: Vec<Header>,
}

impl Out {
    pub fn new(key: &str, payload: &str) -> Out {
        Out {
            partition: None,
            key: Some(key.as_bytes().to_vec()),
            payload: Some(payload.as_bytes().to_vec()),
            headers: vec![],
        }
    }

    /// The record to produce to `topic`.
    pub fn record<'a>(&'a self, topic: &'a str) -> FutureRecord<'a, [u8], [u8]> {
        let mut fr: FutureRecord<'a, [u8], [u8]> =
            FutureRecord::to(topic).headers(rebound::kafka::to_owned_headers(&self.headers));
        if let Some(k) = &self.key {
            fr = fr.key(k);
        }
        if let Some(v) = &self.payload {
            fr = fr.payload(v);
        }
        if let Some(part) = self.partition {
            fr = fr.partition(part);
        }
        fr
    }

    pub fn partition(mut self, p: i32) -> Out {
        self.partition = Some(p);
        self
    }

    pub fn header(mut self, name: &str, value: &str) -> Out {
        self.headers.push(Header::new(name, value.as_bytes()));
        self
    }
}

/// A producer with librdkafka's batching (one record per batch on Tansu, see
/// `one_record_per_batch`).
pub fn producer() -> FutureProducer {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers());
    for (k, v) in one_record_per_batch() {
        c.set(*k, *v);
    }
    c.create().expect("producer")
}

/// Produces every record and waits for each acknowledgement.
pub async fn produce(topic: &str, records: &[Out]) {
    let p = producer();
    for r in records {
        p.send(r.record(topic), Duration::from_secs(10))
            .await
            .map_err(|(e, _)| e)
            .expect("produce");
    }
}

/// A record read back from a topic.
#[derive(Debug, Clone)]
pub struct Got {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub headers: Vec<Header>,
}

impl Got {
    pub fn header(&self, name: &str) -> Option<String> {
        headers::last(&self.headers, name)
            .and_then(|h| h.value.as_ref())
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }

    pub fn payload_str(&self) -> String {
        String::from_utf8_lossy(self.payload.as_deref().unwrap_or_default()).into_owned()
    }
}

/// Reads `topic` from the beginning (all partitions, no group) until `want` records arrived or
/// `deadline` passed; returns what was read.
pub fn read_topic(topic: &str, want: usize, deadline: Duration) -> Vec<Got> {
    read_at(&brokers(), topic, want, Duration::ZERO, deadline)
}

/// Reads `topic` on `brokers` from the beginning until at least `min` records arrived and then
/// nothing more came for `idle` (zero: stop at `min`), or `deadline` passed.
pub fn read_at(
    brokers: &str,
    topic: &str,
    min: usize,
    idle: Duration,
    deadline: Duration,
) -> Vec<Got> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", unique("reader"))
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "20")
        .create()
        .expect("reader");
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    let mut tpl = TopicPartitionList::new();
    for t in md.topics() {
        for p in t.partitions() {
            tpl.add_partition_offset(topic, p.id(), Offset::Beginning)
                .expect("tpl");
        }
    }
    consumer.assign(&tpl).expect("assign");
    let until = Instant::now() + deadline;
    let mut last = Instant::now();
    let mut out = Vec::new();
    while Instant::now() < until && (out.len() < min || last.elapsed() < idle) {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(50)) {
            last = Instant::now();
            out.push(Got {
                partition: m.partition(),
                offset: m.offset(),
                key: m.key().map(<[u8]>::to_vec),
                payload: m.payload().map(<[u8]>::to_vec),
                headers: rebound::kafka::read_headers(m.headers()),
            });
        }
    }
    out
}

/// Polls `cond` every `every` until it holds or `deadline` has passed; whether it held. The
/// suite's (and the benchmarks') one polling loop: [`eventually`] and [`wait_until`] are it
/// with a panic on the deadline.
pub async fn waited<F, Fut>(deadline: Duration, every: Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let until = Instant::now() + deadline;
    loop {
        if cond().await {
            return true;
        }
        if Instant::now() >= until {
            return false;
        }
        tokio::time::sleep(every).await;
    }
}

/// Polls `cond` every 20 ms until it holds; panics with `what` after `deadline`. No test sleeps
/// to synchronise: it waits on a condition with this.
pub async fn eventually<F, Fut>(what: &str, deadline: Duration, cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    assert!(
        waited(deadline, Duration::from_millis(20), cond).await,
        "timed out after {deadline:?} waiting for {what}"
    );
}

/// [`eventually`] for a condition that needs no `.await`.
pub async fn wait_until(what: &str, deadline: Duration, mut cond: impl FnMut() -> bool) {
    eventually(what, deadline, || std::future::ready(cond())).await
}

/// A free loopback port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind a free port")
        .local_addr()
        .expect("local addr")
        .port()
}

/// One handler call (in-process, [`Recording`]) or one request the HTTP sink received
/// (`rel::Sink`).
#[derive(Debug, Clone)]
pub struct Handled {
    /// The payload as text: `ID:BEHAVIOUR` for scripted messages.
    pub id: String,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub attempt: u32,
    /// When the call (request) arrived.
    pub at: DateTime<Utc>,
    /// The message's `process_after`, when it has one.
    pub process_after: Option<DateTime<Utc>>,
    /// The answer: 200 success, 503 transient, 400 permanent; 0 while (or if never) answered.
    pub status: u16,
    /// The message's headers (in-process calls; the sink sees request headers only).
    pub headers: Vec<Header>,
}

/// The suite's one recording handler: wraps a handler and records every call as [`Handled`].
/// [`Recording::scripted`] wraps [`Scripted`], whose answers the payloads script.
#[derive(Clone)]
pub struct Recording {
    pub inner: Arc<dyn Handler>,
    pub records: Arc<Mutex<Vec<Handled>>>,
}

impl Recording {
    pub fn new(inner: Arc<dyn Handler>) -> Recording {
        Recording {
            inner,
            records: Arc::default(),
        }
    }

    /// Records [`Scripted`].
    pub fn scripted() -> Recording {
        Recording::new(Arc::new(Scripted))
    }

    pub fn records(&self) -> Vec<Handled> {
        self.records.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.records.lock().unwrap().len()
    }

    /// Calls per id.
    pub fn by_id(&self) -> HashMap<String, Vec<Handled>> {
        let mut m: HashMap<String, Vec<Handled>> = HashMap::new();
        for c in self.records() {
            m.entry(c.id.clone()).or_default().push(c);
        }
        m
    }
}

#[async_trait::async_trait]
impl Handler for Recording {
    async fn handle(&self, m: &Message) -> Outcome {
        let index = {
            let mut records = self.records.lock().unwrap();
            records.push(Handled {
                id: String::from_utf8_lossy(m.payload()).into_owned(),
                topic: m.topic.clone(),
                partition: m.partition,
                offset: m.offset,
                attempt: m.attempt,
                at: Utc::now(),
                process_after: headers::last(&m.headers, headers::PROCESS_AFTER).and_then(|h| {
                    headers::parse_time(headers::PROCESS_AFTER, h.value.as_deref()).ok()
                }),
                status: 0,
                headers: m.headers.clone(),
            });
            records.len() - 1
        };
        let outcome = self.inner.handle(m).await;
        self.records.lock().unwrap()[index].status = match &outcome {
            Outcome::Success => 200,
            Outcome::Transient(_) => 503,
            Outcome::Permanent(_) => 400,
        };
        outcome
    }
}

/// A handler whose answers the payload scripts: `ID:BEHAVIOUR` with BEHAVIOUR one of `ok`,
/// `fail-once` (transient on the first try), `fail-N` (transient on the first N tries), `always`
/// (always transient), `permanent`.
pub struct Scripted;

#[async_trait::async_trait]
impl Handler for Scripted {
    async fn handle(&self, m: &Message) -> Outcome {
        let payload = String::from_utf8_lossy(m.payload()).into_owned();
        let (_, behaviour) = payload.split_once(':').unwrap_or((&payload, "ok"));
        outcome_for(behaviour, m.attempt)
    }
}

/// What the scripted `behaviour` (see [`Scripted`]) answers on a message's try number `attempt` (0 = first).
pub fn outcome_for(behaviour: &str, attempt: u32) -> Outcome {
    match behaviour {
        "ok" => Outcome::Success,
        "always" => Outcome::transient("test_transient", "always fails"),
        "permanent" => Outcome::permanent("test_permanent", "never works"),
        b => {
            let n = match b {
                "fail-once" => 1,
                _ => b
                    .strip_prefix("fail-")
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0),
            };
            if attempt < n {
                Outcome::transient("test_transient", format!("failure {} of {n}", attempt + 1))
            } else {
                Outcome::Success
            }
        }
    }
}

/// rebound running in-process.
pub struct Running {
    pub stop: CancellationToken,
    pub task: tokio::task::JoinHandle<Result<(), rebound::ServiceError>>,
    pub metrics: Arc<rebound::metrics::Metrics>,
}

impl Running {
    /// Stops gracefully and waits (bounded) for the service to return.
    pub async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(40), self.task)
            .await
            .expect("service stops within its shutdown bound")
            .expect("service task")
            .expect("service ran");
    }
}

/// A test configuration: fast commits and fetches.
pub fn config(topology: Topology, group: &str) -> Config {
    let mut c = Config::new(&brokers(), group, topology);
    c.cluster.kafka = KafkaProps(test_kafka_props());
    c.commit_interval = Duration::from_millis(200);
    c.shutdown_timeout = Duration::from_secs(20);
    c.handler_timeout = Duration::from_secs(5);
    c
}

pub fn start(config: Config, handler: Arc<dyn Handler>) -> Running {
    let service = Service::new(config, handler);
    let metrics = service.metrics();
    let stop = CancellationToken::new();
    let task = tokio::spawn(service.run(stop.clone()));
    Running {
        stop,
        task,
        metrics,
    }
}

/// Waits for the service to be assigned its partitions; fails at once, with the service's own
/// error, when the service has stopped instead.
pub async fn wait_ready(r: &Running) {
    let m = r.metrics.clone();
    let until = Instant::now() + Duration::from_secs(30);
    while !m.health.assigned.load(std::sync::atomic::Ordering::Relaxed) {
        assert!(
            !r.task.is_finished(),
            "the service stopped before it was assigned partitions (its error is in the log)"
        );
        assert!(
            Instant::now() < until,
            "timed out after 30s waiting for partition assignment"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs `f` with a deadline, failing the test with `what` if it is exceeded.
pub async fn within<T>(what: &str, deadline: Duration, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(deadline, f)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {deadline:?}"))
}

/// A topology with short tiers for tests.
pub fn topology(main: &str, tiers_ms: &[u64]) -> Topology {
    let delays: Vec<Duration> = tiers_ms
        .iter()
        .map(|ms| Duration::from_millis(*ms))
        .collect();
    Topology::new(main, &delays)
}

/// `n` scripted messages (see [`Scripted`]): key `k<i>`, payload `m<i>:<behaviour>`.
pub fn scripted(n: usize, behaviour: &str) -> Vec<Out> {
    (0..n)
        .map(|i| Out::new(&format!("k{i}"), &format!("m{i}:{behaviour}")))
        .collect()
}

/// The suite's one scenario builder: a fresh topology (`<prefix>-…` with tiers of `tiers_ms`)
/// whose topics exist on the broker. Adjust `topo` (retries, max age, …) after creating it:
/// only its topic names are created.
pub struct Scenario {
    pub main: String,
    pub topo: Topology,
}

impl Scenario {
    /// Creates the topology's topics with `partitions` partitions each.
    pub async fn create(prefix: &str, tiers_ms: &[u64], partitions: i32) -> Scenario {
        let main = unique(prefix);
        let topo = topology(&main, tiers_ms);
        create_topology(&topo, partitions).await;
        Scenario { main, topo }
    }
}

/// The `rebound` binary, with the developer's own `REBOUND_*` settings kept out.
pub fn rebound() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_rebound"));
    for (k, _) in std::env::vars() {
        if k.starts_with("REBOUND_") && k != "REBOUND_TEST_BROKERS" {
            c.env_remove(k);
        }
    }
    c
}

/// Runs `c` to the end: (exit code, stdout, stderr).
pub fn output(c: &mut Command) -> (i32, String, String) {
    let out = c.output().expect("run rebound");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The ids (payload before `:`) read back from `topic`, sorted.
pub fn ids_in(topic: &str, want: usize, deadline: Duration) -> Vec<String> {
    let mut ids: Vec<String> = read_topic(topic, want, deadline)
        .iter()
        .map(|g| {
            g.payload_str()
                .split(':')
                .next()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    ids.sort();
    ids
}

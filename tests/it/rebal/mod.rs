//! Shared by the rebalance tests (`rebalance`, `reliability_rebalance`): the
//! group protocols to run on this broker, a plain group member that takes partitions away from
//! rebound and gives them back on cue, the revokes rebound logged (what it handed back), and a
//! handler that records when each call started and ended.

#![allow(dead_code)]

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use rebound::config::Config;
use rebound::handler::{Handler, Message, Outcome};

use crate::common::{broker_kind, brokers};

/// The group protocols to test on this broker: both on Apache Kafka; Tansu 0.6 has no KIP-848
/// consumer groups (no `ConsumerGroupHeartbeat`), so there only `classic`.
pub fn protocols() -> Vec<&'static str> {
    if broker_kind() == "tansu" {
        eprintln!("skipping group.protocol=consumer: Tansu 0.6 has no KIP-848 consumer groups");
        vec!["classic"]
    } else {
        vec!["consumer", "classic"]
    }
}

/// Whether `protocol` can run on this broker (prints why not).
pub fn runs_here(protocol: &str) -> bool {
    protocols().contains(&protocol)
}

/// Makes rebound join with `protocol` (`classic` gets rebound's default assignor,
/// cooperative-sticky).
pub fn with_protocol(cfg: &mut Config, protocol: &str) {
    cfg.cluster
        .kafka
        .0
        .push(("group.protocol".into(), protocol.into()));
}

/// The librdkafka properties a plain member needs to share a group with rebound.
fn member_props(protocol: &str) -> Vec<(&'static str, &'static str)> {
    match protocol {
        "consumer" => vec![("group.protocol", "consumer")],
        _ => vec![
            ("group.protocol", "classic"),
            ("partition.assignment.strategy", "cooperative-sticky"),
        ],
    }
}

/// A plain consumer in rebound's group, on its own thread: it takes part of the assignment
/// (what it is subscribed to), reads without handling or committing anything unless told to
/// commit, and gives its partitions back when it leaves.
pub struct Member {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    assigned: Arc<Mutex<Vec<(String, i32)>>>,
    commits: mpsc::Sender<(String, i32, i64)>,
}

impl Member {
    /// Joins `group` subscribed to `topics`.
    pub fn join(group: &str, topics: &[&str], protocol: &str) -> Member {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", brokers())
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("fetch.wait.max.ms", "20");
        for (k, v) in member_props(protocol) {
            c.set(k, v);
        }
        let consumer: BaseConsumer = c.create().expect("member");
        let topics: Vec<String> = topics.iter().map(|t| t.to_string()).collect();
        let refs: Vec<&str> = topics.iter().map(String::as_str).collect();
        consumer.subscribe(&refs).expect("subscribe");
        let stop = Arc::new(AtomicBool::new(false));
        let assigned = Arc::new(Mutex::new(Vec::new()));
        let (commits, todo) = mpsc::channel::<(String, i32, i64)>();
        let thread = {
            let (stop, assigned) = (stop.clone(), assigned.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let _ = consumer.poll(Duration::from_millis(50));
                    if let Ok(tpl) = consumer.assignment() {
                        *assigned.lock().unwrap() = tpl
                            .elements()
                            .iter()
                            .map(|e| (e.topic().to_string(), e.partition()))
                            .collect();
                    }
                    while let Ok((topic, partition, offset)) = todo.try_recv() {
                        let mut tpl = TopicPartitionList::new();
                        tpl.add_partition_offset(&topic, partition, Offset::Offset(offset))
                            .expect("tpl");
                        consumer
                            .commit(&tpl, CommitMode::Sync)
                            .expect("member commit");
                    }
                }
                consumer.unsubscribe();
                drop(consumer);
            })
        };
        Member {
            stop,
            thread: Some(thread),
            assigned,
            commits,
        }
    }

    /// What the member holds now.
    pub fn assigned(&self) -> Vec<(String, i32)> {
        self.assigned.lock().unwrap().clone()
    }

    /// Whether it holds `topic`/`partition`.
    pub fn holds(&self, topic: &str, partition: i32) -> bool {
        self.assigned()
            .iter()
            .any(|(t, p)| t == topic && *p == partition)
    }

    /// Commits `offset` for a partition it holds (from its own thread; waits for nothing).
    pub fn commit(&self, topic: &str, partition: i32, offset: i64) {
        self.commits
            .send((topic.to_string(), partition, offset))
            .expect("member thread");
    }

    /// Leaves the group (its partitions go back to the other members).
    pub fn leave(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().expect("member thread");
        }
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

// ---------------------------------------------------------------------------------------------
// What rebound logged at each revoke

static LOG: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();

struct Capture(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        if std::env::var_os("REBOUND_TEST_LOG").is_some() {
            let _ = std::io::stderr().write_all(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Captures rebound's poll-loop log (JSON lines) for [`revokes`]; call once per test binary
/// before starting rebound (later calls do nothing).
pub fn capture_log() {
    LOG.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let writer = buf.clone();
        let _ = tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_env_filter(tracing_subscriber::EnvFilter::new(
                std::env::var("REBOUND_TEST_LOG")
                    .unwrap_or_else(|_| "rebound::pipeline=info".into()),
            ))
            .with_writer(move || Capture(writer.clone()))
            .try_init();
        buf
    });
}

/// One partition given up by rebound, as logged: what it handed back.
#[derive(Debug, Clone)]
pub struct Revoke {
    pub topic: String,
    pub partition: i32,
    /// The next owner reads again from `from` (what was committed) ...
    pub from: Option<i64>,
    /// ... up to `until` (exclusive; the last offset rebound read + 1).
    pub until: Option<i64>,
    /// Offsets whose job was still running (their handler may have been called).
    pub running: Vec<i64>,
    pub at: DateTime<Utc>,
    pub why: String,
}

fn offsets(v: Option<&serde_json::Value>) -> Vec<i64> {
    v.and_then(|v| v.as_str())
        .unwrap_or("[]")
        .trim_matches(|c| c == '[' || c == ']')
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect()
}

/// Every partition of `topics` rebound has given up so far (revoked, lost, or stopped).
pub fn revokes(topics: &[&str]) -> Vec<Revoke> {
    let Some(buf) = LOG.get() else {
        return Vec::new();
    };
    let text = String::from_utf8_lossy(&buf.lock().unwrap()).into_owned();
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v.get("until").is_some() || v.get("handed_back").is_some())
        .filter_map(|v| {
            let topic = v.get("topic")?.as_str()?.to_string();
            if !topics.contains(&topic.as_str()) {
                return None;
            }
            Some(Revoke {
                partition: v.get("partition")?.as_i64()? as i32,
                from: v.get("from").and_then(|o| o.as_i64()),
                until: v.get("until").and_then(|o| o.as_i64()),
                running: offsets(v.get("running")),
                at: v
                    .get("timestamp")
                    .and_then(|t| t.as_str())
                    .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                    .map(|t| t.with_timezone(&Utc))
                    .unwrap_or_else(Utc::now),
                why: v
                    .get("message")
                    .and_then(|m| m.as_str())
                    .unwrap_or_default()
                    .to_string(),
                topic,
            })
        })
        .collect()
}

impl Revoke {
    /// Whether the next owner may read `offset` again because of this revoke.
    pub fn covers(&self, offset: i64) -> bool {
        matches!((self.from, self.until), (Some(f), Some(u)) if f <= offset && offset < u)
    }

    /// How many offsets the next owner reads again.
    pub fn handed_back(&self) -> i64 {
        match (self.from, self.until) {
            (Some(f), Some(u)) => u - f,
            _ => 0,
        }
    }
}

/// Per partition, every offset rebound handed back while its job was running.
pub fn handed_back_running(revokes: &[Revoke]) -> HashMap<(String, i32), BTreeSet<i64>> {
    let mut m: HashMap<(String, i32), BTreeSet<i64>> = HashMap::new();
    for r in revokes {
        m.entry((r.topic.clone(), r.partition))
            .or_default()
            .extend(r.running.iter().copied());
    }
    m
}

// ---------------------------------------------------------------------------------------------
// A handler that records when each call started and ended

/// One call.
#[derive(Debug, Clone)]
pub struct Timed {
    pub id: String,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub attempt: u32,
    pub start: Instant,
    pub end: Option<Instant>,
}

/// Payload `ID:BEHAVIOUR`: `ok`, `always` (transient), `slow-MS` (sleeps, then succeeds).
#[derive(Clone, Default)]
pub struct TimedHandler {
    pub calls: Arc<Mutex<Vec<Timed>>>,
}

impl TimedHandler {
    pub fn calls(&self) -> Vec<Timed> {
        self.calls.lock().unwrap().clone()
    }

    /// Calls whose payload id is `id`.
    pub fn of(&self, id: &str) -> Vec<Timed> {
        self.calls().into_iter().filter(|c| c.id == id).collect()
    }

    pub fn count_on(&self, topic: &str, partition: i32) -> usize {
        self.calls()
            .iter()
            .filter(|c| c.topic == topic && c.partition == partition)
            .count()
    }
}

#[async_trait::async_trait]
impl Handler for TimedHandler {
    async fn handle(&self, m: &Message) -> Outcome {
        let payload = String::from_utf8_lossy(m.payload()).into_owned();
        let (id, behaviour) = payload.split_once(':').unwrap_or((&payload, "ok"));
        let index = {
            let mut calls = self.calls.lock().unwrap();
            calls.push(Timed {
                id: id.to_string(),
                topic: m.topic.clone(),
                partition: m.partition,
                offset: m.offset,
                attempt: m.attempt,
                start: Instant::now(),
                end: None,
            });
            calls.len() - 1
        };
        let outcome = match behaviour {
            "always" => Outcome::transient("test_transient", "always fails"),
            b => {
                if let Some(ms) = b.strip_prefix("slow-").and_then(|s| s.parse().ok()) {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                }
                Outcome::Success
            }
        };
        self.calls.lock().unwrap()[index].end = Some(Instant::now());
        outcome
    }
}

//! Shared by the reliability suite (`tests/reliability_*.rs`): a recording HTTP handler that
//! outlives the rebound processes it serves, the `rebound` binary as a child process (kill -9,
//! SIGTERM), a private broker (Apache Kafka or Tansu) that can be stopped and started again, and the exact
//! accounting of produced ids against what was handled and what reached the DLQ.
//!
//! Why an HTTP sink rather than a shell script behind `--handler command`: the sink lives in the
//! test process, so it survives every `kill -9` of rebound; it sees each message's
//! `process_after` (forwarded with `--forward-headers process_after`) and its topic, partition,
//! offset and attempt (rebound's `X-Rebound-*` request headers); and it costs no fork per
//! message on a 2-core machine. The command handler gets its own chaos test.
//!
//! Sizes scale with `REBOUND_REL_SCALE` (default 1; `scripts/soak` runs the full variants).

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::FutureProducer;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use rebound::headers::{self as h, Header};
use rebound::Topology;

use crate::common::{eventually, free_port, Got, Handled, Out};

/// Multiplier for message counts and repetitions (`REBOUND_REL_SCALE`, default 1).
pub fn scale() -> usize {
    std::env::var("REBOUND_REL_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|n| *n >= 1)
        .unwrap_or(1)
}

/// A seed for the random parts of a scenario: `REBOUND_REL_SEED`, else the clock. Printed, so a
/// failing run can be repeated.
pub fn seed(what: &str) -> u64 {
    let seed = std::env::var("REBOUND_REL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(7)
        });
    eprintln!("{what}: seed {seed} (REBOUND_REL_SEED={seed} repeats it)");
    seed
}

/// A scratch directory for logs and broker storage; kept (and its path printed) when
/// `REBOUND_REL_KEEP` is set, to read the logs of a failed run.
pub fn workdir(what: &str) -> tempfile::TempDir {
    let mut dir = tempfile::Builder::new()
        .prefix(&format!("rebound-{what}-"))
        .tempdir()
        .expect("temp dir");
    if std::env::var_os("REBOUND_REL_KEEP").is_some() {
        dir.disable_cleanup(true);
        eprintln!("{what}: logs kept in {}", dir.path().display());
    }
    dir
}

// ---------------------------------------------------------------------------------------------
// The recording HTTP handler

/// An HTTP endpoint whose answer is scripted by the body `ID:BEHAVIOUR`, recording every request.
///
/// | behaviour | answer |
/// |---|---|
/// | `ok` | 200 |
/// | `fail-N` | 503 on attempts 0..N, then 200 |
/// | `always` | 503 |
/// | `permanent` | 400 |
/// | `wait-S` | 503 with `Retry-After: S` on attempt 0, then 200 |
/// | `slow-MS` | sleeps MS milliseconds, then 200 |
/// | `hang` | on attempt 0 never answers (until the sink is released), then 200 |
#[derive(Clone, Default)]
pub struct Sink {
    pub url: String,
    records: Arc<Mutex<Vec<Handled>>>,
    /// Extra latency per request, in milliseconds (set while the sink runs).
    pub delay_ms: Arc<std::sync::atomic::AtomicU64>,
    released: Arc<AtomicBool>,
    /// Connections accepted and not yet closed.
    open: Arc<AtomicUsize>,
}

fn header_str(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

async fn respond(State(sink): State<Sink>, headers: HeaderMap, body: Bytes) -> Response {
    let at = Utc::now();
    let text = String::from_utf8_lossy(&body).into_owned();
    let attempt: u32 = header_str(&headers, "x-rebound-attempt")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let process_after = headers
        .get_all("process_after")
        .iter()
        .next_back()
        .and_then(|v| h::parse_time(h::PROCESS_AFTER, Some(v.as_bytes())).ok());
    let index = {
        let mut records = sink.records.lock().unwrap();
        records.push(Handled {
            id: text.clone(),
            topic: header_str(&headers, "x-rebound-topic").unwrap_or_default(),
            partition: header_str(&headers, "x-rebound-partition")
                .and_then(|v| v.parse().ok())
                .unwrap_or(-1),
            offset: header_str(&headers, "x-rebound-offset")
                .and_then(|v| v.parse().ok())
                .unwrap_or(-1),
            attempt,
            at,
            process_after,
            status: 0,
            headers: Vec::new(),
        });
        records.len() - 1
    };
    let extra = sink.delay_ms.load(Ordering::Relaxed);
    if extra > 0 {
        tokio::time::sleep(Duration::from_millis(extra)).await;
    }
    let behaviour = text.split_once(':').map(|(_, b)| b).unwrap_or("ok");
    let mut retry_after = None;
    let status: u16 = match behaviour {
        "ok" => 200,
        "always" => 503,
        "permanent" => 400,
        "hang" if attempt == 0 => {
            while !sink.released.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            503
        }
        "hang" => 200,
        b => {
            if let Some(n) = b.strip_prefix("fail-").and_then(|n| n.parse::<u32>().ok()) {
                if attempt < n {
                    503
                } else {
                    200
                }
            } else if let Some(s) = b.strip_prefix("wait-").and_then(|s| s.parse::<u64>().ok()) {
                if attempt == 0 {
                    retry_after = Some(s);
                    503
                } else {
                    200
                }
            } else if let Some(ms) = b.strip_prefix("slow-").and_then(|s| s.parse::<u64>().ok()) {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                200
            } else {
                500
            }
        }
    };
    sink.records.lock().unwrap()[index].status = status;
    let mut resp = (StatusCode::from_u16(status).unwrap(), "sink").into_response();
    if let Some(s) = retry_after {
        resp.headers_mut()
            .insert("retry-after", s.to_string().parse().unwrap());
    }
    resp
}

impl Sink {
    /// Starts the sink on a free loopback port.
    pub async fn start() -> Sink {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let sink = Sink {
            url: format!("http://{}/handle", listener.local_addr().unwrap()),
            ..Sink::default()
        };
        let app = axum::Router::new()
            .route("/handle", axum::routing::post(respond))
            .with_state(sink.clone());
        let listener = Counted {
            inner: listener,
            open: sink.open.clone(),
        };
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        sink
    }

    /// Waits until every connection to the sink is closed. Called after a `kill -9`, when no
    /// other process is connected (a live reqwest client keeps idle connections open for a
    /// minute, and this would then panic): a request the killed process wrote just before it
    /// died can still be read by the sink after the kill, and so be recorded with a later time;
    /// once the kernel has closed the dead process's connections and the sink has read them to
    /// the end, nothing more of it can arrive.
    ///
    /// A connection still in the listener's accept queue is not counted yet, so after the count
    /// first reaches zero one probe request is answered on a new connection: the queue is first
    /// in, first out, so every earlier connection has been accepted (and counted) by then; the
    /// count is then awaited again. Panics after `limit`.
    pub async fn wait_closed(&self, limit: Duration) {
        let closed = || {
            let open = self.open.clone();
            move || {
                let open = open.clone();
                async move { open.load(Ordering::SeqCst) == 0 }
            }
        };
        eventually("every connection to the sink closed", limit, closed()).await;
        self.probe().await;
        eventually(
            "every connection to the sink closed (after the probe)",
            limit,
            closed(),
        )
        .await;
    }

    /// One `GET /handle` on a new connection, read to its end (answered 405; not recorded).
    async fn probe(&self) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let addr = self
            .url
            .trim_start_matches("http://")
            .trim_end_matches("/handle")
            .to_string();
        let mut conn = tokio::net::TcpStream::connect(&addr)
            .await
            .expect("probe connection to the sink");
        conn.write_all(b"GET /handle HTTP/1.1\r\nHost: sink\r\nConnection: close\r\n\r\n")
            .await
            .expect("probe request");
        let mut answer = Vec::new();
        conn.read_to_end(&mut answer).await.expect("probe answer");
        assert!(
            answer.starts_with(b"HTTP/1.1 405"),
            "the sink's answer to the probe: {}",
            String::from_utf8_lossy(&answer)
        );
    }

    pub fn records(&self) -> Vec<Handled> {
        self.records.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.records.lock().unwrap().len()
    }

    /// Lets every hanging request answer.
    pub fn release(&self) {
        self.released.store(true, Ordering::Relaxed);
    }

    /// Ids answered 200 at least once.
    pub fn succeeded(&self) -> std::collections::HashSet<String> {
        self.records
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.status == 200)
            .map(|r| r.id.clone())
            .collect()
    }
}

/// The sink's listener: counts the connections it accepted that are still open.
struct Counted {
    inner: tokio::net::TcpListener,
    open: Arc<AtomicUsize>,
}

impl axum::serve::Listener for Counted {
    type Io = CountedStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.inner.accept().await {
                Ok((io, addr)) => {
                    self.open.fetch_add(1, Ordering::SeqCst);
                    let open = self.open.clone();
                    return (CountedStream { io, open }, addr);
                }
                // A failed accept (a connection reset before it was taken, or too many open
                // files): try again shortly.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// A connection of the sink; uncounted when hyper drops it (the peer closed it, or it failed).
struct CountedStream {
    io: tokio::net::TcpStream,
    open: Arc<AtomicUsize>,
}

impl Drop for CountedStream {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::SeqCst);
    }
}

impl tokio::io::AsyncRead for CountedStream {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for CountedStream {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

// ---------------------------------------------------------------------------------------------
// The messages of a run and what must become of them

/// What must become of a message, from its behaviour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// Answered 200 at some attempt; never in the DLQ.
    Success,
    /// In the DLQ with this `rebound-dlq-reason`; never answered 200.
    Dead(&'static str),
}

pub fn fate(behaviour: &str, max_retries: u32) -> Fate {
    match behaviour {
        "always" => Fate::Dead("exhausted"),
        "permanent" => Fate::Dead("permanent"),
        b => match b.strip_prefix("fail-").and_then(|n| n.parse::<u32>().ok()) {
            Some(n) if n > max_retries => Fate::Dead("exhausted"),
            _ => Fate::Success,
        },
    }
}

/// `count` messages with ids `prefix-N`, behaviours drawn from `mix` (behaviour, weight).
pub fn plan(prefix: &str, count: usize, mix: &[(&str, u32)], rng: &mut impl rand::Rng) -> Vec<Out> {
    let total: u32 = mix.iter().map(|(_, w)| w).sum();
    (0..count)
        .map(|i| {
            let mut pick = rng.random_range(0..total);
            let behaviour = mix
                .iter()
                .find(|(_, w)| {
                    if pick < *w {
                        true
                    } else {
                        pick -= w;
                        false
                    }
                })
                .map(|(b, _)| *b)
                .unwrap_or("ok");
            let id = format!("{prefix}-{i}");
            Out::new(&id, &format!("{id}:{behaviour}"))
        })
        .collect()
}

/// A planned run: the messages to produce, what must become of each, and how many of them must
/// end in the DLQ.
pub struct Traffic {
    pub messages: Vec<Out>,
    pub fates: HashMap<String, Fate>,
    pub dead_expected: usize,
}

/// [`plan`] and [`fates_of`] together.
pub fn traffic(
    prefix: &str,
    count: usize,
    mix: &[(&str, u32)],
    max_retries: u32,
    rng: &mut impl rand::Rng,
) -> Traffic {
    let messages = plan(prefix, count, mix, rng);
    let fates = fates_of(&messages, max_retries);
    let dead_expected = dead_count(&fates);
    Traffic {
        messages,
        fates,
        dead_expected,
    }
}

/// How many of `fates` end in the DLQ.
pub fn dead_count(fates: &HashMap<String, Fate>) -> usize {
    fates
        .values()
        .filter(|f| matches!(f, Fate::Dead(_)))
        .count()
}

/// What must become of each message of `messages` (payloads `ID:BEHAVIOUR`).
pub fn fates_of(messages: &[Out], max_retries: u32) -> HashMap<String, Fate> {
    messages
        .iter()
        .map(|m| {
            let p = String::from_utf8(m.payload.clone().unwrap_or_default()).unwrap();
            let (id, b) = p.split_once(':').unwrap_or((&p, "ok"));
            (id.to_string(), fate(b, max_retries))
        })
        .collect()
}

/// Waits (at most `within`) until the sink has seen every id of `fates` reach its end.
pub async fn wait_finished(
    sink: &Sink,
    fates: &HashMap<String, Fate>,
    max_retries: u32,
    within: Duration,
) {
    let (s, f) = (sink.clone(), fates.clone());
    eventually("every id handled to its end", within, || {
        let (s, f) = (s.clone(), f.clone());
        async move { finished(&s, &f, max_retries) }
    })
    .await;
}

/// Waits until the sink has seen more than `beyond` calls, unless every id has already reached
/// its end (then nothing is left to handle): at most 30 s plus one cool-down of the default
/// circuit breaker ([`breaker_pause`]).
pub async fn wait_progress(
    what: &str,
    sink: &Sink,
    beyond: usize,
    fates: &HashMap<String, Fate>,
    max_retries: u32,
) {
    wait_progress_for(
        what,
        sink,
        beyond,
        fates,
        max_retries,
        Duration::from_secs(30) + breaker_pause(),
    )
    .await
}

/// How long the default circuit breaker starts nothing once open (its cool-down). The suite's
/// traffic mixes fail most fresh calls on purpose (every failure makes a copy), and a streak
/// of them can open the breaker (≥ 80 % of ≥ 20 calls; seen with 20 of 25 in the zombie test
/// of `exactly_once`), which then makes no call for 30 s: as long as the 30 s wait for progress
/// that failed there once in a full suite run. A wait for progress allows for one such pause;
/// rebound keeps its default breaker.
pub fn breaker_pause() -> Duration {
    rebound::breaker::BreakerConfig::default().cooldown
}

/// [`wait_progress`] with its own deadline.
pub async fn wait_progress_for(
    what: &str,
    sink: &Sink,
    beyond: usize,
    fates: &HashMap<String, Fate>,
    max_retries: u32,
    deadline: Duration,
) {
    let (s, f) = (sink.clone(), fates.clone());
    eventually(what, deadline, || {
        let (s, f) = (s.clone(), f.clone());
        async move { s.count() > beyond || finished(&s, &f, max_retries) }
    })
    .await;
}

/// Whether the sink has seen every id reach its end: an answer 200 for the ones that succeed,
/// the final failing answer for the ones bound for the DLQ.
pub fn finished(sink: &Sink, fates: &HashMap<String, Fate>, max_retries: u32) -> bool {
    let mut done = std::collections::HashSet::new();
    for r in sink.records() {
        let id = r.id.split_once(':').map(|(i, _)| i).unwrap_or(&r.id);
        let end = match fates.get(id) {
            Some(Fate::Success) => r.status == 200,
            Some(Fate::Dead("permanent")) => r.status == 400,
            Some(Fate::Dead(_)) => r.status == 503 && r.attempt >= max_retries,
            None => false,
        };
        if end {
            done.insert(id.to_string());
        }
    }
    done.len() == fates.len()
}

/// A record of a topic: (topic, partition, offset).
pub type RecordId = (String, i32, i64);

/// The exact accounting of one scenario.
#[derive(Debug, Default)]
pub struct Accounting {
    pub produced: usize,
    pub succeeded: usize,
    pub dead: BTreeMap<String, usize>,
    /// Ids that are neither answered 200 nor in the DLQ.
    pub missing: Vec<String>,
    /// Ids that ended somewhere their behaviour does not allow.
    pub wrong: Vec<String>,
    /// Handler calls in all.
    pub calls: usize,
    /// Records (topic, partition, offset) handled more than once, with their handling times.
    pub repeats: Vec<(RecordId, Vec<DateTime<Utc>>)>,
    /// Ids answered 200 more than once (what a user of an at-least-once service sees).
    pub duplicate_successes: usize,
    /// DLQ records beyond one per dead id.
    pub duplicate_dead: usize,
    /// Tier handlings that started before their `process_after`.
    pub early: Vec<String>,
    /// Tier handlings: (count, worst lateness in ms).
    pub retries: usize,
    pub max_lateness_ms: i64,
}

impl Accounting {
    /// One line for the figures in RELIABILITY.md.
    pub fn summary(&self) -> String {
        format!(
            "produced={} succeeded={} dead={:?} missing={} wrong={} calls={} retries={} repeats={} duplicate_successes={} duplicate_dlq={} early={} max_lateness_ms={}",
            self.produced,
            self.succeeded,
            self.dead,
            self.missing.len(),
            self.wrong.len(),
            self.calls,
            self.retries,
            self.repeats.len(),
            self.duplicate_successes,
            self.duplicate_dead,
            self.early.len(),
            self.max_lateness_ms
        )
    }

    /// Fails the test unless every id is where its behaviour says and nothing was early.
    pub fn assert_exact(&self) {
        assert!(
            self.missing.is_empty(),
            "LOST {} ids (first 20: {:?}); {}",
            self.missing.len(),
            &self.missing[..self.missing.len().min(20)],
            self.summary()
        );
        assert!(
            self.wrong.is_empty(),
            "{} ids ended in the wrong place (first 20: {:?}); {}",
            self.wrong.len(),
            &self.wrong[..self.wrong.len().min(20)],
            self.summary()
        );
        assert!(
            self.early.is_empty(),
            "{} retries handled before process_after (first 20: {:?}); {}",
            self.early.len(),
            &self.early[..self.early.len().min(20)],
            self.summary()
        );
    }
}

/// Accounts for every produced message: `fates` maps id → what must become of it.
pub fn account(
    fates: &HashMap<String, Fate>,
    handled: &[Handled],
    dlq: &[Got],
    tiers: &Topology,
) -> Accounting {
    let mut a = Accounting {
        produced: fates.len(),
        calls: handled.len(),
        ..Accounting::default()
    };
    let id_of = |payload: &str| {
        payload
            .split_once(':')
            .map(|(i, _)| i)
            .unwrap_or(payload)
            .to_string()
    };
    let mut ok_count: HashMap<String, usize> = HashMap::new();
    let mut by_record: HashMap<RecordId, Vec<DateTime<Utc>>> = HashMap::new();
    for r in handled {
        if r.status == 200 {
            *ok_count.entry(id_of(&r.id)).or_default() += 1;
        }
        by_record
            .entry((r.topic.clone(), r.partition, r.offset))
            .or_default()
            .push(r.at);
        if tiers
            .stage_of(&r.topic)
            .is_some_and(|s| s != rebound::topology::Stage::Main)
        {
            a.retries += 1;
            match r.process_after {
                None => a.early.push(format!("{} (no process_after)", r.id)),
                Some(due) if r.at < due => a.early.push(format!(
                    "{} at {} < {}",
                    r.id,
                    h::format_time(r.at),
                    h::format_time(due)
                )),
                Some(due) => {
                    a.max_lateness_ms = a.max_lateness_ms.max((r.at - due).num_milliseconds())
                }
            }
        }
    }
    let mut dead_reason: HashMap<String, Vec<String>> = HashMap::new();
    for g in dlq {
        let reason = g.header(h::DLQ_REASON).unwrap_or_else(|| "(none)".into());
        dead_reason
            .entry(id_of(&g.payload_str()))
            .or_default()
            .push(reason);
    }
    for (id, fate) in fates {
        let oks = ok_count.get(id).copied().unwrap_or(0);
        let dead = dead_reason.get(id);
        if oks > 1 {
            a.duplicate_successes += oks - 1;
        }
        if let Some(d) = dead {
            a.duplicate_dead += d.len().saturating_sub(1);
        }
        match (fate, oks, dead) {
            (_, 0, None) => a.missing.push(id.clone()),
            (Fate::Success, _, None) => a.succeeded += 1,
            (Fate::Dead(reason), 0, Some(d)) if d.iter().all(|r| r == reason) => {
                *a.dead.entry(reason.to_string()).or_default() += 1;
            }
            _ => a
                .wrong
                .push(format!("{id}: expected {fate:?}, ok={oks}, dlq={dead:?}")),
        }
    }
    for id in dead_reason.keys() {
        if !fates.contains_key(id) {
            a.wrong.push(format!("{id}: in the DLQ but never produced"));
        }
    }
    let mut repeats: Vec<_> = by_record.into_iter().filter(|(_, t)| t.len() > 1).collect();
    repeats.sort();
    a.repeats = repeats;
    a
}

// ---------------------------------------------------------------------------------------------
// Kafka helpers that take the broker address (the broker-restart test has its own broker)

pub fn producer_at(brokers: &str, extra: &[(&str, &str)]) -> FutureProducer {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers);
    for (k, v) in crate::common::one_record_per_batch().iter().chain(extra) {
        c.set(*k, *v);
    }
    c.create().expect("producer")
}

/// Produces every record (batched as `producer_at` does), many in flight at once, and waits for all acks.
pub async fn produce_many(brokers: &str, topic: &str, records: &[Out]) {
    let p = producer_at(brokers, &[("message.max.bytes", "8000000")]);
    let mut pending = Vec::with_capacity(records.len());
    for r in records {
        pending.push(p.send(r.record(topic), Duration::from_secs(30)));
    }
    for (i, result) in futures::future::join_all(pending)
        .await
        .into_iter()
        .enumerate()
    {
        if let Err((e, _)) = result {
            panic!("produce record {i} to {topic}: {e}");
        }
    }
}

/// Produces `messages` to `topic` in chunks of `chunk`, one chunk every `every`, in a task:
/// steady traffic while the test kills, stops or pauses rebound.
pub fn feed(
    brokers: &str,
    topic: &str,
    messages: &[Out],
    chunk: usize,
    every: Duration,
) -> tokio::task::JoinHandle<()> {
    let (brokers, topic, messages) = (brokers.to_string(), topic.to_string(), messages.to_vec());
    tokio::spawn(async move {
        for c in messages.chunks(chunk) {
            produce_many(&brokers, &topic, c).await;
            tokio::time::sleep(every).await;
        }
    })
}

/// The DLQ of `topo` once at least `expected` records are there and nothing more came for 1 s
/// (or `deadline` passed).
pub fn read_dlq(brokers: &str, topo: &Topology, expected: usize, deadline: Duration) -> Vec<Got> {
    crate::common::read_at(
        brokers,
        &topo.dlq,
        expected,
        Duration::from_secs(1),
        deadline,
    )
}

/// The group's committed offset of each partition of `topic` (`None`: nothing committed).
pub fn committed(brokers: &str, group: &str, topic: &str, partitions: i32) -> Vec<Option<i64>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let got = consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .expect("committed offsets");
    (0..partitions)
        .map(|p| match got.find_partition(topic, p).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => Some(o),
            _ => None,
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The rebound binary as a child process

/// `rebound run` arguments for `topology` with the HTTP sink as handler. Tiers are given in the
/// short syntax; rebound's own librdkafka defaults, except that Tansu needs one record per batch
/// from rebound's producer too.
pub fn run_args(
    brokers: &str,
    topology: &Topology,
    group: &str,
    sink: &Sink,
    metrics_port: u16,
) -> Vec<String> {
    let tiers: Vec<String> = topology
        .tiers
        .iter()
        .map(|t| rebound::duration::format(t.delay))
        .collect();
    let mut args: Vec<String> = [
        "run",
        "--brokers",
        brokers,
        "--topic",
        &topology.main,
        "--tiers",
        &tiers.join(","),
        "--max-retries",
        &topology.max_retries.to_string(),
        "--group",
        group,
        "--handler",
        "http",
        "--url",
        &sink.url,
        "--forward-headers",
        "process_after",
        "--metrics-addr",
        &format!("127.0.0.1:{metrics_port}"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for (k, v) in crate::common::one_record_per_batch() {
        args.extend(["-X".to_string(), format!("{k}={v}")]);
    }
    args
}

/// A running `rebound` process; killed when dropped.
pub struct Proc {
    pub child: Child,
    pub metrics: SocketAddr,
    pub log: PathBuf,
    pub started: Instant,
}

impl Proc {
    /// Starts `rebound args…`, appending its stderr to `log`.
    pub fn spawn(args: &[String], metrics_port: u16, log: &Path, env: &[(&str, &str)]) -> Proc {
        let file = File::options()
            .create(true)
            .append(true)
            .open(log)
            .expect("log file");
        let mut cmd = crate::common::rebound();
        cmd.args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::from(file))
            .env("RUST_LOG", "info");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn rebound");
        Proc {
            child,
            metrics: SocketAddr::from(([127, 0, 0, 1], metrics_port)),
            log: log.to_path_buf(),
            started: Instant::now(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `kill -9`.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits up to `limit`; returns the exit status and how long it took.
    pub fn term(&mut self, limit: Duration) -> (Option<ExitStatus>, Duration) {
        let t = Instant::now();
        signal(self.pid(), "TERM");
        (self.wait(limit), t.elapsed())
    }

    pub fn wait(&mut self, limit: Duration) -> Option<ExitStatus> {
        let until = Instant::now() + limit;
        while Instant::now() < until {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    /// Whether it still runs (it must never exit on its own).
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Resident set size in KiB, from /proc.
    pub fn rss_kib(&self) -> Option<u64> {
        rss_kib(self.pid())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
}

pub fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "kill -{sig} {pid}");
}

/// GET `path` on a metrics server: (status, body), or `None` when it does not answer.
pub async fn get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .ok()?;
    let resp = client
        .get(format!("http://{addr}{path}"))
        .send()
        .await
        .ok()?;
    let status = resp.status().as_u16();
    Some((status, resp.text().await.unwrap_or_default()))
}

/// The sum over all label sets of a metric in Prometheus text.
pub fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.starts_with(name)
                && l[name.len()..]
                    .chars()
                    .next()
                    .is_some_and(|c| c == '{' || c == ' ')
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Waits until the process answers `/readyz` with 200.
pub async fn wait_readyz(p: &Proc, deadline: Duration) {
    let addr = p.metrics;
    eventually("/readyz 200", deadline, || async move {
        matches!(get(addr, "/readyz").await, Some((200, _)))
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// A private broker (for the broker-restart scenario)

/// A broker of the suite's kind (`common::broker_kind`) on its own port, whose data survives a
/// restart: Apache Kafka keeps its log dirs in `dir/kafka`; Tansu uses `sqlite://` storage in
/// `dir` (its memory engine would forget everything).
pub struct OwnBroker {
    pub port: u16,
    pub dir: PathBuf,
    kafka: bool,
    child: Option<Child>,
}

impl OwnBroker {
    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn start(port: u16, dir: &Path) -> OwnBroker {
        let kafka = crate::common::broker_kind() != "tansu";
        let mut b = OwnBroker {
            port,
            dir: dir.to_path_buf(),
            kafka,
            child: None,
        };
        if kafka {
            let status = Command::new(kafka_node())
                .arg("prepare")
                .arg(dir.join("kafka"))
                .arg(port.to_string())
                .arg(free_port().to_string())
                .status()
                .expect("scripts/lib/kafka-node prepare");
            assert!(status.success(), "kafka-node prepare failed");
        }
        b.up();
        b
    }

    fn tansu_binary() -> String {
        let home = std::env::var("HOME").unwrap_or_default();
        let local = format!("{home}/.cargo/bin/tansu");
        if Command::new("tansu").arg("--version").output().is_ok() {
            "tansu".into()
        } else {
            local
        }
    }

    /// Starts the broker (again) on the same port and data, and waits until it answers a
    /// Metadata request.
    pub fn up(&mut self) {
        assert!(self.child.is_none(), "broker already running");
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.dir.join("broker.log"))
            .expect("broker log");
        let mut cmd = if self.kafka {
            let mut c = Command::new(kafka_node());
            c.arg("exec").arg(self.dir.join("kafka"));
            c
        } else {
            let url = format!("tcp://127.0.0.1:{}", self.port);
            let mut c = Command::new(Self::tansu_binary());
            c.args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
                "--storage-engine",
                "sqlite://rebound-rel.db",
            ]);
            c
        };
        let child = cmd
            .current_dir(&self.dir)
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start the broker (scripts/test installs it)");
        self.child = Some(child);
        let status = Command::new(kafka_node())
            .args(["wait", &self.port.to_string(), "90"])
            .status()
            .expect("scripts/lib/kafka-node wait");
        assert!(
            status.success(),
            "the broker on {} did not answer within 90 s; see {}",
            self.port,
            self.dir.join("broker.log").display()
        );
    }

    /// Stops the broker (SIGTERM, then SIGKILL after 20 s) and waits until it has exited.
    pub fn down(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(child.id(), "TERM");
            let until = Instant::now() + Duration::from_secs(20);
            while Instant::now() < until {
                if child.try_wait().ok().flatten().is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.dir.join("broker.log")).unwrap_or_default()
    }
}

/// `scripts/lib/kafka-node`: starts Apache Kafka, and answers "does a broker answer a Metadata
/// request on this port" for either broker.
fn kafka_node() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/lib/kafka-node")
}

impl Drop for OwnBroker {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Headers with a raw name (not UTF-8) and value.
pub fn raw_header(name: &[u8], value: Option<&[u8]>) -> Header {
    Header {
        name: name.to_vec(),
        value: value.map(<[u8]>::to_vec),
    }
}

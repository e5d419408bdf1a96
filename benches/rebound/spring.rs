//! rebound vs Spring Kafka's non-blocking retries (`@RetryableTopic`), issue 19.
//!
//! Both sides run as child processes of the bench, on the same broker, with the same handler
//! behaviour and the same output protocol, so that their CPU and memory are measured alike:
//! - **rebound**: this bench binary re-executed with `REBOUND_BENCH_PEER_CHILD=1` ([`child_main`]):
//!   `rebound::Service` with its defaults and an in-process handler;
//! - **Spring**: `benches/peers/spring-retry` (Spring Boot 4, spring-kafka 4), a jar built by
//!   `scripts/bench`, run with `java -Xmx256m -jar`.
//!
//! The handler reads the payload `ID|ok` (succeed), `ID|tN` (fail transiently on the first N
//! attempts) or `ID|p` (fail permanently). Each side appends lines to a file the bench tails:
//! `READY`, `C calls`, `A id attempt topic partition start_us due_us outcome` (one per handler
//! call when recording) and `D id` (Spring's DLT handler). The due time is rebound's
//! `process_after` and Spring's `retry_topic-backoff-timestamp`; both have millisecond precision.
//!
//! Fairness: the same partition count for every topic (main, tiers / retry topics, DLQ / DLT),
//! Spring's listener concurrency equal to that partition count (rebound has one consumer with
//! `--max-in-flight 32`, more than the partitions, so every partition is handled in parallel on
//! both sides), and each side's defaults otherwise. What is changed is listed in BENCHMARKS.md.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use futures::stream::{FuturesUnordered, StreamExt};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use rebound::config::{Config, KafkaProps};
use rebound::headers;
use rebound::{Handler, Message, Outcome, Service, Topology};
use tokio_util::sync::CancellationToken;

use crate::scenarios::{extra_props, list, Ctx, Row};
use crate::support::{self, median, quantile, Batching, Seed, Window};

/// Set in the environment of the re-executed bench binary that runs rebound as a peer.
pub const CHILD_ENV: &str = "REBOUND_BENCH_PEER_CHILD";

/// Partitions of every topic of both sides, and Spring's listener concurrency.
const PARTITIONS: i32 = 6;

/// The back-off tiers of the retry scenarios: rebound's `--tiers 1s,2s,4s`, Spring's
/// `@BackOff(delay = 1000, multiplier = 2)` with 4 attempts.
const TIERS: [Duration; 3] = [
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(4),
];

/// The due retries per second of scenario 1, rising.
const RATES: [u64; 3] = [200, 1000, 3000];

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Side {
    Rebound,
    Spring,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Side::Rebound => "rebound",
            Side::Spring => "Spring",
        }
    }

    /// The two sides in the order of run `run`: rebound first on even runs.
    fn order(run: usize) -> [Side; 2] {
        if run % 2 == 0 {
            [Side::Rebound, Side::Spring]
        } else {
            [Side::Spring, Side::Rebound]
        }
    }
}

/// One handler call as a peer reported it.
#[derive(Debug, Clone)]
pub(crate) struct Attempt {
    id: u64,
    /// Failed attempts before this one (0 on the main topic).
    attempt: u32,
    pub(crate) start_us: i64,
    /// Due time in epoch µs; -1 when the message had none (main topic).
    pub(crate) due_us: i64,
    success: bool,
}

/// What the bench has read from a peer's output file so far.
#[derive(Default)]
pub(crate) struct Seen {
    ready: AtomicBool,
    pub(crate) calls: AtomicU64,
    dead: AtomicU64,
    pub(crate) attempts: Mutex<Vec<Attempt>>,
}

impl Seen {
    fn parse(&self, line: &str) {
        let f: Vec<&str> = line.split_whitespace().collect();
        match f.as_slice() {
            ["READY"] => self.ready.store(true, Ordering::Relaxed),
            ["C", n] => {
                if let Ok(n) = n.parse() {
                    self.calls.store(n, Ordering::Relaxed);
                }
            }
            ["D", _] => {
                self.dead.fetch_add(1, Ordering::Relaxed);
            }
            ["A", id, attempt, _topic, _partition, start, due, outcome] => {
                let parsed = (|| {
                    Some(Attempt {
                        id: id.parse().ok()?,
                        attempt: attempt.parse().ok()?,
                        start_us: start.parse().ok()?,
                        due_us: due.parse().ok()?,
                        success: *outcome == "success",
                    })
                })();
                match parsed {
                    Some(a) => {
                        if let Ok(mut v) = self.attempts.lock() {
                            v.push(a);
                        }
                    }
                    None => eprintln!("[spring] unreadable peer line: {line}"),
                }
            }
            _ => {}
        }
    }

    fn successes_of(&self, ids: impl Fn(u64) -> bool) -> usize {
        self.attempts
            .lock()
            .map(|v| v.iter().filter(|a| a.success && ids(a.id)).count())
            .unwrap_or(0)
    }
}

/// Reads `path` as it grows and hands each complete line to `seen`, until `stop` (then once
/// more).
async fn tail(path: PathBuf, seen: Arc<Seen>, stop: CancellationToken) {
    let mut pos = 0u64;
    let mut partial = String::new();
    loop {
        let last = stop.is_cancelled();
        if let Ok(mut f) = std::fs::File::open(&path) {
            let mut chunk = String::new();
            if f.seek(SeekFrom::Start(pos)).is_ok() && f.read_to_string(&mut chunk).is_ok() {
                pos += chunk.len() as u64;
                partial.push_str(&chunk);
                while let Some(i) = partial.find('\n') {
                    let line: String = partial.drain(..=i).collect();
                    seen.parse(line.trim_end());
                }
            }
        }
        if last {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// What a peer is started with.
pub(crate) struct Spec<'a> {
    pub(crate) main: &'a str,
    pub(crate) tiers: &'a [Duration],
    /// Report every handler call (`A` lines) or only the count.
    pub(crate) record_all: bool,
}

/// A running peer process.
pub(crate) struct Peer {
    side: Side,
    child: std::process::Child,
    pub(crate) seen: Arc<Seen>,
    stop_tail: CancellationToken,
    tail: tokio::task::JoinHandle<()>,
    log: PathBuf,
}

fn peers_dir() -> PathBuf {
    let d = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-peers");
    std::fs::create_dir_all(&d).expect("target/bench-peers");
    d
}

/// The Spring peer's jar: `REBOUND_BENCH_SPRING_JAR`, else where `scripts/bench` builds it.
fn spring_jar() -> PathBuf {
    std::env::var_os("REBOUND_BENCH_SPRING_JAR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("benches/peers/spring-retry/target/spring-retry-peer.jar")
        })
}

/// Spring's `@RetryableTopic` settings for `tiers`: (attempts, first delay in ms, multiplier).
/// One tier is a fixed back-off (multiplier 0); several must grow by one factor.
fn spring_backoff(tiers: &[Duration]) -> (usize, u128, f64) {
    let first = tiers[0].as_millis();
    let multiplier = if tiers.len() > 1 {
        tiers[1].as_millis() as f64 / first as f64
    } else {
        0.0
    };
    for w in tiers.windows(2) {
        let m = w[1].as_millis() as f64 / w[0].as_millis() as f64;
        assert!(
            (m - multiplier).abs() < 1e-9,
            "Spring's back-off needs tiers that grow by one factor"
        );
    }
    (tiers.len() + 1, first, multiplier)
}

impl Peer {
    /// Starts a peer and waits until it is ready (every partition assigned).
    pub(crate) async fn start(ctx: &Ctx, side: Side, spec: &Spec<'_>) -> Peer {
        let mut peer = Peer::spawn(ctx, side, spec);
        peer.wait_ready().await;
        peer
    }

    /// Starts a peer on the three [`TIERS`] that reports every handler call, and waits for it.
    async fn recording(ctx: &Ctx, side: Side, main: &str) -> Peer {
        let spec = Spec {
            main,
            tiers: &TIERS,
            record_all: true,
        };
        Peer::start(ctx, side, &spec).await
    }

    /// Starts a peer without waiting for it.
    fn spawn(ctx: &Ctx, side: Side, spec: &Spec<'_>) -> Peer {
        let dir = peers_dir();
        let tag = format!("{}-{}", spec.main, side.name());
        let out = dir.join(format!("{tag}.out"));
        let log = dir.join(format!("{tag}.log"));
        let _ = std::fs::remove_file(&out);
        let group = support::unique(&format!("peer-{}", side.name()));
        let record = if spec.record_all { "all" } else { "count" };
        let mut cmd = match side {
            Side::Rebound => {
                let tiers: Vec<String> = spec
                    .tiers
                    .iter()
                    .map(|t| t.as_millis().to_string())
                    .collect();
                let mut c = std::process::Command::new(
                    std::env::current_exe().expect("the bench binary's path"),
                );
                c.env(CHILD_ENV, "1")
                    .env("REBOUND_PEER_BROKERS", &ctx.brokers)
                    .env("REBOUND_PEER_TOPIC", spec.main)
                    .env("REBOUND_PEER_GROUP", &group)
                    .env("REBOUND_PEER_TIERS_MS", tiers.join(","))
                    .env("REBOUND_PEER_OUT", &out)
                    .env("REBOUND_PEER_RECORD", record)
                    .env("RUST_LOG", "warn");
                c
            }
            Side::Spring => {
                let (attempts, delay, multiplier) = spring_backoff(spec.tiers);
                let java = std::env::var("REBOUND_BENCH_JAVA").unwrap_or_else(|_| "java".into());
                let mut c = std::process::Command::new(java);
                c.arg("-Xmx256m")
                    .arg("-jar")
                    .arg(spring_jar())
                    .arg(format!("--spring.kafka.bootstrap-servers={}", ctx.brokers))
                    .arg(format!("--spring.kafka.listener.concurrency={PARTITIONS}"))
                    .arg(format!("--bench.topic={}", spec.main))
                    .arg(format!("--bench.group={group}"))
                    .arg(format!("--bench.attempts={attempts}"))
                    .arg(format!("--bench.delay={delay}"))
                    .arg(format!("--bench.multiplier={multiplier}"))
                    .arg(format!("--bench.partitions={PARTITIONS}"))
                    .arg(format!("--bench.out={}", out.display()))
                    .arg(format!("--bench.record={record}"));
                // Extra Spring properties for experiments, e.g.
                // `--spring.kafka.listener.poll-timeout=1s` (whitespace-separated).
                if let Ok(extra) = std::env::var("REBOUND_BENCH_SPRING_ARGS") {
                    c.args(extra.split_whitespace());
                }
                c
            }
        };
        let logf = std::fs::File::create(&log).expect("peer log file");
        cmd.stdin(std::process::Stdio::null())
            .stdout(logf.try_clone().expect("peer log file"))
            .stderr(logf);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting the {} peer: {e}", side.name()));
        let seen = Arc::new(Seen::default());
        let stop_tail = CancellationToken::new();
        let tail = tokio::spawn(tail(out, seen.clone(), stop_tail.clone()));
        Peer {
            side,
            child,
            seen,
            stop_tail,
            tail,
            log,
        }
    }

    async fn wait_ready(&mut self) {
        let until = Instant::now() + Duration::from_secs(120);
        let name = self.side.name();
        while !self.seen.ready.load(Ordering::Relaxed) {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "the {name} peer exited at start-up ({status}); its log: {}",
                    self.log.display()
                );
            }
            assert!(
                Instant::now() < until,
                "the {name} peer was not ready within 120 s; its log: {}",
                self.log.display()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, then up to 60 s for a clean exit (SIGKILL after that); reads the rest of the
    /// output. Returns whether it exited by itself.
    pub(crate) async fn stop(mut self) -> (Arc<Seen>, bool) {
        let _ = std::process::Command::new("kill")
            .arg(self.pid().to_string())
            .status();
        let until = Instant::now() + Duration::from_secs(60);
        let mut clean = false;
        while Instant::now() < until {
            if let Ok(Some(_)) = self.child.try_wait() {
                clean = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if !clean {
            eprintln!(
                "[spring] the {} peer did not stop within 60 s of SIGTERM; killed",
                self.side.name()
            );
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        self.stop_tail.cancel();
        let _ = self.tail.await;
        (self.seen, clean)
    }
}

/// Waits until `done()` or `limit`; false on the deadline.
async fn wait_until(done: impl Fn() -> bool, limit: Duration) -> bool {
    crate::common::waited(limit, Duration::from_millis(10), || {
        std::future::ready(done())
    })
    .await
}

fn now_us() -> i64 {
    Utc::now().timestamp_micros()
}

fn producer(ctx: &Ctx) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", &ctx.brokers)
        .set("acks", "all")
        .create()
        .expect("bench producer")
}

/// Sends `ids` to `topic` at `rate` per second (key `k<id>`, payload `<id>|<behaviour>`), in
/// steps of 5 ms; returns each id's send time (epoch µs) once all are acknowledged.
async fn paced_send(
    p: &FutureProducer,
    topic: &str,
    ids: std::ops::Range<u64>,
    rate: f64,
    behaviour: &str,
) -> HashMap<u64, i64> {
    let started = Instant::now();
    let mut sent = HashMap::new();
    let mut pending = FuturesUnordered::new();
    let total = ids.end - ids.start;
    let mut next = ids.start;
    let check = |r: Result<rdkafka::producer::future_producer::OwnedDeliveryResult, _>| match r {
        Ok(Ok(_)) => {}
        Ok(Err((e, _))) => panic!("sending to {topic}: {e}"),
        Err(_) => panic!("sending to {topic}: delivery cancelled"),
    };
    while next < ids.end {
        let due = ((started.elapsed().as_secs_f64() * rate) as u64).min(total);
        while next < ids.start + due {
            let key = format!("k{next}");
            let payload = format!("{next}|{behaviour}");
            sent.insert(next, now_us());
            let rec = FutureRecord::to(topic).key(&key).payload(&payload);
            match p.send_result(rec) {
                Ok(f) => pending.push(f),
                Err((e, _)) => panic!("sending to {topic}: {e}"),
            }
            next += 1;
        }
        while let Some(r) = futures::FutureExt::now_or_never(pending.next()).flatten() {
            check(r);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    while let Some(r) = pending.next().await {
        check(r);
    }
    sent
}

/// The main topic, and for rebound its tiers and DLQ (Spring creates its own retry topics and
/// DLT with `numPartitions` = [`PARTITIONS`]).
async fn create_for(ctx: &Ctx, side: Side, main: &str, tiers: &[Duration]) {
    let topology = Topology::new(main, tiers);
    let topics = match side {
        Side::Rebound => topology.topics(),
        Side::Spring => vec![main],
    };
    support::create_topics(&ctx.brokers, &topics, PARTITIONS).await;
}

fn ms(us: i64) -> f64 {
    us as f64 / 1000.0
}

/// The `q` quantiles of `v` formatted as ms.
fn qms(v: &[f64], q: f64) -> String {
    format!("{:.1} ms", quantile(v, q))
}

fn ratio(r: f64, s: f64) -> String {
    if s == 0.0 || !r.is_finite() || !s.is_finite() {
        return "—".into();
    }
    format!("{:.2}", r / s)
}

/// A "report" row from each side's figure per run: medians, their ratio, and every run.
fn figure_row(
    scenario: &str,
    metric: String,
    r: &[f64],
    s: &[f64],
    digits: usize,
    unit: &str,
) -> Row {
    Row {
        scenario: scenario.into(),
        metric,
        rebound: format!("{:.digits$}{unit}", median(r)),
        baseline: format!("{:.digits$}{unit}", median(s)),
        ratio: ratio(median(r), median(s)),
        bar: "report".into(),
        met: None,
        detail: format!(
            "rebound [{}], Spring [{}]{unit}",
            list(r, digits),
            list(s, digits)
        ),
    }
}

// ---------------------------------------------------------------------------------------------
// 1 + 2: lateness at rising rates, end-to-end time of a message that fails twice

/// One side's figures from one run of the retry scenarios.
#[derive(Default)]
struct RetryRun {
    /// End-to-end ms minus the sum of the two back-offs (3 s), per message.
    e2e_over: Vec<f64>,
    /// Per rate: lateness of each retry in ms, and the due rate achieved (retries per second).
    late: Vec<(Vec<f64>, f64)>,
    /// VmRSS in MiB once ready, before any message (three tiers, every partition assigned).
    rss_idle: f64,
}

async fn retry_run(ctx: &Ctx, side: Side, run: usize) -> RetryRun {
    let main = support::unique(&format!("sp1-{}", side.name()));
    create_for(ctx, side, &main, &TIERS).await;
    let peer = Peer::recording(ctx, side, &main).await;
    let p = producer(ctx);
    let mut result = RetryRun {
        rss_idle: support::rss_mib(peer.pid()).0,
        ..RetryRun::default()
    };

    // 2: messages that fail twice, one every 250 ms.
    let k = ctx.n(20, 10) as u64;
    let sent = paced_send(&p, &main, 0..k, 4.0, "t2").await;
    if !wait_until(
        || peer.seen.successes_of(|id| id < k) >= k as usize,
        Duration::from_secs(60),
    )
    .await
    {
        eprintln!(
            "[spring] run {run} {}: not every fail-twice message succeeded within 60 s",
            side.name()
        );
    }
    let backoffs = (TIERS[0] + TIERS[1]).as_micros() as i64;
    if let Ok(v) = peer.seen.attempts.lock() {
        for a in v.iter().filter(|a| a.success && a.id < k) {
            if let Some(t0) = sent.get(&a.id) {
                result.e2e_over.push(ms(a.start_us - t0 - backoffs));
            }
        }
    }
    eprintln!(
        "[spring] run {run} {}: fail-twice end-to-end over the 3 s of back-off: p50 {}, max {}",
        side.name(),
        qms(&result.e2e_over, 0.5),
        qms(&result.e2e_over, 1.0)
    );

    // 1: rising rates of due retries. The first tier is seeded directly with retries due over
    // `secs` at `rate` per second, each carrying that side's due and attempt headers: the main
    // topic's routing speed (scenario 3) must not decide how many retries fall due.
    let secs = (10.0 * ctx.scale).clamp(5.0, 10.0);
    let tier = match side {
        Side::Rebound => Topology::new(&main, &TIERS).tiers[0].topic.clone(),
        Side::Spring => format!("{main}-retry-{}", TIERS[0].as_millis()),
    };
    for (i, rate) in RATES.iter().enumerate() {
        let base = (i as u64 + 1) * 10_000_000;
        let n = (*rate as f64 * secs) as u64;
        // Seeding (batched) must end before the first retry is due.
        let lead = Duration::from_secs_f64(3.0 + n as f64 / 10_000.0);
        let first_due_ms = Utc::now().timestamp_millis() + lead.as_millis() as i64;
        let step_us = 1e6 / *rate as f64;
        let began = Instant::now();
        support::seed(&ctx.brokers, &tier, n as usize, Batching::Batched, |j| {
            let id = base + j as u64;
            let due_ms = first_due_ms + (j as f64 * step_us / 1000.0) as i64;
            Seed {
                partition: Some((j % PARTITIONS as usize) as i32),
                key: Some(format!("k{id}").into_bytes()),
                payload: format!("{id}|ok").into_bytes(),
                headers: due_headers(side, due_ms),
            }
        })
        .await;
        if began.elapsed() > lead {
            eprintln!(
                "[spring] run {run} {}: WARNING seeding {n} retries took {:.1} s, longer than the {:.1} s lead",
                side.name(),
                began.elapsed().as_secs_f64(),
                lead.as_secs_f64()
            );
        }
        let in_phase = |id: u64| id >= base && id < base + n;
        if !wait_until(
            || peer.seen.successes_of(in_phase) >= n as usize,
            lead + Duration::from_secs_f64(secs + 120.0),
        )
        .await
        {
            eprintln!(
                "[spring] run {run} {}: rate {rate}/s: only {} of {n} retried in time",
                side.name(),
                peer.seen.successes_of(in_phase)
            );
        }
        let (late, dues): (Vec<f64>, Vec<i64>) = peer
            .seen
            .attempts
            .lock()
            .map(|v| {
                v.iter()
                    .filter(|a| a.attempt == 1 && in_phase(a.id) && a.due_us >= 0)
                    .map(|a| (ms(a.start_us - a.due_us), a.due_us))
                    .unzip()
            })
            .unwrap_or_default();
        let span =
            dues.iter().max().copied().unwrap_or(0) - dues.iter().min().copied().unwrap_or(0);
        let achieved = if span > 0 {
            dues.len() as f64 / (span as f64 / 1e6)
        } else {
            f64::NAN
        };
        eprintln!(
            "[spring] run {run} {}: {rate}/s due ({achieved:.0}/s measured): lateness p50 {}, p99 {}, max {}, early {} of {}",
            side.name(),
            qms(&late, 0.5),
            qms(&late, 0.99),
            qms(&late, 1.0),
            late.iter().filter(|l| **l < 0.0).count(),
            late.len()
        );
        result.late.push((late, achieved));
    }
    let (_, clean) = peer.stop().await;
    if !clean {
        eprintln!("[spring] run {run} {}: unclean stop", side.name());
    }
    result
}

/// The headers of a retry in each side's first tier: due at `due_ms` (epoch ms), after one
/// failed attempt. rebound: `process_after` (RFC 3339) and `rebound-attempt`; Spring:
/// `retry_topic-backoff-timestamp` (a big-endian long) and `retry_topic-attempts` (a big-endian
/// int, the number of the attempt to come).
fn due_headers(side: Side, due_ms: i64) -> Vec<headers::Header> {
    match side {
        Side::Rebound => {
            let due = chrono::DateTime::from_timestamp_millis(due_ms).unwrap_or_else(Utc::now);
            vec![
                headers::Header::new(headers::PROCESS_AFTER, headers::format_time(due)),
                headers::Header::new(headers::ATTEMPT, "1"),
            ]
        }
        Side::Spring => vec![
            headers::Header::new(
                "retry_topic-backoff-timestamp",
                due_ms.to_be_bytes().to_vec(),
            ),
            headers::Header::new("retry_topic-attempts", 2i32.to_be_bytes().to_vec()),
        ],
    }
}

async fn retries(ctx: &Ctx) -> Vec<Row> {
    let mut by_side: HashMap<&'static str, Vec<RetryRun>> = HashMap::new();
    for run in 0..ctx.runs {
        for side in Side::order(run) {
            let r = retry_run(ctx, side, run).await;
            by_side.entry(side.name()).or_default().push(r);
        }
    }
    let ours = &by_side["rebound"];
    let theirs = &by_side["Spring"];
    let mut rows = Vec::new();
    // Per rate: median over runs of each quantile.
    for (i, rate) in RATES.iter().enumerate() {
        let per_run = |runs: &[RetryRun], q: f64| -> Vec<f64> {
            runs.iter().map(|r| quantile(&r.late[i].0, q)).collect()
        };
        let early = |runs: &[RetryRun]| -> (usize, usize) {
            runs.iter().fold((0, 0), |(e, n), r| {
                (
                    e + r.late[i].0.iter().filter(|l| **l < 0.0).count(),
                    n + r.late[i].0.len(),
                )
            })
        };
        let achieved =
            |runs: &[RetryRun]| -> Vec<f64> { runs.iter().map(|r| r.late[i].1).collect() };
        let name = format!("S1 lateness, {rate} due/s");
        for (label, q) in [("p50", 0.5), ("p99", 0.99), ("max", 1.0)] {
            let (r, s) = (per_run(ours, q), per_run(theirs, q));
            rows.push(figure_row(
                &name,
                format!("retry lateness {label} (start − due; lower is better)"),
                &r,
                &s,
                1,
                " ms",
            ));
        }
        let ((re, rn), (se, sn)) = (early(ours), early(theirs));
        let (ra, sa) = (achieved(ours), achieved(theirs));
        rows.push(Row {
            scenario: name.clone(),
            metric: "early retries (start before due); due rate measured".into(),
            rebound: format!("{re} of {rn}; {:.0}/s", median(&ra)),
            baseline: format!("{se} of {sn}; {:.0}/s", median(&sa)),
            ratio: "—".into(),
            bar: "0 early".into(),
            met: Some(re == 0),
            detail: format!(
                "due rate rebound [{}], Spring [{}] /s",
                list(&ra, 0),
                list(&sa, 0)
            ),
        });
    }
    let (r, s): (Vec<f64>, Vec<f64>) = (
        ours.iter().map(|r| r.rss_idle).collect(),
        theirs.iter().map(|r| r.rss_idle).collect(),
    );
    rows.push(figure_row(
        "S4 RSS",
        "idle after start-up, 3 tiers (lower is better)".into(),
        &r,
        &s,
        0,
        " MiB",
    ));
    let e2e = |runs: &[RetryRun], q: f64| -> Vec<f64> {
        runs.iter().map(|r| quantile(&r.e2e_over, q)).collect()
    };
    for (label, q) in [("p50", 0.5), ("max", 1.0)] {
        let (r, s) = (e2e(ours, q), e2e(theirs, q));
        rows.push(figure_row(
            "S2 fail twice, then succeed",
            format!(
                "end-to-end {label} beyond the 1 s + 2 s of back-off (send → successful call; lower is better)"
            ),
            &r,
            &s,
            1,
            " ms",
        ));
    }
    rows
}

// ---------------------------------------------------------------------------------------------
// 3 + 4: throughput, CPU and RSS

/// Sums the high watermarks of every partition of the topics `pick` selects, every 20 ms, on
/// a thread of its own, until dropped.
struct Watermarks {
    total: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl Watermarks {
    fn start(brokers: &str, pick: impl Fn(&str) -> bool + Send + 'static) -> Watermarks {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", support::unique("watermarks"))
            .create()
            .expect("watermark client");
        let total = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (t, s) = (total.clone(), stop.clone());
        std::thread::spawn(move || {
            let timeout = Duration::from_secs(5);
            let mut topics: Vec<String> = Vec::new();
            while !s.load(Ordering::Relaxed) {
                if topics.is_empty() {
                    if let Ok(md) = consumer.fetch_metadata(None, timeout) {
                        topics = md
                            .topics()
                            .iter()
                            .map(|t| t.name().to_string())
                            .filter(|n| pick(n))
                            .collect();
                    }
                }
                let mut sum = 0i64;
                for topic in &topics {
                    for p in 0..PARTITIONS {
                        if let Ok((_, high)) = consumer.fetch_watermarks(topic, p, timeout) {
                            sum += high;
                        }
                    }
                }
                t.store(sum.max(0) as u64, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        Watermarks { total, stop }
    }
}

impl Drop for Watermarks {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Flow {
    PassThrough,
    Routing,
}

/// One side's figures from one throughput run.
struct FlowRun {
    window: Window,
    /// VmRSS and VmHWM at the end of the window, in MiB.
    rss_end: f64,
    hwm: f64,
}

async fn flow_run(ctx: &Ctx, side: Side, flow: Flow, main: &str, n: usize) -> FlowRun {
    let tiers = [Duration::from_secs(3600)];
    let tier_prefix = match side {
        Side::Rebound => format!("{main}.retry-"),
        Side::Spring => format!("{main}-retry"),
    };
    // Spring creates its retry topic at start-up: the watermarks are read again until the topic
    // exists, and count from what earlier runs of the same side left in it.
    let base = tier_total(ctx, &tier_prefix);
    let marks = Watermarks::start(&ctx.brokers, move |t| t.starts_with(&tier_prefix));
    // Watched from the start: a fast side may finish before it has written READY.
    let peer = Peer::spawn(
        ctx,
        side,
        &Spec {
            main,
            tiers: &tiers,
            record_all: false,
        },
    );
    let seen = peer.seen.clone();
    let total = marks.total.clone();
    let count = move || match flow {
        Flow::PassThrough => seen.calls.load(Ordering::Relaxed),
        Flow::Routing => total.load(Ordering::Relaxed).saturating_sub(base),
    };
    // The peer's pid in the `broker` slot: `watch` measures that process's CPU over the window.
    let w = support::watch(
        count,
        n as u64,
        Some(peer.pid()),
        Duration::from_secs(90),
        side.name(),
    )
    .await;
    let (rss_end, hwm) = support::rss_mib(peer.pid());
    drop(marks);
    peer.stop().await;
    let window = w.unwrap_or_else(|e| panic!("{e}"));
    FlowRun {
        window,
        rss_end,
        hwm,
    }
}

/// The sum of the high watermarks of the topics whose names start with `prefix` (0 when none).
fn tier_total(ctx: &Ctx, prefix: &str) -> u64 {
    let prefix = prefix.to_string();
    let marks = Watermarks::start(&ctx.brokers, move |t| t.starts_with(&prefix));
    let until = Instant::now() + Duration::from_secs(2);
    while marks.total.load(Ordering::Relaxed) == 0 && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(20));
    }
    marks.total.load(Ordering::Relaxed)
}

/// A row of scenarios 3 and 4: scenario, measure, how to read it from a run, decimals.
type Figure<'a> = (&'a str, String, &'a dyn Fn(&FlowRun) -> f64, usize);

async fn throughput(ctx: &Ctx) -> Vec<Row> {
    let mut rows = Vec::new();
    for flow in [Flow::PassThrough, Flow::Routing] {
        let (name, n, behaviour) = match flow {
            Flow::PassThrough => ("S3 pass-through", ctx.n(1_000_000, 20_000), "ok"),
            Flow::Routing => ("S3 routing to tier 1", ctx.n(10_000, 2_000), "t9"),
        };
        let main = support::unique("sp3");
        // The main topic is shared (each run a new group); each side routes to its own tier.
        create_for(ctx, Side::Rebound, &main, &[Duration::from_secs(3600)]).await;
        eprintln!("[spring] {name}: seeding {n} messages over {PARTITIONS} partitions");
        support::seed(&ctx.brokers, &main, n, Batching::Batched, |i| Seed {
            partition: None,
            key: Some(format!("k{i}").into_bytes()),
            payload: format!("{i}|{behaviour}").into_bytes(),
            headers: Vec::new(),
        })
        .await;
        let mut runs: HashMap<&'static str, Vec<FlowRun>> = HashMap::new();
        for run in 0..ctx.runs {
            for side in Side::order(run) {
                let r = flow_run(ctx, side, flow, &main, n).await;
                eprintln!(
                    "[spring] {name} run {run} {}: {:.0} msg/s, {:.1} µs CPU/msg, RSS end {:.0} MiB, peak {:.0} MiB",
                    side.name(),
                    r.window.rate(),
                    r.window.broker_cpu_us_per_msg(),
                    r.rss_end,
                    r.hwm
                );
                runs.entry(side.name()).or_default().push(r);
            }
        }
        let pick = |side: &str, f: &dyn Fn(&FlowRun) -> f64| -> Vec<f64> {
            runs[side].iter().map(f).collect()
        };
        let figures: [Figure<'_>; 3] = [
            (
                name,
                format!("throughput, {n} msgs (higher is better)"),
                &|r: &FlowRun| r.window.rate(),
                0,
            ),
            (
                "S4 CPU",
                format!(
                    "{}: CPU µs per message of the process (lower is better)",
                    &name[3..]
                ),
                &|r: &FlowRun| r.window.broker_cpu_us_per_msg(),
                1,
            ),
            (
                "S4 RSS",
                format!("{}: peak RSS (VmHWM), MiB (lower is better)", &name[3..]),
                &|r: &FlowRun| r.hwm,
                0,
            ),
        ];
        for (scenario, metric, f, digits) in figures {
            let (r, s) = (pick("rebound", f), pick("Spring", f));
            let unit = if metric.contains("throughput") {
                " msg/s"
            } else if metric.contains("MiB") {
                " MiB"
            } else {
                " µs"
            };
            rows.push(figure_row(scenario, metric, &r, &s, digits, unit));
        }
    }
    rows
}

// ---------------------------------------------------------------------------------------------
// 5: ordering

/// Per key, how many of its messages succeeded before an earlier message of the same key.
fn out_of_order(successes: &[(u64, i64)], per_key: u64) -> usize {
    let mut by_key: HashMap<u64, Vec<(i64, u64)>> = HashMap::new();
    for (id, start) in successes {
        by_key
            .entry(id / per_key)
            .or_default()
            .push((*start, id % per_key));
    }
    let mut count = 0;
    for v in by_key.values_mut() {
        v.sort();
        // A message is out of order when an earlier one of its key succeeds after it.
        for (i, (_, seq)) in v.iter().enumerate() {
            if v[i + 1..].iter().any(|(_, later)| later < seq) {
                count += 1;
            }
        }
    }
    count
}

async fn ordering(ctx: &Ctx) -> Vec<Row> {
    let keys = ctx.n(200, 50) as u64;
    let per_key = 5u64;
    let mut counts: HashMap<&'static str, Vec<f64>> = HashMap::new();
    for run in 0..ctx.runs {
        for side in Side::order(run) {
            let main = support::unique(&format!("sp5-{}", side.name()));
            create_for(ctx, side, &main, &TIERS).await;
            // Key k's messages in order; its second one fails once.
            support::seed(
                &ctx.brokers,
                &main,
                (keys * per_key) as usize,
                Batching::Batched,
                |i| {
                    let (k, seq) = (i as u64 / per_key, i as u64 % per_key);
                    Seed {
                        partition: None,
                        key: Some(format!("key{k}").into_bytes()),
                        payload: format!("{i}|{}", if seq == 1 { "t1" } else { "ok" }).into_bytes(),
                        headers: Vec::new(),
                    }
                },
            )
            .await;
            let peer = Peer::recording(ctx, side, &main).await;
            let total = (keys * per_key) as usize;
            wait_until(
                || peer.seen.successes_of(|_| true) >= total,
                Duration::from_secs(120),
            )
            .await;
            let (seen, _) = peer.stop().await;
            let successes: Vec<(u64, i64)> = seen
                .attempts
                .lock()
                .map(|v| {
                    v.iter()
                        .filter(|a| a.success)
                        .map(|a| (a.id, a.start_us))
                        .collect()
                })
                .unwrap_or_default();
            let n = out_of_order(&successes, per_key);
            eprintln!(
                "[spring] S5 run {run} {}: {n} of {} messages handled after a later one of their key ({} successes)",
                side.name(),
                total,
                successes.len()
            );
            counts.entry(side.name()).or_default().push(n as f64);
        }
    }
    let (r, s) = (&counts["rebound"], &counts["Spring"]);
    vec![Row {
        scenario: "S5 ordering".into(),
        metric: format!(
            "messages handled before an earlier same-key message, {keys} keys × {per_key} (the 2nd of each fails once)"
        ),
        rebound: format!("{:.0} of {}", median(r), keys * per_key),
        baseline: format!("{:.0} of {}", median(s), keys * per_key),
        ratio: "—".into(),
        bar: "report".into(),
        met: None,
        detail: format!("rebound [{}], Spring [{}]", list(r, 0), list(s, 0)),
    }]
}

/// Every scenario of the comparison, rebound and Spring in the same run.
pub async fn compare(ctx: &Ctx) -> Vec<Row> {
    let jar = spring_jar();
    assert!(
        jar.exists(),
        "the Spring peer's jar is missing ({}): build it with scripts/bench (REBOUND_BENCH_ONLY=spring)",
        jar.display()
    );
    // `REBOUND_BENCH_SPRING_PARTS` (comma-separated `retries`, `throughput`, `ordering`; default
    // all) runs part of the comparison, e.g. for an experiment with REBOUND_BENCH_SPRING_ARGS.
    let parts = std::env::var("REBOUND_BENCH_SPRING_PARTS")
        .unwrap_or_else(|_| "retries,throughput,ordering".into());
    let part = |name: &str| parts.split(',').any(|p| p.trim() == name);
    let mut rows = Vec::new();
    if part("retries") {
        let t = Instant::now();
        rows.extend(retries(ctx).await);
        eprintln!("[spring] S1 + S2 took {:.0} s", t.elapsed().as_secs_f64());
    }
    if part("throughput") {
        let t = Instant::now();
        rows.extend(throughput(ctx).await);
        eprintln!("[spring] S3 + S4 took {:.0} s", t.elapsed().as_secs_f64());
    }
    if part("ordering") {
        let t = Instant::now();
        rows.extend(ordering(ctx).await);
        eprintln!("[spring] S5 took {:.0} s", t.elapsed().as_secs_f64());
    }
    rows
}

// ---------------------------------------------------------------------------------------------
// the rebound peer (this binary re-executed)

/// The output file of the rebound peer, flushed every 5 ms by one task.
struct Out {
    pending: Mutex<String>,
    calls: AtomicU64,
}

impl Out {
    fn line(&self, s: &str) {
        if let Ok(mut p) = self.pending.lock() {
            p.push_str(s);
            p.push('\n');
        }
    }

    fn flush(&self, file: &mut std::fs::File) {
        let chunk = match self.pending.lock() {
            Ok(mut p) if !p.is_empty() => std::mem::take(&mut *p),
            _ => return,
        };
        file.write_all(chunk.as_bytes())
            .expect("writing the peer output");
    }
}

/// The bench's handler: `ID|ok`, `ID|tN`, `ID|p` (see the module docs).
struct PeerHandler {
    out: Arc<Out>,
    record_all: bool,
}

#[async_trait::async_trait]
impl Handler for PeerHandler {
    async fn handle(&self, m: &Message) -> Outcome {
        let start = now_us();
        self.out.calls.fetch_add(1, Ordering::Relaxed);
        let payload = std::str::from_utf8(m.payload()).unwrap_or("");
        let (id, behaviour) = payload.split_once('|').unwrap_or((payload, "ok"));
        let outcome = match behaviour.strip_prefix('t').map(str::parse::<u32>) {
            Some(Ok(n)) if m.attempt < n => Outcome::transient("bench", "transient"),
            _ if behaviour == "p" => Outcome::permanent("bench", "permanent"),
            _ => Outcome::Success,
        };
        if self.record_all {
            let due = headers::last(&m.headers, headers::PROCESS_AFTER)
                .and_then(|h| headers::parse_time(headers::PROCESS_AFTER, h.value.as_deref()).ok())
                .map(|t| t.timestamp_micros())
                .unwrap_or(-1);
            self.out.line(&format!(
                "A {id} {} {} {} {start} {due} {}",
                m.attempt,
                m.topic,
                m.partition,
                outcome.label()
            ));
        }
        outcome
    }
}

/// glibc's `struct mallinfo2` (malloc.h, glibc 2.33+): sizes in bytes.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[repr(C)]
struct MallInfo2 {
    arena: usize,
    ordblks: usize,
    smblks: usize,
    hblks: usize,
    hblkhd: usize,
    usmblks: usize,
    fsmblks: usize,
    uordblks: usize,
    fordblks: usize,
    keepcost: usize,
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
unsafe extern "C" {
    fn mallinfo2() -> MallInfo2;
}

/// glibc's heap: (bytes handed out, bytes freed but kept, bytes in `mmap`ed blocks); zeros
/// where the C library is not glibc.
fn heap() -> (usize, usize, usize) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallinfo2 takes no arguments and returns a struct by value.
        let m = unsafe { mallinfo2() };
        (m.uordblks, m.fordblks, m.hblkhd)
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        (0, 0, 0)
    }
}

/// With `REBOUND_PEER_MEM_TRACE=DIR` (a diagnostic of scenario 8's peak): every 250 ms (or
/// `REBOUND_PEER_MEM_TRACE_MS`) the peer appends to `DIR/<topic>.mem` one line `ms rss_kib
/// hwm_kib anon_kib heap_in_use heap_free mmapped buffered_bytes buffered_messages paused`:
/// VmRSS / VmHWM / RssAnon from `/proc/self/status`, glibc's heap (main arena and thread
/// arenas: bytes handed out and free inside it; blocks taken with `mmap`) from `mallinfo2`,
/// rebound's tier read-ahead buffers, and how many partitions rebound holds paused.
async fn mem_trace(
    path: PathBuf,
    metrics: Arc<rebound::metrics::Metrics>,
    stop: CancellationToken,
) {
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let Ok(mut file) = std::fs::File::create(&path) else {
        eprintln!("rebound peer: cannot write {}", path.display());
        return;
    };
    let every = std::env::var("REBOUND_PEER_MEM_TRACE_MS")
        .ok()
        .and_then(|ms| ms.parse().ok())
        .map_or(Duration::from_millis(250), Duration::from_millis);
    let began = std::time::Instant::now();
    while !stop.is_cancelled() {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let kib = |name: &str| -> u64 {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        let (in_use, free, mapped) = heap();
        let sum = |g: &prometheus::IntGaugeVec| -> i64 {
            use prometheus::core::Collector;
            g.collect()
                .iter()
                .flat_map(|f| f.get_metric())
                .map(|m| m.get_gauge().get_value() as i64)
                .sum()
        };
        let _ = writeln!(
            file,
            "{} {} {} {} {} {} {} {} {} {}",
            began.elapsed().as_millis(),
            kib("VmRSS:"),
            kib("VmHWM:"),
            kib("RssAnon:"),
            in_use,
            free,
            mapped,
            sum(&metrics.tier_buffered_bytes),
            sum(&metrics.tier_buffered_messages),
            sum(&metrics.paused),
        );
        tokio::time::sleep(every).await;
    }
}

/// Runs rebound as the bench's peer (see [`CHILD_ENV`]) until SIGTERM.
pub async fn child_main() {
    let var = |k: &str| std::env::var(k).unwrap_or_else(|_| panic!("{k} is not set"));
    let tiers: Vec<Duration> = var("REBOUND_PEER_TIERS_MS")
        .split(',')
        .map(|ms| Duration::from_millis(ms.parse().expect("tier in ms")))
        .collect();
    let topology = Topology::new(&var("REBOUND_PEER_TOPIC"), &tiers);
    let mut config = Config::new(
        &var("REBOUND_PEER_BROKERS"),
        &var("REBOUND_PEER_GROUP"),
        topology,
    );
    // Every workload fails on purpose; Spring has no breaker to match.
    config.breaker = rebound::breaker::BreakerConfig::disabled();
    config.cluster.kafka = KafkaProps(extra_props());
    let out = Arc::new(Out {
        pending: Mutex::new(String::new()),
        calls: AtomicU64::new(0),
    });
    let handler = Arc::new(PeerHandler {
        out: out.clone(),
        record_all: var("REBOUND_PEER_RECORD") == "all",
    });
    let mut file = std::fs::File::create(Path::new(&var("REBOUND_PEER_OUT"))).expect("peer output");
    let service = Service::new(config, handler);
    let metrics = service.metrics();
    // The bench stops its peer with SIGTERM.
    let stop = tokio_util::sync::CancellationToken::new();
    {
        let stop = stop.clone();
        tokio::spawn(async move {
            if let Ok(mut term) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            {
                term.recv().await;
            }
            stop.cancel();
        });
    }
    let flusher = {
        let out = out.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let (mut ready, mut last) = (false, u64::MAX);
            loop {
                if !ready && metrics.health.assigned.load(Ordering::Relaxed) {
                    ready = true;
                    out.line("READY");
                }
                let c = out.calls.load(Ordering::Relaxed);
                if c != last {
                    last = c;
                    out.line(&format!("C {c}"));
                }
                out.flush(&mut file);
                if stop.is_cancelled() {
                    return file;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    if let Ok(dir) = std::env::var("REBOUND_PEER_MEM_TRACE") {
        let path = Path::new(&dir).join(format!("{}.mem", var("REBOUND_PEER_TOPIC")));
        tokio::spawn(mem_trace(path, service.metrics(), stop.clone()));
    }
    if let Err(e) = service.run(stop.clone()).await {
        eprintln!("rebound peer: {e}");
    }
    stop.cancel();
    if let Ok(mut file) = flusher.await {
        out.line(&format!("C {}", out.calls.load(Ordering::Relaxed)));
        out.flush(&mut file);
    }
    std::process::exit(0);
}

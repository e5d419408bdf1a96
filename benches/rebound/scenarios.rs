//! The six scenarios of issue 8. Each measures rebound and its baseline in the same run,
//! `runs` times, and returns rows for the report (medians, with every run's figure).

use std::future::ready;

use crate::common::waited;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use futures::stream::{FuturesOrdered, StreamExt};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::Message as _;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use rebound::config::{Config, KafkaProps};
use rebound::handler::http::HttpHandler;
use rebound::headers::{self, Header};
use rebound::{Handler, Message, Outcome, Service, Topology};
use tokio_util::sync::CancellationToken;

use crate::support::{self, median, quantile, Batching, Seed, Window};

/// What every scenario is given.
pub struct Ctx {
    pub brokers: String,
    pub broker_pid: Option<u32>,
    /// Multiplies message counts (and the precision window).
    pub scale: f64,
    pub runs: usize,
    pub rebound_bin: PathBuf,
}

impl Ctx {
    pub(crate) fn n(&self, full: usize, min: usize) -> usize {
        ((full as f64 * self.scale) as usize).max(min)
    }
}

/// One line of the results table.
pub struct Row {
    pub scenario: String,
    pub metric: String,
    pub rebound: String,
    pub baseline: String,
    pub ratio: String,
    pub bar: String,
    pub met: Option<bool>,
    /// Every run's figures, for the record.
    pub detail: String,
}

/// librdkafka settings of every client under test, rebound and baselines alike: a short fetch
/// wait and a short fetch queue back-off (rebound's defaults), and one record per produced batch
/// where the broker is Tansu (its memory engine, see docs/broker-compat.md). On Apache Kafka
/// every client batches normally.
fn client_props() -> Vec<(String, String)> {
    let mut props = vec![
        ("fetch.wait.max.ms".into(), "20".into()),
        ("fetch.queue.backoff.ms".into(), "20".into()),
    ];
    if support::broker_is_tansu() {
        props.push(("linger.ms".into(), "0".into()));
        props.push(("batch.num.messages".into(), "1".into()));
    }
    props
}

fn fmt_rate(r: f64) -> String {
    format!("{r:.0} msg/s")
}

pub(crate) fn list(v: &[f64], digits: usize) -> String {
    v.iter()
        .map(|x| format!("{x:.digits$}"))
        .collect::<Vec<_>>()
        .join(", ")
}

// ---------------------------------------------------------------------------------------------
// rebound in-process

/// rebound's `Service` running in this process (also scenario 9's, `ordering.rs`).
pub(crate) struct Embedded {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), rebound::ServiceError>>,
    metrics: Arc<rebound::metrics::Metrics>,
}

impl Embedded {
    pub(crate) fn start(config: Config, handler: Arc<dyn Handler>) -> Embedded {
        let service = Service::new(config, handler);
        let metrics = service.metrics();
        let stop = CancellationToken::new();
        let task = tokio::spawn(service.run(stop.clone()));
        Embedded {
            stop,
            task,
            metrics,
        }
    }

    /// The service returned (an error at start, or it failed).
    pub(crate) fn ended(&self) -> bool {
        self.task.is_finished()
    }

    /// Stops it, waiting up to 60 s, and says how it ended if not well.
    pub(crate) async fn stop(self) {
        self.stop.cancel();
        match tokio::time::timeout(Duration::from_secs(60), self.task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => eprintln!("rebound ended with an error: {e}"),
            Ok(Err(e)) => eprintln!("rebound task failed: {e}"),
            Err(_) => eprintln!("rebound did not stop within 60 s"),
        }
    }
}

fn rebound_config(ctx: &Ctx, topology: Topology, group: &str) -> Config {
    let mut c = Config::new(&ctx.brokers, group, topology);
    c.cluster.kafka = KafkaProps(client_props().into_iter().chain(extra_props()).collect());
    c.shutdown_timeout = Duration::from_secs(20);
    // REBOUND_BENCH_EXACTLY_ONCE=1: rebound with --exactly-once (issue 18), to compare.
    if std::env::var_os("REBOUND_BENCH_EXACTLY_ONCE").is_some() {
        c.membership.exactly_once = true;
        c.membership.instance_id = Some(format!("bench-{group}"));
    }
    c
}

/// Extra librdkafka properties for rebound (not the baselines), from `REBOUND_BENCH_X`
/// (comma-separated `KEY=VALUE`), e.g. to compare fetch sizes.
pub(crate) fn extra_props() -> Vec<(String, String)> {
    std::env::var("REBOUND_BENCH_X")
        .unwrap_or_default()
        .split(',')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A handler that counts calls and answers `outcome`.
struct Count {
    calls: AtomicU64,
    outcome: Outcome,
}

#[async_trait::async_trait]
impl Handler for Count {
    async fn handle(&self, _m: &Message) -> Outcome {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.outcome.clone()
    }
}

// ---------------------------------------------------------------------------------------------
// baselines: plain rdkafka

fn baseline_consumer(ctx: &Ctx, group: &str, topic: &str) -> StreamConsumer {
    baseline_consumer_with(ctx, group, topic, &[])
}

fn baseline_consumer_with(
    ctx: &Ctx,
    group: &str,
    topic: &str,
    extra: &[(&str, &str)],
) -> StreamConsumer {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &ctx.brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest");
    for (k, v) in client_props() {
        if k.starts_with("fetch") {
            c.set(k, v);
        }
    }
    for (k, v) in extra {
        c.set(*k, *v);
    }
    let consumer: StreamConsumer = c.create().expect("baseline consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    consumer
}

/// Closes a consumer on a helper thread without waiting more than a few seconds for it.
fn close(consumer: StreamConsumer) {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = consumer.commit_consumer_state(CommitMode::Sync);
        consumer.unsubscribe();
        drop(consumer);
        let _ = tx.send(());
    });
    let _ = rx.recv_timeout(Duration::from_secs(10));
}

/// Scenario 1's baseline: consume, store the offset, commit every second. With `handler`,
/// scenario 1's reference between that loop and rebound: each message is also given to
/// `handler` the way rebound's `Handler` contract asks and nothing more, as an owned
/// [`Message`] built by rebound's own `kafka::owned_message`, through an `Arc<dyn Handler>`
/// (one boxed future), and its offset is stored on success. What is left of rebound's gap
/// beyond that is its own bookkeeping (offsets outstanding, admission, metrics, the job's
/// future).
async fn consume_loop(
    consumer: StreamConsumer,
    handler: Option<Arc<dyn Handler>>,
    done: Arc<AtomicU64>,
    stop: CancellationToken,
) {
    let mut last_commit = Instant::now();
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            m = consumer.recv() => {
                let Ok(m) = m else { continue };
                let handled = match &handler {
                    None => true,
                    Some(h) => {
                        let message = rebound::kafka::owned_message(&m, m.topic());
                        matches!(h.handle(&message).await, Outcome::Success)
                    }
                };
                if handled {
                    let _ = consumer.store_offset_from_message(&m);
                }
                done.fetch_add(1, Ordering::Relaxed);
                if last_commit.elapsed() >= Duration::from_secs(1) {
                    let _ = consumer.commit_consumer_state(CommitMode::Async);
                    last_commit = Instant::now();
                }
            }
        }
    }
    close(consumer);
}

/// Scenario 2's baseline: consume, produce a copy (up to `window` awaiting their
/// acknowledgement, as rebound's `--max-in-flight`), store each offset once its copy is
/// acknowledged (in order), commit every second.
async fn pipe_loop(
    consumer: StreamConsumer,
    producer: FutureProducer,
    to: String,
    window: usize,
    done: Arc<AtomicU64>,
    stop: CancellationToken,
) {
    let mut last_commit = Instant::now();
    let mut in_flight = FuturesOrdered::new();
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            Some((topic, partition, offset, acked)) = in_flight.next(), if !in_flight.is_empty() => {
                let acked: bool = acked;
                if acked {
                    let topic: String = topic;
                    let _ = consumer.store_offset(&topic, partition, offset);
                    done.fetch_add(1, Ordering::Relaxed);
                }
                if last_commit.elapsed() >= Duration::from_secs(1) {
                    let _ = consumer.commit_consumer_state(CommitMode::Async);
                    last_commit = Instant::now();
                }
            }
            m = consumer.recv(), if in_flight.len() < window => {
                let Ok(m) = m else { continue };
                let mut rec: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&to);
                if let Some(k) = m.key() { rec = rec.key(k); }
                if let Some(p) = m.payload() { rec = rec.payload(p); }
                if let Some(h) = m.headers() { rec = rec.headers(h.detach()); }
                let topic = m.topic().to_string();
                let (partition, offset) = (m.partition(), m.offset());
                match producer.send_result(rec) {
                    Ok(f) => in_flight.push_back(async move {
                        (topic, partition, offset, matches!(f.await, Ok(Ok(_))))
                    }),
                    Err((e, _)) => eprintln!("baseline produce: {e}"),
                }
            }
        }
    }
    close(consumer);
}

fn baseline_producer(ctx: &Ctx) -> FutureProducer {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &ctx.brokers).set("acks", "all");
    for (k, v) in client_props() {
        if !k.starts_with("fetch") {
            c.set(k, v);
        }
    }
    c.create().expect("baseline producer")
}

// ---------------------------------------------------------------------------------------------
// 1 + 2: throughput (and 6: CPU per message)

#[derive(Clone, Copy, PartialEq, Eq)]
enum Flow {
    PassThrough,
    Routing,
}

/// Scenarios 1 and 2 (and their CPU figures for 6).
async fn throughput(ctx: &Ctx, flow: Flow) -> Vec<Row> {
    let (name, n, partitions) = match flow {
        Flow::PassThrough => ("1 pass-through", ctx.n(1_000_000, 1000), 6),
        Flow::Routing => ("2 routing to tier 1", ctx.n(100_000, 1000), 6),
    };
    let tag = if flow == Flow::PassThrough {
        "s1"
    } else {
        "s2"
    };
    let main = support::unique(tag);
    let topology = Topology::new(&main, &[Duration::from_secs(3600)]);
    let out = format!("{main}.baseline-out");
    let mut topics = topology.topics();
    topics.push(&out);
    support::create_topics(&ctx.brokers, &topics, partitions).await;
    eprintln!("[{name}] seeding {n} messages of 200 B over {partitions} partitions");
    let rate = support::seed(&ctx.brokers, &main, n, Batching::Batched, |i| Seed {
        partition: None,
        key: Some(format!("k{i}").into_bytes()),
        payload: support::payload(i, 200),
        headers: Vec::new(),
    })
    .await;
    eprintln!("[{name}] seeded at {rate:.0} msg/s");
    // Not measured: the first loop to read the seeded topic ran while the broker's JIT (HotSpot
    // C2) compiled its fetch path, on the cores the loops share with it (a profile of one run put
    // 1 300–1 700 C2 samples in the first loop's window against 170–470 in the third's, at 2 999
    // Hz), so that loop paid a cost the others did not. One plain read first.
    let warm = run_baseline(
        ctx,
        Flow::PassThrough,
        &main,
        &out,
        &support::unique(&format!("{tag}-warm")),
        n,
        None,
    )
    .await;
    eprintln!(
        "[{name}] warm-up read (not measured): {}",
        fmt_rate(warm.rate())
    );

    let mut ours: Vec<Window> = Vec::new();
    let mut theirs: Vec<Window> = Vec::new();
    let mut reference: Vec<Window> = Vec::new();
    for run in 0..ctx.runs {
        for side in [run % 2, 1 - run % 2] {
            let group = support::unique(&format!("{tag}-g{run}-{side}"));
            if side == 0 {
                let w = run_rebound(ctx, flow, &topology, &group, n).await;
                eprintln!(
                    "[{name}] run {run} rebound:  {} ({:.1} µs CPU/msg)",
                    fmt_rate(w.rate()),
                    w.cpu_us_per_msg()
                );
                ours.push(w);
            } else {
                let w = run_baseline(ctx, flow, &main, &out, &group, n, None).await;
                eprintln!(
                    "[{name}] run {run} baseline: {} ({:.1} µs CPU/msg)",
                    fmt_rate(w.rate()),
                    w.cpu_us_per_msg()
                );
                theirs.push(w);
            }
        }
        if flow == Flow::PassThrough {
            let group = support::unique(&format!("{tag}-g{run}-ref"));
            let handler: Arc<dyn Handler> = Arc::new(Count {
                calls: AtomicU64::new(0),
                outcome: Outcome::Success,
            });
            let w = run_baseline(ctx, flow, &main, &out, &group, n, Some(handler)).await;
            eprintln!(
                "[{name}] run {run} plain loop + Handler call: {} ({:.1} µs CPU/msg)",
                fmt_rate(w.rate()),
                w.cpu_us_per_msg()
            );
            reference.push(w);
        }
    }
    let r: Vec<f64> = ours.iter().map(Window::rate).collect();
    let b: Vec<f64> = theirs.iter().map(Window::rate).collect();
    let ratio = median(&r) / median(&b);
    let rc: Vec<f64> = ours.iter().map(Window::cpu_us_per_msg).collect();
    let bc: Vec<f64> = theirs.iter().map(Window::cpu_us_per_msg).collect();
    let rbc: Vec<f64> = ours.iter().map(Window::broker_cpu_us_per_msg).collect();
    let bbc: Vec<f64> = theirs.iter().map(Window::broker_cpu_us_per_msg).collect();
    let what = match flow {
        Flow::PassThrough => "plain consume + store offset + commit every 1 s",
        Flow::Routing => {
            "plain consume → produce (acks=all, ≤ 32 awaiting ack) → store → commit every 1 s"
        }
    };
    let mut rows = vec![
        Row {
            scenario: name.into(),
            metric: format!("throughput, {n} msgs (baseline: {what})"),
            rebound: fmt_rate(median(&r)),
            baseline: fmt_rate(median(&b)),
            ratio: format!("{ratio:.2}"),
            bar: "≥ 0.95".into(),
            met: Some(ratio >= 0.95),
            detail: format!(
                "rebound [{}], baseline [{}] msg/s",
                list(&r, 0),
                list(&b, 0)
            ),
        },
        Row {
            scenario: format!("6 CPU ({})", &name[2..]),
            metric: "CPU µs per message, client process (broker process)".into(),
            rebound: format!("{:.1} ({:.1})", median(&rc), median(&rbc)),
            baseline: format!("{:.1} ({:.1})", median(&bc), median(&bbc)),
            ratio: format!("{:.2}", median(&rc) / median(&bc)),
            bar: "report".into(),
            met: None,
            detail: format!(
                "rebound [{}] µs, baseline [{}] µs; broker [{}] / [{}] µs",
                list(&rc, 1),
                list(&bc, 1),
                list(&rbc, 1),
                list(&bbc, 1)
            ),
        },
    ];
    if !reference.is_empty() {
        let f: Vec<f64> = reference.iter().map(Window::rate).collect();
        let fc: Vec<f64> = reference.iter().map(Window::cpu_us_per_msg).collect();
        rows.push(Row {
            scenario: format!("{name} (reference)"),
            metric: "throughput of the plain loop that also builds an owned Message and calls an Arc<dyn Handler> (rebound column), CPU µs per message in brackets".into(),
            rebound: format!("{} ({:.1} µs)", fmt_rate(median(&f)), median(&fc)),
            baseline: format!("{} ({:.1} µs)", fmt_rate(median(&b)), median(&bc)),
            ratio: format!("{:.2}", median(&f) / median(&b)),
            bar: "report".into(),
            met: None,
            detail: format!("plain loop + Handler call [{}] msg/s, [{}] µs", list(&f, 0), list(&fc, 1)),
        });
    }
    rows
}

async fn run_rebound(ctx: &Ctx, flow: Flow, topology: &Topology, group: &str, n: usize) -> Window {
    let mut config = rebound_config(ctx, topology.clone(), group);
    let outcome = match flow {
        Flow::PassThrough => Outcome::Success,
        Flow::Routing => {
            // Every message fails on purpose: the breaker would stop the run.
            config.breaker = rebound::breaker::BreakerConfig::disabled();
            Outcome::transient("bench", "always transient")
        }
    };
    let handler = Arc::new(Count {
        calls: AtomicU64::new(0),
        outcome,
    });
    let running = Embedded::start(config, handler.clone());
    let routed = running
        .metrics
        .routed
        .with_label_values(&["main", &topology.tiers[0].label]);
    let count = || match flow {
        Flow::PassThrough => handler.calls.load(Ordering::Relaxed),
        Flow::Routing => routed.get(),
    };
    let w = support::watch(
        count,
        n as u64,
        ctx.broker_pid,
        Duration::from_secs(60),
        "rebound",
    )
    .await;
    running.stop().await;
    w.unwrap_or_else(|e| panic!("{e}"))
}

async fn run_baseline(
    ctx: &Ctx,
    flow: Flow,
    main: &str,
    out: &str,
    group: &str,
    n: usize,
    handler: Option<Arc<dyn Handler>>,
) -> Window {
    let done = Arc::new(AtomicU64::new(0));
    let stop = CancellationToken::new();
    let consumer = baseline_consumer(ctx, group, main);
    let what = if handler.is_some() {
        "plain loop + Handler call"
    } else {
        "baseline"
    };
    let task = match flow {
        Flow::PassThrough => {
            tokio::spawn(consume_loop(consumer, handler, done.clone(), stop.clone()))
        }
        Flow::Routing => tokio::spawn(pipe_loop(
            consumer,
            baseline_producer(ctx),
            out.to_string(),
            32,
            done.clone(),
            stop.clone(),
        )),
    };
    let w = support::watch(
        || done.load(Ordering::Relaxed),
        n as u64,
        ctx.broker_pid,
        Duration::from_secs(60),
        what,
    )
    .await;
    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(30), task).await;
    w.unwrap_or_else(|e| panic!("{e}"))
}

pub async fn pass_through(ctx: &Ctx) -> Vec<Row> {
    throughput(ctx, Flow::PassThrough).await
}

pub async fn routing(ctx: &Ctx) -> Vec<Row> {
    throughput(ctx, Flow::Routing).await
}

// ---------------------------------------------------------------------------------------------
// 3: retry precision

/// Records how late each call started relative to the message's `process_after`.
#[derive(Default)]
struct Lateness {
    calls: AtomicU64,
    /// Microseconds; negative = early.
    late_us: Mutex<Vec<i64>>,
    /// (due, partition, lateness in µs) of every call, kept when REBOUND_BENCH_TRACE is set.
    trace: Mutex<Vec<(chrono::DateTime<Utc>, i32, i64)>>,
}

#[async_trait::async_trait]
impl Handler for Lateness {
    async fn handle(&self, m: &Message) -> Outcome {
        let now = Utc::now();
        let due = headers::last(&m.headers, headers::PROCESS_AFTER)
            .and_then(|h| headers::parse_time(headers::PROCESS_AFTER, h.value.as_deref()).ok());
        if let Some(due) = due {
            let late = (now - due).num_microseconds().unwrap_or(i64::MAX);
            if let Ok(mut v) = self.late_us.lock() {
                v.push(late);
            }
            if std::env::var_os("REBOUND_BENCH_TRACE").is_some() {
                if let Ok(mut v) = self.trace.lock() {
                    v.push((due, m.partition, late));
                }
            }
        }
        self.calls.fetch_add(1, Ordering::Relaxed);
        Outcome::Success
    }
}

/// Who handles the due messages of scenarios 3, 7 and 8.
#[derive(Clone, Copy, PartialEq)]
enum Waiter {
    /// rebound with its defaults: bounded read-ahead on tier partitions.
    Rebound,
    /// rebound with `--tier-buffer-messages 1`: hold only the head.
    ReboundHoldHead,
    /// A plain rdkafka loop that waits the same way (pause the partition, keep its head, resume
    /// when due) with nothing else: what the broker and client allow with that design.
    PlainHoldHead,
    /// A plain rdkafka loop that waits the way Spring Kafka's retry topics do: a record not yet
    /// due pauses its partition and seeks back to it; the partition is resumed when the record
    /// is due, and the record is fetched again.
    PlainSeekBack,
    /// rebound with its defaults as its own process (the rebound peer of the Spring comparison,
    /// `spring::Peer`), so that its memory is measured apart from the bench's: scenario 8.
    ReboundProcess,
}

impl Waiter {
    /// The four ways of waiting of scenarios 3 and 7 (in-process, side by side).
    const ALL: [Waiter; 4] = [
        Waiter::Rebound,
        Waiter::ReboundHoldHead,
        Waiter::PlainHoldHead,
        Waiter::PlainSeekBack,
    ];

    fn name(self) -> &'static str {
        match self {
            Waiter::Rebound => "rebound (read-ahead)",
            Waiter::ReboundHoldHead => "rebound, hold the head",
            Waiter::PlainHoldHead => "plain hold-the-head",
            Waiter::PlainSeekBack => "plain pause + seek back",
            Waiter::ReboundProcess => "rebound (read-ahead), own process",
        }
    }
}

/// What one precision run measured.
struct PrecisionRun {
    /// Lateness of each handling in ms (handler start − `process_after`; negative = early).
    late: Vec<f64>,
    /// The broker's CPU use while the retries were handled (share of one core).
    broker_share: f64,
    /// (VmRSS, VmHWM) of rebound's process in MiB, read just before it was stopped; only when
    /// rebound ran as its own process ([`Waiter::ReboundProcess`]).
    rss: Option<(f64, f64)>,
}

/// A waiter while it runs.
enum Running {
    /// rebound in the bench's process, or a plain loop (a task), with the recording handler.
    InProcess {
        rebound: Option<Embedded>,
        plain: Option<tokio::task::JoinHandle<()>>,
        handler: Arc<Lateness>,
    },
    /// rebound as its own process, reporting each call through its output file.
    Process(crate::spring::Peer),
}

impl Running {
    fn calls(&self) -> u64 {
        match self {
            Running::InProcess { handler, .. } => handler.calls.load(Ordering::Relaxed),
            Running::Process(peer) => peer.seen.calls.load(Ordering::Relaxed),
        }
    }
}

/// Starts `waiter` on the tier of `topology` and waits until it has its partitions (joining the
/// group is not counted as lateness).
async fn start_waiter(
    ctx: &Ctx,
    waiter: Waiter,
    topology: &Topology,
    stop: &CancellationToken,
) -> Running {
    let tier = topology.tiers[0].topic.clone();
    let group = support::unique("s3-g");
    let handler = Arc::new(Lateness::default());
    match waiter {
        Waiter::Rebound | Waiter::ReboundHoldHead => {
            let mut config = rebound_config(ctx, topology.clone(), &group);
            if waiter == Waiter::ReboundHoldHead {
                config.tier_buffer.partition_messages = 1;
            }
            let r = Embedded::start(config, handler.clone());
            let assigned = r.metrics.clone();
            waited(Duration::from_secs(30), Duration::from_millis(20), || {
                ready(assigned.health.assigned.load(Ordering::Relaxed))
            })
            .await;
            Running::InProcess {
                rebound: Some(r),
                plain: None,
                handler,
            }
        }
        Waiter::PlainHoldHead | Waiter::PlainSeekBack => {
            // The fetch size rebound's consumer uses by default.
            let consumer =
                baseline_consumer_with(ctx, &group, &tier, &[("fetch.max.bytes", "4194304")]);
            let assigned = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let task = if waiter == Waiter::PlainHoldHead {
                tokio::spawn(hold_head_loop(
                    consumer,
                    handler.clone(),
                    assigned.clone(),
                    stop.clone(),
                ))
            } else {
                tokio::spawn(seek_back_loop(
                    consumer,
                    handler.clone(),
                    assigned.clone(),
                    stop.clone(),
                ))
            };
            waited(Duration::from_secs(30), Duration::from_millis(20), || {
                ready(assigned.load(Ordering::Relaxed))
            })
            .await;
            Running::InProcess {
                rebound: None,
                plain: Some(task),
                handler,
            }
        }
        Waiter::ReboundProcess => {
            let delays: Vec<Duration> = topology.tiers.iter().map(|t| t.delay).collect();
            let spec = crate::spring::Spec {
                main: &topology.main,
                tiers: &delays,
                record_all: true,
            };
            // Ready once every partition is assigned.
            Running::Process(
                crate::spring::Peer::start(ctx, crate::spring::Side::Rebound, &spec).await,
            )
        }
    }
}

/// Seeds `n` retries into `tier`, due one after the other over `window` across `partitions`
/// partitions, the first due after a lead that seeding must not outlast (warned about
/// otherwise). Returns when the first is due and the lead.
async fn seed_due(
    ctx: &Ctx,
    tier: &str,
    n: usize,
    window: Duration,
    partitions: usize,
    what: &str,
) -> (chrono::DateTime<Utc>, Duration) {
    let batching = tier_batching();
    // One record per batch (Tansu) seeds at a few thousand per second, batched (Kafka) at
    // 100 000+ per second here.
    let per_second = match batching {
        Batching::Batched => 20_000.0,
        Batching::OnePerBatch => 4_000.0,
    };
    let lead = Duration::from_secs_f64(5.0 + n as f64 / per_second);
    let start = Utc::now() + chrono::Duration::from_std(lead).unwrap_or_default();
    let step_us = window.as_micros() as i64 / n as i64;
    let seeding_began = Instant::now();
    eprintln!(
        "{what}: seeding {n} messages due over {} s across {partitions} tier partitions",
        window.as_secs()
    );
    support::seed(&ctx.brokers, tier, n, batching, |i| {
        let due = start + chrono::Duration::microseconds(step_us * i as i64);
        // `ID|ok`: what the rebound peer's handler reads (spring.rs); the others ignore it.
        let mut payload = format!("{i}|ok").into_bytes();
        payload.resize(200, b' ');
        Seed {
            partition: Some((i % partitions) as i32),
            key: Some(format!("k{i}").into_bytes()),
            payload,
            headers: vec![
                Header::new(headers::PROCESS_AFTER, headers::format_time(due)),
                Header::new(headers::ATTEMPT, "1"),
            ],
        }
    })
    .await;
    let seeded_in = seeding_began.elapsed();
    if seeded_in > lead {
        eprintln!(
            "{what}: WARNING seeding took {:.1} s, longer than the {:.1} s lead: early messages were late because they did not exist yet",
            seeded_in.as_secs_f64(),
            lead.as_secs_f64()
        );
    }
    (start, lead)
}

/// One run of scenario 3 (and 7 and 8): seeds `n` messages due over `window` across 12 tier
/// partitions, has `waiter` handle them, and returns the lateness of each handling.
async fn precision_run(
    ctx: &Ctx,
    name: &str,
    waiter: Waiter,
    n: usize,
    window: Duration,
    run: usize,
) -> PrecisionRun {
    let partitions = 12;
    let side = waiter.name();
    let what = format!("[{name}] run {run} {side}");
    let main = support::unique("s3");
    let topology = Topology::new(&main, &[Duration::from_secs(60)]);
    let tier = topology.tiers[0].topic.clone();
    support::create_topics(&ctx.brokers, &topology.topics(), partitions).await;
    let stop = CancellationToken::new();
    let running = start_waiter(ctx, waiter, &topology, &stop).await;
    let (start, lead) = seed_due(ctx, &tier, n, window, partitions as usize, &what).await;
    let w = support::watch(
        || running.calls(),
        n as u64,
        ctx.broker_pid,
        lead + window + Duration::from_secs(60),
        side,
    )
    .await;
    let (late, rss) = match running {
        Running::InProcess {
            rebound,
            plain,
            handler,
        } => {
            if let Some(r) = rebound {
                r.stop().await;
            }
            stop.cancel();
            if let Some(task) = plain {
                let _ = tokio::time::timeout(Duration::from_secs(30), task).await;
            }
            trace_lateness(&handler, start);
            let late: Vec<f64> = handler
                .late_us
                .lock()
                .map(|v| v.iter().map(|us| *us as f64 / 1000.0).collect())
                .unwrap_or_default();
            (late, None)
        }
        Running::Process(peer) => {
            let rss = support::rss_mib(peer.pid());
            let (seen, clean) = peer.stop().await;
            if !clean {
                eprintln!("{what}: rebound's process did not stop cleanly");
            }
            let late: Vec<f64> = seen
                .attempts
                .lock()
                .map(|v| {
                    v.iter()
                        .filter(|a| a.due_us >= 0)
                        .map(|a| (a.start_us - a.due_us) as f64 / 1000.0)
                        .collect()
                })
                .unwrap_or_default();
            (late, Some(rss))
        }
    };
    let w = w.unwrap_or_else(|e| panic!("{e}"));
    let broker_share = w.broker_cpu / (w.last - w.first).as_secs_f64();
    let memory = rss.map_or(String::new(), |(r, h)| {
        format!("; rebound VmRSS {r:.1} MiB, peak (VmHWM) {h:.1} MiB")
    });
    eprintln!(
        "{what}: lateness p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms, early {} of {}; broker CPU {:.0}% of a core{memory}",
        quantile(&late, 0.5),
        quantile(&late, 0.99),
        quantile(&late, 1.0),
        late.iter().filter(|l| **l < 0.0).count(),
        late.len(),
        broker_share * 100.0
    );
    PrecisionRun {
        late,
        broker_share,
        rss,
    }
}

/// With REBOUND_BENCH_TRACE: lateness by second of the window, and the latest calls.
fn trace_lateness(handler: &Lateness, start: chrono::DateTime<Utc>) {
    let Ok(mut t) = handler.trace.lock() else {
        return;
    };
    if t.is_empty() {
        return;
    }
    let mut by_sec: std::collections::BTreeMap<i64, (usize, i64)> = Default::default();
    for (due, _, l) in t.iter() {
        let sec = (*due - start).num_seconds();
        let e = by_sec.entry(sec).or_default();
        e.0 += 1;
        e.1 = e.1.max(*l);
    }
    for (sec, (n, worst)) in by_sec {
        eprintln!(
            "  second {sec}: {n} calls, worst {:.1} ms",
            worst as f64 / 1000.0
        );
    }
    t.sort_by_key(|(_, _, l)| -l);
    for (due, p, l) in t.iter().take(15) {
        eprintln!(
            "  late {:.1} ms: partition {p}, due at +{} ms",
            *l as f64 / 1000.0,
            (*due - start).num_milliseconds()
        );
    }
}

/// A tier message as the plain reference loops see it (headers only), and its due time.
fn plain_message(m: &rdkafka::message::BorrowedMessage<'_>) -> (Message, chrono::DateTime<Utc>) {
    let message = Message {
        topic: m.topic().to_string(),
        partition: m.partition(),
        offset: m.offset(),
        key: None,
        payload: None,
        headers: rebound::kafka::read_headers(m.headers()),
        timestamp: None,
        attempt: 1,
    };
    let due = headers::last(&message.headers, headers::PROCESS_AFTER)
        .and_then(|h| headers::parse_time(headers::PROCESS_AFTER, h.value.as_deref()).ok())
        .unwrap_or_else(Utc::now);
    (message, due)
}

/// How long the plain loops sleep until their earliest timer (a millisecond past it).
fn wait_for(timers: &std::collections::BTreeSet<(chrono::DateTime<Utc>, i32)>) -> Option<Duration> {
    timers
        .first()
        .map(|(due, _)| (*due - Utc::now()).to_std().unwrap_or_default() + Duration::from_millis(1))
}

/// Removes and returns the partitions whose timers have come due.
fn pop_due(timers: &mut std::collections::BTreeSet<(chrono::DateTime<Utc>, i32)>) -> Vec<i32> {
    let now = Utc::now();
    let mut due = Vec::new();
    while timers.first().is_some_and(|(d, _)| *d <= now) {
        if let Some((_, partition)) = timers.pop_first() {
            due.push(partition);
        }
    }
    due
}

/// Sets `assigned` once the group has given the plain loop its partitions (the run waits for
/// that, as it does for rebound, so that joining the group is not counted as lateness).
fn note_assigned(consumer: &StreamConsumer, assigned: &std::sync::atomic::AtomicBool) {
    if consumer.assignment().is_ok_and(|a| a.count() > 0) {
        assigned.store(true, Ordering::Relaxed);
    }
}

/// Scenario 3's reference: consume the tier; a message not yet due pauses its partition and is
/// kept; when it is due it is handled and the partition resumed. Offsets are stored as handled
/// and committed every second.
async fn hold_head_loop(
    consumer: StreamConsumer,
    handler: Arc<Lateness>,
    assigned: Arc<std::sync::atomic::AtomicBool>,
    stop: CancellationToken,
) {
    use std::collections::{BTreeSet, HashMap, VecDeque};
    type Due = chrono::DateTime<Utc>;
    // Per paused partition, its head and whatever was read behind it (in order); one timer
    // entry per paused partition, for its head.
    let mut held: HashMap<i32, VecDeque<(Due, String, Message)>> = HashMap::new();
    let mut timers: BTreeSet<(Due, i32)> = BTreeSet::new();
    let mut last_commit = Instant::now();
    let handle = |consumer: &StreamConsumer, topic: &str, m: &Message| {
        let mut tpl = rdkafka::TopicPartitionList::new();
        let _ = tpl.add_partition_offset(topic, m.partition, rdkafka::Offset::Offset(m.offset + 1));
        let _ = consumer.store_offsets(&tpl);
    };
    loop {
        let wait = wait_for(&timers);
        let joining = !assigned.load(Ordering::Relaxed);
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(Duration::from_millis(20)), if joining => note_assigned(&consumer, &assigned),
            _ = tokio::time::sleep(wait.unwrap_or_default()), if wait.is_some() => {
                let now = Utc::now();
                for partition in pop_due(&mut timers) {
                    let Some(queue) = held.get_mut(&partition) else { continue };
                    let mut topic = String::new();
                    while queue.front().is_some_and(|(d, _, _)| *d <= now) {
                        if let Some((_, t, m)) = queue.pop_front() {
                            handler.handle(&m).await;
                            handle(&consumer, &t, &m);
                            topic = t;
                        }
                    }
                    match queue.front() {
                        Some((next, _, _)) => {
                            timers.insert((*next, partition));
                        }
                        None => {
                            held.remove(&partition);
                            let mut one = rdkafka::TopicPartitionList::new();
                            one.add_partition(&topic, partition);
                            let _ = consumer.resume(&one);
                        }
                    }
                }
            }
            m = consumer.recv() => {
                let Ok(m) = m else { continue };
                let (message, due) = plain_message(&m);
                if let Some(queue) = held.get_mut(&m.partition()) {
                    // Read behind a held head (before the pause took effect): wait behind it.
                    queue.push_back((due, m.topic().to_string(), message));
                } else if due > Utc::now() {
                    let mut one = rdkafka::TopicPartitionList::new();
                    one.add_partition(m.topic(), m.partition());
                    let _ = consumer.pause(&one);
                    timers.insert((due, m.partition()));
                    held.insert(m.partition(), VecDeque::from([(due, m.topic().to_string(), message)]));
                } else {
                    handler.handle(&message).await;
                    handle(&consumer, m.topic(), &message);
                }
            }
        }
        if last_commit.elapsed() >= Duration::from_secs(1) {
            let _ = consumer.commit_consumer_state(CommitMode::Async);
            last_commit = Instant::now();
        }
    }
    close(consumer);
}

/// The reference loop that waits as Spring Kafka's retry topics do (pause the partition and
/// seek back to the record that is not due; resume when it is due, and fetch it again).
/// Offsets are stored as handled and committed every second.
async fn seek_back_loop(
    consumer: StreamConsumer,
    handler: Arc<Lateness>,
    assigned: Arc<std::sync::atomic::AtomicBool>,
    stop: CancellationToken,
) {
    use std::collections::{BTreeSet, HashMap};
    type Due = chrono::DateTime<Utc>;
    // Paused partitions: when to resume each, and its topic.
    let mut timers: BTreeSet<(Due, i32)> = BTreeSet::new();
    let mut paused: HashMap<i32, String> = HashMap::new();
    let mut last_commit = Instant::now();
    loop {
        let wait = wait_for(&timers);
        let joining = !assigned.load(Ordering::Relaxed);
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(Duration::from_millis(20)), if joining => note_assigned(&consumer, &assigned),
            _ = tokio::time::sleep(wait.unwrap_or_default()), if wait.is_some() => {
                for partition in pop_due(&mut timers) {
                    if let Some(topic) = paused.remove(&partition) {
                        let mut one = rdkafka::TopicPartitionList::new();
                        one.add_partition(&topic, partition);
                        let _ = consumer.resume(&one);
                    }
                }
            }
            m = consumer.recv() => {
                let Ok(m) = m else { continue };
                if paused.contains_key(&m.partition()) {
                    // Read before the pause took effect: it is read again after the seek.
                    continue;
                }
                let (message, due) = plain_message(&m);
                if due > Utc::now() {
                    let mut one = rdkafka::TopicPartitionList::new();
                    one.add_partition(m.topic(), m.partition());
                    let _ = consumer.pause(&one);
                    let _ = consumer.seek(m.topic(), m.partition(), rdkafka::Offset::Offset(m.offset()), Duration::ZERO);
                    timers.insert((due, m.partition()));
                    paused.insert(m.partition(), m.topic().to_string());
                } else {
                    handler.handle(&message).await;
                    let _ = consumer.store_offset(m.topic(), m.partition(), m.offset() + 1);
                }
            }
        }
        if last_commit.elapsed() >= Duration::from_secs(1) {
            let _ = consumer.commit_consumer_state(CommitMode::Async);
            last_commit = Instant::now();
        }
    }
    close(consumer);
}

/// How scenarios 3 and 7 seed their tier: one record per batch for Tansu (its memory engine
/// skips the rest of a batch when a fetch starts inside it), batched when
/// `REBOUND_BENCH_BROKER_KIND=kafka` says the broker is Apache Kafka (one record per batch
/// seeds too slowly there to finish before the first message is due at the higher rates).
fn tier_batching() -> Batching {
    match std::env::var("REBOUND_BENCH_BROKER_KIND").as_deref() {
        Ok("kafka") => Batching::Batched,
        _ => Batching::OnePerBatch,
    }
}

/// Lateness figures of one approach over its runs.
#[derive(Default)]
struct Lateness3 {
    p50: Vec<f64>,
    p99: Vec<f64>,
    max: Vec<f64>,
    early: usize,
    handled: usize,
    cpu: Vec<f64>,
    /// rebound's VmHWM per run, in MiB (when it ran as its own process).
    peak_rss: Vec<f64>,
    /// Every lateness of every run, for the histogram.
    all: Vec<f64>,
}

impl Lateness3 {
    fn add(&mut self, r: PrecisionRun) {
        self.p50.push(quantile(&r.late, 0.5));
        self.p99.push(quantile(&r.late, 0.99));
        self.max.push(quantile(&r.late, 1.0));
        self.early += r.late.iter().filter(|l| **l < 0.0).count();
        self.handled += r.late.len();
        self.cpu.push(r.broker_share * 100.0);
        if let Some((_, peak)) = r.rss {
            self.peak_rss.push(peak);
        }
        self.all.extend(r.late);
    }

    /// The rows of one approach: early handlings, lateness p50 / p99 / max (against the goals
    /// of issue 17 when `goals`, else as a reference) and the broker's CPU.
    fn rows(&self, scenario: &str, what: &str, goals: bool) -> Vec<Row> {
        let mut rows = vec![Row {
            scenario: scenario.into(),
            metric: format!("early handlings, {what}"),
            rebound: format!("{} of {}", self.early, self.handled),
            baseline: "—".into(),
            ratio: "—".into(),
            bar: "0".into(),
            met: Some(self.early == 0),
            detail: String::new(),
        }];
        for (metric, v, bar, goal) in [
            (
                "lateness p50 (handler start − process_after)",
                &self.p50,
                "≤ 5 ms",
                5.0,
            ),
            ("lateness p99", &self.p99, "≤ 25 ms", 25.0),
            ("lateness max", &self.max, "≤ 250 ms", 250.0),
        ] {
            rows.push(Row {
                scenario: scenario.into(),
                metric: metric.into(),
                rebound: format!("{:.1} ms", median(v)),
                baseline: "—".into(),
                ratio: "—".into(),
                bar: if goals {
                    bar.into()
                } else {
                    "reference".into()
                },
                met: goals.then(|| median(v) <= goal),
                detail: format!("runs [{}] ms", list(v, 1)),
            });
        }
        rows.push(report_row(
            scenario,
            "broker CPU while handling (% of one core)",
            format!("{:.0}%", median(&self.cpu)),
            format!("runs [{}] %", list(&self.cpu, 0)),
        ));
        rows
    }
}

/// A row that reports a figure of rebound's, with no baseline and no goal.
fn report_row(scenario: &str, metric: &str, value: String, detail: String) -> Row {
    Row {
        scenario: scenario.into(),
        metric: metric.into(),
        rebound: value,
        baseline: "—".into(),
        ratio: "—".into(),
        bar: "report".into(),
        met: None,
        detail,
    }
}

/// Scenario 3's size: 100 000 retries due over 60 s (scaled; the window at least 10 s).
fn precision_size(ctx: &Ctx) -> (usize, Duration) {
    (
        ctx.n(100_000, 1000),
        Duration::from_secs_f64((60.0 * ctx.scale).clamp(10.0, 60.0)),
    )
}

pub async fn precision(ctx: &Ctx) -> Vec<Row> {
    let (n, window) = precision_size(ctx);
    let partitions = 12;
    let name = "3 retry precision";
    let mut by: Vec<Lateness3> = Waiter::ALL.iter().map(|_| Lateness3::default()).collect();
    for run in 0..ctx.runs {
        for (i, waiter) in Waiter::ALL.into_iter().enumerate() {
            by[i].add(precision_run(ctx, name, waiter, n, window, run).await);
        }
    }
    let png = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/precision-lateness.png");
    let title = format!(
        "Retry lateness: {n} retries due over {} s on {partitions} tier partitions ({} run(s), {})",
        window.as_secs(),
        ctx.runs,
        match std::env::var("REBOUND_BENCH_BROKER_KIND").as_deref() {
            Ok("kafka") => "Apache Kafka",
            _ => "Tansu",
        }
    );
    let series: Vec<(String, Vec<f64>)> = Waiter::ALL
        .iter()
        .zip(&by)
        .map(|(w, f)| (w.name().to_string(), f.all.clone()))
        .collect();
    match crate::plot::lateness_histogram(&png, &title, &series) {
        Ok(()) => eprintln!("[{name}] histogram written to {}", png.display()),
        Err(e) => eprintln!("[{name}] histogram not written: {e}"),
    }
    let what = format!(
        "{n} msgs due over {} s, {partitions} tier partitions",
        window.as_secs()
    );
    Waiter::ALL
        .iter()
        .zip(&by)
        .flat_map(|(w, f)| {
            f.rows(
                &format!("{name} — {}", w.name()),
                &what,
                *w == Waiter::Rebound,
            )
        })
        .collect()
}

/// Scenario 8: scenario 3 at ten times the volume, 1 000 000 retries due over 5 minutes (twice
/// the due rate), beside scenario 3's 100 000 over 60 s, both in the same run and both handled
/// by rebound with its defaults as its own process, so that its peak memory (VmHWM) is its
/// own. Goals (issue 17): the same lateness as the 100 000 case, and a peak RSS at most 1.1×
/// its. Scaled by REBOUND_BENCH_SCALE: the large window is five times the small one.
pub async fn precision_volume(ctx: &Ctx) -> Vec<Row> {
    let partitions = 12;
    let name = "8 retry precision at volume";
    let (small, small_window) = precision_size(ctx);
    let large = ctx.n(1_000_000, 10_000);
    let large_window = small_window * 5;
    let sizes = [(small, small_window), (large, large_window)];
    let mut by: Vec<Lateness3> = sizes.iter().map(|_| Lateness3::default()).collect();
    for run in 0..ctx.runs {
        for (i, (n, window)) in sizes.iter().enumerate() {
            by[i].add(precision_run(ctx, name, Waiter::ReboundProcess, *n, *window, run).await);
        }
    }
    let mut rows = Vec::new();
    for ((n, window), f) in sizes.iter().zip(&by) {
        let scenario = format!("{name} — {n} due over {} s", window.as_secs());
        let what = format!(
            "{n} msgs due over {} s, {partitions} tier partitions, rebound as its own process",
            window.as_secs()
        );
        rows.extend(f.rows(&scenario, &what, true));
        rows.push(report_row(
            &scenario,
            "peak RSS (VmHWM) of rebound's process",
            format!("{:.1} MiB", median(&f.peak_rss)),
            format!("runs [{}] MiB", list(&f.peak_rss, 1)),
        ));
    }
    let (s, l) = (&by[0], &by[1]);
    let rss_ratio = median(&l.peak_rss) / median(&s.peak_rss);
    rows.push(Row {
        scenario: format!("{name} — {large} vs {small}"),
        metric: "peak RSS (VmHWM) of rebound's process".into(),
        rebound: format!("{:.1} MiB", median(&l.peak_rss)),
        baseline: format!("{:.1} MiB", median(&s.peak_rss)),
        ratio: format!("{rss_ratio:.2}"),
        bar: "≤ 1.10".into(),
        met: Some(rss_ratio <= 1.1),
        detail: String::new(),
    });
    rows.push(Row {
        scenario: format!("{name} — {large} vs {small}"),
        metric: "lateness p99".into(),
        rebound: format!("{:.1} ms", median(&l.p99)),
        baseline: format!("{:.1} ms", median(&s.p99)),
        ratio: format!("{:.2}", median(&l.p99) / median(&s.p99)),
        bar: "report (both ≤ 25 ms above)".into(),
        met: None,
        detail: String::new(),
    });
    rows
}

/// Scenario 7: the lateness of each approach at rising due rates (500, 1 000, 2 000 and
/// 5 000 retries due per second over 12 tier partitions), `ctx.runs` runs each (medians of the
/// runs' p50, p99 and max): where each falls behind.
pub async fn precision_rates(ctx: &Ctx) -> Vec<Row> {
    let window = Duration::from_secs_f64((20.0 * ctx.scale).clamp(5.0, 20.0));
    let name = "7 lateness at rising due rates";
    let rates = [500usize, 1000, 2000, 5000];
    // By rate, then by approach; runs interleaved so that a slow minute of the machine falls on
    // every approach alike.
    let mut by: Vec<Vec<Lateness3>> = rates
        .iter()
        .map(|_| Waiter::ALL.iter().map(|_| Lateness3::default()).collect())
        .collect();
    for run in 0..ctx.runs {
        for (r, rate) in rates.iter().enumerate() {
            let n = rate * window.as_secs() as usize;
            for (w, waiter) in Waiter::ALL.into_iter().enumerate() {
                by[r][w].add(precision_run(ctx, name, waiter, n, window, run).await);
            }
        }
    }
    let mut rows = Vec::new();
    for (r, rate) in rates.iter().enumerate() {
        for (w, waiter) in Waiter::ALL.into_iter().enumerate() {
            let f = &by[r][w];
            rows.push(Row {
                scenario: format!("{name} — {}", waiter.name()),
                metric: format!("{rate} due/s for {} s", window.as_secs()),
                rebound: format!(
                    "p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
                    median(&f.p50),
                    median(&f.p99),
                    median(&f.max)
                ),
                baseline: format!("early {} of {}", f.early, f.handled),
                ratio: "—".into(),
                bar: "report".into(),
                met: None,
                detail: format!(
                    "p99 runs [{}] ms; broker CPU {:.0}% of a core",
                    list(&f.p99, 1),
                    median(&f.cpu)
                ),
            });
        }
    }
    rows
}

// ---------------------------------------------------------------------------------------------
// 4: memory under backlog

/// Starts the `rebound` binary on a topology whose tier holds `backlog` messages due in two
/// hours, waits until every tier partition is paused, and returns (VmRSS, VmHWM) in MiB.
async fn rss_with_backlog(ctx: &Ctx, topology: &Topology, partitions: i32) -> (f64, f64) {
    let port = support::free_port();
    let group = support::unique("s4-g");
    let tiers: Vec<String> = topology
        .tiers
        .iter()
        .map(|t| rebound::duration::format(t.delay))
        .collect();
    let mut cmd = std::process::Command::new(&ctx.rebound_bin);
    cmd.args(["run", "--brokers", &ctx.brokers, "--group", &group])
        .args(["--topic", &topology.main, "--tiers", &tiers.join(",")])
        .args(["--handler", "command", "--command", "true"])
        .args(["--metrics-addr", &format!("127.0.0.1:{port}")])
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null());
    for (k, v) in client_props() {
        cmd.arg("-X").arg(format!("{k}={v}"));
    }
    for (k, v) in extra_props() {
        cmd.arg("-X").arg(format!("{k}={v}"));
    }
    let mut child = cmd.spawn().expect("starting the rebound binary");
    let pid = child.id();
    let label = &topology.tiers[0].label;
    let want = format!("rebound_paused_partitions{{tier=\"{label}\"}} {partitions}");
    let url = format!("http://127.0.0.1:{port}/metrics");
    let client = reqwest::Client::new();
    let paused = waited(
        Duration::from_secs(120),
        Duration::from_millis(200),
        || async {
            match client.get(&url).send().await {
                Ok(r) => r
                    .text()
                    .await
                    .is_ok_and(|text| text.lines().any(|l| l == want)),
                Err(_) => false,
            }
        },
    )
    .await;
    if !paused {
        eprintln!("[4 memory] WARNING: not every tier partition was paused within 120 s");
    }
    // Let prefetched data be dropped and the allocator settle.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let rss = support::rss_mib(pid);
    let _ = std::process::Command::new("kill")
        .arg(pid.to_string())
        .status();
    waited(Duration::from_secs(15), Duration::from_millis(50), || {
        ready(matches!(child.try_wait(), Ok(Some(_))))
    })
    .await;
    let _ = child.kill();
    let _ = child.wait();
    rss
}

pub async fn memory(ctx: &Ctx) -> Vec<Row> {
    let partitions = 12;
    let small = ctx.n(100_000, 1000);
    let large = ctx.n(1_000_000, 10_000);
    let name = "4 memory under backlog";
    let mut results: Vec<(usize, Vec<f64>, Vec<f64>)> = Vec::new();
    for backlog in [0, small, large] {
        let main = support::unique("s4");
        let topology = Topology::new(&main, &[Duration::from_secs(3600)]);
        support::create_topics(&ctx.brokers, &topology.topics(), partitions).await;
        let tier = topology.tiers[0].topic.clone();
        let due = headers::format_time(Utc::now() + chrono::Duration::hours(2));
        if backlog > 0 {
            eprintln!("[{name}] seeding {backlog} messages (not due for 2 h) into {partitions} tier partitions");
            // Batched is safe here: each partition is read from its start and never resumed.
            let rate = support::seed(&ctx.brokers, &tier, backlog, Batching::Batched, |i| Seed {
                partition: Some((i % partitions as usize) as i32),
                key: Some(format!("k{i}").into_bytes()),
                payload: support::payload(i, 200),
                headers: vec![
                    Header::new(headers::PROCESS_AFTER, due.clone()),
                    Header::new(headers::ATTEMPT, "1"),
                ],
            })
            .await;
            eprintln!("[{name}] seeded at {rate:.0} msg/s");
        } else {
            // An empty tier never pauses: one message per partition, so the process is measured
            // in the same state (every tier partition paused), only without a backlog.
            support::seed(
                &ctx.brokers,
                &tier,
                partitions as usize,
                Batching::OnePerBatch,
                |i| Seed {
                    partition: Some(i as i32),
                    key: None,
                    payload: support::payload(i, 200),
                    headers: vec![
                        Header::new(headers::PROCESS_AFTER, due.clone()),
                        Header::new(headers::ATTEMPT, "1"),
                    ],
                },
            )
            .await;
        }
        let mut rss = Vec::new();
        let mut hwm = Vec::new();
        for run in 0..ctx.runs {
            let (r, h) = rss_with_backlog(ctx, &topology, partitions).await;
            eprintln!("[{name}] backlog {backlog}, run {run}: VmRSS {r:.1} MiB, VmHWM {h:.1} MiB");
            rss.push(r);
            hwm.push(h);
        }
        results.push((backlog.max(partitions as usize), rss, hwm));
    }
    let (n0, r0, h0) = &results[0];
    let (n1, r1, h1) = &results[1];
    let (n2, r2, h2) = &results[2];
    let ratio = median(r2) / median(r1);
    let hwm_ratio = median(h2) / median(h1);
    vec![
        Row {
            scenario: name.into(),
            metric: format!(
                "RSS of `rebound run` with {n2} parked vs {n1} parked ({partitions} tier partitions, all paused)"
            ),
            rebound: format!("{:.1} MiB", median(r2)),
            baseline: format!("{:.1} MiB", median(r1)),
            ratio: format!("{ratio:.2}"),
            bar: "≤ 1.10 and ≤ 64 MiB".into(),
            met: Some(ratio <= 1.1 && median(r2) <= 64.0),
            detail: format!(
                "VmRSS runs: {n0} parked [{}], {n1} [{}], {n2} [{}] MiB",
                list(r0, 1),
                list(r1, 1),
                list(r2, 1)
            ),
        },
        Row {
            scenario: name.into(),
            metric: format!("peak RSS (VmHWM), {n2} vs {n1} parked"),
            rebound: format!("{:.1} MiB", median(h2)),
            baseline: format!("{:.1} MiB", median(h1)),
            ratio: format!("{hwm_ratio:.2}"),
            bar: "report".into(),
            met: None,
            detail: format!(
                "VmHWM runs: {n0} parked [{}], {n1} [{}], {n2} [{}] MiB",
                list(h0, 1),
                list(h1, 1),
                list(h2, 1)
            ),
        },
    ]
}

// ---------------------------------------------------------------------------------------------
// 5: slow downstream

/// An HTTP server on loopback that answers every POST after 10 ms and counts the requests.
async fn slow_server(served: Arc<AtomicU64>) -> String {
    use axum::routing::post;
    let app = axum::Router::new().route(
        "/",
        post(move || {
            let served = served.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(10)).await;
                served.fetch_add(1, Ordering::Relaxed);
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the slow server");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}/")
}

pub async fn slow_downstream(ctx: &Ctx) -> Vec<Row> {
    let name = "5 slow downstream (10 ms HTTP)";
    let n64 = ctx.n(20_000, 2000);
    let n1 = ctx.n(500, 200);
    let served = Arc::new(AtomicU64::new(0));
    let url = slow_server(served.clone()).await;
    let main = support::unique("s5");
    let topology = Topology::new(&main, &[Duration::from_secs(3600)]);
    support::create_topics(&ctx.brokers, &topology.topics(), 6).await;
    eprintln!("[{name}] seeding {n64} messages");
    support::seed(&ctx.brokers, &main, n64, Batching::Batched, |i| Seed {
        partition: None,
        key: Some(format!("k{i}").into_bytes()),
        payload: support::payload(i, 200),
        headers: Vec::new(),
    })
    .await;
    let mut one = Vec::new();
    let mut many = Vec::new();
    for run in 0..ctx.runs {
        for (mif, n) in [(1usize, n1), (64, n64)] {
            served.store(0, Ordering::Relaxed);
            let group = support::unique("s5-g");
            let mut config = rebound_config(ctx, topology.clone(), &group);
            config.max_in_flight = mif;
            let handler = HttpHandler::new(&url, Duration::from_secs(5)).expect("http handler");
            let running = Embedded::start(config, Arc::new(handler));
            let w = support::watch(
                || served.load(Ordering::Relaxed),
                n as u64,
                None,
                Duration::from_secs(60),
                "rebound",
            )
            .await;
            running.stop().await;
            let w = w.unwrap_or_else(|e| panic!("{e}"));
            eprintln!(
                "[{name}] run {run}: --max-in-flight {mif}: {}",
                fmt_rate(w.rate())
            );
            if mif == 1 {
                one.push(w.rate());
            } else {
                many.push(w.rate());
            }
        }
    }
    let ratio = median(&many) / median(&one);
    vec![Row {
        scenario: name.into(),
        metric: format!("throughput, --max-in-flight 64 ({n64} msgs) vs 1 ({n1} msgs)"),
        rebound: fmt_rate(median(&many)),
        baseline: fmt_rate(median(&one)),
        ratio: format!("{ratio:.1}"),
        bar: "≥ 30".into(),
        met: Some(ratio >= 30.0),
        detail: format!("64: [{}], 1: [{}] msg/s", list(&many, 0), list(&one, 1)),
    }]
}

//! What every scenario needs: the broker, topics, seeding, CPU clocks and statistics.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::stream::{FuturesUnordered, StreamExt};
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientConfig;
use rebound::headers::Header;

/// The broker every scenario runs against: the one `scripts/bench` started (Apache Kafka where
/// Java 17+ and Maven are present, else Tansu), named by `REBOUND_BENCH_BROKERS`,
/// `REBOUND_BENCH_BROKER_NAME`, `REBOUND_BENCH_BROKER_KIND` and `REBOUND_BENCH_BROKER_PID`; or,
/// when `cargo bench` runs without it, a Tansu (memory storage) started here and stopped on drop.
pub struct Broker {
    pub addr: String,
    child: Option<Child>,
}

/// Whether the broker under test is Tansu (then tier traffic is produced one record per batch,
/// see docs/broker-compat.md, "Mid-batch fetch"). `scripts/bench` started the broker, so it knows.
pub fn broker_is_tansu() -> bool {
    std::env::var("REBOUND_BENCH_BROKER_KIND").map_or(true, |k| k == "tansu")
}

impl Broker {
    pub fn start_or_use(log: &Path) -> Broker {
        if let Ok(addr) = std::env::var("REBOUND_BENCH_BROKERS") {
            return Broker { addr, child: None };
        }
        std::env::set_var("REBOUND_BENCH_BROKER_KIND", "tansu");
        let port = free_port();
        let out = std::fs::File::create(log).expect("broker log file");
        let err = out.try_clone().expect("broker log file");
        let url = format!("tcp://127.0.0.1:{port}");
        let child = Command::new("tansu")
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "memory://tansu/"])
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect(
                "starting `tansu` (install it with scripts/bench, or set REBOUND_BENCH_BROKERS)",
            );
        let addr = format!("127.0.0.1:{port}");
        let until = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(&addr).is_err() {
            assert!(
                Instant::now() < until,
                "tansu did not listen on {addr} within 10 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Broker {
            addr,
            child: Some(child),
        }
    }

    /// The broker's process id (for its CPU time): the child started here, or the one
    /// `scripts/bench` started (`REBOUND_BENCH_BROKER_PID`).
    pub fn pid(&self) -> Option<u32> {
        match &self.child {
            Some(c) => Some(c.id()),
            None => std::env::var("REBOUND_BENCH_BROKER_PID")
                .ok()
                .and_then(|p| p.parse().ok()),
        }
    }

    pub fn describe(&self) -> String {
        match &self.child {
            Some(_) => format!("Tansu (memory storage) started here on {}", self.addr),
            None => match std::env::var("REBOUND_BENCH_BROKER_NAME") {
                Ok(name) => format!("{name} on {}", self.addr),
                Err(_) => format!("given broker {}", self.addr),
            },
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub use crate::common::create_topics_at as create_topics;
pub use crate::common::free_port;

/// A name no earlier run used: the test suite's [`crate::common::unique`], prefixed `bench-`.
pub fn unique(prefix: &str) -> String {
    crate::common::unique(&format!("bench-{prefix}"))
}

/// One record to seed.
pub struct Seed {
    pub partition: Option<i32>,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub headers: Vec<Header>,
}

/// How the seeding producer batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Batching {
    /// Many records per batch: fast; fine for topics read from the start and never paused.
    Batched,
    /// One record per batch where the broker is Tansu (its memory engine skips the rest of a
    /// batch when a fetch starts inside it); batched like `Batched` on Apache Kafka.
    OnePerBatch,
}

/// Produces `n` records made by `make` to `topic` with many in flight; returns the rate.
pub async fn seed(
    brokers: &str,
    topic: &str,
    n: usize,
    batching: Batching,
    make: impl Fn(usize) -> Seed,
) -> f64 {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("acks", "all")
        .set("queue.buffering.max.messages", "200000");
    match batching {
        Batching::OnePerBatch if broker_is_tansu() => {
            config.set("linger.ms", "0").set("batch.num.messages", "1")
        }
        _ => config
            .set("linger.ms", "20")
            .set("batch.num.messages", "2000"),
    };
    let producer: FutureProducer = config.create().expect("seed producer");
    let started = Instant::now();
    let mut pending = FuturesUnordered::new();
    let check = |r: Result<rdkafka::producer::future_producer::OwnedDeliveryResult, _>| match r {
        Ok(Ok(_)) => {}
        Ok(Err((e, _))) => panic!("seeding {topic}: {e}"),
        Err(_) => panic!("seeding {topic}: delivery cancelled"),
    };
    for i in 0..n {
        let s = make(i);
        let headers = rebound::kafka::to_owned_headers(&s.headers);
        loop {
            let mut rec: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic)
                .payload(s.payload.as_slice())
                .headers(headers.clone());
            if let Some(k) = &s.key {
                rec = rec.key(k.as_slice());
            }
            if let Some(p) = s.partition {
                rec = rec.partition(p);
            }
            match producer.send_result(rec) {
                Ok(f) => {
                    pending.push(f);
                    break;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    match pending.next().await {
                        Some(r) => check(r),
                        None => tokio::time::sleep(Duration::from_millis(1)).await,
                    }
                }
                Err((e, _)) => panic!("seeding {topic}: {e}"),
            }
        }
        while pending.len() >= 100_000 {
            if let Some(r) = pending.next().await {
                check(r);
            }
        }
    }
    while let Some(r) = pending.next().await {
        check(r);
    }
    n as f64 / started.elapsed().as_secs_f64()
}

/// A payload of exactly `size` bytes that names message `i`.
pub fn payload(i: usize, size: usize) -> Vec<u8> {
    let mut p = format!("m{i:09}-").into_bytes();
    p.resize(size, b'x');
    p
}

/// User + system CPU seconds of a process (this one when `pid` is `None`).
pub fn cpu_seconds(pid: Option<u32>) -> f64 {
    let path = match pid {
        Some(p) => format!("/proc/{p}/stat"),
        None => "/proc/self/stat".to_string(),
    };
    let Ok(stat) = std::fs::read_to_string(path) else {
        return f64::NAN;
    };
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    (ticks(11) + ticks(12)) / clock_ticks()
}

fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// A process's resident set and its peak, in MiB, from /proc/PID/status.
pub fn rss_mib(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .map(|kib| kib / 1024.0)
            .unwrap_or(f64::NAN)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// The `q` quantile (0..=1) of `values`, nearest rank; `values` need not be sorted.
pub fn quantile(values: &[f64], q: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

pub fn median(values: &[f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    }
}

/// Progress of a run as seen by a watcher: the first and last moment of work and the CPU clock
/// at those moments.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub first: Instant,
    pub last: Instant,
    /// Work done between `first` and `last` (what was done by `first` is not counted).
    pub count: u64,
    pub cpu: f64,
    pub broker_cpu: f64,
}

impl Window {
    pub fn rate(&self) -> f64 {
        let secs = (self.last - self.first).as_secs_f64();
        if secs <= 0.0 {
            return f64::NAN;
        }
        self.count as f64 / secs
    }

    pub fn cpu_us_per_msg(&self) -> f64 {
        self.cpu * 1e6 / self.count as f64
    }

    pub fn broker_cpu_us_per_msg(&self) -> f64 {
        self.broker_cpu * 1e6 / self.count as f64
    }
}

/// Polls `count` every 2 ms until it reaches `target`; returns the window from the first
/// progress to the target, with this process's (and the broker's) CPU time over it. Fails when
/// nothing moved for `stall`.
pub async fn watch(
    count: impl Fn() -> u64,
    target: u64,
    broker: Option<u32>,
    stall: Duration,
    what: &str,
) -> Result<Window, String> {
    let mut last_seen = 0;
    let mut last_move = Instant::now();
    let mut first: Option<(Instant, u64, f64, f64)> = None;
    let trace = std::env::var_os("REBOUND_BENCH_TRACE").is_some();
    let mut traced = (Instant::now(), 0u64);
    loop {
        let c = count();
        let now = Instant::now();
        if trace && now - traced.0 >= Duration::from_secs(1) {
            let rate = (c - traced.1) as f64 / (now - traced.0).as_secs_f64();
            eprintln!("  {what}: {c} done, {rate:.0}/s over the last second");
            traced = (now, c);
        }
        if c > 0 && first.is_none() {
            first = Some((now, c, cpu_seconds(None), cpu_seconds(broker)));
        }
        if c >= target {
            let (t0, c0, cpu0, bcpu0) = first.unwrap_or((now, 0, 0.0, 0.0));
            return Ok(Window {
                first: t0,
                last: now,
                count: c - c0,
                cpu: cpu_seconds(None) - cpu0,
                broker_cpu: cpu_seconds(broker) - bcpu0,
            });
        }
        if c != last_seen {
            last_seen = c;
            last_move = now;
        } else if now - last_move > stall {
            return Err(format!(
                "{what}: stalled at {c} of {target} (nothing for {} s)",
                stall.as_secs()
            ));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

//! Scenario 9 (issue 21): what `--ordering key` costs. One mix, both modes, alternating in the
//! same run: 500 keys, every tenth key "failing" (half of its messages fail their first try
//! transiently: 5 % of all messages), tier 1 s. Measured: the time until every message of the
//! keys that never fail was handled (they must not be slowed), and until every message was.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rebound::config::{Config, KafkaProps};
use rebound::{Handler, Message, Outcome, Topology};

use crate::scenarios::{list, Ctx, Embedded, Row};
use crate::support::{self, median, Batching, Seed};

const KEYS: usize = 500;

/// Fails the first try of payloads ending in `!`; counts what succeeded, clean keys apart.
#[derive(Default)]
struct Mix {
    clean_done: AtomicU64,
    all_done: AtomicU64,
}

#[async_trait::async_trait]
impl Handler for Mix {
    async fn handle(&self, m: &Message) -> Outcome {
        let p = m.payload();
        if p.ends_with(b"!") && m.attempt == 0 {
            return Outcome::transient("bench", "fails its first try");
        }
        if p.starts_with(b"c") {
            self.clean_done.fetch_add(1, Ordering::Relaxed);
        }
        self.all_done.fetch_add(1, Ordering::Relaxed);
        Outcome::Success
    }
}

/// (seconds until the clean keys were done, seconds until everything was).
async fn one(ctx: &Ctx, n: usize, ordered: bool, run: usize) -> (f64, f64) {
    let main = support::unique(&format!(
        "s8-{}-{run}",
        if ordered { "key" } else { "none" }
    ));
    let mut topology = Topology::new(&main, &[Duration::from_secs(1)]);
    topology.max_retries = 3;
    if ordered {
        topology.waiting = Some(Topology::waiting_topic(&main));
    }
    support::create_topics(&ctx.brokers, &topology.topics(), 6).await;
    let clean = (0..n).filter(|i| (i % KEYS) % 10 != 0).count() as u64;
    support::seed(&ctx.brokers, &main, n, Batching::Batched, |i| {
        let key = i % KEYS;
        let failing = key % 10 == 0;
        let mut payload = support::payload(i, 100);
        payload[0] = if failing { b'f' } else { b'c' };
        // Every other message of a failing key (its 1st, 3rd, … in key order).
        if failing && (i / KEYS) % 2 == 0 {
            *payload.last_mut().unwrap() = b'!';
        }
        Seed {
            partition: None,
            key: Some(format!("key{key}").into_bytes()),
            payload,
            headers: Vec::new(),
        }
    })
    .await;
    let mut config = Config::new(&ctx.brokers, &support::unique("s8-g"), topology);
    config.cluster.kafka = KafkaProps(vec![("fetch.wait.max.ms".into(), "20".into())]);
    if let Ok(addr) = std::env::var("REBOUND_BENCH_METRICS") {
        config.metrics_addr = addr.parse().ok();
    }
    let handler = Arc::new(Mix::default());
    let started = Instant::now();
    let running = Embedded::start(config, handler.clone());
    let (mut clean_at, mut all_at) = (None, None);
    let deadline = started + Duration::from_secs(600);
    while all_at.is_none() && Instant::now() < deadline && !running.ended() {
        if clean_at.is_none() && handler.clean_done.load(Ordering::Relaxed) >= clean {
            clean_at = Some(started.elapsed().as_secs_f64());
        }
        if handler.all_done.load(Ordering::Relaxed) >= n as u64 {
            all_at = Some(started.elapsed().as_secs_f64());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    running.stop().await;
    (clean_at.unwrap_or(f64::NAN), all_at.unwrap_or(f64::NAN))
}

pub async fn cost(ctx: &Ctx) -> Vec<Row> {
    let name = "9 key-ordered retries";
    let n = ctx.n(50_000, 2_000);
    let (mut key, mut none) = (Vec::new(), Vec::new());
    for run in 0..ctx.runs {
        for ordered in [run % 2 == 0, run % 2 != 0] {
            let r = one(ctx, n, ordered, run).await;
            eprintln!(
                "[{name}] run {run} --ordering {}: clean keys {:.1} s, all {:.1} s",
                if ordered { "key" } else { "none" },
                r.0,
                r.1
            );
            if ordered { &mut key } else { &mut none }.push(r);
        }
    }
    let clean = |v: &[(f64, f64)]| v.iter().map(|r| r.0).collect::<Vec<_>>();
    let all = |v: &[(f64, f64)]| v.iter().map(|r| r.1).collect::<Vec<_>>();
    let (kc, nc, ka, na) = (clean(&key), clean(&none), all(&key), all(&none));
    let ratio = median(&kc) / median(&nc);
    vec![
        Row {
            scenario: format!("{name} — keys without failures"),
            metric: format!(
                "s until every message of the 450 keys that never fail was handled ({n} msgs, 5 % fail once, tier 1s); baseline: --ordering none"
            ),
            rebound: format!("{:.2} s", median(&kc)),
            baseline: format!("{:.2} s", median(&nc)),
            ratio: format!("{ratio:.2}"),
            bar: "≤ 1.10".into(),
            met: Some(ratio <= 1.10),
            detail: format!("key [{}] s, none [{}] s", list(&kc, 2), list(&nc, 2)),
        },
        Row {
            scenario: format!("{name} — every message"),
            metric: "s until every message was handled (the failing keys' later messages wait for their retry)".into(),
            rebound: format!("{:.2} s", median(&ka)),
            baseline: format!("{:.2} s", median(&na)),
            ratio: format!("{:.2}", median(&ka) / median(&na)),
            bar: "report".into(),
            met: None,
            detail: format!("key [{}] s, none [{}] s", list(&ka, 2), list(&na, 2)),
        },
    ]
}

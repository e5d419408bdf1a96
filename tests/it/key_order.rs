//! Key-ordered retries (`--ordering key`, issue 21): 50 keys × 40 messages, each carrying its
//! key and a per-key sequence number, some failing their first try transiently 1–3 times
//! (seeded). For every key, no message may succeed before every earlier message of its key has
//! succeeded at least once (a message handled again after a crash is a repeat, not a reorder);
//! every message must succeed; nothing may run before its `process_after`. Then the same with
//! three `kill -9`s, with a rebalance while keys are blocked, and with one hot key of 10 000
//! messages waiting behind a blocked one (memory). Tiers are 1 s and 2 s: long enough for
//! messages of a key to arrive while an earlier one is in a tier, short enough for CI.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use crate::rel::*;
use rand::{Rng, SeedableRng};
use rebound::topology::Topology;

const KEYS: usize = 50;
const PER_KEY: usize = 40;
const TIERS_MS: [u64; 2] = [1000, 2000];

/// A topology with `--ordering key` whose topics (the waiting log included) exist.
async fn ordered_scenario(prefix: &str, partitions: i32) -> (String, Topology) {
    let main = unique(prefix);
    let mut topo = topology(&main, &TIERS_MS);
    topo.max_retries = 3;
    topo.waiting = Some(Topology::waiting_topic(&main));
    create_topology(&topo, partitions).await;
    (main, topo)
}

/// `KEYS` keys × `PER_KEY` messages, interleaved by sequence number: payload
/// `key<K>-<SEQ>:<behaviour>`, about one in eight failing its first try 1–3 times.
fn keyed_messages(rng: &mut impl Rng) -> Vec<Out> {
    let mut out = Vec::new();
    for seq in 0..PER_KEY {
        for k in 0..KEYS {
            let behaviour = if rng.random_range(0..8) == 0 {
                format!("fail-{}", rng.random_range(1..=3))
            } else {
                "ok".to_string()
            };
            let key = format!("key{k:02}");
            out.push(Out::new(&key, &format!("{key}-{seq:02}:{behaviour}")));
        }
    }
    out
}

/// (key, sequence number) of a handled payload.
fn key_seq(id: &str) -> Option<(String, usize)> {
    let (head, _) = id.split_once(':')?;
    let (key, seq) = head.split_once('-')?;
    Some((key.to_string(), seq.parse().ok()?))
}

/// Checks the handler log (in call order): a success of message `s` of a key comes only after
/// every earlier message of that key succeeded at least once; nothing ran before its
/// `process_after`. Returns, per key, the messages that succeeded.
fn assert_key_order(records: &[Handled]) -> HashMap<String, BTreeSet<usize>> {
    let mut done: HashMap<String, BTreeSet<usize>> = HashMap::new();
    let mut early = Vec::new();
    for r in records {
        if r.process_after.is_some_and(|pa| r.at < pa) {
            early.push(r.id.clone());
        }
        if r.status != 200 {
            continue;
        }
        let Some((key, seq)) = key_seq(&r.id) else {
            continue;
        };
        let succeeded = done.entry(key.clone()).or_default();
        let missing: Vec<usize> = (0..seq).filter(|s| !succeeded.contains(s)).collect();
        assert!(
            missing.is_empty(),
            "{key}: message {seq} succeeded at {} before {missing:?} of its key had",
            r.at
        );
        succeeded.insert(seq);
    }
    assert!(early.is_empty(), "handled before process_after: {early:?}");
    done
}

/// A gauge of `--ordering key`: the series of tier `tier`, or the sum over tiers (`None`).
fn gauge(g: &prometheus::IntGaugeVec, tier: Option<&str>) -> i64 {
    use prometheus::core::Collector;
    g.collect()
        .iter()
        .flat_map(|family| family.get_metric())
        .filter(|m| tier.is_none_or(|t| m.get_label().iter().any(|l| l.value() == t)))
        .map(|m| m.get_gauge().get_value() as i64)
        .sum()
}

/// Every message of every key succeeded.
fn all_succeeded(done: &HashMap<String, BTreeSet<usize>>) -> bool {
    done.len() == KEYS && done.values().all(|s| s.len() == PER_KEY)
}

fn succeeded_of(records: &[Handled]) -> usize {
    records
        .iter()
        .filter(|r| r.status == 200)
        .filter_map(|r| key_seq(&r.id))
        .collect::<BTreeSet<_>>()
        .len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_s_later_messages_wait_for_the_one_in_retry() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed("key-order"));
    let (main, topo) = ordered_scenario("korder", 3).await;
    let recording = Recording::scripted();
    let running = start(config(topo, &unique("g")), Arc::new(recording.clone()));
    wait_ready(&running).await;
    let messages = keyed_messages(&mut rng);
    produce(&main, &messages).await;
    wait_until(
        "every keyed message succeeded",
        Duration::from_secs(180),
        || succeeded_of(&recording.records()) == KEYS * PER_KEY,
    )
    .await;
    let blocked_seen = recording
        .records()
        .iter()
        .filter(|r| r.status == 503)
        .count();
    running.stop().await;
    let done = assert_key_order(&recording.records());
    assert!(all_succeeded(&done));
    assert!(
        blocked_seen > 0,
        "no message failed: the test proves nothing"
    );
    eprintln!(
        "FIGURES key-order: messages={} transient_failures={blocked_seen} calls={}",
        KEYS * PER_KEY,
        recording.count()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_order_survives_kill_9s() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed("key-order-crash"));
    let brokers = brokers();
    let (main, topo) = ordered_scenario("kocrash", 3).await;
    let messages = keyed_messages(&mut rng);
    let sink = Sink::start().await;
    let dir = workdir("key-order-crash");
    let log = dir.path().join("rebound.log");
    let mut args = run_args(&brokers, &topo, &unique("g"), &sink, 0);
    args.extend(
        [
            "--ordering",
            "key",
            // A killed member stays in the group until its session times out; keep that short
            // so the restarted process gets the partitions back soon.
            "-X",
            "session.timeout.ms=6000",
            "-X",
            "heartbeat.interval.ms=500",
        ]
        .map(String::from),
    );
    let spawn = |args: &[String]| {
        let port = free_port();
        let mut args = args.to_vec();
        let at = args.iter().position(|a| a == "--metrics-addr").unwrap() + 1;
        args[at] = format!("127.0.0.1:{port}");
        Proc::spawn(&args, port, &log, &[])
    };
    let feed = feed(&brokers, &main, &messages, 100, Duration::from_millis(150));
    let mut p = spawn(&args);
    for kill in 0..3 {
        wait_readyz(&p, Duration::from_secs(60)).await;
        let before = sink.count();
        wait_until("progress after a start", Duration::from_secs(60), || {
            sink.count() > before
        })
        .await;
        tokio::time::sleep(Duration::from_millis(rng.random_range(200..3000))).await;
        p.kill9();
        eprintln!("kill {} after {} calls", kill + 1, sink.count());
        p = spawn(&args);
    }
    feed.await.unwrap();
    wait_until(
        "every keyed message succeeded after the kills",
        Duration::from_secs(240),
        || succeeded_of(&sink.records()) == KEYS * PER_KEY,
    )
    .await;
    assert!(p.running(), "rebound exited on its own:\n{}", p.log_text());
    let (status, _) = p.term(Duration::from_secs(30));
    assert!(
        status.is_some_and(|s| s.success()),
        "exit after SIGTERM: {status:?}"
    );
    let records = sink.records();
    let done = assert_key_order(&records);
    assert!(all_succeeded(&done));
    let repeats = records.iter().filter(|r| r.status == 200).count() - KEYS * PER_KEY;
    eprintln!(
        "FIGURES key-order-crash: messages={} kills=3 calls={} repeated_successes={repeats}",
        KEYS * PER_KEY,
        records.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_order_survives_a_rebalance_while_keys_are_blocked() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed("key-order-rebalance"));
    let (main, topo) = ordered_scenario("korebal", 4).await;
    let group = unique("g");
    let recording = Recording::scripted();
    let a = start(config(topo.clone(), &group), Arc::new(recording.clone()));
    let b = start(config(topo.clone(), &group), Arc::new(recording.clone()));
    wait_ready(&a).await;
    wait_ready(&b).await;
    let messages = keyed_messages(&mut rng);
    let feed = crate::rel::feed(
        &brokers(),
        &main,
        &messages,
        200,
        Duration::from_millis(100),
    );
    // Stop an instance while keys of its main partitions are blocked with followers waiting
    // behind them (either may own the main partitions), then start another.
    let holds = |m: &rebound::metrics::Metrics| {
        gauge(&m.ordering_blocked_keys, None) > 0 && gauge(&m.ordering_waiting, None) > 0
    };
    wait_until(
        "keys blocked with followers waiting",
        Duration::from_secs(60),
        || holds(&a.metrics) || holds(&b.metrics),
    )
    .await;
    let (stopped, kept) = if holds(&a.metrics) { (a, b) } else { (b, a) };
    eprintln!(
        "rebalance with {} keys blocked and {} messages waiting on the stopped instance",
        gauge(&stopped.metrics.ordering_blocked_keys, None),
        gauge(&stopped.metrics.ordering_waiting, None)
    );
    stopped.stop().await;
    let c = start(config(topo.clone(), &group), Arc::new(recording.clone()));
    wait_ready(&c).await;
    feed.await.unwrap();
    wait_until(
        "every keyed message succeeded across the rebalance",
        Duration::from_secs(180),
        || succeeded_of(&recording.records()) == KEYS * PER_KEY,
    )
    .await;
    kept.stop().await;
    c.stop().await;
    let done = assert_key_order(&recording.records());
    assert!(all_succeeded(&done));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_key_waiting_behind_a_blocked_one_costs_no_memory_per_message() {
    const HOT: usize = 10_000;
    let brokers = brokers();
    let (main, topo) = ordered_scenario("kohot", 1).await;
    let sink = Sink::start().await;
    let dir = workdir("key-order-hot");
    let log = dir.path().join("rebound.log");
    let port = free_port();
    let mut args = run_args(&brokers, &topo, &unique("g"), &sink, port);
    args.extend(["--ordering", "key"].map(String::from));
    let mut p = Proc::spawn(&args, port, &log, &[]);
    wait_readyz(&p, Duration::from_secs(60)).await;
    let idle = rss_kib(p.pid()).expect("rss");
    // The first message answers 503 with Retry-After: 120: it waits two minutes in the last
    // tier while the hot key's other messages arrive behind it.
    let mut messages = vec![Out::new("hot", "hot-00000:wait-120")];
    messages.extend((1..=HOT).map(|i| Out::new("hot", &format!("hot-{i:05}:ok"))));
    produce_many(&brokers, &main, &messages).await;
    let addr = p.metrics;
    let mut peak = idle;
    let pid = p.pid();
    let until = std::time::Instant::now() + Duration::from_secs(150);
    loop {
        peak = peak.max(rss_kib(pid).unwrap_or(0));
        let waiting = get(addr, "/metrics").await.map_or(0.0, |(_, m)| {
            metric_sum(&m, "rebound_ordering_waiting_messages")
        });
        if waiting as usize >= HOT {
            break;
        }
        assert!(
            std::time::Instant::now() < until,
            "only {waiting} of {HOT} messages waiting after 150 s"
        );
        assert!(
            sink.records().iter().all(|r| r.id == "hot-00000:wait-120"),
            "a message of the hot key was handled while its first one was in retry"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let waiting_peak = peak;
    eprintln!(
        "FIGURES key-order-hot: waiting={HOT} rss_idle_kib={idle} rss_peak_kib={waiting_peak}"
    );
    // Then the first message's retry comes due and the 10 000 follow, in order.
    wait_until("the hot key drained", Duration::from_secs(300), || {
        sink.succeeded().len() == HOT + 1
    })
    .await;
    p.term(Duration::from_secs(30));
    let records = sink.records();
    let mut last = None;
    for r in records.iter().filter(|r| r.status == 200) {
        let seq: usize = r.id[4..9].parse().unwrap();
        assert!(
            last.is_none_or(|l| seq > l),
            "hot key: {seq} after {last:?}"
        );
        last = Some(seq);
    }
    assert!(
        waiting_peak <= idle + 32 * 1024,
        "RSS grew from {idle} KiB to {waiting_peak} KiB with {HOT} messages waiting"
    );
}

/// A `follow` record the waiting log refuses for good (here: larger than the waiting log's
/// `max.message.bytes`, which is smaller than the main topic's) is not written again behind the
/// key's later records, which may be written already: the message is dead-lettered with the
/// broker's error and where it came from, and its key's later messages go on, in order, after
/// the blocker. rebound lowers its `batch.size` under that limit, so only that record is refused,
/// not those batched with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_the_waiting_log_refuses_is_dead_lettered_and_its_key_goes_on() {
    let main = unique("korefuse");
    let mut topo = topology(&main, &TIERS_MS);
    topo.max_retries = 3;
    let waiting = Topology::waiting_topic(&main);
    topo.waiting = Some(waiting.clone());
    let others: Vec<&str> = topo
        .topics()
        .into_iter()
        .filter(|t| *t != waiting)
        .collect();
    create_topics(&others, 1).await;
    create_topics_with(
        &brokers(),
        &[waiting.as_str()],
        1,
        &[("max.message.bytes", "4096")],
    )
    .await;
    let recording = Recording::scripted();
    let running = start(
        config(topo.clone(), &unique("g")),
        Arc::new(recording.clone()),
    );
    wait_ready(&running).await;
    // hot-00 fails its first two tries (the blocker); hot-01 (8 KiB) waits behind it but the
    // waiting log refuses it; hot-02..05 wait behind it too.
    let big = format!("hot-01:ok-{}", "x".repeat(8192));
    let mut messages = vec![Out::new("hot", "hot-00:fail-2"), Out::new("hot", &big)];
    messages.extend((2..6).map(|s| Out::new("hot", &format!("hot-{s:02}:ok"))));
    produce(&main, &messages).await;
    let succeeded = |records: &[Handled]| -> Vec<usize> {
        records
            .iter()
            .filter(|r| r.status == 200)
            .filter_map(|r| key_seq(&r.id))
            .map(|(_, s)| s)
            .collect()
    };
    wait_until(
        "the blocker and the key's four later messages succeeded",
        Duration::from_secs(60),
        || succeeded(&recording.records()).len() >= 5,
    )
    .await;
    let dead = read_topic(&topo.dlq, 1, Duration::from_secs(30));
    running.stop().await;
    let records = recording.records();
    assert_eq!(
        succeeded(&records),
        vec![0, 2, 3, 4, 5],
        "in order, the refused one left out"
    );
    assert!(
        !records.iter().any(|r| r.id.starts_with("hot-01:")),
        "the refused follower was never handled"
    );
    assert_eq!(dead.len(), 1, "one dead letter: {dead:?}");
    let d = &dead[0];
    assert!(
        d.payload_str().starts_with("hot-01:"),
        "{}",
        d.payload_str()
    );
    assert_eq!(d.header("rebound-dlq-reason").as_deref(), Some("permanent"));
    assert_eq!(
        d.header("rebound-error-class").as_deref(),
        Some("produce_rejected")
    );
    assert_eq!(
        d.header("rebound-original-topic").as_deref(),
        Some(main.as_str())
    );
    assert_eq!(d.header("rebound-original-offset").as_deref(), Some("1"));
    assert!(
        d.header("rebound-error-message")
            .is_some_and(|m| m.contains("MessageSizeTooLarge")),
        "{:?}",
        d.header("rebound-error-message")
    );
    assert!(d.header("rebound-ordering").is_none());
}

/// The gauges say in which tier a blocked key's message is: first the tier it went to (its
/// `blocked` record), then the next one when it fails again there (a `moved` record written by
/// whoever handled its tier copy), and nothing once it succeeded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocked_keys_are_counted_in_the_tier_their_blocker_is_in() {
    let main = unique("kotier");
    // Each tier long enough for the gauges (updated every --commit-interval, 1 s) to show it.
    let mut topo = topology(&main, &[1900, 2000]);
    topo.max_retries = 3;
    topo.waiting = Some(Topology::waiting_topic(&main));
    create_topology(&topo, 1).await;
    let (first, second) = (topo.tiers[0].label.clone(), topo.tiers[1].label.clone());
    let recording = Recording::scripted();
    let running = start(
        config(topo.clone(), &unique("g")),
        Arc::new(recording.clone()),
    );
    wait_ready(&running).await;
    let messages: Vec<Out> = ["k-00:fail-2", "k-01:ok", "k-02:ok"]
        .iter()
        .map(|p| Out::new("k", p))
        .collect();
    produce(&main, &messages).await;
    let m = running.metrics.clone();
    let at = |tier: &str| {
        (
            gauge(&m.ordering_blocked_keys, Some(tier)),
            gauge(&m.ordering_waiting, Some(tier)),
        )
    };
    wait_until(
        "the key blocked in the first tier, two waiting",
        Duration::from_secs(30),
        || at(&first) == (1, 2) && at(&second) == (0, 0),
    )
    .await;
    wait_until(
        "the key blocked in the second tier, two waiting",
        Duration::from_secs(30),
        || at(&first) == (0, 0) && at(&second) == (1, 2),
    )
    .await;
    wait_until(
        "every message succeeded and nothing is blocked",
        Duration::from_secs(30),
        || {
            recording
                .records()
                .iter()
                .filter(|r| r.status == 200)
                .count()
                == 3
                && at(&first) == (0, 0)
                && at(&second) == (0, 0)
        },
    )
    .await;
    running.stop().await;
}

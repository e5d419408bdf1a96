//! `--exactly-once` (issue 18) on Apache Kafka: retry and DLQ copies commit with their source
//! offsets in one transaction, so a `read_committed` reader (the test's own consumer) finds each
//! copy once, even across `kill -9`. Tansu 0.6 has no transactions: skipped there.

use std::collections::HashMap;
use std::time::Duration;

use crate::common::*;
use crate::rel::*;
use rand::{Rng, SeedableRng};
use rebound::headers as h;

fn start(args: &[String], log: &std::path::Path) -> Proc {
    let port = free_port();
    let mut args = args.to_vec();
    let at = args.iter().position(|a| a == "--metrics-addr").unwrap() + 1;
    args[at] = format!("127.0.0.1:{port}");
    Proc::spawn(&args, port, log, &[])
}

fn skip_on_tansu() -> bool {
    if broker_kind() == "tansu" {
        eprintln!("skipped on Tansu: it has no Kafka transactions (no EndTxn)");
        return true;
    }
    false
}

/// Copies of the same message at the same attempt found more than once in `topic`, read with
/// `isolation.level=read_committed` (librdkafka's default, set here explicitly by `read_at`'s
/// caller contract: aborted records are skipped).
fn duplicate_copies(brokers: &str, topic: &str) -> (usize, usize) {
    let got = read_at(
        brokers,
        topic,
        0,
        Duration::from_secs(2),
        Duration::from_secs(30),
    );
    let mut seen: HashMap<(String, String), usize> = HashMap::new();
    for g in &got {
        let id = g.payload_str();
        let attempt = g.header(h::ATTEMPT).unwrap_or_default();
        *seen.entry((id, attempt)).or_default() += 1;
    }
    let dups = seen.values().map(|n| n - 1).sum();
    (got.len(), dups)
}

fn eos_args(
    brokers: &str,
    topo: &rebound::topology::Topology,
    group: &str,
    sink: &Sink,
    instance: &str,
) -> Vec<String> {
    let mut args = run_args(brokers, topo, group, sink, 0);
    args.extend(["--exactly-once", "--instance-id", instance].map(String::from));
    args.extend(
        [
            // A killed member stays in the group until its session times out; keep that short
            // so the restarted process gets the partitions back soon.
            "-X",
            "session.timeout.ms=6000",
            "-X",
            "heartbeat.interval.ms=500",
        ]
        .map(String::from),
    );
    args
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_kill_9_leaves_no_duplicate_copy_in_any_tier_or_the_dlq() {
    if skip_on_tansu() {
        return;
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed("eos-crash"));
    let brokers = brokers();
    let Scenario { main, mut topo } = Scenario::create("eos", &[200, 500], 3).await;
    topo.max_retries = 3;
    let mix = [
        ("ok", 50),
        ("fail-1", 20),
        ("fail-2", 8),
        ("fail-3", 4),
        ("always", 6),
        ("permanent", 12),
    ];
    let Traffic {
        messages,
        fates,
        dead_expected,
    } = traffic("e", 1500 * scale(), &mix, topo.max_retries, &mut rng);
    let sink = Sink::start().await;
    let dir = workdir("eos-crash");
    let log = dir.path().join("rebound.log");
    let args = eos_args(&brokers, &topo, &unique("g"), &sink, "eos-1");

    let feed = feed(&brokers, &main, &messages, 100, Duration::from_millis(250));
    let started = std::time::Instant::now();
    let mut kills = 0;
    for k in 0..3 * scale() {
        let mut p = start(&args, &log);
        wait_readyz(&p, Duration::from_secs(60)).await;
        let before = sink.count();
        wait_progress(
            "progress after restart",
            &sink,
            before,
            &fates,
            topo.max_retries,
        )
        .await;
        tokio::time::sleep(Duration::from_millis(rng.random_range(100..2000))).await;
        p.kill9();
        kills += 1;
        eprintln!("kill {} at {:?}", k + 1, started.elapsed());
    }
    let mut p = start(&args, &log);
    feed.await.unwrap();
    wait_finished(&sink, &fates, topo.max_retries, Duration::from_secs(120)).await;
    let dlq = read_dlq(&brokers, &topo, dead_expected, Duration::from_secs(60));
    assert!(p.running(), "rebound exited on its own:\n{}", p.log_text());
    let (status, took) = p.term(Duration::from_secs(30));
    assert!(
        status.is_some_and(|s| s.success()),
        "exit after SIGTERM: {status:?} after {took:?}\n{}",
        p.log_text()
    );
    let a = account(&fates, &sink.records(), &dlq, &topo);
    let mut tier_dups = Vec::new();
    for t in &topo.tiers {
        tier_dups.push((t.label.clone(), duplicate_copies(&brokers, &t.topic)));
    }
    eprintln!(
        "FIGURES crash-exactly-once: messages={} kills={kills} {} tier_copies_and_duplicates={tier_dups:?} took_s={}",
        fates.len(),
        a.summary(),
        started.elapsed().as_secs()
    );
    a.assert_exact();
    assert_eq!(a.dead.values().sum::<usize>(), dead_expected);
    assert_eq!(
        a.duplicate_dead,
        0,
        "duplicate DLQ records; {}",
        a.summary()
    );
    for (tier, (_, dups)) in &tier_dups {
        assert_eq!(*dups, 0, "duplicate copies in tier {tier}: {tier_dups:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_without_instance_id_exits_2_saying_what_to_fix() {
    let (code, _, err) = output(rebound().args([
        "run",
        "--brokers",
        "127.0.0.1:9",
        "--topic",
        "orders",
        "--group",
        "g",
        "--handler",
        "command",
        "--command",
        "true",
        "--exactly-once",
    ]));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--instance-id"), "{err}");
}

/// A zombie: instance A is paused (SIGSTOP) past its session while copies are being made,
/// instance B takes its partitions, then A resumes. A's late transaction carries offsets of a
/// group generation that is gone (KIP-447), so it is fenced or aborted; the test's own
/// `read_committed` reader finds no duplicate copy in the tiers or the DLQ, and every message
/// ends where its behaviour says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_zombie_that_resumes_after_a_takeover_commits_no_duplicate_copy() {
    if skip_on_tansu() {
        return;
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed("eos-zombie"));
    let brokers = brokers();
    let Scenario { main, mut topo } = Scenario::create("eosz", &[200, 500], 3).await;
    topo.max_retries = 2;
    let mix = [
        ("ok", 30),
        ("fail-1", 40),
        ("fail-2", 10),
        ("always", 10),
        ("permanent", 10),
    ];
    let Traffic {
        messages,
        fates,
        dead_expected,
    } = traffic("z", 1200 * scale(), &mix, topo.max_retries, &mut rng);
    let sink = Sink::start().await;
    let dir = workdir("eos-zombie");
    let group = unique("g");
    let feed = feed(&brokers, &main, &messages, 50, Duration::from_millis(200));
    let mut a = start(
        &eos_args(&brokers, &topo, &group, &sink, "eos-a"),
        &dir.path().join("a.log"),
    );
    wait_readyz(&a, Duration::from_secs(60)).await;
    let before = sink.count();
    wait_progress("A handles", &sink, before + 50, &fates, topo.max_retries).await;
    signal(a.pid(), "STOP");
    let paused_at = std::time::Instant::now();
    let mut b = start(
        &eos_args(&brokers, &topo, &group, &sink, "eos-b"),
        &dir.path().join("b.log"),
    );
    wait_readyz(&b, Duration::from_secs(60)).await;
    // B handles messages once A's session (6 s) has expired, B owns the partitions, and A's
    // open transaction has been aborted by the coordinator (transaction.timeout.ms, 10 s): till
    // then B cannot read the committed offsets it holds (KIP-447). 16 s of timeouts plus the
    // rebalance: 30 s ran out once in a full suite run (the test alone took 20–50 s). Plus one
    // pause of B's breaker, which this mix can open (`breaker_pause`).
    let at_b = sink.count();
    wait_progress_for(
        "B takes over",
        &sink,
        at_b + 50,
        &fates,
        topo.max_retries,
        Duration::from_secs(60) + breaker_pause(),
    )
    .await;
    eprintln!("A paused for {:?}; resuming it", paused_at.elapsed());
    signal(a.pid(), "CONT");
    feed.await.unwrap();
    wait_finished(&sink, &fates, topo.max_retries, Duration::from_secs(120)).await;
    let dlq = read_dlq(&brokers, &topo, dead_expected, Duration::from_secs(60));
    let (status_b, _) = b.term(Duration::from_secs(30));
    let (status_a, _) = a.term(Duration::from_secs(30));
    eprintln!("exit: A {status_a:?} B {status_b:?}");
    assert!(
        status_b.is_some_and(|s| s.success()),
        "B: {status_b:?}\n{}",
        b.log_text()
    );
    let a_log = a.log_text();
    let a_eos: Vec<&str> = a_log
        .lines()
        .filter(|l| l.contains("exactly-once") || l.contains("lost"))
        .collect();
    eprintln!("A after the pause: {a_eos:#?}");
    let a_fenced = a_eos.len();
    let acc = account(&fates, &sink.records(), &dlq, &topo);
    let mut tier_dups = Vec::new();
    for t in &topo.tiers {
        tier_dups.push((t.label.clone(), duplicate_copies(&brokers, &t.topic)));
    }
    eprintln!(
        "FIGURES zombie-exactly-once: messages={} {} tier_copies_and_duplicates={tier_dups:?} a_exactly_once_log_lines={a_fenced}",
        fates.len(),
        acc.summary()
    );
    acc.assert_exact();
    assert_eq!(
        acc.duplicate_dead,
        0,
        "duplicate DLQ records; {}",
        acc.summary()
    );
    for (tier, (_, dups)) in &tier_dups {
        assert_eq!(*dups, 0, "duplicate copies in tier {tier}: {tier_dups:?}");
    }
}

/// On a broker without transactions (Tansu 0.6) `--exactly-once` exits 2 and says what to do;
/// on Apache Kafka there is nothing to refuse.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_on_a_broker_without_transactions_exits_2() {
    if broker_kind() != "tansu" {
        eprintln!("skipped on Apache Kafka: it has transactions (the refusal is Tansu's case)");
        return;
    }
    let topo = topology(&unique("eos-tansu"), &[200]);
    create_topology(&topo, 1).await;
    let (code, _, err) = output(rebound().args([
        "run",
        "--brokers",
        &brokers(),
        "--topic",
        &topo.main,
        "--tiers",
        "200ms",
        "--group",
        &unique("g"),
        "--handler",
        "command",
        "--command",
        "true",
        "--metrics-addr",
        "off",
        "--exactly-once",
        "--instance-id",
        "i1",
    ]));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("--exactly-once needs a broker with Kafka transactions"),
        "{err}"
    );
}

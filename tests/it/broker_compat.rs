//! One minimal reproduction per finding of `docs/broker-compat.md`, run on whichever broker
//! `scripts/test` started (`crate::common::broker_kind()`).
//!
//! - On Apache Kafka each test asserts the correct behaviour.
//! - On Tansu a test asserts that a deterministic bug still reproduces, so that a Tansu upgrade
//!   that fixes it fails the test and the doc gets updated; a finding that is a timing (or that
//!   never reproduced) is measured and printed as a `COMPAT <finding> [broker]: ...` line.
//!
//! Run with `--nocapture` to see the `COMPAT` lines:
//! `scripts/test --test broker_compat -- --nocapture` (Apache Kafka) and
//! `REBOUND_BROKER=tansu scripts/test --test broker_compat -- --nocapture`.
//! The slow measurements (`probe_*`, minutes each) are ignored by default:
//! `scripts/test --test broker_compat -- --ignored --nocapture probe_`.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::{brokers, unique};
use futures::executor::block_on;
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::message::Message as _;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::statistics::Statistics;
use rdkafka::{Offset, TopicPartitionList};

fn on_kafka() -> bool {
    crate::common::broker_kind() == "kafka"
}

/// Prints one measurement line; `--nocapture` shows it.
fn compat(finding: &str, what: impl std::fmt::Display) {
    println!(
        "COMPAT {finding} [{}]: {what}",
        crate::common::broker_kind()
    );
}

fn create(topic: &str, partitions: i32) {
    block_on(crate::common::create_topics(&[topic], partitions));
}

/// A producer that batches on purpose (`linger.ms=100`), whatever the broker.
fn batching_producer() -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("linger.ms", "100")
        .create()
        .expect("producer")
}

/// A producer that sends one record per batch (the Tansu workaround), whatever the broker.
fn single_record_producer() -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("linger.ms", "0")
        .set("batch.num.messages", "1")
        .create()
        .expect("producer")
}

/// Enqueues records `first..first + n` (key = payload = the number) to `partition` before
/// awaiting any, flushes, and returns the offsets the acknowledgements gave. With
/// `batching_producer` they form one batch.
fn produce_range(
    p: &FutureProducer,
    topic: &str,
    partition: i32,
    first: usize,
    n: usize,
) -> Vec<i64> {
    let mut futures = Vec::with_capacity(n);
    for i in first..first + n {
        let k = i.to_string();
        loop {
            match p.send_result(
                FutureRecord::to(topic)
                    .partition(partition)
                    .key(&k)
                    .payload(&k),
            ) {
                Ok(f) => {
                    futures.push(f);
                    break;
                }
                // The local queue is full (large probes): let it drain.
                Err((e, _)) => {
                    assert!(
                        matches!(
                            e,
                            rdkafka::error::KafkaError::MessageProduction(
                                rdkafka::types::RDKafkaErrorCode::QueueFull
                            )
                        ),
                        "enqueue: {e}"
                    );
                    p.poll(Duration::from_millis(100));
                }
            }
        }
    }
    p.flush(Duration::from_secs(60)).expect("flush");
    futures
        .into_iter()
        .map(|f| {
            block_on(f)
                .expect("delivery future")
                .map_err(|(e, _)| e)
                .expect("delivered")
                .offset
        })
        .collect()
}

/// A consumer as the probes in docs/broker-compat.md use it.
fn consumer(extra: &[(&str, &str)]) -> BaseConsumer {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers())
        .set("group.id", unique("compat"))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", "20");
    for (k, v) in extra {
        c.set(*k, *v);
    }
    c.create().expect("consumer")
}

fn one_partition(topic: &str, offset: Offset) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, offset).expect("tpl");
    tpl
}

/// Polls until a record at offset `last` or beyond arrived, or `deadline` passed; returns the
/// offsets received, in order.
fn offsets_until(c: &BaseConsumer, last: i64, deadline: Duration) -> Vec<i64> {
    let until = Instant::now() + deadline;
    let mut got = Vec::new();
    while Instant::now() < until && got.last().is_none_or(|o| *o < last) {
        match c.poll(Duration::from_millis(50)) {
            Some(Ok(m)) => got.push(m.offset()),
            Some(Err(e)) => println!("consumer error (kept polling): {e}"),
            None => {}
        }
    }
    got
}

fn range(from: i64, to_inclusive: i64) -> Vec<i64> {
    (from..=to_inclusive).collect()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

/// Tansu 0.6 (memory/S3 engines) returns nothing for the batch that contains the fetch offset,
/// so the rest of that batch is skipped once a later batch arrives. Kafka returns the batch and
/// librdkafka drops the records below the fetch offset. Both ways into the middle of a batch are
/// checked: a fetch from an offset (a restart or takeover from a committed offset, a seek) and
/// rebound's own case, a partition paused at its held head and resumed at head + 1.
#[test]
fn mid_batch_fetch_delivers_the_rest_of_the_batch() {
    let p = batching_producer();

    // A fetch that starts at offset 5 of a 10-record batch.
    let topic = unique("compat-midbatch");
    create(&topic, 1);
    assert_eq!(produce_range(&p, &topic, 0, 0, 10), range(0, 9));
    let c = consumer(&[]);
    c.assign(&one_partition(&topic, Offset::Offset(5)))
        .expect("assign");
    assert_eq!(produce_range(&p, &topic, 0, 10, 10), range(10, 19));
    let from_offset = offsets_until(&c, 19, Duration::from_secs(15));

    // Rebound's case: read 0, 1, 2 of a batch, pause (the head is held), resume at 3.
    let topic = unique("compat-midbatch-resume");
    create(&topic, 1);
    assert_eq!(produce_range(&p, &topic, 0, 0, 10), range(0, 9));
    let c = consumer(&[]);
    let tpl = one_partition(&topic, Offset::Beginning);
    c.assign(&tpl).expect("assign");
    let head = offsets_until(&c, 2, Duration::from_secs(15));
    assert_eq!(head, range(0, 2), "the first three records of the batch");
    c.pause(&tpl).expect("pause");
    // While paused nothing is delivered (what was prefetched is dropped); 300 ms is the spacing
    // of the original probe, not a synchronisation.
    let paused = offsets_until(&c, 0, Duration::from_millis(300));
    assert!(paused.is_empty(), "records while paused: {paused:?}");
    c.resume(&tpl).expect("resume");
    assert_eq!(produce_range(&p, &topic, 0, 10, 10), range(10, 19));
    let after_resume = offsets_until(&c, 19, Duration::from_secs(15));

    compat(
        "mid-batch-fetch",
        format!("from offset 5 got {from_offset:?}; resumed at 3 got {after_resume:?}"),
    );
    if on_kafka() {
        assert_eq!(from_offset, range(5, 19), "a fetch from offset 5");
        assert_eq!(after_resume, range(3, 19), "a resume at offset 3");
    } else {
        let fixed = "if Tansu now delivers the rest of the batch, the mid-batch bug is fixed: \
                     update docs/broker-compat.md and crate::common::one_record_per_batch";
        assert_eq!(from_offset, range(10, 19), "{fixed}");
        assert_eq!(after_resume, range(10, 19), "{fixed}");
    }
}

/// ListOffsets (`fetch_watermarks`) after one batch of 10 and after a second one: Kafka answers
/// the log end (10, 20); Tansu 0.6's memory engine answers the base offset of the newest batch
/// plus one (1, 11).
#[test]
fn high_watermark_is_the_log_end_after_batches() {
    let topic = unique("compat-watermark");
    create(&topic, 1);
    let p = batching_producer();
    let c = consumer(&[]);
    let high = || {
        c.fetch_watermarks(&topic, 0, Duration::from_secs(10))
            .expect("watermarks")
            .1
    };
    assert_eq!(produce_range(&p, &topic, 0, 0, 10), range(0, 9));
    let first = high();
    assert_eq!(produce_range(&p, &topic, 0, 10, 10), range(10, 19));
    let second = high();
    compat(
        "high-watermark",
        format!("after 0..9 in one batch: {first}; after 10..19: {second}"),
    );
    if on_kafka() {
        assert_eq!((first, second), (10, 20));
    } else {
        assert_eq!(
            (first, second),
            (1, 11),
            "if Tansu now answers the log end, its watermark bug is fixed: update \
             docs/broker-compat.md and the DLQ commands' read-past-the-watermark rule"
        );
    }
}

/// A transactional producer: an aborted and a committed transaction, read back with
/// `isolation.level=read_committed` (rebound's consumers read that way). Kafka commits and
/// aborts, and the reader sees only the committed record; Tansu 0.6 does not serve `EndTxn`.
#[test]
fn transactions_commit_and_abort() {
    let features =
        rebound::probe::api_versions(&brokers(), Duration::from_secs(10)).expect("probe");
    let topic = unique("compat-txn");
    create(&topic, 1);
    let p: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("transactional.id", unique("compat-txn"))
        .create()
        .expect("transactional producer");
    let limit = Duration::from_secs(10);
    let send = |payload: &str| {
        block_on(
            p.send(
                FutureRecord::<str, str>::to(&topic)
                    .partition(0)
                    .payload(payload),
                limit,
            ),
        )
        .map(|_| ())
        .map_err(|(e, _)| e)
    };
    let init = p.init_transactions(limit);
    let mut steps = vec![format!("init {init:?}")];
    let mut aborted = Err(rdkafka::error::KafkaError::Canceled);
    let mut committed = Err(rdkafka::error::KafkaError::Canceled);
    if init.is_ok() {
        p.begin_transaction().expect("begin");
        let sent = send("aborted");
        aborted = p.abort_transaction(limit);
        steps.push(format!("send {sent:?}, abort {aborted:?}"));
        if aborted.is_ok() {
            p.begin_transaction().expect("begin");
            let sent = send("committed");
            committed = p.commit_transaction(limit);
            steps.push(format!("send {sent:?}, commit {committed:?}"));
        }
    }
    compat(
        "transactions",
        format!(
            "EndTxn in ApiVersions: {}; {}",
            features.supports(rebound::probe::END_TXN),
            steps.join("; ")
        ),
    );
    if on_kafka() {
        assert!(features.supports(rebound::probe::END_TXN));
        init.expect("init_transactions");
        aborted.expect("abort_transaction");
        committed.expect("commit_transaction");
        let read = crate::common::read_at(&brokers(), &topic, 1, Duration::ZERO, limit);
        // read_at reads with librdkafka's default isolation level, read_committed.
        let payloads: Vec<String> = read.iter().map(|g| g.payload_str()).collect();
        assert_eq!(
            payloads,
            ["committed"],
            "read_committed sees only the committed record"
        );
    } else {
        assert!(
            aborted.is_err() || committed.is_err(),
            "if Tansu now commits and aborts transactions, update docs/broker-compat.md"
        );
    }
}

/// What a fetch costs at the tail of a partition, the way rebound waits: read one record,
/// pause, resume, time until the next arrives. `records` are produced one per batch (Tansu's
/// workaround, the worst case for it). Returns the median over `samples` resumes.
///
/// `fetch.wait.max.ms=1`: librdkafka sends a resumed partition's fetch only when the fetch in
/// flight (a long poll at the tail) is back, so with rebound's 20 ms the figure would be that
/// wait, in or out of phase, rather than the broker's cost.
fn resume_fetch_cost(records: usize, samples: usize) -> Duration {
    let topic = unique("compat-fetchcost");
    create(&topic, 1);
    let p = single_record_producer();
    let offsets = produce_range(&p, &topic, 0, 0, records);
    assert_eq!(offsets.len(), records);
    let start = (records - samples - 1) as i64;
    let c = consumer(&[("fetch.wait.max.ms", "1")]);
    let tpl = one_partition(&topic, Offset::Offset(start));
    c.assign(&tpl).expect("assign");
    assert_eq!(offsets_until(&c, start, Duration::from_secs(30)), [start]);
    let mut took = Vec::with_capacity(samples);
    for next in start + 1..=start + samples as i64 {
        c.pause(&tpl).expect("pause");
        c.resume(&tpl).expect("resume");
        let t = Instant::now();
        let got = offsets_until(&c, next, Duration::from_secs(30));
        took.push(t.elapsed());
        assert_eq!(got, [next], "one record per resume");
    }
    median(took)
}

/// Tansu 0.6 lists every object of a partition on each fetch, so a resume at the tail of a
/// large partition costs more than one of a small partition; Kafka finds the offset through its
/// index. Small here (2 000 records) to stay fast: `probe_fetch_cost_at_scale` measures 100 000.
#[test]
fn fetch_cost_does_not_grow_with_the_partition() {
    let small = resume_fetch_cost(50, 30);
    let large = resume_fetch_cost(2_000, 30);
    compat(
        "fetch-cost",
        format!(
            "median resume-to-record at the tail: 50 records {small:?}, 2000 records {large:?}"
        ),
    );
    if on_kafka() {
        // Generous for a loaded 2-core machine; growth with the partition would be far more.
        assert!(
            large <= small * 3 + Duration::from_millis(20),
            "a fetch at the tail of 2000 records ({large:?}) vs 50 records ({small:?})"
        );
    }
}

/// The slow version of the fetch-cost measurement, by hand:
/// `scripts/test --test broker_compat -- --ignored --nocapture probe_fetch_cost_at_scale`.
#[test]
#[ignore = "minutes: a measurement for docs/broker-compat.md"]
fn probe_fetch_cost_at_scale() {
    for records in [1_000, 10_000, 100_000] {
        let t = Instant::now();
        let cost = resume_fetch_cost(records, 50);
        compat(
            "fetch-cost-at-scale",
            format!(
                "{records} records one per batch: median resume-to-record {cost:?} \
                 (produce + measure {:?})",
                t.elapsed()
            ),
        );
    }
}

/// A member with `group.protocol=consumer` (KIP-848). Kafka 4 finalizes `group.version` and
/// assigns the partitions; Tansu 0.6 finalizes no features, so librdkafka's new protocol gets
/// no assignment there. rebound itself uses the classic protocol on both.
#[test]
fn kip848_consumer_group_protocol() {
    let features =
        rebound::probe::api_versions(&brokers(), Duration::from_secs(10)).expect("probe");
    let topic = unique("compat-kip848");
    create(&topic, 2);
    block_on(crate::common::produce(
        &topic,
        &[
            crate::common::Out::new("a", "a").partition(0),
            crate::common::Out::new("b", "b").partition(1),
        ],
    ));
    let c = consumer(&[("group.protocol", "consumer")]);
    c.subscribe(&[&topic]).expect("subscribe");
    let deadline = if on_kafka() { 20 } else { 5 };
    let until = Instant::now() + Duration::from_secs(deadline);
    let mut got = 0;
    let mut errors = BTreeSet::new();
    while Instant::now() < until && got < 2 {
        match c.poll(Duration::from_millis(100)) {
            Some(Ok(_)) => got += 1,
            Some(Err(e)) => {
                errors.insert(e.to_string());
            }
            None => {}
        }
    }
    let assigned = c.assignment().map(|a| a.count()).unwrap_or(0);
    compat(
        "kip848",
        format!(
            "ConsumerGroupHeartbeat in ApiVersions: {}, group.version: {:?}; a \
             group.protocol=consumer member got {got} of 2 records, {assigned} partitions; \
             errors {errors:?}",
            features.supports(rebound::probe::CONSUMER_GROUP_HEARTBEAT),
            features.finalized.get("group.version"),
        ),
    );
    if on_kafka() {
        assert!(features.consumer_group_protocol(), "{features:?}");
        assert_eq!((got, assigned), (2, 2));
    } else {
        assert!(!features.consumer_group_protocol(), "{features:?}");
        assert_eq!(
            got, 0,
            "if a KIP-848 member now consumes on Tansu, update docs/broker-compat.md"
        );
    }
}

/// The close-hang report: a subscribed `StreamConsumer` fed by only some of its partitions
/// (3 partitions, records in partition 0 only), receives them, commits synchronously and is
/// dropped, as rebound closes (`unsubscribe`, then drop) on a thread. Kafka closes in well
/// under a second; on Tansu the hang was never reproduced, and the time is printed. Both group
/// protocols where the broker serves them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_close_after_a_partial_feed_is_bounded() {
    let protocols: &[&str] = if on_kafka() {
        &["classic", "consumer"]
    } else {
        &["classic"]
    };
    for protocol in protocols {
        let topic = unique("compat-close");
        crate::common::create_topics(&[&topic], 3).await;
        let records: Vec<crate::common::Out> = (0..5)
            .map(|i| crate::common::Out::new(&i.to_string(), "x").partition(0))
            .collect();
        crate::common::produce(&topic, &records).await;
        let mut cfg = ClientConfig::new();
        cfg.set("bootstrap.servers", brokers())
            .set("group.id", unique("compat-close"))
            .set("group.protocol", *protocol)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("fetch.wait.max.ms", "20");
        let c: StreamConsumer = cfg.create().expect("consumer");
        c.subscribe(&[&topic]).expect("subscribe");
        for _ in 0..5 {
            crate::common::within("a record", Duration::from_secs(30), c.recv())
                .await
                .expect("record");
        }
        c.commit_consumer_state(CommitMode::Sync).expect("commit");
        let (tx, rx) = std::sync::mpsc::channel();
        let t = Instant::now();
        std::thread::spawn(move || {
            c.unsubscribe();
            drop(c);
            let _ = tx.send(());
        });
        let closed =
            tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(30)).is_ok())
                .await
                .expect("join");
        let took = t.elapsed();
        compat(
            "consumer-close",
            if closed {
                format!("group.protocol={protocol}: unsubscribe + drop took {took:?}")
            } else {
                format!("group.protocol={protocol}: HUNG (> 30 s)")
            },
        );
        if on_kafka() {
            assert!(
                closed && took < Duration::from_secs(5),
                "close took {took:?}"
            );
        }
    }
}

/// A group member as the ghost-member tests run it: classic or KIP-848 protocol, and the
/// classic protocol's `session.timeout.ms` when given (KIP-848 takes it from the broker).
fn member(group: &str, protocol: &str, session_ms: Option<u64>) -> BaseConsumer {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", brokers())
        .set("group.id", group)
        .set("group.protocol", protocol)
        .set("enable.auto.commit", "false");
    if let Some(s) = session_ms {
        // A third of the session, as Kafka recommends: librdkafka's default heartbeat (3 s)
        // would expel a live member of a 3 s session at the first late heartbeat.
        cfg.set("session.timeout.ms", s.to_string())
            .set("heartbeat.interval.ms", (s / 3).to_string());
    }
    cfg.create().expect("member")
}

/// A member process for the ghost-member tests: joins `REBOUND_COMPAT_GROUP` on
/// `REBOUND_COMPAT_TOPIC` (`REBOUND_COMPAT_PROTOCOL`, `REBOUND_COMPAT_SESSION_MS`), prints
/// `ASSIGNED <n>` at each assignment change and polls until it is killed (300 s at most).
/// Without the variables (a plain `--ignored` run) it does nothing.
#[test]
#[ignore = "a child process of the ghost-member tests"]
fn compat_child_member() {
    let (Ok(topic), Ok(group), Ok(protocol)) = (
        std::env::var("REBOUND_COMPAT_TOPIC"),
        std::env::var("REBOUND_COMPAT_GROUP"),
        std::env::var("REBOUND_COMPAT_PROTOCOL"),
    ) else {
        return;
    };
    let session = std::env::var("REBOUND_COMPAT_SESSION_MS")
        .ok()
        .and_then(|s| s.parse().ok());
    let c = member(&group, &protocol, session);
    c.subscribe(&[&topic]).expect("subscribe");
    let until = Instant::now() + Duration::from_secs(300);
    let mut last = usize::MAX;
    while Instant::now() < until {
        let _ = c.poll(Duration::from_millis(50));
        let n = c.assignment().map(|a| a.count()).unwrap_or(0);
        if n != last {
            println!("ASSIGNED {n}");
            last = n;
        }
    }
}

/// Starts `members` processes of `compat_child_member` in one group, waits until together they
/// hold every partition of `topic`, each at least one, then kills them all with SIGKILL;
/// returns the moment of the last kill.
fn kill_9_members(
    topic: &str,
    group: &str,
    partitions: usize,
    members: usize,
    protocol: &str,
    session_ms: Option<u64>,
) -> Instant {
    let (tx, rx) = std::sync::mpsc::channel();
    let mut children = Vec::new();
    for i in 0..members {
        let mut child = Command::new(std::env::current_exe().expect("test binary"))
            .args([
                "broker_compat::compat_child_member",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("REBOUND_COMPAT_TOPIC", topic)
            .env("REBOUND_COMPAT_GROUP", group)
            .env("REBOUND_COMPAT_PROTOCOL", protocol)
            .env(
                "REBOUND_COMPAT_SESSION_MS",
                session_ms.map(|s| s.to_string()).unwrap_or_default(),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn a member process");
        let stdout = child.stdout.take().expect("stdout");
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(n) = line.strip_prefix("ASSIGNED ") {
                    let _ = tx.send((i, n.trim().parse::<usize>().unwrap_or(0)));
                }
            }
        });
        children.push(child);
    }
    let mut held = vec![0; members];
    let until = Instant::now() + Duration::from_secs(60);
    while held.iter().sum::<usize>() != partitions || held.contains(&0) {
        match rx.recv_timeout(until.saturating_duration_since(Instant::now())) {
            Ok((i, n)) => held[i] = n,
            Err(_) => {
                for c in &mut children {
                    let _ = c.kill();
                }
                panic!(
                    "the {members} member processes did not share the {partitions} partitions \
                     within 60 s: {held:?}"
                );
            }
        }
    }
    for c in &mut children {
        c.kill().expect("SIGKILL");
    }
    let killed = Instant::now();
    for c in &mut children {
        let _ = c.wait();
    }
    killed
}

/// A new member of the group after `members` members were killed with SIGKILL: how long after
/// the kill until it holds every partition (`None`: not within `deadline`), and the assignment
/// sizes it saw on the way.
fn takeover_after_kill_9(
    partitions: usize,
    members: usize,
    protocol: &str,
    session_ms: Option<u64>,
    deadline: Duration,
) -> (Option<Duration>, Vec<usize>) {
    let topic = unique("compat-ghost");
    create(&topic, partitions as i32);
    let group = unique("compat-ghost");
    let killed = kill_9_members(&topic, &group, partitions, members, protocol, session_ms);
    let c = member(&group, protocol, session_ms);
    c.subscribe(&[&topic]).expect("subscribe");
    let until = killed + deadline;
    let mut seen = Vec::new();
    let mut last = usize::MAX;
    while Instant::now() < until {
        let _ = c.poll(Duration::from_millis(50));
        let n = c.assignment().map(|a| a.count()).unwrap_or(0);
        if n != last {
            seen.push(n);
            last = n;
        }
        if n == partitions {
            return (Some(killed.elapsed()), seen);
        }
    }
    (None, seen)
}

/// Ghost members: members killed with SIGKILL must be expelled after their session timeout,
/// so that a new member gets every partition then. Two members, classic protocol (rebound's),
/// with `session.timeout.ms=3000` (the test is about the expulsion, not the default's 45 s
/// wait); `probe_ghost_members_default_session` measures the default by hand.
#[test]
fn killed_members_are_expelled_after_their_session_timeout() {
    let session = 3_000;
    let (took, seen) =
        takeover_after_kill_9(4, 2, "classic", Some(session), Duration::from_secs(40));
    compat(
        "ghost-member",
        format!(
            "2 members killed, session.timeout.ms={session}: the new member held all 4 \
             partitions {took:?} after the kill; assignment sizes seen {seen:?}"
        ),
    );
    if on_kafka() {
        let took = took.expect("the new member got every partition within 40 s");
        assert!(
            took < Duration::from_millis(session) + Duration::from_secs(10),
            "takeover {took:?} after the kill with a {session} ms session"
        );
    }
}

/// By hand, the acceptance-run case: four members of a 12-partition group killed with SIGKILL,
/// then a fifth, with librdkafka's default session timeout (45 s), waiting up to 5 minutes; on
/// Kafka also with the KIP-848 protocol (its session timeout is the broker's,
/// `group.consumer.session.timeout.ms`: 6 s on the test broker, 45 s by default).
#[test]
#[ignore = "minutes: a measurement for docs/broker-compat.md"]
fn probe_ghost_members_default_session() {
    let protocols: &[&str] = if on_kafka() {
        &["classic", "consumer"]
    } else {
        &["classic"]
    };
    for protocol in protocols {
        let (took, seen) = takeover_after_kill_9(12, 4, protocol, None, Duration::from_secs(300));
        compat(
            "ghost-members-default-session",
            format!(
                "group.protocol={protocol}, 4 members killed: the fifth held all 12 partitions \
                 {took:?} after the kill; sizes seen {seen:?}"
            ),
        );
    }
}

/// Client statistics, kept for the test to read.
#[derive(Clone, Default)]
struct StatsContext {
    seen: Arc<Mutex<Vec<Statistics>>>,
}

impl ClientContext for StatsContext {
    fn stats(&self, statistics: Statistics) {
        self.seen.lock().expect("stats lock").push(statistics);
    }
}

impl ConsumerContext for StatsContext {}

/// The round trip of a fetch for an empty partition with `fetch.wait.max.ms=200`: Kafka holds
/// the fetch for the full wait; Tansu 0.6 was reported to answer after about half of it (not
/// reproduced on 2026-11-30; the time is printed there). Measured from librdkafka's per-broker
/// `rtt` statistics (microseconds) of a consumer that only fetches.
#[test]
fn an_empty_fetch_waits_fetch_wait_max_ms() {
    let wait_ms = 200;
    let topic = unique("compat-emptyfetch");
    create(&topic, 1);
    let ctx = StatsContext::default();
    let c: BaseConsumer<StatsContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", unique("compat"))
        .set("fetch.wait.max.ms", wait_ms.to_string())
        .set("statistics.interval.ms", "1000")
        .create_with_context(ctx.clone())
        .expect("consumer");
    c.assign(&one_partition(&topic, Offset::End))
        .expect("assign");
    // The third statistics window: the first ones include connecting and the first ListOffsets.
    let until = Instant::now() + Duration::from_secs(20);
    while ctx.seen.lock().expect("stats").len() < 3 {
        assert!(Instant::now() < until, "no statistics within 20 s");
        let _ = c.poll(Duration::from_millis(100));
    }
    let stats = ctx.seen.lock().expect("stats")[2].clone();
    let rtt = stats
        .brokers
        .values()
        .filter(|b| b.nodeid >= 0)
        .filter_map(|b| b.rtt.clone())
        .find(|w| w.cnt > 0)
        .expect("a broker with round trips");
    let p50_ms = rtt.p50 as f64 / 1000.0;
    compat(
        "empty-fetch-wait",
        format!(
            "fetch.wait.max.ms={wait_ms}: empty fetch round trip p50 {p50_ms:.0} ms, min {:.0}, \
             max {:.0} over {} requests",
            rtt.min as f64 / 1000.0,
            rtt.max as f64 / 1000.0,
            rtt.cnt
        ),
    );
    if on_kafka() {
        assert!(
            p50_ms >= wait_ms as f64 * 0.75,
            "Kafka holds an empty fetch for fetch.wait.max.ms: p50 {p50_ms} ms"
        );
    }
}

/// A record produced to a topic that was deleted, by a producer that had been writing to it
/// (as rebound's long-lived producer would) and by a new one: Kafka (auto-creation off) refuses
/// both, so the producer reports a delivery error; Tansu 0.6 was seen acknowledging the record
/// of a producer that knew the topic. rebound commits a record once its copy is acknowledged,
/// so an acknowledgement must mean the record is stored.
#[test]
fn produce_to_a_deleted_topic_is_not_acknowledged() {
    let topic = unique("compat-deleted");
    create(&topic, 1);
    let producer = || -> FutureProducer {
        ClientConfig::new()
            .set("bootstrap.servers", brokers())
            .set("message.timeout.ms", "5000")
            .create()
            .expect("producer")
    };
    let send = |p: &FutureProducer, payload: &str| {
        block_on(
            p.send(
                FutureRecord::<str, str>::to(&topic)
                    .partition(0)
                    .payload(payload),
                Duration::from_secs(10),
            ),
        )
        .map(|_| ())
        .map_err(|(e, _)| e)
    };
    let known = producer();
    send(&known, "before").expect("a record before the deletion");
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .expect("admin");
    for r in block_on(admin.delete_topics(&[&topic], &AdminOptions::new())).expect("delete topics")
    {
        r.expect("topic deleted");
    }
    let by_known = send(&known, "after");
    let by_new = send(&producer(), "after");
    compat(
        "deleted-topic-produce",
        format!(
            "delivery report after DeleteTopics: producer that knew the topic {by_known:?}, \
             new producer {by_new:?}"
        ),
    );
    if on_kafka() {
        assert!(
            by_known.is_err() && by_new.is_err(),
            "Kafka refuses a record for a deleted topic"
        );
    } else {
        assert!(
            by_known.is_ok(),
            "if Tansu now refuses a record for a deleted topic, update docs/broker-compat.md"
        );
    }
}

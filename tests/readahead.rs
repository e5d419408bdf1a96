//! The tier partitions' read-ahead buffer against the real broker (ARCHITECTURE.md invariants 2
//! and 3): retries written straight into a tier are each handled once, never before their
//! `process_after`, in partition order, whatever the buffer's bounds; and a message not kept
//! (beyond the horizon, or no room) is read again later, none lost.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use common::*;
use rebound::delay::BufferBounds;
use rebound::headers;

/// A retry in tier partition `partition`, id `p<partition>-<seq>`, due at `due`. All of a
/// partition's retries have one key, so that rebound handles them one after another (the key
/// gate) and the order of handler calls is the order of release.
fn retry(partition: i32, seq: usize, due: DateTime<Utc>) -> Out {
    Out::new(
        &format!("p{partition}"),
        &format!("p{partition}-{seq:05}:ok"),
    )
    .partition(partition)
    .header(headers::PROCESS_AFTER, &headers::format_time(due))
    .header(headers::ATTEMPT, "1")
}

/// Samples the largest value the tier's buffered-messages gauge shows, until stopped.
fn sample_max(running: &Running, tier: &str) -> (Arc<AtomicI64>, tokio::task::JoinHandle<()>) {
    let max = Arc::new(AtomicI64::new(0));
    let gauge = running.metrics.tier_buffer_series(tier).0;
    let seen = max.clone();
    let task = tokio::spawn(async move {
        loop {
            seen.fetch_max(gauge.get(), Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    (max, task)
}

/// Checks what the recorder saw against what was written: each id once, never early, and in
/// the order written within its partition.
fn check_handled(recorder: &Recorder, written: &[(String, DateTime<Utc>)]) {
    let calls = recorder.calls();
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for c in &calls {
        *seen.entry(c.id.as_str()).or_default() += 1;
        let due = c.process_after.expect("process_after");
        assert!(
            c.at >= due,
            "{} handled {} ms before process_after",
            c.id,
            (due - c.at).num_milliseconds()
        );
    }
    let missing: Vec<&str> = written
        .iter()
        .map(|(id, _)| id.as_str())
        .filter(|id| !seen.contains_key(id))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} retries never handled, e.g. {:?}",
        missing.len(),
        written.len(),
        &missing[..missing.len().min(5)]
    );
    for (id, _) in written {
        assert_eq!(
            seen.get(id.as_str()),
            Some(&1),
            "{id} handled {:?} times",
            seen.get(id.as_str())
        );
    }
    assert_eq!(calls.len(), written.len(), "handled something not written");
    let mut last: HashMap<i32, &str> = HashMap::new();
    for c in &calls {
        if let Some(prev) = last.insert(c.partition, c.id.as_str()) {
            assert!(
                prev < c.id.as_str(),
                "{} handled after {prev} in partition {}",
                c.id,
                c.partition
            );
        }
    }
}

/// Runs rebound with `bounds`, writes `per_partition` retries into each of 2 tier partitions,
/// due `due_of(seq)` after a start 1.5 s ahead, waits until all are handled, and checks the
/// outcome. Returns the
/// largest number of messages the tier buffer held at once.
async fn run_with(
    name: &str,
    bounds: impl FnOnce(BufferBounds) -> BufferBounds,
    per_partition: usize,
    due_of: impl Fn(usize) -> Duration,
) -> i64 {
    let main = unique(name);
    let topo = topology(&main, &[2_000]);
    create_topology(&topo, 2).await;
    wait_topics(&topo.topics()).await;
    let tier = topo.tiers[0].clone();
    let recorder = Recorder::default();
    let mut config = config(topo.clone(), &unique("g"));
    config.tier_buffer = bounds(config.tier_buffer);
    let running = start_service(config, recorder.clone());
    let until = std::time::Instant::now() + Duration::from_secs(60);
    while !running.metrics.health.assigned.load(Ordering::Relaxed) {
        if running.task.is_finished() {
            panic!(
                "rebound stopped before it was assigned partitions: {:?}",
                running.task.await
            );
        }
        assert!(
            std::time::Instant::now() < until,
            "no partition assignment within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (max, sampler) = sample_max(&running, &tier.label);
    // Written before the first is due, so that rebound reads them ahead.
    let start = Utc::now() + chrono::Duration::milliseconds(1500);
    let mut records = Vec::new();
    let mut written = Vec::new();
    for seq in 0..per_partition {
        for partition in 0..2 {
            let due = start + chrono::Duration::from_std(due_of(seq)).unwrap();
            let r = retry(partition, seq, due);
            written.push((
                r.payload
                    .as_ref()
                    .map(|p| String::from_utf8_lossy(p).into_owned())
                    .unwrap_or_default(),
                due,
            ));
            records.push(r);
        }
    }
    produce_all(&tier.topic, &records).await;
    let want = written.len();
    let last_due = written.iter().map(|(_, d)| *d).max().unwrap();
    let wait = (last_due - Utc::now()).to_std().unwrap_or_default() + Duration::from_secs(20);
    // Not `wait_until`: on a timeout the service is still stopped, and the check below says
    // which retries are missing.
    let until = std::time::Instant::now() + wait;
    while recorder.count() < want && std::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Nothing more comes (a duplicate would show up here).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let gauge = running.metrics.tier_buffer_series(&tier.label);
    sampler.abort();
    running.stop().await;
    check_handled(&recorder, &written);
    assert_eq!(gauge.0.get(), 0, "buffered messages after all were handled");
    assert_eq!(gauge.1.get(), 0, "buffered bytes after all were handled");
    max.load(Ordering::Relaxed)
}

/// Waits until the broker's metadata shows every topic (a topic just created may not show yet,
/// and rebound refuses to start on a missing topic).
async fn wait_topics(topics: &[&str]) {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let client: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .expect("metadata client");
    let until = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let md = client
            .fetch_metadata(None, Duration::from_secs(10))
            .expect("metadata");
        let shown = |t: &&str| {
            md.topics()
                .iter()
                .any(|m| m.name() == *t && m.error().is_none() && !m.partitions().is_empty())
        };
        if topics.iter().all(shown) {
            return;
        }
        assert!(
            std::time::Instant::now() < until,
            "topics not in the metadata after 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Produces every record at once (not one acknowledgement after another) and waits for all.
async fn produce_all(topic: &str, records: &[Out]) {
    // Idempotent: retried sends cannot reorder a partition.
    let p: rdkafka::producer::FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("enable.idempotence", "true")
        .create()
        .expect("producer");
    let sends = records
        .iter()
        .map(|r| p.send(r.record(topic), Duration::from_secs(10)));
    for result in futures::future::join_all(sends).await {
        result.map_err(|(e, _)| e).expect("produce");
    }
}

fn start_service(config: rebound::Config, recorder: Recorder) -> Running {
    start(config, Arc::new(recorder))
}

/// Due times over 3 s, later offsets due later but with some out of order.
fn spread(seq: usize) -> Duration {
    let jitter = if seq % 7 == 3 { 0 } else { 40 };
    Duration::from_millis(10 * seq as u64 + jitter)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_ahead_handles_every_retry_once_never_early_in_order() {
    let max = run_with("ra-default", |b| b, 300, spread).await;
    // More than one message per partition (2 partitions) at some moment: read ahead.
    assert!(
        max > 2,
        "the buffer held at most {max} messages in 2 partitions: read-ahead did not happen"
    );
    assert!(max <= 1000 * 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hold_the_head_handles_every_retry_once_never_early_in_order() {
    // A buffer of one message per partition: the hold-the-head mode.
    let max = run_with(
        "ra-head",
        |b| BufferBounds {
            partition_messages: 1,
            ..b
        },
        150,
        spread,
    )
    .await;
    assert!(
        max <= 2,
        "held {max} messages with a buffer of one per partition"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tight_bounds_drop_and_reread_without_loss() {
    // Bounds far below the defaults, so that partitions fill, pause, drop what does not fit and
    // seek back to it (the defaults would keep all of these messages).
    let max = run_with(
        "ra-tight",
        |b| BufferBounds {
            partition_messages: 8,
            partition_bytes: 4 * 1024,
            total_bytes: 3 * 1024,
            ..b
        },
        300,
        spread,
    )
    .await;
    assert!(max <= 16, "held {max} messages with 8 per partition");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_beyond_the_horizon_are_read_again_later_none_lost() {
    // A horizon of 300 ms (the default is the shortest tier delay, 2 s here, which would keep
    // them all): every 10th message is due 3 s after its neighbours, so it is beyond the
    // horizon when read, is not kept, and must be read again when it comes closer; the messages
    // behind it wait for it (partition order).
    let due_of = |seq: usize| {
        let base = Duration::from_millis(20 * seq as u64);
        if seq % 10 == 5 {
            base + Duration::from_secs(3)
        } else {
            base
        }
    };
    let max = run_with(
        "ra-horizon",
        |b| BufferBounds {
            horizon: Duration::from_millis(300),
            ..b
        },
        60,
        due_of,
    )
    .await;
    assert!(max >= 1);
}

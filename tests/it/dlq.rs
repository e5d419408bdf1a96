//! `rebound dlq stats|list|show` and `rebound replay-dlq` against the real broker. Each test
//! writes crafted DLQ records (the contract's headers, as rebound would write them) into its own
//! topology and checks what the commands report, send and commit.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use chrono::Utc;
use rebound::config::{ClusterConfig, DlqReadConfig, DlqShowConfig, ReplayConfig};
use rebound::dlq::{self, Filter, ReplaySummary};
use rebound::headers as h;
use rebound::Topology;
use tokio_util::sync::CancellationToken;

const T: Duration = Duration::from_secs(30);

/// `(partition, offset)` of a DLQ message.
type Position = (i64, i64);

/// A DLQ record as rebound writes it, plus the user's own `trace` header.
/// The first-failure time most DLQ fixtures share.
const T10: &str = "2026-11-24T10:00:00.000Z";

/// A first-failure time on the fixtures' day.
fn at(hour: u32, minute: u32) -> String {
    format!("2026-11-24T{hour:02}:{minute:02}:00.000Z")
}

fn dead(
    id: &str,
    partition: i32,
    reason: &str,
    class: &str,
    first_failed: &str,
    original: &str,
) -> Out {
    Out::new(&format!("key-{id}"), &format!("{id}:ok"))
        .partition(partition)
        .header("trace", &format!("trace-{id}"))
        .header(h::ORIGINAL_TOPIC, original)
        .header(h::ORIGINAL_PARTITION, "0")
        .header(h::ORIGINAL_OFFSET, "17")
        .header(h::ORIGINAL_TIMESTAMP, "1764000000000")
        .header(h::FIRST_FAILED_AT, first_failed)
        .header(h::ATTEMPT, "4")
        .header(h::PROCESS_AFTER, "2026-11-24T10:05:00.000Z")
        .header(
            h::ERROR_KIND,
            if reason == "permanent" {
                "permanent"
            } else {
                "transient"
            },
        )
        .header(h::ERROR_CLASS, class)
        .header(h::ERROR_MESSAGE, &format!("{class}: it broke"))
        .header(h::DLQ_REASON, reason)
}

fn cluster(topo: &Topology, group: &str) -> ClusterConfig {
    config(topo.clone(), group).cluster
}

fn read_cfg(topo: &Topology, filter: Filter) -> DlqReadConfig {
    DlqReadConfig {
        cluster: cluster(topo, "unused"),
        filter,
        limit: None,
        json: true,
    }
}

fn replay_cfg(topo: &Topology, group: &str) -> ReplayConfig {
    let mut c = ReplayConfig::new(cluster(topo, group));
    c.progress_every = 1;
    c
}

async fn replay(cfg: &ReplayConfig) -> (ReplaySummary, String) {
    let mut out = Vec::new();
    let summary = within(
        "replay",
        Duration::from_secs(60),
        dlq::replay(cfg, &CancellationToken::new(), &mut out),
    )
    .await
    .expect("replay runs");
    (summary, String::from_utf8(out).unwrap())
}

/// `(partition, offset)` of every message `list` prints with `filter`.
async fn listed(topo: &Topology, filter: Filter) -> BTreeSet<Position> {
    let mut out = Vec::new();
    within("list", T, dlq::list(&read_cfg(topo, filter), &mut out))
        .await
        .expect("list runs");
    String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("one JSON object per line");
            (
                v["partition"].as_i64().unwrap(),
                v["offset"].as_i64().unwrap(),
            )
        })
        .collect()
}

async fn new_topology(prefix: &str, partitions: i32) -> Topology {
    let topo = topology(&unique(prefix), &[300, 600]);
    create_topology(&topo, partitions).await;
    topo
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_count_what_was_put_in() {
    let topo = new_topology("dlq-stats", 2).await;
    let main = topo.main.as_str();
    produce(
        &topo.dlq,
        &[
            dead("a", 0, "exhausted", "http_503", T10, main),
            dead("b", 1, "exhausted", "http_503", &at(9, 0), main),
            dead("c", 0, "exhausted", "timeout", &at(11, 0), main),
            dead("d", 1, "permanent", "http_400", &at(12, 30), "other"),
            dead("e", 0, "expired", "http_503", &at(8, 15), main),
            Out::new("bare", "no headers at all").partition(1),
        ],
    )
    .await;

    let cfg = read_cfg(&topo, Filter::default());
    let stats = within("stats", T, dlq::stats(&cfg)).await.expect("stats");
    assert_eq!(stats.total, 6);
    assert!(!stats.incomplete);
    let counts = |pairs: &[(&str, u64)]| -> BTreeMap<String, u64> {
        pairs.iter().map(|(k, n)| (k.to_string(), *n)).collect()
    };
    assert_eq!(
        stats.by_reason,
        counts(&[
            ("exhausted", 3),
            ("permanent", 1),
            ("expired", 1),
            (dlq::NONE, 1)
        ])
    );
    assert_eq!(
        stats.by_error_class,
        counts(&[
            ("http_503", 3),
            ("timeout", 1),
            ("http_400", 1),
            (dlq::NONE, 1)
        ])
    );
    assert_eq!(
        stats.by_original_topic,
        counts(&[(main, 4), ("other", 1), (dlq::NONE, 1)])
    );
    let oldest = stats.oldest.as_ref().expect("oldest");
    assert_eq!(
        (oldest.failed_at.as_str(), oldest.partition, oldest.offset),
        ("2026-11-24T08:15:00.000Z", 0, 2)
    );
    // The header-less record counts by its record timestamp, which is now: the newest.
    let newest = stats.newest.as_ref().expect("newest");
    assert_eq!((newest.partition, newest.offset), (1, 2));
    assert_eq!(stats.top_errors[0].message, "http_503: it broke");
    assert_eq!(stats.top_errors[0].count, 3);
    assert_eq!(stats.top_errors.len(), 4);

    // Reading commits nothing: a second look sees the same.
    let again = within("stats again", T, dlq::stats(&cfg))
        .await
        .expect("stats");
    assert_eq!(again, stats);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_filter_selects_exactly_the_right_messages() {
    let topo = new_topology("dlq-filter", 2).await;
    let main = topo.main.as_str();
    // partition 0: offsets 0..3, partition 1: offsets 0..2
    produce(
        &topo.dlq,
        &[
            dead("p0o0", 0, "exhausted", "http_503", T10, main),
            dead("p0o1", 0, "permanent", "http_400", &at(11, 0), main),
            dead("p0o2", 0, "expired", "timeout", &at(12, 0), main),
            dead("p0o3", 0, "exhausted", "timeout", &at(13, 0), main),
            dead("p1o0", 1, "invalid", "invalid_header", &at(10, 30), main),
            dead("p1o1", 1, "exhausted", "http_503", &at(11, 30), main),
            dead("p1o2", 1, "permanent", "http_400", &at(12, 30), main),
        ],
    )
    .await;
    let t = |s: &str| {
        Some(
            chrono::DateTime::parse_from_rfc3339(s)
                .unwrap()
                .with_timezone(&Utc),
        )
    };
    let f = |edit: &dyn Fn(&mut Filter)| {
        let mut f = Filter::default();
        edit(&mut f);
        f
    };
    let cases: Vec<(&str, Filter, Vec<Position>)> = vec![
        (
            "everything",
            Filter::default(),
            vec![(0, 0), (0, 1), (0, 2), (0, 3), (1, 0), (1, 1), (1, 2)],
        ),
        (
            "reason",
            f(&|f| f.reasons = vec!["exhausted".into()]),
            vec![(0, 0), (0, 3), (1, 1)],
        ),
        (
            "two reasons",
            f(&|f| f.reasons = vec!["invalid".into(), "expired".into()]),
            vec![(0, 2), (1, 0)],
        ),
        (
            "error class",
            f(&|f| f.error_classes = vec!["http_400".into()]),
            vec![(0, 1), (1, 2)],
        ),
        (
            "key",
            f(&|f| f.key = Some(b"key-p1o1".to_vec())),
            vec![(1, 1)],
        ),
        (
            "since",
            f(&|f| f.since = t("2026-11-24T12:00:00Z")),
            vec![(0, 2), (0, 3), (1, 2)],
        ),
        (
            "until",
            f(&|f| f.until = t("2026-11-24T11:00:00Z")),
            vec![(0, 0), (1, 0)],
        ),
        (
            "since and until",
            f(&|f| {
                f.since = t("2026-11-24T11:00:00Z");
                f.until = t("2026-11-24T12:30:00Z");
            }),
            vec![(0, 1), (0, 2), (1, 1)],
        ),
        (
            "partition",
            f(&|f| f.partition = Some(1)),
            vec![(1, 0), (1, 1), (1, 2)],
        ),
        (
            "from offset",
            f(&|f| f.from_offset = Some(2)),
            vec![(0, 2), (0, 3), (1, 2)],
        ),
        (
            "to offset",
            f(&|f| f.to_offset = Some(0)),
            vec![(0, 0), (1, 0)],
        ),
        (
            "partition and offsets",
            f(&|f| {
                f.partition = Some(0);
                f.from_offset = Some(1);
                f.to_offset = Some(2);
            }),
            vec![(0, 1), (0, 2)],
        ),
        (
            "reason and class",
            f(&|f| {
                f.reasons = vec!["exhausted".into()];
                f.error_classes = vec!["timeout".into()];
            }),
            vec![(0, 3)],
        ),
    ];
    let runs = cases
        .iter()
        .map(|(_, filter, _)| listed(&topo, filter.clone()));
    let results = futures::future::join_all(runs).await;
    for ((name, _, want), got) in cases.iter().zip(results) {
        let want: BTreeSet<Position> = want.iter().copied().collect();
        assert_eq!(got, want, "filter {name}");
    }

    // replay applies the same filters: only the selected messages reach the main topic.
    let mut cfg = replay_cfg(&topo, &unique("g"));
    cfg.filter = f(&|f| {
        f.reasons = vec!["exhausted".into()];
        f.since = t("2026-11-24T11:00:00Z");
    });
    let (summary, _) = replay(&cfg).await;
    assert_eq!(
        (summary.replayed, summary.skipped_by_filter, summary.failed),
        (2, 5, 0),
        "{summary}"
    );
    assert_eq!(
        ids_in(main, 3, Duration::from_secs(5)),
        vec!["p0o3", "p1o1"]
    );

    // The same selection again sends nothing twice (the replay ledger).
    let (summary, _) = replay(&cfg).await;
    assert_eq!(
        (summary.replayed, summary.skipped_already_replayed),
        (0, 2),
        "{summary}"
    );

    // Messages not chosen stay available: the same group without filters sends exactly them.
    cfg.filter = Filter::default();
    let (summary, _) = replay(&cfg).await;
    assert_eq!(
        (summary.replayed, summary.skipped_already_replayed),
        (5, 2),
        "{summary}"
    );
    assert_eq!(
        ids_in(main, 8, Duration::from_secs(5)),
        vec!["p0o0", "p0o1", "p0o2", "p0o3", "p1o0", "p1o1", "p1o2"],
        "each message once"
    );
    // Everything is dealt with now: the group's committed offsets reach the end.
    let (summary, _) = replay(&cfg).await;
    assert_eq!((summary.read, summary.replayed), (0, 0), "{summary}");

    // One by one: a fresh group sends exactly the chosen positions, then the rest.
    let mut cfg = replay_cfg(&topo, &unique("g"));
    let to = unique("dlq-filter-to");
    create_topics(&[&to], 1).await;
    cfg.to = Some(to.clone());
    cfg.filter.positions = [(0, 2), (1, 0)].into();
    let (summary, _) = replay(&cfg).await;
    assert_eq!(summary.replayed, 2, "{summary}");
    assert_eq!(ids_in(&to, 3, Duration::from_secs(5)), vec!["p0o2", "p1o0"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_prints_but_sends_and_commits_nothing() {
    let topo = new_topology("dlq-dry", 1).await;
    let main = topo.main.as_str();
    produce(
        &topo.dlq,
        &[
            dead("a", 0, "exhausted", "http_503", T10, main),
            dead("b", 0, "permanent", "http_400", T10, main),
            dead("c", 0, "exhausted", "timeout", T10, main),
        ],
    )
    .await;
    let group = unique("g");
    let mut cfg = replay_cfg(&topo, &group);
    cfg.dry_run = true;
    cfg.filter.reasons = vec!["exhausted".into()];
    let (summary, out) = replay(&cfg).await;
    assert!(summary.dry_run && summary.ok(), "{summary}");
    assert_eq!((summary.replayed, summary.skipped_by_filter), (2, 1));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(
        lines[0].starts_with(&format!("would replay 0/0 -> {main} key=\"key-a\"")),
        "{out}"
    );
    assert!(
        lines[1].contains("0/2") && lines[1].contains("replay-count=1"),
        "{out}"
    );
    assert!(
        read_topic(main, 1, Duration::from_secs(2)).is_empty(),
        "dry run sent something"
    );

    // Nothing was committed: the real run with the same group sends both.
    cfg.dry_run = false;
    let (summary, out) = replay(&cfg).await;
    assert!(out.is_empty());
    assert_eq!(summary.replayed, 2, "{summary}");
    assert_eq!(ids_in(main, 3, Duration::from_secs(5)), vec!["a", "c"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_reaches_the_main_topic_clean_is_processed_and_is_not_repeated() {
    let topo = new_topology("dlq-replay", 2).await;
    let main = topo.main.clone();
    let records: Vec<Out> = (0..6)
        .map(|i| dead(&format!("m{i}"), i % 2, "exhausted", "http_503", T10, &main))
        .collect();
    produce(&topo.dlq, &records).await;

    let rec = Recording::scripted();
    let svc = start(config(topo.clone(), &unique("svc")), Arc::new(rec.clone()));
    wait_ready(&svc).await;

    let cfg = replay_cfg(&topo, &unique("g"));
    let before = Utc::now() - chrono::Duration::seconds(1);
    let (summary, _) = replay(&cfg).await;
    assert!(summary.ok(), "{summary}");
    assert_eq!((summary.read, summary.replayed), (6, 6), "{summary}");

    let r = rec.clone();
    wait_until("6 replayed messages handled", T, move || r.count() >= 6).await;

    let copies = read_topic(&main, 6, T);
    assert_eq!(copies.len(), 6);
    for c in &copies {
        let id = c.payload_str().split(':').next().unwrap().to_string();
        assert_eq!(
            c.key.as_deref(),
            Some(format!("key-{id}").as_bytes()),
            "key unchanged"
        );
        assert_eq!(
            c.header("trace"),
            Some(format!("trace-{id}")),
            "user header kept"
        );
        for owned in h::OWNED {
            assert!(
                c.header(owned).is_none(),
                "{owned} should be gone from {id}"
            );
        }
        assert_eq!(c.header(h::REPLAY_COUNT).as_deref(), Some("1"));
        let at = h::parse_time(
            h::REPLAYED_AT,
            c.header(h::REPLAYED_AT).as_deref().map(str::as_bytes),
        )
        .expect("replayed-at is a time");
        assert!(at >= before && at <= Utc::now(), "replayed-at {at}");
        assert!(
            c.header(h::REPLAYED_AT).unwrap().ends_with('Z')
                && c.header(h::REPLAYED_AT).unwrap().len() == 24,
            "RFC 3339 with milliseconds"
        );
    }

    // The same replay again sends nothing: it starts at what the first one committed.
    let (again, _) = replay(&cfg).await;
    assert_eq!((again.read, again.replayed), (0, 0), "{again}");
    svc.stop().await;

    let calls = rec.records();
    assert_eq!(
        calls.len(),
        6,
        "each replayed message handled once: {calls:?}"
    );
    assert!(
        calls.iter().all(|c| c.topic == main && c.attempt == 0),
        "{calls:?}"
    );
    assert_eq!(
        read_topic(&main, 7, Duration::from_secs(2)).len(),
        6,
        "nothing sent twice"
    );
    assert!(
        read_topic(&topo.dlq, 7, Duration::from_secs(2)).len() == 6,
        "the DLQ is unchanged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_that_fail_again_are_not_replayed_again_by_the_same_run() {
    let topo = new_topology("dlq-again", 1).await;
    let main = topo.main.clone();
    let records: Vec<Out> = (0..3)
        .map(|i| {
            let mut o = dead(
                &format!("m{i}"),
                0,
                "permanent",
                "c",
                "2026-11-24T10:00:00.000Z",
                &main,
            );
            o.payload = Some(format!("m{i}:permanent").into_bytes());
            o
        })
        .collect();
    produce(&topo.dlq, &records).await;
    let rec = Recording::scripted();
    let svc = start(config(topo.clone(), &unique("svc")), Arc::new(rec.clone()));
    wait_ready(&svc).await;

    let (summary, _) = replay(&replay_cfg(&topo, &unique("g"))).await;
    let back = read_topic(&topo.dlq, 6, T);
    svc.stop().await;
    assert!(summary.ok(), "{summary}");
    assert_eq!(
        summary.replayed, 3,
        "each sent once, not again after it came back: {summary}"
    );
    assert_eq!(rec.count(), 3, "handled once each");
    assert_eq!(
        back.len(),
        6,
        "the three failed again and are back in the DLQ"
    );
    for c in &back[3..] {
        assert_eq!(
            c.header(h::REPLAY_COUNT).as_deref(),
            Some("1"),
            "the count travels with it"
        );
        assert_eq!(c.header(h::DLQ_REASON).as_deref(), Some("permanent"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limit_stops_and_the_next_run_resumes_where_it_stopped() {
    let topo = new_topology("dlq-limit", 2).await;
    let main = topo.main.as_str();
    let records: Vec<Out> = (0..7)
        .map(|i| dead(&format!("m{i}"), i % 2, "exhausted", "c", T10, main))
        .collect();
    produce(&topo.dlq, &records).await;

    let mut cfg = replay_cfg(&topo, &unique("g"));
    cfg.limit = Some(3);
    let (first, _) = replay(&cfg).await;
    assert_eq!(first.replayed, 3, "{first}");
    assert!(first.limit_reached && first.ok(), "{first}");

    cfg.limit = None;
    let (second, _) = replay(&cfg).await;
    assert_eq!(second.replayed, 4, "{second}");
    assert!(!second.limit_reached && second.ok(), "{second}");

    let ids = ids_in(main, 8, Duration::from_secs(5));
    assert_eq!(
        ids,
        (0..7).map(|i| format!("m{i}")).collect::<Vec<_>>(),
        "each exactly once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_at_the_replay_limit_are_skipped_unless_forced() {
    let topo = new_topology("dlq-loops", 1).await;
    let main = topo.main.as_str();
    produce(
        &topo.dlq,
        &[
            dead("fresh", 0, "exhausted", "c", T10, main),
            dead("twice", 0, "exhausted", "c", T10, main).header(h::REPLAY_COUNT, "2"),
            dead("looping", 0, "exhausted", "c", T10, main).header(h::REPLAY_COUNT, "3"),
        ],
    )
    .await;
    let (summary, _) = replay(&replay_cfg(&topo, &unique("g"))).await;
    assert_eq!(
        (summary.replayed, summary.skipped_at_replay_limit),
        (2, 1),
        "{summary}"
    );
    assert!(summary.ok());
    let copies = read_topic(main, 2, T);
    let count_of = |id: &str| {
        copies
            .iter()
            .find(|c| c.payload_str().starts_with(id))
            .and_then(|c| c.header(h::REPLAY_COUNT))
    };
    assert_eq!(count_of("fresh:").as_deref(), Some("1"));
    assert_eq!(count_of("twice:").as_deref(), Some("3"));

    let mut forced = replay_cfg(&topo, &unique("g"));
    forced.force = true;
    forced.filter.key = Some(b"key-looping".to_vec());
    let (summary, _) = replay(&forced).await;
    assert_eq!(
        (summary.replayed, summary.skipped_at_replay_limit),
        (1, 0),
        "{summary}"
    );
    let copies = read_topic(main, 3, T);
    let looping = copies
        .iter()
        .find(|c| c.payload_str().starts_with("looping:"))
        .expect("forced copy");
    assert_eq!(looping.header(h::REPLAY_COUNT).as_deref(), Some("4"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_message_stops_its_partition_and_the_next_run_resumes_there() {
    let topo = new_topology("dlq-fail", 1).await;
    let main = topo.main.as_str();
    let gone = unique("not-yet");
    produce(
        &topo.dlq,
        &[
            dead("a", 0, "exhausted", "c", "2026-11-24T10:00:00.000Z", main),
            dead("b", 0, "exhausted", "c", "2026-11-24T10:00:00.000Z", &gone),
            dead("c", 0, "exhausted", "c", "2026-11-24T10:00:00.000Z", main),
        ],
    )
    .await;
    let cfg = replay_cfg(&topo, &unique("g"));
    let (first, _) = replay(&cfg).await;
    assert_eq!((first.replayed, first.failed), (1, 1), "{first}");
    assert!(!first.ok());
    assert!(
        first.failures[0].starts_with("0/1:") && first.failures[0].contains(&gone),
        "{first}"
    );
    assert_eq!(
        ids_in(main, 2, Duration::from_secs(3)),
        vec!["a"],
        "c waits behind b"
    );

    create_topics(&[&gone], 1).await;
    let (second, _) = replay(&cfg).await;
    assert!(second.ok(), "{second}");
    assert_eq!(second.replayed, 2, "{second}");
    assert_eq!(ids_in(&gone, 1, T), vec!["b"]);
    assert_eq!(ids_in(main, 3, Duration::from_secs(5)), vec!["a", "c"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_replay_resumes_without_loss_or_more_than_one_repeat() {
    let topo = new_topology("dlq-stop", 1).await;
    let main = topo.main.clone();
    let records: Vec<Out> = (0..8)
        .map(|i| dead(&format!("m{i}"), 0, "exhausted", "c", T10, &main))
        .collect();
    produce(&topo.dlq, &records).await;

    let mut cfg = replay_cfg(&topo, &unique("g"));
    cfg.rate = Some(5.0);
    let stop = CancellationToken::new();
    let task = {
        let (cfg, stop) = (cfg.clone(), stop.clone());
        tokio::spawn(async move { dlq::replay(&cfg, &stop, &mut std::io::sink()).await })
    };
    let m = main.clone();
    wait_until("3 messages replayed", T, move || {
        read_topic(&m, 3, Duration::from_millis(300)).len() >= 3
    })
    .await;
    stop.cancel();
    let first = within("interrupted replay returns", T, task)
        .await
        .unwrap()
        .expect("replay");
    assert!(first.interrupted && !first.ok(), "{first}");
    assert!(first.replayed < 8, "{first}");

    cfg.rate = None;
    let (second, _) = replay(&cfg).await;
    assert!(second.ok(), "{second}");
    let ids = ids_in(&main, 10, Duration::from_secs(5));
    let distinct: BTreeSet<&String> = ids.iter().collect();
    assert_eq!(distinct.len(), 8, "nothing lost: {ids:?}");
    assert!(
        ids.len() <= 9,
        "at most the one in flight is repeated: {ids:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_finds_one_message_by_partition_and_offset() {
    let topo = new_topology("dlq-show", 2).await;
    produce(
        &topo.dlq,
        &[
            dead("x", 1, "permanent", "http_400", T10, &topo.main),
            dead("y", 1, "permanent", "http_400", T10, &topo.main),
        ],
    )
    .await;
    let show = |partition: Option<i32>, offset: i64| DlqShowConfig {
        cluster: cluster(&topo, "unused"),
        partition,
        offset,
    };
    let e = within("show", T, dlq::show(&show(Some(1), 1)))
        .await
        .expect("found");
    assert_eq!((e.partition, e.offset), (1, 1));
    assert_eq!(e.key.as_deref(), Some(&b"key-y"[..]));
    let err = within("show", T, dlq::show(&show(None, 1)))
        .await
        .unwrap_err();
    assert!(
        err.is_usage() && err.to_string().contains("--partition"),
        "{err}"
    );
    let err = within("show", T, dlq::show(&show(Some(1), 5)))
        .await
        .unwrap_err();
    assert!(
        !err.is_usage() && err.to_string().contains("no message"),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------------------
// Through the binary: exit codes and output
// ---------------------------------------------------------------------------------------------

/// The binary with logs kept to warnings, so stderr holds only what the command says.
fn rebound_quiet() -> Command {
    let mut c = rebound();
    c.env("RUST_LOG", "warn");
    c
}

#[test]
fn the_binary_refuses_a_missing_dlq_and_replaying_into_the_dlq_with_exit_2() {
    let main = unique("dlq-none");
    let brokers = brokers();
    let (code, out, err) =
        output(rebound_quiet().args(["dlq", "stats", "--brokers", &brokers, "--topic", &main]));
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        err.contains(&format!("no DLQ topic {main}.dlq; is --topic right?")),
        "{err}"
    );

    let (code, _, err) =
        output(rebound_quiet().args(["replay-dlq", "--brokers", &brokers, "--topic", &main]));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("no DLQ topic"), "{err}");

    let dlq = format!("{main}.dlq");
    let (code, _, err) = output(rebound_quiet().args([
        "replay-dlq",
        "--brokers",
        &brokers,
        "--topic",
        &main,
        "--to",
        &dlq,
    ]));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--to") && err.contains("DLQ itself"), "{err}");

    let (code, _, err) =
        output(rebound_quiet().args(["dlq", "list", "--topic", &main, "--reason", "bored"]));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--reason"), "{err}");
    let (code, _, err) = output(rebound_quiet().args(["dlq", "show", "--topic", &main]));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--offset"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_prints_stats_list_show_and_a_replay_summary() {
    let topo = new_topology("dlq-cli", 1).await;
    let main = topo.main.clone();
    let mut binary = dead(
        "bin",
        0,
        "permanent",
        "http_400",
        "2026-11-24T10:00:00.000Z",
        &main,
    );
    binary.payload = Some(vec![0x00, 0xff, b'h', b'i']);
    produce(
        &topo.dlq,
        &[
            dead("a", 0, "exhausted", "http_503", &at(9, 0), &main),
            binary,
            dead("c", 0, "exhausted", "http_503", &at(11, 0), &main).header(h::REPLAY_COUNT, "3"),
        ],
    )
    .await;
    let brokers = brokers();
    let base = ["--brokers", brokers.as_str(), "--topic", main.as_str()];

    let (code, out, err) = output(rebound_quiet().args(["dlq", "stats", "--json"]).args(base));
    assert_eq!(code, 0, "{err}");
    let stats: serde_json::Value = serde_json::from_str(&out).expect("stats --json is JSON");
    assert_eq!(stats["total"], 3);
    assert_eq!(stats["by_reason"]["exhausted"], 2);
    assert_eq!(stats["oldest"]["failed_at"], "2026-11-24T09:00:00.000Z");
    assert_eq!(stats["top_errors"][0]["message"], "http_503: it broke");

    let (code, out, err) = output(rebound_quiet().args(["dlq", "stats"]).args(base));
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("3 messages") && out.contains("http_503"),
        "{out}"
    );

    let (code, out, err) = output(
        rebound_quiet()
            .args(["dlq", "list", "--error-class", "http_503"])
            .args(base),
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 2, "{out}");
    assert!(
        out.starts_with("0/0 key=\"key-a\" reason=exhausted class=http_503 attempts=4 first_failed=2026-11-24T09:00:00.000Z"),
        "{out}"
    );

    let (code, out, err) = output(
        rebound_quiet()
            .args(["dlq", "show", "--offset", "1"])
            .args(base),
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("trace: \"trace-bin\""), "{out}");
    assert!(
        out.contains("payload    4 bytes, binary:\n00000000  00 ff 68 69"),
        "{out}"
    );

    let group = unique("g");
    let replay = |expected: &str| {
        let (code, out, err) = output(
            rebound_quiet()
                .args(["replay-dlq", "--group", &group])
                .args(base)
                .args(["--tiers", "300ms,600ms"]),
        );
        assert_eq!(code, 0, "{err}");
        assert!(out.contains(expected), "{out}");
        err
    };
    let err =
        replay("replayed 2, skipped by filter 0, skipped at replay limit 1, failed 0 (3 read)");
    assert!(
        err.contains("replayed too often"),
        "the skip is warned about: {err}"
    );
    // The same group again: everything was decided, nothing is read twice.
    replay("replayed 0, skipped by filter 0, skipped at replay limit 0, failed 0 (0 read)");
}

/// Writes `records` to `topic` in one transaction of `producer`, then commits or aborts it.
async fn in_transaction(
    producer: &rdkafka::producer::FutureProducer,
    topic: &str,
    records: &[Out],
    commit: bool,
) {
    use rdkafka::producer::{FutureRecord, Producer};
    producer.begin_transaction().expect("begin");
    for r in records {
        let mut fr = FutureRecord::<[u8], [u8]>::to(topic)
            .headers(rebound::kafka::to_owned_headers(&r.headers));
        if let Some(k) = &r.key {
            fr = fr.key(k.as_slice());
        }
        if let Some(p) = &r.payload {
            fr = fr.payload(p.as_slice());
        }
        if let Some(p) = r.partition {
            fr = fr.partition(p);
        }
        producer
            .send(fr, Duration::from_secs(10))
            .await
            .expect("sent");
    }
    if commit {
        producer.commit_transaction(T).expect("commit");
    } else {
        producer.abort_transaction(T).expect("abort");
    }
}

/// A DLQ written by transactions (as `--exactly-once` writes it) holds an aborted batch and
/// ends in a commit marker, so its last offset is no record: stats, list and replay end at
/// once (not after the 15 s stall of a partition that never reaches its watermark), call the
/// read complete, and never show or replay an aborted record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transactional_dlq_with_an_aborted_batch_and_a_final_marker_reads_to_its_end() {
    if broker_kind() == "tansu" {
        eprintln!("skipped on Tansu: it has no Kafka transactions (no EndTxn)");
        return;
    }
    use rdkafka::producer::Producer;
    let topo = new_topology("dlq-txn", 1).await;
    let main = topo.main.as_str();
    let producer: rdkafka::producer::FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("transactional.id", unique("txn"))
        .create()
        .expect("transactional producer");
    producer.init_transactions(T).expect("init");
    let d = |id: &str| dead(id, 0, "exhausted", "http_503", T10, main);
    in_transaction(&producer, &topo.dlq, &[d("a"), d("b")], true).await;
    in_transaction(&producer, &topo.dlq, &[d("x1"), d("x2")], false).await;
    in_transaction(&producer, &topo.dlq, &[d("c")], true).await;

    let started = std::time::Instant::now();
    let stats = within("stats", T, dlq::stats(&read_cfg(&topo, Filter::default())))
        .await
        .expect("stats");
    let took = started.elapsed();
    assert_eq!(stats.total, 3, "aborted records are not counted");
    assert!(!stats.incomplete, "the read reached the end");
    assert!(
        took < Duration::from_secs(10),
        "stats waited {took:?}: the commit marker at the end was waited for"
    );
    // a, b at 0 and 1, their commit marker at 2; the aborted x1, x2 at 3, 4, their marker
    // at 5; c at 6 and the last commit marker at 7.
    assert_eq!(
        listed(&topo, Filter::default()).await,
        BTreeSet::from([(0, 0), (0, 1), (0, 6)])
    );
    let started = std::time::Instant::now();
    let (summary, _) = replay(&replay_cfg(&topo, &unique("g"))).await;
    assert_eq!(
        (summary.replayed, summary.failed, summary.incomplete),
        (3, 0, false),
        "{summary}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "replay waited for the marker"
    );
    let ids = ids_in(main, 3, Duration::from_secs(10));
    assert_eq!(ids, vec!["a", "b", "c"]);
}

/// `replay-dlq --exactly-once` (issue 18), run as a process and killed with SIGKILL mid-run
/// three times, then run again to the end: the destination, read with `read_committed`, holds every DLQ
/// message exactly once (no duplicate, none missing). Without `--exactly-once` a kill between
/// a copy's acknowledgement and its ledger record repeats that copy (about every other kill). On Tansu (no
/// transactions) the flag must exit 2 with a message saying what to fix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exactly_once_replay_killed_mid_run_sends_every_message_exactly_once() {
    const N: usize = 2000;
    let topo = new_topology("dlq-eos", 2).await;
    let main = topo.main.clone();
    let brokers = brokers();
    let group = unique("g");
    let args: Vec<String> = [
        "replay-dlq",
        "--brokers",
        &brokers,
        "--topic",
        &main,
        "--tiers",
        "300ms,600ms",
        "--group",
        &group,
        "--exactly-once",
    ]
    .map(String::from)
    .to_vec();
    if broker_kind() == "tansu" {
        let (code, out, err) = output(rebound_quiet().args(&args));
        assert_eq!(code, 2, "{out}{err}");
        assert!(
            err.contains("--exactly-once needs a broker with Kafka transactions")
                && err.contains("without --exactly-once"),
            "{err}"
        );
        eprintln!("Tansu has no Kafka transactions (no EndTxn): only the exit 2 is checked");
        return;
    }
    let p = producer();
    let records: Vec<Out> = (0..N)
        .map(|i| {
            dead(
                &format!("m{i:04}"),
                (i % 2) as i32,
                "exhausted",
                "c",
                T10,
                &main,
            )
        })
        .collect();
    let acks: Vec<_> = records
        .iter()
        .map(|r| p.send_result(r.record(&topo.dlq)).expect("queued"))
        .collect();
    for a in acks {
        a.await.expect("delivered").expect("acknowledged");
    }

    let dir = crate::rel::workdir("dlq-eos");
    let log = dir.path().join("replay.log");
    // Paced so that each kill lands mid-run (unpaced, 2000 copies take about 3 s).
    let mut paced = args.clone();
    paced.extend(["--rate", "400"].map(String::from));
    // What a read_committed reader finds now (up to `min` records, a short look).
    let committed =
        |min: usize| read_at(&brokers, &main, min, Duration::ZERO, Duration::from_secs(2)).len();
    // Three runs killed with SIGKILL, at a quarter, half and three quarters of the copies.
    for quarter in 1..=3 {
        let want = N * quarter / 4;
        let mut run = crate::rel::Proc::spawn(&paced, 0, &log, &[]);
        wait_until(
            &format!("{want} copies committed"),
            Duration::from_secs(60),
            || committed(want) >= want,
        )
        .await;
        run.kill9();
        let at_kill = read_at(&brokers, &main, 0, Duration::from_secs(2), T).len();
        assert!(
            at_kill < N,
            "killed mid-run: {at_kill} of {N} copies were there\n{}",
            run.log_text()
        );
    }

    let (code, out, err) = output(rebound_quiet().args(&args));
    assert_eq!(code, 0, "{out}{err}");
    let got = read_at(
        &brokers,
        &main,
        N,
        Duration::from_secs(2),
        Duration::from_secs(60),
    );
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for g in &got {
        let id = g
            .payload_str()
            .split(':')
            .next()
            .unwrap_or_default()
            .to_string();
        *counts.entry(id).or_default() += 1;
    }
    let duplicates: usize = counts.values().map(|n| n - 1).sum();
    let missing = N - counts.len();
    eprintln!(
        "FIGURES replay-eos: messages={N} kills=3 copies={} duplicates={duplicates} missing={missing}",
        got.len()
    );
    assert_eq!(
        (duplicates, missing),
        (0, 0),
        "{out}\nthe killed runs:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
}

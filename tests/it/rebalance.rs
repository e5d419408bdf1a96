//! Rebalances that repeat nothing (issue 16), on both group protocols (KIP-848 `consumer` and
//! `classic` with cooperative-sticky; Tansu runs only `classic`).
//!
//! A plain group member ([`crate::rebal::Member`]) takes partitions away from rebound and gives them
//! back on cue, so each case moves exactly the partition it is about:
//!
//! * a revoke lets the running jobs of the revoked partition finish and commits them, and the
//!   partitions that stay are not touched;
//! * case 1: a tier partition paused on a head not yet due is revoked, and comes back before
//!   (or after) the head is due: the head is handled once, when due, and nothing stays paused;
//! * case 2: a partition paused in the assignment path (its head not due) with a committed
//!   offset and `auto.offset.reset=latest`: nothing after the committed offset is skipped;
//! * case 3: a slow job of a partition that is revoked and comes back: nothing from the old
//!   assignment is committed, and the committed offset never moves backwards;
//! * case 4: the breaker is open when a rebalance gives rebound new partitions: no handler call
//!   on them during the cool-down, and (`auto.offset.reset=latest` again) nothing skipped after.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::*;
use crate::rebal::*;
use chrono::Utc;
use rebound::headers as h;
use rebound::{Config, Topology};

/// One test per protocol for each case.
macro_rules! both_protocols {
    ($name:ident, $case:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn consumer() {
                if super::runs_here("consumer") {
                    super::$case("consumer").await;
                }
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn classic() {
                super::$case("classic").await;
            }
        }
    };
}

/// rebound on `topo` in `group` with `protocol` and the timed handler; `tweak` changes what a
/// case is about (each says why).
fn instance(
    topo: &Topology,
    group: &str,
    protocol: &str,
    handler: &TimedHandler,
    tweak: impl FnOnce(&mut Config),
) -> Running {
    capture_log();
    let mut cfg = config(topo.clone(), group);
    with_protocol(&mut cfg, protocol);
    tweak(&mut cfg);
    start(cfg, Arc::new(handler.clone()))
}

/// A case's world: a fresh topology (one 1 s tier, `partitions` per topic), group and handler.
struct Case {
    main: String,
    tier: String,
    topo: Topology,
    group: String,
    handler: TimedHandler,
}

async fn case_setup(prefix: &str, partitions: i32) -> Case {
    let main = unique(prefix);
    let topo = topology(&main, &[1000]);
    create_topology(&topo, partitions).await;
    Case {
        tier: topo.tiers[0].topic.clone(),
        main,
        topo,
        group: unique("g"),
        handler: TimedHandler::default(),
    }
}

/// A tier record due `due_in` from now (attempt 1), for partition 0.
fn tier_record(id: &str, due_in: Duration) -> Out {
    let due = Utc::now() + chrono::Duration::from_std(due_in).unwrap();
    Out::new(id, &format!("{id}:ok"))
        .partition(0)
        .header(h::PROCESS_AFTER, &h::format_time(due))
        .header(h::ATTEMPT, "1")
}

fn paused(r: &Running) -> f64 {
    crate::rel::metric_sum(&r.metrics.render(), "rebound_paused_partitions")
}

fn committed(group: &str, topic: &str, partition: i32) -> Option<i64> {
    crate::rel::committed(&brokers(), group, topic, partition + 1)[partition as usize]
}

async fn wait_holds(member: &Member, topic: &str, partition: i32) {
    wait_until(
        &format!("the member holds {topic}/{partition}"),
        Duration::from_secs(30),
        || member.holds(topic, partition),
    )
    .await;
}

/// Waits until rebound holds `topic`/`partition` again (its `/status` lists it).
async fn wait_rebound_holds(r: &Running, topic: &str, partition: i32) {
    let m = r.metrics.clone();
    let topic = topic.to_string();
    wait_until(
        &format!("rebound holds {topic}/{partition}"),
        Duration::from_secs(30),
        move || {
            m.status
                .borrow()
                .partitions
                .iter()
                .any(|p| p.topic == topic && p.partition == partition)
        },
    )
    .await;
}

// ---------------------------------------------------------------------------------------------

both_protocols!(revoke_finishes_running_work_and_commits_it, revoke_drains);

/// The running jobs of the revoked partition finish within `--revoke-timeout` (default 2 s) and
/// are committed before the partition moves, so the next owner starts after them; the
/// partitions that stay keep working and are never revoked.
async fn revoke_drains(protocol: &str) {
    let Case {
        main,
        topo,
        group,
        handler,
        ..
    } = case_setup("rb-drain", 2).await;
    let a = instance(&topo, &group, protocol, &handler, |c| {
        // Longer than the jobs whatever the rebalance's latency, so the test does not race it.
        c.membership.revoke_timeout = Duration::from_secs(10);
    });
    wait_ready(&a).await;
    wait_rebound_holds(&a, &main, 1).await;
    let slow: Vec<Out> = (0..2)
        .flat_map(|p| {
            (0..3).map(move |i| {
                Out::new(&format!("s{p}{i}"), &format!("s{p}{i}:slow-3000")).partition(p)
            })
        })
        .collect();
    produce(&main, &slow).await;
    let h = handler.clone();
    wait_until("every slow job running", Duration::from_secs(20), || {
        h.calls().len() == 6
    })
    .await;
    let member = Member::join(&group, &[&main], protocol);
    wait_until(
        "the member takes a main partition",
        Duration::from_secs(30),
        || member.holds(&main, 0) || member.holds(&main, 1),
    )
    .await;
    let moved: Vec<i32> = (0..2).filter(|p| member.holds(&main, *p)).collect();
    for p in &moved {
        assert_eq!(
            committed(&group, &main, *p),
            Some(3),
            "{protocol}: partition {p} moved without its finished work committed"
        );
    }
    let revoked = revokes(&[&main, &topo.tiers[0].topic]);
    for r in &revoked {
        assert!(
            r.topic == main && moved.contains(&r.partition),
            "{protocol}: a partition that did not move was revoked: {r:?}"
        );
        assert!(
            r.running.is_empty(),
            "{protocol}: a job that finishes within the revoke timeout was handed back: {r:?}"
        );
    }
    member.leave();
    for p in 0..2 {
        wait_rebound_holds(&a, &main, p).await;
    }
    let more: Vec<Out> = (0..2)
        .flat_map(|p| {
            (0..3).map(move |i| Out::new(&format!("m{p}{i}"), &format!("m{p}{i}:ok")).partition(p))
        })
        .collect();
    produce(&main, &more).await;
    let h = handler.clone();
    wait_until(
        "the later messages handled",
        Duration::from_secs(30),
        || h.calls().len() >= 12,
    )
    .await;
    a.stop().await;
    let calls = handler.calls();
    let mut seen = std::collections::HashMap::new();
    for c in &calls {
        *seen.entry(c.id.clone()).or_insert(0) += 1;
    }
    assert!(
        seen.values().all(|n| *n == 1) && seen.len() == 12,
        "{protocol}: every message handled exactly once, got {seen:?}"
    );
}

// ---------------------------------------------------------------------------------------------

both_protocols!(
    case1_paused_tier_partition_comes_back_before_due,
    case1_back_before_due
);
both_protocols!(
    case1_paused_tier_partition_stays_away_until_due,
    case1_away_until_due
);

// A classic rebalance waits for a heartbeat (3 s by default): a move out and back takes ~7 s.
async fn case1_back_before_due(protocol: &str) {
    case1(protocol, Duration::from_secs(15), false).await
}

async fn case1_away_until_due(protocol: &str) {
    case1(protocol, Duration::from_secs(6), true).await
}

/// A tier partition holds a head due in `due_in`; the member takes the partition and gives it
/// back (after the due time when `stay_past_due`). The head is handled once, never early, and
/// nothing stays paused.
async fn case1(protocol: &str, due_in: Duration, stay_past_due: bool) {
    let Case {
        tier,
        topo,
        group,
        handler,
        ..
    } = case_setup("rb-c1", 1).await;
    let a = instance(&topo, &group, protocol, &handler, |_| {});
    wait_ready(&a).await;
    wait_rebound_holds(&a, &tier, 0).await;
    let record = tier_record("held", due_in);
    let due = Instant::now() + due_in;
    produce(&tier, &[record]).await;
    let r = &a;
    wait_until(
        "the head held (partition paused)",
        Duration::from_secs(10),
        || paused(r) >= 1.0,
    )
    .await;
    let member = Member::join(&group, &[&tier], protocol);
    wait_holds(&member, &tier, 0).await;
    assert!(
        Instant::now() < due,
        "{protocol}: the move took longer than the head's delay"
    );
    wait_until(
        "no paused partition left on rebound after the revoke",
        Duration::from_secs(5),
        || paused(r) == 0.0,
    )
    .await;
    if stay_past_due {
        tokio::time::sleep_until((due + Duration::from_secs(1)).into()).await;
    }
    let left = Instant::now();
    member.leave();
    let h = handler.clone();
    wait_until("the head handled", Duration::from_secs(30), || {
        !h.of("held").is_empty()
    })
    .await;
    let calls = handler.of("held");
    assert!(
        calls[0].start >= due,
        "{protocol}: handled before it was due"
    );
    if stay_past_due {
        assert!(
            calls[0].start.duration_since(left) < Duration::from_secs(10),
            "{protocol}: a head already due waited {:?} after the partition came back",
            calls[0].start.duration_since(left)
        );
    }
    wait_until("nothing paused", Duration::from_secs(5), || {
        paused(r) == 0.0
    })
    .await;
    // Handled once: nothing else comes.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        handler.of("held").len(),
        1,
        "{protocol}: the head was handled twice"
    );
    a.stop().await;
}

// ---------------------------------------------------------------------------------------------

both_protocols!(
    case2_paused_on_assignment_with_latest_reset_skips_nothing,
    case2
);

/// rebound commits offset 2 of the tier partition, the member takes it, three more records
/// arrive (the first not due for 5 s, the others due), and the partition comes back: rebound
/// holds the head as soon as it is assigned (paused in the assignment path) and, with
/// `auto.offset.reset=latest`, still handles all three, none early.
async fn case2(protocol: &str) {
    let Case {
        tier,
        topo,
        group,
        handler,
        ..
    } = case_setup("rb-c2", 1).await;
    // The case is about `latest`: a lost position would skip to the end instead of failing.
    let latest = |c: &mut Config| {
        c.cluster
            .kafka
            .0
            .push(("auto.offset.reset".into(), "latest".into()))
    };
    // A committed offset 0 first, so that `latest` does not skip c0 and c1.
    let first = Member::join(&group, &[&tier], protocol);
    wait_holds(&first, &tier, 0).await;
    first.commit(&tier, 0, 0);
    let (g, t) = (group.clone(), tier.clone());
    wait_until("offset 0 committed", Duration::from_secs(10), || {
        committed(&g, &t, 0) == Some(0)
    })
    .await;
    first.leave();
    produce(
        &tier,
        &[
            tier_record("c0", Duration::ZERO),
            tier_record("c1", Duration::ZERO),
        ],
    )
    .await;
    let a = instance(&topo, &group, protocol, &handler, latest);
    wait_ready(&a).await;
    let g = group.clone();
    let t = tier.clone();
    wait_until("offset 2 committed", Duration::from_secs(20), || {
        committed(&g, &t, 0) == Some(2)
    })
    .await;
    let member = Member::join(&group, &[&tier], protocol);
    wait_holds(&member, &tier, 0).await;
    let due = Instant::now() + Duration::from_secs(5);
    produce(
        &tier,
        &[
            tier_record("c2", Duration::from_secs(5)),
            tier_record("c3", Duration::ZERO),
            tier_record("c4", Duration::ZERO),
        ],
    )
    .await;
    member.leave();
    wait_rebound_holds(&a, &tier, 0).await;
    let h = handler.clone();
    wait_until("c2, c3 and c4 handled", Duration::from_secs(30), || {
        ["c2", "c3", "c4"].iter().all(|id| !h.of(id).is_empty())
    })
    .await;
    for id in ["c2", "c3", "c4"] {
        let calls = handler.of(id);
        assert_eq!(
            calls.len(),
            1,
            "{protocol}: {id} handled {} times",
            calls.len()
        );
        assert!(
            calls[0].start >= due,
            "{protocol}: {id} handled before the head ahead of it was due"
        );
    }
    assert_eq!(
        handler.calls().len(),
        5,
        "{protocol}: {:?}",
        handler.calls()
    );
    a.stop().await;
}

// ---------------------------------------------------------------------------------------------

both_protocols!(
    case3_slow_job_of_a_revoked_partition_commits_nothing_later,
    case3
);

/// A slow job (15 s, longer than the 2 s revoke timeout) is running when its partition moves to
/// the member, which gives it back at once. rebound reads it again and calls the handler again;
/// the first call ends while the second runs. Its end must not commit anything: the committed
/// offset stays at the slow message until the second call ends, and never goes backwards.
async fn case3(protocol: &str) {
    let Case {
        main,
        topo,
        group,
        handler,
        ..
    } = case_setup("rb-c3", 1).await;
    let a = instance(&topo, &group, protocol, &handler, |c| {
        // The slow job must outlast a move out and back (the tests' default is 5 s).
        c.handler_timeout = Duration::from_secs(30);
    });
    wait_ready(&a).await;
    wait_rebound_holds(&a, &main, 0).await;
    produce(
        &main,
        &[
            Out::new("s", "s:slow-15000").partition(0),
            Out::new("n1", "n1:ok").partition(0),
            Out::new("n2", "n2:ok").partition(0),
        ],
    )
    .await;
    let h = handler.clone();
    wait_until(
        "the slow job and the two after it started",
        Duration::from_secs(20),
        || h.calls().len() >= 3,
    )
    .await;
    // Sample the committed offset all along.
    let samples = Arc::new(std::sync::Mutex::new(Vec::<(Instant, Option<i64>)>::new()));
    let sampling = {
        let (samples, group, main) = (samples.clone(), group.clone(), main.clone());
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s = stop.clone();
        let t = std::thread::spawn(move || {
            while !s.load(std::sync::atomic::Ordering::Relaxed) {
                let c = committed(&group, &main, 0);
                samples.lock().unwrap().push((Instant::now(), c));
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        (stop, t)
    };
    let member = Member::join(&group, &[&main], protocol);
    wait_holds(&member, &main, 0).await;
    member.leave();
    let h = handler.clone();
    wait_until(
        "the slow message handled again, to its end",
        Duration::from_secs(40),
        || h.of("s").len() == 2 && h.of("s").iter().all(|c| c.end.is_some()),
    )
    .await;
    let o = group.clone();
    let m = main.clone();
    wait_until("offset 3 committed", Duration::from_secs(10), || {
        committed(&o, &m, 0) == Some(3)
    })
    .await;
    sampling.0.store(true, std::sync::atomic::Ordering::Relaxed);
    sampling.1.join().unwrap();
    a.stop().await;

    let calls = handler.of("s");
    let (first, second) = (&calls[0], &calls[1]);
    let first_end = first.end.unwrap();
    let second_end = second.end.unwrap();
    assert!(
        first_end > second.start,
        "{protocol}: the scenario needs the old call to end while the new one runs (old ended {:?} before the new one started)",
        second.start.duration_since(first_end)
    );
    let samples = samples.lock().unwrap().clone();
    let mut last = None;
    for (at, c) in &samples {
        assert!(
            c >= &last,
            "{protocol}: the committed offset went back from {last:?} to {c:?}"
        );
        last = *c;
        if *at < second_end {
            assert!(
                c.unwrap_or(0) <= 0,
                "{protocol}: offset {c:?} committed while the slow message was still being handled again (a completion from the old assignment counted)"
            );
        }
    }
    let revoked = revokes(&[&main]);
    assert!(
        revoked.iter().any(|r| r.running == vec![0]),
        "{protocol}: the slow job was not logged as handed back: {revoked:?}"
    );
}

// ---------------------------------------------------------------------------------------------

both_protocols!(
    case4_new_partitions_stay_paused_while_the_breaker_is_open,
    case4
);

/// The member holds the main topic's two partitions and has committed offset 1 of each; rebound
/// holds the tier. Failing retries open rebound's breaker; then the member leaves and rebound
/// is given the main partitions: no handler call on them while the breaker is open, and once it
/// lets work through, everything after the committed offsets is handled (with
/// `auto.offset.reset=latest`: nothing skipped), nothing before them.
async fn case4(protocol: &str) {
    let Case {
        main,
        tier,
        topo,
        group,
        handler,
    } = case_setup("rb-c4", 2).await;
    let member = Member::join(&group, &[&main], protocol);
    wait_holds(&member, &main, 0).await;
    wait_holds(&member, &main, 1).await;
    let old: Vec<Out> = (0..2)
        .map(|p| Out::new(&format!("old{p}"), &format!("old{p}:ok")).partition(p))
        .collect();
    produce(&main, &old).await;
    member.commit(&main, 0, 1);
    member.commit(&main, 1, 1);
    let (g, m) = (group.clone(), main.clone());
    wait_until("the member's commits", Duration::from_secs(10), || {
        committed(&g, &m, 0) == Some(1) && committed(&g, &m, 1) == Some(1)
    })
    .await;
    let a = instance(&topo, &group, protocol, &handler, |c| {
        // A 6 s cool-down (default 30 s) keeps the wait short; the case is about `latest`.
        c.breaker.cooldown = Duration::from_secs(6);
        c.cluster
            .kafka
            .0
            .push(("auto.offset.reset".into(), "latest".into()));
    });
    wait_ready(&a).await;
    wait_rebound_holds(&a, &tier, 0).await;
    assert!(
        member.holds(&main, 0) && member.holds(&main, 1),
        "the member keeps the main topic"
    );
    let failing: Vec<Out> = (0..30)
        .map(|i| {
            let mut o = tier_record(&format!("f{i}"), Duration::ZERO);
            o.payload = Some(format!("f{i}:always").into_bytes());
            o
        })
        .collect();
    produce(&tier, &failing).await;
    let r = &a;
    let open = || crate::rel::metric_sum(&r.metrics.render(), "rebound_circuit_state") == 2.0;
    wait_until("the breaker open", Duration::from_secs(20), open).await;
    member.leave();
    let fresh: Vec<Out> = (0..2)
        .flat_map(|p| {
            (0..3).map(move |i| {
                Out::new(&format!("new{p}{i}"), &format!("new{p}{i}:ok")).partition(p)
            })
        })
        .collect();
    produce(&main, &fresh).await;
    let mut last_open = Instant::now();
    let until = Instant::now() + Duration::from_secs(40);
    loop {
        if open() {
            last_open = Instant::now();
        }
        let handled = handler.calls().iter().filter(|c| c.topic == main).count();
        if handled >= 6 || Instant::now() > until {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    wait_rebound_holds(&a, &main, 0).await;
    a.stop().await;
    let on_main: Vec<Timed> = handler
        .calls()
        .into_iter()
        .filter(|c| c.topic == main)
        .collect();
    for c in &on_main {
        assert!(
            c.start > last_open,
            "{protocol}: {} handled while the breaker was open",
            c.id
        );
    }
    let mut ids: Vec<String> = on_main.iter().map(|c| c.id.clone()).collect();
    ids.sort();
    assert_eq!(
        ids,
        ["new00", "new01", "new02", "new10", "new11", "new12"],
        "{protocol}: after the committed offsets, each message once, nothing skipped, nothing before"
    );
}

// ---------------------------------------------------------------------------------------------

/// `--instance-id` from the flag or `REBOUND_INSTANCE_ID`; a group setting librdkafka would
/// refuse exits 2 naming what to change (no broker needed).
#[test]
fn instance_id_and_group_conflicts_on_the_command_line() {
    let run = |extra: &[&str], env: &[(&str, &str)]| {
        let mut c = rebound();
        c.args([
            "run",
            "--topic",
            "orders",
            "--handler",
            "command",
            "--command",
            "cat",
        ])
        .args(extra)
        .arg("--check-config");
        for (k, v) in env {
            c.env(k, v);
        }
        output(&mut c)
    };
    let (code, out, _) = run(&[], &[("REBOUND_INSTANCE_ID", "orders-0")]);
    assert_eq!(code, 0);
    assert!(out.contains("static, instance-id orders-0"), "{out}");
    let (code, out, _) = run(&["-X", "group.protocol=consumer"], &[]);
    assert_eq!(code, 0, "the consumer protocol is accepted: {out}");
    let (code, _, err) = run(
        &[
            "-X",
            "group.protocol=consumer",
            "-X",
            "heartbeat.interval.ms=500",
        ],
        &[],
    );
    assert_eq!(code, 2);
    assert!(
        err.contains("heartbeat.interval.ms") && err.contains("group.protocol=classic"),
        "{err}"
    );
    let (code, _, err) = run(
        &[
            "-X",
            "partition.assignment.strategy=range,cooperative-sticky",
        ],
        &[],
    );
    assert_eq!(code, 2);
    assert!(err.contains("mixes eager"), "{err}");
    let (code, _, err) = run(&["--instance-id", "a/b"], &[]);
    assert_eq!(code, 2);
    assert!(err.contains("--instance-id"), "{err}");
}

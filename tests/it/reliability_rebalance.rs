//! Rebalance: three instances in one group share the main topic and the tiers. Twice, the
//! instance that has a tier partition paused on a not-yet-due message is stopped and a new one
//! started, while traffic keeps coming. Every id must end where its behaviour says, no retry may
//! start before its `process_after`, and no partition may stay paused after it moved: every
//! retry gets handled, and at the end no instance holds a paused partition.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::*;
use crate::rel::*;
use rand::SeedableRng;
use rebound::handler::http::HttpHandler;

fn paused(r: &Running) -> f64 {
    metric_sum(&r.metrics.render(), "rebound_paused_partitions")
}

/// A topology `prefix` (tiers 1 s / 2 s, two retries, `partitions` per topic), `count` (×scale)
/// messages drawn from `mix`, and the HTTP sink at 5 ms per call (so that work is in flight
/// when partitions move).
async fn scenario(
    prefix: &str,
    partitions: i32,
    count: usize,
    mix: &[(&str, u32)],
) -> (String, rebound::Topology, Traffic, Sink) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed(prefix));
    let main = unique(prefix);
    let mut topo = topology(&main, &[1000, 2000]);
    topo.max_retries = 2;
    create_topology(&topo, partitions).await;
    let traffic = traffic(
        &prefix[..1],
        count * scale(),
        mix,
        topo.max_retries,
        &mut rng,
    );
    let sink = Sink::start().await;
    sink.delay_ms.store(5, std::sync::atomic::Ordering::Relaxed);
    (main, topo, traffic, sink)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_leave_and_join_mid_run_with_partitions_paused_and_nothing_is_lost() {
    let brokers = brokers();
    let mix = [("ok", 50), ("fail-1", 35), ("fail-2", 10), ("permanent", 5)];
    let (main, topo, traffic, sink) = scenario("rebal", 6, 1200, &mix).await;
    let Traffic {
        messages,
        fates,
        dead_expected,
    } = traffic;
    let group = unique("g");
    let instance = || {
        let mut cfg = config(topo.clone(), &group);
        cfg.commit_interval = Duration::from_secs(1);
        cfg.cluster
            .kafka
            .0
            .push(("session.timeout.ms".into(), "6000".into()));
        cfg.cluster
            .kafka
            .0
            .push(("heartbeat.interval.ms".into(), "500".into()));
        let handler = HttpHandler::new(&sink.url, Duration::from_secs(10))
            .unwrap()
            .forward_headers(vec!["process_after".into()]);
        start(cfg, Arc::new(handler))
    };

    let mut running: Vec<(char, Running)> =
        vec![('A', instance()), ('B', instance()), ('C', instance())];
    for (_, r) in &running {
        wait_ready(r).await;
    }
    let feed = feed(&brokers, &main, &messages, 100, Duration::from_millis(400));

    let started = Instant::now();
    let mut moves = Vec::new();
    // Membership changes: a repeat must come from work in flight around one of them.
    let mut changes = vec![chrono::Utc::now()];
    for (round, (share, newcomer)) in [(0.2, 'D'), (0.5, 'E')].into_iter().enumerate() {
        let want = (fates.len() as f64 * share) as usize;
        let s = sink.clone();
        eventually("progress", Duration::from_secs(90), || {
            let s = s.clone();
            async move { s.count() >= want }
        })
        .await;
        // Stop the instance holding a paused tier partition (a retry not yet due).
        let until = Instant::now() + Duration::from_secs(30);
        let victim = loop {
            if let Some(i) = running.iter().position(|(_, r)| paused(r) >= 1.0) {
                break i;
            }
            assert!(
                Instant::now() < until,
                "no instance ever paused a tier partition"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let (name, r) = running.remove(victim);
        let held = paused(&r);
        let t = Instant::now();
        changes.push(chrono::Utc::now());
        r.stop().await;
        changes.push(chrono::Utc::now());
        eprintln!(
            "round {round}: stopped {name} with {held} paused partition(s) at {:?} (stop took {:?}); starting {newcomer}",
            started.elapsed(),
            t.elapsed()
        );
        moves.push(format!("{name}->{newcomer}({held} paused)"));
        let r = instance();
        wait_ready(&r).await;
        changes.push(chrono::Utc::now());
        running.push((newcomer, r));
    }

    feed.await.unwrap();
    wait_finished(&sink, &fates, topo.max_retries, Duration::from_secs(120)).await;
    // Nothing stays paused: every held head was released wherever its partition went.
    let until = Instant::now() + Duration::from_secs(10);
    while running.iter().any(|(_, r)| paused(r) > 0.0) {
        assert!(
            Instant::now() < until,
            "a partition stays paused with no retry left: {:?}",
            running
                .iter()
                .map(|(n, r)| (*n, paused(r)))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for (_, r) in &running {
        assert!(r.metrics.health.ready(), "an instance is not ready");
    }
    let dlq = read_dlq(&brokers, &topo, dead_expected, Duration::from_secs(60));
    for (_, r) in running {
        r.stop().await;
    }

    let a = account(&fates, &sink.records(), &dlq, &topo);
    let mut widest = 0;
    for (record, times) in &a.repeats {
        let first = *times.iter().min().unwrap();
        let nearest = changes
            .iter()
            .map(|c| (*c - first).num_milliseconds().abs())
            .min()
            .unwrap();
        widest = widest.max(nearest);
        assert!(
            nearest <= 3000,
            "{record:?} was handled twice, first {nearest} ms away from any membership change"
        );
    }
    eprintln!(
        "FIGURES rebalance: messages={} instances=3 moves={:?} {} widest_repeat_from_change_ms={widest} took_s={}",
        fates.len(),
        moves,
        a.summary(),
        started.elapsed().as_secs()
    );
    a.assert_exact();
}

// ---------------------------------------------------------------------------------------------
// Scale out from 1 to 4 instances and back to 1 under steady traffic (issue 16)

/// One instance of the scale scenario: rebound's defaults, the HTTP sink as handler.
fn scaled_instance(topo: &rebound::Topology, group: &str, protocol: &str, sink: &Sink) -> Running {
    crate::rebal::capture_log();
    let mut cfg = config(topo.clone(), group);
    cfg.commit_interval = Duration::from_secs(1);
    if protocol == "eager" {
        // The baseline: rebound before issue 16 (eager assignors, nothing drained on revoke).
        cfg.cluster.kafka.0.push((
            "partition.assignment.strategy".into(),
            "range,roundrobin".into(),
        ));
        cfg.membership.revoke_timeout = Duration::ZERO;
    } else {
        crate::rebal::with_protocol(&mut cfg, protocol);
    }
    let handler = HttpHandler::new(&sink.url, Duration::from_secs(10))
        .unwrap()
        .forward_headers(vec!["process_after".into()]);
    start(cfg, Arc::new(handler))
}

/// Scale 1 → 4 → 1 with traffic flowing: six membership changes, each moving partitions while
/// work is in flight on them. Every repeat must be work a revoke handed back (its offset within
/// what the revoke logged as read again), so partitions that did not move repeat nothing;
/// nothing is lost, nothing early, nothing stays paused.
async fn scale_out_and_in(protocol: &str) {
    if broker_kind() == "tansu" {
        // Seen 2026-11-30: repeats outside every range rebound handed back, with classic
        // cooperative-sticky on Tansu 0.6 (multi-member rebalances are flaky there, FINDINGS).
        eprintln!("skipping the scale scenario on Tansu 0.6: its group coordinator repeats work no revoke handed back");
        return;
    }
    let brokers = brokers();
    let mix = [("ok", 60), ("fail-1", 30), ("fail-2", 5), ("permanent", 5)];
    let (main, topo, traffic, sink) = scenario("scale", 8, 1600, &mix).await;
    let Traffic {
        messages,
        fates,
        dead_expected,
    } = traffic;
    let group = unique("g");
    let started = Instant::now();
    let mut running = vec![scaled_instance(&topo, &group, protocol, &sink)];
    wait_ready(&running[0]).await;
    let feed = feed(&brokers, &main, &messages, 40, Duration::from_millis(250));
    let mut changes: Vec<(String, chrono::DateTime<chrono::Utc>)> = Vec::new();
    let step = fates.len() / 8;
    let mut want = step;
    for n in 2..=4 {
        let s = sink.clone();
        eventually("progress", Duration::from_secs(90), || {
            let s = s.clone();
            async move { s.count() >= want }
        })
        .await;
        want += step;
        changes.push((format!("{}->{n}", n - 1), chrono::Utc::now()));
        let r = scaled_instance(&topo, &group, protocol, &sink);
        // Not just ready: a cooperative join's first assignment is empty.
        let m = r.metrics.clone();
        wait_until(
            "the newcomer holds partitions",
            Duration::from_secs(30),
            move || !m.status.borrow().partitions.is_empty(),
        )
        .await;
        running.push(r);
    }
    for n in (1..4).rev() {
        let s = sink.clone();
        eventually("progress", Duration::from_secs(90), || {
            let s = s.clone();
            async move { s.count() >= want }
        })
        .await;
        want += step;
        changes.push((format!("{}->{n}", n + 1), chrono::Utc::now()));
        running.pop().unwrap().stop().await;
    }
    feed.await.unwrap();
    wait_finished(&sink, &fates, topo.max_retries, Duration::from_secs(120)).await;
    let r = &running[0];
    let until = Instant::now() + Duration::from_secs(10);
    while paused(r) > 0.0 {
        assert!(
            Instant::now() < until,
            "{protocol}: a partition stays paused"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let dlq = read_dlq(&brokers, &topo, dead_expected, Duration::from_secs(60));
    running.pop().unwrap().stop().await;

    let a = account(&fates, &sink.records(), &dlq, &topo);
    let topics = topo.topics();
    let revokes = crate::rebal::revokes(&topics);
    let moved: std::collections::BTreeSet<(String, i32)> = revokes
        .iter()
        .map(|r| (r.topic.clone(), r.partition))
        .collect();
    // Per membership change (the last one at or before the revoke): partitions moved, offsets
    // handed back, of which still running, and repeats.
    let mut per_change = vec![(0usize, 0i64, 0usize, 0usize); changes.len()];
    let change_of = |at: chrono::DateTime<chrono::Utc>| {
        changes.iter().rposition(|(_, c)| *c <= at).unwrap_or(0)
    };
    for r in &revokes {
        let c = &mut per_change[change_of(r.at)];
        c.0 += 1;
        c.1 += r.handed_back();
        c.2 += r.running.len();
    }
    for ((topic, partition, offset), _) in &a.repeats {
        let by = revokes
            .iter()
            .find(|r| &r.topic == topic && r.partition == *partition && r.covers(*offset));
        let Some(by) = by else {
            panic!(
                "{protocol}: {topic}/{partition} offset {offset} was handled twice, but no revoke handed it back (moved partitions: {moved:?}); {}",
                a.summary()
            );
        };
        per_change[change_of(by.at)].3 += 1;
    }
    let figures: Vec<String> = changes
        .iter()
        .zip(&per_change)
        .map(|((label, _), (parts, back, run, rep))| {
            format!("{label}: moved={parts} handed_back={back} running={run} repeats={rep}")
        })
        .collect();
    eprintln!(
        "FIGURES rebalance-scale {protocol}: messages={} partitions=8x3 changes=[{}] {} took_s={}",
        fates.len(),
        figures.join("; "),
        a.summary(),
        started.elapsed().as_secs()
    );
    a.assert_exact();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_out_to_four_and_back_repeats_only_handed_back_work_consumer() {
    if crate::rebal::runs_here("consumer") {
        scale_out_and_in("consumer").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_out_to_four_and_back_repeats_only_handed_back_work_classic() {
    scale_out_and_in("classic").await;
}

/// The same with rebound's former settings, for RELIABILITY.md's comparison (`--ignored`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn scale_out_to_four_and_back_eager_baseline() {
    scale_out_and_in("eager").await;
}

// ---------------------------------------------------------------------------------------------
// Static membership (`--instance-id`): what a restart and a scale-in cost (issue 16)

/// `rebound run` as a static member `id` of `group`, answering to `sink`.
fn static_member(
    topo: &rebound::Topology,
    group: &str,
    protocol: &str,
    sink: &Sink,
    id: &str,
    dir: &std::path::Path,
) -> Proc {
    let port = free_port();
    let mut args = run_args(&brokers(), topo, group, sink, port);
    args.extend(["--instance-id".into(), id.into()]);
    args.extend(["-X".into(), format!("group.protocol={protocol}")]);
    if protocol == "classic" {
        // The test broker's consumer-protocol session is 6 s; the classic one is set to match.
        args.extend(["-X".into(), "session.timeout.ms=6000".into()]);
    }
    Proc::spawn(&args, port, &dir.join(format!("{id}.log")), &[])
}

type Held = std::collections::BTreeSet<(String, i32)>;

/// The first call `sink` received after `t` (on one of `on`, if given).
fn first_after(
    sink: &Sink,
    t: chrono::DateTime<chrono::Utc>,
    on: Option<&Held>,
) -> Option<chrono::DateTime<chrono::Utc>> {
    sink.records()
        .iter()
        .filter(|r| r.at > t)
        .filter(|r| on.is_none_or(|held| held.contains(&(r.topic.clone(), r.partition))))
        .map(|r| r.at)
        .min()
}

/// The partitions a `rebound` process holds, from its `/status`.
async fn held(p: &Proc) -> Held {
    let Some((200, body)) = get(p.metrics, "/status").await else {
        return Held::new();
    };
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    v["partitions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| {
            Some((
                p["topic"].as_str()?.to_string(),
                p["partition"].as_i64()? as i32,
            ))
        })
        .collect()
}

/// A static member is killed with `kill -9` and restarted at once with the same name: how long
/// until it handles again (on `consumer` the broker refuses it with UNRELEASED_INSTANCE_ID until
/// the old session expires, and rebound must keep trying, not exit). Then a second static
/// member stops cleanly: how long its partitions sit idle (no LeaveGroup) before the first one
/// handles them. Traffic trickles all along; every id must be handled.
async fn static_membership(protocol: &str) {
    if broker_kind() == "tansu" {
        // Seen 2026-11-30: a static member's partitions did not move within 60 s of its stop.
        eprintln!("skipping static membership on Tansu 0.6: a stopped static member's partitions did not move within 60 s there");
        return;
    }
    let main = unique("static");
    let topo = topology(&main, &[1000]);
    create_topology(&topo, 2).await;
    let group = unique("g");
    let dir = workdir("static");
    let (sink_a, sink_b) = (Sink::start().await, Sink::start().await);
    let stop_feed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let feed = {
        let (main, stop) = (main.clone(), stop_feed.clone());
        tokio::spawn(async move {
            let mut n = 0usize;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let id = format!("t-{n}");
                let b = ["ok", "fail-1"][n / 2 % 2];
                produce(
                    &main,
                    &[Out::new(&id, &format!("{id}:{b}")).partition((n % 2) as i32)],
                )
                .await;
                n += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            n
        })
    };
    let mut a = static_member(&topo, &group, protocol, &sink_a, "inst-a", dir.path());
    wait_readyz(&a, Duration::from_secs(30)).await;
    let s = sink_a.clone();
    eventually("a handles", Duration::from_secs(30), || {
        let s = s.clone();
        async move { s.count() > 10 }
    })
    .await;

    // On `consumer` the test is about the retry through UNRELEASED_INSTANCE_ID, which a restart
    // meets only if it joins before the old session (6 s) expires: on a loaded machine the new
    // process can start later than that, so the kill and restart are tried up to three times.
    let mut attempt = 0;
    let (mut a, killed, refused) = loop {
        attempt += 1;
        let killed = chrono::Utc::now();
        a.kill9();
        let mut restarted = static_member(&topo, &group, protocol, &sink_a, "inst-a", dir.path());
        let s = sink_a.clone();
        eventually(
            "the restarted member handles",
            Duration::from_secs(60),
            || {
                let s = s.clone();
                async move { first_after(&s, killed, None).is_some() }
            },
        )
        .await;
        assert!(
            restarted.running(),
            "{protocol}: the restarted member exited"
        );
        let refused = restarted
            .log_text()
            .matches("UNRELEASED_INSTANCE_ID")
            .count();
        if protocol != "consumer" || refused > 0 || attempt == 3 {
            break (restarted, killed, refused);
        }
        eprintln!("{protocol}: restart {attempt} joined after the old session had expired (no UNRELEASED_INSTANCE_ID met); killing and restarting again");
        a = restarted;
    };
    let restart_ms = (first_after(&sink_a, killed, None).unwrap() - killed).num_milliseconds();

    let mut b = static_member(&topo, &group, protocol, &sink_b, "inst-b", dir.path());
    let s = sink_b.clone();
    eventually("b handles messages", Duration::from_secs(60), || {
        let s = s.clone();
        async move { s.count() > 10 }
    })
    .await;
    let mut b_parts = held(&b).await;
    let until = Instant::now() + Duration::from_secs(30);
    while b_parts.is_empty() {
        assert!(Instant::now() < until, "{protocol}: b holds nothing");
        tokio::time::sleep(Duration::from_millis(100)).await;
        b_parts = held(&b).await;
    }
    let (status, took) = b.term(Duration::from_secs(30));
    assert!(
        status.is_some_and(|s| s.success()),
        "{protocol}: b did not stop cleanly"
    );
    let stopped = chrono::Utc::now();
    let s = sink_a.clone();
    let ps = b_parts.clone();
    eventually(
        "a takes over b's partitions",
        Duration::from_secs(60),
        || {
            let (s, ps) = (s.clone(), ps.clone());
            async move { first_after(&s, stopped, Some(&ps)).is_some() }
        },
    )
    .await;
    let idle_ms =
        (first_after(&sink_a, stopped, Some(&b_parts)).unwrap() - stopped).num_milliseconds();
    stop_feed.store(true, std::sync::atomic::Ordering::Relaxed);
    let produced = feed.await.unwrap();
    let (sa, sb) = (sink_a.clone(), sink_b.clone());
    eventually("every id handled", Duration::from_secs(60), || {
        let (sa, sb) = (sa.clone(), sb.clone());
        async move {
            let mut ok = sa.succeeded();
            ok.extend(sb.succeeded());
            (0..produced)
                .all(|n| ok.contains(&format!("t-{n}:ok")) || ok.contains(&format!("t-{n}:fail-1")))
        }
    })
    .await;
    let (status, _) = a.term(Duration::from_secs(30));
    assert!(
        status.is_some_and(|s| s.success()),
        "{protocol}: a did not stop cleanly"
    );
    if protocol == "consumer" {
        assert!(
            refused > 0,
            "{protocol}: the restart was expected to meet UNRELEASED_INSTANCE_ID (the test is about the retry)"
        );
    }
    eprintln!(
        "FIGURES static {protocol}: kill -9 + restart to the first handled message {restart_ms} ms ({refused} UNRELEASED_INSTANCE_ID refusals logged); clean stop of a static member (took {took:?}) to its partitions {b_parts:?} handled again {idle_ms} ms; {produced} messages, none lost"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_member_restart_and_scale_in_consumer() {
    if crate::rebal::runs_here("consumer") {
        static_membership("consumer").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_member_restart_and_scale_in_classic() {
    static_membership("classic").await;
}

//! Broker restart: a private broker of the suite's kind whose data survives a restart (Apache
//! Kafka with its log dirs kept; Tansu on `sqlite://` storage), so that it keeps its topics,
//! records and committed offsets, is stopped for several seconds in the middle of a run
//! and started again on the same port. rebound must log the outage, answer `/readyz` with 503
//! and then 200 again, resume producing and committing, lose nothing, and never exit on its own.

use std::time::{Duration, Instant};

use crate::common::*;
use crate::rel::*;
use rand::SeedableRng;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_outage_mid_run_is_ridden_out_with_nothing_lost() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed("broker"));
    let dir = workdir("broker");
    let mut broker = OwnBroker::start(free_port(), dir.path());
    let brokers = broker.brokers();
    let main = unique("outage");
    let mut topo = topology(&main, &[1000, 2000]);
    topo.max_retries = 2;
    create_topics_at(&brokers, &topo.topics(), 2).await;

    let mix = [("ok", 55), ("fail-1", 30), ("fail-2", 5), ("permanent", 10)];
    let Traffic {
        messages,
        fates,
        dead_expected,
    } = traffic("b", 300 * scale(), &mix, topo.max_retries, &mut rng);
    let (before, after) = messages.split_at(messages.len() / 2);
    produce_many(&brokers, &main, before).await;

    let sink = Sink::start().await;
    sink.delay_ms
        .store(20, std::sync::atomic::Ordering::Relaxed);
    let port = free_port();
    let log = dir.path().join("rebound.log");
    let group = unique("g");
    let mut args = run_args(&brokers, &topo, &group, &sink, port);
    args.extend(["--commit-interval", "1s"].map(String::from));
    let mut p = Proc::spawn(&args, port, &log, &[]);
    wait_readyz(&p, Duration::from_secs(60)).await;

    // Mid-run: some handled, retries waiting in the tiers.
    let s = sink.clone();
    eventually("a third handled", Duration::from_secs(60), || {
        let s = s.clone();
        let want = before.len() / 3;
        async move { s.count() >= want }
    })
    .await;
    let handled_at_stop = sink.count();
    let stopping = Instant::now();
    broker.down();
    let t = Instant::now();
    eprintln!(
        "broker stopped after {handled_at_stop} calls (its shutdown took {:?})",
        stopping.elapsed()
    );

    let addr = p.metrics;
    eventually(
        "/readyz 503 during the outage",
        Duration::from_secs(30),
        || async move { matches!(get(addr, "/readyz").await, Some((503, _))) },
    )
    .await;
    let not_ready_after = t.elapsed();
    tokio::time::sleep(Duration::from_secs(6).saturating_sub(t.elapsed())).await;
    assert!(
        p.running(),
        "rebound exited during the outage:\n{}",
        p.log_text()
    );
    let down_for = t.elapsed();
    broker.up();
    let t_up = Instant::now();
    eventually(
        "/readyz 200 after the outage",
        Duration::from_secs(60),
        || async move { matches!(get(addr, "/readyz").await, Some((200, _))) },
    )
    .await;
    let ready_again_after = t_up.elapsed();

    produce_many(&brokers, &main, after).await;
    wait_finished(&sink, &fates, 2, Duration::from_secs(120)).await;
    let dlq = read_dlq(&brokers, &topo, dead_expected, Duration::from_secs(60));
    assert!(p.running(), "rebound exited on its own:\n{}", p.log_text());
    let log_text = p.log_text();
    let (status, took) = p.term(Duration::from_secs(30));
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?} after {took:?}"
    );

    // Commits resumed after the outage: the group's offsets reach the end of the main topic.
    let commits = committed(&brokers, &group, &main, 2);
    assert_eq!(
        commits.iter().map(|o| o.unwrap_or(0)).sum::<i64>(),
        messages.len() as i64,
        "committed offsets {commits:?}"
    );
    for expected in ["every broker is unreachable", "brokers reachable again"] {
        assert!(
            log_text.contains(expected),
            "the log should say {expected:?}:\n{log_text}"
        );
    }
    let a = account(&fates, &sink.records(), &dlq, &topo);
    eprintln!(
        "FIGURES broker: messages={} down_s={:.1} readyz_503_after_s={:.1} readyz_200_after_restart_s={:.1} produce_retries_logged={} commit_failures_logged={} {}",
        fates.len(),
        down_for.as_secs_f64(),
        not_ready_after.as_secs_f64(),
        ready_again_after.as_secs_f64(),
        log_text.matches("produce failed; retrying").count(),
        log_text.matches("offset commit failed").count(),
        a.summary()
    );
    a.assert_exact();
}

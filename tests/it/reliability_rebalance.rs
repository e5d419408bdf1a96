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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_leave_and_join_mid_run_with_partitions_paused_and_nothing_is_lost() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed("rebalance"));
    let brokers = brokers();
    let Scenario { main, mut topo } = Scenario::create("rebal", &[1000, 2000], 6).await;
    topo.max_retries = 2;
    let mix = [("ok", 50), ("fail-1", 35), ("fail-2", 10), ("permanent", 5)];
    let Traffic {
        messages,
        fates,
        dead_expected,
    } = traffic("r", 1200 * scale(), &mix, topo.max_retries, &mut rng);

    let sink = Sink::start().await;
    sink.delay_ms.store(5, std::sync::atomic::Ordering::Relaxed);
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
    let feed = {
        let (brokers, main, messages) = (brokers.clone(), main.clone(), messages.clone());
        tokio::spawn(async move {
            for chunk in messages.chunks(100) {
                produce_many(&brokers, &main, chunk).await;
                tokio::time::sleep(Duration::from_millis(400)).await;
            }
        })
    };

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

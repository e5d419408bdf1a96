//! Soak (not in CI: `scripts/soak` runs it): steady mixed traffic through the `rebound` binary
//! for `REBOUND_SOAK_SECS` (default 600 s) at `REBOUND_SOAK_RATE` messages per second (default
//! 100), with its resident memory sampled every 10 s. After the warm-up (a fifth of the run, at
//! least 30 s) memory may not grow by more than 10%, and the run ends with the exact accounting.

use std::time::{Duration, Instant};

use crate::common::*;
use crate::rel::*;
use rand::SeedableRng;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long: run by scripts/soak"]
async fn soak_steady_mixed_traffic_memory_stays_flat_and_nothing_is_lost() {
    let secs = env_u64("REBOUND_SOAK_SECS", 600);
    let rate = env_u64("REBOUND_SOAK_RATE", 100) as usize;
    let warmup = Duration::from_secs((secs / 5).max(30));
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed("soak"));
    let brokers = brokers();
    let main = unique("soak");
    // A 5 s last tier: the soak (scripts/soak, not CI) keeps messages parked across many cycles.
    let mut topo = topology(&main, &[1000, 5000]);
    topo.max_retries = 3;
    create_topology(&topo, 3).await;
    let mix = [
        ("ok", 70),
        ("fail-1", 15),
        ("fail-2", 5),
        ("always", 2),
        ("permanent", 8),
    ];
    let Traffic {
        messages,
        fates,
        dead_expected,
    } = traffic("k", secs as usize * rate, &mix, topo.max_retries, &mut rng);

    let sink = Sink::start().await;
    let dir = workdir("soak");
    let port = free_port();
    let args = run_args(&brokers, &topo, &unique("g"), &sink, port);
    let mut p = Proc::spawn(&args, port, &dir.path().join("rebound.log"), &[]);
    wait_readyz(&p, Duration::from_secs(60)).await;

    // One second's worth of messages every second.
    let feed = {
        let (brokers, main, messages) = (brokers.clone(), main.clone(), messages.clone());
        tokio::spawn(async move {
            let start = tokio::time::Instant::now();
            for (i, second) in messages.chunks(rate).enumerate() {
                produce_many(&brokers, &main, second).await;
                tokio::time::sleep_until(start + Duration::from_secs(i as u64 + 1)).await;
            }
        })
    };

    let started = Instant::now();
    let mut samples: Vec<(u64, u64, usize)> = Vec::new(); // (s, rss KiB, handler calls)
    eprintln!("   t_s  rss_kib  calls  ready");
    while !feed.is_finished() {
        tokio::time::sleep(Duration::from_secs(10)).await;
        let rss = p.rss_kib().expect("rebound is running");
        let ready = matches!(get(p.metrics, "/readyz").await, Some((200, _)));
        let t = started.elapsed().as_secs();
        eprintln!("{t:>6} {rss:>8} {:>6} {ready}", sink.count());
        samples.push((t, rss, sink.count()));
        assert!(p.running(), "rebound exited:\n{}", p.log_text());
    }
    feed.await.unwrap();
    wait_finished(&sink, &fates, 3, Duration::from_secs(180)).await;
    let dlq = read_dlq(&brokers, &topo, dead_expected, Duration::from_secs(120));
    let (status, took) = p.term(Duration::from_secs(30));
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?} after {took:?}"
    );

    let baseline = samples
        .iter()
        .rfind(|(t, _, _)| *t <= warmup.as_secs())
        .map(|(_, rss, _)| *rss)
        .expect("a sample within the warm-up");
    let after: Vec<u64> = samples
        .iter()
        .filter(|(t, _, _)| *t > warmup.as_secs())
        .map(|(_, rss, _)| *rss)
        .collect();
    let max_after = after.iter().copied().max().unwrap_or(baseline);
    let last = after.last().copied().unwrap_or(baseline);
    let growth = (max_after as f64 / baseline as f64 - 1.0) * 100.0;
    let a = account(&fates, &sink.records(), &dlq, &topo);
    eprintln!(
        "FIGURES soak: duration_s={secs} rate={rate}/s messages={} warmup_s={} rss_kib_baseline={baseline} rss_kib_max_after_warmup={max_after} rss_kib_last={last} growth_pct={growth:.1} samples={} {}",
        fates.len(),
        warmup.as_secs(),
        samples.len(),
        a.summary()
    );
    a.assert_exact();
    assert!(
        growth <= 10.0,
        "resident memory grew {growth:.1}% after the warm-up ({baseline} -> {max_after} KiB)"
    );
}

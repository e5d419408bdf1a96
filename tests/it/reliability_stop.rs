//! Graceful stop: SIGTERM at random moments of a run, then a restart. Everything finished before
//! the stop is committed, so nothing is handled twice; the process exits 0 within its shutdown
//! bound, also when a handler call is still hanging (that one message is handed back and handled
//! again after the restart: the only repeat).

use std::time::{Duration, Instant};

use crate::common::*;
use crate::rel::*;
use rand::{Rng, SeedableRng};

const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(3);

fn args_for(brokers: &str, topo: &rebound::Topology, group: &str, sink: &Sink) -> Vec<String> {
    let mut args = run_args(brokers, topo, group, sink, 0);
    args.extend(
        [
            "--commit-interval",
            "1s",
            "--shutdown-timeout",
            "3s",
            "--handler-timeout",
            "30s",
        ]
        .map(String::from),
    );
    args
}

fn start(args: &[String], log: &std::path::Path) -> Proc {
    let port = free_port();
    let mut args = args.to_vec();
    let at = args.iter().position(|a| a == "--metrics-addr").unwrap() + 1;
    args[at] = format!("127.0.0.1:{port}");
    Proc::spawn(&args, port, log, &[])
}

/// SIGTERM; the process must exit 0 within the shutdown bound. Returns how long it took.
fn stop(p: &mut Proc, bound: Duration) -> Duration {
    let (status, took) = p.term(bound + Duration::from_secs(20));
    assert!(
        status.is_some_and(|s| s.success()),
        "exit after SIGTERM: {status:?} after {took:?}\n{}",
        p.log_text()
    );
    assert!(
        took <= bound,
        "SIGTERM to exit took {took:?}, more than the bound {bound:?}"
    );
    took
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_run_commits_everything_finished_so_a_restart_repeats_nothing() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed("stop"));
    let brokers = brokers();
    let Scenario { main, mut topo } = Scenario::create("stop", &[300, 600], 3).await;
    topo.max_retries = 2;
    let mix = [
        ("ok", 70),
        ("fail-1", 15),
        ("fail-2", 5),
        ("always", 3),
        ("permanent", 7),
    ];
    let Traffic {
        messages,
        fates,
        dead_expected,
    } = traffic("s", 1500 * scale(), &mix, topo.max_retries, &mut rng);

    let sink = Sink::start().await;
    // A little latency per call keeps several calls in flight at every stop.
    sink.delay_ms.store(5, std::sync::atomic::Ordering::Relaxed);
    let dir = workdir("stop");
    let log = dir.path().join("rebound.log");
    let args = args_for(&brokers, &topo, &unique("g"), &sink);
    let feed = {
        let (brokers, main, messages) = (brokers.clone(), main.clone(), messages.clone());
        tokio::spawn(async move {
            for chunk in messages.chunks(100) {
                produce_many(&brokers, &main, chunk).await;
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        })
    };

    let mut stops = Vec::new();
    for _ in 0..3 * scale() {
        let mut p = start(&args, &log);
        wait_readyz(&p, Duration::from_secs(60)).await;
        // Progress — unless every id already reached its end (nothing is left to handle).
        let before = sink.count();
        wait_progress("progress", &sink, before + 20, &fates, topo.max_retries).await;
        tokio::time::sleep(Duration::from_millis(rng.random_range(100..1500))).await;
        let in_flight = get(p.metrics, "/metrics")
            .await
            .map(|(_, m)| metric_sum(&m, "rebound_in_flight"))
            .unwrap_or(0.0);
        let took = stop(&mut p, SHUTDOWN_TIMEOUT);
        stops.push((took, in_flight));
    }

    let mut p = start(&args, &log);
    feed.await.unwrap();
    let s = sink.clone();
    eventually("every id handled", Duration::from_secs(120), || {
        let s = s.clone();
        let want = fates.len();
        async move {
            let mut ids: Vec<String> = s
                .records()
                .into_iter()
                .filter(|r| r.status == 200 || r.status == 400 || r.attempt >= 2)
                .map(|r| r.id)
                .collect();
            ids.sort();
            ids.dedup();
            ids.len() >= want
        }
    })
    .await;
    let dlq = read_dlq(&brokers, &topo, dead_expected, Duration::from_secs(60));
    let last = stop(&mut p, SHUTDOWN_TIMEOUT);

    let a = account(&fates, &sink.records(), &dlq, &topo);
    eprintln!(
        "FIGURES stop: messages={} sigterms={} stop_s(in_flight)={:?} last_stop_ms={} {}",
        fates.len(),
        stops.len() + 1,
        stops
            .iter()
            .map(|(t, n)| format!("{:.2}({n})", t.as_secs_f64()))
            .collect::<Vec<_>>(),
        last.as_millis(),
        a.summary()
    );
    a.assert_exact();
    assert!(
        a.repeats.is_empty(),
        "a graceful stop commits everything it finished, yet {} records were handled twice: {:?}",
        a.repeats.len(),
        &a.repeats[..a.repeats.len().min(10)]
    );
    assert_eq!(a.duplicate_successes + a.duplicate_dead, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_a_hanging_handler_call_exits_within_the_bound_and_hands_it_back() {
    let brokers = brokers();
    let Scenario { main, topo } = Scenario::create("stophang", &[300], 2).await;
    let mut messages: Vec<Out> = (0..50)
        .map(|i| Out::new(&format!("k{i}"), &format!("h-{i}:ok")))
        .collect();
    messages.push(Out::new("stuck", "h-stuck:hang"));
    let fates = fates_of(&messages, topo.max_retries);
    produce_many(&brokers, &main, &messages).await;

    let sink = Sink::start().await;
    let dir = workdir("stop");
    let log = dir.path().join("rebound.log");
    let args = args_for(&brokers, &topo, &unique("g"), &sink);
    let mut p = start(&args, &log);
    let s = sink.clone();
    eventually(
        "the hanging call and the rest",
        Duration::from_secs(60),
        || {
            let s = s.clone();
            async move { s.count() >= 51 }
        },
    )
    .await;
    // Let the 50 others be committed, then stop while the hanging call is still in flight.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let t = Instant::now();
    // Bound: the shutdown timeout for in-flight work, then commit and leave the group.
    let took = stop(&mut p, SHUTDOWN_TIMEOUT + Duration::from_secs(3));
    assert!(
        took >= SHUTDOWN_TIMEOUT,
        "it should have waited for the hanging call ({:?})",
        t.elapsed()
    );
    assert!(p.log_text().contains("handing back"), "{}", p.log_text());

    sink.release();
    let mut p = start(&args, &log);
    let s = sink.clone();
    eventually(
        "the handed-back message handled",
        Duration::from_secs(60),
        || {
            let s = s.clone();
            async move { s.succeeded().contains("h-stuck:hang") }
        },
    )
    .await;
    stop(&mut p, SHUTDOWN_TIMEOUT);

    let a = account(&fates, &sink.records(), &[], &topo);
    eprintln!(
        "FIGURES stop-hang: stop_with_hanging_call_ms={} {}",
        took.as_millis(),
        a.summary()
    );
    a.assert_exact();
    let repeated: Vec<&String> = a.repeats.iter().map(|((topic, _, _), _)| topic).collect();
    assert_eq!(
        a.repeats.len(),
        1,
        "only the handed-back call repeats: {:?}",
        a.repeats
    );
    assert_eq!(repeated[0], &main);
}

/// A service whose future is dropped without its shutdown (a panicking test, a task aborted)
/// releases its consumer: the drop returns. Its partitions' stored-offset lists used to be
/// dropped after the consumer, whose destroy then waited on them for ever, and a failing
/// in-process test hung the whole suite. The service runs on a runtime of its own, shut down
/// in the background at the end, so that a drop that never returns fails this test instead of
/// hanging it.
#[test]
fn a_service_dropped_without_its_shutdown_releases_its_consumer() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let dropped = rt.block_on(async {
        let Scenario { main, topo } = Scenario::create("dropped", &[200], 2).await;
        let recording = Recording::scripted();
        let svc = crate::common::start(
            config(topo, &unique("g")),
            std::sync::Arc::new(recording.clone()),
        );
        wait_ready(&svc).await;
        // Handled and stored: each partition's stored-offset list is in use.
        let messages: Vec<Out> = (0..4)
            .map(|i| Out::new(&format!("k{i}"), &format!("d-{i}:ok")).partition(i % 2))
            .collect();
        produce(&main, &messages).await;
        let r = recording.clone();
        wait_until(
            "every message handled",
            Duration::from_secs(30),
            move || r.records().iter().filter(|h| h.status == 200).count() == 4,
        )
        .await;
        svc.task.abort();
        let started = Instant::now();
        let joined = tokio::time::timeout(Duration::from_secs(30), svc.task).await;
        (joined.is_ok(), started.elapsed())
    });
    rt.shutdown_background();
    let (returned, took) = dropped;
    assert!(
        returned,
        "the service's drop did not return within {took:?}: its consumer never finished closing"
    );
    eprintln!("FIGURES dropped: drop_ms={}", took.as_millis());
}

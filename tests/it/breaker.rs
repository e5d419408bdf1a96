//! The circuit breaker with its **default** settings against the real broker (issue 13): it
//! judges the downstream, not single messages.
//!
//! 1. mixes with poison messages never open it (and cost nothing: the run with the breaker off
//!    is measured beside it and printed as `FIGURES`);
//! 2. an outage opens it within 5 s and 50 calls, nothing is routed because of it, fresh work
//!    probes first, and it closes within a cool-down and the probes after recovery; a downstream
//!    that hangs (every call ends at the handler timeout, 10 s) opens it within 5 s too;
//! 3. an outage while only due retries flow still opens it, before the retries are exhausted;
//! 4. a partial outage (half the calls fail) neither opens it nor floods the tiers.
//!
//! Tiers are 1 s and 2 s everywhere: retries must come due within a test. Every other setting is
//! the default, the breaker's included (30 s cool-down, so 2 and 3 take about a minute).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::*;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rebound::breaker::BreakerConfig;
use rebound::handler::{Handler, Message, Outcome};
use rebound::headers as h;
use rebound::metrics::Metrics;
use rebound::Topology;

const TIERS: &[u64] = &[1000, 2000];
const HEALTHY: u8 = 0;
const DOWN: u8 = 1;
const HALF: u8 = 2;
/// Every call hangs past the handler timeout (a downstream that accepts and never answers).
const HANG: u8 = 3;

/// One handler call, as the downstream saw it.
#[derive(Debug, Clone)]
struct Seen {
    id: String,
    attempt: u32,
    fresh: bool,
    at: Instant,
    transient: bool,
}

/// A downstream that answers as each payload's script says (`ID:BEHAVIOUR`, see
/// `crate::common::Recording`) while healthy, fails every call while down, and every other call while
/// half down.
#[derive(Clone)]
struct Downstream {
    main: String,
    mode: Arc<AtomicU8>,
    n: Arc<AtomicU64>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Downstream {
    fn new(main: &str) -> Downstream {
        Downstream {
            main: main.to_string(),
            mode: Arc::new(AtomicU8::new(HEALTHY)),
            n: Arc::new(AtomicU64::new(0)),
            seen: Arc::default(),
        }
    }

    fn set(&self, mode: u8) {
        self.mode.store(mode, Ordering::SeqCst);
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// Ids that succeeded, with how many times.
    fn successes(&self) -> HashMap<String, usize> {
        let mut m = HashMap::new();
        for s in self.seen().into_iter().filter(|s| !s.transient) {
            if behaviour(&s.id) != "permanent" {
                *m.entry(s.id).or_default() += 1;
            }
        }
        m
    }
}

fn behaviour(id: &str) -> &str {
    id.split_once(':').map_or("ok", |(_, b)| b)
}

#[async_trait::async_trait]
impl Handler for Downstream {
    async fn handle(&self, m: &Message) -> Outcome {
        let id = String::from_utf8_lossy(m.payload()).into_owned();
        let n = self.n.fetch_add(1, Ordering::SeqCst);
        if self.mode.load(Ordering::SeqCst) == HANG {
            self.seen.lock().unwrap().push(Seen {
                id,
                attempt: m.attempt,
                fresh: m.topic == self.main,
                at: Instant::now(),
                transient: true,
            });
            // The handler timeout (10 s by default) ends the call as a transient failure.
            tokio::time::sleep(Duration::from_secs(600)).await;
            return Outcome::transient("hung", "unreachable: the timeout fires first");
        }
        let outcome = match self.mode.load(Ordering::SeqCst) {
            DOWN => Outcome::transient("down", "the downstream is down"),
            HALF if n % 2 == 0 => Outcome::transient("down", "half the calls fail"),
            _ => outcome_for(behaviour(&id), m.attempt),
        };
        self.seen.lock().unwrap().push(Seen {
            id,
            attempt: m.attempt,
            fresh: m.topic == self.main,
            at: Instant::now(),
            transient: matches!(outcome, Outcome::Transient(_)),
        });
        outcome
    }
}

/// The breaker's state over time, sampled every 5 ms (an open breaker stays open for its
/// 30 s cool-down, so no opening is missed).
struct Watch {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Vec<(Instant, i64)>>,
}

impl Watch {
    fn start(m: Arc<Metrics>) -> Watch {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let task = tokio::spawn(async move {
            let mut log = vec![(Instant::now(), m.circuit_state.get())];
            loop {
                // One more sample after the stop, so that the last change is seen.
                let stopping = s.load(Ordering::Relaxed);
                let now = m.circuit_state.get();
                if log.last().is_some_and(|(_, last)| *last != now) {
                    log.push((Instant::now(), now));
                }
                if stopping {
                    break log;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        Watch { stop, task }
    }

    /// Every change: (when, 0 closed / 1 half-open / 2 open).
    async fn finish(self) -> Vec<(Instant, i64)> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap()
    }
}

/// Waits for the partitions. Longer than `crate::common::wait_ready`: the first group on a fresh broker
/// waits for `__consumer_offsets` to be created (47 s was seen on a loaded 2-core machine).
async fn wait_assigned(r: &mut Running) {
    let until = Instant::now() + Duration::from_secs(120);
    while !r.metrics.health.assigned.load(Ordering::Relaxed) {
        if r.task.is_finished() {
            panic!("rebound ended before assignment: {:?}", (&mut r.task).await);
        }
        assert!(Instant::now() < until, "no assignment within 120 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn opened(log: &[(Instant, i64)]) -> bool {
    log.iter().any(|(_, s)| *s == 2)
}

fn records(ids: &[String]) -> Vec<Out> {
    ids.iter()
        .enumerate()
        .map(|(i, id)| Out::new(&format!("k{i}"), id))
        .collect()
}

/// `n` messages `{prefix}{i}:{behaviour}` as a tier holds them: failed `attempt` times, due at
/// `due`.
fn retries(prefix: &str, behaviour: &str, n: usize, attempt: u32, due: &str) -> Vec<Out> {
    (0..n)
        .map(|i| {
            Out::new(&format!("{prefix}{i}"), &format!("{prefix}{i}:{behaviour}"))
                .header(h::ATTEMPT, &attempt.to_string())
                .header(h::PROCESS_AFTER, due)
                .header(h::FIRST_FAILED_AT, due)
        })
        .collect()
}

/// Produces `per_tick` ok messages to `main` every 50 ms until `stop`; returns how many.
fn steady(main: &str, per_tick: usize, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<usize> {
    let main = main.to_string();
    tokio::spawn(async move {
        let producer = producer();
        let mut pace = tokio::time::interval(Duration::from_millis(50));
        let mut n = 0;
        while !stop.load(Ordering::Relaxed) {
            pace.tick().await;
            for _ in 0..per_tick {
                let out = Out::new(&format!("k{n}"), &format!("{main}-{n}:ok"));
                producer
                    .send(out.record(&main), Duration::from_secs(10))
                    .await
                    .map_err(|(e, _)| e)
                    .expect("produce");
                n += 1;
            }
        }
        n
    })
}

/// `counts` of (behaviour, n) as ids, in a seeded random order.
fn mix(prefix: &str, counts: &[(&str, usize)]) -> Vec<String> {
    let mut ids: Vec<String> = counts
        .iter()
        .flat_map(|(b, n)| (0..*n).map(move |i| format!("{prefix}{b}{i}:{b}")))
        .collect();
    ids.shuffle(&mut rand::rngs::StdRng::seed_from_u64(13));
    ids
}

fn dead_expected(id: &str, max_retries: u32) -> bool {
    match behaviour(id) {
        "permanent" | "always" => true,
        "fail-once" => max_retries < 1,
        b => b
            .strip_prefix("fail-")
            .and_then(|n| n.parse::<u32>().ok())
            .is_some_and(|n| n > max_retries),
    }
}

fn dlq_total(m: &Metrics) -> u64 {
    rebound::topology::DlqReason::ALL
        .iter()
        .map(|r| m.dlq.with_label_values(&[r.as_str()]).get())
        .sum()
}

fn tier_copies(m: &Metrics, topo: &Topology) -> u64 {
    let stages: Vec<&str> = std::iter::once("main")
        .chain(topo.tiers.iter().map(|t| t.label.as_str()))
        .collect();
    let mut n = 0;
    for from in &stages {
        for t in &topo.tiers {
            n += m.routed.with_label_values(&[from, t.label.as_str()]).get();
        }
    }
    n
}

/// Runs the scripted `ids` through rebound with `breaker` until each reached its end; returns
/// how long that took from the first call and the breaker's state changes. Asserts every id is
/// accounted for: the ones meant to succeed succeeded once, the others are in the DLQ.
async fn run_mix(ids: &[String], breaker: BreakerConfig) -> (Duration, Vec<(Instant, i64)>) {
    let Scenario { main, topo } = Scenario::create("bmix", TIERS, 3).await;
    produce(&main, &records(ids)).await;
    let down = Downstream::new(&main);
    let mut cfg = config(topo.clone(), &unique("g"));
    cfg.breaker = breaker;
    let svc = start(cfg, Arc::new(down.clone()));
    let watch = Watch::start(svc.metrics.clone());
    let dead: HashSet<&String> = ids
        .iter()
        .filter(|id| dead_expected(id, topo.max_retries))
        .collect();
    let dead_n = dead.len();
    let live = ids.len() - dead_n;
    let (d, m) = (down.clone(), svc.metrics.clone());
    wait_until(
        "every message at its end",
        Duration::from_secs(60),
        move || d.successes().len() == live && dlq_total(&m) as usize == dead_n,
    )
    .await;
    let seen = down.seen();
    let first = seen.iter().map(|s| s.at).min().unwrap();
    let last = seen.iter().map(|s| s.at).max().unwrap();
    let log = watch.finish().await;
    let dlq = read_topic(&topo.dlq, dead_n, Duration::from_secs(30));
    svc.stop().await;
    let in_dlq: HashSet<String> = dlq.iter().map(Got::payload_str).collect();
    assert_eq!(
        in_dlq,
        ids.iter()
            .filter(|id| dead_expected(id, topo.max_retries))
            .cloned()
            .collect::<HashSet<_>>()
    );
    assert_eq!(dlq.len(), in_dlq.len(), "each dead message once");
    let twice: Vec<_> = down
        .successes()
        .into_iter()
        .filter(|(_, n)| *n > 1)
        .collect();
    assert!(twice.is_empty(), "succeeded more than once: {twice:?}");
    (last - first, log)
}

async fn mix_never_opens_and_costs_nothing(name: &str, ids: Vec<String>) {
    let (with, log) = run_mix(&ids, BreakerConfig::default()).await;
    assert!(!opened(&log), "{name}: the default breaker opened: {log:?}");
    // The same run with the breaker off, for the comparison (printed, not asserted: timing on a
    // shared machine is not a test).
    let (without, _) = run_mix(&ids, BreakerConfig::disabled()).await;
    eprintln!(
        "FIGURES breaker {name}: messages={} default_breaker={:.2}s breaker_off={:.2}s ratio={:.3}",
        ids.len(),
        with.as_secs_f64(),
        without.as_secs_f64(),
        with.as_secs_f64() / without.as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_mix_of_1500_never_opens_the_breaker() {
    let ids = mix("a", &[("ok", 1125), ("fail-once", 300), ("always", 75)]);
    mix_never_opens_and_costs_nothing("mix-1500", ids).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mix_of_40_from_the_issue_never_opens_the_breaker() {
    let ids = mix(
        "b",
        &[
            ("ok", 20),
            ("permanent", 5),
            ("fail-once", 5),
            ("fail-2", 5),
            ("always", 5),
        ],
    );
    mix_never_opens_and_costs_nothing("mix-40", ids).await;
}

/// rebound with the default breaker, a healthy downstream and 200 messages a second to the
/// main topic, once the downstream has seen 300 calls.
struct UnderTraffic {
    topo: Topology,
    down: Downstream,
    svc: Running,
    watch: Watch,
    stop_producing: Arc<AtomicBool>,
    traffic: tokio::task::JoinHandle<usize>,
}

impl UnderTraffic {
    async fn start(prefix: &str) -> UnderTraffic {
        let Scenario { main, topo } = Scenario::create(prefix, TIERS, 3).await;
        let down = Downstream::new(&main);
        let mut svc = start(config(topo.clone(), &unique("g")), Arc::new(down.clone()));
        wait_assigned(&mut svc).await;
        let watch = Watch::start(svc.metrics.clone());
        // The messages keep coming during an outage (they wait in the main topic).
        let stop_producing = Arc::new(AtomicBool::new(false));
        let traffic = steady(&main, 10, stop_producing.clone());
        let d = down.clone();
        wait_until("300 calls", Duration::from_secs(60), move || {
            d.count() >= 300
        })
        .await;
        UnderTraffic {
            topo,
            down,
            svc,
            watch,
            stop_producing,
            traffic,
        }
    }

    /// Stops producing and waits until every message produced has succeeded; returns the
    /// breaker's state changes.
    async fn finish(self, within: Duration) -> (Running, Vec<(Instant, i64)>) {
        self.stop_producing.store(true, Ordering::Relaxed);
        let n = self.traffic.await.unwrap();
        let d = self.down.clone();
        let ok = waited(within, Duration::from_millis(100), move || {
            let d = d.clone();
            async move { d.successes().len() == n }
        })
        .await;
        if !ok {
            // What a stall looks like: calls per second since the first, and how many never
            // succeeded (a loop that stopped starting work shows as calls that end early).
            let succeeded = self.down.successes();
            let seen = self.down.seen();
            let t0 = seen.first().map_or_else(Instant::now, |s| s.at);
            let mut per_second = std::collections::BTreeMap::new();
            for s in &seen {
                *per_second
                    .entry(((s.at - t0).as_secs(), s.fresh, s.transient))
                    .or_insert(0) += 1;
            }
            panic!(
                "timed out after {within:?}: {} of {n} messages succeeded; calls per (second, fresh, transient): {per_second:?}",
                succeeded.len()
            );
        }
        (self.svc, self.watch.finish().await)
    }
}

/// The downstream stops answering: every call hangs until the handler timeout (10 s). The
/// breaker must not wait for those timeouts: calls in the handler longer than
/// `--breaker-slow-call` (3 s) count as failures, so it opens within 5 s and 50 calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_downstream_opens_the_breaker_before_the_handler_timeout() {
    let run = UnderTraffic::start("bhang").await;
    let (down, m) = (run.down.clone(), run.svc.metrics.clone());
    let before = down.count();
    down.set(HANG);
    let outage = Instant::now();
    wait_until("the breaker opens", Duration::from_secs(20), move || {
        m.circuit_state.get() == 2
    })
    .await;
    let opened_after = outage.elapsed();
    let calls = down.count() - before;
    down.set(HEALTHY);
    // The hung calls end at their timeout and go to a tier; after the cool-down every message
    // succeeds.
    let (svc, log) = run.finish(Duration::from_secs(90)).await;
    svc.stop().await;
    eprintln!(
        "FIGURES breaker hang: opened_after={opened_after:?} calls_before_open={calls} changes={:?}",
        log.iter().map(|(t, s)| (t.saturating_duration_since(outage).as_millis(), *s)).collect::<Vec<_>>()
    );
    assert!(
        opened_after <= Duration::from_secs(5),
        "opened within 5 s, not at the handler timeout: {opened_after:?}"
    );
    assert!(calls <= 50, "opened within 50 calls: {calls}");
}

/// The downstream fails every call for 32 s (the issue's 30 s, and just past the first
/// cool-down, so that one probe round fails) while a backlog waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_opens_the_breaker_fast_probes_fresh_work_and_loses_nothing() {
    let run = UnderTraffic::start("boutage").await;
    let (down, topo) = (run.down.clone(), run.topo.clone());
    let metrics = run.svc.metrics.clone();
    down.set(DOWN);
    let outage = Instant::now();
    let m = metrics.clone();
    wait_until("the breaker opens", Duration::from_secs(10), move || {
        m.circuit_state.get() == 2
    })
    .await;
    let outage_for = Duration::from_secs(32);
    tokio::time::sleep_until((outage + outage_for).into()).await;
    down.set(HEALTHY);
    let recovered = Instant::now();
    let m = metrics.clone();
    wait_until("the breaker closed", Duration::from_secs(40), move || {
        m.circuit_state.get() == 0
    })
    .await;
    let (svc, log) = run.finish(Duration::from_secs(60)).await;
    let copies = tier_copies(&svc.metrics, &topo);
    let dead = dlq_total(&svc.metrics);
    svc.stop().await;

    let seen = down.seen();
    let first_open = log.iter().find(|(_, s)| *s == 2).unwrap().0;
    let closed = log.iter().rev().find(|(_, s)| *s == 0).unwrap().0;
    let failed_before_open = seen
        .iter()
        .filter(|s| s.transient && s.at <= first_open)
        .count();
    eprintln!(
        "FIGURES breaker outage: opened_after={:?} failed_calls_before_open={failed_before_open} closed_after_recovery={:?} changes={:?}",
        first_open - outage,
        closed - recovered,
        log.iter().map(|(t, s)| (t.saturating_duration_since(outage).as_millis(), *s)).collect::<Vec<_>>()
    );
    assert!(
        first_open - outage <= Duration::from_secs(5),
        "opened within 5 s"
    );
    assert!(failed_before_open <= 50, "opened within 50 calls");
    // Open, half-open (probes fail: still down), open, half-open (recovered; the watch may miss
    // it when the first probe closes the breaker within its 5 ms), closed.
    let states: Vec<i64> = log.iter().map(|(_, s)| *s).collect();
    assert!(
        states == [0, 2, 1, 2, 1, 0] || states == [0, 2, 1, 2, 0],
        "{log:?}"
    );
    assert!(
        closed - recovered <= BreakerConfig::default().cooldown + Duration::from_secs(2),
        "closed within a cool-down and the probes after recovery"
    );
    // Probes: main-topic messages first although due retries were waiting; a failed round is
    // `probes` calls. (The watch sees a change up to a few ms late: hence the slack.)
    let slack = Duration::from_millis(100);
    for w in log.windows(3) {
        if w[1].1 == 1 {
            let first = seen.iter().find(|s| s.at >= w[1].0 - slack).unwrap();
            assert!(first.fresh, "fresh work probes first: {first:?}");
        }
        if w[1].1 == 1 && w[2].1 == 2 {
            let round: Vec<&Seen> = seen
                .iter()
                .filter(|s| s.at >= w[1].0 - slack && s.at <= w[2].0)
                .collect();
            assert_eq!(round.len(), 3, "a failed round: {round:?}");
            assert!(round.iter().all(|s| s.fresh && s.transient), "{round:?}");
        }
        if w[1].1 == 2 {
            let calls = seen
                .iter()
                .filter(|s| s.at > w[1].0 + slack && s.at < w[2].0 - slack)
                .count();
            assert_eq!(calls, 0, "calls while open");
        }
    }
    // Nothing routed because of the breaker: one tier copy per failed call, none dead.
    let failed = seen.iter().filter(|s| s.transient).count() as u64;
    assert_eq!(copies, failed, "tier copies are the failed calls");
    assert_eq!(dead, 0, "nothing exhausted");
    assert!(down.successes().values().all(|n| *n == 1));
}

/// Retries waiting in the first tier come due while the main topic is idle and the downstream
/// is down. One retry allowed (`max_retries` 1): a retry that fails now is exhausted into the
/// DLQ, which is what the breaker must stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_with_only_retries_flowing_opens_the_breaker_before_they_are_exhausted() {
    let Scenario { main, mut topo } = Scenario::create("bidle", TIERS, 3).await;
    topo.max_retries = 1;
    let n = 100;
    let now = h::format_time(chrono::Utc::now());
    produce(&topo.tiers[0].topic, &retries("r", "ok", n, 1, &now)).await;
    let down = Downstream::new(&main);
    down.set(DOWN);
    let svc = start(config(topo.clone(), &unique("g")), Arc::new(down.clone()));
    let watch = Watch::start(svc.metrics.clone());
    let m = svc.metrics.clone();
    wait_until("the breaker opens", Duration::from_secs(30), move || {
        m.circuit_state.get() == 2
    })
    .await;
    down.set(HEALTHY);
    let recovered = Instant::now();
    let d = down.clone();
    wait_until(
        "every retry succeeded or dead",
        Duration::from_secs(60),
        move || d.successes().len() + d.seen().iter().filter(|s| s.transient).count() == n,
    )
    .await;
    let m = svc.metrics.clone();
    wait_until("the breaker closed", Duration::from_secs(5), move || {
        m.circuit_state.get() == 0
    })
    .await;
    let log = watch.finish().await;
    let failed = down.seen().iter().filter(|s| s.transient).count();
    let dlq = read_topic(&topo.dlq, failed, Duration::from_secs(10));
    svc.stop().await;

    let seen = down.seen();
    let failed = seen.iter().filter(|s| s.transient).count();
    let closed = log.iter().rev().find(|(_, s)| *s == 0).unwrap().0;
    eprintln!(
        "FIGURES breaker retries-only outage: failed_before_open={failed} dead={} closed_after_recovery={:?}",
        dlq.len(),
        closed - recovered
    );
    assert!(seen.iter().all(|s| !s.fresh && s.attempt == 1));
    assert!(
        failed <= 20,
        "{failed} retries failed: the breaker opened late"
    );
    assert_eq!(dlq.len(), failed, "only the retries that failed are dead");
    assert_eq!(
        down.successes().len(),
        n - failed,
        "the rest waited and succeeded"
    );
    let states: Vec<i64> = log.iter().map(|(_, s)| *s).collect();
    assert_eq!(states, [0, 2, 1, 0], "{log:?}");
    assert!(
        closed - recovered
            <= BreakerConfig::default().cooldown
                + rebound::breaker::FRESH_PROBE_GRACE
                + Duration::from_secs(2),
        "due retries probe when there is no fresh work"
    );
}

/// Half the calls fail (every other one) for 10 s of steady traffic (the issue's 60 s shortened:
/// at 200 messages a second, 10 s is 40 full windows). Guarantees: the breaker never opens;
/// nothing stalls (every message is at its end within the tiers' 3 s and 5 s of slack after it
/// was produced); at most one tier copy per message on average (p/(1-p) = 1 at p = 1/2) and
/// exactly one per failed call that had a try left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_outage_neither_opens_the_breaker_nor_floods_the_tiers() {
    let Scenario { main, topo } = Scenario::create("bhalf", TIERS, 3).await;
    let down = Downstream::new(&main);
    down.set(HALF);
    let mut svc = start(config(topo.clone(), &unique("g")), Arc::new(down.clone()));
    wait_assigned(&mut svc).await;
    let watch = Watch::start(svc.metrics.clone());
    let producer = producer();
    let n = 2000;
    let begin = Instant::now();
    let mut pace = tokio::time::interval(Duration::from_millis(50));
    for batch in 0..n / 10 {
        pace.tick().await;
        for j in 0..10 {
            let i = batch * 10 + j;
            let out = Out::new(&format!("k{i}"), &format!("h{i}:ok"));
            producer
                .send(out.record(&main), Duration::from_secs(10))
                .await
                .map_err(|(e, _)| e)
                .expect("produce");
        }
    }
    let produced = begin.elapsed();
    let (d, m, t) = (down.clone(), svc.metrics.clone(), topo.clone());
    let max_retries = topo.max_retries as usize;
    wait_until(
        "every message at its end",
        Duration::from_secs(30),
        move || {
            let dead = dlq_total(&m) as usize;
            d.successes().len() + dead == n
                && tier_copies(&m, &t) as usize + dead == {
                    d.seen().iter().filter(|s| s.transient).count()
                }
        },
    )
    .await;
    let finished = begin.elapsed();
    let log = watch.finish().await;
    let copies = tier_copies(&svc.metrics, &topo);
    let dead = dlq_total(&svc.metrics);
    svc.stop().await;

    let seen = down.seen();
    let failed = seen.iter().filter(|s| s.transient).count() as u64;
    eprintln!(
        "FIGURES breaker partial outage: messages={n} calls={} failed={failed} tier_copies={copies} dead={dead} produced_in={produced:?} finished_in={finished:?}",
        seen.len()
    );
    assert!(!opened(&log), "the breaker opened: {log:?}");
    assert!(
        finished <= produced + Duration::from_secs(3 + 5),
        "stalled: {finished:?} for {produced:?} of traffic"
    );
    assert!(copies <= n as u64, "more than one tier copy per message");
    assert_eq!(
        copies + dead,
        failed,
        "one copy per failed call, or the DLQ"
    );
    let by_id = seen.iter().fold(HashMap::<&str, usize>::new(), |mut m, s| {
        *m.entry(s.id.as_str()).or_default() += 1;
        m
    });
    assert!(by_id.values().all(|c| *c <= 1 + max_retries));
}

/// The issue's complaint: poison retries (they fail on every try, and nothing else flows) open
/// the breaker of an idle topic, as an outage would. Then fresh work must close it at the first
/// probe, not wait behind the poison: main-topic messages probe first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_work_closes_a_breaker_that_poison_retries_opened_at_the_first_probe() {
    let Scenario { main, mut topo } = Scenario::create("bpoison", TIERS, 3).await;
    // Many tries, so that the poison keeps coming back due while the breaker is open.
    topo.max_retries = 20;
    let now = h::format_time(chrono::Utc::now());
    produce(&topo.tiers[0].topic, &retries("p", "always", 40, 1, &now)).await;
    // More poison, read at once and held until due 15 s later, while the breaker is open: it
    // waits at the front of the queue when the breaker half-opens.
    let later = h::format_time(chrono::Utc::now() + chrono::Duration::seconds(15));
    produce(&topo.tiers[1].topic, &retries("q", "always", 6, 2, &later)).await;
    let down = Downstream::new(&main);
    let svc = start(config(topo.clone(), &unique("g")), Arc::new(down.clone()));
    let watch = Watch::start(svc.metrics.clone());
    let m = svc.metrics.clone();
    wait_until(
        "the poison opens the breaker",
        Duration::from_secs(120),
        move || m.circuit_state.get() == 2,
    )
    .await;
    let opened_at = Instant::now();
    let fresh: Vec<String> = (0..5).map(|i| format!("f{i}:ok")).collect();
    produce(&main, &records(&fresh)).await;
    let d = down.clone();
    wait_until(
        "the fresh messages succeeded",
        Duration::from_secs(60),
        move || d.successes().len() == 5,
    )
    .await;
    let done_at = Instant::now();
    let log = watch.finish().await;
    svc.stop().await;

    let seen = down.seen();
    // Nothing is called while open; the watch sees the half-open up to a few ms late.
    let half_open = log.iter().find(|(_, s)| *s == 1).unwrap().0;
    let first_probe = seen
        .iter()
        .find(|s| s.at >= half_open - Duration::from_millis(100))
        .unwrap();
    eprintln!(
        "FIGURES breaker poison-only: fresh_done_after_open={:?} changes={:?}",
        done_at - opened_at,
        log.iter()
            .map(|(t, s)| (t.saturating_duration_since(log[0].0).as_millis(), *s))
            .collect::<Vec<_>>()
    );
    assert!(
        first_probe.fresh,
        "the first probe was a retry: {first_probe:?}"
    );
    // The held poison came due while open, so it waited in front of the fresh work (if it had
    // been handled before, this test would not tell fresh-first probing from first-come).
    let first_q = seen.iter().find(|s| s.id.starts_with('q')).unwrap();
    assert!(
        first_q.at >= half_open - Duration::from_millis(100),
        "the held poison was handled before the breaker opened: {first_q:?}"
    );
    let states: Vec<i64> = log.iter().map(|(_, s)| *s).take(4).collect();
    assert_eq!(states, [0, 2, 1, 0], "closed at the first probe: {log:?}");
    assert!(
        done_at - opened_at
            <= BreakerConfig::default().cooldown
                + rebound::breaker::FRESH_PROBE_GRACE
                + Duration::from_secs(3),
        "fresh work waited past the first half-open"
    );
}

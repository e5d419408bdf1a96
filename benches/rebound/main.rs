//! rebound's benchmarks (issue 8): throughput, retry precision, memory under backlog and
//! concurrency, each against a baseline measured in the same run. See BENCHMARKS.md.
//!
//! ```sh
//! scripts/bench                                   # everything, against a Tansu started here
//! REBOUND_BENCH_SCALE=0.1 scripts/bench           # a tenth of the messages
//! REBOUND_BENCH_ONLY=1,3 scripts/bench            # some scenarios
//! REBOUND_BENCH_BROKERS=127.0.0.1:9092 scripts/bench   # a broker that is already running
//! ```
//!
//! Environment: `REBOUND_BENCH_SCALE` (default 1: the counts of the issue), `REBOUND_BENCH_RUNS`
//! (default 3; medians are reported), `REBOUND_BENCH_ONLY` (comma-separated scenario numbers,
//! default 1-5 and 7; 6 is reported with 1 and 2), `REBOUND_BENCH_BROKERS`, `REBOUND_BENCH_TRACE` (per-second
//! lateness and the latest retries of scenario 3), `REBOUND_BENCH_X` (comma-separated
//! `KEY=VALUE` librdkafka properties for rebound, not the baselines), `REBOUND_BENCH_EXACTLY_ONCE`
//! (set: rebound runs with `--exactly-once`), `REBOUND_PEER_MEM_TRACE` (a directory: rebound
//! as its own process, as in scenario 8, writes its memory there every 250 ms, or every
//! `REBOUND_PEER_MEM_TRACE_MS`; see `spring::mem_trace`), `REBOUND_BENCH_BROKER_KIND`
//! (`kafka` when the given broker is Apache Kafka: tier seeding is batched, and the lateness
//! histogram says so). Scenario 3 measures four ways of waiting side by side and draws
//! `docs/precision-lateness.png`; scenario 7 is the lateness of each at rising due rates;
//! scenario 8 is rebound's lateness and peak RSS (as its own process) with 1 000 000 retries due
//! over 5 minutes beside 100 000 over 60 s (about 10 minutes a run at full scale, so it runs only
//! when `REBOUND_BENCH_ONLY` names it); scenario 9 (not in the default set either) what
//! `--ordering key` costs (`ordering.rs`).
//!
//! `REBOUND_BENCH_ONLY=spring` runs the comparison with Spring Kafka's retry topics instead
//! (`spring.rs`; its jar is built by `scripts/bench`).

#[path = "../../tests/it/common/mod.rs"]
mod common;
mod ordering;
mod plot;
mod scenarios;
mod spring;
mod support;

use std::path::PathBuf;
use std::time::Instant;

use scenarios::{Ctx, Row};

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a valid value")),
        Err(_) => default,
    }
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kib| kib.parse::<f64>().ok())
        })
        .map(|kib| format!("{:.0} GiB RAM", kib / 1024.0 / 1024.0))
        .unwrap_or_default();
    let load = std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default();
    format!("{cores} cores ({cpu}), {mem}; load average at start {load}")
}

fn print_table(rows: &[Row], baseline: &str) {
    println!("| scenario | measure | rebound | {baseline} | ratio | bar | met |");
    println!("|---|---|---|---|---|---|---|");
    for r in rows {
        let met = match r.met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "—",
        };
        println!(
            "| {} | {} | {} | {} | {} | {} | {} |",
            r.scenario, r.metric, r.rebound, r.baseline, r.ratio, r.bar, met
        );
    }
    println!();
    println!("Every run:");
    for r in rows.iter().filter(|r| !r.detail.is_empty()) {
        println!("- {} / {}: {}", r.scenario, r.metric, r.detail);
    }
}

#[tokio::main]
async fn main() {
    if std::env::var_os(spring::CHILD_ENV).is_some() {
        // This binary re-executed as the rebound peer of the Spring comparison.
        spring::child_main().await;
        return;
    }
    // `cargo bench` passes `--bench`; nothing else is understood.
    let only_list = std::env::var("REBOUND_BENCH_ONLY").unwrap_or_else(|_| "1,2,3,4,5,7".into());
    let with_spring = only_list.split(',').any(|s| s.trim() == "spring");
    let only: Vec<u32> = only_list
        .split(',')
        .filter(|s| s.trim() != "spring")
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let scale: f64 = env_or("REBOUND_BENCH_SCALE", 1.0);
    let runs: usize = env_or("REBOUND_BENCH_RUNS", 3usize).max(1);
    let target = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target");
    let broker = support::Broker::start_or_use(&target.join("bench-broker.log"));
    let ctx = Ctx {
        brokers: broker.addr.clone(),
        broker_pid: broker.pid(),
        scale,
        runs,
        rebound_bin: PathBuf::from(env!("CARGO_BIN_EXE_rebound")),
    };
    let header = format!(
        "machine: {}\nbroker: {}\nscale {scale}, {runs} runs per scenario (medians; every run listed below)",
        machine(),
        broker.describe()
    );
    eprintln!("{header}");
    let started = Instant::now();
    let mut rows: Vec<Row> = Vec::new();
    for s in &only {
        let t = Instant::now();
        let mut got = match s {
            1 => scenarios::pass_through(&ctx).await,
            2 => scenarios::routing(&ctx).await,
            3 => scenarios::precision(&ctx).await,
            4 => scenarios::memory(&ctx).await,
            5 => scenarios::slow_downstream(&ctx).await,
            6 => Vec::new(),
            7 => scenarios::precision_rates(&ctx).await,
            8 => scenarios::precision_volume(&ctx).await,
            9 => ordering::cost(&ctx).await,
            other => {
                panic!(
                    "REBOUND_BENCH_ONLY: no scenario {other} (1-5, 7, 8, 9; 6 comes with 1 and 2)"
                )
            }
        };
        eprintln!("[scenario {s}] took {:.0} s", t.elapsed().as_secs_f64());
        rows.append(&mut got);
    }
    rows.sort_by(|a, b| a.scenario.cmp(&b.scenario));
    let peer_rows = if with_spring {
        let t = Instant::now();
        let got = spring::compare(&ctx).await;
        eprintln!("[spring] took {:.0} s", t.elapsed().as_secs_f64());
        got
    } else {
        Vec::new()
    };
    println!();
    println!("{header}");
    println!("total time {:.0} s", started.elapsed().as_secs_f64());
    if !rows.is_empty() {
        println!();
        print_table(&rows, "baseline");
    }
    if !peer_rows.is_empty() {
        println!();
        println!("rebound vs Spring Kafka retry topics (ratio = rebound ÷ Spring)");
        println!();
        print_table(&peer_rows, "Spring Kafka");
    }
    // Consumers closed on helper threads may still hold the runtime; don't wait for them.
    drop(broker);
    std::process::exit(0);
}

//! Metrics and health, checked the way operators consume them: a real Prometheus server
//! (Debian's package, installed by scripts/test) scrapes a running rebound; every contract metric
//! must be there with its labels, and every expression of the Grafana dashboard and the alert
//! rules must evaluate (the dashboard's with data). `promtool` checks the shipped files.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use chrono::Utc;
use rebound::headers as h;
use serde_json::Value;

const T: Duration = Duration::from_secs(60);

fn repo(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

fn tool(name: &str) -> String {
    let var = format!("REBOUND_TEST_{}", name.to_uppercase());
    std::env::var(&var).unwrap_or_else(|_| name.to_string())
}

#[test]
fn promtool_accepts_the_shipped_config_and_rules() {
    for args in [
        vec![
            "check",
            "config",
            repo("docker/prometheus/prometheus.yml").to_str().unwrap(),
        ],
        vec![
            "check",
            "rules",
            repo("docker/prometheus/alerts.yml").to_str().unwrap(),
        ],
    ] {
        let out = Command::new(tool("promtool"))
            .args(&args)
            .output()
            .expect("promtool is installed (scripts/test installs Debian's prometheus package)");
        assert!(
            out.status.success(),
            "promtool {args:?}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

struct Prometheus {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_prometheus(target: std::net::SocketAddr) -> Prometheus {
    let dir = tempfile::tempdir().unwrap();
    let rules = repo("docker/prometheus/alerts.yml");
    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\n\
         scrape_configs:\n  - job_name: rebound\n    static_configs:\n      - targets: ['{target}']\n",
        rules.display()
    );
    let cfg = dir.path().join("prometheus.yml");
    std::fs::write(&cfg, config).unwrap();
    let port = free_port();
    let child = Command::new(tool("prometheus"))
        .arg(format!("--config.file={}", cfg.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prometheus is installed (scripts/test installs Debian's prometheus package)");
    Prometheus {
        child,
        url: format!("http://127.0.0.1:{port}"),
        _dir: dir,
    }
}

async fn query(prom: &Prometheus, q: &str) -> Result<Vec<Value>, String> {
    let resp = reqwest::Client::new()
        .get(format!("{}/api/v1/query", prom.url))
        .query(&[("query", q)])
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let text = resp.text().await.map_err(|e| e.to_string())?;
    let body: Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    if body["status"] != "success" {
        return Err(format!("{q}: {body}"));
    }
    Ok(body["data"]["result"]
        .as_array()
        .cloned()
        .unwrap_or_default())
}

async fn wait_for_data(prom: &Prometheus, q: &str) -> Vec<Value> {
    let until = std::time::Instant::now() + T;
    loop {
        if let Ok(r) = query(prom, q).await {
            if !r.is_empty() {
                return r;
            }
        }
        assert!(
            std::time::Instant::now() < until,
            "no data for {q} within {T:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Every `expr` in the dashboard, with Grafana's variables replaced.
fn dashboard_exprs() -> Vec<(String, String)> {
    let d: Value = serde_json::from_str(
        &std::fs::read_to_string(repo("docker/grafana/dashboards/rebound.json")).unwrap(),
    )
    .unwrap();
    let mut out = Vec::new();
    for p in d["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().into_iter().flatten() {
            let e = t["expr"].as_str().unwrap();
            let e = e
                .replace("$__rate_interval", "1m")
                .replace("$job", ".*")
                .replace("$instance", ".*");
            assert!(!e.contains('$'), "unknown variable in {e}");
            out.push((p["title"].as_str().unwrap_or("").to_string(), e));
        }
    }
    out
}

fn alert_exprs() -> Vec<(String, String)> {
    let y: serde_yaml_ng::Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(repo("docker/prometheus/alerts.yml")).unwrap(),
    )
    .unwrap();
    let mut out = Vec::new();
    for g in y["groups"].as_sequence().unwrap() {
        for r in g["rules"].as_sequence().unwrap() {
            out.push((
                r["alert"].as_str().unwrap().to_string(),
                r["expr"].as_str().unwrap().to_string(),
            ));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_sees_every_contract_metric_and_every_dashboard_and_alert_query_works() {
    // Traffic through every outcome: success, retry then success, permanent, exhausted, invalid,
    // and a tier partition paused on a message due later.
    let Scenario { main, mut topo } = Scenario::create("obs", &[300, 600], 2).await;
    topo.max_retries = 2;
    let mut cfg = config(topo.clone(), &unique("g"));
    cfg.metrics_addr = Some("127.0.0.1:0".parse().unwrap());
    let rec = Recording::scripted();
    let svc = start(cfg, Arc::new(rec.clone()));
    let m = svc.metrics.clone();
    wait_until("metrics server bound", T, move || {
        m.health.bound.get().is_some()
    })
    .await;
    let addr = *svc.metrics.health.bound.get().unwrap();
    let prom = start_prometheus(addr);
    // Traffic only after Prometheus has scraped once, so that rates see the counters move.
    wait_for_data(&prom, "rebound_build_info").await;
    let mut recs = Vec::new();
    for i in 0..10 {
        recs.push(Out::new(&format!("k{i}"), &format!("ok{i}:ok")));
        recs.push(Out::new(&format!("r{i}"), &format!("retry{i}:fail-once")));
    }
    recs.push(Out::new("p", "perm:permanent"));
    recs.push(Out::new("x", "exh:always"));
    produce(&main, &recs).await;
    produce(
        &topo.tiers[1].topic,
        &[Out::new("bad", "bad:ok")
            .header(h::PROCESS_AFTER, "garbage")
            .header(h::ATTEMPT, "1")
            .partition(0)],
    )
    .await;

    let r = rec.clone();
    wait_until("all outcomes handled", T, move || {
        r.count() >= 10 + 20 + 1 + 3
    })
    .await;
    let dlq = read_topic(&topo.dlq, 3, T);
    assert_eq!(dlq.len(), 3, "permanent, exhausted and invalid");
    // Now that nothing else needs the tier, park a message there that is due much later
    // (anything routed behind it would wait for it: a tier partition is FIFO).
    produce(
        &topo.tiers[1].topic,
        &[Out::new("later", "later:ok")
            .header(
                h::PROCESS_AFTER,
                &h::format_time(Utc::now() + chrono::Duration::seconds(600)),
            )
            .header(h::ATTEMPT, "1")
            .partition(1)],
    )
    .await;

    // The contract: name → label names.
    let contract: &[(&str, &[&str])] = &[
        ("rebound_consumed_total", &["tier"]),
        ("rebound_handled_total", &["tier", "outcome"]),
        ("rebound_routed_total", &["from", "to"]),
        ("rebound_dlq_total", &["reason"]),
        ("rebound_invalid_total", &["tier", "class"]),
        ("rebound_handler_duration_seconds_bucket", &["tier", "le"]),
        ("rebound_retry_lateness_seconds_bucket", &["tier", "le"]),
        ("rebound_paused_partitions", &["tier"]),
        ("rebound_consumer_lag", &["topic", "partition"]),
        ("rebound_in_flight", &[]),
        ("rebound_circuit_state", &[]),
        ("rebound_build_info", &["version"]),
    ];
    for (name, labels) in contract {
        let series = wait_for_data(&prom, name).await;
        for s in &series {
            for l in *labels {
                assert!(s["metric"].get(*l).is_some(), "{name} lacks label {l}: {s}");
            }
        }
    }
    for outcome in ["success", "transient", "permanent"] {
        wait_for_data(
            &prom,
            &format!("rebound_handled_total{{outcome=\"{outcome}\"}}"),
        )
        .await;
    }
    for reason in ["permanent", "exhausted", "invalid"] {
        wait_for_data(
            &prom,
            &format!("rebound_dlq_total{{reason=\"{reason}\"}} > 0"),
        )
        .await;
    }
    wait_for_data(&prom, "rebound_paused_partitions > 0").await;
    // rate() needs two scrapes after the traffic.
    wait_for_data(&prom, "sum(rate(rebound_handled_total[1m])) > 0").await;

    for (title, expr) in dashboard_exprs() {
        let r = wait_for_data(&prom, &expr).await;
        assert!(
            !r.is_empty(),
            "dashboard panel {title:?}: no data for {expr}"
        );
    }
    for (alert, expr) in alert_exprs() {
        query(&prom, &expr)
            .await
            .unwrap_or_else(|e| panic!("alert {alert}: {e}"));
    }
    // The alert rules were loaded and evaluate without errors.
    let rules = reqwest::get(format!("{}/api/v1/rules", prom.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let rules: Value = serde_json::from_str(&rules).unwrap();
    let groups = rules["data"]["groups"].as_array().unwrap();
    let loaded: Vec<&Value> = groups
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .collect();
    assert_eq!(loaded.len(), alert_exprs().len());
    for r in loaded {
        assert_ne!(
            r["health"], "err",
            "rule {} failed: {}",
            r["name"], r["lastError"]
        );
    }
    svc.stop().await;
}

async fn status(url: &str) -> u16 {
    reqwest::get(url)
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_503_until_assignment_and_while_unreachable_healthz_is_200() {
    // Nothing listens on this broker port: the service never gets an assignment.
    let dead = free_port();
    let topo = topology(&unique("nobroker"), &[300]);
    let mut cfg = rebound::Config::new(&format!("127.0.0.1:{dead}"), "g", topo);
    cfg.metrics_addr = Some("127.0.0.1:0".parse().unwrap());
    let svc = start(cfg, Arc::new(Recording::scripted()));
    let m = svc.metrics.clone();
    wait_until("metrics server bound", T, move || {
        m.health.bound.get().is_some()
    })
    .await;
    let addr = *svc.metrics.health.bound.get().unwrap();
    assert_eq!(status(&format!("http://{addr}/healthz")).await, 200);
    assert_eq!(status(&format!("http://{addr}/readyz")).await, 503);
    // A stop while the brokers are still being looked for ends the service promptly.
    let stopped = std::time::Instant::now();
    svc.stop().await;
    assert!(
        stopped.elapsed() < Duration::from_secs(5),
        "took {:?}",
        stopped.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_200_while_running_and_503_during_shutdown() {
    let Scenario { main, topo } = Scenario::create("ready", &[300], 1).await;
    let mut cfg = config(topo.clone(), &unique("g"));
    cfg.metrics_addr = Some("127.0.0.1:0".parse().unwrap());
    // A handler that holds its message until released, so shutdown has in-flight work to drain.
    let release = Arc::new(tokio::sync::Notify::new());
    let entered = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (rel, ent) = (release.clone(), entered.clone());
    let handler = rebound::handler::handler_fn(move |_m| {
        let (rel, ent) = (rel.clone(), ent.clone());
        async move {
            ent.store(true, std::sync::atomic::Ordering::SeqCst);
            rel.notified().await;
            rebound::Outcome::Success
        }
    });
    let svc = start(cfg, Arc::new(handler));
    wait_ready(&svc).await;
    let addr = *svc.metrics.health.bound.get().unwrap();
    let ready = format!("http://{addr}/readyz");
    assert_eq!(status(&ready).await, 200);

    produce(&main, &[Out::new("k", "v")]).await;
    let e = entered.clone();
    wait_until("the handler holds a message", T, move || {
        e.load(std::sync::atomic::Ordering::SeqCst)
    })
    .await;
    svc.stop.cancel();
    let m = svc.metrics.clone();
    wait_until("shutdown begins", T, move || {
        m.health
            .shutting_down
            .load(std::sync::atomic::Ordering::SeqCst)
    })
    .await;
    assert_eq!(status(&ready).await, 503, "not ready while shutting down");
    release.notify_one();
    tokio::time::timeout(Duration::from_secs(30), svc.task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

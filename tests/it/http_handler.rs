//! The `http` handler and the policies around it (Retry-After, jitter, max-age, circuit breaker,
//! bounded concurrency), against a real HTTP server on loopback and the real broker.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::*;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use rebound::handler::http::HttpHandler;
use rebound::headers as h;

const T: Duration = Duration::from_secs(30);

/// One request the server received.
#[derive(Debug, Clone)]
struct Seen {
    body: String,
    headers: HeaderMap,
    status: u16,
}

#[derive(Clone, Default)]
struct Server {
    seen: Arc<Mutex<Vec<Seen>>>,
    /// For `flaky` bodies: 503 while false, 200 once true.
    healthy: Arc<AtomicBool>,
}

impl Server {
    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

/// Behaviour by body: `status:CODE`, `slow`, `retry-after:SECS` (429 on the first try, then
/// 200), `flaky:ID` (503 until the server is healthy), anything else 200.
async fn respond(State(s): State<Server>, headers: HeaderMap, body: Bytes) -> Response {
    let text = String::from_utf8_lossy(&body).into_owned();
    let attempt: u32 = headers
        .get("x-rebound-attempt")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let (status, extra): (u16, Option<(&str, String)>) =
        if let Some(code) = text.strip_prefix("status:") {
            (code.parse().unwrap_or(500), None)
        } else if text == "slow" {
            tokio::time::sleep(Duration::from_secs(3)).await;
            (200, None)
        } else if let Some(secs) = text.strip_prefix("retry-after:") {
            if attempt == 0 {
                (429, Some(("retry-after", secs.to_string())))
            } else {
                (200, None)
            }
        } else if text.starts_with("flaky:") {
            if s.healthy.load(Ordering::SeqCst) {
                (200, None)
            } else {
                (503, None)
            }
        } else {
            (200, None)
        };
    s.seen.lock().unwrap().push(Seen {
        body: text,
        headers: headers.clone(),
        status,
    });
    let mut resp = (
        StatusCode::from_u16(status).unwrap(),
        format!("server said {status}"),
    )
        .into_response();
    if let Some((name, value)) = extra {
        resp.headers_mut().insert(name, value.parse().unwrap());
    }
    resp
}

async fn serve() -> (Server, String) {
    let server = Server::default();
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(respond))
        .with_state(server.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (server, url)
}

fn http(url: &str, timeout: Duration) -> Arc<HttpHandler> {
    Arc::new(
        HttpHandler::new(url, timeout)
            .unwrap()
            .forward_headers(vec!["traceparent".into()]),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_status_class_routes_where_the_contract_says() {
    let (server, url) = serve().await;
    let Scenario { main, mut topo } = Scenario::create("http-status", &[200], 1).await;
    topo.max_retries = 0; // one try: transient shows up as `exhausted`, permanent as `permanent`
    let codes = [200, 204, 400, 404, 408, 422, 425, 429, 500, 503];
    let recs: Vec<Out> = codes
        .iter()
        .map(|c| Out::new("k", &format!("status:{c}")))
        .collect();
    produce(&main, &recs).await;

    let svc = start(
        config(topo.clone(), &unique("g")),
        http(&url, Duration::from_secs(5)),
    );
    let dlq = read_topic(&topo.dlq, 8, T);
    svc.stop().await;

    assert_eq!(server.count(), codes.len(), "each message POSTed once");
    let mut got: HashMap<String, (String, String, String)> = HashMap::new();
    for d in &dlq {
        got.insert(
            d.payload_str(),
            (
                d.header(h::DLQ_REASON).unwrap(),
                d.header(h::ERROR_KIND).unwrap(),
                d.header(h::ERROR_CLASS).unwrap(),
            ),
        );
    }
    assert_eq!(got.len(), 8, "2xx never reach the DLQ: {got:?}");
    for c in [400, 404, 422] {
        assert_eq!(
            got[&format!("status:{c}")],
            ("permanent".into(), "permanent".into(), format!("http_{c}"))
        );
    }
    for c in [408, 425, 429, 500, 503] {
        assert_eq!(
            got[&format!("status:{c}")],
            ("exhausted".into(), "transient".into(), format!("http_{c}"))
        );
    }
    let msg = dlq
        .iter()
        .find(|d| d.payload_str() == "status:503")
        .unwrap()
        .header(h::ERROR_MESSAGE)
        .unwrap();
    assert!(
        msg.contains("server said 503"),
        "the response body starts the error message: {msg}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_errors_and_slow_servers_are_transient() {
    let (_server, url) = serve().await;
    let Scenario { main, mut topo } = Scenario::create("http-slow", &[200], 1).await;
    topo.max_retries = 0;
    produce(&main, &[Out::new("k", "slow")]).await;
    let svc = start(
        config(topo.clone(), &unique("g")),
        http(&url, Duration::from_millis(300)),
    );
    let dlq = read_topic(&topo.dlq, 1, T);
    svc.stop().await;
    assert_eq!(dlq.len(), 1);
    assert_eq!(dlq[0].header(h::ERROR_CLASS).as_deref(), Some("timeout"));
    assert_eq!(dlq[0].header(h::ERROR_KIND).as_deref(), Some("transient"));

    // Nobody listens on this port.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let Scenario { main, mut topo } = Scenario::create("http-connect", &[200], 1).await;
    topo.max_retries = 0;
    produce(&main, &[Out::new("k", "x")]).await;
    let svc = start(
        config(topo.clone(), &unique("g")),
        http(&format!("http://{closed}/"), Duration::from_secs(2)),
    );
    let dlq = read_topic(&topo.dlq, 1, T);
    svc.stop().await;
    assert_eq!(dlq.len(), 1);
    assert_eq!(dlq[0].header(h::ERROR_CLASS).as_deref(), Some("connect"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_carry_metadata_and_only_the_allowed_headers() {
    let (server, url) = serve().await;
    let Scenario { main, topo } = Scenario::create("http-meta", &[200], 1).await;
    let mut odd = Out::new("", "hello")
        .header("content-type", "application/json")
        .header("traceparent", "00-abc-def-01")
        .header("secret-internal", "nope");
    odd.key = Some(vec![0xff, 0x01]);
    produce(&main, &[Out::new("plain-key", "hi"), odd]).await;
    let svc = start(
        config(topo.clone(), &unique("g")),
        http(&url, Duration::from_secs(5)),
    );
    let s = server.clone();
    wait_until("two requests", T, move || s.count() >= 2).await;
    svc.stop().await;

    let seen = server.seen();
    let plain = seen.iter().find(|s| s.body == "hi").unwrap();
    let get = |s: &Seen, n: &str| s.headers.get(n).map(|v| v.to_str().unwrap().to_string());
    assert_eq!(
        get(plain, "content-type").as_deref(),
        Some("application/octet-stream")
    );
    assert_eq!(
        get(plain, "x-rebound-topic").as_deref(),
        Some(main.as_str())
    );
    assert_eq!(get(plain, "x-rebound-partition").as_deref(), Some("0"));
    assert_eq!(get(plain, "x-rebound-offset").as_deref(), Some("0"));
    assert_eq!(get(plain, "x-rebound-attempt").as_deref(), Some("0"));
    assert_eq!(get(plain, "x-rebound-key").as_deref(), Some("plain-key"));
    let odd = seen.iter().find(|s| s.body == "hello").unwrap();
    assert_eq!(
        get(odd, "content-type").as_deref(),
        Some("application/json")
    );
    assert_eq!(get(odd, "traceparent").as_deref(), Some("00-abc-def-01"));
    assert_eq!(get(odd, "secret-internal"), None);
    assert_eq!(get(odd, "x-rebound-key").as_deref(), Some("base64:/wE="));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_delays_the_retry_at_least_that_long_and_picks_a_covering_tier() {
    let (server, url) = serve().await;
    let Scenario { main, topo } = Scenario::create("http-ra", &[200, 2000], 1).await;
    produce(&main, &[Out::new("k", "retry-after:1")]).await;
    let svc = start(
        config(topo.clone(), &unique("g")),
        http(&url, Duration::from_secs(5)),
    );
    let tier2 = read_topic(&topo.tiers[1].topic, 1, T);
    let s = server.clone();
    wait_until("the retry", T, move || s.count() >= 2).await;
    svc.stop().await;

    assert!(
        read_topic(&topo.tiers[0].topic, 1, Duration::from_millis(300)).is_empty(),
        "200ms tier does not cover 1s"
    );
    assert_eq!(tier2.len(), 1);
    let first = h::parse_time(
        h::FIRST_FAILED_AT,
        tier2[0]
            .header(h::FIRST_FAILED_AT)
            .as_deref()
            .map(str::as_bytes),
    )
    .unwrap();
    let due = h::parse_time(
        h::PROCESS_AFTER,
        tier2[0]
            .header(h::PROCESS_AFTER)
            .as_deref()
            .map(str::as_bytes),
    )
    .unwrap();
    assert!(
        (due - first).num_milliseconds() >= 1000,
        "process_after honours Retry-After"
    );
    assert_eq!(server.seen()[1].status, 200);
}

/// A server answering 429 with an absurd `Retry-After` (999999999999 seconds, or a date in the
/// year 9999): the tier copy's `process_after` is cut to `--max-delay`, written so that rebound
/// reads it back (it used to write `+33715-…` and then dead-letter its own copy as
/// `invalid_header`), and the retry is handled. `--max-delay` is 2 s here so that the retry
/// comes during the test; the default (1 h for these tiers) would only make it wait an hour.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absurd_retry_after_is_cut_to_max_delay_and_the_retry_is_handled() {
    let (server, url) = serve().await;
    let Scenario { main, mut topo } = Scenario::create("http-ra-absurd", &[200], 1).await;
    topo.max_delay = Duration::from_secs(2);
    let bodies = [
        "retry-after:999999999999",
        "retry-after:Fri, 31 Dec 9999 23:59:59 GMT",
    ];
    produce(
        &main,
        &bodies.iter().map(|b| Out::new("k", b)).collect::<Vec<_>>(),
    )
    .await;
    let svc = start(
        config(topo.clone(), &unique("g")),
        http(&url, Duration::from_secs(5)),
    );
    let s = server.clone();
    wait_until("both retries", T, move || {
        s.seen().iter().filter(|x| x.status == 200).count() >= 2
    })
    .await;
    svc.stop().await;

    let copies = read_topic(&topo.tiers[0].topic, 2, T);
    assert_eq!(copies.len(), 2);
    for copy in &copies {
        let time = |name| {
            h::parse_time(name, copy.header(name).as_deref().map(str::as_bytes))
                .unwrap_or_else(|e| panic!("{} is not readable: {e}", copy.payload_str()))
        };
        let waited = time(h::PROCESS_AFTER) - time(h::FIRST_FAILED_AT);
        assert!(
            (2000..2100).contains(&waited.num_milliseconds()),
            "{}: due {waited} after the failure, not --max-delay",
            copy.payload_str()
        );
        let text = copy.header(h::ERROR_MESSAGE).unwrap_or_default();
        assert!(text.contains("cut to --max-delay (2s)"), "{text}");
    }
    let dlq = read_at(
        &brokers(),
        &topo.dlq,
        0,
        Duration::from_secs(1),
        Duration::from_secs(3),
    );
    assert!(
        dlq.is_empty(),
        "nothing dead-lettered: {:?}",
        dlq.iter()
            .map(|g| g.header(h::ERROR_CLASS))
            .collect::<Vec<_>>()
    );
    let seen = server.seen();
    for body in bodies {
        let statuses: Vec<u16> = seen
            .iter()
            .filter(|x| x.body == body)
            .map(|x| x.status)
            .collect();
        assert_eq!(statuses, vec![429, 200], "{body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jitter_spreads_due_times_within_its_bounds() {
    let Scenario { main, mut topo } = Scenario::create("jitter", &[1000], 1).await;
    topo.jitter = 0.2;
    produce(&main, &scripted(60, "fail-once")).await;
    let rec = Recording::scripted();
    let mut cfg = config(topo.clone(), &unique("g"));
    // Every first try fails on purpose (60 due times to look at): the breaker would rightly open.
    cfg.breaker = rebound::breaker::BreakerConfig::disabled();
    let svc = start(cfg, Arc::new(rec.clone()));
    let tier = read_topic(&topo.tiers[0].topic, 60, T);
    svc.stop().await;

    assert_eq!(tier.len(), 60);
    let waits: Vec<i64> = tier
        .iter()
        .map(|g| {
            let first = h::parse_time(
                h::FIRST_FAILED_AT,
                g.header(h::FIRST_FAILED_AT).as_deref().map(str::as_bytes),
            )
            .unwrap();
            let due = h::parse_time(
                h::PROCESS_AFTER,
                g.header(h::PROCESS_AFTER).as_deref().map(str::as_bytes),
            )
            .unwrap();
            (due - first).num_milliseconds()
        })
        .collect();
    assert!(
        waits.iter().all(|w| (799..=1201).contains(w)),
        "outside ±20%: {waits:?}"
    );
    let (min, max) = (waits.iter().min().unwrap(), waits.iter().max().unwrap());
    assert!(
        max - min >= 100,
        "60 samples should spread over more than 100 ms: {waits:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_older_than_max_age_expire_to_the_dlq() {
    let Scenario { main: _, mut topo } = Scenario::create("maxage", &[200], 1).await;
    topo.max_age = Some(Duration::from_secs(3600));
    let old = Utc::now() - chrono::Duration::hours(2);
    let retry = |id: &str, first: chrono::DateTime<Utc>| {
        Out::new(id, &format!("{id}:always"))
            .header(h::PROCESS_AFTER, &h::format_time(Utc::now()))
            .header(h::ATTEMPT, "1")
            .header(h::FIRST_FAILED_AT, &h::format_time(first))
    };
    produce(
        &topo.tiers[0].topic,
        &[retry("old", old), retry("young", Utc::now())],
    )
    .await;
    let rec = Recording::scripted();
    let svc = start(config(topo.clone(), &unique("g")), Arc::new(rec.clone()));
    let dlq = read_topic(&topo.dlq, 2, T);
    svc.stop().await;

    let reason = |id: &str| {
        dlq.iter()
            .find(|d| d.payload_str().starts_with(id))
            .and_then(|d| d.header(h::DLQ_REASON))
    };
    assert_eq!(reason("old").as_deref(), Some("expired"));
    assert_eq!(
        reason("young").as_deref(),
        Some("exhausted"),
        "the young one used its one retry"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_breaker_opens_under_a_failing_server_and_closes_when_it_recovers_losing_nothing() {
    let (server, url) = serve().await;
    let Scenario { main, mut topo } = Scenario::create("breaker", &[200, 400], 2).await;
    topo.max_retries = 20;
    let n = 60;
    let recs: Vec<Out> = (0..n)
        .map(|i| Out::new(&format!("k{i}"), &format!("flaky:{i}")))
        .collect();
    produce(&main, &recs).await;

    let mut cfg = config(topo.clone(), &unique("g"));
    cfg.max_in_flight = 4;
    // A short cool-down so that the test sees two probe rounds; 2 probes to count them.
    cfg.breaker = rebound::breaker::BreakerConfig {
        cooldown: Duration::from_millis(800),
        probes: 2,
        ..rebound::breaker::BreakerConfig::default()
    };
    let svc = start(cfg, http(&url, Duration::from_secs(5)));
    let m = svc.metrics.clone();
    wait_until("the breaker opens", T, move || m.circuit_state.get() == 2).await;

    // While open, only probes reach the server: at most `probes` per cool-down.
    let (t0, r0) = (Instant::now(), server.count());
    let s = server.clone();
    wait_until("two more probe rounds", T, move || s.count() >= r0 + 4).await;
    let elapsed = t0.elapsed();
    let extra = server.count() - r0;
    assert!(
        elapsed >= Duration::from_millis(800),
        "probe rounds are a cool-down apart ({elapsed:?})"
    );
    let rounds = (elapsed.as_millis() / 800) as usize + 1;
    assert!(
        extra <= 2 * rounds + 4,
        "{extra} requests in {elapsed:?}: the breaker did not hold fetching back"
    );

    server.healthy.store(true, Ordering::SeqCst);
    let m = svc.metrics.clone();
    wait_until("the breaker closes", T, move || m.circuit_state.get() == 0).await;
    let s = server.clone();
    wait_until("every message succeeded", T, move || {
        let ok: std::collections::HashSet<String> = s
            .seen()
            .into_iter()
            .filter(|x| x.status == 200)
            .map(|x| x.body)
            .collect();
        ok.len() == n
    })
    .await;
    svc.stop().await;
    assert!(
        read_topic(&topo.dlq, 1, Duration::from_millis(500)).is_empty(),
        "nothing dead-lettered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_in_flight_speeds_up_a_slow_handler_and_keeps_same_key_order() {
    /// (key, offset, started, finished) of one handler call.
    type CallLog = Vec<(String, i64, Instant, Instant)>;
    async fn run(max_in_flight: usize) -> (Duration, CallLog) {
        let Scenario { main, topo } = Scenario::create("mif", &[200], 1).await;
        let recs: Vec<Out> = (0..48)
            .map(|i| Out::new(&format!("key{}", i % 16), &format!("m{i}")))
            .collect();
        produce(&main, &recs).await;
        let log: Arc<Mutex<CallLog>> = Arc::default();
        let l = log.clone();
        let handler = rebound::handler::handler_fn(move |m| {
            let l = l.clone();
            async move {
                let start = Instant::now();
                tokio::time::sleep(Duration::from_millis(150)).await;
                l.lock()
                    .unwrap()
                    .push((m.key_lossy(), m.offset, start, Instant::now()));
                rebound::Outcome::Success
            }
        });
        let mut cfg = config(topo, &unique("g"));
        cfg.max_in_flight = max_in_flight;
        let svc = start(cfg, Arc::new(handler));
        let l = log.clone();
        wait_until("48 handled", T, move || l.lock().unwrap().len() >= 48).await;
        svc.stop().await;
        let calls = log.lock().unwrap().clone();
        let first = calls.iter().map(|c| c.2).min().unwrap();
        let last = calls.iter().map(|c| c.3).max().unwrap();
        (last - first, calls)
    }
    let (serial, _) = run(1).await;
    let (parallel, calls) = run(8).await;
    assert!(
        serial.as_secs_f64() >= 5.0 * parallel.as_secs_f64(),
        "max-in-flight 8 took {parallel:?}, 1 took {serial:?}"
    );
    let mut by_key: HashMap<String, Vec<(i64, Instant, Instant)>> = HashMap::new();
    for (k, o, s, e) in calls {
        by_key.entry(k).or_default().push((o, s, e));
    }
    for (k, mut v) in by_key {
        v.sort_by_key(|x| x.1);
        for w in v.windows(2) {
            assert!(w[0].0 < w[1].0, "key {k}: offsets out of order");
            assert!(w[1].1 >= w[0].2, "key {k}: two messages in flight at once");
        }
    }
}

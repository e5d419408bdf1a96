//! `rebound console` and `GET /status` over HTTP, against the real broker: every page shows
//! what the topics hold, redrive sends exactly what was chosen and shares its bookkeeping with
//! `replay-dlq`, and the safety rules hold (read-only without --allow-replay, CSRF on every
//! write, a token off loopback, no secret shown).

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use crate::console_fixture::*;
use rebound::config::ReplayConfig;
use rebound::dlq::{self, Filter};
use rebound::headers as h;
use tokio_util::sync::CancellationToken;

const T: Duration = Duration::from_secs(30);

/// Runs rebound (default settings) on `topo` with its metrics server on a free port: the service
/// and the server's base URL, once assigned.
async fn serve(topo: &rebound::Topology, group: &str) -> (Running, String) {
    let mut cfg = config(topo.clone(), group);
    cfg.metrics_addr = Some("127.0.0.1:0".parse().unwrap());
    let svc = start(cfg, Arc::new(Recording::scripted()));
    wait_ready(&svc).await;
    let m = svc.metrics.clone();
    wait_until("the metrics server is bound", T, || {
        m.health.bound.get().is_some()
    })
    .await;
    let url = format!("http://{}", m.health.bound.get().unwrap());
    (svc, url)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_each_partition_held_heads_and_the_breaker_but_no_message_data() {
    let topo = topology(&unique("status"), &[60_000]);
    create_topology(&topo, 1).await;
    // A retry due in ten minutes: its tier partition is paused with the head held.
    let due = h::format_time(chrono::Utc::now() + chrono::Duration::minutes(10));
    let due = due.as_str();
    produce(
        &topo.tiers[0].topic,
        &[Out::new("secret-key", "secret-payload")
            .header(h::PROCESS_AFTER, due)
            .header(h::ATTEMPT, "1")
            .header("user-header", "secret-header-value")],
    )
    .await;
    let (svc, base) = serve(&topo, &unique("svc")).await;
    let url = format!("{base}/status");

    let deadline = std::time::Instant::now() + T;
    let (status, last): (serde_json::Value, String) = loop {
        let (code, body) = get(&url).await;
        assert_eq!(code, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        if v["partitions"]
            .as_array()
            .is_some_and(|ps| ps.iter().any(|p| p["paused"] == true))
        {
            break (v, body);
        }
        assert!(std::time::Instant::now() < deadline, "never paused: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(status["breaker"], "closed");
    let parts = status["partitions"].as_array().unwrap();
    assert_eq!(parts.len(), 2, "main and one tier partition: {last}");
    let tier = parts
        .iter()
        .find(|p| p["stage"] == "retry-1m")
        .expect("tier");
    assert_eq!(tier["topic"], topo.tiers[0].topic.as_str());
    assert_eq!(tier["paused_for"], "due");
    assert_eq!(tier["head_due"], due);
    assert_eq!(tier["buffered"], 1);
    assert_eq!(tier["in_flight"], 1);
    let main = parts.iter().find(|p| p["stage"] == "main").expect("main");
    assert_eq!(main["paused"], false);
    for secret in [
        "secret-key",
        "secret-payload",
        "secret-header-value",
        "user-header",
    ] {
        assert!(!last.contains(secret), "{secret} leaked: {last}");
    }
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_page_shows_what_the_topics_hold_and_no_secret() {
    let topo = populated("console-pages").await;
    // A running instance whose /status the topology page shows.
    let group = unique("svc");
    let (svc, instance) = serve(&topo, &group).await;
    let mut cfg = console_cfg(&topo, &group);
    cfg.instances = vec![instance];
    let console = start_console(cfg).await;
    let base = &console.url;

    // Topology: every topic with its partitions, end offsets and the group.
    let (code, page) = get(&format!("{base}/")).await;
    assert_eq!(code, 200, "{page}");
    for t in [
        &topo.main,
        &topo.tiers[0].topic,
        &topo.tiers[1].topic,
        &topo.dlq,
    ] {
        assert!(page.contains(t.as_str()), "{t} missing:\n{page}");
    }
    assert_eq!(by_id(&page, "dlq-total"), "6");
    assert!(page.contains(&group) && page.contains("read-only"));
    assert!(page.contains("ssl.key.password=[redacted]"), "{page}");
    assert!(
        page.contains("breaker closed"),
        "the instance's /status: {page}"
    );

    // Dead letters: counts over everything, and the filtered list.
    let (code, page) = get(&format!("{base}/dlq")).await;
    assert_eq!(code, 200, "{page}");
    assert_eq!(by_id(&page, "total"), "6");
    assert_eq!(by_id(&page, "matched"), "6");
    assert!(
        page.contains(">http_503</a></td><td class=\"n\">3<"),
        "{page}"
    );
    assert!(
        page.contains(">http_400</a></td><td class=\"n\">2<"),
        "{page}"
    );
    let (_, page) = get(&format!("{base}/dlq?error_class=http_503")).await;
    assert_eq!(by_id(&page, "matched"), "3");
    assert_eq!(page.matches("class=\"msg\"").count(), 3, "{page}");
    assert!(!page.contains("http_400: upstream"), "{page}");
    // Pages: 2 a page over the 3 http_503 messages.
    let (_, first) = get(&format!("{base}/dlq?error_class=http_503&size=2")).await;
    assert_eq!(first.matches("class=\"msg\"").count(), 2, "{first}");
    assert!(
        first.contains("id=\"next\" href=\"/dlq?error_class=http_503&amp;page=1&amp;size=2\""),
        "{first}"
    );
    assert!(!first.contains("id=\"previous\""), "{first}");
    let (_, second) = get(&format!("{base}/dlq?error_class=http_503&size=2&page=1")).await;
    assert_eq!(second.matches("class=\"msg\"").count(), 1, "{second}");
    assert!(
        second.contains("id=\"previous\"") && !second.contains("id=\"next\""),
        "{second}"
    );
    let positions = |p: &str| -> Vec<String> {
        p.split("class=\"msg\" href=\"/dlq/message/")
            .skip(1)
            .map(|s| s[..s.find('"').unwrap()].to_string())
            .collect()
    };
    let mut both = positions(&first);
    both.extend(positions(&second));
    both.sort();
    assert_eq!(both, vec!["0/0", "0/2", "1/0"], "each message on one page");
    let (_, page) = get(&format!("{base}/dlq?reason=permanent&partition=1")).await;
    assert_eq!(by_id(&page, "matched"), "1");
    assert!(page.contains("key-b1"), "{page}");
    let (code, page) = get(&format!("{base}/dlq?since=yesterday")).await;
    assert_eq!(code, 400);
    assert!(page.contains("since: "), "{page}");
    // Markup in a key is shown, not run.
    let (_, page) = get(&format!("{base}/dlq?error_class=timeout")).await;
    assert!(
        !page.contains("<script>") && page.contains("&lt;script&gt;"),
        "{page}"
    );

    // One message: every header, the key, the payload (hex when binary).
    let (code, page) = get(&format!("{base}/dlq/message/0/0")).await;
    assert_eq!(code, 200, "{page}");
    assert_eq!(by_id(&page, "key"), "key-a0");
    for shown in [
        "trace-a0",
        h::ERROR_CLASS,
        "http_503: upstream said no",
        "a0:payload",
        h::FIRST_FAILED_AT,
    ] {
        assert!(page.contains(shown), "{shown} missing:\n{page}");
    }
    let (_, page) = get(&format!("{base}/dlq/message/1/2")).await;
    assert!(
        page.contains("binary (hex)") && page.contains("63 30 3a 00 ff 10"),
        "{page}"
    );
    let (code, _) = get(&format!("{base}/dlq/message/0/99")).await;
    assert_eq!(code, 404);

    // Redrive: a dry run, and no way to confirm on a read-only console.
    let (code, page) = get(&format!("{base}/redrive?error_class=http_503")).await;
    assert_eq!(code, 200, "{page}");
    assert_eq!(by_id(&page, "would"), "3");
    assert!(
        page.contains("read-only") && !page.contains("name=\"csrf\""),
        "{page}"
    );
    let (code, page) = get(&format!("{base}/redrive/job")).await;
    assert_eq!(code, 200);
    assert!(page.contains("No redrive yet"), "{page}");

    // No page ever shows the -X secret.
    for path in [
        "/",
        "/dlq",
        "/dlq/message/0/0",
        "/redrive?all=yes",
        "/redrive/job",
    ] {
        let (_, page) = get(&format!("{base}{path}")).await;
        assert!(!page.contains(SECRET), "{path} shows the secret");
    }
    svc.stop().await;
}

/// Waits for the redrive under way to finish; returns the job page.
async fn finished_job(base: &str) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (_, page) = get(&format!("{base}/redrive/job")).await;
        if page.contains("job-summary") {
            return page;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "redrive never finished:\n{page}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redrive_needs_allow_replay_and_csrf_and_shares_bookkeeping_with_replay_dlq() {
    let topo = populated("console-redrive").await;
    let group = unique("svc");
    let read_only = start_console(console_cfg(&topo, &group)).await;
    let mut cfg = console_cfg(&topo, &group);
    cfg.allow_replay = true;
    let console = start_console(cfg).await;
    let base = console.url.clone();

    let (code, preview) = get(&format!("{base}/redrive?pos=0/2&pos=1/0")).await;
    assert_eq!(code, 200, "{preview}");
    assert_eq!(by_id(&preview, "would"), "2");
    let csrf = csrf_of(&preview);
    let chosen = [("pos", "0/2"), ("pos", "1/0")];

    // Refused: read-only console (even with its own token), no token, a wrong token.
    let (code, _) = get(&format!("{}/redrive?pos=0/0", read_only.url)).await;
    assert_eq!(code, 200);
    let (code, _, body) = post(
        &format!("{}/redrive", read_only.url),
        &[("csrf", &csrf), ("pos", "0/0")],
    )
    .await;
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("--allow-replay"), "{body}");
    let (code, _, _) = post(&format!("{base}/redrive"), &chosen).await;
    assert_eq!(code, 403, "no CSRF token");
    let mut forged = chosen.to_vec();
    forged.push(("csrf", "0000"));
    let (code, _, _) = post(&format!("{base}/redrive"), &forged).await;
    assert_eq!(code, 403, "a wrong CSRF token");
    let (code, _, _) = post(&format!("{base}/redrive"), &[("csrf", csrf.as_str())]).await;
    assert_eq!(code, 400, "nothing chosen is not everything");
    assert!(
        read_topic(&topo.main, 1, Duration::from_secs(2)).is_empty(),
        "nothing was sent by a refused write"
    );

    // Redrive the two ticked messages (a2 at 0/2, a1 at 1/0): exactly those come back, and a0
    // before a2 stays available.
    let mut form = chosen.to_vec();
    form.push(("csrf", &csrf));
    let (code, location, body) = post(&format!("{base}/redrive"), &form).await;
    assert_eq!(
        (code, location.as_deref()),
        (303, Some("/redrive/job")),
        "{body}"
    );
    let job = finished_job(&base).await;
    assert_eq!(by_id(&job, "redriven"), "2", "{job}");
    assert!(job.contains("finished"), "{job}");
    assert_eq!(
        ids_in(&topo.main, 3, Duration::from_secs(5)),
        vec!["a1", "a2"]
    );

    // The CLI engine with the same replay group and the class filter: only a0 is new; a2 is in
    // the ledger (a1 lies behind the committed offset).
    let mut replay = ReplayConfig::new(console_cfg(&topo, &format!("{group}.replay")).cluster);
    replay.filter = Filter {
        error_classes: vec!["http_503".into()],
        ..Filter::default()
    };
    let s = within(
        "replay",
        T,
        dlq::replay(&replay, &CancellationToken::new(), &mut Vec::new()),
    )
    .await
    .unwrap();
    assert_eq!((s.replayed, s.skipped_already_replayed), (1, 1), "{s}");

    // And the reverse: the console's class redrive now has nothing left to send.
    let (_, page) = get(&format!("{base}/redrive?error_class=http_503")).await;
    assert_eq!(by_id(&page, "would"), "0", "{page}");
    // What no selection chose is still there for everyone: all=yes sends exactly b0, b1, c0.
    let (_, page) = get(&format!("{base}/redrive?all=yes")).await;
    assert_eq!(by_id(&page, "would"), "3", "{page}");
    let (code, _, _) = post(
        &format!("{base}/redrive"),
        &[("csrf", csrf.as_str()), ("all", "yes")],
    )
    .await;
    assert_eq!(code, 303);
    let job = finished_job(&base).await;
    assert_eq!(by_id(&job, "redriven"), "3", "{job}");
    assert_eq!(
        ids_in(&topo.main, 7, Duration::from_secs(5)),
        vec!["a0", "a1", "a2", "b0", "b1", "c0"],
        "each dead letter sent back exactly once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_guards_every_page_and_a_loopback_console_refuses_foreign_host_names() {
    let topo = populated("console-token").await;
    let secret_token = "tok-0123456789abcdef";
    let mut cfg = console_cfg(&topo, &unique("svc"));
    cfg.token = token(secret_token);
    let console = start_console(cfg).await;
    let base = &console.url;

    let (code, _) = get(&format!("{base}/dlq")).await;
    assert_eq!(code, 303, "redirected to the login form");
    let (code, _, _) = post(&format!("{base}/redrive"), &[("pos", "0/0")]).await;
    assert_eq!(code, 401);
    let r = client()
        .get(format!("{base}/dlq"))
        .bearer_auth(secret_token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200, "a bearer token opens it");
    let r = client()
        .get(format!("{base}/dlq"))
        .bearer_auth("tok-wrong-0123456789")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 303);

    // The login form: a wrong token is refused, the right one sets a session cookie.
    let (code, login) = get(&format!("{base}/login")).await;
    assert_eq!(code, 200);
    let csrf = csrf_of(&login);
    let (code, _, _) = post(
        &format!("{base}/login"),
        &[("csrf", &csrf), ("token", "nope")],
    )
    .await;
    assert_eq!(code, 401);
    let (code, _, _) = post(&format!("{base}/login"), &[("token", secret_token)]).await;
    assert_eq!(code, 403, "login needs the form's CSRF token too");
    let r = client()
        .post(format!("{base}/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("csrf={csrf}&token={secret_token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 303);
    let cookie = r.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(
        cookie.contains("HttpOnly") && !cookie.contains(secret_token),
        "{cookie}"
    );
    let session = cookie.split(';').next().unwrap().to_string();
    let r = client()
        .get(format!("{base}/"))
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert!(!r.text().await.unwrap().contains(secret_token));

    // Without a token, only loopback host names are served (no DNS rebinding).
    let open = start_console(console_cfg(&topo, &unique("svc"))).await;
    let r = client()
        .get(format!("{}/", open.url))
        .header("host", "evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
}

#[test]
fn the_binary_refuses_a_non_loopback_bind_without_a_token_and_never_logs_the_token() {
    let brokers = brokers();
    let open_to_all = [
        "console",
        "--topic",
        "orders",
        "--listen",
        "0.0.0.0:0",
        "--brokers",
        &brokers,
    ];
    // Bounded: a console that wrongly starts would serve forever.
    let mut child = rebound()
        .args(open_to_all)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + T;
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            let _ = child.wait();
            panic!("the console started on 0.0.0.0 without a token");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--listen") && err.contains("--token"), "{err}");

    let token = "tok-never-logged-0123456789";
    let mut child = rebound()
        .args(open_to_all)
        .env("REBOUND_CONSOLE_TOKEN", token)
        .env("RUST_LOG", "debug")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = String::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        seen.push_str(&line);
        seen.push('\n');
        if line.contains("rebound console on http://") {
            break;
        }
    }
    child.kill().unwrap();
    let _ = child.wait();
    assert!(seen.contains("console listening"), "{seen}");
    assert!(!seen.contains(token), "the token was logged:\n{seen}");
}

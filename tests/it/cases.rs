//! Failures users of other Kafka retry tools reported, turned into inputs for rebound (issue 14):
//! a far-future `process_after` in a tier, many attempts, a tombstone through the whole
//! topology, and tier topics an operator created unsafely. Each test asserts on what is in the
//! topics (or what the binary says), against the real broker.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::*;
use rebound::config::ReplayConfig;
use rebound::handler::{Handler, Message, Outcome};
use rebound::headers as h;
use tokio_util::sync::CancellationToken;

const T: Duration = Duration::from_secs(30);

/// A tier message due in 2999 must not hold its partition: it is dead-lettered as `invalid`
/// (class `process_after_too_far`) with its headers kept and a message that says why, and the
/// due message behind it on the same partition is handled. rebound runs with its defaults
/// (`--max-delay` 4 × the last tier, at least 1 h).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_far_future_tier_message_is_dead_lettered_and_the_due_one_behind_it_is_handled() {
    let Scenario { main: _, topo } = Scenario::create("far", &[300], 1).await;
    let now = h::format_time(chrono::Utc::now());
    let tier_message = |id: &str, due: &str| {
        Out::new(id, &format!("{id}:ok"))
            .partition(0)
            .header(h::PROCESS_AFTER, due)
            .header(h::ATTEMPT, "1")
            .header("trace", id)
    };
    produce(
        &topo.tiers[0].topic,
        &[
            tier_message("far", "2999-01-01T00:00:00.000Z"),
            tier_message("due", &now),
        ],
    )
    .await;
    let recorder = Recording::scripted();
    let svc = start(
        config(topo.clone(), &unique("g")),
        Arc::new(recorder.clone()),
    );
    let r = recorder.clone();
    wait_until("the due message behind the far one", T, move || {
        r.by_id().contains_key("due:ok")
    })
    .await;
    let dlq = read_topic(&topo.dlq, 1, T);
    let counted: f64 = svc
        .metrics
        .render()
        .lines()
        .filter(|l| {
            l.starts_with("rebound_invalid_total{")
                && l.contains("class=\"process_after_too_far\"")
                && l.contains("tier=\"retry-300ms\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    svc.stop().await;

    assert!(
        !recorder.by_id().contains_key("far:ok"),
        "the far-future message is never handled"
    );
    assert_eq!(dlq.len(), 1, "only the far-future message is dead-lettered");
    let g = &dlq[0];
    assert_eq!(g.payload_str(), "far:ok");
    assert_eq!(g.header(h::DLQ_REASON).as_deref(), Some("invalid"));
    assert_eq!(
        g.header(h::ERROR_CLASS).as_deref(),
        Some("process_after_too_far")
    );
    assert_eq!(g.header(h::ERROR_KIND).as_deref(), Some("permanent"));
    assert_eq!(
        g.header(h::PROCESS_AFTER).as_deref(),
        Some("2999-01-01T00:00:00.000Z"),
        "the DLQ copy keeps the value it refused"
    );
    assert_eq!(g.header("trace").as_deref(), Some("far"));
    let text = g.header(h::ERROR_MESSAGE).unwrap_or_default();
    assert!(
        text.contains("2999-01-01T00:00:00.000Z") && text.contains("--max-delay (1h)"),
        "{text}"
    );
    assert_eq!(counted, 1.0, "rebound_invalid_total counts it");
}

/// Attempts past 127 and 255 (where an 8-bit counter would wrap): `--max-retries 260` means
/// 261 tries, then `exhausted` with `rebound-attempt: 261`. Tiers of 10 ms so that 260 hops
/// finish in seconds (the default tiers would take hours).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_retries_260_tries_261_times_then_exhausts_with_attempt_261() {
    let Scenario { main, mut topo } = Scenario::create("many", &[10], 1).await;
    topo.max_retries = 260;
    produce(&main, &[Out::new("k", "m:always")]).await;
    let recorder = Recording::scripted();
    let mut cfg = config(topo.clone(), &unique("g"));
    // One message failing 261 times with nothing else flowing is, to the breaker, an outage.
    cfg.breaker = rebound::breaker::BreakerConfig::disabled();
    let svc = start(cfg, Arc::new(recorder.clone()));
    let dlq = read_topic(&topo.dlq, 1, Duration::from_secs(120));
    svc.stop().await;

    let mut attempts: Vec<u32> = recorder.records().iter().map(|c| c.attempt).collect();
    attempts.sort_unstable();
    attempts.dedup();
    assert_eq!(
        attempts,
        (0..=260).collect::<Vec<u32>>(),
        "every try, once each"
    );
    assert_eq!(dlq.len(), 1);
    assert_eq!(dlq[0].header(h::DLQ_REASON).as_deref(), Some("exhausted"));
    assert_eq!(dlq[0].header(h::ATTEMPT).as_deref(), Some("261"));
}

/// Fails a message with a null payload (a tombstone) once transiently and then permanently;
/// succeeds once it has been replayed.
#[derive(Clone, Default)]
struct Tombstones {
    seen: Arc<Mutex<Vec<(String, u32, bool)>>>,
}

#[async_trait::async_trait]
impl Handler for Tombstones {
    async fn handle(&self, m: &Message) -> Outcome {
        let replayed = h::last(&m.headers, h::REPLAY_COUNT).is_some();
        self.seen
            .lock()
            .unwrap()
            .push((m.topic.clone(), m.attempt, m.payload.is_none()));
        match (replayed, m.attempt) {
            (true, _) => Outcome::Success,
            (false, 0) => Outcome::transient("busy", "try later"),
            (false, _) => Outcome::permanent("refused", "no"),
        }
    }
}

/// A tombstone (null payload, not an empty one) through a tier, into the DLQ, and back to the
/// main topic with `replay-dlq`: null at every hop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tombstone_stays_null_through_a_tier_the_dlq_and_a_replay() {
    let Scenario { main, topo } = Scenario::create("tomb", &[200], 1).await;
    produce(
        &main,
        &[Out {
            key: Some(b"gone".to_vec()),
            payload: None,
            ..Out::default()
        }],
    )
    .await;
    let handler = Tombstones::default();
    let group = unique("g");
    let svc = start(config(topo.clone(), &group), Arc::new(handler.clone()));
    let dlq = read_topic(&topo.dlq, 1, T);
    assert_eq!(dlq.len(), 1, "the tombstone reached the DLQ");
    let mut replay = ReplayConfig::new(config(topo.clone(), &format!("{group}.replay")).cluster);
    replay.progress_every = 1;
    let mut out = Vec::new();
    let summary = within(
        "replay",
        T,
        rebound::dlq::replay(&replay, &CancellationToken::new(), &mut out),
    )
    .await
    .expect("replay runs");
    assert_eq!(summary.replayed, 1, "{summary}");
    let s = handler.clone();
    wait_until("the replayed tombstone handled", T, move || {
        s.seen.lock().unwrap().len() >= 3
    })
    .await;
    svc.stop().await;

    let tier = read_topic(&topo.tiers[0].topic, 1, T);
    let main_records = read_topic(&main, 2, T);
    assert_eq!(tier.len(), 1);
    assert_eq!(main_records.len(), 2, "the original and the replayed copy");
    for (where_, g) in [("tier", &tier[0]), ("dlq", &dlq[0])]
        .into_iter()
        .chain(main_records.iter().map(|g| ("main", g)))
    {
        assert_eq!(g.payload, None, "{where_}: the payload stays null");
        assert_eq!(g.key.as_deref(), Some(&b"gone"[..]), "{where_}");
    }
    assert!(main_records[1].header(h::REPLAY_COUNT).is_some());
    let seen = handler.seen.lock().unwrap().clone();
    assert!(
        seen.iter().all(|(_, _, null)| *null),
        "the handler saw a null payload every time: {seen:?}"
    );
}

/// `retention.ms` and `cleanup.policy` of `topic`, as the broker describes them.
async fn topic_settings(topic: &str) -> (String, String) {
    use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
    let admin: AdminClient<rdkafka::client::DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .expect("admin client");
    let res = admin
        .describe_configs(&[ResourceSpecifier::Topic(topic)], &AdminOptions::new())
        .await
        .expect("describe");
    let r = res.into_iter().next().unwrap().expect("described");
    let get = |n: &str| r.get(n).and_then(|e| e.value.clone()).unwrap_or_default();
    (get("retention.ms"), get("cleanup.policy"))
}

/// `--brokers B --topic MAIN --tiers TIERS`.
fn topology_args(main: &str, tiers: &str) -> Vec<String> {
    ["--brokers", &brokers(), "--topic", main, "--tiers", tiers]
        .map(String::from)
        .to_vec()
}

/// Creates `topic` with `partitions` partitions and these topic settings.
async fn create_with(topic: &str, partitions: i32, settings: &[(&str, &str)]) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let admin: AdminClient<rdkafka::client::DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .expect("admin client");
    let t = settings.iter().fold(
        NewTopic::new(topic, partitions, TopicReplication::Fixed(1)),
        |t, (k, v)| t.set(k, v),
    );
    for r in admin
        .create_topics(&[t], &AdminOptions::new())
        .await
        .expect("create")
    {
        r.expect("created");
    }
}

/// The operator-created topology of issue 14: `orders` with 6 partitions, `orders.retry-1m`
/// with 2 and `cleanup.policy=compact`, `orders.retry-5m` with `retention.ms=60000`,
/// `orders.dlq` with 3. `plan` names every hazard with its fix; `apply` refuses and changes
/// nothing; `run` refuses with exit 2 and the fix; `apply --force` raises the short retention
/// (never touching the compaction).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsafe_operator_topology_is_reported_refused_and_only_forced_through() {
    let main = unique("ops");
    let (r1, r5, dlq) = (
        format!("{main}.retry-1m"),
        format!("{main}.retry-5m"),
        format!("{main}.dlq"),
    );
    create_with(&main, 6, &[]).await;
    create_with(&r1, 2, &[("cleanup.policy", "compact")]).await;
    create_with(&r5, 6, &[("retention.ms", "60000")]).await;
    create_with(&dlq, 3, &[]).await;
    let args = topology_args(&main, "1m,5m");

    let (code, out, err) = output(rebound().args(["topics", "plan"]).args(&args));
    assert_eq!(code, 0, "{err}");
    for want in [
        format!("LOSES MESSAGES {r1}: cleanup.policy=compact"),
        format!("--entity-name {r1} --add-config cleanup.policy=delete"),
        format!("LOSES MESSAGES {r5}: retention.ms=60000"),
        "copies are deleted before they are due".to_string(),
        format!("note {r1}: 2 partitions, the main topic has 6"),
        format!("note {dlq}: 3 partitions, the main topic has 6"),
    ] {
        assert!(out.contains(&want), "plan lacks {want:?}:\n{out}");
    }

    let (code, _, err) = output(rebound().args(["topics", "apply"]).args(&args));
    assert_eq!(code, 2, "apply refuses: {err}");
    assert!(
        err.contains("refusing to apply") && err.contains("cleanup.policy=delete"),
        "{err}"
    );
    assert_eq!(
        topic_settings(&r5).await.0,
        "60000",
        "a refused apply changes nothing"
    );

    let (code, _, err) = output(
        rebound()
            .args(["run", "--handler", "command", "--command", "cat"])
            .args(["--metrics-addr", "off"])
            .args(&args),
    );
    assert_eq!(code, 2, "run refuses: {err}");
    assert!(
        err.contains(&format!("LOSES MESSAGES {r1}"))
            && err.contains(&format!("LOSES MESSAGES {r5}"))
            && err.contains("kafka-configs.sh"),
        "{err}"
    );

    let (code, out, err) = output(rebound().args(["topics", "apply", "--force"]).args(&args));
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("--force"), "{err}");
    assert!(out.contains("apply raises retention"), "{out}");
    let (retention, _) = topic_settings(&r5).await;
    let retention: i64 = retention.parse().unwrap();
    assert!(
        retention >= 300_000 + 7 * 86_400_000,
        "raised to the delay plus 7 days at least: {retention}"
    );
    assert_eq!(
        topic_settings(&r1).await.1,
        "compact",
        "apply never changes an existing cleanup.policy"
    );
}

/// `apply` creates tiers and the DLQ with `cleanup.policy=delete` and a retention of at least
/// the tier delay plus 7 days (the DLQ: 7 days), whatever the broker's default.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_creates_tiers_that_keep_their_copies() {
    let main = unique("safe");
    create_with(&main, 2, &[]).await;
    let args = topology_args(&main, "1s,8d");
    let (code, out, err) = output(rebound().args(["topics", "apply"]).args(&args));
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.matches("created, 2 partitions").count(), 3, "{out}");
    let (r, policy) = topic_settings(&format!("{main}.retry-8d")).await;
    assert_eq!(policy, "delete");
    assert!(r.parse::<i64>().unwrap() >= 15 * 86_400_000, "{r}");
    let (r, policy) = topic_settings(&format!("{main}.dlq")).await;
    assert_eq!(policy, "delete");
    assert!(r.parse::<i64>().unwrap() >= 7 * 86_400_000, "{r}");
    let (code, out, err) = output(rebound().args(["topics", "plan"]).args(&args));
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains("hazards:"), "{out}");
}

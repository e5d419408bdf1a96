//! The core retry topology against the real broker: each test owns its topics and asserts on
//! what the handler saw and on what was read back from the tier and DLQ topics.

use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use chrono::Utc;
use rebound::headers as h;

const T: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn success_is_handled_once_and_routes_nowhere() {
    let Scenario { main, topo } = Scenario::create("ok", &[300, 600], 2).await;
    produce(&main, &scripted(20, "ok")).await;

    let rec = Recording::scripted();
    let svc = start(config(topo.clone(), &unique("g")), Arc::new(rec.clone()));
    let r = rec.clone();
    wait_until("20 messages handled", T, move || r.count() >= 20).await;
    svc.stop().await;

    let by_id = rec.by_id();
    assert_eq!(by_id.len(), 20);
    assert!(by_id
        .values()
        .all(|calls| calls.len() == 1 && calls[0].attempt == 0));
    for tier in &topo.tiers {
        assert!(
            read_topic(&tier.topic, 1, Duration::from_millis(500)).is_empty(),
            "{} must be empty",
            tier.topic
        );
    }
    assert!(read_topic(&topo.dlq, 1, Duration::from_millis(500)).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_once_goes_through_tier_one_then_succeeds() {
    let Scenario { main, topo } = Scenario::create("once", &[400, 800], 1).await;
    produce(
        &main,
        &[Out::new("key-1", "a:fail-once").header("trace", "t-1")],
    )
    .await;

    let rec = Recording::scripted();
    let svc = start(config(topo.clone(), &unique("g")), Arc::new(rec.clone()));
    let r = rec.clone();
    wait_until("the retry is handled", T, move || r.count() >= 2).await;
    svc.stop().await;

    let calls = rec.records();
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert_eq!(
        (calls[0].topic.as_str(), calls[0].attempt),
        (main.as_str(), 0)
    );
    assert_eq!(
        (calls[1].topic.as_str(), calls[1].attempt),
        (topo.tiers[0].topic.as_str(), 1)
    );
    let due = calls[1].process_after.expect("process_after on the retry");
    assert!(
        calls[1].at >= due,
        "handled at {} before process_after {due}",
        calls[1].at
    );

    let tier = read_topic(&topo.tiers[0].topic, 1, T);
    assert_eq!(tier.len(), 1);
    let copy = &tier[0];
    assert_eq!(copy.key.as_deref(), Some(&b"key-1"[..]));
    assert_eq!(copy.payload_str(), "a:fail-once");
    assert_eq!(copy.header("trace").as_deref(), Some("t-1"));
    assert_eq!(copy.header(h::ATTEMPT).as_deref(), Some("1"));
    assert_eq!(
        copy.header(h::ORIGINAL_TOPIC).as_deref(),
        Some(main.as_str())
    );
    assert_eq!(copy.header(h::ORIGINAL_PARTITION).as_deref(), Some("0"));
    assert_eq!(copy.header(h::ORIGINAL_OFFSET).as_deref(), Some("0"));
    assert!(copy.header(h::ORIGINAL_TIMESTAMP).is_some());
    assert_eq!(copy.header(h::ERROR_KIND).as_deref(), Some("transient"));
    assert_eq!(
        copy.header(h::ERROR_CLASS).as_deref(),
        Some("test_transient")
    );
    assert!(copy
        .header(h::ERROR_MESSAGE)
        .is_some_and(|m| m.contains("failure 1")));
    let first = h::parse_time(
        h::FIRST_FAILED_AT,
        copy.header(h::FIRST_FAILED_AT)
            .as_deref()
            .map(str::as_bytes),
    )
    .unwrap();
    let pa = h::parse_time(
        h::PROCESS_AFTER,
        copy.header(h::PROCESS_AFTER).as_deref().map(str::as_bytes),
    )
    .unwrap();
    let gap = (pa - first).num_milliseconds();
    assert!(
        (399..=600).contains(&gap),
        "process_after should be ~400 ms after the failure, was {gap} ms"
    );
    assert!(read_topic(&topo.dlq, 1, Duration::from_millis(500)).is_empty());
    assert!(read_topic(&topo.tiers[1].topic, 1, Duration::from_millis(300)).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_every_time_is_tried_one_plus_max_retries_times_then_exhausted() {
    let Scenario { main, mut topo } = Scenario::create("exhaust", &[200, 400], 1).await;
    topo.max_retries = 3; // more retries than tiers: the last tier repeats
    produce(&main, &[Out::new("k", "x:always")]).await;

    let rec = Recording::scripted();
    let svc = start(config(topo.clone(), &unique("g")), Arc::new(rec.clone()));
    let dlq = read_topic(&topo.dlq, 1, T);
    svc.stop().await;

    let calls = rec.records();
    assert_eq!(
        calls.iter().map(|c| c.attempt).collect::<Vec<_>>(),
        vec![0, 1, 2, 3]
    );
    let topics: Vec<&str> = calls.iter().map(|c| c.topic.as_str()).collect();
    assert_eq!(
        topics,
        vec![
            main.as_str(),
            &topo.tiers[0].topic,
            &topo.tiers[1].topic,
            &topo.tiers[1].topic
        ]
    );
    assert_eq!(dlq.len(), 1);
    assert_eq!(dlq[0].header(h::DLQ_REASON).as_deref(), Some("exhausted"));
    assert_eq!(
        dlq[0].header(h::ATTEMPT).as_deref(),
        Some("4"),
        "attempt = tries"
    );
    assert_eq!(
        dlq[0].header(h::ORIGINAL_TOPIC).as_deref(),
        Some(main.as_str())
    );
    assert_eq!(
        read_topic(&topo.tiers[1].topic, 3, Duration::from_secs(2)).len(),
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_goes_to_the_dlq_at_once_with_everything_the_user_sent() {
    let Scenario { main, topo } = Scenario::create("perm", &[300], 1).await;
    let key = vec![0xff, 0x00, b'k']; // not UTF-8
    let mut out = Out::new("", "p:permanent")
        .header("trace", "abc")
        .header("trace", "def");
    out.key = Some(key.clone());
    out.headers.push(h::Header {
        name: vec![0xc3, 0x28],
        value: Some(vec![1, 2, 3]),
    });
    produce(&main, &[out]).await;

    let rec = Recording::scripted();
    let svc = start(config(topo.clone(), &unique("g")), Arc::new(rec.clone()));
    let dlq = read_topic(&topo.dlq, 1, T);
    svc.stop().await;

    assert_eq!(rec.count(), 1);
    assert_eq!(dlq.len(), 1);
    let d = &dlq[0];
    assert_eq!(d.key.as_deref(), Some(&key[..]));
    assert_eq!(d.payload_str(), "p:permanent");
    let traces: Vec<_> = d
        .headers
        .iter()
        .filter(|x| x.name == b"trace")
        .map(|x| x.value.clone().unwrap())
        .collect();
    assert_eq!(
        traces,
        vec![b"abc".to_vec(), b"def".to_vec()],
        "duplicate user headers kept in order"
    );
    assert!(d
        .headers
        .iter()
        .any(|x| x.name == [0xc3, 0x28] && x.value.as_deref() == Some(&[1, 2, 3][..])));
    assert_eq!(d.header(h::DLQ_REASON).as_deref(), Some("permanent"));
    assert_eq!(d.header(h::ERROR_KIND).as_deref(), Some("permanent"));
    assert_eq!(d.header(h::ERROR_CLASS).as_deref(), Some("test_permanent"));
    assert_eq!(d.header(h::ATTEMPT).as_deref(), Some("1"));
    assert!(read_topic(&topo.tiers[0].topic, 1, Duration::from_millis(500)).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_are_never_early_and_lateness_stays_under_a_second() {
    let Scenario { main, topo } = Scenario::create("late", &[500, 1000], 2).await;
    produce(&main, &scripted(30, "fail-2")).await;

    let rec = Recording::scripted();
    let mut cfg = config(topo.clone(), &unique("g"));
    // Every message fails twice on purpose (60 retries to time): the breaker would rightly open.
    cfg.breaker = rebound::breaker::BreakerConfig::disabled();
    let svc = start(cfg, Arc::new(rec.clone()));
    let r = rec.clone();
    wait_until("30 messages tried 3 times", T, move || r.count() >= 90).await;
    svc.stop().await;

    let retries: Vec<_> = rec
        .records()
        .into_iter()
        .filter(|c| c.attempt > 0)
        .collect();
    assert_eq!(retries.len(), 60);
    let mut worst = 0;
    for c in &retries {
        let due = c.process_after.expect("process_after");
        let late = (c.at - due).num_milliseconds();
        assert!(
            c.at >= due,
            "{} handled {} ms before process_after",
            c.id,
            -late
        );
        worst = worst.max(late);
    }
    assert!(worst < 1000, "worst lateness {worst} ms");
    let succeeded = rec.records().iter().filter(|c| c.attempt == 2).count();
    assert_eq!(succeeded, 30);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_tier_partition_does_not_block_another_partition() {
    let main = unique("pause");
    // A 60 s tier that is never waited out: the test writes its own `process_after` (4 s ahead).
    let topo = topology(&main, &[60_000]);
    create_topology(&topo, 2).await;
    let tier = &topo.tiers[0].topic;
    let far = Utc::now() + chrono::Duration::seconds(4);
    let retry = |id: &str, p: i32, due: chrono::DateTime<Utc>| {
        Out::new(id, &format!("{id}:ok"))
            .partition(p)
            .header(h::PROCESS_AFTER, &h::format_time(due))
            .header(h::ATTEMPT, "1")
    };
    produce(
        tier,
        &[
            retry("late-head", 0, far),
            retry("behind-head", 0, Utc::now()),
            retry("free-1", 1, Utc::now()),
            retry("free-2", 1, Utc::now()),
        ],
    )
    .await;

    let rec = Recording::scripted();
    let svc = start(config(topo.clone(), &unique("g")), Arc::new(rec.clone()));
    let r = rec.clone();
    wait_until("all four handled", T, move || r.count() >= 4).await;
    svc.stop().await;

    let calls = rec.records();
    let at = |id: &str| {
        calls
            .iter()
            .find(|c| c.id.starts_with(id))
            .map(|c| c.at)
            .unwrap()
    };
    assert!(
        at("free-1") < far && at("free-2") < far,
        "partition 1 waited for partition 0's head"
    );
    assert!(at("late-head") >= far, "the head was handled early");
    assert!(
        at("behind-head") >= at("late-head"),
        "a message passed its paused head"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_routing_headers_are_dead_lettered_as_invalid() {
    let Scenario { main: _, topo } = Scenario::create("invalid", &[300], 1).await;
    let tier = &topo.tiers[0].topic;
    produce(
        tier,
        &[
            Out::new("a", "a:ok")
                .header(h::PROCESS_AFTER, "next tuesday")
                .header(h::ATTEMPT, "1"),
            Out::new("b", "b:ok")
                .header(h::PROCESS_AFTER, &h::format_time(Utc::now()))
                .header(h::ATTEMPT, "-3"),
            Out::new("c", "c:ok").header(h::ATTEMPT, "1"),
            Out::new("d", "d:ok")
                .header(h::PROCESS_AFTER, &h::format_time(Utc::now()))
                .header(h::ATTEMPT, "1"),
        ],
    )
    .await;

    let rec = Recording::scripted();
    let svc = start(config(topo.clone(), &unique("g")), Arc::new(rec.clone()));
    let dlq = read_topic(&topo.dlq, 3, T);
    let r = rec.clone();
    wait_until("the valid one handled", T, move || r.count() >= 1).await;
    svc.stop().await;

    assert_eq!(
        rec.records()
            .iter()
            .map(|c| c.id.as_str())
            .collect::<Vec<_>>(),
        vec!["d:ok"]
    );
    let mut ids: Vec<String> = dlq.iter().map(|g| g.payload_str()).collect();
    ids.sort();
    assert_eq!(ids, vec!["a:ok", "b:ok", "c:ok"]);
    for g in &dlq {
        assert_eq!(g.header(h::DLQ_REASON).as_deref(), Some("invalid"));
        assert_eq!(g.header(h::ERROR_CLASS).as_deref(), Some("invalid_header"));
    }
    let a = dlq.iter().find(|g| g.payload_str() == "a:ok").unwrap();
    assert!(a
        .header(h::ERROR_MESSAGE)
        .unwrap()
        .contains(h::PROCESS_AFTER));
    assert_eq!(
        a.header(h::PROCESS_AFTER).as_deref(),
        Some("next tuesday"),
        "the bad value is kept for diagnosis"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_after_a_clean_stop_resumes_without_loss_or_duplicates() {
    let Scenario { main, topo } = Scenario::create("restart", &[300], 3).await;
    produce(&main, &scripted(200, "ok")).await;
    let group = unique("g");

    // A slow handler, so that the stop lands mid-run.
    let rec = Recording::scripted();
    let slow = {
        let rec = rec.clone();
        rebound::handler::handler_fn(move |m| {
            let rec = rec.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(5)).await;
                rebound::Handler::handle(&rec, &m).await
            }
        })
    };
    let mut cfg = config(topo.clone(), &group);
    cfg.max_in_flight = 4;
    let first = start(cfg.clone(), Arc::new(slow));
    let r = rec.clone();
    wait_until("some handled", T, move || r.count() >= 50).await;
    first.stop().await;
    let after_first = rec.count();
    assert!(
        after_first < 200,
        "the stop should land mid-run (handled {after_first})"
    );

    let second = start(cfg, Arc::new(rec.clone()));
    let r = rec.clone();
    wait_until("all 200 handled", T, move || r.by_id().len() >= 200).await;
    second.stop().await;

    let by_id = rec.by_id();
    assert_eq!(by_id.len(), 200, "nothing lost");
    let dups: Vec<_> = by_id
        .iter()
        .filter(|(_, c)| c.len() > 1)
        .map(|(id, _)| id.clone())
        .collect();
    assert!(
        dups.is_empty(),
        "a graceful stop commits everything it finished; repeated: {dups:?}"
    );
}

/// Watches the handler calls of keyed messages: a call that starts while another of its key is
/// in the handler, the order in which each key's messages were started, and how many calls
/// were in the handler at once.
#[derive(Default)]
struct KeyWatch {
    busy: std::sync::Mutex<std::collections::HashSet<Vec<u8>>>,
    overlaps: std::sync::atomic::AtomicUsize,
    started: std::sync::Mutex<std::collections::HashMap<Vec<u8>, Vec<u64>>>,
    in_handler: std::sync::atomic::AtomicUsize,
    most_at_once: std::sync::atomic::AtomicUsize,
    done: std::sync::atomic::AtomicUsize,
}

#[async_trait::async_trait]
impl rebound::Handler for KeyWatch {
    async fn handle(&self, m: &rebound::Message) -> rebound::Outcome {
        use std::sync::atomic::Ordering::SeqCst;
        let key = m.key.clone().unwrap_or_default();
        let seq: u64 = std::str::from_utf8(m.payload())
            .ok()
            .and_then(|p| p.parse().ok())
            .unwrap_or(u64::MAX);
        if !self.busy.lock().expect("busy").insert(key.clone()) {
            self.overlaps.fetch_add(1, SeqCst);
        }
        let now = self.in_handler.fetch_add(1, SeqCst) + 1;
        self.most_at_once.fetch_max(now, SeqCst);
        self.started
            .lock()
            .expect("started")
            .entry(key.clone())
            .or_default()
            .push(seq);
        // One call in three waits (its job becomes a task and others start meanwhile); the
        // rest answer at once (finished in the loop's inline poll, accounted for in groups).
        if seq % 3 == 0 {
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
        self.in_handler.fetch_sub(1, SeqCst);
        self.busy.lock().expect("busy").remove(&key);
        self.done.fetch_add(1, SeqCst);
        rebound::Outcome::Success
    }
}

/// `--max-in-flight` lets several messages of a partition run at once, but never two of one
/// key, and a key's messages start in the order they were read: with handlers that wait and
/// handlers that answer at once, on one partition where every key comes back every 7 messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_key_messages_are_never_in_flight_together_and_start_in_order() {
    let Scenario { main, topo } = Scenario::create("keys", &[60_000], 1).await;
    let n = 700u64;
    let records: Vec<Out> = (0..n)
        .map(|i| Out::new(&format!("key-{}", i % 7), &i.to_string()))
        .collect();
    produce(&main, &records).await;

    let watch = Arc::new(KeyWatch::default());
    let svc = start(config(topo, &unique("g")), watch.clone());
    let w = watch.clone();
    wait_until("every message handled", T, move || {
        w.done.load(std::sync::atomic::Ordering::SeqCst) >= n as usize
    })
    .await;
    svc.stop().await;

    use std::sync::atomic::Ordering::SeqCst;
    assert_eq!(
        watch.overlaps.load(SeqCst),
        0,
        "a call started while another of its key was in the handler"
    );
    let started = watch.started.lock().expect("started").clone();
    assert_eq!(started.len(), 7);
    for (key, seqs) in &started {
        let key = String::from_utf8_lossy(key);
        assert_eq!(seqs.len(), (n / 7) as usize, "{key}: {seqs:?}");
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "{key} started out of order: {seqs:?}"
        );
    }
    assert!(
        watch.most_at_once.load(SeqCst) > 1,
        "different keys ran concurrently (else this test proves nothing)"
    );
}

/// Each call blocks its thread for 20 ms without an `.await` (a CPU-bound or blocking handler,
/// written naively), then waits 5 ms. Counts calls begun and finished, and how many were in the
/// blocking part at once.
#[derive(Default)]
struct Blocking {
    begun: std::sync::atomic::AtomicUsize,
    finished: std::sync::atomic::AtomicUsize,
    /// Calls begun and not over (finished, or dropped at their timeout).
    open: Arc<std::sync::atomic::AtomicUsize>,
    blocking: std::sync::atomic::AtomicUsize,
    most_blocking: std::sync::atomic::AtomicUsize,
}

/// Counts a call as over when it is dropped, finished or not.
struct Open(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

#[async_trait::async_trait]
impl rebound::Handler for Blocking {
    async fn handle(&self, _m: &rebound::Message) -> rebound::Outcome {
        use std::sync::atomic::Ordering::SeqCst;
        self.open.fetch_add(1, SeqCst);
        let _open = Open(self.open.clone());
        self.begun.fetch_add(1, SeqCst);
        let now = self.blocking.fetch_add(1, SeqCst) + 1;
        self.most_blocking.fetch_max(now, SeqCst);
        std::thread::sleep(Duration::from_millis(20));
        self.blocking.fetch_sub(1, SeqCst);
        tokio::time::sleep(Duration::from_millis(5)).await;
        self.finished.fetch_add(1, SeqCst);
        rebound::Outcome::Success
    }
}

/// A job's first poll runs inline in the poll loop, so a handler that blocks its thread holds
/// the loop while it blocks. Once an inline poll is seen to take long, the loop sends the next
/// jobs to their own tasks: their blocking parts then run side by side on the runtime's two
/// workers. Such a job may wait for a thread behind others (here longer than the handler
/// timeout); its call's timeout counts from when it first runs, so no call is cut off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_that_blocks_its_thread_runs_side_by_side_with_its_whole_timeout() {
    use std::sync::atomic::Ordering::SeqCst;
    let Scenario { main, topo } = Scenario::create("blocking", &[60_000], 1).await;
    let n = 200;
    produce(&main, &scripted(n, "ok")).await;

    let handler = Arc::new(Blocking::default());
    let mut config = config(topo, &unique("g"));
    // Shorter than the wait for a thread of the last of 32 jobs in flight (20 ms each on two
    // threads), ten times a call (25 ms): the default (10 s) would hide a timeout counted from
    // the spawn.
    config.handler_timeout = Duration::from_millis(250);
    let svc = start(config, handler.clone());
    let h = handler.clone();
    wait_until("every message's call over", T, move || {
        h.begun.load(SeqCst) >= n && h.open.load(SeqCst) == 0
    })
    .await;
    svc.stop().await;

    assert_eq!(
        handler.finished.load(SeqCst),
        n,
        "calls cut off by the handler timeout (begun {}): it counted time spent waiting for a thread",
        handler.begun.load(SeqCst)
    );
    assert_eq!(handler.begun.load(SeqCst), n, "a message was handled twice");
    assert!(
        handler.most_blocking.load(SeqCst) > 1,
        "no two blocking calls ran at once: the loop kept polling them inline"
    );
}

//! Hostile input: a corpus of bad routing headers injected straight into a delay tier, and odd
//! keys, headers and payloads on the main topic. Each case has one documented outcome (the table
//! in RELIABILITY.md); none may crash the service, stall a partition or get lost. Sentinels
//! produced after the corpus prove that every partition still moves.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use crate::rel::*;
use chrono::{DateTime, Utc};
use rebound::headers::{self as h, Header};
use rebound::{Handler, Message, Outcome};

/// What must become of a case.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Expect {
    /// Handled successfully, last at this attempt; never in the DLQ.
    Handled(u32),
    /// In the DLQ with this reason and error class; never handled successfully.
    Dead(&'static str, &'static str),
}

#[derive(Debug, Clone)]
struct Call {
    case: String,
    attempt: u32,
    at: DateTime<Utc>,
    process_after: Option<DateTime<Utc>>,
    ok: bool,
}

/// Identifies a message by its `x-case` header; `x-want: transient` fails every call,
/// `transient-once` only the first (attempt 0); anything else succeeds. Recorded by
/// [`Recording`]; [`calls`] reads the records as cases.
struct CaseHandler;

/// The recorded calls, by case (`x-case`); `process_after` only for tier messages.
fn calls(recording: &Recording) -> Vec<Call> {
    recording
        .records()
        .into_iter()
        .map(|r| Call {
            case: header_text(&r.headers, "x-case"),
            attempt: r.attempt,
            at: r.at,
            process_after: if r.topic.contains(".retry-") {
                r.process_after
            } else {
                None
            },
            ok: r.status == 200,
        })
        .collect()
}

fn header_text(headers: &[Header], name: &str) -> String {
    h::last(headers, name)
        .and_then(|x| x.value.as_deref())
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .unwrap_or_default()
}

#[async_trait::async_trait]
impl Handler for CaseHandler {
    async fn handle(&self, m: &Message) -> Outcome {
        let want = header_text(&m.headers, "x-want");
        match want.as_str() {
            "transient" => Outcome::transient("hostile", "fails every time"),
            "transient-once" if m.attempt == 0 => Outcome::transient("hostile", "fails once"),
            _ => Outcome::Success,
        }
    }
}

struct Case {
    name: &'static str,
    out: Out,
    expect: Expect,
}

fn case(name: &'static str, expect: Expect) -> Case {
    Case {
        name,
        out: Out {
            key: Some(name.as_bytes().to_vec()),
            payload: Some(name.as_bytes().to_vec()),
            ..Out::default()
        }
        .header("x-case", name),
        expect,
    }
}

impl Case {
    fn header(mut self, name: &str, value: &str) -> Case {
        self.out = self.out.header(name, value);
        self
    }

    fn raw(mut self, name: &[u8], value: Option<&[u8]>) -> Case {
        self.out.headers.push(raw_header(name, value));
        self
    }

    fn partition(mut self, p: i32) -> Case {
        self.out.partition = Some(p);
        self
    }

    /// A tier message: `process_after` and `rebound-attempt` as given (None = left out).
    fn routing(self, process_after: Option<&str>, attempt: Option<&str>) -> Case {
        let mut c = self;
        if let Some(p) = process_after {
            c = c.header(h::PROCESS_AFTER, p);
        }
        if let Some(a) = attempt {
            c = c.header(h::ATTEMPT, a);
        }
        c
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_hostile_message_has_its_documented_outcome_and_no_partition_stalls() {
    use Expect::*;
    let brokers = brokers();
    let main = unique("hostile");
    let mut topo = topology(&main, &[300, 600]);
    topo.max_retries = 2;
    // Topics that take 8 MiB records (Kafka's default is 1 MiB): the cases are about records
    // larger than rebound's own producer may send, so the broker must accept them from the test.
    create_topics_with(
        &brokers,
        &topo.topics(),
        3,
        &[("max.message.bytes", "8388608")],
    )
    .await;
    let tier = topo.tiers[0].topic.clone();

    let now = h::format_time(Utc::now());
    let now_ms = Utc::now().timestamp_millis().to_string();
    let one_mib = "b".repeat(1 << 20);
    let tier_cases = vec![
        case("pa-missing", Dead("invalid", "invalid_header")).routing(None, Some("1")),
        case("pa-empty", Dead("invalid", "invalid_header")).routing(Some(""), Some("1")),
        case("pa-garbage", Dead("invalid", "invalid_header"))
            .routing(Some("next tuesday"), Some("1")),
        case("pa-epoch-seconds", Dead("invalid", "invalid_header"))
            .routing(Some("1732458600"), Some("1")),
        case("pa-negative", Dead("invalid", "invalid_header"))
            .routing(Some("-1732458600000"), Some("1")),
        case("pa-epoch-ms-overflow", Dead("invalid", "invalid_header"))
            .routing(Some("99999999999999999"), Some("1")),
        case("pa-not-utf8", Dead("invalid", "invalid_header"))
            .raw(h::PROCESS_AFTER.as_bytes(), Some(&[0xff, 0xfe, 0x31]))
            .routing(None, Some("1")),
        case("pa-null-value", Dead("invalid", "invalid_header"))
            .raw(h::PROCESS_AFTER.as_bytes(), None)
            .routing(None, Some("1")),
        case("pa-far-past", Handled(1)).routing(Some("1990-01-01T00:00:00.000Z"), Some("1")),
        case("pa-epoch-ms", Handled(1)).routing(Some(&now_ms), Some("1")),
        case("pa-utc-offset", Handled(1)).routing(Some("2020-01-01T05:30:00+05:30"), Some("1")),
        case("pa-dup-last-valid", Handled(1))
            .routing(Some("garbage"), None)
            .routing(Some(&now), Some("1")),
        case("pa-dup-last-garbage", Dead("invalid", "invalid_header"))
            .routing(Some(&now), Some("1"))
            .routing(Some("garbage"), None),
        case("attempt-negative", Dead("invalid", "invalid_header")).routing(Some(&now), Some("-1")),
        case("attempt-huge", Dead("invalid", "invalid_header"))
            .routing(Some(&now), Some("99999999999")),
        case("attempt-non-numeric", Dead("invalid", "invalid_header"))
            .routing(Some(&now), Some("three")),
        case("attempt-zero", Dead("invalid", "invalid_header")).routing(Some(&now), Some("0")),
        case("attempt-missing", Dead("invalid", "invalid_header")).routing(Some(&now), None),
        case("attempt-max-ok", Handled(1_000_000)).routing(Some(&now), Some("1000000")),
        case("attempt-max-transient", Dead("exhausted", "hostile"))
            .routing(Some(&now), Some("1000000"))
            .header("x-want", "transient"),
        case("attempt-dup-last-valid", Handled(2))
            .routing(Some(&now), Some("x"))
            .routing(None, Some("2")),
        case("first-failed-at-garbage", Dead("invalid", "invalid_header"))
            .routing(Some(&now), Some("1"))
            .header(h::FIRST_FAILED_AT, "yesterday"),
        case("tier-big-header", Handled(1))
            .routing(Some(&now), Some("1"))
            .header("blob", &one_mib),
    ];
    let tier_cases: Vec<Case> = tier_cases
        .into_iter()
        .enumerate()
        .map(|(i, c)| c.partition(i as i32 % 3))
        .collect();
    // A `process_after` beyond --max-delay does not hold its partition: it is dead-lettered,
    // and the due message behind it on the same partition is handled.
    let far_cases = vec![
        case("pa-far-future", Dead("invalid", "process_after_too_far"))
            .routing(Some("2999-01-01T00:00:00.000Z"), Some("1"))
            .partition(2),
        case("behind-far-future", Handled(1))
            .routing(Some(&now), Some("1"))
            .partition(2),
    ];

    let transient_once = |name: &'static str, expect: Expect, payload: Option<Vec<u8>>| {
        let mut c = case(name, expect).header("x-want", "transient-once");
        c.out.payload = payload;
        c
    };
    let mut non_utf8_key = transient_once(
        "main-empty-payload-non-utf8-key",
        Handled(1),
        Some(Vec::new()),
    );
    non_utf8_key.out.key = Some(vec![0xff, 0x00, 0xfe]);
    let mut null_payload = transient_once("main-null-key-null-payload", Handled(1), None);
    null_payload.out.key = None;
    let mut near_max_ok = case("main-near-max-payload-ok", Handled(0));
    near_max_ok.out.payload = Some(vec![b'p'; 999_000]);
    let rejected = Dead("permanent", "produce_rejected");
    let main_cases = vec![
        case("main-big-header-ok", Handled(0)).header("blob", &one_mib),
        case("main-big-header-transient", rejected.clone())
            .header("blob", &one_mib)
            .header("x-want", "transient-once"),
        near_max_ok,
        transient_once(
            "main-near-max-payload-transient",
            Handled(1),
            Some(vec![b'p'; 999_000]),
        ),
        // The original fits librdkafka's default message.max.bytes (1,000,000); a copy, with
        // rebound's headers added, does not, not even the slim DLQ copy.
        transient_once(
            "main-at-limit-payload-transient",
            rejected.clone(),
            Some(vec![b'p'; 999_750]),
        ),
        transient_once(
            "main-too-large-payload-transient",
            rejected.clone(),
            Some(vec![b'p'; 2_100_000]),
        ),
        non_utf8_key,
        null_payload,
        case("main-non-utf8-headers", Handled(1))
            .raw(&[0xff, 0xfe], Some(&[0x00, 0x9f]))
            .raw(b"trace", Some(b"1"))
            .raw(b"trace", Some(b"2"))
            .header("x-want", "transient-once"),
        case("main-nul-in-header-name", Handled(1))
            .raw(b"a\0b", Some(b"v"))
            .header("x-want", "transient-once"),
        case("main-routing-headers-ignored", Handled(1))
            .header(h::PROCESS_AFTER, "garbage")
            .header(h::ATTEMPT, "-5")
            .header(h::PROCESS_AFTER, "2999-01-01T00:00:00.000Z")
            .header("x-want", "transient-once"),
    ];

    let handler = Recording::new(Arc::new(CaseHandler));
    let svc = start(
        config(topo.clone(), &unique("g")),
        Arc::new(handler.clone()),
    );
    wait_ready(&svc).await;
    let outs = |cases: &[Case]| cases.iter().map(|c| c.out.clone()).collect::<Vec<_>>();
    produce_many(&brokers, &tier, &outs(&tier_cases)).await;
    produce_many(&brokers, &tier, &outs(&far_cases)).await;
    produce_many(&brokers, &main, &outs(&main_cases)).await;
    // Sentinels behind the corpus on every partition.
    let sentinels: Vec<Case> = (0..3)
        .map(|p| {
            case("sentinel-tier", Handled(1))
                .routing(Some(&now), Some("1"))
                .partition(p)
        })
        .chain((0..3).map(|p| case("sentinel-main", Handled(0)).partition(p)))
        .collect();
    produce_many(&brokers, &tier, &outs(&sentinels[..3])).await;
    produce_many(&brokers, &main, &outs(&sentinels[3..])).await;

    let all: Vec<&Case> = tier_cases
        .iter()
        .chain(&far_cases)
        .chain(&main_cases)
        .collect();
    let dead_expected = all.iter().filter(|c| matches!(c.expect, Dead(..))).count();
    let finals: Vec<(String, u32)> = all
        .iter()
        .filter_map(|c| match c.expect {
            Handled(a) => Some((c.name.to_string(), a)),
            _ => None,
        })
        .collect();
    // Not `wait_until`: on a stall the outcome table below says which case stalled.
    let until = std::time::Instant::now() + Duration::from_secs(60);
    let waited = loop {
        let done = {
            let calls = calls(&handler);
            let ok = |name: &str, attempt: u32| {
                calls
                    .iter()
                    .any(|c| c.case == name && c.ok && c.attempt == attempt)
            };
            finals.iter().all(|(n, a)| ok(n, *a))
                && calls
                    .iter()
                    .filter(|c| c.case.starts_with("sentinel"))
                    .count()
                    >= 6
        };
        if done || std::time::Instant::now() > until {
            break done;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let dlq = read_dlq(&brokers, &topo, dead_expected, Duration::from_secs(30));
    let paused = metric_sum(&svc.metrics.render(), "rebound_paused_partitions");
    let too_far: f64 = svc
        .metrics
        .render()
        .lines()
        .filter(|l| {
            l.starts_with("rebound_invalid_total{") && l.contains("class=\"process_after_too_far\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    let ready = svc.metrics.health.ready();
    svc.stop().await;
    let tier_copies = read_at(
        &brokers,
        &tier,
        tier_cases.len(),
        Duration::from_secs(1),
        Duration::from_secs(30),
    );
    let calls = calls(&handler);
    let mut outcome_table = Vec::new();
    let mut failures = Vec::new();
    let by_case_dlq: HashMap<String, Vec<&Got>> = dlq.iter().fold(HashMap::new(), |mut m, g| {
        m.entry(
            h::last(&g.headers, "x-case")
                .and_then(|x| x.value.as_deref())
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default(),
        )
        .or_default()
        .push(g);
        m
    });
    for c in &all {
        let mine: Vec<&Call> = calls.iter().filter(|x| x.case == c.name).collect();
        let dead = by_case_dlq.get(c.name).cloned().unwrap_or_default();
        let seen = format!(
            "calls={:?} dlq={:?}",
            mine.iter().map(|x| (x.attempt, x.ok)).collect::<Vec<_>>(),
            dead.iter()
                .map(|g| (g.header(h::DLQ_REASON), g.header(h::ERROR_CLASS)))
                .collect::<Vec<_>>()
        );
        outcome_table.push(format!("{:<34} {:?}: {seen}", c.name, c.expect));
        let good = match &c.expect {
            Handled(a) => dead.is_empty() && mine.iter().any(|x| x.ok && x.attempt == *a),
            Dead(reason, class) => {
                !mine.iter().any(|x| x.ok)
                    && dead.len() == 1
                    && dead[0].header(h::DLQ_REASON).as_deref() == Some(*reason)
                    && dead[0].header(h::ERROR_CLASS).as_deref() == Some(*class)
            }
        };
        if !good {
            failures.push(format!("{}: expected {:?}, {seen}", c.name, c.expect));
        }
        for x in &mine {
            if let Some(due) = x.process_after {
                if x.at < due {
                    failures.push(format!("{} handled before its process_after", c.name));
                }
            }
        }
    }
    let case_of = |g: &Got| h::last(&g.headers, "x-case").and_then(|x| x.value.clone());
    let dlq_of = |name: &str| {
        dlq.iter()
            .find(|g| case_of(g).as_deref() == Some(name.as_bytes()))
    };
    let copy_of = |name: &str| {
        tier_copies
            .iter()
            .find(|g| case_of(g).as_deref() == Some(name.as_bytes()))
    };
    let mut check = |ok: bool, what: String| {
        if !ok {
            failures.push(what);
        }
    };
    // A copy the broker refuses goes to the DLQ with its payload, without user headers > 4 KiB.
    let g = dlq_of("main-big-header-transient");
    check(
        g.is_some_and(|g| {
            g.payload_str() == "main-big-header-transient"
                && !g.headers.iter().any(|x| x.name == b"blob")
        }),
        "main-big-header-transient: the DLQ copy keeps the payload, drops the 1 MiB header".into(),
    );
    // A message too large for any copy is dead-lettered by reference.
    for name in [
        "main-at-limit-payload-transient",
        "main-too-large-payload-transient",
    ] {
        let g = dlq_of(name);
        check(
            g.is_some_and(|g| {
                g.payload.is_none()
                    && g.key.as_deref() == Some(name.as_bytes())
                    && g.header(h::ERROR_MESSAGE)
                        .is_some_and(|m| m.contains("omitted") && m.contains(&main))
                    && g.header(h::ORIGINAL_TOPIC).as_deref() == Some(main.as_str())
            }),
            format!(
                "{name}: a DLQ record without the payload, pointing at the original: {:?}",
                g.map(|g| g.header(h::ERROR_MESSAGE))
            ),
        );
    }
    // Odd bytes are carried to the tier byte for byte.
    check(
        copy_of("main-empty-payload-non-utf8-key").is_some_and(|g| {
            g.key.as_deref() == Some(&[0xff, 0x00, 0xfe][..])
                && g.payload.as_deref() == Some(&[][..])
        }),
        "main-empty-payload-non-utf8-key: key and empty payload carried".into(),
    );
    check(
        copy_of("main-null-key-null-payload")
            .is_some_and(|g| g.key.is_none() && g.payload.is_none()),
        "main-null-key-null-payload: null key and null payload carried".into(),
    );
    check(
        copy_of("main-non-utf8-headers").is_some_and(|g| {
            let user: Vec<(Vec<u8>, Option<Vec<u8>>)> = g
                .headers
                .iter()
                .filter(|x| x.name == [0xff, 0xfe] || x.name == b"trace")
                .map(|x| (x.name.clone(), x.value.clone()))
                .collect();
            user == vec![
                (vec![0xff, 0xfe], Some(vec![0x00, 0x9f])),
                (b"trace".to_vec(), Some(b"1".to_vec())),
                (b"trace".to_vec(), Some(b"2".to_vec())),
            ]
        }),
        "main-non-utf8-headers: user headers carried in order, byte for byte".into(),
    );
    let nul_names: Vec<Vec<u8>> = copy_of("main-nul-in-header-name")
        .map(|g| {
            g.headers
                .iter()
                .filter(|x| x.name.first() == Some(&b'a'))
                .map(|x| x.name.clone())
                .collect()
        })
        .unwrap_or_default();
    // librdkafka's C API gives header names as C strings: a NUL byte cuts the name there.
    check(
        nul_names == vec![b"a".to_vec()],
        format!("the header name a\\0b should arrive cut at the NUL, as [97]: {nul_names:?}"),
    );
    check(
        copy_of("main-routing-headers-ignored").is_some_and(|g| {
            let count = |n: &str| g.headers.iter().filter(|x| x.name == n.as_bytes()).count();
            count(h::PROCESS_AFTER) == 1
                && count(h::ATTEMPT) == 1
                && g.header(h::ATTEMPT).as_deref() == Some("1")
        }),
        "main-routing-headers-ignored: the copy has one process_after and attempt 1".into(),
    );
    check(
        dlq_of("pa-far-future").is_some_and(|g| {
            g.header(h::PROCESS_AFTER).as_deref() == Some("2999-01-01T00:00:00.000Z")
                && g.header(h::ERROR_MESSAGE)
                    .is_some_and(|m| m.contains("--max-delay") && m.contains("2999-01-01"))
        }),
        "pa-far-future: the DLQ copy keeps its process_after and says why".into(),
    );
    check(
        too_far == 1.0,
        format!("rebound_invalid_total counts the far-future message once ({too_far})"),
    );
    eprintln!("hostile outcomes:\n  {}", outcome_table.join("\n  "));
    eprintln!(
        "FIGURES hostile: cases={} dlq={} paused_at_end={paused} ready_at_end={ready} failures={}",
        all.len(),
        dlq.len(),
        failures.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(waited, "some partition stalled");
    assert!(ready, "the service is not ready after the corpus");
    assert_eq!(
        paused, 0.0,
        "no partition of the main topology stays paused"
    );
}

//! The `rebound` binary as users run it: exit codes, `topics plan|apply`, and `run` with the
//! command handler stopped by SIGTERM.

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

#[test]
fn bad_configuration_exits_2_and_names_the_setting() {
    let cases: &[(&[&str], &str)] = &[
        (&["run", "--topic", "orders"], "--handler"),
        (
            &[
                "run",
                "--topic",
                "orders",
                "--handler",
                "command",
                "--command",
                "cat",
                "--tiers",
                "4m,2m",
            ],
            "strictly increasing",
        ),
        (
            &[
                "run",
                "--topic",
                "orders",
                "--handler",
                "command",
                "--command",
                "cat",
                "--tiers",
                "2min",
            ],
            "--tiers",
        ),
        (&["run", "--topic", "orders", "--handler", "http"], "--url"),
        (
            &[
                "run",
                "--topic",
                "orders",
                "--handler",
                "command",
                "--command",
                "cat",
                "--ordering",
                "keys",
            ],
            "--ordering",
        ),
        (
            &[
                "run",
                "--topic",
                "orders",
                "--handler",
                "command",
                "--command",
                "cat",
                "--ordering",
                "key",
                "--exactly-once",
                "--instance-id",
                "pod-1",
            ],
            "--exactly-once",
        ),
        (
            &["topics", "plan", "--topic", "orders", "--ordering", "k"],
            "--ordering",
        ),
        (
            &[
                "run",
                "--topic",
                "orders",
                "--handler",
                "command",
                "--command",
                "cat",
                "--dlq",
                "orders",
            ],
            "--dlq",
        ),
        (
            &["run", "--handler", "command", "--command", "cat"],
            "--topic",
        ),
        (
            &[
                "run",
                "--topic",
                "orders",
                "--handler",
                "command",
                "--command",
                "cat",
                "-X",
                "group.id=x",
            ],
            "--group",
        ),
        (&["topics", "plan"], "--topic"),
        (&["run", "--no-such-flag"], "--no-such-flag"),
        (
            &[
                "run",
                "--topic",
                "orders",
                "--handler",
                "command",
                "--command",
                "cat",
                "--tier-buffer",
                "32 parsecs",
            ],
            "--tier-buffer",
        ),
        (
            &[
                "run",
                "--topic",
                "orders",
                "--handler",
                "command",
                "--command",
                "cat",
                "--tier-buffer-messages",
                "0",
            ],
            "--tier-buffer-messages",
        ),
    ];
    for (args, expect) in cases {
        let (code, _, err) = output(rebound().args(*args));
        assert_eq!(code, 2, "{args:?} should exit 2; stderr: {err}");
        assert!(
            err.contains(expect),
            "{args:?}: stderr should mention {expect:?}: {err}"
        );
    }
}

#[test]
fn env_vars_and_check_config_work_and_secrets_stay_hidden() {
    let (code, out, err) = output(
        rebound()
            .args([
                "run",
                "--check-config",
                "--handler",
                "command",
                "--command",
                "cat",
            ])
            .args(["-X", "sasl.password=hunter2", "-X", "sasl.username=me"])
            .env("REBOUND_TOPIC", "from-env")
            .env("REBOUND_TIERS", "1s,5s"),
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("from-env.retry-1s") && out.contains("from-env.retry-5s"),
        "{out}"
    );
    assert!(out.contains("sasl.username = me"));
    assert!(
        !out.contains("hunter2") && !err.contains("hunter2"),
        "secret printed: {out}{err}"
    );
    // A flag beats the env var.
    let (_, out, _) = output(
        rebound()
            .args([
                "run",
                "--check-config",
                "--handler",
                "command",
                "--command",
                "cat",
                "--topic",
                "from-flag",
            ])
            .env("REBOUND_TOPIC", "from-env"),
    );
    assert!(out.contains("topic            = from-flag"), "{out}");
}

#[test]
fn topics_apply_creates_the_topology_once_and_plan_reports_it() {
    let main = unique("cli-topics");
    let args = [
        "--brokers",
        &brokers(),
        "--topic",
        &main,
        "--tiers",
        "1s,2s",
        "--partitions",
        "2",
    ];
    let (code, out, err) = output(rebound().args(["topics", "plan"]).args(args));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("missing: not created"), "{out}");
    assert!(
        out.contains(&format!("{main}.retry-1s")) && out.contains("apply creates it"),
        "{out}"
    );

    let (code, out, err) = output(
        rebound()
            .args([
                "topics",
                "apply",
                "--create-main",
                "--replication-factor",
                "1",
            ])
            .args(args),
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.matches("created, 2 partitions").count(), 4, "{out}");

    let (code, out, err) = output(
        rebound()
            .args(["topics", "apply", "--create-main"])
            .args(args),
    );
    assert_eq!(code, 0, "second apply is idempotent: {err}");
    assert_eq!(out.matches("exists, 2 partitions").count(), 4, "{out}");
    assert!(!out.contains("created"), "{out}");
}

#[test]
fn topology_files_in_topics_declare_whole_topologies() {
    let root = env!("CARGO_MANIFEST_DIR");
    for (file, first_tier, dlq) in [
        ("topics/orders.toml", "retry-2m", "orders.dlq"),
        ("topics/payments.toml", "retry-30s", "payments.dlq"),
    ] {
        let main = unique("cli-file");
        let (code, out, err) = output(
            rebound()
                .args(["topics", "plan", "--brokers", &brokers(), "--topic", &main])
                .arg("--file")
                .arg(format!("{root}/{file}")),
        );
        assert_eq!(code, 0, "{file}: {err}");
        // The file's tiers and its explicit DLQ name; the flag's main topic.
        assert!(
            out.contains(&format!("{main}.{first_tier}")),
            "{file}: {out}"
        );
        assert!(out.contains(dlq), "{file}: {out}");
    }
}

#[test]
fn run_refuses_to_start_without_its_topics() {
    let main = unique("cli-missing");
    let (code, _, err) = output(rebound().args([
        "run",
        "--brokers",
        &brokers(),
        "--topic",
        &main,
        "--tiers",
        "1s",
        "--handler",
        "command",
        "--command",
        "cat",
        "--metrics-addr",
        "off",
    ]));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("topics apply") && err.contains(&format!("{main}.retry-1s")),
        "{err}"
    );
}

fn wait_exit(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let until = Instant::now() + limit;
    while Instant::now() < until {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_with_the_command_handler_then_sigterm_exits_0_in_bounded_time() {
    let Scenario { main, topo } = Scenario::create("cli-run", &[300], 2).await;
    let recs: Vec<Out> = (0..10)
        .map(|i| Out::new(&format!("k{i}"), if i == 3 { "" } else { "hello" }))
        .collect();
    produce(&main, &recs).await;

    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("seen");
    // Empty payloads fail permanently (exit 3); the rest succeed and are recorded.
    let script = format!(
        r#"body=$(cat); [ -n "$body" ] || exit 3; echo "$REBOUND_TOPIC $REBOUND_PARTITION $REBOUND_OFFSET $REBOUND_KEY $body" >> {}"#,
        log.display()
    );
    let mut child = rebound()
        .args([
            "run",
            "--brokers",
            &brokers(),
            "--topic",
            &main,
            "--tiers",
            "300ms",
        ])
        .args(["--group", &unique("g"), "--handler", "command", "--command"])
        .arg(format!("sh -c '{script}'"))
        .args([
            "--metrics-addr",
            "127.0.0.1:0",
            "-X",
            "fetch.wait.max.ms=20",
        ])
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn rebound");

    let dlq = read_topic(&topo.dlq, 1, Duration::from_secs(30));
    let log2 = log.clone();
    wait_until(
        "9 messages handled by the command",
        Duration::from_secs(30),
        move || {
            std::fs::read_to_string(&log2)
                .map(|s| s.lines().count() >= 9)
                .unwrap_or(false)
        },
    )
    .await;
    assert_eq!(dlq.len(), 1);
    assert_eq!(
        dlq[0].header(rebound::headers::ERROR_CLASS).as_deref(),
        Some("exit_3")
    );
    let seen = std::fs::read_to_string(&log).unwrap();
    assert!(
        seen.lines()
            .all(|l| l.starts_with(&main) && l.ends_with("hello")),
        "{seen}"
    );

    let started = Instant::now();
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = wait_exit(&mut child, Duration::from_secs(30));
    let mut stderr = String::new();
    if status.is_none() {
        child.kill().ok();
    }
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .ok();
    let status =
        status.unwrap_or_else(|| panic!("rebound did not exit within 30 s of SIGTERM:\n{stderr}"));
    assert!(status.success(), "exit status {status:?}:\n{stderr}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "took {:?}",
        started.elapsed()
    );
    assert!(stderr.contains("stopping"), "{stderr}");
}

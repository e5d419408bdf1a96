//! Secrets: a SASL password (or any other secret librdkafka property) given with `-X` never
//! appears in `--check-config` output, in configuration errors, or in the logs of a run against
//! the broker at debug level, librdkafka's own debug output included.

use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::common::*;
use crate::rel::*;

const SECRETS: [(&str, &str); 4] = [
    ("sasl.password", "Pa55-sasl-7f3e9c"),
    ("ssl.key.password", "Pa55-sslkey-51d0"),
    ("sasl.oauthbearer.client.secret", "Pa55-oauth-c9a2"),
    ("ssl.keystore.password", "Pa55-keystore-08be"),
];

fn secret_args() -> Vec<String> {
    SECRETS
        .iter()
        .flat_map(|(k, v)| ["-X".to_string(), format!("{k}={v}")])
        .collect()
}

/// The secrets this build of librdkafka accepts (OAuth/OIDC needs libcurl, which it lacks).
fn supported_secret_args() -> Vec<String> {
    SECRETS
        .iter()
        .filter(|(k, _)| !k.starts_with("sasl.oauthbearer"))
        .flat_map(|(k, v)| ["-X".to_string(), format!("{k}={v}")])
        .collect()
}

fn assert_clean(what: &str, text: &str) {
    for (k, v) in SECRETS {
        assert!(
            !text.contains(v),
            "{what}: the value of {k} appears in the output:\n{text}"
        );
    }
}

#[test]
fn check_config_and_configuration_errors_never_show_a_secret() {
    let base = [
        "run",
        "--topic",
        "orders",
        "--handler",
        "command",
        "--command",
        "cat",
    ];
    let (code, out, err) = output(
        rebound()
            .args(base)
            .arg("--check-config")
            .args(secret_args()),
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("sasl.password = [redacted]"), "{out}");
    assert_clean("--check-config", &(out + &err));

    // Refused configurations (exit 2) name the setting, not the secrets next to it.
    for bad in [
        ["-X", "enable.auto.commit=true"],
        ["--tiers", "2m,1m"],
        ["-X", "sasl.password"],
    ] {
        let (code, out, err) = output(rebound().args(base).args(bad).args(secret_args()));
        assert_eq!(code, 2, "{bad:?}: {err}");
        assert_clean(&format!("{bad:?}"), &(out + &err));
    }
    // The same in a config file and in REBOUND_X.
    let dir = workdir("secrets");
    let file = dir.path().join("rebound.toml");
    let kafka: String = SECRETS
        .iter()
        .map(|(k, v)| format!("\"{k}\" = \"{v}\"\n"))
        .collect();
    std::fs::write(&file, format!("topic = \"orders\"\n[kafka]\n{kafka}")).unwrap();
    let (code, out, err) = output(
        rebound()
            .args([
                "run",
                "--handler",
                "command",
                "--command",
                "cat",
                "--check-config",
            ])
            .arg("--config")
            .arg(&file),
    );
    assert_eq!(code, 0, "{err}");
    assert_clean("--config file", &(out + &err));
    let env_x: Vec<String> = SECRETS.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let (code, out, err) = output(
        rebound()
            .args(base)
            .arg("--check-config")
            .env("REBOUND_X", env_x.join("\n")),
    );
    assert_eq!(code, 0, "{err}");
    assert_clean("REBOUND_X", &(out + &err));
}

/// Runs rebound with SASL settings the test broker cannot satisfy, logging at debug level
/// (librdkafka's debug contexts included), until it exits, has logged the failed handshake, or
/// `limit` passes.
/// librdkafka's log lines reach the log only when a client is polled: the first ones come when
/// the start-up metadata request times out, after 10 s.
fn run_with_secrets(extra: &[&str], secrets: &[String], limit: Duration) -> (String, Option<i32>) {
    let dir = workdir("secrets-run");
    let log = dir.path().join("stderr.log");
    let main = unique("secrets");
    let mut child = rebound()
        .args([
            "run",
            "--brokers",
            &brokers(),
            "--topic",
            &main,
            "--tiers",
            "1s",
        ])
        .args([
            "--handler",
            "command",
            "--command",
            "cat",
            "--metrics-addr",
            "off",
        ])
        .args([
            "-X",
            "security.protocol=SASL_PLAINTEXT",
            "-X",
            "sasl.mechanisms=PLAIN",
        ])
        .args(["-X", "sasl.username=rebound"])
        .args(["-X", "debug=security,broker,conf,generic"])
        .args(extra)
        .args(secrets)
        .env("RUST_LOG", "debug")
        .stdout(Stdio::from(
            std::fs::File::create(dir.path().join("stdout.log")).unwrap(),
        ))
        .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
        .spawn()
        .expect("spawn rebound");
    let until = Instant::now() + limit;
    let mut exited = false;
    while Instant::now() < until && !exited {
        exited = child.try_wait().unwrap().is_some();
        // Enough seen once the handshake failed and the start-up check reported it.
        let so_far = std::fs::read_to_string(&log).unwrap_or_default();
        if so_far.contains("handshake failed") && so_far.contains("cannot fetch metadata") {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if !exited {
        let _ = child.kill();
    }
    let status = child.wait().expect("wait for rebound");
    let code = if exited { status.code() } else { None };
    let mut text = std::fs::read_to_string(&log).unwrap_or_default();
    text.push_str(&std::fs::read_to_string(dir.path().join("stdout.log")).unwrap_or_default());
    (text, code)
}

#[test]
fn a_run_at_debug_level_never_logs_a_secret() {
    // A secret property this build refuses: the client cannot be created, and the error that
    // says so names the property, not its value.
    let (text, code) = run_with_secrets(&[], &secret_args(), Duration::from_secs(20));
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("not supported in this build"), "{text}");
    assert_clean("a refused secret property", &text);

    // Both log formats at once: each run waits ~10 s for its first metadata timeout.
    let runs: Vec<_> = [&[][..], &["--log-format", "json"][..]]
        .into_iter()
        .map(|extra| {
            std::thread::spawn(move || {
                (
                    extra,
                    run_with_secrets(extra, &supported_secret_args(), Duration::from_secs(30)),
                )
            })
        })
        .collect();
    for run in runs {
        let (extra, (text, code)) = run.join().unwrap();
        eprintln!(
            "FIGURES secrets: log_format={extra:?} exit={code:?} log_bytes={} sasl_lines={}",
            text.len(),
            text.lines()
                .filter(|l| l.to_ascii_lowercase().contains("sasl"))
                .count()
        );
        // The run got far enough to use the settings: librdkafka's debug output and the SASL
        // handshake (which the test broker refuses or fails) are in the log.
        assert!(
            text.to_ascii_lowercase().contains("sasl"),
            "no SASL activity in the log:\n{text}"
        );
        assert!(
            text.contains("librdkafka"),
            "no librdkafka debug output:\n{text}"
        );
        assert_clean("a run at debug level", &text);
    }
}

//! `rebound demo` end to end against the test broker: it must account for every message.

use std::process::Command;

#[test]
fn the_demo_accounts_for_every_message_and_exits_0() {
    let out = Command::new(env!("CARGO_BIN_EXE_rebound"))
        .args([
            "demo",
            "--brokers",
            &crate::common::brokers(),
            "--messages",
            "150",
            "--tiers",
            "200ms,400ms,800ms",
        ])
        .args(["--metrics-addr", "127.0.0.1:0"])
        .env("RUST_LOG", "warn")
        .output()
        .expect("run rebound demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("150  total, 150 accounted for"), "{stdout}");
    assert!(
        stdout.contains("dead-lettered: permanent"),
        "bad payloads go to the DLQ: {stdout}"
    );
    assert!(
        stdout.contains("succeeded on try 2"),
        "some messages needed a retry: {stdout}"
    );
    assert!(!stdout.contains("missing"), "{stdout}");
    assert!(
        stdout.contains("http://127.0.0.1:9465/"),
        "the newcomer is told the console's address: {stdout}"
    );
}

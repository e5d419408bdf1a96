//! The broker probe (`rebound::probe`) against the real broker: it must recognise the broker
//! `scripts/test` started, because the tests' batching and rebound's demo defaults follow it.

use std::time::Duration;

#[test]
fn the_probe_recognises_the_broker_scripts_test_started() {
    let started = std::env::var("REBOUND_TEST_BROKER_KIND")
        .expect("REBOUND_TEST_BROKER_KIND is set by scripts/test");
    let f =
        rebound::probe::api_versions(&crate::common::brokers(), Duration::from_secs(10)).unwrap();
    assert!(f.supports(0) && f.supports(1), "Produce and Fetch: {f:?}");
    match started.as_str() {
        "kafka" => {
            assert!(!f.lacks_kraft_features(), "{f:?}");
            assert!(f.consumer_group_protocol(), "Kafka 4 serves KIP-848: {f:?}");
            assert!(f.supports(rebound::probe::END_TXN), "{f:?}");
        }
        "tansu" => assert!(f.lacks_kraft_features(), "{f:?}"),
        other => panic!("unknown broker kind {other}"),
    }
    assert_eq!(crate::common::broker_kind(), started);
}

#[test]
fn an_unreachable_broker_is_an_error_not_a_hang() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let started = std::time::Instant::now();
    let r = rebound::probe::api_versions(&format!("127.0.0.1:{port}"), Duration::from_secs(2));
    assert!(r.is_err());
    assert!(started.elapsed() < Duration::from_secs(5));
}

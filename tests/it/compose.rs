//! `docker-compose.yml` cannot run on the build machine (no Docker engine), so it is checked
//! here: it parses, uses the real Apache Kafka image, mounts only files that exist, publishes
//! each port once, orders start-up with health conditions, and its rebound command lines are
//! accepted by the binary itself.

use std::collections::HashSet;
use std::path::Path;
use std::process::Command;

use serde_yaml_ng::Value;

fn compose() -> Value {
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docker-compose.yml"))
            .expect("docker-compose.yml exists");
    serde_yaml_ng::from_str(&text).expect("docker-compose.yml parses as YAML")
}

fn services(c: &Value) -> &serde_yaml_ng::Mapping {
    c.get("services")
        .and_then(Value::as_mapping)
        .expect("a services map")
}

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_sequence)
        .map(|s| {
            s.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn kafka_is_the_real_apache_image_in_kraft_mode() {
    let c = compose();
    let kafka = &services(&c)["kafka"];
    let image = kafka["image"].as_str().unwrap();
    assert!(image.starts_with("apache/kafka:"), "{image}");
    assert_eq!(
        kafka["environment"]["KAFKA_PROCESS_ROLES"].as_str(),
        Some("broker,controller")
    );
    assert!(kafka.get("healthcheck").is_some());
}

#[test]
fn kafka_image_is_the_version_the_tests_run_on() {
    let c = compose();
    let image = services(&c)["kafka"]["image"].as_str().unwrap().to_string();
    let node = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/lib/kafka-node"),
    )
    .expect("scripts/lib/kafka-node exists");
    let pinned = node
        .lines()
        .find_map(|l| l.strip_prefix("KAFKA_VERSION="))
        .expect("kafka-node pins KAFKA_VERSION");
    assert_eq!(image, format!("apache/kafka:{pinned}"));
}

#[test]
fn every_mounted_file_exists_and_every_published_port_is_unique() {
    let c = compose();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut ports = HashSet::new();
    for (name, svc) in services(&c) {
        for vol in strings(svc.get("volumes")) {
            let host = vol.split(':').next().unwrap();
            if host.starts_with('.') || host.starts_with('/') {
                assert!(
                    root.join(host).exists(),
                    "{name:?} mounts {host}, which does not exist"
                );
            }
        }
        for port in strings(svc.get("ports")) {
            let host_port = port
                .rsplit_once(':')
                .map(|(h, _)| h.to_string())
                .unwrap_or(port.clone());
            assert!(
                ports.insert(host_port.clone()),
                "port {host_port} published twice"
            );
        }
        if let Some(build) = svc.get("build") {
            let file = build["dockerfile"].as_str().unwrap_or("Dockerfile");
            assert!(
                root.join(file).exists(),
                "{name:?} builds from {file}, which does not exist"
            );
        }
    }
    assert!(!ports.is_empty());
}

#[test]
fn start_up_is_ordered_by_health_conditions() {
    let c = compose();
    let s = services(&c);
    let cond = |svc: &str, dep: &str| {
        s[svc]["depends_on"][dep]["condition"]
            .as_str()
            .map(str::to_string)
    };
    assert_eq!(
        cond("topics-init", "kafka").as_deref(),
        Some("service_healthy")
    );
    assert_eq!(
        cond("rebound", "topics-init").as_deref(),
        Some("service_completed_successfully")
    );
}

fn words(cmd: &Value) -> Vec<String> {
    match cmd {
        Value::String(s) => shell_words::split(s).expect("command splits"),
        Value::Sequence(_) => strings(Some(cmd)),
        _ => panic!("unexpected command {cmd:?}"),
    }
}

#[test]
fn rebound_command_lines_are_accepted_by_the_binary() {
    let c = compose();
    let s = services(&c);
    let run = words(&s["rebound"]["command"]);
    assert_eq!(run[0], "run");
    let out = Command::new(env!("CARGO_BIN_EXE_rebound"))
        .args(&run)
        .arg("--check-config")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // topics apply: same flags must parse; --help short-circuits before any broker is contacted.
    let init = words(&s["topics-init"]["command"]);
    assert_eq!(&init[..2], ["topics", "apply"]);
    let out = Command::new(env!("CARGO_BIN_EXE_rebound"))
        .args(&init)
        .arg("--help")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plan_args: Vec<&String> = init.iter().skip(2).collect();
    assert!(plan_args.iter().any(|a| *a == "--topic"));
}

#[test]
fn prometheus_and_grafana_get_the_repo_config() {
    let c = compose();
    let s = services(&c);
    let prom = strings(s["prometheus"].get("volumes"));
    assert!(prom.iter().any(|v| v.starts_with("./docker/prometheus:")));
    let graf = strings(s["grafana"].get("volumes"));
    assert!(graf
        .iter()
        .any(|v| v.starts_with("./docker/grafana/dashboards:")));
}

//! What the console tests share: a topology with a populated DLQ, the console started
//! in-process, and small HTTP helpers.

#![allow(dead_code)]

use std::time::Duration;

use rebound::config::KafkaProps;
use rebound::console::{ConsoleConfig, Secret};
use rebound::headers as h;
use rebound::Topology;
use tokio_util::sync::CancellationToken;

use crate::common::*;

/// A `-X` secret that no page may show.
pub const SECRET: &str = "hunter2-never-shown";

/// A DLQ record as rebound writes it, of error class `class`.
pub fn dead(id: &str, partition: i32, reason: &str, class: &str, main: &str) -> Out {
    Out::new(&format!("key-{id}"), &format!("{id}:payload"))
        .partition(partition)
        .header("trace", &format!("trace-{id}"))
        .header(h::ORIGINAL_TOPIC, main)
        .header(h::ORIGINAL_PARTITION, "0")
        .header(h::ORIGINAL_OFFSET, "7")
        .header(h::FIRST_FAILED_AT, "2026-11-24T10:00:00.000Z")
        .header(h::ATTEMPT, "3")
        .header(h::ERROR_KIND, "transient")
        .header(h::ERROR_CLASS, class)
        .header(h::ERROR_MESSAGE, &format!("{class}: upstream said no"))
        .header(h::DLQ_REASON, reason)
}

/// A topology whose DLQ holds, on 2 partitions: a0..a2 `http_503` (exhausted), b0 b1
/// `http_400` (permanent), and c0 `timeout` with a binary payload and a key with markup.
/// Returns the topology and the ids by class.
pub async fn populated(prefix: &str) -> Topology {
    let topo = topology(&unique(prefix), &[60_000, 120_000]);
    create_topology(&topo, 2).await;
    let main = topo.main.clone();
    let mut c0 = dead("c0", 1, "exhausted", "timeout", &main);
    c0.key = Some(b"<script>alert(1)</script>".to_vec());
    c0.payload = Some(b"c0:\x00\xff\x10".to_vec());
    produce(
        &topo.dlq,
        &[
            dead("a0", 0, "exhausted", "http_503", &main),
            dead("b0", 0, "permanent", "http_400", &main),
            dead("a1", 1, "exhausted", "http_503", &main),
            dead("a2", 0, "exhausted", "http_503", &main),
            dead("b1", 1, "permanent", "http_400", &main),
            c0,
        ],
    )
    .await;
    topo
}

/// Console settings for `topo` on a free loopback port, with a `-X` secret.
pub fn console_cfg(topo: &Topology, group: &str) -> ConsoleConfig {
    let mut cluster = config(topo.clone(), group).cluster;
    let mut props = cluster.kafka.0.clone();
    props.push(("ssl.key.password".into(), SECRET.into()));
    cluster.kafka = KafkaProps(props);
    ConsoleConfig {
        cluster,
        listen: "127.0.0.1:0".parse().unwrap(),
        instances: Vec::new(),
        allow_replay: false,
        token: None,
        max_replays: 3,
    }
}

/// A running console: its base URL.
pub struct Console {
    pub url: String,
    pub stop: CancellationToken,
}

impl Drop for Console {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

pub async fn start_console(cfg: ConsoleConfig) -> Console {
    let stop = CancellationToken::new();
    let (addr, _task) = rebound::console::start(cfg, stop.clone())
        .await
        .expect("console starts");
    Console {
        url: format!("http://{addr}"),
        stop,
    }
}

pub fn token(s: &str) -> Option<Secret> {
    Some(Secret::new(s))
}

/// An HTTP client that does not follow redirects (tests look at them).
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

/// GET `url`: (status, body).
pub async fn get(url: &str) -> (u16, String) {
    let r = client().get(url).send().await.expect("GET");
    let status = r.status().as_u16();
    (status, r.text().await.unwrap_or_default())
}

/// POST a form: (status, Location header, body).
pub async fn post(url: &str, form: &[(&str, &str)]) -> (u16, Option<String>, String) {
    let body: String = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(form)
        .finish();
    let r = client()
        .post(url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .expect("POST");
    let status = r.status().as_u16();
    let location = r
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    (status, location, r.text().await.unwrap_or_default())
}

/// The CSRF token a page's form carries.
pub fn csrf_of(page: &str) -> String {
    let at = page
        .find("name=\"csrf\" value=\"")
        .unwrap_or_else(|| panic!("no CSRF field in the page:\n{page}"));
    let rest = &page[at + "name=\"csrf\" value=\"".len()..];
    rest[..rest.find('"').unwrap()].to_string()
}

/// The text of the element with `id` (the first `>` after it to the next `<`).
pub fn by_id(page: &str, id: &str) -> String {
    let at = page
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no #{id} in the page:\n{page}"));
    let rest = &page[at..];
    let start = rest.find('>').unwrap() + 1;
    rest[start..start + rest[start..].find('<').unwrap()].to_string()
}

//! The console's pages: they read the broker (and the instances' `/status`) and render HTML.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};

use super::html::{self, esc, hidden, inline_bytes, payload_block, table, url_enc};
use super::{fields, App};
use crate::cli::DlqFilterArgs;
use crate::cluster::ClusterConfig;
use crate::config::{resolve_filter, DlqShowConfig, ReplayConfig};
use crate::dlq::{self, Entry, Filter};
use crate::headers;
use crate::kafka::{self, LoggingContext};

/// Messages per page of the dead-letter list, unless `size=N` (at most [`MAX_PAGE_SIZE`]) says.
pub const PAGE_SIZE: usize = 50;
pub const MAX_PAGE_SIZE: usize = 500;
/// Dry-run lines shown at most.
const DRY_RUN_LINES: usize = 200;

pub(crate) fn html(status: StatusCode, app: &App, title: &str, body: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        html::page(title, app.cfg.allow_replay, body),
    )
        .into_response()
}

pub(crate) fn forbidden(app: &App, why: &str) -> Response {
    html(
        StatusCode::FORBIDDEN,
        app,
        "Not allowed",
        &format!("<p class=\"err\">{}</p>", esc(why)),
    )
}

/// The filter fields a selection is made of (names as in the CLI, without `--`).
const FILTER_FIELDS: [(&str, &str); 8] = [
    ("reason", "reason"),
    ("error_class", "error class"),
    ("key", "key"),
    ("since", "since"),
    ("until", "until"),
    ("partition", "partition"),
    ("from_offset", "from offset"),
    ("to_offset", "to offset"),
];

/// What a page or form chose: filter fields and/or positions (`pos=P/O`, one by one).
#[derive(Debug, Clone, Default)]
pub(crate) struct Selection {
    /// The non-empty fields as given, to carry into links and forms.
    pub given: Vec<(String, String)>,
    pub filter: Filter,
}

impl Selection {
    pub fn from_fields(form: &[(String, String)]) -> Result<Selection, String> {
        let get = |k: &str| {
            form.iter()
                .find(|(n, v)| n == k && !v.trim().is_empty())
                .map(|(_, v)| v.trim().to_string())
        };
        let args = DlqFilterArgs {
            reason: get("reason"),
            error_class: get("error_class"),
            key: get("key"),
            since: get("since"),
            until: get("until"),
            partition: get("partition"),
            from_offset: get("from_offset"),
            to_offset: get("to_offset"),
        };
        let mut filter = resolve_filter(&args).map_err(|e| {
            format!(
                "{}: {}",
                e.field.trim_start_matches("--").replace('-', " "),
                e.problem
            )
        })?;
        let mut given: Vec<(String, String)> = FILTER_FIELDS
            .iter()
            .filter_map(|(k, _)| get(k).map(|v| (k.to_string(), v)))
            .collect();
        for (n, v) in form {
            if n != "pos" {
                continue;
            }
            let parsed = v
                .split_once('/')
                .and_then(|(p, o)| Some((p.parse::<i32>().ok()?, o.parse::<i64>().ok()?)))
                .filter(|(p, o)| *p >= 0 && *o >= 0)
                .ok_or_else(|| format!("{v:?} is not a PARTITION/OFFSET position"))?;
            if filter.positions.insert(parsed) {
                given.push(("pos".into(), format!("{}/{}", parsed.0, parsed.1)));
            }
        }
        Ok(Selection { given, filter })
    }

    pub fn is_everything(&self) -> bool {
        self.filter == Filter::default()
    }

    /// For people: `error class = http_503, 3 chosen messages`.
    pub fn describe(&self) -> String {
        let mut parts: Vec<String> = FILTER_FIELDS
            .iter()
            .filter_map(|(k, label)| {
                self.given
                    .iter()
                    .find(|(n, _)| n == k)
                    .map(|(_, v)| format!("{label} = {v}"))
            })
            .collect();
        if !self.filter.positions.is_empty() {
            parts.push(format!(
                "{} chosen message{}",
                self.filter.positions.len(),
                if self.filter.positions.len() == 1 {
                    ""
                } else {
                    "s"
                }
            ));
        }
        if parts.is_empty() {
            "every message".to_string()
        } else {
            parts.join(", ")
        }
    }

    /// The selection as a query string (without `?`).
    pub fn query(&self) -> String {
        self.given
            .iter()
            .map(|(k, v)| format!("{k}={}", url_enc(v)))
            .collect::<Vec<_>>()
            .join("&")
    }

    /// The selection as hidden form fields.
    pub fn hidden_fields(&self) -> String {
        self.given.iter().map(|(k, v)| hidden(k, v)).collect()
    }

    fn value(&self, k: &str) -> String {
        self.given
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    }
}

/// The replay settings of a redrive (or its dry run) of `filter`.
pub(crate) fn replay_config(app: &App, filter: Filter, dry_run: bool) -> ReplayConfig {
    let mut cluster = app.cfg.cluster.clone();
    cluster.group = app.cfg.replay_group();
    let mut cfg = ReplayConfig::new(cluster);
    cfg.filter = filter;
    cfg.dry_run = dry_run;
    cfg.max_replays = app.cfg.max_replays;
    cfg
}

/// One partition of a topic, as the broker reports it.
#[derive(Debug, Clone)]
struct PartitionState {
    partition: i32,
    low: i64,
    high: i64,
    committed: Option<i64>,
}

impl PartitionState {
    /// Messages between the group's committed offset (or the log start) and the end.
    fn lag(&self) -> i64 {
        (self.high - self.committed.unwrap_or(self.low).max(self.low)).max(0)
    }
}

#[derive(Debug, Clone)]
struct TopicState {
    role: String,
    topic: String,
    /// Whose committed offsets are shown.
    group: String,
    partitions: Option<Vec<PartitionState>>,
}

const TIMEOUT: Duration = Duration::from_secs(10);

/// Reads partitions, watermarks and the committed offsets of `group` for each topic (blocking).
fn read_topics(
    cluster: &ClusterConfig,
    topics: &[(String, String, String)],
) -> Result<Vec<TopicState>, KafkaError> {
    let md_client: BaseConsumer<LoggingContext> =
        kafka::consumer_config(cluster).create_with_context(LoggingContext)?;
    let md = md_client.fetch_metadata(None, TIMEOUT)?;
    let mut out = Vec::new();
    for (role, topic, group) in topics {
        let Some(parts) = kafka::partitions_of(&md, topic) else {
            out.push(TopicState {
                role: role.clone(),
                topic: topic.clone(),
                group: group.clone(),
                partitions: None,
            });
            continue;
        };
        let mut c = cluster.clone();
        c.group = group.clone();
        let client: BaseConsumer<LoggingContext> =
            kafka::consumer_config(&c).create_with_context(LoggingContext)?;
        let mut tpl = TopicPartitionList::new();
        for &p in &parts {
            tpl.add_partition(topic, p);
        }
        let committed = client.committed_offsets(tpl, TIMEOUT)?;
        let mut states = Vec::new();
        for &p in &parts {
            let (low, high) = client.fetch_watermarks(topic, p, TIMEOUT)?;
            let committed = committed
                .find_partition(topic, p)
                .and_then(|e| match e.offset() {
                    Offset::Offset(o) if o >= 0 => Some(o),
                    _ => None,
                });
            states.push(PartitionState {
                partition: p,
                low,
                high,
                committed,
            });
        }
        out.push(TopicState {
            role: role.clone(),
            topic: topic.clone(),
            group: group.clone(),
            partitions: Some(states),
        });
    }
    Ok(out)
}

/// `GET /`: the topology as the broker sees it, and each instance's `/status`.
pub(crate) async fn topology(State(app): State<Arc<App>>) -> Response {
    let cluster = app.cfg.cluster.clone();
    let t = &cluster.topology;
    let mut topics = vec![("main".to_string(), t.main.clone(), cluster.group.clone())];
    for tier in &t.tiers {
        topics.push((
            tier.label.clone(),
            tier.topic.clone(),
            cluster.group.clone(),
        ));
    }
    topics.push(("dlq".to_string(), t.dlq.clone(), app.cfg.replay_group()));
    let read = {
        let cluster = cluster.clone();
        tokio::task::spawn_blocking(move || read_topics(&cluster, &topics)).await
    };
    let mut body = String::new();
    let props: Vec<String> = cluster
        .kafka
        .redacted()
        .iter()
        .map(|(k, v)| format!("{}={}", esc(k), esc(v)))
        .collect();
    let _ = write!(
        body,
        "<p>Brokers <code>{}</code> · group <code>{}</code> · redrive group <code>{}</code>{}</p>",
        esc(&cluster.brokers),
        esc(&cluster.group),
        esc(&app.cfg.replay_group()),
        if props.is_empty() {
            String::new()
        } else {
            format!(" · -X <code>{}</code>", props.join(" "))
        }
    );
    match read {
        Ok(Ok(states)) => {
            let mut rows = Vec::new();
            for s in &states {
                match &s.partitions {
                    None => rows.push(vec![
                        esc(&s.role),
                        esc(&s.topic),
                        "<span class=\"err\">missing</span>".into(),
                        String::new(),
                        String::new(),
                        String::new(),
                        String::new(),
                        String::new(),
                    ]),
                    Some(parts) => {
                        for p in parts {
                            rows.push(vec![
                                esc(&s.role),
                                esc(&s.topic),
                                p.partition.to_string(),
                                p.low.to_string(),
                                p.high.to_string(),
                                esc(&s.group),
                                p.committed.map_or("-".to_string(), |c| c.to_string()),
                                p.lag().to_string(),
                            ]);
                        }
                    }
                }
            }
            body.push_str("<h2>Topics</h2>");
            body.push_str(&table(
                "topics",
                &[
                    "role",
                    "topic",
                    "partition",
                    "start offset",
                    "end offset",
                    "group",
                    "committed",
                    "lag",
                ],
                &rows,
            ));
            body.push_str("<p class=\"muted\">For the DLQ, <em>committed</em> is how far redrive (and replay-dlq) has dealt with it; its lag is what no replay has dealt with.</p>");
            let parked: Vec<Vec<String>> = states
                .iter()
                .filter(|s| s.role != "main" && s.role != "dlq")
                .map(|s| {
                    let n: i64 = s.partitions.iter().flatten().map(PartitionState::lag).sum();
                    vec![esc(&s.role), esc(&s.topic), n.to_string()]
                })
                .collect();
            body.push_str("<h2>Parked in the delay tiers</h2>");
            body.push_str(&table(
                "parked",
                &["tier", "topic", "messages waiting"],
                &parked,
            ));
            if let Some(dlq) = states.iter().find(|s| s.role == "dlq") {
                let total: i64 = dlq
                    .partitions
                    .iter()
                    .flatten()
                    .map(|p| p.high - p.low)
                    .sum();
                let _ = write!(
                    body,
                    "<p>Dead letters: <a href=\"/dlq\"><strong id=\"dlq-total\">{total}</strong> in {}</a></p>",
                    esc(&dlq.topic)
                );
            }
        }
        Ok(Err(e)) => {
            let _ = write!(
                body,
                "<p class=\"err\">cannot read the topics: {}</p>",
                esc(&kafka::Shown(&e).to_string())
            );
        }
        Err(e) => {
            let _ = write!(body, "<p class=\"err\">{}</p>", esc(&e.to_string()));
        }
    }
    if !app.cfg.instances.is_empty() {
        body.push_str("<h2>Instances</h2>");
        for url in &app.cfg.instances {
            body.push_str(&instance(&app, url).await);
        }
    }
    html(StatusCode::OK, &app, "Topology", &body)
}

/// One instance's `/status`, as a table.
async fn instance(app: &App, url: &str) -> String {
    let status_url = format!("{url}/status");
    let got = match app.http.get(&status_url).send().await {
        Ok(r) if r.status().is_success() => r.text().await.map_err(|e| e.to_string()),
        Ok(r) => Err(format!("HTTP {}", r.status())),
        Err(e) => Err(e.to_string()),
    };
    let parsed = got.and_then(|t| {
        serde_json::from_str::<serde_json::Value>(&t).map_err(|e| format!("not status JSON: {e}"))
    });
    let v = match parsed {
        Ok(v) => v,
        Err(e) => {
            return format!(
                "<h3>{}</h3><p class=\"err\">unreachable: {}</p>",
                esc(url),
                esc(&e)
            )
        }
    };
    let s = |v: &serde_json::Value| match v {
        serde_json::Value::Null => "-".to_string(),
        serde_json::Value::String(s) => esc(s),
        other => esc(&other.to_string()),
    };
    let rows: Vec<Vec<String>> = v["partitions"]
        .as_array()
        .map(|ps| {
            ps.iter()
                .map(|p| {
                    vec![
                        s(&p["stage"]),
                        s(&p["topic"]),
                        s(&p["partition"]),
                        if p["paused"] == true {
                            format!("paused ({})", s(&p["paused_for"]))
                        } else {
                            "fetching".into()
                        },
                        s(&p["head_due"]),
                        s(&p["buffered"]),
                        s(&p["in_flight"]),
                        s(&p["committed_offset"]),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    format!(
        "<h3>{} <span class=\"muted\">version {} · breaker {} · in flight {} · at {}</span></h3>{}",
        esc(url),
        s(&v["version"]),
        s(&v["breaker"]),
        s(&v["in_flight"]),
        s(&v["updated_at"]),
        table(
            "instance",
            &[
                "stage",
                "topic",
                "partition",
                "fetching",
                "head due",
                "buffered",
                "in flight",
                "committed offset",
            ],
            &rows
        )
    )
}

/// The filter form of the dead-letter page, filled with `sel`.
fn filter_form(sel: &Selection) -> String {
    let mut out = String::from("<form class=\"filter\" method=\"get\" action=\"/dlq\">");
    let reason = sel.value("reason");
    out.push_str("<label>reason <select name=\"reason\"><option value=\"\">any</option>");
    for r in crate::topology::DlqReason::ALL {
        let r = r.as_str();
        let _ = write!(
            out,
            "<option{}>{r}</option>",
            if reason == r { " selected" } else { "" }
        );
    }
    out.push_str("</select></label>");
    for (k, label) in FILTER_FIELDS.iter().skip(1) {
        let hint = match *k {
            "since" | "until" => " placeholder=\"2026-11-24T14:00:00Z\"",
            "error_class" => " placeholder=\"http_503,timeout\"",
            _ => "",
        };
        let _ = write!(
            out,
            "<label>{label} <input type=\"text\" name=\"{k}\" id=\"f-{k}\" value=\"{}\"{hint}></label>",
            esc(&sel.value(k))
        );
    }
    out.push_str(" <button type=\"submit\" id=\"apply-filter\">Filter</button> <a href=\"/dlq\">clear</a></form>");
    out
}

/// A count table; values link to the list filtered by them when `field` is a filter field.
fn counts(
    id: &str,
    title: &str,
    field: Option<&str>,
    map: &std::collections::BTreeMap<String, u64>,
) -> String {
    let rows: Vec<Vec<String>> = map
        .iter()
        .map(|(k, n)| {
            let value = match field {
                Some(field) if k != crate::dlq::NONE => {
                    format!("<a href=\"/dlq?{field}={}\">{}</a>", url_enc(k), esc(k))
                }
                _ => esc(k),
            };
            vec![value, n.to_string()]
        })
        .collect();
    table(id, &[title, "messages"], &rows)
}

/// The fields of query string `q` and the selection they make, or the 400 page saying what is
/// wrong with it (with a fresh filter form).
#[allow(clippy::result_large_err)]
fn selection(
    app: &App,
    title: &str,
    q: Option<&str>,
) -> Result<(Vec<(String, String)>, Selection), Response> {
    let form = fields(q.unwrap_or("").as_bytes());
    match Selection::from_fields(&form) {
        Ok(sel) => Ok((form, sel)),
        Err(e) => Err(html(
            StatusCode::BAD_REQUEST,
            app,
            title,
            &format!(
                "<p class=\"err\">{}</p>{}",
                esc(&e),
                filter_form(&Selection::default())
            ),
        )),
    }
}

/// `GET /dlq`: counts, the filter, one page of the filtered list.
pub(crate) async fn dead_letters(State(app): State<Arc<App>>, RawQuery(q): RawQuery) -> Response {
    let (form, sel) = match selection(&app, "Dead letters", q.as_deref()) {
        Ok(s) => s,
        Err(bad) => return bad,
    };
    let number = |name: &str| {
        form.iter()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| v.parse::<u64>().ok())
    };
    let page = number("page").unwrap_or(0);
    let size = number("size").map_or(PAGE_SIZE, |s| (s as usize).clamp(1, MAX_PAGE_SIZE));
    let browse = match dlq::browse(
        &app.cfg.cluster,
        &sel.filter,
        page.saturating_mul(size as u64),
        size,
    )
    .await
    {
        Ok(b) => b,
        Err(e) => {
            return html(
                StatusCode::BAD_GATEWAY,
                &app,
                "Dead letters",
                &format!("<p class=\"err\">{}</p>", esc(&e.to_string())),
            )
        }
    };
    let st = &browse.stats;
    let mut body = String::new();
    let _ = write!(
        body,
        "<p><strong id=\"total\">{}</strong> messages in <code>{}</code>{}</p>",
        st.total,
        esc(&st.topic),
        if st.incomplete {
            " <span class=\"err\">(could not read to the end; counts are a lower bound)</span>"
        } else {
            ""
        }
    );
    body.push_str("<div style=\"display:flex;gap:24px;flex-wrap:wrap\">");
    body.push_str(&counts(
        "by-reason",
        "reason",
        Some("reason"),
        &st.by_reason,
    ));
    body.push_str(&counts(
        "by-class",
        "error class",
        Some("error_class"),
        &st.by_error_class,
    ));
    body.push_str(&counts(
        "by-topic",
        "original topic",
        None,
        &st.by_original_topic,
    ));
    body.push_str("</div><h2>Messages</h2>");
    body.push_str(&filter_form(&sel));
    let first = page.saturating_mul(size as u64);
    let _ = write!(
        body,
        "<p><span id=\"matched\">{}</span> selected ({}); showing {} to {}.</p>",
        browse.matched,
        esc(&sel.describe()),
        if browse.page.is_empty() { 0 } else { first + 1 },
        first + browse.page.len() as u64
    );
    // The list is a form: tick messages and redrive exactly those (a dry run comes first).
    body.push_str("<form method=\"get\" action=\"/redrive\">");
    let rows: Vec<Vec<String>> = browse.page.iter().map(list_row).collect();
    body.push_str(&table(
        "messages",
        &[
            "",
            "position",
            "key",
            "reason",
            "class",
            "attempts",
            "first failed",
            "replays",
            "error",
        ],
        &rows,
    ));
    body.push_str("<button type=\"submit\" id=\"redrive-chosen\">Redrive the ticked messages…</button></form>");
    let q = sel.query();
    let _ = write!(
        body,
        "<p><a id=\"redrive-filtered\" href=\"/redrive?{}\">Redrive all {} selected messages…</a> (a dry run comes first)</p>",
        if q.is_empty() { "all=yes".to_string() } else { esc(&q) },
        browse.matched
    );
    let nav = |p: u64, id: &str, label: &str| {
        let sep = if q.is_empty() { "" } else { "&" };
        let size = if size == PAGE_SIZE {
            String::new()
        } else {
            format!("&size={size}")
        };
        format!(
            "<a id=\"{id}\" href=\"{}\">{label}</a> ",
            esc(&format!("/dlq?{q}{sep}page={p}{size}"))
        )
    };
    if page > 0 {
        body.push_str(&nav(page - 1, "previous", "← previous"));
    }
    if first + (browse.page.len() as u64) < browse.matched {
        body.push_str(&nav(page + 1, "next", "next →"));
    }
    html(StatusCode::OK, &app, "Dead letters", &body)
}

fn list_row(e: &Entry) -> Vec<String> {
    let pos = e.position();
    let msg = e.error_message().unwrap_or_default();
    vec![
        format!("<input type=\"checkbox\" name=\"pos\" value=\"{pos}\">"),
        format!(
            "<a class=\"msg\" href=\"/dlq/message/{}/{}\">{pos}</a>",
            e.partition, e.offset
        ),
        inline_bytes(e.key.as_deref(), 40),
        esc(&e.reason().unwrap_or_else(|| "-".into())),
        esc(&e.error_class().unwrap_or_else(|| "-".into())),
        e.attempts().map_or("-".into(), |a| a.to_string()),
        e.failed_at()
            .map_or("-".into(), |t| esc(&headers::format_time(t))),
        e.replay_count().map_or("?".into(), |c| c.to_string()),
        esc(&crate::dlq::one_line(&msg, 80)),
    ]
}

/// `GET /dlq/message/{p}/{o}`: every header, the key and the payload.
pub(crate) async fn message(app: &App, partition: i32, offset: i64) -> Response {
    let cfg = DlqShowConfig {
        cluster: app.cfg.cluster.clone(),
        partition: Some(partition),
        offset,
    };
    let e = match dlq::show(&cfg).await {
        Ok(e) => e,
        Err(e) => {
            let status = match e {
                dlq::DlqError::NotFound { .. } | dlq::DlqError::Usage(_) => StatusCode::NOT_FOUND,
                _ => StatusCode::BAD_GATEWAY,
            };
            return html(
                status,
                app,
                "Message",
                &format!("<p class=\"err\">{}</p>", esc(&e.to_string())),
            );
        }
    };
    let mut body = String::new();
    let _ = write!(
        body,
        "<p><code>{}</code> partition <strong>{}</strong> offset <strong>{}</strong> · timestamp {}</p>",
        esc(&app.cfg.cluster.topology.dlq),
        e.partition,
        e.offset,
        e.record_time()
            .map_or("-".into(), |t| esc(&headers::format_time(t)))
    );
    let _ = write!(
        body,
        "<h2>Key</h2><p id=\"key\">{}</p>",
        inline_bytes(e.key.as_deref(), 4096)
    );
    let rows: Vec<Vec<String>> = e
        .headers
        .iter()
        .map(|h| {
            vec![
                inline_bytes(Some(&h.name), 256),
                inline_bytes(h.value.as_deref(), 4096),
            ]
        })
        .collect();
    let _ = write!(body, "<h2>Headers ({})</h2>", e.headers.len());
    body.push_str(&table("headers", &["name", "value"], &rows));
    body.push_str("<h2>Payload</h2>");
    body.push_str(&payload_block(e.payload.as_deref()));
    let _ = write!(
        body,
        "<p><a id=\"redrive-one\" href=\"/redrive?pos={}/{}\">Redrive this message…</a> · <a href=\"/dlq\">back to the list</a></p>",
        e.partition, e.offset
    );
    html(
        StatusCode::OK,
        app,
        &format!("Message {}", e.position()),
        &body,
    )
}

/// `GET /redrive?…`: the dry run of a selection and, when allowed, the confirmation form.
pub(crate) async fn redrive_preview(
    State(app): State<Arc<App>>,
    RawQuery(q): RawQuery,
) -> Response {
    let (form, sel) = match selection(&app, "Redrive", q.as_deref()) {
        Ok(s) => s,
        Err(bad) => return bad,
    };
    let everything = form.iter().any(|(n, v)| n == "all" && v == "yes");
    if sel.is_everything() && !everything {
        return html(
            StatusCode::OK,
            &app,
            "Redrive",
            "<p>Choose messages on the <a href=\"/dlq\">dead letters</a> page: tick them, or filter and redrive what the filter selects.</p>",
        );
    }
    let cfg = replay_config(&app, sel.filter.clone(), true);
    let mut plan = Vec::new();
    let mut quiet = Quiet;
    let summary = match dlq::replay_with(&cfg, &app.stop, &mut plan, &mut quiet).await {
        Ok(s) => s,
        Err(e) => {
            return html(
                StatusCode::BAD_GATEWAY,
                &app,
                "Redrive",
                &format!("<p class=\"err\">{}</p>", esc(&e.to_string())),
            )
        }
    };
    let plan = String::from_utf8_lossy(&plan);
    let lines: Vec<&str> = plan.lines().collect();
    let mut body = String::new();
    let _ = write!(
        body,
        "<p>Selection: <strong>{}</strong> · replay group <code>{}</code></p>\
         <h2>Dry run</h2><p id=\"dry-run\">would redrive <strong id=\"would\">{}</strong>; \
         already redriven {}, skipped at the replay limit ({}) {}, not selected {}, cannot be sent {} ({} read)</p>",
        esc(&sel.describe()),
        esc(&cfg.cluster.group),
        summary.replayed,
        summary.skipped_already_replayed,
        cfg.max_replays,
        summary.skipped_at_replay_limit,
        summary.skipped_by_filter,
        summary.failed,
        summary.read
    );
    for f in &summary.failures {
        let _ = write!(body, "<p class=\"err\">{}</p>", esc(f));
    }
    let _ = write!(
        body,
        "<pre id=\"plan\">{}{}</pre>",
        esc(&lines
            .iter()
            .take(DRY_RUN_LINES)
            .copied()
            .collect::<Vec<_>>()
            .join("\n")),
        if lines.len() > DRY_RUN_LINES {
            format!("\n… and {} more", lines.len() - DRY_RUN_LINES)
        } else {
            String::new()
        }
    );
    if !app.cfg.allow_replay {
        body.push_str("<p class=\"warn\">This console is read-only. Start it with <code>--allow-replay</code> to redrive, or run <code>rebound replay-dlq</code> with the same filters.</p>");
    } else if summary.replayed == 0 {
        body.push_str("<p>Nothing to redrive.</p>");
    } else {
        let _ = write!(
            body,
            "<form method=\"post\" action=\"/redrive\">{}{}{}\
             <p class=\"warn\">Redrive sends these messages back to their original topic, where the service handles them again.</p>\
             <button type=\"submit\" id=\"confirm\">Redrive {} message{}</button></form>",
            hidden("csrf", &app.csrf),
            sel.hidden_fields(),
            if everything { hidden("all", "yes") } else { String::new() },
            summary.replayed,
            if summary.replayed == 1 { "" } else { "s" }
        );
    }
    html(StatusCode::OK, &app, "Redrive", &body)
}

/// A dry run reports no progress.
struct Quiet;

impl dlq::ReplayProgress for Quiet {
    fn update(&mut self, _: &dlq::ReplaySummary) {}
}

/// `GET /redrive/job`: the redrive under way (the page reloads itself each second) or its summary.
pub(crate) async fn redrive_job(State(app): State<Arc<App>>) -> Response {
    let job = app.job.lock().ok().and_then(|g| g.clone());
    let Some(job) = job else {
        return html(
            StatusCode::OK,
            &app,
            "Redrive",
            "<p>No redrive yet. Choose messages on the <a href=\"/dlq\">dead letters</a> page.</p>",
        );
    };
    let s = &job.summary;
    let mut body = String::new();
    if !job.done {
        // Reload while running: no script needed.
        body.push_str("<meta http-equiv=\"refresh\" content=\"1\">");
    }
    let state = match (&job.error, job.done) {
        (Some(e), _) => format!("<span class=\"err\">failed: {}</span>", esc(e)),
        (None, false) => "<span>running…</span>".to_string(),
        (None, true) if s.ok() => "<span class=\"ok\">finished</span>".to_string(),
        (None, true) => "<span class=\"err\">finished with problems</span>".to_string(),
    };
    let _ = write!(
        body,
        "<p>Selection: <strong>{}</strong></p><p id=\"job-state\">{state}</p>\
         <p><progress max=\"{}\" value=\"{}\"></progress> {} of at most {} read</p>",
        esc(&job.selection),
        job.total.max(1),
        s.read.min(job.total.max(1)),
        s.read,
        job.total
    );
    body.push_str(&table(
        "summary",
        &[
            "redriven",
            "already redriven",
            "at replay limit",
            "not selected",
            "failed",
            "read",
        ],
        &[vec![
            format!("<span id=\"redriven\">{}</span>", s.replayed),
            s.skipped_already_replayed.to_string(),
            s.skipped_at_replay_limit.to_string(),
            s.skipped_by_filter.to_string(),
            s.failed.to_string(),
            s.read.to_string(),
        ]],
    ));
    if job.done {
        let _ = write!(
            body,
            "<pre id=\"job-summary\">{}</pre>",
            esc(&s.to_string())
        );
    }
    html(StatusCode::OK, &app, "Redrive", &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn selections_read_filters_and_positions() {
        let s = Selection::from_fields(&f(&[
            ("error_class", "http_503"),
            ("key", ""),
            ("pos", "0/5"),
            ("pos", "1/7"),
            ("pos", "0/5"),
            ("page", "2"),
        ]))
        .unwrap();
        assert_eq!(s.filter.error_classes, vec!["http_503"]);
        assert_eq!(s.filter.positions, [(0, 5), (1, 7)].into());
        assert_eq!(s.describe(), "error class = http_503, 2 chosen messages");
        assert_eq!(s.query(), "error_class=http_503&pos=0%2F5&pos=1%2F7");
        assert!(!s.is_everything());
        assert!(Selection::from_fields(&f(&[("page", "1")]))
            .unwrap()
            .is_everything());
        let e = Selection::from_fields(&f(&[("reason", "nope")])).unwrap_err();
        assert!(e.starts_with("reason: unknown reason"), "{e}");
        assert!(Selection::from_fields(&f(&[("pos", "0-5")])).is_err());
        assert!(Selection::from_fields(&f(&[("since", "yesterday")])).is_err());
    }
}

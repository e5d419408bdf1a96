//! `rebound console`: a small web application, rendered on the server, for the operator who wants
//! to see what is stuck and why, and to send chosen dead letters back after a fix.
//!
//! Pages: `/` topology (topics, partitions, end offsets, the group's committed offsets and lag,
//! messages parked per tier, and each `--instances` `/status`); `/dlq` the dead letters (counts,
//! a filtered, paginated list); `/dlq/message/{partition}/{offset}` one message (every header,
//! the key, the payload as text or hex); `/redrive` a dry run of a selection and its confirmation;
//! `/redrive/job` the progress and summary of the redrive under way.
//!
//! Redrive is [`crate::dlq::replay_with`], the engine of `replay-dlq`, with the same replay group
//! (`<group>.replay`) and replay ledger: a console redrive and a CLI replay of the same selection,
//! in either order, send nothing twice, and what a selection did not choose stays available.
//!
//! Safety (see `check_request`):
//! * read-only unless started with `--allow-replay`; every write (`POST`) needs the page's CSRF
//!   token, which is random per process;
//! * bound to loopback by default; any other address needs `--token`, then every request needs
//!   `Authorization: Bearer <token>` or the session cookie the login form sets. The token is
//!   never logged or shown;
//! * without a token, only requests naming a loopback host are served (a page of another site
//!   that resolves its name to 127.0.0.1 is refused, DNS rebinding);
//! * `-X` secrets are shown redacted.

mod html;
mod pages;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use tokio_util::sync::CancellationToken;

use crate::cli::{ConsoleArgs, TopologyArgs};
use crate::cluster::ClusterConfig;
use crate::config::{resolve_cluster, ConfigError};
use crate::defaults;
use crate::dlq::{ReplayProgress, ReplaySummary};

pub use html::esc;

/// The shortest `--token` accepted.
pub const MIN_TOKEN_LEN: usize = 16;

/// The session cookie the login form sets.
pub const SESSION_COOKIE: &str = "rebound_console";

/// A secret that never shows in `Debug` output or logs.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }
    fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Settings of `rebound console`.
#[derive(Debug, Clone)]
pub struct ConsoleConfig {
    /// `cluster.group` is the service's group (offsets and lag shown); redrive uses
    /// `<group>.replay`.
    pub cluster: ClusterConfig,
    pub listen: SocketAddr,
    /// Base URLs (`http://host:9464`) whose `/status` the topology page shows.
    pub instances: Vec<String>,
    pub allow_replay: bool,
    pub token: Option<Secret>,
    pub max_replays: u32,
}

impl ConsoleConfig {
    /// Resolves and checks the flags: a non-loopback `--listen` needs `--token`.
    pub fn resolve(args: &ConsoleArgs) -> Result<ConsoleConfig, ConfigError> {
        let cluster = resolve_cluster(
            &TopologyArgs::of(&args.connect, &args.names)
                .with_tiers(&args.tiers)
                .with_group(args.group.clone()),
        )?;
        let listen_text = args
            .listen
            .as_deref()
            .unwrap_or(defaults::CONSOLE_LISTEN)
            .trim();
        let listen: SocketAddr = listen_text.parse().map_err(|_| {
            ConfigError::new(
                "--listen",
                format!("{listen_text:?} is not an address such as 127.0.0.1:9465"),
            )
        })?;
        let token = match args.token.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(t) if t.len() < MIN_TOKEN_LEN => {
                return Err(ConfigError::new(
                    "--token",
                    format!("too short; use at least {MIN_TOKEN_LEN} random characters, e.g. from `openssl rand -hex 16`"),
                ))
            }
            Some(t) => Some(Secret::new(t)),
        };
        let cfg = ConsoleConfig {
            cluster,
            listen,
            instances: parse_instances(args.instances.as_deref())?,
            allow_replay: args.allow_replay,
            token,
            max_replays: match args.max_replays.as_deref() {
                Some(s) => s.trim().parse().map_err(|_| {
                    ConfigError::new("--max-replays", format!("{s:?} is not a whole number"))
                })?,
                None => defaults::MAX_REPLAYS,
            },
        };
        cfg.check()?;
        Ok(cfg)
    }

    /// The safety rule on binding: anything but loopback needs a token.
    pub fn check(&self) -> Result<(), ConfigError> {
        if !self.listen.ip().is_loopback() && self.token.is_none() {
            return Err(ConfigError::new(
                "--listen",
                format!(
                    "{} is not a loopback address: anyone who can reach it could read the dead letters{}; \
                     set a token with --token or REBOUND_CONSOLE_TOKEN, or listen on 127.0.0.1",
                    self.listen,
                    if self.allow_replay { " and redrive them" } else { "" }
                ),
            ));
        }
        Ok(())
    }

    /// The replay group redrive uses (and `replay-dlq` by default).
    pub fn replay_group(&self) -> String {
        format!("{}.replay", self.cluster.group)
    }
}

/// `--instances`: comma-separated http(s) base URLs.
pub fn parse_instances(s: Option<&str>) -> Result<Vec<String>, ConfigError> {
    let Some(s) = s else {
        return Ok(Vec::new());
    };
    s.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(|u| {
            if (u.starts_with("http://") || u.starts_with("https://"))
                && !u.contains(char::is_whitespace)
            {
                Ok(u.trim_end_matches('/').to_string())
            } else {
                Err(ConfigError::new(
                    "--instances",
                    format!("{u:?} is not a URL such as http://10.0.0.5:9464"),
                ))
            }
        })
        .collect()
}

/// Why the console could not start; each is fixed on the command line (exit code 2).
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("console cannot listen on {addr}: {error}")]
    Bind {
        addr: SocketAddr,
        error: std::io::Error,
    },
}

/// The redrive under way or last finished.
#[derive(Debug, Clone, Default)]
pub struct Job {
    /// What was chosen, for people.
    pub selection: String,
    /// Messages between the start offsets and the ends (an upper bound of what is read).
    pub total: u64,
    pub summary: ReplaySummary,
    pub done: bool,
    pub error: Option<String>,
}

/// Shared by every request.
pub(crate) struct App {
    pub cfg: ConsoleConfig,
    /// The CSRF token every form carries (random per process).
    pub csrf: String,
    /// The session cookie value the login form sets (random per process).
    session: String,
    pub job: Arc<Mutex<Option<Job>>>,
    pub stop: CancellationToken,
    pub http: reqwest::Client,
}

fn random_hex() -> String {
    use rand::Rng;
    let bytes: [u8; 24] = rand::rng().random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Compares secrets in time independent of where they differ.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// Binds now (a busy port is reported at once) and serves until `stop`. Returns the bound address.
pub async fn start(
    cfg: ConsoleConfig,
    stop: CancellationToken,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), ConsoleError> {
    cfg.check()?;
    let addr = cfg.listen;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|error| ConsoleError::Bind { addr, error })?;
    let local = listener
        .local_addr()
        .map_err(|error| ConsoleError::Bind { addr, error })?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()
        .unwrap_or_default();
    let app = Arc::new(App {
        cfg,
        csrf: random_hex(),
        session: random_hex(),
        job: Arc::new(Mutex::new(None)),
        stop: stop.clone(),
        http,
    });
    let router = axum::Router::new()
        .route("/", get(pages::topology))
        .route("/dlq", get(pages::dead_letters))
        .route("/dlq/message/{partition}/{offset}", get(message))
        .route("/redrive", get(pages::redrive_preview).post(redrive_start))
        .route("/redrive/job", get(pages::redrive_job))
        .route("/login", get(login_page).post(login))
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            check_request,
        ))
        .with_state(app.clone());
    tracing::info!(
        url = %format!("http://{local}/"),
        allow_replay = app.cfg.allow_replay,
        token = app.cfg.token.is_some(),
        "console listening"
    );
    let task = tokio::spawn(async move {
        let result = axum::serve(listener, router)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await;
        if let Err(e) = result {
            tracing::error!(error = %e, "console server stopped");
        }
    });
    Ok((local, task))
}

/// Whether the request's `Host` names this machine's loopback (or the bound address).
fn loopback_host(headers: &HeaderMap, bound: SocketAddr) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
        return false;
    };
    let name = match host.rsplit_once(':') {
        Some((name, port)) if port.chars().all(|c| c.is_ascii_digit()) => name,
        _ => host,
    };
    let name = name.trim_start_matches('[').trim_end_matches(']');
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback() || ip == bound.ip())
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

/// The safety rules, before any page: authentication when a token is set, loopback `Host`
/// when not.
async fn check_request(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let headers = req.headers();
    match &app.cfg.token {
        None => {
            if !loopback_host(headers, app.cfg.listen) {
                return (
                    StatusCode::FORBIDDEN,
                    "this console answers only to a loopback host name (127.0.0.1, localhost)\n",
                )
                    .into_response();
            }
        }
        Some(token) => {
            let bearer = headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .is_some_and(|t| same(t.trim(), token.expose()));
            let session = cookie(headers, SESSION_COOKIE).is_some_and(|c| same(&c, &app.session));
            if !bearer && !session && req.uri().path() != "/login" {
                if req.method() == Method::GET {
                    return Redirect::to("/login").into_response();
                }
                return (StatusCode::UNAUTHORIZED, "a token is needed\n").into_response();
            }
        }
    }
    let mut response = next.run(req).await;
    let h = response.headers_mut();
    h.insert(header::CACHE_CONTROL, "no-store".parse().expect("valid"));
    h.insert("x-frame-options", "DENY".parse().expect("valid"));
    h.insert(
        "content-security-policy",
        "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; form-action 'self'; frame-ancestors 'none'"
            .parse()
            .expect("valid"),
    );
    response
}

/// The fields of a form or query string, in order (a name may repeat).
pub(crate) fn fields(raw: &[u8]) -> Vec<(String, String)> {
    form_urlencoded::parse(raw).into_owned().collect()
}

async fn login_page(State(app): State<Arc<App>>) -> Response {
    if app.cfg.token.is_none() {
        return Redirect::to("/").into_response();
    }
    pages::html(
        StatusCode::OK,
        &app,
        "Log in",
        &format!(
            "<form method=\"post\" action=\"/login\">{}<label>Token <input type=\"password\" name=\"token\" \
             autocomplete=\"current-password\"></label> <button type=\"submit\">Log in</button></form>",
            html::hidden("csrf", &app.csrf)
        ),
    )
}

async fn login(State(app): State<Arc<App>>, body: Bytes) -> Response {
    let Some(token) = &app.cfg.token else {
        return Redirect::to("/").into_response();
    };
    let form = fields(&body);
    let get = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    if !get("csrf").is_some_and(|c| same(c, &app.csrf)) {
        return pages::forbidden(
            &app,
            "the form's CSRF token is missing or stale; reload the page",
        );
    }
    if !get("token").is_some_and(|t| same(t.trim(), token.expose())) {
        tracing::warn!("console login refused: wrong token");
        return pages::html(
            StatusCode::UNAUTHORIZED,
            &app,
            "Log in",
            "<p class=\"err\">Wrong token.</p><p><a href=\"/login\">Try again</a></p>",
        );
    }
    let mut response = Redirect::to("/").into_response();
    let cookie = format!(
        "{SESSION_COOKIE}={}; Path=/; HttpOnly; SameSite=Strict",
        app.session
    );
    if let Ok(v) = cookie.parse() {
        response.headers_mut().insert(header::SET_COOKIE, v);
    }
    response
}

async fn message(
    State(app): State<Arc<App>>,
    Path((partition, offset)): Path<(String, String)>,
) -> Response {
    let (Ok(partition), Ok(offset)) = (partition.parse::<i32>(), offset.parse::<i64>()) else {
        return pages::html(
            StatusCode::BAD_REQUEST,
            &app,
            "Message",
            "<p class=\"err\">partition and offset are whole numbers</p>",
        );
    };
    pages::message(&app, partition, offset).await
}

/// The console's progress sink: the job record the job page shows.
struct JobProgress(Arc<Mutex<Option<Job>>>);

impl JobProgress {
    fn with(&self, f: impl FnOnce(&mut Job)) {
        if let Ok(mut guard) = self.0.lock() {
            if let Some(job) = guard.as_mut() {
                f(job);
            }
        }
    }
}

impl ReplayProgress for JobProgress {
    fn start(&mut self, total: u64) {
        self.with(|j| j.total = total);
    }
    fn update(&mut self, s: &ReplaySummary) {
        self.with(|j| j.summary = s.clone());
    }
    fn finish(&mut self, s: &ReplaySummary) {
        self.with(|j| j.summary = s.clone());
    }
}

/// `POST /redrive`: checks the safety rules, then starts the redrive in the background.
async fn redrive_start(State(app): State<Arc<App>>, body: Bytes) -> Response {
    if !app.cfg.allow_replay {
        return pages::forbidden(
            &app,
            "this console is read-only; start it with --allow-replay to redrive",
        );
    }
    let form = fields(&body);
    let csrf_ok = form
        .iter()
        .find(|(n, _)| n == "csrf")
        .is_some_and(|(_, v)| same(v, &app.csrf));
    if !csrf_ok {
        return pages::forbidden(
            &app,
            "the form's CSRF token is missing or stale; reload the page",
        );
    }
    let selection = match pages::Selection::from_fields(&form) {
        Ok(s) => s,
        Err(e) => {
            return pages::html(
                StatusCode::BAD_REQUEST,
                &app,
                "Redrive",
                &format!("<p class=\"err\">{}</p>", esc(&e)),
            )
        }
    };
    if selection.is_everything() && !form.iter().any(|(n, v)| n == "all" && v == "yes") {
        return pages::html(
            StatusCode::BAD_REQUEST,
            &app,
            "Redrive",
            "<p class=\"err\">nothing chosen: choose messages or a filter (or confirm redriving everything)</p>",
        );
    }
    {
        let Ok(mut guard) = app.job.lock() else {
            return pages::html(
                StatusCode::INTERNAL_SERVER_ERROR,
                &app,
                "Redrive",
                "<p class=\"err\">internal state poisoned</p>",
            );
        };
        if guard.as_ref().is_some_and(|j| !j.done) {
            return pages::html(
                StatusCode::CONFLICT,
                &app,
                "Redrive",
                "<p class=\"err\">a redrive is under way; wait for it to finish</p><p><a href=\"/redrive/job\">See it</a></p>",
            );
        }
        *guard = Some(Job {
            selection: selection.describe(),
            ..Job::default()
        });
    }
    let cfg = pages::replay_config(&app, selection.filter.clone(), false);
    let job = app.job.clone();
    let stop = app.stop.clone();
    tracing::info!(selection = %selection.describe(), group = %cfg.cluster.group, "console redrive starting");
    tokio::spawn(async move {
        let mut progress = JobProgress(job.clone());
        let mut sink = std::io::sink();
        let result = crate::dlq::replay_with(&cfg, &stop, &mut sink, &mut progress).await;
        if let Ok(mut guard) = job.lock() {
            if let Some(j) = guard.as_mut() {
                j.done = true;
                match result {
                    Ok(summary) => {
                        tracing::info!(
                            replayed = summary.replayed,
                            failed = summary.failed,
                            "console redrive finished"
                        );
                        j.summary = summary;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "console redrive failed");
                        j.error = Some(e.to_string());
                    }
                }
            }
        }
    });
    Redirect::to("/redrive/job").into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{ConnectArgs, NameArgs};

    fn args(listen: &str, token: Option<&str>) -> ConsoleArgs {
        ConsoleArgs {
            connect: ConnectArgs {
                kafka: vec!["sasl.password=hunter2".into()],
                ..ConnectArgs::default()
            },
            names: NameArgs {
                topic: Some("orders".into()),
                ..NameArgs::default()
            },
            listen: Some(listen.into()),
            token: token.map(str::to_string),
            ..ConsoleArgs::default()
        }
    }

    #[test]
    fn a_non_loopback_bind_needs_a_token() {
        let e = ConsoleConfig::resolve(&args("0.0.0.0:9465", None)).unwrap_err();
        assert_eq!(e.field, "--listen");
        assert!(e.problem.contains("--token"), "{e}");
        assert!(ConsoleConfig::resolve(&args("127.0.0.1:0", None)).is_ok());
        assert!(ConsoleConfig::resolve(&args("[::1]:9465", None)).is_ok());
        let c = ConsoleConfig::resolve(&args("0.0.0.0:9465", Some("0123456789abcdef"))).unwrap();
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("0123456789abcdef") && !shown.contains("hunter2"),
            "{shown}"
        );
        assert_eq!(
            ConsoleConfig::resolve(&args("0.0.0.0:9465", Some("short")))
                .unwrap_err()
                .field,
            "--token"
        );
        assert_eq!(c.replay_group(), "rebound.orders.replay");
    }

    #[test]
    fn instances_are_urls() {
        assert_eq!(
            parse_instances(Some("http://a:9464/, https://b")).unwrap(),
            vec!["http://a:9464", "https://b"]
        );
        assert!(parse_instances(Some("a:9464")).is_err());
        assert!(parse_instances(None).unwrap().is_empty());
    }

    #[test]
    fn hosts_and_cookies_are_read_strictly() {
        let bound: SocketAddr = "127.0.0.1:9465".parse().unwrap();
        let h = |host: &str| {
            let mut m = HeaderMap::new();
            m.insert(header::HOST, host.parse().unwrap());
            loopback_host(&m, bound)
        };
        assert!(h("127.0.0.1:9465") && h("localhost:9465") && h("[::1]:9465") && h("localhost"));
        assert!(!h("evil.example:9465") && !h("127.0.0.1.evil.example"));
        assert!(!loopback_host(&HeaderMap::new(), bound));
        let mut m = HeaderMap::new();
        m.insert(header::COOKIE, "a=1; rebound_console=xyz".parse().unwrap());
        assert_eq!(cookie(&m, SESSION_COOKIE).as_deref(), Some("xyz"));
        assert!(same("abc", "abc") && !same("abc", "abd") && !same("abc", "ab"));
    }
}

//! Flags + env vars + `--config` file + defaults → validated settings (pure).
//!
//! Precedence: flag > env var (both handled by clap) > file > default. Every error names the
//! setting and says what a valid value looks like; `main` turns them into exit code 2.
//!
//! This file is `rebound run`'s settings ([`Config`]) and what every command shares (the file
//! format [`FileConfig`], [`ConfigError`]). The other commands' settings are in `config/`:
//! `topology.rs` (cluster and topology flags, every command), `dlq.rs` (`dlq`, `replay-dlq`,
//! the DLQ filters), `topics.rs`; the demo's and the console's are in their own modules.
//! Defaults come from `defaults.rs`, [`BreakerConfig::default`] and [`crate::delay`].

mod dlq;
mod parse;
mod topics;
mod topology;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

pub use self::dlq::{resolve_filter, DlqReadConfig, DlqShowConfig, ReplayConfig};
pub use self::parse::parse_size;
use self::parse::{bad, load_file, parse_num, positive_duration};
pub use self::topics::TopicsConfig;
pub use self::topology::{parse_tiers, resolve_cluster, topic_name};
use crate::breaker::BreakerConfig;
use crate::cli::RunArgs;
pub use crate::cluster::{ClusterConfig, KafkaProps};
use crate::defaults;
use crate::delay::BufferBounds;
use crate::duration;
use crate::handler::command::{self, CommandHandler};
use crate::handler::http::{self, HttpHandler};
use crate::handler::Handler;
use crate::topology::Topology;

/// A configuration problem: which setting, and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct ConfigError {
    /// The setting, as its flag (`--tiers`, `-X`, `--config`).
    pub field: String,
    /// What is wrong and what a valid value looks like.
    pub problem: String,
}

impl ConfigError {
    /// A problem with `field`.
    pub fn new(field: &str, problem: impl Into<String>) -> ConfigError {
        ConfigError {
            field: field.to_string(),
            problem: problem.into(),
        }
    }
}

/// The `--config` file. Keys are the long flag names. (The binary's, not a stable API.)
#[doc(hidden)]
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FileConfig {
    pub brokers: Option<String>,
    pub group: Option<String>,
    pub topic: Option<String>,
    pub tiers: Option<StringOrList>,
    pub max_retries: Option<u32>,
    pub dlq: Option<String>,
    pub max_age: Option<String>,
    pub jitter: Option<f64>,
    pub max_delay: Option<String>,
    pub ordering: Option<String>,
    pub handler: Option<String>,
    pub url: Option<String>,
    pub command: Option<String>,
    pub handler_timeout: Option<String>,
    pub metrics_addr: Option<String>,
    pub max_in_flight: Option<usize>,
    pub commit_interval: Option<String>,
    pub shutdown_timeout: Option<String>,
    pub instance_id: Option<String>,
    pub revoke_timeout: Option<String>,
    pub exactly_once: Option<bool>,
    pub breaker_threshold: Option<f64>,
    pub breaker_window: Option<usize>,
    pub breaker_window_time: Option<String>,
    pub breaker_min_calls: Option<usize>,
    pub breaker_cooldown: Option<String>,
    pub breaker_probes: Option<usize>,
    pub breaker_slow_call: Option<String>,
    pub forward_headers: Option<StringOrList>,
    pub tier_buffer: Option<SizeValue>,
    pub tier_buffer_messages: Option<usize>,
    pub tier_buffer_partition_bytes: Option<SizeValue>,
    pub tier_horizon: Option<String>,
    pub partitions: Option<i32>,
    pub replication_factor: Option<i32>,
    #[serde(default)]
    pub kafka: BTreeMap<String, toml::Value>,
}

/// `tier-buffer = "32MiB"` or `tier-buffer = 33554432` (bytes).
#[doc(hidden)]
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum SizeValue {
    Text(String),
    Bytes(u64),
}

/// `tiers = "2m,4m"` or `tiers = ["2m", "4m"]`.
#[doc(hidden)]
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum StringOrList {
    One(String),
    Many(Vec<String>),
}

impl FileConfig {
    /// Reads and parses the file; unknown keys are an error.
    pub fn load(path: &Path) -> Result<FileConfig, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| bad("--config", format!("cannot read {}: {e}", path.display())))?;
        toml::from_str(&text).map_err(|e| bad("--config", format!("{}: {e}", path.display())))
    }

    /// The `[kafka]` table, values as text.
    pub fn kafka_properties(&self) -> Vec<(String, String)> {
        self.kafka
            .iter()
            .map(|(k, v)| {
                let value = match v {
                    toml::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                (k.clone(), value)
            })
            .collect()
    }
}

/// Which built-in handler the binary runs (checked; built once, by [`HandlerSpec::build`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandlerSpec {
    /// POST each message to `url` ([`HttpHandler`]).
    Http {
        /// An `http://` or `https://` URL.
        url: String,
        /// Message headers forwarded as request headers.
        forward_headers: Vec<String>,
    },
    /// Run a program per message ([`CommandHandler`]).
    Command {
        /// The program and its arguments, split like a shell would.
        command_line: String,
    },
}

impl HandlerSpec {
    /// Builds the handler; `timeout` bounds each HTTP request. A failure names the flag.
    pub fn build(&self, timeout: Duration) -> Result<Arc<dyn Handler>, ConfigError> {
        Ok(match self {
            HandlerSpec::Http {
                url,
                forward_headers,
            } => Arc::new(
                HttpHandler::new(url, timeout)
                    .map_err(|e| bad("--url", e.to_string()))?
                    .forward_headers(forward_headers.clone()),
            ),
            HandlerSpec::Command { command_line } => Arc::new(
                CommandHandler::parse(command_line).map_err(|e| bad("--command", e.to_string()))?,
            ),
        })
    }
}

/// A validated configuration for `rebound run`.
#[derive(Debug, Clone)]
pub struct Config {
    /// Brokers, group, `-X` properties and the topology.
    pub cluster: ClusterConfig,
    /// `None` when a library user supplies the handler.
    pub handler: Option<HandlerSpec>,
    /// Longest a handler call may take; a slower one is a transient `timeout`.
    pub handler_timeout: Duration,
    /// Where `/metrics`, `/healthz`, `/readyz` and `/status` are served; `None`: nowhere.
    pub metrics_addr: Option<SocketAddr>,
    /// Messages handled at once (same-key messages stay in order).
    pub max_in_flight: usize,
    /// How often finished offsets are committed.
    pub commit_interval: Duration,
    /// How long a graceful stop may take before in-flight work is handed back.
    pub shutdown_timeout: Duration,
    /// The circuit breaker's settings.
    pub breaker: BreakerConfig,
    /// Bounds of the tier partitions' read-ahead buffer.
    pub tier_buffer: BufferBounds,
    /// Consumer group membership: see [`Membership`].
    pub membership: Membership,
}

/// How `rebound run` takes part in its consumer group (`--instance-id`, `--revoke-timeout`;
/// the protocol itself is chosen at start-up, [`crate::group`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    /// A static member's `group.instance.id` (KIP-345), e.g. the pod name.
    pub instance_id: Option<String>,
    /// How long a revoke waits for the revoked partitions' running jobs.
    pub revoke_timeout: Duration,
    /// `--exactly-once` (issue 18): copies and source offsets commit in Kafka transactions,
    /// `transactional.id = <group>.<instance-id>`; needs `instance_id`.
    pub exactly_once: bool,
}

/// The default `--revoke-timeout`: short, and well inside `max.poll.interval.ms` (5 min).
pub const DEFAULT_REVOKE_TIMEOUT: Duration = Duration::from_secs(2);

impl Default for Membership {
    fn default() -> Self {
        Membership {
            instance_id: None,
            revoke_timeout: DEFAULT_REVOKE_TIMEOUT,
            exactly_once: false,
        }
    }
}

impl Membership {
    /// Flags beat the file; the `-X` group settings are checked here too (exit 2 on a conflict
    /// librdkafka would refuse).
    fn resolve(
        args: &RunArgs,
        file: &FileConfig,
        kafka: &KafkaProps,
    ) -> Result<Membership, ConfigError> {
        crate::group::check(&kafka.0).map_err(|e| bad("-X", e.to_string()))?;
        let instance_id = args.instance_id.clone().or(file.instance_id.clone());
        if let Some(id) = &instance_id {
            crate::group::check_instance_id(id).map_err(|e| bad("--instance-id", e))?;
        }
        let revoke_timeout = match args
            .revoke_timeout
            .as_deref()
            .or(file.revoke_timeout.as_deref())
        {
            None => DEFAULT_REVOKE_TIMEOUT,
            Some(s) => {
                duration::parse(s.trim()).map_err(|e| bad("--revoke-timeout", e.to_string()))?
            }
        };
        if revoke_timeout > Duration::from_secs(60) {
            return Err(bad(
                "--revoke-timeout",
                "must be at most 60s (a rebalance waits for it; max.poll.interval.ms bounds it)",
            ));
        }
        let exactly_once = args.exactly_once || file.exactly_once.unwrap_or(false);
        if exactly_once && instance_id.is_none() {
            return Err(bad(
                "--exactly-once",
                "needs --instance-id (the transactional.id is <group>.<instance-id>, stable across restarts, so that a restarted instance fences its predecessor); set --instance-id to a name unique in the group, e.g. the pod name",
            ));
        }
        Ok(Membership {
            instance_id,
            revoke_timeout,
            exactly_once,
        })
    }
}

impl Config {
    /// A configuration with every default, for library users and tests.
    pub fn new(brokers: &str, group: &str, topology: Topology) -> Config {
        Config {
            cluster: ClusterConfig {
                brokers: brokers.to_string(),
                group: group.to_string(),
                kafka: KafkaProps::default(),
                topology: topology.clone(),
            },
            handler: None,
            handler_timeout: defaults::HANDLER_TIMEOUT,
            metrics_addr: None,
            max_in_flight: defaults::MAX_IN_FLIGHT,
            commit_interval: defaults::COMMIT_INTERVAL,
            shutdown_timeout: defaults::SHUTDOWN_TIMEOUT,
            breaker: BreakerConfig::default(),
            tier_buffer: BufferBounds::with_horizon(shortest_tier(&topology)),
            membership: Membership::default(),
        }
    }

    /// Resolves `rebound run`'s settings. A handler is required.
    pub fn for_run(args: &RunArgs) -> Result<Config, ConfigError> {
        let file = load_file(&args.topology.connect)?;
        let cluster = topology::cluster_from(&args.topology, &file)?;
        let handler_kind = args.handler.clone().or(file.handler.clone());
        let url = args.url.clone().or(file.url.clone());
        let command = args.command.clone().or(file.command.clone());
        let handler = match handler_kind.as_deref() {
            None => {
                return Err(bad(
                    "--handler",
                    "missing: choose `--handler http --url URL` or `--handler command --command 'PROGRAM ARGS'`",
                ))
            }
            Some("http") => {
                let url = url.ok_or_else(|| bad("--url", "missing: `--handler http` needs the URL to POST to"))?;
                http::check_url(&url).map_err(|e| bad("--url", e.to_string()))?;
                let forward_headers = match (&args.forward_headers, &file.forward_headers) {
                    (Some(s), _) | (None, Some(StringOrList::One(s))) => s.split(',').map(|h| h.trim().to_string()).collect(),
                    (None, Some(StringOrList::Many(v))) => v.clone(),
                    (None, None) => Vec::new(),
                };
                let forward_headers: Vec<String> = forward_headers.into_iter().filter(|h| !h.is_empty()).collect();
                for name in &forward_headers {
                    if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
                        return Err(bad("--forward-headers", format!("{name:?} is not a valid HTTP header name")));
                    }
                }
                HandlerSpec::Http { url, forward_headers }
            }
            Some("command") => {
                let line = command.ok_or_else(|| {
                    bad("--command", "missing: `--handler command` needs the program to run, e.g. --command './process.sh'")
                })?;
                command::split(&line).map_err(|e| bad("--command", e.to_string()))?;
                HandlerSpec::Command { command_line: line }
            }
            Some(other) => return Err(bad("--handler", format!("unknown handler {other:?}; use `http` or `command`"))),
        };
        let handler_timeout = positive_duration(
            "--handler-timeout",
            args.handler_timeout
                .as_deref()
                .or(file.handler_timeout.as_deref()),
            defaults::HANDLER_TIMEOUT,
        )?;
        let metrics_addr = match args
            .metrics_addr
            .as_deref()
            .or(file.metrics_addr.as_deref())
            .unwrap_or(defaults::METRICS_ADDR)
        {
            "off" | "" => None,
            addr => Some(addr.parse::<SocketAddr>().map_err(|_| {
                bad(
                    "--metrics-addr",
                    format!("{addr:?} is not IP:PORT (e.g. 0.0.0.0:9464), or `off`"),
                )
            })?),
        };
        let max_in_flight = match args.max_in_flight.as_deref() {
            Some(s) => parse_num::<usize>("--max-in-flight", s)?,
            None => file.max_in_flight.unwrap_or(defaults::MAX_IN_FLIGHT),
        };
        if !(1..=10_000).contains(&max_in_flight) {
            return Err(bad("--max-in-flight", "must be from 1 to 10000"));
        }
        let breaker = resolve_breaker(args, &file)?;
        let tier_buffer = resolve_tier_buffer(args, &file, &cluster.topology)?;
        let membership = Membership::resolve(args, &file, &cluster.kafka)?;
        if membership.exactly_once && cluster.topology.waiting.is_some() {
            return Err(bad(
                "--ordering",
                "key cannot be combined with --exactly-once yet (the waiting log's records are not part of the transactions); choose one",
            ));
        }
        Ok(Config {
            membership,
            breaker,
            tier_buffer,
            cluster,
            handler: Some(handler),
            handler_timeout,
            metrics_addr,
            max_in_flight,
            commit_interval: positive_duration(
                "--commit-interval",
                args.commit_interval
                    .as_deref()
                    .or(file.commit_interval.as_deref()),
                defaults::COMMIT_INTERVAL,
            )?,
            shutdown_timeout: positive_duration(
                "--shutdown-timeout",
                args.shutdown_timeout
                    .as_deref()
                    .or(file.shutdown_timeout.as_deref()),
                defaults::SHUTDOWN_TIMEOUT,
            )?,
        })
    }
}

/// The default read-ahead horizon: the shortest tier delay.
fn shortest_tier(topology: &Topology) -> Duration {
    topology
        .tiers
        .iter()
        .map(|t| t.delay)
        .min()
        .unwrap_or_default()
}

/// The tier buffer's bounds: `--tier-buffer`, `--tier-buffer-messages`,
/// `--tier-buffer-partition-bytes`, `--tier-horizon`.
fn resolve_tier_buffer(
    args: &RunArgs,
    file: &FileConfig,
    topology: &Topology,
) -> Result<BufferBounds, ConfigError> {
    let size = |field: &str, flag: &Option<String>, file: &Option<SizeValue>, default: usize| {
        let n = match (flag, file) {
            (Some(s), _) | (None, Some(SizeValue::Text(s))) => parse_size(field, s)?,
            (None, Some(SizeValue::Bytes(n))) => *n,
            (None, None) => default as u64,
        };
        const MIN: u64 = 1024;
        const MAX: u64 = 1 << 40;
        if !(MIN..=MAX).contains(&n) {
            return Err(bad(field, "must be from 1KiB to 1TiB"));
        }
        usize::try_from(n).map_err(|_| bad(field, "too large for this machine"))
    };
    let total_bytes = size(
        "--tier-buffer",
        &args.tier_buffer,
        &file.tier_buffer,
        crate::delay::DEFAULT_TOTAL_BYTES,
    )?;
    let partition_bytes = size(
        "--tier-buffer-partition-bytes",
        &args.tier_buffer_partition_bytes,
        &file.tier_buffer_partition_bytes,
        crate::delay::DEFAULT_PARTITION_BYTES,
    )?;
    let partition_messages = match args.tier_buffer_messages.as_deref() {
        Some(s) => parse_num::<usize>("--tier-buffer-messages", s)?,
        None => file
            .tier_buffer_messages
            .unwrap_or(crate::delay::DEFAULT_PARTITION_MESSAGES),
    };
    if !(1..=1_000_000).contains(&partition_messages) {
        return Err(bad(
            "--tier-buffer-messages",
            "must be from 1 (hold only the head) to 1000000",
        ));
    }
    let horizon = match args
        .tier_horizon
        .as_deref()
        .or(file.tier_horizon.as_deref())
    {
        Some(s) => duration::parse(s).map_err(|e| bad("--tier-horizon", e.to_string()))?,
        None => shortest_tier(topology),
    };
    Ok(BufferBounds {
        partition_messages,
        partition_bytes,
        total_bytes,
        ..BufferBounds::with_horizon(horizon)
    })
}

fn resolve_breaker(args: &RunArgs, file: &FileConfig) -> Result<BreakerConfig, ConfigError> {
    let d = BreakerConfig::default();
    let threshold = match args.breaker_threshold.as_deref() {
        Some(s) => s.trim().parse::<f64>().map_err(|_| {
            bad(
                "--breaker-threshold",
                format!("{s:?} is not a number such as 0.5"),
            )
        })?,
        None => file.breaker_threshold.unwrap_or(d.threshold),
    };
    if !(0.0..=1.0).contains(&threshold) {
        return Err(bad("--breaker-threshold", "must be from 0 (off) to 1"));
    }
    let window = match args.breaker_window.as_deref() {
        Some(s) => parse_num::<usize>("--breaker-window", s)?,
        None => file.breaker_window.unwrap_or(d.window),
    };
    if !(1..=100_000).contains(&window) {
        return Err(bad("--breaker-window", "must be from 1 to 100000 calls"));
    }
    let min_calls = match args.breaker_min_calls.as_deref() {
        Some(s) => parse_num::<usize>("--breaker-min-calls", s)?,
        None => file.breaker_min_calls.unwrap_or(d.min_calls),
    };
    if !(1..=window).contains(&min_calls) {
        return Err(bad(
            "--breaker-min-calls",
            format!("must be from 1 to --breaker-window ({window})"),
        ));
    }
    let window_time = positive_duration(
        "--breaker-window-time",
        args.breaker_window_time
            .as_deref()
            .or(file.breaker_window_time.as_deref()),
        d.window_time,
    )?;
    let probes = match args.breaker_probes.as_deref() {
        Some(s) => parse_num::<usize>("--breaker-probes", s)?,
        None => file.breaker_probes.unwrap_or(d.probes),
    };
    if !(1..=1000).contains(&probes) {
        return Err(bad("--breaker-probes", "must be from 1 to 1000"));
    }
    let cooldown = positive_duration(
        "--breaker-cooldown",
        args.breaker_cooldown
            .as_deref()
            .or(file.breaker_cooldown.as_deref()),
        d.cooldown,
    )?;
    let slow_call = match args
        .breaker_slow_call
        .as_deref()
        .or(file.breaker_slow_call.as_deref())
    {
        None => d.slow_call,
        Some(s) if s.trim() == "0" => None,
        Some(s) => {
            let t = duration::parse(s).map_err(|e| bad("--breaker-slow-call", e.to_string()))?;
            (!t.is_zero()).then_some(t)
        }
    };
    Ok(BreakerConfig {
        threshold,
        window,
        window_time,
        min_calls,
        cooldown,
        probes,
        slow_call,
    })
}

impl fmt::Display for Config {
    /// The effective configuration, secrets redacted: what `--check-config` prints.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.cluster;
        let t = &c.topology;
        writeln!(f, "brokers          = {}", c.brokers)?;
        writeln!(f, "group            = {}", c.group)?;
        writeln!(f, "topic            = {}", t.main)?;
        for tier in &t.tiers {
            writeln!(
                f,
                "tier             = {} ({})",
                tier.topic,
                duration::Short(tier.delay)
            )?;
        }
        writeln!(f, "dlq              = {}", t.dlq)?;
        writeln!(
            f,
            "max-retries      = {} ({} tries at most)",
            t.max_retries,
            t.max_retries + 1
        )?;
        match t.max_age {
            Some(a) => writeln!(f, "max-age          = {}", duration::Short(a))?,
            None => writeln!(f, "max-age          = off")?,
        }
        writeln!(f, "jitter           = {}", t.jitter)?;
        writeln!(f, "max-delay        = {}", duration::Short(t.max_delay))?;
        match &t.waiting {
            Some(w) => writeln!(f, "ordering         = key (waiting log {w})")?,
            None => writeln!(f, "ordering         = none")?,
        }
        match &self.handler {
            Some(HandlerSpec::Http {
                url,
                forward_headers,
            }) => {
                writeln!(f, "handler          = http {url}")?;
                if !forward_headers.is_empty() {
                    writeln!(f, "forward-headers  = {}", forward_headers.join(","))?;
                }
            }
            Some(HandlerSpec::Command { command_line }) => {
                writeln!(f, "handler          = command {command_line}")?
            }
            None => writeln!(f, "handler          = (library)")?,
        }
        writeln!(
            f,
            "handler-timeout  = {}",
            duration::Short(self.handler_timeout)
        )?;
        match self.metrics_addr {
            Some(a) => writeln!(f, "metrics-addr     = {a}")?,
            None => writeln!(f, "metrics-addr     = off")?,
        }
        writeln!(f, "max-in-flight    = {}", self.max_in_flight)?;
        writeln!(
            f,
            "commit-interval  = {}",
            duration::Short(self.commit_interval)
        )?;
        writeln!(
            f,
            "shutdown-timeout = {}",
            duration::Short(self.shutdown_timeout)
        )?;
        let m = &self.membership;
        writeln!(
            f,
            "membership       = {}; revoke-timeout {}",
            m.instance_id
                .as_deref()
                .map_or("dynamic".to_string(), |id| format!(
                    "static, instance-id {id}"
                )),
            duration::Short(m.revoke_timeout)
        )?;
        if m.exactly_once {
            writeln!(
                f,
                "exactly-once     = on (transactional.id {}.{})",
                self.cluster.group,
                m.instance_id.as_deref().unwrap_or("?")
            )?;
        }
        let b = &self.tier_buffer;
        writeln!(
            f,
            "tier-buffer      = {} bytes in all; per partition {} messages, {} bytes; horizon {}",
            b.total_bytes,
            b.partition_messages,
            b.partition_bytes,
            duration::Short(b.horizon)
        )?;
        let b = &self.breaker;
        if b.enabled() {
            writeln!(
                f,
                "breaker          = opens at a failure rate >= {} of >= {} calls (windows: {} calls within {}); cool-down {}; {} probes",
                b.threshold,
                b.min_calls,
                b.window,
                duration::Short(b.window_time),
                duration::Short(b.cooldown),
                b.probes
            )?;
        } else {
            writeln!(f, "breaker          = off")?;
        }
        for (k, v) in c.kafka.redacted() {
            writeln!(f, "kafka.{k} = {v}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{NameArgs, TopologyArgs};
    use std::io::Write;

    fn run_args(topic: &str) -> RunArgs {
        RunArgs {
            topology: TopologyArgs {
                names: NameArgs {
                    topic: Some(topic.into()),
                    ..Default::default()
                },
                ..Default::default()
            },
            handler: Some("command".into()),
            command: Some("cat".into()),
            ..Default::default()
        }
    }

    fn err(args: &RunArgs) -> ConfigError {
        Config::for_run(args).unwrap_err()
    }

    #[test]
    fn defaults_follow_the_contract() {
        let c = Config::for_run(&run_args("orders")).unwrap();
        let t = &c.cluster.topology;
        assert_eq!(t.tiers.len(), 5);
        assert_eq!(t.tiers[0].topic, "orders.retry-2m");
        assert_eq!(t.tiers[4].topic, "orders.retry-32m");
        assert_eq!(t.dlq, "orders.dlq");
        assert_eq!(t.max_retries, 5);
        assert_eq!(c.cluster.brokers, defaults::BROKERS);
        assert_eq!(c.cluster.group, "rebound.orders");
        assert_eq!(c.handler_timeout, Duration::from_secs(10));
        assert_eq!(c.metrics_addr, Some("0.0.0.0:9464".parse().unwrap()));
    }

    #[test]
    fn breaker_slow_call_defaults_to_3s_and_0_turns_it_off() {
        let c = Config::for_run(&run_args("orders")).unwrap();
        assert_eq!(c.breaker.slow_call, Some(Duration::from_secs(3)));
        let mut a = run_args("orders");
        a.breaker_slow_call = Some("0".into());
        assert_eq!(Config::for_run(&a).unwrap().breaker.slow_call, None);
        a.breaker_slow_call = Some("1500ms".into());
        assert_eq!(
            Config::for_run(&a).unwrap().breaker.slow_call,
            Some(Duration::from_millis(1500))
        );
        a.breaker_slow_call = Some("soon".into());
        assert!(err(&a).to_string().contains("--breaker-slow-call"));
    }

    #[test]
    fn tier_buffer_defaults_sizes_and_bad_values() {
        let c = Config::for_run(&run_args("orders")).unwrap();
        assert_eq!(c.tier_buffer.total_bytes, 32 << 20);
        assert_eq!(c.tier_buffer.partition_messages, 1000);
        assert_eq!(c.tier_buffer.partition_bytes, 1 << 20);
        assert_eq!(c.tier_buffer.horizon, Duration::from_secs(120));

        let mut a = run_args("orders");
        a.tier_buffer = Some("64MiB".into());
        a.tier_buffer_messages = Some("1".into());
        a.tier_buffer_partition_bytes = Some("512KiB".into());
        a.tier_horizon = Some("30s".into());
        let b = Config::for_run(&a).unwrap().tier_buffer;
        assert_eq!(
            (
                b.total_bytes,
                b.partition_messages,
                b.partition_bytes,
                b.horizon
            ),
            (64 << 20, 1, 512 << 10, Duration::from_secs(30))
        );

        for (size, bytes) in [
            ("1048576", 1 << 20),
            ("2MB", 2_000_000),
            (" 3 GiB ", 3 << 30),
        ] {
            assert_eq!(parse_size("--tier-buffer", size), Ok(bytes), "{size}");
        }
        for bad in [
            "",
            "MiB",
            "1.5MiB",
            "-1",
            "12 parsecs",
            "99999999999999999999TiB",
        ] {
            assert_eq!(
                parse_size("--tier-buffer", bad).unwrap_err().field,
                "--tier-buffer"
            );
        }

        let bad = |f: fn(&mut RunArgs), field: &str| {
            let mut a = run_args("orders");
            f(&mut a);
            let e = err(&a);
            assert_eq!(e.field, field, "{e}");
        };
        bad(|a| a.tier_buffer = Some("lots".into()), "--tier-buffer");
        bad(|a| a.tier_buffer = Some("100".into()), "--tier-buffer");
        bad(|a| a.tier_buffer = Some("2TiB".into()), "--tier-buffer");
        bad(
            |a| a.tier_buffer_messages = Some("0".into()),
            "--tier-buffer-messages",
        );
        bad(
            |a| a.tier_buffer_messages = Some("x".into()),
            "--tier-buffer-messages",
        );
        bad(
            |a| a.tier_buffer_partition_bytes = Some("1".into()),
            "--tier-buffer-partition-bytes",
        );
        bad(|a| a.tier_horizon = Some("soon".into()), "--tier-horizon");
    }

    #[test]
    fn tier_buffer_settings_come_from_the_file_too() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        writeln!(
            file,
            "tier-buffer = \"8MiB\"\ntier-buffer-messages = 5\ntier-buffer-partition-bytes = 65536\ntier-horizon = \"10s\""
        )
        .unwrap();
        let mut a = run_args("orders");
        a.topology.connect.config = Some(file.path().to_path_buf());
        let b = Config::for_run(&a).unwrap().tier_buffer;
        assert_eq!(
            (
                b.total_bytes,
                b.partition_messages,
                b.partition_bytes,
                b.horizon
            ),
            (8 << 20, 5, 65536, Duration::from_secs(10))
        );
        // A flag beats the file.
        a.tier_buffer_messages = Some("7".into());
        assert_eq!(
            Config::for_run(&a).unwrap().tier_buffer.partition_messages,
            7
        );
        let mut bad = tempfile::NamedTempFile::new().unwrap();
        writeln!(bad, "tier-buffer-messages = 0").unwrap();
        let mut a = run_args("orders");
        a.topology.connect.config = Some(bad.path().to_path_buf());
        assert_eq!(err(&a).field, "--tier-buffer-messages");
    }

    #[test]
    fn membership_settings_and_group_conflicts() {
        let c = Config::for_run(&run_args("orders")).unwrap();
        assert_eq!(c.membership, Membership::default());
        let mut a = run_args("orders");
        a.instance_id = Some("orders-7f9c".into());
        a.revoke_timeout = Some("0s".into());
        let m = Config::for_run(&a).unwrap().membership;
        assert_eq!(m.instance_id.as_deref(), Some("orders-7f9c"));
        assert_eq!(m.revoke_timeout, Duration::ZERO);
        a.revoke_timeout = Some("2m".into());
        assert_eq!(err(&a).field, "--revoke-timeout");
        a.revoke_timeout = None;
        a.instance_id = Some("pod 1".into());
        assert_eq!(err(&a).field, "--instance-id");
        let mut x = run_args("orders");
        x.topology.connect.kafka = vec![
            "group.protocol=consumer".into(),
            "session.timeout.ms=6000".into(),
        ];
        let e = err(&x);
        assert_eq!(e.field, "-X");
        assert!(e.problem.contains("session.timeout.ms"), "{e}");
        x.topology.connect.kafka = vec!["group.instance.id=a".into()];
        assert!(err(&x).problem.contains("--instance-id"));
    }

    #[test]
    fn ordering_is_none_by_default_key_names_the_waiting_log_and_refuses_exactly_once() {
        let c = Config::for_run(&run_args("orders")).unwrap();
        assert_eq!(c.cluster.topology.waiting, None);
        assert!(c.to_string().contains("ordering         = none"), "{c}");
        let mut a = run_args("orders");
        a.topology.ordering.ordering = Some("key".into());
        let c = Config::for_run(&a).unwrap();
        assert_eq!(
            c.cluster.topology.waiting.as_deref(),
            Some("orders.waiting")
        );
        assert!(c.cluster.topology.topics().contains(&"orders.waiting"));
        a.topology.ordering.ordering = Some("keys".into());
        let e = err(&a);
        assert_eq!(e.field, "--ordering");
        assert!(e.problem.contains("none (the default) or key"), "{e}");
        a.topology.ordering.ordering = Some("key".into());
        a.exactly_once = true;
        a.instance_id = Some("pod-1".into());
        let e = err(&a);
        assert_eq!(e.field, "--ordering");
        assert!(e.problem.contains("--exactly-once"), "{e}");
    }

    #[test]
    fn exactly_once_is_off_by_default_and_needs_an_instance_id() {
        assert!(
            !Config::for_run(&run_args("orders"))
                .unwrap()
                .membership
                .exactly_once
        );
        let mut a = run_args("orders");
        a.exactly_once = true;
        let e = err(&a);
        assert_eq!(e.field, "--exactly-once");
        assert!(e.problem.contains("--instance-id"), "{e}");
        a.instance_id = Some("pod-1".into());
        let c = Config::for_run(&a).unwrap();
        assert!(c.membership.exactly_once);
        assert!(c.to_string().contains("exactly-once     = on"), "{c}");
        let mut x = run_args("orders");
        x.topology.connect.kafka = vec!["transactional.id=t".into()];
        assert!(err(&x).problem.contains("--exactly-once"));
    }

    #[test]
    fn bad_settings_name_the_field() {
        let mut a = run_args("orders");
        a.topology.tiers.tiers = Some("4m,2m".into());
        let e = err(&a);
        assert_eq!(e.field, "--tiers");
        assert!(e.problem.contains("strictly increasing"), "{e}");

        a.topology.tiers.tiers = Some("".into());
        assert_eq!(err(&a).field, "--tiers");
        a.topology.tiers.tiers = Some("2x".into());
        assert_eq!(err(&a).field, "--tiers");
        a.topology.tiers.tiers = None;

        a.topology.names.dlq = Some("orders".into());
        assert_eq!(err(&a).field, "--dlq");
        a.topology.names.dlq = None;

        let mut no_topic = run_args("x");
        no_topic.topology.names.topic = None;
        assert_eq!(err(&no_topic).field, "--topic");

        let mut no_handler = run_args("orders");
        no_handler.handler = None;
        assert_eq!(err(&no_handler).field, "--handler");

        let mut http = run_args("orders");
        http.handler = Some("http".into());
        assert_eq!(err(&http).field, "--url");

        a.handler_timeout = Some("0s".into());
        assert_eq!(err(&a).field, "--handler-timeout");
        a.handler_timeout = None;

        a.topology.connect.kafka = vec!["enable.auto.commit=true".into()];
        assert_eq!(err(&a).field, "-X");
        a.topology.connect.kafka = vec!["novalue".into()];
        assert_eq!(err(&a).field, "-X");
        a.topology.connect.kafka = vec![];

        a.topology.names.topic = Some("bad topic".into());
        assert_eq!(err(&a).field, "--topic");
    }

    #[test]
    fn flags_beat_the_file_and_the_file_beats_defaults() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        writeln!(
            f,
            "topic = \"from-file\"\ngroup = \"g-file\"\ntiers = [\"1s\", \"3s\"]\nmax-retries = 7\n\
             handler = \"command\"\ncommand = \"cat\"\n[kafka]\n\"sasl.password\" = \"hunter2\"\n\"fetch.wait.max.ms\" = 50\n"
        )
        .unwrap();
        let mut a = RunArgs::default();
        a.topology.connect.config = Some(f.path().to_path_buf());
        a.topology.group = Some("g-flag".into());
        let c = Config::for_run(&a).unwrap();
        assert_eq!(c.cluster.topology.main, "from-file");
        assert_eq!(c.cluster.group, "g-flag");
        assert_eq!(c.cluster.topology.tiers[1].topic, "from-file.retry-3s");
        assert_eq!(c.cluster.topology.max_retries, 7);
        assert!(c
            .cluster
            .kafka
            .0
            .contains(&("fetch.wait.max.ms".into(), "50".into())));
        let shown = format!("{c} {c:?}");
        assert!(!shown.contains("hunter2"), "secret leaked: {shown}");
        assert!(shown.contains("sasl.password"));
    }

    #[test]
    fn max_delay_defaults_to_four_last_tiers_and_must_cover_the_last_tier_with_jitter() {
        let c = Config::for_run(&run_args("orders")).unwrap();
        assert_eq!(
            c.cluster.topology.max_delay,
            Duration::from_secs(4 * 32 * 60)
        );
        let mut a = run_args("orders");
        a.topology.tiers.tiers = Some("1s".into());
        let c = Config::for_run(&a).unwrap();
        assert_eq!(c.cluster.topology.max_delay, Duration::from_secs(3600));
        a.topology.retry.max_delay = Some("90s".into());
        assert_eq!(
            Config::for_run(&a).unwrap().cluster.topology.max_delay,
            Duration::from_secs(90)
        );
        a.topology.tiers.tiers = Some("1m,2m".into());
        a.topology.retry.jitter = Some("0.5".into());
        let e = err(&a);
        assert_eq!(e.field, "--max-delay");
        assert!(e.problem.contains("3m"), "{e}");
        a.topology.retry.max_delay = Some("0s".into());
        assert_eq!(err(&a).field, "--max-delay");
    }

    #[test]
    fn unknown_file_keys_are_rejected() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        writeln!(f, "topic = \"t\"\nteirs = \"1s\"").unwrap();
        let mut a = run_args("t");
        a.topology.connect.config = Some(f.path().to_path_buf());
        let e = err(&a);
        assert_eq!(e.field, "--config");
        assert!(e.problem.contains("teirs"), "{e}");
    }
}

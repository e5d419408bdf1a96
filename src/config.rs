//! Flags + env vars + `--config` file + defaults → one validated [`Config`] (pure).
//!
//! Precedence: flag > env var (both handled by clap) > file > default. Every error names the
//! setting and says what a valid value looks like; `main` turns them into exit code 2.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::breaker::BreakerConfig;
use crate::cli::{
    DlqFilterArgs, DlqListArgs, DlqShowArgs, DlqStatsArgs, ReplayArgs, RunArgs, TopicsArgs,
    TopologyArgs,
};
use crate::delay::BufferBounds;
use crate::dlq::Filter;
use crate::duration;
use crate::handler::command::CommandHandler;
use crate::topology::{DlqReason, Tier, Topology};

pub const DEFAULT_BROKERS: &str = "127.0.0.1:9092";
pub const DEFAULT_TIERS: &str = "2m,4m,8m,16m,32m";
pub const DEFAULT_METRICS_ADDR: &str = "0.0.0.0:9464";

/// A configuration problem: which setting, and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct ConfigError {
    pub field: String,
    pub problem: String,
}

fn bad(field: &str, problem: impl Into<String>) -> ConfigError {
    ConfigError {
        field: field.to_string(),
        problem: problem.into(),
    }
}

/// librdkafka properties rebound sets itself; overriding them would break its guarantees.
const RESERVED_KAFKA: [(&str, &str); 6] = [
    ("bootstrap.servers", "use --brokers"),
    ("group.id", "use --group"),
    (
        "enable.auto.commit",
        "rebound commits only finished work itself",
    ),
    (
        "enable.auto.offset.store",
        "rebound stores only finished offsets itself",
    ),
    ("isolation.level", "rebound reads committed messages only"),
    ("group.instance.id", "use --instance-id"),
];

/// The `--config` file. Keys are the long flag names.
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
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum SizeValue {
    Text(String),
    Bytes(u64),
}

/// `tiers = "2m,4m"` or `tiers = ["2m", "4m"]`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum StringOrList {
    One(String),
    Many(Vec<String>),
}

impl FileConfig {
    pub fn load(path: &Path) -> Result<FileConfig, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| bad("--config", format!("cannot read {}: {e}", path.display())))?;
        toml::from_str(&text).map_err(|e| bad("--config", format!("{}: {e}", path.display())))
    }
}

/// Which built-in handler the binary runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandlerSpec {
    Http {
        url: String,
        forward_headers: Vec<String>,
    },
    Command {
        command_line: String,
    },
}

/// librdkafka properties, with secrets hidden from `Debug` and `Display`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct KafkaProps(pub Vec<(String, String)>);

impl KafkaProps {
    /// Property names whose values never appear in logs or output.
    pub fn is_secret(key: &str) -> bool {
        let k = key.to_ascii_lowercase();
        [
            "password",
            "secret",
            "sasl.oauthbearer.config",
            "ssl.key.pem",
            "ssl_key",
        ]
        .iter()
        .any(|s| k.contains(s))
    }

    pub fn redacted(&self) -> Vec<(String, String)> {
        self.0
            .iter()
            .map(|(k, v)| {
                let shown = if Self::is_secret(k) {
                    "[redacted]".to_string()
                } else {
                    v.clone()
                };
                (k.clone(), shown)
            })
            .collect()
    }
}

impl fmt::Debug for KafkaProps {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.redacted()).finish()
    }
}

/// Everything needed to connect to a topology.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub brokers: String,
    pub group: String,
    pub kafka: KafkaProps,
    pub topology: Topology,
}

impl ClusterConfig {
    /// Resolves the topology flags (and the `--config` file they name) as every command does.
    pub fn resolve(args: &TopologyArgs) -> Result<ClusterConfig, ConfigError> {
        let file = load_file(args)?;
        resolve_cluster(args, &file)
    }
}

/// A validated configuration for `rebound run`.
#[derive(Debug, Clone)]
pub struct Config {
    pub cluster: ClusterConfig,
    /// `None` when a library user supplies the handler.
    pub handler: Option<HandlerSpec>,
    pub handler_timeout: Duration,
    pub metrics_addr: Option<SocketAddr>,
    pub max_in_flight: usize,
    pub commit_interval: Duration,
    pub shutdown_timeout: Duration,
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
}

/// The default `--revoke-timeout`: short, and well inside `max.poll.interval.ms` (5 min).
pub const DEFAULT_REVOKE_TIMEOUT: Duration = Duration::from_secs(2);

impl Default for Membership {
    fn default() -> Self {
        Membership {
            instance_id: None,
            revoke_timeout: DEFAULT_REVOKE_TIMEOUT,
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
        Ok(Membership {
            instance_id,
            revoke_timeout,
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
            handler_timeout: Duration::from_secs(10),
            metrics_addr: None,
            max_in_flight: 32,
            commit_interval: Duration::from_secs(1),
            shutdown_timeout: Duration::from_secs(30),
            breaker: BreakerConfig::default(),
            tier_buffer: BufferBounds::with_horizon(shortest_tier(&topology)),
            membership: Membership::default(),
        }
    }

    /// Resolves `rebound run`'s settings. A handler is required.
    pub fn for_run(args: &RunArgs) -> Result<Config, ConfigError> {
        let file = load_file(&args.topology)?;
        let cluster = resolve_cluster(&args.topology, &file)?;
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
                crate::handler::http::HttpHandler::new(&url, Duration::from_secs(1)).map_err(|e| bad("--url", e))?;
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
                CommandHandler::parse(&line).map_err(|e| bad("--command", e))?;
                HandlerSpec::Command { command_line: line }
            }
            Some(other) => return Err(bad("--handler", format!("unknown handler {other:?}; use `http` or `command`"))),
        };
        let handler_timeout = positive_duration(
            "--handler-timeout",
            args.handler_timeout
                .as_deref()
                .or(file.handler_timeout.as_deref()),
            "10s",
        )?;
        let metrics_addr = match args
            .metrics_addr
            .as_deref()
            .or(file.metrics_addr.as_deref())
            .unwrap_or(DEFAULT_METRICS_ADDR)
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
            None => file.max_in_flight.unwrap_or(32),
        };
        if !(1..=10_000).contains(&max_in_flight) {
            return Err(bad("--max-in-flight", "must be from 1 to 10000"));
        }
        let breaker = resolve_breaker(args, &file)?;
        let tier_buffer = resolve_tier_buffer(args, &file, &cluster.topology)?;
        let membership = Membership::resolve(args, &file, &cluster.kafka)?;
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
                "1s",
            )?,
            shutdown_timeout: positive_duration(
                "--shutdown-timeout",
                args.shutdown_timeout
                    .as_deref()
                    .or(file.shutdown_timeout.as_deref()),
                "30s",
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
        horizon,
    })
}

/// A size in bytes: `1048576`, `512KiB`, `32MiB`, `1GiB` (powers of 1024), `500KB`, `2MB`,
/// `1GB` (powers of 1000), `B` for bytes.
pub fn parse_size(field: &str, s: &str) -> Result<u64, ConfigError> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let unit_scale: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        _ => {
            return Err(bad(
                field,
                format!("{s:?} is not a size such as 32MiB, 512KiB or 1048576 (bytes)"),
            ))
        }
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(unit_scale))
        .ok_or_else(|| {
            bad(
                field,
                format!("{s:?} is not a size such as 32MiB, 512KiB or 1048576 (bytes)"),
            )
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
        &duration::format(d.window_time),
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
        &duration::format(d.cooldown),
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

impl crate::demo::DemoConfig {
    pub fn resolve(args: &crate::cli::DemoArgs) -> Result<crate::demo::DemoConfig, ConfigError> {
        let messages = match args.messages.as_deref() {
            Some(s) => parse_num::<usize>("--messages", s)?,
            None => 300,
        };
        if !(1..=1_000_000).contains(&messages) {
            return Err(bad("--messages", "must be from 1 to 1000000"));
        }
        let items: Vec<String> = args
            .tiers
            .as_deref()
            .unwrap_or("2s,4s,8s")
            .split(',')
            .map(str::to_string)
            .collect();
        let tiers = parse_tiers("--tiers", &items)?;
        let transient_rate = match args.failure_rate.as_deref() {
            Some(s) => s.trim().parse::<f64>().map_err(|_| {
                bad(
                    "--failure-rate",
                    format!("{s:?} is not a number such as 0.3"),
                )
            })?,
            None => 0.3,
        };
        if !(0.0..1.0).contains(&transient_rate) {
            return Err(bad("--failure-rate", "must be from 0 to below 1"));
        }
        let metrics_addr =
            match args.metrics_addr.as_deref().unwrap_or("127.0.0.1:9464") {
                "off" | "" => None,
                a => Some(a.parse().map_err(|_| {
                    bad("--metrics-addr", format!("{a:?} is not IP:PORT, or `off`"))
                })?),
            };
        // Against Tansu the demo adds one record per produce batch (`demo::run` probes the
        // broker); -X overrides that.
        let mut kafka: Vec<(String, String)> = Vec::new();
        for item in &args.kafka {
            let (k, v) = item
                .split_once('=')
                .ok_or_else(|| bad("-X", format!("{item:?} is not KEY=VALUE")))?;
            kafka.retain(|(key, _)| key != k.trim());
            kafka.push((k.trim().to_string(), v.to_string()));
        }
        Ok(crate::demo::DemoConfig {
            brokers: args
                .brokers
                .clone()
                .unwrap_or_else(|| DEFAULT_BROKERS.to_string()),
            messages,
            tiers,
            transient_rate,
            metrics_addr,
            keep: args.keep,
            kafka: KafkaProps(kafka),
        })
    }
}

/// Settings of `rebound topics plan|apply`.
#[derive(Debug, Clone)]
pub struct TopicsConfig {
    pub cluster: ClusterConfig,
    pub partitions: Option<i32>,
    pub replication_factor: Option<i32>,
    pub create_main: bool,
    /// `apply` accepts a topology with hazards instead of refusing it.
    pub force: bool,
}

impl TopicsConfig {
    pub fn resolve(args: &TopicsArgs) -> Result<TopicsConfig, ConfigError> {
        let file = load_file(&args.topology)?;
        let cluster = resolve_cluster(&args.topology, &file)?;
        let partitions = match args.partitions.as_deref() {
            Some(s) => Some(parse_num::<i32>("--partitions", s)?),
            None => file.partitions,
        };
        if partitions.is_some_and(|p| p < 1) {
            return Err(bad("--partitions", "must be at least 1"));
        }
        let replication_factor = match args.replication_factor.as_deref() {
            Some(s) => Some(parse_num::<i32>("--replication-factor", s)?),
            None => file.replication_factor,
        };
        if replication_factor.is_some_and(|r| r < 1) {
            return Err(bad("--replication-factor", "must be at least 1"));
        }
        Ok(TopicsConfig {
            cluster,
            partitions,
            replication_factor,
            create_main: args.create_main,
            force: args.force,
        })
    }
}

/// Settings of `rebound dlq stats|list`.
#[derive(Debug, Clone)]
pub struct DlqReadConfig {
    pub cluster: ClusterConfig,
    pub filter: Filter,
    /// `list` prints at most this many messages.
    pub limit: Option<u64>,
    pub json: bool,
}

impl DlqReadConfig {
    pub fn for_stats(args: &DlqStatsArgs) -> Result<DlqReadConfig, ConfigError> {
        let file = load_file(&args.topology)?;
        Ok(DlqReadConfig {
            cluster: resolve_cluster(&args.topology, &file)?,
            filter: resolve_filter(&args.filter)?,
            limit: None,
            json: args.json,
        })
    }

    pub fn for_list(args: &DlqListArgs) -> Result<DlqReadConfig, ConfigError> {
        let file = load_file(&args.topology)?;
        Ok(DlqReadConfig {
            cluster: resolve_cluster(&args.topology, &file)?,
            filter: resolve_filter(&args.filter)?,
            limit: parse_limit(args.limit.as_deref())?,
            json: args.json,
        })
    }
}

/// Settings of `rebound dlq show`.
#[derive(Debug, Clone)]
pub struct DlqShowConfig {
    pub cluster: ClusterConfig,
    /// Needed when the DLQ has more than one partition.
    pub partition: Option<i32>,
    pub offset: i64,
}

impl DlqShowConfig {
    pub fn resolve(args: &DlqShowArgs) -> Result<DlqShowConfig, ConfigError> {
        let file = load_file(&args.topology)?;
        let cluster = resolve_cluster(&args.topology, &file)?;
        let offset = match args.offset.as_deref() {
            Some(s) => non_negative::<i64>("--offset", s)?,
            None => {
                return Err(bad(
                    "--offset",
                    "missing: which message to show, e.g. --offset 42 (see `rebound dlq list`)",
                ))
            }
        };
        let partition = args
            .partition
            .as_deref()
            .map(|s| non_negative::<i32>("--partition", s))
            .transpose()?;
        Ok(DlqShowConfig {
            cluster,
            partition,
            offset,
        })
    }
}

/// Settings of `rebound replay-dlq`. `cluster.group` is the replay's own consumer group.
#[derive(Debug, Clone)]
pub struct ReplayConfig {
    pub cluster: ClusterConfig,
    pub filter: Filter,
    /// Destination instead of `rebound-original-topic`.
    pub to: Option<String>,
    /// Replay at most this many messages.
    pub limit: Option<u64>,
    pub dry_run: bool,
    /// Messages per second.
    pub rate: Option<f64>,
    /// Messages replayed this often already are skipped unless `force`.
    pub max_replays: u32,
    pub force: bool,
    /// A progress line on stderr every this many messages (when stderr is not a terminal).
    pub progress_every: u64,
}

pub const DEFAULT_MAX_REPLAYS: u32 = 3;

impl ReplayConfig {
    /// Every message, no limits, for library users and tests; the group is `cluster.group`.
    pub fn new(cluster: ClusterConfig) -> ReplayConfig {
        ReplayConfig {
            cluster,
            filter: Filter::default(),
            to: None,
            limit: None,
            dry_run: false,
            rate: None,
            max_replays: DEFAULT_MAX_REPLAYS,
            force: false,
            progress_every: 1000,
        }
    }

    pub fn resolve(args: &ReplayArgs) -> Result<ReplayConfig, ConfigError> {
        let file = load_file(&args.topology)?;
        // The service's group names the replay group; `--group` names the replay group itself.
        let mut service = args.topology.clone();
        service.group = args.service_group.clone();
        let mut cluster = resolve_cluster(&service, &file)?;
        cluster.group = match args.topology.group.as_deref() {
            Some(g) if g.trim().is_empty() => return Err(bad("--group", "is empty")),
            Some(g) => g.to_string(),
            None => format!("{}.replay", cluster.group),
        };
        let topology = &cluster.topology;
        if let Some(to) = &args.to {
            check_topic_name("--to", to)?;
            if *to == topology.dlq {
                return Err(bad(
                    "--to",
                    format!("{to} is the DLQ itself; replaying into it would only loop"),
                ));
            }
            if topology.tiers.iter().any(|t| t.topic == *to) {
                return Err(bad(
                    "--to",
                    format!("{to} is a delay tier; replay to the main topic (the default) instead"),
                ));
            }
        }
        let rate = match args.rate.as_deref() {
            None => None,
            Some(s) => match s.trim().parse::<f64>() {
                Ok(r) if r.is_finite() && r > 0.0 => Some(r),
                _ => {
                    return Err(bad(
                        "--rate",
                        format!("{s:?} is not a positive number of messages per second"),
                    ))
                }
            },
        };
        let max_replays = match args.max_replays.as_deref() {
            Some(s) => parse_num::<u32>("--max-replays", s)?,
            None => DEFAULT_MAX_REPLAYS,
        };
        Ok(ReplayConfig {
            filter: resolve_filter(&args.filter)?,
            to: args.to.clone(),
            limit: parse_limit(args.limit.as_deref())?,
            dry_run: args.dry_run,
            rate,
            max_replays,
            force: args.force,
            progress_every: 1000,
            cluster,
        })
    }
}

fn non_negative<T: std::str::FromStr + PartialOrd + Default>(
    field: &str,
    s: &str,
) -> Result<T, ConfigError> {
    let n = parse_num::<T>(field, s)?;
    if n < T::default() {
        return Err(bad(field, "must not be negative"));
    }
    Ok(n)
}

fn parse_limit(s: Option<&str>) -> Result<Option<u64>, ConfigError> {
    match s {
        None => Ok(None),
        Some(s) => match parse_num::<u64>("--limit", s)? {
            0 => Err(bad("--limit", "must be at least 1")),
            n => Ok(Some(n)),
        },
    }
}

/// The DLQ filters of `dlq stats|list` and `replay-dlq`.
pub fn resolve_filter(a: &DlqFilterArgs) -> Result<Filter, ConfigError> {
    let list = |s: &Option<String>| -> Vec<String> {
        s.as_deref()
            .map(|s| {
                s.split(',')
                    .map(str::trim)
                    .filter(|x| !x.is_empty())
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    };
    let reasons = list(&a.reason);
    if let Some(r) = reasons
        .iter()
        .find(|r| !DlqReason::ALL.iter().any(|k| k.as_str() == r.as_str()))
    {
        return Err(bad(
            "--reason",
            format!("unknown reason {r:?}; use permanent, exhausted, expired or invalid"),
        ));
    }
    let time = |field: &str, v: &Option<String>| {
        v.as_deref()
            .map(|s| {
                crate::headers::parse_time(crate::headers::FIRST_FAILED_AT, Some(s.as_bytes()))
                    .map_err(|_| {
                        bad(
                            field,
                            format!("{s:?} is not an RFC 3339 time such as 2026-11-24T14:00:00Z"),
                        )
                    })
            })
            .transpose()
    };
    let since = time("--since", &a.since)?;
    let until = time("--until", &a.until)?;
    if let (Some(s), Some(u)) = (since, until) {
        if u <= s {
            return Err(bad("--until", "must be later than --since"));
        }
    }
    let offset = |field: &str, v: &Option<String>| {
        v.as_deref()
            .map(|s| non_negative::<i64>(field, s))
            .transpose()
    };
    let from_offset = offset("--from-offset", &a.from_offset)?;
    let to_offset = offset("--to-offset", &a.to_offset)?;
    if let (Some(f), Some(t)) = (from_offset, to_offset) {
        if t < f {
            return Err(bad("--to-offset", "must not be below --from-offset"));
        }
    }
    Ok(Filter {
        reasons,
        error_classes: list(&a.error_class),
        key: a.key.as_ref().map(|k| k.as_bytes().to_vec()),
        since,
        until,
        partition: a
            .partition
            .as_deref()
            .map(|s| non_negative::<i32>("--partition", s))
            .transpose()?,
        from_offset,
        to_offset,
        ..Filter::default()
    })
}

fn load_file(args: &TopologyArgs) -> Result<FileConfig, ConfigError> {
    match &args.config {
        Some(path) => FileConfig::load(path),
        None => Ok(FileConfig::default()),
    }
}

fn parse_num<T: std::str::FromStr>(field: &str, s: &str) -> Result<T, ConfigError> {
    s.trim()
        .parse()
        .map_err(|_| bad(field, format!("{s:?} is not a whole number")))
}

fn positive_duration(
    field: &str,
    value: Option<&str>,
    default: &str,
) -> Result<Duration, ConfigError> {
    let d = duration::parse(value.unwrap_or(default)).map_err(|e| bad(field, e.to_string()))?;
    if d.is_zero() {
        return Err(bad(field, "must be longer than zero"));
    }
    Ok(d)
}

/// Kafka's topic name rules: 1–249 of `[a-zA-Z0-9._-]`.
pub fn check_topic_name(field: &str, name: &str) -> Result<(), ConfigError> {
    if name.is_empty() || name.len() > 249 {
        return Err(bad(
            field,
            format!("{name:?} must be 1 to 249 characters long"),
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(bad(
            field,
            format!(
                "{name:?} contains {c:?}; topic names use only letters, digits, '.', '_' and '-'"
            ),
        ));
    }
    if name == "." || name == ".." {
        return Err(bad(field, "a topic cannot be named '.' or '..'"));
    }
    Ok(())
}

/// Parses the tier list: strictly increasing, positive durations.
pub fn parse_tiers(field: &str, items: &[String]) -> Result<Vec<Duration>, ConfigError> {
    let mut delays: Vec<Duration> = Vec::new();
    for item in items.iter().map(|s| s.trim()).filter(|s| !s.is_empty()) {
        let d = duration::parse(item).map_err(|e| bad(field, e.to_string()))?;
        if d.is_zero() {
            return Err(bad(
                field,
                format!("tier {item:?} must be longer than zero"),
            ));
        }
        if let Some(prev) = delays.last() {
            if d <= *prev {
                return Err(bad(
                    field,
                    format!(
                        "tiers must be strictly increasing, but {item} follows {}",
                        duration::format(*prev)
                    ),
                ));
            }
        }
        delays.push(d);
    }
    if delays.is_empty() {
        return Err(bad(
            field,
            format!("at least one tier is needed, e.g. {DEFAULT_TIERS}"),
        ));
    }
    Ok(delays)
}

fn resolve_cluster(args: &TopologyArgs, file: &FileConfig) -> Result<ClusterConfig, ConfigError> {
    let topic = args.topic.clone().or(file.topic.clone()).ok_or_else(|| {
        bad(
            "--topic",
            "missing: name the main topic, e.g. --topic orders",
        )
    })?;
    check_topic_name("--topic", &topic)?;
    let brokers = args
        .brokers
        .clone()
        .or(file.brokers.clone())
        .unwrap_or_else(|| DEFAULT_BROKERS.to_string());
    if brokers.split(',').all(|b| b.trim().is_empty()) {
        return Err(bad("--brokers", "is empty; give HOST:PORT[,HOST:PORT...]"));
    }
    let group = args
        .group
        .clone()
        .or(file.group.clone())
        .unwrap_or_else(|| format!("rebound.{topic}"));
    if group.trim().is_empty() {
        return Err(bad("--group", "is empty"));
    }
    let tier_items: Vec<String> = match (&args.tiers, &file.tiers) {
        (Some(s), _) | (None, Some(StringOrList::One(s))) => {
            s.split(',').map(str::to_string).collect()
        }
        (None, Some(StringOrList::Many(v))) => v.clone(),
        (None, None) => DEFAULT_TIERS.split(',').map(str::to_string).collect(),
    };
    let delays = parse_tiers("--tiers", &tier_items)?;
    let mut topology = Topology::new(&topic, &delays);
    for tier in &topology.tiers {
        check_topic_name("--tiers", &tier.topic)?;
    }
    if let Some(dlq) = args.dlq.clone().or(file.dlq.clone()) {
        topology.dlq = dlq;
    }
    check_topic_name("--dlq", &topology.dlq)?;
    if topology.dlq == topology.main
        || topology
            .tiers
            .iter()
            .any(|t: &Tier| t.topic == topology.dlq)
    {
        return Err(bad(
            "--dlq",
            format!(
                "{:?} is already the main or a tier topic; the DLQ needs its own topic",
                topology.dlq
            ),
        ));
    }
    topology.max_retries = match args.max_retries.as_deref() {
        Some(s) => parse_num::<u32>("--max-retries", s)?,
        None => file.max_retries.unwrap_or(delays.len() as u32),
    };
    if topology.max_retries > 1000 {
        return Err(bad("--max-retries", "must be at most 1000"));
    }
    topology.max_age = match args.max_age.as_deref().or(file.max_age.as_deref()) {
        None | Some("off") => None,
        Some(s) => Some(positive_duration("--max-age", Some(s), "")?),
    };
    topology.jitter = match args.jitter.as_deref() {
        Some(s) => s
            .trim()
            .parse::<f64>()
            .map_err(|_| bad("--jitter", format!("{s:?} is not a number such as 0.1")))?,
        None => file.jitter.unwrap_or(0.0),
    };
    if !(0.0..=0.5).contains(&topology.jitter) {
        return Err(bad(
            "--jitter",
            "must be from 0 to 0.5 (a fraction of the tier delay)",
        ));
    }
    if let Some(s) = args.max_delay.as_deref().or(file.max_delay.as_deref()) {
        topology.max_delay = positive_duration("--max-delay", Some(s), "")?;
    }
    // rebound's own copies must pass the check on read: the last tier, stretched by jitter.
    let longest = delays
        .last()
        .copied()
        .unwrap_or_default()
        .mul_f64(1.0 + topology.jitter);
    if topology.max_delay < longest {
        return Err(bad(
            "--max-delay",
            format!(
                "{} is shorter than the last tier with its jitter ({}); rebound would dead-letter its own retries. Raise it or leave it out (default: {} x the last tier, at least {})",
                duration::format(topology.max_delay),
                duration::format(longest),
                crate::topology::MAX_DELAY_FACTOR,
                duration::format(crate::topology::MAX_DELAY_FLOOR),
            ),
        ));
    }
    let mut kafka = Vec::new();
    for (k, v) in &file.kafka {
        let value = match v {
            toml::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        kafka.push((k.clone(), value));
    }
    for item in &args.kafka {
        let (k, v) = item.split_once('=').ok_or_else(|| {
            bad(
                "-X",
                format!(
                    "{:?} is not KEY=VALUE",
                    item.split('=').next().unwrap_or("")
                ),
            )
        })?;
        kafka.retain(|(key, _)| key != k.trim());
        kafka.push((k.trim().to_string(), v.to_string()));
    }
    for (k, _) in &kafka {
        if let Some((_, hint)) = RESERVED_KAFKA.iter().find(|(name, _)| name == k) {
            return Err(bad("-X", format!("{k} is set by rebound: {hint}")));
        }
    }
    Ok(ClusterConfig {
        brokers,
        group,
        kafka: KafkaProps(kafka),
        topology,
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
    use std::io::Write;

    fn run_args(topic: &str) -> RunArgs {
        RunArgs {
            topology: TopologyArgs {
                topic: Some(topic.into()),
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
        assert_eq!(c.cluster.brokers, DEFAULT_BROKERS);
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
        a.topology.config = Some(file.path().to_path_buf());
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
        a.topology.config = Some(bad.path().to_path_buf());
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
        x.topology.kafka = vec![
            "group.protocol=consumer".into(),
            "session.timeout.ms=6000".into(),
        ];
        let e = err(&x);
        assert_eq!(e.field, "-X");
        assert!(e.problem.contains("session.timeout.ms"), "{e}");
        x.topology.kafka = vec!["group.instance.id=a".into()];
        assert!(err(&x).problem.contains("--instance-id"));
    }

    #[test]
    fn bad_settings_name_the_field() {
        let mut a = run_args("orders");
        a.topology.tiers = Some("4m,2m".into());
        let e = err(&a);
        assert_eq!(e.field, "--tiers");
        assert!(e.problem.contains("strictly increasing"), "{e}");

        a.topology.tiers = Some("".into());
        assert_eq!(err(&a).field, "--tiers");
        a.topology.tiers = Some("2x".into());
        assert_eq!(err(&a).field, "--tiers");
        a.topology.tiers = None;

        a.topology.dlq = Some("orders".into());
        assert_eq!(err(&a).field, "--dlq");
        a.topology.dlq = None;

        let mut no_topic = run_args("x");
        no_topic.topology.topic = None;
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

        a.topology.kafka = vec!["enable.auto.commit=true".into()];
        assert_eq!(err(&a).field, "-X");
        a.topology.kafka = vec!["novalue".into()];
        assert_eq!(err(&a).field, "-X");
        a.topology.kafka = vec![];

        a.topology.topic = Some("bad topic".into());
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
        a.topology.config = Some(f.path().to_path_buf());
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

    fn replay_args(topic: &str) -> ReplayArgs {
        ReplayArgs {
            topology: TopologyArgs {
                topic: Some(topic.into()),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn the_replay_group_is_its_own() {
        let c = ReplayConfig::resolve(&replay_args("orders")).unwrap();
        assert_eq!(c.cluster.group, "rebound.orders.replay");
        assert_eq!(c.cluster.topology.dlq, "orders.dlq");
        assert_eq!(c.max_replays, 3);
        let mut a = replay_args("orders");
        a.service_group = Some("svc".into());
        assert_eq!(
            ReplayConfig::resolve(&a).unwrap().cluster.group,
            "svc.replay"
        );
        a.topology.group = Some("mine".into());
        assert_eq!(ReplayConfig::resolve(&a).unwrap().cluster.group, "mine");
    }

    #[test]
    fn replay_refuses_the_dlq_and_bad_numbers() {
        let field = |edit: fn(&mut ReplayArgs)| {
            let mut a = replay_args("orders");
            edit(&mut a);
            ReplayConfig::resolve(&a).unwrap_err().field
        };
        assert_eq!(field(|a| a.to = Some("orders.dlq".into())), "--to");
        assert_eq!(field(|a| a.to = Some("orders.retry-2m".into())), "--to");
        assert_eq!(field(|a| a.rate = Some("0".into())), "--rate");
        assert_eq!(field(|a| a.rate = Some("fast".into())), "--rate");
        assert_eq!(field(|a| a.limit = Some("0".into())), "--limit");
        assert_eq!(
            field(|a| a.max_replays = Some("-1".into())),
            "--max-replays"
        );
        assert_eq!(
            field(|a| a.filter.reason = Some("exhausted,tired".into())),
            "--reason"
        );
        assert_eq!(
            field(|a| a.filter.since = Some("yesterday".into())),
            "--since"
        );
        assert_eq!(
            field(|a| a.filter.partition = Some("-1".into())),
            "--partition"
        );
        assert_eq!(
            field(|a| {
                a.filter.from_offset = Some("5".into());
                a.filter.to_offset = Some("4".into());
            }),
            "--to-offset"
        );
        assert_eq!(
            field(|a| {
                a.filter.since = Some("2026-11-24T14:00:00Z".into());
                a.filter.until = Some("2026-11-24T13:00:00Z".into());
            }),
            "--until"
        );
    }

    #[test]
    fn filters_parse_lists_times_and_offsets() {
        let f = resolve_filter(&DlqFilterArgs {
            reason: Some("exhausted, expired".into()),
            error_class: Some("http_503,timeout".into()),
            key: Some("k-1".into()),
            since: Some("2026-11-24T14:00:00+01:00".into()),
            partition: Some("2".into()),
            from_offset: Some("10".into()),
            to_offset: Some("20".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(f.reasons, vec!["exhausted", "expired"]);
        assert_eq!(f.error_classes, vec!["http_503", "timeout"]);
        assert_eq!(f.key.as_deref(), Some(&b"k-1"[..]));
        assert_eq!(
            f.since.map(crate::headers::format_time).as_deref(),
            Some("2026-11-24T13:00:00.000Z")
        );
        assert_eq!(
            (f.partition, f.from_offset, f.to_offset),
            (Some(2), Some(10), Some(20))
        );
        assert_eq!(
            resolve_filter(&DlqFilterArgs::default()).unwrap(),
            Filter::default()
        );
    }

    #[test]
    fn show_needs_an_offset() {
        let mut a = DlqShowArgs {
            topology: TopologyArgs {
                topic: Some("orders".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        assert_eq!(DlqShowConfig::resolve(&a).unwrap_err().field, "--offset");
        a.offset = Some("7".into());
        let c = DlqShowConfig::resolve(&a).unwrap();
        assert_eq!((c.offset, c.partition), (7, None));
    }

    #[test]
    fn max_delay_defaults_to_four_last_tiers_and_must_cover_the_last_tier_with_jitter() {
        let c = Config::for_run(&run_args("orders")).unwrap();
        assert_eq!(
            c.cluster.topology.max_delay,
            Duration::from_secs(4 * 32 * 60)
        );
        let mut a = run_args("orders");
        a.topology.tiers = Some("1s".into());
        let c = Config::for_run(&a).unwrap();
        assert_eq!(c.cluster.topology.max_delay, Duration::from_secs(3600));
        a.topology.max_delay = Some("90s".into());
        assert_eq!(
            Config::for_run(&a).unwrap().cluster.topology.max_delay,
            Duration::from_secs(90)
        );
        a.topology.tiers = Some("1m,2m".into());
        a.topology.jitter = Some("0.5".into());
        let e = err(&a);
        assert_eq!(e.field, "--max-delay");
        assert!(e.problem.contains("3m"), "{e}");
        a.topology.max_delay = Some("0s".into());
        assert_eq!(err(&a).field, "--max-delay");
    }

    #[test]
    fn unknown_file_keys_are_rejected() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        writeln!(f, "topic = \"t\"\nteirs = \"1s\"").unwrap();
        let mut a = run_args("t");
        a.topology.config = Some(f.path().to_path_buf());
        let e = err(&a);
        assert_eq!(e.field, "--config");
        assert!(e.problem.contains("teirs"), "{e}");
    }
}

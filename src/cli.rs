//! Command-line definitions (clap derive). Every flag also reads `REBOUND_<FLAG>`.
//!
//! Values stay raw strings here; [`crate::config`] merges them with the `--config` file and the
//! defaults and validates the result, so that flags, env vars and the file share one set of
//! error messages.

// `<topic>` in the help texts is a placeholder, not HTML.
#![allow(rustdoc::invalid_html_tags)]

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::breaker::BreakerConfig;
use crate::{defaults, duration};

#[derive(Debug, Parser)]
#[command(
    name = "rebound",
    version,
    about = "A retry topology for any Kafka topic: delay tiers that pause until due, and a DLQ.",
    propagate_version = true
)]
pub struct Cli {
    /// Log format: `pretty` for people, `json` for log pipelines. Level via RUST_LOG.
    #[arg(long, global = true, env = "REBOUND_LOG_FORMAT", value_enum, default_value_t = LogFormat::Pretty)]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Pretty,
    Json,
}

// Parsed once at start-up: the size of `run`'s arguments costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the service: main consumer, delay tiers, router, metrics server.
    Run(Box<RunArgs>),
    /// Show or create the topics of a topology.
    #[command(subcommand)]
    Topics(TopicsCommand),
    /// A self-contained local run that shows the whole topology working.
    Demo(DemoArgs),
    /// Inspect the dead-letter topic without consuming it: stats, list, show.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// Republish DLQ messages to their original topic (or --to), resuming where the last run stopped.
    ReplayDlq(ReplayArgs),
    /// A web console: topology state, the dead letters, and (with --allow-replay) redrive.
    Console(ConsoleArgs),
}

#[derive(Debug, Clone, Default, Args)]
pub struct DemoArgs {
    /// Bootstrap brokers.
    #[arg(long, env = "REBOUND_BROKERS", value_name = "HOST:PORT,...", help = with_default("Bootstrap brokers", defaults::BROKERS))]
    pub brokers: Option<String>,

    /// How many sample messages to send.
    #[arg(long, env = "REBOUND_MESSAGES", value_name = "N", help = with_default("How many sample messages to send", defaults::DEMO_MESSAGES))]
    pub messages: Option<String>,

    /// Delay tiers of the demo topology.
    #[arg(long, env = "REBOUND_TIERS", value_name = "D,D,...", help = with_default("Delay tiers of the demo topology", defaults::DEMO_TIERS))]
    pub tiers: Option<String>,

    /// Share of calls the simulated downstream fails transiently.
    #[arg(long, env = "REBOUND_FAILURE_RATE", value_name = "FRACTION", help = with_default("Share of calls the simulated downstream fails transiently", defaults::DEMO_FAILURE_RATE))]
    pub failure_rate: Option<String>,

    /// Address of the metrics server, or `off`.
    #[arg(long, env = "REBOUND_METRICS_ADDR", value_name = "ADDR", help = with_default("Address of the metrics server, or `off`", defaults::DEMO_METRICS_ADDR))]
    pub metrics_addr: Option<String>,

    /// Keep the demo topics afterwards (they are deleted by default).
    #[arg(long)]
    pub keep: bool,

    /// Any librdkafka property (repeatable).
    #[arg(short = 'X', value_name = "KEY=VALUE")]
    pub kafka: Vec<String>,
}

/// How to reach the cluster: every command that talks to Kafka (all but `demo`).
#[derive(Debug, Clone, Default, Args)]
pub struct ConnectArgs {
    /// TOML file with any of these settings, e.g. topics/orders.toml (flags and env vars win over
    /// it). `--file` is the same flag.
    #[arg(
        long,
        visible_alias = "file",
        env = "REBOUND_CONFIG",
        value_name = "FILE"
    )]
    pub config: Option<std::path::PathBuf>,

    /// Bootstrap brokers.
    #[arg(long, env = "REBOUND_BROKERS", value_name = "HOST:PORT,...", help = with_default("Bootstrap brokers", defaults::BROKERS))]
    pub brokers: Option<String>,

    /// Any librdkafka property, e.g. -X security.protocol=SASL_SSL (repeatable; `[kafka]` in the file).
    #[arg(
        short = 'X',
        value_name = "KEY=VALUE",
        env = "REBOUND_X",
        value_delimiter = '\n'
    )]
    pub kafka: Vec<String>,
}

/// The topology's main topic and dead-letter topic: every command but `demo`.
#[derive(Debug, Clone, Default, Args)]
pub struct NameArgs {
    /// The main topic.
    #[arg(long, env = "REBOUND_TOPIC", value_name = "MAIN")]
    pub topic: Option<String>,

    /// Dead-letter topic [default: <topic>.dlq].
    #[arg(long, env = "REBOUND_DLQ", value_name = "TOPIC")]
    pub dlq: Option<String>,
}

/// The delay tiers: `run`, `topics`, `replay-dlq` (which refuses a tier as `--to`), `console`.
#[derive(Debug, Clone, Default, Args)]
pub struct TierArgs {
    /// Delay tiers, strictly increasing.
    #[arg(long, env = "REBOUND_TIERS", value_name = "D,D,...", help = with_default("Delay tiers, strictly increasing", defaults::TIERS))]
    pub tiers: Option<String>,
}

/// How messages are retried: `run` only.
#[derive(Debug, Clone, Default, Args)]
pub struct RetryArgs {
    /// Retries after the first try; past the last tier the last tier repeats [default: one per tier].
    #[arg(long, env = "REBOUND_MAX_RETRIES", value_name = "N")]
    pub max_retries: Option<String>,

    /// Send a message to the DLQ as `expired` once its first failure is older than this [default: off].
    #[arg(long, env = "REBOUND_MAX_AGE", value_name = "DURATION")]
    pub max_age: Option<String>,

    /// Spread each retry's due time by up to this fraction of the tier delay, 0 to 0.5 [default: 0].
    #[arg(long, env = "REBOUND_JITTER", value_name = "FRACTION")]
    pub jitter: Option<String>,

    /// Longest wait a retry may have: a `Retry-After` beyond it is cut to it, and a tier message
    /// due later than this after it is read is dead-lettered as `invalid` instead of pausing its
    /// partition [default: 4 × the last tier, at least 1h].
    #[arg(long, env = "REBOUND_MAX_DELAY", value_name = "DURATION")]
    pub max_delay: Option<String>,
}

/// Key-ordered retries: `run` and `topics` (which creates the waiting log).
#[derive(Debug, Clone, Default, Args)]
pub struct OrderingArgs {
    /// `key`: while a message is in the retry tiers, later messages with its key wait (in
    /// `<topic>.waiting`) and are handled after it, in order; other keys never wait. `none`:
    /// messages of a key are in order only while in flight [default: none].
    #[arg(long, env = "REBOUND_ORDERING", value_name = "none|key")]
    pub ordering: Option<String>,
}

/// Every topology flag: what `run` takes. The other commands flatten only the groups they use
/// and turn them into a `TopologyArgs` (the rest left empty) for [`crate::config`].
#[derive(Debug, Clone, Default, Args)]
pub struct TopologyArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,

    #[command(flatten)]
    pub names: NameArgs,

    #[command(flatten)]
    pub tiers: TierArgs,

    /// Consumer group [default: rebound.<topic>].
    #[arg(long, env = "REBOUND_GROUP", value_name = "NAME")]
    pub group: Option<String>,

    #[command(flatten)]
    pub retry: RetryArgs,

    #[command(flatten)]
    pub ordering: OrderingArgs,
}

impl TopologyArgs {
    /// The flags of a command that takes no `--tiers`, `--group` or retry flags.
    pub fn of(connect: &ConnectArgs, names: &NameArgs) -> TopologyArgs {
        TopologyArgs {
            connect: connect.clone(),
            names: names.clone(),
            ..TopologyArgs::default()
        }
    }

    /// With `--tiers`.
    pub fn with_tiers(mut self, tiers: &TierArgs) -> TopologyArgs {
        self.tiers = tiers.clone();
        self
    }

    /// With `--ordering`.
    pub fn with_ordering(mut self, ordering: &OrderingArgs) -> TopologyArgs {
        self.ordering = ordering.clone();
        self
    }

    /// With `--group`.
    pub fn with_group(mut self, group: Option<String>) -> TopologyArgs {
        self.group = group;
        self
    }
}

#[derive(Debug, Clone, Default, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub topology: TopologyArgs,

    /// Which built-in handler processes messages: `http` or `command`.
    #[arg(long, env = "REBOUND_HANDLER", value_name = "KIND")]
    pub handler: Option<String>,

    /// URL that the `http` handler POSTs each payload to.
    #[arg(long, env = "REBOUND_URL", value_name = "URL")]
    pub url: Option<String>,

    /// Program (and arguments) that the `command` handler runs per message, payload on stdin.
    #[arg(long, env = "REBOUND_COMMAND", value_name = "PROGRAM ARGS...")]
    pub command: Option<String>,

    /// Longest a handler call may take before it counts as a transient `timeout`.
    #[arg(long, env = "REBOUND_HANDLER_TIMEOUT", value_name = "DURATION", help = with_default("Longest a handler call may take before it counts as a transient `timeout`", duration::format(defaults::HANDLER_TIMEOUT)))]
    pub handler_timeout: Option<String>,

    /// Address of the /metrics, /healthz and /readyz server, or `off`.
    #[arg(long, env = "REBOUND_METRICS_ADDR", value_name = "ADDR", help = with_default("Address of the /metrics, /healthz and /readyz server, or `off`", defaults::METRICS_ADDR))]
    pub metrics_addr: Option<String>,

    /// Messages handled at once; messages with the same key are still handled in order.
    #[arg(long, env = "REBOUND_MAX_IN_FLIGHT", value_name = "N", help = with_default("Messages handled at once; messages with the same key are still handled in order", defaults::MAX_IN_FLIGHT))]
    pub max_in_flight: Option<String>,

    /// How often finished offsets are committed.
    #[arg(long, env = "REBOUND_COMMIT_INTERVAL", value_name = "DURATION", help = with_default("How often finished offsets are committed", duration::format(defaults::COMMIT_INTERVAL)))]
    pub commit_interval: Option<String>,

    /// How long a graceful stop may take before in-flight work is handed back.
    #[arg(long, env = "REBOUND_SHUTDOWN_TIMEOUT", value_name = "DURATION", help = with_default("How long a graceful stop may take before in-flight work is handed back", duration::format(defaults::SHUTDOWN_TIMEOUT)))]
    pub shutdown_timeout: Option<String>,

    /// Consumer group membership (issue 16). A static member's name (KIP-345's
    /// group.instance.id), e.g. the pod name: a restarted instance takes its partitions back
    /// without a rebalance (see README, "Static membership").
    #[arg(long, env = "REBOUND_INSTANCE_ID", value_name = "NAME")]
    pub instance_id: Option<String>,
    /// How long a revoked partition's running jobs may finish (and be committed) before they are
    /// handed back to the next owner; 0s hands them back at once [default: 2s].
    #[arg(long, env = "REBOUND_REVOKE_TIMEOUT", value_name = "DURATION")]
    pub revoke_timeout: Option<String>,
    /// Exactly-once topology (issue 18): each retry/DLQ copy and the offset it came from commit
    /// in one Kafka transaction (transactional.id <group>.<instance-id>); needs --instance-id and
    /// a broker with transactions [default: off].
    #[arg(long, env = "REBOUND_EXACTLY_ONCE")]
    pub exactly_once: bool,

    /// Failure rate (0 to 1) of the calls the circuit breaker judges that opens it; 0 turns the
    /// breaker off.
    #[arg(long, env = "REBOUND_BREAKER_THRESHOLD", value_name = "FRACTION", help = breaker_help("threshold"))]
    pub breaker_threshold: Option<String>,

    /// Most calls each of the breaker's windows (first attempts, retries) holds.
    #[arg(long, env = "REBOUND_BREAKER_WINDOW", value_name = "N", help = breaker_help("window"))]
    pub breaker_window: Option<String>,

    /// Oldest call the breaker's windows hold.
    #[arg(long, env = "REBOUND_BREAKER_WINDOW_TIME", value_name = "DURATION", help = breaker_help("window-time"))]
    pub breaker_window_time: Option<String>,

    /// Fewest calls the breaker judges before it may open.
    #[arg(long, env = "REBOUND_BREAKER_MIN_CALLS", value_name = "N", help = breaker_help("min-calls"))]
    pub breaker_min_calls: Option<String>,

    /// How long an open breaker keeps fetching paused before probing.
    #[arg(long, env = "REBOUND_BREAKER_COOLDOWN", value_name = "DURATION", help = breaker_help("cooldown"))]
    pub breaker_cooldown: Option<String>,

    /// Calls a half-open breaker lets through, main-topic messages first.
    #[arg(long, env = "REBOUND_BREAKER_PROBES", value_name = "N", help = breaker_help("probes"))]
    pub breaker_probes: Option<String>,

    /// A call still in the handler after this long counts as a failure; 0 turns this off.
    #[arg(long, env = "REBOUND_BREAKER_SLOW_CALL", value_name = "DURATION", help = breaker_help("slow-call"))]
    pub breaker_slow_call: Option<String>,

    /// Message headers the `http` handler forwards as request headers (comma-separated names).
    #[arg(long, env = "REBOUND_FORWARD_HEADERS", value_name = "NAME,...")]
    pub forward_headers: Option<String>,

    /// Bytes all tier partitions together keep in memory ahead of their heads, e.g. 32MiB
    /// [default: 32MiB].
    #[arg(long, env = "REBOUND_TIER_BUFFER", value_name = "SIZE")]
    pub tier_buffer: Option<String>,

    /// Messages one tier partition keeps in memory, its head included; 1 holds only the head.
    #[arg(long, env = "REBOUND_TIER_BUFFER_MESSAGES", value_name = "N", help = with_default("Messages one tier partition keeps in memory, its head included; 1 holds only the head", crate::delay::DEFAULT_PARTITION_MESSAGES))]
    pub tier_buffer_messages: Option<String>,

    /// Bytes one tier partition keeps in memory (a larger head is still kept alone) [default: 1MiB].
    #[arg(long, env = "REBOUND_TIER_BUFFER_PARTITION_BYTES", value_name = "SIZE")]
    pub tier_buffer_partition_bytes: Option<String>,

    /// A tier message is kept behind its partition's head only if due within this long; later
    /// ones are read again when they come closer [default: the shortest tier delay].
    #[arg(long, env = "REBOUND_TIER_HORIZON", value_name = "DURATION")]
    pub tier_horizon: Option<String>,

    /// Validate the configuration, print it (secrets redacted) and exit.
    #[arg(long)]
    pub check_config: bool,
}

#[derive(Debug, Subcommand)]
pub enum TopicsCommand {
    /// Show what exists and what `apply` would create.
    Plan(TopicsArgs),
    /// Create the missing topics (idempotent).
    Apply(TopicsArgs),
}

#[derive(Debug, Clone, Default, Args)]
pub struct TopicsArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,

    #[command(flatten)]
    pub names: NameArgs,

    #[command(flatten)]
    pub tiers: TierArgs,

    #[command(flatten)]
    pub ordering: OrderingArgs,

    /// Partitions for new topics [default: the main topic's count, else 3].
    #[arg(long, env = "REBOUND_PARTITIONS", value_name = "N")]
    pub partitions: Option<String>,

    /// Replication factor for new topics [default: the broker's default].
    #[arg(long, env = "REBOUND_REPLICATION_FACTOR", value_name = "N")]
    pub replication_factor: Option<String>,

    /// Also create the main topic when it does not exist.
    #[arg(long, env = "REBOUND_CREATE_MAIN")]
    pub create_main: bool,

    /// `apply`: accept existing topics that `plan` reports as hazards (compacted tiers or DLQ,
    /// short retention) instead of refusing.
    #[arg(long, env = "REBOUND_FORCE")]
    pub force: bool,
}

#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// Counts by reason, error class and original topic; oldest and newest; top error messages.
    Stats(DlqStatsArgs),
    /// One line per message (or one JSON object per line with --json).
    List(DlqListArgs),
    /// Every header, the key and the payload of one message.
    Show(DlqShowArgs),
}

/// Which DLQ messages a command works on (all of them by default).
#[derive(Debug, Clone, Default, Args)]
pub struct DlqFilterArgs {
    /// Only these `rebound-dlq-reason`s: permanent, exhausted, expired, invalid (comma-separated).
    #[arg(long, env = "REBOUND_REASON", value_name = "R,...")]
    pub reason: Option<String>,

    /// Only these `rebound-error-class`es, e.g. http_503,timeout (comma-separated).
    #[arg(long, env = "REBOUND_ERROR_CLASS", value_name = "C,...")]
    pub error_class: Option<String>,

    /// Only messages with exactly this key.
    #[arg(long, env = "REBOUND_KEY", value_name = "KEY")]
    pub key: Option<String>,

    /// Only messages that first failed at or after this time (RFC 3339, e.g. 2026-11-24T14:00:00Z).
    #[arg(long, env = "REBOUND_SINCE", value_name = "TIME")]
    pub since: Option<String>,

    /// Only messages that first failed before this time (RFC 3339).
    #[arg(long, env = "REBOUND_UNTIL", value_name = "TIME")]
    pub until: Option<String>,

    /// Only this DLQ partition; the others are not read at all.
    #[arg(long, env = "REBOUND_PARTITION", value_name = "P")]
    pub partition: Option<String>,

    /// Only offsets from N on (in each partition read).
    #[arg(long, env = "REBOUND_FROM_OFFSET", value_name = "N")]
    pub from_offset: Option<String>,

    /// Stop reading each partition after offset N (inclusive); later offsets are left alone.
    #[arg(long, env = "REBOUND_TO_OFFSET", value_name = "N")]
    pub to_offset: Option<String>,
}

#[derive(Debug, Clone, Default, Args)]
pub struct DlqStatsArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,

    #[command(flatten)]
    pub names: NameArgs,

    #[command(flatten)]
    pub filter: DlqFilterArgs,

    /// Print one JSON document instead of tables.
    #[arg(long, env = "REBOUND_JSON")]
    pub json: bool,
}

#[derive(Debug, Clone, Default, Args)]
pub struct DlqListArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,

    #[command(flatten)]
    pub names: NameArgs,

    #[command(flatten)]
    pub filter: DlqFilterArgs,

    /// Print at most N messages.
    #[arg(long, env = "REBOUND_LIMIT", value_name = "N")]
    pub limit: Option<String>,

    /// One JSON object per line.
    #[arg(long, env = "REBOUND_JSON")]
    pub json: bool,
}

#[derive(Debug, Clone, Default, Args)]
pub struct DlqShowArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,

    #[command(flatten)]
    pub names: NameArgs,

    /// The message's offset (as `list` shows it: PARTITION/OFFSET).
    #[arg(long, env = "REBOUND_OFFSET", value_name = "N")]
    pub offset: Option<String>,

    /// The message's partition (needed when the DLQ has more than one).
    #[arg(long, env = "REBOUND_PARTITION", value_name = "P")]
    pub partition: Option<String>,
}

/// `replay-dlq`. Its `--group` names the replay's own consumer group, which remembers what was
/// replayed; it reads `REBOUND_REPLAY_GROUP`, not `REBOUND_GROUP`, because `REBOUND_GROUP` is
/// usually the service's group in the same environment, and the replay must never commit there.
#[derive(Debug, Clone, Default, Args)]
pub struct ReplayArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,

    #[command(flatten)]
    pub names: NameArgs,

    #[command(flatten)]
    pub tiers: TierArgs,

    /// The replay's own consumer group, which remembers what was replayed [default: <service-group>.replay].
    #[arg(long, env = "REBOUND_REPLAY_GROUP", value_name = "NAME")]
    pub group: Option<String>,

    #[command(flatten)]
    pub filter: DlqFilterArgs,

    /// The service's consumer group, from which the replay group is named [default: rebound.<topic>].
    #[arg(long, env = "REBOUND_GROUP", value_name = "NAME")]
    pub service_group: Option<String>,

    /// Send every message here instead of to its `rebound-original-topic`.
    #[arg(long, env = "REBOUND_TO", value_name = "TOPIC")]
    pub to: Option<String>,

    /// Replay at most N messages, then stop (the next run continues after them).
    #[arg(long, env = "REBOUND_LIMIT", value_name = "N")]
    pub limit: Option<String>,

    /// Print what would be sent; send nothing, commit nothing.
    #[arg(long, env = "REBOUND_DRY_RUN")]
    pub dry_run: bool,

    /// Send at most N messages per second [default: as fast as the broker acknowledges].
    #[arg(long, env = "REBOUND_RATE", value_name = "N")]
    pub rate: Option<String>,

    /// Skip (with a warning) messages already replayed this many times.
    #[arg(long, env = "REBOUND_MAX_REPLAYS", value_name = "N", help = with_default("Skip (with a warning) messages already replayed this many times", defaults::MAX_REPLAYS))]
    pub max_replays: Option<String>,

    /// Replay messages even when they reached --max-replays.
    #[arg(long, env = "REBOUND_FORCE")]
    pub force: bool,

    /// Exactly-once replay (issue 18): each batch of copies, their ledger records and the replay
    /// group's offsets commit in one Kafka transaction (transactional.id
    /// <replay-group>.replay-dlq), so a crash mid-replay sends nothing twice; needs a broker with
    /// transactions [default: off].
    #[arg(long, env = "REBOUND_EXACTLY_ONCE")]
    pub exactly_once: bool,
}

/// `rebound console`. `--group` is the service's group (its offsets and lag are shown); redrive
/// uses the replay group `<group>.replay`, the same as `replay-dlq`'s default.
#[derive(Debug, Clone, Default, Args)]
pub struct ConsoleArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,

    #[command(flatten)]
    pub names: NameArgs,

    #[command(flatten)]
    pub tiers: TierArgs,

    /// The service's consumer group, whose offsets and lag are shown [default: rebound.<topic>].
    #[arg(long, env = "REBOUND_GROUP", value_name = "NAME")]
    pub group: Option<String>,

    /// Address to serve on; anything but a loopback address needs --token.
    #[arg(long, env = "REBOUND_CONSOLE_LISTEN", value_name = "ADDR", help = with_default("Address to serve on; anything but a loopback address needs --token", defaults::CONSOLE_LISTEN))]
    pub listen: Option<String>,

    /// Base URLs of running instances' metrics servers, whose /status the topology page shows.
    #[arg(long, env = "REBOUND_INSTANCES", value_name = "URL,...")]
    pub instances: Option<String>,

    /// Allow redriving dead letters; without it the console is read-only.
    #[arg(long, env = "REBOUND_ALLOW_REPLAY")]
    pub allow_replay: bool,

    /// Require this token (`Authorization: Bearer`, or the login form); needed off loopback.
    /// Prefer the env var, so that it does not show in the process list. Never logged.
    #[arg(
        long,
        env = "REBOUND_CONSOLE_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,

    /// Skip (with a note) messages already replayed this many times.
    #[arg(long, env = "REBOUND_MAX_REPLAYS", value_name = "N", help = with_default("Skip (with a note) messages already replayed this many times", defaults::MAX_REPLAYS))]
    pub max_replays: Option<String>,
}

/// A `--help` line ending in its default, read from [`crate::defaults`] (the one place it is
/// written).
fn with_default(what: &str, default: impl std::fmt::Display) -> String {
    format!("{what} [default: {default}]")
}

/// The `--help` line of a `--breaker-*` flag (`which` is the part after `--breaker-`), with its
/// default read from [`BreakerConfig::default`], the one place breaker defaults are written.
fn breaker_help(which: &str) -> String {
    let d = BreakerConfig::default();
    let short = duration::format;
    let (what, default) = match which {
        "threshold" => (
            "Failure rate (0 to 1) of the calls the circuit breaker judges that opens it; 0 turns the breaker off",
            d.threshold.to_string(),
        ),
        "window" => (
            "Most calls each of the breaker's windows (first attempts, retries) holds",
            d.window.to_string(),
        ),
        "window-time" => (
            "Oldest call the breaker's windows hold",
            short(d.window_time),
        ),
        "min-calls" => (
            "Fewest calls the breaker judges before it may open",
            d.min_calls.to_string(),
        ),
        "cooldown" => (
            "How long an open breaker keeps fetching paused before probing",
            short(d.cooldown),
        ),
        "slow-call" => (
            "A call still in the handler after this long counts as a failure for the breaker then (a hung downstream opens it without waiting for --handler-timeout); 0 turns this off",
            d.slow_call.map_or("0".to_string(), short),
        ),
        _ => (
            "Calls a half-open breaker lets through, main-topic messages first",
            d.probes.to_string(),
        ),
    };
    with_default(what, default)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    fn help(path: &[&str]) -> String {
        let mut cmd = Cli::command();
        let mut sub = &mut cmd;
        for name in path {
            sub = sub.find_subcommand_mut(name).expect("subcommand");
        }
        sub.render_long_help().to_string()
    }

    /// Each command's `--help` lists only the flags it uses, and a flag it does not use is a
    /// usage error (clap's exit code 2), not silently ignored.
    #[test]
    fn each_command_takes_only_the_flags_it_uses() {
        let not_for = |path: &[&str], flags: &[&str]| {
            let text = help(path);
            for flag in flags {
                assert!(
                    !text.contains(flag),
                    "{path:?} --help lists {flag}:\n{text}"
                );
                let mut argv = vec!["rebound"];
                argv.extend_from_slice(path);
                argv.extend_from_slice(&["--topic", "orders", flag, "1"]);
                let e = Cli::try_parse_from(&argv).unwrap_err();
                assert_eq!(e.exit_code(), 2, "{argv:?}: {e}");
                assert_eq!(
                    e.kind(),
                    clap::error::ErrorKind::UnknownArgument,
                    "{argv:?}"
                );
            }
        };
        let retry = ["--max-retries", "--max-age", "--jitter", "--max-delay"];
        for dlq in ["stats", "list", "show"] {
            not_for(&["dlq", dlq], &retry);
            not_for(&["dlq", dlq], &["--tiers", "--group", "--handler"]);
        }
        not_for(&["topics", "plan"], &retry);
        not_for(&["topics", "apply"], &["--group", "--handler"]);
        not_for(&["replay-dlq"], &retry);
        not_for(&["console"], &retry);
        for flag in retry.iter().chain(&["--tiers", "--group", "--dlq", "-X"]) {
            assert!(help(&["run"]).contains(flag), "run --help lacks {flag}");
        }
        assert!(help(&["dlq", "show"]).contains("--brokers"));
        assert!(help(&["replay-dlq"]).contains("--tiers"));
    }

    /// The defaults `--help` shows are the ones the library uses.
    #[test]
    fn help_shows_the_librarys_defaults() {
        let run = help(&["run"]);
        let b = BreakerConfig::default();
        for shown in [
            format!("[default: {}]", b.window),
            format!("[default: {}]", b.min_calls),
            format!("[default: {}]", duration::format(defaults::HANDLER_TIMEOUT)),
            format!("[default: {}]", defaults::MAX_IN_FLIGHT),
            format!("[default: {}]", defaults::TIERS),
            format!("[default: {}]", defaults::METRICS_ADDR),
            format!("[default: {}]", crate::delay::DEFAULT_PARTITION_MESSAGES),
        ] {
            assert!(run.contains(&shown), "run --help lacks {shown}");
        }
        assert!(help(&["console"]).contains(defaults::CONSOLE_LISTEN));
        assert!(help(&["demo"]).contains(defaults::DEMO_TIERS));
    }
}

//! Settings of `rebound dlq stats|list|show` and `replay-dlq`, and the DLQ filters they share.

use super::parse::{bad, non_negative, parse_limit, parse_num};
use super::topology::{resolve_cluster, topic_name};
use super::ConfigError;
use crate::cli::{DlqFilterArgs, DlqListArgs, DlqShowArgs, DlqStatsArgs, ReplayArgs, TopologyArgs};
use crate::cluster::ClusterConfig;
use crate::defaults;
use crate::dlq::select::Filter;
use crate::headers;
use crate::topology::DlqReason;

/// Settings of `rebound dlq stats|list`.
#[derive(Debug, Clone)]
pub struct DlqReadConfig {
    /// The cluster; its topology names the DLQ.
    pub cluster: ClusterConfig,
    /// Which messages are counted or listed.
    pub filter: Filter,
    /// `list` prints at most this many messages.
    pub limit: Option<u64>,
    /// JSON output.
    pub json: bool,
}

impl DlqReadConfig {
    /// Resolves `dlq stats`'s flags.
    pub fn for_stats(args: &DlqStatsArgs) -> Result<DlqReadConfig, ConfigError> {
        Ok(DlqReadConfig {
            cluster: resolve_cluster(&TopologyArgs::of(&args.connect, &args.names))?,
            filter: resolve_filter(&args.filter)?,
            limit: None,
            json: args.json,
        })
    }

    /// Resolves `dlq list`'s flags.
    pub fn for_list(args: &DlqListArgs) -> Result<DlqReadConfig, ConfigError> {
        Ok(DlqReadConfig {
            cluster: resolve_cluster(&TopologyArgs::of(&args.connect, &args.names))?,
            filter: resolve_filter(&args.filter)?,
            limit: parse_limit(args.limit.as_deref())?,
            json: args.json,
        })
    }
}

/// Settings of `rebound dlq show`.
#[derive(Debug, Clone)]
pub struct DlqShowConfig {
    /// The cluster; its topology names the DLQ.
    pub cluster: ClusterConfig,
    /// Needed when the DLQ has more than one partition.
    pub partition: Option<i32>,
    /// The message's offset.
    pub offset: i64,
}

impl DlqShowConfig {
    /// Resolves `dlq show`'s flags; `--offset` is required.
    pub fn resolve(args: &DlqShowArgs) -> Result<DlqShowConfig, ConfigError> {
        let cluster = resolve_cluster(&TopologyArgs::of(&args.connect, &args.names))?;
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
    /// The cluster; its topology names the DLQ, its group is the replay group.
    pub cluster: ClusterConfig,
    /// Which messages are replayed.
    pub filter: Filter,
    /// Destination instead of `rebound-original-topic`.
    pub to: Option<String>,
    /// Replay at most this many messages.
    pub limit: Option<u64>,
    /// Print what would be sent; send and commit nothing.
    pub dry_run: bool,
    /// Messages per second.
    pub rate: Option<f64>,
    /// Messages replayed this often already are skipped unless `force`.
    pub max_replays: u32,
    /// Replay messages at `max_replays` too.
    pub force: bool,
    /// `--exactly-once`: copies, ledger records and the group's offsets commit in Kafka
    /// transactions, `transactional.id` = [`ReplayConfig::transactional_id`].
    pub exactly_once: bool,
    /// A progress line on stderr every this many messages (when stderr is not a terminal).
    pub progress_every: u64,
}

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
            max_replays: defaults::MAX_REPLAYS,
            force: false,
            exactly_once: false,
            progress_every: 1000,
        }
    }

    /// The `transactional.id` of `--exactly-once`: `<replay group>.replay-dlq`, stable across
    /// runs, so a new run aborts the open transaction of a killed one (and fences a replay of the
    /// same group still running) in `init_transactions` (KIP-98).
    pub fn transactional_id(&self) -> String {
        format!("{}.replay-dlq", self.cluster.group)
    }

    /// Resolves `replay-dlq`'s flags: `--group` is the replay group, `--service-group` names
    /// the default one (`<service-group>.replay`).
    pub fn resolve(args: &ReplayArgs) -> Result<ReplayConfig, ConfigError> {
        // The service's group names the replay group; `--group` names the replay group itself.
        let service = TopologyArgs::of(&args.connect, &args.names)
            .with_tiers(&args.tiers)
            .with_group(args.service_group.clone());
        let mut cluster = resolve_cluster(&service)?;
        cluster.group = match args.group.as_deref() {
            Some(g) if g.trim().is_empty() => return Err(bad("--group", "is empty")),
            Some(g) => g.to_string(),
            None => format!("{}.replay", cluster.group),
        };
        let topology = &cluster.topology;
        if let Some(to) = &args.to {
            topic_name("--to", to)?;
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
            None => defaults::MAX_REPLAYS,
        };
        Ok(ReplayConfig {
            filter: resolve_filter(&args.filter)?,
            to: args.to.clone(),
            limit: parse_limit(args.limit.as_deref())?,
            dry_run: args.dry_run,
            rate,
            max_replays,
            force: args.force,
            exactly_once: args.exactly_once,
            progress_every: 1000,
            cluster,
        })
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
                headers::parse_time(headers::FIRST_FAILED_AT, Some(s.as_bytes())).map_err(|_| {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::NameArgs;

    fn replay_args(topic: &str) -> ReplayArgs {
        ReplayArgs {
            names: NameArgs {
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
        a.group = Some("mine".into());
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
            names: NameArgs {
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
}

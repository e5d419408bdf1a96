//! `rebound topics plan|apply`, and the topic check `rebound run` makes at start: what the
//! topology's topics look like, which of their settings lose retries or dead letters (hazards),
//! creating the missing topics and raising retention that is too short.
//!
//! The decisions are pure ([`topic_hazards`], [`decide`]); [`inspect`] reads the cluster
//! (metadata, and `DescribeConfigs` for every topic and one broker) and [`apply`] acts.
//! `apply` never lowers a retention, never changes an existing topic's `cleanup.policy`, and
//! refuses, before changing anything, a topology that would still have hazards afterwards,
//! unless `--force`.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use rdkafka::admin::{
    AdminClient, AdminOptions, AlterConfig, ConfigSource, NewTopic, ResourceSpecifier,
    TopicReplication,
};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

use crate::cluster::ClusterConfig;
use crate::config::TopicsConfig;
use crate::duration;
use crate::kafka;
use crate::topology::Topology;

/// `plan` flags a tier whose `retention.ms` is below its delay plus this: a service stopped (or
/// held back by its circuit breaker) for a day must not find its due retries deleted.
pub const TIER_RETENTION_MARGIN: Duration = Duration::from_secs(24 * 3600);
/// `apply` gives each tier a `retention.ms` of at least its delay plus this (and at least the
/// broker's default).
pub const TIER_RETENTION_HEADROOM: Duration = Duration::from_secs(7 * 24 * 3600);
/// The shortest DLQ `retention.ms` that `plan` accepts and `apply` sets: dead letters must
/// outlive a week of nobody looking.
pub const DLQ_MIN_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
/// Kafka's own default `log.retention.hours` (168), assumed when the broker does not say.
const KAFKA_DEFAULT_RETENTION_MS: i64 = 7 * 24 * 3600 * 1000;

/// Why planning or applying failed.
#[derive(Debug, thiserror::Error)]
pub enum TopicsError {
    #[error(transparent)]
    Unreachable(#[from] kafka::Unreachable),
    #[error("kafka admin client: {}", crate::kafka::Shown(.0))]
    Kafka(#[from] KafkaError),
    #[error("could not create {}", .0.iter().map(|(t, e)| format!("{t} ({e})")).collect::<Vec<_>>().join(", "))]
    CreateFailed(Vec<(String, String)>),
    #[error("could not raise retention.ms of {}", .0.iter().map(|(t, e)| format!("{t} ({e})")).collect::<Vec<_>>().join(", "))]
    AlterFailed(Vec<(String, String)>),
    /// `apply` without `--force` on a topology that would still lose messages or dead letters.
    #[error("refusing to apply: the topology is unsafe, and apply does not change cleanup.policy of existing topics.\n{plan}Fix the hazards above, or pass --force to accept them.")]
    Unsafe { plan: Box<Plan> },
}

impl TopicsError {
    /// Whether the operator has to change the topology or the flags: exit code 2.
    pub fn is_configuration(&self) -> bool {
        matches!(self, TopicsError::Unsafe { .. })
    }
}

/// A topic's role in the topology.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Main,
    /// Index into [`Topology::tiers`].
    Tier(usize),
    Dlq,
    /// The waiting log of `--ordering key`.
    Waiting,
}

/// What the cluster says about an existing topic.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    pub partitions: usize,
    /// `cleanup.policy` (`delete`, `compact`, `compact,delete`), when the broker said.
    pub cleanup_policy: Option<String>,
    /// `retention.ms`; -1 is unlimited. `None` when the broker did not say.
    pub retention_ms: Option<i64>,
    /// `max.message.bytes`: the largest record batch the broker takes for it. `None` when the
    /// broker did not say.
    pub max_message_bytes: Option<i64>,
    /// The topic's own settings (source `DYNAMIC_TOPIC_CONFIG`): `AlterConfigs` replaces the
    /// whole set, so a retention change must send them all again.
    pub dynamic: Vec<(String, String)>,
}

/// How bad a hazard is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// Worth knowing; nothing is lost (partition counts).
    Note,
    /// Messages are lost when the service is stopped or slow for long enough.
    Risk,
    /// Messages are lost in normal operation: `run` refuses to start.
    Loss,
}

impl Severity {
    fn label(self) -> &'static str {
        match self {
            Severity::Note => "note",
            Severity::Risk => "RISK",
            Severity::Loss => "LOSES MESSAGES",
        }
    }
}

/// One unsafe (or notable) setting of one topic, and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hazard {
    pub topic: String,
    pub severity: Severity,
    pub problem: String,
    pub fix: String,
}

impl fmt::Display for Hazard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}: {}\n    fix: {}",
            self.severity.label(),
            self.topic,
            self.problem,
            self.fix
        )
    }
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn show_ms(v: i64) -> String {
    if v < 0 {
        "unlimited".into()
    } else {
        duration::format(Duration::from_millis(v as u64))
    }
}

fn alter_command(brokers: &str, topic: &str, setting: &str) -> String {
    format!("kafka-configs.sh --bootstrap-server {brokers} --alter --entity-type topics --entity-name {topic} --add-config {setting}")
}

/// The `retention.ms` a tier with this delay needs, per `apply`: at least the broker's default
/// (-1, unlimited, beats everything) and at least the delay plus [`TIER_RETENTION_HEADROOM`].
pub fn tier_retention_target(delay: Duration, broker_default_ms: Option<i64>) -> i64 {
    let need = ms(delay).saturating_add(ms(TIER_RETENTION_HEADROOM));
    match broker_default_ms {
        Some(d) if d < 0 => -1,
        Some(d) => d.max(need),
        None => need,
    }
}

/// The `retention.ms` `apply` gives the DLQ: at least the broker's default and
/// [`DLQ_MIN_RETENTION`].
pub fn dlq_retention_target(broker_default_ms: Option<i64>) -> i64 {
    match broker_default_ms {
        Some(d) if d < 0 => -1,
        Some(d) => d.max(ms(DLQ_MIN_RETENTION)),
        None => ms(DLQ_MIN_RETENTION),
    }
}

/// What `apply` adds to the main topic's `max.message.bytes` for the topics it creates: room
/// for the headers a copy carries besides the message (the routing headers, an error message
/// of up to 1 KiB; about 1 KiB in all), 16 KiB to spare.
pub const COPY_HEADROOM: i64 = 16 * 1024;

/// The hazards of one existing topic (pure). `delay` is the tier's delay (tiers only);
/// `main_partitions` the main topic's partition count, when it exists; `main_max_bytes` its
/// `max.message.bytes`, when the broker said.
pub fn topic_hazards(
    topology: &Topology,
    brokers: &str,
    role: Role,
    topic: &str,
    seen: &Observed,
    main_partitions: Option<usize>,
    main_max_bytes: Option<i64>,
) -> Vec<Hazard> {
    let mut out = Vec::new();
    let hazard = |severity, problem: String, fix: String| Hazard {
        topic: topic.to_string(),
        severity,
        problem,
        fix,
    };
    if role == Role::Main {
        return out;
    }
    let what = match role {
        Role::Dlq => "dead letters with the same key overwrite each other",
        Role::Waiting => {
            "messages waiting behind the same key overwrite each other and the key's state is lost"
        }
        _ => "retries of messages with the same key overwrite each other: lost retries",
    };
    if let Some(policy) = &seen.cleanup_policy {
        if policy.split(',').any(|p| p.trim() == "compact") {
            out.push(hazard(
                Severity::Loss,
                format!("cleanup.policy={policy}: the broker compacts it, so {what}"),
                alter_command(brokers, topic, "cleanup.policy=delete"),
            ));
        }
    }
    if let (Some(max), Some(main_max)) = (seen.max_message_bytes, main_max_bytes) {
        if max < main_max {
            let outcome = match role {
                Role::Dlq => "is dead-lettered without its payload",
                Role::Waiting => "is dead-lettered instead of waiting behind its key",
                _ => "is dead-lettered instead of retried",
            };
            out.push(hazard(
                Severity::Risk,
                format!(
                    "max.message.bytes={max} is smaller than the main topic's ({main_max}): a message of a size between the two {outcome}"
                ),
                alter_command(brokers, topic, &format!("max.message.bytes={main_max}")),
            ));
        }
    }
    let retention = seen.retention_ms.filter(|r| *r >= 0);
    match role {
        Role::Tier(i) => {
            let delay = topology.tiers[i].delay;
            let target = tier_retention_target(delay, None);
            if let Some(r) = retention {
                let fix = format!(
                    "`rebound topics apply` raises it to at least {}, or: {}",
                    show_ms(target),
                    alter_command(brokers, topic, &format!("retention.ms={target}"))
                );
                if r < ms(delay) {
                    out.push(hazard(
                        Severity::Loss,
                        format!(
                            "retention.ms={r} ({}) is shorter than the tier's delay ({}): copies are deleted before they are due",
                            show_ms(r),
                            duration::format(delay)
                        ),
                        fix,
                    ));
                } else if r < ms(delay).saturating_add(ms(TIER_RETENTION_MARGIN)) {
                    out.push(hazard(
                        Severity::Risk,
                        format!(
                            "retention.ms={r} ({}) is less than the tier's delay ({}) plus {}: a service stopped or held back that long loses its due retries",
                            show_ms(r),
                            duration::format(delay),
                            duration::format(TIER_RETENTION_MARGIN)
                        ),
                        fix,
                    ));
                }
            }
        }
        Role::Dlq | Role::Waiting => {
            if let Some(r) = retention.filter(|r| *r < ms(DLQ_MIN_RETENTION)) {
                let target = dlq_retention_target(None);
                out.push(hazard(
                    Severity::Risk,
                    format!(
                        "retention.ms={r} ({}) is shorter than {}: {}",
                        show_ms(r),
                        duration::format(DLQ_MIN_RETENTION),
                        if role == Role::Dlq {
                            "dead letters are deleted before anyone looks at them"
                        } else {
                            "messages waiting behind a key that stays in retry that long are deleted"
                        }
                    ),
                    format!(
                        "`rebound topics apply` raises it to at least {}, or: {}",
                        show_ms(target),
                        alter_command(brokers, topic, &format!("retention.ms={target}"))
                    ),
                ));
            }
        }
        Role::Main => {}
    }
    if let Some(m) = main_partitions.filter(|m| role == Role::Waiting && seen.partitions < *m) {
        out.push(hazard(
            Severity::Loss,
            format!(
                "{} partitions, the main topic has {m}: --ordering key keeps main partition p's waiting messages in partition p",
                seen.partitions
            ),
            format!("kafka-topics.sh --bootstrap-server {brokers} --alter --topic {topic} --partitions {m}"),
        ));
        return out;
    }
    if let Some(m) = main_partitions.filter(|m| *m != seen.partitions) {
        let less = seen.partitions < m;
        out.push(hazard(
            Severity::Note,
            format!(
                "{} partitions, the main topic has {m}{}",
                seen.partitions,
                if less && matches!(role, Role::Tier(_)) {
                    ": retries are spread over fewer partitions, and a partition paused on its head holds more of them"
                } else {
                    ""
                }
            ),
            format!("kafka-topics.sh --bootstrap-server {brokers} --alter --topic {topic} --partitions {m} (partitions can only be added)"),
        ));
    }
    out
}

/// One topic of the topology and what is (or will be) true of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// `main`, `retry-2m`, …, `dlq`
    pub label: String,
    pub role: Role,
    pub topic: String,
    pub state: TopicState,
    /// What the cluster says of it, when it exists.
    pub observed: Option<Observed>,
    /// `apply` raises its `retention.ms` to this.
    pub raise_retention: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicState {
    Exists {
        partitions: usize,
    },
    /// Missing; `apply` creates it with this many partitions and these settings.
    WillCreate {
        partitions: i32,
        settings: Vec<(String, String)>,
    },
    /// Missing, and `apply` leaves it alone (the main topic without `--create-main`).
    Missing,
    Created {
        partitions: i32,
    },
}

/// The whole plan, printable as a table followed by the hazards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub rows: Vec<Row>,
    /// Hazards of the topics as they are now.
    pub hazards: Vec<Hazard>,
    /// Hazards still there after `apply` did what it does (creates, raises retention).
    pub after_apply: Vec<Hazard>,
    /// Why the topics' settings could not be read (a broker without `DescribeConfigs`, or an
    /// ACL): then only partition counts are checked.
    pub unreadable: Option<String>,
}

impl Plan {
    /// The smallest `max.message.bytes` of the topics of `roles` that exist, if the broker said:
    /// what a batch of rebound's producer writing to them must stay under
    /// ([`crate::kafka::cap_batch`]).
    pub fn record_limit(&self, roles: impl Fn(Role) -> bool) -> Option<i64> {
        self.rows
            .iter()
            .filter(|r| roles(r.role))
            .filter_map(|r| r.observed.as_ref()?.max_message_bytes)
            .min()
    }

    pub fn to_create(&self) -> impl Iterator<Item = (&str, i32, &[(String, String)])> {
        self.rows.iter().filter_map(|r| match &r.state {
            TopicState::WillCreate {
                partitions,
                settings,
            } => Some((r.topic.as_str(), *partitions, settings.as_slice())),
            _ => None,
        })
    }

    /// Whether `apply` (without `--force`) refuses: hazards worse than a note would remain.
    pub fn unsafe_after_apply(&self) -> bool {
        self.after_apply.iter().any(|h| h.severity > Severity::Note)
    }
}

/// Works out the plan from what the cluster said (pure). `observed` has one entry per topic
/// of the topology that exists; `broker_default_ms` is the broker's default retention.
pub fn decide(
    cfg: &TopicsConfig,
    observed: &HashMap<String, Observed>,
    broker_default_ms: Option<i64>,
) -> Plan {
    let topology = &cfg.cluster.topology;
    let brokers = cfg.cluster.brokers.as_str();
    let main_partitions = observed.get(&topology.main).map(|o| o.partitions);
    let main_max_bytes = observed
        .get(&topology.main)
        .and_then(|o| o.max_message_bytes);
    let new_partitions = cfg
        .partitions
        .or(main_partitions.map(|p| p as i32))
        .unwrap_or(3);
    let mut roles: Vec<(String, Role, &str)> =
        vec![("main".into(), Role::Main, topology.main.as_str())];
    roles.extend(
        topology
            .tiers
            .iter()
            .enumerate()
            .map(|(i, t)| (t.label.clone(), Role::Tier(i), t.topic.as_str())),
    );
    roles.push(("dlq".into(), Role::Dlq, topology.dlq.as_str()));
    if let Some(w) = topology.waiting.as_deref() {
        roles.push(("waiting".into(), Role::Waiting, w));
    }
    let (mut rows, mut hazards, mut after_apply) = (Vec::new(), Vec::new(), Vec::new());
    // Topics apply creates get the main topic's partition count, so they have no note.
    let main_after = main_partitions.or(cfg.create_main.then_some(new_partitions as usize));
    for (label, role, topic) in roles {
        let target = match role {
            Role::Main => None,
            Role::Tier(i) => Some(tier_retention_target(
                topology.tiers[i].delay,
                broker_default_ms,
            )),
            Role::Dlq | Role::Waiting => Some(dlq_retention_target(broker_default_ms)),
        };
        let (state, raise_retention) = match observed.get(topic) {
            Some(seen) => {
                hazards.extend(topic_hazards(
                    topology,
                    brokers,
                    role,
                    topic,
                    seen,
                    main_partitions,
                    main_max_bytes,
                ));
                let raise = match (target, seen.retention_ms) {
                    (Some(t), Some(r))
                        if r >= 0 && (t < 0 || r < t) && needs_raise(role, topology, r) =>
                    {
                        Some(t)
                    }
                    _ => None,
                };
                let mut after = seen.clone();
                if let Some(t) = raise {
                    after.retention_ms = Some(t);
                }
                after_apply.extend(topic_hazards(
                    topology,
                    brokers,
                    role,
                    topic,
                    &after,
                    main_after,
                    main_max_bytes,
                ));
                (
                    TopicState::Exists {
                        partitions: seen.partitions,
                    },
                    raise,
                )
            }
            None if role == Role::Main && !cfg.create_main => (TopicState::Missing, None),
            None => {
                let mut settings = Vec::new();
                if let Some(t) = target {
                    settings.push(("cleanup.policy".to_string(), "delete".to_string()));
                    settings.push(("retention.ms".to_string(), t.to_string()));
                    // Takes every record the main topic takes, with the headers a copy adds.
                    if let Some(m) = main_max_bytes {
                        settings.push((
                            "max.message.bytes".to_string(),
                            m.saturating_add(COPY_HEADROOM).to_string(),
                        ));
                    }
                }
                // The waiting log has exactly the main topic's partitions (partition p waits
                // for main partition p), whatever --partitions says.
                let partitions = match (role, main_after) {
                    (Role::Waiting, Some(m)) => m as i32,
                    _ => new_partitions,
                };
                (
                    TopicState::WillCreate {
                        partitions,
                        settings,
                    },
                    None,
                )
            }
        };
        rows.push(Row {
            label,
            role,
            topic: topic.to_string(),
            observed: observed.get(topic).cloned(),
            state,
            raise_retention,
        });
    }
    Plan {
        rows,
        hazards,
        after_apply,
        unreadable: None,
    }
}

/// Whether `apply` raises an existing topic's retention `r`: a tier below its delay plus
/// [`TIER_RETENTION_HEADROOM`], the DLQ below [`DLQ_MIN_RETENTION`].
fn needs_raise(role: Role, topology: &Topology, r: i64) -> bool {
    match role {
        Role::Tier(i) => r < tier_retention_target(topology.tiers[i].delay, None),
        Role::Dlq | Role::Waiting => r < ms(DLQ_MIN_RETENTION),
        Role::Main => false,
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let width = self
            .rows
            .iter()
            .map(|r| r.topic.len())
            .max()
            .unwrap_or(5)
            .max(5);
        writeln!(f, "{:<9} {:<width$}  state", "role", "topic")?;
        for r in &self.rows {
            let mut state = match &r.state {
                TopicState::Exists { partitions } => format!("exists, {partitions} partitions"),
                TopicState::WillCreate {
                    partitions,
                    settings,
                } => {
                    let mut s = format!("missing: apply creates it with {partitions} partitions");
                    if let Some((_, v)) = settings.iter().find(|(k, _)| k == "retention.ms") {
                        let v: i64 = v.parse().unwrap_or(-1);
                        s.push_str(&format!(", retention {}", show_ms(v)));
                    }
                    s
                }
                TopicState::Missing => {
                    "missing: not created (pass --create-main to create it)".to_string()
                }
                TopicState::Created { partitions } => format!("created, {partitions} partitions"),
            };
            if let Some(o) = &r.observed {
                if let Some(p) = &o.cleanup_policy {
                    state.push_str(&format!(", cleanup.policy={p}"));
                }
                if let Some(v) = o.retention_ms {
                    state.push_str(&format!(", retention {}", show_ms(v)));
                }
            }
            if let Some(t) = r.raise_retention {
                state.push_str(&format!(" (apply raises retention to {})", show_ms(t)));
            }
            writeln!(f, "{:<9} {:<width$}  {state}", r.label, r.topic)?;
        }
        if let Some(why) = &self.unreadable {
            writeln!(f, "note: the topics' settings could not be read ({why}); cleanup.policy and retention.ms are not checked")?;
        }
        if !self.hazards.is_empty() {
            writeln!(f, "hazards:")?;
            for h in &self.hazards {
                writeln!(f, "  {h}")?;
            }
        }
        Ok(())
    }
}

fn admin(cluster: &ClusterConfig) -> Result<AdminClient<DefaultClientContext>, KafkaError> {
    kafka::admin_config(cluster).create()
}

/// What the cluster says about the topology.
pub struct Inspected {
    /// Every existing topic of the topology.
    pub observed: HashMap<String, Observed>,
    /// The broker's default retention in ms (-1 unlimited).
    pub broker_default_ms: Option<i64>,
    /// Why the settings could not be read, if they could not.
    pub unreadable: Option<String>,
}

/// What the cluster says: every existing topic of the topology (partitions, and its
/// configuration from `DescribeConfigs`) and the broker's default retention. Settings that
/// cannot be read are left out and the reason kept; only unreachable brokers are an error.
pub async fn inspect(
    admin: &AdminClient<DefaultClientContext>,
    cluster: &ClusterConfig,
) -> Result<Inspected, TopicsError> {
    let md = kafka::metadata(cluster, Duration::from_secs(15)).await?;
    let mut observed: HashMap<String, Observed> = HashMap::new();
    for topic in cluster.topology.topics() {
        if let Some(parts) = kafka::partitions_of(&md, topic) {
            observed.insert(
                topic.to_string(),
                Observed {
                    partitions: parts.len(),
                    ..Observed::default()
                },
            );
        }
    }
    let names: Vec<String> = observed.keys().cloned().collect();
    let mut specs: Vec<ResourceSpecifier<'_>> =
        names.iter().map(|n| ResourceSpecifier::Topic(n)).collect();
    let broker = md.brokers().first().map(|b| b.id());
    if let Some(id) = broker {
        specs.push(ResourceSpecifier::Broker(id));
    }
    let opts = AdminOptions::new().request_timeout(Some(Duration::from_secs(15)));
    let mut broker_default = None;
    let mut unreadable = None;
    let results = match admin.describe_configs(&specs, &opts).await {
        Ok(r) => r,
        Err(e) => {
            unreadable = Some(kafka::Shown(&e).to_string());
            Vec::new()
        }
    };
    for result in results {
        let resource = match result {
            Ok(r) => r,
            Err(code) => {
                unreadable = Some(code.to_string());
                continue;
            }
        };
        let value = |name: &str| resource.get(name).and_then(|e| e.value.clone());
        match &resource.specifier {
            rdkafka::admin::OwnedResourceSpecifier::Topic(name) => {
                if let Some(o) = observed.get_mut(name) {
                    o.cleanup_policy = value("cleanup.policy");
                    o.retention_ms = value("retention.ms").and_then(|v| v.parse().ok());
                    o.max_message_bytes = value("max.message.bytes").and_then(|v| v.parse().ok());
                    o.dynamic = resource
                        .entries
                        .iter()
                        .filter(|e| e.source == ConfigSource::DynamicTopic)
                        .filter_map(|e| Some((e.name.clone(), e.value.clone()?)))
                        .collect();
                }
            }
            rdkafka::admin::OwnedResourceSpecifier::Broker(_) => {
                broker_default = broker_retention_ms(
                    value("log.retention.ms").as_deref(),
                    value("log.retention.minutes").as_deref(),
                    value("log.retention.hours").as_deref(),
                );
            }
            _ => {}
        }
    }
    Ok(Inspected {
        observed,
        broker_default_ms: broker_default,
        unreadable,
    })
}

/// The broker's default retention in ms, by Kafka's precedence: `log.retention.ms`, else
/// `log.retention.minutes`, else `log.retention.hours` (a negative value is unlimited).
pub fn broker_retention_ms(
    ms: Option<&str>,
    minutes: Option<&str>,
    hours: Option<&str>,
) -> Option<i64> {
    let parse = |v: Option<&str>| v.and_then(|v| v.trim().parse::<i64>().ok());
    let unlimited_or = |v: i64, factor: i64| if v < 0 { -1 } else { v.saturating_mul(factor) };
    parse(ms)
        .map(|v| unlimited_or(v, 1))
        .or(parse(minutes).map(|v| unlimited_or(v, 60_000)))
        .or(parse(hours).map(|v| unlimited_or(v, 3_600_000)))
        .or(Some(KAFKA_DEFAULT_RETENTION_MS))
}

/// Reads the cluster and works out what `apply` would do, and which hazards there are.
pub async fn plan(cfg: &TopicsConfig) -> Result<Plan, TopicsError> {
    let admin = admin(&cfg.cluster)?;
    plan_with(&admin, cfg).await
}

async fn plan_with(
    admin: &AdminClient<DefaultClientContext>,
    cfg: &TopicsConfig,
) -> Result<Plan, TopicsError> {
    let seen = inspect(admin, &cfg.cluster).await?;
    let mut plan = decide(cfg, &seen.observed, seen.broker_default_ms);
    plan.unreadable = seen.unreadable;
    Ok(plan)
}

/// The plan of an existing topology, for `rebound run` at start: its hazards, and whether the
/// settings could be read at all.
pub async fn check(cluster: &ClusterConfig) -> Result<Plan, TopicsError> {
    let cfg = TopicsConfig {
        cluster: cluster.clone(),
        partitions: None,
        replication_factor: None,
        create_main: false,
        force: false,
    };
    plan(&cfg).await
}

/// Creates every missing topic (tiers and DLQ with `cleanup.policy=delete` and a sufficient
/// `retention.ms`) and raises retention that is too short. Refuses, before changing anything,
/// when hazards would remain, unless `cfg.force`. Topics created meanwhile by someone else are
/// fine.
pub async fn apply(cfg: &TopicsConfig) -> Result<Plan, TopicsError> {
    let admin = admin(&cfg.cluster)?;
    let mut plan = plan_with(&admin, cfg).await?;
    if plan.unsafe_after_apply() && !cfg.force {
        return Err(TopicsError::Unsafe {
            plan: Box::new(plan),
        });
    }
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let replication = cfg.replication_factor.unwrap_or(-1);
    let new: Vec<NewTopic<'_>> = plan
        .to_create()
        .map(|(name, partitions, settings)| {
            settings.iter().fold(
                NewTopic::new(name, partitions, TopicReplication::Fixed(replication)),
                |t, (k, v)| t.set(k, v),
            )
        })
        .collect();
    let mut failed = Vec::new();
    let mut created = Vec::new();
    if !new.is_empty() {
        for result in admin.create_topics(&new, &opts).await? {
            match result {
                Ok(name) | Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => created.push(name),
                Err((name, code)) => failed.push((name, format!("{code}"))),
            }
        }
    }
    drop(new);
    for name in created {
        mark_created(&mut plan, &name);
    }
    if !failed.is_empty() {
        return Err(TopicsError::CreateFailed(failed));
    }
    // AlterConfigs replaces a topic's whole set of settings: send its own ones again.
    let raises: Vec<(String, Vec<(String, String)>)> = plan
        .rows
        .iter()
        .filter_map(|r| {
            let target = r.raise_retention?;
            let mut settings: Vec<(String, String)> = r
                .observed
                .as_ref()
                .map(|o| o.dynamic.clone())
                .unwrap_or_default();
            settings.retain(|(k, _)| k != "retention.ms");
            settings.push(("retention.ms".into(), target.to_string()));
            Some((r.topic.clone(), settings))
        })
        .collect();
    if !raises.is_empty() {
        let alters: Vec<AlterConfig<'_>> = raises
            .iter()
            .map(|(topic, settings)| {
                settings.iter().fold(
                    AlterConfig::new(ResourceSpecifier::Topic(topic)),
                    |a, (k, v)| a.set(k, v),
                )
            })
            .collect();
        let mut failed = Vec::new();
        for result in admin.alter_configs(&alters, &opts).await? {
            if let Err((spec, code)) = result {
                failed.push((format!("{spec:?}"), code.to_string()));
            }
        }
        if !failed.is_empty() {
            return Err(TopicsError::AlterFailed(failed));
        }
    }
    Ok(plan)
}

fn mark_created(plan: &mut Plan, name: &str) {
    for row in &mut plan.rows {
        if row.topic == name {
            if let TopicState::WillCreate { partitions, .. } = row.state {
                row.state = TopicState::Created { partitions };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::{ClusterConfig, KafkaProps};

    fn cfg() -> TopicsConfig {
        let topology = Topology::new(
            "orders",
            &[Duration::from_secs(60), Duration::from_secs(300)],
        );
        TopicsConfig {
            cluster: ClusterConfig {
                brokers: "b:9092".into(),
                group: "g".into(),
                kafka: KafkaProps::default(),
                topology,
            },
            partitions: None,
            replication_factor: None,
            create_main: false,
            force: false,
        }
    }

    fn seen(partitions: usize, policy: &str, retention_ms: i64) -> Observed {
        Observed {
            partitions,
            cleanup_policy: Some(policy.into()),
            retention_ms: Some(retention_ms),
            max_message_bytes: None,
            dynamic: vec![],
        }
    }

    const WEEK: i64 = 604_800_000;

    /// `--ordering key`: the waiting log is created with the main topic's partitions whatever
    /// `--partitions` says, and fewer partitions or compaction lose messages.
    #[test]
    fn the_waiting_log_keeps_the_main_topic_s_partitions() {
        let mut c = cfg();
        c.cluster.topology.waiting = Some("orders.waiting".into());
        c.partitions = Some(2);
        let main: HashMap<String, Observed> = [("orders".to_string(), seen(6, "delete", WEEK))]
            .into_iter()
            .collect();
        let plan = decide(&c, &main, Some(WEEK));
        let created: Vec<(&str, i32)> = plan.to_create().map(|(t, p, _)| (t, p)).collect();
        assert!(created.contains(&("orders.waiting", 6)), "{created:?}");
        assert!(created.contains(&("orders.dlq", 2)), "{created:?}");
        let mut observed = main.clone();
        observed.insert("orders.waiting".into(), seen(3, "compact", WEEK));
        let plan = decide(&c, &observed, Some(WEEK));
        let losses: Vec<&Hazard> = plan
            .hazards
            .iter()
            .filter(|h| h.topic == "orders.waiting" && h.severity == Severity::Loss)
            .collect();
        assert_eq!(losses.len(), 2, "{plan}");
        assert!(plan.unsafe_after_apply());
        observed.insert("orders.waiting".into(), seen(6, "delete", 3_600_000));
        let plan = decide(&c, &observed, Some(WEEK));
        assert!(!plan.unsafe_after_apply(), "{plan}");
        let row = plan.rows.iter().find(|r| r.topic == "orders.waiting");
        assert_eq!(row.unwrap().raise_retention, Some(WEEK), "{plan}");
    }

    /// A copies topic that takes smaller records than the main topic is a risk (a message of a
    /// size between the two is dead-lettered); `apply` creates them with the main topic's
    /// `max.message.bytes`; each producer's batch limit is the smallest of its topics.
    #[test]
    fn copies_topics_take_what_the_main_topic_takes() {
        let mut c = cfg();
        c.cluster.topology.waiting = Some("orders.waiting".into());
        let sized = |max: i64| Observed {
            max_message_bytes: Some(max),
            ..seen(3, "delete", WEEK)
        };
        let mut observed: HashMap<String, Observed> = [("orders".to_string(), sized(8_388_608))]
            .into_iter()
            .collect();
        let plan = decide(&c, &observed, Some(WEEK));
        for (topic, _, settings) in plan.to_create() {
            assert!(
                settings.contains(&("max.message.bytes".into(), "8404992".into())),
                "{topic}: {settings:?}"
            );
        }
        observed.insert("orders.waiting".into(), sized(4096));
        observed.insert("orders.dlq".into(), sized(1_048_588));
        let plan = decide(&c, &observed, Some(WEEK));
        let risks: Vec<&Hazard> = plan
            .hazards
            .iter()
            .filter(|h| h.problem.starts_with("max.message.bytes="))
            .collect();
        assert_eq!(risks.len(), 2, "{plan}");
        assert!(risks.iter().all(|h| h.severity == Severity::Risk));
        assert!(
            risks.iter().any(|h| h.topic == "orders.waiting"
                && h.problem.contains("instead of waiting behind its key")
                && h.fix.contains("max.message.bytes=8388608")),
            "{plan}"
        );
        assert_eq!(plan.record_limit(|r| r == Role::Waiting), Some(4096));
        assert_eq!(
            plan.record_limit(|r| matches!(r, Role::Tier(_) | Role::Dlq)),
            Some(1_048_588)
        );
        assert_eq!(plan.record_limit(|r| r == Role::Main), Some(8_388_608));
    }

    /// The operator-created topology of issue 14: a compacted tier, a tier whose retention is
    /// shorter than its delay, partition counts that differ.
    #[test]
    fn the_operator_topology_of_issue_14_has_every_hazard_reported() {
        let c = cfg();
        let observed: HashMap<String, Observed> = [
            ("orders", seen(6, "delete", WEEK)),
            ("orders.retry-1m", seen(2, "compact", WEEK)),
            ("orders.retry-5m", seen(6, "delete", 60_000)),
            ("orders.dlq", seen(3, "delete", WEEK)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let plan = decide(&c, &observed, Some(WEEK));
        let of = |topic: &str, s: Severity| {
            plan.hazards
                .iter()
                .filter(|h| h.topic == topic && h.severity == s)
                .count()
        };
        assert_eq!(of("orders.retry-1m", Severity::Loss), 1, "{plan}");
        assert_eq!(of("orders.retry-1m", Severity::Note), 1, "{plan}");
        assert_eq!(of("orders.retry-5m", Severity::Loss), 1, "{plan}");
        assert_eq!(of("orders.dlq", Severity::Note), 1, "{plan}");
        assert_eq!(of("orders", Severity::Note), 0);
        let text = plan.to_string();
        assert!(text.contains("cleanup.policy=delete"), "{text}");
        assert!(
            text.contains("copies are deleted before they are due"),
            "{text}"
        );
        // apply raises the short retention (to delay + 7 days, above the broker's week) but
        // does not change the compaction: it refuses.
        let raise = plan.rows.iter().find(|r| r.topic == "orders.retry-5m");
        assert_eq!(raise.unwrap().raise_retention, Some(300_000 + WEEK));
        assert!(plan.unsafe_after_apply());
        assert!(plan
            .after_apply
            .iter()
            .all(|h| h.topic == "orders.retry-1m" || h.severity == Severity::Note));
    }

    #[test]
    fn retention_rules_and_targets() {
        let c = cfg();
        let t = &c.cluster.topology;
        let tier = |r: i64| {
            topic_hazards(
                t,
                "b",
                Role::Tier(1),
                "x",
                &seen(1, "delete", r),
                Some(1),
                None,
            )
            .iter()
            .map(|h| h.severity)
            .collect::<Vec<_>>()
        };
        assert_eq!(tier(299_999), vec![Severity::Loss]);
        assert_eq!(tier(300_000), vec![Severity::Risk]);
        assert_eq!(tier(300_000 + 86_400_000 - 1), vec![Severity::Risk]);
        assert_eq!(tier(300_000 + 86_400_000), vec![]);
        assert_eq!(tier(-1), vec![], "unlimited");
        let dlq = |r: i64, p: &str| {
            topic_hazards(t, "b", Role::Dlq, "d", &seen(1, p, r), Some(1), None)
                .iter()
                .map(|h| h.severity)
                .collect::<Vec<_>>()
        };
        assert_eq!(dlq(WEEK - 1, "delete"), vec![Severity::Risk]);
        assert_eq!(dlq(WEEK, "delete"), vec![]);
        assert_eq!(dlq(WEEK, "compact,delete"), vec![Severity::Loss]);
        assert_eq!(
            tier_retention_target(Duration::from_secs(60), Some(WEEK)),
            WEEK + 60_000
        );
        assert_eq!(
            tier_retention_target(Duration::from_secs(60), Some(30 * WEEK)),
            30 * WEEK
        );
        assert_eq!(tier_retention_target(Duration::from_secs(60), Some(-1)), -1);
        assert_eq!(dlq_retention_target(Some(3_600_000)), WEEK);
        assert_eq!(broker_retention_ms(None, None, Some("168")), Some(WEEK));
        assert_eq!(broker_retention_ms(Some("-1"), None, Some("168")), Some(-1));
        assert_eq!(
            broker_retention_ms(None, Some("10"), Some("168")),
            Some(600_000)
        );
    }

    #[test]
    fn missing_tiers_are_created_deleting_with_retention_and_a_long_one_is_never_lowered() {
        let mut c = cfg();
        c.create_main = true;
        let plan = decide(&c, &HashMap::new(), Some(WEEK));
        let created: Vec<_> = plan.to_create().collect();
        assert_eq!(created.len(), 4);
        let settings = |topic: &str| {
            created
                .iter()
                .find(|(t, _, _)| *t == topic)
                .map(|(_, _, s)| s.to_vec())
                .unwrap()
        };
        assert!(
            settings("orders").is_empty(),
            "the main topic is the user's"
        );
        assert_eq!(
            settings("orders.retry-5m"),
            vec![
                ("cleanup.policy".to_string(), "delete".to_string()),
                ("retention.ms".to_string(), (WEEK + 300_000).to_string())
            ]
        );
        assert_eq!(settings("orders.dlq")[1].1, WEEK.to_string());
        assert!(plan.hazards.is_empty() && !plan.unsafe_after_apply());

        let long: HashMap<String, Observed> =
            [("orders.retry-1m".to_string(), seen(3, "delete", 100 * WEEK))].into();
        let plan = decide(&cfg(), &long, Some(WEEK));
        assert_eq!(plan.rows[1].raise_retention, None);
    }
}

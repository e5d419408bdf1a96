//! The cluster and topology settings every command resolves: `--brokers`, `--group`, `-X`,
//! `--topic`, `--tiers`, `--dlq` and the retry flags, from flags, then the file, then defaults.

use std::time::Duration;

use super::parse::{bad, load_file, parse_num, positive_duration};
use super::{ConfigError, FileConfig, StringOrList};
use crate::cli::TopologyArgs;
use crate::cluster::{ClusterConfig, KafkaProps};
use crate::defaults;
use crate::duration;
use crate::topology::{check_topic_name, Tier, Topology, MAX_DELAY_FACTOR, MAX_DELAY_FLOOR};

/// Kafka's topic name rules ([`check_topic_name`]), as an error of `field`.
pub fn topic_name(field: &str, name: &str) -> Result<(), ConfigError> {
    check_topic_name(name).map_err(|e| bad(field, e.to_string()))
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
            format!("at least one tier is needed, e.g. {}", defaults::TIERS),
        ));
    }
    Ok(delays)
}

/// Resolves the topology flags and the `--config` file they name, as every command does.
pub fn resolve_cluster(args: &TopologyArgs) -> Result<ClusterConfig, ConfigError> {
    let file = load_file(&args.connect)?;
    cluster_from(args, &file)
}

/// The cluster settings from the flags, then the file, then the defaults.
pub(crate) fn cluster_from(
    args: &TopologyArgs,
    file: &FileConfig,
) -> Result<ClusterConfig, ConfigError> {
    let topic = args
        .names
        .topic
        .clone()
        .or(file.topic.clone())
        .ok_or_else(|| {
            bad(
                "--topic",
                "missing: name the main topic, e.g. --topic orders",
            )
        })?;
    topic_name("--topic", &topic)?;
    let brokers = args
        .connect
        .brokers
        .clone()
        .or(file.brokers.clone())
        .unwrap_or_else(|| defaults::BROKERS.to_string());
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
    let tier_items: Vec<String> = match (&args.tiers.tiers, &file.tiers) {
        (Some(s), _) | (None, Some(StringOrList::One(s))) => {
            s.split(',').map(str::to_string).collect()
        }
        (None, Some(StringOrList::Many(v))) => v.clone(),
        (None, None) => defaults::TIERS.split(',').map(str::to_string).collect(),
    };
    let delays = parse_tiers("--tiers", &tier_items)?;
    let mut topology = Topology::new(&topic, &delays);
    for tier in &topology.tiers {
        topic_name("--tiers", &tier.topic)?;
    }
    if let Some(dlq) = args.names.dlq.clone().or(file.dlq.clone()) {
        topology.dlq = dlq;
    }
    topic_name("--dlq", &topology.dlq)?;
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
    topology.max_retries = match args.retry.max_retries.as_deref() {
        Some(s) => parse_num::<u32>("--max-retries", s)?,
        None => file.max_retries.unwrap_or(delays.len() as u32),
    };
    if topology.max_retries > 1000 {
        return Err(bad("--max-retries", "must be at most 1000"));
    }
    topology.max_age = match args.retry.max_age.as_deref().or(file.max_age.as_deref()) {
        None | Some("off") => None,
        Some(s) => Some(positive_duration("--max-age", Some(s), Duration::ZERO)?),
    };
    topology.jitter = match args.retry.jitter.as_deref() {
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
    if let Some(s) = args
        .retry
        .max_delay
        .as_deref()
        .or(file.max_delay.as_deref())
    {
        topology.max_delay = positive_duration("--max-delay", Some(s), Duration::ZERO)?;
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
                MAX_DELAY_FACTOR,
                duration::format(MAX_DELAY_FLOOR),
            ),
        ));
    }
    match args
        .ordering
        .ordering
        .as_deref()
        .or(file.ordering.as_deref())
        .map(str::trim)
    {
        None | Some("none") => {}
        Some("key") => {
            let waiting = Topology::waiting_topic(&topology.main);
            topic_name("--ordering", &waiting)?;
            topology.waiting = Some(waiting);
        }
        Some(other) => {
            return Err(bad(
                "--ordering",
                format!("{other:?} is not an ordering; use none (the default) or key"),
            ))
        }
    }
    let kafka = KafkaProps::parse(file.kafka_properties(), &args.connect.kafka)
        .map_err(|e| bad("-X", e.to_string()))?;
    Ok(ClusterConfig {
        brokers,
        group,
        kafka,
        topology,
    })
}

//! Settings of `rebound topics plan|apply`.

use super::parse::{bad, load_file, parse_num};
use super::topology::cluster_from;
use super::ConfigError;
use crate::cli::{TopicsArgs, TopologyArgs};
use crate::cluster::ClusterConfig;

/// Settings of `rebound topics plan|apply`.
#[derive(Debug, Clone)]
pub struct TopicsConfig {
    /// The cluster and the topology whose topics are planned.
    pub cluster: ClusterConfig,
    /// Partitions of new topics; `None`: the main topic's count, else 3.
    pub partitions: Option<i32>,
    /// Replication factor of new topics; `None`: the broker's default.
    pub replication_factor: Option<i32>,
    /// Also create the main topic.
    pub create_main: bool,
    /// `apply` accepts a topology with hazards instead of refusing it.
    pub force: bool,
}

impl TopicsConfig {
    /// Resolves `topics plan|apply`'s flags.
    pub fn resolve(args: &TopicsArgs) -> Result<TopicsConfig, ConfigError> {
        let file = load_file(&args.connect)?;
        let topology = TopologyArgs::of(&args.connect, &args.names)
            .with_tiers(&args.tiers)
            .with_ordering(&args.ordering);
        let cluster = cluster_from(&topology, &file)?;
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

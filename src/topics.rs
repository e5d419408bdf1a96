//! `rebound topics plan|apply`: what the topology's topics look like, and creating the missing
//! ones. Idempotent: a topic that exists is reported, never altered.

use std::fmt;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

use crate::config::TopicsConfig;
use crate::kafka;

/// Why planning or applying failed.
#[derive(Debug, thiserror::Error)]
pub enum TopicsError {
    #[error("cannot reach the brokers at {brokers}: {error}")]
    Unreachable { brokers: String, error: KafkaError },
    #[error("kafka admin client: {}", crate::kafka::Shown(.0))]
    Kafka(#[from] KafkaError),
    #[error("could not create {}", .0.iter().map(|(t, e)| format!("{t} ({e})")).collect::<Vec<_>>().join(", "))]
    CreateFailed(Vec<(String, String)>),
}

/// One topic of the topology and what is (or will be) true of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// `main`, `retry-2m`, …, `dlq`
    pub role: String,
    pub topic: String,
    pub state: TopicState,
    /// A partition count that differs from the main topic's.
    pub note: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicState {
    Exists {
        partitions: usize,
    },
    /// Missing; `apply` creates it with this many partitions.
    WillCreate {
        partitions: i32,
    },
    /// Missing, and `apply` leaves it alone (the main topic without `--create-main`).
    Missing,
    Created {
        partitions: i32,
    },
}

/// The whole plan, printable as a table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub rows: Vec<Row>,
}

impl Plan {
    pub fn to_create(&self) -> impl Iterator<Item = (&str, i32)> {
        self.rows.iter().filter_map(|r| match r.state {
            TopicState::WillCreate { partitions } => Some((r.topic.as_str(), partitions)),
            _ => None,
        })
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
            let state = match &r.state {
                TopicState::Exists { partitions } => format!("exists, {partitions} partitions"),
                TopicState::WillCreate { partitions } => {
                    format!("missing: apply creates it with {partitions} partitions")
                }
                TopicState::Missing => {
                    "missing: not created (pass --create-main to create it)".to_string()
                }
                TopicState::Created { partitions } => format!("created, {partitions} partitions"),
            };
            write!(f, "{:<9} {:<width$}  {state}", r.role, r.topic)?;
            if let Some(note) = &r.note {
                write!(f, "  ({note})")?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

fn admin(cfg: &TopicsConfig) -> Result<AdminClient<DefaultClientContext>, KafkaError> {
    let mut c = kafka::base_config(&cfg.cluster);
    for (k, v) in &cfg.cluster.kafka.0 {
        c.set(k, v);
    }
    c.create()
}

/// Reads the cluster's metadata and works out what `apply` would do.
pub fn plan(cfg: &TopicsConfig) -> Result<Plan, TopicsError> {
    let admin = admin(cfg)?;
    plan_with(&admin, cfg)
}

fn plan_with(
    admin: &AdminClient<DefaultClientContext>,
    cfg: &TopicsConfig,
) -> Result<Plan, TopicsError> {
    let md = admin
        .inner()
        .fetch_metadata(None, Duration::from_secs(15))
        .map_err(|error| TopicsError::Unreachable {
            brokers: cfg.cluster.brokers.clone(),
            error,
        })?;
    let existing = |name: &str| {
        md.topics()
            .iter()
            .find(|t| t.name() == name && t.error().is_none() && !t.partitions().is_empty())
            .map(|t| t.partitions().len())
    };
    let topology = &cfg.cluster.topology;
    let main_partitions = existing(&topology.main);
    let new_partitions = cfg
        .partitions
        .or(main_partitions.map(|p| p as i32))
        .unwrap_or(3);
    let mut rows = Vec::new();
    let mut roles: Vec<(String, &str)> = vec![("main".to_string(), topology.main.as_str())];
    roles.extend(
        topology
            .tiers
            .iter()
            .map(|t| (t.label.clone(), t.topic.as_str())),
    );
    roles.push(("dlq".to_string(), topology.dlq.as_str()));
    for (role, topic) in roles {
        let is_main = role == "main";
        let state = match existing(topic) {
            Some(partitions) => TopicState::Exists { partitions },
            None if is_main && !cfg.create_main => TopicState::Missing,
            None => TopicState::WillCreate {
                partitions: new_partitions,
            },
        };
        let note = match (&state, main_partitions) {
            (TopicState::Exists { partitions }, Some(m)) if !is_main && *partitions != m => {
                Some(format!("main has {m} partitions"))
            }
            _ => None,
        };
        rows.push(Row {
            role,
            topic: topic.to_string(),
            state,
            note,
        });
    }
    Ok(Plan { rows })
}

/// Creates every missing topic of the plan. Topics created meanwhile by someone else are fine.
pub async fn apply(cfg: &TopicsConfig) -> Result<Plan, TopicsError> {
    let admin = admin(cfg)?;
    let mut plan = plan_with(&admin, cfg)?;
    let replication = cfg.replication_factor.unwrap_or(-1);
    let new: Vec<NewTopic<'_>> = plan
        .to_create()
        .map(|(name, partitions)| {
            NewTopic::new(name, partitions, TopicReplication::Fixed(replication))
        })
        .collect();
    if new.is_empty() {
        return Ok(plan);
    }
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = admin.create_topics(&new, &opts).await?;
    let mut failed = Vec::new();
    for result in results {
        match result {
            Ok(name) => mark_created(&mut plan, &name),
            Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => mark_created(&mut plan, &name),
            Err((name, code)) => failed.push((name, format!("{code}"))),
        }
    }
    if failed.is_empty() {
        Ok(plan)
    } else {
        Err(TopicsError::CreateFailed(failed))
    }
}

fn mark_created(plan: &mut Plan, name: &str) {
    for row in &mut plan.rows {
        if row.topic == name {
            if let TopicState::WillCreate { partitions } = row.state {
                row.state = TopicState::Created { partitions };
            }
        }
    }
}

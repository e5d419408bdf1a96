//! Which consumer group protocol `rebound run` uses (pure).
//!
//! Both keep the partitions that do not move working through a rebalance (incremental
//! assignment), so that a membership change repeats at most the in-flight work of the
//! partitions that move:
//!
//! * **`consumer`** — the KIP-848 consumer group protocol (Apache Kafka 4.0+, GA in librdkafka
//!   2.12): the broker assigns, and owns the session timeout and heartbeat interval
//!   (`group.consumer.*` broker settings). librdkafka refuses `session.timeout.ms`,
//!   `heartbeat.interval.ms` and `partition.assignment.strategy` with it (`group.remote.assignor`
//!   picks a broker assignor instead).
//! * **`classic`** with the **`cooperative-sticky`** assignor (KIP-429): the members assign, and
//!   revoke only what moves. librdkafka refuses a strategy list that mixes eager assignors
//!   (`range`, `roundrobin`) with `cooperative-sticky`, and members with eager and cooperative
//!   assignors cannot share a group (hence no rolling change from rebound's former
//!   `range,roundrobin`; see the README).
//!
//! The default is `consumer` when the broker offers it ([`crate::probe`]) and the user set
//! none of the properties it refuses; else `classic` with `cooperative-sticky`. A user's
//! `-X group.protocol` and `-X partition.assignment.strategy` are followed; a combination
//! librdkafka would refuse is a configuration error (exit 2) that says what to change.

/// librdkafka properties the consumer protocol refuses (the broker owns them).
pub const REFUSED_WITH_CONSUMER: [&str; 3] = [
    "session.timeout.ms",
    "heartbeat.interval.ms",
    "partition.assignment.strategy",
];

/// The classic protocol's assignor unless the user names one.
pub const DEFAULT_CLASSIC_ASSIGNOR: &str = "cooperative-sticky";

const EAGER_ASSIGNORS: [&str; 2] = ["range", "roundrobin"];

/// The protocol a consumer joins its group with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Protocol {
    /// `group.protocol=consumer` (KIP-848).
    Consumer,
    /// `group.protocol=classic` with `partition.assignment.strategy=assignor`.
    Classic {
        /// `partition.assignment.strategy`, e.g. `cooperative-sticky`.
        assignor: String,
    },
}

impl Protocol {
    /// The librdkafka properties that select it.
    pub fn properties(&self) -> Vec<(&'static str, String)> {
        match self {
            Protocol::Consumer => vec![("group.protocol", "consumer".into())],
            Protocol::Classic { assignor } => vec![
                ("group.protocol", "classic".into()),
                ("partition.assignment.strategy", assignor.clone()),
            ],
        }
    }

    /// Whether members revoke only the partitions that move (no stop-the-world rebalance).
    pub fn incremental(&self) -> bool {
        match self {
            Protocol::Consumer => true,
            Protocol::Classic { assignor } => !has_eager(assignor),
        }
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Protocol::Consumer => write!(f, "consumer (KIP-848)"),
            Protocol::Classic { assignor } => write!(f, "classic ({assignor})"),
        }
    }
}

/// The choice and the reason for it, for the start-up log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    /// The protocol to join with.
    pub protocol: Protocol,
    /// Why, in a few words (the broker's answer, or the user's `-X`).
    pub why: &'static str,
}

/// A group setting librdkafka (or the broker) would refuse; the message says what to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GroupConflict {
    /// A classic-only property (named) with `group.protocol=consumer`.
    #[error("{0} cannot be set with group.protocol=consumer (the broker owns the session timeout, heartbeat interval and assignment there: its group.consumer.* settings, or -X group.remote.assignor); drop -X {0}, or keep it with -X group.protocol=classic")]
    RefusedWithConsumer(String),
    #[error("partition.assignment.strategy={0:?} mixes eager (range, roundrobin) and cooperative (cooperative-sticky) assignors, which librdkafka refuses; use cooperative-sticky alone (README: \"Consumer group protocol\" has the upgrade path)")]
    /// The assignor list (given) mixes eager and cooperative assignors.
    MixedAssignors(String),
    /// A `group.protocol` value (given) librdkafka does not know.
    #[error("group.protocol={0:?} is neither `consumer` nor `classic`")]
    UnknownProtocol(String),
    #[error("group.protocol=consumer, but the broker does not offer the KIP-848 consumer group protocol (Apache Kafka 4.0+ does); use -X group.protocol=classic, or leave group.protocol out to let rebound choose")]
    /// `group.protocol=consumer` against a broker without KIP-848.
    BrokerLacksConsumer,
}

fn user<'a>(props: &'a [(String, String)], key: &str) -> Option<&'a str> {
    props
        .iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.trim())
}

fn has_eager(strategy: &str) -> bool {
    strategy
        .split(',')
        .any(|a| EAGER_ASSIGNORS.contains(&a.trim()))
}

fn classic_assignor(props: &[(String, String)]) -> Result<String, GroupConflict> {
    let Some(strategy) = user(props, "partition.assignment.strategy") else {
        return Ok(DEFAULT_CLASSIC_ASSIGNOR.to_string());
    };
    let cooperative = strategy
        .split(',')
        .any(|a| a.trim() == DEFAULT_CLASSIC_ASSIGNOR);
    if cooperative && has_eager(strategy) {
        return Err(GroupConflict::MixedAssignors(strategy.to_string()));
    }
    Ok(strategy.to_string())
}

/// The conflicts that the user's `-X` properties (`props`, later entries win) show on their
/// own, before any broker is asked: for configuration checks (exit 2).
pub fn check(props: &[(String, String)]) -> Result<(), GroupConflict> {
    choose(props, None).map(|_| ())
}

/// Chooses the protocol from the user's `-X` properties and whether the broker offers the
/// consumer protocol (`None`: not known, e.g. the probe could not run over TLS/SASL).
pub fn choose(
    props: &[(String, String)],
    broker_has_consumer: Option<bool>,
) -> Result<Choice, GroupConflict> {
    let refused = REFUSED_WITH_CONSUMER
        .iter()
        .find(|k| user(props, k).is_some());
    match user(props, "group.protocol")
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("consumer") => {
            if let Some(k) = refused {
                return Err(GroupConflict::RefusedWithConsumer(k.to_string()));
            }
            if broker_has_consumer == Some(false) {
                return Err(GroupConflict::BrokerLacksConsumer);
            }
            Ok(Choice {
                protocol: Protocol::Consumer,
                why: "-X group.protocol=consumer",
            })
        }
        Some("classic") => Ok(Choice {
            protocol: Protocol::Classic {
                assignor: classic_assignor(props)?,
            },
            why: "-X group.protocol=classic",
        }),
        Some(other) => Err(GroupConflict::UnknownProtocol(other.to_string())),
        None => {
            let protocol_classic = || -> Result<Protocol, GroupConflict> {
                Ok(Protocol::Classic {
                    assignor: classic_assignor(props)?,
                })
            };
            if refused.is_some() {
                return Ok(Choice {
                    protocol: protocol_classic()?,
                    why: "a -X property the consumer protocol refuses is set (session.timeout.ms, heartbeat.interval.ms or partition.assignment.strategy)",
                });
            }
            Ok(match broker_has_consumer {
                Some(true) => Choice {
                    protocol: Protocol::Consumer,
                    why: "the broker offers the KIP-848 consumer group protocol",
                },
                Some(false) => Choice {
                    protocol: protocol_classic()?,
                    why: "the broker does not offer the KIP-848 consumer group protocol",
                },
                None => Choice {
                    protocol: protocol_classic()?,
                    why: "the broker's protocols were not probed (not plaintext, or unreachable)",
                },
            })
        }
    }
}

/// Checks a static member name (`--instance-id`, librdkafka's `group.instance.id`): Kafka
/// accepts 1 to 249 characters of `[a-zA-Z0-9._-]` (the broker's
/// `JoinGroupRequest.validateGroupInstanceId`).
pub fn check_instance_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > 249 {
        return Err("must be 1 to 249 characters".into());
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "{c:?} is not allowed; use letters, digits, '.', '_' and '-' (a pod name fits)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn cooperative() -> Protocol {
        Protocol::Classic {
            assignor: "cooperative-sticky".into(),
        }
    }

    #[test]
    fn the_broker_decides_when_the_user_does_not() {
        let none = props(&[]);
        assert_eq!(
            choose(&none, Some(true)).unwrap().protocol,
            Protocol::Consumer
        );
        assert_eq!(choose(&none, Some(false)).unwrap().protocol, cooperative());
        assert_eq!(choose(&none, None).unwrap().protocol, cooperative());
    }

    #[test]
    fn a_classic_only_setting_keeps_the_classic_protocol_with_the_users_values() {
        let p = props(&[("session.timeout.ms", "6000")]);
        assert_eq!(choose(&p, Some(true)).unwrap().protocol, cooperative());
        let p = props(&[("partition.assignment.strategy", "range,roundrobin")]);
        let chosen = choose(&p, Some(true)).unwrap().protocol;
        assert_eq!(
            chosen,
            Protocol::Classic {
                assignor: "range,roundrobin".into()
            }
        );
        assert!(
            !chosen.incremental(),
            "an eager list is followed, not incremental"
        );
    }

    #[test]
    fn the_users_protocol_is_followed_and_conflicts_say_what_to_change() {
        let p = props(&[("group.protocol", "consumer")]);
        assert_eq!(choose(&p, None).unwrap().protocol, Protocol::Consumer);
        assert_eq!(
            choose(&p, Some(false)),
            Err(GroupConflict::BrokerLacksConsumer)
        );
        let p = props(&[
            ("group.protocol", "consumer"),
            ("session.timeout.ms", "6000"),
        ]);
        let e = check(&p).unwrap_err();
        assert_eq!(
            e,
            GroupConflict::RefusedWithConsumer("session.timeout.ms".into())
        );
        assert!(e.to_string().contains("group.protocol=classic"), "{e}");
        let p = props(&[("group.protocol", "classic")]);
        assert_eq!(choose(&p, Some(true)).unwrap().protocol, cooperative());
        let p = props(&[("group.protocol", "eager")]);
        assert!(matches!(check(&p), Err(GroupConflict::UnknownProtocol(_))));
        let p = props(&[("partition.assignment.strategy", "range,cooperative-sticky")]);
        assert!(matches!(check(&p), Err(GroupConflict::MixedAssignors(_))));
        assert!(check(&props(&[])).is_ok());
    }

    #[test]
    fn instance_ids_follow_kafkas_rule() {
        assert!(check_instance_id("orders-worker-7f9c-0").is_ok());
        assert!(check_instance_id("").is_err());
        assert!(check_instance_id("a b").is_err());
        assert!(check_instance_id(&"x".repeat(250)).is_err());
    }
}

//! Where the cluster is and how to reach it: [`ClusterConfig`] (brokers, group, the user's
//! librdkafka properties, the topology) and [`KafkaProps`], the `-X` properties, parsed once
//! here for every command.
//!
//! A low module: the Kafka clients (`kafka`, `produce`) depend on it, and it depends only on the
//! topology. The flags, env vars and file that fill it are resolved in [`crate::config`].

use std::fmt;

use crate::topology::Topology;

/// librdkafka properties rebound sets itself; overriding them would break its guarantees.
const RESERVED: [(&str, &str); 7] = [
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
    (
        "transactional.id",
        "use --exactly-once with --instance-id (it is <group>.<instance-id>)",
    ),
];

/// A `-X` property (or `[kafka]` file entry) rebound cannot take.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PropertyError {
    /// The item has no `=`.
    #[error("{0:?} is not KEY=VALUE")]
    NotKeyValue(String),
    /// The property is one rebound sets itself.
    #[error("{key} is set by rebound: {hint}")]
    Reserved {
        /// The property's name.
        key: String,
        /// What to do instead.
        hint: &'static str,
    },
}

/// librdkafka properties, in the order given, with secrets hidden from `Debug` and `Display`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct KafkaProps(pub Vec<(String, String)>);

impl KafkaProps {
    /// The properties of the `[kafka]` file table (`file`, values as text) overridden by the
    /// `-X KEY=VALUE` items: a later key replaces an earlier one. Refuses an item without `=`
    /// and the properties rebound sets itself (`bootstrap.servers`, `group.id`, auto-commit,
    /// offset store, `isolation.level`, `group.instance.id`).
    pub fn parse(
        file: impl IntoIterator<Item = (String, String)>,
        items: &[String],
    ) -> Result<KafkaProps, PropertyError> {
        let mut props: Vec<(String, String)> = file.into_iter().collect();
        for item in items {
            let (k, v) = item
                .split_once('=')
                .ok_or_else(|| PropertyError::NotKeyValue(item.clone()))?;
            props.retain(|(key, _)| key != k.trim());
            props.push((k.trim().to_string(), v.to_string()));
        }
        for (k, _) in &props {
            if let Some((_, hint)) = RESERVED.iter().find(|(name, _)| name == k) {
                return Err(PropertyError::Reserved {
                    key: k.clone(),
                    hint,
                });
            }
        }
        Ok(KafkaProps(props))
    }

    /// The value of `key` the user set, if any.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

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

    /// The properties with every secret's value replaced by `[redacted]`.
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
    /// Bootstrap brokers, `HOST:PORT[,HOST:PORT...]`.
    pub brokers: String,
    /// The consumer group (the service's, or a replay's own).
    pub group: String,
    /// The user's librdkafka properties.
    pub kafka: KafkaProps,
    /// The topics and the routing settings.
    pub topology: Topology,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn flags_replace_file_properties_and_reserved_ones_are_refused() {
        let file = vec![
            ("linger.ms".to_string(), "5".to_string()),
            ("acks".to_string(), "1".to_string()),
        ];
        let p = KafkaProps::parse(file, &items(&["acks=all", " x.y = z"])).unwrap();
        assert_eq!(
            p.0,
            vec![
                ("linger.ms".into(), "5".into()),
                ("acks".into(), "all".into()),
                ("x.y".into(), " z".into())
            ]
        );
        assert_eq!(p.get("acks"), Some("all"));
        assert_eq!(
            KafkaProps::parse(Vec::new(), &items(&["novalue"])),
            Err(PropertyError::NotKeyValue("novalue".into()))
        );
        assert!(matches!(
            KafkaProps::parse(Vec::new(), &items(&["group.id=g"])),
            Err(PropertyError::Reserved { .. })
        ));
    }
}

//! The defaults of the command-line settings that no other module owns: written once here, read
//! by the CLI's `--help`, by the configuration's resolution and by [`crate::Config::new`].
//!
//! The breaker's defaults are [`crate::breaker::BreakerConfig::default`] and the tier buffer's
//! are the `DEFAULT_*` constants of [`crate::delay`]; a topology's own (one retry per tier, no
//! max age, no jitter, the max delay) are [`crate::topology::Topology::new`]'s.

use std::time::Duration;

/// `--brokers`.
pub const BROKERS: &str = "127.0.0.1:9092";
/// `--tiers` of `run`, `topics`, `replay-dlq` and `console`.
pub const TIERS: &str = "2m,4m,8m,16m,32m";
/// `run --metrics-addr`.
pub const METRICS_ADDR: &str = "0.0.0.0:9464";
/// `--handler-timeout`.
pub const HANDLER_TIMEOUT: Duration = Duration::from_secs(10);
/// `--max-in-flight`.
pub const MAX_IN_FLIGHT: usize = 32;
/// `--commit-interval`.
pub const COMMIT_INTERVAL: Duration = Duration::from_secs(1);
/// `--shutdown-timeout`.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
/// `--max-replays` of `replay-dlq` and `console`.
pub const MAX_REPLAYS: u32 = 3;
/// `console --listen`.
pub const CONSOLE_LISTEN: &str = "127.0.0.1:9465";
/// `demo --messages`.
pub const DEMO_MESSAGES: usize = 300;
/// `demo --tiers`.
pub const DEMO_TIERS: &str = "2s,4s,8s";
/// `demo --failure-rate`.
pub const DEMO_FAILURE_RATE: f64 = 0.3;
/// `demo --metrics-addr`.
pub const DEMO_METRICS_ADDR: &str = "127.0.0.1:9464";

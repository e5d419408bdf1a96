//! The integration tests, against the real broker `scripts/test` starts: one test binary (each
//! binary links librdkafka and rebound; one link instead of 23), one module per area. Run one
//! area with `scripts/test --test <module>` (e.g. `--test dlq`), which filters on `<module>::`.
//!
//! Shared helpers: `common` (broker address, unique names, producing, reading with a deadline,
//! the recording handler, `wait_until`, running rebound in-process), `rel` (the reliability
//! suite's processes, traffic and checks), `console_fixture` (a DLQ to browse),
//! `rebal` (the rebalance tests' group member, protocols and revoke log).

mod common;
mod console_fixture;
mod rebal;
mod rel;

mod breaker;
mod broker_compat;
mod broker_probe;
mod cases;
mod cli;
mod compose;
mod console;
mod console_browser;
mod demo;
mod dlq;
mod docs;
mod exactly_once;
mod http_handler;
mod key_order;
mod observability;
mod readahead;
mod rebalance;
mod reliability_broker;
mod reliability_chaos;
mod reliability_crash;
mod reliability_hostile;
mod reliability_rebalance;
mod reliability_secrets;
mod reliability_soak;
mod reliability_stop;
mod topology_flow;

//! rebound: a production-grade retry topology for any Kafka topic.
//!
//! Messages of a main topic go to a [`Handler`]. Transient failures are produced to delay-tier
//! topics (`<main>.retry-2m`, …) with a `process_after` header; each tier partition is paused
//! until its head message is due. Permanent failures and exhausted or expired messages go to
//! `<main>.dlq`. Offsets are committed only for finished work (at-least-once).
//!
//! See `ARCHITECTURE.md` for the data flow and the invariants.

pub mod breaker;
pub mod cli;
pub mod config;
pub mod console;
pub mod delay;
pub mod demo;
pub mod dlq;
pub mod duration;
pub mod group;
pub mod handler;
pub mod headers;
pub mod kafka;
pub mod metrics;
pub mod offsets;
pub mod ordering;
pub mod pipeline;
pub mod probe;
pub mod produce;
pub mod router;
pub mod service;
pub mod shutdown;
pub mod status;
pub mod topics;
pub mod topology;

pub use config::Config;
pub use handler::{Handler, Message, Outcome};
pub use service::{Service, ServiceError};
pub use topology::Topology;

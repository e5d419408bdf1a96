//! rebound: a production-grade retry topology for any Kafka topic.
//!
//! Messages of a main topic go to a [`Handler`]. Transient failures are produced to delay-tier
//! topics (`<main>.retry-2m`, …) with a `process_after` header; tier partitions are read ahead
//! into a bounded buffer and each message is handled when it is due (a partition whose buffer is
//! full is paused). Permanent failures and exhausted or expired messages go to
//! `<main>.dlq`. Offsets are committed only for finished work (at-least-once).
//!
//! # Embedding
//!
//! A program that handles the messages itself builds a [`Config`] ([`Config::new`] has every
//! default), a [`Handler`] (or [`handler_fn`]) and runs a [`Service`] until its cancellation
//! token fires; `examples/embedded.rs` shows it. The built-in handlers are
//! [`handler::http::HttpHandler`] and [`handler::command::CommandHandler`].
//!
//! Everything else — the `rebound` binary's commands and the pieces the test suite reaches
//! into — is in modules hidden from these docs: they are not a stable API.
//!
//! See `ARCHITECTURE.md` for the data flow and the invariants.

#![deny(missing_docs)]

pub mod breaker;
#[doc(hidden)]
pub mod cli;
mod cluster;
pub mod config;
#[doc(hidden)]
pub mod console;
mod defaults;
pub mod delay;
#[doc(hidden)]
pub mod demo;
#[doc(hidden)]
pub mod dlq;
#[doc(hidden)]
pub mod duration;
pub mod group;
pub mod handler;
#[doc(hidden)]
pub mod headers;
#[doc(hidden)]
pub mod kafka;
mod keyorder;
#[cfg(test)]
mod layers;
#[doc(hidden)]
pub mod metrics;
mod offsets;
mod ordering;
mod pipeline;
#[doc(hidden)]
pub mod probe;
mod produce;
mod router;
mod service;
mod status;
#[doc(hidden)]
pub mod topics;
pub mod topology;

pub use breaker::BreakerConfig;
pub use cluster::{ClusterConfig, KafkaProps};
pub use config::{Config, HandlerSpec};
pub use delay::BufferBounds;
pub use handler::{handler_fn, Failure, Handler, HandlerFn, Message, Outcome};
pub use service::{Service, ServiceError};
pub use topology::{Tier, Topology};

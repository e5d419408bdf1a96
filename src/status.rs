//! What `GET /status` of `rebound run` reports: the poll loop's state per assigned partition and
//! the circuit breaker, as a snapshot the loop publishes (see [`Snapshot`]).
//!
//! No key, payload or header value ever appears here: only topic names, partition numbers,
//! offsets, counts and times.

use serde::Serialize;

/// The state of one assigned partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PartitionStatus {
    pub topic: String,
    /// `main` or the tier label (`retry-2m`).
    pub stage: String,
    pub partition: i32,
    /// Fetching is paused: its head is held until due, or the breaker is open.
    pub paused: bool,
    /// Why it is paused: `due` (a held head), `breaker`, or `revoking` (its running jobs finish
    /// before it is given up); absent when fetching.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paused_for: Option<&'static str>,
    /// When the held head is due (RFC 3339 UTC, milliseconds).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub head_due: Option<String>,
    /// Messages held behind the paused head, the head included.
    pub buffered: usize,
    /// Messages read and not yet finished (handled, or their copy acknowledged); includes the
    /// buffered ones.
    pub in_flight: usize,
    /// The offset stored for commit (the next to read; committed at the next commit interval).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub committed_offset: Option<i64>,
}

/// The whole service, as the poll loop last published it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Snapshot {
    pub version: &'static str,
    /// When the loop published this (RFC 3339 UTC); absent before the loop started.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<String>,
    /// `closed`, `half-open` or `open`.
    pub breaker: &'static str,
    /// Messages read and not finished, over every partition.
    pub in_flight: usize,
    pub partitions: Vec<PartitionStatus>,
}

impl Default for Snapshot {
    fn default() -> Self {
        Snapshot {
            version: env!("CARGO_PKG_VERSION"),
            updated_at: None,
            breaker: "closed",
            in_flight: 0,
            partitions: Vec::new(),
        }
    }
}

/// How often the loop publishes at most (and at least while it is busy). An idle loop wakes at
/// every commit interval, so a snapshot is never older than that plus this.
pub const PUBLISH_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

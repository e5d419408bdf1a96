//! `replay-dlq --exactly-once` (issue 18): replay's stream of Kafka transactions.
//!
//! In this mode replay produces nothing one by one. Each copy to send, with its ledger record,
//! is held in a [`Batch`]; every [`INTERVAL`], after [`MAX_MESSAGES`] copies or [`MAX_BYTES`]
//! of payload, and when the replay ends, one transaction produces the held copies and their
//! ledger records and sends the replay group's offsets (those [`super::Decided`] allows, the
//! same rule as the at-least-once commit) to the group's coordinator
//! (`send_offsets_to_transaction`, KIP-447). A copy is thus never visible to a
//! `read_committed` reader without its ledger record and the offset past its DLQ message, nor
//! the reverse: a replay killed at any point resumes after the last committed transaction and
//! sends nothing twice.
//!
//! The `transactional.id` is stable (`<replay group>.replay-dlq`,
//! [`crate::config::ReplayConfig::transactional_id`]): `init_transactions` at the start of
//! the next run aborts a killed run's open transaction (and fences a replay of the same group
//! still running, whose next commit then fails: the wanted outcome).
//!
//! A failed transaction is aborted and the same held batch is tried again (nothing of it was
//! visible); after [`ATTEMPTS`] failures, or a fatal error (fenced), the run stops with
//! [`super::DlqError::Transaction`] and the next run starts from the last committed offsets.

use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer as _;
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};

use super::{Decided, Ledger, Shared};
use crate::headers::Header;
use crate::produce::{Producer, Record};

/// How long copies wait for their transaction at most.
pub const INTERVAL: Duration = Duration::from_millis(100);
/// Held copies after which the transaction is committed before [`INTERVAL`] is up.
pub const MAX_MESSAGES: usize = 500;
/// Held key and payload bytes after which the transaction is committed early (bounds memory).
pub const MAX_BYTES: usize = 16 << 20;
/// How long one transactional call (offsets, commit, abort) may wait for the broker.
pub const TIMEOUT: Duration = Duration::from_secs(30);
/// Tries of one batch (each after an abort) before the run gives up.
pub const ATTEMPTS: u32 = 3;

/// Whether `count` held copies of `bytes` key and payload bytes, the oldest batch started
/// `age` ago, call for a transaction now.
fn due(count: usize, bytes: usize, age: Duration) -> bool {
    count >= MAX_MESSAGES || bytes >= MAX_BYTES || age >= INTERVAL
}

/// One copy waiting for its transaction, with its ledger record.
pub struct Held {
    /// The DLQ position it came from.
    pub partition: i32,
    pub offset: i64,
    /// The destination topic.
    pub topic: String,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub headers: Vec<Header>,
    /// The ledger record: key ([`super::ledger_key`]) and value.
    pub ledger_key: String,
    pub ledger_value: String,
}

/// The transactional producer and the copies held for its next transaction.
pub struct Batch {
    producer: Producer,
    ledger_topic: String,
    held: Vec<Held>,
    bytes: usize,
    since: Instant,
}

/// How a transaction failed.
enum Failed {
    /// Aborted: the batch may be tried again.
    Abortable(String),
    /// The producer cannot go on (fenced by a newer replay, or in a fatal state).
    Fatal(String),
}

fn failed(e: KafkaError) -> Failed {
    if crate::produce::txn_fatal(&e) {
        Failed::Fatal(e.to_string())
    } else {
        Failed::Abortable(e.to_string())
    }
}

impl Batch {
    /// A batch for `producer`, whose `init_transactions` already ran.
    pub fn new(producer: Producer, ledger_topic: &str) -> Batch {
        Batch {
            producer,
            ledger_topic: ledger_topic.to_string(),
            held: Vec::new(),
            bytes: 0,
            since: Instant::now(),
        }
    }

    /// Holds `copy` for the next transaction.
    pub fn hold(&mut self, copy: Held) {
        self.bytes +=
            copy.key.as_ref().map_or(0, Vec::len) + copy.payload.as_ref().map_or(0, Vec::len);
        self.held.push(copy);
    }

    /// Whether the next transaction is due: the batch is full, or the interval is up.
    pub fn due(&self, now: Instant) -> bool {
        due(self.held.len(), self.bytes, now.duration_since(self.since))
    }

    /// Commits the held copies, their ledger records and the offsets `decided` allows in one
    /// transaction; on success `decided` and `ledger` learn of it and the batch is empty.
    /// Nothing to do is `Ok`. `Err` says why the run must stop (nothing of the failed batch
    /// is visible to `read_committed` readers, and its offsets are not committed).
    pub async fn commit(
        &mut self,
        consumer: &Shared,
        dlq: &str,
        decided: &mut Decided,
        ledger: &mut Ledger,
    ) -> Result<(), String> {
        let changed = decided.to_commit();
        if self.held.is_empty() && changed.is_empty() {
            self.since = Instant::now();
            return Ok(());
        }
        let mut offsets = TopicPartitionList::new();
        for &(p, next) in &changed {
            offsets
                .add_partition_offset(dlq, p, Offset::Offset(next))
                .map_err(|e| e.to_string())?;
        }
        let mut attempt = 0;
        loop {
            attempt += 1;
            let Some(group) = consumer.group_metadata() else {
                return Err("the replay consumer has no group metadata".into());
            };
            match self.try_once(offsets.clone(), group).await {
                Ok(()) => break,
                Err(Failed::Fatal(why)) => {
                    return Err(format!(
                        "the transactional producer cannot go on (fenced by another replay of the same group?): {why}"
                    ))
                }
                Err(Failed::Abortable(why)) => {
                    tracing::warn!(error = %why, attempt, copies = self.held.len(),
                        "exactly-once: replay transaction failed; aborting it");
                    if let Err(e) = self.producer.abort_transaction(TIMEOUT).await {
                        return Err(format!("the transaction failed ({why}) and could not be aborted ({e})"));
                    }
                    if attempt >= ATTEMPTS {
                        return Err(format!("the transaction failed {attempt} times: {why}"));
                    }
                    tokio::time::sleep(Duration::from_millis(200) * attempt).await;
                }
            }
        }
        tracing::debug!(
            copies = self.held.len(),
            partitions = changed.len(),
            "replay transaction committed"
        );
        decided.committed(&changed);
        for h in self.held.drain(..) {
            ledger.insert(h.partition, h.offset);
        }
        self.bytes = 0;
        // The next batch gathers for a whole interval (a commit takes about as long).
        self.since = Instant::now();
        Ok(())
    }

    /// One transaction: begin, the copies and ledger records, the offsets, commit.
    async fn try_once(
        &self,
        offsets: TopicPartitionList,
        group: rdkafka::consumer::ConsumerGroupMetadata,
    ) -> Result<(), Failed> {
        let p = &self.producer;
        p.begin_transaction().map_err(failed)?;
        for h in &self.held {
            let copy = Record {
                topic: &h.topic,
                key: h.key.as_deref(),
                payload: h.payload.as_deref(),
                headers: h.headers.clone(),
                partition: None,
                timestamp: None,
            };
            p.enqueue(&copy)
                .map_err(|e| Failed::Abortable(format!("{} refused the copy: {e}", h.topic)))?;
            let record = Record {
                topic: &self.ledger_topic,
                key: Some(h.ledger_key.as_bytes()),
                payload: Some(h.ledger_value.as_bytes()),
                headers: Vec::new(),
                partition: None,
                timestamp: None,
            };
            p.enqueue(&record).map_err(|e| {
                Failed::Abortable(format!("{} refused the record: {e}", self.ledger_topic))
            })?;
        }
        p.commit_transaction_retrying(offsets, group, TIMEOUT, ATTEMPTS)
            .await
            .map_err(failed)
    }

    /// Waits for anything still queued (nothing is, after a commit), up to `timeout`.
    pub fn flush(&self, timeout: Duration) {
        self.producer.flush(timeout);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_is_due_when_full_big_or_old() {
        let ms = Duration::from_millis;
        assert!(!due(0, 0, ms(0)));
        assert!(!due(MAX_MESSAGES - 1, MAX_BYTES - 1, INTERVAL - ms(1)));
        assert!(due(MAX_MESSAGES, 0, ms(0)));
        assert!(due(1, MAX_BYTES, ms(0)));
        assert!(due(0, 0, INTERVAL));
    }
}

//! `--exactly-once` (issue 18): the loop's stream of Kafka transactions.
//!
//! Jobs produce nothing in this mode: a retry or DLQ copy comes back held in its completion
//! ([`crate::router::Finish::Held`]) and waits in its partition ([`super::Partition::held`]).
//! Every [`INTERVAL`], or after [`MAX_MESSAGES`] finished messages, on a revoke and at shutdown,
//! the loop takes for each partition its committable offset `c` (every message before it is
//! finished) and the held copies of offsets below `c`, and in one transaction produces those
//! copies and sends the offsets `c` to the group's coordinator (KIP-447, fenced by the group
//! generation). Copies of offsets at or past `c` wait for a later transaction. So a transaction
//! holds exactly the copies of the messages whose offsets it commits: a copy is never committed
//! without its offset, nor an offset without its copy.
//!
//! When a transaction fails and can be aborted (broker error, timeout, a record the broker
//! refuses), it is aborted and each partition in it is rewound: its state is dropped (jobs still
//! running belong to a gone epoch) and the consumer seeks back to the offset last committed for
//! it, so its messages are handled again and their copies produced in a later transaction. A
//! fatal error (fenced by a newer instance with the same `transactional.id`, or by the group
//! generation) ends the loop.

use std::mem;
use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};

use super::{pause, Ended, Partition, State};
use crate::headers;
use crate::kafka::TopologyContext;
use crate::produce::{self, Record};
use crate::router::{HeldCopy, Tp};

/// How often the open transaction is committed.
pub const INTERVAL: Duration = Duration::from_millis(100);
/// Finished messages after which the transaction is committed before [`INTERVAL`] is up.
pub const MAX_MESSAGES: usize = 1000;
/// How long one transactional call (offsets, commit, abort) may wait for the broker.
pub const TIMEOUT: Duration = Duration::from_secs(30);
/// Commits tried again after a retriable error (e.g. a timeout) before the loop gives up.
const COMMIT_RETRIES: u32 = 3;

/// What the loop keeps about its transactions.
#[derive(Debug, Default)]
pub struct Eos {
    /// Copies held in every partition (at most [`MAX_MESSAGES`]: reading waits beyond).
    pub held: usize,
    /// Messages finished since the last commit.
    pub finished: usize,
}

impl Eos {
    /// Enough finished work (or held copies) for a commit before the interval is up.
    pub fn full(&self) -> bool {
        self.finished >= MAX_MESSAGES || self.held >= MAX_MESSAGES
    }
}

/// How a transaction failed.
enum Failed {
    /// Aborted (or never begun): rewind its partitions and go on.
    Aborted(String),
    /// The producer cannot go on (fenced, or in a fatal state).
    Fatal(RDKafkaErrorCode, String),
}

fn failed(e: KafkaError) -> Failed {
    let code = e.rdkafka_error_code().unwrap_or(RDKafkaErrorCode::Fail);
    if produce::txn_fatal(&e) {
        Failed::Fatal(code, e.to_string())
    } else {
        Failed::Aborted(e.to_string())
    }
}

impl State {
    /// Commits the open transaction: the held copies and the committable offsets of every
    /// partition whose offset moved since its last transaction. On an abortable failure the
    /// transaction is aborted and its partitions are rewound; a fatal one ends the loop
    /// (`Err`). Each broker call waits at most `timeout`.
    pub(super) async fn commit_txn(
        &mut self,
        consumer: &StreamConsumer<TopologyContext>,
        timeout: Duration,
    ) -> Result<(), Ended> {
        let Some(eos) = &mut self.eos else {
            return Ok(());
        };
        eos.finished = 0;
        let router = self.router.clone();
        let topology = &router.topology;
        let mut offsets = TopicPartitionList::new();
        let mut involved: Vec<(Tp, i64)> = Vec::new();
        let mut copies: Vec<HeldCopy> = Vec::new();
        for (tp, p) in &mut self.parts {
            let Some(next) = p.offsets.committable() else {
                continue;
            };
            if p.txn_committed.is_some_and(|c| c >= next) {
                continue;
            }
            let later = p.held.split_off(&next);
            copies.extend(mem::replace(&mut p.held, later).into_values());
            let _ = offsets.add_partition_offset(
                topology.topic(tp.stage),
                tp.partition,
                Offset::Offset(next),
            );
            involved.push((*tp, next));
        }
        if involved.is_empty() {
            return Ok(());
        }
        eos.held -= copies.len();
        let Some(group) = consumer.group_metadata() else {
            // Not in a group (yet): nothing can be committed; rewind what was taken.
            tracing::warn!("exactly-once: no consumer group metadata; rewinding");
            self.rewind(consumer, &involved);
            return Ok(());
        };
        let producer = router.producer.clone();
        let result = async {
            producer.begin_transaction().map_err(failed)?;
            for copy in &copies {
                enqueue(&producer, copy).map_err(|e| {
                    Failed::Aborted(format!("{} refused the copy: {e}", copy.topic))
                })?;
            }
            producer
                .commit_transaction_retrying(offsets, group, timeout, COMMIT_RETRIES)
                .await
                .map_err(failed)
        }
        .await;
        match result {
            Ok(()) => {
                for (tp, next) in &involved {
                    if let Some(p) = self.parts.get_mut(tp) {
                        p.txn_committed = Some(*next);
                    }
                }
                for copy in &copies {
                    self.metrics
                        .routed
                        .with_label_values(&[copy.from.as_str(), copy.to.as_str()])
                        .inc();
                    if let Some(reason) = copy.reason {
                        self.metrics.dlq.with_label_values(&[reason.as_str()]).inc();
                    }
                }
                tracing::debug!(
                    partitions = involved.len(),
                    copies = copies.len(),
                    "transaction committed"
                );
                Ok(())
            }
            Err(Failed::Fatal(code, reason)) => {
                tracing::error!(error = %code, reason = %reason,
                    "exactly-once: the transactional producer cannot go on (fenced by a newer instance or group generation?); stopping");
                Err(Ended::Fatal { code, reason })
            }
            Err(Failed::Aborted(why)) => {
                tracing::warn!(error = %why, partitions = involved.len(), copies = copies.len(),
                    "exactly-once: transaction failed; aborting it and re-processing its partitions from their committed offsets");
                if let Err(e) = producer.abort_transaction(timeout).await {
                    let code = e.rdkafka_error_code().unwrap_or(RDKafkaErrorCode::Fail);
                    tracing::error!(error = %e, "exactly-once: abort failed; stopping");
                    return Err(Ended::Fatal {
                        code,
                        reason: e.to_string(),
                    });
                }
                self.rewind(consumer, &involved);
                if self.parts.is_empty()
                    || involved.iter().all(|(tp, _)| self.parts.contains_key(tp))
                {
                    Ok(())
                } else {
                    // A seek failed: only a new consumer, starting from the committed
                    // offsets, is sure not to skip anything.
                    Err(Ended::Fatal {
                        code: RDKafkaErrorCode::Fail,
                        reason: "exactly-once: cannot seek back after an aborted transaction"
                            .into(),
                    })
                }
            }
        }
    }

    /// Starts the partitions of an aborted transaction again from their last committed
    /// offsets: a new epoch (results of jobs still running are ignored), nothing held, and the
    /// consumer sought back. A partition being revoked is only dropped (its next owner reads it
    /// from the committed offset). A partition whose seek fails is left out of `parts`.
    fn rewind(&mut self, consumer: &StreamConsumer<TopologyContext>, involved: &[(Tp, i64)]) {
        let router = self.router.clone();
        for (tp, _) in involved {
            let Some(p) = self.remove_partition(*tp) else {
                continue;
            };
            let topic = router.topology.topic(tp.stage);
            let target = p.txn_committed.or(p.first_seen);
            if p.revoking {
                continue;
            }
            if let Some(offset) = target {
                if let Err(e) =
                    consumer.seek(topic, tp.partition, Offset::Offset(offset), Duration::ZERO)
                {
                    tracing::error!(topic, partition = tp.partition, offset, error = %e,
                        "exactly-once: cannot seek back after an aborted transaction");
                    continue;
                }
            }
            tracing::info!(
                topic,
                partition = tp.partition,
                offset = target,
                "exactly-once: re-processing from the last committed offset"
            );
            self.next_epoch += 1;
            let mut fresh = Partition::new(self.next_epoch);
            fresh.txn_committed = p.txn_committed;
            self.parts.insert(*tp, fresh);
            if !self.fetch_paused {
                pause(consumer, topic, tp.partition, false);
            }
        }
    }
}

/// Enqueues `copy`; a copy larger than the client's `message.max.bytes` goes without its
/// payload (and without a key over 4 KiB), saying where the original is, as the at-least-once
/// path does for a DLQ copy the broker refuses as too large.
fn enqueue(producer: &produce::Producer, copy: &HeldCopy) -> Result<(), KafkaError> {
    let record = Record {
        topic: &copy.topic,
        key: copy.key.as_deref(),
        payload: copy.payload.as_deref(),
        headers: copy.headers.clone(),
        partition: None,
        timestamp: None,
    };
    match producer.enqueue(&record) {
        Err(e) if e.rdkafka_error_code().is_some_and(produce::is_too_large) => {
            let size = copy.payload.as_ref().map_or(0, Vec::len);
            let text =
                format!("the copy is too large ({e}); its payload ({size} bytes) is omitted here");
            tracing::error!(
                topic = %copy.topic,
                payload_bytes = size,
                "exactly-once: copy too large for the producer; sending it without its payload"
            );
            let slim = Record {
                topic: &copy.topic,
                key: copy.key.as_deref().filter(|k| k.len() <= 4096),
                payload: None,
                headers: headers::rewrite(&copy.headers, &[(headers::ERROR_MESSAGE, text)]),
                partition: None,
                timestamp: None,
            };
            producer.enqueue(&slim)
        }
        other => other,
    }
}

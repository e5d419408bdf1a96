//! `--ordering key` (issue 21): the loop's side of the waiting log (ARCHITECTURE.md,
//! "Key-ordered retries"; the decisions are [`crate::keyorder`]'s).
//!
//! The owner of main partition *p* reads partition *p* of `<main>.waiting` with its own consumer
//! (assigned by hand, outside the consumer group; its group `<group>.waiting` only keeps the
//! low-water mark). When *p* is assigned, the main partition stays paused while the waiting
//! partition is read from its committed low-water mark to its high watermark, rebuilding the
//! chains ([`Chains::apply`]); then main messages flow, and the reader goes on live: `done`
//! records free keys, and the `follow` records of free keys are handled in log order. When a key
//! is freed behind the reader's position, the reader seeks back to its next follower.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Message as _};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

use super::{pause, State};
use crate::cluster::ClusterConfig;
use crate::handler::Message;
use crate::kafka::{self, TopologyContext};
use crate::keyorder::{self, Chains, Entry, FollowAction, MainAction};
use crate::router::{waiting_record, Completion, Finish, Intake, Job, KeyNote, Tp};
use crate::topology::Stage;

/// Followers a waiting partition keeps in memory behind keys whose previous follower is being
/// handled; when that many are kept, the partition is paused until half of them went.
pub const HELD_MAX: usize = 1000;

/// How long the start of a partition may wait for its committed low-water mark and high
/// watermark before it is tried again.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a waiting partition is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Asking for the low-water mark and the high watermark.
    Starting,
    /// Reading `[low-water, high)` to rebuild the chains; the main partition is paused.
    Rebuilding { high: i64 },
    /// Rebuilt: main messages flow; the reader handles followers.
    Live,
}

/// One waiting partition (of one assigned main partition).
struct WaitPart {
    /// The main partition's assignment epoch.
    epoch: u64,
    chains: Chains,
    phase: Phase,
    /// The offset the reader delivers next (moved by seeks).
    position: i64,
    /// Followers whose key's previous follower is still being handled, in log order (at most
    /// [`HELD_MAX`]; the partition is paused while that many are kept).
    held: VecDeque<(i64, Message)>,
    /// Paused because `held` is full.
    full: bool,
    /// The first main offset read before the rebuild finished: the main partition is sought
    /// back to it when it resumes.
    main_resume_at: Option<i64>,
}

impl WaitPart {
    /// The job of the follower at `log_offset` of main partition `partition`.
    fn follower_job(&self, partition: i32, log_offset: i64, message: Message) -> Job {
        Job {
            tp: Tp {
                stage: Stage::Main,
                partition,
            },
            epoch: self.epoch,
            message,
            intake: Intake::Follower { log_offset },
        }
    }

    /// Resumes the partition paused because `held` was full, once half of it went.
    fn resume_if_room(&mut self, consumer: &StreamConsumer, topic: &str, partition: i32) {
        if self.full && self.held.len() <= HELD_MAX / 2 {
            self.full = false;
            pause(consumer, topic, partition, false);
        }
    }
}

/// A partition's low-water mark and high watermark, or why they could not be had.
type Started = (i32, u64, Result<(i64, i64), String>);

/// What the loop keeps about the waiting log.
pub(super) struct Waiting {
    pub consumer: Arc<StreamConsumer>,
    topic: String,
    parts: HashMap<i32, WaitPart>,
    started_tx: UnboundedSender<Started>,
    pub started_rx: UnboundedReceiver<Started>,
}

impl Waiting {
    /// The reader of `topic`, with the cluster's settings and group `<group>.waiting`.
    pub fn new(
        cluster: &ClusterConfig,
        topic: &str,
    ) -> Result<Waiting, rdkafka::error::KafkaError> {
        let mut config = kafka::consumer_config(cluster);
        config
            .set("group.id", format!("{}.waiting", cluster.group))
            .set("statistics.interval.ms", "0")
            // It never joins its group (assigned by hand; the group only keeps its low-water
            // marks), whatever protocol the main consumer joins with.
            .set("group.protocol", "classic")
            .remove("group.remote.assignor")
            // What it reads ahead stays small: followers are handled one key at a time.
            .set("queued.max.messages.kbytes", "4096");
        let consumer: StreamConsumer = config.create()?;
        let (started_tx, started_rx) = unbounded_channel();
        Ok(Waiting {
            consumer: Arc::new(consumer),
            topic: topic.to_string(),
            parts: HashMap::new(),
            started_tx,
            started_rx,
        })
    }

    /// Asks for partition `partition`'s low-water mark and high watermark (off the loop),
    /// after `delay` (a second when asking again after a failure).
    fn ask_start(&self, partition: i32, epoch: u64, delay: Duration) {
        let consumer = self.consumer.clone();
        let topic = self.topic.clone();
        let tx = self.started_tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let result = kafka::blocking(&consumer, move |c| {
                let mut tpl = TopicPartitionList::new();
                tpl.add_partition(&topic, partition);
                let committed = c
                    .committed_offsets(tpl, START_TIMEOUT)
                    .map_err(|e| e.to_string())?;
                let low =
                    committed
                        .find_partition(&topic, partition)
                        .and_then(|e| match e.offset() {
                            Offset::Offset(o) => Some(o),
                            _ => None,
                        });
                let (start, high) = c
                    .fetch_watermarks(&topic, partition, START_TIMEOUT)
                    .map_err(|e| e.to_string())?;
                Ok((low.unwrap_or(start).max(start), high))
            })
            .await;
            let _ = tx.send((partition, epoch, result));
        });
    }
}

impl State {
    /// Main partition `partition` was assigned: it stays paused until its waiting partition
    /// is rebuilt.
    pub(super) fn waiting_assigned(
        &mut self,
        consumer: &StreamConsumer<TopologyContext>,
        partition: i32,
        epoch: u64,
    ) {
        let Some(w) = &mut self.waiting else {
            return;
        };
        pause(consumer, &self.router.topology.main, partition, true);
        w.parts.insert(
            partition,
            WaitPart {
                epoch,
                chains: Chains::starting_at(0),
                phase: Phase::Starting,
                position: 0,
                held: VecDeque::new(),
                full: false,
                main_resume_at: None,
            },
        );
        w.ask_start(partition, epoch, Duration::ZERO);
    }

    /// The low-water mark and high watermark of a partition came: starts reading it.
    pub(super) fn waiting_started(
        &mut self,
        consumer: &StreamConsumer<TopologyContext>,
        (partition, epoch, result): Started,
    ) {
        let Some(w) = &mut self.waiting else {
            return;
        };
        let topic = w.topic.clone();
        let Some(part) = w.parts.get_mut(&partition).filter(|p| p.epoch == epoch) else {
            return;
        };
        let (low, high) = match result {
            Ok(marks) => marks,
            Err(e) => {
                tracing::warn!(topic, partition, error = %e,
                    "cannot read the waiting log's marks; the main partition stays paused, trying again");
                w.ask_start(partition, epoch, Duration::from_secs(1));
                return;
            }
        };
        part.chains = Chains::starting_at(low);
        part.position = low;
        part.phase = Phase::Rebuilding { high };
        let mut tpl = TopicPartitionList::new();
        let _ = tpl.add_partition_offset(&topic, partition, Offset::Offset(low));
        if let Err(e) = w.consumer.incremental_assign(&tpl) {
            tracing::error!(topic, partition, error = %e, "cannot read the waiting log; the main partition stays paused");
            return;
        }
        tracing::info!(
            topic,
            partition,
            from = low,
            to = high,
            "rebuilding the keys in retry from the waiting log"
        );
        if low >= high {
            self.waiting_rebuilt(consumer, partition);
        }
    }

    /// The rebuild of `partition` reached its end: main messages may flow, and the reader goes
    /// back to the first free key's next follower.
    fn waiting_rebuilt(&mut self, consumer: &StreamConsumer<TopologyContext>, partition: i32) {
        let main = self.router.topology.main.clone();
        let Some(w) = &mut self.waiting else {
            return;
        };
        let topic = w.topic.clone();
        let Some(part) = w.parts.get_mut(&partition) else {
            return;
        };
        part.phase = Phase::Live;
        part.chains.rebuilt();
        part.position = part.chains.applied_to();
        tracing::info!(
            topic,
            partition,
            keys = part.chains.len(),
            blocked = part.chains.blocked_keys(),
            waiting = part.chains.waiting(),
            "keys in retry rebuilt; main partition resumed"
        );
        if let Some(at) = part.main_resume_at.take() {
            if let Err(e) = consumer.seek(&main, partition, Offset::Offset(at), Duration::ZERO) {
                tracing::warn!(topic = main, partition, offset = at, error = %e, "cannot seek the main partition back");
            }
        }
        let tp = Tp {
            stage: Stage::Main,
            partition,
        };
        if !self.fetch_paused && self.parts.get(&tp).is_some_and(|p| !p.revoking) {
            pause(consumer, &main, partition, false);
        }
        self.waiting_rewind(partition);
    }

    /// Main partition `partition` is given up: its waiting partition is no longer read (its
    /// low-water mark committed first).
    pub(super) fn waiting_revoked(&mut self, partition: i32) {
        let Some(w) = &mut self.waiting else {
            return;
        };
        let topic = w.topic.clone();
        let Some(part) = w.parts.remove(&partition) else {
            return;
        };
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&topic, partition);
        if part.phase == Phase::Live {
            let mut commit = TopicPartitionList::new();
            let _ = commit.add_partition_offset(
                &topic,
                partition,
                Offset::Offset(part.chains.low_water()),
            );
            if let Err(e) = w.consumer.commit(&commit, CommitMode::Async) {
                tracing::debug!(topic, partition, error = %e, "waiting log low-water mark not committed");
            }
        }
        if part.phase != Phase::Starting {
            if let Err(e) = w.consumer.incremental_unassign(&tpl) {
                tracing::debug!(topic, partition, error = %e, "unassigning the waiting partition failed");
            }
        }
    }

    /// A main message of `tp` read while its waiting partition is not rebuilt: not begun; the
    /// partition is sought back to it once rebuilt. Returns whether the message may be used.
    pub(super) fn waiting_admits_main(&mut self, partition: i32, offset: i64) -> bool {
        let Some(w) = &mut self.waiting else {
            return true;
        };
        match w.parts.get_mut(&partition) {
            Some(p) if p.phase == Phase::Live => true,
            Some(p) => {
                p.main_resume_at = Some(p.main_resume_at.map_or(offset, |o| o.min(offset)));
                false
            }
            None => false,
        }
    }

    /// `--ordering key`: what a main job does, decided when it starts (after the jobs of its
    /// key before it ended). `None`: nothing to do (finished at once).
    pub(super) fn waiting_main_job(&mut self, mut job: Job) -> Option<Job> {
        let Some(w) = &mut self.waiting else {
            return Some(job);
        };
        if job.tp.stage != Stage::Main || !matches!(job.intake, Intake::Fresh) {
            return Some(job);
        }
        let Some(part) = w.parts.get_mut(&job.tp.partition) else {
            return Some(job);
        };
        match part
            .chains
            .main_action(job.message.key.as_deref(), job.message.offset)
        {
            MainAction::Handle => Some(job),
            MainAction::Follow => {
                job.intake = Intake::Follow;
                Some(job)
            }
            MainAction::Skip => {
                tracing::debug!(
                    partition = job.tp.partition,
                    offset = job.message.offset,
                    "already waiting behind its key (read again)"
                );
                self.finished.push(Completion {
                    tp: job.tp,
                    epoch: job.epoch,
                    offset: job.message.offset,
                    key: job.message.key,
                    finish: Finish::Done,
                    signal: None,
                    note: None,
                    follower: None,
                    pipelined: None,
                });
                None
            }
        }
    }

    /// Applies what a finished job changed about its key.
    pub(super) fn waiting_completed(&mut self, done: &Completion) {
        let Some(w) = &mut self.waiting else {
            return;
        };
        let (Some(note), Some(key)) = (&done.note, done.key.as_deref()) else {
            return;
        };
        let Some(part) = w
            .parts
            .get_mut(&done.tp.partition)
            .filter(|p| p.epoch == done.epoch)
        else {
            return;
        };
        let chains = &mut part.chains;
        match *note {
            KeyNote::Followed { log_offset } => chains.followed(key, log_offset),
            KeyNote::FollowAbandoned => chains.follow_abandoned(key),
            KeyNote::Blocked {
                blocker,
                follower,
                tier,
                log_offset,
            } => chains.blocked(key, blocker, follower, Some(tier), log_offset),
            KeyNote::Passed { follower } => {
                chains.passed(key, follower);
            }
            KeyNote::FollowerAbandoned { follower } => chains.follower_abandoned(key, follower),
        }
        if matches!(
            note,
            KeyNote::Passed { .. }
                | KeyNote::Blocked {
                    follower: Some(_),
                    ..
                }
                | KeyNote::FollowerAbandoned { .. }
        ) {
            self.waiting_release_held(done.tp.partition);
        }
        self.waiting_rewind(done.tp.partition);
    }

    /// A follower of `partition` ended: the kept followers are looked at again in log order
    /// (the next one of its key is handled now; those of keys blocked meanwhile are dropped,
    /// to be read again when their key is freed).
    fn waiting_release_held(&mut self, partition: i32) {
        let Some(w) = &mut self.waiting else {
            return;
        };
        let Some(part) = w.parts.get_mut(&partition) else {
            return;
        };
        let mut start = Vec::new();
        let mut kept = VecDeque::with_capacity(part.held.len());
        for (log_offset, message) in std::mem::take(&mut part.held) {
            let key = message.key.as_deref().unwrap_or_default();
            match part.chains.on_follow(key, log_offset) {
                FollowAction::Hold => kept.push_back((log_offset, message)),
                FollowAction::Skip => {}
                FollowAction::Handle => {
                    start.push(part.follower_job(partition, log_offset, message))
                }
            }
        }
        part.held = kept;
        part.resume_if_room(&w.consumer, &w.topic, partition);
        for job in start {
            self.dispatch(job);
        }
    }

    /// Seeks the reader of `partition` back when a free key's next follower is behind it.
    fn waiting_rewind(&mut self, partition: i32) {
        let Some(w) = &mut self.waiting else {
            return;
        };
        let topic = w.topic.clone();
        let Some(part) = w
            .parts
            .get_mut(&partition)
            .filter(|p| p.phase == Phase::Live)
        else {
            return;
        };
        let Some(back) = part.chains.rewind(part.position) else {
            return;
        };
        // Kept followers at or past `back` are read again.
        part.held.retain(|(offset, _)| *offset < back);
        part.position = back;
        tracing::debug!(
            topic,
            partition,
            offset = back,
            "reading the waiting log again from a freed key's next follower"
        );
        if let Err(e) = w
            .consumer
            .seek(&topic, partition, Offset::Offset(back), Duration::ZERO)
        {
            tracing::warn!(topic, partition, offset = back, error = %e, "cannot seek the waiting log back; trying at the next change");
        }
        part.resume_if_room(&w.consumer, &topic, partition);
    }

    /// A record of the waiting log.
    pub(super) fn on_waiting_message(
        &mut self,
        consumer: &StreamConsumer<TopologyContext>,
        m: &BorrowedMessage<'_>,
    ) {
        let partition = m.partition();
        let log_offset = m.offset();
        let main = self.router.topology.main.clone();
        let Some(w) = &mut self.waiting else {
            return;
        };
        let topic = w.topic.clone();
        let Some(part) = w.parts.get_mut(&partition) else {
            return;
        };
        let headers = kafka::read_headers(m.headers());
        let entry = Entry::decode(|name| {
            crate::headers::last(&headers, name).and_then(|h| h.value.as_deref())
        });
        let key = m.key().unwrap_or_default();
        let entry = match entry {
            Ok(e) => Some(e),
            Err(e) => {
                tracing::warn!(topic, partition, offset = log_offset, error = %e, "not a waiting-log record; ignored");
                None
            }
        };
        match part.phase {
            Phase::Starting => {}
            Phase::Rebuilding { high } => {
                if let Some(e) = entry {
                    part.chains.apply(log_offset, key, e);
                }
                if log_offset + 1 >= high {
                    self.waiting_rebuilt(consumer, partition);
                }
            }
            Phase::Live => {
                part.position = log_offset + 1;
                match entry {
                    Some(Entry::Follow { main_offset }) => {
                        match part.chains.on_follow(key, log_offset) {
                            FollowAction::Skip => {}
                            FollowAction::Hold => {
                                part.held.push_back((
                                    log_offset,
                                    follower_message(&main, partition, main_offset, m, &headers),
                                ));
                                if part.held.len() >= HELD_MAX && !part.full {
                                    // Resumed from the next offset (librdkafka drops what it
                                    // fetched for a paused partition).
                                    part.full = true;
                                    pause(w.consumer.as_ref(), &topic, partition, true);
                                }
                            }
                            FollowAction::Handle => {
                                let message =
                                    follower_message(&main, partition, main_offset, m, &headers);
                                let job = part.follower_job(partition, log_offset, message);
                                self.dispatch(job);
                            }
                        }
                    }
                    Some(e) => {
                        part.chains.read_live(log_offset, key, e);
                    }
                    None => {}
                }
                self.waiting_rewind(partition);
            }
        }
    }

    /// Every commit interval: `passed` records for keys whose followers were handled since the
    /// last ones, and the low-water marks.
    pub(super) fn waiting_checkpoint(&mut self) {
        let Some(w) = &mut self.waiting else {
            return;
        };
        let topic = w.topic.clone();
        let mut commit = TopicPartitionList::new();
        for (partition, part) in &mut w.parts {
            if part.phase != Phase::Live {
                continue;
            }
            for note in part.chains.unrecorded() {
                let producer = self
                    .router
                    .waiting_producer
                    .clone()
                    .unwrap_or_else(|| self.router.producer.clone());
                let abandon = self.router.abandon.clone();
                let topic = topic.clone();
                let partition = *partition;
                tokio::spawn(async move {
                    let record =
                        waiting_record(&topic, partition, Some(&note.key), &note.entry, None);
                    // Not written: the followers are handled again after a restart, in order.
                    let _ = producer.send_acked(&record, &abandon).await;
                });
            }
            let _ = commit.add_partition_offset(
                &topic,
                *partition,
                Offset::Offset(part.chains.low_water()),
            );
        }
        if commit.count() > 0 {
            if let Err(e) = w.consumer.commit(&commit, CommitMode::Async) {
                tracing::debug!(error = %e, "waiting log low-water marks not committed");
            }
        }
        let tiers = &self.router.topology.tiers;
        let mut by_tier = vec![(0, 0); tiers.len()];
        for part in w.parts.values() {
            part.chains.add_by_tier(&mut by_tier);
        }
        for (tier, (blocked, waiting)) in tiers.iter().zip(by_tier) {
            let label = [tier.label.as_str()];
            self.metrics
                .ordering_blocked_keys
                .with_label_values(&label)
                .set(blocked);
            self.metrics
                .ordering_waiting
                .with_label_values(&label)
                .set(waiting);
        }
    }
}

/// The follower in record `m`, as the main message it was.
fn follower_message(
    main: &str,
    partition: i32,
    main_offset: i64,
    m: &BorrowedMessage<'_>,
    headers: &[crate::headers::Header],
) -> Message {
    Message {
        topic: main.to_string(),
        partition,
        offset: main_offset,
        key: m.key().map(<[u8]>::to_vec),
        payload: m.payload().map(<[u8]>::to_vec),
        headers: headers
            .iter()
            .filter(|h| {
                !keyorder::RECORD_HEADERS
                    .iter()
                    .any(|o| h.name == o.as_bytes())
            })
            .cloned()
            .collect(),
        timestamp: m.timestamp().to_millis(),
        attempt: 0,
    }
}

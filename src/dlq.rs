//! `rebound dlq stats|list|show` and `rebound replay-dlq`: looking into the dead-letter topic and
//! sending its messages back (also the engine of the console's redrive, [`replay_with`]).
//!
//! The decisions are pure, in the submodules, and unit-tested without a broker: what a message
//! says about itself and which messages a [`Filter`] selects (`select`), what [`Stats`] count
//! (`stats`), what replay does with a message ([`decide`]), when reading has reached the end of
//! the DLQ ([`EndOfLog`]), and how messages are printed (`render`). This file is the I/O around
//! them: it reads the DLQ with rdkafka and produces with [`crate::produce::Producer`].
//!
//! Invariants:
//! * `stats`, `list` and `show` never commit: their consumers are assigned partitions, never
//!   subscribed, and never call commit.
//! * `replay` commits an offset only over an unbroken run of messages that are dealt with: the
//!   copy acknowledged and recorded in the replay ledger (`ledger`), found in the ledger
//!   (replayed before), or skipped at the replay limit. A message the filter did not choose is
//!   left for later replays, so nothing after it in its partition is committed by this run; the
//!   ledger keeps what was sent after it from being sent again. It never commits past a
//!   message whose copy failed: that partition stops there for the run, and the next run starts
//!   at the failed message.
//! * Every replay reads its group's ledger entries first and never sends a recorded message.
//! * `--dry-run` sends nothing and commits nothing.
//! * Nothing is ever replayed into the DLQ being read.

mod decide;
mod ledger;
mod reading;
mod render;
pub(crate) mod select;
mod stats;

pub use decide::{came_back, decide, replay_headers, Decision, ReplayRules, ReplaySummary};
pub use ledger::{ledger_key, ledger_topic, parse_ledger_key, Decided, Ledger};
pub use reading::{EndOfLog, Pacer, GRACE, QUIET, STALL};
pub use render::{as_text, hex_dump, list_json, list_line, one_line, quoted_lossy, render_show};
pub use select::{Entry, Filter};
pub use stats::{render_stats, ErrorCount, Located, Stats, StatsBuilder, NONE, TOP_ERRORS};

use std::collections::HashSet;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use chrono::Utc;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message as _;
use rdkafka::metadata::Metadata;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use crate::cluster::ClusterConfig;
use crate::config::{DlqReadConfig, DlqShowConfig, ReplayConfig};
use crate::headers;
use crate::kafka::{self, LoggingContext};
use crate::produce::{ProduceError, Producer, Record};

/// The progress bar: messages read of those between the start and the end, rate, time left.
const BAR: &str = "replay {bar:30} {pos}/{len} read  {per_sec}  ETA {eta}  {msg}";

/// Replay's progress on stderr: a bar with rate and ETA on a terminal, else a plain line every
/// `every` messages.
struct Progress {
    every: u64,
    bar: Option<indicatif::ProgressBar>,
}

impl Progress {
    fn new(every: u64) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::with_draw_target(
                None,
                indicatif::ProgressDrawTarget::stderr_with_hz(5),
            );
            bar.set_style(
                indicatif::ProgressStyle::with_template(BAR)
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            bar
        });
        Progress {
            every: every.max(1),
            bar,
        }
    }
}

impl ReplayProgress for Progress {
    fn start(&mut self, total: u64) {
        if let Some(bar) = &self.bar {
            bar.set_length(total);
        }
    }

    fn update(&mut self, s: &ReplaySummary) {
        match &self.bar {
            Some(bar) => {
                // The end may lie past the watermarks read at the start (see EndOfLog).
                if bar.length().is_some_and(|l| s.read > l) {
                    bar.set_length(s.read);
                }
                bar.set_position(s.read);
                bar.set_message(format!(
                    "{} replayed, {} skipped, {} failed",
                    s.replayed,
                    s.skipped(),
                    s.failed
                ));
            }
            None if s.read % self.every == 0 => eprintln!(
                "replay: {} read, {} replayed, {} skipped, {} failed",
                s.read,
                s.replayed,
                s.skipped(),
                s.failed
            ),
            None => {}
        }
    }

    fn finish(&mut self, _s: &ReplaySummary) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// Why a DLQ command could not do its work.
#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    #[error("no DLQ topic {0}; is --topic right?")]
    NoDlqTopic(String),
    #[error("{flag}: no topic {topic}; create it first or fix the name")]
    NoTopic { flag: &'static str, topic: String },
    #[error("{0}")]
    Usage(String),
    #[error("no message at partition {partition}, offset {offset} of {topic} (the broker reports {held})")]
    NotFound {
        topic: String,
        partition: i32,
        offset: i64,
        /// What the partition holds, e.g. `offsets 0 to 41`.
        held: String,
    },
    #[error("cannot reach the brokers at {brokers}: {error}")]
    Unreachable { brokers: String, error: KafkaError },
    #[error("kafka client: {}", crate::kafka::Shown(.0))]
    Kafka(#[from] KafkaError),
    #[error("the DLQ could not be read to its end (a partition stopped before its high watermark); try again")]
    Incomplete,
    #[error("writing the output: {0}")]
    Output(#[from] std::io::Error),
    #[error("{0}")]
    Ledger(String),
}

impl DlqError {
    /// Whether fixing the command line is what is needed: exit code 2.
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            DlqError::NoDlqTopic(_) | DlqError::NoTopic { .. } | DlqError::Usage(_)
        )
    }
}

/// Writes `text` to `out`. `Ok(false)` when the reader went away (`rebound dlq list | head`):
/// the command then stops quietly instead of failing.
pub fn emit(out: &mut dyn Write, text: &str) -> std::io::Result<bool> {
    match out.write_all(text.as_bytes()) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(e),
    }
}

fn emit_flush(out: &mut dyn Write) -> std::io::Result<()> {
    match out.flush() {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e),
        _ => Ok(()),
    }
}

const META_TIMEOUT: Duration = Duration::from_secs(10);

/// The `group.id` of the read-only consumers; no offset is ever committed under it.
const READER_GROUP: &str = "rebound.dlq-reader";

/// A consumer for reading only: partitions are assigned, never subscribed, and nothing is ever
/// committed. (librdkafka's consumer queue wants a `group.id` even so; this one never joins.)
fn reader(cluster: &ClusterConfig) -> Result<StreamConsumer<LoggingContext>, KafkaError> {
    let mut c: ClientConfig = kafka::consumer_config(cluster);
    c.set("group.id", READER_GROUP)
        .set("statistics.interval.ms", "0")
        .set("enable.auto.commit", "false");
    c.create_with_context(LoggingContext)
}

/// The replay's consumer: group `cluster.group`, nothing committed or stored automatically.
fn replay_consumer(cluster: &ClusterConfig) -> Result<StreamConsumer<LoggingContext>, KafkaError> {
    let mut c: ClientConfig = kafka::consumer_config(cluster);
    c.set("statistics.interval.ms", "0")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false");
    c.create_with_context(LoggingContext)
}

fn metadata(
    consumer: &StreamConsumer<LoggingContext>,
    cluster: &ClusterConfig,
) -> Result<Metadata, DlqError> {
    let mut last = None;
    for _ in 0..3 {
        match consumer.fetch_metadata(None, META_TIMEOUT) {
            Ok(md) => return Ok(md),
            Err(e) => {
                tracing::warn!(error = %e, brokers = %cluster.brokers, "cannot fetch metadata yet");
                last = Some(e);
            }
        }
    }
    Err(DlqError::Unreachable {
        brokers: cluster.brokers.clone(),
        error: last.unwrap_or(KafkaError::NoMessageReceived),
    })
}

fn partitions_of(md: &Metadata, topic: &str) -> Option<Vec<i32>> {
    md.topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty())
        .map(|t| {
            let mut ps: Vec<i32> = t.partitions().iter().map(|p| p.id()).collect();
            ps.sort_unstable();
            ps
        })
}

/// The DLQ's partitions that `filter` reads.
fn dlq_partitions(md: &Metadata, dlq: &str, filter: &Filter) -> Result<Vec<i32>, DlqError> {
    let all = partitions_of(md, dlq).ok_or_else(|| DlqError::NoDlqTopic(dlq.to_string()))?;
    if let Some(p) = filter.partition {
        if !all.contains(&p) {
            return Err(DlqError::Usage(format!(
                "--partition: the DLQ {dlq} has no partition {p} (it has {})",
                all.len()
            )));
        }
    }
    Ok(all
        .into_iter()
        .filter(|p| filter.reads_partition(*p))
        .collect())
}

fn watermarks(
    consumer: &StreamConsumer<LoggingContext>,
    topic: &str,
    partition: i32,
) -> Result<(i64, i64), KafkaError> {
    consumer.fetch_watermarks(topic, partition, META_TIMEOUT)
}

fn entry_of(m: &rdkafka::message::BorrowedMessage<'_>) -> Entry {
    Entry {
        partition: m.partition(),
        offset: m.offset(),
        timestamp: m.timestamp().to_millis(),
        key: m.key().map(<[u8]>::to_vec),
        payload: m.payload().map(<[u8]>::to_vec),
        headers: kafka::read_headers(m.headers()),
    }
}

fn pause(consumer: &StreamConsumer<LoggingContext>, topic: &str, partition: i32) {
    let mut tpl = TopicPartitionList::with_capacity(1);
    tpl.add_partition(topic, partition);
    if let Err(e) = consumer.pause(&tpl) {
        tracing::debug!(topic, partition, error = %e, "pause failed");
    }
}

/// Drops the consumer on a helper thread and waits at most `limit` (docs/broker-compat.md,
/// "Consumer close hang"; nothing is left to commit at this point).
fn close_bounded(consumer: StreamConsumer<LoggingContext>, limit: Duration) {
    let (tx, rx) = std::sync::mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name("rebound-dlq-close".into())
        .spawn(move || {
            drop(consumer);
            let _ = tx.send(());
        });
    if spawned.is_ok() && rx.recv_timeout(limit).is_err() {
        tracing::warn!("consumer close did not finish in time; going on");
    }
}

/// Reads the DLQ from the beginning (or `--from-offset`) to its end without a group, calling
/// `each` for every message the filter selects until it returns `false`. Returns whether the
/// end was reached.
async fn scan(
    cluster: &ClusterConfig,
    filter: &Filter,
    mut each: impl FnMut(Entry) -> Result<bool, DlqError>,
) -> Result<bool, DlqError> {
    let dlq = cluster.topology.dlq.as_str();
    let consumer = reader(cluster)?;
    let md = metadata(&consumer, cluster)?;
    let parts = dlq_partitions(&md, dlq, filter)?;
    let mut tpl = TopicPartitionList::new();
    let mut ends = Vec::new();
    for &p in &parts {
        let (low, high) = watermarks(&consumer, dlq, p)?;
        let start = filter.from_offset.map_or(low, |f| f.max(low));
        tpl.add_partition_offset(dlq, p, Offset::Offset(start))?;
        ends.push((p, start, high));
    }
    consumer.assign(&tpl)?;
    let mut end = EndOfLog::new(&ends, filter.to_offset, Instant::now());
    let result = loop {
        if end.done(Instant::now()) {
            break Ok(!end.incomplete());
        }
        let m = match tokio::time::timeout(Duration::from_millis(100), consumer.recv()).await {
            Err(_) => continue,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "consumer error");
                continue;
            }
            Ok(Ok(m)) => m,
        };
        let entry = entry_of(&m);
        drop(m);
        if end.is_closed(entry.partition) {
            continue;
        }
        if filter.to_offset.is_some_and(|t| entry.offset > t) {
            end.close(entry.partition, Instant::now());
            pause(&consumer, dlq, entry.partition);
            continue;
        }
        end.seen(entry.partition, entry.offset, Instant::now());
        let (p, last) = (entry.partition, filter.to_offset == Some(entry.offset));
        if filter.matches(&entry) {
            match each(entry) {
                Ok(true) => {}
                Ok(false) => break Ok(true),
                Err(e) => break Err(e),
            }
        }
        if last {
            end.close(p, Instant::now());
            pause(&consumer, dlq, p);
        }
        end.touch(Instant::now());
    };
    close_bounded(consumer, Duration::from_secs(5));
    result
}

/// `rebound dlq stats`.
pub async fn stats(cfg: &DlqReadConfig) -> Result<Stats, DlqError> {
    let mut builder = StatsBuilder::new(&cfg.cluster.topology.dlq);
    let complete = scan(&cfg.cluster, &cfg.filter, |e| {
        builder.add(&e);
        Ok(true)
    })
    .await?;
    let mut stats = builder.finish(TOP_ERRORS);
    stats.incomplete = !complete;
    Ok(stats)
}

/// One page of the console's dead-letter list, and the counts of the whole DLQ beside it.
#[derive(Debug, Clone)]
pub struct Browse {
    /// Counts over every message of the DLQ (not only the filtered ones).
    pub stats: Stats,
    /// How many messages the filter selects.
    pub matched: u64,
    /// The selected messages from number `skip` on, at most `take` of them.
    pub page: Vec<Entry>,
}

/// Reads the whole DLQ once: counts everything, and keeps one page of what `filter` selects, in
/// (partition, offset) order. The scan interleaves partitions in whatever order the broker
/// answers, so the page is taken from the `skip + take` first selected positions, kept in a
/// bounded ordered map (memory grows with the page number, not with the DLQ).
pub async fn browse(
    cluster: &ClusterConfig,
    filter: &Filter,
    skip: u64,
    take: usize,
) -> Result<Browse, DlqError> {
    let mut builder = StatsBuilder::new(&cluster.topology.dlq);
    let mut matched = 0u64;
    let keep = usize::try_from(skip)
        .unwrap_or(usize::MAX)
        .saturating_add(take);
    let mut first: std::collections::BTreeMap<(i32, i64), select::Entry> = Default::default();
    let complete = scan(cluster, &Filter::default(), |e| {
        builder.add(&e);
        if filter.matches(&e) {
            matched += 1;
            if keep > 0 {
                first.insert((e.partition, e.offset), e);
                if first.len() > keep {
                    first.pop_last();
                }
            }
        }
        Ok(true)
    })
    .await?;
    let page: Vec<select::Entry> = first
        .into_values()
        .skip(usize::try_from(skip).unwrap_or(usize::MAX))
        .take(take)
        .collect();
    let mut stats = builder.finish(TOP_ERRORS);
    stats.incomplete = !complete;
    Ok(Browse {
        stats,
        matched,
        page,
    })
}

/// `rebound dlq list`: writes one line (or JSON object) per selected message; returns how many.
pub async fn list(cfg: &DlqReadConfig, out: &mut (dyn Write + Send)) -> Result<u64, DlqError> {
    let mut n = 0u64;
    let complete = scan(&cfg.cluster, &cfg.filter, |e| {
        let line = if cfg.json {
            list_json(&e).to_string()
        } else {
            list_line(&e)
        };
        if !emit(out, &format!("{line}\n"))? {
            return Ok(false);
        }
        n += 1;
        Ok(cfg.limit.is_none_or(|l| n < l))
    })
    .await?;
    emit_flush(out)?;
    if !complete {
        return Err(DlqError::Incomplete);
    }
    Ok(n)
}

/// `rebound dlq show`: the message at `--offset` of `--partition`.
pub async fn show(cfg: &DlqShowConfig) -> Result<Entry, DlqError> {
    let cluster = &cfg.cluster;
    let dlq = cluster.topology.dlq.as_str();
    let consumer = reader(cluster)?;
    let md = metadata(&consumer, cluster)?;
    let all = dlq_partitions(&md, dlq, &Filter::default())?;
    let partition = match cfg.partition {
        Some(p) if all.contains(&p) => p,
        Some(p) => {
            return Err(DlqError::Usage(format!(
                "--partition: the DLQ {dlq} has no partition {p} (it has {})",
                all.len()
            )))
        }
        None if all.len() == 1 => all[0],
        None => {
            return Err(DlqError::Usage(format!(
                "--partition: the DLQ {dlq} has {} partitions; say which one (list shows PARTITION/OFFSET)",
                all.len()
            )))
        }
    };
    let (low, high) = watermarks(&consumer, dlq, partition)?;
    let not_found = || DlqError::NotFound {
        topic: dlq.to_string(),
        partition,
        offset: cfg.offset,
        held: if high > low {
            format!("offsets {low} to {}", high - 1)
        } else {
            "no messages".to_string()
        },
    };
    if cfg.offset < low {
        return Err(not_found());
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(dlq, partition, Offset::Offset(cfg.offset))?;
    consumer.assign(&tpl)?;
    // The offset may lie past a lagging watermark (see EndOfLog), so look for it anyway.
    let end = EndOfLog::new(&[(partition, cfg.offset, high)], None, Instant::now());
    let found = loop {
        if end.done(Instant::now()) {
            break None;
        }
        match tokio::time::timeout(Duration::from_millis(100), consumer.recv()).await {
            Ok(Ok(m)) if m.offset() == cfg.offset => break Some(entry_of(&m)),
            Ok(Ok(m)) if m.offset() > cfg.offset => break None,
            Ok(Err(e)) => tracing::warn!(error = %e, "consumer error"),
            _ => {}
        }
    };
    close_bounded(consumer, Duration::from_secs(5));
    found.ok_or_else(not_found)
}

/// Commits whatever moved since the last commit (synchronously).
fn commit_decided(
    decided: &mut Decided,
    consumer: &StreamConsumer<LoggingContext>,
    dlq: &str,
) -> Result<(), KafkaError> {
    let changed = decided.to_commit();
    if changed.is_empty() {
        return Ok(());
    }
    let mut tpl = TopicPartitionList::new();
    for &(p, next) in &changed {
        tpl.add_partition_offset(dlq, p, Offset::Offset(next))?;
    }
    consumer.commit(&tpl, CommitMode::Sync)?;
    decided.committed(&changed);
    Ok(())
}

/// Where replay reports how far it got: a progress bar, plain lines, or the console's page.
pub trait ReplayProgress: Send {
    /// Reading starts; at most `total` messages lie between the start offsets and the ends.
    fn start(&mut self, _total: u64) {}
    /// Called after each message read.
    fn update(&mut self, summary: &ReplaySummary);
    /// The replay is over (whatever the outcome).
    fn finish(&mut self, _summary: &ReplaySummary) {}
}

/// Reads every record of `topic` from its start to its end (as [`EndOfLog`] decides) and
/// hands each to `each`. Used for the ledger; `Ok(false)` when the end was not reached.
async fn read_whole(
    consumer: &StreamConsumer<LoggingContext>,
    topic: &str,
    partitions: &[i32],
    mut each: impl FnMut(&Entry),
) -> Result<bool, DlqError> {
    let mut tpl = TopicPartitionList::new();
    let mut ends = Vec::new();
    for &p in partitions {
        let (low, high) = watermarks(consumer, topic, p)?;
        tpl.add_partition_offset(topic, p, Offset::Offset(low))?;
        ends.push((p, low, high));
    }
    consumer.assign(&tpl)?;
    let mut end = EndOfLog::new(&ends, None, Instant::now());
    while !end.done(Instant::now()) {
        match tokio::time::timeout(Duration::from_millis(100), consumer.recv()).await {
            Ok(Ok(m)) if m.topic() == topic => {
                let e = entry_of(&m);
                drop(m);
                end.seen(e.partition, e.offset, Instant::now());
                each(&e);
            }
            Ok(Err(e)) => tracing::warn!(topic, error = %e, "consumer error"),
            _ => {}
        }
    }
    consumer.unassign()?;
    Ok(!end.incomplete())
}

/// Creates the ledger topic (compacted, one partition) unless it exists.
async fn create_ledger(cluster: &ClusterConfig, ledger: &str) -> Result<(), DlqError> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::types::RDKafkaErrorCode;
    let mut c = kafka::base_config(cluster);
    for (k, v) in &cluster.kafka.0 {
        c.set(k, v);
    }
    let admin: AdminClient<DefaultClientContext> = c.create()?;
    let topic =
        NewTopic::new(ledger, 1, TopicReplication::Fixed(-1)).set("cleanup.policy", "compact");
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    for result in admin.create_topics([&topic], &opts).await? {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((_, code)) => {
                return Err(DlqError::Ledger(format!(
                    "cannot create the replay ledger topic {ledger} ({code}); create it \
                     (compacted, cleanup.policy=compact) or grant this client CREATE"
                )))
            }
        }
    }
    tracing::info!(ledger, "replay ledger topic created");
    Ok(())
}

/// `rebound replay-dlq`: republishes the selected DLQ messages (see the module invariants).
/// Dry-run lines go to `out`; progress lines to stderr. Stops early when `stop` is cancelled.
pub async fn replay(
    cfg: &ReplayConfig,
    stop: &CancellationToken,
    out: &mut (dyn Write + Send),
) -> Result<ReplaySummary, DlqError> {
    let mut progress = Progress::new(cfg.progress_every);
    replay_with(cfg, stop, out, &mut progress).await
}

/// [`replay`], reporting progress to `progress`: the engine of `replay-dlq` and of the console.
pub async fn replay_with(
    cfg: &ReplayConfig,
    stop: &CancellationToken,
    out: &mut (dyn Write + Send),
    progress: &mut dyn ReplayProgress,
) -> Result<ReplaySummary, DlqError> {
    let cluster = &cfg.cluster;
    let dlq = cluster.topology.dlq.as_str();
    if cfg.to.as_deref() == Some(dlq) {
        return Err(DlqError::Usage(format!(
            "--to: {dlq} is the DLQ itself; replaying into it would only loop"
        )));
    }
    let consumer = replay_consumer(cluster)?;
    let md = metadata(&consumer, cluster)?;
    let parts = dlq_partitions(&md, dlq, &cfg.filter)?;
    let mut topics: HashSet<String> = md
        .topics()
        .iter()
        .filter(|t| t.error().is_none())
        .map(|t| t.name().to_string())
        .collect();
    if let Some(to) = &cfg.to {
        if !topics.contains(to) {
            return Err(DlqError::NoTopic {
                flag: "--to",
                topic: to.clone(),
            });
        }
    }

    // Start where this replay group stopped last time (the beginning if it never committed).
    let mut wanted = TopicPartitionList::new();
    for &p in &parts {
        wanted.add_partition(dlq, p);
    }
    let committed = consumer.committed_offsets(wanted, META_TIMEOUT)?;
    let mut assignment = TopicPartitionList::new();
    let mut ends = Vec::new();
    for &p in &parts {
        let (low, high) = watermarks(&consumer, dlq, p)?;
        let start = committed
            .find_partition(dlq, p)
            .and_then(|e| match e.offset() {
                Offset::Offset(o) if o >= 0 => Some(o.max(low)),
                _ => None,
            })
            .unwrap_or(low);
        assignment.add_partition_offset(dlq, p, Offset::Offset(start))?;
        ends.push((p, start, high));
    }

    // What was replayed already, out of order, by earlier replays (of other selections).
    let ledger_name = ledger_topic(dlq);
    let mut ledger = Ledger::new(&cluster.group, ends.iter().map(|&(p, start, _)| (p, start)));
    match partitions_of(&md, &ledger_name) {
        Some(ledger_parts) => {
            let complete = read_whole(&consumer, &ledger_name, &ledger_parts, |e| {
                ledger.read(e.key.as_deref(), e.payload.is_some())
            })
            .await?;
            if !complete {
                return Err(DlqError::Ledger(format!(
                    "the replay ledger {ledger_name} could not be read to its end; try again"
                )));
            }
        }
        None if !cfg.dry_run => create_ledger(cluster, &ledger_name).await?,
        None => {}
    }
    tracing::info!(dlq, group = %cluster.group, partitions = ?ends, replayed_ahead = ledger.len(),
        dry_run = cfg.dry_run, "replay starting (partition, from offset, high watermark)");
    consumer.assign(&assignment)?;
    progress.start(
        ends.iter()
            .map(|&(_, start, high)| (high - start).max(0) as u64)
            .sum(),
    );

    let producer = if cfg.dry_run {
        None
    } else {
        Some(Producer::new(cluster)?)
    };
    let rules = ReplayRules {
        filter: &cfg.filter,
        to: cfg.to.as_deref(),
        dlq,
        max_replays: cfg.max_replays,
        force: cfg.force,
    };
    let mut summary = ReplaySummary {
        dry_run: cfg.dry_run,
        ..ReplaySummary::default()
    };
    let mut end = EndOfLog::new(&ends, cfg.filter.to_offset, Instant::now());
    let started = Utc::now();
    let mut decided = Decided::default();
    let mut pacer = Pacer::new(cfg.rate);
    let mut last_commit = Instant::now();
    let mut missing: HashSet<String> = HashSet::new();
    let mut output_error = None;
    let fail = |summary: &mut ReplaySummary, end: &mut EndOfLog, e: &Entry, why: String| {
        tracing::error!(partition = e.partition, offset = e.offset, problem = %why,
            "cannot replay; this partition stops here for this run");
        summary.failed += 1;
        summary.failures.push(format!("{}: {why}", e.position()));
        end.close(e.partition, Instant::now());
        pause(&consumer, dlq, e.partition);
    };

    loop {
        if !cfg.dry_run && last_commit.elapsed() >= Duration::from_secs(1) {
            if let Err(e) = commit_decided(&mut decided, &consumer, dlq) {
                tracing::warn!(error = %e, "commit failed; retrying in a second");
            }
            last_commit = Instant::now();
        }
        if cfg.limit.is_some_and(|l| summary.replayed >= l) {
            summary.limit_reached = true;
            break;
        }
        if end.done(Instant::now()) {
            summary.incomplete = end.incomplete();
            break;
        }
        let received = tokio::select! {
            biased;
            _ = stop.cancelled() => {
                summary.interrupted = true;
                break;
            }
            r = tokio::time::timeout(Duration::from_millis(100), consumer.recv()) => r,
        };
        let entry = match received {
            Err(_) => continue,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "consumer error");
                continue;
            }
            // A ledger record fetched before the ledger was unassigned is not a dead letter.
            Ok(Ok(m)) if m.topic() != dlq => continue,
            Ok(Ok(m)) => {
                let e = entry_of(&m);
                drop(m);
                e
            }
        };
        if end.is_closed(entry.partition) {
            continue; // fetched before the partition was stopped
        }
        if cfg.filter.to_offset.is_some_and(|t| entry.offset > t) {
            end.close(entry.partition, Instant::now());
            pause(&consumer, dlq, entry.partition);
            continue;
        }
        if came_back(&entry, started) {
            // Replayed by this very run and dead-lettered again: everything from here on was
            // written after the replay started. Leave it for the next run instead of looping.
            tracing::info!(
                partition = entry.partition,
                offset = entry.offset,
                "reached messages this replay sent back; this partition is done"
            );
            end.close(entry.partition, Instant::now());
            pause(&consumer, dlq, entry.partition);
            continue;
        }
        end.seen(entry.partition, entry.offset, Instant::now());
        summary.read += 1;
        if ledger.contains(entry.partition, entry.offset) {
            // Replayed by an earlier replay (of another selection): dealt with.
            if cfg.filter.matches(&entry) {
                summary.skipped_already_replayed += 1;
            } else {
                summary.skipped_by_filter += 1;
            }
            decided.mark(entry.partition, entry.offset);
            progress.update(&summary);
            end.touch(Instant::now());
            continue;
        }
        let decision = decide(&entry, &rules, Utc::now());
        let decision = match decision {
            Decision::Send { topic, .. } if !topics.contains(&topic) => {
                // Topics created since the start are found by one metadata refresh each.
                let exists = !missing.contains(&topic)
                    && consumer
                        .fetch_metadata(Some(&topic), META_TIMEOUT)
                        .ok()
                        .and_then(|md| partitions_of(&md, &topic))
                        .is_some();
                if exists {
                    topics.insert(topic.clone());
                    decide(&entry, &rules, Utc::now())
                } else {
                    missing.insert(topic.clone());
                    Decision::Unreplayable(format!("the destination topic {topic} does not exist"))
                }
            }
            d => d,
        };
        match decision {
            Decision::Filtered => {
                // Not chosen: left for later replays, so nothing from here on is committed.
                summary.skipped_by_filter += 1;
                decided.leave(entry.partition);
            }
            Decision::AtReplayLimit { count } => {
                summary.skipped_at_replay_limit += 1;
                match count {
                    Some(count) => tracing::warn!(
                        partition = entry.partition,
                        offset = entry.offset,
                        replay_count = count,
                        max_replays = cfg.max_replays,
                        "replayed too often already; skipped (--force replays it anyway)"
                    ),
                    None => tracing::warn!(
                        partition = entry.partition,
                        offset = entry.offset,
                        "unreadable {}; skipped (--force replays it anyway)",
                        headers::REPLAY_COUNT
                    ),
                }
                decided.mark(entry.partition, entry.offset);
            }
            Decision::Unreplayable(why) => fail(&mut summary, &mut end, &entry, why),
            Decision::Send {
                topic,
                headers,
                replay_count,
            } => {
                let Some(producer) = &producer else {
                    let line = format!(
                        "would replay {} -> {topic} key={} reason={} class={} replay-count={replay_count}\n",
                        entry.position(),
                        quoted_lossy(entry.key.as_deref()),
                        entry.reason().unwrap_or_else(|| "-".into()),
                        entry.error_class().unwrap_or_else(|| "-".into()),
                    );
                    match emit(out, &line) {
                        Ok(true) => {}
                        Ok(false) => break, // nobody reads the plan any more
                        Err(e) => {
                            output_error = Some(e);
                            break;
                        }
                    }
                    summary.replayed += 1;
                    progress.update(&summary);
                    end.touch(Instant::now());
                    continue;
                };
                let slot = pacer.slot(Instant::now());
                if slot > Instant::now() {
                    tokio::select! {
                        _ = stop.cancelled() => {
                            summary.interrupted = true;
                            break;
                        }
                        _ = tokio::time::sleep_until(slot.into()) => {}
                    }
                }
                let record = Record {
                    topic: &topic,
                    key: entry.key.as_deref(),
                    payload: entry.payload.as_deref(),
                    headers,
                };
                match producer.send_acked(&record, stop).await {
                    Ok((p, o)) => {
                        tracing::debug!(from = %entry.position(), to = %topic, partition = p, offset = o, "replayed");
                        summary.replayed += 1;
                        match record_replayed(
                            producer,
                            &cluster.group,
                            &ledger_name,
                            &entry,
                            &topic,
                        )
                        .await
                        {
                            Ok(()) => {
                                ledger.insert(entry.partition, entry.offset);
                                decided.mark(entry.partition, entry.offset);
                            }
                            Err(why) => fail(&mut summary, &mut end, &entry, why),
                        }
                    }
                    Err(ProduceError::Cancelled) => {
                        summary.interrupted = true;
                        break;
                    }
                    Err(rejected @ ProduceError::Rejected { .. }) => {
                        fail(&mut summary, &mut end, &entry, rejected.to_string())
                    }
                }
            }
        }
        progress.update(&summary);
        end.touch(Instant::now());
    }
    if !cfg.dry_run {
        if let Err(e) = commit_decided(&mut decided, &consumer, dlq) {
            tracing::error!(error = %e, "final commit failed");
            summary.commit_failed = true;
        }
    }
    progress.finish(&summary);
    if let Some(p) = producer {
        p.flush(Duration::from_secs(5));
    }
    close_bounded(consumer, Duration::from_secs(5));
    match output_error {
        Some(e) => Err(e.into()),
        None => Ok(summary),
    }
}

/// How long recording a replayed message in the ledger may take; it is not cut short by a stop
/// signal, since the copy was already sent.
const LEDGER_WRITE: Duration = Duration::from_secs(30);

/// Records in the ledger that the message at `entry` was replayed to `to` (acknowledged).
async fn record_replayed(
    producer: &Producer,
    group: &str,
    ledger: &str,
    entry: &Entry,
    to: &str,
) -> Result<(), String> {
    let key = ledger_key(group, entry.partition, entry.offset);
    let value = ledger::ledger_value(to, Utc::now());
    let record = Record {
        topic: ledger,
        key: Some(key.as_bytes()),
        payload: Some(value.as_bytes()),
        headers: Vec::new(),
    };
    let never = CancellationToken::new();
    let unrecorded = |why: String| {
        format!("replayed to {to}, but not recorded in the ledger {ledger} ({why}); a later replay may send it again")
    };
    match tokio::time::timeout(LEDGER_WRITE, producer.send_acked(&record, &never)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(unrecorded(e.to_string())),
        Err(_) => Err(unrecorded("no acknowledgement in 30 s".into())),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_progress_bar_template_is_valid() {
        assert!(indicatif::ProgressStyle::with_template(super::BAR).is_ok());
    }
}

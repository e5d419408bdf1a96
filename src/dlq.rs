//! `rebound dlq stats|list|show` and `rebound replay-dlq`: looking into the dead-letter topic and
//! sending its messages back (also the engine of the console's redrive, [`replay_with`]).
//!
//! The decisions are pure, in the submodules, and unit-tested without a broker: what a message
//! says about itself and which messages a [`Filter`] selects (`select`), what [`Stats`] count
//! (`stats`), what replay does with a message (`decide`), when reading has reached the end of
//! the DLQ ([`EndOfLog`]), and how messages are printed (`render`). This file is the I/O around
//! them: it reads the DLQ with rdkafka and produces with `produce::Producer`.
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
//! * `--exactly-once` (`dlq/txn.rs`): copies, their ledger records and the offsets past them commit
//!   together in Kafka transactions; nothing is committed outside one.
//! * Nothing is ever replayed into the DLQ being read.

mod decide;
mod ledger;
mod reading;
mod render;
pub(crate) mod select;
mod stats;
mod txn;

pub use decide::{came_back, decide, replay_headers, Decision, ReplayRules, ReplaySummary};
pub use ledger::{ledger_key, ledger_topic, parse_ledger_key, Decided, Ledger};
pub use reading::{EndOfLog, Pacer, GRACE, QUIET, STALL};
pub use render::{as_text, hex_dump, list_json, list_line, one_line, quoted_lossy, render_show};
pub use select::{Entry, Filter};
pub use stats::{render_stats, ErrorCount, Located, Stats, StatsBuilder, NONE, TOP_ERRORS};

use std::collections::HashSet;
use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use rdkafka::consumer::{CommitMode, Consumer as _, StreamConsumer};
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
    /// A flag, env var or file setting is wrong.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("no message at partition {partition}, offset {offset} of {topic} (the broker reports {held})")]
    NotFound {
        topic: String,
        partition: i32,
        offset: i64,
        /// What the partition holds, e.g. `offsets 0 to 41`.
        held: String,
    },
    #[error(transparent)]
    Unreachable(#[from] kafka::Unreachable),
    #[error("kafka client: {}", crate::kafka::Shown(.0))]
    Kafka(#[from] KafkaError),
    #[error("the DLQ could not be read to its end (a partition stopped before its high watermark); try again")]
    Incomplete,
    #[error("writing the output: {0}")]
    Output(#[from] std::io::Error),
    #[error("{0}")]
    Ledger(String),
    /// `--exactly-once` on a broker without transactions.
    #[error("--exactly-once needs a broker with Kafka transactions (EndTxn); this one has none ({0}): run replay-dlq without --exactly-once, or on Apache Kafka")]
    NoTransactions(&'static str),
    /// `--exactly-once`: a transaction failed for good; nothing of it was sent or committed.
    #[error("exactly-once: {0}; nothing of the failed transaction was sent or committed: run replay-dlq again (it resumes after the last committed transaction)")]
    Transaction(String),
}

impl DlqError {
    /// Whether fixing the command line is what is needed: exit code 2.
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            DlqError::NoDlqTopic(_)
                | DlqError::NoTopic { .. }
                | DlqError::Usage(_)
                | DlqError::Config(_)
                | DlqError::NoTransactions(_)
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

/// A consumer shared with the blocking pool (watermarks, committed offsets, commits).
type Shared = Arc<StreamConsumer<LoggingContext>>;

/// A consumer for reading only: partitions are assigned, never subscribed, and nothing is ever
/// committed. (librdkafka's consumer queue wants a `group.id` even so; this one never joins.)
fn read_only_consumer(cluster: &ClusterConfig) -> Result<Shared, KafkaError> {
    let mut c: ClientConfig = kafka::consumer_config(cluster);
    c.set("group.id", READER_GROUP)
        .set("statistics.interval.ms", "0")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true");
    Ok(Arc::new(c.create_with_context(LoggingContext)?))
}

/// The replay's consumer: group `cluster.group`, nothing committed or stored automatically.
fn replay_consumer(cluster: &ClusterConfig) -> Result<Shared, KafkaError> {
    let mut c: ClientConfig = kafka::consumer_config(cluster);
    c.set("statistics.interval.ms", "0")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "true");
    Ok(Arc::new(c.create_with_context(LoggingContext)?))
}

/// The DLQ's partitions that `filter` reads.
fn dlq_partitions(md: &Metadata, dlq: &str, filter: &Filter) -> Result<Vec<i32>, DlqError> {
    let all = kafka::partitions_of(md, dlq).ok_or_else(|| DlqError::NoDlqTopic(dlq.to_string()))?;
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

/// The low and high watermarks of a partition (a blocking request, run off the async threads).
async fn watermarks(
    consumer: &Shared,
    topic: &str,
    partition: i32,
) -> Result<(i64, i64), KafkaError> {
    let topic = topic.to_string();
    kafka::blocking(consumer, move |c| {
        c.fetch_watermarks(&topic, partition, META_TIMEOUT)
    })
    .await
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

/// Drops the consumer on a helper thread and waits at most `limit` (docs/broker-compat.md,
/// "Consumer close hang"; nothing is left to commit at this point).
fn close_bounded(consumer: Shared, limit: Duration) {
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

/// What [`Reader::next`] found.
enum Read {
    Entry(Entry),
    /// The end of every partition was reached (or every partition was closed).
    End,
    /// The stop token was cancelled.
    Stopped,
}

/// The one reader of the DLQ (and of the replay ledger): reads partitions of one topic from
/// chosen start offsets to their end, as [`EndOfLog`] decides, in whatever order the broker
/// answers. `dlq stats|list|show`, `replay-dlq`, the console and the demo all read through it.
struct Reader {
    consumer: Shared,
    topic: String,
    end: EndOfLog,
    to_offset: Option<i64>,
}

impl Reader {
    /// (partition, start, high watermark) of each of `partitions`: the start is
    /// `start(partition, low watermark)`.
    async fn plan(
        consumer: &Shared,
        topic: &str,
        partitions: &[i32],
        start: impl Fn(i32, i64) -> i64,
    ) -> Result<Vec<(i32, i64, i64)>, KafkaError> {
        let mut ends = Vec::with_capacity(partitions.len());
        for &p in partitions {
            let (low, high) = watermarks(consumer, topic, p).await?;
            ends.push((p, start(p, low), high));
        }
        Ok(ends)
    }

    /// Assigns the planned partitions; nothing past `to_offset` is returned.
    fn assign(
        consumer: &Shared,
        topic: &str,
        ends: &[(i32, i64, i64)],
        to_offset: Option<i64>,
    ) -> Result<Reader, KafkaError> {
        let mut tpl = TopicPartitionList::new();
        for &(p, start, _) in ends {
            tpl.add_partition_offset(topic, p, Offset::Offset(start))?;
        }
        consumer.assign(&tpl)?;
        Ok(Reader {
            consumer: consumer.clone(),
            topic: topic.to_string(),
            end: EndOfLog::new(ends, to_offset, Instant::now()),
            to_offset,
        })
    }

    /// [`Reader::plan`] and [`Reader::assign`].
    async fn open(
        consumer: &Shared,
        topic: &str,
        partitions: &[i32],
        to_offset: Option<i64>,
        start: impl Fn(i32, i64) -> i64,
    ) -> Result<Reader, KafkaError> {
        let ends = Reader::plan(consumer, topic, partitions, start).await?;
        Reader::assign(consumer, topic, &ends, to_offset)
    }

    /// The next message of an open partition, not yet [`seen`](Reader::seen).
    async fn next(&mut self, stop: &CancellationToken) -> Read {
        loop {
            if self.end.done(Instant::now()) {
                return Read::End;
            }
            let received = tokio::select! {
                biased;
                _ = stop.cancelled() => return Read::Stopped,
                r = tokio::time::timeout(Duration::from_millis(100), self.consumer.recv()) => r,
            };
            let entry = match received {
                Err(_) => continue,
                // Nothing more to read now (read_committed: up to the last stable offset). A
                // partition that ends in a transaction marker, or whose open transaction holds
                // the stable offset below the high watermark, never delivers the record at
                // `high - 1`: this is how its end is known.
                Ok(Err(KafkaError::PartitionEOF(partition))) => {
                    self.end.at_end(partition, Instant::now());
                    continue;
                }
                Ok(Err(e)) => {
                    tracing::warn!(topic = %self.topic, error = %e, "consumer error");
                    continue;
                }
                // A record of a topic read before (the ledger) fetched before it was unassigned.
                Ok(Ok(m)) if m.topic() != self.topic => continue,
                Ok(Ok(m)) => entry_of(&m),
            };
            if self.end.is_closed(entry.partition) {
                continue; // fetched before the partition was stopped
            }
            if self.to_offset.is_some_and(|t| entry.offset > t) {
                self.close(entry.partition);
                continue;
            }
            return Read::Entry(entry);
        }
    }

    /// `entry` counts as read; its partition is closed when it is at `to_offset`.
    fn seen(&mut self, entry: &Entry) {
        self.end.seen(entry.partition, entry.offset, Instant::now());
        if self.to_offset == Some(entry.offset) {
            self.close(entry.partition);
        }
    }

    /// The message returned last is finished with; waiting for the next one starts now.
    fn touch(&mut self) {
        self.end.touch(Instant::now());
    }

    /// Nothing more is read from `partition`.
    fn close(&mut self, partition: i32) {
        self.end.close(partition, Instant::now());
        let mut tpl = TopicPartitionList::with_capacity(1);
        tpl.add_partition(&self.topic, partition);
        if let Err(e) = self.consumer.pause(&tpl) {
            tracing::debug!(topic = %self.topic, partition, error = %e, "pause failed");
        }
    }

    /// Whether every partition reached its end.
    fn complete(&self) -> bool {
        !self.end.incomplete()
    }
}

/// Reads the DLQ from the beginning (or `--from-offset`) to its end without a group, calling
/// `each` for every message the filter selects until it returns `false`. Returns whether the
/// end was reached. The demo reads its DLQ with it too.
pub async fn scan(
    cluster: &ClusterConfig,
    filter: &Filter,
    mut each: impl FnMut(Entry) -> Result<bool, DlqError>,
) -> Result<bool, DlqError> {
    let dlq = cluster.topology.dlq.as_str();
    let consumer = read_only_consumer(cluster)?;
    let md = kafka::metadata(cluster, META_TIMEOUT).await?;
    let parts = dlq_partitions(&md, dlq, filter)?;
    let mut reader = Reader::open(&consumer, dlq, &parts, filter.to_offset, |_, low| {
        filter.from_offset.map_or(low, |f| f.max(low))
    })
    .await?;
    let never = CancellationToken::new();
    let result = loop {
        let Read::Entry(entry) = reader.next(&never).await else {
            break Ok(reader.complete());
        };
        reader.seen(&entry);
        if filter.matches(&entry) {
            match each(entry) {
                Ok(true) => {}
                Ok(false) => break Ok(true),
                Err(e) => break Err(e),
            }
        }
        reader.touch();
    };
    drop(reader);
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
    let consumer = read_only_consumer(cluster)?;
    let md = kafka::metadata(cluster, META_TIMEOUT).await?;
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
    let (low, high) = watermarks(&consumer, dlq, partition).await?;
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
    // The offset may lie past a lagging watermark (see EndOfLog), so look for it anyway.
    let mut reader = Reader::assign(&consumer, dlq, &[(partition, cfg.offset, high)], None)?;
    let found = match reader.next(&CancellationToken::new()).await {
        Read::Entry(e) if e.offset == cfg.offset => Some(e),
        _ => None,
    };
    drop(reader);
    close_bounded(consumer, Duration::from_secs(5));
    found.ok_or_else(not_found)
}

/// Commits whatever moved since the last commit (synchronously, off the async threads).
async fn commit_decided(
    decided: &mut Decided,
    consumer: &Shared,
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
    kafka::blocking(consumer, move |c| c.commit(&tpl, CommitMode::Sync)).await?;
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

/// Reads every record of the ledger topic from its start to its end and hands each to `each`;
/// `Ok(false)` when the end was not reached. The partitions are unassigned afterwards.
async fn read_whole(
    consumer: &Shared,
    topic: &str,
    partitions: &[i32],
    mut each: impl FnMut(&Entry),
) -> Result<bool, DlqError> {
    let mut reader = Reader::open(consumer, topic, partitions, None, |_, low| low).await?;
    let never = CancellationToken::new();
    while let Read::Entry(e) = reader.next(&never).await {
        reader.seen(&e);
        each(&e);
    }
    consumer.unassign()?;
    Ok(reader.complete())
}

/// Creates the ledger topic (compacted, one partition) unless it exists.
async fn create_ledger(cluster: &ClusterConfig, ledger: &str) -> Result<(), DlqError> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::types::RDKafkaErrorCode;
    let admin: AdminClient<DefaultClientContext> = kafka::admin_config(cluster).create()?;
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
    let mut run = Replay::start(cfg, progress).await?;
    while let Step::Next = run.step(stop, out, progress).await {}
    run.finish(progress).await
}

/// Where a replay goes after one [`Replay::step`].
enum Step {
    /// On to the next message.
    Next,
    /// Done: the end, the limit, a stop, or output nobody reads.
    Finish,
}

/// One replay run, as a state machine: [`Replay::start`] finds the partitions, the start
/// offsets (the replay group's committed ones) and what the ledger says was replayed already;
/// each [`Replay::step`] deals with one message; [`Replay::finish`] commits, flushes and closes.
struct Replay<'a> {
    cfg: &'a ReplayConfig,
    consumer: Shared,
    reader: Reader,
    producer: Option<Producer>,
    rules: ReplayRules<'a>,
    /// Topics known to exist (a destination must).
    topics: HashSet<String>,
    /// Destinations found missing (asked about once).
    missing: HashSet<String>,
    ledger: Ledger,
    ledger_name: String,
    decided: Decided,
    /// `--exactly-once`: the copies held for the next transaction.
    eos: Option<txn::Batch>,
    /// `--exactly-once`: why a transaction failed for good (the run then stops).
    txn_error: Option<String>,
    pacer: Pacer,
    last_commit: Instant,
    started: chrono::DateTime<Utc>,
    summary: ReplaySummary,
    output_error: Option<std::io::Error>,
}

impl<'a> Replay<'a> {
    async fn start(
        cfg: &'a ReplayConfig,
        progress: &mut dyn ReplayProgress,
    ) -> Result<Replay<'a>, DlqError> {
        let cluster = &cfg.cluster;
        let dlq = cluster.topology.dlq.as_str();
        if cfg.to.as_deref() == Some(dlq) {
            return Err(DlqError::Usage(format!(
                "--to: {dlq} is the DLQ itself; replaying into it would only loop"
            )));
        }
        let ledger_name = ledger_topic(dlq);
        // First, so that a killed run's open transaction is aborted before its group's offsets
        // and the ledger are read (read_committed waits for it otherwise).
        let eos = match cfg.exactly_once && !cfg.dry_run {
            true => Some(transactional(cfg, &ledger_name).await?),
            false => None,
        };
        let consumer = replay_consumer(cluster)?;
        let md = kafka::metadata(cluster, META_TIMEOUT).await?;
        let parts = dlq_partitions(&md, dlq, &cfg.filter)?;
        let topics: HashSet<String> = md
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
        let committed = kafka::blocking(&consumer, move |c| {
            c.committed_offsets(wanted, META_TIMEOUT)
        })
        .await?;
        let ends = Reader::plan(&consumer, dlq, &parts, |p, low| {
            committed
                .find_partition(dlq, p)
                .and_then(|e| match e.offset() {
                    Offset::Offset(o) if o >= 0 => Some(o.max(low)),
                    _ => None,
                })
                .unwrap_or(low)
        })
        .await?;

        // What was replayed already, out of order, by earlier replays (of other selections).
        let mut ledger = Ledger::new(&cluster.group, ends.iter().map(|&(p, start, _)| (p, start)));
        match kafka::partitions_of(&md, &ledger_name) {
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
            dry_run = cfg.dry_run, exactly_once = eos.is_some(), "replay starting (partition, from offset, high watermark)");
        let reader = Reader::assign(&consumer, dlq, &ends, cfg.filter.to_offset)?;
        progress.start(
            ends.iter()
                .map(|&(_, start, high)| (high - start).max(0) as u64)
                .sum(),
        );
        let producer = match (&eos, cfg.dry_run) {
            (_, true) => None,
            (Some((p, _)), false) => Some(p.clone()),
            (None, false) => Some(Producer::new(cluster)?),
        };
        let eos = eos.map(|(_, batch)| batch);
        Ok(Replay {
            cfg,
            consumer,
            reader,
            producer,
            rules: ReplayRules {
                filter: &cfg.filter,
                to: cfg.to.as_deref(),
                dlq,
                max_replays: cfg.max_replays,
                force: cfg.force,
            },
            topics,
            missing: HashSet::new(),
            ledger,
            ledger_name,
            decided: Decided::default(),
            eos,
            txn_error: None,
            pacer: Pacer::new(cfg.rate),
            last_commit: Instant::now(),
            started: Utc::now(),
            summary: ReplaySummary {
                dry_run: cfg.dry_run,
                ..ReplaySummary::default()
            },
            output_error: None,
        })
    }

    /// Reads one message and deals with it.
    async fn step(
        &mut self,
        stop: &CancellationToken,
        out: &mut (dyn Write + Send),
        progress: &mut dyn ReplayProgress,
    ) -> Step {
        let cfg = self.cfg;
        if let Some(batch) = &mut self.eos {
            if batch.due(Instant::now()) {
                let dlq = self.rules.dlq;
                let committed = batch
                    .commit(&self.consumer, dlq, &mut self.decided, &mut self.ledger)
                    .await;
                if let Err(why) = committed {
                    self.txn_error = Some(why);
                    return Step::Finish;
                }
            }
        } else if !cfg.dry_run && self.last_commit.elapsed() >= Duration::from_secs(1) {
            let dlq = self.rules.dlq;
            if let Err(e) = commit_decided(&mut self.decided, &self.consumer, dlq).await {
                tracing::warn!(error = %e, "commit failed; retrying in a second");
            }
            self.last_commit = Instant::now();
        }
        if cfg.limit.is_some_and(|l| self.summary.replayed >= l) {
            self.summary.limit_reached = true;
            return Step::Finish;
        }
        let entry = match self.reader.next(stop).await {
            Read::Entry(entry) => entry,
            Read::End => {
                self.summary.incomplete = !self.reader.complete();
                return Step::Finish;
            }
            Read::Stopped => {
                self.summary.interrupted = true;
                return Step::Finish;
            }
        };
        if came_back(&entry, self.started) {
            // Replayed by this very run and dead-lettered again: everything from here on was
            // written after the replay started. Leave it for the next run instead of looping.
            tracing::info!(
                partition = entry.partition,
                offset = entry.offset,
                "reached messages this replay sent back; this partition is done"
            );
            self.reader.close(entry.partition);
            return Step::Next;
        }
        self.reader.seen(&entry);
        self.summary.read += 1;
        let step = if self.ledger.contains(entry.partition, entry.offset) {
            // Replayed by an earlier replay (of another selection): dealt with.
            if cfg.filter.matches(&entry) {
                self.summary.skipped_already_replayed += 1;
            } else {
                self.summary.skipped_by_filter += 1;
            }
            self.decided.mark(entry.partition, entry.offset);
            Step::Next
        } else {
            let decision = self.decide(&entry).await;
            self.act(entry, decision, stop, out).await
        };
        if let Step::Next = step {
            progress.update(&self.summary);
            self.reader.touch();
        }
        step
    }

    /// What to do with `entry`; a destination that was not there at the start is looked up
    /// once (topics created since are found).
    async fn decide(&mut self, entry: &Entry) -> Decision {
        match decide(entry, &self.rules, Utc::now()) {
            Decision::Send { topic, .. } if !self.topics.contains(&topic) => {
                let exists = !self.missing.contains(&topic) && {
                    let t = topic.clone();
                    kafka::blocking(&self.consumer, move |c| {
                        c.fetch_metadata(Some(&t), META_TIMEOUT)
                            .ok()
                            .and_then(|md| kafka::partitions_of(&md, &t))
                            .is_some()
                    })
                    .await
                };
                if exists {
                    self.topics.insert(topic.clone());
                    decide(entry, &self.rules, Utc::now())
                } else {
                    self.missing.insert(topic.clone());
                    Decision::Unreplayable(format!("the destination topic {topic} does not exist"))
                }
            }
            d => d,
        }
    }

    async fn act(
        &mut self,
        entry: Entry,
        decision: Decision,
        stop: &CancellationToken,
        out: &mut (dyn Write + Send),
    ) -> Step {
        match decision {
            Decision::Filtered => {
                // Not chosen: left for later replays, so nothing from here on is committed.
                self.summary.skipped_by_filter += 1;
                self.decided.leave(entry.partition);
            }
            Decision::AtReplayLimit { count } => {
                self.summary.skipped_at_replay_limit += 1;
                match count {
                    Some(count) => tracing::warn!(
                        partition = entry.partition,
                        offset = entry.offset,
                        replay_count = count,
                        max_replays = self.cfg.max_replays,
                        "replayed too often already; skipped (--force replays it anyway)"
                    ),
                    None => tracing::warn!(
                        partition = entry.partition,
                        offset = entry.offset,
                        "unreadable {}; skipped (--force replays it anyway)",
                        headers::REPLAY_COUNT
                    ),
                }
                self.decided.mark(entry.partition, entry.offset);
            }
            Decision::Unreplayable(why) => self.fail(&entry, why),
            Decision::Send {
                topic,
                headers,
                replay_count,
            } => {
                if self.producer.is_none() {
                    let line = format!(
                        "would replay {} -> {topic} key={} reason={} class={} replay-count={replay_count}\n",
                        entry.position(),
                        quoted_lossy(entry.key.as_deref()),
                        entry.reason().unwrap_or_else(|| "-".into()),
                        entry.error_class().unwrap_or_else(|| "-".into()),
                    );
                    match emit(out, &line) {
                        Ok(true) => {}
                        Ok(false) => return Step::Finish, // nobody reads the plan any more
                        Err(e) => {
                            self.output_error = Some(e);
                            return Step::Finish;
                        }
                    }
                    self.summary.replayed += 1;
                    return Step::Next;
                }
                return self.send(entry, &topic, headers, stop).await;
            }
        }
        Step::Next
    }

    /// Sends the copy (paced), then records it in the ledger.
    async fn send(
        &mut self,
        entry: Entry,
        topic: &str,
        headers: Vec<headers::Header>,
        stop: &CancellationToken,
    ) -> Step {
        if self.producer.is_none() {
            return Step::Next;
        }
        let slot = self.pacer.slot(Instant::now());
        if slot > Instant::now() {
            tokio::select! {
                _ = stop.cancelled() => {
                    self.summary.interrupted = true;
                    return Step::Finish;
                }
                _ = tokio::time::sleep_until(slot.into()) => {}
            }
        }
        if let Some(batch) = &mut self.eos {
            // Sent with its ledger record and its offset in the next transaction.
            let group = &self.cfg.cluster.group;
            batch.hold(txn::Held {
                partition: entry.partition,
                offset: entry.offset,
                topic: topic.to_string(),
                ledger_key: ledger_key(group, entry.partition, entry.offset),
                ledger_value: ledger::ledger_value(topic, Utc::now()),
                key: entry.key,
                payload: entry.payload,
                headers,
            });
            self.summary.replayed += 1;
            self.decided.mark(entry.partition, entry.offset);
            return Step::Next;
        }
        let Some(producer) = &self.producer else {
            return Step::Next;
        };
        let record = Record {
            topic,
            key: entry.key.as_deref(),
            payload: entry.payload.as_deref(),
            headers,
            partition: None,
            timestamp: None,
        };
        match producer.send_acked(&record, stop).await {
            Ok((p, o)) => {
                tracing::debug!(from = %entry.position(), to = %topic, partition = p, offset = o, "replayed");
                self.summary.replayed += 1;
                let group = &self.cfg.cluster.group;
                match record_replayed(producer, group, &self.ledger_name, &entry, topic).await {
                    Ok(()) => {
                        self.ledger.insert(entry.partition, entry.offset);
                        self.decided.mark(entry.partition, entry.offset);
                    }
                    Err(why) => self.fail(&entry, why),
                }
            }
            Err(ProduceError::Cancelled) => {
                self.summary.interrupted = true;
                return Step::Finish;
            }
            Err(rejected) => self.fail(&entry, rejected.to_string()),
        }
        Step::Next
    }

    /// `entry` cannot be replayed: its partition stops here for this run.
    fn fail(&mut self, e: &Entry, why: String) {
        tracing::error!(partition = e.partition, offset = e.offset, problem = %why,
            "cannot replay; this partition stops here for this run");
        self.summary.failed += 1;
        self.summary
            .failures
            .push(format!("{}: {why}", e.position()));
        self.reader.close(e.partition);
    }

    /// Commits what was dealt with, flushes and closes.
    async fn finish(
        mut self,
        progress: &mut dyn ReplayProgress,
    ) -> Result<ReplaySummary, DlqError> {
        let dlq = self.rules.dlq;
        if let Some(batch) = &mut self.eos {
            if self.txn_error.is_none() {
                let committed = batch
                    .commit(&self.consumer, dlq, &mut self.decided, &mut self.ledger)
                    .await;
                self.txn_error = committed.err();
            }
            batch.flush(Duration::from_secs(5));
        } else if !self.cfg.dry_run {
            if let Err(e) = commit_decided(&mut self.decided, &self.consumer, dlq).await {
                tracing::error!(error = %e, "final commit failed");
                self.summary.commit_failed = true;
            }
        }
        progress.finish(&self.summary);
        if let Some(p) = self.producer.take() {
            p.flush(Duration::from_secs(5));
        }
        drop(self.reader);
        close_bounded(self.consumer, Duration::from_secs(5));
        if let Some(why) = self.txn_error {
            tracing::error!(error = %why, "exactly-once: replay stopped");
            return Err(DlqError::Transaction(why));
        }
        match self.output_error {
            Some(e) => Err(e.into()),
            None => Ok(self.summary),
        }
    }
}

/// `--exactly-once`: the transactional producer (`transactional.id` =
/// [`ReplayConfig::transactional_id`]), registered with its coordinator, which aborts a killed
/// run's open transaction; exit 2 when the broker has no transactions.
async fn transactional(
    cfg: &ReplayConfig,
    ledger_name: &str,
) -> Result<(Producer, txn::Batch), DlqError> {
    let cluster = &cfg.cluster;
    if let Some(missing) = kafka::probe_features(cluster)
        .await
        .as_ref()
        .and_then(crate::probe::BrokerFeatures::transactions_missing)
    {
        return Err(DlqError::NoTransactions(missing));
    }
    let id = cfg.transactional_id();
    let metrics = Arc::new(crate::metrics::Metrics::new());
    let producer = Producer::transactional(cluster, metrics, &id)?;
    producer.init_transactions(txn::TIMEOUT).await?;
    tracing::info!(transactional_id = %id, "exactly-once replay: transactions initialised");
    Ok((producer.clone(), txn::Batch::new(producer, ledger_name)))
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
        partition: None,
        timestamp: None,
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

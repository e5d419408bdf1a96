//! The delay tiers' read-ahead buffer (pure): what each tier partition keeps in memory, when it
//! is paused and resumed, and when its messages are released.
//!
//! A tier partition keeps reading behind its head while the head is not due, into a buffer
//! bounded per partition (messages and bytes) and for the whole process (bytes). Messages are
//! released strictly in partition order and never before their due time. The consumer side
//! (pause, resume, seek) is the caller's: this module only says what to do.
//!
//! * A message that is due, with nothing ahead of it, is handed back at once ([`Offer::Ready`]).
//! * The first message that is not due becomes the partition's **head** and is always kept (one
//!   message per partition, as when only the head was held).
//! * Behind the head, a message is kept while it fits the bounds and is due within the
//!   **horizon** (from the time it is read). A partition that reaches its per-partition bound,
//!   or fills the process-wide one, is paused ([`Offer::Kept`] with `pause`).
//! * A message that does not fit or is due beyond the horizon is **not kept**
//!   ([`Offer::Dropped`]): the partition is paused, and when it resumes it must first seek
//!   back to that message's offset ([`Resume::seek_to`]). librdkafka resumes after the last
//!   message it delivered, which is the dropped one.
//! * A paused partition resumes ([`DelayQueue::pop_due`] returns a [`Resume`]) when it is empty,
//!   or when it has drained to the low-water mark (half of each bound, and half of the
//!   process-wide bound) and both its head and the first message not kept are due within half
//!   the horizon. The halves make each resume read a batch, not one message: a partition
//!   resumed the moment a dropped message came within the horizon would read just that one.
//! * **Refills are staggered.** A resumed partition is *refilling* until it is paused again,
//!   or for at most `refill_window`. A partition that still holds messages resumes only while
//!   fewer than `refills` partitions are refilling; the others stay paused, the earliest head
//!   first, until one is paused again or its window ends. A partition that holds nothing
//!   resumes at once (it has nothing to release meanwhile) and does not take a slot: counted,
//!   a stream of emptied partitions that caught up with their logs could keep one that still
//!   holds messages waiting until it ran dry. A resumed
//!   partition is sent up to `max.partition.fetch.bytes` (1 MiB) and keeps only what fits, so
//!   partitions that drained together (even traffic drains them in step) and resumed together
//!   made the client hold a fetch of each at once (up to `fetch.max.bytes`, 4 MiB, per
//!   response): 12 tier partitions took the heap from 6.5 to 18 MiB for a few tens of
//!   milliseconds at each such refill (BENCHMARKS.md, "Staggered refills"). Staggered, the
//!   refills are fetches one after another, each made while the partition still holds half
//!   its bounds.
//!
//! Memory: a partition keeps at most `partition_messages` messages, and more than
//! `partition_bytes` bytes only when its head alone is larger; all partitions together keep at
//! most `total_bytes` plus their heads (see [`DelayQueue::check_bounds`]). Neither grows with
//! the backlog in the topics. `partition_messages = 1` is "hold the head": keep only the head,
//! paused, and resume when it is released.
//!
//! One ordered map of head due times (and of the times when a paused partition's messages come
//! within the horizon) serves every partition, so the poll loop needs one sleep until
//! [`DelayQueue::next_due`], not a timer per partition.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::hash::Hash;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};

/// `--tier-buffer` unless set: bytes kept by all tier partitions together, besides their heads.
pub const DEFAULT_TOTAL_BYTES: usize = 32 * 1024 * 1024;
/// `--tier-buffer-messages` unless set: messages one tier partition keeps, its head included.
/// At 1 000 a resumed partition is read in batches, not one fetch per message (BENCHMARKS.md
/// has the lateness of both settings; `1` keeps "hold the head").
pub const DEFAULT_PARTITION_MESSAGES: usize = 1000;
/// `--tier-buffer-partition-bytes` unless set: bytes one tier partition keeps.
pub const DEFAULT_PARTITION_BYTES: usize = 1024 * 1024;
/// Partitions holding messages that may refill at once. Each refill is sent up to
/// `max.partition.fetch.bytes` (librdkafka's default, 1 MiB) and the client parses all of it
/// before the partition is paused again. Measured on scenario 8 (BENCHMARKS.md, "Staggered
/// refills"): one at a time, the heap rose by 1.9 MiB per refill at the median and 6.3 MiB at
/// the most; 4 at a time took it from 7.7 to 17.3 MiB. A refill takes a fetch round trip or
/// two, and a partition that waits for the slot still has messages to release.
pub const DEFAULT_REFILLS: usize = 1;
/// How long a resumed partition counts as refilling unless it is paused again first: a few
/// fetch round trips at `fetch.wait.max.ms` 20. A partition that has caught up with its tier
/// (nothing more to read) stops holding a refill slot after it.
pub const DEFAULT_REFILL_WINDOW: Duration = Duration::from_millis(100);

/// The bounds of the buffer. Every count is at least 1 ([`crate::config`] validates them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BufferBounds {
    /// Messages one partition keeps, its head included. 1 = hold the head only.
    pub partition_messages: usize,
    /// Bytes one partition keeps (exceeded only by a head that is larger on its own).
    pub partition_bytes: usize,
    /// Bytes all partitions keep together, besides their heads.
    pub total_bytes: usize,
    /// A message behind the head is kept only if it is due within this much of being read.
    pub horizon: Duration,
    /// Partitions still holding messages that may be refilling at once (see the module
    /// documentation).
    pub refills: usize,
    /// How long a resumed partition counts as refilling unless it is paused again first.
    pub refill_window: Duration,
}

impl BufferBounds {
    /// The default bounds with the given horizon (the service uses the shortest tier delay).
    pub fn with_horizon(horizon: Duration) -> BufferBounds {
        BufferBounds {
            partition_messages: DEFAULT_PARTITION_MESSAGES,
            partition_bytes: DEFAULT_PARTITION_BYTES,
            total_bytes: DEFAULT_TOTAL_BYTES,
            horizon,
            refills: DEFAULT_REFILLS,
            refill_window: DEFAULT_REFILL_WINDOW,
        }
    }
}

/// What became of a message offered to the buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Offer<T> {
    /// Due, and nothing of its partition is ahead of it: handle it now.
    Ready(T),
    /// Kept. When `pause`, the caller pauses the partition now.
    Kept {
        /// Pause the partition now.
        pause: bool,
    },
    /// Not kept (no room, or due beyond the horizon); the message is dropped. When `pause`, the
    /// caller pauses the partition now; it will be read again from this message's offset.
    Dropped {
        /// Pause the partition now.
        pause: bool,
    },
}

/// Messages that became due on one partition, in partition order.
#[derive(Debug, PartialEq, Eq)]
pub struct Released<P, T> {
    /// The partition.
    pub partition: P,
    /// The messages, oldest first.
    pub items: Vec<T>,
    /// The bytes they were counted for.
    pub bytes: usize,
}

/// A paused partition that may read again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resume<P> {
    /// The partition.
    pub partition: P,
    /// Seek the partition to this offset before resuming it: messages from here on were read
    /// and not kept.
    pub seek_to: Option<i64>,
}

/// What [`DelayQueue::pop_due`] found.
#[derive(Debug, PartialEq, Eq)]
pub struct Tick<P, T> {
    /// Messages now due, per partition.
    pub released: Vec<Released<P, T>>,
    /// Paused partitions that may read again.
    pub resume: Vec<Resume<P>>,
}

#[derive(Debug)]
struct Entry<T> {
    due: DateTime<Utc>,
    bytes: usize,
    item: T,
}

/// The first message of a partition that was read and not kept.
#[derive(Debug, Clone, Copy)]
struct Refetch {
    offset: i64,
    due: DateTime<Utc>,
}

#[derive(Debug)]
struct Lane<T> {
    items: VecDeque<Entry<T>>,
    bytes: usize,
    /// Paused by this buffer.
    paused: bool,
    refetch: Option<Refetch>,
    /// When this paused lane's messages come within the horizon (its entry in `wakes`).
    wake: Option<DateTime<Utc>>,
}

impl<T> Default for Lane<T> {
    fn default() -> Self {
        Lane {
            items: VecDeque::new(),
            bytes: 0,
            paused: false,
            refetch: None,
            wake: None,
        }
    }
}

/// Every tier partition's buffer, ordered by due time.
#[derive(Debug)]
pub struct DelayQueue<P, T> {
    bounds: BufferBounds,
    horizon: TimeDelta,
    /// Half the horizon: a paused partition resumes only when what it will read next is due
    /// within this, so that each resume reads up to half a horizon of messages, not one.
    resume_horizon: TimeDelta,
    lanes: HashMap<P, Lane<T>>,
    /// (due of the partition's head, partition), for every non-empty lane: the release order.
    order: BTreeSet<(DateTime<Utc>, P)>,
    /// (when its messages come within the horizon, partition), for paused lanes waiting on it.
    wakes: BTreeSet<(DateTime<Utc>, P)>,
    paused: BTreeSet<P>,
    /// Resumed partitions still refilling: (partition, refilling until, held messages when it
    /// resumed). A handful at most; scanned, not indexed.
    refilling: Vec<(P, DateTime<Utc>, bool)>,
    /// When [`DelayQueue::pop_due`] must look at the paused partitions again: one that may
    /// resume is waiting for a refill slot, and a slot freed or will free then.
    recheck: Option<DateTime<Utc>>,
    /// A partition that may resume is waiting for a refill slot.
    deferred: bool,
    total_bytes: usize,
    total_messages: usize,
}

impl<P: Ord + Hash + Copy, T> Default for DelayQueue<P, T> {
    /// Hold the head only (a buffer of one message per partition).
    fn default() -> Self {
        DelayQueue::new(BufferBounds {
            partition_messages: 1,
            ..BufferBounds::with_horizon(Duration::ZERO)
        })
    }
}

impl<P: Ord + Hash + Copy, T> DelayQueue<P, T> {
    /// An empty queue with these bounds (each count raised to at least 1).
    pub fn new(bounds: BufferBounds) -> Self {
        let bounds = BufferBounds {
            partition_messages: bounds.partition_messages.max(1),
            partition_bytes: bounds.partition_bytes.max(1),
            total_bytes: bounds.total_bytes.max(1),
            horizon: bounds.horizon,
            refills: bounds.refills.max(1),
            refill_window: bounds.refill_window,
        };
        let horizon = TimeDelta::from_std(bounds.horizon).unwrap_or(TimeDelta::MAX);
        DelayQueue {
            bounds,
            horizon,
            resume_horizon: horizon / 2,
            lanes: HashMap::new(),
            order: BTreeSet::new(),
            wakes: BTreeSet::new(),
            paused: BTreeSet::new(),
            refilling: Vec::new(),
            recheck: None,
            deferred: false,
            total_bytes: 0,
            total_messages: 0,
        }
    }

    /// The bounds in force.
    pub fn bounds(&self) -> BufferBounds {
        self.bounds
    }

    /// Whether `partition` is paused by this buffer (the circuit breaker must not resume it).
    pub fn is_held(&self, partition: &P) -> bool {
        self.paused.contains(partition)
    }

    fn within(horizon: TimeDelta, due: DateTime<Utc>, now: DateTime<Utc>) -> bool {
        due <= now
            .checked_add_signed(horizon)
            .unwrap_or(DateTime::<Utc>::MAX_UTC)
    }

    /// Offers a message read from `partition` at `offset`, due at `due` (`None`: due now, e.g. a
    /// message without a readable due time, which still waits behind a head), counted as
    /// `bytes`. See the module documentation for the rules.
    pub fn offer(
        &mut self,
        partition: P,
        offset: i64,
        due: Option<DateTime<Utc>>,
        bytes: usize,
        item: T,
        now: DateTime<Utc>,
    ) -> Offer<T> {
        let due = due.unwrap_or(now);
        let b = self.bounds;
        let far = !Self::within(self.horizon, due, now);
        let total_bytes = self.total_bytes;
        let lane = self.lanes.entry(partition).or_default();
        if lane.refetch.is_some() {
            // Waiting to read again from an earlier offset: whatever still arrives is re-read.
            return Offer::Dropped { pause: false };
        }
        if lane.items.is_empty() {
            if due <= now {
                if !lane.paused {
                    self.lanes.remove(&partition);
                }
                return Offer::Ready(item);
            }
            // The head: always kept.
            self.order.insert((due, partition));
        } else if far
            || lane.items.len() >= b.partition_messages
            || lane.bytes + bytes > b.partition_bytes
            || total_bytes + bytes > b.total_bytes
        {
            lane.refetch = Some(Refetch { offset, due });
            let pause = !lane.paused;
            lane.paused = true;
            self.paused.insert(partition);
            self.set_wake(partition, now);
            self.refill_ended(partition, now);
            return Offer::Dropped { pause };
        }
        lane.items.push_back(Entry { due, bytes, item });
        lane.bytes += bytes;
        self.total_bytes += bytes;
        self.total_messages += 1;
        let full = lane.items.len() >= b.partition_messages
            || lane.bytes >= b.partition_bytes
            || self.total_bytes >= b.total_bytes
            || (far && lane.items.len() == 1);
        let pause = full && !lane.paused;
        if pause {
            lane.paused = true;
            self.paused.insert(partition);
            self.set_wake(partition, now);
            self.refill_ended(partition, now);
        }
        Offer::Kept { pause }
    }

    /// `partition` is no longer refilling (paused again, or forgotten): a partition waiting for
    /// a refill slot may resume at the next [`DelayQueue::pop_due`] from `at` on.
    fn refill_ended(&mut self, partition: P, at: DateTime<Utc>) {
        let before = self.refilling.len();
        self.refilling.retain(|(p, _, _)| *p != partition);
        if self.refilling.len() < before && self.deferred {
            self.recheck_at(at);
        }
    }

    /// Makes [`DelayQueue::pop_due`] look at the paused partitions again from `at` on (or
    /// earlier, if it already must).
    fn recheck_at(&mut self, at: DateTime<Utc>) {
        self.recheck = Some(self.recheck.map_or(at, |r| r.min(at)));
    }

    /// Refilling partitions that held messages when they resumed: the ones that take a slot.
    fn refilling_holders(&self) -> impl Iterator<Item = &(P, DateTime<Utc>, bool)> {
        self.refilling.iter().filter(|(_, _, holds)| *holds)
    }

    /// Sets or clears the wake-up of a paused lane: when its head and the first message not
    /// kept come within half the horizon (only needed while that is still ahead).
    fn set_wake(&mut self, partition: P, now: DateTime<Utc>) {
        let Some(lane) = self.lanes.get_mut(&partition) else {
            return;
        };
        if let Some(old) = lane.wake.take() {
            self.wakes.remove(&(old, partition));
        }
        if !lane.paused || lane.items.is_empty() {
            return;
        }
        let latest = lane
            .items
            .front()
            .map(|e| e.due)
            .into_iter()
            .chain(lane.refetch.map(|r| r.due))
            .max();
        let Some(latest) = latest else {
            return;
        };
        let at = latest
            .checked_sub_signed(self.resume_horizon)
            .unwrap_or(latest);
        if at > now {
            lane.wake = Some(at);
            self.wakes.insert((at, partition));
        }
    }

    /// When the loop must next call [`DelayQueue::pop_due`]: the earliest head due time, the
    /// earliest time a paused partition's messages come within the horizon, or when a
    /// partition waiting for a refill slot may get one.
    pub fn next_due(&self) -> Option<DateTime<Utc>> {
        let head = self.order.first().map(|(d, _)| *d);
        let wake = self.wakes.first().map(|(d, _)| *d);
        [head, wake, self.recheck].into_iter().flatten().min()
    }

    /// Releases every message that is due at `now`, partition by partition, in partition order
    /// (a due message behind a head that is not due waits), and says which paused partitions
    /// may read again.
    pub fn pop_due(&mut self, now: DateTime<Utc>) -> Tick<P, T> {
        let mut released = Vec::new();
        let mut still_paused = Vec::new();
        while let Some(&(due, partition)) = self.order.first() {
            if due > now {
                break;
            }
            self.order.pop_first();
            let Some(lane) = self.lanes.get_mut(&partition) else {
                continue;
            };
            let mut items = Vec::new();
            let mut bytes = 0;
            while lane.items.front().is_some_and(|e| e.due <= now) {
                if let Some(e) = lane.items.pop_front() {
                    bytes += e.bytes;
                    items.push(e.item);
                }
            }
            lane.bytes -= bytes;
            self.total_bytes -= bytes;
            self.total_messages -= items.len();
            if lane.paused {
                still_paused.push(partition);
            }
            if let Some(next) = lane.items.front() {
                self.order.insert((next.due, partition));
            } else if !lane.paused {
                self.lanes.remove(&partition);
            }
            released.push(Released {
                partition,
                items,
                bytes,
            });
        }
        // A paused lane's head changed: so may the time its messages come within the horizon.
        for p in still_paused {
            self.set_wake(p, now);
        }
        let mut woke = false;
        while self.wakes.first().is_some_and(|(at, _)| *at <= now) {
            if let Some((_, p)) = self.wakes.pop_first() {
                if let Some(lane) = self.lanes.get_mut(&p) {
                    lane.wake = None;
                }
                woke = true;
            }
        }
        // Refill slots whose window has ended.
        let before = self.refilling.len();
        self.refilling.retain(|(_, until, _)| *until > now);
        let freed = self.refilling.len() < before;
        let recheck = self.recheck.is_some_and(|r| r <= now);
        if recheck {
            self.recheck = None;
        }
        let mut resume = Vec::new();
        if !released.is_empty() || woke || recheck || (freed && self.deferred) {
            // The most urgent first: a partition holding nothing, then the earliest head.
            let mut ready: Vec<(Option<DateTime<Utc>>, P)> = self
                .paused
                .iter()
                .copied()
                .filter(|p| self.may_resume(p, now))
                .map(|p| {
                    let head = self
                        .lanes
                        .get(&p)
                        .and_then(|l| l.items.front())
                        .map(|e| e.due);
                    (head, p)
                })
                .collect();
            ready.sort_unstable();
            self.deferred = false;
            let until = now
                .checked_add_signed(
                    TimeDelta::from_std(self.bounds.refill_window).unwrap_or(TimeDelta::MAX),
                )
                .unwrap_or(DateTime::<Utc>::MAX_UTC);
            for (head, p) in ready {
                let holds = head.is_some();
                if holds && self.refilling_holders().count() >= self.bounds.refills {
                    // Waits for a slot: when one is paused again, or at the first window's end.
                    self.deferred = true;
                    continue;
                }
                self.paused.remove(&p);
                let Some(lane) = self.lanes.get_mut(&p) else {
                    continue;
                };
                lane.paused = false;
                let seek_to = lane.refetch.take().map(|r| r.offset);
                if let Some(old) = lane.wake.take() {
                    self.wakes.remove(&(old, p));
                }
                if lane.items.is_empty() {
                    self.lanes.remove(&p);
                }
                self.refilling.push((p, until, holds));
                resume.push(Resume {
                    partition: p,
                    seek_to,
                });
            }
            let first_end = self.refilling_holders().map(|(_, until, _)| *until).min();
            if let Some(end) = first_end.filter(|_| self.deferred) {
                self.recheck_at(end);
            }
        }
        Tick { released, resume }
    }

    /// When `partition`'s head is due and how many messages its buffer holds (head included),
    /// while it holds any (for `/status`).
    pub fn head(&self, partition: &P) -> Option<(DateTime<Utc>, usize)> {
        let lane = self.lanes.get(partition)?;
        lane.items.front().map(|e| (e.due, lane.items.len()))
    }

    /// Whether a paused partition may read again at `now`.
    fn may_resume(&self, partition: &P, now: DateTime<Utc>) -> bool {
        let Some(lane) = self.lanes.get(partition) else {
            return true;
        };
        let Some(head) = lane.items.front() else {
            return true;
        };
        let b = &self.bounds;
        lane.items.len() <= b.partition_messages / 2
            && lane.bytes <= b.partition_bytes / 2
            && self.total_bytes <= b.total_bytes / 2
            && Self::within(self.resume_horizon, head.due, now)
            && lane
                .refetch
                .is_none_or(|r| Self::within(self.resume_horizon, r.due, now))
    }

    /// The caller could not seek `partition` back to `offset` when told to resume it: it stays
    /// paused, and the next wake-up tells it to resume (and seek) again.
    pub fn seek_failed(&mut self, partition: P, offset: i64, now: DateTime<Utc>) {
        self.refill_ended(partition, now);
        let lane = self.lanes.entry(partition).or_default();
        lane.paused = true;
        lane.refetch = Some(Refetch { offset, due: now });
        self.paused.insert(partition);
        self.wakes.insert((now, partition));
        lane.wake = Some(now);
    }

    /// Forgets a partition (revoked, or shutting down) and returns what it kept, in order, and
    /// their bytes.
    pub fn remove(&mut self, partition: &P) -> (Vec<T>, usize) {
        self.paused.remove(partition);
        // No clock here: the next call of `pop_due`, whenever it is, looks again.
        self.refill_ended(*partition, DateTime::<Utc>::MIN_UTC);
        let Some(lane) = self.lanes.remove(partition) else {
            return (Vec::new(), 0);
        };
        if let Some(head) = lane.items.front() {
            self.order.remove(&(head.due, *partition));
        }
        if let Some(at) = lane.wake {
            self.wakes.remove(&(at, *partition));
        }
        self.total_bytes -= lane.bytes;
        self.total_messages -= lane.items.len();
        (lane.items.into_iter().map(|e| e.item).collect(), lane.bytes)
    }

    /// Every partition paused by this buffer.
    pub fn paused_partitions(&self) -> impl Iterator<Item = &P> {
        self.paused.iter()
    }

    /// Messages kept, in all partitions.
    pub fn len(&self) -> usize {
        self.total_messages
    }

    /// Whether no message is kept.
    pub fn is_empty(&self) -> bool {
        self.total_messages == 0
    }

    /// Bytes kept, in all partitions.
    pub fn bytes(&self) -> usize {
        self.total_bytes
    }

    /// Checks the memory bounds: every partition keeps at most `partition_messages` messages
    /// and at most `partition_bytes` bytes unless it keeps only its head, and all partitions
    /// keep at most `total_bytes` plus their heads' bytes. Returns what is violated.
    pub fn check_bounds(&self) -> Result<(), String> {
        let b = &self.bounds;
        let mut heads = 0;
        let mut total = 0;
        let mut count = 0;
        for lane in self.lanes.values() {
            if lane.items.len() > b.partition_messages {
                return Err(format!("{} messages in one partition", lane.items.len()));
            }
            if lane.items.len() > 1 && lane.bytes > b.partition_bytes {
                return Err(format!("{} bytes in one partition", lane.bytes));
            }
            if lane.bytes != lane.items.iter().map(|e| e.bytes).sum::<usize>() {
                return Err("partition byte count is off".into());
            }
            heads += lane.items.front().map_or(0, |e| e.bytes);
            total += lane.bytes;
            count += lane.items.len();
        }
        if total != self.total_bytes || count != self.total_messages {
            return Err("total counts are off".into());
        }
        if total > b.total_bytes + heads {
            return Err(format!("{total} bytes in all (heads {heads})"));
        }
        let holding = self.refilling_holders().count();
        if holding > b.refills {
            return Err(format!(
                "{holding} partitions holding messages refill at once"
            ));
        }
        if self
            .refilling
            .iter()
            .any(|(p, _, _)| self.paused.contains(p))
        {
            return Err("a paused partition counts as refilling".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t(ms: i64) -> DateTime<Utc> {
        Utc.timestamp_millis_opt(1_800_000_000_000 + ms).unwrap()
    }

    fn bounds(messages: usize, bytes: usize, total: usize, horizon_ms: u64) -> BufferBounds {
        BufferBounds {
            partition_messages: messages,
            partition_bytes: bytes,
            total_bytes: total,
            horizon: Duration::from_millis(horizon_ms),
            refills: usize::MAX,
            refill_window: DEFAULT_REFILL_WINDOW,
        }
    }

    fn resumed<P: Copy, T>(tick: &Tick<P, T>) -> Vec<P> {
        tick.resume.iter().map(|r| r.partition).collect()
    }

    fn items<P, T: Clone>(tick: &Tick<P, T>) -> Vec<T> {
        tick.released
            .iter()
            .flat_map(|r| r.items.iter().cloned())
            .collect()
    }

    #[test]
    fn hold_the_head_pauses_on_the_first_message_not_due_and_resumes_when_it_is_released() {
        let mut q = DelayQueue::default();
        assert_eq!(
            q.offer(1, 0, Some(t(0)), 10, "due", t(0)),
            Offer::Ready("due")
        );
        assert_eq!(
            q.offer(1, 1, Some(t(100)), 10, "a", t(0)),
            Offer::Kept { pause: true }
        );
        assert!(q.is_held(&1));
        assert_eq!(q.next_due(), Some(t(100)));
        assert!(q.pop_due(t(99)).released.is_empty());
        let tick = q.pop_due(t(100));
        assert_eq!(items(&tick), vec!["a"]);
        assert_eq!(
            tick.resume,
            vec![Resume {
                partition: 1,
                seek_to: None
            }]
        );
        assert!(q.is_empty() && !q.is_held(&1) && q.next_due().is_none());
    }

    #[test]
    fn reads_ahead_behind_the_head_and_releases_in_partition_order() {
        let mut q = DelayQueue::new(bounds(10, 1000, 1000, 1000));
        assert_eq!(
            q.offer(7, 0, Some(t(10)), 1, 1, t(0)),
            Offer::Kept { pause: false }
        );
        // Due earlier than the head, but behind it: waits.
        assert_eq!(
            q.offer(7, 1, Some(t(5)), 1, 2, t(0)),
            Offer::Kept { pause: false }
        );
        // Already due, behind a head that is not: waits too.
        assert_eq!(
            q.offer(7, 2, None, 1, 3, t(1)),
            Offer::Kept { pause: false }
        );
        assert_eq!(
            q.offer(7, 3, Some(t(30)), 1, 4, t(1)),
            Offer::Kept { pause: false }
        );
        assert!(q.pop_due(t(9)).released.is_empty());
        let tick = q.pop_due(t(20));
        assert_eq!(items(&tick), vec![1, 2, 3]);
        assert!(tick.resume.is_empty());
        assert_eq!(q.next_due(), Some(t(30)));
        assert_eq!(items(&q.pop_due(t(30))), vec![4]);
        assert!(q.is_empty());
    }

    #[test]
    fn a_full_partition_pauses_and_resumes_at_the_low_water_mark() {
        let mut q = DelayQueue::new(bounds(4, 1000, 1000, 1000));
        for i in 0..3 {
            assert_eq!(
                q.offer(1, i, Some(t(10 * (i + 1))), 1, i, t(0)),
                Offer::Kept { pause: false }
            );
        }
        assert_eq!(
            q.offer(1, 3, Some(t(40)), 1, 3, t(0)),
            Offer::Kept { pause: true }
        );
        // 3 left: above the low-water mark of 2.
        let tick = q.pop_due(t(10));
        assert!(tick.resume.is_empty());
        let tick = q.pop_due(t(20));
        assert_eq!(
            tick.resume,
            vec![Resume {
                partition: 1,
                seek_to: None
            }]
        );
        assert!(!q.is_held(&1));
    }

    #[test]
    fn partitions_that_drained_together_refill_a_few_at_a_time() {
        // Three partitions of 4 messages, each drained to its low-water mark at the same time.
        let mut q = DelayQueue::new(BufferBounds {
            refills: 2,
            refill_window: Duration::from_millis(50),
            ..bounds(4, 1000, 1000, 1000)
        });
        for p in [1, 2, 3] {
            for i in 0..4 {
                // Partition 3's head is due first after the drain, then 1, then 2.
                let after = match p {
                    3 => 20,
                    1 => 30,
                    _ => 40,
                };
                let due = if i < 2 { 10 } else { after + i };
                q.offer(p, i, Some(t(due)), 1, (p, i), t(0));
            }
            assert!(q.is_held(&p));
        }
        let tick = q.pop_due(t(10));
        assert_eq!(tick.released.len(), 3);
        // Two slots: the earliest heads (3, then 1); 2 waits, paused, and the loop is woken at
        // the end of the first window at the latest.
        assert_eq!(resumed(&tick), vec![3, 1]);
        assert!(q.is_held(&2));
        assert_eq!(q.next_due(), Some(t(22)), "3's head first");
        q.check_bounds().unwrap();
        // Partition 3 refills and pauses again: its slot goes to 2 at the next call.
        assert_eq!(
            q.offer(3, 4, Some(t(40)), 1, (3, 4), t(11)),
            Offer::Kept { pause: false }
        );
        assert_eq!(
            q.offer(3, 5, Some(t(40)), 1, (3, 5), t(11)),
            Offer::Kept { pause: true }
        );
        assert_eq!(q.next_due(), Some(t(11)));
        let tick = q.pop_due(t(11));
        assert!(tick.released.is_empty());
        assert_eq!(
            tick.resume,
            vec![Resume {
                partition: 2,
                seek_to: None
            }]
        );
        q.check_bounds().unwrap();
    }

    #[test]
    fn a_refill_slot_frees_at_the_end_of_its_window_and_an_empty_partition_never_waits() {
        let mut q = DelayQueue::new(BufferBounds {
            refills: 1,
            refill_window: Duration::from_millis(50),
            ..bounds(4, 1000, 1000, 1000)
        });
        for p in [1, 2] {
            for i in 0..4 {
                let due = if i < 2 { 10 } else { 100 + p as i64 };
                q.offer(p, i, Some(t(due)), 1, i, t(0));
            }
        }
        // Partition 9 empties at 10: it must resume whatever the slots, and takes none (else a
        // stream of emptied partitions could keep 1 and 2 waiting until they ran dry).
        for i in 0..3 {
            q.offer(9, i, Some(t(10)), 1, i, t(0));
        }
        assert_eq!(
            q.offer(9, 3, Some(t(10)), 1, 3, t(0)),
            Offer::Kept { pause: true }
        );
        // 9 first (it holds nothing), then 1 takes the one slot; 2 waits for 1's window.
        assert_eq!(resumed(&q.pop_due(t(10))), vec![9, 1]);
        assert_eq!(q.next_due(), Some(t(60)));
        assert!(q.pop_due(t(59)).resume.is_empty());
        // Partition 1 caught up with its log (it is never paused again): its window ends.
        assert_eq!(resumed(&q.pop_due(t(60))), vec![2]);
        q.check_bounds().unwrap();
    }

    #[test]
    fn a_revoked_refilling_partition_gives_its_slot_back() {
        let mut q = DelayQueue::new(BufferBounds {
            refills: 1,
            refill_window: Duration::from_secs(60),
            ..bounds(2, 1000, 1000, 1000)
        });
        for p in [1, 2] {
            q.offer(p, 0, Some(t(10)), 1, 0, t(0));
            assert_eq!(
                q.offer(p, 1, Some(t(100 + p as i64)), 1, 1, t(0)),
                Offer::Kept { pause: true }
            );
        }
        assert_eq!(resumed(&q.pop_due(t(10))), vec![1]);
        assert!(q.is_held(&2));
        q.remove(&1);
        // The loop is told to look again at once, and 2 takes the slot.
        assert!(q.next_due().is_some_and(|d| d <= t(11)));
        assert_eq!(resumed(&q.pop_due(t(11))), vec![2]);
        q.check_bounds().unwrap();
    }

    #[test]
    fn a_message_beyond_the_horizon_is_not_kept_and_is_read_again_later() {
        let mut q = DelayQueue::new(bounds(100, 1000, 1000, 50));
        assert_eq!(
            q.offer(1, 10, Some(t(20)), 1, "head", t(0)),
            Offer::Kept { pause: false }
        );
        assert_eq!(
            q.offer(1, 11, Some(t(500)), 1, "far", t(0)),
            Offer::Dropped { pause: true }
        );
        // A straggler read before the pause took effect is not kept either.
        assert_eq!(
            q.offer(1, 12, Some(t(30)), 1, "late", t(0)),
            Offer::Dropped { pause: false }
        );
        // The head is released, the partition is empty: read again from the dropped offset.
        let tick = q.pop_due(t(20));
        assert_eq!(items(&tick), vec!["head"]);
        assert_eq!(
            tick.resume,
            vec![Resume {
                partition: 1,
                seek_to: Some(11)
            }]
        );
        // Read again, it is the head now: kept (and paused, being beyond the horizon).
        assert_eq!(
            q.offer(1, 11, Some(t(500)), 1, "far", t(21)),
            Offer::Kept { pause: true }
        );
        assert_eq!(items(&q.pop_due(t(500))), vec!["far"]);
    }

    #[test]
    fn a_paused_partition_wakes_when_what_it_dropped_comes_within_half_the_horizon() {
        let mut q = DelayQueue::new(bounds(100, 1000, 1000, 100));
        q.offer(1, 0, Some(t(10)), 1, 0, t(0));
        q.offer(1, 1, Some(t(90)), 1, 1, t(0));
        assert_eq!(
            q.offer(1, 2, Some(t(120)), 1, 2, t(0)),
            Offer::Dropped { pause: true }
        );
        let tick = q.pop_due(t(10));
        assert_eq!(items(&tick), vec![0]);
        assert!(
            tick.resume.is_empty(),
            "the dropped message is still too far"
        );
        // Offset 2 (due 120) comes within half the horizon (50) at 70, before the head is due.
        assert_eq!(q.next_due(), Some(t(70)));
        assert!(q.pop_due(t(69)).resume.is_empty());
        let tick = q.pop_due(t(70));
        assert!(tick.released.is_empty());
        assert_eq!(
            tick.resume,
            vec![Resume {
                partition: 1,
                seek_to: Some(2)
            }]
        );
        assert_eq!(q.next_due(), Some(t(90)));
    }

    #[test]
    fn the_process_wide_bound_pauses_drops_and_holds_until_it_drains() {
        let mut q = DelayQueue::new(bounds(100, 1000, 10, 1000));
        let kept = |pause| Offer::<&str>::Kept { pause };
        assert_eq!(q.offer(1, 0, Some(t(10)), 6, "a", t(0)), kept(false));
        assert_eq!(q.offer(2, 0, Some(t(20)), 2, "b", t(0)), kept(false));
        // Fills the process-wide bound: paused.
        assert_eq!(q.offer(2, 1, Some(t(20)), 2, "c", t(0)), kept(true));
        // A head is kept even so (one message per partition), and pauses too.
        assert_eq!(q.offer(3, 0, Some(t(30)), 5, "d", t(0)), kept(true));
        // Behind a head, no room: not kept.
        assert_eq!(
            q.offer(1, 1, Some(t(15)), 1, "e", t(0)),
            Offer::Dropped { pause: true }
        );
        q.check_bounds().unwrap();
        assert_eq!(q.bytes(), 15);
        let tick = q.pop_due(t(10));
        // Partition 1 is empty: it reads again from "e". Partition 2 waits until the total has
        // drained to half the bound.
        assert_eq!(
            tick.resume,
            vec![Resume {
                partition: 1,
                seek_to: Some(1)
            }]
        );
        let tick = q.pop_due(t(20));
        assert!(tick.resume.contains(&Resume {
            partition: 2,
            seek_to: None
        }));
    }

    #[test]
    fn removing_a_partition_forgets_it() {
        let mut q = DelayQueue::new(bounds(1, 1000, 1000, 0));
        q.offer(1, 0, Some(t(10)), 3, "x", t(0));
        q.offer(2, 0, Some(t(20)), 4, "y", t(0));
        assert_eq!(q.remove(&1), (vec!["x"], 3));
        assert_eq!(q.next_due(), Some(t(20)));
        assert_eq!(q.remove(&1), (vec![], 0));
        assert_eq!((q.len(), q.bytes()), (1, 4));
        assert!(!q.is_held(&1) && q.is_held(&2));
    }

    proptest::proptest! {
        /// Invariants 2 and 3 of ARCHITECTURE.md at the level of the buffer, against a model of
        /// a partition's log and librdkafka's pause / resume / seek: whatever is offered and
        /// whenever the loop wakes, nothing is released before its due time, each partition's
        /// messages are released exactly once and in offset order, nothing is offered from a
        /// paused partition except one message in flight, the bounds always hold, and
        /// everything comes out in the end.
        #[test]
        fn bounded_never_early_in_order_and_nothing_lost(
            logs in proptest::collection::vec(
                proptest::collection::vec((0i64..400, 1usize..40), 0..60), 1..4),
            messages in 1usize..6,
            bytes in 1usize..100,
            total in 1usize..150,
            horizon in 0u64..300,
            refills in 1usize..4,
            window in 1u64..60,
            steps in proptest::collection::vec((0u8..4, 0i64..40), 1..400),
        ) {
            let b = BufferBounds {
                refills,
                refill_window: Duration::from_millis(window),
                ..bounds(messages, bytes, total, horizon)
            };
            let mut q: DelayQueue<usize, (usize, i64, i64)> = DelayQueue::new(b);
            // Per partition: the next offset the consumer delivers, and whether it is paused.
            let mut position = vec![0i64; logs.len()];
            let mut paused = vec![false; logs.len()];
            let mut out: Vec<Vec<i64>> = vec![Vec::new(); logs.len()];
            let mut now = 0i64;
            let step = |q: &mut DelayQueue<usize, (usize, i64, i64)>, kind: u8, arg: i64,
                            now: &mut i64, position: &mut Vec<i64>, paused: &mut Vec<bool>,
                            out: &mut Vec<Vec<i64>>| -> Result<(), proptest::test_runner::TestCaseError> {
                if kind == 0 {
                    *now += arg;
                    if q.next_due().is_some_and(|d| d > t(*now)) {
                        return Ok(());
                    }
                    let tick = q.pop_due(t(*now));
                    for r in tick.released {
                        for (p, o, due) in r.items {
                            proptest::prop_assert!(due <= *now, "released {} due {} at {}", o, due, now);
                            proptest::prop_assert_eq!(p, r.partition);
                            out[p].push(o);
                        }
                    }
                    for r in tick.resume {
                        proptest::prop_assert!(paused[r.partition]);
                        paused[r.partition] = false;
                        if let Some(o) = r.seek_to {
                            position[r.partition] = o;
                        }
                    }
                } else {
                    let p = arg as usize % logs.len();
                    if paused[p] {
                        return Ok(());
                    }
                    let o = position[p];
                    let Some(&(due, size)) = logs[p].get(o as usize) else {
                        return Ok(());
                    };
                    position[p] += 1;
                    match q.offer(p, o, Some(t(due)), size, (p, o, due), t(*now)) {
                        Offer::Ready((_, o, due)) => {
                            proptest::prop_assert!(due <= *now);
                            out[p].push(o);
                        }
                        Offer::Kept { pause } | Offer::Dropped { pause } => {
                            if pause {
                                paused[p] = true;
                            }
                        }
                    }
                    proptest::prop_assert_eq!(paused[p], q.is_held(&p));
                }
                if let Err(e) = q.check_bounds() {
                    proptest::prop_assert!(false, "{}", e);
                }
                Ok(())
            };
            for (kind, arg) in steps {
                step(&mut q, kind, arg, &mut now, &mut position, &mut paused, &mut out)?;
            }
            // Drain: read everything, letting time pass.
            for _ in 0..10_000 {
                if (0..logs.len()).all(|p| position[p] as usize >= logs[p].len()) && q.is_empty() {
                    break;
                }
                for p in 0..logs.len() {
                    step(&mut q, 1, p as i64, &mut now, &mut position, &mut paused, &mut out)?;
                }
                step(&mut q, 0, 7, &mut now, &mut position, &mut paused, &mut out)?;
            }
            for p in 0..logs.len() {
                let expected: Vec<i64> = (0..logs[p].len() as i64).collect();
                proptest::prop_assert_eq!(&out[p], &expected, "partition {}", p);
            }
            proptest::prop_assert!(q.is_empty() && q.next_due().is_none());
        }
    }
}

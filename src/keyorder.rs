//! Key-ordered retries (`--ordering key`, issue 21): which keys of a main partition have an
//! earlier message in the retry path, where their later messages wait, and every decision about
//! them (pure). The design and its invariants are in ARCHITECTURE.md, "Key-ordered retries".
//!
//! A key whose message went to a delay tier is **blocked** by it (the *blocker*, named by its
//! main-topic offset). Later messages of that key read from the main topic are not handled:
//! they are appended, in order, to the key's partition of the *waiting log*
//! (`<main>.waiting`, partition *p* for main partition *p*) as **followers**. When the blocker
//! ends (handled, or dead-lettered) the instance that handled it appends a `done` record; the
//! owner of main partition *p* then handles the key's followers in log order. A follower that
//! fails transiently becomes the key's new blocker and the rest keep waiting behind it.
//!
//! Everything the owner knows is in the waiting log, so it can be rebuilt after a crash or a
//! rebalance by folding the log from its low-water mark ([`Chains::low_water`]) with
//! [`Chains::apply`]. Memory is one [`Chain`] per key currently in the retry path (or with
//! followers not yet handled), never per waiting message.
//!
//! The records, told apart by the `rebound-waiting` header ([`Entry`]):
//!
//! | record | written by | means |
//! |---|---|---|
//! | `blocked` | the job that sent the key's message to a tier, once that copy is acknowledged | the key is blocked by main offset *b* (and, when the blocker was a follower, that follower is passed) |
//! | `follow` | the job of a main message of a blocked key | a follower: the message itself (key, payload, headers) |
//! | `passed` | the owner, now and then | the key's followers below log offset *n* are handled |
//! | `done` | the job that ended blocker *b* in a tier (any instance) | *b* is no longer in the retry path |

use std::collections::{HashMap, HashSet, VecDeque};

/// How many `done` records that matched no blocker are remembered (see [`Chains::done`]).
pub const EARLY_DONES: usize = 10_000;

/// Header naming the kind of a waiting-log record: `blocked`, `follow`, `passed` or `done`.
pub const WAITING: &str = "rebound-waiting";
/// Header of a waiting-log record: a main-topic offset (the blocker of `blocked` and `done`,
/// the follower's own offset for `follow`).
pub const WAITING_OFFSET: &str = "rebound-waiting-offset";
/// Header of a waiting-log record: a waiting-log offset (`blocked`: the follower that became
/// the blocker; `passed`: every follower below it is handled).
pub const WAITING_FOLLOWER: &str = "rebound-waiting-follower";
/// Header of `passed`: how many followers the owner counted as waiting then (for the gauge).
pub const WAITING_COUNT: &str = "rebound-waiting-count";
/// Header of `blocked` and `moved`: the index of the tier the blocker went to (0 = the first
/// tier), for the per-tier gauges.
pub const WAITING_TIER: &str = "rebound-waiting-tier";
/// Every header of a waiting-log record that is not the message's own (removed from a
/// follower before it is handled).
pub const RECORD_HEADERS: [&str; 5] = [
    WAITING,
    WAITING_OFFSET,
    WAITING_FOLLOWER,
    WAITING_COUNT,
    WAITING_TIER,
];
/// Header of a tier copy of a blocker: `<main partition>:<main offset>`. Whoever ends that copy
/// appends `done` for it to that partition of the waiting log.
pub const ORDERING: &str = "rebound-ordering";

/// One record of the waiting log, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    /// The key is blocked by the message at main offset `blocker`, which went to tier `tier`
    /// (`None` in records that do not say); `follower`: that message was the follower at this
    /// waiting-log offset (so it is passed).
    Blocked {
        blocker: i64,
        follower: Option<i64>,
        tier: Option<u16>,
    },
    /// A follower: the main message at `main_offset`, waiting behind its key.
    Follow { main_offset: i64 },
    /// Every follower of the key below waiting-log offset `next` is handled; `waiting` were
    /// still waiting when the owner wrote this.
    Passed { next: i64, waiting: u64 },
    /// The blocker at main offset `blocker` left the retry path.
    Done { blocker: i64 },
    /// The blocker at main offset `blocker` failed again and went on to tier `tier`
    /// (informational: for the per-tier gauges; written without waiting, so it may be missing or
    /// come after the blocker's `done`).
    Moved { blocker: i64, tier: u16 },
}

/// Why a waiting-log record could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntryError {
    #[error("no rebound-waiting header: not a waiting-log record")]
    NotWaiting,
    #[error("unknown rebound-waiting kind {0:?}")]
    UnknownKind(String),
    #[error("header {0} missing or not a number")]
    BadNumber(&'static str),
}

impl Entry {
    /// The kind's header value.
    pub fn kind(&self) -> &'static str {
        match self {
            Entry::Blocked { .. } => "blocked",
            Entry::Follow { .. } => "follow",
            Entry::Passed { .. } => "passed",
            Entry::Done { .. } => "done",
            Entry::Moved { .. } => "moved",
        }
    }

    /// The headers that encode this record (name, value).
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        let mut out = vec![(WAITING, self.kind().to_string())];
        match *self {
            Entry::Blocked {
                blocker,
                follower,
                tier,
            } => {
                out.push((WAITING_OFFSET, blocker.to_string()));
                if let Some(f) = follower {
                    out.push((WAITING_FOLLOWER, f.to_string()));
                }
                if let Some(t) = tier {
                    out.push((WAITING_TIER, t.to_string()));
                }
            }
            Entry::Follow { main_offset } => out.push((WAITING_OFFSET, main_offset.to_string())),
            Entry::Passed { next, waiting } => {
                out.push((WAITING_FOLLOWER, next.to_string()));
                out.push((WAITING_COUNT, waiting.to_string()));
            }
            Entry::Done { blocker } => out.push((WAITING_OFFSET, blocker.to_string())),
            Entry::Moved { blocker, tier } => {
                out.push((WAITING_OFFSET, blocker.to_string()));
                out.push((WAITING_TIER, tier.to_string()));
            }
        }
        out
    }

    /// Decodes a record from its headers; `get` returns a header's value by name.
    pub fn decode<'a>(get: impl Fn(&str) -> Option<&'a [u8]>) -> Result<Entry, EntryError> {
        let kind = get(WAITING).ok_or(EntryError::NotWaiting)?;
        let num = |name: &'static str| -> Result<i64, EntryError> {
            get(name)
                .and_then(|v| std::str::from_utf8(v).ok())
                .and_then(|s| s.trim().parse::<i64>().ok())
                .ok_or(EntryError::BadNumber(name))
        };
        let tier = || -> Result<u16, EntryError> {
            u16::try_from(num(WAITING_TIER)?).map_err(|_| EntryError::BadNumber(WAITING_TIER))
        };
        match kind {
            b"blocked" => Ok(Entry::Blocked {
                blocker: num(WAITING_OFFSET)?,
                follower: get(WAITING_FOLLOWER)
                    .map(|_| num(WAITING_FOLLOWER))
                    .transpose()?,
                tier: get(WAITING_TIER).map(|_| tier()).transpose()?,
            }),
            b"follow" => Ok(Entry::Follow {
                main_offset: num(WAITING_OFFSET)?,
            }),
            b"passed" => Ok(Entry::Passed {
                next: num(WAITING_FOLLOWER)?,
                waiting: num(WAITING_COUNT).map(|n| n.max(0) as u64).unwrap_or(0),
            }),
            b"done" => Ok(Entry::Done {
                blocker: num(WAITING_OFFSET)?,
            }),
            b"moved" => Ok(Entry::Moved {
                blocker: num(WAITING_OFFSET)?,
                tier: tier()?,
            }),
            other => Err(EntryError::UnknownKind(
                String::from_utf8_lossy(other).into_owned(),
            )),
        }
    }
}

/// The value of [`ORDERING`] on a blocker's tier copy.
pub fn ordering_value(main_partition: i32, main_offset: i64) -> String {
    format!("{main_partition}:{main_offset}")
}

/// Reads [`ORDERING`]'s value: `(main partition, main offset)`.
pub fn parse_ordering(value: &[u8]) -> Option<(i32, i64)> {
    let s = std::str::from_utf8(value).ok()?;
    let (p, o) = s.trim().split_once(':')?;
    Some((p.parse().ok()?, o.parse().ok()?))
}

/// What the retry path holds of one key of a main partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    /// The main offset of the key's message now in the retry tiers, if any.
    pub blocker: Option<i64>,
    /// The tier that message is in, as far as the log said (`blocked`, then `moved`).
    pub tier: Option<u16>,
    /// Every follower below this waiting-log offset is handled.
    pub next_follower: i64,
    /// The waiting-log offset of the key's last follower, if any.
    pub last_follower: Option<i64>,
    /// The highest main offset of the key that entered the chain (blocker or follower): a main
    /// message at or below it, read again after a restart, is already in the chain.
    pub last_main: i64,
    /// The waiting-log offset of the record that opened this chain: the log must be kept (and
    /// read again after a restart) from here while the chain lives.
    pub since: i64,
    /// Followers written and not yet handled (exact while the owner lives; after a rebuild,
    /// what the last `passed` said plus the followers written after it).
    pub waiting: u64,
    /// `follow` records being written (live only).
    pub following: u32,
    /// The follower being handled, by waiting-log offset (live only).
    pub in_flight: Option<i64>,
    /// Followers passed since the last `passed` record.
    pub unrecorded: bool,
    /// The first follower the reader went past while the key was blocked (or that a rebuild
    /// has not read yet): where it goes back to when the key is freed.
    pub resume_at: Option<i64>,
}

impl Chain {
    fn new(blocker: i64, since: i64) -> Chain {
        Chain {
            blocker: Some(blocker),
            tier: None,
            next_follower: since + 1,
            last_follower: None,
            last_main: blocker,
            since,
            waiting: 0,
            following: 0,
            in_flight: None,
            unrecorded: false,
            resume_at: None,
        }
    }

    /// Followers are written and not all handled.
    pub fn pending(&self) -> bool {
        self.last_follower.is_some_and(|l| l >= self.next_follower)
    }

    /// Its next follower may be handled now.
    fn releasable(&self) -> bool {
        self.blocker.is_none() && self.in_flight.is_none() && self.pending()
    }

    /// Nothing of the key is in the retry path or waiting: it is ordinary again.
    fn finished(&self) -> bool {
        self.blocker.is_none() && !self.pending() && self.following == 0 && self.in_flight.is_none()
    }
}

/// What to do with a main-topic message of `--ordering key`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MainAction {
    /// Its key is not in the retry path: handle it.
    Handle,
    /// Its key is: append it to the waiting log as a follower.
    Follow,
    /// It is already in its key's chain (read again after a restart): nothing to do.
    Skip,
}

/// What the waiting log's reader does with a `follow` record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FollowAction {
    /// It is its key's next follower and the key is free: handle it now.
    Handle,
    /// Not now: handled already, its key is blocked, or it is not its key's next one (a
    /// later one is found again by a rewind, [`Chains::rewind`]).
    Skip,
    /// Its key's previous follower is being handled: keep this record and read no further
    /// in this partition until that one ends.
    Hold,
}

/// Something a `passed` record should say (see [`Chains::unrecorded`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PassedNote {
    pub key: Vec<u8>,
    pub entry: Entry,
}

/// The chains of one main partition.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Chains {
    keys: HashMap<Vec<u8>, Chain>,
    /// Every waiting-log record below this offset has been applied.
    applied_to: i64,
    /// `done` records that matched no blocker, newest last, at most [`EARLY_DONES`]: a
    /// blocker's copy is written before its `blocked` record, so (after a broker stall, or a
    /// crash between the two) its `done` can come first; the `blocked` record then finds it
    /// here and does not block. Otherwise they are the `done` of copies written twice.
    early_dones: HashSet<(Vec<u8>, i64)>,
    early_order: VecDeque<(Vec<u8>, i64)>,
}

impl Chains {
    /// Empty, with nothing of the log below `from` to apply.
    pub fn starting_at(from: i64) -> Chains {
        Chains {
            keys: HashMap::new(),
            applied_to: from,
            early_dones: HashSet::new(),
            early_order: VecDeque::new(),
        }
    }

    /// The chain of `key`, if it has one.
    #[cfg(test)]
    pub fn get(&self, key: &[u8]) -> Option<&Chain> {
        self.keys.get(key)
    }

    /// Keys with a chain (blocked, or with followers not yet handled).
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Keys blocked now.
    pub fn blocked_keys(&self) -> usize {
        self.keys.values().filter(|c| c.blocker.is_some()).count()
    }

    /// Followers waiting, over all keys.
    pub fn waiting(&self) -> u64 {
        self.keys.values().map(|c| c.waiting).sum()
    }

    /// Adds, per tier, the keys blocked by a message in that tier and the followers waiting
    /// behind them to `out` (index = tier; a tier the log did not name counts as the first, one
    /// beyond `out` as the last). Followers of keys no longer blocked (being released) count in
    /// no tier.
    pub fn add_by_tier(&self, out: &mut [(i64, i64)]) {
        let Some(last) = out.len().checked_sub(1) else {
            return;
        };
        for c in self.keys.values().filter(|c| c.blocker.is_some()) {
            let t = usize::from(c.tier.unwrap_or(0)).min(last);
            out[t].0 += 1;
            out[t].1 += c.waiting as i64;
        }
    }

    /// Every record below this waiting-log offset has been applied.
    pub fn applied_to(&self) -> i64 {
        self.applied_to
    }

    /// The waiting-log offset from which the log must be read to rebuild this state: the
    /// oldest open chain's first record, or everything applied when no chain is open. Safe to
    /// commit as the waiting log's low-water mark.
    pub fn low_water(&self) -> i64 {
        self.keys
            .values()
            .map(|c| c.since)
            .min()
            .unwrap_or(self.applied_to)
            .min(self.applied_to)
    }

    fn settle(&mut self, key: &[u8]) -> bool {
        if self.keys.get(key).is_some_and(Chain::finished) {
            self.keys.remove(key);
            return true;
        }
        false
    }

    /// Decides for a main message of `key` at `offset` (live). `Follow` counts a `follow`
    /// record as being written until [`Chains::followed`] or [`Chains::follow_abandoned`].
    pub fn main_action(&mut self, key: Option<&[u8]>, offset: i64) -> MainAction {
        let Some(chain) = key.and_then(|k| self.keys.get_mut(k)) else {
            return MainAction::Handle;
        };
        if offset <= chain.last_main {
            return MainAction::Skip;
        }
        chain.last_main = offset;
        chain.following += 1;
        MainAction::Follow
    }

    /// The `follow` record of `key` is in the log at `log_offset` (acknowledged).
    pub fn followed(&mut self, key: &[u8], log_offset: i64) {
        if let Some(c) = self.keys.get_mut(key) {
            c.following = c.following.saturating_sub(1);
            c.last_follower = Some(c.last_follower.map_or(log_offset, |l| l.max(log_offset)));
            c.waiting += 1;
        }
        self.settle(key);
    }

    /// A `follow` record of `key` was not written (its job was handed back).
    pub fn follow_abandoned(&mut self, key: &[u8]) {
        if let Some(c) = self.keys.get_mut(key) {
            c.following = c.following.saturating_sub(1);
        }
        self.settle(key);
    }

    /// The `blocked` record of `key` is in the log at `log_offset`: the message at main offset
    /// `blocker` (the follower at waiting-log offset `follower`, if it was one) is in a tier.
    /// If that blocker's `done` came first, the key is not blocked (but its chain is opened, so
    /// that followers written meanwhile are not lost).
    pub fn blocked(
        &mut self,
        key: &[u8],
        blocker: i64,
        follower: Option<i64>,
        tier: Option<u16>,
        log_offset: i64,
    ) {
        self.set_blocked(key, blocker, follower, tier, log_offset);
        self.settle(key);
    }

    fn set_blocked(
        &mut self,
        key: &[u8],
        blocker: i64,
        follower: Option<i64>,
        tier: Option<u16>,
        log_offset: i64,
    ) {
        let ended = self.early_dones.remove(&(key.to_vec(), blocker));
        let c = self
            .keys
            .entry(key.to_vec())
            .or_insert_with(|| Chain::new(blocker, log_offset));
        c.blocker = (!ended).then_some(blocker);
        c.tier = tier;
        c.last_main = c.last_main.max(blocker);
        if let Some(f) = follower {
            if f >= c.next_follower {
                c.next_follower = f + 1;
                c.waiting = c.waiting.saturating_sub(1);
            }
            if c.in_flight == Some(f) {
                c.in_flight = None;
            }
        }
    }

    /// The follower of `key` at waiting-log offset `follower` was handled (or dead-lettered).
    /// Returns whether the key is ordinary again.
    pub fn passed(&mut self, key: &[u8], follower: i64) -> bool {
        if let Some(c) = self.keys.get_mut(key) {
            if c.in_flight == Some(follower) {
                c.in_flight = None;
            }
            if follower >= c.next_follower {
                c.next_follower = follower + 1;
                c.waiting = c.waiting.saturating_sub(1);
                c.unrecorded = true;
            }
        }
        self.settle(key)
    }

    /// The follower of `key` at `follower` was not finished (handed back): it is read again.
    pub fn follower_abandoned(&mut self, key: &[u8], follower: i64) {
        if let Some(c) = self.keys.get_mut(key) {
            if c.in_flight == Some(follower) {
                c.in_flight = None;
            }
        }
    }

    /// The blocker at main offset `blocker` of `key` left the retry path (a `done` record).
    /// Returns whether that freed the key. A `done` that matches no blocker is remembered (at
    /// most [`EARLY_DONES`]): its `blocked` record may come after it.
    pub fn done(&mut self, key: &[u8], blocker: i64) -> bool {
        let freed = self.set_done(key, blocker);
        self.settle(key);
        freed
    }

    fn set_done(&mut self, key: &[u8], blocker: i64) -> bool {
        match self.keys.get_mut(key) {
            Some(c) if c.blocker == Some(blocker) => {
                c.blocker = None;
                true
            }
            _ => {
                let id = (key.to_vec(), blocker);
                if self.early_dones.insert(id.clone()) {
                    self.early_order.push_back(id);
                    if self.early_order.len() > EARLY_DONES {
                        if let Some(old) = self.early_order.pop_front() {
                            self.early_dones.remove(&old);
                        }
                    }
                }
                false
            }
        }
    }

    /// Applies the record at `log_offset` while rebuilding (records are applied in log order,
    /// each once). A record of a key without a chain belongs to a chain that ended before the
    /// low-water mark was taken and is ignored, except `blocked`, which opens one. No chain is
    /// closed before [`Chains::rebuilt`]: a `done` can come before a `follow` the owner wrote
    /// while it had not read that `done` yet, and that follower must not be lost.
    pub fn apply(&mut self, log_offset: i64, key: &[u8], entry: Entry) {
        if log_offset < self.applied_to {
            return;
        }
        self.applied_to = log_offset + 1;
        match entry {
            Entry::Blocked {
                blocker,
                follower,
                tier,
            } => {
                self.set_blocked(key, blocker, follower, tier, log_offset);
            }
            Entry::Follow { main_offset } => {
                if let Some(c) = self.keys.get_mut(key) {
                    c.last_follower = Some(log_offset);
                    c.last_main = c.last_main.max(main_offset);
                    c.waiting += 1;
                }
            }
            Entry::Passed { next, waiting } => {
                if let Some(c) = self.keys.get_mut(key) {
                    if next > c.next_follower {
                        c.next_follower = next;
                        c.waiting = waiting;
                    }
                }
            }
            Entry::Done { blocker } => {
                self.set_done(key, blocker);
            }
            Entry::Moved { blocker, tier } => self.moved(key, blocker, tier),
        }
    }

    /// The blocker at main offset `blocker` of `key` went on to tier `tier`.
    fn moved(&mut self, key: &[u8], blocker: i64, tier: u16) {
        if let Some(c) = self.keys.get_mut(key) {
            if c.blocker == Some(blocker) {
                c.tier = Some(tier);
            }
        }
    }

    /// A record at `log_offset` was read live: only `done` changes the state (the owner's own
    /// records were applied when they were acknowledged). Returns whether a key was freed.
    pub fn read_live(&mut self, log_offset: i64, key: &[u8], entry: Entry) -> bool {
        let fresh = log_offset >= self.applied_to;
        if fresh {
            self.applied_to = log_offset + 1;
        }
        match entry {
            Entry::Done { blocker } if fresh => self.done(key, blocker),
            Entry::Moved { blocker, tier } if fresh => {
                self.moved(key, blocker, tier);
                false
            }
            _ => false,
        }
    }

    /// The reader met the `follow` record of `key` at `log_offset`.
    pub fn on_follow(&mut self, key: &[u8], log_offset: i64) -> FollowAction {
        let Some(c) = self.keys.get_mut(key) else {
            return FollowAction::Skip;
        };
        // Written by a job whose end the loop has not seen yet.
        c.last_follower = Some(c.last_follower.map_or(log_offset, |l| l.max(log_offset)));
        if log_offset < c.next_follower || c.in_flight == Some(log_offset) {
            return FollowAction::Skip;
        }
        if c.blocker.is_some() {
            // Gone past while blocked: the reader comes back here when the key is freed.
            c.resume_at = Some(c.resume_at.map_or(log_offset, |r| r.min(log_offset)));
            return FollowAction::Skip;
        }
        if c.resume_at.is_some_and(|r| r < log_offset) {
            // An earlier follower was gone past; the reader is sent back to it.
            return FollowAction::Skip;
        }
        if c.in_flight.is_some() {
            return FollowAction::Hold;
        }
        c.resume_at = None;
        c.in_flight = Some(log_offset);
        FollowAction::Handle
    }

    /// Where the reader, about to read `position`, must go back to: the lowest follower it went
    /// past (or that a rebuild did not read) of a key that is free now. The keys that the
    /// pass from there will meet are marked found.
    pub fn rewind(&mut self, position: i64) -> Option<i64> {
        let back = self
            .keys
            .values()
            .filter(|c| c.releasable())
            .filter_map(|c| c.resume_at.filter(|r| *r < position))
            .min()?;
        for c in self.keys.values_mut() {
            if c.releasable() && c.resume_at.is_some_and(|r| r >= back) {
                c.resume_at = None;
            }
        }
        Some(back)
    }

    /// The rebuild is over: chains with nothing left are closed, and the followers of every key
    /// that has some are still to be read.
    pub fn rebuilt(&mut self) {
        self.keys.retain(|_, c| !c.finished());
        for c in self.keys.values_mut() {
            if c.pending() {
                c.resume_at = Some(c.next_follower);
            }
        }
    }

    /// The `passed` records worth writing: one per key with followers passed since its last
    /// one. Marks them recorded (a record that is then not written only costs followers handled
    /// again after a restart, in order).
    pub fn unrecorded(&mut self) -> Vec<PassedNote> {
        let mut out = Vec::new();
        for (key, c) in &mut self.keys {
            if std::mem::take(&mut c.unrecorded) {
                out.push(PassedNote {
                    key: key.clone(),
                    entry: Entry::Passed {
                        next: c.next_follower,
                        waiting: c.waiting,
                    },
                });
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn decode(e: &Entry) -> Result<Entry, EntryError> {
        let h: Vec<(&str, Vec<u8>)> = e
            .headers()
            .into_iter()
            .map(|(n, v)| (n, v.into_bytes()))
            .collect();
        Entry::decode(|name| {
            h.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.as_slice())
        })
    }

    #[test]
    fn records_round_trip_and_bad_ones_are_named() {
        for e in [
            Entry::Blocked {
                blocker: 7,
                follower: None,
                tier: None,
            },
            Entry::Blocked {
                blocker: 9,
                follower: Some(3),
                tier: Some(2),
            },
            Entry::Moved {
                blocker: 9,
                tier: 3,
            },
            Entry::Follow { main_offset: 12 },
            Entry::Passed {
                next: 40,
                waiting: 2,
            },
            Entry::Done { blocker: 7 },
        ] {
            assert_eq!(decode(&e), Ok(e));
        }
        assert_eq!(Entry::decode(|_| None), Err(EntryError::NotWaiting));
        let bad = |n: &str| (n == WAITING).then_some(b"follow".as_slice());
        assert_eq!(
            Entry::decode(bad),
            Err(EntryError::BadNumber(WAITING_OFFSET))
        );
        assert_eq!(
            parse_ordering(ordering_value(3, 99).as_bytes()),
            Some((3, 99))
        );
        assert_eq!(parse_ordering(b"3;99"), None);
    }

    /// The gauges by tier follow a blocker from its `blocked` record through its `moved` ones,
    /// live and in a rebuild; a `moved` of another blocker of the key changes nothing.
    #[test]
    fn keys_and_followers_are_counted_in_the_tier_of_their_blocker() {
        let by_tier = |c: &Chains| {
            let mut out = vec![(0, 0); 3];
            c.add_by_tier(&mut out);
            out
        };
        let mut c = Chains::starting_at(0);
        assert_eq!(c.main_action(Some(b"k"), 10), MainAction::Handle);
        c.blocked(b"k", 10, None, Some(0), 0);
        assert_eq!(c.main_action(Some(b"k"), 11), MainAction::Follow);
        c.followed(b"k", 1);
        assert_eq!(by_tier(&c), vec![(1, 1), (0, 0), (0, 0)]);
        let moved = |blocker, tier| Entry::Moved { blocker, tier };
        assert!(!c.read_live(2, b"k", moved(10, 1)));
        assert_eq!(by_tier(&c), vec![(0, 0), (1, 1), (0, 0)]);
        c.read_live(3, b"k", moved(9, 2));
        assert_eq!(by_tier(&c), vec![(0, 0), (1, 1), (0, 0)], "another blocker");
        c.read_live(4, b"k", moved(10, 7));
        assert_eq!(
            by_tier(&c),
            vec![(0, 0), (0, 0), (1, 1)],
            "beyond: the last"
        );
        // A rebuild from the log says the same.
        let mut r = Chains::starting_at(0);
        let log = [
            Entry::Blocked {
                blocker: 10,
                follower: None,
                tier: Some(0),
            },
            Entry::Follow { main_offset: 11 },
            moved(10, 1),
        ];
        for (i, e) in log.into_iter().enumerate() {
            r.apply(i as i64, b"k", e);
        }
        r.rebuilt();
        assert_eq!(by_tier(&r), vec![(0, 0), (1, 1), (0, 0)]);
        // Freed: counted in no tier.
        assert!(c.done(b"k", 10));
        assert_eq!(by_tier(&c), vec![(0, 0); 3]);
    }

    #[test]
    fn a_blocked_key_s_later_messages_follow_and_are_released_in_order() {
        let mut c = Chains::starting_at(0);
        assert_eq!(c.main_action(Some(b"k"), 10), MainAction::Handle);
        c.blocked(b"k", 10, None, None, 0);
        assert_eq!(
            c.main_action(Some(b"k"), 10),
            MainAction::Skip,
            "read again"
        );
        assert_eq!(c.main_action(Some(b"other"), 11), MainAction::Handle);
        assert_eq!(c.main_action(Some(b"k"), 12), MainAction::Follow);
        c.followed(b"k", 1);
        assert_eq!(c.main_action(Some(b"k"), 13), MainAction::Follow);
        c.followed(b"k", 2);
        assert_eq!(c.main_action(None, 14), MainAction::Handle);
        // Blocked: the reader skips the followers.
        assert_eq!(c.on_follow(b"k", 1), FollowAction::Skip);
        assert_eq!(c.rewind(3), None);
        assert!(c.done(b"k", 10));
        assert_eq!(c.rewind(3), Some(1));
        assert_eq!(c.on_follow(b"k", 1), FollowAction::Handle);
        assert_eq!(c.on_follow(b"k", 2), FollowAction::Hold);
        assert!(!c.passed(b"k", 1));
        assert_eq!(c.on_follow(b"k", 2), FollowAction::Handle);
        assert!(c.passed(b"k", 2), "nothing left: the key is ordinary again");
        assert_eq!(c.main_action(Some(b"k"), 15), MainAction::Handle);
        assert_eq!(c.low_water(), c.applied_to());
    }

    #[test]
    fn a_follower_that_fails_blocks_the_rest_and_an_old_done_changes_nothing() {
        let mut c = Chains::starting_at(0);
        c.blocked(b"k", 10, None, None, 0);
        assert_eq!(c.main_action(Some(b"k"), 11), MainAction::Follow);
        c.followed(b"k", 1);
        assert_eq!(c.main_action(Some(b"k"), 12), MainAction::Follow);
        c.followed(b"k", 2);
        assert!(c.done(b"k", 10));
        assert_eq!(c.on_follow(b"k", 1), FollowAction::Handle);
        c.blocked(b"k", 11, Some(1), None, 3);
        assert_eq!(c.on_follow(b"k", 2), FollowAction::Skip, "blocked again");
        assert!(!c.done(b"k", 10), "the first blocker's done again");
        assert!(c.get(b"k").unwrap().blocker == Some(11));
        assert!(c.done(b"k", 11));
        assert_eq!(c.rewind(4), Some(2));
        assert_eq!(c.low_water(), 0, "the chain opened at 0 lives");
    }

    /// One step of a random run: what the owner does, in the order it does it.
    #[derive(Debug, Clone)]
    enum Step {
        Main {
            key: u8,
        },
        /// The blocker of `key` ends (its `done` is read).
        Done {
            key: u8,
        },
        /// The reader goes over the log from where it is.
        Read,
        /// The follower in flight of `key` ends: passed, or it fails and blocks.
        FollowerEnds {
            key: u8,
            fails: bool,
        },
        /// The producer writes the oldest `follow` record it was given (in order: it is
        /// idempotent), not yet acknowledged to the loop.
        Deliver,
        /// The loop learns that a written `follow` record of `key` was acknowledged (in any
        /// order: each waits in its own task).
        Ack {
            key: u8,
        },
        Crash,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            4 => (0u8..4).prop_map(|key| Step::Main { key }),
            2 => (0u8..4).prop_map(|key| Step::Done { key }),
            3 => Just(Step::Read),
            3 => (0u8..4, any::<bool>()).prop_map(|(key, fails)| Step::FollowerEnds { key, fails }),
            3 => Just(Step::Deliver),
            3 => (0u8..4).prop_map(|key| Step::Ack { key }),
            1 => Just(Step::Crash),
        ]
    }

    /// A model of the owner and the log: main messages of 4 keys, each failing on its first
    /// try with some chance (seeded by the offset), handled through the chains; checks that a
    /// key's messages are handled (first success) in main-offset order, whatever the crashes.
    struct Model {
        log: Vec<(Vec<u8>, Entry)>,
        chains: Chains,
        main_offset: i64,
        /// Per key, main offsets in the order they first succeeded.
        succeeded: HashMap<u8, Vec<i64>>,
        /// In the retry tiers: (key, main offset) of blockers not yet done.
        in_tiers: Vec<(u8, i64)>,
        /// Followers in flight: (key, main offset, log offset).
        in_flight: Vec<(u8, i64, i64)>,
        position: usize,
        /// `follow` records enqueued on the producer, not written yet: (key, main offset).
        enqueued: VecDeque<(u8, i64)>,
        /// `follow` records written, their acknowledgement not seen by the loop: (key, log
        /// offset).
        unacked: Vec<(u8, i64)>,
    }

    impl Model {
        fn seek(&mut self, to: i64) {
            self.position = to as usize;
        }

        fn append(&mut self, key: u8, e: Entry) -> i64 {
            self.log.push((vec![key], e));
            (self.log.len() - 1) as i64
        }

        fn succeed(&mut self, key: u8, offset: i64) {
            let s = self.succeeded.entry(key).or_default();
            if !s.contains(&offset) {
                s.push(offset);
            }
        }

        fn rebuild(&mut self) {
            self.in_flight.clear();
            let low = self.chains.low_water();
            let mut c = Chains::starting_at(low);
            for (i, (k, e)) in self.log.iter().enumerate().skip(low as usize) {
                c.apply(i as i64, k, *e);
            }
            c.rebuilt();
            self.chains = c;
            let end = self.log.len() as i64;
            self.seek(end);
            if let Some(back) = self.chains.rewind(end) {
                self.seek(back);
            }
        }

        /// The loop decides on the main message `o` of `key`, read for the first time or again
        /// after a crash.
        fn main(&mut self, key: u8, o: i64) {
            match self.chains.main_action(Some(&[key]), o) {
                MainAction::Handle => {
                    if (o * 7 + key as i64) % 3 == 0 {
                        let at = self.append(
                            key,
                            Entry::Blocked {
                                blocker: o,
                                follower: None,
                                tier: None,
                            },
                        );
                        self.chains.blocked(&[key], o, None, None, at);
                        self.in_tiers.push((key, o));
                    } else {
                        self.succeed(key, o);
                    }
                }
                MainAction::Follow => self.enqueued.push_back((key, o)),
                MainAction::Skip => {}
            }
        }

        fn run(&mut self, s: &Step) {
            match *s {
                Step::Main { key } => {
                    let o = self.main_offset;
                    self.main_offset += 1;
                    self.main(key, o);
                }
                Step::Deliver => {
                    if let Some((key, o)) = self.enqueued.pop_front() {
                        let at = self.append(key, Entry::Follow { main_offset: o });
                        self.unacked.push((key, at));
                    }
                }
                Step::Ack { key } => {
                    if let Some(i) = self.unacked.iter().position(|(k, _)| *k == key) {
                        let (_, at) = self.unacked.remove(i);
                        self.chains.followed(&[key], at);
                        if let Some(back) = self.chains.rewind(self.position as i64) {
                            self.seek(back);
                        }
                    }
                }
                Step::Done { key } => {
                    if let Some(i) = self.in_tiers.iter().position(|(k, _)| *k == key) {
                        let (_, b) = self.in_tiers.remove(i);
                        self.succeed(key, b);
                        let at = self.append(key, Entry::Done { blocker: b });
                        let _ = at;
                    }
                }
                Step::Read => {
                    let mut guard = 0;
                    while self.position < self.log.len() {
                        guard += 1;
                        assert!(
                            guard < 100_000,
                            "the reader does not progress: {:?} at {}",
                            self.chains,
                            self.position
                        );
                        let at = self.position as i64;
                        let (k, e) = self.log[self.position].clone();
                        if let Entry::Follow { main_offset } = e {
                            match self.chains.on_follow(&k, at) {
                                FollowAction::Handle => {
                                    self.in_flight.push((k[0], main_offset, at))
                                }
                                FollowAction::Skip => {}
                                FollowAction::Hold => break,
                            }
                        } else {
                            self.chains.read_live(at, &k, e);
                        }
                        self.position += 1;
                        if let Some(back) = self.chains.rewind(self.position as i64) {
                            self.seek(back);
                        }
                    }
                }
                Step::FollowerEnds { key, fails } => {
                    if let Some(i) = self.in_flight.iter().position(|(k, _, _)| *k == key) {
                        let (_, o, at) = self.in_flight.remove(i);
                        if fails {
                            let b = self.append(
                                key,
                                Entry::Blocked {
                                    blocker: o,
                                    follower: Some(at),
                                    tier: None,
                                },
                            );
                            self.chains.blocked(&[key], o, Some(at), None, b);
                            self.in_tiers.push((key, o));
                        } else {
                            self.succeed(key, o);
                            self.chains.passed(&[key], at);
                            for note in self.chains.unrecorded() {
                                self.log.push((note.key, note.entry));
                            }
                        }
                        if let Some(back) = self.chains.rewind(self.position as i64) {
                            self.seek(back);
                        }
                    }
                }
                Step::Crash => {
                    // Records not written are lost with the process; their main offsets were
                    // not committed, so they are read again, in order, after the rebuild.
                    let lost: Vec<(u8, i64)> = self.enqueued.drain(..).collect();
                    self.unacked.clear();
                    self.rebuild();
                    for (key, o) in lost {
                        self.main(key, o);
                    }
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]
        /// Whatever happens and whenever the owner restarts, a key's messages first succeed in
        /// main-offset order, and memory holds only keys with a chain.
        #[test]
        fn keys_succeed_in_order_across_crashes(steps in proptest::collection::vec(step(), 1..200)) {
            let mut m = Model {
                log: Vec::new(),
                chains: Chains::starting_at(0),
                main_offset: 0,
                succeeded: HashMap::new(),
                in_tiers: Vec::new(),
                in_flight: Vec::new(),
                position: 0,
                enqueued: VecDeque::new(),
                unacked: Vec::new(),
            };
            for s in &steps {
                m.run(s);
                prop_assert!(m.chains.len() <= 4);
            }
            // Then every blocker ends and every follower succeeds: everything must get done.
            for _ in 0..10_000 {
                if m.in_tiers.is_empty()
                    && m.in_flight.is_empty()
                    && m.enqueued.is_empty()
                    && m.unacked.is_empty()
                    && m.position >= m.log.len()
                {
                    break;
                }
                while !m.enqueued.is_empty() {
                    m.run(&Step::Deliver);
                }
                let acked: Vec<u8> = m.unacked.iter().map(|(k, _)| *k).collect();
                for key in acked {
                    m.run(&Step::Ack { key });
                }
                let blocked: Vec<u8> = m.in_tiers.iter().map(|(k, _)| *k).collect();
                for key in blocked {
                    m.run(&Step::Done { key });
                }
                m.run(&Step::Read);
                let running: Vec<u8> = m.in_flight.iter().map(|(k, _, _)| *k).collect();
                for key in running {
                    m.run(&Step::FollowerEnds { key, fails: false });
                }
            }
            for (key, offsets) in &m.succeeded {
                let mut sorted = offsets.clone();
                sorted.sort_unstable();
                prop_assert_eq!(offsets, &sorted, "key {} succeeded out of order", key);
            }
            let done: usize = m.succeeded.values().map(Vec::len).sum();
            prop_assert_eq!(done as i64, m.main_offset, "messages never handled; chains {:?} succeeded {:?} log {:?}", m.chains, m.succeeded, m.log);
        }
    }
}

//! The replay ledger: which DLQ messages were replayed already, so that a replay of a chosen
//! selection sends exactly those and leaves every other message to later replays (pure).
//!
//! A replay group's committed offset only says "everything below was dealt with". A replay that
//! skips what its filter did not choose must not commit past it (the skipped messages would be
//! lost to every later replay), yet what it did replay must never be sent again by a later
//! replay that reads it anew. So each replayed message is also recorded in the ledger topic
//! [`ledger_topic`] (`<dlq>.replayed`, compacted), keyed `<dlq partition>/<dlq offset>/<replay
//! group>`, once its copy was acknowledged (the group is part of the key because the replay
//! group is what remembers what was replayed: a new `--group` starts afresh). Every replay, from the CLI or the console, reads the ledger first
//! and skips recorded messages; the group's committed offset moves only over a run of messages
//! that are all dealt with (replayed, recorded, or skipped at the replay limit).
//!
//! Memory: the ledger entries kept are those at or above the group's committed offset of their
//! partition, that is messages replayed out of order (a selection that skipped earlier ones).

use std::collections::{BTreeMap, HashSet};

use chrono::{DateTime, Utc};

use crate::headers;

/// The ledger topic of DLQ `dlq`.
pub fn ledger_topic(dlq: &str) -> String {
    format!("{dlq}.replayed")
}

/// The ledger key of the DLQ message at `partition`/`offset`, replayed by replay group `group`.
pub fn ledger_key(group: &str, partition: i32, offset: i64) -> String {
    format!("{partition}/{offset}/{group}")
}

/// The DLQ position and replay group a ledger key names; `None` for anything else.
pub fn parse_ledger_key(key: &[u8]) -> Option<(i32, i64, &str)> {
    let mut parts = std::str::from_utf8(key).ok()?.splitn(3, '/');
    let p = parts.next()?.parse::<i32>().ok()?;
    let o = parts.next()?.parse::<i64>().ok()?;
    let group = parts.next().filter(|g| !g.is_empty())?;
    (p >= 0 && o >= 0).then_some((p, o, group))
}

/// The ledger record's value: where the copy went and when (for people reading the topic).
pub fn ledger_value(to: &str, at: DateTime<Utc>) -> String {
    serde_json::json!({ "to": to, "replayed_at": headers::format_time(at) }).to_string()
}

/// The replayed positions at or above each partition's replay start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ledger {
    group: String,
    done: HashSet<(i32, i64)>,
    /// Per partition, the offset the replay starts at; entries below it are not kept.
    starts: BTreeMap<i32, i64>,
}

impl Ledger {
    /// An empty ledger for replay group `group` that starts partition `p` at offset `starts[p]`.
    pub fn new(group: &str, starts: impl IntoIterator<Item = (i32, i64)>) -> Ledger {
        Ledger {
            group: group.to_string(),
            done: HashSet::new(),
            starts: starts.into_iter().collect(),
        }
    }

    /// A ledger record read from the topic: `key` and whether it has a value (a record without
    /// one is a tombstone and forgets the position).
    pub fn read(&mut self, key: Option<&[u8]>, has_value: bool) {
        let Some((p, o, group)) = key.and_then(parse_ledger_key) else {
            return;
        };
        if group != self.group || self.starts.get(&p).is_none_or(|s| o < *s) {
            return;
        }
        if has_value {
            self.done.insert((p, o));
        } else {
            self.done.remove(&(p, o));
        }
    }

    /// Records a position replayed by this run.
    pub fn insert(&mut self, partition: i32, offset: i64) {
        self.done.insert((partition, offset));
    }

    /// Whether the message at `partition`/`offset` was replayed already.
    pub fn contains(&self, partition: i32, offset: i64) -> bool {
        self.done.contains(&(partition, offset))
    }

    /// How many positions are kept.
    pub fn len(&self) -> usize {
        self.done.len()
    }

    pub fn is_empty(&self) -> bool {
        self.done.is_empty()
    }
}

/// What replay may commit: per partition, the offset after the last message of an unbroken run
/// of dealt-with messages. A message the filter did not choose breaks the run for the rest of
/// this replay, so it (and everything after it) is read again by the next replay.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Decided {
    next: BTreeMap<i32, i64>,
    committed: BTreeMap<i32, i64>,
    held_back: std::collections::BTreeSet<i32>,
}

impl Decided {
    /// The message at `offset` is dealt with (replayed, recorded, skipped at the limit).
    pub fn mark(&mut self, partition: i32, offset: i64) {
        if !self.held_back.contains(&partition) {
            self.next.insert(partition, offset + 1);
        }
    }

    /// The message at `offset` was left for later replays: nothing from here on is committed.
    pub fn leave(&mut self, partition: i32) {
        self.held_back.insert(partition);
    }

    /// The offsets that moved since [`Decided::committed`] was last told of a commit.
    pub fn to_commit(&self) -> Vec<(i32, i64)> {
        self.next
            .iter()
            .filter(|(p, n)| self.committed.get(p) != Some(n))
            .map(|(p, n)| (*p, *n))
            .collect()
    }

    /// These offsets were committed.
    pub fn committed(&mut self, done: &[(i32, i64)]) {
        self.committed.extend(done.iter().copied());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_junk_is_ignored() {
        assert_eq!(ledger_key("g.replay", 2, 41), "2/41/g.replay");
        assert_eq!(parse_ledger_key(b"2/41/g/x"), Some((2, 41, "g/x")));
        for junk in [
            &b"2/41"[..],
            b"2/41/",
            b"x/1/g",
            b"1//g",
            b"-1/4/g",
            b"\xff/1/g",
            b"",
        ] {
            assert_eq!(parse_ledger_key(junk), None, "{junk:?}");
        }
        let v: serde_json::Value =
            serde_json::from_str(&ledger_value("orders", Utc::now())).unwrap();
        assert_eq!(v["to"], "orders");
    }

    #[test]
    fn the_ledger_keeps_what_lies_at_or_above_the_start() {
        let mut l = Ledger::new("g", [(0, 10), (1, 0)]);
        l.read(Some(b"0/9/g"), true);
        l.read(Some(b"0/10/g"), true);
        l.read(Some(b"1/3/g"), true);
        l.read(Some(b"1/4/other"), true); // another replay group's
        l.read(Some(b"2/3/g"), true); // a partition this replay does not read
        l.read(Some(b"junk"), true);
        l.read(None, true);
        assert!(!l.contains(0, 9), "below the committed offset: not needed");
        assert!(l.contains(0, 10) && l.contains(1, 3));
        assert_eq!(l.len(), 2);
        l.read(Some(b"1/3/g"), false);
        assert!(!l.contains(1, 3), "a tombstone forgets");
        l.insert(1, 5);
        assert!(l.contains(1, 5));
    }

    #[test]
    fn a_message_left_for_later_stops_the_commit_of_its_partition() {
        let mut d = Decided::default();
        d.mark(0, 0);
        d.mark(1, 0);
        assert_eq!(d.to_commit(), vec![(0, 1), (1, 1)]);
        d.committed(&d.to_commit());
        assert!(d.to_commit().is_empty());
        d.leave(0); // offset 1 of partition 0 was not chosen
        d.mark(0, 2);
        d.mark(1, 1);
        assert_eq!(d.to_commit(), vec![(1, 2)], "partition 0 stays at 1");
    }
}

//! When reading the DLQ is done, and how fast replay sends (pure).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// How long reading waits for more after every partition reached its start-time watermark.
pub const QUIET: Duration = Duration::from_secs(2);
/// How long reading goes on at most once every partition reached its start-time watermark.
pub const GRACE: Duration = Duration::from_secs(10);
/// How long reading waits without any message before giving up on reaching the end.
pub const STALL: Duration = Duration::from_secs(15);

/// Decides when reading "to the end of the DLQ as it was when the command started" is done.
///
/// The end is the high watermark of each partition, fetched at the start. But the test broker
/// (Tansu 0.6) reports high watermarks that can lag behind the log end (docs/broker-compat.md,
/// "High watermark lags the log end"), so reaching them does not prove there is nothing more: once every
/// partition reached its watermark, reading goes on until a poll found nothing for [`QUIET`].
/// Messages found past a watermark are read like any other. So that a DLQ that keeps growing
/// does not keep a command reading forever, that extra reading lasts at most [`GRACE`].
/// A partition that never reaches its watermark (broker trouble) ends reading after [`STALL`]
/// of waiting without any message, and the read counts as incomplete.
///
/// Waiting is measured from the last message that arrived or was finished with ([`touch`]),
/// so that slow handling (`--rate`, a broker retrying a send) never counts as silence.
///
/// [`touch`]: EndOfLog::touch
#[derive(Debug, Clone)]
pub struct EndOfLog {
    parts: BTreeMap<i32, PartEnd>,
    waiting_since: Instant,
    caught_up_at: Option<Instant>,
    quiet: Duration,
    grace: Duration,
    stall: Duration,
}

#[derive(Debug, Clone, Copy)]
struct PartEnd {
    high: i64,
    next: i64,
    /// Nothing more is read from it (past `--to-offset`, or stopped by a failure).
    closed: bool,
}

impl EndOfLog {
    /// `parts`: (partition, next offset to read, high watermark at start).
    pub fn new(parts: &[(i32, i64, i64)], to_offset: Option<i64>, now: Instant) -> EndOfLog {
        let mut end = EndOfLog {
            parts: parts
                .iter()
                .map(|&(p, next, high)| {
                    let closed = to_offset.is_some_and(|t| next > t);
                    (p, PartEnd { high, next, closed })
                })
                .collect(),
            waiting_since: now,
            caught_up_at: None,
            quiet: QUIET,
            grace: GRACE,
            stall: STALL,
        };
        end.note_caught_up(now);
        end
    }

    /// Overrides [`QUIET`], [`GRACE`] and [`STALL`].
    pub fn with_waits(mut self, quiet: Duration, grace: Duration, stall: Duration) -> EndOfLog {
        self.quiet = quiet;
        self.grace = grace;
        self.stall = stall;
        self
    }

    /// The consumer reported the end of `partition` (librdkafka's partition EOF: its fetch
    /// position reached the end it may read, the last stable offset with `read_committed`).
    /// The partition counts as caught up with its start-time watermark even though no record
    /// at `high - 1` came: that offset may be a transaction marker, and an open transaction
    /// may hold the stable offset below it (KIP-98).
    pub fn at_end(&mut self, partition: i32, now: Instant) {
        if let Some(p) = self.parts.get_mut(&partition) {
            p.next = p.next.max(p.high);
            self.note_caught_up(now);
        }
    }

    /// A message at `offset` of `partition` arrived.
    pub fn seen(&mut self, partition: i32, offset: i64, now: Instant) {
        if let Some(p) = self.parts.get_mut(&partition) {
            if !p.closed {
                p.next = p.next.max(offset + 1);
                self.waiting_since = now;
            }
        }
        self.note_caught_up(now);
    }

    /// The message that arrived last is finished with; waiting for the next one starts now.
    pub fn touch(&mut self, now: Instant) {
        self.waiting_since = now;
    }

    /// Nothing more is read from `partition`.
    pub fn close(&mut self, partition: i32, now: Instant) {
        if let Some(p) = self.parts.get_mut(&partition) {
            p.closed = true;
        }
        self.note_caught_up(now);
    }

    pub fn is_closed(&self, partition: i32) -> bool {
        self.parts.get(&partition).is_none_or(|p| p.closed)
    }

    fn caught_up(&self) -> bool {
        self.parts.values().all(|p| p.closed || p.next >= p.high)
    }

    fn note_caught_up(&mut self, now: Instant) {
        if self.caught_up_at.is_none() && self.caught_up() {
            self.caught_up_at = Some(now);
        }
    }

    /// Whether to stop reading now.
    pub fn done(&self, now: Instant) -> bool {
        if self.parts.values().all(|p| p.closed) {
            return true;
        }
        let waited = now.saturating_duration_since(self.waiting_since);
        match self.caught_up_at {
            Some(at) => waited >= self.quiet || now.saturating_duration_since(at) >= self.grace,
            None => waited >= self.stall,
        }
    }

    /// Done, but some partition never reached its watermark.
    pub fn incomplete(&self) -> bool {
        !self.caught_up()
    }
}

/// Spaces sends `1/rate` seconds apart.
#[derive(Debug, Clone)]
pub struct Pacer {
    interval: Duration,
    next: Option<Instant>,
}

impl Pacer {
    /// `rate` messages per second; `None` = as fast as possible.
    pub fn new(rate: Option<f64>) -> Pacer {
        Pacer {
            interval: rate.map_or(Duration::ZERO, |r| Duration::from_secs_f64(1.0 / r)),
            next: None,
        }
    }

    /// When the next send may start (given it is `now`); reserves that slot.
    pub fn slot(&mut self, now: Instant) -> Instant {
        let at = self.next.map_or(now, |n| n.max(now));
        self.next = Some(at + self.interval);
        at
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reading_ends_after_a_quiet_spell_past_the_watermarks() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut end = EndOfLog::new(&[(0, 0, 2), (1, 5, 5)], None, t0).with_waits(
            ms(100),
            ms(10_000),
            ms(1000),
        );
        assert!(
            !end.done(t0 + ms(500)),
            "partition 0 has not reached its watermark"
        );
        end.seen(0, 0, t0 + ms(10));
        end.seen(0, 1, t0 + ms(20));
        assert!(!end.done(t0 + ms(60)), "caught up but not quiet yet");
        end.seen(0, 2, t0 + ms(100)); // past the (lagging) watermark
        assert!(!end.done(t0 + ms(150)));
        end.touch(t0 + ms(180)); // handling it took a while: that is not silence
        assert!(!end.done(t0 + ms(250)));
        assert!(end.done(t0 + ms(280)));
        assert!(!end.incomplete());
    }

    /// A partition that ends in a commit marker (offset 9; its last record is at 8) is caught
    /// up when the consumer reports its end, not after the stall.
    #[test]
    fn a_partition_ending_in_a_transaction_marker_ends_at_its_eof() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut end =
            EndOfLog::new(&[(0, 0, 10)], None, t0).with_waits(ms(100), ms(10_000), ms(1000));
        end.seen(0, 8, t0 + ms(10));
        assert!(!end.done(t0 + ms(500)), "offset 9 (the marker) is not read");
        end.at_end(0, t0 + ms(20));
        assert!(end.done(t0 + ms(130)));
        assert!(!end.incomplete(), "the read is complete");
    }

    #[test]
    fn reading_past_the_watermarks_is_bounded() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut end = EndOfLog::new(&[(0, 3, 3)], None, t0).with_waits(ms(100), ms(1000), ms(5000));
        for i in 0..20 {
            end.seen(0, 3 + i, t0 + ms(60 * i as u64));
        }
        assert!(!end.done(t0 + ms(999)), "a busy DLQ is read on for a while");
        assert!(end.done(t0 + ms(1000)), "but not forever");
    }

    #[test]
    fn reading_gives_up_when_a_partition_stalls_or_everything_is_closed() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let stuck = EndOfLog::new(&[(0, 0, 2)], None, t0).with_waits(ms(100), ms(10_000), ms(1000));
        assert!(!stuck.done(t0 + ms(999)));
        assert!(stuck.done(t0 + ms(1000)));
        assert!(stuck.incomplete());

        let mut closed = EndOfLog::new(&[(0, 0, 10), (1, 7, 10)], Some(6), t0);
        assert!(closed.is_closed(1), "starts past --to-offset");
        closed.close(0, t0);
        assert!(closed.done(t0), "every partition closed: no need to wait");
    }

    #[test]
    fn the_pacer_spaces_sends() {
        let t0 = Instant::now();
        let mut p = Pacer::new(Some(10.0));
        assert_eq!(p.slot(t0), t0);
        assert_eq!(p.slot(t0), t0 + Duration::from_millis(100));
        assert_eq!(
            p.slot(t0 + Duration::from_secs(5)),
            t0 + Duration::from_secs(5)
        );
        let mut free = Pacer::new(None);
        assert_eq!(free.slot(t0), t0);
        assert_eq!(free.slot(t0), t0);
    }
}

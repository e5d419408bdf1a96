//! Which offset of a partition may be committed while work finishes out of order (pure).
//!
//! Invariant: the committable offset is never past a message that has been read but is not yet
//! done (handled, or its retry/DLQ copy acknowledged by the broker). Kafka commits "the next
//! offset to read", so with nothing outstanding it is the last read offset + 1.

use std::collections::BTreeSet;

/// Outstanding work of one partition.
#[derive(Debug, Default, Clone)]
pub struct PartitionOffsets {
    outstanding: BTreeSet<i64>,
    /// Last offset read + 1.
    next: Option<i64>,
    /// What was last handed out by [`PartitionOffsets::advance`].
    stored: Option<i64>,
}

impl PartitionOffsets {
    /// A message at `offset` was read and its work begins.
    pub fn begin(&mut self, offset: i64) {
        self.outstanding.insert(offset);
        self.next = Some(self.next.map_or(offset + 1, |n| n.max(offset + 1)));
    }

    /// The message at `offset` was read and its work is done: [`PartitionOffsets::begin`] then
    /// [`PartitionOffsets::finish`] in one step (it may have begun already).
    pub fn passed(&mut self, offset: i64) {
        if !self.outstanding.is_empty() {
            self.outstanding.remove(&offset);
        }
        self.next = Some(self.next.map_or(offset + 1, |n| n.max(offset + 1)));
    }

    /// The work for `offset` is done. Unknown offsets are ignored.
    pub fn finish(&mut self, offset: i64) {
        self.outstanding.remove(&offset);
    }

    /// The offset that may be committed now: the lowest outstanding one, or last read + 1.
    pub fn committable(&self) -> Option<i64> {
        self.outstanding.first().copied().or(self.next)
    }

    /// The committable offset if it moved since the last call; for storing it once.
    pub fn advance(&mut self) -> Option<i64> {
        let c = self.committable()?;
        if self.stored.is_some_and(|s| s >= c) {
            return None;
        }
        self.stored = Some(c);
        Some(c)
    }

    /// What [`PartitionOffsets::advance`] last handed out (the offset stored for commit).
    pub fn stored(&self) -> Option<i64> {
        self.stored
    }

    pub fn outstanding(&self) -> usize {
        self.outstanding.len()
    }

    /// Last offset read + 1 (`None`: nothing read).
    pub fn read_to(&self) -> Option<i64> {
        self.next
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn nothing_read_nothing_to_commit() {
        assert_eq!(PartitionOffsets::default().committable(), None);
    }

    #[test]
    fn commits_stop_at_the_lowest_unfinished_offset() {
        let mut p = PartitionOffsets::default();
        for o in 10..15 {
            p.begin(o);
        }
        p.finish(11);
        p.finish(12);
        assert_eq!(p.committable(), Some(10));
        p.finish(10);
        assert_eq!(p.committable(), Some(13));
        p.finish(14);
        assert_eq!(p.committable(), Some(13));
        p.finish(13);
        assert_eq!(p.committable(), Some(15));
    }

    #[test]
    fn gaps_in_offsets_are_fine() {
        let mut p = PartitionOffsets::default();
        p.begin(3);
        p.begin(7);
        p.finish(3);
        assert_eq!(p.committable(), Some(7));
        p.finish(7);
        assert_eq!(p.committable(), Some(8));
    }

    #[test]
    fn advance_reports_each_new_position_once() {
        let mut p = PartitionOffsets::default();
        p.begin(0);
        assert_eq!(p.advance(), Some(0));
        assert_eq!(p.advance(), None);
        p.finish(0);
        assert_eq!(p.advance(), Some(1));
        assert_eq!(p.advance(), None);
    }

    proptest! {
        /// `passed` is `begin` then `finish`, whatever else is outstanding.
        #[test]
        fn passed_is_begin_then_finish(ops in proptest::collection::vec((0..30i64, 0..3u8), 0..60)) {
            let (mut a, mut b) = (PartitionOffsets::default(), PartitionOffsets::default());
            for (o, op) in ops {
                match op {
                    0 => { a.begin(o); b.begin(o); }
                    1 => { a.finish(o); b.finish(o); }
                    _ => { a.begin(o); a.finish(o); b.passed(o); }
                }
                prop_assert_eq!(a.committable(), b.committable());
                prop_assert_eq!(a.read_to(), b.read_to());
                prop_assert_eq!(a.outstanding(), b.outstanding());
            }
        }

        #[test]
        fn never_commits_past_unfinished_work(order in Just((0..40i64).collect::<Vec<_>>()).prop_shuffle(), cut in 0usize..40) {
            let mut p = PartitionOffsets::default();
            for o in 0..40 { p.begin(o); }
            let done: Vec<i64> = order[..cut].to_vec();
            for o in &done { p.finish(*o); }
            let c = p.committable().unwrap();
            // Every offset below the committable one is done.
            for o in 0..c { prop_assert!(done.contains(&o)); }
            if cut < 40 { prop_assert!(!done.contains(&c)); } else { prop_assert_eq!(c, 40); }
        }
    }
}

//! The timer structure for delay tiers (pure): which partitions are paused, until when, and the
//! message held for each.
//!
//! When the head of a tier partition is not yet due, the consumer pauses the partition and parks
//! the head here ("hold the head": resuming continues after it, so nothing is re-fetched and
//! nothing is buffered beyond it). One ordered map serves every paused partition, so the poll
//! loop needs a single sleep until [`DelayQueue::next_due`], not a timer task per partition.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::hash::Hash;

use chrono::{DateTime, Utc};

/// Paused partitions and their held messages, ordered by due time.
#[derive(Debug)]
pub struct DelayQueue<P, T> {
    /// (due of the partition's head, partition): the wake-up order.
    order: BTreeSet<(DateTime<Utc>, P)>,
    held: HashMap<P, VecDeque<(DateTime<Utc>, T)>>,
}

/// Messages that became due on one partition.
#[derive(Debug, PartialEq, Eq)]
pub struct Released<P, T> {
    pub partition: P,
    pub items: Vec<T>,
    /// True when nothing is held any more: the partition should be resumed.
    pub resume: bool,
}

impl<P: Ord + Hash + Copy, T> Default for DelayQueue<P, T> {
    fn default() -> Self {
        DelayQueue {
            order: BTreeSet::new(),
            held: HashMap::new(),
        }
    }
}

impl<P: Ord + Hash + Copy, T> DelayQueue<P, T> {
    /// Whether `partition` is paused with something held.
    pub fn is_held(&self, partition: &P) -> bool {
        self.held.contains_key(partition)
    }

    /// Parks `item`, due at `due`, behind whatever `partition` already holds. Returns true when
    /// the partition was not held before (the caller must pause it).
    pub fn hold(&mut self, partition: P, due: DateTime<Utc>, item: T) -> bool {
        match self.held.get_mut(&partition) {
            Some(queue) => {
                queue.push_back((due, item));
                false
            }
            None => {
                self.held.insert(partition, VecDeque::from([(due, item)]));
                self.order.insert((due, partition));
                true
            }
        }
    }

    /// When the earliest held head is due.
    pub fn next_due(&self) -> Option<DateTime<Utc>> {
        self.order.first().map(|(due, _)| *due)
    }

    /// Releases every held message that is due at `now`, partition by partition, in order.
    pub fn pop_due(&mut self, now: DateTime<Utc>) -> Vec<Released<P, T>> {
        let mut out = Vec::new();
        while let Some(&(due, partition)) = self.order.first() {
            if due > now {
                break;
            }
            self.order.pop_first();
            let Some(queue) = self.held.get_mut(&partition) else {
                continue;
            };
            let mut items = Vec::new();
            while queue.front().is_some_and(|(d, _)| *d <= now) {
                if let Some((_, item)) = queue.pop_front() {
                    items.push(item);
                }
            }
            let resume = match queue.front() {
                Some((next, _)) => {
                    self.order.insert((*next, partition));
                    false
                }
                None => {
                    self.held.remove(&partition);
                    true
                }
            };
            out.push(Released {
                partition,
                items,
                resume,
            });
        }
        out
    }

    /// Forgets a partition (revoked, or shutting down) and returns what it held.
    pub fn remove(&mut self, partition: &P) -> Vec<T> {
        let Some(queue) = self.held.remove(partition) else {
            return Vec::new();
        };
        if let Some((due, _)) = queue.front() {
            self.order.remove(&(*due, *partition));
        }
        queue.into_iter().map(|(_, item)| item).collect()
    }

    /// When `partition`'s held head is due, and how many messages it holds (head included).
    pub fn head(&self, partition: &P) -> Option<(DateTime<Utc>, usize)> {
        let queue = self.held.get(partition)?;
        queue.front().map(|(due, _)| (*due, queue.len()))
    }

    /// Every held partition.
    pub fn partitions(&self) -> Vec<P> {
        self.held.keys().copied().collect()
    }

    /// How many partitions are paused.
    pub fn len(&self) -> usize {
        self.held.len()
    }

    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t(ms: i64) -> DateTime<Utc> {
        Utc.timestamp_millis_opt(1_800_000_000_000 + ms).unwrap()
    }

    #[test]
    fn nothing_is_released_before_it_is_due() {
        let mut q = DelayQueue::default();
        assert!(q.hold(1, t(100), "a"));
        assert!(q.hold(2, t(50), "b"));
        assert_eq!(q.next_due(), Some(t(50)));
        assert!(q.pop_due(t(49)).is_empty());
        let r = q.pop_due(t(50));
        assert_eq!(
            r,
            vec![Released {
                partition: 2,
                items: vec!["b"],
                resume: true
            }]
        );
        assert_eq!(q.next_due(), Some(t(100)));
        assert!(q.is_held(&1) && !q.is_held(&2));
    }

    #[test]
    fn messages_behind_the_head_keep_their_own_due_time() {
        let mut q = DelayQueue::default();
        assert!(q.hold(7, t(10), 1));
        assert!(!q.hold(7, t(5), 2));
        assert!(!q.hold(7, t(30), 3));
        let r = q.pop_due(t(20));
        assert_eq!(
            r,
            vec![Released {
                partition: 7,
                items: vec![1, 2],
                resume: false
            }]
        );
        assert_eq!(q.next_due(), Some(t(30)));
        assert_eq!(q.pop_due(t(30))[0].items, vec![3]);
        assert!(q.is_empty());
    }

    proptest::proptest! {
        /// Invariant 2 of ARCHITECTURE.md at the level of the queue: whatever is held and
        /// whenever the loop wakes, nothing is released before its due time, a partition
        /// releases in the order it was held, `resume` is said exactly when the partition is
        /// empty, and everything comes out once it is all due.
        #[test]
        fn released_only_when_due_in_hold_order_and_nothing_is_left(
            ops in proptest::collection::vec((0u8..3, 0i64..200, proptest::bool::ANY), 1..60),
        ) {
            let mut q: DelayQueue<u8, (u8, usize, i64)> = DelayQueue::default();
            let mut now = 0i64;
            let mut held = 0usize;
            let mut out: Vec<(u8, usize)> = Vec::new();
            for (seq, (partition, due, tick)) in ops.iter().copied().enumerate() {
                if tick {
                    now += due / 4;
                    for r in q.pop_due(t(now)) {
                        for (p, s, d) in &r.items {
                            proptest::prop_assert!(*d <= now, "released {d} at {now}");
                            proptest::prop_assert_eq!(*p, r.partition);
                            out.push((*p, *s));
                        }
                        held -= r.items.len();
                        proptest::prop_assert_eq!(r.resume, !q.is_held(&r.partition));
                    }
                } else {
                    let due = now + due;
                    let first = q.hold(partition, t(due), (partition, seq, due));
                    proptest::prop_assert_eq!(first, held_on(&out, partition, seq, &ops));
                    held += 1;
                }
            }
            for r in q.pop_due(t(now + 1_000)) {
                held -= r.items.len();
                out.extend(r.items.iter().map(|(p, s, _)| (*p, *s)));
                proptest::prop_assert!(r.resume);
            }
            proptest::prop_assert_eq!(held, 0);
            proptest::prop_assert!(q.is_empty() && q.next_due().is_none());
            for p in 0..3u8 {
                let order: Vec<usize> = out.iter().filter(|(x, _)| *x == p).map(|(_, s)| *s).collect();
                let mut sorted = order.clone();
                sorted.sort();
                proptest::prop_assert_eq!(order, sorted, "partition {} out of order", p);
            }
        }
    }

    /// Whether holding item `seq` on `partition` starts a new pause: true when every earlier
    /// item of the partition has been released already.
    fn held_on(out: &[(u8, usize)], partition: u8, seq: usize, ops: &[(u8, i64, bool)]) -> bool {
        ops[..seq]
            .iter()
            .enumerate()
            .filter(|(_, (p, _, tick))| *p == partition && !tick)
            .all(|(i, _)| out.contains(&(partition, i)))
    }

    #[test]
    fn removing_a_partition_cancels_its_timer() {
        let mut q = DelayQueue::default();
        q.hold(1, t(10), "x");
        q.hold(2, t(20), "y");
        assert_eq!(q.remove(&1), vec!["x"]);
        assert_eq!(q.next_due(), Some(t(20)));
        assert!(q.remove(&1).is_empty());
        assert_eq!(q.len(), 1);
    }
}

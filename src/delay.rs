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

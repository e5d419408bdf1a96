//! Ordering by key under concurrency (pure): several messages of a partition may be in flight,
//! but two with the same key never are; the later one waits for the earlier one.
//!
//! Messages without a key have nothing to be ordered by and are never held back.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;

/// Keys in flight per partition, and what waits behind each.
#[derive(Debug)]
pub struct KeyGate<P, T> {
    /// Per partition, so that a key is looked up by its bytes without copying them.
    busy: HashMap<P, HashMap<Vec<u8>, VecDeque<T>>>,
    waiting: usize,
}

impl<P, T> Default for KeyGate<P, T> {
    fn default() -> Self {
        KeyGate {
            busy: HashMap::new(),
            waiting: 0,
        }
    }
}

impl<P: Hash + Eq + Copy, T> KeyGate<P, T> {
    /// Returns `Some(item)` when it may start now; otherwise it waits behind its key.
    pub fn admit(&mut self, partition: P, key: Option<&[u8]>, item: T) -> Option<T> {
        let Some(key) = key else {
            return Some(item);
        };
        match self.queue_if_busy(partition, key) {
            Some(queue) => {
                queue.push_back(item);
                self.waiting += 1;
                None
            }
            None => Some(item),
        }
    }

    /// [`KeyGate::admit`] with the key read from the item itself (no copy of the key needed).
    pub fn admit_with(
        &mut self,
        partition: P,
        item: T,
        key_of: impl Fn(&T) -> Option<&[u8]>,
    ) -> Option<T> {
        let Some(key) = key_of(&item) else {
            return Some(item);
        };
        match self.queue_if_busy(partition, key) {
            Some(queue) => {
                queue.push_back(item);
                self.waiting += 1;
                None
            }
            None => Some(item),
        }
    }

    /// The queue behind `key` when it is in flight; otherwise marks it in flight.
    fn queue_if_busy(&mut self, partition: P, key: &[u8]) -> Option<&mut VecDeque<T>> {
        let keys = self.busy.entry(partition).or_default();
        if keys.contains_key(key) {
            keys.get_mut(key)
        } else {
            keys.insert(key.to_vec(), VecDeque::new());
            None
        }
    }

    /// The message with `key` finished; returns the next one with that key, which may start now.
    pub fn release(&mut self, partition: P, key: Option<&[u8]>) -> Option<T> {
        let key = key?;
        let keys = self.busy.get_mut(&partition)?;
        let next = keys.get_mut(key)?.pop_front();
        match next {
            Some(item) => {
                self.waiting -= 1;
                Some(item)
            }
            None => {
                keys.remove(key);
                None
            }
        }
    }

    /// Drops everything of `partition` (revoked): waiting items are returned, unstarted.
    pub fn remove_partition(&mut self, partition: P) -> Vec<T> {
        let out: Vec<T> = self
            .busy
            .remove(&partition)
            .into_iter()
            .flat_map(|keys| keys.into_values())
            .flatten()
            .collect();
        self.waiting -= out.len();
        out
    }

    /// Messages admitted but waiting for their key.
    pub fn waiting(&self) -> usize {
        self.waiting
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_key_waits_other_keys_and_no_key_pass() {
        let mut g = KeyGate::default();
        assert_eq!(g.admit(0, Some(b"a"), 1), Some(1));
        assert_eq!(g.admit(0, Some(b"a"), 2), None);
        assert_eq!(g.admit(0, Some(b"a"), 3), None);
        assert_eq!(g.admit(0, Some(b"b"), 4), Some(4));
        assert_eq!(
            g.admit(1, Some(b"a"), 5),
            Some(5),
            "other partition, independent"
        );
        assert_eq!(g.admit(0, None, 6), Some(6));
        assert_eq!(g.waiting(), 2);
        assert_eq!(g.release(0, Some(b"a")), Some(2));
        assert_eq!(g.release(0, Some(b"a")), Some(3));
        assert_eq!(g.release(0, Some(b"a")), None);
        assert_eq!(g.admit(0, Some(b"a"), 7), Some(7), "key free again");
        assert_eq!(g.waiting(), 0);
    }

    #[test]
    fn removing_a_partition_returns_its_waiting_items() {
        let mut g = KeyGate::default();
        g.admit(0, Some(b"a"), 1);
        g.admit(0, Some(b"a"), 2);
        g.admit(1, Some(b"a"), 3);
        g.admit(1, Some(b"a"), 4);
        assert_eq!(g.remove_partition(0), vec![2]);
        assert_eq!(g.waiting(), 1);
        assert_eq!(g.release(0, Some(b"a")), None);
        assert_eq!(g.release(1, Some(b"a")), Some(4));
    }
}

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
    /// Returns `Some(item)` when it may start now; otherwise it waits behind its key. The key is
    /// read from the item (`key_of`) and copied once, when the key is marked in flight.
    pub fn admit(
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

    type Item = (Option<&'static [u8]>, i32);

    fn admit(
        g: &mut KeyGate<i32, Item>,
        p: i32,
        key: Option<&'static [u8]>,
        n: i32,
    ) -> Option<i32> {
        g.admit(p, (key, n), |item| item.0).map(|(_, n)| n)
    }

    fn release(g: &mut KeyGate<i32, Item>, p: i32, key: &[u8]) -> Option<i32> {
        g.release(p, Some(key)).map(|(_, n)| n)
    }

    #[test]
    fn same_key_waits_other_keys_and_no_key_pass() {
        let mut g = KeyGate::default();
        assert_eq!(admit(&mut g, 0, Some(b"a"), 1), Some(1));
        assert_eq!(admit(&mut g, 0, Some(b"a"), 2), None);
        assert_eq!(admit(&mut g, 0, Some(b"a"), 3), None);
        assert_eq!(admit(&mut g, 0, Some(b"b"), 4), Some(4));
        assert_eq!(
            admit(&mut g, 1, Some(b"a"), 5),
            Some(5),
            "other partition, independent"
        );
        assert_eq!(admit(&mut g, 0, None, 6), Some(6));
        assert_eq!(g.waiting(), 2);
        assert_eq!(release(&mut g, 0, b"a"), Some(2));
        assert_eq!(release(&mut g, 0, b"a"), Some(3));
        assert_eq!(release(&mut g, 0, b"a"), None);
        assert_eq!(admit(&mut g, 0, Some(b"a"), 7), Some(7), "key free again");
        assert_eq!(g.waiting(), 0);
    }

    #[test]
    fn removing_a_partition_returns_its_waiting_items() {
        let mut g = KeyGate::default();
        admit(&mut g, 0, Some(b"a"), 1);
        admit(&mut g, 0, Some(b"a"), 2);
        admit(&mut g, 1, Some(b"a"), 3);
        admit(&mut g, 1, Some(b"a"), 4);
        let removed: Vec<i32> = g.remove_partition(0).into_iter().map(|(_, n)| n).collect();
        assert_eq!(removed, vec![2]);
        assert_eq!(g.waiting(), 1);
        assert_eq!(release(&mut g, 0, b"a"), None);
        assert_eq!(release(&mut g, 1, b"a"), Some(4));
    }
}

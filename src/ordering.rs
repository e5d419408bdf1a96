//! Ordering by key under concurrency (pure): several messages of a partition may be in flight,
//! but two with the same key never are; the later one waits for the earlier one.
//!
//! Messages without a key have nothing to be ordered by and are never held back.

use std::borrow::Borrow;
use std::collections::VecDeque;
use std::hash::{Hash, Hasher};

use rustc_hash::FxHashMap;

/// Keys up to this many bytes are kept in the gate without an allocation (a UUID in text is
/// 36).
const INLINE_KEY: usize = 46;

/// A key marked in flight: a copy of the message's key, inline when short (the gate copies
/// one key per keyed message).
#[derive(Debug)]
enum HeldKey {
    Inline { len: u8, bytes: [u8; INLINE_KEY] },
    Heap(Box<[u8]>),
}

impl HeldKey {
    fn new(key: &[u8]) -> HeldKey {
        match u8::try_from(key.len()) {
            Ok(len) if key.len() <= INLINE_KEY => {
                let mut bytes = [0; INLINE_KEY];
                bytes[..key.len()].copy_from_slice(key);
                HeldKey::Inline { len, bytes }
            }
            _ => HeldKey::Heap(key.into()),
        }
    }

    fn as_bytes(&self) -> &[u8] {
        match self {
            HeldKey::Inline { len, bytes } => &bytes[..usize::from(*len)],
            HeldKey::Heap(b) => b,
        }
    }
}

// Equality and hashing are those of the bytes, as `Borrow<[u8]>` requires (lookups by `&[u8]`).
impl PartialEq for HeldKey {
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for HeldKey {}

impl Hash for HeldKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_bytes().hash(state);
    }
}

impl Borrow<[u8]> for HeldKey {
    fn borrow(&self) -> &[u8] {
        self.as_bytes()
    }
}

/// Keys in flight per partition, and what waits behind each.
#[derive(Debug)]
pub struct KeyGate<P, T> {
    /// Per partition, so that a key is looked up by its bytes without copying them. Fx hashing
    /// (not SipHash): it runs per message, and a map holds at most the keys in flight
    /// (`--max-in-flight`), so keys chosen to collide cost at most that many comparisons.
    busy: FxHashMap<P, FxHashMap<HeldKey, VecDeque<T>>>,
    waiting: usize,
}

impl<P, T> Default for KeyGate<P, T> {
    fn default() -> Self {
        KeyGate {
            busy: FxHashMap::default(),
            waiting: 0,
        }
    }
}

impl<P: Hash + Eq + Copy, T> KeyGate<P, T> {
    /// Returns `Some(item)` when it may start now; otherwise it waits behind its key. The key is
    /// read from the item (`key_of`) and copied once, when the key is marked in flight (inline,
    /// without an allocation, up to 46 bytes).
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
            keys.insert(HeldKey::new(key), VecDeque::new());
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
    fn keys_are_told_apart_by_every_byte_and_their_length_inline_or_not() {
        // Short keys are kept inline (zero-padded), longer ones on the heap: neither may make
        // two different keys equal, nor one key two.
        let long = |n: usize, last: u8| {
            let mut k = vec![b'k'; n];
            k[n - 1] = last;
            &*Vec::leak(k)
        };
        let keys: Vec<&'static [u8]> = vec![
            b"",
            b"a",
            b"a\0",
            long(INLINE_KEY, b'x'),
            long(INLINE_KEY, b'y'),
            long(INLINE_KEY + 1, b'x'),
            long(300, b'x'),
            long(300, b'y'),
        ];
        let mut g = KeyGate::default();
        for (n, k) in keys.iter().enumerate() {
            assert_eq!(
                admit(&mut g, 0, Some(k), n as i32),
                Some(n as i32),
                "key {n} is free"
            );
        }
        for (n, k) in keys.iter().enumerate() {
            let later = 100 + n as i32;
            assert_eq!(
                admit(&mut g, 0, Some(k), later),
                None,
                "key {n} is in flight"
            );
            assert_eq!(release(&mut g, 0, k), Some(later), "key {n}'s next");
            assert_eq!(release(&mut g, 0, k), None);
        }
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

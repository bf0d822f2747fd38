//! A map from increasing sequence numbers (log indexes, a session's write
//! numbers) to values, kept as a sorted queue: for keys that mostly arrive
//! in order and leave from the front.
//!
//! Two users: the apply thread's callers waiting for their entry (a leader
//! proposes at increasing indexes and registers each proposal before the
//! entry can commit; entries apply in index order) and a session's stored
//! replies (a client numbers its writes in order, they apply nearly in that
//! order, and its acknowledgements drop them from the lowest). So an insert
//! nearly always goes to the back and a removal takes the front: both O(1),
//! with no tree node to allocate, rebalance or shift (a waiter is about a
//! hundred bytes). Anything else (a re-registration at an index already
//! waited on, after a lost and regained leadership; a write applied out of
//! its session's order) takes a binary search and behaves exactly like the
//! `BTreeMap` it replaces, which it also encodes as (a serde map, keys in
//! increasing order), so snapshots keep their format.
//!
//! Invariants:
//! - the queue is sorted by key, strictly increasing (one value per key;
//!   inserting at a key already present replaces the value, as
//!   `BTreeMap::insert` does);
//! - [`SeqMap::remove`] of a key returns its value and leaves every other
//!   entry in place, in order;
//! - worst case (keys inserted into the middle) an insert moves up to half
//!   the entries; a session holds at most `SESSION_WINDOW` replies;
//! - decoding accepts any map (keys in any order, repeated: the last one
//!   wins, as for a `BTreeMap`), and never panics.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A key: a log index or a sequence number.
type Index = u64;

/// Values (`T`) at distinct keys, in key order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SeqMap<T> {
    queue: VecDeque<(Index, T)>,
}

impl<T> Default for SeqMap<T> {
    fn default() -> Self {
        SeqMap {
            queue: VecDeque::new(),
        }
    }
}

impl<T> SeqMap<T> {
    /// `value` now waits at `index`; returns the waiter it replaced there.
    pub(crate) fn insert(&mut self, index: Index, value: T) -> Option<T> {
        match self.queue.back() {
            Some(&(last, _)) if last >= index => {}
            _ => {
                self.queue.push_back((index, value));
                return None;
            }
        }
        match self.queue.binary_search_by_key(&index, |&(i, _)| i) {
            Ok(at) => self
                .queue
                .get_mut(at)
                .map(|slot| std::mem::replace(&mut slot.1, value)),
            Err(at) => {
                self.queue.insert(at, (index, value));
                None
            }
        }
    }

    /// Takes the waiter at `index`, if any.
    pub(crate) fn remove(&mut self, index: Index) -> Option<T> {
        match self.queue.front() {
            Some(&(first, _)) if first == index => self.queue.pop_front().map(|(_, v)| v),
            Some(&(first, _)) if first < index => {
                let at = self.queue.binary_search_by_key(&index, |&(i, _)| i).ok()?;
                self.queue.remove(at).map(|(_, v)| v)
            }
            _ => None,
        }
    }

    /// Takes every waiter at `index` or below, in index order.
    pub(crate) fn take_through(&mut self, index: Index) -> Vec<(Index, T)> {
        let n = self.queue.partition_point(|&(i, _)| i <= index);
        self.queue.drain(..n).collect()
    }

    /// Takes every waiter above `index`, in index order.
    pub(crate) fn take_after(&mut self, index: Index) -> Vec<(Index, T)> {
        let n = self.queue.partition_point(|&(i, _)| i <= index);
        self.queue.drain(n..).collect()
    }

    /// Takes every waiter, in index order.
    pub(crate) fn take_all(&mut self) -> VecDeque<(Index, T)> {
        std::mem::take(&mut self.queue)
    }

    /// How many entries there are.
    pub(crate) fn len(&self) -> usize {
        self.queue.len()
    }

    /// The value at `index`, if any.
    pub(crate) fn get(&self, index: Index) -> Option<&T> {
        let at = self.queue.binary_search_by_key(&index, |&(i, _)| i).ok()?;
        self.queue.get(at).map(|(_, v)| v)
    }

    /// The values, in key order.
    pub(crate) fn values(&self) -> impl Iterator<Item = &T> {
        self.queue.iter().map(|(_, v)| v)
    }

    /// The values, in key order, to change in place.
    pub(crate) fn values_mut(&mut self) -> impl Iterator<Item = &mut T> {
        self.queue.iter_mut().map(|(_, v)| v)
    }

    /// The smallest key, if any.
    pub(crate) fn first_key(&self) -> Option<Index> {
        self.queue.front().map(|&(i, _)| i)
    }

    /// Takes the entry at the smallest key.
    pub(crate) fn pop_first(&mut self) -> Option<(Index, T)> {
        self.queue.pop_front()
    }
}

impl<T: Serialize> Serialize for SeqMap<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.queue.iter().map(|(i, v)| (i, v)))
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for SeqMap<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let map = BTreeMap::<Index, T>::deserialize(deserializer)?;
        Ok(SeqMap {
            queue: map.into_iter().collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    #[test]
    fn a_map_in_any_order_decodes_sorted_and_garbage_is_an_error() {
        // Keys out of order and repeated (the last one wins, as in a map).
        let m: Vec<(u64, u32)> = vec![(5, 1), (2, 2), (5, 3)];
        let mut bytes = vec![3u8];
        for (k, v) in &m {
            bytes.extend(postcard::to_allocvec(&(k, v)).expect("encode"));
        }
        let got: SeqMap<u32> = postcard::from_bytes(&bytes).expect("decode");
        assert_eq!(got.queue, VecDeque::from(vec![(2, 2), (5, 3)]));
        assert!(postcard::from_bytes::<SeqMap<u32>>(&[9, 1]).is_err());
    }

    #[test]
    fn in_order_registrations_are_taken_from_the_front() {
        let mut w = SeqMap::default();
        for i in 5..10 {
            assert_eq!(w.insert(i, i * 10), None);
        }
        assert_eq!(w.remove(4), None, "below the front: nothing");
        assert_eq!(w.remove(5), Some(50));
        assert_eq!(w.remove(7), Some(70), "behind the front");
        assert_eq!(w.remove(7), None);
        assert_eq!(w.remove(6), Some(60));
        assert_eq!(w.remove(11), None, "past the back: nothing");
        assert_eq!(w.len(), 2);
    }

    #[test]
    fn a_registration_at_a_waited_index_replaces_the_waiter_in_place() {
        let mut w = SeqMap::default();
        for i in [1, 2, 3, 6] {
            w.insert(i, i);
        }
        assert_eq!(w.insert(2, 20), Some(2));
        assert_eq!(w.insert(4, 40), None, "a gap is filled in order");
        assert_eq!(w.take_through(4), vec![(1, 1), (2, 20), (3, 3), (4, 40)]);
        assert_eq!(w.take_all().into_iter().collect::<Vec<_>>(), vec![(6, 6)]);
        assert_eq!(w.len(), 0);
    }

    #[test]
    fn take_after_leaves_the_waiters_at_or_below_in_place() {
        let mut w = SeqMap::default();
        for i in [1, 3, 4, 7] {
            w.insert(i, i * 10);
        }
        assert_eq!(w.take_after(3), vec![(4, 40), (7, 70)]);
        assert_eq!(w.take_after(3), vec![], "nothing above any more");
        assert_eq!(
            w.take_all().into_iter().collect::<Vec<_>>(),
            vec![(1, 10), (3, 30)]
        );
    }

    /// Any sequence of operations does what the `BTreeMap` it replaces did.
    #[test]
    fn behaves_like_the_map_it_replaces() {
        for seed in 0..200u64 {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut w = SeqMap::default();
            let mut m = BTreeMap::new();
            let mut next = 1u64;
            for step in 0..300u32 {
                match rng.random_range(0..10u8) {
                    // Mostly in order, as a leader proposes.
                    0..=4 => {
                        next += rng.random_range(0..3u64);
                        assert_eq!(w.insert(next, step), m.insert(next, step), "seed {seed}");
                    }
                    // Sometimes anywhere (a regained leadership).
                    5 => {
                        let i = rng.random_range(0..next + 2);
                        assert_eq!(w.insert(i, step), m.insert(i, step), "seed {seed}");
                    }
                    6..=8 => {
                        let front = m.keys().next().copied().unwrap_or(0);
                        let i = front + rng.random_range(0..3u64);
                        assert_eq!(w.remove(i), m.remove(&i), "seed {seed}");
                    }
                    _ => {
                        let i = rng.random_range(0..next + 2);
                        let want: Vec<_> = m.range(..=i).map(|(&k, &v)| (k, v)).collect();
                        m.retain(|&k, _| k > i);
                        assert_eq!(w.take_through(i), want, "seed {seed}");
                    }
                }
                assert_eq!(w.len(), m.len(), "seed {seed}");
            }
            assert_eq!(w.first_key(), m.keys().next().copied(), "seed {seed}");
            for k in 0..next + 2 {
                assert_eq!(w.get(k), m.get(&k), "seed {seed}");
            }
            // Encoded exactly as the map.
            let bytes = postcard::to_allocvec(&w).expect("encode");
            assert_eq!(bytes, postcard::to_allocvec(&m).expect("encode"));
            let back: SeqMap<u32> = postcard::from_bytes(&bytes).expect("decode");
            assert_eq!(back, w);
            let rest: Vec<_> = m.into_iter().collect();
            assert_eq!(w.take_all().into_iter().collect::<Vec<_>>(), rest);
        }
    }
}

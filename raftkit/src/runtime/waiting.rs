//! The apply thread's callers waiting for their entry: an index-ordered
//! queue in place of a map.
//!
//! A leader proposes at increasing indexes and registers each proposal
//! before the entry can commit, and the apply thread applies in index
//! order: so a registration nearly always goes to the back and the entry
//! being applied is nearly always the front one. Both are O(1) here, with
//! no tree node to allocate or shift (a waiter is about a hundred bytes).
//! Anything else (a re-registration at an index already waited on, after a
//! lost and regained leadership; a waiter behind the front) takes a binary
//! search and behaves exactly like the map it replaces.
//!
//! Invariants:
//! - the queue is sorted by index, strictly increasing (one waiter per
//!   index; registering at an index already waited on replaces the waiter,
//!   as `BTreeMap::insert` does);
//! - [`Waiting::remove`] of an index returns its waiter and leaves every
//!   other waiter in place, in order.

use std::collections::VecDeque;

use crate::core::Index;

/// Waiters (`T`) at distinct log indexes, in index order.
#[derive(Debug)]
pub(super) struct Waiting<T> {
    queue: VecDeque<(Index, T)>,
}

impl<T> Default for Waiting<T> {
    fn default() -> Self {
        Waiting {
            queue: VecDeque::new(),
        }
    }
}

impl<T> Waiting<T> {
    /// `value` now waits at `index`; returns the waiter it replaced there.
    pub(super) fn insert(&mut self, index: Index, value: T) -> Option<T> {
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
    pub(super) fn remove(&mut self, index: Index) -> Option<T> {
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
    pub(super) fn take_through(&mut self, index: Index) -> Vec<(Index, T)> {
        let n = self.queue.partition_point(|&(i, _)| i <= index);
        self.queue.drain(..n).collect()
    }

    /// Takes every waiter, in index order.
    pub(super) fn take_all(&mut self) -> VecDeque<(Index, T)> {
        std::mem::take(&mut self.queue)
    }

    /// How many wait.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.queue.len()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    #[test]
    fn in_order_registrations_are_taken_from_the_front() {
        let mut w = Waiting::default();
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
        let mut w = Waiting::default();
        for i in [1, 2, 3, 6] {
            w.insert(i, i);
        }
        assert_eq!(w.insert(2, 20), Some(2));
        assert_eq!(w.insert(4, 40), None, "a gap is filled in order");
        assert_eq!(w.take_through(4), vec![(1, 1), (2, 20), (3, 3), (4, 40)]);
        assert_eq!(w.take_all().into_iter().collect::<Vec<_>>(), vec![(6, 6)]);
        assert_eq!(w.len(), 0);
    }

    /// Any sequence of operations does what the `BTreeMap` it replaces did.
    #[test]
    fn behaves_like_the_map_it_replaces() {
        for seed in 0..200u64 {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut w = Waiting::default();
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
            let rest: Vec<_> = m.into_iter().collect();
            assert_eq!(w.take_all().into_iter().collect::<Vec<_>>(), rest);
        }
    }
}

//! One budget for the bytes held in snapshot receive buffers across the
//! groups of a multi-group node.
//!
//! Each group's core bounds its own receive buffer by
//! [`Config::max_snapshot_bytes`](crate::core::Config::max_snapshot_bytes).
//! A multi-group node hosts a group on demand on the first leader message
//! of any node certificate of the cluster's CA (`multi::hosting`), up to
//! `HostingPolicy::max_groups` groups, and each chunk counts as leader
//! contact, so the orphan timer never retires a group still receiving: per
//! group alone, the node's receive buffers were bounded only by groups x
//! 1 GiB. The budget bounds their sum ([`ReceiveBudget`], one per node);
//! each group's node task holds a [`ReceiveShare`] of it.
//!
//! The accounting, in the node task (the core stays pure: it is only told
//! how far its buffer may grow, `Raft::set_snapshot_receive_room`):
//! - before an InstallSnapshot chunk is stepped, the share takes from the
//!   budget what the chunk could make the buffer hold (its end, if it
//!   starts where the buffer ends or at 0, within `max_snapshot_bytes`),
//!   and the core is given the share as its room. Taking the difference
//!   only means a reception never competes with its own bytes: alone, one
//!   reception up to the budget always fits (the multi-group node caps
//!   each group's `max_snapshot_bytes` at the budget);
//! - if the budget cannot cover the chunk, the room stays what the share
//!   holds, and a chunk that would extend the buffer past it abandons the
//!   reception in the core (its bytes released; the leader starts over,
//!   as after a lost chunk, Raft §5.3). Abandoning rather than waiting
//!   keeps receptions that together need more than the budget from
//!   holding parts of it for ever, each waiting for the others;
//! - after every input the share is settled to what the buffer holds:
//!   whatever the core let go (installed, replaced by another snapshot,
//!   abandoned on a new term or once the log committed past it) goes back
//!   to the budget. Dropping the share (the group stopped, retired, or its
//!   task ended in any way) gives back all it held.
//!
//! Invariant: a share holds at least what its core's buffer holds, so the
//! budget's count is at least the bytes in all receive buffers, and it
//! never exceeds the limit (what it holds beyond the buffers is one chunk
//! per group at most, while that chunk is being stepped).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// The bytes snapshot receive buffers may hold across the groups of a
/// node, and how many they hold.
#[derive(Debug)]
pub(crate) struct ReceiveBudget {
    limit: u64,
    held: AtomicU64,
}

impl ReceiveBudget {
    /// A budget of `limit` bytes, none held.
    pub(crate) fn new(limit: u64) -> Arc<Self> {
        Arc::new(ReceiveBudget {
            limit,
            held: AtomicU64::new(0),
        })
    }

    /// The bytes the shares hold now (at least those in receive buffers).
    pub(crate) fn held(&self) -> u64 {
        self.held.load(Ordering::Acquire)
    }

    /// Takes `bytes` if the total stays within the limit.
    fn take(&self, bytes: u64) -> bool {
        self.held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                held.checked_add(bytes).filter(|total| *total <= self.limit)
            })
            .is_ok()
    }

    /// Takes `bytes` whatever the limit (a buffer that holds them already).
    fn force(&self, bytes: u64) {
        let _ = self
            .held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                Some(held.saturating_add(bytes))
            });
    }

    /// Gives `bytes` back.
    fn give_back(&self, bytes: u64) {
        let _ = self
            .held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                Some(held.saturating_sub(bytes))
            });
    }
}

/// One group's part of a [`ReceiveBudget`]: at least what its receive
/// buffer holds (see the module docs).
#[derive(Debug)]
pub(crate) struct ReceiveShare {
    budget: Arc<ReceiveBudget>,
    held: u64,
}

impl ReceiveShare {
    /// A share of `budget`, holding nothing yet.
    pub(crate) fn new(budget: Arc<ReceiveBudget>) -> Self {
        ReceiveShare { budget, held: 0 }
    }

    /// Before a chunk of `len` bytes at `offset` is stepped into a core
    /// whose buffer holds `buffered` bytes and takes at most `max`: takes
    /// what the chunk could make the buffer hold, if the budget has it,
    /// and returns the room to give the core (what the share holds).
    pub(crate) fn room_for(&mut self, buffered: u64, offset: u64, len: u64, max: u64) -> u64 {
        // Only a chunk at the buffer's end, or one starting a (new)
        // snapshot, can grow the buffer; a chunk past `max` is dropped by
        // the core before it looks at the room.
        let grows = offset == buffered || offset == 0;
        let end = offset.saturating_add(len);
        if grows && end <= max && end > self.held && self.budget.take(end - self.held) {
            self.held = end;
        }
        self.held
    }

    /// After an input: gives back what the buffer (`buffered` bytes now)
    /// no longer holds.
    pub(crate) fn settle(&mut self, buffered: u64) {
        if buffered < self.held {
            self.budget.give_back(self.held - buffered);
        } else if buffered > self.held {
            // Cannot happen (the core's room is the share); counted all
            // the same, so the budget never undercounts.
            self.budget.force(buffered - self.held);
        }
        self.held = buffered;
    }

    /// The bytes this share holds.
    #[cfg(test)]
    pub(crate) fn held(&self) -> u64 {
        self.held
    }
}

impl Drop for ReceiveShare {
    fn drop(&mut self) {
        self.budget.give_back(self.held);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: u64 = 1000;

    #[test]
    fn a_share_takes_what_a_chunk_could_add_and_settles_to_the_buffer() {
        let budget = ReceiveBudget::new(1000);
        let mut a = ReceiveShare::new(budget.clone());
        assert_eq!(a.room_for(0, 0, 400, MAX), 400);
        a.settle(400);
        assert_eq!(a.room_for(400, 400, 400, MAX), 800);
        a.settle(800);
        assert_eq!(budget.held(), 800);
        // Another group: only 200 left, its chunk of 300 is not covered.
        let mut b = ReceiveShare::new(budget.clone());
        assert_eq!(b.room_for(0, 0, 300, MAX), 0, "past the budget");
        b.settle(0);
        assert_eq!(budget.held(), 800);
        // A chunk that cannot grow the buffer (a duplicate, a gap) takes
        // nothing.
        assert_eq!(a.room_for(800, 400, 400, MAX), 800);
        assert_eq!(a.room_for(800, 1200, 100, MAX), 800);
        assert_eq!(budget.held(), 800);
        // A's reception is installed: everything goes back; B now fits.
        a.settle(0);
        assert_eq!(budget.held(), 0);
        assert_eq!(b.room_for(0, 0, 300, MAX), 300);
        drop(b);
        assert_eq!(budget.held(), 0, "a dropped share gives back its bytes");
    }

    /// A reception restarted at offset 0 (another snapshot, a new leader)
    /// while its share holds the old buffer's bytes needs no more than
    /// those: it never competes with its own bytes, so one reception up to
    /// the whole budget always fits.
    #[test]
    fn a_reception_never_competes_with_its_own_bytes() {
        let budget = ReceiveBudget::new(1000);
        let mut a = ReceiveShare::new(budget.clone());
        for offset in (0..1000).step_by(250) {
            assert_eq!(a.room_for(offset, offset, 250, MAX), offset + 250);
            a.settle(offset + 250);
        }
        assert_eq!(budget.held(), 1000);
        assert_eq!(a.room_for(1000, 0, 250, MAX), 1000, "a restart at 0");
        assert_eq!(budget.held(), 1000);
        // A chunk past the core's own maximum takes nothing.
        let mut b = ReceiveShare::new(ReceiveBudget::new(u64::MAX));
        assert_eq!(b.room_for(0, 0, MAX + 1, MAX), 0);
        b.settle(0);
        assert_eq!(b.held(), 0);
    }
}

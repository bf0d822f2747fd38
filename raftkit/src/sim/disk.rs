//! A simulated disk: what a node has made durable, and the writes still in
//! flight.
//!
//! A write becomes durable when its simulated fsync completes; writes
//! complete in the order they were issued. On a crash the writes still in
//! flight are lost, except that a random prefix of them may survive (the
//! kernel may have flushed them before the crash, as a real page cache
//! might): the one thing a crash can never do is keep a write whose
//! predecessor was lost. A `kill -9` of a real process cannot show a missing
//! fsync because the page cache survives; this disk can.

use std::collections::VecDeque;

use crate::core::{Entry, HardState, Message, PersistMarker, Restored, SnapshotMeta};

/// The durable state of one node.
#[derive(Clone, Debug, Default)]
pub struct Disk {
    /// Term, vote and commit.
    pub hard_state: HardState,
    /// The latest snapshot and its data.
    pub snapshot: Option<(SnapshotMeta, Vec<u8>)>,
    /// Entries after the snapshot.
    pub entries: Vec<Entry>,
}

/// One write in flight.
#[derive(Debug, Default)]
pub struct PendingWrite {
    /// When its fsync completes.
    pub done_at: u64,
    /// A snapshot received from the leader.
    pub installed: Option<(SnapshotMeta, Vec<u8>)>,
    /// Entries to append (replacing the suffix from the first one).
    pub entries: Vec<Entry>,
    /// A new hard state.
    pub hard_state: Option<HardState>,
    /// A local snapshot that compacts the log.
    pub compaction: Option<(SnapshotMeta, Vec<u8>)>,
    /// Messages released once durable.
    pub messages: Vec<Message>,
    /// Handed back to the core once durable.
    pub marker: Option<PersistMarker>,
}

impl Disk {
    /// A disk holding a node's initial state.
    pub fn new(restored: &Restored) -> Self {
        Disk {
            hard_state: restored.hard_state,
            snapshot: None,
            entries: restored.entries.clone(),
        }
    }

    /// The state a restarted node reads back.
    pub fn restore(&self) -> Restored {
        let (snapshot, snapshot_data) = match &self.snapshot {
            Some((m, d)) => (m.clone(), Some(d.clone())),
            None => (SnapshotMeta::default(), None),
        };
        Restored {
            hard_state: self.hard_state,
            snapshot,
            snapshot_data,
            entries: self.entries.clone(),
        }
    }

    fn snapshot_index(&self) -> u64 {
        self.snapshot.as_ref().map_or(0, |(m, _)| m.index)
    }

    /// Whether the disk holds the entry (`index`, `term`), directly or inside
    /// its snapshot.
    pub fn holds(&self, index: u64, term: u64) -> bool {
        if let Some((m, _)) = &self.snapshot
            && index <= m.index
        {
            return true; // covered by a snapshot of committed state
        }
        let first = self.snapshot_index() + 1;
        index >= first
            && self
                .entries
                .get((index - first) as usize)
                .is_some_and(|e| e.term == term)
    }

    /// Makes a write durable.
    pub fn apply(&mut self, w: &PendingWrite) {
        if let Some((meta, data)) = &w.installed {
            let first = self.snapshot_index() + 1;
            let keep = meta.index >= first
                && self
                    .entries
                    .get((meta.index - first) as usize)
                    .is_some_and(|e| e.term == meta.term);
            if keep {
                self.entries.drain(..=((meta.index - first) as usize));
            } else {
                self.entries.clear();
            }
            self.snapshot = Some((meta.clone(), data.clone()));
        }
        if let Some(first_new) = w.entries.first() {
            let first = self.snapshot_index() + 1;
            let keep = first_new.index.saturating_sub(first) as usize;
            self.entries.truncate(keep);
            self.entries.extend(w.entries.iter().cloned());
        }
        if let Some(hs) = w.hard_state {
            self.hard_state = hs;
        }
        if let Some((meta, data)) = &w.compaction
            && meta.index > self.snapshot_index()
        {
            let first = self.snapshot_index() + 1;
            let drop = ((meta.index + 1 - first) as usize).min(self.entries.len());
            self.entries.drain(..drop);
            self.snapshot = Some((meta.clone(), data.clone()));
        }
    }
}

/// The writes a node has issued and not yet seen complete.
#[derive(Debug, Default)]
pub struct WriteQueue {
    /// In issue (and completion) order.
    pub pending: VecDeque<PendingWrite>,
}

impl WriteQueue {
    /// When the next write issued at `now` with `latency` completes: never
    /// before the writes issued earlier.
    pub fn completion_time(&self, now: u64, latency: u64) -> u64 {
        let after = self.pending.back().map_or(0, |w| w.done_at);
        (now + latency).max(after)
    }
}

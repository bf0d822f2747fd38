//! A simulated disk: what a node has made durable, and the writes still in
//! flight.
//!
//! The disk is modelled on the runtime's storage (`runtime/persist.rs`): a
//! **snapshot store** (each save atomic: temp file, fsync, rename) and a
//! **log store** (entries from `first` on, the term at `first - 1`, and the
//! hard state), both recovering after a crash to what they last made
//! durable. One Ready becomes one [`PendingWrite`] of up to four parts, in
//! the order the runtime issues them: save the received snapshot, compact
//! the log behind it, append the entries (replacing the suffix from the
//! first one), save the hard state. A local snapshot is saved through a
//! second queue (the runtime's apply task writes it) and compacts the log
//! once saved; the two queues complete independently, so their writes
//! reorder as the runtime's may.
//!
//! The log store decides itself whether the entries after a snapshot stay
//! (those agreeing with it at its index) or go, as the real stores do; the
//! core decides the same for its in-memory log, and the world checks that
//! the two agree (a node applies and counts as durable only what its disk
//! holds), so a core that keeps a tail the disk dropped shows.
//!
//! Crash semantics: in each queue, writes complete in order; at a crash a
//! random prefix of the writes in flight survives (a kernel may have
//! flushed them), and the first write lost may be **torn**: a prefix of its
//! parts landed, and of its entries, e.g. the snapshot saved but the log
//! not compacted, or entries written but not the hard state. A crash never
//! keeps a write whose predecessor in the same queue was lost. A `kill -9`
//! of a real process cannot show a missing fsync because the page cache
//! survives; this disk can.

use std::collections::VecDeque;

use crate::core::{Entry, HardState, Index, Message, PersistMarker, Restored, SnapshotMeta, Term};

/// One part of a write.
#[derive(Clone, Debug)]
pub enum Part {
    /// Save a snapshot in the snapshot store (atomic).
    SaveSnapshot(SnapshotMeta, Vec<u8>),
    /// Compact the log store behind the snapshot ending at (`index`,
    /// `term`): the entries after it stay only if the log holds that entry.
    CompactLog {
        /// The snapshot's last index.
        index: Index,
        /// Its term.
        term: Term,
    },
    /// Append entries, replacing the suffix from the first one.
    Append(Vec<Entry>),
    /// Save the hard state.
    HardState(HardState),
}

/// The durable state of one node.
#[derive(Clone, Debug)]
pub struct Disk {
    /// Term, vote and commit.
    pub hard_state: HardState,
    /// The latest snapshot and its data.
    pub snapshot: Option<(SnapshotMeta, Vec<u8>)>,
    /// The log store's first index.
    first: Index,
    /// The term of the entry at `first - 1` (0 for the empty prefix).
    boundary_term: Term,
    /// The log store's entries, from `first` on.
    entries: Vec<Entry>,
}

/// One write in flight.
#[derive(Debug, Default)]
pub struct PendingWrite {
    /// When its fsync completes.
    pub done_at: u64,
    /// What it writes, in order.
    pub parts: Vec<Part>,
    /// Messages released once durable.
    pub messages: Vec<Message>,
    /// Handed back to the core once durable.
    pub marker: Option<PersistMarker>,
}

impl PendingWrite {
    /// Whether it saves a snapshot received from the leader.
    pub fn installs(&self) -> bool {
        self.marker.is_some_and(|m| m.snapshot.is_some())
    }

    /// Whether it saves a local snapshot (or compacts behind one).
    pub fn compacts(&self) -> bool {
        self.marker.is_none()
            && self
                .parts
                .iter()
                .any(|p| matches!(p, Part::SaveSnapshot(..) | Part::CompactLog { .. }))
    }
}

/// How much of a torn write reached the disk.
#[derive(Clone, Copy, Debug)]
pub struct Tear {
    /// Parts that landed whole.
    pub parts: usize,
    /// Entries of the next part that landed, when it is an append.
    pub entries: usize,
}

impl Disk {
    /// A disk holding a node's initial state.
    pub fn new(restored: &Restored) -> Self {
        Disk {
            hard_state: restored.hard_state,
            snapshot: None,
            first: restored.snapshot.index + 1,
            boundary_term: restored.snapshot.term,
            entries: restored.entries.clone(),
        }
    }

    /// The last index the disk holds, in its log or its snapshot.
    pub fn last_index(&self) -> Index {
        self.last().max(self.snapshot_index())
    }

    fn last(&self) -> Index {
        self.first + self.entries.len() as Index - 1
    }

    fn term_at(&self, index: Index) -> Option<Term> {
        if index + 1 == self.first {
            Some(self.boundary_term)
        } else if index >= self.first && index <= self.last() {
            Some(self.entries[(index - self.first) as usize].term)
        } else {
            None
        }
    }

    fn snapshot_index(&self) -> Index {
        self.snapshot.as_ref().map_or(0, |(m, _)| m.index)
    }

    /// The state a restarted node reads back, as the runtime opens its
    /// storage: the latest snapshot, and the log entries after it unless
    /// the log disagrees with the snapshot at its index (a crash between
    /// saving a received snapshot and compacting the log behind it).
    ///
    /// Opening also finishes such an interrupted compaction, so that the
    /// log store continues right after the snapshot: without it, a log
    /// store that ends before the snapshot would refuse the node's next
    /// append as leaving a gap. (`runtime/persist.rs` must do the same
    /// when it opens a store; the simulation found the case.)
    pub fn restore(&mut self) -> Result<Restored, String> {
        if let Some((meta, _)) = &self.snapshot
            && meta.index >= self.first
        {
            let (index, term) = (meta.index, meta.term);
            self.compact(index, term);
        }
        let (snapshot, snapshot_data) = match &self.snapshot {
            Some((m, d)) => (m.clone(), Some(d.clone())),
            None => (SnapshotMeta::default(), None),
        };
        let conflicts = self
            .term_at(snapshot.index)
            .is_some_and(|t| t != snapshot.term);
        let lo = (snapshot.index + 1).max(self.first);
        let entries: Vec<Entry> = if conflicts || lo > self.last() {
            Vec::new()
        } else {
            self.entries[(lo - self.first) as usize..].to_vec()
        };
        if let Some(e) = entries.first()
            && e.index != snapshot.index + 1
        {
            return Err(format!(
                "the log starts at {} but the latest snapshot ends at {}: entries are missing",
                e.index, snapshot.index
            ));
        }
        Ok(Restored {
            hard_state: self.hard_state,
            snapshot,
            snapshot_data,
            entries,
        })
    }

    /// Whether the disk holds the entry (`index`, `term`), in its log store
    /// or inside its snapshot (which covers committed entries only).
    pub fn holds(&self, index: Index, term: Term) -> bool {
        index <= self.snapshot_index() || (index >= self.first && self.term_at(index) == Some(term))
    }

    /// Makes a whole write durable. Returns the lowest log index whose
    /// entry it removed or replaced (other than by compaction), if any.
    pub fn apply(&mut self, w: &PendingWrite) -> Result<Option<Index>, String> {
        self.apply_torn(
            w,
            Tear {
                parts: w.parts.len(),
                entries: 0,
            },
        )
    }

    /// Makes the first `tear.parts` parts of a write durable, and the first
    /// `tear.entries` entries of the next one if it is an append.
    pub fn apply_torn(&mut self, w: &PendingWrite, tear: Tear) -> Result<Option<Index>, String> {
        let mut removed: Option<Index> = None;
        for (i, part) in w.parts.iter().enumerate() {
            let cut = if i < tear.parts {
                None
            } else if i == tear.parts && tear.entries > 0 {
                Some(tear.entries)
            } else {
                break;
            };
            let r = match (part, cut) {
                (Part::Append(entries), Some(n)) => {
                    self.append(&entries[..n.min(entries.len())])?
                }
                (_, Some(_)) => break,
                (part, None) => self.apply_part(part)?,
            };
            removed = match (removed, r) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        Ok(removed)
    }

    fn apply_part(&mut self, part: &Part) -> Result<Option<Index>, String> {
        match part {
            Part::SaveSnapshot(meta, data) => {
                if meta.index > self.snapshot_index() {
                    self.snapshot = Some((meta.clone(), data.clone()));
                }
                Ok(None)
            }
            Part::CompactLog { index, term } => Ok(self.compact(*index, *term)),
            Part::Append(entries) => self.append(entries),
            Part::HardState(hs) => {
                self.hard_state = *hs;
                Ok(None)
            }
        }
    }

    /// The log store's append: entries must follow on (no gap, nothing
    /// compacted); the suffix from the first one is replaced.
    fn append(&mut self, entries: &[Entry]) -> Result<Option<Index>, String> {
        let Some(head) = entries.first() else {
            return Ok(None);
        };
        if head.index < self.first || head.index > self.last() + 1 {
            return Err(format!(
                "append at {} outside the log store's {}..={}",
                head.index,
                self.first,
                self.last()
            ));
        }
        let keep = (head.index - self.first) as usize;
        let removed = (keep < self.entries.len()).then_some(head.index);
        self.entries.truncate(keep);
        self.entries.extend(entries.iter().cloned());
        Ok(removed)
    }

    /// The log store's compaction (as `MemLogStore::compact_prefix`): a
    /// log that disagrees with the snapshot at its index is cleared.
    fn compact(&mut self, upto: Index, term: Term) -> Option<Index> {
        if upto < self.first {
            return None;
        }
        let mut removed = None;
        if self.term_at(upto).is_some_and(|t| t != term) {
            if self.last() > upto {
                removed = Some(upto + 1);
            }
            self.entries.clear();
        }
        let drop = ((upto + 1 - self.first) as usize).min(self.entries.len());
        self.entries.drain(..drop);
        self.first = upto + 1;
        self.boundary_term = term;
        removed
    }
}

/// The writes of one queue that have not completed yet.
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

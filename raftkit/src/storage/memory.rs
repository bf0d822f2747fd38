//! An in-memory [`LogStore`].
//!
//! Invariants: `entries[i].index == first + i`; `boundary_term` is the term at
//! `first - 1`. Nothing is ever durable: [`sync`](LogStore::sync) is a no-op
//! that always succeeds, so this store suits tests, simulations and nodes that
//! may lose their log on restart (which, note, is *not* safe for a Raft voter
//! unless the whole cluster is ephemeral).

use std::collections::VecDeque;

use super::{LogStore, StorageError, validate_append, validate_range};
use crate::core::types::{Entry, HardState, Index, Term};

/// A [`LogStore`] that keeps everything in memory.
#[derive(Clone, Debug)]
pub struct MemLogStore {
    entries: VecDeque<Entry>,
    first: Index,
    boundary_term: Term,
    hard_state: HardState,
}

impl Default for MemLogStore {
    fn default() -> Self {
        MemLogStore::new()
    }
}

impl MemLogStore {
    /// An empty log: first index 1, no entries, default hard state.
    pub fn new() -> Self {
        MemLogStore {
            entries: VecDeque::new(),
            first: 1,
            boundary_term: 0,
            hard_state: HardState::default(),
        }
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
}

impl LogStore for MemLogStore {
    fn append(&mut self, entries: &[Entry]) -> Result<(), StorageError> {
        validate_append(entries, self.first, self.last(), |i| self.term_at(i))?;
        let Some(head) = entries.first() else {
            return Ok(());
        };
        self.entries.truncate((head.index - self.first) as usize);
        self.entries.extend(entries.iter().cloned());
        Ok(())
    }

    /// Moves the entries in: no clone (and no later drop) of each one.
    fn append_owned(&mut self, entries: Vec<Entry>) -> Result<(), StorageError> {
        validate_append(&entries, self.first, self.last(), |i| self.term_at(i))?;
        let Some(head) = entries.first() else {
            return Ok(());
        };
        self.entries.truncate((head.index - self.first) as usize);
        self.entries.extend(entries);
        Ok(())
    }

    fn truncate_suffix(&mut self, from: Index) -> Result<(), StorageError> {
        if from < self.first {
            return Err(StorageError::Compacted {
                index: from,
                first: self.first,
            });
        }
        if from <= self.last() {
            self.entries.truncate((from - self.first) as usize);
        }
        Ok(())
    }

    fn compact_prefix(&mut self, upto: Index, term: Term) -> Result<(), StorageError> {
        if upto < self.first {
            return Ok(());
        }
        if self.term_at(upto).is_some_and(|t| t != term) {
            self.entries.clear();
        }
        let drop = ((upto + 1 - self.first) as usize).min(self.entries.len());
        self.entries.drain(..drop);
        self.first = upto + 1;
        self.boundary_term = term;
        Ok(())
    }

    fn entries(&self, lo: Index, hi: Index) -> Result<Vec<Entry>, StorageError> {
        validate_range(lo, hi, self.first, self.last())?;
        let (a, b) = ((lo - self.first) as usize, (hi - self.first) as usize);
        Ok(self.entries.range(a..b).cloned().collect())
    }

    fn term(&self, index: Index) -> Result<Option<Term>, StorageError> {
        Ok(self.term_at(index))
    }

    fn first_index(&self) -> Index {
        self.first
    }

    fn last_index(&self) -> Index {
        self.last()
    }

    fn save_hard_state(&mut self, hs: HardState) -> Result<(), StorageError> {
        self.hard_state = hs;
        Ok(())
    }

    fn hard_state(&self) -> HardState {
        self.hard_state
    }

    fn sync(&mut self) -> Result<(), StorageError> {
        Ok(())
    }
}

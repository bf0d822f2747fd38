//! Durable storage: the Raft log, the hard state and snapshots.
//!
//! # What lives here
//!
//! - [`LogStore`]: the log of entries plus the [`HardState`] (term, vote,
//!   commit). Implementations: [`Wal`], the default embedded
//!   segmented write-ahead log, and [`MemLogStore`], an in-memory store for
//!   tests and for users who do not need durability.
//! - [`SnapshotStore`]: the latest snapshot (and a few older ones), written
//!   atomically. Implementations: [`FileSnapshotStore`] and
//!   [`MemSnapshotStore`].
//! - [`GroupCommit`]: a thread owning a `LogStore` that batches concurrent
//!   appends into one fsync.
//! - [`vfs`]: the file-system seam the durable stores do all their IO
//!   through, with the real file system and a fault-injecting one.
//! - [`conformance`]: a public test suite every `LogStore` must pass; run it on
//!   your own store (say one on RocksDB).
//!
//! # The log model and its invariants
//!
//! A log store holds the contiguous entries `first_index..=last_index` and the
//! term of the entry just before them, the *boundary* `first_index - 1`, which
//! is either index 0 (term 0, the empty prefix) or the last index covered by a
//! snapshot. Every implementation keeps these invariants:
//!
//! 1. `first_index >= 1` and `last_index >= first_index - 1` (an empty log has
//!    `last_index == first_index - 1`).
//! 2. For every `i` in `first_index - 1 ..= last_index`, [`LogStore::term`]
//!    returns `Some`; outside that range it returns `None`.
//! 3. Stored entries are contiguous (`entry.index` is its position) and their
//!    terms never decrease, starting from the boundary term.
//! 4. `first_index` never decreases: compaction is forever.
//! 5. Durability is explicit: mutations ([`append`](LogStore::append),
//!    [`truncate_suffix`](LogStore::truncate_suffix),
//!    [`compact_prefix`](LogStore::compact_prefix),
//!    [`save_hard_state`](LogStore::save_hard_state)) are visible to reads at
//!    once but durable only after the next successful [`sync`](LogStore::sync).
//!    After a crash a durable store recovers exactly the state at the end of
//!    some `sync` call, never older than the last one that returned `Ok`.
//!    (The [`Wal`] writes everything a `sync` covers as one
//!    checksummed frame, so it recovers either all or nothing of each sync.)
//! 6. Errors are never swallowed: an IO error in a write or an fsync makes the
//!    store refuse further use ([`StorageError::Failed`]); the caller (the
//!    runtime) stops the node. See [`StorageError::is_fatal`].
//!
//! # Why the traits are synchronous
//!
//! `LogStore` and `SnapshotStore` are plain blocking traits, not `async`. The
//! runtime never calls them from its event loop: it hands log writes to a
//! dedicated storage thread ([`GroupCommit`]) which owns the store, drains
//! every request that queued up while the previous fsync ran, writes them,
//! does one fsync and completes each request through a callback (which the
//! tokio runtime turns into a oneshot). The reasons:
//!
//! - fsync is blocking everywhere that matters (there is no portable async
//!   fsync; tokio's file IO is itself a blocking thread pool), so an async
//!   trait would only hide a thread handoff per call;
//! - batching is where the throughput comes from, and it is naturally written
//!   as a loop on one thread that owns the store: no locks around the file,
//!   one writer, ordered requests;
//! - a synchronous trait is easy to implement on any backend (RocksDB, sled,
//!   a test fake) without pulling an executor into storage, and it keeps the
//!   storage layer free of tokio, as the layering rules require.
//!
//! Reads ([`entries`](LogStore::entries), [`term`](LogStore::term)) are
//! synchronous too; they run on the same thread (see
//! [`GroupCommit::with_store`]) or directly on a store the caller owns.

use crate::core::types::{Entry, HardState, Index, Term};

pub mod conformance;
#[cfg(test)]
mod crash_tests;
mod error;
mod group_commit;
mod memory;
#[cfg(test)]
mod reopen_tests;
mod snapshot;
pub mod vfs;
pub mod wal;

#[cfg(test)]
mod tests;

pub use error::StorageError;
pub use group_commit::{
    AppendCallback, GroupCommit, GroupCommitStats, MAX_BATCH_BYTES, ThreadBody,
};
pub use memory::MemLogStore;
pub use snapshot::{FileSnapshotStore, MemSnapshotStore, Snapshot, SnapshotStore};
pub use wal::{Wal, WalOptions};

/// Storage for the Raft log and the hard state.
///
/// See the [module documentation](self) for the invariants every
/// implementation keeps, and run [`conformance::run_all`] against yours.
pub trait LogStore {
    /// Appends `entries`, which must be contiguous (`entries[i].index ==
    /// entries[0].index + i`) with non-decreasing terms.
    ///
    /// If `entries[0].index <= last_index`, the store first truncates the
    /// suffix from `entries[0].index` (Raft's overwrite of a conflicting
    /// suffix, §5.3). `entries[0].index` must lie in
    /// `first_index ..= last_index + 1`, and its term must not be lower than
    /// the term of the entry before it; otherwise the call fails with
    /// [`StorageError::Compacted`] or [`StorageError::Invalid`] and changes
    /// nothing. An empty slice is a no-op.
    ///
    /// The entries are readable at once and durable after the next
    /// [`sync`](Self::sync).
    fn append(&mut self, entries: &[Entry]) -> Result<(), StorageError>;

    /// [`append`](Self::append) of entries the caller gives away: exactly
    /// the same checks and effects. A store that keeps entries in memory
    /// ([`MemLogStore`]) moves them in instead of cloning each one (the
    /// runtime's inline writes hand it every entry this way); the default
    /// appends the slice.
    fn append_owned(&mut self, entries: Vec<Entry>) -> Result<(), StorageError> {
        self.append(&entries)
    }

    /// Removes every entry with index `>= from`. A `from` beyond
    /// `last_index` is a no-op; a `from` below `first_index` (into the
    /// compacted prefix) fails with [`StorageError::Compacted`].
    fn truncate_suffix(&mut self, from: Index) -> Result<(), StorageError>;

    /// Drops every entry with index `<= upto`, because a snapshot covering
    /// them (whose last entry has term `term`) is durable.
    ///
    /// Afterwards `first_index() == upto + 1` and `term(upto) == Some(term)`,
    /// even if the log held fewer entries (then it is empty, with
    /// `last_index() == upto`). If the log holds an entry at `upto` whose term
    /// differs from `term`, the whole log conflicts with the snapshot and is
    /// discarded (Raft §7). An `upto` below `first_index` is a no-op.
    fn compact_prefix(&mut self, upto: Index, term: Term) -> Result<(), StorageError>;

    /// The entries with index in `lo..hi` (half-open), in order.
    ///
    /// Fails with [`StorageError::Compacted`] if `lo < first_index`, with
    /// [`StorageError::Unavailable`] if `hi > last_index + 1`, and with
    /// [`StorageError::Invalid`] if `lo > hi`.
    fn entries(&self, lo: Index, hi: Index) -> Result<Vec<Entry>, StorageError>;

    /// The term of the entry at `index`, for `index` in
    /// `first_index - 1 ..= last_index` (at `first_index - 1` this is the
    /// compaction boundary's term; 0 for index 0). `None` outside that range.
    ///
    /// Fallible because a store on another backend may have to read it from
    /// disk; the built-in stores answer from memory.
    fn term(&self, index: Index) -> Result<Option<Term>, StorageError>;

    /// The index of the first entry held (one past the compaction boundary).
    fn first_index(&self) -> Index;

    /// The index of the last entry held, `first_index() - 1` when empty.
    fn last_index(&self) -> Index;

    /// Records the hard state (term, vote, commit); durable after the next
    /// [`sync`](Self::sync).
    fn save_hard_state(&mut self, hs: HardState) -> Result<(), StorageError>;

    /// The latest hard state saved (durable or not), or the default for a
    /// new store.
    fn hard_state(&self) -> HardState;

    /// Makes every mutation made so far durable. Only after `sync` returns
    /// `Ok` may the caller report those mutations (acknowledge an append,
    /// answer a vote). A failed `sync` is fatal for the store.
    fn sync(&mut self) -> Result<(), StorageError>;

    /// The term of the last entry (the boundary term when empty).
    fn last_term(&self) -> Result<Term, StorageError> {
        Ok(self.term(self.last_index())?.unwrap_or(0))
    }
}

impl<S: LogStore + ?Sized> LogStore for Box<S> {
    fn append(&mut self, entries: &[Entry]) -> Result<(), StorageError> {
        (**self).append(entries)
    }
    fn append_owned(&mut self, entries: Vec<Entry>) -> Result<(), StorageError> {
        (**self).append_owned(entries)
    }
    fn truncate_suffix(&mut self, from: Index) -> Result<(), StorageError> {
        (**self).truncate_suffix(from)
    }
    fn compact_prefix(&mut self, upto: Index, term: Term) -> Result<(), StorageError> {
        (**self).compact_prefix(upto, term)
    }
    fn entries(&self, lo: Index, hi: Index) -> Result<Vec<Entry>, StorageError> {
        (**self).entries(lo, hi)
    }
    fn term(&self, index: Index) -> Result<Option<Term>, StorageError> {
        (**self).term(index)
    }
    fn first_index(&self) -> Index {
        (**self).first_index()
    }
    fn last_index(&self) -> Index {
        (**self).last_index()
    }
    fn save_hard_state(&mut self, hs: HardState) -> Result<(), StorageError> {
        (**self).save_hard_state(hs)
    }
    fn hard_state(&self) -> HardState {
        (**self).hard_state()
    }
    fn sync(&mut self) -> Result<(), StorageError> {
        (**self).sync()
    }
}

/// Checks an append against the log's shape; shared by the built-in stores
/// so that they reject exactly the same requests.
///
/// `term_at` answers the term for indexes in `first - 1 ..= last`.
pub(crate) fn validate_append(
    entries: &[Entry],
    first: Index,
    last: Index,
    term_at: impl Fn(Index) -> Option<Term>,
) -> Result<(), StorageError> {
    let Some(head) = entries.first() else {
        return Ok(());
    };
    if head.index < first {
        return Err(StorageError::Compacted {
            index: head.index,
            first,
        });
    }
    if head.index > last + 1 {
        return Err(StorageError::Invalid(format!(
            "append at index {} leaves a gap after the last index {last}",
            head.index
        )));
    }
    let prev_term = term_at(head.index - 1).unwrap_or(0);
    if head.term < prev_term {
        return Err(StorageError::Invalid(format!(
            "entry {} has term {} below the previous entry's term {prev_term}",
            head.index, head.term
        )));
    }
    for pair in entries.windows(2) {
        if pair[1].index != pair[0].index + 1 {
            return Err(StorageError::Invalid(format!(
                "entries not contiguous: index {} follows {}",
                pair[1].index, pair[0].index
            )));
        }
        if pair[1].term < pair[0].term {
            return Err(StorageError::Invalid(format!(
                "entry {} has term {} below the previous entry's term {}",
                pair[1].index, pair[1].term, pair[0].term
            )));
        }
    }
    Ok(())
}

/// Checks an `entries(lo, hi)` range; shared by the built-in stores.
pub(crate) fn validate_range(
    lo: Index,
    hi: Index,
    first: Index,
    last: Index,
) -> Result<(), StorageError> {
    if lo > hi {
        return Err(StorageError::Invalid(format!(
            "range {lo}..{hi} is reversed"
        )));
    }
    if lo < first {
        return Err(StorageError::Compacted { index: lo, first });
    }
    if hi > last + 1 {
        return Err(StorageError::Unavailable {
            index: hi - 1,
            last,
        });
    }
    Ok(())
}

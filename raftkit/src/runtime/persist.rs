//! Where a node's durable state lives, and how a Ready's writes reach it.
//!
//! A node's data directory holds `peer.meta` (its name, addresses and the
//! state machine's schema fingerprint), `wal/` (the write-ahead log, see
//! [`crate::storage::Wal`]), `snapshots/` and, for QUIC peers, `tls/` (its
//! identity, so that a restart needs only the directory).
//!
//! Every write of a Ready goes to one storage thread ([`GroupCommit`]) in
//! Ready order: a snapshot received from the leader (saved atomically, and
//! the log compacted behind it only if the save succeeded), entries, hard
//! state. Each write completes exactly once, with `Ok` only if every part of
//! it is durable; the completion signals the node task, which then releases
//! the Ready's persisted-only messages. Because one thread applies writes in
//! order and one fsync covers a whole batch, a completion implies every
//! earlier write is durable too. The first write that fails (any part of
//! it: a snapshot that was not saved, a refused append, a failed fsync)
//! fails the storage thread: every later write fails without reaching the
//! disk, and the shutdown flush writes nothing. The node built its later
//! writes on the failed one: after a received snapshot whose save failed,
//! a later hard state (a new term, the held-back commit index) carries the
//! snapshot's commit index, and made durable over a log never compacted
//! behind the snapshot it would make a restarted node apply its stale,
//! never committed suffix (Raft §5.4.3). The same holds for a group's
//! writes through the shared journal of `crate::multi` ([`SharedSink`]).
//!
//! A hard state whose term and vote are those last written, so that only
//! its commit index changed, is not written on its own: it waits and rides
//! along with the next write that syncs anyway (entries, a term or vote, a
//! snapshot, a compaction), or with the shutdown flush. The commit index is
//! volatile state in Raft (Figure 2); persisting it only lets a restarted
//! node apply without waiting for a leader, so it never needs an fsync of
//! its own. Without this, every commit advance cost an fsync on every node,
//! and the next append queued behind it (one client's put waited for two
//! fsyncs). A write that carries nothing else still goes to storage as a
//! barrier: it completes only once every earlier write is durable, so the
//! acknowledgements released by it never claim more than the disk holds.
//!
//! Snapshots the node takes itself go to the [`SnapshotSaver`] thread
//! instead, beside the log writer: appends, votes and acknowledgements never
//! wait behind a snapshot reaching the disk. Only once a snapshot is durable
//! does the node queue the compaction of the log behind it (a `Write` with
//! `compact`), so a failed save never costs an entry.
//!
//! [`open`] reads everything back and refuses a log that starts past the
//! latest snapshot's index + 1 (the entries between exist nowhere).
//!
//! All file IO goes through the node's [`Vfs`].

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::apply::TakenBody;
use crate::core::{Entry, HardState, Index, Message, NodeId, Restored, SnapshotMeta, Term};
use crate::error::Error;
use crate::storage::vfs::{RealFs, SharedFs, Vfs, write_atomic};
use crate::storage::{
    AppendCallback, FileSnapshotStore, GroupCommit, LogStore, MemLogStore, MemSnapshotStore,
    Snapshot, SnapshotStore, StorageError, Wal, WalOptions,
};
use crate::transport::Transport;

/// A boxed log store, as the storage thread owns it.
pub type BoxedLog = Box<dyn LogStore + Send>;
/// A shared snapshot store, used on the storage thread.
pub type SharedSnapshots = Arc<Mutex<Box<dyn SnapshotStore + Send>>>;

/// What a peer records about itself in its data directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerMeta {
    /// The peer's name (its node id derives from it).
    pub name: String,
    /// The address it listens on.
    pub listen: String,
    /// The address other peers reach it at.
    pub advertise: String,
    /// The state machine's name.
    pub state_machine: String,
    /// The state machine's schema fingerprint when the log was created.
    pub schema: u64,
}

const META_FILE: &str = "peer.meta";

impl PeerMeta {
    /// Reads `peer.meta` from `dir`, if present.
    pub fn load(dir: &Path) -> Result<Option<PeerMeta>, Error> {
        Self::load_in(&RealFs, dir)
    }

    /// [`PeerMeta::load`] on the file system `fs`.
    pub fn load_in(fs: &dyn Vfs, dir: &Path) -> Result<Option<PeerMeta>, Error> {
        let path = dir.join(META_FILE);
        match fs.read(&path) {
            Ok(bytes) => postcard::from_bytes(&bytes).map(Some).map_err(|e| {
                Error::Storage(format!("{}: unreadable peer metadata: {e}", path.display()))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::Storage(format!("{}: {e}", path.display()))),
        }
    }

    /// Writes `peer.meta` atomically (temp file, fsync, rename, dir fsync).
    pub fn save(&self, dir: &Path) -> Result<(), Error> {
        self.save_in(&RealFs, dir)
    }

    /// [`PeerMeta::save`] on the file system `fs`.
    pub fn save_in(&self, fs: &dyn Vfs, dir: &Path) -> Result<(), Error> {
        let bytes = postcard::to_allocvec(self).map_err(|e| Error::Storage(e.to_string()))?;
        write_atomic(fs, &dir.join(META_FILE), &bytes).map_err(storage_error)
    }
}

/// Where the node keeps its log and snapshots.
#[derive(Clone, Debug)]
pub enum StorageChoice {
    /// The write-ahead log and snapshot files under a data directory.
    Disk(PathBuf),
    /// Memory only: nothing survives the process (tests, benchmarks).
    Memory,
}

/// The opened stores and what the node restarts from.
pub struct Opened {
    /// The log store.
    pub log: BoxedLog,
    /// The snapshot store.
    pub snapshots: SharedSnapshots,
    /// The durable state, or `None` for a store that holds nothing yet.
    pub restored: Option<Restored>,
}

fn storage_error(e: StorageError) -> Error {
    Error::Storage(e.to_string())
}

/// Opens the stores (on the file system `fs`) and reads back the durable
/// state.
///
/// Refuses, as corruption naming both directories, a log whose first index
/// lies past the latest snapshot's index + 1: the entries between them
/// exist nowhere, so starting would silently lose committed writes.
pub fn open(choice: &StorageChoice, fs: &SharedFs, wal: WalOptions) -> Result<Opened, Error> {
    let (log, snapshots): (BoxedLog, Box<dyn SnapshotStore + Send>) = match choice {
        StorageChoice::Disk(dir) => (
            Box::new(Wal::open_in(fs.clone(), dir.join("wal"), wal).map_err(storage_error)?),
            Box::new(
                FileSnapshotStore::open_in(fs.clone(), dir.join("snapshots"), 1)
                    .map_err(storage_error)?,
            ),
        ),
        StorageChoice::Memory => (
            Box::new(MemLogStore::new()),
            Box::new(MemSnapshotStore::new(1)),
        ),
    };
    let places = match choice {
        StorageChoice::Disk(dir) => (dir.join("wal"), dir.join("snapshots")),
        StorageChoice::Memory => ("memory".into(), "memory".into()),
    };
    open_stores(log, snapshots, places)
}

/// [`open`] on stores already opened (a group of a multi-group node: its
/// log in the shared journal). `places` names the log and the snapshot
/// directory in errors.
pub(crate) fn open_stores(
    mut log: BoxedLog,
    snapshots: Box<dyn SnapshotStore + Send>,
    places: (PathBuf, PathBuf),
) -> Result<Opened, Error> {
    let snapshot = snapshots.latest().map_err(storage_error)?;
    let hard_state = log.hard_state();
    let empty = log.last_index() == 0 && snapshot.is_none() && hard_state == HardState::default();
    let restored = if empty {
        None
    } else {
        let (meta, data) = match snapshot {
            Some(s) => (s.meta, Some(s.data)),
            None => (SnapshotMeta::default(), None),
        };
        if log.first_index() > meta.index.saturating_add(1) {
            let (wal_dir, snap_dir) = places;
            return Err(storage_error(StorageError::corrupt(
                &wal_dir,
                0,
                format!(
                    "the log starts at index {} but the latest snapshot in {} ends at index {}: \
                     entries {}..={} exist nowhere (the log was compacted behind a snapshot \
                     that is not on disk)",
                    log.first_index(),
                    snap_dir.display(),
                    meta.index,
                    meta.index + 1,
                    log.first_index() - 1
                ),
            )));
        }
        // A crash between saving a snapshot and compacting the log behind it
        // leaves older entries: finish the compaction now (it keeps the
        // entries after the snapshot only if the log agrees with it, Raft
        // §7), so that the log continues right after the snapshot and the
        // next append is not refused as a gap.
        if meta.index > 0 && meta.index >= log.first_index() {
            log.compact_prefix(meta.index, meta.term)
                .and_then(|()| log.sync())
                .map_err(storage_error)?;
        }
        let conflicts = log
            .term(meta.index)
            .map_err(storage_error)?
            .is_some_and(|t| t != meta.term);
        let lo = (meta.index + 1).max(log.first_index());
        let entries: Vec<Entry> = if conflicts || lo > log.last_index() {
            Vec::new()
        } else {
            log.entries(lo, log.last_index() + 1)
                .map_err(storage_error)?
        };
        Some(Restored {
            hard_state,
            snapshot: meta,
            snapshot_data: data,
            entries,
        })
    };
    Ok(Opened {
        log,
        snapshots: Arc::new(Mutex::new(snapshots)),
        restored,
    })
}

/// A write of one Ready (or a compaction), completed when durable.
pub struct Write {
    /// A snapshot received from the leader: saved before anything else, and
    /// the log compacted behind it only if the save succeeded.
    pub snapshot: Option<Snapshot>,
    /// Compact the log up to (index, term): a snapshot the node took is
    /// durable there.
    pub compact: Option<(Index, Term)>,
    /// Entries to append (replacing any suffix from the first one).
    pub entries: Vec<Entry>,
    /// A new hard state.
    pub hard_state: Option<HardState>,
}

/// Where a node's writes go: the storage thread behind group commit for the
/// write-ahead log; for a memory-only store, the node task itself (there is
/// no IO to move off it, and a hand-off to a thread per Ready would cost two
/// thread wake-ups and cross-thread frees for nothing).
enum Sink {
    Thread(GroupCommit<BoxedLog>),
    Inline(Mutex<BoxedLog>),
    Shared(Box<dyn SharedSink>),
}

/// A storage thread shared by several groups of one node (the journal of
/// `crate::multi`): it takes a group's whole writes and completes each
/// through `done` with exactly one outcome, in the order they were given,
/// `Ok(token)` only once every part of the write is durable. Once a write
/// of a sink failed, every later write of that sink fails without reaching
/// the disk (see the module documentation).
pub trait SharedSink: Send + Sync + 'static {
    /// Queues `write`; `done` gets `Ok(token)` once it is durable, or the
    /// first failure.
    fn write(&self, write: Write, done: Done, token: u64);
}

/// The storage thread's side of releasing persisted-only messages: the
/// transport, and whether a write ever failed (after which nothing is
/// released again, whatever a later write says: DESIGN §4).
struct Release {
    transport: Arc<dyn Transport>,
    failed: Arc<AtomicBool>,
}

/// Completions of writes: `Ok(token)` once a write and every write before
/// it is durable, `Err` for the first failure.
pub type Done = mpsc::UnboundedSender<Result<u64, StorageError>>;

/// The storage thread (or inline store), shared by the node task.
pub struct Persister {
    sink: Sink,
    /// Where a storage thread sends the messages a write releases (see
    /// [`Persister::release_through`]); `None`: the caller releases them.
    release: Option<Release>,
    snapshots: SharedSnapshots,
    /// Term and vote of the last hard state handed to storage.
    written: Cell<Option<(Term, NodeId)>>,
    /// A hard state that changed only the commit index, not written yet
    /// (see the module documentation).
    deferred: Cell<Option<HardState>>,
}

impl Persister {
    /// Starts the storage thread (for a store that does IO; `inline` stores
    /// are written on the caller's task, see [`Persister::write`]).
    pub fn start(log: BoxedLog, snapshots: SharedSnapshots, inline: bool) -> Result<Self, Error> {
        Self::start_on(log, snapshots, inline, &super::threads::Threads::default())
    }

    /// [`Persister::start`] with the storage loop started by `threads`.
    pub(crate) fn start_on(
        log: BoxedLog,
        snapshots: SharedSnapshots,
        inline: bool,
        threads: &super::threads::Threads,
    ) -> Result<Self, Error> {
        let sink = if inline {
            Sink::Inline(Mutex::new(log))
        } else {
            Sink::Thread(
                GroupCommit::start_on(log, |body| {
                    threads
                        .spawn("raftkit-storage", body)
                        .map(|w| w.joins_by_blocking())
                        .map_err(|e| StorageError::Invalid(e.to_string()))
                })
                .map_err(storage_error)?,
            )
        };
        Ok(Persister {
            sink,
            release: None,
            snapshots,
            written: Cell::new(None),
            deferred: Cell::new(None),
        })
    }

    /// Writes through a storage thread shared with other groups.
    pub fn shared(sink: Box<dyn SharedSink>, snapshots: SharedSnapshots) -> Self {
        Persister {
            sink: Sink::Shared(sink),
            release: None,
            snapshots,
            written: Cell::new(None),
            deferred: Cell::new(None),
        }
    }

    /// Makes the storage thread send the messages a write releases (see
    /// [`Persister::write_releasing`]) itself, right after the fsync that
    /// made the write durable, instead of handing them back to the node
    /// task, which would send them only once its completion woke it up: a
    /// follower's acknowledgement leaves one cross-thread wake-up earlier.
    /// Thesis §10.2.1 asks only that a server acknowledge entries once they
    /// are on its disk; a completion follows every earlier write's (one
    /// thread, in order), so messages still leave in write order. Once a
    /// write failed, nothing is sent again. No effect on an inline store
    /// (its writes complete on the caller's task) or a shared sink.
    pub fn release_through(&mut self, transport: Arc<dyn Transport>) {
        if matches!(self.sink, Sink::Thread(_)) {
            self.release = Some(Release {
                transport,
                failed: Arc::default(),
            });
        }
    }

    /// [`Persister::write`] of a write whose completion releases `messages`
    /// (persisted-only messages: acknowledgements, votes). Returns the
    /// messages the caller must send itself once the write completes with
    /// `Ok`: none if the storage thread sends them (see
    /// [`Persister::release_through`]).
    pub fn write_releasing(
        &self,
        write: Write,
        done: Done,
        token: u64,
        messages: Vec<Message>,
    ) -> (Option<Result<(), StorageError>>, Vec<Message>) {
        match (&self.release, &self.sink) {
            // Every write, with messages or not, records its failure:
            // a later write's acknowledgement would otherwise claim entries
            // that a failed append never wrote (thesis §10.2.1).
            (Some(release), Sink::Thread(commit)) => {
                let mut write = write;
                self.carry_commit(&mut write);
                let transport = Arc::clone(&release.transport);
                let failed = Arc::clone(&release.failed);
                // A follower's write releases acknowledgements; a leader's
                // (its own appends) releases nothing.
                let (begun, synced) = match messages.is_empty() {
                    true => ("L.st_begin", "L.durable"),
                    false => ("F.st_begin", "F.durable"),
                };
                #[cfg(feature = "latency-probe")]
                commit.with_store(move |_| crate::probe::mark(begun));
                #[cfg(not(feature = "latency-probe"))]
                let _ = begun;
                let sent = move |durable: bool| {
                    crate::probe::mark(synced);
                    // Tooth (simulation builds only): release what never
                    // became durable.
                    #[cfg(feature = "sim")]
                    let durable = durable
                        || crate::sim::runtime::teeth::on(
                            crate::sim::runtime::teeth::Tooth::AckAfterStorageFailure,
                        );
                    if !durable {
                        failed.store(true, Ordering::SeqCst);
                    } else if !failed.load(Ordering::SeqCst) {
                        for m in messages {
                            transport.send(m);
                        }
                    }
                };
                self.write_thread(commit, write, done, token, Some(Box::new(sent)));
                (None, Vec::new())
            }
            _ => (self.write(write, done, token), messages),
        }
    }

    /// Queues `write`; `done` receives exactly one outcome for `token`:
    /// `Ok(token)` once every part of it is durable, or the first failure.
    /// An inline store writes at once, in the same order (snapshot,
    /// compaction, entries, hard state, sync), and returns the outcome
    /// instead of sending it: `Some` means `done` is never used. Writes are
    /// handed to storage and complete in call order either way.
    ///
    /// A hard state that changes only the commit index is held back and
    /// written with the next write that syncs (see the module
    /// documentation); the write still completes in order, as a barrier.
    pub fn write(
        &self,
        mut write: Write,
        done: Done,
        token: u64,
    ) -> Option<Result<(), StorageError>> {
        self.carry_commit(&mut write);
        match &self.sink {
            Sink::Thread(commit) => {
                self.write_thread(commit, write, done, token, None);
                None
            }
            Sink::Inline(log) => Some(self.write_inline(log, write)),
            Sink::Shared(sink) => {
                sink.write(write, done, token);
                None
            }
        }
    }

    /// Whether `write` carries nothing for the disk: no snapshot, compaction
    /// or entries, and at most a hard state that changes only the commit
    /// index, which is then held back (see the module documentation) as
    /// [`Persister::write`] would hold it. Such a write completes as soon as
    /// it is taken if nothing waits for it (no message to release, no
    /// term, vote or entry for the core to learn about): sending it to the
    /// storage thread as a barrier would cost two thread wake-ups for
    /// nothing. `false`: nothing was done, write it.
    pub fn holds_back(&self, write: &Write) -> bool {
        if write.snapshot.is_some() || write.compact.is_some() || !write.entries.is_empty() {
            return false;
        }
        match write.hard_state {
            None => true,
            Some(hs) if self.written.get() == Some((hs.term, hs.vote)) => {
                self.deferred.set(Some(hs));
                true
            }
            Some(_) => false,
        }
    }

    /// Holds back a commit-only hard state, or attaches the held-back one to
    /// a write that syncs anyway.
    fn carry_commit(&self, write: &mut Write) {
        match write.hard_state {
            Some(hs) => {
                let syncs_anyway = write.snapshot.is_some()
                    || write.compact.is_some()
                    || !write.entries.is_empty();
                if !syncs_anyway && self.written.get() == Some((hs.term, hs.vote)) {
                    write.hard_state = None;
                    self.deferred.set(Some(hs));
                } else {
                    self.deferred.set(None);
                    self.written.set(Some((hs.term, hs.vote)));
                }
            }
            None => {
                if write.snapshot.is_some() || write.compact.is_some() || !write.entries.is_empty()
                {
                    write.hard_state = self.deferred.take();
                }
            }
        }
    }

    fn write_inline(&self, log: &Mutex<BoxedLog>, write: Write) -> Result<(), StorageError> {
        let mut log = log.lock().map_err(|_| StorageError::Closed)?;
        if let Some(snap) = write.snapshot {
            self.snapshots
                .lock()
                .map_err(|_| StorageError::Closed)?
                .save(&snap)?;
            log.compact_prefix(snap.meta.index, snap.meta.term)?;
        }
        if let Some((index, term)) = write.compact {
            log.compact_prefix(index, term)?;
        }
        if !write.entries.is_empty() {
            // Given away: an in-memory store moves them in.
            log.append_owned(write.entries)?;
        }
        if let Some(hs) = write.hard_state {
            log.save_hard_state(hs)?;
        }
        log.sync()
    }

    fn write_thread(
        &self,
        commit: &GroupCommit<BoxedLog>,
        mut write: Write,
        done: Done,
        token: u64,
        on_outcome: Option<Box<dyn FnOnce(bool) + Send>>,
    ) {
        // Every part records its first failure here; the last part (which
        // completes last: one thread, in order) reports it, or `Ok`.
        let failed: Arc<Mutex<Option<StorageError>>> = Arc::default();
        let part = |failed: &Arc<Mutex<Option<StorageError>>>| -> AppendCallback {
            let failed = failed.clone();
            Box::new(move |r| {
                if let Err(e) = r {
                    record_failure(&failed, e);
                }
            })
        };
        if let Some(snap) = write.snapshot.take() {
            // Saved and compacted in one step on the storage thread: the
            // compaction happens only behind a snapshot that is durable. The
            // rest of this Ready (entries, hard state) is written in the
            // same step and only if the snapshot was saved: a hard state
            // whose commit index comes from the snapshot, made durable over
            // a log that was not compacted behind it, would make a restarted
            // node take its stale, never committed suffix for committed and
            // apply it (found by the whole-runtime simulation, bank seed 179).
            // A failure here fails the storage thread too: no later write
            // reaches the log (a later hard state carries the snapshot's
            // commit index as well, Raft §5.4.3), and the held-back commit
            // index is not flushed at shutdown.
            let store = Arc::clone(&self.snapshots);
            let failed2 = failed.clone();
            let compact = write.compact.take();
            let entries = std::mem::take(&mut write.entries);
            let hard_state = write.hard_state.take();
            commit.write_with_store(move |log| {
                let saved = store
                    .lock()
                    .map_err(|_| StorageError::Closed)
                    .and_then(|mut s| s.save(&snap))
                    .and_then(|()| log.compact_prefix(snap.meta.index, snap.meta.term))
                    .and_then(|()| match compact {
                        Some((index, term)) => log.compact_prefix(index, term),
                        None => Ok(()),
                    })
                    .and_then(|()| match entries.is_empty() {
                        true => Ok(()),
                        false => log.append(&entries),
                    })
                    .and_then(|()| match hard_state {
                        Some(hs) => log.save_hard_state(hs),
                        None => Ok(()),
                    });
                if let Err(e) = &saved {
                    record_failure(&failed2, e.clone());
                }
                saved
            });
        }
        if let Some((index, term)) = write.compact {
            commit.compact_prefix(index, term, part(&failed));
        }
        let last: AppendCallback = Box::new(move |r| {
            let first = failed.lock().ok().and_then(|mut f| f.take());
            let outcome = match (first, r) {
                (Some(e), _) => Err(e),
                (None, r) => r.map(|_| token),
            };
            if let Some(f) = on_outcome {
                f(outcome.is_ok());
            }
            let _ = done.send(outcome);
        });
        // Entries and hard state go as one request, so one sync covers both.
        match write.hard_state {
            Some(hs) if !write.entries.is_empty() => {
                commit.append_with_state(write.entries, hs, last)
            }
            Some(hs) => commit.save_hard_state(hs, last),
            // Without a hard state this is also a barrier: it completes
            // after everything queued before it.
            None => commit.append(write.entries, last),
        }
    }

    /// Stops the storage thread after flushing every queued write and the
    /// held-back commit index (which is not written once a write failed:
    /// the storage thread refuses it).
    pub async fn shutdown(self) -> Result<(), Error> {
        let deferred = self.deferred.take();
        match self.sink {
            Sink::Thread(commit) => {
                if let Some(hs) = deferred {
                    commit.save_hard_state(hs, Box::new(|_| {}));
                }
                commit
                    .shutdown_async()
                    .await
                    .map(|_| ())
                    .map_err(storage_error)
            }
            Sink::Inline(log) => {
                let mut log = log
                    .into_inner()
                    .map_err(|_| Error::Storage("log store poisoned".into()))?;
                if let Some(hs) = deferred {
                    log.save_hard_state(hs).map_err(storage_error)?;
                }
                log.sync().map_err(storage_error)
            }
            Sink::Shared(sink) => {
                // A barrier: completes once this group's earlier writes are
                // durable (the shared thread itself lives on).
                let (tx, mut rx) = mpsc::unbounded_channel();
                sink.write(
                    Write {
                        snapshot: None,
                        compact: None,
                        entries: Vec::new(),
                        hard_state: deferred,
                    },
                    tx,
                    0,
                );
                match rx.recv().await {
                    Some(r) => r.map(|_| ()).map_err(storage_error),
                    None => Err(Error::Storage("the shared log stopped".into())),
                }
            }
        }
    }
}

fn record_failure(slot: &Mutex<Option<StorageError>>, e: StorageError) {
    if let Ok(mut f) = slot.lock() {
        f.get_or_insert(e);
    }
}

/// A snapshot the node took, saved on its own thread.
pub struct SaveJob {
    /// The snapshot's index and term and the configuration at its index.
    pub meta: SnapshotMeta,
    /// Its bytes, or the copy of the state to serialize first (here, on the
    /// snapshot thread).
    pub body: TakenBody,
    /// Gets the outcome.
    pub done: Box<dyn FnOnce(Saved) + Send>,
}

impl SaveJob {
    /// Answers a job the snapshot thread will not run: `Closed` (a copy
    /// still to serialize is not: its bytes would go nowhere).
    fn closed(self) {
        let data = match self.body {
            TakenBody::Encoded(data) => data,
            TakenBody::Deferred(_) => Vec::new(),
        };
        let snapshot = Snapshot {
            meta: self.meta,
            data,
        };
        (self.done)(Saved::Stored(snapshot, Err(StorageError::Closed)));
    }
}

/// How a [`SaveJob`] ended.
pub enum Saved {
    /// The snapshot was serialized; whether it reached the store.
    Stored(Snapshot, Result<(), StorageError>),
    /// The state machine's copy did not serialize (why): nothing was saved.
    NotEncoded(String),
}

/// The largest memory a compaction let go that the snapshot thread keeps
/// for reuse: a snapshot's buffer, for the next snapshot to be serialized
/// into ([`SnapshotSaver::take_snapshot_room`]), and the log's old vector,
/// for the log to grow in again ([`SnapshotSaver::take_log_room`]).
/// Fresh memory costs the kernel zeroing each of its pages as it is first
/// written: at `kv` put x256 (a state of about 30 MB), fresh snapshot
/// buffers took 6 % of the machine's CPU. Kept, each costs its size
/// between compactions, so beyond this size it is given back.
pub const MAX_SPARE_BYTES: usize = 256 << 20;

/// What the snapshot thread is given to do.
enum SaverJob {
    /// Save a snapshot.
    Save(Box<SaveJob>),
    /// Drop what a compaction let go: the node task does not stall for the
    /// milliseconds a run of 100,000 entries takes to drop.
    Drop(crate::core::Released),
}

/// The snapshot thread: saves the snapshots the node takes, one at a time,
/// beside the log writer (never in front of it: appends, votes and
/// acknowledgements never wait for a snapshot to reach the disk), and drops
/// the entries the log let go behind them. What a compaction let go is
/// reused (each up to [`MAX_SPARE_BYTES`]): the buffer of the snapshot it
/// replaced, once nothing else holds it, for the next snapshot to be
/// serialized into ([`SnapshotSaver::take_snapshot_room`]); the emptied
/// vector of its entries, for the log to grow in again
/// ([`SnapshotSaver::take_log_room`]).
pub struct SnapshotSaver {
    jobs: Option<mpsc::UnboundedSender<SaverJob>>,
    thread: Option<super::threads::Worker>,
    /// The emptied vector of the entries the last compaction let go.
    log_room: Arc<Mutex<Vec<Entry>>>,
    /// The buffer of the snapshot the last compaction replaced.
    snapshot_room: Arc<Mutex<Vec<u8>>>,
}

impl SnapshotSaver {
    /// Starts the thread, saving into `store`.
    pub fn start(store: SharedSnapshots) -> Result<Self, Error> {
        Self::start_on(store, &super::threads::Threads::default())
    }

    /// [`SnapshotSaver::start`] with the worker started by `threads`.
    pub(crate) fn start_on(
        store: SharedSnapshots,
        threads: &super::threads::Threads,
    ) -> Result<Self, Error> {
        let (tx, mut rx) = mpsc::unbounded_channel::<SaverJob>();
        // Filled on the thread, taken by the node task.
        let log_room: Arc<Mutex<Vec<Entry>>> = Arc::default();
        let snapshot_room: Arc<Mutex<Vec<u8>>> = Arc::default();
        let rooms = (Arc::clone(&log_room), Arc::clone(&snapshot_room));
        let thread = threads.spawn("raftkit-snapshots", async move {
            // The length of the last snapshot.
            let mut last_len = 0;
            while let Some(job) = rx.recv().await {
                let job = match job {
                    SaverJob::Save(job) => *job,
                    SaverJob::Drop(released) => {
                        let crate::core::Released {
                            mut entries,
                            snapshot,
                        } = released;
                        entries.clear();
                        if entries.capacity().saturating_mul(size_of::<Entry>()) <= MAX_SPARE_BYTES
                            && let Ok(mut room) = log_room.lock()
                            && entries.capacity() > room.capacity()
                        {
                            *room = entries;
                        }
                        if let Some(data) = snapshot.and_then(|s| Arc::try_unwrap(s).ok())
                            && data.capacity() <= MAX_SPARE_BYTES
                            && let Ok(mut room) = snapshot_room.lock()
                            && data.capacity() > room.capacity()
                        {
                            *room = data;
                        }
                        continue;
                    }
                };
                let snapshot = match job.body.encode_hinted(last_len) {
                    Ok(data) => Snapshot {
                        meta: job.meta,
                        data,
                    },
                    Err(reason) => {
                        (job.done)(Saved::NotEncoded(reason));
                        continue;
                    }
                };
                last_len = snapshot.data.len();
                let r = store
                    .lock()
                    .map_err(|_| StorageError::Closed)
                    .and_then(|mut s| s.save(&snapshot));
                (job.done)(Saved::Stored(snapshot, r));
            }
        })?;
        Ok(SnapshotSaver {
            jobs: Some(tx),
            thread: Some(thread),
            log_room: rooms.0,
            snapshot_room: rooms.1,
        })
    }

    /// Queues a save; `job.done` runs on the snapshot thread (or at once
    /// with `Closed` if the thread is gone).
    pub fn save(&self, job: SaveJob) {
        let Some(tx) = &self.jobs else {
            return job.closed();
        };
        if let Err(mpsc::error::SendError(SaverJob::Save(job))) =
            tx.send(SaverJob::Save(Box::new(job)))
        {
            job.closed();
        }
    }

    /// Drops what a compaction let go on the snapshot thread (here, if the
    /// thread is gone).
    pub fn release(&self, released: crate::core::Released) {
        if let Some(tx) = &self.jobs {
            // A closed channel hands the value back, dropped here.
            let _ = tx.send(SaverJob::Drop(released));
        }
    }

    /// The emptied vector of the entries a compaction let go (once the
    /// snapshot thread dropped them; empty otherwise), as the `room` of the
    /// next [`Raft::compact_releasing`](crate::core::Raft::compact_releasing).
    pub fn take_log_room(&self) -> Vec<Entry> {
        self.log_room
            .lock()
            .map(|mut room| std::mem::take(&mut *room))
            .unwrap_or_default()
    }

    /// The buffer of the snapshot a compaction replaced (once nothing else
    /// held it; empty otherwise), for the next snapshot to be serialized
    /// into ([`ApplyMsg::TakeSnapshot`](super::apply::ApplyMsg::TakeSnapshot)).
    pub fn take_snapshot_room(&self) -> Vec<u8> {
        self.snapshot_room
            .lock()
            .map(|mut room| std::mem::take(&mut *room))
            .unwrap_or_default()
    }

    /// Waits for the save under way (if any) and stops the thread.
    pub async fn shutdown(mut self) {
        self.jobs = None;
        if let Some(t) = self.thread.take() {
            t.join().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::Payload;

    /// What reached the store, in order: `A` append (with its entry count),
    /// `H` hard state (with its commit index), `S` a sync that had
    /// something to make durable.
    #[derive(Clone, Debug, PartialEq, Eq)]
    enum Op {
        A(usize),
        H(Index),
        S,
    }

    struct Recording {
        inner: MemLogStore,
        ops: Arc<Mutex<Vec<Op>>>,
        dirty: bool,
    }

    impl Recording {
        fn record(&self, op: Op) {
            if let Ok(mut ops) = self.ops.lock() {
                ops.push(op);
            }
        }
    }

    impl LogStore for Recording {
        fn append(&mut self, entries: &[Entry]) -> Result<(), StorageError> {
            if !entries.is_empty() {
                self.dirty = true;
                self.record(Op::A(entries.len()));
            }
            self.inner.append(entries)
        }
        fn truncate_suffix(&mut self, from: Index) -> Result<(), StorageError> {
            self.inner.truncate_suffix(from)
        }
        fn compact_prefix(&mut self, upto: Index, term: Term) -> Result<(), StorageError> {
            self.inner.compact_prefix(upto, term)
        }
        fn entries(&self, lo: Index, hi: Index) -> Result<Vec<Entry>, StorageError> {
            self.inner.entries(lo, hi)
        }
        fn term(&self, index: Index) -> Result<Option<Term>, StorageError> {
            self.inner.term(index)
        }
        fn first_index(&self) -> Index {
            self.inner.first_index()
        }
        fn last_index(&self) -> Index {
            self.inner.last_index()
        }
        fn save_hard_state(&mut self, hs: HardState) -> Result<(), StorageError> {
            self.dirty = true;
            self.record(Op::H(hs.commit));
            self.inner.save_hard_state(hs)
        }
        fn hard_state(&self) -> HardState {
            self.inner.hard_state()
        }
        fn sync(&mut self) -> Result<(), StorageError> {
            if std::mem::take(&mut self.dirty) {
                self.record(Op::S);
            }
            self.inner.sync()
        }
    }

    fn entry(index: Index) -> Entry {
        Entry {
            term: 1,
            index,
            payload: Payload::Noop,
        }
    }

    fn hs(term: Term, vote: NodeId, commit: Index) -> HardState {
        HardState { term, vote, commit }
    }

    fn write(entries: Vec<Entry>, hard_state: Option<HardState>) -> Write {
        Write {
            snapshot: None,
            compact: None,
            entries,
            hard_state,
        }
    }

    /// A persister (inline or on its thread) over an in-memory log that
    /// records its operations, and the record.
    fn recording_persister(inline: bool) -> (Persister, Arc<Mutex<Vec<Op>>>) {
        let ops = Arc::new(Mutex::new(Vec::new()));
        let log: BoxedLog = Box::new(Recording {
            inner: MemLogStore::new(),
            ops: ops.clone(),
            dirty: false,
        });
        let snaps: SharedSnapshots = Arc::new(Mutex::new(Box::new(MemSnapshotStore::new(1))));
        (Persister::start(log, snaps, inline).expect("start"), ops)
    }

    /// Gives `p` each of `writes` in turn, waiting for its completion before
    /// the next (so that each write is a batch of its own); each completes.
    async fn write_one_at_a_time<const N: usize>(p: &Persister, writes: [Write; N], inline: bool) {
        let (tx, mut rx) = mpsc::unbounded_channel();
        for (token, w) in (1..).zip(writes) {
            let outcome = match p.write(w, tx.clone(), token) {
                Some(r) => r.map(|()| token),
                None => rx.recv().await.expect("a completion"),
            };
            assert_eq!(outcome.ok(), Some(token), "inline {inline}");
        }
    }

    /// A hard state that only moves the commit index costs no sync of its
    /// own: it rides with the next write that syncs anyway, or with the
    /// shutdown flush. Entries and hard state of one write share one sync.
    /// Every write still completes, in order.
    #[tokio::test]
    async fn commit_only_hard_states_ride_along_and_entries_share_a_sync() {
        for inline in [false, true] {
            let (p, ops) = recording_persister(inline);
            let writes = [
                write(vec![entry(1)], Some(hs(1, 1, 0))),
                write(Vec::new(), Some(hs(1, 1, 1))), // commit only: held
                write(vec![entry(2)], None),          // carries commit 1
                write(Vec::new(), Some(hs(1, 1, 2))), // commit only: held
                write(Vec::new(), Some(hs(2, 0, 2))), // a new term: written
                write(Vec::new(), Some(hs(2, 0, 3))), // commit only: held
            ];
            write_one_at_a_time(&p, writes, inline).await;
            p.shutdown().await.expect("shutdown");
            let ops = ops.lock().expect("ops").clone();
            use Op::*;
            assert_eq!(
                ops,
                [A(1), H(0), S, A(1), H(1), S, H(2), S, H(3), S],
                // (the third write's commit is the second's; the last one
                // is written by the shutdown flush)
                "inline {inline}"
            );
        }
    }

    /// A vote granted in the term already written is not a commit-only
    /// change: the write that carries it completes (and releases the vote
    /// reply) only once the vote is durable, Raft §5.2 / Figure 2
    /// ("updated on stable storage before responding to RPCs"). Mutation
    /// round, stop 46: a hold-back that compared only the term went unseen.
    #[tokio::test]
    async fn a_new_vote_in_the_written_term_is_synced_not_held_back() {
        for inline in [false, true] {
            let (p, ops) = recording_persister(inline);
            let writes = [
                write(vec![entry(1)], Some(hs(2, 0, 0))),
                write(Vec::new(), Some(hs(2, 3, 0))), // a vote in term 2
            ];
            write_one_at_a_time(&p, writes, inline).await;
            // Before the shutdown flush: the vote's write has completed.
            let before_shutdown = ops.lock().expect("ops").clone();
            use Op::*;
            assert_eq!(
                before_shutdown,
                [A(1), H(0), S, H(0), S],
                "the vote of term 2 was not synced before its write completed (inline {inline})"
            );
            p.shutdown().await.expect("shutdown");
        }
    }

    fn entry_at(index: Index, term: Term) -> Entry {
        Entry {
            term,
            index,
            payload: Payload::Noop,
        }
    }

    /// A received snapshot whose save failed leaves a log that was not
    /// compacted behind it (rightly), so no later hard state may reach the
    /// disk either: its commit index comes from the snapshot, and over the
    /// uncompacted log a restarted node would take its stale, never
    /// committed suffix for committed and apply it (Raft §5.4.3). Neither
    /// a later write with a new term nor the held-back commit index flushed
    /// by `shutdown` may be written once a write failed.
    #[tokio::test]
    async fn a_failed_snapshot_save_stops_every_later_hard_state() {
        use crate::storage::vfs::{Fault, FaultRule, FaultyFs, FileOp};
        // Later writes: a new term (written in a batch of its own), or a
        // commit-only hard state (held back, flushed at shutdown).
        for later in [hs(4, 0, 300), hs(3, 0, 300)] {
            let dir = tempfile::tempdir().expect("tempdir");
            let faulty = FaultyFs::over_real();
            let fs: SharedFs = Arc::new(faulty.clone());
            let mut wal = Wal::open_in(fs.clone(), dir.path().join("wal"), WalOptions::default())
                .expect("wal");
            let mut stale: Vec<Entry> = (1..=100).map(|i| entry_at(i, 1)).collect();
            stale.extend((101..=150).map(|i| entry_at(i, 2)));
            wal.append(&stale).expect("append");
            wal.save_hard_state(hs(2, 1, 100)).expect("hard state");
            wal.sync().expect("sync");
            let store = FileSnapshotStore::open_in(fs.clone(), dir.path().join("snapshots"), 1)
                .expect("snapshots");
            faulty.inject(FaultRule::new(FileOp::Rename, Fault::Io).on("snapshots"));
            let snaps: SharedSnapshots = Arc::new(Mutex::new(Box::new(store)));
            let p = Persister::start(Box::new(wal), snaps, false).expect("start");
            let (tx, mut rx) = mpsc::unbounded_channel();
            let received = Write {
                snapshot: Some(Snapshot {
                    meta: SnapshotMeta {
                        index: 300,
                        term: 3,
                        ..SnapshotMeta::default()
                    },
                    data: b"state at 300".to_vec(),
                }),
                compact: None,
                entries: Vec::new(),
                hard_state: Some(hs(3, 0, 300)),
            };
            // Queued without waiting: the second joins a later batch.
            assert!(p.write(received, tx.clone(), 1).is_none());
            assert!(
                p.write(write(Vec::new(), Some(later)), tx.clone(), 2)
                    .is_none()
            );
            let first = rx.recv().await.expect("a completion");
            assert!(first.is_err(), "the failed save completed {first:?}");
            let _ = rx.recv().await.expect("a completion");
            let _ = p.shutdown().await;
            faulty.clear();
            let opened = open(
                &StorageChoice::Disk(dir.path().to_path_buf()),
                &fs,
                WalOptions::default(),
            )
            .expect("reopen");
            let commit = opened
                .restored
                .map(|r| r.hard_state.commit)
                .unwrap_or_default();
            assert!(
                commit <= 100,
                "after a failed snapshot save the disk holds commit index {commit} over a log \
                 whose entries 101..=150 were never committed (later hard state {later:?})"
            );
        }
    }

    /// Only a hard state that changes nothing but the commit index is held
    /// back: a new term or vote goes to disk before anything acts on it
    /// (Figure 2: "updated on stable storage before responding to RPCs").
    #[tokio::test]
    async fn only_a_commit_only_hard_state_is_held_back() {
        for inline in [false, true] {
            let log: BoxedLog = Box::<MemLogStore>::default();
            let snaps: SharedSnapshots = Arc::new(Mutex::new(Box::new(MemSnapshotStore::new(1))));
            let p = Persister::start(log, snaps, inline).expect("start");
            assert!(
                !p.holds_back(&write(Vec::new(), Some(hs(1, 1, 0)))),
                "nothing written yet (inline {inline})"
            );
            let (tx, mut rx) = mpsc::unbounded_channel();
            let outcome = match p.write(write(Vec::new(), Some(hs(1, 1, 0))), tx, 1) {
                Some(r) => r.map(|()| 1),
                None => rx.recv().await.expect("a completion"),
            };
            assert_eq!(outcome.ok(), Some(1));
            assert!(p.holds_back(&write(Vec::new(), None)));
            assert!(p.holds_back(&write(Vec::new(), Some(hs(1, 1, 5)))));
            for (changed, what) in [(hs(2, 1, 5), "a new term"), (hs(1, 2, 5), "a new vote")] {
                assert!(
                    !p.holds_back(&write(Vec::new(), Some(changed))),
                    "{what} held back (inline {inline})"
                );
            }
            assert!(!p.holds_back(&write(vec![entry(1)], None)));
            p.shutdown().await.expect("shutdown");
        }
    }

    /// A store whose next sync with something to make durable fails once
    /// `arm` is set, and every later one succeeds (a disk that reports a
    /// lost write once, as Linux reports a failed writeback once).
    struct FailsOnce {
        inner: MemLogStore,
        dirty: bool,
        arm: Arc<std::sync::atomic::AtomicBool>,
        /// Fails the next append (without a sync failure).
        arm_append: Arc<std::sync::atomic::AtomicBool>,
    }

    impl LogStore for FailsOnce {
        fn append(&mut self, entries: &[Entry]) -> Result<(), StorageError> {
            if self.arm_append.swap(false, Ordering::SeqCst) {
                return Err(StorageError::Io {
                    op: "write",
                    path: "wal".into(),
                    source: Arc::new(std::io::Error::other("no space")),
                });
            }
            self.dirty |= !entries.is_empty();
            self.inner.append(entries)
        }
        fn truncate_suffix(&mut self, from: Index) -> Result<(), StorageError> {
            self.inner.truncate_suffix(from)
        }
        fn compact_prefix(&mut self, upto: Index, term: Term) -> Result<(), StorageError> {
            self.inner.compact_prefix(upto, term)
        }
        fn entries(&self, lo: Index, hi: Index) -> Result<Vec<Entry>, StorageError> {
            self.inner.entries(lo, hi)
        }
        fn term(&self, index: Index) -> Result<Option<Term>, StorageError> {
            self.inner.term(index)
        }
        fn first_index(&self) -> Index {
            self.inner.first_index()
        }
        fn last_index(&self) -> Index {
            self.inner.last_index()
        }
        fn save_hard_state(&mut self, hs: HardState) -> Result<(), StorageError> {
            self.inner.save_hard_state(hs)
        }
        fn hard_state(&self) -> HardState {
            self.inner.hard_state()
        }
        fn sync(&mut self) -> Result<(), StorageError> {
            if std::mem::take(&mut self.dirty) && self.arm.swap(false, Ordering::SeqCst) {
                return Err(StorageError::Io {
                    op: "fsync",
                    path: "wal".into(),
                    source: Arc::new(std::io::Error::other("lost write")),
                });
            }
            self.inner.sync()
        }
    }

    /// Records what it was asked to send.
    #[derive(Default)]
    struct Sent(Mutex<Vec<Message>>);

    impl Transport for Sent {
        fn send(&self, msg: Message) {
            if let Ok(mut sent) = self.0.lock() {
                sent.push(msg);
            }
        }
        fn set_peers(&self, _: std::collections::BTreeMap<NodeId, String>) {}
    }

    fn ack(to: NodeId) -> Message {
        Message {
            from: 1,
            to,
            term: 1,
            body: crate::core::Body::TimeoutNow,
        }
    }

    /// A persister on a storage thread whose log fails on demand, releasing
    /// messages through [`Sent`].
    struct Releasing {
        p: Persister,
        sent: Arc<Sent>,
        /// Fails the next sync that follows an append.
        arm: Arc<std::sync::atomic::AtomicBool>,
        /// Fails the next append.
        arm_append: Arc<std::sync::atomic::AtomicBool>,
        tx: mpsc::UnboundedSender<Result<u64, StorageError>>,
        rx: mpsc::UnboundedReceiver<Result<u64, StorageError>>,
    }

    fn releasing() -> Releasing {
        let arm: Arc<std::sync::atomic::AtomicBool> = Arc::default();
        let arm_append: Arc<std::sync::atomic::AtomicBool> = Arc::default();
        let log: BoxedLog = Box::new(FailsOnce {
            inner: MemLogStore::new(),
            dirty: false,
            arm: arm.clone(),
            arm_append: arm_append.clone(),
        });
        let snaps: SharedSnapshots = Arc::new(Mutex::new(Box::new(MemSnapshotStore::new(1))));
        let mut p = Persister::start(log, snaps, false).expect("start");
        let sent = Arc::new(Sent::default());
        p.release_through(sent.clone());
        let (tx, rx) = mpsc::unbounded_channel();
        Releasing {
            p,
            sent,
            arm,
            arm_append,
            tx,
            rx,
        }
    }

    fn count(sent: &Sent) -> usize {
        sent.0.lock().map(|s| s.len()).unwrap_or(usize::MAX)
    }

    /// The storage thread sends a write's persisted-only messages itself,
    /// before the write's completion reaches the node; once a write failed
    /// it sends nothing again, even for a later write whose own sync
    /// succeeded (DESIGN §4: never acknowledge after a failed fsync).
    #[tokio::test]
    async fn the_storage_thread_releases_acks_after_the_sync_and_never_after_a_failure() {
        let Releasing {
            p,
            sent,
            arm,
            tx,
            mut rx,
            ..
        } = releasing();

        // A durable write: its message left before its completion arrived.
        let (done, back) =
            p.write_releasing(write(vec![entry(1)], None), tx.clone(), 1, vec![ack(2)]);
        assert!(
            done.is_none() && back.is_empty(),
            "the storage thread sends it"
        );
        assert_eq!(rx.recv().await.expect("completion").ok(), Some(1));
        assert_eq!(count(&sent), 1);

        // The next sync fails: nothing is sent, the completion says so.
        arm.store(true, Ordering::SeqCst);
        let _ = p.write_releasing(write(vec![entry(2)], None), tx.clone(), 2, vec![ack(2)]);
        assert!(rx.recv().await.expect("completion").is_err());
        // A later write whose sync succeeds: still nothing is sent.
        let _ = p.write_releasing(write(vec![entry(3)], None), tx.clone(), 3, vec![ack(3)]);
        let _ = rx.recv().await.expect("completion");
        assert_eq!(
            count(&sent),
            1,
            "an acknowledgement left after a failed sync"
        );
        let _ = p.shutdown().await;
    }

    /// A write that releases nothing still stops every later release when
    /// it fails: a failed append (a full disk, say) followed by a write
    /// whose own append and sync succeed must not acknowledge, or the
    /// acknowledgement would cover entries never written (thesis §10.2.1).
    #[tokio::test]
    async fn a_failed_write_without_messages_still_stops_later_acks() {
        let Releasing {
            p,
            sent,
            arm_append,
            tx,
            mut rx,
            ..
        } = releasing();

        let _ = p.write_releasing(write(vec![entry(1)], None), tx.clone(), 1, vec![ack(2)]);
        assert_eq!(rx.recv().await.expect("completion").ok(), Some(1));
        assert_eq!(count(&sent), 1);
        // A leader's own write: entries, nothing to release. Its append fails.
        arm_append.store(true, Ordering::SeqCst);
        let _ = p.write_releasing(write(vec![entry(2)], None), tx.clone(), 2, Vec::new());
        assert!(rx.recv().await.expect("completion").is_err());
        // The next write succeeds on its own: its ack must not leave.
        let _ = p.write_releasing(write(vec![entry(2)], None), tx.clone(), 3, vec![ack(3)]);
        let _ = rx.recv().await.expect("completion");
        assert_eq!(
            count(&sent),
            1,
            "an acknowledgement left after a failed write"
        );
        let _ = p.shutdown().await;
    }

    /// Records the name of the thread that drops it.
    struct DropWitness(Arc<Mutex<Option<String>>>);

    impl AsRef<[u8]> for DropWitness {
        fn as_ref(&self) -> &[u8] {
            b"payload"
        }
    }

    impl Drop for DropWitness {
        fn drop(&mut self) {
            let name = std::thread::current().name().map(str::to_string);
            if let Ok(mut slot) = self.0.lock() {
                *slot = name;
            }
        }
    }

    /// Saves a copied state of `len` bytes at `index` and hands back the
    /// snapshot's bytes.
    async fn save_copied(saver: &SnapshotSaver, index: Index, len: usize) -> Vec<u8> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let copy = crate::state_machine::SnapshotCopy::writing(move |buf| {
            buf.resize(buf.len() + len, 1);
            Ok(())
        });
        saver.save(SaveJob {
            meta: SnapshotMeta {
                index,
                term: 1,
                config: Default::default(),
            },
            body: TakenBody::Deferred(super::super::session::CopiedSnapshot {
                copy,
                sessions: Default::default(),
                index,
                room: saver.take_snapshot_room(),
            }),
            done: Box::new(move |saved| {
                if let Saved::Stored(snapshot, Ok(())) = saved {
                    let _ = tx.send(snapshot.data);
                }
            }),
        });
        rx.await.expect("saved")
    }

    /// Waits until the snapshot thread ran every job queued before (jobs
    /// run in order): saves an encoded snapshot, which takes no room.
    async fn barrier(saver: &SnapshotSaver) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        saver.save(SaveJob {
            meta: SnapshotMeta {
                index: 1,
                term: 1,
                config: Default::default(),
            },
            body: TakenBody::Encoded(vec![1]),
            done: Box::new(move |_| {
                let _ = tx.send(());
            }),
        });
        rx.await.expect("the snapshot thread ran");
    }

    #[tokio::test]
    async fn the_vector_of_the_entries_let_go_comes_back_emptied() {
        let store: SharedSnapshots = Arc::new(Mutex::new(Box::new(MemSnapshotStore::new(2))));
        let saver = SnapshotSaver::start(store).expect("thread starts");
        assert_eq!(saver.take_log_room().capacity(), 0, "nothing let go yet");
        let entries: Vec<Entry> = (1..=1000)
            .map(|index| Entry {
                term: 1,
                index,
                payload: Payload::Command(bytes::Bytes::from_static(b"x")),
            })
            .collect();
        let at = entries.as_ptr();
        saver.release(crate::core::Released {
            entries,
            snapshot: None,
        });
        barrier(&saver).await;
        let room = saver.take_log_room();
        assert!(room.is_empty());
        assert_eq!(room.as_ptr(), at, "not the vector let go");
        assert_eq!(saver.take_log_room().capacity(), 0, "handed out twice");
        saver.shutdown().await;
    }

    #[tokio::test]
    async fn a_snapshot_the_log_let_go_lends_its_buffer_to_the_next() {
        let store: SharedSnapshots = Arc::new(Mutex::new(Box::new(MemSnapshotStore::new(2))));
        let saver = SnapshotSaver::start(store).expect("thread starts");
        let first = save_copied(&saver, 5, 100_000).await;
        let at = first.as_ptr();
        // Still shared (e.g. a send to a follower under way): not reused.
        let shared = Arc::new(first);
        saver.release(crate::core::Released {
            entries: Vec::new(),
            snapshot: Some(Arc::clone(&shared)),
        });
        barrier(&saver).await;
        let second = save_copied(&saver, 6, 100_000).await;
        assert_ne!(
            second.as_ptr(),
            at,
            "a buffer still shared was written over"
        );
        assert_eq!(shared.len(), second.len());
        // Let go for good: the next snapshot is serialized into it.
        saver.release(crate::core::Released {
            entries: Vec::new(),
            snapshot: Some(shared),
        });
        barrier(&saver).await;
        let third = save_copied(&saver, 7, 100_000).await;
        assert_eq!(third.as_ptr(), at, "the buffer let go was not reused");
        // The same state and sessions as the second, at another index.
        assert!(
            third.len() == second.len() && third[..third.len() - 1] == second[..second.len() - 1]
        );
        saver.shutdown().await;
    }

    /// What a compaction let go is dropped on the snapshot thread, not by
    /// the caller (the node task, which a run of 100,000 entries would
    /// stall for milliseconds).
    #[tokio::test]
    async fn released_entries_are_dropped_on_the_snapshot_thread() {
        let store: SharedSnapshots = Arc::new(Mutex::new(Box::new(MemSnapshotStore::new(1))));
        let saver = SnapshotSaver::start(store).expect("thread starts");
        let dropped_on = Arc::new(Mutex::new(None));
        let released = crate::core::Released {
            entries: vec![Entry {
                term: 1,
                index: 1,
                payload: Payload::Command(bytes::Bytes::from_owner(DropWitness(Arc::clone(
                    &dropped_on,
                )))),
            }],
            snapshot: None,
        };
        saver.release(released);
        saver.shutdown().await;
        let name = dropped_on.lock().expect("not poisoned").clone();
        assert_eq!(name.as_deref(), Some("raftkit-snapshots"));
    }
}

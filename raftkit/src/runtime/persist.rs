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

/// The marker file in a data directory saying that its write-ahead log
/// (`wal/`) was created: written (atomically, its directory fsynced) by
/// [`open`] once the log's first segment is durable, before anything is
/// written to the log. A data directory without it (new, or written by a
/// release before it) proves nothing: its log may be created.
const LOG_MARKER: &str = "wal.created";

/// Opens the stores (on the file system `fs`) and reads back the durable
/// state.
///
/// Refuses, as corruption naming both directories, a log whose first index
/// lies past the latest snapshot's index + 1: the entries between them
/// exist nowhere, so starting would silently lose committed writes.
///
/// On disk, also refuses (as corruption naming `wal/`) a log that is
/// missing (no segment) when a snapshot exists or the directory's
/// `wal.created` marker says a log was created: starting afresh would
/// restart the node at term 0 with no vote (a second vote in a term it
/// voted in, Raft §5.2), without the entries it acknowledged, or found the
/// cluster again under `bootstrap`. A first start that stopped before its
/// log was created leaves no marker, so it still opens.
pub fn open(choice: &StorageChoice, fs: &SharedFs, wal: WalOptions) -> Result<Opened, Error> {
    let (log, snapshots): (BoxedLog, Box<dyn SnapshotStore + Send>) = match choice {
        StorageChoice::Disk(dir) => {
            let (log, snapshots) = open_disk(fs, dir, wal).map_err(storage_error)?;
            (Box::new(log), Box::new(snapshots))
        }
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

/// The stores of the data directory `dir`: the log, which must exist if a
/// snapshot file does or the marker ([`LOG_MARKER`]) says it was created,
/// then the snapshots (after the log's lock: the snapshot store's open
/// removes files), then the marker, if missing.
fn open_disk(
    fs: &SharedFs,
    dir: &Path,
    wal: WalOptions,
) -> Result<(Wal, FileSnapshotStore), StorageError> {
    let snap_dir = dir.join("snapshots");
    let marker = dir.join(LOG_MARKER);
    let marked = match fs.read(&marker) {
        Ok(_) => true,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(StorageError::io("read", &marker, e)),
    };
    let why = match (FileSnapshotStore::latest_name_in(&**fs, &snap_dir)?, marked) {
        (Some((index, term)), _) => Some(format!(
            "{} holds a snapshot at index {index} term {term}",
            snap_dir.display()
        )),
        (None, true) => Some(format!("{} records that it was created", marker.display())),
        (None, false) => None,
    };
    let log = match why {
        Some(why) => Wal::open_existing_in(fs.clone(), &dir.join("wal"), wal, &why)?,
        None => Wal::open_in(fs.clone(), dir.join("wal"), wal)?,
    };
    let snapshots = FileSnapshotStore::open_in(fs.clone(), snap_dir, 1)?;
    if !marked {
        // The log's first segment is durable (renamed into place, its
        // directory fsynced) before the marker is written: the marker
        // never names a log that a crash can take.
        write_atomic(
            &**fs,
            &marker,
            b"raftkit: the write-ahead log in wal/ was created; a data directory without it \
              is refused\n",
        )?;
    }
    Ok((log, snapshots))
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

    /// The failure of the whole shared store, if it can fail for every
    /// group at once (the journal of `crate::multi` after a failed sync):
    /// the watched value becomes `Some(cause)` then, and the node task
    /// stops as if a write of its own had failed (`runtime::node`,
    /// `NodeTask::fail`), whether or not it had a write in the failed
    /// batch. `None` (the default): only the writes' answers say so.
    fn fault(&self) -> Option<StoreFault> {
        None
    }
}

/// A watch of a shared store's failure (see [`SharedSink::fault`]):
/// `None` while healthy, then `Some(cause)` for good.
pub type StoreFault = tokio::sync::watch::Receiver<Option<String>>;

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

    /// The failure of the shared store this persister writes through, if
    /// it is one that can fail for every group at once
    /// ([`SharedSink::fault`]).
    pub(crate) fn shared_fault(&self) -> Option<StoreFault> {
        match &self.sink {
            Sink::Shared(sink) => sink.fault(),
            Sink::Thread(_) | Sink::Inline(_) => None,
        }
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
#[path = "persist_tests.rs"]
mod tests;

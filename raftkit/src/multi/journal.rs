//! The shared write-ahead log of a multi-group node: one log, one fsync per
//! batch, for every group the node hosts.
//!
//! # Format
//!
//! The journal is an ordinary [`Wal`] (segment files, checksummed frames,
//! torn-tail recovery, see [`crate::storage::wal`]) used as a sequence of
//! *batches*: journal entry `i` (term 1, a [`Payload::Command`]) holds the
//! postcard encoding of one `Batch`, the group-tagged records of every
//! write that one sync made durable. A record is a change to one group's
//! log: append (which replaces a conflicting suffix, Raft §5.3), truncate,
//! compact behind a snapshot, new hard state; or a `Reset` that states a
//! group's whole log from a boundary (the checkpoint, below); or the
//! creation or removal of a group. Each batch of a checkpoint opens with a
//! `Checkpoint` marker (the journal index of the checkpoint's first batch,
//! and whether this one is its last); journals written before markers
//! existed hold none, and replay their records as they come.
//!
//! # Invariants
//!
//! 1. One commit thread applies writes in arrival order (per group that is
//!    the node task's Ready order; a group's writes behind one carrying a
//!    received snapshot wait for its save, see below, and keep their
//!    order) and makes each batch durable with **one**
//!    `Wal::sync`, whatever the number of groups in it: more groups make
//!    bigger batches, not more fsyncs. Before it syncs, it yields the CPU a
//!    few times while its queue is empty (`GATHER_YIELDS`), so that the
//!    groups in the middle of handing their writes join the batch. A write
//!    is completed `Ok` only after the sync covering it returned `Ok`: a
//!    follower answers, and a leader counts its own entries toward a
//!    quorum, only once they are durable (Raft Figure 2, "updated on stable
//!    storage before responding to RPCs"; thesis §10.2.1, the leader's
//!    write in parallel with its followers').
//! 2. Replaying the journal's batches in order rebuilds, for every group,
//!    exactly the log and hard state it had at the end of the last durable
//!    sync (the `Wal` recovers whole frames or nothing, and one sync is one
//!    frame).
//! 3. A checkpoint takes effect on replay whole or not at all. It states
//!    the whole state (a `Tombstone` of every removed group, then a
//!    `Reset` and `Append` chunks of every group) in as many batches as
//!    its entries need (about `CHECKPOINT_CHUNK_BYTES` each: one sync is
//!    one frame, and a frame is bounded), each opened by a marker, and
//!    only after its last batch is durable compacts the journal before it.
//!    Replay builds the checkpoint's state apart from the state replayed
//!    so far, and replaces that state with it only at the checkpoint's
//!    last batch; a checkpoint without its last batch (its writer stopped
//!    after any of its syncs: a crash, a full disk, a failed fsync) is
//!    ignored, whether the journal ends there or a later run wrote on
//!    after it. So a crash anywhere in a checkpoint leaves a journal that
//!    replays to the state before it, and writes after it replay on that
//!    state. A failed checkpoint changes nothing in memory, and the
//!    journal refuses every later write (invariant 4). Why markers, not
//!    records applied as they come: a checkpoint's first batches alone
//!    were a group's `Reset` with only the first chunk of its log, or (when
//!    checkpoints restated tombstones as `Remove` and `Tombstone`) the
//!    `Remove` of a group hosted again since, both a voter forgetting what
//!    it acknowledged; and no choice of records makes every batch safe
//!    alone, since a log longer than one batch takes several.
//! 4. After a failed sync the journal refuses every later write
//!    ([`StorageError::Failed`]); nothing is retried (DESIGN §4). Every
//!    group's sink is told at once ([`GroupSink`]'s
//!    [`SharedSink::fault`]), with or without a write in the failed
//!    batch: every group hosted here lost its storage, and each runs its
//!    node's failure path (`runtime::node`, `NodeTask::fail`: a leader
//!    hands leadership over, no group acknowledges anything more). Before
//!    (review s61, 1), only the groups with a write in the failed batch
//!    learnt it, from that write's answer; a group this node led with
//!    nothing to write (heartbeats write nothing) kept leading until its
//!    next client write failed. The same holds after a failed checkpoint,
//!    a panicking save and a panic of the commit thread. After a
//!    failed write of one group (a received snapshot whose save failed, a
//!    refused record) the journal refuses every later write of that
//!    group's sink (the running replica, which built them on the failed
//!    one: see [`crate::runtime::persist`]), and nothing of them reaches
//!    the journal; other groups write on.
//! 5. Group state is held in memory ([`MemLogStore`] per group): the
//!    journal holds what the groups' logs hold, which their snapshots keep
//!    short. Memory is the sum of the groups' live logs (see the module doc
//!    of [`crate::multi`] for the limits this implies); replay holds a
//!    checkpoint's state beside the state before it (nothing, once the
//!    journal is compacted behind the checkpoint; up to twice the live logs
//!    while it reads a checkpoint that a crash left unfinished).
//!
//! A group's snapshots are not in the journal: each group has its own
//! [`crate::storage::FileSnapshotStore`] directory. A snapshot received
//! from a leader (up to 1 GiB) is saved there by the journal's snapshot
//! worker (`raftkit-jsnaps`), outside the journal's lock and
//! beside the commit thread, which meanwhile goes on making other groups'
//! writes durable; the group's own later writes wait behind it, in order.
//! Only once the save returned `Ok` (the file written, fsynced, renamed
//! into place, the directory fsynced: atomic, see
//! `storage/snapshot.rs`) does the commit thread record the
//! compaction behind it and the rest of that write. So a crash leaves
//! either the old snapshot in force (a temporary file, deleted when the
//! store opens) or the new one, with the log not yet compacted behind it
//! if the crash came before the record, which opening the group finishes
//! (`runtime::persist::open_stores`): never a journal compacted behind a
//! snapshot that is not on disk. A failed save fails the write and every
//! later write of the group's sink (invariant 4), as the single-group
//! persister does. A save that panics fails them too, and the journal
//! (every later write refused); a poisoned journal lock fails every
//! write, the held ones included: no write is ever left pending. A panic
//! in the commit thread itself is caught too: the journal fails and every
//! write not answered yet is, [`StorageError::Failed`] ("may have been
//! applied") for a write that may be durable (its batch's fsync begun, or
//! its received snapshot saved), [`StorageError::Closed`] ("not applied")
//! for every other. A save that completes after its group's removal is not
//! recorded, and its file is deleted (`journal_commit.rs`). A write of a
//! group the journal removed and does not hold again (a retired replica
//! whose node task still wrote) is refused, "not applied"
//! ([`StorageError::Closed`]), its snapshot not saved: a removed group
//! comes back only through [`Journal::create_group`], never through a
//! late record (review s56, finding 7).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tracing::{debug, error, info};

use super::GroupId;
use crate::core::types::{Entry, HardState, Index, Payload, Term};
use crate::runtime::persist::{Done, SharedSink, SharedSnapshots, StoreFault, Write};
use crate::storage::vfs::SharedFs;
use crate::storage::{LogStore, MemLogStore, Snapshot, StorageError, Wal, WalOptions};

/// The most entry bytes one `Append` record of a checkpoint carries (64
/// KiB in tests, so that they split logs into several batches cheaply).
const CHECKPOINT_CHUNK_BYTES: usize = if cfg!(test) { 64 << 10 } else { 16 << 20 };
/// The most bytes of writes one batch takes before it syncs.
const MAX_BATCH_BYTES: usize = 64 << 20;
/// How many times the commit thread yields the CPU, while its queue is
/// empty, before it syncs a batch (invariant 1): the group tasks running
/// meanwhile queue their writes, and the same fsync covers them. With 64
/// busy groups on three nodes `benches/multi.rs` measured the fsyncs per
/// put halved (0.11 to 0.06); a lone write waits a few microseconds more.
const GATHER_YIELDS: u32 = 8;

/// The fence of a removal recorded before removals carried one (a
/// `Remove` record without its `Tombstone`): unknown, so nothing passes
/// it, and the node never hosts the group again (the rule of those
/// journals).
pub const LEGACY_FENCE: (Index, Term) = (Index::MAX, Term::MAX);

/// One change to one group's log.
#[derive(Clone, Debug, Serialize, Deserialize)]
enum Rec {
    /// The group exists (possibly with an empty log).
    Create,
    /// The group is gone from this node.
    Remove,
    /// [`LogStore::append`].
    Append(Vec<Entry>),
    /// [`LogStore::truncate_suffix`].
    Truncate(Index),
    /// [`LogStore::compact_prefix`].
    Compact(Index, Term),
    /// [`LogStore::save_hard_state`].
    HardState(HardState),
    /// The group's whole state: an empty log after `boundary` (index,
    /// term) and this hard state; `Append` records follow with its entries
    /// (in the same batch, and for a long log in the checkpoint's next
    /// ones).
    Reset {
        /// The compaction boundary.
        boundary: (Index, Term),
        /// The hard state.
        hard_state: HardState,
    },
    /// The group was removed from this node, and its replica's removal is
    /// known committed at or below this index, in this term: the fence of
    /// any later replica of it here (see [`Journal::fence`]). Written after
    /// `Remove` by a removal (older journals hold `Remove` alone:
    /// [`LEGACY_FENCE`]), and alone by a checkpoint, which restates
    /// tombstones without removing a group hosted again since.
    Tombstone(Index, Term),
    /// The first record of each batch of a checkpoint (its group is
    /// [`CHECKPOINT_MARKER_GROUP`], unused): the checkpoint began at
    /// journal batch `first`, and this batch is its `last` or not. Replay
    /// applies a checkpoint only once it has read its last batch
    /// (invariant 3). Variants are only ever added here, at the end: the
    /// older ones keep their encoding, and older journals (whose
    /// checkpoints carry no markers) replay as they did.
    Checkpoint {
        /// The journal index of the checkpoint's first batch.
        first: Index,
        /// Whether this batch ends the checkpoint.
        last: bool,
    },
}

/// The group of a [`Rec::Checkpoint`] marker (not a group's record).
const CHECKPOINT_MARKER_GROUP: GroupId = 0;

/// What one sync makes durable.
#[derive(Debug, Serialize, Deserialize)]
struct Batch {
    recs: Vec<(GroupId, Rec)>,
}

/// Options of a [`Journal`].
#[derive(Clone, Debug)]
pub struct JournalOptions {
    /// The underlying write-ahead log's options.
    pub wal: WalOptions,
    /// Once the journal has grown this many bytes since its last
    /// checkpoint, and is more than twice what the groups' logs hold, it
    /// writes a checkpoint and drops everything before it. Default 64 MiB.
    pub checkpoint_bytes: u64,
}

impl Default for JournalOptions {
    fn default() -> Self {
        JournalOptions {
            wal: WalOptions::default(),
            checkpoint_bytes: 64 << 20,
        }
    }
}

/// Counters of a [`Journal`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct JournalStats {
    /// Syncs performed (each one fsync of the journal).
    pub syncs: u64,
    /// Writes (of all groups) completed.
    pub writes: u64,
    /// The most distinct groups one sync covered.
    pub max_groups_per_sync: u64,
    /// Checkpoints written.
    pub checkpoints: u64,
}

#[derive(Default)]
struct Counters {
    syncs: AtomicU64,
    writes: AtomicU64,
    max_groups: AtomicU64,
    checkpoints: AtomicU64,
}

struct State {
    dir: PathBuf,
    wal: Wal,
    groups: BTreeMap<GroupId, MemLogStore>,
    /// Groups this node removed (tombstones) with the fence of their
    /// latest removal: kept across restarts and checkpoints, and across a
    /// later replica of the group (a move back), whose fence it is.
    removed: BTreeMap<GroupId, (Index, Term)>,
    pending: Vec<(GroupId, Rec)>,
    /// Journal bytes written since the last checkpoint.
    since_checkpoint: u64,
    /// The next threshold of `since_checkpoint` that triggers a check.
    next_check: u64,
    checkpoint_bytes: u64,
    failed: Option<String>,
    /// Tells every group's sink the journal failed (invariant 4), with
    /// `failed`'s cause.
    fault: Arc<watch::Sender<Option<String>>>,
}

/// Why a group's sink refuses its later writes (invariant 4).
enum SinkRefusal {
    /// A write failed: later ones are answered [`StorageError::Failed`]
    /// (may have been applied, as the first).
    Failed(String),
    /// The group was removed from the journal: later writes are answered
    /// [`StorageError::Closed`] (not applied), as the first was.
    Removed,
}

struct Job {
    group: GroupId,
    write: Write,
    snapshots: SharedSnapshots,
    done: Done,
    token: u64,
    /// The first failed write of the job's sink (invariant 4).
    failed: Arc<Mutex<Option<SinkRefusal>>>,
    /// For a write carrying a received snapshot: where the snapshot worker
    /// hands the job back once the snapshot is saved (a sender of the
    /// commit thread's queue, which therefore stays open until it is).
    reply: Option<mpsc::UnboundedSender<Msg>>,
}

impl Job {
    /// The error this job is refused with, if its sink failed before
    /// (invariant 4).
    fn refused(&self) -> Option<StorageError> {
        self.failed.lock().map_or_else(
            |_| Some(StorageError::Closed),
            |f| match &*f {
                None => None,
                Some(SinkRefusal::Failed(cause)) => Some(StorageError::Failed {
                    cause: cause.clone(),
                }),
                // Nothing failed: the group is gone, nothing is written.
                Some(SinkRefusal::Removed) => Some(StorageError::Closed),
            },
        )
    }

    /// Records `e` as the first failure of the job's sink (invariant 4).
    fn record_failure(&self, e: &StorageError) {
        if let Ok(mut f) = self.failed.lock()
            && f.is_none()
        {
            error!(group = self.group, error = %e, "a group's journal write failed; refusing its further writes");
            *f = Some(SinkRefusal::Failed(e.to_string()));
        }
    }

    /// Refuses the job's sink's later writes (invariant 4) because its
    /// group was removed from the journal meanwhile: nothing failed, no
    /// error is logged.
    fn record_removed(&self) {
        if let Ok(mut f) = self.failed.lock()
            && f.is_none()
        {
            debug!(
                group = self.group,
                "the group was removed from this node; refusing its sink's further writes, not applied"
            );
            *f = Some(SinkRefusal::Removed);
        }
    }
}

/// What the commit thread's queue carries.
enum Msg {
    /// A group's write, from its sink.
    Write(Job),
    /// A write whose received snapshot the snapshot worker saved (or
    /// failed to), at `(index, term)`: the rest of it is recorded now.
    /// `panicked`: the save panicked (`result` says so), and the journal
    /// fails.
    Saved {
        job: Job,
        at: (Index, Term),
        result: Result<(), StorageError>,
        panicked: bool,
    },
}

/// A received snapshot for the snapshot worker to save: `job` is the rest
/// of its write, handed back through `reply`.
struct Save {
    job: Job,
    snapshot: Snapshot,
    reply: mpsc::UnboundedSender<Msg>,
}

struct Shared {
    state: Mutex<State>,
    counters: Counters,
    /// [`State::fault`], for the sinks to subscribe to without the lock.
    fault: Arc<watch::Sender<Option<String>>>,
}

impl Shared {
    fn state(&self) -> Result<MutexGuard<'_, State>, StorageError> {
        self.state.lock().map_err(|_| StorageError::Closed)
    }
}

/// The shared write-ahead log of a multi-group node. Cheap to clone.
#[derive(Clone)]
pub struct Journal {
    shared: Arc<Shared>,
    /// The commit thread's queue (taken by [`Journal::close`]).
    jobs: Arc<Mutex<Option<mpsc::UnboundedSender<Msg>>>>,
    /// The commit thread, then the snapshot worker (which stops once the
    /// commit thread has).
    workers: Arc<Mutex<Vec<crate::runtime::threads::Worker>>>,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

fn corrupt(dir: &Path, index: Index, reason: impl Into<String>) -> StorageError {
    StorageError::corrupt(dir, 0, format!("journal batch {index}: {}", reason.into()))
}

impl Journal {
    /// Opens (or creates) the journal in `dir` on `fs`, replays it and
    /// starts its commit thread. A batch that does not decode or does not
    /// apply is corruption (a clear error, never skipped).
    pub fn open(fs: SharedFs, dir: &Path, opts: JournalOptions) -> Result<Journal, StorageError> {
        Journal::open_on(fs, dir, opts, &crate::runtime::threads::Threads::default())
    }

    /// [`Journal::open`] with the commit loop started by `threads` (the
    /// whole-runtime simulation runs it as a task of its executor).
    pub(crate) fn open_on(
        fs: SharedFs,
        dir: &Path,
        opts: JournalOptions,
        threads: &crate::runtime::threads::Threads,
    ) -> Result<Journal, StorageError> {
        Journal::open_checked(fs, dir, opts, threads, None)
    }

    /// [`Journal::open_on`]; with `must_exist`, a journal directory holding
    /// no segment is refused (`Wal::open_existing_in`, saying why it must
    /// exist) instead of created: see `multi::lost_journal`.
    pub(crate) fn open_checked(
        fs: SharedFs,
        dir: &Path,
        opts: JournalOptions,
        threads: &crate::runtime::threads::Threads,
        must_exist: Option<&str>,
    ) -> Result<Journal, StorageError> {
        let wal = match must_exist {
            Some(why) => Wal::open_existing_in(fs, dir, opts.wal.clone(), why)?,
            None => Wal::open_in(fs, dir, opts.wal.clone())?,
        };
        let mut replay = Replay::default();
        let (first, last) = (wal.first_index(), wal.last_index());
        let mut replayed_bytes = 0u64;
        let mut lo = first;
        while lo <= last {
            let hi = (lo + 64).min(last + 1);
            for entry in wal.entries(lo, hi)? {
                let Payload::Command(bytes) = &entry.payload else {
                    return Err(corrupt(dir, entry.index, "not a batch"));
                };
                replayed_bytes += bytes.len() as u64;
                let batch: Batch = postcard::from_bytes(bytes)
                    .map_err(|e| corrupt(dir, entry.index, format!("does not decode: {e}")))?;
                replay.batch(dir, entry.index, batch)?;
            }
            lo = hi;
        }
        let Replay {
            groups,
            removed,
            checkpoint,
        } = replay;
        if let Some(c) = checkpoint {
            info!(dir = %dir.display(), first = c.first, "an unfinished checkpoint at the end of the journal is ignored");
        }
        info!(dir = %dir.display(), groups = groups.len(), batches = last + 1 - first, "journal replayed");
        let fault = Arc::new(watch::Sender::new(None));
        let state = State {
            dir: dir.to_path_buf(),
            wal,
            groups,
            removed,
            pending: Vec::new(),
            since_checkpoint: replayed_bytes,
            next_check: opts.checkpoint_bytes.max(replayed_bytes),
            checkpoint_bytes: opts.checkpoint_bytes.max(1),
            failed: None,
            fault: fault.clone(),
        };
        let shared = Arc::new(Shared {
            state: Mutex::new(state),
            counters: Counters::default(),
            fault,
        });
        let (jobs, rx) = mpsc::unbounded_channel();
        let (saves, saves_rx) = mpsc::unbounded_channel();
        let saver = threads
            .spawn("raftkit-jsnaps", commit::save_snapshots(saves_rx))
            .map_err(|e| StorageError::Invalid(e.to_string()))?;
        let s = shared.clone();
        let worker = threads
            .spawn("raftkit-journal", commit::run(s, rx, saves))
            .map_err(|e| StorageError::Invalid(e.to_string()))?;
        Ok(Journal {
            shared,
            jobs: Arc::new(Mutex::new(Some(jobs))),
            workers: Arc::new(Mutex::new(vec![worker, saver])),
        })
    }

    /// The groups the journal holds, in order.
    pub fn groups(&self) -> Vec<GroupId> {
        self.shared
            .state()
            .map(|s| s.groups.keys().copied().collect())
            .unwrap_or_default()
    }

    /// Records that `group` exists on this node (durable on return), with
    /// an empty log: for a new replica of it.
    ///
    /// Refused ([`StorageError::Invalid`]) while the journal holds the
    /// group: the log there is an earlier replica's (one still running, or
    /// one whose removal is not durable yet, see
    /// [`hosting`](super::hosting)), with its terms and votes, and a new
    /// replica never takes it over. Refused ([`StorageError::Failed`]) once
    /// the journal has failed, like every write.
    pub fn create_group(&self, group: GroupId) -> Result<(), StorageError> {
        let mut st = self.shared.state()?;
        if let Some(cause) = &st.failed {
            return Err(StorageError::Failed {
                cause: cause.clone(),
            });
        }
        if st.groups.contains_key(&group) {
            return Err(StorageError::Invalid(format!(
                "the journal already holds a log of group {group}: a new replica never reuses one"
            )));
        }
        st.record(group, Rec::Create)?;
        st.sync(&self.shared.counters)
    }

    /// Whether this node removed `group` at some point (a durable
    /// tombstone, kept across restarts and checkpoints, and while a later
    /// replica of the group is hosted).
    pub fn was_removed(&self, group: GroupId) -> bool {
        self.shared
            .state()
            .map(|st| st.removed.contains_key(&group))
            .unwrap_or(true)
    }

    /// Records `group`'s removal as journals written before removals
    /// carried a fence did (a `Remove` record alone, read back as
    /// [`LEGACY_FENCE`]): for tests of the rule of those journals.
    #[cfg(test)]
    pub(crate) fn remove_without_fence(&self, group: GroupId) -> Result<(), StorageError> {
        let mut st = self.shared.state()?;
        st.record(group, Rec::Remove)?;
        st.sync(&self.shared.counters)
    }

    /// The fence of `group`'s latest removal from this node, `(index,
    /// term)` (see [`remove_group`](Self::remove_group)), if it was ever
    /// removed. A journal that cannot be read says `(u64::MAX, u64::MAX)`:
    /// a fence nothing passes.
    pub fn fence(&self, group: GroupId) -> Option<(Index, Term)> {
        match self.shared.state() {
            Ok(st) => st.removed.get(&group).copied(),
            Err(_) => Some((Index::MAX, Term::MAX)),
        }
    }

    /// Removes `group` and its log from this node (durable on return),
    /// leaving a tombstone with `fence` (raised to an earlier removal's
    /// where that is higher): the index at or below which a committed
    /// configuration removed this node's replica, and the latest term the
    /// replica knew (see
    /// [`Config::membership_fence`](crate::core::Config::membership_fence)).
    pub fn remove_group(&self, group: GroupId, fence: (Index, Term)) -> Result<(), StorageError> {
        let mut st = self.shared.state()?;
        st.record(group, Rec::Remove)?;
        st.record(group, Rec::Tombstone(fence.0, fence.1))?;
        st.sync(&self.shared.counters)
    }

    /// A [`LogStore`] view of `group`'s log (created if absent on its first
    /// write): reads see the group's log; writes are journal records; its
    /// `sync` syncs the whole journal. For opening and bootstrapping a
    /// group; a running group writes through [`Journal::sink`].
    pub fn log(&self, group: GroupId) -> GroupLog {
        GroupLog {
            shared: self.shared.clone(),
            group,
        }
    }

    /// The write path of a running group: its writes join the commit
    /// thread's batches.
    pub fn sink(&self, group: GroupId, snapshots: SharedSnapshots) -> GroupSink {
        GroupSink {
            jobs: self.jobs.lock().ok().and_then(|j| j.clone()),
            group,
            snapshots,
            failed: Arc::default(),
            fault: self.shared.fault.subscribe(),
        }
    }

    /// Stops the commit thread once every group's sink is gone (stop the
    /// groups first) and every received snapshot being saved is recorded,
    /// then the snapshot worker, releasing the directory; waits for both.
    pub async fn close(&self) {
        if let Ok(mut jobs) = self.jobs.lock() {
            jobs.take();
        }
        let workers = self
            .workers
            .lock()
            .map(|mut w| std::mem::take(&mut *w))
            .unwrap_or_default();
        for worker in workers {
            worker.join().await;
        }
    }

    /// Writes a checkpoint now, whatever the journal's size.
    #[cfg(test)]
    pub(crate) fn checkpoint_now(&self) -> Result<(), StorageError> {
        let mut st = self.shared.state()?;
        st.checkpoint(&self.shared.counters, true)
    }

    /// Counters so far.
    pub fn stats(&self) -> JournalStats {
        let c = &self.shared.counters;
        JournalStats {
            syncs: c.syncs.load(Ordering::Relaxed),
            writes: c.writes.load(Ordering::Relaxed),
            max_groups_per_sync: c.max_groups.load(Ordering::Relaxed),
            checkpoints: c.checkpoints.load(Ordering::Relaxed),
        }
    }
}

/// Applies one record to the in-memory groups (replay and live writes).
fn apply(
    groups: &mut BTreeMap<GroupId, MemLogStore>,
    group: GroupId,
    rec: &Rec,
) -> Result<(), StorageError> {
    match *rec {
        Rec::Create => {
            groups.entry(group).or_default();
            Ok(())
        }
        Rec::Remove => {
            groups.remove(&group);
            Ok(())
        }
        Rec::Tombstone(..) => Ok(()),
        Rec::Checkpoint { .. } => Err(StorageError::Invalid(
            "a checkpoint marker that does not open its batch".into(),
        )),
        Rec::Reset {
            boundary,
            hard_state,
        } => {
            let mut log = MemLogStore::new();
            log.compact_prefix(boundary.0, boundary.1)?;
            log.save_hard_state(hard_state)?;
            groups.insert(group, log);
            Ok(())
        }
        Rec::Append(ref entries) => groups.entry(group).or_default().append(entries),
        Rec::Truncate(from) => groups.entry(group).or_default().truncate_suffix(from),
        Rec::Compact(upto, term) => groups.entry(group).or_default().compact_prefix(upto, term),
        Rec::HardState(hs) => groups.entry(group).or_default().save_hard_state(hs),
    }
}

/// What replay has rebuilt so far (invariants 2 and 3).
#[derive(Default)]
struct Replay {
    groups: BTreeMap<GroupId, MemLogStore>,
    removed: BTreeMap<GroupId, (Index, Term)>,
    /// The checkpoint being read: applied once its last batch is.
    checkpoint: Option<Staged>,
}

/// The state a checkpoint states, as far as its batches read so far go.
#[derive(Default)]
struct Staged {
    /// The journal index of its first batch.
    first: Index,
    /// The journal index its next batch must have.
    next: Index,
    groups: BTreeMap<GroupId, MemLogStore>,
    removed: BTreeMap<GroupId, (Index, Term)>,
}

impl Replay {
    /// Replays journal batch `index`. A checkpoint's batches build a state
    /// of their own, which replaces the state replayed so far at its last
    /// batch; an unfinished checkpoint (another batch follows it: its
    /// writer stopped part-way, and a later run wrote on) is dropped.
    fn batch(&mut self, dir: &Path, index: Index, batch: Batch) -> Result<(), StorageError> {
        let mut recs = batch.recs.into_iter().peekable();
        let marker = match recs.peek() {
            Some((_, Rec::Checkpoint { first, last })) => Some((*first, *last)),
            _ => None,
        };
        let Some((first, last)) = marker else {
            if let Some(c) = self.checkpoint.take() {
                info!(dir = %dir.display(), first = c.first, "an unfinished checkpoint is ignored");
            }
            return apply_all(dir, index, &mut self.groups, &mut self.removed, recs);
        };
        recs.next();
        if first == index {
            if let Some(c) = self.checkpoint.take() {
                info!(dir = %dir.display(), first = c.first, "an unfinished checkpoint is ignored");
            }
            self.checkpoint = Some(Staged {
                first,
                next: index,
                ..Staged::default()
            });
        }
        let Some(staged) = self
            .checkpoint
            .as_mut()
            .filter(|c| c.first == first && c.next == index)
        else {
            return Err(corrupt(
                dir,
                index,
                format!(
                    "a batch of the checkpoint begun at batch {first} without the ones before it"
                ),
            ));
        };
        apply_all(dir, index, &mut staged.groups, &mut staged.removed, recs)?;
        staged.next = index + 1;
        if last && let Some(done) = self.checkpoint.take() {
            self.groups = done.groups;
            self.removed = done.removed;
        }
        Ok(())
    }
}

/// Applies a batch's records (replay), and keeps the tombstones.
fn apply_all(
    dir: &Path,
    index: Index,
    groups: &mut BTreeMap<GroupId, MemLogStore>,
    removed: &mut BTreeMap<GroupId, (Index, Term)>,
    recs: impl Iterator<Item = (GroupId, Rec)>,
) -> Result<(), StorageError> {
    for (group, rec) in recs {
        note_removal(removed, group, &rec);
        apply(groups, group, &rec)
            .map_err(|e| corrupt(dir, index, format!("group {group}: {e}")))?;
    }
    Ok(())
}

/// Keeps the tombstones: a first `Remove` of a group marks it removed
/// with [`LEGACY_FENCE`] until its `Tombstone` record (written with it in
/// the same batch) gives the fence; a later `Tombstone` raises it. A
/// fence never goes down: each of its parts is the largest recorded (a
/// later replica retired as an orphan, say, must not reopen what an
/// earlier replica's removal closed).
fn note_removal(removed: &mut BTreeMap<GroupId, (Index, Term)>, group: GroupId, rec: &Rec) {
    match rec {
        Rec::Remove => {
            removed.entry(group).or_insert(LEGACY_FENCE);
        }
        Rec::Tombstone(index, term) => {
            let fence = removed.entry(group).or_insert(LEGACY_FENCE);
            *fence = if *fence == LEGACY_FENCE {
                (*index, *term)
            } else {
                (fence.0.max(*index), fence.1.max(*term))
            };
        }
        _ => {}
    }
}

impl State {
    /// The journal failed for `cause` (the first cause stays): it refuses
    /// every later write, and every group's sink is told (invariant 4).
    fn fail(&mut self, cause: String) {
        if self.failed.is_none() {
            self.failed = Some(cause.clone());
            self.fault.send_replace(Some(cause));
        }
    }

    /// Whether this node removed `group` and has not created it again
    /// since: a write of it comes from a retired replica, and is refused.
    fn removed_not_held(&self, group: GroupId) -> bool {
        !self.groups.contains_key(&group) && self.removed.contains_key(&group)
    }

    /// Applies `rec` to the group now and queues it for the next sync. A
    /// change to the log of a group removed and not created again is
    /// refused ([`StorageError::Closed`], nothing recorded): it would
    /// bring the group back, live and on replay.
    fn record(&mut self, group: GroupId, rec: Rec) -> Result<(), StorageError> {
        if let Some(cause) = &self.failed {
            return Err(StorageError::Failed {
                cause: cause.clone(),
            });
        }
        if matches!(
            rec,
            Rec::Append(_) | Rec::Truncate(_) | Rec::Compact(..) | Rec::HardState(_)
        ) && self.removed_not_held(group)
        {
            return Err(StorageError::Closed);
        }
        note_removal(&mut self.removed, group, &rec);
        // The group's log copies the entries it keeps: no clone of the
        // record itself.
        apply(&mut self.groups, group, &rec)?;
        self.pending.push((group, rec));
        Ok(())
    }

    /// Writes the pending records as one batch and syncs the journal once.
    fn sync(&mut self, counters: &Counters) -> Result<(), StorageError> {
        if let Some(cause) = &self.failed {
            return Err(StorageError::Failed {
                cause: cause.clone(),
            });
        }
        if self.pending.is_empty() {
            return Ok(());
        }
        let recs = std::mem::take(&mut self.pending);
        let groups = recs
            .iter()
            .map(|(g, _)| *g)
            .collect::<std::collections::BTreeSet<_>>()
            .len() as u64;
        let result = self.write_batch(Batch { recs });
        counters.syncs.fetch_add(1, Ordering::Relaxed);
        counters.max_groups.fetch_max(groups, Ordering::Relaxed);
        if let Err(e) = &result {
            error!(dir = %self.dir.display(), error = %e, "journal sync failed; refusing further writes");
            self.fail(e.to_string());
        }
        result
    }

    fn write_batch(&mut self, batch: Batch) -> Result<(), StorageError> {
        let bytes = postcard::to_allocvec(&batch)
            .map_err(|e| StorageError::Invalid(format!("a journal batch does not encode: {e}")))?;
        self.since_checkpoint += bytes.len() as u64;
        let entry = Entry {
            term: 1,
            index: self.wal.last_index() + 1,
            payload: Payload::Command(bytes.into()),
        };
        self.wal.append(std::slice::from_ref(&entry))?;
        self.wal.sync()
    }

    /// Writes a checkpoint when the journal has grown well past what the
    /// groups hold, then drops the journal before it (invariant 3).
    fn maybe_checkpoint(&mut self, counters: &Counters) -> Result<(), StorageError> {
        if self.since_checkpoint < self.next_check || self.failed.is_some() {
            return Ok(());
        }
        self.checkpoint(counters, false)
    }

    /// Writes a checkpoint (unless the journal is mostly live data and
    /// `force` is false), then drops the journal before it.
    fn checkpoint(&mut self, counters: &Counters, force: bool) -> Result<(), StorageError> {
        if let Some(cause) = &self.failed {
            return Err(StorageError::Failed {
                cause: cause.clone(),
            });
        }
        // The checkpoint's records, cut into parts of about
        // `CHECKPOINT_CHUNK_BYTES` of entries (one batch, one sync each).
        // Tombstones first: they survive the checkpoint (invariant 3).
        let mut live = 0u64;
        let mut parts: Vec<Vec<(GroupId, Rec)>> = Vec::new();
        let mut recs: Vec<(GroupId, Rec)> = self
            .removed
            .iter()
            .map(|(g, (index, term))| (*g, Rec::Tombstone(*index, *term)))
            .collect();
        let mut part_bytes = 0usize;
        for (group, log) in &self.groups {
            let boundary_index = log.first_index() - 1;
            let boundary = (boundary_index, log.term(boundary_index)?.unwrap_or(0));
            recs.push((
                *group,
                Rec::Reset {
                    boundary,
                    hard_state: log.hard_state(),
                },
            ));
            let entries = if log.last_index() >= log.first_index() {
                log.entries(log.first_index(), log.last_index() + 1)?
            } else {
                Vec::new()
            };
            let mut chunk = Vec::new();
            for e in entries {
                part_bytes += e.approx_size();
                live += e.approx_size() as u64;
                chunk.push(e);
                if part_bytes >= CHECKPOINT_CHUNK_BYTES {
                    recs.push((*group, Rec::Append(std::mem::take(&mut chunk))));
                    parts.push(std::mem::take(&mut recs));
                    part_bytes = 0;
                }
            }
            if !chunk.is_empty() {
                recs.push((*group, Rec::Append(chunk)));
            }
        }
        // The last part (possibly only its marker) ends the checkpoint.
        parts.push(recs);
        if !force && live.saturating_mul(2) > self.since_checkpoint {
            // Mostly live data: not worth rewriting yet.
            self.next_check = self.since_checkpoint + self.checkpoint_bytes;
            return Ok(());
        }
        let first = self.wal.last_index() + 1;
        let before = self.since_checkpoint;
        self.since_checkpoint = 0;
        let count = parts.len();
        let written = parts
            .into_iter()
            .enumerate()
            .try_for_each(|(i, part)| {
                let marker = Rec::Checkpoint {
                    first,
                    last: i + 1 == count,
                };
                let recs = std::iter::once((CHECKPOINT_MARKER_GROUP, marker))
                    .chain(part)
                    .collect();
                self.write_batch(Batch { recs })
            })
            .and_then(|()| self.wal.compact_prefix(first - 1, 1))
            .and_then(|()| self.wal.sync());
        if let Err(e) = &written {
            // Nothing in memory changed: the groups hold what the journal
            // replays to (an unfinished checkpoint is ignored, a finished
            // one states the same), and every later write is refused
            // (invariant 4).
            error!(dir = %self.dir.display(), error = %e, "journal checkpoint failed; refusing further writes");
            self.fail(e.to_string());
            return written;
        }
        counters.checkpoints.fetch_add(1, Ordering::Relaxed);
        self.next_check = self.checkpoint_bytes.max(self.since_checkpoint * 2);
        info!(dir = %self.dir.display(), dropped_bytes = before, live_bytes = live, "journal checkpoint");
        Ok(())
    }

    /// Records one job's write (the compaction behind its received
    /// snapshot, `saved` at `(index, term)` by the snapshot worker, first;
    /// then compaction, entries, hard state), like the single-group
    /// persister. The write's snapshot itself was taken out and saved
    /// before (see the module documentation).
    fn apply_write(
        &mut self,
        group: GroupId,
        write: Write,
        saved: Option<(Index, Term)>,
    ) -> Result<(), StorageError> {
        if let Some((index, term)) = saved {
            self.record(group, Rec::Compact(index, term))?;
        }
        if let Some((index, term)) = write.compact {
            self.record(group, Rec::Compact(index, term))?;
        }
        if !write.entries.is_empty() {
            self.record(group, Rec::Append(write.entries))?;
        }
        if let Some(hs) = write.hard_state {
            self.record(group, Rec::HardState(hs))?;
        }
        Ok(())
    }
}

/// A [`LogStore`] view of one group in a [`Journal`] (see
/// [`Journal::log`]).
pub struct GroupLog {
    shared: Arc<Shared>,
    group: GroupId,
}

impl GroupLog {
    fn read<T>(&self, f: impl FnOnce(&MemLogStore) -> T, empty: T) -> T {
        match self.shared.state() {
            Ok(st) => st.groups.get(&self.group).map(f).unwrap_or(empty),
            Err(_) => empty,
        }
    }
}

impl LogStore for GroupLog {
    fn append(&mut self, entries: &[Entry]) -> Result<(), StorageError> {
        self.shared
            .state()?
            .record(self.group, Rec::Append(entries.to_vec()))
    }
    fn truncate_suffix(&mut self, from: Index) -> Result<(), StorageError> {
        self.shared.state()?.record(self.group, Rec::Truncate(from))
    }
    fn compact_prefix(&mut self, upto: Index, term: Term) -> Result<(), StorageError> {
        self.shared
            .state()?
            .record(self.group, Rec::Compact(upto, term))
    }
    fn entries(&self, lo: Index, hi: Index) -> Result<Vec<Entry>, StorageError> {
        let st = self.shared.state()?;
        match st.groups.get(&self.group) {
            Some(log) => log.entries(lo, hi),
            None => MemLogStore::new().entries(lo, hi),
        }
    }
    fn term(&self, index: Index) -> Result<Option<Term>, StorageError> {
        let st = self.shared.state()?;
        match st.groups.get(&self.group) {
            Some(log) => log.term(index),
            None => MemLogStore::new().term(index),
        }
    }
    fn first_index(&self) -> Index {
        self.read(|l| l.first_index(), 1)
    }
    fn last_index(&self) -> Index {
        self.read(|l| l.last_index(), 0)
    }
    fn save_hard_state(&mut self, hs: HardState) -> Result<(), StorageError> {
        self.shared.state()?.record(self.group, Rec::HardState(hs))
    }
    fn hard_state(&self) -> HardState {
        self.read(|l| l.hard_state(), HardState::default())
    }
    fn sync(&mut self) -> Result<(), StorageError> {
        let shared = &self.shared;
        shared.state()?.sync(&shared.counters)
    }
}

/// The write path of one running group (see [`Journal::sink`]).
pub struct GroupSink {
    /// `None` once the journal is closed.
    jobs: Option<mpsc::UnboundedSender<Msg>>,
    group: GroupId,
    snapshots: SharedSnapshots,
    /// The first failed write of this sink (invariant 4).
    failed: Arc<Mutex<Option<SinkRefusal>>>,
    /// The journal's failure (invariant 4).
    fault: watch::Receiver<Option<String>>,
}

impl SharedSink for GroupSink {
    fn fault(&self) -> Option<StoreFault> {
        Some(self.fault.clone())
    }

    fn write(&self, write: Write, done: Done, token: u64) {
        let reply = match write.snapshot {
            Some(_) => self.jobs.clone(),
            None => None,
        };
        let job = Job {
            group: self.group,
            write,
            snapshots: self.snapshots.clone(),
            done,
            token,
            failed: self.failed.clone(),
            reply,
        };
        let refused = match &self.jobs {
            Some(jobs) => jobs.send(Msg::Write(job)).err().map(|e| e.0),
            None => Some(Msg::Write(job)),
        };
        if let Some(Msg::Write(job) | Msg::Saved { job, .. }) = refused {
            let _ = job.done.send(Err(StorageError::Closed));
        }
    }
}

#[path = "journal_commit.rs"]
mod commit;
#[cfg(test)]
#[path = "journal_snapshot_tests.rs"]
mod snapshot_tests;
#[cfg(test)]
#[path = "journal_tests.rs"]
mod tests;

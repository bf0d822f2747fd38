//! Unit tests of the persister (runtime/persist.rs): a child module, so
//! they reach its private items.

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
        let mut wal =
            Wal::open_in(fs.clone(), dir.path().join("wal"), WalOptions::default()).expect("wal");
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
    let (done, back) = p.write_releasing(write(vec![entry(1)], None), tx.clone(), 1, vec![ack(2)]);
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
    assert!(third.len() == second.len() && third[..third.len() - 1] == second[..second.len() - 1]);
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

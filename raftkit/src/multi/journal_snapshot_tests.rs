//! A group's received snapshot and the journal: its save holds up no
//! other group's writes nor the journal's lock, its own later writes wait
//! for it (per group, in order), and a crash anywhere leaves the old
//! snapshot or the new one in force, never a journal record of a snapshot
//! that is not on disk.

use std::sync::Condvar;
use std::time::Duration;

use super::*;
use crate::core::SnapshotMeta;
use crate::core::types::{Entry, HardState, Payload};
use crate::storage::{FileSnapshotStore, MemSnapshotStore, Snapshot, SnapshotStore};

const DEADLINE: Duration = Duration::from_secs(10);

fn entry(index: Index, term: Term) -> Entry {
    Entry {
        term,
        index,
        payload: Payload::Command(vec![index as u8; 8].into()),
    }
}

fn hs(term: Term, commit: Index) -> HardState {
    HardState {
        term,
        vote: 0,
        commit,
    }
}

fn write(entries: Vec<Entry>, hard_state: Option<HardState>) -> Write {
    Write {
        snapshot: None,
        compact: None,
        entries,
        hard_state,
    }
}

/// A leader's snapshot at `index` in `term`, received whole, with the
/// hard state that comes with it.
fn received(index: Index, term: Term) -> Write {
    Write {
        snapshot: Some(Snapshot {
            meta: SnapshotMeta {
                index,
                term,
                ..Default::default()
            },
            data: vec![7; 3 << 20],
        }),
        ..write(Vec::new(), Some(hs(term, index)))
    }
}

/// The next completion on `rx` within [`DEADLINE`] (`None`: none came).
fn next(
    rx: &mut mpsc::UnboundedReceiver<Result<u64, StorageError>>,
) -> Option<Result<u64, StorageError>> {
    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        match rx.try_recv() {
            Ok(r) => return Some(r),
            Err(mpsc::error::TryRecvError::Empty) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(_) => return None,
        }
    }
}

/// Stops `j`'s threads and lets go of its directory.
fn close(j: Journal) {
    crate::runtime::threads::block_on(j.close());
}

/// Where a [`Gated`] store pauses a save.
#[derive(Debug, Default)]
struct Gate {
    /// (a save reached the gate, the gate is open)
    state: Mutex<(bool, bool)>,
    changed: Condvar,
}

impl Gate {
    fn lock(&self) -> MutexGuard<'_, (bool, bool)> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Called by the save: says it is here, waits until the gate opens.
    fn pass(&self) {
        let mut st = self.lock();
        st.0 = true;
        self.changed.notify_all();
        while !st.1 {
            st = self.changed.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Whether a save reached the gate within [`DEADLINE`].
    fn reached(&self) -> bool {
        let st = self.lock();
        let (st, _) = self
            .changed
            .wait_timeout_while(st, DEADLINE, |st| !st.0)
            .unwrap_or_else(|p| p.into_inner());
        st.0
    }

    fn open(&self) {
        self.lock().1 = true;
        self.changed.notify_all();
    }
}

/// Opens the gate when the test ends, passed or failed: the journal's
/// threads never stay blocked behind it.
struct OpenOnDrop(Arc<Gate>);

impl Drop for OpenOnDrop {
    fn drop(&mut self) {
        self.0.open();
    }
}

/// A snapshot store whose saves wait at a [`Gate`] before writing (a
/// large snapshot's file being written).
struct Gated {
    inner: Box<dyn SnapshotStore + Send>,
    gate: Arc<Gate>,
}

impl SnapshotStore for Gated {
    fn save(&mut self, snapshot: &Snapshot) -> Result<(), StorageError> {
        self.gate.pass();
        self.inner.save(snapshot)
    }
    fn latest(&self) -> Result<Option<Snapshot>, StorageError> {
        self.inner.latest()
    }
    fn latest_meta(&self) -> Option<SnapshotMeta> {
        self.inner.latest_meta()
    }
    fn discard_all(&mut self) -> Result<(), StorageError> {
        self.inner.discard_all()
    }
}

fn shared(store: impl SnapshotStore + Send + 'static) -> SharedSnapshots {
    Arc::new(Mutex::new(Box::new(store)))
}

/// While group 1's received snapshot is being written (up to 1 GiB),
/// group 2's append is made durable and completed, and the journal's
/// state can be read; group 1's own later write waits for its snapshot
/// (its writes complete in order). Before: the save ran on the commit
/// thread inside the journal's lock, and nothing of any group persisted
/// until it ended.
#[test]
fn a_groups_snapshot_save_holds_up_no_other_groups_writes() {
    let (dir, j) = journal_in_tempdir();
    let gate = Arc::new(Gate::default());
    let _open = OpenOnDrop(gate.clone());
    let store = FileSnapshotStore::open(dir.path().join("snapshots"), 1).expect("a store");
    let a = j.sink(
        1,
        shared(Gated {
            inner: Box::new(store),
            gate: gate.clone(),
        }),
    );
    let b = j.sink(2, shared(MemSnapshotStore::new(1)));
    let (a_tx, mut a_rx) = mpsc::unbounded_channel();
    let (b_tx, mut b_rx) = mpsc::unbounded_channel();

    a.write(received(10, 2), a_tx.clone(), 1);
    assert!(gate.reached(), "group 1's snapshot save started");
    b.write(write(vec![entry(1, 1)], None), b_tx.clone(), 7);
    assert_eq!(
        next(&mut b_rx).map(|r| r.map_err(|e| e.to_string())),
        Some(Ok(7)),
        "group 2's append waited behind group 1's snapshot save"
    );
    assert_eq!(j.log(2).last_index(), 1, "group 2's append in the journal");
    // Group 1's next write is queued before group 2's next: once group
    // 2's completes, the commit thread has taken both.
    a.write(write(vec![entry(11, 2)], None), a_tx.clone(), 2);
    b.write(write(vec![entry(2, 1)], None), b_tx.clone(), 8);
    assert_eq!(
        next(&mut b_rx).map(|r| r.map_err(|e| e.to_string())),
        Some(Ok(8))
    );
    assert!(
        a_rx.try_recv().is_err(),
        "group 1's write completed before the snapshot it follows was saved"
    );

    gate.open();
    let outcomes: Vec<_> = (0..2)
        .map(|_| next(&mut a_rx).map(|r| r.map_err(|e| e.to_string())))
        .collect();
    assert_eq!(
        outcomes,
        vec![Some(Ok(1)), Some(Ok(2))],
        "group 1, in order"
    );
    drop((a, b));
    close(j);

    let j = Journal::open(
        crate::storage::vfs::real(),
        &dir.path().join("journal"),
        JournalOptions::default(),
    )
    .expect("the journal reopens");
    let g1 = j.log(1);
    assert_eq!((g1.first_index(), g1.last_index()), (11, 11));
    assert_eq!(g1.hard_state().commit, 10);
    assert_eq!(j.log(2).last_index(), 2);
    let store = FileSnapshotStore::open(dir.path().join("snapshots"), 1).expect("a store");
    assert_eq!(store.latest_meta().map(|m| m.index), Some(10));
    close(j);
}

/// A crash inside each sync of a received snapshot's save and of the
/// journal batch recording it, in turn (the snapshot file's slices, its
/// rename's directory sync, the journal's sync): every restart finds the
/// group either as it was before (its log, no snapshot, a stale temporary
/// file removed at open) or with the new snapshot in force (the log then
/// continues after it), and never a journal compacted behind a snapshot
/// that is not on disk. The ordering the save outside the journal's lock
/// keeps: the snapshot is durable before the record of it is written.
#[test]
fn a_crash_anywhere_in_a_snapshots_save_leaves_the_old_one_or_the_new_one() {
    use crate::storage::vfs::crash::CrashFs;
    let root = Path::new("/node");
    let journal_dir = root.join("journal");
    let snap_dir = root.join("groups").join("1").join("snapshots");
    let mut outcomes = (0, 0);
    for k in 0.. {
        let disk = CrashFs::new(root);
        let fs: SharedFs = Arc::new(disk.clone());
        let j = Journal::open(fs.clone(), &journal_dir, JournalOptions::default())
            .expect("the journal opens");
        let store = FileSnapshotStore::open_in(fs.clone(), &snap_dir, 1).expect("a store");
        let sink = j.sink(1, shared(store));
        let (tx, mut rx) = mpsc::unbounded_channel();
        sink.write(
            write((1..=20).map(|i| entry(i, 1)).collect(), Some(hs(1, 20))),
            tx.clone(),
            1,
        );
        assert_eq!(
            next(&mut rx).map(|r| r.map_err(|e| e.to_string())),
            Some(Ok(1))
        );
        disk.crash_in_sync(k, k);
        sink.write(received(30, 2), tx.clone(), 2);
        let saved = next(&mut rx).expect("the snapshot's write completes");
        drop(sink);
        close(j);
        let crashed = disk.crashes_in_sync() > 0;
        assert_eq!(saved.is_err(), crashed, "k = {k}: {saved:?}");
        disk.crash();

        let j = Journal::open(fs.clone(), &journal_dir, JournalOptions::default())
            .unwrap_or_else(|e| panic!("k = {k}: the journal reopens: {e}"));
        let store = FileSnapshotStore::open_in(fs.clone(), &snap_dir, 1)
            .unwrap_or_else(|e| panic!("k = {k}: the snapshot store reopens: {e}"));
        let leftovers: Vec<String> = fs
            .list_dir(&snap_dir)
            .expect("the snapshot directory")
            .into_iter()
            .filter(|n| n.ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "k = {k}: {leftovers:?}");
        let in_force = store.latest_meta().map(|m| m.index);
        let log = j.log(1);
        let (first, last) = (log.first_index(), log.last_index());
        match in_force {
            None => {
                assert_eq!((first, last), (1, 20), "k = {k}: the old log, whole");
                assert_eq!(log.hard_state().commit, 20, "k = {k}");
                outcomes.0 += 1;
            }
            Some(30) => {
                // Compacted behind it, or to be (at open): either way
                // nothing after the snapshot is missing.
                assert!(first == 1 || first == 31, "k = {k}: log {first}..={last}");
                outcomes.1 += 1;
            }
            other => panic!("k = {k}: snapshot {other:?} in force"),
        }
        let opened = crate::runtime::persist::open_stores(
            Box::new(j.log(1)),
            Box::new(store),
            (journal_dir.clone(), snap_dir.clone()),
        )
        .unwrap_or_else(|e| panic!("k = {k}: the group's storage opens: {e}"));
        let restored = opened.restored.expect("the group's state");
        assert_eq!(
            restored.snapshot.index,
            in_force.unwrap_or(0),
            "k = {k}: the snapshot restored"
        );
        drop(opened.log);
        close(j);
        if !crashed {
            assert_eq!(in_force, Some(30), "the save that did not crash");
            break;
        }
    }
    assert!(
        outcomes.0 > 0 && outcomes.1 > 0,
        "crashes before and after the snapshot took effect: {outcomes:?}"
    );
}

/// Group 1's received snapshot at 10 saved (into `dir/snapshots`) while
/// the group is removed, a write queued behind it; returns whether each
/// of the two completed `Ok`, the journal closed.
fn save_after_removal(dir: &Path) -> Vec<Option<bool>> {
    let j = Journal::open(
        crate::storage::vfs::real(),
        &dir.join("journal"),
        JournalOptions::default(),
    )
    .expect("the journal opens");
    j.create_group(1).expect("group 1 created");
    let gate = Arc::new(Gate::default());
    let _open = OpenOnDrop(gate.clone());
    let store = FileSnapshotStore::open(dir.join("snapshots"), 1).expect("a store");
    let a = j.sink(
        1,
        shared(Gated {
            inner: Box::new(store),
            gate: gate.clone(),
        }),
    );
    let (tx, mut rx) = mpsc::unbounded_channel();
    a.write(received(10, 2), tx.clone(), 1);
    assert!(gate.reached(), "group 1's snapshot save started");
    a.write(write(vec![entry(11, 2)], None), tx.clone(), 2);
    j.remove_group(1, (5, 2)).expect("group 1 removed");
    assert!(!j.groups().contains(&1), "group 1 removed");

    gate.open();
    let outcomes: Vec<_> = (0..2).map(|_| next(&mut rx).map(|r| r.is_ok())).collect();
    assert_eq!(j.groups(), Vec::<GroupId>::new(), "live, after the save");
    drop(a);
    close(j);
    outcomes
}

/// A received snapshot whose save completes after its group was removed
/// (the replica retired while the file was being written) is refused:
/// its compaction is not recorded, so neither the journal nor its replay
/// after a restart holds the removed group again, and the write behind it
/// is refused too. Before: the `Compact` record re-created the group.
#[test]
fn a_snapshot_saved_after_its_groups_removal_does_not_bring_the_group_back() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    assert_eq!(
        save_after_removal(dir.path()),
        vec![Some(false), Some(false)],
        "the removed group's snapshot and the write behind it"
    );
    let j = Journal::open(
        crate::storage::vfs::real(),
        &dir.path().join("journal"),
        JournalOptions::default(),
    )
    .expect("the journal reopens");
    assert_eq!(j.groups(), Vec::<GroupId>::new(), "replayed");
    assert_eq!(j.fence(1), Some((5, 2)), "the tombstone stays");
    close(j);
}

/// The file of a received snapshot whose save was refused as late (its
/// group removed meanwhile) is deleted at once: the removal deleted the
/// group's files before the save wrote it, and it would otherwise hold
/// its disk until the next start's sweep (and a replica hosted again
/// before then would find it as its latest snapshot). Before: the file
/// stayed.
#[test]
fn a_snapshot_saved_after_its_groups_removal_leaves_no_file() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    assert_eq!(
        save_after_removal(dir.path()),
        vec![Some(false), Some(false)],
        "the removed group's snapshot and the write behind it"
    );
    let left: Vec<String> = std::fs::read_dir(dir.path().join("snapshots"))
        .expect("the snapshot directory")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(left.is_empty(), "the late save's files stay: {left:?}");
}

/// A snapshot store whose save panics (a bug in it, or a file-system
/// call that panics).
struct Panicking;

impl SnapshotStore for Panicking {
    fn save(&mut self, _: &Snapshot) -> Result<(), StorageError> {
        panic!("the test's snapshot store panics in its save");
    }
    fn latest(&self) -> Result<Option<Snapshot>, StorageError> {
        Ok(None)
    }
    fn latest_meta(&self) -> Option<SnapshotMeta> {
        None
    }
}

/// Whether `j` closes within [`DEADLINE`] (a close that hangs is left
/// behind on its thread).
fn closes_in_time(j: Journal) -> bool {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        close(j);
        let _ = tx.send(());
    });
    rx.recv_timeout(DEADLINE).is_ok()
}

/// A panic while the snapshot worker saves group 1's received snapshot
/// fails that write and the group's writes held behind it (a write and
/// a second received snapshot) instead of leaving them pending for ever
/// (the peer-shutdown barrier among them: `retire` and `shutdown` hung),
/// and the journal reports itself failed; it closes. Before: the worker
/// thread died with the write, the held writes never completed, and the
/// queued snapshot's handle back to the commit thread kept `close`
/// waiting.
#[test]
fn a_panic_in_a_snapshot_save_fails_the_held_writes_and_the_journal() {
    let (_dir, j) = journal_in_tempdir();
    let a = j.sink(1, shared(Panicking));
    let b = j.sink(2, shared(MemSnapshotStore::new(1)));
    let (tx, mut rx) = mpsc::unbounded_channel();
    a.write(received(10, 2), tx.clone(), 1);
    a.write(write(vec![entry(11, 2)], None), tx.clone(), 2);
    a.write(received(20, 2), tx.clone(), 3);
    let outcomes: Vec<_> = (0..3).map(|_| next(&mut rx).map(|r| r.is_ok())).collect();
    assert_eq!(
        outcomes,
        vec![Some(false), Some(false), Some(false)],
        "group 1's snapshot whose save panicked, and its writes held behind it"
    );
    let (b_tx, mut b_rx) = mpsc::unbounded_channel();
    b.write(write(vec![entry(1, 1)], None), b_tx, 7);
    assert!(
        matches!(next(&mut b_rx), Some(Err(StorageError::Failed { .. }))),
        "another group's write after the panic"
    );
    assert!(
        matches!(j.create_group(3), Err(StorageError::Failed { .. })),
        "the journal reports itself failed"
    );
    drop((a, b));
    assert!(closes_in_time(j), "the journal did not close");
}

/// A journal lock poisoned (a panic while it was held) while group 1's
/// received snapshot is being saved: the save's write and the group's
/// writes held behind it fail, none is left pending, and the journal
/// closes. Before: the commit thread answered only the message in hand,
/// and the held writes never completed.
#[test]
fn a_poisoned_journal_lock_fails_the_held_writes() {
    let (_dir, j) = journal_in_tempdir();
    let gate = Arc::new(Gate::default());
    let _open = OpenOnDrop(gate.clone());
    let a = j.sink(
        1,
        shared(Gated {
            inner: Box::new(MemSnapshotStore::new(1)),
            gate: gate.clone(),
        }),
    );
    let (tx, mut rx) = mpsc::unbounded_channel();
    a.write(received(10, 2), tx.clone(), 1);
    assert!(gate.reached(), "group 1's snapshot save started");
    a.write(write(vec![entry(11, 2)], None), tx.clone(), 2);
    a.write(received(20, 2), tx.clone(), 3);
    // Sync point: group 2's write is queued after writes 2 and 3 on the
    // commit thread's one FIFO channel; once it completes, the thread has
    // taken 2 and 3 into its held queue, so they are held (not the
    // message in hand) when the lock is poisoned.
    let b = j.sink(2, shared(MemSnapshotStore::new(1)));
    let (b_tx, mut b_rx) = mpsc::unbounded_channel();
    b.write(write(vec![entry(1, 1)], None), b_tx, 7);
    assert_eq!(
        next(&mut b_rx).map(|r| r.map_err(|e| e.to_string())),
        Some(Ok(7)),
        "group 2's write, taken after group 1's held writes"
    );
    let shared_state = j.shared.clone();
    let poisoner = std::thread::spawn(move || {
        let _held = shared_state.state.lock();
        panic!("the test poisons the journal's lock");
    });
    assert!(poisoner.join().is_err(), "the lock is poisoned");

    gate.open();
    let outcomes: Vec<_> = (0..3).map(|_| next(&mut rx).map(|r| r.is_ok())).collect();
    assert_eq!(
        outcomes,
        vec![Some(false), Some(false), Some(false)],
        "group 1's snapshot and its writes held behind it, after the poisoning"
    );
    drop((a, b));
    assert!(closes_in_time(j), "the journal did not close");
}

/// A snapshot store that fails its `fail_at`-th save (1-based; `None`:
/// none), the first save waiting at a [`Gate`].
struct Flaky {
    inner: FileSnapshotStore,
    gate: Arc<Gate>,
    fail_at: Option<usize>,
    saves: usize,
}

impl SnapshotStore for Flaky {
    fn save(&mut self, snapshot: &Snapshot) -> Result<(), StorageError> {
        self.saves += 1;
        if self.saves == 1 {
            self.gate.pass();
        }
        if Some(self.saves) == self.fail_at {
            return Err(StorageError::Invalid("the test fails this save".into()));
        }
        self.inner.save(snapshot)
    }
    fn latest(&self) -> Result<Option<Snapshot>, StorageError> {
        self.inner.latest()
    }
    fn latest_meta(&self) -> Option<SnapshotMeta> {
        self.inner.latest_meta()
    }
}

/// Two received snapshots of one group in a row (the second sent while
/// the first is being saved) and a write after both: the second waits
/// for the first and replaces it (its file the only one left), and the
/// write lands after it, all completed in order. If the first save fails,
/// the second and the write are refused (invariant 4: they were built on
/// it); if the second fails, the first stays in force and the write is
/// refused. After a restart the journal holds what was completed `Ok`.
#[test]
fn two_received_snapshots_in_a_row_are_saved_in_order() {
    // (the save that fails, the completions, the log's first index, the
    // snapshot in force)
    let cases = [
        (None, [true, true, true], 21, Some(20)),
        (Some(1), [false, false, false], 1, None),
        (Some(2), [true, false, false], 11, Some(10)),
    ];
    for (fail_at, completed, first, in_force) in cases {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let open = || {
            Journal::open(
                crate::storage::vfs::real(),
                &dir.path().join("journal"),
                JournalOptions::default(),
            )
            .expect("the journal opens")
        };
        let j = open();
        j.create_group(1).expect("group 1 created");
        let gate = Arc::new(Gate::default());
        let _open = OpenOnDrop(gate.clone());
        let store = FileSnapshotStore::open(dir.path().join("snapshots"), 0).expect("a store");
        let a = j.sink(
            1,
            shared(Flaky {
                inner: store,
                gate: gate.clone(),
                fail_at,
                saves: 0,
            }),
        );
        let (tx, mut rx) = mpsc::unbounded_channel();
        a.write(received(10, 2), tx.clone(), 1);
        assert!(gate.reached(), "{fail_at:?}: the first save started");
        a.write(received(20, 2), tx.clone(), 2);
        a.write(write(vec![entry(21, 2)], Some(hs(2, 21))), tx.clone(), 3);
        assert!(
            rx.try_recv().is_err(),
            "{fail_at:?}: a write completed while the first snapshot was being saved"
        );
        gate.open();
        let outcomes: Vec<_> = (0..3)
            .map(|_| next(&mut rx).map(|r| r.map_err(|e| e.to_string())))
            .collect();
        let expected: Vec<_> = completed.iter().zip(1..).map(|(ok, t)| (*ok, t)).collect();
        assert_eq!(
            outcomes
                .iter()
                .map(|o| o.as_ref().map(|r| r.is_ok()))
                .collect::<Vec<_>>(),
            expected.iter().map(|(ok, _)| Some(*ok)).collect::<Vec<_>>(),
            "{fail_at:?}: {outcomes:?}"
        );
        for (o, (ok, token)) in outcomes.iter().zip(&expected) {
            if *ok {
                assert_eq!(o, &Some(Ok(*token)), "{fail_at:?}: in order");
            }
        }
        let live = |j: &Journal| (j.log(1).first_index(), j.log(1).last_index());
        let want_log = (first, if first == 21 { 21 } else { first - 1 });
        assert_eq!(live(&j), want_log, "{fail_at:?}: the group's log");
        drop(a);
        close(j);

        let j = open();
        assert_eq!(live(&j), want_log, "{fail_at:?}: the group's log, replayed");
        close(j);
        let store = FileSnapshotStore::open(dir.path().join("snapshots"), 0).expect("a store");
        assert_eq!(
            store.latest_meta().map(|m| m.index),
            in_force,
            "{fail_at:?}: the snapshot in force"
        );
        let files = std::fs::read_dir(dir.path().join("snapshots"))
            .expect("the snapshot directory")
            .count();
        assert_eq!(
            files,
            usize::from(in_force.is_some()),
            "{fail_at:?}: one file, the latest"
        );
    }
}

/// A file system whose next file sync, once armed, completes (the data
/// durable), then waits at a [`Gate`] and panics: a bug (the file
/// system's, the write-ahead log's) in the commit thread right after a
/// batch's fsync.
#[derive(Debug)]
struct PanicAfterSync {
    gate: Arc<Gate>,
    armed: Arc<std::sync::atomic::AtomicBool>,
}

#[derive(Debug)]
struct PanicAfterSyncFile {
    inner: Box<dyn crate::storage::vfs::VfsFile>,
    gate: Arc<Gate>,
    armed: Arc<std::sync::atomic::AtomicBool>,
}

impl PanicAfterSyncFile {
    fn after_sync(&self) {
        if self.armed.swap(false, Ordering::SeqCst) {
            self.gate.pass();
            panic!("the test panics in the journal's commit thread after an fsync");
        }
    }
}

impl crate::storage::vfs::VfsFile for PanicAfterSyncFile {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.inner.read_exact_at(buf, offset)
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        self.inner.write_all_at(buf, offset)
    }
    fn size(&self) -> std::io::Result<u64> {
        self.inner.size()
    }
    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.inner.set_len(len)
    }
    fn sync_data(&self) -> std::io::Result<()> {
        self.inner.sync_data()?;
        self.after_sync();
        Ok(())
    }
    fn sync_all(&self) -> std::io::Result<()> {
        self.inner.sync_all()?;
        self.after_sync();
        Ok(())
    }
}

impl crate::storage::vfs::Vfs for PanicAfterSync {
    fn create_dir_all(&self, dir: &Path) -> std::io::Result<()> {
        crate::storage::vfs::RealFs.create_dir_all(dir)
    }
    fn is_dir(&self, path: &Path) -> bool {
        crate::storage::vfs::RealFs.is_dir(path)
    }
    fn list_dir(&self, dir: &Path) -> std::io::Result<Vec<String>> {
        crate::storage::vfs::RealFs.list_dir(dir)
    }
    fn open(
        &self,
        path: &Path,
        mode: crate::storage::vfs::OpenMode,
    ) -> std::io::Result<Box<dyn crate::storage::vfs::VfsFile>> {
        Ok(Box::new(PanicAfterSyncFile {
            inner: crate::storage::vfs::RealFs.open(path, mode)?,
            gate: self.gate.clone(),
            armed: self.armed.clone(),
        }))
    }
    fn read(&self, path: &Path) -> std::io::Result<Vec<u8>> {
        crate::storage::vfs::RealFs.read(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> std::io::Result<()> {
        crate::storage::vfs::RealFs.rename(from, to)
    }
    fn remove_file(&self, path: &Path) -> std::io::Result<()> {
        crate::storage::vfs::RealFs.remove_file(path)
    }
    fn sync_dir(&self, dir: &Path) -> std::io::Result<()> {
        crate::storage::vfs::RealFs.sync_dir(dir)
    }
    fn lock(&self, path: &Path) -> std::io::Result<Box<dyn crate::storage::vfs::VfsLock>> {
        crate::storage::vfs::RealFs.lock(path)
    }
}

/// A panic in the commit thread itself (here right after the fsync of a
/// batch holding group 1's write) answers every write instead of leaving
/// them pending for ever (the node task's completion channel never closes,
/// so a dropped write is a hang): the write whose fsync may have completed
/// "may have been applied" ([`StorageError::Failed`]; it did reach the
/// disk, the reopened journal holds it), the write still queued behind it
/// not applied ([`StorageError::Closed`]), like every later write; the
/// journal refuses its own calls and closes. Before: the commit thread
/// died with both writes, neither ever completed.
#[test]
fn a_panic_in_the_commit_thread_answers_every_write() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let gate = Arc::new(Gate::default());
    let _open = OpenOnDrop(gate.clone());
    let armed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let fs: SharedFs = Arc::new(PanicAfterSync {
        gate: gate.clone(),
        armed: armed.clone(),
    });
    let j = Journal::open(fs, &dir.path().join("journal"), JournalOptions::default())
        .expect("the journal opens");
    let a = j.sink(1, shared(MemSnapshotStore::new(1)));
    let b = j.sink(2, shared(MemSnapshotStore::new(1)));
    let (a_tx, mut a_rx) = mpsc::unbounded_channel();
    let (b_tx, mut b_rx) = mpsc::unbounded_channel();
    a.write(write(vec![entry(1, 1)], None), a_tx.clone(), 1);
    assert_eq!(
        next(&mut a_rx).map(|r| r.map_err(|e| e.to_string())),
        Some(Ok(1))
    );

    armed.store(true, Ordering::SeqCst);
    a.write(write(vec![entry(2, 1)], None), a_tx.clone(), 2);
    assert!(gate.reached(), "the commit thread synced group 1's write");
    b.write(write(vec![entry(1, 1)], None), b_tx.clone(), 7);
    gate.open();
    let synced = next(&mut a_rx);
    assert!(
        matches!(synced, Some(Err(StorageError::Failed { .. }))),
        "group 1's write, fsynced before the panic (may have been applied): {synced:?}"
    );
    let queued = next(&mut b_rx);
    assert!(
        matches!(queued, Some(Err(StorageError::Closed))),
        "group 2's write, queued at the panic (not applied): {queued:?}"
    );
    b.write(write(vec![entry(1, 1)], None), b_tx, 8);
    let later = next(&mut b_rx);
    assert!(
        matches!(later, Some(Err(StorageError::Closed))),
        "a write after the panic (not applied): {later:?}"
    );
    assert!(
        j.create_group(3).is_err(),
        "the journal refuses its own writes after the panic"
    );
    drop((a, b));
    assert!(closes_in_time(j), "the journal did not close");

    let j = Journal::open(
        crate::storage::vfs::real(),
        &dir.path().join("journal"),
        JournalOptions::default(),
    )
    .expect("the journal reopens");
    assert_eq!(
        j.log(1).last_index(),
        2,
        "group 1's write answered \"may have been applied\" is durable"
    );
    assert_eq!(j.log(2).last_index(), 0, "group 2's write never reached it");
    close(j);
}

/// A write its group's sink hands the journal after the group's removal
/// (a retired replica whose node task still wrote: its shutdown failed)
/// is refused, "not applied" ([`StorageError::Closed`]), whether it
/// carries a hard state or a received snapshot, and brings the group back
/// neither live nor on replay; the tombstone stays (review s56, finding
/// 7). Before: `apply` re-created the group for the write's first
/// record, live and on replay.
#[test]
fn a_write_taken_after_its_groups_removal_is_refused_and_brings_nothing_back() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("journal");
    let j = Journal::open(
        crate::storage::vfs::real(),
        &path,
        JournalOptions::default(),
    )
    .expect("the journal opens");
    let ([a, b], tx, mut rx) = removed_after_a_write(&j);
    a.write(write(Vec::new(), Some(hs(1, 2))), tx.clone(), 2);
    let hard_state = next(&mut rx);
    b.write(received(10, 2), tx.clone(), 3);
    let snapshot = next(&mut rx);
    let live = j.groups();
    drop((a, b));
    close(j);
    let j = Journal::open(
        crate::storage::vfs::real(),
        &path,
        JournalOptions::default(),
    )
    .expect("the journal reopens");
    let replayed = j.groups();
    let fence = j.fence(1);
    close(j);
    assert!(
        matches!(hard_state, Some(Err(StorageError::Closed))),
        "a hard state written after the removal: {hard_state:?}"
    );
    assert!(
        matches!(snapshot, Some(Err(StorageError::Closed))),
        "a received snapshot written after the removal: {snapshot:?}"
    );
    assert_eq!(
        (live, replayed, fence),
        (Vec::new(), Vec::new(), Some((1, 1))),
        "the removed group (live, replayed) and its tombstone"
    );
}

/// Every write a removed group's sink hands the journal after the removal
/// is refused the same way, "not applied" ([`StorageError::Closed`]), not
/// only the first: the removal recorded on the sink is not a failure.
/// Before: the first was `Closed` and every later one `Failed` ("may have
/// been applied"), so the retired replica's node task took its own
/// unwritten entries for possibly durable.
#[test]
fn every_write_after_its_groups_removal_is_refused_not_applied() {
    let (_dir, j) = journal_in_tempdir();
    let ([a], tx, mut rx) = removed_after_a_write(&j);
    let mut answers = Vec::new();
    for token in 2..5 {
        a.write(
            write(vec![entry(token, 1)], Some(hs(1, 1))),
            tx.clone(),
            token,
        );
        answers.push(next(&mut rx));
    }
    drop(a);
    close(j);
    for (i, answer) in answers.iter().enumerate() {
        assert!(
            matches!(answer, Some(Err(StorageError::Closed))),
            "write {} after the removal: {answer:?}",
            i + 1
        );
    }
}

/// Where a sink's writes are answered (the write's token, or its error).
type AnswerTx = mpsc::UnboundedSender<Result<u64, StorageError>>;
/// The other end of an [`AnswerTx`].
type AnswerRx = mpsc::UnboundedReceiver<Result<u64, StorageError>>;

/// Group 1 created in `j` with `N` sinks, a write of entry 1 (term 1)
/// through the first answered, then the group removed with the fence
/// (1, 1): the sinks of a retired replica whose node task may still write,
/// and the channel their writes are answered on.
fn removed_after_a_write<const N: usize>(j: &Journal) -> ([GroupSink; N], AnswerTx, AnswerRx) {
    j.create_group(1).expect("group 1 created");
    let sinks: [GroupSink; N] = std::array::from_fn(|_| j.sink(1, snaps()));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let first = sinks.first().expect("a sink");
    first.write(write(vec![entry(1, 1)], Some(hs(1, 1))), tx.clone(), 1);
    assert!(
        matches!(next(&mut rx), Some(Ok(1))),
        "group 1's write before its removal"
    );
    j.remove_group(1, (1, 1)).expect("group 1 removed");
    (sinks, tx, rx)
}

/// A journal with the default options in a new temporary directory (kept
/// while the directory is).
fn journal_in_tempdir() -> (tempfile::TempDir, Journal) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let j = Journal::open(
        crate::storage::vfs::real(),
        &dir.path().join("journal"),
        JournalOptions::default(),
    )
    .expect("the journal opens");
    (dir, j)
}

fn snaps() -> SharedSnapshots {
    shared(MemSnapshotStore::new(1))
}

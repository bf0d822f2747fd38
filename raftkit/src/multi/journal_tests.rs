//! The journal on real files: cross-group batching, replay, checkpoints,
//! corruption.

use std::time::Duration;

use super::*;
use crate::core::types::{Entry, HardState, Payload};
use crate::storage::MemSnapshotStore;

fn entry(index: Index, term: Term, data: &[u8]) -> Entry {
    Entry {
        term,
        index,
        payload: Payload::Command(data.to_vec().into()),
    }
}

fn snaps() -> SharedSnapshots {
    Arc::new(Mutex::new(Box::new(MemSnapshotStore::new(1))))
}

fn write(entries: Vec<Entry>, hs: Option<HardState>) -> Write {
    Write {
        snapshot: None,
        compact: None,
        entries,
        hard_state: hs,
    }
}

fn open(dir: &Path, checkpoint_bytes: u64) -> Journal {
    Journal::open(
        crate::storage::vfs::real(),
        dir,
        JournalOptions {
            checkpoint_bytes,
            ..JournalOptions::default()
        },
    )
    .expect("journal opens")
}

/// Waits for `n` completions, all `Ok`, with a deadline.
fn wait_ok(rx: &mut mpsc::UnboundedReceiver<Result<u64, StorageError>>, n: usize) -> Vec<u64> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut got = Vec::new();
    while got.len() < n {
        match rx.try_recv() {
            Ok(r) => got.push(r.expect("write is durable")),
            Err(mpsc::error::TryRecvError::Empty) => {
                assert!(std::time::Instant::now() < deadline, "completions: {got:?}");
                std::thread::yield_now();
            }
            Err(e) => panic!("completion channel: {e}"),
        }
    }
    got
}

fn close(j: Journal) {
    crate::runtime::threads::block_on(j.close());
}

#[test]
fn writes_of_many_groups_share_one_sync() {
    let dir = tempfile::tempdir().unwrap();
    let j = open(dir.path(), 64 << 20);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let sinks: Vec<GroupSink> = (1..=8).map(|g| j.sink(g, snaps())).collect();
    let before = j.stats().syncs;
    {
        // Hold the commit thread off while every group queues a write:
        // it must then take them all in one batch.
        let _st = j.shared.state().unwrap();
        for (i, sink) in sinks.iter().enumerate() {
            sink.write(write(vec![entry(1, 1, b"x")], None), tx.clone(), i as u64);
        }
    }
    let mut tokens = wait_ok(&mut rx, 8);
    tokens.sort_unstable();
    assert_eq!(tokens, (0..8).collect::<Vec<_>>());
    let stats = j.stats();
    assert_eq!(stats.syncs - before, 1, "{stats:?}");
    assert_eq!(stats.max_groups_per_sync, 8, "{stats:?}");
    drop(sinks);
    close(j);
}

#[test]
fn reopen_rebuilds_every_group() {
    let dir = tempfile::tempdir().unwrap();
    let j = open(dir.path(), 64 << 20);
    let (tx, mut rx) = mpsc::unbounded_channel();
    for g in 1..=3u64 {
        let sink = j.sink(g, snaps());
        for i in 1..=g * 2 {
            let hs = HardState {
                term: 2,
                vote: g,
                commit: i,
            };
            sink.write(
                write(vec![entry(i, 2, &[g as u8; 4])], Some(hs)),
                tx.clone(),
                i,
            );
        }
        wait_ok(&mut rx, (g * 2) as usize);
    }
    // Group 2 overwrites its suffix (Raft §5.3) and compacts behind a
    // snapshot.
    let sink = j.sink(2, snaps());
    sink.write(write(vec![entry(3, 3, b"new")], None), tx.clone(), 9);
    sink.write(
        Write {
            compact: Some((1, 2)),
            ..write(vec![], None)
        },
        tx.clone(),
        10,
    );
    wait_ok(&mut rx, 2);
    drop(sink);
    close(j);

    let j = open(dir.path(), 64 << 20);
    assert_eq!(j.groups(), vec![1, 2, 3]);
    let g1 = j.log(1);
    assert_eq!((g1.first_index(), g1.last_index()), (1, 2));
    assert_eq!(g1.hard_state().commit, 2);
    let g2 = j.log(2);
    assert_eq!((g2.first_index(), g2.last_index()), (2, 3));
    assert_eq!(g2.term(3).unwrap(), Some(3));
    assert_eq!(g2.term(1).unwrap(), Some(2), "the boundary term");
    let g3 = j.log(3);
    assert_eq!(g3.last_index(), 6);
    assert_eq!(
        g3.entries(6, 7).unwrap()[0].payload,
        Payload::Command(vec![3u8; 4].into())
    );
    close(j);
}

#[test]
fn checkpoint_drops_old_batches_and_replays_the_same_state() {
    let dir = tempfile::tempdir().unwrap();
    // A tiny threshold: checkpoint as soon as the journal outgrows twice
    // the live logs.
    let j = open(dir.path(), 1024);
    let (tx, mut rx) = mpsc::unbounded_channel();
    for g in 1..=4u64 {
        let sink = j.sink(g, snaps());
        for i in 1..=50u64 {
            // The hard state is written once, with the first entry: after
            // a checkpoint only the group's `Reset` record holds it.
            let hs = (i == 1).then_some(hard_state_of(g));
            sink.write(write(vec![entry(i, 1, &[7u8; 100])], hs), tx.clone(), i);
            wait_ok(&mut rx, 1);
        }
        // The group snapshots at 45: only 5 entries stay live.
        sink.write(
            Write {
                compact: Some((45, 1)),
                ..write(vec![], None)
            },
            tx.clone(),
            0,
        );
        wait_ok(&mut rx, 1);
    }
    let stats = j.stats();
    assert!(stats.checkpoints >= 1, "{stats:?}");
    let first_batch = j.shared.state().unwrap().wal.first_index();
    assert!(first_batch > 1, "the journal was compacted");
    close(j);
    let j = open(dir.path(), 1024);
    for g in 1..=4u64 {
        let log = j.log(g);
        assert_eq!((log.first_index(), log.last_index()), (46, 50), "group {g}");
        assert_eq!(log.term(45).unwrap(), Some(1));
        // A vote the checkpoint dropped would let the group vote twice in
        // a term (Raft Figure 2: votedFor is persistent state). Teeth round
        // 3, mutant 211.
        assert_eq!(log.hard_state(), hard_state_of(g), "group {g}");
    }
    close(j);
}

/// The hard state group `g` records in the checkpoint test.
fn hard_state_of(g: u64) -> HardState {
    HardState {
        term: 1 + g,
        vote: g,
        commit: 1,
    }
}

#[test]
fn a_batch_that_does_not_decode_is_corruption() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut wal = Wal::open(dir.path(), WalOptions::default()).unwrap();
        wal.append(&[entry(1, 1, &[0xff, 0xff, 0xff])]).unwrap();
        wal.sync().unwrap();
    }
    let err = Journal::open(
        crate::storage::vfs::real(),
        dir.path(),
        JournalOptions::default(),
    )
    .expect_err("garbage is not a batch");
    assert!(matches!(err, StorageError::Corrupt { .. }), "{err:?}");
}

#[test]
fn a_record_that_does_not_apply_is_corruption() {
    let dir = tempfile::tempdir().unwrap();
    {
        // An append that leaves a gap in group 5's log.
        let batch = Batch {
            recs: vec![(5, Rec::Append(vec![entry(7, 1, b"gap")]))],
        };
        let mut wal = Wal::open(dir.path(), WalOptions::default()).unwrap();
        let bytes = postcard::to_allocvec(&batch).unwrap();
        wal.append(&[entry(1, 1, &bytes)]).unwrap();
        wal.sync().unwrap();
    }
    let err = Journal::open(
        crate::storage::vfs::real(),
        dir.path(),
        JournalOptions::default(),
    )
    .expect_err("a gap is not a log");
    assert!(err.to_string().contains("group 5"), "{err}");
}

#[test]
fn a_removed_group_stays_a_tombstone_across_reopen_and_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let j = open(dir.path(), 1);
    j.create_group(4).unwrap();
    j.create_group(5).unwrap();
    assert!(!j.was_removed(4));
    j.remove_group(4, (9, 3)).unwrap();
    assert!(j.was_removed(4) && !j.was_removed(5));
    assert_eq!(j.fence(4), Some((9, 3)));
    assert_eq!(j.fence(5), None);
    assert_eq!(j.groups(), vec![5]);
    // Enough writes of group 5 to checkpoint (threshold 1 byte) several
    // times: the tombstone must be carried into every checkpoint.
    let (tx, mut rx) = mpsc::unbounded_channel();
    let sink = j.sink(5, snaps());
    for i in 1..=40 {
        sink.write(
            Write {
                compact: (i > 2).then(|| (i - 2, 1)),
                ..write(vec![entry(i, 1, &[7u8; 256])], None)
            },
            tx.clone(),
            i,
        );
        wait_ok(&mut rx, 1);
    }
    drop(sink);
    let checkpoints = j.stats().checkpoints;
    assert!(checkpoints >= 1, "{:?}", j.stats());
    close(j);
    let j = open(dir.path(), 64 << 20);
    assert!(
        j.was_removed(4),
        "the tombstone survived {checkpoints} checkpoints and a reopen"
    );
    assert_eq!(j.fence(4), Some((9, 3)), "the fence survived too");
    assert!(!j.was_removed(5));
    assert_eq!(j.groups(), vec![5]);
    close(j);
}

/// A group moved away and back: its tombstone (and fence) stays, and the
/// new replica's log is not swallowed by it, neither on replay nor across
/// checkpoints (which write tombstones before the groups' state).
#[test]
fn a_group_hosted_again_after_its_removal_survives_reopen_and_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let j = open(dir.path(), 64 << 20);
    j.create_group(4).unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let sink = j.sink(4, snaps());
    sink.write(write(vec![entry(1, 1, b"old")], None), tx.clone(), 1);
    wait_ok(&mut rx, 1);
    drop(sink);
    j.remove_group(4, (1, 1)).unwrap();
    assert_eq!(j.groups(), Vec::<u64>::new());
    // Hosted again (a move back): a new replica with an empty log.
    j.create_group(4).unwrap();
    let sink = j.sink(4, snaps());
    sink.write(write(vec![entry(1, 2, b"new")], None), tx.clone(), 2);
    wait_ok(&mut rx, 1);
    drop(sink);
    close(j);
    let j = open(dir.path(), 64 << 20);
    assert_eq!(
        j.groups(),
        vec![4],
        "the tombstone swallowed the new replica"
    );
    assert_eq!(j.fence(4), Some((1, 1)));
    assert_eq!(j.log(4).term(1).unwrap(), Some(2), "the new replica's log");
    close(j);
    // Through checkpoints (threshold 1 byte: every sync checkpoints).
    let j = open(dir.path(), 1);
    let sink = j.sink(4, snaps());
    for i in 2..=6 {
        // Compacting behind the writes: the journal is mostly garbage.
        let w = Write {
            compact: (i > 2).then(|| (i - 2, 2)),
            ..write(vec![entry(i, 2, &[7u8; 256])], None)
        };
        sink.write(w, tx.clone(), i);
        wait_ok(&mut rx, 1);
    }
    drop(sink);
    assert!(j.stats().checkpoints >= 1, "{:?}", j.stats());
    close(j);
    let j = open(dir.path(), 64 << 20);
    assert_eq!(j.groups(), vec![4]);
    assert_eq!(j.fence(4), Some((1, 1)));
    assert_eq!(j.log(4).last_index(), 6);
    assert_eq!(j.log(4).term(5).unwrap(), Some(2));
    // A later removal with a lower fence (an orphan's) keeps the higher.
    j.remove_group(4, (0, 0)).unwrap();
    assert_eq!(j.fence(4), Some((1, 1)));
    close(j);
}

/// A journal written before removals carried a fence (a `Remove` record
/// alone) reads as [`LEGACY_FENCE`]: nothing passes it, and the node keeps
/// refusing the group (the rule of those journals).
#[test]
fn a_removal_without_a_fence_reads_as_the_legacy_fence() {
    let dir = tempfile::tempdir().unwrap();
    let j = open(dir.path(), 64 << 20);
    j.create_group(4).unwrap();
    j.remove_without_fence(4).unwrap();
    assert_eq!(j.fence(4), Some(LEGACY_FENCE));
    close(j);
    let j = open(dir.path(), 64 << 20);
    assert_eq!(j.fence(4), Some(LEGACY_FENCE));
    close(j);
}

/// One group's log in a journal, as a multi-group node's replicas use it,
/// with the journal and directory it lives in: the log store conformance
/// suite (`storage::conformance`, durable checks included) runs on it as
/// on every built-in store. Small checkpoints, so that reopens also replay
/// from checkpoints.
struct JournalLog {
    log: GroupLog,
    journal: Journal,
    dir: tempfile::TempDir,
}

const CONFORMANCE_GROUP: GroupId = 3;
const CONFORMANCE_CHECKPOINT_BYTES: u64 = 4096;

fn journal_log() -> JournalLog {
    let dir = tempfile::tempdir().expect("tempdir");
    let journal = open(dir.path(), CONFORMANCE_CHECKPOINT_BYTES);
    JournalLog {
        log: journal.log(CONFORMANCE_GROUP),
        journal,
        dir,
    }
}

fn reopen_journal_log(j: JournalLog) -> JournalLog {
    let JournalLog { log, journal, dir } = j;
    drop(log);
    close(journal);
    let journal = open(dir.path(), CONFORMANCE_CHECKPOINT_BYTES);
    JournalLog {
        log: journal.log(CONFORMANCE_GROUP),
        journal,
        dir,
    }
}

impl LogStore for JournalLog {
    fn append(&mut self, entries: &[Entry]) -> Result<(), StorageError> {
        self.log.append(entries)
    }
    fn truncate_suffix(&mut self, from: Index) -> Result<(), StorageError> {
        self.log.truncate_suffix(from)
    }
    fn compact_prefix(&mut self, upto: Index, term: Term) -> Result<(), StorageError> {
        self.log.compact_prefix(upto, term)
    }
    fn entries(&self, lo: Index, hi: Index) -> Result<Vec<Entry>, StorageError> {
        self.log.entries(lo, hi)
    }
    fn term(&self, index: Index) -> Result<Option<Term>, StorageError> {
        self.log.term(index)
    }
    fn first_index(&self) -> Index {
        self.log.first_index()
    }
    fn last_index(&self) -> Index {
        self.log.last_index()
    }
    fn save_hard_state(&mut self, hs: HardState) -> Result<(), StorageError> {
        self.log.save_hard_state(hs)
    }
    fn hard_state(&self) -> HardState {
        self.log.hard_state()
    }
    fn sync(&mut self) -> Result<(), StorageError> {
        self.log.sync()
    }
}

mod journal_conformance {
    use super::*;
    crate::log_store_conformance!(journal_log, reopen = reopen_journal_log);
}

/// A new replica never takes over an earlier replica's log:
/// `create_group` of a group the journal holds is refused (it returned
/// `Ok` and the caller started a replica over the old log), and once the
/// journal has failed every create is refused, of a group it holds too.
/// That is the state a retirement leaves when the failed journal refuses
/// its tombstone (the whole-runtime simulation's seed 494): the old log
/// stays, in memory and on disk, and a restart finds it.
#[test]
fn create_group_never_reuses_a_log_and_fails_with_the_journal() {
    use crate::storage::vfs::{Fault, FaultRule, FaultyFs, FileOp};
    let dir = tempfile::tempdir().unwrap();
    let fs = FaultyFs::over_real();
    let j = Journal::open(Arc::new(fs.clone()), dir.path(), JournalOptions::default())
        .expect("journal opens");
    j.create_group(4).unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let sink = j.sink(4, snaps());
    sink.write(write(vec![entry(1, 1, b"old")], None), tx.clone(), 1);
    wait_ok(&mut rx, 1);
    drop(sink);
    let err = j
        .create_group(4)
        .expect_err("a create over the log of group 4");
    assert!(matches!(err, StorageError::Invalid(_)), "{err}");
    assert_eq!(j.log(4).last_index(), 1, "the old log is untouched");

    // The disk fills: a write fails, and the journal refuses every later
    // one, the tombstone of group 4 and a create of it included.
    fs.inject(FaultRule::new(FileOp::Write, Fault::NoSpace));
    assert!(j.create_group(5).is_err(), "a create on a full disk");
    assert!(
        j.remove_group(4, (1, 1)).is_err(),
        "a tombstone on a failed journal"
    );
    for g in [4, 6] {
        let err = j.create_group(g).expect_err("a create on a failed journal");
        assert!(
            matches!(err, StorageError::Failed { .. }),
            "group {g}: {err}"
        );
    }
    close(j);
    fs.clear();
    let j = open(dir.path(), 64 << 20);
    assert_eq!(j.groups(), vec![4], "the old log is still on disk");
    assert!(!j.was_removed(4), "no tombstone was written");
    assert_eq!(j.log(4).term(1).unwrap(), Some(1));
    close(j);
}

/// What a reopen must rebuild of a journal: its groups (each one's bounds,
/// boundary term, hard state and a digest of its entries) and its
/// tombstones.
#[derive(Debug, PartialEq)]
struct Summary {
    groups: Vec<(GroupId, GroupSummary)>,
    fences: Vec<(GroupId, Option<(Index, Term)>)>,
}

#[derive(Debug, PartialEq)]
struct GroupSummary {
    first: Index,
    last: Index,
    boundary_term: Option<Term>,
    hard_state: HardState,
    entries_digest: u64,
}

/// The groups whose fences [`summary`] reads (removed or not).
const SUMMARY_GROUPS: std::ops::RangeInclusive<GroupId> = 1..=8;

fn summary(j: &Journal) -> Summary {
    use std::hash::{Hash, Hasher};
    let groups = j
        .groups()
        .into_iter()
        .map(|g| {
            let log = j.log(g);
            let (first, last) = (log.first_index(), log.last_index());
            let entries = log.entries(first, last + 1).unwrap();
            let mut h = std::collections::hash_map::DefaultHasher::new();
            postcard::to_allocvec(&entries).unwrap().hash(&mut h);
            let s = GroupSummary {
                first,
                last,
                boundary_term: log.term(first - 1).unwrap(),
                hard_state: log.hard_state(),
                entries_digest: h.finish(),
            };
            (g, s)
        })
        .collect();
    let fences = SUMMARY_GROUPS.map(|g| (g, j.fence(g))).collect();
    Summary { groups, fences }
}

/// Appends one entry to every group of `j` (in its last entry's term) and
/// a new hard state, and waits for them to be durable.
fn write_one_more(j: &Journal) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let groups = j.groups();
    for &g in &groups {
        let log = j.log(g);
        let last = log.last_index();
        let term = log.term(last).unwrap().unwrap_or(1);
        let hs = HardState {
            term: term + 1,
            vote: g,
            commit: last,
        };
        j.sink(g, snaps()).write(
            write(vec![entry(last + 1, term, b"after")], Some(hs)),
            tx.clone(),
            g,
        );
    }
    wait_ok(&mut rx, groups.len());
}

/// Runs `setup` on a new journal over a crashable disk, then a checkpoint
/// whose `k`-th fsync fails, crashes the disk (only what was synced
/// before stays) and reopens: for every `k` until the checkpoint completes
/// unharmed. Each reopen must rebuild exactly what `setup` left; so must
/// the reopens after further writes, and after a checkpoint of the
/// reopened journal. Returns how many fsyncs the checkpoint made.
fn every_interrupted_checkpoint_replays_the_same_state(setup: impl Fn(&Journal)) -> u64 {
    use crate::storage::vfs::crash::CrashFs;
    use crate::storage::vfs::{Fault, FaultRule, FaultyFs, FileOp};
    let root = Path::new("/node");
    let dir = root.join("journal");
    let reopen = |disk: &CrashFs, j: Journal| {
        close(j);
        disk.crash();
        Journal::open(Arc::new(disk.clone()), &dir, JournalOptions::default())
            .expect("journal reopens")
    };
    for k in 0.. {
        let disk = CrashFs::new(root);
        let fs = FaultyFs::new(Arc::new(disk.clone()));
        let j = Journal::open(Arc::new(fs.clone()), &dir, JournalOptions::default())
            .expect("journal opens");
        setup(&j);
        let before = summary(&j);
        fs.inject(FaultRule::new(FileOp::Fsync, Fault::Io).after(k).times(1));
        let checkpointed = j.checkpoint_now();
        let interrupted = fs.fired() > 0;
        assert_eq!(
            checkpointed.is_err(),
            interrupted,
            "k = {k}: {checkpointed:?}"
        );
        let j = reopen(&disk, j);
        assert_eq!(summary(&j), before, "a checkpoint stopped after {k} fsyncs");
        // Writes after the interrupted checkpoint replay too.
        write_one_more(&j);
        let after = summary(&j);
        let j = reopen(&disk, j);
        assert_eq!(
            summary(&j),
            after,
            "writes after {k} fsyncs of a checkpoint"
        );
        // And so does a checkpoint after them.
        j.checkpoint_now().expect("a checkpoint on a healthy disk");
        let j = reopen(&disk, j);
        assert_eq!(summary(&j), after, "a checkpoint after {k} fsyncs of one");
        close(j);
        if !interrupted {
            return k;
        }
    }
    unreachable!("0.. does not end")
}

/// A checkpoint stopped part-way (a crash, a full disk, a failed fsync
/// between two of its batches) is ignored on replay: a group hosted again
/// after its removal is not swallowed by the checkpoint's tombstones
/// (before: the tombstone batch alone replayed, and the group was gone).
#[test]
fn an_interrupted_checkpoint_keeps_a_group_hosted_again() {
    let fsyncs = every_interrupted_checkpoint_replays_the_same_state(|j| {
        j.create_group(4).unwrap();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let sink = j.sink(4, snaps());
        sink.write(write(vec![entry(1, 1, b"old")], None), tx.clone(), 1);
        wait_ok(&mut rx, 1);
        drop(sink);
        j.remove_group(4, (1, 1)).unwrap();
        j.create_group(4).unwrap();
        let sink = j.sink(4, snaps());
        let hs = HardState {
            term: 2,
            vote: 4,
            commit: 0,
        };
        sink.write(write(vec![entry(1, 2, b"new")], Some(hs)), tx.clone(), 2);
        wait_ok(&mut rx, 1);
        drop(sink);
        // Another group, and another tombstone.
        j.create_group(5).unwrap();
        j.create_group(6).unwrap();
        j.remove_group(6, (3, 1)).unwrap();
        assert_eq!(j.groups(), vec![4, 5]);
    });
    assert!(fsyncs >= 1, "{fsyncs}");
}

/// A checkpoint of a log longer than one of its batches holds, stopped
/// part-way, is ignored on replay: the log keeps every entry (before: the
/// group's `Reset` and its first chunk replayed, a shorter log).
#[test]
fn an_interrupted_checkpoint_keeps_a_long_log_whole() {
    let fsyncs = every_interrupted_checkpoint_replays_the_same_state(|j| {
        let (tx, mut rx) = mpsc::unbounded_channel();
        for g in [2, 3] {
            j.create_group(g).unwrap();
            let sink = j.sink(g, snaps());
            let hs = HardState {
                term: 3,
                vote: g,
                commit: 10,
            };
            // Four checkpoint chunks' worth for group 2, a small log for 3.
            let n = if g == 2 { 4 * 64 + 10 } else { 5 };
            let entries = (1..=n).map(|i| entry(i, 3, &[g as u8; 1000])).collect();
            sink.write(write(entries, Some(hs)), tx.clone(), g);
            wait_ok(&mut rx, 1);
        }
    });
    assert!(fsyncs >= 4, "{fsyncs}");
}

/// Writes `batches` as a journal's batches 1, 2, ... in `dir`.
fn write_raw_journal(dir: &Path, batches: Vec<Vec<(GroupId, Rec)>>) {
    let mut wal = Wal::open(dir, WalOptions::default()).unwrap();
    for (i, recs) in batches.into_iter().enumerate() {
        let bytes = postcard::to_allocvec(&Batch { recs }).unwrap();
        wal.append(&[entry(i as Index + 1, 1, &bytes)]).unwrap();
    }
    wal.sync().unwrap();
}

/// A journal written before checkpoints carried markers replays as it
/// did: its checkpoint's records apply as they come.
#[test]
fn a_checkpoint_without_markers_replays_as_before() {
    let dir = tempfile::tempdir().unwrap();
    let hs = HardState {
        term: 2,
        vote: 5,
        commit: 3,
    };
    write_raw_journal(
        dir.path(),
        vec![
            vec![(4, Rec::Create), (5, Rec::Append(vec![entry(1, 1, b"a")]))],
            // The old checkpoint: tombstones, then one batch per group.
            vec![(4, Rec::Remove), (4, Rec::Tombstone(2, 1))],
            vec![
                (
                    5,
                    Rec::Reset {
                        boundary: (3, 1),
                        hard_state: hs,
                    },
                ),
                (5, Rec::Append(vec![entry(4, 2, b"b")])),
            ],
        ],
    );
    let j = open(dir.path(), 64 << 20);
    assert_eq!(j.groups(), vec![5]);
    assert_eq!(j.fence(4), Some((2, 1)));
    let log = j.log(5);
    assert_eq!((log.first_index(), log.last_index()), (4, 4));
    assert_eq!(log.term(3).unwrap(), Some(1));
    assert_eq!(log.hard_state(), hs);
    close(j);
}

/// A batch of a checkpoint without the batches before it, or a marker
/// that does not open its batch, is corruption (no writer makes either).
#[test]
fn a_checkpoint_marker_out_of_place_is_corruption() {
    let marker = |first, last| (CHECKPOINT_MARKER_GROUP, Rec::Checkpoint { first, last });
    let cases = [
        vec![vec![marker(7, true)]],
        vec![
            vec![marker(1, false)],
            vec![(5, Rec::Create)],
            vec![marker(1, true)],
        ],
        vec![vec![(5, Rec::Create), marker(1, true)]],
    ];
    for (i, batches) in cases.into_iter().enumerate() {
        let dir = tempfile::tempdir().unwrap();
        write_raw_journal(dir.path(), batches);
        let err = Journal::open(
            crate::storage::vfs::real(),
            dir.path(),
            JournalOptions::default(),
        )
        .expect_err("a marker out of place");
        assert!(
            matches!(err, StorageError::Corrupt { .. }),
            "case {i}: {err:?}"
        );
    }
}

/// A group's received snapshot whose save failed leaves its log
/// uncompacted, so no later write of that group may reach the journal: a
/// later hard state carries the snapshot's commit index, over a log whose
/// stale suffix was never committed (Raft §5.4.3; invariant 4). Another
/// group writes on.
#[test]
fn a_failed_snapshot_save_stops_the_groups_later_writes() {
    use crate::storage::FileSnapshotStore;
    use crate::storage::vfs::{Fault, FaultRule, FaultyFs, FileOp};
    let dir = tempfile::tempdir().unwrap();
    let j = open(&dir.path().join("journal"), 64 << 20);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut stale: Vec<Entry> = (1..=100).map(|i| entry(i, 1, b"x")).collect();
    stale.extend((101..=150).map(|i| entry(i, 2, b"y")));
    let hs = |term, vote, commit| HardState { term, vote, commit };
    j.sink(7, snaps())
        .write(write(stale, Some(hs(2, 1, 100))), tx.clone(), 1);
    wait_ok(&mut rx, 1);
    let faulty = FaultyFs::over_real();
    let store =
        FileSnapshotStore::open_in(Arc::new(faulty.clone()), dir.path().join("snapshots"), 1)
            .unwrap();
    faulty.inject(FaultRule::new(FileOp::Rename, Fault::Io).on("snapshots"));
    let sink = j.sink(7, Arc::new(Mutex::new(Box::new(store))));
    let received = Write {
        snapshot: Some(crate::storage::Snapshot {
            meta: crate::core::SnapshotMeta {
                index: 300,
                term: 3,
                ..Default::default()
            },
            data: b"state at 300".to_vec(),
        }),
        ..write(Vec::new(), Some(hs(3, 0, 300)))
    };
    sink.write(received, tx.clone(), 2);
    // A new term, then the held-back commit index (the shutdown barrier).
    sink.write(write(Vec::new(), Some(hs(4, 0, 300))), tx.clone(), 3);
    sink.write(write(Vec::new(), Some(hs(4, 0, 301))), tx.clone(), 4);
    // Group 8 on a channel of its own: its write need not wait for group
    // 7's snapshot save (the journal's snapshot worker saves it).
    let (tx8, mut rx8) = mpsc::unbounded_channel();
    j.sink(8, snaps())
        .write(write(vec![entry(1, 1, b"z")], None), tx8, 5);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut outcomes = Vec::new();
    while outcomes.len() < 3 {
        match rx.try_recv() {
            Ok(r) => outcomes.push(r),
            Err(_) => {
                assert!(std::time::Instant::now() < deadline, "{outcomes:?}");
                std::thread::yield_now();
            }
        }
    }
    assert!(outcomes.iter().all(Result::is_err), "{outcomes:?}");
    assert_eq!(wait_ok(&mut rx8, 1), vec![5], "group 8 writes on");
    drop(sink);
    close(j);
    let j = open(&dir.path().join("journal"), 64 << 20);
    let commit = j.log(7).hard_state().commit;
    assert!(
        commit <= 100,
        "after a failed snapshot save the journal holds commit index {commit} over a log \
         whose entries 101..=150 were never committed"
    );
    assert_eq!(j.log(8).last_index(), 1);
    close(j);
}

//! A sync that fails while the write-ahead log rolls over to a new segment
//! (s61, brief: "no test for a failed sync when a WAL segment rolls").
//!
//! The sync that starts segment 2 does, in order: seal segment 1 (cut its
//! preallocated zeros, `sync_all`), create segment 2 (a temporary file,
//! `sync_all`, rename, directory fsync), append the frame to segment 2 and
//! `sync_data` it. Each of those syncs fails in turn, as Linux fails one
//! (`CrashFs::fail_syncs`: nothing of it becomes durable and its pages are
//! marked clean; a directory fsync fails before it reaches the disk), and
//! then the process restarts on the same boot, or the machine crashes
//! (losing all that was not durable, or keeping a seeded part of it).
//!
//! Invariants checked, for every such point and restart:
//! - the sync reports the failure, and the log refuses every later use
//!   (DESIGN §4: never retry after a failed fsync);
//! - the log reopens (no `Corrupt`: a sealed segment whose cut did not
//!   persist, or a new segment half born, is not damage), with every entry
//!   and the hard state of the syncs that returned `Ok`, and of the failed
//!   batch all or nothing;
//! - the reopened log takes writes that replace the failed batch's
//!   entries and roll over again, and keeps them across a crash.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::segment::segment_name;
use super::{Wal, WalOptions};
use crate::core::types::{Entry, HardState, Index, Payload, Term};
use crate::storage::vfs::crash::CrashFs;
use crate::storage::vfs::{Fault, FaultRule, FaultyFs, FileOp, SharedFs};
use crate::storage::{LogStore, StorageError};

/// Small segments: one rolls over every dozen batches.
const SEGMENT: u64 = 4096;
/// Entries per batch (one sync each).
const BATCH: Index = 3;

fn opts() -> WalOptions {
    WalOptions {
        segment_size: SEGMENT,
    }
}

fn cmd(index: Index, term: Term) -> Entry {
    Entry {
        term,
        index,
        payload: Payload::Command(vec![index as u8; 100].into()),
    }
}

fn entries(from: Index, to: Index, term: Term) -> Vec<Entry> {
    (from..=to).map(|i| cmd(i, term)).collect()
}

/// The hard state synced with the batch that starts at `from`: it commits
/// the entries before it.
fn hs(from: Index, term: Term) -> HardState {
    HardState {
        term,
        vote: 1,
        commit: from - 1,
    }
}

/// Appends the batch of term `term` starting at `from` (replacing any
/// entries from there on) with its hard state, and syncs it.
fn batch(wal: &mut Wal, from: Index, term: Term) -> Result<(), StorageError> {
    wal.append(&entries(from, from + BATCH - 1, term))?;
    wal.save_hard_state(hs(from, term))?;
    wal.sync()
}

/// The first index of the batch whose sync starts segment 2, found on a
/// throwaway disk (the frames are deterministic).
fn rolling_batch() -> Index {
    let root = Path::new("/probe");
    let fs = CrashFs::preallocating(root);
    let mut wal = Wal::open_in(Arc::new(fs), root.join("wal"), opts()).expect("open probe");
    let mut from = 1;
    while wal.segment_paths().len() < 2 {
        assert!(from < 10_000, "never rolled over");
        batch(&mut wal, from, 1).expect("probe batch");
        from += BATCH;
    }
    from - BATCH
}

/// Which sync of the roll-over fails.
#[derive(Clone, Copy, Debug)]
enum Point {
    /// Segment 1's `sync_all` after its zeros were cut.
    Seal,
    /// Segment 2's temporary file's `sync_all`, before the rename.
    NewFile,
    /// The directory fsync after segment 2's rename.
    NewEntry,
    /// Segment 2's `sync_data` of the frame the roll-over was for.
    FirstFrame,
}

/// What follows the failure.
#[derive(Clone, Copy, Debug)]
enum Restart {
    /// The process restarts on the same boot: the failed sync's clean
    /// pages may still be cached (the log drops its last segment's).
    SameBoot,
    /// The machine crashes: all that was not durable is lost.
    Crash,
    /// The machine crashes, and a seeded part of what was not durable
    /// reached the disk anyway.
    CrashKeeping(u64),
}

fn restarts() -> Vec<Restart> {
    let mut all = vec![Restart::SameBoot, Restart::Crash];
    all.extend((0..8).map(Restart::CrashKeeping));
    all
}

/// The roll-over of `point` failing, then `restart`, start to finish.
fn roll_over_fails(point: Point, restart: Restart) {
    let what = format!("{point:?}, then {restart:?}");
    let root = Path::new("/node");
    let dir: PathBuf = root.join("wal");
    let crash = CrashFs::preallocating(root);
    let faulty = FaultyFs::new(Arc::new(crash.clone()));
    let fs: SharedFs = Arc::new(faulty.clone());
    let rolling = rolling_batch();
    let mut wal = Wal::open_in(fs.clone(), &dir, opts()).expect("open wal");
    let mut from = 1;
    while from < rolling {
        batch(&mut wal, from, 1).expect("batch before the roll-over");
        from += BATCH;
    }
    assert_eq!(wal.segment_paths().len(), 1, "{what}: rolled over early");
    let acked = rolling - 1;
    match point {
        Point::Seal => crash.fail_syncs(&segment_name(1), 1),
        Point::NewFile => crash.fail_syncs(&format!("{}.tmp", segment_name(2)), 1),
        Point::NewEntry => faulty.inject(FaultRule::new(FileOp::SyncDir, Fault::Io).times(1)),
        Point::FirstFrame => crash.fail_syncs_after(&segment_name(2), 1, 1),
    }
    let failed = batch(&mut wal, rolling, 1);
    assert!(
        failed.is_err(),
        "{what}: the sync that rolls over succeeded (no fault fired)"
    );
    assert!(
        batch(&mut wal, rolling, 1).is_err(),
        "{what}: the log took a write after a failed sync"
    );
    drop(wal);
    faulty.clear();
    crash.fail_syncs("", 0);
    match restart {
        Restart::SameBoot => {}
        Restart::Crash => crash.crash(),
        Restart::CrashKeeping(seed) => crash.crash_seeded(seed),
    }
    let mut wal = Wal::open_in(fs.clone(), &dir, opts())
        .unwrap_or_else(|e| panic!("{what}: the log does not reopen: {e}"));
    let last = wal.last_index();
    let failed_last = rolling + BATCH - 1;
    assert!(
        last == acked || last == failed_last,
        "{what}: reopened with last index {last}, neither {acked} (acknowledged) nor \
         {failed_last} (the failed batch whole)"
    );
    assert_eq!(
        wal.entries(1, last + 1).map_err(|e| e.to_string()),
        Ok(entries(1, last, 1)),
        "{what}: the entries"
    );
    let want_hs = if last == acked {
        hs(rolling - BATCH, 1)
    } else {
        hs(rolling, 1)
    };
    assert_eq!(wal.hard_state(), want_hs, "{what}: the hard state");

    // A new term's entries replace the failed batch, over two more
    // roll-overs, and survive a crash.
    let segments = wal.segment_paths().len();
    let mut from = acked + 1;
    while wal.segment_paths().len() < segments + 2 {
        assert!(from < 10_000, "{what}: never rolled over again");
        batch(&mut wal, from, 2).unwrap_or_else(|e| panic!("{what}: write after reopen: {e}"));
        from += BATCH;
    }
    let written = from - 1;
    drop(wal);
    crash.crash();
    let wal = Wal::open_in(fs, &dir, opts())
        .unwrap_or_else(|e| panic!("{what}: the log does not reopen after a crash: {e}"));
    let mut want = entries(1, acked, 1);
    want.extend(entries(acked + 1, written, 2));
    assert_eq!(wal.last_index(), written, "{what}: after the second crash");
    assert_eq!(
        wal.entries(1, written + 1).map_err(|e| e.to_string()),
        Ok(want),
        "{what}: the entries after the second crash"
    );
    assert_eq!(wal.hard_state(), hs(written + 1 - BATCH, 2), "{what}");
}

#[test]
fn a_failed_sync_sealing_a_segment_keeps_the_log() {
    for restart in restarts() {
        roll_over_fails(Point::Seal, restart);
    }
}

#[test]
fn a_failed_sync_of_a_new_segment_file_keeps_the_log() {
    for restart in restarts() {
        roll_over_fails(Point::NewFile, restart);
    }
}

#[test]
fn a_failed_directory_sync_of_a_new_segment_keeps_the_log() {
    for restart in restarts() {
        roll_over_fails(Point::NewEntry, restart);
    }
}

#[test]
fn a_failed_sync_of_a_new_segments_first_frame_keeps_the_log() {
    for restart in restarts() {
        roll_over_fails(Point::FirstFrame, restart);
    }
}

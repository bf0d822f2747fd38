//! Crafted or damaged segment files at open (teeth, stop 59): each test
//! writes bytes that no crash can leave (a buggy or foreign writer, a bit
//! flip, a file copied by hand) and checks the one open-time check that
//! catches them; each check was shown to be needed by removing or
//! weakening it (the mutant is named in the test's doc).
//!
//! Invariants checked:
//! - a segment opens only with the magic and the sequence number of its
//!   file name (the first segment has no predecessor whose `prev_len`
//!   would catch a swapped file);
//! - replay never opens a log with an entry missing inside it, before it
//!   (not covered by a compaction record), or under its first index, and
//!   reports each as [`StorageError::Corrupt`], never a panic;
//! - the last segment's checkpoint, when damage took it, is written again,
//!   so the hard state survives the removal of the older segments.

use std::path::{Path, PathBuf};

use super::hand_written::write_after_frames;
use super::record::{FRAME_HEADER_LEN, FrameBuf, RecordRef};
use super::segment::{SEGMENT_HEADER_LEN, segment_name};
use super::{Wal, WalOptions};
use crate::core::types::{Entry, HardState, Index, Payload, Term};
use crate::storage::{LogStore, StorageError};

/// An entry of term 1 at `index` whose command is 8 bytes of it.
fn cmd(index: Index) -> Entry {
    Entry {
        term: 1,
        index,
        payload: Payload::Command(vec![index as u8; 8].into()),
    }
}

/// One frame per element of `frames`, each holding its records, with valid
/// checksums.
fn framed(frames: &[&[RecordRef<'_>]]) -> Vec<u8> {
    let mut out = Vec::new();
    for records in frames {
        let mut frame = FrameBuf::new();
        for r in *records {
            frame.push(r);
        }
        out.extend_from_slice(frame.finish());
    }
    out
}

/// A WAL at `path` holding entries 1..=3 (synced, closed), then `tail`
/// written after its last frame, opened again.
fn reopened_with(path: &Path, tail: &[u8]) -> Result<Wal, StorageError> {
    let mut wal = Wal::open(path, WalOptions::default()).expect("open");
    wal.append(&[cmd(1), cmd(2), cmd(3)]).expect("append");
    wal.sync().expect("sync");
    drop(wal);
    write_after_frames(&path.join(segment_name(1)), tail);
    Wal::open(path, WalOptions::default())
}

/// The open must fail as `Corrupt`, with `reason` containing `says`.
fn assert_corrupt(opened: Result<Wal, StorageError>, says: &str) {
    match opened {
        Err(StorageError::Corrupt { reason, .. }) => {
            assert!(reason.contains(says), "expected {says:?}, got {reason:?}")
        }
        Ok(w) => panic!(
            "opened at entries {}..={} (expected Corrupt: {says})",
            w.first_index(),
            w.last_index()
        ),
        Err(e) => panic!("expected Corrupt ({says}), got {e}"),
    }
}

/// A WAL at `path` whose first segment was written, synced and closed.
fn one_segment(path: &Path) -> PathBuf {
    let mut wal = Wal::open(path, WalOptions::default()).expect("open");
    wal.append(&[cmd(1), cmd(2)]).expect("append");
    wal.sync().expect("sync");
    drop(wal);
    path.join(segment_name(1))
}

/// Mutant S4 (stop 59): the magic check in `Segment::open` removed.
#[test]
fn a_segment_with_a_bad_magic_is_corruption_at_offset_0() {
    let dir = tempfile::tempdir().expect("tempdir");
    let seg = one_segment(dir.path());
    let mut bytes = std::fs::read(&seg).expect("segment");
    bytes[0] ^= 0x01;
    std::fs::write(&seg, &bytes).expect("write");
    match Wal::open(dir.path(), WalOptions::default()) {
        Err(StorageError::Corrupt { file, offset, .. }) => {
            assert_eq!((file, offset), (seg, 0));
        }
        Ok(w) => panic!("opened at last index {}", w.last_index()),
        Err(e) => panic!("expected Corrupt, got {e}"),
    }
}

/// Mutant S3 (stop 59): the check that a segment's header names the
/// sequence number of its file name removed. The first segment has no
/// predecessor whose recorded length would catch a file copied over it.
#[test]
fn a_segment_whose_header_names_another_sequence_is_corruption_at_offset_8() {
    let dir = tempfile::tempdir().expect("tempdir");
    let seg = one_segment(dir.path());
    let mut bytes = std::fs::read(&seg).expect("segment");
    bytes[8..16].copy_from_slice(&7u64.to_le_bytes());
    std::fs::write(&seg, &bytes).expect("write");
    match Wal::open(dir.path(), WalOptions::default()) {
        Err(StorageError::Corrupt { file, offset, .. }) => {
            assert_eq!((file, offset), (seg, 8));
        }
        Ok(w) => panic!("opened at last index {}", w.last_index()),
        Err(e) => panic!("expected Corrupt, got {e}"),
    }
}

/// Mutant S5 (stop 59): the final check for a missing slot among the
/// replayed entries removed. An entry 6 after 1..=3 leaves 4 and 5 missing
/// (a gap far below `MAX_REPLAY_GAP`): the log opened, and `term(4)` said 0.
#[test]
fn a_small_gap_inside_the_replayed_entries_is_corruption() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tail = framed(&[&[RecordRef::Entry(&cmd(6))]]);
    assert_corrupt(
        reopened_with(&dir.path().join("wal"), &tail),
        "entry 4 is missing",
    );
}

/// Replay applies records in order: an entry record replaces whatever the
/// log held from its index on (as the append that wrote it did), whether or
/// not a truncation record came first (a writer that left it out). Mutant
/// M175 (teeth s61): the replay's `slots.truncate(pos)` removed survived
/// every `storage::` test; an entry 2 of term 2 after 1..=3 was then slotted
/// at position 4, so `last_index` said 4 and `term(4)` answered entry 2's.
#[test]
fn a_replayed_entry_replaces_the_entries_from_its_index_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let two = Entry {
        term: 2,
        index: 2,
        payload: Payload::Command(vec![9; 8].into()),
    };
    let tail = framed(&[&[RecordRef::Entry(&two)]]);
    let wal = reopened_with(&dir.path().join("wal"), &tail).expect("opens");
    assert_eq!((wal.first_index(), wal.last_index()), (1, 2));
    assert_eq!(wal.term(2).expect("term"), Some(2));
    assert_eq!(wal.term(3).expect("term"), None);
    assert_eq!(wal.entries(1, 3).expect("entries"), vec![cmd(1), two]);
}

/// Mutant S6 (stop 59): "entry below the first index" removed. After a
/// compaction to 5, an entry 3: the replay's `index - first` underflowed (a
/// panic in a debug build).
#[test]
fn an_entry_below_the_first_index_is_corruption_not_a_panic() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tail = framed(&[
        &[RecordRef::Compact { upto: 5, term: 1 }],
        &[RecordRef::Entry(&cmd(3))],
    ]);
    assert_corrupt(
        reopened_with(&dir.path().join("wal"), &tail),
        "entry 3 below the first index 6",
    );
}

/// Mutant S7 (stop 59): "truncation below the first index" removed. After
/// a compaction to 5, a truncation from 2: `from - first` underflowed (a
/// panic in a debug build; a silent no-op in a release build).
#[test]
fn a_truncation_below_the_first_index_is_corruption_not_a_panic() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tail = framed(&[
        &[RecordRef::Compact { upto: 5, term: 1 }],
        &[RecordRef::Truncate { from: 2 }],
    ]);
    assert_corrupt(
        reopened_with(&dir.path().join("wal"), &tail),
        "truncation from 2 below the first index 6",
    );
}

/// Mutant S8 (stop 59): in a truncation into the replay hole, `from <=
/// missing` weakened to `from <= missing + 1`. A compaction to 10, then
/// entry 15 (entries 11..=14 missing), then a truncation from 12: entry 11
/// is still missing, and the log must not open.
#[test]
fn a_truncation_one_past_the_start_of_a_replay_hole_leaves_it_missing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tail = framed(&[
        &[RecordRef::Compact { upto: 10, term: 1 }],
        &[RecordRef::Entry(&cmd(15))],
        &[RecordRef::Truncate { from: 12 }],
    ]);
    assert_corrupt(
        reopened_with(&dir.path().join("wal"), &tail),
        "entry 11 is missing",
    );
}

/// Mutant S9 (stop 59): a compaction counted as covering the replay hole
/// one entry short of it (`upto + 2 >= first` for `upto + 1 >= first`). A
/// compaction to 10, entry 15 (11..=14 missing), then a compaction to 13:
/// entry 14 is still missing; with the mutant the log opened and
/// `term(14)` reported the compaction's term.
#[test]
fn a_compaction_two_below_the_first_replayed_entry_leaves_one_missing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tail = framed(&[
        &[RecordRef::Compact { upto: 10, term: 1 }],
        &[RecordRef::Entry(&cmd(15))],
        &[RecordRef::Compact { upto: 13, term: 1 }],
    ]);
    assert_corrupt(
        reopened_with(&dir.path().join("wal"), &tail),
        "entry 14 is missing",
    );
}

/// Mutant S2 (stop 59): the checkpoint of the last segment not written
/// again when damage took it. A bit flip in the checkpoint of a freshly
/// rolled segment, whose next frame was lost, makes it the torn last frame:
/// it is zeroed. Without a new checkpoint, once compaction removed the
/// older segments, replay started from the default hard state: the term
/// and vote were lost (a node could vote twice in a term, Raft §5.2).
#[test]
fn a_damaged_checkpoint_of_the_last_segment_is_restored() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("wal");
    let opts = WalOptions { segment_size: 1024 };
    let hs = HardState {
        term: 5,
        vote: 2,
        commit: 0,
    };
    let entry = |index: Index, term: Term| Entry {
        term,
        index,
        payload: Payload::Command(vec![index as u8; 100].into()),
    };
    let mut wal = Wal::open(&path, opts.clone()).expect("open");
    wal.save_hard_state(hs).expect("hard state");
    let mut last = 0;
    while wal.segment_paths().len() < 2 {
        last += 1;
        wal.append(&[entry(last, 5)]).expect("append");
        wal.sync().expect("sync");
        assert!(last < 100, "no roll over");
    }
    drop(wal);
    // Entry `last` went into the new segment after its checkpoint: lose it
    // (zeros, as if its write never reached the disk) and flip a bit of the
    // checkpoint's payload.
    let seg = path.join(segment_name(2));
    let mut bytes = std::fs::read(&seg).expect("segment");
    let start = SEGMENT_HEADER_LEN as usize;
    let n = u32::from_le_bytes(bytes[start..start + 4].try_into().expect("4 bytes")) as usize;
    let checkpoint_end = start + FRAME_HEADER_LEN + n;
    bytes[checkpoint_end..].fill(0);
    bytes[start + FRAME_HEADER_LEN] ^= 0x01;
    std::fs::write(&seg, &bytes).expect("write");

    let mut wal = Wal::open(&path, opts.clone()).expect("open with repair");
    assert_eq!((wal.hard_state(), wal.last_index()), (hs, last - 1));
    wal.append(&[entry(last, 5), entry(last + 1, 5)])
        .expect("append");
    wal.sync().expect("sync");
    wal.compact_prefix(last - 1, 5).expect("compact");
    wal.sync().expect("sync");
    assert_eq!(wal.segment_paths(), [seg], "older segments removed");
    drop(wal);
    let wal = Wal::open(&path, opts).expect("reopen");
    assert_eq!(
        (wal.hard_state(), wal.first_index(), wal.last_index()),
        (hs, last, last + 1),
        "term and vote lost with the older segments"
    );
    assert_eq!(
        wal.entries(last, last + 2).expect("entries"),
        [entry(last, 5), entry(last + 1, 5)]
    );
}

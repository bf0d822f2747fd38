//! The WAL at the core's index bound [`MAX_INDEX`] (2^62), on disk (teeth,
//! stop 53): an entry at the bound itself is written, replayed and read
//! back with its bytes; an entry one past it, written into a segment by
//! hand with valid framing and checksum (a buggy or foreign writer, never
//! a torn write), is reported as corruption naming the file, at open,
//! never replayed into a log the core would refuse, and never a panic.
//!
//! (`log::tests` covers the bound with compactions and with the write
//! side's refusal; its entry test compares only the first and last index.)

use std::path::Path;

use super::hand_written::write_after_frames;
use super::record::{FrameBuf, RecordRef};
use super::segment::segment_name;
use super::{Wal, WalOptions};
use crate::core::inbound::MAX_INDEX;
use crate::core::types::{Entry, Index, Payload};
use crate::storage::{LogStore, StorageError};

/// An entry of term 2 at `index` whose command names it.
fn entry(index: Index) -> Entry {
    Entry {
        term: 2,
        index,
        payload: Payload::Command(format!("entry {index}").into_bytes().into()),
    }
}

/// A WAL at `path` compacted to `upto` (term 1) with `entries` after it,
/// synced and closed.
fn written(path: &Path, upto: Index, entries: &[Entry]) {
    let mut wal = Wal::open(path, WalOptions::default()).expect("open");
    wal.compact_prefix(upto, 1).expect("compact");
    wal.append(entries).expect("append");
    wal.sync().expect("sync");
}

/// Appends one frame holding `record`, with a valid checksum, after the
/// last frame of the WAL's only segment (in its preallocated zeros).
fn append_by_hand(path: &Path, record: RecordRef<'_>) {
    let mut frame = FrameBuf::new();
    frame.push(&record);
    write_after_frames(&path.join(segment_name(1)), frame.finish());
}

/// An entry at the bound is appended, replayed and read back (index, term
/// and command), and the reopened WAL takes nothing past it.
#[test]
fn an_entry_at_the_bound_is_appended_replayed_and_read_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("wal");
    let tail = [entry(MAX_INDEX - 1), entry(MAX_INDEX)];
    written(&path, MAX_INDEX - 2, &tail);
    let mut wal = Wal::open(&path, WalOptions::default()).expect("reopen");
    assert_eq!(
        (wal.first_index(), wal.last_index()),
        (MAX_INDEX - 1, MAX_INDEX)
    );
    assert_eq!(
        wal.entries(MAX_INDEX - 1, MAX_INDEX + 1).expect("entries"),
        tail,
        "the entries replayed up to the bound"
    );
    assert_eq!(wal.term(MAX_INDEX).expect("term"), Some(2));
    // Still usable at the bound: the entry there is overwritten (a new
    // leader's, Raft §5.3) and replays as the new one.
    let replaced = Entry {
        term: 3,
        ..entry(MAX_INDEX)
    };
    wal.append(std::slice::from_ref(&replaced))
        .expect("overwrite at the bound");
    let past = wal.append(&[entry(MAX_INDEX + 1)]);
    assert!(
        matches!(past, Err(StorageError::Invalid(_))),
        "an append past the bound: {past:?}"
    );
    wal.sync().expect("sync");
    drop(wal);
    let wal = Wal::open(&path, WalOptions::default()).expect("reopen");
    assert_eq!(
        wal.entries(MAX_INDEX, MAX_INDEX + 1).expect("entries"),
        [replaced],
        "the entry at the bound after its overwrite"
    );
}

/// An entry one past the bound, right after the last entry (no gap, which
/// replay refuses for another reason), is corruption at open.
#[test]
fn an_entry_past_the_bound_on_disk_is_corruption() {
    // After entries up to the bound, and after a compaction to it (the
    // log empty, its next index one past the bound).
    for (upto, before) in [
        (MAX_INDEX - 1, vec![entry(MAX_INDEX)]),
        (MAX_INDEX, Vec::new()),
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("wal");
        written(&path, upto, &before);
        let past = entry(MAX_INDEX + 1);
        append_by_hand(&path, RecordRef::Entry(&past));
        match Wal::open(&path, WalOptions::default()) {
            Err(StorageError::Corrupt { file, reason, .. }) => {
                assert_eq!(file, path.join(segment_name(1)), "{reason}");
                assert!(reason.contains("past any log"), "{reason}");
            }
            Err(other) => panic!(
                "an entry past the bound (after {upto}) failed the open as {other:?}, not as corruption"
            ),
            Ok(wal) => panic!(
                "an entry past the bound (after {upto}) replayed: the WAL opened with entries {}..={}",
                wal.first_index(),
                wal.last_index()
            ),
        }
    }
}

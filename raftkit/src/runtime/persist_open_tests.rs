//! [`persist::open_stores`]: what a node restarts from, at the edges of the
//! log and the latest snapshot.
//!
//! The restored state is the snapshot, then every entry the log holds after
//! it (none if the log disagrees with the snapshot's last entry, Raft §7);
//! afterwards the log continues right after the snapshot (its first index
//! is the snapshot's index + 1, or lower if no snapshot covers it), and a
//! log that starts after that is refused (entries exist nowhere).
//!
//! These tests came from the stop-54 mutation pass over `persist.rs`: the
//! edges (exactly one entry after the snapshot; a snapshot ending exactly at
//! the log's first entry; a log starting exactly after the snapshot) were
//! untested.

use std::path::PathBuf;

use super::persist::{self, Opened};
use crate::core::types::{Entry, HardState, Index, Payload, SnapshotMeta, Term};
use crate::error::Error;
use crate::storage::{LogStore, MemLogStore, MemSnapshotStore, Snapshot, SnapshotStore};

fn entry(index: Index, term: Term) -> Entry {
    Entry {
        term,
        index,
        payload: Payload::Command(vec![index as u8; 8].into()),
    }
}

/// A log holding `first..=last` of term `term` (compacted behind `first`),
/// with a hard state so that it is never taken for an empty store.
fn log(first: Index, last: Index, term: Term) -> MemLogStore {
    let mut log = MemLogStore::new();
    let all: Vec<Entry> = (1..=last).map(|i| entry(i, term)).collect();
    log.append(&all).expect("append");
    if first > 1 {
        log.compact_prefix(first - 1, term).expect("compact");
    }
    log.save_hard_state(HardState {
        term,
        vote: 1,
        commit: last,
    })
    .expect("hard state");
    log
}

/// A snapshot store holding one snapshot at `index`, `term` (none if
/// `index` is 0).
fn snapshots(index: Index, term: Term) -> MemSnapshotStore {
    let mut store = MemSnapshotStore::new(0);
    if index > 0 {
        store
            .save(&Snapshot {
                meta: SnapshotMeta {
                    index,
                    term,
                    ..SnapshotMeta::default()
                },
                data: b"state".to_vec(),
            })
            .expect("save snapshot");
    }
    store
}

fn open(log: MemLogStore, snapshots: MemSnapshotStore) -> Result<Opened, Error> {
    persist::open_stores(
        Box::new(log),
        Box::new(snapshots),
        (PathBuf::from("/node/wal"), PathBuf::from("/node/snapshots")),
    )
}

/// The (index, term) of the restored entries.
fn restored(opened: &Opened) -> Vec<(Index, Term)> {
    opened
        .restored
        .as_ref()
        .map(|r| r.entries.iter().map(|e| (e.index, e.term)).collect())
        .unwrap_or_default()
}

/// The last entry of the log is restored also when it is the only one
/// after the snapshot (or the only one at all): a node that dropped it
/// would forget an entry it acknowledged, which may be committed, and
/// could then win an election without it (Raft §5.4.1).
#[test]
fn the_only_entry_after_the_snapshot_is_restored() {
    // Snapshot at 5, the log compacted behind it, one entry after it.
    let opened = open(log(6, 6, 2), snapshots(5, 2)).expect("open");
    assert_eq!(
        restored(&opened),
        vec![(6, 2)],
        "snapshot at 5, log 6..=6: the entry at 6 was not restored"
    );
    // No snapshot, a single entry.
    let opened = open(log(1, 1, 1), snapshots(0, 0)).expect("open");
    assert_eq!(
        restored(&opened),
        vec![(1, 1)],
        "no snapshot, log 1..=1: the entry at 1 was not restored"
    );
    // Several entries after the snapshot: all of them.
    let opened = open(log(6, 8, 2), snapshots(5, 2)).expect("open");
    assert_eq!(restored(&opened), vec![(6, 2), (7, 2), (8, 2)]);
}

/// A log that starts right after the snapshot is the normal state after a
/// compaction and opens; one that starts later is refused (the entries in
/// between exist nowhere), as is a log compacted behind a missing snapshot.
#[test]
fn a_log_starting_right_after_the_snapshot_opens_and_a_gap_is_refused() {
    let opened = open(log(6, 9, 2), snapshots(5, 2));
    assert!(
        opened.is_ok(),
        "snapshot at 5, log 6..=9 was refused: {:?}",
        opened.err()
    );
    let opened = open(log(1, 3, 1), snapshots(0, 0));
    assert!(
        opened.is_ok(),
        "no snapshot, log 1..=3 was refused: {:?}",
        opened.err()
    );
    for (first, snapshot) in [(7, 5), (2, 0)] {
        match open(log(first, 9, 2), snapshots(snapshot, 2)) {
            Ok(_) => panic!("snapshot at {snapshot}, log {first}..=9: the gap was not refused"),
            Err(e) => {
                let message = e.to_string();
                assert!(
                    message.contains("exist nowhere"),
                    "snapshot at {snapshot}, log {first}..=9: unexpected error {message}"
                );
            }
        }
    }
}

/// A crash between saving a snapshot and compacting the log behind it may
/// leave the log starting exactly at the snapshot's last entry: opening
/// finishes the compaction, so the log continues right after the snapshot.
/// If the log disagrees with the snapshot there (Raft §7: a snapshot whose
/// last entry the log does not hold with its term replaces the whole log),
/// none of its entries is restored and none is left in the log.
#[test]
fn a_log_starting_at_the_snapshot_index_is_compacted_behind_it() {
    // The log agrees with the snapshot: entries after it are kept.
    let opened = open(log(5, 8, 2), snapshots(5, 2)).expect("open");
    assert_eq!(
        (opened.log.first_index(), opened.log.last_index()),
        (6, 8),
        "snapshot at 5, log 5..=8: the log was not compacted behind the snapshot"
    );
    assert_eq!(restored(&opened), vec![(6, 2), (7, 2), (8, 2)]);
    // The log disagrees (its entry 5 has term 1, the snapshot's term 3):
    // nothing of it is restored, and nothing of it stays behind to be
    // taken for this node's log later.
    let opened = open(log(5, 8, 1), snapshots(5, 3)).expect("open");
    assert_eq!(restored(&opened), Vec::<(Index, Term)>::new());
    assert_eq!(
        (opened.log.first_index(), opened.log.last_index()),
        (6, 5),
        "snapshot at 5 of term 3, log 5..=8 of term 1: the conflicting entries stayed in the log"
    );
    assert_eq!(opened.log.term(5).expect("term"), Some(3));
}

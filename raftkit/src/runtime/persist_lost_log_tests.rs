//! [`persist::open`] on a data directory whose write-ahead log was lost
//! (`wal/` removed, restored from a partial backup, emptied): it refuses to
//! start, instead of restarting with term 0 and no vote (a second vote in a
//! term it voted in, Raft §5.2) or founding the cluster again. A directory
//! that crashed during its first start (`peer.meta` saved, the log empty
//! or never created) and one written by a release before the `wal.created`
//! marker still open.

use std::path::Path;
use std::sync::Arc;

use super::persist::{self, Opened, StorageChoice};
use crate::core::types::{Entry, HardState, Index, Payload, SnapshotMeta, Term};
use crate::error::Error;
use crate::storage::vfs::crash::CrashFs;
use crate::storage::vfs::{SharedFs, Vfs};
use crate::storage::{FileSnapshotStore, LogStore, Snapshot, SnapshotStore, Wal, WalOptions};

fn entries(from: Index, to: Index, term: Term) -> Vec<Entry> {
    (from..=to)
        .map(|index| Entry {
            term,
            index,
            payload: Payload::Command(vec![index as u8; 8].into()),
        })
        .collect()
}

fn open(fs: &SharedFs, root: &Path) -> Result<Opened, Error> {
    persist::open(
        &StorageChoice::Disk(root.to_path_buf()),
        fs,
        WalOptions::default(),
    )
}

/// Removes every segment of the log in `root/wal`.
fn lose_the_log(fs: &CrashFs, root: &Path) {
    let dir = root.join("wal");
    let names = fs.list_dir(&dir).expect("list wal");
    let mut removed = 0;
    for name in names.iter().filter(|n| n.ends_with(".wal")) {
        fs.remove_file(&dir.join(name)).expect("remove segment");
        removed += 1;
    }
    assert!(removed > 0, "no segment to remove in {names:?}");
}

const VOTED: HardState = HardState {
    term: 5,
    vote: 3,
    commit: 40,
};

/// A node that voted and took a snapshot, then lost its log: the open
/// refuses (before: it restarted with term 0 and no vote).
#[test]
fn a_lost_log_beside_a_snapshot_is_refused() {
    let root = Path::new("/node");
    let crash = CrashFs::new(root);
    let fs: SharedFs = Arc::new(crash.clone());
    let mut wal = Wal::open_in(fs.clone(), root.join("wal"), WalOptions::default()).expect("wal");
    wal.append(&entries(1, 50, 5)).expect("append");
    wal.save_hard_state(VOTED).expect("hard state");
    wal.sync().expect("sync");
    drop(wal);
    let mut store =
        FileSnapshotStore::open_in(fs.clone(), root.join("snapshots"), 1).expect("open");
    store
        .save(&Snapshot {
            meta: SnapshotMeta {
                index: 40,
                term: 5,
                ..SnapshotMeta::default()
            },
            data: b"state".to_vec(),
        })
        .expect("save");
    drop(store);
    lose_the_log(&crash, root);
    match open(&fs, root) {
        Err(Error::Storage(msg)) => assert!(msg.contains("/node/wal"), "{msg}"),
        Err(e) => panic!("refused, but not as a storage error: {e}"),
        Ok(opened) => panic!(
            "a lost log opened, with hard state {:?}",
            opened.restored.map(|r| r.hard_state)
        ),
    }
}

/// A node that voted (no snapshot yet) and restarted since, then lost its
/// log: the open refuses (before: it started fresh, and with `bootstrap`
/// founded the cluster again at term 1).
#[test]
fn a_lost_log_without_a_snapshot_is_refused() {
    let root = Path::new("/node");
    let crash = CrashFs::new(root);
    let fs: SharedFs = Arc::new(crash.clone());
    let mut opened = open(&fs, root).expect("first open");
    assert!(opened.restored.is_none(), "a new directory holds nothing");
    opened.log.append(&entries(1, 3, 5)).expect("append");
    opened.log.save_hard_state(VOTED).expect("hard state");
    opened.log.sync().expect("sync");
    drop(opened);
    crash.crash();
    let opened = open(&fs, root).expect("restart");
    assert_eq!(opened.restored.as_ref().map(|r| r.hard_state), Some(VOTED));
    drop(opened);
    crash.crash();
    lose_the_log(&crash, root);
    match open(&fs, root) {
        Err(Error::Storage(msg)) => assert!(msg.contains("/node/wal"), "{msg}"),
        Err(e) => panic!("refused, but not as a storage error: {e}"),
        Ok(opened) => panic!(
            "a lost log opened, with hard state {:?}",
            opened.restored.map(|r| r.hard_state)
        ),
    }
}

/// A first start that crashed before its log was created, or right after,
/// still opens: with an empty log, and without one.
#[test]
fn a_first_start_that_crashed_still_opens() {
    let root = Path::new("/node");
    let crash = CrashFs::new(root);
    let fs: SharedFs = Arc::new(crash.clone());
    // peer.meta saved, then a crash before the log was opened.
    crate::storage::vfs::write_atomic(&*fs, &root.join("peer.meta"), b"meta").expect("meta");
    crash.crash();
    let opened = open(&fs, root).expect("open without a log");
    assert!(opened.restored.is_none());
    drop(opened);
    // A crash right after the log was created: the next open finds it empty.
    crash.crash();
    let opened = open(&fs, root).expect("open with an empty log");
    assert!(opened.restored.is_none());
}

/// A data directory written by a release before the marker (a log, no
/// `wal.created`) opens, and is marked from then on.
#[test]
fn a_directory_from_the_previous_release_opens() {
    let root = Path::new("/node");
    let crash = CrashFs::new(root);
    let fs: SharedFs = Arc::new(crash.clone());
    let mut wal = Wal::open_in(fs.clone(), root.join("wal"), WalOptions::default()).expect("wal");
    wal.append(&entries(1, 3, 5)).expect("append");
    wal.save_hard_state(VOTED).expect("hard state");
    wal.sync().expect("sync");
    drop(wal);
    let opened = open(&fs, root).expect("open");
    assert_eq!(opened.restored.as_ref().map(|r| r.hard_state), Some(VOTED));
    drop(opened);
    crash.crash();
    lose_the_log(&crash, root);
    assert!(
        open(&fs, root).is_err(),
        "the open of the previous release's directory did not mark it"
    );
}

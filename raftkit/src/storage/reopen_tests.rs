//! Reopening a data directory after a process (not the machine) stopped:
//! what the stores report at open must survive a later crash, and an open
//! must not start afresh from a directory that lost its log.
//!
//! The crashable file system (`vfs::crash::CrashFs`) keeps unsynced bytes
//! readable across a reopen, as the page cache keeps them across a process
//! exit; `FaultyFs` over it stops a sync from reaching it, which models a
//! process killed between its write and its `fdatasync`.

use std::path::Path;
use std::sync::Arc;

use super::vfs::crash::CrashFs;
use super::vfs::{Fault, FaultRule, FaultyFs, FileOp};
use super::*;
use crate::core::types::{Entry, HardState, Index, Payload, Term};

fn entries(from: Index, to: Index, term: Term) -> Vec<Entry> {
    (from..=to)
        .map(|index| Entry {
            term,
            index,
            payload: Payload::Command(vec![index as u8; 100].into()),
        })
        .collect()
}

/// Found by review (stop 56, finding 1): a frame written but never synced
/// (a process killed between the write and its `fdatasync`, or a failed
/// `fdatasync`) sits in the page cache; the next process on the same boot
/// read it at open and treated it as durable (entries it acknowledged, a
/// vote it re-granted without a write), and a power cut then took it. Open
/// syncs every segment, so what it reports is durable.
#[test]
fn what_a_reopened_log_reports_survives_a_crash() {
    let root = Path::new("/node");
    let dir = root.join("wal");
    let crash = CrashFs::new(root);
    let faulty = FaultyFs::new(Arc::new(crash.clone()));
    let opts = WalOptions {
        segment_size: 1 << 20,
    };
    let mut wal = Wal::open_in(Arc::new(faulty.clone()), &dir, opts.clone()).expect("open wal");
    wal.append(&entries(1, 3, 1)).expect("append");
    wal.sync().expect("sync");
    // The frame is written; its fdatasync never reaches the disk (the
    // process is gone, or the sync failed).
    faulty.inject(FaultRule::new(FileOp::Fsync, Fault::Io).on(".wal").times(1));
    wal.append(&entries(4, 6, 2)).expect("append");
    wal.save_hard_state(HardState {
        term: 2,
        vote: 7,
        commit: 3,
    })
    .expect("hard state");
    assert!(wal.sync().is_err(), "the injected fault did not fire");
    drop(wal);

    // A new process on the same boot: no crash yet.
    let wal = Wal::open_in(Arc::new(faulty.clone()), &dir, opts.clone()).expect("reopen");
    let reported = (wal.last_index(), wal.hard_state());
    drop(wal);
    crash.crash();
    let wal = Wal::open_in(Arc::new(faulty.clone()), &dir, opts).expect("reopen after crash");
    assert_eq!(
        (wal.last_index(), wal.hard_state()),
        reported,
        "what the reopened log reported as durable was lost at a crash"
    );
}

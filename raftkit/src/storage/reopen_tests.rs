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
use super::vfs::{Fault, FaultRule, FaultyFs, FileOp, Vfs};
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

/// Found by review (stop 56, finding 1(ii)): an `fdatasync` that fails
/// with EIO leaves its pages *clean* on Linux, holding the frame's bytes
/// while the device never got them; a later sync does not write them. A
/// node that stopped on the failure and was restarted on the same boot read
/// them back and reported the frame's entries, term and vote as durable
/// (the open's own sync cannot help: nothing is dirty). A crash, at any
/// time later, then lost them. The open now drops the last segment's
/// cached pages before reading it, so it reports what is on the disk; and
/// the log it reports survives a crash after more writes.
#[test]
fn a_failed_fsync_is_not_read_back_on_the_same_boot() {
    let root = Path::new("/node");
    let dir = root.join("wal");
    let crash = CrashFs::new(root);
    let fs: Arc<dyn Vfs> = Arc::new(crash.clone());
    let opts = WalOptions {
        segment_size: 1 << 20,
    };
    let durable_hs = HardState {
        term: 1,
        vote: 3,
        commit: 2,
    };
    let mut wal = Wal::open_in(fs.clone(), &dir, opts.clone()).expect("open wal");
    wal.append(&entries(1, 3, 1)).expect("append");
    wal.save_hard_state(durable_hs).expect("hard state");
    wal.sync().expect("sync");
    crash.fail_syncs(".wal", 1);
    wal.append(&entries(4, 6, 2)).expect("append");
    wal.save_hard_state(HardState {
        term: 2,
        vote: 7,
        commit: 3,
    })
    .expect("hard state");
    assert!(wal.sync().is_err(), "the failing sync did not fail");
    // The node stops on the failure (fail-stop) and is restarted at once:
    // same boot, no crash.
    drop(wal);
    let mut wal = Wal::open_in(fs.clone(), &dir, opts.clone()).expect("reopen");
    assert_eq!(
        (wal.last_index(), wal.hard_state()),
        (3, durable_hs),
        "the reopened log reports what a failed fsync never wrote"
    );
    // It works on: a new frame, synced, then a power cut.
    wal.append(&entries(4, 4, 3)).expect("append after reopen");
    wal.sync().expect("sync after reopen");
    drop(wal);
    crash.crash();
    let wal = Wal::open_in(fs, &dir, opts).expect("reopen after crash");
    assert_eq!(wal.last_index(), 4);
    assert_eq!(
        wal.entries(1, 5).expect("entries"),
        [entries(1, 3, 1), entries(4, 4, 3)].concat()
    );
    assert_eq!(wal.hard_state(), durable_hs);
}

/// Checked (stop 57, task 1): a snapshot file whose fsync failed is never
/// trusted by a reopen on the same boot. It is written under a temporary
/// name and renamed only after its `sync_all` succeeded; a failed sync
/// removes the temporary file, and an open deletes any left over. So the
/// store reports the previous snapshot, before and after a crash.
#[test]
fn a_snapshot_whose_fsync_failed_is_not_trusted_at_reopen() {
    use crate::core::types::SnapshotMeta;
    let root = Path::new("/node");
    let dir = root.join("snapshots");
    let crash = CrashFs::new(root);
    let fs: Arc<dyn Vfs> = Arc::new(crash.clone());
    let snapshot = |index: Index, byte: u8| Snapshot {
        meta: SnapshotMeta {
            index,
            term: 1,
            ..SnapshotMeta::default()
        },
        data: vec![byte; 3000],
    };
    let mut store = FileSnapshotStore::open_in(fs.clone(), &dir, 1).expect("open");
    store.save(&snapshot(5, 1)).expect("save");
    crash.fail_syncs(".snap", 1);
    assert!(
        store.save(&snapshot(9, 2)).is_err(),
        "the failing sync did not fail"
    );
    drop(store);
    let store = FileSnapshotStore::open_in(fs.clone(), &dir, 1).expect("reopen");
    assert_eq!(store.latest().expect("latest"), Some(snapshot(5, 1)));
    drop(store);
    crash.crash();
    let store = FileSnapshotStore::open_in(fs, &dir, 1).expect("reopen after crash");
    assert_eq!(store.latest().expect("latest"), Some(snapshot(5, 1)));
}

/// Found by review (stop 56, finding 4): zeros ending the last segment
/// less than a frame header's length after its content (content ending 1
/// to 11 bytes before the end of a preallocation step) were "repaired" as a
/// torn tail at every open: a warning about zeroing the torn tail, zeros
/// written over zeros and an extra fsync. They end the content, as longer
/// zeros do; nothing is written at open.
#[test]
fn zeros_shorter_than_a_frame_header_are_not_a_torn_tail() {
    // A frame header is 12 bytes (`wal::record::FRAME_HEADER_LEN`).
    for extra in 1..12 {
        let root = Path::new("/node");
        let dir = root.join("wal");
        let crash = CrashFs::new(root);
        let faulty = FaultyFs::new(Arc::new(crash.clone()));
        let opts = WalOptions {
            segment_size: 1 << 20,
        };
        let mut wal = Wal::open_in(Arc::new(faulty.clone()), &dir, opts.clone()).expect("open");
        wal.append(&entries(1, 3, 1)).expect("append");
        wal.sync().expect("sync");
        let segment = wal.segment_paths().pop().expect("a segment");
        drop(wal);
        // The zeros a preallocation step leaves after the content.
        let file = crash
            .open(&segment, super::vfs::OpenMode::Existing)
            .expect("open segment");
        let size = file.size().expect("size");
        file.set_len(size + extra).expect("extend");
        file.sync_all().expect("sync");
        drop(file);
        faulty.inject(FaultRule::new(FileOp::Write, Fault::Io).on(".wal"));
        let wal = Wal::open_in(Arc::new(faulty.clone()), &dir, opts).unwrap_or_else(|e| {
            panic!("{extra} zero bytes after the content were repaired as a torn tail: {e}")
        });
        assert_eq!(wal.last_index(), 3);
        assert_eq!(faulty.fired(), 0, "the open wrote to the log");
    }
}

/// Teeth (stop 59, S1): a torn last frame whose payload holds bytes that
/// check out as a frame header (client bytes can: a header is a length and
/// the checksum of that length). The repair zeros and syncs what follows
/// the frame header before it zeros the header (`Segment::torn_or_corrupt`):
/// a crash during the repair (at any of its syncs, any subset of the
/// unsynced writes kept) or after it must leave a log that opens with the
/// same entries. Zeroing the header first, or not syncing the body's zeros,
/// can leave a zeroed header over the planted one: `Corrupt`, and the node
/// never restarts.
#[test]
fn a_crash_in_or_after_a_torn_tail_repair_over_a_planted_header_opens() {
    let root = Path::new("/node");
    let dir = root.join("wal");
    let opts = WalOptions {
        segment_size: 1 << 20,
    };
    let mut failures = Vec::new();
    for at in 0..8u64 {
        for seed in 0..32u64 {
            let crash = CrashFs::new(root);
            let fs: Arc<dyn Vfs> = Arc::new(crash.clone());
            let mut wal = Wal::open_in(fs.clone(), &dir, opts.clone()).expect("open");
            wal.append(&entries(1, 3, 1)).expect("append");
            wal.sync().expect("sync");
            drop(wal);
            let seg = dir.join("00000000000000000001.wal");
            let bytes = fs.read(&seg).expect("read");
            // The end of the frames: `len:u32le crc hcrc payload[len]`
            // after the 16-byte segment header.
            let mut end = 16usize;
            while let Some(h) = bytes.get(end..end + 4) {
                let n = u32::from_le_bytes(h.try_into().expect("4 bytes")) as usize;
                if n == 0 {
                    break;
                }
                end += 12 + n;
            }
            // A last frame whose header checks out and whose payload fails
            // its checksum (torn), planting a header that checks out.
            let n = 2000u32;
            let mut frame = Vec::new();
            frame.extend_from_slice(&n.to_le_bytes());
            frame.extend_from_slice(&0xdead_beefu32.to_le_bytes());
            frame.extend_from_slice(&crc32fast::hash(&n.to_le_bytes()).to_le_bytes());
            let mut payload = vec![0xabu8; n as usize];
            let len = 40u32.to_le_bytes();
            payload[1000..1004].copy_from_slice(&len);
            payload[1004..1008].copy_from_slice(&[0; 4]);
            payload[1008..1012].copy_from_slice(&crc32fast::hash(&len).to_le_bytes());
            frame.extend_from_slice(&payload);
            let f = fs
                .open(&seg, super::vfs::OpenMode::Existing)
                .expect("open segment");
            f.write_all_at(&frame, end as u64).expect("write");
            f.sync_data().expect("sync");
            drop(f);
            crash.crash_in_sync(at, seed);
            let first = Wal::open_in(fs.clone(), &dir, opts.clone());
            if crash.crashes_in_sync() == 0 {
                let w = first.expect("open with repair");
                assert_eq!(w.last_index(), 3);
                drop(w);
                crash.crash_seeded(seed);
            } else {
                drop(first);
            }
            match Wal::open_in(Arc::new(crash.clone()), &dir, opts.clone()) {
                Ok(w) if w.last_index() == 3 => {}
                Ok(w) => failures.push(format!("at {at} seed {seed}: last {}", w.last_index())),
                Err(e) => failures.push(format!("at {at} seed {seed}: {e}")),
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures, first: {:?}",
        failures.len(),
        failures.first()
    );
}

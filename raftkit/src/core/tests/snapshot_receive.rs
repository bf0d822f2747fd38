//! The follower's snapshot receive buffer (Raft §7): what the room the
//! runtime gives it does, and when a reception that no chunk can extend
//! any more lets its bytes go.

use super::harness::*;
use crate::core::{Body, Configuration, DropReason, SnapshotMeta};

/// A chunk of the snapshot at index `index` (term 2).
fn chunk_of(index: u64, offset: u64, data: &[u8], done: bool) -> Body {
    Body::InstallSnapshot {
        meta: SnapshotMeta {
            index,
            term: 2,
            config: Configuration::new([1, 2, 3]),
        },
        offset,
        data: data.to_vec(),
        done,
    }
}

fn chunk(offset: u64, data: &[u8], done: bool) -> Body {
    chunk_of(10, offset, data, done)
}

fn reply(next_offset: u64, done: bool, rejected: bool) -> Body {
    Body::InstallSnapshotResponse {
        index: 10,
        next_offset,
        done,
        rejected,
    }
}

/// A chunk that would take the buffer past the room the runtime gave it
/// (its share of a multi-group node's budget) abandons the reception:
/// its bytes are released, the chunk is counted and not answered (lost,
/// as far as the leader knows, Raft §5.3), and the leader's next chunk is
/// told to start over; a reception within the room is installed.
#[test]
fn a_chunk_past_the_room_abandons_the_reception_and_the_leader_starts_over() {
    let mut r = node(2, &[1, 2, 3], 2, &[1]);
    r.set_snapshot_receive_room(Some(6));
    let out = step(&mut r, msg(1, 2, 2, chunk(0, b"abcd", false)));
    assert_eq!(
        out.of_kind("InstallSnapshotResponse")[0].body,
        reply(4, false, false)
    );
    assert_eq!(r.snapshot_receiving_bytes(), 4);

    assert_eq!(
        r.step_checked(msg(1, 2, 2, chunk(4, b"efgh", false))),
        Err(DropReason::SnapshotOverBudget)
    );
    let out = flush(&mut r);
    assert!(out.all().is_empty(), "answered: {:?}", out.all());
    assert_eq!(r.snapshot_receiving_bytes(), 0, "the bytes are still held");
    assert_eq!(r.check_invariants(), Ok(()));

    // The leader resends the chunk it is waiting for: start over.
    let out = step(&mut r, msg(1, 2, 2, chunk(4, b"efgh", false)));
    assert_eq!(
        out.of_kind("InstallSnapshotResponse")[0].body,
        reply(0, false, true)
    );

    // With room for it, the snapshot goes in whole.
    r.set_snapshot_receive_room(Some(8));
    step(&mut r, msg(1, 2, 2, chunk(0, b"abcd", false)));
    let out = step(&mut r, msg(1, 2, 2, chunk(4, b"efgh", true)));
    assert_eq!(out.snapshots.len(), 1, "not installed");
    assert_eq!(out.snapshots[0].data.as_slice(), b"abcdefgh");
    assert_eq!(r.snapshot_receiving_bytes(), 0);
    assert_eq!(r.dropped().get(DropReason::SnapshotOverBudget), 1);
}

/// A chunk that does not grow the buffer (a duplicate, a gap) is answered
/// as before whatever the room: only growth past it abandons.
#[test]
fn only_growth_past_the_room_abandons_a_reception() {
    let mut r = node(2, &[1, 2, 3], 2, &[1]);
    step(&mut r, msg(1, 2, 2, chunk(0, b"abcd", false)));
    r.set_snapshot_receive_room(Some(4));
    let out = step(&mut r, msg(1, 2, 2, chunk(0, b"abcd", false)));
    assert_eq!(
        out.of_kind("InstallSnapshotResponse")[0].body,
        reply(4, false, false)
    );
    let out = step(&mut r, msg(1, 2, 2, chunk(8, b"ij", true)));
    assert_eq!(
        out.of_kind("InstallSnapshotResponse")[0].body,
        reply(4, false, true)
    );
    assert_eq!(r.snapshot_receiving_bytes(), 4);
    assert_eq!(r.dropped().get(DropReason::SnapshotOverBudget), 0);
}

/// A reception of an earlier term can never be extended again (its
/// leader's chunks are stale, Raft §5.1; a new leader's start afresh), nor
/// one the commit index covers (its chunks are answered "installed"): its
/// bytes go at once, not when another snapshot replaces it. Kept, a
/// multi-group node's budget stayed taken by receptions nobody would ever
/// finish.
#[test]
fn a_reception_no_chunk_can_extend_lets_its_bytes_go() {
    // A new leader's heartbeat (a later term).
    let mut r = node(2, &[1, 2, 3], 2, &[1]);
    step(&mut r, msg(1, 2, 2, chunk(0, b"abcd", false)));
    assert_eq!(r.snapshot_receiving_bytes(), 4);
    step(&mut r, heartbeat(3, 2, 3, 0));
    assert_eq!(
        r.snapshot_receiving_bytes(),
        0,
        "a reception of term 2 kept in term 3"
    );
    assert_eq!(r.check_invariants(), Ok(()));

    // The follower's own election on a tick (a later term, no message).
    let mut r = node_with(2, &[1, 2, 3], 2, &[1], |c| c.pre_vote = false);
    step(&mut r, msg(1, 2, 2, chunk(0, b"abcd", false)));
    tick_until_campaign(&mut r);
    assert_eq!(r.term(), 3);
    assert_eq!(
        r.snapshot_receiving_bytes(),
        0,
        "a candidate kept its leader's reception"
    );
    assert_eq!(r.check_invariants(), Ok(()));

    // The log committed past it (the leader caught the follower up by
    // appends while a chunk was on its way).
    let mut r = node(2, &[1, 2, 3], 2, &[1]);
    step(&mut r, msg(1, 2, 2, chunk_of(3, 0, b"abcd", false)));
    assert_eq!(r.snapshot_receiving_bytes(), 4);
    step(&mut r, append(1, 2, 2, (1, 1), ents_from(2, &[2, 2]), 3));
    assert_eq!(r.log().committed(), 3);
    assert_eq!(
        r.snapshot_receiving_bytes(),
        0,
        "a reception the commit index covers kept"
    );

    // The same leader in the same term going on: kept (the control).
    let mut r = node(2, &[1, 2, 3], 2, &[1]);
    step(&mut r, msg(1, 2, 2, chunk(0, b"abcd", false)));
    step(&mut r, heartbeat(1, 2, 2, 1));
    assert_eq!(r.snapshot_receiving_bytes(), 4);
}

/// Entries of `terms` from index `first` on.
fn ents_from(first: u64, terms: &[u64]) -> Vec<crate::core::Entry> {
    terms
        .iter()
        .enumerate()
        .map(|(k, t)| entry(first + k as u64, *t))
        .collect()
}

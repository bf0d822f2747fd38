//! The leader's flow control at its edges (Raft §5.3 retries, the
//! `max_inflight` window): what a heartbeat answer may and may not make the
//! leader send.

use super::harness::*;
use crate::core::{Body, Index};

/// The entries of the AppendEntries in `out` addressed to `to`, one `Vec`
/// per message that carries any.
fn appends_with_entries(out: &Out, to: u64) -> Vec<Vec<Index>> {
    out.of_kind("AppendEntries")
        .into_iter()
        .filter(|m| m.to == to)
        .filter_map(|m| match &m.body {
            Body::AppendEntries { entries, .. } if !entries.is_empty() => {
                Some(entries.iter().map(|e| e.index).collect())
            }
            _ => None,
        })
        .collect()
}

/// A heartbeat answer from a follower that holds the whole log makes the
/// leader send it nothing (the retry of §5.3 is for a follower behind).
/// Mutant RE11 (teeth, stop 55): `pr.matched < last` -> `<=` in
/// `handle_heartbeat_response` survived every test: an idle cluster sent an
/// empty AppendEntries after every heartbeat answer, doubling its messages.
#[test]
fn a_caught_up_followers_heartbeat_answer_is_sent_nothing() {
    let mut r = node(1, &[1, 2, 3], 1, &[]);
    make_settled_leader(&mut r);
    let term = r.term();
    let out = step(
        &mut r,
        msg(2, 1, term, Body::HeartbeatResponse { round: 0 }),
    );
    let sent = out.of_kind("AppendEntries");
    assert!(
        sent.is_empty(),
        "sent to a follower that holds the whole log: {sent:?}"
    );
}

/// A heartbeat answer frees a slot of the window only when the window is
/// full (the oldest message was probably lost, §5.3): one that arrives
/// while the window has room frees nothing, so at most `max_inflight`
/// unacknowledged appends are out. Mutant RE10 (teeth, stop 55): freeing
/// the oldest slot at every heartbeat answer survived every test; the
/// window then undercounted what was in flight and the leader sent past
/// it, beyond the bound a follower's flow control relies on.
#[test]
fn a_heartbeat_answer_frees_no_slot_of_a_window_with_room() {
    let mut r = node_with(1, &[1, 2, 3], 1, &[], |c| {
        c.max_inflight = 2;
        c.max_batch_bytes = 1; // one entry per message
    });
    make_settled_leader(&mut r);
    let term = r.term();
    r.propose(b"a".to_vec()).expect("leader");
    let first = appends_with_entries(&flush(&mut r), 2);
    assert_eq!(first.len(), 1, "premise: one append in flight to 2");
    // Node 2 answers a heartbeat, not the append (still in flight).
    step(
        &mut r,
        msg(2, 1, term, Body::HeartbeatResponse { round: 0 }),
    );
    assert_eq!(
        r.progress[&2].inflights.len(),
        1,
        "the window had room: the heartbeat answer freed a slot"
    );
    for data in [b"b", b"c", b"d"] {
        r.propose(data.to_vec()).expect("leader");
    }
    let more = appends_with_entries(&flush(&mut r), 2);
    assert_eq!(
        first.len() + more.len(),
        2,
        "unacknowledged appends with entries sent to 2: {first:?} then {more:?}"
    );
}

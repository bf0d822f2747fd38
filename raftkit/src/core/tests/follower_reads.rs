//! Follower reads (thesis §6.4.1): a follower asks its leader for a read
//! index, the leader confirms it in its heartbeat rounds, and the follower
//! serves the read once its own state machine applied that index.

use super::harness::*;
use crate::core::read_index::MAX_REMOTE_READS;
use crate::core::{Body, DropReason, Message, NotLeader, ReadState, Role};

fn read_req(from: u64, to: u64, term: u64, ctx: u64) -> Message {
    msg(from, to, term, Body::ReadIndexRequest { ctx })
}

fn read_resp(from: u64, to: u64, term: u64, ctx: u64, index: Option<u64>) -> Message {
    msg(from, to, term, Body::ReadIndexResponse { ctx, index })
}

fn answers(out: &Out) -> Vec<(u64, u64, Option<u64>)> {
    out.all()
        .iter()
        .filter_map(|m| match m.body {
            Body::ReadIndexResponse { ctx, index } => Some((m.to, ctx, index)),
            _ => None,
        })
        .collect()
}

/// A follower's read is answered with the leader's commit index, confirmed
/// by a heartbeat round that started after the request reached the leader.
#[test]
fn a_follower_read_gets_the_leaders_confirmed_commit_index() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    let (index, _) = c.propose(1, b"x");
    assert_eq!(c.node(1).log().committed(), index);
    let before = c.delivered.len();
    c.node_mut(2)
        .read_index(7)
        .expect("follower knows its leader");
    c.deliver();
    assert_eq!(
        c.reads[&2],
        [ReadState {
            ctx: 7,
            result: Ok(index)
        }]
    );
    // The request, then a heartbeat round of the leader, then the answer.
    let after: Vec<&str> = c.delivered[before..]
        .iter()
        .map(|m| m.body.kind())
        .collect();
    let req = after.iter().position(|k| *k == "ReadIndexRequest");
    let hb = after.iter().rposition(|k| *k == "HeartbeatResponse");
    let resp = after.iter().position(|k| *k == "ReadIndexResponse");
    assert!(
        matches!((req, hb, resp), (Some(a), Some(b), Some(c)) if a < b && b < c),
        "request, heartbeat round, answer: {after:?}"
    );
    assert!(c.reads.get(&1).is_none_or(|r| r.is_empty()));
}

/// Thesis §6.4 step 1 holds for followers' reads too: a new leader answers
/// none before it has committed an entry of its term, and answers after a
/// quorum acknowledged a round.
#[test]
fn the_leader_answers_a_follower_only_after_committing_in_its_term() {
    let mut r = node(1, &[1, 2, 3], 1, &[1]);
    make_leader(&mut r);
    let (term, noop) = (r.term(), r.log().last_index());
    let out = step(&mut r, read_req(2, 1, term, 5));
    assert!(answers(&out).is_empty());
    assert!(
        out.of_kind("Heartbeat").is_empty(),
        "no round before the no-op commits"
    );
    let out = step(&mut r, append_ok(3, 1, term, noop));
    assert!(answers(&out).is_empty(), "answered without a round");
    let round = heartbeat_round(&out).expect("a round starts once the no-op commits");
    let out = step(&mut r, msg(3, 1, term, Body::HeartbeatResponse { round }));
    assert_eq!(answers(&out), [(2, 5, Some(noop))]);
}

/// A non-leader answers a forwarded read with `None`, and a leader that
/// steps down answers the reads it held with `None`.
#[test]
fn a_node_that_does_not_lead_answers_none() {
    let mut r = node(1, &[1, 2, 3], 2, &[1]);
    let out = step(&mut r, read_req(2, 1, 2, 9));
    assert_eq!(answers(&out), [(2, 9, None)]);

    let mut r = node(1, &[1, 2, 3], 1, &[1]);
    make_settled_leader(&mut r);
    let term = r.term();
    step(&mut r, read_req(2, 1, term, 4));
    let out = step(&mut r, append(3, 1, term + 1, (1, 1), vec![], 0));
    assert_eq!(answers(&out), [(2, 4, None)]);
}

/// A leader change while a follower read is pending fails the read (its
/// caller retries); the old leader's late answer finds nothing pending and
/// is dropped, counted: the read is never answered at the old leader's
/// index.
#[test]
fn a_leader_change_fails_a_pending_follower_read_and_drops_the_late_answer() {
    let mut r = node(2, &[1, 2, 3], 1, &[1]);
    step(&mut r, heartbeat(1, 2, 1, 1));
    r.read_index(5).expect("forwarded");
    let out = flush(&mut r);
    assert_eq!(out.of_kind("ReadIndexRequest").len(), 1);
    // Node 3 leads term 2.
    let out = step(&mut r, heartbeat(3, 2, 2, 1));
    assert!(matches!(
        out.reads.as_slice(),
        [ReadState {
            ctx: 5,
            result: Err(_)
        }]
    ));
    assert_eq!(
        r.step_checked(read_resp(1, 2, 1, 5, Some(1))),
        Err(DropReason::UnknownReadContext)
    );
    assert!(flush(&mut r).reads.is_empty());
    assert_eq!(r.dropped().get(DropReason::UnknownReadContext), 1);
}

/// Raft §5.1, "if RPC request or response contains term T > currentTerm:
/// set currentTerm = T, convert to follower". The leader a follower
/// forwarded a read to steps down on a higher term and answers `None` in
/// it: the follower adopts that term, and its read fails at once. Found by
/// review (stop 41): the answer was dropped as an unknown read context
/// before its term was seen, and the read waited two election timeouts.
/// The answer is not taken as the read's answer either way.
#[test]
fn an_answer_in_a_higher_term_raises_the_term_and_fails_the_read_at_once() {
    let mut r = node(2, &[1, 2, 3], 1, &[1]);
    step(&mut r, heartbeat(1, 2, 1, 1));
    r.read_index(5).expect("forwarded");
    flush(&mut r);
    assert_eq!(r.step_checked(read_resp(1, 2, 2, 5, None)), Ok(()));
    assert_eq!(r.term(), 2);
    assert!(matches!(
        flush(&mut r).reads.as_slice(),
        [ReadState {
            ctx: 5,
            result: Err(_)
        }]
    ));
    // An index in a higher term is not an answer: the read is failed, not
    // served at it.
    let mut r = node(2, &[1, 2, 3], 1, &[1]);
    step(&mut r, heartbeat(1, 2, 1, 1));
    r.read_index(5).expect("forwarded");
    flush(&mut r);
    assert_eq!(r.step_checked(read_resp(1, 2, 2, 5, Some(1))), Ok(()));
    assert!(matches!(
        flush(&mut r).reads.as_slice(),
        [ReadState {
            ctx: 5,
            result: Err(_)
        }]
    ));
    // From a stranger, a higher term changes nothing.
    let mut r = node(2, &[1, 2, 3], 1, &[1]);
    step(&mut r, heartbeat(1, 2, 1, 1));
    r.read_index(5).expect("forwarded");
    flush(&mut r);
    assert_eq!(
        r.step_checked(read_resp(9, 2, 2, 5, None)),
        Err(DropReason::UnknownReadContext)
    );
    assert_eq!(r.term(), 1);
}

/// Answers for a context never forwarded, or from a node that is not the
/// leader, are dropped and counted; a well-formed one is taken.
#[test]
fn answers_for_unknown_contexts_or_from_non_leaders_are_dropped() {
    let mut r = node(2, &[1, 2, 3], 1, &[1]);
    step(&mut r, heartbeat(1, 2, 1, 1));
    r.read_index(5).expect("forwarded");
    flush(&mut r);
    assert_eq!(
        r.step_checked(read_resp(1, 2, 1, 6, Some(1))),
        Err(DropReason::UnknownReadContext)
    );
    assert_eq!(
        r.step_checked(read_resp(3, 2, 1, 5, Some(1))),
        Err(DropReason::UnknownReadContext)
    );
    assert_eq!(
        r.step_checked(read_resp(1, 2, 1, 5, Some(u64::MAX))),
        Err(DropReason::IndexOutOfRange)
    );
    assert_eq!(
        r.step_checked(read_resp(9, 2, 1, 5, Some(1))),
        Err(DropReason::UnknownReadContext)
    );
    assert_eq!(r.step_checked(read_resp(1, 2, 1, 5, Some(1))), Ok(()));
    assert_eq!(
        flush(&mut r).reads,
        [ReadState {
            ctx: 5,
            result: Ok(1)
        }]
    );
    // Answered once: a duplicate is unknown now.
    assert_eq!(
        r.step_checked(read_resp(1, 2, 1, 5, Some(1))),
        Err(DropReason::UnknownReadContext)
    );
    // Requests from non-members are dropped.
    let mut l = node(1, &[1, 2, 3], 1, &[1]);
    make_settled_leader(&mut l);
    let term = l.term();
    assert_eq!(
        l.step_checked(read_req(9, 1, term, 1)),
        Err(DropReason::FromStranger)
    );
}

/// A forwarded read that gets no answer (request or answer lost) fails
/// after exactly two election timeouts: never later, and never earlier
/// (found by mutation audit, stop 52, M4: failing it after one timeout,
/// when a loaded leader's answer regularly takes that long, went
/// unnoticed).
#[test]
fn an_unanswered_follower_read_fails_in_bounded_time() {
    let mut r = node(2, &[1, 2, 3], 1, &[1]);
    step(&mut r, heartbeat(1, 2, 1, 1));
    r.read_index(5).expect("forwarded");
    flush(&mut r);
    let mut failed = false;
    for n in 1..=2 * T {
        r.tick();
        let out = flush(&mut r);
        // The leader keeps heartbeating: only the timeout can fail it.
        step(&mut r, heartbeat(1, 2, 1, 1));
        if out.reads.iter().any(|s| s.ctx == 5) {
            assert_eq!(n, 2 * T, "the read failed after {n} ticks");
            assert_eq!(
                out.reads,
                [ReadState {
                    ctx: 5,
                    result: Err(NotLeader { leader: Some(1) })
                }]
            );
            failed = true;
            break;
        }
    }
    assert!(failed, "the read never failed");
}

/// Each of the two followers' reads, up to its share of the room.
fn fill_follower_reads(r: &mut crate::core::Raft, term: u64) {
    let share = MAX_REMOTE_READS as u64 / 2;
    for from in [2, 3] {
        for ctx in 0..share {
            assert_eq!(r.step_checked(read_req(from, 1, term, ctx)), Ok(()));
        }
    }
}

/// The leader holds at most `MAX_REMOTE_READS` followers' reads, and each
/// member at most its share of them (stop 58: here half each); more are
/// dropped and counted (a hostile member cannot grow its memory).
#[test]
fn the_leaders_queue_of_follower_reads_is_bounded() {
    let mut r = node(1, &[1, 2, 3], 1, &[1]);
    make_leader(&mut r); // the no-op is not committed: reads wait
    let term = r.term();
    fill_follower_reads(&mut r, term);
    assert_eq!(
        r.step_checked(read_req(3, 1, term, 0)),
        Err(DropReason::ReadQueueFull)
    );
    assert_eq!(r.dropped().get(DropReason::ReadQueueFull), 1);
    // Once answered, the room is back.
    let noop = r.log().last_index();
    flush(&mut r);
    let out = step(&mut r, append_ok(3, 1, term, noop));
    let round = out
        .of_kind("Heartbeat")
        .iter()
        .find_map(|m| match m.body {
            Body::Heartbeat { round, .. } => Some(round),
            _ => None,
        })
        .expect("round");
    let out = step(&mut r, msg(3, 1, term, Body::HeartbeatResponse { round }));
    assert_eq!(answers(&out).len(), MAX_REMOTE_READS);
    assert_eq!(r.step_checked(read_req(3, 1, term, 0)), Ok(()));
}

/// A leader that steps down fails the followers' reads it held, and gives
/// their room back: the count of followers' reads is reset with them, or
/// each step-down under load would shrink the room for good, down to
/// dropping every follower read whenever the node leads.
#[test]
fn a_step_down_gives_the_follower_reads_room_back() {
    let mut r = node(1, &[1, 2, 3], 1, &[1]);
    make_leader(&mut r); // the no-op is not committed: reads wait
    let term = r.term();
    fill_follower_reads(&mut r, term);
    flush(&mut r);
    // Node 3 leads a higher term: node 1 steps down and fails them.
    let out = step(&mut r, heartbeat(3, 1, term + 1, 0));
    assert_eq!(r.role(), Role::Follower);
    let failed = answers(&out);
    assert_eq!(failed.len(), MAX_REMOTE_READS);
    assert!(
        failed
            .iter()
            .all(|(to, _, index)| (*to == 2 || *to == 3) && index.is_none())
    );
    // Node 1 leads again: room for as many followers' reads as before,
    // each member's share included.
    make_leader(&mut r);
    let term = r.term();
    fill_follower_reads(&mut r, term);
    assert_eq!(r.dropped().get(DropReason::ReadQueueFull), 0);
}

/// Found by mutation audit (stop 52, M1): a stale read's staleness is
/// bounded by the leader's commit index as last heard, which a lagging
/// follower's own commit index understates (its log stops short of it).
/// It follows every AppendEntries and heartbeat, and never goes back.
#[test]
fn a_follower_reports_the_leaders_commit_not_its_own() {
    let mut r = node(2, &[1, 2, 3], 2, &[1]);
    step(
        &mut r,
        append(1, 2, 2, (1, 1), vec![entry(2, 2), entry(3, 2)], 10),
    );
    assert_eq!(r.log().committed(), 3);
    assert_eq!(r.leader_commit(), 10, "the leader's commit, not ours");
    step(&mut r, heartbeat(1, 2, 2, 3));
    assert_eq!(r.leader_commit(), 10, "a lower commit never takes it back");
    step(&mut r, heartbeat(1, 2, 2, 12));
    assert_eq!(r.leader_commit(), 12);
}

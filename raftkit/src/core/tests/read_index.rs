//! Linearizable reads by ReadIndex (thesis §6.4).

use super::harness::*;
use crate::core::{Body, Message, NotLeader, ReadState, Role};

fn heartbeat_resp(from: u64, term: u64, round: u64) -> Message {
    msg(from, 1, term, Body::HeartbeatResponse { round })
}

fn heartbeats(out: &Out) -> Vec<(u64, u64)> {
    out.all()
        .iter()
        .filter_map(|m| match m.body {
            Body::Heartbeat { round, .. } => Some((m.to, round)),
            _ => None,
        })
        .collect()
}

fn ok(ctx: u64, index: u64) -> ReadState {
    ReadState {
        ctx,
        result: Ok(index),
    }
}

/// Thesis §6.4 step 1: a new leader serves no read before it has committed
/// an entry of its term (its no-op): until then its commit index may be
/// behind its predecessor's.
#[test]
fn no_read_is_released_before_a_commit_in_the_leaders_term() {
    let mut r = node(1, &[1, 2, 3], 1, &[1]);
    make_leader(&mut r);
    let (term, noop) = (r.term(), r.log().last_index());
    r.read_index(7).expect("the leader accepts reads");
    let out = flush(&mut r);
    assert!(out.reads.is_empty());
    assert!(
        heartbeats(&out).is_empty(),
        "no confirmation round before the no-op commits"
    );
    // Answers to the periodic heartbeats (of the last round issued, none
    // yet) do not release it either.
    for _ in 0..T / 2 {
        r.tick();
    }
    let out = flush(&mut r);
    let periodic = heartbeats(&out);
    assert!(!periodic.is_empty());
    for &(from, round) in &periodic {
        let out = step(&mut r, heartbeat_resp(from, term, round));
        assert!(out.reads.is_empty());
    }

    // The no-op commits: a confirmation round starts at once.
    let out = step(&mut r, append_ok(2, 1, term, noop));
    assert_eq!(r.log().committed(), noop);
    assert!(out.reads.is_empty(), "released without a heartbeat round");
    let round = match heartbeats(&out).as_slice() {
        [(2, a), (3, b)] if a == b => *a,
        hb => panic!("expected one heartbeat round, got {hb:?}"),
    };
    let out = step(&mut r, heartbeat_resp(3, term, round));
    assert_eq!(out.reads, [ok(7, noop)]);
}

/// Thesis §6.4: many reads share one heartbeat round. Reads waiting for the
/// no-op are served by one round; reads arriving while a round is in
/// flight are served together by the next one; an answer to an older round
/// does not confirm a newer one.
#[test]
fn one_heartbeat_round_serves_a_batch_of_reads() {
    // Reads waiting for the no-op.
    let mut r = node(1, &[1, 2, 3], 1, &[1]);
    make_leader(&mut r);
    let (term, noop) = (r.term(), r.log().last_index());
    for ctx in 1..=5 {
        r.read_index(ctx).expect("leader");
    }
    let out = step(&mut r, append_ok(2, 1, term, noop));
    let hb = heartbeats(&out);
    assert_eq!(hb.len(), 2, "one round: {hb:?}");
    let out = step(&mut r, heartbeat_resp(2, term, hb[0].1));
    assert_eq!(
        out.reads,
        (1..=5).map(|ctx| ok(ctx, noop)).collect::<Vec<_>>()
    );

    // Reads arriving while a round is in flight.
    let mut r = node(1, &[1, 2, 3], 1, &[1]);
    let commit = make_settled_leader(&mut r);
    let term = r.term();
    r.read_index(10).expect("leader");
    let out = flush(&mut r);
    let first = heartbeats(&out);
    assert_eq!(first.len(), 2);
    for ctx in 11..=14 {
        r.read_index(ctx).expect("leader");
    }
    let out = flush(&mut r);
    assert!(heartbeats(&out).is_empty(), "one round at a time");
    let out = step(&mut r, heartbeat_resp(2, term, first[0].1));
    assert_eq!(out.reads, [ok(10, commit)]);
    let second = heartbeats(&out);
    assert_eq!(
        second.len(),
        2,
        "the queued reads start the next round at once"
    );
    assert!(second[0].1 > first[0].1);
    let out = step(&mut r, heartbeat_resp(3, term, first[0].1));
    assert!(
        out.reads.is_empty(),
        "an answer to an older round confirmed a newer one"
    );
    let out = step(&mut r, heartbeat_resp(3, term, second[0].1));
    assert_eq!(
        out.reads,
        (11..=14).map(|ctx| ok(ctx, commit)).collect::<Vec<_>>()
    );
}

/// Every pending read gets an answer: a leader that steps down fails them
/// with `NotLeader` — whether waiting for the no-op or for a round.
#[test]
fn leader_stepping_down_fails_pending_reads() {
    // Waiting for a heartbeat round; a newer leader appears.
    let mut r = node(1, &[1, 2, 3], 1, &[1]);
    let last = make_settled_leader(&mut r);
    let term = r.term();
    r.read_index(1).expect("leader");
    flush(&mut r);
    let out = step(&mut r, append(2, 1, term + 1, (last, term), vec![], last));
    assert_eq!(r.role(), Role::Follower);
    assert_eq!(out.reads.len(), 1);
    assert_eq!(out.reads[0].ctx, 1);
    assert!(matches!(out.reads[0].result, Err(NotLeader { .. })));

    // Waiting for a heartbeat round; the leader loses its quorum
    // (CheckQuorum) and steps down.
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    c.isolate(1);
    c.node_mut(1).read_index(2).expect("leader");
    c.node_mut(1).read_index(3).expect("leader");
    for _ in 0..2 * T {
        c.tick(1);
    }
    assert_eq!(c.node(1).role(), Role::Follower);
    let reads = &c.reads[&1];
    let mut ctxs: Vec<_> = reads.iter().map(|r| r.ctx).collect();
    ctxs.sort_unstable();
    assert_eq!(ctxs, [2, 3]);
    assert!(
        reads
            .iter()
            .all(|r| matches!(r.result, Err(NotLeader { .. }))),
        "{reads:?}"
    );
}

/// A deposed leader that does not know it yet cannot confirm a read: the
/// heartbeat round never reaches a quorum, and the read fails when it
/// steps down.
#[test]
fn partitioned_leader_serves_no_read() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    c.isolate(1);
    // 2 and 3 elect a new leader; 1, not ticked, still believes it leads.
    let mut leader = None;
    for _ in 0..4 * T {
        for id in [2, 3] {
            c.node_mut(id).tick();
        }
        c.deliver();
        leader = [2, 3]
            .into_iter()
            .find(|&id| c.node(id).role() == Role::Leader);
        if leader.is_some() {
            break;
        }
    }
    let leader = leader.expect("2 or 3 is elected");
    assert_eq!(c.node(1).role(), Role::Leader);
    let (index, _) = c.propose(leader, b"new");
    c.node_mut(1)
        .read_index(9)
        .expect("still believes it leads");
    c.tick(1);
    assert!(c.reads[&1].is_empty());
    for _ in 0..2 * T {
        c.tick(1);
    }
    assert!(matches!(
        c.reads[&1].as_slice(),
        [ReadState {
            ctx: 9,
            result: Err(_)
        }]
    ));
    // The real leader serves it, at an index that covers the new write.
    c.node_mut(leader).read_index(10).expect("leader");
    c.deliver();
    assert_eq!(c.reads[&leader], [ok(10, index)]);
}

/// A read on a follower that knows its leader is forwarded to it (thesis
/// §6.4.1, see `follower_reads`); a node that knows no leader refuses it at
/// once, and so does a candidate.
#[test]
fn read_on_a_follower_is_forwarded_or_refused_without_a_leader() {
    let mut r = node(1, &[1, 2, 3], 1, &[1]);
    step(&mut r, heartbeat(3, 1, 1, 0));
    assert_eq!(r.read_index(1), Ok(()));
    let out = flush(&mut r);
    assert!(out.reads.is_empty());
    assert_eq!(
        out.of_kind("ReadIndexRequest")
            .iter()
            .map(|m| (m.to, m.body.clone()))
            .collect::<Vec<_>>(),
        [(3, Body::ReadIndexRequest { ctx: 1 })]
    );

    let mut r = node(1, &[1, 2, 3], 1, &[1]);
    assert_eq!(r.read_index(1), Err(NotLeader { leader: None }));

    let mut r = node(1, &[1, 2, 3], 1, &[1]);
    make_candidate(&mut r);
    assert_eq!(r.read_index(1), Err(NotLeader { leader: None }));
}

/// A single-node cluster is its own quorum: reads are served without any
/// message, once its no-op is durable and committed.
#[test]
fn single_node_serves_reads_alone() {
    let mut r = node(1, &[1], 1, &[1]);
    let (_, _) = tick_until_campaign(&mut r);
    assert_eq!(r.role(), Role::Leader);
    let commit = r.log().committed();
    assert_eq!(commit, r.log().last_index());
    r.read_index(5).expect("leader");
    let out = flush(&mut r);
    assert!(out.all().is_empty());
    assert_eq!(out.reads, [ok(5, commit)]);
}

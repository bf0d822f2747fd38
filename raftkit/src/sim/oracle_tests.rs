//! The oracle fed broken states (teeth, stop 53, mutant M16): each check
//! of [`Oracle`] is shown a state that violates its property and must name
//! that property, and the same state without the violation must pass (so
//! that neither a disabled check nor one that refuses everything goes
//! unnoticed). The simulation itself never produces these states unless a
//! bug does, so without these tests a mutant that turns a check off
//! survives every seed that happens to be clean.
//!
//! The states are built from real [`Raft`] cores (restored logs, single
//! voters that elect themselves, a candidate given a vote by hand), not
//! mock-ups: the oracle reads them through the same API as in a run.

use super::oracle::{Oracle, Violation};
use crate::core::{
    Body, Config, Configuration, Entry, HardState, Index, Message, NodeId, Payload, Raft, Restored,
    Role, SnapshotMeta, Term,
};

/// A command entry.
fn command(index: Index, term: Term, data: &str) -> Entry {
    Entry {
        term,
        index,
        payload: Payload::Command(data.as_bytes().to_vec().into()),
    }
}

/// Node `id` of `voters` at `term` with `entries`, PreVote off (so that a
/// vote given by hand elects it).
fn node(id: NodeId, voters: &[NodeId], term: Term, entries: Vec<Entry>) -> Raft {
    let mut cfg = Config::new(id);
    cfg.pre_vote = false;
    let restored = Restored {
        hard_state: HardState {
            term,
            vote: 0,
            commit: 0,
        },
        snapshot: SnapshotMeta {
            index: 0,
            term: 0,
            config: Configuration::new(voters.iter().copied()),
        },
        snapshot_data: None,
        entries,
    };
    Raft::new(cfg, restored).expect("valid config")
}

/// Drains `r`'s Readies, each durable at once; returns the entries written.
fn flush(r: &mut Raft) -> Vec<Entry> {
    let mut written = Vec::new();
    for _ in 0..1000 {
        if !r.has_ready() {
            return written;
        }
        let rd = r.ready();
        written.extend(rd.entries);
        r.on_persisted(rd.persist_marker);
    }
    panic!("node {} never runs out of Readies", r.id());
}

/// Ticks `r` until its role is `role` (flushing as it goes); returns the
/// entries written meanwhile.
fn tick_until(r: &mut Raft, role: Role) -> Vec<Entry> {
    let mut written = Vec::new();
    for _ in 0..100 {
        if r.role() == role {
            return written;
        }
        r.tick();
        written.extend(flush(r));
    }
    panic!("node {} never became {role:?}: {:?}", r.id(), r.role());
}

/// The single voter `id`, restored at `term` with `entries`, leading (of
/// `term + 1`) with its no-op committed; with the entries it wrote.
fn leader_alone(id: NodeId, term: Term, entries: Vec<Entry>) -> (Raft, Vec<Entry>) {
    let mut r = node(id, &[id], term, entries);
    let mut written = tick_until(&mut r, Role::Leader);
    written.extend(flush(&mut r));
    assert_eq!(r.log().committed(), r.log().last_index(), "premise");
    (r, written)
}

/// A no-op entry.
fn noop(index: Index, term: Term) -> Entry {
    Entry {
        term,
        index,
        payload: Payload::Noop,
    }
}

/// The log of [`leader_alone`]`(1, 1, [1@1 "a"])`: its entry and no-op.
fn led_log() -> Vec<Entry> {
    vec![command(1, 1, "a"), noop(2, 2)]
}

/// `result` is a violation of `property`.
fn violates<T: std::fmt::Debug>(result: Result<T, Violation>, property: &str) {
    match result {
        Err(v) if v.property == property => {}
        other => panic!("expected a violation of {property}, got {other:?}"),
    }
}

#[test]
fn two_leaders_of_one_term_break_election_safety() {
    let (a, _) = leader_alone(1, 5, Vec::new());
    let (b, _) = leader_alone(2, 5, Vec::new());
    // A leader of the next term, whose log holds the no-op of term 6.
    let (c, _) = leader_alone(3, 6, vec![noop(1, 6)]);
    assert_eq!((a.term(), b.term(), c.term()), (6, 6, 7), "premise");
    let mut oracle = Oracle::default();
    oracle
        .observe(&a, &[], false)
        .expect("one leader of term 6");
    oracle.observe(&c, &[], false).expect("a leader of term 7");
    oracle
        .observe(&a, &[], false)
        .expect("the same leader again");
    violates(oracle.observe(&b, &[], false), "election safety");
}

#[test]
fn a_leader_without_a_quorum_of_grants_of_its_term_breaks_the_election_check() {
    let mut r = node(1, &[1, 2, 3], 1, Vec::new());
    tick_until(&mut r, Role::Candidate);
    let term = r.term();
    r.step(Message {
        from: 2,
        to: 1,
        term,
        body: Body::RequestVoteResponse {
            granted: true,
            pre_vote: false,
        },
    });
    flush(&mut r);
    assert_eq!(r.role(), Role::Leader, "premise");
    // The grant the oracle saw leave node 2 was of another term.
    let mut oracle = Oracle::default();
    oracle.on_vote(2, term - 1, 1).expect("a vote");
    violates(oracle.observe(&r, &[], true), "election");
    // The grant of its term elects it.
    let mut oracle = Oracle::default();
    oracle.on_vote(2, term, 1).expect("a vote");
    oracle.observe(&r, &[], true).expect("elected by 1 and 2");
}

#[test]
fn two_votes_in_one_term_break_one_vote_per_term() {
    let mut oracle = Oracle::default();
    oracle.on_vote(1, 3, 2).expect("the first vote");
    oracle
        .on_vote(1, 3, 2)
        .expect("the same vote again (a resend)");
    oracle.on_vote(1, 4, 3).expect("a vote of the next term");
    violates(oracle.on_vote(1, 3, 3), "one vote per term");
}

#[test]
fn a_vote_for_a_less_up_to_date_log_breaks_the_election_restriction() {
    let mut oracle = Oracle::default();
    // Candidate 2's log ends at 9@1, voter 1's at 4@2: a higher last term
    // wins over a longer log (§5.4.1).
    oracle.on_vote_request(1, 2, 3, (9, 1), (4, 2));
    violates(oracle.on_vote(1, 3, 2), "election restriction");
    // Same last term, shorter log.
    let mut oracle = Oracle::default();
    oracle.on_vote_request(1, 2, 3, (3, 2), (4, 2));
    violates(oracle.on_vote(1, 3, 2), "election restriction");
    // Exactly as up to date: granted.
    let mut oracle = Oracle::default();
    oracle.on_vote_request(1, 2, 3, (4, 2), (4, 2));
    oracle.on_vote(1, 3, 2).expect("an equal log");
}

#[test]
fn a_leader_rewriting_its_log_in_its_term_breaks_append_only() {
    let (mut r, written) = leader_alone(1, 1, Vec::new());
    let mut oracle = Oracle::default();
    oracle.observe(&r, &written, false).expect("the election");
    r.propose(b"x".to_vec()).expect("propose");
    let appended = flush(&mut r);
    oracle.observe(&r, &appended, false).expect("an append");
    // The same leader, in its term, writing from an index it had.
    violates(oracle.observe(&r, &appended, false), "leader append-only");
}

#[test]
fn one_index_and_term_with_two_payloads_breaks_log_matching() {
    let (a, written) = leader_alone(1, 1, vec![command(1, 1, "a")]);
    let mut oracle = Oracle::default();
    oracle.observe(&a, &written, false).expect("the leader");
    let b = node(2, &[1, 2], 1, Vec::new());
    oracle
        .observe(&b, &[command(1, 1, "a")], false)
        .expect("the same entry elsewhere");
    let c = node(3, &[1, 3], 1, Vec::new());
    violates(
        oracle.observe(&c, &[command(1, 1, "b")], false),
        "log matching",
    );
}

#[test]
fn a_log_disagreeing_with_the_committed_prefix_breaks_log_matching() {
    let (a, written) = leader_alone(1, 1, vec![command(1, 1, "a")]);
    let mut oracle = Oracle::default();
    oracle.observe(&a, &written, false).expect("the leader");
    assert_eq!(oracle.committed().len(), 2, "premise: 1@1 and the no-op");
    // Node 2 considers a different entry 1 committed.
    let (b, _) = leader_alone(2, 5, vec![command(1, 1, "b")]);
    violates(oracle.observe(&b, &[], false), "log matching");
    // Node 3 agrees.
    let (c, _) = leader_alone(3, 6, led_log());
    oracle.observe(&c, &[], false).expect("an agreeing log");
}

#[test]
fn a_leader_missing_a_committed_entry_breaks_leader_completeness() {
    let (a, written) = leader_alone(1, 1, vec![command(1, 1, "a")]);
    let mut oracle = Oracle::default();
    oracle.observe(&a, &written, false).expect("the leader");
    // A leader of a later term without entry 1.
    let (b, _) = leader_alone(2, 5, Vec::new());
    violates(oracle.observe(&b, &[], true), "leader completeness");
    violates(oracle.check_leader(&b, 1..=1), "leader completeness");
    violates(
        oracle.check_leaders([&a, &b].into_iter(), &(1..=2)),
        "leader completeness",
    );
    // One that holds them.
    let (c, _) = leader_alone(3, 5, led_log());
    oracle.check_leader(&c, 1..=2).expect("a complete leader");
}

#[test]
fn different_entries_or_states_at_one_index_break_state_machine_safety() {
    let a = command(1, 1, "a");
    let mut oracle = Oracle::default();
    oracle.on_apply(1, &a, 7).expect("the first apply");
    oracle
        .on_apply(2, &a, 7)
        .expect("the same entry, the same state");
    violates(
        oracle.on_apply(3, &command(1, 1, "b"), 7),
        "state machine safety",
    );
    violates(oracle.on_apply(4, &a, 8), "state machine safety");
    // Snapshots: the replicas' state at their index, and no further.
    oracle
        .on_restore(5, 1, 7, false)
        .expect("a matching snapshot");
    violates(oracle.on_restore(6, 1, 8, false), "state machine safety");
    violates(oracle.on_restore(7, 2, 7, false), "state machine safety");
}

#[test]
fn applying_out_of_order_or_twice_breaks_applied_exactly_once() {
    let mut oracle = Oracle::default();
    oracle.on_apply(1, &command(1, 1, "a"), 1).expect("entry 1");
    violates(
        oracle.on_apply(1, &command(1, 1, "a"), 1),
        "applied exactly once",
    );
    violates(
        oracle.on_apply(2, &command(2, 1, "b"), 2),
        "applied exactly once",
    );
    oracle.on_apply(1, &command(2, 1, "b"), 2).expect("entry 2");
    // An installed snapshot never moves a state machine back.
    violates(oracle.on_restore(1, 2, 2, true), "applied exactly once");
    let mut oracle = Oracle::default();
    oracle.on_apply(1, &command(1, 1, "a"), 1).expect("entry 1");
    oracle.on_apply(2, &command(1, 1, "a"), 1).expect("entry 1");
    oracle.on_apply(2, &command(2, 1, "b"), 2).expect("entry 2");
    oracle.on_restore(1, 2, 2, true).expect("a snapshot ahead");
}

#[test]
fn a_committed_entry_on_too_few_disks_breaks_durability() {
    let (a, written) = leader_alone(1, 1, vec![command(1, 1, "a")]);
    let mut oracle = Oracle::default();
    oracle.observe(&a, &written, false).expect("the leader");
    let initial = Configuration::new([1, 2, 3]);
    let nodes = [1, 2, 3];
    violates(
        oracle.check_durable(1..=2, |id, _, _| id == 1, &nodes, &initial),
        "durability",
    );
    // Entry 1 is of term 1: a disk holding another term does not count.
    violates(
        oracle.check_durable(1..=1, |id, _, t| id == 1 || t != 1, &nodes, &initial),
        "durability",
    );
    oracle
        .check_durable(1..=2, |id, _, _| id != 3, &nodes, &initial)
        .expect("on a quorum");
}

/// Node `id` of `voters`, restored at `term` with `entries`, elected leader
/// (of `term + 1`) by the vote of `voter`, given by hand; its no-op is not
/// committed (no other member acknowledged it).
fn elected(id: NodeId, voters: &[NodeId], term: Term, entries: Vec<Entry>, voter: NodeId) -> Raft {
    let mut r = node(id, voters, term, entries);
    tick_until(&mut r, Role::Candidate);
    let term = r.term();
    r.step(Message {
        from: voter,
        to: id,
        term,
        body: Body::RequestVoteResponse {
            granted: true,
            pre_vote: false,
        },
    });
    flush(&mut r);
    assert_eq!(r.role(), Role::Leader, "premise: node {id} leads");
    r
}

#[test]
fn a_commit_index_going_down_breaks_commit_monotonic() {
    let (a, written) = leader_alone(1, 1, vec![command(1, 1, "a")]);
    let mut oracle = Oracle::default();
    oracle.observe(&a, &written, false).expect("the leader");
    assert_eq!(a.log().committed(), 2, "premise");
    // Node 1 again, with the same log, its commit index back at 0 while it
    // runs.
    let back = node(1, &[1], 2, led_log());
    assert_eq!(back.log().committed(), 0, "premise");
    violates(oracle.observe(&back, &[], false), "commit monotonic");
    // A restart may bring a lower commit index back (it is volatile).
    oracle.on_restore(1, 0, 0, false).expect("a restart");
    oracle
        .observe(&back, &[], false)
        .expect("a restarted node's commit index");
    oracle
        .observe(&a, &[], false)
        .expect("the commit index going up");
}

#[test]
fn a_leader_lacking_a_committed_entry_at_any_step_breaks_commit_monotonic() {
    let entries = vec![command(1, 1, "a"), command(2, 1, "b"), command(3, 1, "c")];
    let (a, written) = leader_alone(1, 1, entries.clone());
    let mut oracle = Oracle::default();
    oracle.observe(&a, &written, false).expect("the leader");
    assert_eq!(oracle.committed().len(), 4, "premise: 1..=3 and the no-op");
    // A leader of term 6 whose log ends before the committed entries 3 and
    // 4, observed after its election (not at it: leader completeness does
    // not look then).
    let short = elected(2, &[1, 2, 3], 5, vec![command(1, 1, "a")], 3);
    assert_eq!((short.term(), short.log().last_index()), (6, 2), "premise");
    violates(oracle.observe(&short, &[], false), "commit monotonic");
    // One (of term 7) that holds them.
    let mut full_log = entries;
    full_log.push(noop(4, 2));
    let full = elected(3, &[1, 2, 3], 6, full_log, 1);
    oracle
        .observe(&full, &[], false)
        .expect("a complete leader");
    // A stale leader, of a term before the one they were seen committed
    // in, is not asked for them.
    let stale = elected(2, &[1, 2, 3], 0, Vec::new(), 3);
    assert_eq!(stale.term(), 1, "premise");
    oracle.observe(&stale, &[], false).expect("a stale leader");
}

/// Node `id` restored at term 1 under `conf` with nothing in its log,
/// PreVote off, with `bugs`.
fn member(id: NodeId, conf: Configuration, bugs: crate::core::config::Bugs) -> Raft {
    let mut cfg = Config::new(id);
    cfg.pre_vote = false;
    cfg.bugs = bugs;
    let restored = Restored {
        hard_state: HardState {
            term: 1,
            vote: 0,
            commit: 0,
        },
        snapshot: SnapshotMeta {
            index: 0,
            term: 0,
            config: conf,
        },
        snapshot_data: None,
        entries: Vec::new(),
    };
    Raft::new(cfg, restored).expect("valid config")
}

#[test]
fn a_non_voter_campaigning_breaks_membership() {
    // Node 1 is a learner of voters 2 and 3.
    let mut conf = Configuration::new([2, 3]);
    conf.learners.insert(1);
    let bugs = crate::core::config::Bugs {
        non_voters_campaign: true,
        ..Default::default()
    };
    let mut r = member(1, conf.clone(), bugs);
    tick_until(&mut r, Role::Candidate);
    violates(Oracle::default().observe(&r, &[], false), "membership");
    // Without the switch it never campaigns, and passes.
    let mut r = member(1, conf, Default::default());
    for _ in 0..100 {
        r.tick();
        flush(&mut r);
        Oracle::default()
            .observe(&r, &[], false)
            .expect("a learner that does not campaign");
    }
    assert_eq!(r.role(), Role::Follower, "premise");
}

#[test]
fn a_leader_still_leading_once_its_removal_committed_breaks_membership() {
    for keeps_leading in [true, false] {
        let bugs = crate::core::config::Bugs {
            removed_leader_keeps_leading: keeps_leading,
            ..Default::default()
        };
        let mut r = member(1, Configuration::new([1, 2]), bugs);
        tick_until(&mut r, Role::Candidate);
        let term = r.term();
        let from_2 = |body| Message {
            from: 2,
            to: 1,
            term,
            body,
        };
        let ack = |index| {
            from_2(Body::AppendEntriesResponse {
                index,
                success: true,
                hint: None,
            })
        };
        r.step(from_2(Body::RequestVoteResponse {
            granted: true,
            pre_vote: false,
        }));
        flush(&mut r);
        r.step(ack(1));
        flush(&mut r);
        assert_eq!(r.log().committed(), 1, "premise: the no-op committed");
        // Leader 1 removes itself: C_old,new at 2, then C_new ({2}) at 3.
        r.propose_config(Configuration::new([2]))
            .expect("the change");
        flush(&mut r);
        r.step(ack(2));
        flush(&mut r);
        r.step(ack(3));
        flush(&mut r);
        assert_eq!(r.log().committed(), 3, "premise: C_new committed");
        assert!(!r.config().is_voter(1), "premise: node 1 removed");
        let seen = Oracle::default().observe(&r, &[], false);
        if keeps_leading {
            assert_eq!(r.role(), Role::Leader, "premise");
            violates(seen, "membership");
        } else {
            assert_eq!(r.role(), Role::Follower, "premise: it stepped down");
            seen.expect("a removed leader that stepped down");
        }
    }
}

#[test]
fn a_commit_index_past_the_nodes_last_entry_breaks_commit_within_log() {
    // A follower holding entries 1 and 2 whose commit index says 3 (as a
    // follower taking the leader's commit index without capping it at its
    // last new entry would, Raft Figure 2, AppendEntries rule 5).
    let mut b = node(
        2,
        &[1, 2, 3],
        1,
        vec![command(1, 1, "a"), command(2, 1, "b")],
    );
    b.log_mut_unchecked().set_committed_unchecked(3);
    assert_eq!(
        (b.log().committed(), b.log().last_index()),
        (3, 2),
        "premise"
    );
    violates(
        Oracle::default().observe(&b, &[], false),
        "commit within log",
    );
    // At its last entry: fine.
    b.log_mut_unchecked().set_committed_unchecked(2);
    Oracle::default()
        .observe(&b, &[], false)
        .expect("a commit index at the last entry");
}

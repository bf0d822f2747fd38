//! Safety (§5.4): the election restriction (§5.4.1) and committing entries
//! from previous terms (§5.4.2, Figure 8).

use super::harness::*;
use crate::core::{Body, Message, Role, Term};

/// §5.4.1: "the voter denies its vote if its own log is more up-to-date
/// than that of the candidate ... If the logs have last entries with
/// different terms, then the log with the later term is more up-to-date. If
/// the logs end with the same term, then whichever log is longer is more
/// up-to-date." PreVote applies the same rule.
#[test]
fn vote_is_denied_to_a_less_up_to_date_log() {
    // (voter's log, candidate's (last_index, last_term), granted)
    let cases: &[(&[Term], (u64, u64), bool)] = &[
        (&[1], (0, 0), false),
        (&[1], (1, 1), true),
        (&[1], (2, 1), true),
        (&[1, 1], (1, 1), false), // same term, shorter
        (&[1, 1], (2, 1), true),
        (&[1, 1], (3, 1), true),
        (&[1, 1], (1, 2), true),  // later term, however short
        (&[1, 2], (3, 1), false), // longer but an earlier term
        (&[1, 2], (1, 2), false),
        (&[1, 2], (2, 2), true),
        (&[1, 2], (3, 2), true),
        (&[1, 2], (1, 3), true),
    ];
    for (i, &(log, last, granted)) in cases.iter().enumerate() {
        for pre_vote in [false, true] {
            let mut r = node(1, &[1, 2, 3], 2, log);
            let m = if pre_vote {
                pre_vote_req(2, 1, 3, last)
            } else {
                vote_req(2, 1, 3, last)
            };
            let out = step(&mut r, m);
            let resp = out.of_kind(if pre_vote {
                "PreVoteResponse"
            } else {
                "RequestVoteResponse"
            });
            assert_eq!(resp.len(), 1, "#{i} pre_vote={pre_vote}");
            assert_eq!(
                resp[0].body,
                Body::RequestVoteResponse { granted, pre_vote },
                "#{i} pre_vote={pre_vote}"
            );
            if pre_vote {
                assert_eq!(r.term(), 2, "#{i}: a probe does not raise the voter's term");
            } else {
                assert_eq!(r.term(), 3, "#{i}: the term is adopted either way");
                assert_eq!(r.hard_state().vote, if granted { 2 } else { 0 }, "#{i}");
            }
        }
    }
}

/// §5.4.2: "Raft never commits log entries from previous terms by counting
/// replicas. Only log entries from the leader's current term are committed
/// by counting replicas; once an entry from the current term has been
/// committed in this way, then all prior entries are committed indirectly."
#[test]
fn leader_only_commits_entries_of_its_term_by_counting() {
    let mut r = node(1, &[1, 2, 3], 2, &[1, 2]);
    make_leader(&mut r);
    let term = r.term();
    assert_eq!(term, 3);
    for (acked, want) in [(1, 0), (2, 0), (3, 3)] {
        step(&mut r, append_ok(2, 1, term, acked));
        assert_eq!(
            r.log().committed(),
            want,
            "after an acknowledgement of {acked}"
        );
    }
}

/// Removes the entries of `term` from AppendEntries: as if the leader had
/// crashed before sending them.
fn strip_term(term: Term) -> Filter {
    Box::new(move |m: &mut Message| {
        if let Body::AppendEntries { entries, .. } = &mut m.body {
            entries.retain(|e| e.term != term);
        }
        true
    })
}

/// Figure 8, up to (c): S1 led term 2 and replicated index 2 to S2; S5 led
/// term 3 and wrote a different index 2; now S1 leads term 4 and brings
/// index 2 (of term 2) to S3, so a majority (S1, S2, S3) holds it — but its
/// own entry of term 4 has reached nobody.
fn figure_8_c() -> Cluster {
    let ids = [1, 2, 3, 4, 5];
    let state: [(Term, &[Term]); 5] = [
        (3, &[1, 2]),
        (2, &[1, 2]),
        (3, &[1]),
        (3, &[1]),
        (3, &[1, 3]),
    ];
    // The paper's algorithm: no PreVote, no CheckQuorum; one entry per
    // AppendEntries so that S1 can "crash" between entries.
    let mut c = Cluster::from_logs(&ids, &state, |c| {
        c.pre_vote = false;
        c.check_quorum = false;
        c.max_batch_bytes = 1;
    });
    c.isolate(4);
    c.isolate(5);
    c.filter = Some(strip_term(4));
    c.elect(1);
    assert_eq!(c.node(1).term(), 4);
    for _ in 0..2 * T {
        c.tick(1);
    }
    for id in [1, 2, 3] {
        assert_eq!(
            c.node(id).log().term(2),
            Some(2),
            "S{id} holds index 2 of term 2"
        );
    }
    assert_eq!(c.node(1).log().term(3), Some(4), "S1's own entry of term 4");
    assert_eq!(
        c.node(2).log().last_index(),
        2,
        "S1's entry of term 4 reached nobody"
    );
    c
}

/// Figure 8 (c), (d): index 2 of term 2 is on a majority, yet S1 must not
/// commit it — and indeed S5 can still be elected and overwrite it.
#[test]
fn figure_8_an_earlier_term_entry_on_a_majority_is_not_committed() {
    let mut c = figure_8_c();
    assert_eq!(
        c.node(1).log().committed(),
        0,
        "S1 committed an entry of an earlier term by counting replicas"
    );
    for id in [2, 3] {
        assert!(c.node(id).log().committed() < 2, "S{id}");
    }

    // (d) S1 crashes; S5 is elected by S2, S3, S4 (its last term, 3, beats
    // their 2) and replaces index 2 everywhere.
    c.filter = None;
    c.heal();
    c.isolate(1);
    c.elect(5);
    assert_eq!(c.node(5).term(), 5);
    for _ in 0..2 {
        c.tick(5);
    }
    for id in [2, 3, 4, 5] {
        assert_eq!(
            c.node(id).log().term(2),
            Some(3),
            "S{id}: index 2 is now S5's entry of term 3"
        );
        assert_eq!(c.node(id).log().committed(), 3, "S{id}");
    }
}

/// Figure 8 (e): once S1 replicates an entry of its own term 4 on a
/// majority, that entry and index 2 before it are committed, and S5 can no
/// longer be elected.
#[test]
fn figure_8_an_entry_of_the_current_term_commits_the_earlier_ones() {
    let mut c = figure_8_c();
    c.filter = None;
    for _ in 0..2 {
        c.tick(1);
    }
    assert_eq!(c.node(1).log().committed(), 3);
    let committed: Vec<_> = c.applied[&1].iter().map(|e| (e.index, e.term)).collect();
    assert_eq!(committed, [(1, 1), (2, 2), (3, 4)]);

    // S1 crashes. S5 campaigns again and again but S2 and S3 refuse: their
    // logs end with term 4.
    c.heal();
    c.isolate(1);
    for _ in 0..10 * T {
        c.tick(5);
        assert_ne!(
            c.node(5).role(),
            Role::Leader,
            "S5 lacks committed entries but was elected"
        );
    }
    // Everybody runs: the new leader is S2 or S3, and it keeps index 2.
    c.tick_all(10 * T);
    let leader = (2..=5)
        .filter(|&id| c.node(id).role() == Role::Leader)
        .max_by_key(|&id| c.node(id).term())
        .expect("a leader among S2..S5");
    assert!([2, 3].contains(&leader), "S{leader} was elected");
    for id in [2, 3, 4, 5] {
        assert_eq!(c.node(id).log().term(2), Some(2), "S{id}");
        assert_eq!(c.node(id).log().term(3), Some(4), "S{id}");
    }
}

/// §5.4.1 (Leader Completeness): a node whose log lacks a committed entry
/// is never elected; the leader that follows has the entry.
#[test]
fn node_missing_a_committed_entry_is_never_elected() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    c.isolate(3);
    let (index, term) = c.propose(1, b"x");
    assert_eq!(c.node(1).log().committed(), index);
    c.heal();
    c.isolate(1);
    for _ in 0..10 * T {
        c.tick(3);
        assert_ne!(c.node(3).role(), Role::Leader);
    }
    c.tick_all(10 * T);
    let leader = [2, 3]
        .into_iter()
        .find(|&id| c.node(id).role() == Role::Leader)
        .expect("a leader among 2, 3");
    assert_eq!(leader, 2);
    assert_eq!(c.node(2).log().term(index), Some(term));
    assert_eq!(
        c.node(3).log().term(index),
        Some(term),
        "the new leader brings 3 up to date"
    );
}

//! Terms (§5.1) and leader election (§5.2), with the thesis' PreVote
//! (§9.6) and CheckQuorum (§6.2).

use std::collections::BTreeSet;

use super::harness::*;
use crate::core::{Body, NO_NODE, Raft, Restored, Role};

/// Puts a fresh member of {1, 2, 3} at term 1 into `role`.
fn in_role(role: Role) -> Raft {
    let mut r = node(1, &[1, 2, 3], 1, &[1]);
    match role {
        Role::Follower => {
            step(&mut r, heartbeat(2, 1, 1, 0));
        }
        Role::PreCandidate => {
            tick_until_campaign(&mut r);
        }
        Role::Candidate => {
            make_candidate(&mut r);
        }
        Role::Leader => {
            make_leader(&mut r);
        }
    }
    assert_eq!(r.role(), role);
    r
}

/// §5.1: "If one server's current term is smaller than the other's, then it
/// updates its current term to the larger value. If a candidate or leader
/// discovers that its term is out of date, it immediately reverts to
/// follower state." Checked for every role, from a request (AppendEntries
/// from a newer leader) and from a response.
#[test]
fn every_role_adopts_a_higher_term_from_a_request() {
    for role in [
        Role::Follower,
        Role::PreCandidate,
        Role::Candidate,
        Role::Leader,
    ] {
        let mut r = in_role(role);
        let term = r.term() + 3;
        let last = (r.log().last_index(), r.log().last_term());
        step(&mut r, append(3, 1, term, last, vec![], 0));
        assert_eq!(r.term(), term, "{role:?}");
        assert_eq!(r.role(), Role::Follower, "{role:?}");
        assert_eq!(
            r.leader(),
            Some(3),
            "{role:?}: the sender leads the new term"
        );
    }
}

#[test]
fn every_role_adopts_a_higher_term_from_a_response() {
    let responses = |from, term| {
        [
            vote_resp(from, 1, term, false, false),
            vote_resp(from, 1, term, false, true),
            append_ok(from, 1, term, 1),
            msg(from, 1, term, Body::HeartbeatResponse { round: 0 }),
        ]
    };
    for role in [
        Role::Follower,
        Role::PreCandidate,
        Role::Candidate,
        Role::Leader,
    ] {
        for (i, m) in responses(2, 9).into_iter().enumerate() {
            let mut r = in_role(role);
            step(&mut r, m);
            assert_eq!(r.term(), 9, "{role:?} #{i}");
            assert_eq!(r.role(), Role::Follower, "{role:?} #{i}");
            assert_eq!(
                r.leader(),
                None,
                "{role:?} #{i}: a response names no leader"
            );
        }
    }
}

/// A candidate also adopts the term of a higher-term RequestVote (with no
/// leader, nothing makes it ignore the request), and a follower the term of
/// a higher-term RequestVote even when it has to refuse the vote.
#[test]
fn non_leaders_adopt_a_higher_term_from_a_vote_request() {
    for role in [Role::Follower, Role::PreCandidate, Role::Candidate] {
        let mut r = node(1, &[1, 2, 3], 1, &[1]);
        match role {
            Role::PreCandidate => {
                tick_until_campaign(&mut r);
            }
            Role::Candidate => {
                make_candidate(&mut r);
            }
            _ => {}
        }
        assert_eq!(r.role(), role);
        // Behind on the log: the vote is refused but the term is adopted.
        let out = step(&mut r, vote_req(3, 1, 7, (0, 0)));
        assert_eq!((r.term(), r.role()), (7, Role::Follower), "{role:?}");
        let resp = out.of_kind("RequestVoteResponse");
        assert_eq!(resp.len(), 1);
        assert_eq!(resp[0].term, 7);
        assert!(matches!(
            resp[0].body,
            Body::RequestVoteResponse { granted: false, .. }
        ));
    }
}

/// A leader adopts the term of a RequestVote when it is not protecting a
/// lease (CheckQuorum off) and steps down.
#[test]
fn leader_without_check_quorum_adopts_a_higher_term_from_a_vote_request() {
    let mut r = node_with(1, &[1, 2, 3], 1, &[1], |c| c.check_quorum = false);
    make_leader(&mut r);
    let last = (r.log().last_index(), r.log().last_term());
    let out = step(&mut r, vote_req(2, 1, 5, last));
    assert_eq!((r.term(), r.role()), (5, Role::Follower));
    assert!(matches!(
        out.of_kind("RequestVoteResponse")[0].body,
        Body::RequestVoteResponse { granted: true, .. }
    ));
}

/// §5.1: "If a server receives a request with a stale term number, it
/// rejects the request." The rejection carries the current term, so the
/// stale sender learns it is behind; stale responses are ignored.
#[test]
fn stale_requests_are_rejected_with_the_current_term() {
    let mut r = node(1, &[1, 2, 3], 3, &[1, 2]);
    step(&mut r, heartbeat(2, 1, 3, 0));

    let out = step(&mut r, append(3, 1, 2, (2, 2), vec![entry(3, 2)], 3));
    let resp = out.of_kind("AppendEntriesResponse");
    assert_eq!(resp.len(), 1);
    assert_eq!(resp[0].term, 3);
    assert!(matches!(
        resp[0].body,
        Body::AppendEntriesResponse { success: false, .. }
    ));
    assert_eq!(r.log().last_index(), 2, "stale entries are not appended");
    assert_eq!(
        r.log().committed(),
        0,
        "a stale commit index is not adopted"
    );
    assert_eq!(r.leader(), Some(2), "a stale leader is not followed");

    let out = step(&mut r, heartbeat(3, 1, 1, 2));
    assert_eq!(out.of_kind("AppendEntriesResponse")[0].term, 3);
    assert_eq!(r.log().committed(), 0);

    let out = step(&mut r, vote_req(3, 1, 2, (9, 9)));
    let resp = out.of_kind("RequestVoteResponse");
    assert_eq!(resp.len(), 1);
    assert_eq!(resp[0].term, 3);
    assert!(matches!(
        resp[0].body,
        Body::RequestVoteResponse { granted: false, .. }
    ));
    assert_eq!(r.hard_state().vote, NO_NODE);
    assert_eq!(
        (r.term(), r.role(), r.leader()),
        (3, Role::Follower, Some(2))
    );
}

#[test]
fn stale_responses_are_ignored() {
    // A leader at term 2 hears answers from term 1.
    let mut r2 = node(1, &[1, 2, 3], 1, &[1]);
    make_leader(&mut r2);
    let term = r2.term();
    let before = r2.status();
    let out = step(&mut r2, append_ok(2, 1, term - 1, 2));
    assert!(out.all().is_empty(), "{:?}", out.all());
    let out = step(&mut r2, vote_resp(2, 1, term - 1, false, false));
    assert!(out.all().is_empty());
    assert_eq!(r2.status(), before);

    // A candidate is not elected by votes of an earlier term.
    let mut c = node_with(1, &[1, 2, 3], 4, &[1], |c| c.pre_vote = false);
    make_candidate(&mut c);
    step(&mut c, vote_resp(2, 1, 4, true, false));
    step(&mut c, vote_resp(3, 1, 4, true, false));
    assert_eq!((c.role(), c.term()), (Role::Candidate, 5));
}

/// §5.2: "When servers start up, they begin as followers."
#[test]
fn nodes_start_as_followers() {
    let r = node(1, &[1, 2, 3], 5, &[1, 5]);
    assert_eq!((r.role(), r.term(), r.leader()), (Role::Follower, 5, None));
}

/// §5.2: "Raft uses randomized election timeouts ... chosen randomly from a
/// fixed interval" — here `[T, 2T)`. The timeout lies in range, differs
/// across seeds, and covers the whole range over successive elections.
#[test]
fn election_timeouts_are_randomized_in_t_to_2t() {
    let mut seen = BTreeSet::new();
    for seed in 0..64 {
        let mut r = node_with(1, &[1, 2, 3], 1, &[1], |c| c.seed = seed);
        let (_, ticks) = tick_until_campaign(&mut r);
        assert!((T..2 * T).contains(&ticks), "seed {seed}: {ticks} ticks");
        seen.insert(ticks);
    }
    assert!(
        seen.len() >= 5,
        "timeouts barely differ across seeds: {seen:?}"
    );

    // Same seed, same timeouts: the core is deterministic.
    let first =
        |seed| tick_until_campaign(&mut node_with(1, &[1, 2, 3], 1, &[1], |c| c.seed = seed)).1;
    assert_eq!(first(7), first(7));

    // One node over many elections (each unanswered PreVote round times
    // out and starts another): every value of [T, 2T) occurs, no other.
    let mut r = node(1, &[1, 2, 3], 1, &[1]);
    let mut seen = BTreeSet::new();
    for _ in 0..50 * T {
        let (_, ticks) = tick_until_campaign(&mut r);
        assert!((T..2 * T).contains(&ticks), "{ticks} ticks");
        seen.insert(ticks);
    }
    assert_eq!(seen, (T..2 * T).collect());
}

/// §5.2: "To begin an election, a follower increments its current term and
/// transitions to candidate state. It then votes for itself and issues
/// RequestVote RPCs in parallel to each of the other servers." Also for a
/// candidate whose election timed out.
#[test]
fn follower_and_candidate_start_elections() {
    for start_as_candidate in [false, true] {
        let mut r = node_with(1, &[1, 2, 3], 1, &[1, 1], |c| c.pre_vote = false);
        if start_as_candidate {
            tick_until_campaign(&mut r);
            assert_eq!((r.role(), r.term()), (Role::Candidate, 2));
        }
        let term = r.term();
        let (out, _) = tick_until_campaign(&mut r);
        assert_eq!((r.role(), r.term()), (Role::Candidate, term + 1));
        assert_eq!(r.hard_state().vote, 1, "votes for itself");
        let reqs = out.of_kind("RequestVote");
        let to: Vec<_> = reqs.iter().map(|m| m.to).collect();
        assert_eq!(to, [2, 3]);
        for m in reqs {
            assert_eq!(m.term, term + 1);
            assert!(matches!(
                m.body,
                Body::RequestVote {
                    last_index: 2,
                    last_term: 1,
                    pre_vote: false,
                    transfer: false
                }
            ));
        }
    }
}

/// Figure 2: a follower campaigns once its election timeout elapses
/// "without receiving AppendEntries RPC from current leader or granting
/// vote to candidate". A higher term learned from a vote request it
/// rejects does not restart the timeout: otherwise a candidate that cannot
/// win (its log is behind), campaigning again and again without PreVote,
/// keeps every other node from ever campaigning (found by the simulation,
/// seeds 490 and 3157 of its sweep at the time, with clock drift).
#[test]
fn a_rejected_vote_request_does_not_restart_the_election_timeout() {
    let mut r = node_with(1, &[1, 2, 3], 1, &[1, 1], |c| c.pre_vote = false);
    step(&mut r, heartbeat(2, 1, 1, 0));
    let mut term = r.term();
    for _ in 0..2 * T {
        // Node 3 campaigns every tick with a log behind ours.
        term += 1;
        let out = step(&mut r, vote_req(3, 1, term, (1, 1)));
        assert!(
            out.of_kind("RequestVoteResponse")
                .iter()
                .all(|m| matches!(m.body, Body::RequestVoteResponse { granted: false, .. })),
            "a candidate behind us gets no vote"
        );
        r.tick();
        flush(&mut r);
        if r.role() == Role::Candidate {
            return;
        }
    }
    panic!("node 1 never campaigned: every rejected vote request restarted its timeout");
}

/// Figure 2: granting a vote restarts the election timeout ("If election
/// timeout elapses without receiving AppendEntries RPC from current leader
/// or granting vote to candidate: convert to candidate"). The higher term
/// of the request alone does not (see the test above), so the grant is
/// the only restart here: a voter near its timeout that grants does not
/// campaign before the winner's first heartbeat can reach it.
#[test]
fn a_granted_vote_restarts_the_election_timeout() {
    let mut r = node_with(1, &[1, 2, 3], 1, &[1], |c| c.pre_vote = false);
    for _ in 1..r.randomized_timeout {
        r.tick();
    }
    assert_eq!(r.role(), Role::Follower, "no campaign before the timeout");
    assert!(flush(&mut r).of_kind("RequestVote").is_empty());
    let term = r.term() + 1;
    let out = step(&mut r, vote_req(2, 1, term, (1, 1)));
    assert!(
        out.of_kind("RequestVoteResponse")
            .iter()
            .any(|m| matches!(m.body, Body::RequestVoteResponse { granted: true, .. })),
        "node 2 is up to date: it gets the vote"
    );
    assert_eq!(r.term(), term);
    // A full timeout less one tick after the grant: still waiting for
    // the winner's heartbeat.
    for n in 1..r.randomized_timeout {
        r.tick();
        let out = flush(&mut r);
        assert!(
            r.role() == Role::Follower && out.of_kind("RequestVote").is_empty(),
            "node 1 campaigned {n} ticks after granting its vote (timeout {} ticks): the grant did not restart its election timeout",
            r.randomized_timeout
        );
    }
}

/// §5.2: the three outcomes of one round of RequestVote: a candidate wins
/// with votes from a majority, returns to follower once a majority refused,
/// and otherwise remains a candidate.
#[test]
fn leader_election_in_one_round() {
    use Role::*;
    // (cluster size, votes received, resulting role)
    type Case = (u64, &'static [(u64, bool)], Role);
    let cases: &[Case] = &[
        (1, &[], Leader),
        (3, &[(2, true), (3, true)], Leader),
        (3, &[(2, true)], Leader),
        (5, &[(2, true), (3, true), (4, true), (5, true)], Leader),
        (5, &[(2, true), (3, true), (4, true)], Leader),
        (5, &[(2, true), (3, true)], Leader),
        (3, &[(2, false), (3, false)], Follower),
        (
            5,
            &[(2, false), (3, false), (4, false), (5, false)],
            Follower,
        ),
        (
            5,
            &[(2, true), (3, false), (4, false), (5, false)],
            Follower,
        ),
        (3, &[], Candidate),
        (5, &[(2, true)], Candidate),
        (5, &[(2, false), (3, false)], Candidate),
        (5, &[], Candidate),
    ];
    for (i, &(size, votes, want)) in cases.iter().enumerate() {
        let ids: Vec<u64> = (1..=size).collect();
        let mut r = node_with(1, &ids, 0, &[], |c| c.pre_vote = false);
        tick_until_campaign(&mut r);
        for &(from, granted) in votes {
            step(&mut r, vote_resp(from, 1, 1, granted, false));
        }
        assert_eq!((r.role(), r.term()), (want, 1), "case #{i}");
    }
}

/// The same outcomes through PreVote: the pre-candidate becomes a candidate
/// only with a majority of pre-votes, without raising its term before.
#[test]
fn pre_vote_round_precedes_the_election() {
    let mut r = node(1, &[1, 2, 3, 4, 5], 3, &[1]);
    let (out, _) = tick_until_campaign(&mut r);
    assert_eq!((r.role(), r.term()), (Role::PreCandidate, 3));
    let probes = out.of_kind("PreVote");
    assert_eq!(probes.len(), 4);
    assert!(
        probes.iter().all(|m| m.term == 4),
        "probes ask about the next term"
    );
    assert!(out.hard_states.is_empty(), "a PreVote round writes nothing");
    step(&mut r, vote_resp(2, 1, 4, true, true));
    assert_eq!((r.role(), r.term()), (Role::PreCandidate, 3));
    let out = step(&mut r, vote_resp(3, 1, 4, true, true));
    assert_eq!((r.role(), r.term()), (Role::Candidate, 4));
    assert_eq!(out.of_kind("RequestVote").len(), 4);

    // A majority of pre-vote refusals sends it back to follower, same term.
    let mut r = node(1, &[1, 2, 3], 3, &[1]);
    tick_until_campaign(&mut r);
    step(&mut r, vote_resp(2, 1, 3, false, true));
    assert_eq!(
        (r.role(), r.term()),
        (Role::PreCandidate, 3),
        "one refusal of three: 3's pre-vote could still make a majority"
    );
    step(&mut r, vote_resp(3, 1, 3, false, true));
    assert_eq!((r.role(), r.term()), (Role::Follower, 3));
}

/// §5.2: a candidate returns to follower only once a majority refused. In
/// three voters, one refusal leaves it a candidate, since the third vote
/// can still elect it; that grant then does.
#[test]
fn one_refusal_of_three_leaves_a_candidate_that_the_last_grant_elects() {
    let mut r = node_with(1, &[1, 2, 3], 1, &[1], |c| c.pre_vote = false);
    make_candidate(&mut r);
    let term = r.term();
    step(&mut r, vote_resp(2, 1, term, false, false));
    assert_eq!(
        (r.role(), r.term()),
        (Role::Candidate, term),
        "one refusal of three: 3's vote could still make a majority"
    );
    step(&mut r, vote_resp(3, 1, term, true, false));
    assert_eq!((r.role(), r.term()), (Role::Leader, term));
}

/// Thesis §9.6: a pre-vote is not a vote. Pre-vote grants that arrive
/// after the pre-candidate became a candidate (answers to its probe for the
/// term it now campaigns in) count for nothing: only RequestVote grants
/// elect it.
#[test]
fn late_pre_vote_grants_do_not_elect_a_candidate() {
    let mut r = node(1, &[1, 2, 3, 4, 5], 3, &[1]);
    tick_until_campaign(&mut r);
    step(&mut r, vote_resp(2, 1, 4, true, true));
    step(&mut r, vote_resp(3, 1, 4, true, true));
    assert_eq!((r.role(), r.term()), (Role::Candidate, 4));
    // The probes to 4 and 5 are answered late, in the candidate's term.
    step(&mut r, vote_resp(4, 1, 4, true, true));
    step(&mut r, vote_resp(5, 1, 4, true, true));
    assert_eq!(
        (r.role(), r.term()),
        (Role::Candidate, 4),
        "late pre-vote grants were counted as votes"
    );
    step(&mut r, vote_resp(2, 1, 4, true, false));
    step(&mut r, vote_resp(3, 1, 4, true, false));
    assert_eq!((r.role(), r.term()), (Role::Leader, 4));
}

/// §5.2: "Each server will vote for at most one candidate in a given term,
/// on a first-come-first-served basis." The vote is durable before it is
/// announced: the answer granting it is a `persisted_messages` entry, and
/// the Ready carrying it writes the vote.
#[test]
fn one_vote_per_term_first_come_first_served() {
    let cases = [
        (NO_NODE, 2, true),
        (NO_NODE, 3, true),
        (2, 2, true),
        (3, 3, true),
        (2, 3, false),
        (3, 2, false),
    ];
    for (i, (vote, candidate, granted)) in cases.into_iter().enumerate() {
        let mut restored = restored(&[1, 2, 3], 1, &[1]);
        restored.hard_state.vote = vote;
        let mut r = Raft::new(config(1), restored).expect("config");
        let out = step(&mut r, vote_req(candidate, 1, 1, (1, 1)));
        let resp = out.of_kind("RequestVoteResponse");
        assert_eq!(resp.len(), 1, "#{i}");
        assert_eq!(
            resp[0].body,
            Body::RequestVoteResponse {
                granted,
                pre_vote: false
            },
            "#{i}"
        );
        assert_eq!(resp[0].term, 1, "#{i}");
        let want_vote = if vote == NO_NODE { candidate } else { vote };
        assert_eq!(r.hard_state().vote, want_vote, "#{i}");
    }

    // Two candidates of one term: the first is granted, the second not.
    let mut r = node(1, &[1, 2, 3], 1, &[1]);
    let out = step(&mut r, vote_req(2, 1, 2, (1, 1)));
    assert!(matches!(
        out.of_kind("RequestVoteResponse")[0].body,
        Body::RequestVoteResponse { granted: true, .. }
    ));
    let out = step(&mut r, vote_req(3, 1, 2, (1, 1)));
    assert!(matches!(
        out.of_kind("RequestVoteResponse")[0].body,
        Body::RequestVoteResponse { granted: false, .. }
    ));
    assert_eq!(r.hard_state().vote, 2);
}

/// §5.2, "at most one candidate can win the election for a particular
/// term": a follower that knows its term's leader (it accepted that
/// leader's AppendEntries) and has not voted in the term grants no vote in
/// it. The leader won with a majority, so no other candidate of the term
/// can; a vote would only reset this follower's election timer in favour
/// of a candidate that cannot lead.
#[test]
fn a_follower_that_knows_its_terms_leader_grants_no_vote_in_that_term() {
    let mut r = node(1, &[1, 2, 3], 2, &[1, 2]);
    step(&mut r, heartbeat(2, 1, 2, 0));
    assert_eq!((r.leader(), r.hard_state().vote), (Some(2), NO_NODE));
    let out = step(&mut r, vote_req(3, 1, 2, (9, 9)));
    assert_eq!(
        out.of_kind("RequestVoteResponse")
            .first()
            .map(|m| m.body.clone()),
        Some(Body::RequestVoteResponse {
            granted: false,
            pre_vote: false
        }),
        "a vote in a term whose leader the follower knows"
    );
    assert_eq!(r.hard_state().vote, NO_NODE);
}

/// The vote is durable before the answer granting it leaves, whether the
/// request raised the term or not (Figure 2: "Persistent state ... updated
/// on stable storage before responding to RPCs").
#[test]
fn granted_vote_leaves_only_after_persistence() {
    // A request of a higher term, and one of the voter's current term.
    for voter_term in [1, 2] {
        let mut r = node(1, &[1, 2, 3], voter_term, &[1]);
        r.step(vote_req(2, 1, 2, (1, 1)));
        let rd = r.ready();
        assert!(
            rd.messages
                .iter()
                .all(|m| m.body.kind() != "RequestVoteResponse"),
            "voter at term {voter_term}: the vote leaves before it is durable: {:?}",
            rd.messages
        );
        let resp: Vec<_> = rd
            .persisted_messages
            .iter()
            .filter(|m| m.body.kind() == "RequestVoteResponse")
            .collect();
        assert_eq!(resp.len(), 1, "voter at term {voter_term}");
        assert!(matches!(
            resp[0].body,
            Body::RequestVoteResponse { granted: true, .. }
        ));
        let hs = rd.hard_state.expect("the vote is written");
        assert_eq!((hs.term, hs.vote), (2, 2));
        assert_eq!(rd.persist_marker.term_vote, Some((2, 2)));
        r.on_persisted(rd.persist_marker);
    }
}

/// Thesis §9.6: a pre-vote is not a vote: granting one writes nothing and
/// may be answered at once; the voter can still vote for someone else.
#[test]
fn pre_vote_is_not_a_vote() {
    let mut r = node(1, &[1, 2, 3], 1, &[1]);
    r.step(pre_vote_req(2, 1, 2, (1, 1)));
    let rd = r.ready();
    assert!(rd.hard_state.is_none());
    assert_eq!(rd.messages.len(), 1);
    assert_eq!(
        rd.messages[0].body,
        Body::RequestVoteResponse {
            granted: true,
            pre_vote: true
        }
    );
    assert_eq!(rd.messages[0].term, 2, "answered in the proposed term");
    r.on_persisted(rd.persist_marker);
    assert_eq!((r.term(), r.hard_state().vote), (1, NO_NODE));
    let out = step(&mut r, vote_req(3, 1, 2, (1, 1)));
    assert!(matches!(
        out.of_kind("RequestVoteResponse")[0].body,
        Body::RequestVoteResponse { granted: true, .. }
    ));
}

/// §5.2: "While waiting for votes, a candidate may receive an AppendEntries
/// RPC from another server claiming to be leader. If the leader's term ...
/// is at least as large as the candidate's current term, then the candidate
/// recognizes the leader as legitimate and returns to follower state."
#[test]
fn candidate_falls_back_to_a_legitimate_leader() {
    for (i, delta) in [0, 1].into_iter().enumerate() {
        for pre in [false, true] {
            let mut r = node_with(1, &[1, 2, 3], 1, &[1], |c| c.pre_vote = pre);
            if pre {
                tick_until_campaign(&mut r);
            } else {
                make_candidate(&mut r);
            }
            let term = r.term() + delta;
            let out = step(&mut r, append(2, 1, term, (1, 1), vec![entry(2, term)], 0));
            assert_eq!(
                (r.role(), r.term(), r.leader()),
                (Role::Follower, term, Some(2)),
                "#{i} pre={pre}"
            );
            assert!(matches!(
                out.of_kind("AppendEntriesResponse")[0].body,
                Body::AppendEntriesResponse {
                    success: true,
                    index: 2,
                    ..
                }
            ));
        }
    }
    // A heartbeat of the candidate's term does the same.
    let mut r = node_with(1, &[1, 2, 3], 1, &[1], |c| c.pre_vote = false);
    make_candidate(&mut r);
    let term = r.term();
    step(&mut r, heartbeat(3, 1, term, 0));
    assert_eq!(
        (r.role(), r.term(), r.leader()),
        (Role::Follower, term, Some(3))
    );
}

/// §5.2: "a candidate ... neither wins nor loses the election ... each
/// candidate will time out and start a new election by incrementing its
/// term". Five nodes, two candidates that split the vote: neither has a
/// majority and both remain candidates until their timeouts.
#[test]
fn candidate_stays_candidate_on_split_vote_then_retries() {
    let ids = [1, 2, 3, 4, 5];
    let one: &[u64] = &[1];
    let mut c = Cluster::from_logs(&ids, &[(1, one); 5], |c| c.pre_vote = false);
    // 1 and 5 campaign at the same time; 2 hears 1 first, 4 hears 5 first,
    // 3 hears neither.
    c.isolate(3);
    c.filter = Some(Box::new(|m| {
        !matches!((m.from, m.to), (1, 4) | (4, 1) | (5, 2) | (2, 5))
    }));
    for id in [1, 5] {
        let r = c.node_mut(id);
        while r.role() == Role::Follower {
            r.tick();
        }
    }
    c.deliver();
    for id in [1, 5] {
        assert_eq!(
            (c.node(id).role(), c.node(id).term()),
            (Role::Candidate, 2),
            "node {id}"
        );
    }
    assert!(c.leaders().is_empty());
    // Each has one grant (2 for 1, 4 for 5) and one refusal (from the other
    // candidate): it stays a candidate until its election timeout.
    c.heal();
    c.filter = None;
    let r = c.node_mut(1);
    for _ in 0..T - 1 {
        r.tick();
    }
    assert_eq!((r.role(), r.term()), (Role::Candidate, 2));
    let (out, _) = tick_until_campaign(r);
    assert_eq!((r.role(), r.term()), (Role::Candidate, 3));
    assert_eq!(out.of_kind("RequestVote").len(), 4);
}

/// Thesis §9.6: with PreVote, a partitioned node that keeps timing out
/// never raises its term, so it does not disrupt the cluster when it comes
/// back.
#[test]
fn pre_vote_keeps_a_partitioned_node_from_raising_its_term() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    let term = c.node(1).term();
    c.isolate(3);
    c.tick_all(10 * T);
    assert_eq!(
        c.node(3).term(),
        term,
        "the partitioned node raised its term"
    );
    assert_ne!(c.node(3).role(), Role::Leader);
    assert_eq!(c.leaders(), [1]);
    c.heal();
    c.tick_all(2 * T);
    assert_eq!(c.leaders(), [1]);
    for id in [1, 2, 3] {
        assert_eq!(c.node(id).term(), term, "node {id}");
    }
    assert_eq!(c.node(3).leader(), Some(1));

    // Without PreVote the same partition does raise the term (the reason
    // PreVote exists).
    let mut c = Cluster::with(&[1, 2, 3], |c| c.pre_vote = false);
    c.elect(1);
    c.isolate(3);
    c.tick_all(10 * T);
    assert!(c.node(3).term() > term);
}

/// Thesis §6.2 (CheckQuorum): a leader that does not hear from a quorum
/// within an election timeout steps down.
#[test]
fn check_quorum_leader_without_quorum_steps_down() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    let term = c.node(1).term();
    c.isolate(1);
    for _ in 0..T {
        c.tick(1);
    }
    // The first check may still count what it heard before the partition;
    // the second cannot.
    assert!(matches!(c.node(1).role(), Role::Leader | Role::Follower));
    for _ in 0..T {
        c.tick(1);
    }
    assert_eq!(c.node(1).role(), Role::Follower);
    assert_eq!(
        c.node(1).term(),
        term,
        "stepping down does not change the term"
    );

    // A leader with a quorum stays, however long it runs.
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    c.isolate(3);
    c.tick_all(10 * T);
    assert_eq!(c.leaders(), [1]);

    // Without CheckQuorum the isolated leader stays leader.
    let mut c = Cluster::with(&[1, 2, 3], |c| c.check_quorum = false);
    c.elect(1);
    c.isolate(1);
    for _ in 0..5 * T {
        c.tick(1);
    }
    assert_eq!(c.node(1).role(), Role::Leader);
}

/// Thesis §9.6: a pre-vote asks whether the voter *would* vote for the
/// candidate in the next term. A node grants one for a term above its own,
/// never for the term it is in when it has already voted in it (for
/// someone else) or follows a leader of it: it would refuse the real vote
/// in that term, so the probe must not tell the candidate to campaign.
/// Teeth round 3, mutant 220: a pre-vote was granted at any term.
#[test]
fn pre_vote_for_the_current_term_is_refused_once_the_node_voted_in_it() {
    let mut r = node(1, &[1, 2, 3], 1, &[1]);
    let out = step(&mut r, vote_req(2, 1, 2, (1, 1)));
    assert!(matches!(
        out.of_kind("RequestVoteResponse")[0].body,
        Body::RequestVoteResponse { granted: true, .. }
    ));
    assert_eq!((r.term(), r.hard_state().vote), (2, 2));
    let answers = |out: &Out| -> Vec<Body> {
        out.all()
            .into_iter()
            .filter(|m| m.to == 3)
            .map(|m| m.body)
            .collect()
    };
    let out = step(&mut r, pre_vote_req(3, 1, 2, (1, 1)));
    assert_eq!(
        answers(&out),
        vec![Body::RequestVoteResponse {
            granted: false,
            pre_vote: true
        }],
        "a pre-vote for a term the node already voted in"
    );
    // For the next term the same probe is granted, and changes nothing.
    let out = step(&mut r, pre_vote_req(3, 1, 3, (1, 1)));
    assert_eq!(
        answers(&out),
        vec![Body::RequestVoteResponse {
            granted: true,
            pre_vote: true
        }]
    );
    assert_eq!((r.term(), r.hard_state().vote), (2, 2));
}

/// Thesis §4.2.3, §9.6: a follower that heard from its leader within the
/// election timeout ignores RequestVote (and PreVote) of a higher term: no
/// answer, no new term, no vote. A leadership-transfer request is honoured.
#[test]
fn follower_in_lease_ignores_vote_requests() {
    let mut r = node(1, &[1, 2, 3], 2, &[1, 2]);
    step(&mut r, heartbeat(2, 1, 2, 0));
    let hs = r.hard_state();
    for m in [vote_req(3, 1, 3, (9, 9)), pre_vote_req(3, 1, 3, (9, 9))] {
        let out = step(&mut r, m);
        assert!(out.all().is_empty(), "{:?}", out.all());
        assert_eq!(r.hard_state(), hs);
        assert_eq!((r.role(), r.leader()), (Role::Follower, Some(2)));
    }
    // A transfer overrides the lease (thesis §3.10).
    let out = step(
        &mut r,
        msg(
            3,
            1,
            3,
            Body::RequestVote {
                last_index: 9,
                last_term: 9,
                pre_vote: false,
                transfer: true,
            },
        ),
    );
    assert_eq!((r.term(), r.hard_state().vote), (3, 3));
    assert!(matches!(
        out.of_kind("RequestVoteResponse")[0].body,
        Body::RequestVoteResponse { granted: true, .. }
    ));

    // A node that has not heard from a leader (no lease) answers.
    let mut r = node(1, &[1, 2, 3], 2, &[1, 2]);
    let out = step(&mut r, vote_req(3, 1, 3, (9, 9)));
    assert_eq!(r.hard_state().vote, 3);
    assert_eq!(out.of_kind("RequestVoteResponse").len(), 1);
}

/// Teeth (stop 53, mutant M6): the window in which a follower ignores
/// vote requests after hearing from its leader is exactly the minimum
/// election timeout (thesis §4.2.3: a server that "receives a RequestVote
/// request within the minimum election timeout of hearing from a current
/// leader" ignores it): still ignored one tick before it ends, answered
/// once it ended (a window one tick longer went unnoticed). And it exists
/// only with CheckQuorum, which keeps a leader that lost its quorum from
/// holding followers in a lease (module `inbound`, `in_lease`).
#[test]
fn the_vote_refusal_window_is_the_minimum_election_timeout() {
    for (ticks, ignored) in [(T - 1, true), (T, false)] {
        let mut r = node(1, &[1, 2, 3], 2, &[1, 2]);
        step(&mut r, heartbeat(2, 1, 2, 0));
        // No campaign of its own meanwhile: its timeout is past the ticks.
        r.randomized_timeout = 2 * T - 1;
        for _ in 0..ticks {
            r.tick();
        }
        flush(&mut r);
        assert_eq!(
            (r.role(), r.leader(), r.term()),
            (Role::Follower, Some(2), 2),
            "premise"
        );
        let out = step(&mut r, vote_req(3, 1, 3, (9, 9)));
        let granted = out.of_kind("RequestVoteResponse").len();
        if ignored {
            assert_eq!(
                (granted, r.term(), r.hard_state().vote),
                (0, 2, NO_NODE),
                "{ticks} ticks after the leader's heartbeat: a vote request was answered"
            );
        } else {
            assert_eq!(
                (granted, r.term(), r.hard_state().vote),
                (1, 3, 3),
                "{ticks} ticks after the leader's heartbeat: a vote request was ignored"
            );
        }
    }
    // Without CheckQuorum there is no lease: answered at once.
    let mut r = node_with(1, &[1, 2, 3], 2, &[1, 2], |c| c.check_quorum = false);
    step(&mut r, heartbeat(2, 1, 2, 0));
    let out = step(&mut r, vote_req(3, 1, 3, (9, 9)));
    assert_eq!(
        (
            out.of_kind("RequestVoteResponse").len(),
            r.hard_state().vote
        ),
        (1, 3),
        "a follower without CheckQuorum ignored a vote request"
    );
}

/// A node that knows no configuration (a learner-to-be, or a fresh node
/// not yet added) never campaigns.
#[test]
fn node_outside_the_configuration_never_campaigns() {
    let mut r = Raft::new(config(4), Restored::empty()).expect("config");
    for _ in 0..10 * T {
        r.tick();
    }
    assert!(flush(&mut r).all().is_empty());
    assert_eq!((r.role(), r.term()), (Role::Follower, 0));
}

/// Figure 2: the candidate's new term and self-vote are persisted before
/// its RequestVotes leave (a restart must not let it vote again in the
/// term).
#[test]
fn candidate_requests_votes_only_once_its_term_and_vote_are_durable() {
    let mut r = node_with(1, &[1, 2, 3], 1, &[1], |c| c.pre_vote = false);
    while r.role() == Role::Follower {
        r.tick();
    }
    let rd = r.ready();
    assert!(rd.messages.is_empty(), "{:?}", rd.messages);
    assert_eq!(rd.persisted_messages.len(), 2);
    assert!(
        rd.persisted_messages
            .iter()
            .all(|m| m.body.kind() == "RequestVote")
    );
    assert_eq!(rd.persist_marker.term_vote, Some((2, 1)));
}

/// Found by mutation audit (stop 52, M15): a leader heartbeats every
/// `heartbeat_ticks` ticks (§5.2: heartbeats keep followers from timing
/// out), not one tick later; nothing pinned the interval.
#[test]
fn a_leader_heartbeats_every_heartbeat_interval() {
    let mut r = node_with(1, &[1, 2, 3], 1, &[1], |c| c.heartbeat_ticks = 3);
    make_settled_leader(&mut r);
    flush(&mut r);
    for round in 0..2 {
        for k in 1..=2 {
            r.tick();
            let out = flush(&mut r);
            assert!(
                out.of_kind("Heartbeat").is_empty(),
                "round {round}: a heartbeat after {k} ticks: {:?}",
                out.all()
            );
        }
        r.tick();
        let out = flush(&mut r);
        let mut to: Vec<_> = out.of_kind("Heartbeat").iter().map(|m| m.to).collect();
        to.sort_unstable();
        assert_eq!(to, vec![2, 3], "round {round}: {:?}", out.all());
    }
}

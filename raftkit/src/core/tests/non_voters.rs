//! What a member that is not a voter (a learner) can and cannot make a
//! voter do (review stop 57, core2 findings 1, 2, 4 and core #4): it never
//! leads (thesis §3.4: only voters are elected; §4.2.1: learners do not
//! count toward elections), so a voter that has not heard this term's
//! leader yet (restarted, or a pre-candidate) refuses its leadership and
//! its terms for the longest election timeout; whoever it follows, it runs
//! a transfer campaign (thesis §3.10) only for a leader that was a voter;
//! it cannot take the leader's whole queue of followers' reads (§6.4.1).

use super::harness::*;
use crate::core::read_index::MAX_REMOTE_READS;
use crate::core::{
    Body, Config, Configuration, DropReason, Entry, HardState, Index, Payload, Raft, Restored,
    Role, Term,
};

/// Voters 1, 2, 3 and learner 4: node `id`, just (re)started at `term`
/// with a log of terms [1, 2] and no leader known, parameters adjusted by
/// `tweak`.
fn with_learner_at(id: u64, term: Term, tweak: impl Fn(&mut Config)) -> Raft {
    let mut restored = restored(&[1, 2, 3], term, &[1, 2]);
    restored.snapshot.config.learners.insert(4);
    restored.hard_state = HardState {
        term,
        vote: 0,
        commit: 0,
    };
    let mut cfg = config(id);
    tweak(&mut cfg);
    Raft::new(cfg, restored).expect("valid config")
}

fn lease_reads(c: &mut Config) {
    c.lease_reads = true;
}

/// Node 2 at term `t` with `last` its last index: learner 4's append at
/// `t + 1` of an entry it made up is refused (`NonMemberInLease`: no
/// leader taken, nothing appended; `why` names the failure), and voter 3's
/// heartbeat at that term is followed at once (the voter that wins the
/// term leads it).
#[track_caller]
fn refuses_learner_4_then_follows_3(f: &mut Raft, t: Term, last: Index, why: &str) {
    let got = step_4s_append(f, t, last, b"made up");
    assert_eq!(
        (got, f.leader(), f.log().last_index()),
        (Err(DropReason::NonMemberInLease), None, last),
        "{why}"
    );
    assert_eq!(f.step_checked(heartbeat(3, 2, t + 1, 0)), Ok(()));
    assert_eq!(f.leader(), Some(3));
}

/// Node 4's append to node 2 at term `t + 1` of one entry (`data`) after
/// `last` (of term `t`), committing it: what node 2's core answers.
fn step_4s_append(f: &mut Raft, t: Term, last: Index, data: &[u8]) -> Result<(), DropReason> {
    f.step_checked(append(
        4,
        2,
        t + 1,
        (last, t),
        vec![command(last + 1, t + 1, data)],
        last + 1,
    ))
}

/// A configuration entry of term 2 at `index`.
fn config_entry(index: Index, c: Configuration) -> Entry {
    Entry {
        index,
        term: 2,
        payload: Payload::Config(c),
    }
}

/// Voters {1, 2, 3, 4} restored at term 2 with a log of terms [1, 2],
/// then the operator's removal of 4: C_old,new (index 3) and C_new
/// {1, 2, 3} (index 4), both of term 2 and not yet committed.
fn restored_removing_4() -> Restored {
    let mut r = restored(&[1, 2, 3, 4], 2, &[1, 2]);
    r.entries.push(config_entry(
        3,
        Configuration::joint([1, 2, 3], [1, 2, 3, 4]),
    ));
    r.entries
        .push(config_entry(4, Configuration::new([1, 2, 3])));
    r
}

/// Review s57 (core2 #1): a pre-candidate forgot its leader but not its
/// term's leader; a learner's heartbeat at that term made it follow the
/// learner (and overwrote `term_leader`), whose TimeoutNow then started a
/// transfer campaign that voters grant inside the real leader's lease.
/// Raft §5.2 (at most one leader per term): once this term's leader is
/// known, nobody else leads it.
#[test]
fn a_pre_candidate_ignores_a_learner_claiming_its_term() {
    let mut f = with_learner_at(2, 2, lease_reads);
    step(&mut f, heartbeat(1, 2, 2, 0));
    tick_until_campaign(&mut f);
    assert_eq!(
        (f.role(), f.term(), f.leader()),
        (Role::PreCandidate, 2, None)
    );
    let hb = f.step_checked(heartbeat(4, 2, 2, 0));
    let tn = f.step_checked(msg(4, 2, 2, Body::TimeoutNow));
    let out = flush(&mut f);
    assert_eq!(
        (f.role(), f.term(), f.leader()),
        (Role::PreCandidate, 2, None),
        "the pre-candidate obeyed learner 4 (heartbeat: {hb:?}, TimeoutNow: {tn:?})"
    );
    assert_eq!(hb, Err(DropReason::SecondLeader));
    assert_eq!(tn, Err(DropReason::TimeoutNowNotFromLeader));
    assert!(out.of_kind("RequestVote").is_empty() && out.of_kind("TransferVote").is_empty());
    // Its term's leader is still followed, and still may order a transfer.
    assert_eq!(f.step_checked(heartbeat(1, 2, 2, 0)), Ok(()));
    assert_eq!((f.role(), f.leader()), (Role::Follower, Some(1)));
    assert_eq!(f.step_checked(msg(1, 2, 2, Body::TimeoutNow)), Ok(()));
    assert_eq!((f.role(), f.term()), (Role::Candidate, 3));
}

/// Review s57 (core2 #1): a restarted voter knows its term but not its
/// leader; it followed a learner claiming that term, committed and applied
/// an entry the learner made up (Log Matching and State Machine Safety
/// broken), obeyed its TimeoutNow, and dropped the real leader's messages
/// for the rest of the term. A learner cannot lead (thesis §3.4, §4.2.1):
/// until it has gone the longest election timeout without a leader, a
/// restarted voter refuses a non-voter's leadership of its term.
#[test]
fn a_restarted_voter_ignores_a_learner_claiming_its_term() {
    let mut f = with_learner_at(2, 2, |_| {});
    let made_up = append(4, 2, 2, (2, 2), vec![command(3, 2, b"made up")], 3);
    let got = [
        f.step_checked(made_up),
        f.step_checked(heartbeat(4, 2, 2, 3)),
        f.step_checked(msg(4, 2, 2, Body::TimeoutNow)),
    ];
    let out = flush(&mut f);
    let applied: Vec<_> = out.committed.iter().map(|e| (e.index, e.term)).collect();
    assert_eq!(
        (f.role(), f.term(), f.leader(), f.log().last_index()),
        (Role::Follower, 2, None, 2),
        "the restarted voter obeyed learner 4 ({got:?}): committed {}, applied {applied:?}",
        f.log().committed()
    );
    assert_eq!(
        got,
        [
            Err(DropReason::NonMemberInLease),
            Err(DropReason::NonMemberInLease),
            Err(DropReason::TimeoutNowNotFromLeader)
        ]
    );
    assert!(out.all().is_empty(), "answered the learner: {out:?}");
    // The real leader of the term is followed, and then only it.
    assert_eq!(f.step_checked(heartbeat(1, 2, 2, 0)), Ok(()));
    assert_eq!(f.leader(), Some(1));
    assert_eq!(
        f.step_checked(heartbeat(4, 2, 2, 0)),
        Err(DropReason::SecondLeader)
    );
    assert_eq!(f.leader(), Some(1));
}

/// Review s57 (core2 #1), the consequence: a learner made a restarted voter
/// follow it at the leader's term, then ordered it to campaign; a voter in
/// leader 1's lease granted the transfer vote (§3.10 overrides the lease)
/// and node 2 led a newer term while leader 1 still served lease reads
/// (thesis §6.4.1: no longer linearizable).
#[test]
fn a_learner_cannot_order_a_transfer_campaign_inside_the_leaders_lease() {
    let mut l = with_learner_at(1, 2, lease_reads);
    make_settled_leader(&mut l);
    let t = l.term();
    let mut round = None;
    for _ in 0..2 {
        l.tick();
        round = round.or(heartbeat_round(&flush(&mut l)));
    }
    let round = round.expect("a heartbeat round");
    step(&mut l, msg(2, 1, t, Body::HeartbeatResponse { round }));
    assert!(l.lease_read().is_some(), "leader 1 has a lease");

    // Node 2 restarts at term t; node 3 follows leader 1.
    let mut f = with_learner_at(2, t, lease_reads);
    let mut g = with_learner_at(3, t, lease_reads);
    step(&mut g, heartbeat(1, 3, t, 0));
    let a = f.step_checked(heartbeat(4, 2, t, 0));
    let b = f.step_checked(msg(4, 2, t, Body::TimeoutNow));
    let out = flush(&mut f);
    for v in out.all().into_iter().filter(|m| m.to == 3) {
        for m in step(&mut g, v).all() {
            step(&mut f, m);
        }
    }
    assert!(
        !(f.role() == Role::Leader && l.lease_read().is_some()),
        "node 2 leads term {} ({a:?}, {b:?}) while leader 1 of term {t} serves lease reads",
        f.term()
    );
    assert_eq!((f.role(), f.term()), (Role::Follower, t));
}

/// The rest of review s57 (core2 #1): a voter that has gone the longest
/// election timeout without a leader follows a node claiming its term
/// even if its configuration calls that node a learner (thesis §4.1: that
/// node may have been promoted by a configuration this one missed, and
/// refusing it for good would leave this voter behind for the whole
/// term). But a transfer campaign overrides the leases of the voters that
/// grant it (§3.10), so it is run only on the order of a leader that was a
/// voter of this node's configuration when first followed.
#[test]
fn a_learner_followed_after_the_window_cannot_order_a_campaign() {
    let mut f = with_learner_at(2, 2, |_| {});
    for _ in 0..2 * T {
        f.tick();
        flush(&mut f);
    }
    assert_eq!(f.step_checked(heartbeat(4, 2, 2, 0)), Ok(()));
    assert_eq!(
        f.leader(),
        Some(4),
        "§4.1: followed once the window is over"
    );
    let got = f.step_checked(msg(4, 2, 2, Body::TimeoutNow));
    let out = flush(&mut f);
    assert_eq!(
        (f.role(), f.term()),
        (Role::Follower, 2),
        "a learner ordered a transfer campaign ({got:?})"
    );
    assert_eq!(got, Err(DropReason::TimeoutNowNotFromLeader));
    assert!(out.of_kind("RequestVote").is_empty() && out.of_kind("TransferVote").is_empty());
}

/// Thesis §4.1, the honest side of the window: node 4 was promoted by a
/// configuration the restarted node 3 has not received; 4 leads 3's term.
/// Its messages are refused during the window, then followed, and the
/// promotion is taken.
#[test]
fn a_promotion_this_node_missed_is_followed_after_the_window() {
    use crate::core::{Configuration, Entry, Payload};
    let promotion = Entry {
        index: 3,
        term: 2,
        payload: Payload::Config(Configuration::new([1, 2, 3, 4])),
    };
    let mut f = with_learner_at(3, 2, |_| {});
    let m = append(4, 3, 2, (2, 2), vec![promotion], 2);
    assert_eq!(f.step_checked(m.clone()), Err(DropReason::NonMemberInLease));
    for _ in 0..2 * T {
        f.tick();
        flush(&mut f);
    }
    assert_eq!(f.step_checked(m), Ok(()));
    assert_eq!((f.term(), f.leader()), (2, Some(4)));
    assert!(f.config().is_voter(4), "the promotion was not taken");
    assert_eq!(f.log().committed(), 2);
}

/// Review s57 (core2 #2): a restarted voter, or a pre-candidate, took a
/// learner's higher term from a response, then answered the real leader in
/// that term and deposed it. No node needs a non-voter's response to learn
/// a term (Raft §5.1): an old leader learns it from voters, or steps down
/// by CheckQuorum (thesis §6.2), and candidates count only voters. A
/// voter's higher term is still taken.
#[test]
fn a_learner_cannot_raise_the_term_of_a_voter_without_a_leader() {
    let response = Body::HeartbeatResponse { round: 0 };
    // Restarted.
    let mut f = with_learner_at(2, 2, |_| {});
    let got = f.step_checked(msg(4, 2, 3, response.clone()));
    assert_eq!(
        f.term(),
        2,
        "a restarted voter took the learner's term ({got:?})"
    );
    assert_eq!(got, Err(DropReason::HigherTermFromNonVoter));
    // A leader's heartbeat at its term is then followed, not answered in
    // a higher term (which would depose it).
    let out = step(&mut f, heartbeat(1, 2, 2, 0));
    assert_eq!(f.leader(), Some(1));
    assert!(out.all().iter().all(|m| m.term == 2), "{out:?}");

    // A pre-candidate.
    let mut p = with_learner_at(2, 2, lease_reads);
    step(&mut p, heartbeat(1, 2, 2, 0));
    tick_until_campaign(&mut p);
    assert_eq!(p.role(), Role::PreCandidate);
    let got = p.step_checked(msg(4, 2, 3, response.clone()));
    assert_eq!(
        p.term(),
        2,
        "a pre-candidate took the learner's term ({got:?})"
    );
    assert_eq!(got, Err(DropReason::HigherTermFromNonVoter));
    assert_eq!(
        p.step_checked(heartbeat(4, 2, 3, 0)),
        Err(DropReason::NonMemberInLease)
    );
    assert_eq!((p.term(), p.role()), (2, Role::PreCandidate));

    // A voter's higher term is taken at once: its leader message, its
    // response, and (outside the startup lease) its vote request.
    let mut f = with_learner_at(2, 2, |_| {});
    assert_eq!(f.step_checked(msg(3, 2, 3, response)), Ok(()));
    assert_eq!(f.term(), 3);
    let mut f = with_learner_at(2, 2, |_| {});
    assert_eq!(f.step_checked(heartbeat(3, 2, 3, 0)), Ok(()));
    assert_eq!((f.term(), f.leader()), (3, Some(3)));
    let mut f = with_learner_at(2, 2, |_| {});
    let out = step(&mut f, vote_req(3, 2, 3, (2, 2)));
    assert_eq!((f.term(), f.hard_state().vote), (3, 3));
    assert_eq!(out.of_kind("RequestVoteResponse").len(), 1);
}

/// Review s57 (core2 #4): with CheckQuorum and PreVote off there is no
/// lease, and vote requests from a removed server were handled at any
/// time: each of its elections raised the members' terms and deposed the
/// leader (the problem of thesis §4.2.3). The thesis rule, independently
/// of CheckQuorum: a server that heard from a current leader within the
/// minimum election timeout does not take a non-member's vote request.
/// Outside that, it is handled (§4.1).
#[test]
fn without_check_quorum_a_removed_server_does_not_depose_the_leader() {
    let off = |c: &mut Config| {
        c.check_quorum = false;
        c.pre_vote = false;
    };
    let mut l = node_with(1, &[1, 2, 3], 1, &[1], off);
    make_settled_leader(&mut l);
    let t = l.term();
    let got = l.step_checked(vote_req(9, 1, t + 1, (100, t)));
    assert_eq!(
        (l.role(), l.term()),
        (Role::Leader, t),
        "a removed server deposed the leader ({got:?})"
    );
    assert_eq!(got, Err(DropReason::VoteFromNonMember));

    let mut f = node_with(2, &[1, 2, 3], 2, &[1, 2], off);
    step(&mut f, heartbeat(1, 2, 2, 0));
    assert_eq!(
        f.step_checked(vote_req(9, 2, 3, (100, 2))),
        Err(DropReason::VoteFromNonMember)
    );
    assert_eq!((f.term(), f.leader()), (2, Some(1)));

    // With no leader heard from, it is handled (thesis §4.1).
    let mut g = node_with(2, &[1, 2, 3], 2, &[1, 2], off);
    let out = step(&mut g, vote_req(9, 2, 3, (100, 2)));
    assert_eq!((g.term(), g.hard_state().vote), (3, 9));
    assert_eq!(out.of_kind("RequestVoteResponse").len(), 1);
}

/// Review s57 (core #4): the leader's room for followers' reads
/// ([`MAX_REMOTE_READS`]) was shared by all, so one member (a learner is
/// enough) kept it full and every other follower's reads were dropped.
/// Each member gets a fair share: the room divided among the other
/// members.
#[test]
fn one_member_cannot_take_every_follower_read_slot() {
    let mut r = with_learner_at(1, 2, |_| {});
    make_leader(&mut r); // the no-op is not committed: reads wait
    let term = r.term();
    for ctx in 0..MAX_REMOTE_READS as u64 {
        r.step(msg(4, 1, term, Body::ReadIndexRequest { ctx }));
    }
    for from in [2, 3] {
        assert_eq!(
            r.step_checked(msg(from, 1, term, Body::ReadIndexRequest { ctx: 0 })),
            Ok(()),
            "learner 4 took every follower-read slot: node {from}'s read is dropped"
        );
    }
    let share = MAX_REMOTE_READS / 3;
    assert_eq!(
        r.dropped().get(DropReason::ReadQueueFull),
        (MAX_REMOTE_READS - share) as u64
    );
}

/// A leader of term `t` that led for three election timeouts (its followers
/// 2 and 3 acknowledge every heartbeat round): the time it last heard
/// "from its term's leader" is long past unless leading counts.
fn leader_for_three_timeouts() -> Raft {
    let mut l = with_learner_at(1, 2, |_| {});
    make_settled_leader(&mut l);
    let t = l.term();
    for _ in 0..3 * T {
        l.tick();
        let out = flush(&mut l);
        if let Some(round) = heartbeat_round(&out) {
            for p in [2, 3] {
                step(&mut l, msg(p, 1, t, Body::HeartbeatResponse { round }));
            }
        }
    }
    assert_eq!(l.role(), Role::Leader);
    l
}

/// Review s58 (finding 1): a leader deposed by its own transfer's vote
/// request is, until the new leader's first heartbeat, a voter of the new
/// term that knows no leader of it. Its window (the longest election
/// timeout since it last heard its term's leader) counted from when it
/// *became* leader, so it had long closed: it followed learner 4 at the new
/// term, applied 4's made-up entry, and then dropped the real leader's
/// heartbeats as a second leader. Leading is hearing the leader: the window
/// restarts when the node stops leading.
#[test]
fn a_deposed_leader_refuses_a_learner_claiming_the_new_term() {
    let mut l = leader_for_three_timeouts();
    let t = l.term();
    l.transfer_leadership(3).expect("transfer");
    flush(&mut l);
    let last = l.log().last_index();
    let committed = l.log().committed();
    step(
        &mut l,
        msg(
            3,
            1,
            t + 1,
            Body::RequestVote {
                last_index: last,
                last_term: t,
                pre_vote: false,
                transfer: true,
            },
        ),
    );
    assert_eq!((l.role(), l.term()), (Role::Follower, t + 1));
    let made_up = append(
        4,
        1,
        t + 1,
        (last, t),
        vec![command(last + 1, t + 1, b"made up")],
        last + 1,
    );
    let got = l.step_checked(made_up);
    let out = flush(&mut l);
    let applied: Vec<_> = out.committed.iter().map(|e| (e.index, e.term)).collect();
    let real = l.step_checked(heartbeat(3, 1, t + 1, committed));
    assert_eq!(
        (got, real),
        (Err(DropReason::NonMemberInLease), Ok(())),
        "the old leader followed learner 4: leader {:?}, committed {}, applied {applied:?}",
        l.leader(),
        l.log().committed()
    );
    assert_eq!(
        (l.log().last_index(), l.log().committed()),
        (last, committed)
    );
    assert_eq!(l.leader(), Some(3));
}

/// Review s58 (finding 1), the higher-term variant after a CheckQuorum
/// step-down (thesis §6.2): the old leader, now a follower that knows no
/// leader, refused a learner's higher term only if it had heard a leader
/// recently, and leading did not count. It jumped to the learner's term,
/// and its answers there would depose the next real leader (stop 57).
#[test]
fn a_leader_that_stepped_down_refuses_a_learners_higher_term() {
    let mut l = leader_for_three_timeouts();
    let t = l.term();
    // No acknowledgement for an election timeout: CheckQuorum steps down.
    for _ in 0..2 * T {
        if l.role() != Role::Leader {
            break;
        }
        l.tick();
        flush(&mut l);
    }
    assert_eq!((l.role(), l.term(), l.leader()), (Role::Follower, t, None));
    let got = l.step_checked(heartbeat(4, 1, t + 5, 0));
    let out = flush(&mut l);
    assert_eq!(
        (got, l.term(), l.leader()),
        (Err(DropReason::NonMemberInLease), t, None),
        "the old leader took learner 4's term and leadership: {:?}",
        out.all()
    );
    // A voter's higher term is taken at once.
    assert_eq!(l.step_checked(heartbeat(2, 1, t + 1, 0)), Ok(()));
    assert_eq!((l.term(), l.leader()), (t + 1, Some(2)));
}

/// Node 2 (voters 1, 2, 3, learner 4, lease reads on) that heard leader 1
/// of its term once, just after its startup lease, and nothing since, for
/// an election timeout and one tick: out of the lease, still a follower
/// (its own timer is held back, white box).
fn voter_out_of_its_leaders_lease() -> Raft {
    let mut f = with_learner_at(2, 2, lease_reads);
    let t = f.term();
    for _ in 0..T {
        f.tick();
    }
    step(&mut f, heartbeat(1, 2, t, 0));
    f.randomized_timeout = 2 * T - 1;
    for _ in 0..=T {
        f.tick();
        flush(&mut f);
    }
    assert_eq!((f.role(), f.term()), (Role::Follower, 2));
    f
}

/// Review s58 (finding 1, the related note): a voter that grants its vote
/// in a slow election (more than an election timeout after it last heard
/// its leader) knows no leader of the new term until the winner's first
/// heartbeat. Its window counted from its old leader's last heartbeat, so
/// it had closed by then and a learner could lead the new term on it.
/// Granting a (real) vote starts a window of its own, which spares only
/// the candidate voted for (next test).
#[test]
fn a_voter_that_just_granted_a_vote_refuses_a_learner_claiming_that_term() {
    let mut f = voter_out_of_its_leaders_lease();
    let t = f.term();
    let last = f.log().last_index();
    let vote = f.step_checked(vote_req(3, 2, t + 1, (last, t)));
    assert_eq!((vote, f.hard_state().vote), (Ok(()), 3));
    f.randomized_timeout = 2 * T - 1;
    for _ in 0..T - 1 {
        f.tick();
        flush(&mut f);
    }
    assert_eq!(
        (f.role(), f.term(), f.leader()),
        (Role::Follower, t + 1, None)
    );
    refuses_learner_4_then_follows_3(
        &mut f,
        t,
        last,
        "a voter that just voted followed learner 4 at the new term",
    );
}

/// The other side of the vote window (stop 59): the candidate this node
/// voted for is followed at once at the term of the vote, even when this
/// node's configuration calls it a learner (thesis §4.1: a promotion this
/// node missed; it may have needed this vote, and refusing it made it step
/// down by CheckQuorum for want of this node, which voted again: nobody
/// ever led, `review_s57::s57_a_freshly_promoted_voter_wins_an_election`).
/// Inside the window it is spared only at that term, and another learner
/// is refused at any term.
#[test]
fn the_vote_window_spares_only_the_candidate_voted_for_at_its_term() {
    let mut f = voter_out_of_its_leaders_lease();
    let t = f.term();
    let last = f.log().last_index();
    assert_eq!(f.step_checked(vote_req(4, 2, t + 1, (last, t))), Ok(()));
    assert_eq!(f.hard_state().vote, 4);
    f.randomized_timeout = 2 * T - 1;
    for _ in 0..T - 1 {
        f.tick();
        flush(&mut f);
    }
    assert_eq!(
        (f.role(), f.term(), f.leader()),
        (Role::Follower, t + 1, None)
    );
    // Past the old leader's window; inside the vote's.
    assert_eq!(
        f.step_checked(heartbeat(5, 2, t + 1, 0)),
        Err(DropReason::NonMemberInLease),
        "a non-member claimed the term of this node's vote"
    );
    assert_eq!(
        f.step_checked(heartbeat(4, 2, t + 2, 0)),
        Err(DropReason::NonMemberInLease),
        "the candidate voted for, a learner, claimed a term it got no vote in"
    );
    assert_eq!(f.step_checked(heartbeat(4, 2, t + 1, 0)), Ok(()));
    assert_eq!((f.term(), f.leader()), (t + 1, Some(4)));
}

/// Review s58 (finding 2): node 2's configuration is stale (it still calls
/// 4 a voter; 4 was demoted and node 3 knows). Inside leader 1's lease, 4
/// leads node 2 in a higher term, makes its log the most up to date and
/// orders a transfer campaign, at a term two above the lease's. A real
/// transfer target campaigns at its leader's term plus one (thesis §3.10),
/// so only such a vote request overrides a lease (§6.4.1).
#[test]
fn a_demoted_voter_cannot_order_a_transfer_through_a_lagging_node() {
    let t = 2;
    let mut f = node_with(2, &[1, 2, 3, 4], t, &[1, 2], lease_reads);
    let mut g = with_learner_at(3, t, lease_reads);
    step(&mut f, heartbeat(1, 2, t, 2));
    step(&mut g, heartbeat(1, 3, t, 2));
    let a = f.step_checked(heartbeat(4, 2, t + 1, 0));
    let b = f.step_checked(append(
        4,
        2,
        t + 1,
        (2, t),
        vec![command(3, t + 1, b"made up")],
        0,
    ));
    let c = f.step_checked(msg(4, 2, t + 1, Body::TimeoutNow));
    let out = flush(&mut f);
    // The documented limit (module docs of `inbound`): node 2 trusts a node
    // its stale configuration calls a voter, and campaigns.
    assert_eq!((f.role(), f.term()), (Role::Candidate, t + 2));
    let mut granted = false;
    for v in out.all().into_iter().filter(|m| m.to == 3) {
        for m in step(&mut g, v).all() {
            if matches!(
                m.body,
                Body::RequestVoteResponse {
                    granted: true,
                    pre_vote: false
                }
            ) {
                granted = true;
            }
        }
    }
    assert!(
        !granted,
        "voter 3 (in leader 1's lease, term {}) granted node 2's transfer vote at term {} ordered by demoted 4 ({a:?} {b:?} {c:?})",
        g.term(),
        f.term()
    );
    assert_eq!((g.term(), g.leader(), g.hard_state().vote), (t, Some(1), 0));
}

/// Review s58 (finding 3), thesis §4.2.2: a leader removed by C_new keeps
/// replicating C_new until it commits, without counting itself. A follower
/// that took C_new and restarted refused it for the longest election
/// timeout (it is not a voter of C_new, and the follower knew no leader of
/// its term): C_new stalled, and the old leader stepped down by
/// CheckQuorum. The leader of a configuration change is a voter of the
/// last committed configuration, which this node's log holds.
#[test]
fn a_restarted_follower_follows_a_leader_replicating_its_removal() {
    use crate::core::{Configuration, Entry, Payload};
    let mut r = restored(&[1, 2, 3], 2, &[1, 2]);
    r.entries.push(Entry {
        index: 3,
        term: 2,
        payload: Payload::Config(Configuration::joint([2, 3], [1, 2, 3])),
    });
    r.entries.push(Entry {
        index: 4,
        term: 2,
        payload: Payload::Config(Configuration::new([2, 3])),
    });
    r.hard_state.commit = 3;
    let mut f = Raft::new(config(2), r).expect("valid");
    let hb = f.step_checked(heartbeat(1, 2, 2, 3));
    let ap = f.step_checked(append(1, 2, 2, (4, 2), vec![], 4));
    assert_eq!(
        (hb, ap, f.log().committed(), f.leader()),
        (Ok(()), Ok(()), 4, Some(1)),
        "the restarted follower refused leader 1 replicating C_new"
    );
}

/// The narrow side of finding 3's fix: while C_new is pending, a learner
/// (not a voter of the committed configuration) still gets no pass from a
/// restarted node; a voter of the committed configuration does.
#[test]
fn only_a_voter_of_the_committed_configuration_leads_a_restarted_node_early() {
    use crate::core::{Configuration, Entry, Payload};
    let mut r = restored(&[1, 2, 3], 2, &[1, 2]);
    r.snapshot.config.learners.insert(4);
    let mut c_new = Configuration::new([2, 3]);
    c_new.learners.insert(4);
    r.entries.push(Entry {
        index: 3,
        term: 2,
        payload: Payload::Config(c_new),
    });
    r.hard_state.commit = 2;
    let mut f = Raft::new(config(2), r).expect("valid");
    assert_eq!(
        f.step_checked(heartbeat(4, 2, 2, 0)),
        Err(DropReason::NonMemberInLease)
    );
    assert_eq!(f.step_checked(heartbeat(1, 2, 2, 3)), Ok(()));
    assert_eq!(f.leader(), Some(1));
}

/// Stop 59's limit (module docs of `inbound`, "a configuration the
/// non-voter wrote"), closed by the transfer vote naming its leader.
/// Leader 1 leads term `t + 1` and voter 3 is in its lease; voter 2, cut
/// off for the longest election timeout, is still at `t`. Learner 4 leads
/// 2 at `t` (outside the window, thesis §4.1), but is not trusted with a
/// TimeoutNow, even once 2 holds the configuration 4 wrote promoting
/// itself (the flag is frozen for the term). At `t + 1`, 4 is a voter of
/// 2's configuration: its TimeoutNow is obeyed, and 2 campaigns at
/// `t + 2`, one term above voter 3's. Voter 3 granted that vote inside
/// leader 1's lease (§6.4.1); now the vote names 4, not 3's leader of
/// `t + 1`, and 3 refuses it (thesis §4.2.3).
#[test]
fn a_learner_that_wrote_its_own_promotion_cannot_order_a_transfer_through_a_lease() {
    use crate::core::{Configuration, Entry, Payload};
    let t = 2;
    let mut f = with_learner_at(2, t, lease_reads);
    for _ in 0..2 * T {
        f.tick();
        flush(&mut f);
    }
    let mut g = with_learner_at(3, t + 1, lease_reads);
    assert_eq!(g.step_checked(heartbeat(1, 3, t + 1, 2)), Ok(()));
    let promotion = Entry {
        index: 3,
        term: t,
        payload: Payload::Config(Configuration::new([1, 2, 3, 4])),
    };
    assert_eq!(f.step_checked(heartbeat(4, 2, t, 0)), Ok(()));
    assert_eq!(
        f.step_checked(append(4, 2, t, (2, t), vec![promotion], 3)),
        Ok(())
    );
    assert!(f.config().is_voter(4) && f.log().committed() == 3);
    // Same term: still not trusted (review s58, finding 4: frozen).
    assert_eq!(
        f.step_checked(msg(4, 2, t, Body::TimeoutNow)),
        Err(DropReason::TimeoutNowNotFromLeader)
    );
    // The next term: a voter of 2's configuration now.
    assert_eq!(f.step_checked(heartbeat(4, 2, t + 1, 3)), Ok(()));
    let made_up = vec![command(4, t + 1, b"made up")];
    assert_eq!(
        f.step_checked(append(4, 2, t + 1, (3, t), made_up, 3)),
        Ok(())
    );
    assert_eq!(f.step_checked(msg(4, 2, t + 1, Body::TimeoutNow)), Ok(()));
    assert_eq!((f.role(), f.term()), (Role::Candidate, t + 2));
    let granted = transfer_vote_granted(&mut g, &mut f);
    assert!(
        !granted,
        "voter 3 (lease of 1, term {}) granted 2's transfer vote ordered by learner 4",
        g.term()
    );
    assert_eq!(
        (g.term(), g.leader(), g.hard_state().vote),
        (t + 1, Some(1), 0)
    );
}

/// Review s59 (§5 gap): the §4.2.2 pass goes by the configuration at the
/// commit index, not by an older committed one (the snapshot's). 4 was a
/// voter of the snapshot's configuration, was removed (committed at 3-4)
/// and re-added as a learner (committed at 5); a pending change at 6
/// removes 1. A restarted node gives 4 no pass.
#[test]
fn rev_a_voter_of_an_older_committed_configuration_gets_no_pass() {
    let mut r = restored_removing_4();
    let mut learner = Configuration::new([1, 2, 3]);
    learner.learners.insert(4);
    r.entries.push(config_entry(5, learner));
    let mut joint = Configuration::joint([2, 3], [1, 2, 3]);
    joint.learners.insert(4);
    r.entries.push(config_entry(6, joint));
    r.hard_state.commit = 5;
    let mut f = Raft::new(config(2), r).expect("valid");
    assert_eq!(
        f.step_checked(heartbeat(4, 2, 2, 0)),
        Err(DropReason::NonMemberInLease)
    );
}

/// Review s59 (finding 2, the cache of the committed configuration): the
/// last committed configuration moves when the commit index does, here by
/// a heartbeat. Voters {1, 2, 3, 4}; C_old,new (3) is committed, C_new
/// removing 4 (4) is pending, another change (5) follows. Leader 1's
/// heartbeat commits C_new; node 2 then moves to term 3 by a vote (no
/// leader of that term known, inside its window): 4, a voter of the old
/// committed configuration only, gets no pass at term 3 although a change
/// (5) is still pending.
#[test]
fn a_removal_committed_by_a_heartbeat_ends_the_removed_voters_pass() {
    let mut r = restored_removing_4();
    let mut next = Configuration::new([1, 2, 3]);
    next.learners.insert(5);
    r.entries.push(config_entry(5, next));
    r.hard_state.commit = 3;
    let mut cfg = config(2);
    // Without CheckQuorum, a vote request right after the leader's
    // heartbeat is handled (thesis §4.2.3 guards only against non-members).
    cfg.check_quorum = false;
    let mut f = Raft::new(cfg, r).expect("valid");
    assert_eq!(f.step_checked(heartbeat(1, 2, 2, 4)), Ok(()));
    assert_eq!(f.log().committed(), 4);
    assert_eq!(f.step_checked(vote_req(3, 2, 3, (5, 2))), Ok(()));
    flush(&mut f);
    assert_eq!((f.term(), f.leader()), (3, None));
    assert_eq!(
        f.step_checked(heartbeat(4, 2, 3, 0)),
        Err(DropReason::NonMemberInLease),
        "removed 4 led node 2 after its removal committed (leader {:?})",
        f.leader()
    );
}

/// The documented limit of review s59, finding 2 (module docs of
/// `inbound`, the table row on leader messages), pinned so that a fix
/// shows here. Voters {1, 2, 3, 4}; the operator removes 4: C_old,new (3)
/// is committed, C_new (4) is pending. Node 2 restarts; before leader 1's
/// first heartbeat, 4 (a voter of the committed configuration, removed by
/// the pending one) leads it at its term, and node 2 applies an entry 4
/// made up; leader 1 is then a second leader of the term.
#[test]
fn limit_a_removed_voter_leads_a_restarted_node_while_its_removal_is_pending() {
    let mut r = restored_removing_4();
    r.hard_state.commit = 3;
    let mut f = Raft::new(config(2), r).expect("valid");
    assert_eq!(f.step_checked(heartbeat(4, 2, 2, 3)), Ok(()));
    let made_up = vec![command(5, 2, b"made up")];
    assert_eq!(f.step_checked(append(4, 2, 2, (4, 2), made_up, 5)), Ok(()));
    let applied: Vec<_> = flush(&mut f)
        .committed
        .iter()
        .map(|e| (e.index, e.term))
        .collect();
    assert!(applied.contains(&(5, 2)), "applied {applied:?}");
    assert_eq!(f.leader(), Some(4));
    assert_eq!(
        f.step_checked(heartbeat(1, 2, 2, 4)),
        Err(DropReason::SecondLeader),
        "the documented limit no longer holds: update the module docs of `inbound`"
    );
}

/// Whether voter `g` grants, for real, a vote request `f` sends it.
fn transfer_vote_granted(g: &mut Raft, f: &mut Raft) -> bool {
    let (mut granted, to) = (false, g.id());
    for v in flush(f).all().into_iter().filter(|m| m.to == to) {
        for m in step(g, v).all() {
            granted |= matches!(
                m.body,
                Body::RequestVoteResponse {
                    granted: true,
                    pre_vote: false
                }
            );
        }
    }
    granted
}

/// Review s59, finding 1 (same term): restarted node 2 (a stale
/// configuration still lists 4 as a voter) knows no leader of its term
/// `t`. Demoted 4 leads it at `t`, makes its log the most up to date and
/// orders a transfer campaign at `t + 1`, one term above voter 3's lease
/// (of leader 1), which granted it (§6.4.1). Now the transfer vote names
/// 4, not voter 3's leader of `t`: refused as an ordinary vote request
/// inside the lease (thesis §4.2.3; module docs of `transfer`).
#[test]
fn rev_same_term_demoted_voter_orders_a_transfer_through_a_restarted_node() {
    let t = 2;
    let mut f = node_with(2, &[1, 2, 3, 4], t, &[1, 2], lease_reads);
    let mut g = with_learner_at(3, t, lease_reads);
    step(&mut g, heartbeat(1, 3, t, 2));
    let a = f.step_checked(heartbeat(4, 2, t, 0));
    let made_up = vec![command(3, t, b"made up")];
    let b = f.step_checked(append(4, 2, t, (2, t), made_up, 0));
    let c = f.step_checked(msg(4, 2, t, Body::TimeoutNow));
    // The premise (review s60 core #3): 2 followed 4 and campaigns.
    assert_eq!(
        (a, b, c, f.role(), f.term()),
        (Ok(()), Ok(()), Ok(()), Role::Candidate, t + 1),
        "node 2 did not follow demoted 4 into a transfer campaign"
    );
    let granted = transfer_vote_granted(&mut g, &mut f);
    assert!(
        !granted,
        "voter 3 (lease of 1, term {}) granted 2's transfer vote at {} ordered by demoted 4",
        g.term(),
        f.term()
    );
}

/// Review s59, finding 1 (lagging): as above, node 2 one term behind (it
/// missed the election of `t`); 4 leads it at `t`. Refused likewise.
#[test]
fn rev_lower_term_demoted_voter_orders_a_transfer_through_a_lagging_node() {
    let t = 2;
    let mut f = node_with(2, &[1, 2, 3, 4], t - 1, &[1], lease_reads);
    let mut g = with_learner_at(3, t, lease_reads);
    step(&mut g, heartbeat(1, 3, t, 2));
    let a = f.step_checked(heartbeat(4, 2, t, 0));
    let made_up = vec![command(2, t, b"x"), command(3, t, b"made up")];
    let b = f.step_checked(append(4, 2, t, (1, 1), made_up, 0));
    let c = f.step_checked(msg(4, 2, t, Body::TimeoutNow));
    // The premise (review s60 core #3): 2 followed 4 and campaigns.
    assert_eq!(
        (a, b, c, f.role(), f.term()),
        (Ok(()), Ok(()), Ok(()), Role::Candidate, t + 1),
        "node 2 did not follow demoted 4 into a transfer campaign"
    );
    let granted = transfer_vote_granted(&mut g, &mut f);
    assert!(
        !granted,
        "voter 3 (lease of 1, term {}) granted 2's transfer vote at {} ordered by demoted 4",
        g.term(),
        f.term()
    );
}

/// The transfer vote's rule itself (module docs of `transfer`): voter 3,
/// in leader 1's lease at term `t`, grants a transfer vote at `t + 1`
/// only when it names 1; naming another node (4, or nobody) it is an
/// ordinary vote request, ignored inside the lease (thesis §4.2.3); two
/// terms up it is ignored whoever it names (review s58, finding 2).
#[test]
fn a_transfer_vote_lifts_a_lease_only_for_the_voters_own_leader() {
    let t = 2;
    let vote = |term, leader| {
        msg(
            2,
            3,
            term,
            Body::TransferVote {
                last_index: 2,
                last_term: t,
                leader,
            },
        )
    };
    let granted = |out: Out| {
        out.all().iter().any(|m| {
            matches!(
                m.body,
                Body::RequestVoteResponse {
                    granted: true,
                    pre_vote: false
                }
            )
        })
    };
    for (term, leader, want) in [
        (t + 1, 4, false),
        (t + 1, 0, false),
        (t + 2, 1, false),
        (t + 1, 1, true),
    ] {
        let mut g = node_with(3, &[1, 2, 3, 4], t, &[1, 2], lease_reads);
        step(&mut g, heartbeat(1, 3, t, 2));
        let out = step(&mut g, vote(term, leader));
        assert_eq!(
            granted(out),
            want,
            "a transfer vote at {term} naming {leader} (voter 3 in 1's lease at {t})"
        );
        let after = if want { (term, 2) } else { (t, 0) };
        assert_eq!((g.term(), g.hard_state().vote), after, "naming {leader}");
    }
    // A voter that knows no leader of its term (restarted: startup lease)
    // cannot tell who may lift its lease, and refuses every transfer vote.
    let mut g = node_with(3, &[1, 2, 3, 4], t, &[1, 2], lease_reads);
    assert!(!granted(step(&mut g, vote(t + 1, 1))));
    assert_eq!(g.term(), t);
}

/// The mixed-version limit (module docs of `transfer`, "Mixed
/// versions"): the same-term capture of
/// `rev_same_term_demoted_voter_orders_a_transfer_through_a_restarted_node`,
/// its transfer vote reaching voter 3 in the earlier form (a
/// `RequestVote` with `transfer`, as the transport sends it to a peer of
/// an earlier binary, or as a candidate of an earlier binary sends it),
/// which names nobody: voter 3 keeps the earlier rule and grants it one
/// term up, inside leader 1's lease. Pinned so that a change shows here.
#[test]
fn mixed_version_legacy_transfer_vote_keeps_the_earlier_rule() {
    let t = 2;
    let mut f = node_with(2, &[1, 2, 3, 4], t, &[1, 2], lease_reads);
    let mut g = with_learner_at(3, t, lease_reads);
    step(&mut g, heartbeat(1, 3, t, 2));
    assert_eq!(f.step_checked(heartbeat(4, 2, t, 0)), Ok(()));
    let made_up = vec![command(3, t, b"made up")];
    assert_eq!(f.step_checked(append(4, 2, t, (2, t), made_up, 0)), Ok(()));
    assert_eq!(f.step_checked(msg(4, 2, t, Body::TimeoutNow)), Ok(()));
    let mut granted = false;
    let mut seen = false;
    for mut v in flush(&mut f).all().into_iter().filter(|m| m.to == 3) {
        seen |= matches!(v.body, Body::TransferVote { leader: 4, .. });
        v.body = v.body.legacy_form();
        for m in step(&mut g, v).all() {
            granted |= matches!(
                m.body,
                Body::RequestVoteResponse {
                    granted: true,
                    pre_vote: false
                }
            );
        }
    }
    assert!(seen, "node 2 sent no transfer vote naming 4");
    assert!(
        granted,
        "the mixed-version limit no longer holds: update the module docs of `transfer`"
    );
}

/// Stop 60 (the vote window's other half): a voter that campaigns more
/// than the longest election timeout after it last heard its leader votes
/// for itself in `become_candidate`, not through `handle_request_vote`,
/// so its vote window never started and a learner could lead the term of
/// its campaign on it (thesis §3.4, §4.2.1: a learner is never elected).
/// Its own candidacy (after a granted PreVote round, thesis §9.6: a live
/// quorum) is a vote like another: it starts the window.
#[test]
fn a_candidate_past_its_leaders_window_refuses_a_learner_claiming_its_term() {
    let mut f = voter_out_of_its_leaders_lease();
    let t = f.term();
    // Held back until past the window of leader 1's last heartbeat (tick
    // T): 2T after it.
    f.randomized_timeout = 10 * T;
    while f.ticks < u64::from(3 * T + 1) {
        f.tick();
        flush(&mut f);
    }
    f.randomized_timeout = f.election_elapsed + 1;
    f.tick();
    flush(&mut f);
    assert_eq!(f.role(), Role::PreCandidate);
    step(&mut f, vote_resp(1, 2, t + 1, true, true));
    step(&mut f, vote_resp(3, 2, t + 1, true, true));
    assert_eq!(
        (f.role(), f.term(), f.leader()),
        (Role::Candidate, t + 1, None)
    );
    let last = f.log().last_index();
    refuses_learner_4_then_follows_3(
        &mut f,
        t,
        last,
        "a candidate past its leader's window followed learner 4 at the term of its campaign",
    );
}

/// Review s60 (core #1): without PreVote a campaign is no evidence of a
/// live quorum, and election timeouts (in [T, 2T)) would restart a 2T
/// window before it closed for as long as the node campaigns: a voter
/// that missed node 4's promotion (thesis §4.1) would refuse 4's
/// leadership for ever and its climbing term would depose 4. So only a
/// campaign after a granted PreVote round (previous test) or a TimeoutNow
/// starts the window; this one keeps the earlier rule: past 2T since it
/// heard its leader, it follows the node that leads its term.
#[test]
fn a_candidate_without_pre_vote_opens_no_window_and_follows_the_promoted_leader() {
    let mut f = with_learner_at(2, 2, |c| {
        c.lease_reads = true;
        c.pre_vote = false;
    });
    let t = f.term();
    for _ in 0..T {
        f.tick();
    }
    step(&mut f, heartbeat(1, 2, t, 0));
    f.randomized_timeout = 10 * T;
    while f.ticks < u64::from(3 * T + 1) {
        f.tick();
        flush(&mut f);
    }
    f.randomized_timeout = f.election_elapsed + 1;
    f.tick();
    flush(&mut f);
    assert_eq!((f.role(), f.term()), (Role::Candidate, t + 1));
    let last = f.log().last_index();
    let got = step_4s_append(&mut f, t, last, b"promoted");
    assert_eq!(
        (got, f.leader()),
        (Ok(()), Some(4)),
        "a candidate without PreVote refused node 4's leadership of its term (its own campaign opened a vote window)"
    );
}

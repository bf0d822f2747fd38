//! Lease reads on the leader (thesis §6.4.1, see `core::lease`).

use super::harness::*;
use crate::core::{Body, Config, Raft};

fn lease_config(id: u64) -> Config {
    let mut cfg = config(id);
    cfg.lease_reads = true;
    cfg
}

/// A settled leader of {1, 2, 3} with lease reads on; returns it with its
/// commit index.
fn leased_leader() -> (Raft, u64) {
    let conf = crate::core::Configuration::new([1, 2, 3]);
    let mut r = Raft::new(lease_config(1), crate::core::Restored::bootstrap(conf)).expect("cfg");
    let last = make_settled_leader(&mut r);
    (r, last)
}

/// Ticks the leader to its next heartbeat and has `from` acknowledge it.
fn ack_next_heartbeat(r: &mut Raft, from: u64) {
    let term = r.term();
    for _ in 0..T {
        r.tick();
        let out = flush(r);
        if let Some(round) = heartbeat_round(&out) {
            step(r, msg(from, 1, term, Body::HeartbeatResponse { round }));
            return;
        }
    }
    panic!("no heartbeat within an election timeout");
}

/// The lease length: `floor((T - 1) / drift)`.
#[test]
fn the_lease_is_shorter_than_the_election_timeout_by_the_drift_bound() {
    let (r, _) = leased_leader();
    assert_eq!(r.params().clock_drift_bound, 1.25);
    assert_eq!(r.lease_ticks(), 7); // floor(9 / 1.25)
    // 1.0, the smallest bound `validate` accepts (no drift), is a full
    // lease, not none.
    let mut cfg = lease_config(1);
    cfg.clock_drift_bound = 1.0;
    assert!(cfg.validate().is_ok(), "a drift bound of 1 is accepted");
    let conf = crate::core::Configuration::new([1, 2, 3]);
    let r = Raft::new(cfg.clone(), crate::core::Restored::bootstrap(conf)).expect("cfg");
    assert_eq!(r.lease_ticks(), 9); // floor(9 / 1.0)
    cfg.clock_drift_bound = 0.5;
    assert!(cfg.validate().is_err(), "a drift bound below 1 is refused");
    cfg.clock_drift_bound = f64::NAN;
    assert!(cfg.validate().is_err());
}

/// No lease before a quorum acknowledged a heartbeat round; then a lease
/// read is served from the commit index with no message, until the lease
/// runs out without a newer acknowledged round.
#[test]
fn a_lease_read_needs_a_quorum_acknowledged_round_and_expires() {
    let (mut r, commit) = leased_leader();
    assert_eq!(r.lease_read(), None, "no round acknowledged yet");
    ack_next_heartbeat(&mut r, 2);
    let start = r.ticks;
    assert_eq!(r.lease_read(), Some(commit));
    assert!(flush(&mut r).all().is_empty(), "a lease read sends nothing");
    // No more acknowledgements: the lease ends `lease_ticks` after the
    // round started, not after the acknowledgement.
    while r.ticks < start + r.lease_ticks() {
        assert_eq!(r.lease_read(), Some(commit), "at tick {}", r.ticks);
        r.tick();
        flush(&mut r);
    }
    assert_eq!(r.lease_read(), None, "the lease outlived its bound");
    // A newer acknowledged round renews it.
    ack_next_heartbeat(&mut r, 3);
    assert_eq!(r.lease_read(), Some(commit));
}

/// Thesis §6.4 step 1 holds for lease reads too: a new leader's commit
/// index may trail what its predecessor committed until it commits an entry
/// of its own term, so a quorum-acknowledged round alone gives no lease
/// read; the first commit in its term does.
#[test]
fn no_lease_read_before_the_leader_commits_in_its_term() {
    let mut r = node_with(1, &[1, 2, 3], 1, &[1, 1], |c| c.lease_reads = true);
    make_leader(&mut r);
    let noop = r.log().last_index();
    assert_eq!(r.log().committed(), 0);
    ack_next_heartbeat(&mut r, 2);
    assert_eq!(
        r.lease_read(),
        None,
        "a lease before the leader's first commit"
    );
    let term = r.term();
    step(&mut r, append_ok(2, 1, term, noop));
    assert_eq!(r.log().committed(), noop);
    assert_eq!(r.lease_read(), Some(noop));
}

/// An acknowledgement of an old round does not renew the lease past that
/// round's start (the follower may have voted since the newer rounds).
#[test]
fn an_old_rounds_acknowledgement_does_not_renew_the_lease() {
    let (mut r, _) = leased_leader();
    let term = r.term();
    let mut first = None;
    for _ in 0..T {
        r.tick();
        let out = flush(&mut r);
        if let Some(round) = heartbeat_round(&out) {
            first.get_or_insert((round, r.ticks));
        }
    }
    let (round, started) = first.expect("heartbeats");
    step(&mut r, msg(2, 1, term, Body::HeartbeatResponse { round }));
    let valid = r.ticks < started + r.lease_ticks();
    assert_eq!(r.lease_read().is_some(), valid);
    while r.ticks < started + r.lease_ticks() {
        r.tick();
        flush(&mut r);
    }
    assert_eq!(r.lease_read(), None);
}

/// A leadership transfer voids the lease for the rest of the leadership:
/// its target's campaign is granted inside leases (thesis §3.10).
#[test]
fn a_transfer_voids_the_lease() {
    let (mut r, _) = leased_leader();
    ack_next_heartbeat(&mut r, 2);
    assert!(r.lease_read().is_some());
    r.transfer_leadership(2).expect("transfer");
    flush(&mut r);
    assert_eq!(r.lease_read(), None);
    // Abandoned after an election timeout: still no lease.
    for _ in 0..T {
        r.tick();
        flush(&mut r);
    }
    ack_next_heartbeat(&mut r, 2);
    assert_eq!(r.lease_read(), None);
}

/// Without `lease_reads`, or without CheckQuorum, there is no lease.
#[test]
fn no_lease_unless_enabled_with_check_quorum() {
    let mut r = node(1, &[1, 2, 3], 1, &[1]);
    make_settled_leader(&mut r);
    ack_next_heartbeat(&mut r, 2);
    assert_eq!(r.lease_read(), None);

    let conf = crate::core::Configuration::new([1, 2, 3]);
    let mut cfg = lease_config(1);
    cfg.check_quorum = false;
    let mut r = Raft::new(cfg, crate::core::Restored::bootstrap(conf)).expect("cfg");
    make_settled_leader(&mut r);
    ack_next_heartbeat(&mut r, 2);
    assert_eq!(r.lease_read(), None);
}

/// A node that just (re)started ignores vote requests for an election
/// timeout when lease reads are on: it may have acknowledged a heartbeat
/// of a leader whose lease still runs.
#[test]
fn a_restarted_node_ignores_votes_for_an_election_timeout() {
    let conf = crate::core::Configuration::new([1, 2, 3]);
    let mut r = Raft::new(lease_config(2), crate::core::Restored::bootstrap(conf)).expect("cfg");
    let out = step(&mut r, vote_req(3, 2, 2, (1, 1)));
    assert!(out.of_kind("RequestVoteResponse").is_empty());
    assert_eq!(r.term(), 1, "the term is not even adopted");
    // Still ignored one tick before the election timeout has passed.
    for _ in 0..T - 1 {
        r.tick();
    }
    flush(&mut r);
    let out = step(&mut r, vote_req(3, 2, 2, (1, 1)));
    assert!(
        out.of_kind("RequestVoteResponse").is_empty(),
        "a vote answered {} ticks after the start",
        T - 1
    );
    assert_eq!(r.term(), 1);
    r.tick();
    flush(&mut r);
    let out = step(&mut r, vote_req(3, 2, 2, (1, 1)));
    assert!(
        out.all().iter().any(|m| m.body
            == Body::RequestVoteResponse {
                granted: true,
                pre_vote: false
            }),
        "{:?}",
        out.all()
    );
}

/// The tooth: with `lease_ignores_drift` the lease lasts two election
/// timeouts, longer than a follower waits before voting.
#[test]
fn the_tooth_makes_the_lease_outlive_the_election_timeout() {
    let conf = crate::core::Configuration::new([1, 2, 3]);
    let mut cfg = lease_config(1);
    cfg.bugs.lease_ignores_drift = true;
    let r = Raft::new(cfg, crate::core::Restored::bootstrap(conf)).expect("cfg");
    assert!(r.lease_ticks() > u64::from(T));
}

/// Ticks withheld (a quiescent group) void the lease: a round sent before
/// the pause and acknowledged after it does not vouch for the time since.
#[test]
fn forgetting_rounds_after_withheld_ticks_voids_the_lease_until_a_new_round() {
    let (mut r, commit) = leased_leader();
    ack_next_heartbeat(&mut r, 2);
    assert_eq!(r.lease_read(), Some(commit));
    // A round goes out, then the runtime withholds ticks for a long while.
    let term = r.term();
    let mut pending = None;
    for _ in 0..T {
        r.tick();
        if let Some(round) = heartbeat_round(&flush(&mut r)) {
            pending = Some(round);
            break;
        }
    }
    let pending = pending.expect("a heartbeat round within an election timeout");
    r.forget_lease_rounds();
    assert_eq!(r.lease_read(), None, "no lease right after the pause");
    // The late acknowledgement of the old round gives no lease back.
    step(
        &mut r,
        msg(2, 1, term, Body::HeartbeatResponse { round: pending }),
    );
    assert_eq!(r.lease_read(), None, "an old round does not vouch for now");
    // A new round acknowledged by a quorum does.
    ack_next_heartbeat(&mut r, 2);
    assert_eq!(r.lease_read(), Some(commit));
}

/// A runtime catching up after a stall feeds at most
/// [`Config::tick_burst`] ticks and skips the rest: that many must end a
/// stopped leader's lease (thesis §6.4.1) and fire a stopped follower's
/// election timeout whatever it drew (§5.2), or a stall would lengthen
/// either.
#[test]
fn the_catch_up_burst_outlasts_the_lease_and_every_election_timeout() {
    let (mut r, _) = leased_leader();
    ack_next_heartbeat(&mut r, 2);
    assert!(r.lease_read().is_some());
    let burst = r.params().tick_burst();
    assert!(
        burst > r.lease_ticks() + u64::from(r.params().heartbeat_ticks),
        "a burst of {burst} ticks is within the lease ({} ticks) and a round",
        r.lease_ticks()
    );
    for _ in 0..burst {
        r.tick();
        flush(&mut r);
    }
    assert_eq!(r.lease_read(), None, "the lease outlived a stall");
    for seed in 0..64 {
        let mut f = node_with(2, &[1, 2, 3], 1, &[1], |c| c.seed = seed);
        let campaigned = (0..f.params().tick_burst()).any(|_| {
            f.tick();
            let out = flush(&mut f);
            f.role() != crate::core::Role::Follower
                || !out.of_kind("PreVote").is_empty()
                || !out.of_kind("RequestVote").is_empty()
        });
        assert!(
            campaigned,
            "seed {seed}: a follower fed the burst after a stall did not campaign"
        );
    }
}

/// Mutant "the lease runs from the acknowledgement, not from the round's
/// start" (mutation round, stop 46): a follower's election timer restarts
/// when it hears the heartbeat, which may be as early as the round's start,
/// so a lease counted from a late acknowledgement outlives the bound of
/// the module docs by the acknowledgement's delay.
#[test]
fn a_late_acknowledgement_does_not_move_the_lease_start() {
    let (mut r, commit) = leased_leader();
    let term = r.term();
    let (round, started) = loop {
        assert!(r.ticks < u64::from(T) * 2, "no heartbeat");
        r.tick();
        if let Some(round) = heartbeat_round(&flush(&mut r)) {
            break (round, r.ticks);
        }
    };
    // Acknowledged three ticks later, well within the lease.
    for _ in 0..3 {
        r.tick();
        flush(&mut r);
    }
    step(&mut r, msg(2, 1, term, Body::HeartbeatResponse { round }));
    assert_eq!(r.lease_read(), Some(commit));
    while r.ticks < started + r.lease_ticks() {
        r.tick();
        flush(&mut r);
    }
    assert_eq!(
        r.lease_read(),
        None,
        "the lease outlived the round's start by more than its length"
    );
}

/// An acknowledgement of a round confirms the rounds before it too: the
/// lease counts from the start of the latest round a quorum acknowledged
/// (thesis §6.4.1). Mutant M15 (teeth s60): taking the earliest such round
/// in `update_lease` (`position` for `rposition`) survived every test; the
/// lease then ran out early, and reads it could serve took ReadIndex
/// rounds.
#[test]
fn an_acknowledgement_of_several_rounds_starts_the_lease_at_the_latest() {
    let (mut r, commit) = leased_leader();
    let term = r.term();
    let mut rounds = Vec::new();
    while rounds.len() < 2 {
        assert!(r.ticks < u64::from(T) * 2, "no heartbeats");
        r.tick();
        if let Some(round) = heartbeat_round(&flush(&mut r)) {
            rounds.push((round, r.ticks));
        }
    }
    let (latest, started) = rounds[1];
    assert!(rounds[0].1 < started, "two rounds at two ticks: {rounds:?}");
    step(
        &mut r,
        msg(2, 1, term, Body::HeartbeatResponse { round: latest }),
    );
    assert_eq!(r.lease_read(), Some(commit));
    assert_eq!(
        r.lease_remaining(),
        started + r.lease_ticks() - r.ticks,
        "the lease does not count from the latest acknowledged round ({rounds:?})"
    );
}

/// Mutant "the lease survives a change of term" (mutation round, stop 46):
/// a node that stepped down and was elected again within its old lease
/// served lease reads on the old term's acknowledgements, which say nothing
/// of the voters since (they voted again, so their election timers give the
/// new leadership no lease, thesis §6.4.1). A new leadership has no lease
/// until a round of its own is acknowledged.
#[test]
fn a_new_leadership_does_not_inherit_the_old_lease() {
    let (mut r, _) = leased_leader();
    ack_next_heartbeat(&mut r, 2);
    assert!(r.lease_read().is_some());
    // Node 2 leads a higher term (say after a transfer), then hands
    // leadership back at once with TimeoutNow: no tick passes.
    let t2 = r.term() + 1;
    step(&mut r, heartbeat(2, 1, t2, 0));
    assert_eq!(r.role(), crate::core::Role::Follower);
    step(&mut r, msg(2, 1, t2, Body::TimeoutNow));
    assert_eq!(r.role(), crate::core::Role::Candidate);
    let t3 = r.term();
    assert_eq!(t3, t2 + 1);
    for p in [2, 3] {
        step(&mut r, vote_resp(p, 1, t3, true, false));
    }
    assert_eq!(r.role(), crate::core::Role::Leader);
    let last = r.log().last_index();
    step(&mut r, append_ok(2, 1, t3, last));
    assert_eq!(r.log().committed(), last, "the new no-op committed");
    assert_eq!(
        r.lease_read(),
        None,
        "a lease from the earlier term's acknowledgements"
    );
    ack_next_heartbeat(&mut r, 3);
    assert_eq!(r.lease_read(), Some(last));
}

/// Found by mutation audit (stop 52, M7): nothing read
/// `lease_remaining`, so any change to it survived. It is the whole lease
/// right after an acknowledged round, counts down one per tick, and is 0
/// once the lease ran out.
#[test]
fn lease_remaining_counts_down_and_is_zero_without_a_lease() {
    let (mut r, _) = leased_leader();
    ack_next_heartbeat(&mut r, 2);
    let lease = r.lease_ticks();
    assert!(lease > 1, "lease of {lease} ticks");
    assert_eq!(r.lease_remaining(), lease);
    for k in 1..=lease {
        r.tick();
        flush(&mut r);
        assert_eq!(r.lease_remaining(), lease - k, "after {k} ticks");
    }
    assert!(r.lease_read().is_none(), "the lease ran out");
}

/// Review teeth s58 (T5), thesis §4.2.3 and lease.rs "Restarts": a node
/// restarted with lease reads on, knowing no leader and with no vote in its
/// term, drops a non-member's vote request at that very term during its
/// startup lease (it may have acknowledged a leader whose lease still
/// runs); after an election timeout the request is handled (§4.1).
#[test]
fn a_restarted_node_drops_a_non_members_vote_request_in_its_startup_lease() {
    let mut r = node_with(2, &[1, 2, 3], 2, &[1, 2], |c| c.lease_reads = true);
    let got = r.step_checked(vote_req(9, 2, 2, (9, 9)));
    let out = flush(&mut r);
    assert_eq!(
        (got, out.all().len(), r.hard_state().vote),
        (Err(crate::core::DropReason::VoteFromNonMember), 0, 0),
        "a non-member's vote request was handled in the startup lease: {:?}",
        out.all()
    );
    assert_eq!(
        r.dropped().get(crate::core::DropReason::VoteFromNonMember),
        1
    );
    for _ in 0..T {
        r.tick();
    }
    flush(&mut r);
    assert_eq!(r.step_checked(vote_req(9, 2, 2, (9, 9))), Ok(()));
    let out = flush(&mut r);
    assert!(
        out.all().iter().any(|m| m.to == 9
            && m.body
                == Body::RequestVoteResponse {
                    granted: true,
                    pre_vote: false
                }),
        "after the startup lease the vote is handled (§4.1): {:?}",
        out.all()
    );
    assert_eq!(r.hard_state().vote, 9);
}

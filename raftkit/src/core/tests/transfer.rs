//! Leadership transfer (thesis §3.10).

use super::harness::*;
use crate::core::{Body, Configuration, NotLeader, ProposeError, Role, TransferError};

/// Thesis §3.10: once the target's log matches, the leader sends it
/// TimeoutNow; the target campaigns at once (no PreVote) and voters grant
/// the vote although they still hear from the old leader.
#[test]
fn timeout_now_to_a_caught_up_voter_makes_it_leader() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    let term = c.node(1).term();
    let before = c.delivered.len();
    c.node_mut(1).transfer_leadership(2).expect("leader");
    c.deliver();
    assert_eq!(c.leaders(), [2]);
    assert_eq!(c.node(2).term(), term + 1);
    for id in [1, 3] {
        assert_eq!(
            (c.node(id).role(), c.node(id).leader()),
            (Role::Follower, Some(2)),
            "node {id}"
        );
    }
    let after = &c.delivered[before..];
    assert!(
        after
            .iter()
            .any(|m| m.from == 1 && m.to == 2 && m.body == Body::TimeoutNow)
    );
    assert!(
        after.iter().all(|m| m.body.kind() != "PreVote"),
        "the target skipped PreVote"
    );
    // The new leader commits its no-op.
    assert_eq!(c.node(2).log().committed(), c.node(2).log().last_index());
}

/// Thesis §3.10: a lagging target is first brought up to date, then told
/// to time out.
#[test]
fn lagging_target_is_caught_up_before_timeout_now() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    c.isolate(3);
    let (index, term) = c.propose(1, b"x");
    c.heal();
    c.node_mut(1).transfer_leadership(3).expect("leader");
    c.deliver();
    for _ in 0..T {
        if c.leaders() == [3] {
            break;
        }
        c.tick(1);
    }
    assert_eq!(c.leaders(), [3]);
    assert_eq!(c.node(3).log().term(index), Some(term));
}

/// Thesis §3.10: during a transfer the leader refuses proposals (they would
/// likely be lost), and abandons the transfer when it does not complete
/// within an election timeout.
#[test]
fn transfer_refuses_proposals_then_is_abandoned_after_an_election_timeout() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    c.isolate(3);
    c.node_mut(1).transfer_leadership(3).expect("leader");
    c.deliver();
    assert_eq!(
        c.node_mut(1).propose(b"x".to_vec()),
        Err(ProposeError::Transferring(3))
    );
    assert_eq!(
        c.node_mut(1).propose_config(Configuration::new([1, 2])),
        Err(ProposeError::Transferring(3))
    );
    for _ in 0..T - 1 {
        c.tick(1);
    }
    assert_eq!(
        c.node_mut(1).propose(b"x".to_vec()),
        Err(ProposeError::Transferring(3))
    );
    c.tick(1);
    assert_eq!(c.leaders(), [1], "the leader resumes");
    let (index, _) = c.propose(1, b"x");
    assert_eq!(c.node(1).log().committed(), index);
}

#[test]
fn transfer_is_refused_off_the_leader_and_to_non_voters() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    assert_eq!(
        c.node_mut(2).transfer_leadership(3),
        Err(TransferError::NotLeader(NotLeader { leader: Some(1) }))
    );
    assert_eq!(
        c.node_mut(1).transfer_leadership(9),
        Err(TransferError::NotVoter(9))
    );
    assert_eq!(c.node_mut(1).transfer_leadership(1), Ok(()));
    c.deliver();
    assert_eq!(c.leaders(), [1]);
    assert!(
        c.node_mut(1).propose(b"x".to_vec()).is_ok(),
        "a transfer to itself is a no-op"
    );
}

/// Thesis §3.10 hands leadership to a voter: a learner (a member, but not
/// a voter) is refused as a target like a node outside the configuration,
/// and the leader keeps leading and taking proposals.
#[test]
fn transfer_to_a_learner_is_refused() {
    let mut conf = Configuration::new([1, 2, 3]);
    conf.learners.insert(4);
    let mut c = Cluster::from_nodes([1, 2, 3, 4].map(|id| {
        let mut r = restored(&[1, 2, 3], 1, &[]);
        r.snapshot.config = conf.clone();
        (config(id), r)
    }));
    c.elect(1);
    assert_eq!(
        c.node_mut(1).transfer_leadership(4),
        Err(TransferError::NotVoter(4))
    );
    c.deliver();
    assert_eq!(c.leaders(), [1]);
    assert!(
        c.node_mut(1).propose(b"x".to_vec()).is_ok(),
        "no transfer is in progress"
    );
}

/// DESIGN §6: a halted leader hands leadership to a caught-up voter, and a
/// halted node never campaigns again, not even when told to by TimeoutNow.
#[test]
fn a_halted_leader_hands_over_and_never_campaigns() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    c.propose(1, b"x");
    c.deliver();
    c.node_mut(1).set_halted();
    assert!(matches!(
        c.node_mut(1).propose(b"y".to_vec()),
        Err(ProposeError::Halted | ProposeError::Transferring(_) | ProposeError::NotLeader(_))
    ));
    c.deliver();
    let leaders = c.leaders();
    assert_eq!(leaders.len(), 1);
    assert_ne!(leaders[0], 1, "the halted node kept leading");
    // Asked to take over, the halted node does not campaign; nor does it
    // when its election timeout passes with the cluster silent.
    let new = leaders[0];
    let term = c.node(1).term();
    c.node_mut(new).transfer_leadership(1).expect("leader");
    c.deliver();
    c.isolate(new);
    for _ in 0..4 * T {
        c.tick(1);
        c.deliver();
    }
    assert_ne!(c.node(1).role(), Role::Leader);
    assert_ne!(c.node(1).role(), Role::Candidate);
    assert_eq!(c.node(1).term(), term, "the halted node raised the term");
}

/// A halted leader with no caught-up voter to hand over to steps down.
#[test]
fn a_halted_leader_without_a_successor_steps_down() {
    let mut c = Cluster::new(&[1]);
    c.elect(1);
    c.node_mut(1).set_halted();
    assert_eq!(c.node(1).role(), Role::Follower);
    for _ in 0..4 * T {
        c.tick(1);
    }
    assert_eq!(c.node(1).role(), Role::Follower);
}

/// Thesis §3.10: TimeoutNow goes out only once the target holds the
/// leader's whole log. A target caught up one entry per append (a batch of
/// one byte, one append in flight) acknowledges several times on the way;
/// none of those acknowledgements but the last may tell it to campaign (a
/// target told too early campaigns with a shorter log and loses).
#[test]
fn timeout_now_waits_until_the_target_holds_the_whole_log() {
    let mut c = Cluster::with(&[1, 2, 3], |cfg| {
        cfg.max_batch_bytes = 1;
        cfg.max_inflight = 1;
    });
    c.elect(1);
    c.isolate(3);
    let mut last = 0;
    for i in 0..5 {
        last = c.propose(1, format!("x{i}").as_bytes()).0;
    }
    c.heal();
    c.node_mut(1).transfer_leadership(3).expect("leader");
    let mut told = 0;
    for _ in 0..T {
        loop {
            c.flush_all();
            if let Some(m) = c.queue.front()
                && m.to == 3
                && m.body == Body::TimeoutNow
            {
                assert_eq!(
                    c.node(3).log().last_index(),
                    last,
                    "told to campaign before it holds the whole log"
                );
                told += 1;
            }
            if !c.deliver_one() {
                break;
            }
        }
        if c.leaders() == [3] {
            break;
        }
        // (`Cluster::tick` would deliver past the check above.)
        c.node_mut(1).tick();
    }
    assert_eq!(told, 1);
    assert_eq!(c.leaders(), [3]);
}

/// Thesis §6.2 (CheckQuorum) and §3.10: a transfer has its own clock. A
/// leader cut off from every peer steps down within two election timeouts
/// (the first check may still count what it heard before the cut), however
/// often it is asked to transfer leadership meanwhile. Found by review,
/// stop 41: starting a transfer restarted the election timer that
/// CheckQuorum runs on, so a leader asked to transfer more often than every
/// election timeout never checked its quorum and led on alone.
#[test]
fn repeated_transfers_do_not_keep_a_leader_without_quorum() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    let term = c.node(1).term();
    c.isolate(1);
    let mut stepped_down_after = None;
    for tick in 1..=4 * T {
        if tick % 3 == 1 && c.node(1).role() == Role::Leader {
            // Alternate targets: each request is a new transfer.
            let to = if tick % 2 == 0 { 2 } else { 3 };
            c.node_mut(1).transfer_leadership(to).expect("leader");
            c.deliver();
        }
        c.tick(1);
        if c.node(1).role() != Role::Leader {
            stepped_down_after = Some(tick);
            break;
        }
    }
    let after = stepped_down_after.expect("the leader without a quorum never stepped down");
    assert!(after <= 2 * T, "stepped down after {after} ticks, bound 2T");
    assert_eq!(c.node(1).role(), Role::Follower);
    assert_eq!(c.node(1).term(), term);
}

/// Thesis §3.10: asking again for the transfer in progress does not extend
/// it: it is abandoned one election timeout after it started, and the
/// leader takes proposals again.
#[test]
fn asking_again_for_a_transfer_does_not_extend_it() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    c.isolate(3);
    for _ in 0..T {
        c.node_mut(1).transfer_leadership(3).expect("leader");
        c.deliver();
        c.tick(1);
    }
    assert_eq!(c.leaders(), [1], "the leader resumes");
    let (index, _) = c.propose(1, b"x");
    assert_eq!(c.node(1).log().committed(), index);
}

/// Found by mutation audit (stop 52, M14): a node halted in the middle of
/// its own campaign stops it. Without that, the votes already under way
/// made a node that must stay out of leadership a candidate (raising the
/// term) or the leader.
#[test]
fn a_node_halted_during_its_campaign_stops_it() {
    // A candidate (PreVote off).
    let mut r = node_with(1, &[1, 2, 3], 1, &[1], |c| c.pre_vote = false);
    tick_until_campaign(&mut r);
    assert_eq!((r.role(), r.term()), (Role::Candidate, 2));
    r.set_halted();
    flush(&mut r);
    assert_eq!(r.role(), Role::Follower, "the halted candidate stops");
    for p in [2, 3] {
        step(&mut r, vote_resp(p, 1, 2, true, false));
    }
    assert_eq!((r.role(), r.term()), (Role::Follower, 2), "it never leads");

    // A pre-candidate (PreVote on).
    let mut r = node(1, &[1, 2, 3], 1, &[1]);
    tick_until_campaign(&mut r);
    assert_eq!((r.role(), r.term()), (Role::PreCandidate, 1));
    r.set_halted();
    flush(&mut r);
    assert_eq!(r.role(), Role::Follower, "the halted pre-candidate stops");
    for p in [2, 3] {
        let out = step(&mut r, vote_resp(p, 1, 2, true, true));
        assert!(out.of_kind("RequestVote").is_empty(), "{:?}", out.all());
    }
    assert_eq!((r.role(), r.term()), (Role::Follower, 1), "no term raised");
}

/// Review s57 (core2 #3): a target restarted since its last ack knows no
/// leader of its term, so it drops the TimeoutNow that `transfer_leadership`
/// sends at once (only the leader of its term orders a transfer campaign).
/// The leader resends TimeoutNow on the target's heartbeat answers during a
/// transfer: the heartbeat made the target learn its leader first, and the
/// transfer completes (thesis §3.10) within the transfer timeout.
#[test]
fn a_transfer_to_a_just_restarted_target_completes() {
    use crate::core::{Raft, Restored, SnapshotMeta};
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    c.propose(1, b"x");
    let term = c.node(1).term();
    // Node 2 restarts from its persisted state (a rolling upgrade).
    let n2 = c.node(2);
    let restored = Restored {
        hard_state: n2.hard_state(),
        snapshot: SnapshotMeta::default(),
        snapshot_data: None,
        entries: n2.log().entries().to_vec(),
    };
    let restarted = Raft::new(config(2), restored).expect("valid config");
    c.nodes.insert(2, restarted);
    // Drain the leader to node 2 at once, before any heartbeat.
    c.node_mut(1).transfer_leadership(2).expect("leader");
    c.deliver();
    for _ in 0..T {
        if c.leaders() == [2] {
            break;
        }
        c.tick(1);
    }
    assert_eq!(
        c.leaders(),
        [2],
        "the transfer to the restarted node 2 did not complete within {T} ticks: {:?} / {:?}",
        c.node(1).status(),
        c.node(2).status()
    );
    assert_eq!(c.node(2).term(), term + 1);
}

/// The honest transfer inside a lease (thesis §3.10, §4.2.3): every voter
/// is in leader 1's lease (CheckQuorum on, heartbeats heard); target 2's
/// transfer vote names 1, the voters' leader of the term below, and is
/// granted: 2 leads the next term.
#[test]
fn an_honest_transfer_vote_names_its_leader_and_lifts_the_leases() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    c.propose(1, b"x");
    c.tick_all(2 * T);
    let term = c.node(1).term();
    assert_eq!(c.leaders(), [1]);
    let before = c.delivered.len();
    c.node_mut(1).transfer_leadership(2).expect("leader");
    c.deliver();
    assert_eq!(c.leaders(), [2]);
    assert_eq!(c.node(2).term(), term + 1);
    let votes: Vec<_> = c.delivered[before..]
        .iter()
        .filter(|m| m.from == 2 && m.body.is_vote_request())
        .map(|m| (m.to, m.term, m.body.clone()))
        .collect();
    assert_eq!(votes.len(), 2, "{votes:?}");
    for (to, t, body) in votes {
        assert_eq!(t, term + 1, "to {to}");
        assert!(
            matches!(body, Body::TransferVote { leader: 1, .. }),
            "to {to}: {body:?}"
        );
    }
}

/// Rolling upgrade: the transport sends a transfer vote to a peer of an
/// earlier binary in the earlier form (`Body::legacy_form`), which names
/// no leader; voters of either binary grant it one term up, as before, so
/// an honest transfer still completes in a mixed-version cluster.
#[test]
fn a_transfer_vote_in_the_earlier_form_still_elects_the_target() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    c.tick_all(2 * T);
    let term = c.node(1).term();
    let legacy = std::rc::Rc::new(std::cell::Cell::new(0));
    let seen = legacy.clone();
    c.filter = Some(Box::new(move |m| {
        if matches!(m.body, Body::TransferVote { .. }) {
            m.body = m.body.clone().legacy_form();
            seen.set(seen.get() + 1);
        }
        true
    }));
    c.node_mut(1).transfer_leadership(2).expect("leader");
    c.deliver();
    assert_eq!(legacy.get(), 2, "transfer votes rewritten");
    assert_eq!(c.leaders(), [2]);
    assert_eq!(c.node(2).term(), term + 1);
}

/// DESIGN §4 and §6, thesis §3.10: a leader whose storage failed
/// (`Raft::abdicate`) steps down at once, hands leadership to a voter
/// that matched the most of its log (equals are ranked by a hash, see
/// `abdicate_spreads_ties_over_the_voters`; never one missing a committed
/// entry), and never campaigns again. The target
/// campaigns at once and wins; the failed node, which steps nothing more
/// in the runtime (isolated here), stays a follower however long it ticks.
#[test]
fn a_leader_whose_storage_failed_hands_over_to_the_most_up_to_date_voter() {
    let mut c = Cluster::new(&[1, 2, 3, 4, 5]);
    c.elect(1);
    let term = c.node(1).term();
    // Node 2 misses a committed entry; 3, 4 and 5 hold it.
    c.isolate(2);
    let (index, _) = c.propose(1, b"x");
    assert_eq!(c.node(1).log().committed(), index);
    let handover = c.node_mut(1).abdicate().expect("a voter qualifies");
    let to = handover.to;
    assert!([3, 4, 5].contains(&to), "handed to {to}");
    assert_eq!(
        (handover.from, handover.term, &handover.body),
        (1, term, &Body::TimeoutNow)
    );
    assert_eq!(c.node(1).role(), Role::Follower);
    assert_eq!(c.node(1).leader(), None);
    assert!(c.node(1).is_halted());
    c.heal();
    c.isolate(1);
    c.node_mut(to).step(handover);
    c.deliver();
    assert_eq!(c.leaders(), [to]);
    assert_eq!(c.node(to).term(), term + 1);
    for _ in 0..4 * T {
        c.tick(1);
    }
    assert_eq!(
        c.node(1).role(),
        Role::Follower,
        "the failed node campaigned"
    );
    // A follower whose storage failed has nothing to hand over.
    let follower = if to == 3 { 4 } else { 3 };
    assert_eq!(c.node_mut(follower).abdicate(), None);
    assert!(c.node(follower).is_halted());
}

/// Review s61 (2a): right after an election the new leader has heard no
/// AppendEntries answer yet, so every follower's `matched` is 0, below
/// the entries committed in earlier terms; `abdicate` then found no voter
/// "holding every committed entry" and handed over to nobody, leaving the
/// cluster an election timeout without a leader. It falls back to the
/// voter with the highest `matched`: safe, since the target must still
/// win an election (§5.4.1), and here it does.
#[test]
fn a_leader_abdicating_before_any_answer_of_its_term_still_hands_over() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    c.propose(1, b"x");
    // The followers learn the commit index from a heartbeat.
    c.tick_all(2);
    assert!(c.node(2).log().committed() > 0);
    // Node 2 is elected (by a transfer) and hears no AppendEntries answer
    // of its term.
    c.filter = Some(Box::new(|m| {
        !matches!(m.body, Body::AppendEntriesResponse { .. })
    }));
    c.node_mut(1).transfer_leadership(2).expect("leader");
    c.deliver();
    assert_eq!(c.leaders(), [2]);
    let term = c.node(2).term();
    let handover = c
        .node_mut(2)
        .abdicate()
        .expect("a hand-over although no follower answered in this term yet");
    assert_eq!(
        (handover.from, handover.term, &handover.body),
        (2, term, &Body::TimeoutNow)
    );
    let to = handover.to;
    assert!([1, 3].contains(&to), "handed to {to}");
    c.filter = None;
    c.isolate(2);
    c.node_mut(to).step(handover);
    c.deliver();
    assert_eq!(c.leaders(), [to]);
    assert_eq!(c.node(to).term(), term + 1);
}

/// Review s61 (2b): a leader whose storage fails while an operator's
/// transfer is in flight hands over to that transfer's target when no
/// voter is further ahead (the operator's choice breaks ties of `matched`),
/// where the operator wanted leadership, not to whichever voter ranks
/// first otherwise. Every voter is tried as the target, so the tie-break
/// hash alone (which puts one of them first) cannot pass the test.
#[test]
fn abdicate_prefers_the_target_of_a_transfer_in_flight() {
    for target in [2, 3, 4, 5] {
        let mut c = Cluster::new(&[1, 2, 3, 4, 5]);
        c.elect(1);
        c.propose(1, b"x");
        // The transfer's TimeoutNow is lost: the transfer stays in flight.
        c.isolate(target);
        c.node_mut(1).transfer_leadership(target).expect("leader");
        c.deliver();
        let handover = c.node_mut(1).abdicate().expect("a voter qualifies");
        assert_eq!(
            handover.to, target,
            "the hand-over ignored the operator's transfer to node {target}"
        );
    }
}

/// Review s62 failure M1: the operator's target only breaks ties of
/// `matched`. Every voter holds the committed entries; node 2 also holds
/// the leader's last entry (not committed yet), the operator's target 4
/// does not: node 2 wins any election node 4 would lose to it (§5.4.1),
/// so the hand-over goes to node 2.
#[test]
fn abdicate_prefers_a_voter_further_ahead_over_the_operators_target() {
    let mut c = Cluster::new(&[1, 2, 3, 4, 5]);
    c.elect(1);
    c.propose(1, b"x");
    let committed = c.node(1).log().committed();
    // Only node 2 receives "y": it is not committed.
    for id in [3, 4, 5] {
        c.isolate(id);
    }
    c.propose(1, b"y");
    let last = c.node(1).log().last_index();
    assert_eq!(c.node(1).log().committed(), committed, "y is not committed");
    assert_eq!(c.node(1).progress_of(2).map(|(m, _)| m), Some(last));
    assert_eq!(c.node(1).progress_of(4).map(|(m, _)| m), Some(committed));
    // Node 4 lacks "y": the transfer stays in flight, catching it up.
    c.node_mut(1).transfer_leadership(4).expect("leader");
    c.deliver();
    let handover = c.node_mut(1).abdicate().expect("a voter qualifies");
    assert_eq!(
        handover.to, 2,
        "the hand-over went to node {}, not to node 2, which holds the leader's whole log (the operator's target 4 lacks its last entry)",
        handover.to
    );
}

/// Review s61 (2c): among equally caught-up voters `abdicate` chose the
/// lowest id, so a node leading many groups whose shared journal failed
/// handed every one of them to the same node. Ties are broken by a hash
/// of the core's seed, its term and the candidate: the same core state
/// picks the same voter, and different terms (or, in the runtime, groups,
/// whose seeds differ) spread over the voters.
#[test]
fn abdicate_spreads_ties_over_the_voters() {
    let leader_at = |term| {
        let mut c = Cluster::from_logs(&[1, 2, 3, 4, 5], &[(term, &[1][..]); 5], |_| {});
        c.elect(1);
        c
    };
    let mut targets = std::collections::BTreeMap::new();
    for term in 1..=16 {
        let to = leader_at(term)
            .node_mut(1)
            .abdicate()
            .expect("a voter qualifies")
            .to;
        assert_eq!(
            leader_at(term).node_mut(1).abdicate().map(|m| m.to),
            Some(to),
            "the same state chose another voter"
        );
        *targets.entry(to).or_insert(0) += 1;
    }
    assert!(
        targets.len() >= 3,
        "16 hand-overs among 4 equal voters went to {targets:?}"
    );
}

/// Review s61 (2d), what the doc of `Raft::abdicate` promises: a core
/// that abdicated never leads again, not even when a later leader tells it
/// to campaign (a transfer's TimeoutNow): it is halted. (It would still
/// vote and take entries if stepped: the runtime stops stepping it, see
/// `runtime::node`.)
#[test]
fn an_abdicated_core_never_leads_again_even_when_told_to() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    let handover = c.node_mut(1).abdicate().expect("a voter qualifies");
    let to = handover.to;
    c.node_mut(to).step(handover);
    c.deliver();
    assert_eq!(c.leaders(), [to]);
    c.tick_all(2);
    c.node_mut(to).transfer_leadership(1).expect("leader");
    c.deliver();
    for _ in 0..4 * T {
        c.tick_all(1);
        assert_eq!(
            c.node(1).role(),
            Role::Follower,
            "the abdicated core campaigned"
        );
    }
    assert_eq!(c.leaders(), [to]);
}

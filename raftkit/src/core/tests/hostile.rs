//! Messages no correct peer sends, each found by the fuzz harness
//! (`raftkit::fuzz`) or the QUIC attack test: the node neither panics nor
//! breaks an invariant, and the drop is counted with its reason. One test
//! per crash or violation found, written before its fix.

use super::harness::*;
use crate::core::inbound::MAX_INDEX;
use crate::core::{
    Body, Configuration, DropReason, MAX_ENTRIES_PER_APPEND, MAX_MEMBERS, MAX_TERM_JUMP, Raft,
    SnapshotMeta, Term,
};

fn assert_sound(r: &Raft) {
    if let Err(e) = r.check_invariants() {
        panic!("node {}: {e}", r.id());
    }
}

/// Found by the raft_step fuzz harness: a complete snapshot claiming the
/// last representable index overflowed `index + 1` in the log.
#[test]
fn a_snapshot_at_the_last_index_is_dropped() {
    let mut r = node(1, &[1, 2, 3], 2, &[1, 2]);
    step(&mut r, heartbeat(2, 1, 2, 0));
    let out = step(
        &mut r,
        msg(
            2,
            1,
            2,
            Body::InstallSnapshot {
                meta: SnapshotMeta {
                    index: u64::MAX,
                    term: 2,
                    config: Configuration::new([1, 2, 3]),
                },
                offset: 0,
                data: vec![1, 2, 3],
                done: true,
            },
        ),
    );
    assert!(out.snapshots.is_empty(), "nothing installed");
    assert_eq!(r.dropped().get(DropReason::IndexOutOfRange), 1);
    assert_eq!(r.log().last_index(), 2);
    assert_sound(&r);
}

/// The same bound for entries: an AppendEntries reaching the last indexes
/// is dropped, so the log never gets near an overflow.
#[test]
fn entries_near_the_last_index_are_dropped() {
    let mut r = node(1, &[1, 2, 3], 2, &[1, 2]);
    let far: u64 = u64::MAX - 1;
    let out = step(
        &mut r,
        append(2, 1, 2, (far - 1, 2), vec![entry(far, 2)], far),
    );
    assert!(out.of_kind("AppendEntriesResponse").is_empty());
    assert_eq!(r.dropped().get(DropReason::IndexOutOfRange), 1);
    assert_sound(&r);
}

/// Found by audit (stop 52), with the WAL's replay: the bound is
/// [`MAX_INDEX`] itself, taken as an entry's or a snapshot's index (the
/// WAL replays it, `indexes_up_to_the_cores_bound_replay_...` in
/// `storage::wal::log`), and one past it is dropped. The hostile tests
/// above use only the last indexes of `u64`, so the bound itself was
/// never pinned.
#[test]
fn an_index_at_the_bound_is_taken_and_one_past_it_dropped() {
    for (index, dropped) in [(MAX_INDEX - 1, 0), (MAX_INDEX, 0), (MAX_INDEX + 1, 1)] {
        let mut r = node(1, &[1, 2, 3], 2, &[1, 2]);
        step(&mut r, heartbeat(2, 1, 2, 0));
        let out = step(
            &mut r,
            msg(
                2,
                1,
                2,
                Body::InstallSnapshot {
                    meta: SnapshotMeta {
                        index,
                        term: 2,
                        config: Configuration::new([1, 2, 3]),
                    },
                    offset: 0,
                    data: vec![1, 2, 3],
                    done: true,
                },
            ),
        );
        assert_eq!(
            r.dropped().get(DropReason::IndexOutOfRange),
            dropped,
            "a snapshot at {index}"
        );
        assert_eq!(
            out.snapshots.len() as u64,
            1 - dropped,
            "a snapshot at {index}"
        );
        assert_sound(&r);

        let mut r = node(1, &[1, 2, 3], 2, &[1, 2]);
        step(
            &mut r,
            append(2, 1, 2, (index - 1, 2), vec![entry(index, 2)], 0),
        );
        assert_eq!(
            r.dropped().get(DropReason::IndexOutOfRange),
            dropped,
            "an entry at {index}"
        );
        assert_sound(&r);
    }
}

/// Found by review, stop 45: no message term was bounded, so one
/// heartbeat at `Term::MAX` from any holder of a node certificate (to a
/// node outside a lease) pushed its victim to the last term, which it
/// persisted; it then answered the real leader at that term, the leader
/// stepped down, and nobody could ever campaign again (there is no next
/// term). A message more than [`MAX_TERM_JUMP`] above the node's term is
/// now dropped whatever it carries, before its term is looked at; one at
/// the bound is taken.
#[test]
fn a_term_jump_past_the_bound_is_dropped() {
    let over = 1 + MAX_TERM_JUMP + 1;
    let bodies = [
        Body::Heartbeat {
            commit: 0,
            round: 0,
        },
        Body::AppendEntries {
            prev_index: 1,
            prev_term: 1,
            entries: vec![],
            commit: 0,
        },
        Body::InstallSnapshot {
            meta: SnapshotMeta {
                index: 5,
                term: 2,
                config: Configuration::new([1, 2]),
            },
            offset: 0,
            data: vec![1],
            done: true,
        },
        Body::RequestVote {
            last_index: 9,
            last_term: 9,
            pre_vote: false,
            transfer: false,
        },
        Body::RequestVote {
            last_index: 9,
            last_term: 9,
            pre_vote: true,
            transfer: false,
        },
        Body::RequestVoteResponse {
            granted: false,
            pre_vote: false,
        },
        Body::AppendEntriesResponse {
            index: 1,
            success: false,
            hint: None,
        },
        Body::HeartbeatResponse { round: 0 },
        Body::InstallSnapshotResponse {
            index: 1,
            next_offset: 0,
            done: false,
            rejected: true,
        },
        Body::TimeoutNow,
        Body::ReadIndexResponse {
            ctx: 1,
            index: Some(1),
        },
    ];
    for term in [Term::MAX, over] {
        for body in &bodies {
            // A member of a two-node cluster that heard from nobody (no
            // lease): every one of these would raise its term.
            let mut r = node(1, &[1, 2], 1, &[1]);
            let got = r.step_checked(msg(2, 1, term, body.clone()));
            assert_eq!(
                r.term(),
                1,
                "{} at term {term} moved the node's term ({got:?})",
                body.kind()
            );
            assert_eq!(got, Err(DropReason::TermJump), "{}", body.kind());
            assert!(flush(&mut r).all().is_empty(), "answered a term jump");
            assert_sound(&r);
        }
    }
    // At the bound: taken.
    let mut r = node(1, &[1, 2], 1, &[1]);
    assert_eq!(
        r.step_checked(heartbeat(2, 1, 1 + MAX_TERM_JUMP, 0)),
        Ok(())
    );
    assert_eq!((r.term(), r.leader()), (1 + MAX_TERM_JUMP, Some(2)));
    // A leader answered at a jumped term keeps leading.
    let mut l = node(1, &[1, 2, 3], 1, &[1]);
    make_settled_leader(&mut l);
    let term = l.term();
    assert_eq!(
        l.step_checked(msg(2, 1, Term::MAX, Body::HeartbeatResponse { round: 0 })),
        Err(DropReason::TermJump)
    );
    assert_eq!((l.role(), l.term()), (crate::core::Role::Leader, term));
    assert_sound(&r);
    assert_sound(&l);
}

/// Raft §5.2, Election Safety: "at most one leader can be elected in a
/// given term". A second node claiming leadership of a term whose leader
/// this node already follows (or leads) can only be forged or broken: its
/// AppendEntries, heartbeats and snapshots are dropped, counted as
/// [`DropReason::SecondLeader`], and change neither the log, the commit
/// index nor whom the node follows.
#[test]
fn a_second_leader_of_the_same_term_is_ignored() {
    let mut r = node(2, &[1, 2, 3], 2, &[1]);
    step(&mut r, append(1, 2, 2, (1, 1), vec![entry(2, 2)], 1));
    assert_eq!((r.leader(), r.log().committed()), (Some(1), 1));

    let forged = append(3, 2, 2, (1, 1), vec![entry(2, 2), entry(3, 2)], 3);
    assert_eq!(r.step_checked(forged), Err(DropReason::SecondLeader));
    assert_eq!(
        r.step_checked(heartbeat(3, 2, 2, 2)),
        Err(DropReason::SecondLeader)
    );
    let out = flush(&mut r);
    assert!(out.all().is_empty(), "answered a second leader: {out:?}");
    assert_eq!(log_of(&r), [(1, 1), (2, 2)]);
    assert_eq!((r.leader(), r.log().committed()), (Some(1), 1));
    assert_eq!(r.dropped().get(DropReason::SecondLeader), 2);

    // A leader does not obey another leader of its own term either.
    let mut l = node(1, &[1, 2, 3], 1, &[1]);
    let last = make_settled_leader(&mut l);
    let term = l.term();
    let forged = append(3, 1, term, (last, term), vec![entry(last + 1, term)], 0);
    assert_eq!(l.step_checked(forged), Err(DropReason::SecondLeader));
    assert_eq!(l.role(), crate::core::Role::Leader);
    assert_eq!(l.log().last_index(), last);
    assert_sound(&r);
    assert_sound(&l);
}

/// The admission rules of `inbound` at their edges: a message "from" node 0
/// (the id that means "no node": a leader or vote of 0 is none at all) is
/// dropped before any rule sees it, even a higher term's heartbeat that a
/// node outside a lease would otherwise follow; a snapshot chunk ending
/// exactly at the size limit is taken, one byte past it is not.
#[test]
fn admission_rules_hold_at_their_edges() {
    let mut r = node(1, &[1, 2, 3], 2, &[1, 2]);
    assert_eq!(
        r.step_checked(heartbeat(0, 1, 5, 0)),
        Err(DropReason::Misaddressed)
    );
    assert_eq!(
        r.step_checked(heartbeat(1, 1, 5, 0)),
        Err(DropReason::Misaddressed)
    );
    assert_eq!(
        r.step_checked(heartbeat(2, 3, 5, 0)),
        Err(DropReason::Misaddressed)
    );
    assert!(
        flush(&mut r).all().is_empty(),
        "answered a misaddressed message"
    );
    assert_eq!((r.term(), r.leader()), (2, None));
    assert_eq!(r.dropped().get(DropReason::Misaddressed), 3);

    let mut r = node_with(1, &[1, 2, 3], 2, &[1, 2], |c| c.max_snapshot_bytes = 8);
    let chunk = |offset: u64, data: Vec<u8>| {
        msg(
            2,
            1,
            2,
            Body::InstallSnapshot {
                meta: SnapshotMeta {
                    index: 5,
                    term: 2,
                    config: Configuration::new([1, 2, 3]),
                },
                offset,
                data,
                done: false,
            },
        )
    };
    assert_eq!(
        r.step_checked(chunk(0, vec![7; 8])),
        Ok(()),
        "exactly the limit"
    );
    assert_eq!(
        r.step_checked(chunk(8, vec![7])),
        Err(DropReason::SnapshotTooLarge)
    );
    assert_sound(&r);

    // A TimeoutNow is obeyed only from the leader this node follows, at
    // its term (thesis §3.10; stop 45: one at a higher term from any
    // member was obeyed, so a learner could order a transfer campaign).
    let mut r = node(1, &[1, 2, 3], 2, &[1, 2]);
    step(&mut r, heartbeat(2, 1, 2, 0));
    assert_eq!(r.leader(), Some(2));
    for (from, term) in [(3, 2), (3, 3), (2, 3)] {
        assert_eq!(
            r.step_checked(msg(from, 1, term, Body::TimeoutNow)),
            Err(DropReason::TimeoutNowNotFromLeader)
        );
    }
    assert_eq!(r.step_checked(msg(2, 1, 2, Body::TimeoutNow)), Ok(()));
    assert_eq!(r.role(), crate::core::Role::Candidate);
    assert_eq!(r.term(), 3);
    // A target whose election timer fired is a pre-candidate: it forgot
    // its leader without a new term, and the leader's TimeoutNow still
    // starts the transfer campaign (review, stop 45).
    let mut r = node(1, &[1, 2, 3], 2, &[1, 2]);
    step(&mut r, heartbeat(2, 1, 2, 0));
    tick_until_campaign(&mut r);
    assert_eq!(r.role(), crate::core::Role::PreCandidate);
    assert_eq!(r.step_checked(msg(2, 1, 2, Body::TimeoutNow)), Ok(()));
    assert_eq!((r.role(), r.term()), (crate::core::Role::Candidate, 3));

    // A node with no configuration yet (being added) follows whoever leads
    // a higher term: it cannot tell members from strangers, so the lease
    // rule does not apply to it.
    let mut r = Raft::new(config(4), crate::core::Restored::empty()).expect("config");
    assert_eq!(r.step_checked(heartbeat(2, 4, 2, 0)), Ok(()));
    assert_eq!(r.leader(), Some(2));
    assert_eq!(r.step_checked(heartbeat(3, 4, 3, 0)), Ok(()));
    assert_eq!((r.term(), r.leader()), (3, Some(3)));
    assert_sound(&r);
}

/// A heartbeat answer may echo only a read round the leader started: one
/// that acknowledges the *next* round ahead of time would count its sender
/// toward that round's quorum before the round exists, so a read could be
/// confirmed by fewer followers than a quorum (thesis §6.4). The quic attack
/// test sends `u64::MAX`; the edge is one past the current round (teeth
/// round 10: a check loosened by a million rounds survived).
#[test]
fn a_heartbeat_answer_for_a_round_not_started_is_dropped() {
    let mut l = node(1, &[1, 2, 3], 1, &[1]);
    make_settled_leader(&mut l);
    l.read_index(7).expect("leader");
    let out = flush(&mut l);
    let round = heartbeat_round(&out).expect("the read starts a heartbeat round");
    let term = l.term();
    assert_eq!(
        l.step_checked(msg(
            2,
            1,
            term,
            Body::HeartbeatResponse { round: round + 1 }
        )),
        Err(DropReason::UnknownReadRound)
    );
    assert_eq!(
        l.step_checked(msg(2, 1, term, Body::HeartbeatResponse { round })),
        Ok(())
    );
    assert_sound(&l);
}

/// Found by review, stop 41: an AppendEntries of more entries than any
/// correct leader puts in one message ([`MAX_ENTRIES_PER_APPEND`]; the
/// transport refuses such a frame before decoding it, this is the core's
/// own check for other transports) is dropped whole; one at the cap is
/// taken.
#[test]
fn an_append_over_the_entry_cap_is_dropped() {
    let mut r = node(1, &[1, 2, 3], 2, &[1, 2]);
    let over: Vec<_> = (0..=MAX_ENTRIES_PER_APPEND as u64)
        .map(|k| entry(3 + k, 2))
        .collect();
    let out = step(&mut r, append(2, 1, 2, (2, 2), over, 0));
    assert!(out.of_kind("AppendEntriesResponse").is_empty());
    assert_eq!(r.dropped().get(DropReason::TooManyEntries), 1);
    assert_eq!(r.log().last_index(), 2);
    assert_sound(&r);
    let at: Vec<_> = (0..MAX_ENTRIES_PER_APPEND as u64)
        .map(|k| entry(3 + k, 2))
        .collect();
    step(&mut r, append(2, 1, 2, (2, 2), at, 0));
    assert_eq!(r.log().last_index(), 2 + MAX_ENTRIES_PER_APPEND as u64);
    assert_eq!(r.dropped().get(DropReason::TooManyEntries), 1);
    assert_sound(&r);
}

/// Voters 1, 2, 3 and learner 4: node `id` at term 2 with a log of terms
/// [1, 2].
fn with_learner(id: u64) -> Raft {
    let mut restored = restored(&[1, 2, 3], 2, &[1, 2]);
    restored.snapshot.config.learners.insert(4);
    Raft::new(config(id), restored).expect("valid config")
}

/// Found by review, stop 45: a vote request marked as a leadership
/// transfer skips the lease (thesis §3.10), and voters granted it without
/// looking at who asked, so a learner (and any holder of a node
/// certificate who gets itself added as one) could depose a settled
/// leader whenever it liked. The transferee of an honest transfer is a
/// voter (§3.10: the leader transfers to a voter, `TransferError::NotVoter`
/// otherwise): a transfer vote request from a non-voter is dropped, and so
/// is a TimeoutNow from anyone but the leader this node follows in its
/// term (the only honest sender, and only once the target acknowledged
/// its log at that term).
#[test]
fn a_learner_cannot_depose_the_leader_with_a_transfer_vote() {
    let transfer_vote = Body::RequestVote {
        last_index: 1 << 40,
        last_term: 1 << 20,
        pre_vote: false,
        transfer: true,
    };
    let mut l = with_learner(1);
    make_settled_leader(&mut l);
    let term = l.term();
    let got = l.step_checked(msg(4, 1, term + 1, transfer_vote.clone()));
    assert_eq!(
        (l.role(), l.term()),
        (crate::core::Role::Leader, term),
        "a learner's transfer vote request deposed the leader ({got:?})"
    );
    assert_eq!(got, Err(DropReason::TransferFromNonVoter));
    assert!(flush(&mut l).of_kind("RequestVoteResponse").is_empty());

    // A follower in its leader's lease does not grant it either.
    let mut f = with_learner(2);
    step(&mut f, heartbeat(1, 2, 2, 0));
    assert_eq!(
        f.step_checked(msg(4, 2, 3, transfer_vote.clone())),
        Err(DropReason::TransferFromNonVoter)
    );
    assert_eq!((f.term(), f.hard_state().vote, f.leader()), (2, 0, Some(1)));

    // A TimeoutNow from the learner, at a higher term or at ours, is
    // dropped; so is one from a voter that is not our leader, at any term.
    for (from, t) in [(4, 3), (4, 2), (3, 3), (3, 2)] {
        assert_eq!(
            f.step_checked(msg(from, 2, t, Body::TimeoutNow)),
            Err(DropReason::TimeoutNowNotFromLeader),
            "TimeoutNow from {from} at term {t}"
        );
        assert_eq!((f.role(), f.term()), (crate::core::Role::Follower, 2));
    }
    // The leader's own TimeoutNow is obeyed: a transfer campaign.
    assert_eq!(f.step_checked(msg(1, 2, 2, Body::TimeoutNow)), Ok(()));
    assert_eq!((f.role(), f.term()), (crate::core::Role::Candidate, 3));
    // And a voter's transfer vote request is granted inside a lease.
    let mut g = with_learner(3);
    step(&mut g, heartbeat(1, 3, 2, 0));
    let out = step(&mut g, msg(2, 3, 3, transfer_vote));
    assert_eq!((g.term(), g.hard_state().vote), (3, 2));
    assert_eq!(out.of_kind("RequestVoteResponse").len(), 1);
    assert_sound(&l);
    assert_sound(&f);
    assert_sound(&g);
}

/// A configuration entry of `voters` voters 1..=voters, with `addrs`.
fn config_entry(index: u64, term: u64, conf: Configuration) -> crate::core::Entry {
    crate::core::Entry {
        index,
        term,
        payload: crate::core::Payload::Config(conf),
    }
}

/// Found by review, stop 45: nothing bounded a configuration from the
/// network, so one 16 MiB AppendEntries (or snapshot metadata) could name
/// some 800,000 members with addresses, and the runtime started a task for
/// and dialled each address it was given. A configuration of more than
/// [`MAX_MEMBERS`] members, with an address longer than
/// [`crate::core::MAX_ADDR_LEN`] bytes or with an address for a node that
/// is not a member is dropped at admission, in an entry or a snapshot's
/// metadata, and refused when proposed locally.
#[test]
fn a_configuration_of_too_many_members_is_dropped() {
    let big = Configuration::new(1..=MAX_MEMBERS as u64 + 1);
    let mut r = node(1, &[1, 2, 3], 2, &[1, 2]);
    let got = r.step_checked(append(
        2,
        1,
        2,
        (2, 2),
        vec![config_entry(3, 2, big.clone())],
        0,
    ));
    assert_eq!(
        r.log().last_index(),
        2,
        "a configuration of {} members was appended ({got:?})",
        MAX_MEMBERS + 1
    );
    assert_eq!(got, Err(DropReason::ConfigTooLarge));
    let snapshot = |config: Configuration| {
        msg(
            2,
            1,
            2,
            Body::InstallSnapshot {
                meta: SnapshotMeta {
                    index: 5,
                    term: 2,
                    config,
                },
                offset: 0,
                data: vec![1],
                done: true,
            },
        )
    };
    assert_eq!(
        r.step_checked(snapshot(big)),
        Err(DropReason::ConfigTooLarge)
    );
    let mut long = Configuration::new([1, 2, 3]);
    long.addrs
        .insert(2, "a".repeat(crate::core::MAX_ADDR_LEN + 1));
    assert_eq!(
        r.step_checked(append(
            2,
            1,
            2,
            (2, 2),
            vec![config_entry(3, 2, long.clone())],
            0
        )),
        Err(DropReason::ConfigTooLarge)
    );
    assert_eq!(
        r.step_checked(snapshot(long)),
        Err(DropReason::ConfigTooLarge)
    );
    // Addresses beyond the bound, of nodes that are not members: dropped.
    let mut strays = Configuration::new([1, 2, 3]);
    for id in 100..(101 + MAX_MEMBERS as u64) {
        strays.addrs.insert(id, "elsewhere:1".into());
    }
    assert_eq!(
        r.step_checked(append(
            2,
            1,
            2,
            (2, 2),
            vec![config_entry(3, 2, strays.clone())],
            0
        )),
        Err(DropReason::ConfigTooLarge)
    );
    assert_eq!(
        r.step_checked(snapshot(strays)),
        Err(DropReason::ConfigTooLarge)
    );
    assert_eq!(r.log().last_index(), 2);
    // At the bounds: taken; so is the address of a node that is not a
    // member (an earlier version's joint configuration kept the address
    // of a learner it removed).
    let mut at = Configuration::new(1..=MAX_MEMBERS as u64);
    at.addrs.insert(2, "a".repeat(crate::core::MAX_ADDR_LEN));
    at.addrs.insert(9999, "removed-learner:1".into());
    assert_eq!(
        r.step_checked(append(
            2,
            1,
            2,
            (2, 2),
            vec![config_entry(3, 2, at.clone())],
            0
        )),
        Ok(())
    );
    assert_eq!(r.log().last_index(), 3);
    assert_sound(&r);

    // Proposed locally: refused, nothing appended.
    let mut l = node(1, &[1, 2, 3], 1, &[1]);
    let last = make_settled_leader(&mut l);
    let mut too_many = Configuration::new([1, 2, 3]);
    too_many.learners.extend(4..=MAX_MEMBERS as u64 + 1);
    let mut long = Configuration::new([1, 2, 3]);
    long.addrs
        .insert(3, "a".repeat(crate::core::MAX_ADDR_LEN + 1));
    let mut many_addrs = Configuration::new([1, 2, 3]);
    for id in 100..(101 + MAX_MEMBERS as u64) {
        many_addrs.addrs.insert(id, "elsewhere:1".into());
    }
    for target in [too_many, long, many_addrs] {
        match l.propose_config(target) {
            Err(crate::core::ProposeError::InvalidConfiguration(_)) => {}
            other => panic!("an oversized configuration proposed: {other:?}"),
        }
    }
    assert_eq!(l.log().last_index(), last);
    // The joint configuration counts both halves: 3 old voters and
    // MAX_MEMBERS - 2 new ones make MAX_MEMBERS + 1 members.
    let joint = Configuration::new(4..=MAX_MEMBERS as u64 + 1);
    match l.propose_config(joint) {
        Err(crate::core::ProposeError::InvalidConfiguration(_)) => {}
        other => panic!("an oversized joint configuration proposed: {other:?}"),
    }
    assert_eq!(l.log().last_index(), last);
    assert_sound(&l);
}

/// Found by review (stop 52): the core refused only indexes past
/// [`MAX_INDEX`] from peers, but its own appends had no bound, so a node
/// whose log reached the bound (a snapshot at 2^62 from a node-certificate
/// holder) led and appended 2^62+1, which the WAL refuses on replay. A
/// leader refuses a proposal past the bound (not applied), and a node whose
/// log ends at the bound never campaigns (it could not append its no-op).
#[test]
fn a_log_at_the_bound_takes_no_proposal_and_never_campaigns() {
    let at = |index: u64| crate::core::Restored {
        snapshot: SnapshotMeta {
            index,
            term: 1,
            config: Configuration::new([1]),
        },
        ..restored(&[1], 1, &[])
    };
    // A leader whose no-op lands at MAX_INDEX - 1.
    let mut r = Raft::new(config(1), at(MAX_INDEX - 2)).expect("config");
    for _ in 0..3 * T {
        r.tick();
        flush(&mut r);
    }
    assert_eq!(r.role(), crate::core::Role::Leader);
    assert_eq!(r.log().last_index(), MAX_INDEX - 1);
    flush(&mut r);
    let res = r.propose(b"last".to_vec());
    assert_eq!(res.as_ref().map(|(i, _)| *i), Ok(MAX_INDEX), "{res:?}");
    let res = r.propose(b"past".to_vec());
    assert_eq!(
        res,
        Err(crate::core::ProposeError::IndexExhausted(MAX_INDEX)),
        "a proposal past the bound"
    );
    assert_eq!(r.log().last_index(), MAX_INDEX);
    // The entry at the bound itself is handed to storage, commits and is
    // applied, with its command (teeth, stop 53: the assertions above pass
    // for an entry that stays in memory and never commits).
    let out = flush(&mut r);
    let at_bound = |entries: &[crate::core::Entry]| {
        entries
            .iter()
            .map(|e| (e.index, e.payload.clone()))
            .collect::<Vec<_>>()
    };
    let last = vec![(
        MAX_INDEX,
        crate::core::Payload::Command(b"last".to_vec().into()),
    )];
    assert_eq!(at_bound(&out.entries), last, "written at the bound");
    assert_eq!(
        r.log().committed(),
        MAX_INDEX,
        "the entry at the bound commits"
    );
    assert_eq!(at_bound(&out.committed), last, "applied at the bound");
    assert_sound(&r);
    // A node whose log ends at the bound never campaigns.
    let mut r = Raft::new(config(1), at(MAX_INDEX)).expect("config");
    for _ in 0..3 * T {
        r.tick();
        let out = flush(&mut r);
        assert!(out.messages.is_empty(), "{:?}", out.messages);
    }
    assert_eq!(r.role(), crate::core::Role::Follower);
    assert_eq!(r.log().last_index(), MAX_INDEX);
}

//! Membership changes (thesis chapter 4): configurations take effect when
//! appended and roll back when truncated (§4.1), learners (§4.2.1), one
//! change at a time and only after a commit of the leader's term (§4.1 and
//! the single-server change bug), removal of the leader (§4.2.2), removed
//! and foreign nodes that cannot disrupt the cluster (§4.2.3), and the
//! catch-up rounds rule for new servers (§4.2.1).

use super::harness::*;
use crate::core::{
    Body, Config, Configuration, Entry, Index, Payload, ProposeError, Raft, Restored, Role, Term,
};

/// A configuration entry.
fn conf_entry(index: Index, term: Term, conf: Configuration) -> Entry {
    Entry {
        term,
        index,
        payload: Payload::Config(conf),
    }
}

/// `voters` plus the learners `learners`.
fn with_learners(voters: &[u64], learners: &[u64]) -> Configuration {
    let mut c = Configuration::new(voters.iter().copied());
    c.learners = learners.iter().copied().collect();
    c
}

/// A bootstrapped cluster of `voters` with extra nodes `fresh` started from
/// [`Restored::empty`].
fn cluster_with_fresh(voters: &[u64], fresh: &[u64], tweak: impl Fn(&mut Config)) -> Cluster {
    let mut c = Cluster::with(voters, &tweak);
    for &id in fresh {
        let mut cfg = config(id);
        tweak(&mut cfg);
        c.nodes
            .insert(id, Raft::new(cfg, Restored::empty()).expect("config"));
    }
    c
}

/// Drives the leader until its configuration change has completed: the last
/// configuration is committed and not joint.
fn settle(c: &mut Cluster, leader: u64) {
    for _ in 0..4 * T {
        c.tick(leader);
        let r = c.node(leader);
        let (index, conf) = r.log().last_config();
        if index <= r.log().committed() && !conf.is_joint() {
            return;
        }
    }
    panic!("the change did not complete: {:?}", c.node(leader).status());
}

// ----- §4.1: configurations take effect when appended ----------------------

/// Thesis §4.1: "a server always uses the latest configuration in its log,
/// regardless of whether the entry is committed". A follower adopts a
/// configuration as soon as it appends it, and reverts to the previous one
/// when a new leader overwrites the uncommitted entry.
#[test]
fn a_configuration_takes_effect_when_appended_and_rolls_back_when_truncated() {
    let old = Configuration::new([1, 2, 3]);
    let mut r = Raft::new(config(2), Restored::bootstrap(old.clone())).expect("config");
    let joint = Configuration::joint([1, 2, 3, 4], [1, 2, 3]);
    step(
        &mut r,
        append(1, 2, 2, (1, 1), vec![conf_entry(2, 2, joint.clone())], 1),
    );
    assert_eq!(r.config(), &joint, "not in force once appended");
    assert_eq!(r.log().committed(), 1, "the joint entry is not committed");

    // A leader of term 3 that never saw the joint entry overwrites it.
    step(&mut r, append(3, 2, 3, (1, 1), vec![entry(2, 3)], 1));
    assert_eq!(log_of(&r), vec![(1, 1), (2, 3)]);
    assert_eq!(r.config(), &old, "the truncated configuration stayed");

    // A truncation that removes a C_new reverts to C_old,new, not further.
    let c_new = Configuration::new([1, 2, 3, 4]);
    let mut r = Raft::new(config(2), Restored::bootstrap(old.clone())).expect("config");
    step(
        &mut r,
        append(
            1,
            2,
            2,
            (1, 1),
            vec![
                conf_entry(2, 2, joint.clone()),
                conf_entry(3, 2, c_new.clone()),
            ],
            2,
        ),
    );
    assert_eq!(r.config(), &c_new);
    step(&mut r, append(3, 2, 3, (2, 2), vec![entry(3, 3)], 2));
    assert_eq!(r.config(), &joint);
}

/// A deposed leader whose uncommitted configuration is overwritten by the
/// next leader reverts too (the change is lost, as in the prior-art
/// scenario where a leader crashes with its change on a minority).
#[test]
fn a_deposed_leaders_uncommitted_configuration_rolls_back() {
    let mut c = cluster_with_fresh(&[1, 2, 3], &[4], |_| {});
    c.elect(1);
    c.isolate(1);
    c.node_mut(1)
        .propose_config(with_learners(&[1, 2, 3], &[4]))
        .expect("the leader accepts the change");
    c.deliver();
    assert_eq!(c.node(1).config(), &with_learners(&[1, 2, 3], &[4]));
    // 2 or 3 leads a later term without the change; 1 rejoins and is
    // overwritten.
    let mut leader = None;
    for _ in 0..10 * T {
        c.tick_all(1);
        leader = c.leaders().into_iter().find(|&id| id != 1);
        if leader.is_some() {
            break;
        }
    }
    let leader = leader.expect("2 or 3 was elected");
    c.node_mut(leader).propose(b"x".to_vec()).expect("leader");
    c.deliver();
    c.heal();
    c.tick_all(2 * T);
    assert_eq!(c.node(1).role(), Role::Follower);
    assert_eq!(log_of(c.node(1)), log_of(c.node(leader)));
    assert_eq!(c.node(1).config(), &Configuration::new([1, 2, 3]));
}

// ----- §4.2.1: learners ----------------------------------------------------

/// Learners receive the log, but their acknowledgements never count towards
/// commitment.
#[test]
fn learners_replicate_but_do_not_count() {
    let conf = with_learners(&[1, 2, 3], &[4]);
    let mut r = Raft::new(config(1), Restored::bootstrap(conf)).expect("config");
    let out = make_leader(&mut r);
    assert!(
        out.of_kind("AppendEntries").iter().any(|m| m.to == 4),
        "the learner gets the no-op"
    );
    let (term, last) = (r.term(), r.log().last_index());
    step(&mut r, append_ok(4, 1, term, last));
    assert_eq!(r.log().committed(), 0, "a learner's ack counted");
    step(&mut r, append_ok(2, 1, term, last));
    assert_eq!(r.log().committed(), last);

    // In a cluster: a fresh node added as learner receives the whole log.
    let mut c = cluster_with_fresh(&[1, 2, 3], &[4], |_| {});
    c.elect(1);
    c.propose(1, b"a");
    c.node_mut(1)
        .propose_config(with_learners(&[1, 2, 3], &[4]))
        .expect("change accepted");
    c.deliver();
    c.tick_all(2 * T);
    assert_eq!(log_of(c.node(4)), log_of(c.node(1)));
    assert_eq!(c.node(4).config(), &with_learners(&[1, 2, 3], &[4]));
    assert_eq!(c.node(4).log().committed(), c.node(1).log().committed());
}

/// Learners never campaign and their votes are not counted: a candidate of
/// a configuration where 4 is a learner does not win with 4's grant.
#[test]
fn learners_never_campaign_and_their_votes_do_not_count() {
    let conf = with_learners(&[1, 2, 3], &[4]);
    let mut learner = Raft::new(config(4), Restored::bootstrap(conf.clone())).expect("config");
    for _ in 0..10 * T {
        learner.tick();
        let out = flush(&mut learner);
        assert!(out.all().is_empty(), "the learner sent {:?}", out.all());
    }
    assert_eq!(learner.role(), Role::Follower);
    assert_eq!(learner.term(), 1);

    let mut r = Raft::new(config(1), Restored::bootstrap(conf)).expect("config");
    let (out, _) = tick_until_campaign(&mut r);
    assert!(
        out.all().iter().all(|m| m.to != 4),
        "vote requests go to voters only"
    );
    let next = r.term() + 1;
    step(&mut r, vote_resp(4, 1, next, true, true));
    assert_eq!(r.role(), Role::PreCandidate, "a learner's pre-vote counted");
    step(&mut r, vote_resp(2, 1, next, true, true));
    assert_eq!(r.role(), Role::Candidate);
    let term = r.term();
    step(&mut r, vote_resp(4, 1, term, true, false));
    assert_eq!(r.role(), Role::Candidate, "a learner's vote counted");
    step(&mut r, vote_resp(3, 1, term, true, false));
    assert_eq!(r.role(), Role::Leader);
}

/// A node that has not received any configuration that includes it (a new
/// server started empty) never campaigns (thesis §4.2.1).
#[test]
fn an_empty_node_never_campaigns() {
    let mut r = Raft::new(config(7), Restored::empty()).expect("config");
    for _ in 0..10 * T {
        r.tick();
        let out = flush(&mut r);
        assert!(out.all().is_empty(), "the empty node sent {:?}", out.all());
    }
    assert_eq!(r.role(), Role::Follower);
    assert_eq!(r.term(), 0);
}

// ----- §4.1: one change at a time, after a commit of the leader's term ----

/// A second change is refused while the first is uncommitted, and while
/// the configuration is joint (C_new not yet appended or committed).
#[test]
fn one_change_in_flight() {
    let mut r = Raft::new(
        config(1),
        Restored::bootstrap(Configuration::new([1, 2, 3])),
    )
    .expect("config");
    make_settled_leader(&mut r);
    let first = r
        .propose_config(Configuration::new([1, 2, 3, 4]))
        .expect("first change");
    assert_eq!(
        r.propose_config(Configuration::new([1, 2])),
        Err(ProposeError::ChangeInFlight(first))
    );
    assert!(r.config().is_joint());
    // C_old,new commits: the leader appends C_new on its own.
    let term = r.term();
    step(&mut r, append_ok(2, 1, term, first));
    step(&mut r, append_ok(3, 1, term, first));
    assert_eq!(r.log().committed(), first);
    let (c_new_index, c_new) = r.log().last_config();
    assert_eq!(c_new_index, first + 1);
    assert_eq!(c_new, &Configuration::new([1, 2, 3, 4]));
    assert_eq!(
        r.propose_config(Configuration::new([1, 2])),
        Err(ProposeError::ChangeInFlight(first + 1)),
        "a change was accepted while C_new is uncommitted"
    );
    // While joint and committed (a leader that inherited C_old,new before
    // appending C_new): refused too.
    let mut r = Raft::new(
        config(1),
        Restored::bootstrap(Configuration::joint([1, 2, 3], [1, 2])),
    )
    .expect("config");
    make_settled_leader(&mut r);
    assert!(matches!(
        r.propose_config(Configuration::new([1, 2])),
        Err(ProposeError::ChangeInFlight(_))
    ));
    // Learner-only changes are changes too.
    let mut r = Raft::new(
        config(1),
        Restored::bootstrap(Configuration::new([1, 2, 3])),
    )
    .expect("config");
    make_settled_leader(&mut r);
    let at = r
        .propose_config(with_learners(&[1, 2, 3], &[4]))
        .expect("learner added");
    assert!(
        !r.config().is_joint(),
        "learner changes need no joint phase"
    );
    assert_eq!(
        r.propose_config(with_learners(&[1, 2, 3], &[4, 5])),
        Err(ProposeError::ChangeInFlight(at))
    );
}

/// A new leader proposes a change only once it has committed an entry of
/// its own term (its no-op): otherwise a change of an earlier leader may
/// still be uncommitted in its log — or missing from it while it is on a
/// majority of another configuration (the single-server change bug, thesis
/// §4.1 and the prior-art scenario).
#[test]
fn a_leader_changes_the_configuration_only_after_committing_in_its_term() {
    // The configuration comes from a snapshot (committed); the log holds
    // an entry of term 1, committed, and the node leads term 3.
    let mut r = node(1, &[1, 2, 3], 2, &[1]);
    step(&mut r, heartbeat(2, 1, 2, 1));
    assert_eq!(r.log().committed(), 1);
    make_leader(&mut r);
    assert_eq!(
        r.propose_config(Configuration::new([1, 2, 3, 4])),
        Err(ProposeError::NotReady)
    );
    let (term, last) = (r.term(), r.log().last_index());
    step(&mut r, append_ok(2, 1, term, last));
    assert!(r.propose_config(Configuration::new([1, 2, 3, 4])).is_ok());

    // Followers refuse outright.
    let mut f = Raft::new(
        config(2),
        Restored::bootstrap(Configuration::new([1, 2, 3])),
    )
    .expect("config");
    assert!(matches!(
        f.propose_config(Configuration::new([1, 2])),
        Err(ProposeError::NotLeader(_))
    ));
}

/// A new leader whose latest configuration entry is not committed in its
/// view (a group's first configuration at index 1, or an earlier leader's
/// change) answers `NotReady`, not `ChangeInFlight`: committing its no-op
/// commits that entry too (Log Matching, §5.3), so the change can go
/// ahead then, and the runtime parks a `NotReady` change until it can
/// (found in CI, stop 44: an admin's first change to a group just formed
/// was refused as "already in flight (appended at index 1)").
#[test]
fn a_new_leader_parks_a_change_behind_an_inherited_uncommitted_configuration() {
    let mut r = Raft::new(
        config(1),
        Restored::bootstrap(Configuration::new([1, 2, 3])),
    )
    .expect("config");
    make_leader(&mut r);
    assert!(
        r.log().committed() < r.log().last_config().0,
        "the set-up needs the first configuration uncommitted"
    );
    assert_eq!(
        r.propose_config(Configuration::new([1, 2, 3, 4])),
        Err(ProposeError::NotReady)
    );
    let (term, last) = (r.term(), r.log().last_index());
    step(&mut r, append_ok(2, 1, term, last));
    assert!(r.propose_config(Configuration::new([1, 2, 3, 4])).is_ok());
}

// ----- §4.2.2: removing the leader -----------------------------------------

/// A leader not in C_new keeps leading (without counting itself) until
/// C_new commits, then steps down and stops sending anything.
#[test]
fn a_removed_leader_steps_down_once_c_new_commits_and_stops_sending() {
    let mut c = Cluster::new(&[1, 2, 3, 4]);
    c.elect(1);
    c.node_mut(1)
        .propose_config(Configuration::new([2, 3, 4]))
        .expect("change accepted");
    c.deliver();
    let mut stepped_down = false;
    for _ in 0..4 * T {
        c.tick(1);
        if c.node(1).role() != Role::Leader {
            stepped_down = true;
            break;
        }
    }
    assert!(stepped_down, "the removed leader kept leading");
    let r = c.node(1);
    assert_eq!(r.config(), &Configuration::new([2, 3, 4]));
    let (index, _) = r.log().last_config();
    assert!(
        index <= r.log().committed(),
        "stepped down before C_new committed"
    );
    // It sends nothing more, and never campaigns.
    let (delivered, dropped) = (c.delivered.len(), c.dropped.len());
    for _ in 0..10 * T {
        c.tick(1);
    }
    let sent_by_1 = c.delivered[delivered..]
        .iter()
        .chain(&c.dropped[dropped..])
        .filter(|m| m.from == 1)
        .count();
    assert_eq!(sent_by_1, 0, "the removed leader still sends");
    // The remaining voters elect a leader among themselves.
    c.tick_all(6 * T);
    let leaders = c.leaders();
    assert_eq!(leaders.len(), 1, "{leaders:?}");
    assert_ne!(leaders[0], 1);
}

/// C_new commits with the acknowledgements of a majority of C_new alone:
/// the removed leader's own entry does not count.
#[test]
fn a_removed_leader_does_not_count_itself_in_c_new() {
    let mut r = Raft::new(
        config(1),
        Restored::bootstrap(Configuration::new([1, 2, 3])),
    )
    .expect("config");
    make_settled_leader(&mut r);
    let joint = r
        .propose_config(Configuration::new([2, 3]))
        .expect("change");
    let term = r.term();
    step(&mut r, append_ok(2, 1, term, joint));
    assert!(r.config().is_joint(), "C_old,new committed without 3");
    step(&mut r, append_ok(3, 1, term, joint));
    let c_new = r.log().last_index();
    assert_eq!(r.config(), &Configuration::new([2, 3]));
    step(&mut r, append_ok(2, 1, term, c_new));
    assert!(r.log().committed() < c_new, "C_new committed by {{1, 2}}");
    assert_eq!(r.role(), Role::Leader);
    step(&mut r, append_ok(3, 1, term, c_new));
    assert_eq!(r.log().committed(), c_new);
    assert_eq!(r.role(), Role::Follower);
}

// ----- §4.2.3: removed and foreign nodes cannot disrupt ---------------------

/// A removed node learns of its removal (the leader replicates C_new to it
/// until C_new commits) and never campaigns afterwards.
#[test]
fn a_removed_node_learns_of_its_removal_and_stops_campaigning() {
    let mut c = Cluster::new(&[1, 2, 3, 4]);
    c.elect(1);
    c.node_mut(1)
        .propose_config(Configuration::new([1, 2, 3]))
        .expect("change");
    c.deliver();
    settle(&mut c, 1);
    c.tick_all(T);
    assert_eq!(c.node(4).config(), &Configuration::new([1, 2, 3]));
    let term = c.node(1).term();
    let before = c.delivered.len();
    c.tick_all(20 * T);
    assert_eq!(
        c.delivered[before..].iter().filter(|m| m.from == 4).count(),
        0,
        "the removed node still sends"
    );
    assert_eq!(c.node(1).role(), Role::Leader);
    assert_eq!(c.node(1).term(), term);
}

/// When C_new commits without the removed member's acknowledgement, the
/// leader still sends that member one last AppendEntries whose commit
/// covers C_new: the removed node learns that its removal committed (a
/// multi-group node deletes its replica then, see `multi::hosting`), not
/// merely that it was proposed.
#[test]
fn a_removed_node_is_told_that_its_removal_committed() {
    let mut r = Raft::new(
        config(1),
        Restored::bootstrap(Configuration::new([1, 2, 3, 4])),
    )
    .expect("config");
    make_settled_leader(&mut r);
    let joint = r
        .propose_config(Configuration::new([1, 2, 3]))
        .expect("change");
    flush(&mut r);
    let term = r.term();
    step(&mut r, append_ok(2, 1, term, joint));
    step(&mut r, append_ok(3, 1, term, joint));
    let c_new = r.log().last_index();
    assert_eq!(r.config(), &Configuration::new([1, 2, 3]));
    // Node 4 never acknowledged C_new; node 2's acknowledgement (with the
    // leader's own) commits it.
    let out = step(&mut r, append_ok(2, 1, term, c_new));
    assert_eq!(r.log().committed(), c_new);
    let told = out.all().into_iter().any(|m| {
        m.to == 4
            && matches!(m.body, Body::AppendEntries { prev_index, commit, .. }
                if prev_index >= c_new && commit >= c_new)
    });
    assert!(
        told,
        "node 4 was not told that C_new committed: {:?}",
        out.all()
    );
    // Afterwards the leader sends it nothing more.
    for _ in 0..2 * T {
        r.tick();
    }
    assert!(flush(&mut r).all().iter().all(|m| m.to != 4));
}

/// A removed node that did not learn of its removal (it was cut off when
/// C_new committed) campaigns, but nobody listens: followers and the leader
/// ignore vote requests from nodes outside their configuration — with or
/// without PreVote, in or out of their lease (thesis §4.2.3).
#[test]
fn a_removed_node_that_did_not_learn_cannot_disrupt_the_cluster() {
    for pre_vote in [true, false] {
        let mut c = Cluster::with(&[1, 2, 3, 4], |cfg| cfg.pre_vote = pre_vote);
        c.elect(1);
        c.isolate(4);
        c.node_mut(1)
            .propose_config(Configuration::new([1, 2, 3]))
            .expect("change");
        c.deliver();
        settle(&mut c, 1);
        assert!(c.node(4).config().is_voter(4));
        let term = c.node(1).term();
        c.heal();
        // Node 4 hears nothing and campaigns, over and over.
        for _ in 0..10 * T {
            c.tick(4);
        }
        let requests = c.count(|m| m.from == 4 && m.body.kind().contains("Vote"));
        assert!(requests > 0, "node 4 did not campaign");
        assert_eq!(c.node(1).role(), Role::Leader, "pre_vote {pre_vote}");
        for id in [1, 2, 3] {
            assert_eq!(c.node(id).term(), term, "node {id}, pre_vote {pre_vote}");
        }
        assert_eq!(
            c.count(|m| m.to == 4 && m.body.kind().ends_with("VoteResponse")),
            0,
            "members answered a non-member"
        );
    }
}

/// Thesis §4.2.3's lease argument, applied to leader messages (`inbound`):
/// while a node hears from its leader (CheckQuorum on, within an election
/// timeout), a node outside the configuration claiming leadership of a
/// higher term cannot be a newer leader it must follow; its AppendEntries,
/// heartbeats and snapshots are dropped and change neither the term nor
/// the log. Once the node has gone the longest election timeout (2T)
/// without a leader they are accepted (a new node or a member that missed
/// a change may be behind on who the members are; stop 58: not after one
/// election timeout, so that a pre-candidate is covered too).
#[test]
fn a_non_member_leader_is_ignored_during_a_lease() {
    let mut f = node(2, &[1, 2, 3], 2, &[1]);
    step(&mut f, heartbeat(1, 2, 2, 0));
    assert_eq!((f.term(), f.leader()), (2, Some(1)));
    let forged = [
        append(9, 2, 3, (1, 1), vec![entry(2, 3)], 2),
        heartbeat(9, 2, 3, 1),
    ];
    for m in forged.clone() {
        assert_eq!(
            f.step_checked(m.clone()),
            Err(crate::core::DropReason::NonMemberInLease),
            "{m:?}"
        );
    }
    assert!(flush(&mut f).all().is_empty());
    assert_eq!((f.term(), f.leader()), (2, Some(1)));
    assert_eq!(log_of(&f), [(1, 1)]);
    // The longest election timeout without the leader: the window is over.
    for _ in 0..2 * T {
        f.tick();
    }
    flush(&mut f);
    let [append_msg, _] = forged;
    step(&mut f, append_msg);
    assert_eq!((f.term(), f.leader()), (3, Some(9)));
    assert_eq!(log_of(&f), [(1, 1), (2, 3)]);
}

/// Vote requests from a node outside the configuration (neither voter nor
/// learner) are ignored inside a lease (thesis §4.2.3: a removed server
/// must not disrupt a cluster that has a leader), and handled outside one
/// (thesis §4.1: a server grants its vote to a candidate outside its latest
/// configuration, which may be a voter of a configuration it missed; stop
/// 57). A transfer vote request from a non-voter is always dropped (only a
/// voter is a transferee, thesis §3.10). Vote requests from a learner or a
/// voter are handled as usual.
///
/// Until stop 57 this test pinned the opposite rule (non-members' vote
/// requests dropped in or out of a lease), which can leave a cluster
/// without a leader: `review_s57::s57_three_of_four_voters_elect_nobody`.
#[test]
fn nodes_ignore_vote_requests_from_non_members() {
    let conf = with_learners(&[1, 2, 3], &[4]);
    let transfer_req = |from, to, term| {
        msg(
            from,
            to,
            term,
            Body::RequestVote {
                last_index: 9,
                last_term: 9,
                pre_vote: false,
                transfer: true,
            },
        )
    };
    // Inside the lease of leader 1: dropped, whatever the kind.
    for m in [
        vote_req(9, 2, 5, (9, 9)),
        pre_vote_req(9, 2, 5, (9, 9)),
        transfer_req(9, 2, 5),
    ] {
        let mut f = Raft::new(config(2), Restored::bootstrap(conf.clone())).expect("config");
        step(&mut f, heartbeat(1, 2, 1, 0));
        assert_eq!(f.leader(), Some(1));
        assert_eq!(
            f.step_checked(m.clone()),
            Err(crate::core::DropReason::VoteFromNonMember),
            "{m:?}"
        );
        let out = flush(&mut f);
        assert!(out.all().is_empty(), "{m:?} answered: {:?}", out.all());
        assert_eq!((f.term(), f.leader()), (1, Some(1)), "{m:?}");
    }
    let mut leader = Raft::new(config(1), Restored::bootstrap(conf.clone())).expect("config");
    make_settled_leader(&mut leader);
    let term = leader.term();
    for m in [
        vote_req(9, 1, term + 1, (9, 9)),
        transfer_req(9, 1, term + 1),
    ] {
        step(&mut leader, m);
        assert_eq!((leader.role(), leader.term()), (Role::Leader, term));
    }

    // Outside a lease: a vote and a pre-vote are granted (§4.1); a
    // transfer vote request is still dropped, as a non-voter's.
    let mut f = Raft::new(config(2), Restored::bootstrap(conf.clone())).expect("config");
    let out = step(&mut f, pre_vote_req(9, 2, 5, (9, 9)));
    assert_eq!(f.term(), 1, "a pre-vote raised the term");
    let granted = |out: &Out| {
        out.all()
            .iter()
            .any(|m| m.to == 9 && matches!(m.body, Body::RequestVoteResponse { granted: true, .. }))
    };
    assert!(granted(&out), "pre-vote not granted: {:?}", out.all());
    let out = step(&mut f, vote_req(9, 2, 5, (9, 9)));
    assert_eq!((f.term(), f.hard_state().vote), (5, 9));
    assert!(granted(&out), "vote not granted: {:?}", out.all());
    let mut f = Raft::new(config(2), Restored::bootstrap(conf.clone())).expect("config");
    assert_eq!(
        f.step_checked(transfer_req(9, 2, 5)),
        Err(crate::core::DropReason::TransferFromNonVoter)
    );
    assert_eq!(f.term(), 1);

    // Members are heard: a voter's request is granted, and so is one from
    // a node the follower knows as learner (it may be a voter already in
    // the candidate's newer configuration).
    let mut f = Raft::new(config(2), Restored::bootstrap(conf.clone())).expect("config");
    let out = step(&mut f, vote_req(3, 2, 5, (9, 9)));
    assert_eq!(f.term(), 5);
    assert_eq!(out.of_kind("RequestVoteResponse").len(), 1);
    let mut f = Raft::new(config(2), Restored::bootstrap(conf)).expect("config");
    let out = step(&mut f, vote_req(4, 2, 5, (9, 9)));
    assert_eq!(f.term(), 5);
    assert_eq!(out.of_kind("RequestVoteResponse").len(), 1);
}

/// A fresh node (empty configuration) ignores vote requests, but follows
/// the leader that replicates to it — whoever it is.
#[test]
fn an_empty_node_follows_a_leader_but_ignores_candidates() {
    let mut r = Raft::new(config(4), Restored::empty()).expect("config");
    let out = step(&mut r, vote_req(1, 4, 3, (5, 3)));
    assert!(out.all().is_empty());
    assert_eq!(r.term(), 0);
    let out = step(&mut r, append(1, 4, 3, (0, 0), vec![], 0));
    assert_eq!(r.term(), 3);
    assert_eq!(r.leader(), Some(1));
    assert_eq!(out.of_kind("AppendEntriesResponse").len(), 1);
}

// ----- §4.2.1: the catch-up rounds rule -------------------------------------

/// A learner is caught up when a round of replication (everything the
/// leader held when the round began) finished within an election timeout
/// and the round in progress is not overdue; it stops being so when it
/// stops answering.
#[test]
fn a_learner_is_caught_up_after_a_round_shorter_than_an_election_timeout() {
    let mut c = cluster_with_fresh(&[1, 2, 3], &[4], |_| {});
    c.elect(1);
    for i in 0..5u8 {
        c.propose(1, &[i]);
    }
    c.isolate(4);
    c.node_mut(1)
        .propose_config(with_learners(&[1, 2, 3], &[4]))
        .expect("change");
    c.deliver();
    let last = c.node(1).log().last_index();
    assert_eq!(c.node(1).catch_up_progress(4), Some((0, last)));
    assert!(
        !c.node(1).learner_caught_up(4),
        "caught up before any round"
    );
    for _ in 0..2 * T {
        c.tick(1);
    }
    assert!(!c.node(1).learner_caught_up(4), "an unreachable learner");
    c.heal();
    for _ in 0..T {
        c.tick(1);
    }
    let last = c.node(1).log().last_index();
    assert_eq!(c.node(1).catch_up_progress(4), Some((last, last)));
    assert!(
        c.node(1).learner_caught_up(4),
        "the learner caught up but the first round took longer than T"
    );
    // Still caught up while the log is idle (heartbeats close rounds).
    for _ in 0..3 * T {
        c.tick(1);
    }
    assert!(c.node(1).learner_caught_up(4));
    // Cut off again: no longer caught up after an election timeout.
    c.isolate(4);
    c.propose(1, b"more");
    for _ in 0..T + 1 {
        c.tick(1);
    }
    assert!(!c.node(1).learner_caught_up(4), "a silent learner");
    // Only the leader knows.
    assert!(!c.node(2).learner_caught_up(4));
    assert_eq!(c.node(2).catch_up_progress(4), None);
}

/// End to end: add a fresh node as learner, wait until it is caught up,
/// promote it (C_old,new then C_new), then replace a voter with it in a
/// single joint change.
#[test]
fn add_as_learner_promote_then_replace() {
    let mut c = cluster_with_fresh(&[1, 2, 3], &[4, 5], |_| {});
    c.elect(1);
    c.propose(1, b"a");
    c.node_mut(1)
        .propose_config(with_learners(&[1, 2, 3], &[4]))
        .expect("learner");
    c.deliver();
    settle(&mut c, 1);
    for _ in 0..T {
        c.tick(1);
    }
    assert!(c.node(1).learner_caught_up(4));
    c.node_mut(1)
        .propose_config(Configuration::new([1, 2, 3, 4]))
        .expect("promotion");
    c.deliver();
    settle(&mut c, 1);
    assert_eq!(c.node(1).config(), &Configuration::new([1, 2, 3, 4]));
    // Replace 3 by 5: learner first, then one joint change.
    c.node_mut(1)
        .propose_config(with_learners(&[1, 2, 3, 4], &[5]))
        .expect("learner");
    c.deliver();
    settle(&mut c, 1);
    for _ in 0..T {
        c.tick(1);
    }
    assert!(c.node(1).learner_caught_up(5));
    c.node_mut(1)
        .propose_config(Configuration::new([1, 2, 4, 5]))
        .expect("swap");
    c.deliver();
    settle(&mut c, 1);
    c.tick_all(T);
    for id in [1, 2, 4, 5] {
        assert_eq!(
            c.node(id).config(),
            &Configuration::new([1, 2, 4, 5]),
            "node {id}"
        );
        assert_eq!(log_of(c.node(id)), log_of(c.node(1)), "node {id}");
    }
    assert!(
        !c.node(3).config().is_voter(3),
        "3 did not learn its removal"
    );
}

/// The prior-art availability scenario: replacing a node by one in the same
/// failure domain, which then partitions away. With joint consensus the
/// other two voters form majorities of both C_old and C_new, so the change
/// completes and the cluster stays available.
#[test]
fn replacing_a_node_in_a_failure_domain_that_partitions_stays_available() {
    let mut c = cluster_with_fresh(&[1, 2, 3], &[4], |_| {});
    c.elect(2);
    c.node_mut(2)
        .propose_config(with_learners(&[1, 2, 3], &[4]))
        .expect("learner");
    c.deliver();
    settle(&mut c, 2);
    for _ in 0..T {
        c.tick(2);
    }
    assert!(c.node(2).learner_caught_up(4));
    c.node_mut(2)
        .propose_config(Configuration::new([2, 3, 4]))
        .expect("swap 1 for 4");
    // The failure domain of 1 and 4 is cut off before anything leaves.
    c.isolate(1);
    c.isolate(4);
    c.deliver();
    settle(&mut c, 2);
    assert_eq!(c.node(2).config(), &Configuration::new([2, 3, 4]));
    let (at, _) = c.propose(2, b"still available");
    c.tick_all(T);
    assert!(c.node(2).log().committed() >= at);
}

/// Learners answer vote requests (their grants count only for a candidate
/// that already counts them as voters). Otherwise a promotion committed by
/// the old voters alone could leave the cluster without a leader: here 1 is
/// promoted by {2, 3} without hearing of it, 2 fails, and only 3 can win —
/// with the vote of 1, who still believes it is a learner (the case etcd
/// documents in its vote handling).
#[test]
fn a_learner_votes_for_a_candidate_that_counts_it_as_voter() {
    let conf = with_learners(&[2, 3], &[1]);
    let mut c =
        Cluster::from_nodes([1, 2, 3].map(|id| (config(id), Restored::bootstrap(conf.clone()))));
    c.filter = Some(Box::new(|m| m.to != 1));
    c.elect(2);
    let (term, noop) = (c.node(2).term(), c.node(2).log().last_index());
    assert_eq!(c.node(2).log().committed(), noop);
    c.node_mut(2)
        .propose_config(Configuration::new([1, 2, 3]))
        .expect("promotion");
    c.deliver();
    settle(&mut c, 2);
    c.tick_all(1);
    assert_eq!(c.node(3).config(), &Configuration::new([1, 2, 3]));
    assert_eq!(c.node(1).config(), &conf, "1 heard of its promotion");
    // 2 fails; 3 campaigns and needs 1's vote.
    c.isolate(2);
    c.filter = None;
    for _ in 0..6 * T {
        c.tick(3);
        c.tick(1);
        if c.node(3).role() == Role::Leader {
            break;
        }
    }
    assert_eq!(c.node(3).role(), Role::Leader, "{:?}", c.node(3).status());
    assert!(c.node(3).term() > term);
    c.tick_all(T);
    assert_eq!(c.node(1).config(), &Configuration::new([1, 2, 3]));
}

// ----- a node that left the group and joins it again (crate::multi) ------

/// The vote answer in `out`, if any.
fn vote_answer(out: &Out) -> Option<bool> {
    out.all().iter().find_map(|m| match m.body {
        Body::RequestVoteResponse { granted, .. } => Some(granted),
        _ => None,
    })
}

/// A replica that left a group (its removal committed at index 5, seen in
/// term 4) and is hosted again with an empty state catches up through the
/// group's old configurations, which list its id as a voter: they describe
/// the earlier replica. Counting itself a voter there, it could campaign
/// with an old configuration or give a lagging candidate of one the vote
/// the earlier replica already gave, and a leader could be elected without
/// entries the earlier replica had acknowledged. Behind its fence it does
/// neither; the same node without the fence does both.
#[test]
fn a_replica_behind_its_membership_fence_neither_campaigns_nor_votes() {
    let fenced = |c: &mut Config| c.membership_fence = Some((5, 4));
    // The configuration in force (from the snapshot at 0) lists 7.
    let mut r = node_with(7, &[1, 2, 7], 4, &[1, 2, 3], fenced);
    for _ in 0..10 * T {
        r.tick();
        let out = flush(&mut r);
        assert!(out.all().is_empty(), "the fenced node sent {:?}", out.all());
    }
    assert_eq!(r.role(), Role::Follower);
    let out = step(&mut r, vote_req(1, 7, 6, (3, 3)));
    assert_eq!(
        vote_answer(&out),
        Some(false),
        "a fenced node granted a vote"
    );
    let out = step(&mut r, pre_vote_req(2, 7, 7, (3, 3)));
    assert_eq!(
        vote_answer(&out),
        Some(false),
        "a fenced node granted a pre-vote"
    );

    // Without the fence: the same node campaigns and votes.
    let mut free = node(7, &[1, 2, 7], 4, &[1, 2, 3]);
    let out = step(&mut free, vote_req(1, 7, 6, (3, 3)));
    assert_eq!(vote_answer(&out), Some(true));
    let (out, _) = tick_until_campaign(&mut node(7, &[1, 2, 7], 4, &[1, 2, 3]));
    assert!(!out.all().is_empty());
}

/// Past its fence (a configuration newer than the removal lists it) the
/// replica is an ordinary voter, except that it never votes in a term up
/// to the removal's: the earlier replica may have voted in it.
#[test]
fn past_its_fence_a_replica_votes_only_in_terms_after_its_removal() {
    let voters = Configuration::new([1, 2, 7]);
    let mut log: Vec<Entry> = (1..=5).map(|i| entry(i, 4)).collect();
    log.push(conf_entry(6, 4, voters.clone()));
    let restored = Restored {
        entries: log,
        ..restored(&[1, 2], 4, &[])
    };
    let mut cfg = config(7);
    cfg.membership_fence = Some((5, 4));
    let mut r = Raft::new(cfg.clone(), restored.clone()).expect("config");
    // Term 4, the removal's: refused, also from a candidate as up to date.
    let out = step(&mut r, vote_req(1, 7, 4, (6, 4)));
    assert_eq!(vote_answer(&out), Some(false));
    // Term 5: granted.
    let out = step(&mut r, vote_req(1, 7, 5, (6, 4)));
    assert_eq!(vote_answer(&out), Some(true));
    // And it campaigns (in a term after the removal's).
    let mut r = Raft::new(cfg, restored).expect("config");
    let (out, _) = tick_until_campaign(&mut r);
    assert!(!out.all().is_empty());
    assert!(r.term() > 4 || r.role() == Role::PreCandidate);
}

/// The targets `propose_config` refuses, each with `InvalidConfiguration`
/// and nothing appended: a joint target, no voter, a node both voter and
/// learner, the reserved id 0 (it means "no node": a voter 0 could never
/// vote, and its half of every quorum would wait for it), and a voter
/// demoted straight to a learner.
#[test]
fn invalid_targets_are_refused_and_append_nothing() {
    let mut r = Raft::new(
        config(1),
        Restored::bootstrap(Configuration::new([1, 2, 3])),
    )
    .expect("config");
    make_settled_leader(&mut r);
    let last = r.log().last_index();
    let with_learners = |voters: &[u64], learners: &[u64]| {
        let mut c = Configuration::new(voters.iter().copied());
        c.learners = learners.iter().copied().collect();
        c
    };
    for (target, what) in [
        (Configuration::joint([1, 2, 4], [1, 2, 3]), "joint"),
        (Configuration::new([]), "no voter"),
        (with_learners(&[1, 2, 3, 4], &[4]), "voter and learner"),
        (Configuration::new([1, 2, 3, 0]), "voter 0"),
        (with_learners(&[1, 2, 3], &[0]), "learner 0"),
        (with_learners(&[1, 2], &[3]), "demotion"),
    ] {
        assert!(
            matches!(
                r.propose_config(target),
                Err(ProposeError::InvalidConfiguration(_))
            ),
            "{what} accepted"
        );
        assert_eq!(r.log().last_index(), last, "{what}: something appended");
    }
    // A valid change still goes through.
    assert!(r.propose_config(with_learners(&[1, 2, 3], &[4])).is_ok());
}

/// `voters` and `learners`, each member with an address.
fn with_addrs(voters: &[u64], learners: &[u64]) -> Configuration {
    let mut c = with_learners(voters, learners);
    c.addrs = voters
        .iter()
        .chain(learners)
        .map(|&id| (id, format!("node-{id}")))
        .collect();
    c
}

/// Thesis §4.3: replacing a voter by another changes the voters even when
/// their number stays the same, so it goes through `C_old,new` (a majority
/// of {1, 2, 4} need not overlap one of {1, 2, 3} without it); and leaving
/// the joint configuration keeps the learners of `C_new` and forgets the
/// address of the member it removed. Found by mutation (stop 45): skipping
/// the joint phase when the voter count is unchanged, `C_new` without its
/// learners, and `C_new` keeping the removed member's address each
/// survived every `core::` test.
#[test]
fn replacing_a_voter_goes_through_the_joint_configuration_and_keeps_the_learners() {
    let mut c = cluster_with_fresh(&[1, 2, 3], &[4, 5], |_| {});
    c.elect(1);
    c.propose(1, b"a");
    c.node_mut(1)
        .propose_config(with_addrs(&[1, 2, 3], &[4, 5]))
        .expect("learners");
    c.deliver();
    settle(&mut c, 1);
    for _ in 0..T {
        c.tick(1);
    }
    assert!(c.node(1).learner_caught_up(4));

    let first = c
        .node_mut(1)
        .propose_config(with_addrs(&[1, 2, 4], &[5]))
        .expect("replace 3 by 4");
    let joint = match &c.node(1).log().entry(first).expect("appended").payload {
        Payload::Config(conf) => conf.clone(),
        other => panic!("not a configuration entry: {other:?}"),
    };
    assert_eq!(
        (joint.voters.clone(), joint.outgoing.clone()),
        ([1, 2, 4].into(), [1, 2, 3].into()),
        "replacing a voter must append C_old,new first: {joint:?}"
    );
    c.deliver();
    settle(&mut c, 1);
    c.tick_all(T);
    let want = with_addrs(&[1, 2, 4], &[5]);
    for id in [1, 2, 4, 5] {
        let conf = c.node(id).config();
        assert_eq!(
            conf.learners, want.learners,
            "node {id}: leaving the joint configuration dropped the learners"
        );
        assert_eq!(
            conf.addrs, want.addrs,
            "node {id}: C_new keeps the address of the member it removed"
        );
        assert_eq!(conf, &want, "node {id}");
    }
}

/// Thesis §6.2 (CheckQuorum) with §4.1: members a leader just added count
/// as heard from at its next check, so a leader that grows its cluster
/// does not step down at once because the new members have not answered
/// yet. Here a single-voter cluster (a fresh deployment) adds two voters
/// that are slow to answer: the joint configuration's new half needs two
/// of three, and only the leader itself answered. Exactly one check falls
/// within the `T` ticks after the change (one every `T` ticks); the
/// leader survives it. Found by mutation: with a new member's progress
/// created not recently active, no test failed.
#[test]
fn check_quorum_counts_members_just_added_as_heard_from() {
    let mut r = node(1, &[1], 1, &[1]);
    make_settled_leader(&mut r);
    r.propose_config(Configuration::new([1, 2, 3]))
        .expect("add two voters");
    flush(&mut r);
    assert!(r.config().is_joint());
    for tick in 1..=T {
        r.tick();
        flush(&mut r);
        assert_eq!(
            r.role(),
            Role::Leader,
            "the leader stepped down at tick {tick} after adding members that had no chance to answer yet"
        );
    }
    // They never answer: the next check takes the leadership away.
    for _ in 0..T {
        r.tick();
        flush(&mut r);
    }
    assert_eq!(r.role(), Role::Follower);
}

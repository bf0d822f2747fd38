//! Review stop 57 (core): reproductions.

use super::harness::*;
use crate::core::{Body, Raft, Role};

/// Voters 1, 2, 3 and learner 4: node `id` at term 2, log of terms [1, 2].
fn with_learner(id: u64, lease_reads: bool) -> Raft {
    let mut restored = restored(&[1, 2, 3], 2, &[1, 2]);
    restored.snapshot.config.learners.insert(4);
    let mut cfg = config(id);
    cfg.lease_reads = lease_reads;
    Raft::new(cfg, restored).expect("valid config")
}

/// A learner deposes a settled leader with one response at term + 1.
#[test]
fn s57_learner_deposes_leader_with_a_higher_term_response() {
    let bodies = [
        Body::HeartbeatResponse { round: 0 },
        Body::AppendEntriesResponse {
            index: 0,
            success: false,
            hint: None,
        },
        Body::RequestVoteResponse {
            granted: false,
            pre_vote: false,
        },
        Body::Heartbeat {
            commit: 0,
            round: 0,
        },
    ];
    let mut deposed = Vec::new();
    for body in bodies {
        let mut l = with_learner(1, false);
        make_settled_leader(&mut l);
        let term = l.term();
        let got = l.step_checked(msg(4, 1, term + 1, body.clone()));
        if (l.role(), l.term()) != (Role::Leader, term) {
            deposed.push(format!(
                "{} -> {:?} term {} ({got:?}) leader {:?}",
                body.kind(),
                l.role(),
                l.term(),
                l.leader()
            ));
        }
    }
    assert!(
        deposed.is_empty(),
        "a learner deposed the leader: {deposed:#?}"
    );
}

/// Learner 4 makes voter 2 forget its leader (a response at term + 1),
/// then sends it a TimeoutNow at that term: 2 runs a transfer campaign,
/// voter 3 grants it inside leader 1's lease, and leader 1 still serves
/// lease reads while 2 leads a newer term.
#[test]
fn s57_learner_orders_a_transfer_campaign_through_timeout_now() {
    let mut l = with_learner(1, true);
    make_settled_leader(&mut l);
    let t = l.term();
    // A heartbeat round acknowledged by 2: the lease holds.
    let mut round = None;
    for _ in 0..2 {
        l.tick();
        let out = flush(&mut l);
        round = round.or(heartbeat_round(&out));
    }
    let round = round.expect("a heartbeat round");
    step(&mut l, msg(2, 1, t, Body::HeartbeatResponse { round }));
    let read = l.lease_read();
    assert!(read.is_some(), "leader 1 has a lease");

    let mut f = with_learner(2, true);
    let mut g = with_learner(3, true);
    for _ in 0..T {
        f.tick();
        g.tick();
    } // past the startup lease
    step(&mut f, heartbeat(1, 2, t, 0));
    step(&mut g, heartbeat(1, 3, t, 0));
    assert_eq!((f.leader(), g.leader()), (Some(1), Some(1)));

    // The learner's two messages.
    let a = f.step_checked(msg(4, 2, t + 1, Body::HeartbeatResponse { round: 0 }));
    let b = f.step_checked(msg(4, 2, t + 1, Body::TimeoutNow));
    let out = flush(&mut f);
    eprintln!("f: {:?} term {} ({a:?}, {b:?})", f.role(), f.term());
    let votes: Vec<_> = out.all().into_iter().filter(|m| m.to == 3).collect();
    let mut granted = false;
    for v in votes {
        let out = step(&mut g, v);
        for m in out.all() {
            if let Body::RequestVoteResponse { granted: true, .. } = m.body {
                granted = true;
                step(&mut f, m);
            }
        }
    }
    eprintln!(
        "f: {:?} term {}, g term {} vote {}",
        f.role(),
        f.term(),
        g.term(),
        g.hard_state().vote
    );
    assert!(
        !(f.role() == Role::Leader && l.lease_read().is_some()),
        "node 2 leads term {} (granted: {granted}) while leader 1 of term {t} still serves lease reads at {:?}",
        f.term(),
        l.lease_read()
    );
}

/// A follower inside its leader's lease follows learner 4 claiming
/// leadership of term + 1, and commits (hands out to apply) an entry the
/// learner made up.
#[test]
fn s57_learner_is_followed_as_leader_inside_a_lease() {
    let mut f = with_learner(2, false);
    step(&mut f, heartbeat(1, 2, 2, 0));
    assert_eq!(f.leader(), Some(1));
    let got = f.step_checked(append(4, 2, 3, (2, 2), vec![command(3, 3, b"made up")], 3));
    let out = flush(&mut f);
    let applied: Vec<_> = out.committed.iter().map(|e| (e.index, e.term)).collect();
    assert!(
        f.leader() != Some(4),
        "in its lease, node 2 follows learner 4 ({got:?}), committed {} and applied {applied:?}",
        f.log().committed()
    );
}

/// Thesis §4.1: a server grants its vote to a candidate that is not in its
/// latest configuration (that vote may be needed for availability). Node 3
/// lags at configuration {1,2,3}; voter 4 was added by configurations 3 has
/// not received; 4's up-to-date RequestVote is dropped, outside any lease.
#[test]
fn s57_a_lagging_voter_drops_the_vote_of_a_candidate_it_does_not_know() {
    let mut r = node(3, &[1, 2, 3], 2, &[1, 2]);
    let got = r.step_checked(vote_req(4, 3, 3, (9, 3)));
    let out = flush(&mut r);
    assert!(
        !out.of_kind("RequestVoteResponse").is_empty(),
        "dropped ({got:?}): a cluster {{1,2,3,4}} with 1 down and 2 behind 4 elects nobody"
    );
}

/// The same at cluster level: voters {1,2,3,4} (4 added by configurations
/// node 3 never received: it was down), node 1 (the old leader) is gone
/// for good, node 4 holds one uncommitted entry more than node 2. Three of
/// four voters are up and connected, yet nobody is ever elected: 2 is
/// behind 4 (4 refuses it), and 3 drops 4's (pre-)votes as a stranger's.
#[test]
fn s57_three_of_four_voters_elect_nobody() {
    use crate::core::{Configuration, HardState, Restored, SnapshotMeta};
    let snap = |voters: &[u64]| SnapshotMeta {
        index: 5,
        term: 2,
        config: Configuration::new(voters.iter().copied()),
    };
    let new = |extra: &[u64]| Restored {
        hard_state: HardState {
            term: 2,
            vote: 0,
            commit: 5,
        },
        snapshot: snap(&[1, 2, 3, 4]),
        snapshot_data: Some(vec![1]),
        entries: extra.iter().map(|&t| entry(6, t)).collect(),
    };
    let lagging = Restored {
        hard_state: HardState {
            term: 1,
            vote: 0,
            commit: 2,
        },
        snapshot: SnapshotMeta {
            index: 0,
            term: 0,
            config: Configuration::new([1, 2, 3]),
        },
        snapshot_data: None,
        entries: ents(&[1, 1]),
    };
    let mut c = Cluster::from_nodes([
        (config(2), new(&[])),
        (config(3), lagging),
        (config(4), new(&[2])),
    ]);
    c.tick_all(20 * T);
    assert!(
        !c.leaders().is_empty(),
        "no leader after 20 election timeouts; 3 dropped {} vote requests from non-members",
        c.node(3)
            .dropped()
            .get(crate::core::DropReason::VoteFromNonMember)
    );
}

/// Raft §5.1: a request with a stale term is rejected with the current
/// term, so the stale leader learns it. An honest stale leader's
/// AppendEntries carrying its (never committed) entry at an index this
/// follower knows committed in a later term is instead dropped unanswered
/// and counted as `CommittedRewrite` ("a correct leader never sends one").
#[test]
fn s57_a_stale_leaders_append_is_answered_not_counted_as_a_rewrite() {
    // Follower 2 at term 3, committed index 2 of term 3.
    let mut f = node(2, &[1, 2, 3], 3, &[1]);
    step(&mut f, append(3, 2, 3, (1, 1), vec![entry(2, 3)], 2));
    assert_eq!(f.log().committed(), 2);
    // Old leader 1 of term 2 replicates its entry 2 of term 2.
    let got = f.step_checked(append(1, 2, 2, (1, 1), vec![entry(2, 2)], 1));
    let out = flush(&mut f);
    let answered = out.all().iter().any(|m| m.to == 1 && m.term == 3);
    assert!(
        answered && got.is_ok(),
        "stale append: {got:?}, answered with term 3: {answered}, committed_rewrite = {}",
        f.dropped().get(crate::core::DropReason::CommittedRewrite)
    );
}

/// Stop 57, the other side of the lease rule for learners: a learner
/// promoted to voter by a configuration entry this node has not received
/// yet is a possible leader once the lease is over (thesis §4.1: RPCs are
/// processed without consulting the configuration). Inside the lease of
/// leader 1 its AppendEntries (carrying the promotion) is dropped; after the
/// longest election timeout without leader 1 it is followed and the
/// promotion taken.
#[test]
fn s57_a_promoted_learner_is_followed_once_the_lease_is_over() {
    use crate::core::{Configuration, DropReason, Entry, Payload};
    let promotion = Entry {
        index: 3,
        term: 3,
        payload: Payload::Config(Configuration::new([1, 2, 3, 4])),
    };
    let mut f = with_learner(3, false);
    step(&mut f, heartbeat(1, 3, 2, 0));
    assert_eq!(f.leader(), Some(1));
    let m = append(4, 3, 3, (2, 2), vec![promotion], 2);
    assert_eq!(f.step_checked(m.clone()), Err(DropReason::NonMemberInLease));
    assert_eq!((f.term(), f.leader()), (2, Some(1)));
    // Stop 58: the window is the longest election timeout (2T), so that a
    // pre-candidate is covered too.
    for _ in 0..2 * T {
        f.tick();
    }
    flush(&mut f);
    assert_eq!(f.step_checked(m), Ok(()));
    assert_eq!((f.term(), f.leader()), (3, Some(4)));
    assert!(f.config().is_voter(4), "the promotion was not taken");
    assert_eq!(f.log().committed(), 2);
}

/// Stop 57: a freshly promoted voter wins an election with the vote of a
/// node that still knows it only as a learner (that node missed the
/// promotion, and was in leader 1's lease when 1 died), and that node
/// then follows it and commits its entries.
#[test]
fn s57_a_freshly_promoted_voter_wins_an_election() {
    use crate::core::{Configuration, HardState, Restored, SnapshotMeta};
    let promoted = |extra: &[u64]| Restored {
        hard_state: HardState {
            term: 2,
            vote: 0,
            commit: 5,
        },
        snapshot: SnapshotMeta {
            index: 5,
            term: 2,
            config: Configuration::new([1, 2, 3, 4]),
        },
        snapshot_data: Some(vec![1]),
        entries: extra.iter().map(|&t| entry(6, t)).collect(),
    };
    let mut learner_conf = Configuration::new([1, 2, 3]);
    learner_conf.learners.insert(4);
    let lagging = Restored {
        hard_state: HardState {
            term: 2,
            vote: 0,
            commit: 2,
        },
        snapshot: SnapshotMeta {
            index: 0,
            term: 0,
            config: learner_conf,
        },
        snapshot_data: None,
        entries: ents(&[1, 2]),
    };
    let mut c = Cluster::from_nodes([
        (config(2), promoted(&[])),
        (config(3), lagging),
        (config(4), promoted(&[2])),
    ]);
    // Node 3 has just heard from leader 1, which then dies.
    c.node_mut(3).step(heartbeat(1, 3, 2, 0));
    assert_eq!(c.node(3).leader(), Some(1));
    c.deliver();
    c.tick_all(20 * T);
    assert_eq!(c.leaders(), [4], "only node 4 can win (2 is behind it)");
    let (index, term) = c.propose(4, b"after the promotion");
    c.tick_all(2 * T);
    for id in [2, 3] {
        let r = c.node(id);
        assert!(
            r.log().committed() >= index && r.log().term(index) == Some(term),
            "node {id} did not commit the new leader's entry: {:?}",
            r.status()
        );
    }
    assert!(c.node(3).config().is_voter(4));
}

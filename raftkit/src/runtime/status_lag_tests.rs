//! The status watch with a long `status_interval` (a multi-group node's
//! replicas rebuild the status's members only once a tick): a new
//! configuration is still published at once. `Peer::add_learner` and
//! `add_server` build the next configuration from the status's members,
//! so a stale member list would make the second change drop what the
//! first one added.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::core::Role;
use crate::prelude::*;
use crate::transport::memory::MemoryNetwork;

#[derive(StateMachine, Default, Serialize, Deserialize)]
struct Counter {
    n: u64,
}

#[crate::state_machine]
impl Counter {
    #[write]
    fn add(&mut self, by: u64) -> u64 {
        self.n += by;
        self.n
    }
}

/// A single peer whose status's members are rebuilt once an hour, once
/// it leads (its first rebuild after leading happened; the next would be
/// due in an hour).
async fn a_leader_with_an_hour_long_status_interval() -> Peer<Counter> {
    let net = MemoryNetwork::new(3);
    let peer = Counter::peer()
        .in_memory()
        .listen("lag-a:1")
        .bootstrap_members(["lag-a:1"])
        .tick(Duration::from_millis(10))
        .status_interval(Duration::from_secs(3600))
        .transport({
            let net = net.clone();
            move |id, inbox| Arc::new(net.endpoint(id, inbox))
        })
        .start()
        .await
        .expect("peer starts");
    let deadline = Instant::now() + Duration::from_secs(20);
    while peer.status().role != Role::Leader {
        assert!(Instant::now() < deadline, "no leader");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    peer
}

#[tokio::test(flavor = "current_thread")]
async fn a_new_configuration_shows_in_the_status_at_once_whatever_the_status_interval() {
    let peer = a_leader_with_an_hour_long_status_interval().await;
    peer.write(CounterWrite::Add { by: 1 })
        .await
        .expect("write");

    peer.add_learner("lag-b:1").await.expect("first learner");
    let members = |p: &Peer<Counter>| {
        let mut m: Vec<Option<String>> = p.status().members.into_iter().map(|m| m.addr).collect();
        m.sort();
        m
    };
    assert_eq!(
        members(&peer),
        [Some("lag-a:1".to_string()), Some("lag-b:1".to_string())]
    );
    // Built from the status's members: keeps the first learner.
    peer.add_learner("lag-c:1").await.expect("second learner");
    assert_eq!(
        members(&peer),
        [
            Some("lag-a:1".to_string()),
            Some("lag-b:1".to_string()),
            Some("lag-c:1".to_string())
        ]
    );
    let _ = peer.shutdown().await;
}

/// The applied index is among the scalars refreshed after every batch of
/// inputs (module docs of `node`): a watcher of `applied` sees a write
/// applied without waiting for the next rebuild, an hour away (teeth round
/// 6, mutant 611: `applied` was left to the rebuild).
#[tokio::test(flavor = "current_thread")]
async fn the_applied_index_shows_in_the_status_without_waiting_for_the_status_interval() {
    let peer = a_leader_with_an_hour_long_status_interval().await;
    for by in 1..=3 {
        peer.write(CounterWrite::Add { by }).await.expect("write");
        let written = peer.status().last_index;
        let deadline = Instant::now() + Duration::from_secs(20);
        while peer.status().applied < written {
            assert!(
                Instant::now() < deadline,
                "the status never showed entry {written} applied"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let _ = peer.shutdown().await;
}

/// The status's commit index is the log's, never its last index: a
/// configuration change that cannot commit (its new voter does not exist)
/// shows as appended and not committed. The replica-move and removal
/// fences of `multi` read `commit` from the status (teeth round 11: the
/// scalars' refresh reporting the last index as committed survived).
#[tokio::test(flavor = "current_thread")]
async fn an_entry_that_cannot_commit_shows_as_not_committed() {
    let peer = a_leader_with_an_hour_long_status_interval().await;
    peer.write(CounterWrite::Add { by: 1 })
        .await
        .expect("write");
    let committed = peer.status().commit;
    let ghost = Peer::<Counter>::member_id("lag-ghost:1");
    let mut target = crate::core::Configuration::new([peer.id(), ghost]);
    target.addrs.insert(peer.id(), "lag-a:1".to_string());
    target.addrs.insert(ghost, "lag-ghost:1".to_string());
    let index = peer.change_config(target).await.expect("proposed");
    let deadline = Instant::now() + Duration::from_secs(20);
    while peer.status().last_index < index {
        assert!(
            Instant::now() < deadline,
            "the status never showed entry {index} appended"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Half a second (50 ticks, each refreshing the scalars): the status
    // never says the entry committed.
    let mut w = peer.watch();
    let seen = tokio::time::timeout(
        Duration::from_millis(500),
        w.wait_for(|s| s.commit >= index),
    )
    .await;
    assert!(seen.is_err(), "the status showed entry {index} committed");
    let st = peer.status();
    assert_eq!(st.commit, committed, "{st:?}");
    assert!(st.applied < index, "{st:?}");
    let _ = peer.shutdown().await;
}

/// The status's members, updated in place (`update_members`), are what a
/// status built afresh from the core's says (every member once, in order,
/// with address, vote and progress), through a joint configuration with
/// learners, leadership (progress appears) and a smaller configuration;
/// an update that changes nothing says so.
#[test]
fn members_updated_in_place_are_the_ones_built_afresh() {
    use super::update_members;
    use crate::core::{Config, Raft, Restored};

    let mut joint = crate::core::Configuration::joint([1, 3, 5], [2, 3, 9]);
    joint.learners.extend([4, 11]);
    joint
        .addrs
        .extend([(1, "a:1".to_string()), (9, "i:1".to_string())]);
    let mut members = Vec::new();
    let raft = Raft::new(Config::new(1), Restored::bootstrap(joint)).expect("config");
    assert!(update_members(&mut members, &raft));
    assert_eq!(members, fresh_members(&raft));
    assert_eq!(
        members.iter().map(|m| m.id).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5, 9, 11]
    );
    assert!(!update_members(&mut members, &raft), "nothing changed");

    // A single voter elects itself: progress appears, the set shrinks.
    let mut solo = crate::core::Configuration::new([1]);
    solo.addrs.insert(1, "a:2".to_string());
    let mut raft = Raft::new(Config::new(1), Restored::bootstrap(solo)).expect("config");
    for _ in 0..1_000 {
        if raft.role() == Role::Leader {
            break;
        }
        raft.tick();
        let _ = raft.ready();
    }
    assert_eq!(raft.role(), Role::Leader);
    assert!(update_members(&mut members, &raft));
    assert_eq!(members, fresh_members(&raft));
    assert!(members[0].matched.is_some(), "{members:?}");
    assert!(!update_members(&mut members, &raft));
}

/// The status's members updated in place follow every change that keeps
/// their number (teeth round 8: mutants 816-818 kept a member's old
/// address, its old vote, or the old ids of a set of the same size).
#[test]
fn members_updated_in_place_follow_changes_that_keep_their_number() {
    use super::update_members;
    use crate::core::{Config, Configuration, Raft, Restored};

    let conf = |voters: &[u64], learners: &[u64], addrs: &[(u64, &str)]| {
        let mut c = Configuration::new(voters.iter().copied());
        c.learners.extend(learners.iter().copied());
        c.addrs
            .extend(addrs.iter().map(|(id, a)| (*id, (*a).to_string())));
        c
    };
    let addrs = [(1, "a:1"), (2, "b:1"), (3, "c:1"), (4, "d:1"), (5, "e:1")];
    let steps = [
        // Four members.
        conf(&[1, 2, 3], &[4], &addrs),
        // Still four, but 5 instead of 4.
        conf(&[1, 2, 3], &[5], &addrs),
        // The same four: learner 5 becomes a voter.
        conf(&[1, 2, 3, 5], &[], &addrs),
        // The same four: 2 moves to another address, 3 loses its own.
        conf(
            &[1, 2, 3, 5],
            &[],
            &[(1, "a:1"), (2, "b:2"), (4, "d:1"), (5, "e:1")],
        ),
    ];
    let mut members = Vec::new();
    for (i, c) in steps.into_iter().enumerate() {
        let raft = Raft::new(Config::new(1), Restored::bootstrap(c)).expect("config");
        assert!(update_members(&mut members, &raft), "step {i}: a change");
        assert_eq!(members, fresh_members(&raft), "step {i}");
        assert!(!update_members(&mut members, &raft), "step {i}: no change");
    }
}

/// The status shows the term its node is in: a single peer that elected
/// itself reports the term it leads in (teeth round 8: mutant 820 left
/// the status's term at the one it started with).
#[tokio::test(flavor = "current_thread")]
async fn the_status_shows_the_term_a_leader_leads_in() {
    let peer = a_leader_with_an_hour_long_status_interval().await;
    let status = peer.status();
    assert_eq!(status.role, Role::Leader);
    assert!(status.term >= 1, "a leader in term {}", status.term);
    assert_eq!(status.leader, Some(status.id), "{status:?}");
    let _ = peer.shutdown().await;
}

/// Peers at `addrs` in memory on `net`, one cluster, a 10 ms tick.
async fn start_peers(net: &MemoryNetwork, addrs: &[&str]) -> Vec<Peer<Counter>> {
    let mut peers = Vec::new();
    for addr in addrs {
        let net = net.clone();
        let peer = Counter::peer()
            .in_memory()
            .listen(*addr)
            .bootstrap_members(addrs.iter().copied())
            .tick(Duration::from_millis(10))
            .transport(move |id, inbox| Arc::new(net.endpoint(id, inbox)))
            .start()
            .await
            .expect("peer starts");
        peers.push(peer);
    }
    peers
}

/// The position of a leader every peer's status names.
async fn leader_known_to_all(peers: &[Peer<Counter>], deadline: Instant) -> usize {
    loop {
        let statuses: Vec<_> = peers.iter().map(|p| p.status()).collect();
        if let Some(l) = statuses.iter().position(|s| s.role == Role::Leader)
            && statuses.iter().all(|s| s.leader == Some(statuses[l].id))
        {
            return l;
        }
        assert!(Instant::now() < deadline, "no leader known to all");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A follower whose leader is gone, with no successor, shows no leader:
/// once it campaigns (pre-vote, thesis §9.6, or a real one) its status
/// says `leader: None` (teeth round 8: mutant 819 kept the old leader in
/// the status after the core forgot it).
#[tokio::test(flavor = "current_thread")]
async fn a_follower_whose_leader_is_gone_shows_no_leader() {
    let net = MemoryNetwork::new(3);
    let mut peers = start_peers(&net, &["gone-a:1", "gone-b:1"]).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let at = leader_known_to_all(&peers, deadline).await;
    let gone = peers.swap_remove(at);
    let _ = gone.shutdown().await;
    let follower = peers.pop().expect("the other peer");
    // With one of two voters left nobody can win: the follower campaigns.
    let status = loop {
        let s = follower.status();
        if matches!(s.role, Role::PreCandidate | Role::Candidate) {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the follower never campaigned: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert_eq!(status.leader, None, "{status:?}");
    assert_eq!(status.leader_addr, None, "{status:?}");
    let _ = follower.shutdown().await;
}

/// Whoever hears from a new leader sees it leading in its status: every
/// AppendEntries and heartbeat of the new term leaves the leader only once
/// its status shows it leading in that term (the node task publishes a
/// new role before the messages that follow it). Before, the first
/// messages left first: a transfer's old leader, which publishes the new
/// leader as soon as it hears from it, could return from
/// `transfer_leader` while no peer's status showed a leader (a clean-clone
/// CI run of `quic_membership` saw that).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_shows_in_its_status_before_its_first_message_leaves() {
    let net = MemoryNetwork::new(4);
    let peers = start_peers(&net, &["order-a:1", "order-b:1", "order-c:1"]).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let l = leader_known_to_all(&peers, deadline).await;
    peers[l]
        .write(CounterWrite::Add { by: 1 })
        .await
        .expect("a write");
    let t = (l + 1) % peers.len();
    let (target, id, term) = (peers[t].clone(), peers[t].id(), peers[l].status().term);
    // (message term, the sender's role and term in its status as it sent)
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    net.observe(Arc::new(move |from, m: &crate::core::Message, deliver| {
        if from == id
            && m.term > term
            && matches!(
                m.body,
                crate::core::Body::AppendEntries { .. } | crate::core::Body::Heartbeat { .. }
            )
        {
            let s = target.status();
            if let Ok(mut seen) = seen2.lock() {
                seen.push((m.term, s.role, s.term));
            }
        }
        deliver
    }));
    peers[l]
        .transfer_leadership(id)
        .await
        .expect("transfer starts");
    loop {
        if seen.lock().map(|s| s.len() >= 4).unwrap_or(false) {
            break;
        }
        assert!(Instant::now() < deadline, "the new leader sent nothing");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let seen = seen.lock().map(|s| s.clone()).unwrap_or_default();
    for (msg_term, role, status_term) in &seen {
        assert!(
            *role == Role::Leader && status_term == msg_term,
            "a message of term {msg_term} left the new leader while its status said {role:?} in term {status_term}: {seen:?}"
        );
    }
    net.observe(Arc::new(|_, _, deliver| deliver));
    for p in &peers {
        let _ = p.shutdown().await;
    }
}

fn fresh_members(raft: &crate::core::Raft) -> Vec<super::MemberStatus> {
    let status = raft.status();
    let conf = &status.config;
    conf.members()
        .into_iter()
        .map(|id| super::MemberStatus {
            id,
            addr: conf.addrs.get(&id).cloned(),
            voter: conf.is_voter(id),
            matched: status.progress.get(&id).map(|p| p.0),
            next: status.progress.get(&id).map(|p| p.1),
        })
        .collect()
}

//! Membership changes asked by two admins at once (found by review, stop
//! 41): a change whose caller read the configuration before another
//! change committed, and whose request reached the node task after it,
//! must not undo that other change. The interleaving is forced with the
//! test-only pause of `membership` (the change is held just before it
//! reaches the node task), not with timing.

use std::sync::Arc;
use std::time::Duration;

use super::membership::pause;
use super::test_gate::until;
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

/// A single voter at `addr`, leading. Learners added to it are addresses
/// nobody listens at: a learner does not count for commitment, so every
/// change commits on this voter alone.
async fn a_leader(addr: &str) -> Peer<Counter> {
    a_leader_on(&MemoryNetwork::new(3), addr).await
}

/// [`a_leader`] on `net`.
async fn a_leader_on(net: &MemoryNetwork, addr: &str) -> Peer<Counter> {
    let peer = Counter::peer()
        .in_memory()
        .listen(addr)
        .bootstrap_members([addr])
        .tick(Duration::from_millis(10))
        .transport({
            let net = net.clone();
            move |id, inbox| Arc::new(net.endpoint(id, inbox))
        })
        .start()
        .await
        .expect("peer starts");
    until("the peer leads", || {
        (peer.status().role == Role::Leader).then_some(())
    })
    .await;
    peer
}

/// The addresses of the members of `peer`'s configuration once it is
/// committed and not joint, sorted.
async fn committed_members(peer: &Peer<Counter>) -> Vec<String> {
    until("a committed, simple configuration", || {
        let st = peer.status();
        (!st.joint && st.config_index <= st.commit).then(|| {
            let mut m: Vec<String> = st
                .members
                .into_iter()
                .map(|m| m.addr.unwrap_or_else(|| format!("#{}", m.id)))
                .collect();
            m.sort();
            m
        })
    })
    .await
}

/// Runs `first` (another admin's change, to completion) while `second`
/// (a change started before it, as an admin who read the configuration
/// first) is held just before it reaches the node task; then lets
/// `second` go and returns its outcome.
async fn interleave<F, G>(
    peer: &Peer<Counter>,
    second: impl FnOnce(Peer<Counter>) -> G,
    first: F,
) -> Result<(), Error>
where
    F: std::future::Future<Output = Result<(), Error>>,
    G: std::future::Future<Output = Result<(), Error>> + Send + 'static,
{
    let (reached, go) = pause::arm(peer.id());
    let second = tokio::spawn(second(peer.clone()));
    let deadline = Duration::from_secs(20);
    tokio::time::timeout(deadline, reached)
        .await
        .expect("the second change reaches the pause")
        .expect("the pause is held");
    first.await.expect("the first change");
    let _ = go.send(());
    tokio::time::timeout(deadline, second)
        .await
        .expect("the second change ends")
        .expect("the second change's task")
}

/// Two learners added at once: the one added second keeps the first.
#[tokio::test(flavor = "current_thread")]
async fn interleaved_additions_keep_both_members() {
    let peer = a_leader("members-a:1").await;
    let second = interleave(
        &peer,
        |p| async move { p.add_learner("members-c:1").await },
        peer.add_learner("members-b:1"),
    )
    .await;
    assert!(second.is_ok(), "the second addition: {second:?}");
    let members = committed_members(&peer).await;
    assert_eq!(
        members,
        ["members-a:1", "members-b:1", "members-c:1"],
        "an addition made while another was under way lost the other's member"
    );
    let _ = peer.shutdown().await;
}

/// An addition under way while another admin removes a member does not
/// add the removed member back.
#[tokio::test(flavor = "current_thread")]
async fn an_addition_interleaved_with_a_removal_does_not_add_the_removed_member_back() {
    let peer = a_leader("members-r:1").await;
    peer.add_learner("members-gone:1")
        .await
        .expect("the learner to remove");
    let second = interleave(
        &peer,
        |p| async move { p.add_learner("members-new:1").await },
        peer.remove_server("members-gone:1"),
    )
    .await;
    assert!(second.is_ok(), "the addition: {second:?}");
    let members = committed_members(&peer).await;
    assert_eq!(
        members,
        ["members-new:1", "members-r:1"],
        "an addition made while a removal was under way added the removed member back"
    );
    let _ = peer.shutdown().await;
}

/// A removal under way while another admin adds a member keeps the added
/// member.
#[tokio::test(flavor = "current_thread")]
async fn a_removal_interleaved_with_an_addition_keeps_the_added_member() {
    let peer = a_leader("members-s:1").await;
    peer.add_learner("members-old:1")
        .await
        .expect("the learner to remove");
    let second = interleave(
        &peer,
        |p| async move { p.remove_server("members-old:1").await },
        peer.add_learner("members-added:1"),
    )
    .await;
    assert!(second.is_ok(), "the removal: {second:?}");
    let members = committed_members(&peer).await;
    assert_eq!(
        members,
        ["members-added:1", "members-s:1"],
        "a removal made while an addition was under way dropped the added member"
    );
    let _ = peer.shutdown().await;
}

/// A promotion under way (the learner caught up) while another admin
/// removes the learner does not add it back, as a voter: `add_server`
/// fails with `Rejected` and the learner stays out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promotion_interleaved_with_the_learners_removal_does_not_add_it_back() {
    let net = MemoryNetwork::new(3);
    let peer = a_leader_on(&net, "members-p:1").await;
    peer.write(CounterWrite::Add { by: 1 })
        .await
        .expect("a write");
    // A new, empty node: it waits to be added.
    let learner = Counter::peer()
        .in_memory()
        .listen("members-x:1")
        .tick(Duration::from_millis(10))
        .transport({
            let net = net.clone();
            move |id, inbox| Arc::new(net.endpoint(id, inbox))
        })
        .start()
        .await
        .expect("the new node starts");
    peer.add_learner("members-x:1").await.expect("the learner");
    let promotion = interleave(
        &peer,
        |p| async move { p.add_server("members-x:1", |_| {}).await },
        peer.remove_server("members-x:1"),
    )
    .await;
    let members = committed_members(&peer).await;
    assert_eq!(
        members,
        ["members-p:1"],
        "a promotion made while the learner's removal was under way added it back (add_server: {promotion:?})"
    );
    assert!(
        matches!(promotion, Err(Error::Rejected(_))),
        "the promotion of a removed learner: {promotion:?}"
    );
    let _ = learner.shutdown().await;
    let _ = peer.shutdown().await;
}

/// An edit that arrives while another change is in flight is refused with
/// the core's "already in flight" (`Rejected`, nothing proposed), not
/// queued (Raft's one change at a time, thesis §4.1): the admin asks
/// again once the change in flight committed.
#[tokio::test(flavor = "current_thread")]
async fn an_edit_while_a_change_is_in_flight_is_refused() {
    let peer = a_leader("members-f:1").await;
    peer.write(CounterWrite::Add { by: 1 })
        .await
        .expect("a write");
    // A voter nobody runs: the change can never commit.
    let ghost = Peer::<Counter>::member_id("members-ghost:1");
    let mut target = crate::core::Configuration::new([peer.id(), ghost]);
    target.addrs.insert(peer.id(), "members-f:1".to_string());
    target.addrs.insert(ghost, "members-ghost:1".to_string());
    let index = peer.change_config(target).await.expect("proposed");
    let refused = peer.add_learner("members-late:1").await;
    match &refused {
        Err(e @ Error::Rejected(why)) if why.contains("already in flight") => {
            assert_eq!(e.applied(), crate::error::Applied::No);
        }
        other => panic!("an edit while change {index} is in flight: {other:?}"),
    }
    let st = peer.status();
    assert!(
        !st.members
            .iter()
            .any(|m| m.addr.as_deref() == Some("members-late:1")),
        "{st:?}"
    );
    let _ = peer.shutdown().await;
}

/// Three voters at `addrs` on `net`, ticking every `tick`; returns them
/// and the position of the one that leads.
async fn three_voters(
    net: &MemoryNetwork,
    addrs: [&str; 3],
    tick: Duration,
) -> (Vec<Peer<Counter>>, usize) {
    let mut peers = Vec::new();
    for addr in addrs {
        let net = net.clone();
        peers.push(
            Counter::peer()
                .in_memory()
                .listen(addr)
                .bootstrap_members(addrs)
                .tick(tick)
                .transport(move |id, inbox| Arc::new(net.endpoint(id, inbox)))
                .start()
                .await
                .expect("peer starts"),
        );
    }
    let l = until("a leader", || {
        peers.iter().position(|p| p.status().role == Role::Leader)
    })
    .await;
    (peers, l)
}

/// A membership change its leader proposed and then lost its leadership
/// before it committed may still commit under a later leader (it is in
/// that leader's log if a quorum holds it): the caller is answered
/// `Ambiguous`, never the `NotLeader` the leader's status reads as, which
/// says nothing was proposed (mutation testing, stop 49: with the mapping
/// of `membership::proposed` removed, nothing failed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_whose_leader_stepped_down_before_it_committed_is_ambiguous() {
    const ADDRS: [&str; 3] = ["members-s1:1", "members-s2:1", "members-s3:1"];
    let net = MemoryNetwork::new(7);
    // An election timeout of 1-2 s: the isolated leader steps down under
    // CheckQuorum only after one, so it still leads when the change
    // reaches it (as in `shutdown_tests`).
    let (peers, l) = three_voters(&net, ADDRS, Duration::from_millis(100)).await;
    peers[l]
        .write(CounterWrite::Add { by: 1 })
        .await
        .expect("a write");
    // Cut off, the leader logs the change and cannot commit it.
    net.isolate(peers[l].id());
    let added = tokio::time::timeout(
        Duration::from_secs(30),
        peers[l].add_learner("members-s4:1"),
    )
    .await
    .expect("the change is answered");
    assert!(
        peers[l].status().role != Role::Leader,
        "the isolated leader still leads"
    );
    match &added {
        Err(e @ Error::Ambiguous(_)) => {
            assert_eq!(e.applied(), crate::error::Applied::Maybe);
        }
        other => {
            panic!("a change proposed by a leader that stepped down before it committed: {other:?}")
        }
    }
    net.heal();
    for p in &peers {
        let _ = p.shutdown().await;
    }
}

/// A leader that removes itself is answered only once the configuration
/// without it commits (thesis §4.2.2), not when the joint configuration
/// commits and the final one is only in its log (the final one does not
/// include the leader, so the status shows it gone at once). The
/// followers never receive the final configuration here, so the call
/// cannot succeed (mutation testing, stop 49: with the commit check of
/// `wait_removed_self` removed, nothing failed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_removing_itself_is_not_answered_before_the_configuration_without_it_commits() {
    use crate::core::{Body, Payload};
    const ADDRS: [&str; 3] = ["members-r1:1", "members-r2:1", "members-r3:1"];
    let net = MemoryNetwork::new(8);
    let (peers, l) = three_voters(&net, ADDRS, Duration::from_millis(10)).await;
    peers[l]
        .write(CounterWrite::Add { by: 1 })
        .await
        .expect("a write");
    let committed = peers[l].status().commit;
    until("every voter holds the write", || {
        peers
            .iter()
            .all(|p| p.status().commit >= committed)
            .then_some(())
    })
    .await;
    // From now on the final (not joint) configuration never reaches a
    // follower: the joint one commits, the final one cannot.
    net.observe(Arc::new(|_, m, _| {
        !matches!(&m.body, Body::AppendEntries { entries, .. }
            if entries.iter().any(|e| matches!(&e.payload, Payload::Config(c) if !c.is_joint())))
    }));
    let removed = tokio::time::timeout(Duration::from_secs(30), peers[l].remove_server(ADDRS[l]))
        .await
        .expect("the removal is answered");
    let st = peers[l].status();
    assert!(
        !st.joint && st.config_index > st.commit,
        "the test did not reach the final configuration uncommitted: commit {}, configuration index {}, joint {}",
        st.commit,
        st.config_index,
        st.joint
    );
    match &removed {
        Err(e) => assert_ne!(e.applied(), crate::error::Applied::No, "{e:?}"),
        Ok(()) => panic!(
            "the leader's removal of itself was answered Ok with the configuration without it uncommitted (commit {}, configuration index {}, joint {})",
            st.commit, st.config_index, st.joint
        ),
    }
    for p in &peers {
        let _ = p.shutdown().await;
    }
}

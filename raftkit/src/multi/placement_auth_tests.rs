//! Tests of [`super`] on running nodes (the rule's pure decisions are
//! tested beside it): where the check reads, and what a restart of group
//! 0's leader keeps of rule 4.

use std::time::Duration;

use super::super::moves::moves_tests::{MOVED, MovedOff, moved_off, node, until};
use super::super::placement::{PLACEMENT_GROUP, Placement, PlacementClient};
use super::super::placement_sync::hooks;
use super::*;
use crate::client::{Client, ClientOptions};
use crate::state_machine::StateMachine;
use crate::test_ports::free_addr;
use crate::tls::ClusterCa;

const DEADLINE: Duration = Duration::from_secs(30);

/// A node certificate's principal for the node at `addr`.
fn node_principal(addr: &str) -> Principal {
    Principal {
        role: CertRole::Node,
        name: default_name(Placement::NAME, addr),
        cert_fingerprint: [0; 32],
    }
}

/// Review s59 (task placement 1): a follower of group 0 made a
/// linearizable read of the placement (a ReadIndex round through the
/// leader, Raft thesis §6.4) before it looked at its own role and answered
/// `NotLeader`. It must answer at once, without a read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_of_group_0_answers_not_leader_without_a_read() {
    let ca = ClusterCa::generate("auth-role-first-test").expect("a CA");
    let addrs: Vec<String> = (0..3).map(|_| free_addr()).collect();
    let dirs: Vec<_> = (0..3)
        .map(|_| tempfile::tempdir().expect("a temporary directory"))
        .collect();
    let mut nodes = Vec::new();
    for (addr, dir) in addrs.iter().zip(&dirs) {
        nodes.push(node(&ca, addr, dir.path()).await);
    }
    for n in &nodes {
        n.form_shards(2, &addrs)
            .await
            .expect("the placement formed");
    }
    // A follower of group 0 that knows its leader (so that a read there
    // would go through it).
    let follower = until("a follower of group 0 that knows its leader", || {
        nodes.iter().find_map(|n| {
            let st = n.placement()?.status();
            (st.role == Role::Follower && st.leader_addr.is_some() && st.leader.is_some())
                .then(|| n.clone())
        })
    })
    .await;
    let placement = follower.placement().expect("group 0 hosted");
    let reads = read_hook::count(follower.id());
    let writer = node_principal(&addrs[0]);
    let answer = check(&follower, &placement, &writer, &ClientRequest::OpenSession).await;
    assert!(
        matches!(answer, Err(Error::NotLeader { .. })),
        "a follower answered {answer:?}"
    );
    assert_eq!(
        read_hook::count(follower.id()),
        reads,
        "a follower read the placement before answering NotLeader"
    );
    // The hook counts: group 0's leader reads, then admits a member.
    let leader = until("group 0's leader", || {
        nodes
            .iter()
            .find(|n| {
                n.placement()
                    .is_some_and(|p| p.status().role == Role::Leader)
            })
            .cloned()
    })
    .await;
    let before = read_hook::count(leader.id());
    let placement = leader.placement().expect("group 0 hosted");
    let answer = check(&leader, &placement, &writer, &ClientRequest::OpenSession).await;
    let after = read_hook::count(leader.id());
    match answer {
        Ok(()) => assert_eq!(after, before + 1, "the leader admitted without a read"),
        // Leadership moved meanwhile: before the role check (no read) or
        // after the read (review s60 placement #5).
        Err(Error::NotLeader { .. }) => assert!(
            after == before || after == before + 1,
            "a node that lost leadership read {} times",
            after - before
        ),
        other => panic!("the leader answered {other:?}"),
    }
    for n in &nodes {
        let _ = n.shutdown().await;
    }
}

/// Review s58, finding 2 (task placement 3): rule 4's successors lived in
/// memory only, so group 0's leader, restarted after a move off it whose
/// record was lost, refused the new node's repair of that record until
/// one of rules 1-3 held (never, here: B is listed nowhere, and A no
/// longer hosts the group). A hosts group 0 alone and group 1; group 1
/// moves to B with A's record failing and B's check silenced; A restarts;
/// B's repair (its node certificate writing B's replicas) must pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_leader_admits_the_new_nodes_lost_record_repair() {
    let MovedOff {
        dirs: (a_dir, _b_dir),
        ca,
        a,
        a_addr,
        b,
        b_addr,
    } = moved_off("auth-successors-restart-test").await;
    hooks::silence_check(b.id());
    hooks::fail_records(a.id());
    a.move_replica(MOVED, a.id(), &b_addr)
        .await
        .expect("the move");
    until("A's replica of group 1 retired", || {
        a.group(MOVED).is_none().then_some(())
    })
    .await;
    a.shutdown().await.expect("A stops");
    drop(a);
    let a = node(&ca, &a_addr, a_dir.path()).await;

    let cert = ca
        .issue_node(&default_name(Placement::NAME, &b_addr), &[])
        .expect("B's certificate");
    let client = Client::connect_with_for::<Placement, _, _>(
        std::slice::from_ref(&a_addr),
        cert,
        ClientOptions::default()
            .with_group(PLACEMENT_GROUP)
            .with_timeout(Duration::from_secs(5)),
    )
    .await
    .expect("a client of group 0");
    let as_b = PlacementClient::new(client);
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let written = loop {
        match as_b.set_replicas(MOVED, vec![b_addr.clone()]).await {
            // Group 0's replica on A elects itself after the restart.
            Err(Error::NotLeader { .. } | Error::Unavailable(_) | Error::Timeout)
                if tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            other => break other,
        }
    };
    assert!(
        matches!(written, Ok(true)),
        "group 0's leader, restarted after a move off it whose record was lost, answered the \
         new node's repair with {written:?}"
    );
    let _ = b.shutdown().await;
    let _ = a.shutdown().await;
}

//! A node that joined its cluster on a fresh data directory, mid-upgrade
//! (`raftkit::schema`, `SchemaBook`): its directory's oldest schema is its
//! own binary's, which proves nothing of the voters it has not heard from.
//! Should it lead, it must not enable a write that a voter it never heard
//! may lack (that voter would halt, or fail, applying it).
//!
//! The scenario: a 3-node cluster on v1; nodes 0 and 1 are upgraded to v2
//! (restarts on their directories); node 2, still v1, is down; a v2 node
//! joins on a new directory and is made leader. v2's `delete` (write
//! tag 1) must stay refused (`Unsupported`, nothing applied): node 2 has
//! never linked to the joiner and runs v1.

mod support;
use std::time::Duration;
use support::{DevCluster, free_addrs, member_builder};

use raftkit::client::ClientOptions;
use raftkit::core::Role;
use raftkit::prelude::*;
use tokio::time::Instant;

#[path = "support/kv_versions.rs"]
mod kv_versions;
pub use kv_versions::{v1, v2};

const TICK: Duration = Duration::from_millis(20);

async fn wait_for<T>(what: &str, secs: u64, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joined_fresh_leader_does_not_enable_a_write_an_unheard_voter_lacks() {
    let DevCluster {
        addrs,
        ca,
        ids,
        client: client_identity,
        dir,
    } = DevCluster::new(3);
    let mut v1_nodes = Vec::new();
    for (addr, id) in addrs.iter().zip(ids) {
        let peer = member_builder::<v1::Kv>(dir.path(), &addrs, addr, id, TICK)
            .start()
            .await
            .expect("v1 peer starts");
        v1_nodes.push(peer);
    }
    wait_for("a v1 leader", 20, || {
        v1_nodes
            .iter()
            .any(|p| p.status().role == Role::Leader)
            .then_some(())
    })
    .await;
    let opts = ClientOptions::default().with_timeout(Duration::from_secs(10));
    let v1_client = v1::KvClient::connect_with(&addrs, client_identity.clone(), opts.clone())
        .await
        .expect("v1 client connects");
    v1_client.put("a".into(), "1".into()).await.unwrap();
    v1_client.put("b".into(), "2".into()).await.unwrap();
    drop(v1_client);

    // Node 2 stops for good, on v1; nodes 0 and 1 restart on v2.
    let node2 = v1_nodes.pop().expect("node 2");
    node2.shutdown().await.expect("node 2 stops");
    let mut v2_nodes = Vec::new();
    for (i, peer) in v1_nodes.into_iter().enumerate() {
        peer.shutdown().await.expect("v1 node stops");
        let peer = v2::Kv::peer()
            .data_dir(dir.path().join(&addrs[i]))
            .tick(TICK)
            .start()
            .await
            .expect("v2 accepts the v1 data directory");
        v2_nodes.push(peer);
    }

    // A v2 node joins on a new directory (a machine replaced mid-upgrade).
    let addr = free_addrs(1).remove(0);
    let identity = ca.issue_node(&format!("kv@{addr}"), &[]).unwrap();
    let joiner = v2::Kv::peer()
        .listen(addr.clone())
        .data_dir(dir.path().join(&addr))
        .identity(identity)
        .tick(TICK)
        .join(addrs[..2].to_vec())
        .start()
        .await
        .expect("the v2 joiner starts");
    wait_for("the v2 joiner to become a voter", 30, || {
        let s = joiner.status();
        s.members
            .iter()
            .any(|m| m.id == s.id && m.voter)
            .then_some(())
    })
    .await;

    // The joiner leads.
    let target = joiner.id();
    let deadline = Instant::now() + Duration::from_secs(30);
    while joiner.status().role != Role::Leader {
        if let Some(leader) = v2_nodes.iter().find(|p| p.status().role == Role::Leader) {
            drop(leader.transfer_leadership(target).await);
        }
        assert!(Instant::now() < deadline, "the joiner never led");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Node 2 (v1, never heard by the joiner) lacks `delete`.
    let node2_id = Peer::<v2::Kv>::member_id(&addrs[2]);
    let client =
        v2::KvClient::connect_with(std::slice::from_ref(&addr), client_identity.clone(), opts)
            .await
            .expect("v2 client connects");
    match client.delete("a".into()).await {
        Err(Error::Unsupported(why)) => {
            assert!(why.contains("tag 1"), "{why}");
            assert!(
                why.contains(&format!("voter {node2_id}")),
                "the refusal does not name voter 2, the one unheard: {why}"
            );
        }
        other => panic!(
            "a leader that joined on a fresh directory enabled `delete` (write tag 1) for voter {node2_id}, never heard and still on v1: {other:?}"
        ),
    }
    assert_eq!(
        client.get("a".into()).await.unwrap().as_deref(),
        Some("1"),
        "nothing was applied"
    );

    joiner.shutdown().await.ok();
    for p in v2_nodes {
        p.shutdown().await.ok();
    }
}

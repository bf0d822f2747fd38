//! Who may write the placement (group 0) of a sharded deployment over real
//! QUIC: a client certificate reads it (every sharded client does) but may
//! not write it; an admin certificate may (operators' tools).

mod support;
use std::time::Duration;

use raftkit::Error;
use raftkit::client::{Client, ClientOptions, ShardedClient};
use raftkit::error::Applied;
use raftkit::multi::placement::{PLACEMENT_GROUP, PlacementClient, Shard};
use raftkit::multi::{GroupId, MultiNode};
use raftkit::prelude::*;
use raftkit::tls::{ClusterCa, Identity};
use support::free_addrs;

#[derive(StateMachine, Default, Serialize, Deserialize)]
#[raftkit(name = "pkv")]
pub struct Kv {
    map: std::collections::BTreeMap<String, String>,
}

#[raftkit::state_machine]
impl Kv {
    #[write(shard = key)]
    fn put(&mut self, key: String, value: String) -> Option<String> {
        self.map.insert(key, value)
    }
}

const SHARDS: GroupId = 2;

async fn start_node(addr: &str, ca: &ClusterCa) -> (MultiNode<Kv>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let node = MultiNode::<Kv>::builder()
        .listen(addr)
        .data_dir(dir.path())
        .tick(Duration::from_millis(20))
        .identity(ca.issue_node(&format!("pkv@{addr}"), &[]).unwrap())
        .start()
        .await
        .unwrap();
    (node, dir)
}

fn opts() -> ClientOptions {
    ClientOptions::default().with_timeout(Duration::from_secs(10))
}

async fn placement(members: &[String], identity: Identity) -> PlacementClient {
    PlacementClient::new(
        Client::connect_with_for::<Kv, _, _>(members, identity, opts().with_group(PLACEMENT_GROUP))
            .await
            .unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_reads_the_placement_but_may_not_write_it() {
    let members = free_addrs(3);
    let ca = ClusterCa::generate("placement-auth-test").unwrap();
    let mut nodes = Vec::new();
    let mut dirs = Vec::new();
    for addr in &members {
        let (node, dir) = start_node(addr, &ca).await;
        nodes.push(node);
        dirs.push(dir);
    }
    for node in &nodes {
        node.form_shards(SHARDS, &members).await.unwrap();
    }
    let app = ca.issue_client("app").unwrap();

    // A sharded client with a client certificate connects (it reads the
    // placement) and writes data.
    let sharded = ShardedClient::<Kv>::connect_with(&members, app.clone(), opts())
        .await
        .unwrap();
    let kv = KvClient::new(sharded.clone());
    assert_eq!(kv.put("a".into(), "1".into()).await.unwrap(), None);

    // The same certificate may read the placement, not write it.
    let as_app = placement(&members, app.clone()).await;
    let before: Vec<Shard> = as_app.shards().await.unwrap();
    assert_eq!(before.len() as u64, SHARDS);
    let err = as_app
        .set_replicas(1, vec!["nowhere:1".into()])
        .await
        .expect_err("a client certificate may not write the placement");
    assert!(matches!(err, Error::Unauthorized(_)), "{err:?}");
    assert_eq!(err.applied(), Applied::No);
    let skewed = vec![Shard {
        group: 1,
        start: 0,
        end: u64::MAX,
        replicas: vec!["nowhere:1".into()],
    }];
    let err = as_app
        .form(skewed)
        .await
        .expect_err("a client certificate may not form the placement");
    assert!(matches!(err, Error::Unauthorized(_)), "{err:?}");
    assert_eq!(err.applied(), Applied::No);
    let after = as_app.shards().await.unwrap();
    assert!(
        after
            .iter()
            .all(|s| !s.replicas.contains(&"nowhere:1".to_string())),
        "{after:?}"
    );
    assert_eq!(
        after
            .iter()
            .map(|s| (s.group, s.start, s.end))
            .collect::<Vec<_>>(),
        before
            .iter()
            .map(|s| (s.group, s.start, s.end))
            .collect::<Vec<_>>()
    );
    // A sharded client still refreshes its routes from group 0.
    sharded.refresh().await.unwrap();
    assert_eq!(sharded.routes().shards().len() as u64, SHARDS);

    // An admin certificate may write it (kv's operator commands do).
    let as_admin = placement(&members, ca.issue_admin("ops").unwrap()).await;
    let replicas = before[0].replicas.clone();
    assert!(
        as_admin
            .set_replicas(before[0].group, replicas)
            .await
            .unwrap()
    );

    for node in &nodes {
        node.shutdown().await.unwrap();
    }
}

/// Found by review (stop 57, transport #3): any node certificate of the
/// cluster's CA, also one of a node that is a member of nothing (a spare's,
/// a retired node's not revoked), could write the placement and route every
/// sharded client of a group to an address of its choosing; a member's
/// must still write it (the placement sync and moves do). Before the check
/// (`multi::placement_auth`) it failed with "a non-member's node
/// certificate may not write the placement: true".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_member_node_certificate_may_not_write_the_placement() {
    let members = free_addrs(3);
    let ca = ClusterCa::generate("placement-auth-node-test").unwrap();
    let mut nodes = Vec::new();
    let mut dirs = Vec::new();
    for addr in &members {
        let (node, dir) = start_node(addr, &ca).await;
        nodes.push(node);
        dirs.push(dir);
    }
    for node in &nodes {
        node.form_shards(SHARDS, &members).await.unwrap();
    }
    let outsider_addr = free_addrs(1).pop().unwrap();
    let outsider = ca.issue_node(&format!("pkv@{outsider_addr}"), &[]).unwrap();
    let as_outsider = placement(&members, outsider).await;
    let before: Vec<Shard> = as_outsider.shards().await.unwrap();
    assert_eq!(before.len() as u64, SHARDS);
    let err = as_outsider
        .set_replicas(1, vec![outsider_addr.clone()])
        .await
        .expect_err("a non-member's node certificate may not write the placement");
    assert!(matches!(err, Error::Unauthorized(_)), "{err:?}");
    assert_eq!(err.applied(), Applied::No);
    let after = as_outsider.shards().await.unwrap();
    assert!(
        after.iter().all(|s| !s.replicas.contains(&outsider_addr)),
        "{after:?}"
    );

    // A member's node certificate still writes it.
    let member = ca.issue_node(&format!("pkv@{}", members[0]), &[]).unwrap();
    let as_member = placement(&members, member).await;
    let replicas = before[0].replicas.clone();
    assert!(
        as_member
            .set_replicas(before[0].group, replicas)
            .await
            .unwrap(),
        "a member's node certificate writes the placement"
    );

    for node in &nodes {
        node.shutdown().await.unwrap();
    }
}

/// Found by review (stop 58): a node certificate of no member, running stock
/// raftkit, makes itself "known" to every member by founding a group of
/// its own and adding them as learners (hosting on demand starts their
/// replicas, whose configuration lists the outsider); `knows_member` then
/// lets it write the placement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outsider_known_through_its_own_group_may_not_write_the_placement() {
    let members = free_addrs(3);
    let ca = ClusterCa::generate("placement-auth-rogue-test").unwrap();
    let mut nodes = Vec::new();
    let mut dirs = Vec::new();
    for addr in &members {
        let (node, dir) = start_node(addr, &ca).await;
        nodes.push(node);
        dirs.push(dir);
    }
    for node in &nodes {
        node.form_shards(SHARDS, &members).await.unwrap();
    }
    let outsider_addr = free_addrs(1).pop().unwrap();
    let (outsider, _outsider_dir) = start_node(&outsider_addr, &ca).await;
    const ROGUE: GroupId = 777;
    let rogue = outsider
        .create_group(ROGUE, std::slice::from_ref(&outsider_addr))
        .await
        .unwrap();
    for m in &members {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            match tokio::time::timeout(Duration::from_secs(10), rogue.add_learner(m)).await {
                Ok(Ok(())) => break,
                other => assert!(
                    tokio::time::Instant::now() < deadline,
                    "add_learner({m}): {other:?}"
                ),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !nodes.iter().all(|n| {
        n.group(ROGUE)
            .is_some_and(|p| p.status().members.iter().any(|m| m.id == outsider.id()))
    }) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "members host the rogue group"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let cert = ca.issue_node(&format!("pkv@{outsider_addr}"), &[]).unwrap();
    let as_outsider = placement(&members, cert).await;
    let written = as_outsider
        .set_replicas(1, vec![outsider_addr.clone()])
        .await;
    let after = as_outsider.shards().await.unwrap();
    assert!(
        written.is_err(),
        "an outsider that founded its own group and added the members as learners wrote the \
         placement: {written:?}; now {after:?}"
    );
    outsider.shutdown().await.unwrap();
    for node in &nodes {
        node.shutdown().await.unwrap();
    }
}

//! A sharded deployment over real QUIC: three multi-group nodes form a
//! placement (group 0) and four data groups; the generated typed client,
//! over a `ShardedClient`, routes each call by its shard key to the group
//! that owns it, follows leaders across a leadership transfer, and
//! re-reads the placement when a node says it does not host a group.

mod support;
use std::collections::BTreeMap;
use std::time::Duration;

use raftkit::Error;
use raftkit::client::{Client, ClientOptions, ShardedClient};
use raftkit::multi::placement::{PLACEMENT_GROUP, PlacementClient};
use raftkit::multi::{GroupId, MultiNode};
use raftkit::prelude::*;
use raftkit::tls::{ClusterCa, Identity};
use support::free_addrs;

#[derive(StateMachine, Default, Serialize, Deserialize)]
#[raftkit(name = "skv")]
pub struct Kv {
    map: BTreeMap<String, String>,
}

#[raftkit::state_machine]
impl Kv {
    #[write(shard = key)]
    fn put(&mut self, key: String, value: String) -> Option<String> {
        self.map.insert(key, value)
    }

    #[read(shard = key)]
    fn get(&self, key: String) -> Option<String> {
        self.map.get(&key).cloned()
    }

    /// How many keys this group holds (no shard key: per group only).
    #[read]
    fn len(&self) -> usize {
        self.map.len()
    }
}

const SHARDS: GroupId = 4;
const DEADLINE: Duration = Duration::from_secs(30);

async fn start_node(addr: &str, ca: &ClusterCa) -> (MultiNode<Kv>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let node = MultiNode::<Kv>::builder()
        .listen(addr)
        .data_dir(dir.path())
        .tick(Duration::from_millis(20))
        .identity(ca.issue_node(&format!("skv@{addr}"), &[]).unwrap())
        .start()
        .await
        .unwrap();
    (node, dir)
}

fn opts() -> ClientOptions {
    ClientOptions::default().with_timeout(Duration::from_secs(10))
}

/// A sharded client with `opts`, connected to a live placement. A connect
/// lasts at most `opts.timeout` (handshake, hello and the placement's read),
/// so a client with a short call timeout can fail to connect on a loaded
/// machine although nothing is wrong; the tests that need one are not about
/// connecting, so it is tried again (a connect applies nothing) until
/// [`DEADLINE`].
async fn connect_patiently(
    seeds: &[String],
    identity: Identity,
    opts: ClientOptions,
) -> ShardedClient<Kv> {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        match ShardedClient::<Kv>::connect_with(seeds, identity.clone(), opts.clone()).await {
            Ok(client) => return client,
            Err(e) => assert!(
                tokio::time::Instant::now() < deadline,
                "no connect within {DEADLINE:?}: {e}"
            ),
        }
        // (A pause before the next try, not a synchronisation.)
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Moves `group`'s leadership to `to` and waits until it leads there. A
/// transfer waits two election timeouts (400 ms at these 20 ms ticks) for
/// the target to lead and then fails `Timeout`, which a loaded CI machine
/// can cause; a transfer changes nothing, so it is asked again until the
/// target leads (s62: it was one call, unwrapped).
async fn transfer_to(client: &ShardedClient<Kv>, addrs: &[String], group: GroupId, to: &str) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let asked = client.transfer_leader(group, to).await;
        if let Err(e) = &asked {
            // A refusal no retry can change (the transfer itself is
            // broken) fails at once, not after the deadline.
            assert!(
                e.is_retryable(),
                "group {group}: the transfer to {to} was refused: {e:?}"
            );
        }
        if leader_of(client, addrs, group).await == to {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "group {group}: the leadership never moved to {to} (last answer: {asked:?})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The address of the node that leads `group`, as the nodes report it.
async fn leader_of(client: &ShardedClient<Kv>, addrs: &[String], group: GroupId) -> String {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let mut leaders = Vec::new();
        for addr in addrs {
            if let Ok(groups) = client.node_groups(addr).await
                && groups
                    .iter()
                    .any(|(g, s)| *g == group && s.role == "Leader")
            {
                leaders.push(addr.clone());
            }
        }
        if leaders.len() == 1 {
            return leaders.remove(0);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "group {group}: no single leader"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_typed_client_routes_by_shard_key_and_follows_the_placement() {
    let addrs = free_addrs(4);
    let (members, spare) = (addrs[..3].to_vec(), addrs[3].clone());
    let ca = ClusterCa::generate("shard-test").unwrap();
    let mut nodes = Vec::new();
    let mut dirs = Vec::new();
    for addr in &members {
        let (node, dir) = start_node(addr, &ca).await;
        nodes.push(node);
        dirs.push(dir);
    }
    for node in &nodes {
        node.form_shards(SHARDS, &members).await.unwrap();
        let mut hosted = vec![PLACEMENT_GROUP];
        hosted.extend(node.groups());
        assert_eq!(hosted, (0..=SHARDS).collect::<Vec<_>>());
    }
    let admin = ca.issue_admin("ops").unwrap();
    // (Patiently: the placement's group may be between leaders on a loaded
    // machine, and the connect fails `NotLeader`; s62 saw it.)
    let sharded = connect_patiently(&members, admin.clone(), opts()).await;
    let routes = sharded.routes();
    assert_eq!(routes.shards().len() as u64, SHARDS);
    let kv = KvClient::new(sharded.clone());

    // Every key lands in the group the placement gives it, and only there.
    let keys: Vec<String> = (0..48).map(|i| format!("user:{i:04}")).collect();
    let mut expected: BTreeMap<GroupId, usize> = BTreeMap::new();
    for key in &keys {
        assert_eq!(kv.put(key.clone(), format!("v-{key}")).await.unwrap(), None);
        let group = routes.shard_of(key.as_bytes()).unwrap().group;
        *expected.entry(group).or_default() += 1;
    }
    assert_eq!(
        expected.len() as u64,
        SHARDS,
        "keys spread over every group"
    );
    for key in &keys {
        assert_eq!(kv.get(key.clone()).await.unwrap(), Some(format!("v-{key}")));
    }
    for g in 1..=SHARDS {
        let group = KvClient::new(sharded.group_client(g).await.unwrap());
        assert_eq!(group.len().await.unwrap(), expected[&g], "group {g}");
    }
    // A watch of one data group replays that group's writes, and only them.
    let first = routes.shard_of(keys[0].as_bytes()).unwrap().group;
    let mut watch = sharded
        .group_client(first)
        .await
        .unwrap()
        .watch::<Kv>(Some(1))
        .await
        .unwrap();
    let mut seen = 0;
    while seen < expected[&first] {
        let event = tokio::time::timeout(DEADLINE, watch.next())
            .await
            .expect("a watch event")
            .expect("the watch stays open")
            .expect("an event");
        let KvWrite::Put { key, .. } = &event.command;
        assert_eq!(routes.shard_of(key.as_bytes()).unwrap().group, first);
        seen += 1;
    }
    // Every node reports every group; a group's commit covers its writes.
    for addr in &members {
        let groups = sharded.node_groups(addr).await.unwrap();
        let ids: Vec<GroupId> = groups.iter().map(|(g, _)| *g).collect();
        assert_eq!(ids, (0..=SHARDS).collect::<Vec<_>>());
        for (g, status) in &groups {
            if *g != PLACEMENT_GROUP {
                assert!(
                    status.commit as usize >= expected[g],
                    "group {g}: {status:?}"
                );
            }
        }
    }
    // A command without a shard key cannot be routed: refused, not applied.
    let err = kv.len().await.expect_err("no shard key");
    assert!(matches!(err, Error::Rejected(_)), "{err:?}");
    assert!(err.to_string().contains("len"), "{err}");
    // A request that names no group is refused by a multi-group node.
    let plain = Client::connect_with(&members, admin.clone(), 0, opts())
        .await
        .unwrap();
    let err = plain.status().await.expect_err("no group");
    assert!(matches!(err, Error::Rejected(_)), "{err:?}");

    // After a leadership transfer, calls follow the group's new leader.
    let group = routes.shard_of(keys[0].as_bytes()).unwrap().group;
    let old = leader_of(&sharded, &members, group).await;
    let to = members.iter().find(|a| **a != old).unwrap().clone();
    transfer_to(&sharded, &members, group, &to).await;
    assert_eq!(
        kv.put(keys[0].clone(), "moved".into()).await.unwrap(),
        Some(format!("v-{}", keys[0]))
    );
    assert_eq!(kv.get(keys[0].clone()).await.unwrap(), Some("moved".into()));

    // A node that hosts no group says so; the client re-reads the
    // placement and re-routes.
    let (stranger, _stranger_dir) = start_node(&spare, &ca).await;
    let placement = PlacementClient::new(
        Client::connect_with_for::<Kv, _, _>(
            &members,
            admin.clone(),
            opts().with_group(PLACEMENT_GROUP),
        )
        .await
        .unwrap(),
    );
    let key = keys
        .iter()
        .find(|k| routes.shard_of(k.as_bytes()).unwrap().group != group)
        .unwrap()
        .clone();
    let moved = routes.shard_of(key.as_bytes()).unwrap().group;
    assert!(
        placement
            .set_replicas(moved, vec![spare.clone()])
            .await
            .unwrap()
    );
    // (The client re-reads the placement until it names other replicas, or
    // its timeout passes: `opts`' 10 s, which the group's leader putting the
    // placement right must fit in. It was 2 s, within reach of a loaded CI
    // machine; a client that does not re-read fails whatever its timeout.)
    let fresh = KvClient::new(
        ShardedClient::<Kv>::connect_with(&members, admin.clone(), opts())
            .await
            .unwrap(),
    );
    // The stranger says so: a client that knows only it ends there.
    let lost = KvClient::new(
        Client::connect_with_for::<Kv, _, _>(
            std::slice::from_ref(&spare),
            admin.clone(),
            opts().with_group(moved),
        )
        .await
        .unwrap(),
    );
    let err = lost.get(key.clone()).await.expect_err("not hosted");
    assert_eq!(err, Error::NotHosted { group: moved });
    assert_eq!(err.applied(), raftkit::error::Applied::No);
    // The sharded client is told so by the stranger and re-reads the
    // placement until the group's leader puts it right
    // (`multi::placement_sync`), then finds the group.
    assert_eq!(
        fresh.get(key.clone()).await.unwrap(),
        Some(format!("v-{key}"))
    );
    assert_eq!(
        fresh.put(key.clone(), "again".into()).await.unwrap(),
        Some(format!("v-{key}"))
    );

    stranger.shutdown().await.unwrap();
    for node in &nodes {
        node.shutdown().await.unwrap();
    }
}

/// The operator's move over the network: a group's replica moves from a
/// member to a fourth node through `ShardedClient::move_replica` (an admin
/// request to the group's leader), the placement records the new replicas,
/// every write survives, and the old node retires its replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_moves_a_replica_and_the_placement_follows() {
    let addrs = free_addrs(4);
    let (members, spare) = (addrs[..3].to_vec(), addrs[3].clone());
    let ca = ClusterCa::generate("shard-move-test").unwrap();
    let mut nodes = Vec::new();
    let mut dirs = Vec::new();
    for addr in &addrs {
        let (node, dir) = start_node(addr, &ca).await;
        nodes.push(node);
        dirs.push(dir);
    }
    for node in &nodes[..3] {
        node.form_shards(SHARDS, &members).await.unwrap();
    }
    let admin = ca.issue_admin("ops").unwrap();
    // (Patiently: the placement's group may be between leaders on a loaded
    // machine, and the connect fails `NotLeader`; s62 saw it.)
    let sharded = connect_patiently(&members, admin.clone(), opts()).await;
    let kv = KvClient::new(sharded.clone());
    let keys: Vec<String> = (0..32).map(|i| format!("m:{i:03}")).collect();
    for key in &keys {
        kv.put(key.clone(), format!("v-{key}")).await.unwrap();
    }
    let group = 1;
    let from = members[0].clone();
    // A client certificate may not move replicas.
    let client =
        ShardedClient::<Kv>::connect_with(&members, ca.issue_client("app").unwrap(), opts())
            .await
            .unwrap();
    let refused = client.move_replica(group, &from, &spare).await;
    assert!(
        matches!(refused, Err(Error::Unauthorized(_))),
        "{refused:?}"
    );
    assert!(nodes[3].group(group).is_none());

    // Led by the last replica the placement lists: the move is asked of a
    // node that does not lead first, and follows its NotLeader hint.
    transfer_to(&sharded, &members, group, &members[2]).await;
    // Asked right after the transfer: the new leader may not have
    // committed an entry of its term yet, which a configuration change
    // needs (Raft thesis §4.1); the move waits for it rather than failing.
    let summary = sharded.move_replica(group, &from, &spare).await.unwrap();
    assert!(summary.contains("moved"), "{summary}");
    let shard = sharded
        .routes()
        .shards()
        .iter()
        .find(|s| s.group == group)
        .cloned()
        .unwrap();
    assert!(shard.replicas.contains(&spare) && !shard.replicas.contains(&from));
    assert!(nodes[3].group(group).is_some(), "the spare hosts the group");
    // Every write is still there, through a fresh client that reads the
    // placement from group 0.
    let fresh = KvClient::new(
        ShardedClient::<Kv>::connect_with(&members, admin.clone(), opts())
            .await
            .unwrap(),
    );
    for key in &keys {
        assert_eq!(
            fresh.get(key.clone()).await.unwrap(),
            Some(format!("v-{key}"))
        );
    }
    // The old node retires its replica once the removal committed there.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while nodes[0].group(group).is_some() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "old replica not retired"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The node that left does not take the group back by an explicit
    // create nor by the idempotent formation a restart repeats (either
    // would bootstrap an empty voter)...
    assert!(matches!(
        nodes[0].create_group(group, &members).await,
        Err(Error::Rejected(_))
    ));
    nodes[0].form_shards(SHARDS, &members).await.unwrap();
    assert!(nodes[0].group(group).is_none());
    // ...but a move brings it back (maintenance over), and the placement
    // follows.
    let back = sharded.move_replica(group, &spare, &from).await.unwrap();
    assert!(back.contains("moved"), "{back}");
    let shard = sharded
        .routes()
        .shards()
        .iter()
        .find(|s| s.group == group)
        .cloned()
        .unwrap();
    assert!(shard.replicas.contains(&from) && !shard.replicas.contains(&spare));
    assert!(
        nodes[0].group(group).is_some(),
        "the node hosts the group again"
    );
    for key in &keys {
        assert_eq!(
            fresh.get(key.clone()).await.unwrap(),
            Some(format!("v-{key}"))
        );
    }
    for node in &nodes {
        node.shutdown().await.unwrap();
    }
}

/// `quiesced()` lists the placement group only while it sleeps: with one of
/// its three members never started, its leader never sees the log matched
/// by every member, so the group never sleeps (`multi::quiesce`), and no
/// node may report it quiesced.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_placement_group_that_cannot_sleep_is_never_reported_quiesced() {
    let members = free_addrs(3);
    let ca = ClusterCa::generate("shard-awake").unwrap();
    let mut nodes = Vec::new();
    let mut dirs = Vec::new();
    for addr in &members[..2] {
        let (node, dir) = start_node(addr, &ca).await;
        nodes.push(node);
        dirs.push(dir);
    }
    for node in &nodes {
        node.form_shards(1, &members).await.unwrap();
    }
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !nodes.iter().any(|n| {
        n.placement()
            .is_some_and(|p| p.status().role == raftkit::core::Role::Leader)
    }) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the placement group elected no leader"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Fifty heartbeat intervals: an idle group with every member up sleeps
    // within two.
    for _ in 0..50 {
        for node in &nodes {
            assert!(
                !node.quiesced().contains(&PLACEMENT_GROUP),
                "{} reports the placement group quiesced",
                node.name()
            );
        }
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    for node in &nodes {
        node.shutdown().await.unwrap();
    }
}

/// Group 0 (the placement) is idle almost always: it quiesces like the
/// data groups (`multi::quiesce`), on its leader's node and on the
/// followers', and a quiesced placement still serves the clients that
/// read it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_placement_group_quiesces_when_idle_and_still_serves() {
    let members = free_addrs(3);
    let ca = ClusterCa::generate("shard-quiesce").unwrap();
    let mut nodes = Vec::new();
    let mut dirs = Vec::new();
    for addr in &members {
        let (node, dir) = start_node(addr, &ca).await;
        nodes.push(node);
        dirs.push(dir);
    }
    for node in &nodes {
        node.form_shards(2, &members).await.unwrap();
    }
    // The formation is written (a client sees the shards), then nothing.
    let admin = ca.issue_admin("ops").unwrap();
    // (Patiently: the placement's group may be between leaders on a loaded
    // machine, and the connect fails `NotLeader`; s62 saw it.)
    let sharded = connect_patiently(&members, admin.clone(), opts()).await;
    assert_eq!(sharded.routes().shards().len(), 2);
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !nodes
        .iter()
        .all(|n| n.quiesced().contains(&PLACEMENT_GROUP))
    {
        let now: Vec<_> = nodes.iter().map(|n| n.quiesced()).collect();
        assert!(
            tokio::time::Instant::now() < deadline,
            "the placement group never quiesced everywhere: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Quiesced, it still answers a new client's placement read.
    let again = ShardedClient::<Kv>::connect_with(&members, admin, opts())
        .await
        .unwrap();
    assert_eq!(again.routes().shards().len(), 2);
    for node in &nodes {
        node.shutdown().await.unwrap();
    }
}

/// A group whose replicas never answer delays only its own calls: the
/// sharded client dialled a group's replicas while holding the lock every
/// call takes (for up to the 1 s connect timeout, a failed dial not
/// cached), so calls to a healthy group queued behind it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_group_does_not_hold_up_the_calls_to_the_others() {
    let addrs = free_addrs(1);
    let ca = ClusterCa::generate("shard-test").unwrap();
    let (node, _dir) = start_node(&addrs[0], &ca).await;
    node.form_shards(2, &addrs).await.unwrap();
    let admin = ca.issue_admin("ops").unwrap();
    let sharded = ShardedClient::<Kv>::connect_with(&addrs, admin.clone(), opts())
        .await
        .unwrap();
    let routes = sharded.routes();
    let key_in = |group: GroupId| {
        (0..)
            .map(|i| format!("key:{i}"))
            .find(|k| routes.shard_of(k.as_bytes()).unwrap().group == group)
            .unwrap()
    };
    let (dead_key, live_key) = (key_in(1), key_in(2));
    // Group 1's placement names an address that never answers (a bound
    // UDP socket: the QUIC handshake times out).
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let placement = PlacementClient::new(
        Client::connect_with_for::<Kv, _, _>(
            &addrs,
            admin.clone(),
            opts().with_group(PLACEMENT_GROUP),
        )
        .await
        .unwrap(),
    );
    assert!(
        placement
            .set_replicas(1, vec![silent.local_addr().unwrap().to_string()])
            .await
            .unwrap()
    );
    // (Read at once: the group's leader puts the placement right within a
    // few election timeouts, `multi::placement_sync`, and the calls below
    // take far less.)
    let sharded = ShardedClient::<Kv>::connect_with(&addrs, admin, opts())
        .await
        .unwrap();
    let kv = KvClient::new(sharded.clone());
    kv.put(live_key.clone(), "v".into()).await.unwrap();

    // Calls to group 1 in a loop: one of them is dialling at any time.
    let attempts = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let dialler = {
        let kv = KvClient::new(sharded.clone());
        let attempts = attempts.clone();
        tokio::spawn(async move {
            loop {
                attempts.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let _ = kv.get(dead_key.clone()).await;
            }
        })
    };
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while attempts.load(std::sync::atomic::Ordering::SeqCst) == 0 {
        assert!(tokio::time::Instant::now() < deadline, "the dialler runs");
        tokio::task::yield_now().await;
    }
    let mut took = Vec::new();
    for _ in 0..7 {
        let start = tokio::time::Instant::now();
        assert_eq!(kv.get(live_key.clone()).await.unwrap(), Some("v".into()));
        took.push(start.elapsed());
    }
    took.sort();
    dialler.abort();
    let median = took[took.len() / 2];
    assert!(
        median < Duration::from_millis(300),
        "calls to a healthy group waited for an unreachable group's dial: {took:?}"
    );
    node.shutdown().await.unwrap();
}

/// The voters of `group` as its leader's node reports them (addresses,
/// sorted), once its configuration is not joint.
async fn voters_of(client: &ShardedClient<Kv>, addrs: &[String], group: GroupId) -> Vec<String> {
    let leader = leader_of(client, addrs, group).await;
    let groups = client.node_groups(&leader).await.unwrap();
    let (_, status) = groups.iter().find(|(g, _)| *g == group).unwrap();
    let mut voters: Vec<String> = status
        .members
        .iter()
        .filter(|(_, voter, _)| *voter)
        .map(|(a, _, _)| a.clone())
        .collect();
    voters.sort();
    voters
}

/// The replicas the placement (re-read from group 0) lists for `group`,
/// sorted.
async fn listed(client: &ShardedClient<Kv>, group: GroupId) -> Vec<String> {
    let routes = client.refresh().await.unwrap();
    let mut replicas = routes.group(group).unwrap().replicas.clone();
    replicas.sort();
    replicas
}

/// A key of `group` under `client`'s placement.
fn key_in(client: &ShardedClient<Kv>, group: GroupId, prefix: &str) -> String {
    (0..)
        .map(|i| format!("{prefix}:{i}"))
        .find(|k| client.group_of(k.as_bytes()) == Some(group))
        .unwrap()
}

/// Found by review (stop 42): only `ShardedClient::move_replica` recorded a
/// move in the placement, so a replica moved by the node's own
/// `move_replica` or by the replica balancer left the placement naming a
/// node that no longer hosts the group, and every sharded client, new or
/// already routed, ended with `NotHosted` while the group was healthy
/// elsewhere. A one-node deployment with a spare: the balancer moves group
/// 1 to the spare, `MultiNode::move_replica` moves group 2; the placement
/// then names the spare for both, and clients reach both groups.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_moved_by_the_node_or_the_balancer_are_followed_by_the_placement() {
    let addrs = free_addrs(2);
    let (member, spare) = (addrs[0].clone(), addrs[1].clone());
    let ca = ClusterCa::generate("shard-node-move").unwrap();
    let (a, _a_dir) = start_node(&member, &ca).await;
    let (b, _b_dir) = start_node(&spare, &ca).await;
    a.form_shards(2, std::slice::from_ref(&member))
        .await
        .unwrap();
    let admin = ca.issue_admin("ops").unwrap();
    let seeds = vec![member.clone()];
    let routed = ShardedClient::<Kv>::connect_with(&seeds, admin.clone(), opts())
        .await
        .unwrap();
    let kv = KvClient::new(routed.clone());
    let (k1, k2) = (key_in(&routed, 1, "one"), key_in(&routed, 2, "two"));
    kv.put(k1.clone(), "1".into()).await.unwrap();
    kv.put(k2.clone(), "2".into()).await.unwrap();

    // The balancer: the member holds two replicas, the spare none; it moves
    // the first group it leads (group 1) to the spare.
    a.set_known_nodes(vec![spare.clone()]);
    let report = a.balance_replicas().await.unwrap().expect("a move");
    assert_eq!((report.group, report.to), (1, b.id()));
    // The node's own move of group 2.
    a.move_replica(2, a.id(), &spare).await.unwrap();
    for group in [1, 2] {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        while a.group(group).is_some() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "group {group}: the member never retired its replica"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // A client routed before the moves, and one made after them.
    let fresh = KvClient::new(
        ShardedClient::<Kv>::connect_with(&seeds, admin.clone(), opts())
            .await
            .unwrap(),
    );
    let mut values = [(k1.clone(), "1".to_string()), (k2.clone(), "2".to_string())];
    for (client, who) in [(&kv, "routed"), (&fresh, "fresh")] {
        for (key, value) in &mut values {
            let got = client.get(key.clone()).await;
            assert_eq!(got, Ok(Some(value.clone())), "{who} client, key {key}");
            *value = format!("{value}-{who}");
            let put = client.put(key.clone(), value.clone()).await;
            assert!(put.is_ok(), "{who} client, key {key}: {put:?}");
        }
    }
    for group in [1, 2] {
        assert_eq!(
            listed(&routed, group).await,
            vec![spare.clone()],
            "group {group}: the placement names the replica's new node"
        );
    }
    b.shutdown().await.unwrap();
    a.shutdown().await.unwrap();
}

/// Found by review (stop 42): a move that failed after its configuration
/// change committed (here: the joint change is not waited for, so the
/// step fails with a timeout while the core finishes the change by
/// itself) never reached the placement. The group's leader records the
/// committed configuration once it settles (Raft thesis §4.3: `C_new`,
/// not the intent), so the placement names the real members.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_that_fails_after_its_change_committed_leaves_the_real_members_in_the_placement() {
    let addrs = free_addrs(4);
    let (members, spare) = (addrs[..3].to_vec(), addrs[3].clone());
    let ca = ClusterCa::generate("shard-failed-move").unwrap();
    let mut nodes = Vec::new();
    let mut dirs = Vec::new();
    for addr in &addrs {
        let (node, dir) = start_node(addr, &ca).await;
        nodes.push(node);
        dirs.push(dir);
    }
    for node in &nodes[..3] {
        node.form_shards(2, &members).await.unwrap();
    }
    let admin = ca.issue_admin("ops").unwrap();
    // (Patiently: the placement's group may be between leaders on a loaded
    // machine, and the connect fails `NotLeader`; s62 saw it.)
    let sharded = connect_patiently(&members, admin.clone(), opts()).await;
    let group = 1;
    let leader_addr = leader_of(&sharded, &members, group).await;
    let leader = nodes
        .iter()
        .find(|n| n.name().ends_with(&leader_addr))
        .unwrap();
    let from_addr = members.iter().find(|a| **a != leader_addr).unwrap().clone();
    let from = nodes
        .iter()
        .find(|n| n.name().ends_with(&from_addr))
        .unwrap()
        .id();
    let opts = raftkit::multi::MoveOptions {
        step_timeout: Duration::ZERO,
        ..Default::default()
    };
    // The learner is added first, so that only the joint change's wait
    // has no time.
    let peer = leader.group(group).unwrap();
    peer.add_learner(&spare).await.unwrap();
    let err = leader
        .move_replica_with(group, from, &spare, &opts)
        .await
        .expect_err("no time to commit the joint change");
    // The learner was added above, not by the move: what the move itself
    // changed is the joint configuration it proposed. A zero step timeout
    // still looks once, so on a fast turn the joint change is found
    // committed and the move fails leaving it instead (CI, stop 54: "step
    // LeaveJoint failed: timed out ... left: Yes right: Maybe"). Each
    // outcome has its own truth (stop 53: `MoveError::Step::applied` says
    // what this move changed): failed at the joint change, it may be in
    // the log ("maybe"); failed leaving it, the joint change committed
    // ("yes").
    match &err {
        raftkit::multi::MoveError::Step {
            step: raftkit::multi::MoveStep::JointChange,
            ..
        } => assert_eq!(err.applied(), raftkit::error::Applied::Maybe, "{err}"),
        raftkit::multi::MoveError::Step {
            step: raftkit::multi::MoveStep::LeaveJoint,
            ..
        } => assert_eq!(err.applied(), raftkit::error::Applied::Yes, "{err}"),
        other => panic!("the move failed otherwise than at its joint change: {other}"),
    }
    let mut truth = members.clone();
    truth.retain(|a| *a != from_addr);
    truth.push(spare.clone());
    truth.sort();
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let (voters, placed) = (
            voters_of(&sharded, &members, group).await,
            listed(&sharded, group).await,
        );
        if voters == truth && placed == truth {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the placement lists {placed:?} while the group's voters are {voters:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let kv = KvClient::new(sharded.clone());
    let key = key_in(&sharded, group, "after");
    kv.put(key.clone(), "v".into()).await.unwrap();
    assert_eq!(kv.get(key).await.unwrap(), Some("v".into()));
    for node in &nodes {
        node.shutdown().await.unwrap();
    }
}

/// Found by review (stop 43): a placement record made from a view that a
/// newer membership change overtook (a move's last step racing the group
/// leader's periodic record) could land last, and the leader compared its
/// configuration only with what it had itself recorded, so it never wrote
/// again until the group's next change: every sharded client met
/// `NotHosted` until its timeout while the group was healthy. The group's
/// leader now checks what group 0 holds and puts it right within a bounded
/// time (`multi::placement_sync`). Group 1 moves to the spare (which holds
/// no replica of group 0), then the record of the view before the move
/// lands last; group 2 stays on the member (which does), and a record
/// naming the spare lands for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_placement_record_that_lands_last_is_put_right_by_the_groups_leader() {
    let addrs = free_addrs(2);
    let (member, spare) = (addrs[0].clone(), addrs[1].clone());
    let ca = ClusterCa::generate("shard-stale-record").unwrap();
    let (a, _a_dir) = start_node(&member, &ca).await;
    let (b, _b_dir) = start_node(&spare, &ca).await;
    a.form_shards(2, std::slice::from_ref(&member))
        .await
        .unwrap();
    let admin = ca.issue_admin("ops").unwrap();
    let seeds = vec![member.clone()];
    let routed = ShardedClient::<Kv>::connect_with(&seeds, admin.clone(), opts())
        .await
        .unwrap();
    let kv = KvClient::new(routed.clone());
    let (k1, k2) = (key_in(&routed, 1, "one"), key_in(&routed, 2, "two"));
    kv.put(k1.clone(), "1".into()).await.unwrap();
    kv.put(k2.clone(), "2".into()).await.unwrap();
    // The spare, alone in group 1 after the move, reaches group 0 through
    // the nodes it knows.
    b.set_known_nodes(vec![member.clone()]);
    a.move_replica(1, a.id(), &spare).await.unwrap();
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while a.group(1).is_some() || listed(&routed, 1).await != vec![spare.clone()] {
        assert!(
            tokio::time::Instant::now() < deadline,
            "group 1: the move did not settle"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The older records land last.
    let placement = PlacementClient::new(
        Client::connect_with_for::<Kv, _, _>(
            &seeds,
            admin.clone(),
            opts().with_group(PLACEMENT_GROUP),
        )
        .await
        .unwrap(),
    );
    assert!(
        placement
            .set_replicas(1, vec![member.clone()])
            .await
            .unwrap()
    );
    assert!(
        placement
            .set_replicas(2, vec![spare.clone()])
            .await
            .unwrap()
    );
    // A client routed by them reaches both groups within its timeout (it
    // re-reads the placement until it names other replicas).
    let stale = KvClient::new(
        ShardedClient::<Kv>::connect_with(
            &seeds,
            admin.clone(),
            opts().with_timeout(Duration::from_secs(5)),
        )
        .await
        .unwrap(),
    );
    for (key, value) in [(&k1, "1"), (&k2, "2")] {
        let got = stale.get(key.clone()).await;
        assert_eq!(
            got,
            Ok(Some(value.to_string())),
            "a client routed by an older record, key {key}"
        );
    }
    for (group, truth) in [(1, &spare), (2, &member)] {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let placed = listed(&routed, group).await;
            if placed == vec![truth.clone()] {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "group {group}: the placement lists {placed:?} while its only voter is {truth}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    b.shutdown().await.unwrap();
    a.shutdown().await.unwrap();
}

/// Found by review (stop 45): through a multi-group node's client service
/// a `node` certificate could add its own address to group 0, or to any
/// data group the node hosts: the single-group rule (a node may ask to add
/// itself, for `join`) was applied, though multi-group nodes never join
/// that way (a replica joins a group by a move, whose leader adds the
/// target in-process). A spare's or retired node's certificate of the same
/// CA could so make itself a member of any group. Now a multi-group node
/// refuses a node certificate's `AddLearner` and `AddServer` (`Unauthorized`,
/// nothing applied).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_certificate_cannot_add_itself_to_a_group_of_a_multi_group_node() {
    use raftkit::client::wire::ClientRequest;
    let addrs = free_addrs(2);
    let (member, outsider) = (addrs[0].clone(), addrs[1].clone());
    let ca = ClusterCa::generate("shard-self-add").unwrap();
    let (a, _a_dir) = start_node(&member, &ca).await;
    a.form_shards(2, std::slice::from_ref(&member))
        .await
        .unwrap();
    let data_group: GroupId = 1;
    // Formed: group 0 and the data group are hosted here and led by the
    // member (their only voter).
    let led = |status: raftkit::runtime::PeerStatus| status.leader == Some(status.id);
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !(a.placement().is_some_and(|p| led(p.status()))
        && a.group(data_group).is_some_and(|p| led(p.status())))
    {
        assert!(tokio::time::Instant::now() < deadline, "never formed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let members_of = |group: GroupId| {
        let status = if group == PLACEMENT_GROUP {
            a.placement().map(|p| p.status())
        } else {
            a.group(group).map(|p| p.status())
        };
        status
            .map(|s| {
                s.members
                    .iter()
                    .map(|m| (m.id, m.voter))
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default()
    };
    let before = [members_of(PLACEMENT_GROUP), members_of(data_group)];
    assert!(
        before.iter().all(|m| m.len() == 1),
        "one member each: {before:?}"
    );
    // A node certificate of the same CA for a node that is in no group
    // asks each group to add its own address.
    let cert = ca.issue_node(&format!("skv@{outsider}"), &[]).unwrap();
    for group in [PLACEMENT_GROUP, data_group] {
        let foreign = Client::connect_with_for::<Kv, _, _>(
            std::slice::from_ref(&member),
            cert.clone(),
            opts().with_group(group),
        )
        .await
        .unwrap();
        for request in [
            ClientRequest::AddLearner {
                addr: outsider.clone(),
            },
            ClientRequest::AddServer {
                addr: outsider.clone(),
            },
        ] {
            let added = foreign.admin(request.clone()).await;
            assert!(
                matches!(added, Err(Error::Unauthorized(_))),
                "a node certificate added itself to group {group} through the service \
                 ({request:?}): {added:?}"
            );
        }
    }
    let after = [members_of(PLACEMENT_GROUP), members_of(data_group)];
    assert_eq!(
        after, before,
        "the membership of group 0 and group 1 changed"
    );
    a.shutdown().await.unwrap();
}

/// Found by review, stop 48: a multi-group node had no way to set its
/// peer-connection caps or its per-certificate watch cap (both fixed at
/// the defaults); `MultiNodeBuilder::peer_connections` and
/// `MultiNodeBuilder::watches_per_certificate` now set them, as on a
/// single-group peer. With one place per node, a second connection of a
/// node certificate is closed at once (code 4); with one watch per
/// certificate, a second watch of a client certificate is refused
/// (`Overloaded`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_connection_and_watch_caps_are_tunable_on_a_multi_group_node() {
    use raftkit::tls::PEER_ALPN;
    use raftkit::transport::quic::quic_client_config;
    let addrs = free_addrs(2);
    let (member, other) = (addrs[0].clone(), addrs[1].clone());
    let ca = ClusterCa::generate("shard-caps").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let a = MultiNode::<Kv>::builder()
        .listen(member.as_str())
        .data_dir(dir.path())
        .tick(Duration::from_millis(20))
        .identity(ca.issue_node(&format!("skv@{member}"), &[]).unwrap())
        .peer_connections(1, 100)
        .watches_per_certificate(1)
        .start()
        .await
        .unwrap();

    // Peer connections: one place for the other node's certificate.
    let cert = ca.issue_node(&format!("skv@{other}"), &[]).unwrap();
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let to: std::net::SocketAddr = member.parse().unwrap();
    let mut conns = Vec::new();
    for _ in 0..2 {
        let cfg = quic_client_config(&cert, PEER_ALPN).unwrap();
        let conn =
            tokio::time::timeout(DEADLINE, endpoint.connect_with(cfg, to, "raftkit").unwrap())
                .await
                .expect("handshake in time")
                .expect("handshake");
        conns.push(conn);
    }
    // One of the two is refused as soon as its certificate is read, the
    // other served. Which one is the server's order, not the dial's: a
    // dialer's handshake ends before the server has read its last flight,
    // so the second connection's task can take the place first (stop 54:
    // 2 in 12 loaded runs waited for the second one to close; with a print
    // of which one was refused, the first was in 1 of 12). 8 s stays below the handshake timeout
    // (10 s) at which a served connection that opened no link is closed
    // with another code: a cap that served both still fails here.
    let first_closed = tokio::time::timeout(Duration::from_secs(8), async {
        tokio::select! {
            e = conns[0].closed() => (0, e),
            e = conns[1].closed() => (1, e),
        }
    })
    .await;
    let served = match first_closed {
        Ok((refused, quinn::ConnectionError::ApplicationClosed(close))) => {
            assert_eq!(close.error_code, quinn::VarInt::from_u32(4), "{close}");
            1 - refused
        }
        Ok((refused, other)) => panic!("connection {refused} closed with {other}"),
        Err(_) => panic!("two connections of one node were served with peer_connections(1, _)"),
    };
    // The other one stays served: a cap that refused both would close it
    // within milliseconds of the first (review, stop 54: an instant look
    // let such a cap pass); 1 s stays well under the handshake timeout.
    assert!(
        tokio::time::timeout(Duration::from_secs(1), conns[served].closed())
            .await
            .is_err(),
        "the other one is served: {:?}",
        conns[served].close_reason()
    );
    for conn in &conns {
        conn.close(quinn::VarInt::from_u32(0), b"done");
    }

    // Watches: one per client certificate on the data group's replica.
    a.form_shards(1, std::slice::from_ref(&member))
        .await
        .unwrap();
    let data_group: GroupId = 1;
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let led = |status: raftkit::runtime::PeerStatus| status.leader == Some(status.id);
    while !a.group(data_group).is_some_and(|p| led(p.status())) {
        assert!(tokio::time::Instant::now() < deadline, "never formed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let client = Client::connect_with_for::<Kv, _, _>(
        std::slice::from_ref(&member),
        ca.issue_client("watcher").unwrap(),
        // (10 s, the default: the connect and the first watch fit in it
        // however loaded the machine; it was 2 s.)
        ClientOptions::default().with_group(data_group),
    )
    .await
    .unwrap();
    let _first = client.watch::<Kv>(None).await.expect("the first watch");
    match client.watch::<Kv>(None).await {
        Err(Error::Overloaded) => {}
        Err(other) => panic!("the second watch failed otherwise: {other}"),
        Ok(_) => {
            panic!("a second watch of one certificate was served with watches_per_certificate(1)")
        }
    }
    a.shutdown().await.unwrap();
}

/// Found by review (stop 50): a call to a group whose replicas are all
/// down ended `Unavailable` at its timeout, which the sharded client took
/// for a stale placement: it re-read group 0 and, although the placement
/// still listed the same replicas, routed the call again and waited out
/// another timeout, so one call took about twice `with_timeout`. Group 1
/// is moved to a second node, which then stops; a silent UDP socket takes
/// its address (the QUIC handshake never completes). The call ends
/// `Unavailable`, not applied, within its timeout and a small slack.
///
/// The bound: the call ends when the dial of the silent spare is cut at
/// `TIMEOUT`, plus one read of the live group 0. The defects it guards took
/// at least a whole `CONNECT_TIMEOUT` (1 s, the dial not bounded by the
/// call's timeout) or two timeouts (the call routed again to the same
/// replicas): with `TIMEOUT` = 500 ms both are >= 1 s, so the bound is 1 s,
/// i.e. 500 ms of slack for a timer's wake-up and one round trip on a
/// loaded machine (it was 300 ms with 600 ms / 900 ms: a flake). It bounds
/// the quickest of three calls, not each one (s62): a defect slows each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_to_a_group_whose_replicas_are_all_down_takes_one_timeout() {
    const TIMEOUT: Duration = Duration::from_millis(500);
    const BOUND: Duration = Duration::from_millis(1000);
    let addrs = free_addrs(2);
    let (member, spare) = (addrs[0].clone(), addrs[1].clone());
    let ca = ClusterCa::generate("shard-down").unwrap();
    let (a, _a_dir) = start_node(&member, &ca).await;
    let (b, _b_dir) = start_node(&spare, &ca).await;
    a.form_shards(2, std::slice::from_ref(&member))
        .await
        .unwrap();
    let admin = ca.issue_admin("ops").unwrap();
    let seeds = vec![member.clone()];
    let sharded = ShardedClient::<Kv>::connect_with(&seeds, admin, opts())
        .await
        .unwrap();
    // (A write waits for group 1's leader, which the move needs.)
    let key = key_in(&sharded, 1, "down");
    KvClient::new(sharded.clone())
        .put(key.clone(), "v".into())
        .await
        .unwrap();
    a.move_replica(1, a.id(), &spare).await.unwrap();
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while listed(&sharded, 1).await != vec![spare.clone()] {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the placement never named the spare for group 1"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    b.shutdown().await.unwrap();
    drop(b);
    // The spare's port, once its endpoint let go of it.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let _silent = loop {
        match std::net::UdpSocket::bind(&spare) {
            Ok(socket) => break socket,
            Err(e) => assert!(
                tokio::time::Instant::now() < deadline,
                "the spare's port stays bound: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let kv = KvClient::new(
        ShardedClient::<Kv>::connect_with(&seeds, ca.issue_admin("ops2").unwrap(), opts())
            .await
            .unwrap(),
    );
    let quick = KvClient::new(
        connect_patiently(
            &seeds,
            ca.issue_admin("ops3").unwrap(),
            opts().with_timeout(TIMEOUT),
        )
        .await,
    );
    // Group 0 (on the member) answers at once: only group 1 is down.
    assert!(kv.get(key_in(&sharded, 2, "up")).await.is_ok());
    // The bound holds for the quickest of three calls: each defect slows
    // every call (by 500 ms or more), while a stall of a loaded CI machine
    // (500 ms of slack is within its reach) would have to strike all three.
    let mut took = Vec::new();
    for _ in 0..3 {
        let start = tokio::time::Instant::now();
        let got = quick.get(key.clone()).await;
        took.push(start.elapsed());
        eprintln!("a call to a group whose replicas are down took {took:?}");
        assert!(
            matches!(got, Err(Error::Unavailable(_))),
            "a group whose replicas are down: {got:?}"
        );
        assert_eq!(got.unwrap_err().applied(), raftkit::error::Applied::No);
    }
    let quickest = took.iter().min().copied().unwrap_or_default();
    assert!(
        quickest < BOUND,
        "the quickest of three calls took {quickest:?} ({took:?}), their timeout is {TIMEOUT:?}"
    );
    a.shutdown().await.unwrap();
}

/// Found by review (stop 51): after a group's call ended `Unavailable` at
/// its timeout, the sharded client re-read group 0 with a whole timeout of
/// its own, so when group 0 was down too one call took about twice
/// `with_timeout`. One node hosts group 0 and both data groups; a client
/// has read the placement; the node stops and a silent UDP socket takes its
/// address (no handshake completes). A call to group 1 ends `Unavailable`,
/// not applied, within its timeout and the re-read's slack (a quarter of
/// the timeout).
///
/// The bound: the call's own path is `TIMEOUT` (the dial cut) and the
/// re-read's quarter, measured from the failure, so 1.25 x plus two timer
/// wake-ups; the defect (a re-read with a whole timeout of its own) takes
/// at least 2 x. The bound is 2 x (the defect still fails it: "before" of
/// d861f14 was 2.0035 s with a 1 s timeout) with `TIMEOUT` = 2 s: 1.5 s of
/// slack over the nominal 2.5 s, where 1.5 x of 1 s left 250 ms (a flake).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_whose_group_and_group_0_are_down_takes_one_timeout() {
    const TIMEOUT: Duration = Duration::from_millis(2000);
    let addrs = free_addrs(1);
    let ca = ClusterCa::generate("shard-all-down").unwrap();
    let (a, _a_dir) = start_node(&addrs[0], &ca).await;
    a.form_shards(2, &addrs).await.unwrap();
    let admin = ca.issue_admin("ops").unwrap();
    let sharded = ShardedClient::<Kv>::connect_with(&addrs, admin, opts())
        .await
        .unwrap();
    let key = key_in(&sharded, 1, "down");
    // (A write waits for group 1's leader.)
    KvClient::new(sharded.clone())
        .put(key.clone(), "v".into())
        .await
        .unwrap();
    let quick = KvClient::new(
        connect_patiently(
            &addrs,
            ca.issue_admin("ops2").unwrap(),
            opts().with_timeout(TIMEOUT),
        )
        .await,
    );
    a.shutdown().await.unwrap();
    drop(a);
    // The node's port, once its endpoint let go of it.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let _silent = loop {
        match std::net::UdpSocket::bind(&addrs[0]) {
            Ok(socket) => break socket,
            Err(e) => assert!(
                tokio::time::Instant::now() < deadline,
                "the node's port stays bound: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let start = tokio::time::Instant::now();
    let got = quick.get(key.clone()).await;
    let took = start.elapsed();
    eprintln!("a call with its group and group 0 down took {took:?}");
    let err = got.expect_err("every node is down");
    assert_eq!(
        err.applied(),
        raftkit::error::Applied::No,
        "nothing reached a node: {err:?}"
    );
    assert!(matches!(err, Error::Unavailable(_)), "{err:?}");
    assert!(
        took < TIMEOUT * 2,
        "one call took {took:?}, its timeout is {TIMEOUT:?}"
    );
}

/// Waits until the placement lists exactly `replicas` for `group`.
async fn until_listed(client: &ShardedClient<Kv>, group: GroupId, replicas: &[String]) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while listed(client, group).await != replicas {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the placement never listed {replicas:?} for group {group}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Shuts `node` down and binds a UDP socket that is never read on its
/// address (no QUIC handshake with it completes: a host that is down).
async fn silence(node: MultiNode<Kv>, addr: &str) -> std::net::UdpSocket {
    node.shutdown().await.unwrap();
    drop(node);
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        match std::net::UdpSocket::bind(addr) {
            Ok(socket) => return socket,
            Err(e) => assert!(
                tokio::time::Instant::now() < deadline,
                "{addr} stays bound: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Mutant S16 (mutaudit s51) and stop 52, task 2. Two clients route group 1
/// to `spare`; the group moves on to `spare2` and `spare` goes down before
/// the clients see the move.
/// - S16: a call's group client ends `Unavailable` at `spare` (nothing
///   applied), the placement is re-read, and the call is re-routed to
///   `spare2`: it is answered (with the mutant it ended `Unavailable`).
/// - Task 2: when `spare2` is down too, the re-routed call dialled it for a
///   whole timeout of its own (about twice the call's timeout in all); it
///   ends by the call's deadline and the re-read's slack (a quarter).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_follows_a_group_moved_off_a_node_that_went_down_within_its_deadline() {
    const TIMEOUT: Duration = Duration::from_secs(6);
    let addrs = free_addrs(3);
    let (member, spare, spare2) = (addrs[0].clone(), addrs[1].clone(), addrs[2].clone());
    let ca = ClusterCa::generate("shard-moved-down").unwrap();
    let (a, _a_dir) = start_node(&member, &ca).await;
    let (b, _b_dir) = start_node(&spare, &ca).await;
    let (c, _c_dir) = start_node(&spare2, &ca).await;
    // Where the spares find group 0 to record the moves they lead.
    b.set_known_nodes(vec![member.clone()]);
    c.set_known_nodes(vec![member.clone()]);
    a.form_shards(2, std::slice::from_ref(&member))
        .await
        .unwrap();
    let seeds = vec![member.clone()];
    let admin = ShardedClient::<Kv>::connect_with(&seeds, ca.issue_admin("ops").unwrap(), opts())
        .await
        .unwrap();
    let key = key_in(&admin, 1, "moved");
    KvClient::new(admin.clone())
        .put(key.clone(), "v".into())
        .await
        .unwrap();
    a.move_replica(1, a.id(), &spare).await.unwrap();
    until_listed(&admin, 1, std::slice::from_ref(&spare)).await;
    // Two clients whose group 1 client is at `spare`.
    let mut clients = Vec::new();
    for name in ["one", "two"] {
        let kv = KvClient::new(
            ShardedClient::<Kv>::connect_with(
                &seeds,
                ca.issue_admin(name).unwrap(),
                opts().with_timeout(TIMEOUT),
            )
            .await
            .unwrap(),
        );
        assert_eq!(kv.get(key.clone()).await.unwrap(), Some("v".into()));
        clients.push(kv);
    }
    b.move_replica(1, b.id(), &spare2).await.unwrap();
    until_listed(&admin, 1, std::slice::from_ref(&spare2)).await;
    let _silent = silence(b, &spare).await;

    let start = tokio::time::Instant::now();
    let got = clients[0].get(key.clone()).await;
    let took = start.elapsed();
    assert_eq!(
        got,
        Ok(Some("v".into())),
        "a call to a group moved off a node that went down, after {took:?}"
    );
    assert!(
        took < TIMEOUT + TIMEOUT / 4 + Duration::from_secs(2),
        "the re-routed call took {took:?} (timeout {TIMEOUT:?})"
    );

    let _silent2 = silence(c, &spare2).await;
    let start = tokio::time::Instant::now();
    let got = clients[1].get(key.clone()).await;
    let took = start.elapsed();
    assert!(
        matches!(&got, Err(e) if e.applied() == raftkit::error::Applied::No),
        "a group whose old and new replicas are down: {got:?}"
    );
    // The fixed path ends by 1.25 x TIMEOUT (7.5 s); a re-route with a
    // timeout of its own took 2 x (12 s): 2.5 s of slack for a loaded
    // machine, 2 s of teeth.
    assert!(
        took < TIMEOUT * 3 / 2 + Duration::from_secs(1),
        "a call re-routed to replicas that are down too took {took:?}, its timeout is {TIMEOUT:?}"
    );
    a.shutdown().await.unwrap();
}

//! Many groups per node: three multi-group nodes over real QUIC on
//! loopback, real journal files; every group takes writes, the journal
//! shares fsyncs across groups, and every group recovers from the shared
//! journal after the nodes restart.

#[path = "support/multi.rs"]
mod multi;
mod support;
use std::path::Path;
use std::time::Duration;

use multi::{DEADLINE, Kv, KvRead, builder, get, get_with, leader, put};
use raftkit::client::Consistency;
use raftkit::core::Role;
use raftkit::multi::{GroupId, MultiNode};
use raftkit::prelude::*;
use raftkit::tls::ClusterCa;
use support::free_addrs;

const GROUPS: GroupId = 4;

/// A node of the test cluster (see `support/multi.rs`).
async fn start_node(
    addr: &str,
    dir: &Path,
    ca: Option<&ClusterCa>,
) -> Result<MultiNode<Kv>, raftkit::Error> {
    builder(addr, dir, ca).start().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_many_groups_share_links_and_journal_and_recover() {
    let addrs = free_addrs(3);
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let ca = ClusterCa::generate("multi-test").unwrap();
    let mut nodes = Vec::new();
    for (addr, dir) in addrs.iter().zip(&dirs) {
        nodes.push(start_node(addr, dir.path(), Some(&ca)).await.unwrap());
    }
    for node in &nodes {
        for g in 1..=GROUPS {
            node.create_group(g, &addrs).await.unwrap();
        }
        assert_eq!(node.groups(), (1..=GROUPS).collect::<Vec<_>>());
    }
    // Every group elects its own leader and takes its own writes.
    for round in 0..5 {
        for g in 1..=GROUPS {
            put(&nodes, g, &format!("k{round}"), &format!("g{g}-v{round}")).await;
        }
    }
    for g in 1..=GROUPS {
        assert_eq!(
            get(&nodes, g, "k4").await.as_deref(),
            Some(format!("g{g}-v4").as_str())
        );
        // Groups are separate state machines.
        assert_eq!(get(&nodes, g, "other").await, None);
    }
    // Concurrent writes to every group: the journal of a node covers
    // several groups with one sync. Whether one burst lands in one sync
    // depends on scheduling (a loaded machine may serialize it), so bursts
    // repeat until one did, up to a deadline; a journal that syncs each
    // group on its own never gets there.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let mut burst = 0;
    loop {
        let mut tasks = Vec::new();
        for g in 1..=GROUPS {
            for i in 0..20 {
                let ns = nodes.clone();
                tasks.push(tokio::spawn(async move {
                    put(&ns, g, &format!("c{i}"), &format!("g{g}-c{i}-b{burst}")).await;
                }));
            }
        }
        for t in tasks {
            t.await.unwrap();
        }
        let spanning = nodes
            .iter()
            .map(|n| n.journal_stats().max_groups_per_sync)
            .max()
            .unwrap();
        if spanning >= 2 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no journal sync covered two groups in {} bursts",
            burst + 1
        );
        burst += 1;
    }
    // Every replica of every group has applied the writes before the stop.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    for g in 1..=GROUPS {
        let target = leader(&nodes, g).await.status().commit;
        for n in &nodes {
            let p = n.group(g).unwrap();
            while p.status().applied < target {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "group {g} lags on {}",
                    n.name()
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    for n in &nodes {
        n.shutdown().await.unwrap();
    }
    drop(nodes);

    // Restart every node from its directory alone (identity included):
    // every group comes back from the shared journal with all its writes.
    let mut nodes = Vec::new();
    for (addr, dir) in addrs.iter().zip(&dirs) {
        nodes.push(start_node(addr, dir.path(), None).await.unwrap());
    }
    for node in &nodes {
        assert_eq!(node.groups(), (1..=GROUPS).collect::<Vec<_>>());
    }
    for g in 1..=GROUPS {
        for round in 0..5 {
            assert_eq!(
                get(&nodes, g, &format!("k{round}")).await,
                Some(format!("g{g}-v{round}")),
                "group {g}"
            );
        }
        for i in 0..20 {
            assert_eq!(
                get(&nodes, g, &format!("c{i}")).await,
                Some(format!("g{g}-c{i}-b{burst}")),
                "group {g}"
            );
        }
    }
    // And they keep working.
    put(&nodes, 2, "after", "restart").await;
    assert_eq!(get(&nodes, 2, "after").await.as_deref(), Some("restart"));
    for n in &nodes {
        n.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_node_recovers_every_group_from_its_journal() {
    let addrs = free_addrs(3);
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let ca = ClusterCa::generate("multi-test").unwrap();
    let mut nodes = Vec::new();
    for (addr, dir) in addrs.iter().zip(&dirs) {
        nodes.push(start_node(addr, dir.path(), Some(&ca)).await.unwrap());
    }
    for node in &nodes {
        for g in 1..=GROUPS {
            node.create_group(g, &addrs).await.unwrap();
        }
    }
    for g in 1..=GROUPS {
        put(&nodes, g, "a", &format!("{g}")).await;
    }
    // Node 2 holds every group's log up to the leader's commit.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let mut before = Vec::new();
    for g in 1..=GROUPS {
        let target = leader(&nodes, g).await.status().commit;
        let p = nodes[2].group(g).unwrap();
        while p.status().applied < target {
            assert!(tokio::time::Instant::now() < deadline, "group {g} lags");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        before.push(p.status().last_index);
    }
    // Node 2 stops; the other two keep every group going (a majority).
    nodes.pop().unwrap().shutdown().await.unwrap();
    for g in 1..=GROUPS {
        put(&nodes, g, "b", &format!("{g}")).await;
    }
    for n in nodes.drain(..) {
        n.shutdown().await.unwrap();
    }
    // Node 2 restarts alone: nobody can send it anything, so what it holds
    // comes from its own journal.
    let alone = start_node(&addrs[2], dirs[2].path(), None).await.unwrap();
    let deadline = tokio::time::Instant::now() + DEADLINE;
    for (i, g) in (1..=GROUPS).enumerate() {
        let p = alone.group(g).unwrap();
        while p.status().last_index < before[i] {
            assert!(
                tokio::time::Instant::now() < deadline,
                "group {g}: log at {}, was {} before the restart",
                p.status().last_index,
                before[i]
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // The others come back; node 2 catches up on what it missed, in every
    // group.
    let mut nodes = Vec::new();
    for (addr, dir) in addrs.iter().zip(&dirs).take(2) {
        nodes.push(start_node(addr, dir.path(), None).await.unwrap());
    }
    nodes.push(alone);
    for g in 1..=GROUPS {
        assert_eq!(get(&nodes, g, "b").await, Some(format!("{g}")));
        let target = leader(&nodes, g).await.status().commit;
        let p = nodes[2].group(g).unwrap();
        while p.status().applied < target {
            assert!(
                tokio::time::Instant::now() < deadline,
                "group {g} does not catch up"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    for n in &nodes {
        n.shutdown().await.unwrap();
    }
}

/// Waits until every node reports every group quiesced.
async fn all_quiesced(nodes: &[MultiNode<Kv>]) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !nodes
        .iter()
        .all(|n| n.quiesced() == (1..=GROUPS).collect::<Vec<_>>())
    {
        let now: Vec<_> = nodes.iter().map(|n| n.quiesced()).collect();
        assert!(
            tokio::time::Instant::now() < deadline,
            "not quiesced: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Three nodes with TLS from one CA, ticking every `tick` (an election
/// timeout is 10 ticks), each hosting groups `1..=GROUPS`, and `a = 1`
/// written to every group; the directories live as long as the returned
/// guards.
async fn three_nodes_written_once(tick: Duration) -> (Vec<tempfile::TempDir>, Vec<MultiNode<Kv>>) {
    let addrs = free_addrs(3);
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let ca = ClusterCa::generate("multi-test").unwrap();
    let mut nodes = Vec::new();
    for (addr, dir) in addrs.iter().zip(&dirs) {
        nodes.push(
            builder(addr, dir.path(), Some(&ca))
                .tick(tick)
                .start()
                .await
                .unwrap(),
        );
    }
    for node in &nodes {
        for g in 1..=GROUPS {
            node.create_group(g, &addrs).await.unwrap();
        }
    }
    for g in 1..=GROUPS {
        put(&nodes, g, "a", "1").await;
    }
    (dirs, nodes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_groups_quiesce_wake_on_writes_and_elect_when_the_leader_dies() {
    // 50 ms ticks (stop 53; they were 20 ms): the terms must not change
    // across the wake and the second sleep, and with 200 ms election
    // timeouts a node starved for a few hundred ms on a loaded CI machine
    // could make followers elect. An election that quiescence itself
    // causes (a follower left ticking, or woken, while its leader sleeps)
    // happens whatever the tick.
    let (_dirs, mut nodes) = three_nodes_written_once(Duration::from_millis(50)).await;
    // Idle: every replica of every group stops ticking.
    all_quiesced(&nodes).await;
    let terms: Vec<u64> = (1..=GROUPS)
        .map(|g| leader_now(&nodes, g).status().term)
        .collect();
    // A write wakes its group and is served; the group quiesces again,
    // in the same term (no election happened while it slept).
    put(&nodes, 1, "b", "2").await;
    assert_eq!(get(&nodes, 1, "b").await.as_deref(), Some("2"));
    all_quiesced(&nodes).await;
    for g in 1..=GROUPS {
        assert_eq!(
            leader_now(&nodes, g).status().term,
            terms[g as usize - 1],
            "group {g}"
        );
    }
    // The node leading group 1 dies: the sleeping followers of every group
    // it led notice its silence, wake and elect a new leader.
    let leader_id = leader_now(&nodes, 1).id();
    let i = nodes.iter().position(|n| n.id() == leader_id).unwrap();
    let dead = nodes.remove(i);
    dead.shutdown().await.unwrap();
    // Nothing is asked of the groups until each has a new leader: only the
    // silence of the dead node wakes them, within an election timeout
    // (500 ms) plus a heartbeat interval and an election; 10 s is a bound
    // no correct run comes near (a follower that noticed the silence only
    // after a hundred timeouts would miss it).
    let died = tokio::time::Instant::now();
    for g in 1..=GROUPS {
        leader(&nodes, g).await;
    }
    assert!(
        died.elapsed() < Duration::from_secs(10),
        "the groups took {:?} to elect new leaders",
        died.elapsed()
    );
    for g in 1..=GROUPS {
        put(&nodes, g, "c", "3").await;
        assert_eq!(get(&nodes, g, "c").await.as_deref(), Some("3"));
    }
    assert_ne!(leader(&nodes, 1).await.id(), leader_id);
    for n in &nodes {
        n.shutdown().await.unwrap();
    }
}

/// The leader of `group` now (the caller knows there is exactly one).
fn leader_now(nodes: &[MultiNode<Kv>], group: GroupId) -> Peer<Kv> {
    let leaders: Vec<Peer<Kv>> = nodes
        .iter()
        .filter_map(|n| n.group(group))
        .filter(|p| p.status().role == Role::Leader)
        .collect();
    assert_eq!(leaders.len(), 1, "group {group}");
    leaders[0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_balancer_spreads_leaders_over_the_nodes() {
    const N: GroupId = 12;
    let addrs = free_addrs(3);
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let ca = ClusterCa::generate("multi-test").unwrap();
    let mut nodes = Vec::new();
    for (addr, dir) in addrs.iter().zip(&dirs) {
        nodes.push(start_node(addr, dir.path(), Some(&ca)).await.unwrap());
    }
    for node in &nodes {
        for g in 1..=N {
            node.create_group(g, &addrs).await.unwrap();
        }
    }
    // Every group's leadership on node 0 first.
    let target = nodes[0].id();
    let deadline = tokio::time::Instant::now() + DEADLINE;
    for g in 1..=N {
        loop {
            let l = leader(&nodes, g).await;
            if l.id() == target {
                break;
            }
            let _ = l.transfer_leadership(target).await;
            assert!(
                tokio::time::Instant::now() < deadline,
                "group {g} stays away from node 0"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let led = |nodes: &[MultiNode<Kv>]| -> Vec<usize> {
        nodes
            .iter()
            .map(|n| {
                (1..=N)
                    .filter(|g| n.group(*g).is_some_and(|p| p.status().role == Role::Leader))
                    .count()
            })
            .collect()
    };
    assert_eq!(led(&nodes), vec![N as usize, 0, 0]);
    // Rounds of the balancer until the layout is even.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while led(&nodes) != vec![4, 4, 4] {
        for n in &nodes {
            n.balance_leaders().await;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "leaders: {:?}",
            led(&nodes)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Balanced: a further round plans nothing.
    for n in &nodes {
        assert!(n.balance_leaders().await.is_empty());
    }
    for g in 1..=N {
        put(&nodes, g, "k", "v").await;
    }
    for n in &nodes {
        n.shutdown().await.unwrap();
    }
}

/// `worker_threads(0)`: the groups' apply loops run as tasks of the
/// runtime that started the node (no thread of the node's own), and every
/// group still applies, answers and survives a restart of its node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_apply_on_the_callers_runtime_with_no_worker_threads() {
    let addrs = free_addrs(3);
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let ca = ClusterCa::generate("multi-caller-rt").unwrap();
    let start = |i: usize| {
        builder(&addrs[i], dirs[i].path(), Some(&ca))
            .worker_threads(0)
            .start()
    };
    let mut nodes = Vec::new();
    for i in 0..3 {
        nodes.push(start(i).await.unwrap());
    }
    for node in &nodes {
        for g in 1..=GROUPS {
            node.create_group(g, &addrs).await.unwrap();
        }
    }
    for g in 1..=GROUPS {
        for k in 0..20 {
            put(&nodes, g, &format!("k{k}"), &format!("g{g}-v{k}")).await;
        }
    }
    // Every replica applies (followers included): their apply loops run
    // on this runtime too.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    for node in &nodes {
        for g in 1..=GROUPS {
            let peer = node.group(g).unwrap();
            loop {
                let st = peer.status();
                if st.applied >= st.commit && st.commit >= 21 {
                    break;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "group {g} on {}: applied {} of {}",
                    node.name(),
                    st.applied,
                    st.commit
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    // A restarted node rebuilds its groups from the journal and serves.
    let stopped = nodes.remove(0);
    stopped.shutdown().await.unwrap();
    drop(stopped);
    nodes.insert(0, start(0).await.unwrap());
    for g in 1..=GROUPS {
        put(&nodes, g, "after", "restart").await;
        assert_eq!(get(&nodes, g, "k19").await, Some(format!("g{g}-v19")));
        assert_eq!(get(&nodes, g, "after").await.as_deref(), Some("restart"));
    }
    for node in &nodes {
        node.shutdown().await.unwrap();
    }
}

/// A leader whose group slept (quiesced) counted no ticks meanwhile, so
/// its lease rounds are forgotten when it wakes (`runtime::reads`): a
/// lease read right after waking must not be served on a lease confirmed
/// before the sleep. Here every other member is gone for longer than a
/// lease (an election timeout) when the read arrives: no quorum can confirm
/// anything, so the read must fail or wait, never be answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_read_after_quiescence_is_not_served_on_the_old_lease() {
    let (_dirs, mut nodes) = three_nodes_written_once(Duration::from_millis(20)).await;
    // A lease read on an awake leader is served on its lease (retried
    // while leadership moves: stop 53, an `unwrap` failed the test with
    // `NotLeader` when an election on a loaded machine took the leadership
    // between the lookup and the read). The premise, asserted (stop 58,
    // teeth T2): one was served on the lease, not through ReadIndex (a
    // lease that lapsed on a loaded machine hands the read to ReadIndex;
    // retried until one was served on the lease).
    let lease_reads = |nodes: &[MultiNode<Kv>]| -> u64 {
        nodes
            .iter()
            .filter_map(|n| n.group(1))
            .map(|p| p.status().lease_reads)
            .sum()
    };
    let before = lease_reads(&nodes);
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        assert_eq!(
            get_with(&nodes, 1, "a", Consistency::Lease)
                .await
                .as_deref(),
            Some("1")
        );
        if lease_reads(&nodes) > before {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no lease read was served on a lease: the premise of the test does not hold"
        );
        // Pacing the retries (not synchronisation).
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    all_quiesced(&nodes).await;
    let leader_id = leader_now(&nodes, 1).id();
    let i = nodes.iter().position(|n| n.id() == leader_id).unwrap();
    let survivor = nodes.remove(i);
    for n in nodes {
        n.shutdown().await.unwrap();
    }
    // The subject of the test is time passing: twice an election timeout
    // (10 ticks of 20 ms), so any lease confirmed before has run out.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let l = survivor.group(1).unwrap();
    let read = tokio::time::timeout(
        Duration::from_secs(3),
        l.read_with(KvRead::Get { key: "a".into() }, Consistency::Lease),
    )
    .await;
    assert!(
        !matches!(read, Ok(Ok(_))),
        "a lease read was served with no quorum alive"
    );
    survivor.shutdown().await.unwrap();
}

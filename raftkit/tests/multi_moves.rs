//! Moving a group's replica between multi-group nodes over real QUIC on
//! loopback, real journal files: under a concurrent write workload with no
//! acknowledged write lost and every replica converging; a move of the
//! leader's own replica; a leader crash (a kill: no flush, no goodbye)
//! between the learner's addition and the joint change; a removed node that
//! was down when its removal committed; a target that refuses to host, and
//! the abort.

#[path = "support/multi.rs"]
mod multi;
mod support;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use multi::{DEADLINE, Kv, KvRead, KvReadOutput, KvWrite, builder, init_tracing};
use raftkit::client::Consistency;
use raftkit::core::NodeId;
use raftkit::error::Applied;
use raftkit::multi::{GroupId, HostingPolicy, MoveError, MoveOptions, MoveStep, MultiNode};
use raftkit::tls::ClusterCa;
use support::free_addrs;

const G: GroupId = 7;

async fn start_node(
    addr: &str,
    dir: &Path,
    ca: Option<&ClusterCa>,
    hosting: HostingPolicy,
) -> MultiNode<Kv> {
    builder(addr, dir, ca)
        // Small snapshots: a moved replica catches up by a snapshot and
        // then the log.
        .snapshot_every(100)
        .hosting_policy(hosting)
        .start()
        .await
        .unwrap()
}

struct Cluster {
    addrs: Vec<String>,
    dirs: Vec<tempfile::TempDir>,
    nodes: Vec<Option<MultiNode<Kv>>>,
}

impl Cluster {
    /// Four nodes; group `G` on the first three.
    async fn start(on_demand_last: bool) -> Cluster {
        Cluster::start_with(HostingPolicy {
            on_demand: on_demand_last,
            ..HostingPolicy::default()
        })
        .await
    }

    /// [`Cluster::start`] with the fourth node hosting under `last`.
    async fn start_with(last: HostingPolicy) -> Cluster {
        init_tracing();
        let addrs = free_addrs(4);
        let dirs: Vec<_> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
        let ca = ClusterCa::generate("moves-test").unwrap();
        let mut nodes = Vec::new();
        for (i, (addr, dir)) in addrs.iter().zip(&dirs).enumerate() {
            let hosting = if i < 3 {
                HostingPolicy::default()
            } else {
                last.clone()
            };
            nodes.push(Some(start_node(addr, dir.path(), Some(&ca), hosting).await));
        }
        for node in nodes.iter().take(3).flatten() {
            node.create_group(G, &addrs[..3]).await.unwrap();
        }
        let c = Cluster { addrs, dirs, nodes };
        c.leader().await;
        c
    }

    fn live(&self) -> Vec<MultiNode<Kv>> {
        self.nodes.iter().flatten().cloned().collect()
    }

    fn index_of(&self, id: NodeId) -> usize {
        self.nodes
            .iter()
            .position(|n| n.as_ref().is_some_and(|n| n.id() == id))
            .expect("a live node with that id")
    }

    /// The node whose replica leads `G`, once there is exactly one.
    async fn leader(&self) -> MultiNode<Kv> {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            if let Some(n) = leader_now(&self.live()) {
                return n;
            }
            assert!(tokio::time::Instant::now() < deadline, "no single leader");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn stop(&mut self, i: usize) {
        let node = self.nodes[i].take().expect("running");
        node.shutdown().await.unwrap();
    }

    /// Kills node `i` as a process crash would (see [`MultiNode::kill`]).
    async fn kill(&mut self, i: usize) {
        let node = self.nodes[i].take().expect("running");
        node.kill().await;
    }

    async fn restart(&mut self, i: usize) {
        assert!(self.nodes[i].is_none());
        self.nodes[i] = Some(
            start_node(
                &self.addrs[i],
                self.dirs[i].path(),
                None,
                HostingPolicy::default(),
            )
            .await,
        );
    }

    fn id(&self, i: usize) -> NodeId {
        self.nodes[i].as_ref().unwrap().id()
    }
}

fn leader_now(nodes: &[MultiNode<Kv>]) -> Option<MultiNode<Kv>> {
    multi::leader_now(nodes, G)
}

/// Writes `key` through whichever replica leads, retrying what may be
/// retried.
async fn put(c: &Cluster, key: &str, value: &str) {
    multi::put(&c.live(), G, key, value).await;
}

/// Concurrent writers over the nodes' replicas: each writes its own keys
/// through the current leader and records every acknowledged write.
struct Workload {
    acked: Arc<Mutex<BTreeMap<String, String>>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Workload {
    fn start(nodes: Arc<Mutex<Vec<MultiNode<Kv>>>>, writers: usize) -> Workload {
        let acked = Arc::new(Mutex::new(BTreeMap::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = (0..writers)
            .map(|w| {
                let (nodes, acked, stop) = (nodes.clone(), acked.clone(), stop.clone());
                tokio::spawn(async move {
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let key = format!("w{w}-{n:06}");
                        let value = format!("v{w}-{n}-{}", "x".repeat(64));
                        let leader = leader_now(&nodes.lock().unwrap().clone());
                        let Some(peer) = leader.and_then(|l| l.group(G)) else {
                            tokio::time::sleep(Duration::from_millis(5)).await;
                            continue;
                        };
                        let put = KvWrite::Put {
                            key: key.clone(),
                            value: value.clone(),
                        };
                        match peer.write(put).await {
                            Ok(_) => {
                                acked.lock().unwrap().insert(key, value);
                                n += 1;
                            }
                            // Not acknowledged: retried under the same key
                            // and value (idempotent), or given up on at
                            // the stop (then it is simply not counted).
                            Err(e) => {
                                assert!(e.is_retryable(), "writer {w}: {e}");
                                tokio::time::sleep(Duration::from_millis(5)).await;
                            }
                        }
                    }
                })
            })
            .collect();
        Workload { acked, stop, tasks }
    }

    fn acked(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    async fn wait_acked(&self, n: usize) {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        while self.acked() < n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "only {} writes acknowledged, waiting for {n}",
                self.acked()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn stop(self) -> BTreeMap<String, String> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        Arc::try_unwrap(self.acked).unwrap().into_inner().unwrap()
    }
}

/// Every voter's replica applies the leader's whole log and holds the same
/// map, which contains every acknowledged write.
async fn check_converged(c: &Cluster, acked: &BTreeMap<String, String>) {
    let leader = c.leader().await.group(G).unwrap();
    let KvReadOutput::Dump(at_leader) = leader.read(KvRead::Dump {}).await.unwrap() else {
        panic!("a dump answered another query");
    };
    for (k, v) in acked {
        assert_eq!(at_leader.get(k), Some(v), "acknowledged write {k} lost");
    }
    let st = leader.status();
    let voters: Vec<NodeId> = st
        .members
        .iter()
        .filter(|m| m.voter)
        .map(|m| m.id)
        .collect();
    assert_eq!(voters.len(), 3, "{:?}", st.members);
    for v in voters {
        let peer = c.nodes[c.index_of(v)].as_ref().unwrap().group(G).unwrap();
        let mut w = peer.watch();
        tokio::time::timeout(DEADLINE, w.wait_for(|s| s.applied >= st.commit))
            .await
            .expect("replica applies the leader's log")
            .unwrap();
        let (KvReadOutput::Dump(here), _) = peer
            .read_with(KvRead::Dump {}, Consistency::Stale)
            .await
            .unwrap()
        else {
            panic!("a dump answered another query");
        };
        assert_eq!(here, at_leader, "replica on node {v} diverges");
    }
}

/// Waits until node `i` no longer hosts `G`, then checks that a restart
/// does not bring it back and that its snapshot files are gone.
async fn check_retired(c: &mut Cluster, i: usize) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while c.nodes[i].as_ref().unwrap().group(G).is_some() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "node {i} still hosts the group it was moved off"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    c.stop(i).await;
    c.restart(i).await;
    assert!(
        !c.nodes[i].as_ref().unwrap().groups().contains(&G),
        "a restart resurrected the removed replica"
    );
    let snaps = c.dirs[i]
        .path()
        .join("groups")
        .join(G.to_string())
        .join("snapshots");
    let left: Vec<_> = std::fs::read_dir(&snaps)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "removed group's files left: {left:?}");
}

fn voters(node: &MultiNode<Kv>) -> Vec<NodeId> {
    let st = node.group(G).unwrap().status();
    st.members
        .iter()
        .filter(|m| m.voter)
        .map(|m| m.id)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_moves_to_a_new_node_under_load_and_no_acknowledged_write_is_lost() {
    let mut c = Cluster::start(true).await;
    let shared = Arc::new(Mutex::new(c.live()));
    let load = Workload::start(shared.clone(), 4);
    // Enough writes that the group has snapshotted and the new replica
    // starts from a snapshot.
    load.wait_acked(400).await;
    let leader = c.leader().await;
    let from = voters(&leader)
        .into_iter()
        .find(|v| *v != leader.id())
        .unwrap();
    let from_i = c.index_of(from);
    let report = leader.move_replica(G, from, &c.addrs[3]).await.unwrap();
    let before = load.acked();
    assert!(!report.already_done && !report.leader_left, "{report:?}");
    let steps: Vec<MoveStep> = report.steps.iter().map(|s| s.0).collect();
    assert_eq!(
        steps,
        vec![
            MoveStep::AddLearner,
            MoveStep::CatchUp,
            MoveStep::JointChange,
            MoveStep::LeaveJoint
        ]
    );
    let new_voters = voters(&leader);
    assert!(new_voters.contains(&c.nodes[3].as_ref().unwrap().id()));
    assert!(!new_voters.contains(&from));
    // The workload keeps going on the new configuration.
    load.wait_acked(before + 200).await;
    let acked = load.stop().await;
    drop(shared);
    check_converged(&c, &acked).await;
    // The new replica installed a snapshot (it did not replay from index 1).
    let moved = c.nodes[3].as_ref().unwrap().group(G).unwrap().status();
    assert!(moved.snapshot_index > 0, "{moved:?}");
    // Moving again is a no-op that says so.
    let again = c
        .leader()
        .await
        .move_replica(G, from, &c.addrs[3])
        .await
        .unwrap();
    assert!(again.already_done && again.steps.is_empty());
    // Refused, changing nothing: aborting a move whose target already
    // votes, and a move off a node that is not a voter (here, to the node
    // that just left).
    let leader = c.leader().await;
    let members = || -> Vec<(NodeId, bool)> {
        let st = leader.group(G).unwrap().status();
        st.members.iter().map(|m| (m.id, m.voter)).collect()
    };
    let members_before = members();
    let err = leader.abort_move(G, &c.addrs[3]).await.unwrap_err();
    assert!(matches!(err, MoveError::Invalid { .. }), "{err}");
    assert_eq!(err.applied(), Applied::No);
    let not_a_voter: NodeId = 999_999;
    assert!(!members_before.iter().any(|m| m.0 == not_a_voter));
    let err = leader
        .move_replica(G, not_a_voter, &c.addrs[from_i])
        .await
        .unwrap_err();
    assert!(matches!(err, MoveError::Invalid { .. }), "{err}");
    assert_eq!(err.applied(), Applied::No);
    assert_eq!(members(), members_before);
    check_retired(&mut c, from_i).await;
    check_converged(&c, &acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_leader_moves_its_own_replica_away() {
    let mut c = Cluster::start(true).await;
    for i in 0..150 {
        put(&c, &format!("a{i:03}"), "before").await;
    }
    let leader = c.leader().await;
    let old = leader.id();
    let old_i = c.index_of(old);
    let report = leader.move_replica(G, old, &c.addrs[3]).await.unwrap();
    assert!(report.leader_left, "{report:?}");
    drop(leader);
    // The old leader stepped down; the new voters elect one of their own.
    let new_leader = c.leader().await;
    assert_ne!(new_leader.id(), old);
    assert!(!voters(&new_leader).contains(&old));
    let mut acked = BTreeMap::new();
    for i in 0..150 {
        acked.insert(format!("a{i:03}"), "before".to_string());
    }
    for i in 0..20 {
        put(&c, &format!("b{i:03}"), "after").await;
        acked.insert(format!("b{i:03}"), "after".to_string());
    }
    check_converged(&c, &acked).await;
    check_retired(&mut c, old_i).await;
}

/// Moves `G`'s replica off a voter other than the leader to node 3 through
/// whichever node leads, calling again (which resumes) while the leader
/// changes under the move; returns the leaving node and the last call's
/// report.
async fn move_through_leader(c: &Cluster) -> (NodeId, raftkit::multi::MoveReport) {
    let opts = MoveOptions {
        catch_up_timeout: DEADLINE,
        ..MoveOptions::default()
    };
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let leader = c.leader().await;
        let from = voters(&leader)
            .into_iter()
            .find(|v| *v != leader.id() && *v != c.id(3))
            .unwrap();
        match leader.move_replica_with(G, from, &c.addrs[3], &opts).await {
            Ok(report) => return (from, report),
            Err(
                e @ MoveError::Step {
                    source: raftkit::error::Error::NotLeader { .. },
                    ..
                },
            )
            | Err(e @ MoveError::NotLeader { .. }) => {
                assert!(tokio::time::Instant::now() < deadline, "{e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("the move failed: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_crash_between_learner_and_joint_change_leaves_a_usable_group_and_the_move_resumes()
 {
    let mut c = Cluster::start(true).await;
    let shared = Arc::new(Mutex::new(c.live()));
    let load = Workload::start(shared.clone(), 3);
    load.wait_acked(300).await;
    // The move's first step, then the leader's node goes down.
    let leader = c.leader().await;
    let leader_i = c.index_of(leader.id());
    leader
        .group(G)
        .unwrap()
        .add_learner(&c.addrs[3])
        .await
        .unwrap();
    drop(leader);
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while c.nodes[3].as_ref().unwrap().group(G).is_none() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "node 3 never hosted the group"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before = load.acked();
    shared.lock().unwrap().retain(|n| n.id() != c.id(leader_i));
    c.kill(leader_i).await;
    // The remaining voters elect a leader and keep taking writes.
    load.wait_acked(before + 100).await;
    c.restart(leader_i).await;
    *shared.lock().unwrap() = c.live();
    // The restarted node catches up (a node removed while far behind may
    // never hear that its removal committed: see the limits of `hosting`).
    let commit = c.leader().await.group(G).unwrap().status().commit;
    let back = c.nodes[leader_i].as_ref().unwrap().group(G).unwrap();
    tokio::time::timeout(DEADLINE, back.watch().wait_for(|s| s.applied >= commit))
        .await
        .expect("the restarted node catches up")
        .unwrap();
    // The move resumes on the new leader: the learner is not added again.
    let (from, report) = move_through_leader(&c).await;
    let from_i = c.index_of(from);
    let steps: Vec<MoveStep> = report.steps.iter().map(|s| s.0).collect();
    assert_eq!(
        steps,
        vec![
            MoveStep::CatchUp,
            MoveStep::JointChange,
            MoveStep::LeaveJoint
        ]
    );
    let before = load.acked();
    load.wait_acked(before + 100).await;
    let acked = load.stop().await;
    drop(shared);
    check_converged(&c, &acked).await;
    check_retired(&mut c, from_i).await;
}

/// A node that is down while its removal commits never receives the
/// leader's last AppendEntries; it learns its removal by asking the
/// group's members (`multi::removal`) and retires.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_down_when_its_removal_committed_learns_it_and_retires() {
    let mut c = Cluster::start(true).await;
    for i in 0..150 {
        put(&c, &format!("a{i:03}"), "before").await;
    }
    let leader = c.leader().await;
    let leader_i = c.index_of(leader.id());
    let from = voters(&leader)
        .into_iter()
        .find(|v| *v != leader.id())
        .unwrap();
    let from_i = c.index_of(from);
    // The leaving node crashes; its replica is moved away while it is down.
    c.kill(from_i).await;
    let report = leader.move_replica(G, from, &c.addrs[3]).await.unwrap();
    assert!(!report.already_done, "{report:?}");
    assert!(!voters(&leader).contains(&from));
    drop(leader);
    // The leader's node restarts too: no message queued for the removed
    // node survives, and the new leader never replicated to it.
    c.stop(leader_i).await;
    c.restart(leader_i).await;
    c.leader().await;
    // The removed node comes back with the old configuration, which still
    // lists it; nobody sends it anything, yet it learns and retires.
    c.restart(from_i).await;
    let mut watch = c.nodes[from_i].as_ref().unwrap().group(G).unwrap().watch();
    let back = tokio::time::timeout(DEADLINE, watch.wait_for(|s| s.config_index > 0))
        .await
        .expect("the restarted replica publishes its configuration")
        .unwrap()
        .clone();
    assert!(
        back.members.iter().any(|m| m.id == from),
        "the restarted node still believes it is a member: {:?}",
        back.members
    );
    let mut acked = BTreeMap::new();
    for i in 0..150 {
        acked.insert(format!("a{i:03}"), "before".to_string());
    }
    for i in 0..20 {
        put(&c, &format!("b{i:03}"), "after").await;
        acked.insert(format!("b{i:03}"), "after".to_string());
    }
    check_retired(&mut c, from_i).await;
    check_converged(&c, &acked).await;
}

/// Moves `G`'s replica off a follower to the fourth node, which must not
/// host it: the move fails at the catch-up (2 s). The leader that ran it,
/// the follower and the error.
async fn move_to_the_fourth_fails_at_the_catch_up(
    c: &Cluster,
) -> (MultiNode<Kv>, NodeId, MoveError) {
    let leader = c.leader().await;
    let from = voters(&leader)
        .into_iter()
        .find(|v| *v != leader.id())
        .unwrap();
    let opts = MoveOptions {
        catch_up_timeout: Duration::from_secs(2),
        ..MoveOptions::default()
    };
    let err = leader
        .move_replica_with(G, from, &c.addrs[3], &opts)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            MoveError::Step {
                step: MoveStep::CatchUp,
                ..
            }
        ),
        "{err}"
    );
    (leader, from, err)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_target_that_does_not_host_fails_the_catch_up_and_the_move_aborts() {
    let c = Cluster::start(false).await;
    for i in 0..20 {
        put(&c, &format!("k{i}"), "v").await;
    }
    let (leader, from, err) = move_to_the_fourth_fails_at_the_catch_up(&c).await;
    assert_eq!(err.applied(), Applied::Yes, "the learner was added");
    assert!(c.nodes[3].as_ref().unwrap().group(G).is_none());
    // The group is still usable, and the learner does not vote.
    put(&c, "during", "v").await;
    assert_eq!(voters(&leader).len(), 3);
    leader.abort_move(G, &c.addrs[3]).await.unwrap();
    let st = leader.group(G).unwrap().status();
    assert_eq!(st.members.len(), 3, "{:?}", st.members);
    // A node that is not the leader refuses to drive a move.
    let follower = c.nodes[c.index_of(from)].as_ref().unwrap();
    let err = follower
        .move_replica(G, from, &c.addrs[3])
        .await
        .unwrap_err();
    assert!(matches!(err, MoveError::NotLeader { .. }), "{err}");
    assert_eq!(err.applied(), Applied::No);
}

/// A node hosting as many groups as its policy allows (`max_groups`)
/// starts no replica on demand: a move to it fails at the catch-up and the
/// learner never appears there; one group fewer and it would.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_target_at_its_group_limit_does_not_host_on_demand() {
    let c = Cluster::start_with(HostingPolicy {
        max_groups: 1,
        ..HostingPolicy::default()
    })
    .await;
    // The fourth node's one group, created explicitly (not limited).
    let target = c.nodes[3].as_ref().unwrap();
    target
        .create_group(G + 1, &c.addrs[3..])
        .await
        .expect("a one-member group");
    assert_eq!(target.groups(), vec![G + 1]);
    put(&c, "k", "v").await;
    let (leader, _, _) = move_to_the_fourth_fails_at_the_catch_up(&c).await;
    assert!(target.group(G).is_none(), "hosted past max_groups");
    leader.abort_move(G, &c.addrs[3]).await.unwrap();
}

/// Moves a replica of `G` from voter `from` to the node at `to` through
/// whichever node leads, retrying while leadership changes.
async fn move_via_leader(c: &Cluster, from: NodeId, to: &str) -> raftkit::multi::MoveReport {
    let opts = MoveOptions {
        catch_up_timeout: DEADLINE,
        ..MoveOptions::default()
    };
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let leader = c.leader().await;
        match leader.move_replica_with(G, from, to, &opts).await {
            Ok(report) => return report,
            Err(
                e @ MoveError::Step {
                    source: raftkit::error::Error::NotLeader { .. },
                    ..
                },
            )
            | Err(e @ MoveError::NotLeader { .. }) => {
                assert!(tokio::time::Instant::now() < deadline, "{e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("the move failed: {e}"),
        }
    }
}

/// Waits until node `i` hosts (or no longer hosts) `G`.
async fn wait_hosting(c: &Cluster, i: usize, hosts: bool) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while c.nodes[i].as_ref().unwrap().group(G).is_some() != hosts {
        assert!(
            tokio::time::Instant::now() < deadline,
            "node {i} hosting {G}: expected {hosts}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The operator's maintenance round trip: a replica moves off a node and
/// back onto it (a new replica behind the fence of its predecessor's
/// removal, see `multi::hosting`) under a write workload; the node then
/// restarts, and its journal still holds the new replica (the tombstone
/// of the old one does not swallow it). No acknowledged write is lost and
/// every voter converges.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_moves_away_and_back_under_load_and_survives_a_restart() {
    let mut c = Cluster::start(true).await;
    let shared = Arc::new(Mutex::new(c.live()));
    let load = Workload::start(shared.clone(), 4);
    load.wait_acked(300).await;
    let leader = c.leader().await;
    let from = voters(&leader)
        .into_iter()
        .find(|v| *v != leader.id())
        .unwrap();
    let from_i = c.index_of(from);
    // Away: to the fourth node; the old replica retires (its tombstone).
    let away = move_via_leader(&c, from, &c.addrs[3]).await;
    assert!(!away.already_done, "{away:?}");
    wait_hosting(&c, from_i, false).await;
    let before = load.acked();
    load.wait_acked(before + 150).await;

    // Back: the replica on the fourth node moves to the node it left.
    let back = move_via_leader(&c, c.id(3), &c.addrs[from_i]).await;
    assert!(!back.already_done, "{back:?}");
    assert!(voters(&c.leader().await).contains(&from));
    wait_hosting(&c, 3, false).await;
    let returned = c.nodes[from_i].as_ref().unwrap().group(G).unwrap().status();
    assert!(returned.term > 0, "{returned:?}");
    let before = load.acked();
    load.wait_acked(before + 150).await;

    // The node crashes and restarts while the load goes on: the new
    // replica is in its journal (the old one's tombstone did not swallow
    // it) and comes back, behind the same fence, as a voter.
    *shared.lock().unwrap() = c.live().into_iter().filter(|n| n.id() != from).collect();
    c.kill(from_i).await;
    c.restart(from_i).await;
    assert!(
        c.nodes[from_i].as_ref().unwrap().groups().contains(&G),
        "the restart lost the replica that moved back"
    );
    *shared.lock().unwrap() = c.live();
    let before = load.acked();
    load.wait_acked(before + 150).await;
    let acked = load.stop().await;
    drop(shared);
    check_converged(&c, &acked).await;
}

/// The catch-up step (`multi::moves` step 2) waits until the learner holds
/// the configuration that added it, whatever lag the options allow: a
/// learner the leader has heard nothing from (match index 0, here a target
/// that does not host the group) is never caught up, so the joint change
/// that would make it a voter is never proposed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_learner_is_caught_up_only_once_it_holds_the_configuration_that_added_it() {
    let c = Cluster::start(false).await;
    put(&c, "k", "v").await;
    let leader = c.leader().await;
    let from = voters(&leader)
        .into_iter()
        .find(|v| *v != leader.id())
        .unwrap();
    let opts = MoveOptions {
        catch_up_lag: u64::MAX,
        catch_up_timeout: Duration::from_secs(1),
        ..MoveOptions::default()
    };
    let err = leader
        .move_replica_with(G, from, &c.addrs[3], &opts)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            MoveError::Step {
                step: MoveStep::CatchUp,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(voters(&leader).len(), 3);
    assert!(voters(&leader).contains(&from));
    leader.abort_move(G, &c.addrs[3]).await.unwrap();
}

/// Leadership balancing moves a leadership only where it narrows the
/// spread (`multi::balance`): a leader over its share whose group's only
/// other voter has one leadership fewer keeps it. Moving it would just
/// swap which node is over, and that node would move it back next round
/// (leaders oscillating between two nodes).
#[test]
fn leadership_balancing_never_moves_a_leadership_to_a_node_one_below() {
    use raftkit::multi::balance::{GroupView, plan};
    let g = |group: u64, leader: u64, voters: &[u64]| GroupView {
        group,
        leader: Some(leader),
        voters: voters.to_vec(),
    };
    // Node 1 leads 3, node 2 leads 2, nodes 3 and 4 lead none: node 1 is
    // over its share (2), but its groups' only other voter is node 2.
    let view = vec![
        g(1, 1, &[1, 2]),
        g(2, 1, &[1, 2]),
        g(3, 1, &[1, 2]),
        g(4, 2, &[2, 3]),
        g(5, 2, &[2, 4]),
    ];
    assert_eq!(plan(1, &view), vec![], "a move that only swaps who is over");
    // Node 2 is at its share: it moves nothing.
    let moves = plan(2, &view);
    assert_eq!(moves.len(), 0, "node 2 is at its share: {moves:?}");
    // With a third voter at 0, node 1 gives away exactly one.
    let mut view = view;
    view[0].voters.push(3);
    assert_eq!(plan(1, &view), vec![(1, 3)]);
}

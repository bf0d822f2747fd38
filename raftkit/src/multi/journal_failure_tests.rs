//! A failed journal stops every group of the node, not only those with a
//! write in the failed batch (review s61, item 1).
//!
//! The journal is one log for all the groups a node hosts: once one of
//! its syncs fails it refuses every later write (invariant 4 of
//! [`journal`](super::super::journal)), so every group hosted here has lost
//! its storage, whether or not it wrote in that batch. Before the fix only
//! the groups whose write was in the failed batch learnt it (their write
//! completed with the error) and ran the failure path (`NodeTask::fail`:
//! hand leadership over, acknowledge nothing more); a group this node led
//! with nothing to write (heartbeats write nothing) kept leading, until
//! its next client write failed "may have been applied" and only then
//! handed over.
//!
//! Three nodes host groups 1 and 2, both led by A, whose journal's fsync
//! then fails under a write of group 1 only: group 2's leadership must
//! move off A as group 1's does, and no write of group 2 through A is
//! answered as applied.

use crate::test_ports::free_addr;
use std::sync::Arc;
use std::time::Duration;

use super::MultiNode;
use crate::core::Role;
use crate::error::Applied;
use crate::multi::GroupId;
use crate::multi::placement::{Placement, PlacementClient};
use crate::storage::vfs::{Fault, FaultRule, FaultyFs, FileOp};
use crate::tls::ClusterCa;
use tokio::time::Instant;

const DEADLINE: Duration = Duration::from_secs(30);
/// How long group 2's leadership may take to leave A once A's journal
/// failed: a hand-over takes a round trip or two, an election after
/// A's silence 200-400 ms (20 ms ticks); never, before the fix.
const HANDOVER: Duration = Duration::from_secs(10);

/// Polls `f` until it gives a value; panics naming `what` after `within`.
async fn until<T>(what: &str, within: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(t) = f() {
            return t;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A node at `addr` on `dir` over the file system `fs`, certified by `ca`.
async fn node_on(
    ca: &ClusterCa,
    addr: &str,
    dir: &std::path::Path,
    fs: &FaultyFs,
) -> MultiNode<Placement> {
    let mut builder = MultiNode::<Placement>::builder().identity(
        ca.issue_node(&format!("raftkit_placement@{addr}"), &[])
            .expect("a node certificate"),
    );
    builder.fs = Arc::new(fs.clone());
    super::retire_tests::start_on(builder, addr, dir).await
}

/// Makes `a` lead `group`: asks the leader of the moment to transfer
/// leadership to it until it leads.
async fn lead_on(nodes: &[MultiNode<Placement>], a: usize, group: GroupId) {
    let deadline = Instant::now() + DEADLINE;
    let a_id = nodes[a].id();
    loop {
        let leading = nodes.iter().position(|n| {
            n.group(group).is_some_and(|p| {
                let st = p.status();
                st.role == Role::Leader && st.commit >= st.config_index && st.config_index > 0
            })
        });
        match leading {
            Some(l) if l == a => return,
            Some(l) => {
                if let Some(p) = nodes[l].group(group) {
                    let _ = p.transfer_leadership(a_id).await;
                }
                // (A pause before looking again, not a synchronisation.)
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            None => tokio::time::sleep(Duration::from_millis(5)).await,
        }
        assert!(
            Instant::now() < deadline,
            "node {a} never came to lead group {group}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_journal_failure_hands_over_every_group_the_node_leads() {
    let ca = ClusterCa::generate("journal-failure-test").expect("a CA");
    let addrs: Vec<String> = (0..3).map(|_| free_addr()).collect();
    let dirs: Vec<_> = (0..3)
        .map(|_| tempfile::tempdir().expect("a temporary directory"))
        .collect();
    let disks: Vec<FaultyFs> = (0..3).map(|_| FaultyFs::over_real()).collect();
    let mut nodes = Vec::new();
    for ((addr, dir), fs) in addrs.iter().zip(&dirs).zip(&disks) {
        nodes.push(node_on(&ca, addr, dir.path(), fs).await);
    }
    for n in &nodes {
        for g in [1, 2] {
            n.create_group(g, &addrs).await.expect("a group");
        }
    }
    lead_on(&nodes, 0, 1).await;
    lead_on(&nodes, 0, 2).await;
    let a = &nodes[0];
    let (g1, g2) = (
        a.group(1).expect("A hosts group 1"),
        a.group(2).expect("A hosts group 2"),
    );
    until("A leads both groups", DEADLINE, || {
        (g1.status().role == Role::Leader && g2.status().role == Role::Leader).then_some(())
    })
    .await;
    let g2_term = g2.status().term;

    // A's journal fails under a write of group 1 only.
    disks[0].inject(FaultRule::new(FileOp::Fsync, Fault::Io).on("journal"));
    let written = PlacementClient::new(g1.clone())
        .set_replicas(7, Vec::new())
        .await;
    if let Err(e) = &written {
        assert_ne!(e.applied(), Applied::Yes, "{e}");
    }
    until("A's journal failed under group 1's write", DEADLINE, || {
        g1.status().fatal.is_some().then_some(())
    })
    .await;

    // Group 2, which wrote nothing in the failed batch, stops too: its
    // leadership moves to B or C.
    let took = Instant::now();
    let new_leader = until(
        "group 2's leadership to leave A, whose journal failed",
        HANDOVER,
        || {
            nodes[1..].iter().position(|n| {
                n.group(2).is_some_and(|p| {
                    let st = p.status();
                    st.role == Role::Leader && st.term > g2_term
                })
            })
        },
    )
    .await
        + 1;
    eprintln!(
        "group 2's leadership moved to node {new_leader} {:?} after A's journal failed",
        took.elapsed()
    );
    let st = g2.status();
    assert!(
        st.role != Role::Leader && st.fatal.is_some(),
        "A's replica of group 2: role {:?}, fatal {:?}",
        st.role,
        st.fatal
    );
    // No write of group 2 through A is answered as applied.
    let through_a = PlacementClient::new(g2.clone())
        .set_replicas(8, Vec::new())
        .await;
    assert!(
        through_a
            .as_ref()
            .is_err_and(|e| e.applied() == Applied::No),
        "a write of group 2 through A after its journal failed: {through_a:?}"
    );
    // Group 2 takes writes on its new leader.
    let new = nodes[new_leader]
        .group(2)
        .expect("the new leader hosts group 2");
    let deadline = Instant::now() + DEADLINE;
    loop {
        match PlacementClient::new(new.clone())
            .set_replicas(9, Vec::new())
            .await
        {
            Ok(_) => break,
            Err(e) => assert!(
                e.applied() == Applied::No && Instant::now() < deadline,
                "group 2's new leader took no write: {e}"
            ),
        }
        // (A pause before the next try, not a synchronisation.)
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for n in &nodes[1..] {
        n.shutdown().await.expect("a clean shutdown");
    }
    a.kill().await;
}

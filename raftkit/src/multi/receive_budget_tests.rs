//! The node-wide snapshot receive budget (`runtime::receive_budget`,
//! `hosting`, "Snapshots received at once"), driven in process as a holder
//! of a node certificate would drive it over the peer protocol: leader
//! messages of a node that is no member of anything, for groups the node
//! does not host, handed to the node's hosting path.

use std::time::Duration;

use super::MultiNode;
use super::retire_tests::{heartbeat, one_node_with, until};
use crate::core::{Body, Configuration, DropReason, Message, SnapshotMeta};
use crate::multi::HostingPolicy;
use crate::multi::hosting::Retire;
use crate::multi::placement::Placement;

/// The test's budget: four chunks.
const BUDGET: u64 = 1 << 20;
const CHUNK: u64 = 256 << 10;

/// A node whose groups may hold [`BUDGET`] bytes of snapshot receive
/// buffers together.
async fn budgeted_node() -> (MultiNode<Placement>, tempfile::TempDir) {
    let (node, _addr, dir) = one_node_with(HostingPolicy {
        snapshot_receive_bytes: BUDGET,
        ..HostingPolicy::default()
    })
    .await;
    (node, dir)
}

/// A chunk of [`CHUNK`] bytes at `offset` of a snapshot (index 10) that
/// the stranger of [`heartbeat`] sends as leader of `term`; never the last.
fn chunk(node: &MultiNode<Placement>, term: u64, offset: u64) -> Message {
    let from = heartbeat(node).from;
    Message {
        from,
        to: node.id(),
        term,
        body: Body::InstallSnapshot {
            meta: SnapshotMeta {
                index: 10,
                term,
                config: Configuration::new([from]),
            },
            offset,
            data: vec![7; CHUNK as usize],
            done: false,
        },
    }
}

/// The bytes the node's groups hold in receive buffers, by their status.
fn buffered(node: &MultiNode<Placement>) -> u64 {
    node.groups()
        .iter()
        .filter_map(|g| node.group(*g))
        .map(|p| p.status().snapshot_receiving_bytes)
        .sum()
}

/// Sends `group` (hosting it on demand) the first `chunks` chunks of the
/// stranger's snapshot in `term`, and waits until its replica took them
/// in or abandoned the reception over the budget.
async fn receive(node: &MultiNode<Placement>, group: u64, term: u64, chunks: u64) {
    for k in 0..chunks {
        node.host_on_demand(group, chunk(node, term, k * CHUNK))
            .await;
    }
    let peer = node.group(group).expect("hosted on demand");
    until(&format!("group {group} took its chunks in"), || {
        let st = peer.status();
        st.snapshot_receiving_bytes == chunks * CHUNK
            || st.dropped.get(DropReason::SnapshotOverBudget) > 0
    })
    .await;
}

/// A holder of a node certificate opens snapshot receptions for many
/// fresh groups (each hosted on demand, each chunk leader contact): the
/// node's receive buffers together stay within its budget, where each
/// group's buffer alone was bounded only by `max_snapshot_bytes` (groups x
/// 1 GiB by default). Over the budget, a reception is abandoned, its
/// bytes released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranger_cannot_make_the_node_hold_more_snapshot_bytes_than_its_budget() {
    let (node, _dir) = budgeted_node().await;
    for group in 1..=12 {
        receive(&node, group, 3, 2).await;
        let (counted, held) = (node.snapshot_receive_bytes(), buffered(&node));
        assert!(
            held <= BUDGET && counted <= BUDGET,
            "after {group} groups the node holds {held} bytes in snapshot receive buffers \
             (budget counts {counted}), past its budget of {BUDGET}"
        );
        assert!(counted >= held, "the budget counts {counted} < {held} held");
    }
    // Two receptions of two chunks fill it; the others were refused.
    assert_eq!(buffered(&node), BUDGET);
    let refused = node
        .groups()
        .iter()
        .filter_map(|g| node.group(*g))
        .filter(|p| p.status().dropped.get(DropReason::SnapshotOverBudget) > 0)
        .count();
    assert_eq!(refused, 10, "receptions abandoned over the budget");
    until("the budget counts what the buffers hold", || {
        node.snapshot_receive_bytes() == BUDGET
    })
    .await;
    node.shutdown().await.expect("a clean shutdown");
}

/// A reception abandoned midway gives its bytes back to the budget: when
/// a new leader (a later term) takes over its group, when its group is
/// retired, and when the budget abandons it. A reception alone then gets
/// the whole budget: one up to the budget always fits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_reception_gives_its_budget_back() {
    let (node, _dir) = budgeted_node().await;
    receive(&node, 1, 3, 2).await;
    receive(&node, 2, 3, 2).await;
    until("two receptions hold the budget", || {
        node.snapshot_receive_bytes() == BUDGET
    })
    .await;

    // A leader of a later term: group 1's reception can never be extended
    // (its leader's chunks are stale now, Raft §5.1).
    let mut later = heartbeat(&node);
    later.term = 4;
    node.host_on_demand(1, later).await;
    let one = node.group(1).expect("group 1");
    until("group 1 let its reception go", || {
        one.status().snapshot_receiving_bytes == 0
    })
    .await;
    until("group 1's bytes are back in the budget", || {
        node.snapshot_receive_bytes() == BUDGET - 2 * CHUNK
    })
    .await;

    // Group 2 retired (an orphan): its share goes with it.
    node.retire(2, Retire::Orphan)
        .await
        .expect("group 2 retired");
    until("group 2's bytes are back in the budget", || {
        node.snapshot_receive_bytes() == 0
    })
    .await;

    // Group 3 holds three chunks; group 4's second chunk would take the
    // total past the budget: its reception is abandoned, and its first
    // chunk's bytes go back.
    receive(&node, 3, 3, 3).await;
    receive(&node, 4, 3, 2).await;
    let four = node.group(4).expect("group 4");
    assert_eq!(four.status().snapshot_receiving_bytes, 0);
    until("group 4's bytes are back in the budget", || {
        node.snapshot_receive_bytes() == 3 * CHUNK
    })
    .await;
    // Alone, a reception gets the whole budget (the largest snapshot a
    // replica here accepts).
    node.host_on_demand(3, chunk(&node, 3, 3 * CHUNK)).await;
    let three = node.group(3).expect("group 3");
    until("group 3 took its fourth chunk in", || {
        three.status().snapshot_receiving_bytes == BUDGET
    })
    .await;
    assert_eq!(
        three.status().dropped.get(DropReason::SnapshotOverBudget),
        0
    );
    assert_eq!(node.snapshot_receive_bytes(), BUDGET);
    tokio::time::timeout(Duration::from_secs(30), node.shutdown())
        .await
        .expect("shutdown in time")
        .expect("a clean shutdown");
}

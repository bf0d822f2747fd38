//! The multi-group test cluster's pieces shared by `multi_groups.rs` and
//! `multi_moves.rs`: the state machine, a node's builder, a group's leader,
//! and writes and reads that retry while leadership moves (every wait has a
//! deadline).
//!
//! Included with `#[path = "support/multi.rs"] mod multi;` by the tests that
//! use it (not through `support/mod.rs`, which every QUIC test includes);
//! each uses part of it.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use raftkit::client::Consistency;
use raftkit::core::Role;
use raftkit::multi::{GroupId, MultiNode, MultiNodeBuilder};
use raftkit::prelude::*;
use raftkit::tls::ClusterCa;

/// A key-value map; a node's name is `mkv@<address>`.
#[derive(StateMachine, Default, Serialize, Deserialize)]
#[raftkit(name = "mkv")]
pub struct Kv {
    map: BTreeMap<String, String>,
}

#[raftkit::state_machine]
impl Kv {
    #[write]
    fn put(&mut self, key: String, value: String) -> Option<String> {
        self.map.insert(key, value)
    }

    #[read]
    fn get(&self, key: String) -> Option<String> {
        self.map.get(&key).cloned()
    }

    #[read]
    fn dump(&self) -> BTreeMap<String, String> {
        self.map.clone()
    }
}

/// How long any one condition may take to become true.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// Logs to the test's output with `RUST_LOG` set (nothing otherwise).
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// A node listening on `addr` with its data in `dir`, a 20 ms tick, and a
/// node certificate of `ca` (none: the one stored in `dir` by a first
/// start).
pub fn builder(addr: &str, dir: &Path, ca: Option<&ClusterCa>) -> MultiNodeBuilder<Kv> {
    let mut b = MultiNode::<Kv>::builder()
        .listen(addr)
        .data_dir(dir)
        .tick(Duration::from_millis(20));
    if let Some(ca) = ca {
        b = b.identity(
            ca.issue_node(&format!("mkv@{addr}"), &[])
                .expect("a node certificate"),
        );
    }
    b
}

/// The node whose replica leads `group`, if exactly one does now.
pub fn leader_now(nodes: &[MultiNode<Kv>], group: GroupId) -> Option<MultiNode<Kv>> {
    let leaders: Vec<_> = nodes
        .iter()
        .filter(|n| {
            n.group(group)
                .is_some_and(|p| p.status().role == Role::Leader)
        })
        .collect();
    (leaders.len() == 1).then(|| leaders[0].clone())
}

/// The leader replica of `group`, once there is exactly one.
pub async fn leader(nodes: &[MultiNode<Kv>], group: GroupId) -> Peer<Kv> {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if let Some(peer) = leader_now(nodes, group).and_then(|n| n.group(group)) {
            return peer;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "group {group}: no single leader"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Writes through the group's leader, retrying while leadership moves (a
/// put of the same key and value is idempotent).
pub async fn put(nodes: &[MultiNode<Kv>], group: GroupId, key: &str, value: &str) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let l = leader(nodes, group).await;
        match l
            .write(KvWrite::Put {
                key: key.into(),
                value: value.into(),
            })
            .await
        {
            Ok(_) => return,
            Err(e) if e.is_retryable() && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("group {group}: put {key}: {e}"),
        }
    }
}

/// Reads `key` linearizably through the group's leader, retrying while
/// leadership moves.
pub async fn get(nodes: &[MultiNode<Kv>], group: GroupId, key: &str) -> Option<String> {
    get_with(nodes, group, key, Consistency::Linearizable).await
}

/// Reads `key` with `consistency` through the group's leader, retrying
/// while leadership moves (a leader found a moment ago may have lost an
/// election on a loaded machine: `NotLeader` is retryable).
pub async fn get_with(
    nodes: &[MultiNode<Kv>],
    group: GroupId,
    key: &str,
    consistency: Consistency,
) -> Option<String> {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let l = leader(nodes, group).await;
        match l
            .read_with(KvRead::Get { key: key.into() }, consistency)
            .await
        {
            Ok((KvReadOutput::Get(v), _)) => return v,
            Ok(_) => panic!("group {group}: get {key}: the answer of another query"),
            Err(e) if e.is_retryable() && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("group {group}: get {key}: {e}"),
        }
    }
}

//! Moving a replica of a big group between multi-group nodes (QUIC on
//! loopback, journals on disk): the new replica receives the leader's
//! snapshot in chunks, then the log after it.
//!
//! Issue 18: a move of a group of tens of MB failed (CatchUp timed out).
//! Two faults, each enough: every chunk a heartbeat resent started one
//! more chunk-answer cycle that never ended, so a transfer slowed down
//! quadratically with its length (and an empty replica still receiving
//! after `orphan_after` was retired as an orphan); and the new replica,
//! whose first configuration (the snapshot's, taken before the learner was
//! added) does not list it, was retired as *removed* by the node's retirer
//! whenever it looked before the log's configuration entry arrived — the
//! longer the snapshot took to save, the likelier. Either way the node
//! then refused the group for good (its tombstone) and the move timed out.
//! The test below makes both likely at a few MB: a short tick (the retirer
//! runs every election timeout, 100 ms) and a short `orphan_after`.

mod support;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use raftkit::core::Role;
use raftkit::multi::{GroupId, HostingPolicy, MoveOptions, MultiNode};
use raftkit::prelude::*;
use raftkit::tls::ClusterCa;
use support::free_addrs;

#[derive(StateMachine, Default, Serialize, Deserialize)]
#[raftkit(name = "bigkv")]
pub struct Kv {
    map: BTreeMap<String, Vec<u8>>,
}

#[raftkit::state_machine]
impl Kv {
    #[write]
    fn put(&mut self, key: String, value: Vec<u8>) {
        self.map.insert(key, value);
    }

    #[read]
    fn size(&self) -> (u64, u64) {
        (
            self.map.len() as u64,
            self.map.values().map(|v| v.len() as u64).sum(),
        )
    }
}

const G: GroupId = 3;
const VALUE: usize = 32 << 10;
const DEADLINE: Duration = Duration::from_secs(120);

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

async fn start_node(addr: &str, dir: &Path, ca: &ClusterCa) -> MultiNode<Kv> {
    MultiNode::<Kv>::builder()
        .listen(addr)
        .data_dir(dir)
        .tick(Duration::from_millis(10))
        .hosting_policy(HostingPolicy {
            orphan_after: Duration::from_secs(1),
            ..HostingPolicy::default()
        })
        .snapshot_every(100)
        .identity(ca.issue_node(&format!("bigkv@{addr}"), &[]).unwrap())
        .start()
        .await
        .unwrap()
}

fn leader_of(nodes: &[MultiNode<Kv>]) -> Option<MultiNode<Kv>> {
    let l: Vec<_> = nodes
        .iter()
        .filter(|n| n.group(G).is_some_and(|p| p.status().role == Role::Leader))
        .collect();
    (l.len() == 1).then(|| l[0].clone())
}

/// Fills group `G` on three of four nodes with `mb` MB, moves a
/// follower's replica to the fourth node within `catch_up`, and checks the
/// new replica holds every value.
async fn move_group_of(mb: u64, catch_up: Duration) {
    init_tracing();
    let addrs = free_addrs(4);
    let dirs: Vec<_> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let ca = ClusterCa::generate("bigmove-test").unwrap();
    let mut nodes = Vec::new();
    for (addr, dir) in addrs.iter().zip(&dirs) {
        nodes.push(start_node(addr, dir.path(), &ca).await);
    }
    for n in &nodes[..3] {
        n.create_group(G, &addrs[..3]).await.unwrap();
    }
    let writes = (mb << 20) / VALUE as u64;
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let mut i = 0;
    while i < writes {
        assert!(tokio::time::Instant::now() < deadline, "fill timed out");
        let Some(peer) = leader_of(&nodes).and_then(|l| l.group(G)) else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let put = KvWrite::Put {
            key: format!("k{i:08}"),
            value: vec![(i % 251) as u8; VALUE],
        };
        match peer.write(put).await {
            Ok(_) => i += 1,
            Err(e) if e.is_retryable() => tokio::time::sleep(Duration::from_millis(10)).await,
            Err(e) => panic!("fill: {e}"),
        }
    }
    let leader = leader_of(&nodes).expect("a leader");
    let from = nodes[..3]
        .iter()
        .find(|n| n.id() != leader.id())
        .expect("a follower")
        .id();
    let opts = MoveOptions {
        catch_up_timeout: catch_up,
        ..MoveOptions::default()
    };
    let report = leader
        .move_replica_with(G, from, &addrs[3], &opts)
        .await
        .unwrap_or_else(|e| panic!("moving a replica of a {mb} MB group: {e}"));
    eprintln!("moved a {mb} MB group: {report:?}");
    let moved = nodes[3].group(G).expect("the target hosts the group");
    let want = (writes, writes * VALUE as u64);
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let got = moved
            .read_with(KvRead::Size {}, raftkit::client::Consistency::Stale)
            .await
            .map(|(KvReadOutput::Size(size), _)| size);
        if got.as_ref().ok() == Some(&want) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the moved replica holds {got:?}, not {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for n in nodes {
        n.shutdown().await.unwrap();
    }
}

/// A group of 16 MB (a snapshot of some 64 chunks) moves, and the new replica
/// holds every value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_of_a_group_of_16_mb_moves() {
    move_group_of(16, Duration::from_secs(30)).await;
}

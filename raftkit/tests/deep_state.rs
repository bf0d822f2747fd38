//! A state grown by many shallow writes may nest far deeper than any one
//! command (here a linked list: two levels per element). The decoder's
//! nesting limit applies to a client's bytes at ingress only, so such a
//! state snapshots and restores: a restart from the snapshot brings the
//! peer back with the whole list. While the limit also applied to
//! snapshots, the restart failed: "latest snapshot does not restore".

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use raftkit::core::{Message, NodeId, Role};
use raftkit::prelude::*;
use raftkit::transport::Transport;
use tokio::sync::mpsc;

/// One list element: a struct and an option, two levels per element.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Node {
    value: u64,
    next: Option<Box<Node>>,
}

#[derive(StateMachine, Default, Serialize, Deserialize)]
#[raftkit(name = "deep-list")]
pub struct List {
    head: Option<Box<Node>>,
}

#[raftkit::state_machine]
impl List {
    /// Pushes `value` in front: one shallow command, one level more state.
    #[write]
    fn push(&mut self, value: u64) -> u64 {
        let next = self.head.take();
        self.head = Some(Box::new(Node { value, next }));
        value
    }

    /// The number of elements and their sum (walked without recursion).
    #[read]
    fn summary(&self) -> (u64, u64) {
        let (mut len, mut sum) = (0, 0);
        let mut at = self.head.as_deref();
        while let Some(node) = at {
            len += 1;
            sum += node.value;
            at = node.next.as_deref();
        }
        (len, sum)
    }
}

impl Drop for List {
    /// Unlinks iteratively: the derived drop would recurse once per element.
    fn drop(&mut self) {
        let mut at = self.head.take();
        while let Some(mut node) = at {
            at = node.next.take();
        }
    }
}

/// A lossless in-process network: node id -> inbox.
#[derive(Clone, Default)]
struct Net {
    inboxes: Arc<Mutex<HashMap<NodeId, mpsc::Sender<Message>>>>,
}

struct NetEnd(Net);

impl Transport for NetEnd {
    fn send(&self, msg: Message) {
        let inbox = self.0.inboxes.lock().unwrap().get(&msg.to).cloned();
        if let Some(inbox) = inbox {
            let _ = inbox.try_send(msg);
        }
    }
    fn set_peers(&self, _: BTreeMap<NodeId, String>) {}
}

/// Elements in the list: 2 levels each, far past the 128-level limit.
const LEN: u64 = 300;

async fn start(net: &Net, dir: &std::path::Path) -> Result<Peer<List>, raftkit::Error> {
    let net = net.clone();
    List::peer()
        .snapshot_every(50)
        .snapshot_log_ratio(0.0)
        .listen("n1:1")
        .data_dir(dir.join("n1"))
        .bootstrap()
        .tick(Duration::from_millis(10))
        .transport(move |id, inbox| {
            net.inboxes.lock().unwrap().insert(id, inbox);
            Arc::new(NetEnd(net)) as Arc<dyn Transport>
        })
        .start()
        .await
}

async fn wait_leader(peer: &Peer<List>) {
    let mut w = peer.watch();
    tokio::time::timeout(
        Duration::from_secs(20),
        w.wait_for(|s| s.role == Role::Leader),
    )
    .await
    .expect("a leader within 20 s")
    .expect("peer alive");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_nested_deeper_than_the_limit_snapshots_and_restores() {
    let dir = tempfile::tempdir().unwrap();
    let peer = start(&Net::default(), dir.path())
        .await
        .expect("peer starts");
    wait_leader(&peer).await;
    let list = ListClient::new(peer.clone());
    for v in 1..=LEN {
        assert_eq!(list.push(v).await.unwrap(), v);
    }
    let want = (LEN, LEN * (LEN + 1) / 2);
    assert_eq!(list.summary().await.unwrap(), want);
    // A snapshot taken past the limit's depth (at least 250 elements: 500
    // levels) and kept on disk.
    let mut w = peer.watch();
    let snapshot = tokio::time::timeout(
        Duration::from_secs(20),
        w.wait_for(|s| s.snapshot_index >= 250),
    )
    .await
    .expect("a snapshot in time")
    .expect("peer alive")
    .snapshot_index;
    assert!(peer.status().halted.is_none());
    peer.shutdown().await.unwrap();

    // Restart from the directory: the snapshot must restore.
    let peer = start(&Net::default(), dir.path())
        .await
        .unwrap_or_else(|e| panic!("restart from the snapshot at {snapshot}: {e}"));
    wait_leader(&peer).await;
    let list = ListClient::new(peer.clone());
    assert_eq!(list.summary().await.unwrap(), want);
    assert_eq!(list.push(LEN + 1).await.unwrap(), LEN + 1);
    assert!(peer.status().halted.is_none());
    peer.shutdown().await.unwrap();
}

//! What a leader whose storage failed shows while it hands leadership over
//! (review s61, item 2e).
//!
//! `NodeTask::fail` steps the core down (`Raft::abdicate`) and sends the
//! hand-over's TimeoutNow itself. The node task's invariant (module docs
//! of `runtime::node`) is that a new role, term or leader is published
//! before any message of the batch that follows it leaves the node:
//! whoever hears from this node (here: the hand-over's target, which is
//! leading a round trip later) sees the step-down in its status. Before
//! the fix the status was rebuilt only after `fail` returned, so the
//! TimeoutNow left while the status still said `Leader` (and a status
//! report, which clients read for a leader's address, named the failed
//! node as leader) while the target was already campaigning.
//!
//! The test watches the failed leader's status from its own transport, at
//! the moment the TimeoutNow is handed to it: no timing is involved.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use crate::core::{Body, Message, NodeId, Role};
use crate::error::Applied;
use crate::prelude::*;
use crate::runtime::PeerStatus;
use crate::runtime::test_gate::until;
use crate::storage::vfs::{Fault, FaultRule, FaultyFs, FileOp};
use crate::transport::Transport;
use crate::transport::memory::{MemoryNetwork, MemoryTransport};

const ADDRS: [&str; 3] = ["handover-1:1", "handover-2:1", "handover-3:1"];
/// 25 ms: an election timeout of 250-500 ms, so that a leader's node task
/// not polled for a while on a loaded machine keeps its leadership.
const TICK: Duration = Duration::from_millis(25);

#[derive(StateMachine, Default, Serialize, Deserialize)]
struct Tally {
    n: u64,
}

#[crate::state_machine]
impl Tally {
    #[write]
    fn bump(&mut self) -> u64 {
        self.n += 1;
        self.n
    }

    #[read]
    fn get(&self) -> u64 {
        self.n
    }
}

/// What a peer's status said when its first TimeoutNow was sent.
#[derive(Default)]
struct Seen {
    /// The peer's status (set once it started).
    status: Mutex<Option<watch::Receiver<PeerStatus>>>,
    /// Its role and leader when it sent its first TimeoutNow.
    at_timeout_now: Mutex<Option<(Role, Option<NodeId>)>>,
}

/// The in-process transport, looking at its peer's status when the peer
/// sends a TimeoutNow.
struct Spy {
    inner: MemoryTransport,
    seen: Arc<Seen>,
}

impl Transport for Spy {
    fn send(&self, msg: Message) {
        if msg.body == Body::TimeoutNow
            && let (Ok(status), Ok(mut at)) =
                (self.seen.status.lock(), self.seen.at_timeout_now.lock())
            && let Some(status) = status.as_ref()
            && at.is_none()
        {
            let s = status.borrow();
            *at = Some((s.role, s.leader));
        }
        self.inner.send(msg)
    }

    fn set_peers(&self, peers: BTreeMap<NodeId, String>) {
        self.inner.set_peers(peers)
    }
}

/// The TimeoutNow of a leader whose fsync failed leaves after its status
/// shows the step-down (module docs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_leaders_status_shows_the_step_down_before_its_handover_leaves() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let net = MemoryNetwork::new(1);
    let mut peers = Vec::new();
    let mut disks = Vec::new();
    let mut seens = Vec::new();
    for addr in ADDRS {
        let fs = FaultyFs::over_real();
        let seen = Arc::new(Seen::default());
        let (net, spy) = (net.clone(), seen.clone());
        let peer = Tally::peer()
            .listen(addr)
            .data_dir(dir.path().join(addr))
            .bootstrap_members(ADDRS)
            .tick(TICK)
            .file_system(Arc::new(fs.clone()))
            .transport(move |id, inbox: mpsc::Sender<Message>| {
                Arc::new(Spy {
                    inner: net.endpoint(id, inbox),
                    seen: spy,
                })
            })
            .start()
            .await
            .expect("the peer starts");
        if let Ok(mut status) = seen.status.lock() {
            *status = Some(peer.watch());
        }
        peers.push(peer);
        disks.push(fs);
        seens.push(seen);
    }
    // A leader that committed a write of its term (a write refused before
    // it reached the log, leadership having moved, is tried again).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let l = loop {
        let l = until("a leader", || {
            peers.iter().position(|p| p.status().role == Role::Leader)
        })
        .await;
        match TallyClient::new(peers[l].clone()).bump().await {
            Ok(_) => break l,
            Err(e) => assert!(
                e.applied() == Applied::No && tokio::time::Instant::now() < deadline,
                "no leader took a write: {e}"
            ),
        }
    };
    let leader = peers[l].clone();
    let l_id = leader.id();

    disks[l].inject(FaultRule::new(FileOp::Fsync, Fault::Io).on(".wal"));
    // The write meets the failure (it may still commit: two followers are
    // a quorum without the leader's fsync).
    let _ = TallyClient::new(leader.clone()).bump().await;
    let seen = until("the failed leader's TimeoutNow", || {
        seens[l].at_timeout_now.lock().ok().and_then(|at| *at)
    })
    .await;
    assert!(
        leader.status().fatal.is_some(),
        "the TimeoutNow came from the storage failure"
    );
    assert_ne!(
        seen,
        (Role::Leader, Some(l_id)),
        "the hand-over's TimeoutNow left while the failed node's status still showed it leading"
    );
    for p in peers {
        let _ = p.shutdown().await;
    }
}

//! A new leader's first stamp while its apply thread is behind (the cause
//! of seed 1787 of the multi-group whole-runtime simulation).
//!
//! A leader anchors its term's stamps on the replicated time its own apply
//! thread reached (`stamps` module). A node whose apply thread has not yet
//! applied a single stamped entry reports replicated time 0, which used to
//! mean "the cluster has no time yet: anchor on the wall clock"; but the
//! entries it has not applied may carry the cluster's time. In the
//! simulation a node restarted without a snapshot, won an election with its
//! (deliberately slow) apply thread still replaying, and stamped a client
//! write with its wall clock, 818 s ahead: replicated time jumped and every
//! session expired at once.
//!
//! The test builds that state with no timing left to chance: node B's apply
//! thread (and only B's: the threads are named per node) blocks in the first
//! stamped entry until the test opens a gate, so B's replicated time stays
//! 0; a session is opened through the leader A; B's wall clock jumps an hour
//! ahead; leadership moves to B, and a write under the session is handed to
//! B before the gate opens. The write must succeed: the session must not
//! expire.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::test_gate::{ApplyGate, apply_threads_named_after, lead_by, until};
use crate::core::Role;
use crate::prelude::*;
use crate::runtime::session::SessionRef;
use crate::transport::memory::MemoryNetwork;

#[derive(StateMachine, Default, Serialize, Deserialize)]
struct Tally {
    n: u64,
}

/// Holds B's apply thread (module docs).
static GATE: ApplyGate = ApplyGate::new();

#[crate::state_machine]
impl Tally {
    /// Blocks the gated node's apply thread until the gate opens; returns
    /// at once everywhere else.
    #[write]
    fn hold(&mut self) -> u64 {
        GATE.hold_if_gated();
        self.n
    }

    #[write]
    fn add(&mut self, by: u64) -> u64 {
        self.n += by;
        self.n
    }
}

const ADDRS: [&str; 3] = ["stamp-a:1", "stamp-b:1", "stamp-c:1"];
const HOUR_MS: u64 = 60 * 60 * 1000;
/// Far below the hour B's clock jumps, far above the test's duration.
const TTL: Duration = Duration::from_secs(20);

async fn start(net: &MemoryNetwork, addr: &str, skew_ms: Arc<AtomicU64>) -> Peer<Tally> {
    let net = net.clone();
    Tally::peer()
        .in_memory()
        .listen(addr)
        .bootstrap_members(ADDRS)
        .tick(Duration::from_millis(20))
        .session_ttl(TTL)
        .wall_clock(move || super::node::system_clock_ms() + skew_ms.load(Ordering::SeqCst))
        .threads(apply_threads_named_after(addr))
        .transport(move |id, inbox| Arc::new(net.endpoint(id, inbox)))
        .start()
        .await
        .expect("peer starts")
}

/// See the module docs.
#[tokio::test(flavor = "current_thread")]
async fn a_new_leader_behind_on_apply_does_not_stamp_with_its_jumped_wall_clock() {
    let _open = GATE.open_on_drop();
    let net = MemoryNetwork::new(11);
    let skews: Vec<Arc<AtomicU64>> = (0..3).map(|_| Arc::default()).collect();
    let mut peers = Vec::new();
    for (addr, skew) in ADDRS.iter().zip(&skews) {
        peers.push(start(&net, addr, skew.clone()).await);
    }
    let a = until("a leader", || {
        peers.iter().position(|p| p.status().role == Role::Leader)
    })
    .await;
    let b = (a + 1) % 3;
    GATE.hold_thread_of(ADDRS[b]);

    // The first stamped entry: B's apply thread blocks in it (A and C apply
    // it), so B has applied no stamp.
    peers[a].write(TallyWrite::Hold).await.expect("hold");
    GATE.wait_entered().await;
    let session = peers[a].open_session().await.expect("open a session");
    let opened = peers[a].status().last_index;
    until("B holds the session's open entry", || {
        (peers[b].status().commit >= opened).then_some(())
    })
    .await;

    // B's wall clock steps an hour ahead; B leads.
    skews[b].store(HOUR_MS, Ordering::SeqCst);
    let b_id = peers[b].id();
    // Asked again of whoever leads until B leads (a transfer lapses under
    // load).
    lead_by(&peers, b).await;

    // A write under the session reaches B while B's apply is still held.
    let peer = peers[b].clone();
    let command =
        crate::state_machine::encode("command", &TallyWrite::Add { by: 1 }).expect("encodes");
    let mut write = Box::pin(async move {
        peer.write_in_session(
            command,
            Some(SessionRef {
                id: session,
                seq: 1,
                acked_below: 1,
            }),
        )
        .await
    });
    // One poll sends the write to B's node task (admission has room).
    tokio::select! {
        biased;
        r = &mut write => panic!("the write was answered with B's apply held: {r:?}"),
        () = std::future::ready(()) => {}
    }
    // Commands are handled in order: once this one is answered, B's node
    // task has handled the write.
    peers[b].transfer_leadership(b_id).await.expect("no-op");
    assert_eq!(
        peers[b].status().role,
        Role::Leader,
        "B still leads when it takes the write"
    );
    GATE.open();

    let out = tokio::time::timeout(Duration::from_secs(20), write)
        .await
        .expect("the write is answered")
        .expect("the session is still there: B's clock jump did not expire it");
    let out: TallyWriteOutput = crate::state_machine::decode("output", &out).expect("decodes");
    assert!(matches!(out, TallyWriteOutput::Add(1)));
    for p in &peers {
        p.shutdown().await.expect("shutdown");
    }
}

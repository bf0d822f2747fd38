//! Follower flow control with real nodes (`core::replication` module docs,
//! `node` module invariants): a follower whose state machine is blocked
//! stops taking in the leader's entries once its apply backlog reaches
//! [`MAX_APPLY_BACKLOG_BYTES`], so its log (in memory and in its WAL) stays
//! bounded while the others keep committing; released, it catches up.
//!
//! Three peers with real WAL files on an in-process network. Follower B's
//! apply thread (and only B's: the threads are named per node) blocks in a
//! handler until the test opens a gate; the leader then writes 48 commands
//! of 1 MiB each, half again the bound, one at a time.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use super::node::MAX_APPLY_BACKLOG_BYTES;
use super::test_gate::{ApplyGate, apply_threads_named_after, until};
use crate::core::Role;
use crate::prelude::*;
use crate::transport::memory::MemoryNetwork;

#[derive(StateMachine, Default, Serialize, Deserialize)]
struct Pile {
    held: u64,
    padded: u64,
}

/// Holds B's apply thread (module docs).
static GATE: ApplyGate = ApplyGate::new();
/// The apply thread on which `trip` panics (the second test's B).
static TRIP: OnceLock<String> = OnceLock::new();

#[crate::state_machine]
impl Pile {
    /// Blocks the gated node's apply thread until the gate opens; returns
    /// at once everywhere else.
    #[write]
    fn hold(&mut self) -> u64 {
        GATE.hold_if_gated();
        self.held += 1;
        self.held
    }

    /// Panics, halting the node, on the apply thread named by `TRIP`;
    /// applies everywhere else.
    #[write(on_error = "halt")]
    fn trip(&mut self) -> u64 {
        if TRIP.get().map(String::as_str) == std::thread::current().name() {
            panic!("tripped on purpose");
        }
        self.held
    }

    /// A large command.
    #[write]
    fn pad(&mut self, bytes: Vec<u8>) -> u64 {
        self.padded += bytes.len() as u64;
        self.padded
    }

    #[read]
    fn padded(&self) -> u64 {
        self.padded
    }
}

const ADDRS: [&str; 3] = ["flow-a:1", "flow-b:1", "flow-c:1"];
/// Commands of 1 MiB the leader writes behind B's blocked apply.
const PADS: usize = 48;

async fn start(
    net: &MemoryNetwork,
    dir: &std::path::Path,
    addrs: [&str; 3],
    addr: &str,
) -> Peer<Pile> {
    let net = net.clone();
    Pile::peer()
        .data_dir(dir)
        .listen(addr)
        .bootstrap_members(addrs)
        // Elections take 0.5–1 s: megabytes copied and written with the
        // machine busy must not look like a dead leader.
        .tick(Duration::from_millis(50))
        .threads(apply_threads_named_after(addr))
        .transport(move |id, inbox| Arc::new(net.endpoint(id, inbox)))
        .start()
        .await
        .expect("peer starts")
}

/// The leader `a` writes [`PADS`] commands of 1 MiB; returns its commit
/// index then and B's status once C committed them all and B (which takes
/// in nothing past its apply bound) learned that what it holds is
/// committed (heartbeats carry the commit index it holds entries for).
/// `f`, failing the test if it has not ended within 30 s (`what` says
/// what was awaited): a regression that never answers fails the test
/// instead of hanging the run.
async fn bounded<T>(f: impl std::future::Future<Output = T>, what: &str) -> T {
    tokio::time::timeout(Duration::from_secs(30), f)
        .await
        .unwrap_or_else(|_| panic!("{what}: not within 30 s"))
}

async fn pad_behind_b(
    peers: &[Peer<Pile>],
    a: usize,
    b: usize,
    c: usize,
) -> (u64, super::PeerStatus) {
    for _ in 0..PADS {
        bounded(
            peers[a].write(PileWrite::Pad {
                bytes: vec![7u8; 1 << 20],
            }),
            "a padding write",
        )
        .await
        .expect("pad");
    }
    let last = peers[a].status().commit;
    until("C commits every padding", || {
        (peers[c].status().commit >= last).then_some(())
    })
    .await;
    let b_status = until("B learns what it holds is committed", || {
        let s = peers[b].status();
        (s.commit == s.last_index).then_some(s)
    })
    .await;
    (last, b_status)
}

/// See the module docs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_with_a_blocked_state_machine_keeps_its_log_bounded_and_catches_up() {
    let _open = GATE.open_on_drop();
    let dirs: Vec<_> = ADDRS
        .iter()
        .map(|_| tempfile::tempdir().expect("a temporary directory"))
        .collect();
    let net = MemoryNetwork::new(47);
    let mut peers = Vec::new();
    for (addr, dir) in ADDRS.iter().zip(&dirs) {
        peers.push(start(&net, dir.path(), ADDRS, addr).await);
    }
    let a = until("a leader", || {
        peers.iter().position(|p| p.status().role == Role::Leader)
    })
    .await;
    let (b, c) = ((a + 1) % 3, (a + 2) % 3);
    GATE.hold_thread_of(ADDRS[b]);
    bounded(peers[a].write(PileWrite::Hold), "the holding write")
        .await
        .expect("hold");
    bounded(GATE.wait_entered(), "B's apply thread entering the gate").await;
    let held_at = peers[b].status().applied;

    let (last, b_status) = pad_behind_b(&peers, a, b, c).await;
    assert_eq!(b_status.applied, held_at, "premise: B's apply is held");
    // Past its applied index B holds the bound (32 commands of 1 MiB) and
    // what was in flight when it paused; without flow control it holds
    // all 48.
    let unapplied = b_status.last_index - b_status.applied;
    let bound_entries = (MAX_APPLY_BACKLOG_BYTES >> 20) as u64 + 4;
    assert!(
        unapplied <= bound_entries,
        "B holds {unapplied} entries past its applied index {} (last {}, the leader's {last}); at most {bound_entries} expected",
        b_status.applied,
        b_status.last_index
    );
    assert!(
        b_status.apply_backlog_bytes > MAX_APPLY_BACKLOG_BYTES as u64
            && b_status.apply_backlog_bytes <= MAX_APPLY_BACKLOG_BYTES as u64 + (4 << 20),
        "B's apply backlog is {} bytes",
        b_status.apply_backlog_bytes
    );
    assert_eq!(peers[a].status().role, Role::Leader, "the leader changed");

    // Released, B applies its backlog, unpauses and catches up.
    GATE.open();
    until("B catches up", || {
        let s = peers[b].status();
        (s.last_index >= last && s.applied >= last).then_some(())
    })
    .await;
    let (out, _) = bounded(
        peers[b].read_with(PileRead::Padded, crate::client::Consistency::Stale),
        "a stale read on B",
    )
    .await
    .expect("stale read on B");
    assert!(
        matches!(out, PileReadOutput::Padded(n) if n == (PADS as u64) << 20),
        "B's state after catching up: {out:?}"
    );
    for p in &peers {
        p.shutdown().await.expect("shutdown");
    }
}

const HALT_ADDRS: [&str; 3] = ["flow-halt-a:1", "flow-halt-b:1", "flow-halt-c:1"];

/// A halted follower (DESIGN §6: it keeps voting, and replicating up to the
/// apply bound, `Raft::set_halted`) takes in
/// the leader's entries until its backlog, which its halted apply thread
/// never drains, reaches the bound; from then on its log stops growing,
/// while the others keep committing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_halted_follower_stops_growing_its_log_at_the_apply_bound() {
    let dirs: Vec<_> = HALT_ADDRS
        .iter()
        .map(|_| tempfile::tempdir().expect("a temporary directory"))
        .collect();
    let net = MemoryNetwork::new(48);
    let mut peers = Vec::new();
    for (addr, dir) in HALT_ADDRS.iter().zip(&dirs) {
        peers.push(start(&net, dir.path(), HALT_ADDRS, addr).await);
    }
    let a = until("a leader", || {
        peers.iter().position(|p| p.status().role == Role::Leader)
    })
    .await;
    let (b, c) = ((a + 1) % 3, (a + 2) % 3);
    TRIP.set(format!("raftkit-apply@{}", HALT_ADDRS[b]))
        .expect("set once");
    peers[a].write(PileWrite::Trip).await.expect("trip");
    let halted_at = until("B halts", || {
        let s = peers[b].status();
        s.halted.is_some().then_some(s.applied)
    })
    .await;

    let (last, b_status) = pad_behind_b(&peers, a, b, c).await;
    assert_eq!(b_status.applied, halted_at, "premise: B applies nothing");
    let unapplied = b_status.last_index - b_status.applied;
    let bound_entries = (MAX_APPLY_BACKLOG_BYTES >> 20) as u64 + 4;
    assert!(
        unapplied <= bound_entries,
        "halted B holds {unapplied} entries past its applied index {} (last {}, the leader's {last}); at most {bound_entries} expected",
        b_status.applied,
        b_status.last_index
    );
    assert!(
        b_status.apply_backlog_bytes > MAX_APPLY_BACKLOG_BYTES as u64,
        "halted B's backlog is {} bytes: it stopped replicating before the bound",
        b_status.apply_backlog_bytes
    );
    for p in &peers {
        let _ = p.shutdown().await;
    }
}

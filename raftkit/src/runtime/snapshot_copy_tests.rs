//! A state machine that gives a copy of itself for snapshots
//! (`#[raftkit(snapshot = "clone")]`, [`StateMachine::snapshot_copy`]) is
//! serialized on the snapshot thread, not the apply thread: writes go on
//! being applied and answered while the copy's serialization is held up, the
//! log is compacted only once it is saved, and a restart from it restores
//! the state.
//!
//! A copy that does not serialize fails its snapshot as a state that does
//! not: reported in the status, retried later, the log not compacted, and
//! writes go on.
//!
//! The state holds a field whose serialization waits at a gate the test
//! opens, so "held up" is a state of the test, not a guess at timing. A
//! runtime that serialized the state on the apply thread (the copy ignored)
//! stops answering writes at the first snapshot and fails the test at its
//! first write deadline.

use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use serde::Serializer;

use super::test_gate::until;
use crate::core::Role;
use crate::prelude::*;
use crate::transport::memory::MemoryNetwork;

/// The gate every serialization of a [`Held`] waits at while it is closed.
struct Gate {
    /// (open, serializations that reached the gate).
    state: Mutex<(bool, usize)>,
    cv: Condvar,
}

static GATE: Gate = Gate {
    state: Mutex::new((false, 0)),
    cv: Condvar::new(),
};

impl Gate {
    fn pass(&self) {
        let mut g = self.state.lock().expect("gate lock");
        g.1 += 1;
        while !g.0 {
            g = self.cv.wait(g).expect("gate lock");
        }
    }

    fn reached(&self) -> usize {
        self.state.lock().expect("gate lock").1
    }

    fn open(&self) {
        self.state.lock().expect("gate lock").0 = true;
        self.cv.notify_all();
    }
}

/// Opens [`GATE`] when dropped: a failing test must not leave a save
/// waiting at it, or the peer's shutdown would wait for it for ever.
struct OpenOnDrop;

impl Drop for OpenOnDrop {
    fn drop(&mut self) {
        GATE.open();
    }
}

/// Serializes as `()`, once [`GATE`] is open.
#[derive(Clone, Default, Deserialize)]
struct Held;

impl Serialize for Held {
    fn serialize<Z: Serializer>(&self, s: Z) -> Result<Z::Ok, Z::Error> {
        GATE.pass();
        s.serialize_unit()
    }
}

#[derive(StateMachine, Default, Clone, Serialize, Deserialize)]
#[raftkit(snapshot = "clone")]
struct Gated {
    n: u64,
    held: Held,
}

#[crate::state_machine]
impl Gated {
    #[write]
    fn add(&mut self, by: u64) -> u64 {
        self.n += by;
        self.n
    }

    #[read]
    fn get(&self) -> u64 {
        self.n
    }
}

/// A state whose copy never serializes.
#[derive(StateMachine, Default, Clone, Serialize, Deserialize)]
#[raftkit(snapshot = "clone")]
struct Unserializable {
    n: u64,
    broken: Broken,
}

/// Fails every serialization.
#[derive(Clone, Default, Deserialize)]
struct Broken;

impl Serialize for Broken {
    fn serialize<Z: Serializer>(&self, _: Z) -> Result<Z::Ok, Z::Error> {
        Err(serde::ser::Error::custom("broken on purpose"))
    }
}

#[crate::state_machine]
impl Unserializable {
    #[write]
    fn add(&mut self, by: u64) -> u64 {
        self.n += by;
        self.n
    }
}

async fn start(dir: &std::path::Path) -> Peer<Gated> {
    start_one(dir, "copy:1").await
}

/// One peer of `S` leading a cluster of its own, a snapshot every 5
/// entries.
async fn start_one<S: StateMachine + Default>(dir: &std::path::Path, addr: &str) -> Peer<S> {
    let net = MemoryNetwork::new(7);
    let peer = S::peer()
        .data_dir(dir)
        .listen(addr)
        .bootstrap_members([addr.to_string()])
        .snapshot_every(5)
        .snapshot_log_ratio(0.0)
        .tick(Duration::from_millis(10))
        .transport(move |id, inbox| Arc::new(net.endpoint(id, inbox)))
        .start()
        .await
        .expect("peer starts");
    until("the peer leads", || {
        (peer.status().role == Role::Leader).then_some(())
    })
    .await;
    peer
}

async fn add(peer: &Peer<Gated>) -> u64 {
    // (20 s: a write held behind the gate is never answered; 5 s was
    // within reach of a loaded CI machine.)
    let out = tokio::time::timeout(
        Duration::from_secs(20),
        peer.write(GatedWrite::Add { by: 1 }),
    )
    .await
    .expect("a write is answered within 20 s while a snapshot is being serialized")
    .expect("the write succeeds");
    match out {
        GatedWriteOutput::Add(n) => n,
    }
}

/// See the module docs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_go_on_while_a_copy_of_the_state_is_serialized_for_a_snapshot() {
    let _open = OpenOnDrop;
    let dir = tempfile::tempdir().expect("a temporary directory");
    let peer = start(dir.path()).await;
    let mut n = 0;
    // The fifth entry applied (with the leader's no-op) asks for a
    // snapshot, whose serialization then waits at the closed gate.
    while GATE.reached() == 0 {
        n = add(&peer).await;
        assert!(n <= 10, "no snapshot after {n} writes (every 5 entries)");
    }
    for _ in 0..20 {
        n = add(&peer).await;
    }
    // The status once it shows every entry committed and applied: a write
    // is answered by the apply thread, possibly before the node task
    // publishes the commit that covers it, and a snapshot saved once the
    // gate opens may cover the last write (the one held, then a newer one:
    // every 5 entries).
    let status = until("the status shows every write committed", || {
        let s = peer.status();
        (s.commit >= s.last_index && s.applied >= s.commit).then_some(s)
    })
    .await;
    assert_eq!(
        status.snapshot_index, 0,
        "a snapshot was saved while its serialization was held"
    );

    GATE.open();
    let saved = until("the held snapshot is saved", || {
        let s = peer.status();
        (s.snapshot_index > 0).then_some(s.snapshot_index)
    })
    .await;
    assert!(saved <= status.commit);
    assert_eq!(peer.status().snapshot_error, None);
    peer.shutdown().await.expect("shuts down");

    // Restarted from the snapshot (and the log after it).
    let peer = start(dir.path()).await;
    let read = peer.read(GatedRead::Get).await.expect("read");
    assert!(
        matches!(read, GatedReadOutput::Get(m) if m == n),
        "{n} writes, read {read:?}"
    );
    assert!(peer.status().snapshot_index >= saved);
    peer.shutdown().await.expect("shuts down");
}

/// See the module docs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_that_does_not_serialize_fails_the_snapshot_and_writes_go_on() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let peer: Peer<Unserializable> = start_one(dir.path(), "broken:1").await;
    for _ in 0..10 {
        tokio::time::timeout(
            Duration::from_secs(20),
            peer.write(UnserializableWrite::Add { by: 1 }),
        )
        .await
        .expect("answered")
        .expect("the write succeeds");
    }
    let status = until("the snapshot failure shows", || {
        let s = peer.status();
        (s.snapshot_failures > 0).then_some(s)
    })
    .await;
    let error = status.snapshot_error.unwrap_or_default();
    // (postcard keeps no custom message: "Serde Serialization Error".)
    assert!(error.contains("copy did not serialize"), "{error}");
    assert_eq!(
        status.snapshot_index, 0,
        "a failed snapshot compacted the log"
    );
    let out = peer
        .write(UnserializableWrite::Add { by: 1 })
        .await
        .expect("writes go on after the failure");
    assert!(matches!(out, UnserializableWriteOutput::Add(11)));
    peer.shutdown().await.expect("shuts down");
}

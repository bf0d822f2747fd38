//! The leader's address a halted node's apply thread gives the reads it
//! refuses (teeth, stop 53).
//!
//! Once its state machine halted, a node refuses every call "not applied":
//! `NotLeader` with the leader's address when it knows one, else
//! `Unavailable` (`NodeTask::refused_halted`, `apply::refused_read`). The
//! reads that were already handed to the apply thread when it halted are
//! refused there, with the address the node task last told it
//! (`ApplySender::set_leader`). That address must follow the node's view
//! of the leader: it must be updated not only when the leader changes but
//! also when the leader's address becomes known, as it does on a node that
//! joins (it starts with an empty configuration, hears of the leader with
//! its first AppendEntries, and learns the leader's address only from the
//! configuration entries that follow, thesis §4.2.1).
//!
//! The test builds that node with no timing left to chance: D, started
//! empty, is added as a learner of the one-voter cluster A; D's apply
//! thread (and only D's: threads are named per node) blocks in a handler
//! until the test opens a gate; behind it a write whose handler panics on
//! D only (`on_error = "halt"`); then a linearizable read on D, handed to
//! the apply thread at its read index (the leader's commit, past the
//! poisoned write) before the gate opens. The apply thread halts at the
//! poisoned write and must refuse the read with `NotLeader` naming A.

use std::sync::Arc;
use std::time::Duration;

use super::PeerBuilder;
use super::test_gate::{ApplyGate, apply_threads_named_after, until};
use crate::core::Role;
use crate::error::Applied;
use crate::prelude::*;
use crate::transport::memory::MemoryNetwork;

const A: &str = "hint-a:1";
const D: &str = "hint-d:1";

/// Holds D's apply thread (module docs).
static GATE: ApplyGate = ApplyGate::new();

#[derive(StateMachine, Default, Serialize, Deserialize)]
#[raftkit(on_error = "halt")]
struct Beacon {
    n: u64,
}

#[crate::state_machine]
impl Beacon {
    /// Blocks D's apply thread until the gate opens; returns at once
    /// everywhere else.
    #[write]
    fn hold(&mut self) -> u64 {
        GATE.hold_if_gated();
        self.n
    }

    /// Panics on D's apply thread only: D halts at this entry.
    #[write]
    fn poison(&mut self) -> u64 {
        if std::thread::current().name() == Some(&format!("raftkit-apply@{D}")[..]) {
            panic!("poisoned on {D}");
        }
        self.n += 1;
        self.n
    }

    #[read]
    fn get(&self) -> u64 {
        self.n
    }
}

fn builder(net: &MemoryNetwork, addr: &str) -> PeerBuilder<Beacon> {
    let net = net.clone();
    Beacon::peer()
        .in_memory()
        .listen(addr)
        .tick(Duration::from_millis(10))
        .threads(apply_threads_named_after(addr))
        .transport(move |id, inbox| Arc::new(net.endpoint(id, inbox)))
}

/// See the module docs.
#[tokio::test(flavor = "current_thread")]
async fn a_joined_nodes_halted_apply_thread_refuses_reads_naming_the_leader() {
    let _open = GATE.open_on_drop();
    let net = MemoryNetwork::new(11);
    let a = builder(&net, A)
        .bootstrap_members([A])
        .start()
        .await
        .expect("A starts");
    until("A leads", || {
        (a.status().role == Role::Leader).then_some(())
    })
    .await;
    // D starts empty: no configuration, so no address of anyone.
    let d = builder(&net, D).start().await.expect("D starts");
    GATE.hold_thread_of(D);
    a.add_learner(D).await.expect("D added");
    until("D follows A and knows its address", || {
        let s = d.status();
        (s.leader == Some(a.id()) && s.leader_addr.as_deref() == Some(A)).then_some(())
    })
    .await;

    // D's apply thread blocks on `hold`; behind it, the write D halts at.
    a.write(BeaconWrite::Hold).await.expect("hold");
    GATE.wait_entered().await;
    a.write(BeaconWrite::Poison)
        .await
        .expect("poison (A applies it)");
    let poisoned = a.status().commit;
    until("D knows the poisoned write committed", || {
        (d.status().commit >= poisoned).then_some(())
    })
    .await;

    // A linearizable read on D, at the leader's commit index (past the
    // poisoned write): handed to D's held apply thread, where it waits.
    let rounds = d.status().read_index_latency.count;
    let reader = d.clone();
    let read = tokio::spawn(async move { reader.read(BeaconRead::Get).await });
    until("D handed the read to its apply thread", || {
        (d.status().read_index_latency.count > rounds).then_some(())
    })
    .await;
    assert!(
        !read.is_finished(),
        "the read on D was answered with D's apply held"
    );
    assert_eq!(d.status().halted, None, "premise: D has not halted yet");

    GATE.open();
    let r = tokio::time::timeout(Duration::from_secs(20), read)
        .await
        .expect("the read is answered")
        .expect("the read's task");
    match &r {
        Err(e @ Error::NotLeader { hint: Some(hint) }) if hint == A => {
            assert_eq!(e.applied(), Applied::No, "{e:?}");
        }
        other => panic!(
            "the read D's halted apply thread refused got {other:?}, not NotLeader naming the leader {A}"
        ),
    }
    until("D halted", || d.status().halted).await;
    // The node task refuses the next call the same way.
    let later = d.read(BeaconRead::Get).await;
    assert!(
        matches!(&later, Err(Error::NotLeader { hint: Some(h) }) if h == A),
        "a read on the halted D got {later:?}"
    );
    d.shutdown().await.expect("D shuts down");
    a.shutdown().await.expect("A shuts down");
}

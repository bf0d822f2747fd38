//! A shutdown that reaches a gathering node task while it yields
//! (`PeerBuilder::gather`, on for a multi-group node's replicas).
//!
//! A gathering node task yields once per round, then takes the commands
//! queued meanwhile (`take_commands`) before it drains its core. A
//! `Command::Shutdown` met there must stop the task
//! and be answered, exactly as one met in the task's `select`: dropped, the
//! caller's `Peer::shutdown` learns nothing and then waits for a task that
//! never ends (teeth round 6 mutant 608, which only a 300 s hang of the
//! multi-group tests caught).
//!
//! The set-up leaves no timing to chance on the test's single-threaded
//! runtime: a task asks the leader for a no-op transfer (to itself); the node
//! task answers it inside its round, which wakes the asking task, and then
//! yields. The asking task, ready before the yielding node task resumes,
//! sends the shutdown, which the node task therefore meets in its gathering
//! pass, not in its `select`. The test waits a few seconds at most.
//!
//! A second test: a write the node task took and proposed is answered, when
//! the peer stops before it commits, with an error that says it may have
//! been applied (its entry is in the log and a later leader may commit it);
//! only what was never proposed is "not applied" (teeth, stop 44: the
//! dropped reply of such a write reported as `Unavailable` went unnoticed).

use std::sync::Arc;
use std::time::Duration;

use super::test_gate::until;
use crate::core::Role;
use crate::prelude::*;
use crate::transport::memory::MemoryNetwork;

#[derive(StateMachine, Default, Serialize, Deserialize)]
struct Counter {
    n: u64,
}

#[crate::state_machine]
impl Counter {
    #[write]
    fn add(&mut self, by: u64) -> u64 {
        self.n += by;
        self.n
    }
}

/// A single gathering peer that leads.
async fn a_gathering_leader(addr: &str) -> Peer<Counter> {
    let net = MemoryNetwork::new(5);
    let peer = Counter::peer()
        .in_memory()
        .listen(addr)
        .bootstrap_members([addr])
        .tick(Duration::from_millis(10))
        .gather(true)
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

/// See the module docs.
#[tokio::test(flavor = "current_thread")]
async fn a_shutdown_queued_while_a_gathering_node_task_yields_is_answered_and_stops_it() {
    let peer = a_gathering_leader("shut-a:1").await;
    peer.write(CounterWrite::Add { by: 1 })
        .await
        .expect("write");
    let id = peer.id();
    let stopper = tokio::spawn({
        let peer = peer.clone();
        async move {
            // Answered inside the node task's round, which then yields.
            peer.transfer_leadership(id).await.expect("no-op transfer");
            peer.shutdown().await
        }
    });
    // (20 s: the defect never answers; 5 s was within reach of a loaded
    // CI machine.)
    let stopped = tokio::time::timeout(Duration::from_secs(20), stopper)
        .await
        .expect("the shutdown completes within 20 s (the node task stopped and answered it)")
        .expect("the stopping task ran to its end");
    stopped.expect("a clean shutdown");
    // Stopped for good: a later call is refused at once.
    let refused = tokio::time::timeout(
        Duration::from_secs(20),
        peer.write(CounterWrite::Add { by: 1 }),
    )
    .await
    .expect("a call to a stopped peer is answered at once");
    assert!(refused.is_err(), "a stopped peer took a write: {refused:?}");
}

/// See the module docs.
#[tokio::test(flavor = "current_thread")]
async fn a_write_proposed_when_its_peer_stops_may_have_been_applied() {
    const ADDRS: [&str; 3] = ["shut-p:1", "shut-q:1", "shut-r:1"];
    let net = MemoryNetwork::new(6);
    let mut peers = Vec::new();
    for addr in ADDRS {
        let net = net.clone();
        peers.push(
            Counter::peer()
                .in_memory()
                .listen(addr)
                .bootstrap_members(ADDRS)
                // An election timeout of 3–6 s: the isolated leader steps
                // down under CheckQuorum only after one, so a loaded machine
                // that stalls this test between the isolation and the
                // proposal for less than 2 s still finds it leading (at
                // 10 ms it stepped down after 100 ms, and the write was then
                // refused before it was logged; at 100 ms a stall of 1 s
                // of a CI machine running every test binary could do it).
                .tick(Duration::from_millis(300))
                .transport(move |id, inbox| Arc::new(net.endpoint(id, inbox)))
                .start()
                .await
                .expect("peer starts"),
        );
    }
    let l = until("a leader", || {
        peers.iter().position(|p| p.status().role == Role::Leader)
    })
    .await;
    peers[l]
        .write(CounterWrite::Add { by: 1 })
        .await
        .expect("write");
    // Cut off, the leader logs the next write and cannot commit it.
    net.isolate(peers[l].id());
    let before = peers[l].status().last_index;
    let write = tokio::spawn({
        let peer = peers[l].clone();
        async move { peer.write(CounterWrite::Add { by: 1 }).await }
    });
    until("the leader logs the write", || {
        (peers[l].status().last_index > before).then_some(())
    })
    .await;
    peers[l].shutdown().await.expect("a clean shutdown");
    let r = tokio::time::timeout(Duration::from_secs(20), write)
        .await
        .expect("the write is answered once its peer stopped")
        .expect("the writing task ran to its end");
    match r {
        Err(e) => assert_ne!(
            e.applied(),
            crate::error::Applied::No,
            "a write in the log when its peer stopped was reported not applied: {e:?}"
        ),
        Ok(n) => panic!("a write that could not commit was acknowledged: {n:?}"),
    }
    net.heal();
    for (i, p) in peers.iter().enumerate() {
        if i != l {
            p.shutdown().await.expect("shutdown");
        }
    }
}

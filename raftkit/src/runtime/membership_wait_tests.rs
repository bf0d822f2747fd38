//! How long and on what `add_server` waits (teeth, stop 56): the catch-up
//! rounds are timed in the election timeout the core is configured with
//! (thesis §4.2.1: a round that completes within an election timeout means
//! the learner is close enough), and a promotion waits for a change in
//! flight to commit instead of being refused by it (one change at a time,
//! thesis §4.1).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use super::test_gate::until;
use crate::core::{Body, Role};
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

/// A peer at `addr` on `net`, ticking every `tick`, one of the voters
/// `voters` (none: it waits to be added).
async fn start(
    net: &MemoryNetwork,
    addr: &str,
    voters: &[&str],
    tick: Duration,
    election_ticks: u32,
) -> Peer<Counter> {
    let net = net.clone();
    let mut builder = Counter::peer()
        .in_memory()
        .listen(addr)
        .tick(tick)
        .election_ticks(election_ticks)
        .transport(move |id, inbox| Arc::new(net.endpoint(id, inbox)));
    if !voters.is_empty() {
        builder = builder.bootstrap_members(voters.iter().copied());
    }
    builder.start().await.expect("peer starts")
}

/// A learner that never answers fails `add_server` with `Timeout` after
/// the catch-up round's bound of ten election timeouts, the election
/// timeout being the configured `election_ticks` ticks (here 40 ticks of
/// 5 ms: 200 ms, so 2 s), not ten ticks whatever the configuration (stop
/// 55's "not done" 1: `Peer::election_timeout` was `tick * 10`, which gave
/// up after 500 ms here). The bound is a lower one only: a timer never
/// fires early, however loaded the machine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_catch_up_bound_follows_the_configured_election_ticks() {
    const TICK: Duration = Duration::from_millis(5);
    const ELECTION_TICKS: u32 = 40;
    let net = MemoryNetwork::new(5);
    let leader = start(&net, "wait-a:1", &["wait-a:1"], TICK, ELECTION_TICKS).await;
    until("the peer leads", || {
        (leader.status().role == Role::Leader).then_some(())
    })
    .await;
    leader
        .write(CounterWrite::Add { by: 1 })
        .await
        .expect("a write");
    // Nobody listens at the learner's address: it never catches up.
    let started = Instant::now();
    let added = tokio::time::timeout(
        Duration::from_secs(60),
        leader.add_server("wait-nobody:1", |_| {}),
    )
    .await
    .expect("add_server is answered");
    let took = started.elapsed();
    assert!(
        matches!(added, Err(Error::Timeout)),
        "a learner that never answers: {added:?}"
    );
    let bound = TICK * ELECTION_TICKS * 10;
    assert!(
        took >= bound,
        "add_server gave up on the learner after {took:?}, before ten configured election timeouts ({bound:?})"
    );
    let _ = leader.shutdown().await;
}

/// A promotion that finds another change in flight (proposed, not yet
/// committed) waits for it to commit and then promotes, rather than
/// sending the promotion at once to be refused "already in flight" (teeth,
/// stop 55: mutant RM5, `add_server` without `wait_no_change_in_flight`,
/// survived). Voters A and C, learner X caught up; the appends to C are
/// held back while another admin adds a learner, so that change stays in
/// flight; `add_server(X)` is started, and the appends are let through
/// only once it has finished its catch-up round and then either ended (a
/// promotion sent at once is refused within milliseconds) or waited half a
/// second. That window only gives a broken `add_server` time to show
/// itself: a correct one waits however long the change takes (up to ten
/// election timeouts, 5 s here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promotion_waits_for_a_change_in_flight_to_commit() {
    const VOTERS: [&str; 2] = ["wait-p1:1", "wait-p2:1"];
    const TICK: Duration = Duration::from_millis(50);
    let net = MemoryNetwork::new(6);
    let mut peers = Vec::new();
    for addr in VOTERS {
        peers.push(start(&net, addr, &VOTERS, TICK, 10).await);
    }
    let l = until("a leader", || {
        peers.iter().position(|p| p.status().role == Role::Leader)
    })
    .await;
    let (leader, other) = (peers[l].clone(), peers[1 - l].id());
    leader
        .write(CounterWrite::Add { by: 1 })
        .await
        .expect("a write");
    let learner = start(&net, "wait-x:1", &[], TICK, 10).await;
    leader.add_learner("wait-x:1").await.expect("the learner");

    // From now on (until `hold` is cleared) no AppendEntries reaches the
    // other voter; heartbeats do, so the leader keeps its quorum
    // (CheckQuorum) and its leadership.
    let hold = Arc::new(AtomicBool::new(true));
    net.observe({
        let hold = Arc::clone(&hold);
        Arc::new(move |_, m, _| {
            !(m.to == other
                && matches!(m.body, Body::AppendEntries { .. })
                && hold.load(Ordering::SeqCst))
        })
    });
    let in_flight = tokio::spawn({
        let leader = leader.clone();
        async move { leader.add_learner("wait-ghost:1").await }
    });
    until("another admin's change in flight", || {
        let st = leader.status();
        (st.config_index > st.commit).then_some(())
    })
    .await;
    let (steps_tx, mut steps) = tokio::sync::mpsc::unbounded_channel::<String>();
    let mut promotion = tokio::spawn({
        let leader = leader.clone();
        async move {
            leader
                .add_server("wait-x:1", move |s| {
                    let _ = steps_tx.send(s.to_string());
                })
                .await
        }
    });
    let caught_up = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(step) = steps.recv().await {
            if step.starts_with("catch-up round") {
                return Some(step);
            }
        }
        None
    })
    .await
    .expect("the learner's catch-up round ends within 20 s");
    assert!(
        caught_up.is_some(),
        "add_server ended before its catch-up round"
    );
    // The window (see the doc comment): an early answer is a refusal.
    let early = tokio::time::timeout(Duration::from_millis(500), &mut promotion).await;
    if let Ok(answer) = early {
        let answer = answer.expect("the promotion's task");
        panic!(
            "add_server answered while another change was in flight, before it committed: {answer:?}"
        );
    }
    hold.store(false, Ordering::SeqCst);
    tokio::time::timeout(Duration::from_secs(20), in_flight)
        .await
        .expect("the other admin's change commits once the appends flow")
        .expect("its task")
        .expect("the other admin's change");
    let promoted = tokio::time::timeout(Duration::from_secs(20), promotion)
        .await
        .expect("the promotion is answered")
        .expect("the promotion's task");
    assert!(
        promoted.is_ok(),
        "a promotion that found a change in flight: {promoted:?}"
    );
    let st = leader.status();
    assert!(
        st.members
            .iter()
            .any(|m| m.addr.as_deref() == Some("wait-x:1") && m.voter),
        "the learner was not promoted: {st:?}"
    );
    let _ = learner.shutdown().await;
    for p in &peers {
        let _ = p.shutdown().await;
    }
}

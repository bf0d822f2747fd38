//! How long `add_server` waits (teeth, stop 56): the catch-up rounds are
//! timed in the election timeout the core is configured with (thesis
//! §4.2.1: a round that completes within an election timeout means the
//! learner is close enough).

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

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

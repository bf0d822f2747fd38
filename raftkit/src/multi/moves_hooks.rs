//! Test-only faults and probes of moves and of the replica balancer
//! (`moves_tests`, `rebalance_tests`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::Duration;

use crate::core::NodeId;
use crate::error::Error;
use crate::runtime::PeerStatus;

/// Per node: how many of its next stray-learner removals fail.
static FAIL: Mutex<BTreeMap<NodeId, usize>> = Mutex::new(BTreeMap::new());
/// Per node: how many moves began their catch-up.
static BEGUN: Mutex<BTreeMap<NodeId, usize>> = Mutex::new(BTreeMap::new());
/// Nodes whose moves' catch-ups time out once the target was heard.
static HELD: Mutex<BTreeSet<NodeId>> = Mutex::new(BTreeSet::new());

/// Fails the next `n` removals of a failed balancing move's learner
/// by node `id`'s balancer.
pub(crate) fn fail_stray_removals(id: NodeId, n: usize) {
    FAIL.lock().unwrap_or_else(|p| p.into_inner()).insert(id, n);
}

/// Whether node `id`'s removal fails now (counting it).
pub(crate) fn stray_removal_fails(id: NodeId) -> bool {
    let mut fail = FAIL.lock().unwrap_or_else(|p| p.into_inner());
    match fail.get_mut(&id) {
        Some(n) if *n > 0 => {
            *n -= 1;
            true
        }
        _ => false,
    }
}

/// Per node: how many of its moves' next add steps fail (their
/// learner added and committed, as when the wait for the commit
/// times out just after it).
static ADD: Mutex<BTreeMap<NodeId, usize>> = Mutex::new(BTreeMap::new());

/// Fails the add step of node `id`'s next `n` moves, their learner
/// added.
pub(crate) fn fail_add_steps(id: NodeId, n: usize) {
    ADD.lock().unwrap_or_else(|p| p.into_inner()).insert(id, n);
}

/// Whether node `id`'s move's add step fails now (counting it).
pub(super) fn add_step_fails(id: NodeId) -> bool {
    let mut fail = ADD.lock().unwrap_or_else(|p| p.into_inner());
    match fail.get_mut(&id) {
        Some(n) if *n > 0 => {
            *n -= 1;
            true
        }
        _ => false,
    }
}

/// A move of node `id` begins its catch-up.
pub(super) fn catch_up_begun(id: NodeId) {
    *BEGUN
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .entry(id)
        .or_default() += 1;
}

/// How many moves of node `id` began their catch-up.
pub(crate) fn catch_ups_begun(id: NodeId) -> usize {
    BEGUN
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&id)
        .copied()
        .unwrap_or(0)
}

/// While `on`, the catch-ups of node `id`'s moves end as a target
/// alive but slower than the catch-up timeout does: they time out as
/// soon as the target progressed (or once the timeout passed).
pub(crate) fn hold_catch_up(id: NodeId, on: bool) {
    let mut held = HELD.lock().unwrap_or_else(|p| p.into_inner());
    if on {
        held.insert(id);
    } else {
        held.remove(&id);
    }
}

/// `caught`, or, while [`hold_catch_up`] holds node `id`'s catch-ups,
/// a timeout once the target `progressed` or `timeout` passed.
pub(super) async fn held_until_progress(
    id: NodeId,
    progressed: &impl Fn() -> bool,
    timeout: Duration,
    caught: impl Future<Output = Result<PeerStatus, Error>>,
) -> Result<PeerStatus, Error> {
    if !HELD.lock().unwrap_or_else(|p| p.into_inner()).contains(&id) {
        return caught.await;
    }
    let deadline = tokio::time::Instant::now() + timeout;
    while !progressed() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Err(Error::Timeout)
}

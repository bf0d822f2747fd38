//! Letting an idle node stop ticking (quiescence, for the many idle groups
//! of a multi-group node: `crate::multi`).
//!
//! A [`TickGate`] shared between a node task and whoever decides that its
//! group is idle. While the gate is asleep the node task neither ticks its
//! core nor wakes for its tick timer: an idle group costs no timer wake-ups,
//! no heartbeats, no election timers.
//!
//! Invariants:
//! - Ticks only drive timeouts (heartbeats, elections, CheckQuorum), so a
//!   tick withheld never breaks a Raft safety property (Raft §5: safety
//!   never depends on timing); it can only delay an election or a
//!   heartbeat, and the multi-group node wakes a group whenever its leader
//!   may be gone.
//! - The node task wakes the gate itself on any command (a proposal, a
//!   read, a configuration change) or inbound message, and never sleeps
//!   while it has reads or writes outstanding: a request never waits on a
//!   sleeping timer.

use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::Notify;

/// Whether a node task ticks (see the module documentation).
#[derive(Debug, Default)]
pub struct TickGate {
    asleep: AtomicBool,
    woken: Notify,
}

impl TickGate {
    /// Stops the node's ticks until something wakes it.
    pub fn sleep(&self) {
        self.asleep.store(true, Ordering::SeqCst);
    }

    /// Resumes the node's ticks.
    pub fn wake(&self) {
        if self.asleep.swap(false, Ordering::SeqCst) {
            self.woken.notify_one();
        }
    }

    /// Whether the node's ticks are stopped.
    pub fn is_asleep(&self) -> bool {
        self.asleep.load(Ordering::SeqCst)
    }

    /// Resolves once [`TickGate::wake`] was called (possibly before).
    pub(crate) async fn woken(&self) {
        self.woken.notified().await;
    }
}

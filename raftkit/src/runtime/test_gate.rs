//! Holding one node's apply thread inside a handler until the test lets it
//! go: the set-up of the tests that need a node whose apply is behind with
//! no timing left to chance (`lease_read_tests`, `stamp_tests`).
//!
//! A test's state machine calls [`ApplyGate::hold_if_gated`] from a write
//! handler; the gate holds only the apply thread named by
//! [`ApplyGate::hold_thread_of`] (the threads are named per node by
//! [`apply_threads_named_after`]), and every other node applies the entry
//! at once. Each test file has its own `static` gate: tests run in
//! parallel in one process.
//!
//! Invariants: once [`ApplyGate::open`] ran the gate never holds again;
//! [`ApplyGate::open_on_drop`] opens it when the test ends, passing or
//! failing, so that no apply thread stays blocked.
//!
//! Test support only (`cfg(test)`): production code has no hook; the
//! holding is done by the tests' own handlers.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

use super::threads::Threads;

#[derive(Debug)]
struct State {
    open: bool,
    entered: bool,
    /// The name of the one apply thread the gate holds.
    thread: Option<String>,
}

/// A gate for one apply thread (module docs).
#[derive(Debug)]
pub(super) struct ApplyGate {
    state: Mutex<State>,
    cv: Condvar,
}

impl ApplyGate {
    /// A closed gate that holds no thread yet.
    pub(super) const fn new() -> ApplyGate {
        ApplyGate {
            state: Mutex::new(State {
                open: false,
                entered: false,
                thread: None,
            }),
            cv: Condvar::new(),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// From now on the gate holds the apply thread of the node listening
    /// at `addr` (started with [`apply_threads_named_after`]).
    pub(super) fn hold_thread_of(&self, addr: &str) {
        self.state().thread = Some(format!("raftkit-apply@{addr}"));
    }

    /// Blocks the calling thread until the gate opens if it is the held
    /// apply thread; returns at once on every other thread.
    pub(super) fn hold_if_gated(&self) {
        let mut g = self.state();
        if g.thread.is_none() || std::thread::current().name() != g.thread.as_deref() {
            return;
        }
        g.entered = true;
        self.cv.notify_all();
        while !g.open {
            g = self.cv.wait(g).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Waits (up to 20 s, then panics) until the held thread is in the
    /// gate.
    pub(super) async fn wait_entered(&self) {
        until("the apply thread held", || {
            self.state().entered.then_some(())
        })
        .await;
    }

    /// Lets the held thread go, for good.
    pub(super) fn open(&self) {
        self.state().open = true;
        self.cv.notify_all();
    }

    /// Opens the gate when the returned guard is dropped.
    pub(super) fn open_on_drop(&'static self) -> OpenOnDrop {
        OpenOnDrop(self)
    }
}

/// Opens its gate when dropped, so that a failing test does not leave an
/// apply thread blocked forever.
pub(super) struct OpenOnDrop(&'static ApplyGate);

impl Drop for OpenOnDrop {
    fn drop(&mut self) {
        self.0.open();
    }
}

/// Names a node's threads after `addr` (`raftkit-apply@<addr>`, ...), so
/// that [`ApplyGate::hold_thread_of`] can pick one node's apply thread.
pub(super) fn apply_threads_named_after(addr: &str) -> Threads {
    let label = addr.to_string();
    Threads::Custom(Arc::new(move |name, body| {
        super::threads::spawn(&format!("{name}@{label}"), true, body)
    }))
}

/// Polls `f` every 5 ms until it gives a value; panics naming `what` after
/// 20 s.
pub(super) async fn until<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(t) = f() {
            return t;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Moves leadership to `peers[to]` and returns once it leads. A transfer
/// only starts (thesis §3.10): it lapses if the target is not elected
/// within an election timeout, which a loaded machine can cause, and
/// another node can be elected meanwhile. A transfer changes nothing else,
/// so whoever leads is asked again until the target leads; panics after
/// 30 s.
pub(super) async fn lead_by<S: crate::state_machine::StateMachine>(
    peers: &[super::Peer<S>],
    to: usize,
) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let target = peers[to].id();
    let mut w = peers[to].watch();
    while peers[to].status().role != crate::core::Role::Leader {
        assert!(
            Instant::now() < deadline,
            "leadership never moved to node {to}"
        );
        let now = peers
            .iter()
            .position(|p| p.status().role == crate::core::Role::Leader);
        if let Some(now) = now.filter(|&now| now != to) {
            let _ = tokio::time::timeout(
                Duration::from_secs(5),
                peers[now].transfer_leadership(target),
            )
            .await;
        }
        let _ = tokio::time::timeout(
            Duration::from_secs(2),
            w.wait_for(|s| s.role == crate::core::Role::Leader),
        )
        .await;
    }
}

//! Applying a small committed batch on the node task itself, when the
//! apply thread is idle: the hand-off to the thread and back (two thread
//! wake-ups, each a futex or eventfd wake and often an IPI to a halted
//! core) is then off a lone write's path (issue 16).
//!
//! The apply state ([`Apply`]) sits behind a mutex shared by the apply
//! thread ([`run_shared`](super::run_shared)) and the node task's sender
//! ([`ApplyTx`]). The thread holds the lock while it handles a message; the
//! node task only `try_lock`s, so it never waits for the thread, except
//! to answer a message the ended loop can no longer take
//! ([`Inline::refuse`], which takes the lock): the send failed because the
//! loop's guard closed the queue, under the lock, and the guard releases
//! it once it answered every message that got in (on either path, the
//! default thread-only one included).
//!
//! Invariants:
//! - `queued` counts the messages sent to the thread and not yet fully
//!   handled (it is decremented under the lock, after the message was
//!   handled and the status published when the queue ran empty). The node
//!   task is the only sender, so when it reads 0 while holding the lock,
//!   every message it sent before was handled: applying the batch now
//!   keeps the log order, and registrations, reads, snapshots, restores and
//!   failures are handled exactly in the order the node task produced them
//!   (the inline path handles only `Entries`, the way the thread would).
//! - Inline, a batch goes through the same `register` / `apply` as on the
//!   thread, so sessions, the error policy (handler panics are caught by
//!   `handler_panic` on whatever thread runs the handler), the halt, the
//!   reads served after the batch and the watch journal behave the same;
//!   the status is published at once (the queue is empty). A panic
//!   outside a handler halts the node at its entry here as there (caught
//!   in `Apply::apply_entries`; anything escaping even that is caught
//!   around the batch): it never unwinds through the node task, so turning
//!   this path on never changes what a panic does.
//! - The node task must not stall on user code: a batch is applied inline
//!   only when it has at most [`INLINE_MAX_ENTRIES`] entries and the last
//!   batch applied (on either path) cost at most [`INLINE_BUDGET`] for that
//!   many entries at its per-entry rate. The first batch after start goes
//!   to the thread (nothing measured yet), and a batch that proves slow
//!   sends the next ones to the thread until the thread measures a fast
//!   one again: the node task stalls at most for one batch of a handler
//!   that turns slow without warning.
//! - Snapshots are taken and restored only on the thread (those messages
//!   are queued, so nothing is applied inline meanwhile).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};
use std::time::Duration;

use tokio::sync::mpsc;

use super::{Apply, ApplyMsg, LeaderHint, ProgressTx, Reply};
use crate::core::{Entry, Index, Term};
use crate::runtime::session::Sessions;
use crate::runtime::watch::Journal;
use crate::state_machine::StateMachine;

/// The most entries a batch applied on the node task may hold.
pub const INLINE_MAX_ENTRIES: usize = 4;

/// The most time a batch applied on the node task may be expected to take
/// (at the per-entry cost of the last batch applied): far below a
/// heartbeat interval, so the node task's ticks, votes and replication are
/// not delayed noticeably.
pub const INLINE_BUDGET: Duration = Duration::from_micros(50);

/// The time source for the cost measure: tokio's, so that the whole-runtime
/// simulation (paused time) chooses the same path for the same seed.
pub(super) fn now() -> tokio::time::Instant {
    tokio::time::Instant::now()
}

/// The apply state shared by the apply thread and the node task.
pub struct Shared<S> {
    state: Mutex<Apply<S>>,
    /// Messages sent to the thread and not yet fully handled.
    queued: AtomicUsize,
    /// The last batch's cost per entry, in nanoseconds (`u64::MAX` before
    /// the first batch).
    cost_ns: AtomicU64,
    /// The leader the node task knows of (shared with the state, outside
    /// its lock: the node task sets it without waiting for the thread).
    leader: Arc<LeaderHint>,
}

impl<S: StateMachine> Shared<S> {
    /// The state of a node whose state machine `sm` has applied up to
    /// `applied`.
    pub fn new(
        sm: S,
        sessions: Sessions,
        applied: Index,
        status: ProgressTx,
        journal: Arc<Journal>,
    ) -> Shared<S> {
        let leader = Arc::new(LeaderHint::default());
        Shared {
            state: Mutex::new(Apply {
                sm,
                sessions,
                applied,
                applied_term: 0,
                waiting: Default::default(),
                superseded: Vec::new(),
                reads: Vec::new(),
                halted: None,
                failed: None,
                longest_pause: Duration::ZERO,
                inline_batches: 0,
                status,
                leader: Arc::clone(&leader),
                journal,
                events: Vec::new(),
            }),
            queued: AtomicUsize::new(0),
            cost_ns: AtomicU64::new(u64::MAX),
            leader,
        }
    }

    /// The state, for the thread (a poisoned lock is taken over: every
    /// handler runs under `catch_unwind`, so a panic there left no half
    /// update the thread would not have left too; only the apply loop
    /// ending by a panic poisons it, and the node halted then, see
    /// `HaltOnUnwind`).
    pub(super) fn lock(&self) -> MutexGuard<'_, Apply<S>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The state if no one holds it (a poisoned lock is taken over, as by
    /// [`Shared::lock`]).
    fn try_lock(&self) -> Option<MutexGuard<'_, Apply<S>>> {
        match self.state.try_lock() {
            Ok(guard) => Some(guard),
            Err(TryLockError::Poisoned(e)) => Some(e.into_inner()),
            Err(TryLockError::WouldBlock) => None,
        }
    }

    /// The thread handled one message.
    pub(super) fn done_one(&self) {
        self.queued.fetch_sub(1, Ordering::AcqRel);
    }

    /// Records the cost of a batch of `n` entries started at `started`.
    pub(crate) fn took(&self, started: tokio::time::Instant, n: usize) {
        let ns = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let per = ns / u64::try_from(n.max(1)).unwrap_or(1);
        self.cost_ns.store(per, Ordering::Relaxed);
    }

    fn fits(&self, n: usize) -> bool {
        let per = self.cost_ns.load(Ordering::Relaxed);
        let budget = u64::try_from(INLINE_BUDGET.as_nanos()).unwrap_or(u64::MAX);
        n <= INLINE_MAX_ENTRIES
            && per.saturating_mul(u64::try_from(n).unwrap_or(u64::MAX)) <= budget
    }
}

/// What the node task's sender needs of [`Shared`], whatever the state
/// machine's type.
pub trait Inline: Send + Sync {
    /// Messages sent to the thread and not yet fully handled.
    fn queued(&self) -> &AtomicUsize;
    /// Applies the batch here when the thread is idle and the batch is
    /// small and expected to be quick (taking `register` and `entries`);
    /// false (both left as they are) when it must go to the thread.
    fn try_apply(&self, register: &mut Vec<(Index, Term, Reply)>, entries: &mut Vec<Entry>)
    -> bool;
    /// Answers the callers of `msg`, which could not be queued (the apply
    /// loop ended by a panic and closed its queue), with the error that
    /// stopped the node.
    fn refuse(&self, msg: ApplyMsg);
    /// Sets the address of the leader the node knows of (not itself), for
    /// the reads the apply thread refuses once stopped.
    fn set_leader(&self, hint: Option<String>);
}

impl<S: StateMachine> Inline for Shared<S> {
    fn queued(&self) -> &AtomicUsize {
        &self.queued
    }

    fn try_apply(
        &self,
        register: &mut Vec<(Index, Term, Reply)>,
        entries: &mut Vec<Entry>,
    ) -> bool {
        if !self.fits(entries.len()) || self.queued.load(Ordering::Acquire) != 0 {
            return false;
        }
        let Some(mut guard) = self.try_lock() else {
            return false;
        };
        // Under the lock: the thread handled everything sent before.
        if self.queued.load(Ordering::Acquire) != 0 {
            return false;
        }
        // Reads waiting for an index would be served after this batch, by
        // the user's query handlers (a scan may take any time): on the
        // thread, not the node task (found by review, stop 49).
        if !guard.reads.is_empty() {
            return false;
        }
        crate::probe::mark("a.inline");
        let started = now();
        let n = entries.len();
        // A panic outside a handler is caught in `apply` (the node halts
        // at its entry, as on the thread); one escaping even that (a bug)
        // halts the node here, so that it never unwinds through the node
        // task and turning this path on never changes what a panic does.
        let (register, entries) = (std::mem::take(register), std::mem::take(entries));
        let a = &mut *guard;
        let done = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            a.register(register);
            // The node task is running: it has not dropped its sender.
            a.apply(entries, &|| false);
            a.inline_batches += 1;
            a.publish(false);
        }));
        if let Err(payload) = done {
            a.halt_caught("a batch applied on the node task", payload);
        }
        drop(guard);
        self.took(started, n);
        true
    }

    fn refuse(&self, msg: ApplyMsg) {
        self.lock().refuse(msg, None);
    }

    fn set_leader(&self, hint: Option<String>) {
        self.leader.set(hint);
    }
}

/// The node task's end of the apply queue: counts what it sends (see the
/// module invariants) and applies a small batch itself when it may; on
/// either path, answers the callers of a message the loop can no longer
/// take (it ended by a panic) itself.
#[derive(Clone)]
pub struct ApplyTx {
    tx: mpsc::UnboundedSender<ApplyMsg>,
    /// The apply state: applies the small batches (if `inline`), and
    /// answers the callers of what cannot be queued.
    shared: Arc<dyn Inline>,
    /// False: every message goes to the thread (the peer did not opt in).
    inline: bool,
}

impl ApplyTx {
    /// A sender to the loop of [`run_shared`](super::run_shared) on
    /// `shared`, applying small batches itself while that loop is idle.
    pub fn new(tx: mpsc::UnboundedSender<ApplyMsg>, shared: Arc<dyn Inline>) -> ApplyTx {
        ApplyTx {
            tx,
            shared,
            inline: true,
        }
    }

    /// A sender that hands everything to the loop on `shared`, and
    /// answers itself only what that loop can no longer take.
    pub fn thread_only(tx: mpsc::UnboundedSender<ApplyMsg>, shared: Arc<dyn Inline>) -> ApplyTx {
        ApplyTx {
            tx,
            shared,
            inline: false,
        }
    }

    /// Queues `msg` for the thread; false if the thread is gone (then the
    /// callers of `msg` were answered here).
    pub fn send(&self, msg: ApplyMsg) -> bool {
        if self.inline {
            self.shared.queued().fetch_add(1, Ordering::AcqRel);
        }
        match self.tx.send(msg) {
            Ok(()) => true,
            Err(mpsc::error::SendError(msg)) => {
                if self.inline {
                    self.shared.queued().fetch_sub(1, Ordering::AcqRel);
                }
                // The loop ended (by a panic: it closed its queue, and the
                // node halted) or the node is stopping: its callers are
                // answered here rather than dropped unanswered (on either
                // path: a dropped reply tells its caller only that the
                // outcome is unknown).
                self.shared.refuse(msg);
                false
            }
        }
    }

    /// Tells the apply thread the address of the leader the node knows of
    /// (not itself): a read it refuses once stopped is sent there.
    pub fn set_leader(&self, hint: Option<String>) {
        self.shared.set_leader(hint);
    }

    /// Applies committed `entries` (after registering `register`): here
    /// when the thread is idle and the batch small and quick, else on the
    /// thread. True when applied here.
    pub fn entries(
        &self,
        mut register: Vec<(Index, Term, Reply)>,
        mut entries: Vec<Entry>,
    ) -> bool {
        if self.inline && self.shared.try_apply(&mut register, &mut entries) {
            return true;
        }
        let _ = self.send(ApplyMsg::Entries { register, entries });
        false
    }
}

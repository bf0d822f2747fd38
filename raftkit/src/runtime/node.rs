//! The node task: the one task that owns a node's [`Raft`] core.
//!
//! It feeds the core ticks (a tokio interval), inbound messages, proposals,
//! reads and completion notices, and after every batch of inputs drains the
//! core's [`Ready`](crate::core::Ready): messages go to the transport at
//! once, writes go to the storage thread (group commit), persisted-only
//! messages leave when their write completes (sent by the storage thread
//! itself right after the fsync, see `Persister::release_through`, or by
//! this task for an in-memory store), committed entries and read indexes
//! go to the apply thread. Nothing on this task blocks on IO.
//!
//! Invariants:
//! - Readies are handed to storage in the order they are taken, and their
//!   completions are processed in the same order (tokens increase);
//! - a storage error is fatal (DESIGN §4: never retry after a failed
//!   fsync): the node stops stepping and ticking, **acknowledges nothing
//!   more** (a completion that arrives after the failure releases no held
//!   message and reaches no core), answers the callers whose proposals
//!   are in its log with [`Error::Storage`] (may have been applied) and
//!   every call it never proposed (waiting or later) not applied, as a
//!   halted node does, reports the error in its status, and `shutdown`
//!   returns it; a leader first hands leadership over
//!   ([`Raft::abdicate`]: a TimeoutNow, thesis §3.10, to the voter
//!   best placed to win, see there) and steps down, and the node never
//!   campaigns again, so the cluster elects a new leader within a round
//!   trip or two instead of after an election timeout. The step-down is
//!   published in the status before the TimeoutNow leaves (next
//!   invariants but one). A group of a multi-group node stops so as soon
//!   as the node's shared journal fails, whether or not it had a write in
//!   the failed batch ([`SharedSink::fault`](super::persist::SharedSink::fault)): its storage is gone all
//!   the same;
//! - a halted state machine (see `apply`) makes the core give up leadership
//!   and never campaign ([`Raft::set_halted`]); the callers whose
//!   proposals are in its log get [`Error::Halted`] (may have been
//!   applied), and every call it refuses afterwards, never proposed, gets a
//!   not-applied answer: `NotLeader` with the leader's address when one is
//!   known, else `Unavailable` (`NodeTask::refused_halted`). It keeps
//!   voting and replicating only until its unapplied backlog reaches
//!   [`MAX_APPLY_BACKLOG_BYTES`] (next item): then it takes in no new
//!   entries (it still votes) until restarted, so
//!   it stops counting toward the commit quorum and the cluster tolerates
//!   one fewer failure after that much traffic;
//! - a snapshot the node takes is saved on the snapshot thread, beside the
//!   log writer; the core and the log are compacted only once it is
//!   durable (Raft §7). A failed snapshot (serialization or save) is
//!   retried with an exponential backoff and shown in the status;
//! - at most [`MAX_APPLY_BACKLOG_BYTES`] of committed entries wait for the
//!   apply thread: past that the core keeps them (it holds them anyway)
//!   until the state machine catches up (back to half the bound). While so
//!   paused a follower's core takes in no new entries either
//!   ([`Raft::set_apply_paused`], `core::replication`: the AppendEntries is
//!   ignored and the leader retries, Raft §5.3), so a follower's unapplied
//!   log, in memory and in the WAL, stays within the bound plus what the
//!   leader had in flight to it when the pause began. A halted apply
//!   thread applies nothing and reports no progress, so its backlog
//!   reaches the bound and the pause stays: a halted follower keeps
//!   replicating until then, and its log stops growing there (it no longer
//!   helps commit; restarting it on a fixed binary resumes both);
//! - every proposal and read gets an answer: a result, `NotLeader` with the
//!   leader's address when known, or the error that stopped the node; a
//!   proposal whose entry's fate cannot reach this node any more (it left
//!   the configuration) is answered `Ambiguous` ([`NodeTask::answer_orphans`]);
//! - the status watch's scalar fields (indexes, counters, role, term,
//!   leader, errors) are current after every batch of inputs, as before
//!   entries are handed to the apply thread: a caller answered for entry
//!   `i` sees `last_index >= i`; a new role, term, leader or configuration
//!   is published before the messages of the batch that follows it leave
//!   this node (whoever hears from a new leader, in this process, sees it
//!   leading in its status). The fields that take clones to build
//!   (members, latency histograms, drop counts, addresses) are at most
//!   [`STATUS_INTERVAL`] late (a multi-group node's replicas: one tick,
//!   `PeerBuilder::status_interval`): they are rebuilt only if the last
//!   rebuild is that old or the role, term, leader or configuration
//!   changed; otherwise a timer
//!   rebuilds them when the interval is over (under load the loop turns far
//!   more often than anyone reads the status). The applied index and the
//!   session counters are the apply thread's as of the last batch: the
//!   apply thread does not wake this task for every batch it applies
//!   (`apply::status_channel`), but it does whenever this task would
//!   otherwise wait with applied entries it has not seen and no storage
//!   write outstanding (whose completion wakes it anyway), while the apply
//!   backlog pauses the core, or while client writes wait for the leader's
//!   stamp anchor; so a watcher of `applied` is never left waiting, nor is
//!   a deferred write (see [`NodeTask::want_apply_progress`]);
//! - a leader proposes client writes and session operations only once its
//!   term's stamp clock is anchored on the replicated time of the earlier
//!   terms; those that arrive before wait here, in order (`stamps`);
//! - a configuration change asked of a leader that has not yet committed
//!   an entry of its term (which it must before changing the
//!   configuration, thesis §4.1) waits here until it has, instead of being
//!   refused: a fresh leader commits its no-op within a round trip, and a
//!   caller (an admin move right after a leadership transfer) should not
//!   have to retry what only needs a moment. It is answered `NotLeader` if
//!   the node stops leading first;
//! - a membership edit (`Command::EditConfig`, see `membership`) is applied
//!   to the core's latest configuration (committed or not) each time it
//!   is tried, here, and nowhere else: never to a configuration a caller
//!   read from the status, which a change committed since would be
//!   missing from.
//!
//! Size: past 1,000 lines because the event loop and every handler it calls
//! share one `State` by `&mut` (splitting them across modules would expose
//! its fields to the whole runtime); the work it hands off lives elsewhere
//! (`persist`, `apply`, `session`, `status`).

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

#[cfg(feature = "sim")]
use crate::sim::runtime::teeth::Tooth;
use tracing::{debug, error, info, warn};

use super::admission::Admission;
use super::apply::{ApplyMsg, ProgressRx, Reply, Taken};
use super::dropped::DropLog;
use super::membership::ConfEdit;
use super::persist::{Persister, SaveJob, Saved, SnapshotSaver, StoreFault, Write};
use super::session::{Envelope, Op, STAMP_SLACK_MS};
use super::stamps::{Deferred, StampClock, anchor_ready};
use super::status::{LatencyHistogram, MemberStatus, PeerStatus};
use crate::core::{
    Configuration, Index, Message, NodeId, NotLeader, PersistMarker, ProposeError, Raft, Role,
    TransferError,
};
use crate::error::Error;
use crate::storage::{Snapshot, StorageError};
use crate::transport::Transport;

/// The most bytes of committed entries handed to the apply thread and not
/// yet applied.
pub const MAX_APPLY_BACKLOG_BYTES: usize = 32 << 20;
/// The first delay before a failed snapshot is tried again; it doubles up
/// to [`SNAPSHOT_RETRY_MAX`].
pub const SNAPSHOT_RETRY_FIRST: Duration = Duration::from_millis(200);
/// The longest delay between two snapshot attempts after failures.
pub const SNAPSHOT_RETRY_MAX: Duration = Duration::from_secs(30);

/// Requests to the node task.
pub enum Command {
    /// Propose a validated write or session operation (stamped here).
    Write {
        /// What the entry does.
        op: Op,
        /// Where the result goes.
        reply: Reply,
    },
    /// Serve an encoded query (see `reads`).
    Read {
        /// The query.
        query: Vec<u8>,
        /// Where the answer goes.
        reply: Reply,
        /// How it is served.
        consistency: crate::client::Consistency,
        /// A stale read's staleness goes here.
        staleness: Option<oneshot::Sender<crate::client::Staleness>>,
    },
    /// Transfer leadership to a member.
    Transfer {
        /// The target.
        to: NodeId,
        /// The outcome of starting the transfer.
        reply: oneshot::Sender<Result<(), Error>>,
    },
    /// Change the configuration (joint consensus).
    ChangeConfig {
        /// The target configuration.
        target: Configuration,
        /// The index of the first configuration entry.
        reply: oneshot::Sender<Result<Index, Error>>,
    },
    /// Apply a membership edit to the core's latest configuration and
    /// propose the result (see [`ConfEdit`]).
    EditConfig {
        /// The edit.
        edit: ConfEdit,
        /// The index of the first configuration entry, or `None` if the
        /// latest configuration already had the edit.
        reply: oneshot::Sender<Result<Option<Index>, Error>>,
    },
    /// Flush and stop.
    Shutdown {
        /// Answered once stopped.
        reply: oneshot::Sender<Result<(), Error>>,
    },
}

/// A configuration change waiting for this leader's first commit of its
/// term, with its caller.
enum ConfigChange {
    /// A whole target ([`Command::ChangeConfig`]).
    Target {
        target: Configuration,
        reply: oneshot::Sender<Result<Index, Error>>,
    },
    /// An edit of the latest configuration ([`Command::EditConfig`]).
    Edit {
        edit: ConfEdit,
        reply: oneshot::Sender<Result<Option<Index>, Error>>,
    },
}

impl ConfigChange {
    /// Answers the caller with `err`: the change was never proposed.
    fn refuse(self, err: Error) {
        match self {
            ConfigChange::Target { reply, .. } => {
                let _ = reply.send(Err(err));
            }
            ConfigChange::Edit { reply, .. } => {
                let _ = reply.send(Err(err));
            }
        }
    }
}

/// The wall clock the leader stamps entries with: ms since the Unix epoch.
/// Production uses [`system_clock_ms`]; tests inject a clock that jumps.
pub type WallClock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// The system's wall clock in ms since the Unix epoch (0 before it).
pub fn system_clock_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Runs when the node stops (closes the transport).
pub type StopHook =
    Box<dyn FnOnce() -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> + Send>;

/// Everything the node task owns.
pub struct NodeTask {
    pub(super) raft: Raft,
    pub(super) name: String,
    pub(super) transport: Arc<dyn Transport>,
    pub(super) persister: Option<Persister>,
    pub(super) saver: Option<SnapshotSaver>,
    pub(super) apply_tx: super::apply::ApplyTx,
    /// The apply thread's status; it wakes this task only when asked (see
    /// [`NodeTask::want_apply_progress`]).
    pub(super) apply_status: ProgressRx,
    pub(super) snapshot_rx: mpsc::UnboundedReceiver<Result<Taken, String>>,
    pub(super) inbox: crate::transport::inbox_bytes::InboxRx,
    pub(super) commands: mpsc::Receiver<Command>,
    pub(super) status: watch::Sender<PeerStatus>,
    /// Set once, when storage fails ([`super::Peer::fault`]): a watcher of
    /// this is not woken by every batch, as one of `status` is.
    pub(super) fault: watch::Sender<Option<String>>,
    pub(super) tick: Duration,
    pub(super) on_stop: Option<StopHook>,
    pub(super) admission: Arc<Admission>,
    pub(super) wall_clock: WallClock,
    /// Quiescence (`tick_gate`): while asleep, no ticks.
    pub(super) gate: Option<Arc<super::TickGate>>,
    /// How late the status fields that take clones may be (default
    /// [`STATUS_INTERVAL`]; `PeerBuilder::status_interval`).
    pub(super) status_interval: Duration,
    /// Whether a round yields to the other ready tasks before it drains
    /// the core (`PeerBuilder::gather`).
    pub(super) gather: bool,
    /// This group's share of its node's snapshot receive budget (a
    /// multi-group node's replicas; see `receive_budget`).
    pub(super) receive_share: Option<super::receive_budget::ReceiveShare>,
    /// Reads served on the leader's lease since the peer started
    /// ([`PeerStatus::lease_reads`]).
    pub(super) lease_reads: u64,
}

struct Pending {
    token: u64,
    marker: PersistMarker,
    messages: Vec<Message>,
    queued_at: std::time::Instant,
}

/// Snapshot bookkeeping.
struct Snapshots {
    /// A snapshot is being serialized or saved.
    busy: bool,
    /// After a failure: not before then.
    retry_at: Option<Instant>,
    backoff: Duration,
    failures: u64,
    last_error: Option<String>,
    /// The latest snapshot durable on this node (taken or installed).
    index: Index,
}

struct State {
    persisted_tx: mpsc::UnboundedSender<Result<u64, StorageError>>,
    saved_tx: mpsc::UnboundedSender<Saved>,
    pending: VecDeque<Pending>,
    next_token: u64,
    /// Ordered, so that callers are answered in a reproducible order.
    reads: BTreeMap<u64, (Vec<u8>, Reply, std::time::Instant)>,
    durable_latency: LatencyHistogram,
    read_index_latency: LatencyHistogram,
    /// Proposals not yet registered with the apply task (`flush_registers`).
    registers: Vec<(Index, u64, Reply)>,
    next_ctx: u64,
    snap: Snapshots,
    /// Committed entries handed to the apply thread: (last index, bytes)
    /// per batch, and their total.
    handed: VecDeque<(Index, usize)>,
    handed_bytes: usize,
    peers: BTreeMap<NodeId, String>,
    fatal: Option<String>,
    halted: Option<String>,
    proposals: u64,
    leader_changes: u64,
    last_leader: Option<NodeId>,
    /// The leader's address last given to the apply thread
    /// (`ApplyTx::set_leader`).
    leader_hint: Option<String>,
    leader_contact: Option<std::time::Instant>,
    drop_log: DropLog,
    stamps: Option<StampClock>,
    /// Client writes and session operations waiting for this leader's
    /// stamp anchor (`stamps`).
    deferred: Deferred,
    /// Configuration changes waiting for this leader's first commit of its
    /// term, in arrival order (see the module invariants).
    config_waiting: Vec<ConfigChange>,
    /// The core's ticks on the monotonic clock (see `reads`).
    clock: super::reads::TickClock,
    /// When the status watch was last rebuilt.
    published_at: Option<Instant>,
    /// A rebuild skipped by [`STATUS_INTERVAL`] is due at this time.
    status_due: Option<Instant>,
    /// The leader's snapshot transfers, for their logs.
    snapshot_sends: super::snapshot_sends::Transfers,
    /// Where proposals' envelopes are encoded (`arena`).
    arena: super::arena::Arena,
    /// The stamp this round's proposals share, with its term (see
    /// [`NodeTask::stamp`]); cleared at the start of every round.
    round_stamp: Option<(crate::core::Term, u64)>,
    /// The apply thread was told that this node left the configuration
    /// ([`NodeTask::answer_orphans`]); cleared when it is a member again.
    orphaned: bool,
}

/// The longest the status watch lags behind the node by default (see the
/// module invariants).
pub(super) const STATUS_INTERVAL: Duration = Duration::from_millis(1);

impl NodeTask {
    fn leader_hint(&self) -> Option<String> {
        let leader = self.raft.leader()?;
        self.addr_of(leader)
    }

    fn addr_of(&self, id: NodeId) -> Option<String> {
        self.raft.config().addrs.get(&id).cloned()
    }

    fn not_leader(&self) -> Error {
        Error::NotLeader {
            hint: self.leader_hint(),
        }
    }

    /// The error every caller gets once the node stopped serving, if it
    /// has: the calls it refuses now never reach its log, so the answer
    /// says "not applied" (only the proposals already in its log get
    /// [`Error::Storage`] or [`Error::Halted`], "may have been applied").
    fn stopped(&self, st: &State) -> Option<Error> {
        if let Some(f) = &st.fatal {
            return Some(self.refused_failed(f));
        }
        st.halted.as_deref().map(|h| self.refused_halted(h))
    }

    /// The answer to a call this node refuses after its storage failed
    /// (for `reason`; DESIGN §4): never proposed, so not applied, answered
    /// as a halted node answers (`NotLeader` with the leader's address if
    /// another node leads, else `Unavailable`). `Error::Storage` ("may have
    /// been applied") is for the proposals already in its log.
    fn refused_failed(&self, reason: &str) -> Error {
        let leader = self.raft.leader().filter(|l| *l != self.raft.id());
        match leader.and_then(|l| self.addr_of(l)) {
            Some(hint) => Error::NotLeader { hint: Some(hint) },
            None => Error::Unavailable(format!(
                "peer {} stopped: its storage failed; it takes no calls until restarted (this one was refused before it reached the log: not applied; no leader known): {reason}",
                self.name
            )),
        }
    }

    /// The answer to a call this halted node refuses (halted for
    /// `reason`): the call never reached the log, so the answer says "not
    /// applied" and may be sent elsewhere. [`Error::Halted`] ("may have
    /// been applied") is only for the proposals already in the log, which
    /// the apply thread answers. With a leader known (a halted node keeps
    /// following it, Raft §5.2), `NotLeader` with its address, so that the
    /// client re-routes at once; otherwise `Unavailable` (both are
    /// variants every client version reads as "not applied", so no client
    /// of an earlier release takes this answer for "maybe applied").
    fn refused_halted(&self, reason: &str) -> Error {
        let leader = self.raft.leader().filter(|l| *l != self.raft.id());
        match leader.and_then(|l| self.addr_of(l)) {
            Some(hint) => Error::NotLeader { hint: Some(hint) },
            None => Error::Unavailable(format!(
                "peer {} halted and takes no calls until restarted (this one was refused before it reached the log: not applied; no leader known): {reason}",
                self.name
            )),
        }
    }

    /// Runs the node until shutdown.
    pub async fn run(mut self) {
        let (persisted_tx, mut persisted_rx) = mpsc::unbounded_channel();
        let (saved_tx, mut saved_rx) = mpsc::unbounded_channel::<Saved>();
        let mut st = State {
            persisted_tx,
            saved_tx,
            pending: VecDeque::new(),
            next_token: 1,
            reads: BTreeMap::new(),
            durable_latency: LatencyHistogram::default(),
            read_index_latency: LatencyHistogram::default(),
            registers: Vec::new(),
            next_ctx: 1,
            snap: Snapshots {
                busy: false,
                retry_at: None,
                backoff: SNAPSHOT_RETRY_FIRST,
                failures: 0,
                last_error: None,
                index: self.raft.log().snapshot().index,
            },
            handed: VecDeque::new(),
            handed_bytes: 0,
            peers: BTreeMap::new(),
            fatal: None,
            halted: None,
            proposals: 0,
            leader_changes: 0,
            last_leader: None,
            leader_hint: None,
            leader_contact: None,
            drop_log: DropLog::default(),
            stamps: None,
            deferred: Deferred::default(),
            config_waiting: Vec::new(),
            clock: super::reads::TickClock::new(self.tick, self.raft.params().tick_burst()),
            published_at: None,
            status_due: None,
            snapshot_sends: Default::default(),
            arena: Default::default(),
            round_stamp: None,
            orphaned: false,
        };
        let mut ticker = tokio::time::interval(self.tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut apply_alive = true;
        // The deferred status rebuild's timer, kept across rounds and reset
        // only when its deadline changes: a new `Sleep` per round
        // registered and dropped a timer entry each time.
        let mut status_timer = Box::pin(tokio::time::sleep(Duration::ZERO));
        let mut status_timer_at: Option<Instant> = None;
        // The shared journal's failure (a multi-group node's replica).
        let mut store_fault = self.persister.as_ref().and_then(Persister::shared_fault);
        self.drain_ready(&mut st);
        self.publish(&mut st);
        loop {
            st.round_stamp = None;
            if self.want_apply_progress(&st) {
                // Applied since the last look: take it in before waiting.
                self.on_apply_progress(&mut st);
                self.drain_ready(&mut st);
                self.publish(&mut st);
                continue;
            }
            let retry_at = st.snap.retry_at;
            let status_due = st.status_due;
            if let Some(at) = status_due
                && status_timer_at != Some(at)
            {
                status_timer.as_mut().reset(at);
                status_timer_at = Some(at);
            }
            let asleep = self.gate.as_ref().is_some_and(|g| g.is_asleep());
            if asleep {
                // Withheld ticks are never fed later (see `catch_up_ticks`).
                st.clock.pause();
            }
            // `biased`: branches are polled in this order, not in tokio's
            // random one, so that a run is a function of its inputs (the
            // whole-runtime simulation replays a seed exactly). No branch
            // starves: every handler takes a bounded batch, the ticker fires
            // once a tick, storage and snapshot completions answer this
            // task's own bounded writes, and commands (bounded by the
            // in-flight budget) come before peer messages, which are then
            // taken 257 at a time.
            tokio::select! {
                biased;
                _ = ticker.tick(), if !asleep => {
                    if st.fatal.is_none() {
                        self.catch_up_ticks(&mut st.clock);
                        st.snapshot_sends.observe(&self.name, self.raft.snapshot_sends());
                    }
                }
                _ = gate_woken(&self.gate), if asleep => ticker.reset(),
                Some(done) = persisted_rx.recv() => self.on_persisted(&mut st, done),
                // Once: `fail` sets `fatal`.
                cause = store_failed(&mut store_fault), if st.fatal.is_none() => {
                    self.fail(&mut st, format!("storage failed: the node's shared journal failed: {cause}"));
                }
                Some(taken) = self.snapshot_rx.recv() => self.on_snapshot_taken(&mut st, taken),
                Some(saved) = saved_rx.recv() => self.on_snapshot_saved(&mut st, saved),
                // Taken in below, as after every other input.
                changed = self.apply_status.changed(), if apply_alive => {
                    apply_alive = changed.is_ok();
                }
                _ = sleep_until_opt(retry_at), if retry_at.is_some() => {
                    st.snap.retry_at = None;
                }
                // The rebuild the interval deferred: done below.
                _ = &mut status_timer, if status_due.is_some() => {}
                cmd = self.commands.recv() => {
                    self.wake();
                    let Some(cmd) = cmd else { break };
                    if let Command::Shutdown { reply } = cmd {
                        let result = self.stop(&mut st).await;
                        let _ = reply.send(result);
                        return;
                    }
                    self.on_command(&mut st, cmd);
                    if let Some(reply) = self.take_commands(&mut st) {
                        let result = self.stop(&mut st).await;
                        let _ = reply.send(result);
                        return;
                    }
                }
                Some(m) = self.inbox.recv() => {
                    self.wake();
                    self.take_messages(&mut st, Some(m));
                }
            }
            if self.gather {
                // Let the tasks that are ready run first (other groups'
                // node tasks, clients, the links): what they hand this
                // group meanwhile joins this round's Ready, one journal
                // write and one append message per peer instead of
                // several (see `PeerBuilder::gather`).
                tokio::task::yield_now().await;
                while let Ok(done) = persisted_rx.try_recv() {
                    self.on_persisted(&mut st, done);
                }
                if let Some(reply) = self.take_commands(&mut st) {
                    let result = self.stop(&mut st).await;
                    let _ = reply.send(result);
                    return;
                }
                self.take_messages(&mut st, None);
            }
            self.on_apply_progress(&mut st);
            self.drain_ready(&mut st);
            // Ticks may have abandoned a reception (a new term).
            self.settle_receive_share();
            self.publish(&mut st);
            if !st.reads.is_empty() || !st.pending.is_empty() {
                self.wake();
            }
        }
        let _ = self.stop(&mut st).await;
    }

    /// Takes up to 256 queued commands; returns the reply of a shutdown
    /// met among them (the caller stops the node).
    fn take_commands(&mut self, st: &mut State) -> Option<oneshot::Sender<Result<(), Error>>> {
        for _ in 0..256 {
            match self.commands.try_recv() {
                Ok(Command::Shutdown { reply }) => return Some(reply),
                Ok(cmd) => {
                    self.wake();
                    self.on_command(st, cmd);
                }
                Err(_) => break,
            }
        }
        None
    }

    /// Steps `first` (or the first queued peer message) and up to 256
    /// more queued ones.
    fn take_messages(&mut self, st: &mut State, first: Option<Message>) {
        let mut next = first.or_else(|| self.inbox.try_recv());
        if next.is_none() {
            return;
        }
        self.wake();
        let mut from_leader = false;
        let mut more = 256;
        while let Some(m) = next.take() {
            if st.fatal.is_none() {
                match &m.body {
                    crate::core::Body::AppendEntries { entries, .. } if !entries.is_empty() => {
                        crate::probe::mark("F.step_ae")
                    }
                    crate::core::Body::AppendEntriesResponse { .. } => {
                        crate::probe::mark("L.step_aer")
                    }
                    _ => {}
                }
                let from = m.from;
                self.step(st, m);
                from_leader |= self.raft.leader() == Some(from);
            }
            if more > 0 {
                more -= 1;
                next = self.inbox.try_recv();
            }
        }
        if from_leader {
            st.leader_contact = Some(std::time::Instant::now());
        }
    }

    /// Resumes ticking (see `tick_gate`).
    fn wake(&self) {
        if let Some(gate) = &self.gate {
            gate.wake();
        }
    }

    /// Feeds a peer's message to the core; a dropped one is logged
    /// (rate-limited) with its reason.
    fn step(&mut self, st: &mut State, m: Message) {
        let (from, kind, term) = (m.from, m.body.kind(), m.term);
        if let (Some(share), crate::core::Body::InstallSnapshot { offset, data, .. }) =
            (&mut self.receive_share, &m.body)
        {
            // The room this chunk may take the buffer to: what the share
            // holds once it took what the chunk could add, if the node's
            // budget has it (see `receive_budget`).
            let room = share.room_for(
                self.raft.snapshot_receiving_bytes(),
                *offset,
                u64::try_from(data.len()).unwrap_or(u64::MAX),
                self.raft.params().max_snapshot_bytes,
            );
            self.raft.set_snapshot_receive_room(Some(room));
        }
        if let Err(reason) = self.raft.step_checked(m) {
            let total = self.raft.dropped().get(reason);
            st.drop_log
                .note(&self.name, from, kind, term, reason, total);
        }
        self.settle_receive_share();
    }

    /// Gives back to the node's snapshot receive budget what the core's
    /// receive buffer no longer holds (installed, replaced, abandoned).
    fn settle_receive_share(&mut self) {
        if let Some(share) = &mut self.receive_share {
            share.settle(self.raft.snapshot_receiving_bytes());
        }
    }

    /// Stops the node: closes the transport, flushes the log, waits for a
    /// snapshot save under way. Callers still waiting are answered (the
    /// apply thread drops their replies when its channel closes: they learn
    /// the peer stopped before answering).
    async fn stop(&mut self, st: &mut State) -> Result<(), Error> {
        if let Some(hook) = self.on_stop.take() {
            hook().await;
        }
        for (_, (_, reply, _)) in std::mem::take(&mut st.reads) {
            reply.send(Err(Error::Unavailable(format!(
                "peer {} stopped",
                self.name
            ))));
        }
        // Never proposed: not applied.
        while let Some((_, reply)) = st.deferred.pop() {
            reply.send(Err(Error::Unavailable(format!(
                "peer {} stopped",
                self.name
            ))));
        }
        for change in st.config_waiting.drain(..) {
            change.refuse(Error::Unavailable(format!("peer {} stopped", self.name)));
        }
        if let Some(saver) = self.saver.take() {
            saver.shutdown().await;
        }
        let flushed = match self.persister.take() {
            Some(p) => p.shutdown().await,
            None => Ok(()),
        };
        match &st.fatal {
            Some(f) => Err(Error::Storage(f.clone())),
            None => flushed,
        }
    }

    fn on_command(&mut self, st: &mut State, cmd: Command) {
        if let Some(err) = self.stopped(st) {
            match cmd {
                Command::Write { reply, .. } | Command::Read { reply, .. } => {
                    reply.send(Err(err));
                }
                Command::Transfer { reply, .. } => {
                    let _ = reply.send(Err(err));
                }
                Command::ChangeConfig { reply, .. } => {
                    let _ = reply.send(Err(err));
                }
                Command::EditConfig { reply, .. } => {
                    let _ = reply.send(Err(err));
                }
                Command::Shutdown { .. } => {}
            }
            return;
        }
        match cmd {
            Command::Write { op, reply } => {
                crate::probe::mark("n.cmd");
                // Behind the ones already waiting for the anchor, in order.
                if st.deferred.is_empty() && self.stamps_ready(st) {
                    self.propose_write(st, op, reply);
                } else {
                    st.deferred.push(op, reply);
                }
            }
            Command::Read {
                query,
                reply,
                consistency,
                staleness,
            } => {
                // Tooth (simulation builds only): hand the read to the apply
                // task at once, before its read index is known (let alone
                // applied); the apply task serves it where it stands.
                #[cfg(feature = "sim")]
                if crate::sim::runtime::teeth::on(Tooth::ReadBeforeApplied) {
                    let _ = self.apply_tx.send(ApplyMsg::Read {
                        index: 0,
                        query,
                        reply,
                    });
                    return;
                }
                let Some((query, reply)) =
                    self.serve_weak_read(&mut st.clock, consistency, query, reply, staleness)
                else {
                    return;
                };
                let ctx = st.next_ctx;
                st.next_ctx += 1;
                match self.raft.read_index(ctx) {
                    Ok(()) => {
                        st.reads
                            .insert(ctx, (query, reply, std::time::Instant::now()));
                    }
                    Err(NotLeader { .. }) => reply.send(Err(self.not_leader())),
                }
            }
            Command::Transfer { to, reply } => {
                let r = self.raft.transfer_leadership(to).map_err(|e| match e {
                    TransferError::NotLeader(_) => self.not_leader(),
                    other => Error::Rejected(other.to_string()),
                });
                let _ = reply.send(r);
            }
            Command::ChangeConfig { target, reply } => {
                self.on_config_change(st, ConfigChange::Target { target, reply });
            }
            Command::EditConfig { edit, reply } => {
                self.on_config_change(st, ConfigChange::Edit { edit, reply });
            }
            Command::Shutdown { .. } => {}
        }
    }

    /// Proposes a configuration change now, or parks it behind the ones
    /// waiting for this leader's first commit of its term, in order.
    fn on_config_change(&mut self, st: &mut State, change: ConfigChange) {
        let parked = if st.config_waiting.is_empty() {
            self.propose_config(change)
        } else {
            Some(change)
        };
        if let Some(change) = parked {
            debug!(node = %self.name, term = self.raft.term(), "configuration change waits for this leader's first commit of its term");
            st.config_waiting.push(change);
        }
    }

    /// Proposes a configuration change and answers its caller, or gives it
    /// back to wait while this leader has not committed an entry of its
    /// term yet (`release_config_waiting`). An edit is applied here, to
    /// the core's latest configuration, each time it is tried (see
    /// [`ConfEdit`]): the one in force when it is proposed.
    fn propose_config(&mut self, change: ConfigChange) -> Option<ConfigChange> {
        let not_ready = |r: &Result<Index, ProposeError>, raft: &Raft| {
            matches!(r, Err(ProposeError::NotReady)) && raft.role() == Role::Leader
        };
        match change {
            ConfigChange::Target { target, reply } => {
                let r = self.raft.propose_config(target.clone());
                if not_ready(&r, &self.raft) {
                    return Some(ConfigChange::Target { target, reply });
                }
                let _ = reply.send(r.map_err(|e| self.propose_error(e)));
                None
            }
            ConfigChange::Edit { edit, reply } => {
                if self.raft.role() != Role::Leader {
                    let _ = reply.send(Err(self.not_leader()));
                    return None;
                }
                let target = match edit.target(self.raft.config()) {
                    Ok(Some(target)) => target,
                    Ok(None) => {
                        debug!(node = %self.name, ?edit, config_index = self.raft.config_index(), "the latest configuration already has the edit: nothing proposed");
                        let _ = reply.send(Ok(None));
                        return None;
                    }
                    Err(e) => {
                        info!(node = %self.name, ?edit, error = %e, "configuration edit refused");
                        let _ = reply.send(Err(e));
                        return None;
                    }
                };
                let r = self.raft.propose_config(target);
                if not_ready(&r, &self.raft) {
                    return Some(ConfigChange::Edit { edit, reply });
                }
                match &r {
                    Ok(index) => {
                        info!(node = %self.name, ?edit, index, "configuration edit proposed");
                    }
                    Err(e) => {
                        info!(node = %self.name, ?edit, error = %e, "configuration edit refused");
                    }
                }
                let _ = reply.send(r.map(Some).map_err(|e| self.propose_error(e)));
                None
            }
        }
    }

    /// Proposes the configuration changes that waited for this leader's
    /// first commit of its term once it is in (or answers them once the
    /// node stopped leading: the core refuses them with `NotLeader`).
    fn release_config_waiting(&mut self, st: &mut State) {
        if st.config_waiting.is_empty() {
            return;
        }
        if let Some(err) = self.stopped(st) {
            for change in st.config_waiting.drain(..) {
                change.refuse(err.clone());
            }
            return;
        }
        let mut rest = std::mem::take(&mut st.config_waiting).into_iter();
        while let Some(change) = rest.next() {
            if let Some(still) = self.propose_config(change) {
                // Still not ready: it and the rest wait, in order.
                st.config_waiting.push(still);
                st.config_waiting.extend(rest);
                return;
            }
        }
    }

    /// Proposes a client write or session operation and registers its
    /// caller (once [`NodeTask::stamps_ready`]).
    fn propose_write(&mut self, st: &mut State, op: Op, reply: Reply) {
        match self.propose_envelope(st, op) {
            Ok((index, term)) => {
                st.proposals += 1;
                // Handed to the apply thread in one message, before any
                // entry or snapshot that covers it (`flush_registers`).
                st.registers.push((index, term, reply));
            }
            Err(e) => reply.send(Err(self.propose_error(e))),
        }
    }

    /// Whether a client write or session operation may be proposed now:
    /// always on a node that does not lead (the core refuses it, and the
    /// caller learns where the leader is); on the leader, once its term's
    /// stamp clock is anchored, which this anchors as soon as the apply
    /// thread applied every entry of the earlier terms (`stamps` module).
    fn stamps_ready(&self, st: &mut State) -> bool {
        let term = self.raft.term();
        if self.raft.role() != Role::Leader || st.stamps.as_ref().is_some_and(|c| c.term == term) {
            return true;
        }
        let (applied, replicated) = {
            let apply = self.apply_status.borrow();
            (apply.applied, apply.replicated_ms)
        };
        if !anchor_ready(self.raft.log(), term, applied) {
            return false;
        }
        st.stamps = Some(StampClock::anchor(term, replicated, (self.wall_clock)()));
        true
    }

    /// Proposes the writes that waited for the stamp anchor, in order, once
    /// it is taken; answers them if this node stopped leading (the core
    /// refuses them) or serving.
    fn release_deferred(&mut self, st: &mut State) {
        if st.deferred.is_empty() {
            return;
        }
        if let Some(err) = self.stopped(st) {
            while let Some((_, reply)) = st.deferred.pop() {
                reply.send(Err(err.clone()));
            }
            return;
        }
        while !st.deferred.is_empty() && self.stamps_ready(st) {
            if let Some((op, reply)) = st.deferred.pop() {
                self.propose_write(st, op, reply);
            }
        }
    }

    /// Wraps an operation in its log envelope, stamped with this leader's
    /// clamped clock (the replicated time sessions expire by), and proposes
    /// it. Called once [`NodeTask::stamps_ready`].
    fn propose_envelope(&mut self, st: &mut State, op: Op) -> Result<(Index, u64), ProposeError> {
        // Only a node that does not lead has no anchor: the core refuses
        // its proposal whatever the stamp.
        let stamp_ms = self.stamp(st).unwrap_or(0);
        // Sized once: the command plus the envelope's few varints.
        let capacity = match &op {
            Op::Write { command }
            | Op::SessionWrite { command, .. }
            | Op::SessionWriteBounded { command, .. } => command.len(),
            _ => 0,
        } + 64;
        let envelope = Envelope { stamp_ms, op };
        match st.arena.encode(&envelope, capacity) {
            Ok(bytes) => self.raft.propose(bytes),
            Err(e) => Err(ProposeError::InvalidConfiguration(format!("envelope: {e}"))),
        }
    }

    /// The stamp of an entry proposed now by the leader of the anchored
    /// term: the wall clock, clamped to the anchor plus the elapsed
    /// monotonic time, within [`STAMP_SLACK_MS`] either way (`stamps`
    /// module). `None` without an anchor for the current term.
    ///
    /// Read once per round of inputs: the proposals of one round share the
    /// stamp of the first (two clock reads per round instead of per write;
    /// a round lasts microseconds, stamps count milliseconds, and a stamp
    /// repeated is one the clamp would give again: stamps never go back).
    fn stamp(&self, st: &mut State) -> Option<u64> {
        let term = self.raft.term();
        if let Some((t, stamp)) = st.round_stamp
            && t == term
        {
            return Some(stamp);
        }
        let wall = (self.wall_clock)();
        let clock = st.stamps.as_mut().filter(|c| c.term == term)?;
        let stamp = clock.stamp(wall);
        // Tooth (simulation builds only): stamp with the raw wall clock.
        #[cfg(feature = "sim")]
        let stamp = if crate::sim::runtime::teeth::on(Tooth::UnclampedStamps) {
            wall
        } else {
            stamp
        };
        if wall.abs_diff(stamp) > STAMP_SLACK_MS && !clock.warned {
            clock.warned = true;
            // After downtime replicated time trails the wall clock for good
            // (sessions do not age while the cluster is down); a clock step
            // looks the same. Neither is a fault: say it once a term.
            info!(node = %self.name, wall_ms = wall, stamp_ms = stamp, term, "replicated time and this leader's wall clock differ by more than the slack (downtime, or a clock step); stamps follow the monotonic clock");
        }
        st.round_stamp = Some((term, stamp));
        Some(stamp)
    }

    /// What a caller whose proposal the core refused is told: only a
    /// refusal that retrying cannot fix is `Rejected`.
    fn propose_error(&self, e: ProposeError) -> Error {
        match e {
            ProposeError::NotLeader(_) => self.not_leader(),
            // Leadership is moving to `to`: retry there.
            ProposeError::Transferring(to) => Error::NotLeader {
                hint: self.addr_of(to),
            },
            // Refused, not proposed: not applied.
            ProposeError::Halted => self.refused_halted("this node halted"),
            other => Error::Rejected(other.to_string()),
        }
    }

    /// Drains every output of the core.
    fn drain_ready(&mut self, st: &mut State) {
        while st.fatal.is_none() && self.raft.has_ready() {
            let rd = self.raft.ready();
            let must_write = rd.must_persist() || !rd.persisted_messages.is_empty();
            if !rd.messages.is_empty() && self.status_urgent(st) {
                // A new role, term or leader shows before anyone hears of
                // it from this node (see the module invariants).
                self.publish(st);
            }
            for m in rd.messages {
                if let crate::core::Body::AppendEntries { entries, .. } = &m.body
                    && !entries.is_empty()
                {
                    crate::probe::mark("L.ae_send");
                }
                self.transport.send(m);
            }
            if !rd.entries.is_empty() {
                crate::probe::mark(if self.raft.role() == Role::Leader {
                    "L.persist_q"
                } else {
                    "F.persist_q"
                });
            }
            // The state machine restores from the core's buffer (shared);
            // the store is given its own copy (the one copy left: the core
            // keeps its buffer to send on).
            let snapshot = rd.snapshot.map(|s| {
                self.flush_registers(st);
                let _ = self.apply_tx.send(ApplyMsg::Restore {
                    index: s.meta.index,
                    data: Arc::clone(&s.data),
                });
                Snapshot {
                    meta: s.meta,
                    data: Arc::unwrap_or_clone(s.data),
                }
            });
            if snapshot.is_some() {
                st.handed.clear();
                st.handed_bytes = 0;
            }
            if must_write {
                self.persist(
                    st,
                    Write {
                        snapshot,
                        compact: None,
                        entries: rd.entries,
                        hard_state: rd.hard_state,
                    },
                    rd.persist_marker,
                    rd.persisted_messages,
                );
            }
            if let Some(last) = rd.committed_entries.last() {
                let bytes: usize = rd.committed_entries.iter().map(|e| e.approx_size()).sum();
                st.handed.push_back((last.index, bytes));
                st.handed_bytes += bytes;
                if st.handed_bytes > MAX_APPLY_BACKLOG_BYTES {
                    debug!(node = %self.name, backlog = st.handed_bytes, "the state machine is behind: committed entries wait in the log");
                    self.raft.set_apply_paused(true);
                }
                crate::probe::mark(if self.raft.role() == Role::Leader {
                    "L.apply_q"
                } else {
                    "F.apply_q"
                });
                // The proposals registered since the last batch travel with
                // it: one message, one wake-up of the apply thread; or none,
                // when the batch is small and the thread idle (applied here,
                // see `apply::inline`).
                // The next batch's list starts at this one's size: under
                // load it would otherwise grow from empty by doubling, a
                // reallocation and copy every few proposals (issue 16).
                let capacity = st.registers.len();
                let registers = std::mem::replace(&mut st.registers, Vec::with_capacity(capacity));
                self.apply_tx.entries(registers, rd.committed_entries);
            }
            for r in rd.reads {
                let Some((query, reply, arrived)) = st.reads.remove(&r.ctx) else {
                    continue;
                };
                match r.result {
                    Ok(index) => {
                        st.read_index_latency.record(arrived.elapsed());
                        let _ = self.apply_tx.send(ApplyMsg::Read {
                            index,
                            query,
                            reply,
                        });
                    }
                    Err(_) => reply.send(Err(self.not_leader())),
                }
            }
        }
        if !st.snap.busy
            && st.snap.retry_at.is_none()
            && st.fatal.is_none()
            && st.halted.is_none()
            && self.raft.wants_snapshot()
        {
            st.snap.busy = true;
            let room = self
                .saver
                .as_ref()
                .map(SnapshotSaver::take_snapshot_room)
                .unwrap_or_default();
            let _ = self.apply_tx.send(ApplyMsg::TakeSnapshot { room });
        }
        self.update_peers(st);
        self.answer_orphans(st);
        let leader = self.raft.leader();
        if leader.is_some() && leader != st.last_leader {
            st.leader_changes += 1;
        }
        if leader.is_none() || leader == Some(self.raft.id()) {
            st.leader_contact = None;
        }
        // Where the apply thread sends the reads it refuses once stopped,
        // as `refused_halted` does here: the address of the leader this
        // node follows, sent whenever it changes, whether the leader
        // changed or only its address became known (a joining node hears
        // of its leader before the configuration that holds its address).
        let other = leader.filter(|l| *l != self.raft.id());
        let hint = other.and_then(|l| self.raft.config().addrs.get(&l));
        if hint != st.leader_hint.as_ref() {
            st.leader_hint = hint.cloned();
            self.apply_tx.set_leader(st.leader_hint.clone());
        }
        st.last_leader = leader;
    }

    /// A node whose configuration (the latest in its log, thesis §4.1) leaves
    /// it out, and that does not lead, hears of no entry again: no leader
    /// replicates to a non-member (thesis §4.2.2). Typically a leader that
    /// removed itself, stepping down once that commits with writes proposed
    /// after the removal still uncommitted. Those proposals' outcome can no
    /// longer reach it, so their callers are answered `Ambiguous` now
    /// ([`ApplyMsg::Orphaned`]) instead of waiting for ever; those at or
    /// below the commit index are answered as their entries apply. Sent
    /// once per departure.
    fn answer_orphans(&self, st: &mut State) {
        let id = self.raft.id();
        if self.raft.role() == Role::Leader || self.raft.config().contains(id) {
            st.orphaned = false;
            return;
        }
        if st.orphaned {
            return;
        }
        st.orphaned = true;
        self.flush_registers(st);
        let _ = self.apply_tx.send(ApplyMsg::Orphaned {
            above: self.raft.log().committed(),
        });
    }

    /// Hands the proposals registered since the last call to the apply
    /// thread. They must reach it before any message that may apply or
    /// cover their entries: committed entries carry them in the same
    /// message ([`ApplyMsg::Entries`]); this is called right before a
    /// snapshot, and when the apply thread must answer them at once (a
    /// halt, a storage failure). Not at every batch of commands, where it
    /// would wake the apply thread once more per batch for nothing to
    /// apply.
    fn flush_registers(&self, st: &mut State) {
        if !st.registers.is_empty() {
            let _ = self
                .apply_tx
                .send(ApplyMsg::Register(std::mem::take(&mut st.registers)));
        }
    }

    /// Hands a write to storage; its completion releases `messages` and
    /// tells the core (see [`NodeTask::on_persisted`]).
    fn persist(
        &mut self,
        st: &mut State,
        write: Write,
        marker: PersistMarker,
        messages: Vec<Message>,
    ) {
        if messages.is_empty()
            && marker.last_entry.is_none()
            && marker.term_vote.is_none()
            && marker.snapshot.is_none()
            && self.persister.as_ref().is_none_or(|p| p.holds_back(&write))
        {
            // Nothing for the disk, and nothing waits for its completion
            // (a commit index alone: see `persist`'s module documentation).
            return;
        }
        let token = st.next_token;
        st.next_token += 1;
        let (done, messages) = match self.persister.as_ref() {
            Some(p) => p.write_releasing(write, st.persisted_tx.clone(), token, messages),
            None => (None, messages),
        };
        st.pending.push_back(Pending {
            token,
            marker,
            messages,
            queued_at: std::time::Instant::now(),
        });
        // A store written inline (memory only) is done already.
        if let Some(r) = done {
            self.on_persisted(st, r.map(|()| token));
        }
    }

    fn update_peers(&mut self, st: &mut State) {
        let conf = self.raft.config();
        if conf.addrs.len()
            != st.peers.len() + usize::from(conf.addrs.contains_key(&self.raft.id()))
            || conf
                .addrs
                .iter()
                .any(|(id, a)| *id != self.raft.id() && st.peers.get(id) != Some(a))
        {
            let peers: BTreeMap<NodeId, String> = conf
                .addrs
                .iter()
                .filter(|(id, _)| **id != self.raft.id())
                .map(|(id, a)| (*id, a.clone()))
                .collect();
            debug!(node = %self.name, peers = ?peers, "peer addresses changed");
            self.transport.set_peers(peers.clone());
            st.peers = peers;
        }
    }

    fn on_persisted(&mut self, st: &mut State, done: Result<u64, StorageError>) {
        if st.fatal.is_some() {
            // Nothing is acknowledged after a storage failure, whatever a
            // later completion says: the storage can no longer be trusted.
            return;
        }
        // Tooth (simulation builds only): acknowledge what never became
        // durable.
        #[cfg(feature = "sim")]
        let done = match done {
            Err(_) if crate::sim::runtime::teeth::on(Tooth::AckAfterStorageFailure) => Ok(u64::MAX),
            done => done,
        };
        match done {
            Ok(token) => {
                while st.pending.front().is_some_and(|p| p.token <= token) {
                    let Some(p) = st.pending.pop_front() else {
                        break;
                    };
                    if p.marker.last_entry.is_some() {
                        st.durable_latency.record(p.queued_at.elapsed());
                    }
                    if let Some((index, _)) = p.marker.snapshot {
                        st.snap.index = st.snap.index.max(index);
                    }
                    if p.marker.last_entry.is_some() {
                        crate::probe::mark(if self.raft.role() == Role::Leader {
                            "L.on_persisted"
                        } else {
                            "F.on_persisted"
                        });
                    }
                    self.raft.on_persisted(p.marker);
                    for m in p.messages {
                        self.transport.send(m);
                    }
                }
            }
            Err(e) => self.fail(st, format!("storage failed: {e}")),
        }
    }

    fn on_snapshot_taken(&mut self, st: &mut State, taken: Result<Taken, String>) {
        if st.fatal.is_some() {
            st.snap.busy = false;
            return;
        }
        let taken = match taken {
            Ok(t) => t,
            Err(reason) => return self.snapshot_failed(st, reason),
        };
        let meta = match self.raft.snapshot_meta(taken.index) {
            Ok(meta) => meta,
            Err(e) => {
                // A newer snapshot arrived from the leader meanwhile.
                debug!(node = %self.name, %e, "snapshot not used");
                st.snap.busy = false;
                return;
            }
        };
        let Some(saver) = &self.saver else {
            st.snap.busy = false;
            return;
        };
        let done = st.saved_tx.clone();
        saver.save(SaveJob {
            meta,
            body: taken.body,
            done: Box::new(move |saved| {
                let _ = done.send(saved);
            }),
        });
    }

    fn on_snapshot_saved(&mut self, st: &mut State, saved: Saved) {
        if st.fatal.is_some() {
            st.snap.busy = false;
            return;
        }
        let (snap, saved) = match saved {
            Saved::Stored(snap, saved) => (snap, saved),
            Saved::NotEncoded(reason) => return self.snapshot_failed(st, reason),
        };
        // Tooth (simulation builds only): compact behind a failed save.
        #[cfg(feature = "sim")]
        let saved = match saved {
            Err(_) if crate::sim::runtime::teeth::on(Tooth::CompactAfterFailedSave) => Ok(()),
            saved => saved,
        };
        if let Err(e) = saved {
            return self.snapshot_failed(st, format!("saving the snapshot failed: {e}"));
        }
        st.snap.busy = false;
        st.snap.backoff = SNAPSHOT_RETRY_FIRST;
        st.snap.last_error = None;
        let bytes = snap.data.len();
        // Only now, behind a durable snapshot, is the log compacted.
        let started = Instant::now();
        let room = self
            .saver
            .as_ref()
            .map(SnapshotSaver::take_log_room)
            .unwrap_or_default();
        match self
            .raft
            .compact_releasing(snap.meta.index, snap.data, room)
        {
            Ok((meta, released)) => {
                let took_us = started.elapsed().as_micros() as u64;
                // Dropped on the snapshot thread, not here.
                if let Some(saver) = &self.saver {
                    saver.release(released);
                }
                info!(node = %self.name, index = meta.index, bytes, took_us, "snapshot saved; compacting the log");
                st.snap.index = st.snap.index.max(meta.index);
                self.persist(
                    st,
                    Write {
                        snapshot: None,
                        compact: Some((meta.index, meta.term)),
                        entries: Vec::new(),
                        hard_state: None,
                    },
                    PersistMarker::default(),
                    Vec::new(),
                );
            }
            Err(e) => debug!(node = %self.name, %e, "saved snapshot not used for compaction"),
        }
    }

    fn snapshot_failed(&mut self, st: &mut State, reason: String) {
        st.snap.busy = false;
        st.snap.failures += 1;
        let retry_in = st.snap.backoff;
        st.snap.retry_at = Some(Instant::now() + retry_in);
        st.snap.backoff = (retry_in * 2).min(SNAPSHOT_RETRY_MAX);
        error!(node = %self.name, %reason, failures = st.snap.failures, retry_in_ms = retry_in.as_millis() as u64, "snapshot failed; the log is not compacted; retrying later");
        st.snap.last_error = Some(reason);
    }

    /// Tells the apply thread whether to wake this task at its next batch,
    /// before this task waits for its next input: yes while the apply
    /// backlog is over half its bound (the core may be paused on it), and
    /// when entries handed to it are not seen applied yet and no storage
    /// write is outstanding (nothing else may wake this task: an idle or
    /// quiesced node would otherwise show a stale applied index for good),
    /// or client writes wait for the stamp anchor, which waits for the apply
    /// thread (`release_deferred`).
    /// Under load a write is nearly always outstanding, so applying a batch
    /// wakes nobody; its progress is read after the next input.
    ///
    /// Returns whether the apply thread moved past the oldest unseen batch
    /// since the last look (it may have, silently, before the wish was
    /// set): then the caller takes that in and asks again, instead of
    /// waiting for a wake-up that may never come.
    fn want_apply_progress(&self, st: &State) -> bool {
        let want = st.handed_bytes > MAX_APPLY_BACKLOG_BYTES / 2
            || (!st.handed.is_empty() && (st.pending.is_empty() || !st.deferred.is_empty()));
        let applied = self.apply_status.want(want);
        want && st.handed.front().is_some_and(|(i, _)| *i <= applied)
    }

    /// Takes in the apply thread's progress: releases the apply backlog,
    /// notices a halt. Cheap: called after every batch of inputs.
    fn on_apply_progress(&mut self, st: &mut State) {
        let (applied, halted) = {
            let apply = self.apply_status.borrow();
            (apply.applied, apply.halted.clone())
        };
        while st.handed.front().is_some_and(|(i, _)| *i <= applied) {
            if let Some((_, b)) = st.handed.pop_front() {
                st.handed_bytes = st.handed_bytes.saturating_sub(b);
            }
        }
        if st.handed_bytes <= MAX_APPLY_BACKLOG_BYTES / 2 {
            self.raft.set_apply_paused(false);
        }
        if let (None, Some(h)) = (&st.halted, halted) {
            warn!(node = %self.name, reason = %h, "state machine halted: giving up leadership; not campaigning until restarted");
            st.halted = Some(h.clone());
            self.raft.set_halted();
            // The apply thread answers them `Halted` (their entries are in
            // the log: they may yet be applied).
            self.flush_registers(st);
            // Reads waiting for their read index were never served: refused.
            for (_, (_, reply, _)) in std::mem::take(&mut st.reads) {
                reply.send(Err(self.refused_halted(&h)));
            }
        }
        self.release_deferred(st);
        self.release_config_waiting(st);
    }

    fn fail(&mut self, st: &mut State, reason: String) {
        error!(
            node = %self.name,
            %reason,
            restart = "once the disk is fixed; on Linux the log drops the page cache of its last segment at open, best effort (a failed fsync leaves unwritten records readable there; pages mapped or in use elsewhere are kept); if anything else may be reading the data directory, on tmpfs, FUSE, NFS or other systems, only after a reboot or after dropping the page cache",
            "node stopped: storage is no longer trustworthy"
        );
        st.fatal = Some(reason.clone());
        self.fault.send_replace(Some(reason.clone()));
        st.pending.clear();
        // A leader hands leadership over before it goes quiet (thesis
        // §3.10), so that the cluster need not wait out an election
        // timeout; the core steps down and never campaigns again
        // (`Raft::abdicate`). Sent directly: no Ready is taken after a
        // failure.
        let was_leader = self.raft.role() == Role::Leader;
        let handover = self.raft.abdicate();
        match &handover {
            Some(m) => {
                warn!(node = %self.name, to = m.to, term = m.term, "storage failed while leading: handing leadership over (TimeoutNow); stepped down");
            }
            None if was_leader => {
                warn!(node = %self.name, "storage failed while leading: no other voter to hand leadership to; stepped down");
            }
            None => {}
        }
        // The step-down shows in the status before the hand-over leaves
        // (module invariants): the target leads a round trip later, and
        // until then this node's status must not name it leading.
        self.publish(st);
        if let Some(m) = handover {
            self.transport.send(m);
        }
        // Reads waiting for their read index, writes waiting for the stamp
        // anchor and configuration changes parked for this leader's first
        // commit were never proposed: not applied (`release_deferred` would
        // answer them at the next input; a stopped node may get none).
        let refused = self.refused_failed(&reason);
        for (_, (_, reply, _)) in std::mem::take(&mut st.reads) {
            reply.send(Err(refused.clone()));
        }
        while let Some((_, reply)) = st.deferred.pop() {
            reply.send(Err(refused.clone()));
        }
        for change in st.config_waiting.drain(..) {
            change.refuse(refused.clone());
        }
        let err = Error::Storage(reason);
        self.flush_registers(st);
        // Proposals waiting at the apply thread: their entries will never
        // apply here (the rest of the cluster may still commit them).
        let _ = self.apply_tx.send(ApplyMsg::Fail(err));
    }

    /// Whether the status watch shows another role, term, leader or
    /// configuration than the core's, or another fatal state: such a
    /// change is published at once.
    fn status_urgent(&self, st: &State) -> bool {
        let old = self.status.borrow();
        (old.role, old.term, old.leader, old.config_index)
            != (
                self.raft.role(),
                self.raft.term(),
                self.raft.leader(),
                self.raft.config_index(),
            )
            || old.fatal.is_some() != st.fatal.is_some()
    }

    /// Rebuilds the status watch, or defers it (see [`STATUS_INTERVAL`]).
    /// A new configuration is published at once: a caller whose membership
    /// change completed sees it in the members.
    fn publish(&self, st: &mut State) {
        let now = Instant::now();
        let urgent = self.status_urgent(st);
        if let Some(at) = st.published_at
            && !urgent
            && now < at + self.status_interval
        {
            st.status_due.get_or_insert(at + self.status_interval);
            self.refresh_scalars(st);
            return;
        }
        st.published_at = Some(now);
        st.status_due = None;
        let apply = self.apply_status.borrow();
        let raft = &self.raft;
        let conf = raft.config();
        let leader = raft.leader();
        let leader_addr = leader.and_then(|l| conf.addrs.get(&l));
        let log = raft.log();
        // In place: only what changed is written (strings and vectors
        // with `clone_from`, which reuses their memory), and the members
        // are rebuilt only when the set of members did; watchers are woken
        // only if something changed, as with a fresh status compared.
        self.status.send_if_modified(|s| {
            // Every field, by name: a field added to the status and not
            // updated here does not compile.
            let PeerStatus {
                id,
                name,
                role,
                term,
                leader: s_leader,
                leader_addr: s_leader_addr,
                commit,
                applied,
                last_index,
                members,
                config_index,
                joint,
                halted,
                fatal,
                proposals,
                leader_changes,
                durable_latency,
                read_index_latency,
                sessions,
                leader_contact,
                dropped,
                snapshot_index,
                snapshot_failures,
                snapshot_error,
                snapshot_receiving_bytes,
                overloaded,
                longest_apply_pause,
                inline_batches,
                apply_backlog_bytes,
                session_replies,
                session_evictions,
                session_expiries,
                lease_reads,
            } = s;
            let mut changed = false;
            let c = &mut changed;
            set(c, id, raft.id());
            set_from(c, name, &self.name);
            set(c, role, raft.role());
            set(c, term, raft.term());
            set(c, s_leader, leader);
            if s_leader_addr.as_ref() != leader_addr {
                *s_leader_addr = leader_addr.cloned();
                *c = true;
            }
            set(c, commit, log.committed());
            set(c, applied, apply.applied);
            set(c, last_index, log.last_index());
            *c |= update_members(members, raft);
            set(c, config_index, raft.config_index());
            set(c, joint, conf.is_joint());
            set_from(c, halted, &apply.halted);
            set_from(c, fatal, &st.fatal);
            set(c, proposals, st.proposals);
            set(c, leader_changes, st.leader_changes);
            set_histogram(c, durable_latency, &st.durable_latency);
            set_histogram(c, read_index_latency, &st.read_index_latency);
            set(c, sessions, apply.sessions);
            set(c, leader_contact, st.leader_contact);
            set_from(c, dropped, raft.dropped());
            set(c, snapshot_index, st.snap.index);
            set(c, snapshot_failures, st.snap.failures);
            set_from(c, snapshot_error, &st.snap.last_error);
            set(c, snapshot_receiving_bytes, raft.snapshot_receiving_bytes());
            set(c, overloaded, self.admission.refused());
            set(c, longest_apply_pause, apply.longest_pause);
            set(c, inline_batches, apply.inline_batches);
            set(c, apply_backlog_bytes, st.handed_bytes as u64);
            set(c, session_replies, apply.session_replies);
            set(c, session_evictions, apply.session_counters.evicted);
            set(c, session_expiries, apply.session_counters.expired);
            set(c, lease_reads, self.lease_reads);
            changed
        });
    }
}

/// Writes `value` into `field` if it differs, and notes the change.
fn set<T: PartialEq>(changed: &mut bool, field: &mut T, value: T) {
    if *field != value {
        *field = value;
        *changed = true;
    }
}

/// [`set`] of a borrowed value, copied with `clone_from` (reusing the
/// field's memory) only if it differs.
fn set_from<T: PartialEq + Clone>(changed: &mut bool, field: &mut T, value: &T) {
    if field != value {
        field.clone_from(value);
        *changed = true;
    }
}

/// [`set_from`] of a histogram, field by field: its counts are copied
/// into the vector the status holds (the derived `clone_from` would
/// allocate a new one).
fn set_histogram(changed: &mut bool, field: &mut LatencyHistogram, value: &LatencyHistogram) {
    if field != value {
        let LatencyHistogram {
            bounds_us,
            counts,
            sum_us,
            count,
        } = field;
        *bounds_us = value.bounds_us;
        counts.clone_from(&value.counts);
        *sum_us = value.sum_us;
        *count = value.count;
        *changed = true;
    }
}

/// The status's members as the core's configuration and progress say:
/// every member once, in id order, with its address, vote and (on the
/// leader) progress. Updated in place while the set of members is the
/// same (no allocation); rebuilt otherwise. Returns whether anything
/// changed.
fn update_members(members: &mut Vec<MemberStatus>, raft: &Raft) -> bool {
    let conf = raft.config();
    // Every member in ascending order, once (as `Configuration::members`,
    // without building the set).
    let ids = || {
        let mut voters = conf.voters.iter().peekable();
        let mut outgoing = conf.outgoing.iter().peekable();
        let mut learners = conf.learners.iter().peekable();
        std::iter::from_fn(move || {
            let next = [voters.peek(), outgoing.peek(), learners.peek()]
                .into_iter()
                .flatten()
                .map(|id| **id)
                .min()?;
            for it in [&mut voters, &mut outgoing, &mut learners] {
                it.next_if(|id| **id == next);
            }
            Some(next)
        })
    };
    let member = |id: NodeId| {
        let progress = raft.progress_of(id);
        (
            id,
            conf.addrs.get(&id),
            conf.is_voter(id),
            progress.map(|p| p.0),
            progress.map(|p| p.1),
        )
    };
    let same_set = members.len() == ids().count() && members.iter().map(|m| m.id).eq(ids());
    if !same_set {
        *members = ids()
            .map(member)
            .map(|(id, addr, voter, matched, next)| MemberStatus {
                id,
                addr: addr.cloned(),
                voter,
                matched,
                next,
            })
            .collect();
        return true;
    }
    let mut changed = false;
    for m in members.iter_mut() {
        let (_, addr, voter, matched, next) = member(m.id);
        if m.addr.as_ref() != addr {
            m.addr = addr.cloned();
            changed = true;
        }
        set(&mut changed, &mut m.voter, voter);
        set(&mut changed, &mut m.matched, matched);
        set(&mut changed, &mut m.next, next);
    }
    changed
}

impl NodeTask {
    /// Updates the status's scalar fields in place (no clone unless an
    /// error text changed); watchers are woken only if one changed.
    fn refresh_scalars(&self, st: &State) {
        let apply = self.apply_status.borrow();
        let log = self.raft.log();
        let now = (
            (log.committed(), apply.applied, log.last_index()),
            (st.proposals, st.leader_changes, st.leader_contact),
            (
                apply.sessions,
                apply.session_replies,
                apply.session_counters.evicted,
                apply.session_counters.expired,
            ),
            (st.snap.index, st.snap.failures, self.admission.refused()),
            self.lease_reads,
            (
                apply.longest_pause,
                st.handed_bytes as u64,
                self.raft.snapshot_receiving_bytes(),
                apply.inline_batches,
            ),
        );
        self.status.send_if_modified(|s| {
            let was = (
                (s.commit, s.applied, s.last_index),
                (s.proposals, s.leader_changes, s.leader_contact),
                (
                    s.sessions,
                    s.session_replies,
                    s.session_evictions,
                    s.session_expiries,
                ),
                (s.snapshot_index, s.snapshot_failures, s.overloaded),
                s.lease_reads,
                (
                    s.longest_apply_pause,
                    s.apply_backlog_bytes,
                    s.snapshot_receiving_bytes,
                    s.inline_batches,
                ),
            );
            let mut changed = was != now;
            let (indexes, counters, sessions, snapshots, lease_reads, apply_figures) = now;
            (s.commit, s.applied, s.last_index) = indexes;
            (s.proposals, s.leader_changes, s.leader_contact) = counters;
            (
                s.sessions,
                s.session_replies,
                s.session_evictions,
                s.session_expiries,
            ) = sessions;
            (s.snapshot_index, s.snapshot_failures, s.overloaded) = snapshots;
            s.lease_reads = lease_reads;
            (
                s.longest_apply_pause,
                s.apply_backlog_bytes,
                s.snapshot_receiving_bytes,
                s.inline_batches,
            ) = apply_figures;
            for (field, value) in [
                (&mut s.halted, &apply.halted),
                (&mut s.snapshot_error, &st.snap.last_error),
            ] {
                if field != value {
                    field.clone_from(value);
                    changed = true;
                }
            }
            changed
        });
    }
}

/// Resolves when the gate is woken (never without a gate).
async fn gate_woken(gate: &Option<Arc<super::TickGate>>) {
    match gate {
        Some(gate) => gate.woken().await,
        None => std::future::pending().await,
    }
}

/// Resolves with the cause once the shared store failed (never without
/// one, or once it is gone).
async fn store_failed(fault: &mut Option<StoreFault>) -> String {
    let Some(fault) = fault else {
        return std::future::pending().await;
    };
    let cause = match fault.wait_for(Option::is_some).await {
        Ok(cause) => cause.clone(),
        Err(_) => None,
    };
    match cause {
        Some(cause) => cause,
        None => std::future::pending().await,
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
#[path = "failure_handover_tests.rs"]
mod failure_handover_tests;
#[cfg(test)]
#[path = "status_lag_tests.rs"]
mod status_lag_tests;

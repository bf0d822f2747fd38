//! The node task: the one task that owns a node's [`Raft`] core.
//!
//! It feeds the core ticks (a tokio interval), inbound messages, proposals,
//! reads and completion notices, and after every batch of inputs drains the
//! core's [`Ready`](crate::core::Ready): messages go to the transport at
//! once, writes go to the storage thread (group commit), persisted-only
//! messages leave when their write completes, committed entries and read
//! indexes go to the apply task. Nothing on this task blocks on IO.
//!
//! Invariants:
//! - Readies are handed to storage in the order they are taken, and their
//!   completions are processed in the same order (tokens increase);
//! - a storage error is fatal: the node stops taking inputs that need the
//!   disk and reports the error in its status (DESIGN §4: never retry after
//!   a failed fsync);
//! - every proposal and read gets an answer: a result, `NotLeader` with the
//!   leader's address when known, or the error that stopped the node.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, error, info};

use super::apply::{ApplyMsg, ApplyStatus, Reply, Taken};
use super::persist::{Persister, Write};
use super::session::{Envelope, Op, STAMP_SLACK_MS};
use super::status::{LatencyHistogram, MemberStatus, PeerStatus};
use crate::core::{
    Configuration, Index, Message, NodeId, NotLeader, PersistMarker, ProposeError, Raft,
    TransferError,
};
use crate::error::Error;
use crate::storage::{Snapshot, StorageError};
use crate::transport::Transport;

/// Requests to the node task.
pub enum Command {
    /// Propose a validated write or session operation (stamped here).
    Write {
        /// What the entry does.
        op: Op,
        /// Where the result goes.
        reply: Reply,
    },
    /// Serve an encoded query linearizably.
    Read {
        /// The query.
        query: Vec<u8>,
        /// Where the answer goes.
        reply: Reply,
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
    /// Flush and stop.
    Shutdown {
        /// Answered once stopped.
        reply: oneshot::Sender<Result<(), Error>>,
    },
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

/// The leader's stamp clock for one term: replicated time cannot run ahead
/// of (or behind) what this leader's monotonic clock measured since the
/// term's anchor by more than [`STAMP_SLACK_MS`], whatever its wall clock
/// says.
struct StampClock {
    term: u64,
    /// Replicated time at the anchor (the apply task's, or the wall clock
    /// on a cluster that has none yet).
    anchor_ms: u64,
    anchor_at: tokio::time::Instant,
    /// The last stamp this leader issued (stamps never go back).
    last: u64,
    /// Whether a clamp was logged this term (once is enough).
    warned: bool,
}

impl StampClock {
    fn stamp(&mut self, wall_ms: u64) -> u64 {
        let elapsed = u64::try_from(self.anchor_at.elapsed().as_millis()).unwrap_or(u64::MAX);
        let expected = self.anchor_ms.saturating_add(elapsed);
        let stamp = wall_ms
            .max(expected.saturating_sub(STAMP_SLACK_MS))
            .min(expected.saturating_add(STAMP_SLACK_MS))
            .max(self.last);
        self.last = stamp;
        stamp
    }
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
    pub(super) apply_tx: mpsc::UnboundedSender<ApplyMsg>,
    pub(super) apply_status: watch::Receiver<ApplyStatus>,
    pub(super) snapshot_rx: mpsc::UnboundedReceiver<Taken>,
    pub(super) inbox: mpsc::Receiver<Message>,
    pub(super) commands: mpsc::Receiver<Command>,
    pub(super) status: watch::Sender<PeerStatus>,
    pub(super) tick: Duration,
    pub(super) on_stop: Option<StopHook>,
    pub(super) wall_clock: WallClock,
}

struct Pending {
    token: u64,
    marker: PersistMarker,
    messages: Vec<Message>,
    queued_at: std::time::Instant,
}

struct State {
    persisted_tx: mpsc::UnboundedSender<Result<u64, StorageError>>,
    pending: VecDeque<Pending>,
    next_token: u64,
    reads: HashMap<u64, (Vec<u8>, Reply, std::time::Instant)>,
    durable_latency: LatencyHistogram,
    read_index_latency: LatencyHistogram,
    /// Proposals made since the last drain, to register with the apply task.
    registers: Vec<(Index, u64, Reply)>,
    next_ctx: u64,
    snapshotting: bool,
    peers: BTreeMap<NodeId, String>,
    fatal: Option<String>,
    proposals: u64,
    leader_changes: u64,
    last_leader: Option<NodeId>,
    leader_contact: Option<std::time::Instant>,
    stamps: Option<StampClock>,
}

impl NodeTask {
    fn leader_hint(&self) -> Option<String> {
        let leader = self.raft.leader()?;
        self.raft.config().addrs.get(&leader).cloned()
    }

    fn not_leader(&self) -> Error {
        Error::NotLeader {
            hint: self.leader_hint(),
        }
    }

    /// Runs the node until shutdown.
    pub async fn run(mut self) {
        let (persisted_tx, mut persisted_rx) = mpsc::unbounded_channel();
        let mut st = State {
            persisted_tx,
            pending: VecDeque::new(),
            next_token: 1,
            reads: HashMap::new(),
            durable_latency: LatencyHistogram::default(),
            read_index_latency: LatencyHistogram::default(),
            registers: Vec::new(),
            next_ctx: 1,
            snapshotting: false,
            peers: BTreeMap::new(),
            fatal: None,
            proposals: 0,
            leader_changes: 0,
            last_leader: None,
            leader_contact: None,
            stamps: None,
        };
        let mut ticker = tokio::time::interval(self.tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        self.drain_ready(&mut st);
        self.publish(&st);
        loop {
            tokio::select! {
                _ = ticker.tick() => {
                    if st.fatal.is_none() {
                        self.raft.tick();
                    }
                }
                Some(m) = self.inbox.recv() => {
                    let mut from_leader = false;
                    if st.fatal.is_none() {
                        let from = m.from;
                        self.raft.step(m);
                        from_leader |= self.raft.leader() == Some(from);
                    }
                    for _ in 0..256 {
                        match self.inbox.try_recv() {
                            Ok(m) if st.fatal.is_none() => {
                                let from = m.from;
                                self.raft.step(m);
                                from_leader |= self.raft.leader() == Some(from);
                            }
                            Ok(_) => {}
                            Err(_) => break,
                        }
                    }
                    if from_leader {
                        st.leader_contact = Some(std::time::Instant::now());
                    }
                }
                Some(done) = persisted_rx.recv() => self.on_persisted(&mut st, done),
                Some(taken) = self.snapshot_rx.recv() => self.on_snapshot_taken(&mut st, taken),
                cmd = self.commands.recv() => {
                    let Some(cmd) = cmd else { break };
                    if let Command::Shutdown { reply } = cmd {
                        let result = self.stop().await;
                        let _ = reply.send(result);
                        return;
                    }
                    self.on_command(&mut st, cmd);
                    for _ in 0..256 {
                        match self.commands.try_recv() {
                            Ok(Command::Shutdown { reply }) => {
                                let result = self.stop().await;
                                let _ = reply.send(result);
                                return;
                            }
                            Ok(cmd) => self.on_command(&mut st, cmd),
                            Err(_) => break,
                        }
                    }
                }
            }
            self.drain_ready(&mut st);
            self.publish(&st);
        }
        let _ = self.stop().await;
    }

    async fn stop(&mut self) -> Result<(), Error> {
        if let Some(hook) = self.on_stop.take() {
            hook().await;
        }
        match self.persister.take() {
            Some(p) => p.shutdown(),
            None => Ok(()),
        }
    }

    fn on_command(&mut self, st: &mut State, cmd: Command) {
        if let Some(f) = &st.fatal {
            let err = Error::Storage(f.clone());
            match cmd {
                Command::Write { reply, .. } | Command::Read { reply, .. } => {
                    let _ = reply.send(Err(err));
                }
                Command::Transfer { reply, .. } => {
                    let _ = reply.send(Err(err));
                }
                Command::ChangeConfig { reply, .. } => {
                    let _ = reply.send(Err(err));
                }
                Command::Shutdown { .. } => {}
            }
            return;
        }
        match cmd {
            Command::Write { op, reply } => match self.propose_envelope(st, op) {
                Ok((index, term)) => {
                    st.proposals += 1;
                    // Handed to the apply task in one message per batch of
                    // commands, before any entry of this batch (drain_ready).
                    st.registers.push((index, term, reply));
                }
                Err(e) => {
                    let _ = reply.send(Err(self.propose_error(e)));
                }
            },
            Command::Read { query, reply } => {
                let ctx = st.next_ctx;
                st.next_ctx += 1;
                match self.raft.read_index(ctx) {
                    Ok(()) => {
                        st.reads
                            .insert(ctx, (query, reply, std::time::Instant::now()));
                    }
                    Err(NotLeader { .. }) => {
                        let _ = reply.send(Err(self.not_leader()));
                    }
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
                let r = self
                    .raft
                    .propose_config(target)
                    .map_err(|e| self.propose_error(e));
                let _ = reply.send(r);
            }
            Command::Shutdown { .. } => {}
        }
    }

    /// Wraps an operation in its log envelope, stamped with this leader's
    /// clamped clock (the replicated time sessions expire by), and proposes
    /// it.
    fn propose_envelope(&mut self, st: &mut State, op: Op) -> Result<(Index, u64), ProposeError> {
        let stamp_ms = self.stamp(st);
        let envelope = Envelope { stamp_ms, op };
        match postcard::to_allocvec(&envelope) {
            Ok(bytes) => self.raft.propose(bytes),
            Err(e) => Err(ProposeError::InvalidConfiguration(format!("envelope: {e}"))),
        }
    }

    /// The stamp of an entry proposed now: the wall clock, clamped to the
    /// term's anchor plus the elapsed monotonic time, within
    /// [`STAMP_SLACK_MS`] either way. The anchor is the replicated time this
    /// node applied when its term's first stamp was taken, so a leader whose
    /// wall clock stepped (NTP, a resumed VM) moves replicated time by the
    /// slack at most (see `session.rs`).
    fn stamp(&self, st: &mut State) -> u64 {
        let wall = (self.wall_clock)();
        let term = self.raft.term();
        let clock = match &mut st.stamps {
            Some(c) if c.term == term => c,
            slot => {
                let replicated = self.apply_status.borrow().replicated_ms;
                let anchor_ms = if replicated == 0 { wall } else { replicated };
                slot.insert(StampClock {
                    term,
                    anchor_ms,
                    anchor_at: tokio::time::Instant::now(),
                    last: 0,
                    warned: false,
                })
            }
        };
        let stamp = clock.stamp(wall);
        if wall.abs_diff(stamp) > STAMP_SLACK_MS && !clock.warned {
            clock.warned = true;
            // After downtime replicated time trails the wall clock for good
            // (sessions do not age while the cluster is down); a clock step
            // looks the same. Neither is a fault: say it once a term.
            info!(node = %self.name, wall_ms = wall, stamp_ms = stamp, term, "replicated time and this leader's wall clock differ by more than the slack (downtime, or a clock step); stamps follow the monotonic clock");
        }
        stamp
    }

    fn propose_error(&self, e: ProposeError) -> Error {
        match e {
            ProposeError::NotLeader(_) => self.not_leader(),
            other => Error::Rejected(other.to_string()),
        }
    }

    /// Drains every output of the core.
    fn drain_ready(&mut self, st: &mut State) {
        if !st.registers.is_empty() {
            // Before any committed entry or snapshot that could cover them.
            let _ = self
                .apply_tx
                .send(ApplyMsg::Register(std::mem::take(&mut st.registers)));
        }
        while st.fatal.is_none() && self.raft.has_ready() {
            let rd = self.raft.ready();
            let must_write = rd.must_persist() || !rd.persisted_messages.is_empty();
            for m in rd.messages {
                self.transport.send(m);
            }
            let snapshot = rd.snapshot.map(|s| Snapshot {
                meta: s.meta,
                data: s.data,
            });
            if let Some(s) = &snapshot {
                let _ = self.apply_tx.send(ApplyMsg::Restore {
                    index: s.meta.index,
                    data: s.data.clone(),
                });
            }
            if must_write {
                let token = st.next_token;
                st.next_token += 1;
                st.pending.push_back(Pending {
                    token,
                    marker: rd.persist_marker,
                    messages: rd.persisted_messages,
                    queued_at: std::time::Instant::now(),
                });
                let done = self.persister.as_ref().and_then(|p| {
                    p.write(
                        Write {
                            snapshot,
                            entries: rd.entries,
                            hard_state: rd.hard_state,
                        },
                        st.persisted_tx.clone(),
                        token,
                    )
                });
                // A store written inline (memory only) is done already.
                if let Some(r) = done {
                    self.on_persisted(st, r.map(|()| token));
                }
            }
            if !rd.committed_entries.is_empty() {
                let _ = self.apply_tx.send(ApplyMsg::Entries(rd.committed_entries));
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
                    Err(_) => {
                        let _ = reply.send(Err(self.not_leader()));
                    }
                }
            }
            if !st.snapshotting && self.raft.wants_snapshot() {
                st.snapshotting = true;
                let _ = self.apply_tx.send(ApplyMsg::TakeSnapshot);
            }
        }
        self.update_peers(st);
        let leader = self.raft.leader();
        if leader.is_some() && leader != st.last_leader {
            st.leader_changes += 1;
        }
        if leader.is_none() || leader == Some(self.raft.id()) {
            st.leader_contact = None;
        }
        st.last_leader = leader;
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
        match done {
            Ok(token) => {
                while st.pending.front().is_some_and(|p| p.token <= token) {
                    let Some(p) = st.pending.pop_front() else {
                        break;
                    };
                    if p.marker.last_entry.is_some() {
                        st.durable_latency.record(p.queued_at.elapsed());
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

    fn on_snapshot_taken(&mut self, st: &mut State, taken: Taken) {
        st.snapshotting = false;
        if st.fatal.is_some() {
            return;
        }
        match self.raft.compact(taken.index, taken.data.clone()) {
            Ok(meta) => {
                info!(node = %self.name, index = meta.index, bytes = taken.data.len(), "snapshot taken; compacting the log");
                let token = st.next_token;
                st.next_token += 1;
                st.pending.push_back(Pending {
                    token,
                    marker: PersistMarker::default(),
                    messages: Vec::new(),
                    queued_at: std::time::Instant::now(),
                });
                let done = self.persister.as_ref().and_then(|p| {
                    p.write(
                        Write {
                            snapshot: Some(Snapshot {
                                meta,
                                data: taken.data,
                            }),
                            entries: Vec::new(),
                            hard_state: None,
                        },
                        st.persisted_tx.clone(),
                        token,
                    )
                });
                if let Some(r) = done {
                    self.on_persisted(st, r.map(|()| token));
                }
            }
            Err(e) => debug!(node = %self.name, %e, "snapshot not used"),
        }
    }

    fn fail(&mut self, st: &mut State, reason: String) {
        error!(node = %self.name, %reason, "node stopped: storage is no longer trustworthy");
        st.fatal = Some(reason.clone());
        for (_, (_, reply, _)) in st.reads.drain() {
            let _ = reply.send(Err(Error::Storage(reason.clone())));
        }
    }

    fn publish(&self, st: &State) {
        let status = self.raft.status();
        let apply = self.apply_status.borrow().clone();
        let conf = &status.config;
        let members = conf
            .members()
            .into_iter()
            .map(|id| MemberStatus {
                id,
                addr: conf.addrs.get(&id).cloned(),
                voter: conf.is_voter(id),
                matched: status.progress.get(&id).map(|p| p.0),
                next: status.progress.get(&id).map(|p| p.1),
            })
            .collect();
        let new = PeerStatus {
            id: status.id,
            name: self.name.clone(),
            role: status.role,
            term: status.term,
            leader: status.leader,
            leader_addr: status.leader.and_then(|l| conf.addrs.get(&l).cloned()),
            commit: status.commit,
            applied: apply.applied,
            last_index: status.last_index,
            members,
            config_index: status.config_index,
            joint: conf.is_joint(),
            halted: apply.halted,
            fatal: st.fatal.clone(),
            proposals: st.proposals,
            leader_changes: st.leader_changes,
            durable_latency: st.durable_latency.clone(),
            read_index_latency: st.read_index_latency.clone(),
            sessions: apply.sessions,
            leader_contact: st.leader_contact,
            session_replies: apply.session_replies,
            session_evictions: apply.session_counters.evicted,
            session_expiries: apply.session_counters.expired,
        };
        self.status.send_if_modified(|old| {
            if *old != new {
                *old = new;
                true
            } else {
                false
            }
        });
    }
}

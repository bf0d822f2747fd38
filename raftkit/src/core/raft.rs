//! The node: roles, terms, and the dispatch of inputs to the rules that
//! handle them.
//!
//! [`Raft`] owns the state of one node. Its inputs are [`Raft::tick`],
//! [`Raft::step`], [`Raft::propose`], [`Raft::read_index`],
//! [`Raft::transfer_leadership`] and the completion notices
//! [`Raft::on_persisted`]; its outputs are drained with [`Raft::ready`].
//! The rules themselves live in sibling modules, one concept each:
//! `election` (PreVote, votes, CheckQuorum), `replication` (AppendEntries,
//! heartbeats, commitment), `read_index` (linearizable reads), `transfer`
//! (leadership transfer) and `snapshot` (InstallSnapshot).
//!
//! Invariants kept here:
//! - the term never decreases; a higher term seen in any message is adopted
//!   before the message is handled (Raft §5.1);
//! - at most one vote per term (Raft §5.2), made durable before any message
//!   that depends on it leaves (see [`Raft::send`]);
//! - inside a lease (it leads, heard its leader within an election
//!   timeout, or is in its startup lease) a node ignores vote requests of
//!   a higher term (thesis §4.2.3), but a transfer vote (§3.10) one term
//!   up that names this node's leader of its term as the ordering leader
//!   (`Body::TransferVote`; or the earlier form, which names nobody, from
//!   a peer of an earlier binary): see the module docs of `transfer`;
//! - every pending proposal or read either succeeds or gets an error: a
//!   leader that steps down fails its pending reads with [`NotLeader`].

use std::collections::BTreeMap;

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::config::{Config, ConfigError};
use super::inbound::DropCounts;
use super::lease::Lease;
use super::log::RaftLog;
use super::message::{Body, Message};
use super::progress::Progress;
use super::read_index::ReadIndex;
use super::ready::{PersistMarker, ReadState, Ready};
use super::snapshot::SnapshotTransfer;
use super::types::{
    Configuration, Entry, HardState, Index, NO_NODE, NodeId, Payload, SnapshotMeta, Term,
};

/// The role a node plays in its current term (Raft §5.1, thesis §9.6).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
pub enum Role {
    /// Follows a leader (or waits for one).
    #[default]
    Follower,
    /// Asks whether it could win an election, without raising its term.
    PreCandidate,
    /// Campaigns for leadership in its term.
    Candidate,
    /// Leads its term.
    Leader,
}

/// A request that only the leader can serve reached another node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not the leader (leader hint: {leader:?})")]
pub struct NotLeader {
    /// The leader this node believes in, if any.
    pub leader: Option<NodeId>,
}

/// Why a proposal was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    /// This node is not the leader.
    #[error(transparent)]
    NotLeader(#[from] NotLeader),
    /// A leadership transfer is in progress; retry on the new leader.
    #[error("leadership transfer to {0} in progress")]
    Transferring(NodeId),
    /// A configuration change is already in flight (one at a time).
    #[error("a configuration change is already in flight (appended at index {0})")]
    ChangeInFlight(Index),
    /// The leader has not yet committed an entry of its own term, which it
    /// must before it changes the configuration (thesis §4.1, the bug in
    /// single-server changes).
    #[error("the leader has not committed an entry of its term yet")]
    NotReady,
    /// The requested configuration is invalid.
    #[error("invalid configuration: {0}")]
    InvalidConfiguration(String),
    /// This node's state machine halted (see [`Raft::set_halted`]).
    #[error("this node halted")]
    Halted,
    /// The log reached the last index a node may use,
    /// [`MAX_INDEX`](super::inbound::MAX_INDEX): the command was refused
    /// before it reached the log, so it is not applied.
    #[error("the log reached the last usable index {0}: refused, not applied")]
    IndexExhausted(Index),
}

/// Durable state a node restarts from: the last snapshot, the entries after
/// it, and the hard state. A new node starts from
/// [`Restored::bootstrap`] or [`Restored::empty`].
#[derive(Debug, Clone, Default)]
pub struct Restored {
    /// Term, vote and commit index.
    pub hard_state: HardState,
    /// The snapshot the log starts after.
    pub snapshot: SnapshotMeta,
    /// The snapshot's data, if the node holds one (so it can send it on).
    pub snapshot_data: Option<Vec<u8>>,
    /// The entries after the snapshot.
    pub entries: Vec<Entry>,
}

impl Restored {
    /// A node that belongs to no cluster yet: it never campaigns until a
    /// leader sends it a configuration that includes it.
    pub fn empty() -> Self {
        Restored::default()
    }

    /// The initial state of every founding member of a new cluster: the same
    /// configuration entry at index 1, term 1, on every member, so that their
    /// logs agree from the start.
    pub fn bootstrap(conf: Configuration) -> Self {
        Restored {
            hard_state: HardState {
                term: 1,
                vote: NO_NODE,
                commit: 0,
            },
            snapshot: SnapshotMeta::default(),
            snapshot_data: None,
            entries: vec![Entry {
                term: 1,
                index: 1,
                payload: Payload::Config(conf),
            }],
        }
    }
}

/// A snapshot of a node's state for status reports and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// The node.
    pub id: NodeId,
    /// Its role.
    pub role: Role,
    /// Its term.
    pub term: Term,
    /// The leader it follows (itself when leader), if known.
    pub leader: Option<NodeId>,
    /// Its commit index.
    pub commit: Index,
    /// The index it has handed to the state machine.
    pub applied: Index,
    /// Its last log index.
    pub last_index: Index,
    /// The configuration in force.
    pub config: Configuration,
    /// The index the configuration in force was appended at.
    pub config_index: Index,
    /// On a leader: each member's (matched, next) positions.
    pub progress: BTreeMap<NodeId, (Index, Index)>,
    /// Inbound messages dropped so far, per reason (see
    /// [`Raft::step_checked`]).
    pub dropped: DropCounts,
}

/// One Raft node: a pure, deterministic state machine.
pub struct Raft {
    pub(super) cfg: Config,
    pub(super) id: NodeId,
    pub(super) term: Term,
    pub(super) vote: NodeId,
    pub(super) leader: NodeId,
    /// The leader of the current term, once heard from (or this node, when
    /// it leads): unlike `leader`, kept when a pre-candidacy starts, since
    /// the term did not change (thesis §3.10: the only node that may order
    /// a transfer campaign with TimeoutNow). `NO_NODE` until known; reset
    /// with every new term. At most one leader per term (Raft §5.2), so it
    /// never changes within a term once set.
    pub(super) term_leader: NodeId,
    /// Whether `term_leader` was a voter of this node's configuration when
    /// first followed (or this node had none yet, or leads): only such a
    /// leader may order a transfer campaign (see `inbound`, TimeoutNow).
    ///
    /// Frozen for the term at first follow, on purpose: a node that
    /// followed a leader before it held the configuration promoting that
    /// leader (a promotion it missed, thesis §4.1) refuses its TimeoutNow
    /// for the rest of the term even once it holds the promotion, and a
    /// transfer to it is abandoned after an election timeout (see
    /// [`Raft::transfer_leadership`]). Recomputing the flag from the log
    /// would trust a configuration the leader itself wrote, which a
    /// learner can make up (module docs of `inbound`, stop 59). A node
    /// with no configuration yet trusts any leader it follows: harmless,
    /// since voters refuse a transfer vote from a node that is not a voter
    /// of theirs (`TransferFromNonVoter`), which such a node is.
    pub(super) term_leader_voter: bool,
    /// The tick this node last heard from the leader of its term (or led,
    /// or started): for the window in which it refuses a non-voter's
    /// leadership and terms (see `inbound`).
    pub(super) leader_heard_at: u64,
    /// The tick this node last granted a real (not a pre-) vote, to
    /// another candidate or to itself when it campaigned, if it did since
    /// it started: a second window against non-voters, which spares the
    /// candidate it voted for (see `inbound`).
    pub(super) voted_at: Option<u64>,
    pub(super) role: Role,
    pub(super) log: RaftLog,
    /// The configuration in force: the last one in the log (thesis §4.1).
    pub(super) conf: Configuration,
    /// Where `conf` was appended.
    pub(super) conf_index: Index,
    /// Leader only: each member's replication progress (self included).
    pub(super) progress: BTreeMap<NodeId, Progress>,
    /// Candidate and pre-candidate: votes received.
    pub(super) votes: BTreeMap<NodeId, bool>,
    pub(super) election_elapsed: u32,
    pub(super) heartbeat_elapsed: u32,
    /// Ticks since the node started: the core's only clock, used to time
    /// catch-up rounds (thesis §4.2.1).
    pub(super) ticks: u64,
    pub(super) randomized_timeout: u32,
    rng: StdRng,
    pub(super) reads: ReadIndex,
    pub(super) read_states: Vec<ReadState>,
    /// Leader only: the lease of lease reads (see `lease`).
    pub(super) lease: Lease,
    /// Follower: the leader's commit index as last heard (stale reads).
    pub(super) known_leader_commit: Index,
    /// Leader only: the target of a leadership transfer in progress.
    pub(super) transfer_target: Option<NodeId>,
    /// Leader only: ticks since the transfer in progress started. A clock
    /// of its own: CheckQuorum's runs on `election_elapsed`, which a
    /// transfer must not restart (thesis §3.10, §6.2; see `transfer`).
    pub(super) transfer_elapsed: u32,
    /// Snapshot chunks being sent (leader) or received (follower).
    pub(super) snapshots: SnapshotTransfer,
    msgs: Vec<Message>,
    msgs_after_persist: Vec<Message>,
    /// Term and vote as last made durable.
    pub(super) durable: (Term, NodeId),
    /// Inbound messages dropped, per reason.
    pub(super) dropped: DropCounts,
    /// The hard state as last handed out in a Ready.
    handed: HardState,
    /// The runtime's state machine stopped (see [`Raft::set_halted`]).
    pub(super) halted: bool,
    /// The runtime cannot take more committed entries now (see
    /// [`Raft::set_apply_paused`]).
    pub(super) apply_paused: bool,
    /// Commands were proposed since the last [`Raft::ready`]: the leader
    /// sends them to its followers there, in one AppendEntries per
    /// follower for all of them (within the batch and window limits), not
    /// one per proposal.
    broadcast_due: bool,
}

impl Raft {
    /// Creates a node from its parameters and its durable state.
    pub fn new(cfg: Config, restored: Restored) -> Result<Self, ConfigError> {
        cfg.validate()?;
        let Restored {
            hard_state,
            snapshot,
            snapshot_data,
            entries,
        } = restored;
        let log = RaftLog::restore(snapshot, entries, hard_state.commit);
        let (conf_index, conf) = log.last_config();
        let conf = conf.clone();
        let rng = StdRng::seed_from_u64(cfg.seed ^ cfg.id.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let mut raft = Raft {
            id: cfg.id,
            term: hard_state.term,
            vote: hard_state.vote,
            leader: NO_NODE,
            term_leader: NO_NODE,
            term_leader_voter: false,
            leader_heard_at: 0,
            voted_at: None,
            role: Role::Follower,
            conf,
            conf_index,
            progress: BTreeMap::new(),
            votes: BTreeMap::new(),
            election_elapsed: 0,
            heartbeat_elapsed: 0,
            ticks: 0,
            randomized_timeout: cfg.election_ticks,
            rng,
            reads: ReadIndex::default(),
            read_states: Vec::new(),
            lease: Lease::default(),
            known_leader_commit: 0,
            transfer_target: None,
            transfer_elapsed: 0,
            snapshots: SnapshotTransfer::new(snapshot_data),
            msgs: Vec::new(),
            msgs_after_persist: Vec::new(),
            durable: (hard_state.term, hard_state.vote),
            dropped: DropCounts::default(),
            handed: HardState {
                commit: log.committed(),
                ..hard_state
            },
            log,
            cfg,
            halted: false,
            apply_paused: false,
            broadcast_due: false,
        };
        raft.reset_randomized_timeout();
        Ok(raft)
    }

    // ----- accessors -------------------------------------------------------

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The current term.
    pub fn term(&self) -> Term {
        self.term
    }

    /// The current role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The leader this node follows, if known.
    pub fn leader(&self) -> Option<NodeId> {
        (self.leader != NO_NODE).then_some(self.leader)
    }

    /// The log (read-only).
    pub fn log(&self) -> &RaftLog {
        &self.log
    }

    /// Test-only: the log, to break it by hand (the oracle's unit tests).
    #[cfg(all(test, feature = "sim"))]
    pub(crate) fn log_mut_unchecked(&mut self) -> &mut RaftLog {
        &mut self.log
    }

    /// The configuration in force.
    pub fn config(&self) -> &Configuration {
        &self.conf
    }

    /// The log index the configuration in force was appended at.
    pub fn config_index(&self) -> Index {
        self.conf_index
    }

    /// A member's progress as [`Raft::status`] reports it, `(matched,
    /// next)`, without building the whole status: `None` for a node this
    /// one tracks no progress of.
    pub(crate) fn progress_of(&self, id: NodeId) -> Option<(Index, Index)> {
        self.progress.get(&id).map(|p| (p.matched, p.next))
    }

    /// The node's parameters.
    pub fn params(&self) -> &Config {
        &self.cfg
    }

    /// The hard state as it stands (durable or not).
    pub fn hard_state(&self) -> HardState {
        HardState {
            term: self.term,
            vote: self.vote,
            commit: self.log.committed(),
        }
    }

    /// A summary for status reports.
    pub fn status(&self) -> Status {
        Status {
            id: self.id,
            role: self.role,
            term: self.term,
            leader: self.leader(),
            commit: self.log.committed(),
            applied: self.log.applied(),
            last_index: self.log.last_index(),
            config: self.conf.clone(),
            config_index: self.conf_index,
            progress: self
                .progress
                .iter()
                .map(|(&id, p)| (id, (p.matched, p.next)))
                .collect(),
            dropped: self.dropped.clone(),
        }
    }

    pub(super) fn not_leader(&self) -> NotLeader {
        NotLeader {
            leader: self.leader(),
        }
    }

    /// Whether this node may campaign: it votes in the configuration in
    /// force. Learners and nodes outside the configuration never do, nor
    /// does a node behind its membership fence ([`Config::membership_fence`]).
    pub(super) fn promotable(&self) -> bool {
        let voter = self.conf.is_voter(self.id);
        #[cfg(any(test, feature = "sim"))]
        let voter = voter || self.cfg.bugs.non_voters_campaign;
        voter && self.past_fence()
    }

    /// Whether the configuration in force is newer than this node's
    /// membership fence ([`Config::membership_fence`]): only then does it
    /// speak of this replica rather than of an earlier one with its id.
    pub(super) fn past_fence(&self) -> bool {
        self.cfg
            .membership_fence
            .is_none_or(|(index, _)| self.conf_index > index)
    }

    // ----- role transitions ------------------------------------------------

    pub(super) fn reset_randomized_timeout(&mut self) {
        // Raft §5.2: election timeouts are chosen randomly from [T, 2T).
        let t = self.cfg.election_ticks;
        self.randomized_timeout = self.rng.random_range(t..2 * t);
    }

    /// Common reset when the term or role changes.
    fn reset(&mut self, term: Term) {
        if self.role == Role::Leader {
            // Leading is hearing this term's leader: a node that stops
            // leading (a transfer, a voter's higher term, CheckQuorum)
            // knows no leader of its new term until that leader's first
            // message, and gets the whole window against non-voters
            // (`inbound`; review s58, finding 1).
            self.leader_heard_at = self.ticks;
        }
        if self.term != term {
            self.term = term;
            self.vote = NO_NODE;
            self.term_leader = NO_NODE;
            self.term_leader_voter = false;
            // Its leader's chunks are stale from now on (Raft §5.1).
            let committed = self.log.committed();
            self.snapshots.forget_obsolete_receiving(term, committed);
        }
        self.leader = NO_NODE;
        self.election_elapsed = 0;
        self.heartbeat_elapsed = 0;
        self.reset_randomized_timeout();
        self.votes.clear();
        self.progress.clear();
        self.transfer_target = None;
        self.transfer_elapsed = 0;
        self.snapshots.abort_sends();
        // A node that stops leading fails every read it was confirming; a
        // follower, every read it forwarded to its leader.
        self.fail_all_reads();
        self.lease.reset();
    }

    /// Becomes a follower of `leader` (or of nobody) in `term`.
    pub(super) fn become_follower(&mut self, term: Term, leader: NodeId) {
        self.reset(term);
        self.leader = leader;
        if leader != NO_NODE {
            self.follow_term_leader(leader);
        }
        self.role = Role::Follower;
        // Reads failed in reset() carry no hint; the leader is known now.
    }

    /// Records `leader` as the leader of the current term, heard from now.
    /// Raft §5.2 (at most one leader per term): once set, `term_leader`
    /// never changes within the term (`inbound` drops the leader messages
    /// of anyone else).
    fn follow_term_leader(&mut self, leader: NodeId) {
        debug_assert!(
            self.term_leader == NO_NODE || self.term_leader == leader,
            "a second leader of term {}: {leader} after {}",
            self.term,
            self.term_leader
        );
        if self.term_leader == NO_NODE {
            self.term_leader = leader;
            self.term_leader_voter = self.conf.voters.is_empty() || self.conf.is_voter(leader);
        }
        self.leader_heard_at = self.ticks;
    }

    pub(super) fn become_pre_candidate(&mut self) {
        // PreVote (thesis §9.6) does not change the term or the vote.
        let term = self.term;
        self.reset(term);
        self.role = Role::PreCandidate;
    }

    /// Becomes a candidate of the next term, voting for itself.
    ///
    /// `window`: the campaign follows a granted PreVote round (thesis
    /// §9.6: a live quorum heard no leader) or a TimeoutNow of its leader
    /// (§3.10). Then its own vote is a real vote of this term and the vote
    /// window against non-voters starts (`inbound`), as for a vote granted
    /// to another candidate: without it, a candidate campaigning more than
    /// the longest election timeout after it last heard its leader had no
    /// window, and a learner could lead its term on it (stop 60). Not for a
    /// campaign without PreVote: its timeouts (in [T, 2T)) would restart the
    /// 2T window before it closed, for as long as it campaigns, and a
    /// voter that missed a learner's promotion (§4.1) would refuse the new
    /// voter's leadership for ever (review s60 core #1).
    pub(super) fn become_candidate(&mut self, window: bool) {
        let term = self.term + 1;
        self.reset(term);
        self.vote = self.id;
        if window {
            self.voted_at = Some(self.ticks);
        }
        self.role = Role::Candidate;
    }

    pub(super) fn become_leader(&mut self) {
        let term = self.term;
        self.reset(term);
        self.leader = self.id;
        self.term_leader = self.id;
        self.term_leader_voter = true;
        self.leader_heard_at = self.ticks;
        self.role = Role::Leader;
        let next = self.log.last_index() + 1;
        for id in self.conf.members() {
            let mut pr = Progress::new(next, self.cfg.max_inflight);
            pr.recent_active = true;
            pr.start_rounds(self.ticks);
            self.progress.insert(id, pr);
        }
        if let Some(me) = self.progress.get_mut(&self.id) {
            me.matched = self.log.persisted();
            me.become_replicate();
        }
        // Raft §8: a new leader commits a no-op entry of its term, which
        // commits every earlier entry and lets reads proceed (thesis §6.4).
        self.append_entry(Payload::Noop);
        self.broadcast_append();
    }

    // ----- inputs ----------------------------------------------------------

    /// Advances time by one tick.
    pub fn tick(&mut self) {
        self.ticks += 1;
        match self.role {
            Role::Leader => self.tick_leader(),
            _ => {
                self.expire_forwarded_reads();
                self.tick_election();
            }
        }
    }

    /// Handles a message from a peer: [`Raft::step_checked`] without the
    /// reason of a drop (drops are still counted in [`Raft::dropped`]).
    ///
    /// Messages are checked before anything else (see `inbound`): among
    /// others, messages not addressed to this node are dropped, and so are
    /// vote requests from nodes outside the configuration in force while
    /// this node is in a lease (thesis §4.2.3: a server removed from the
    /// cluster, that may not know it, must not disrupt it). Outside a lease
    /// they are handled like any other (thesis §4.1: a server grants its
    /// vote to a candidate outside its latest configuration; the candidate
    /// may be a voter of a configuration this node missed, and that vote
    /// may be needed to elect anybody). A removed server still cannot win:
    /// the nodes that hold its removal are a quorum of the configuration
    /// in force, and with PreVote (thesis §9.6) it does not even raise
    /// anybody's term unless it could.
    pub fn step(&mut self, m: Message) {
        let _ = self.step_checked(m);
    }

    /// The rules, for a message [`Raft::step_checked`] admitted.
    pub(super) fn step_admitted(&mut self, m: Message) {
        let stale = m.term < self.term;
        #[cfg(any(test, feature = "sim"))]
        let stale = stale && !(self.cfg.bugs.stale_responses_as_current && m.body.is_response());
        if m.term > self.term {
            if m.body.is_vote_request() {
                // Thesis §4.2.3 / §9.6: while a follower hears from a leader
                // it ignores vote requests, so a removed or partitioned node
                // cannot disrupt a healthy cluster. A transfer overrides it
                // (§3.10) only when ordered by this node's own leader of
                // the term below the request's (`transfer`, module docs).
                if (self.in_lease() || self.in_startup_lease())
                    && !self.transfer_overrides_lease(&m)
                {
                    return;
                }
                if matches!(m.body, Body::RequestVote { pre_vote: true, .. }) {
                    // A PreVote probe does not raise our term.
                    self.handle_request_vote(m);
                    return;
                }
            }
            let keeps_term = matches!(
                m.body,
                Body::RequestVoteResponse {
                    pre_vote: true,
                    granted: true
                }
            );
            if !keeps_term {
                // Raft §5.1: adopt the higher term from any message.
                let leader = match m.body {
                    Body::AppendEntries { .. }
                    | Body::Heartbeat { .. }
                    | Body::InstallSnapshot { .. } => m.from,
                    _ => NO_NODE,
                };
                let elapsed = self.election_elapsed;
                self.become_follower(m.term, leader);
                if leader == NO_NODE {
                    // Figure 2: only the leader's messages and a granted
                    // vote restart the election timeout, not a new term.
                    self.election_elapsed = elapsed;
                }
            }
        } else if stale {
            self.handle_stale(m);
            return;
        }

        match m.body {
            Body::RequestVote { .. } | Body::TransferVote { .. } => self.handle_request_vote(m),
            Body::RequestVoteResponse { granted, pre_vote } => {
                self.handle_vote_response(m.from, granted, pre_vote)
            }
            Body::AppendEntries { .. } | Body::Heartbeat { .. } | Body::InstallSnapshot { .. } => {
                if self.role != Role::Follower {
                    // Raft §5.2: a candidate that hears from the leader of
                    // its term returns to follower.
                    self.become_follower(self.term, m.from);
                }
                self.leader = m.from;
                self.follow_term_leader(m.from);
                self.election_elapsed = 0;
                match m.body {
                    Body::AppendEntries { .. } => self.handle_append(m),
                    Body::Heartbeat { .. } => self.handle_heartbeat(m),
                    _ => self.handle_install_snapshot(m),
                }
            }
            Body::AppendEntriesResponse { .. } => self.handle_append_response(m),
            Body::HeartbeatResponse { round } => self.handle_heartbeat_response(m.from, round),
            Body::TimeoutNow => self.handle_timeout_now(),
            Body::InstallSnapshotResponse { .. } => self.handle_snapshot_response(m),
            Body::ReadIndexRequest { ctx } => self.handle_read_index_request(m.from, ctx),
            Body::ReadIndexResponse { ctx, index } => self.handle_read_index_response(ctx, index),
        }
    }

    /// A message from an earlier term: answer requests with our term so a
    /// stale leader or candidate learns it is behind (Raft §5.1); ignore
    /// stale responses.
    fn handle_stale(&mut self, m: Message) {
        match m.body {
            Body::AppendEntries { .. } | Body::Heartbeat { .. } | Body::InstallSnapshot { .. } => {
                self.send(
                    m.from,
                    Body::AppendEntriesResponse {
                        index: 0,
                        success: false,
                        hint: None,
                    },
                );
            }
            Body::RequestVote { pre_vote, .. } => {
                self.send(
                    m.from,
                    Body::RequestVoteResponse {
                        granted: false,
                        pre_vote,
                    },
                );
            }
            Body::TransferVote { .. } => {
                self.send(
                    m.from,
                    Body::RequestVoteResponse {
                        granted: false,
                        pre_vote: false,
                    },
                );
            }
            _ => {}
        }
    }

    /// Marks this node's state machine as halted (DESIGN §6: a handler
    /// panicked under the `halt` policy, or an entry does not decode). A
    /// halted node keeps its log and keeps voting and replicating, but it
    /// never campaigns (not even when told to by a leadership transfer) and
    /// refuses proposals, since it could not apply them. It replicates only
    /// until its unapplied backlog reaches the runtime's apply bound (the
    /// runtime's `MAX_APPLY_BACKLOG_BYTES`, see [`Raft::set_apply_paused`]):
    /// its apply never drains, so from then on it takes in no new entries
    /// (it still votes and answers heartbeats) until restarted, and no
    /// longer counts toward the commit quorum. A cluster with a halted node
    /// thus tolerates one fewer failure once that much was written after
    /// the halt: the memory bound wins, and the operator restarts the node
    /// on a fixed binary (as after a rolling upgrade the old binary cannot
    /// follow). A halted leader
    /// hands leadership to a caught-up voter (thesis §3.10) or, when there is
    /// none, steps down at once; a transfer that does not complete within an
    /// election timeout is abandoned and the leader steps down then.
    /// The flag lasts until the node is restarted.
    pub fn set_halted(&mut self) {
        if self.halted {
            return;
        }
        self.halted = true;
        if self.role == Role::Leader {
            let last = self.log.last_index();
            let target = self
                .progress
                .iter()
                .filter(|(id, p)| **id != self.id && p.matched == last && self.conf.is_voter(**id))
                .map(|(id, _)| *id)
                .next();
            match target {
                Some(to) if self.transfer_leadership(to).is_ok() => {}
                _ => self.become_follower(self.term, NO_NODE),
            }
        } else if self.role != Role::Follower {
            // A campaign under way stops.
            self.become_follower(self.term, NO_NODE);
        }
    }

    /// Whether [`Raft::set_halted`] was called.
    pub fn is_halted(&self) -> bool {
        self.halted
    }

    /// While `paused`, [`Raft::ready`] hands out no committed entries (they
    /// stay in the log and are handed out once unpaused): the runtime's
    /// bound on entries waiting to be applied. A follower also takes in no
    /// new entries meanwhile (flow control, see the `replication` module:
    /// the AppendEntries that would bring them is ignored, Raft §5.3), so
    /// its log, in memory and on disk, stops growing with the leader's.
    pub fn set_apply_paused(&mut self, paused: bool) {
        self.apply_paused = paused;
    }

    /// Proposes a command. On the leader, returns the index and term the
    /// entry was appended at: the command is committed if and when the entry
    /// at that index has that term. The entry goes to the followers with the
    /// next [`Raft::ready`], together with every command proposed before it
    /// (batching, Raft thesis §10.2.1).
    pub fn propose(&mut self, data: impl Into<Bytes>) -> Result<(Index, Term), ProposeError> {
        self.check_can_propose()?;
        let index = self.append_entry(Payload::Command(data.into()));
        self.broadcast_due = true;
        Ok((index, self.term))
    }

    pub(super) fn check_can_propose(&self) -> Result<(), ProposeError> {
        if self.role != Role::Leader {
            return Err(self.not_leader().into());
        }
        if self.halted {
            return Err(ProposeError::Halted);
        }
        if let Some(to) = self.transfer_target {
            return Err(ProposeError::Transferring(to));
        }
        // No entry past MAX_INDEX: the WAL refuses it (module `inbound`).
        if self.log.last_index() >= super::inbound::MAX_INDEX {
            return Err(ProposeError::IndexExhausted(self.log.last_index()));
        }
        Ok(())
    }

    /// Appends an entry of the current term to the leader's log.
    pub(super) fn append_entry(&mut self, payload: Payload) -> Index {
        let index = self.log.last_index() + 1;
        let is_config = matches!(payload, Payload::Config(_));
        self.log.push(Entry {
            term: self.term,
            index,
            payload,
        });
        if is_config {
            self.on_config_changed();
        }
        index
    }

    // ----- outputs ---------------------------------------------------------

    /// Queues a message. Messages that carry a term or vote not yet durable
    /// wait until the current Ready is persisted, as do acknowledgements of
    /// entries (DESIGN §3: "a follower's entries are durable before it
    /// acknowledges them", "term and vote are durable before a vote is
    /// granted or a message of the new term is sent").
    pub(super) fn send(&mut self, to: NodeId, body: Body) {
        let term = match body {
            // A PreVote probe asks about the term we would campaign in
            // (never reached at the last term: `campaign` refuses).
            Body::RequestVote { pre_vote: true, .. } => self.term.saturating_add(1),
            _ => self.term,
        };
        self.send_with_term(to, term, body);
    }

    /// [`Raft::send`] with an explicit term: a granted pre-vote answers in
    /// the term the pre-candidate proposed.
    pub(super) fn send_with_term(&mut self, to: NodeId, term: Term, body: Body) {
        // The answer to a snapshot chunk that does not install it claims
        // nothing durable (see `snapshot`): it leaves at once.
        let acknowledges = matches!(
            body,
            Body::AppendEntriesResponse { .. } | Body::InstallSnapshotResponse { done: true, .. }
        );
        #[cfg(any(test, feature = "sim"))]
        let acknowledges = acknowledges && !self.cfg.bugs.ack_before_persist;
        let m = Message {
            from: self.id,
            to,
            term,
            body,
        };
        let undurable = self.durable != (self.term, self.vote);
        #[cfg(any(test, feature = "sim"))]
        let undurable = undurable
            && !(self.cfg.bugs.vote_before_durable
                && self.durable.0 == self.term
                && matches!(m.body, Body::RequestVoteResponse { .. }));
        if acknowledges || undurable {
            self.msgs_after_persist.push(m);
        } else {
            self.msgs.push(m);
        }
    }

    /// Whether [`Raft::ready`] has anything to hand out.
    pub fn has_ready(&self) -> bool {
        self.broadcast_due
            || !self.msgs.is_empty()
            || !self.msgs_after_persist.is_empty()
            || self.log.has_unstable()
            || (self.log.has_committed() && !self.apply_paused)
            || !self.read_states.is_empty()
            || self.hard_state() != self.handed
            || self.snapshots.has_received()
    }

    /// Takes every pending output. See [`Ready`] for what the runtime must
    /// do with it.
    pub fn ready(&mut self) -> Ready {
        if std::mem::take(&mut self.broadcast_due) && self.role == Role::Leader {
            self.broadcast_append();
        }
        let snapshot = self.snapshots.take_received();
        let entries = self.log.take_unstable();
        let hs = self.hard_state();
        let hard_state = (hs != self.handed).then_some(hs);
        let term_vote_changed = (hs.term, hs.vote) != (self.handed.term, self.handed.vote);
        self.handed = hs;
        let persist_marker = PersistMarker {
            last_entry: entries.last().map(|e| (e.index, e.term)),
            term_vote: term_vote_changed.then_some((hs.term, hs.vote)),
            snapshot: snapshot.as_ref().map(|s| (s.meta.index, s.meta.term)),
        };
        Ready {
            hard_state,
            snapshot,
            persist_marker,
            entries,
            messages: take_sized_like(&mut self.msgs),
            persisted_messages: take_sized_like(&mut self.msgs_after_persist),
            committed_entries: if self.apply_paused {
                Vec::new()
            } else {
                self.log
                    .take_committed(self.cfg.max_batch_bytes.max(1 << 20))
            },
            reads: std::mem::take(&mut self.read_states),
        }
    }

    /// Storage reports that the writes of the Ready carrying `marker` (and
    /// of every Ready before it) are durable.
    pub fn on_persisted(&mut self, marker: PersistMarker) {
        if let Some(tv) = marker.term_vote {
            // Readies are persisted in order: this is the latest durable.
            if tv.0 >= self.durable.0 {
                self.durable = tv;
            }
        }
        if let Some((index, term)) = marker.last_entry {
            self.log.persisted_to(index, term);
            if self.role == Role::Leader {
                // The leader counts itself only once its own entries are
                // durable (thesis §10.2.1).
                let persisted = self.log.persisted();
                if let Some(me) = self.progress.get_mut(&self.id)
                    && me.maybe_update(persisted)
                {
                    self.maybe_commit();
                }
            }
        }
    }
}

/// Takes the messages of a [`Ready`], leaving an empty list with room for
/// as many as it held: under load every `ready` hands out about as many
/// messages as the last, and a list regrown from empty reallocates several
/// times per batch (`log2` of its length). An empty list leaves an empty,
/// unallocated one (an idle node allocates nothing).
fn take_sized_like(msgs: &mut Vec<Message>) -> Vec<Message> {
    let room = msgs.len();
    std::mem::replace(msgs, Vec::with_capacity(room))
}

//! Tunable parameters of one Raft node.
//!
//! Time in the core is counted in ticks: the runtime calls
//! [`Raft::tick`](super::Raft::tick) at a fixed interval (the simulation on a
//! virtual clock), so every timeout below is a number of ticks.

use super::types::{Index, NodeId, Term};

/// The default of [`Config::max_snapshot_bytes`]: 1 GiB.
pub const DEFAULT_MAX_SNAPSHOT_BYTES: u64 = 1 << 30;

/// The default of [`Config::clock_drift_bound`]: clocks tick at rates
/// within 25% of each other.
pub const DEFAULT_CLOCK_DRIFT_BOUND: f64 = 1.25;

/// The largest [`Config::election_ticks`] (2^31 - 1): randomized election
/// timeouts are drawn from `[T, 2T)` in `u32` (Raft §5.2).
pub const MAX_ELECTION_TICKS: u32 = u32::MAX / 2;

/// The default [`Config::snapshot_log_ratio`].
pub const DEFAULT_SNAPSHOT_LOG_RATIO: f64 = 1.0;

/// Parameters of one node.
#[derive(Clone, Debug)]
pub struct Config {
    /// This node's id. Must not be [`NO_NODE`](super::types::NO_NODE).
    pub id: NodeId,
    /// `T`: a follower campaigns after a randomized timeout in `[T, 2T)`
    /// ticks without hearing from a leader (Raft §5.2). A leader with
    /// `check_quorum` steps down after `T` ticks without a quorum. At most
    /// [`MAX_ELECTION_TICKS`].
    pub election_ticks: u32,
    /// A leader sends heartbeats every this many ticks. Must be less than
    /// `election_ticks`.
    pub heartbeat_ticks: u32,
    /// At most this many AppendEntries messages in flight per follower in
    /// replicate mode.
    pub max_inflight: usize,
    /// An AppendEntries carries at most this many bytes of entries (at least
    /// one entry regardless).
    pub max_batch_bytes: usize,
    /// Run a PreVote round before a real election (thesis §9.6).
    pub pre_vote: bool,
    /// A leader steps down when it has not heard from a quorum within an
    /// election timeout, and followers ignore vote requests while they hear
    /// from a leader (thesis §6.2, §9.6). Off, a node still ignores vote
    /// requests from nodes outside its configuration while it heard from a
    /// leader within the minimum election timeout (thesis §4.2.3), so a
    /// removed server cannot depose the leader even with PreVote off.
    pub check_quorum: bool,
    /// Ask for a snapshot once this many entries were applied since the
    /// last one (0: never), and (see `snapshot_log_ratio`) once the log
    /// since then is large enough against the last snapshot.
    pub snapshot_entries: u64,
    /// Ask for a snapshot only once the applied entries since the last one
    /// add up to at least this fraction of the last snapshot's size
    /// (default 1.0; 0: count entries only). A snapshot serializes the whole
    /// state, so with a count alone its cost per write grows with the
    /// state; with the ratio, the bytes snapshots write stay within
    /// `1 / ratio` times the bytes of log they replace, and the log kept
    /// in memory and replayed at a restart within about `ratio` times the
    /// state, or `snapshot_entries` entries if more (as Redis's
    /// `auto-aof-rewrite-percentage` bounds its log rewrites).
    pub snapshot_log_ratio: f64,
    /// Size of one InstallSnapshot chunk.
    pub snapshot_chunk_bytes: usize,
    /// The largest snapshot this node accepts from a leader, in bytes
    /// (default 1 GiB): chunks past it are dropped, so the receive buffer
    /// never grows beyond it. Must be at least the size of the largest
    /// snapshot of the state machine, on every node.
    pub max_snapshot_bytes: u64,
    /// Seed of the node's random election timeouts.
    pub seed: u64,
    /// Allow lease reads on the leader (thesis §6.4.1, see
    /// [`Raft::lease_read`](super::Raft::lease_read)). Also makes a node
    /// ignore vote requests during its first election timeout after it
    /// starts, since a restarted follower forgot when it last heard from the
    /// leader. Needs `check_quorum`. Default off in the core; the runtime
    /// turns it on.
    pub lease_reads: bool,
    /// The largest factor by which the tick rates of two nodes may differ
    /// (at least 1.0; default 1.25). A leader's lease lasts
    /// `floor((election_ticks - 1) / clock_drift_bound)` ticks after the
    /// start of the latest heartbeat round a quorum acknowledged: lease
    /// reads are linearizable only while every node's clock respects this
    /// bound (jumps and pauses included).
    pub clock_drift_bound: f64,
    /// The removal of an earlier replica with this node's id, `(index,
    /// term)`: this node left the group (a committed configuration at or
    /// below `index` dropped it, seen in `term`) and joins it again with an
    /// empty state (a replica moved back, see `crate::multi::hosting`).
    /// Configurations at or below `index` listing this id describe the
    /// earlier replica, not this one, so while the configuration in force
    /// is one of them the node neither campaigns nor grants votes, and it
    /// never grants a vote in a term at or below `term` (the earlier
    /// replica may have voted in it). Default `None`: no earlier replica.
    pub membership_fence: Option<(Index, Term)>,
    /// Deliberately broken rules, for the simulation's own tests only.
    #[cfg(any(test, feature = "sim"))]
    #[doc(hidden)]
    pub bugs: Bugs,
}

impl Config {
    /// Parameters for node `id` with the defaults: election timeout 10 ticks,
    /// heartbeat every 2 ticks, PreVote and CheckQuorum on.
    pub fn new(id: NodeId) -> Self {
        Config {
            id,
            election_ticks: 10,
            heartbeat_ticks: 2,
            max_inflight: 64,
            max_batch_bytes: 1 << 20,
            pre_vote: true,
            check_quorum: true,
            snapshot_entries: 10_000,
            snapshot_log_ratio: DEFAULT_SNAPSHOT_LOG_RATIO,
            snapshot_chunk_bytes: super::snapshot::DEFAULT_CHUNK_BYTES,
            max_snapshot_bytes: DEFAULT_MAX_SNAPSHOT_BYTES,
            seed: id,
            lease_reads: false,
            clock_drift_bound: DEFAULT_CLOCK_DRIFT_BOUND,
            membership_fence: None,
            #[cfg(any(test, feature = "sim"))]
            bugs: Bugs::default(),
        }
    }

    /// The most ticks a runtime feeds at once to catch up after a stall (its
    /// own task paused, the process stopped): `2 * election_ticks + 2`.
    ///
    /// The rest of a longer backlog is skipped. That is safe only because
    /// the burst outlasts every timer a stall must end: the longest
    /// randomized election timeout (`2T - 1` ticks, §5.2), so a follower
    /// that was stopped campaigns at once, and the leader's lease (at most
    /// `T - 1` ticks, thesis §6.4.1) plus a heartbeat round, so a leader
    /// that was stopped for longer than its lease never serves a lease read
    /// on the ticks it skipped.
    pub fn tick_burst(&self) -> u64 {
        2 * u64::from(self.election_ticks) + 2
    }

    /// Checks that the parameters make sense together.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.id == super::types::NO_NODE {
            return Err(ConfigError("node id 0 is reserved".into()));
        }
        if self.election_ticks > MAX_ELECTION_TICKS {
            // The randomized timeout's range `[T, 2T)` must fit in u32.
            return Err(ConfigError(format!(
                "election_ticks ({}) must be at most {MAX_ELECTION_TICKS}",
                self.election_ticks
            )));
        }
        if self.heartbeat_ticks == 0 || self.heartbeat_ticks >= self.election_ticks {
            return Err(ConfigError(format!(
                "heartbeat_ticks ({}) must be at least 1 and below election_ticks ({})",
                self.heartbeat_ticks, self.election_ticks
            )));
        }
        if self.clock_drift_bound.is_nan()
            || self.clock_drift_bound < 1.0
            || self.clock_drift_bound.is_infinite()
        {
            return Err(ConfigError(format!(
                "clock_drift_bound ({}) must be a finite number of at least 1.0",
                self.clock_drift_bound
            )));
        }
        if self.max_inflight == 0 {
            return Err(ConfigError("max_inflight must be at least 1".into()));
        }
        if self.snapshot_chunk_bytes == 0 {
            // Empty chunks would carry a snapshot transfer no further.
            return Err(ConfigError(
                "snapshot_chunk_bytes must be at least 1".into(),
            ));
        }
        if !(self.snapshot_log_ratio.is_finite() && self.snapshot_log_ratio >= 0.0) {
            return Err(ConfigError(format!(
                "snapshot_log_ratio ({}) must be a finite number of at least 0",
                self.snapshot_log_ratio
            )));
        }
        Ok(())
    }
}

/// Invalid [`Config`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid raft config: {0}")]
pub struct ConfigError(pub String);

/// Switches that break one Raft rule each, so that tests can show the
/// simulation catches the violation. Never set outside tests.
#[cfg(any(test, feature = "sim"))]
#[doc(hidden)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bugs {
    /// Commit entries of earlier terms by counting replicas (breaks §5.4.2).
    pub commit_old_terms: bool,
    /// Followers acknowledge entries before they are durable.
    pub ack_before_persist: bool,
    /// The leader answers reads without a heartbeat round (breaks §6.4).
    pub read_without_heartbeat: bool,
    /// Voter changes go straight to C_new, skipping C_old,new: with more
    /// than one server changed at once, majorities of C_old and C_new need
    /// not overlap (breaks thesis §4.3).
    pub skip_joint_consensus: bool,
    /// The leader serves ReadIndex reads before it has committed an entry
    /// of its term, at a commit index that may lag an earlier leader's
    /// (breaks thesis §6.4 step 1).
    pub read_before_term_commit: bool,
    /// Responses carrying an older term are handled as if they were of the
    /// current one: a stale vote or acknowledgement counts (breaks §5.1,
    /// "if a server receives a request with a stale term number, it rejects
    /// the request", and its use for responses).
    pub stale_responses_as_current: bool,
    /// A vote reply leaves as soon as the term is durable, before the vote
    /// itself is (breaks Figure 2, "persistent state ... updated on stable
    /// storage before responding to RPCs").
    pub vote_before_durable: bool,
    /// A follower that truncates a conflicting suffix cuts only its
    /// in-memory log: the replacement entries below the old storage cursor
    /// are never handed to storage, yet counted durable (breaks §5.3 on
    /// stable storage).
    pub truncation_not_persisted: bool,
    /// Heartbeats carry the leader's commit index uncapped, not
    /// `min(match, commit)`: a follower with a diverging suffix commits it
    /// (breaks §5.3, "index of last new entry").
    pub heartbeat_commit_uncapped: bool,
    /// In a joint configuration, entries commit on a majority of the new
    /// voters alone (breaks thesis §4.3).
    pub joint_commit_on_new_voters: bool,
    /// In a joint configuration, elections are won on a majority of the new
    /// voters alone (breaks thesis §4.3).
    pub joint_election_on_new_voters: bool,
    /// A vote request flagged as a leadership transfer is granted without
    /// the up-to-date check (breaks §5.4.1; thesis §3.10 only lifts the
    /// lease check).
    pub transfer_skips_log_check: bool,
    /// Lease reads last twice the election timeout, whatever the clock
    /// drift bound (breaks thesis §6.4.1: the lease must end before any
    /// follower of the quorum could vote again).
    pub lease_ignores_drift: bool,
    /// A leader that a committed C_new does not list as a voter stays
    /// leader (breaks thesis §4.2.2: it steps down once C_new commits).
    pub removed_leader_keeps_leading: bool,
    /// A node that is not a voter of the configuration in its log (a
    /// learner, a removed node) campaigns (breaks thesis §4.2.2 and
    /// §4.2.3: only voters of the configuration in force stand).
    pub non_voters_campaign: bool,
}

//! What one simulated run looks like, and the outcome.

use std::fmt;

use super::oracle::Violation;

/// Parameters of one simulated run. [`SimOptions::for_seed`] draws a mixed
/// scenario from the seed, which is what the CI seed sweep uses.
#[derive(Clone, Debug)]
pub struct SimOptions {
    /// Cluster size.
    pub nodes: usize,
    /// Concurrent clients.
    pub clients: usize,
    /// Distinct keys the clients use.
    pub keys: u64,
    /// Length of the phase with faults (virtual milliseconds).
    pub fault_ms: u64,
    /// Length of the calm phase after the final heal (virtual ms), within
    /// which a leader must emerge and a write must complete.
    pub heal_ms: u64,
    /// Take a snapshot every this many applied entries (0: never).
    pub snapshot_entries: u64,
    /// Size of one InstallSnapshot chunk. Below the size of the state (a
    /// few bytes per key), a snapshot travels in several chunks.
    pub snapshot_chunk_bytes: usize,
    /// Bytes of entries per AppendEntries (1: one entry per message).
    pub max_batch_bytes: usize,
    /// The nodes run a PreVote round before each election.
    pub pre_vote: bool,
    /// Leaders step down without a quorum, followers ignore vote requests
    /// while they hear from a leader.
    pub check_quorum: bool,
    /// Crash nodes (losing unsynced writes) during the fault phase, at
    /// random and aimed at the window between a queued acknowledgement or
    /// vote and its fsync, and at nodes receiving a snapshot.
    pub crashes: bool,
    /// Partition the network during the fault phase; some partitions hold
    /// the messages they cut and release the backlog when they heal.
    pub partitions: bool,
    /// Lose, duplicate and reorder messages during the fault phase.
    pub lossy_network: bool,
    /// Hold a fraction of messages back for up to many election timeouts,
    /// so that they arrive across term changes.
    pub late_delivery: bool,
    /// Pause processes for up to many election timeouts while their
    /// messages queue (a stop-the-world pause, a stalled VM).
    pub pauses: bool,
    /// Give every node its own tick rate (clock drift between nodes).
    pub drift: bool,
    /// Disk faults: crashes tear the multi-part write in progress, fsyncs
    /// stall, and some fail with an IO error, which stops the node.
    pub disk_faults: bool,
    /// Leadership transfers to random targets: voters, lagging or
    /// unreachable nodes, learners and removed nodes.
    pub transfers: bool,
    /// Leader churn: during fault periods new leaders are crashed soon after
    /// their election and message loss is heavy (the histories of Raft
    /// Figure 8).
    pub churn: bool,
    /// Membership changes: an admin adds nodes (as learners, promoted once
    /// caught up), removes voters (the leader too) and replaces nodes,
    /// during fault and calm periods, retrying across leader changes; some
    /// changes are followed by a crash of the leader or by a partition of
    /// the failure domain of the node being replaced (the prior-art
    /// scenarios of the single-server change bug).
    pub membership: bool,
    /// Print every event.
    pub trace: bool,
    /// Deliberately broken rules (tests of the simulation's teeth).
    pub bugs: crate::core::config::Bugs,
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            nodes: 3,
            clients: 4,
            keys: 3,
            fault_ms: 2_500,
            heal_ms: 2_000,
            snapshot_entries: 0,
            snapshot_chunk_bytes: 64,
            max_batch_bytes: 4096,
            pre_vote: true,
            check_quorum: true,
            crashes: true,
            partitions: true,
            lossy_network: true,
            late_delivery: false,
            pauses: false,
            drift: false,
            disk_faults: false,
            transfers: false,
            churn: false,
            membership: false,
            trace: false,
            bugs: Default::default(),
        }
    }
}

impl SimOptions {
    /// A mixed scenario drawn from `seed`: 3 or 5 nodes, 4 to 8 clients on 3
    /// to 10 keys (at least one key per client but one), with or without snapshots (of one to a dozen chunks),
    /// with or without membership changes (three seeds in four have them),
    /// PreVote and CheckQuorum each off in one seed in four, and a mix of
    /// fault kinds (always at least one of crashes, partitions and loss).
    pub fn for_seed(seed: u64) -> Self {
        let bits = seed.wrapping_mul(0x2545_F491_4F6C_DD1D).rotate_left(17);
        let more = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(29) ^ bits;
        let mut o = SimOptions {
            nodes: if bits & 1 == 0 { 3 } else { 5 },
            clients: 4 + (more % 5) as usize,
            keys: 3 + (more >> 3) % 8,
            snapshot_entries: if bits & 2 == 0 {
                0
            } else {
                16 + (bits >> 8) % 48
            },
            snapshot_chunk_bytes: [4, 8, 16, 64][((more >> 6) % 4) as usize],
            crashes: bits & 4 == 0 || bits & 32 != 0,
            partitions: bits & 8 == 0 || bits & 64 != 0,
            lossy_network: bits & 16 == 0 || bits & 128 != 0,
            max_batch_bytes: if bits & 256 == 0 { 4096 } else { 1 },
            pre_vote: more & (3 << 8) != 0,
            check_quorum: more & (3 << 10) != 0,
            transfers: more & (1 << 12) != 0,
            late_delivery: more & (3 << 13) != 0,
            pauses: more & (1 << 15) != 0,
            drift: more & (1 << 16) != 0,
            disk_faults: more & (3 << 17) != 0,
            churn: bits & (512 | 1024) == 0,
            membership: bits & (2048 | 4096) != 0,
            ..SimOptions::default()
        };
        // At most about one client per key: the checker's search grows
        // with the concurrency on one key (8 clients on 3 keys can exceed
        // its budget).
        o.keys = o.keys.max(o.clients as u64 - 1);
        if o.churn {
            o.crashes = true;
            o.lossy_network = true;
            o.max_batch_bytes = 1;
        }
        if !(o.crashes || o.partitions || o.lossy_network) {
            o.crashes = true;
        }
        o
    }
}

/// What a successful run did.
#[derive(Clone, Debug, Default)]
pub struct SimReport {
    /// The seed.
    pub seed: u64,
    /// Events processed.
    pub events: u64,
    /// A hash of the whole event trace: one seed always gives the same.
    pub trace_hash: u64,
    /// Client operations issued.
    pub ops: usize,
    /// Operations whose outcome the client learned.
    pub completed: usize,
    /// Leaders elected (distinct terms with a leader).
    pub leaders: usize,
    /// Crashes injected (including the targeted ones and IO errors).
    pub crashes: usize,
    /// Crashes aimed at the window between a queued acknowledgement or
    /// vote and the fsync it waits for.
    pub targeted_crashes: usize,
    /// Writes that failed with an IO error: the node stopped.
    pub io_errors: usize,
    /// Multi-part writes torn by a crash or an IO error: some of their
    /// parts (snapshot, compaction, entries, hard state) or entries reached
    /// the disk, not all.
    pub torn_writes: usize,
    /// Snapshots taken locally.
    pub snapshots_taken: usize,
    /// Snapshots installed from a leader.
    pub snapshots_installed: usize,
    /// InstallSnapshot chunks delivered.
    pub snapshot_chunks: usize,
    /// Snapshot transfers restarted by a newer snapshot (or another
    /// leader's) while the receiver held part of an older one.
    pub snapshot_restarts: usize,
    /// Crashes of a node holding part of a snapshot transfer.
    pub crashes_mid_transfer: usize,
    /// Crashes that struck while a local snapshot (and the compaction
    /// behind it) was being written.
    pub crashes_mid_compaction: usize,
    /// Crashes that struck while a snapshot received from the leader was
    /// being installed.
    pub crashes_mid_install: usize,
    /// Messages held back (for up to many election timeouts) and delivered.
    pub late_deliveries: usize,
    /// Of those, the ones that reached a node in another term than theirs.
    pub late_across_terms: usize,
    /// Messages a partition held and released when it healed.
    pub backlog_released: usize,
    /// Process pauses.
    pub pauses: usize,
    /// Leadership transfers started (accepted by a leader).
    pub transfers: usize,
    /// Transfers refused (the target was not a voter, or the node asked no
    /// longer led).
    pub transfers_refused: usize,
    /// Transfers after which the target became leader.
    pub transfers_completed: usize,
    /// Reads served on a leader's lease, without a heartbeat round.
    pub lease_reads: usize,
    /// The highest commit index reached.
    pub commit: u64,
    /// Configuration entries committed after the bootstrap one (a change of
    /// voters commits two: C_old,new and C_new).
    pub config_changes: usize,
    /// Nodes that joined (started empty, added as learner, caught up and
    /// promoted to voter).
    pub nodes_added: usize,
    /// Members whose removal committed (voters and abandoned learners).
    pub nodes_removed: usize,
    /// Removals of a leader accepted by that leader itself (most commit;
    /// some are lost with it and proposed again by its successor).
    pub leaders_removed: usize,
    /// Removed nodes kept running (they must not disrupt the cluster).
    pub removed_kept_running: usize,
}

/// The names of the switches on in `bugs`, as `tests/sim.rs` reads them
/// from `RAFTKIT_SIM_BUG`.
pub fn bug_names(bugs: &crate::core::config::Bugs) -> Vec<&'static str> {
    let crate::core::config::Bugs {
        commit_old_terms,
        ack_before_persist,
        read_without_heartbeat,
        skip_joint_consensus,
        read_before_term_commit,
        stale_responses_as_current,
        vote_before_durable,
        truncation_not_persisted,
        heartbeat_commit_uncapped,
        joint_commit_on_new_voters,
        joint_election_on_new_voters,
        transfer_skips_log_check,
        lease_ignores_drift,
        removed_leader_keeps_leading,
        non_voters_campaign,
    } = *bugs;
    [
        ("commit_old_terms", commit_old_terms),
        ("ack_before_persist", ack_before_persist),
        ("read_without_heartbeat", read_without_heartbeat),
        ("skip_joint_consensus", skip_joint_consensus),
        ("read_before_term_commit", read_before_term_commit),
        ("stale_responses_as_current", stale_responses_as_current),
        ("vote_before_durable", vote_before_durable),
        ("truncation_not_persisted", truncation_not_persisted),
        ("heartbeat_commit_uncapped", heartbeat_commit_uncapped),
        ("joint_commit_on_new_voters", joint_commit_on_new_voters),
        ("joint_election_on_new_voters", joint_election_on_new_voters),
        ("transfer_skips_log_check", transfer_skips_log_check),
        ("lease_ignores_drift", lease_ignores_drift),
        ("removed_leader_keeps_leading", removed_leader_keeps_leading),
        ("non_voters_campaign", non_voters_campaign),
    ]
    .into_iter()
    .filter_map(|(name, on)| on.then_some(name))
    .collect()
}

/// Why a run failed.
#[derive(Clone, Debug)]
pub enum FailureKind {
    /// A Raft safety property broke.
    Safety(Violation),
    /// The client history is not linearizable (or could not be checked).
    Linearizability(String),
    /// No progress after the network healed.
    Liveness(String),
}

/// A failed run, with the command that replays it.
#[derive(Clone, Debug)]
pub struct SimFailure {
    /// The seed.
    pub seed: u64,
    /// Virtual time of the failure.
    pub time: u64,
    /// What went wrong.
    pub kind: FailureKind,
    /// Membership changes were on although [`SimOptions::for_seed`] has
    /// them off for this seed (the membership sweep forces them on).
    pub membership_forced: bool,
    /// The deliberately broken rules the run had on (a tooth's catch).
    pub bugs: crate::core::config::Bugs,
}

impl SimFailure {
    /// The one-line command that replays this seed with a full trace.
    pub fn replay_command(&self) -> String {
        let bugs = bug_names(&self.bugs);
        format!(
            "RAFTKIT_SIM_SEED={}{}{} RAFTKIT_SIM_TRACE=1 cargo test --test sim replay -- --nocapture",
            self.seed,
            if self.membership_forced {
                " RAFTKIT_SIM_MEMBERSHIP=1"
            } else {
                ""
            },
            if bugs.is_empty() {
                String::new()
            } else {
                format!(" RAFTKIT_SIM_BUG={}", bugs.join(","))
            }
        )
    }
}

impl fmt::Display for SimFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            FailureKind::Safety(v) => write!(
                f,
                "seed {} violated {} at t={}ms: {}",
                self.seed, v.property, self.time, v.detail
            )?,
            FailureKind::Linearizability(s) => {
                write!(f, "seed {}: history not linearizable: {s}", self.seed)?
            }
            FailureKind::Liveness(s) => write!(f, "seed {}: liveness: {s}", self.seed)?,
        }
        write!(f, "\n  replay: {}", self.replay_command())
    }
}

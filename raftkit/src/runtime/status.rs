//! What a running peer reports about itself, through [`Peer::status`] and
//! the watch channel of [`Peer::watch`] (the metrics feed).
//!
//! [`Peer::status`]: super::Peer::status
//! [`Peer::watch`]: super::Peer::watch

use crate::core::{DropCounts, Index, NodeId, Role, Term};

/// A running peer's state ([`Peer::status`](super::Peer::status)).
/// `#[non_exhaustive]`: fields are added as the runtime reports more; build
/// one (in tests) from `PeerStatus::default()`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PeerStatus {
    /// The node id.
    pub id: NodeId,
    /// The peer's name.
    pub name: String,
    /// Its role.
    pub role: Role,
    /// Its term.
    pub term: Term,
    /// The leader it follows (itself when leader).
    pub leader: Option<NodeId>,
    /// The leader's address, when known.
    pub leader_addr: Option<String>,
    /// Its commit index.
    pub commit: Index,
    /// The last index its state machine applied.
    pub applied: Index,
    /// Its last log index.
    pub last_index: Index,
    /// Every member of the configuration in force; replication progress is
    /// known on the leader only.
    pub members: Vec<MemberStatus>,
    /// The index the configuration in force was appended at.
    pub config_index: Index,
    /// Whether the configuration in force is joint (a change is under way).
    pub joint: bool,
    /// Set when the node halted (a handler panicked under the `halt`
    /// policy, or an entry does not decode with this binary): it applies
    /// nothing more, does not lead or campaign, and keeps its log intact
    /// for a fixed binary. It keeps voting, and replicating until its
    /// unapplied backlog reaches the apply bound (`MAX_APPLY_BACKLOG_BYTES`,
    /// 32 MiB); past that it takes in no new entries until restarted (the
    /// cluster then tolerates one fewer failure).
    pub halted: Option<String>,
    /// Set when storage failed: the node stopped (it acknowledges and
    /// serves nothing more; restart it on a healthy disk). Linux may mark
    /// the pages of a failed fsync clean, so that they stay readable
    /// although they never reached the disk: on Linux the log drops the
    /// cached pages of its last segment at open, so a restart on the same
    /// boot reads what the disk holds. That is best effort: pages mapped or
    /// in use elsewhere (a backup reading the data directory) are kept. If
    /// anything else may be reading the data directory, on a file system
    /// that ignores it (tmpfs, FUSE, NFS), with a custom
    /// [`Vfs`](crate::storage::vfs::Vfs) whose files do not implement
    /// `drop_cache`, or on another system, after a failed write or fsync
    /// (not a full disk), restart it only after a reboot, or after dropping
    /// the page cache (`echo 1 > /proc/sys/vm/drop_caches`).
    pub fatal: Option<String>,
    /// Proposals accepted while leader.
    pub proposals: u64,
    /// Leader changes observed.
    pub leader_changes: u64,
    /// Time from handing a Ready's entries to storage until they are
    /// durable (append-to-durable latency).
    pub durable_latency: LatencyHistogram,
    /// Time from a read's arrival until its read index is confirmed by a
    /// heartbeat round (ReadIndex latency, before applying).
    pub read_index_latency: LatencyHistogram,
    /// Client sessions in this peer's replicated session table (as of its
    /// applied index).
    pub sessions: usize,
    /// When this peer last received a message from the leader it follows
    /// (`None` on the leader itself and while no leader is known).
    pub leader_contact: Option<std::time::Instant>,
    /// Inbound Raft messages dropped by the core, per reason (hostile or
    /// broken peers; see [`crate::core::inbound`]).
    pub dropped: DropCounts,
    /// The index of the latest snapshot durable on this node (taken here or
    /// received from the leader); the log is compacted up to it.
    pub snapshot_index: Index,
    /// Snapshots that failed (the state machine did not serialize, or the
    /// save failed); each is retried with a backoff.
    pub snapshot_failures: u64,
    /// Why the last snapshot failed, until one succeeds.
    pub snapshot_error: Option<String>,
    /// Bytes of a snapshot being received from the leader, held in memory
    /// until it is complete (0 when none is). On a multi-group node their
    /// sum over the groups stays within the node's budget
    /// (`HostingPolicy::snapshot_receive_bytes`).
    pub snapshot_receiving_bytes: u64,
    /// Calls refused with `Overloaded` (backpressure).
    pub overloaded: u64,
    /// The longest time the state machine stopped applying for a snapshot
    /// (serializing one, or restoring one received from the leader).
    pub longest_apply_pause: std::time::Duration,
    /// Batches of committed entries the node task applied itself since the
    /// peer started, instead of handing them to the apply thread
    /// ([`PeerBuilder::apply_small_batches_inline`]); 0 when that is off.
    ///
    /// [`PeerBuilder::apply_small_batches_inline`]: super::PeerBuilder::apply_small_batches_inline
    pub inline_batches: u64,
    /// Bytes of committed entries handed to the state machine and not yet
    /// applied. Bounded: past 32 MiB the node stops handing more (the rest
    /// wait in the log) until the state machine is halfway through them.
    pub apply_backlog_bytes: u64,
    /// Unacknowledged replies stored in this peer's session table (clients
    /// acknowledge the answers they received, so this stays near the number
    /// of writes in flight).
    pub session_replies: usize,
    /// Sessions this peer evicted from its full session table (see
    /// [`PeerBuilder::max_sessions`]) since it started.
    ///
    /// [`PeerBuilder::max_sessions`]: super::PeerBuilder::max_sessions
    pub session_evictions: u64,
    /// Sessions this peer dropped after their time-to-live of replicated
    /// time since it started.
    pub session_expiries: u64,
    /// Reads this peer served on its lease as leader
    /// ([`Consistency::Lease`](crate::client::Consistency::Lease): no
    /// ReadIndex round, thesis §6.4.1) since it started. A lease read
    /// whose lease did not hold went through ReadIndex instead and is not
    /// counted: a low count against many lease reads says the leases
    /// lapse (a loaded node, a slow quorum).
    pub lease_reads: u64,
}

/// A latency histogram in the Prometheus style: fixed buckets, counts per
/// bucket, sum and count.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LatencyHistogram {
    /// Upper bounds of the buckets, in microseconds (the last bucket, +Inf,
    /// is implicit).
    pub bounds_us: &'static [u64],
    /// Observations per bucket (not cumulative); one more than `bounds_us`.
    pub counts: Vec<u64>,
    /// Sum of all observations, in microseconds.
    pub sum_us: u64,
    /// Number of observations.
    pub count: u64,
}

/// Bucket bounds of [`LatencyHistogram`]: 50 µs to 1 s.
pub const LATENCY_BOUNDS_US: &[u64] = &[
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000,
];

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram {
            bounds_us: LATENCY_BOUNDS_US,
            counts: vec![0; LATENCY_BOUNDS_US.len() + 1],
            sum_us: 0,
            count: 0,
        }
    }
}

impl LatencyHistogram {
    /// Records one observation.
    pub fn record(&mut self, d: std::time::Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let bucket = self
            .bounds_us
            .iter()
            .position(|&b| us <= b)
            .unwrap_or(self.bounds_us.len());
        if let Some(c) = self.counts.get_mut(bucket) {
            *c += 1;
        }
        self.sum_us = self.sum_us.saturating_add(us);
        self.count += 1;
    }

    /// Cumulative counts per bound (`le`), ending with +Inf (`None`).
    pub fn cumulative(&self) -> Vec<(Option<u64>, u64)> {
        let mut total = 0;
        let mut out = Vec::with_capacity(self.counts.len());
        for (i, c) in self.counts.iter().enumerate() {
            total += c;
            out.push((self.bounds_us.get(i).copied(), total));
        }
        out
    }
}

/// One member of the configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemberStatus {
    /// Its node id.
    pub id: NodeId,
    /// Its address.
    pub addr: Option<String>,
    /// Whether it votes.
    pub voter: bool,
    /// On the leader: the highest index known to match.
    pub matched: Option<Index>,
    /// On the leader: the next index to send.
    pub next: Option<Index>,
}

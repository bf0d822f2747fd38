//! How a read is served: its consistency, chosen per call, and where a
//! client sends its reads.
//!
//! | [`Consistency`] | served by | guarantee | cost |
//! |---|---|---|---|
//! | `Linearizable` (default) | the leader, or any member ([`ReadRouting::AnyMember`]) | sees every write acknowledged before the read began (thesis §6.4, §6.4.1) | a heartbeat round of the leader (batched), plus a round trip to the leader on a follower |
//! | `Lease` | the leader | linearizable **while clocks tick at rates within the cluster's clock drift bound** (thesis §6.4.1) | no message: served from the leader's state while its lease holds, else as `Linearizable` |
//! | `Stale` | the member it reaches | none: the member's own state, which may lag; the staleness is reported ([`Staleness`]) | no message; no wait |
//!
//! The default stays `Linearizable`. A weaker read is chosen per call on a
//! client *view* (`kv.with(Consistency::Lease).get(k)`), which shares the
//! client's connections and session.
//!
//! Wire: the consistency travels in the request frame's trailer
//! ([`RequestMeta`](super::wire::RequestMeta)); a peer that predates it
//! serves every read linearizably on the leader, which is allowed by every
//! level.

use serde::{Deserialize, Serialize};

/// How a read is served (module docs). The default is
/// [`Consistency::Linearizable`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Consistency {
    /// Sees every write acknowledged before the read began: ReadIndex on
    /// the leader (thesis §6.4) or through it on a follower (§6.4.1).
    #[default]
    Linearizable,
    /// Served by the leader from its state without a heartbeat round while
    /// its lease holds (thesis §6.4.1); linearizable only if every node's
    /// clock runs within the configured drift bound of the others'
    /// (`clock_drift_bound` of the core's `Config`). Falls back to a
    /// linearizable round when there is no lease.
    Lease,
    /// Served by whichever member the client reaches, from its own state,
    /// with no guarantee of freshness: the answer reports how far behind it
    /// may be ([`Staleness`]).
    Stale,
}

/// How stale a [`Consistency::Stale`] read may be.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Staleness {
    /// The read saw every entry up to at least this index (the entries the
    /// member had handed its state machine when the read arrived).
    pub applied: u64,
    /// The leader's commit index as the member last heard it (its own on
    /// the leader).
    pub leader_commit: u64,
}

impl Staleness {
    /// At most this many committed entries were missing from the read.
    pub fn behind(&self) -> u64 {
        self.leader_commit.saturating_sub(self.applied)
    }
}

/// Where a client sends its linearizable reads
/// ([`ClientOptions::reads`](super::ClientOptions::reads)).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ReadRouting {
    /// Every read goes to the leader (one hop fewer per read; the leader
    /// serves them all).
    #[default]
    Leader,
    /// Linearizable and stale reads are spread over the members in turn:
    /// a follower asks the leader for the read index and serves the read
    /// from its own state (thesis §6.4.1), so read throughput grows with
    /// the cluster while the leader only confirms rounds. Lease reads go to
    /// the leader whatever this says.
    AnyMember,
}

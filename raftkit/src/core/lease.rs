//! Lease reads on the leader (Raft thesis §6.4.1).
//!
//! A leader whose heartbeat round that started at tick `s` was acknowledged
//! by a quorum knows that no other leader can be elected before each of
//! those voters has waited an election timeout since it heard that
//! heartbeat: with CheckQuorum a follower ignores vote requests while it
//! heard from its leader within an election timeout (thesis §4.2.3, §6.2).
//! So until `s + lease` the leader may answer reads from its commit index
//! without a round of its own, where
//!
//! ```text
//! lease = floor((election_ticks - 1) / clock_drift_bound)   (in ticks)
//! ```
//!
//! # The clock assumption
//!
//! Ticks are the core's only clock. The lease is sound only while the tick
//! *rates* of any two nodes differ by at most the factor
//! [`Config::clock_drift_bound`](super::Config::clock_drift_bound): a leader
//! whose ticks run slower than a follower's by more than that could still
//! believe in its lease after the follower has already voted for someone
//! else. The `- 1` covers a follower's first tick landing right after the
//! heartbeat. Clock *jumps* (a paused process, a suspended VM) count as
//! drift. A deployment that cannot bound drift must not use lease reads.
//!
//! # What voids a lease
//!
//! - A leadership transfer: its target campaigns at once and the voters
//!   grant a transfer vote even inside a lease (thesis §3.10). The leader
//!   gives up its lease for the rest of its leadership when it starts one.
//! - Restarts: a restarted follower forgot when it last heard from the
//!   leader, so with [`Config::lease_reads`](super::Config::lease_reads) on,
//!   a node ignores vote requests during its first election timeout after it
//!   started, as if it had just heard from a leader.
//! - CheckQuorum off: followers then grant votes at any time; no lease.
//! - A configuration change: the quorum is checked against the
//!   configuration in force when the read is served (its quorums intersect
//!   any electing quorum of the configurations a competing candidate could
//!   hold, thesis §4.3).
//!
//! Every heartbeat the leader sends starts a new round (numbered as read
//! rounds are, see `read_index`), so an idle leader keeps its lease
//! refreshed at every heartbeat interval.
//!
//! Invariants: `unconfirmed` holds rounds in increasing order, none older
//! than one lease; `confirmed_start` only grows within one leadership and is
//! cleared when the node stops leading or its ticks were withheld
//! ([`Raft::forget_lease_rounds`]).

use std::collections::VecDeque;

use super::quorum;
use super::raft::{Raft, Role};
use super::types::Index;

/// A leader's lease bookkeeping.
#[derive(Debug, Default)]
pub(super) struct Lease {
    /// Heartbeat rounds sent and not yet acknowledged by a quorum: (round,
    /// tick it started at).
    unconfirmed: VecDeque<(u64, u64)>,
    /// The start tick of the latest round a quorum acknowledged.
    confirmed_start: Option<u64>,
    /// A leadership transfer was started: no lease until the next leadership.
    revoked: bool,
}

impl Lease {
    /// Forgets everything (the node's role or term changed).
    pub(super) fn reset(&mut self) {
        *self = Lease::default();
    }

    /// Gives the lease up for the rest of this leadership.
    pub(super) fn revoke(&mut self) {
        self.revoked = true;
    }
}

impl Raft {
    /// The lease length in ticks (module docs).
    pub(super) fn lease_ticks(&self) -> u64 {
        let base = f64::from(self.cfg.election_ticks.saturating_sub(1));
        #[cfg(any(test, feature = "sim"))]
        if self.cfg.bugs.lease_ignores_drift {
            // The tooth: a lease as long as the longest election timeout.
            return u64::from(self.cfg.election_ticks) * 2;
        }
        let drift = self.cfg.clock_drift_bound;
        if drift.is_nan() || drift < 1.0 {
            return 0;
        }
        (base / drift).floor() as u64
    }

    /// Starts a heartbeat round: a new round number, which this leader
    /// acknowledges itself, then a heartbeat to every other member.
    pub(super) fn heartbeat_round(&mut self) {
        let round = self.reads.next_round();
        if let Some(me) = self.progress.get_mut(&self.id) {
            me.read_round = round;
        }
        let now = self.ticks;
        let keep = self.lease_ticks();
        let lease = &mut self.lease;
        while lease
            .unconfirmed
            .front()
            .is_some_and(|(_, t)| now.saturating_sub(*t) >= keep)
        {
            lease.unconfirmed.pop_front();
        }
        lease.unconfirmed.push_back((round, now));
        self.broadcast_heartbeat();
    }

    /// Moves the lease to the latest round a quorum acknowledged.
    pub(super) fn update_lease(&mut self) {
        if self.role != Role::Leader {
            return;
        }
        let acked = |round: u64| {
            quorum::is_quorum(&self.conf, |id| {
                self.progress
                    .get(&id)
                    .is_some_and(|p| p.read_round >= round)
            })
        };
        let Some(pos) = self.lease.unconfirmed.iter().rposition(|(r, _)| acked(*r)) else {
            return;
        };
        let start = self.lease.unconfirmed.get(pos).map(|(_, t)| *t);
        self.lease.unconfirmed.drain(..=pos);
        if let Some(start) = start {
            self.lease.confirmed_start =
                Some(self.lease.confirmed_start.map_or(start, |s| s.max(start)));
        }
    }

    /// A lease read (thesis §6.4.1): on a leader whose lease holds (module
    /// docs), the index the state machine must have applied before the read
    /// is served, with no message exchanged. `None` when there is no lease
    /// now (not the leader, [`Config::lease_reads`](super::Config::lease_reads)
    /// or CheckQuorum off, no entry of this term committed yet, a transfer
    /// started, or the last quorum-acknowledged round is older than the
    /// lease): use [`Raft::read_index`] instead.
    pub fn lease_read(&self) -> Option<Index> {
        if self.role != Role::Leader
            || !self.cfg.lease_reads
            || !self.cfg.check_quorum
            || self.lease.revoked
            || self.transfer_target.is_some()
            || !self.committed_in_term()
        {
            return None;
        }
        let start = self.lease.confirmed_start?;
        (self.ticks < start.saturating_add(self.lease_ticks())).then(|| self.log.committed())
    }

    /// Forgets every heartbeat round sent so far: this node's ticks were
    /// withheld for a while (the runtime stops ticking a quiescent group),
    /// so a round's start tick no longer tells how long ago, in real time,
    /// it was sent. The lease comes back with the next round a quorum
    /// acknowledges; until then reads take a ReadIndex round.
    pub fn forget_lease_rounds(&mut self) {
        self.lease.confirmed_start = None;
        self.lease.unconfirmed.clear();
    }

    /// Ticks left in this leader's lease (0 when there is none).
    pub fn lease_remaining(&self) -> u64 {
        if self.lease_read().is_none() {
            return 0;
        }
        self.lease.confirmed_start.map_or(0, |s| {
            s.saturating_add(self.lease_ticks())
                .saturating_sub(self.ticks)
        })
    }

    /// The commit index of the leader as last heard by this node (its own on
    /// the leader): how far a stale read's applied index may lag.
    pub fn leader_commit(&self) -> Index {
        if self.role == Role::Leader {
            self.log.committed()
        } else {
            self.known_leader_commit.max(self.log.committed())
        }
    }

    /// Whether a node that started less than an election timeout ago still
    /// ignores vote requests (module docs, "Restarts").
    pub(super) fn in_startup_lease(&self) -> bool {
        self.cfg.lease_reads && self.ticks < u64::from(self.cfg.election_ticks)
    }
}

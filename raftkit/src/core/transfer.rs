//! Leadership transfer (Raft thesis §3.10).
//!
//! The leader stops accepting proposals, brings the target's log up to date,
//! then sends it `TimeoutNow`; the target campaigns at once, skipping
//! PreVote, with a flag that lets voters grant the vote even though they
//! still hear from the current leader. A transfer that does not complete
//! within an election timeout is abandoned (see `election`). The flag
//! overrides a voter's lease only one term above its own (`Raft::step_admitted`),
//! so with `lease_reads` a voter in its startup lease whose persisted term
//! lags the leader's (it was down across a term change) refuses the
//! transfer vote for its first election timeout: the transfer then needs
//! the other voters (review s59, finding 3).
//!
//! Invariants:
//! - a transfer is timed on its own clock (`transfer_elapsed`), started when
//!   the transfer starts; it never touches `election_elapsed`, the clock
//!   CheckQuorum runs on (thesis §6.2), so transfers asked for more often
//!   than every election timeout cannot keep a leader without a quorum in
//!   office;
//! - asking again for the transfer in progress (same target) does not
//!   restart its clock: it is abandoned an election timeout after it was
//!   first asked for, and the leader takes proposals again; a transfer to
//!   another target is a new transfer, with a new election timeout.

use super::message::Body;
use super::raft::{Raft, Role};
use super::types::NodeId;

/// Why a leadership transfer could not start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransferError {
    /// This node is not the leader.
    #[error(transparent)]
    NotLeader(#[from] super::NotLeader),
    /// The target is not a voter of the configuration in force.
    #[error("node {0} is not a voter")]
    NotVoter(NodeId),
}

impl Raft {
    /// Starts transferring leadership to `to` (thesis §3.10). Transferring
    /// to itself is a no-op; asking again for the transfer in progress
    /// sends the target what it needs again but does not extend the
    /// transfer's election timeout.
    ///
    /// A target that first followed this leader in this term before it
    /// held the configuration that made this leader a voter (a promotion
    /// it missed, thesis §4.1) drops the TimeoutNow for the rest of the
    /// term (`DropReason::TimeoutNowNotFromLeader`; see the `inbound`
    /// module docs: a learner can write such a configuration itself). The
    /// transfer is then abandoned after an election timeout, proposals
    /// being refused meanwhile ([`ProposeError::Transferring`]): choose
    /// another target, or retry in a later term.
    ///
    /// [`ProposeError::Transferring`]: super::ProposeError::Transferring
    pub fn transfer_leadership(&mut self, to: NodeId) -> Result<(), TransferError> {
        if self.role != Role::Leader {
            return Err(self.not_leader().into());
        }
        if to == self.id {
            return Ok(());
        }
        if !self.conf.is_voter(to) {
            return Err(TransferError::NotVoter(to));
        }
        if self.transfer_target != Some(to) {
            self.transfer_target = Some(to);
            self.transfer_elapsed = 0;
        }
        // The target's campaign is granted inside leases (§3.10).
        self.lease.revoke();
        let caught_up = self
            .progress
            .get(&to)
            .is_some_and(|p| p.matched == self.log.last_index());
        if caught_up {
            self.send(to, Body::TimeoutNow);
        } else {
            self.send_append_all(to, true);
        }
        Ok(())
    }

    /// The target of a transfer campaigns immediately.
    pub(super) fn handle_timeout_now(&mut self) {
        if self.role != Role::Leader {
            self.campaign(true);
        }
    }
}

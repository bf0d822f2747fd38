//! The replica balancer's rounds on a node ([`MultiNode::balance_replicas`]):
//! plan with [`plan_replicas_avoiding`](super::balance::plan_replicas_avoiding),
//! carry out one move ([`super::moves`]), back off from targets that refused
//! or failed it ([`RefusedTargets`](super::balance::RefusedTargets)), and
//! remove the learners failed moves left (see the
//! [moves module documentation](super::moves), "Replica balancing").

use tracing::info;

use super::balance::{ReplicaView, plan_replicas_avoiding};
use super::moves::{MoveError, MoveReport, MoveStep, settled};
use super::{GroupId, MultiNode};
use crate::core::{NodeId, Role};
use crate::error::Error;
use crate::runtime::{Peer, PeerExt};

impl<S: PeerExt> MultiNode<S> {
    /// One round of the replica-count balancer: plans moves over the groups
    /// this node leads ([`plan_replicas`](super::balance::plan_replicas)) and carries out the first one.
    /// The nodes considered are those the node's groups list plus those
    /// given to [`MultiNode::set_known_nodes`]. Returns the move made.
    pub async fn balance_replicas(&self) -> Result<Option<MoveReport>, MoveError> {
        let mut nodes: std::collections::BTreeMap<NodeId, String> = self
            .known_nodes()
            .into_iter()
            .map(|a| (Peer::<S>::member_id(&a), a))
            .collect();
        let mut view = Vec::new();
        for group in self.groups() {
            let Some(peer) = self.group(group) else {
                continue;
            };
            let st = peer.status();
            for m in &st.members {
                if let Some(a) = &m.addr {
                    nodes.entry(m.id).or_insert_with(|| a.clone());
                }
            }
            view.push(ReplicaView {
                group,
                led_here: st.role == Role::Leader && settled(&st),
                voters: st
                    .members
                    .iter()
                    .filter(|m| m.voter)
                    .map(|m| m.id)
                    .collect(),
            });
        }
        // Learners of earlier failed moves whose removal failed.
        self.remove_stray_learners().await;
        let ids: Vec<NodeId> = nodes.keys().copied().collect();
        let schemas = self.schema_book();
        let skip = self.refused_targets(|r| r.round(|id| schemas.peer(id)));
        let Some(mv) = plan_replicas_avoiding(&view, &ids, &skip)
            .into_iter()
            .next()
        else {
            return Ok(None);
        };
        let Some(addr) = nodes.get(&mv.to) else {
            return Ok(None);
        };
        info!(group = mv.group, from = mv.from, to = %addr, "moving a replica to balance replica counts");
        let opts = self.balance_move_options();
        let moved = self.move_replica_with(mv.group, mv.from, addr, &opts).await;
        match &moved {
            Ok(_) => self.refused_targets(|r| r.moved(mv.to)),
            Err(e) => {
                if counts_against_target(e) {
                    let heard = schemas.peer(mv.to);
                    self.refused_targets(|r| r.refused(mv.to, heard));
                    info!(group = mv.group, to = %addr, error = %e, "replica move to this target refused or failed: later rounds skip it until its schema changes or the backoff ends");
                }
                if leaves_its_learner(e) {
                    self.stray_learners(|s| s.insert((mv.group, addr.clone())));
                    self.remove_stray_learners().await;
                }
            }
        }
        moved.map(Some)
    }

    /// Removes `to`, the learner a failed balancing move left in `group`
    /// ([`abort_move`](Self::abort_move)).
    async fn remove_stray(&self, group: GroupId, to: &str) -> Result<(), MoveError> {
        self.abort_move(group, to).await
    }

    /// Removes the learners that failed balancing moves left
    /// ([`leaves_its_learner`]), as [`abort_move`](Self::abort_move)
    /// does; one whose removal fails is kept for the next round, one this
    /// node can no longer remove (it does not lead or host the group, the
    /// node votes now) is forgotten.
    async fn remove_stray_learners(&self) {
        let strays: Vec<(GroupId, String)> = self.stray_learners(|s| s.iter().cloned().collect());
        for (group, to) in strays {
            let keep = match self.remove_stray(group, &to).await {
                Ok(()) => {
                    info!(group, to = %to, "removed the learner of a failed balancing move");
                    false
                }
                Err(e @ MoveError::Step { .. }) => {
                    tracing::warn!(group, to = %to, error = %e, "removing the learner of a failed balancing move failed; the next round tries again");
                    true
                }
                Err(e) => {
                    info!(group, to = %to, error = %e, "not removing the learner of a failed balancing move");
                    false
                }
            };
            if !keep {
                self.stray_learners(|s| s.remove(&(group, to)));
            }
        }
    }
}

/// Whether a failed move may leave behind a learner it added before its
/// joint change, which the replica balancer then removes
/// ([`MultiNode::abort_move`]): the learner's addition failed (it may
/// have been added), or its removal after a refused joint change did
/// ([`learner_not_removed`](super::moves::learner_not_removed)). Not a learner whose catch-up failed: the
/// target may be alive but slow, and a kept learner lets the next attempt
/// resume its catch-up (8897e64 removed it, so a target slower than the
/// catch-up timeout could never be filled). Nor one whose joint change
/// may be in the log.
pub(super) fn leaves_its_learner(e: &MoveError) -> bool {
    matches!(
        e,
        MoveError::Step {
            step: MoveStep::AddLearner,
            ..
        }
    )
}

/// Whether a failed move counts against its target, so that the replica
/// balancer backs off from it ([`RefusedTargets`](super::balance::RefusedTargets)):
/// a refused joint change, and a failed step that needs the target — its
/// catch-up (a target that is down, unreachable or too slow fails it after
/// the whole [`MoveOptions::catch_up_timeout`](super::MoveOptions::catch_up_timeout), 120 s by default, every
/// time), or a configuration change whose new majority includes it, that
/// timed out ([`Error::Timeout`]). Not a move that never reached the
/// target: this node no longer leads the group, the move made no sense, an
/// earlier change was still in flight, or the learner could not be added
/// (the group's own trouble); nor a step that failed for this node or the
/// group, whatever the step: leadership lost (at catch-up, or a new leader
/// cut the joint entry off, [`Error::NotLeader`]), another change hiding
/// the joint change's outcome ([`Error::Ambiguous`]), this node's replica
/// stopping or its storage failing.
pub(super) fn counts_against_target(e: &MoveError) -> bool {
    match e {
        MoveError::Refused { .. } => true,
        MoveError::Step { step, source, .. } => {
            matches!(
                step,
                MoveStep::CatchUp | MoveStep::JointChange | MoveStep::LeaveJoint
            ) && matches!(source, Error::Timeout)
        }
        MoveError::NotHosted { .. } | MoveError::NotLeader { .. } | MoveError::Invalid { .. } => {
            false
        }
    }
}

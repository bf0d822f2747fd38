//! The replica balancer's rounds on a node ([`MultiNode::balance_replicas`]):
//! plan with [`plan_replicas_avoiding`](super::balance::plan_replicas_avoiding),
//! carry out one move ([`super::moves`]), back off from targets that refused
//! or failed it ([`RefusedTargets`](super::balance::RefusedTargets)), and
//! remove the learners failed moves left (see the
//! [moves module documentation](super::moves), "Replica balancing").

use tracing::info;

use super::balance::{ReplicaView, plan_replicas_avoiding};
use super::moves::{MoveError, MoveReport, MoveSeen, MoveStep, is_member, settled};
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
        let mut seen = MoveSeen::default();
        let e = match self
            .move_replica_seen(mv.group, mv.from, addr, &opts, &mut seen)
            .await
        {
            Ok(report) => {
                self.refused_targets(|r| r.moved(mv.to));
                return Ok(Some(report));
            }
            Err(e) => e,
        };
        if counts_against_target(&e, &seen) {
            let heard = schemas.peer(mv.to);
            self.refused_targets(|r| r.refused(mv.to, heard));
            info!(group = mv.group, to = %addr, error = %e, "replica move to this target refused or failed: later rounds skip it until its schema changes or the backoff ends");
        }
        if !leaves_its_learner(&e, &seen) {
            return Err(e);
        }
        self.stray_learners(|s| s.insert((mv.group, addr.clone())));
        self.remove_stray_learners().await;
        if !seen.target_silent {
            return Err(e);
        }
        // The catch-up's error says a later move resumes: not so once the
        // learner was removed.
        let removed = self
            .group(mv.group)
            .is_some_and(|p| !is_member(&p.status(), mv.to));
        Err(silent_target_left(e, addr, removed))
    }

    /// Removes `to`, the learner a failed balancing move left in `group`
    /// ([`abort_move`](Self::abort_move); tests may fail it first,
    /// `moves::hooks::fail_stray_removals`).
    async fn remove_stray(&self, group: GroupId, to: &str) -> Result<(), MoveError> {
        #[cfg(test)]
        if super::moves::hooks::stray_removal_fails(self.id()) {
            return Err(MoveError::Step {
                group,
                step: MoveStep::AddLearner,
                applied: crate::error::Applied::Maybe,
                leaves: "the test failed this removal".into(),
                source: Error::Timeout,
            });
        }
        self.abort_move(group, to).await
    }

    /// Removes the learners that failed balancing moves left
    /// ([`leaves_its_learner`]), as [`abort_move`](Self::abort_move)
    /// does; one whose removal fails is kept for the next round, one this
    /// node can no longer remove (it does not lead or host the group, the
    /// node votes now) is forgotten. One whose (group, node) has a move in
    /// flight is kept, untouched (the pair's lock, see
    /// [`MultiNode::move_lock`]): that move may be resuming it.
    pub(super) async fn remove_stray_learners(&self) {
        let strays: Vec<(GroupId, String)> = self.stray_learners(|s| s.iter().cloned().collect());
        for (group, to) in strays {
            let Ok(_removing) = self
                .move_lock(group, Peer::<S>::member_id(&to))
                .try_write_owned()
            else {
                info!(group, to = %to, "a move to this learner's node is in flight: its removal waits for a later round");
                continue;
            };
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
/// ([`learner_not_removed`](super::moves::learner_not_removed)), or its
/// catch-up timed out while the target showed no sign of life
/// (`seen.target_silent`: down, unreachable, or not hosting the group;
/// nothing else would remove the learner of a target that never comes
/// back). Not a learner whose catch-up failed while the target showed
/// life: it may be alive but slower than the catch-up timeout, and a kept
/// learner lets the next attempt resume its catch-up (8897e64 removed it,
/// so such a target could never be filled). Nor one whose joint change
/// may be in the log.
pub(super) fn leaves_its_learner(e: &MoveError, seen: &MoveSeen) -> bool {
    match e {
        MoveError::Step {
            step: MoveStep::AddLearner,
            ..
        } => true,
        MoveError::Step {
            step: MoveStep::CatchUp,
            source: Error::Timeout,
            ..
        } => seen.target_silent,
        _ => false,
    }
}

/// What a balancing move whose target was silent for its whole catch-up
/// (`e`, its error) left, once the balancer tried to remove its learner:
/// `removed`, or the learner may remain (the balancer tries again).
fn silent_target_left(e: MoveError, to: &str, removed: bool) -> MoveError {
    match e {
        MoveError::Step {
            group,
            step,
            source,
            ..
        } if removed => MoveError::Step {
            group,
            step,
            // The learner's addition, or its removal, committed.
            applied: crate::error::Applied::Yes,
            leaves: format!(
                "{to} showed no sign of life during the whole catch-up: the replica balancer removed its learner again (a later move adds it anew); nothing else of the move is in force"
            ),
            source,
        },
        MoveError::Step {
            group,
            step,
            applied,
            source,
            ..
        } => MoveError::Step {
            group,
            step,
            applied,
            leaves: format!(
                "{to} showed no sign of life during the whole catch-up and may still be a learner: the replica balancer tries to remove it again at its next rounds, abort_move removes it"
            ),
            source,
        },
        e => e,
    }
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
///
/// A move whose joint change was refused counts whatever became of the
/// removal of its learner after it (`seen.refused`): a removal that
/// failed makes its error a failed [`MoveStep::AddLearner`] step, which
/// alone would not count, and a target whose schema refused the
/// promotion would be tried again at once (review s56, finding 3).
pub(super) fn counts_against_target(e: &MoveError, seen: &MoveSeen) -> bool {
    if seen.refused.is_some() {
        return true;
    }
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

#[cfg(test)]
#[path = "rebalance_tests.rs"]
mod rebalance_tests;

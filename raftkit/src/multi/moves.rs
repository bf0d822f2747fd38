//! Moving a group's replica from one node to another, and balancing the
//! number of replicas per node.
//!
//! [`MultiNode::move_replica`] runs on the node whose replica **leads** the
//! group and takes these steps, each logged (a `tracing` event with the
//! group, the nodes and the step's duration):
//!
//! 1. **add learner** ([`MoveStep::AddLearner`]): the target node joins the
//!    configuration as a learner (Raft thesis §4.2.1); it does not host
//!    the group yet and starts an empty replica on the leader's first
//!    message ([`hosting`](super::hosting));
//! 2. **catch up** ([`MoveStep::CatchUp`]): wait until the learner's match
//!    index is within [`MoveOptions::catch_up_lag`] entries of the
//!    leader's last index (by the log, or a snapshot once the log behind it
//!    is compacted), so that adding it as a voter does not stall commits;
//! 3. **joint change** ([`MoveStep::JointChange`]): one configuration
//!    change replaces the leaving voter by the target (thesis §4.3: the
//!    joint configuration `C_old,new` needs majorities of both sets) and
//!    waits until it commits. It is sent as an edit (replace `from` by
//!    `to`), which the node task applies to the group's latest
//!    configuration when it proposes it, never a whole target built from
//!    the status read at step 2: a change another admin committed in
//!    between (a learner added, a member removed) stays. The edit is
//!    refused ([`Error::Rejected`], nothing appended) if `from` is no
//!    longer a voter or the target no longer a learner by then, while
//!    another change is in flight, or if the target's binary is older
//!    than the voters' (the promotion check of `add_server`). A move so
//!    refused removes the learner it added at step 1 (one that was a
//!    learner before the move stays) and fails with
//!    [`MoveError::Refused`]: nothing was changed. Its
//!    [`RefusalCause`] says whether calling the move again may succeed:
//!    not while the target's binary lacks what the voters enabled (its
//!    schema, as the node's schema book holds it when the refusal is
//!    undone), until the target is upgraded; yes after a change in flight
//!    or made meanwhile;
//! 4. **leave joint** ([`MoveStep::LeaveJoint`]): the core appends `C_new`
//!    by itself once `C_old,new` commits; wait until `C_new` commits. The
//!    leaving node's replica then retires (its state is deleted, see
//!    [`hosting`](super::hosting)).
//! 5. **record** (not a [`MoveStep`]: it changes no configuration): once
//!    this node's replica holds a committed, non-joint configuration
//!    (waiting up to [`MoveOptions::step_timeout`]), its voters are
//!    recorded in the placement ([`placement_sync`](super::placement_sync)),
//!    whether the move succeeded or failed after changing the
//!    configuration; a move refused before any change records nothing.
//!    It reads the replica the move ran on, held from the start: when this
//!    node leaves the group its replica may retire before this step.
//!    A record that fails is logged and the move's outcome stands: the
//!    group's leader records the configuration at its next check.
//!
//! If the leaving node is the leader (the mover itself), it manages the
//! change while not counting itself in `C_new` and steps down once `C_new`
//! commits (thesis §4.2.2); the new voters then elect a leader. It does
//! not transfer leadership first: the move is driven by the leader's node,
//! which has no handle on another node's replica to finish it from there.
//!
//! # Resuming and aborting
//!
//! Every step reads the configuration in force first, so calling
//! `move_replica` again after a failure (on the current leader) resumes
//! where the configuration stands: a learner already added is not added
//! again, a change in flight is waited for, a finished move reports
//! [`MoveReport::already_done`]. A failure says which step failed and what
//! state it leaves ([`MoveError::Step`]). Until the joint change is
//! proposed a move can be abandoned with [`MultiNode::abort_move`], which
//! removes the learner; after it, the move can only be reversed by moving
//! the replica back.
//!
//! # Replica balancing
//!
//! [`MultiNode::balance_replicas`] runs [`balance::plan_replicas_avoiding`](super::balance::plan_replicas_avoiding)
//! over the groups this node leads and carries out at most one move per
//! round. A target whose move was refused ([`MoveError::Refused`]) or
//! failed at a step that needs the target (its catch-up: a dead target
//! fails it after the whole catch-up timeout, every round) is skipped by
//! later rounds until its schema changes or a doubling backoff runs out
//! ([`balance::RefusedTargets`](super::balance::RefusedTargets)); a move
//! to it that succeeds forgets it, and so does a refused move whatever
//! became of its learner's removal. A balancing move whose catch-up timed
//! out keeps its learner if the target showed a sign of progress during
//! the catch-up (its match index moving, or a snapshot chunk it took; a
//! heartbeat answer alone is none):
//! it is alive but slower than the catch-up timeout (a large snapshot, a
//! throttled link), and a kept learner goes on receiving the snapshot and
//! the log during the backoff, so the next attempt resumes
//! (`added == false`) instead of starting from zero. One whose target
//! showed none during the whole catch-up (down, unreachable, or not
//! hosting the group) has its learner removed, as [`MultiNode::abort_move`]
//! does: nothing else would remove the learner of a target that never
//! comes back. So does a balancing move whose learner may have been added
//! but whose addition failed, or whose learner could not be removed again
//! after a refusal (`rebalance::leaves_its_learner`). A removal that fails
//! (a change in flight, the group unable to commit) is logged and tried
//! again at the start of each later round, until it succeeds or this node
//! no longer leads the group (the learner then stays: the new leader's
//! node does not know of it). It never counts against the target.
//!
//! Moves and those removals exclude each other per (group, target)
//! (`MultiNode::move_lock`): every move holds its pair's lock shared
//! while it runs, a removal holds it exclusively and is skipped (kept
//! for a later round) while a move to the pair is in flight; a move
//! waits for a removal in progress before it reads the configuration,
//! (for at most its [`MoveOptions::step_timeout`], then it fails at its
//! `Settle` step, nothing changed), and takes the pair's learner over
//! (the balancer forgets it: the move's own outcome says what becomes of
//! it), unless it fails before taking charge of it (its checks, its
//! `Settle` step, or a refused joint change): then the balancer gets it
//! back (review s57, finding 1). So a retry never removes the
//! learner of a move in flight to the same node, an admin's included
//! (review s56, finding 2: it did, and that move then waited its whole
//! catch-up timeout and failed as if the target were dead).

use std::time::Duration;

use tokio::time::Instant;
use tracing::info;

use super::{GroupId, MultiNode};
use crate::core::{Index, NodeId, Role};
use crate::error::{Applied, Error};
use crate::runtime::{Peer, PeerExt, PeerStatus};

/// How a move waits for its steps.
#[derive(Clone, Debug)]
pub struct MoveOptions {
    /// The learner is caught up once its match index is at most this many
    /// entries behind the leader's last index.
    pub catch_up_lag: u64,
    /// How long the learner may take to catch up.
    pub catch_up_timeout: Duration,
    /// How long each configuration change may take to commit.
    pub step_timeout: Duration,
}

impl Default for MoveOptions {
    fn default() -> Self {
        MoveOptions {
            catch_up_lag: 64,
            catch_up_timeout: Duration::from_secs(120),
            step_timeout: Duration::from_secs(30),
        }
    }
}

/// What a move saw that its result does not say, for the replica
/// balancer ([`super::rebalance`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct MoveSeen {
    /// Its catch-up timed out without a sign of progress from the target:
    /// its match index did not move past where it was before the move, and
    /// it took no snapshot chunk, during the whole catch-up (a target that
    /// is down, unreachable, does not host the group, or answers but does
    /// not catch up).
    pub(super) target_silent: bool,
    /// Its joint change was refused, for this cause (whatever became of
    /// the learner's removal after it).
    pub(super) refused: Option<RefusalCause>,
}

/// A step of a replica move (see the [module documentation](self)).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MoveStep {
    /// Waiting for an earlier configuration change to finish.
    Settle,
    /// Adding the target as a learner.
    AddLearner,
    /// Waiting for the learner to catch up.
    CatchUp,
    /// The joint configuration replacing the leaving voter by the target.
    JointChange,
    /// Leaving the joint configuration (`C_new` commits).
    LeaveJoint,
}

/// What a finished move did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MoveReport {
    /// The group.
    pub group: GroupId,
    /// The node that left the group.
    pub from: NodeId,
    /// The node that joined it.
    pub to: NodeId,
    /// Each step taken, with how long it took.
    pub steps: Vec<(MoveStep, Duration)>,
    /// The whole move's duration.
    pub took: Duration,
    /// The leaving node was the leader: it stepped down once `C_new`
    /// committed, and the group elects a new leader among its voters.
    pub leader_left: bool,
    /// The configuration already had the target and not the leaving node:
    /// nothing was done.
    pub already_done: bool,
}

/// Why a move's joint change was refused ([`MoveError::Refused`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalCause {
    /// The target's binary is older than the voters': its schema lacks a
    /// write they have enabled, or cannot restore their snapshots. Every
    /// retry is refused the same way until the target is upgraded (or
    /// another target chosen).
    TargetSchema,
    /// The configuration: another change was in flight, or one made
    /// meanwhile changed `from` or the target (or the target's schema had
    /// not reached the leader yet). Calling the move again may succeed.
    Configuration,
}

impl std::fmt::Display for RefusalCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RefusalCause::TargetSchema => {
                "by the target's schema: not retryable until the target is upgraded"
            }
            RefusalCause::Configuration => "by the configuration: retryable",
        })
    }
}

/// Why a move failed, and what state it leaves.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoveError {
    /// This node hosts no replica of the group.
    #[error("group {group} is not hosted on this node")]
    NotHosted {
        /// The group.
        group: GroupId,
    },
    /// This node's replica does not lead the group: call the leader's node.
    #[error("this node does not lead group {group} (leader: {hint:?}); nothing was changed")]
    NotLeader {
        /// The group.
        group: GroupId,
        /// The leader's address, if known.
        hint: Option<String>,
    },
    /// The move makes no sense for the configuration in force.
    #[error("cannot move a replica of group {group}: {reason}; nothing was changed")]
    Invalid {
        /// The group.
        group: GroupId,
        /// Why.
        reason: String,
    },
    /// A step's change was refused before anything was appended (the
    /// joint change: the target's binary is older than the voters', or
    /// another change is in flight), and the learner the move added, if
    /// any, was removed again: the move changed nothing. Retryable only
    /// when `cause` is the configuration.
    #[error(
        "moving a replica of group {group}: step {step:?} was refused {cause}, nothing appended: {source}; {leaves}"
    )]
    Refused {
        /// The group.
        group: GroupId,
        /// The step refused.
        step: MoveStep,
        /// Why, and whether calling the move again may succeed.
        cause: RefusalCause,
        /// What the group is left in (as before the move).
        leaves: String,
        /// The refusal.
        #[source]
        source: Error,
    },
    /// A step failed.
    #[error("moving a replica of group {group}: step {step:?} failed: {source}; {leaves}")]
    Step {
        /// The group.
        group: GroupId,
        /// The step that failed.
        step: MoveStep,
        /// Whether the move changed the group's configuration before it
        /// failed ([`MoveError::applied`]): `No` when the step that failed
        /// found the target a learner already and added nothing, or its
        /// joint change was cut off by a new leader.
        applied: Applied,
        /// The state the group is left in, and how to go on.
        leaves: String,
        /// The cause.
        #[source]
        source: Error,
    },
}

impl MoveError {
    /// Whether the move changed the group's configuration: `No` for a move
    /// refused before its first change or refused at its joint change
    /// ([`MoveError::Refused`]), and for a failed step when nothing this
    /// move proposed is or can be in force (see [`MoveError::Step`]'s
    /// `applied`); `Maybe` when the change may be in the log; `Yes` when a
    /// change committed before the failure (see [`MoveError::Step::leaves`]).
    pub fn applied(&self) -> Applied {
        match self {
            MoveError::NotHosted { .. }
            | MoveError::NotLeader { .. }
            | MoveError::Invalid { .. }
            | MoveError::Refused { .. } => Applied::No,
            MoveError::Step { applied, .. } => *applied,
        }
    }

    /// Whether calling the move again (on the group's current leader) may
    /// succeed: a move refused by the configuration may (once the change
    /// in flight committed), one refused by the target's schema may not
    /// until the target is upgraded ([`RefusalCause`]).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            MoveError::NotLeader { .. }
                | MoveError::Step { .. }
                | MoveError::Refused {
                    cause: RefusalCause::Configuration,
                    ..
                }
        )
    }
}

/// What a failed step leaves.
fn leaves(step: MoveStep, to: &str) -> String {
    match step {
        MoveStep::Settle => {
            "an earlier configuration change is still in flight; nothing was changed".into()
        }
        MoveStep::AddLearner => format!(
            "{to} may have been added as a learner; move_replica again resumes, abort_move removes it"
        ),
        MoveStep::CatchUp => format!(
            "{to} is a learner (it does not vote); move_replica again resumes, abort_move removes it"
        ),
        MoveStep::JointChange => format!(
            "the joint configuration adding {to} may be in the log; once it commits the core leaves it by itself; move_replica again resumes"
        ),
        MoveStep::LeaveJoint => format!(
            "the joint configuration adding {to} committed; the core completes the change by itself; move_replica again reports when it is done"
        ),
    }
}

pub(super) fn is_member(st: &PeerStatus, id: NodeId) -> bool {
    st.members.iter().any(|m| m.id == id)
}

fn is_voter(st: &PeerStatus, id: NodeId) -> bool {
    st.members.iter().any(|m| m.id == id && m.voter)
}

/// Whether the configuration in force is committed and not joint.
pub(super) fn settled(st: &PeerStatus) -> bool {
    !st.joint && st.commit >= st.config_index
}

/// Step 2's end: the target `to` holds at least the configuration that
/// added it and is within `lag` entries of the leader's last entry (a voter
/// further behind would stall commits once the joint change needs it).
fn caught_up(s: &PeerStatus, to: NodeId, lag: u64) -> bool {
    s.members.iter().any(|m| {
        m.id == to
            && m.matched
                .is_some_and(|x| x >= s.config_index && x.saturating_add(lag) >= s.last_index)
    })
}

/// Step 4's end: `C_new`, appended after the joint configuration at
/// `joint_index`, is committed, with `to` voting and `from` gone.
fn left_joint(s: &PeerStatus, joint_index: Index, to: NodeId, from: NodeId) -> bool {
    settled(s) && s.config_index > joint_index && is_voter(s, to) && !is_member(s, from)
}

/// What became of the joint configuration a move appended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum JointOutcome {
    /// It committed: it (or a later configuration with the target
    /// voting, `C_new`) is in force and the commit index passed it.
    Committed,
    /// A new leader cut it off: the configuration in force is older than
    /// it, yet the commit index passed its index, so another entry
    /// committed there and it never can (one entry per committed index,
    /// Raft §5.3 Log Matching, §5.4 Leader Completeness).
    CutOff,
    /// A later configuration without the target voting is in force: the
    /// status cannot tell whether the joint one committed before it.
    Unknown,
}

/// Step 3's end: `None` while the commit index is short of `index`, the
/// index the joint configuration adding `to` was appended at; then what
/// became of it. A configuration takes effect when appended (Raft thesis
/// §4.1), so `config_index` falls back below `index` when the entry is
/// truncated; a commit index alone past `index` proves nothing about the
/// entry (found by review, stop 53).
fn joint_outcome(s: &PeerStatus, index: Index, to: NodeId) -> Option<JointOutcome> {
    if s.commit < index {
        None
    } else if s.config_index < index {
        Some(JointOutcome::CutOff)
    } else if is_voter(s, to) {
        Some(JointOutcome::Committed)
    } else {
        Some(JointOutcome::Unknown)
    }
}

/// Whether a move that failed with `e` never took charge of a stray
/// learner of its pair (one a failed balancing move left), so the
/// balancer keeps removing it (review s57, finding 1): the move failed
/// its checks or its `Settle` step before touching the learner, or its
/// joint change was refused (the learner stays as it was, or is gone: a
/// retry of a learner that is gone or votes forgets it). Not a failure at
/// a later step: the move's error says what becomes of the learner.
fn leaves_the_stray(e: &MoveError) -> bool {
    matches!(
        e,
        MoveError::Invalid { .. }
            | MoveError::NotHosted { .. }
            | MoveError::NotLeader { .. }
            | MoveError::Refused { .. }
            | MoveError::Step {
                step: MoveStep::Settle,
                ..
            }
    )
}

/// Waits until `done` holds for `peer`'s status, or `timeout` passes.
async fn wait_for<S: PeerExt>(
    peer: &Peer<S>,
    timeout: Duration,
    done: impl Fn(&PeerStatus) -> bool,
) -> Result<PeerStatus, Error> {
    let mut w = peer.watch();
    match tokio::time::timeout(timeout, w.wait_for(|s| done(s) || s.fatal.is_some())).await {
        Ok(Ok(st)) => match &st.fatal {
            Some(e) => Err(Error::Storage(e.clone())),
            None => Ok(st.clone()),
        },
        Ok(Err(_)) => Err(Error::Unavailable("the group's replica stopped".into())),
        Err(_) => Err(Error::Timeout),
    }
}

/// Fails with `NotLeader` unless `st` is the leader's.
fn must_lead(group: GroupId, st: &PeerStatus) -> Result<(), MoveError> {
    if st.role == Role::Leader {
        Ok(())
    } else {
        Err(MoveError::NotLeader {
            group,
            hint: st.leader_addr.clone(),
        })
    }
}

impl<S: PeerExt> MultiNode<S> {
    /// Moves `group`'s replica on node `from` to the node at address `to`
    /// (its advertised address), with the default [`MoveOptions`]. Call it
    /// on the node whose replica leads the group (any other node answers
    /// [`MoveError::NotLeader`] with the leader's address). See the
    /// [module documentation](super::moves) for the steps.
    pub async fn move_replica(
        &self,
        group: GroupId,
        from: NodeId,
        to: &str,
    ) -> Result<MoveReport, MoveError> {
        self.move_replica_with(group, from, to, &MoveOptions::default())
            .await
    }

    /// [`move_replica`](Self::move_replica) with explicit options.
    pub async fn move_replica_with(
        &self,
        group: GroupId,
        from: NodeId,
        to: &str,
        opts: &MoveOptions,
    ) -> Result<MoveReport, MoveError> {
        self.move_replica_seen(group, from, to, opts, &mut MoveSeen::default())
            .await
    }

    /// [`move_replica_with`](Self::move_replica_with), telling `seen` what
    /// the result does not say.
    pub(super) async fn move_replica_seen(
        &self,
        group: GroupId,
        from: NodeId,
        to: &str,
        opts: &MoveOptions,
        seen: &mut MoveSeen,
    ) -> Result<MoveReport, MoveError> {
        // In flight to (group, to) until it returns: the balancer's removal
        // of a stray learner there waits (`rebalance`), and one in
        // progress finishes before this move reads the configuration, for
        // at most a step timeout (review s57, finding 3).
        let lock = self.move_lock(group, Peer::<S>::member_id(to));
        let Ok(_in_flight) = tokio::time::timeout(opts.step_timeout, lock.read_owned()).await
        else {
            tracing::warn!(
                group,
                from,
                to,
                "replica move waited too long for the removal of a stray learner on its target"
            );
            return Err(MoveError::Step {
                group,
                step: MoveStep::Settle,
                applied: Applied::No,
                leaves: format!(
                    "the removal of a learner a failed balancing move left on {to} is still in progress; nothing was changed"
                ),
                source: Error::Timeout,
            });
        };
        // This move takes such a learner over: the balancer forgets it,
        // and gets it back if the move fails without taking charge of it.
        let took = self.stray_learners(|s| s.remove(&(group, to.to_string())));
        // The replica the move runs on, held for step 5: when this node
        // leaves the group, its replica retires once `C_new` commits
        // (`hosting`), possibly before step 5 looks for it.
        let held = self.group(group);
        let result = self.run_move(group, from, to, opts, seen).await;
        // Step 5: the placement follows the committed configuration, also
        // after a failure that left a change behind (the core finishes a
        // joint change by itself).
        let changed = match &result {
            Ok(_) => true,
            Err(e) => e.applied() != Applied::No,
        };
        if changed {
            self.record_after_move(group, held, opts.step_timeout).await;
        }
        if took && result.as_ref().is_err_and(leaves_the_stray) {
            self.stray_learners(|s| s.insert((group, to.to_string())));
        }
        result
    }

    /// Steps 1 to 4 of a move.
    async fn run_move(
        &self,
        group: GroupId,
        from: NodeId,
        to: &str,
        opts: &MoveOptions,
        seen: &mut MoveSeen,
    ) -> Result<MoveReport, MoveError> {
        let started = Instant::now();
        let peer = self.group(group).ok_or(MoveError::NotHosted { group })?;
        let to_id = Peer::<S>::member_id(to);
        let me = self.id();
        let invalid = |reason: String| MoveError::Invalid { group, reason };
        let fail = |step: MoveStep, applied: Applied, source: Error| {
            tracing::warn!(group, from, to, step = ?step, applied = ?applied, error = %source, "replica move step failed");
            MoveError::Step {
                group,
                step,
                applied,
                leaves: leaves(step, to),
                source,
            }
        };
        must_lead(group, &peer.status())?;
        if to_id == from {
            return Err(invalid(format!("node {from} is both source and target")));
        }
        let mut report = MoveReport {
            group,
            from,
            to: to_id,
            steps: Vec::new(),
            took: Duration::ZERO,
            leader_left: from == me,
            already_done: false,
        };
        info!(
            group,
            from,
            to,
            to_id,
            leader_leaves = from == me,
            "replica move started"
        );
        let mut step_start = Instant::now();
        let done_step = |report: &mut MoveReport, step: MoveStep, at: &mut Instant| {
            let took = at.elapsed();
            info!(group, from, to, step = ?step, took_ms = took.as_millis() as u64, "replica move step done");
            report.steps.push((step, took));
            *at = Instant::now();
        };

        // Settle: a change in flight (perhaps an earlier attempt of this
        // move) finishes first.
        let st = wait_for(&peer, opts.step_timeout, settled)
            .await
            .map_err(|e| fail(MoveStep::Settle, Applied::No, e))?;
        must_lead(group, &st)?;
        if is_voter(&st, to_id) && !is_member(&st, from) {
            report.already_done = true;
            report.leader_left = false;
            report.took = started.elapsed();
            info!(group, from, to, "replica move already done");
            return Ok(report);
        }
        if !is_voter(&st, from) {
            return Err(invalid(format!("node {from} is not a voter of the group")));
        }
        if is_voter(&st, to_id) {
            return Err(invalid(format!(
                "{to} is already a voter; remove {from} instead"
            )));
        }

        // 1. Add the target as a learner (unless it was one before: then a
        // refused joint change leaves it).
        let added = !is_member(&st, to_id);
        if added {
            peer.add_learner(to)
                .await
                .map_err(|e| fail(MoveStep::AddLearner, Applied::Maybe, e))?;
            wait_for(&peer, opts.step_timeout, |s| {
                is_member(s, to_id) && settled(s)
            })
            .await
            .map_err(|e| fail(MoveStep::AddLearner, Applied::Maybe, e))?;
            #[cfg(test)]
            if hooks::add_step_fails(me) {
                return Err(fail(MoveStep::AddLearner, Applied::Maybe, Error::Timeout));
            }
            done_step(&mut report, MoveStep::AddLearner, &mut step_start);
        }

        // What a failure from here on leaves changed if nothing later
        // than the learner is (or can be) in force: the learner this move
        // added, committed; a target that was a learner already, nothing.
        let if_added = if added { Applied::Yes } else { Applied::No };
        let maybe_joint = if added { Applied::Yes } else { Applied::Maybe };

        // 2. Wait until it caught up, watching for a sign of progress from
        // the target meanwhile: its match index moving past where it was
        // before this move's learner was added (`st`: none for a learner
        // added now), or a snapshot chunk it took (a snapshot shows in the
        // match index only once installed). A message alone is none: a
        // target that answers heartbeats but never catches up is kept
        // only while it progresses.
        let lag = opts.catch_up_lag;
        let heard = self.watch_heard(group, to_id);
        let matched_at = |s: &PeerStatus| {
            s.members
                .iter()
                .find(|m| m.id == to_id)
                .and_then(|m| m.matched)
        };
        let matched_before = matched_at(&st);
        // A new learner's progress starts at 0 with no answer from it.
        let progressed = || {
            heard.heard() || matched_at(&peer.status()).unwrap_or(0) > matched_before.unwrap_or(0)
        };
        #[cfg(test)]
        hooks::catch_up_begun(me);
        let caught = wait_for(&peer, opts.catch_up_timeout, |s| {
            s.role != Role::Leader || caught_up(s, to_id, lag)
        });
        #[cfg(test)]
        let caught = hooks::held_until_progress(me, &progressed, opts.catch_up_timeout, caught);
        let st = match caught.await {
            Ok(st) => st,
            Err(e) => {
                if matches!(e, Error::Timeout) {
                    seen.target_silent = !progressed();
                    info!(
                        group,
                        to,
                        silent = seen.target_silent,
                        "replica move's catch-up timed out"
                    );
                }
                return Err(fail(MoveStep::CatchUp, if_added, e));
            }
        };
        drop(heard);
        if st.role != Role::Leader {
            return Err(fail(
                MoveStep::CatchUp,
                if_added,
                Error::NotLeader {
                    hint: st.leader_addr,
                },
            ));
        }
        done_step(&mut report, MoveStep::CatchUp, &mut step_start);

        // 3. The joint change: `from` out, `to` in. An edit the node task
        // applies to the latest configuration when it proposes it, not a
        // target built from `st`: a change another admin committed since
        // `st` was read stays (`ConfEdit::Replace`). `None`: the latest
        // configuration already has it (nothing proposed); step 4 waits
        // for it committed.
        let index = match peer.replace_voter(from, to_id, to).await {
            Ok(index) => index.unwrap_or(0),
            // Refused before anything was appended (`Peer::replace_voter`):
            // the learner this move added goes again.
            Err(Error::Rejected(why)) => {
                // Judged before the learner goes: the same check the
                // refusal made (`Peer::replace_voter`), against the node's
                // schema book.
                let cause = self.refusal_cause(&peer, to);
                seen.refused = Some(cause);
                return Err(self
                    .undo_learner(&peer, group, to, added, why, cause, opts)
                    .await);
            }
            // Not the leader when it was proposed: nothing appended.
            Err(e @ Error::NotLeader { .. }) => {
                return Err(fail(MoveStep::JointChange, if_added, e));
            }
            Err(e) => return Err(fail(MoveStep::JointChange, maybe_joint, e)),
        };
        let st = wait_for(&peer, opts.step_timeout, |s| {
            joint_outcome(s, index, to_id).is_some()
        })
        .await
        .map_err(|e| fail(MoveStep::JointChange, maybe_joint, e))?;
        match joint_outcome(&st, index, to_id) {
            Some(JointOutcome::Committed) => {}
            Some(JointOutcome::CutOff) => {
                let e = MoveError::Step {
                    group,
                    step: MoveStep::JointChange,
                    applied: if_added,
                    leaves: format!(
                        "the joint configuration adding {to} was cut off by a new leader and never commits; {to} is a learner (it does not vote); move_replica again on the leader resumes, abort_move removes it"
                    ),
                    source: Error::NotLeader {
                        hint: st.leader_addr.clone(),
                    },
                };
                tracing::warn!(
                    group,
                    from,
                    to,
                    index,
                    commit = st.commit,
                    config_index = st.config_index,
                    "replica move's joint change was cut off by a new leader"
                );
                return Err(e);
            }
            Some(JointOutcome::Unknown) | None => {
                let e = MoveError::Step {
                    group,
                    step: MoveStep::JointChange,
                    applied: maybe_joint,
                    leaves: format!(
                        "the joint configuration adding {to} may have committed, but another change followed it and {to} does not vote in the configuration in force; read the group's status"
                    ),
                    source: Error::Ambiguous(format!(
                        "a configuration change after index {index} hides whether the joint change committed"
                    )),
                };
                tracing::warn!(
                    group,
                    from,
                    to,
                    index,
                    config_index = st.config_index,
                    "replica move's joint change outcome unknown"
                );
                return Err(e);
            }
        }
        done_step(&mut report, MoveStep::JointChange, &mut step_start);

        // 4. Leave the joint configuration: `C_new` commits.
        wait_for(&peer, opts.step_timeout, |s| {
            left_joint(s, index, to_id, from)
        })
        .await
        .map_err(|e| fail(MoveStep::LeaveJoint, Applied::Yes, e))?;
        done_step(&mut report, MoveStep::LeaveJoint, &mut step_start);
        report.took = started.elapsed();
        info!(
            group,
            from,
            to,
            took_ms = report.took.as_millis() as u64,
            leader_left = report.leader_left,
            "replica move done"
        );
        // Test only: a move held here, its steps 1 to 4 done, lets its
        // replica retire before the record (`moves_tests`).
        #[cfg(test)]
        super::placement_sync::hooks::before_record(self.id()).await;
        Ok(report)
    }

    /// After the joint change was refused (`why`, nothing appended, for
    /// `cause`): removes
    /// `to`, the learner the move added (`added`; one that was a learner
    /// before the move stays), and says what the group is left in. A
    /// removal that fails leaves the learner: a failed
    /// [`MoveStep::AddLearner`] step ([`learner_not_removed`]),
    /// `abort_move` removes it.
    #[allow(clippy::too_many_arguments)]
    async fn undo_learner(
        &self,
        peer: &Peer<S>,
        group: GroupId,
        to: &str,
        added: bool,
        why: String,
        cause: RefusalCause,
        opts: &MoveOptions,
    ) -> MoveError {
        let step = MoveStep::JointChange;
        tracing::warn!(group, to, reason = %why, %cause, learner_added = added, "replica move refused at its joint change");
        if !added {
            return MoveError::Refused {
                group,
                step,
                cause,
                leaves: format!(
                    "nothing was changed: {to} stays a learner, as it was before the move (abort_move removes it)"
                ),
                source: Error::Rejected(why),
            };
        }
        // The refused change may have met another admin's change in flight:
        // the removal waits for it to commit. It removes `to` only while it
        // is a learner, judged against the latest configuration when the
        // edit is made: another move or `add_server` to the same node may
        // have made it a voter meanwhile, and that voter stays.
        let removed = match wait_for(peer, opts.step_timeout, settled).await {
            Ok(_) => peer.remove_learner(to).await,
            Err(e) => Err(e),
        };
        if let Err(Error::Rejected(voter)) = &removed
            && is_voter(&peer.status(), Peer::<S>::member_id(to))
        {
            info!(
                group,
                to, "replica move refused: its target votes now, it stays"
            );
            return MoveError::Refused {
                group,
                step,
                cause,
                leaves: format!(
                    "nothing of this move was changed: {to} stays, as another change made it a voter meanwhile ({voter})"
                ),
                source: Error::Rejected(why),
            };
        }
        match removed {
            Ok(()) => {
                info!(
                    group,
                    to, "replica move refused: the learner it added was removed"
                );
                MoveError::Refused {
                    group,
                    step,
                    cause,
                    leaves: format!(
                        "nothing was changed: {to}, the learner this move added, was removed again"
                    ),
                    source: Error::Rejected(why),
                }
            }
            Err(e) => {
                tracing::warn!(group, to, error = %e, "removing the learner of a refused move failed");
                learner_not_removed(group, to, &why, e)
            }
        }
    }

    /// Why the joint change of a move to `to` was refused: the target's
    /// schema if promoting it would disable what `peer`'s other voters
    /// have enabled ([`crate::schema::SchemaBook::check_promotion`], the
    /// check `Peer::replace_voter` makes), else the configuration.
    fn refusal_cause(&self, peer: &Peer<S>, to: &str) -> RefusalCause {
        let me = peer.id();
        let voters: Vec<NodeId> = peer
            .status()
            .members
            .iter()
            .filter(|m| m.voter && m.id != me)
            .map(|m| m.id)
            .collect();
        match self
            .schema_book()
            .check_promotion(Peer::<S>::member_id(to), &voters)
        {
            Err(crate::schema::PromotionRefused::Shrinks(_)) => RefusalCause::TargetSchema,
            Ok(()) | Err(crate::schema::PromotionRefused::Unheard) => RefusalCause::Configuration,
        }
    }

    /// Abandons a move to the node at `to` that has not reached its joint
    /// change: removes `to` if it is a learner of `group` (its replica then
    /// retires). Call it on the group's leader. A target that already
    /// votes is refused: move the replica back instead.
    pub async fn abort_move(&self, group: GroupId, to: &str) -> Result<(), MoveError> {
        let peer = self.group(group).ok_or(MoveError::NotHosted { group })?;
        let to_id = Peer::<S>::member_id(to);
        let st = peer.status();
        must_lead(group, &st)?;
        if !is_member(&st, to_id) {
            return Ok(());
        }
        if is_voter(&st, to_id) {
            return Err(MoveError::Invalid {
                group,
                reason: format!(
                    "{to} already votes (the joint change was made); move the replica back instead"
                ),
            });
        }
        let fail = |source| MoveError::Step {
            group,
            step: MoveStep::AddLearner,
            applied: Applied::Maybe,
            leaves: format!("{to} may still be a learner; abort_move again removes it"),
            source,
        };
        // Only while it is a learner when the edit is made (a move's joint
        // change may commit between the check above and the edit).
        peer.remove_learner(to).await.map_err(fail)?;
        info!(group, to, "replica move aborted: learner removed");
        Ok(())
    }
}

/// What a move refused at its joint change (`why`) fails with when the
/// removal of the learner it added failed (`source`): the learner may
/// still be one. Reported as [`MultiNode::abort_move`] reports a failed
/// removal, a failed [`MoveStep::AddLearner`] step (its undoing): the
/// target's own steps are done, and a removal that failed for the group
/// or this node (a `Timeout` waiting for the change to commit, without
/// the target's vote) does not count against the target
/// ([`counts_against_target`](super::rebalance::counts_against_target));
/// the replica balancer removes the learner later
/// ([`leaves_its_learner`](super::rebalance::leaves_its_learner)).
pub(super) fn learner_not_removed(group: GroupId, to: &str, why: &str, source: Error) -> MoveError {
    MoveError::Step {
        group,
        step: MoveStep::AddLearner,
        applied: Applied::Maybe,
        leaves: format!(
            "the joint change was refused, nothing appended ({why}); {to}, the learner this move added, may still be one: abort_move removes it"
        ),
        source,
    }
}

/// A one-line summary of a finished move, for operators
/// ([`NodeRequest::MoveReplica`](crate::client::wire::NodeRequest::MoveReplica)).
pub fn summary(r: &MoveReport, from: &str, to: &str) -> String {
    if r.already_done {
        return format!(
            "group {}: {to} already replaces {from}; nothing to do",
            r.group
        );
    }
    let steps: Vec<String> = r
        .steps
        .iter()
        .map(|(step, took)| format!("{step:?} {} ms", took.as_millis()))
        .collect();
    format!(
        "group {}: moved {from} -> {to} in {} ms ({}){}",
        r.group,
        r.took.as_millis(),
        steps.join(", "),
        if r.leader_left {
            "; the old leader stepped down"
        } else {
            ""
        }
    )
}

/// The client error a failed move answers with: `NotLeader` keeps its hint
/// (the client follows it); a move refused before any change is `Rejected`
/// (applied: No), its message saying whether a later call may succeed (one
/// refused by the configuration: retryable; by its target's schema: once
/// the target is upgraded); a failed step after a change is `Ambiguous`
/// (applied: Maybe), its message saying what the group is left in. A
/// refusal is not a retryable client error: the sharded client tries the
/// next replica on those, which sends it back to the leader, and every
/// retry adds and removes the target's learner again (review, stop 46).
pub fn into_error(e: MoveError) -> Error {
    match e {
        MoveError::NotLeader { hint, .. } => Error::NotLeader { hint },
        e if e.applied() == Applied::No => Error::Rejected(e.to_string()),
        e => Error::Ambiguous(e.to_string()),
    }
}

/// Test-only faults and probes of moves and of the replica balancer.
#[cfg(test)]
#[path = "moves_hooks.rs"]
pub(super) mod hooks;

#[cfg(test)]
#[path = "moves_tests.rs"]
pub(super) mod moves_tests;

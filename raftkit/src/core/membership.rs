//! Configuration changes by joint consensus (Raft thesis §4.3).
//!
//! A change from `C_old` to `C_new` appends the joint configuration
//! `C_old,new` (decisions need majorities of both); once it commits, the
//! leader appends `C_new` by itself. Configurations take effect as soon as
//! they are appended, on every node, and roll back if truncated (the
//! configuration in force is always the last one in the log, see
//! [`RaftLog::last_config`](super::log::RaftLog::last_config)).
//!
//! Invariants:
//! - one change in flight at a time: a new change is refused while the last
//!   configuration entry is uncommitted;
//! - a leader proposes a change only after committing an entry of its own
//!   term (otherwise a change from an earlier leader may still be
//!   uncommitted in the log of a later one: the single-server change bug);
//! - a leader that is not a voter of `C_new` steps down once `C_new`
//!   commits (thesis §4.2.2); until then it keeps replicating, without
//!   counting itself;
//! - members a change removes keep receiving the log until the change
//!   commits, so that they learn of it and stop campaigning; a node that is
//!   not a voter of the last configuration in its own log (a learner, a
//!   removed node, a new node started from
//!   [`Restored::empty`](super::Restored::empty)) never campaigns;
//! - vote requests from nodes outside the configuration are ignored
//!   (thesis §4.2.3, see [`Raft::step`]);
//! - learners receive the log but are never counted: not for commitment,
//!   not in elections, not for CheckQuorum or ReadIndex. They do answer
//!   vote requests from members, because the candidate may already count
//!   them as voters in a configuration they have not received yet (etcd
//!   documents the case: a promotion committed by the old voters alone);
//! - a new server is promoted only once caught up by the rounds rule of
//!   thesis §4.2.1 ([`Raft::learner_caught_up`]), which the caller checks.

use std::collections::BTreeSet;

use super::message::Body;
use super::progress::Progress;
use super::raft::{ProposeError, Raft, Role};
use super::types::{Configuration, Index, NO_NODE, NodeId, Payload};

impl Raft {
    /// Proposes a change to the voters and learners in `target` (a simple,
    /// non-joint configuration). Changing voters goes through a joint
    /// configuration, left automatically once it commits. Returns the index
    /// of the first configuration entry.
    pub fn propose_config(&mut self, target: Configuration) -> Result<Index, ProposeError> {
        self.check_can_propose()?;
        // Checked first: a leader that has not committed an entry of its
        // term may see an earlier configuration entry uncommitted only
        // because it has not committed anything yet; its no-op commits that
        // entry too (§5.3), so the change waits (`NotReady`) rather than
        // being refused as one in flight.
        if !self.committed_in_term() {
            return Err(ProposeError::NotReady);
        }
        if self.conf_index > self.log.committed() || self.conf.is_joint() {
            return Err(ProposeError::ChangeInFlight(self.conf_index));
        }
        if target.is_joint() {
            return Err(ProposeError::InvalidConfiguration(
                "the target must not be joint".into(),
            ));
        }
        if target.voters.is_empty() {
            return Err(ProposeError::InvalidConfiguration(
                "at least one voter is required".into(),
            ));
        }
        if let Some(id) = target.voters.intersection(&target.learners).next() {
            return Err(ProposeError::InvalidConfiguration(format!(
                "node {id} cannot be both voter and learner"
            )));
        }
        if target.voters.contains(&NO_NODE) || target.learners.contains(&NO_NODE) {
            return Err(ProposeError::InvalidConfiguration(
                "node id 0 is reserved".into(),
            ));
        }
        let demoted: BTreeSet<_> = self
            .conf
            .voters
            .intersection(&target.learners)
            .copied()
            .collect();
        if !demoted.is_empty() {
            return Err(ProposeError::InvalidConfiguration(format!(
                "demoting voters {demoted:?} to learners directly is not supported: remove them first"
            )));
        }
        if let Err((_, why)) = super::inbound::check_config(&target) {
            return Err(ProposeError::InvalidConfiguration(why));
        }
        // Addresses of every member of either half stay known while joint.
        let mut addrs = self.conf.addrs.clone();
        addrs.extend(target.addrs);
        #[cfg(any(test, feature = "sim"))]
        let skip_joint = self.cfg.bugs.skip_joint_consensus;
        #[cfg(not(any(test, feature = "sim")))]
        let skip_joint = false;
        let next = if target.voters == self.conf.voters || skip_joint {
            // Only learners change: no joint phase is needed.
            let keep = target
                .voters
                .iter()
                .chain(&target.learners)
                .copied()
                .collect::<BTreeSet<_>>();
            addrs.retain(|id, _| keep.contains(id));
            Configuration {
                voters: target.voters,
                outgoing: BTreeSet::new(),
                learners: target.learners,
                addrs,
            }
        } else {
            let mut next = Configuration {
                voters: target.voters,
                outgoing: self.conf.voters.clone(),
                learners: target.learners,
                addrs,
            };
            // Not the address of a learner this change removes: a
            // configuration carries addresses of its members only (see
            // `inbound`).
            let Configuration {
                voters,
                outgoing,
                learners,
                addrs,
            } = &mut next;
            addrs.retain(|id, _| {
                voters.contains(id) || outgoing.contains(id) || learners.contains(id)
            });
            next
        };
        // Both halves of a joint configuration count (see `inbound`).
        if let Err((_, why)) = super::inbound::check_config(&next) {
            return Err(ProposeError::InvalidConfiguration(why));
        }
        let index = self.append_entry(Payload::Config(next));
        // Every member, those the configuration adds included (in probe
        // mode, `send_append`), is sent an AppendEntries now, as etcd raft
        // probes the replicas a configuration adds.
        self.broadcast_append();
        Ok(index)
    }

    /// The configuration in force may have changed (appended, truncated or
    /// installed from a snapshot): adopt the last one in the log.
    pub(super) fn on_config_changed(&mut self) {
        let (index, conf) = self.log.last_config();
        if index == self.conf_index && *conf == self.conf {
            return;
        }
        let previous = std::mem::replace(&mut self.conf, conf.clone());
        self.conf_index = index;
        if self.role == Role::Leader {
            let members = self.conf.members();
            // A leader only ever appends configurations, so this one is not
            // committed yet. Members it removes keep receiving the log until
            // it commits (see `on_commit_advanced`): that way they learn of
            // their removal and stop campaigning (thesis §4.2.3). Their
            // acknowledgements count for nothing: quorums use `conf` only.
            let keep: BTreeSet<_> = members.union(&previous.members()).copied().collect();
            self.progress.retain(|id, _| keep.contains(id));
            let next = self.log.last_index() + 1;
            for id in members {
                self.progress.entry(id).or_insert_with(|| {
                    let mut pr = Progress::new(next, self.cfg.max_inflight);
                    pr.recent_active = true;
                    pr.start_rounds(self.ticks);
                    pr
                });
            }
        }
    }

    /// Leader only: where member `id`'s log matches the leader's, with the
    /// leader's last index — `(matched, last_index)` — for a runtime that
    /// shows or judges how far a new server has caught up.
    pub fn catch_up_progress(&self, id: NodeId) -> Option<(Index, Index)> {
        if self.role != Role::Leader {
            return None;
        }
        let pr = self.progress.get(&id)?;
        Some((pr.matched, self.log.last_index()))
    }

    /// Leader only: whether member `id` (typically a learner about to be
    /// promoted) is caught up by the rounds rule of thesis §4.2.1: the
    /// leader replicates to it in rounds, each carrying everything the
    /// leader held when the round began, and the member is caught up once a
    /// round completes within an election timeout (and the round in progress
    /// is not already overdue, so a member that stopped answering is not).
    /// Promoting a member that is not caught up could leave the cluster
    /// unavailable while it catches up (§4.2.1).
    pub fn learner_caught_up(&self, id: NodeId) -> bool {
        self.role == Role::Leader
            && self
                .progress
                .get(&id)
                .is_some_and(|pr| pr.caught_up(self.ticks, u64::from(self.cfg.election_ticks)))
    }

    /// Called whenever the leader's commit index advances.
    pub(super) fn on_commit_advanced(&mut self) {
        self.release_waiting_reads();
        if self.role != Role::Leader || self.conf_index > self.log.committed() {
            return;
        }
        // The configuration in force is committed: stop replicating to the
        // members it removed. Until now they were sent the log (see
        // `on_config_changed`), so most of them learned of their removal;
        // one that did not (it was down or cut off) cannot disrupt the
        // cluster either, see `Raft::step`.
        // Membership is asked of the configuration itself, not of a set
        // built from it: this runs on every commit advance of a leader,
        // and the set was one allocation each time (issue 16). The
        // configuration does not change until the retain below.
        // One last AppendEntries to each member it removed, carrying the
        // commit index that covers its removal: a removed node learns that
        // its removal committed (and may delete its state) instead of
        // waiting forever on an uncommitted configuration.
        let removed: Vec<NodeId> = self
            .progress
            .keys()
            .filter(|id| **id != self.id && !self.conf.contains(**id))
            .copied()
            .collect();
        for id in removed {
            // The entries it lacks, as far as its window allows...
            self.send_append_all(id, false);
            // ...then an empty AppendEntries after everything sent so far
            // (its flow control notwithstanding: it is the last message):
            // it arrives after them and its commit covers the removal.
            let Some(prev_index) = self.progress.get(&id).map(|p| p.next - 1) else {
                continue;
            };
            if let Some(prev_term) = self.log.term(prev_index) {
                let commit = self.log.committed();
                self.send(
                    id,
                    Body::AppendEntries {
                        prev_index,
                        prev_term,
                        entries: Vec::new(),
                        commit,
                    },
                );
            }
        }
        let conf = &self.conf;
        self.progress.retain(|id, _| conf.contains(*id));
        if self.conf.is_joint() {
            // Thesis §4.3: once C_old,new commits, the leader appends C_new.
            let members: BTreeSet<_> = self
                .conf
                .voters
                .union(&self.conf.learners)
                .copied()
                .collect();
            let mut addrs = self.conf.addrs.clone();
            addrs.retain(|id, _| members.contains(id));
            let next = Configuration {
                voters: self.conf.voters.clone(),
                outgoing: BTreeSet::new(),
                learners: self.conf.learners.clone(),
                addrs,
            };
            self.append_entry(Payload::Config(next));
            self.broadcast_append();
        } else if !self.conf.is_voter(self.id) {
            #[cfg(any(test, feature = "sim"))]
            if self.cfg.bugs.removed_leader_keeps_leading {
                return;
            }
            // Thesis §4.2.2: a leader removed by C_new steps down once C_new
            // commits.
            self.become_follower(self.term, NO_NODE);
        }
    }
}

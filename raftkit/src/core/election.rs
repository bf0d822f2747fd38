//! Leader election (Raft §5.2, §5.4.1), PreVote (thesis §9.6) and
//! CheckQuorum (thesis §6.2).
//!
//! Invariants:
//! - a node grants at most one vote per term, and only to a candidate whose
//!   log is at least as up to date as its own (§5.4.1);
//! - a PreVote probe changes neither the term nor the vote of anybody, so a
//!   node that cannot win (partitioned, behind, removed) cannot raise the
//!   cluster's term;
//! - a leader that has not heard from a quorum within an election timeout
//!   steps down, so a partitioned leader stops serving reads: it checks
//!   every `election_ticks` ticks of its leadership, a clock nothing else
//!   restarts while it leads (not a leadership transfer, which has its own:
//!   see `transfer`), so one cut off from every peer steps down within two
//!   election timeouts.

use super::message::{Body, Message};
use super::quorum::{self, VoteResult};
use super::raft::{Raft, Role};
use super::types::NO_NODE;

impl Raft {
    /// A follower's or candidate's tick: campaign once the randomized
    /// election timeout has passed without hearing from a leader.
    pub(super) fn tick_election(&mut self) {
        self.election_elapsed += 1;
        if self.promotable() && !self.halted && self.election_elapsed >= self.randomized_timeout {
            self.election_elapsed = 0;
            self.campaign(false);
        }
    }

    /// A leader's tick: heartbeats, CheckQuorum, and abandoning a
    /// leadership transfer that took too long.
    ///
    /// CheckQuorum (thesis §6.2) runs every election timeout of the
    /// leadership on `election_elapsed`, which nothing but this check
    /// restarts while the node leads; a transfer is timed on its own
    /// `transfer_elapsed` (thesis §3.10).
    pub(super) fn tick_leader(&mut self) {
        self.heartbeat_elapsed += 1;
        self.election_elapsed += 1;
        if self.election_elapsed >= self.cfg.election_ticks {
            self.election_elapsed = 0;
            if self.cfg.check_quorum && !self.quorum_recently_active() {
                self.become_follower(self.term, NO_NODE);
                return;
            }
        }
        if self.transfer_target.is_some() {
            // Thesis §3.10: a transfer that does not finish within an
            // election timeout is abandoned and the leader resumes.
            self.transfer_elapsed += 1;
            if self.transfer_elapsed >= self.cfg.election_ticks {
                self.transfer_target = None;
                self.transfer_elapsed = 0;
            }
        }
        if self.halted && self.transfer_target.is_none() {
            // A halted leader leads only while it hands over (see
            // `Raft::set_halted`): once its transfer is abandoned, it steps
            // down.
            self.become_follower(self.term, NO_NODE);
            return;
        }
        if self.heartbeat_elapsed >= self.cfg.heartbeat_ticks {
            self.heartbeat_elapsed = 0;
            // Each heartbeat starts a round: it renews the lease (see `lease`).
            self.heartbeat_round();
        }
    }

    /// Whether a quorum was heard from since the last check; clears the
    /// marks for the next round.
    fn quorum_recently_active(&mut self) -> bool {
        let me = self.id;
        let active = quorum::is_quorum(&self.conf, |id| {
            id == me || self.progress.get(&id).is_some_and(|p| p.recent_active)
        });
        for (&id, p) in self.progress.iter_mut() {
            p.recent_active = id == me;
        }
        active
    }

    /// Starts an election: a PreVote round first when enabled, unless this
    /// is a leadership transfer (thesis §3.10 skips it).
    pub(super) fn campaign(&mut self, transfer: bool) {
        // At the last representable term there is no next term to campaign
        // in (only a hostile peer can push a node there, and only with 2^40
        // accepted messages: see `inbound`, MAX_TERM_JUMP).
        // Likewise at the last usable index there is no room for the new
        // leader's no-op (thesis §6.4): such a node never leads.
        if !self.promotable()
            || self.halted
            || self.term == super::types::Term::MAX
            || self.log.last_index() >= super::inbound::MAX_INDEX
        {
            return;
        }
        // Thesis §3.10: the transfer vote names the leader that ordered
        // it, the leader of the term being left (`inbound` admits a
        // TimeoutNow only from `term_leader`, at this term), so that a
        // voter in a lease grants the override only for its own leader
        // (see `transfer`). Read before the new term forgets it.
        let ordered_by = transfer.then_some(self.term_leader);
        if self.cfg.pre_vote && !transfer {
            self.become_pre_candidate();
            self.request_votes(true, None);
        } else {
            self.become_candidate(transfer);
            self.request_votes(false, ordered_by);
        }
    }

    /// Asks every other voter for its vote (or pre-vote): with
    /// `transfer`, a [`Body::TransferVote`] naming the leader that ordered
    /// the campaign.
    fn request_votes(&mut self, pre_vote: bool, transfer: Option<super::types::NodeId>) {
        self.votes.insert(self.id, true);
        let (last_index, last_term) = (self.log.last_index(), self.log.last_term());
        let voters: Vec<_> = self
            .conf
            .members()
            .into_iter()
            .filter(|&id| id != self.id)
            .collect();
        for id in voters {
            if !self.conf.is_voter(id) {
                continue;
            }
            let body = match transfer {
                Some(leader) => Body::TransferVote {
                    last_index,
                    last_term,
                    leader,
                },
                None => Body::RequestVote {
                    last_index,
                    last_term,
                    pre_vote,
                    transfer: false,
                },
            };
            self.send(id, body);
        }
        self.tally_votes();
    }

    /// Raft §5.2: a voter grants its vote to the first candidate of a term
    /// whose log is at least as up to date as its own (§5.4.1).
    /// Both forms of a transfer vote ([`Body::TransferVote`], and the
    /// earlier [`Body::RequestVote`] with `transfer`) are judged here as
    /// any vote request: the lease they may override was looked at before
    /// (`Raft::step_admitted`).
    pub(super) fn handle_request_vote(&mut self, m: Message) {
        let (last_index, last_term, pre_vote, transfer) = match m.body {
            Body::RequestVote {
                last_index,
                last_term,
                pre_vote,
                transfer,
            } => (last_index, last_term, pre_vote, transfer),
            Body::TransferVote {
                last_index,
                last_term,
                ..
            } => (last_index, last_term, false, true),
            _ => return,
        };
        let can_vote = self.vote == m.from
            || (self.vote == NO_NODE && self.leader == NO_NODE)
            || (pre_vote && m.term > self.term);
        // A replica that left the group and joined again: its log proves
        // nothing until it holds a configuration newer than its removal,
        // and an earlier replica with its id may have voted in the terms up
        // to the removal's (see `Config::membership_fence`).
        let vote_term = if pre_vote { m.term } else { self.term };
        let fenced = !self.past_fence()
            || self
                .cfg
                .membership_fence
                .is_some_and(|(_, term)| vote_term <= term);
        let can_vote = can_vote && !fenced;
        let up_to_date = self.log.is_up_to_date(last_index, last_term);
        #[cfg(any(test, feature = "sim"))]
        let up_to_date = up_to_date || (transfer && self.cfg.bugs.transfer_skips_log_check);
        #[cfg(not(any(test, feature = "sim")))]
        let _ = transfer;
        if can_vote && up_to_date {
            let term = if pre_vote { m.term } else { self.term };
            // Figure 2: the vote is persisted before the answer leaves. Record
            // it *before* queuing the answer, so that `send` sees it is not
            // durable yet and holds the answer back, also when the request
            // did not raise the term.
            if !pre_vote {
                self.election_elapsed = 0;
                self.vote = m.from;
                // An election of this term is under way and this node
                // takes part: the vote window against non-voters starts
                // (`inbound`, review s58 finding 1).
                self.voted_at = Some(self.ticks);
            }
            self.send_with_term(
                m.from,
                term,
                Body::RequestVoteResponse {
                    granted: true,
                    pre_vote,
                },
            );
        } else {
            let term = self.term;
            self.send_with_term(
                m.from,
                term,
                Body::RequestVoteResponse {
                    granted: false,
                    pre_vote,
                },
            );
        }
    }

    pub(super) fn handle_vote_response(
        &mut self,
        from: super::types::NodeId,
        granted: bool,
        pre_vote: bool,
    ) {
        let expected = match self.role {
            Role::PreCandidate => pre_vote,
            Role::Candidate => !pre_vote,
            _ => false,
        };
        if !expected {
            return;
        }
        self.votes.entry(from).or_insert(granted);
        self.tally_votes();
    }

    fn tally_votes(&mut self) {
        let result = quorum::vote_result(&self.conf, |id| self.votes.get(&id).copied());
        #[cfg(any(test, feature = "sim"))]
        let result = if self.cfg.bugs.joint_election_on_new_voters {
            quorum::majority_vote(&self.conf.voters, |id| self.votes.get(&id).copied())
        } else {
            result
        };
        match result {
            VoteResult::Won if self.role == Role::PreCandidate => {
                self.become_candidate(true);
                self.request_votes(false, None);
            }
            VoteResult::Won => self.become_leader(),
            VoteResult::Lost => self.become_follower(self.term, NO_NODE),
            VoteResult::Pending => {}
        }
    }
}

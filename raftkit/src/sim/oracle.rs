//! The oracle: sees every node's log, commit index, applied entries, state
//! machine and disk, and checks Raft's safety properties (Raft Figure 3)
//! after every step. Every check is incremental, so that it can run after
//! every step and stay cheap.
//!
//! - **Election safety**: at most one leader per term.
//! - **Votes** (Raft §5.2): a server grants at most one vote per term, and
//!   a candidate becomes leader of term T only with grants *sent in term
//!   T* by a quorum of its configuration (both halves of a joint one) —
//!   judged from the grants the oracle saw leave the voters, so a leader
//!   made by a grant of another term, or by votes a quorum did not give,
//!   shows at once. A grant goes only to a candidate whose log, as its
//!   request states it, is at least as up to date as the voter's when the
//!   request arrived (the election restriction, §5.4.1).
//! - **Leader append-only**: a leader never rewrites its log in its term.
//! - **Log matching**: if two logs hold an entry with the same index and
//!   term, the entries are identical and so are all entries before them.
//!   Checked incrementally: every (index, term) ever appended anywhere maps
//!   to one payload and one predecessor term; by induction on the index this
//!   gives equal prefixes.
//! - **Agreement on the committed log**: every node's log agrees with the
//!   committed prefix up to its commit index, over the whole log (each node
//!   has a cursor up to which it was checked; a rewrite of its log below
//!   the cursor, a restart or a snapshot moves it back).
//! - **Leader completeness** (Raft §5.4): a leader's log holds every entry
//!   committed in an earlier term: checked in full at election, and after
//!   every step for the entries whose commitment the step revealed (against
//!   every node that leads; see [`Oracle::check_leaders`]).
//! - **State machine safety**: no two nodes apply different entries at one
//!   index, and their state machines agree (a digest of the whole state) at
//!   every index both applied; a snapshot restores exactly the state that
//!   the replicas had at its index.
//! - **Applied exactly once**: each node applies the indexes in order, each
//!   once, across restarts from snapshots and snapshot installs (a node's
//!   state machine restarts at its snapshot's index and continues from the
//!   next; an installed snapshot never moves it backwards).
//! - **Commit monotonic** (Raft §5.3, §5.4): a node's commit index never
//!   goes down while it runs (a restart may bring back a lower one: the
//!   commit index is not persisted at every advance, Figure 2 calls it
//!   volatile), and a leader's log holds every entry first seen committed in
//!   its term or before — checked at every step, not only at its election,
//!   and including the entries of its own term, which leader completeness
//!   leaves out (a leader losing an entry it committed itself shows here).
//!   Entries first seen committed in a later term are not asked of a stale
//!   leader. Compacted entries count as held (a snapshot covers them).
//! - **Commit within log** (Raft Figure 2, AppendEntries rule 5): a node's
//!   commit index is at most its own last index (a follower never takes a
//!   leader's commit index past the entries it holds).
//! - **Membership** (thesis §4.2): a node that is not a voter of the
//!   configuration in its own log (a learner, a removed node that learned
//!   of its removal, a new node not yet replicated to) never campaigns, and
//!   a leader that is not a voter of its committed C_new has stepped down.
//! - **Durability of commitment**: a committed entry is on the disks of a
//!   quorum of the latest committed configuration — checked when an entry
//!   is first seen committed, whenever a disk loses an entry, when a
//!   configuration commits, at crashes and at the end. That configuration
//!   committed on a quorum of itself, so a quorum of it holds every entry
//!   up to it. An entry after it may have committed under a later,
//!   uncommitted configuration: when the latest committed one is joint,
//!   C_new is in force as soon as the leader appends it (thesis §4.3), and
//!   it alone commits entries — so entries after a joint configuration are
//!   checked against its incoming voters only, a majority of whom every
//!   later leader needs.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::ops::RangeInclusive;

use crate::core::{Configuration, Entry, Index, NodeId, Payload, Raft, Role, Term};

/// A broken safety property.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// Which property.
    pub property: &'static str,
    /// What was seen.
    pub detail: String,
}

fn payload_hash(e: &Entry) -> u64 {
    let mut h = DefaultHasher::new();
    e.payload.hash(&mut h);
    h.finish()
}

/// Where a log ends: (last index, last term).
type LogEnd = (Index, Term);

/// What the oracle tracks of one node.
#[derive(Debug, Default)]
struct NodeView {
    /// The index its state machine has applied through, since it last
    /// started from (or installed) a snapshot.
    sm_index: Index,
    /// Its log agrees with the committed prefix up to here.
    agreed: Index,
    /// While it leads: its term and last index.
    leading: Option<(Term, Index)>,
    /// The highest commit index seen on it since it last (re)started.
    commit: Index,
}

/// What one observation revealed.
#[derive(Debug, Default)]
pub struct Observed {
    /// Indexes first seen committed.
    pub newly_committed: Option<RangeInclusive<Index>>,
    /// A configuration entry was among them.
    pub config_committed: bool,
}

/// What the oracle has seen so far.
#[derive(Debug, Default)]
pub struct Oracle {
    leaders: HashMap<Term, NodeId>,
    appended: HashMap<(Index, Term), (u64, Term)>,
    /// By index - 1: (entry term, payload hash, term in which it was first
    /// seen committed).
    committed: Vec<(Term, u64, Term)>,
    /// By index - 1: (entry term, payload hash, state digest after it).
    applied: Vec<(Term, u64, u64)>,
    /// Committed configuration entries, in log order.
    configs: Vec<(Index, Configuration)>,
    nodes: HashMap<NodeId, NodeView>,
    /// Votes granted: (term, voter) -> candidate.
    votes: HashMap<(Term, NodeId), NodeId>,
    /// Vote requests delivered: (term, voter, candidate) -> (the
    /// candidate's last (index, term) as stated, the voter's then).
    vote_requests: HashMap<(Term, NodeId, NodeId), (LogEnd, LogEnd)>,
}

impl Oracle {
    /// The committed prefix known so far: (term, payload hash, term first
    /// seen committed) by index - 1.
    pub fn committed(&self) -> &[(Term, u64, Term)] {
        &self.committed
    }

    /// The configuration entries committed so far, with their indexes.
    pub fn committed_configs(&self) -> &[(Index, Configuration)] {
        &self.configs
    }

    /// The latest committed configuration, once one is.
    pub fn committed_config(&self) -> Option<&Configuration> {
        self.configs.last().map(|(_, c)| c)
    }

    /// Checks a node after it handled an input; `new_entries` are the
    /// entries its Ready hands to storage.
    pub fn observe(
        &mut self,
        raft: &Raft,
        new_entries: &[Entry],
        became_leader: bool,
    ) -> Result<Observed, Violation> {
        let log = raft.log();
        let id = raft.id();
        // Election safety.
        if raft.role() == Role::Leader {
            let first = *self.leaders.entry(raft.term()).or_insert(id);
            if first != id {
                return Err(Violation {
                    property: "election safety",
                    detail: format!(
                        "nodes {first} and {id} both leaders of term {}",
                        raft.term()
                    ),
                });
            }
        }
        // Membership: only voters of their own configuration campaign, and a
        // leader removed by a committed C_new steps down at once.
        let conf = raft.config();
        if !conf.is_voter(id) {
            let (conf_index, _) = log.last_config();
            let removed_leader =
                raft.role() == Role::Leader && conf_index <= log.committed() && !conf.is_joint();
            if matches!(raft.role(), Role::Candidate | Role::PreCandidate) || removed_leader {
                return Err(Violation {
                    property: "membership",
                    detail: format!(
                        "node {id} is {:?} in term {} but not a voter of its configuration {conf:?} (at {conf_index}, commit {})",
                        raft.role(),
                        raft.term(),
                        log.committed()
                    ),
                });
            }
        }
        // Commit monotonic: the node's commit index never goes down while it
        // runs.
        let view = self.nodes.entry(id).or_default();
        if log.committed() < view.commit {
            return Err(Violation {
                property: "commit monotonic",
                detail: format!(
                    "node {id}'s commit index went down from {} to {} (term {}, no restart)",
                    view.commit,
                    log.committed(),
                    raft.term()
                ),
            });
        }
        view.commit = log.committed();
        // Commit within log: a node's commit index never runs past its own
        // last entry (a follower caps the leader's at its last new entry,
        // Raft Figure 2, AppendEntries rule 5; a leader commits only what it
        // holds). The agreement check skips indexes a log lacks, so it
        // cannot see this.
        if log.committed() > log.last_index() {
            return Err(Violation {
                property: "commit within log",
                detail: format!(
                    "node {id}'s commit index {} is past its last entry {} (term {})",
                    log.committed(),
                    log.last_index(),
                    raft.term()
                ),
            });
        }
        // Leader append-only (Figure 3): within its term a leader only
        // appends.
        let first_new = new_entries.first().map(|e| e.index);
        if raft.role() == Role::Leader {
            if let (Some((term, last)), Some(first_new)) = (view.leading, first_new)
                && term == raft.term()
                && first_new <= last
            {
                return Err(Violation {
                    property: "leader append-only",
                    detail: format!(
                        "leader {id} of term {term} rewrote its log from {first_new} (it ended at {last})"
                    ),
                });
            }
            view.leading = Some((raft.term(), log.last_index()));
        } else {
            view.leading = None;
        }
        if let Some(first_new) = first_new {
            view.agreed = view.agreed.min(first_new - 1);
        }
        if became_leader {
            // Raft §5.2: elected by a quorum's votes of its own term.
            let term = raft.term();
            let elected = crate::core::quorum::is_quorum(conf, |voter| {
                voter == id || self.votes.get(&(term, voter)) == Some(&id)
            });
            if !elected {
                let granted: Vec<NodeId> = conf
                    .voters
                    .union(&conf.outgoing)
                    .copied()
                    .filter(|&v| self.votes.get(&(term, v)) == Some(&id))
                    .collect();
                return Err(Violation {
                    property: "election",
                    detail: format!(
                        "node {id} leads term {term} with grants of that term from only {granted:?} (and itself) in {conf:?}"
                    ),
                });
            }
            // Leader completeness (Raft §5.4): a leader of term T holds every
            // entry committed in a term before T.
            self.check_leader(raft, 1..=self.committed.len() as Index)?;
        }
        self.check_leader_holds_committed(raft)?;
        // Log matching, incrementally over the entries just appended.
        for e in new_entries {
            let prev_term = log.term(e.index - 1).unwrap_or(0);
            let key = (e.index, e.term);
            let value = (payload_hash(e), prev_term);
            let seen = *self.appended.entry(key).or_insert(value);
            if seen != value {
                return Err(Violation {
                    property: "log matching",
                    detail: format!(
                        "node {id} holds entry {}@{} with (payload, previous term) {value:?}, another node {seen:?}",
                        e.index, e.term
                    ),
                });
            }
        }
        // Commitment: what this node considers committed extends the
        // committed prefix.
        let mut observed = Observed::default();
        let commit = log.committed();
        let known = self.committed.len() as Index;
        if commit > known && log.first_index() <= known + 1 {
            for index in known + 1..=commit {
                match log.entry(index) {
                    Some(e) => {
                        self.committed.push((e.term, payload_hash(e), raft.term()));
                        if let Payload::Config(c) = &e.payload {
                            self.configs.push((index, c.clone()));
                            observed.config_committed = true;
                        }
                    }
                    None => break,
                }
            }
            let now = self.committed.len() as Index;
            if now > known {
                observed.newly_committed = Some(known + 1..=now);
            }
        }
        // Agreement: the node's log up to its commit index is the committed
        // prefix, checked from where the last check of this node ended.
        let view = self.nodes.entry(id).or_default();
        let from = (view.agreed + 1).max(log.first_index());
        let to = commit.min(self.committed.len() as Index);
        for index in from..=to {
            let Some(e) = log.entry(index) else { continue };
            let (term, hash, _) = self.committed[(index - 1) as usize];
            if (term, hash) != (e.term, payload_hash(e)) {
                return Err(Violation {
                    property: "log matching",
                    detail: format!(
                        "node {id} has {}@{} committed, but the committed entry at {index} is of term {term}",
                        e.index, e.term
                    ),
                });
            }
        }
        view.agreed = view.agreed.max(to);
        Ok(observed)
    }

    /// A vote request of `term` reached `voter`, whose log then ended at
    /// `voter_last`; the candidate's ends at `candidate_last`, it says.
    pub fn on_vote_request(
        &mut self,
        voter: NodeId,
        candidate: NodeId,
        term: Term,
        candidate_last: (Index, Term),
        voter_last: (Index, Term),
    ) {
        self.vote_requests
            .entry((term, voter, candidate))
            .or_insert((candidate_last, voter_last));
    }

    /// A vote left `voter` for `candidate` in `term`: at most one per term,
    /// and only for a candidate at least as up to date (§5.4.1).
    pub fn on_vote(
        &mut self,
        voter: NodeId,
        term: Term,
        candidate: NodeId,
    ) -> Result<(), Violation> {
        if let Some(&((ci, ct), (vi, vt))) = self.vote_requests.get(&(term, voter, candidate))
            && (ct, ci) < (vt, vi)
        {
            return Err(Violation {
                property: "election restriction",
                detail: format!(
                    "node {voter} (log ending {vi}@{vt}) granted its vote of term {term} to {candidate}, whose log ends {ci}@{ct}"
                ),
            });
        }
        let first = *self.votes.entry((term, voter)).or_insert(candidate);
        if first != candidate {
            return Err(Violation {
                property: "one vote per term",
                detail: format!(
                    "node {voter} granted its vote of term {term} to {first} and to {candidate}"
                ),
            });
        }
        Ok(())
    }

    /// Leader completeness for `raft` if it leads: it holds every entry of
    /// `range` that was committed in a term before its own.
    pub fn check_leader(&self, raft: &Raft, range: RangeInclusive<Index>) -> Result<(), Violation> {
        if raft.role() != Role::Leader {
            return Ok(());
        }
        let log = raft.log();
        for index in range {
            let Some(&(term, hash, commit_term)) = self.committed.get((index - 1) as usize) else {
                break;
            };
            if commit_term >= raft.term() || index < log.first_index() {
                continue;
            }
            let held = log.entry(index).map(|e| (e.term, payload_hash(e)));
            if held != Some((term, hash)) {
                return Err(Violation {
                    property: "leader completeness",
                    detail: format!(
                        "leader {} of term {} holds {held:?} at index {index}, committed in term {commit_term} with term {term}",
                        raft.id(),
                        raft.term()
                    ),
                });
            }
        }
        Ok(())
    }

    /// Commit monotonic, for `raft` if it leads: its log reaches past every
    /// entry first seen committed in its term or an earlier one. Only the
    /// committed entries past its last index are looked at (those up to it
    /// are the agreement check's and leader completeness's), so the check
    /// costs nothing while the leader's log is as long as the committed
    /// prefix.
    fn check_leader_holds_committed(&self, raft: &Raft) -> Result<(), Violation> {
        if raft.role() != Role::Leader {
            return Ok(());
        }
        let last = raft.log().last_index();
        let beyond = self
            .committed
            .get(usize::try_from(last).unwrap_or(usize::MAX)..);
        let missing = beyond
            .into_iter()
            .flatten()
            .enumerate()
            .find(|(_, e)| e.2 <= raft.term());
        match missing {
            None => Ok(()),
            Some((offset, &(term, _, commit_term))) => Err(Violation {
                property: "commit monotonic",
                detail: format!(
                    "leader {} of term {} lacks committed entry {}@{term} (first seen committed in term {commit_term}): its log ends at {last}",
                    raft.id(),
                    raft.term(),
                    last + 1 + offset as Index
                ),
            }),
        }
    }

    /// Leader completeness after a step revealed the commitment of `range`:
    /// every node that leads holds those committed in earlier terms.
    pub fn check_leaders<'a>(
        &self,
        rafts: impl Iterator<Item = &'a Raft>,
        range: &RangeInclusive<Index>,
    ) -> Result<(), Violation> {
        for raft in rafts {
            self.check_leader(raft, range.clone())?;
        }
        Ok(())
    }

    /// Checks an entry a node applied; `digest` is its state machine's
    /// digest after applying it.
    pub fn on_apply(&mut self, node: NodeId, e: &Entry, digest: u64) -> Result<(), Violation> {
        let view = self.nodes.entry(node).or_default();
        if e.index != view.sm_index + 1 {
            return Err(Violation {
                property: "applied exactly once",
                detail: format!(
                    "node {node} applies index {} after {}",
                    e.index, view.sm_index
                ),
            });
        }
        view.sm_index = e.index;
        let value = (e.term, payload_hash(e), digest);
        let at = (e.index - 1) as usize;
        if at < self.applied.len() {
            let seen = self.applied[at];
            if (seen.0, seen.1) != (value.0, value.1) {
                return Err(Violation {
                    property: "state machine safety",
                    detail: format!(
                        "node {node} applies {}@{} but another node applied an entry of term {} at that index",
                        e.index, e.term, seen.0
                    ),
                });
            }
            if seen.2 != digest {
                return Err(Violation {
                    property: "state machine safety",
                    detail: format!(
                        "node {node}'s state after applying {} differs from another replica's",
                        e.index
                    ),
                });
            }
        } else if at == self.applied.len() {
            self.applied.push(value);
        } else {
            return Err(Violation {
                property: "state machine safety",
                detail: format!(
                    "node {node} applies index {} before any node applied {}",
                    e.index,
                    self.applied.len() + 1
                ),
            });
        }
        Ok(())
    }

    /// A node's state machine was restored from a snapshot at `index` with
    /// state `digest`: at a (re)start (`installed` false) or from a
    /// snapshot the leader sent (`installed` true).
    pub fn on_restore(
        &mut self,
        node: NodeId,
        index: Index,
        digest: u64,
        installed: bool,
    ) -> Result<(), Violation> {
        let view = self.nodes.entry(node).or_default();
        if installed && index <= view.sm_index {
            return Err(Violation {
                property: "applied exactly once",
                detail: format!(
                    "node {node} installs a snapshot at {index} after applying up to {}: entries would apply twice",
                    view.sm_index
                ),
            });
        }
        view.sm_index = index;
        if !installed {
            view.agreed = 0;
            view.leading = None;
            // A restart may bring back a lower commit index (see the module
            // documentation).
            view.commit = 0;
        }
        if index == 0 {
            return Ok(());
        }
        match self.applied.get((index - 1) as usize) {
            Some(&(_, _, seen)) if seen == digest => Ok(()),
            Some(_) => Err(Violation {
                property: "state machine safety",
                detail: format!(
                    "node {node} restored a snapshot at {index} whose state differs from the replicas' at that index"
                ),
            }),
            None => Err(Violation {
                property: "state machine safety",
                detail: format!(
                    "node {node} restored a snapshot at {index}, beyond what any node applied ({})",
                    self.applied.len()
                ),
            }),
        }
    }

    /// Checks that every committed entry in `range` is on the disks of a
    /// quorum of the latest committed configuration (`initial` until one is
    /// committed); entries after a committed joint configuration, on a
    /// majority of its incoming voters (see the module documentation).
    /// `holds(node, index, term)` says whether a node's disk holds an entry;
    /// `nodes` are every node's ids (to name the holders of a lost entry).
    pub fn check_durable(
        &self,
        range: RangeInclusive<Index>,
        holds: impl Fn(NodeId, Index, Term) -> bool,
        nodes: &[NodeId],
        initial: &Configuration,
    ) -> Result<(), Violation> {
        let (conf_index, full) = match self.configs.last() {
            Some((index, conf)) => (*index, conf),
            None => (0, initial),
        };
        let incoming = Configuration::new(full.voters.iter().copied());
        let last = self.committed.len() as Index;
        let (lo, hi) = ((*range.start()).max(1), (*range.end()).min(last));
        for index in lo..=hi {
            let (term, _, _) = self.committed[(index - 1) as usize];
            let conf = if index <= conf_index { full } else { &incoming };
            let held = crate::core::quorum::is_quorum(conf, |id| holds(id, index, term));
            if !held {
                let holders: Vec<NodeId> = nodes
                    .iter()
                    .copied()
                    .filter(|&id| holds(id, index, term))
                    .collect();
                return Err(Violation {
                    property: "durability",
                    detail: format!(
                        "committed entry {index}@{term} is not on a quorum of disks of {conf:?}: only on {holders:?}"
                    ),
                });
            }
        }
        Ok(())
    }
}

//! The oracle: sees every node's log, commit index and applied entries, and
//! checks Raft's safety properties (Raft Figure 3) after every step.
//!
//! - **Election safety**: at most one leader per term.
//! - **Log matching**: if two logs hold an entry with the same index and
//!   term, the entries are identical and so are all entries before them.
//!   Checked incrementally: every (index, term) ever appended anywhere maps
//!   to one payload and one predecessor term; by induction on the index this
//!   gives equal prefixes.
//! - **Leader completeness**: a leader's log holds every entry committed in
//!   earlier terms.
//! - **State machine safety**: no two nodes apply different entries at one
//!   index.
//! - **Membership** (thesis §4.2): a node that is not a voter of the
//!   configuration in its own log (a learner, a removed node that learned
//!   of its removal, a new node not yet replicated to) never campaigns, and
//!   a leader that is not a voter of its committed C_new has stepped down.
//! - **Durability of commitment**: a committed entry is on the disks of a
//!   quorum of the latest committed configuration (checked at crashes and
//!   at the end). That configuration committed on a quorum of itself, so
//!   a quorum of it holds every entry up to it. An entry after it may have
//!   committed under a later, uncommitted configuration: when the latest
//!   committed one is joint, C_new is in force as soon as the leader
//!   appends it (thesis §4.3), and it alone commits entries — so entries
//!   after a joint configuration are checked against its incoming voters
//!   only, a majority of whom every later leader needs.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};

use crate::core::{Configuration, Entry, Index, NodeId, Payload, Raft, Role, Term};

use super::disk::Disk;

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

/// What the oracle has seen so far.
#[derive(Debug, Default)]
pub struct Oracle {
    leaders: HashMap<Term, NodeId>,
    appended: HashMap<(Index, Term), (u64, Term)>,
    /// By index - 1: (entry term, payload hash, term in which it was first
    /// seen committed).
    committed: Vec<(Term, u64, Term)>,
    applied: Vec<(Term, u64)>,
    /// Committed configuration entries, in log order.
    configs: Vec<(Index, Configuration)>,
}

impl Oracle {
    /// The committed prefix known so far: (term, payload hash) by index - 1.
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

    /// Checks a node after it handled an input.
    pub fn observe(
        &mut self,
        raft: &Raft,
        new_entries: &[Entry],
        became_leader: bool,
    ) -> Result<(), Violation> {
        let log = raft.log();
        // Election safety.
        if raft.role() == Role::Leader {
            let first = *self.leaders.entry(raft.term()).or_insert(raft.id());
            if first != raft.id() {
                return Err(Violation {
                    property: "election safety",
                    detail: format!(
                        "nodes {first} and {} both leaders of term {}",
                        raft.id(),
                        raft.term()
                    ),
                });
            }
        }
        // Membership: only voters of their own configuration campaign, and a
        // leader removed by a committed C_new steps down at once.
        let conf = raft.config();
        if !conf.is_voter(raft.id()) {
            let (conf_index, _) = log.last_config();
            let removed_leader =
                raft.role() == Role::Leader && conf_index <= log.committed() && !conf.is_joint();
            if matches!(raft.role(), Role::Candidate | Role::PreCandidate) || removed_leader {
                return Err(Violation {
                    property: "membership",
                    detail: format!(
                        "node {} is {:?} in term {} but not a voter of its configuration {conf:?} (at {conf_index}, commit {})",
                        raft.id(),
                        raft.role(),
                        raft.term(),
                        log.committed()
                    ),
                });
            }
        }
        if became_leader {
            // Leader completeness (Raft §5.4): a leader of term T holds every
            // entry committed in a term before T.
            for (i, &(term, hash, commit_term)) in self.committed.iter().enumerate() {
                let index = i as Index + 1;
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
        }
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
                        "node {} holds entry {}@{} with (payload, previous term) {value:?}, another node {seen:?}",
                        raft.id(),
                        e.index,
                        e.term
                    ),
                });
            }
        }
        // Commitment: what this node considers committed extends (and must
        // agree with) the committed prefix.
        let commit = log.committed();
        let known = self.committed.len() as Index;
        if commit > known && log.first_index() <= known + 1 {
            for index in known + 1..=commit {
                match log.entry(index) {
                    Some(e) => {
                        self.committed.push((e.term, payload_hash(e), raft.term()));
                        if let Payload::Config(c) = &e.payload {
                            self.configs.push((index, c.clone()));
                        }
                    }
                    None => break,
                }
            }
        }
        let check_from = log.first_index().max(1);
        let check_to = commit.min(self.committed.len() as Index);
        // Check only the tail region to keep this cheap.
        for index in check_from.max(check_to.saturating_sub(64))..=check_to {
            let Some(e) = log.entry(index) else { continue };
            let (term, hash, _) = self.committed[(index - 1) as usize];
            if (term, hash) != (e.term, payload_hash(e)) {
                return Err(Violation {
                    property: "log matching",
                    detail: format!(
                        "node {} has {}@{} committed, but the committed entry at {index} differs",
                        raft.id(),
                        e.index,
                        e.term
                    ),
                });
            }
        }
        Ok(())
    }

    /// Checks an entry a node applies.
    pub fn on_apply(&mut self, node: NodeId, e: &Entry) -> Result<(), Violation> {
        let value = (e.term, payload_hash(e));
        let at = (e.index - 1) as usize;
        if at < self.applied.len() {
            if self.applied[at] != value {
                return Err(Violation {
                    property: "state machine safety",
                    detail: format!(
                        "node {node} applies {}@{} but another node applied {:?} at that index",
                        e.index, e.term, self.applied[at]
                    ),
                });
            }
        } else if at == self.applied.len() {
            self.applied.push(value);
        } else {
            return Err(Violation {
                property: "state machine safety",
                detail: format!("node {node} applies index {} out of order", e.index),
            });
        }
        Ok(())
    }

    /// Checks that every committed entry is on the disks of a quorum of the
    /// latest committed configuration (`initial` until one is committed);
    /// entries after a committed joint configuration, on a majority of its
    /// incoming voters (see the module documentation).
    pub fn check_durable(
        &self,
        disks: &HashMap<NodeId, &Disk>,
        initial: &Configuration,
    ) -> Result<(), Violation> {
        let (conf_index, full) = match self.configs.last() {
            Some((index, conf)) => (*index, conf),
            None => (0, initial),
        };
        let incoming = Configuration::new(full.voters.iter().copied());
        for (i, &(term, _, _)) in self.committed.iter().enumerate() {
            let index = i as Index + 1;
            let conf = if index <= conf_index { full } else { &incoming };
            let held = crate::core::quorum::is_quorum(conf, |id| {
                disks.get(&id).is_some_and(|d| d.holds(index, term))
            });
            if !held {
                let mut holders: Vec<NodeId> = disks
                    .iter()
                    .filter(|(_, d)| d.holds(index, term))
                    .map(|(&id, _)| id)
                    .collect();
                holders.sort_unstable();
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

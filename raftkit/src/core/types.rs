//! Plain data shared by every layer: identifiers, log entries, hard state.
//!
//! These types flow outward from the core to storage, transport and the
//! runtime. They carry no behaviour beyond small accessors, and every one of
//! them is `serde`-serializable so that storage and transport encode them with
//! postcard without wrappers.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// The identity of a node in a cluster. Zero is reserved for "nobody".
pub type NodeId = u64;
/// A Raft term (Raft §5.1). Terms start at zero and only grow.
pub type Term = u64;
/// A position in the replicated log. The first entry has index 1; index 0 is
/// the empty prefix, whose term is 0.
pub type Index = u64;

/// The node id that means "no node" (no vote cast, no leader known).
pub const NO_NODE: NodeId = 0;

/// One entry of the replicated log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The term of the leader that created the entry.
    pub term: Term,
    /// The entry's position in the log.
    pub index: Index,
    /// What the entry carries.
    pub payload: Payload,
}

impl Entry {
    /// An approximation of the entry's encoded size, used to bound batches.
    pub fn approx_size(&self) -> usize {
        24 + match &self.payload {
            Payload::Noop => 0,
            Payload::Command(data) => data.len(),
            Payload::Config(c) => 8 * (c.voters.len() + c.outgoing.len() + c.learners.len()),
        }
    }
}

/// The contents of a log entry.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Payload {
    /// The empty entry a new leader appends to commit entries of earlier
    /// terms (Raft §5.4.2, §8).
    Noop,
    /// An opaque command for the state machine. Shared, not copied, when
    /// the entry is cloned (for storage, each follower, the apply task);
    /// encoded exactly like a `Vec<u8>` (postcard: length, then the bytes).
    Command(Bytes),
    /// A cluster configuration; it takes effect as soon as it is appended
    /// (Raft thesis §4.1).
    Config(Configuration),
}

/// The state a node must make durable before it answers anything that
/// depends on it (Raft Figure 2, "Persistent state on all servers").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HardState {
    /// The latest term this node has seen.
    pub term: Term,
    /// The candidate this node voted for in `term`, or [`NO_NODE`].
    pub vote: NodeId,
    /// The highest index known to be committed. Persisting it is an
    /// optimisation (it lets a restarted node apply without waiting); it is
    /// never needed for safety.
    pub commit: Index,
}

/// The members of a cluster: voters, and learners that receive the log but
/// neither vote nor count towards commitment.
///
/// While `outgoing` is non-empty the configuration is *joint* (Raft thesis
/// §4.3): every decision needs a majority of `voters` **and** a majority of
/// `outgoing`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Configuration {
    /// The voters of the (incoming) configuration.
    #[serde(deserialize_with = "super::member_bound::set")]
    pub voters: BTreeSet<NodeId>,
    /// The voters of the outgoing configuration while joint; empty otherwise.
    #[serde(deserialize_with = "super::member_bound::set")]
    pub outgoing: BTreeSet<NodeId>,
    /// Members that replicate the log without voting.
    #[serde(deserialize_with = "super::member_bound::set")]
    pub learners: BTreeSet<NodeId>,
    /// Where each member can be reached. Opaque to the protocol: carried in
    /// the configuration so that every node learns every member's address
    /// from the log, atomically with the membership itself.
    #[serde(deserialize_with = "super::member_bound::map")]
    pub addrs: BTreeMap<NodeId, String>,
}

impl Configuration {
    /// A simple (non-joint) configuration of the given voters.
    pub fn new(voters: impl IntoIterator<Item = NodeId>) -> Self {
        Configuration {
            voters: voters.into_iter().collect(),
            outgoing: BTreeSet::new(),
            learners: BTreeSet::new(),
            addrs: BTreeMap::new(),
        }
    }

    /// A joint configuration: decisions need majorities of both sets.
    pub fn joint(
        incoming: impl IntoIterator<Item = NodeId>,
        outgoing: impl IntoIterator<Item = NodeId>,
    ) -> Self {
        Configuration {
            voters: incoming.into_iter().collect(),
            outgoing: outgoing.into_iter().collect(),
            learners: BTreeSet::new(),
            addrs: BTreeMap::new(),
        }
    }

    /// Whether this is a joint configuration.
    pub fn is_joint(&self) -> bool {
        !self.outgoing.is_empty()
    }

    /// Whether `id` votes in either half of the configuration.
    pub fn is_voter(&self, id: NodeId) -> bool {
        self.voters.contains(&id) || self.outgoing.contains(&id)
    }

    /// Whether `id` is a member at all (voter or learner).
    pub fn contains(&self, id: NodeId) -> bool {
        self.is_voter(id) || self.learners.contains(&id)
    }

    /// How many members there are (voters of either half and learners,
    /// each counted once): `members().len()` without allocating, for a
    /// configuration that may have come from the network (its sets are
    /// bounded when decoded, see `member_bound`).
    pub fn member_count(&self) -> usize {
        let voters = self.voters.union(&self.outgoing).count();
        let learners = self
            .learners
            .iter()
            .filter(|id| !self.is_voter(**id))
            .count();
        voters.saturating_add(learners)
    }

    /// Every member, voters and learners, in ascending order, once each.
    pub fn members(&self) -> BTreeSet<NodeId> {
        let mut all = self.voters.clone();
        all.extend(self.outgoing.iter().copied());
        all.extend(self.learners.iter().copied());
        all
    }
}

/// Metadata of a snapshot: the last log position it covers and the
/// configuration in force at that position.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotMeta {
    /// The index of the last entry the snapshot covers.
    pub index: Index,
    /// The term of that entry.
    pub term: Term,
    /// The configuration in force at `index`.
    pub config: Configuration,
}

#[cfg(test)]
mod tests {
    use super::Configuration;

    /// `member_count` is `members().len()`: voters of both halves and
    /// learners, each counted once (a learner listed as a voter too, as an
    /// earlier version's joint configuration may have it, counts once).
    #[test]
    fn member_count_counts_each_member_once() {
        let mut c = Configuration::joint([1, 2, 3], [3, 4]);
        c.learners.extend([4, 5, 6]);
        assert_eq!((c.member_count(), c.members().len()), (6, 6));
        assert_eq!(Configuration::default().member_count(), 0);
    }
}

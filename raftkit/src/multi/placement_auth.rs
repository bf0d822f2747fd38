//! Which node certificates may write the placement (group 0) through a
//! node's client service.
//!
//! The placement routes every sharded client, so a write to it
//! ([`Placement::set_replicas`](super::Placement::set_replicas)) can send a
//! group's clients anywhere. Nodes write it themselves: the leader of a
//! data group records the group's committed replicas, and the node that
//! moved a replica records the move ([`super::placement_sync`]), through
//! the client service with their node certificate. A node certificate of
//! the cluster's CA alone is not enough (review s57, transport #3: a
//! spare's, a retired node's not revoked, any node's that is a member of
//! nothing could misroute every sharded client).
//!
//! # Rule
//!
//! A node certificate's `Write`, `OpenSession` and `CloseSession` to
//! group 0 (reads stay open to it) are decided by **group 0's leader**
//! only, after a linearizable read of the placement there: a follower
//! answers `NotLeader` with the leader's address at once, before any read
//! (the client follows it, as it would for the write itself), so every
//! decision rests on the committed placement and on the leader's own
//! replicas, not on what whichever node a request reached happens to host. The writer's node
//! must be, at group 0's leader:
//!
//! 1. a member (voter or learner) of group 0's **committed**, settled
//!    configuration (commit index at or past it, not joint: thesis §4.1,
//!    a configuration may be cut off until it commits; §4.3, a joint one is
//!    a passage); or
//! 2. named in a shard's replica list of the placement read in 1 (the
//!    committed placement); or
//! 3. a member of the committed, settled configuration of a group that
//!    **the placement lists**, as this node's replica of that group holds
//!    it, a replica that once held a configuration listing this node (so
//!    not one hosted on demand and never listed); or
//! 4. one of the voters of the committed configuration that removed this
//!    node's replica of a group the placement lists and still lists
//!    **this node** for (the move off this node whose record is missing:
//!    the group's new node re-makes it), while this node does not host
//!    the group again.
//!
//! Otherwise the request is refused [`Error::Unauthorized`] (not applied).
//! A group that the placement does not list never counts, whoever hosts
//! it: review s58 (finding 1) showed a node certificate of no member
//! founding a group of its own, adding group 0's members as learners (each
//! starts a replica on demand, whose configuration lists the founder) and
//! so becoming "known" to them.
//!
//! Every node's own records satisfy one of these while its record is
//! legitimate: a data group's leader is listed for it (2) unless the
//! listing is stale; a listing is stale only after a change whose record
//! is missing, and then the group's new node is a committed member of the
//! group (3) at a group 0 leader that hosts it, or a successor (4) at a
//! group 0 leader the group moved off.
//!
//! # Limits
//!
//! - A node certificate of a current member may still write any group's
//!   replicas (the rule does not check that the writer belongs to the
//!   group it writes). A member's certificate is as trusted as its node,
//!   which already holds the data of its groups.
//! - (4)'s successors are kept in the data directory, written before the
//!   replica's tombstone, and read back at start ([`super::successors`]),
//!   for a day after the retirement and for the 256 latest retirements
//!   only. Past that, or when group 0's leader is neither a member of the
//!   group nor the node it moved off, a move whose record was lost is
//!   refused for the new node until one of 1-3 holds (a listed node leads
//!   the group and records it, or an admin writes the placement). Review
//!   s58, finding 2: the general fix asks a node the placement lists for
//!   the group (a peer control frame); not made.
//! - (3) trusts this node's replica's configuration, whoever made it. A
//!   node certificate of a non-member can make a replica outside a
//!   leader's lease adopt and commit entries of its choosing (`crate::tls`,
//!   "What each certificate can still do"), among them a configuration
//!   naming itself and this node, and rule 3 then admits it (pinned by
//!   `limit_a_forged_committed_configuration_naming_this_node_passes_rule_3`).
//!   Requiring the configuration to be committed (done) and the replica to
//!   have been listed by one (done) does not tell a forged one apart: the
//!   sender chooses the entries and the commit index it announces.
//!   Requiring the placement to list the writer is rule 2, and would
//!   refuse the repair rule 3 exists for (the group's new node, listed
//!   nowhere, leading the group). Requiring this node to lead the group
//!   would refuse the forgery (a leader adopts no one's entries), but only
//!   in the cases where this node records the group itself, so rule 3
//!   would add nothing. The forgery needs a replica of a listed group on
//!   group 0's leader that has heard no leader for an election timeout (or
//!   just restarted), and a certificate of the cluster's CA.

use super::GroupId;
use super::MultiNode;
use super::placement::{PlacementClient, PlacementGroup, Shard};
use crate::client::wire::ClientRequest;
use crate::core::{NodeId, Role};
use crate::error::Error;
use crate::identity::{default_name, node_id};
use crate::runtime::{Peer, PeerExt, PeerStatus};
use crate::tls::{CertRole, Principal};

/// Whether `request` changes group 0 (or holds a session for that).
fn writes(request: &ClientRequest) -> bool {
    matches!(
        request,
        ClientRequest::Write { .. }
            | ClientRequest::OpenSession
            | ClientRequest::CloseSession { .. }
    )
}

/// Why a writer was let through (the rule's numbers, module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Grant {
    /// 1: a member of group 0's committed configuration.
    PlacementMember,
    /// 2: listed in the placement.
    Listed,
    /// 3: a member of a listed group's committed configuration here.
    Member(GroupId),
    /// 4: a successor of this node's replica of a listed group.
    Successor(GroupId),
}

/// Whether `st` is committed and not joint.
fn settled(st: &PeerStatus) -> bool {
    !st.joint && st.config_index > 0 && st.commit >= st.config_index
}

/// Whether `st`'s committed, settled configuration lists `id`.
fn settled_member(st: &PeerStatus, id: NodeId) -> bool {
    settled(st) && st.members.iter().any(|m| m.id == id)
}

/// What group 0's leader knows when it decides (module docs).
struct Known<'a, H, W> {
    /// This node.
    me: NodeId,
    /// Its replica of group 0 (the leader).
    placement: &'a PeerStatus,
    /// The placement, read linearizably.
    shards: &'a [Shard],
    /// A listed address's node.
    id_of: &'a dyn Fn(&str) -> NodeId,
    /// This node's replica of a group: status, ever listed this node.
    hosted: H,
    /// The voters of the configuration that removed this node's replica.
    successors: W,
}

impl<H, W> Known<'_, H, W>
where
    H: Fn(GroupId) -> Option<(PeerStatus, bool)>,
    W: Fn(GroupId) -> Option<Vec<NodeId>>,
{
    /// The rule (module docs): why `writer` may write, or `None`.
    fn grant(&self, writer: NodeId) -> Option<Grant> {
        if settled_member(self.placement, writer) {
            return Some(Grant::PlacementMember);
        }
        let lists = |s: &Shard, id: NodeId| s.replicas.iter().any(|a| (self.id_of)(a) == id);
        if self.shards.iter().any(|s| lists(s, writer)) {
            return Some(Grant::Listed);
        }
        for shard in self.shards {
            match (self.hosted)(shard.group) {
                Some((st, listed)) => {
                    if listed && settled_member(&st, writer) {
                        return Some(Grant::Member(shard.group));
                    }
                }
                None => {
                    if lists(shard, self.me)
                        && (self.successors)(shard.group).is_some_and(|s| s.contains(&writer))
                    {
                        return Some(Grant::Successor(shard.group));
                    }
                }
            }
        }
        None
    }
}

/// Checks that `principal` may send `request` to group 0 through `node`,
/// whose replica of group 0 is `placement` (see the module docs). Only a
/// node certificate's writes are checked here; every other request was
/// authorized by the service's table. Every error is "not applied":
/// nothing was proposed.
pub(super) async fn check<S: PeerExt>(
    node: &MultiNode<S>,
    placement: &Peer<PlacementGroup<S>>,
    principal: &Principal,
    request: &ClientRequest,
) -> Result<(), Error> {
    if principal.role != CertRole::Node || !writes(request) {
        return Ok(());
    }
    let writer = node_id(&principal.name);
    // Decided at group 0's leader only: a follower answers at once, with
    // the leader's address, without a read (a follower's linearizable read
    // is a ReadIndex round through the leader, Raft thesis §6.4, wasted
    // here).
    let role = placement.status();
    if role.role != Role::Leader {
        return Err(Error::NotLeader {
            hint: role.leader_addr,
        });
    }
    #[cfg(test)]
    read_hook::note(node.id());
    let shards = PlacementClient::new(placement.clone())
        .shards()
        .await
        .map_err(|e| match e {
            // The client follows the hint to the leader, which decides.
            Error::NotLeader { .. } => e,
            e => Error::Unavailable(format!(
                "cannot check whether {principal} may write the placement (group 0): the \
                 placement read failed: {e}; not applied"
            )),
        })?;
    let st = placement.status();
    if st.role != Role::Leader {
        // Leadership lost during the read: the new leader decides.
        return Err(Error::NotLeader {
            hint: st.leader_addr,
        });
    }
    let id_of = |addr: &str| node_id(&default_name(S::NAME, addr));
    let known = Known {
        me: node.id(),
        placement: &st,
        shards: &shards,
        id_of: &id_of,
        hosted: |g| node.hosted_status(g),
        successors: |g| node.successors(g),
    };
    if let Some(grant) = known.grant(writer) {
        tracing::trace!(principal = %principal, node = writer, ?grant, "a placement write by a node certificate let through");
        return Ok(());
    }
    // Throttled per writer (`refusal_log`): a hostile certificate retrying
    // must not flood the log.
    if let Some(logged) = node.note_refusal(writer, std::time::Instant::now()) {
        tracing::warn!(
            principal = %principal,
            node = writer,
            request = crate::runtime::authorization::request_kind(request),
            suppressed = logged.suppressed,
            overflow = logged.overflow,
            "refused a placement write by a node certificate of no member"
        );
    }
    Err(Error::Unauthorized(format!(
        "{} refused: the placement (group 0) routes every sharded client; a node certificate \
         may write it only if its node is a member of group 0's committed configuration, is \
         listed in the placement, or is a committed member of a group the placement lists as \
         group 0's leader knows it; this {principal} is none of them; not applied",
        crate::runtime::authorization::request_kind(request)
    )))
}

/// The placement reads [`check`] made, per node (tests only: a follower
/// answers without one).
#[cfg(test)]
mod read_hook {
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    use crate::core::NodeId;

    static READS: Mutex<BTreeMap<NodeId, u64>> = Mutex::new(BTreeMap::new());

    /// Node `id`'s check reads the placement.
    pub(super) fn note(id: NodeId) {
        *READS
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(id)
            .or_default() += 1;
    }

    /// The reads node `id`'s checks made so far.
    pub(super) fn count(id: NodeId) -> u64 {
        READS
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .copied()
            .unwrap_or(0)
    }
}

#[cfg(test)]
#[path = "placement_auth_tests.rs"]
mod cluster_tests;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::MemberStatus;

    const ME: NodeId = 1;
    const W: NodeId = 7;

    /// A status whose configuration lists `members` (voters), settled
    /// when `settled`.
    fn status(members: &[NodeId], settled: bool) -> PeerStatus {
        PeerStatus {
            config_index: 10,
            commit: if settled { 10 } else { 9 },
            members: members
                .iter()
                .map(|&id| MemberStatus {
                    id,
                    voter: true,
                    ..MemberStatus::default()
                })
                .collect(),
            ..PeerStatus::default()
        }
    }

    fn shard(group: GroupId, replicas: &[NodeId]) -> Shard {
        Shard {
            group,
            start: 0,
            end: u64::MAX,
            replicas: replicas.iter().map(|id| id.to_string()).collect(),
        }
    }

    fn id_of(addr: &str) -> NodeId {
        addr.parse().unwrap_or(0)
    }

    /// The grant for [`W`] with group 0 on `placement`, the placement
    /// `shards`, this node hosting `hosted` and holding `successors`.
    fn grant(
        placement: &PeerStatus,
        shards: &[Shard],
        hosted: &[(GroupId, PeerStatus, bool)],
        successors: &[(GroupId, Vec<NodeId>)],
    ) -> Option<Grant> {
        Known {
            me: ME,
            placement,
            shards,
            id_of: &id_of,
            hosted: |g| hosted.iter().find(|h| h.0 == g).map(|h| (h.1.clone(), h.2)),
            successors: |g| successors.iter().find(|s| s.0 == g).map(|s| s.1.clone()),
        }
        .grant(W)
    }

    #[test]
    fn group_zeros_committed_members_and_listed_nodes_may_write() {
        let shards = [shard(1, &[ME, 2]), shard(2, &[2, 3])];
        assert_eq!(
            grant(&status(&[ME, W], true), &shards, &[], &[]),
            Some(Grant::PlacementMember)
        );
        // Not while the configuration naming it is not committed.
        assert_eq!(grant(&status(&[ME, W], false), &shards, &[], &[]), None);
        let listing = [shard(1, &[ME, 2]), shard(2, &[2, W])];
        assert_eq!(
            grant(&status(&[ME], true), &listing, &[], &[]),
            Some(Grant::Listed)
        );
        assert_eq!(grant(&status(&[ME], true), &shards, &[], &[]), None);
    }

    /// Review s58, finding 1: a group the placement does not list (one the
    /// writer founded and made this node a learner of) never counts.
    #[test]
    fn only_a_listed_groups_committed_configuration_here_counts() {
        let g0 = status(&[ME], true);
        let shards = [shard(1, &[ME, 2])];
        let rogue = (777, status(&[W, ME], true), true);
        assert_eq!(grant(&g0, &shards, &[rogue], &[]), None);
        let member = (1, status(&[ME, 2, W], true), true);
        assert_eq!(
            grant(&g0, &shards, std::slice::from_ref(&member), &[]),
            Some(Grant::Member(1))
        );
        // Not an uncommitted configuration, nor a replica never listed.
        let unsettled = (1, status(&[ME, 2, W], false), true);
        assert_eq!(grant(&g0, &shards, &[unsettled], &[]), None);
        let on_demand = (1, status(&[ME, 2, W], true), false);
        assert_eq!(grant(&g0, &shards, &[on_demand], &[]), None);
    }

    /// Limit (module docs, rule 3): a configuration that a non-member made
    /// this node's replica adopt and commit (it chose the entries and the
    /// commit index it announced), naming this node and itself, admits it.
    /// Pinned: a fix of the limit changes this test and the docs.
    #[test]
    fn limit_a_forged_committed_configuration_naming_this_node_passes_rule_3() {
        let g0 = status(&[ME], true);
        let shards = [shard(1, &[ME, 2])];
        let forged = (1, status(&[ME, W], true), true);
        assert_eq!(
            grant(&g0, &shards, &[forged], &[]),
            Some(Grant::Member(1)),
            "the limit is gone: update the module docs"
        );
    }

    /// A move off this node whose record was lost: its successors may
    /// write while the placement still lists this node for the group, and
    /// this node does not host it again (review s58, finding 3: not for
    /// ever).
    #[test]
    fn successors_count_only_while_the_placement_lists_this_node_for_the_group() {
        let g0 = status(&[ME], true);
        let moved = [(1, vec![W])];
        assert_eq!(
            grant(&g0, &[shard(1, &[ME])], &[], &moved),
            Some(Grant::Successor(1))
        );
        assert_eq!(grant(&g0, &[shard(1, &[2])], &[], &moved), None);
        assert_eq!(grant(&g0, &[shard(2, &[ME])], &[], &moved), None);
        let back = (1, status(&[ME], true), true);
        assert_eq!(grant(&g0, &[shard(1, &[ME])], &[back], &moved), None);
    }
}

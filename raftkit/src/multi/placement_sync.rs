//! Keeping the placement's replica lists equal to the data groups'
//! committed configurations.
//!
//! A group's Raft configuration is the truth about its replicas; the
//! replicas the [placement](super::placement) lists for it route the
//! sharded clients ([`crate::client::ShardedClient`]) there. Every path
//! that changes a configuration, [`MultiNode::move_replica`] called
//! directly, by the replica balancer ([`MultiNode::balance_replicas`]) or
//! for a client's admin request, ends by recording the group's replicas
//! here, and the leader of each data group records them again whenever
//! its configuration changed since it last did (a move that failed after
//! its change, which the core then finished by itself).
//!
//! # Invariants
//!
//! - The placement is written only with the voters of a configuration
//!   that is **committed and not joint**, as this node's replica holds it:
//!   a configuration is in force from the moment it is appended and may
//!   still be cut off until it commits (Raft thesis §4.1), and a joint
//!   configuration `C_old,new` is a passage, not a place (thesis §4.3). A
//!   move's intent (the target it was asked for) is never written.
//! - A group's replicas are written only when the placement lists another
//!   set: recording is idempotent, and a write that changes nothing is not
//!   made.
//! - The periodic check runs on a group's leader only, and only for a
//!   configuration other than the one it last recorded or first saw (the
//!   formation writes a new group's replicas; a replica hosted on demand
//!   first sees the empty configuration, so it records any it later leads
//!   with). It reads the placement only when a configuration changed: an
//!   idle deployment costs nothing.
//! - Writes go to group 0 through the client service, with the node's
//!   certificate ([`super::service`] lets nodes read and write group 0), so
//!   a node that leads a data group but holds no replica of group 0 (a
//!   node a replica moved to) records it too.
//!
//! # Limits
//!
//! A record made from a view that a later change overtook (a node that
//! lost its leadership while it wrote) can land after the newer one; the
//! next configuration change of the group puts it right, and a client
//! that meets `NotHosted` there re-reads the placement until it changes
//! (see [`crate::client::ShardedClient`]). A deployment without a placement
//! (no [`MultiNode::form_shards`]) has nothing to record: the first
//! attempt finds no group 0 and the check stops until the next change.

use std::collections::HashMap;
use std::time::Duration;

use tokio::task::JoinHandle;

use super::placement::{PLACEMENT_GROUP, PlacementClient};
use super::{GroupId, MultiNode};
use crate::client::{Client, ClientOptions};
use crate::core::{Index, Role};
use crate::error::Error;
use crate::runtime::{PeerExt, PeerStatus};

/// How long one record may take (the placement group's write and read).
const RECORD_TIMEOUT: Duration = Duration::from_secs(10);

/// The advertised addresses of the voters of `st`'s configuration, if it
/// is committed and not joint (and names every voter's address).
pub(crate) fn committed_replicas(st: &PeerStatus) -> Option<Vec<String>> {
    if st.joint || st.config_index == 0 || st.commit < st.config_index {
        return None;
    }
    let voters: Option<Vec<String>> = st
        .members
        .iter()
        .filter(|m| m.voter)
        .map(|m| m.addr.clone())
        .collect();
    voters.filter(|v| !v.is_empty())
}

/// `listed` brought to the set `voters`: the replicas still voting keep
/// their place, the new ones follow in address order.
fn merged(listed: &[String], voters: &[String]) -> Vec<String> {
    let mut out: Vec<String> = listed
        .iter()
        .filter(|a| voters.contains(a))
        .cloned()
        .collect();
    let mut new: Vec<String> = voters
        .iter()
        .filter(|a| !out.contains(a))
        .cloned()
        .collect();
    new.sort();
    out.append(&mut new);
    out
}

/// Whether `a` and `b` hold the same addresses.
fn same_set(a: &[String], b: &[String]) -> bool {
    a.len() == b.len() && a.iter().all(|x| b.contains(x))
}

impl<S: PeerExt> MultiNode<S> {
    /// Where group 0 may be reached: this node's placement replica's
    /// members, then the members of `groups`, then the known nodes.
    fn placement_seeds(&self, groups: &[GroupId]) -> Vec<String> {
        let mut seeds: Vec<String> = Vec::new();
        let mut add = |a: &str| {
            if !seeds.iter().any(|s| s == a) {
                seeds.push(a.to_string());
            }
        };
        if let Some(p) = self.placement() {
            for m in p.status().members {
                if let Some(a) = &m.addr {
                    add(a);
                }
            }
        }
        for group in groups {
            if let Some(peer) = self.group(*group) {
                for m in peer.status().members {
                    if let Some(a) = &m.addr {
                        add(a);
                    }
                }
            }
        }
        for a in self.known_nodes() {
            add(&a);
        }
        seeds
    }

    /// Records `wanted` (each a group and the voters of its committed
    /// configuration) in the placement: the groups it lists with another
    /// set are written. Returns the groups that need nothing more (written,
    /// already right, or not in the placement; every group when there is
    /// no formed placement).
    pub(super) async fn record_replicas(
        &self,
        wanted: &[(GroupId, Vec<String>)],
    ) -> Result<Vec<GroupId>, Error> {
        let groups: Vec<GroupId> = wanted.iter().map(|(g, _)| *g).collect();
        let seeds = self.placement_seeds(&groups);
        if seeds.is_empty() {
            return Err(Error::Unavailable(
                "no node known to host the placement group".into(),
            ));
        }
        let client = Client::connect_with_for::<S, _, _>(
            &seeds,
            self.identity().clone(),
            ClientOptions::default()
                .with_group(PLACEMENT_GROUP)
                .with_timeout(RECORD_TIMEOUT),
        )
        .await?;
        let placement = PlacementClient::new(client);
        let shards = match placement.shards().await {
            Ok(shards) => shards,
            // No placement anywhere this node knows: not sharded.
            Err(Error::NotHosted { .. }) => return Ok(groups),
            Err(e) => return Err(e),
        };
        let mut done = Vec::with_capacity(wanted.len());
        for (group, voters) in wanted {
            let Some(shard) = shards.iter().find(|s| s.group == *group) else {
                done.push(*group);
                continue;
            };
            if !same_set(&shard.replicas, voters) {
                let replicas = merged(&shard.replicas, voters);
                placement.set_replicas(*group, replicas.clone()).await?;
                tracing::info!(
                    node = %self.name(),
                    group,
                    was = ?shard.replicas,
                    now = ?replicas,
                    "placement: recorded the group's committed replicas"
                );
            }
            done.push(*group);
        }
        Ok(done)
    }

    /// The last step of a replica move that changed (or may have changed)
    /// `group`'s configuration: waits up to `settle` for this node's
    /// replica to hold a committed, non-joint configuration, and records
    /// its voters. A failure is logged, not returned: the move's outcome
    /// stands, and the group's leader records the configuration later.
    pub(super) async fn record_after_move(&self, group: GroupId, settle: Duration) {
        let Some(peer) = self.group(group) else {
            return;
        };
        let mut status = peer.watch();
        let settled =
            tokio::time::timeout(settle, status.wait_for(|s| committed_replicas(s).is_some()))
                .await
                .ok()
                .and_then(|r| r.ok())
                .and_then(|s| committed_replicas(&s));
        let Some(voters) = settled else {
            tracing::info!(
                node = %self.name(),
                group,
                "placement: the configuration has not settled; its leader records it once it does"
            );
            return;
        };
        if let Err(e) = self.record_replicas(&[(group, voters)]).await {
            tracing::warn!(
                node = %self.name(),
                group,
                error = %e,
                "placement: could not record the moved group's replicas; its leader retries at its next configuration change"
            );
        }
    }
}

/// The periodic check (see the module documentation): every `every`, the
/// groups this node leads whose committed configuration changed since it
/// last recorded (or first saw) one are recorded.
pub(super) fn spawn<S: PeerExt>(node: &MultiNode<S>, every: Duration) -> JoinHandle<()> {
    let weak = node.downgrade();
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Per group: the configuration index last recorded or first seen.
        let mut recorded: HashMap<GroupId, Index> = HashMap::new();
        loop {
            ticker.tick().await;
            let Some(node) = MultiNode::upgrade(&weak) else {
                return;
            };
            let hosted = node.groups();
            recorded.retain(|g, _| hosted.contains(g));
            let mut wanted = Vec::new();
            let mut at = HashMap::new();
            for group in hosted {
                let Some(peer) = node.group(group) else {
                    continue;
                };
                let st = peer.status();
                let seen = *recorded.entry(group).or_insert(st.config_index);
                if seen == st.config_index || st.role != Role::Leader {
                    continue;
                }
                if let Some(voters) = committed_replicas(&st) {
                    at.insert(group, st.config_index);
                    wanted.push((group, voters));
                }
            }
            if wanted.is_empty() {
                continue;
            }
            match node.record_replicas(&wanted).await {
                Ok(done) => {
                    for group in done {
                        if let Some(index) = at.get(&group) {
                            recorded.insert(group, *index);
                        }
                    }
                }
                Err(e) => tracing::debug!(
                    node = %node.name(),
                    groups = wanted.len(),
                    error = %e,
                    "placement: recording changed configurations failed; retrying"
                ),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::MemberStatus;

    fn status(members: &[(&str, bool)], config_index: Index, commit: Index) -> PeerStatus {
        PeerStatus {
            config_index,
            commit,
            members: members
                .iter()
                .map(|&(a, voter)| MemberStatus {
                    id: crate::identity::node_id(a),
                    addr: Some(a.to_string()),
                    voter,
                    ..MemberStatus::default()
                })
                .collect(),
            ..PeerStatus::default()
        }
    }

    #[test]
    fn only_a_committed_configuration_that_is_not_joint_is_recorded() {
        let members = [("a:1", true), ("b:1", true), ("t:1", false)];
        let s = status(&members, 7, 7);
        assert_eq!(
            committed_replicas(&s),
            Some(vec!["a:1".to_string(), "b:1".to_string()]),
            "voters only: a learner serves no calls"
        );
        // Appended, not committed (thesis §4.1: it could still be cut off).
        assert_eq!(committed_replicas(&status(&members, 8, 7)), None);
        // Joint (thesis §4.3): a passage, not the group's place.
        let mut joint = status(&members, 7, 7);
        joint.joint = true;
        assert_eq!(committed_replicas(&joint), None);
        // No configuration yet (a replica hosted on demand).
        assert_eq!(committed_replicas(&status(&[], 0, 0)), None);
        // A voter without an address cannot be routed to.
        let mut blind = status(&members, 7, 7);
        blind.members[0].addr = None;
        assert_eq!(committed_replicas(&blind), None);
    }

    #[test]
    fn a_record_keeps_the_listed_order_of_the_replicas_that_stay() {
        let s = |v: &[&str]| v.iter().map(|a| a.to_string()).collect::<Vec<_>>();
        assert_eq!(
            merged(&s(&["c", "a", "b"]), &s(&["b", "d", "c"])),
            s(&["c", "b", "d"])
        );
        assert!(same_set(&s(&["a", "b"]), &s(&["b", "a"])));
        assert!(!same_set(&s(&["a", "b"]), &s(&["a", "c"])));
        assert!(!same_set(&s(&["a"]), &s(&["a", "b"])));
    }
}

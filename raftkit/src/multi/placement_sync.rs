//! Keeping the placement's replica lists equal to the data groups'
//! committed configurations.
//!
//! A group's Raft configuration is the truth about its replicas; the
//! replicas the [placement](super::placement) lists for it route the
//! sharded clients ([`crate::client::ShardedClient`]) there. Every path
//! that changes a configuration, [`MultiNode::move_replica`] called
//! directly, by the replica balancer ([`MultiNode::balance_replicas`]) or
//! for a client's admin request, ends by recording the group's replicas
//! here, and the leader of each data group checks the placement against
//! its configuration and records it again when it differs (a move that
//! failed after its change, which the core then finished by itself, or an
//! older record that landed last).
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
//! - Records are unconditional writes, so one made from a view that a
//!   later change overtook (a move's last step racing the leader's check,
//!   or a node that lost its leadership while it wrote) can land after the
//!   newer one. The periodic check therefore compares each group it leads
//!   with what **group 0 holds**, not with what this node last wrote: it
//!   runs once per election timeout on each node, on the groups whose
//!   replica here leads, and reads the placement (one read for all of
//!   them, writing the groups it lists with another set) when
//!   - a group's committed configuration is not the one last found
//!     recorded, or the group was not led here at the previous check
//!     (so a change whose record failed, also before a restart, and a new
//!     leader's group are checked at once);
//!   - this node's replica of group 0 committed anything since the last
//!     read (a record may have landed);
//!   - or the last read is `VERIFY_EVERY` (5) checks old
//!     (`VERIFY_EVERY_WITH_REPLICA` (20) on a node with a replica of
//!     group 0, whose commit index already tells it of every record).
//!
//!   A failed read or write is retried at the next check. An idle node
//!   therefore reads group 0 at most once per `VERIFY_EVERY` election
//!   timeouts (with a replica of group 0, once per
//!   `VERIFY_EVERY_WITH_REPLICA`), and once after each write to group 0
//!   and each change of the configurations or leaders of its groups.
//! - Writes go to group 0 through the client service, with the node's
//!   certificate ([`super::service`] lets nodes read and write group 0), so
//!   a node that leads a data group but holds no replica of group 0 (a
//!   node a replica moved to) records it too.
//!
//! # How long a stale record lasts
//!
//! A record that lists other replicas than the voters of the group's
//! committed configuration is put right by the group's leader within one
//! election timeout after its node's replica of group 0 applies it (two
//! checks), or within `VERIFY_EVERY + 1` election timeouts on a node with
//! no replica of group 0 (`VERIFY_EVERY_WITH_REPLICA + 1` if that replica
//! lags behind group 0), plus the record's own time (at most
//! `RECORD_TIMEOUT`, 10 s), while the group has a leader whose committed
//! configuration is not joint and group 0 can be read and written. A
//! client that meets `NotHosted` meanwhile re-reads the placement until
//! it changes, within its timeout (see [`crate::client::ShardedClient`]).
//!
//! # Limits
//!
//! A deployment without a placement (no [`MultiNode::form_shards`]) has
//! nothing to record: a read that finds no group 0 anywhere this node
//! knows stops the periodic reads until a group's configuration or leader
//! changes. A node reaches group 0 through the members of its own groups
//! and the nodes it knows ([`MultiNode::set_known_nodes`]); one that knows
//! no member of group 0 records nothing.

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

/// The periodic check of a node without a replica of group 0 reads the
/// placement at least once every this many checks (election timeouts)
/// while it leads a data group (module docs: how long a stale record
/// lasts).
const VERIFY_EVERY: u32 = 5;

/// `VERIFY_EVERY` on a node with a replica of group 0: its commit index
/// tells of every record, so only a replica lagging behind group 0 needs
/// this (each read wakes a quiesced group 0, see [`super::quiesce`]).
const VERIFY_EVERY_WITH_REPLICA: u32 = 20;

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
    /// already right, or not in the placement; every group before
    /// formation), or `None` when no node this node knows hosts group 0.
    pub(super) async fn record_replicas(
        &self,
        wanted: &[(GroupId, Vec<String>)],
    ) -> Result<Option<Vec<GroupId>>, Error> {
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
            Err(Error::NotHosted { .. }) => return Ok(None),
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
        Ok(Some(done))
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
                "placement: could not record the moved group's replicas; its leader's check records them"
            );
        }
    }
}

/// What the periodic check knows between two checks (module docs).
#[derive(Debug, Default)]
struct Ledger {
    /// Per group led here at the previous check: the index of the
    /// configuration whose voters group 0 was last found (or made) to list.
    confirmed: HashMap<GroupId, Index>,
    /// This node's replica of group 0's commit index, as taken before the
    /// last read (`None`: no replica here, or no read yet).
    placement_commit: Option<Index>,
    /// Checks since the last read that succeeded (`None`: no read yet).
    since_read: Option<u32>,
    /// The last read found no group 0 anywhere this node knows.
    unsharded: bool,
}

impl Ledger {
    /// One check: whether it reads the placement, given the groups led
    /// here (each with its committed configuration's index) and this
    /// node's replica of group 0's commit index.
    fn due(&mut self, led: &[(GroupId, Index)], placement_commit: Option<Index>) -> bool {
        self.confirmed
            .retain(|g, _| led.iter().any(|(l, _)| l == g));
        self.since_read = self.since_read.map(|n| n.saturating_add(1));
        if led.is_empty() {
            return false;
        }
        let changed = led
            .iter()
            .any(|(group, index)| self.confirmed.get(group) != Some(index));
        if changed {
            return true;
        }
        if self.unsharded {
            return false;
        }
        let every = match placement_commit {
            Some(commit) if self.placement_commit != Some(commit) => return true,
            Some(_) => VERIFY_EVERY_WITH_REPLICA,
            None => VERIFY_EVERY,
        };
        self.since_read.is_none_or(|n| n >= every)
    }

    /// A read made after `placement_commit` was taken found `done` listed
    /// right (or made it so); `None`: it found no group 0.
    fn read(
        &mut self,
        led: &[(GroupId, Index)],
        done: Option<&[GroupId]>,
        placement_commit: Option<Index>,
    ) {
        self.since_read = Some(0);
        self.placement_commit = placement_commit;
        self.unsharded = done.is_none();
        for (group, index) in led {
            if done.is_none_or(|d| d.contains(group)) {
                self.confirmed.insert(*group, *index);
            }
        }
    }
}

/// The periodic check (see the module documentation), every `every` (an
/// election timeout).
pub(super) fn spawn<S: PeerExt>(node: &MultiNode<S>, every: Duration) -> JoinHandle<()> {
    let weak = node.downgrade();
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut ledger = Ledger::default();
        loop {
            ticker.tick().await;
            let Some(node) = MultiNode::upgrade(&weak) else {
                return;
            };
            let mut led = Vec::new();
            let mut wanted = Vec::new();
            for group in node.groups() {
                let Some(peer) = node.group(group) else {
                    continue;
                };
                let st = peer.status();
                if st.role != Role::Leader {
                    continue;
                }
                if let Some(voters) = committed_replicas(&st) {
                    led.push((group, st.config_index));
                    wanted.push((group, voters));
                }
            }
            // Taken before the read: a record committed after it moves it.
            let placement_commit = node.placement().map(|p| p.status().commit);
            if !ledger.due(&led, placement_commit) {
                continue;
            }
            match node.record_replicas(&wanted).await {
                Ok(done) => ledger.read(&led, done.as_deref(), placement_commit),
                Err(e) => tracing::debug!(
                    node = %node.name(),
                    groups = wanted.len(),
                    error = %e,
                    "placement: checking the led groups' replicas failed; retrying at the next check"
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

    /// Found by review (stop 43): the check compared a group's
    /// configuration only with the one it had itself recorded (or first
    /// saw), so an older record that landed last, or a change whose record
    /// failed before a restart, was never put right. It now reads what
    /// group 0 holds on a change, on a record, and at a bounded age.
    #[test]
    fn the_check_reads_the_placement_on_a_change_a_record_or_its_age() {
        let mut l = Ledger::default();
        assert!(!l.due(&[], Some(5)), "nothing led here: nothing to read");
        // First sight of a led group (also after a restart): read at once,
        // and again at the next check while the read fails.
        assert!(l.due(&[(1, 7)], None));
        assert!(l.due(&[(1, 7)], None), "a failed read is retried");
        l.read(&[(1, 7)], Some(&[1][..]), None);
        // No replica of group 0 here: a read every VERIFY_EVERY checks.
        for _ in 1..VERIFY_EVERY {
            assert!(!l.due(&[(1, 7)], None));
        }
        assert!(l.due(&[(1, 7)], None), "read again after VERIFY_EVERY");
        l.read(&[(1, 7)], Some(&[1][..]), None);
        assert!(
            l.due(&[(1, 9)], None),
            "a new configuration is read at once"
        );
        l.read(&[(1, 9)], Some(&[1][..]), None);
        assert!(!l.due(&[], None), "leadership lost");
        assert!(l.due(&[(1, 9)], None), "a group led again is read at once");
        // A replica of group 0 here: read when it committed anything.
        l.read(&[(1, 9)], Some(&[1][..]), Some(4));
        assert!(!l.due(&[(1, 9)], Some(4)));
        assert!(l.due(&[(1, 9)], Some(5)), "a record may have landed");
        l.read(&[(1, 9)], Some(&[1][..]), Some(5));
        for _ in 1..VERIFY_EVERY_WITH_REPLICA {
            assert!(!l.due(&[(1, 9)], Some(5)));
        }
        assert!(l.due(&[(1, 9)], Some(5)), "a lagging replica is read past");
        // No group 0 anywhere: no periodic read until a change.
        l.read(&[(1, 9)], None, Some(5));
        for _ in 0..2 * VERIFY_EVERY_WITH_REPLICA {
            assert!(!l.due(&[(1, 9)], Some(5)));
        }
        assert!(l.due(&[(1, 10)], Some(5)));
    }
}

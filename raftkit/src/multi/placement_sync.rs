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
//!   move's intent (the target it was asked for) is never written. A move
//!   whose node left the group (its own replica moved away) records from
//!   the replica it ran on, also once that replica retired: the
//!   retirement may come first, and the group's new node may reach group 0
//!   only through its fallback seeds (see Limits). Retired by the retirer
//!   ([`super::hosting`]), its last status is the committed `C_new` that
//!   removed it (thesis §4.2.2); retired on a member's answer
//!   ([`super::removal`]: it missed the last AppendEntries), it may hold
//!   an uncommitted or joint configuration, and then nothing is recorded.
//! - A group's replicas are written only when the placement lists another
//!   set: recording is idempotent, and a write that changes nothing is not
//!   made.
//! - A record is written only while the group's configuration, as this
//!   node's replica holds it just before the write, is still the one whose
//!   voters were taken (and, for the periodic check, while this node still
//!   leads the group): the connect and the read before it can take seconds,
//!   and a change committed meanwhile must not be written over by the set
//!   it replaced. A retired replica's status never changes, so that check
//!   cannot see a later change: a record made from one is written only
//!   while the placement still lists this node for the group (a
//!   compare-and-set against the listing the move replaced; any record
//!   made from `C_new` or later no longer names this node).
//! - Records are still unconditional writes, so one made from a view that
//!   a later change overtook between that look and the write landing (or
//!   on a node that lost its leadership while it wrote) can land after the
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
//!     group 0, whose commit index already tells it of every record); after
//!     a read that found no group 0 (every node it asked answered
//!     `NotHosted`), `2 * VERIFY_EVERY` checks old, doubling with each
//!     such read up to `UNSHARDED_EVERY_MAX` (60).
//!
//!   A failed read or write is retried at the next check. An idle node
//!   therefore reads group 0 at most once per `VERIFY_EVERY` election
//!   timeouts (with a replica of group 0, once per
//!   `VERIFY_EVERY_WITH_REPLICA`), and once after each write to group 0
//!   and each change of the configurations or leaders of its groups.
//! - The check keeps one client of group 0 across checks (a new one costs
//!   a UDP endpoint, and a QUIC/TLS handshake and a hello with every seed)
//!   and makes a new one only after a call through it failed or found no
//!   group 0. A new one is seeded with group 0's voters as its leader last
//!   reported them, or, without them (or when a client so seeded failed),
//!   with this node's replica of group 0's members, its led groups'
//!   members and the nodes set by [`MultiNode::set_known_nodes`]. When
//!   those seeds found no group 0, or no client could be made, the same
//!   check tries once more with up to `FALLBACK_SEEDS` (16) other nodes a
//!   group's configuration listed here, the most recently listed first
//!   (the peer links remember up to 1,024 of them): a node a group moved
//!   to reaches group 0 through the nodes it moved from. They are never
//!   added to every client's seeds (a new client makes a handshake and a
//!   hello with each seed).
//! - Writes go to group 0 through the client service, with the node's
//!   certificate ([`super::service`] lets a node certificate write group 0
//!   when its node is a member of group 0, listed in the placement, or a
//!   committed member of a listed group as group 0's leader knows it), so
//!   a node that leads a data group but holds no replica of group 0 (a
//!   node a replica moved to) records it too. A move's new node whose
//!   record was lost is let through by a group 0 leader that hosts the
//!   group or that the group moved off (and has not restarted since);
//!   otherwise it waits for a listed node to record the group.
//!
//! # How long a stale record lasts
//!
//! A record that lists other replicas than the voters of the group's
//! committed configuration is put right by the group's leader within one
//! election timeout after its node's replica of group 0 applies it (two
//! checks), or within `VERIFY_EVERY + 1` election timeouts on a node with
//! no replica of group 0 (`VERIFY_EVERY_WITH_REPLICA + 1` if that replica
//! lags behind group 0; `UNSHARDED_EVERY_MAX + 1` after reads that found no
//! group 0, e.g. on a node whose seeds did not host it), plus the record's
//! own time (at most `RECORD_TIMEOUT`, 10 s, per connect and per call),
//! while the group has a leader whose committed
//! configuration is not joint and group 0 can be read and written. A
//! client that meets `NotHosted` meanwhile re-reads the placement until
//! it changes, within its timeout (see [`crate::client::ShardedClient`]).
//!
//! # Limits
//!
//! A deployment without a placement (no [`MultiNode::form_shards`]) has
//! nothing to record: a read that finds no group 0 anywhere this node
//! knows backs the periodic reads off to one per `UNSHARDED_EVERY_MAX`
//! election timeouts (a group's configuration or leader change is still
//! read at once), which is also what bounds a sharded node whose seeds do
//! not host group 0 until it learns one that does (on an unsharded
//! deployment each such read also tries the fallback seeds). A node
//! reaches group 0 through the members of its own groups, the nodes it
//! knows ([`MultiNode::set_known_nodes`]) and, as a fallback, the 16 nodes
//! its groups' configurations listed most recently; one that reaches no
//! member of group 0 through any of them records nothing, and a move whose
//! own record (step 5) was lost then stays unrecorded until it does. That
//! is the case when none of the nodes it shared a group with (among those
//! 16) hosts group 0, or when the mover's record is lost (it failed, its
//! node restarted before it, or its replica retired on a member's answer
//! with an unsettled configuration) and the group's new nodes never
//! shared a group with a node of group 0. A general fix needs a hint on
//! the wire (a node answering where group 0 is); not made.

use std::collections::HashMap;
use std::time::Duration;

use tokio::task::JoinHandle;

use super::placement::{PLACEMENT_GROUP, PlacementClient};
use super::{GroupId, MultiNode};
use crate::client::{Client, ClientOptions};
use crate::core::{Index, Role};
use crate::error::Error;
use crate::runtime::{Peer, PeerExt, PeerStatus};

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

/// After a read that found no group 0, the check reads again every
/// `2 * VERIFY_EVERY` checks, doubling with each such read up to this
/// (module docs).
const UNSHARDED_EVERY_MAX: u32 = 60;

/// The most fallback seeds (nodes a group's configuration listed here) the
/// periodic check tries after its own seeds found no group 0 (module docs).
const FALLBACK_SEEDS: usize = 16;

/// A group's voters as taken for a record: those of its committed
/// configuration at `index`.
#[derive(Clone, Debug)]
pub(super) struct Taken {
    /// The group.
    pub(super) group: GroupId,
    /// The index of the configuration the voters are taken from.
    pub(super) index: Index,
    /// Its voters' advertised addresses.
    pub(super) voters: Vec<String>,
}

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

/// Whether a record of a group's voters, taken from its configuration at
/// `index` (while this node led it, when `led`), may still be written, its
/// status being `now`: the configuration is still that one, committed and
/// not joint, and this node still leads the group if it did (module docs).
fn still_current(index: Index, led: bool, now: &PeerStatus) -> bool {
    now.config_index == index
        && committed_replicas(now).is_some()
        && (!led || now.role == Role::Leader)
}

/// The periodic check's client of group 0, kept across checks (module
/// docs); `C` is the client (generic for the tests).
#[derive(Debug)]
struct Link<C> {
    /// The client, until a call through it fails.
    client: Option<C>,
    /// Group 0's voters as its leader last reported them: the seeds of the
    /// next client, used once.
    group0: Vec<String>,
}

impl<C> Default for Link<C> {
    fn default() -> Self {
        Link {
            client: None,
            group0: Vec::new(),
        }
    }
}

impl<C: Clone> Link<C> {
    /// The kept client, if any.
    fn client(&self) -> Option<C> {
        self.client.clone()
    }

    /// The seeds of a new client: group 0's voters as last reported, once,
    /// else `known` (every node this node knows).
    fn seeds(&mut self, known: Vec<String>) -> Vec<String> {
        if self.group0.is_empty() {
            known
        } else {
            std::mem::take(&mut self.group0)
        }
    }

    /// A call through `client` succeeded: keep it; `group0`, when given,
    /// is group 0's voters as its leader reports them.
    fn keep(&mut self, client: C, group0: Option<Vec<String>>) {
        self.client = Some(client);
        if let Some(g) = group0.filter(|g| !g.is_empty()) {
            self.group0 = g;
        }
    }

    /// A call failed or found no group 0: the next check makes a new
    /// client.
    fn failed(&mut self) {
        self.client = None;
    }
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

    /// A client of group 0 that reaches it through `seeds`.
    async fn placement_client(&self, seeds: &[String]) -> Result<Client, Error> {
        if seeds.is_empty() {
            return Err(Error::Unavailable(
                "no node known to host the placement group".into(),
            ));
        }
        Client::connect_with_for::<S, _, _>(
            seeds,
            self.identity().clone(),
            ClientOptions::default()
                .with_group(PLACEMENT_GROUP)
                .with_timeout(RECORD_TIMEOUT),
        )
        .await
    }

    /// Records `wanted` in the placement through a new client of group 0
    /// (see `record_through`; a move's last step).
    async fn record_replicas(
        &self,
        wanted: &[Taken],
        led: bool,
        held: Option<(GroupId, &Peer<S>)>,
    ) -> Result<Option<Vec<GroupId>>, Error> {
        #[cfg(test)]
        if hooks::record_fails(self.id()) {
            return Err(Error::Unavailable("the record fails (test hook)".into()));
        }
        let groups: Vec<GroupId> = wanted.iter().map(|t| t.group).collect();
        let client = self
            .placement_client(&self.placement_seeds(&groups))
            .await?;
        self.record_through(&client, wanted, led, held).await
    }

    /// `group`'s status as this node's replica holds it: the replica hosted
    /// now, else `held` (a move's replica of that group, kept by the move:
    /// retired, it holds its last status and sees no later one; retired by
    /// the retirer, that is the committed configuration that removed it,
    /// while one retired on a member's answer may hold an uncommitted or
    /// joint one, see [`super::removal`]). The flag tells whether the
    /// status is `held`'s.
    fn status_for_record(
        &self,
        group: GroupId,
        held: Option<(GroupId, &Peer<S>)>,
    ) -> Option<(PeerStatus, bool)> {
        match self.group(group) {
            Some(peer) => Some((peer.status(), false)),
            None => held
                .filter(|(g, _)| *g == group)
                .map(|(_, peer)| (peer.status(), true)),
        }
    }

    /// Records `wanted` (each a group and the voters of a committed
    /// configuration, taken while this node led the group when `led`) in
    /// the placement through `client`: the groups it lists with another
    /// set are written, each only if its configuration is still the one
    /// taken (module docs), as the replica hosted here holds it, or `held`
    /// for its group once that one retired. Returns the groups that need
    /// nothing more (written, already right, or not in the placement; every
    /// group before formation), or `None` when no node `client` asked hosts
    /// group 0.
    async fn record_through(
        &self,
        client: &Client,
        wanted: &[Taken],
        led: bool,
        held: Option<(GroupId, &Peer<S>)>,
    ) -> Result<Option<Vec<GroupId>>, Error> {
        let placement = PlacementClient::new(client.clone());
        let shards = match placement.shards().await {
            Ok(shards) => shards,
            // No placement anywhere this node asked: not sharded, or not
            // reachable from here.
            Err(Error::NotHosted { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut done = Vec::with_capacity(wanted.len());
        for Taken {
            group,
            index,
            voters,
        } in wanted
        {
            let Some(shard) = shards.iter().find(|s| s.group == *group) else {
                done.push(*group);
                continue;
            };
            if !same_set(&shard.replicas, voters) {
                // The voters were taken before the connect and the read:
                // a change committed since must not be written over.
                let now = self.status_for_record(*group, held);
                if !now
                    .as_ref()
                    .is_some_and(|(st, _)| still_current(*index, led, st))
                {
                    tracing::info!(
                        node = %self.name(),
                        group,
                        taken = index,
                        now = ?now.map(|(st, _)| (st.config_index, st.role)),
                        "placement: the configuration changed or the leadership moved since its voters were taken; not recorded"
                    );
                    continue;
                }
                // A retired replica's status never changes, so the check
                // above cannot see a change made since: written only over
                // the listing the move replaced, which names this node
                // (module docs; found by review, stop 54).
                let retired = now.as_ref().is_some_and(|(_, held)| *held);
                if retired && !shard.replicas.iter().any(|a| a == self.advertise()) {
                    tracing::info!(
                        node = %self.name(),
                        group,
                        taken = index,
                        listed = ?shard.replicas,
                        "placement: the moved group's listing no longer names this node (a newer record landed); not recorded"
                    );
                    done.push(*group);
                    continue;
                }
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
    ///
    /// `held` is the replica the move ran on, taken before it started: when
    /// this node is the leaving one, its replica retires on the retirer's
    /// first round after `C_new` commits ([`super::hosting`]), which may
    /// come before this step or during its connect and read, and the
    /// record is then made from the retired replica's last status (the
    /// committed configuration that removed it, thesis §4.2.2, when the
    /// retirer retired it; one retired on a member's answer may hold an
    /// uncommitted or joint configuration, and then nothing is recorded),
    /// and only over a listing that still names this node (module docs).
    /// Looking
    /// the replica up again instead dropped the record, and the group's
    /// new node may know no member of group 0 to record it (module docs,
    /// Limits), so the placement named the old node for good.
    pub(super) async fn record_after_move(
        &self,
        group: GroupId,
        held: Option<Peer<S>>,
        settle: Duration,
    ) {
        let Some(peer) = self.group(group).or(held) else {
            tracing::info!(
                node = %self.name(),
                group,
                "placement: no replica of the moved group here; its leader records it"
            );
            return;
        };
        let mut status = peer.watch();
        let settled =
            tokio::time::timeout(settle, status.wait_for(|s| committed_replicas(s).is_some()))
                .await
                .ok()
                .and_then(|r| r.ok())
                .and_then(|s| {
                    committed_replicas(&s).map(|voters| Taken {
                        group,
                        index: s.config_index,
                        voters,
                    })
                });
        let Some(taken) = settled else {
            tracing::info!(
                node = %self.name(),
                group,
                "placement: the configuration has not settled; its leader records it once it does"
            );
            return;
        };
        match self
            .record_replicas(&[taken], false, Some((group, &peer)))
            .await
        {
            Ok(Some(_)) => {}
            Ok(None) => tracing::warn!(
                node = %self.name(),
                group,
                "placement: no node asked hosts group 0; the moved group's leader's check records it if it reaches group 0"
            ),
            Err(e) => tracing::warn!(
                node = %self.name(),
                group,
                error = %e,
                "placement: could not record the moved group's replicas; its leader's check records them if it reaches group 0"
            ),
        }
    }

    /// The periodic check's fallback seeds: up to [`FALLBACK_SEEDS`] nodes
    /// a group's configuration listed here, the most recently listed first,
    /// other than this node and those in `tried`.
    fn fallback_seeds(&self, tried: &[String]) -> Vec<String> {
        let me = self.advertise();
        self.links()
            .recent_known(FALLBACK_SEEDS, |a| a == me || tried.iter().any(|t| t == a))
    }

    /// One read (and the writes it calls for) of the periodic check:
    /// through the kept client, else a new one seeded with `seeds` if
    /// given, else with [`Link::seeds`]; the seeds used are added to
    /// `tried`.
    async fn check_once(
        &self,
        link: &mut Link<Client>,
        wanted: &[Taken],
        seeds: Option<Vec<String>>,
        tried: &mut Vec<String>,
    ) -> Attempt {
        let (client, fresh) = match link.client().filter(|_| seeds.is_none()) {
            Some(client) => (client, false),
            None => {
                let seeds = seeds.unwrap_or_else(|| {
                    let groups: Vec<GroupId> = wanted.iter().map(|t| t.group).collect();
                    link.seeds(self.placement_seeds(&groups))
                });
                tried.extend(seeds.iter().cloned());
                match self.placement_client(&seeds).await {
                    Ok(client) => (client, true),
                    Err(e) => {
                        tracing::debug!(
                            node = %self.name(),
                            seeds = seeds.len(),
                            error = %e,
                            "placement: cannot reach the placement group"
                        );
                        return Attempt::Unreachable;
                    }
                }
            }
        };
        match self.record_through(&client, wanted, true, None).await {
            Ok(Some(done)) => {
                let group0 = if fresh {
                    group0_voters(&client).await
                } else {
                    None
                };
                link.keep(client, group0);
                Attempt::Done(done)
            }
            Ok(None) => {
                tracing::debug!(
                    node = %self.name(),
                    groups = wanted.len(),
                    "placement: no node asked hosts group 0"
                );
                link.failed();
                Attempt::NoGroup0
            }
            Err(e) => {
                link.failed();
                tracing::debug!(
                    node = %self.name(),
                    groups = wanted.len(),
                    error = %e,
                    "placement: checking the led groups' replicas failed; retrying at the next check"
                );
                Attempt::Failed
            }
        }
    }
}

/// How one read of the periodic check ended.
#[derive(Debug)]
enum Attempt {
    /// Group 0 read: these groups need nothing more.
    Done(Vec<GroupId>),
    /// No node asked hosts group 0.
    NoGroup0,
    /// No client could be made (no seed, or none reached).
    Unreachable,
    /// A call failed (retried at the next check).
    Failed,
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
    /// The age (in checks) at which to read again after reads that found
    /// no group 0 (`None`: the last read found it).
    unsharded_every: Option<u32>,
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
        if let Some(every) = self.unsharded_every {
            return self.since_read.is_none_or(|n| n >= every);
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
        self.unsharded_every = match (done, self.unsharded_every) {
            (Some(_), _) => None,
            (None, None) => Some(2 * VERIFY_EVERY),
            (None, Some(n)) => Some(n.saturating_mul(2).min(UNSHARDED_EVERY_MAX)),
        };
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
        let mut link: Link<Client> = Link::default();
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
                    wanted.push(Taken {
                        group,
                        index: st.config_index,
                        voters,
                    });
                }
            }
            // Taken before the read: a record committed after it moves it.
            let placement_commit = node.placement().map(|p| p.status().commit);
            if !ledger.due(&led, placement_commit) {
                continue;
            }
            #[cfg(test)]
            if hooks::check_silenced(node.id()) {
                continue;
            }
            let mut tried = Vec::new();
            let mut outcome = node.check_once(&mut link, &wanted, None, &mut tried).await;
            // The seeds found no group 0: the nodes this node shared a
            // group with, once, in the same check (module docs).
            if matches!(outcome, Attempt::NoGroup0 | Attempt::Unreachable) {
                let fallback = node.fallback_seeds(&tried);
                if !fallback.is_empty() {
                    tracing::debug!(
                        node = %node.name(),
                        seeds = fallback.len(),
                        "placement: trying the nodes this node's groups listed"
                    );
                    match node
                        .check_once(&mut link, &wanted, Some(fallback), &mut tried)
                        .await
                    {
                        Attempt::Unreachable => {}
                        second => outcome = second,
                    }
                }
            }
            match outcome {
                Attempt::Done(done) => {
                    ledger.read(&led, Some(done.as_slice()), placement_commit);
                }
                Attempt::NoGroup0 => {
                    tracing::debug!(
                        node = %node.name(),
                        "placement: no group 0 found; reading again after a backoff"
                    );
                    ledger.read(&led, None, placement_commit);
                }
                // Retried at the next check.
                Attempt::Unreachable | Attempt::Failed => {}
            }
        }
    })
}

/// Test only: per node (by id, so that tests running at once do not meet),
/// a record that fails, a periodic check that does nothing, and a pause of
/// a move between its steps 1 to 4 and its record (step 5).
#[cfg(test)]
pub(crate) mod hooks {
    use std::sync::Mutex;

    use tokio::sync::oneshot;

    use crate::core::NodeId;

    static FAILING: Mutex<Vec<NodeId>> = Mutex::new(Vec::new());
    static SILENCED: Mutex<Vec<NodeId>> = Mutex::new(Vec::new());
    /// Armed pauses: the node, where to say the move reached the point,
    /// and what lets it go on.
    type Armed = (NodeId, oneshot::Sender<()>, oneshot::Receiver<()>);
    static PAUSED: Mutex<Vec<Armed>> = Mutex::new(Vec::new());

    fn has(list: &Mutex<Vec<NodeId>>, id: NodeId) -> bool {
        list.lock().unwrap_or_else(|p| p.into_inner()).contains(&id)
    }

    /// Every record of a move on node `id` fails (`record_replicas`).
    pub(crate) fn fail_records(id: NodeId) {
        FAILING.lock().unwrap_or_else(|p| p.into_inner()).push(id);
    }

    pub(super) fn record_fails(id: NodeId) -> bool {
        has(&FAILING, id)
    }

    /// Node `id`'s periodic check does nothing.
    pub(crate) fn silence_check(id: NodeId) {
        SILENCED.lock().unwrap_or_else(|p| p.into_inner()).push(id);
    }

    pub(super) fn check_silenced(id: NodeId) -> bool {
        has(&SILENCED, id)
    }

    /// Holds node `id`'s next move before its record: the first receiver
    /// resolves once it is there, and it goes on once the second sender is
    /// used or dropped.
    pub(crate) fn pause_before_record(id: NodeId) -> (oneshot::Receiver<()>, oneshot::Sender<()>) {
        let (reached_tx, reached_rx) = oneshot::channel();
        let (go_tx, go_rx) = oneshot::channel();
        PAUSED
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((id, reached_tx, go_rx));
        (reached_rx, go_tx)
    }

    /// The point, in `move_replica_with`.
    pub(crate) async fn before_record(id: NodeId) {
        let armed = {
            let mut all = PAUSED.lock().unwrap_or_else(|p| p.into_inner());
            all.iter()
                .position(|(of, _, _)| *of == id)
                .map(|at| all.swap_remove(at))
        };
        if let Some((_, reached, go)) = armed {
            let _ = reached.send(());
            let _ = go.await;
        }
    }
}

/// Group 0's voters as the member `client` reaches first (its leader,
/// after a call) reports them; `None` if it cannot tell within
/// `RECORD_TIMEOUT`.
async fn group0_voters(client: &Client) -> Option<Vec<String>> {
    let report = tokio::time::timeout(RECORD_TIMEOUT, client.status())
        .await
        .ok()?
        .ok()?;
    let voters: Vec<String> = report
        .members
        .into_iter()
        .filter(|(_, voter, _)| *voter)
        .map(|(addr, _, _)| addr)
        .collect();
    Some(voters).filter(|v| !v.is_empty())
}

#[cfg(test)]
#[path = "placement_sync_tests.rs"]
mod tests;

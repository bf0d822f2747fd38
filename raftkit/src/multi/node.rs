//! A node that hosts many groups: [`MultiNode`] and its builder.
//!
//! It owns what the groups of one process share — the QUIC endpoint and
//! its [`Links`], the [`Journal`] (one write-ahead log and one fsync per
//! batch across groups), the worker pool the groups' tasks run on — and
//! the table of hosted replicas. The policies live in their own modules
//! and are wired here: [`super::quiesce`] (coalesced heartbeats),
//! [`super::hosting`] (replicas hosted on demand, orphans, retirement),
//! [`super::removal`] (asking a group whether a replica was removed),
//! [`super::placement`] (group 0).
//!
//! This file holds the node's state (the hosted-replica table, private to
//! this module, and the worker pool) and its read-only accessors. What
//! acts on the table is in child modules, so that the table stays private
//! to the node while each concern has its own file:
//!
//! - `builder`: [`MultiNodeBuilder`] and starting a node;
//! - `replicas`: creating, starting and stopping replicas
//!   ([`MultiNode::create_group`], [`MultiNode::shutdown`]);
//! - `sharding`: the placement group's replica ([`MultiNode::form_shards`]);
//! - `on_demand`: the node's background tasks, and hosting a replica on a
//!   leader's message;
//! - `retirement`: retiring removed replicas and orphans, and the
//!   membership queries of [`super::removal`];
//! - `balancing`: the leader balancer's round and the replica balancer's
//!   state on the node.
//!
//! Invariants (each child module states those its code keeps): a group
//! has at most one replica on a node (the table is keyed by group); a
//! replica is retired (tombstone first, then its journal records and
//! snapshot directory) only for a [`Retire`](super::hosting::Retire)
//! reason its policy module gives; [`MultiNode::shutdown`] stops every
//! replica before the journal closes.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::task::JoinHandle;

mod balancing;
mod builder;
mod on_demand;
mod replicas;
mod retirement;
mod sharding;

pub use builder::MultiNodeBuilder;

#[cfg(test)]
#[path = "inbox_share_tests.rs"]
mod inbox_share_tests;
#[cfg(test)]
#[path = "journal_failure_tests.rs"]
mod journal_failure_tests;
#[cfg(test)]
#[path = "listen_socket_tests.rs"]
mod listen_socket_tests;
#[cfg(test)]
#[path = "receive_budget_tests.rs"]
mod receive_budget_tests;
#[cfg(test)]
#[path = "retire_tests.rs"]
mod retire_tests;

use super::GroupId;
use super::hosting::{HostingPolicy, Tombstones};
use super::journal::{Journal, JournalStats};
use super::links::Links;
use super::placement::{PLACEMENT_GROUP, PlacementGroup};
use super::quiesce::{Hosting, Watched};
use crate::core::{Index, NodeId};
use crate::identity::node_id;
use crate::runtime::{Peer, PeerExt, PeerStatus, TickGate};
use crate::schema::SchemaBook;
use crate::storage::vfs::SharedFs;
use crate::tls::Identity;
use crate::transport::quic::QuicTransport;

/// A group's heartbeat interval and election timeout, in ticks (the
/// [`PeerBuilder`](crate::runtime::PeerBuilder) defaults).
const HEARTBEAT_TICKS: u32 = 2;
const ELECTION_TICKS: u32 = 10;

pub(super) struct Inner<S> {
    name: String,
    advertise: String,
    local_addr: SocketAddr,
    dir: PathBuf,
    fs: SharedFs,
    tick: Duration,
    snapshot_every: u64,
    /// Every replica's cap of watches per client certificate.
    watches_per_certificate: usize,
    journal: Journal,
    quic: QuicTransport,
    links: Arc<Links>,
    /// The byte budget of the messages the node's peer links read and its
    /// groups' node tasks have not taken yet (`transport::inbox_bytes`).
    #[cfg(test)]
    inbox_bytes: Arc<crate::transport::inbox_bytes::InboxBytes>,
    /// The node's schema, the one its directory recorded at start, and
    /// the peers' (from their hellos), shared by the data groups.
    schemas: Arc<SchemaBook>,
    demux: Mutex<Option<JoinHandle<()>>>,
    quiescer: Mutex<Option<JoinHandle<()>>>,
    balancer: Mutex<Option<JoinHandle<()>>>,
    /// Runs every group's apply and snapshot loops.
    pool: Pool,
    groups: Mutex<BTreeMap<GroupId, Hosted<S>>>,
    /// The replica of the placement group ([`PLACEMENT_GROUP`]), if hosted.
    placement: Mutex<Option<Peer<PlacementGroup<S>>>>,
    /// The placement replica's tick gate: group 0 quiesces like the data
    /// groups ([`super::quiesce`]).
    placement_gate: Mutex<Option<Arc<TickGate>>>,
    /// Hosting on demand and retiring removed replicas ([`super::hosting`]).
    hosting: HostingPolicy,
    /// The bytes the groups' snapshot receive buffers may hold together
    /// ([`HostingPolicy::snapshot_receive_bytes`]).
    receive_budget: Arc<crate::runtime::receive_budget::ReceiveBudget>,
    tombstones: Mutex<Tombstones>,
    /// Held while a replica retires (see [`MultiNode::shutdown`]).
    retiring: tokio::sync::Mutex<()>,
    /// Retirements whose tombstone the journal refused, with its fence:
    /// the group stays retiring here (see [`super::hosting`], "A
    /// retirement the journal refuses").
    unretired: Mutex<BTreeMap<GroupId, (Index, crate::core::Term)>>,
    /// The voters of the committed, settled configuration that removed
    /// each group's last replica retired here, kept in the data directory
    /// (bounded, see [`super::successors`]): the nodes a group went on
    /// with, which may write the placement for it while the placement
    /// still lists this node for it ([`super::placement_auth`], rule 4).
    successors: Mutex<super::successors::Successors>,
    /// The refused placement writers logged ([`super::refusal_log`]).
    refusals: Mutex<super::refusal_log::RefusalLog>,
    /// The hosting, retiring, placement-recording and replica-balancing
    /// tasks.
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// Nodes the replica balancer may place replicas on, beyond those the
    /// groups list (advertised addresses).
    known: Mutex<Vec<String>>,
    /// Targets of refused replica moves the balancer skips
    /// ([`super::balance::RefusedTargets`]).
    refused: Mutex<super::balance::RefusedTargets>,
    /// Learners that failed replica-balancing moves left, to remove
    /// (`rebalance::leaves_its_learner`): (group, the target's address).
    stray_learners: Mutex<BTreeSet<(GroupId, String)>>,
    /// The locks of replica moves per (group, target)
    /// ([`MultiNode::move_lock`]); one nobody holds is dropped.
    move_locks: Mutex<MoveLocks>,
    /// The node's certificate, for its own requests to the placement group
    /// ([`super::placement_sync`]).
    identity: Identity,
    /// Holds a retirement inside its window (tests only, see
    /// `retire_tests`).
    #[cfg(test)]
    window: Mutex<Option<Arc<retire_tests::WindowPause>>>,
    /// The options of the replica balancer's moves (tests only: the
    /// default waits 120 s for a learner to catch up).
    #[cfg(test)]
    balance_moves: Mutex<Option<super::MoveOptions>>,
}

/// The locks of replica moves per (group, target)
/// ([`MultiNode::move_lock`]).
type MoveLocks = BTreeMap<(GroupId, crate::core::NodeId), Arc<tokio::sync::RwLock<()>>>;

/// The runtime of the groups' workers (dropped without waiting: dropping
/// a runtime may happen on a task, where waiting is not allowed).
/// Where the groups' apply and snapshot loops run
/// ([`MultiNodeBuilder::worker_threads`]).
enum Pool {
    /// Threads of the node's own (taken when the node is dropped).
    Own(Option<tokio::runtime::Runtime>),
    /// The runtime that started the node.
    Caller(tokio::runtime::Handle),
}

impl Pool {
    fn handle(&self) -> Option<tokio::runtime::Handle> {
        match self {
            Pool::Own(rt) => rt.as_ref().map(|rt| rt.handle().clone()),
            Pool::Caller(handle) => Some(handle.clone()),
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        if let Pool::Own(rt) = self
            && let Some(rt) = rt.take()
        {
            rt.shutdown_background();
        }
    }
}

/// One group's replica on this node.
struct Hosted<S> {
    peer: Peer<S>,
    gate: Arc<TickGate>,
    /// When this node started hosting it (for [`super::hosting`]'s orphans).
    since: tokio::time::Instant,
    /// Whether the replica ever held a configuration listing this node
    /// (only then does a configuration without it mean a removal, see
    /// [`super::hosting::retire_reason`]).
    listed: bool,
    /// The index of the replica's membership fence (0: none): the node
    /// left the group before, and configurations up to this index speak
    /// of the earlier replica (see [`super::hosting`]).
    fence: Index,
}

impl<S> Inner<S> {
    fn groups(&self) -> MutexGuard<'_, BTreeMap<GroupId, Hosted<S>>> {
        self.groups.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn unretired(&self) -> MutexGuard<'_, BTreeMap<GroupId, (Index, crate::core::Term)>> {
        self.unretired.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn placement(&self) -> MutexGuard<'_, Option<Peer<PlacementGroup<S>>>> {
        self.placement.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn placement_gate(&self) -> Option<Arc<TickGate>> {
        self.placement_gate
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl<S: PeerExt> Hosting for Inner<S> {
    /// The data groups and, when hosted, the placement group 0: its
    /// replica quiesces like theirs (it is written only at formation and
    /// when a replica moves, so it is idle almost always).
    fn watched(&self) -> Vec<(GroupId, Watched)> {
        let placement = self.placement().as_ref().map(|p| p.watch());
        let group0 = placement
            .zip(self.placement_gate())
            .map(|(status, gate)| (PLACEMENT_GROUP, Watched { status, gate }));
        group0
            .into_iter()
            .chain(self.groups().iter().map(|(g, h)| {
                (
                    *g,
                    Watched {
                        status: h.peer.watch(),
                        gate: h.gate.clone(),
                    },
                )
            }))
            .collect()
    }

    fn peer_nodes(&self) -> Vec<crate::core::NodeId> {
        self.links.peer_nodes()
    }

    fn send_coalesced(&self, to: crate::core::NodeId, quiesced: Vec<(u64, u64, u64)>) {
        self.links.send_coalesced(to, quiesced);
    }
}

/// A node hosting any number of groups of state machine `S` on one QUIC
/// endpoint and one journal (see the [module documentation](super)).
/// Cloning shares the node.
pub struct MultiNode<S> {
    inner: Arc<Inner<S>>,
}

impl<S> Clone for MultiNode<S> {
    fn clone(&self) -> Self {
        MultiNode {
            inner: self.inner.clone(),
        }
    }
}

impl<S: PeerExt> MultiNode<S> {
    /// The node's name (`<state machine>@<advertise>`).
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The node's id (every group's replica on this node has it).
    pub fn id(&self) -> crate::core::NodeId {
        node_id(&self.inner.name)
    }

    /// The address the node listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr
    }

    /// The address other nodes reach this one at.
    pub fn advertise(&self) -> &str {
        &self.inner.advertise
    }

    /// The node's certificate (its requests to the placement group, see
    /// [`super::placement_sync`]).
    pub(super) fn identity(&self) -> &Identity {
        &self.inner.identity
    }

    /// The node's peer links (the nodes its groups listed, see
    /// [`super::placement_sync`]).
    pub(super) fn links(&self) -> &Links {
        &self.inner.links
    }

    /// Watches for snapshot chunks of `group` taken by node `node`
    /// further on than the first (a sign of progress, see
    /// [`super::moves`]).
    pub(super) fn watch_heard(
        &self,
        group: GroupId,
        node: crate::core::NodeId,
    ) -> super::links::Heard {
        self.inner.links.watch_heard(group, node)
    }

    /// Drops every `AppendEntriesResponse` from `node` from now on (tests
    /// only: a target that answers heartbeats but never catches up).
    #[cfg(test)]
    pub(crate) fn deafen_to_appends_from(&self, node: crate::core::NodeId) {
        self.inner.links.deafen_to_appends_from(node);
    }

    /// The groups this node hosts, in order.
    pub fn groups(&self) -> Vec<GroupId> {
        self.inner.groups().keys().copied().collect()
    }

    /// The groups whose replica here was retired but whose tombstone the
    /// journal refused (its storage failed): each stays retiring, neither
    /// hosted on demand nor created here, until a retry writes its
    /// tombstone, which for a failed journal takes a restart of the node
    /// (see [`hosting`](super::hosting), "A retirement the journal
    /// refuses").
    pub fn pending_retirements(&self) -> Vec<GroupId> {
        self.inner.unretired().keys().copied().collect()
    }

    /// The status of this node's replica of `group`, and whether that
    /// replica ever held a configuration listing this node (a replica
    /// hosted on demand that never did is a learner being caught up, or
    /// one a stranger started): for [`super::placement_auth`].
    pub(super) fn hosted_status(&self, group: GroupId) -> Option<(PeerStatus, bool)> {
        self.inner
            .groups()
            .get(&group)
            .map(|h| (h.peer.status(), h.listed))
    }

    /// The voters of the committed configuration that removed this node's
    /// last replica of `group` here, if it retired on one within
    /// [`super::successors::KEEP_FOR`] (kept across restarts, see
    /// [`super::successors`]): for [`super::placement_auth`].
    pub(super) fn successors(&self, group: GroupId) -> Option<Vec<NodeId>> {
        self.inner
            .successors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(group, std::time::SystemTime::now())
    }

    /// Notes a refused placement write by `writer` at `now`: `Some` when
    /// it is to be logged ([`super::refusal_log`]).
    pub(super) fn note_refusal(
        &self,
        writer: NodeId,
        now: std::time::Instant,
    ) -> Option<super::refusal_log::Logged> {
        self.inner
            .refusals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .note(writer, now)
    }

    /// This node's replica of `group`.
    pub fn group(&self, group: GroupId) -> Option<Peer<S>> {
        self.inner.groups().get(&group).map(|h| h.peer.clone())
    }

    /// The groups whose replica here is quiesced (not ticking; see
    /// [`quiesce`](super::quiesce)), the placement group 0 included.
    pub fn quiesced(&self) -> Vec<GroupId> {
        let group0 = self
            .inner
            .placement_gate()
            .filter(|g| g.is_asleep())
            .map(|_| PLACEMENT_GROUP);
        group0
            .into_iter()
            .chain(
                self.inner
                    .groups()
                    .iter()
                    .filter(|(_, h)| h.gate.is_asleep())
                    .map(|(g, _)| *g),
            )
            .collect()
    }

    /// The journal's counters (syncs, writes, groups per sync).
    pub fn journal_stats(&self) -> JournalStats {
        self.inner.journal.stats()
    }

    /// Inbound messages dropped because their group is not hosted here or
    /// its inbox was full.
    pub fn dropped_messages(&self) -> u64 {
        self.inner.links.dropped()
    }

    /// The bytes the node's snapshot receive budget holds now for all its
    /// groups together: at least what their receive buffers hold, and
    /// never more than [`HostingPolicy::snapshot_receive_bytes`] (one
    /// atomic count, read at one instant). The groups' statuses show each
    /// one's buffer (`PeerStatus::snapshot_receiving_bytes`), but each is
    /// published by its own group's task when that task next publishes, so
    /// a sum of statuses may count bytes a group already gave back and
    /// another already took.
    pub fn snapshot_receive_bytes(&self) -> u64 {
        self.inner.receive_budget.held()
    }

    /// The node's schema book (its own schema and its peers' hellos).
    pub(crate) fn schema_book(&self) -> Arc<SchemaBook> {
        self.inner.schemas.clone()
    }

    /// A handle that does not keep the node alive (the client service's).
    pub(super) fn downgrade(&self) -> std::sync::Weak<Inner<S>> {
        Arc::downgrade(&self.inner)
    }

    /// The node behind a [`MultiNode::downgrade`] handle, while it lives.
    pub(super) fn upgrade(weak: &std::sync::Weak<Inner<S>>) -> Option<MultiNode<S>> {
        weak.upgrade().map(|inner| MultiNode { inner })
    }
}

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
//! Invariants: a group has at most one replica on a node (the table is
//! keyed by group); a replica is retired (tombstone first, then its
//! journal records and snapshot directory) only for a [`Retire`] reason
//! its policy module gives; [`MultiNode::shutdown`] stops every replica
//! before the journal closes.
//!
//! Size: past 1,000 lines because the hosted-replica table is private to
//! this module, and every operation on it (start, host on demand, retire,
//! answer a membership query) must stay beside it; the decisions
//! themselves are in the policy modules above.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::info;

#[cfg(test)]
#[path = "inbox_share_tests.rs"]
mod inbox_share_tests;
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
use super::dir_schema::DirSchema;
use super::hosting::{HostingPolicy, Retire, Tombstones, retire_reason};
use super::journal::{Journal, JournalOptions, JournalStats};
use super::links::{Links, demultiplex};
use super::placement::{PLACEMENT_GROUP, PlacementGroup};
use super::quiesce::{self, Hosting, Timing, Watched};
use super::removal::{self, Asker};
use crate::core::{Index, NodeId};
use crate::error::Error;
use crate::identity::{default_name, node_id};
use crate::runtime::threads::{Threads, Worker};
use crate::runtime::{GroupStorage, Peer, PeerExt, PeerStatus, TickGate};
use crate::schema::SchemaBook;
use crate::storage::vfs::SharedFs;
use crate::storage::{FileSnapshotStore, LogStore};
use crate::tls::Identity;
use crate::transport::GroupInbound;
use crate::transport::frame::PeerFrame;
use crate::transport::quic::{QuicConfig, QuicTransport};

/// How many messages one node may queue for one peer, over all groups.
const LINK_QUEUE: usize = 1 << 16;
/// A group's heartbeat interval and election timeout, in ticks (the
/// [`PeerBuilder`](crate::runtime::PeerBuilder) defaults).
const HEARTBEAT_TICKS: u32 = 2;
const ELECTION_TICKS: u32 = 10;

/// Builds a [`MultiNode`]: `MultiNode::<S>::builder()`.
pub struct MultiNodeBuilder<S> {
    listen: Option<String>,
    /// A socket the caller bound ([`MultiNodeBuilder::listen_socket`]).
    listen_socket: Option<std::net::UdpSocket>,
    advertise: Option<String>,
    dir: Option<PathBuf>,
    identity: Option<Identity>,
    revocation_lists: Vec<Vec<u8>>,
    tick: Duration,
    snapshot_every: u64,
    fs: SharedFs,
    journal: JournalOptions,
    quiesce: bool,
    worker_threads: usize,
    balance_every: Option<Duration>,
    hosting: HostingPolicy,
    replicas_every: Option<Duration>,
    peer_connections: (usize, usize),
    handshakes: (usize, Duration),
    watches_per_certificate: usize,
    /// The peer links' frame cap (`QuicConfig::max_frame_bytes`); the
    /// node's inbox byte budget is derived from it.
    max_frame_bytes: usize,
    _sm: std::marker::PhantomData<fn() -> S>,
}

impl<S: PeerExt> MultiNodeBuilder<S> {
    /// How many threads run the apply and snapshot loops of all the
    /// node's groups (default 2). A handler or a snapshot that takes long
    /// delays the other groups' applying on its thread, never their
    /// replication.
    ///
    /// `0` runs them as tasks of the runtime that starts the node instead,
    /// beside the groups' node tasks: no thread of the node's own, and no
    /// wake-up crossing from one runtime's threads to another's for every
    /// applied batch (with 64 busy groups, `benches/multi.rs` measures
    /// about a fifth less CPU per durable write). Only for state machines
    /// whose handlers and snapshots are quick: a long one holds a worker
    /// of that runtime, and with it the groups' replication.
    pub fn worker_threads(mut self, threads: usize) -> Self {
        self.worker_threads = threads;
        self
    }

    /// Runs the leader balancer every `every` (default: off; see
    /// [`balance`](super::balance) and [`MultiNode::balance_leaders`]).
    pub fn balance_leaders(mut self, every: Option<Duration>) -> Self {
        self.balance_every = every;
        self
    }

    /// Whether a leader's message for a group this node does not host
    /// starts an empty replica of it (default on; see
    /// [`hosting`](super::hosting)).
    pub fn host_on_demand(mut self, on: bool) -> Self {
        self.hosting.on_demand = on;
        self
    }

    /// The whole hosting policy (limits of hosting on demand, orphan and
    /// quarantine times; see [`hosting`](super::hosting)).
    pub fn hosting_policy(mut self, policy: HostingPolicy) -> Self {
        self.hosting = policy;
        self
    }

    /// Runs the replica-count balancer every `every` (default: off; see
    /// [`MultiNode::balance_replicas`]).
    pub fn balance_replicas(mut self, every: Option<Duration>) -> Self {
        self.replicas_every = every;
        self
    }

    /// Whether idle groups are quiesced and their heartbeats coalesced
    /// (default on; see [`quiesce`](super::quiesce)).
    pub fn quiesce(mut self, on: bool) -> Self {
        self.quiesce = on;
        self
    }

    /// The UDP address to listen on (required, unless
    /// [`listen_socket`](Self::listen_socket) hands a socket).
    pub fn listen(mut self, addr: impl Into<String>) -> Self {
        self.listen = Some(addr.into());
        self
    }

    /// Serves on `socket`, a UDP socket the caller bound already (to port
    /// 0, say, to learn a free port): the node takes it over and binds
    /// nothing itself, so no other process can take the port between the
    /// caller learning it and the node listening on it (as it could if the
    /// caller released the port for [`listen`](Self::listen) to bind), as
    /// [`PeerBuilder::listen_socket`](crate::runtime::PeerBuilder::listen_socket)
    /// does for a single-group peer. The listen address is the socket's
    /// local address, unless `listen` names one: that must be the
    /// socket's address, or [`start`](Self::start) fails with
    /// [`Error::Rejected`] before anything is served. A start on a handed
    /// socket does not retry a failed bind.
    pub fn listen_socket(mut self, socket: std::net::UdpSocket) -> Self {
        self.listen_socket = Some(socket);
        self
    }

    /// The address other nodes reach this one at (default: `listen`). The
    /// node's name is `<state machine>@<advertise>`, its certificate's.
    pub fn advertise(mut self, addr: impl Into<String>) -> Self {
        self.advertise = Some(addr.into());
        self
    }

    /// The data directory: `journal/` (every group's log), `groups/<id>/`
    /// (each group's snapshots) and `tls/` (the node's identity).
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.dir = Some(dir.into());
        self
    }

    /// The node's certificate (a `node` certificate for its name); stored
    /// in the data directory, so a restart needs none.
    pub fn identity(mut self, identity: Identity) -> Self {
        self.identity = Some(identity);
        self
    }

    /// Certificate revocation lists (PEM, one or more `X509 CRL` blocks,
    /// signed by the cluster CA) to refuse certificates by, as etcd's
    /// `--client-crl-file`; none by default. A peer or client whose
    /// certificate is listed is refused at the TLS handshake, and so is a
    /// listed node this node dials. Not stored in the data directory: give
    /// them at every start. A list that does not parse or is not signed by
    /// the identity's CA fails [`start`](Self::start) with [`Error::Tls`].
    /// The same option as
    /// [`PeerBuilder::revocation_list_pem`](crate::runtime::PeerBuilder::revocation_list_pem),
    /// which has an example; see [`crate::tls`] (Revocation).
    pub fn revocation_list_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.revocation_lists.push(pem.into());
        self
    }

    /// The tick of every group's core (default 50 ms).
    pub fn tick(mut self, tick: Duration) -> Self {
        self.tick = tick;
        self
    }

    /// Every group snapshots after this many entries (default 10,000).
    pub fn snapshot_every(mut self, entries: u64) -> Self {
        self.snapshot_every = entries;
        self
    }

    /// The most inbound peer connections (links from other nodes) the
    /// node's QUIC endpoint serves at once: `per_node` of one node (the id
    /// of its certificate's name) and `total` in all (defaults
    /// [`DEFAULT_PEER_CONNECTIONS_PER_NODE`](crate::transport::quic::DEFAULT_PEER_CONNECTIONS_PER_NODE),
    /// 8, and
    /// [`DEFAULT_MAX_PEER_CONNECTIONS`](crate::transport::quic::DEFAULT_MAX_PEER_CONNECTIONS),
    /// 1024; at least 1 each). A node links to another over one connection
    /// for all their groups; a connection past either limit is closed
    /// before anything it sent is read, and its dialer retries with its
    /// backoff until a place is free (see `transport::peer_limits`). The
    /// same option as
    /// [`PeerBuilder::peer_connections`](crate::runtime::PeerBuilder::peer_connections).
    pub fn peer_connections(mut self, per_node: usize, total: usize) -> Self {
        self.peer_connections = (per_node.max(1), total.max(1));
        self
    }

    /// The largest frame the node's peer links carry
    /// (`QuicConfig::max_frame_bytes`, default
    /// [`DEFAULT_MAX_FRAME_BYTES`](crate::transport::frame::DEFAULT_MAX_FRAME_BYTES));
    /// the node's inbox byte budget is a few of them
    /// (`transport::inbox_bytes`). Crate-only: the tests' nodes use a
    /// small cap, so that their budget fills with a few messages.
    #[cfg(test)]
    pub(crate) fn max_frame_bytes(mut self, bytes: usize) -> Self {
        self.max_frame_bytes = bytes.max(1);
        self
    }

    /// The most inbound connections in their handshake at once and how
    /// long one may take (defaults 256 and 10 s; at least 1 and 1 s). The
    /// same option as
    /// [`PeerBuilder::handshakes`](crate::runtime::PeerBuilder::handshakes).
    pub fn handshakes(mut self, max: usize, timeout: Duration) -> Self {
        self.handshakes = (
            max.max(1),
            timeout.max(crate::transport::quic::MIN_HANDSHAKE_TIMEOUT),
        );
        self
    }

    /// The most watches of one client certificate (over all its
    /// connections) each of the node's replicas serves at once (default
    /// [`DEFAULT_WATCHES_PER_CERTIFICATE`](crate::runtime::watch::DEFAULT_WATCHES_PER_CERTIFICATE),
    /// a quarter of a replica's
    /// [`MAX_WATCHERS`](crate::runtime::watch::MAX_WATCHERS); at least 1).
    /// One more is refused with [`Error::Overloaded`] (nothing applied;
    /// retry after a backoff). The same option as
    /// [`PeerBuilder::watches_per_certificate`](crate::runtime::PeerBuilder::watches_per_certificate),
    /// applied to every group's replica (each counts its own watches).
    pub fn watches_per_certificate(mut self, watches: usize) -> Self {
        self.watches_per_certificate = watches.max(1);
        self
    }

    /// The journal's options.
    pub fn journal_options(mut self, opts: JournalOptions) -> Self {
        self.journal = opts;
        self
    }

    /// Opens the data directory, starts the QUIC endpoint and every group
    /// the journal holds.
    pub async fn start(self) -> Result<MultiNode<S>, Error> {
        let dir = self
            .dir
            .ok_or_else(|| Error::Rejected("a multi-group node needs a data directory".into()))?;
        let mut socket = self.listen_socket;
        let bound = socket
            .as_ref()
            .map(|s| {
                s.local_addr()
                    .map_err(|e| Error::Transport(format!("the listen socket's address: {e}")))
            })
            .transpose()?;
        let listen = match (self.listen, bound) {
            (Some(listen), _) => listen,
            (None, Some(bound)) => bound.to_string(),
            (None, None) => {
                return Err(Error::Rejected(
                    "a multi-group node needs a listen address (MultiNodeBuilder::listen or \
                     MultiNodeBuilder::listen_socket)"
                        .into(),
                ));
            }
        };
        let advertise = self.advertise.unwrap_or_else(|| listen.clone());
        let name = default_name(S::NAME, &advertise);
        // Before anything is written: the binary must read the log the
        // directory holds (see `dir_schema`).
        let dir_schema = DirSchema::check(&*self.fs, &dir, S::schema())?;
        let tls = dir.join("tls");
        let identity = match self.identity {
            Some(identity) => {
                identity
                    .check_node(&name)
                    .map_err(|e| Error::Tls(format!("the identity of {name}: {e}")))?;
                identity
                    .write_to(&tls, "peer")
                    .map_err(|e| Error::Storage(e.to_string()))?;
                identity
            }
            None => Identity::load(&tls, "peer").map_err(|e| {
                Error::Tls(format!("{name} has no identity in {}: {e}", tls.display()))
            })?,
        };
        let identity = self
            .revocation_lists
            .iter()
            .try_fold(identity, |identity, pem| {
                identity
                    .with_revocation_list_pem(pem)
                    .map_err(|e| Error::Tls(format!("the identity of {name}: {e}")))
            })?;
        // Refused if lost (`lost_journal`); before anything under
        // `groups/` is read or swept.
        let journal = super::lost_journal::open(&self.fs, &dir, self.journal, &Threads::default())
            .map_err(|e| Error::Storage(e.to_string()))?;
        let listen_addr: SocketAddr = match listen.parse() {
            Ok(addr) => addr,
            Err(e) => {
                journal.close().await;
                return Err(Error::Rejected(format!("listen address {listen}: {e}")));
            }
        };
        // A handed socket bound elsewhere than the listen address would
        // serve an address the node's name does not name.
        if let Some(bound) = bound
            && bound != listen_addr
        {
            journal.close().await;
            return Err(Error::Rejected(format!(
                "the listen socket is bound to {bound}, not to the listen address {listen}; \
                 nothing was served"
            )));
        }
        let handed = socket.is_some();
        // One inbox budget for all the node's groups: their messages hold
        // their charge from the link to the group's node task
        // (`transport::inbox_bytes`, `links`).
        let (group_tx, group_rx) = mpsc::channel(4096);
        let (coalesced_tx, coalesced_rx) = mpsc::channel(64);
        // Client connections: served by `service` once the groups started.
        let (clients_tx, clients_rx) = mpsc::channel(64);
        let client_identity = identity.clone();
        let mut config = QuicConfig::new(listen_addr, &name, identity, S::SCHEMA_FINGERPRINT);
        config.advertise = Some(advertise.clone());
        config.queue_capacity = LINK_QUEUE;
        config.max_frame_bytes = self.max_frame_bytes;
        // Sized from the cap the links read frames with (as a single-group
        // peer's, `PeerBuilder::start`): one maximal message always fits.
        let inbox_bytes =
            crate::transport::inbox_bytes::InboxBytes::for_frames(config.max_frame_bytes);
        (
            config.max_peer_connections_per_node,
            config.max_peer_connections,
        ) = self.peer_connections;
        (config.max_handshakes, config.handshake_timeout) = self.handshakes;
        // Hellos carry the schema, and a peer of a compatible binary is
        // accepted and recorded for the data groups' leaders
        // (`SchemaBook::check_enabled`, `check_promotion`), as between
        // single-group peers.
        let schemas = Arc::new(
            SchemaBook::new(dir_schema.local.clone(), dir_schema.stored.clone())
                .with_oldest(dir_schema.oldest.clone()),
        );
        schemas.hear_peers();
        config.schemas = Some(schemas.clone());
        // A node restarted at once may find its port still held by the
        // previous endpoint while it drains: retry briefly (as a peer does).
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        let (quic, local_addr) = loop {
            match QuicTransport::start_with(
                config.clone(),
                crate::transport::inbox_bytes::InboxTx::Plain(mpsc::channel(1).0),
                Some(crate::transport::inbox_bytes::GroupTx::Charged(
                    group_tx.clone(),
                    inbox_bytes.clone(),
                )),
                Some(clients_tx.clone()),
                // Taken by the first attempt: a retry would bind the
                // address again, reopening the window `listen_socket`
                // closes.
                socket.take(),
            )
            .await
            {
                Ok(ok) => break ok,
                Err(crate::transport::quic::TransportError::Bind { source, .. })
                    if source.kind() == std::io::ErrorKind::AddrInUse
                        && !handed
                        && tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
                Err(e) => {
                    journal.close().await;
                    return Err(Error::Transport(format!("cannot listen on {listen}: {e}")));
                }
            }
        };
        let links = Links::new(quic.clone(), inbox_bytes.group_share());
        let (host_tx, host_rx) = mpsc::channel(64);
        links.host_on_demand(node_id(&name), host_tx);
        super::hosting::sweep(&*self.fs, &dir, &journal.groups());
        let pool = match self.worker_threads {
            0 => Pool::Caller(tokio::runtime::Handle::current()),
            threads => match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(threads)
                .thread_name("raftkit-groups")
                .enable_all()
                .build()
            {
                Ok(rt) => Pool::Own(Some(rt)),
                Err(e) => {
                    quic.shutdown().await;
                    journal.close().await;
                    return Err(Error::Unavailable(format!(
                        "cannot start the group workers: {e}"
                    )));
                }
            },
        };
        let (member_tx, member_rx) = mpsc::channel(256);
        // Rule 4's successors kept by earlier runs (`super::successors`).
        let successors =
            super::successors::Successors::load(&*self.fs, &dir, std::time::SystemTime::now());
        let node = MultiNode {
            inner: Arc::new(Inner {
                name,
                advertise,
                local_addr,
                dir,
                fs: self.fs,
                tick: self.tick,
                snapshot_every: self.snapshot_every,
                watches_per_certificate: self.watches_per_certificate,
                journal,
                quic,
                links,
                #[cfg(test)]
                inbox_bytes,
                schemas,
                demux: Mutex::new(None),
                quiescer: Mutex::new(None),
                balancer: Mutex::new(None),
                pool,
                groups: Mutex::new(BTreeMap::new()),
                placement: Mutex::new(None),
                placement_gate: Mutex::new(None),
                receive_budget: crate::runtime::receive_budget::ReceiveBudget::new(
                    self.hosting.receive_budget_bytes(),
                ),
                hosting: self.hosting,
                tombstones: Mutex::new(Default::default()),
                retiring: tokio::sync::Mutex::new(()),
                unretired: Mutex::new(BTreeMap::new()),
                successors: Mutex::new(successors),
                refusals: Mutex::new(super::refusal_log::RefusalLog::default()),
                tasks: Mutex::new(Vec::new()),
                known: Mutex::new(Vec::new()),
                refused: Mutex::new(Default::default()),
                stray_learners: Mutex::new(BTreeSet::new()),
                move_locks: Mutex::new(BTreeMap::new()),
                identity: client_identity,
                #[cfg(test)]
                window: Mutex::new(None),
                #[cfg(test)]
                balance_moves: Mutex::new(None),
            }),
        };
        node.start_removal(member_rx);
        if self.quiesce {
            let timing = Timing {
                interval: self.tick * HEARTBEAT_TICKS,
                timeout: self.tick * ELECTION_TICKS,
                max_listed: crate::transport::frame::MAX_QUIESCED_PER_FRAME,
            };
            let task = tokio::spawn(quiesce::run(
                Arc::downgrade(&node.inner),
                coalesced_rx,
                timing,
            ));
            if let Ok(mut q) = node.inner.quiescer.lock() {
                *q = Some(task);
            }
        }
        if let Some(every) = self.balance_every {
            let weak = Arc::downgrade(&node.inner);
            let task = tokio::spawn(async move {
                let mut ticker = tokio::time::interval(every);
                ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    ticker.tick().await;
                    let Some(inner) = weak.upgrade() else { return };
                    MultiNode { inner }.balance_leaders().await;
                }
            });
            if let Ok(mut b) = node.inner.balancer.lock() {
                *b = Some(task);
            }
        }
        let existing = node.inner.journal.groups();
        for group in &existing {
            let started = if *group == PLACEMENT_GROUP {
                node.start_placement(None).await.map(drop)
            } else {
                node.start_group(*group, None).await.map(drop)
            };
            if let Err(e) = started {
                node.shutdown().await.ok();
                return Err(e);
            }
        }
        // Every step that can fail has passed: the directory is this
        // binary's now (see `dir_schema`). No peer's message has reached a
        // group yet: they wait for the demultiplexer, started after.
        if let Err(e) = dir_schema.record(&*node.inner.fs, &node.inner.dir) {
            node.shutdown().await.ok();
            return Err(e);
        }
        let demux = tokio::spawn(demultiplex(
            node.inner.links.clone(),
            group_rx,
            coalesced_tx,
            member_tx,
        ));
        if let Ok(mut d) = node.inner.demux.lock() {
            *d = Some(demux);
        }
        // Hosting on demand starts only now: the endpoint already listens,
        // and a leader's message for a group of the journal that the loop
        // above had not started yet would otherwise start a second replica
        // of it over the same log (two cores voting from one hard state).
        // Messages offered meanwhile wait in the channel and are delivered
        // to the replicas started above.
        node.start_hosting(host_rx, self.replicas_every);
        tokio::spawn(crate::runtime::client_service::serve_front(
            super::service::Front::new(&node),
            clients_rx,
            crate::transport::frame::DEFAULT_MAX_FRAME_BYTES,
        ));
        info!(name = %node.inner.name, addr = %local_addr, groups = existing.len(), "multi-group node started");
        Ok(node)
    }
}

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
    /// A builder with the defaults.
    pub fn builder() -> MultiNodeBuilder<S> {
        MultiNodeBuilder {
            listen: None,
            listen_socket: None,
            advertise: None,
            dir: None,
            identity: None,
            revocation_lists: Vec::new(),
            tick: Duration::from_millis(50),
            snapshot_every: 10_000,
            fs: crate::storage::vfs::real(),
            journal: JournalOptions::default(),
            quiesce: true,
            worker_threads: 2,
            balance_every: None,
            hosting: HostingPolicy::default(),
            replicas_every: None,
            peer_connections: (
                crate::transport::quic::DEFAULT_PEER_CONNECTIONS_PER_NODE,
                crate::transport::quic::DEFAULT_MAX_PEER_CONNECTIONS,
            ),
            handshakes: (
                crate::transport::quic::DEFAULT_MAX_HANDSHAKES,
                crate::transport::quic::DEFAULT_HANDSHAKE_TIMEOUT,
            ),
            watches_per_certificate: crate::runtime::watch::DEFAULT_WATCHES_PER_CERTIFICATE,
            max_frame_bytes: crate::transport::frame::DEFAULT_MAX_FRAME_BYTES,
            _sm: std::marker::PhantomData,
        }
    }

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

    /// One round of the leader balancer ([`balance`](super::balance)):
    /// starts transferring leaderships this node holds beyond its even
    /// share to the voters that lead the fewest groups. Returns the
    /// transfers started, `(group, target node)`.
    pub async fn balance_leaders(&self) -> Vec<(GroupId, crate::core::NodeId)> {
        let peers: Vec<(GroupId, Peer<S>)> = self
            .inner
            .groups()
            .iter()
            .map(|(g, h)| (*g, h.peer.clone()))
            .collect();
        let view: Vec<super::balance::GroupView> = peers
            .iter()
            .map(|(g, p)| {
                let s = p.status();
                super::balance::GroupView {
                    group: *g,
                    leader: s.leader,
                    voters: s.members.iter().filter(|m| m.voter).map(|m| m.id).collect(),
                }
            })
            .collect();
        let mut started = Vec::new();
        for (group, target) in super::balance::plan(self.id(), &view) {
            let Some((_, peer)) = peers.iter().find(|(g, _)| *g == group) else {
                continue;
            };
            match peer.transfer_leadership(target).await {
                Ok(()) => {
                    info!(
                        group,
                        target, "leadership transfer started to balance leaders"
                    );
                    started.push((group, target));
                }
                Err(e) => {
                    tracing::debug!(group, target, error = %e, "leadership transfer not started")
                }
            }
        }
        started
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

    /// Creates `group` on this node as a voter of a new group whose voters
    /// are the nodes at `members` (their advertised addresses, this node's
    /// included or not); each member node creates it with the same list.
    /// A group this node already hosts is returned as it is — unless this
    /// node founded it, never left it, and its replica holds no
    /// configuration (a failure between the durable creation and the
    /// bootstrap, here or before a restart): that replica is bootstrapped
    /// with `members` now, as a fresh create would (a replica hosted on
    /// demand never is, nor one hosted again after this node left the
    /// group). One it left and does not host is refused with
    /// [`Error::Rejected`], also while its replica is still being retired.
    pub async fn create_group(&self, group: GroupId, members: &[String]) -> Result<Peer<S>, Error> {
        if group == PLACEMENT_GROUP {
            return Err(Error::Rejected(
                "group 0 is the placement group (see `form_shards`)".into(),
            ));
        }
        // A retirement under way has taken the replica out of the map but
        // not yet written its tombstone: wait for it, or this would start
        // an empty replica of a group this node just left.
        let retiring = self.inner.retiring.lock().await;
        if let Some(peer) = self.group(group) {
            // Held on: no retirement takes the replica while it restarts.
            let _retiring = retiring;
            return self.bootstrap_unformed(group, peer, members).await;
        }
        if self.inner.unretired().contains_key(&group) {
            // Its old log is still in the journal (see `hosting`).
            return Err(Error::Rejected(format!(
                "this node's replica of group {group} is still retiring: its tombstone could not be written (restart the node)"
            )));
        }
        if self.inner.journal.was_removed(group) {
            // Bootstrapped as a voter, an empty replica under the old
            // replica's id could complete a quorum without the entries the
            // old replica acknowledged; a move brings the group back as a
            // learner behind its fence instead (see `hosting`).
            return Err(Error::Rejected(format!(
                "this node left group {group}; move a replica back to it instead"
            )));
        }
        // Before the `Create` record: a failure between it and the
        // bootstrap must leave a replica this call, retried, bootstraps.
        super::hosting::mark_founded(&*self.inner.fs, &self.inner.dir, group)
            .map_err(|e| Error::Storage(e.to_string()))?;
        self.inner
            .journal
            .create_group(group)
            .map_err(|e| Error::Storage(e.to_string()))?;
        // A retirement starting now cannot take this group: it is not in
        // the map until it has started.
        drop(retiring);
        self.start_group(group, Some(members.to_vec())).await
    }

    /// `peer`, this node's replica of `group`, as it is; or, if this node
    /// founded the group ([`hosting::mark_founded`](super::hosting::mark_founded))
    /// and the replica holds no configuration (a failure came between the
    /// `Create` record and the bootstrap, and its log is empty), the
    /// replica restarted over its log with the founding `members`: the
    /// builder bootstraps a log that is still empty, as a fresh create
    /// does. A replica hosted on demand is never founded here. The caller
    /// holds the `retiring` lock.
    ///
    /// A group this node left (a tombstone in the journal) is never
    /// bootstrapped, whatever its markers say: its replica here now was
    /// hosted again by a move, behind the removal's fence, and catches up
    /// from the group's leader as a learner (see `hosting`, "Moving
    /// back"); bootstrapped, it would hold a voter configuration under
    /// the old replica's id without the entries that replica acknowledged.
    /// The `founded` marker is deleted after the tombstone is durable
    /// (`hosting::delete_group_files`), and a deletion that failed leaves
    /// it behind while the journal holds the group again.
    async fn bootstrap_unformed(
        &self,
        group: GroupId,
        peer: Peer<S>,
        members: &[String],
    ) -> Result<Peer<S>, Error> {
        if self.inner.journal.was_removed(group) {
            tracing::debug!(group, node = %self.inner.name, "not bootstrapping a replica of a group this node left");
            return Ok(peer);
        }
        let st = peer.status();
        if st.config_index > 0
            || !st.members.is_empty()
            || !super::hosting::was_founded(&*self.inner.fs, &self.inner.dir, group)
        {
            return Ok(peer);
        }
        let Some(h) = self.inner.groups().remove(&group) else {
            return Ok(peer);
        };
        info!(group, node = %self.inner.name, "bootstrapping a group whose creation failed before its bootstrap");
        // A message arriving meanwhile starts no replica: the journal
        // holds the group.
        h.peer.shutdown().await?;
        self.inner.links.unregister(group);
        self.start_group(group, Some(members.to_vec())).await
    }

    async fn start_group(
        &self,
        group: GroupId,
        members: Option<Vec<String>>,
    ) -> Result<Peer<S>, Error> {
        let schemas = Some(self.inner.schemas.clone());
        let (peer, gate) = self.start_replica::<S>(group, members, schemas).await?;
        let me = self.id();
        let fence = self
            .inner
            .journal
            .fence(group)
            .map_or(0, |(index, _)| index);
        // Listed before a restart (durable marker), or by the configuration
        // it starts with (one past the fence: see `hosting`).
        let st = peer.status();
        let listed = super::hosting::was_listed(&*self.inner.fs, &self.inner.dir, group)
            || (st.config_index > fence && st.members.iter().any(|m| m.id == me));
        self.inner.groups().insert(
            group,
            Hosted {
                peer: peer.clone(),
                gate,
                since: tokio::time::Instant::now(),
                listed,
                fence,
            },
        );
        Ok(peer)
    }

    /// Starts this node's replica of `group`, a group of state machine `T`
    /// (`S`, or [`PlacementGroup`] for group 0), whose leader checks
    /// writes and promotions against `schemas` (the node's, for `S`; none:
    /// a book of the replica's own, which hears no hellos).
    async fn start_replica<T: PeerExt>(
        &self,
        group: GroupId,
        members: Option<Vec<String>>,
        schemas: Option<Arc<SchemaBook>>,
    ) -> Result<(Peer<T>, Arc<TickGate>), Error> {
        let inner = &self.inner;
        let snap_dir = inner
            .dir
            .join("groups")
            .join(group.to_string())
            .join("snapshots");
        let snapshots = FileSnapshotStore::open_in(inner.fs.clone(), &snap_dir, 1)
            .map_err(|e| Error::Storage(e.to_string()))?;
        let journal = inner.journal.clone();
        let storage = GroupStorage {
            log: Box::new(inner.journal.log(group)),
            snapshots: Box::new(snapshots),
            sink: Box::new(move |snaps| Box::new(journal.sink(group, snaps))),
            places: (inner.dir.join("journal"), snap_dir),
        };
        let links = inner.links.clone();
        let gate = Arc::new(TickGate::default());
        let pool = inner
            .pool
            .handle()
            .ok_or_else(|| Error::Unavailable("the node is stopping".into()))?;
        let threads = Threads::Custom(Arc::new(move |_name: &str, body| {
            Ok(Worker::Task(pool.spawn(body)))
        }));
        let mut builder = T::peer()
            .name(inner.name.clone())
            .listen(inner.advertise.clone())
            .advertise(inner.advertise.clone())
            .in_memory()
            .tick(inner.tick)
            .snapshot_every(inner.snapshot_every)
            .watches_per_certificate(inner.watches_per_certificate)
            .group_storage(storage)
            .tick_gate(gate.clone())
            // Each busy replica rebuilt its status's members, histograms
            // and addresses every millisecond: with 64 groups a tenth of
            // the node's CPU per write (`benches/multi.rs`). The policies
            // reading them (quiescence, balancing, moves, retirement) act
            // at tick granularity anyway.
            .status_interval(inner.tick)
            .gather(true)
            // A replica of a group this node left before (a move back):
            // see `hosting` on why it must not count itself in the group's
            // older configurations.
            .membership_fence(inner.journal.fence(group))
            // One snapshot receive budget for all the node's groups; a
            // snapshot larger than it could never be received.
            .receive_budget(inner.receive_budget.clone())
            .max_snapshot_bytes(
                inner
                    .hosting
                    .receive_budget_bytes()
                    .min(crate::core::config::DEFAULT_MAX_SNAPSHOT_BYTES),
            )
            .threads(threads)
            .charged_transport(move |_id, inbox| {
                links.register(group, inbox);
                Arc::new(links.link(group))
            });
        if let Some(members) = members {
            builder = builder.bootstrap_members(members);
        }
        if let Some(schemas) = schemas {
            builder = builder.schema_book(schemas);
        }
        let peer = builder.start().await?;
        Ok((peer, gate))
    }

    /// Stops the node as a crash of its process would, for fault-injection
    /// tests: every group's node task is aborted where it is (writes not yet
    /// handed to the journal are lost, nothing is flushed or answered), the
    /// node's own tasks are aborted, the endpoint closes, and the journal's
    /// writer stops after the batch it holds (a crash a moment later). The
    /// data directory is then as a killed process leaves it; start a new
    /// node on it to recover.
    pub async fn kill(&self) {
        for task in [
            &self.inner.quiescer,
            &self.inner.balancer,
            &self.inner.demux,
        ] {
            if let Some(task) = task.lock().ok().and_then(|mut t| t.take()) {
                task.abort();
            }
        }
        for task in self
            .inner
            .tasks
            .lock()
            .map(|mut t| std::mem::take(&mut *t))
            .unwrap_or_default()
        {
            task.abort();
        }
        let hosted = std::mem::take(&mut *self.inner.groups());
        if let Some(peer) = self.inner.placement().take() {
            peer.abort();
            self.inner.links.unregister(PLACEMENT_GROUP);
        }
        for (group, h) in hosted {
            h.peer.abort();
            self.inner.links.unregister(group);
        }
        self.inner.quic.shutdown().await;
        self.inner.journal.close().await;
        info!(name = %self.inner.name, "node killed");
    }

    /// Stops every group (each flushes its writes to the journal), then the
    /// endpoint. Returns the first storage error a group stopped with.
    pub async fn shutdown(&self) -> Result<(), Error> {
        // Lets a retirement under way finish (its journal record included)
        // and starts no other.
        let _retiring = self.inner.retiring.lock().await;
        for task in [&self.inner.quiescer, &self.inner.balancer] {
            if let Some(task) = task.lock().ok().and_then(|mut t| t.take()) {
                task.abort();
            }
        }
        for task in self
            .inner
            .tasks
            .lock()
            .map(|mut t| std::mem::take(&mut *t))
            .unwrap_or_default()
        {
            task.abort();
        }
        let hosted = std::mem::take(&mut *self.inner.groups());
        let mut first = Ok(());
        let placement = self.inner.placement().take();
        if let Some(peer) = placement {
            first = peer.shutdown().await;
            self.inner.links.unregister(PLACEMENT_GROUP);
        }
        for (group, h) in hosted {
            let r = h.peer.shutdown().await;
            self.inner.links.unregister(group);
            if first.is_ok() {
                first = r;
            }
        }
        self.inner.quic.shutdown().await;
        let demux = self.inner.demux.lock().ok().and_then(|mut d| d.take());
        if let Some(demux) = demux {
            demux.abort();
        }
        self.inner.journal.close().await;
        first
    }
}

/// Sharding: the placement group (see [`placement`](super::placement)).
impl<S: PeerExt> MultiNode<S> {
    /// This node's replica of the placement group, if it hosts it.
    pub fn placement(&self) -> Option<Peer<PlacementGroup<S>>> {
        self.inner.placement().clone()
    }

    /// Forms a sharded deployment over the nodes at `members` (advertised
    /// addresses; every member node calls this with the same arguments):
    /// the placement group 0 and data groups `1..=shards`, each with a
    /// voter on every member, and — through whichever node leads group 0 —
    /// the placement that splits the hash space evenly between the data
    /// groups ([`placement::even`](super::placement::even)). Idempotent: a
    /// restarted node that already hosts the groups only makes sure the
    /// placement gets written.
    pub async fn form_shards(&self, shards: u64, members: &[String]) -> Result<(), Error> {
        if shards == 0 {
            return Err(Error::Rejected("a sharded deployment needs a shard".into()));
        }
        let placement = match self.placement() {
            Some(p) => self.bootstrap_unformed_placement(p, members).await?,
            None => {
                super::hosting::mark_founded(&*self.inner.fs, &self.inner.dir, PLACEMENT_GROUP)
                    .map_err(|e| Error::Storage(e.to_string()))?;
                self.inner
                    .journal
                    .create_group(PLACEMENT_GROUP)
                    .map_err(|e| Error::Storage(e.to_string()))?;
                self.start_placement(Some(members.to_vec())).await?
            }
        };
        for group in 1..=shards {
            if self.inner.journal.was_removed(group) {
                continue; // moved away from this node: never re-formed here
            }
            match self.create_group(group, members).await {
                Ok(_) => {}
                // Retired while `create_group` waited for it: likewise.
                Err(Error::Rejected(_)) if self.inner.journal.was_removed(group) => {}
                Err(e) => return Err(e),
            }
        }
        let plan = super::placement::even(shards, members);
        tokio::spawn(super::service::propose_formation(placement, plan));
        Ok(())
    }

    /// [`Self::bootstrap_unformed`] for the placement group's replica
    /// (never hosted on demand nor retired: no lock to hold).
    async fn bootstrap_unformed_placement(
        &self,
        peer: Peer<PlacementGroup<S>>,
        members: &[String],
    ) -> Result<Peer<PlacementGroup<S>>, Error> {
        let st = peer.status();
        if st.config_index > 0
            || !st.members.is_empty()
            || !super::hosting::was_founded(&*self.inner.fs, &self.inner.dir, PLACEMENT_GROUP)
        {
            return Ok(peer);
        }
        info!(node = %self.inner.name, "bootstrapping the placement group, whose creation failed before its bootstrap");
        *self.inner.placement() = None;
        peer.shutdown().await?;
        self.inner.links.unregister(PLACEMENT_GROUP);
        self.start_placement(Some(members.to_vec())).await
    }

    async fn start_placement(
        &self,
        members: Option<Vec<String>>,
    ) -> Result<Peer<PlacementGroup<S>>, Error> {
        let (peer, gate) = self
            .start_replica::<PlacementGroup<S>>(PLACEMENT_GROUP, members, None)
            .await?;
        *self.inner.placement() = Some(peer.clone());
        *self
            .inner
            .placement_gate
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(gate);
        Ok(peer)
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

/// Hosting on demand and retiring removed replicas (see [`super::hosting`]).
impl<S: PeerExt> MultiNode<S> {
    fn start_hosting(
        &self,
        mut host_rx: mpsc::Receiver<super::links::Hosting>,
        replicas_every: Option<Duration>,
    ) {
        let weak = Arc::downgrade(&self.inner);
        let hoster = tokio::spawn(async move {
            while let Some((group, msg, charge)) = host_rx.recv().await {
                let Some(inner) = weak.upgrade() else { return };
                MultiNode { inner }
                    .host_on_demand_charged(group, msg, charge)
                    .await;
            }
        });
        let weak = Arc::downgrade(&self.inner);
        let every = self.inner.tick * ELECTION_TICKS;
        let retirer = tokio::spawn(async move {
            let mut ticker = tokio::time::interval(every);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // Asks after two election timeouts without a leader, at most
            // once per two election timeouts (see `super::removal`).
            let mut asker = Asker::new(every * 2, every * 2);
            loop {
                ticker.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                inner.links.prune_departed();
                let node = MultiNode { inner };
                node.retire_removed().await;
                node.ask_membership(&mut asker);
            }
        });
        let mut tasks = vec![hoster, retirer, super::placement_sync::spawn(self, every)];
        if let Some(every) = replicas_every {
            let weak = Arc::downgrade(&self.inner);
            tasks.push(tokio::spawn(async move {
                let mut ticker = tokio::time::interval(every);
                ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    ticker.tick().await;
                    let Some(inner) = weak.upgrade() else { return };
                    let node = MultiNode { inner };
                    if let Err(e) = node.balance_replicas().await {
                        tracing::debug!(node = %node.name(), error = %e, "replica balancing round failed");
                    }
                }
            }));
        }
        if let Ok(mut t) = self.inner.tasks.lock() {
            t.extend(tasks);
        }
    }

    /// Tells the replica balancer about nodes (advertised addresses) it may
    /// place replicas on besides those the node's groups list: a new node
    /// hosts nothing, so no group lists it yet.
    pub fn set_known_nodes(&self, addrs: Vec<String>) {
        if let Ok(mut k) = self.inner.known.lock() {
            *k = addrs;
        }
    }

    /// The options of the replica balancer's moves.
    pub(super) fn balance_move_options(&self) -> super::MoveOptions {
        #[cfg(test)]
        if let Some(opts) = self.inner.balance_moves.lock().ok().and_then(|o| o.clone()) {
            return opts;
        }
        super::MoveOptions::default()
    }

    /// Sets the options of the replica balancer's moves (tests only).
    #[cfg(test)]
    pub(super) fn set_balance_move_options(&self, opts: super::MoveOptions) {
        if let Ok(mut o) = self.inner.balance_moves.lock() {
            *o = Some(opts);
        }
    }

    /// Runs `f` on the replica balancer's refused targets (a poisoned lock:
    /// on a fresh, empty set).
    pub(crate) fn refused_targets<T>(
        &self,
        f: impl FnOnce(&mut super::balance::RefusedTargets) -> T,
    ) -> T {
        match self.inner.refused.lock() {
            Ok(mut r) => f(&mut r),
            Err(_) => f(&mut Default::default()),
        }
    }

    /// Runs `f` on the learners failed replica-balancing moves left (a
    /// poisoned lock: on a fresh, empty set).
    pub(super) fn stray_learners<T>(
        &self,
        f: impl FnOnce(&mut BTreeSet<(GroupId, String)>) -> T,
    ) -> T {
        match self.inner.stray_learners.lock() {
            Ok(mut s) => f(&mut s),
            Err(_) => f(&mut BTreeSet::new()),
        }
    }

    /// The lock of replica moves to node `to` in `group`: every move to
    /// the pair holds it shared while it runs, the replica balancer's
    /// removal of a stray learner there exclusively (see
    /// [`super::moves`], "Replica balancing").
    pub(super) fn move_lock(
        &self,
        group: GroupId,
        to: crate::core::NodeId,
    ) -> Arc<tokio::sync::RwLock<()>> {
        let mut locks = self
            .inner
            .move_locks
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        // Held by nobody (only the map refers to it): dropped.
        locks.retain(|_, l| Arc::strong_count(l) > 1);
        locks.entry((group, to)).or_default().clone()
    }

    /// The node's schema book (its own schema and its peers' hellos).
    pub(crate) fn schema_book(&self) -> Arc<SchemaBook> {
        self.inner.schemas.clone()
    }

    /// The nodes given to [`set_known_nodes`](Self::set_known_nodes).
    pub fn known_nodes(&self) -> Vec<String> {
        self.inner
            .known
            .lock()
            .map(|k| k.clone())
            .unwrap_or_default()
    }

    /// Starts an empty replica of `group` on a leader's message for it (if
    /// the policy allows), then hands it the message.
    #[cfg(test)]
    async fn host_on_demand(&self, group: GroupId, msg: crate::core::Message) {
        self.host_on_demand_charged(group, msg, None).await;
    }

    /// [`Self::host_on_demand`] for a message holding `charge` of the
    /// node's inbox budget (given back if it is not delivered).
    async fn host_on_demand_charged(
        &self,
        group: GroupId,
        msg: crate::core::Message,
        charge: Option<crate::transport::inbox_bytes::InboxCharge>,
    ) {
        let inner = &self.inner;
        // Not while a retirement is under way: it took its replica out of
        // the table before its tombstone (and fence) is written.
        // The placement group is never hosted on demand: its replica is a
        // `PlacementGroup`, not an `S`, lives outside the group table (so
        // `self.group` never shows it), and joins only by `form_shards` or
        // a restart. A message for it before it is registered is dropped;
        // its leader resends.
        if group == PLACEMENT_GROUP {
            tracing::debug!(
                group,
                from = msg.from,
                "not hosting the placement group on demand"
            );
            return;
        }
        let retiring = inner.retiring.lock().await;
        if self.group(group).is_none() {
            if inner.unretired().contains_key(&group) {
                // Its old log is still in the journal (see `hosting`).
                tracing::debug!(
                    group,
                    from = msg.from,
                    "not hosting a group whose retirement is pending"
                );
                return;
            }
            let policy = &inner.hosting;
            // A group this node left comes back behind the fence of its
            // removal (`start_replica`, see `super::hosting`): the new
            // replica starts in the fence's term, and answers a leader of an
            // earlier term with it (Raft §5.1). A removal without a known
            // fence (an older journal's, or an unreadable one) never.
            let unfenced = inner.journal.fence(group) == Some(super::journal::LEGACY_FENCE);
            let quarantined = unfenced
                || inner
                    .tombstones
                    .lock()
                    .map(|mut t| t.quarantined(group, policy.quarantine))
                    .unwrap_or(true);
            let full = inner.groups().len() >= policy.max_groups;
            if !policy.on_demand || quarantined || full {
                tracing::debug!(
                    group,
                    from = msg.from,
                    quarantined,
                    full,
                    "not hosting a group on demand"
                );
                return;
            }
            // An earlier replica's markers left by a failed deletion
            // would pass for the new replica's (a leftover `listed` retires
            // it at a configuration that predates its addition): deleted
            // first, or the group is not hosted (its leader resends).
            if let Err(e) = super::hosting::clear_markers(&*inner.fs, &inner.dir, group) {
                tracing::warn!(group, error = %e, "cannot delete an earlier replica's markers; not hosting the group on demand");
                return;
            }
            if let Err(e) = inner.journal.create_group(group) {
                tracing::warn!(group, error = %e, "cannot record a group hosted on demand");
                return;
            }
            match self.start_group(group, None).await {
                Ok(_) => {
                    // Its answers must reach the leader: a node the group
                    // left has no link to it any more.
                    inner.links.link_joining(group, msg.from);
                    info!(
                        group,
                        from = msg.from,
                        term = msg.term,
                        fence = ?inner.journal.fence(group),
                        "hosting an empty replica on demand"
                    )
                }
                Err(e) => {
                    tracing::warn!(group, error = %e, "cannot start a replica on demand");
                    return;
                }
            }
        }
        drop(retiring);
        inner.links.deliver(group, msg, charge);
    }

    /// Retires every replica that a committed configuration removed, and
    /// every orphan (see [`super::hosting`]).
    async fn retire_removed(&self) {
        self.retry_tombstones().await;
        let me = self.id();
        let mut newly_listed = Vec::new();
        let due: Vec<(GroupId, Retire)> = self
            .inner
            .groups()
            .iter_mut()
            .filter_map(|(g, h)| {
                let w = h.peer.watch();
                let st = w.borrow();
                // Listed by a committed configuration only: an uncommitted
                // one that adds this node may be rolled back by a new
                // leader, and then a committed one without it is no removal.
                if !h.listed
                    && st.config_index > h.fence
                    && st.commit >= st.config_index
                    && st.members.iter().any(|m| m.id == me)
                {
                    h.listed = true;
                    newly_listed.push(*g);
                }
                let hosted_for = h.since.elapsed();
                let quiet_for = st
                    .leader_contact
                    .map_or(hosted_for, |at| at.elapsed().min(hosted_for));
                retire_reason(me, &st, quiet_for, &self.inner.hosting, h.listed, h.fence)
                    .map(|r| (*g, r))
            })
            .collect();
        for group in newly_listed {
            if let Err(e) = super::hosting::mark_listed(&*self.inner.fs, &self.inner.dir, group) {
                // Kept in memory; after a restart this replica is retired
                // only on its group leader's word (see `super::removal`).
                tracing::warn!(group, error = %e, "cannot record that a replica was listed");
            }
        }
        for (group, reason) in due {
            if let Err(e) = self.retire(group, reason).await {
                tracing::warn!(group, error = %e, "cannot retire a removed replica");
            }
        }
    }

    /// Asks the members of each group whose replica here is not listed by
    /// its latest configuration, or has known no leader for a while,
    /// whether it is still a member (see [`super::removal`]).
    fn ask_membership(&self, asker: &mut Asker) {
        let me = self.id();
        let now = tokio::time::Instant::now();
        let asks: Vec<(GroupId, Vec<crate::core::NodeId>)> = {
            let groups = self.inner.groups();
            let hosted: Vec<GroupId> = groups.keys().copied().collect();
            asker.retain(&hosted);
            groups
                .iter()
                .map(|(g, h)| {
                    let w = h.peer.watch();
                    let st = w.borrow();
                    (*g, asker.ask(me, *g, &st, now))
                })
                .filter(|(_, to)| !to.is_empty())
                .collect()
        };
        for (group, to) in asks {
            tracing::debug!(group, ?to, "asking whether this node is still a member");
            for node in to {
                self.inner
                    .links
                    .send_control(node, PeerFrame::MemberQuery { group });
            }
        }
    }

    /// Answers the membership queries of other nodes, and retires a
    /// replica on an answer that shows its removal committed (see
    /// [`super::removal`]).
    fn start_removal(&self, mut inbound: mpsc::Receiver<GroupInbound>) {
        let weak = Arc::downgrade(&self.inner);
        let task = tokio::spawn(async move {
            while let Some(item) = inbound.recv().await {
                let Some(inner) = weak.upgrade() else { return };
                MultiNode { inner }.on_membership(item).await;
            }
        });
        if let Ok(mut t) = self.inner.tasks.lock() {
            t.push(task);
        }
    }

    async fn on_membership(&self, item: GroupInbound) {
        match item {
            GroupInbound::MemberQuery { from, addr, group } => {
                // Only a group hosted here has anything to tell.
                let Some(peer) = self.group(group) else {
                    return;
                };
                let answer = removal::answer_of(&peer.watch().borrow());
                // The asker refuses a longer list (and drops the link); no
                // configuration in force is longer (`MAX_MEMBERS` is
                // checked on every path that takes one). Not answering is
                // safe: the asker asks again, or goes on waiting.
                if answer.members.len() > crate::core::MAX_MEMBERS {
                    tracing::warn!(
                        group,
                        asker = from,
                        members = answer.members.len(),
                        max = crate::core::MAX_MEMBERS,
                        "membership too large to answer; not answered"
                    );
                    return;
                }
                if self.inner.links.link_asker(from, addr) {
                    self.inner
                        .links
                        .send_control(from, PeerFrame::MemberAnswer { group, answer });
                }
            }
            GroupInbound::MemberAnswer {
                from,
                group,
                answer,
            } => {
                let Some((peer, listed, fence)) = self
                    .inner
                    .groups()
                    .get(&group)
                    .map(|h| (h.peer.clone(), h.listed, h.fence))
                else {
                    return;
                };
                let st = peer.watch().borrow().clone();
                let removed = removal::judge(self.id(), &st, listed, fence, from, &answer);
                if removed {
                    info!(
                        group,
                        by = from,
                        config_index = answer.config_index,
                        commit = answer.commit,
                        "a member says a committed configuration removed this node's replica"
                    );
                    let removal = (answer.config_index, answer.term);
                    if let Err(e) = self.retire(group, Retire::Removed(removal)).await {
                        tracing::warn!(group, error = %e, "cannot retire a removed replica");
                    }
                }
            }
            GroupInbound::Msg { .. } | GroupInbound::Coalesced { .. } => {}
        }
    }

    /// Stops `group`'s replica here and deletes its state: the journal's
    /// removal record first (durable, with the fence of any later replica
    /// of the group here, see `hosting`), then its snapshot files.
    async fn retire(&self, group: GroupId, reason: Retire) -> Result<(), Error> {
        // Held to the end: a shutdown waits for a retirement under way (a
        // kill does not: a crash in the middle is recovered at start).
        let _retiring = self.inner.retiring.lock().await;
        let Some(h) = self.inner.groups().remove(&group) else {
            return Ok(());
        };
        // The window: out of the map, no tombstone yet (a test holds it open).
        #[cfg(test)]
        retire_tests::WindowPause::hold(&self.inner.window).await;
        // Refused on demand from now on: a message arriving while the
        // replica stops must not start a fresh one.
        if let Ok(mut t) = self.inner.tombstones.lock() {
            t.bury(group);
        }
        let stopped = h.peer.shutdown().await;
        self.inner.links.unregister(group);
        // The nodes the group went on with, when the replica's last
        // configuration is the committed, settled one that removed it (the
        // retirer's case; an answer's retirement may hold an unsettled one,
        // which names nobody here).
        let last = h.peer.status();
        let successors = (!last.joint && last.config_index > 0 && last.commit >= last.config_index)
            .then(|| {
                last.members
                    .iter()
                    .filter(|m| m.voter && m.id != self.id())
                    .map(|m| m.id)
                    .collect::<Vec<_>>()
            });
        // Durable before the tombstone (`super::successors`): a removal the
        // journal acknowledged keeps them across a restart. Encoded under
        // the lock, written after it (retirements are serialised, so no
        // older encoding overtakes this one).
        let encoded = {
            let mut known = self
                .inner
                .successors
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            known.record(group, successors, std::time::SystemTime::now());
            known.encode()
        };
        let saved = encoded.and_then(|bytes| {
            super::successors::Successors::write(&*self.inner.fs, &self.inner.dir, &bytes)
        });
        if let Err(e) = saved {
            tracing::warn!(group, error = %e, "cannot keep a retired replica's successors on disk; kept in memory until a restart (rule 4 of placement_auth)");
        }
        // The fence: the committed configuration that removed the replica,
        // and the latest term it knew, read once it has stopped (it never
        // voted in a later one; its votes were durable before they left).
        let (index, term) = match reason {
            Retire::Removed(removal) => removal,
            Retire::Orphan => (0, 0),
        };
        let known = h.peer.status().term;
        let durable = self.inner.journal.log(group).hard_state().term;
        let fence = (index, term.max(known).max(durable));
        if let Err(e) = self.inner.journal.remove_group(group, fence) {
            // Stopped, but its log is still in the journal: retiring until
            // the tombstone is written (see `hosting`).
            tracing::error!(group, ?reason, ?fence, node = %self.inner.name, error = %e, "a retired replica's tombstone was not written; the group stays retiring here (restart the node)");
            self.inner.unretired().insert(group, fence);
            return Err(Error::Storage(e.to_string()));
        }
        super::hosting::delete_group_files(&*self.inner.fs, &self.inner.dir, group);
        info!(group, ?reason, ?fence, node = %self.inner.name, "replica retired and its state deleted");
        stopped
    }

    /// Writes the tombstones the journal refused to earlier retirements;
    /// each one written ends its group's retirement (its files are deleted
    /// then). See `hosting`, "A retirement the journal refuses".
    async fn retry_tombstones(&self) {
        let _retiring = self.inner.retiring.lock().await;
        let pending: Vec<(GroupId, (Index, crate::core::Term))> = self
            .inner
            .unretired()
            .iter()
            .map(|(g, f)| (*g, *f))
            .collect();
        for (group, fence) in pending {
            match self.inner.journal.remove_group(group, fence) {
                Ok(()) => {
                    self.inner.unretired().remove(&group);
                    super::hosting::delete_group_files(&*self.inner.fs, &self.inner.dir, group);
                    info!(group, ?fence, node = %self.inner.name, "a retirement's tombstone written on retry; its state deleted");
                }
                Err(e) => {
                    tracing::debug!(group, ?fence, error = %e, "a retirement's tombstone is still refused");
                }
            }
        }
    }
}

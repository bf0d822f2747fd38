//! [`MultiNodeBuilder`]: a node's options, and [`MultiNodeBuilder::start`],
//! which opens the data directory, the journal and the QUIC endpoint and
//! starts every group the journal holds.
//!
//! Invariants (of `start`):
//! - nothing is written before the directory's schema is checked against
//!   the binary's (`dir_schema`), and a lost journal is refused before
//!   anything under `groups/` is read or swept (`lost_journal`);
//! - the directory is recorded as this binary's only once every step that
//!   can fail has passed;
//! - no peer's message reaches a group before every group of the journal
//!   has started: the demultiplexer, then hosting on demand, start last
//!   (a replica hosted on demand over a group the loop had not started
//!   yet would be a second replica over the same log).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tracing::info;

use super::{ELECTION_TICKS, HEARTBEAT_TICKS, Inner, MultiNode, Pool};
use crate::error::Error;
use crate::identity::{default_name, node_id};
use crate::multi::dir_schema::DirSchema;
use crate::multi::hosting::HostingPolicy;
use crate::multi::journal::JournalOptions;
use crate::multi::links::{Links, demultiplex};
use crate::multi::placement::PLACEMENT_GROUP;
use crate::multi::quiesce::{self, Timing};
use crate::runtime::PeerExt;
use crate::runtime::threads::Threads;
use crate::schema::SchemaBook;
use crate::storage::vfs::SharedFs;
use crate::tls::Identity;
use crate::transport::quic::{QuicConfig, QuicTransport};

/// How many messages one node may queue for one peer, over all groups.
const LINK_QUEUE: usize = 1 << 16;

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
    /// The file system (tests: a faulty one).
    pub(super) fs: SharedFs,
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
    /// [`balance`](crate::multi::balance) and [`MultiNode::balance_leaders`]).
    pub fn balance_leaders(mut self, every: Option<Duration>) -> Self {
        self.balance_every = every;
        self
    }

    /// Whether a leader's message for a group this node does not host
    /// starts an empty replica of it (default on; see
    /// [`hosting`](crate::multi::hosting)).
    pub fn host_on_demand(mut self, on: bool) -> Self {
        self.hosting.on_demand = on;
        self
    }

    /// The whole hosting policy (limits of hosting on demand, orphan and
    /// quarantine times; see [`hosting`](crate::multi::hosting)).
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
    /// (default on; see [`quiesce`](crate::multi::quiesce)).
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
        let journal =
            crate::multi::lost_journal::open(&self.fs, &dir, self.journal, &Threads::default())
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
        crate::multi::hosting::sweep(&*self.fs, &dir, &journal.groups());
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
        // Rule 4's successors kept by earlier runs (`crate::multi::successors`).
        let successors = crate::multi::successors::Successors::load(
            &*self.fs,
            &dir,
            std::time::SystemTime::now(),
        );
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
                refusals: Mutex::new(crate::multi::refusal_log::RefusalLog::default()),
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
            crate::multi::service::Front::new(&node),
            clients_rx,
            crate::transport::frame::DEFAULT_MAX_FRAME_BYTES,
        ));
        info!(name = %node.inner.name, addr = %local_addr, groups = existing.len(), "multi-group node started");
        Ok(node)
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
}

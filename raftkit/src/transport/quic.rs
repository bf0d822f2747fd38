//! The production transport: QUIC (quinn) peer links with mutual TLS.
//!
//! # Shape
//!
//! Each node runs one quinn endpoint on one UDP socket, both server and
//! client. Inbound connections are dispatched on their negotiated ALPN
//! protocol: [`PEER_ALPN`] links are served here, [`CLIENT_ALPN`]
//! connections are handed to the `clients` channel given to
//! [`QuicTransport::start`] (and refused when there is none).
//!
//! Every ordered pair of peers has its own link: node A sends to B over a
//! connection A dialed, and B answers over the one it dialed to A. A link is
//! one bidirectional stream:
//!
//! 0. the TLS handshake: both certificates chain to the cluster CA; the
//!    dialer then checks that the acceptor's certificate is a `node`
//!    certificate naming the peer it meant to reach (see [`crate::tls`]),
//!    and closes the connection otherwise ([`LinkState::Refused`]);
//! 1. the dialer sends [`PeerFrame::Hello`] (node id, name, schema
//!    fingerprint, protocol version);
//!    (a hello too large with its schema's detailed shapes offers them,
//!    and the acceptor asks for them in a second frame before it checks
//!    it: `hello_detail`);
//! 2. the acceptor checks it against the dialer's certificate
//!    ([`check_hello`]: a `node` certificate whose name is the hello's name,
//!    whose id is the hello's id) and answers [`PeerFrame::HelloOk`], or
//!    [`PeerFrame::Refused`] with a reason and closes (both sides log it,
//!    the dialer's [`LinkState`] becomes [`LinkState::Refused`]); its
//!    `HelloOk` announces the message shapes it understands
//!    (`peer_features`);
//! 3. the dialer streams [`PeerFrame::Msg`] frames, each message in the
//!    shapes the acceptor announced (a transfer vote in its earlier form to
//!    an acceptor of an earlier binary), which the acceptor forwards to the
//!    node's inbox.
//!
//! Client connections ([`CLIENT_ALPN`]) are handed over with the
//! [`Principal`](crate::tls::Principal) their certificate states ([`AcceptedClient`]); a
//! certificate that states no role is refused on either ALPN.
//!
//! **Learned links.** An acceptor that hears from a node it has no link to
//! (a member being added hears from the leader before it knows the
//! configuration) opens a link back to the address the hello announced. At
//! most [`QuicConfig::max_learned_links`] such links exist at once, and one
//! expires once no inbound link from that node has been open for
//! [`QuicConfig::learned_link_ttl`]; a link the configuration lists is
//! never learned (and never expires).
//!
//! Outbound, each peer has a task and a bounded queue
//! ([`QuicTransport::send`] only locks the queue for a push). The task
//! drains everything queued into one write (batching); a newer heartbeat
//! supersedes an unsent older one (coalescing); past the capacity the oldest
//! message is dropped. On a multi-group node's endpoint (one with a
//! [`QuicConfig::group_inbox`]) the task first yields once to the runtime
//! when woken, so that the messages the node's other group tasks queue in
//! the same scheduling round leave in that one write rather than one write
//! per group (measured by `benches/multi.rs`: about a fifth less CPU per
//! durable write with 64 groups). When a link fails the task reconnects with
//! exponential backoff (20 ms doubling to 1 s by default, reset once a hello
//! is accepted).
//!
//! # Invariants
//!
//! 1. `send` never blocks and never waits on the network; a slow or dead
//!    peer only fills (and overflows) its own queue.
//! 2. Every connection is mutually authenticated by the cluster CA (see
//!    [`crate::tls`]); a handshake that fails is logged and only that
//!    connection is dropped.
//! 3. Network data is never trusted: a frame over `max_frame_bytes` (a
//!    hello over [`MAX_HELLO_BYTES`]), bytes that do not decode, an
//!    unexpected frame or a message whose `from` is not the id of the
//!    link's certificate are logged at `warn` with the peer and the reason
//!    (a wrong `from` once per link), and close that link (or drop that
//!    message); the node keeps serving every other link.
//! 4. A link only carries messages after the acceptor has accepted the
//!    dialer's schema fingerprint and protocol version: a peer of another
//!    schema never delivers a message.
//! 5. Inbound messages are forwarded with `inbox.send(..).await`: a full
//!    inbox stalls only the links feeding it, and QUIC flow control pushes
//!    back to those dialers, whose queues then drop their oldest messages.
//! 6. Messages may be lost (overflow, reconnects, shutdown); Raft tolerates
//!    loss, duplication and reordering. Within one link, order is kept.
//! 7. Which node a link speaks for comes from the dialer's certificate,
//!    never from what it says: every message forwarded to the inbox has
//!    `from == node_id(certificate name)`.
//!
//! Size: past 1,000 lines because the outbound side of the links stays
//! together: the private peer table (`Inner`) that `send`, `set_links` and
//! the learned-link sweeper change, and the link state (`PeerShared`) that
//! `send` and each peer's task (`peer_task`, `dial`, `pump`) share.
//! Accepting is apart already; `QuicConfig` would move out first.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

pub use super::handshakes::{
    DEFAULT_HANDSHAKE_TIMEOUT, DEFAULT_MAX_HANDSHAKES, MIN_HANDSHAKE_TIMEOUT, MIN_TLS_TIMEOUT,
    tls_timeout,
};
pub use super::peer_limits::{DEFAULT_MAX_PEER_CONNECTIONS, DEFAULT_PEER_CONNECTIONS_PER_NODE};
pub use super::quic_tuning::DEFAULT_CLIENT_RECEIVE_WINDOW;
pub(crate) use super::quic_tuning::{server_transport_config, transport_config};

use bytes::BytesMut;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{Connection, Endpoint, SendStream, VarInt};
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::AbortHandle;
use tracing::{debug, error, info, trace, warn};

use super::Transport;
use super::accept::{AcceptLimits, SharedInbound, accept_loop, lock_inbound};
pub use super::accept::{
    AcceptedClient, AcceptedHello, MAX_HELLO_BYTES, check_hello, peer_principal,
};
use super::frame::{
    DEFAULT_MAX_FRAME_BYTES, FrameError, MemberAnswer, PROTOCOL_VERSION, PeerFrame,
    encode_frame_bytes, write_frame,
};
use super::handshakes::Handshakes;
pub use super::hello_detail::MAX_DETAIL_BYTES;
use super::hello_detail::fitted_hello;
use super::inbox_bytes::{GroupTx, InboxTx};
use super::out_queue::OutQueue;
use super::peer_features;
use super::peer_limits::{PeerConnectionLimits, PeerPlaces};
use crate::core::{Message, NodeId};
use crate::identity::node_id;
use crate::tls::{CLIENT_ALPN, CLUSTER_SAN, CertRole, Identity, PEER_ALPN, TlsError};

/// Application close code: normal shutdown or a link no longer wanted.
pub(super) const CLOSE_NORMAL: u32 = 0;
/// Application close code: the peer broke the peer protocol.
pub(super) const CLOSE_PROTOCOL: u32 = 1;
/// Application close code: the hello was refused.
pub(crate) const CLOSE_REFUSED: u32 = 2;
/// Application close code: no service for this ALPN.
pub(super) const CLOSE_NO_SERVICE: u32 = 3;
/// Application close code: the client service refused a connection past
/// its limit of connections (per client certificate, or in all); nothing
/// was read from it (see `runtime::intake`). The client reports it as
/// [`Error::Unavailable`](crate::error::Error::Unavailable), not applied.
/// The peer service closes a peer connection past its limits with it too
/// (see `transport::peer_limits`).
pub(crate) const CLOSE_TOO_MANY_CONNECTIONS: u32 = 4;

/// How long each side waits for the other's hello (or answer to it).
pub(super) const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// The buffer outbound frames are encoded into is allocated this large:
/// each write hands its filled part to quinn (no copy), and the next
/// frames go into the capacity left over until a new one is needed.
pub(crate) const WRITE_BUFFER: usize = 64 * 1024;

/// How often expired learned links are looked for.
const LEARNED_SWEEP: Duration = Duration::from_secs(1);

/// How a node's QUIC transport is set up. [`QuicConfig::new`] fills in the
/// defaults; the fields are public to adjust them.
#[derive(Clone, Debug)]
pub struct QuicConfig {
    /// The address other nodes reach this one at (default: `listen`).
    pub advertise: Option<String>,
    /// The UDP address to bind (port 0 picks a free port; see the address
    /// [`QuicTransport::start`] returns).
    pub listen: SocketAddr,
    /// This node's id. It must be [`node_id`]`(&name)` (as
    /// [`QuicConfig::new`] sets it): acceptors refuse a hello whose id is
    /// not the id of its name.
    pub node: NodeId,
    /// This node's name, sent in hellos.
    pub name: String,
    /// The certificate this node presents and the CA it trusts.
    pub identity: Identity,
    /// The fingerprint of the state machine's schema; peers must agree
    /// unless both have a structural schema ([`QuicConfig::schemas`]).
    pub schema: u64,
    /// The node's structural schema and the record of its peers' (default
    /// none): hellos then carry the schema, and links between compatible
    /// schemas are accepted (see [`crate::schema`]).
    pub schemas: Option<Arc<crate::schema::SchemaBook>>,
    /// The cap on one frame's body (default 16 MiB).
    pub max_frame_bytes: usize,
    /// The most messages queued for one peer; older ones are dropped past it
    /// (default 1024).
    pub queue_capacity: usize,
    /// The first reconnect delay (default 20 ms).
    pub backoff_min: Duration,
    /// The longest reconnect delay (default 1 s).
    pub backoff_max: Duration,
    /// How often an idle connection sends a keep-alive (default 500 ms).
    pub keep_alive: Duration,
    /// How long a silent connection lives (default 3 s). This bounds how
    /// long a peer that was killed and restarted stays unheard: its old
    /// connection (to the dead process) must time out before the link
    /// redials the new one.
    pub idle_timeout: Duration,
    /// The most links opened back to nodes that dialed this one but are
    /// not in the configuration (default 16); past it, no more are opened
    /// until one expires.
    pub max_learned_links: usize,
    /// A learned link is closed once no inbound link from its node has been
    /// open for this long (default 30 s).
    pub learned_link_ttl: Duration,
    /// Where [`PeerFrame::Group`] messages (the groups of a multi-group
    /// node, `crate::multi`) go, tagged with their group (default none:
    /// they are dropped and counted as protocol errors).
    pub group_inbox: Option<mpsc::Sender<GroupInbound>>,
    /// The most bytes quinn buffers unread for one client connection, on
    /// all its streams together (its QUIC connection receive window;
    /// default [`DEFAULT_CLIENT_RECEIVE_WINDOW`], 2 MiB). Every inbound
    /// connection starts with it; peer links raise theirs once their
    /// certificate is checked (see `transport::quic_tuning`).
    pub client_receive_window: u64,
    /// The most inbound peer connections of one node (the id of its
    /// certificate's name) served at once (default
    /// [`DEFAULT_PEER_CONNECTIONS_PER_NODE`], 8; at least 1). A connection
    /// past it is closed before anything it sent is read (see
    /// `transport::peer_limits`).
    pub max_peer_connections_per_node: usize,
    /// The most inbound peer connections served at once, of all nodes
    /// together (default [`DEFAULT_MAX_PEER_CONNECTIONS`], 1024; at least
    /// 1).
    pub max_peer_connections: usize,
    /// The most inbound connections (peer or client) in their handshake
    /// at once: from the first packet to the TLS handshake done and, on a
    /// peer connection, its hello answered; on a client connection, until
    /// it is handed to the client service (default
    /// [`DEFAULT_MAX_HANDSHAKES`], 256; at least 1). What is guaranteed
    /// (see `transport::handshakes` for the rules):
    /// - an attempt past the bound is refused at once, before any
    ///   cryptography (its dialer sees the connection refused), counted by
    ///   [`QuicTransport::refused_handshakes`], unless it may take the
    ///   place of a stranger's handshake stalled in TLS (below); one whose
    ///   address is not validated yet is sent a stateless Retry instead
    ///   (counted by [`QuicTransport::retried_handshakes`]) and judged
    ///   again when it answers;
    /// - one source IP holds at most a quarter of the slots (at least 2);
    /// - a quarter of them (none below 4) is kept for the configured
    ///   peers, each known by its exact address (IP and port, validated
    ///   by a Retry): strangers, from any number of addresses, never hold
    ///   it, so a member dialing from the address it is configured at
    ///   finds a slot (after one Retry at most, whatever strangers at its
    ///   IP hold) while the members hold fewer than the reserve. A
    ///   member dialing from another address (another interface, a NAT
    ///   that maps ports) is a stranger;
    /// - clients have no reserve: an attempt that finds the slots it may
    ///   take all taken takes the place of the oldest stranger's
    ///   handshake still in TLS for a fifth of [`tls_timeout`] (500 ms by
    ///   default) at an address holding two more slots than its own, so a
    ///   client gets in within that age plus its redial delay while the
    ///   strangers stall from fewer addresses than there are strangers'
    ///   slots; not against more addresses, nor against strangers that
    ///   renew their handshakes faster, nor against dialers with a
    ///   certificate of the cluster CA holding slots past TLS (until
    ///   [`QuicConfig::handshake_timeout`]).
    pub max_handshakes: usize,
    /// How long an inbound connection's handshake may take, from its first
    /// packet to its hello answered (a peer) or its hand-over to the client
    /// service (a client) (default [`DEFAULT_HANDSHAKE_TIMEOUT`], 10 s; at
    /// least [`MIN_HANDSHAKE_TIMEOUT`], 1 s): a dialer that has not
    /// completed it by then (in its hello, or opening no stream at all) is
    /// closed. Its TLS phase has a quarter of it ([`tls_timeout`], at least
    /// [`MIN_TLS_TIMEOUT`], 2 s, unless the timeout is shorter: 2.5 s
    /// of the default): a dialer that has not
    /// completed TLS by then is dropped. So a dialer without a certificate
    /// of the cluster CA holds a slot at most [`tls_timeout`], and only one
    /// with such a certificate can hold one for the whole timeout (see
    /// `transport::handshakes`).
    pub handshake_timeout: Duration,
}

/// What arrives for a multi-group node on [`QuicConfig::group_inbox`].
#[derive(Debug)]
pub enum GroupInbound {
    /// A message of one group.
    Msg {
        /// The group.
        group: u64,
        /// The message (its `from` checked against the link's certificate).
        msg: Message,
    },
    /// A coalesced heartbeat ([`PeerFrame::Coalesced`]).
    Coalesced {
        /// The sender (the node its certificate names).
        from: NodeId,
        /// `(group, term, commit)` of every quiesced group it leads.
        quiesced: Vec<(u64, u64, u64)>,
    },
    /// A node asks whether it is still a member of a group
    /// ([`PeerFrame::MemberQuery`]).
    MemberQuery {
        /// The asker (the node its certificate names).
        from: NodeId,
        /// Where the asker said it is reached (its hello's address), for
        /// the answer.
        addr: String,
        /// The group.
        group: u64,
    },
    /// A node's answer to a [`PeerFrame::MemberQuery`] this node sent.
    MemberAnswer {
        /// The answerer (the node its certificate names).
        from: NodeId,
        /// The group.
        group: u64,
        /// Its latest configuration of the group.
        answer: MemberAnswer,
    },
}

impl QuicConfig {
    /// A configuration with defaults for the node called `name` (whose id
    /// is [`node_id`]`(name)`).
    pub fn new(listen: SocketAddr, name: &str, identity: Identity, schema: u64) -> QuicConfig {
        QuicConfig {
            advertise: None,
            listen,
            node: node_id(name),
            name: name.to_string(),
            identity,
            schema,
            schemas: None,
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
            queue_capacity: 1024,
            backoff_min: Duration::from_millis(20),
            backoff_max: Duration::from_secs(1),
            keep_alive: Duration::from_millis(500),
            idle_timeout: Duration::from_secs(3),
            max_learned_links: 16,
            learned_link_ttl: Duration::from_secs(30),
            group_inbox: None,
            client_receive_window: DEFAULT_CLIENT_RECEIVE_WINDOW,
            max_peer_connections_per_node: DEFAULT_PEER_CONNECTIONS_PER_NODE,
            max_peer_connections: DEFAULT_MAX_PEER_CONNECTIONS,
            max_handshakes: DEFAULT_MAX_HANDSHAKES,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
        }
    }
}

/// An error starting the transport or dialing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// The UDP socket could not be bound.
    #[error("cannot bind {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The TLS configuration could not be built.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// A connection could not be started.
    #[error("cannot connect: {0}")]
    Connect(#[from] quinn::ConnectError),
    /// A connection failed (including a failed TLS handshake).
    #[error("connection failed: {0}")]
    Connection(#[from] quinn::ConnectionError),
    /// An address did not resolve.
    #[error("cannot resolve {addr}: {reason}")]
    Resolve {
        /// The address.
        addr: String,
        /// Why.
        reason: String,
    },
    /// The peer refused the link (for example a schema mismatch).
    #[error("refused by peer: {0}")]
    Refused(String),
    /// The certificate at the address is not the one of the peer this link
    /// is for (another node's, or not a node's at all).
    #[error("wrong peer: {0}")]
    WrongPeer(String),
    /// A frame could not be read or written.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The peer did not answer in time.
    #[error("timed out waiting for the peer")]
    Timeout,
}

/// The state of the outbound link to one peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkState {
    /// Not (or no longer) connected; dialing with backoff.
    Connecting,
    /// The peer accepted the hello; messages flow.
    Connected,
    /// The last handshake that reached the peer was refused, for this
    /// reason (for example a schema mismatch, or the certificate at the
    /// address is not the peer's). The task keeps retrying at the backoff
    /// cap.
    Refused(String),
}

/// The quinn server configuration of a node: its identity, client
/// certificates required (see [`Identity::server_config`]).
pub fn quic_server_config(identity: &Identity) -> Result<quinn::ServerConfig, TlsError> {
    let tls = QuicServerConfig::try_from(Arc::new(identity.server_config()?))
        .map_err(|e| TlsError::Quic(e.to_string()))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(tls));
    // No NEW_TOKEN address validation tokens, whatever quinn's features
    // (its `bloom` feature, on by default and turned on by any crate of a
    // build that asks for quinn's defaults, sends 2 per connection and
    // accepts them): such a token proves the IP only, where a Retry token
    // proves the whole socket address, and a member is known by its exact
    // validated address (`handshakes`): a process at a member's IP with a
    // token could otherwise take the members' reserve.
    let mut tokens = quinn::ValidationTokenConfig::default();
    tokens.sent(0).log(Arc::new(quinn::NoneTokenLog));
    server.validation_token_config(tokens);
    Ok(server)
}

/// A quinn client configuration presenting `identity`, trusting its CA only
/// and offering the ALPN protocol `alpn` ([`PEER_ALPN`] or [`CLIENT_ALPN`]).
pub fn quic_client_config(
    identity: &Identity,
    alpn: &[u8],
) -> Result<quinn::ClientConfig, TlsError> {
    let tls = QuicClientConfig::try_from(Arc::new(identity.client_config(alpn)?))
        .map_err(|e| TlsError::Quic(e.to_string()))?;
    Ok(quinn::ClientConfig::new(Arc::new(tls)))
}

/// Dials a node's client service ([`CLIENT_ALPN`]) at `addr` from a fresh
/// client-only endpoint on an ephemeral port, presenting `identity`.
pub async fn connect_client(
    addr: SocketAddr,
    identity: &Identity,
) -> Result<Connection, TransportError> {
    let bind = unspecified_like(addr);
    let endpoint =
        Endpoint::client(bind).map_err(|source| TransportError::Bind { addr: bind, source })?;
    let mut config = quic_client_config(identity, CLIENT_ALPN)?;
    config.transport_config(transport_config(
        Duration::from_secs(2),
        Duration::from_secs(10),
    ));
    let conn = endpoint.connect_with(config, addr, CLUSTER_SAN)?.await?;
    Ok(conn)
}

fn unspecified_like(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V4(_) => SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
        SocketAddr::V6(_) => SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)),
    }
}

/// What the peer tasks and the accept loop share (never the transport
/// itself, so that dropping the last [`QuicTransport`] stops them).
pub(super) struct LinkConfig {
    pub(super) node: NodeId,
    pub(super) name: String,
    pub(super) advertise: String,
    pub(super) schema: u64,
    pub(super) schemas: Option<Arc<crate::schema::SchemaBook>>,
    pub(super) max_frame_bytes: usize,
    pub(super) queue_capacity: usize,
    pub(super) backoff_min: Duration,
    pub(super) backoff_max: Duration,
    pub(super) client: quinn::ClientConfig,
    pub(super) max_learned: usize,
    pub(super) learned_ttl: Duration,
    pub(super) group_inbox: Option<GroupTx>,
    /// The slots of inbound handshakes (`handshakes`), told the socket
    /// address each configured peer's link resolves its address to.
    pub(super) handshakes: Arc<Handshakes>,
}

/// The state shared between `send` and one peer's task.
struct PeerShared {
    queue: Mutex<OutQueue>,
    notify: Notify,
    state: watch::Sender<LinkState>,
}

impl PeerShared {
    fn queue(&self) -> MutexGuard<'_, OutQueue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }
}

struct PeerHandle {
    addr: String,
    shared: Arc<PeerShared>,
    task: AbortHandle,
    /// Opened back to a dialer the configuration does not list (bounded,
    /// expires); cleared once the configuration lists it.
    learned: bool,
}

struct Inner {
    endpoint: Endpoint,
    link: Arc<LinkConfig>,
    runtime: tokio::runtime::Handle,
    peers: Mutex<HashMap<NodeId, PeerHandle>>,
    accept_task: AbortHandle,
    /// The places of inbound peer connections (`peer_limits`).
    peer_places: Arc<PeerPlaces>,
    /// The slots of inbound handshakes (`handshakes`).
    handshakes: Arc<Handshakes>,
    /// Set by `stop`: no link may be added afterwards.
    stopped: std::sync::atomic::AtomicBool,
}

impl Inner {
    fn peers(&self) -> MutexGuard<'_, HashMap<NodeId, PeerHandle>> {
        self.peers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts the outbound link to `id` at `addr`.
    fn add_link(
        &self,
        current: &mut HashMap<NodeId, PeerHandle>,
        id: NodeId,
        addr: String,
        learned: bool,
    ) {
        if self.stopped.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        let shared = Arc::new(PeerShared {
            queue: Mutex::new(OutQueue::new(self.link.queue_capacity)),
            notify: Notify::new(),
            state: watch::Sender::new(LinkState::Connecting),
        });
        let task = self
            .runtime
            .spawn(peer_task(
                self.endpoint.clone(),
                self.link.clone(),
                id,
                addr.clone(),
                shared.clone(),
            ))
            .abort_handle();
        debug!(node = self.link.node, peer = id, %addr, learned, "peer link added");
        current.insert(
            id,
            PeerHandle {
                addr,
                shared,
                task,
                learned,
            },
        );
    }

    fn stop(&self) {
        self.stopped
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.accept_task.abort();
        for (_, peer) in self.peers().drain() {
            peer.task.abort();
        }
        self.endpoint
            .close(VarInt::from_u32(CLOSE_NORMAL), b"shutdown");
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The QUIC peer transport of one node. Cheap to clone; the last clone
/// dropped (or [`QuicTransport::shutdown`]) closes the endpoint.
#[derive(Clone)]
pub struct QuicTransport {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for QuicTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuicTransport")
            .field("node", &self.inner.link.node)
            .field("name", &self.inner.link.name)
            .finish_non_exhaustive()
    }
}

impl QuicTransport {
    /// Binds the endpoint and starts accepting. Raft messages from peers
    /// arrive on `inbox`; client connections ([`CLIENT_ALPN`]) are handed
    /// to `clients`, or refused when it is `None`. Returns the transport and
    /// the address actually bound. Must be called within a tokio runtime.
    ///
    /// The identity must be a `node` certificate issued to `config.name`
    /// (see [`crate::tls`]): other nodes refuse any other.
    ///
    /// The messages `inbox` holds are bounded by its capacity only: the
    /// runtime's nodes bound theirs by bytes too (`transport::inbox_bytes`).
    pub async fn start(
        config: QuicConfig,
        inbox: mpsc::Sender<Message>,
        clients: Option<mpsc::Sender<AcceptedClient>>,
    ) -> Result<(QuicTransport, SocketAddr), TransportError> {
        let groups = config.group_inbox.clone().map(GroupTx::Plain);
        Self::start_with(config, InboxTx::Plain(inbox), groups, clients, None).await
    }

    /// [`QuicTransport::start`] with the inboxes of a node task (`inbox`)
    /// or of a multi-group node's demultiplexer (`groups`, instead of
    /// `config.group_inbox`), charged or not (`transport::inbox_bytes`).
    /// With `socket` (bound by the caller, see
    /// [`PeerBuilder::listen_socket`](crate::runtime::PeerBuilder::listen_socket)),
    /// the endpoint serves on it and binds nothing (`config.listen` then
    /// only names it in errors).
    pub(crate) async fn start_with(
        config: QuicConfig,
        inbox: InboxTx,
        groups: Option<GroupTx>,
        clients: Option<mpsc::Sender<AcceptedClient>>,
        socket: Option<std::net::UdpSocket>,
    ) -> Result<(QuicTransport, SocketAddr), TransportError> {
        config.identity.check_node(&config.name)?;
        let transport = transport_config(config.keep_alive, config.idle_timeout);
        let mut server = quic_server_config(&config.identity)?;
        server.transport_config(server_transport_config(
            config.keep_alive,
            config.idle_timeout,
            config.client_receive_window,
        ));
        let mut client = quic_client_config(&config.identity, PEER_ALPN)?;
        client.transport_config(transport);

        let endpoint = match socket {
            None => Endpoint::server(server, config.listen),
            // What `Endpoint::server` does after its bind.
            Some(socket) => quinn::default_runtime()
                .ok_or_else(|| io::Error::other("no async runtime found"))
                .and_then(|runtime| {
                    Endpoint::new(
                        quinn::EndpointConfig::default(),
                        Some(server),
                        socket,
                        runtime,
                    )
                }),
        }
        .map_err(|source| TransportError::Bind {
            addr: config.listen,
            source,
        })?;
        let local = endpoint
            .local_addr()
            .map_err(|source| TransportError::Bind {
                addr: config.listen,
                source,
            })?;
        let handshakes = Handshakes::new(config.max_handshakes, config.handshake_timeout);
        let link = Arc::new(LinkConfig {
            node: config.node,
            name: config.name,
            advertise: config.advertise.unwrap_or_else(|| local.to_string()),
            schema: config.schema,
            schemas: config.schemas,
            max_frame_bytes: config.max_frame_bytes,
            queue_capacity: config.queue_capacity,
            backoff_min: config.backoff_min,
            backoff_max: config.backoff_max.max(config.backoff_min),
            client,
            max_learned: config.max_learned_links,
            learned_ttl: config.learned_link_ttl,
            group_inbox: groups,
            handshakes: handshakes.clone(),
        });
        let runtime = tokio::runtime::Handle::current();
        let (learned_tx, learned_rx) = mpsc::channel::<(NodeId, String)>(64);
        let inbound = SharedInbound::default();
        let peer_places = PeerPlaces::new(PeerConnectionLimits {
            per_node: config.max_peer_connections_per_node,
            total: config.max_peer_connections,
        });
        let accept_task = runtime
            .spawn(accept_loop(
                endpoint.clone(),
                link.clone(),
                inbox,
                clients,
                learned_tx,
                inbound.clone(),
                AcceptLimits {
                    places: peer_places.clone(),
                    handshakes: handshakes.clone(),
                },
            ))
            .abort_handle();
        info!(node = link.node, name = %link.name, addr = %local, "quic transport listening");
        let transport = QuicTransport {
            inner: Arc::new(Inner {
                endpoint,
                link,
                runtime,
                peers: Mutex::new(HashMap::new()),
                accept_task,
                peer_places,
                handshakes,
                stopped: std::sync::atomic::AtomicBool::new(false),
            }),
        };
        transport.inner.runtime.spawn(learned_links(
            Arc::downgrade(&transport.inner),
            learned_rx,
            inbound,
        ));
        Ok((transport, local))
    }

    /// The quinn endpoint (for the client service, which dials and accepts
    /// on the same socket).
    pub fn endpoint(&self) -> &Endpoint {
        &self.inner.endpoint
    }

    /// The address the endpoint is bound to.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.endpoint.local_addr()
    }

    /// This node's id.
    pub fn node(&self) -> NodeId {
        self.inner.link.node
    }

    /// The state of the outbound link to `peer`, or `None` if `peer` is not
    /// among the peers set by [`Transport::set_peers`].
    pub fn link_state(&self, peer: NodeId) -> Option<LinkState> {
        self.inner
            .peers()
            .get(&peer)
            .map(|p| p.shared.state.borrow().clone())
    }

    /// A receiver that sees every change of the link state of `peer` (until
    /// the peer is removed or readded), or `None` if `peer` is not set.
    pub fn watch_link(&self, peer: NodeId) -> Option<watch::Receiver<LinkState>> {
        self.inner
            .peers()
            .get(&peer)
            .map(|p| p.shared.state.subscribe())
    }

    /// How many messages are queued for `peer`.
    pub fn queued(&self, peer: NodeId) -> Option<usize> {
        self.inner
            .peers()
            .get(&peer)
            .map(|p| p.shared.queue().len())
    }

    /// How many inbound peer connections were refused so far for being
    /// past [`QuicConfig::max_peer_connections_per_node`] or
    /// [`QuicConfig::max_peer_connections`] (see `transport::peer_limits`).
    pub fn refused_peer_connections(&self) -> u64 {
        self.inner.peer_places.refused()
    }

    /// How many inbound connections were refused so far for arriving while
    /// [`QuicConfig::max_handshakes`] others were in their handshake (see
    /// `transport::handshakes`).
    pub fn refused_handshakes(&self) -> u64 {
        self.inner.handshakes.refused()
    }

    /// How many inbound connection attempts were answered with a QUIC
    /// Retry so far, for arriving from an address not yet validated while
    /// half of [`QuicConfig::max_handshakes`] or more were in their
    /// handshake (see `transport::handshakes`).
    pub fn retried_handshakes(&self) -> u64 {
        self.inner.handshakes.retried()
    }

    /// How many inbound connections are in their handshake now, each
    /// holding one of [`QuicConfig::max_handshakes`] slots (see
    /// `transport::handshakes`).
    pub fn handshakes_in_progress(&self) -> usize {
        self.inner.handshakes.in_progress()
    }

    /// How many inbound handshakes stalled in TLS gave their slot to a
    /// newer attempt so far, for arriving while all the slots it could
    /// take were taken (see `transport::handshakes`).
    pub fn evicted_handshakes(&self) -> u64 {
        self.inner.handshakes.evicted()
    }

    /// The nodes whose validated addresses may take the handshake slots
    /// kept for members (a test's view, see `transport::handshakes`).
    #[cfg(test)]
    pub(crate) fn handshake_members(&self) -> std::collections::BTreeSet<NodeId> {
        self.inner.handshakes.members()
    }

    /// Stops every task and closes the endpoint (connections are closed
    /// with a final frame), waiting up to a second for the close to reach
    /// the peers. Later sends are dropped.
    pub async fn shutdown(&self) {
        self.inner.stop();
        let _ = tokio::time::timeout(Duration::from_secs(1), self.inner.endpoint.wait_idle()).await;
        info!(node = self.inner.link.node, "quic transport shut down");
    }
}

impl QuicTransport {
    /// Queues a message of `group` (a multi-group node, `crate::multi`):
    /// it travels on the same link as every other group's, as a
    /// [`PeerFrame::Group`] frame, and arrives on the peer's
    /// [`QuicConfig::group_inbox`].
    pub fn send_group(&self, group: u64, msg: Message) {
        self.send_tagged(Some(group), msg);
    }

    /// Queues a coalesced heartbeat for node `to` (replacing one not yet
    /// sent), see [`PeerFrame::Coalesced`].
    pub fn send_coalesced(&self, to: NodeId, quiesced: Vec<(u64, u64, u64)>) {
        let peers = self.inner.peers();
        if let Some(peer) = peers.get(&to) {
            peer.shared.queue().set_coalesced(quiesced);
            peer.shared.notify.notify_one();
        }
    }

    /// Queues a membership query or answer for node `to` (see
    /// [`PeerFrame::MemberQuery`]); dropped when there is no link to it or
    /// too many are queued. Whether it was queued.
    pub fn send_control(&self, to: NodeId, frame: PeerFrame) -> bool {
        let peers = self.inner.peers();
        let Some(peer) = peers.get(&to) else {
            trace!(
                to,
                kind = frame_kind(&frame),
                "no link to this peer; dropped"
            );
            return false;
        };
        let queued = peer.shared.queue().push_control(frame);
        peer.shared.notify.notify_one();
        queued
    }

    fn send_tagged(&self, group: Option<u64>, msg: Message) {
        let peers = self.inner.peers();
        match peers.get(&msg.to) {
            Some(peer) => {
                peer.shared.queue().push_tagged(group, msg);
                peer.shared.notify.notify_one();
            }
            None => trace!(
                to = msg.to,
                group,
                kind = msg.body.kind(),
                "no link to this peer; message dropped"
            ),
        }
    }
}

impl Transport for QuicTransport {
    fn send(&self, msg: Message) {
        self.send_tagged(None, msg);
    }

    fn set_peers(&self, peers: BTreeMap<NodeId, String>) {
        let members = peers.keys().copied().collect();
        self.set_links(peers, &members);
    }
}

impl QuicTransport {
    /// Keeps links to `peers` (as [`Transport::set_peers`]) of which only
    /// `members` are members: their validated addresses may take the
    /// handshake slots kept for members (`transport::handshakes`). A
    /// multi-group node links nodes no configuration lists (askers, a
    /// replica's joining leader) and must not give them that reserve: a
    /// stranger with a node certificate could otherwise ask once and have
    /// its own address take it (found in review of stop 49).
    pub(crate) fn set_links(&self, peers: BTreeMap<NodeId, String>, members: &BTreeSet<NodeId>) {
        // The members' addresses: a share of the handshake slots is kept
        // for them (`handshakes`; a member is its exact address, a name
        // the socket address its link resolves it to).
        self.inner.handshakes.set_members(
            peers
                .iter()
                .filter(|(id, _)| **id != self.inner.link.node && members.contains(id))
                .map(|(id, addr)| (*id, addr.clone())),
        );
        let mut current = self.inner.peers();
        current.retain(|id, handle| {
            let keep = peers.get(id) == Some(&handle.addr);
            if keep {
                // Listed by the configuration: no longer a learned link.
                handle.learned = false;
            } else {
                handle.task.abort();
                debug!(node = self.inner.link.node, peer = *id, "peer link removed");
            }
            keep
        });
        for (id, addr) in peers {
            if id == self.inner.link.node || current.contains_key(&id) {
                continue;
            }
            self.inner.add_link(&mut current, id, addr, false);
        }
    }
}

// ----------------------------------------------------------- learned links

/// Opens links back to nodes that dialed this one but are not configured
/// (a member being added hears from the leader before it knows the
/// configuration), at most `max_learned` at once, and closes each once no
/// inbound link from its node has been open for `learned_ttl`.
async fn learned_links(
    inner: std::sync::Weak<Inner>,
    mut requests: mpsc::Receiver<(NodeId, String)>,
    inbound: SharedInbound,
) {
    let mut sweep = tokio::time::interval(LEARNED_SWEEP);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut warned_full = false;
    loop {
        tokio::select! {
            request = requests.recv() => {
                let Some((id, addr)) = request else { return };
                let Some(inner) = inner.upgrade() else { return };
                let mut peers = inner.peers();
                if peers.contains_key(&id) || id == inner.link.node {
                    continue;
                }
                let learned = peers.values().filter(|p| p.learned).count();
                if learned >= inner.link.max_learned {
                    if !warned_full {
                        warn!(node = inner.link.node, peer = id, %addr, max = inner.link.max_learned,
                            "too many links to unconfigured nodes; not opening another until one expires");
                        warned_full = true;
                    }
                    continue;
                }
                inner.add_link(&mut peers, id, addr, true);
            }
            _ = sweep.tick() => {
                let Some(inner) = inner.upgrade() else { return };
                let ttl = inner.link.learned_ttl;
                let mut map = lock_inbound(&inbound);
                let mut peers = inner.peers();
                peers.retain(|id, handle| {
                    if !handle.learned {
                        return true;
                    }
                    let alive = map
                        .links
                        .get(id)
                        .is_some_and(|(open, since)| *open > 0 || since.elapsed() < ttl);
                    if !alive {
                        handle.task.abort();
                        info!(node = inner.link.node, peer = *id, addr = %handle.addr,
                            "learned link expired: the node is not configured and no longer dials in");
                        warned_full = false;
                    }
                    alive
                });
                // Forget dialers idle past the TTL.
                map.links
                    .retain(|_, (open, since)| *open > 0 || since.elapsed() < ttl);
            }
        }
    }
}

// ---------------------------------------------------------------- outbound

/// Keeps one peer's link up and drains its queue into it.
async fn peer_task(
    endpoint: Endpoint,
    link: Arc<LinkConfig>,
    peer: NodeId,
    addr: String,
    shared: Arc<PeerShared>,
) {
    let mut backoff = link.backoff_min;
    let mut failures: u32 = 0;
    loop {
        match dial(&endpoint, &link, peer, &addr).await {
            Ok((conn, send, features)) => {
                backoff = link.backoff_min;
                failures = 0;
                shared.state.send_replace(LinkState::Connected);
                info!(node = link.node, peer, %addr, features, "peer link up");
                if features & peer_features::TRANSFER_VOTE == 0 {
                    info!(node = link.node, peer, %addr, "peer of an earlier binary: transfer votes go to it in the earlier form (mixed-version limit, see core::transfer)");
                }
                let why = pump(&link, &conn, send, &shared, features).await;
                shared.state.send_replace(LinkState::Connecting);
                warn!(node = link.node, peer, %addr, reason = %why, "peer link lost; reconnecting");
                conn.close(VarInt::from_u32(CLOSE_NORMAL), b"reconnecting");
            }
            Err(TransportError::Refused(reason)) => {
                let changed = *shared.state.borrow() != LinkState::Refused(reason.clone());
                if changed {
                    error!(node = link.node, peer, %addr, %reason, "peer refused the link");
                }
                shared.state.send_replace(LinkState::Refused(reason));
                backoff = link.backoff_max;
            }
            Err(TransportError::WrongPeer(reason)) => {
                let changed = *shared.state.borrow() != LinkState::Refused(reason.clone());
                if changed {
                    error!(node = link.node, peer, %addr, %reason, "wrong certificate at the peer's address; link closed");
                }
                shared.state.send_replace(LinkState::Refused(reason));
                backoff = link.backoff_max;
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                if failures == 1 {
                    warn!(node = link.node, peer, %addr, error = %e, "cannot reach peer; retrying");
                } else {
                    debug!(node = link.node, peer, %addr, error = %e, failures, "cannot reach peer");
                }
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(link.backoff_max);
    }
}

/// Connects, opens the link stream and says hello. Returns the connection,
/// the stream to write messages on once the hello is accepted, and the
/// features the acceptor announced with its acceptance (`peer_features`).
async fn dial(
    endpoint: &Endpoint,
    link: &LinkConfig,
    peer: NodeId,
    addr: &str,
) -> Result<(Connection, SendStream, u64), TransportError> {
    let target = resolve(endpoint, addr).await?;
    link.handshakes.resolved(peer, addr, target);
    let conn = endpoint
        .connect_with(link.client.clone(), target, CLUSTER_SAN)?
        .await?;
    // The certificate we reached must be the node we meant to reach.
    let reached = match peer_principal(&conn) {
        Ok(p) if p.role == CertRole::Node && node_id(&p.name) == peer => Ok(()),
        Ok(p) => Err(format!(
            "the node at {addr} presents a {p} (node id {}), not the certificate of node {peer}",
            node_id(&p.name)
        )),
        Err(e) => Err(format!("the node at {addr}: {e}")),
    };
    if let Err(reason) = reached {
        conn.close(VarInt::from_u32(CLOSE_REFUSED), b"wrong peer");
        return Err(TransportError::WrongPeer(reason));
    }
    let hello = async {
        let (mut send, mut recv) = conn.open_bi().await?;
        let hello = PeerFrame::Hello {
            from: link.node,
            name: link.name.clone(),
            addr: link.advertise.clone(),
            schema: link.schema,
            version: PROTOCOL_VERSION,
            schema_desc: link.schemas.as_ref().map(|b| b.local().clone()),
        };
        let hello = fitted_hello(hello, link.max_frame_bytes);
        hello.write(&mut send, link.max_frame_bytes).await?;
        let (mut answer, mut features) =
            peer_features::read_hello_answer(&mut recv, link.max_frame_bytes).await?;
        // Asked for the detail the hello offered (an acceptor of the
        // earlier binary answers at once instead: `hello_detail`).
        if let (PeerFrame::SendSchemaDetail, Some(detail)) = (&answer, &hello.detail) {
            let cap = link.max_frame_bytes.min(MAX_DETAIL_BYTES);
            write_frame(&mut send, detail, cap).await?;
            (answer, features) =
                peer_features::read_hello_answer(&mut recv, link.max_frame_bytes).await?;
        }
        match answer {
            PeerFrame::HelloOk => Ok((send, features)),
            PeerFrame::Refused { reason } => Err(TransportError::Refused(reason)),
            other => Err(TransportError::Refused(format!(
                "unexpected answer to hello: {}",
                frame_kind(&other)
            ))),
        }
    };
    let result = match tokio::time::timeout(HELLO_TIMEOUT, hello).await {
        Ok(r) => r,
        Err(_) => Err(TransportError::Timeout),
    };
    match result {
        Ok((send, features)) => Ok((conn, send, features)),
        Err(e) => {
            let code = match e {
                TransportError::Refused(_) => CLOSE_REFUSED,
                _ => CLOSE_PROTOCOL,
            };
            conn.close(VarInt::from_u32(code), b"hello failed");
            Err(e)
        }
    }
}

/// Resolves `addr`, preferring an address of the endpoint's family.
async fn resolve(endpoint: &Endpoint, addr: &str) -> Result<SocketAddr, TransportError> {
    let resolve_err = |reason: String| TransportError::Resolve {
        addr: addr.to_string(),
        reason,
    };
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(addr)
        .await
        .map_err(|e| resolve_err(e.to_string()))?
        .collect();
    let v4 = endpoint.local_addr().map(|a| a.is_ipv4()).unwrap_or(true);
    addrs
        .iter()
        .find(|a| a.is_ipv4() == v4)
        .or(addrs.first())
        .copied()
        .ok_or_else(|| resolve_err("no address".into()))
}

/// Writes queued messages to the link until it fails; returns why. Each
/// message goes in the shapes the acceptor's `features` allow
/// (`peer_features::for_peer`).
async fn pump(
    link: &LinkConfig,
    conn: &Connection,
    mut send: SendStream,
    shared: &PeerShared,
    features: u64,
) -> String {
    let mut buf = BytesMut::with_capacity(WRITE_BUFFER);
    // Many groups queue messages to this peer one after another: let them
    // (see the module documentation).
    let coalesce = link.group_inbox.is_some();
    loop {
        if coalesce {
            tokio::task::yield_now().await;
        }
        let (batch, overflowed, coalesced, control) = {
            let mut queue = shared.queue();
            (
                queue.drain_tagged(),
                queue.take_overflowed(),
                queue.take_coalesced(),
                queue.take_control(),
            )
        };
        if overflowed > 0 {
            warn!(
                node = link.node,
                overflowed, "peer too slow: oldest queued messages dropped"
            );
        }
        if batch.is_empty() && coalesced.is_none() && control.is_empty() {
            tokio::select! {
                _ = shared.notify.notified() => continue,
                e = conn.closed() => return e.to_string(),
            }
        }
        buf.reserve(WRITE_BUFFER / 16);
        let count = batch.len();
        if let Some(quiesced) = coalesced
            && let Err(e) = encode_frame_bytes(
                &PeerFrame::Coalesced { quiesced },
                link.max_frame_bytes,
                &mut buf,
            )
        {
            error!(node = link.node, error = %e, "cannot send a coalesced heartbeat; dropped");
        }
        for frame in control {
            if let Err(e) = encode_frame_bytes(&frame, link.max_frame_bytes, &mut buf) {
                error!(node = link.node, kind = frame_kind(&frame), error = %e, "cannot send a membership frame; dropped");
            }
        }
        for (group, msg) in batch {
            match &msg.body {
                crate::core::Body::AppendEntries { entries, .. } if !entries.is_empty() => {
                    crate::probe::mark("t.AE_write")
                }
                crate::core::Body::AppendEntriesResponse { .. } => {
                    crate::probe::mark("t.AER_write")
                }
                _ => {}
            }
            let msg = peer_features::for_peer(msg, features);
            let (to, kind) = (msg.to, msg.body.kind());
            let frame = match group {
                None => PeerFrame::Msg(msg),
                Some(group) => PeerFrame::Group { group, msg },
            };
            if let Err(e) = encode_frame_bytes(&frame, link.max_frame_bytes, &mut buf) {
                error!(node = link.node, peer = to, kind, error = %e, "cannot send message; dropped");
            }
        }
        trace!(node = link.node, count, bytes = buf.len(), "sending batch");
        if buf.is_empty() {
            continue;
        }
        // Handed over as it is: quinn keeps it until the peer acks it.
        if let Err(e) = send.write_chunk(buf.split().freeze()).await {
            return e.to_string();
        }
    }
}

pub(super) fn frame_kind(frame: &PeerFrame) -> &'static str {
    match frame {
        PeerFrame::Hello { .. } => "Hello",
        PeerFrame::HelloOk => "HelloOk",
        PeerFrame::Refused { .. } => "Refused",
        PeerFrame::Msg(_) => "Msg",
        PeerFrame::Group { .. } => "Group",
        PeerFrame::Coalesced { .. } => "Coalesced",
        PeerFrame::MemberQuery { .. } => "MemberQuery",
        PeerFrame::MemberAnswer { .. } => "MemberAnswer",
        PeerFrame::SendSchemaDetail => "SendSchemaDetail",
        PeerFrame::SchemaDetail(_) => "SchemaDetail",
    }
}

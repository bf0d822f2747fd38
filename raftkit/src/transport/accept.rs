//! The accepting side of the QUIC transport: who is at the other end of an
//! inbound connection, and what it may do there.
//!
//! Every inbound connection's certificate is read ([`peer_principal`]); one
//! that states no role is refused on any ALPN. Client connections are
//! handed to the client service with their [`Principal`]
//! ([`AcceptedClient`]). Peer connections are served only for `node`
//! certificates (any other is closed at once with `CLOSE_REFUSED` and the
//! reason, before any stream of it is accepted); each link's hello is checked against
//! the certificate ([`check_hello`]), and the link then delivers only
//! messages whose `from` is the id of the certificate's name. Open inbound
//! links are counted per node ([`Inbound`]) so that links learned from
//! unknown dialers expire once their node stops dialing in (see
//! [`super::quic`]). How many peer connections are served at once, per
//! node and in all, is `peer_limits`: one past either is closed as soon as
//! its certificate is read. How many connections are in their handshake
//! at once, and for how long, is `handshakes`: one past the bound is
//! refused as it arrives (or takes the place of a stranger's handshake
//! stalled in TLS, or, its address not validated yet, is sent a Retry),
//! TLS not done within its bound is dropped, and a
//! handshake (TLS, then the first link's hello answered) not done within
//! the timeout is closed.
//!
//! A peer connection carries one link (`quic`: a node dials each peer
//! once, one stream per connection): however a link ends (no hello in
//! time, the stream ended before its hello, a refused hello, the answer to
//! the hello not delivered, a protocol error, the stream ended or failed
//! after the link was up, the node stopping), its connection is closed
//! with an application close code, so that the connection's place among
//! the node's peer connections (`peer_limits`) is given back at once,
//! never left to a dialer that keeps it alive with keep-alives. A dialer
//! that opens a second stream on it is closed too (`CLOSE_PROTOCOL`): each
//! stream served would hold a task, a frame buffer and a stream window.
//!
//! Split from `quic` (the endpoint, the outbound links, the transport
//! itself) to keep each file about one side of a link.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use quinn::crypto::rustls::HandshakeData;
use quinn::{Connection, Endpoint, RecvStream, SendStream, VarInt};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tracing::{debug, error, warn};

use super::frame::{FrameError, PROTOCOL_VERSION, PeerFrame, decode_peer_frame, write_frame};
use super::frame_reader::FrameReader;
use super::handshakes::{Denied, HandshakeSlot, Handshakes};
use super::hello_detail::{MAX_DETAIL_BYTES, read_hello, wants_detail, with_detail};
use super::inbox_bytes::{InboxTx, is_body_stalled, read_charged};
use super::peer_limits::PeerPlaces;
use super::quic::{
    CLOSE_NO_SERVICE, CLOSE_NORMAL, CLOSE_PROTOCOL, CLOSE_REFUSED, CLOSE_TOO_MANY_CONNECTIONS,
    GroupInbound, HELLO_TIMEOUT, LinkConfig, frame_kind,
};
use crate::core::NodeId;
use crate::identity::node_id;
use crate::schema::SchemaBook;
use crate::tls::{CLIENT_ALPN, CertRole, PEER_ALPN, Principal};

/// The cap on a hello frame (a name, an address and the schema): a peer
/// never makes the acceptor buffer more than this before it has been
/// accepted. A dialer leaves its schema's detailed shapes out of a hello
/// that would not fit with them, and offers them in a second frame of at
/// most [`MAX_DETAIL_BYTES`](super::quic::MAX_DETAIL_BYTES)
/// (`hello_detail`).
pub const MAX_HELLO_BYTES: usize = 64 * 1024;

/// A client connection accepted by the transport, with who its certificate
/// says is at the other end.
#[derive(Debug)]
pub struct AcceptedClient {
    /// The connection (its TLS handshake is complete).
    pub conn: Connection,
    /// The role, name and fingerprint of the client's certificate.
    pub principal: Principal,
}

/// The principal of the peer of `conn`, from the certificate it presented
/// (verified against the cluster CA by the handshake).
pub fn peer_principal(conn: &Connection) -> Result<Principal, String> {
    let chain = conn
        .peer_identity()
        .and_then(|any| {
            any.downcast::<Vec<rustls_pki_types::CertificateDer<'static>>>()
                .ok()
        })
        .ok_or_else(|| "the peer presented no certificate".to_string())?;
    Principal::from_chain(&chain).map_err(|e| e.to_string())
}

/// What an acceptor learned from an accepted hello.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AcceptedHello {
    /// The dialer's node id (the id of its certificate's name).
    pub from: NodeId,
    /// The dialer's name, as its certificate states it.
    pub name: String,
    /// Where the dialer says it can be reached.
    pub addr: String,
}

/// The acceptor's checks of a hello, given the dialer's certificate: the
/// protocol version and schema must match this node's, the certificate must
/// be a `node` certificate whose name is the hello's name, and the hello's
/// id must be the id of that name. `Err` carries the reason sent back in
/// [`PeerFrame::Refused`]. Pure: the hello fuzz target drives it.
pub fn check_hello(
    schema: u64,
    principal: &Principal,
    hello: PeerFrame,
) -> Result<AcceptedHello, String> {
    check_hello_with(schema, None, principal, hello)
}

/// [`check_hello`] for a node that knows its structural schema: a hello
/// that carries one is accepted when the schemas are compatible
/// ([`crate::schema::Schema::check_peer`]), and the dialer's schema is then
/// recorded in `book` (what the leader's gate of new handlers reads).
pub fn check_hello_with(
    schema: u64,
    book: Option<&SchemaBook>,
    principal: &Principal,
    hello: PeerFrame,
) -> Result<AcceptedHello, String> {
    let PeerFrame::Hello {
        from,
        name,
        addr,
        schema: remote_schema,
        version,
        schema_desc,
    } = hello
    else {
        return Err(format!("expected hello, got {}", frame_kind(&hello)));
    };
    check_identity(principal, from, &name, version)?;
    let structural = book.is_some() && schema_desc.is_some();
    if !structural && remote_schema != schema {
        return Err(format!(
            "schema mismatch: local {schema:#018x} remote {remote_schema:#018x} from {}",
            principal.name
        ));
    }
    if let (Some(book), Some(remote)) = (book, schema_desc) {
        book.accept_peer(from, remote)
            .map_err(|m| format!("schema mismatch with {}: {m}", principal.name))?;
    }
    Ok(AcceptedHello { from, name, addr })
}

/// The checks of a hello that do not look at its schema: a `node`
/// certificate, this protocol version, the certificate's name and the id
/// of that name.
fn check_identity(
    principal: &Principal,
    from: NodeId,
    name: &str,
    version: u32,
) -> Result<(), String> {
    if principal.role != CertRole::Node {
        return Err(format!(
            "peer links need a node certificate; this is a {principal}"
        ));
    }
    if version != PROTOCOL_VERSION {
        return Err(format!(
            "protocol version mismatch: local {PROTOCOL_VERSION} remote {version} from {}",
            principal.name
        ));
    }
    if name != principal.name {
        return Err(format!(
            "the hello claims the name {:?} but the certificate is issued to {:?}",
            name.chars().take(200).collect::<String>(),
            principal.name
        ));
    }
    if from != node_id(name) {
        return Err(format!(
            "node id {from} is not the id of the name {} ({})",
            principal.name,
            node_id(name)
        ));
    }
    Ok(())
}

/// Asks the dialer of `hello`, which offered them, for its schema's
/// detailed shapes, and returns `hello` with them (`hello_detail`); `Err`
/// is the reason the link is refused. The hello's identity is checked
/// first: only a certified node makes this node read up to
/// [`MAX_DETAIL_BYTES`] more.
async fn ask_detail(
    principal: &Principal,
    hello: PeerFrame,
    send: &mut SendStream,
    frames: &mut FrameReader,
    max: usize,
    deadline: tokio::time::Instant,
) -> Result<PeerFrame, String> {
    if let PeerFrame::Hello {
        from,
        name,
        version,
        ..
    } = &hello
    {
        check_identity(principal, *from, name, *version)?;
    }
    // Within the handshake's deadline: a dialer that grants no stream
    // credit would hold the write (and the handshake's slot) for ever.
    match tokio::time::timeout_at(
        deadline,
        write_frame(send, &PeerFrame::SendSchemaDetail, max),
    )
    .await
    {
        Err(_) => {
            return Err("the dialer did not take the request for the schema detail in time".into());
        }
        Ok(Err(e)) => return Err(format!("cannot ask for the schema detail: {e}")),
        Ok(Ok(())) => {}
    }
    let cap = max.min(MAX_DETAIL_BYTES);
    let body = match tokio::time::timeout_at(deadline, frames.next(cap)).await {
        Err(_) => return Err("the schema detail that was asked for did not come in time".into()),
        Ok(Err(e)) => return Err(format!("the schema detail frame: {e}")),
        Ok(Ok(body)) => body,
    };
    with_detail(hello, &body)
}

/// Open inbound links per dialer, shared by the accept side (which opens
/// and closes them) and the learned-link sweep (which expires links back to
/// dialers no longer heard from).
#[derive(Default)]
pub(super) struct Inbound {
    /// Per node: (open inbound links, when the last one closed).
    pub(super) links: HashMap<NodeId, (usize, std::time::Instant)>,
}

pub(super) type SharedInbound = Arc<Mutex<Inbound>>;

pub(super) fn lock_inbound(inbound: &SharedInbound) -> MutexGuard<'_, Inbound> {
    inbound.lock().unwrap_or_else(|p| p.into_inner())
}

/// Counts one open inbound link from `node` while alive.
struct InboundGuard {
    inbound: SharedInbound,
    node: NodeId,
}

impl InboundGuard {
    fn open(inbound: &SharedInbound, node: NodeId) -> InboundGuard {
        let mut map = lock_inbound(inbound);
        let entry = map
            .links
            .entry(node)
            .or_insert((0, std::time::Instant::now()));
        entry.0 += 1;
        InboundGuard {
            inbound: inbound.clone(),
            node,
        }
    }
}

impl Drop for InboundGuard {
    fn drop(&mut self) {
        let mut map = lock_inbound(&self.inbound);
        if let Some(entry) = map.links.get_mut(&self.node) {
            entry.0 = entry.0.saturating_sub(1);
            entry.1 = std::time::Instant::now();
        }
    }
}

/// How many inbound connections the accept loop serves at once.
pub(super) struct AcceptLimits {
    /// The places of peer connections (`peer_limits`).
    pub(super) places: Arc<PeerPlaces>,
    /// The slots of handshakes in progress (`handshakes`).
    pub(super) handshakes: Arc<Handshakes>,
}

/// Accepts connections until the endpoint closes; each is served by its own
/// task (aborted with this one).
pub(super) async fn accept_loop(
    endpoint: Endpoint,
    link: Arc<LinkConfig>,
    inbox: InboxTx,
    clients: Option<mpsc::Sender<AcceptedClient>>,
    learned: mpsc::Sender<(NodeId, String)>,
    inbound: SharedInbound,
    limits: AcceptLimits,
) {
    let AcceptLimits { places, handshakes } = limits;
    let mut tasks = JoinSet::new();
    loop {
        tokio::select! {
            incoming = endpoint.accept() => {
                let Some(incoming) = incoming else { break };
                // Once half the slots are taken, an attempt from an address
                // it has not proven it owns is sent a QUIC Retry (stateless:
                // no slot, no task); a real dialer answers it at once and
                // comes back validated, a spoofed source never does
                // (`handshakes`).
                let incoming = if handshakes.crowded()
                    && !incoming.remote_address_validated()
                    && incoming.may_retry()
                {
                    match incoming.retry() {
                        Ok(()) => {
                            handshakes.count_retry();
                            continue;
                        }
                        Err(e) => e.into_incoming(),
                    }
                } else {
                    incoming
                };
                // A slot among the handshakes in progress, or refused at
                // once (`handshakes`; a member's validated address may take
                // the slots kept for members).
                let slot = match handshakes.admit(
                    incoming.remote_address(),
                    incoming.remote_address_validated(),
                ) {
                    Ok(slot) => slot,
                    Err(Denied::Unvalidated) => {
                        // Not refused before its address is proven: judged
                        // by its IP, a member's first attempt would be
                        // refused for strangers at that IP (or spoofing
                        // it). A Retry (stateless) brings it back judged
                        // by its exact address (`handshakes`).
                        let incoming = if incoming.may_retry() {
                            match incoming.retry() {
                                Ok(()) => {
                                    handshakes.count_retry();
                                    continue;
                                }
                                Err(e) => e.into_incoming(),
                            }
                        } else {
                            incoming
                        };
                        refuse(&link, &handshakes, incoming, handshakes.count_refusal());
                        continue;
                    }
                    Err(Denied::Refused(refused)) => {
                        refuse(&link, &handshakes, incoming, refused);
                        continue;
                    }
                };
                let served = Served {
                    link: link.clone(),
                    inbox: inbox.clone(),
                    learned: learned.clone(),
                    inbound: inbound.clone(),
                    places: places.clone(),
                    handshake_timeout: handshakes.timeout(),
                    tls_timeout: handshakes.tls_timeout(),
                };
                tasks.spawn(serve_incoming(incoming, served, clients.clone(), slot));
            }
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
    debug!(node = link.node, "accept loop stopped");
}

/// Refuses `incoming` at once (before any cryptography), the `refused`th
/// refusal (`handshakes`).
fn refuse(link: &LinkConfig, handshakes: &Handshakes, incoming: quinn::Incoming, refused: u64) {
    let remote = incoming.remote_address();
    if refused.is_power_of_two() {
        warn!(node = link.node, %remote, max = handshakes.max(), refused,
            "inbound connection refused: too many handshakes in progress (logged at the first refusal and every power of two)");
    } else {
        debug!(node = link.node, %remote, refused,
            "inbound connection refused: too many handshakes in progress");
    }
    incoming.refuse();
}

/// What serving an inbound peer connection needs.
#[derive(Clone)]
struct Served {
    link: Arc<LinkConfig>,
    /// Where the link's messages go, charged to the node's inbox budget
    /// or not (`inbox_bytes`).
    inbox: InboxTx,
    learned: mpsc::Sender<(NodeId, String)>,
    inbound: SharedInbound,
    places: Arc<PeerPlaces>,
    /// How long a link's handshake may take (`handshakes`).
    handshake_timeout: std::time::Duration,
    /// How long its TLS phase may take (`handshakes::tls_timeout`).
    tls_timeout: std::time::Duration,
}

/// Serves one inbound connection, which holds `slot` among the handshakes
/// in progress until its handshake is done (`handshakes`).
async fn serve_incoming(
    incoming: quinn::Incoming,
    served: Served,
    clients: Option<mpsc::Sender<AcceptedClient>>,
    mut slot: HandshakeSlot,
) {
    let link = &served.link;
    let remote = incoming.remote_address();
    // TLS within its own, shorter bound: a real dialer needs a few round
    // trips; one that answered the Retry and stalls is not let hold its
    // slot for the whole handshake timeout (`handshakes::tls_timeout`).
    // A stranger's handshake still in TLS gives its slot to a newcomer
    // that finds them all taken, once old enough (`handshakes`).
    let tls_deadline = slot.tls_deadline;
    let tls = tokio::select! {
        tls = tokio::time::timeout_at(tls_deadline, incoming) => tls,
        evictions = slot.evicted() => {
            // Dropping the handshake closes it.
            if evictions.is_power_of_two() {
                warn!(node = link.node, %remote, evictions,
                    "inbound handshake stalled in TLS gave its slot to a newer attempt; dropped (logged at the first eviction and every power of two)");
            } else {
                debug!(node = link.node, %remote, evictions,
                    "inbound handshake stalled in TLS gave its slot to a newer attempt; dropped");
            }
            return;
        }
    };
    let conn = match tls {
        Ok(Ok(conn)) => conn,
        Err(_) => {
            // Dropping the handshake closes it.
            warn!(node = link.node, %remote, tls_timeout = ?served.tls_timeout,
                "inbound TLS handshake not done in time; connection dropped");
            return;
        }
        Ok(Err(e)) => {
            warn!(node = link.node, %remote, error = %e,
                "inbound handshake failed (no certificate of the cluster CA?); connection dropped");
            return;
        }
    };
    slot.tls_done();
    let alpn = conn
        .handshake_data()
        .and_then(|d| d.downcast::<HandshakeData>().ok())
        .and_then(|d| d.protocol);
    let principal = match peer_principal(&conn) {
        Ok(p) => p,
        Err(reason) => {
            warn!(node = link.node, %remote, %reason, "certificate states no usable role; connection refused");
            conn.close(
                VarInt::from_u32(CLOSE_REFUSED),
                b"certificate states no raftkit role",
            );
            return;
        }
    };
    match alpn.as_deref() {
        Some(PEER_ALPN) => serve_peer(conn, remote, principal, served, slot).await,
        Some(CLIENT_ALPN) => match clients {
            Some(clients) => {
                let accepted = AcceptedClient {
                    conn: conn.clone(),
                    principal,
                };
                // Handed over, the slot is given back: the client service
                // has limits of its own (`runtime::intake`).
                match tokio::time::timeout_at(slot.deadline, clients.send(accepted)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => conn.close(
                        VarInt::from_u32(CLOSE_NO_SERVICE),
                        b"client service stopped",
                    ),
                    Err(_) => {
                        warn!(node = link.node, %remote,
                            "the client service did not take a connection within the handshake timeout; closed");
                        conn.close(VarInt::from_u32(CLOSE_NO_SERVICE), b"client service busy");
                    }
                }
            }
            None => {
                debug!(node = link.node, %remote, "client connection refused: no client service");
                conn.close(VarInt::from_u32(CLOSE_NO_SERVICE), b"no client service");
            }
        },
        _ => {
            warn!(node = link.node, %remote, "connection without a known ALPN protocol; closed");
            conn.close(VarInt::from_u32(CLOSE_NO_SERVICE), b"unknown protocol");
        }
    }
}

/// The reason a connection on [`PEER_ALPN`] whose certificate is not a
/// node's is closed with ([`CLOSE_REFUSED`]).
const NOT_A_NODE: &[u8] = b"peer links need a node certificate";

/// Serves every stream a peer opens on one connection. A certificate that
/// is not a node's is closed at once ([`CLOSE_REFUSED`], [`NOT_A_NODE`]),
/// before any stream of it is accepted: it is never kept waiting for a
/// hello, nor anything it sends buffered.
async fn serve_peer(
    conn: Connection,
    remote: SocketAddr,
    principal: Principal,
    served: Served,
    slot: HandshakeSlot,
) {
    if principal.role != CertRole::Node {
        let reason = format!("peer links need a node certificate; this is a {principal}");
        error!(node = served.link.node, %remote, %reason, "refused peer link");
        conn.close(VarInt::from_u32(CLOSE_REFUSED), NOT_A_NODE);
        return;
    }
    // A place among the node's peer connections (`peer_limits`), held
    // until this connection's streams are done, or none: closed at once.
    let dialer = node_id(&principal.name);
    let _place = match served.places.admit(dialer) {
        Ok(place) => place,
        Err(refusal) => {
            warn!(node = served.link.node, %remote, peer = %principal.name, peer_id = dialer,
                reason = %refusal, refused = served.places.refused(),
                "peer connection refused: past the node's limit of peer connections");
            conn.close(
                VarInt::from_u32(CLOSE_TOO_MANY_CONNECTIONS),
                refusal.to_string().as_bytes(),
            );
            return;
        }
    };
    // A node's link: the windows of a peer link, not a client's.
    super::quic_tuning::open_peer_window(&conn);
    // Its link's stream, within the handshake's time (`handshakes`): a
    // dialer that opens none is not kept waiting for one.
    let (send, recv) = match tokio::time::timeout_at(slot.deadline, conn.accept_bi()).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            debug!(node = served.link.node, %remote, reason = %e, "inbound peer connection closed before its link");
            return;
        }
        Err(_) => {
            warn!(node = served.link.node, %remote, peer = %principal.name, timeout = ?served.handshake_timeout,
                "peer opened no link in time; closing the connection");
            conn.close(VarInt::from_u32(CLOSE_PROTOCOL), b"no hello in time");
            return;
        }
    };
    let principal = Arc::new(principal);
    let mut streams = JoinSet::new();
    let deadline = slot.deadline;
    streams.spawn(serve_link(
        conn.clone(),
        remote,
        principal.clone(),
        served.clone(),
        (send, recv),
        (deadline, Some(slot)),
    ));
    loop {
        tokio::select! {
            accepted = conn.accept_bi() => match accepted {
                Ok(_) => {
                    // Another stream: a node opens one per connection,
                    // its link's. Served, each would hold a task, a frame
                    // buffer and a stream window (up to the streams the
                    // handshake allowed, `quic_tuning`): the connection
                    // is closed, its link with it (the dialer redials).
                    warn!(node = served.link.node, %remote, peer = %principal.name,
                        "peer opened a second stream on its link's connection; closing the connection");
                    conn.close(VarInt::from_u32(CLOSE_PROTOCOL), b"one stream per peer connection");
                    return;
                }
                Err(e) => {
                    debug!(node = served.link.node, %remote, reason = %e, "inbound peer connection closed");
                    return;
                }
            },
            Some(_) = streams.join_next(), if !streams.is_empty() => {}
        }
    }
}

/// Serves one link stream: hello, then messages into the inbox. The
/// hello must be answered by `handshake.0`; `handshake.1` is the
/// connection's slot among the handshakes in progress, given back once the
/// hello is answered (`handshakes`).
async fn serve_link(
    conn: Connection,
    remote: SocketAddr,
    principal: Arc<Principal>,
    served: Served,
    (mut send, recv): (SendStream, RecvStream),
    (deadline, slot): (tokio::time::Instant, Option<HandshakeSlot>),
) {
    let link = &served.link;
    let mut frames = FrameReader::new(recv);
    let max = link.max_frame_bytes;
    let protocol_error = |peer: &str, reason: String| {
        warn!(node = link.node, %remote, peer, %reason, "bad frame from peer; closing the link");
        conn.close(VarInt::from_u32(CLOSE_PROTOCOL), b"protocol error");
    };
    let hello_max = max.min(MAX_HELLO_BYTES);
    let body = match tokio::time::timeout_at(deadline, frames.next(hello_max)).await {
        Err(_) => return protocol_error(&principal.name, "no hello in time".into()),
        Ok(Err(FrameError::Closed)) => {
            return protocol_error(&principal.name, "the link ended before its hello".into());
        }
        Ok(Err(e)) => return protocol_error(&principal.name, e.to_string()),
        Ok(Ok(body)) => body,
    };
    let (first, offered) = match read_hello(&body) {
        Ok(read) => read,
        Err(e) => return protocol_error(&principal.name, e.to_string()),
    };
    // A dialer whose schema did not fit the hello with its detailed shapes
    // sends them now, asked (`hello_detail`): names are compared.
    let first = if link.schemas.is_some() && wants_detail(&first, offered) {
        ask_detail(&principal, first, &mut send, &mut frames, max, deadline).await
    } else {
        Ok(first)
    };
    let checked = first.and_then(|first| {
        check_hello_with(link.schema, link.schemas.as_deref(), &principal, first)
    });
    let hello = match checked {
        Ok(hello) => hello,
        Err(reason) => {
            drop(slot);
            error!(node = link.node, %remote, peer = %principal.name, %reason, "refused peer link");
            let refusal = PeerFrame::Refused { reason };
            let written = write_frame(&mut send, &refusal, max);
            if let Ok(Ok(())) = tokio::time::timeout(HELLO_TIMEOUT, written).await {
                let _ = send.finish();
                // Let the dialer read the refusal and close; then close anyway.
                let _ = tokio::time::timeout(HELLO_TIMEOUT, conn.closed()).await;
            }
            conn.close(VarInt::from_u32(CLOSE_REFUSED), b"refused");
            return;
        }
    };
    let AcceptedHello { from, name, addr } = hello;
    // Within the handshake's deadline, as the hello was: a dialer that
    // grants no stream credit would hold the write (and the slot) for ever.
    // The answer announces the message shapes this binary understands
    // (`peer_features`); a dialer of an earlier binary ignores that.
    let answered = match tokio::time::timeout_at(
        deadline,
        super::peer_features::write_hello_ok(&mut send, max),
    )
    .await
    {
        Ok(answered) => answered.map_err(|e| e.to_string()),
        Err(_) => Err("the answer to the hello was not taken in time".to_string()),
    };
    drop(slot);
    if let Err(e) = answered {
        // The dialer stopped reading (or went): the link never comes up.
        debug!(node = link.node, %remote, peer = %name, error = %e, "cannot answer hello; closing the connection");
        conn.close(VarInt::from_u32(CLOSE_PROTOCOL), b"cannot answer the hello");
        return;
    }
    debug!(node = link.node, %remote, peer = %name, "inbound peer link up");
    let _alive = InboundGuard::open(&served.inbound, from);
    // Make sure we can answer: open a link back if we have none yet (the
    // learned-link task ignores nodes it already has a link to).
    let _ = served.learned.try_send((from, addr.clone()));
    let mut wrong_from: u64 = 0;
    let mut unknown: u64 = 0;
    // The node's inbox budget (a single-group node's inbox, or a
    // multi-group node's groups): every frame is charged before it is
    // decoded, so a link waiting for the budget holds no decoded message
    // (`inbox_bytes::read_charged`).
    let budget = served
        .inbox
        .budget()
        .or_else(|| link.group_inbox.as_ref().and_then(|g| g.budget()))
        .cloned();
    // One large frame in progress for this peer across its links.
    let gate = budget.as_ref().map(|b| b.peer_gate(from));
    let charged = budget.as_deref().zip(gate.as_deref());
    // How long a charged frame's body may stop arriving.
    let stall = served.handshake_timeout;
    loop {
        let (frame, charge) = match read_charged(&mut frames, max, charged, stall).await {
            Ok((body, charge)) => (decode_peer_frame(&body), charge),
            Err(e) => (Err(e), None),
        };
        match frame {
            Ok(PeerFrame::Msg(msg)) => {
                match &msg.body {
                    crate::core::Body::AppendEntries { entries, .. } if !entries.is_empty() => {
                        crate::probe::mark("t.AE_in")
                    }
                    crate::core::Body::AppendEntriesResponse { .. } => {
                        crate::probe::mark("t.AER_in")
                    }
                    _ => {}
                }
                if msg.from != from {
                    wrong_from += 1;
                    if wrong_from == 1 {
                        warn!(node = link.node, %remote, peer = %name, claimed = msg.from,
                            "message from another node id than the link's certificate; dropped (logged once per link)");
                    }
                    continue;
                }
                // Waits for room in the budget and the inbox: meanwhile
                // this link reads nothing, and QUIC flow control stops
                // its dialer.
                if served.inbox.send(msg, charge).await.is_err() {
                    debug!(node = link.node, "inbox closed; dropping the link");
                    conn.close(VarInt::from_u32(CLOSE_NORMAL), b"node stopping");
                    return;
                }
            }
            Ok(PeerFrame::Group { group, msg }) if link.group_inbox.is_some() => {
                if msg.from != from {
                    wrong_from += 1;
                    if wrong_from == 1 {
                        warn!(node = link.node, %remote, peer = %name, claimed = msg.from, group,
                            "message from another node id than the link's certificate; dropped (logged once per link)");
                    }
                    continue;
                }
                let Some(groups) = &link.group_inbox else {
                    continue;
                };
                if groups.send_msg(group, msg, charge).await.is_err() {
                    debug!(node = link.node, "group inbox closed; dropping the link");
                    conn.close(VarInt::from_u32(CLOSE_NORMAL), b"node stopping");
                    return;
                }
            }
            Ok(PeerFrame::Coalesced { quiesced }) if link.group_inbox.is_some() => {
                let Some(groups) = &link.group_inbox else {
                    continue;
                };
                if groups
                    .send(GroupInbound::Coalesced { from, quiesced })
                    .await
                    .is_err()
                {
                    debug!(node = link.node, "group inbox closed; dropping the link");
                    conn.close(VarInt::from_u32(CLOSE_NORMAL), b"node stopping");
                    return;
                }
            }
            Ok(PeerFrame::MemberQuery { group }) if link.group_inbox.is_some() => {
                let Some(groups) = &link.group_inbox else {
                    continue;
                };
                // Never waits: a query or answer the node is too busy for
                // is dropped (the asker asks again).
                let _ = groups.try_send(GroupInbound::MemberQuery {
                    from,
                    addr: addr.clone(),
                    group,
                });
            }
            Ok(PeerFrame::MemberAnswer { group, answer }) if link.group_inbox.is_some() => {
                let Some(groups) = &link.group_inbox else {
                    continue;
                };
                let _ = groups.try_send(GroupInbound::MemberAnswer {
                    from,
                    group,
                    answer,
                });
            }
            Ok(other) => {
                return protocol_error(&name, format!("unexpected {} frame", frame_kind(&other)));
            }
            Err(FrameError::UnknownKind(kind)) => {
                unknown += 1;
                if unknown == 1 {
                    warn!(node = link.node, %remote, peer = %name, kind,
                        "frame of a kind this node does not know (a newer peer?); skipped (logged once per link)");
                }
            }
            Err(FrameError::Closed) => {
                debug!(node = link.node, %remote, peer = %name, "inbound peer link closed");
                conn.close(VarInt::from_u32(CLOSE_NORMAL), b"link ended");
                return;
            }
            Err(FrameError::Io(e)) if is_body_stalled(&e) => {
                warn!(node = link.node, %remote, peer = %name, reason = %e,
                    "a charged frame's body stopped arriving; closing the link");
                conn.close(VarInt::from_u32(CLOSE_PROTOCOL), b"frame body stalled");
                return;
            }
            Err(FrameError::Io(e)) => {
                debug!(node = link.node, %remote, peer = %name, error = %e, "inbound peer link failed");
                conn.close(VarInt::from_u32(CLOSE_NORMAL), b"link ended");
                return;
            }
            Err(e) => return protocol_error(&name, e.to_string()),
        }
    }
}

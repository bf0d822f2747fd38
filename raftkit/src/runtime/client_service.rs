//! The client service: answers client connections (ALPN
//! `raftkit-client/1`) on the peer's QUIC endpoint.
//!
//! Each connection starts with a hello stream (schema check); then every
//! request is one bidirectional stream carrying one request frame and one
//! response frame, or, for a client whose hello asked for protocol version
//! 2, a frame on the hello stream, which stays open and carries many
//! requests at once (see `client_mux`). Writes and reads are served only by the leader; any other
//! peer answers `NotLeader` with the leader's address and the client
//! follows it (redirect, not forward). A malformed or oversized frame closes
//! that stream with a logged warning; the connection and the node go on.
//!
//! Every request is authorized against the [`Principal`] of the
//! connection's certificate before it reaches the node (see
//! [`super::authorization`]); a refusal is answered with
//! [`WireError::Unauthorized`] and logged at `warn` once per connection.
//!
//! The principal is also the only source of identity for sessions: every
//! session request of a connection is made on behalf of the principal's
//! certificate fingerprint (the SHA-256 of the leaf certificate the client
//! presented in the TLS handshake, [`Owner::of`]), never of anything the
//! client says, so a session id learned by another client is useless to it
//! (see `session.rs`).
//!
//! Every request frame, on either path, takes room in the node's budget of
//! received requests before its body is read, and holds it until it is
//! answered; one that finds none within the admission wait is answered
//! `Overloaded` (see `intake`), and so is one whose body stops arriving
//! for the intake's stall bound, or is not here whole by its deadline (the
//! stall bound plus its length at the intake's minimum body rate): its
//! room given back, nothing of it decoded; on the multiplexed stream the
//! stream ends instead. A connection past the node's limits of
//! connections (per client certificate, and in all) is closed before
//! anything of it is read (see `intake`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use quinn::{RecvStream, SendStream};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::Peer;
use super::authorization::{authorize, request_kind};
use super::intake::{BodyBounds, ConnectionIntake, ConnectionLimits, Intake};
pub(crate) use super::outgoing::Outgoing;
use super::session::Owner;
use crate::client::mux::{MUX_ACCEPTED, MUX_VERSION};
use crate::client::wire::{ClientHello, ClientRequest, ClientResponse, StatusReport, WireError};
use crate::client::wire::{RequestId, RequestMeta};
use crate::core::Role;
use crate::error::Error;
use crate::state_machine::StateMachine;
use crate::tls::Principal;
use crate::transport::frame::{
    FrameError, read_frame_len, read_frame_rest_unless_stalled, write_frame,
};
use crate::transport::frame_reader::FrameReader;
use crate::transport::quic::{AcceptedClient, CLOSE_TOO_MANY_CONNECTIONS};
use tracing::Instrument;

/// The largest request frame a `node` certificate may send a single peer
/// ([`Front::max_request_bytes`]): its requests there (a status, asking to
/// be added with its address) are a few hundred bytes.
pub(crate) const MAX_NODE_REQUEST_BYTES: usize = 64 << 10;

/// The refusal of a frame of `len` bytes past what `principal`'s role may
/// send (`cap`), before it takes room or is read.
pub(crate) fn too_large_for_role(principal: &Principal, len: usize, cap: usize) -> Error {
    Error::Unauthorized(format!(
        "a request of {len} bytes refused unread: a {principal} may send at most {cap} bytes a request"
    ))
}

/// How long the service waits for a write or read before answering
/// `Timeout` (the client retries with the same session sequence number).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves every client connection the transport hands over.
pub async fn serve<S: StateMachine>(
    peer: Peer<S>,
    conns: mpsc::Receiver<AcceptedClient>,
    max_frame: usize,
) {
    serve_front(peer, conns, max_frame).await
}

/// Whom a client connection's requests go to: one peer, or the groups of a
/// multi-group node ([`crate::multi::service`]), which routes each request
/// by the group in its [`RequestMeta`]. Everything else about a connection
/// (hello, authorization, sessions, multiplexing, errors) is the same.
pub(crate) trait Front: Clone + Send + Sync + 'static {
    /// The state machine's name (authorization checks node names with it).
    fn state_machine(&self) -> &'static str;
    /// The answer to a client's hello (its schema checked).
    fn hello(&self, hello: &ClientHello, remote: std::net::SocketAddr) -> ClientResponse;
    /// Whether `principal` may make `request` (see
    /// [`authorize`](super::authorization::authorize)); a multi-group node
    /// also lets nodes keep its placement group up to date
    /// ([`crate::multi::service`]).
    fn authorize(
        &self,
        principal: &Principal,
        request: &ClientRequest,
        _meta: Option<RequestMeta>,
    ) -> Result<(), Error> {
        authorize(self.state_machine(), principal, request)
    }
    /// The largest request frame `principal` may send, checked from its
    /// length prefix before the frame takes room in the node's budget
    /// (`intake`): a larger one is refused [`Error::Unauthorized`]
    /// (nothing applied) unread. A `node` certificate may make only small
    /// requests of a single peer (a status, asking to be added: see
    /// [`super::authorization`]): at most [`MAX_NODE_REQUEST_BYTES`]; any
    /// other role up to `max_frame`.
    fn max_request_bytes(&self, principal: &Principal, max_frame: usize) -> usize {
        match principal.role {
            crate::tls::CertRole::Node => max_frame.min(MAX_NODE_REQUEST_BYTES),
            _ => max_frame,
        }
    }
    /// Answers one authorized request.
    fn handle(
        &self,
        principal: &Principal,
        request: ClientRequest,
        meta: Option<RequestMeta>,
    ) -> impl std::future::Future<Output = ClientResponse> + Send;
    /// [`Front::handle`] for a response frame: the same answer, which a
    /// front may give as an [`Outgoing::Ok`] of shared bytes (a write's
    /// output as the apply thread encoded it) rather than copying them into
    /// a `ClientResponse::Ok` (the frame's bytes are the same).
    fn handle_outgoing(
        &self,
        principal: &Principal,
        request: ClientRequest,
        meta: Option<RequestMeta>,
    ) -> impl std::future::Future<Output = Outgoing> + Send {
        async move { Outgoing::Response(self.handle(principal, request, meta).await) }
    }
    /// The budget of received, unanswered request bytes of the node and
    /// how long a request waits for room in it (`intake`): the node's
    /// in-flight byte budget and admission wait.
    fn intake_budget(&self) -> (usize, Duration) {
        (
            super::admission::DEFAULT_MAX_IN_FLIGHT_BYTES,
            super::admission::DEFAULT_ADMISSION_WAIT,
        )
    }
    /// Counts a request refused `Overloaded` for want of room in that
    /// budget (a peer counts it with its admission's refusals, in
    /// [`PeerStatus::overloaded`](super::PeerStatus)).
    fn note_overloaded(&self) {}
    /// Serves an authorized watch on its own stream, for the client
    /// certificate whose fingerprint is `certificate` (its watches are
    /// capped per certificate, see `watch`).
    fn watch(
        &self,
        certificate: [u8; 32],
        from: Option<u64>,
        meta: Option<RequestMeta>,
        send: SendStream,
        max_frame: usize,
    ) -> impl std::future::Future<Output = ()> + Send;
}

impl<S: StateMachine> Front for Peer<S> {
    fn state_machine(&self) -> &'static str {
        S::NAME
    }

    fn hello(&self, hello: &ClientHello, remote: std::net::SocketAddr) -> ClientResponse {
        check_hello::<S>(self.schemas(), hello, remote)
    }

    fn intake_budget(&self) -> (usize, Duration) {
        self.inner.admission.bytes_and_wait()
    }

    fn note_overloaded(&self) {
        self.inner.admission.note_refused()
    }

    async fn handle(
        &self,
        principal: &Principal,
        request: ClientRequest,
        meta: Option<RequestMeta>,
    ) -> ClientResponse {
        // A request for a numbered group went to a single-group peer.
        // (Client writes arrive through `handle_outgoing`, which takes
        // its own path for a write with no group and comes here for the
        // rest: a check added here for writes must be added there too.)
        if let Some(group) = meta.and_then(|m| m.group) {
            return ClientResponse::Err(WireError::NotHosted { group });
        }
        let consistency = meta.map(|m| m.consistency).unwrap_or_default();
        // Boxed: the futures that wait on this one (`answer`, its span,
        // `client_mux`'s `FuturesUnordered` task) are moved several times
        // per request, and each move copies the whole state of what they
        // wait on. Boxed, that state (the read and write paths:
        // admission, the command) is allocated once and never copied again;
        // the moves copy a pointer.
        Box::pin(super::reads::handle_with(
            self,
            principal,
            request,
            consistency,
        ))
        .await
    }

    async fn handle_outgoing(
        &self,
        principal: &Principal,
        request: ClientRequest,
        meta: Option<RequestMeta>,
    ) -> Outgoing {
        match request {
            // A write's output goes into the frame as the apply thread
            // encoded it (no copy into a `Vec`); the answer is the one
            // `handle` gives (`handle_untimed`'s write arm): keep the two
            // alike (a check `handle` makes of writes belongs here too).
            ClientRequest::Write { session, command } if meta.and_then(|m| m.group).is_none() => {
                // Boxed, as in `handle`: the write path's state is
                // allocated once, not copied by every move of the futures
                // waiting on it.
                Box::pin(async move {
                    match self.write_as(command, session, Owner::of(principal)).await {
                        Ok(output) => Outgoing::Ok(output),
                        Err(e) => Outgoing::Response(ClientResponse::Err(e.into())),
                    }
                })
                .await
            }
            request => Outgoing::Response(self.handle(principal, request, meta).await),
        }
    }

    async fn watch(
        &self,
        certificate: [u8; 32],
        from: Option<u64>,
        meta: Option<RequestMeta>,
        mut send: SendStream,
        max_frame: usize,
    ) {
        if let Some(group) = meta.and_then(|m| m.group) {
            let _ = write_frame(
                &mut send,
                &ClientResponse::Err(WireError::NotHosted { group }),
                max_frame,
            )
            .await;
            let _ = send.finish();
            return;
        }
        super::watch::serve(
            self.journal(),
            self.liveness(),
            certificate,
            from,
            send,
            max_frame,
        )
        .await
    }
}

/// Serves every client connection the transport hands over, for `front`.
pub(crate) async fn serve_front<F: Front>(
    front: F,
    conns: mpsc::Receiver<AcceptedClient>,
    max_frame: usize,
) {
    serve_front_limited(
        front,
        conns,
        max_frame,
        ConnectionLimits::default(),
        BodyBounds::default(),
    )
    .await
}

/// [`serve_front`] serving at most `limits` connections at once, giving
/// back the room of a request body that takes longer than `body` allows
/// (see `intake`).
pub(crate) async fn serve_front_limited<F: Front>(
    front: F,
    conns: mpsc::Receiver<AcceptedClient>,
    max_frame: usize,
    limits: ConnectionLimits,
    body: BodyBounds,
) {
    let (bytes, wait) = front.intake_budget();
    let intake = Intake::with_limits(bytes, wait, limits, body);
    serve_front_with(front, conns, max_frame, intake).await
}

/// [`serve_front`] with the node's budget of received requests given.
pub(super) async fn serve_front_with<F: Front>(
    front: F,
    mut conns: mpsc::Receiver<AcceptedClient>,
    max_frame: usize,
    intake: Arc<Intake>,
) {
    while let Some(accepted) = conns.recv().await {
        match intake.admit(accepted.principal.cert_fingerprint) {
            Ok(intake) => {
                tokio::spawn(serve_connection(front.clone(), accepted, max_frame, intake));
            }
            Err(refusal) => {
                let remote = accepted.conn.remote_address();
                warn!(%remote, client = %accepted.principal, reason = %refusal,
                    "client connection refused: past the node's connection limit");
                accepted.conn.close(
                    CLOSE_TOO_MANY_CONNECTIONS.into(),
                    refusal.to_string().as_bytes(),
                );
            }
        }
    }
}

/// Who a connection's requests come from, and whether a refusal was logged.
pub(crate) struct Caller {
    pub(super) principal: Principal,
    remote: std::net::SocketAddr,
    refusal_logged: AtomicBool,
}

#[cfg(test)]
impl Caller {
    /// A caller with `principal`'s certificate (tests of the multiplexer).
    pub(super) fn for_tests(principal: Principal, remote: std::net::SocketAddr) -> Caller {
        Caller {
            principal,
            remote,
            refusal_logged: AtomicBool::new(false),
        }
    }
}

/// The answer to a hello from a client of a state machine `S` whose
/// schemas are `schemas`.
pub(crate) fn check_hello<S: StateMachine>(
    schemas: &crate::schema::SchemaBook,
    hello: &ClientHello,
    remote: std::net::SocketAddr,
) -> ClientResponse {
    if let Some(theirs) = &hello.schema_desc {
        // A typed client with a structural schema: compatible is enough
        // (it may know fewer or more handlers than this binary).
        match schemas.local().check_peer(theirs) {
            Ok(()) => ClientResponse::Ok(Vec::new()),
            Err(m) => {
                warn!(%remote, handler = %m.handler, reason = %m.reason, "client schema incompatible; refused");
                ClientResponse::Err(WireError::SchemaMismatch {
                    handler: m.handler,
                    reason: m.reason,
                })
            }
        }
    } else if hello.schema != 0 && hello.schema != S::SCHEMA_FINGERPRINT {
        warn!(%remote, local = format_args!("{:#018x}", S::SCHEMA_FINGERPRINT), remote_schema = format_args!("{:#018x}", hello.schema), "client schema mismatch; refused");
        ClientResponse::Err(WireError::SchemaMismatch {
            handler: "(unknown: the client predates structural schemas)".into(),
            reason: format!(
                "the cluster runs `{}` with schema fingerprint {:#018x}, the client has {:#018x}",
                S::NAME,
                S::SCHEMA_FINGERPRINT,
                hello.schema
            ),
        })
    } else {
        ClientResponse::Ok(Vec::new())
    }
}

/// The cap on a client's hello frame: a version and the description of
/// the client's schema (a few KiB for a large state machine). A hello
/// decodes into more memory than its bytes, so it is not given the cap of
/// a request frame.
pub const MAX_CLIENT_HELLO_BYTES: usize = 1 << 20;

/// How long a client connection may take to send its hello.
const CLIENT_HELLO_TIMEOUT: Duration = Duration::from_secs(10);

async fn serve_connection<F: Front>(
    front: F,
    accepted: AcceptedClient,
    max_frame: usize,
    intake: ConnectionIntake,
) {
    let AcceptedClient { conn, principal } = accepted;
    let remote = conn.remote_address();
    let Ok(Ok((mut send, recv))) =
        tokio::time::timeout(CLIENT_HELLO_TIMEOUT, conn.accept_bi()).await
    else {
        debug!(%remote, "no hello stream in time; closing the connection");
        conn.close(1u32.into(), b"no hello");
        return;
    };
    // Kept for the multiplexed requests that follow on this stream.
    let mut frames = FrameReader::new(recv);
    // Bounded in size and time: a hello decodes into more memory than its
    // bytes (a schema description), and a connection that never says
    // hello holds nothing for long.
    let read = frames.next_decoded::<ClientHello>(MAX_CLIENT_HELLO_BYTES.min(max_frame));
    let hello = match tokio::time::timeout(CLIENT_HELLO_TIMEOUT, read).await {
        Ok(Ok(h)) => h,
        Ok(Err(e)) => {
            warn!(%remote, error = %e, "client hello unreadable; closing the connection");
            conn.close(1u32.into(), b"bad hello");
            return;
        }
        Err(_) => {
            debug!(%remote, "no client hello in time; closing the connection");
            conn.close(1u32.into(), b"no hello");
            return;
        }
    };
    let answer = front.hello(&hello, remote);
    let answer = match answer {
        // The hello stream stays open for multiplexed requests.
        ClientResponse::Ok(_) if hello.version >= MUX_VERSION => {
            ClientResponse::Ok(MUX_ACCEPTED.to_vec())
        }
        other => other,
    };
    // Not kept for the life of the connection.
    drop(hello);
    let refused = matches!(answer, ClientResponse::Err(_));
    let mux = matches!(&answer, ClientResponse::Ok(v) if v == MUX_ACCEPTED);
    if write_frame(&mut send, &answer, max_frame).await.is_err() {
        return;
    }
    if refused {
        let _ = send.finish();
        // Let the answer reach the client before closing.
        let _ = tokio::time::timeout(Duration::from_secs(1), conn.closed()).await;
        return;
    }
    let caller = Arc::new(Caller {
        principal,
        remote,
        refusal_logged: AtomicBool::new(false),
    });
    if mux {
        tokio::spawn(super::client_mux::serve(
            front.clone(),
            caller.clone(),
            send,
            frames,
            max_frame,
            intake.clone(),
            REQUEST_TIMEOUT,
        ));
    } else {
        let _ = send.finish();
    }
    loop {
        match conn.accept_bi().await {
            Ok((send, recv)) => {
                tokio::spawn(serve_stream(
                    front.clone(),
                    caller.clone(),
                    send,
                    recv,
                    max_frame,
                    intake.clone(),
                ));
            }
            Err(e) => {
                debug!(%remote, error = %e, "client connection closed");
                return;
            }
        }
    }
}

async fn serve_stream<F: Front>(
    front: F,
    caller: Arc<Caller>,
    mut send: SendStream,
    mut recv: RecvStream,
    max_frame: usize,
    intake: ConnectionIntake,
) {
    // Room for the frame before its body is read (see `intake`), held
    // only while the body keeps coming, and until its deadline.
    let stall = intake.stall();
    let len = read_frame_len(&mut recv, max_frame).await;
    let mut room = None;
    let mut taken_at = tokio::time::Instant::now();
    if let Ok(len) = &len {
        // The role first: no room for what it may not send.
        let cap = front.max_request_bytes(&caller.principal, max_frame);
        if *len > cap {
            let refusal = too_large_for_role(&caller.principal, *len, cap);
            debug!(remote = %caller.remote, principal = %caller.principal, len, cap,
                "a client request larger than its role may send; refused unread");
            return refuse_unread(send, recv, refusal, max_frame).await;
        }
        match intake.clone().take(*len).await {
            Ok(r) => {
                room = Some(r);
                taken_at = tokio::time::Instant::now();
            }
            Err(e) => {
                if matches!(e, Error::Overloaded) {
                    front.note_overloaded();
                }
                return refuse_unread(send, recv, e, max_frame).await;
            }
        }
    }
    let body = match len {
        Ok(len) => match tokio::time::timeout_at(
            intake.body_deadline(len, taken_at),
            read_frame_rest_unless_stalled(&mut recv, len, stall),
        )
        .await
        .unwrap_or(Ok(None))
        {
            Ok(Some(body)) => Ok(body),
            Ok(None) => {
                drop(room);
                warn!(remote = %caller.remote, principal = %caller.principal, len,
                    stall_ms = u64::try_from(stall.as_millis()).unwrap_or(u64::MAX),
                    "a client request's body stopped arriving, or came slower than the intake's minimum rate; its room given back, answered Overloaded");
                front.note_overloaded();
                return refuse_stalled(send, recv, max_frame).await;
            }
            Err(e) => Err(e),
        },
        Err(e) => Err(e),
    };
    let decoded = body.and_then(|body| {
        if let Some(room) = &mut room {
            room.holds(body.len());
        }
        RequestId::decode_request(&body).map_err(FrameError::Decode)
    });
    let (request, meta) = match decoded {
        Ok(r) => r,
        Err(e) => {
            warn!(error = %e, "malformed client request; closing that stream");
            let _ = write_frame(
                &mut send,
                &ClientResponse::Err(WireError::Rejected(format!("malformed request: {e}"))),
                max_frame,
            )
            .await;
            let _ = send.finish();
            return;
        }
    };
    // A watch keeps its own stream open and answers with many frames.
    if let (ClientRequest::Watch { from }, Ok(())) =
        (&request, front.authorize(&caller.principal, &request, meta))
    {
        // A watch lives long and holds no request bytes.
        drop(room);
        return front
            .watch(
                caller.principal.cert_fingerprint,
                *from,
                meta,
                send,
                max_frame,
            )
            .instrument(request_span(&caller, &request, meta))
            .await;
    }
    let changes = super::client_mux::changes_state(&request);
    let response = if super::request_deadline::is_timed(&request) {
        tokio::time::timeout(REQUEST_TIMEOUT, answer(&front, &caller, request, meta))
            .await
            .unwrap_or(Outgoing::Response(ClientResponse::Err(WireError::Timeout)))
    } else {
        answer(&front, &caller, request, meta).await
    };
    // Answered: the request's bytes are gone.
    drop(room);
    let written = match write_frame(&mut send, &response, max_frame).await {
        // Nothing was written: a short refusal instead (see `uncarried`).
        Err(e @ FrameError::TooLarge { .. }) => {
            let refused = super::client_mux::uncarried(changes, &e);
            write_frame(&mut send, &refused, max_frame).await
        }
        other => other,
    };
    if let Err(e) = written {
        debug!(error = %e, "client went away before its answer");
    }
    let _ = send.finish();
}

/// How long a refused request's body is read and dropped, so that a
/// client that writes all of it before reading its answer gets the answer.
const DRAIN_REFUSED: Duration = Duration::from_secs(10);

/// Answers a request whose body was not read `refusal` (`Overloaded`: no
/// room for it), then reads its body and drops it as it arrives (nothing
/// buffered) until the client finishes the stream, for at most
/// [`DRAIN_REFUSED`].
async fn refuse_unread(
    mut send: SendStream,
    mut recv: RecvStream,
    refusal: Error,
    max_frame: usize,
) {
    let _ = write_frame(&mut send, &ClientResponse::Err(refusal.into()), max_frame).await;
    let _ = send.finish();
    let drain = async { while let Ok(Some(_)) = recv.read_chunk(64 << 10, true).await {} };
    let _ = tokio::time::timeout(DRAIN_REFUSED, drain).await;
}

/// Answers a request whose body stopped arriving `Overloaded` (it was
/// never decoded: nothing applied; the client may send it again) and reads
/// no more of its stream.
async fn refuse_stalled(mut send: SendStream, mut recv: RecvStream, max_frame: usize) {
    let _ = recv.stop(0u32.into());
    let answer = ClientResponse::Err(Error::Overloaded.into());
    // Bounded: a client that sends nothing may read nothing either.
    let write = write_frame(&mut send, &answer, max_frame);
    if tokio::time::timeout(DRAIN_REFUSED, write).await.is_ok() {
        let _ = send.finish();
    } else {
        let _ = send.reset(0u32.into());
    }
}

/// Authorizes and answers one request of `caller`, whichever stream it came
/// on.
pub(crate) async fn answer<F: Front>(
    front: &F,
    caller: &Caller,
    request: ClientRequest,
    meta: Option<RequestMeta>,
) -> Outgoing {
    let span = request_span(caller, &request, meta);
    match front.authorize(&caller.principal, &request, meta) {
        Ok(()) => {
            async {
                debug!("client request received");
                let response = front
                    .handle_outgoing(&caller.principal, request, meta)
                    .await;
                debug!(ok = response.is_ok(), "client request answered");
                response
            }
            .instrument(span)
            .await
        }
        Err(e) => {
            if !caller.refusal_logged.swap(true, Ordering::Relaxed) {
                warn!(remote = %caller.remote, principal = %caller.principal, request = request_kind(&request), error = %e,
                    "client request refused (further refusals on this connection are logged at debug)");
            } else {
                debug!(remote = %caller.remote, principal = %caller.principal, request = request_kind(&request), "client request refused");
            }
            Outgoing::Response(ClientResponse::Err(e.into()))
        }
    }
}

/// One span per request, with the id the client sent: the apply span of
/// the entry it proposes is its child (see `apply.rs`).
fn request_span(
    caller: &Caller,
    request: &ClientRequest,
    meta: Option<RequestMeta>,
) -> tracing::Span {
    let span = tracing::debug_span!(
        "raftkit.request",
        request_id = tracing::field::Empty,
        group = tracing::field::Empty,
        kind = request_kind(request),
        remote = %caller.remote,
    );
    if let Some(meta) = meta {
        span.record("request_id", tracing::field::display(meta.request_id));
        if let Some(group) = meta.group {
            span.record("group", group);
        }
    }
    span
}

fn result(r: Result<Vec<u8>, Error>) -> ClientResponse {
    match r {
        Ok(out) => ClientResponse::Ok(out),
        Err(e) => ClientResponse::Err(e.into()),
    }
}

/// [`result`] of a write's shared output: copied once, into the answer
/// (the session table and the watch journal keep the shared bytes). A
/// single peer's client streams skip the copy (`Front::handle_outgoing`:
/// the output goes into the frame as it is); this serves [`handle`]'s
/// callers (a multi-group node's groups).
fn shared_result(r: Result<bytes::Bytes, Error>) -> ClientResponse {
    match r {
        Ok(out) => ClientResponse::Ok(Vec::from(out)),
        Err(e) => ClientResponse::Err(e.into()),
    }
}

/// Answers one request from `principal`, which the caller has authorized
/// ([`super::authorization::authorize`]). Sessions are opened, used and
/// closed on behalf of the principal's certificate ([`Owner::of`]).
///
/// A write, a read, or the opening or closing of a session not answered
/// within [`REQUEST_TIMEOUT`] is answered [`WireError::Timeout`] (it may
/// have been applied); membership changes and status are not timed.
pub async fn handle<S: StateMachine>(
    peer: &Peer<S>,
    principal: &Principal,
    request: ClientRequest,
) -> ClientResponse {
    if super::request_deadline::is_timed(&request) {
        tokio::time::timeout(REQUEST_TIMEOUT, handle_untimed(peer, principal, request))
            .await
            .unwrap_or(ClientResponse::Err(WireError::Timeout))
    } else {
        handle_untimed(peer, principal, request).await
    }
}

/// [`handle`] without its timeout: the client service's streams time
/// their requests themselves (a multiplexed stream with one sweep for all
/// its requests, `request_deadline`; a stream of its own with a timer), so
/// that a request does not carry a tokio timer of its own.
pub(crate) async fn handle_untimed<S: StateMachine>(
    peer: &Peer<S>,
    principal: &Principal,
    request: ClientRequest,
) -> ClientResponse {
    let owner = Owner::of(principal);
    match request {
        ClientRequest::Write { session, command } => {
            shared_result(peer.write_as(command, session, owner).await)
        }
        ClientRequest::OpenSession => result(
            async {
                let id = peer.open_session_as(owner).await?;
                Ok(crate::state_machine::encode("session id", &id)?)
            }
            .await,
        ),
        ClientRequest::CloseSession { id } => {
            result(peer.close_session_as(id, owner).await.map(|()| Vec::new()))
        }
        ClientRequest::Read { query } => result(peer.read_encoded(query).await),
        ClientRequest::Status => ClientResponse::Status(Box::new(status_report(peer))),
        ClientRequest::AddServer { addr } => {
            // The answer carries the steps taken (learner, catch-up rounds,
            // promotion), so a caller can report progress.
            let mut steps: Vec<String> = Vec::new();
            let done = peer.add_server(&addr, |s| steps.push(s.to_string())).await;
            result(done.and_then(|()| Ok(crate::state_machine::encode("progress", &steps)?)))
        }
        ClientRequest::AddLearner { addr } => {
            result(peer.add_learner(&addr).await.map(|()| Vec::new()))
        }
        ClientRequest::RemoveServer { addr } => {
            result(peer.remove_server(&addr).await.map(|()| Vec::new()))
        }
        ClientRequest::TransferLeader { addr } => {
            result(peer.transfer_leader(&addr).await.map(|()| Vec::new()))
        }
        ClientRequest::Node(_) => ClientResponse::Err(WireError::Rejected(
            "this is a single-group peer; node requests are for multi-group nodes".into(),
        )),
        // Served on its own stream (`serve_stream`), never in one answer.
        ClientRequest::Watch { .. } => ClientResponse::Err(WireError::Rejected(
            "a watch is served on a stream of its own".into(),
        )),
    }
}

/// This peer's status in wire form.
pub fn status_report<S: StateMachine>(peer: &Peer<S>) -> StatusReport {
    let s = peer.status();
    StatusReport {
        name: s.name.clone(),
        id: s.id,
        role: format!("{:?}", s.role),
        term: s.term,
        leader: s.leader_addr.clone(),
        commit: s.commit,
        applied: s.applied,
        last_index: s.last_index,
        members: s
            .members
            .iter()
            .map(|m| {
                (
                    m.addr.clone().unwrap_or_else(|| format!("#{:x}", m.id)),
                    m.voter,
                    m.matched,
                )
            })
            .collect(),
        halted: s.halted.clone(),
        last_contact_ms: if s.role == Role::Leader {
            Some(0)
        } else {
            s.leader_contact
                .map(|t| u64::try_from(t.elapsed().as_millis()).unwrap_or(u64::MAX))
        },
        fatal: s.fatal.clone(),
        snapshot_error: s.snapshot_error.clone(),
    }
}

#[cfg(test)]
mod tests {
    use quinn::Endpoint;

    use super::*;
    use crate::client::wire::ClientHello;
    use crate::tls::dev_cluster;
    use crate::transport::frame::{DEFAULT_MAX_FRAME_BYTES, encode_frame};
    use crate::transport::quic::{connect_client, quic_server_config};

    const DEADLINE: Duration = Duration::from_secs(10);

    /// Accepts every hello and answers nothing else.
    #[derive(Clone)]
    struct Open;

    impl Front for Open {
        fn state_machine(&self) -> &'static str {
            "open"
        }
        fn hello(&self, _: &ClientHello, _: std::net::SocketAddr) -> ClientResponse {
            ClientResponse::Ok(Vec::new())
        }
        async fn handle(
            &self,
            _: &Principal,
            _: ClientRequest,
            _: Option<RequestMeta>,
        ) -> ClientResponse {
            ClientResponse::Ok(Vec::new())
        }
        async fn watch(
            &self,
            _: [u8; 32],
            _: Option<u64>,
            _: Option<RequestMeta>,
            _: SendStream,
            _: usize,
        ) {
        }
    }

    /// Sends `frame` as a client's hello to a fresh client service and
    /// returns what comes back on the stream (an error once the service
    /// closed the connection).
    async fn hello_answer(frame: Vec<u8>, finish: bool) -> Result<Vec<u8>, String> {
        let (ca, ids) = dev_cluster(["t@a"]).expect("certs");
        let client_id = ca.issue_client("app").expect("client cert");
        let principal = client_id.principal().expect("principal");
        let server = Endpoint::server(
            quic_server_config(&ids[0]).expect("server config"),
            "127.0.0.1:0".parse().expect("addr"),
        )
        .expect("endpoint");
        let addr = server.local_addr().expect("addr");
        let served = tokio::spawn(async move {
            let conn = server
                .accept()
                .await
                .expect("incoming")
                .await
                .expect("conn");
            serve_connection(
                Open,
                AcceptedClient { conn, principal },
                DEFAULT_MAX_FRAME_BYTES,
                Intake::new(4 * DEFAULT_MAX_FRAME_BYTES, Duration::from_secs(2)).connection(),
            )
            .await;
        });
        let conn = connect_client(addr, &client_id).await.expect("connect");
        let (mut send, mut recv) = conn.open_bi().await.expect("stream");
        let answer = async {
            send.write_all(&frame).await.map_err(|e| e.to_string())?;
            if finish {
                let _ = send.finish();
            }
            recv.read_to_end(1 << 20).await.map_err(|e| e.to_string())
        };
        let r = tokio::time::timeout(DEADLINE, answer)
            .await
            .expect("an answer or a close in time");
        served.abort();
        r
    }

    /// A hello decodes into more memory than its bytes (a schema
    /// description: 1 byte on the wire, 32 in memory per unit), and it was
    /// read under the cap of a request frame (16 MiB: half a GiB decoded,
    /// kept for the life of the connection). Found by review (stop 41):
    /// the hello has a cap of its own; a larger one closes the connection.
    #[tokio::test]
    async fn a_hello_past_its_cap_closes_the_connection() {
        let hello = ClientHello {
            version: 1,
            schema: 7,
            schema_desc: None,
        };
        let mut ok = Vec::new();
        encode_frame(&hello, DEFAULT_MAX_FRAME_BYTES, &mut ok).expect("encode");
        let answer = hello_answer(ok, true)
            .await
            .expect("a small hello is answered");
        assert!(!answer.is_empty());

        // A length prefix past the cap, then some of the bytes it claims,
        // the rest never sent: refused at once (before, the service waited
        // for the rest, holding the connection).
        let len = u32::try_from(MAX_CLIENT_HELLO_BYTES + 1).expect("fits");
        let mut big = len.to_be_bytes().to_vec();
        big.extend(std::iter::repeat_n(0u8, 64 * 1024));
        assert!(
            hello_answer(big, false).await.is_err(),
            "the oversized hello was read"
        );
    }
}

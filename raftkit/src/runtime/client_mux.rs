//! The member's end of a multiplexed request stream (client protocol
//! version 2, see `client::mux`): requests arrive as frames
//! `id:u64 request [meta]` on the connection's hello stream, each is
//! answered by a frame `id:u64 response` on the same stream, in completion
//! order.
//!
//! Invariants:
//! - each request is authorized and answered exactly as one on a stream of
//!   its own ([`client_service::answer`](super::client_service)); requests
//!   run concurrently (a write waits for its commit without holding back
//!   the reads behind it), as futures of the stream's task;
//! - at most [`MUX_WINDOW`] requests of one stream are being answered, or
//!   answered and waiting for room in the writer's queue, at once: past
//!   that the stream is not read, and QUIC flow control pushes back on the
//!   client (as the per-connection stream limit does for streams of their
//!   own);
//! - the requests being answered are polled whatever the writer does: a
//!   client that reads its answers slowly, or not at all, holds back only
//!   its own stream, never a request waiting for admission (one left
//!   unpolled at the head of the admission queue would keep the room
//!   handed to it, and every other caller of the node would wait for it and
//!   be refused `Overloaded`); a stream that takes no byte of its answers
//!   for [`ANSWER_STALL`] is reset (the client's waiting calls fail and it
//!   retries on a fresh connection);
//! - a frame's room in the node's budget of received requests (`intake`)
//!   is taken once its length prefix is here, before its body is read, and
//!   held until its request is answered; while the stream waits for it the
//!   stream is not read (flow control pushes back on the client), and the
//!   wait is polled whatever else the task does; a frame that gets no room
//!   within the admission wait is answered `Overloaded` (nothing applied)
//!   and its body dropped as it arrives; a frame whose body stops arriving
//!   for the intake's stall bound (no byte of it, measured across the
//!   task's polls), or is not here whole by its deadline (the stall bound
//!   plus its length at the intake's minimum body rate, from when its room
//!   was taken), gives its room back and ends the stream's reading (the
//!   client's calls still waiting fail; requests already read are
//!   answered first);
//! - a frame that is too large or has no readable id ends the stream with a
//!   logged warning (the client fails its waiting calls and retries on a
//!   fresh connection); a readable id with an unreadable request is
//!   answered `Rejected`; the connection and the node go on;
//! - an answer too large for a frame is replaced by a short refusal: a
//!   request that changes nothing (a read, a status) is answered
//!   `Rejected` (nothing applied, retrying is pointless); any other (a
//!   write, applied and its answer stored in the client's session) is
//!   answered `AnswerTooLarge`, which says it was applied, so that the
//!   caller does not send it again (thesis §6.3); [`uncarried`] decides,
//!   for the stream-per-request path too;
//! - the writer waits for other answers to join a write (one yield to the
//!   runtime) only when other requests of the stream were still being
//!   answered as this one completed: a lone request's answer leaves at
//!   once (no gathering delay at low load).

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use quinn::SendStream;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::client_service::{Caller, Front, Outgoing, answer};
use super::intake::{ConnectionIntake, Room};
use super::request_deadline::{Expiring, Sweep, is_timed};
use crate::client::wire::{ClientRequest, ClientResponse, RequestId, RequestMeta, WireError};
use crate::error::Error;
use crate::transport::frame::{FrameError, encode_frame_bytes};
use crate::transport::frame_reader::FrameReader;
use crate::transport::quic::WRITE_BUFFER;
use bytes::{Bytes, BytesMut};

/// Requests of one stream answered at once, at most.
pub const MUX_WINDOW: usize = 256;

/// How long the writer waits for a stream that takes none of its answers'
/// bytes before resetting it: the default client call timeout
/// (`ClientOptions::timeout`), after which a default client has given up
/// on every call waiting there. A client that reads its stream, however
/// slowly, takes some bytes well within it; one that stopped reading (a
/// wedged process, or a client that never reads) no longer holds the
/// stream's answers, nor its window of requests, for as long as its
/// connection lives.
pub const ANSWER_STALL: Duration = Duration::from_secs(10);

/// Answers the requests of one multiplexed stream until the client ends it.
///
/// The requests being answered are futures of this one task
/// ([`FuturesUnordered`]), not tasks of their own: one commit answers many
/// of them at once, and the apply thread's answers then wake this task once
/// instead of waking (and the runtime scheduling) one task per request.
pub(super) async fn serve<F: Front>(
    front: F,
    caller: Arc<Caller>,
    send: SendStream,
    mut frames: FrameReader,
    max_frame: usize,
    intake: ConnectionIntake,
    request_timeout: Duration,
) {
    let (tx, rx) = mpsc::channel::<Answer>(MUX_WINDOW);
    let writer = tokio::spawn(write_answers(send, rx, max_frame, ANSWER_STALL));
    let mut running = FuturesUnordered::new();
    // The deadlines of the requests being answered: one timer for the
    // stream, not one per request (`request_deadline`).
    let mut sweep = Sweep::new(request_timeout);
    // Answers the writer had no room for yet: the requests go on being
    // polled meanwhile (a request waiting for admission must be, or the
    // room handed to it is never used nor given back).
    let mut done: VecDeque<Answer> = VecDeque::new();
    let mut reading = true;
    let mut next = Next::Len;
    // The role's cap, checked before a frame takes room.
    let cap = front.max_request_bytes(&caller.principal, max_frame);
    loop {
        let window = running.len() + done.len() < MUX_WINDOW;
        tokio::select! {
            biased;
            // Cancel-safe: this task is the only sender.
            room = tx.reserve(), if !done.is_empty() => {
                let Ok(room) = room else {
                    // The writer ended: the client is gone.
                    return;
                };
                if let Some(answer) = done.pop_front() {
                    room.send(answer);
                }
            }
            Some((id, response, changes)) = running.next(), if !running.is_empty() => {
                crate::probe::mark("s.answered");
                // Others still running may complete with it (one commit
                // answers many writes): then the writer gathers them.
                let others = !running.is_empty();
                let answer = Answer { id, response, others, changes };
                if !done.is_empty() {
                    done.push_back(answer);
                    continue;
                }
                match tx.try_send(answer) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(answer)) => done.push_back(answer),
                    // The writer ended: the client is gone.
                    Err(mpsc::error::TrySendError::Closed(_)) => return,
                }
            }
            // Cancel-safe: a frame half received, or room being waited
            // for, when an answer completes stays in `frames` and `next`.
            incoming = next_request(&mut frames, &mut next, &intake, (max_frame, cap), window), if reading => {
                crate::probe::mark("s.frame_in");
                let (head, decoded) = match incoming {
                    Ok(Incoming::Request(body, mut room)) => {
                        room.holds(body.len());
                        (body, Ok(room))
                    }
                    Ok(Incoming::Refused(head, refusal)) => (Bytes::from(head), Err(refusal)),
                    Ok(Incoming::Stalled(len)) => {
                        warn!(len,
                            stall_ms = u64::try_from(intake.stall().as_millis()).unwrap_or(u64::MAX),
                            "a multiplexed request's body stopped arriving, or came slower than the intake's minimum rate; its room given back, that stream ends");
                        frames.stop(0);
                        reading = false;
                        continue;
                    }
                    Err(FrameError::Closed) => {
                        reading = false;
                        next = Next::Len;
                        continue;
                    }
                    Err(e) => {
                        warn!(error = %e, "unreadable multiplexed request; closing that stream");
                        reading = false;
                        next = Next::Len;
                        continue;
                    }
                };
                let Ok((id, rest)) = postcard::take_from_bytes::<u64>(&head) else {
                    warn!("multiplexed request without an id; closing that stream");
                    reading = false;
                    continue;
                };
                let request = match decoded {
                    Ok(room) => Request::Read(RequestId::decode_request(rest), room),
                    Err(refusal) => {
                        if matches!(refusal, Error::Overloaded) {
                            front.note_overloaded();
                        }
                        Request::Refused(refusal)
                    }
                };
                let (changes, timed) = match &request {
                    Request::Read(Ok((request, _)), _) => (changes_state(request), is_timed(request)),
                    _ => (false, false),
                };
                let deadline = sweep.start(timed, Pin::new(&mut running).iter_pin_mut());
                running.push(Expiring::new(answer_one(&front, &caller, id, request), id, changes, deadline));
            }
            // Last: polled only when nothing else is ready (a busy stream
            // also sweeps when a request starts after the sweep was due).
            () = sweep.due(), if !running.is_empty() => {
                sweep.sweep(tokio::time::Instant::now(), Pin::new(&mut running).iter_pin_mut());
            }
            // Nothing more to read, every answer handed to the writer.
            else => break,
        }
    }
    drop(tx);
    // Answers handed over are written before the stream is finished.
    let _ = writer.await;
}

/// An answer for the writer.
struct Answer {
    /// The request id.
    id: u64,
    response: Outgoing,
    /// Whether other requests of the stream were still being answered when
    /// it completed.
    others: bool,
    /// Whether the request may have changed the state ([`changes_state`]).
    changes: bool,
}

/// Where the stream's reader is in its next request (`intake`).
enum Next {
    /// Waiting for a frame's length prefix.
    Len,
    /// Waiting for room for the frame of this length (the wait ends
    /// `Overloaded`).
    Room(
        Pin<Box<dyn Future<Output = Result<Room, Error>> + Send>>,
        usize,
    ),
    /// Room taken: reading the frame's body, of this length; the last
    /// time a byte of it arrived (or the room was taken); when it must be
    /// here whole (`intake`'s body deadline).
    Body(Room, usize, tokio::time::Instant, tokio::time::Instant),
    /// No room came: discarding the frame, to answer it `refusal`.
    Refused(Error),
}

/// A request frame of the stream.
enum Incoming {
    /// Its body, and the room it holds.
    Request(Bytes, Room),
    /// The first bytes of a frame refused for want of room (its id), and
    /// the refusal.
    Refused(Vec<u8>, Error),
    /// A frame of this length whose body stopped arriving, or missed its
    /// deadline: its room given back, the rest of the stream not to be
    /// read.
    Stalled(usize),
}

/// The stream's next request, its room taken before its body is read:
/// once the prefix is here, room is taken at once if there is some, else
/// waited for (at most the admission wait); `(max, cap)`: the frame cap
/// and the caller's role's ([`Front::max_request_bytes`]: a frame past it
/// takes no room and is refused `Unauthorized`, skipped unread);
/// `window`: whether a new frame may be started. Cancel-safe: the state
/// lives in `frames` and `next`.
async fn next_request(
    frames: &mut FrameReader,
    next: &mut Next,
    intake: &ConnectionIntake,
    (max, cap): (usize, usize),
    window: bool,
) -> Result<Incoming, FrameError> {
    loop {
        match next {
            Next::Len => {
                if !window {
                    std::future::pending::<()>().await;
                }
                let len = frames.next_len(max).await?;
                *next = if len > cap {
                    Next::Refused(Error::Unauthorized(format!(
                        "a request of {len} bytes refused unread: this certificate's role may send at most {cap} bytes a request"
                    )))
                } else {
                    match intake.try_take(len) {
                        Some(room) => body_of(intake, room, len),
                        None => Next::Room(Box::pin(intake.clone().take(len)), len),
                    }
                };
            }
            Next::Room(wait, len) => {
                let taken = wait.as_mut().await;
                *next = match taken {
                    Ok(room) => body_of(intake, room, *len),
                    Err(refusal) => Next::Refused(refusal),
                };
            }
            Next::Body(_, _, last, deadline) => {
                let body = tokio::time::timeout_at(
                    *deadline,
                    frames.next_unless_stalled_since(max, intake.stall(), last),
                )
                .await
                .unwrap_or(Ok(None))?;
                if let Next::Body(room, len, _, _) = std::mem::replace(next, Next::Len) {
                    return Ok(match body {
                        Some(body) => Incoming::Request(body, room),
                        // The room is dropped here: given back.
                        None => Incoming::Stalled(len),
                    });
                }
            }
            Next::Refused(_) => {
                let head = frames.skip_frame(max).await?;
                if let Next::Refused(refusal) = std::mem::replace(next, Next::Len) {
                    return Ok(Incoming::Refused(head, refusal));
                }
            }
        }
    }
}

/// Reading the body of a frame of `len` bytes whose `room` was just
/// taken: its stall and its deadline measured from now.
fn body_of(intake: &ConnectionIntake, room: Room, len: usize) -> Next {
    let now = tokio::time::Instant::now();
    Next::Body(room, len, now, intake.body_deadline(len, now))
}

/// A request of the stream to answer.
enum Request {
    /// Read (its room held until it is answered), decoded or not.
    Read(
        Result<(ClientRequest, Option<RequestMeta>), postcard::Error>,
        Room,
    ),
    /// Not read: no room for it.
    Refused(Error),
}

/// Answers one request of the stream (a malformed one `Rejected`, one
/// refused room its refusal), with whether it may have changed the state.
async fn answer_one<F: Front>(
    front: &F,
    caller: &Caller,
    id: u64,
    request: Request,
) -> (u64, Outgoing, bool) {
    match request {
        Request::Read(Ok((request, meta)), room) => {
            let changes = changes_state(&request);
            // Not boxed: the large part of the answering future (a
            // request's whole path through the node) is boxed once where
            // it starts (`Front::handle`), so this one stays small when it
            // is moved into the stream's `FuturesUnordered`; a second box
            // here cost one allocation per request (issue 16).
            let response = answer(front, caller, request, meta).await;
            // Answered: the request's bytes are gone.
            drop(room);
            (id, response, changes)
        }
        Request::Read(Err(e), _) => {
            warn!(error = %e, "malformed client request; answered Rejected");
            let refused = WireError::Rejected(format!("malformed request: {e}"));
            (id, ClientResponse::Err(refused).into(), false)
        }
        Request::Refused(refusal) => (id, ClientResponse::Err(refusal.into()).into(), false),
    }
}

/// Whether answering `request` may have changed anything: a write is
/// applied before it is answered, a session opened or closed, a member
/// added or removed, leadership moved, a replica moved; a read, a status, a
/// watch and a node's group listing change nothing. Every request is named
/// (no wildcard), so a new one must be classified here.
pub(super) fn changes_state(request: &ClientRequest) -> bool {
    use crate::client::wire::NodeRequest;
    match request {
        ClientRequest::Read { .. }
        | ClientRequest::Status
        | ClientRequest::Watch { .. }
        | ClientRequest::Node(NodeRequest::Groups) => false,
        ClientRequest::Write { .. }
        | ClientRequest::AddServer { .. }
        | ClientRequest::AddLearner { .. }
        | ClientRequest::RemoveServer { .. }
        | ClientRequest::TransferLeader { .. }
        | ClientRequest::OpenSession
        | ClientRequest::CloseSession { .. }
        | ClientRequest::Node(NodeRequest::BalanceLeaders | NodeRequest::MoveReplica { .. }) => {
            true
        }
    }
}

/// What a member sends instead of an answer that cannot be carried (`e`:
/// why, a frame too large): for a request that `changes` the state (a
/// write, applied, its answer stored in the client's session)
/// `AnswerTooLarge`, which says it was applied and is not retried (a
/// "not applied" would invite the caller to send it again, and apply it
/// twice, thesis §6.3; a retry through a `WriteOnce` handle gets the stored
/// answer and this same refusal); for a read `Rejected` (nothing was
/// applied, and a retry would be refused the same).
pub(super) fn uncarried(changes: bool, e: &FrameError) -> ClientResponse {
    if changes {
        warn!(error = %e, "an applied request's answer is too large for a frame; answered AnswerTooLarge");
        ClientResponse::Err(WireError::AnswerTooLarge(format!(
            "the answer cannot be carried: {e}"
        )))
    } else {
        ClientResponse::Err(WireError::Rejected(format!(
            "the answer cannot be carried: {e}"
        )))
    }
}

/// Writes answers as they complete, every answer ready at once in one write;
/// resets the stream once it took no byte for `stall`.
async fn write_answers(
    mut send: SendStream,
    mut rx: mpsc::Receiver<Answer>,
    max_frame: usize,
    stall: Duration,
) {
    let mut buf = BytesMut::with_capacity(WRITE_BUFFER);
    while let Some(first) = rx.recv().await {
        // One commit completes many writes at once, and their request tasks
        // run one after the other: let those already woken hand over their
        // answers first, so that they leave in one write (one QUIC packet
        // rather than one each; the round costs one more poll of this task).
        // Not for a lone request: nothing else can join its answer, which
        // would only wait for the other ready tasks of the runtime.
        if first.others {
            tokio::task::yield_now().await;
        }
        buf.reserve(WRITE_BUFFER / 16);
        let mut next = Some(first);
        while let Some(Answer {
            id,
            response,
            changes,
            ..
        }) = next.take()
        {
            if let Err(e) = encode_frame_bytes(&(id, &response), max_frame, &mut buf) {
                // Too large to carry: say so instead (a short frame).
                let refused = uncarried(changes, &e);
                let _ = encode_frame_bytes(&(id, &refused), max_frame, &mut buf);
            }
            if buf.len() < 1 << 20 {
                next = rx.try_recv().ok();
            }
        }
        crate::probe::mark("s.write");
        // Handed over as it is (no copy): quinn keeps it until acked.
        let mut chunk = [buf.split().freeze()];
        while !chunk[0].is_empty() {
            // Cancel-safe (nothing written unless it completes): a stall
            // leaves no part of a frame behind, and the stream is reset.
            match tokio::time::timeout(stall, send.write_chunks(&mut chunk)).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    debug!(error = %e, "client went away before its answers");
                    return;
                }
                Err(_) => {
                    warn!(
                        stall_ms = stall.as_millis() as u64,
                        "the client takes none of its answers; resetting its request stream"
                    );
                    let _ = send.reset(0u32.into());
                    return;
                }
            }
        }
    }
    let _ = send.finish();
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use quinn::Endpoint;

    use super::*;
    use crate::client::wire::{ClientHello, RequestMeta};
    use crate::runtime::admission::Admission;
    use crate::tls::{Principal, dev_cluster};
    use crate::transport::frame::encode_frame;
    use crate::transport::quic::{connect_client, quic_server_config};

    const DEADLINE: Duration = Duration::from_secs(20);

    /// A front whose requests all wait until the gate opens, counting how
    /// many were started and how many wait at once.
    #[derive(Clone, Default)]
    struct Held {
        started: Arc<AtomicUsize>,
        waiting: Arc<AtomicUsize>,
        most_waiting: Arc<AtomicUsize>,
        gate: Arc<tokio::sync::Notify>,
        open: Arc<std::sync::atomic::AtomicBool>,
    }

    impl Front for Held {
        fn state_machine(&self) -> &'static str {
            "held"
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
            /// Counts the request out of `waiting` when it ends, answered
            /// or dropped.
            struct Waits(Arc<AtomicUsize>);
            impl Drop for Waits {
                fn drop(&mut self) {
                    self.0.fetch_sub(1, Ordering::SeqCst);
                }
            }
            let now = self.waiting.fetch_add(1, Ordering::SeqCst) + 1;
            let _waits = Waits(self.waiting.clone());
            self.most_waiting.fetch_max(now, Ordering::SeqCst);
            self.started.fetch_add(1, Ordering::SeqCst);
            while !self.open.load(Ordering::SeqCst) {
                let notified = self.gate.notified();
                if self.open.load(Ordering::SeqCst) {
                    break;
                }
                notified.await;
            }
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

    /// A front whose every request takes room from a shared [`Admission`]
    /// (of one command), holds it across one yield, and answers 4 KiB;
    /// counting the requests started and finished.
    #[derive(Clone)]
    struct Admitting {
        admission: Arc<Admission>,
        started: Arc<AtomicUsize>,
        finished: Arc<AtomicUsize>,
    }

    impl Front for Admitting {
        fn state_machine(&self) -> &'static str {
            "admitting"
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
            self.started.fetch_add(1, Ordering::SeqCst);
            let response = match self.admission.admit(1).await {
                Ok(permit) => {
                    tokio::task::yield_now().await;
                    drop(permit);
                    ClientResponse::Ok(vec![5; 4096])
                }
                Err(e) => ClientResponse::Err(e.into()),
            };
            self.finished.fetch_add(1, Ordering::SeqCst);
            response
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

    /// A member on loopback that serves the first stream of its first
    /// connection with `front`: the client identity to connect with, the
    /// member's address, and the serving task (it ends with the stream and
    /// returns the connection).
    fn serve_first_stream<F: Front>(
        front: F,
    ) -> (
        crate::tls::Identity,
        std::net::SocketAddr,
        tokio::task::JoinHandle<quinn::Connection>,
    ) {
        // Far longer than any of these tests waits: only the test of the
        // timeout itself times its requests out.
        serve_first_stream_timing(front, 10 * DEADLINE)
    }

    /// [`serve_first_stream`] with requests timing out after `timeout`.
    fn serve_first_stream_timing<F: Front>(
        front: F,
        timeout: Duration,
    ) -> (
        crate::tls::Identity,
        std::net::SocketAddr,
        tokio::task::JoinHandle<quinn::Connection>,
    ) {
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
            let remote = conn.remote_address();
            let (send, recv) = conn.accept_bi().await.expect("stream");
            serve(
                front,
                Arc::new(Caller::for_tests(principal, remote)),
                send,
                FrameReader::new(recv),
                1 << 20,
                crate::runtime::intake::Intake::new(1 << 30, Duration::from_secs(2)).connection(),
                timeout,
            )
            .await;
            conn
        });
        (client_id, addr, served)
    }

    /// A client that sends many requests and never reads its answers holds
    /// back only its own stream: every request the member started is still
    /// answered (its admission room returned), and others are admitted.
    /// (Before, the stream's task stopped polling its requests once the
    /// writer's queue was full, and a request queued for admission kept the
    /// room handed to it for as long as the connection lived.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_client_that_never_reads_its_answers_does_not_hold_admission() {
        let front = Admitting {
            admission: Arc::new(Admission::new(1, 1 << 20, Duration::from_millis(500))),
            started: Arc::default(),
            finished: Arc::default(),
        };
        let (client_id, addr, served) = serve_first_stream(front.clone());
        // A client that takes in at most 4 KiB of answers, and reads none.
        let mut config =
            crate::transport::quic::quic_client_config(&client_id, crate::tls::CLIENT_ALPN)
                .expect("client config");
        let mut transport = quinn::TransportConfig::default();
        transport.stream_receive_window(quinn::VarInt::from_u32(4096));
        transport.receive_window(quinn::VarInt::from_u32(8192));
        config.transport_config(Arc::new(transport));
        let endpoint = Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("client");
        let conn = endpoint
            .connect_with(config, addr, crate::tls::CLUSTER_SAN)
            .expect("connect")
            .await
            .expect("connected");
        let (mut send, _never_read) = conn.open_bi().await.expect("stream");
        let sent = 3 * MUX_WINDOW;
        let mut buf = Vec::new();
        for id in 0..sent as u64 {
            let request = ClientRequest::Read { query: vec![1] };
            encode_frame(&(id, request), 1 << 20, &mut buf).expect("encode");
        }
        send.write_all(&buf).await.expect("requests sent");
        // More than the writer's queue holds: its queue is full by then.
        until("more requests started than the writer queues", || {
            front.started.load(Ordering::SeqCst) > MUX_WINDOW + 1
        })
        .await;
        until("every request started is answered", || {
            front.finished.load(Ordering::SeqCst) == front.started.load(Ordering::SeqCst)
        })
        .await;
        let other = front.admission.admit(1).await;
        assert!(
            other.is_ok(),
            "another caller was refused admission: {other:?} ({} refused)",
            front.admission.refused()
        );
        drop(served);
    }

    /// A stream whose client takes none of its answers is reset once the
    /// writer could hand over no byte for the stall, instead of holding
    /// its answers (and the stream's task) for as long as the connection
    /// lives.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stream_that_takes_no_answer_is_reset_after_the_stall() {
        let (ca, ids) = dev_cluster(["t@a"]).expect("certs");
        let client_id = ca.issue_client("app").expect("client cert");
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
            let (send, _recv) = conn.accept_bi().await.expect("stream");
            let (tx, rx) = mpsc::channel(MUX_WINDOW);
            let writer = tokio::spawn(write_answers(send, rx, 1 << 20, Duration::from_millis(200)));
            for id in 0..64 {
                let response = ClientResponse::Ok(vec![5; 4096]).into();
                let answer = Answer {
                    id,
                    response,
                    others: false,
                    changes: false,
                };
                if tx.send(answer).await.is_err() {
                    break;
                }
            }
            let ended = tokio::time::timeout(DEADLINE, writer).await;
            (ended.is_ok(), conn, tx)
        });
        let mut config =
            crate::transport::quic::quic_client_config(&client_id, crate::tls::CLIENT_ALPN)
                .expect("client config");
        let mut transport = quinn::TransportConfig::default();
        transport.stream_receive_window(quinn::VarInt::from_u32(4096));
        config.transport_config(Arc::new(transport));
        let endpoint = Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("client");
        let conn = endpoint
            .connect_with(config, addr, crate::tls::CLUSTER_SAN)
            .expect("connect")
            .await
            .expect("connected");
        let (mut send, _never_read) = conn.open_bi().await.expect("stream");
        send.write_all(&[0]).await.expect("the stream opens");
        let (ended, _conn, _tx) = served.await.expect("server task");
        assert!(
            ended,
            "the writer still waits on a stream that takes nothing"
        );
    }

    async fn until(what: &str, mut f: impl FnMut() -> bool) {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        while !f() {
            assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// At most [`MUX_WINDOW`] requests of one stream are answered at once:
    /// with that many waiting, the stream is not read further (QUIC flow
    /// control then holds the client back), however many more the client
    /// sent; once they are answered the rest are read.
    #[tokio::test]
    async fn at_most_a_window_of_requests_of_one_stream_is_answered_at_once() {
        let front = Held::default();
        let (client_id, addr, served) = serve_first_stream(front.clone());
        let conn = connect_client(addr, &client_id).await.expect("connect");
        let (mut send, mut recv) = conn.open_bi().await.expect("stream");
        let sent = MUX_WINDOW + 44;
        let mut buf = Vec::new();
        for id in 0..sent as u64 {
            let request = ClientRequest::Read { query: vec![1] };
            encode_frame(&(id, request), 1 << 20, &mut buf).expect("encode");
        }
        send.write_all(&buf).await.expect("requests sent");
        until("a window of requests started", || {
            front.started.load(Ordering::SeqCst) >= MUX_WINDOW
        })
        .await;
        // Every request is on the server by now; a stream read past the
        // window would start the rest within this time.
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(front.started.load(Ordering::SeqCst), MUX_WINDOW);
        front.open.store(true, Ordering::SeqCst);
        front.gate.notify_waiters();
        until("every request started", || {
            front.started.load(Ordering::SeqCst) == sent
        })
        .await;
        send.finish().expect("finish");
        let answers = tokio::time::timeout(DEADLINE, recv.read_to_end(1 << 24))
            .await
            .expect("answers in time")
            .expect("answers");
        assert!(!answers.is_empty());
        assert_eq!(front.most_waiting.load(Ordering::SeqCst), MUX_WINDOW);
        drop(served);
    }

    /// A write, a read or a session request not answered within the
    /// request timeout is answered `Timeout` (and stops being served); a
    /// request of another kind (a status, a membership change) is not
    /// timed; an answer in time is the answer. (The timeout moved from a
    /// tokio timer per request in the peer's handler to one sweep per
    /// stream, `request_deadline`.)
    #[tokio::test]
    async fn requests_not_answered_in_the_request_timeout_are_answered_timeout() {
        let front = Held::default();
        let (client_id, addr, served) =
            serve_first_stream_timing(front.clone(), Duration::from_millis(300));
        let conn = connect_client(addr, &client_id).await.expect("connect");
        let (mut send, recv) = conn.open_bi().await.expect("stream");
        let session = crate::runtime::session::SessionRef {
            id: crate::runtime::session::SessionId(1),
            seq: 1,
            acked_below: 1,
        };
        let requests = [
            ClientRequest::Write {
                session,
                command: vec![1],
            },
            ClientRequest::Read { query: vec![1] },
            ClientRequest::OpenSession,
            ClientRequest::CloseSession {
                id: crate::runtime::session::SessionId(1),
            },
            ClientRequest::Status,
        ];
        let mut buf = Vec::new();
        for (id, request) in requests.iter().enumerate() {
            encode_frame(&(id as u64, request), 1 << 20, &mut buf).expect("encode");
        }
        let sent = tokio::time::Instant::now();
        send.write_all(&buf).await.expect("requests sent");
        let mut frames = crate::transport::frame_reader::FrameReader::new(recv);
        let mut timed_out = Vec::new();
        for _ in 0..4 {
            let frame = tokio::time::timeout(DEADLINE, frames.next(1 << 20))
                .await
                .expect("an answer within the deadline")
                .expect("a frame");
            let (id, response): (u64, ClientResponse) =
                postcard::from_bytes(&frame).expect("an answer");
            assert_eq!(response, ClientResponse::Err(WireError::Timeout), "{id}");
            assert!(
                sent.elapsed() >= Duration::from_millis(300),
                "answered Timeout before the timeout"
            );
            timed_out.push(id);
        }
        timed_out.sort();
        assert_eq!(timed_out, [0, 1, 2, 3], "the four timed kinds");
        // The status is not timed: still waiting; answered once it can be,
        // and a new read answered in time is answered.
        assert_eq!(front.started.load(Ordering::SeqCst), 5);
        assert_eq!(
            front.waiting.load(Ordering::SeqCst),
            1,
            "the status waits; the timed-out requests were dropped"
        );
        front.open.store(true, Ordering::SeqCst);
        front.gate.notify_waiters();
        let mut buf = Vec::new();
        encode_frame(
            &(9u64, &ClientRequest::Read { query: vec![2] }),
            1 << 20,
            &mut buf,
        )
        .expect("encode");
        send.write_all(&buf).await.expect("read sent");
        send.finish().expect("finish");
        let mut rest = Vec::new();
        while let Ok(frame) = tokio::time::timeout(DEADLINE, frames.next(1 << 20))
            .await
            .expect("answers in time")
        {
            let (id, response): (u64, ClientResponse) =
                postcard::from_bytes(&frame).expect("an answer");
            rest.push((id, response));
        }
        rest.sort_by_key(|(id, _)| *id);
        assert_eq!(
            rest,
            [
                (4, ClientResponse::Ok(Vec::new())),
                (9, ClientResponse::Ok(Vec::new()))
            ]
        );
        drop(served);
    }
}

//! A scripted stand-in for a cluster member, for tests of the network
//! client ([`super::remote`]) that need a member to misbehave at an exact
//! point: refuse a connection before the request can leave the client, take
//! a write and vanish without answering, or answer with an error that no
//! real member could be made to give on cue.
//!
//! It is a real QUIC endpoint on `127.0.0.1` with a node certificate of a
//! dev cluster ([`crate::tls::dev_cluster`]), speaking the client protocol
//! the way the runtime's client service does (`runtime::client_service`,
//! `runtime::client_mux`): it answers the hello with `Ok(MUX_ACCEPTED)` and
//! then serves the multiplexed request stream, one frame `id request [meta]`
//! in, one frame `id response` out. Each request is handed to the test's
//! script, which says what to do with it ([`Act`]). Every further stream a
//! client opens is a watch: its request is recorded and it is answered
//! with the frames of [`FakeMember::answer_watches`] (or those
//! [`FakeMember::answer_watches_with`] makes for its request), then
//! finished.
//!
//! Invariants:
//! - every request that reached the member is recorded, in arrival order,
//!   before the script sees it ([`FakeMember::received`]): a test can tell a
//!   request that left the client from one that never did; so is the meta
//!   that travelled with each request of the multiplexed stream
//!   ([`FakeMember::metas`]);
//! - requests of one connection are answered one at a time, in order;
//! - after [`FakeMember::restart`], no connection accepted before it serves
//!   anything more (those open are closed, those still in their handshake
//!   are closed once it completes), and the next `refuse` dials are refused
//!   (QUIC `CONNECTION_REFUSED`) before any stream can open;
//! - bytes from the client are never trusted: a frame that does not decode
//!   closes the connection, nothing panics on them.
//!
//! Test support only (`cfg(test)`): nothing here is part of the library.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use quinn::{Connection, Endpoint};

use super::mux::MUX_ACCEPTED;
use super::wire::{
    ClientHello, ClientRequest, ClientResponse, RequestId, RequestMeta, SessionId, WireError,
};
use crate::tls::Identity;
use crate::transport::frame::{
    DEFAULT_MAX_FRAME_BYTES, encode_frame, read_frame, read_frame_body, write_frame,
};
use crate::transport::quic::quic_server_config;

/// What the member does with one request.
#[derive(Debug)]
pub(crate) enum Act {
    /// Answers it (boxed: an answer is large, a vanishing nothing).
    Answer(Box<ClientResponse>),
    /// Closes the connection without answering (the request was received:
    /// a member that took a write and died before its answer left).
    Vanish,
    /// Never answers it, and goes on serving the connection's next
    /// requests (a member whose answer is slower than the caller's
    /// patience: the caller stops waiting while its write may apply).
    Ignore,
}

impl Act {
    /// Answers `response`.
    pub(crate) fn answer(response: ClientResponse) -> Act {
        Act::Answer(Box::new(response))
    }
}

/// The answer to `OpenSession` that opens session `id`.
pub(crate) fn session_opened(id: u128) -> Act {
    match crate::state_machine::encode("session id", &SessionId(id)) {
        Ok(bytes) => Act::answer(ClientResponse::Ok(bytes)),
        Err(e) => Act::answer(ClientResponse::Err(WireError::Rejected(e.to_string()))),
    }
}

/// The answer of a member that does not host `group`.
pub(crate) fn not_hosted(group: u64) -> Act {
    Act::answer(ClientResponse::Err(WireError::NotHosted { group }))
}

type Script = Box<dyn FnMut(&ClientRequest) -> Act + Send>;

/// Makes the frames of a watch stream from its request.
type WatchScript = Box<dyn FnMut(&ClientRequest) -> Vec<ClientResponse> + Send>;

struct Shared {
    script: Mutex<Script>,
    received: Mutex<Vec<ClientRequest>>,
    /// The meta of each request of the multiplexed streams, in arrival
    /// order (`None`: the request came without one).
    metas: Mutex<Vec<Option<RequestMeta>>>,
    /// Dials still to refuse.
    refuse: AtomicUsize,
    /// Bumped by every restart: a connection accepted in an earlier epoch
    /// serves nothing.
    epoch: AtomicU64,
    live: Mutex<Vec<Connection>>,
    /// The frames every watch stream is answered with.
    watch_frames: Mutex<Vec<ClientResponse>>,
    /// Makes the frames of each watch stream instead, if set.
    watch_script: Mutex<Option<WatchScript>>,
    /// Watch streams served.
    watches: AtomicUsize,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A scripted member (see the module docs). Dropping it closes its
/// endpoint.
pub(crate) struct FakeMember {
    endpoint: Endpoint,
    addr: SocketAddr,
    shared: Arc<Shared>,
    accepting: tokio::task::JoinHandle<()>,
}

impl FakeMember {
    /// Starts a member presenting `identity` (a node certificate) on an
    /// ephemeral port of `127.0.0.1`, answering each request as `script`
    /// says.
    pub(crate) fn start(
        identity: &Identity,
        script: impl FnMut(&ClientRequest) -> Act + Send + 'static,
    ) -> FakeMember {
        let config = quic_server_config(identity).expect("server config of a dev identity");
        let listen: SocketAddr = ([127, 0, 0, 1], 0).into();
        let endpoint = Endpoint::server(config, listen).expect("a local UDP socket");
        let addr = endpoint.local_addr().expect("bound address");
        let shared = Arc::new(Shared {
            script: Mutex::new(Box::new(script)),
            received: Mutex::new(Vec::new()),
            metas: Mutex::new(Vec::new()),
            refuse: AtomicUsize::new(0),
            epoch: AtomicU64::new(0),
            live: Mutex::new(Vec::new()),
            watch_frames: Mutex::new(Vec::new()),
            watch_script: Mutex::new(None),
            watches: AtomicUsize::new(0),
        });
        let accepting = tokio::spawn(accept(endpoint.clone(), shared.clone()));
        FakeMember {
            endpoint,
            addr,
            shared,
            accepting,
        }
    }

    /// The address clients dial.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Answers every watch stream with `frames`, then finishes it.
    pub(crate) fn answer_watches(&self, frames: Vec<ClientResponse>) {
        *lock(&self.shared.watch_frames) = frames;
    }

    /// Answers every watch stream with the frames `script` makes for its
    /// request, then finishes it.
    pub(crate) fn answer_watches_with(
        &self,
        script: impl FnMut(&ClientRequest) -> Vec<ClientResponse> + Send + 'static,
    ) {
        *lock(&self.shared.watch_script) = Some(Box::new(script));
    }

    /// Serves every watch (an empty batch of events, from index 1) until
    /// `gone` is set, then answers `NotHosted` for group 0: the group left
    /// this member.
    pub(crate) fn serve_watches_until(&self, gone: Arc<AtomicBool>) {
        self.answer_watches_with(move |_| {
            if gone.load(Ordering::SeqCst) {
                vec![ClientResponse::Err(WireError::NotHosted { group: 0 })]
            } else {
                vec![ClientResponse::Events {
                    events: Vec::new(),
                    next: 1,
                }]
            }
        });
    }

    /// How many watch streams were served.
    pub(crate) fn watches(&self) -> usize {
        self.shared.watches.load(Ordering::SeqCst)
    }

    /// Every request that reached this member so far, in arrival order.
    pub(crate) fn received(&self) -> Vec<ClientRequest> {
        lock(&self.shared.received).clone()
    }

    /// The meta of every request of the multiplexed streams so far (not
    /// watches), in arrival order.
    pub(crate) fn metas(&self) -> Vec<Option<RequestMeta>> {
        lock(&self.shared.metas).clone()
    }

    /// The writes among [`FakeMember::received`].
    pub(crate) fn writes(&self) -> usize {
        self.received()
            .iter()
            .filter(|r| matches!(r, ClientRequest::Write { .. }))
            .count()
    }

    /// The member goes down and comes back: every connection it had is
    /// closed, and the next `refuse` dials are refused before anything can
    /// be sent on them (`usize::MAX`: it never comes back).
    pub(crate) fn restart(&self, refuse: usize) {
        self.shared.refuse.store(refuse, Ordering::SeqCst);
        self.shared.epoch.fetch_add(1, Ordering::SeqCst);
        for conn in lock(&self.shared.live).drain(..) {
            conn.close(0u32.into(), b"restarting");
        }
    }
}

impl Drop for FakeMember {
    fn drop(&mut self) {
        self.accepting.abort();
        self.endpoint.close(0u32.into(), b"gone");
    }
}

async fn accept(endpoint: Endpoint, shared: Arc<Shared>) {
    while let Some(incoming) = endpoint.accept().await {
        let refused = shared
            .refuse
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if refused {
            incoming.refuse();
            continue;
        }
        let epoch = shared.epoch.load(Ordering::SeqCst);
        let shared = shared.clone();
        tokio::spawn(async move {
            let Ok(conn) = incoming.await else { return };
            {
                let mut live = lock(&shared.live);
                if shared.epoch.load(Ordering::SeqCst) != epoch {
                    conn.close(0u32.into(), b"restarting");
                    return;
                }
                live.push(conn.clone());
            }
            serve(conn, shared).await;
        });
    }
}

/// Serves one connection: the hello, then the multiplexed requests.
async fn serve(conn: Connection, shared: Arc<Shared>) {
    let Ok((mut send, mut recv)) = conn.accept_bi().await else {
        return;
    };
    tokio::spawn(serve_watches(conn.clone(), shared.clone()));
    if read_frame::<ClientHello, _>(&mut recv, DEFAULT_MAX_FRAME_BYTES)
        .await
        .is_err()
    {
        conn.close(1u32.into(), b"bad hello");
        return;
    }
    let accepted = ClientResponse::Ok(MUX_ACCEPTED.to_vec());
    if write_frame(&mut send, &accepted, DEFAULT_MAX_FRAME_BYTES)
        .await
        .is_err()
    {
        return;
    }
    while let Ok(body) = read_frame_body(&mut recv, DEFAULT_MAX_FRAME_BYTES).await {
        let Some((id, (request, meta))) = postcard::take_from_bytes::<u64>(&body)
            .ok()
            .and_then(|(id, rest)| Some((id, RequestId::decode_request(rest).ok()?)))
        else {
            conn.close(1u32.into(), b"bad request");
            return;
        };
        lock(&shared.metas).push(meta);
        lock(&shared.received).push(request.clone());
        let act = {
            let mut script = lock(&shared.script);
            (*script)(&request)
        };
        let response = match act {
            Act::Answer(response) => *response,
            Act::Vanish => {
                conn.close(0u32.into(), b"vanished");
                return;
            }
            Act::Ignore => continue,
        };
        let mut frame = Vec::new();
        if encode_frame(&(id, &response), DEFAULT_MAX_FRAME_BYTES, &mut frame).is_err()
            || send.write_all(&frame).await.is_err()
        {
            return;
        }
    }
}

/// Serves the watch streams of a connection (every stream after the
/// first): records the request, sends the scripted frames, finishes.
async fn serve_watches(conn: Connection, shared: Arc<Shared>) {
    while let Ok((mut send, mut recv)) = conn.accept_bi().await {
        let Ok(body) = read_frame_body(&mut recv, DEFAULT_MAX_FRAME_BYTES).await else {
            continue;
        };
        let request = postcard::take_from_bytes::<ClientRequest>(&body)
            .ok()
            .map(|(request, _)| request);
        if let Some(request) = &request {
            lock(&shared.received).push(request.clone());
        }
        shared.watches.fetch_add(1, Ordering::SeqCst);
        let scripted = match (lock(&shared.watch_script).as_mut(), &request) {
            (Some(script), Some(request)) => Some(script(request)),
            _ => None,
        };
        let frames = scripted.unwrap_or_else(|| lock(&shared.watch_frames).clone());
        for frame in &frames {
            if write_frame(&mut send, frame, DEFAULT_MAX_FRAME_BYTES)
                .await
                .is_err()
            {
                break;
            }
        }
        let _ = send.finish();
    }
}

/// A client of `addrs` (schema 0) with `opts`, connected patiently. A
/// connect is bounded by the client's call timeout (under a second in
/// several tests), which a loaded CI machine's TLS handshake can outlast;
/// the tests using this are not about connecting, and a connect applies
/// nothing, so a retryable failure is tried again for up to 30 s (s62:
/// these tests connected once).
pub(crate) async fn connect_patiently(
    addrs: &[String],
    identity: &Identity,
    opts: super::ClientOptions,
) -> super::Client {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let connected = tokio::time::timeout_at(
            deadline,
            super::Client::connect_with(addrs, identity.clone(), 0, opts.clone()),
        )
        .await
        .expect("connects within 30 s");
        match connected {
            Ok(client) => return client,
            Err(e) if e.is_retryable() => {}
            Err(e) => panic!("the connect failed: {e:?}"),
        }
    }
}

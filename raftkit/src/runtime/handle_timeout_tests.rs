//! The public [`client_service::handle`](super::client_service::handle)
//! answers a write, a read or a session request `Timeout` once it was not
//! answered within [`REQUEST_TIMEOUT`], as it always did: the streams of
//! the client service time their requests themselves (`request_deadline`)
//! and call an untimed variant, but an embedder serving requests through
//! `handle` (its own transport, an in-process front end) relies on it
//! (review of stop 50, finding 3: it waited forever).
//!
//! Set-up: a single-node leader whose apply thread is held in a write's
//! handler; a read behind it cannot be served until the gate opens.

use std::sync::Arc;
use std::time::Duration;

use super::client_service::{REQUEST_TIMEOUT, handle};
use super::test_gate::{ApplyGate, apply_threads_named_after, until};
use crate::client::wire::{ClientRequest, ClientResponse, WireError};
use crate::core::Role;
use crate::prelude::*;
use crate::transport::memory::MemoryNetwork;

#[derive(StateMachine, Default, Serialize, Deserialize)]
struct Gated {
    n: u64,
}

/// Holds the peer's apply thread.
static GATE: ApplyGate = ApplyGate::new();

#[crate::state_machine]
impl Gated {
    /// Blocks the apply thread until the gate opens.
    #[write]
    fn hold(&mut self) -> u64 {
        GATE.hold_if_gated();
        self.n
    }

    #[read]
    fn get(&self) -> u64 {
        self.n
    }
}

const ADDR: &str = "handle-timeout:1";

/// See the module docs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_public_handle_answers_a_request_not_answered_in_time_timeout() {
    let _open = GATE.open_on_drop();
    let net = MemoryNetwork::new(50);
    let peer = Gated::peer()
        .in_memory()
        .listen(ADDR)
        .bootstrap_members([ADDR])
        .tick(Duration::from_millis(10))
        .threads(apply_threads_named_after(ADDR))
        .transport(move |id, inbox| Arc::new(net.endpoint(id, inbox)))
        .start()
        .await
        .expect("peer starts");
    until("the peer leads", || {
        (peer.status().role == Role::Leader).then_some(())
    })
    .await;
    GATE.hold_thread_of(ADDR);
    let held = tokio::spawn({
        let peer = peer.clone();
        async move { peer.write(GatedWrite::Hold).await }
    });
    GATE.wait_entered().await;

    let (ca, _) = crate::tls::dev_cluster(["t@a"]).expect("certs");
    let principal = ca
        .issue_client("app")
        .expect("client cert")
        .principal()
        .expect("principal");
    let query = crate::state_machine::encode("query", &GatedRead::Get).expect("query");
    let started = tokio::time::Instant::now();
    let answered = tokio::time::timeout(
        REQUEST_TIMEOUT + Duration::from_secs(10),
        handle(&peer, &principal, ClientRequest::Read { query }),
    )
    .await
    .expect("handle answers within the request timeout (it was not timed)");
    assert_eq!(answered, ClientResponse::Err(WireError::Timeout));
    assert!(
        started.elapsed() >= REQUEST_TIMEOUT,
        "answered Timeout after {:?}",
        started.elapsed()
    );

    GATE.open();
    held.await.expect("the held write's task").expect("hold");
    peer.shutdown().await.expect("shutdown");
}

/// Never answers a request (a leader without a quorum, or one whose apply
/// thread is held).
#[derive(Clone)]
struct Silent;

impl super::client_service::Front for Silent {
    fn state_machine(&self) -> &'static str {
        "silent"
    }
    fn hello(
        &self,
        _: &crate::client::wire::ClientHello,
        _: std::net::SocketAddr,
    ) -> ClientResponse {
        ClientResponse::Ok(Vec::new())
    }
    async fn handle(
        &self,
        _: &crate::tls::Principal,
        _: ClientRequest,
        _: Option<crate::client::wire::RequestMeta>,
    ) -> ClientResponse {
        std::future::pending().await
    }
    async fn watch(
        &self,
        _: [u8; 32],
        _: Option<u64>,
        _: Option<crate::client::wire::RequestMeta>,
        _: quinn::SendStream,
        _: usize,
    ) {
    }
}

/// A request on a stream of its own (a client of version 1, before
/// multiplexed streams: a rolling upgrade's old clients) is answered
/// `Timeout` once not answered within [`REQUEST_TIMEOUT`], as on a
/// multiplexed stream: since the timeout left the handler (`handle`
/// untimed for the streams), the stream's own timeout is all that bounds
/// it, and the room it holds in the node's intake budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_on_a_stream_of_its_own_is_answered_timeout() {
    use super::intake::Intake;
    use crate::client::wire::ClientHello;
    use crate::transport::frame::{DEFAULT_MAX_FRAME_BYTES, encode_frame, read_frame};
    use crate::transport::quic::connect_client;

    let (ca, ids) = crate::tls::dev_cluster(["t@a"]).expect("certs");
    let server_addr = super::intake_tests::serve_on_loopback(
        Silent,
        &ids[0],
        Intake::new(1 << 20, Duration::from_secs(1)),
    );
    let client_id = ca.issue_client("app").expect("client cert");
    let conn = connect_client(server_addr, &client_id)
        .await
        .expect("connect");
    let (mut send, mut recv) = conn.open_bi().await.expect("hello stream");
    let hello = ClientHello {
        version: 1,
        schema: 0,
        schema_desc: None,
    };
    let mut frame = Vec::new();
    encode_frame(&hello, DEFAULT_MAX_FRAME_BYTES, &mut frame).expect("encode");
    send.write_all(&frame).await.expect("hello sent");
    let answer: ClientResponse = read_frame(&mut recv, 1 << 20).await.expect("hello answer");
    assert_eq!(answer, ClientResponse::Ok(Vec::new()), "version 1 accepted");

    let (mut send, mut recv) = conn.open_bi().await.expect("a request's stream");
    let read = ClientRequest::Read { query: vec![1] };
    let mut frame = Vec::new();
    encode_frame(&read, DEFAULT_MAX_FRAME_BYTES, &mut frame).expect("encode");
    let started = tokio::time::Instant::now();
    send.write_all(&frame).await.expect("request sent");
    send.finish().expect("finish");
    let answered: ClientResponse = tokio::time::timeout(
        REQUEST_TIMEOUT + Duration::from_secs(10),
        read_frame(&mut recv, 1 << 20),
    )
    .await
    .expect(
        "a request on a stream of its own answered within the request timeout (it was not timed)",
    )
    .expect("an answer");
    assert_eq!(answered, ClientResponse::Err(WireError::Timeout));
    assert!(
        started.elapsed() >= REQUEST_TIMEOUT,
        "answered Timeout after {:?}",
        started.elapsed()
    );
}

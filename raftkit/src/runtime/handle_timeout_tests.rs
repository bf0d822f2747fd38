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

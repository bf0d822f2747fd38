//! An answer too large for one frame, over real QUIC: the client service
//! answers a read `Rejected` in its place (`client_mux`: "too large to
//! carry: say so instead"), at once, and the stream goes on serving; a
//! write (applied) `AnswerTooLarge`, which says it was applied.
//!
//! Dropped instead (teeth round 7 mutant 717, missed by every test before),
//! the caller would wait for its whole timeout and then retry a read that
//! can never be carried. The test's own deadline (10 s) is far below the
//! client's timeout (60 s), so it fails fast.

use crate::test_ports::free_addr;
use std::time::Duration;

use crate::client::ClientOptions;
use crate::core::Role;
use crate::error::Applied;
use crate::prelude::*;
use crate::tls::dev_cluster;
use crate::transport::frame::DEFAULT_MAX_FRAME_BYTES;

use super::test_gate::until;

#[derive(StateMachine, Default, Serialize, Deserialize)]
#[raftkit(name = "blob")]
struct Blob {
    writes: u64,
}

#[crate::state_machine]
impl Blob {
    #[write]
    fn touch(&mut self) -> u64 {
        self.writes += 1;
        self.writes
    }

    /// Counts the call, then answers `len` bytes of 9s (applied, whatever
    /// the size of its answer).
    #[write]
    fn grow(&mut self, len: u32) -> Vec<u8> {
        self.writes += 1;
        vec![9; usize::try_from(len).expect("a test length")]
    }

    /// The writes applied so far.
    #[read]
    fn count(&self) -> u64 {
        self.writes
    }

    /// `len` bytes of 7s.
    #[read]
    fn bytes(&self, len: u64) -> Vec<u8> {
        vec![7; usize::try_from(len).expect("a test length")]
    }
}

/// Bounds each call of the test (the client's own timeout is far longer).
const DEADLINE: Duration = Duration::from_secs(10);

/// See the module docs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_too_large_for_a_frame_is_refused_at_once_and_the_stream_goes_on() {
    let addr = free_addr();
    let (ca, mut ids) = dev_cluster([format!("blob@{addr}")]).expect("dev CA");
    let node = ids.pop().expect("node identity");
    let client_id = ca.issue_client("answers").expect("client identity");
    let peer = Blob::peer()
        .in_memory()
        .listen(addr.clone())
        .bootstrap()
        .identity(node)
        .tick(Duration::from_millis(20))
        .start()
        .await
        .expect("peer starts");
    until("the peer leads", || {
        (peer.status().role == Role::Leader).then_some(())
    })
    .await;
    let client = BlobClient::connect_with(
        [&addr],
        client_id,
        ClientOptions::default().with_timeout(Duration::from_secs(60)),
    )
    .await
    .expect("client connects");
    assert_eq!(
        tokio::time::timeout(DEADLINE, client.touch())
            .await
            .expect("a write in time")
            .expect("a write"),
        1
    );

    let too_large = DEFAULT_MAX_FRAME_BYTES as u64 + 1;
    let refused = tokio::time::timeout(DEADLINE, client.bytes(too_large))
        .await
        .expect("the too-large answer is refused at once, not left unanswered");
    match refused {
        Err(Error::Rejected(message)) => assert!(
            message.contains("cannot be carried"),
            "refused for another reason: {message}"
        ),
        Err(e) => panic!("refused with the wrong error: {e:?}"),
        Ok(bytes) => panic!("{} bytes came through one frame", bytes.len()),
    }

    // The same client, its connection and stream still serve.
    let small = tokio::time::timeout(DEADLINE, client.bytes(3))
        .await
        .expect("a small read in time")
        .expect("a small read");
    assert_eq!(small, vec![7; 3]);
    peer.shutdown().await.expect("shutdown");
}

/// A write applied whose answer is too large for a frame is reported as
/// applied (and not retried, by the client or through a `WriteOnce` handle
/// that gets the stored answer again): a "not applied" here would invite
/// the caller to send it again, and apply it twice (thesis §6.3).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_whose_answer_is_too_large_for_a_frame_is_reported_applied() {
    let addr = free_addr();
    let (ca, mut ids) = dev_cluster([format!("blob@{addr}")]).expect("dev CA");
    let node = ids.pop().expect("node identity");
    let client_id = ca.issue_client("answers").expect("client identity");
    let peer = Blob::peer()
        .in_memory()
        .listen(addr.clone())
        .bootstrap()
        .identity(node)
        .tick(Duration::from_millis(20))
        .start()
        .await
        .expect("peer starts");
    until("the peer leads", || {
        (peer.status().role == Role::Leader).then_some(())
    })
    .await;
    let client = BlobClient::connect_with(
        [&addr],
        client_id,
        ClientOptions::default().with_timeout(Duration::from_secs(60)),
    )
    .await
    .expect("client connects");
    let too_large = u32::try_from(DEFAULT_MAX_FRAME_BYTES + 1).expect("a u32 length");
    let once = client.write_once();
    for attempt in ["the write", "its WriteOnce retry"] {
        let answered = tokio::time::timeout(DEADLINE, once.grow(too_large))
            .await
            .unwrap_or_else(|_| panic!("{attempt}: answered at once, not left to time out"));
        match answered {
            Err(e) => assert!(
                e.applied() != Applied::No && !e.is_retryable(),
                "{attempt}: an applied write was reported {:?} (retryable: {}): {e:?}",
                e.applied(),
                e.is_retryable()
            ),
            Ok(bytes) => panic!("{attempt}: {} bytes came through one frame", bytes.len()),
        }
        let count = tokio::time::timeout(DEADLINE, client.count())
            .await
            .expect("a read in time")
            .expect("a read");
        assert_eq!(count, 1, "{attempt}: applied {count} times");
    }
    peer.shutdown().await.expect("shutdown");
}

/// What a member sends in place of an answer too large for a frame, for
/// each kind of request: "applied" (`AnswerTooLarge`) only for one that may
/// have changed the state; a read-only one (a node's group listing, a
/// status, a read, a watch) is refused as not applied.
#[test]
fn an_uncarried_answer_says_applied_only_for_requests_that_change_state() {
    use super::client_mux::{changes_state, uncarried};
    use crate::client::wire::{ClientRequest, ClientResponse, NodeRequest, SessionId};
    use crate::transport::frame::FrameError;

    let too_large = FrameError::TooLarge {
        len: 2 << 24,
        max: 1 << 24,
    };
    let verdict = |request: &ClientRequest| match uncarried(changes_state(request), &too_large) {
        ClientResponse::Err(e) => {
            let e = Error::from(e);
            (e.applied(), e.is_retryable())
        }
        other => panic!("{request:?}: answered {other:?}, not an error"),
    };
    let read_only = [
        ClientRequest::Node(NodeRequest::Groups),
        ClientRequest::Status,
        ClientRequest::Read { query: vec![1] },
        ClientRequest::Watch { from: Some(1) },
    ];
    for request in &read_only {
        assert_eq!(
            verdict(request),
            (Applied::No, false),
            "{request:?}: an answer that changed nothing is reported (applied, retryable)"
        );
    }
    let addr = || "m:1".to_string();
    let changing = [
        ClientRequest::Node(NodeRequest::BalanceLeaders),
        ClientRequest::Node(NodeRequest::MoveReplica {
            group: 1,
            from: addr(),
            to: addr(),
        }),
        ClientRequest::AddServer { addr: addr() },
        ClientRequest::AddLearner { addr: addr() },
        ClientRequest::RemoveServer { addr: addr() },
        ClientRequest::TransferLeader { addr: addr() },
        ClientRequest::OpenSession,
        ClientRequest::CloseSession { id: SessionId(1) },
    ];
    for request in &changing {
        assert_eq!(
            verdict(request),
            (Applied::Yes, false),
            "{request:?}: an answer that may have changed the state is reported (applied, retryable)"
        );
    }
}

//! `status_of`, `status` and `node_request` end by the client's timeout
//! or an enclosing [`by_deadline`] (review s52, stop 53 client #3): a
//! member that accepts the connection and never answers hung them for
//! ever. A request that changes nothing (status, `NodeRequest::Groups`)
//! ends `Unavailable` ("not applied"), one that may change something
//! (`BalanceLeaders`, `MoveReplica`) `Timeout` ("may have been applied");
//! the latter wait for the answer longer than the client's timeout
//! (`NODE_ADMIN_TIMEOUT`, review s53 client #5), bounded by `by_deadline`.

use std::time::Duration;

use super::{Client, ClientOptions, by_deadline};
use crate::client::fake_member::{Act, FakeMember};
use crate::client::wire::{ClientRequest, NodeRequest};
use crate::error::{Applied, Error};
use crate::tls::dev_cluster;

/// How long the calls under test wait, at most, before the fix (they
/// never ended): the test fails there instead of hanging.
const HANG: Duration = Duration::from_secs(10);

/// How far past its deadline a call may end (a loaded 2-core machine
/// running every test binary at once: it was 2 s). The defects pinned here
/// never end the call: they fail at [`HANG`].
const SLACK: Duration = Duration::from_secs(5);

/// A member that takes the connection and the hello, and never answers a
/// request; a client of it with timeout `timeout`. The connect is bounded
/// by that timeout too (200 ms here), which a loaded CI machine's TLS
/// handshake can outlast: the tests are not about connecting, and a connect
/// applies nothing, so a retryable failure is tried again until [`HANG`]
/// (s62: one try).
async fn silent(name: &'static str, timeout: Duration) -> (FakeMember, Client) {
    let (ca, nodes) = dev_cluster([name]).expect("dev certificates");
    let client_id = ca.issue_client("silent").expect("client certificate");
    let node = nodes.first().expect("one node");
    let member = FakeMember::start(node, |_: &ClientRequest| Act::Ignore);
    let deadline = tokio::time::Instant::now() + HANG;
    let client = loop {
        let connected = tokio::time::timeout_at(
            deadline,
            Client::connect_with(
                [member.addr().to_string()],
                client_id.clone(),
                0,
                ClientOptions::default().with_timeout(timeout),
            ),
        )
        .await
        .expect("connects in time");
        match connected {
            Ok(client) => break client,
            Err(e) if e.is_retryable() => {}
            Err(e) => panic!("the connect failed: {e:?}"),
        }
    };
    (member, client)
}

/// Runs `call`, which must end within `bound` (plus [`SLACK`]).
async fn ends_by<T>(
    what: &str,
    bound: Duration,
    call: impl std::future::Future<Output = Result<T, Error>>,
) -> Error {
    let start = tokio::time::Instant::now();
    let r = tokio::time::timeout(HANG, call)
        .await
        .unwrap_or_else(|_| panic!("{what} to a member that never answers never ended"));
    let took = start.elapsed();
    let Err(e) = r else {
        panic!("{what} answered by a member that never answers");
    };
    assert!(
        took <= bound + SLACK,
        "{what} ended after {took:?}, past its deadline ({bound:?}): {e:?}"
    );
    e
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_node_requests_end_by_the_clients_timeout() {
    let timeout = Duration::from_millis(500);
    let (member, client) = silent("fake-silent-a", timeout).await;
    let addr = member.addr().to_string();
    let e = ends_by("status_of", timeout, client.status_of(&addr)).await;
    assert!(
        matches!(e, Error::Unavailable(_)) && e.applied() == Applied::No,
        "a status request changes nothing: {e:?}"
    );
    let e = ends_by(
        "node_request(Groups)",
        timeout,
        client.node_request(&addr, NodeRequest::Groups),
    )
    .await;
    assert!(
        matches!(e, Error::Unavailable(_)) && e.applied() == Applied::No,
        "a Groups request changes nothing: {e:?}"
    );
    let e = ends_by(
        "node_request(BalanceLeaders) under by_deadline",
        timeout,
        by_deadline(
            tokio::time::Instant::now() + timeout,
            client.node_request(&addr, NodeRequest::BalanceLeaders),
        ),
    )
    .await;
    assert_eq!(
        e.applied(),
        Applied::Maybe,
        "a balancer round may have started transfers: {e:?}"
    );
    assert!(
        member
            .received()
            .iter()
            .any(|r| matches!(r, ClientRequest::Status)),
        "the status request never reached the member"
    );
}

/// The rustdoc example of [`by_deadline`]: `status()` under a deadline
/// shorter than the client's timeout ends by it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_ends_by_an_enclosing_by_deadline() {
    let (_member, client) = silent("fake-silent-b", HANG).await;
    let bound = Duration::from_millis(300);
    let e = ends_by(
        "status() under by_deadline",
        bound,
        by_deadline(tokio::time::Instant::now() + bound, client.status()),
    )
    .await;
    assert_eq!(e.applied(), Applied::No, "{e:?}");
}

/// A request that may run long server-side (a move waits for the
/// learner's catch-up, up to 120 s) is not cut by the client's timeout
/// (review s53 client #5: `ShardedClient::move_replica` ended `Timeout`
/// after 10 s while its move went on): it still waits after several
/// client timeouts, and it ends by an enclosing `by_deadline`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_or_balance_request_is_not_cut_by_the_clients_timeout() {
    let timeout = Duration::from_millis(200);
    let (member, client) = silent("fake-silent-c", timeout).await;
    let addr = member.addr().to_string();
    for request in [
        NodeRequest::BalanceLeaders,
        NodeRequest::MoveReplica {
            group: 1,
            from: "a:1".into(),
            to: "b:1".into(),
        },
    ] {
        let what = format!("{request:?}");
        let waited = tokio::time::timeout(timeout * 5, client.node_request(&addr, request)).await;
        assert!(
            waited.is_err(),
            "{what} ended within 5x the client's timeout ({timeout:?}): {waited:?}"
        );
    }
}

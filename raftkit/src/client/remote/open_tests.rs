//! Opening the session of concurrent first writes ([`Client::opened`]):
//! they share one attempt, and a waiter inherits the attempt's failure only
//! when its own deadline would not have let it get further (review s52,
//! stop 53 client #1).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::{Client, ClientOptions, by_deadline};
use crate::client::Submit;
use crate::client::fake_member::{Act, FakeMember, session_opened};
use crate::client::wire::{ClientRequest, ClientResponse};
use crate::error::Applied;
use crate::tls::dev_cluster;

/// Bounds every wait of these tests (none is reached when they pass).
const DEADLINE: Duration = Duration::from_secs(10);

/// Waits until `member` received a request `is` matches, at most
/// [`DEADLINE`].
async fn until_received(member: &FakeMember, is: impl Fn(&ClientRequest) -> bool) {
    let give_up = tokio::time::Instant::now() + DEADLINE;
    while !member.received().iter().any(&is) {
        assert!(
            tokio::time::Instant::now() < give_up,
            "the member never received the request"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A first write of a short deadline (300 ms, `by_deadline`) opens the
/// session; the member never answers that first open. A second first
/// write, of the client's 10 s timeout, waits for that attempt: it inherited
/// its failure (`Unavailable` after 300 ms) although it had 9.7 s left to
/// open the session itself. It opens the session under its own deadline
/// and is applied; the short write ends "not applied".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_write_waiting_on_a_shorter_ones_open_opens_the_session_under_its_own_deadline() {
    let (ca, nodes) = dev_cluster(["fake-open"]).expect("dev certificates");
    let client_id = ca.issue_client("open").expect("client certificate");
    let node = nodes.first().expect("one node");
    let opens = Arc::new(AtomicUsize::new(0));
    let member = {
        let opens = opens.clone();
        FakeMember::start(node, move |request| match request {
            // The first open is lost (a leader that dies with it, a slow
            // log): only later ones are answered.
            ClientRequest::OpenSession if opens.fetch_add(1, Ordering::SeqCst) == 0 => Act::Ignore,
            ClientRequest::OpenSession => session_opened(11),
            _ => Act::answer(ClientResponse::Ok(b"done".to_vec())),
        })
    };
    let client = tokio::time::timeout(
        DEADLINE,
        Client::connect_with(
            [member.addr().to_string()],
            client_id,
            0,
            ClientOptions::default().with_timeout(DEADLINE),
        ),
    )
    .await
    .expect("connects in time")
    .expect("connects");
    let short = {
        let client = client.clone();
        tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + Duration::from_millis(300);
            by_deadline(deadline, client.write(b"short".to_vec())).await
        })
    };
    // The short write holds the open attempt once its request arrived.
    until_received(&member, |r| matches!(r, ClientRequest::OpenSession)).await;
    let long = {
        let client = client.clone();
        tokio::spawn(async move { client.write(b"long".to_vec()).await })
    };
    let short = tokio::time::timeout(DEADLINE, short)
        .await
        .expect("the short write ends in time")
        .expect("the short write's task");
    let err = short.expect_err("the short write's open is never answered");
    assert_eq!(err.applied(), Applied::No, "{err:?}");
    let long = tokio::time::timeout(DEADLINE + Duration::from_secs(2), long)
        .await
        .expect("the long write ends in time")
        .expect("the long write's task");
    assert_eq!(
        long.as_deref().ok(),
        Some(&b"done"[..]),
        "the long write (10 s) inherited the short one's (300 ms) failed open: {long:?}"
    );
    assert_eq!(member.writes(), 1, "only the long write was sent");
}

//! Connecting ([`Client::connect_with`]) against members scripted to be
//! down, refusing, or late ([`FakeMember`]): a connect tries every member
//! until its deadline, and a connect that fails says "not applied" (it
//! sends no command).

use std::time::Duration;

use super::{Client, ClientOptions};
use crate::client::fake_member::{Act, FakeMember};
use crate::client::wire::ClientResponse;
use crate::error::{Applied, Error};
use crate::tls::{Identity, dev_cluster};

/// Bounds every wait of these tests (none is reached when they pass).
const DEADLINE: Duration = Duration::from_secs(10);

/// Two node identities and a client identity of one dev cluster.
fn identities() -> (Identity, Identity, Identity) {
    let (ca, mut nodes) = dev_cluster(["fake-a", "fake-b"]).expect("dev certificates");
    let client = ca.issue_client("connect").expect("client certificate");
    let b = nodes.pop().expect("two nodes");
    let a = nodes.pop().expect("two nodes");
    (a, b, client)
}

/// A member that answers every request `Ok`.
fn serving(identity: &Identity) -> FakeMember {
    FakeMember::start(identity, |_| Act::answer(ClientResponse::Ok(Vec::new())))
}

/// `Client::connect_with` to `addrs` with the call timeout `timeout`,
/// within [`DEADLINE`].
async fn connect(
    addrs: Vec<String>,
    identity: Identity,
    timeout: Duration,
) -> Result<Client, Error> {
    let opts = ClientOptions::default()
        .with_timeout(timeout)
        .with_backoff(Duration::from_millis(5))
        .with_max_backoff(Duration::from_millis(50));
    tokio::time::timeout(DEADLINE, Client::connect_with(addrs, identity, 0, opts))
        .await
        .expect("the connect ends in time")
}

/// Found by review (stop 51): a connect every member refused (a member
/// restarting, or past its connection limit) ended `Error::Transport`,
/// which says the command "may have been applied", although a connect
/// sends no command at all (and a sharded client returned it as the
/// outcome of a write whose group's client could not connect). It ends
/// `Unavailable`: not applied, retryable, within the client's timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_that_fails_says_nothing_was_applied() {
    let (a_id, _, client_id) = identities();
    let a = serving(&a_id);
    // Down for good: every dial is refused before anything can be sent.
    a.restart(usize::MAX);
    let timeout = Duration::from_millis(300);
    let start = tokio::time::Instant::now();
    let Err(err) = connect(vec![a.addr().to_string()], client_id, timeout).await else {
        panic!("connected to a member that refuses every dial");
    };
    let took = start.elapsed();
    assert_eq!(
        err.applied(),
        Applied::No,
        "a connect that sent nothing ended {err:?}"
    );
    assert!(
        matches!(err, Error::Unavailable(_)) && err.is_retryable(),
        "{err:?}"
    );
    assert!(took < timeout * 3, "the connect took {took:?}");
    assert!(a.received().is_empty(), "{:?}", a.received());
}

/// Stop 51, task 4 (coverage: it passed before): the first member never
/// answers (a bound UDP socket that is never read), the second serves:
/// the connect does not wait for the first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_whose_first_member_never_answers_goes_on_with_the_second() {
    let (a_id, _, client_id) = identities();
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").expect("a local UDP socket");
    let alive = serving(&a_id);
    let addrs = vec![
        silent.local_addr().expect("bound").to_string(),
        alive.addr().to_string(),
    ];
    let start = tokio::time::Instant::now();
    connect(addrs, client_id, DEADLINE / 2)
        .await
        .expect("the second member answers");
    assert!(
        start.elapsed() < super::CONNECT_TIMEOUT,
        "the connect waited for the silent member: {:?}",
        start.elapsed()
    );
}

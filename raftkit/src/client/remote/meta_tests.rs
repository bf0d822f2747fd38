//! What travels with a request in its [`RequestMeta`](crate::client::wire::RequestMeta),
//! checked against a member that records it ([`FakeMember::metas`]): a
//! read carries the consistency of the client view that sent it, so a
//! `Lease` view is served under a lease and a `Linearizable` one is not
//! served from one (mutation round, stop 47: sending every read as
//! `Stale` failed no test).

use std::time::Duration;

use super::{Client, ClientOptions};
use crate::client::Submit;
use crate::client::consistency::Consistency;
use crate::client::fake_member::{Act, FakeMember, session_opened};
use crate::client::wire::{ClientRequest, ClientResponse, WireError};
use crate::tls::dev_cluster;

/// Bounds every wait of these tests (none is reached when they pass).
const DEADLINE: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_carries_the_consistency_of_its_client_view() {
    let (ca, nodes) = dev_cluster(["fake-a"]).expect("dev certificates");
    let client_id = ca.issue_client("reader").expect("client certificate");
    let member = FakeMember::start(&nodes[0], |request| match request {
        ClientRequest::OpenSession => session_opened(9),
        ClientRequest::Read { .. } => Act::answer(ClientResponse::Ok(b"answer".to_vec())),
        _ => Act::answer(ClientResponse::Err(WireError::Rejected("no".into()))),
    });
    let opts = ClientOptions::default().with_timeout(DEADLINE);
    let client = tokio::time::timeout(
        DEADLINE,
        Client::connect_with([member.addr().to_string()], client_id, 0, opts),
    )
    .await
    .expect("connects in time")
    .expect("connects");
    client.set_leader(Some(member.addr()));
    for consistency in [
        Consistency::Lease,
        Consistency::Linearizable,
        Consistency::Stale,
        Consistency::Lease,
    ] {
        let view = client.with(consistency);
        let answer = tokio::time::timeout(DEADLINE, view.read(b"query".to_vec()))
            .await
            .expect("the read ends in time")
            .expect("the member answers it");
        assert_eq!(answer, b"answer");
        let sent = member
            .metas()
            .last()
            .copied()
            .flatten()
            .map(|meta| meta.consistency);
        assert_eq!(
            sent,
            Some(consistency),
            "a read of a {consistency:?} view travelled with this consistency"
        );
    }
}

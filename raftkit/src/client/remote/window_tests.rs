//! A session write answered `Overloaded` because its session's window is
//! full of replies below it (`runtime::apply`: the replies of writes its
//! client has not acknowledged yet) is retried within the call's timeout,
//! and each attempt carries the acknowledgement of its own moment, so the
//! retry after the lower writes were answered makes the room it waits for
//! (session rule 6, `runtime::session`).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{Client, ClientOptions};
use crate::client::Submit;
use crate::client::fake_member::{Act, FakeMember, session_opened};
use crate::client::wire::{ClientRequest, ClientResponse, WireError};
use crate::tls::dev_cluster;

/// Bounds every wait of the test (none is reached when it passes).
const DEADLINE: Duration = Duration::from_secs(10);

/// Write 1 goes through a `WriteOnce` handle, which keeps its sequence
/// number unacknowledged while the caller holds it; write 2 finds the
/// window full (the member answers as the apply thread does, while write 2
/// does not acknowledge write 1) until the handle is dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_refused_for_a_full_session_window_is_retried_with_its_latest_acknowledgement() {
    let (ca, nodes) = dev_cluster(["fake-window"]).expect("dev certificates");
    let client_id = ca.issue_client("window").expect("client certificate");
    let node = nodes.first().expect("one node");
    // Each write's (seq, acked_below) as it reached the member.
    let writes = Arc::new(Mutex::new(Vec::new()));
    let (refused_tx, refused) = tokio::sync::oneshot::channel();
    let member = FakeMember::start(node, {
        let writes = writes.clone();
        let mut refused_tx = Some(refused_tx);
        move |request| match request {
            ClientRequest::OpenSession => session_opened(5),
            ClientRequest::Write { session, .. } => {
                writes
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push((session.seq, session.acked_below));
                if session.seq == 2 && session.acked_below < 2 {
                    if let Some(tx) = refused_tx.take() {
                        let _ = tx.send(());
                    }
                    Act::answer(ClientResponse::Err(WireError::Overloaded))
                } else {
                    Act::answer(ClientResponse::Ok(Vec::new()))
                }
            }
            other => Act::answer(ClientResponse::Err(WireError::Rejected(format!(
                "unexpected {other:?}"
            )))),
        }
    });
    let opts = ClientOptions::default().with_timeout(Duration::from_secs(3));
    let client = tokio::time::timeout(
        DEADLINE,
        Client::connect_with([member.addr().to_string()], client_id, 0, opts),
    )
    .await
    .expect("connects in time")
    .expect("connects");
    let once = client.write_once();
    tokio::time::timeout(DEADLINE, once.write(b"one".to_vec()))
        .await
        .expect("write 1 ends in time")
        .expect("write 1");
    let second = tokio::spawn({
        let client = client.clone();
        async move { client.write(b"two".to_vec()).await }
    });
    tokio::time::timeout(DEADLINE, refused)
        .await
        .expect("write 2 refused in time")
        .expect("the member refuses write 2 once");
    // Write 1 is acknowledged from now on.
    drop(once);
    let result = tokio::time::timeout(DEADLINE, second)
        .await
        .expect("write 2 ends in time")
        .expect("write 2's task");
    let seen = writes.lock().unwrap_or_else(|p| p.into_inner()).clone();
    assert!(
        result.is_ok(),
        "write 2 ended {result:?} though write 1 was acknowledged after its first refusal; (seq, acked_below) the member received: {seen:?}"
    );
    assert_eq!(seen.last(), Some(&(2, 2)), "{seen:?}");
}

/// A write refused `Overloaded` while a write below it stays unanswered (a
/// `WriteOnce` handle held, its sequence number outstanding) is not resent
/// every backoff: each resend would be a replicated, fsynced entry the
/// apply thread refuses again, since the acknowledgement it carries cannot
/// have moved. The call waits until its session's acknowledgement rises,
/// within its deadline, and ends `Overloaded` (not applied) at it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_refused_for_a_full_window_is_not_resent_while_the_write_below_it_stays_unanswered()
{
    let (ca, nodes) = dev_cluster(["fake-window-held"]).expect("dev certificates");
    let client_id = ca.issue_client("window").expect("client certificate");
    let node = nodes.first().expect("one node");
    // Each write's (seq, acked_below) as it reached the member.
    let writes = Arc::new(Mutex::new(Vec::new()));
    let member = FakeMember::start(node, {
        let writes = writes.clone();
        move |request| match request {
            ClientRequest::OpenSession => session_opened(6),
            ClientRequest::Write { session, .. } => {
                writes
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push((session.seq, session.acked_below));
                if session.seq == 2 && session.acked_below < 2 {
                    Act::answer(ClientResponse::Err(WireError::Overloaded))
                } else {
                    Act::answer(ClientResponse::Ok(Vec::new()))
                }
            }
            other => Act::answer(ClientResponse::Err(WireError::Rejected(format!(
                "unexpected {other:?}"
            )))),
        }
    });
    let opts = ClientOptions::default()
        .with_timeout(Duration::from_secs(1))
        .with_backoff(Duration::from_millis(5))
        .with_max_backoff(Duration::from_millis(20));
    let client = tokio::time::timeout(
        DEADLINE,
        Client::connect_with([member.addr().to_string()], client_id, 0, opts),
    )
    .await
    .expect("connects in time")
    .expect("connects");
    let once = client.write_once();
    tokio::time::timeout(DEADLINE, once.write(b"one".to_vec()))
        .await
        .expect("write 1 ends in time")
        .expect("write 1");
    // Write 1's handle is held for the whole of write 2's call.
    let result = tokio::time::timeout(DEADLINE, client.write(b"two".to_vec()))
        .await
        .expect("write 2 ends in time");
    let seen = writes.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let sent = seen.iter().filter(|(seq, _)| *seq == 2).count();
    assert_eq!(
        sent, 1,
        "write 2 was sent {sent} times while write 1 stayed unanswered (its acknowledgement could not rise); (seq, acked_below) the member received: {seen:?}"
    );
    assert!(
        matches!(result, Err(crate::Error::Overloaded)),
        "write 2 ended {result:?}, not Overloaded, at its deadline"
    );
    drop(once);
}

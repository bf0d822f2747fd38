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

/// Makes `once`'s write 1 and abandons its call once it reached `member`
/// (which never answers it): its outcome unknown, the handle keeps its
/// sequence number unacknowledged while it lives.
async fn abandon_in_flight(once: &super::WriteOnce, member: &FakeMember) {
    let first = once.write(b"one".to_vec());
    tokio::pin!(first);
    let reached = async {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        while member.writes() == 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "write 1 never reached the member"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::select! {
        r = &mut first => panic!("the ignored write 1 was answered: {r:?}"),
        () = reached => {}
    }
}

/// Write 1 goes through a `WriteOnce` handle whose call is abandoned in
/// flight, which keeps its sequence number unacknowledged while the caller
/// holds it (its outcome unknown); write 2 finds the
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
                if session.seq == 1 {
                    Act::Ignore
                } else if session.seq == 2 && session.acked_below < 2 {
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
    // (8 s: the connect and write 2's retry must fit in the client's
    // timeout; 3 s was within reach of a loaded CI machine. The defect ends
    // write 2 `Overloaded` at the timeout, whatever its length.)
    let opts = ClientOptions::default().with_timeout(Duration::from_secs(8));
    let client = tokio::time::timeout(
        DEADLINE,
        Client::connect_with([member.addr().to_string()], client_id, 0, opts),
    )
    .await
    .expect("connects in time")
    .expect("connects");
    let once = client.write_once();
    abandon_in_flight(&once, &member).await;
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
/// `WriteOnce` handle held after its call was abandoned in flight, its
/// sequence number outstanding) is not resent
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
                if session.seq == 1 {
                    Act::Ignore
                } else if session.seq == 2 && session.acked_below < 2 {
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
    // (5 s: the connect, and each call that succeeds, must fit in the
    // client's timeout; 1 s was within reach of a loaded CI machine. The
    // defects show at the timeout, whatever its length.)
    let opts = ClientOptions::default()
        .with_timeout(Duration::from_secs(5))
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
    abandon_in_flight(&once, &member).await;
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

/// A member that keeps a session's replies as the apply thread does
/// (`runtime::session`, rules 5 and 6), with a window of `WINDOW` replies
/// instead of `SESSION_WINDOW`: a write's acknowledgement drops the replies
/// below it, a write below the acknowledgement is refused `Ambiguous`
/// (its reply is gone), a stored reply answers a duplicate, and a new write
/// that finds the window full is refused `Overloaded` while writes below
/// it are unacknowledged, `Rejected` otherwise. Each write's answer is its
/// sequence number (little-endian).
struct WindowModel {
    acked_below: u64,
    replies: std::collections::BTreeMap<u64, Vec<u8>>,
}

/// The small window of [`WindowModel`].
const WINDOW: usize = 4;

impl WindowModel {
    fn new() -> WindowModel {
        WindowModel {
            acked_below: 0,
            replies: std::collections::BTreeMap::new(),
        }
    }

    fn write(&mut self, seq: u64, acked_below: u64) -> ClientResponse {
        let ack = acked_below.min(seq);
        if ack > self.acked_below {
            self.acked_below = ack;
            self.replies = self.replies.split_off(&ack);
        }
        if seq < self.acked_below {
            return ClientResponse::Err(WireError::Ambiguous(format!(
                "write {seq} was already answered and acknowledged"
            )));
        }
        if let Some(reply) = self.replies.get(&seq) {
            return ClientResponse::Ok(reply.clone());
        }
        if self.replies.len() >= WINDOW {
            return ClientResponse::Err(if acked_below < seq {
                WireError::Overloaded
            } else {
                WireError::Rejected(format!("window full after write {seq}"))
            });
        }
        let reply = seq.to_le_bytes().to_vec();
        self.replies.insert(seq, reply.clone());
        ClientResponse::Ok(reply)
    }
}

/// Found by review (stop 45): a `WriteOnce` handle kept after its call was
/// answered (stored for a possible retry) kept its sequence number
/// unacknowledged, so once the window filled with the replies of later
/// writes every later write of its client waited for an acknowledgement
/// that could not rise and ended `Overloaded` at its deadline. An answered
/// handle acknowledges its write; a retry through it returns the answer it
/// got, without sending anything (the cluster forgets an acknowledged
/// reply: a resend would be refused `Ambiguous`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answered_write_once_handle_kept_alive_does_not_hold_the_session_window() {
    let (ca, nodes) = dev_cluster(["fake-window-kept"]).expect("dev certificates");
    let client_id = ca.issue_client("window").expect("client certificate");
    let node = nodes.first().expect("one node");
    let member = FakeMember::start(node, {
        let mut model = WindowModel::new();
        move |request| match request {
            ClientRequest::OpenSession => session_opened(8),
            ClientRequest::Write { session, .. } => {
                Act::answer(model.write(session.seq, session.acked_below))
            }
            other => Act::answer(ClientResponse::Err(WireError::Rejected(format!(
                "unexpected {other:?}"
            )))),
        }
    });
    // (5 s: the connect, and each call that succeeds, must fit in the
    // client's timeout; 1 s was within reach of a loaded CI machine. The
    // defects show at the timeout, whatever its length.)
    let opts = ClientOptions::default()
        .with_timeout(Duration::from_secs(5))
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
    let first = tokio::time::timeout(DEADLINE, once.write(b"one".to_vec()))
        .await
        .expect("write 1 ends in time")
        .expect("write 1");
    // The handle is kept (for a retry) while more writes than the window
    // holds go through the same client.
    let later = 2 * WINDOW + 1;
    for n in 0..later {
        let r = tokio::time::timeout(DEADLINE, client.write(b"more".to_vec()))
            .await
            .expect("a later write ends in time");
        assert!(
            r.is_ok(),
            "write {} of {later} after the answered WriteOnce call ended {r:?} while its handle was kept",
            n + 1
        );
    }
    let sent = member.writes();
    let again = tokio::time::timeout(DEADLINE, once.write(b"one".to_vec()))
        .await
        .expect("the retry ends in time");
    assert_eq!(
        again.as_ref().ok(),
        Some(&first),
        "a retry through the answered handle: {again:?}"
    );
    assert_eq!(
        member.writes(),
        sent,
        "a retry through an answered handle was sent again"
    );
    drop(once);
}

//! Whether a failed call says its command may have been applied, against
//! members scripted to fail at exact points ([`FakeMember`]): the rule of
//! the module docs of [`super`] ("once an attempt of a call may have been
//! applied, the call never ends with an error that says it was not", and an
//! attempt that never left the client applied nothing).
//!
//! Each test pins the route of the call: the client is told who leads
//! (`set_leader`), as it would have learnt from an earlier answer, so that
//! the first attempt goes to the member that fails.

use std::net::SocketAddr;
use std::time::Duration;

use super::{Client, ClientOptions};
use crate::client::Submit;
use crate::client::fake_member::{Act, FakeMember, not_hosted, session_opened};
use crate::client::wire::{ClientRequest, ClientResponse, SessionId, WireError};
use crate::error::{Applied, Error};
use crate::tls::{Identity, dev_cluster};

/// Bounds every wait of these tests (none is reached when they pass).
const DEADLINE: Duration = Duration::from_secs(10);

/// The group of the sharded tests.
const GROUP: u64 = 3;

/// Two node identities and a client identity of one dev cluster.
fn identities() -> (Identity, Identity, Identity) {
    let (ca, mut nodes) = dev_cluster(["fake-a", "fake-b"]).expect("dev certificates");
    let client = ca.issue_client("verdicts").expect("client certificate");
    let b = nodes.pop().expect("two nodes");
    let a = nodes.pop().expect("two nodes");
    (a, b, client)
}

/// A client of `members` (of `group`, if given) whose calls go to `first`
/// first.
async fn client_of(
    members: &[&FakeMember],
    identity: Identity,
    group: Option<u64>,
    first: &FakeMember,
) -> Client {
    let mut opts = ClientOptions::default().with_timeout(DEADLINE);
    opts.group = group;
    let addrs: Vec<String> = members.iter().map(|m| m.addr().to_string()).collect();
    let client = tokio::time::timeout(DEADLINE, Client::connect_with(addrs, identity, 0, opts))
        .await
        .expect("connects in time")
        .expect("connects");
    client.set_leader(Some(first.addr()));
    client
}

/// Two calls through one `WriteOnce` handle of `client`, whose calls go
/// to `a` first: the first must end with its outcome unknown
/// (`Applied::Maybe`; `a` is scripted so), the second must be answered
/// `done`, and both must carry the same sequence number (thesis §6.3: a
/// retry the cluster can recognise as a duplicate).
async fn a_write_once_retry_resends_its_number(client: &Client, a: &FakeMember) {
    let once = client.write_once();
    let first = tokio::time::timeout(DEADLINE, once.write(b"put".to_vec()))
        .await
        .expect("the call ends in time");
    assert_eq!(
        first.as_ref().err().map(Error::applied),
        Some(Applied::Maybe),
        "{first:?}"
    );
    let again = tokio::time::timeout(DEADLINE, once.write(b"put".to_vec()))
        .await
        .expect("the call ends in time");
    assert_eq!(again, Ok(b"done".to_vec()));
    let seqs: Vec<u64> = a
        .received()
        .iter()
        .filter_map(|r| match r {
            ClientRequest::Write { session, .. } => Some(session.seq),
            _ => None,
        })
        .collect();
    assert_eq!(seqs.len(), 2, "{seqs:?}");
    assert_eq!(
        seqs[0], seqs[1],
        "the retry through the handle took a new sequence number"
    );
}

/// Opens the client's session at A, the member its calls go to first.
async fn open_at_a(client: &Client) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    tokio::time::timeout(DEADLINE, client.opened(deadline))
        .await
        .expect("opens in time")
        .expect("A opens the session");
}

/// The write of every test, within [`DEADLINE`].
async fn put(client: &Client) -> Result<Vec<u8>, Error> {
    tokio::time::timeout(DEADLINE, client.write(b"put".to_vec()))
        .await
        .expect("the call ends in time")
}

/// How far past its deadline a call of these tests may end (a loaded
/// machine): the verdict tests check when a call ends, not only how.
const LATE: Duration = Duration::from_secs(2);

/// Runs `call`, and checks that it ended by `timeout` and [`LATE`].
async fn ends_in_time<T>(
    what: &str,
    timeout: Duration,
    call: impl std::future::Future<Output = T>,
) -> T {
    let start = tokio::time::Instant::now();
    let out = tokio::time::timeout(DEADLINE, call)
        .await
        .unwrap_or_else(|_| panic!("the {what} never ended"));
    let took = start.elapsed();
    assert!(
        took <= timeout + LATE,
        "the {what} ended after {took:?}, its timeout is {timeout:?}"
    );
    out
}

/// Three members that open sessions and host no group (the rotation tests
/// pick members without sending them anything), and a client of them whose
/// calls go to the first one first.
async fn three_members() -> (Vec<FakeMember>, Client) {
    let (ca, nodes) = dev_cluster(["fake-a", "fake-b", "fake-c"]).expect("dev certificates");
    let client_id = ca.issue_client("rotation").expect("client certificate");
    let members: Vec<FakeMember> = nodes
        .iter()
        .map(|id| {
            FakeMember::start(id, |request| match request {
                ClientRequest::OpenSession => session_opened(9),
                _ => not_hosted(GROUP),
            })
        })
        .collect();
    let refs: Vec<&FakeMember> = members.iter().collect();
    let client = client_of(&refs, client_id, None, &members[0]).await;
    (members, client)
}

/// Waits until the client has seen its connection to `addr` closed (a
/// request sent on it before then might leave the client).
async fn until_closed(client: &Client, addr: SocketAddr) {
    let conn = client.inner.conns.lock().await.get(&addr).cloned();
    if let Some(conn) = conn {
        tokio::time::timeout(DEADLINE, conn.closed())
            .await
            .expect("the client sees its connection closed");
    }
}

/// Mutant "an attempt that never left the client counts as maybe applied"
/// (teeth round 3, #222). A sharded write whose first attempt is refused
/// before it leaves the client (the member restarts: connection refused),
/// and that every member then answers `NotHosted`, was applied nowhere: the
/// call ends `NotHosted`, which says "not applied".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_refused_before_it_left_and_then_not_hosted_anywhere_was_not_applied() {
    let (a_id, b_id, client_id) = identities();
    // A opens sessions; after its restart it hosts the group no more.
    let a = FakeMember::start(&a_id, |request| match request {
        ClientRequest::OpenSession => session_opened(7),
        _ => not_hosted(GROUP),
    });
    let b = FakeMember::start(&b_id, |_| not_hosted(GROUP));
    let client = client_of(&[&a, &b], client_id, Some(GROUP), &a).await;
    open_at_a(&client).await;
    // A restarts and refuses the next dial: the write's first attempt
    // cannot be sent.
    a.restart(1);
    until_closed(&client, a.addr()).await;

    let err = put(&client).await.expect_err("no member hosts the group");
    assert_eq!(err, Error::NotHosted { group: GROUP });
    assert_eq!(err.applied(), Applied::No, "{err}");
    // The route: refused at A (nothing received), NotHosted at B, then at
    // the restarted A.
    assert_eq!((a.writes(), b.writes()), (1, 1));
}

/// Mutant "`NotHosted` at the end of a call that may have applied returns
/// plain `NotHosted`" (teeth round 3, #223). A sharded member takes the
/// write and dies before answering (it may have applied it); then the only
/// answers are `NotHosted` (the group moved away from the restarted member,
/// and the other never hosted it). The call must not say "not applied": it
/// ends `Ambiguous`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_lost_with_its_member_and_then_not_hosted_anywhere_may_have_been_applied() {
    let (a_id, b_id, client_id) = identities();
    let mut writes = 0;
    let a = FakeMember::start(&a_id, move |request| match request {
        ClientRequest::OpenSession => session_opened(7),
        ClientRequest::Write { .. } => {
            writes += 1;
            if writes == 1 {
                Act::Vanish
            } else {
                not_hosted(GROUP)
            }
        }
        _ => not_hosted(GROUP),
    });
    let b = FakeMember::start(&b_id, |_| not_hosted(GROUP));
    let client = client_of(&[&a, &b], client_id, Some(GROUP), &a).await;

    let err = put(&client).await.expect_err("no member answers the write");
    assert!(matches!(err, Error::Ambiguous(_)), "{err:?}");
    assert_eq!(err.applied(), Applied::Maybe, "{err}");
    // The route: taken by A (lost), NotHosted at B, then at the restarted A.
    assert_eq!((a.writes(), b.writes()), (2, 1));
}

/// Mutant #222 again, on the session path (module docs, `SessionExpired`:
/// "if no attempt of the write could have been applied, the client retries
/// it under the new session by itself and the caller never sees this
/// error"). The write is refused at the leader before it leaves (A is down
/// for good), and B no longer knows the session: the client opens a new
/// session at B and the write succeeds there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_refused_before_it_left_moves_to_a_new_session_when_the_old_one_expired() {
    let (a_id, b_id, client_id) = identities();
    let a = FakeMember::start(&a_id, |request| match request {
        ClientRequest::OpenSession => session_opened(1),
        _ => Act::answer(ClientResponse::Err(WireError::NotLeader { hint: None })),
    });
    let b = FakeMember::start(&b_id, |request| match request {
        ClientRequest::OpenSession => session_opened(2),
        ClientRequest::Write { session, .. } if session.id == SessionId(2) => {
            Act::answer(ClientResponse::Ok(b"done".to_vec()))
        }
        ClientRequest::Write { .. } => Act::answer(ClientResponse::Err(WireError::SessionExpired(
            "unknown session".into(),
        ))),
        _ => Act::answer(ClientResponse::Err(WireError::NotLeader { hint: None })),
    });
    let client = client_of(&[&a, &b], client_id, None, &a).await;
    open_at_a(&client).await;
    a.restart(usize::MAX);
    until_closed(&client, a.addr()).await;

    let out = put(&client)
        .await
        .expect("retried under a new session at B");
    assert_eq!(out, b"done");
    assert_eq!(client.session_id(), Some(SessionId(2)));
    assert_eq!((a.writes(), b.writes()), (0, 2));
}

/// When every member failed within [`super::SUSPECT_FOR`], the next attempt
/// goes to the member that failed longest ago, so retries still visit every
/// member instead of asking one of them again and again until suspicions
/// expire (a bug found with this fake member: with all suspect, the
/// rotation advanced by the number of members per call and picked the same
/// one every time).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_every_member_suspect_retries_still_visit_every_member() {
    let (members, client) = three_members().await;
    for m in &members {
        client.suspect(m.addr());
    }
    // Each pick fails again (as a retry to it would): the next three picks
    // are the three members.
    let mut picked = Vec::new();
    for _ in 0..members.len() {
        let addr = client.round_robin();
        client.suspect(addr);
        picked.push(addr);
    }
    let mut distinct = picked.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(
        distinct.len(),
        members.len(),
        "retries with every member suspect asked {picked:?}"
    );
}

/// A member that just failed is skipped by the rotation while another is
/// not suspect: the next picks are the healthy members only, every one of
/// them in turn (teeth round 5, mutant 501: suspicion read backwards sent
/// every retry to the members that had just failed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rotation_skips_a_member_that_just_failed() {
    let (members, client) = three_members().await;
    let failed = members[1].addr();
    client.suspect(failed);
    let picked: Vec<_> = (0..2 * members.len())
        .map(|_| client.round_robin())
        .collect();
    assert!(
        !picked.contains(&failed),
        "the member that just failed was picked: {picked:?}"
    );
    for m in [&members[0], &members[2]] {
        assert!(
            picked.contains(&m.addr()),
            "{} never picked: {picked:?}",
            m.addr()
        );
    }
}

/// A `NotLeader` hint at a member that just failed is not followed: it is
/// the dead leader the followers still believe in (module docs of
/// [`super`]; teeth round 5, mutant 503: the hint was followed whatever the
/// suspicion, and the retry went straight back to the failed member).
///
/// A, taken for the leader, fails the write with its storage (suspect for
/// [`super::SUSPECT_FOR`]); B, the only other member, answers the retry
/// with a hint at A; the next attempt goes to B again after the backoff (B
/// leads by then), not back to A.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hint_at_a_member_that_just_failed_is_not_followed() {
    let (a_id, b_id, client_id) = identities();
    let a = FakeMember::start(&a_id, |request| match request {
        ClientRequest::OpenSession => session_opened(4),
        _ => Act::answer(ClientResponse::Err(WireError::Storage("disk gone".into()))),
    });
    let stale_hint = a.addr().to_string();
    let mut writes = 0;
    let b = FakeMember::start(&b_id, move |request| match request {
        ClientRequest::OpenSession => session_opened(4),
        ClientRequest::Write { .. } => {
            writes += 1;
            if writes == 1 {
                Act::answer(ClientResponse::Err(WireError::NotLeader {
                    hint: Some(stale_hint.clone()),
                }))
            } else {
                Act::answer(ClientResponse::Ok(b"done".to_vec()))
            }
        }
        _ => Act::answer(ClientResponse::Err(WireError::NotLeader { hint: None })),
    });
    let client = client_of(&[&a, &b], client_id, None, &a).await;
    open_at_a(&client).await;

    let out = put(&client).await.expect("B takes the write once it leads");
    assert_eq!(out, b"done");
    // The route: failed at A, hinted back to A by B, then B again.
    assert_eq!(
        (a.writes(), b.writes()),
        (1, 2),
        "the stale hint at the member that just failed was followed"
    );
}

/// Mutant "a `WriteOnce` call that ended with an error saying its command
/// was applied (a panicking handler: `Applied::Yes`) does not count as
/// sent" (teeth round 10). The handle's next call must not apply it again
/// (under a new session, after finding the session gone, it would): since
/// stop 45 the handle keeps the outcome it got, returns it again and sends
/// nothing more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_once_whose_first_call_applied_never_moves_to_a_new_session() {
    let (a_id, _, client_id) = identities();
    let mut writes = 0;
    let a = FakeMember::start(&a_id, move |request| match request {
        ClientRequest::OpenSession => session_opened(7),
        ClientRequest::Write { .. } => {
            writes += 1;
            Act::answer(ClientResponse::Err(match writes {
                1 => WireError::Handler("the handler panicked".into()),
                2 => WireError::SessionExpired("forgotten".into()),
                _ => return Act::answer(ClientResponse::Ok(b"applied again".to_vec())),
            }))
        }
        _ => Act::answer(ClientResponse::Err(WireError::NotLeader { hint: None })),
    });
    let client = client_of(&[&a], client_id, None, &a).await;
    let once = client.write_once();
    let first = tokio::time::timeout(DEADLINE, once.write(b"put".to_vec()))
        .await
        .expect("the call ends in time");
    assert!(matches!(first, Err(Error::Handler { .. })), "{first:?}");
    let again = tokio::time::timeout(DEADLINE, once.write(b"put".to_vec()))
        .await
        .expect("the call ends in time");
    assert_eq!(again, first, "the handle's next call after the applied one");
    assert_eq!(a.writes(), 1, "the write was sent again");
}

/// Found by review (stop 41): a `WriteOnce` call that its caller stopped
/// waiting for (a `timeout`, a `select!`, a dropped request handler) while
/// its request was at the member left the handle saying "never sent", so
/// the handle's next call, finding the session gone, moved the write to a
/// new session and applied it a second time. The abandoned attempt may
/// have been applied: the next call ends `SessionExpired` and sends nothing
/// more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_once_call_abandoned_in_flight_never_moves_to_a_new_session() {
    let (a_id, _, client_id) = identities();
    let mut writes = 0;
    let a = FakeMember::start(&a_id, move |request| match request {
        ClientRequest::OpenSession => session_opened(7),
        ClientRequest::Write { .. } => {
            writes += 1;
            match writes {
                // Taken (it may apply) but not answered before the caller
                // gives up.
                1 => Act::Ignore,
                2 => Act::answer(ClientResponse::Err(WireError::SessionExpired(
                    "forgotten".into(),
                ))),
                _ => Act::answer(ClientResponse::Ok(b"applied again".to_vec())),
            }
        }
        _ => Act::answer(ClientResponse::Err(WireError::NotLeader { hint: None })),
    });
    let client = client_of(&[&a], client_id, None, &a).await;
    let once = client.write_once();
    {
        let first = once.write(b"put".to_vec());
        tokio::pin!(first);
        let reached = async {
            let deadline = tokio::time::Instant::now() + DEADLINE;
            while a.writes() == 0 {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the write never reached A"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        tokio::select! {
            r = &mut first => panic!("the ignored write was answered: {r:?}"),
            () = reached => {}
        }
        // The caller stops waiting: the call is dropped mid-flight.
    }
    let again = tokio::time::timeout(DEADLINE, once.write(b"put".to_vec()))
        .await
        .expect("the call ends in time");
    assert!(matches!(again, Err(Error::SessionExpired(_))), "{again:?}");
    assert_eq!(
        a.writes(),
        2,
        "the write was sent again under a new session"
    );
}

/// A call's deadline covers the opening of its session, and a write whose
/// session could not be opened was never sent: concurrent first writes
/// during an outage share one open attempt and all end within about one
/// timeout, saying "not applied" (and retryable). (Before, each waiter ran
/// its own open after the previous one failed, K writes took K timeouts,
/// and each ended `Timeout`, "maybe applied".)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_writes_whose_session_cannot_be_opened_end_in_one_timeout_not_applied() {
    let (a_id, _, client_id) = identities();
    let a = FakeMember::start(&a_id, |request| match request {
        ClientRequest::OpenSession => Act::Ignore,
        _ => Act::answer(ClientResponse::Ok(Vec::new())),
    });
    let timeout = Duration::from_millis(500);
    let client = crate::client::fake_member::connect_patiently(
        &[a.addr().to_string()],
        &client_id,
        ClientOptions::default().with_timeout(timeout),
    )
    .await;
    let start = tokio::time::Instant::now();
    let calls: Vec<_> = (0..5)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move {
                let r = put(&client).await;
                (r, start.elapsed())
            })
        })
        .collect();
    let mut ends = Vec::new();
    for call in calls {
        let (r, took) = call.await.expect("the call's task");
        let err = r.expect_err("no session can be opened");
        ends.push((err, took));
    }
    // Within one timeout and a margin for a busy machine; one open after
    // another would end the fifth call at five timeouts.
    let late: Vec<_> = ends
        .iter()
        .filter(|(_, took)| *took > timeout * 3)
        .collect();
    assert!(late.is_empty(), "calls outlived their timeout: {ends:?}");
    for (err, _) in &ends {
        assert_eq!(
            err.applied(),
            Applied::No,
            "{err:?}: the write was never sent"
        );
        assert!(err.is_retryable(), "{err:?}");
    }
    assert_eq!(a.writes(), 0, "a write left the client");
}

/// Mutant "a `WriteOnce` call whose outcome is unknown releases its
/// sequence number" (mutation round, stop 46): the handle's next call took
/// a new sequence number, which the cluster cannot recognise as a
/// duplicate, so a write the first call got applied was applied twice
/// (thesis §6.3). A call that timed out after its request reached the
/// member keeps the number: the retry through the handle re-sends it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_once_retry_after_an_unknown_outcome_resends_its_sequence_number() {
    let (a_id, _, client_id) = identities();
    let mut writes = 0;
    let a = FakeMember::start(&a_id, move |request| match request {
        ClientRequest::OpenSession => session_opened(7),
        ClientRequest::Write { .. } => {
            writes += 1;
            match writes {
                // Taken (it may apply) but never answered: the call times out.
                1 => Act::Ignore,
                _ => Act::answer(ClientResponse::Ok(b"done".to_vec())),
            }
        }
        _ => Act::answer(ClientResponse::Err(WireError::NotLeader { hint: None })),
    });
    // Long enough for the session to open and the write to leave within
    // it on a loaded machine (the write is never answered: the call lasts
    // the whole timeout; one that had not sent it would end "not applied").
    let opts = ClientOptions::default().with_timeout(Duration::from_secs(2));
    let client = tokio::time::timeout(
        DEADLINE,
        Client::connect_with([a.addr().to_string()], client_id, 0, opts),
    )
    .await
    .expect("connects in time")
    .expect("connects");
    client.set_leader(Some(a.addr()));
    a_write_once_retry_resends_its_number(&client, &a).await;
}

/// Mutant M48 (teeth s60): a `WriteOnce` call answered by its member with
/// something it cannot read as an answer (here watch events for a write:
/// `Error::Protocol`, outcome unknown) at its first attempt, so not retried
/// and never `uncertain`, released its sequence number when the handle
/// recorded only `uncertain` as "an attempt may have been applied", not the
/// outcome itself: the retry through the handle took a new number, and a
/// write the member had applied would apply twice (thesis §6.3).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_once_answered_unreadably_keeps_its_sequence_number_for_the_retry() {
    let (a_id, _, client_id) = identities();
    let mut writes = 0;
    let a = FakeMember::start(&a_id, move |request| match request {
        ClientRequest::OpenSession => session_opened(7),
        ClientRequest::Write { .. } => {
            writes += 1;
            match writes {
                1 => Act::answer(ClientResponse::Events {
                    events: Vec::new(),
                    next: 0,
                }),
                _ => Act::answer(ClientResponse::Ok(b"done".to_vec())),
            }
        }
        _ => Act::answer(ClientResponse::Err(WireError::NotLeader { hint: None })),
    });
    let client = client_of(&[&a], client_id, None, &a).await;
    a_write_once_retry_resends_its_number(&client, &a).await;
}

/// Found by review, stop 50: a call whose every member was down ended
/// `Timeout` ("may have been applied") at its deadline, although no
/// attempt ever left the client (every dial refused): `final_error` turned
/// the `Unavailable`/`Transport` of the last attempt into `Timeout`
/// whatever had been sent. Such a call now ends `Unavailable`, "not
/// applied" (and retryable), a read as a write of an opened session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_whose_every_member_is_down_ends_unavailable_not_applied() {
    let (a_id, b_id, client_id) = identities();
    let open = |request: &ClientRequest| match request {
        ClientRequest::OpenSession => session_opened(7),
        _ => Act::answer(ClientResponse::Ok(Vec::new())),
    };
    let a = FakeMember::start(&a_id, open);
    let b = FakeMember::start(&b_id, open);
    let timeout = Duration::from_millis(600);
    let client = crate::client::fake_member::connect_patiently(
        &[a.addr().to_string(), b.addr().to_string()],
        &client_id,
        ClientOptions::default().with_timeout(timeout),
    )
    .await;
    client.set_leader(Some(a.addr()));
    open_at_a(&client).await;
    // Both go down for good: every dial is refused before anything is sent.
    for m in [&a, &b] {
        m.restart(usize::MAX);
        until_closed(&client, m.addr()).await;
    }
    let write = ends_in_time("write", timeout, client.write(b"put".to_vec()))
        .await
        .expect_err("no member is up");
    let read = ends_in_time("read", timeout, client.read(b"get".to_vec()))
        .await
        .expect_err("no member is up");
    for (what, err) in [("write", &write), ("read", &read)] {
        assert!(
            matches!(err, Error::Unavailable(_)) && err.applied() == Applied::No,
            "a {what} that reached no member ended {err:?} (applied: {:?})",
            err.applied()
        );
        assert!(err.is_retryable(), "{what}: {err:?}");
    }
    assert_eq!((a.writes(), b.writes()), (0, 0), "nothing reached a member");
}

/// A client of `members` with the call timeout `timeout`, whose calls go
/// to `first` first.
async fn client_with_timeout(
    members: &[&FakeMember],
    identity: Identity,
    timeout: Duration,
    first: SocketAddr,
) -> Client {
    let addrs: Vec<String> = members.iter().map(|m| m.addr().to_string()).collect();
    let opts = ClientOptions::default().with_timeout(timeout);
    let client = crate::client::fake_member::connect_patiently(&addrs, &identity, opts).await;
    client.set_leader(Some(first));
    client
}

/// A bound UDP socket that is never read: a member that never answers (a
/// QUIC handshake with it never completes, and no dial fails before
/// [`super::CONNECT_TIMEOUT`]).
fn silent_member() -> (std::net::UdpSocket, SocketAddr) {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("a local UDP socket");
    let addr = socket.local_addr().expect("bound address");
    (socket, addr)
}

/// A call shorter than [`super::CONNECT_TIMEOUT`]: a dial of a silent
/// member is still under way at its deadline.
const SHORT: Duration = Duration::from_millis(900);

/// Found by review (stop 51): `final_error` decided "`Timeout`, may have
/// been applied" against "`Unavailable`, not applied" at the deadline by
/// whether any attempt had *reached* a member, not by whether any may have
/// been *applied*. A write answered `NotLeader` (not proposed) by A, whose
/// hint then leads to a member that never answers (the leader died: its
/// dial is under way at the deadline), applied nothing, yet ended
/// `Timeout`. It ends `Unavailable`, not applied (and retryable); so does
/// a read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_told_not_leader_whose_later_dials_fail_ends_not_applied() {
    let (a_id, _, client_id) = identities();
    let (_silent, dead_leader) = silent_member();
    let hint = dead_leader.to_string();
    let a = FakeMember::start(&a_id, move |request| match request {
        ClientRequest::OpenSession => session_opened(7),
        _ => Act::answer(ClientResponse::Err(WireError::NotLeader {
            hint: Some(hint.clone()),
        })),
    });
    let client = client_with_timeout(&[&a], client_id, SHORT, a.addr()).await;
    open_at_a(&client).await;

    let write = ends_in_time("write", SHORT, client.write(b"put".to_vec()))
        .await
        .expect_err("no member takes the write");
    client.set_leader(Some(a.addr()));
    let read = ends_in_time("read", SHORT, client.read(b"get".to_vec()))
        .await
        .expect_err("no member takes the read");
    for (what, err) in [("write", &write), ("read", &read)] {
        assert_eq!(
            err.applied(),
            Applied::No,
            "a {what} answered only NotLeader ended {err:?}"
        );
        assert!(err.is_retryable(), "{what}: {err:?}");
    }
    // A was asked each time (and said "not leader"); nothing else answered.
    assert_eq!(a.writes(), 1, "{:?}", a.received());
}

/// Stop 51, task 2 (coverage: it passed before the stop's changes): a
/// call whose only target never answers (a bound UDP socket that is never
/// read) hits its deadline in the middle of the dial; nothing was sent, so
/// it ends `Unavailable`, not applied, a write as a read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_whose_deadline_passes_mid_dial_ends_not_applied() {
    let (a_id, _, client_id) = identities();
    let (_silent, silent) = silent_member();
    let a = FakeMember::start(&a_id, |request| match request {
        ClientRequest::OpenSession => session_opened(7),
        _ => Act::answer(ClientResponse::Ok(Vec::new())),
    });
    let client = client_with_timeout(&[&a], client_id, SHORT, a.addr()).await;
    open_at_a(&client).await;
    // A goes down for good; the client believes the silent member leads.
    a.restart(usize::MAX);
    until_closed(&client, a.addr()).await;
    client.set_leader(Some(silent));

    let write = ends_in_time("write", SHORT, client.write(b"put".to_vec()))
        .await
        .expect_err("nothing answers");
    client.set_leader(Some(silent));
    let read = ends_in_time("read", SHORT, client.read(b"get".to_vec()))
        .await
        .expect_err("nothing answers");
    for (what, err) in [("write", &write), ("read", &read)] {
        assert!(
            matches!(err, Error::Unavailable(_)) && err.applied() == Applied::No,
            "a {what} whose deadline passed mid-dial ended {err:?} (applied: {:?})",
            err.applied()
        );
        assert!(err.is_retryable(), "{what}: {err:?}");
    }
    assert_eq!(a.writes(), 0, "a write left the client");
}

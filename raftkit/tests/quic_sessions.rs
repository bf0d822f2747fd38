//! Client sessions over real QUIC on loopback, with real WAL files: whose
//! session is whose (a second certificate cannot borrow a victim's session
//! id), retrying a timed-out write exactly-once through `write_once()`, what
//! a client sees when its session expired, acknowledgements and closing.

mod support;
use std::time::Duration;
use support::free_addrs;

use raftkit::client::wire::{ClientRequest, SessionRef};
use raftkit::client::{Client, ClientOptions};
use raftkit::core::Role;
use raftkit::prelude::*;
use raftkit::runtime::PeerBuilder;
use raftkit::tls::{Identity, dev_cluster};

#[derive(StateMachine, Default, Serialize, Deserialize)]
#[raftkit(name = "tally")]
pub struct Tally {
    count: u64,
    ticks: u64,
}

#[raftkit::state_machine]
impl Tally {
    #[write]
    fn incr(&mut self) -> u64 {
        self.count += 1;
        self.count
    }

    /// Counts like `incr`, after holding the apply task for `ms`: a write
    /// that is applied well after its caller gave up waiting.
    #[write]
    fn slow(&mut self, ms: u64) -> u64 {
        std::thread::sleep(Duration::from_millis(ms));
        self.count += 1;
        self.count
    }

    /// Another client's traffic (keeps replicated time moving).
    #[write]
    fn tick(&mut self) {
        self.ticks += 1;
    }

    #[read]
    fn count(&self) -> u64 {
        self.count
    }
}

struct Node {
    _dir: tempfile::TempDir,
    addr: String,
    peer: Peer<Tally>,
    /// Two client identities of the cluster CA: a victim and an attacker.
    clients: [Identity; 2],
    /// An admin identity of the cluster CA.
    admin: Identity,
    /// The node's own (node) identity.
    node: Identity,
}

impl Node {
    /// A one-node cluster over QUIC.
    async fn start(configure: impl FnOnce(PeerBuilder<Tally>) -> PeerBuilder<Tally>) -> Node {
        let addr = free_addrs(1).remove(0);
        let (ca, mut ids) = dev_cluster([format!("tally@{addr}")]).expect("dev CA");
        let node = ids.pop().expect("identity");
        let alice = ca.issue_client("alice").expect("client identity");
        let mallory = ca.issue_client("mallory").expect("client identity");
        let admin = ca.issue_admin("root").expect("admin identity");
        let dir = tempfile::tempdir().expect("tempdir");
        let builder = Tally::peer()
            .listen(addr.clone())
            .data_dir(dir.path().join("n1"))
            .bootstrap()
            .identity(node.clone())
            .tick(Duration::from_millis(20));
        let peer = configure(builder).start().await.expect("peer starts");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        while peer.status().role != Role::Leader {
            assert!(tokio::time::Instant::now() < deadline, "no leader");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Node {
            _dir: dir,
            addr,
            peer,
            clients: [alice, mallory],
            admin,
            node,
        }
    }

    /// A client of `who` with a call timeout of `timeout`. A connect lasts
    /// at most that timeout (handshake and hello), so a short one can fail
    /// on a loaded machine although the node is up; no test here is about
    /// connecting, so it is tried again (a connect applies nothing) for up
    /// to 15 s.
    async fn client(&self, who: usize, timeout: Duration) -> TallyClient {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            match TallyClient::connect_with(
                [&self.addr],
                self.clients[who].clone(),
                ClientOptions::default().with_timeout(timeout),
            )
            .await
            {
                Ok(client) => return client,
                Err(e) => assert!(
                    tokio::time::Instant::now() < deadline,
                    "client connects: {e}"
                ),
            }
            // (A pause before the next try, not a synchronisation.)
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until the node's status satisfies `done`.
    async fn wait(&self, what: &str, done: impl Fn(&raftkit::runtime::PeerStatus) -> bool) {
        let mut w = self.peer.watch();
        tokio::time::timeout(Duration::from_secs(15), w.wait_for(|s| done(s)))
            .await
            .unwrap_or_else(|_| panic!("{what}: not within 15 s: {:?}", self.peer.status()))
            .expect("peer alive");
    }
}

const ALICE: usize = 0;
const MALLORY: usize = 1;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_session_id_is_refused_and_the_victims_writes_still_apply() {
    let n = Node::start(|b| b).await;
    let alice = n.client(ALICE, Duration::from_secs(10)).await;
    assert_eq!(alice.incr().await.unwrap(), 1);
    let victim = alice.inner().session_id().expect("alice's session is open");

    // Mallory holds another client certificate of the same CA, has learned
    // Alice's session id and writes under it with Alice's next sequence
    // numbers, acknowledging everything.
    let mallory = Client::connect_with(
        [&n.addr],
        n.clients[MALLORY].clone(),
        Tally::SCHEMA_FINGERPRINT,
        ClientOptions::default(),
    )
    .await
    .unwrap();
    let incr = raftkit::state_machine::encode("command", &TallyWrite::Incr).unwrap();
    for seq in 2..=6 {
        let r = mallory
            .request(ClientRequest::Write {
                session: SessionRef {
                    id: victim,
                    seq,
                    acked_below: 1_000,
                },
                command: incr.clone(),
            })
            .await;
        match r {
            Err(Error::Rejected(why)) => assert!(why.contains("another client identity"), "{why}"),
            other => panic!("mallory's write under alice's session: {other:?}"),
        }
    }
    let r = mallory
        .request(ClientRequest::CloseSession { id: victim })
        .await;
    assert!(matches!(r, Err(Error::Rejected(_))), "close: {r:?}");
    // Sessions belong to certificates, not roles: an admin certificate
    // cannot use Alice's session either, and a node certificate may not use
    // sessions at all.
    let connect = |identity: Identity| {
        Client::connect_with(
            [&n.addr],
            identity,
            Tally::SCHEMA_FINGERPRINT,
            ClientOptions::default(),
        )
    };
    let write = ClientRequest::Write {
        session: SessionRef {
            id: victim,
            seq: 2,
            acked_below: 1,
        },
        command: incr.clone(),
    };
    let root = connect(n.admin.clone()).await.unwrap();
    match root.request(write.clone()).await {
        Err(Error::Rejected(why)) => assert!(why.contains("another client identity"), "{why}"),
        other => panic!("an admin's write under alice's session: {other:?}"),
    }
    let r = root
        .request(ClientRequest::CloseSession { id: victim })
        .await;
    assert!(matches!(r, Err(Error::Rejected(_))), "admin close: {r:?}");
    let as_node = connect(n.node.clone()).await.unwrap();
    for request in [
        write,
        ClientRequest::CloseSession { id: victim },
        ClientRequest::OpenSession,
    ] {
        match as_node.request(request.clone()).await {
            Err(Error::Unauthorized(why)) => {
                assert!(why.contains("client or admin certificate"), "{why}")
            }
            other => panic!("{request:?} with a node certificate: {other:?}"),
        }
    }
    let reader = n.client(MALLORY, Duration::from_secs(10)).await;
    assert_eq!(
        reader.count().await.unwrap(),
        1,
        "nothing of mallory's applied"
    );

    // Alice's real writes 2 and 3 are applied, not answered from stored
    // replies of mallory's.
    assert_eq!(alice.incr().await.unwrap(), 2);
    assert_eq!(alice.incr().await.unwrap(), 3);
    assert_eq!(alice.inner().session_id(), Some(victim), "same session");
    assert_eq!(reader.count().await.unwrap(), 3);
    n.peer.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_write_retried_through_write_once_is_applied_once() {
    // The impatient client's timeout is far above a handshake and a
    // session's opening (it was 200 ms, which on a loaded machine could
    // cut the connect, or the session's open before the write was sent:
    // `Unavailable` instead of `Timeout`); every handler below holds the
    // apply thread for `HELD` > `IMPATIENT`, so a write that was sent
    // cannot be answered within the call's timeout.
    const IMPATIENT: Duration = Duration::from_secs(1);
    const HELD: u64 = 2000;
    let n = Node::start(|b| b).await;
    let impatient = n.client(ALICE, IMPATIENT).await;
    let checker = n.client(ALICE, Duration::from_secs(20)).await;
    // The impatient client opens its session first (`tick` leaves `count`
    // alone, so a try cut short and retried changes nothing the test
    // counts): the timed writes below are then sent at once.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while let Err(e) = impatient.tick().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the impatient client's session never opened: {e}"
        );
    }
    assert!(impatient.inner().session_id().is_some(), "session open");

    // The documented way: one handle per logical write, retried through it.
    let once = impatient.write_once();
    let first = once.slow(HELD).await;
    assert!(matches!(first, Err(Error::Timeout)), "got {first:?}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let out = loop {
        assert!(tokio::time::Instant::now() < deadline, "no answer");
        match once.slow(HELD).await {
            Err(Error::Timeout) => continue,
            other => break other,
        }
    };
    assert_eq!(out.unwrap(), 1, "the retry got the write's one outcome");
    assert_eq!(checker.count().await.unwrap(), 1, "applied exactly once");
    // Retrying again still answers, and still applies nothing.
    assert_eq!(once.slow(HELD).await.unwrap(), 1);
    // The handle carries one write only.
    assert!(matches!(once.slow(1).await, Err(Error::Rejected(_))));
    assert!(matches!(once.incr().await, Err(Error::Rejected(_))));
    assert_eq!(checker.count().await.unwrap(), 1);

    // What the docs say of a plain call: calling the method again after a
    // timeout is a new write, applied again.
    assert!(matches!(impatient.slow(HELD).await, Err(Error::Timeout)));
    assert_eq!(checker.count().await.unwrap(), 2);
    assert!(matches!(impatient.slow(HELD).await, Err(Error::Timeout)));
    assert_eq!(checker.count().await.unwrap(), 3);
    n.peer.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_whose_session_expired_reports_unknown_outcomes_and_carries_on() {
    let n = Node::start(|b| b.session_ttl(Duration::from_secs(1))).await;
    let alice = n.client(ALICE, Duration::from_secs(10)).await;
    let once = alice.write_once();
    assert_eq!(once.incr().await.unwrap(), 1);
    let first = alice.inner().session_id().expect("open");
    // A second write through a handle of its own is abandoned in flight:
    // its call is dropped once the write is in the leader's log, before
    // its answer (the handler holds the apply thread for a second), so
    // its outcome is unknown to the handle.
    let pending = alice.write_once();
    let base = n.peer.status().last_index;
    {
        let call = pending.slow(1000);
        tokio::pin!(call);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while n.peer.status().last_index <= base {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the slow write never reached the log"
            );
            tokio::select! {
                out = &mut call => panic!("the slow write was answered before it was abandoned: {out:?}"),
                _ = tokio::time::sleep(Duration::from_millis(2)) => {}
            }
        }
    }
    // Alice goes quiet for longer than the session's time-to-live while
    // another client keeps the cluster busy.
    let other = n.client(MALLORY, Duration::from_secs(10)).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while n.peer.status().session_expiries == 0 {
        assert!(tokio::time::Instant::now() < deadline, "no expiry");
        other.tick().await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        other.count().await.unwrap(),
        2,
        "the abandoned write applied"
    );
    // A new write, never sent under the old session, goes through under a
    // new session, transparently.
    assert_eq!(alice.incr().await.unwrap(), 3);
    let second = alice.inner().session_id().expect("reopened");
    assert_ne!(first, second);
    // The handle whose write was answered keeps its answer: a retry
    // returns it and sends nothing.
    assert_eq!(once.incr().await.unwrap(), 1, "the kept answer");
    assert_eq!(other.count().await.unwrap(), 3, "not applied twice");
    // Retrying the abandoned write of the expired session: not applied
    // again, and reported as an unknown outcome.
    let retry = pending.slow(1000).await;
    assert!(
        matches!(retry, Err(Error::SessionExpired(_))),
        "got {retry:?}"
    );
    assert_eq!(other.count().await.unwrap(), 3, "not applied twice");
    // Retrying through the handle again does not move the write to the new
    // session (where it would apply a second time): its outcome stays
    // unknown.
    let again = pending.slow(1000).await;
    assert!(
        matches!(again, Err(Error::SessionExpired(_))),
        "got {again:?}"
    );
    assert_eq!(other.count().await.unwrap(), 3, "not applied twice");
    assert_eq!(alice.incr().await.unwrap(), 4);
    assert_eq!(alice.inner().session_id(), Some(second));
    n.peer.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_acknowledge_their_replies_and_close_their_sessions() {
    let n = Node::start(|b| b).await;
    let base = n.peer.status().last_index;
    let alice = n.client(ALICE, Duration::from_secs(10)).await;
    for i in 1..=50 {
        assert_eq!(alice.incr().await.unwrap(), i);
    }
    // One open and 50 writes later, the table holds one session with at
    // most the last reply (every earlier one was acknowledged).
    n.wait("the writes applied", |s| s.applied > base + 50)
        .await;
    let s = n.peer.status();
    assert_eq!(s.sessions, 1);
    assert!(
        s.session_replies <= 1,
        "{} replies stored",
        s.session_replies
    );
    // Closing forgets the session on the cluster; the client carries on
    // with a new session.
    alice.close().await.unwrap();
    n.wait("alice's session closed", |s| s.sessions == 0).await;
    assert_eq!(alice.inner().session_id(), None);
    assert_eq!(alice.incr().await.unwrap(), 51);
    n.wait("alice's new session", |s| s.sessions == 1).await;
    // Dropping the client closes its session too.
    drop(alice);
    n.wait("the dropped client's session closed", |s| s.sessions == 0)
        .await;
    assert_eq!(n.peer.status().session_replies, 0);
    n.peer.shutdown().await.unwrap();
}

/// One client certificate opening sessions until the table is full many
/// times over evicts only its own sessions: another identity's session
/// (at or below its fair share of the table) keeps its stored replies, so
/// the victim's retry of a write is answered, not refused as expired
/// (exactly-once, thesis §6.3; `runtime::session` rule 8).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_identity_opening_many_sessions_does_not_evict_anothers() {
    const MAX: u64 = 4;
    let n = Node::start(|b| b.max_sessions(MAX)).await;
    let alice = n.client(ALICE, Duration::from_secs(10)).await;
    let once = alice.write_once();
    assert_eq!(once.incr().await.unwrap(), 1);
    let victim = alice.inner().session_id().expect("alice's session is open");

    // Mallory opens sessions under her own certificate, as many as the
    // table holds and more.
    let mallory = Client::connect_with(
        [&n.addr],
        n.clients[MALLORY].clone(),
        Tally::SCHEMA_FINGERPRINT,
        ClientOptions::default(),
    )
    .await
    .unwrap();
    for i in 0..2 * MAX {
        let r = mallory.request(ClientRequest::OpenSession).await;
        assert!(r.is_ok(), "mallory's open {i}: {r:?}");
    }
    n.wait("the table is full and evicted", |s| {
        s.sessions == MAX as usize && s.session_evictions > 0
    })
    .await;

    // Alice retries her write (same session, same sequence number): it is
    // answered from her session, not applied again nor refused.
    let retry = once.incr().await;
    assert!(
        matches!(retry, Ok(1)),
        "alice's retry after mallory's opens: {retry:?}"
    );
    assert_eq!(alice.inner().session_id(), Some(victim), "same session");
    assert_eq!(alice.count().await.unwrap(), 1, "applied once");
    n.peer.shutdown().await.unwrap();
}

/// A stale read over the network reports how stale it may be: the member
/// answers it with its staleness (`ClientResponse::Stale`), which the
/// client keeps for `last_staleness` (and `Client::read_stale`). Mutation
/// testing, stop 49: with the member answering a stale read as a plain
/// `Ok`, nothing failed (the client then reports no staleness, and
/// `read_stale` index 0).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_read_over_quic_reports_its_staleness() {
    let node = Node::start(|b| b).await;
    let c = node.client(ALICE, Duration::from_secs(10)).await;
    for _ in 0..3 {
        c.incr().await.expect("a write");
    }
    let applied = node.peer.status().applied;
    let stale = c.with(raftkit::client::Consistency::Stale);
    assert_eq!(stale.count().await.expect("a stale read"), 3);
    let s = stale
        .last_staleness()
        .expect("a stale read over QUIC reports its staleness");
    assert!(
        s.applied >= applied && s.leader_commit >= s.applied,
        "staleness {s:?} of a read after the writes applied through {applied}"
    );
    assert_eq!(
        c.last_staleness(),
        None,
        "the staleness belongs to the view that read"
    );
}

//! The wait of a write refused while a voter is unheard
//! (`Peer::check_command_heard`, review s60 schema M1 and L2): a leader
//! whose book hears hellos and whose directory proves no write of a
//! voter it has not heard (a node that joined its cluster on a new
//! directory) waits for that voter's hello before it refuses.
//!
//! Set-up: three in-memory peers, A, B and C. A's schema book is that of
//! a joined directory and hears hellos, but the memory transport carries
//! none: B and C stay unheard until the test records their hellos itself
//! (`SchemaBook::accept_peer`). A is made leader by a transfer (its own
//! election timeout is long).

use std::sync::Arc;
use std::time::Duration;

use super::client_service::{REQUEST_TIMEOUT, handle};
use super::test_gate::until;
use crate::client::wire::{ClientRequest, ClientResponse, SessionRef, WireError};
use crate::core::Role;
use crate::prelude::*;
use crate::schema::{SchemaBook, joined_floor};
use crate::transport::memory::MemoryNetwork;

#[derive(StateMachine, Default, Serialize, Deserialize)]
struct Counter {
    n: u64,
}

#[crate::state_machine]
impl Counter {
    #[write]
    fn add(&mut self, by: u64) -> u64 {
        self.n += by;
        self.n
    }

    #[read]
    fn get(&self) -> u64 {
        self.n
    }
}

const TICK: Duration = Duration::from_millis(10);

/// B's and C's election timeout, in ticks: 3-6 s, longer than the wait
/// (2.5 s at most) even at its shortest with a heartbeat late by 0.5 s. At 10 ticks (100-200 ms) a loaded CI machine that
/// delayed A's heartbeats that long had B or C elected during the wait,
/// and the write was answered `NotLeader` (s62, under two CPU hogs: "a
/// write never proposed (voters B and C unheard) was answered
/// Err(NotLeader { hint: Some("heard-72:2") }) after 2.50354454s, not
/// Unsupported").
const FOLLOWER_ELECTION_TICKS: u32 = 300;

/// A (leading, its book that of a joined directory, B and C unheard), B
/// and C; A's election timeout is `a_election_ticks` ticks, theirs
/// [`FOLLOWER_ELECTION_TICKS`]. B or C leads first (A may ignore votes for
/// an election timeout after its start), then hands leadership to A.
async fn joined_leader(
    seed: u64,
    a_election_ticks: u32,
) -> (Peer<Counter>, Vec<Peer<Counter>>, Arc<SchemaBook>) {
    let addrs: Vec<String> = (1..=3).map(|i| format!("heard-{seed}:{i}")).collect();
    let net = MemoryNetwork::new(seed);
    let local = Counter::schema();
    let book =
        Arc::new(SchemaBook::new(local.clone(), None).with_oldest(Some(joined_floor(&local))));
    book.hear_peers();
    let start = |addr: &str| {
        let net = net.clone();
        Counter::peer()
            .in_memory()
            .listen(addr)
            .bootstrap_members(addrs.clone())
            .tick(TICK)
            .transport(move |id, inbox| Arc::new(net.endpoint(id, inbox)))
    };
    let a = start(&addrs[0])
        .election_ticks(a_election_ticks)
        .schema_book(book.clone())
        .start()
        .await
        .expect("A starts");
    let mut others = Vec::new();
    for addr in &addrs[1..] {
        others.push(
            start(addr)
                .election_ticks(FOLLOWER_ELECTION_TICKS)
                .start()
                .await
                .expect("peer starts"),
        );
    }
    let a_id = a.id();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while a.status().role != Role::Leader {
        if let Some(leader) = others.iter().find(|p| p.status().role == Role::Leader) {
            drop(leader.transfer_leadership(a_id).await);
        }
        assert!(tokio::time::Instant::now() < deadline, "A never led");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    (a, others, book)
}

async fn stop(a: Peer<Counter>, others: Vec<Peer<Counter>>) {
    a.shutdown().await.ok();
    for p in others {
        p.shutdown().await.ok();
    }
}

/// Review s60 schema M1: a write refused for a voter not heard yet passes
/// once that voter's hello arrives within the wait, and is applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hello_arriving_within_the_wait_lets_the_write_through() {
    // A's election timeout is 10 s: the wait outlasts the test's steps.
    let (a, others, book) = joined_leader(71, 1000).await;
    let write = tokio::spawn({
        let a = a.clone();
        async move { a.write(CounterWrite::Add { by: 5 }).await }
    });
    until("the write to wait for the voters' hellos", || {
        (book.waiting_for_hellos() > 0).then_some(())
    })
    .await;
    assert!(
        !write.is_finished(),
        "the write was answered without waiting"
    );
    for p in &others {
        book.accept_peer(p.id(), Counter::schema())
            .expect("the voter's schema is A's");
    }
    let written = tokio::time::timeout(Duration::from_secs(5), write)
        .await
        .expect("the write is answered once B is heard")
        .expect("the write's task");
    assert!(
        matches!(written, Ok(CounterWriteOutput::Add(5))),
        "the write did not pass once every voter was heard on a binary that knows it: {written:?}"
    );
    let read = a.read(CounterRead::Get).await;
    assert!(matches!(read, Ok(CounterReadOutput::Get(5))), "{read:?}");
    stop(a, others).await;
}

/// Review s60 schema L2: with a long election timeout (here 10 s, a tick
/// of 1 s would give as much) the wait must end before the client
/// service's request timeout: a write refused for an unheard voter is
/// never proposed, and is answered `Unsupported` (not applied), never
/// `Timeout` (may have been applied).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_after_the_wait_is_unsupported_before_the_request_timeout() {
    let (a, others, _book) = joined_leader(72, 1000).await;
    let session = a.open_session().await.expect("a session");
    let (ca, _) = crate::tls::dev_cluster(["t@a"]).expect("certs");
    let principal = ca
        .issue_client("app")
        .expect("client cert")
        .principal()
        .expect("principal");
    let command =
        crate::state_machine::encode("command", &CounterWrite::Add { by: 1 }).expect("command");
    let started = tokio::time::Instant::now();
    let answered = tokio::time::timeout(
        REQUEST_TIMEOUT + Duration::from_secs(10),
        handle(
            &a,
            &principal,
            ClientRequest::Write {
                session: SessionRef {
                    id: session,
                    seq: 1,
                    acked_below: 1,
                },
                command,
            },
        ),
    )
    .await
    .expect("handle answers");
    let took = started.elapsed();
    match answered {
        ClientResponse::Err(WireError::Unsupported(why)) => {
            assert!(why.contains("is not enabled yet"), "{why}")
        }
        other => panic!(
            "a write never proposed (voters B and C unheard) was answered {other:?} after {took:?}, not Unsupported (nothing applied)"
        ),
    }
    assert!(
        took < REQUEST_TIMEOUT && took >= super::MAX_HEARD_WAIT,
        "answered after {took:?} (the wait is {:?})",
        super::MAX_HEARD_WAIT
    );
    let read = a.read(CounterRead::Get).await;
    assert!(
        matches!(read, Ok(CounterReadOutput::Get(0))),
        "nothing was applied: {read:?}"
    );
    stop(a, others).await;
}

/// The voters a raise is proven against come only from a configuration
/// that names this node (review s61 schema H1): a node catching up holds
/// an older configuration (a snapshot's, taken before a voter was added),
/// and a raise proven against its fewer voters would take the voter
/// added since to know writes it may lack.
#[test]
fn a_raise_counts_voters_only_of_a_configuration_naming_this_node() {
    use super::builder::voters_naming_self;
    use super::status::{MemberStatus, PeerStatus};
    let member = |id, voter| MemberStatus {
        id,
        voter,
        ..MemberStatus::default()
    };
    let mut status = PeerStatus {
        id: 3,
        members: vec![member(1, true), member(2, true)],
        ..PeerStatus::default()
    };
    assert_eq!(
        voters_naming_self(&status, 3),
        Vec::<u64>::new(),
        "a configuration before this node's addition proves nothing"
    );
    status.members.push(member(3, false));
    assert_eq!(voters_naming_self(&status, 3), vec![1, 2], "as a learner");
    status.members.push(member(4, true));
    assert_eq!(voters_naming_self(&status, 3), vec![1, 2, 4]);
}

/// A status whose configuration (appended at `config_index`) has voters
/// 1, 2 and 3, at commit index `commit`.
fn three_voters(config_index: u64, commit: u64) -> super::status::PeerStatus {
    use super::status::{MemberStatus, PeerStatus};
    let voter = |id| MemberStatus {
        id,
        voter: true,
        ..MemberStatus::default()
    };
    PeerStatus {
        id: 3,
        members: vec![voter(1), voter(2), voter(3)],
        config_index,
        commit,
        ..PeerStatus::default()
    }
}

/// Node 3's watcher of its voter set (`raise_on_voter_changes`), its book
/// `book` raising on hellos from the voters the watched status shows.
fn watch_voters(
    book: &Arc<SchemaBook>,
) -> (
    tokio::sync::watch::Sender<super::status::PeerStatus>,
    tokio::task::JoinHandle<()>,
) {
    use super::builder::{raise_on_voter_changes, voters_naming_self};
    let (tx, rx) = tokio::sync::watch::channel(super::status::PeerStatus::default());
    let seen = rx.clone();
    book.raise_on_hellos(move || voters_naming_self(&seen.borrow(), 3));
    let watcher = tokio::spawn(raise_on_voter_changes(book.clone(), rx, 3));
    (tx, watcher)
}

/// Review s61 schema L4: the watcher of the voter set ends once nothing
/// is left to raise (the raise durable), without waiting for another
/// status; it does not live as long as the peer.
#[tokio::test]
async fn the_voter_watcher_ends_once_the_raise_is_durable() {
    use crate::schema::book_write_tests::{HookedFs, PATIENCE, joined_book, with_writes};
    let fs = Arc::new(HookedFs::default());
    let (dir, book) = joined_book(fs);
    let (tx, watcher) = watch_voters(&book);
    // Heard before the configuration names node 3 (it is joining).
    book.accept_peer(1, with_writes(&[0, 1])).unwrap();
    book.accept_peer(2, with_writes(&[0, 1])).unwrap();
    tx.send(three_voters(5, 5)).unwrap();
    tokio::time::timeout(PATIENCE, watcher)
        .await
        .expect("the watcher outlived the raise")
        .unwrap();
    assert_eq!(
        crate::schema::load_raised_schema(&crate::storage::vfs::RealFs, dir.path()).unwrap(),
        Some(with_writes(&[0, 1]))
    );
}

/// Review s61 schema L3: a failed write of the raise does not end the
/// watcher: it tries again (at the latest at the next status, here one
/// with the same configuration) and ends once the raise is durable.
#[tokio::test]
async fn the_voter_watcher_tries_a_failed_raise_again() {
    use crate::schema::book_write_tests::{HookedFs, PATIENCE, joined_book, with_writes};
    let fs = Arc::new(HookedFs::default());
    let (dir, book) = joined_book(fs.clone());
    fs.fail_floor_writes(1);
    let (tx, watcher) = watch_voters(&book);
    book.accept_peer(1, with_writes(&[0, 1])).unwrap();
    book.accept_peer(2, with_writes(&[0, 1])).unwrap();
    tx.send(three_voters(5, 5)).unwrap();
    // The first write fails (the injected failure is used up).
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let written = {
            let book = book.clone();
            tokio::task::spawn_blocking(move || book.wait_raise_written())
        };
        written.await.unwrap();
        if fs.floor_failures_left() == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the raise was never tried"
        );
        tokio::task::yield_now().await;
    }
    // A status with the same configuration (a commit went by).
    tx.send(three_voters(5, 6)).unwrap();
    tokio::time::timeout(PATIENCE, watcher)
        .await
        .expect("the watcher never wrote the raise again after its failure")
        .unwrap();
    assert_eq!(
        crate::schema::load_raised_schema(&crate::storage::vfs::RealFs, dir.path()).unwrap(),
        Some(with_writes(&[0, 1]))
    );
}

//! A watch whose members refuse it (`NotHosted`) while their names are
//! looked up again (stop 57 task #2, review s56 client #3): it follows a
//! name that moved as soon as the lookup answers, and ends with the
//! refusal as soon as the lookups answer that nothing moved (the group
//! left those members).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::client::fake_member::{Act, FakeMember};
use crate::client::resolve::{Names, stub};
use crate::client::wire::{ClientRequest, ClientResponse, WireError};
use crate::client::{Client, ClientOptions};
use crate::error::Error;
use crate::prelude::*;
use crate::tls::dev_cluster;

#[derive(StateMachine, Default, Serialize, Deserialize)]
struct Idle {}

#[crate::state_machine]
impl Idle {
    #[write]
    fn touch(&mut self) -> u64 {
        0
    }
}

/// A client of the members named `names` (every lookup's answer
/// refreshed at once: refreshes never held back by the last answer's age)
/// and its watch of [`Idle`] from index 1, both within `timeout`.
async fn watch_from_one(
    names: [&str; 2],
    client_id: crate::tls::Identity,
    timeout: Duration,
) -> (Client, crate::client::watch::Watch<Idle>) {
    let client = tokio::time::timeout(
        timeout,
        Client::connect_typed(
            names,
            client_id,
            0,
            None,
            ClientOptions::default().with_timeout(timeout),
            Names::with_lifetimes(Duration::from_secs(30), Duration::from_millis(1)),
        ),
    )
    .await
    .expect("connects in time")
    .expect("connects");
    let w = tokio::time::timeout(timeout, client.watch::<Idle>(Some(1)))
        .await
        .expect("opens in time")
        .expect("opens");
    (client, w)
}

/// Review s56 client #3: a `NotHosted` answer made the member's name be
/// looked up again, and while a lookup of a refusing member's name was in
/// flight the watch backed off and asked again; each new refusal started
/// another lookup (here the last answer is always older than the 1 ms
/// failure gate), so a watch of a group that really left its members
/// ended with `NotHosted` only at its outage deadline (10 s here), and the
/// sharded client learnt of the move one timeout late. It waits for the
/// lookups of the refusing names, sees that nothing moved, and ends with
/// the refusal then (a 300 ms lookup).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_of_a_group_that_left_its_members_ends_once_their_lookups_answer() {
    const NAMES: [&str; 2] = [
        "node-l1.watch-left.invalid:7000",
        "node-l2.watch-left.invalid:7000",
    ];
    const TIMEOUT: Duration = Duration::from_secs(10);
    let (ca, nodes) = dev_cluster(["fake-l1", "fake-l2"]).expect("dev certificates");
    let client_id = ca.issue_client("watcher").expect("client certificate");
    let refuse =
        |_: &ClientRequest| Act::answer(ClientResponse::Err(WireError::Rejected("no".into())));
    let left = Arc::new(AtomicBool::new(false));
    // The members accept watches until the group leaves them, then answer
    // `NotHosted`; their names stay where they are.
    let members: Vec<FakeMember> = nodes
        .iter()
        .map(|node| {
            let member = FakeMember::start(node, refuse);
            member.serve_watches_until(left.clone());
            member
        })
        .collect();
    for (name, member) in NAMES.iter().zip(&members) {
        stub::slow(name, member.addr(), Duration::ZERO);
    }
    let (_client, mut w) = watch_from_one(NAMES, client_id, TIMEOUT).await;
    // Every lookup of the names now answers (the same address) 300 ms
    // later, and the group leaves the members.
    for (name, member) in NAMES.iter().zip(&members) {
        stub::slow(name, member.addr(), Duration::from_millis(300));
    }
    left.store(true, Ordering::SeqCst);
    let start = Instant::now();
    let end = tokio::time::timeout(2 * TIMEOUT, w.next())
        .await
        .expect("the watch ends within twice its timeout");
    let took = start.elapsed();
    match end {
        Some(Err(Error::NotHosted { .. })) => {}
        other => panic!("the watch ended with {other:?}, not NotHosted"),
    }
    // Half the outage deadline: the lookups (300 ms) and a few round
    // trips leave seconds of room on a loaded machine.
    assert!(
        took < TIMEOUT / 2,
        "the watch ended {took:?} after the group left (outage deadline {TIMEOUT:?})"
    );
}

/// Review s57 client #2: with every member refusing, the watch waited for
/// *all* the refusing names' lookups before it looked at the members
/// again, so one stalling lookup held it until its outage deadline even
/// though the other name had already moved to a member that serves the
/// group. It follows the moved name when that lookup ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_follows_a_moved_name_while_another_names_lookup_stalls() {
    const NAMES: [&str; 2] = [
        "node-m1.watch-mixed.invalid:7000",
        "node-m2.watch-mixed.invalid:7000",
    ];
    const TIMEOUT: Duration = Duration::from_secs(10);
    let (ca, nodes) = dev_cluster(["fake-m1", "fake-m2", "fake-m3"]).expect("dev certificates");
    let client_id = ca.issue_client("watcher").expect("client certificate");
    let refuse =
        |_: &ClientRequest| Act::answer(ClientResponse::Err(WireError::Rejected("no".into())));
    let left = Arc::new(AtomicBool::new(false));
    // The two first members serve the watch until the group leaves them,
    // then answer `NotHosted`.
    let members: Vec<FakeMember> = nodes[..2]
        .iter()
        .map(|node| {
            let member = FakeMember::start(node, refuse);
            member.serve_watches_until(left.clone());
            member
        })
        .collect();
    // The third hosts the group now; it notes when it is asked.
    let asked = Arc::new(AtomicBool::new(false));
    let third = FakeMember::start(&nodes[2], refuse);
    {
        let asked = asked.clone();
        third.answer_watches_with(move |_| {
            asked.store(true, Ordering::SeqCst);
            vec![ClientResponse::Events {
                events: Vec::new(),
                next: 1,
            }]
        });
    }
    for (name, member) in NAMES.iter().zip(&members) {
        stub::slow(name, member.addr(), Duration::ZERO);
    }
    let (_client, mut w) = watch_from_one(NAMES, client_id, TIMEOUT).await;
    // The first name's lookups now stall; the second's answer the third
    // member 300 ms later. The group leaves the first two.
    stub::script(NAMES[0], stub::Script::Stall);
    stub::slow(NAMES[1], third.addr(), Duration::from_millis(300));
    left.store(true, Ordering::SeqCst);
    let start = Instant::now();
    let watch = tokio::spawn(async move {
        let next = w.next().await;
        (w, next)
    });
    let deadline = start + TIMEOUT / 2;
    while !asked.load(Ordering::SeqCst) {
        assert!(
            Instant::now() < deadline,
            "the moved member was not asked within {:?} of the move (outage deadline {TIMEOUT:?})",
            TIMEOUT / 2
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    watch.abort();
}

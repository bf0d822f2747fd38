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
            let left = left.clone();
            member.answer_watches_with(move |_| {
                if left.load(Ordering::SeqCst) {
                    vec![ClientResponse::Err(WireError::NotHosted { group: 0 })]
                } else {
                    vec![ClientResponse::Events {
                        events: Vec::new(),
                        next: 1,
                    }]
                }
            });
            member
        })
        .collect();
    for (name, member) in NAMES.iter().zip(&members) {
        stub::slow(name, member.addr(), Duration::ZERO);
    }
    let client = tokio::time::timeout(
        TIMEOUT,
        Client::connect_typed(
            NAMES,
            client_id,
            0,
            None,
            ClientOptions::default().with_timeout(TIMEOUT),
            Names::with_lifetimes(Duration::from_secs(30), Duration::from_millis(1)),
        ),
    )
    .await
    .expect("connects in time")
    .expect("connects");
    let mut w = tokio::time::timeout(TIMEOUT, client.watch::<Idle>(Some(1)))
        .await
        .expect("opens in time")
        .expect("opens");
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

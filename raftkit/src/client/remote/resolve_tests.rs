//! Stop 52, task 1: a name the client must look up (a `NotLeader` hint, a
//! cluster address, the member of `status_of` / `node_request`) is looked
//! up off the runtime worker and waited for only until the call's deadline
//! ([`crate::client::resolve`]). The system resolver is scripted
//! ([`stub`]): a name under `.stall.invalid` blocks as during a DNS outage,
//! one under `.fail.invalid` fails.
//!
//! These tests run on a current-thread runtime (`#[tokio::test]`): a lookup
//! made on the worker blocks the whole runtime, the member's tasks and the
//! test's own timers included, which is what they catch.

use std::net::SocketAddr;
use std::time::Duration;

use super::{Client, ClientOptions};
use crate::client::Submit;
use crate::client::fake_member::{Act, FakeMember};
use crate::client::resolve::{Names, stub};
use crate::client::wire::{ClientResponse, NodeRequest, WireError};
use crate::error::{Applied, Error};
use crate::tls::dev_cluster;

/// The timeout of the clients of these tests: a connect must fit in it
/// (it was 1 s, within reach of a loaded CI machine's TLS handshake).
const TIMEOUT: Duration = Duration::from_secs(2);

/// How far past its deadline a call may end (a loaded machine: it was 2 s).
/// The defects pinned here wait for a stalled lookup, [`stub::STALL_FOR`]
/// (8 s), past `TIMEOUT + SLACK`.
const SLACK: Duration = Duration::from_secs(4);

/// Releases the stalled lookups of a name when the test ends (so that the
/// runtime's blocking pool is not kept for [`stub::STALL_FOR`]).
struct Release(&'static str);

impl Drop for Release {
    fn drop(&mut self) {
        stub::release(self.0);
    }
}

/// A member whose every request is answered `NotLeader` with `hint`, and a
/// client of it.
async fn told(hint: &'static str) -> (FakeMember, Client) {
    let (ca, nodes) = dev_cluster(["fake-dns"]).expect("dev certificates");
    let client_id = ca.issue_client("dns").expect("client certificate");
    let node = nodes.first().expect("one node");
    let member = FakeMember::start(node, move |_| {
        Act::answer(ClientResponse::Err(WireError::NotLeader {
            hint: Some(hint.to_string()),
        }))
    });
    let client = tokio::time::timeout(
        TIMEOUT + SLACK,
        Client::connect_with(
            [member.addr().to_string()],
            client_id,
            0,
            ClientOptions::default().with_timeout(TIMEOUT),
        ),
    )
    .await
    .expect("connects in time")
    .expect("connects");
    (member, client)
}

/// A read told `NotLeader` with a hint whose lookup stalls (the name
/// server is down) ended only when the lookup gave up, long past its
/// deadline, and nothing else ran on its worker meanwhile (here a timer of
/// 100 ms). It ends by its deadline, not applied, and the timer fires on
/// time.
#[tokio::test]
async fn a_hint_whose_lookup_stalls_ends_the_call_by_its_deadline_and_stalls_nothing_else() {
    const HINT: &str = "leader-a.stall.invalid:7000";
    let _release = Release(HINT);
    let (member, client) = told(HINT).await;
    let start = tokio::time::Instant::now();
    let tick = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        start.elapsed()
    };
    let call = async {
        let r = client.read(b"get".to_vec()).await;
        (r, start.elapsed())
    };
    let ((read, took), ticked) = tokio::join!(call, tick);
    let err = read.expect_err("no member leads");
    assert!(
        took <= TIMEOUT + SLACK,
        "the call ended after {took:?}, past its deadline ({TIMEOUT:?}): {err:?}"
    );
    assert!(
        ticked <= SLACK,
        "a 100 ms timer of the same runtime fired after {ticked:?}"
    );
    assert_eq!(err.applied(), Applied::No, "{err:?}");
    assert!(err.is_retryable(), "{err:?}");
    assert!(
        !member.received().is_empty(),
        "the read never reached the member"
    );
}

/// `status_of` and `node_request` of a name that does not resolve sent
/// nothing, yet ended `Transport` ("may have been applied"); one whose
/// lookup stalls waited for the lookup. They end `Unavailable`, not
/// applied, and by the client's timeout.
#[tokio::test]
async fn a_status_or_node_request_whose_name_does_not_resolve_sent_nothing() {
    const STALLED: &str = "node-b.stall.invalid:7000";
    let _release = Release(STALLED);
    let (_member, client) = told("127.0.0.1:1").await;
    let status = client
        .status_of("nowhere.fail.invalid:7000")
        .await
        .expect_err("no such name");
    let node = client
        .node_request("nowhere.fail.invalid:7000", NodeRequest::Groups)
        .await
        .expect_err("no such name");
    for (what, err) in [("status_of", &status), ("node_request", &node)] {
        assert!(
            matches!(err, Error::Unavailable(_)) && err.applied() == Applied::No,
            "{what} of a name that does not resolve ended {err:?} (applied: {:?})",
            err.applied()
        );
    }
    let start = tokio::time::Instant::now();
    let stalled = client.status_of(STALLED).await.expect_err("stalled lookup");
    let took = start.elapsed();
    assert!(
        took <= TIMEOUT + SLACK,
        "status_of a name whose lookup stalls ended after {took:?}: {stalled:?}"
    );
    assert_eq!(stalled.applied(), Applied::No, "{stalled:?}");
}

/// A connect given one name whose lookup stalls and one literal address
/// waited for the lookup on the worker (then left the name out). It
/// connects to the literal address within its timeout.
#[tokio::test]
async fn a_connect_with_a_name_whose_lookup_stalls_connects_to_the_others_in_time() {
    const STALLED: &str = "node-c.stall.invalid:7000";
    let _release = Release(STALLED);
    let (ca, nodes) = dev_cluster(["fake-dns-c"]).expect("dev certificates");
    let client_id = ca.issue_client("dns-c").expect("client certificate");
    let node = nodes.first().expect("one node");
    let member = FakeMember::start(node, |_| Act::answer(ClientResponse::Ok(Vec::new())));
    let start = tokio::time::Instant::now();
    let client = Client::connect_with(
        [STALLED.to_string(), member.addr().to_string()],
        client_id,
        0,
        ClientOptions::default().with_timeout(TIMEOUT),
    )
    .await
    .expect("connects to the member whose address is literal");
    let took = start.elapsed();
    assert!(
        took <= TIMEOUT + SLACK,
        "the connect took {took:?} (timeout {TIMEOUT:?})"
    );
    assert_eq!(client.members(), vec![member.addr()]);
}

/// Review s52 #1: once one cluster address resolved, a connect waited at
/// most min(1 s, a quarter of its time left) for the others and left out
/// for good a name whose lookup was merely slow. A connect waits for every
/// lookup until its deadline: a name that resolves within it is a member.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_keeps_a_cluster_address_whose_lookup_is_slow_but_in_time() {
    const SLOW: &str = "node-e.slow.invalid:7000";
    let (ca, nodes) = dev_cluster(["fake-dns-d", "fake-dns-e"]).expect("dev certificates");
    let client_id = ca.issue_client("dns-e").expect("client certificate");
    let [fast_node, slow_node] = nodes.as_slice() else {
        panic!("two nodes");
    };
    let fast = FakeMember::start(fast_node, |_| Act::answer(ClientResponse::Ok(Vec::new())));
    let slow = FakeMember::start(slow_node, |_| Act::answer(ClientResponse::Ok(Vec::new())));
    // Slower than the old grace (1 s), well within the 5 s timeout.
    stub::slow(SLOW, slow.addr(), Duration::from_millis(1500));
    let timeout = Duration::from_secs(5);
    let client = Client::connect_with(
        [fast.addr().to_string(), SLOW.to_string()],
        client_id,
        0,
        ClientOptions::default().with_timeout(timeout),
    )
    .await
    .expect("connects");
    let mut members = client.members();
    members.sort();
    let mut want = vec![fast.addr(), slow.addr()];
    want.sort();
    assert_eq!(
        members, want,
        "the address whose lookup took 1.5 s (timeout {timeout:?}) was left out"
    );
}

/// Review s52 (stop 53 client #2): a cluster address whose lookup was
/// still running when the connect had to dial was left out of the
/// client's members for its life. Its lookup goes on, and once it ends
/// the client has the member.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_address_left_out_of_a_connect_joins_once_its_lookup_ends() {
    const LATE: &str = "node-g.late.invalid:7000";
    let (ca, nodes) = dev_cluster(["fake-dns-f", "fake-dns-g"]).expect("dev certificates");
    let client_id = ca.issue_client("dns-g").expect("client certificate");
    let [fast_node, late_node] = nodes.as_slice() else {
        panic!("two nodes");
    };
    let fast = FakeMember::start(fast_node, |_| Act::answer(ClientResponse::Ok(Vec::new())));
    let late = FakeMember::start(late_node, |_| Act::answer(ClientResponse::Ok(Vec::new())));
    // The connect (2 s) dials 1.5 s after the literal address resolved:
    // the lookup of 2.5 s is still running then.
    stub::slow(LATE, late.addr(), Duration::from_millis(2500));
    let client = Client::connect_with(
        [fast.addr().to_string(), LATE.to_string()],
        client_id,
        0,
        ClientOptions::default().with_timeout(Duration::from_secs(2)),
    )
    .await
    .expect("connects");
    assert_eq!(client.members(), vec![fast.addr()], "at the connect");
    let give_up = tokio::time::Instant::now() + Duration::from_secs(10);
    while !client.members().contains(&late.addr()) {
        assert!(
            tokio::time::Instant::now() < give_up,
            "the address whose lookup ended after the connect never joined: {:?}",
            client.members()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Review s53 client #1: the members were the addresses their names had at
/// connect. When every member's name moved to a new address (a rolling
/// redeploy behind DNS names), no member was reachable at the old ones, no
/// hint ever came, and every call failed `Unavailable` for the client's
/// life. A member the client cannot reach has its name looked up again,
/// and the client follows it to its new address: the first read after the
/// move is answered there, with no hint, and so is the first read after
/// that member went too (the other name was followed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_follows_its_members_names_to_their_new_addresses() {
    const NAMES: [&str; 2] = ["node-m1.moves.invalid:7000", "node-m2.moves.invalid:7000"];
    let (ca, nodes) = dev_cluster([
        "fake-moves-1",
        "fake-moves-2",
        "fake-moves-3",
        "fake-moves-4",
    ])
    .expect("dev certificates");
    let client_id = ca.issue_client("moves").expect("client certificate");
    let [old_1, old_2, new_1, new_2] = nodes.as_slice() else {
        panic!("four nodes");
    };
    let serve = |node| FakeMember::start(node, |_| Act::answer(ClientResponse::Ok(b"ok".to_vec())));
    let (old_1, old_2) = (serve(old_1), serve(old_2));
    for (name, member) in NAMES.iter().zip([&old_1, &old_2]) {
        stub::slow(name, member.addr(), Duration::ZERO);
    }
    let timeout = Duration::from_secs(10);
    let client = Client::connect_with(
        NAMES,
        client_id,
        0,
        ClientOptions::default().with_timeout(timeout),
    )
    .await
    .expect("connects");
    let before = client.read(b"get".to_vec()).await;
    assert_eq!(before.as_deref().ok(), Some(&b"ok"[..]), "{before:?}");
    // The redeploy: both names move to new members, and the old ones are
    // gone.
    let (new_1, new_2) = (serve(new_1), serve(new_2));
    for (name, member) in NAMES.iter().zip([&new_1, &new_2]) {
        stub::slow(name, member.addr(), Duration::ZERO);
    }
    drop((old_1, old_2));
    let start = tokio::time::Instant::now();
    let after = client.read(b"get".to_vec()).await;
    let took = start.elapsed();
    assert_eq!(
        after.as_deref().ok(),
        Some(&b"ok"[..]),
        "the first read after every member moved, after {took:?}: {after:?} (members {:?})",
        client.members()
    );
    // The member that answered goes too: the next read is answered by
    // the other one, whose name the client follows as well.
    let (gone, left) = if new_1.received().is_empty() {
        (new_2, new_1)
    } else {
        (new_1, new_2)
    };
    drop(gone);
    let start = tokio::time::Instant::now();
    let last = client.read(b"get".to_vec()).await;
    let took = start.elapsed();
    assert_eq!(
        last.as_deref().ok(),
        Some(&b"ok"[..]),
        "the first read after the member that answered went too, after {took:?}: {last:?} (members {:?})",
        client.members()
    );
    assert!(
        client.members().contains(&left.addr()),
        "{:?} lacks the member that answered last",
        client.members()
    );
}

/// The members at `names` (scripted to their addresses) answering every
/// request `Ok`, and a client of them (`max_backoff` 20 ms: a call makes
/// many attempts while they refuse every dial). Its timeout is a generous
/// 5 s (a TLS handshake on a loaded CI machine): a test bounds the calls
/// it makes while the members are down itself ([`super::by_deadline`]).
async fn served_by_names(names: [&str; 2], label: &str) -> ([FakeMember; 2], Client) {
    let (ca, nodes) = dev_cluster([format!("fake-{label}-1"), format!("fake-{label}-2")])
        .expect("dev certificates");
    let client_id = ca.issue_client(label).expect("client certificate");
    let members = [&nodes[0], &nodes[1]]
        .map(|node| FakeMember::start(node, |_| Act::answer(ClientResponse::Ok(b"ok".to_vec()))));
    for (name, member) in names.iter().zip(&members) {
        stub::slow(name, member.addr(), Duration::ZERO);
    }
    let client = Client::connect_with(
        names,
        client_id,
        0,
        ClientOptions::default()
            .with_timeout(Duration::from_secs(5))
            .with_backoff(Duration::from_millis(5))
            .with_max_backoff(Duration::from_millis(20)),
    )
    .await
    .expect("connects");
    (members, client)
}

/// Review s55 client #6: nothing showed that a member that is down but
/// not moved (its name answers the same address) costs at most one lookup
/// of its name per [`FAILED_FOR`](crate::client::resolve::FAILED_FOR),
/// however many attempts fail: every failed attempt suspects its member
/// and asks for a refresh. Both members refuse every dial for 1.5 s of
/// calls (each call tens of attempts): each name is looked up at the
/// connect and at most once more per `FAILED_FOR` since.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_down_but_not_moved_costs_one_lookup_of_its_name_per_failed_for() {
    use crate::client::resolve::FAILED_FOR;
    const NAMES: [&str; 2] = ["node-d1.down.invalid:7000", "node-d2.down.invalid:7000"];
    let start = tokio::time::Instant::now();
    let (members, client) = served_by_names(NAMES, "down").await;
    let first = client.read(b"get".to_vec()).await;
    assert_eq!(first.as_deref().ok(), Some(&b"ok"[..]), "{first:?}");
    for member in &members {
        member.restart(usize::MAX);
    }
    let down = tokio::time::Instant::now();
    let mut failed = 0;
    while down.elapsed() < Duration::from_millis(1500) {
        // Only the calls made while the members are down are bounded short.
        let bound = tokio::time::Instant::now() + Duration::from_millis(300);
        let r = super::by_deadline(bound, client.read(b"get".to_vec())).await;
        assert!(r.is_err(), "every dial is refused: {r:?}");
        failed += 1;
    }
    let elapsed = start.elapsed();
    // The connect's lookup, and one per `FAILED_FOR` since it (the first
    // may start as soon as `FAILED_FOR` passed, hence the one more).
    let windows =
        usize::try_from(elapsed.as_millis() / FAILED_FOR.as_millis()).unwrap_or(usize::MAX);
    let allowed = 2 + windows;
    for name in NAMES {
        let looked_up = stub::started(name);
        assert!(
            looked_up <= allowed,
            "{name} was looked up {looked_up} times in {elapsed:?} ({failed} calls failed; bound {allowed})"
        );
    }
}

/// Review s55 client #2: names were looked up again only when their member
/// could not be reached, never by age. A name that moved while the node at
/// its old address still answers (its IP went to another node) kept
/// getting the calls there. A name older than its lifetime is looked up
/// again in the background on a later call (none waits for it): the
/// member is followed to its new address with no call failing, and no
/// call goes to the old address after that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_whose_name_moved_is_followed_by_age_while_its_old_address_answers() {
    const NAMES: [&str; 2] = ["node-a1.aged.invalid:7000", "node-a2.aged.invalid:7000"];
    let (ca, nodes) =
        dev_cluster(["fake-aged-1", "fake-aged-2", "fake-aged-3"]).expect("dev certificates");
    let client_id = ca.issue_client("aged").expect("client certificate");
    let [n1, n2, n3] = nodes.as_slice() else {
        panic!("three nodes");
    };
    let serve = |node| FakeMember::start(node, |_| Act::answer(ClientResponse::Ok(b"ok".to_vec())));
    let (old, other, new) = (serve(n1), serve(n2), serve(n3));
    stub::slow(NAMES[0], old.addr(), Duration::ZERO);
    stub::slow(NAMES[1], other.addr(), Duration::ZERO);
    let client = Client::connect_typed(
        NAMES,
        client_id,
        0,
        None,
        ClientOptions::default().with_timeout(Duration::from_secs(5)),
        Names::with_lifetimes(Duration::from_millis(200), Duration::from_millis(100)),
    )
    .await
    .expect("connects");
    let first = client.read(b"get".to_vec()).await;
    assert_eq!(first.as_deref().ok(), Some(&b"ok"[..]), "{first:?}");
    // The first name moves; the node at its old address keeps answering.
    stub::slow(NAMES[0], new.addr(), Duration::ZERO);
    let give_up = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let members = client.members();
        if members.contains(&new.addr()) && !members.contains(&old.addr()) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < give_up,
            "the client never followed {} to its new address {}: members {members:?}",
            NAMES[0],
            new.addr()
        );
        let r = client.read(b"get".to_vec()).await;
        assert_eq!(r.as_deref().ok(), Some(&b"ok"[..]), "a call failed: {r:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let at_old = old.received().len();
    for _ in 0..5 {
        let r = client.read(b"get".to_vec()).await;
        assert_eq!(r.as_deref().ok(), Some(&b"ok"[..]), "{r:?}");
    }
    assert_eq!(
        old.received().len(),
        at_old,
        "calls still went to the old address of a moved name"
    );
}

/// Review s55 client #5: the suspicion of every address ever suspected
/// was kept for the client's life (with members moving on every redeploy,
/// the map only grew). A suspicion past [`SUSPECT_FOR`](super::SUSPECT_FOR)
/// has no effect, and is dropped when another member is suspected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suspicions_past_their_time_are_dropped() {
    let names = ["node-p1.prune.invalid:7000", "node-p2.prune.invalid:7000"];
    let (_members, client) = served_by_names(names, "prune").await;
    let long_ago = tokio::time::Instant::now()
        .checked_sub(super::SUSPECT_FOR * 2)
        .expect("the clock started a while ago");
    {
        let mut suspects = client.inner.suspects.lock().expect("not poisoned");
        for port in 0..100 {
            suspects.insert(SocketAddr::from(([127, 0, 0, 2], 1000 + port)), long_ago);
        }
    }
    let down = SocketAddr::from(([127, 0, 0, 3], 7000));
    client.suspect(down);
    let kept: Vec<SocketAddr> = client
        .inner
        .suspects
        .lock()
        .expect("not poisoned")
        .keys()
        .copied()
        .collect();
    assert_eq!(
        kept,
        vec![down],
        "{} suspicions kept after one suspect",
        kept.len()
    );
}

/// Review s56 client #1: nothing checked that a connect tells its name
/// table the family of the endpoint it bound (every family test set it by
/// hand). A client of a member at an IPv4 address is given the IPv4
/// address of a dual-stack name that the resolver lists IPv6 first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_takes_its_endpoints_family_for_later_names() {
    use crate::client::resolve::stub::Script;
    const NAME: &str = "dual.connect-family.invalid:7000";
    let (ca, nodes) = dev_cluster(["fake-family-1"]).expect("dev certificates");
    let client_id = ca.issue_client("family").expect("client certificate");
    let member = FakeMember::start(&nodes[0], |_| {
        Act::answer(ClientResponse::Ok(b"ok".to_vec()))
    });
    assert!(member.addr().is_ipv4(), "{}", member.addr());
    let client = Client::connect_with(
        [member.addr().to_string()],
        client_id,
        0,
        ClientOptions::default().with_timeout(Duration::from_secs(5)),
    )
    .await
    .expect("connects");
    let v4 = SocketAddr::from(([127, 0, 0, 1], 7402));
    let v6 = SocketAddr::from(([0, 0, 0, 0, 0, 0, 0, 1], 7402));
    stub::script(NAME, Script::Answers([v6, v4]));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let got = client.inner.names.resolve(NAME, deadline).await;
    assert_eq!(
        got.as_ref().ok(),
        Some(&v4),
        "a client bound to IPv4 got {got:?} for [{v6}, {v4}]"
    );
}

/// Review s56 client (follow-up 3): the age refresh ran only when the
/// member list was read, and a client whose calls all went to the
/// remembered leader never read it (`next_target`), so a moved name whose
/// old address still answers was never refreshed by age in production;
/// the test above passed only because its loop read `members()`. Here
/// only ordinary reads are made: they leave the old address once the
/// name's lifetime has passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordinary_calls_alone_follow_a_moved_leaders_name_by_age() {
    const NAMES: [&str; 2] = [
        "node-c1.aged-calls.invalid:7000",
        "node-c2.aged-calls.invalid:7000",
    ];
    let (ca, nodes) =
        dev_cluster(["fake-agedc-1", "fake-agedc-2", "fake-agedc-3"]).expect("dev certificates");
    let client_id = ca.issue_client("aged-calls").expect("client certificate");
    let [n1, n2, n3] = nodes.as_slice() else {
        panic!("three nodes");
    };
    let serve = |node| FakeMember::start(node, |_| Act::answer(ClientResponse::Ok(b"ok".to_vec())));
    let (old, other, new) = (serve(n1), serve(n2), serve(n3));
    stub::slow(NAMES[0], old.addr(), Duration::ZERO);
    stub::slow(NAMES[1], other.addr(), Duration::ZERO);
    let client = Client::connect_typed(
        NAMES,
        client_id,
        0,
        None,
        ClientOptions::default().with_timeout(Duration::from_secs(5)),
        Names::with_lifetimes(Duration::from_millis(200), Duration::from_millis(100)),
    )
    .await
    .expect("connects");
    // The leader is the member at the first name (connect takes whichever
    // answered first).
    client.set_leader(Some(old.addr()));
    let first = client.read(b"get".to_vec()).await;
    assert_eq!(first.as_deref().ok(), Some(&b"ok"[..]), "{first:?}");
    assert_eq!(old.received().len(), 1, "the first read went to the leader");
    // The first name moves; the node at its old address keeps answering.
    stub::slow(NAMES[0], new.addr(), Duration::ZERO);
    let give_up = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let at_old = old.received().len();
        let r = client.read(b"get".to_vec()).await;
        assert_eq!(r.as_deref().ok(), Some(&b"ok"[..]), "a call failed: {r:?}");
        if old.received().len() == at_old {
            break;
        }
        assert!(
            tokio::time::Instant::now() < give_up,
            "ordinary calls kept going to the old address {} of {} (moved to {}): {} calls there",
            old.addr(),
            NAMES[0],
            new.addr(),
            old.received().len()
        );
        // Pacing only (the names' lifetime is 200 ms).
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let at_old = old.received().len();
    for _ in 0..5 {
        let r = client.read(b"get".to_vec()).await;
        assert_eq!(r.as_deref().ok(), Some(&b"ok"[..]), "{r:?}");
    }
    assert_eq!(
        old.received().len(),
        at_old,
        "calls still went to the old address of a moved name"
    );
}

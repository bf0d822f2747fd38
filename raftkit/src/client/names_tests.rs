//! The lookups of a client's names during a DNS outage, and the lifetime
//! of the addresses found (stop 53, review s52 client #2; module doc of
//! [`super`], "Invariants"). The system resolver is scripted ([`stub`]).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::time::Instant;

use super::stub::{self, Script};
use super::{MAX_LOOKUPS, Names};
use crate::error::{Applied, Error};

/// Bounds every wait of these tests (none is reached when they pass).
const DEADLINE: Duration = Duration::from_secs(10);

/// Releases the stalled lookups of names when the test ends (so that the
/// runtime's blocking pool is not kept for [`stub::STALL_FOR`]).
struct Release(Vec<String>);

impl Drop for Release {
    fn drop(&mut self) {
        for name in &self.0 {
            stub::release(name);
        }
    }
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// During an outage, every caller needing a name (each call told the same
/// `NotLeader` hint) started a blocking lookup of its own: 16 calls, 16
/// lookups stuck in the blocking pool. They share one, each waiting for it
/// until its own deadline, and a call made while it is still in flight
/// joins it too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_needing_a_name_share_its_one_lookup() {
    const NAME: &str = "leader.share.stall.invalid:7000";
    let _release = Release(vec![NAME.into()]);
    let names = Names::default();
    let deadline = Instant::now() + Duration::from_millis(300);
    let calls: Vec<_> = (0..16).map(|_| names.resolve(NAME, deadline)).collect();
    for r in futures_util::future::join_all(calls).await {
        let e = r.expect_err("the name server does not answer");
        assert!(matches!(e, Error::Unavailable(_)), "{e:?}");
    }
    let later = names
        .resolve(NAME, Instant::now() + Duration::from_millis(100))
        .await;
    assert!(later.is_err(), "{later:?}");
    assert_eq!(
        stub::started(NAME),
        1,
        "17 callers of one name started this many lookups"
    );
}

/// A name whose lookup failed was looked up again by every call: a storm
/// of hints re-launched lookups. It is not looked up again for a short
/// while (the calls fail at once, not applied), then it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_whose_lookup_failed_is_not_looked_up_again_for_a_while() {
    const NAME: &str = "gone.negative.fail.invalid:7000";
    const LATER: &str = "gone.negative.later.fail.invalid:7000";
    // A failure kept for far longer than the test runs: the five calls
    // fall inside it however slowly a loaded machine runs them (review s53
    // client #7: a 200 ms window could pass between two of them).
    let names = Names::with_lifetimes(Duration::from_secs(30), Duration::from_secs(600));
    let deadline = Instant::now() + DEADLINE;
    for _ in 0..5 {
        let e = names
            .resolve(NAME, deadline)
            .await
            .expect_err("no such name");
        assert_eq!(e.applied(), Applied::No, "{e:?}");
    }
    assert_eq!(
        stub::started(NAME),
        1,
        "5 calls right after a failed lookup looked the name up this many times"
    );
    // Once the failure is older than its lifetime, the name is looked up
    // again (a table whose failures are kept 50 ms).
    let names = Names::with_lifetimes(Duration::from_secs(30), Duration::from_millis(50));
    let _ = names.resolve(LATER, deadline).await;
    while stub::started(LATER) < 2 {
        assert!(
            Instant::now() < deadline,
            "the failed name was never looked up again"
        );
        let _ = names.resolve(LATER, deadline).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Lookups of many names during an outage all ran at once, each holding a
/// thread of the blocking pool until the name server gave up. At most
/// [`MAX_LOOKUPS`] of a client run at once; the callers of the others end
/// by their deadlines, not applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookups_running_at_once_are_bounded() {
    const GROUP: &str = "bound.stall.invalid";
    let names_list: Vec<String> = (0..3 * MAX_LOOKUPS)
        .map(|i| format!("n{i}.{GROUP}:7000"))
        .collect();
    let _release = Release(names_list.clone());
    let names = Names::default();
    let start = Instant::now();
    let deadline = start + Duration::from_millis(500);
    let calls: Vec<_> = names_list
        .iter()
        .map(|n| names.resolve(n, deadline))
        .collect();
    for r in futures_util::future::join_all(calls).await {
        let e = r.expect_err("the name server does not answer");
        assert_eq!(e.applied(), Applied::No, "{e:?}");
    }
    let took = start.elapsed();
    // (5 s: it was 3 s, within reach of a loaded CI machine; callers that
    // wait for the stalled lookups wait for `stub::STALL_FOR`, 8 s.)
    assert!(
        took < Duration::from_secs(5),
        "the callers waited {took:?} (deadline 500 ms)"
    );
    let peak = stub::peak(GROUP);
    assert!(
        peak <= MAX_LOOKUPS,
        "{peak} lookups ran at once (bound {MAX_LOOKUPS})"
    );
}

/// An address was kept for the client's life: a member whose name moved
/// to a new address stayed unreachable. It is refreshed once older than
/// its lifetime: in the background (the old address is used while the
/// refresh runs, and after it failed), and replaced by what the refresh
/// finds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_is_refreshed_once_older_than_its_lifetime_and_kept_meanwhile() {
    const NAME: &str = "member.moves.invalid:7000";
    let _release = Release(vec![NAME.into()]);
    let (old, new) = (addr(7101), addr(7102));
    stub::script(NAME, Script::Answer(old, Duration::ZERO));
    let names = Names::with_lifetimes(Duration::from_millis(200), Duration::from_millis(100));
    let give_up = Instant::now() + DEADLINE;
    let quick = || Instant::now() + Duration::from_millis(50);
    assert_eq!(names.resolve(NAME, give_up).await.ok(), Some(old));
    // The name server stops answering: once the address is old, a use
    // starts a refresh, and the old address is used meanwhile (at once:
    // 50 ms deadlines).
    stub::script(NAME, Script::Stall);
    while stub::started(NAME) < 2 {
        assert!(
            Instant::now() < give_up,
            "the address was never looked up again"
        );
        let r = names.resolve(NAME, quick()).await;
        assert_eq!(r.ok(), Some(old), "while its refresh is not due");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = names.resolve(NAME, quick()).await;
    assert_eq!(r.ok(), Some(old), "while its refresh runs");
    // The refresh fails: the old address is still used.
    stub::release(NAME);
    let r = names.resolve(NAME, quick()).await;
    assert_eq!(r.ok(), Some(old), "after its refresh failed");
    // The name moved: a later refresh finds the new address.
    stub::script(NAME, Script::Answer(new, Duration::ZERO));
    loop {
        let r = names.resolve(NAME, quick()).await;
        if r.as_ref().ok() == Some(&new) {
            break;
        }
        assert_eq!(r.ok(), Some(old), "before the name's refresh answered");
        assert!(
            Instant::now() < give_up,
            "the moved name was never refreshed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Review s53 client #3: a lookup's outcome was recorded by a task on the
/// runtime that started it. Started on a current-thread runtime that is
/// kept but no longer driven (a connect inside `block_on`, the client
/// used from another runtime afterwards), the task never ran again: the
/// name stayed "being looked up" for the client's life, and every later
/// caller, on any runtime, joined that lookup and ended at its deadline.
/// The outcome is recorded by the lookup's own thread: a caller on another
/// runtime gets the address.
#[test]
fn a_lookup_started_on_a_runtime_no_longer_driven_still_answers_other_runtimes() {
    const NAME: &str = "member.undriven.invalid:7000";
    // 2 s, far past the first caller's 20 ms: a loaded machine pausing this
    // thread cannot let the lookup answer the first caller in time.
    stub::slow(NAME, addr(7201), Duration::from_secs(2));
    let names = Names::default();
    let idle = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime");
    // Started on `idle`, whose caller gives up before the lookup answers;
    // `idle` is then kept, and never driven again.
    let first = idle.block_on(names.resolve(NAME, Instant::now() + Duration::from_millis(20)));
    assert!(first.is_err(), "the lookup takes 2 s: {first:?}");
    let other = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a multi-thread runtime");
    let later = other.block_on(names.resolve(NAME, Instant::now() + DEADLINE));
    assert_eq!(
        later.as_ref().ok(),
        Some(&addr(7201)),
        "a caller on a driven runtime: {later:?}"
    );
    assert_eq!(stub::started(NAME), 1, "the first lookup answered it");
    drop(idle);
}

/// The lookups queued behind [`MAX_LOOKUPS`] running ones are run by the
/// threads of those that end (no runtime task hands them over): every
/// caller gets its address, and no more than [`MAX_LOOKUPS`] ran at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_lookups_run_once_running_ones_end() {
    const GROUP: &str = "queue.answers.invalid";
    let names_list: Vec<String> = (0..3 * MAX_LOOKUPS)
        .map(|i| format!("n{i}.{GROUP}:7000"))
        .collect();
    for (i, name) in names_list.iter().enumerate() {
        let port = 7300 + u16::try_from(i).expect("a few names");
        stub::slow(name, addr(port), Duration::from_millis(30));
    }
    let names = Names::default();
    let deadline = Instant::now() + DEADLINE;
    let calls: Vec<_> = names_list
        .iter()
        .map(|n| names.resolve(n, deadline))
        .collect();
    for (i, r) in futures_util::future::join_all(calls)
        .await
        .into_iter()
        .enumerate()
    {
        let port = 7300 + u16::try_from(i).expect("a few names");
        assert_eq!(r.ok(), Some(addr(port)), "name {i}");
    }
    let peak = stub::peak(GROUP);
    assert!(
        (1..=MAX_LOOKUPS).contains(&peak),
        "{peak} lookups ran at once (bound {MAX_LOOKUPS})"
    );
}

/// Review s55 client #8 (task #4): a lookup took the first address the
/// system resolver gave, of either family. A name that came back
/// IPv6-first to a client bound to IPv4 (or the reverse) was unreachable
/// for the client's life: every refresh found the same address. A lookup
/// takes an address of the client's family when the name has one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_is_taken_at_an_address_of_the_clients_family() {
    let (v4, v6) = (
        addr(7400),
        SocketAddr::from(([0, 0, 0, 0, 0, 0, 0, 1], 7400)),
    );
    let deadline = Instant::now() + DEADLINE;
    for (name, ipv4, answers, want) in [
        ("dual-a.family.invalid:7000", true, [v6, v4], v4),
        ("dual-b.family.invalid:7000", false, [v4, v6], v6),
    ] {
        stub::script(name, Script::Answers(answers));
        let mut names = Names::default();
        names.prefer_family(ipv4);
        let found = names.resolve(name, deadline).await;
        assert_eq!(
            found.as_ref().ok(),
            Some(&want),
            "a client bound to IPv{} got {found:?} for {answers:?}",
            if ipv4 { 4 } else { 6 }
        );
    }
}

/// Review s56 client #1: the family was one setting of the whole shared
/// table, so the client that bound last chose it for every client of a
/// sharded client: a group client bound to IPv6 made the IPv4-bound
/// placement client (and every other group client) get the IPv6 address
/// of a dual-stack name, which its socket cannot dial. Each client
/// sharing a table is given the address of its own family.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_sharing_a_table_each_get_their_own_familys_address() {
    const NAME: &str = "dual.shared-family.invalid:7000";
    let (v4, v6) = (
        addr(7401),
        SocketAddr::from(([0, 0, 0, 0, 0, 0, 0, 1], 7401)),
    );
    stub::script(NAME, Script::Answers([v6, v4]));
    let shared = Names::default();
    let mut bound_v4 = shared.clone();
    bound_v4.prefer_family(true);
    let mut bound_v6 = shared.clone();
    bound_v6.prefer_family(false);
    let deadline = Instant::now() + DEADLINE;
    let got_v4 = bound_v4.resolve(NAME, deadline).await;
    let got_v6 = bound_v6.resolve(NAME, deadline).await;
    assert_eq!(
        (got_v4.as_ref().ok(), got_v6.as_ref().ok()),
        (Some(&v4), Some(&v6)),
        "the IPv4-bound client got {got_v4:?}, the IPv6-bound one {got_v6:?}"
    );
    assert_eq!(stub::started(NAME), 1, "one lookup for both clients");
}

/// Waits (without sleeping, and without letting a paused clock run on)
/// until no lookup of `name` is in flight.
async fn until_looked_up(names: &Names, name: &str) {
    let give_up = std::time::Instant::now() + DEADLINE;
    while names.looking_up(name) {
        assert!(
            std::time::Instant::now() < give_up,
            "the lookup of {name} never ended"
        );
        std::thread::yield_now();
        tokio::task::yield_now().await;
    }
}

/// Review s56 client #5 (stop 57 task #1): a failed age refresh was made
/// again [`FAILED_FOR`](super::FAILED_FOR) later, so with the name server
/// down and the cluster healthy every member name was looked up every 2 s
/// for as long as calls ran. A failing age refresh backs off (doubling,
/// up to the address's lifetime) while the old address keeps serving, and
/// a refresh that answers again replaces it. Paused clock: deterministic.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_failing_age_refresh_backs_off_while_the_old_address_serves() {
    const NAME: &str = "member.age-backoff.invalid:7000";
    let (old, new) = (addr(7501), addr(7502));
    stub::script(NAME, Script::Answer(old, Duration::ZERO));
    let names = Names::default();
    names.prefetch(NAME);
    until_looked_up(&names, NAME).await;
    assert_eq!(names.known(NAME), Some(old));
    // The name server goes down for ten minutes, the address ages, and
    // calls use the name (an age check) every half second.
    stub::script(NAME, Script::Fail);
    tokio::time::advance(super::RESOLVED_FOR).await;
    let outage = Duration::from_secs(600);
    let step = Duration::from_millis(500);
    let mut waited = Duration::ZERO;
    while waited < outage {
        names.prefetch(NAME);
        until_looked_up(&names, NAME).await;
        assert_eq!(names.known(NAME), Some(old), "the old address serves");
        tokio::time::advance(step).await;
        waited += step;
    }
    let refreshes = stub::started(NAME) - 1;
    // Doubling from 2 s up to 30 s: 2+4+8+16 s, then one per 30 s (24 in
    // 600 s); one per 2 s would be 300.
    assert!(
        (10..=30).contains(&refreshes),
        "{refreshes} failed age refreshes in a {outage:?} outage"
    );
    // The name server answers again (the name moved meanwhile): within
    // the address's lifetime the refresh finds the new address.
    stub::script(NAME, Script::Answer(new, Duration::ZERO));
    let mut waited = Duration::ZERO;
    while names.known(NAME) != Some(new) {
        assert!(
            waited <= super::RESOLVED_FOR,
            "the name server answers again, the name's refresh did not follow"
        );
        names.prefetch(NAME);
        until_looked_up(&names, NAME).await;
        tokio::time::advance(step).await;
        waited += step;
    }
}

/// Review s56 client #5 (stop 57 task #1): background lookups (age
/// refreshes, names left out of a connect) of a stalling name server took
/// every lookup slot, so a lookup a call waits for (a `NotLeader` hint, a
/// new group client's replicas) queued behind them and the call ended at
/// its deadline. Background lookups leave one slot to calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_background_lookups_leave_a_slot_to_a_call() {
    const GROUP: &str = "slots.stall.invalid";
    const NEEDED: &str = "hint.slots.invalid:7000";
    let background: Vec<String> = (0..2 * MAX_LOOKUPS)
        .map(|i| format!("n{i}.{GROUP}:7000"))
        .collect();
    let _release = Release(background.clone());
    stub::script(NEEDED, Script::Answer(addr(7503), Duration::ZERO));
    let names = Names::default();
    for name in &background {
        names.prefetch(name);
    }
    // Far shorter than a stalled lookup (8 s), far longer than one that
    // answers at once.
    let got = names
        .resolve(NEEDED, Instant::now() + Duration::from_secs(4))
        .await;
    assert_eq!(
        got.as_ref().ok(),
        Some(&addr(7503)),
        "the call's lookup: {got:?}"
    );
    let peak = stub::peak(GROUP);
    assert!(
        peak < MAX_LOOKUPS,
        "{peak} background lookups ran at once (slots {MAX_LOOKUPS})"
    );
}

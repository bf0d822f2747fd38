//! Exactly-once sessions through the whole runtime (node task, apply task,
//! session table, snapshots of it), over the in-process network, with
//! tokio's paused clock and an injected wall clock: sessions the table does
//! not know, expiry, a leader's wall clock jumping ahead, the bound on the
//! table, acknowledgements, and the randomness of session ids.
//!
//! Leadership is not assumed stable in a multi-node cluster. The apply task
//! runs on an operating-system thread, outside tokio's paused clock, which
//! jumps to the next timer whenever the runtime has nothing ready: a worker
//! thread descheduled for a few real milliseconds (a loaded CI machine) in
//! the middle of waking a node task leaves that task unpolled while virtual
//! time runs on past an election timeout, and another node is elected (as
//! it would be if a real node stalled that long). So calls on a chosen
//! member go through [`Cluster::on`], which retries a `NotLeader` answer
//! (nothing was applied) once that member leads again, the way a session
//! client retries (a retried session write is answered from the session
//! table, never applied twice). For the same reason every deadline here is
//! on the real clock: a virtual one can pass while nothing is wrong.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use raftkit::core::Role;
use raftkit::prelude::*;
use raftkit::runtime::PeerBuilder;
use raftkit::runtime::session::{SessionId, SessionRef};
use raftkit::transport::memory::MemoryNetwork;

#[derive(StateMachine, Default, Serialize, Deserialize)]
#[raftkit(name = "counter")]
pub struct Counter {
    values: BTreeMap<String, u64>,
}

#[raftkit::state_machine]
impl Counter {
    #[write]
    fn add(&mut self, key: String, by: u64) -> u64 {
        let v = self.values.entry(key).or_default();
        *v += by;
        *v
    }

    #[read]
    fn get(&self, key: String) -> u64 {
        self.values.get(&key).copied().unwrap_or(0)
    }
}

/// A plausible "now" for the injected wall clocks.
const EPOCH_MS: u64 = 1_700_000_000_000;
const HOUR_MS: u64 = 60 * 60 * 1000;

struct Cluster {
    peers: Vec<Peer<Counter>>,
    /// Per node: how far its wall clock is ahead of (virtual) real time.
    skew_ms: Vec<Arc<AtomicU64>>,
}

impl Cluster {
    /// `n` in-memory peers whose wall clocks follow tokio's (paused) clock
    /// plus a per-node skew the test can change.
    async fn start(
        n: usize,
        configure: impl Fn(PeerBuilder<Counter>) -> PeerBuilder<Counter>,
    ) -> Cluster {
        let net = MemoryNetwork::new(3);
        let addrs: Vec<String> = (1..=n).map(|i| format!("n{i}:1")).collect();
        let start = tokio::time::Instant::now();
        let mut peers = Vec::new();
        let mut skew_ms = Vec::new();
        for addr in &addrs {
            let skew = Arc::new(AtomicU64::new(0));
            let clock_skew = skew.clone();
            let net = net.clone();
            let builder = Counter::peer()
                .in_memory()
                .listen(addr.clone())
                .bootstrap_members(addrs.clone())
                .tick(Duration::from_millis(10))
                .transport(move |id, inbox| Arc::new(net.endpoint(id, inbox)))
                .wall_clock(move || {
                    EPOCH_MS
                        + start.elapsed().as_millis() as u64
                        + clock_skew.load(Ordering::SeqCst)
                });
            peers.push(configure(builder).start().await.expect("peer starts"));
            skew_ms.push(skew);
        }
        let c = Cluster { peers, skew_ms };
        c.leader().await;
        c
    }

    /// The peer that leads in the highest term any peer leads in (a deposed
    /// leader that has not heard of its successor yet leads in a lower one).
    async fn leader(&self) -> usize {
        let deadline = real_deadline();
        loop {
            if let Some((i, _)) = self
                .peers
                .iter()
                .map(|p| p.status())
                .enumerate()
                .filter(|(_, s)| s.role == Role::Leader)
                .max_by_key(|(_, s)| s.term)
            {
                return i;
            }
            assert!(std::time::Instant::now() < deadline, "no leader");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until peer `at` leads, moving leadership to it (thesis §3.10)
    /// if another peer was elected.
    async fn lead_from(&self, at: usize) {
        let deadline = real_deadline();
        let target = self.peers[at].id();
        while self.peers[at].status().role != Role::Leader {
            assert!(
                std::time::Instant::now() < deadline,
                "{} never led again",
                self.peers[at].name()
            );
            let now = self.leader().await;
            if now != at {
                // Refused if that leader was deposed meanwhile: asked again.
                let _ = self.peers[now].transfer_leadership(target).await;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Runs `call` on peer `at` as a session client would: a `NotLeader`
    /// answer (the command did not enter the log, or another leader's entry
    /// replaced it: nothing was applied) is retried, with the same
    /// arguments, once `at` leads again (see the module documentation).
    /// Leadership is moved back to `at` rather than followed, so that every
    /// write is still stamped by the peer the test chose.
    async fn on<T, F, Fut>(&self, at: usize, mut call: F) -> Result<T, Error>
    where
        F: FnMut(Peer<Counter>) -> Fut,
        Fut: std::future::Future<Output = Result<T, Error>>,
    {
        let deadline = real_deadline();
        loop {
            match call(self.peers[at].clone()).await {
                Err(Error::NotLeader { .. }) if std::time::Instant::now() < deadline => {
                    self.lead_from(at).await;
                }
                other => return other,
            }
        }
    }

    /// Waits until every peer applied everything any peer knows committed
    /// (which covers every write that returned: a peer publishes its commit
    /// index before it answers a write), whoever leads now.
    async fn settle(&self) {
        let committed = self
            .peers
            .iter()
            .map(|p| p.status().commit)
            .max()
            .unwrap_or(0);
        for p in &self.peers {
            wait_status(p, "applied everything committed", |s| {
                s.applied >= committed
            })
            .await;
        }
    }

    async fn shutdown(self) {
        for p in &self.peers {
            p.shutdown().await.unwrap();
        }
    }
}

/// The status of `p` once it applied everything it has in its log. After a
/// write through `p` returned, `p`'s published last index covers it (the
/// node task publishes before the apply task can answer), so this status
/// reflects the write.
async fn applied_status(p: &Peer<Counter>) -> raftkit::runtime::PeerStatus {
    let target = p.status().last_index;
    wait_status(p, "applied its log", |s| s.applied >= target).await
}

/// How long (in real time) a test waits for a condition before failing.
fn real_deadline() -> std::time::Instant {
    std::time::Instant::now() + Duration::from_secs(30)
}

/// Waits until `p`'s status satisfies `cond`, with a deadline on the real
/// clock (see the module documentation), and returns that status.
async fn wait_status(
    p: &Peer<Counter>,
    what: &str,
    mut cond: impl FnMut(&raftkit::runtime::PeerStatus) -> bool,
) -> raftkit::runtime::PeerStatus {
    let deadline = real_deadline();
    let mut w = p.watch();
    loop {
        // Wakes every 100 ms of virtual time to look at the real clock.
        match tokio::time::timeout(Duration::from_millis(100), w.wait_for(&mut cond)).await {
            Ok(Ok(s)) => return s.clone(),
            Ok(Err(_)) => panic!("{} stopped before it {what}", p.name()),
            Err(_) => assert!(
                std::time::Instant::now() < deadline,
                "{} never {what}: {:?}",
                p.name(),
                p.status()
            ),
        }
    }
}

fn add(key: &str, by: u64) -> Vec<u8> {
    raftkit::state_machine::encode(
        "command",
        &CounterWrite::Add {
            key: key.into(),
            by,
        },
    )
    .unwrap()
}

/// Write `seq` of session `id` (acknowledging everything below `acked`).
async fn write(
    p: &Peer<Counter>,
    id: SessionId,
    seq: u64,
    acked: u64,
    key: &str,
    by: u64,
) -> Result<u64, Error> {
    let out = p
        .write_in_session(
            add(key, by),
            Some(SessionRef {
                id,
                seq,
                acked_below: acked,
            }),
        )
        .await?;
    Ok(
        raftkit::state_machine::decode::<CounterWriteOutput>("output", &out)
            .map(|CounterWriteOutput::Add(v)| v)
            .unwrap(),
    )
}

async fn get(p: &Peer<Counter>, key: &str) -> u64 {
    CounterClient::new(p.clone()).get(key.into()).await.unwrap()
}

/// A call [`Cluster::on`] makes on a peer.
type Call<T> = std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, Error>>>>;

/// Write `seq` of session `id` through whichever peer [`Cluster::on`]
/// passes it.
fn write_on(
    id: SessionId,
    seq: u64,
    acked: u64,
    key: &'static str,
    by: u64,
) -> impl FnMut(Peer<Counter>) -> Call<u64> {
    move |p| Box::pin(async move { write(&p, id, seq, acked, key, by).await })
}

/// Opens a session through whichever peer [`Cluster::on`] passes it.
async fn open_on(p: Peer<Counter>) -> Result<SessionId, Error> {
    p.open_session().await
}

/// Reads `key` through whichever peer [`Cluster::on`] passes it.
fn get_on(key: &'static str) -> impl FnMut(Peer<Counter>) -> Call<u64> {
    move |p| Box::pin(async move { CounterClient::new(p).get(key.into()).await })
}

#[tokio::test(start_paused = true)]
async fn a_write_for_a_session_never_opened_is_refused_and_changes_nothing() {
    let c = Cluster::start(1, |b| b).await;
    let p = &c.peers[0];
    let r = write(p, SessionId(0x5eed), 1, 1, "k", 1).await;
    assert!(matches!(r, Err(Error::SessionExpired(_))), "got {r:?}");
    assert_eq!(get(p, "k").await, 0, "nothing applied");
    assert_eq!(
        applied_status(p).await.sessions,
        0,
        "the write opened no session"
    );
    c.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_retry_after_the_session_expired_is_not_applied_twice() {
    let c = Cluster::start(1, |b| b.session_ttl(Duration::from_secs(60))).await;
    let p = &c.peers[0];
    let victim = p.open_session().await.unwrap();
    assert_eq!(write(p, victim, 1, 1, "k", 5).await.unwrap(), 5);
    // The victim's reply is lost and it stays partitioned for longer than
    // the session's time-to-live, while other clients keep the cluster
    // (and its replicated time) going.
    let other = p.open_session().await.unwrap();
    let mut seq = 0;
    while p.status().session_expiries == 0 {
        assert!(seq < 100, "the victim's session never expired");
        seq += 1;
        tokio::time::sleep(Duration::from_secs(5)).await;
        write(p, other, seq, seq, "other", 1).await.unwrap();
    }
    // The victim retries the same write: refused, not applied again.
    let retry = write(p, victim, 1, 1, "k", 5).await;
    assert!(
        matches!(retry, Err(Error::SessionExpired(_))),
        "got {retry:?}"
    );
    let later = write(p, victim, 2, 1, "k", 5).await;
    assert!(
        matches!(later, Err(Error::SessionExpired(_))),
        "got {later:?}"
    );
    assert_eq!(get(p, "k").await, 5, "applied exactly once");
    c.shutdown().await;
}

/// The start of the clock-jump tests: a three-node cluster, its leader, the
/// victim's session opened on the leader with one write (`k += 5`,
/// sequence number 1) applied under it, then the leader's wall clock
/// stepped two hours ahead (an NTP step, a VM resumed: twice the default
/// session time-to-live), and another client's session opened on it.
async fn a_leader_whose_clock_jumped() -> (Cluster, usize, SessionId, SessionId) {
    let c = Cluster::start(3, |b| b).await;
    let leader = c.leader().await;
    let victim = c.on(leader, open_on).await.unwrap();
    assert_eq!(
        c.on(leader, write_on(victim, 1, 1, "k", 5)).await.unwrap(),
        5
    );
    c.skew_ms[leader].store(2 * HOUR_MS, Ordering::SeqCst);
    let other = c.on(leader, open_on).await.unwrap();
    (c, leader, victim, other)
}

/// The end of the clock-jump tests: once the cluster settled, every peer
/// holds both sessions (the victim's and the other client's) and expired
/// none; the victim's retry of its first write is answered from its
/// session, not applied again, and its next write applies.
async fn the_victims_session_survived(c: &Cluster, leader: usize, victim: SessionId) {
    c.settle().await;
    for q in &c.peers {
        let s = q.status();
        assert_eq!((s.sessions, s.session_expiries), (2, 0), "{}", s.name);
    }
    // The victim's retry is answered from its session, not applied again.
    assert_eq!(
        c.on(leader, write_on(victim, 1, 1, "k", 5)).await.unwrap(),
        5
    );
    assert_eq!(
        c.on(leader, write_on(victim, 2, 2, "k", 5)).await.unwrap(),
        10
    );
    assert_eq!(c.on(leader, get_on("k")).await.unwrap(), 10);
}

#[tokio::test(start_paused = true)]
async fn a_leader_whose_wall_clock_jumps_ahead_does_not_expire_sessions() {
    let (c, leader, victim, other) = a_leader_whose_clock_jumped().await;
    for seq in 1..=200 {
        tokio::time::sleep(Duration::from_millis(5)).await;
        c.on(leader, write_on(other, seq, seq, "other", 1))
            .await
            .unwrap();
    }
    the_victims_session_survived(&c, leader, victim).await;
    c.shutdown().await;
}

/// The same clock step, but the leader loses leadership half-way through
/// (as it does when a stalled node misses its heartbeats) and wins it back:
/// its writes meet `NotLeader`, are retried under their sessions, and its
/// new term's stamps start from replicated time again, not from its wall
/// clock.
#[tokio::test(start_paused = true)]
async fn a_jumped_clock_leader_that_loses_and_regains_leadership_expires_no_sessions() {
    let (c, leader, victim, other) = a_leader_whose_clock_jumped().await;
    let term = c.peers[leader].status().term;
    for seq in 1..=200 {
        tokio::time::sleep(Duration::from_millis(5)).await;
        if seq == 50 {
            let to = c.peers[(leader + 1) % c.peers.len()].id();
            c.on(leader, |p| async move { p.transfer_leadership(to).await })
                .await
                .unwrap();
        }
        c.on(leader, write_on(other, seq, seq, "other", 1))
            .await
            .unwrap();
    }
    assert!(
        c.peers[leader].status().term > term + 1,
        "leadership left and came back"
    );
    the_victims_session_survived(&c, leader, victim).await;
    assert_eq!(c.on(leader, get_on("other")).await.unwrap(), 200);
    c.shutdown().await;
}

/// A leader that lost leadership and won it back stamps its new term's
/// entries from a clock of that term: replicated time runs on and idle
/// sessions still expire (teeth round 6, mutant 605: the stamp clock of
/// its earlier term was taken for the new term's, under which the leader
/// stamped nothing; replicated time stopped and no session expired again).
#[tokio::test(start_paused = true)]
async fn sessions_still_expire_once_the_leader_lost_and_regained_leadership() {
    let c = Cluster::start(3, |b| b.session_ttl(Duration::from_secs(60))).await;
    let leader = c.leader().await;
    let victim = c.on(leader, open_on).await.unwrap();
    assert_eq!(
        c.on(leader, write_on(victim, 1, 1, "k", 5)).await.unwrap(),
        5
    );
    let term = c.peers[leader].status().term;
    let to = c.peers[(leader + 1) % c.peers.len()].id();
    c.on(leader, |p| async move { p.transfer_leadership(to).await })
        .await
        .unwrap();
    c.lead_from(leader).await;
    assert!(
        c.peers[leader].status().term > term + 1,
        "leadership left and came back"
    );
    // Another client keeps the cluster going for longer than the victim's
    // time-to-live, through the leader in its new term.
    let other = c.on(leader, open_on).await.unwrap();
    let mut seq = 0;
    while c.peers[leader].status().session_expiries == 0 {
        assert!(
            seq < 100,
            "replicated time stopped: the victim's session never expired"
        );
        seq += 1;
        tokio::time::sleep(Duration::from_secs(5)).await;
        c.on(leader, write_on(other, seq, seq, "other", 1))
            .await
            .unwrap();
    }
    let late = c.on(leader, write_on(victim, 2, 2, "k", 5)).await;
    assert!(
        matches!(late, Err(Error::SessionExpired(_))),
        "got {late:?}"
    );
    assert_eq!(c.on(leader, get_on("k")).await.unwrap(), 5);
    c.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn the_session_table_stays_bounded_and_evicts_the_longest_idle_first() {
    let c = Cluster::start(3, |b| b.max_sessions(4)).await;
    let p = c.leader().await;
    let busy = c.on(p, open_on).await.unwrap();
    let mut busy_seq = 1;
    c.on(p, write_on(busy, busy_seq, busy_seq, "busy", 1))
        .await
        .unwrap();
    let mut idle = Vec::new();
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(5)).await;
        let s = c.on(p, open_on).await.unwrap();
        c.on(p, write_on(s, 1, 1, "idle", 1)).await.unwrap();
        idle.push(s);
        tokio::time::sleep(Duration::from_millis(5)).await;
        busy_seq += 1;
        c.on(p, write_on(busy, busy_seq, busy_seq, "busy", 1))
            .await
            .unwrap();
    }
    c.settle().await;
    for q in &c.peers {
        let s = q.status();
        assert_eq!(s.sessions, 4, "{} holds {} sessions", s.name, s.sessions);
        assert_eq!(s.session_evictions, 7, "{}", s.name);
    }
    // The busy session survived; the longest idle ones were evicted.
    busy_seq += 1;
    assert_eq!(
        c.on(p, write_on(busy, busy_seq, busy_seq, "busy", 1))
            .await
            .unwrap(),
        12
    );
    let evicted = c.on(p, write_on(idle[0], 2, 2, "idle", 1)).await;
    assert!(
        matches!(evicted, Err(Error::SessionExpired(_))),
        "{evicted:?}"
    );
    assert_eq!(
        c.on(p, write_on(idle[9], 2, 2, "idle", 1)).await.unwrap(),
        11
    );
    c.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn acknowledgements_shrink_the_stored_replies_to_what_is_in_flight() {
    let c = Cluster::start(1, |b| b).await;
    let p = &c.peers[0];
    // A client that acknowledges every answer: one reply stored at most.
    let acking = p.open_session().await.unwrap();
    for seq in 1..=100 {
        write(p, acking, seq, seq, "a", 1).await.unwrap();
    }
    let s = applied_status(p).await;
    assert!(
        s.session_replies <= 1,
        "{} replies stored",
        s.session_replies
    );
    // One that acknowledges nothing keeps every reply, until it does.
    let silent = p.open_session().await.unwrap();
    for seq in 1..=100 {
        write(p, silent, seq, 1, "s", 1).await.unwrap();
    }
    assert!(applied_status(p).await.session_replies >= 100);
    assert_eq!(write(p, silent, 101, 101, "s", 1).await.unwrap(), 101);
    let s = applied_status(p).await;
    assert!(
        s.session_replies <= 2,
        "{} replies stored",
        s.session_replies
    );
    // A stale duplicate below the acknowledgement is refused, not applied;
    // an earlier attempt of it was applied and answered, so the error says
    // the outcome is unknown, never that it was not applied.
    let stale = write(p, silent, 50, 1, "s", 1).await;
    assert!(matches!(stale, Err(Error::Ambiguous(_))), "got {stale:?}");
    assert_eq!(stale.unwrap_err().applied(), raftkit::error::Applied::Maybe);
    assert_eq!(get(p, "s").await, 101);
    // Closing drops the session and its replies.
    p.close_session(silent).await.unwrap();
    p.close_session(acking).await.unwrap();
    let s = applied_status(p).await;
    assert_eq!((s.sessions, s.session_replies), (0, 0));
    let closed = write(p, silent, 102, 102, "s", 1).await;
    assert!(
        matches!(closed, Err(Error::SessionExpired(_))),
        "{closed:?}"
    );
    c.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn session_ids_are_128_random_bits() {
    let c = Cluster::start(1, |b| b).await;
    let p = &c.peers[0];
    let mut ids = Vec::new();
    for _ in 0..64 {
        ids.push(p.open_session().await.unwrap().0);
    }
    let distinct: std::collections::BTreeSet<u128> = ids.iter().copied().collect();
    assert_eq!(distinct.len(), ids.len());
    // Each of the 128 bits is set in some id and clear in another (a bit
    // stuck over 64 random ids has probability 2^-63).
    let any = ids.iter().fold(0u128, |a, b| a | b);
    let all = ids.iter().fold(u128::MAX, |a, b| a & b);
    assert_eq!((any, all), (u128::MAX, 0), "ids {ids:x?}");
    // Not a counter: consecutive ids differ in about half their bits.
    let flips: u32 = ids.windows(2).map(|w| (w[0] ^ w[1]).count_ones()).sum();
    let mean = flips as f64 / (ids.len() - 1) as f64;
    assert!((44.0..84.0).contains(&mean), "mean bit flips {mean}");
    c.shutdown().await;
}

/// Review s57 finding 2: a session that acknowledges nothing kept up to
/// 4096 replies whatever their bytes, on every replica. With a byte bound
/// on the builder, its writes past the bound are refused `Overloaded`
/// (not applied: the counter does not count them) on the leader, and
/// every replica's table holds the same replies, within the bound
/// (`runtime::session` rule 9).
#[tokio::test(start_paused = true)]
async fn a_session_past_its_reply_byte_bound_is_refused_not_applied_on_every_replica() {
    const BOUND: u64 = 640;
    let c = Cluster::start(3, |b| b.max_reply_bytes_per_session(BOUND)).await;
    let p = c.leader().await;
    let s = c.on(p, open_on).await.unwrap();
    let (mut applied, mut refused) = (0, 0);
    for seq in 1..=30 {
        match c.on(p, write_on(s, seq, 1, "b", 1)).await {
            Ok(v) => {
                assert_eq!(refused, 0, "write {seq} applied after a refusal");
                applied += 1;
                assert_eq!(v, applied);
            }
            Err(e) => {
                assert!(matches!(e, Error::Overloaded), "write {seq}: {e:?}");
                assert_eq!(e.applied(), raftkit::error::Applied::No);
                refused += 1;
            }
        }
    }
    assert!(
        applied > 0 && refused > 0,
        "{applied} applied, {refused} refused"
    );
    c.settle().await;
    for q in &c.peers {
        let st = q.status();
        assert_eq!(st.session_replies, applied as usize, "{}", st.name);
        assert!(
            st.session_replies as u64 * raftkit::runtime::session::REPLY_OVERHEAD_BYTES <= BOUND,
            "{}: {} replies",
            st.name,
            st.session_replies
        );
    }
    assert_eq!(c.on(p, get_on("b")).await.unwrap(), applied);
    c.shutdown().await;
}

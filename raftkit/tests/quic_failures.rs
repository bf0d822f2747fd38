//! Every storage fault class against a live 3-node cluster: real peers over
//! QUIC on loopback, real WAL files in temp dirs, each node on a
//! fault-injecting file system ([`FaultyFs`]) that starts healthy. A fault is
//! injected into the leader's disk while a client writes:
//!
//! - a fatal fault (ENOSPC, EIO on write / fsync / rename / directory fsync,
//!   a short write) stops the node cleanly, with the error in its status
//!   (and its status report on the wire); the client fails over to the new
//!   leader; no acknowledged write is lost; `shutdown` reports the error; a
//!   restart on a healthy disk recovers and, made leader, serves every
//!   acknowledged write;
//! - a hanging write slows the node down and nothing fails.
//!
//! Also: the maximum command size over QUIC (an entry never outgrows a
//! transport frame).

mod support;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use support::{DevCluster, member_builder};

use raftkit::client::ClientOptions;
use raftkit::core::Role;
use raftkit::error::Applied;
use raftkit::prelude::*;
use raftkit::storage::vfs::{Fault, FaultRule, FaultyFs, FileOp};
use raftkit::tls::Identity;
use tokio::time::Instant;

#[derive(StateMachine, Default, Serialize, Deserialize)]
#[raftkit(name = "kv")]
pub struct Kv {
    map: BTreeMap<String, String>,
}

#[raftkit::state_machine]
impl Kv {
    #[write]
    fn put(&mut self, key: String, value: String) -> Option<String> {
        self.map.insert(key, value)
    }

    #[read]
    fn get(&self, key: String) -> Option<String> {
        self.map.get(&key).cloned()
    }
}

const TICK: Duration = Duration::from_millis(20);
/// The call timeout of the clients of the tests that fail a leader's disk:
/// a client that waits it out on the failed leader (the defect) is told
/// apart from a loaded machine by 10 s or more.
const FAILED_LEADER_WAIT: Duration = Duration::from_secs(30);
/// Small segments: a rename and directory fsyncs every few writes.
const SEGMENT: u64 = 16 << 10;

struct Cluster {
    dir: tempfile::TempDir,
    addrs: Vec<String>,
    peers: Vec<Option<Peer<Kv>>>,
    fs: Vec<FaultyFs>,
    client_identity: Identity,
}

impl Cluster {
    async fn start() -> Cluster {
        Self::start_with(TICK).await
    }

    async fn start_with(tick: Duration) -> Cluster {
        let DevCluster {
            addrs,
            ids,
            client: client_identity,
            dir,
            ..
        } = DevCluster::new(3);
        let mut peers = Vec::new();
        let mut fss = Vec::new();
        for (addr, id) in addrs.iter().zip(ids) {
            let fs = FaultyFs::over_real();
            let peer = member_builder::<Kv>(dir.path(), &addrs, addr, id, tick)
                .wal_segment_bytes(SEGMENT)
                .file_system(Arc::new(fs.clone()))
                .start()
                .await
                .expect("peer starts");
            peers.push(Some(peer));
            fss.push(fs);
        }
        Cluster {
            dir,
            addrs,
            peers,
            fs: fss,
            client_identity,
        }
    }

    /// Restarts node `i` from its data directory on a healthy disk.
    async fn restart(&mut self, i: usize) {
        let fs = FaultyFs::over_real();
        let peer = Kv::peer()
            .data_dir(self.dir.path().join(&self.addrs[i]))
            .tick(TICK)
            .wal_segment_bytes(SEGMENT)
            .file_system(Arc::new(fs.clone()))
            .start()
            .await
            .expect("peer restarts on a healthy disk");
        self.peers[i] = Some(peer);
        self.fs[i] = fs;
    }

    fn peer(&self, i: usize) -> &Peer<Kv> {
        self.peers[i].as_ref().expect("running")
    }

    async fn leader(&self, among: &[usize]) -> usize {
        self.leader_within(among, Duration::from_secs(15)).await
    }

    async fn leader_within(&self, among: &[usize], within: Duration) -> usize {
        let deadline = Instant::now() + within;
        loop {
            let leaders: Vec<usize> = among
                .iter()
                .copied()
                .filter(|&i| {
                    self.peers[i]
                        .as_ref()
                        .is_some_and(|p| p.status().role == Role::Leader)
                })
                .collect();
            if let [one] = leaders.as_slice() {
                return *one;
            }
            assert!(Instant::now() < deadline, "no single leader in time");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn client(&self) -> KvClient {
        self.client_with(ClientOptions::default()).await
    }

    async fn client_with(&self, opts: ClientOptions) -> KvClient {
        KvClient::connect_with(&self.addrs, self.client_identity.clone(), opts)
            .await
            .expect("client connects")
    }

    async fn shutdown(mut self) {
        for p in self.peers.iter_mut() {
            if let Some(p) = p.take() {
                let _ = p.shutdown().await;
            }
        }
    }
}

/// Writes `from..to` through `client`; returns the keys acknowledged. A
/// write that failed must not claim it was applied.
async fn write(client: &KvClient, from: usize, to: usize, value: &str) -> Vec<String> {
    let mut acked = Vec::new();
    for i in from..to {
        let key = format!("k{i:04}");
        match client.put(key.clone(), value.to_string()).await {
            Ok(_) => acked.push(key),
            Err(e) => assert_ne!(e.applied(), Applied::Yes, "{e}"),
        }
    }
    acked
}

async fn wait_for<T>(what: &str, secs: u64, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// One fatal fault class on the leader's disk, start to finish.
async fn fatal_fault_on_the_leader(rule: FaultRule, expect: &[&str]) {
    let mut c = Cluster::start().await;
    // A call timeout far past the bounds below: a client that waits it out
    // on the failed leader (the defect) takes 30 s, and a correct run has
    // 20 s however loaded the machine (the default 10 s left 2 s of room).
    let client = c
        .client_with(ClientOptions::default().with_timeout(FAILED_LEADER_WAIT))
        .await;
    let value = "v".repeat(1024);
    let mut acked = write(&client, 0, 10, &value).await;
    assert_eq!(acked.len(), 10);
    let l = c.leader(&[0, 1, 2]).await;
    c.fs[l].inject(rule.clone());

    // Writes go on: the leader fails, the client fails over at once (the
    // failed leader answers every caller; the client does not wait for a
    // timeout, nor keep it as the leader).
    let t = Instant::now();
    acked.extend(write(&client, 10, 60, &value).await);
    let took = t.elapsed();
    eprintln!("{rule:?}: 50 writes across the failure took {took:?}");
    // 50 fsync'd writes on two nodes and an election (1-2 s when idle)
    // can take over 4 s on a loaded machine, with two such tests sharing
    // the disk. A client that waited out its timeout (30 s here) on the
    // failed leader, the defect, still fails it.
    assert!(
        took < FAILED_LEADER_WAIT - Duration::from_secs(10),
        "{rule:?}: failing over took {took:?}"
    );
    let fatal = wait_for("the failure in the leader's status", 15, || {
        c.peer(l).status().fatal
    })
    .await;
    assert!(
        expect.iter().any(|e| fatal.contains(e)),
        "{rule:?}: status says {fatal:?}"
    );
    assert!(c.fs[l].fired() > 0);
    // The status report on the wire says so too.
    let report = raftkit::client::Client::connect_with(
        &c.addrs,
        c.client_identity.clone(),
        0,
        ClientOptions::default(),
    )
    .await
    .unwrap()
    .status_of(&c.addrs[l])
    .await
    .unwrap();
    assert_eq!(report.fatal.as_deref(), Some(fatal.as_str()));
    let rest: Vec<usize> = (0..3).filter(|&i| i != l).collect();
    let new = c.leader(&rest).await;
    acked.extend(write(&client, 60, 80, &value).await);
    // At most the write in flight when the disk failed is lost to the
    // caller (and never as "applied": see `write`); the client retries the
    // others on the new leader instead of the failed node.
    assert!(
        acked.len() >= 79,
        "{rule:?}: the client did not fail over ({} of 80 acknowledged)",
        acked.len()
    );
    for key in &acked {
        assert_eq!(
            client.get(key.clone()).await.unwrap().as_ref(),
            Some(&value)
        );
    }

    // The failed node reports the failure on shutdown; a restart on a
    // healthy disk recovers, catches up, and can lead with every write.
    let failed = c.peers[l].take().unwrap();
    let r = failed.shutdown().await;
    assert!(matches!(r, Err(Error::Storage(_))), "shutdown said {r:?}");
    drop(failed);
    c.restart(l).await;
    let commit = c.peer(new).status().commit;
    let mut w = c.peer(l).watch();
    tokio::time::timeout(Duration::from_secs(15), w.wait_for(|s| s.applied >= commit))
        .await
        .expect("the restarted node catches up")
        .unwrap();
    assert!(c.peer(l).status().fatal.is_none());
    let target = c.peer(l).id();
    let deadline = Instant::now() + Duration::from_secs(15);
    while c.peer(l).status().role != Role::Leader {
        assert!(Instant::now() < deadline, "the restarted node never led");
        let leader = c.leader(&[0, 1, 2]).await;
        if leader != l {
            let _ = c.peer(leader).transfer_leadership(target).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for key in &acked {
        assert_eq!(
            client.get(key.clone()).await.unwrap().as_ref(),
            Some(&value),
            "{rule:?}: acknowledged write {key} lost"
        );
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enospc_on_a_log_write_stops_the_leader_cleanly() {
    fatal_fault_on_the_leader(
        FaultRule::new(FileOp::Write, Fault::NoSpace).on(".wal"),
        &["storage full", "No space left"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eio_on_a_log_write_stops_the_leader_cleanly() {
    fatal_fault_on_the_leader(
        FaultRule::new(FileOp::Write, Fault::Io).on(".wal"),
        &["Input/output error", "input/output error"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eio_on_fsync_stops_the_leader_cleanly() {
    fatal_fault_on_the_leader(
        FaultRule::new(FileOp::Fsync, Fault::Io).on(".wal"),
        &["fsync"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_write_stops_the_leader_cleanly() {
    fatal_fault_on_the_leader(
        FaultRule::new(FileOp::Write, Fault::ShortWrite { bytes: 100 }).on(".wal"),
        &["storage full"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eio_on_a_segment_rename_stops_the_leader_cleanly() {
    fatal_fault_on_the_leader(
        FaultRule::new(FileOp::Rename, Fault::Io).on(".wal"),
        &["rename segment"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eio_on_a_directory_fsync_stops_the_leader_cleanly() {
    fatal_fault_on_the_leader(
        FaultRule::new(FileOp::SyncDir, Fault::Io).on("wal"),
        &["fsync directory"],
    )
    .await;
}

/// A leader whose log fsync fails hands leadership over at once instead of
/// leaving the cluster to notice its silence (DESIGN §6: "a node whose
/// storage failed acknowledges nothing more"; the cluster stays
/// available): it sends `TimeoutNow` (thesis §3.10) to the voter that
/// acknowledged the most of its log, steps down, and never campaigns
/// again; that voter is elected within a round trip or two, not after an
/// election timeout. With 500 ms ticks the followers' own election timeout
/// is 5-10 s and the last heartbeat came at most 1 s before the failure,
/// so a cluster that only times out elects no one within 4 s. (The ticks
/// were 200 ms and the bound 1.2 s of the 1.6 s: a correct run had no
/// room for one stall of a CI machine running every test binary at once.)
///
/// Before (s61): the failed leader stopped ticking and stepping but kept
/// its role; the new leader came only after the followers' election
/// timeout, and the failed node's status said `Leader` for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_fsync_fails_hands_leadership_over_at_once() {
    const SLOW_TICK: Duration = Duration::from_millis(500);
    /// Under the 4 s a cluster that only times out needs; 3 s more than a
    /// handover takes on an idle machine.
    const HANDOVER: Duration = Duration::from_millis(3000);
    let c = Cluster::start_with(SLOW_TICK).await;
    // The first election takes 5-10 s with these ticks (more after a split
    // vote): wait for it past the client's first calls' timeout.
    c.leader_within(&[0, 1, 2], Duration::from_secs(60)).await;
    let client = c
        .client_with(ClientOptions::default().with_timeout(FAILED_LEADER_WAIT))
        .await;
    let value = "v".repeat(64);
    let acked = write(&client, 0, 5, &value).await;
    assert_eq!(acked.len(), 5);
    let l = c.leader(&[0, 1, 2]).await;
    let rest: Vec<usize> = (0..3).filter(|&i| i != l).collect();
    let old_term = c.peer(l).status().term;
    c.fs[l].inject(FaultRule::new(FileOp::Fsync, Fault::Io).on(".wal"));
    let mut failed = c.peer(l).watch();
    // The write that meets the failure, and the failover timed from the
    // moment the failed leader's status shows it.
    let during = client.put("during".into(), value.clone());
    let failover = async {
        tokio::time::timeout(
            Duration::from_secs(10),
            failed.wait_for(|s| s.fatal.is_some()),
        )
        .await
        .expect("the leader's fsync failed")
        .expect("status watch");
        let failed_at = Instant::now();
        let deadline = failed_at + Duration::from_secs(15);
        let new = loop {
            if let Some(&i) = rest.iter().find(|&&i| {
                let s = c.peer(i).status();
                s.role == Role::Leader && s.term > old_term
            }) {
                break i;
            }
            assert!(Instant::now() < deadline, "no new leader in 15 s");
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        (new, failed_at.elapsed())
    };
    let (outcome, (new, took)) = tokio::join!(during, failover);
    eprintln!("new leader {new} {took:?} after the leader's storage failed");
    let role = c.peer(l).status().role;
    assert!(
        took < HANDOVER && role != Role::Leader,
        "the failed leader did not hand over: a new leader came {took:?} after the failure \
         (an election timeout is 5-10 s), and the failed node's role is {role:?}"
    );
    // The write in flight either succeeded (retried on the new leader, once)
    // or says truthfully that it may have been applied; never "applied".
    if let Err(e) = &outcome {
        assert_ne!(e.applied(), Applied::Yes, "{e}");
    }
    // The failed node never acknowledges again, nor leads again.
    let t = Instant::now();
    let more = write(&client, 5, 25, &value).await;
    assert_eq!(more.len(), 20, "writes failed after the handover");
    // A write sent to the failed node waits out the client's timeout (30
    // s): 20 s leaves a loaded machine room (it was 8 s of a 10 s timeout).
    assert!(
        t.elapsed() < FAILED_LEADER_WAIT - Duration::from_secs(10),
        "writes after the handover took {:?}",
        t.elapsed()
    );
    for key in acked.iter().chain(&more) {
        assert_eq!(
            client.get(key.clone()).await.unwrap().as_ref(),
            Some(&value)
        );
    }
    let s = c.peer(l).status();
    assert!(s.fatal.is_some() && s.role != Role::Leader, "{:?}", s.role);
    c.shutdown().await;
}

/// A disk that hangs for a while slows the leader down; nothing fails, no
/// write is lost, and speed comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_disk_slows_the_leader_and_nothing_fails() {
    let c = Cluster::start().await;
    let client = c.client().await;
    let acked = write(&client, 0, 5, "v").await;
    assert_eq!(acked.len(), 5);
    let l = c.leader(&[0, 1, 2]).await;
    c.fs[l].inject(
        FaultRule::new(FileOp::Write, Fault::Hang(Duration::from_millis(1500)))
            .on(".wal")
            .times(2),
    );
    let mut slowest = Duration::ZERO;
    for i in 5..25 {
        let t = Instant::now();
        client
            .put(format!("k{i:04}"), "v".into())
            .await
            .expect("a slow disk fails no write");
        slowest = slowest.max(t.elapsed());
    }
    assert!(
        slowest >= Duration::from_millis(1000),
        "never slowed: {slowest:?}"
    );
    assert_eq!(c.fs[l].fired(), 2);
    // The hang is over: writes are fast again and every node is healthy.
    // 10 s for 10 writes (milliseconds each when idle; it was 3 s, within
    // reach of a loaded CI machine): a disk that still hung 1.5 s a write
    // would take 15 s.
    let t = Instant::now();
    for i in 25..35 {
        client.put(format!("k{i:04}"), "v".into()).await.unwrap();
    }
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "still slow: {:?}",
        t.elapsed()
    );
    for i in 0..3 {
        assert!(c.peer(i).status().fatal.is_none());
    }
    for i in 0..35 {
        assert_eq!(
            client.get(format!("k{i:04}")).await.unwrap().as_deref(),
            Some("v")
        );
    }
    c.shutdown().await;
}

/// A command larger than the maximum command size is refused before it
/// enters the log (and one larger than a frame never leaves the client);
/// the largest allowed command replicates in one frame, and replication
/// goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_command_is_refused_and_replication_goes_on() {
    // Slow elections: an 8 MiB entry takes a while to cross (debug builds,
    // a loaded machine), and heartbeats queue behind it.
    let c = Cluster::start_with(Duration::from_millis(100)).await;
    let l = c.leader(&[0, 1, 2]).await;
    let leader = c.peer(l).clone();
    let local = KvClient::new(leader.clone());
    local.put("a".into(), "1".into()).await.unwrap();

    // Over the frame cap: refused by the peer API at once.
    let huge = "x".repeat(17 << 20);
    // (20 s bounds: 5 s was within reach of a loaded CI machine.)
    let r =
        tokio::time::timeout(Duration::from_secs(20), local.put("h".into(), huge.clone())).await;
    assert!(matches!(r, Ok(Err(Error::Rejected(_)))), "{r:?}");
    // And by the network client, which cannot send it.
    let client = c.client().await;
    let r = client.put("h".into(), huge).await;
    assert!(matches!(r, Err(Error::Rejected(_))), "{r:?}");
    // Over the command limit, under the frame cap: refused by the leader.
    let big = "x".repeat(raftkit::runtime::DEFAULT_MAX_COMMAND_BYTES + 1);
    let r = client.put("b".into(), big).await;
    assert!(
        matches!(r, Err(Error::Rejected(ref m)) if m.contains("maximum command size")),
        "{r:?}"
    );

    // The largest command allowed commits on every node. Sent by a client,
    // which follows a new leader: the leader's own API fails `NotLeader` if
    // leadership moves while the entry crosses, which a loaded machine made
    // happen (s62, two CPU hogs: "called `Result::unwrap()` on an `Err`
    // value: NotLeader { hint: None }" at this put, through `local`).
    let patient = c
        .client_with(ClientOptions::default().with_timeout(Duration::from_secs(60)))
        .await;
    let max = "y".repeat(raftkit::runtime::DEFAULT_MAX_COMMAND_BYTES - 64);
    tokio::time::timeout(Duration::from_secs(60), patient.put("m".into(), max))
        .await
        .expect("the largest command commits")
        .unwrap();
    // The leader that committed it holds the highest commit index.
    let commit = (0..3).map(|i| c.peer(i).status().commit).max().unwrap_or(0);
    for i in 0..3 {
        let mut w = c.peer(i).watch();
        tokio::time::timeout(Duration::from_secs(20), w.wait_for(|s| s.applied >= commit))
            .await
            .expect("every node applies it")
            .unwrap();
    }
    // Later writes are not held up behind anything.
    tokio::time::timeout(Duration::from_secs(20), patient.put("z".into(), "1".into()))
        .await
        .expect("replication goes on")
        .unwrap();
    c.shutdown().await;
}

/// A call whose write reached a leader that then died, and whose retries
/// only ever met a member without a leader, ends saying it may have been
/// applied: the first attempt's fate is unknown, whatever the later
/// answers say (the client remembers that an attempt was sent and lost its
/// answer). The surviving follower's disk hangs, so the write cannot
/// commit before the leader goes and no new leader can be elected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_lost_with_its_leader_ends_maybe_applied_even_after_not_leader_answers() {
    let mut c = Cluster::start().await;
    let l = c.leader(&[0, 1, 2]).await;
    let (f, d) = match l {
        0 => (1, 2),
        1 => (0, 2),
        _ => (0, 1),
    };
    // The client knows only the follower: it reaches the leader by the
    // follower's redirect, and after the leader dies every retry goes to
    // the follower, which answers `NotLeader` (nothing applied) until the
    // deadline.
    let client = KvClient::connect_with(
        std::slice::from_ref(&c.addrs[f]),
        c.client_identity.clone(),
        ClientOptions::default().with_timeout(Duration::from_secs(3)),
    )
    .await
    .expect("client connects");
    assert_eq!(write(&client, 0, 1, "v").await.len(), 1);
    let down = c.peers[d].take().expect("running");
    let _ = down.shutdown().await;
    // The follower's next log write hangs: it acknowledges nothing, and
    // cannot persist a vote for itself either.
    c.fs[f].inject(
        FaultRule::new(FileOp::Write, Fault::Hang(Duration::from_secs(6)))
            .on(".wal")
            .times(1),
    );
    let before = c.peer(l).status().last_index;
    let put = tokio::spawn({
        let client = client.clone();
        async move { client.put("lost".into(), "v".into()).await }
    });
    wait_for("the leader logs the write", 10, || {
        (c.peer(l).status().last_index > before).then_some(())
    })
    .await;
    let leader = c.peers[l].take().expect("running");
    let _ = leader.shutdown().await;
    let err = put
        .await
        .expect("the call's task")
        .expect_err("no leader can commit it");
    assert_ne!(
        err.applied(),
        Applied::No,
        "the write reached a leader that died before answering: {err:?}"
    );
    c.shutdown().await;
}

/// The real client's retry of a write whose leader is lost mid-call (found
/// by review, stop 43: no test ran `Client`'s retries against a member lost
/// while a call was at it, the simulation's `SimClient` reimplements them;
/// a client that gave up on a lost connection, `Transport`, went
/// unnoticed): the leader logs the write and stops before it can commit
/// it; the call itself retries, under the same sequence number, until the
/// survivors elect a leader, and returns the write's one outcome. The
/// write's first attempt cannot commit: one follower is down and the
/// other's log write hangs for a second (it still answers heartbeats, so
/// the leader keeps leading until it stops).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_in_flight_when_its_leader_stops_is_retried_to_its_one_outcome() {
    let mut c = Cluster::start().await;
    let l = c.leader(&[0, 1, 2]).await;
    let (f, d) = match l {
        0 => (1, 2),
        1 => (0, 2),
        _ => (0, 1),
    };
    // The call's deadline covers a leader's shutdown, a restart, an
    // election and the retry on a loaded machine: the default 10 s does
    // not always (CI runs the suite in parallel).
    let client = KvClient::connect_with(
        &c.addrs,
        c.client_identity.clone(),
        ClientOptions::default().with_timeout(Duration::from_secs(30)),
    )
    .await
    .expect("client connects");
    // The session is open and the client knows the leader.
    assert_eq!(write(&client, 0, 1, "v").await.len(), 1);
    let down = c.peers[d].take().expect("running");
    let _ = down.shutdown().await;
    c.fs[f].inject(
        FaultRule::new(FileOp::Write, Fault::Hang(Duration::from_secs(1)))
            .on(".wal")
            .times(1),
    );
    let before = c.peer(l).status().last_index;
    let put = tokio::spawn({
        let client = client.clone();
        async move { client.put("lost".into(), "v".into()).await }
    });
    wait_for("the leader logs the write", 10, || {
        (c.peer(l).status().last_index > before).then_some(())
    })
    .await;
    let leader = c.peers[l].take().expect("running");
    let _ = leader.shutdown().await;
    // The stopped follower comes back: it and the one whose disk hung
    // elect a leader.
    c.restart(d).await;
    let r = put.await.expect("the call's task");
    assert!(
        matches!(r, Ok(None)),
        "a write whose leader stopped mid-call was not retried to its one outcome (want Ok(None), applied once): {r:?}"
    );
    assert_eq!(
        client.get("lost".into()).await.expect("read"),
        Some("v".into())
    );
    c.shutdown().await;
}

/// The value a [`BuggyKv`] `put` panics on.
const UNLUCKY: &str = "unlucky";

/// The same schema as [`Kv`], but a `put` of [`UNLUCKY`] panics under the
/// `halt` policy: the member running this binary halts at that entry while
/// the others apply it.
#[derive(StateMachine, Default, Serialize, Deserialize)]
#[raftkit(name = "kv", on_error = "halt")]
pub struct BuggyKv {
    map: BTreeMap<String, String>,
}

#[raftkit::state_machine]
impl BuggyKv {
    #[write]
    fn put(&mut self, key: String, value: String) -> Option<String> {
        assert!(value != UNLUCKY, "BuggyKv::put panics on purpose");
        self.map.insert(key, value)
    }

    #[read]
    fn get(&self, key: String) -> Option<String> {
        self.map.get(&key).cloned()
    }
}

/// A member that halted (its handler panicked under `halt`) refuses later
/// writes before they reach the log: the answer must say "not applied"
/// (`NotLeader` with the leader's address, since one is known), so that a
/// client may send the write elsewhere; over QUIC a client that knows
/// only the halted member follows the hint and its write succeeds through
/// the leader. (Before: `Halted`, which says "may have been applied", and
/// which the client takes for a member that is down: a client of the
/// halted member alone never reached the leader.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_sent_to_a_halted_member_is_not_applied_and_succeeds_through_the_leader() {
    let cluster = DevCluster::new(3);
    let (addrs, client_identity) = (&cluster.addrs, &cluster.client);
    let mut ids = cluster.ids.clone();
    let buggy_id = ids.pop().expect("three identities");
    let mut good = Vec::new();
    for (addr, id) in addrs.iter().zip(ids) {
        let peer = cluster
            .builder::<Kv>(addr, id, TICK)
            .start()
            .await
            .expect("peer starts");
        good.push(peer);
    }
    let buggy = cluster
        .builder::<BuggyKv>(&addrs[2], buggy_id, TICK)
        .start()
        .await
        .expect("the buggy peer starts");
    let client = KvClient::connect_with(addrs, client_identity.clone(), ClientOptions::default())
        .await
        .expect("client connects");
    client
        .put("a".into(), "1".into())
        .await
        .expect("a first write");
    // Halts the buggy member (leader or not); the good ones apply it (its
    // answer depends on who led; only the halt matters here).
    let _ = client.put("k".into(), UNLUCKY.into()).await;
    let halted = wait_for("the buggy member halts", 15, || buggy.status().halted).await;
    assert!(halted.contains("panics on purpose"), "{halted}");
    // A good member leads, and the halted member knows it (it keeps
    // following the leader's log until restarted).
    let leader = wait_for("the halted member knows the good leader", 15, || {
        let l = good.iter().position(|p| p.status().role == Role::Leader)?;
        let known = buggy.status().leader_addr?;
        (known == addrs[l]).then_some(l)
    })
    .await;

    // In process: refused, not applied, with the leader's address.
    let w = BuggyKvClient::new(buggy.clone())
        .put("b".into(), "2".into())
        .await;
    match &w {
        Err(e @ Error::NotLeader { hint }) => {
            assert_eq!(e.applied(), Applied::No, "{e:?}");
            assert_eq!(hint.as_deref(), Some(addrs[leader].as_str()), "{e:?}");
        }
        other => panic!("a write sent to the halted member got {other:?}"),
    }
    // Over QUIC, from a client that knows only the halted member.
    let of_halted = KvClient::connect_with(
        &addrs[2..],
        client_identity.clone(),
        ClientOptions::default().with_timeout(Duration::from_secs(5)),
    )
    .await
    .expect("a client of the halted member connects");
    let r = of_halted.put("c".into(), "3".into()).await;
    assert!(
        matches!(r, Ok(None)),
        "a write through the halted member got {r:?}"
    );
    let got = client.get("c".into()).await;
    assert_eq!(got, Ok(Some("3".to_string())), "the leader's state");
    for p in good {
        let _ = p.shutdown().await;
    }
    let _ = buggy.shutdown().await;
}

/// When every member halted at the same entry (the handler panics under
/// `halt` on all of them: nobody campaigns again, so no leader is known), a
/// new write from a client with an open session is refused by each member
/// before it is proposed: it must end "not applied" (`Unavailable`) at its
/// deadline, not `Timeout` ("may have been applied") for a write no node
/// ever proposed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_to_a_cluster_whose_every_member_halted_ends_not_applied() {
    let cluster = DevCluster::new(3);
    let (addrs, client_identity) = (&cluster.addrs, cluster.client.clone());
    let mut peers = Vec::new();
    for (addr, id) in addrs.iter().zip(cluster.ids.clone()) {
        let peer = cluster
            .builder::<BuggyKv>(addr, id, TICK)
            .start()
            .await
            .expect("peer starts");
        peers.push(peer);
    }
    // A connect is bounded by the 2 s call timeout, which a loaded machine's
    // handshakes can outlast (s62: "no member answered within the
    // connect's timeout (2s)"): it is tried again (it applies nothing).
    let deadline = Instant::now() + Duration::from_secs(30);
    let client = loop {
        match KvClient::connect_with(
            addrs,
            client_identity.clone(),
            ClientOptions::default().with_timeout(Duration::from_secs(2)),
        )
        .await
        {
            Ok(client) => break client,
            Err(e) => {
                assert!(e.is_retryable(), "client connects: {e:?}");
                assert!(Instant::now() < deadline, "client connects: {e:?}");
            }
        }
        // (A pause before the next try, not a synchronisation.)
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // The session is open.
    client
        .put("a".into(), "1".into())
        .await
        .expect("a first write");
    // Halts every member at this entry (its answer is Halted: Maybe).
    let _ = client.put("k".into(), UNLUCKY.into()).await;
    for p in &peers {
        wait_for("every member halts", 15, || p.status().halted).await;
    }
    let r = client.put("b".into(), "2".into()).await;
    match &r {
        Err(e) => {
            assert_eq!(
                e.applied(),
                Applied::No,
                "a write refused by every (halted) member ended {e:?}"
            );
            // The call ends on the last member's answer when its deadline
            // passes: the old leader's `Unavailable`, or, when a backoff
            // ended just before the deadline on a loaded machine, a halted
            // follower's `NotLeader` (it keeps naming the leader it had).
            // Both are refusals before any proposal.
            assert!(
                matches!(e, Error::Unavailable(_) | Error::NotLeader { .. }),
                "{e:?}"
            );
        }
        other => panic!("a write to a cluster whose every member halted got {other:?}"),
    }
    for p in &peers {
        assert!(p.status().halted.is_some());
    }
    for p in peers {
        let _ = p.shutdown().await;
    }
}

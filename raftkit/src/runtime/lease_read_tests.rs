//! A lease read on a new leader whose apply is backpressured (teeth round
//! 3, the class of round 2's surviving mutant 113).
//!
//! A lease read is served at the leader's commit index (thesis §6.4.1,
//! `reads` module docs): the apply thread answers it once it applied that
//! index. A leader's commit index covers every write an earlier leader
//! acknowledged (it committed an entry of its own term, §6.4 step 1), but
//! what it has *applied* need not: with the apply backlog over
//! [`MAX_APPLY_BACKLOG_BYTES`](super::node::MAX_APPLY_BACKLOG_BYTES) the
//! node task stops handing committed entries to the apply thread, so the
//! core's applied index stays behind its commit index. A read served at the
//! applied index would then miss a write the old leader acknowledged: not
//! linearizable.
//!
//! The test builds exactly that state, with no timing left to chance:
//! node B's apply thread (and only B's: the threads are named per node)
//! blocks in a handler until the test opens a gate; 32 MiB of commands
//! (1 MiB each) behind it pause B's core, and the leader A acknowledges
//! `add(1)`, which B holds but was paused before it could hand it to its
//! apply thread (the network holds back the heartbeats that would have
//! paused B before `add(1)` reached it: a paused follower takes in no new
//! entries, see `core::replication`); the leadership moves to B, and B serves a lease read with its apply still
//! blocked. The read is dispatched before the gate opens (a command to B
//! queued behind it is answered first) and is known to have taken the
//! lease path (its trace event); only then the gate opens. The read must
//! see the write. The same held follower B also serves, before the
//! transfer, a linearizable read (it must wait until B applied its read
//! index, so it sees `add(1)`) and a stale read (it must report B's applied
//! index, not the leader's commit index).
//!
//! A second test covers the tick clock (`reads` module docs): a leader
//! whose ticks were withheld (its group quiescent, `tick_gate`) wakes on a
//! lease read and must judge its lease on the clock caught up to now, not
//! on the tick count it stopped at (teeth, stop 43: deleting the
//! `catch_up_ticks` before `lease_read` in `serve_weak_read` went
//! unnoticed).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::node::MAX_APPLY_BACKLOG_BYTES;
use super::test_gate::{ApplyGate, apply_threads_named_after, lead_by, until};
use crate::client::Consistency;
use crate::core::Role;
use crate::prelude::*;
use crate::transport::memory::MemoryNetwork;

#[derive(StateMachine, Default, Serialize, Deserialize)]
struct Ledger {
    n: u64,
    padded: u64,
}

/// Holds B's apply thread (module docs).
static GATE: ApplyGate = ApplyGate::new();

#[crate::state_machine]
impl Ledger {
    /// Blocks the gated node's apply thread until the gate opens; returns
    /// at once everywhere else.
    #[write]
    fn hold(&mut self) -> u64 {
        GATE.hold_if_gated();
        self.n
    }

    /// A large command (it fills the apply backlog).
    #[write]
    fn pad(&mut self, bytes: Vec<u8>) -> u64 {
        self.padded += bytes.len() as u64;
        self.padded
    }

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

/// The captured trace output (lease reads are `trace` events).
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    /// Lease reads `needle` (a node's name) served.
    fn count(&self, needle: &str) -> usize {
        self.events("lease read", needle)
    }

    /// Events `event` of node `needle`.
    fn events(&self, event: &str, needle: &str) -> usize {
        let bytes = self.0.lock().unwrap_or_else(|p| p.into_inner()).clone();
        String::from_utf8_lossy(&bytes)
            .lines()
            .filter(|l| l.contains(event) && l.contains(needle))
            .count()
    }
}

/// Captures the `runtime::reads` trace events (lease reads) of every task
/// on this thread until the guard is dropped.
fn capture_read_traces() -> (Captured, tracing::subscriber::DefaultGuard) {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(
            "raftkit::runtime::reads=trace",
        ))
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    (captured, tracing::subscriber::set_default(subscriber))
}

const ADDRS: [&str; 3] = ["lease-a:1", "lease-b:1", "lease-c:1"];

/// Awaits `step` for at most 20 s, panicking with `what` after that: a
/// deliberate bug that leaves a write, a read or a shutdown unanswered
/// fails these tests within seconds instead of hanging the suite (teeth,
/// stop 54: with apply.rs's `*i > applied` -> `>=` in `serve_reads`, the
/// tick-clock test waited for ever on its set-up's lease read).
async fn within<T>(what: &str, step: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(Duration::from_secs(20), step).await {
        Ok(out) => out,
        Err(_) => panic!("{what}: not answered within 20 s"),
    }
}

async fn start(net: &MemoryNetwork, addr: &str) -> Peer<Ledger> {
    let net = net.clone();
    Ledger::peer()
        .in_memory()
        .listen(addr)
        .bootstrap_members(ADDRS)
        // Elections take 0.5–1 s: the 35 MiB of padding, copied through
        // one thread with the machine busy, must not look like a dead
        // leader (the test waits on conditions, not on the tick).
        .tick(Duration::from_millis(50))
        .threads(apply_threads_named_after(addr))
        .transport(move |id, inbox| Arc::new(net.endpoint(id, inbox)))
        .start()
        .await
        .expect("peer starts")
}

/// See the module docs.
#[tokio::test(flavor = "current_thread")]
async fn a_lease_read_on_a_new_leader_with_a_paused_apply_sees_the_old_leaders_write() {
    // Every task of the cluster runs on this (current-thread) runtime's
    // thread: the subscriber sees the node tasks' events.
    let (captured, _trace) = capture_read_traces();
    let _open = GATE.open_on_drop();

    let net = MemoryNetwork::new(7);
    let mut peers = Vec::new();
    for addr in ADDRS {
        peers.push(start(&net, addr).await);
    }
    let a = until("a leader", || {
        peers.iter().position(|p| p.status().role == Role::Leader)
    })
    .await;
    let b = (a + 1) % 3;
    let b_name = peers[b].status().name;
    GATE.hold_thread_of(ADDRS[b]);

    // B's apply thread blocks on `hold`; A and C apply it.
    within("the hold write", peers[a].write(LedgerWrite::Hold))
        .await
        .expect("hold");
    within("B's apply thread entering the gate", GATE.wait_entered()).await;
    // 32 MiB committed behind B's blocked apply thread pause B's core
    // (the backlog bound): it hands no more committed entries to the apply
    // thread, and, a follower, takes in no entry past its log (flow
    // control, `core::replication`). So `add(1)` must be in B's log before
    // the pause sets in, yet committed after it: the pause comes with the
    // append that carries `add(1)` and, in its commit index, the padding's
    // last command. Until then heartbeats to B that would tell it that
    // command committed are held back (the network's observer), and the
    // leader sends B nothing else (no other writes). In 1 MiB commands:
    // one 7 MiB entry stalled this one-thread runtime long enough, with
    // the machine saturated, for a follower to time out its leader.
    let b_id = peers[b].id();
    let cap = Arc::new(AtomicU64::new(u64::MAX));
    net.observe({
        let cap = Arc::clone(&cap);
        Arc::new(move |_, m: &crate::core::Message, _| {
            !(m.to == b_id
                && matches!(m.body, crate::core::Body::Heartbeat { commit, .. }
                    if commit > cap.load(Ordering::SeqCst)))
        })
    });
    let pads = MAX_APPLY_BACKLOG_BYTES >> 20;
    let mut last_pad = 0;
    for i in 0..pads {
        if i + 1 == pads {
            // B learns the last padding committed only with `add(1)`.
            until("B knows the padding before the last committed", || {
                (peers[b].status().commit >= last_pad).then_some(())
            })
            .await;
            cap.store(last_pad, Ordering::SeqCst);
        }
        within(
            "a padding write",
            peers[a].write(LedgerWrite::Pad {
                bytes: vec![7u8; 1 << 20],
            }),
        )
        .await
        .expect("pad");
        last_pad = peers[a].status().commit;
    }
    assert!(
        peers[b].status().commit < last_pad,
        "premise: B does not know the last padding committed"
    );
    // The write the old leader acknowledges.
    assert!(matches!(
        within(
            "the old leader's add(1)",
            peers[a].write(LedgerWrite::Add { by: 1 })
        )
        .await
        .expect("add"),
        LedgerWriteOutput::Add(1)
    ));
    cap.store(u64::MAX, Ordering::SeqCst);
    // The write's index: A answered it once committed and applied, and
    // wrote nothing after it (its applied index, published lazily, may
    // still show the padding).
    let written = peers[a].status().commit;
    until("B knows the write committed", || {
        (peers[b].status().commit >= written).then_some(())
    })
    .await;
    // What B handed its blocked apply thread is past the bound by at most
    // a batch; the rest waits in B's log (teeth round 11: a node that
    // never paused survived, its backlog growing with the log).
    let backlog = peers[b].status().apply_backlog_bytes;
    assert!(
        backlog > (MAX_APPLY_BACKLOG_BYTES as u64)
            && backlog <= (MAX_APPLY_BACKLOG_BYTES as u64) + (4 << 20),
        "B's apply backlog is {backlog} bytes"
    );
    assert!(peers[b].status().applied < written, "B's apply is held");

    // Two reads on B while it follows with its apply held (teeth, stop 44:
    // serving ReadIndex reads at index 0, and a stale read reporting the
    // leader's commit as its applied index, went unnoticed by the runtime
    // tests). A linearizable read waits until B applied its read index,
    // the leader's commit index once the read arrived (thesis §6.4.1), so
    // it sees add(1); a stale read is served where B's apply stands and
    // says so. Each runs as its own task; the test goes on once B's node
    // task handled both: the linearizable read has its read index, the
    // stale read was handed to the apply thread (its trace event).
    let rounds = peers[b].status().read_index_latency.count;
    let stale_before = captured.events("stale read", &b_name);
    let follower = peers[b].clone();
    let linearizable = tokio::spawn(async move {
        follower
            .read_with(LedgerRead::Get, Consistency::Linearizable)
            .await
    });
    let follower = peers[b].clone();
    let stale = tokio::spawn(async move {
        follower
            .read_with(LedgerRead::Get, Consistency::Stale)
            .await
    });
    until("B handled both reads", || {
        (peers[b].status().read_index_latency.count > rounds
            && captured.events("stale read", &b_name) > stale_before)
            .then_some(())
    })
    .await;
    assert!(
        !linearizable.is_finished() && !stale.is_finished(),
        "a read on B was answered with B's apply held"
    );

    // Leadership moves to B; B commits an entry of its term.
    // Asked again of whoever leads until B leads (a transfer lapses under
    // load).
    lead_by(&peers, b).await;
    until("B leads with an entry of its term committed", || {
        let s = peers[b].status();
        (s.role == Role::Leader && s.commit > written).then_some(())
    })
    .await;

    // A lease read on B, dispatched while B's apply is still held. A read
    // that found no lease yet goes through ReadIndex (served correctly
    // later, whatever the code under test): try again until one took the
    // lease path.
    let mut lease_read = None;
    let deadline = Instant::now() + Duration::from_secs(20);
    while lease_read.is_none() {
        assert!(Instant::now() < deadline, "B never served a lease read");
        let before = captured.count(&b_name);
        let peer = peers[b].clone();
        let mut read =
            Box::pin(async move { peer.read_with(LedgerRead::Get, Consistency::Lease).await });
        // One poll sends the read to B's node task (admission has room).
        tokio::select! {
            biased;
            _ = &mut read => panic!("the read was answered with B's apply held"),
            () = std::future::ready(()) => {}
        }
        // Commands are handled in order: once this one is answered, the
        // read was handled (handed to the apply thread, or to ReadIndex).
        within("a no-op command to B", peers[b].transfer_leadership(b_id))
            .await
            .expect("no-op");
        if captured.count(&b_name) > before {
            lease_read = Some(read);
        } else {
            drop(read);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let Some(read) = lease_read else {
        unreachable!()
    };
    GATE.open();
    let (value, _) = tokio::time::timeout(Duration::from_secs(20), read)
        .await
        .expect("the lease read is answered")
        .expect("the lease read succeeds");
    let LedgerReadOutput::Get(seen) = value;
    assert_eq!(
        seen, 1,
        "a lease read on the new leader missed a write the old leader acknowledged"
    );
    let (LedgerReadOutput::Get(seen), _) =
        tokio::time::timeout(Duration::from_secs(20), linearizable)
            .await
            .expect("the follower's linearizable read is answered")
            .expect("the linearizable read's task")
            .expect("the follower's linearizable read succeeds");
    assert_eq!(
        seen, 1,
        "a linearizable read on a follower missed a write committed before it arrived"
    );
    let (LedgerReadOutput::Get(seen), staleness) =
        tokio::time::timeout(Duration::from_secs(20), stale)
            .await
            .expect("the stale read is answered")
            .expect("the stale read's task")
            .expect("the stale read succeeds");
    let staleness = staleness.expect("a stale read reports its staleness");
    assert!(
        staleness.applied < written && seen == 0,
        "a stale read served where B's apply stood (it saw {seen}) reported applied index {} (add(1) is at {written})",
        staleness.applied
    );
    for p in &peers {
        within("a shutdown", p.shutdown()).await.expect("shutdown");
    }
}

const QUIET: [&str; 3] = ["quiet-a:1", "quiet-b:1", "quiet-c:1"];
const QUIET_WRITE: [&str; 3] = ["quiet-w-a:1", "quiet-w-b:1", "quiet-w-c:1"];

/// Three peers at `addrs` with tick gates, a 50 ms tick and a lease of 9
/// ticks; returns them, their gates and the index of the leader, which
/// has committed an entry of its term and served a lease read.
async fn quiet_cluster(
    net: &MemoryNetwork,
    addrs: [&'static str; 3],
) -> (Vec<Peer<Ledger>>, Vec<Arc<super::TickGate>>, usize) {
    let gates: Vec<Arc<super::TickGate>> = addrs.iter().map(|_| Arc::default()).collect();
    let mut peers = Vec::new();
    for (addr, gate) in addrs.iter().zip(&gates) {
        let net = net.clone();
        peers.push(
            Ledger::peer()
                .in_memory()
                .listen(*addr)
                .bootstrap_members(addrs)
                .tick(Duration::from_millis(50))
                // A lease of (10 - 1) / 1.0 = 9 ticks: longer than what the
                // test spends between the partition and the sleep below.
                .clock_drift_bound(1.0)
                .tick_gate(gate.clone())
                .transport(move |id, inbox| Arc::new(net.endpoint(id, inbox)))
                .start()
                .await
                .expect("peer starts"),
        );
    }
    let a = until("a leader", || {
        peers.iter().position(|p| p.status().role == Role::Leader)
    })
    .await;
    // An entry of A's term committed, and a lease read served from the
    // lease (A's lease holds, refreshed by every heartbeat round). The
    // tests' premise is that lease: a leader that never had one refuses
    // their reads whatever the code under test (teeth, stop 58: with a
    // drift bound of 1.0 giving no lease, both tests still passed). A read
    // that found no lease yet goes through ReadIndex: try again until one
    // took the lease path (its trace event).
    within(
        "the set-up's write",
        peers[a].write(LedgerWrite::Add { by: 0 }),
    )
    .await
    .expect("write");
    let (captured, trace) = capture_read_traces();
    let a_name = peers[a].status().name;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        within(
            "the set-up's lease read",
            peers[a].read_with(LedgerRead::Get, Consistency::Lease),
        )
        .await
        .expect("lease read");
        if captured.count(&a_name) > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "premise: A never served a read from its lease"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(trace);
    (peers, gates, a)
}

/// Cuts peer `a` off from the others and stops its ticks, with its lease
/// held. On the one-thread runtime the tests use no node task runs between
/// the two calls; the messages already in A's inbox wake it (each inbound
/// message wakes the gate), so it is put to sleep again until its gate
/// stays asleep while every ready task ran: the partition lets nothing new
/// into its inbox, so from then on only a command wakes it.
async fn sleep_cut_off(
    net: &MemoryNetwork,
    peers: &[Peer<Ledger>],
    gates: &[Arc<super::TickGate>],
    a: usize,
) -> Vec<usize> {
    let others: Vec<usize> = (0..peers.len()).filter(|&i| i != a).collect();
    let other_ids: Vec<_> = others.iter().map(|&i| peers[i].id()).collect();
    net.partition(&[peers[a].id()], &other_ids);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        gates[a].sleep();
        for _ in 0..16 {
            tokio::task::yield_now().await;
        }
        if gates[a].is_asleep() {
            break;
        }
        assert!(Instant::now() < deadline, "A never went quiet cut off");
    }
    others
}

/// A lease read on a leader that slept (its ticks withheld) through the
/// election of another leader, partitioned from it, must not be served from
/// the lease its stopped tick count still shows: the new leader has
/// acknowledged a write the read would miss (thesis §6.4.1).
#[tokio::test(flavor = "current_thread")]
async fn a_leader_woken_by_a_lease_read_judges_its_lease_on_the_caught_up_clock() {
    let net = MemoryNetwork::new(11);
    let (peers, gates, a) = quiet_cluster(&net, QUIET).await;
    let others = sleep_cut_off(&net, &peers, &gates, a).await;

    // The others elect a leader among themselves (after an election
    // timeout, far past A's lease) and acknowledge a write.
    let b = until("a new leader", || {
        others
            .iter()
            .copied()
            .find(|&i| peers[i].status().role == Role::Leader)
    })
    .await;
    assert!(matches!(
        within(
            "the new leader's add(1)",
            peers[b].write(LedgerWrite::Add { by: 1 })
        )
        .await
        .expect("add"),
        LedgerWriteOutput::Add(1)
    ));
    assert!(
        gates[a].is_asleep(),
        "premise: A slept through the new leader's election"
    );
    assert_eq!(
        peers[a].status().role,
        Role::Leader,
        "premise: A still leads"
    );

    // A wakes on the read. Caught up, its clock shows the lease long gone:
    // the read takes a ReadIndex round, which cannot complete cut off; the
    // read woke A's ticks, so after an election timeout without a quorum A
    // steps down (CheckQuorum) and the read is answered `NotLeader`. A read
    // still waiting at the deadline fails the test: a lease read that does
    // not wake the tick gate leaves A asleep, leading, for ever.
    let read = tokio::time::timeout(
        Duration::from_secs(20),
        peers[a].read_with(LedgerRead::Get, Consistency::Lease),
    )
    .await;
    match read {
        Ok(Ok((LedgerReadOutput::Get(seen), _))) => panic!(
            "a leader that slept past its lease served a lease read ({seen}) while another leader had acknowledged add(1)"
        ),
        Ok(Err(crate::Error::NotLeader { .. })) => {}
        other => panic!(
            "a lease read on a leader cut off was not refused NotLeader once its woken clock stepped it down: {other:?}"
        ),
    }
    net.heal();
    for p in &peers {
        within("a shutdown", p.shutdown()).await.expect("shutdown");
    }
}

/// A write handed to a leader whose ticks were withheld (`tick_gate`) and
/// that is cut off from its followers wakes its ticks: the command itself
/// wakes the gate (`tick_gate` module docs), so the leader's CheckQuorum
/// runs and it steps down after an election timeout without a quorum
/// (thesis §6.2), and its caller is answered once the partition heals.
/// Unlike a read, a write leaves nothing waiting in the node task (the
/// in-memory log is written inline), so no other wake-up covers it: a
/// write that did not wake the gate left the leader asleep, leading, for
/// ever (mutation round, stop 45: deleting the `wake` on commands survived
/// the lease-read test, whose read waits in the node task, which wakes
/// the gate at the end of the loop).
#[tokio::test(flavor = "current_thread")]
async fn a_write_on_a_leader_asleep_and_cut_off_wakes_its_ticks_and_it_steps_down() {
    let net = MemoryNetwork::new(12);
    let (peers, gates, a) = quiet_cluster(&net, QUIET_WRITE).await;
    sleep_cut_off(&net, &peers, &gates, a).await;
    let peers = Arc::new(peers);
    let write = tokio::spawn({
        let peers = Arc::clone(&peers);
        async move { peers[a].write(LedgerWrite::Add { by: 5 }).await }
    });
    // A leader cut off steps down after an election timeout (0.5-1 s)
    // once it ticks; 20 s is far past that.
    let deadline = Instant::now() + Duration::from_secs(20);
    while peers[a].status().role == Role::Leader {
        assert!(
            Instant::now() < deadline,
            "a leader asleep and cut off still leads 20 s after a write was handed to it (gate asleep: {})",
            gates[a].is_asleep()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Healed, A learns the others' term; its entry, never replicated, is
    // replaced by the new leader's: the write is answered, not applied.
    net.heal();
    let answered = tokio::time::timeout(Duration::from_secs(20), write)
        .await
        .expect("the write is answered once the partition heals")
        .expect("the write's task");
    assert!(
        matches!(
            answered,
            Err(crate::Error::NotLeader { .. } | crate::Error::Ambiguous(_))
        ),
        "the write on the cut-off leader ended {answered:?}"
    );
    for p in peers.iter() {
        within("a shutdown", p.shutdown()).await.expect("shutdown");
    }
}

//! A panic outside a write handler (the command's `Deserialize`, its
//! output's `Serialize`) on a whole cluster, with the batches applied on
//! the apply thread and with `apply_small_batches_inline`: the node halts at
//! that entry (as under the `halt` policy), the caller waiting for the
//! write is answered at once with [`Error::Halted`] (may have been applied:
//! a fixed binary will apply it), the status shows the halt, and a later write
//! fails at once instead of waiting for a timeout. Both paths behave alike.
//!
//! Before (stop 50): on the thread the panic ended the apply thread; the
//! caller learnt only "peer stopped before answering", the status showed
//! nothing and the peer kept accepting writes it would never apply. Inline,
//! the panic unwound through the node task, and the caller waited for ever.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserializer, Serializer};

use super::session::Op;
use super::test_gate::until;
use crate::core::Role;
use crate::error::{Applied, Error};
use crate::prelude::*;
use crate::state_machine::encode;
use crate::transport::memory::MemoryNetwork;

/// The value whose decoding panics.
const DECODE_PANICS: u64 = 666;
/// The output whose encoding panics.
const ENCODE_PANICS: u64 = 777;

/// A command argument whose `Deserialize` panics on [`DECODE_PANICS`].
#[derive(Clone, Debug, Serialize)]
struct Marked(u64);

impl<'de> Deserialize<'de> for Marked {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = u64::deserialize(d)?;
        assert_ne!(v, DECODE_PANICS, "Marked::deserialize panics on purpose");
        Ok(Marked(v))
    }
}

/// A write output whose `Serialize` panics on [`ENCODE_PANICS`].
#[derive(Clone, Debug, Deserialize)]
struct Out(u64);

impl Serialize for Out {
    fn serialize<Z: Serializer>(&self, s: Z) -> Result<Z::Ok, Z::Error> {
        assert_ne!(self.0, ENCODE_PANICS, "Out::serialize panics on purpose");
        s.serialize_u64(self.0)
    }
}

/// A query argument whose `Serialize` fails (an error, not a panic): a
/// query carrying it cannot be sent.
#[derive(Clone, Debug, Deserialize)]
struct Unsendable;

impl Serialize for Unsendable {
    fn serialize<Z: Serializer>(&self, _: Z) -> Result<Z::Ok, Z::Error> {
        Err(serde::ser::Error::custom(
            "Unsendable::serialize fails on purpose",
        ))
    }
}

#[derive(StateMachine, Default, Serialize, Deserialize)]
struct Fragile {
    n: u64,
}

#[crate::state_machine]
impl Fragile {
    #[write]
    fn put(&mut self, v: Marked) -> Out {
        self.n = v.0;
        Out(v.0)
    }

    #[read]
    fn get(&self) -> u64 {
        self.n
    }

    /// A read whose query decodes [`Marked`]: it panics on
    /// [`DECODE_PANICS`], on the apply thread (a query is decoded only
    /// there).
    #[read]
    fn peek(&self, m: Marked) -> u64 {
        m.0 + self.n
    }

    /// A read whose answer's encoding panics on [`ENCODE_PANICS`].
    #[read]
    fn shown(&self, v: u64) -> Out {
        Out(v)
    }

    /// A read whose query never encodes ([`Unsendable`]).
    #[read]
    fn unsent(&self, u: Unsendable) -> u64 {
        let Unsendable = u;
        self.n
    }
}

const ADDRS: [&str; 3] = ["fragile:1", "fragile:2", "fragile:3"];

/// Three peers on an in-memory network, and the leader's index.
async fn cluster(inline: bool, net_seed: u64) -> (Vec<Peer<Fragile>>, usize) {
    let net = MemoryNetwork::new(net_seed);
    let mut peers = Vec::new();
    for addr in ADDRS {
        let net = net.clone();
        let peer = Fragile::peer()
            .in_memory()
            .listen(addr)
            .bootstrap_members(ADDRS)
            // 50 ms (an election timeout of about half a second), as in
            // the other runtime tests: a 10 ms tick moved the leadership
            // under load on a busy 2-core machine.
            .tick(Duration::from_millis(50))
            .apply_small_batches_inline(inline)
            .transport(move |id, inbox| Arc::new(net.endpoint(id, inbox)))
            .start()
            .await
            .expect("peer starts");
        peers.push(peer);
    }
    let leader = until("a leader", || {
        peers.iter().position(|p| p.status().role == Role::Leader)
    })
    .await;
    (peers, leader)
}

/// `f`'s result, or a failure naming `what` if it takes 20 s: a caller
/// must be answered, not left waiting for ever. (It was 5 s: with
/// `RUST_BACKTRACE` set, as CI runs, the panic hook of each deliberate
/// panic resolves a backtrace first, which a loaded machine can make take
/// seconds. No timeout of a peer's own calls is that long: the heard wait,
/// the longest, is at most an election timeout.)
async fn at_once<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(20), f)
        .await
        .unwrap_or_else(|_| panic!("{what}: not answered within 20 s"))
}

/// `f` run on the current leader, retried on the new one while it answers
/// `NotLeader` (the write was not proposed: a leader change under load),
/// for up to 20 s; the index of the peer that answered and its answer.
async fn on_the_leader<S: StateMachine, T, F>(
    peers: &[Peer<S>],
    what: &str,
    f: impl Fn(Peer<S>) -> F,
) -> (usize, Result<T, Error>)
where
    F: std::future::Future<Output = Result<T, Error>>,
{
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let leader = until("a leader", || {
            peers.iter().position(|p| p.status().role == Role::Leader)
        })
        .await;
        let r = at_once(what, f(peers[leader].clone())).await;
        match r {
            Err(Error::NotLeader { .. }) if std::time::Instant::now() < deadline => continue,
            r => return (leader, r),
        }
    }
}

/// The whole scenario: a few writes (the inline path measures them
/// quick), then the write that panics outside its handler (proposed
/// through the public API when its output's encoding panics; with the
/// leader's decode check skipped when its command's decoding panics, as
/// for an entry an earlier leader proposed: the check would refuse it).
async fn a_panic_outside_the_handler(inline: bool, decode: bool) {
    let (peers, _) = cluster(inline, u64::from(inline) * 2 + u64::from(decode)).await;
    for v in 1..=5 {
        let (_, out) = on_the_leader(&peers, "a write", |p| async move {
            p.write(FragileWrite::Put { v: Marked(v) }).await
        })
        .await;
        assert!(
            matches!(out, Ok(FragileWriteOutput::Put(Out(n))) if n == v),
            "{out:?}"
        );
    }
    // The inline variants must run the inline path (the node task applies
    // small batches itself, counted in the status), else they would test
    // the thread twice; the others never do. A batch measured slow on a
    // loaded machine sends the next ones to the thread for a while, so
    // more writes are made until one is applied inline.
    let inline_batches = || peers.iter().map(|p| p.status().inline_batches).sum::<u64>();
    if inline {
        let mut v = 100;
        while inline_batches() == 0 {
            assert!(
                v < 400,
                "no batch was applied inline after {} writes",
                v - 95
            );
            let (_, out) = on_the_leader(&peers, "a write", |p| async move {
                p.write(FragileWrite::Put { v: Marked(v) }).await
            })
            .await;
            assert!(out.is_ok(), "{out:?}");
            v += 1;
        }
    } else {
        assert_eq!(inline_batches(), 0, "the inline path ran while off");
    }
    let (leader, r) = if decode {
        let command = encode(
            "command",
            &FragileWrite::Put {
                v: Marked(DECODE_PANICS),
            },
        )
        .expect("encodes");
        on_the_leader(&peers, "the write whose command's decoding panics", |p| {
            let command = command.clone();
            async move {
                let bytes = command.len();
                p.propose(Op::Write { command }, bytes).await.map(|_| ())
            }
        })
        .await
    } else {
        on_the_leader(
            &peers,
            "the write whose output's encoding panics",
            |p| async move {
                p.write(FragileWrite::Put {
                    v: Marked(ENCODE_PANICS),
                })
                .await
                .map(|_| ())
            },
        )
        .await
    };
    let peer = &peers[leader];
    let what = if decode { "Deserialize" } else { "Serialize" };
    match &r {
        Err(e @ Error::Halted { message }) => {
            assert_eq!(e.applied(), Applied::Maybe, "{e:?}");
            assert!(
                message.contains("panics on purpose") && message.contains(what),
                "the error does not say what panicked: {e}"
            );
        }
        other => panic!("the caller of a write whose {what} panicked got {other:?}"),
    }
    let halted = until("the leader's status shows the halt", || {
        peer.status().halted
    })
    .await;
    assert!(halted.contains("panics on purpose"), "{halted}");
    // Every later call fails at once, and says it was not applied: it was
    // refused before it reached the log (every replica halted at that
    // entry, so no leader is known: not `NotLeader` with a hint, but a
    // not-applied refusal). Before (stop 50) it was answered `Halted`,
    // which says `Maybe`: a client could not tell it may send it again.
    let later = at_once(
        "a later write",
        peer.write(FragileWrite::Put { v: Marked(9) }),
    )
    .await;
    match later {
        Err(e) => {
            assert_eq!(
                e.applied(),
                Applied::No,
                "a write refused by a halted node got {e:?}"
            );
            assert!(e.is_retryable(), "{e:?}");
        }
        other => panic!("a write after the halt got {other:?}"),
    }
    let read = at_once("a later read", peer.read(FragileRead::Get)).await;
    match read {
        Err(e) => assert_eq!(
            e.applied(),
            Applied::No,
            "a read refused by a halted node got {e:?}"
        ),
        other => panic!("a read after the halt got {other:?}"),
    }
    for p in &peers {
        let _ = at_once("shutdown", p.shutdown()).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deserialize_panic_on_the_apply_thread_halts_the_node_and_answers_at_once() {
    a_panic_outside_the_handler(false, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deserialize_panic_applied_inline_halts_the_node_and_answers_at_once() {
    a_panic_outside_the_handler(true, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_serialize_panic_on_the_apply_thread_halts_the_node_and_answers_at_once() {
    a_panic_outside_the_handler(false, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_serialize_panic_applied_inline_halts_the_node_and_answers_at_once() {
    a_panic_outside_the_handler(true, false).await;
}

/// Entry `index` (term 1): put `v`.
fn put(index: crate::core::Index, v: u64) -> crate::core::Entry {
    let command = encode("command", &FragileWrite::Put { v: Marked(v) }).expect("encodes");
    let envelope = super::session::Envelope {
        stamp_ms: 1,
        op: Op::Write { command },
    };
    crate::core::Entry {
        index,
        term: 1,
        payload: crate::core::Payload::Command(
            encode("envelope", &envelope).expect("encodes").into(),
        ),
    }
}

/// The node task's own apply of a small batch (`apply::inline`), made
/// certain (paused time: every batch is measured quick): a command whose
/// `Deserialize` panics there is caught as on the thread. The sender
/// returns (the node task goes on), its caller and the caller of the next
/// entry are answered `Halted`, and the status shows the halt.
#[test]
fn a_deserialize_panic_in_a_batch_the_node_task_applies_halts_without_unwinding_it() {
    use super::apply::{self, ApplyStatus, Reply};
    use super::session::Sessions;
    use tokio::sync::{mpsc, oneshot};
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        tokio::time::pause();
        let (tx, rx) = mpsc::unbounded_channel();
        let (snap_tx, _snapshots) = mpsc::unbounded_channel();
        let (status_tx, status) =
            apply::status_channel(ApplyStatus::of(0, &None, &Sessions::default()));
        let shared = Arc::new(apply::Shared::new(
            Fragile::default(),
            Sessions::default(),
            0,
            status_tx,
            super::watch::Journal::new(0, 1 << 20),
        ));
        tokio::spawn(apply::run_shared(Arc::clone(&shared), rx, snap_tx));
        let sender = apply::ApplyTx::new(tx, shared);
        // The first batch goes to the thread (nothing measured yet).
        let (first_tx, first) = oneshot::channel();
        sender.entries(vec![(1, 1, Reply::new(first_tx, None))], vec![put(1, 1)]);
        at_once("entry 1", first)
            .await
            .expect("answered")
            .expect("applied");
        let (boom_tx, mut boom) = oneshot::channel();
        let (next_tx, mut next) = oneshot::channel();
        let inline = sender.entries(
            vec![
                (2, 1, Reply::new(boom_tx, None)),
                (3, 1, Reply::new(next_tx, None)),
            ],
            vec![put(2, DECODE_PANICS), put(3, 3)],
        );
        assert!(inline, "the batch went to the thread");
        for (what, answer) in [("entry 2", boom.try_recv()), ("entry 3", next.try_recv())] {
            match answer {
                Ok(Err(e @ Error::Halted { .. })) => {
                    assert_eq!(e.applied(), Applied::Maybe, "{what}: {e:?}")
                }
                other => panic!("{what}, applied by the node task, got {other:?}"),
            }
        }
        let halted = status.borrow().halted.clone();
        assert!(
            halted
                .as_deref()
                .is_some_and(|h| h.contains("entry 2") && h.contains("panics on purpose")),
            "the status shows {halted:?}"
        );
        // Later batches (on either path) are answered `Halted` at once.
        let (later_tx, later) = oneshot::channel();
        sender.entries(vec![(4, 1, Reply::new(later_tx, None))], vec![put(4, 4)]);
        let r = at_once("entry 4", later).await.expect("answered");
        assert!(matches!(r, Err(Error::Halted { .. })), "entry 4 got {r:?}");
    });
}

/// The leader decodes a write before it enters the log (`check_command`,
/// on the caller's task): a `Deserialize` that panics there refuses the
/// write, not applied, instead of unwinding into the caller (a client
/// service's request task: the client saw its stream die, retried, and
/// timed out). The peer goes on serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deserialize_panic_in_the_leaders_check_refuses_the_write() {
    let (peers, _) = cluster(false, 11).await;
    let (_, r) = on_the_leader(&peers, "the write whose check panics", |peer| async move {
        // On a task of its own: a panic that unwinds ends it, not the test.
        tokio::spawn(async move {
            peer.write(FragileWrite::Put {
                v: Marked(DECODE_PANICS),
            })
            .await
            .map(|_| ())
        })
        .await
        .unwrap_or_else(|e| Err(Error::Rejected(format!("the caller's task died: {e:?}"))))
    })
    .await;
    match r {
        Err(e @ Error::Rejected(_)) if !e.to_string().contains("the caller's task died") => {
            assert_eq!(e.applied(), Applied::No, "{e:?}");
            assert!(e.to_string().contains("panics on purpose"), "{e}");
        }
        other => panic!("a write whose decoding panics in the leader's check got {other:?}"),
    }
    let (_, out) = on_the_leader(&peers, "a write after it", |p| async move {
        p.write(FragileWrite::Put { v: Marked(5) }).await
    })
    .await;
    assert!(
        matches!(out, Ok(FragileWriteOutput::Put(Out(5)))),
        "{out:?}"
    );
    for p in &peers {
        let _ = at_once("shutdown", p.shutdown()).await;
    }
}

/// A read whose query's `Deserialize` or answer's `Serialize` panics (on
/// the apply thread, outside the read handler) fails alone, `Rejected`
/// (not applied: a read changes nothing), on a whole peer: the leader does
/// not halt and goes on serving writes and reads. (Mutaudit s51 S1:
/// without the catch around the read, one bad query halted the leader,
/// then each leader the client retried on.)
async fn a_read_whose_codec_panics_fails_alone(inline: bool) {
    let (peers, _) = cluster(inline, 30 + u64::from(inline)).await;
    type Query = fn() -> FragileRead;
    let reads: [(&str, Query); 2] = [
        ("the query's Deserialize", || FragileRead::Peek {
            m: Marked(DECODE_PANICS),
        }),
        ("the answer's Serialize", || FragileRead::Shown {
            v: ENCODE_PANICS,
        }),
    ];
    for (what, query) in reads {
        let (leader, r) =
            on_the_leader(&peers, what, |p| async move { p.read(query()).await }).await;
        match &r {
            Err(e @ Error::Rejected(m)) => {
                assert_eq!(e.applied(), Applied::No, "{e:?}");
                assert!(
                    m.contains("outside the read handler") && m.contains("panics on purpose"),
                    "a read whose {what} panicked: {e}"
                );
            }
            other => panic!("a read whose {what} panicked got {other:?}"),
        }
        assert_eq!(
            peers[leader].status().halted,
            None,
            "a read whose {what} panicked halted the leader"
        );
    }
    let (leader, out) = on_the_leader(&peers, "a write after the reads", |p| async move {
        p.write(FragileWrite::Put { v: Marked(5) }).await
    })
    .await;
    assert!(
        matches!(out, Ok(FragileWriteOutput::Put(Out(5)))),
        "a write after the reads got {out:?}"
    );
    let (_, read) = on_the_leader(&peers, "a read after the reads", |p| async move {
        p.read(FragileRead::Peek { m: Marked(1) }).await
    })
    .await;
    assert!(
        matches!(read, Ok(FragileReadOutput::Peek(6))),
        "a read after the reads got {read:?}"
    );
    for p in &peers {
        assert_eq!(p.status().halted, None, "a peer halted");
    }
    assert_eq!(peers[leader].status().halted, None);
    for p in &peers {
        let _ = at_once("shutdown", p.shutdown()).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_whose_codec_panics_on_the_apply_thread_fails_alone() {
    a_read_whose_codec_panics_fails_alone(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_whose_codec_panics_with_inline_apply_fails_alone() {
    a_read_whose_codec_panics_fails_alone(true).await;
}

/// A state whose `Serialize` panics while it holds [`ENCODE_PANICS`].
#[derive(StateMachine, Default, Deserialize)]
struct Touchy {
    n: u64,
}

impl Serialize for Touchy {
    fn serialize<Z: Serializer>(&self, s: Z) -> Result<Z::Ok, Z::Error> {
        assert_ne!(self.n, ENCODE_PANICS, "Touchy::serialize panics on purpose");
        s.serialize_u64(self.n)
    }
}

#[crate::state_machine]
impl Touchy {
    #[write]
    fn set(&mut self, v: u64) -> u64 {
        self.n = v;
        v
    }

    #[read]
    fn get(&self) -> u64 {
        self.n
    }
}

/// [`Touchy`], snapshotted as a clone serialized on the snapshot thread.
#[derive(StateMachine, Default, Clone, Deserialize)]
#[raftkit(snapshot = "clone")]
struct CopiedTouchy {
    n: u64,
}

impl Serialize for CopiedTouchy {
    fn serialize<Z: Serializer>(&self, s: Z) -> Result<Z::Ok, Z::Error> {
        assert_ne!(
            self.n, ENCODE_PANICS,
            "CopiedTouchy::serialize panics on purpose"
        );
        s.serialize_u64(self.n)
    }
}

#[crate::state_machine]
impl CopiedTouchy {
    #[write]
    fn set(&mut self, v: u64) -> u64 {
        self.n = v;
        v
    }

    #[read]
    fn get(&self) -> u64 {
        self.n
    }
}

/// [`Touchy`], snapshotted as a clone whose `Clone` panics while it holds
/// [`ENCODE_PANICS`] (the copy is made on the apply thread).
#[derive(StateMachine, Default, Serialize, Deserialize)]
#[raftkit(snapshot = "clone")]
struct CloneTouchy {
    n: u64,
}

impl Clone for CloneTouchy {
    fn clone(&self) -> Self {
        assert_ne!(
            self.n, ENCODE_PANICS,
            "CloneTouchy::clone panics on purpose"
        );
        CloneTouchy { n: self.n }
    }
}

#[crate::state_machine]
impl CloneTouchy {
    #[write]
    fn set(&mut self, v: u64) -> u64 {
        self.n = v;
        v
    }

    #[read]
    fn get(&self) -> u64 {
        self.n
    }
}

/// Entry `index` (term 1): set `v` (the same bytes for both Touchy kinds).
fn set(index: crate::core::Index, v: u64) -> crate::core::Entry {
    let command = encode("command", &TouchyWrite::Set { v }).expect("encodes");
    let envelope = super::session::Envelope {
        stamp_ms: 1,
        op: Op::Write { command },
    };
    crate::core::Entry {
        index,
        term: 1,
        payload: crate::core::Payload::Command(
            encode("envelope", &envelope).expect("encodes").into(),
        ),
    }
}

/// The apply loop of `sm` on a current-thread runtime with paused time, at
/// `n` = [`ENCODE_PANICS`] after entry 1: `check` gets the apply loop's
/// sender, its snapshot answers and its status.
fn with_a_touchy_state<S: StateMachine, F>(
    sm: S,
    check: impl FnOnce(
        tokio::sync::mpsc::UnboundedSender<super::apply::ApplyMsg>,
        tokio::sync::mpsc::UnboundedReceiver<Result<super::apply::Taken, String>>,
        super::apply::ProgressRx,
    ) -> F,
) where
    F: std::future::Future<Output = ()>,
{
    use super::apply::{self, ApplyMsg, ApplyStatus, Reply};
    use super::session::Sessions;
    use tokio::sync::{mpsc, oneshot};
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        tokio::time::pause();
        let (tx, rx) = mpsc::unbounded_channel();
        let (snap_tx, snapshots) = mpsc::unbounded_channel();
        let (status_tx, status) =
            apply::status_channel(ApplyStatus::of(0, &None, &Sessions::default()));
        tokio::spawn(apply::run(
            sm,
            Sessions::default(),
            0,
            rx,
            snap_tx,
            status_tx,
            super::watch::Journal::new(0, 1 << 20),
        ));
        let (one_tx, one) = oneshot::channel();
        assert!(
            tx.send(ApplyMsg::Entries {
                register: vec![(1, 1, Reply::new(one_tx, None))],
                entries: vec![set(1, ENCODE_PANICS)],
            })
            .is_ok()
        );
        at_once("entry 1", one)
            .await
            .expect("answered")
            .expect("applied");
        check(tx, snapshots, status).await;
    });
}

/// A panic in the state's `Serialize` while the apply thread takes a
/// snapshot is a failed snapshot, as an `Err` from it would be (README:
/// "keeps serving ... retried with a backoff"): the node is told the
/// snapshot failed, does not halt, and applies the next write; a later
/// snapshot of a state that serializes succeeds. (Before: the panic halted
/// the node, on every replica as each reached `snapshot_every`.)
#[test]
fn a_serialize_panic_while_taking_a_snapshot_fails_the_snapshot_not_the_node() {
    use super::apply::ApplyMsg;
    with_a_touchy_state(Touchy::default(), |tx, mut snapshots, status| async move {
        assert!(tx.send(ApplyMsg::TakeSnapshot { room: Vec::new() }).is_ok());
        let taken = at_once("the snapshot", snapshots.recv()).await;
        match &taken {
            Some(Err(e)) => assert!(e.contains("panics on purpose"), "{e}"),
            other => panic!(
                "a snapshot whose Serialize panicked got {:?}",
                other.as_ref().map(|r| r.as_ref().map(|t| t.index))
            ),
        }
        goes_on_after_a_failed_snapshot(&tx, &mut snapshots, &status).await;
    });
}

/// With `snapshot = "clone"` the copy is serialized on the snapshot thread
/// (`TakenBody::encode_hinted`): a panic there is a failed snapshot (the
/// saver answers `NotEncoded`, the node retries later), not an unwinding
/// that ends the snapshot thread and leaves the node waiting for that
/// snapshot for ever, never compacting its log.
#[test]
fn a_serialize_panic_of_a_copied_state_fails_the_snapshot_not_the_snapshot_thread() {
    use super::apply::ApplyMsg;
    with_a_touchy_state(
        CopiedTouchy::default(),
        |tx, mut snapshots, status| async move {
            assert!(tx.send(ApplyMsg::TakeSnapshot { room: Vec::new() }).is_ok());
            let taken = at_once("the copy", snapshots.recv())
                .await
                .expect("answered")
                .expect("copied");
            let encoded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                taken.body.encode_hinted(0)
            }));
            match encoded {
                Ok(Err(e)) => assert!(e.contains("panics on purpose"), "{e}"),
                Ok(Ok(_)) => panic!("a copy whose Serialize panics was encoded"),
                Err(payload) => panic!(
                    "serializing the copy unwound into the snapshot thread: {}",
                    crate::handler_panic::message(payload.as_ref())
                ),
            }
            assert_eq!(status.borrow().halted, None, "the node halted");
        },
    );
}

/// With `snapshot = "clone"`, on a whole peer: while the state's
/// `Serialize` panics (the copy is serialized on the snapshot thread), each
/// snapshot fails and is retried, the node keeps serving (every write
/// applies, nothing halts) and says why in its status; once the state
/// serializes again a snapshot succeeds and the error clears. (The unit
/// test above checks the encode alone; this one the whole path: the
/// snapshot thread survives, the node retries.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copied_state_whose_serialize_panics_fails_its_snapshots_and_the_peer_keeps_serving() {
    const EVERY: u64 = 4;
    let net = MemoryNetwork::new(21);
    let mut peers = Vec::new();
    for addr in ADDRS {
        let net = net.clone();
        let peer = CopiedTouchy::peer()
            .in_memory()
            .listen(addr)
            .bootstrap_members(ADDRS)
            .tick(Duration::from_millis(50))
            .snapshot_every(EVERY)
            .snapshot_log_ratio(0.0)
            .transport(move |id, inbox| Arc::new(net.endpoint(id, inbox)))
            .start()
            .await
            .expect("peer starts");
        peers.push(peer);
    }
    let set = |v: u64| {
        let peers = &peers;
        async move {
            let (at, out) = on_the_leader(peers, "a write", |p| async move {
                p.write(CopiedTouchyWrite::Set { v }).await
            })
            .await;
            assert!(
                matches!(out, Ok(CopiedTouchyWriteOutput::Set(n)) if n == v),
                "a write of {v} got {out:?}"
            );
            at
        }
    };
    // The state serializes no more: every snapshot from now on fails.
    let mut leader = 0;
    for _ in 0..=EVERY * 2 {
        leader = set(ENCODE_PANICS).await;
    }
    let error = until("the leader's status shows the failed snapshot", || {
        peers[leader].status().snapshot_error
    })
    .await;
    assert!(error.contains("panics on purpose"), "{error}");
    for p in &peers {
        assert_eq!(p.status().halted, None, "a failed snapshot halted a peer");
    }
    // Still serving, and retrying: once the state serializes again, a
    // snapshot succeeds and the error clears.
    let before = peers[leader].status().snapshot_index;
    for v in 1..=EVERY * 2 {
        leader = set(v).await;
    }
    until("a later snapshot succeeds", || {
        let s = peers[leader].status();
        (s.snapshot_error.is_none() && s.snapshot_index > before).then_some(())
    })
    .await;
    for p in &peers {
        let _ = at_once("shutdown", p.shutdown()).await;
    }
}

/// With `snapshot = "clone"`, a panic in the state's `Clone` while the
/// apply thread copies it for a snapshot is a failed snapshot (logged,
/// retried later), as a `Serialize` panic is: the node does not halt, it
/// applies the next write, and a later snapshot of a state that clones is
/// taken. (Mutaudit s51 S12: without the catch around the copy, the panic
/// reached the loop's catch and halted the node, every replica in turn as
/// each reached `snapshot_every`.)
#[test]
fn a_panic_while_copying_the_state_fails_the_snapshot_not_the_node() {
    use super::apply::ApplyMsg;
    with_a_touchy_state(
        CloneTouchy::default(),
        |tx, mut snapshots, status| async move {
            assert!(tx.send(ApplyMsg::TakeSnapshot { room: Vec::new() }).is_ok());
            let taken = at_once("the snapshot", snapshots.recv()).await;
            match &taken {
                Some(Err(e)) => assert!(
                    e.contains("snapshot copy panicked") && e.contains("panics on purpose"),
                    "{e}"
                ),
                other => panic!(
                    "a snapshot whose Clone panicked got {:?}",
                    other.as_ref().map(|r| r.as_ref().map(|t| t.index))
                ),
            }
            goes_on_after_a_failed_snapshot(&tx, &mut snapshots, &status).await;
        },
    );
}

/// After a snapshot failed (entry 1 applied): the node did not halt,
/// applies entry 2, and its next snapshot (of index 2) succeeds.
async fn goes_on_after_a_failed_snapshot(
    tx: &tokio::sync::mpsc::UnboundedSender<super::apply::ApplyMsg>,
    snapshots: &mut tokio::sync::mpsc::UnboundedReceiver<Result<super::apply::Taken, String>>,
    status: &super::apply::ProgressRx,
) {
    use super::apply::{ApplyMsg, Reply};
    assert_eq!(status.borrow().halted, None, "the node halted");
    let (two_tx, two) = tokio::sync::oneshot::channel();
    assert!(
        tx.send(ApplyMsg::Entries {
            register: vec![(2, 1, Reply::new(two_tx, None))],
            entries: vec![set(2, 2)],
        })
        .is_ok()
    );
    let r = at_once("entry 2", two).await.expect("answered");
    assert!(r.is_ok(), "a write after the failed snapshot got {r:?}");
    assert!(tx.send(ApplyMsg::TakeSnapshot { room: Vec::new() }).is_ok());
    let taken = at_once("the next snapshot", snapshots.recv()).await;
    assert!(
        matches!(taken, Some(Ok(ref t)) if t.index == 2),
        "the next snapshot got {:?}",
        taken.map(|r| r.map(|t| t.index))
    );
}

/// A query whose `Serialize` fails is never sent: every read path answers
/// an error saying nothing was applied (`Applied::No`), `read_with` at any
/// consistency as `read` does. (Stop 57's apply note: `read_with` answered
/// `Codec`, "may have been applied".)
#[tokio::test]
async fn a_query_that_does_not_encode_is_answered_not_sent_on_every_read_path() {
    use crate::client::Consistency;
    let (peers, leader) = cluster(false, 40).await;
    let peer = &peers[leader];
    for consistency in [
        Consistency::Linearizable,
        Consistency::Lease,
        Consistency::Stale,
    ] {
        let e = peer
            .read_with(FragileRead::Unsent { u: Unsendable }, consistency)
            .await
            .expect_err("a query that does not encode is not served");
        assert_eq!(
            e.applied(),
            Applied::No,
            "read_with at {consistency:?}: {e:?}"
        );
        assert!(
            e.to_string().contains("not sent"),
            "read_with at {consistency:?} says the query was not sent: {e}"
        );
    }
    let e = peer
        .read(FragileRead::Unsent { u: Unsendable })
        .await
        .expect_err("a query that does not encode is not served");
    assert_eq!(e.applied(), Applied::No, "read: {e:?}");
}

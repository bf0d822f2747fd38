//! Tests that drive the apply thread ([`apply::run`]) directly with the
//! messages the node task sends it: batches of committed entries,
//! registered proposals, snapshot requests and installs, reads. They pin
//! the apply thread's own invariants (`apply.rs` module docs) without a
//! cluster around it, so each input can be exactly the one a rule is about:
//!
//! - entries are applied exactly once each, in index order, even when a
//!   batch overlaps what was applied (a defensive rule: the node task hands
//!   only [`RaftLog::take_committed`](crate::core::RaftLog) output, which
//!   starts after `applied`; the test pins the apply thread's own guard);
//! - a proposal answered by an entry of another term (another leader's
//!   entry replaced it, Raft §5.3) gets [`Error::NotLeader`], never that
//!   entry's result; and the command the leader decoded for it is not
//!   applied in place of that entry's bytes;
//! - the session table travels with the snapshot (thesis §6.3): a retry
//!   after a snapshot install is answered from the table, not applied again;
//! - the writes applied before an entry that halts the node are watch
//!   events (with their commands' bytes), and watches end with `Halted`
//!   after them;
//! - a write whose handler panicked under `skip` is applied (its caller gets
//!   [`Error::Handler`], which says applied) and is a watch event with the
//!   panic message as its output.
//! - a snapshot installed from the leader restarts the watch journal after
//!   it: a watcher of an entry the snapshot covers is told it is gone
//!   (`Unavailable`), and a new watch from there is refused (`Compacted`),
//!   instead of events that silently skip the covered writes.
//! - every session refusal says truly whether the write may have been
//!   applied: a late duplicate of an acknowledged write `Ambiguous` (an
//!   earlier attempt was), a write past the session window `Rejected`
//!   (nothing was); and sessions expire by the entries' stamps
//!   (replicated time), so a write under an expired one is not applied.
//!
//! Size: past 1,000 lines because these are the tests of one module's
//! invariants on one harness (`Thread` and the entry and session helpers at
//! the top). The tests of the sender applying a batch itself, on the
//! `Shared` harness at the end, would move first, beside
//! `apply_inline_tests.rs`.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use super::apply::{self, ApplyMsg, ApplyStatus, Inline, Reply, Taken, TakenBody};
use super::session::{Envelope, Op, Owner, SESSION_WINDOW, Sessions};
use super::watch::Journal;
use crate::client::wire::{SessionId, SessionRef, WatchOutput};
use crate::core::{Entry, Index, Payload, Term};
use crate::error::{Applied, Error};
use crate::prelude::*;
use crate::state_machine::{decode, encode};

#[derive(StateMachine, Default, Serialize, Deserialize)]
struct Tally {
    n: u64,
}

#[crate::state_machine]
impl Tally {
    #[write]
    fn add(&mut self, by: u64) -> u64 {
        self.n += by;
        self.n
    }

    #[write]
    fn boom(&mut self) -> u64 {
        panic!("boom on purpose")
    }

    #[read]
    fn get(&self) -> u64 {
        self.n
    }
}

/// [`Tally`] with snapshots of a clone serialized off the apply thread. Its
/// handlers are Tally's, in the same order: the commands, queries and
/// snapshots of both encode alike, so the [`Thread`] helpers serve both.
#[derive(StateMachine, Default, Clone, Serialize, Deserialize)]
#[raftkit(snapshot = "clone")]
struct CopiedTally {
    n: u64,
}

#[crate::state_machine]
impl CopiedTally {
    #[write]
    fn add(&mut self, by: u64) -> u64 {
        self.n += by;
        self.n
    }

    #[write]
    fn boom(&mut self) -> u64 {
        panic!("boom on purpose")
    }

    #[read]
    fn get(&self) -> u64 {
        self.n
    }
}

/// One apply thread (as a task of a current-thread runtime) and the ends
/// the node task would hold.
struct Thread {
    tx: mpsc::UnboundedSender<ApplyMsg>,
    snapshots: mpsc::UnboundedReceiver<Result<Taken, String>>,
    journal: Arc<Journal>,
    status: apply::ProgressRx,
}

impl Thread {
    fn start() -> Thread {
        Thread::start_with(Tally::default())
    }

    fn start_with<S: StateMachine>(sm: S) -> Thread {
        let (tx, rx) = mpsc::unbounded_channel();
        let (snap_tx, snapshots) = mpsc::unbounded_channel();
        let (status_tx, status) =
            apply::status_channel(ApplyStatus::of(0, &None, &Sessions::default()));
        let journal = Journal::new(0, 1 << 20);
        tokio::spawn(apply::run(
            sm,
            Sessions::default(),
            0,
            rx,
            snap_tx,
            status_tx,
            Arc::clone(&journal),
        ));
        Thread {
            tx,
            snapshots,
            journal,
            status,
        }
    }

    fn send(&self, msg: ApplyMsg) {
        assert!(self.tx.send(msg).is_ok(), "the apply thread stopped");
    }

    /// Sends a read (`TallyRead::Get`) to be served at `index`; its answer
    /// comes on the receiver.
    fn read_at(&self, index: Index) -> oneshot::Receiver<Result<bytes::Bytes, Error>> {
        let (tx, rx) = oneshot::channel();
        self.send(ApplyMsg::Read {
            index,
            query: encode("query", &TallyRead::Get).expect("encodes"),
            reply: Reply::new(tx, None),
        });
        rx
    }

    /// Registers a proposal at (index, term); its answer comes on the
    /// returned receiver.
    fn register(&self, index: Index, term: Term) -> oneshot::Receiver<Result<bytes::Bytes, Error>> {
        let (tx, rx) = oneshot::channel();
        self.send(ApplyMsg::Register(vec![(
            index,
            term,
            Reply::new(tx, None),
        )]));
        rx
    }

    /// The state after everything sent so far was applied (a read at
    /// index 0 is served once the thread reaches it in its queue).
    async fn value(&self) -> u64 {
        let (tx, rx) = oneshot::channel();
        self.send(ApplyMsg::Read {
            index: 0,
            query: encode("query", &TallyRead::Get).expect("encodes"),
            reply: Reply::new(tx, None),
        });
        let bytes = within(rx, "the read at index 0 (the state so far)")
            .await
            .expect("answered")
            .expect("read served");
        match decode::<TallyReadOutput>("output", &bytes).expect("decodes") {
            TallyReadOutput::Get(n) => n,
        }
    }

    async fn snapshot(&mut self) -> Taken {
        self.snapshot_into(Vec::new()).await
    }

    async fn snapshot_into(&mut self, room: Vec<u8>) -> Taken {
        self.send(ApplyMsg::TakeSnapshot { room });
        within(self.snapshots.recv(), "the snapshot taken")
            .await
            .expect("the thread answers")
            .expect("a snapshot")
    }
}

fn entry(index: Index, term: Term, op: Op) -> Entry {
    entry_at(index, term, 1, op)
}

/// An entry the leader stamped `stamp_ms` (replicated time).
fn entry_at(index: Index, term: Term, stamp_ms: u64, op: Op) -> Entry {
    let envelope = Envelope { stamp_ms, op };
    Entry {
        index,
        term,
        payload: Payload::Command(Bytes::from(encode("envelope", &envelope).expect("encodes"))),
    }
}

fn command(w: &TallyWrite) -> Vec<u8> {
    encode("command", w).expect("encodes")
}

fn add(index: Index, by: u64) -> Entry {
    entry(
        index,
        1,
        Op::Write {
            command: command(&TallyWrite::Add { by }),
        },
    )
}

/// Opens session `id` (owned locally) with a time-to-live of `ttl_ms`.
fn open_session(id: SessionId, ttl_ms: u64) -> Op {
    Op::OpenSession {
        id,
        owner: Owner::Local,
        ttl_ms,
        max_sessions: 16,
    }
}

/// Write `seq` of session `id` (replies below `acked_below` acknowledged):
/// add `by`.
fn session_add(id: SessionId, seq: u64, acked_below: u64, by: u64) -> Op {
    Op::SessionWrite {
        session: SessionRef {
            id,
            seq,
            acked_below,
        },
        owner: Owner::Local,
        command: command(&TallyWrite::Add { by }),
    }
}

fn output(r: Result<bytes::Bytes, Error>) -> u64 {
    let bytes = r.expect("applied");
    match decode::<TallyWriteOutput>("output", &bytes).expect("decodes") {
        TallyWriteOutput::Add(n) | TallyWriteOutput::Boom(n) => n,
    }
}

/// `f`, failing the test if it has not ended within 20 s (`what` says what
/// was awaited): a regression that never wakes a waiter fails in seconds
/// instead of hanging the test run. (It was 5 s: deliberate panics resolve
/// a backtrace in the panic hook with `RUST_BACKTRACE` set, as CI runs,
/// which a loaded machine can make take seconds.)
async fn within<T>(f: impl std::future::Future<Output = T>, what: &str) -> T {
    tokio::time::timeout(std::time::Duration::from_secs(20), f)
        .await
        .unwrap_or_else(|_| panic!("{what}: not within 20 s"))
}

/// The read `what` answered on `rx` is refused "not applied":
/// `Unavailable` naming `why` (a refused read changed nothing).
async fn refused_not_applied(
    rx: oneshot::Receiver<Result<bytes::Bytes, Error>>,
    what: &str,
    why: &str,
) {
    match within(rx, what).await {
        Ok(Err(e @ Error::Unavailable(_))) => {
            assert_eq!(e.applied(), Applied::No, "{what}: {e:?}");
            assert!(e.to_string().contains(why), "{what}: {e}");
        }
        other => panic!("{what}: want a refusal (Unavailable, {why:?}), got {other:?}"),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

#[test]
fn an_overlapping_batch_applies_each_entry_once() {
    runtime().block_on(async {
        let t = Thread::start();
        t.send(ApplyMsg::entries(vec![add(1, 1), add(2, 10), add(3, 100)]));
        // A batch that starts inside what was applied (a replayed overlap):
        // only index 4 is new.
        t.send(ApplyMsg::entries(vec![
            add(2, 10),
            add(3, 100),
            add(4, 1000),
        ]));
        assert_eq!(t.value().await, 1111, "an entry was applied twice");
        assert_eq!(t.status.borrow().applied, 4);
    });
}

#[test]
fn a_proposal_replaced_by_another_leaders_entry_gets_not_leader() {
    runtime().block_on(async {
        let t = Thread::start();
        // Proposed at index 1 in term 1; the entry that committed there is
        // another leader's (term 2).
        let replaced = t.register(1, 1);
        let kept = t.register(2, 2);
        t.send(ApplyMsg::entries(vec![
            entry(
                1,
                2,
                Op::Write {
                    command: command(&TallyWrite::Add { by: 5 }),
                },
            ),
            entry(
                2,
                2,
                Op::Write {
                    command: command(&TallyWrite::Add { by: 1 }),
                },
            ),
        ]));
        let r = replaced.await.expect("answered");
        assert!(
            matches!(r, Err(Error::NotLeader { .. })),
            "the replaced proposal got {r:?}"
        );
        assert_eq!(output(kept.await.expect("answered")), 6);
    });
}

/// The leader hands its apply thread the command it decoded when it
/// checked the proposal; it is applied in place of the entry's bytes only
/// if the entry at that index is the proposal (same term). Here the
/// decoded values differ from the entries' bytes on purpose, so the test
/// tells which one was applied.
#[test]
fn a_decoded_command_is_applied_only_for_its_own_entry() {
    runtime().block_on(async {
        let t = Thread::start();
        let register = |index: Index, term: Term, by: u64| {
            let (tx, rx) = oneshot::channel();
            let reply = Reply::new(tx, None).with_decoded(Box::new(TallyWrite::Add { by }));
            (rx, (index, term, reply))
        };
        // Proposed at index 1 in term 1, but another leader's entry (term
        // 2) committed there: its bytes apply, not the stale decoded value.
        let (replaced, r1) = register(1, 1, 1_000);
        // Proposed at index 2 in term 2, and committed: the decoded value.
        let (kept, r2) = register(2, 2, 7);
        t.send(ApplyMsg::Entries {
            register: vec![r1, r2],
            entries: vec![
                entry(
                    1,
                    2,
                    Op::Write {
                        command: command(&TallyWrite::Add { by: 5 }),
                    },
                ),
                entry(
                    2,
                    2,
                    Op::Write {
                        command: command(&TallyWrite::Add { by: 1 }),
                    },
                ),
            ],
        });
        let r = replaced.await.expect("answered");
        assert!(
            matches!(r, Err(Error::NotLeader { .. })),
            "the replaced proposal got {r:?}"
        );
        assert_eq!(
            output(kept.await.expect("answered")),
            12,
            "index 1 must apply its own bytes (5), index 2 the decoded command (7)"
        );
        assert_eq!(t.value().await, 12);
    });
}

#[test]
fn sessions_travel_with_the_snapshot_so_a_retry_after_an_install_is_not_applied_again() {
    runtime().block_on(async {
        let id = SessionId(7);
        let open = open_session(id, 600_000);
        let write = session_add(id, 1, 1, 7);
        let mut a = Thread::start();
        let first = a.register(2, 1);
        a.send(ApplyMsg::entries(vec![
            entry(1, 1, open),
            entry(2, 1, write.clone()),
        ]));
        assert_eq!(output(first.await.expect("answered")), 7);
        let taken = a.snapshot().await;
        assert_eq!(taken.index, 2);

        // Another replica installs it, then applies a retry of the same
        // write (same session and sequence number) logged after it.
        let b = Thread::start();
        b.send(ApplyMsg::Restore {
            index: taken.index,
            data: std::sync::Arc::new(taken.body.encode().expect("serializes")),
        });
        let retry = b.register(3, 1);
        b.send(ApplyMsg::entries(vec![entry(3, 1, write)]));
        let r = retry.await.expect("answered");
        assert!(
            r.is_ok(),
            "the retry after the install was not answered from the session table: {r:?}"
        );
        assert_eq!(
            output(r),
            7,
            "the retry got another answer than the first attempt"
        );
        assert_eq!(b.value().await, 7, "the retry was applied again");
        assert_eq!(b.status.borrow().sessions, 1);
        // The derived count of stored replies is recounted on restore
        // (mutation round, stop 45: without the recount it said 0).
        assert_eq!(
            b.status.borrow().session_replies,
            1,
            "the replies stored in the installed table"
        );
    });
}

#[test]
fn a_state_serialized_here_goes_into_the_room_it_is_given() {
    // The derive's `snapshot_onto` appends `snapshot`'s bytes.
    let tally = Tally { n: 300 };
    let mut buf = vec![9];
    tally.snapshot_onto(&mut buf).expect("serializes");
    let alone = tally.snapshot().expect("serializes");
    assert_eq!((buf[0], &buf[1..]), (9, &alone[..]));
    runtime().block_on(async {
        let mut a = Thread::start();
        a.send(ApplyMsg::entries(vec![add(1, 40), add(2, 2)]));
        assert_eq!(a.value().await, 42);
        let room = Vec::with_capacity(1 << 16);
        let at = room.as_ptr();
        let taken = a.snapshot_into(room).await;
        let TakenBody::Encoded(data) = taken.body else {
            panic!("a state machine without a copy was not serialized here");
        };
        assert_eq!(data.as_ptr(), at, "not serialized into the room given");
        // The same bytes as without a room.
        let plain = a.snapshot().await.body.encode().expect("serialized");
        assert!(data == plain);
        let b = Thread::start();
        b.send(ApplyMsg::Restore {
            index: 2,
            data: std::sync::Arc::new(data),
        });
        assert_eq!(b.value().await, 42);
    });
}

#[test]
fn a_copied_state_is_snapshotted_as_of_its_index_while_later_entries_apply() {
    runtime().block_on(async {
        let id = SessionId(7);
        let write = session_add(id, 1, 1, 7);
        let mut a = Thread::start_with(CopiedTally::default());
        let first = a.register(2, 1);
        a.send(ApplyMsg::entries(vec![
            entry(1, 1, open_session(id, 600_000)),
            entry(2, 1, write.clone()),
        ]));
        assert_eq!(output(first.await.expect("answered")), 7);
        let taken = a.snapshot().await;
        assert_eq!(taken.index, 2);
        assert!(
            matches!(taken.body, TakenBody::Deferred(_)),
            "a state machine that gives a copy was serialized on the apply thread"
        );
        // The apply thread goes on before the copy is serialized: an entry
        // applied now must not be in the snapshot taken at 2.
        a.send(ApplyMsg::entries(vec![add(3, 100)]));
        assert_eq!(a.value().await, 107);
        let data = taken.body.encode().expect("the copy serializes");

        // Another replica installs it: the state and the session table as of
        // index 2, so a retry of the session's write is answered from the
        // table and not applied again.
        let b = Thread::start_with(CopiedTally::default());
        b.send(ApplyMsg::Restore {
            index: 2,
            data: std::sync::Arc::new(data),
        });
        assert_eq!(b.value().await, 7, "the snapshot holds a later entry");
        let retry = b.register(3, 1);
        b.send(ApplyMsg::entries(vec![entry(3, 1, write)]));
        assert_eq!(
            output(retry.await.expect("answered")),
            7,
            "the retry after the install was not answered from the session table"
        );
        assert_eq!(b.value().await, 7, "the retry was applied again");
    });
}

#[test]
fn a_skipped_panic_answers_applied_and_is_a_watch_event() {
    runtime().block_on(async {
        let t = Thread::start();
        let mut cursor = t.journal.cursor(Some(1)).expect("a cursor");
        let boom = t.register(1, 1);
        t.send(ApplyMsg::entries(vec![
            entry(
                1,
                1,
                Op::Write {
                    command: command(&TallyWrite::Boom),
                },
            ),
            add(2, 3),
        ]));
        let r = boom.await.expect("answered");
        match &r {
            Err(e @ Error::Handler { message }) => {
                assert_eq!(message, "boom on purpose");
                assert_eq!(e.applied(), Applied::Yes);
            }
            other => panic!("a skipped panic answered {other:?}"),
        }
        assert_eq!(t.value().await, 3, "the log went on after the panic");
        let events = cursor.next_batch(usize::MAX).await.expect("events");
        let seen: Vec<(u64, &WatchOutput)> = events.iter().map(|e| (e.index, &e.output)).collect();
        assert_eq!(seen.len(), 2, "{seen:?}");
        assert_eq!(seen[0].0, 1);
        assert_eq!(
            seen[0].1,
            &WatchOutput::Handler("boom on purpose".into()),
            "the panicked write is an event with its message"
        );
        assert_eq!(seen[1].0, 2);
    });
}

/// The writes of a batch applied before an entry that halts the node are
/// watch events, each with its command's own bytes, and the watch ends
/// with `Halted` after them (the journal gets a batch's events at its end:
/// a halt part-way through must hand them over first).
#[test]
fn the_writes_before_a_halt_in_the_same_batch_reach_the_watchers_first() {
    runtime().block_on(async {
        let t = Thread::start();
        let mut cursor = t.journal.cursor(Some(1)).expect("a cursor");
        // A command tag this binary does not know: a newer binary wrote it.
        let unknown = entry(3, 1, Op::Write { command: vec![250] });
        // Its proposer waits at the entry that halts.
        let halting = t.register(3, 1);
        t.send(ApplyMsg::entries(vec![add(1, 1), add(2, 2), unknown]));
        let mut seen = Vec::new();
        let end = loop {
            match cursor.next_batch(usize::MAX).await {
                Ok(events) => seen.extend(events.iter().map(|e| (e.index, e.command.to_vec()))),
                Err(e) => break e,
            }
        };
        assert_eq!(
            seen,
            [
                (1, command(&TallyWrite::Add { by: 1 })),
                (2, command(&TallyWrite::Add { by: 2 })),
            ],
            "the writes applied before the halt, with their commands"
        );
        assert!(
            matches!(end, Error::Halted { .. }),
            "the watch ended with {end:?}"
        );
        // The caller of the halting entry is answered `Halted` (a fixed
        // binary applies it: not reported failed), not dropped unanswered
        // (mutation round, stop 45: dropping it survived).
        let r = halting.await;
        assert!(
            matches!(r, Ok(Err(Error::Halted { .. }))),
            "the proposer of the entry that halted got {r:?}"
        );
    });
}

/// A read the halted apply thread refuses (one waiting for its read index
/// when the node halted, one that reaches the thread after) changed
/// nothing: it is answered "not applied" as the halted node task answers
/// the reads it refuses (`NotLeader` with the leader's address when one is
/// known, else `Unavailable`), never `Halted` (may have been applied),
/// while the write waiting at the entry that halted is answered `Halted`.
#[test]
fn reads_the_halted_thread_refuses_are_answered_not_applied() {
    runtime().block_on(async {
        let t = Thread::start();
        let waiting = t.read_at(5);
        // A command tag this binary does not know: the node halts at it.
        let halting = t.register(2, 1);
        t.send(ApplyMsg::entries(vec![
            add(1, 1),
            entry(2, 1, Op::Write { command: vec![250] }),
        ]));
        let r = within(halting, "the write at the entry that halted").await;
        assert!(
            matches!(r, Ok(Err(Error::Halted { .. }))),
            "the write at the entry that halted got {r:?}"
        );
        let later = t.read_at(1);
        for (what, rx) in [
            ("a read waiting at the halt", waiting),
            ("a later read", later),
        ] {
            refused_not_applied(rx, what, "halted").await;
        }
    });
}

/// After the node's storage failed (`ApplyMsg::Fail`) the thread serves
/// nothing more: a read waiting for its index and one sent after are
/// refused "not applied" (`Unavailable` naming the failure, no leader
/// known; a read changes nothing), never the storage error, which says
/// "may have been applied" and is for the writes in the log (review s52
/// #3: the storage-failure branch of `refused_read` was untested).
#[test]
fn reads_refused_after_a_storage_failure_are_answered_not_applied() {
    runtime().block_on(async {
        let t = Thread::start();
        let waiting = t.read_at(5);
        let write = t.register(3, 1);
        t.send(ApplyMsg::Fail(Error::Storage("the disk is gone".into())));
        let later = t.read_at(1);
        let r = within(write, "the write waiting at the failure").await;
        assert!(
            matches!(&r, Ok(Err(Error::Storage(m))) if m.contains("the disk is gone")),
            "the write waiting at the failure got {r:?}"
        );
        for (what, rx) in [
            ("a read waiting at the storage failure", waiting),
            ("a read sent after the storage failure", later),
        ] {
            refused_not_applied(rx, what, "the disk is gone").await;
        }
    });
}

#[test]
fn a_snapshot_install_moves_the_watch_journal_past_it_so_no_watcher_skips_its_writes() {
    runtime().block_on(async {
        let mut a = Thread::start();
        a.send(ApplyMsg::entries(vec![add(1, 1), add(2, 2), add(3, 4)]));
        let taken = within(a.snapshot(), "the snapshot").await;
        assert_eq!(taken.index, 3);

        // B applied entry 1 only; a watcher waits for entry 2.
        let b = Thread::start();
        b.send(ApplyMsg::entries(vec![add(1, 1)]));
        assert_eq!(within(b.value(), "entry 1 applied").await, 1);
        let mut waiting = b.journal.cursor(Some(2)).expect("a cursor");
        // B installs the snapshot at 3 (entries 2 and 3 never apply here),
        // then applies entry 4.
        b.send(ApplyMsg::Restore {
            index: taken.index,
            data: std::sync::Arc::new(taken.body.encode().expect("serializes")),
        });
        b.send(ApplyMsg::entries(vec![add(4, 8)]));
        assert_eq!(within(b.value(), "entry 4 applied").await, 15);

        assert_eq!(
            b.journal.range(),
            (4, 4),
            "the journal restarts after the snapshot"
        );
        match within(
            waiting.next_batch(usize::MAX),
            "the watcher of entry 2 told it went away",
        )
        .await
        {
            Err(Error::Unavailable(_)) => {}
            other => panic!(
                "a watcher of entry 2 was not told it went away with the snapshot: {:?}",
                other.map(|events| events.iter().map(|e| e.index).collect::<Vec<_>>())
            ),
        }
        match b.journal.cursor(Some(2)) {
            Err(Error::Compacted {
                requested: 2,
                first_available: 4,
            }) => {}
            Err(e) => panic!("a watch from entry 2 refused with {e:?}"),
            Ok(_) => panic!("a watch from entry 2 was opened past a snapshot install"),
        }
        let mut from_4 = b.journal.cursor(Some(4)).expect("a cursor at 4");
        let events = within(from_4.next_batch(usize::MAX), "entry 4's event")
            .await
            .expect("events");
        assert_eq!(events.iter().map(|e| e.index).collect::<Vec<_>>(), [4]);
    });
}

/// The room in the node's budgets of every write answered in one applied
/// batch comes back once the batch is applied, all of it (teeth round 8:
/// mutant 811 returned the first write's room and lost the others').
#[test]
fn the_room_of_every_write_answered_in_one_batch_comes_back() {
    runtime().block_on(async {
        use super::admission::Admission;
        const ROOM: u64 = 8;
        let admission = Admission::new(ROOM as usize, 1 << 20, std::time::Duration::from_secs(1));
        let t = Thread::start();
        let mut register = Vec::new();
        let mut answers = Vec::new();
        for index in 1..=5 {
            let (tx, rx) = oneshot::channel();
            let permit = admission.admit(10).await.expect("room");
            register.push((index, 1, Reply::new(tx, Some(permit))));
            answers.push(rx);
        }
        t.send(ApplyMsg::Entries {
            register,
            entries: (1..=5).map(|i| add(i, 1)).collect(),
        });
        for (i, rx) in answers.into_iter().enumerate() {
            assert_eq!(
                output(
                    within(rx, "a registered write's answer")
                        .await
                        .expect("answered")
                ),
                i as u64 + 1
            );
        }
        // Served after the batch: its room was returned by then.
        assert_eq!(t.value().await, 5);
        let mut all = Vec::new();
        for i in 0..ROOM {
            all.push(
                admission
                    .admit(10)
                    .await
                    .unwrap_or_else(|e| panic!("call {i} of {ROOM}: {e}")),
            );
        }
        assert_eq!(admission.refused(), 0);
    });
}

/// A late duplicate of a write whose answer the client already
/// acknowledged is answered `Ambiguous` (an earlier attempt was applied,
/// this one was not): never an error that says "not applied" (teeth round
/// 10: `Rejected` there survived). And replicated time advances with the
/// entries' stamps: a session idle past its TTL by the stamps is expired,
/// and a write under it is refused `SessionExpired`, not applied (dropping
/// the advance survived too).
#[test]
fn an_acknowledged_duplicate_is_ambiguous_and_sessions_expire_by_the_stamps() {
    runtime().block_on(async {
        let id = SessionId(7);
        let open = open_session(id, 1_000);
        let t = Thread::start();
        let second = t.register(3, 1);
        let duplicate = t.register(4, 1);
        t.send(ApplyMsg::entries(vec![
            entry_at(1, 1, 1, open),
            entry_at(2, 1, 2, session_add(id, 1, 1, 5)),
            // Acknowledges write 1 (its reply is dropped).
            entry_at(3, 1, 3, session_add(id, 2, 2, 1)),
            entry_at(4, 1, 4, session_add(id, 1, 2, 5)),
        ]));
        assert_eq!(output(second.await.expect("answered")), 6);
        match duplicate.await.expect("answered") {
            Err(e) => {
                assert_eq!(e.applied(), Applied::Maybe, "{e}");
                // Not `SessionExpired`, which tells the client to open a
                // new session: the session is open (mutation round, stop
                // 45: that swap survived).
                assert!(matches!(e, Error::Ambiguous(_)), "{e:?}");
            }
            Ok(_) => panic!("the acknowledged write was applied again"),
        }
        assert_eq!(t.value().await, 6);
        // A day later by the stamps: the session (TTL 1 s) has expired.
        let late = t.register(5, 1);
        t.send(ApplyMsg::entries(vec![entry_at(
            5,
            1,
            86_400_000,
            session_add(id, 3, 3, 100),
        )]));
        let r = late.await.expect("answered");
        assert!(matches!(r, Err(Error::SessionExpired(_))), "{r:?}");
        assert_eq!(t.value().await, 6);
    });
}

/// A write past its session's window of unacknowledged replies, while
/// writes below it are unacknowledged (its client acknowledges each once
/// answered, which makes room), is answered `Overloaded`: not applied, and
/// retried by the client within its timeout. Not `Rejected`, which is
/// final although the room comes as the client sees its answers; not
/// `Ambiguous` (teeth round 10), which says it may have been applied.
#[test]
fn a_write_past_the_session_window_with_writes_below_it_unacknowledged_is_overloaded() {
    runtime().block_on(async {
        let id = SessionId(9);
        let mut entries = vec![entry(1, 1, open_session(id, 600_000))];
        let window = SESSION_WINDOW as u64;
        for seq in 1..=window + 1 {
            entries.push(entry(seq + 1, 1, session_add(id, seq, 1, 1)));
        }
        let t = Thread::start();
        let refused = t.register(window + 2, 1);
        t.send(ApplyMsg::entries(entries));
        match refused.await.expect("answered") {
            Err(e) => {
                assert!(
                    matches!(e, Error::Overloaded),
                    "a write the window has room for once the writes below it are acknowledged was answered {e:?}"
                );
                assert_eq!(e.applied(), Applied::No);
                assert!(e.is_retryable());
            }
            Ok(_) => panic!("a write past the window was applied"),
        }
        assert_eq!(t.value().await, window);
    });
}

/// A session's lowest unacknowledged write that finds the window full of
/// later writes' replies is refused `Rejected` (not applied, final): those
/// replies are acknowledged only once it is answered, so a retry would
/// find the window as full until the client's deadline.
#[test]
fn the_lowest_unacknowledged_write_past_a_full_window_is_rejected() {
    runtime().block_on(async {
        let id = SessionId(9);
        let mut entries = vec![entry(1, 1, open_session(id, 600_000))];
        let window = SESSION_WINDOW as u64;
        for seq in 2..=window + 1 {
            entries.push(entry(seq, 1, session_add(id, seq, 1, 1)));
        }
        entries.push(entry(window + 2, 1, session_add(id, 1, 1, 1)));
        let t = Thread::start();
        let refused = t.register(window + 2, 1);
        t.send(ApplyMsg::entries(entries));
        match refused.await.expect("answered") {
            Err(e) => {
                assert!(matches!(e, Error::Rejected(_)), "{e:?}");
                assert_eq!(e.applied(), Applied::No);
                assert!(!e.is_retryable());
            }
            Ok(_) => panic!("a write past the window was applied"),
        }
        assert_eq!(t.value().await, window);
    });
}

/// The eviction rule of a full session table is the open entry's, not the
/// binary's (`session.rs` rule 8): a log of [`Op::OpenSession`] entries,
/// written before fair shares, replays to the table it gave then (owner
/// B's opens evict A's session, the least recently used, and A's retry is
/// refused `SessionExpired`), while the same opens as
/// [`Op::OpenSessionFair`] entries leave A's session to answer its retry.
#[test]
fn a_replayed_log_evicts_by_the_rule_of_its_open_entries() {
    const B: Owner = Owner::Certificate([3; 32]);
    let log = |fair: bool| {
        let open = |id: u128, owner: Owner| {
            let (id, ttl_ms, max_sessions) = (SessionId(id), 600_000, 4);
            if fair {
                Op::OpenSessionFair {
                    id,
                    owner,
                    ttl_ms,
                    max_sessions,
                }
            } else {
                Op::OpenSession {
                    id,
                    owner,
                    ttl_ms,
                    max_sessions,
                }
            }
        };
        let mut entries = vec![
            entry(1, 1, open(1, Owner::Local)),
            entry(2, 1, session_add(SessionId(1), 1, 1, 5)),
        ];
        for i in 0..8u64 {
            entries.push(entry(3 + i, 1, open(10 + u128::from(i), B)));
        }
        // A's retry of its write.
        entries.push(entry(11, 1, session_add(SessionId(1), 1, 1, 5)));
        entries
    };
    runtime().block_on(async {
        for _replay in 0..2 {
            let t = Thread::start();
            let retry = t.register(11, 1);
            t.send(ApplyMsg::entries(log(false)));
            let r = retry.await.expect("answered");
            assert!(
                matches!(r, Err(Error::SessionExpired(_))),
                "the rule before fair shares: {r:?}"
            );
            assert_eq!(t.value().await, 5);
        }
        let t = Thread::start();
        let retry = t.register(11, 1);
        t.send(ApplyMsg::entries(log(true)));
        assert_eq!(output(retry.await.expect("answered")), 5, "answered");
        assert_eq!(t.value().await, 5, "not applied twice");
    });
}

/// Write `seq` of session `id` whose handler panics (under `skip`).
fn session_boom(id: SessionId, seq: u64) -> Op {
    Op::SessionWrite {
        session: SessionRef {
            id,
            seq,
            acked_below: seq,
        },
        owner: Owner::Local,
        command: command(&TallyWrite::Boom),
    }
}

/// A session write whose handler panicked under `skip` was applied (its
/// caller hears `Handler`, applied): its retry is answered from the session
/// table like any other, not run again (a handler may change state before
/// it panics). Mutation round, stop 45: storing only the replies of writes
/// that succeeded survived every test.
#[test]
fn a_retry_of_a_write_whose_handler_panicked_is_answered_not_run_again() {
    runtime().block_on(async {
        let id = SessionId(7);
        let t = Thread::start();
        let mut cursor = t.journal.cursor(Some(1)).expect("a cursor");
        let first = t.register(2, 1);
        let retry = t.register(3, 1);
        t.send(ApplyMsg::entries(vec![
            entry(1, 1, open_session(id, 600_000)),
            entry(2, 1, session_boom(id, 1)),
            entry(3, 1, session_boom(id, 1)),
            add(4, 1),
        ]));
        for (what, r) in [("first", first), ("retry", retry)] {
            let r = r.await.expect("answered");
            assert!(
                matches!(&r, Err(Error::Handler { message }) if message == "boom on purpose"),
                "the {what} attempt got {r:?}"
            );
        }
        assert_eq!(t.value().await, 1);
        let events = cursor.next_batch(usize::MAX).await.expect("events");
        let applied: Vec<u64> = events.iter().map(|e| e.index).collect();
        assert_eq!(
            applied,
            [2, 4],
            "the retry of the panicked write (entry 3) was run again"
        );
    });
}

/// A snapshot installed from the leader answers the proposals it covers
/// `Ambiguous` (they may be in it: never "not applied"), and serves at once
/// the reads whose index it reaches (mutation round, stop 45: answering
/// them `NotLeader`, and not serving the reads until the next input, each
/// survived every test).
#[test]
fn a_snapshot_install_answers_covered_proposals_ambiguous_and_serves_the_reads_it_reaches() {
    runtime().block_on(async {
        let mut a = Thread::start();
        a.send(ApplyMsg::entries(vec![add(1, 40), add(2, 2)]));
        assert_eq!(a.value().await, 42);
        let taken = a.snapshot().await;
        let data = taken.body.encode().expect("serializes");

        let b = Thread::start();
        let covered = b.register(2, 1);
        let (tx, mut read) = oneshot::channel();
        b.send(ApplyMsg::Read {
            index: 2,
            query: encode("query", &TallyRead::Get).expect("encodes"),
            reply: Reply::new(tx, None),
        });
        b.send(ApplyMsg::Restore {
            index: 2,
            data: std::sync::Arc::new(data),
        });
        // Answered inside the install, as the read must be: when this
        // resolves, the install has run to its end.
        let r = covered.await.expect("answered");
        assert!(
            matches!(r, Err(Error::Ambiguous(_))),
            "a proposal the installed snapshot covers got {r:?}"
        );
        let served = read
            .try_recv()
            .expect("a read at the installed index was not served by the install")
            .expect("read served");
        assert!(
            matches!(
                decode::<TallyReadOutput>("output", &served),
                Ok(TallyReadOutput::Get(42))
            ),
            "the read saw another state"
        );
    });
}

/// A node that left the configuration answers `Ambiguous` only the
/// proposals above its commit index; those at or below it are answered
/// with their results when they apply (mutation round, stop 45: answering
/// every waiting proposal `Ambiguous` survived).
#[test]
fn an_orphaned_node_answers_only_the_proposals_above_its_commit_ambiguous() {
    runtime().block_on(async {
        let t = Thread::start();
        let committed = t.register(1, 1);
        let above = t.register(3, 1);
        t.send(ApplyMsg::Orphaned { above: 2 });
        t.send(ApplyMsg::entries(vec![add(1, 5), add(2, 1)]));
        let r = above.await.expect("answered");
        assert!(
            matches!(r, Err(Error::Ambiguous(_))),
            "the proposal above the commit index got {r:?}"
        );
        let r = committed.await.expect("answered");
        assert!(r.is_ok(), "the proposal at a committed index got {r:?}");
        assert_eq!(output(r), 5);
    });
}

/// An orphaned node's commit index is the last entry whose fate reaches
/// it: the callers waiting there, a superseded one (an earlier proposal of
/// this node at that index, see `Apply::register`) included, are answered
/// by the entry that applies there, not `Ambiguous` (mutation round, stop
/// 49, M58: answering the superseded waiters at or above the commit index
/// `Ambiguous`, `>=` for `>`, survived every test).
#[test]
fn an_orphaned_node_answers_the_waiters_at_exactly_its_commit_index_by_the_entry() {
    runtime().block_on(async {
        let t = Thread::start();
        // Index 2 proposed in term 1, then again in term 3 (the first one
        // is superseded); the term-1 entry commits there.
        let earlier = t.register(2, 1);
        let later = t.register(2, 3);
        let above = t.register(3, 3);
        t.send(ApplyMsg::Orphaned { above: 2 });
        t.send(ApplyMsg::entries(vec![
            add(1, 5),
            entry(
                2,
                1,
                Op::Write {
                    command: command(&TallyWrite::Add { by: 1 }),
                },
            ),
        ]));
        let r = within(earlier, "the superseded proposal at the commit index")
            .await
            .expect("answered");
        assert!(
            r.is_ok(),
            "the superseded proposal whose entry committed at the commit index got {r:?}"
        );
        assert_eq!(output(r), 6);
        let r = within(later, "the later proposal at the commit index")
            .await
            .expect("answered");
        assert!(
            matches!(r, Err(Error::NotLeader { .. })),
            "the proposal at the commit index that another term's entry replaced got {r:?}"
        );
        let r = within(above, "the proposal above the commit index")
            .await
            .expect("answered");
        assert!(
            matches!(r, Err(Error::Ambiguous(_))),
            "the proposal above the commit index got {r:?}"
        );
    });
}

/// A proposal registered at an index an earlier proposal of this node
/// waits on (the node lost leadership, a later leader's conflicting
/// entries cut its log back below the index, Raft §5.3, and it leads
/// again) used to displace the earlier caller's reply: dropped unanswered,
/// the caller was told `Ambiguous("peer … stopped before answering")`. The
/// earlier entry may still commit (another node holding it may become
/// leader, §5.4.2 Figure 8), so both wait for the entry that commits at the
/// index: the one of its term gets the result, the other `NotLeader` (it
/// was not applied, and never will be: a committed entry stays).
#[test]
fn a_proposal_registered_again_at_its_index_leaves_the_earlier_one_waiting_for_that_entry() {
    runtime().block_on(async {
        let t = Thread::start();
        // Index 1: proposed in term 1, then again in term 3; the earlier
        // one (term 1) commits there after all.
        let earlier_1 = t.register(1, 1);
        let later_1 = t.register(1, 3);
        // Index 2: the same, but the later one (term 3) commits.
        let earlier_2 = t.register(2, 1);
        let later_2 = t.register(2, 3);
        let write = |by| Op::Write {
            command: command(&TallyWrite::Add { by }),
        };
        t.send(ApplyMsg::entries(vec![
            entry(1, 1, write(5)),
            entry(2, 3, write(1)),
        ]));
        let wait = |rx: oneshot::Receiver<Result<bytes::Bytes, Error>>| async move {
            tokio::time::timeout(std::time::Duration::from_secs(20), rx)
                .await
                .expect("the caller is answered within 20 s")
        };
        let r = wait(earlier_1).await;
        assert!(
            matches!(&r, Ok(Ok(_))),
            "the earlier proposal whose entry committed at index 1 got {r:?}"
        );
        assert_eq!(output(r.expect("answered")), 5);
        let r = wait(later_1).await;
        assert!(
            matches!(&r, Ok(Err(Error::NotLeader { .. }))),
            "the later proposal at index 1 (term 3) got {r:?}"
        );
        let r = wait(earlier_2).await;
        assert!(
            matches!(&r, Ok(Err(Error::NotLeader { .. }))),
            "the earlier proposal at index 2 (term 1) got {r:?}"
        );
        assert_eq!(output(wait(later_2).await.expect("answered")), 6);
    });
}

/// Every other way a waiter is answered reaches a superseded one too: a
/// snapshot install that covers its index (`Ambiguous`), and a halt.
#[test]
fn a_superseded_proposal_is_answered_by_a_snapshot_install_and_by_a_halt() {
    runtime().block_on(async {
        let mut a = Thread::start();
        a.send(ApplyMsg::entries(vec![add(1, 1), add(2, 2)]));
        let taken = a.snapshot().await;

        let b = Thread::start();
        let covered = b.register(1, 1);
        let covered_again = b.register(1, 2);
        let halting = b.register(3, 1);
        let halting_again = b.register(3, 2);
        b.send(ApplyMsg::Restore {
            index: taken.index,
            data: std::sync::Arc::new(taken.body.encode().expect("serializes")),
        });
        // A command tag this binary does not know halts the node.
        b.send(ApplyMsg::entries(vec![entry(
            3,
            1,
            Op::Write { command: vec![250] },
        )]));
        for (name, rx) in [("covered", covered), ("covered again", covered_again)] {
            let r = tokio::time::timeout(std::time::Duration::from_secs(20), rx)
                .await
                .expect("answered within 20 s");
            assert!(
                matches!(&r, Ok(Err(Error::Ambiguous(_)))),
                "{name} proposal got {r:?}"
            );
        }
        for (name, rx) in [("halting", halting), ("halting again", halting_again)] {
            let r = tokio::time::timeout(std::time::Duration::from_secs(20), rx)
                .await
                .expect("answered within 20 s");
            assert!(
                matches!(&r, Ok(Err(Error::Halted { .. }))),
                "{name} proposal got {r:?}"
            );
        }
    });
}

/// A state machine whose read handler panics.
#[derive(StateMachine, Default, Serialize, Deserialize)]
struct Explodes {
    n: u64,
}

#[crate::state_machine]
impl Explodes {
    #[write]
    fn add(&mut self, by: u64) -> u64 {
        self.n += by;
        self.n
    }

    #[read]
    fn explode(&self) -> u64 {
        panic!("read exploded on purpose")
    }
}

/// A panicking read handler was answered `Error::Handler`, which says
/// `Applied::Yes`: a read applies nothing, so its error must say "not
/// applied" (`Rejected`, not retried: the same query on the same state
/// panics again).
#[test]
fn a_panicking_read_handler_says_nothing_was_applied() {
    runtime().block_on(async {
        let t = Thread::start_with(Explodes::default());
        let (tx, rx) = oneshot::channel();
        t.send(ApplyMsg::Read {
            index: 0,
            query: encode("query", &ExplodesRead::Explode).expect("encodes"),
            reply: Reply::new(tx, None),
        });
        let r = tokio::time::timeout(std::time::Duration::from_secs(20), rx)
            .await
            .expect("answered within 20 s")
            .expect("answered");
        let e = r.expect_err("the read handler panicked");
        assert_eq!(e.applied(), Applied::No, "a panicking read answered {e:?}");
        assert!(
            e.to_string().contains("read exploded on purpose"),
            "the error carries the panic message: {e}"
        );
        assert!(!e.is_retryable(), "{e:?}");
    });
}

/// A registration as the node task sends it.
type Registered = (Index, Term, Reply);
/// Where a proposal's answer comes.
type Answer = oneshot::Receiver<Result<bytes::Bytes, Error>>;

/// The node task's end ([`apply::ApplyTx`]) of an apply thread (a task of
/// the current-thread runtime) on shared state: small batches may be
/// applied by the sender itself (`apply::inline`).
struct Shared {
    tx: apply::ApplyTx,
    shared: Arc<apply::Shared<Tally>>,
}

impl Shared {
    fn start() -> Shared {
        let (tx, rx) = mpsc::unbounded_channel();
        let (snap_tx, _snapshots) = mpsc::unbounded_channel();
        let (status_tx, _status) =
            apply::status_channel(ApplyStatus::of(0, &None, &Sessions::default()));
        let shared = Arc::new(apply::Shared::new(
            Tally::default(),
            Sessions::default(),
            0,
            status_tx,
            Journal::new(0, 1 << 20),
        ));
        tokio::spawn(apply::run_shared(Arc::clone(&shared), rx, snap_tx));
        Shared {
            tx: apply::ApplyTx::new(tx, shared.clone()),
            shared,
        }
    }

    /// A proposal at (index, 1) and where its answer comes.
    fn proposal(index: Index) -> (Registered, Answer) {
        let (tx, rx) = oneshot::channel();
        ((index, 1, Reply::new(tx, None)), rx)
    }
}

#[test]
fn a_lone_small_batch_is_applied_by_the_sender_while_the_thread_is_idle() {
    runtime().block_on(async {
        // Paused: the cost measure reads 0, whatever the machine.
        tokio::time::pause();
        let s = Shared::start();
        // The first batch goes to the thread: nothing measured yet.
        let (p, first) = Shared::proposal(1);
        assert!(!s.tx.entries(vec![p], vec![add(1, 1)]));
        assert_eq!(output(within(first, "entry 1").await.expect("answered")), 1);
        // The thread is idle and handlers are quick: the next one is
        // applied and answered before the thread task runs again.
        let (p, mut second) = Shared::proposal(2);
        let inline = s.tx.entries(vec![p], vec![add(2, 10)]);
        let answer = second.try_recv();
        assert!(
            inline && answer.is_ok(),
            "a lone small batch was handed to the idle thread (inline: {inline}, answered: {answer:?})"
        );
        assert_eq!(output(answer.expect("answered")), 11);
    });
}

#[test]
fn a_batch_is_not_applied_by_the_sender_before_what_it_queued_for_the_thread() {
    runtime().block_on(async {
        // Paused: the cost measure reads 0, whatever the machine.
        tokio::time::pause();
        let s = Shared::start();
        let (p, first) = Shared::proposal(1);
        s.tx.entries(vec![p], vec![add(1, 1)]);
        within(first, "entry 1")
            .await
            .expect("answered")
            .expect("applied");
        // A registration queued for the thread (not handled yet), then the
        // batch it waits on: applied here first, the entry would be behind
        // the registration, which would then wait for ever.
        let (p, registered) = Shared::proposal(2);
        assert!(s.tx.send(ApplyMsg::Register(vec![p])));
        let inline = s.tx.entries(Vec::new(), vec![add(2, 10)]);
        assert!(!inline, "applied by the sender with a message queued");
        let answer = within(registered, "entry 2's proposal").await;
        assert_eq!(output(answer.expect("answered")), 11);
        // Handled: the sender may apply again.
        let (p, third) = Shared::proposal(3);
        assert!(s.tx.entries(vec![p], vec![add(3, 100)]));
        assert_eq!(
            output(within(third, "entry 3").await.expect("answered")),
            111
        );
    });
}

#[test]
fn a_slow_or_large_batch_goes_to_the_thread() {
    runtime().block_on(async {
        let s = Shared::start();
        let (p, first) = Shared::proposal(1);
        s.tx.entries(vec![p], vec![add(1, 1)]);
        within(first, "entry 1")
            .await
            .expect("answered")
            .expect("applied");
        // More entries than a batch applied inline may hold.
        let many: Vec<Entry> = (2..=2 + apply::INLINE_MAX_ENTRIES as Index)
            .map(|i| add(i, 1))
            .collect();
        assert!(!s.tx.entries(Vec::new(), many));
        within(s.value_of(), "the large batch").await;
        // The last batch cost 1 ms per entry: the next goes to the thread.
        let started = tokio::time::Instant::now() - std::time::Duration::from_millis(1);
        s.shared.took(started, 1);
        let next = 3 + apply::INLINE_MAX_ENTRIES as Index;
        let (p, answer) = Shared::proposal(next);
        assert!(!s.tx.entries(vec![p], vec![add(next, 1)]));
        within(answer, "the batch after a slow one")
            .await
            .expect("answered")
            .expect("applied");
    });
}

/// Found by review, stop 49: a batch applied on the node task also served
/// the reads waiting for its index, running the user's query handlers
/// (a scan of the whole state, say) on the node task. A batch that would
/// serve a waiting read goes to the thread.
#[test]
fn a_batch_that_would_serve_waiting_reads_goes_to_the_thread() {
    runtime().block_on(async {
        // Paused: the cost measure reads 0, whatever the machine.
        tokio::time::pause();
        let s = Shared::start();
        let (p, first) = Shared::proposal(1);
        s.tx.entries(vec![p], vec![add(1, 1)]);
        within(first, "entry 1")
            .await
            .expect("answered")
            .expect("applied");
        // A read waiting for index 2, taken in by the thread.
        let (tx, read) = oneshot::channel();
        assert!(s.tx.send(ApplyMsg::Read {
            index: 2,
            query: encode("query", &TallyRead::Get).expect("encodes"),
            reply: Reply::new(tx, None),
        }));
        within(
            async {
                while s.shared.queued().load(std::sync::atomic::Ordering::Acquire) != 0 {
                    tokio::task::yield_now().await;
                }
            },
            "the thread takes the read in",
        )
        .await;
        let (p, second) = Shared::proposal(2);
        assert!(
            !s.tx.entries(vec![p], vec![add(2, 1)]),
            "a batch that serves a waiting read was applied on the node task"
        );
        within(second, "entry 2")
            .await
            .expect("answered")
            .expect("applied");
        let bytes = within(read, "the read")
            .await
            .expect("answered")
            .expect("served");
        let TallyReadOutput::Get(n) = decode::<TallyReadOutput>("output", &bytes).expect("decodes");
        assert_eq!(n, 2, "the read sees entry 2");
    });
}

impl Shared {
    /// The state after everything sent so far was handled.
    async fn value_of(&self) -> u64 {
        let (tx, rx) = oneshot::channel();
        assert!(self.tx.send(ApplyMsg::Read {
            index: 0,
            query: encode("query", &TallyRead::Get).expect("encodes"),
            reply: Reply::new(tx, None),
        }));
        let bytes = within(rx, "the read at index 0 (the state so far)")
            .await
            .expect("answered")
            .expect("read served");
        match decode::<TallyReadOutput>("output", &bytes).expect("decodes") {
            TallyReadOutput::Get(n) => n,
        }
    }
}

/// A handler that panics in a batch the sender (the node task) applies
/// itself is caught there as on the thread: its caller is answered by the
/// error policy (`skip`: applied, with the message), the sender goes on,
/// and the next lone batch is applied by the sender again.
#[test]
fn a_handler_panic_in_a_batch_applied_by_the_sender_is_answered_and_the_sender_goes_on() {
    runtime().block_on(async {
        // Paused: the cost measure reads 0, whatever the machine.
        tokio::time::pause();
        let s = Shared::start();
        let (p, first) = Shared::proposal(1);
        s.tx.entries(vec![p], vec![add(1, 1)]);
        assert_eq!(output(within(first, "entry 1").await.expect("answered")), 1);
        let (p, mut boom) = Shared::proposal(2);
        let boom_entry = entry(
            2,
            1,
            Op::Write {
                command: command(&TallyWrite::Boom),
            },
        );
        assert!(
            s.tx.entries(vec![p], vec![boom_entry]),
            "the panicking batch went to the thread"
        );
        match boom.try_recv() {
            Ok(Err(e @ Error::Handler { .. })) => assert_eq!(e.applied(), Applied::Yes, "{e:?}"),
            other => panic!("a panic applied by the sender answered {other:?}"),
        }
        let (p, mut third) = Shared::proposal(3);
        assert!(s.tx.entries(vec![p], vec![add(3, 10)]));
        assert_eq!(output(third.try_recv().expect("answered")), 11);
    });
}

#[path = "session_bytes_tests.rs"]
mod session_bytes;

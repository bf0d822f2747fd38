//! Tests of the byte bounds of stored replies (`session.rs` rule 9) on the
//! apply thread: review s57 finding 2, one client identity growing the
//! replicated session table without a byte bound on every replica.
//!
//! - a session writing 1 KiB outputs without acknowledging any answer is
//!   refused, not applied, once its stored replies reach the bound of its
//!   [`Op::SessionWriteBounded`] entries, and the bytes stored stay within
//!   it; a write whose output did not fit was applied, its caller got the
//!   output, and its retry says applied (its output was not kept);
//! - a replica restored from a snapshot enforces the same bound at the
//!   same entries (the byte counts are derived on restore);
//! - entries of the format before ([`Op::SessionWrite`]) keep the rule
//!   before: no byte bound (rolling upgrades).
//!
//! A child of `apply_tests` for its [`Thread`] harness (that file is past
//! 1,000 lines already).

use super::*;
use crate::runtime::session::{REPLY_OVERHEAD_BYTES, ReplyBounds};

/// A state machine whose writes return outputs of the length asked for.
#[derive(StateMachine, Default, Serialize, Deserialize)]
struct Blob {
    writes: u64,
}

#[crate::state_machine]
impl Blob {
    #[write]
    fn fill(&mut self, len: u32) -> Vec<u8> {
        self.writes += 1;
        vec![7; len as usize]
    }

    #[read]
    fn writes(&self) -> u64 {
        self.writes
    }
}

const ID: SessionId = SessionId(41);
const OWNER: Owner = Owner::Certificate([9; 32]);
/// The session bound of the tests: seven replies of a 1 KiB output fit.
const SESSION_BYTES: u64 = 8 * 1024;
const BOUNDS: ReplyBounds = ReplyBounds {
    session_bytes: SESSION_BYTES,
    owner_bytes: 1 << 30,
};

fn fill(len: u32) -> Vec<u8> {
    encode("command", &BlobWrite::Fill { len }).expect("encodes")
}

fn open_bounded() -> Op {
    Op::OpenSessionBounded {
        id: ID,
        owner: OWNER,
        ttl_ms: 600_000,
        max_sessions: 16,
        max_owner_sessions: 4,
    }
}

/// Write `seq` of the session, acknowledging nothing (`acked_below` 0),
/// returning 1 KiB.
fn bounded_write(seq: u64) -> Op {
    Op::SessionWriteBounded {
        session: SessionRef {
            id: ID,
            seq,
            acked_below: 0,
        },
        owner: OWNER,
        bounds: BOUNDS,
        command: fill(1024),
    }
}

/// [`bounded_write`] in the format before rule 9.
fn old_write(seq: u64) -> Op {
    Op::SessionWrite {
        session: SessionRef {
            id: ID,
            seq,
            acked_below: 0,
        },
        owner: OWNER,
        command: fill(1024),
    }
}

/// The writes applied so far (a read at index 0).
async fn writes(t: &Thread) -> u64 {
    let (tx, rx) = oneshot::channel();
    t.send(ApplyMsg::Read {
        index: 0,
        query: encode("query", &BlobRead::Writes).expect("encodes"),
        reply: Reply::new(tx, None),
    });
    let bytes = within(rx, "the read of the writes applied")
        .await
        .expect("answered")
        .expect("read served");
    match decode::<BlobReadOutput>("output", &bytes).expect("decodes") {
        BlobReadOutput::Writes(n) => n,
    }
}

/// The session table as a snapshot of `t` carries it (restored: its
/// derived counts recounted).
async fn table(t: &mut Thread) -> Sessions {
    let taken = t.snapshot().await;
    let bytes = taken.body.encode().expect("serializes");
    apply::restore::<Blob>(&bytes).expect("restores").1
}

/// The answers of `entries`, each registered (as its proposal) before
/// they are sent.
async fn answers(t: &Thread, entries: Vec<Entry>) -> Vec<(Index, Result<bytes::Bytes, Error>)> {
    let waits: Vec<_> = entries
        .iter()
        .map(|e| (e.index, t.register(e.index, e.term)))
        .collect();
    t.send(ApplyMsg::entries(entries));
    let mut out = Vec::new();
    for (index, rx) in waits {
        out.push((index, within(rx, "an answer").await.expect("answered")));
    }
    out
}

fn output_len(r: &Result<bytes::Bytes, Error>) -> Option<usize> {
    let bytes = r.as_ref().ok()?;
    match decode::<BlobWriteOutput>("output", bytes).ok()? {
        BlobWriteOutput::Fill(v) => Some(v.len()),
    }
}

/// Review s57 finding 2: without acknowledgements, a session's stored
/// replies grew to its window of 4096, whatever their bytes. Under a byte
/// bound of 8 KiB, writes of 1 KiB outputs are applied while the session
/// has room, then refused `Overloaded` (not applied, retried: the writes
/// below it are unacknowledged), and the table holds at most the bound.
#[test]
fn a_session_that_acknowledges_nothing_is_refused_not_applied_past_its_byte_bound() {
    runtime().block_on(async {
        let mut t = Thread::start_with(Blob::default());
        let mut entries = vec![entry(1, 1, open_bounded())];
        for seq in 1..=40 {
            entries.push(entry(seq + 1, 1, bounded_write(seq)));
        }
        let got = answers(&t, entries).await;
        let mut applied = 0;
        let mut refused = 0;
        for (index, r) in got.iter().skip(1) {
            match r {
                Ok(_) => {
                    assert_eq!(refused, 0, "entry {index} applied after a refusal");
                    assert_eq!(
                        output_len(r),
                        Some(1024),
                        "entry {index}: its caller gets the output"
                    );
                    applied += 1;
                }
                Err(e) => {
                    assert!(matches!(e, Error::Overloaded), "entry {index}: {e:?}");
                    assert_eq!(e.applied(), Applied::No);
                    refused += 1;
                }
            }
        }
        assert!(refused > 0, "no write was refused: {applied} applied");
        assert_eq!(writes(&t).await, applied, "a refused write was applied");
        let sessions = table(&mut t).await;
        assert!(
            sessions.stored_reply_bytes() <= SESSION_BYTES,
            "{} bytes stored past the bound of {SESSION_BYTES}",
            sessions.stored_reply_bytes()
        );
        assert_eq!(sessions.stored_replies() as u64, applied);
        // No more than the bound's worth of writes was applied at all:
        // full replies until one no longer fits, then markers.
        assert!(applied <= SESSION_BYTES / REPLY_OVERHEAD_BYTES, "{applied}");

        // Retries: the first write's output was kept; the last applied
        // one's was not (it did not fit), and its retry says applied.
        let next = 42;
        let retries = answers(
            &t,
            vec![
                entry(next, 1, bounded_write(1)),
                entry(next + 1, 1, bounded_write(applied)),
            ],
        )
        .await;
        assert_eq!(
            output_len(&retries[0].1),
            Some(1024),
            "{:?}",
            retries[0].1.as_ref().err()
        );
        match &retries[1].1 {
            Err(e @ Error::AnswerTooLarge(m)) => {
                assert_eq!(e.applied(), Applied::Yes);
                assert!(!e.is_retryable());
                assert!(m.contains("not kept"), "{m}");
            }
            other => panic!("the retry of a write whose output was not kept: {other:?}"),
        }
        assert_eq!(writes(&t).await, applied, "a retry was applied again");
    });
}

/// The lowest unanswered write of a session whose bytes are held by its
/// later writes' replies is refused `Rejected`: acknowledgements cannot
/// make room before it is answered.
#[test]
fn the_lowest_unanswered_write_past_the_byte_bound_is_rejected() {
    runtime().block_on(async {
        let t = Thread::start_with(Blob::default());
        let mut entries = vec![entry(1, 1, open_bounded())];
        // Writes 2.. fill the session; write 1 comes last.
        for seq in 2..=30 {
            entries.push(entry(seq, 1, bounded_write(seq)));
        }
        let mut first = bounded_write(1);
        if let Op::SessionWriteBounded { session, .. } = &mut first {
            session.acked_below = 1;
        }
        entries.push(entry(31, 1, first));
        let got = answers(&t, entries).await;
        match &got.last().expect("answers").1 {
            Err(e @ Error::Rejected(_)) => assert_eq!(e.applied(), Applied::No),
            other => panic!("{other:?}"),
        }
    });
}

/// A replica that installed a snapshot applies the next entries as the
/// replica that took it: the byte counts are derived from the restored
/// table (no field of their own in the snapshot), so the bound bites at
/// the same entry on both.
#[test]
fn a_replica_restored_from_a_snapshot_enforces_the_same_byte_bound() {
    runtime().block_on(async {
        let mut a = Thread::start_with(Blob::default());
        let mut head = vec![entry(1, 1, open_bounded())];
        for seq in 1..=5 {
            head.push(entry(seq + 1, 1, bounded_write(seq)));
        }
        answers(&a, head).await;
        let taken = a.snapshot().await;
        assert_eq!(taken.index, 6);
        let b = Thread::start_with(Blob::default());
        b.send(ApplyMsg::Restore {
            index: taken.index,
            data: std::sync::Arc::new(taken.body.encode().expect("serializes")),
        });
        let tail = || -> Vec<Entry> {
            (6..=30)
                .map(|seq| entry(seq + 1, 1, bounded_write(seq)))
                .collect()
        };
        let on_a = answers(&a, tail()).await;
        let on_b = answers(&b, tail()).await;
        let verdicts = |got: &[(Index, Result<bytes::Bytes, Error>)]| -> Vec<(Index, bool)> {
            got.iter().map(|(i, r)| (*i, r.is_ok())).collect()
        };
        assert!(
            on_a.iter()
                .any(|(_, r)| matches!(r, Err(Error::Overloaded))),
            "the bound never bit on the replica that took the snapshot"
        );
        assert_eq!(
            verdicts(&on_b),
            verdicts(&on_a),
            "the restored replica applied other entries"
        );
        assert_eq!(writes(&b).await, writes(&a).await);
    });
}

/// Rolling upgrades: entries of the format before rule 9 (a
/// [`Op::SessionWrite`] under an [`Op::OpenSession`]) are applied as
/// before, whatever their replies' bytes (only the window counts): a
/// replica of this binary and one of the previous release apply the same
/// log alike.
#[test]
fn writes_of_the_format_before_keep_the_rule_before() {
    runtime().block_on(async {
        let mut t = Thread::start_with(Blob::default());
        let mut entries = vec![entry(
            1,
            1,
            Op::OpenSession {
                id: ID,
                owner: OWNER,
                ttl_ms: 600_000,
                max_sessions: 16,
            },
        )];
        for seq in 1..=40 {
            entries.push(entry(seq + 1, 1, old_write(seq)));
        }
        let got = answers(&t, entries).await;
        for (index, r) in &got {
            assert!(r.is_ok(), "entry {index}: {r:?}");
        }
        assert_eq!(writes(&t).await, 40);
        let sessions = table(&mut t).await;
        assert_eq!(sessions.stored_replies(), 40);
        assert!(sessions.stored_reply_bytes() > 40 * 1024);
    });
}

/// Write `seq` of session `id` under `bounds`, acknowledging nothing,
/// returning 1 KiB.
fn write_under(id: SessionId, seq: u64, bounds: ReplyBounds) -> Op {
    Op::SessionWriteBounded {
        session: SessionRef {
            id,
            seq,
            acked_below: 0,
        },
        owner: OWNER,
        bounds,
        command: fill(1024),
    }
}

/// The same at the owner's bound: a restored replica derives each owner's
/// bytes from the table too, so an owner bound (not the session's) bites
/// at the same entry on both, after the same reclaims of the idle
/// session's outputs.
#[test]
fn a_replica_restored_from_a_snapshot_enforces_the_same_owner_bound() {
    const OTHER: SessionId = SessionId(42);
    const OWNER_BOUNDS: ReplyBounds = ReplyBounds {
        session_bytes: 1 << 30,
        owner_bytes: 12 * 1024,
    };
    runtime().block_on(async {
        let mut a = Thread::start_with(Blob::default());
        let mut head = vec![
            entry(1, 1, open_bounded()),
            entry(
                2,
                1,
                Op::OpenSessionBounded {
                    id: OTHER,
                    owner: OWNER,
                    ttl_ms: 600_000,
                    max_sessions: 16,
                    max_owner_sessions: 4,
                },
            ),
        ];
        for seq in 1..=5 {
            head.push(entry(seq + 2, 1, write_under(ID, seq, OWNER_BOUNDS)));
        }
        answers(&a, head).await;
        let taken = a.snapshot().await;
        assert_eq!(taken.index, 7);
        let mut b = Thread::start_with(Blob::default());
        b.send(ApplyMsg::Restore {
            index: taken.index,
            data: std::sync::Arc::new(taken.body.encode().expect("serializes")),
        });
        let tail = || -> Vec<Entry> {
            (1..=40)
                .map(|seq| entry(seq + 7, 1, write_under(OTHER, seq, OWNER_BOUNDS)))
                .collect()
        };
        let on_a = answers(&a, tail()).await;
        let on_b = answers(&b, tail()).await;
        let verdicts =
            |got: &[(Index, Result<bytes::Bytes, Error>)]| -> Vec<(Index, Option<usize>)> {
                got.iter().map(|(i, r)| (*i, output_len(r))).collect()
            };
        assert!(
            on_a.iter()
                .any(|(_, r)| matches!(r, Err(Error::Overloaded))),
            "the owner bound never bit on the replica that took the snapshot"
        );
        assert_eq!(
            verdicts(&on_b),
            verdicts(&on_a),
            "the restored replica applied other entries"
        );
        assert_eq!(writes(&b).await, writes(&a).await);
        let (on_a, on_b) = (table(&mut a).await, table(&mut b).await);
        assert!(on_a.owner_reply_bytes(OWNER) <= OWNER_BOUNDS.owner_bytes);
        assert_eq!(on_b.owner_reply_bytes(OWNER), on_a.owner_reply_bytes(OWNER));
        assert_eq!(on_b.stored_reply_bytes(), on_a.stored_reply_bytes());
    });
}

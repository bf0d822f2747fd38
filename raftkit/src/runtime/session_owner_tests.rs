//! Tests of rule 9's per-owner bounds (`session.rs`), review s57 of
//! d3350fd: [`Owner::Local`] is exempt from the per-owner caps (finding
//! 4), a full owner reclaims its idle sessions' stored outputs before a
//! write is refused (finding 1), and the running counts always equal a
//! recount (finding 5).

use super::*;

const B: Owner = Owner::Certificate([7; 32]);

fn at(id: u128, seq: u64, acked_below: u64) -> SessionRef {
    SessionRef {
        id: SessionId(id),
        seq,
        acked_below,
    }
}

/// Finding 4: every peer's in-process sessions are one owner,
/// [`Owner::Local`], so the per-owner cap and byte bound would bound the
/// embedder cluster-wide; only the table's bound and the per-session
/// byte bound apply to it.
#[test]
fn local_sessions_are_exempt_from_the_per_owner_caps() {
    let mut s = Sessions::default();
    s.advance(1_000);
    for id in 1..=5u128 {
        s.open_bounded(SessionId(id), Owner::Local, 600_000, 100, 3)
            .unwrap();
    }
    assert_eq!(s.owner_sessions(Owner::Local), 5, "local sessions evicted");
    assert_eq!(s.counters().evicted, 0);
    let bounds = ReplyBounds {
        session_bytes: 1 << 20,
        owner_bytes: 1_000,
    };
    for id in 1..=3u128 {
        assert_eq!(s.check(at(id, 1, 1), Owner::Local), Dedup::New);
        assert_eq!(s.admits(at(id, 1, 1), Owner::Local, bounds), Ok(()));
        assert!(
            s.record_bounded(
                at(id, 1, 1),
                StoredReply::Ok(bytes::Bytes::from(vec![1; 900])),
                bounds
            ),
            "a local output dropped for the owner bound"
        );
    }
    // The per-session bound still applies.
    let tight = ReplyBounds {
        session_bytes: 1_000,
        owner_bytes: 1_000,
    };
    assert_eq!(s.check(at(1, 2, 1), Owner::Local), Dedup::New);
    assert_eq!(
        s.admits(at(1, 2, 1), Owner::Local, tight),
        Err(BytesFull::Session)
    );
}

/// Finding 1: session 1 of `B` holds the owner's bound and goes idle (a
/// crashed client); session 2's writes are applied, the idle session's
/// outputs turning into [`StoredReply::Dropped`] markers (its retries say
/// applied, output not kept), idle-longest first.
#[test]
fn a_full_owner_reclaims_its_idle_sessions_outputs_before_refusing() {
    let bounds = ReplyBounds {
        session_bytes: 1 << 20,
        owner_bytes: 3 * (REPLY_OVERHEAD_BYTES + 1_000),
    };
    let mut s = Sessions::default();
    s.advance(1_000);
    for id in 1..=3u128 {
        s.open_bounded(SessionId(id), B, 600_000, 100, 10).unwrap();
    }
    // Session 2 writes first (idle the longest), then session 1.
    s.advance(2_000);
    assert_eq!(s.check(at(2, 1, 1), B), Dedup::New);
    assert!(s.record_bounded(
        at(2, 1, 1),
        StoredReply::Ok(bytes::Bytes::from(vec![2; 1_000])),
        bounds
    ));
    s.advance(3_000);
    for seq in 1..=2 {
        assert_eq!(s.check(at(1, seq, 1), B), Dedup::New);
        assert!(s.record_bounded(
            at(1, seq, 1),
            StoredReply::Ok(bytes::Bytes::from(vec![1; 1_000])),
            bounds
        ));
    }
    assert_eq!(s.owner_reply_bytes(B), bounds.owner_bytes);
    // Session 3 writes: room is made from session 2 (idle the longest).
    s.advance(4_000);
    assert_eq!(s.check(at(3, 1, 1), B), Dedup::New);
    assert_eq!(s.admits(at(3, 1, 1), B, bounds), Ok(()));
    assert!(s.record_bounded(
        at(3, 1, 1),
        StoredReply::Ok(bytes::Bytes::from(vec![3; 500])),
        bounds
    ));
    assert_eq!(
        s.check(at(2, 1, 1), B),
        Dedup::Duplicate(StoredReply::Dropped { len: 1_000 })
    );
    assert_eq!(
        s.check(at(1, 1, 1), B),
        Dedup::Duplicate(StoredReply::Ok(bytes::Bytes::from(vec![1; 1_000]))),
        "session 1 was used more recently than session 2"
    );
    assert!(s.owner_reply_bytes(B) <= bounds.owner_bytes);
    let mut back = s.clone();
    back.recount();
    assert_eq!(back.owner_reply_bytes(B), s.owner_reply_bytes(B));
    assert_eq!(back.stored_reply_bytes(), s.stored_reply_bytes());
    // Session 3 keeps writing, acknowledging nothing (a caller holding
    // its answers), and neither session 1 nor 2 ever writes again: session
    // 1's outputs (no longer used than session 2, smaller id) are
    // reclaimed in write order while session 3's outputs are kept.
    for seq in 2..=5 {
        assert_eq!(s.check(at(3, seq, 1), B), Dedup::New);
        assert_eq!(s.admits(at(3, seq, 1), B, bounds), Ok(()), "write {seq}");
        assert!(
            s.record_bounded(
                at(3, seq, 1),
                StoredReply::Ok(bytes::Bytes::from(vec![3; 500])),
                bounds
            ),
            "write {seq}'s output dropped"
        );
        assert!(s.owner_reply_bytes(B) <= bounds.owner_bytes);
    }
    for seq in 1..=2 {
        assert_eq!(
            s.check(at(1, seq, 1), B),
            Dedup::Duplicate(StoredReply::Dropped { len: 1_000 }),
            "session 1's write {seq}"
        );
    }
    // Nothing reclaimable is left (markers only) and no room for a
    // handler error's reply (`MIN_REPLY_BYTES`, d595b81): the next write is
    // refused, not applied, and reclaims nothing.
    let held = s.owner_reply_bytes(B);
    assert!(held + MIN_REPLY_BYTES > bounds.owner_bytes);
    assert_eq!(s.check(at(3, 6, 1), B), Dedup::New);
    assert_eq!(
        s.admits(at(3, 6, 1), B, bounds),
        Err(BytesFull::Owner { elsewhere: true })
    );
    assert_eq!(s.owner_reply_bytes(B), held);
    let mut back = s.clone();
    back.recount();
    assert_eq!(back.owner_reply_bytes(B), s.owner_reply_bytes(B));
    assert_eq!(back.stored_reply_bytes(), s.stored_reply_bytes());
}

/// Reclaiming that cannot make room reclaims nothing: an output larger
/// than all the owner's reclaimable outputs together is not kept, and the
/// other sessions keep theirs (else they would be lost for nothing).
#[test]
fn an_output_that_cannot_fit_reclaims_nothing() {
    let bounds = ReplyBounds {
        session_bytes: 1 << 20,
        owner_bytes: 2_000,
    };
    let mut s = Sessions::default();
    s.advance(1_000);
    for id in 1..=2u128 {
        s.open_bounded(SessionId(id), B, 600_000, 100, 10).unwrap();
    }
    assert_eq!(s.check(at(1, 1, 1), B), Dedup::New);
    assert!(s.record_bounded(
        at(1, 1, 1),
        StoredReply::Ok(bytes::Bytes::from(vec![1; 1_000])),
        bounds
    ));
    s.advance(2_000);
    assert_eq!(s.check(at(2, 1, 1), B), Dedup::New);
    assert_eq!(s.admits(at(2, 1, 1), B, bounds), Ok(()));
    assert!(!s.record_bounded(
        at(2, 1, 1),
        StoredReply::Ok(bytes::Bytes::from(vec![2; 5_000])),
        bounds
    ));
    assert_eq!(
        s.check(at(1, 1, 1), B),
        Dedup::Duplicate(StoredReply::Ok(bytes::Bytes::from(vec![1; 1_000]))),
        "an output reclaimed for nothing"
    );
    assert_eq!(s.owner_reply_bytes(B), 2 * REPLY_OVERHEAD_BYTES + 1_000);
}

/// One step of [`the_running_counts_always_equal_a_recount`].
#[derive(Clone, Debug)]
enum Step {
    Open {
        id: u128,
        owner: usize,
        bounded: bool,
    },
    Write {
        id: u128,
        owner: usize,
        seq: u64,
        ack: u64,
        out: usize,
        handler: bool,
        bounded: bool,
    },
    Advance {
        ms: u64,
    },
    Close {
        id: u128,
        owner: usize,
    },
}

const OWNERS: [Owner; 3] = [Owner::Local, B, Owner::Certificate([9; 32])];

fn step() -> impl proptest::strategy::Strategy<Value = Step> {
    use proptest::prelude::*;
    prop_oneof![
        2 => (1..6u128, 0..3usize, any::<bool>()).prop_map(|(id, owner, bounded)| Step::Open {
            id,
            owner,
            bounded
        }),
        // Bounded opens and writes of owner B, acknowledging nothing: its
        // sessions fill its bound, so reclaims happen (review s58 #4).
        1 => (1..6u128).prop_map(|id| Step::Open {
            id,
            owner: 1,
            bounded: true
        }),
        4 => (1..6u128, 1..12u64, 100..900usize).prop_map(|(id, seq, out)| Step::Write {
            id,
            owner: 1,
            seq,
            ack: 1,
            out,
            handler: false,
            bounded: true,
        }),
        3 => (
            1..6u128,
            0..3usize,
            1..12u64,
            0..12u64,
            0..700usize,
            any::<bool>(),
            any::<bool>()
        )
            .prop_map(|(id, owner, seq, ack, out, handler, bounded)| Step::Write {
                id,
                owner,
                seq,
                ack: ack.min(seq),
                out,
                handler,
                bounded,
            }),
        1 => (0..200_000u64).prop_map(|ms| Step::Advance { ms }),
        1 => (1..6u128, 0..3usize).prop_map(|(id, owner)| Step::Close { id, owner }),
    ]
}

/// Stored outputs reclaimed into markers, in every session but `id`.
fn dropped_elsewhere(s: &Sessions, id: SessionId) -> usize {
    s.table
        .iter()
        .filter(|(other, _)| **other != id)
        .flat_map(|(_, st)| st.replies.values())
        .filter(|r| matches!(r, StoredReply::Dropped { .. }))
        .count()
}

/// Review s57 (#5), s58 (#4): after every step of a random sequence of
/// opens (both rules), writes (bounded or not, outputs and handler errors,
/// acknowledgements, reclaims), expiries and closes, the whole table
/// equals its recount (every session's bytes and the derived counts a
/// restore rebuilds), and while every write was bounded, every session
/// and every certificate owner stays within its bound. Reclaims must
/// happen over the run (the strategy favours one owner filling its
/// bound), or the test shows nothing of them.
#[test]
fn the_running_counts_always_equal_a_recount() {
    use proptest::test_runner::{Config, TestRunner};
    use std::sync::atomic::{AtomicU64, Ordering};
    let reclaims = AtomicU64::new(0);
    let mut runner = TestRunner::new(Config::with_cases(64));
    let strategy = proptest::collection::vec(step(), 1..60);
    let run = runner.run(&strategy, |steps| {
        let bounds = ReplyBounds {
            session_bytes: 2_000,
            owner_bytes: 3_000,
        };
        let mut s = Sessions::default();
        let mut now = 1_000;
        let mut all_bounded = true;
        s.advance(now);
        for step in steps {
            match step {
                Step::Open { id, owner, bounded } => {
                    let (id, owner) = (SessionId(id), OWNERS[owner]);
                    let _ = if bounded {
                        s.open_bounded(id, owner, 300_000, 4, 2)
                    } else {
                        s.open(id, owner, 300_000, 4, Eviction::FairShare)
                    };
                }
                Step::Write {
                    id,
                    owner,
                    seq,
                    ack,
                    out,
                    handler,
                    bounded,
                } => {
                    let (r, owner) = (at(id, seq, ack), OWNERS[owner]);
                    if s.check(r, owner) == Dedup::New {
                        let reply = if handler {
                            StoredReply::Handler("e".repeat(out))
                        } else {
                            StoredReply::Ok(bytes::Bytes::from(vec![0; out]))
                        };
                        if !bounded {
                            all_bounded = false;
                            s.record(r, reply);
                        } else {
                            let before = dropped_elsewhere(&s, r.id);
                            if s.admits(r, owner, bounds).is_ok() {
                                s.record_bounded(r, reply, bounds);
                            }
                            let after = dropped_elsewhere(&s, r.id);
                            reclaims
                                .fetch_add(after.saturating_sub(before) as u64, Ordering::Relaxed);
                        }
                    }
                }
                Step::Advance { ms } => {
                    now += ms;
                    s.advance(now);
                }
                Step::Close { id, owner } => {
                    let _ = s.close(SessionId(id), OWNERS[owner]);
                }
            }
            let mut back = s.clone();
            back.recount();
            proptest::prop_assert_eq!(&back, &s);
            proptest::prop_assert_eq!(back.stored_reply_bytes(), s.stored_reply_bytes());
            proptest::prop_assert_eq!(back.stored_replies(), s.stored_replies());
            for owner in OWNERS {
                proptest::prop_assert_eq!(
                    back.owner_reply_bytes(owner),
                    s.owner_reply_bytes(owner)
                );
                proptest::prop_assert_eq!(back.owner_sessions(owner), s.owner_sessions(owner));
            }
            let summed: u64 = OWNERS.iter().map(|&o| s.owner_reply_bytes(o)).sum();
            proptest::prop_assert_eq!(summed, s.stored_reply_bytes());
            if all_bounded {
                for (id, st) in &s.table {
                    proptest::prop_assert!(
                        st.bytes <= bounds.session_bytes,
                        "session {id:?} holds {} bytes over its bound",
                        st.bytes
                    );
                }
                for owner in &OWNERS[1..] {
                    proptest::prop_assert!(s.owner_reply_bytes(*owner) <= bounds.owner_bytes);
                }
            }
        }
        Ok(())
    });
    if let Err(e) = run {
        panic!("{e}");
    }
    assert!(
        reclaims.load(Ordering::Relaxed) > 0,
        "no reclaim over the run: the test shows nothing of them"
    );
}

/// Review s57 (#6): a write is admitted only with room, in its session
/// and its owner, for a handler error's reply ([`MIN_REPLY_BYTES`]), so a
/// handler error is always stored as it came (its retry answers the same
/// error, never an `AnswerTooLarge` marker).
#[test]
fn a_write_is_admitted_only_with_room_for_a_handler_error() {
    use crate::runtime::session::MIN_REPLY_BYTES;
    for (session_bytes, owner_bytes, bound) in [
        (1_000, 1 << 20, BytesFull::Session),
        (1 << 20, 1_000, BytesFull::Owner { elsewhere: false }),
    ] {
        let bounds = ReplyBounds {
            session_bytes,
            owner_bytes,
        };
        let mut s = Sessions::default();
        s.advance(1_000);
        s.open_bounded(SessionId(1), B, 600_000, 100, 3).unwrap();
        // Room left: one byte short of a handler error's reply, more than
        // a reply of no output.
        let out = 1_000 - (MIN_REPLY_BYTES - 1) - REPLY_OVERHEAD_BYTES;
        assert_eq!(s.check(at(1, 1, 1), B), Dedup::New);
        assert_eq!(s.admits(at(1, 1, 1), B, bounds), Ok(()));
        assert!(s.record_bounded(
            at(1, 1, 1),
            StoredReply::Ok(bytes::Bytes::from(vec![1; out as usize])),
            bounds
        ));
        assert_eq!(s.check(at(1, 2, 1), B), Dedup::New);
        assert_eq!(
            s.admits(at(1, 2, 1), B, bounds),
            Err(bound),
            "admitted without room for a handler error's reply"
        );
        // One byte less held: admitted, and a handler error is kept.
        let mut s = Sessions::default();
        s.advance(1_000);
        s.open_bounded(SessionId(1), B, 600_000, 100, 3).unwrap();
        assert_eq!(s.check(at(1, 1, 1), B), Dedup::New);
        assert_eq!(s.admits(at(1, 1, 1), B, bounds), Ok(()));
        assert!(s.record_bounded(
            at(1, 1, 1),
            StoredReply::Ok(bytes::Bytes::from(vec![1; out as usize - 1])),
            bounds
        ));
        assert_eq!(s.check(at(1, 2, 1), B), Dedup::New);
        assert_eq!(s.admits(at(1, 2, 1), B, bounds), Ok(()));
        let long = "e".repeat(2 * STORED_MESSAGE_BYTES);
        assert!(
            s.record_bounded(at(1, 2, 1), StoredReply::Handler(long), bounds),
            "an admitted write's handler error was not kept"
        );
    }
}

/// Rule 9: within a session the reclaim takes its stored outputs in write
/// order, oldest first, and stops once there is room: the newest outputs,
/// the ones a client is likeliest still to retry, are kept longest.
/// Mutant M161 (teeth s61): the newest taken first survived every
/// `runtime::` test (`a_full_owner_reclaims_its_idle_sessions_outputs_
/// before_refusing` reclaims all of an idle session's outputs, in either
/// order).
#[test]
fn the_reclaim_takes_a_sessions_outputs_oldest_first_and_only_what_is_needed() {
    let bounds = ReplyBounds {
        session_bytes: 1 << 20,
        owner_bytes: 3 * (REPLY_OVERHEAD_BYTES + 1_000),
    };
    let mut s = Sessions::default();
    s.advance(1_000);
    for id in 1..=2u128 {
        s.open_bounded(SessionId(id), B, 600_000, 100, 10).unwrap();
    }
    s.advance(2_000);
    for seq in 1..=3 {
        assert_eq!(s.check(at(1, seq, 1), B), Dedup::New);
        assert!(s.record_bounded(
            at(1, seq, 1),
            StoredReply::Ok(bytes::Bytes::from(vec![seq as u8; 1_000])),
            bounds
        ));
    }
    assert_eq!(s.owner_reply_bytes(B), bounds.owner_bytes);
    // Session 2 writes: one output of session 1 makes room for it.
    s.advance(3_000);
    assert_eq!(s.check(at(2, 1, 1), B), Dedup::New);
    assert_eq!(s.admits(at(2, 1, 1), B, bounds), Ok(()));
    assert!(s.record_bounded(
        at(2, 1, 1),
        StoredReply::Ok(bytes::Bytes::from(vec![7; 500])),
        bounds
    ));
    // Each of session 1's writes: its output's first byte, or `None` once
    // reclaimed.
    let kept: Vec<Option<u8>> = (1..=3)
        .map(|seq| match s.check(at(1, seq, 1), B) {
            Dedup::Duplicate(StoredReply::Ok(out)) => out.first().copied(),
            Dedup::Duplicate(StoredReply::Dropped { len: 1_000 }) => None,
            other => panic!("session 1's write {seq}: {other:?}"),
        })
        .collect();
    assert_eq!(
        kept,
        [None, Some(2), Some(3)],
        "session 1's outputs after the reclaim (None: dropped)"
    );
    assert!(s.owner_reply_bytes(B) <= bounds.owner_bytes);
}

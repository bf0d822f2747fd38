//! Tests of the session table (`session.rs`): dedup, acknowledgements,
//! expiry, eviction under both rules of rule 8, the encodings.

use super::*;

/// A copy of `len` bytes, written through the runtime's buffer
/// (`onto`) or into one of its own.
fn copy_of(len: usize, onto: bool) -> crate::state_machine::SnapshotCopy {
    use crate::state_machine::SnapshotCopy;
    let state: Vec<u8> = (0..len).map(|i| i as u8).collect();
    if onto {
        SnapshotCopy::writing(move |buf| {
            buf.extend_from_slice(&state);
            Ok(())
        })
    } else {
        SnapshotCopy::new(move || Ok(state))
    }
}

#[test]
fn a_copied_snapshot_is_the_bytes_of_the_owned_one_whatever_the_hint() {
    let mut sessions = opened();
    assert_eq!(sessions.check(w(1, 1), A), Dedup::New);
    sessions.record(w(1, 1), StoredReply::Ok(bytes::Bytes::from(vec![9, 8])));
    // Lengths on both sides of each varint width, hints right and
    // wrong, reused buffers too small and large enough.
    for len in [0, 1, 127, 128, 300, 16_383, 16_384, 70_000] {
        let state: Vec<u8> = (0..len).map(|i| i as u8).collect();
        let want = postcard::to_allocvec(&AppSnapshot {
            sessions: sessions.clone(),
            state,
            index: 300,
        })
        .expect("encodes");
        for hint in [0, 1, 127, 128, 16_384, len, 1 << 30] {
            for onto in [true, false] {
                for buf in [Vec::new(), vec![5; 3], Vec::with_capacity(len + 4096)] {
                    let got = CopiedSnapshot {
                        copy: copy_of(len, onto),
                        sessions: sessions.clone(),
                        index: 300,
                        room: buf,
                    }
                    .encode(hint)
                    .expect("encodes");
                    assert!(got == want, "len {len} hint {hint} onto {onto}");
                }
            }
        }
    }
}

#[test]
fn a_copied_snapshot_is_serialized_into_the_buffer_it_is_given() {
    let len = 100_000;
    let buf = Vec::with_capacity(2 * len);
    let at = buf.as_ptr();
    let got = CopiedSnapshot {
        copy: copy_of(len, true),
        sessions: opened(),
        index: 9,
        room: buf,
    }
    .encode(len)
    .expect("encodes");
    assert_eq!(got.as_ptr(), at, "the state went into a buffer of its own");
    assert_eq!(got.capacity(), 2 * len);
}

#[test]
fn a_copy_that_removes_bytes_it_did_not_write_is_an_error() {
    let copy = crate::state_machine::SnapshotCopy::writing(|buf| {
        buf.clear();
        Ok(())
    });
    let r = CopiedSnapshot {
        copy,
        sessions: opened(),
        index: 9,
        room: Vec::new(),
    }
    .encode(5);
    assert!(r.is_err(), "{r:?}");
}

#[test]
fn a_snapshot_written_in_place_decodes_as_the_owned_one() {
    let mut sessions = opened();
    assert_eq!(sessions.check(w(1, 1), A), Dedup::New);
    sessions.record(w(1, 1), StoredReply::Ok(bytes::Bytes::from(vec![9, 8])));
    let owned = AppSnapshot {
        sessions: sessions.clone(),
        state: vec![1, 2, 3, 250],
        index: 77,
    };
    let bytes = encode_app_snapshot(&sessions, 77, Vec::new(), 0, |buf| {
        buf.extend_from_slice(&[1, 2, 3, 250]);
        Ok(())
    })
    .expect("encodes");
    assert_eq!(bytes, postcard::to_allocvec(&owned).expect("encodes"));
    // (`stored` is not in the encoding: a restore recounts it.)
    let back: AppSnapshot = postcard::from_bytes(&bytes).expect("decodes");
    assert_eq!((back.state, back.index), (owned.state, owned.index));
}

const A: Owner = Owner::Local;
const LRU: Eviction = Eviction::LeastRecentlyUsed;
const B: Owner = Owner::Certificate([7; 32]);

fn w(seq: u64, acked_below: u64) -> SessionRef {
    SessionRef {
        id: SessionId(7),
        seq,
        acked_below,
    }
}

/// The owned operation a borrowed one stands for.
fn owned(op: OpRef<'_>) -> Op {
    match op {
        OpRef::Write { command } => Op::Write {
            command: command.to_vec(),
        },
        OpRef::SessionWrite {
            session,
            owner,
            command,
        } => Op::SessionWrite {
            session,
            owner,
            command: command.to_vec(),
        },
        OpRef::OpenSession {
            id,
            owner,
            ttl_ms,
            max_sessions,
        } => Op::OpenSession {
            id,
            owner,
            ttl_ms,
            max_sessions,
        },
        OpRef::CloseSession { id, owner } => Op::CloseSession { id, owner },
        OpRef::OpenSessionFair {
            id,
            owner,
            ttl_ms,
            max_sessions,
        } => Op::OpenSessionFair {
            id,
            owner,
            ttl_ms,
            max_sessions,
        },
        OpRef::SessionWriteBounded {
            session,
            owner,
            bounds,
            command,
        } => Op::SessionWriteBounded {
            session,
            owner,
            bounds,
            command: command.to_vec(),
        },
        OpRef::OpenSessionBounded {
            id,
            owner,
            ttl_ms,
            max_sessions,
            max_owner_sessions,
        } => Op::OpenSessionBounded {
            id,
            owner,
            ttl_ms,
            max_sessions,
            max_owner_sessions,
        },
    }
}

#[test]
fn a_borrowed_envelope_decodes_every_owned_encoding_without_copying_the_command() {
    let ops = [
        Op::Write {
            command: vec![1, 2, 3],
        },
        Op::Write {
            command: Vec::new(),
        },
        Op::SessionWrite {
            session: w(5, 3),
            owner: B,
            command: vec![9; 300],
        },
        Op::OpenSession {
            id: SessionId(u128::MAX - 1),
            owner: A,
            ttl_ms: 77,
            max_sessions: 12,
        },
        Op::CloseSession {
            id: SessionId(9),
            owner: B,
        },
        Op::OpenSessionFair {
            id: SessionId(3),
            owner: B,
            ttl_ms: 5,
            max_sessions: u64::MAX,
        },
        Op::SessionWriteBounded {
            session: w(6, 2),
            owner: B,
            bounds: ReplyBounds {
                session_bytes: 4096,
                owner_bytes: u64::MAX,
            },
            command: vec![8; 200],
        },
        Op::OpenSessionBounded {
            id: SessionId(4),
            owner: A,
            ttl_ms: 6,
            max_sessions: 10,
            max_owner_sessions: 3,
        },
    ];
    for op in ops {
        let envelope = Envelope {
            stamp_ms: 1_700_000_000_123,
            op: op.clone(),
        };
        let bytes = postcard::to_allocvec(&envelope).expect("encodes");
        let borrowed: EnvelopeRef<'_> = postcard::from_bytes(&bytes).expect("decodes");
        assert_eq!(borrowed.stamp_ms, envelope.stamp_ms);
        if let OpRef::Write { command }
        | OpRef::SessionWrite { command, .. }
        | OpRef::SessionWriteBounded { command, .. } = &borrowed.op
            && !command.is_empty()
        {
            assert!(
                bytes.as_ptr_range().contains(&command.as_ptr()),
                "the command is borrowed from the payload"
            );
        }
        assert_eq!(owned(borrowed.op), op);
    }
}

fn opened() -> Sessions {
    let mut s = Sessions::default();
    s.advance(1_000);
    s.open(SessionId(7), A, SESSION_TTL_MS, 100, LRU).unwrap();
    s
}

#[test]
fn duplicates_are_answered_in_any_order_and_acks_drop_replies() {
    let mut s = opened();
    assert_eq!(s.check(w(1, 1), A), Dedup::New);
    s.record(w(1, 1), StoredReply::Ok(bytes::Bytes::from(vec![1])));
    assert_eq!(
        s.check(w(1, 1), A),
        Dedup::Duplicate(StoredReply::Ok(bytes::Bytes::from(vec![1])))
    );
    // Concurrent writes of one client may apply out of order.
    assert_eq!(s.check(w(3, 1), A), Dedup::New);
    s.record(w(3, 1), StoredReply::Ok(bytes::Bytes::from(vec![3])));
    assert_eq!(s.check(w(2, 1), A), Dedup::New);
    s.record(w(2, 1), StoredReply::Ok(bytes::Bytes::from(vec![2])));
    assert_eq!(s.stored_replies(), 3);
    // The client saw 1..=3 answered: write 4 acknowledges them.
    assert_eq!(s.check(w(4, 4), A), Dedup::New);
    assert_eq!(s.stored_replies(), 0);
    // Every acknowledged write is stale, the last one (3) included: its
    // reply is gone, so a late copy must not apply again.
    for seq in 1..=3 {
        assert_eq!(s.check(w(seq, 1), A), Dedup::Stale, "write {seq}");
    }
}

/// An acknowledgement drops the replies *below* it only: the reply of the
/// write it names is the one its client still waits for, so a retry of
/// that write is answered from it, not applied again (thesis §6.3;
/// mutation round, stop 45: dropping replies up to and including the
/// acknowledgement survived every session and apply test).
#[test]
fn the_reply_of_the_write_an_acknowledgement_names_is_kept_for_its_retry() {
    let mut s = opened();
    for seq in 1..=2 {
        assert_eq!(s.check(w(seq, 1), A), Dedup::New);
        s.record(
            w(seq, 1),
            StoredReply::Ok(bytes::Bytes::from(vec![seq as u8])),
        );
    }
    // The client saw write 1 answered, not yet write 2: write 3 says so.
    assert_eq!(s.check(w(3, 2), A), Dedup::New);
    s.record(w(3, 2), StoredReply::Ok(bytes::Bytes::from(vec![3])));
    assert_eq!(
        s.check(w(2, 2), A),
        Dedup::Duplicate(StoredReply::Ok(bytes::Bytes::from(vec![2]))),
        "a retry of write 2, acknowledged below 2, would be applied again"
    );
    assert_eq!(s.stored_replies(), 2, "the replies of writes 2 and 3");
}

/// The first stamp a table sees sets replicated time at once (there is
/// nothing to jump from); only later stamps are capped per entry
/// (mutation round, stop 45: capping the first one too survived, which
/// would leave replicated time decades behind the leaders' clocks).
#[test]
fn the_first_stamp_sets_replicated_time_at_once() {
    let mut s = Sessions::default();
    let wall = 1_750_000_000_000;
    s.advance(wall);
    assert_eq!(s.now_ms(), wall, "the first stamp was capped");
    s.advance(wall + 10 * MAX_STAMP_STEP_MS);
    assert_eq!(s.now_ms(), wall + MAX_STAMP_STEP_MS);
}

#[test]
fn a_write_cannot_acknowledge_itself_and_the_window_is_never_overrun() {
    let mut s = opened();
    assert_eq!(s.check(w(5, 99), A), Dedup::New);
    s.record(w(5, 99), StoredReply::Ok(bytes::Bytes::from(vec![])));
    assert_eq!(
        s.check(w(5, 99), A),
        Dedup::Duplicate(StoredReply::Ok(bytes::Bytes::from(vec![])))
    );
    let mut s = opened();
    for seq in 1..=SESSION_WINDOW as u64 {
        assert_eq!(s.check(w(seq, 1), A), Dedup::New);
        s.record(w(seq, 1), StoredReply::Ok(bytes::Bytes::from(vec![])));
    }
    let next = SESSION_WINDOW as u64 + 1;
    assert_eq!(s.check(w(next, 1), A), Dedup::WindowFull);
    // Nothing unacknowledged was forgotten.
    assert!(matches!(s.check(w(1, 1), A), Dedup::Duplicate(_)));
}

#[test]
fn unknown_and_foreign_sessions_are_refused_and_change_nothing() {
    let mut s = Sessions::default();
    assert_eq!(s.check(w(1, 1), A), Dedup::Unknown);
    let mut s = opened();
    s.check(w(1, 1), A);
    s.record(w(1, 1), StoredReply::Ok(bytes::Bytes::from(vec![1])));
    let before = s.clone();
    // Another identity, even acknowledging everything, changes nothing.
    assert_eq!(s.check(w(1, 50), B), Dedup::Foreign);
    assert_eq!(s.check(w(2, 50), B), Dedup::Foreign);
    assert_eq!(s.close(SessionId(7), B), Err(SessionRefusal::Foreign));
    assert_eq!(s, before);
    assert!(matches!(s.check(w(1, 1), A), Dedup::Duplicate(_)));
    assert_eq!(s.close(SessionId(7), A), Ok(()));
    assert_eq!(s.check(w(1, 1), A), Dedup::Unknown);
    assert_eq!(s.stored_replies(), 0);
}

#[test]
fn sessions_expire_by_replicated_time_only_and_time_never_jumps() {
    // Time advances by at most one step per entry.
    fn walk(s: &mut Sessions, to: u64) {
        while s.now_ms() < to {
            s.advance(to);
        }
    }
    let mut s = opened();
    walk(&mut s, 1_000 + SESSION_TTL_MS - 1);
    assert_eq!(s.len(), 1);
    // Sweeps run once per second of replicated time.
    walk(&mut s, 1_000 + SESSION_TTL_MS + 1_000);
    assert!(s.is_empty());
    assert_eq!(s.counters().expired, 1);
    // Time never goes back, whatever a stamp says.
    let now = s.now_ms();
    s.advance(5);
    assert_eq!(s.now_ms(), now);
    // A stamp a day ahead moves time by one step only.
    s.advance(now + 24 * SESSION_TTL_MS);
    assert_eq!(s.now_ms(), now + MAX_STAMP_STEP_MS);
}

/// Rule 7 at its boundary: a session unused for exactly its
/// time-to-live of replicated time is dropped by the sweep that reaches
/// that time, and one used since is not.
#[test]
fn a_session_expires_at_the_sweep_that_reaches_its_time_to_live() {
    let mut s = Sessions::default();
    s.advance(1_000);
    s.open(SessionId(1), A, 2_000, 100, LRU).unwrap();
    s.open(SessionId(2), A, 2_000, 100, LRU).unwrap();
    s.advance(2_000);
    let r = SessionRef {
        id: SessionId(2),
        seq: 1,
        acked_below: 1,
    };
    assert_eq!(s.check(r, A), Dedup::New);
    s.record(r, StoredReply::Ok(bytes::Bytes::from(vec![])));
    assert_eq!(s.len(), 2, "a sweep before the time-to-live");
    s.advance(3_000);
    assert_eq!(s.now_ms(), 3_000);
    let one = SessionRef {
        id: SessionId(1),
        ..r
    };
    assert_eq!(s.check(one, A), Dedup::Unknown, "session 1 expired");
    assert_eq!(s.counters().expired, 1);
    // Answering a duplicate is a use too.
    assert!(matches!(s.check(r, A), Dedup::Duplicate(_)));
    s.advance(4_000);
    assert_eq!(s.len(), 1);
    s.advance(5_000);
    assert!(s.is_empty(), "session 2 expired");
}

/// A retried write answered from the table (a duplicate) is a use of its
/// session: the session's idle time starts again at the duplicate's
/// replicated time, to the millisecond (mutation round, stop 49, M16:
/// dropping the refresh on the duplicate path was named a survivor).
#[test]
fn a_duplicate_restarts_the_idle_time_at_its_own_stamp() {
    // Session 7 (time-to-live 2 s) writes at 1 s; the write is retried at
    // 2.5 s; then the next write comes at `next_ms`.
    fn next_write_at(next_ms: u64) -> Dedup {
        let mut s = Sessions::default();
        s.advance(1_000);
        s.open(SessionId(7), A, 2_000, 100, LRU).unwrap();
        assert_eq!(s.check(w(1, 1), A), Dedup::New);
        s.record(w(1, 1), StoredReply::Ok(bytes::Bytes::from(vec![1])));
        s.advance(2_500);
        assert_eq!(
            s.check(w(1, 1), A),
            Dedup::Duplicate(StoredReply::Ok(bytes::Bytes::from(vec![1])))
        );
        s.advance(next_ms);
        s.check(w(2, 1), A)
    }
    // Idle since the duplicate (2.5 s): alive until 4.5 s, not after.
    assert_eq!(
        next_write_at(4_499),
        Dedup::New,
        "the session expired 1,999 ms after a duplicate used it"
    );
    assert_eq!(
        next_write_at(4_500),
        Dedup::Unknown,
        "the session outlived its time-to-live after the duplicate"
    );
}

#[test]
fn a_full_table_evicts_the_longest_idle_sessions() {
    let mut s = Sessions::default();
    s.advance(1_000);
    for i in 0..3u128 {
        s.advance(2_000 + i as u64 * 10);
        s.open(SessionId(i), A, SESSION_TTL_MS, 3, LRU).unwrap();
    }
    // Session 0 is used again: session 1 is now the longest idle.
    s.advance(3_000);
    let r = SessionRef {
        id: SessionId(0),
        seq: 1,
        acked_below: 1,
    };
    assert_eq!(s.check(r, A), Dedup::New);
    s.record(r, StoredReply::Ok(bytes::Bytes::from(vec![])));
    s.open(SessionId(9), A, SESSION_TTL_MS, 3, LRU).unwrap();
    assert_eq!(s.len(), 3);
    assert_eq!(s.counters().evicted, 1);
    let one = SessionRef {
        id: SessionId(1),
        ..r
    };
    assert_eq!(s.check(one, A), Dedup::Unknown);
    assert!(matches!(s.check(r, A), Dedup::Duplicate(_)));
    assert_eq!(
        s.open(SessionId(9), A, SESSION_TTL_MS, 3, LRU),
        Err(SessionRefusal::IdInUse)
    );
}

#[test]
fn the_table_survives_a_snapshot_round_trip() {
    let mut s = opened();
    s.check(w(1, 1), A);
    s.record(w(1, 1), StoredReply::Handler("boom".into()));
    let bytes = postcard::to_allocvec(&s).unwrap();
    let mut back: Sessions = postcard::from_bytes(&bytes).unwrap();
    back.recount();
    assert_eq!(back.stored_replies(), 1);
    assert_eq!(back.now_ms(), s.now_ms());
    assert!(matches!(back.check(w(1, 1), A), Dedup::Duplicate(_)));
}

const C: Owner = Owner::Certificate([9; 32]);
const FAIR: Eviction = Eviction::FairShare;

/// A write of session `id` that stores a reply (and uses the session).
fn write_in(s: &mut Sessions, id: u128, owner: Owner, seq: u64) {
    let r = SessionRef {
        id: SessionId(id),
        seq,
        acked_below: 1,
    };
    assert_eq!(s.check(r, owner), Dedup::New);
    s.record(r, StoredReply::Ok(bytes::Bytes::from(vec![seq as u8])));
}

/// Whether session `id`'s write `seq` is still answered from its reply.
fn answered(s: &mut Sessions, id: u128, owner: Owner, seq: u64) -> bool {
    let r = SessionRef {
        id: SessionId(id),
        seq,
        acked_below: 1,
    };
    matches!(s.check(r, owner), Dedup::Duplicate(_))
}

/// Owner A opens a session and writes; owner B then opens sessions, many
/// times the table's bound, each more recently used than A's: under
/// `rule`, what happens to A's session and to the table.
fn a_flood_of_opens_by_b(rule: Eviction) -> Sessions {
    let mut s = Sessions::default();
    s.advance(1_000);
    s.open(SessionId(1), A, SESSION_TTL_MS, 4, rule).unwrap();
    write_in(&mut s, 1, A, 1);
    for i in 0..12u128 {
        s.advance(2_000 + i as u64 * 10);
        s.open(SessionId(100 + i), B, SESSION_TTL_MS, 4, rule)
            .unwrap();
    }
    assert_eq!(s.len(), 4);
    assert_eq!(s.counters().evicted, 9);
    s
}

/// Rule 8, fair share: an owner's opens in a full table evict that
/// owner's own sessions once it holds the most, never those of an owner
/// at or below its share, however long they have been idle.
#[test]
fn a_full_table_evicts_from_the_owner_holding_the_most_sessions() {
    let mut s = a_flood_of_opens_by_b(FAIR);
    assert!(
        answered(&mut s, 1, A, 1),
        "A's session and its reply survive"
    );
    // B kept its three most recent sessions.
    for id in 100..109u128 {
        assert!(!s.table.contains_key(&SessionId(id)), "B's session {id}");
    }
    for id in 109..112u128 {
        assert!(s.table.contains_key(&SessionId(id)), "B's session {id}");
    }
    // Three owners, max 6: A holds 1, B 3, C opens; the table is full at
    // C's third open (1 + 3 + 2): C counts 3 with its new one, as B does,
    // so the longest idle session of B's and C's goes (C's first), and A's
    // (idle the longest of all) stays.
    let mut s = Sessions::default();
    s.advance(1_000);
    s.open(SessionId(1), A, SESSION_TTL_MS, 6, FAIR).unwrap();
    for (i, (id, owner)) in [(10, B), (11, B), (20, C), (12, B), (21, C)]
        .into_iter()
        .enumerate()
    {
        s.advance(2_000 + i as u64 * 10);
        s.open(SessionId(id), owner, SESSION_TTL_MS, 6, FAIR)
            .unwrap();
    }
    s.advance(3_000);
    // B's sessions are used again: C's first is now the longest idle of
    // the two owners holding the most.
    for id in [10, 11, 12] {
        write_in(&mut s, id, B, 1);
    }
    s.open(SessionId(22), C, SESSION_TTL_MS, 6, FAIR).unwrap();
    assert_eq!(s.len(), 6);
    assert!(
        s.table.contains_key(&SessionId(1)),
        "A at its share keeps its session"
    );
    assert!(
        !s.table.contains_key(&SessionId(20)),
        "C's longest idle went"
    );
    assert_eq!(s.owners.get(&C), Some(&2));
    assert_eq!(s.owners.get(&B), Some(&3));
    // The opener alone holding the most evicts its own.
    s.advance(4_000);
    s.open(SessionId(13), B, SESSION_TTL_MS, 6, FAIR).unwrap();
    assert!(
        !s.table.contains_key(&SessionId(10)),
        "B's longest idle went"
    );
    assert_eq!(s.owners.get(&B), Some(&3));
}

/// Rule 8, the rule before fair shares, which entries of
/// [`Op::OpenSession`] keep for ever (a log written before fair shares
/// replays to the same table): the same opens evict A's session, the
/// longest idle in the whole table.
#[test]
fn the_old_open_entry_keeps_evicting_the_least_recently_used() {
    let mut s = a_flood_of_opens_by_b(LRU);
    let one = SessionRef {
        id: SessionId(1),
        seq: 1,
        acked_below: 1,
    };
    assert_eq!(s.check(one, A), Dedup::Unknown, "A's session was evicted");
    for id in 108..112u128 {
        assert!(s.table.contains_key(&SessionId(id)), "B's session {id}");
    }
}

/// The derived per-owner counts follow opens, closes, expiry and
/// evictions, are recounted after a snapshot is decoded, and a table
/// decoded without a recount still evicts by fair share.
#[test]
fn the_owner_counts_follow_the_table_and_its_snapshots() {
    fn counted(s: &Sessions) -> crate::runtime::owner_hash::OwnerMap<usize> {
        let mut n = crate::runtime::owner_hash::OwnerMap::default();
        for st in s.table.values() {
            *n.entry(st.owner).or_default() += 1;
        }
        n
    }
    let mut s = Sessions::default();
    s.advance(1_000);
    s.open(SessionId(1), A, 2_000, 3, FAIR).unwrap();
    s.open(SessionId(2), B, SESSION_TTL_MS, 3, FAIR).unwrap();
    s.open(SessionId(3), B, SESSION_TTL_MS, 3, FAIR).unwrap();
    assert_eq!(s.owners, counted(&s));
    s.close(SessionId(3), B).unwrap();
    assert_eq!(s.owners, counted(&s));
    s.advance(3_500);
    assert_eq!(s.len(), 1, "A's session expired");
    assert_eq!(s.owners, counted(&s));
    s.open(SessionId(4), A, SESSION_TTL_MS, 3, FAIR).unwrap();
    write_in(&mut s, 4, A, 1);
    let bytes = postcard::to_allocvec(&s).unwrap();
    let mut back: Sessions = postcard::from_bytes(&bytes).unwrap();
    assert!(back.owners.is_empty(), "derived, not in the snapshot");
    let mut recounted = back.clone();
    recounted.recount();
    assert_eq!(recounted.owners, counted(&s));
    // Not recounted: B floods, A's session (idle the longest) stays, and
    // the first eviction recounted.
    for id in 10..20u128 {
        back.open(SessionId(id), B, SESSION_TTL_MS, 3, FAIR)
            .unwrap();
    }
    assert_eq!(back.owners, counted(&back));
    assert!(answered(&mut back, 4, A, 1));
}

/// The leader proposes the fair-share open only once every voter applies
/// it (the runtime log version of its schema, gated like a new handler),
/// the open of the rule before until then.
#[test]
fn the_fair_open_is_proposed_only_once_every_voter_applies_it() {
    use crate::schema::{HandlerKind, Schema, SchemaBook, Shape};
    let schema = |runtime_log: u32| {
        let mut s = Schema::new("kv", 1, Shape::Unit);
        s.push(HandlerKind::Write, 0, "put", Shape::Str, Shape::Unit);
        s.runtime_log = runtime_log;
        s
    };
    let limits = SessionLimits {
        ttl_ms: 7,
        max_sessions: 9,
        max_owner_sessions: 4,
        bounds: ReplyBounds {
            session_bytes: 1,
            owner_bytes: 2,
        },
    };
    let entry = |book: &SchemaBook| open_entry(book, [2, 3], SessionId(5), B, limits);
    let fair_log = crate::schema::RUNTIME_LOG_FAIR_SESSIONS;
    let old = Op::OpenSession {
        id: SessionId(5),
        owner: B,
        ttl_ms: 7,
        max_sessions: 9,
    };
    let fair = Op::OpenSessionFair {
        id: SessionId(5),
        owner: B,
        ttl_ms: 7,
        max_sessions: 9,
    };
    // A directory an older raftkit ran on: unheard voters are taken to be
    // of that raftkit.
    let book = SchemaBook::new(schema(crate::schema::RUNTIME_LOG), Some(schema(0)));
    assert_eq!(entry(&book), old);
    book.accept_peer(2, schema(crate::schema::RUNTIME_LOG))
        .unwrap();
    book.accept_peer(3, schema(0)).unwrap();
    assert_eq!(entry(&book), old, "voter 3 runs the older raftkit");
    book.accept_peer(3, schema(fair_log)).unwrap();
    assert_eq!(
        entry(&book),
        fair,
        "voter 3 applies fair opens, not bounded ones"
    );
    book.accept_peer(3, schema(crate::schema::RUNTIME_LOG))
        .unwrap();
    assert_eq!(entry(&book), bounded_open());
    // A new cluster of this raftkit proposes the newest from the start.
    let book = SchemaBook::new(schema(crate::schema::RUNTIME_LOG), None);
    assert_eq!(entry(&book), bounded_open());
}

/// The open [`open_entry`] proposes once every voter applies runtime log
/// version 2 (rule 9), for the limits of the test above.
fn bounded_open() -> Op {
    Op::OpenSessionBounded {
        id: SessionId(5),
        owner: B,
        ttl_ms: 7,
        max_sessions: 9,
        max_owner_sessions: 4,
    }
}

/// Rule 9: under [`Op::OpenSessionBounded`] an owner holding its cap of
/// sessions loses its own idle the longest, never another owner's, however
/// large the table; under [`Op::OpenSessionFair`] (the rule before) it
/// keeps opening until the table is full.
#[test]
fn a_bounded_open_caps_the_sessions_of_one_owner() {
    let mut s = Sessions::default();
    s.advance(1_000);
    s.open(SessionId(1), A, 600_000, 100, FAIR).unwrap();
    for i in 0..5u128 {
        s.advance(2_000 + 1_000 * i as u64);
        s.open_bounded(SessionId(10 + i), B, 600_000, 100, 3)
            .unwrap();
    }
    assert_eq!(s.owner_sessions(B), 3);
    assert_eq!(
        s.owner_sessions(A),
        1,
        "another owner's session was evicted"
    );
    assert_eq!(s.counters().evicted, 2);
    for gone in [10, 11] {
        assert_eq!(
            s.check(
                SessionRef {
                    id: SessionId(gone),
                    seq: 1,
                    acked_below: 1
                },
                B
            ),
            Dedup::Unknown
        );
    }
    for kept in [12, 13, 14] {
        assert_eq!(
            s.check(
                SessionRef {
                    id: SessionId(kept),
                    seq: 1,
                    acked_below: 1
                },
                B
            ),
            Dedup::New
        );
    }
    // The rule before: no owner cap.
    let mut old = Sessions::default();
    for i in 0..5u128 {
        old.open(SessionId(10 + i), B, 600_000, 100, FAIR).unwrap();
    }
    assert_eq!(old.owner_sessions(B), 5);
}

/// Rule 9: the owner bound counts every session of the owner. A write
/// whose owner's other sessions hold the bytes first reclaims their stored
/// outputs; it is refused with `elsewhere` (their acknowledgements make
/// room) only when nothing reclaimable is left (handler messages and
/// markers are kept), and with `elsewhere: false` when its own session
/// holds them all.
#[test]
fn the_owner_byte_bound_counts_all_its_sessions() {
    let message = REPLY_OVERHEAD_BYTES + STORED_MESSAGE_BYTES as u64;
    let bounds = ReplyBounds {
        session_bytes: 1 << 20,
        owner_bytes: 2 * message,
    };
    let mut s = Sessions::default();
    s.open(SessionId(1), B, 600_000, 100, FAIR).unwrap();
    s.open(SessionId(2), B, 600_000, 100, FAIR).unwrap();
    s.open(SessionId(3), C, 600_000, 100, FAIR).unwrap();
    let at = |id: u128, seq: u64, acked_below: u64| SessionRef {
        id: SessionId(id),
        seq,
        acked_below,
    };
    // Session 1 holds the owner's bound in handler messages: nothing to
    // reclaim.
    for seq in 1..=2 {
        assert_eq!(s.check(at(1, seq, 1), B), Dedup::New);
        assert_eq!(s.admits(at(1, seq, 1), B, bounds), Ok(()));
        assert!(s.record_bounded(at(1, seq, 1), StoredReply::Handler("boom".into()), bounds));
    }
    assert_eq!(s.owner_reply_bytes(B), bounds.owner_bytes);
    assert_eq!(s.check(at(2, 1, 1), B), Dedup::New);
    assert_eq!(
        s.admits(at(2, 1, 1), B, bounds),
        Err(BytesFull::Owner { elsewhere: true })
    );
    assert_eq!(s.check(at(1, 3, 1), B), Dedup::New);
    assert_eq!(
        s.admits(at(1, 3, 1), B, bounds),
        Err(BytesFull::Owner { elsewhere: false })
    );
    assert_eq!(
        s.owner_reply_bytes(B),
        bounds.owner_bytes,
        "a refusal reclaimed"
    );
    // Another owner is not charged for B's bytes.
    assert_eq!(s.admits(at(3, 1, 1), C, bounds), Ok(()));
    // The derived counts come back on restore, while bytes are held.
    let mut back: Sessions = postcard::from_bytes(&postcard::to_allocvec(&s).unwrap()).unwrap();
    back.recount();
    assert_eq!(back.owner_reply_bytes(B), 2 * message);
    assert_eq!(back.stored_reply_bytes(), 2 * message);
    assert_eq!(back.owner_sessions(B), 2);
    // Acknowledging session 1's replies makes room.
    assert_eq!(s.check(at(1, 3, 3), B), Dedup::New);
    assert_eq!(s.owner_reply_bytes(B), 0);
    assert_eq!(s.admits(at(2, 1, 1), B, bounds), Ok(()));
    assert!(s.record_bounded(
        at(2, 1, 1),
        StoredReply::Ok(bytes::Bytes::from(Vec::new())),
        bounds
    ));
    // Session 1 stores an output that fills the bound: session 2's next
    // write reclaims it instead of being refused (it frees more than the
    // room of a handler error's reply, `MIN_REPLY_BYTES`, that a write
    // needs).
    assert_eq!(s.admits(at(1, 3, 3), B, bounds), Ok(()));
    let len = bounds.owner_bytes - 2 * REPLY_OVERHEAD_BYTES;
    assert!(len >= MIN_REPLY_BYTES);
    let output = vec![1; usize::try_from(len).unwrap()];
    assert!(s.record_bounded(
        at(1, 3, 3),
        StoredReply::Ok(bytes::Bytes::from(output)),
        bounds
    ));
    assert_eq!(s.owner_reply_bytes(B), bounds.owner_bytes);
    assert_eq!(s.check(at(2, 2, 1), B), Dedup::New);
    assert_eq!(s.admits(at(2, 2, 1), B, bounds), Ok(()));
    assert_eq!(
        s.check(at(1, 3, 3), B),
        Dedup::Duplicate(StoredReply::Dropped { len })
    );
    assert_eq!(
        s.owner_reply_bytes(B),
        2 * REPLY_OVERHEAD_BYTES,
        "session 1's output reclaimed"
    );
}

/// Rule 9: an output that does not fit in the room left is not kept (a
/// marker instead), and a handler's message is stored cut to
/// [`STORED_MESSAGE_BYTES`] and counted as that much whatever its length
/// (its bytes need not be equal on every replica; the count must be).
#[test]
fn replies_past_the_room_left_are_markers_and_messages_count_a_fixed_size() {
    let bounds = ReplyBounds {
        session_bytes: 1_000,
        owner_bytes: u64::MAX,
    };
    let mut s = Sessions::default();
    s.open(SessionId(7), A, 600_000, 100, FAIR).unwrap();
    assert!(!s.record_bounded(
        w(1, 1),
        StoredReply::Ok(bytes::Bytes::from(vec![1; 2_000])),
        bounds
    ));
    assert_eq!(
        s.check(w(1, 1), A),
        Dedup::Duplicate(StoredReply::Dropped { len: 2_000 })
    );
    assert_eq!(s.stored_reply_bytes(), REPLY_OVERHEAD_BYTES);
    assert!(s.record_bounded(w(2, 1), StoredReply::Handler("é".repeat(1_000)), bounds));
    match s.check(w(2, 1), A) {
        Dedup::Duplicate(StoredReply::Handler(m)) => {
            assert!(m.len() <= STORED_MESSAGE_BYTES && m.len() >= STORED_MESSAGE_BYTES - 1)
        }
        other => panic!("{other:?}"),
    }
    let short = StoredReply::Handler("x".into()).counted_bytes();
    assert_eq!(
        short,
        StoredReply::Handler("y".repeat(STORED_MESSAGE_BYTES)).counted_bytes()
    );
    assert_eq!(
        s.stored_reply_bytes(),
        2 * REPLY_OVERHEAD_BYTES + STORED_MESSAGE_BYTES as u64
    );
}

/// Rule 9's gate: a leader proposes [`Op::SessionWriteBounded`] only once
/// every voter applies runtime log version 2; [`Op::SessionWrite`] until
/// then (an older replica would halt at the new entry).
#[test]
fn the_bounded_write_is_proposed_only_once_every_voter_applies_it() {
    use crate::schema::{HandlerKind, Schema, SchemaBook, Shape};
    let schema = |runtime_log: u32| {
        let mut s = Schema::new("kv", 1, Shape::Unit);
        s.push(HandlerKind::Write, 0, "put", Shape::Str, Shape::Unit);
        s.runtime_log = runtime_log;
        s
    };
    let bounds = ReplyBounds {
        session_bytes: 5,
        owner_bytes: 6,
    };
    let entry = |book: &SchemaBook| write_entry(bounded(book, [2, 3]), w(4, 2), B, bounds, vec![1]);
    let old = Op::SessionWrite {
        session: w(4, 2),
        owner: B,
        command: vec![1],
    };
    let new = Op::SessionWriteBounded {
        session: w(4, 2),
        owner: B,
        bounds,
        command: vec![1],
    };
    let book = SchemaBook::new(schema(crate::schema::RUNTIME_LOG), Some(schema(1)));
    assert_eq!(entry(&book), old, "unheard voters of the raftkit before");
    book.accept_peer(2, schema(crate::schema::RUNTIME_LOG))
        .unwrap();
    book.accept_peer(3, schema(crate::schema::RUNTIME_LOG_FAIR_SESSIONS))
        .unwrap();
    assert_eq!(entry(&book), old, "voter 3 applies version 1 only");
    book.accept_peer(3, schema(crate::schema::RUNTIME_LOG))
        .unwrap();
    assert_eq!(entry(&book), new);
}

/// A stored output is written in snapshots and session entries exactly as
/// the `Vec<u8>` it was before it became shared bytes (variant 0, length,
/// bytes), and reads back the same: snapshots of either binary read in the
/// other (review s61 perf L2).
#[test]
fn a_stored_output_encodes_as_the_vec_form_did() {
    let reply = StoredReply::Ok(bytes::Bytes::from_static(b"ab"));
    let encoded = postcard::to_allocvec(&reply).expect("encodes");
    assert_eq!(encoded, [0, 2, b'a', b'b']);
    let back: StoredReply = postcard::from_bytes(&encoded).expect("decodes");
    assert_eq!(back, reply);
    #[derive(serde::Serialize)]
    enum Before {
        Ok(Vec<u8>),
    }
    let before = postcard::to_allocvec(&Before::Ok(vec![7; 300])).expect("encodes");
    let shared = StoredReply::Ok(bytes::Bytes::from(vec![7; 300]));
    assert_eq!(postcard::to_allocvec(&shared).expect("encodes"), before);
}

//! Log compaction and InstallSnapshot (Raft §7).

use std::cell::Cell;
use std::rc::Rc;

use super::harness::*;
use crate::core::{Body, CompactError, Configuration, Message, Raft, Restored, SnapshotMeta};

fn chunk(offset: u64, data: &[u8], done: bool) -> Body {
    Body::InstallSnapshot {
        meta: SnapshotMeta {
            index: 10,
            term: 2,
            config: Configuration::new([1, 2, 3]),
        },
        offset,
        data: data.to_vec(),
        done,
    }
}

fn snapshot_reply(out: &Out) -> Body {
    let replies = out.of_kind("InstallSnapshotResponse");
    assert_eq!(replies.len(), 1, "{replies:?}");
    replies[0].body.clone()
}

/// §7: the follower accepts chunks only in order and installs the snapshot
/// only once it has every byte, as a whole; the answer that installs it
/// leaves only after the follower's writes are durable, the answers to the
/// chunks before it at once (they claim nothing durable).
#[test]
fn follower_installs_only_a_complete_snapshot() {
    let mut r = node(2, &[1, 2, 3], 2, &[1]);
    let reply = |next_offset, done, rejected| Body::InstallSnapshotResponse {
        index: 10,
        next_offset,
        done,
        rejected,
    };

    let out = step(&mut r, msg(1, 2, 2, chunk(0, b"abcd", false)));
    assert_eq!(snapshot_reply(&out), reply(4, false, false));
    assert_eq!(
        out.messages.len(),
        1,
        "a chunk that does not install the snapshot is answered at once"
    );

    // A gap: the chunk at 8 before the one at 4.
    let out = step(&mut r, msg(1, 2, 2, chunk(8, b"ij", true)));
    assert_eq!(snapshot_reply(&out), reply(4, false, true));
    assert!(out.snapshots.is_empty(), "installed with a gap");
    assert_eq!(r.log().snapshot().index, 0);

    // A duplicate of the first chunk changes nothing.
    let out = step(&mut r, msg(1, 2, 2, chunk(0, b"abcd", false)));
    assert_eq!(snapshot_reply(&out), reply(4, false, false));

    let out = step(&mut r, msg(1, 2, 2, chunk(4, b"efgh", false)));
    assert_eq!(snapshot_reply(&out), reply(8, false, false));
    assert!(out.snapshots.is_empty());
    assert_eq!(r.log().snapshot().index, 0);

    let out = step(&mut r, msg(1, 2, 2, chunk(8, b"ij", true)));
    assert_eq!(snapshot_reply(&out), reply(10, true, false));
    assert!(
        out.messages.is_empty(),
        "the installed snapshot is acknowledged only once durable"
    );
    assert_eq!(out.snapshots.len(), 1);
    assert_eq!(out.snapshots[0].data.as_slice(), b"abcdefghij");
    assert_eq!(out.snapshots[0].meta.index, 10);
    assert_eq!(r.log().snapshot().index, 10);
    assert_eq!((r.log().last_index(), r.log().committed()), (10, 10));
}

/// A snapshot received in full is held once: the data handed out in the
/// Ready to install is the buffer the follower keeps as its local snapshot
/// (to send on, should it lead), not a copy of it. Found by review (stop
/// 46): the last chunk copied the whole snapshot, so a follower installing
/// a snapshot of gigabytes held it twice, and copied it on its node task.
#[test]
fn a_received_snapshot_is_held_once() {
    let mut r = node(2, &[1, 2, 3], 2, &[1]);
    step(&mut r, msg(1, 2, 2, chunk(0, b"abcd", false)));
    let out = step(&mut r, msg(1, 2, 2, chunk(4, b"efgh", true)));
    assert_eq!(out.snapshots.len(), 1, "not installed");
    let handed = &out.snapshots[0].data;
    assert_eq!(handed.as_slice(), b"abcdefgh");
    let kept = r.local_snapshot_data().expect("kept as the local snapshot");
    assert_eq!(kept.as_slice(), b"abcdefgh");
    assert_eq!(
        handed.as_ptr(),
        kept.as_ptr(),
        "the snapshot handed out to install is a copy of the one kept"
    );
}

/// §7: a snapshot is installed from the bytes of one snapshot. Found by
/// review (stop 41): the follower keyed its receive buffer by the
/// snapshot's metadata alone, so a new leader sending its own snapshot of
/// the same index, term and configuration was told to go on where the old
/// leader had stopped, and the follower installed the old leader's first
/// bytes followed by the new leader's rest (two serializations of one state
/// need not be the same bytes: a `HashMap`, a new state version in a
/// rolling upgrade). Chunks from another leader or term start the buffer
/// afresh.
#[test]
fn a_snapshot_is_never_spliced_from_two_leaders_chunks() {
    let mut r = node(2, &[1, 2, 3], 2, &[1]);
    let reply = |next_offset, done, rejected| Body::InstallSnapshotResponse {
        index: 10,
        next_offset,
        done,
        rejected,
    };
    let out = step(&mut r, msg(1, 2, 2, chunk(0, b"AAAA", false)));
    assert_eq!(snapshot_reply(&out), reply(4, false, false));
    // Node 3 leads in term 3 and sends its own snapshot of the same meta.
    let out = step(&mut r, msg(3, 2, 3, chunk(0, b"BB", false)));
    assert_eq!(
        snapshot_reply(&out),
        reply(2, false, false),
        "the new leader's first chunk starts the buffer afresh"
    );
    // The new leader goes on from there: its bytes alone are installed.
    let out = step(&mut r, msg(3, 2, 3, chunk(2, b"CC", true)));
    assert_eq!(snapshot_reply(&out), reply(4, true, false));
    assert_eq!(out.snapshots.len(), 1);
    assert_eq!(out.snapshots[0].data.as_slice(), b"BBCC");

    // Mid-transfer, a chunk at another offset from another sender is not
    // appended: the follower asks for the start.
    let mut r = node(2, &[1, 2, 3], 2, &[1]);
    step(&mut r, msg(1, 2, 2, chunk(0, b"AAAA", false)));
    let out = step(&mut r, msg(3, 2, 3, chunk(4, b"BB", true)));
    assert_eq!(snapshot_reply(&out), reply(0, false, true));
    assert!(out.snapshots.is_empty());
}

/// §7, InstallSnapshot receiver rule 6: "If existing log entry has same
/// index and term as snapshot's last included entry, retain log entries
/// following it". The follower may already have acknowledged those entries
/// (the leader counted them towards commitment), so dropping them would
/// lose entries a quorum was believed to hold. Rule 7: a log that does not
/// hold the snapshot's last entry is discarded whole.
#[test]
fn a_snapshot_keeps_the_entries_after_it_when_the_log_agrees() {
    // Entry 10 has term 2, as in the snapshot's metadata (index 10, term 2).
    let log = [1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2];
    let mut r = node(2, &[1, 2, 3], 2, &log);
    let out = step(&mut r, msg(1, 2, 2, chunk(0, b"state", true)));
    assert_eq!(out.snapshots.len(), 1);
    assert_eq!(r.log().snapshot().index, 10);
    assert_eq!(log_of(&r), [(11, 2), (12, 2)], "the agreeing tail is kept");
    assert_eq!(r.log().committed(), 10);

    // Entry 10 has term 1 here: the log disagrees and goes.
    let log = [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1];
    let mut r = node(2, &[1, 2, 3], 2, &log);
    step(&mut r, msg(1, 2, 2, chunk(0, b"state", true)));
    assert_eq!(r.log().snapshot().index, 10);
    assert_eq!(r.log().last_index(), 10, "a disagreeing tail is dropped");
}

/// §7: a snapshot can only cover applied entries.
#[test]
fn compaction_covers_only_applied_entries() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    let applied = c.node(1).log().applied();
    let r = c.node_mut(1);
    assert!(matches!(
        r.compact(applied + 1, vec![]),
        Err(CompactError::NotApplied { .. })
    ));
    let meta = r.compact(applied, b"state".to_vec()).expect("applied");
    assert_eq!(meta.index, applied);
    assert_eq!(r.log().first_index(), applied + 1);
    assert_eq!(
        r.compact(applied, vec![]),
        Err(CompactError::Outdated(applied))
    );
}

/// A compaction hands back exactly what it let go, for the runtime to drop
/// off its node task: the entries the snapshot covers, in order, and the
/// local snapshot it replaced; the log keeps the rest unchanged.
#[test]
fn a_compaction_hands_back_the_entries_and_the_snapshot_it_let_go() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    for i in 0..6u8 {
        c.propose(1, &[i]);
        c.deliver();
    }
    let applied = c.node(1).log().applied();
    let before: Vec<_> = c.node(1).log().entries().to_vec();
    let r = c.node_mut(1);
    let (meta, first) = r
        .compact_releasing(applied - 3, b"first".to_vec(), Vec::new())
        .expect("applied");
    assert_eq!(meta.index, applied - 3);
    let covered = usize::try_from(applied - 3).expect("small");
    assert_eq!(
        first.entries,
        before[..covered],
        "the covered entries, in order"
    );
    assert_eq!(r.log().entries(), &before[covered..], "the rest is kept");
    assert!(first.snapshot.is_none(), "no snapshot before the first");
    // The log goes on in the room it is given, and hands back the vector
    // it grew in.
    let mut room = first.entries;
    room.clear();
    let room_at = room.as_ptr();
    let log_at = r.log().entries().as_ptr();
    let (_, second) = r
        .compact_releasing(applied, b"second".to_vec(), room)
        .expect("applied");
    assert_eq!(second.entries, before[covered..covered + 3]);
    assert_eq!(second.entries.as_ptr(), log_at, "not the log's old vector");
    assert_eq!(r.log().entries().as_ptr(), room_at, "the room was not used");
    assert_eq!(
        second.snapshot.as_deref().map(Vec::as_slice),
        Some(&b"first"[..]),
        "the replaced snapshot's data"
    );
    assert!(r.log().entries().is_empty());
}

/// A snapshot is asked for once `snapshot_entries` entries were applied
/// since the last one *and* they add up to `snapshot_log_ratio` times its
/// size: with a large state, a count alone would serialize it again and
/// again for a log far smaller than it. Ratio 0 counts entries only.
#[test]
fn snapshots_wait_for_a_log_as_large_as_the_ratio_asks() {
    // The state is exactly 8 commands' worth: a log of exactly the bytes
    // asked for is enough (ratio 1: the 8th; ratio 0.5: the 4th).
    for (ratio, expect_after) in [(0.0, 2u8), (0.5, 4u8), (1.0, 8u8)] {
        let mut c = Cluster::with(&[1, 2, 3], |cfg| {
            cfg.snapshot_entries = 2;
            cfg.snapshot_log_ratio = ratio;
        });
        c.elect(1);
        let applied = c.node(1).log().applied();
        // A state of 992 bytes; each command below counts 24 + 100.
        c.node_mut(1)
            .compact(applied, vec![7; 992])
            .expect("compact");
        let mut asked_at = None;
        for i in 1..=12u8 {
            c.propose(1, &[i; 100]);
            if asked_at.is_none() && c.node(1).wants_snapshot() {
                asked_at = Some(i);
            }
        }
        assert_eq!(
            asked_at,
            Some(expect_after),
            "ratio {ratio}: asked for a snapshot after the wrong number of entries"
        );
        // Asked once, asked until a snapshot is taken; then counted anew.
        assert!(c.node(1).wants_snapshot());
        let applied = c.node(1).log().applied();
        c.node_mut(1)
            .compact(applied, vec![7; 992])
            .expect("compact");
        assert!(!c.node(1).wants_snapshot(), "ratio {ratio}");
    }
}

/// The ratio is a finite number of at least 0: anything else is a
/// configuration error, not a silently disabled rule (`NaN` and negative
/// products would read as "count entries only").
#[test]
fn a_ratio_that_is_not_a_finite_non_negative_number_is_refused() {
    let mut cfg = crate::core::Config::new(1);
    for bad in [f64::NAN, -0.5, f64::INFINITY, f64::NEG_INFINITY] {
        cfg.snapshot_log_ratio = bad;
        assert!(cfg.validate().is_err(), "ratio {bad} accepted");
    }
    for good in [0.0, 0.5, 1.0, 4.0] {
        cfg.snapshot_log_ratio = good;
        assert_eq!(cfg.validate(), Ok(()), "ratio {good} refused");
    }
}

/// Only applied entries count toward the snapshot ratio: an entry the
/// leader appended but could not commit (it is cut off) is not yet in the
/// state, so it does not make the log large enough.
#[test]
fn unapplied_entries_do_not_count_toward_the_ratio() {
    let mut c = Cluster::with(&[1, 2, 3], |cfg| {
        cfg.snapshot_entries = 2;
        cfg.snapshot_log_ratio = 1.0;
    });
    c.elect(1);
    let applied = c.node(1).log().applied();
    // A state of 992 bytes: 8 commands of 124 bytes.
    c.node_mut(1)
        .compact(applied, vec![7; 992])
        .expect("compact");
    for i in 1..=7u8 {
        c.propose(1, &[i; 100]);
    }
    assert!(!c.node(1).wants_snapshot(), "7 of 8 commands' bytes");
    c.isolate(1);
    c.propose(1, &[8; 100]);
    let log = c.node(1).log();
    assert!(log.last_index() > log.applied(), "the 8th is not applied");
    assert!(
        !c.node(1).wants_snapshot(),
        "an unapplied entry counted toward the snapshot ratio"
    );
    c.heal();
    c.propose(1, &[9; 100]);
    assert!(c.node(1).wants_snapshot(), "applied: 9 commands' bytes");
}

/// §7: "the leader must occasionally send snapshots to followers that lag
/// behind". The leader compacts its log while a follower is cut off; the
/// follower then receives the snapshot in chunks. One chunk is lost: it is
/// resent, the follower never installs a partial snapshot, and afterwards
/// it catches up with the entries after the snapshot.
#[test]
fn lagging_follower_receives_the_snapshot_in_chunks_then_catches_up() {
    const CHUNK: usize = 4;
    let mut c = Cluster::with(&[1, 2, 3], |c| c.snapshot_chunk_bytes = CHUNK);
    c.elect(1);
    c.isolate(3);
    for i in 0..5u8 {
        c.propose(1, &[i]);
    }
    let applied = c.node(1).log().applied();
    assert_eq!(applied, c.node(1).log().committed());
    let data = b"the state machine, serialized".to_vec();
    let meta = c
        .node_mut(1)
        .compact(applied, data.clone())
        .expect("compact");
    for i in 5..7u8 {
        c.propose(1, &[i]);
    }
    assert!(c.node(3).log().last_index() < meta.index);

    // Lose the second chunk, once.
    let lost = Rc::new(Cell::new(false));
    let seen = lost.clone();
    c.filter = Some(Box::new(move |m: &mut Message| {
        let second =
            matches!(m.body, Body::InstallSnapshot { offset, .. } if offset == CHUNK as u64);
        if second && !seen.get() {
            seen.set(true);
            return false;
        }
        true
    }));
    c.heal();
    let mut ticks = 0;
    while c.installed[&3].is_empty() {
        assert!(ticks < 10 * T, "the snapshot never arrived");
        c.tick(1);
        ticks += 1;
        if c.installed[&3].is_empty() {
            assert_eq!(
                c.node(3).log().snapshot().index,
                0,
                "installed a partial snapshot"
            );
        }
    }
    assert!(lost.get(), "no chunk was lost");
    let installed = &c.installed[&3];
    assert_eq!(installed.len(), 1);
    assert_eq!(installed[0].meta, meta);
    assert_eq!(
        *installed[0].data, data,
        "the follower installed other bytes than the snapshot"
    );

    let chunks: Vec<_> = c
        .delivered
        .iter()
        .filter_map(|m| match &m.body {
            Body::InstallSnapshot { offset, data, .. } if m.to == 3 => Some((*offset, data.len())),
            _ => None,
        })
        .collect();
    assert!(chunks.iter().all(|&(_, len)| len <= CHUNK), "{chunks:?}");
    assert!(chunks.len() >= data.len().div_ceil(CHUNK), "{chunks:?}");
    assert!(
        chunks.contains(&(CHUNK as u64, CHUNK)),
        "the lost chunk was never resent"
    );

    // It catches up with the entries after the snapshot.
    for _ in 0..2 {
        c.tick(1);
    }
    assert_eq!(
        c.node(1).snapshot_sends(),
        Vec::new(),
        "a transfer the follower installed is still reported (and pins its snapshot)"
    );
    let leader = c.node(1);
    let follower = c.node(3);
    assert_eq!(log_of(follower), log_of(leader));
    assert_eq!(follower.log().committed(), leader.log().committed());
    assert_eq!(follower.log().applied(), leader.log().applied());
    let after: Vec<_> = c.applied[&3]
        .iter()
        .map(|e| e.index)
        .filter(|&i| i > meta.index)
        .collect();
    assert_eq!(
        after,
        (meta.index + 1..=leader.log().last_index()).collect::<Vec<_>>(),
        "applies what follows the snapshot"
    );
}

/// Flow control: the heartbeats that go on during a long transfer, and the
/// duplicate chunks they resend, never multiply the chunks in flight (each
/// duplicate's answer used to start one more chunk-answer cycle: issue 18's
/// transfers of tens of MB slowed down quadratically). A chunk is resent
/// only when the transfer stalled for a heartbeat interval.
#[test]
fn heartbeats_during_a_transfer_do_not_multiply_the_chunks_in_flight() {
    const CHUNK: usize = 4;
    const CHUNKS: usize = 60;
    let mut c = Cluster::with(&[1, 2, 3], |c| c.snapshot_chunk_bytes = CHUNK);
    c.elect(1);
    c.isolate(3);
    for i in 0..5u8 {
        c.propose(1, &[i]);
    }
    let applied = c.node(1).log().applied();
    let data: Vec<u8> = (0..CHUNK * CHUNKS).map(|i| i as u8).collect();
    let meta = c
        .node_mut(1)
        .compact(applied, data.clone())
        .expect("compact");
    c.heal();
    // A slow link: a few messages arrive per leader tick, so heartbeats
    // (and their resends) interleave with the transfer.
    let mut ticks = 0;
    while c.installed[&3].is_empty() {
        assert!(ticks < 100 * T, "the snapshot never arrived");
        for _ in 0..4 {
            c.deliver_one();
        }
        c.node_mut(1).tick();
        ticks += 1;
    }
    c.deliver();
    assert_eq!(c.installed[&3][0].meta, meta);
    assert_eq!(*c.installed[&3][0].data, data);
    let chunks = c
        .delivered
        .iter()
        .filter(|m| m.to == 3 && matches!(m.body, Body::InstallSnapshot { .. }))
        .count();
    assert!(
        chunks <= CHUNKS + CHUNKS / 4,
        "{chunks} chunks delivered for a snapshot of {CHUNKS} chunks over {ticks} ticks"
    );
}

/// A follower that a snapshot was being sent to, and that then shows by an
/// append answer that it holds the log past the snapshot (an earlier
/// append reached it), leaves snapshot mode and the transfer is dropped
/// with it: the leader no longer pins the snapshot's data for it nor
/// reports a transfer in progress.
#[test]
fn a_follower_caught_up_by_appends_drops_its_snapshot_transfer() {
    let (mut c, _) = snapshot_send_started(400);
    let last = c.node(1).log().last_index();
    let term = c.node(1).term();
    c.node_mut(1).step(Message {
        from: 3,
        to: 1,
        term,
        body: Body::AppendEntriesResponse {
            index: last,
            success: true,
            hint: None,
        },
    });
    assert_eq!(
        c.node(1).snapshot_sends(),
        Vec::new(),
        "a transfer to a follower no longer in snapshot mode"
    );
}

/// §7: a snapshot records "the latest configuration as of the last
/// included index" (Figure 13's `lastConfig`): a configuration entry
/// appended after that index, not committed yet, is not part of it (it
/// could still be truncated; a node restored from the snapshot would then
/// hold a configuration the log never committed). Teeth round 3, mutant
/// 209: the snapshot took the configuration in force instead.
#[test]
fn a_snapshot_records_the_configuration_at_its_index_not_a_later_one() {
    let conf = Configuration::new([1, 2, 3]);
    let mut r = node(1, &[1, 2, 3], 1, &[1]);
    make_settled_leader(&mut r);
    flush(&mut r);
    let applied = r.log().applied();
    assert_eq!(applied, r.log().committed(), "everything committed applied");
    let before = r.log().config_at(applied).clone();
    assert_eq!(before.voters, conf.voters);
    r.propose_config(Configuration::new([1, 2, 3, 4]))
        .expect("a change");
    assert!(r.log().last_config().1.is_joint(), "in force once appended");
    let meta = r.snapshot_meta(applied).expect("applied");
    assert_eq!(meta.config, before, "snapshot_meta");
    let meta = r.compact(applied, b"state".to_vec()).expect("applied");
    assert_eq!(
        meta.config, before,
        "the snapshot took a configuration appended after its index"
    );
    assert_eq!(r.log().snapshot().config, before);
    // The uncommitted change is still in force (it is in the log).
    assert!(r.log().last_config().1.is_joint());
}

/// §7, InstallSnapshot receiver: a snapshot that covers no more than the
/// follower has committed is acknowledged and dropped, never installed.
/// Installed, it would hand the runtime a state older than what the state
/// machine has applied (the entries between the two are never applied
/// again: lost). Found by mutation (stop 45): deleting the check survived
/// every `core::` test.
#[test]
fn a_snapshot_older_than_the_commit_index_is_not_installed() {
    let mut r = node(2, &[1, 2, 3], 2, &[1, 1, 2, 2, 2]);
    step(&mut r, append(1, 2, 2, (5, 2), Vec::new(), 5));
    assert_eq!(r.log().committed(), 5);
    let old = Body::InstallSnapshot {
        meta: SnapshotMeta {
            index: 3,
            term: 2,
            config: Configuration::new([1, 2, 3]),
        },
        offset: 0,
        data: b"state at 3".to_vec(),
        done: true,
    };
    let out = step(&mut r, msg(1, 2, 2, old));
    assert_eq!(
        snapshot_reply(&out),
        Body::InstallSnapshotResponse {
            index: 3,
            next_offset: 0,
            done: true,
            rejected: false,
        }
    );
    assert!(
        out.snapshots.is_empty(),
        "a snapshot at 3 was handed out for install on a follower that committed 5: {:?}",
        out.snapshots
    );
    assert_eq!(r.log().snapshot().index, 0);
    assert_eq!((r.log().committed(), r.log().last_index()), (5, 5));
}

/// The boundary of the rule above: a snapshot exactly at the commit index
/// covers nothing the follower lacks either, and is answered installed
/// without being handed out (mutant SN1, teeth stop 55: '<=' -> '<' in
/// `handle_install_snapshot` survived every test, and the state machine
/// would have been restored at the index it had applied).
#[test]
fn a_snapshot_at_exactly_the_commit_index_is_not_installed() {
    let mut r = node(2, &[1, 2, 3], 2, &[1, 1, 2, 2, 2]);
    step(&mut r, append(1, 2, 2, (5, 2), Vec::new(), 5));
    assert_eq!(r.log().committed(), 5, "premise");
    let at_commit = Body::InstallSnapshot {
        meta: SnapshotMeta {
            index: 5,
            term: 2,
            config: Configuration::new([1, 2, 3]),
        },
        offset: 0,
        data: b"state at 5".to_vec(),
        done: true,
    };
    let out = step(&mut r, msg(1, 2, 2, at_commit));
    assert!(
        out.snapshots.is_empty(),
        "a snapshot at 5 was handed out for install on a follower that committed 5: {:?}",
        out.snapshots
    );
    assert_eq!(
        snapshot_reply(&out),
        Body::InstallSnapshotResponse {
            index: 5,
            next_offset: 0,
            done: true,
            rejected: false,
        }
    );
    assert_eq!(r.log().snapshot().index, 0, "nothing compacted");
}

/// Raft §7 / thesis §4.1: a snapshot carries the configuration at its
/// index, and a follower that installs it adopts that configuration at
/// once (its log holds no configuration entry any more): a new node
/// started empty learns from the snapshot that it is a voter. Found by
/// mutation (stop 45): not adopting the installed configuration survived
/// every `core::` test.
#[test]
fn an_installed_snapshot_brings_its_configuration_into_force() {
    let mut r = Raft::new(config(4), Restored::empty()).expect("config");
    assert!(!r.config().is_voter(4));
    let snap = Body::InstallSnapshot {
        meta: SnapshotMeta {
            index: 10,
            term: 2,
            config: Configuration::new([1, 2, 3, 4]),
        },
        offset: 0,
        data: b"state".to_vec(),
        done: true,
    };
    let out = step(&mut r, msg(1, 4, 2, snap));
    assert_eq!(out.snapshots.len(), 1);
    assert_eq!(
        r.config(),
        &Configuration::new([1, 2, 3, 4]),
        "the installed snapshot's configuration is not in force"
    );
}

/// A leader re-elected in a later term may send the same snapshot metadata
/// with other bytes (a new serialization): its chunks in the new term never
/// extend the buffer of its chunks from the old one. Found by mutation
/// (stop 45): keying the buffer by metadata and sender without the term
/// survived every test (the two-leaders test changes the sender too).
#[test]
fn chunks_of_the_same_leader_in_a_later_term_start_afresh() {
    let mut r = node(2, &[1, 2, 3], 2, &[1]);
    step(&mut r, msg(1, 2, 2, chunk(0, b"AAAA", false)));
    let out = step(&mut r, msg(1, 2, 3, chunk(4, b"BB", true)));
    assert!(
        out.snapshots.is_empty(),
        "installed bytes spliced from two terms: {:?}",
        out.snapshots
    );
    assert_eq!(
        snapshot_reply(&out),
        Body::InstallSnapshotResponse {
            index: 10,
            next_offset: 0,
            done: false,
            rejected: true,
        }
    );
}

/// A leader that compacted its log into a snapshot of `bytes` bytes while
/// node 3 was cut off, and started sending it to node 3 in chunks of 4
/// once it was back: the cluster and the snapshot's metadata.
fn snapshot_send_started(bytes: usize) -> (Cluster, SnapshotMeta) {
    let mut c = Cluster::with(&[1, 2, 3], |c| c.snapshot_chunk_bytes = 4);
    c.elect(1);
    c.isolate(3);
    for i in 0..5u8 {
        c.propose(1, &[i]);
    }
    let applied = c.node(1).log().applied();
    let meta = c
        .node_mut(1)
        .compact(applied, vec![7; bytes])
        .expect("compact");
    c.heal();
    let mut ticks = 0;
    while c.node(1).snapshot_sends().is_empty() {
        assert!(ticks < 10 * T, "no snapshot transfer started");
        c.deliver_one();
        c.node_mut(1).tick();
        ticks += 1;
    }
    (c, meta)
}

/// A leader sending a snapshot of 40 bytes in chunks of 4 to node 3 (cut
/// off while the leader compacted past its log): the cluster, and the
/// snapshot's metadata, once the transfer is under way and before the
/// follower installed it.
fn transfer_under_way() -> (Cluster, SnapshotMeta) {
    let (c, meta) = snapshot_send_started(40);
    assert_eq!(c.installed.get(&3).map_or(0, Vec::len), 0);
    (c, meta)
}

/// Raft §7 with the leader's bookkeeping (§5.3: `matchIndex`): the
/// follower's acknowledgement that it installed the snapshot raises what
/// the leader knows it holds to the snapshot's index at once, not only
/// after a later AppendEntries answer (which may be lost, or come much
/// later). Checked right after the leader took that acknowledgement, before
/// anything else reaches it. Found by mutation: with the acknowledgement's
/// `maybe_update` removed, no test failed (the probe after it still
/// resumed after the snapshot).
#[test]
fn the_install_acknowledgement_raises_the_followers_match_to_the_snapshot() {
    let (mut c, meta) = transfer_under_way();
    let before = c.node(1).catch_up_progress(3).expect("leader").0;
    assert!(before < meta.index, "3 already held {before}");
    let mut steps = 0;
    loop {
        assert!(
            steps < 10_000,
            "the follower never acknowledged the install"
        );
        steps += 1;
        if !c.deliver_one() {
            c.node_mut(1).tick();
            continue;
        }
        let last = c.delivered.last().expect("delivered");
        if last.to == 1
            && matches!(
                last.body,
                Body::InstallSnapshotResponse {
                    done: true,
                    rejected: false,
                    ..
                }
            )
        {
            break;
        }
    }
    assert_eq!(c.installed[&3].len(), 1);
    let last = c.node(1).log().last_index();
    assert_eq!(
        c.node(1).catch_up_progress(3),
        Some((meta.index, last)),
        "after the install acknowledgement the leader still thinks 3 holds only up to {before}"
    );
}

/// The leader takes only the answers to the transfer in progress: a
/// follower's answer about another snapshot (an earlier transfer's,
/// delayed in the network), or any install answer once the transfer is
/// over, changes nothing and sends nothing; neither does an answer for an
/// offset already acknowledged. Found by mutation: with the check that an
/// answer is for the snapshot being sent removed, no test failed (the
/// leader dropped the transfer in progress, believed the follower held the
/// other snapshot's index and probed it from past the snapshot being
/// sent).
#[test]
fn stale_install_answers_are_ignored() {
    let (mut c, meta) = transfer_under_way();
    let term = c.node(1).term();
    let answer = |index, next_offset, done| {
        msg(
            3,
            1,
            term,
            Body::InstallSnapshotResponse {
                index,
                next_offset,
                done,
                rejected: false,
            },
        )
    };
    c.flush_all();
    let matched = c.node(1).catch_up_progress(3).expect("leader").0;
    let sends = c.node(1).snapshot_sends();
    assert_eq!(sends.len(), 1);
    assert_eq!(sends[0].index, meta.index);

    // An earlier snapshot's completed install.
    let out = step(c.node_mut(1), answer(meta.index - 1, 40, true));
    assert_eq!(
        out.all(),
        Vec::new(),
        "the leader answered another snapshot's install acknowledgement"
    );
    assert_eq!(
        c.node(1).snapshot_sends(),
        sends,
        "another snapshot's install acknowledgement ended the transfer"
    );
    assert_eq!(c.node(1).catch_up_progress(3).expect("leader").0, matched);
    // Another snapshot's chunk answer, further than this transfer went.
    let out = step(c.node_mut(1), answer(meta.index - 1, 36, false));
    assert_eq!(
        out.all(),
        Vec::new(),
        "a chunk was sent for another snapshot's answer"
    );
    assert_eq!(c.node(1).snapshot_sends(), sends);
    // An answer for an offset already acknowledged (a duplicate).
    let out = step(c.node_mut(1), answer(meta.index, sends[0].acked, false));
    assert_eq!(out.all(), Vec::new(), "a duplicate answer sent a chunk");

    // The transfer completes and 3 catches up; a late duplicate of the
    // install acknowledgement then changes nothing.
    let mut ticks = 0;
    while c.installed[&3].is_empty() || !c.node(1).snapshot_sends().is_empty() {
        assert!(ticks < 10 * T, "the snapshot never arrived");
        c.tick(1);
        ticks += 1;
    }
    c.tick(1);
    let caught_up = c.node(1).catch_up_progress(3).expect("leader");
    assert_eq!(caught_up.0, caught_up.1, "3 did not catch up");
    let out = step(c.node_mut(1), answer(meta.index, 40, true));
    assert_eq!(
        out.all(),
        Vec::new(),
        "the leader answered an install acknowledgement after the transfer was over"
    );
    assert_eq!(c.node(1).catch_up_progress(3), Some(caught_up));
}

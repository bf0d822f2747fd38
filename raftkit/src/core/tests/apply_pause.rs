//! Follower flow control (`replication` module docs): while its apply is
//! paused ([`Raft::set_apply_paused`](crate::core::Raft::set_apply_paused)),
//! a follower takes in no entry past its last index; the AppendEntries that
//! would bring one is dropped unanswered, as if lost (Raft §5.3), and the
//! leader tries again at most once per heartbeat answer. Appends that add
//! nothing new are handled as before.

use super::harness::*;
use crate::core::progress::Mode;
use crate::core::{Body, NodeId};

/// AppendEntries carrying entries that were delivered to `to`.
fn appends_with_entries_to(c: &Cluster, to: NodeId) -> usize {
    c.count(|m| {
        m.to == to && matches!(&m.body, Body::AppendEntries { entries, .. } if !entries.is_empty())
    })
}

/// A follower with its apply paused does not grow its log while the leader
/// keeps proposing; the leader keeps committing with the other follower,
/// retrying the paused one at most once per heartbeat (no tight loop); once
/// unpaused the follower catches up within two heartbeat intervals.
#[test]
fn a_follower_with_apply_paused_takes_in_no_new_entries_and_catches_up_once_unpaused() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    c.propose(1, b"before");
    c.tick_all(2);
    let held = c.node(3).log().last_index();
    assert_eq!(held, c.node(1).log().last_index(), "premise: 3 holds all");
    c.node_mut(3).set_apply_paused(true);
    let sent_before = appends_with_entries_to(&c, 3);

    const ROUNDS: u32 = 24;
    // The first heartbeat answer shows the leader that its optimistic
    // appends went nowhere: it falls back to probing (one message until
    // an answer or the next heartbeat answer).
    const WARM_UP: u32 = 4;
    let mut retries_from = 0;
    for i in 0..ROUNDS {
        if i == WARM_UP {
            assert_eq!(
                c.node(1).progress[&3].mode,
                Mode::Probe,
                "the leader still streams to the paused follower"
            );
            retries_from = appends_with_entries_to(&c, 3);
        }
        c.propose(1, format!("w{i}").as_bytes());
        c.tick_all(1);
        assert_eq!(
            c.node(3).log().last_index(),
            held,
            "round {i}: the follower with apply paused took in new entries"
        );
        let leader = c.node(1).log();
        assert_eq!(
            leader.committed(),
            leader.last_index(),
            "round {i}: the leader stopped committing with the other follower"
        );
    }
    assert_eq!(c.leaders(), vec![1], "the leadership did not move");
    assert!(
        c.node(3).log().committed() <= held,
        "the paused follower's commit index passed what it holds"
    );
    // Heartbeats every 2 ticks: at most one probe per heartbeat answer
    // (no tight loop), after the window the leader had open at first.
    let retries = appends_with_entries_to(&c, 3) - retries_from;
    let steady = (ROUNDS - WARM_UP) / 2;
    assert!(
        retries <= steady as usize + 1,
        "the leader sent {retries} appends with entries to the paused follower in {} ticks",
        ROUNDS - WARM_UP
    );
    let window = retries_from - sent_before;
    assert!(
        window <= WARM_UP as usize + 1,
        "{window} appends with entries before probing"
    );

    c.node_mut(3).set_apply_paused(false);
    c.tick_all(4);
    let (last, committed) = (c.node(1).log().last_index(), c.node(1).log().committed());
    assert_eq!(
        c.node(3).log().last_index(),
        last,
        "the unpaused follower did not catch up within two heartbeats"
    );
    assert_eq!(c.node(3).log().committed(), committed);
    assert_eq!(c.node(2).log().committed(), committed);
    let applied = c.applied[&3].last().map(|e| e.index);
    assert_eq!(applied, Some(committed), "the follower did not apply all");
}

/// A paused follower still answers an AppendEntries that adds nothing new
/// (its commit index advances, to at most what it holds), and drops
/// unanswered one that would extend its log.
#[test]
fn a_paused_follower_answers_appends_within_its_log_and_drops_those_past_it() {
    let mut r = node(2, &[1, 2, 3], 1, &[1, 1, 1]);
    r.set_apply_paused(true);

    let out = step(
        &mut r,
        append(1, 2, 1, (1, 1), vec![entry(2, 1), entry(3, 1)], 3),
    );
    let answers = out.of_kind("AppendEntriesResponse");
    assert_eq!(answers.len(), 1, "{:?}", out.all());
    assert!(matches!(
        answers[0].body,
        Body::AppendEntriesResponse {
            index: 3,
            success: true,
            ..
        }
    ));
    assert_eq!(r.log().committed(), 3);
    assert!(
        out.committed.is_empty(),
        "nothing is handed out while paused"
    );

    let out = step(&mut r, append(1, 2, 1, (3, 1), vec![entry(4, 1)], 4));
    assert!(out.all().is_empty(), "answered: {:?}", out.all());
    assert_eq!(r.log().last_index(), 3);
    assert_eq!(r.log().committed(), 3);

    // A heartbeat raises the commit index only to what the leader knows
    // this follower holds (the leader caps it), and is answered.
    let out = step(&mut r, heartbeat(1, 2, 1, 3));
    assert_eq!(out.of_kind("HeartbeatResponse").len(), 1);

    r.set_apply_paused(false);
    let out = step(&mut r, append(1, 2, 1, (3, 1), vec![entry(4, 1)], 4));
    assert_eq!(r.log().last_index(), 4);
    assert_eq!(
        out.committed.len(),
        4,
        "unpaused, everything committed is handed out"
    );
}

/// Under read load the leader starts a read round (a heartbeat to every
/// follower) about once per round trip, and a paused follower answers each.
/// The leader re-sends to it, driven by those answers, at most once per
/// heartbeat interval: not a batch of entries per read round, all of them
/// dropped unread. Reads are still served (the other follower makes the
/// quorum) and, once unpaused, the follower catches up within a heartbeat
/// interval or two.
#[test]
fn a_paused_follower_is_resent_entries_at_most_once_per_heartbeat_interval_under_read_load() {
    const HEARTBEAT: u32 = 3;
    const TICKS: u32 = 20;
    const READS_PER_TICK: u64 = 5;
    let mut c = Cluster::with(&[1, 2, 3], |cfg| cfg.heartbeat_ticks = HEARTBEAT);
    c.elect(1);
    c.propose(1, b"before");
    c.tick_all(2);
    let held = c.node(3).log().last_index();
    assert_eq!(held, c.node(1).log().last_index(), "premise: 3 holds all");
    c.node_mut(3).set_apply_paused(true);
    // Node 3 is behind from now on: the leader has entries to send it.
    c.propose(1, b"behind");
    let sent_before = appends_with_entries_to(&c, 3);

    let mut ctx = 0;
    for tick in 0..TICKS {
        c.tick_all(1);
        for _ in 0..READS_PER_TICK {
            ctx += 1;
            c.node_mut(1)
                .read_index(ctx)
                .expect("the leader accepts reads");
            c.deliver();
        }
        assert_eq!(
            c.node(3).log().last_index(),
            held,
            "tick {tick}: the follower with apply paused took in new entries"
        );
    }
    let served = c
        .reads
        .get(&1)
        .map_or(0, |r| r.iter().filter(|s| s.result.is_ok()).count());
    assert_eq!(served as u64, ctx, "reads were not all served");

    // One re-send per heartbeat interval, plus the first one at once.
    let resent = appends_with_entries_to(&c, 3) - sent_before;
    let allowed = (TICKS / HEARTBEAT) as usize + 2;
    assert!(
        resent <= allowed,
        "the leader sent {resent} appends with entries to the paused follower in {TICKS} \
         ticks of {READS_PER_TICK} read rounds each (heartbeat every {HEARTBEAT} ticks): at \
         most {allowed} expected"
    );

    c.node_mut(3).set_apply_paused(false);
    c.tick_all(2 * HEARTBEAT);
    let last = c.node(1).log().last_index();
    assert_eq!(
        c.node(3).log().last_index(),
        last,
        "the unpaused follower did not catch up within two heartbeat intervals"
    );
}

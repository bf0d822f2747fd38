//! Log replication (§5.3) and commitment (§5.3, §5.4.2), with the
//! pipelining and fast backtracking the core adds.

use super::harness::*;
use crate::core::{
    Body, MAX_ENTRIES_PER_APPEND, Message, NotLeader, Payload, ProposeError, Raft, Role, Term,
};

fn appends_to(msgs: &[Message], to: u64) -> Vec<Message> {
    msgs.iter()
        .filter(|m| m.to == to && m.body.kind() == "AppendEntries")
        .cloned()
        .collect()
}

/// §5.3: "The leader appends the command to its log as a new entry, then
/// issues AppendEntries RPCs in parallel to each of the other servers",
/// including "the index and term of the entry in its log that immediately
/// precedes the new entries". The leader writes the entry to its own disk
/// in parallel (thesis §10.2.1): the AppendEntries do not wait for it.
#[test]
fn leader_starts_replication() {
    let mut r = node(1, &[1, 2, 3], 1, &[1]);
    let li = make_settled_leader(&mut r);
    let term = r.term();
    let at = r.propose(b"some data".to_vec()).expect("leader accepts");
    assert_eq!(at, (li + 1, term));
    let rd = r.ready();
    assert_eq!(rd.entries, [command(li + 1, term, b"some data")]);
    assert_eq!(r.log().last_index(), li + 1);
    assert_eq!(r.log().committed(), li);
    for to in [2, 3] {
        let sent = appends_to(&rd.messages, to);
        assert_eq!(
            sent,
            [append(
                1,
                to,
                term,
                (li, term),
                vec![command(li + 1, term, b"some data")],
                li
            )],
            "to {to}"
        );
    }
    r.on_persisted(rd.persist_marker);
}

/// §8: a new leader appends a no-op entry of its term at the start of its
/// term (which also commits the entries of earlier terms, §5.4.2).
#[test]
fn leader_appends_a_noop_on_election() {
    let mut r = node(1, &[1, 2, 3], 2, &[1, 2, 2]);
    let out = make_leader(&mut r);
    let term = r.term();
    assert_eq!(term, 3);
    let last = r.log().entry(4).expect("a new entry");
    assert_eq!(
        (last.index, last.term, &last.payload),
        (4, term, &Payload::Noop)
    );
    assert_eq!(out.entries, [entry(4, term)]);
    for to in [2, 3] {
        let sent = appends_to(&out.all(), to);
        assert_eq!(sent, [append(1, to, term, (3, 2), vec![entry(4, term)], 0)]);
    }
}

/// §5.3: "A log entry is committed once the leader that created the entry
/// has replicated it on a majority of the servers." The leader counts
/// itself.
#[test]
fn leader_commits_once_a_majority_acknowledged() {
    let cases: &[(u64, &[u64], bool)] = &[
        (1, &[], true),
        (3, &[], false),
        (3, &[2], true),
        (3, &[2, 3], true),
        (5, &[], false),
        (5, &[2], false),
        (5, &[2, 3], true),
        (5, &[2, 3, 4], true),
        (5, &[2, 3, 4, 5], true),
    ];
    for (i, &(size, acceptors, committed)) in cases.iter().enumerate() {
        let ids: Vec<u64> = (1..=size).collect();
        let mut r = node(1, &ids, 1, &[1]);
        let li = make_settled_leader(&mut r);
        let (index, term) = r.propose(b"x".to_vec()).expect("leader");
        flush(&mut r);
        for &from in acceptors {
            step(&mut r, append_ok(from, 1, term, index));
        }
        assert_eq!(r.log().committed() > li, committed, "case #{i}");
    }
}

/// Thesis §10.2.1: the leader counts itself towards a majority only for
/// entries durable on its own disk, i.e. after `on_persisted`.
#[test]
fn leader_counts_itself_only_once_its_write_is_durable() {
    let mut r = node(1, &[1, 2, 3], 1, &[1]);
    let li = make_settled_leader(&mut r);
    let (index, term) = r.propose(b"x".to_vec()).expect("leader");
    let rd = r.ready();
    assert_eq!(rd.entries.len(), 1);
    // A follower acknowledges before the leader's own write is durable.
    r.step(append_ok(2, 1, term, index));
    assert_eq!(
        r.log().committed(),
        li,
        "committed with only one durable copy"
    );
    let rd2 = r.ready();
    assert!(rd2.committed_entries.is_empty());
    r.on_persisted(rd2.persist_marker);
    assert_eq!(r.log().committed(), li);
    // The leader's write becomes durable: now a majority holds the entry.
    r.on_persisted(rd.persist_marker);
    assert_eq!(r.log().committed(), index);
    let out = flush(&mut r);
    assert_eq!(out.committed, [command(index, term, b"x")]);
}

/// Thesis §10.2.1: the leader's own write counts only as far as it is
/// durable: when an earlier Ready's write completes, the leader counts
/// itself for that Ready's entries, not for entries appended since (still
/// in memory). Mutant M31 (teeth s60): counting `last_index` instead of the
/// persisted index at `on_persisted` survived every test; it committed an
/// entry held durably by one node of three.
#[test]
fn an_earlier_write_completing_counts_the_leader_only_for_its_own_entries() {
    let mut r = node(1, &[1, 2, 3], 1, &[1]);
    make_settled_leader(&mut r);
    let (x, term) = r.propose(b"x".to_vec()).expect("leader");
    let rd = r.ready();
    assert_eq!(rd.entries, [command(x, term, b"x")]);
    // A second entry, appended but not yet handed out for writing.
    let (y, _) = r.propose(b"y".to_vec()).expect("leader");
    // Follower 2 holds both durably; follower 3 nothing.
    r.step(append_ok(2, 1, term, y));
    // The leader's write of x (only) becomes durable.
    r.on_persisted(rd.persist_marker);
    assert_eq!(
        r.log().committed(),
        x,
        "y is durable on one node of three (follower 2) only"
    );
}

/// Thesis §10.2.1: "the leader can write to its disk in parallel with
/// replicating to the followers ... the leader may even commit an entry
/// before it has been written to its own disk, if a majority of followers
/// have written it to their disks". The AppendEntries leave before the
/// leader's own write is durable; two durable followers of three commit the
/// entry without it; the leader still hands the entry to its state machine
/// only once it is durable locally (Ready: committed entries are locally
/// durable), so the client's answer waits for max(own write, followers),
/// never their sum.
#[test]
fn leader_commits_with_two_durable_followers_before_its_own_write() {
    let mut r = node(1, &[1, 2, 3], 1, &[1]);
    let li = make_settled_leader(&mut r);
    let (index, term) = r.propose(b"x".to_vec()).expect("leader");
    let rd = r.ready();
    assert_eq!(rd.entries, [command(index, term, b"x")]);
    for to in [2, 3] {
        assert_eq!(
            appends_to(&rd.messages, to).len(),
            1,
            "the append to {to} leaves before the leader's write is durable"
        );
        assert!(appends_to(&rd.persisted_messages, to).is_empty());
    }
    // One durable follower is not a majority without the leader.
    r.step(append_ok(2, 1, term, index));
    assert_eq!(r.log().committed(), li, "committed on one durable copy");
    // Two durable followers are.
    r.step(append_ok(3, 1, term, index));
    assert_eq!(
        r.log().committed(),
        index,
        "a majority of followers hold the entry durably: it is committed"
    );
    // Committed, but not durable here: not handed to the state machine.
    let rd2 = r.ready();
    assert!(
        rd2.committed_entries.is_empty(),
        "applied before the leader's own write is durable: {:?}",
        rd2.committed_entries
    );
    assert!(!r.has_ready() || r.ready().committed_entries.is_empty());
    // The leader's write becomes durable: now the entry is applied.
    r.on_persisted(rd.persist_marker);
    r.on_persisted(rd2.persist_marker);
    let out = flush(&mut r);
    assert_eq!(out.committed, [command(index, term, b"x")]);
}

/// §5.3: the leader "applies the entry to its state machine" once it is
/// committed, and "includes that index in future AppendEntries RPCs
/// (including heartbeats) so that the other servers eventually find out";
/// followers then apply it too.
#[test]
fn committed_entries_are_applied_everywhere() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    let (index, term) = c.propose(1, b"x");
    assert_eq!(c.node(1).log().committed(), index);
    assert_eq!(c.applied[&1].last(), Some(&command(index, term, b"x")));
    for _ in 0..2 {
        c.tick(1);
    }
    for id in [2, 3] {
        assert_eq!(c.node(id).log().committed(), index, "node {id}");
        assert_eq!(
            c.applied[&id].last(),
            Some(&command(index, term, b"x")),
            "node {id}"
        );
    }
    // Every node applied the same entries in the same order.
    assert_eq!(c.applied[&1], c.applied[&2]);
    assert_eq!(c.applied[&1], c.applied[&3]);
}

/// §5.3: "When the leader commits an entry, it also commits all preceding
/// entries in its log, including entries created by previous leaders."
#[test]
fn leader_commits_preceding_entries() {
    let logs: &[&[Term]] = &[&[], &[2], &[1, 1], &[1, 2, 2]];
    for (i, log) in logs.iter().enumerate() {
        let mut r = node(1, &[1, 2, 3], 2, log);
        make_leader(&mut r);
        let (term, last) = (r.term(), r.log().last_index());
        let out = step(&mut r, append_ok(2, 1, term, last));
        assert_eq!(r.log().committed(), last, "#{i}");
        let mut want: Vec<_> = ents(log);
        want.push(entry(last, term));
        assert_eq!(out.committed, want, "#{i}");
    }
}

/// Figure 2, AppendEntries receiver rule 5: "If leaderCommit > commitIndex,
/// set commitIndex = min(leaderCommit, index of last new entry)", and the
/// follower applies the entries it knows committed.
#[test]
fn follower_commits_up_to_the_leaders_commit_index() {
    let cases: &[(u64, u64, u64)] = &[(1, 1, 1), (2, 2, 2), (2, 1, 1), (1, 2, 1), (3, 0, 0)];
    for (i, &(n, leader_commit, want)) in cases.iter().enumerate() {
        let mut r = node(1, &[1, 2, 3], 1, &[]);
        let entries: Vec<_> = (1..=n).map(|i| entry(i, 1)).collect();
        let out = step(&mut r, append(2, 1, 1, (0, 0), entries, leader_commit));
        assert_eq!(r.log().committed(), want, "#{i}");
        assert_eq!(out.committed, ents(&vec![1; want as usize]), "#{i}");
    }
}

/// Figure 2, AppendEntries receiver rule 5, where the cap matters: the
/// follower holds entries *past* the ones the leader just sent, left over
/// from an earlier term and possibly not on the leader. The commit index
/// stops at the last entry the message vouched for, even though the
/// leader's commit index (and the follower's log) reach further: those
/// extra entries may still be replaced (§5.3), so they must never be
/// applied.
#[test]
fn follower_commits_no_further_than_the_last_entry_the_leader_sent() {
    // Entries 2 and 3 (term 1) came from a deposed leader.
    let mut r = node(2, &[1, 2, 3], 2, &[1, 1, 1]);
    // The leader of term 2 holds (1, 1), then its own entries from 2 on,
    // and has committed up to 3: a heartbeat-like AppendEntries after 1.
    let out = step(&mut r, append(1, 2, 2, (1, 1), vec![], 3));
    assert_eq!(r.log().committed(), 1, "committed entries not vouched for");
    assert_eq!(out.committed, ents(&[1]));
    // Once the leader's entry 2 replaces the stale one, 2 commits (not 3).
    let out = step(&mut r, append(1, 2, 2, (1, 1), vec![entry(2, 2)], 3));
    assert_eq!(log_of(&r), [(1, 1), (2, 2)]);
    assert_eq!(r.log().committed(), 2);
    assert_eq!(out.committed, [entry(2, 2)]);
}

/// §5.3: "If the follower does not find an entry in its log with the same
/// index and term, then it refuses the new entries." The refusal carries a
/// hint for the leader (the last index whose term is at most the leader's
/// `prev_term`).
#[test]
fn follower_checks_the_previous_entry() {
    // The follower holds (1, term 1), (2, term 2).
    let cases = [
        ((0, 0), true, 0, None),
        ((1, 1), true, 1, None),
        ((2, 2), true, 2, None),
        ((1, 2), false, 1, Some((1, 1))),
        ((3, 3), false, 3, Some((2, 2))),
    ];
    for (i, (prev, success, index, hint)) in cases.into_iter().enumerate() {
        let mut r = node(1, &[1, 2, 3], 2, &[1, 2]);
        let out = step(&mut r, append(2, 1, 2, prev, vec![], 0));
        let resp = out.of_kind("AppendEntriesResponse");
        assert_eq!(resp.len(), 1, "#{i}");
        assert_eq!(resp[0].term, 2);
        assert_eq!(
            resp[0].body,
            Body::AppendEntriesResponse {
                index,
                success,
                hint
            },
            "#{i}"
        );
        assert_eq!(
            log_of(&r),
            [(1, 1), (2, 2)],
            "#{i}: a probe changes nothing"
        );
    }
}

/// Figure 2, AppendEntries receiver rules 3 and 4: "If an existing entry
/// conflicts with a new one (same index but different terms), delete the
/// existing entry and all that follow it. Append any new entries not
/// already in the log." A stale or duplicated AppendEntries truncates
/// nothing.
#[test]
fn follower_appends_and_truncates_conflicts() {
    type Case = (
        (u64, u64),
        &'static [(u64, u64)],
        &'static [(u64, u64)],
        &'static [(u64, u64)],
    );
    // (prev, new entries, resulting log, entries written to storage)
    let cases: &[Case] = &[
        ((2, 2), &[(3, 3)], &[(1, 1), (2, 2), (3, 3)], &[(3, 3)]),
        (
            (1, 1),
            &[(2, 3), (3, 4)],
            &[(1, 1), (2, 3), (3, 4)],
            &[(2, 3), (3, 4)],
        ),
        ((0, 0), &[(1, 1)], &[(1, 1), (2, 2)], &[]),
        ((0, 0), &[(1, 3)], &[(1, 3)], &[(1, 3)]),
        ((1, 1), &[], &[(1, 1), (2, 2)], &[]),
    ];
    for (i, &(prev, new, want, want_written)) in cases.iter().enumerate() {
        let mut r = node(1, &[1, 2, 3], 2, &[1, 2]);
        let entries = new.iter().map(|&(i, t)| entry(i, t)).collect();
        let out = step(&mut r, append(2, 1, 4, prev, entries, 0));
        assert_eq!(log_of(&r), want, "#{i}");
        let written: Vec<_> = out.entries.iter().map(|e| (e.index, e.term)).collect();
        assert_eq!(written, want_written, "#{i}: only new entries are written");
        assert_eq!(
            out.of_kind("AppendEntriesResponse")[0].body,
            Body::AppendEntriesResponse {
                index: prev.0 + new.len() as u64,
                success: true,
                hint: None
            },
            "#{i}"
        );
    }

    // A delayed copy of an earlier message arrives after a longer one.
    let mut r = node(1, &[1, 2, 3], 2, &[1]);
    step(
        &mut r,
        append(2, 1, 2, (1, 1), vec![entry(2, 2), entry(3, 2)], 0),
    );
    let out = step(&mut r, append(2, 1, 2, (1, 1), vec![entry(2, 2)], 0));
    assert_eq!(
        log_of(&r),
        [(1, 1), (2, 2), (3, 2)],
        "a stale AppendEntries truncated the log"
    );
    assert!(out.entries.is_empty());
    assert_eq!(
        out.of_kind("AppendEntriesResponse")[0].body,
        Body::AppendEntriesResponse {
            index: 2,
            success: true,
            hint: None
        }
    );
}

/// A follower acknowledges entries only once they are durable: the answer
/// is one of the Ready's `persisted_messages`.
#[test]
fn follower_acknowledges_only_durable_entries() {
    let mut r = node(1, &[1, 2, 3], 2, &[1]);
    r.step(append(2, 1, 2, (1, 1), vec![entry(2, 2)], 0));
    let rd = r.ready();
    assert_eq!(rd.entries, [entry(2, 2)]);
    assert!(rd.messages.is_empty(), "{:?}", rd.messages);
    assert_eq!(rd.persisted_messages.len(), 1);
    assert!(matches!(
        rd.persisted_messages[0].body,
        Body::AppendEntriesResponse {
            index: 2,
            success: true,
            ..
        }
    ));
}

/// Figure 7 (§5.3): whatever the follower's log — missing entries (a, b),
/// extra uncommitted entries (c, d), or both (e, f) — the leader of term 8
/// brings it in line with its own. With the conflict hint, each follower
/// needs at most one rejected AppendEntries.
#[test]
fn figure_7_followers_converge_to_the_leader() {
    let leader: &[Term] = &[1, 1, 1, 4, 4, 5, 5, 6, 6, 6];
    let followers: [(&str, &[Term]); 6] = [
        ("a", &[1, 1, 1, 4, 4, 5, 5, 6, 6]),
        ("b", &[1, 1, 1, 4]),
        ("c", &[1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 6]),
        ("d", &[1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 7, 7]),
        ("e", &[1, 1, 1, 4, 4, 4, 4]),
        ("f", &[1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3]),
    ];
    for (name, log) in followers {
        // Node 3 holds the leader's log: its vote makes 1 leader even when
        // the follower's log is more up to date (d).
        let mut c = Cluster::from_logs(&[1, 2, 3], &[(7, leader), (7, log), (7, leader)], |_| {});
        c.elect(1);
        assert_eq!(c.node(1).term(), 8, "({name})");
        for _ in 0..2 {
            c.tick(1);
        }
        let mut want: Vec<(u64, u64)> = leader
            .iter()
            .enumerate()
            .map(|(i, &t)| (i as u64 + 1, t))
            .collect();
        want.push((11, 8));
        assert_eq!(log_of(c.node(1)), want, "({name}) leader");
        assert_eq!(log_of(c.node(2)), want, "({name}) follower");
        assert_eq!(c.node(2).log().committed(), 11, "({name})");
        let rejections = c.count(|m| {
            m.from == 2 && matches!(m.body, Body::AppendEntriesResponse { success: false, .. })
        });
        assert!(rejections <= 1, "({name}) {rejections} rejections");
    }
}

/// Fast backtracking (§5.3, "the follower can include the term of the
/// conflicting entry"): a follower with a long divergent tail spanning
/// several terms is repaired in a couple of round trips, not one per entry.
#[test]
fn long_divergent_tail_is_repaired_in_few_round_trips() {
    let mut follower: Vec<Term> = vec![1];
    follower.extend([2; 50]);
    follower.extend([3; 50]);
    let mut leader: Vec<Term> = vec![1];
    leader.extend([4; 20]);
    let mut c = Cluster::from_logs(
        &[1, 2, 3],
        &[(4, &leader), (4, &follower), (4, &leader)],
        |_| {},
    );
    c.elect(1);
    c.tick(1);
    c.tick(1);
    assert_eq!(log_of(c.node(2)), log_of(c.node(1)));
    assert_eq!(c.node(2).log().last_index(), 22);
    let rejections = c.count(|m| {
        m.from == 2 && matches!(m.body, Body::AppendEntriesResponse { success: false, .. })
    });
    assert!(
        rejections <= 2,
        "{rejections} rejections to repair 100 divergent entries"
    );

    // The other way round: the follower is far behind within one term and
    // its tail of a later term must go.
    let mut follower: Vec<Term> = vec![1; 3];
    follower.extend([2; 60]);
    let leader: Vec<Term> = vec![1; 40];
    let mut c = Cluster::from_logs(
        &[1, 2, 3],
        &[(2, &leader), (2, &follower), (2, &leader)],
        |_| {},
    );
    c.elect(1);
    c.tick(1);
    c.tick(1);
    assert_eq!(log_of(c.node(2)), log_of(c.node(1)));
    let rejections = c.count(|m| {
        m.from == 2 && matches!(m.body, Body::AppendEntriesResponse { success: false, .. })
    });
    assert!(rejections <= 2, "{rejections} rejections");
}

/// Pipelining is bounded: a follower in replicate mode has at most
/// `max_inflight` unacknowledged AppendEntries at any time; the rest are
/// sent as acknowledgements free the window.
#[test]
fn pipelining_is_bounded_by_max_inflight() {
    let mut c = Cluster::with(&[1, 2, 3], |c| {
        c.max_inflight = 2;
        c.max_batch_bytes = 1; // one entry per message
    });
    c.elect(1);
    let start = c.node(1).log().last_index();
    for i in 0..10u8 {
        c.node_mut(1).propose(vec![i]).expect("leader");
    }
    c.flush_all();
    for to in [2, 3] {
        let sent = appends_to(&c.queue.iter().cloned().collect::<Vec<_>>(), to);
        assert_eq!(sent.len(), 2, "to {to}: {sent:?}");
        for m in &sent {
            let Body::AppendEntries { entries, .. } = &m.body else {
                unreachable!()
            };
            assert_eq!(entries.len(), 1);
        }
    }
    let mut max_seen = 0;
    while c.deliver_one() {
        for to in [2, 3] {
            let pr = &c.node(1).progress[&to];
            max_seen = max_seen.max(pr.inflights.len());
            assert!(
                pr.inflights.len() <= 2,
                "to {to}: {} in flight",
                pr.inflights.len()
            );
        }
    }
    assert_eq!(max_seen, 2);
    assert_eq!(c.node(1).log().committed(), start + 10);
    for id in [2, 3] {
        assert_eq!(log_of(c.node(id)), log_of(c.node(1)), "node {id}");
    }
}

/// Batching (thesis §10.2.1) stops at [`MAX_ENTRIES_PER_APPEND`] entries
/// per AppendEntries, whatever `max_batch_bytes` admits: receivers refuse
/// more (a frame of tiny entries decodes into ~40x its bytes). Found by
/// review, stop 41: a leader with many tiny entries pending put them all in
/// one AppendEntries.
#[test]
fn an_append_carries_at_most_the_entry_cap() {
    let mut c = Cluster::with(&[1, 2, 3], |c| c.max_batch_bytes = 64 << 20);
    c.elect(1);
    c.deliver();
    let start = c.node(1).log().last_index();
    let n = MAX_ENTRIES_PER_APPEND + 5;
    for _ in 0..n {
        c.node_mut(1).propose(Vec::new()).expect("leader");
    }
    c.flush_all();
    for to in [2, 3] {
        let sent = appends_to(&c.queue.iter().cloned().collect::<Vec<_>>(), to);
        let sizes: Vec<usize> = sent
            .iter()
            .map(|m| match &m.body {
                Body::AppendEntries { entries, .. } => entries.len(),
                _ => 0,
            })
            .collect();
        assert!(
            sizes.iter().all(|&k| k <= MAX_ENTRIES_PER_APPEND),
            "to {to}: appends of {sizes:?} entries, cap {MAX_ENTRIES_PER_APPEND}"
        );
        assert_eq!(sizes.iter().sum::<usize>(), n, "to {to}: {sizes:?}");
    }
    c.deliver();
    let last = c.node(1).log().last_index();
    assert_eq!(last, start + n as u64);
    assert_eq!(c.node(1).log().committed(), last);
    for id in [2, 3] {
        assert_eq!(c.node(id).log().last_index(), last, "node {id}");
    }
}

/// §8 (client interaction): a follower refuses proposals and reads and
/// names the leader it knows; a candidate knows none.
#[test]
fn non_leaders_refuse_proposals_with_a_leader_hint() {
    let mut r = node(1, &[1, 2, 3], 1, &[1]);
    step(&mut r, heartbeat(2, 1, 1, 0));
    assert_eq!(
        r.propose(b"x".to_vec()),
        Err(ProposeError::NotLeader(NotLeader { leader: Some(2) }))
    );
    assert!(flush(&mut r).all().is_empty());
    assert_eq!(r.log().last_index(), 1, "nothing appended");

    let mut r: Raft = node(1, &[1, 2, 3], 1, &[1]);
    make_candidate(&mut r);
    assert_eq!(r.role(), Role::Candidate);
    assert_eq!(
        r.propose(b"x".to_vec()),
        Err(ProposeError::NotLeader(NotLeader { leader: None }))
    );
}

/// §5.3: "If followers crash or run slowly, or if network packets are lost,
/// the leader retries AppendEntries RPCs indefinitely ... until all
/// followers eventually store all log entries." Here the AppendEntries
/// carrying a proposal is lost on the way to both followers of a pipelining
/// leader, and no further proposal comes: the heartbeats must get the entry
/// through, and it must commit.
#[test]
fn lost_appends_are_retried_until_they_arrive() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    c.filter = Some(Box::new(
        |m| !matches!(&m.body, Body::AppendEntries { entries, .. } if !entries.is_empty()),
    ));
    let index = c.node_mut(1).propose(b"x".to_vec()).expect("leader").0;
    c.deliver();
    assert_eq!(
        c.node(2).log().last_index(),
        index - 1,
        "the append was not lost"
    );
    c.filter = None;
    for _ in 0..2 * T {
        c.tick(1);
    }
    for id in [2, 3] {
        assert_eq!(
            c.node(id).log().last_index(),
            index,
            "node {id} never received the entry"
        );
    }
    assert_eq!(
        c.node(1).log().committed(),
        index,
        "the proposal never committed"
    );
}

/// Raft §5.3: "the leader retries AppendEntries indefinitely". Appends lost
/// while the in-flight window is full leave the follower's progress paused
/// with nothing coming back to free it; its heartbeat answers must free a
/// slot, so that one append at the optimistic position is rejected and
/// probing restarts from the match point.
#[test]
fn appends_lost_with_a_full_window_are_resent_after_heartbeats() {
    let mut c = Cluster::with(&[1, 2, 3], |cfg| cfg.max_inflight = 2);
    c.elect(1);
    c.filter = Some(Box::new(|m| {
        !(m.to == 3
            && matches!(&m.body, Body::AppendEntries { entries, .. } if !entries.is_empty()))
    }));
    for i in 0..4 {
        c.propose(1, format!("x{i}").as_bytes());
    }
    let last = c.node(1).log().last_index();
    assert!(c.node(3).log().last_index() < last);
    c.filter = None;
    for _ in 0..4 * T {
        if c.node(3).log().last_index() == last {
            break;
        }
        c.tick(1);
    }
    assert_eq!(c.node(3).log().last_index(), last, "node 3 never caught up");
}

//! Unit tests of [`super`]'s pure parts: what a record takes, the
//! check's ledger and its kept client (moved out of `placement_sync.rs`,
//! stop 54, to keep that file under ~1,000 lines; unchanged).

use super::*;
use crate::runtime::MemberStatus;

fn status(members: &[(&str, bool)], config_index: Index, commit: Index) -> PeerStatus {
    PeerStatus {
        config_index,
        commit,
        members: members
            .iter()
            .map(|&(a, voter)| MemberStatus {
                id: crate::identity::node_id(a),
                addr: Some(a.to_string()),
                voter,
                ..MemberStatus::default()
            })
            .collect(),
        ..PeerStatus::default()
    }
}

#[test]
fn only_a_committed_configuration_that_is_not_joint_is_recorded() {
    let members = [("a:1", true), ("b:1", true), ("t:1", false)];
    let s = status(&members, 7, 7);
    assert_eq!(
        committed_replicas(&s),
        Some(vec!["a:1".to_string(), "b:1".to_string()]),
        "voters only: a learner serves no calls"
    );
    // Appended, not committed (thesis §4.1: it could still be cut off).
    assert_eq!(committed_replicas(&status(&members, 8, 7)), None);
    // Joint (thesis §4.3): a passage, not the group's place.
    let mut joint = status(&members, 7, 7);
    joint.joint = true;
    assert_eq!(committed_replicas(&joint), None);
    // No configuration yet (a replica hosted on demand).
    assert_eq!(committed_replicas(&status(&[], 0, 0)), None);
    // A voter without an address cannot be routed to.
    let mut blind = status(&members, 7, 7);
    blind.members[0].addr = None;
    assert_eq!(committed_replicas(&blind), None);
}

#[test]
fn a_record_keeps_the_listed_order_of_the_replicas_that_stay() {
    let s = |v: &[&str]| v.iter().map(|a| a.to_string()).collect::<Vec<_>>();
    assert_eq!(
        merged(&s(&["c", "a", "b"]), &s(&["b", "d", "c"])),
        s(&["c", "b", "d"])
    );
    assert!(same_set(&s(&["a", "b"]), &s(&["b", "a"])));
    assert!(!same_set(&s(&["a", "b"]), &s(&["a", "c"])));
    assert!(!same_set(&s(&["a"]), &s(&["a", "b"])));
}

/// Found by review (stop 43): the check compared a group's
/// configuration only with the one it had itself recorded (or first
/// saw), so an older record that landed last, or a change whose record
/// failed before a restart, was never put right. It now reads what
/// group 0 holds on a change, on a record, and at a bounded age.
#[test]
fn the_check_reads_the_placement_on_a_change_a_record_or_its_age() {
    let mut l = Ledger::default();
    assert!(!l.due(&[], Some(5)), "nothing led here: nothing to read");
    // First sight of a led group (also after a restart): read at once,
    // and again at the next check while the read fails.
    assert!(l.due(&[(1, 7)], None));
    assert!(l.due(&[(1, 7)], None), "a failed read is retried");
    l.read(&[(1, 7)], Some(&[1][..]), None);
    // No replica of group 0 here: a read every VERIFY_EVERY checks.
    for _ in 1..VERIFY_EVERY {
        assert!(!l.due(&[(1, 7)], None));
    }
    assert!(l.due(&[(1, 7)], None), "read again after VERIFY_EVERY");
    l.read(&[(1, 7)], Some(&[1][..]), None);
    assert!(
        l.due(&[(1, 9)], None),
        "a new configuration is read at once"
    );
    l.read(&[(1, 9)], Some(&[1][..]), None);
    assert!(!l.due(&[], None), "leadership lost");
    assert!(l.due(&[(1, 9)], None), "a group led again is read at once");
    // A replica of group 0 here: read when it committed anything.
    l.read(&[(1, 9)], Some(&[1][..]), Some(4));
    assert!(!l.due(&[(1, 9)], Some(4)));
    assert!(l.due(&[(1, 9)], Some(5)), "a record may have landed");
    l.read(&[(1, 9)], Some(&[1][..]), Some(5));
    for _ in 1..VERIFY_EVERY_WITH_REPLICA {
        assert!(!l.due(&[(1, 9)], Some(5)));
    }
    assert!(l.due(&[(1, 9)], Some(5)), "a lagging replica is read past");
    // No group 0 anywhere: a read at a backed-off age, or on a change.
    l.read(&[(1, 9)], None, Some(5));
    for _ in 1..2 * VERIFY_EVERY {
        assert!(!l.due(&[(1, 9)], Some(5)));
    }
    assert!(l.due(&[(1, 10)], Some(5)));
}

/// Found by review (stop 44): a read that found no group 0 (every seed
/// answered `NotHosted`, also on a sharded node whose seeds do not host
/// it) stopped the periodic reads until a configuration or leader
/// changed, losing the bound silently. It now backs off: the interval
/// doubles from `2 * VERIFY_EVERY` up to `UNSHARDED_EVERY_MAX` checks.
#[test]
fn a_check_that_finds_no_group_0_reads_again_backing_off() {
    let led = [(1, 9)];
    let mut l = Ledger::default();
    assert!(l.due(&led, None));
    let mut gaps = Vec::new();
    for _ in 0..6 {
        l.read(&led, None, None);
        let mut n = 1;
        while !l.due(&led, None) {
            n += 1;
            assert!(
                n <= 60,
                "a check that found no group 0 did not read it again within 60 checks (gaps before: {gaps:?})"
            );
        }
        gaps.push(n);
    }
    assert_eq!(gaps, [10, 20, 40, 60, 60, 60], "doubling up to the cap");
    // A change is still read at once, and a read that finds group 0
    // brings back the ordinary age.
    l.read(&led, None, None);
    assert!(
        l.due(&[(1, 10)], None),
        "a new configuration is read at once"
    );
    l.read(&[(1, 10)], Some(&[1][..]), None);
    for _ in 1..VERIFY_EVERY {
        assert!(!l.due(&[(1, 10)], None));
    }
    assert!(l.due(&[(1, 10)], None), "read again after VERIFY_EVERY");
}

/// Found by review (stop 44): every due check built a new client (a UDP
/// endpoint, a QUIC/TLS handshake and a hello with every seed). The
/// check keeps one until a call through it fails, and seeds the next
/// with group 0's voters once, then with every node it knows.
#[test]
fn the_placement_client_is_kept_until_a_call_fails() {
    let s = |v: &[&str]| v.iter().map(|a| a.to_string()).collect::<Vec<_>>();
    let mut link: Link<u32> = Link::default();
    assert_eq!(link.client(), None);
    assert_eq!(link.seeds(s(&["a", "b", "c"])), s(&["a", "b", "c"]));
    link.keep(1, Some(s(&["g", "h"])));
    for _ in 0..3 {
        assert_eq!(link.client(), Some(1), "kept across checks");
        link.keep(1, None);
    }
    link.failed();
    assert_eq!(link.client(), None, "made anew after a failed call");
    assert_eq!(
        link.seeds(s(&["a"])),
        s(&["g", "h"]),
        "group 0's voters first"
    );
    assert_eq!(
        link.seeds(s(&["a"])),
        s(&["a"]),
        "a client so seeded that failed: every node known"
    );
}

/// Found by review (stop 44): the check wrote the voters it took at the
/// start of the tick, after a connect and a read that can take seconds,
/// so a move committed meanwhile was overwritten by the old set. The
/// write is now made only while the configuration is the one taken
/// (and, for the leader's check, while this node still leads).
#[test]
fn a_record_is_not_written_once_its_configuration_moved_on() {
    let old = [("a:1", true), ("b:1", true), ("c:1", true)];
    let new = [("a:1", true), ("b:1", true), ("d:1", true)];
    let leading = |members: &[(&str, bool)], config: Index, commit: Index| {
        let mut s = status(members, config, commit);
        s.role = Role::Leader;
        s
    };
    assert!(still_current(7, true, &leading(&old, 7, 7)));
    assert!(
        !still_current(7, true, &leading(&new, 9, 9)),
        "a move committed after the voters were taken: the old set was written over it"
    );
    assert!(
        !still_current(7, true, &leading(&new, 9, 8)),
        "a newer configuration appended: the old one is no longer in force"
    );
    assert!(
        !still_current(7, true, &status(&old, 7, 7)),
        "this node no longer leads the group"
    );
    assert!(
        still_current(7, false, &status(&old, 7, 7)),
        "a move's record does not need this node to lead"
    );
    let mut joint = leading(&old, 7, 7);
    joint.joint = true;
    assert!(!still_current(7, true, &joint));
}

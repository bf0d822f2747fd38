//! The catch-up rounds of a new server (thesis §4.2.1) at their edges:
//! where a round starts and which acknowledgement ends it. (Kept out of
//! `membership`, which is past ~1,000 lines.)

use super::harness::*;
use crate::core::{Configuration, Raft, Restored};

/// Thesis §4.2.1: a round is timed from its start, and it ends with the
/// acknowledgement of its last entry. A learner added to a leader that has
/// led for longer than an election timeout, and that holds the whole log
/// within the same tick, is caught up as soon as its acknowledgements
/// arrive, before any heartbeat. Mutants that survived every test (teeth,
/// stop 55): ME7, the first round's start not set when the member is added
/// (`start_rounds` in `on_config_changed`), so that round counted from
/// tick 0, as long as the leadership; RE7, append acknowledgements not
/// ending rounds (`on_ack` in `handle_append_response`), so only a
/// heartbeat answer could.
#[test]
fn a_learner_that_catches_up_at_once_is_caught_up_at_its_acknowledgement() {
    let mut c = Cluster::with(&[1, 2, 3], |_| {});
    c.nodes.insert(
        4,
        Raft::new(config(4), Restored::empty()).expect("valid config"),
    );
    c.elect(1);
    c.propose(1, b"a");
    for _ in 0..3 * T {
        c.tick(1);
    }
    let mut target = Configuration::new([1, 2, 3]);
    target.learners.insert(4);
    c.node_mut(1).propose_config(target).expect("change");
    // Delivered within the tick the learner was added in.
    c.deliver();
    let last = c.node(1).log().last_index();
    assert_eq!(
        c.node(1).catch_up_progress(4),
        Some((last, last)),
        "premise: the learner holds the whole log"
    );
    assert!(
        c.node(1).learner_caught_up(4),
        "a learner that held the whole log within the tick it was added in is not caught up"
    );
}

/// A member a configuration adds is sent an AppendEntries (a probe, its
/// match point unknown) in the same step that appends the configuration,
/// not at the first heartbeat answer a heartbeat interval later: from that
/// entry on the leader uses the new configuration (thesis §4.1), and the
/// new member's catch-up (§4.2.1) starts at once. etcd raft does the same
/// (`switchToConfig` probes every newly added replica). Mutant that
/// survived every test (teeth, stop 55): RE1, `send_append` sending no
/// empty AppendEntries to a follower in probe mode (replication.rs, the
/// `pr.mode == Mode::Probe` of the empty-entries check), so the new
/// member, whose `next` is past the leader's log, was sent nothing.
#[test]
fn a_member_a_configuration_adds_is_probed_in_the_step_that_appends_it() {
    use crate::core::Body;
    for (what, voter) in [("learner", false), ("voter", true)] {
        let mut r = node(1, &[1, 2, 3], 1, &[]);
        make_settled_leader(&mut r);
        let mut target = Configuration::new([1, 2, 3]);
        if voter {
            target.voters.insert(4);
        } else {
            target.learners.insert(4);
        }
        let index = r.propose_config(target).expect("change");
        let out = flush(&mut r);
        let to_new: Vec<_> = out
            .all()
            .into_iter()
            .filter(|m| m.to == 4 && matches!(m.body, Body::AppendEntries { .. }))
            .collect();
        assert_eq!(
            to_new.len(),
            1,
            "a {what} added at index {index} was sent {to_new:?} in the step that appended its configuration"
        );
        if let Body::AppendEntries { prev_index, .. } = &to_new[0].body {
            assert_eq!(
                *prev_index, index,
                "the {what}'s probe starts after the configuration entry"
            );
        }
    }
}

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

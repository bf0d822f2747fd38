//! Logging of the inbound messages the core drops (see
//! [`crate::core::inbound`]): each reason is logged at `warn` the first time
//! and then at most once a minute, with how many were dropped in between,
//! so that a hostile or broken peer cannot flood the log. The counts
//! themselves are always in [`PeerStatus::dropped`](super::PeerStatus).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tracing::{debug, warn};

use crate::core::{DropReason, NodeId, Term};

/// How often one reason is logged at `warn`.
const EVERY: Duration = Duration::from_secs(60);

/// Per reason: when it was last logged at `warn`, and the drops since.
#[derive(Default)]
pub(super) struct DropLog {
    last: HashMap<DropReason, (Instant, u64)>,
}

impl DropLog {
    /// Notes one message from `from` of kind `kind` at `term` dropped for
    /// `reason`; `total` is the count so far for that reason.
    pub(super) fn note(
        &mut self,
        node: &str,
        from: NodeId,
        kind: &'static str,
        term: Term,
        reason: DropReason,
        total: u64,
    ) {
        let now = Instant::now();
        let due = match self.last.get_mut(&reason) {
            Some((at, since)) if now.duration_since(*at) < EVERY => {
                *since += 1;
                false
            }
            _ => true,
        };
        if due {
            let since = self.last.get(&reason).map_or(0, |(_, n)| *n);
            warn!(node, from, kind, term, %reason, total, suppressed = since,
                "inbound message dropped: {} (logged at most once a minute per reason)", reason.describe());
            self.last.insert(reason, (now, 0));
        } else {
            debug!(node, from, kind, term, %reason, "inbound message dropped");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reason_is_logged_once_then_counted_until_the_minute_is_up() {
        let mut log = DropLog::default();
        let r = DropReason::SecondLeader;
        log.note("n", 2, "Heartbeat", 5, r, 1);
        assert_eq!(log.last.get(&r).map(|(_, n)| *n), Some(0), "logged");
        for total in 2..=10 {
            log.note("n", 2, "Heartbeat", 5, r, total);
        }
        assert_eq!(log.last.get(&r).map(|(_, n)| *n), Some(9), "suppressed");
        // Another reason has its own budget.
        log.note("n", 3, "TimeoutNow", 5, DropReason::FromStranger, 1);
        assert_eq!(
            log.last.get(&DropReason::FromStranger).map(|(_, n)| *n),
            Some(0)
        );
        // A minute later the reason is logged again, with the count.
        if let Some((at, _)) = log.last.get_mut(&r)
            && let Some(earlier) = at.checked_sub(EVERY)
        {
            *at = earlier;
        }
        log.note("n", 2, "Heartbeat", 5, r, 11);
        assert_eq!(log.last.get(&r).map(|(_, n)| *n), Some(0));
    }
}

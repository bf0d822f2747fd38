//! Logs of a leader's snapshot transfers: one `tracing` event when a
//! transfer to a follower starts, one every [`PROGRESS_EVERY`] while it
//! runs (bytes acknowledged, MB/s), a warning each time the follower sent
//! it back to an earlier offset (it restarted, or chunks were lost: the
//! transfer goes on from the follower's offset, it is not restarted from
//! scratch), and one when it ends (installed by the follower, or abandoned:
//! leadership lost, follower removed).
//!
//! The core ([`Raft::snapshot_sends`](crate::core::Raft::snapshot_sends))
//! reports the transfers; the node task calls [`Transfers::observe`] once
//! a tick on the leader, so an idle node pays one empty check per tick.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use crate::core::{Index, NodeId, SnapshotSend};

/// How often a running transfer logs its progress.
pub const PROGRESS_EVERY: Duration = Duration::from_secs(5);

struct Running {
    index: Index,
    total: u64,
    acked: u64,
    restarts: u64,
    started: Instant,
    logged: Instant,
}

/// The transfers seen at the last observation.
#[derive(Default)]
pub(super) struct Transfers {
    running: BTreeMap<NodeId, Running>,
}

fn mb_per_s(bytes: u64, took: Duration) -> f64 {
    bytes as f64 / 1e6 / took.as_secs_f64().max(1e-6)
}

impl Transfers {
    /// Logs what changed since the last call.
    pub(super) fn observe(&mut self, node: &str, sends: Vec<SnapshotSend>) {
        if sends.is_empty() && self.running.is_empty() {
            return;
        }
        let now = Instant::now();
        let mut seen = BTreeMap::new();
        for s in sends {
            let r = match self.running.remove(&s.to) {
                Some(r) if r.index == s.index => r,
                _ => {
                    info!(
                        node,
                        to = s.to,
                        index = s.index,
                        bytes = s.total,
                        "sending a snapshot to a follower"
                    );
                    Running {
                        index: s.index,
                        total: s.total,
                        acked: 0,
                        restarts: 0,
                        started: now,
                        logged: now,
                    }
                }
            };
            if s.restarts > r.restarts {
                warn!(
                    node,
                    to = s.to,
                    index = s.index,
                    at = r.acked,
                    from = s.acked,
                    restarts = s.restarts,
                    "snapshot transfer sent back to an earlier offset by the follower (it restarted, or chunks were lost); going on from there"
                );
            }
            let mut r = Running {
                acked: s.acked,
                restarts: s.restarts,
                ..r
            };
            if now.duration_since(r.logged) >= PROGRESS_EVERY {
                r.logged = now;
                info!(
                    node,
                    to = s.to,
                    index = s.index,
                    acked = s.acked,
                    bytes = s.total,
                    mb_per_s = mb_per_s(s.acked, now - r.started),
                    "snapshot transfer in progress"
                );
            }
            seen.insert(s.to, r);
        }
        for (to, r) in std::mem::replace(&mut self.running, seen) {
            let took = now - r.started;
            info!(
                node,
                to,
                index = r.index,
                acked = r.acked,
                bytes = r.total,
                took_ms = took.as_millis() as u64,
                mb_per_s = mb_per_s(r.acked, took),
                restarts = r.restarts,
                "snapshot transfer ended (installed by the follower, or abandoned)"
            );
        }
    }
}

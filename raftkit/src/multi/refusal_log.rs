//! How often a refused placement writer is logged
//! ([`super::placement_auth`]): a node certificate refused at group 0's
//! leader logs a `warn!` event, and a hostile certificate retrying in a
//! loop must not flood the log.
//!
//! # Rule
//!
//! Per writer (node id): its first refusal is logged; then at most one
//! every [`EVERY`] (10 s), carrying how many refusals of it were not
//! logged since the last one (`suppressed`). Refusals of a writer past
//! its window start it again, as a first one.
//!
//! # Bounds
//!
//! At most [`MAX_WRITERS`] writers are tracked; when full, the writers
//! whose window has passed are dropped, and if none has, a new writer's
//! refusals share one overflow entry (logged, with its count, at most once
//! per `EVERY` too). So a flood logs at most `MAX_WRITERS + 1` events per
//! `EVERY`, and memory stays bounded. The count of a window no later
//! refusal ends is never logged (the last refusals of a burst are only
//! counted).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::core::NodeId;

/// The least time between two logged refusals of one writer.
pub(crate) const EVERY: Duration = Duration::from_secs(10);
/// The most writers tracked one by one.
pub(crate) const MAX_WRITERS: usize = 1024;

/// One writer's (or the overflow's) window.
#[derive(Clone, Copy, Debug)]
struct Window {
    /// When its last refusal was logged.
    logged: Instant,
    /// Its refusals since, not logged.
    suppressed: u64,
}

impl Window {
    /// Notes a refusal at `now`: `Some(suppressed before it)` if it is to
    /// be logged.
    fn note(&mut self, now: Instant) -> Option<u64> {
        if now.saturating_duration_since(self.logged) >= EVERY {
            let suppressed = self.suppressed;
            *self = Window {
                logged: now,
                suppressed: 0,
            };
            Some(suppressed)
        } else {
            self.suppressed += 1;
            None
        }
    }
}

/// What to log of a refusal ([`RefusalLog::note`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Logged {
    /// The refusals not logged since the last logged one.
    pub(crate) suppressed: u64,
    /// Whether the writer shares the overflow entry (too many writers).
    pub(crate) overflow: bool,
}

/// The refusals logged per writer (module docs). The clock is passed in.
#[derive(Debug, Default)]
pub(crate) struct RefusalLog {
    writers: BTreeMap<NodeId, Window>,
    overflow: Option<Window>,
}

impl RefusalLog {
    /// Notes a refusal of `writer` at `now`; `Some` when it is to be
    /// logged, with what to say.
    pub(crate) fn note(&mut self, writer: NodeId, now: Instant) -> Option<Logged> {
        if let Some(w) = self.writers.get_mut(&writer) {
            return w.note(now).map(|suppressed| Logged {
                suppressed,
                overflow: false,
            });
        }
        if self.writers.len() >= MAX_WRITERS {
            self.writers
                .retain(|_, w| now.saturating_duration_since(w.logged) < EVERY);
        }
        if self.writers.len() < MAX_WRITERS {
            self.writers.insert(
                writer,
                Window {
                    logged: now,
                    suppressed: 0,
                },
            );
            return Some(Logged {
                suppressed: 0,
                overflow: false,
            });
        }
        let logged = match &mut self.overflow {
            Some(w) => w.note(now),
            None => {
                self.overflow = Some(Window {
                    logged: now,
                    suppressed: 0,
                });
                Some(0)
            }
        };
        logged.map(|suppressed| Logged {
            suppressed,
            overflow: true,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn first(suppressed: u64) -> Option<Logged> {
        Some(Logged {
            suppressed,
            overflow: false,
        })
    }

    #[test]
    fn a_writer_is_logged_first_then_once_per_interval_with_the_count() {
        let t0 = Instant::now();
        let mut log = RefusalLog::default();
        assert_eq!(log.note(7, t0), first(0), "the first refusal");
        for i in 1..=5u32 {
            assert_eq!(log.note(7, t0 + Duration::from_millis(i.into())), None);
        }
        // Another writer has a window of its own.
        assert_eq!(log.note(8, t0 + Duration::from_millis(3)), first(0));
        assert_eq!(log.note(7, t0 + EVERY - Duration::from_millis(1)), None);
        assert_eq!(log.note(7, t0 + EVERY), first(6), "six not logged");
        assert_eq!(log.note(7, t0 + EVERY + Duration::from_secs(1)), None);
        assert_eq!(log.note(7, t0 + EVERY * 3), first(1));
        // A clock that does not move on never logs twice.
        assert_eq!(log.note(8, t0), None);
    }

    #[test]
    fn too_many_writers_share_one_overflow_window() {
        let t0 = Instant::now();
        let mut log = RefusalLog::default();
        let logged = (0..MAX_WRITERS as u64)
            .filter(|w| log.note(*w, t0).is_some())
            .count();
        assert_eq!(logged, MAX_WRITERS);
        let over = |suppressed| {
            Some(Logged {
                suppressed,
                overflow: true,
            })
        };
        let n = MAX_WRITERS as u64;
        assert_eq!(log.note(n, t0), over(0));
        assert_eq!(log.note(n + 1, t0), None);
        assert_eq!(log.note(n + 2, t0), None);
        assert_eq!(log.writers.len(), MAX_WRITERS, "bounded");
        // Once the tracked writers' windows passed, a new writer takes a
        // place of its own again.
        assert_eq!(log.note(n + 3, t0 + EVERY), first(0));
        assert_eq!(log.writers.len(), 1);
    }
}

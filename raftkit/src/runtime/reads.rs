//! Serving reads at the consistency the caller chose
//! ([`Consistency`]), and the tick clock lease reads rely on.
//!
//! - `Linearizable`: ReadIndex (thesis §6.4) on the leader, or through the
//!   leader on a follower (§6.4.1): the core hands out the read index, the
//!   apply thread serves the read once it applied that index. A follower
//!   therefore answers from its own state, never at an index its current
//!   leader did not confirm after the read arrived.
//! - `Lease`: on a leader whose lease holds
//!   ([`Raft::lease_read`](crate::core::Raft::lease_read)), the read is
//!   handed to the apply thread at the commit index at once; otherwise it
//!   is served as `Linearizable` (never weaker than asked).
//! - `Stale`: any member answers from its state once it applied what it had
//!   handed its state machine, and reports that index with the leader's
//!   commit index as it last heard it ([`Staleness`]).
//!
//! # The tick clock
//!
//! A lease is counted in the core's ticks, so the ticks must follow the
//! monotonic clock: a tokio interval that falls behind (a stalled task, a
//! paused process) does not replay the ticks it missed, and a leader whose
//! core counted fewer ticks than time passed would believe in a lease that
//! ran out. [`TickClock`] derives the number of ticks due from the elapsed
//! monotonic time since the node started, and the node feeds exactly that
//! many (at most [`TickClock::burst`] at once; any further backlog is
//! skipped, which cannot lengthen a lease shorter than the burst). The
//! node catches up before every lease read as well, so a lease read never
//! looks at a clock older than the current tick.

use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use super::apply::{ApplyMsg, Reply};
use super::node::NodeTask;
use crate::client::wire::{ClientRequest, ClientResponse};
use crate::client::{Consistency, Staleness};
use crate::error::Error;

/// The core's ticks, derived from the monotonic clock (module docs).
#[derive(Debug)]
pub(super) struct TickClock {
    start: Instant,
    period: Duration,
    fed: u64,
    burst: u64,
    /// The node's ticks were withheld (its group was quiescent, see
    /// `tick_gate`) since the last feeding.
    paused: bool,
}

impl TickClock {
    /// A clock of `period` ticks starting now, feeding at most `burst`
    /// ticks at once.
    pub(super) fn new(period: Duration, burst: u64) -> Self {
        TickClock {
            start: Instant::now(),
            period: period.max(Duration::from_micros(1)),
            fed: 0,
            burst: burst.max(1),
            paused: false,
        }
    }

    /// The most ticks fed at once.
    #[cfg(test)]
    fn burst(&self) -> u64 {
        self.burst
    }

    /// Marks the ticks from now until the next feeding as withheld: the
    /// next [`NodeTask::catch_up_ticks`] feeds none of them.
    pub(super) fn pause(&mut self) {
        self.paused = true;
    }

    /// Whether ticks were withheld since the last feeding; if so, the clock
    /// skips to now (nothing of the pause is due).
    fn resume(&mut self) -> bool {
        if !std::mem::take(&mut self.paused) {
            return false;
        }
        let elapsed = self.start.elapsed().as_nanos();
        let target = u64::try_from(elapsed / self.period.as_nanos()).unwrap_or(u64::MAX);
        self.fed = self.fed.max(target);
        true
    }

    /// The ticks due since the last call (those beyond the burst are
    /// skipped).
    pub(super) fn due(&mut self) -> u64 {
        let elapsed = self.start.elapsed().as_nanos();
        let target = u64::try_from(elapsed / self.period.as_nanos()).unwrap_or(u64::MAX);
        let due = target.saturating_sub(self.fed);
        self.fed = self.fed.max(target);
        due.min(self.burst)
    }
}

impl NodeTask {
    /// Feeds the core the ticks the monotonic clock says are due.
    ///
    /// After a pause (a quiescent group's ticks withheld) the paused time is
    /// not fed: a woken follower must not fire an election timeout for the
    /// time its leader's coalesced heartbeats stood in for ticks. The
    /// leader's lease rounds are forgotten instead, so no lease outlives
    /// real time it did not count (the lease returns with the next round a
    /// quorum acknowledges).
    pub(super) fn catch_up_ticks(&mut self, clock: &mut TickClock) {
        if clock.resume() {
            self.raft.forget_lease_rounds();
            return;
        }
        for _ in 0..clock.due() {
            self.raft.tick();
        }
    }

    /// Serves a `Lease` or `Stale` read without a ReadIndex round when it
    /// can; hands the read back when it must go through ReadIndex.
    pub(super) fn serve_weak_read(
        &mut self,
        clock: &mut TickClock,
        consistency: Consistency,
        query: Vec<u8>,
        reply: Reply,
        staleness: Option<oneshot::Sender<Staleness>>,
    ) -> Option<(Vec<u8>, Reply)> {
        match consistency {
            Consistency::Linearizable => Some((query, reply)),
            Consistency::Lease => {
                self.catch_up_ticks(clock);
                let lease = self.raft.lease_read();
                // Tooth (simulation builds only): a leader serves lease
                // reads whether or not its lease holds.
                #[cfg(feature = "sim")]
                let lease = lease.or_else(|| {
                    (crate::sim::runtime::teeth::on(
                        crate::sim::runtime::teeth::Tooth::LeaseWithoutLease,
                    ) && self.raft.role() == crate::core::Role::Leader)
                        .then(|| self.raft.log().committed())
                });
                match lease {
                    Some(index) => {
                        self.lease_reads += 1;
                        tracing::trace!(node = %self.name, index, "lease read");
                        let _ = self.apply_tx.send(ApplyMsg::Read {
                            index,
                            query,
                            reply,
                        });
                        None
                    }
                    None => Some((query, reply)),
                }
            }
            Consistency::Stale => {
                let s = Staleness {
                    applied: self.raft.log().applied(),
                    leader_commit: self.raft.leader_commit(),
                };
                let index = s.applied;
                // Tooth (simulation builds only): the member reports the
                // leader's commit index as what it applied.
                #[cfg(feature = "sim")]
                let s = if crate::sim::runtime::teeth::on(
                    crate::sim::runtime::teeth::Tooth::StaleOverstated,
                ) {
                    Staleness {
                        applied: s.leader_commit.max(s.applied),
                        ..s
                    }
                } else {
                    s
                };
                if let Some(tx) = staleness {
                    let _ = tx.send(s);
                }
                tracing::trace!(node = %self.name, index, "stale read");
                let _ = self.apply_tx.send(ApplyMsg::Read {
                    index,
                    query,
                    reply,
                });
                None
            }
        }
    }
}

impl<S: crate::StateMachine> super::Peer<S> {
    /// Serves an encoded query at `consistency` on this peer: any member
    /// for `Linearizable` (a follower asks its leader for the read index)
    /// and `Stale`, the leader for `Lease`. A stale read also returns how
    /// stale it may be.
    pub async fn read_encoded_with(
        &self,
        query: Vec<u8>,
        consistency: Consistency,
    ) -> Result<(Vec<u8>, Option<Staleness>), Error> {
        self.check_enabled(crate::schema::HandlerKind::Read, &query)?;
        let permit = self.inner.admission.admit(query.len()).await?;
        let (stx, srx) = oneshot::channel();
        let staleness = (consistency == Consistency::Stale).then_some(stx);
        let out = self
            .call(|tx| super::node::Command::Read {
                query,
                reply: Reply::new(tx, Some(permit)),
                consistency,
                staleness,
            })
            .await?;
        Ok((Vec::from(out), srx.await.ok()))
    }

    /// Serves a query at `consistency` (see [`Self::read_encoded_with`]).
    pub async fn read_with(
        &self,
        query: S::Read,
        consistency: Consistency,
    ) -> Result<(S::ReadOutput, Option<Staleness>), Error> {
        let (out, staleness) = self
            .read_encoded_with(
                crate::state_machine::encode("query", &query).map_err(Error::not_sent)?,
                consistency,
            )
            .await?;
        Ok((
            crate::state_machine::decode("read output", &out)?,
            staleness,
        ))
    }
}

/// [`client_service::handle_untimed`](super::client_service::handle_untimed)
/// with the consistency the request's trailer asked for: reads are served
/// here, any other request there. Not timed: the stream a request came on
/// times it.
pub async fn handle_with<S: crate::StateMachine>(
    peer: &super::Peer<S>,
    principal: &crate::tls::Principal,
    request: ClientRequest,
    consistency: Consistency,
) -> ClientResponse {
    let ClientRequest::Read { query } = request else {
        return super::client_service::handle_untimed(peer, principal, request).await;
    };
    // Not timed here: see `client_service::handle_untimed`.
    match peer.read_encoded_with(query, consistency).await {
        Ok((output, Some(staleness))) => ClientResponse::Stale { output, staleness },
        Ok((output, None)) => ClientResponse::Ok(output),
        Err(e) => ClientResponse::Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_paused_tick_clock_feeds_nothing_of_the_pause() {
        let mut c = TickClock::new(Duration::from_millis(10), 100);
        tokio::time::advance(Duration::from_millis(30)).await;
        assert_eq!(c.due(), 3);
        c.pause();
        tokio::time::advance(Duration::from_millis(500)).await;
        assert!(c.resume());
        assert_eq!(c.due(), 0, "the paused half second is not due");
        assert!(!c.resume());
        tokio::time::advance(Duration::from_millis(20)).await;
        assert_eq!(c.due(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn the_tick_clock_follows_the_monotonic_clock_and_bounds_bursts() {
        let mut c = TickClock::new(Duration::from_millis(10), 5);
        assert_eq!(c.due(), 0);
        tokio::time::advance(Duration::from_millis(25)).await;
        assert_eq!(c.due(), 2);
        assert_eq!(c.due(), 0, "fed once");
        tokio::time::advance(Duration::from_millis(15)).await;
        assert_eq!(c.due(), 2);
        // A long stall: at most the burst, the rest skipped.
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(c.due(), c.burst());
        assert_eq!(c.due(), 0);
    }
}

//! Backpressure: how many commands (and bytes of commands) a node has in
//! flight at once.
//!
//! Every write and read a [`Peer`](super::Peer) takes holds a [`Permit`]
//! from the moment it is admitted until its caller is answered (applied,
//! refused, or failed): one unit of the count budget and as many units of
//! the byte budget as its command has bytes. (The apply thread returns the
//! room of the writes it answers in one batch of entries together, right
//! after the batch: [`Permit::absorb`].) When either budget is spent, a
//! new call waits for room for at most the admission wait, then fails with
//! [`Error::Overloaded`] (nothing was applied). So whatever the callers do,
//! a node holds at most `max_in_flight` commands and `max_in_flight_bytes`
//! bytes of them between admission and answer: in the log's unapplied
//! tail, in the storage queue, in the apply queue and in the table of
//! waiting replies. A slow disk or a slow state machine slows the writers
//! down; it never makes memory grow.
//!
//! Not counted here: requests not yet admitted. A request read from a
//! client connection holds its frame (and its decoded command) while it
//! waits for room, up to the admission wait; the client service bounds
//! those with a budget of its own, taken before the frame is read and
//! held until the answer (`intake`: per node and per connection).
//!
//! The semaphores are FIFO-fair: a large command waiting for room is not
//! overtaken forever by small ones.
//!
//! A waiting call must go on being polled until it is admitted or its wait
//! runs out: room released is handed to the waiter at the head of the
//! queue whether or not its task runs, so a waiter that is never polled
//! again (its wait then never runs out either) keeps that room, and every
//! call behind it waits and is refused `Overloaded`. Callers that run many
//! requests as futures of one task (`client_mux`) poll them whatever else
//! the task waits for.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::Error;

/// The default bound on commands in flight per node.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 16_384;
/// The default bound on bytes of commands in flight per node.
pub const DEFAULT_MAX_IN_FLIGHT_BYTES: usize = 64 << 20;
/// The default longest wait for room before [`Error::Overloaded`].
pub const DEFAULT_ADMISSION_WAIT: Duration = Duration::from_secs(2);

/// A node's budgets.
#[derive(Debug)]
pub struct Admission {
    count: Arc<Semaphore>,
    bytes: Arc<Semaphore>,
    max_bytes: u32,
    wait: Duration,
    refused: AtomicU64,
}

/// Room for one command in flight; returned to the budgets when dropped.
#[derive(Debug)]
pub struct Permit {
    count: OwnedSemaphorePermit,
    bytes: Option<OwnedSemaphorePermit>,
}

impl Permit {
    /// Takes `other`'s room into this permit: both are returned together,
    /// one release per budget, when this one is dropped (the apply thread
    /// returns a whole batch's room so, instead of two locked releases per
    /// answered call). Room that cannot be merged (another node's budgets)
    /// is returned at once, or with this one.
    pub fn absorb(&mut self, other: Permit) {
        let Permit { count, bytes } = other;
        if Arc::ptr_eq(self.count.semaphore(), count.semaphore()) {
            self.count.merge(count);
        }
        match (&mut self.bytes, bytes) {
            (Some(mine), Some(theirs)) if Arc::ptr_eq(mine.semaphore(), theirs.semaphore()) => {
                mine.merge(theirs)
            }
            (mine @ None, Some(theirs)) => *mine = Some(theirs),
            // Another node's bytes: dropped, so returned now.
            _ => {}
        }
    }
}

impl Admission {
    /// Budgets of `max_count` commands and `max_bytes` bytes (at most
    /// `u32::MAX`); a call waits at most `wait` for room.
    pub fn new(max_count: usize, max_bytes: usize, wait: Duration) -> Self {
        let max_bytes = u32::try_from(max_bytes).unwrap_or(u32::MAX).max(1);
        Admission {
            count: Arc::new(Semaphore::new(max_count.max(1))),
            bytes: Arc::new(Semaphore::new(max_bytes as usize)),
            max_bytes,
            wait,
            refused: AtomicU64::new(0),
        }
    }

    /// Waits (at most the admission wait) for room for a command of `bytes`
    /// bytes. A command larger than the whole byte budget takes all of it.
    pub async fn admit(&self, bytes: usize) -> Result<Permit, Error> {
        let units = u32::try_from(bytes).unwrap_or(u32::MAX).min(self.max_bytes);
        if let Some(permit) = self.try_admit(units) {
            return Ok(permit);
        }
        let acquire = async {
            let count = Arc::clone(&self.count).acquire_owned().await.ok()?;
            let bytes = if units == 0 {
                None
            } else {
                Some(
                    Arc::clone(&self.bytes)
                        .acquire_many_owned(units)
                        .await
                        .ok()?,
                )
            };
            Some(Permit { count, bytes })
        };
        match tokio::time::timeout(self.wait, acquire).await {
            Ok(Some(permit)) => Ok(permit),
            _ => {
                self.refused.fetch_add(1, Ordering::Relaxed);
                Err(Error::Overloaded)
            }
        }
    }

    /// Room taken at once if both budgets have it: no timer armed, no
    /// clock read, no future polled (nearly every call, below the bounds).
    /// It never overtakes a waiting call: a semaphore hands released room
    /// to its queued waiters before any is free to take, and `try_acquire`
    /// takes only free room, all or nothing.
    fn try_admit(&self, units: u32) -> Option<Permit> {
        let count = Arc::clone(&self.count).try_acquire_owned().ok()?;
        let bytes = match units {
            0 => None,
            units => Some(Arc::clone(&self.bytes).try_acquire_many_owned(units).ok()?),
        };
        Some(Permit { count, bytes })
    }

    /// The byte budget and the admission wait (the client service's
    /// budget of received requests takes both, see `intake`).
    pub(crate) fn bytes_and_wait(&self) -> (usize, Duration) {
        (self.max_bytes as usize, self.wait)
    }

    /// Counts a call refused [`Error::Overloaded`] elsewhere (by the client
    /// service's budget of received requests, `intake`), so that the
    /// node's count of refusals has every one.
    pub(crate) fn note_refused(&self) {
        self.refused.fetch_add(1, Ordering::Relaxed);
    }

    /// Calls refused with [`Error::Overloaded`] so far.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_budget_refuses_after_the_wait_and_frees_on_drop() {
        let a = Admission::new(2, 100, Duration::from_millis(20));
        let p1 = a.admit(10).await.unwrap();
        let p2 = a.admit(10).await.unwrap();
        assert!(matches!(a.admit(1).await, Err(Error::Overloaded)));
        drop(p1);
        let p3 = a.admit(80).await.unwrap();
        // Count has room after dropping p2, bytes do not (80 of 100 taken).
        drop(p2);
        assert!(matches!(a.admit(30).await, Err(Error::Overloaded)));
        drop(p3);
        // A command larger than the whole budget takes all of it.
        let _all = a.admit(1_000).await.unwrap();
        assert_eq!(a.refused(), 2);
    }

    /// Absorbed room comes back with the permit that absorbed it, all of
    /// it and only then; another node's room comes back at once.
    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn absorbed_room_returns_together() {
        let a = Admission::new(10, 100, Duration::from_millis(20));
        let free = |a: &Admission| (a.count.available_permits(), a.bytes.available_permits());
        let mut room = a.admit(0).await.expect("admitted");
        for bytes in [5, 0, 30] {
            room.absorb(a.admit(bytes).await.expect("admitted"));
        }
        assert_eq!(free(&a), (6, 65));
        let other = Admission::new(10, 100, Duration::from_millis(20));
        room.absorb(other.admit(40).await.expect("admitted"));
        assert_eq!(
            free(&other).0,
            10,
            "another node's count is returned at once"
        );
        assert_eq!(free(&a), (6, 65));
        drop(room);
        assert_eq!(free(&a), (10, 100));
        assert_eq!(free(&other), (10, 100));
        assert_eq!(a.refused() + other.refused(), 0);
    }

    /// Room free at once is taken at once; a call that would pass a
    /// waiting one (FIFO) waits behind it, even with room for itself.
    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn room_is_taken_at_once_but_never_ahead_of_a_waiter() {
        use std::future::Future;
        let a = Arc::new(Admission::new(10, 100, Duration::from_secs(5)));
        let now = |a: &Admission, bytes| {
            let admit = std::pin::pin!(a.admit(bytes));
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            match admit.poll(&mut cx) {
                std::task::Poll::Ready(r) => Some(r),
                std::task::Poll::Pending => None,
            }
        };
        let p1 = now(&a, 60).expect("room at once").expect("admitted");
        // 80 bytes do not fit: the call waits (holding the 40 free).
        let waiter = tokio::spawn({
            let a = Arc::clone(&a);
            async move { a.admit(80).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        // 10 bytes would fit the budget, but not ahead of the waiter.
        assert!(now(&a, 10).is_none(), "a small call overtook a waiter");
        drop(p1);
        let p2 = waiter.await.expect("task").expect("the waiter is admitted");
        drop(p2);
        assert!(now(&a, 10).is_some_and(|r| r.is_ok()));
        assert_eq!(a.refused(), 0);
    }
}

//! Backpressure before admission: how many bytes of client requests a
//! node has received and not yet answered.
//!
//! [`Admission`](super::admission) bounds what is between admission and
//! answer. A request read from a client connection exists before that: its
//! frame, then its decoded command, wait for admission for up to the
//! admission wait. Without a bound of their own, every connection could
//! hold a window of such requests (the streams it may open, and
//! [`MUX_WINDOW`] requests of its multiplexed stream, up to a frame cap
//! each), and a client may open any number of connections, so a few
//! clients with large writes against a slow apply thread made a node's
//! memory grow without bound.
//!
//! Invariants:
//! - the client service takes room for a request's frame, as many bytes
//!   as its length prefix says, before it reads the frame's body, and
//!   holds it until the request is answered (or dropped: the connection
//!   ends). So the bodies of requests received and not yet answered, on
//!   every connection of the node together, are at most the node's budget
//!   ([`Intake::new`]: the node's in-flight byte budget, see
//!   [`PeerBuilder::max_in_flight`](super::PeerBuilder::max_in_flight)),
//!   and on one connection at most a quarter of it
//!   ([`CONNECTION_SHARE`]); a frame larger than a budget takes all of it;
//! - while a stream waits for room its frame is not read: QUIC flow
//!   control holds the rest of it, and what follows, at the sender;
//! - a request that finds no room within the admission wait is answered
//!   [`Overloaded`](crate::error::Error::Overloaded) (it never reached the
//!   log: nothing was applied, the client retries after a backoff); its
//!   body is dropped as it arrives, never buffered (only its request id is
//!   read, to answer it);
//! - the budgets are FIFO semaphores (a large request is not overtaken
//!   forever by small ones), and a waiting request is polled until it has
//!   room or its wait runs out (room handed to a waiter never polled again
//!   would be lost to every other connection: see `admission`);
//! - room free at once is taken without a timer or a lock (an atomic per
//!   budget); returning it locks each semaphore's queue once.
//!
//! Why per node, not per certificate: the memory to bound is the node's,
//! and a per-certificate budget would multiply with the certificates the
//! CA issued; one client of many connections can take the node's whole
//! budget, as it can take the whole admission budget, and then the others
//! wait and are refused `Overloaded` as they would be there. The
//! per-connection share keeps one connection from taking it all alone.
//!
//! Not counted: bytes QUIC itself holds for a connection's streams before
//! the service reads them (bounded per stream by its receive window) and
//! hellos (one per connection, capped and timed).
//!
//! [`MUX_WINDOW`]: super::client_mux::MUX_WINDOW

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::debug;

use crate::error::Error;

/// The part of the node's budget one connection may hold: one quarter.
pub(crate) const CONNECTION_SHARE: usize = 4;

/// A node's budget of received, unanswered request bytes.
#[derive(Debug)]
pub(crate) struct Intake {
    node: Arc<Semaphore>,
    node_max: u32,
    connection_max: u32,
    wait: Duration,
    refused: AtomicU64,
    #[cfg(test)]
    gauge: Arc<Gauge>,
}

/// One connection's share of its node's [`Intake`].
#[derive(Debug, Clone)]
pub(crate) struct ConnectionIntake {
    node: Arc<Intake>,
    connection: Arc<Semaphore>,
}

/// Room for one request's frame; returned to the budgets when dropped.
#[derive(Debug)]
pub(crate) struct Room {
    _connection: Option<OwnedSemaphorePermit>,
    _node: Option<OwnedSemaphorePermit>,
    #[cfg(test)]
    held: Option<(Arc<Gauge>, usize)>,
}

impl Intake {
    /// A budget of `bytes` (at most `u32::MAX`) for the node, a
    /// [`CONNECTION_SHARE`] of it per connection; a request waits at most
    /// `wait` for room.
    pub(crate) fn new(bytes: usize, wait: Duration) -> Arc<Intake> {
        let node_max = u32::try_from(bytes).unwrap_or(u32::MAX).max(1);
        Arc::new(Intake {
            node: Arc::new(Semaphore::new(node_max as usize)),
            node_max,
            connection_max: (node_max / CONNECTION_SHARE as u32).max(1),
            wait,
            refused: AtomicU64::new(0),
            #[cfg(test)]
            gauge: Arc::default(),
        })
    }

    /// The budget of a new connection.
    pub(crate) fn connection(self: &Arc<Self>) -> ConnectionIntake {
        ConnectionIntake {
            node: Arc::clone(self),
            connection: Arc::new(Semaphore::new(self.connection_max as usize)),
        }
    }

    /// Requests refused [`Error::Overloaded`] for want of room so far.
    #[cfg(test)]
    pub(crate) fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// The node's budget, in bytes.
    #[cfg(test)]
    pub(crate) fn budget(&self) -> usize {
        self.node_max as usize
    }

    /// The most bytes of request bodies held at once so far ([`Room::holds`]).
    #[cfg(test)]
    pub(crate) fn peak_held(&self) -> usize {
        self.gauge.peak.load(Ordering::SeqCst)
    }
}

impl ConnectionIntake {
    /// Room for a frame of `bytes` if both budgets have it now.
    pub(crate) fn try_take(&self, bytes: usize) -> Option<Room> {
        let (c, n) = self.units(bytes);
        let connection = Arc::clone(&self.connection)
            .try_acquire_many_owned(c)
            .ok()?;
        let node = Arc::clone(&self.node.node).try_acquire_many_owned(n).ok()?;
        Some(self.room(connection, node))
    }

    /// Waits (at most the admission wait) for room for a frame of `bytes`;
    /// [`Error::Overloaded`] when none came.
    pub(crate) async fn take(self, bytes: usize) -> Result<Room, Error> {
        if let Some(room) = self.try_take(bytes) {
            return Ok(room);
        }
        let (c, n) = self.units(bytes);
        let acquire = async {
            let connection = Arc::clone(&self.connection)
                .acquire_many_owned(c)
                .await
                .ok()?;
            let node = Arc::clone(&self.node.node)
                .acquire_many_owned(n)
                .await
                .ok()?;
            Some((connection, node))
        };
        match tokio::time::timeout(self.node.wait, acquire).await {
            Ok(Some((connection, node))) => Ok(self.room(connection, node)),
            _ => {
                self.node.refused.fetch_add(1, Ordering::Relaxed);
                debug!(bytes, "no room for a client request; answered Overloaded");
                Err(Error::Overloaded)
            }
        }
    }

    /// The units of each budget a frame of `bytes` takes (all of a budget
    /// it exceeds).
    fn units(&self, bytes: usize) -> (u32, u32) {
        let bytes = u32::try_from(bytes).unwrap_or(u32::MAX);
        (
            bytes.min(self.node.connection_max),
            bytes.min(self.node.node_max),
        )
    }

    fn room(&self, connection: OwnedSemaphorePermit, node: OwnedSemaphorePermit) -> Room {
        Room {
            _connection: Some(connection),
            _node: Some(node),
            #[cfg(test)]
            held: None,
        }
        .counted_by(self)
    }
}

impl Room {
    /// Notes that this room's request holds a body of `bytes` (what the
    /// tests measure: bodies held, whatever room was taken).
    pub(crate) fn holds(&mut self, bytes: usize) {
        #[cfg(test)]
        if let Some((gauge, held)) = &mut self.held {
            gauge.add(bytes);
            *held += bytes;
        }
        let _ = bytes;
    }

    #[cfg(test)]
    fn counted_by(mut self, intake: &ConnectionIntake) -> Room {
        self.held = Some((Arc::clone(&intake.node.gauge), 0));
        self
    }

    #[cfg(not(test))]
    fn counted_by(self, _: &ConnectionIntake) -> Room {
        self
    }
}

#[cfg(test)]
impl Drop for Room {
    fn drop(&mut self) {
        if let Some((gauge, held)) = self.held.take() {
            gauge.held.fetch_sub(held, Ordering::SeqCst);
        }
    }
}

/// Bytes of request bodies held, and the most held at once (tests).
#[cfg(test)]
#[derive(Debug, Default)]
struct Gauge {
    held: std::sync::atomic::AtomicUsize,
    peak: std::sync::atomic::AtomicUsize,
}

#[cfg(test)]
impl Gauge {
    fn add(&self, bytes: usize) {
        let now = self.held.fetch_add(bytes, Ordering::SeqCst) + bytes;
        self.peak.fetch_max(now, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Room is taken per connection and per node, a frame larger than a
    /// budget takes all of it, a request without room is refused after
    /// the wait, and dropped room comes back.
    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn room_is_bounded_per_connection_and_per_node() {
        let intake = Intake::new(400, Duration::from_millis(20));
        let (a, b, c, d) = (
            intake.connection(),
            intake.connection(),
            intake.connection(),
            intake.connection(),
        );
        let a1 = a.clone().take(60).await.expect("room");
        let a2 = a.clone().take(40).await.expect("room");
        assert!(
            matches!(a.clone().take(1).await, Err(Error::Overloaded)),
            "a connection holds at most a quarter of the node's budget"
        );
        // Larger than its connection's share: takes all of it.
        let b1 = b.clone().take(150).await.expect("room");
        assert!(b.try_take(1).is_none());
        let c1 = c.clone().take(100).await.expect("room");
        // 350 of 400 taken: the node has 50 left.
        assert!(matches!(d.clone().take(100).await, Err(Error::Overloaded)));
        let d1 = d.clone().take(50).await.expect("room");
        drop((a1, b1));
        let e1 = intake.connection().take(100).await.expect("room returned");
        drop((a2, c1, d1, e1));
        assert_eq!(intake.node.available_permits(), 400);
        // Larger than the node's budget: takes all of it.
        let all = intake.connection().take(10_000).await.expect("room");
        assert!(intake.connection().try_take(1).is_none());
        drop(all);
        assert_eq!(intake.node.available_permits(), 400);
        assert_eq!(intake.refused(), 2);
    }

    /// A waiter gets room released during its wait, ahead of a later one.
    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_waiter_gets_room_released_during_its_wait() {
        let intake = Intake::new(400, Duration::from_secs(1));
        let a = intake.connection();
        let held = a.clone().take(100).await.expect("room");
        let waiter = tokio::spawn(a.clone().take(50));
        tokio::task::yield_now().await;
        assert!(
            a.try_take(1).is_none(),
            "a later request overtook the waiter"
        );
        drop(held);
        assert!(waiter.await.expect("task").is_ok());
        assert_eq!(intake.refused(), 0);
    }
}

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
//!   ends, or its body stalls, below). So the bodies of requests received and not yet answered, on
//!   every connection of the node together, are at most the node's budget
//!   ([`Intake::new`]: the node's in-flight byte budget, see
//!   [`PeerBuilder::max_in_flight`](super::PeerBuilder::max_in_flight)),
//!   and on one connection at most a quarter of it
//!   ([`CONNECTION_SHARE`]); a frame larger than its connection's share
//!   or its certificate's cap takes all of it; one larger than the node's
//!   whole budget is refused unread ([`Rejected`](crate::error::Error::Rejected):
//!   nothing applied, and sending it again cannot help), whatever the
//!   frame cap or its role's cap: the node never reads a body it has no
//!   room for (s61: such a frame took the whole budget and was read whole);
//! - while a stream waits for room its frame is not read: QUIC flow
//!   control holds the rest of it, and what follows, at the sender;
//! - room is held for a body only while its bytes keep coming: once no
//!   byte of it arrived for the intake's stall bound
//!   ([`ConnectionIntake::stall`], [`DEFAULT_BODY_STALL`], set by
//!   [`PeerBuilder::client_body_stall`](super::PeerBuilder::client_body_stall)),
//!   the room is given back and the request is not read further: on a
//!   stream of its own it is answered
//!   [`Overloaded`](crate::error::Error::Overloaded) (it was never decoded:
//!   nothing applied), a multiplexed stream ends (its client fails the
//!   calls still waiting there). Without it a length prefix alone held its
//!   claim for as long as its connection lived (keep-alives hold it): four
//!   4-byte prefixes held a default node's whole budget and every other
//!   client was refused `Overloaded` (found by review, stop 57). As the
//!   peer side's charged frames (`transport::inbox_bytes`, `read_charged`);
//! - and only until its deadline: the whole body must be here within the
//!   stall bound plus its length at the intake's minimum body rate
//!   ([`BodyBounds`], [`DEFAULT_MIN_BODY_RATE`] 64 KiB/s, set by
//!   [`PeerBuilder::client_min_body_rate`](super::PeerBuilder::client_min_body_rate)),
//!   from when its room was taken; past it the body is dropped as a
//!   stalled one is. Without it a sender that trickled a byte within each
//!   stall bound held its claim for as long as it liked (stop 58). The
//!   whole claim is still taken up front, not as bytes arrive: a request
//!   that holds part of its room while it waits for the rest would, with
//!   others doing the same, hold the budget with none of them able to
//!   finish (hold and wait); a claim taken whole in FIFO order cannot. So
//!   holding a claim of `len` bytes for its whole deadline costs a sender
//!   `len` bytes sent at the minimum rate (a slow legitimate upload pays
//!   the same): with the defaults, holding a node's whole budget (four
//!   connections of a 16 MiB claim each) took 256 KiB/s of sending, for
//!   as long as it was held (review, stop 59), hence the next bound;
//! - one client certificate's claimed, unreceived bytes, on all its
//!   connections together, are at most its cap ([`BodyBounds`]'s
//!   `per_certificate`, by default a [`CERTIFICATE_SHARE`] of the node's
//!   budget, 16 MiB of the default 64 MiB, set by
//!   [`PeerBuilder::client_unreceived_bytes_per_certificate`](super::PeerBuilder::client_unreceived_bytes_per_certificate)),
//!   each claim counting at least [`MIN_CLAIM`] (4 KiB) against it, and a
//!   claim larger than the cap taking all of it: a claim past it waits,
//!   and is refused [`Overloaded`](crate::error::Error::Overloaded) as any
//!   claim without room (nothing applied; retryable). A claim's part of
//!   its certificate's cap is given back once its body is here (the rest
//!   of its room is held until it is answered). So holding the whole
//!   budget unsent takes [`CERTIFICATE_SHARE`] certificates, and one
//!   certificate holds at most `cap / MIN_CLAIM` claims unsent at once
//!   (4,096 with the defaults), not one per stream of its up to 1,024
//!   connections, each held for the stall bound. The cost to an
//!   application of a single certificate: at most the cap of its request
//!   bodies are on their way to a node at once (16 MiB by default, or
//!   4,096 small requests); more wait for room, up to the admission wait,
//!   and are refused `Overloaded` past it. Raise the cap (up to the whole
//!   budget) for such an application that uploads more than that at once;
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
//! budget with requests it sent whole, as it can take the whole admission
//! budget, and then the others wait and are refused `Overloaded` as they
//! would be there. The per-connection share keeps one connection from
//! taking it all alone, and the per-certificate cap of unreceived bytes
//! (above, within the node's budget, not beside it) one certificate from
//! holding it with claims it does not send.
//!
//! Connections: the client service serves at most
//! [`ConnectionLimits::per_certificate`] connections of one client
//! certificate (its fingerprint, as sessions' owners) and
//! [`ConnectionLimits::total`] in all at once
//! ([`PeerBuilder::client_connections`](super::PeerBuilder::client_connections),
//! defaults [`DEFAULT_CONNECTIONS_PER_CERTIFICATE`] and
//! [`DEFAULT_MAX_CONNECTIONS`]; a multi-group node's service the
//! defaults); a connection past either is closed before
//! anything of it is read, with the application code
//! `CLOSE_TOO_MANY_CONNECTIONS` and a reason, which the client reports as
//! [`Error::Unavailable`] (nothing applied). A connection's place is held
//! until it and every request task of it ended (the last clone of its
//! [`ConnectionIntake`]).
//!
//! Outside the budget, and bounded by those limits:
//! - bytes quinn holds for a connection's streams before the service reads
//!   them: at most the connection's receive window
//!   (`QuicConfig::client_receive_window`, 2 MiB by default; see
//!   `transport::quic_tuning`), whatever streams it opens (at most 100, of
//!   1.25 MB each); a stream waiting for room here is not read, so what its
//!   client sends meanwhile stays within that window;
//! - the hello, read whole before the first request: at most
//!   `MAX_CLIENT_HELLO_BYTES` (1 MiB), for at most 10 s, one per connection.
//!
//! So the request bytes a node holds for its clients, read or not, are at
//! most `budget + total * (receive window + hello cap)`: with the defaults
//! 64 MiB + 2048 * 3 MiB, and 1024 * 3 MiB for one certificate's connections
//! beyond its share of the budget (plus quinn's per-packet overhead on
//! buffered data, and the decoded form of requests being served, which
//! admission bounds). A deployment with fewer clients lowers `total`, one
//! with large requests over a long round trip raises the window.
//!
//! [`MUX_WINDOW`]: super::client_mux::MUX_WINDOW

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::debug;

use crate::error::Error;

/// The part of the node's budget one connection may hold: one quarter.
pub(crate) const CONNECTION_SHARE: usize = 4;

/// The part of the node's budget one client certificate's claimed,
/// unreceived bytes may hold by default: one quarter (module doc).
pub(crate) const CERTIFICATE_SHARE: usize = 4;

/// The least a claim counts against its certificate's cap of unreceived
/// bytes, whatever its length (module doc): 4 KiB, so that one
/// certificate holds at most `cap / MIN_CLAIM` claims (4,096 with the
/// defaults) whose bodies it has not sent, not one per stream its
/// connections may open (1,024 connections of 100 streams each).
pub(crate) const MIN_CLAIM: usize = 4 << 10;

/// The default most client connections of one certificate a node serves at
/// once (a client opens one per member it talks to; an application of many
/// processes sharing a certificate opens one per process and member, and
/// a load generator of a few hundred clients as many; etcd sets no limit,
/// so the default only bounds a runaway application: lower it to keep one
/// certificate from taking every place).
pub(crate) const DEFAULT_CONNECTIONS_PER_CERTIFICATE: usize = 1024;

/// The default most client connections a node serves at once.
pub(crate) const DEFAULT_MAX_CONNECTIONS: usize = 2048;

/// The default longest time no byte of a request's body, whose room is
/// taken, may arrive before the room is given back (module doc): longer
/// than the admission wait, which a connection's own streams waiting for
/// room may take to give back the connection's receive window (their
/// unread bytes fill it until they are refused and drained), so that a
/// body held back that way is not taken for a stalled one.
pub const DEFAULT_BODY_STALL: Duration = Duration::from_secs(5);

/// The default slowest a request's body, whose room is taken, may arrive
/// on average, in bytes per second (module doc): 64 KiB/s, a 16 MiB frame
/// (the default frame cap) in a little over four minutes, well below any
/// link a client of a cluster writes over.
pub const DEFAULT_MIN_BODY_RATE: u64 = 64 << 10;

/// How long a request's body, whose room is taken, may take to arrive
/// (module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct BodyBounds {
    /// The longest time no byte of it may arrive.
    pub(crate) stall: Duration,
    /// The slowest it may arrive on average, in bytes per second (at
    /// least 1): the whole body must be here within `stall` plus its
    /// length at this rate of the room being taken.
    pub(crate) min_rate: u64,
    /// The most bytes one client certificate may have claimed and not yet
    /// sent, on all its connections together (each claim counting at
    /// least [`MIN_CLAIM`]); `None`: a [`CERTIFICATE_SHARE`] of the
    /// node's budget.
    pub(crate) per_certificate: Option<usize>,
}

impl Default for BodyBounds {
    fn default() -> Self {
        BodyBounds {
            stall: DEFAULT_BODY_STALL,
            min_rate: DEFAULT_MIN_BODY_RATE,
            per_certificate: None,
        }
    }
}

impl BodyBounds {
    /// When a body of `len` bytes whose room was taken at `from` must be
    /// here whole: `from + stall + len / min_rate`.
    pub(crate) fn deadline(&self, len: usize, from: tokio::time::Instant) -> tokio::time::Instant {
        let len = u64::try_from(len).unwrap_or(u64::MAX);
        // Whole seconds and the rest apart: no overflow for any length.
        let rate = self.min_rate.max(1);
        let nanos = (len % rate).saturating_mul(1_000_000_000) / rate;
        let transfer = Duration::from_secs(len / rate) + Duration::from_nanos(nanos);
        from.checked_add(self.stall.saturating_add(transfer))
            // Past any instant the runtime can represent: a year is as
            // good as never for a body (and still ends).
            .unwrap_or_else(|| from + Duration::from_secs(365 * 24 * 3600))
    }
}

/// How many client connections a node serves at once (module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ConnectionLimits {
    /// Per client certificate (its fingerprint).
    pub(crate) per_certificate: usize,
    /// In all.
    pub(crate) total: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            per_certificate: DEFAULT_CONNECTIONS_PER_CERTIFICATE,
            total: DEFAULT_MAX_CONNECTIONS,
        }
    }
}

/// Why a client connection was refused: it would have been past a limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ConnectionRefusal {
    /// Its certificate already has this many connections open here.
    #[error(
        "too many connections of this client certificate ({0} open, the most this node serves); nothing was applied"
    )]
    PerCertificate(usize),
    /// The node already serves this many client connections.
    #[error(
        "too many client connections ({0} open, the most this node serves); nothing was applied"
    )]
    Total(usize),
}

/// Connections open now, in all and per certificate.
#[derive(Debug, Default)]
struct Open {
    total: usize,
    per_certificate: HashMap<[u8; 32], Certificate>,
}

/// One client certificate's open connections and its budget of claimed,
/// unreceived bytes (shared by those connections; dropped with the last).
#[derive(Debug)]
struct Certificate {
    connections: usize,
    unreceived: Arc<Semaphore>,
}

/// One connection's place in the node's [`ConnectionLimits`]; given back
/// when dropped.
#[derive(Debug)]
struct Place {
    intake: Arc<Intake>,
    certificate: [u8; 32],
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut open = lock_open(&self.intake.open);
        open.total = open.total.saturating_sub(1);
        if let Some(c) = open.per_certificate.get_mut(&self.certificate) {
            c.connections = c.connections.saturating_sub(1);
            if c.connections == 0 {
                open.per_certificate.remove(&self.certificate);
            }
        }
    }
}

fn lock_open(open: &Mutex<Open>) -> std::sync::MutexGuard<'_, Open> {
    // The counts are updated in one step each: a panic elsewhere leaves
    // them whole.
    open.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A node's budget of received, unanswered request bytes.
#[derive(Debug)]
pub(crate) struct Intake {
    node: Arc<Semaphore>,
    node_max: u32,
    connection_max: u32,
    /// The cap of one certificate's claimed, unreceived bytes.
    certificate_max: u32,
    wait: Duration,
    /// How long a body with room may take (module doc).
    body: BodyBounds,
    refused: AtomicU64,
    limits: ConnectionLimits,
    open: Mutex<Open>,
    #[cfg(test)]
    gauge: Arc<Gauge>,
}

/// One connection's share of its node's [`Intake`].
#[derive(Debug, Clone)]
pub(crate) struct ConnectionIntake {
    node: Arc<Intake>,
    connection: Arc<Semaphore>,
    /// Its certificate's budget of claimed, unreceived bytes (`None`
    /// outside the connection limits: tests of the budgets).
    certificate: Option<Arc<Semaphore>>,
    _place: Option<Arc<Place>>,
}

/// Room for one request's frame; returned to the budgets when dropped.
#[derive(Debug)]
pub(crate) struct Room {
    _connection: Option<OwnedSemaphorePermit>,
    _node: Option<OwnedSemaphorePermit>,
    /// Its certificate's part, given back once the body is here
    /// ([`Room::holds`]).
    unreceived: Option<OwnedSemaphorePermit>,
    #[cfg(test)]
    held: Option<(Arc<Gauge>, usize)>,
}

impl Intake {
    /// A budget of `bytes` (at most `u32::MAX`) for the node, a
    /// [`CONNECTION_SHARE`] of it per connection; a request waits at most
    /// `wait` for room; the default [`ConnectionLimits`] (tests).
    #[cfg(test)]
    pub(crate) fn new(bytes: usize, wait: Duration) -> Arc<Intake> {
        Intake::with_body(bytes, wait, BodyBounds::default())
    }

    /// [`Intake::new`] whose bodies may take `body` (tests).
    #[cfg(test)]
    pub(crate) fn with_body(bytes: usize, wait: Duration, body: BodyBounds) -> Arc<Intake> {
        Intake::with_limits(bytes, wait, ConnectionLimits::default(), body)
    }

    /// [`Intake::new`] serving at most `limits` connections, giving back
    /// the room of a body that takes longer than `body` allows.
    pub(crate) fn with_limits(
        bytes: usize,
        wait: Duration,
        limits: ConnectionLimits,
        body: BodyBounds,
    ) -> Arc<Intake> {
        let node_max = u32::try_from(bytes).unwrap_or(u32::MAX).max(1);
        let certificate_max = match body.per_certificate {
            Some(bytes) => u32::try_from(bytes).unwrap_or(u32::MAX),
            None => node_max / CERTIFICATE_SHARE as u32,
        };
        Arc::new(Intake {
            node: Arc::new(Semaphore::new(node_max as usize)),
            node_max,
            connection_max: (node_max / CONNECTION_SHARE as u32).max(1),
            certificate_max: certificate_max.clamp(1, node_max),
            wait,
            body: BodyBounds {
                min_rate: body.min_rate.max(1),
                ..body
            },
            refused: AtomicU64::new(0),
            limits,
            open: Mutex::default(),
            #[cfg(test)]
            gauge: Arc::default(),
        })
    }

    /// The budget of a new connection, outside the connection limits
    /// (tests of the budgets).
    #[cfg(test)]
    pub(crate) fn connection(self: &Arc<Self>) -> ConnectionIntake {
        self.budget_of(None, None)
    }

    /// A place and a budget for a new connection of the client
    /// certificate whose fingerprint is `certificate`, if the node's
    /// [`ConnectionLimits`] have room; the place is held until the last
    /// clone of the budget is dropped.
    pub(crate) fn admit(
        self: &Arc<Self>,
        certificate: [u8; 32],
    ) -> Result<ConnectionIntake, ConnectionRefusal> {
        let unreceived = {
            let mut open = lock_open(&self.open);
            if open.total >= self.limits.total {
                return Err(ConnectionRefusal::Total(open.total));
            }
            let certificate_max = self.certificate_max as usize;
            let mine = open
                .per_certificate
                .entry(certificate)
                .or_insert_with(|| Certificate {
                    connections: 0,
                    unreceived: Arc::new(Semaphore::new(certificate_max)),
                });
            if mine.connections >= self.limits.per_certificate {
                return Err(ConnectionRefusal::PerCertificate(mine.connections));
            }
            mine.connections += 1;
            let unreceived = Arc::clone(&mine.unreceived);
            open.total += 1;
            unreceived
        };
        let place = Place {
            intake: Arc::clone(self),
            certificate,
        };
        Ok(self.budget_of(Some(unreceived), Some(Arc::new(place))))
    }

    fn budget_of(
        self: &Arc<Self>,
        certificate: Option<Arc<Semaphore>>,
        place: Option<Arc<Place>>,
    ) -> ConnectionIntake {
        ConnectionIntake {
            node: Arc::clone(self),
            connection: Arc::new(Semaphore::new(self.connection_max as usize)),
            certificate,
            _place: place,
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

    /// The room of the node's budget not taken now, in bytes.
    #[cfg(test)]
    pub(crate) fn available(&self) -> usize {
        self.node.available_permits()
    }

    /// The most bytes of request bodies held at once so far ([`Room::holds`]).
    #[cfg(test)]
    pub(crate) fn peak_held(&self) -> usize {
        self.gauge.peak.load(Ordering::SeqCst)
    }
}

impl ConnectionIntake {
    /// How long no byte of a body whose room is taken may arrive before
    /// its room is given back and it is read no further (module doc).
    pub(crate) fn stall(&self) -> Duration {
        self.node.body.stall
    }

    /// When a body of `len` bytes whose room was taken at `from` must be
    /// here whole, or its room is given back and it is read no further
    /// ([`BodyBounds::deadline`], module doc).
    pub(crate) fn body_deadline(
        &self,
        len: usize,
        from: tokio::time::Instant,
    ) -> tokio::time::Instant {
        self.node.body.deadline(len, from)
    }

    /// Room for a frame of `bytes` if every budget ([`take`](Self::take))
    /// has it now.
    pub(crate) fn try_take(&self, bytes: usize) -> Option<Room> {
        if bytes > self.node.node_max as usize {
            return None;
        }
        let units = self.units(bytes);
        let connection = Arc::clone(&self.connection)
            .try_acquire_many_owned(units.connection)
            .ok()?;
        let unreceived = match &self.certificate {
            Some(certificate) => Some(
                Arc::clone(certificate)
                    .try_acquire_many_owned(units.certificate)
                    .ok()?,
            ),
            None => None,
        };
        let node = Arc::clone(&self.node.node)
            .try_acquire_many_owned(units.node)
            .ok()?;
        Some(self.room(connection, unreceived, node))
    }

    /// Waits (at most the admission wait) for room for a frame of `bytes`,
    /// in its connection's share, its certificate's cap of unreceived
    /// bytes and the node's budget, taken in that order (every request
    /// takes them in the same order: no two wait on each other);
    /// [`Error::Overloaded`] when none came (nothing applied: the client
    /// may send it again after a backoff); [`Error::Rejected`] at once for
    /// a frame larger than the node's whole budget (nothing applied, and
    /// no wait could make room for it).
    pub(crate) async fn take(self, bytes: usize) -> Result<Room, Error> {
        let budget = self.node.node_max as usize;
        if bytes > budget {
            debug!(
                bytes,
                budget, "a client request larger than the node's whole budget; refused unread"
            );
            return Err(Error::Rejected(format!(
                "a request of {bytes} bytes refused unread (not applied): larger than this \
                 node's whole budget of received requests, {budget} bytes (`max_in_flight`)"
            )));
        }
        if let Some(room) = self.try_take(bytes) {
            return Ok(room);
        }
        let units = self.units(bytes);
        let mut waiting_on = "connection";
        let acquire = async {
            let connection = Arc::clone(&self.connection)
                .acquire_many_owned(units.connection)
                .await
                .ok()?;
            let unreceived = match &self.certificate {
                Some(certificate) => {
                    waiting_on = "certificate";
                    Some(
                        Arc::clone(certificate)
                            .acquire_many_owned(units.certificate)
                            .await
                            .ok()?,
                    )
                }
                None => None,
            };
            waiting_on = "node";
            let node = Arc::clone(&self.node.node)
                .acquire_many_owned(units.node)
                .await
                .ok()?;
            Some((connection, unreceived, node))
        };
        let taken = tokio::time::timeout(self.node.wait, acquire).await;
        match taken {
            Ok(Some((connection, unreceived, node))) => Ok(self.room(connection, unreceived, node)),
            _ => {
                self.node.refused.fetch_add(1, Ordering::Relaxed);
                debug!(
                    bytes,
                    budget = waiting_on,
                    "no room for a client request; answered Overloaded"
                );
                Err(Error::Overloaded)
            }
        }
    }

    /// The units of each budget a frame of `bytes` takes: its length, all
    /// of a budget it exceeds, and at least [`MIN_CLAIM`] of its
    /// certificate's.
    fn units(&self, bytes: usize) -> Units {
        let bytes = u32::try_from(bytes).unwrap_or(u32::MAX);
        let intake = &self.node;
        Units {
            connection: bytes.min(intake.connection_max),
            certificate: bytes.max(MIN_CLAIM as u32).min(intake.certificate_max),
            node: bytes.min(intake.node_max),
        }
    }

    fn room(
        &self,
        connection: OwnedSemaphorePermit,
        unreceived: Option<OwnedSemaphorePermit>,
        node: OwnedSemaphorePermit,
    ) -> Room {
        Room {
            _connection: Some(connection),
            _node: Some(node),
            unreceived,
            #[cfg(test)]
            held: None,
        }
        .counted_by(self)
    }
}

/// What a frame takes of each budget ([`ConnectionIntake::units`]).
#[derive(Clone, Copy, Debug)]
struct Units {
    connection: u32,
    certificate: u32,
    node: u32,
}

impl Room {
    /// Notes that this room's request holds a body of `bytes`, received
    /// whole: its certificate's part is given back (its cap bounds bytes
    /// claimed and not yet sent; the connection's and the node's parts are
    /// held until the request is answered), and the tests' gauge counts
    /// it (bodies held, whatever room was taken).
    pub(crate) fn holds(&mut self, bytes: usize) {
        self.unreceived = None;
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
    /// connection's share takes all of it, a request without room is
    /// refused after the wait, and dropped room comes back.
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
        // The node's whole budget: takes all of it (larger: refused, see
        // `a_frame_larger_than_the_node_budget_is_refused_unread`).
        let all = intake.connection().take(400).await.expect("room");
        assert!(intake.connection().try_take(1).is_none());
        drop(all);
        assert_eq!(intake.node.available_permits(), 400);
        assert_eq!(intake.refused(), 2);
    }

    /// A certificate gets at most its limit of connections, the node at
    /// most its total; a place comes back when the last clone of its
    /// budget is dropped.
    #[test]
    fn connections_are_limited_per_certificate_and_in_all() {
        let limits = ConnectionLimits {
            per_certificate: 2,
            total: 3,
        };
        let intake = Intake::with_limits(
            400,
            Duration::from_millis(20),
            limits,
            BodyBounds::default(),
        );
        let (a, b) = ([1; 32], [2; 32]);
        let a1 = intake.admit(a).expect("a's first");
        let a2 = intake.admit(a).expect("a's second");
        assert_eq!(
            intake.admit(a).map(|_| ()),
            Err(ConnectionRefusal::PerCertificate(2))
        );
        let b1 = intake.admit(b).expect("b's first");
        assert_eq!(
            intake.admit([3; 32]).map(|_| ()),
            Err(ConnectionRefusal::Total(3))
        );
        let a1_task = a1.clone();
        drop(a1);
        assert!(
            intake.admit(a).is_err(),
            "a task of the connection holds it"
        );
        drop(a1_task);
        let a3 = intake.admit(a).expect("a's place came back");
        drop((a2, a3, b1));
        assert_eq!(lock_open(&intake.open).total, 0);
        assert!(lock_open(&intake.open).per_certificate.is_empty());
    }

    /// A body's deadline is the stall bound plus its length at the
    /// minimum rate, from when its room was taken, and never overflows.
    #[test]
    fn a_body_deadline_is_the_stall_plus_its_length_at_the_minimum_rate() {
        let body = BodyBounds {
            stall: Duration::from_secs(5),
            min_rate: 64 << 10,
            per_certificate: None,
        };
        let from = tokio::time::Instant::now();
        assert_eq!(body.deadline(0, from), from + Duration::from_secs(5));
        assert_eq!(
            body.deadline(16 << 20, from),
            from + Duration::from_secs(5 + 256)
        );
        assert_eq!(
            body.deadline(96 << 10, from),
            from + Duration::from_millis(6_500)
        );
        let never = BodyBounds {
            stall: Duration::MAX,
            min_rate: 1,
            per_certificate: None,
        };
        assert!(never.deadline(usize::MAX, from) > from);
    }

    /// Found by review (stop 59, intake (a)): a sender at the minimum
    /// body rate holds its claims for their whole deadline, and nothing
    /// bounded what one certificate claimed but had not sent: four 16 MiB
    /// claims of one certificate, on four connections, held a default
    /// node's whole 64 MiB budget for a minute, and every other client was
    /// refused `Overloaded`. Now one certificate's claimed, unreceived
    /// bytes are capped (a quarter of the budget by default): its next
    /// claim waits, and is refused `Overloaded` (nothing applied,
    /// retryable) after the wait; another certificate is served; a
    /// received body no longer counts against its certificate.
    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn one_certificate_cannot_claim_the_whole_budget_unreceived() {
        let intake = Intake::with_limits(
            64 << 20,
            Duration::from_millis(20),
            ConnectionLimits::default(),
            BodyBounds::default(),
        );
        let (a, b) = ([1; 32], [2; 32]);
        let conns: Vec<_> = (0..4)
            .map(|_| intake.admit(a).expect("a connection"))
            .collect();
        let mut first = conns[0].clone().take(16 << 20).await.expect("room");
        let second = conns[1].clone().take(16 << 20).await;
        assert!(
            matches!(second, Err(Error::Overloaded)),
            "one certificate claimed a second 16 MiB unreceived: {second:?}"
        );
        assert_eq!(
            Error::Overloaded.applied(),
            crate::error::Applied::No,
            "the refusal says not applied"
        );
        let other = intake.admit(b).expect("b's connection");
        let served = other.take(16 << 20).await.expect("another certificate");
        // Received: the body no longer counts against its certificate.
        first.holds(16 << 20);
        let again = conns[2].clone().take(16 << 20).await.expect("room again");
        drop((first, served, again, conns));
        assert_eq!(intake.available(), intake.budget());
    }

    /// Found by review (stop 59, intake (b)): small claims that send
    /// nothing were each held for the stall bound, as many as one
    /// certificate's connections (up to 1,024) could open streams (100
    /// each). Now every claim counts at least [`MIN_CLAIM`] against its
    /// certificate's cap, so one certificate holds at most
    /// `cap / MIN_CLAIM` claims unreceived at once.
    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn one_certificate_holds_a_bounded_number_of_small_claims() {
        let intake = Intake::with_limits(
            1 << 20,
            Duration::from_millis(20),
            ConnectionLimits::default(),
            BodyBounds::default(),
        );
        let a = [1; 32];
        let conns: Vec<_> = (0..8)
            .map(|_| intake.admit(a).expect("a connection"))
            .collect();
        // A quarter of the budget, at least MIN_CLAIM a claim.
        let most = (1 << 20) / 4 / 4096;
        let mut held = Vec::new();
        for i in 0..most {
            held.push(conns[i % 8].clone().take(4).await.expect("room"));
        }
        let past = conns[0].clone().take(4).await;
        assert!(
            matches!(past, Err(Error::Overloaded)),
            "one certificate held {} four-byte claims unreceived: {past:?}",
            most + 1
        );
        let other = intake.admit([2; 32]).expect("b's connection");
        drop(other.take(4).await.expect("another certificate"));
        drop((held, conns));
        assert_eq!(intake.available(), intake.budget());
    }

    /// The cap of a certificate's unreceived bytes is configurable
    /// (`PeerBuilder::client_unreceived_bytes_per_certificate`): raised to
    /// the whole budget, one certificate may claim all of it; a claim
    /// larger than the cap takes all of the cap, not more.
    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn the_certificate_cap_is_configurable() {
        let whole = BodyBounds {
            per_certificate: Some(1 << 20),
            ..BodyBounds::default()
        };
        let limits = ConnectionLimits::default();
        let intake = Intake::with_limits(1 << 20, Duration::from_millis(20), limits, whole);
        let rooms: Vec<_> = (0..4)
            .map(|_| {
                let conn = intake.admit([1; 32]).expect("a connection");
                conn.try_take(256 << 10).expect("room")
            })
            .collect();
        assert_eq!(intake.available(), 0, "one certificate claimed it all");
        drop(rooms);
        let small = BodyBounds {
            per_certificate: Some(64 << 10),
            ..BodyBounds::default()
        };
        let intake = Intake::with_limits(1 << 20, Duration::from_millis(20), limits, small);
        let a = intake.admit([1; 32]).expect("a connection");
        let large = a
            .try_take(200 << 10)
            .expect("a claim past the cap takes all of it");
        assert!(a.try_take(1).is_none(), "the cap is taken");
        assert_eq!(intake.available(), (1 << 20) - (200 << 10));
        drop(large);
        assert!(a.try_take(1).is_some());
    }

    /// A request frame larger than the node's whole budget is refused
    /// unread, `Rejected` (nothing applied; sending it again cannot help),
    /// and takes no room: the node never buffers more than its budget of
    /// request bodies, whatever the frame cap (a `max_in_flight` budget
    /// below the 16 MiB frame cap, or a role's cap above it). Before (s61):
    /// such a frame took the whole budget and its body, larger than the
    /// budget, was read whole.
    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_frame_larger_than_the_node_budget_is_refused_unread() {
        let intake = Intake::new(400, Duration::from_millis(20));
        let a = intake.connection();
        assert!(a.try_take(401).is_none());
        match a.clone().take(401).await {
            Err(e @ Error::Rejected(_)) => {
                assert_eq!(e.applied(), crate::error::Applied::No);
                assert!(!e.is_retryable(), "{e}");
            }
            other => panic!(
                "a frame of 401 bytes against a budget of 400: {:?}",
                other.map(|_| "room taken")
            ),
        }
        assert_eq!(intake.available(), 400);
        assert_eq!(intake.refused(), 0, "not counted as Overloaded");
        // The whole budget still fits one frame.
        let all = a.clone().take(400).await.expect("room");
        drop(all);
        assert_eq!(intake.available(), 400);
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

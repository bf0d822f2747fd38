//! How many inbound connections a node's QUIC endpoint has in their
//! handshake at once, and how long one may take.
//!
//! quinn hands every connection attempt to the accept loop (`accept`),
//! which serves each in a task of its own. Its own bound
//! (`ServerConfig::max_incoming`, 65,536 by default) only counts the
//! attempts not yet accepted or refused: the accept loop accepts at once,
//! so nothing bounded the handshakes running, each a task, TLS state and
//! buffers, and a dialer that completed TLS and then said nothing held
//! its task until the idle timeout (never, with keep-alives).
//!
//! Rules ([`QuicConfig::max_handshakes`] and
//! [`QuicConfig::handshake_timeout`]):
//! - a connection attempt takes a slot ([`HandshakeSlot`]) as it arrives;
//!   when all [`QuicConfig::max_handshakes`] (default
//!   [`DEFAULT_MAX_HANDSHAKES`]) are taken it is refused at once
//!   (`Incoming::refuse`: the dialer sees the connection refused, before
//!   any cryptography), with a `warn` event (the first refusal and every
//!   power of two after it) and a count
//!   ([`QuicTransport::refused_handshakes`]). A node's link redials with
//!   its backoff; a client retries as on any unreachable member;
//! - the slot is held through the TLS handshake and then: on a peer
//!   connection, until its (first) link's hello is answered, accepted or
//!   refused (the connection then holds a place among the node's peer
//!   connections instead, `peer_limits`); on a client connection, until
//!   it is handed to the client service (which has limits of its own,
//!   `runtime::intake`); it is given back when dropped, however the
//!   handshake ends;
//! - all of it must be done within [`QuicConfig::handshake_timeout`]
//!   (default 10 s) of the first packet: a dialer that has not completed
//!   TLS by then is dropped, a peer that opened no link stream or sent no
//!   whole hello by then is closed with `CLOSE_PROTOCOL`, and a client
//!   connection the client service did not take by then is closed with
//!   `CLOSE_NO_SERVICE`.
//!
//! - once half the slots are taken, an attempt from an address that has
//!   not proven it receives at that address (QUIC address validation,
//!   RFC 9000 §8.1) is answered with a stateless Retry instead of a slot
//!   ([`QuicTransport::retried_handshakes`] counts them): a real dialer
//!   (quinn does it without its caller noticing) answers it within one
//!   round trip and comes back validated, a flood of Initial packets
//!   from spoofed source addresses never does, so it can take at most
//!   half the slots, and the other half stays for dialers that answer.
//! - one source IP address holds at most a quarter of the slots (at
//!   least 2, at most all): a dialer at a real address that stalls its
//!   handshakes (no certificate needed) takes at most that share, each
//!   slot for the timeout; taking every slot needs four addresses that
//!   answer Retry, each of which can be traced and filtered. Dialers
//!   behind one NAT share one address's share.
//!
//! A legitimate burst (a cluster restarting, every client reconnecting)
//! completes its handshakes in a few round trips each: 256 in progress is
//! several times a large cluster's links plus a burst of clients.
//!
//! [`QuicConfig::max_handshakes`]: super::QuicConfig::max_handshakes
//! [`QuicConfig::handshake_timeout`]: super::QuicConfig::handshake_timeout
//! [`QuicTransport::refused_handshakes`]: super::QuicTransport::refused_handshakes
//! [`QuicTransport::retried_handshakes`]: super::QuicTransport::retried_handshakes

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// The default most inbound connections in their handshake at once
/// (module doc).
pub const DEFAULT_MAX_HANDSHAKES: usize = 256;

/// The default of [`QuicConfig::handshake_timeout`](super::QuicConfig::handshake_timeout): 10 s.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The shortest handshake timeout taken (a shorter one is taken as this):
/// a timeout of 0 would close every inbound connection.
pub const MIN_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(1);

/// The slots of a node's inbound handshakes (module doc).
#[derive(Debug)]
pub(super) struct Handshakes {
    slots: Arc<Semaphore>,
    max: usize,
    timeout: Duration,
    refused: AtomicU64,
    retried: AtomicU64,
    /// The most slots one source address holds (module doc).
    per_address: usize,
    /// Slots held per source address.
    held: Mutex<HashMap<IpAddr, usize>>,
}

/// One inbound connection's slot among the handshakes in progress, and
/// when its handshake must be done; the slot is given back when dropped.
#[derive(Debug)]
pub(super) struct HandshakeSlot {
    _permit: OwnedSemaphorePermit,
    handshakes: Arc<Handshakes>,
    from: IpAddr,
    /// When the handshake must be done.
    pub(super) deadline: Instant,
}

impl Handshakes {
    /// At most `max` (at least 1) handshakes at once, each done within
    /// `timeout` (at least [`MIN_HANDSHAKE_TIMEOUT`]).
    pub(super) fn new(max: usize, timeout: Duration) -> Arc<Handshakes> {
        let max = max.clamp(1, Semaphore::MAX_PERMITS);
        let timeout = timeout.max(MIN_HANDSHAKE_TIMEOUT);
        Arc::new(Handshakes {
            slots: Arc::new(Semaphore::new(max)),
            max,
            timeout,
            refused: AtomicU64::new(0),
            retried: AtomicU64::new(0),
            per_address: (max / 4).max(2).min(max),
            held: Mutex::default(),
        })
    }

    /// A slot for a connection attempt arriving now from `from`, or `Err`
    /// with the count of refusals so far (this one included) when all are
    /// taken or `from` holds its share (module doc).
    pub(super) fn admit(self: &Arc<Self>, from: IpAddr) -> Result<HandshakeSlot, u64> {
        let mut held = self.lock();
        let mine = held.get(&from).copied().unwrap_or(0);
        let permit = if mine < self.per_address {
            Arc::clone(&self.slots).try_acquire_owned().ok()
        } else {
            None
        };
        match permit {
            Some(permit) => {
                held.insert(from, mine + 1);
                Ok(HandshakeSlot {
                    _permit: permit,
                    handshakes: Arc::clone(self),
                    from,
                    deadline: Instant::now() + self.timeout,
                })
            }
            None => Err(self.refused.fetch_add(1, Ordering::Relaxed) + 1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<IpAddr, usize>> {
        // Each count is updated in one step: a panic elsewhere leaves
        // them whole.
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether half the slots or more are taken: an attempt from an
    /// address not yet validated is then sent a Retry (module doc).
    pub(super) fn crowded(&self) -> bool {
        self.slots.available_permits() <= self.max / 2
    }

    /// Counts an attempt answered with a Retry.
    pub(super) fn count_retry(&self) {
        self.retried.fetch_add(1, Ordering::Relaxed);
    }

    /// Connection attempts answered with a Retry so far.
    pub(super) fn retried(&self) -> u64 {
        self.retried.load(Ordering::Relaxed)
    }

    /// Connection attempts refused so far.
    pub(super) fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// The most handshakes at once.
    pub(super) fn max(&self) -> usize {
        self.max
    }

    /// How long a handshake may take.
    pub(super) fn timeout(&self) -> Duration {
        self.timeout
    }
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        let mut held = self.handshakes.lock();
        if let Some(n) = held.get_mut(&self.from) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                held.remove(&self.from);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2));

    #[test]
    fn slots_are_capped_and_given_back() {
        let h = Handshakes::new(2, Duration::from_secs(1));
        let a = h.admit(A).expect("a");
        let _b = h.admit(A).expect("b");
        assert_eq!(h.admit(A).err(), Some(1));
        assert_eq!(h.admit(A).err(), Some(2));
        drop(a);
        let _c = h.admit(A).expect("a slot given back is taken again");
        assert_eq!(h.refused(), 2);
    }

    #[test]
    fn half_the_slots_taken_is_crowded() {
        let h = Handshakes::new(4, Duration::from_secs(1));
        let _a = h.admit(A).expect("a");
        assert!(!h.crowded(), "1 of 4 taken");
        let _b = h.admit(A).expect("b");
        assert!(h.crowded(), "2 of 4 taken");
        let one = Handshakes::new(1, Duration::from_secs(1));
        assert!(!one.crowded(), "a single free slot is not crowded");
        let _c = one.admit(A).expect("c");
        assert!(one.crowded());
    }

    #[test]
    fn one_address_holds_at_most_a_quarter_of_the_slots() {
        let h = Handshakes::new(16, Duration::from_secs(1));
        let mine: Vec<_> = (0..4).map(|_| h.admit(A).expect("a's share")).collect();
        assert_eq!(h.admit(A).err(), Some(1), "a fifth of 16 from one address");
        let _b = h.admit(B).expect("another address is not affected");
        drop(mine);
        let _a = h.admit(A).expect("a share given back is taken again");
        assert!(h.lock().get(&B) == Some(&1) && h.lock().get(&A) == Some(&1));
    }

    #[test]
    fn a_timeout_below_the_floor_is_taken_as_the_floor() {
        let h = Handshakes::new(1, Duration::ZERO);
        assert_eq!(
            h.timeout(),
            MIN_HANDSHAKE_TIMEOUT,
            "a timeout of 0 would close every connection"
        );
        let h = Handshakes::new(1, Duration::from_secs(3));
        assert_eq!(h.timeout(), Duration::from_secs(3));
    }

    #[test]
    fn there_is_at_least_one_slot() {
        let h = Handshakes::new(0, Duration::from_secs(1));
        let _a = h.admit(A).expect("one slot");
        assert!(h.admit(A).is_err());
    }
}

//! The deadline of the requests of a multiplexed client stream
//! (`client_mux`): a write, a read, or a session opened or closed that is
//! not answered within the request timeout
//! ([`REQUEST_TIMEOUT`](super::client_service::REQUEST_TIMEOUT)) is
//! answered [`WireError::Timeout`] and stops being served (its future is
//! dropped, with the room it held in the node's budget of received
//! requests), exactly as under a `tokio::time::timeout` of its own.
//!
//! Why not a timeout each: a tokio timer registered and cancelled per
//! request, and polled with it at every wake-up, cost about 600
//! instructions per durable write on the leader (callgrind, stop 50). Here
//! a request only carries its deadline ([`Expiring`]); one timer per stream
//! ([`Sweep`]) is armed at a deadline no later than the earliest deadline
//! of the requests still running, and when it fires the stream expires the
//! requests past theirs and re-arms at the earliest left. The timer is
//! armed once per busy period and once per timeout, not once per request.
//!
//! Invariants:
//! - while a timed request runs unexpired, the sweep is armed at or before
//!   its deadline (a request pushed while the sweep is armed has the
//!   latest deadline of all: deadlines are its start plus one constant);
//! - an expired request completes with [`WireError::Timeout`] the next
//!   time the stream polls it, which it does at once (its waker is woken);
//! - a request whose kind was never timed (membership changes, status,
//!   node requests: they may take longer) has no deadline.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

use crate::client::wire::{ClientRequest, ClientResponse, WireError};

/// Whether a request of this kind is answered `Timeout` once it was not
/// answered within the request timeout: writes, reads and the opening and
/// closing of sessions (what waits for a commit or a read index), not the
/// membership changes (a new server's catch-up may take long), status,
/// watches or node requests.
pub(super) fn is_timed(request: &ClientRequest) -> bool {
    matches!(
        request,
        ClientRequest::Write { .. }
            | ClientRequest::Read { .. }
            | ClientRequest::OpenSession
            | ClientRequest::CloseSession { .. }
    )
}

pin_project_lite::pin_project! {
    /// A request of a stream being answered, with its deadline: it
    /// completes with its answer, or with `(id, Timeout, changes)` once the
    /// stream's [`Sweep`] found it past its deadline.
    pub(super) struct Expiring<F> {
        #[pin]
        inner: F,
        // The request's id and whether it may have changed the state (an
        // answer's fields besides the response).
        id: u64,
        changes: bool,
        // `None`: not timed.
        deadline: Option<Instant>,
        expired: bool,
        // The waker of the latest poll (timed requests only), to poll it
        // again once expired.
        waker: Option<Waker>,
    }
}

impl<F> Expiring<F> {
    /// `inner`, the request `id` (`changes`: whether it may change the
    /// state), to be answered `Timeout` after `deadline` if there is one.
    pub(super) fn new(inner: F, id: u64, changes: bool, deadline: Option<Instant>) -> Self {
        Expiring {
            inner,
            id,
            changes,
            deadline,
            expired: false,
            waker: None,
        }
    }

    /// Expires the request if it is past its deadline at `now` (waking the
    /// stream to poll it); else returns its deadline, if it has one.
    fn expire_by(self: Pin<&mut Self>, now: Instant) -> Option<Instant> {
        let this = self.project();
        let deadline = (*this.deadline).filter(|_| !*this.expired)?;
        if deadline > now {
            return Some(deadline);
        }
        *this.expired = true;
        if let Some(waker) = this.waker.take() {
            waker.wake();
        }
        None
    }
}

impl<R: From<ClientResponse>, F: Future<Output = (u64, R, bool)>> Future for Expiring<F> {
    type Output = (u64, R, bool);

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let polled = this.inner.poll(cx);
        if *this.expired {
            // Polled once more past its deadline: an answer that is ready
            // wins over the timeout, as under `tokio::time::timeout`
            // (which polls its future before its timer).
            if polled.is_ready() {
                return polled;
            }
            tracing::debug!(
                id = *this.id,
                "client request not answered within the request timeout; answered Timeout"
            );
            return Poll::Ready((
                *this.id,
                ClientResponse::Err(WireError::Timeout).into(),
                *this.changes,
            ));
        }
        if polled.is_pending() && this.deadline.is_some() {
            match this.waker {
                Some(w) if w.will_wake(cx.waker()) => {}
                w => *w = Some(cx.waker().clone()),
            }
        }
        polled
    }
}

/// The one timer of a stream's request deadlines (see the module docs).
pub(super) struct Sweep {
    timeout: Duration,
    timer: Pin<Box<Sleep>>,
    /// Whether `timer` is set for a deadline not yet swept (there may be
    /// requests running with a deadline).
    armed: bool,
}

impl Sweep {
    /// A sweep for requests that time out after `timeout`.
    pub(super) fn new(timeout: Duration) -> Sweep {
        Sweep {
            timeout,
            timer: Box::pin(tokio::time::sleep_until(Instant::now() + timeout)),
            armed: false,
        }
    }

    /// The deadline of a request of `timed` kind starting now; `running`:
    /// the stream's requests (swept first if the sweep is due, whatever the
    /// kind of the request starting, so that a stream whose task never
    /// idles, even one flooded with untimed requests, still expires its
    /// requests: the sweep's own timer is polled last, and may not be
    /// polled at all once the task spent its coop budget).
    pub(super) fn start<'a, F: 'a>(
        &mut self,
        timed: bool,
        running: impl Iterator<Item = Pin<&'a mut Expiring<F>>>,
    ) -> Option<Instant> {
        // The clock is read only if a sweep may be due or a deadline is
        // needed.
        let mut now = None;
        if self.armed {
            let at = Instant::now();
            if self.timer.deadline() <= at {
                self.sweep(at, running);
            }
            now = Some(at);
        }
        if !timed {
            return None;
        }
        let deadline = now.unwrap_or_else(Instant::now) + self.timeout;
        if !self.armed {
            self.timer.as_mut().reset(deadline);
            self.armed = true;
        }
        Some(deadline)
    }

    /// Waits until the sweep is due (never, while it is not armed).
    /// Cancel-safe.
    pub(super) async fn due(&mut self) {
        if !self.armed {
            return std::future::pending().await;
        }
        self.timer.as_mut().await
    }

    /// Expires the requests of `running` past their deadline and re-arms at
    /// the earliest deadline left (disarms if none is).
    pub(super) fn sweep<'a, F: 'a>(
        &mut self,
        now: Instant,
        running: impl Iterator<Item = Pin<&'a mut Expiring<F>>>,
    ) {
        let next = running.filter_map(|r| r.expire_by(now)).min();
        self.armed = next.is_some();
        if let Some(next) = next {
            self.timer.as_mut().reset(next);
        }
    }
}

#[cfg(test)]
mod tests {
    //! The sweep on a paused clock, driven as `client_mux::serve` drives
    //! it (its requests polled first, the sweep's timer last; a request
    //! starting sweeps first if the sweep was due), without a stream.

    use super::*;
    use futures_util::FutureExt;
    use futures_util::stream::{FuturesUnordered, StreamExt};
    use tokio::sync::oneshot;

    const TIMEOUT: Duration = Duration::from_millis(300);

    type Answer = (u64, ClientResponse, bool);
    type Inner = Pin<Box<dyn Future<Output = Answer> + Send>>;

    /// A stream's requests and its sweep.
    struct Stream {
        running: FuturesUnordered<Expiring<Inner>>,
        sweep: Sweep,
    }

    impl Stream {
        fn new() -> Stream {
            Stream {
                running: FuturesUnordered::new(),
                sweep: Sweep::new(TIMEOUT),
            }
        }

        /// Starts request `id` (timed or not), answered when the returned
        /// sender is (never, if it is dropped).
        fn start(&mut self, id: u64, timed: bool) -> oneshot::Sender<ClientResponse> {
            let (tx, rx) = oneshot::channel();
            let inner: Inner = Box::pin(async move {
                match rx.await {
                    Ok(response) => (id, response, false),
                    Err(_) => std::future::pending().await,
                }
            });
            let deadline = self
                .sweep
                .start(timed, Pin::new(&mut self.running).iter_pin_mut());
            self.running.push(Expiring::new(inner, id, false, deadline));
            tx
        }

        /// Starts a request already answered (a status served at once).
        fn start_answered(&mut self, id: u64) {
            let deadline = self
                .sweep
                .start(false, Pin::new(&mut self.running).iter_pin_mut());
            let inner: Inner = Box::pin(std::future::ready((
                id,
                ClientResponse::Ok(Vec::new()),
                false,
            )));
            self.running.push(Expiring::new(inner, id, false, deadline));
        }

        /// The answers ready now, without polling the sweep's timer (a
        /// stream whose other branches are always ready).
        fn ready_answers(&mut self) -> Vec<Answer> {
            let mut answers = Vec::new();
            for _ in 0..=self.running.len() {
                if let Some(Some(answer)) = self.running.next().now_or_never() {
                    answers.push(answer);
                }
            }
            answers
        }

        /// The next answer, the sweep polled after the requests (as
        /// `serve`'s biased select does); the paused clock advances to the
        /// timer.
        async fn next_answer(&mut self) -> Answer {
            loop {
                tokio::select! {
                    biased;
                    Some(answer) = self.running.next(), if !self.running.is_empty() => {
                        return answer;
                    }
                    () = self.sweep.due() => {
                        self.sweep.sweep(Instant::now(), Pin::new(&mut self.running).iter_pin_mut());
                    }
                }
            }
        }
    }

    fn timeout() -> ClientResponse {
        ClientResponse::Err(WireError::Timeout)
    }

    /// Requests started at different times each time out at their own
    /// deadline: after a sweep the timer re-arms at the earliest deadline
    /// left (not a timeout from the sweep), and after the sweep disarmed
    /// (nothing timed left), a new request arms it again.
    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn requests_started_at_different_times_time_out_at_their_own_deadlines() {
        let t0 = Instant::now();
        let mut stream = Stream::new();
        let _a = stream.start(1, true);
        assert!(stream.ready_answers().is_empty());
        tokio::time::advance(Duration::from_millis(200)).await;
        let _b = stream.start(2, true);
        assert!(stream.ready_answers().is_empty());
        assert_eq!(stream.next_answer().await, (1, timeout(), false));
        assert_eq!(t0.elapsed(), TIMEOUT, "the first at its deadline");
        assert_eq!(stream.next_answer().await, (2, timeout(), false));
        assert_eq!(
            t0.elapsed(),
            Duration::from_millis(200) + TIMEOUT,
            "the second at its own deadline, not a timeout after the first sweep"
        );
        // Disarmed (nothing left); a new request arms it again.
        let t1 = Instant::now();
        tokio::time::advance(Duration::from_millis(1000)).await;
        let _c = stream.start(3, true);
        assert_eq!(stream.next_answer().await, (3, timeout(), false));
        assert_eq!(t1.elapsed(), Duration::from_millis(1000) + TIMEOUT);
    }

    /// Three requests started at different times each time out at their
    /// own deadline: a sweep re-arms at the earliest deadline left, not the
    /// latest (with two requests the one left is both).
    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn three_requests_each_time_out_at_their_own_deadline() {
        const STEP: Duration = Duration::from_millis(100);
        let t0 = Instant::now();
        let mut stream = Stream::new();
        let _a = stream.start(1, true);
        tokio::time::advance(STEP).await;
        let _b = stream.start(2, true);
        tokio::time::advance(STEP).await;
        let _c = stream.start(3, true);
        assert!(stream.ready_answers().is_empty());
        for (id, started) in [(1, Duration::ZERO), (2, STEP), (3, 2 * STEP)] {
            assert_eq!(stream.next_answer().await, (id, timeout(), false));
            assert_eq!(
                t0.elapsed(),
                started + TIMEOUT,
                "request {id} answered Timeout at {:?}, its deadline {:?}",
                t0.elapsed(),
                started + TIMEOUT
            );
        }
    }

    /// A sweep that leaves no timed request running disarms: the sweep is
    /// then not due, although an untimed request still runs (a stream's
    /// task would otherwise find it due on every turn of its loop, and
    /// spin, sweeping nothing, for as long as that request runs).
    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_sweep_with_nothing_timed_left_is_not_due() {
        let mut stream = Stream::new();
        let _timed = stream.start(1, true);
        let _untimed = stream.start(2, false);
        assert_eq!(stream.next_answer().await, (1, timeout(), false));
        assert_eq!(stream.running.len(), 1, "the untimed request still runs");
        assert!(!stream.sweep.armed, "armed with nothing timed running");
        assert!(
            stream.sweep.due().now_or_never().is_none(),
            "due with nothing timed running"
        );
        // Later too: nothing arms it until a timed request starts.
        tokio::time::advance(10 * TIMEOUT).await;
        assert!(stream.sweep.due().now_or_never().is_none());
        assert!(stream.ready_answers().is_empty());
    }

    /// An answer that is ready when its request's deadline is reached is
    /// the answer, not `Timeout` (as under `tokio::time::timeout`, which
    /// polls the future before its timer): here the sweep runs before the
    /// stream polls the request its answer woke.
    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn an_answer_ready_at_the_deadline_is_delivered_not_timeout() {
        let mut stream = Stream::new();
        let answer = stream.start(1, true);
        assert!(stream.ready_answers().is_empty());
        tokio::time::advance(TIMEOUT).await;
        answer
            .send(ClientResponse::Ok(vec![7]))
            .expect("the request waits");
        stream
            .sweep
            .sweep(Instant::now(), Pin::new(&mut stream.running).iter_pin_mut());
        assert_eq!(
            stream.next_answer().await,
            (1, ClientResponse::Ok(vec![7]), false)
        );
    }

    /// A stream whose requests keep coming and being answered (its sweep's
    /// timer never polled) still times out a stuck write: a request that
    /// starts after the sweep was due sweeps first, whatever its kind.
    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_stream_flooded_with_untimed_requests_still_times_out_a_stuck_write() {
        const STEP: Duration = Duration::from_millis(10);
        let t0 = Instant::now();
        let mut stream = Stream::new();
        let _write = stream.start(0, true);
        let mut timed_out = None;
        for id in 1..100 {
            tokio::time::advance(STEP).await;
            stream.start_answered(id);
            for (id, response, _) in stream.ready_answers() {
                if id == 0 {
                    assert_eq!(response, timeout());
                    timed_out.get_or_insert(t0.elapsed());
                } else {
                    assert_eq!(response, ClientResponse::Ok(Vec::new()));
                }
            }
        }
        let at = timed_out.expect("the stuck write answered Timeout");
        // STEP divides TIMEOUT: a request starts exactly at the deadline,
        // and sweeps then (a deadline reached is due), not one start later.
        assert_eq!(
            at, TIMEOUT,
            "answered Timeout at {at:?}, deadline {TIMEOUT:?}"
        );
        // A timed request starting at the deadline sweeps too.
        let t1 = Instant::now();
        let _write = stream.start(100, true);
        tokio::time::advance(TIMEOUT).await;
        let _read = stream.start(101, true);
        let answers = stream.ready_answers();
        assert_eq!(answers, [(100, timeout(), false)], "at {:?}", t1.elapsed());
    }
}

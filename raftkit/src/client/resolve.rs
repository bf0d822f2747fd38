//! Turning the addresses a client is given (`connect`, `status_of`,
//! `node_request`) or told (a `NotLeader` hint) into socket addresses
//! without blocking a runtime worker.
//!
//! A literal socket address (`127.0.0.1:7000`, `[::1]:7000`) is parsed and
//! needs no lookup; a name the client already resolved (the cluster
//! addresses it was given, and the names it looked up since) is taken from
//! [`Names`]; any other name is looked up on tokio's blocking pool
//! (`getaddrinfo` blocks, with no deadline of its own), and the caller waits
//! for it only until its call's deadline. Stop 52: the lookup ran on the
//! runtime worker itself, so a DNS outage made a call overrun its deadline
//! and stalled every other task of that worker until the lookup gave up.
//!
//! A lookup that fails or outlives the deadline is [`Error::Unavailable`]:
//! nothing was sent, so nothing was applied, and a later call may succeed.
//!
//! # Invariants (stop 53, review s52 client #2)
//!
//! During a DNS outage every call, and every `NotLeader` hint, spawned a
//! blocking lookup of its own, each unbounded (tokio's blocking pool grew
//! to 512 threads); a name resolved once kept its address for the
//! client's life. Now, per client ([`Names`]):
//!
//! - at most one lookup of a name is in flight: a caller needing a name
//!   that is being looked up waits for that lookup (until its own
//!   deadline), and never starts another;
//! - at most [`MAX_LOOKUPS`] lookups run at once (each holds a thread of
//!   the blocking pool while `getaddrinfo` blocks); the others queue
//!   while their callers wait, each until its deadline;
//! - a name whose lookup failed is not looked up again for
//!   [`FAILED_FOR`] (a negative cache): calls that need it meanwhile fail
//!   at once, [`Error::Unavailable`];
//! - an address found is used as it is for [`RESOLVED_FOR`]; past that,
//!   the next use starts a refresh in the background (one at a time) and
//!   keeps using the old address while the refresh runs, and after it
//!   failed; a refresh that answers replaces it in this table, and counts
//!   as a move ([`Names::moves`]) if the address changed;
//! - refreshes by age that keep failing back off: the next is made
//!   [`FAILED_FOR`] after the first failure, then twice as long after
//!   each further one, at most [`RESOLVED_FOR`] (review s56 client #5:
//!   with the name server down and the cluster healthy, every member name
//!   was looked up every [`FAILED_FOR`] for as long as calls ran); a
//!   lookup that answers ends the backoff;
//! - a lookup a caller waits for (a name with no address yet: a
//!   `NotLeader` hint, a new group client's replicas) runs before every
//!   lookup nobody waits for (refreshes, prefetches), and those take at
//!   most [`MAX_LOOKUPS`] - 1 slots, so a name server that stalls them
//!   cannot hold every slot while a call waits (review s56 client #5);
//! - a cluster address given by name is also looked up again by age: a
//!   client checks its members' names at most every
//!   [`Names::age_check_every`], and one older than [`RESOLVED_FOR`] is
//!   refreshed in the background, calls going on with the old address
//!   meanwhile (review s55 client #2: a name that moved while the node at
//!   its old address still answered was never looked up again);
//! - a lookup keeps the first address of each family the name has, and
//!   each client takes the one of its endpoint's family
//!   ([`Names::prefer_family`]): the clients sharing a table may be bound
//!   to different families (review s56 client #1);
//! - a cluster address given by name is looked up again when its member
//!   cannot be reached ([`Names::refresh`]: at most once per
//!   [`FAILED_FOR`] per name, and not while a lookup of it is in flight),
//!   and the client's member list follows each move (review s53 client
//!   #1: the members kept the addresses of the connect, so a client whose
//!   members all moved, a rolling redeploy behind DNS names, stayed
//!   `Unavailable` for its life);
//! - a lookup runs on a thread of the blocking pool, which records its
//!   outcome and hands it to the callers waiting: once started, it needs
//!   no runtime to be driven (review s53 client #3: a task on the
//!   starting runtime recorded it, so a lookup started on a runtime no
//!   longer driven stayed "in flight" for the client's life, and every
//!   later caller of that name, on any runtime, waited for it until its
//!   deadline). It records its outcome even when every caller stopped
//!   waiting for it: a cluster address left out of a connect because its
//!   lookup was still running is known once it ends ([`Names::known`];
//!   the client adds it to its members then);
//! - a lookup started while [`MAX_LOOKUPS`] run waits in a queue, and
//!   the thread of a lookup that ends starts the next queued one; a queued
//!   lookup whose runtime shut down before a thread took it is started by
//!   the next use of any name;
//! - the table holds at most [`MAX_NAMES`] names besides the cluster
//!   addresses (hints come from the network): the cluster addresses of a
//!   live client are never evicted, another name not being looked up is,
//!   oldest first, to make room; with every slot in use, a new name fails
//!   at once;
//! - the group clients of one sharded client share one table (clones of
//!   [`Names`]), so every bound above holds per sharded client, not per
//!   group (review s55 client #1: 64 groups on 3 named replicas looked
//!   each name up 64 times, and ran up to 256 lookups at once).

use std::collections::{HashMap, VecDeque};
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::error::Error;

/// The most names [`Names`] remembers: hints come from the network, so the
/// table must not grow with what members say (a cluster has a few members).
const MAX_NAMES: usize = 64;

/// The time a connect keeps for dialling, at most, once one of its
/// cluster addresses resolved (and at most a quarter of its time): the
/// lookups of the others are waited for until then.
const DIAL_RESERVE: Duration = Duration::from_secs(1);

/// The most lookups of one client that run at once.
pub(super) const MAX_LOOKUPS: usize = 4;

/// The most lookups nobody waits for (refreshes, prefetches) that run at
/// once: one slot is kept for the lookups calls wait for.
const MAX_BACKGROUND_LOOKUPS: usize = MAX_LOOKUPS - 1;

/// How long an address found is used before it is looked up again (in the
/// background: the old one is used meanwhile).
pub(super) const RESOLVED_FOR: Duration = Duration::from_secs(30);

/// How long a name whose lookup failed is not looked up again.
pub(super) const FAILED_FOR: Duration = Duration::from_secs(2);

/// The outcome of one lookup, shared by every caller waiting for it: the
/// addresses, or why there are none.
type Outcome = Result<Found, String>;

/// The addresses one lookup found: the first the system gave, and the
/// first of each family (each client takes its endpoint's:
/// [`Found::for_family`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Found {
    first: SocketAddr,
    v4: Option<SocketAddr>,
    v6: Option<SocketAddr>,
}

impl Found {
    /// What a lookup that answered `all` found (`None`: no address).
    fn of(all: &[SocketAddr]) -> Option<Found> {
        Some(Found {
            first: *all.first()?,
            v4: all.iter().copied().find(SocketAddr::is_ipv4),
            v6: all.iter().copied().find(SocketAddr::is_ipv6),
        })
    }

    /// The address for a client of `family` (4 or 6: its endpoint's,
    /// [`Names::prefer_family`]; 0: not bound yet): the first of that
    /// family, else the first (review s55 client #8).
    fn for_family(&self, family: u8) -> SocketAddr {
        let of_family = match family {
            4 => self.v4,
            6 => self.v6,
            _ => None,
        };
        of_family.unwrap_or(self.first)
    }
}

/// What the client knows of one name.
struct Entry {
    /// The addresses last found, and when.
    found: Option<(Found, Instant)>,
    /// Why the last lookup failed, and when (cleared by one that answers).
    failed: Option<(String, Instant)>,
    /// How many lookups in a row failed (0 after one that answers): the
    /// backoff of refreshes by age ([`State::age_backoff`]).
    fails: u32,
    /// The lookup in flight (its number, and where its outcome comes).
    in_flight: Option<(u64, watch::Receiver<Option<Outcome>>)>,
    /// How many clients sharing the table were given it as a cluster
    /// address: never evicted while any is.
    pins: usize,
    /// When the entry was made or last changed (eviction order).
    touched: Instant,
}

impl Entry {
    fn new(now: Instant) -> Entry {
        Entry {
            found: None,
            failed: None,
            fails: 0,
            in_flight: None,
            pins: 0,
            touched: now,
        }
    }

    /// The lookup in flight, unless it is gone before it recorded an
    /// outcome (dropped from the queue, or its thread unwound).
    fn live_lookup(&self) -> Option<&watch::Receiver<Option<Outcome>>> {
        self.in_flight
            .as_ref()
            .map(|(_, rx)| rx)
            .filter(|rx| rx.has_changed().is_ok())
    }
}

/// A lookup started and not yet running: the name, the lookup's number,
/// and where its outcome goes.
struct Queued {
    name: String,
    id: u64,
    tx: watch::Sender<Option<Outcome>>,
    /// Whether no caller waits for it (a refresh, a prefetch): it runs
    /// after every lookup a caller waits for, in at most
    /// [`MAX_BACKGROUND_LOOKUPS`] slots.
    background: bool,
}

#[derive(Default)]
struct Table {
    entries: HashMap<String, Entry>,
    /// The number of the latest lookup started.
    lookups: u64,
    /// The lookups started and not yet running, oldest first (at most one
    /// per name of the table: a lookup in flight is joined, never started
    /// again).
    queued: VecDeque<Queued>,
    /// The lookups running, each on a thread of the blocking pool, or
    /// handed to the pool to run next: at most [`MAX_LOOKUPS`].
    running: usize,
    /// How many of the lookups running are background ones
    /// ([`Queued::background`]): at most [`MAX_BACKGROUND_LOOKUPS`].
    running_background: usize,
}

impl Table {
    /// How many more lookups may run now, counted as running: the caller
    /// hands that many [`Runner`]s to the blocking pool.
    fn runners_due(&mut self) -> usize {
        let background = self.queued.iter().filter(|q| q.background).count();
        let may_run = (self.queued.len() - background)
            + background.min(MAX_BACKGROUND_LOOKUPS.saturating_sub(self.running_background));
        let due = MAX_LOOKUPS.saturating_sub(self.running).min(may_run);
        self.running += due;
        due
    }

    /// The next lookup to run, counted as running (background ones in
    /// [`Table::running_background`]): the oldest a caller waits for, else
    /// the oldest background one while fewer than
    /// [`MAX_BACKGROUND_LOOKUPS`] of those run.
    fn next_lookup(&mut self) -> Option<Queued> {
        let at = self.queued.iter().position(|q| !q.background).or_else(|| {
            (self.running_background < MAX_BACKGROUND_LOOKUPS)
                .then(|| self.queued.iter().position(|q| q.background))
                .flatten()
        })?;
        let next = self.queued.remove(at)?;
        if next.background {
            self.running_background += 1;
        }
        Some(next)
    }

    /// A caller waits for the lookup `id` of a name: if it is queued in
    /// the background, it runs with the lookups callers wait for.
    fn wanted(&mut self, id: u64) {
        if let Some(q) = self.queued.iter_mut().find(|q| q.id == id) {
            q.background = false;
        }
    }

    /// Whether a new name that is no cluster address fits, evicting the
    /// oldest name that is neither pinned nor being looked up if
    /// [`MAX_NAMES`] such names are kept (cluster addresses come from the
    /// configuration and the placement, not from what members say: they
    /// do not count).
    fn make_room(&mut self) -> bool {
        if self.entries.values().filter(|e| e.pins == 0).count() < MAX_NAMES {
            return true;
        }
        let oldest = self
            .entries
            .iter()
            .filter(|(_, e)| e.pins == 0 && e.live_lookup().is_none())
            .min_by_key(|(_, e)| e.touched)
            .map(|(name, _)| name.clone());
        match oldest {
            Some(name) => {
                self.entries.remove(&name);
                true
            }
            None => false,
        }
    }
}

/// What [`State::consult`] found for a name.
enum Known {
    /// Its addresses (possibly being refreshed).
    Addr(Found),
    /// Its lookup failed a short while ago, or cannot be made: why.
    Failed(String),
    /// A lookup is in flight: its outcome comes here.
    Pending(watch::Receiver<Option<Outcome>>),
}

/// Who consults a name ([`State::consult`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Why {
    /// A call that waits for the address if there is none yet.
    Call,
    /// Nobody waits: a prefetch, or a refresh by age.
    Background,
    /// Its member could not be reached: it may have moved (nobody waits).
    Unreachable,
}

/// What the names of a client and their lookups share.
struct State {
    table: Mutex<Table>,
    /// [`RESOLVED_FOR`] (shorter in tests).
    resolved_for: Duration,
    /// [`FAILED_FOR`] (shorter in tests).
    failed_for: Duration,
    /// How many lookups found their name at another address than it had
    /// ([`Names::moves`]): bumped under the table's lock.
    moves: AtomicU64,
}

impl State {
    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How long after its last failure a name with an address is looked
    /// up again by age, `fails` lookups of it having failed in a row:
    /// [`FAILED_FOR`] doubled per failure after the first, at most
    /// [`RESOLVED_FOR`] (module doc, "Invariants").
    fn age_backoff(&self, fails: u32) -> Duration {
        let doublings = fails.saturating_sub(1).min(20);
        self.failed_for
            .saturating_mul(1 << doublings)
            .min(self.resolved_for.max(self.failed_for))
    }

    /// What is known of `name`, starting its lookup if it is needed and
    /// none is in flight (and, for an address at least `refresh_after`
    /// old, a refresh in the background). `why` says who asks: a caller
    /// that waits for a name with no address yet has its lookup run before
    /// background ones; a refresh by age backs off while it fails.
    fn consult(self: &Arc<Self>, name: &str, refresh_after: Duration, why: Why) -> Known {
        let now = Instant::now();
        // A lookup runs on the blocking pool of the caller's runtime.
        let runtime = tokio::runtime::Handle::try_current().ok();
        let mut guard = self.lock();
        let table = &mut *guard;
        // A caller that will wait for a lookup queued in the background
        // has it run with the lookups callers wait for.
        let joined = table
            .entries
            .get(name)
            .filter(|e| why == Why::Call && e.found.is_none())
            .and_then(|e| e.in_flight.as_ref().map(|(id, _)| *id));
        if let Some(id) = joined {
            table.wanted(id);
        }
        let (refresh, known) = match table.entries.get(name) {
            Some(e) => {
                let failed_lately = e
                    .failed
                    .as_ref()
                    .filter(|(_, at)| now.saturating_duration_since(*at) < self.failed_for);
                match (e.found, e.live_lookup(), failed_lately) {
                    (Some((addr, at)), in_flight, _) => {
                        let stale = now.saturating_duration_since(at) >= refresh_after;
                        // An unreachable member's name is looked up again
                        // `FAILED_FOR` after a failure; one refreshed by
                        // age backs off while its lookups fail.
                        let hold = match why {
                            Why::Unreachable => self.failed_for,
                            Why::Call | Why::Background => self.age_backoff(e.fails),
                        };
                        let held = e
                            .failed
                            .as_ref()
                            .is_some_and(|(_, at)| now.saturating_duration_since(*at) < hold);
                        (
                            stale && in_flight.is_none() && !held,
                            Some(Known::Addr(addr)),
                        )
                    }
                    (None, Some(rx), _) => (false, Some(Known::Pending(rx.clone()))),
                    (None, None, Some((why, _))) => (false, Some(Known::Failed(why.clone()))),
                    (None, None, None) => (true, None),
                }
            }
            None => {
                if !table.make_room() {
                    return Known::Failed(format!(
                        "{MAX_NAMES} other names are being looked up or kept"
                    ));
                }
                (true, None)
            }
        };
        let started = match (&runtime, refresh) {
            (Some(_), true) => {
                // A caller waits for it only if the name has no address.
                let background = why != Why::Call || known.is_some();
                Some(Self::enqueue(table, name, now, background))
            }
            _ => None,
        };
        // Also when no lookup was started here: a queued one whose runner
        // was dropped unrun (its runtime shut down) is started now.
        let runners = if runtime.is_some() {
            table.runners_due()
        } else {
            0
        };
        drop(guard);
        // Outside the table's lock: a runner that a shut-down runtime
        // drops at once frees its place under that lock.
        if let Some(runtime) = &runtime {
            for _ in 0..runners {
                Runner::new(self).spawn_on(runtime);
            }
        }
        match (known, started) {
            (Some(known), _) => known,
            (None, Some(rx)) => Known::Pending(rx),
            (None, None) => Known::Failed("no tokio runtime to look the name up on".into()),
        }
    }

    /// Queues a lookup of `name`: its outcome is recorded in the table and
    /// sent to the receiver returned.
    fn enqueue(
        table: &mut Table,
        name: &str,
        now: Instant,
        background: bool,
    ) -> watch::Receiver<Option<Outcome>> {
        let (tx, rx) = watch::channel(None);
        table.lookups += 1;
        let id = table.lookups;
        let entry = table
            .entries
            .entry(name.to_string())
            .or_insert_with(|| Entry::new(now));
        entry.in_flight = Some((id, rx.clone()));
        table.queued.push_back(Queued {
            name: name.to_string(),
            id,
            tx,
            background,
        });
        rx
    }

    /// Records the outcome of lookup `id` of `name`.
    fn record(&self, name: &str, id: u64, outcome: &Outcome) {
        let now = Instant::now();
        let mut table = self.lock();
        let Some(entry) = table.entries.get_mut(name) else {
            return;
        };
        if entry.in_flight.as_ref().is_some_and(|(i, _)| *i == id) {
            entry.in_flight = None;
        }
        entry.touched = now;
        match outcome {
            Ok(addr) => {
                if let Some((old, _)) = entry.found
                    && old != *addr
                {
                    tracing::info!(name, old = %old.first, new = %addr.first, "a name moved to another address");
                    self.moves.fetch_add(1, Ordering::AcqRel);
                }
                entry.found = Some((*addr, now));
                entry.failed = None;
                entry.fails = 0;
            }
            Err(why) => {
                entry.fails = entry.fails.saturating_add(1);
                tracing::debug!(name, error = %why, fails = entry.fails, kept = ?entry.found.map(|(a, _)| a.first), "address lookup failed");
                entry.failed = Some((why.clone(), now));
            }
        }
    }
}

/// One lookup slot of the blocking pool ([`MAX_LOOKUPS`]): it runs the
/// oldest queued lookup, records its outcome, and hands itself to the pool
/// again while lookups are queued (module doc, "Invariants"). A runner is
/// counted in [`Table::running`] from the moment it is made until it finds
/// the queue empty, or is dropped (unrun, when its runtime shut down; or
/// unwinding).
struct Runner {
    state: Arc<State>,
    /// Whether it still counts in [`Table::running`].
    counted: bool,
    /// Whether the lookup it runs counts in [`Table::running_background`].
    background: bool,
}

impl Runner {
    /// A runner of `state`, already counted ([`Table::runners_due`]).
    fn new(state: &Arc<State>) -> Runner {
        Runner {
            state: Arc::clone(state),
            counted: true,
            background: false,
        }
    }

    /// Runs on a thread of `runtime`'s blocking pool. One lookup per task:
    /// a runtime that shuts down drops the next one unrun rather than wait
    /// for every queued lookup.
    fn spawn_on(self, runtime: &tokio::runtime::Handle) {
        // Detached: its outcome goes to the table and the callers.
        drop(runtime.spawn_blocking(move || self.run()));
    }

    fn run(mut self) {
        let next = {
            let mut table = self.state.lock();
            let next = table.next_lookup();
            match &next {
                // Under the lock that queues (as below): nothing it may
                // run (background lookups wait for a background slot).
                None => {
                    table.running = table.running.saturating_sub(1);
                    self.counted = false;
                }
                Some(q) => self.background = q.background,
            }
            next
        };
        let Some(next) = next else {
            return;
        };
        // `getaddrinfo` blocks, with no deadline of its own: this thread,
        // not a runtime worker, waits for it.
        let outcome = match blocking_lookup(&next.name) {
            Err(e) => Err(e.to_string()),
            Ok(found) => Found::of(&found).ok_or_else(|| "it resolves to no address".to_string()),
        };
        self.state.record(&next.name, next.id, &outcome);
        next.tx.send_replace(Some(outcome));
        drop(next);
        let more = {
            let mut table = self.state.lock();
            if std::mem::take(&mut self.background) {
                table.running_background = table.running_background.saturating_sub(1);
            }
            if table.queued.is_empty() {
                // Under the lock that queues: a lookup queued after this
                // sees the place free, and starts a runner of its own.
                table.running = table.running.saturating_sub(1);
                self.counted = false;
            }
            self.counted
        };
        if more {
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => self.spawn_on(&runtime),
                // Not on a pool thread (never): the place is freed, and the
                // next use of a name starts the queued lookups.
                Err(_) => drop(self),
            }
        }
    }

    /// No longer counted in [`Table::running`].
    fn release(&mut self) {
        let background = std::mem::take(&mut self.background);
        let counted = std::mem::take(&mut self.counted);
        if counted || background {
            let mut table = self.state.lock();
            if background {
                table.running_background = table.running_background.saturating_sub(1);
            }
            if counted {
                table.running = table.running.saturating_sub(1);
            }
        }
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        self.release();
    }
}

/// The names a client resolved, with their addresses, and their lookups
/// (module doc, "Invariants"). A clone shares the table, its lookups and
/// their bounds: the group clients of one sharded client share one
/// (review s55 client #1).
#[derive(Clone)]
pub(super) struct Names {
    state: Arc<State>,
    /// The address family of the endpoint of the client using this handle
    /// ([`Names::prefer_family`]): 4, 6, or 0 (not bound yet). Per handle,
    /// not shared: each client of a shared table takes its own family's
    /// addresses (review s56 client #1).
    family: u8,
}

impl Default for Names {
    fn default() -> Self {
        Names::with_lifetimes(RESOLVED_FOR, FAILED_FOR)
    }
}

impl Names {
    /// Names whose addresses are used for `resolved_for` before they are
    /// refreshed, and whose failed lookups are not made again for
    /// `failed_for`.
    pub(super) fn with_lifetimes(resolved_for: Duration, failed_for: Duration) -> Names {
        Names {
            state: Arc::new(State {
                table: Mutex::default(),
                resolved_for,
                failed_for,
                moves: AtomicU64::new(0),
            }),
            family: 0,
        }
    }

    /// The address of `name`: parsed if it is a socket address, known if
    /// this client resolved it (refreshed in the background once it is
    /// older than [`RESOLVED_FOR`]), else looked up off the runtime worker
    /// (or the lookup in flight joined) and waited for until `deadline`.
    /// Errors are [`Error::Unavailable`] (nothing was sent).
    pub(super) async fn resolve(&self, name: &str, deadline: Instant) -> Result<SocketAddr, Error> {
        if let Ok(addr) = name.parse::<SocketAddr>() {
            return Ok(addr);
        }
        let mut pending = match self.state.consult(name, self.state.resolved_for, Why::Call) {
            Known::Addr(found) => return Ok(found.for_family(self.family)),
            Known::Failed(why) => {
                return Err(Error::Unavailable(format!(
                    "cannot resolve {name:?}: {why} (nothing was sent)"
                )));
            }
            Known::Pending(rx) => rx,
        };
        let outcome =
            match tokio::time::timeout_at(deadline, pending.wait_for(Option::is_some)).await {
                Err(_) => {
                    tracing::debug!(name, "address lookup outlived the call's deadline");
                    return Err(Error::Unavailable(format!(
                        "looking up {name:?} took past the call's deadline (nothing was sent)"
                    )));
                }
                Ok(Err(_)) => Err("its lookup was dropped (its runtime stopped)".to_string()),
                Ok(Ok(seen)) => seen
                    .clone()
                    .unwrap_or_else(|| Err("its lookup ended with no outcome".to_string())),
            };
        outcome
            .map(|found| found.for_family(self.family))
            .map_err(|why| {
                Error::Unavailable(format!("cannot resolve {name:?}: {why} (nothing was sent)"))
            })
    }

    /// The address this client knows for `name` (parsed, or found by a
    /// lookup, however old), without waiting for anything.
    pub(super) fn known(&self, name: &str) -> Option<SocketAddr> {
        if let Ok(addr) = name.parse::<SocketAddr>() {
            return Some(addr);
        }
        self.state
            .lock()
            .entries
            .get(name)
            .and_then(|e| e.found.map(|(found, _)| found.for_family(self.family)))
    }

    /// Starts a lookup of `name` in the background if none is in flight and
    /// none failed within [`FAILED_FOR`] (and refreshes an old address).
    pub(super) fn prefetch(&self, name: &str) {
        if name.parse::<SocketAddr>().is_err() {
            let _ = self
                .state
                .consult(name, self.state.resolved_for, Why::Background);
        }
    }

    /// Looks `name` up again in the background, its address being younger
    /// than [`RESOLVED_FOR`]: its member could not be reached, so it may
    /// have moved (module doc, "Invariants"). Not while a lookup of it is
    /// in flight, nor within [`FAILED_FOR`] of its last answer or failure:
    /// a member that is down, not moved, costs one lookup per
    /// [`FAILED_FOR`] at most.
    pub(super) fn refresh(&self, name: &str) {
        if name.parse::<SocketAddr>().is_err() {
            let after = self.state.failed_for.min(self.state.resolved_for);
            let _ = self.state.consult(name, after, Why::Unreachable);
        }
    }

    /// The endpoint of the client using this handle is bound to IPv4
    /// (`ipv4`) or IPv6: the addresses it is given are of that family when
    /// the name has one (review s55 client #8: the first address of either
    /// family, unreachable from the endpoint). Only this handle's: the
    /// other clients sharing the table keep their own (review s56 client
    /// #1: one family set by the client that bound last, for all).
    pub(super) fn prefer_family(&mut self, ipv4: bool) {
        self.family = if ipv4 { 4 } else { 6 };
    }

    /// The end of the lookup of `name` in flight, if one is: ready once it
    /// recorded its outcome (or was dropped unrun). Waiting for it starts
    /// nothing.
    pub(super) fn lookup_end(
        &self,
        name: &str,
    ) -> Option<impl std::future::Future<Output = ()> + Send + use<>> {
        let mut rx = self.state.lock().entries.get(name)?.live_lookup()?.clone();
        Some(async move {
            // `Err`: the lookup is gone (its runtime stopped): ended too.
            let _ = rx.wait_for(Option::is_some).await;
        })
    }

    /// Whether a lookup of `name` is in flight (tests wait on it).
    #[cfg(test)]
    pub(super) fn looking_up(&self, name: &str) -> bool {
        self.state
            .lock()
            .entries
            .get(name)
            .is_some_and(|e| e.live_lookup().is_some())
    }

    /// How often a client checks the age of its members' names
    /// ([`RESOLVED_FOR`] / 8, at most a second): a name is looked up again
    /// at most that long after it became older than [`RESOLVED_FOR`].
    pub(super) fn age_check_every(&self) -> Duration {
        (self.state.resolved_for / 8).min(Duration::from_secs(1))
    }

    /// How many lookups so far found their name at another address than
    /// it had. Read before [`Names::known`]: a move counted after this read
    /// changes the count again.
    pub(super) fn moves(&self) -> u64 {
        self.state.moves.load(Ordering::Acquire)
    }

    /// Marks `given` as cluster addresses of one more client: never
    /// evicted from the table until each client that pinned them unpinned
    /// them ([`Names::unpin`]).
    pub(super) fn pin(&self, given: &[String]) {
        let now = Instant::now();
        let mut table = self.state.lock();
        for name in given.iter().filter(|n| n.parse::<SocketAddr>().is_err()) {
            table
                .entries
                .entry(name.clone())
                .or_insert_with(|| Entry::new(now))
                .pins += 1;
        }
    }

    /// The client that pinned `given` ([`Names::pin`]) is gone:
    /// they may be evicted once no other client of the table pinned them.
    pub(super) fn unpin(&self, given: &[String]) {
        let mut table = self.state.lock();
        for name in given.iter().filter(|n| n.parse::<SocketAddr>().is_err()) {
            if let Some(entry) = table.entries.get_mut(name) {
                entry.pins = entry.pins.saturating_sub(1);
            }
        }
    }

    /// The addresses of the cluster addresses `given`, in their order, all
    /// looked up at once, each until `deadline` while none resolved; once
    /// one resolved, the others until `deadline` less the time kept for
    /// the connect's dial (a quarter of the connect's time, at most
    /// [`DIAL_RESERVE`]). Review s52 #1: the others got only min(1 s, a
    /// quarter of the time left) after the first resolved, so a name whose
    /// lookup was merely slow was left out for the client's life. Only a
    /// name that fails, or is still unresolved then, is left out (with a
    /// warn); its lookup goes on ([`Names::known`] has it once it ends).
    pub(super) async fn resolve_all(&self, given: &[String], deadline: Instant) -> Resolved {
        let mut pending: FuturesUnordered<_> = given
            .iter()
            .enumerate()
            .map(|(i, name)| async move { (i, self.resolve(name, deadline).await) })
            .collect();
        let left = deadline.saturating_duration_since(Instant::now());
        let dial_from = deadline
            .checked_sub(DIAL_RESERVE.min(left / 4))
            .unwrap_or(deadline);
        let mut found: Vec<Option<SocketAddr>> = vec![None; given.len()];
        let mut answered = vec![false; given.len()];
        let mut why = Vec::new();
        let mut cut = deadline;
        loop {
            match tokio::time::timeout_at(cut, pending.next()).await {
                Ok(Some((i, r))) => {
                    if let Some(done) = answered.get_mut(i) {
                        *done = true;
                    }
                    match r {
                        Ok(addr) => {
                            if let Some(slot) = found.get_mut(i) {
                                *slot = Some(addr);
                            }
                            cut = dial_from;
                        }
                        Err(e) => why.push(e.to_string()),
                    }
                }
                Ok(None) => break,
                Err(_) => {
                    for (name, _) in given.iter().zip(&answered).filter(|(_, done)| !**done) {
                        tracing::warn!(address = %name, "the lookup of a cluster address did not end before the connect had to dial; left out until it resolves");
                        why.push(format!("looking up {name:?} did not end in time"));
                    }
                    break;
                }
            }
        }
        let left_out = given
            .iter()
            .zip(&found)
            .filter(|(_, addr)| addr.is_none())
            .map(|(name, _)| name.clone())
            .collect();
        let found = given
            .iter()
            .zip(found)
            .filter_map(|(name, addr)| Some((name.clone(), addr?)))
            .collect();
        Resolved {
            found,
            why,
            left_out,
        }
    }
}

/// What [`Names::resolve_all`] found.
pub(super) struct Resolved {
    /// The names that resolved in time, with their addresses, in their
    /// order.
    pub(super) found: Vec<(String, SocketAddr)>,
    /// Why each name left out was.
    pub(super) why: Vec<String>,
    /// The names left out (failed, or still being looked up).
    pub(super) left_out: Vec<String>,
}

/// The system's lookup of `name` (it blocks: run it on the blocking pool).
pub(super) fn blocking_lookup(name: &str) -> std::io::Result<Vec<SocketAddr>> {
    #[cfg(test)]
    if let Some(scripted) = stub::lookup(name) {
        return scripted;
    }
    Ok(name.to_socket_addrs()?.collect())
}

/// A scripted system resolver for tests (`cfg(test)`): names under
/// [`stub::STALLS`] block like a lookup during a DNS outage, names under
/// [`stub::FAILS`] fail at once, names given a [`stub::Script`] do as it
/// says; any other name is looked up by the system. Every lookup is
/// counted ([`stub::started`], [`stub::peak`]).
#[cfg(test)]
pub(crate) mod stub {
    use std::collections::{HashMap, HashSet};
    use std::net::SocketAddr;
    use std::sync::{Condvar, Mutex, MutexGuard};
    use std::time::Duration;

    /// The suffix of names whose lookup blocks (until released, at most
    /// [`STALL_FOR`]).
    pub(crate) const STALLS: &str = ".stall.invalid";
    /// The suffix of names whose lookup fails at once.
    pub(crate) const FAILS: &str = ".fail.invalid";
    /// How long a stalled lookup blocks at most.
    pub(crate) const STALL_FOR: Duration = Duration::from_secs(8);

    /// What the lookup of a scripted name does.
    #[derive(Clone, Copy, Debug)]
    pub(crate) enum Script {
        /// Answers the address after the delay (a name server that
        /// answers, slowly).
        Answer(SocketAddr, Duration),
        /// Blocks like a name under [`STALLS`].
        Stall,
        /// Answers both addresses, in this order, at once (a dual-stack
        /// name).
        Answers([SocketAddr; 2]),
        /// Fails at once, like a name under [`FAILS`] (a name server that
        /// is down).
        Fail,
    }

    #[derive(Default)]
    struct Stub {
        /// The stalled names released so far (a released name's lookup
        /// fails at once).
        released: HashSet<String>,
        scripts: HashMap<String, Script>,
        /// Lookups started, by name.
        started: HashMap<String, usize>,
        /// Lookups running now and at most at once, by group (a host
        /// without its first label: `n1.g.stall.invalid` is of
        /// `g.stall.invalid`).
        running: HashMap<String, (usize, usize)>,
    }

    static STUB: Mutex<Option<Stub>> = Mutex::new(None);
    static WAKE: Condvar = Condvar::new();

    fn stub() -> MutexGuard<'static, Option<Stub>> {
        STUB.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn with<T>(f: impl FnOnce(&mut Stub) -> T) -> T {
        f(stub().get_or_insert_with(Stub::default))
    }

    /// The group a name's lookups are counted in ([`peak`]).
    fn group(name: &str) -> String {
        let host = name.rsplit_once(':').map_or(name, |(h, _)| h);
        host.split_once('.').map_or(host, |(_, g)| g).to_string()
    }

    /// Releases every lookup of `name` that is blocked, and later ones.
    pub(crate) fn release(name: &str) {
        with(|s| s.released.insert(name.to_string()));
        WAKE.notify_all();
    }

    /// Scripts the lookup of `name` to answer `addr` after `delay` (a
    /// name server that answers, slowly).
    pub(crate) fn slow(name: &str, addr: SocketAddr, delay: Duration) {
        script(name, Script::Answer(addr, delay));
    }

    /// Scripts (or re-scripts) the lookup of `name`.
    pub(crate) fn script(name: &str, script: Script) {
        with(|s| s.scripts.insert(name.to_string(), script));
    }

    /// How many lookups of `name` started.
    pub(crate) fn started(name: &str) -> usize {
        with(|s| s.started.get(name).copied().unwrap_or(0))
    }

    /// The most lookups of names of `group` that ran at once.
    pub(crate) fn peak(group: &str) -> usize {
        with(|s| s.running.get(group).map_or(0, |&(_, peak)| peak))
    }

    /// Counts a lookup as running until dropped.
    struct Running(String);

    impl Drop for Running {
        fn drop(&mut self) {
            with(|s| {
                if let Some((now, _)) = s.running.get_mut(&self.0) {
                    *now = now.saturating_sub(1);
                }
            });
        }
    }

    pub(super) fn lookup(name: &str) -> Option<std::io::Result<Vec<SocketAddr>>> {
        let group = group(name);
        let scripted = with(|s| {
            *s.started.entry(name.to_string()).or_default() += 1;
            let (now, peak) = s.running.entry(group.clone()).or_default();
            *now += 1;
            *peak = (*peak).max(*now);
            s.scripts.get(name).copied()
        });
        let _running = Running(group);
        let host = name.rsplit_once(':').map_or(name, |(h, _)| h);
        match scripted {
            Some(Script::Answer(addr, delay)) => {
                std::thread::sleep(delay);
                return Some(Ok(vec![addr]));
            }
            Some(Script::Answers(both)) => return Some(Ok(both.to_vec())),
            Some(Script::Stall) => {}
            Some(Script::Fail) => {
                return Some(Err(std::io::Error::other("name server is down (scripted)")));
            }
            None if host.ends_with(FAILS) => {
                return Some(Err(std::io::Error::other("no such name (scripted)")));
            }
            None if host.ends_with(STALLS) => {}
            None => return None,
        }
        let until = std::time::Instant::now() + STALL_FOR;
        let mut guard = stub();
        loop {
            if guard.as_ref().is_some_and(|s| s.released.contains(name)) {
                break;
            }
            let left = until.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                break;
            }
            guard = WAKE
                .wait_timeout(guard, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        drop(guard);
        Some(Err(std::io::Error::other(
            "name server did not answer (scripted)",
        )))
    }
}

#[cfg(test)]
#[path = "names_tests.rs"]
mod names_tests;

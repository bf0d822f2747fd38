//! The members a client sends its calls to, and where their addresses come
//! from: the cluster addresses given to connect, each a socket address or
//! a name ([`Names`]).
//!
//! # Invariants
//!
//! - [`Members::current`] lists each address of the roster once, in the
//!   order the cluster addresses were given (those that joined late, after
//!   them): the roster holds every cluster address that resolved, with its
//!   name if it was given one;
//! - a name left out of the connect (its lookup failed or was still
//!   running) joins the roster once its lookup answered (review s52, stop
//!   53 client #2);
//! - a name of the roster whose member could not be reached is looked up
//!   again ([`Members::unreachable`], at most once per
//!   [`FAILED_FOR`](super::super::resolve::FAILED_FOR) per name), and once
//!   a lookup finds it at a new address the roster, and so the list, has
//!   the new address instead (review s53 client #1: the list kept the
//!   addresses of the connect for the client's life, so a client whose
//!   members all moved, as in a rolling redeploy behind DNS names, stayed
//!   `Unavailable`);
//! - a name of the roster older than its lifetime is looked up again in
//!   the background, at most once per [`Names::age_check_every`] per
//!   client (review s55 client #2), and the leader a client remembers is
//!   forgotten when it is the old address of a name that moved;
//! - a call reads the list through [`Members::current`], which costs one
//!   read lock and a few atomic loads while no name is left out and none
//!   moved; a call to the remembered leader only keeps the roster up to
//!   date ([`Members::sync`]: the atomic loads, no lock).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use super::super::resolve::Names;

/// One cluster address that resolved: its name (`None`: a socket address
/// was given), and the address it stands for now.
type Entry = (Option<String>, SocketAddr);

/// The members of a client (module doc, "Invariants").
pub(super) struct Members {
    /// The addresses calls go to, each once: made from `roster`.
    list: RwLock<Arc<Vec<SocketAddr>>>,
    /// The cluster addresses that resolved, in the order given (late ones
    /// after them).
    roster: Mutex<Vec<Entry>>,
    /// The cluster addresses left out of the connect (their lookup failed
    /// or was still running), until they resolve.
    late: Mutex<Vec<String>>,
    /// Whether `late` has names (read on every call without its lock).
    has_late: AtomicBool,
    /// The count of moved names ([`Names::moves`]) the roster follows.
    moves_seen: AtomicU64,
    /// When the roster's names were last checked for age, in
    /// milliseconds since `born` ([`Members::refresh_old`]).
    aged_at: AtomicU64,
    born: std::time::Instant,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Each address of `roster` once, in its order.
fn list_of(roster: &[Entry]) -> Vec<SocketAddr> {
    let mut list: Vec<SocketAddr> = Vec::with_capacity(roster.len());
    for (_, addr) in roster {
        if !list.contains(addr) {
            list.push(*addr);
        }
    }
    list
}

impl Members {
    /// The members of a connect: the cluster addresses that resolved
    /// (each given as a socket address or a name), and those `left_out`.
    pub(super) fn new(resolved: Vec<(String, SocketAddr)>, left_out: Vec<String>) -> Members {
        let roster: Vec<Entry> = resolved
            .into_iter()
            .map(|(given, addr)| (given.parse::<SocketAddr>().is_err().then_some(given), addr))
            .collect();
        Members {
            list: RwLock::new(Arc::new(list_of(&roster))),
            roster: Mutex::new(roster),
            has_late: AtomicBool::new(!left_out.is_empty()),
            late: Mutex::new(left_out),
            // Any move counted makes the first call look: the roster has
            // each name's latest address after it.
            moves_seen: AtomicU64::new(0),
            aged_at: AtomicU64::new(0),
            born: std::time::Instant::now(),
        }
    }

    /// The members' addresses now: first joins the cluster addresses left
    /// out of the connect whose lookup ended since (restarting, in the
    /// background, the lookup of one whose last lookup failed a while
    /// ago), and follows the names that moved.
    /// `moved_from` is told each address a name of the roster left.
    pub(super) fn current(
        &self,
        names: &Names,
        moved_from: impl FnMut(SocketAddr),
    ) -> Arc<Vec<SocketAddr>> {
        self.sync(names, moved_from);
        match self.list.read() {
            Ok(l) => Arc::clone(&l),
            Err(p) => Arc::clone(&p.into_inner()),
        }
    }

    /// What [`Members::current`] does before it reads the list (joins the
    /// late names that resolved, refreshes old names, follows moves),
    /// without reading it: atomic loads only, no lock, while nothing
    /// changed. A call that goes to the remembered leader needs no list
    /// (stop 57 task #4: it read the list, a read lock and an `Arc` clone
    /// on a cache line every caller shares, and dropped it).
    pub(super) fn sync(&self, names: &Names, moved_from: impl FnMut(SocketAddr)) {
        if self.has_late.load(Ordering::Acquire) {
            self.adopt_late(names);
        }
        self.refresh_old(names);
        let moves = names.moves();
        if moves != self.moves_seen.load(Ordering::Acquire) {
            self.follow_moves(names, moves, moved_from);
        }
    }

    /// The member at `addr` could not be reached (or refused this client):
    /// the names standing for it are looked up again, in the background
    /// ([`Names::refresh`]; bounded there), in case they moved.
    pub(super) fn unreachable(&self, addr: SocketAddr, names: &Names) {
        let roster = lock(&self.roster);
        for (name, _) in roster.iter().filter(|(_, a)| *a == addr) {
            if let Some(name) = name {
                names.refresh(name);
            }
        }
    }

    /// The ends of the lookups in flight of the names standing for the
    /// members at `addrs` (their members may be about to move): each ready
    /// once its lookup recorded its outcome ([`Names::lookup_end`]).
    pub(super) fn lookups_of(
        &self,
        addrs: &[SocketAddr],
        names: &Names,
    ) -> Vec<impl std::future::Future<Output = ()> + Send + use<>> {
        lock(&self.roster)
            .iter()
            .filter(|(_, a)| addrs.contains(a))
            .filter_map(|(name, _)| name.as_deref())
            .filter_map(|name| names.lookup_end(name))
            .collect()
    }

    /// At most once per [`Names::age_check_every`]: each name of the
    /// roster older than its lifetime is looked up again in the
    /// background ([`Names::prefetch`]; no call waits for it), so that a
    /// name that moved while the node at its old address still answers is
    /// followed too (review s55 client #2).
    fn refresh_old(&self, names: &Names) {
        let every = u64::try_from(names.age_check_every().as_millis()).unwrap_or(u64::MAX);
        let now = u64::try_from(self.born.elapsed().as_millis()).unwrap_or(u64::MAX);
        let last = self.aged_at.load(Ordering::Acquire);
        if now.saturating_sub(last) < every
            || self
                .aged_at
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
        {
            return;
        }
        let roster = lock(&self.roster);
        for name in roster.iter().filter_map(|(name, _)| name.as_deref()) {
            names.prefetch(name);
        }
    }

    /// Moves the left-out cluster addresses that resolved into the roster.
    fn adopt_late(&self, names: &Names) {
        let mut late = lock(&self.late);
        let mut joined = Vec::new();
        late.retain(|name| match names.known(name) {
            Some(addr) => {
                joined.push((name.clone(), addr));
                false
            }
            None => {
                names.prefetch(name);
                true
            }
        });
        self.has_late.store(!late.is_empty(), Ordering::Release);
        drop(late);
        if joined.is_empty() {
            return;
        }
        let mut roster = lock(&self.roster);
        for (name, addr) in joined {
            tracing::info!(address = %name, member = %addr, "a cluster address left out of the connect resolved; it is a member now");
            roster.push((Some(name), addr));
        }
        self.publish(&roster);
    }

    /// Gives each name of the roster the address its latest lookup found.
    fn follow_moves(&self, names: &Names, moves: u64, mut moved_from: impl FnMut(SocketAddr)) {
        let mut roster = lock(&self.roster);
        // Before reading the addresses: a move counted after `moves` was
        // read makes the next call look again.
        self.moves_seen.fetch_max(moves, Ordering::AcqRel);
        let mut moved = false;
        for (name, addr) in roster.iter_mut() {
            let Some(name) = name.as_deref() else {
                continue;
            };
            if let Some(now) = names.known(name)
                && now != *addr
            {
                tracing::info!(address = %name, old = %addr, new = %now, "a member's name moved; calls go to its new address");
                moved_from(*addr);
                *addr = now;
                moved = true;
            }
        }
        if moved {
            self.publish(&roster);
        }
    }

    /// Makes the list from `roster` (held locked, so that lists are
    /// published in the order the roster changed).
    fn publish(&self, roster: &[Entry]) {
        let list = Arc::new(list_of(roster));
        match self.list.write() {
            Ok(mut l) => *l = list,
            Err(p) => *p.into_inner() = list,
        }
    }
}

#[cfg(test)]
#[path = "members_tests.rs"]
mod members_tests;

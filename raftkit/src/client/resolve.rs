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

use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Mutex;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::time::Instant;

use crate::error::Error;

/// The most names [`Names`] remembers: hints come from the network, so the
/// table must not grow with what members say (a cluster has a few members;
/// a name past the bound is looked up again each time).
const MAX_NAMES: usize = 64;

/// The time a connect keeps for dialling, at most, once one of its
/// cluster addresses resolved (and at most a quarter of its time): the
/// lookups of the others are waited for until then.
const DIAL_RESERVE: Duration = Duration::from_secs(1);

/// The names a client resolved, with their addresses.
#[derive(Default)]
pub(super) struct Names {
    known: Mutex<HashMap<String, SocketAddr>>,
}

impl Names {
    /// The address of `name`: parsed if it is a socket address, remembered
    /// if this client resolved it before, else looked up off the runtime
    /// worker and waited for until `deadline`. Errors are
    /// [`Error::Unavailable`] (nothing was sent).
    pub(super) async fn resolve(&self, name: &str, deadline: Instant) -> Result<SocketAddr, Error> {
        if let Ok(addr) = name.parse::<SocketAddr>() {
            return Ok(addr);
        }
        if let Some(&addr) = self.lock().get(name) {
            return Ok(addr);
        }
        let owned = name.to_string();
        let lookup = tokio::task::spawn_blocking(move || blocking_lookup(&owned));
        let addr = match tokio::time::timeout_at(deadline, lookup).await {
            Err(_) => {
                tracing::debug!(name, "address lookup outlived the call's deadline");
                return Err(Error::Unavailable(format!(
                    "looking up {name:?} took past the call's deadline (nothing was sent)"
                )));
            }
            Ok(Err(joined)) => {
                return Err(Error::Unavailable(format!(
                    "looking up {name:?} failed: {joined} (nothing was sent)"
                )));
            }
            Ok(Ok(Err(e))) => {
                tracing::debug!(name, error = %e, "address lookup failed");
                return Err(Error::Unavailable(format!(
                    "cannot resolve {name:?}: {e} (nothing was sent)"
                )));
            }
            Ok(Ok(Ok(found))) => found.into_iter().next().ok_or_else(|| {
                Error::Unavailable(format!(
                    "{name:?} resolves to no address (nothing was sent)"
                ))
            })?,
        };
        self.remember(name, addr);
        Ok(addr)
    }

    /// The addresses of the cluster addresses `given`, in their order, all
    /// looked up at once, each until `deadline` while none resolved; once
    /// one resolved, the others until `deadline` less the time kept for
    /// the connect's dial (a quarter of the connect's time, at most
    /// [`DIAL_RESERVE`]). Review s52 #1: the others got only min(1 s, a
    /// quarter of the time left) after the first resolved, so a name whose
    /// lookup was merely slow was left out for the client's life. Only a
    /// name that fails, or is still unresolved then, is left out (with a
    /// warn). With why each name left out was.
    pub(super) async fn resolve_all(
        &self,
        given: &[String],
        deadline: Instant,
    ) -> (Vec<SocketAddr>, Vec<String>) {
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
                        tracing::warn!(address = %name, "the lookup of a cluster address did not end before the connect had to dial; left out");
                        why.push(format!("looking up {name:?} did not end in time"));
                    }
                    break;
                }
            }
        }
        (found.into_iter().flatten().collect(), why)
    }

    /// Remembers that `name` is at `addr` (while the table has room).
    pub(super) fn remember(&self, name: &str, addr: SocketAddr) {
        let mut known = self.lock();
        if known.len() < MAX_NAMES || known.contains_key(name) {
            known.insert(name.to_string(), addr);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, SocketAddr>> {
        self.known.lock().unwrap_or_else(|p| p.into_inner())
    }
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
/// [`stub::FAILS`] fail at once; any other name is looked up by the system.
#[cfg(test)]
pub(crate) mod stub {
    use std::collections::HashSet;
    use std::net::SocketAddr;
    use std::sync::{Condvar, Mutex};
    use std::time::Duration;

    /// The suffix of names whose lookup blocks (until released, at most
    /// [`STALL_FOR`]).
    pub(crate) const STALLS: &str = ".stall.invalid";
    /// The suffix of names whose lookup fails at once.
    pub(crate) const FAILS: &str = ".fail.invalid";
    /// How long a stalled lookup blocks at most.
    pub(crate) const STALL_FOR: Duration = Duration::from_secs(8);

    /// The stalled names released so far (a released name's lookup fails
    /// at once).
    static RELEASED: Mutex<Option<HashSet<String>>> = Mutex::new(None);
    static WAKE: Condvar = Condvar::new();

    /// Releases every lookup of `name` that is blocked, and later ones.
    pub(crate) fn release(name: &str) {
        let mut released = RELEASED.lock().unwrap_or_else(|p| p.into_inner());
        released
            .get_or_insert_with(HashSet::new)
            .insert(name.to_string());
        WAKE.notify_all();
    }

    /// Names whose lookup answers slowly: after the delay, the address.
    static SLOW: Mutex<Vec<(String, SocketAddr, Duration)>> = Mutex::new(Vec::new());

    /// Scripts the lookup of `name` to answer `addr` after `delay` (a
    /// name server that answers, slowly).
    pub(crate) fn slow(name: &str, addr: SocketAddr, delay: Duration) {
        SLOW.lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((name.to_string(), addr, delay));
    }

    pub(super) fn lookup(name: &str) -> Option<std::io::Result<Vec<SocketAddr>>> {
        let scripted = SLOW
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|(n, _, _)| n == name)
            .map(|&(_, addr, delay)| (addr, delay));
        if let Some((addr, delay)) = scripted {
            std::thread::sleep(delay);
            return Some(Ok(vec![addr]));
        }
        let host = name.rsplit_once(':').map_or(name, |(h, _)| h);
        if host.ends_with(FAILS) {
            return Some(Err(std::io::Error::other("no such name (scripted)")));
        }
        if !host.ends_with(STALLS) {
            return None;
        }
        let until = std::time::Instant::now() + STALL_FOR;
        let mut released = RELEASED.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if released.as_ref().is_some_and(|r| r.contains(name)) {
                break;
            }
            let left = until.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                break;
            }
            released = WAKE
                .wait_timeout(released, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        Some(Err(std::io::Error::other(
            "name server did not answer (scripted)",
        )))
    }
}

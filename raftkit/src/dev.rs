//! A whole cluster in one call, for programs, tests and examples.
//!
//! [`Cluster::start`] starts `n` peers of a state machine in this process:
//! each with its own data directory under one temporary directory, talking
//! QUIC with mutual TLS on loopback under an ephemeral certificate authority
//! (made for the cluster, never written outside the temporary directory),
//! and waits until they elected a leader. [`Cluster::client`] is a typed
//! client connected to all of them.
//!
//! ```
//! use raftkit::prelude::*;
//!
//! #[derive(StateMachine, Default, Serialize, Deserialize)]
//! struct Counter { n: u64 }
//!
//! #[raftkit::state_machine]
//! impl Counter {
//!     #[write]
//!     fn add(&mut self, by: u64) -> u64 { self.n += by; self.n }
//!     #[read]
//!     fn get(&self) -> u64 { self.n }
//! }
//!
//! # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
//! # async fn main() -> Result<(), raftkit::Error> {
//! let cluster = raftkit::dev::Cluster::<Counter>::start(3).await?;
//! let counter = cluster.client();
//! assert_eq!(counter.add(2).await?, 2);
//! assert_eq!(counter.get().await?, 2);
//! assert_eq!(cluster.peers().len(), 3);
//! cluster.shutdown().await?;
//! # Ok(()) }
//! ```
//!
//! It is the real runtime, not a simulation: real write-ahead logs, real
//! QUIC, real elections (with a 20 ms tick, so that a leader is elected in a
//! fraction of a second). For a deterministic, seeded simulation of many
//! clusters use the `sim` feature instead.
//!
//! # Invariants
//! - [`Cluster::start`] returns only once one peer leads; its typed client
//!   is connected and finds the leader by itself.
//! - Everything the cluster writes is under [`Cluster::dir`], removed when
//!   the `Cluster` is dropped. Call [`Cluster::shutdown`] first: it stops
//!   every peer cleanly (dropping a running cluster leaves its peers'
//!   tasks running until the tokio runtime ends, on a removed directory).

use std::path::Path;
use std::time::Duration;

use crate::client::{Client, ClientOptions, HasClient};
use crate::core::Role;
use crate::error::Error;
use crate::identity::default_name;
use crate::runtime::{Peer, PeerExt};
use crate::tls::{ClusterCa, Identity};

/// The tick of a dev cluster's peers: elections in 0.2–0.4 s.
const TICK: Duration = Duration::from_millis(20);

/// How long [`Cluster::start`] waits for a leader.
const LEADER_WAIT: Duration = Duration::from_secs(20);

/// `n` peers of `S` in this process, with a connected typed client. See the
/// [module documentation](self).
pub struct Cluster<S: HasClient> {
    peers: Vec<Peer<S>>,
    addrs: Vec<String>,
    ca: ClusterCa,
    client: S::Client,
    raw: Client,
    // Last: removed after everything above is dropped.
    dir: tempfile::TempDir,
}

impl<S: PeerExt + HasClient> Cluster<S> {
    /// Starts `n` peers (1 to 9) on loopback and a typed client, and waits
    /// until a leader is elected.
    pub async fn start(n: usize) -> Result<Cluster<S>, Error> {
        if !(1..=9).contains(&n) {
            return Err(Error::Rejected(format!(
                "a dev cluster has 1 to 9 peers, not {n}"
            )));
        }
        let dir = tempfile::Builder::new()
            .prefix("raftkit-dev-")
            .tempdir()
            .map_err(|e| Error::Storage(format!("a temporary directory: {e}")))?;
        let ca = ClusterCa::generate("raftkit-dev")?;
        let (peers, addrs) = start_peers::<S>(n, &ca, dir.path()).await?;
        let cluster_ok = async {
            wait_for_leader(&peers).await?;
            let identity = ca.issue_client("dev-client")?;
            Client::connect_with_for::<S, _, _>(&addrs, identity, ClientOptions::default()).await
        };
        let raw = match cluster_ok.await {
            Ok(raw) => raw,
            Err(e) => {
                for p in &peers {
                    let _ = p.shutdown().await;
                }
                return Err(e);
            }
        };
        Ok(Cluster {
            client: S::typed_client(raw.clone()),
            raw,
            peers,
            addrs,
            ca,
            dir,
        })
    }
}

impl<S: HasClient> Cluster<S> {
    /// The typed client (`KvClient` for a state machine `Kv`), connected to
    /// every peer. Clones share one session.
    pub fn client(&self) -> S::Client {
        self.client.clone()
    }

    /// The untyped network client under [`Cluster::client`] (membership
    /// and leadership calls need an admin identity: see [`Cluster::ca`]).
    pub fn raw_client(&self) -> &Client {
        &self.raw
    }

    /// The peers, in start order.
    pub fn peers(&self) -> &[Peer<S>] {
        &self.peers
    }

    /// The peers' addresses (`127.0.0.1:PORT`), in start order.
    pub fn addrs(&self) -> &[String] {
        &self.addrs
    }

    /// The peer that leads now, if one does.
    pub fn leader(&self) -> Option<&Peer<S>> {
        self.peers.iter().find(|p| p.status().role == Role::Leader)
    }

    /// The cluster's ephemeral certificate authority: issue more client or
    /// admin identities from it ([`ClusterCa::issue_client`],
    /// [`ClusterCa::issue_admin`]).
    pub fn ca(&self) -> &ClusterCa {
        &self.ca
    }

    /// The temporary directory holding every peer's data (removed on drop).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Closes the client's session and stops every peer cleanly; the
    /// directory is removed when `self` is dropped, here. Returns the first
    /// error a peer stopped with, after stopping all of them.
    pub async fn shutdown(self) -> Result<(), Error> {
        // The session is closed best-effort: the cluster stops anyway.
        let _ = self.raw.close().await;
        let mut first = Ok(());
        for p in &self.peers {
            let stopped = p.shutdown().await;
            if first.is_ok() {
                first = stopped;
            }
        }
        first
    }
}

async fn start_peers<S: PeerExt>(
    n: usize,
    ca: &ClusterCa,
    dir: &Path,
) -> Result<(Vec<Peer<S>>, Vec<String>), Error> {
    let (sockets, addrs) = loopback_sockets(n)?;
    let mut peers: Vec<Peer<S>> = Vec::with_capacity(n);
    for (i, (socket, addr)) in sockets.into_iter().zip(&addrs).enumerate() {
        let name = default_name(S::NAME, addr);
        let started = async {
            let identity: Identity = ca.issue_node(&name, &[])?;
            S::peer()
                .listen_socket(socket)
                .data_dir(dir.join(format!("peer{i}")))
                .bootstrap_members(addrs.clone())
                .identity(identity)
                .tick(TICK)
                .start()
                .await
        };
        match started.await {
            Ok(peer) => peers.push(peer),
            Err(e) => {
                for p in &peers {
                    let _ = p.shutdown().await;
                }
                return Err(e);
            }
        }
    }
    Ok((peers, addrs))
}

/// `n` UDP sockets bound to free loopback ports, with their addresses: the
/// peers serve on them ([`PeerBuilder::listen_socket`](crate::runtime::PeerBuilder::listen_socket)),
/// so no port is ever released for another process to take before its peer
/// listens (every member's address must be known before the first starts).
fn loopback_sockets(n: usize) -> Result<(Vec<std::net::UdpSocket>, Vec<String>), Error> {
    let no_port = |e: std::io::Error| Error::Transport(format!("no free loopback UDP port: {e}"));
    let sockets = (0..n)
        .map(|_| std::net::UdpSocket::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()
        .map_err(no_port)?;
    let addrs = sockets
        .iter()
        .map(|s| s.local_addr().map(|a| a.to_string()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(no_port)?;
    Ok((sockets, addrs))
}

async fn wait_for_leader<S: crate::StateMachine>(peers: &[Peer<S>]) -> Result<(), Error> {
    let mut watches: Vec<_> = peers.iter().map(Peer::watch).collect();
    let wait = async {
        loop {
            if watches.iter().any(|w| w.borrow().role == Role::Leader) {
                return Ok(());
            }
            // Wakes on the next status change of any peer.
            let changed = watches.iter_mut().map(|w| Box::pin(w.changed()));
            if futures_select_all(changed).await.is_err() {
                return Err(Error::Unavailable(
                    "a dev cluster peer stopped before a leader was elected".into(),
                ));
            }
        }
    };
    tokio::time::timeout(LEADER_WAIT, wait).await.map_err(|_| {
        Error::Unavailable(format!(
            "no leader elected within {} s",
            LEADER_WAIT.as_secs()
        ))
    })?
}

/// The first of `futures` to finish (a tiny `select_all`, without a
/// dependency on the futures crate).
async fn futures_select_all<F, T>(futures: impl IntoIterator<Item = F>) -> T
where
    F: std::future::Future<Output = T> + Unpin,
{
    let mut futures: Vec<F> = futures.into_iter().collect();
    std::future::poll_fn(move |cx| {
        for f in futures.iter_mut() {
            if let std::task::Poll::Ready(out) = std::pin::Pin::new(f).poll(cx) {
                return std::task::Poll::Ready(out);
            }
        }
        std::task::Poll::Pending
    })
    .await
}

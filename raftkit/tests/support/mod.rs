//! Helpers shared by the QUIC integration tests: loopback addresses, the
//! certificates and data directory of a dev cluster, a member's builder,
//! and forged identities.
//!
//! Each test file is its own crate and uses part of this module.
#![allow(dead_code)]

mod ports;

use std::path::Path;
use std::time::Duration;

use raftkit::runtime::{PeerBuilder, PeerExt};
use raftkit::tls::{ClusterCa, Identity, dev_cluster};

/// `n` distinct loopback addresses whose ports were free a moment ago,
/// below the kernel's ephemeral range and handed out once per process
/// (`support/ports.rs` says why).
pub use ports::free_addrs;

/// What a test cluster of `kv@<address>` members needs before any of them
/// starts: their addresses, one CA's node identity for each (in address
/// order), a client identity of that CA, and a data directory.
pub struct DevCluster {
    /// The members' addresses.
    pub addrs: Vec<String>,
    /// The CA that signed every identity here.
    pub ca: ClusterCa,
    /// The node identity of each member, named `kv@<address>`.
    pub ids: Vec<Identity>,
    /// A client identity, `client`.
    pub client: Identity,
    /// The data directory: each member's data is in `dir/<address>`.
    pub dir: tempfile::TempDir,
}

impl DevCluster {
    /// Addresses, certificates and a directory for `n` members.
    pub fn new(n: usize) -> DevCluster {
        let addrs = free_addrs(n);
        let names: Vec<String> = addrs.iter().map(|a| format!("kv@{a}")).collect();
        let (ca, ids) = dev_cluster(&names).expect("dev CA");
        let client = ca.issue_client("client").expect("client identity");
        let dir = tempfile::tempdir().expect("tempdir");
        DevCluster {
            addrs,
            ca,
            ids,
            client,
            dir,
        }
    }

    /// A builder of `S` for the member at `addr` with identity `id`,
    /// bootstrapping the cluster of every address, ticking every `tick`,
    /// its data in `dir/<addr>`.
    pub fn builder<S: PeerExt>(&self, addr: &str, id: Identity, tick: Duration) -> PeerBuilder<S> {
        member_builder(self.dir.path(), &self.addrs, addr, id, tick)
    }
}

/// A builder of `S` for the member at `addr` with identity `id`,
/// bootstrapping the cluster `addrs`, ticking every `tick`, its data in
/// `dir/<addr>`.
pub fn member_builder<S: PeerExt>(
    dir: &Path,
    addrs: &[String],
    addr: &str,
    id: Identity,
    tick: Duration,
) -> PeerBuilder<S> {
    S::peer()
        .listen(addr.to_string())
        .data_dir(dir.join(addr))
        .bootstrap_members(addrs.to_vec())
        .identity(id)
        .tick(tick)
}

/// An identity with `forged`'s certificate and key that trusts `ca`: its
/// holder accepts the certificates `ca` signed, and their holders refuse
/// its own.
pub fn forge_trust(forged: &Identity, ca: &ClusterCa) -> Identity {
    let dir = tempfile::tempdir().expect("tempdir");
    forged.write_to(dir.path(), "f").expect("write");
    ca.write_to(dir.path()).expect("overwrite ca.pem");
    Identity::load(dir.path(), "f").expect("load")
}

//! Clients: what generated `<Name>Client` types are built on.
//!
//! A generated client encodes each call as its state machine's `Write` or
//! `Read` command and hands the bytes to a [`Submit`] implementation, which
//! delivers them to the cluster and returns the encoded reply. The network
//! client (QUIC, leader routing, retries) implements [`Submit`]; so does
//! [`Local`], which applies commands to a state machine in the same process
//! and serves unit tests and examples that need no cluster.
//!
//! This module never imports the runtime: a client binary carries no server.

mod addr_hash;
mod consistency;
#[cfg(test)]
mod fake_member;
mod local;
pub(crate) mod mux;
mod refusal;
mod remote;
mod resolve;
pub mod sharded;
pub mod watch;
pub mod wire;

use std::future::Future;

pub use consistency::{Consistency, ReadRouting, Staleness};
pub use local::Local;
pub use remote::{
    CERTS_ENV, Client, ClientOptions, NODE_ADMIN_TIMEOUT, WriteOnce, by_deadline, current_deadline,
};
pub use sharded::ShardedClient;

use crate::error::Error;
use crate::state_machine::StateMachine;

/// A state machine with a generated typed client: `#[raftkit::state_machine]`
/// implements it (`Kv` gets `KvClient`), so that generic code such as
/// [`crate::dev::Cluster`] can hand out the typed client.
pub trait HasClient: StateMachine {
    /// The typed client over the network client: `KvClient<Client>`.
    type Client: Clone + Send + Sync + 'static;

    /// Wraps a connected network client.
    fn typed_client(client: Client) -> Self::Client;
}

/// Delivers encoded commands to a state machine and returns encoded replies.
pub trait Submit: Send + Sync {
    /// Submits an encoded `Write` command; resolves to the encoded
    /// `WriteOutput` once the command has been applied.
    fn write(&self, command: Vec<u8>) -> impl Future<Output = Result<Vec<u8>, Error>> + Send;
    /// Submits an encoded `Read` query; resolves to the encoded `ReadOutput`,
    /// linearizable with respect to every write.
    fn read(&self, query: Vec<u8>) -> impl Future<Output = Result<Vec<u8>, Error>> + Send;
}

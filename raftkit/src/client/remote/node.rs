//! Requests to one member or node rather than to the group's leader,
//! and the administrative calls (moved out of `remote.rs`, stop 55): a
//! member's status, a multi-group node's requests ([`NodeRequest`]), and
//! the membership and leadership changes run on the leader.
//!
//! A request that changes nothing (a status, a node's groups) never ends
//! with an error that says "may have been applied" ([`changed_nothing`]).

use std::net::SocketAddr;

use super::{Client, NODE_ADMIN_TIMEOUT, deadline_in, traced};
use crate::client::wire::{ClientRequest, ClientResponse, NodeRequest, StatusReport};
use crate::error::{Applied, Error};

impl Client {
    /// The status of the member at `addr` (no leader needed).
    ///
    /// It ends by the client's timeout ([`ClientOptions::timeout`](super::ClientOptions::timeout)) or an
    /// enclosing [`by_deadline`](super::by_deadline), whichever is first, looking `addr` up
    /// included: a member that takes the connection and never answers ends
    /// it [`Error::Unavailable`] then, as does a name that does not resolve
    /// (a status request changes nothing: no error of it says "may have
    /// been applied"). Review s52 (stop 53 client #3): it had no deadline.
    pub async fn status_of(&self, addr: &str) -> Result<StatusReport, Error> {
        let deadline = deadline_in(self.inner.opts.timeout);
        let addr = self.inner.names.resolve(addr, deadline).await?;
        let answer = self
            .once_by(addr, &ClientRequest::Status, &mut false, deadline)
            .await
            .map_err(|e| changed_nothing("status", addr, e))?;
        match answer {
            ClientResponse::Status(s) => Ok(*s),
            ClientResponse::Err(e) => Err(e.into()),
            ClientResponse::Ok(_)
            | ClientResponse::Events { .. }
            | ClientResponse::Stale { .. } => {
                Err(Error::Protocol("expected a status report".into()))
            }
        }
    }

    /// The status of the member this client reaches first.
    pub async fn status(&self) -> Result<StatusReport, Error> {
        let target = self.next_target(false);
        self.status_of(&target.to_string()).await
    }

    /// Sends a request about a multi-group node as a whole
    /// ([`NodeRequest`]) to the node at `addr`
    /// (no redirect): the encoded answer.
    ///
    /// A request that changes nothing
    /// ([`NodeRequest::Groups`]) ends by
    /// the client's timeout ([`ClientOptions::timeout`](super::ClientOptions::timeout)) or an enclosing
    /// [`by_deadline`](super::by_deadline), whichever is first, looking `addr` up included,
    /// and then with [`Error::Unavailable`]. One that may start something
    /// and is answered only once it is done (a balancer round, a move,
    /// which waits for the learner's catch-up) is not cut by the client's
    /// timeout: it ends by [`NODE_ADMIN_TIMEOUT`] (or the client's timeout
    /// if longer) or an enclosing [`by_deadline`](super::by_deadline), and then with
    /// [`Error::Timeout`] ("may have been applied": read the node's groups
    /// before asking again; a move can be resumed).
    pub async fn node_request(&self, addr: &str, request: NodeRequest) -> Result<Vec<u8>, Error> {
        let read_only = matches!(request, NodeRequest::Groups);
        let deadline = if read_only {
            deadline_in(self.inner.opts.timeout)
        } else {
            deadline_in(self.inner.opts.timeout.max(NODE_ADMIN_TIMEOUT))
        };
        let addr = self.inner.names.resolve(addr, deadline).await?;
        let request = ClientRequest::Node(request);
        let answer = traced("node", self.once_by(addr, &request, &mut false, deadline))
            .await
            .map_err(|e| {
                if read_only {
                    changed_nothing("node request", addr, e)
                } else {
                    e
                }
            })?;
        Self::expect_ok(answer)
    }

    /// Runs an administrative request (membership, leadership) on the
    /// leader.
    pub async fn admin(&self, request: ClientRequest) -> Result<(), Error> {
        Self::expect_ok(self.request(request).await?).map(|_| ())
    }

    /// Adds the member at `addr` (learner, catch-up rounds, then voter,
    /// thesis §4.2.1) and returns the steps the leader reported. The node
    /// at `addr` must be running, started with neither `bootstrap` nor
    /// `join`. Needs an admin certificate ([`Error::Unauthorized`]
    /// otherwise, nothing changed).
    ///
    /// The leader adds the node as a learner first, then waits for it to
    /// catch up: a node that does not answer (not started, wrong address)
    /// makes the call end with [`Error::Timeout`] after the client's
    /// timeout, and leaves it in the configuration as a learner (a member
    /// with `voter == false` in [`Client::status`]). Call `add_server`
    /// again once the node runs, or take it out with
    /// [`Client::remove_server`].
    pub async fn add_server(&self, addr: &str) -> Result<Vec<String>, Error> {
        let out = Self::expect_ok(
            self.request(ClientRequest::AddServer {
                addr: addr.to_string(),
            })
            .await?,
        )?;
        if out.is_empty() {
            return Ok(Vec::new());
        }
        Ok(crate::state_machine::decode("progress", &out)?)
    }

    /// Adds the member at `addr` as a learner only (thesis §4.2.1): it
    /// receives the log but does not vote, until [`Client::add_server`]
    /// promotes it. Returns once a committed configuration has it. The
    /// node at `addr` must be running,
    /// started with neither `bootstrap` nor `join`. Needs an admin
    /// certificate ([`Error::Unauthorized`] otherwise, nothing changed).
    /// An error that [may have been applied](Error::applied) leaves the
    /// learner possibly added: asking again for the same learner changes
    /// nothing more.
    pub async fn add_learner(&self, addr: &str) -> Result<(), Error> {
        self.admin(ClientRequest::AddLearner {
            addr: addr.to_string(),
        })
        .await
    }

    /// Removes the member at `addr` (voter or learner; the leader too,
    /// which steps down once the new configuration commits, thesis
    /// §4.2.2); returns once a committed configuration is without it.
    /// Needs an admin certificate ([`Error::Unauthorized`] otherwise,
    /// nothing changed); one change at a time ([`Error::Rejected`] while
    /// another is in flight, nothing changed). The removed node is not
    /// stopped: shut it down, and revoke its certificate (see
    /// [`crate::tls`], Revocation) so that it cannot add itself back.
    ///
    /// An error that [may have been applied](Error::applied) (a timeout, a
    /// lost connection) leaves the removal possibly done: read the
    /// membership ([`Client::status`]) before asking again.
    pub async fn remove_server(&self, addr: &str) -> Result<(), Error> {
        self.admin(ClientRequest::RemoveServer {
            addr: addr.to_string(),
        })
        .await
    }

    /// Moves leadership to the member at `addr` (thesis §3.10) and
    /// returns once it leads. Needs an admin certificate
    /// ([`Error::Unauthorized`] otherwise). A transfer changes no state, so
    /// any error is safe to retry: after a timeout the transfer may still
    /// have happened ([`Client::status`] names the leader).
    pub async fn transfer_leader(&self, addr: &str) -> Result<(), Error> {
        self.admin(ClientRequest::TransferLeader {
            addr: addr.to_string(),
        })
        .await
    }
}

/// The error of request `what` to `addr`, which changes nothing (a status
/// request, a node's groups): one that says "may have been applied" (a
/// timeout, a lost connection) says "not applied" instead, still
/// retryable ([`Error::Unavailable`]); others are kept.
fn changed_nothing(what: &str, addr: SocketAddr, e: Error) -> Error {
    if e.applied() == Applied::No || !e.is_retryable() {
        return e;
    }
    match e {
        Error::Timeout => Error::Unavailable(format!(
            "{addr} did not answer the {what} before the call's deadline (it changes nothing)"
        )),
        e => Error::Unavailable(format!("{what} to {addr}: {e} (it changes nothing)")),
    }
}

//! The sharded client: one typed client for a sharded deployment
//! (multi-group nodes with a placement, see [`crate::multi`]).
//!
//! `KvClient::new(ShardedClient::<Kv>::connect(seeds).await?)` is the same
//! generated `KvClient` as for one group; each call goes to the group that
//! owns its shard key (`#[write(shard = key)]`, `#[read(shard = key)]`),
//! at that group's leader.
//!
//! # How a call is routed
//!
//! 1. The command is decoded back into `S::Write` (or `S::Read`) and its
//!    shard key taken ([`StateMachine::shard_key`]). A command without
//!    one is refused at run time with [`Error::Rejected`] (nothing was
//!    applied): whether a handler has a key is known only per command,
//!    and commands that span shards (a scan) are sent to each group with
//!    [`ShardedClient::group_clients`].
//! 2. The cached placement ([`Routes`], read from group 0) names the group
//!    owning the key's hash and the nodes with a replica of it.
//! 3. The call goes through that group's own [`Client`] (one per group,
//!    tagged with the group, [`ClientOptions::with_group`]): it follows
//!    `NotLeader` redirects to the group's leader, retries, and numbers its
//!    writes in the group's own session, so every single-group guarantee
//!    (exactly-once writes, errors that say whether they applied) holds per
//!    group.
//! 4. If the group's client ends with an error that says the placement may
//!    be stale ([`Error::NotHosted`], or `NotLeader`/`Unavailable` after its
//!    retries) and that nothing was applied, the placement is re-read from
//!    group 0 and the call is routed again. A group's replicas are
//!    recorded in the placement by the nodes once its configuration
//!    commits ([`crate::multi::placement_sync`]), a moment after a move, so
//!    while every replica the placement lists answers `NotHosted` the
//!    placement is re-read (with backoff) until it lists others, within
//!    the call's timeout; a call whose group
//!    client ended on `NotLeader` or `Unavailable` (its whole timeout
//!    spent) is re-routed once, and only if the re-read placement lists
//!    other replicas for the group (the same ones would take another
//!    whole timeout: a group whose replicas are all down ends the call
//!    `Unavailable` after one timeout and one read of group 0). The call
//!    ends by its deadline, or a quarter of its timeout past its group's
//!    first failed attempt if that is later: the re-reads of group 0 and
//!    the re-routed call (its dial included) share that slack, so a call
//!    ends within its timeout and a quarter whatever is down (until stop
//!    52 a re-routed call had a whole timeout of its own). The dial of a
//!    group's replicas counts against the call's time (a connect tries
//!    every replica until then; one that fails says "not
//!    applied", so the placement is re-read as for `Unavailable`). An error that
//!    may have applied the command is returned as it is: re-routing it
//!    could apply it twice.
//!
//! A group's client is made on its first call and cached (per group, for
//! the replicas the placement lists). The cache's lock is never held
//! while a group's replicas are dialled: a group whose replicas do not
//! answer delays only its own calls (each by up to the connect timeout:
//! a failed dial is not cached), never those of the other groups. Two
//! calls that dial the same group at once both connect; the first
//! client cached is the one both go on with.
//!
//! Limits: one connection per node per group (each group's client has its
//! own; a shared connection per node is a later optimisation), and the
//! placement is re-read only when a call fails.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::Arc;

use super::resolve::Names;
use super::{Client, ClientOptions, Submit};
use crate::error::{Applied, Error};
use crate::multi::GroupId;
use crate::multi::placement::{PLACEMENT_GROUP, PlacementClient, Routes, Shard};
use crate::state_machine::{StateMachine, decode, decode_untrusted};
use crate::tls::Identity;

/// A client of a sharded deployment of `S` (see the [module
/// documentation](self)). Cheap to clone; clones share connections,
/// sessions and the cached placement.
pub struct ShardedClient<S> {
    inner: Arc<Inner>,
    _sm: PhantomData<fn() -> S>,
}

impl<S> Clone for ShardedClient<S> {
    fn clone(&self) -> Self {
        ShardedClient {
            inner: self.inner.clone(),
            _sm: PhantomData,
        }
    }
}

struct Inner {
    identity: Identity,
    opts: ClientOptions,
    schema: u64,
    schema_desc: crate::schema::Schema,
    /// Group 0's client (over the seeds).
    placement: Client,
    routes: std::sync::Mutex<Arc<Routes>>,
    /// Each data group's client, with the replicas it was made for.
    groups: tokio::sync::Mutex<HashMap<GroupId, (Vec<String>, Client)>>,
    /// One placement re-read at a time.
    refreshing: tokio::sync::Mutex<()>,
}

impl<S: StateMachine> ShardedClient<S> {
    /// Connects with the identity in `$RAFTKIT_CERTS` (see
    /// [`Client::connect`]) to the nodes at `seeds` and reads the placement.
    pub async fn connect<I, A>(seeds: I) -> Result<ShardedClient<S>, Error>
    where
        I: IntoIterator<Item = A>,
        A: AsRef<str>,
    {
        let identity = Client::env_identity()?;
        Self::connect_with(seeds, identity, ClientOptions::default()).await
    }

    /// Connects with an explicit identity and options; the placement is
    /// read within `opts.timeout` (waiting for its formation if needed).
    pub async fn connect_with<I, A>(
        seeds: I,
        identity: Identity,
        opts: ClientOptions,
    ) -> Result<ShardedClient<S>, Error>
    where
        I: IntoIterator<Item = A>,
        A: AsRef<str>,
    {
        let seeds: Vec<String> = seeds.into_iter().map(|a| a.as_ref().to_string()).collect();
        // One name table for the placement and every group client: the
        // bounds on lookups hold per sharded client (review s55 client #1).
        let placement = Client::connect_typed(
            &seeds,
            identity.clone(),
            S::SCHEMA_FINGERPRINT,
            Some(S::schema()),
            opts.clone().with_group(PLACEMENT_GROUP),
            Names::default(),
        )
        .await?;
        let client = ShardedClient {
            inner: Arc::new(Inner {
                identity,
                opts,
                schema: S::SCHEMA_FINGERPRINT,
                schema_desc: S::schema(),
                placement,
                routes: std::sync::Mutex::new(Arc::new(Routes::default())),
                groups: tokio::sync::Mutex::new(HashMap::new()),
                refreshing: tokio::sync::Mutex::new(()),
            }),
            _sm: PhantomData,
        };
        client.refresh().await?;
        Ok(client)
    }
}

impl<S> ShardedClient<S> {
    /// The placement this client routes by (as last read from group 0).
    pub fn routes(&self) -> Arc<Routes> {
        self.inner
            .routes
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default()
    }

    /// Re-reads the placement from group 0, waiting (within the client's
    /// timeout) until it is formed.
    pub async fn refresh(&self) -> Result<Arc<Routes>, Error> {
        self.refresh_by(tokio::time::Instant::now() + self.inner.opts.timeout)
            .await
    }

    /// [`ShardedClient::refresh`], ended by `deadline` (a read applies
    /// nothing, so one cut short is [`Error::Unavailable`]).
    async fn refresh_by(&self, deadline: tokio::time::Instant) -> Result<Arc<Routes>, Error> {
        let late =
            || Error::Unavailable("the placement (group 0) could not be read in time".into());
        let Ok(_one) = tokio::time::timeout_at(deadline, self.inner.refreshing.lock()).await else {
            return Err(late());
        };
        let placement = PlacementClient::new(self.inner.placement.clone());
        let mut backoff = self.inner.opts.backoff;
        loop {
            let Ok(shards) = tokio::time::timeout_at(deadline, placement.shards()).await else {
                return Err(late());
            };
            let shards = shards?;
            if !shards.is_empty() {
                let routes = Arc::new(Routes::new(shards).map_err(|e| {
                    Error::Protocol(format!("group 0 holds an invalid placement: {e}"))
                })?);
                if let Ok(mut r) = self.inner.routes.lock() {
                    *r = routes.clone();
                }
                tracing::debug!(shards = routes.shards().len(), "placement read");
                return Ok(routes);
            }
            if tokio::time::Instant::now() + backoff > deadline {
                return Err(Error::Unavailable(
                    "the placement (group 0) is not formed yet".into(),
                ));
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(self.inner.opts.max_backoff);
        }
    }

    /// The client of `group` (made for the replicas the placement lists).
    pub async fn group_client(&self, group: GroupId) -> Result<Client, Error> {
        let routes = self.routes();
        let shard = routes
            .group(group)
            .ok_or_else(|| Error::Rejected(format!("the placement has no group {group}")))?;
        if let Some((replicas, client)) = self.inner.groups.lock().await.get(&group)
            && *replicas == shard.replicas
        {
            return Ok(client.clone());
        }
        // Dialled without the lock: every call takes it, and a dial of a
        // group whose replicas do not answer lasts the connect timeout.
        let inner = &self.inner;
        let client = Client::connect_typed(
            &shard.replicas,
            inner.identity.clone(),
            inner.schema,
            Some(inner.schema_desc.clone()),
            inner.opts.clone().with_group(group),
            inner.placement.names().clone(),
        )
        .await?;
        let mut groups = self.inner.groups.lock().await;
        // Two calls that dialled the same replicas at once keep the first
        // client cached: its session is the one the others go on with.
        if let Some((replicas, cached)) = groups.get(&group)
            && *replicas == shard.replicas
        {
            return Ok(cached.clone());
        }
        groups.insert(group, (shard.replicas.clone(), client.clone()));
        Ok(client)
    }

    /// A client of every data group, in placement order: for requests that
    /// span shards (a scan), sent to each group and merged by the caller.
    pub async fn group_clients(&self) -> Result<Vec<(GroupId, Client)>, Error> {
        let routes = self.routes();
        let mut out = Vec::with_capacity(routes.shards().len());
        for shard in routes.shards() {
            out.push((shard.group, self.group_client(shard.group).await?));
        }
        Ok(out)
    }

    /// The status of every group the node at `addr` hosts (group 0, the
    /// placement, first when hosted).
    pub async fn node_groups(
        &self,
        addr: &str,
    ) -> Result<Vec<(GroupId, super::wire::StatusReport)>, Error> {
        let bytes = self
            .inner
            .placement
            .node_request(addr, super::wire::NodeRequest::Groups)
            .await?;
        Ok(decode("group status", &bytes)?)
    }

    /// Runs one round of the leader balancer on the node at `addr` (an
    /// admin certificate): the transfers it started, `(group, target node
    /// id)`.
    /// It waits as [`Client::node_request`] does for a request that may
    /// change something (not cut by the client's timeout).
    pub async fn balance_leaders(&self, addr: &str) -> Result<Vec<(GroupId, u64)>, Error> {
        let bytes = self
            .inner
            .placement
            .node_request(addr, super::wire::NodeRequest::BalanceLeaders)
            .await?;
        Ok(decode("transfers", &bytes)?)
    }

    /// Moves the leadership of `group` to its replica at `to` (an admin
    /// certificate; see [`Peer::transfer_leader`](crate::runtime::Peer)).
    pub async fn transfer_leader(&self, group: GroupId, to: &str) -> Result<(), Error> {
        let client = if group == PLACEMENT_GROUP {
            self.inner.placement.clone()
        } else {
            self.group_client(group).await?
        };
        client
            .admin(super::wire::ClientRequest::TransferLeader { addr: to.into() })
            .await
    }

    /// Moves `group`'s replica from the node at `from` to the node at `to`
    /// (advertised addresses; an admin certificate): asks the nodes the
    /// placement lists for the group, following `NotLeader` hints, until
    /// the group's leader runs the move
    /// ([`MultiNode::move_replica`](crate::multi::MultiNode::move_replica)),
    /// then re-reads the placement, where the leader's node recorded the
    /// group's committed configuration as the move's last step
    /// ([`crate::multi::placement_sync`]; also after a move that failed
    /// once it changed the configuration); the move's one-line summary.
    /// The node `to` must never have hosted the group before (see
    /// [`crate::multi::hosting`]).
    ///
    /// The leader answers once the move is done; each ask waits up to
    /// [`NODE_ADMIN_TIMEOUT`](super::NODE_ADMIN_TIMEOUT) (or the
    /// client's timeout if longer), not the client's timeout, or until an
    /// enclosing [`by_deadline`](super::by_deadline). A move cut short
    /// ends [`Error::Timeout`] and goes on server-side; calling
    /// `move_replica` again resumes it.
    pub async fn move_replica(
        &self,
        group: GroupId,
        from: &str,
        to: &str,
    ) -> Result<String, Error> {
        let moved = self.run_move(group, from, to).await;
        if moved.is_ok() {
            self.refresh().await?;
        } else if let Err(e) = self.refresh().await {
            // The move's error says more than the re-read's.
            tracing::debug!(group, error = %e, "placement re-read after a failed move failed");
        }
        moved
    }

    async fn run_move(&self, group: GroupId, from: &str, to: &str) -> Result<String, Error> {
        let mut candidates: std::collections::VecDeque<String> = self
            .routes()
            .shards()
            .iter()
            .find(|s| s.group == group)
            .map(|s| s.replicas.iter().cloned().collect())
            .unwrap_or_default();
        if candidates.is_empty() {
            return Err(Error::Rejected(format!(
                "the placement lists no group {group}"
            )));
        }
        let request = || super::wire::NodeRequest::MoveReplica {
            group,
            from: from.to_string(),
            to: to.to_string(),
        };
        let mut last = None;
        for _ in 0..8 {
            let Some(addr) = candidates.pop_front() else {
                break;
            };
            match self.inner.placement.node_request(&addr, request()).await {
                Ok(bytes) => return Ok(decode("move report", &bytes)?),
                Err(Error::NotLeader { hint }) => {
                    if let Some(h) = hint.as_ref().and_then(|h| h.rsplit('@').next()) {
                        candidates.push_front(h.to_string());
                    }
                    last = Some(Error::NotLeader { hint });
                }
                Err(e) if e.applied() == crate::error::Applied::No && e.is_retryable() => {
                    last = Some(e)
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or(Error::Unavailable(format!(
            "no node leading group {group} answered"
        ))))
    }

    /// The group that owns `key` under the cached placement.
    pub fn group_of(&self, key: &[u8]) -> Option<GroupId> {
        self.routes().shard_of(key).map(|s| s.group)
    }

    /// Sends one call for `key` to its group, re-reading the placement if
    /// the answer says it may be stale and nothing was applied (see the
    /// [module documentation](self), step 4).
    async fn route<F, Fut>(&self, key: &[u8], call: F) -> Result<Vec<u8>, Error>
    where
        F: Fn(Client) -> Fut,
        Fut: std::future::Future<Output = Result<Vec<u8>, Error>>,
    {
        let mut rerouted = false;
        // The call's own deadline (its timeout, or an enclosing
        // `by_deadline`): the dial of its group's replicas and the group's
        // call end by it.
        let call_deadline = super::remote::deadline_in(self.inner.opts.timeout);
        // What the call's attempt must end by: its deadline, and after a
        // failure that says the placement may be stale, that deadline or a
        // slack past the failure if later (`reread_deadline`, fixed at the
        // first failure): the re-reads of group 0 and the re-routed call
        // share it. (Until stop 52 a re-routed call dialled and called
        // with a whole timeout of its own, and re-reads after `NotHosted`
        // had one too.)
        let mut bound = call_deadline;
        let mut after_failure = None;
        loop {
            let routes = self.routes();
            let shard = routes
                .shard_of(key)
                .ok_or_else(|| Error::Unavailable("no placement".into()))?;
            let group = shard.group;
            // The dial of a group's replicas and the call both end by
            // `bound` (`by_deadline`): nothing is sent while dialling, so a
            // dial cut short applied nothing.
            let attempt = async {
                let dialled = tokio::time::timeout_at(bound, self.group_client(group))
                    .await
                    .unwrap_or_else(|_| {
                        Err(Error::Unavailable(format!(
                            "group {group}: no replica answered the dial within the call's timeout"
                        )))
                    });
                match dialled {
                    Ok(client) => call(client).await,
                    Err(e) => Err(e),
                }
            };
            let result = super::by_deadline(bound, attempt).await;
            let e = match result {
                Err(e) if stale_placement(&e) => e,
                other => return other,
            };
            let after = *after_failure.get_or_insert_with(|| self.reread_deadline(call_deadline));
            bound = after;
            if !matches!(e, Error::NotHosted { .. }) {
                if rerouted {
                    return Err(e);
                }
                tracing::debug!(group, error = %e, "re-reading the placement");
                // Routed again only to other replicas: the same ones would
                // take the call's whole timeout once more (found by review,
                // stop 50). A placement that cannot be read leaves the
                // call's own error, the truth about the call.
                match self.refresh_by(after).await {
                    Ok(fresh) if fresh.group(group) != Some(shard) => {}
                    Ok(_) => return Err(e),
                    Err(why) => {
                        tracing::debug!(group, error = %why, "placement not re-read");
                        return Err(e);
                    }
                }
                rerouted = true;
                continue;
            }
            if !self.reread_until_moved(shard, after).await {
                return Err(e);
            }
            rerouted = true;
        }
    }

    /// When a re-read of group 0 that starts now must end: by `deadline`,
    /// or a slack ([`REREAD_SLACK_PART`] of the timeout) past now if that
    /// is later.
    fn reread_deadline(&self, deadline: tokio::time::Instant) -> tokio::time::Instant {
        deadline.max(tokio::time::Instant::now() + self.inner.opts.timeout / REREAD_SLACK_PART)
    }

    /// After every replica the placement listed for a group (`stale`, as
    /// the call was routed by it) answered `NotHosted`: re-reads the
    /// placement, with backoff, until it lists the group otherwise or
    /// `deadline` passes; whether it changed. `deadline` already holds the
    /// re-read's slack ([`Self::reread_deadline`]): no read starts at or
    /// after it, and every read ends by it (found by review, stop 53: one
    /// more read started at the deadline and ran a quarter of the timeout
    /// past it). A read that fails leaves the call's own `NotHosted`, the
    /// truth about the call (`false`).
    async fn reread_until_moved(&self, stale: &Shard, deadline: tokio::time::Instant) -> bool {
        let group = stale.group;
        let mut backoff = self.inner.opts.backoff;
        loop {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tracing::debug!(
                group,
                "no listed replica hosts the group: re-reading the placement"
            );
            let routes = match self.refresh_by(deadline).await {
                Ok(routes) => routes,
                Err(why) => {
                    tracing::debug!(group, error = %why, "placement not re-read");
                    return false;
                }
            };
            let now = tokio::time::Instant::now();
            if routes.group(group) != Some(stale) {
                // Moved: the call goes on only within its deadline.
                return now < deadline;
            }
            if now >= deadline {
                return false;
            }
            // Backoff between re-reads of group 0, not a synchronisation.
            tokio::time::sleep(backoff.min(deadline - now)).await;
            backoff = (backoff * 2).min(self.inner.opts.max_backoff);
        }
    }
}

/// The part of a call's timeout a re-read of group 0 may run past the
/// call's deadline (a quarter): enough for one answer of a live group 0,
/// and all that a call whose group 0 is down too waits more than its
/// timeout (stop 51: the re-read took a whole timeout of its own).
const REREAD_SLACK_PART: u32 = 4;

/// Whether `e` says the call went to the wrong place and applied nothing.
fn stale_placement(e: &Error) -> bool {
    e.applied() == Applied::No
        && matches!(
            e,
            Error::NotHosted { .. } | Error::NotLeader { .. } | Error::Unavailable(_)
        )
}

impl<S: StateMachine> Submit for ShardedClient<S> {
    async fn write(&self, command: Vec<u8>) -> Result<Vec<u8>, Error> {
        // Nothing was sent yet: a command that does not decode (or nests too
        // deep, see `decode_untrusted`) is refused, not applied.
        let decoded: S::Write =
            decode_untrusted("command", &command).map_err(|e| Error::Rejected(e.to_string()))?;
        let key = S::shard_key(&decoded).ok_or_else(|| {
            Error::Rejected(format!(
                "`{}` has no shard key: a sharded client routes a command by the argument marked \
                 `#[write(shard = ..)]` (send commands that span shards to each group: \
                 ShardedClient::group_clients)",
                S::handler_name(&decoded)
            ))
        })?;
        self.route(&key, |client| {
            let command = command.clone();
            async move { client.write(command).await }
        })
        .await
    }

    async fn read(&self, query: Vec<u8>) -> Result<Vec<u8>, Error> {
        let decoded: S::Read =
            decode_untrusted("query", &query).map_err(|e| Error::Rejected(e.to_string()))?;
        let key = S::read_shard_key(&decoded).ok_or_else(|| {
            Error::Rejected(format!(
                "`{}` has no shard key: a sharded client routes a query by the argument marked \
                 `#[read(shard = ..)]` (send queries that span shards to each group: \
                 ShardedClient::group_clients)",
                S::query_name(&decoded)
            ))
        })?;
        self.route(&key, |client| {
            let query = query.clone();
            async move { client.read(query).await }
        })
        .await
    }
}

#[cfg(test)]
#[path = "sharded_tests.rs"]
mod sharded_tests;

//! The client service of a [`MultiNode`]: clients reach any group the node
//! hosts over the node's one QUIC endpoint.
//!
//! It is the single-group client service
//! ([`client_service`]) with another
//! [`Front`](crate::runtime::client_service): the hello (schema check),
//! the ALPN, the roles and their authorization, sessions, multiplexed
//! streams, watches and error semantics are the same code; only where a
//! request goes differs. A request names its group in its
//! [`RequestMeta`] (a [`Client`](crate::client::Client) made with
//! [`ClientOptions::with_group`](crate::client::ClientOptions::with_group)
//! sends it with every request), and is answered by this node's replica of
//! that group exactly as a single-group peer answers it (a follower
//! redirects to the group's leader with `NotLeader`).
//!
//! # Invariants
//!
//! - A request for a group this node does not host is answered
//!   [`WireError::NotHosted`] (applied: no): the client's placement is out
//!   of date, and it re-reads it from group 0 and re-routes. A request with
//!   no group is refused (`Rejected`): a multi-group node has no default
//!   group, and guessing one would apply a command to the wrong data.
//! - Every request is authorized before it is routed, by the same table as
//!   a single peer's ([`authorization`](crate::runtime::authorization)),
//!   plus the node requests ([`NodeRequest`]): `Groups` (status of every
//!   group) for every role, `BalanceLeaders` for admins only; a group's
//!   `TransferLeader` is the ordinary admin request sent to that group.
//!   Unlike a single peer, a multi-group node refuses a **node**
//!   certificate's `AddServer` and `AddLearner`, also of its own address
//!   (`Unauthorized`, not applied): the single-group rule exists for
//!   `join`, which multi-group nodes do not use (a replica joins a group
//!   by a move, whose leader adds the target in-process,
//!   [`super::moves`]).
//!   The placement group 0 routes every sharded client: a **client**
//!   certificate may read and watch it, not write it (no `Write`,
//!   `OpenSession`, `CloseSession`: `Unauthorized`, not applied); an
//!   **admin** certificate may (operators' tools).
//!   One exception: a **node** certificate may also read and write the
//!   placement group 0 (and open and close the session its writes need),
//!   so that the leader of a data group records the group's committed
//!   replicas there ([`super::placement_sync`]). Its writes are checked
//!   when handled (not in `authorize`: the check reads the placement),
//!   and decided by group 0's leader only (a follower answers `NotLeader`):
//!   only the certificate of a node in group 0's committed configuration,
//!   listed in the placement, or a committed member of a group the
//!   placement lists as that leader knows it, may write it; any other
//!   node certificate (a spare's, a retired node's not revoked, a node's
//!   known only through a group the placement does not list) is refused
//!   `Unauthorized`, not applied (`multi::placement_auth`).
//! - A node certificate's request frames are at most
//!   `MAX_NODE_REQUEST_BYTES` (64 KiB, as on a single peer), checked from
//!   their length prefix before they take room in the node's budget of
//!   received requests (`runtime::intake`); a larger one is refused
//!   `Unauthorized` unread (not applied).
//! - Sessions are per group: each group's session table is replicated by
//!   that group, so a client opens one session per group it writes to.
//! - The service holds the node weakly: it never keeps a stopped node
//!   alive, and answers `Unavailable` once it stopped.

use quinn::SendStream;

use super::placement::{PLACEMENT_GROUP, PlacementClient, PlacementGroup, Shard};
use super::{GroupId, MultiNode};
use crate::client::wire::{ClientHello, ClientRequest, ClientResponse, NodeRequest};
use crate::client::wire::{RequestMeta, WireError};
use crate::runtime::client_service::{self, check_hello, status_report};
use crate::runtime::{Peer, PeerExt};
use crate::tls::Principal;
use crate::transport::frame::write_frame;

/// Routes the client requests of a node's connections to its groups.
pub(crate) struct Front<S> {
    node: std::sync::Weak<super::node::Inner<S>>,
    /// The schemas clients' hellos are checked against (every group of the
    /// node runs the same binary's `S`).
    schemas: std::sync::Arc<crate::schema::SchemaBook>,
}

impl<S> Clone for Front<S> {
    fn clone(&self) -> Self {
        Front {
            node: self.node.clone(),
            schemas: self.schemas.clone(),
        }
    }
}

impl<S: PeerExt> Front<S> {
    pub(super) fn new(node: &MultiNode<S>) -> Front<S> {
        Front {
            node: node.downgrade(),
            schemas: std::sync::Arc::new(crate::schema::SchemaBook::new(S::schema(), None)),
        }
    }

    fn node(&self) -> Result<MultiNode<S>, WireError> {
        MultiNode::upgrade(&self.node)
            .ok_or_else(|| WireError::Unavailable("the node is stopping".into()))
    }
}

/// Where one request goes.
enum Target<S> {
    Placement(Peer<PlacementGroup<S>>),
    Data(Peer<S>),
}

impl<S: PeerExt> Front<S> {
    fn target(&self, meta: Option<RequestMeta>) -> Result<Target<S>, WireError> {
        let node = self.node()?;
        let Some(group) = meta.and_then(|m| m.group) else {
            return Err(WireError::Rejected(format!(
                "{} hosts many groups: a request must name its group (ClientOptions::with_group)",
                node.name()
            )));
        };
        if group == PLACEMENT_GROUP {
            return node
                .placement()
                .map(Target::Placement)
                .ok_or(WireError::NotHosted { group });
        }
        node.group(group)
            .map(Target::Data)
            .ok_or(WireError::NotHosted { group })
    }
}

/// The meta a group's replica sees: the group was used to route.
fn routed(meta: Option<RequestMeta>) -> Option<RequestMeta> {
    meta.map(|m| RequestMeta { group: None, ..m })
}

fn encoded<T: serde::Serialize>(what: &'static str, value: &T) -> ClientResponse {
    match crate::state_machine::encode(what, value) {
        Ok(bytes) => ClientResponse::Ok(bytes),
        Err(e) => ClientResponse::Err(crate::Error::from(e).into()),
    }
}

impl<S: PeerExt> client_service::Front for Front<S> {
    fn state_machine(&self) -> &'static str {
        S::NAME
    }

    fn hello(&self, hello: &ClientHello, remote: std::net::SocketAddr) -> ClientResponse {
        check_hello::<S>(&self.schemas, hello, remote)
    }

    /// A node certificate up to `MAX_NODE_REQUEST_BYTES` (64 KiB), as on a
    /// single peer: its requests here are small too (keeping the
    /// placement: a `set_replicas` of one group, reads of group 0, the
    /// session its writes need; a status). Checked from the length prefix,
    /// before the frame takes room in the node's budget: authorization
    /// needs the request's group, in its body, so a larger frame of a node
    /// certificate took room up to the frame cap before its role was
    /// checked (review, stop 59). Every other role up to `max_frame`.
    fn max_request_bytes(&self, principal: &crate::tls::Principal, max_frame: usize) -> usize {
        match principal.role {
            crate::tls::CertRole::Node => {
                max_frame.min(crate::runtime::client_service::MAX_NODE_REQUEST_BYTES)
            }
            _ => max_frame,
        }
    }

    fn authorize(
        &self,
        principal: &Principal,
        request: &ClientRequest,
        meta: Option<RequestMeta>,
    ) -> Result<(), crate::Error> {
        let placement = meta.and_then(|m| m.group) == Some(PLACEMENT_GROUP);
        let keeps_placement = matches!(
            request,
            ClientRequest::Write { .. }
                | ClientRequest::Read { .. }
                | ClientRequest::OpenSession
                | ClientRequest::CloseSession { .. }
        );
        if placement && keeps_placement && principal.role == crate::tls::CertRole::Node {
            return Ok(());
        }
        if placement
            && principal.role == crate::tls::CertRole::Client
            && matches!(
                request,
                ClientRequest::Write { .. }
                    | ClientRequest::OpenSession
                    | ClientRequest::CloseSession { .. }
            )
        {
            tracing::warn!(
                principal = %principal,
                request = crate::runtime::authorization::request_kind(request),
                "refused a client certificate's write to the placement group"
            );
            return Err(crate::Error::Unauthorized(format!(
                "{} refused: the placement (group 0) routes every sharded client; a client \
                 certificate may read it, writing it needs an admin certificate; this is a \
                 {principal}",
                crate::runtime::authorization::request_kind(request)
            )));
        }
        if principal.role == crate::tls::CertRole::Node
            && matches!(
                request,
                ClientRequest::AddServer { .. } | ClientRequest::AddLearner { .. }
            )
        {
            tracing::warn!(
                principal = %principal,
                group = ?meta.and_then(|m| m.group),
                request = crate::runtime::authorization::request_kind(request),
                "refused a node certificate's membership request to a multi-group node"
            );
            return Err(crate::Error::Unauthorized(format!(
                "{} refused: a node certificate may not add itself to a group of a multi-group \
                 node (a replica joins a group by a move, from the group's leader); membership \
                 changes need an admin certificate; this is a {principal}",
                crate::runtime::authorization::request_kind(request)
            )));
        }
        crate::runtime::authorization::authorize(S::NAME, principal, request)
    }

    async fn handle(
        &self,
        principal: &Principal,
        request: ClientRequest,
        meta: Option<RequestMeta>,
    ) -> ClientResponse {
        // The rare paths (node requests, the placement group's checks)
        // are boxed, so that this future stays small for the request
        // streams that move it (`client_mux` boxes nothing itself); the
        // group's own handler boxes its path (`Front for Peer`).
        if let ClientRequest::Node(request) = request {
            let node = match self.node() {
                Ok(node) => node,
                Err(e) => return ClientResponse::Err(e),
            };
            return Box::pin(async move {
                match request {
                    NodeRequest::Groups => encoded("group status", &groups(&node)),
                    NodeRequest::BalanceLeaders => {
                        encoded("transfers", &node.balance_leaders().await)
                    }
                    NodeRequest::MoveReplica { group, from, to } => {
                        let from_id = crate::identity::node_id(&crate::identity::default_name(
                            S::NAME,
                            &from,
                        ));
                        match node.move_replica(group, from_id, &to).await {
                            Ok(r) => encoded("move report", &super::moves::summary(&r, &from, &to)),
                            Err(e) => ClientResponse::Err(super::moves::into_error(e).into()),
                        }
                    }
                }
            })
            .await;
        }
        match self.target(meta) {
            Ok(Target::Placement(peer)) => {
                let checked = match self.node() {
                    Ok(node) => Box::pin(super::placement_auth::check(
                        &node, &peer, principal, &request,
                    ))
                    .await
                    .map_err(WireError::from),
                    Err(e) => Err(e),
                };
                if let Err(e) = checked {
                    return ClientResponse::Err(e);
                }
                client_service::Front::handle(&peer, principal, request, routed(meta)).await
            }
            Ok(Target::Data(peer)) => {
                client_service::Front::handle(&peer, principal, request, routed(meta)).await
            }
            Err(e) => ClientResponse::Err(e),
        }
    }

    async fn watch(
        &self,
        certificate: [u8; 32],
        from: Option<u64>,
        meta: Option<RequestMeta>,
        mut send: SendStream,
        max_frame: usize,
    ) {
        match self.target(meta) {
            Ok(Target::Placement(peer)) => {
                client_service::Front::watch(
                    &peer,
                    certificate,
                    from,
                    routed(meta),
                    send,
                    max_frame,
                )
                .await
            }
            Ok(Target::Data(peer)) => {
                client_service::Front::watch(
                    &peer,
                    certificate,
                    from,
                    routed(meta),
                    send,
                    max_frame,
                )
                .await
            }
            Err(e) => {
                let _ = write_frame(&mut send, &ClientResponse::Err(e), max_frame).await;
                let _ = send.finish();
            }
        }
    }
}

/// The status of every group `node` hosts, the placement group first.
fn groups<S: PeerExt>(node: &MultiNode<S>) -> Vec<(GroupId, crate::client::wire::StatusReport)> {
    let mut out = Vec::new();
    if let Some(p) = node.placement() {
        out.push((PLACEMENT_GROUP, status_report(&p)));
    }
    for g in node.groups() {
        if let Some(peer) = node.group(g) {
            out.push((g, status_report(&peer)));
        }
    }
    out
}

/// Proposes the formation `plan` to the placement group whenever this
/// node's replica leads it, until one proposal was applied (formed by it,
/// or already formed by another node's: [`Placement::form`](super::Placement::form) is a no-op on a
/// formed placement), or the replica stops.
pub(super) async fn propose_formation<S: PeerExt>(peer: Peer<PlacementGroup<S>>, plan: Vec<Shard>) {
    let mut status = peer.watch();
    let client = PlacementClient::new(peer.clone());
    loop {
        let leads = status.borrow_and_update().role == crate::core::Role::Leader;
        if leads {
            match client.form(plan.clone()).await {
                Ok(formed) => {
                    tracing::info!(
                        formed,
                        shards = plan.len(),
                        "placement proposed (formed: written by this proposal)"
                    );
                    return;
                }
                Err(e) => tracing::debug!(error = %e, "placement proposal failed; retrying"),
            }
        }
        if status.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::client_service::{Front as _, MAX_NODE_REQUEST_BYTES};
    use crate::tls::CertRole;
    use crate::transport::frame::DEFAULT_MAX_FRAME_BYTES;

    /// Found by review (stop 59, intake (c)): on a multi-group node a
    /// `node` certificate's frame took room in the node's budget, up to
    /// the frame cap (16 MiB), before its role was checked (authorization
    /// needs the request's group, in its body). Its requests here (keeping
    /// the placement: `set_replicas` of one group, reads of group 0, a
    /// session; a status) are small as on a single peer, so the node
    /// certificate's cap ([`MAX_NODE_REQUEST_BYTES`]) applies before any
    /// room is taken; other roles keep the frame cap.
    #[test]
    fn a_node_certificate_may_send_only_small_frames_to_a_multi_group_node() {
        let front: Front<crate::multi::placement::Placement> = Front {
            node: std::sync::Weak::new(),
            schemas: std::sync::Arc::new(crate::schema::SchemaBook::new(
                <crate::multi::placement::Placement as crate::StateMachine>::schema(),
                None,
            )),
        };
        let who = |role| Principal {
            role,
            name: "x".into(),
            cert_fingerprint: [7; 32],
        };
        assert_eq!(
            front.max_request_bytes(&who(CertRole::Node), DEFAULT_MAX_FRAME_BYTES),
            MAX_NODE_REQUEST_BYTES,
            "a node certificate's frames take room up to the frame cap before its role is checked"
        );
        for role in [CertRole::Client, CertRole::Admin] {
            assert_eq!(
                front.max_request_bytes(&who(role), DEFAULT_MAX_FRAME_BYTES),
                DEFAULT_MAX_FRAME_BYTES
            );
        }
    }
}

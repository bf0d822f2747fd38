//! Who may ask what of the client service: the client-protocol half of the
//! trust model of [`crate::tls`].
//!
//! Every request on a client connection is checked against the
//! [`Principal`] the connection's certificate states, before it reaches the
//! node:
//!
//! | request | `node` | `client` | `admin` |
//! |---|---|---|---|
//! | `Status` | yes | yes | yes |
//! | `Write`, `Read` | no | yes | yes |
//! | `OpenSession`, `CloseSession` | no | yes | yes |
//! | `Watch` (of applied writes: it shows what reads show) | no | yes | yes |
//! | `AddServer`, `AddLearner` | only its own address (a single peer; a multi-group node: no) | no | yes |
//! | `RemoveServer`, `TransferLeader` | no | no | yes |
//! | `Node(Groups)` (a multi-group node's status per group) | yes | yes | yes |
//! | `Node(BalanceLeaders)` | no | no | yes |
//!
//! Status is open to every role: it reveals the membership and progress a
//! member already knows, and joining nodes and operators' tools need it.
//! Sessions exist for writes (exactly-once, thesis §6.3), so opening and
//! closing one needs what a write needs; a session is owned by the
//! certificate that opened it (its fingerprint, see `session.rs`), so even
//! an allowed caller can only use or close its own.
//! A node may ask to be added, because a node started with `join` does
//! exactly that with its own certificate; "its own address" means the
//! address whose default member name (`<state machine>@<address>`, see
//! [`crate::identity`]) is the name its certificate states, so a node can
//! never add anyone else, nor itself under an address it does not own.
//! A multi-group node refuses a node's `AddServer` and `AddLearner`
//! altogether ([`crate::multi::service`]'s `authorize`): its nodes do
//! not `join`; a replica joins a group by a move, from the group's leader.
//! It also refuses a client certificate's `Write`, `OpenSession` and
//! `CloseSession` to the placement group 0 (reads and watches stay open):
//! the placement routes every sharded client, so writing it is an
//! operator's (admin) or a node's (recording replicas) business.
//!
//! A refusal is [`Error::Unauthorized`]: the request was not applied, and
//! retrying with the same certificate cannot succeed.

use crate::client::wire::{ClientRequest, NodeRequest};
use crate::error::Error;
use crate::identity::default_name;
use crate::tls::{CertRole, Principal};

/// The name of a request, for refusals and logs.
pub fn request_kind(request: &ClientRequest) -> &'static str {
    match request {
        ClientRequest::Write { .. } => "write",
        ClientRequest::Read { .. } => "read",
        ClientRequest::Status => "status",
        ClientRequest::AddServer { .. } => "add-server",
        ClientRequest::AddLearner { .. } => "add-learner",
        ClientRequest::RemoveServer { .. } => "remove-server",
        ClientRequest::TransferLeader { .. } => "transfer-leader",
        ClientRequest::OpenSession => "open-session",
        ClientRequest::CloseSession { .. } => "close-session",
        ClientRequest::Watch { .. } => "watch",
        ClientRequest::Node(NodeRequest::Groups) => "groups",
        ClientRequest::Node(NodeRequest::BalanceLeaders) => "balance-leaders",
        ClientRequest::Node(NodeRequest::MoveReplica { .. }) => "move-replica",
    }
}

/// Whether `principal` may make `request` of a peer of the state machine
/// called `state_machine` (see the table in the module docs).
pub fn authorize(
    state_machine: &str,
    principal: &Principal,
    request: &ClientRequest,
) -> Result<(), Error> {
    let kind = request_kind(request);
    let refuse = |why: String| Err(Error::Unauthorized(format!("{kind} refused: {why}")));
    match (request, principal.role) {
        (ClientRequest::Status | ClientRequest::Node(NodeRequest::Groups), _)
        | (
            ClientRequest::Write { .. }
            | ClientRequest::Read { .. }
            | ClientRequest::OpenSession
            | ClientRequest::CloseSession { .. }
            | ClientRequest::Watch { .. },
            CertRole::Client | CertRole::Admin,
        ) => Ok(()),
        (
            ClientRequest::Write { .. }
            | ClientRequest::Read { .. }
            | ClientRequest::OpenSession
            | ClientRequest::CloseSession { .. }
            | ClientRequest::Watch { .. },
            CertRole::Node,
        ) => refuse(format!(
            "data commands need a client or admin certificate (sessions are opened to write); this is a {principal}"
        )),
        (_, CertRole::Admin) => Ok(()),
        (
            ClientRequest::AddServer { addr } | ClientRequest::AddLearner { addr },
            CertRole::Node,
        ) => {
            let asked = default_name(state_machine, addr);
            if asked == principal.name {
                Ok(())
            } else {
                refuse(format!(
                    "a node certificate may only ask to add its own node ({}), not {asked}; membership changes need an admin certificate",
                    principal.name
                ))
            }
        }
        (_, role) => refuse(format!(
            "membership changes, leadership transfer and balancing need an admin certificate; this is a {role} certificate (`{}`)",
            principal.name
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::wire::{SessionId, SessionRef};

    fn who(role: CertRole, name: &str) -> Principal {
        Principal {
            role,
            name: name.into(),
            cert_fingerprint: [7; 32],
        }
    }

    fn all_requests(addr: &str) -> Vec<ClientRequest> {
        vec![
            ClientRequest::Write {
                session: SessionRef {
                    id: SessionId(1),
                    seq: 1,
                    acked_below: 1,
                },
                command: vec![],
            },
            ClientRequest::OpenSession,
            ClientRequest::CloseSession { id: SessionId(1) },
            ClientRequest::Watch { from: Some(1) },
            ClientRequest::Read { query: vec![] },
            ClientRequest::Status,
            ClientRequest::AddServer { addr: addr.into() },
            ClientRequest::AddLearner { addr: addr.into() },
            ClientRequest::RemoveServer { addr: addr.into() },
            ClientRequest::TransferLeader { addr: addr.into() },
            ClientRequest::Node(NodeRequest::Groups),
            ClientRequest::Node(NodeRequest::BalanceLeaders),
            ClientRequest::Node(NodeRequest::MoveReplica {
                group: 1,
                from: addr.into(),
                to: addr.into(),
            }),
        ]
    }

    /// The table of the module docs, cell by cell.
    #[test]
    fn the_table_holds() {
        let allowed = |p: &Principal, r: &ClientRequest| authorize("kv", p, r).is_ok();
        let admin = who(CertRole::Admin, "ops");
        let client = who(CertRole::Client, "app");
        let node = who(CertRole::Node, "kv@10.0.0.1:7001");
        for r in all_requests("10.0.0.9:7001") {
            assert!(allowed(&admin, &r), "admin: {r:?}");
            let kind = request_kind(&r);
            assert_eq!(
                allowed(&client, &r),
                matches!(
                    kind,
                    "write"
                        | "read"
                        | "status"
                        | "groups"
                        | "open-session"
                        | "close-session"
                        | "watch"
                ),
                "client: {r:?}"
            );
            assert_eq!(
                allowed(&node, &r),
                matches!(kind, "status" | "groups"),
                "node: {r:?}"
            );
        }
        // A node may ask to add itself, and nothing else about itself.
        for r in all_requests("10.0.0.1:7001") {
            let kind = request_kind(&r);
            assert_eq!(
                allowed(&node, &r),
                matches!(kind, "status" | "groups" | "add-server" | "add-learner"),
                "node about itself: {r:?}"
            );
        }
        // Same address, another state machine: another name.
        assert!(
            authorize(
                "other",
                &node,
                &ClientRequest::AddServer {
                    addr: "10.0.0.1:7001".into()
                }
            )
            .is_err()
        );
    }

    #[test]
    fn a_refusal_says_what_and_why_and_that_nothing_was_applied() {
        let client = who(CertRole::Client, "app");
        let err = authorize(
            "kv",
            &client,
            &ClientRequest::AddServer {
                addr: "10.0.0.9:7001".into(),
            },
        )
        .expect_err("refused");
        let text = err.to_string();
        for needle in [
            "not authorized",
            "nothing was applied",
            "add-server",
            "admin certificate",
            "client certificate",
        ] {
            assert!(text.contains(needle), "{needle:?} in {text}");
        }
    }
}

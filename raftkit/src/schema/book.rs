//! [`SchemaBook`]: what a node knows of the schemas around it — its own,
//! the one its data directory held when it started, and every peer's (from
//! the hello of the peer's last link to this node) — and the leader's gate
//! that enables a handler only once every voter knows it.

use std::sync::{Arc, Mutex};

use super::{HandlerKind, Mismatch, Schema};
use crate::core::NodeId;
use crate::error::Error;

/// The schemas a node knows (see the [`crate::schema`] docs). Shared by the
/// transport (which records peers' schemas) and the peer (which checks
/// commands against them).
#[derive(Debug)]
pub struct SchemaBook {
    local: Arc<Schema>,
    /// What a voter whose schema this node has not seen is assumed to
    /// know: the schema the data directory held when this node started (or
    /// the local one for a new directory).
    floor: Arc<Schema>,
    /// Each peer's schema from its last hello, at most one entry per peer.
    /// A list, not a map: a cluster has a handful of peers, and the
    /// leader looks every voter up on each write ([`Self::check_enabled`]),
    /// where a scan of a few ids costs less than hashing them.
    peers: Mutex<Vec<(NodeId, Arc<Schema>)>>,
}

impl SchemaBook {
    /// A book for a node running `local`, whose data directory held `floor`
    /// when it started.
    pub fn new(local: Schema, floor: Option<Schema>) -> SchemaBook {
        let local = Arc::new(local);
        SchemaBook {
            floor: floor.map(Arc::new).unwrap_or_else(|| local.clone()),
            local,
            peers: Mutex::new(Vec::new()),
        }
    }

    /// This node's schema.
    pub fn local(&self) -> &Schema {
        &self.local
    }

    /// Checks a peer's schema from its hello and, if compatible, records it
    /// as what `from` knows.
    pub fn accept_peer(&self, from: NodeId, remote: Schema) -> Result<(), Mismatch> {
        self.local.check_peer(&remote)?;
        if let Ok(mut peers) = self.peers.lock() {
            let remote = Arc::new(remote);
            match peers.iter_mut().find(|(id, _)| *id == from) {
                Some((_, known)) => *known = remote,
                None => peers.push((from, remote)),
            }
        }
        Ok(())
    }

    /// The schema `id` showed in its last hello, if any.
    pub fn peer(&self, id: NodeId) -> Option<Arc<Schema>> {
        self.peers.lock().ok().and_then(|p| {
            p.iter()
                .find(|(peer, _)| *peer == id)
                .map(|(_, schema)| schema.clone())
        })
    }

    /// The leader's check before a command enters the log (or a query is
    /// served): this binary must know `(kind, tag)`, and for a write every
    /// voter of `voters` too — as its last hello showed, or, for a voter
    /// not heard from since this node started, as the data directory's
    /// schema at start says. Refuses with [`Error::Unsupported`] (nothing
    /// was applied).
    pub fn check_enabled(
        &self,
        kind: HandlerKind,
        tag: u32,
        voters: impl IntoIterator<Item = NodeId>,
    ) -> Result<(), Error> {
        let Some(handler) = self.local.handler(kind, tag) else {
            return Err(Error::Unsupported(format!(
                "this binary of `{}` has no {} handler with tag {tag} (the caller runs a newer schema); nothing was applied",
                self.local.name,
                kind.as_str()
            )));
        };
        if kind == HandlerKind::Read {
            // Reads are served by this node alone.
            return Ok(());
        }
        // Locked once for all voters; a poisoned lock reads as "no hello
        // seen" (the floor), like `peer`.
        let peers = self.peers.lock().ok();
        for voter in voters {
            let seen = peers
                .as_ref()
                .and_then(|p| p.iter().find(|(id, _)| *id == voter));
            let (known, source) = match seen.map(|(_, schema)| schema) {
                Some(schema) => (schema.handler(kind, tag).is_some(), "its binary"),
                None => (
                    self.floor.handler(kind, tag).is_some(),
                    "it has not linked to this leader since the leader started, and the schema this node ran before",
                ),
            };
            if !known {
                return Err(Error::Unsupported(format!(
                    "{} is not enabled yet: voter {voter} may not know it ({source} has no {} tag {tag}); it is enabled once every voter runs a binary that knows it. Nothing was applied",
                    handler.label(),
                    kind.as_str()
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::Shape;

    fn schema(writes: &[u32]) -> Schema {
        let mut s = Schema::new("kv", 1, Shape::Unit);
        for &t in writes {
            s.push(
                HandlerKind::Write,
                t,
                &format!("w{t}"),
                Shape::Str,
                Shape::Unit,
            );
        }
        s
    }

    #[test]
    fn a_new_write_is_enabled_once_every_voter_knows_it() {
        let book = SchemaBook::new(schema(&[0, 1]), Some(schema(&[0])));
        // Unknown voters are assumed to know the floor.
        book.check_enabled(HandlerKind::Write, 0, [2, 3]).unwrap();
        let e = book
            .check_enabled(HandlerKind::Write, 1, [2, 3])
            .unwrap_err();
        assert!(
            matches!(&e, Error::Unsupported(m) if m.contains("`w1` (write tag 1)")),
            "{e}"
        );
        book.accept_peer(2, schema(&[0, 1])).unwrap();
        assert!(book.check_enabled(HandlerKind::Write, 1, [2, 3]).is_err());
        book.accept_peer(3, schema(&[0])).unwrap();
        assert!(book.check_enabled(HandlerKind::Write, 1, [2, 3]).is_err());
        book.accept_peer(3, schema(&[0, 1])).unwrap();
        book.check_enabled(HandlerKind::Write, 1, [2, 3]).unwrap();
        // A tag this binary does not know is never enabled.
        assert!(matches!(
            book.check_enabled(HandlerKind::Write, 7, []),
            Err(Error::Unsupported(_))
        ));
        // An incompatible peer is refused and not recorded.
        let mut bad = schema(&[0]);
        bad.handlers[0].args = Shape::U64;
        assert!(book.accept_peer(4, bad).is_err());
        assert!(book.peer(4).is_none());
    }
}

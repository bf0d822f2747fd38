//! The placement group's replica on the node (group 0, see
//! [`crate::multi::placement`]): [`MultiNode::form_shards`] and starting
//! the replica.
//!
//! Invariants: group 0 is never hosted on demand nor retired, lives
//! outside the data groups' table, and joins only by `form_shards` or a
//! restart; a data group this node left is never formed again here.

use tracing::info;

use super::MultiNode;
use crate::error::Error;
use crate::multi::placement::{PLACEMENT_GROUP, PlacementGroup};
use crate::runtime::{Peer, PeerExt};

/// Sharding: the placement group (see [`placement`](crate::multi::placement)).
impl<S: PeerExt> MultiNode<S> {
    /// This node's replica of the placement group, if it hosts it.
    pub fn placement(&self) -> Option<Peer<PlacementGroup<S>>> {
        self.inner.placement().clone()
    }

    /// Forms a sharded deployment over the nodes at `members` (advertised
    /// addresses; every member node calls this with the same arguments):
    /// the placement group 0 and data groups `1..=shards`, each with a
    /// voter on every member, and — through whichever node leads group 0 —
    /// the placement that splits the hash space evenly between the data
    /// groups ([`placement::even`](crate::multi::placement::even)). Idempotent: a
    /// restarted node that already hosts the groups only makes sure the
    /// placement gets written.
    pub async fn form_shards(&self, shards: u64, members: &[String]) -> Result<(), Error> {
        if shards == 0 {
            return Err(Error::Rejected("a sharded deployment needs a shard".into()));
        }
        let placement = match self.placement() {
            Some(p) => self.bootstrap_unformed_placement(p, members).await?,
            None => {
                crate::multi::hosting::mark_founded(
                    &*self.inner.fs,
                    &self.inner.dir,
                    PLACEMENT_GROUP,
                )
                .map_err(|e| Error::Storage(e.to_string()))?;
                self.inner
                    .journal
                    .create_group(PLACEMENT_GROUP)
                    .map_err(|e| Error::Storage(e.to_string()))?;
                self.start_placement(Some(members.to_vec())).await?
            }
        };
        for group in 1..=shards {
            if self.inner.journal.was_removed(group) {
                continue; // moved away from this node: never re-formed here
            }
            match self.create_group(group, members).await {
                Ok(_) => {}
                // Retired while `create_group` waited for it: likewise.
                Err(Error::Rejected(_)) if self.inner.journal.was_removed(group) => {}
                Err(e) => return Err(e),
            }
        }
        let plan = crate::multi::placement::even(shards, members);
        tokio::spawn(crate::multi::service::propose_formation(placement, plan));
        Ok(())
    }

    /// [`Self::bootstrap_unformed`] for the placement group's replica
    /// (never hosted on demand nor retired: no lock to hold).
    pub(super) async fn bootstrap_unformed_placement(
        &self,
        peer: Peer<PlacementGroup<S>>,
        members: &[String],
    ) -> Result<Peer<PlacementGroup<S>>, Error> {
        let st = peer.status();
        if st.config_index > 0
            || !st.members.is_empty()
            || !crate::multi::hosting::was_founded(
                &*self.inner.fs,
                &self.inner.dir,
                PLACEMENT_GROUP,
            )
        {
            return Ok(peer);
        }
        info!(node = %self.inner.name, "bootstrapping the placement group, whose creation failed before its bootstrap");
        *self.inner.placement() = None;
        peer.shutdown().await?;
        self.inner.links.unregister(PLACEMENT_GROUP);
        self.start_placement(Some(members.to_vec())).await
    }

    pub(super) async fn start_placement(
        &self,
        members: Option<Vec<String>>,
    ) -> Result<Peer<PlacementGroup<S>>, Error> {
        let (peer, gate) = self
            .start_replica::<PlacementGroup<S>>(PLACEMENT_GROUP, members, None)
            .await?;
        *self.inner.placement() = Some(peer.clone());
        *self
            .inner
            .placement_gate
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(gate);
        Ok(peer)
    }
}

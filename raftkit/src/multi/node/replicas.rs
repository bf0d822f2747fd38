//! Creating, starting and stopping the node's data-group replicas:
//! [`MultiNode::create_group`], the replica start every group goes
//! through (`start_replica`, which injects the node's journal, links,
//! worker pool and budgets into an ordinary [`PeerBuilder`](crate::runtime::PeerBuilder)),
//! and [`MultiNode::kill`] / [`MultiNode::shutdown`].
//!
//! Invariants:
//! - a group has at most one replica on the node: `create_group` waits
//!   for a retirement under way (the `retiring` lock) and refuses a group
//!   this node left or whose tombstone is pending;
//! - the `founded` marker is written before the journal's `Create`
//!   record, so a failure between that record and the bootstrap leaves a
//!   replica a retried `create_group` bootstraps; a group this node left
//!   is never bootstrapped (see [`crate::multi::hosting`], "Moving back");
//! - [`MultiNode::shutdown`] stops every replica before the journal
//!   closes, and waits for a retirement under way.

use std::sync::{Arc, Mutex};

use tokio::task::JoinHandle;

use tracing::info;

use super::{Hosted, MultiNode};
use crate::error::Error;
use crate::multi::GroupId;
use crate::multi::placement::PLACEMENT_GROUP;
use crate::runtime::threads::{Threads, Worker};
use crate::runtime::{GroupStorage, Peer, PeerExt, TickGate};
use crate::schema::SchemaBook;
use crate::storage::FileSnapshotStore;

/// Creating, starting and stopping replicas.
impl<S: PeerExt> MultiNode<S> {
    /// Creates `group` on this node as a voter of a new group whose voters
    /// are the nodes at `members` (their advertised addresses, this node's
    /// included or not); each member node creates it with the same list.
    /// A group this node already hosts is returned as it is — unless this
    /// node founded it, never left it, and its replica holds no
    /// configuration (a failure between the durable creation and the
    /// bootstrap, here or before a restart): that replica is bootstrapped
    /// with `members` now, as a fresh create would (a replica hosted on
    /// demand never is, nor one hosted again after this node left the
    /// group). One it left and does not host is refused with
    /// [`Error::Rejected`], also while its replica is still being retired.
    pub async fn create_group(&self, group: GroupId, members: &[String]) -> Result<Peer<S>, Error> {
        if group == PLACEMENT_GROUP {
            return Err(Error::Rejected(
                "group 0 is the placement group (see `form_shards`)".into(),
            ));
        }
        // A retirement under way has taken the replica out of the map but
        // not yet written its tombstone: wait for it, or this would start
        // an empty replica of a group this node just left.
        let retiring = self.inner.retiring.lock().await;
        if let Some(peer) = self.group(group) {
            // Held on: no retirement takes the replica while it restarts.
            let _retiring = retiring;
            return self.bootstrap_unformed(group, peer, members).await;
        }
        if self.inner.unretired().contains_key(&group) {
            // Its old log is still in the journal (see `hosting`).
            return Err(Error::Rejected(format!(
                "this node's replica of group {group} is still retiring: its tombstone could not be written (restart the node)"
            )));
        }
        if self.inner.journal.was_removed(group) {
            // Bootstrapped as a voter, an empty replica under the old
            // replica's id could complete a quorum without the entries the
            // old replica acknowledged; a move brings the group back as a
            // learner behind its fence instead (see `hosting`).
            return Err(Error::Rejected(format!(
                "this node left group {group}; move a replica back to it instead"
            )));
        }
        // Before the `Create` record: a failure between it and the
        // bootstrap must leave a replica this call, retried, bootstraps.
        crate::multi::hosting::mark_founded(&*self.inner.fs, &self.inner.dir, group)
            .map_err(|e| Error::Storage(e.to_string()))?;
        self.inner
            .journal
            .create_group(group)
            .map_err(|e| Error::Storage(e.to_string()))?;
        // A retirement starting now cannot take this group: it is not in
        // the map until it has started.
        drop(retiring);
        self.start_group(group, Some(members.to_vec())).await
    }

    /// `peer`, this node's replica of `group`, as it is; or, if this node
    /// founded the group ([`hosting::mark_founded`](crate::multi::hosting::mark_founded))
    /// and the replica holds no configuration (a failure came between the
    /// `Create` record and the bootstrap, and its log is empty), the
    /// replica restarted over its log with the founding `members`: the
    /// builder bootstraps a log that is still empty, as a fresh create
    /// does. A replica hosted on demand is never founded here. The caller
    /// holds the `retiring` lock.
    ///
    /// A group this node left (a tombstone in the journal) is never
    /// bootstrapped, whatever its markers say: its replica here now was
    /// hosted again by a move, behind the removal's fence, and catches up
    /// from the group's leader as a learner (see `hosting`, "Moving
    /// back"); bootstrapped, it would hold a voter configuration under
    /// the old replica's id without the entries that replica acknowledged.
    /// The `founded` marker is deleted after the tombstone is durable
    /// (`hosting::delete_group_files`), and a deletion that failed leaves
    /// it behind while the journal holds the group again.
    pub(super) async fn bootstrap_unformed(
        &self,
        group: GroupId,
        peer: Peer<S>,
        members: &[String],
    ) -> Result<Peer<S>, Error> {
        if self.inner.journal.was_removed(group) {
            tracing::debug!(group, node = %self.inner.name, "not bootstrapping a replica of a group this node left");
            return Ok(peer);
        }
        let st = peer.status();
        if st.config_index > 0
            || !st.members.is_empty()
            || !crate::multi::hosting::was_founded(&*self.inner.fs, &self.inner.dir, group)
        {
            return Ok(peer);
        }
        let Some(h) = self.inner.groups().remove(&group) else {
            return Ok(peer);
        };
        info!(group, node = %self.inner.name, "bootstrapping a group whose creation failed before its bootstrap");
        // A message arriving meanwhile starts no replica: the journal
        // holds the group.
        h.peer.shutdown().await?;
        self.inner.links.unregister(group);
        self.start_group(group, Some(members.to_vec())).await
    }

    pub(super) async fn start_group(
        &self,
        group: GroupId,
        members: Option<Vec<String>>,
    ) -> Result<Peer<S>, Error> {
        let schemas = Some(self.inner.schemas.clone());
        let (peer, gate) = self.start_replica::<S>(group, members, schemas).await?;
        let me = self.id();
        let fence = self
            .inner
            .journal
            .fence(group)
            .map_or(0, |(index, _)| index);
        // Listed before a restart (durable marker), or by the configuration
        // it starts with (one past the fence: see `hosting`).
        let st = peer.status();
        let listed = crate::multi::hosting::was_listed(&*self.inner.fs, &self.inner.dir, group)
            || (st.config_index > fence && st.members.iter().any(|m| m.id == me));
        self.inner.groups().insert(
            group,
            Hosted {
                peer: peer.clone(),
                gate,
                since: tokio::time::Instant::now(),
                listed,
                fence,
            },
        );
        Ok(peer)
    }

    /// Starts this node's replica of `group`, a group of state machine `T`
    /// (`S`, or [`PlacementGroup`] for group 0), whose leader checks
    /// writes and promotions against `schemas` (the node's, for `S`; none:
    /// a book of the replica's own, which hears no hellos).
    pub(super) async fn start_replica<T: PeerExt>(
        &self,
        group: GroupId,
        members: Option<Vec<String>>,
        schemas: Option<Arc<SchemaBook>>,
    ) -> Result<(Peer<T>, Arc<TickGate>), Error> {
        let inner = &self.inner;
        let snap_dir = inner
            .dir
            .join("groups")
            .join(group.to_string())
            .join("snapshots");
        let snapshots = FileSnapshotStore::open_in(inner.fs.clone(), &snap_dir, 1)
            .map_err(|e| Error::Storage(e.to_string()))?;
        let journal = inner.journal.clone();
        let storage = GroupStorage {
            log: Box::new(inner.journal.log(group)),
            snapshots: Box::new(snapshots),
            sink: Box::new(move |snaps| Box::new(journal.sink(group, snaps))),
            places: (inner.dir.join("journal"), snap_dir),
        };
        let links = inner.links.clone();
        let gate = Arc::new(TickGate::default());
        let pool = inner
            .pool
            .handle()
            .ok_or_else(|| Error::Unavailable("the node is stopping".into()))?;
        let threads = Threads::Custom(Arc::new(move |_name: &str, body| {
            Ok(Worker::Task(pool.spawn(body)))
        }));
        let mut builder = T::peer()
            .name(inner.name.clone())
            .listen(inner.advertise.clone())
            .advertise(inner.advertise.clone())
            .in_memory()
            .tick(inner.tick)
            .snapshot_every(inner.snapshot_every)
            .watches_per_certificate(inner.watches_per_certificate)
            .group_storage(storage)
            .tick_gate(gate.clone())
            // Each busy replica rebuilt its status's members, histograms
            // and addresses every millisecond: with 64 groups a tenth of
            // the node's CPU per write (`benches/multi.rs`). The policies
            // reading them (quiescence, balancing, moves, retirement) act
            // at tick granularity anyway.
            .status_interval(inner.tick)
            .gather(true)
            // A replica of a group this node left before (a move back):
            // see `hosting` on why it must not count itself in the group's
            // older configurations.
            .membership_fence(inner.journal.fence(group))
            // One snapshot receive budget for all the node's groups; a
            // snapshot larger than it could never be received.
            .receive_budget(inner.receive_budget.clone())
            .max_snapshot_bytes(
                inner
                    .hosting
                    .receive_budget_bytes()
                    .min(crate::core::config::DEFAULT_MAX_SNAPSHOT_BYTES),
            )
            .threads(threads)
            .charged_transport(move |_id, inbox| {
                links.register(group, inbox);
                Arc::new(links.link(group))
            });
        if let Some(members) = members {
            builder = builder.bootstrap_members(members);
        }
        if let Some(schemas) = schemas {
            builder = builder.schema_book(schemas);
        }
        let peer = builder.start().await?;
        Ok((peer, gate))
    }

    /// Stops the node as a crash of its process would, for fault-injection
    /// tests: every group's node task is aborted where it is (writes not yet
    /// handed to the journal are lost, nothing is flushed or answered), the
    /// node's own tasks are aborted, the endpoint closes, and the journal's
    /// writer stops after the batch it holds (a crash a moment later). The
    /// data directory is then as a killed process leaves it; start a new
    /// node on it to recover.
    pub async fn kill(&self) {
        self.abort_tasks(&[
            &self.inner.quiescer,
            &self.inner.balancer,
            &self.inner.demux,
        ]);
        let hosted = std::mem::take(&mut *self.inner.groups());
        if let Some(peer) = self.inner.placement().take() {
            peer.abort();
            self.inner.links.unregister(PLACEMENT_GROUP);
        }
        for (group, h) in hosted {
            h.peer.abort();
            self.inner.links.unregister(group);
        }
        self.inner.quic.shutdown().await;
        self.inner.journal.close().await;
        info!(name = %self.inner.name, "node killed");
    }

    /// Stops every group (each flushes its writes to the journal), then the
    /// endpoint. Returns the first storage error a group stopped with.
    pub async fn shutdown(&self) -> Result<(), Error> {
        // Lets a retirement under way finish (its journal record included)
        // and starts no other.
        let _retiring = self.inner.retiring.lock().await;
        self.abort_tasks(&[&self.inner.quiescer, &self.inner.balancer]);
        let hosted = std::mem::take(&mut *self.inner.groups());
        let mut first = Ok(());
        let placement = self.inner.placement().take();
        if let Some(peer) = placement {
            first = peer.shutdown().await;
            self.inner.links.unregister(PLACEMENT_GROUP);
        }
        for (group, h) in hosted {
            let r = h.peer.shutdown().await;
            self.inner.links.unregister(group);
            if first.is_ok() {
                first = r;
            }
        }
        self.inner.quic.shutdown().await;
        let demux = self.inner.demux.lock().ok().and_then(|mut d| d.take());
        if let Some(demux) = demux {
            demux.abort();
        }
        self.inner.journal.close().await;
        first
    }

    /// Aborts the tasks in `named` (each taken out of its slot) and then
    /// every task of the node's task list (hosting, retiring, placement
    /// recording, replica balancing).
    fn abort_tasks(&self, named: &[&Mutex<Option<JoinHandle<()>>>]) {
        for task in named {
            if let Some(task) = task.lock().ok().and_then(|mut t| t.take()) {
                task.abort();
            }
        }
        for task in self
            .inner
            .tasks
            .lock()
            .map(|mut t| std::mem::take(&mut *t))
            .unwrap_or_default()
        {
            task.abort();
        }
    }
}

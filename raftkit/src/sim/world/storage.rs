//! A node's storage as the world runs it: local snapshots, the completion
//! of writes (and their failure with an IO error), crashes that lose or tear
//! what was not yet durable, restarts from the disk, and the checks that
//! tie the core to its disk — persistence ordering of what a node sends,
//! storage agreement of what it counts durable, and the durability of
//! commitment whenever a disk loses an entry.

use rand::Rng;

use super::{Event, Step, World, storage_violation};
use crate::core::{Body, Index, Message, NodeId, Role};
use crate::sim::disk::{Part, PendingWrite, Tear};
use crate::sim::kv::SimKv;
use crate::sim::options::FailureKind;
use crate::state_machine::StateMachine;

impl World {
    /// Takes a local snapshot when the core asks for one; it is saved
    /// through the snapshot queue and compacts the log once saved.
    pub(super) fn maybe_snapshot(&mut self, id: NodeId) {
        let n = self.nodes.get_mut(&id).expect("node exists");
        let Some(raft) = n.raft.as_mut() else { return };
        if !raft.wants_snapshot() {
            return;
        }
        let index = raft.log().applied().min(raft.log().persisted());
        let Ok(data) = n.kv.snapshot() else { return };
        let Ok(meta) = raft.compact(index, data.clone()) else {
            return;
        };
        self.report.snapshots_taken += 1;
        let latency = self.rng.random_range(2..8) + self.disk_latency();
        let n = self.nodes.get_mut(&id).expect("node exists");
        let done_at = n.snap_writes.completion_time(self.now, latency);
        n.snap_writes.pending.push_back(PendingWrite {
            done_at,
            parts: vec![Part::SaveSnapshot(meta, data)],
            ..Default::default()
        });
        let epoch = n.epoch;
        self.schedule(done_at - self.now, Event::SnapshotSaved { node: id, epoch });
    }

    /// The latency of the next write: a few ms, or with disk faults
    /// sometimes a stall of tens of ms.
    pub(super) fn disk_latency(&mut self) -> u64 {
        if self.disk_faulty && self.rng.random_bool(0.08) {
            self.rng.random_range(10..80)
        } else {
            self.rng.random_range(1..4)
        }
    }

    pub(super) fn persisted(&mut self, id: NodeId, epoch: u64) -> Step {
        let n = self.nodes.get_mut(&id).expect("node exists");
        if n.epoch != epoch {
            return Ok(());
        }
        let Some(w) = n.writes.pending.pop_front() else {
            return Ok(());
        };
        if self.disk_faulty && self.rng.random_bool(0.004) {
            return self.io_error(id, w);
        }
        let n = self.nodes.get_mut(&id).expect("node exists");
        let removed = n
            .disk
            .apply(&w)
            .map_err(|e| storage_violation("storage contract", format!("node {id}: {e}")))?;
        self.on_disk_removal(removed)?;
        let n = self.nodes.get_mut(&id).expect("node exists");
        if let Some(raft) = n.raft.as_mut()
            && let Some(marker) = w.marker
        {
            raft.on_persisted(marker);
            // What the core now counts as durable is on its disk.
            let log = raft.log();
            let p = log.persisted();
            if p > log.snapshot().index
                && let Some(term) = log.term(p)
                && !n.disk.holds(p, term)
            {
                return Err(storage_violation(
                    "storage agreement",
                    format!("node {id} counts {p}@{term} durable, but its disk does not hold it"),
                ));
            }
        }
        for m in w.messages {
            self.check_sent(&m)?;
            self.send(m);
        }
        self.process(id)
    }

    /// A local snapshot is saved: the log is compacted behind it next (in
    /// the log queue, after the writes already there).
    pub(super) fn snapshot_saved(&mut self, id: NodeId, epoch: u64) -> Step {
        let n = self.nodes.get_mut(&id).expect("node exists");
        if n.epoch != epoch {
            return Ok(());
        }
        let Some(w) = n.snap_writes.pending.pop_front() else {
            return Ok(());
        };
        n.disk
            .apply(&w)
            .map_err(|e| storage_violation("storage contract", format!("node {id}: {e}")))?;
        let Some(Part::SaveSnapshot(meta, _)) = w.parts.first() else {
            return Ok(());
        };
        let (index, term) = (meta.index, meta.term);
        let latency = self.disk_latency();
        let n = self.nodes.get_mut(&id).expect("node exists");
        let done_at = n.writes.completion_time(self.now, latency);
        n.writes.pending.push_back(PendingWrite {
            done_at,
            parts: vec![Part::CompactLog { index, term }],
            ..Default::default()
        });
        self.schedule(done_at - self.now, Event::Persisted { node: id, epoch });
        Ok(())
    }

    /// A disk lost entries from `removed` on: the committed ones among them
    /// must still be on a quorum.
    pub(super) fn on_disk_removal(&mut self, removed: Option<Index>) -> Step {
        match removed {
            Some(from) if from <= self.oracle.committed().len() as Index => {
                self.check_durable(from..=Index::MAX)
            }
            _ => Ok(()),
        }
    }

    /// How much of `w` a crash lets through: fewer parts than all, and
    /// perhaps some entries of the next one.
    pub(super) fn random_tear(&mut self, w: &PendingWrite) -> Tear {
        if w.parts.is_empty() {
            return Tear {
                parts: 0,
                entries: 0,
            };
        }
        let parts = self.rng.random_range(0..w.parts.len());
        let entries = match &w.parts[parts] {
            Part::Append(es) if es.len() > 1 && self.rng.random_bool(0.5) => {
                self.rng.random_range(1..es.len())
            }
            _ => 0,
        };
        Tear { parts, entries }
    }

    /// Applies `tear` of `w` to `id`'s disk, counting a torn write.
    pub(super) fn tear_write(&mut self, id: NodeId, w: &PendingWrite, tear: Tear) -> Step {
        if tear.parts > 0 || tear.entries > 0 {
            self.report.torn_writes += 1;
        }
        let n = self.nodes.get_mut(&id).expect("node exists");
        let removed = n
            .disk
            .apply_torn(w, tear)
            .map_err(|e| storage_violation("storage contract", format!("node {id}: {e}")))?;
        self.on_disk_removal(removed)
    }

    /// Crashes `id`: unsynced writes are lost, except a random prefix of
    /// each queue the kernel may already have flushed, and with disk faults
    /// the first write lost may be torn.
    pub(super) fn crash(&mut self, id: NodeId) -> Step {
        let n = self.nodes.get_mut(&id).expect("node exists");
        if n.raft.is_none() {
            return Ok(());
        }
        let pending: Vec<_> = n.writes.pending.drain(..).collect();
        let snaps: Vec<_> = n.snap_writes.pending.drain(..).collect();
        if !snaps.is_empty() || pending.iter().any(PendingWrite::compacts) {
            self.report.crashes_mid_compaction += 1;
        }
        if pending.iter().any(PendingWrite::installs) {
            self.report.crashes_mid_install += 1;
        }
        let survive = self.rng.random_range(0..=pending.len());
        for w in &pending[..survive] {
            let n = self.nodes.get_mut(&id).expect("node exists");
            let removed = n
                .disk
                .apply(w)
                .map_err(|e| storage_violation("storage contract", format!("node {id}: {e}")))?;
            self.on_disk_removal(removed)?;
        }
        if let Some(w) = pending.get(survive)
            && self.opts.disk_faults
            && self.rng.random_bool(0.5)
        {
            let tear = self.random_tear(w);
            self.tear_write(id, w, tear)?;
        }
        let saved = self.rng.random_range(0..=snaps.len());
        for w in &snaps[..saved] {
            let n = self.nodes.get_mut(&id).expect("node exists");
            n.disk
                .apply(w)
                .map_err(|e| storage_violation("storage contract", format!("node {id}: {e}")))?;
        }
        self.stop(id);
        self.report.crashes += 1;
        self.check_durable(1..=Index::MAX)
    }

    /// A write failed with an IO error: it may have partly reached the disk,
    /// and the node stops at once — it never reports the write durable, nor
    /// sends what waited on it, nor writes anything after it.
    pub(super) fn io_error(&mut self, id: NodeId, w: PendingWrite) -> Step {
        self.report.io_errors += 1;
        let tear = self.random_tear(&w);
        self.tear_write(id, &w, tear)?;
        let n = self.nodes.get_mut(&id).expect("node exists");
        n.writes.pending.clear();
        n.snap_writes.pending.clear();
        self.stop(id);
        self.report.crashes += 1;
        self.check_durable(1..=Index::MAX)?;
        let back = self.rng.random_range(50..400);
        self.schedule(back, Event::Restart { node: id });
        Ok(())
    }

    /// The process is gone: its in-memory state and its pending requests.
    pub(super) fn stop(&mut self, id: NodeId) {
        let n = self.nodes.get_mut(&id).expect("node exists");
        if n.receiving.take().is_some() {
            self.report.crashes_mid_transfer += 1;
        }
        n.raft = None;
        n.epoch += 1;
        n.paused_until = 0;
        n.writes.pending.clear();
        n.snap_writes.pending.clear();
        n.proposals.clear();
        n.reads.clear();
        n.read_waiting.clear();
    }

    pub(super) fn restart(&mut self, id: NodeId) -> Step {
        let restored = {
            let n = self.nodes.get_mut(&id).expect("node exists");
            if n.raft.is_some() || n.retired {
                return Ok(());
            }
            n.disk.restore().map_err(|e| {
                storage_violation("storage contract", format!("node {id} cannot restart: {e}"))
            })?
        };
        let kv = match &restored.snapshot_data {
            Some(d) => SimKv::restore(d).map_err(|e| {
                storage_violation(
                    "snapshot",
                    format!("node {id} restarts from an undecodable snapshot: {e}"),
                )
            })?,
            None => SimKv::default(),
        };
        self.oracle
            .on_restore(id, restored.snapshot.index, kv.digest(), false)
            .map_err(FailureKind::Safety)?;
        let raft = self.new_raft(id, restored);
        let n = self.nodes.get_mut(&id).expect("node exists");
        n.kv = kv;
        n.raft = Some(raft);
        n.last_role = (Role::Follower, 0);
        n.last_tick = self.now;
        let epoch = n.epoch;
        let offset = self.rng.random_range(1..=n.tick_tenths / 10);
        self.schedule(offset, Event::Tick { node: id, epoch });
        Ok(())
    }

    /// Persistence ordering (Raft Figure 2, "updated on stable storage
    /// before responding to RPCs"; DESIGN §3): a message of term T leaves
    /// only once T is on the sender's disk, a vote only once it is, and an
    /// acknowledgement of entries (or of an installed snapshot) only once
    /// they are. PreVote messages, which carry the term a pre-candidate
    /// would campaign in, are exempt.
    pub(super) fn check_sent(&mut self, m: &Message) -> Step {
        let disk = &self.nodes[&m.from].disk;
        let hs = disk.hard_state;
        let broken = match m.body {
            Body::RequestVote { pre_vote: true, .. }
            | Body::RequestVoteResponse {
                pre_vote: true,
                granted: true,
            } => None,
            _ if hs.term < m.term => Some(format!("its disk holds term {}", hs.term)),
            Body::RequestVoteResponse {
                pre_vote: false,
                granted: true,
            } if hs.term == m.term && hs.vote != m.to => {
                Some(format!("its disk holds the vote {} in that term", hs.vote))
            }
            Body::AppendEntriesResponse {
                index,
                success: true,
                ..
            }
            | Body::InstallSnapshotResponse {
                index, done: true, ..
            } if disk.last_index() < index => Some(format!(
                "it acknowledges {index} but its disk ends at {}",
                disk.last_index()
            )),
            _ => None,
        };
        if let Body::RequestVoteResponse {
            pre_vote: false,
            granted: true,
        } = m.body
        {
            self.oracle
                .on_vote(m.from, m.term, m.to)
                .map_err(FailureKind::Safety)?;
        }
        match broken {
            Some(why) => Err(storage_violation(
                "persistence ordering",
                format!(
                    "node {} sends {} of term {} to {} but {why}",
                    m.from,
                    m.body.kind(),
                    m.term,
                    m.to
                ),
            )),
            None => Ok(()),
        }
    }

    /// Durability of the committed entries in `range` (see the oracle).
    pub(super) fn check_durable(&self, range: std::ops::RangeInclusive<Index>) -> Step {
        let all: Vec<NodeId> = self.nodes.keys().copied().collect();
        self.oracle
            .check_durable(
                range,
                |id, index, term| {
                    self.nodes
                        .get(&id)
                        .is_some_and(|n| n.disk.holds(index, term))
                },
                &all,
                &self.conf,
            )
            .map_err(FailureKind::Safety)
    }
}

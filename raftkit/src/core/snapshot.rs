//! Snapshots in the protocol (Raft §7): compacting the log behind a local
//! snapshot, and sending a snapshot in bounded chunks to a follower that
//! needs compacted entries.
//!
//! Transfer protocol: the leader sends chunks in order, one at a time; the
//! follower appends a chunk only if it starts exactly where its buffer ends
//! (and ends within `Config::max_snapshot_bytes`, checked by `inbound`, so
//! the buffer is bounded) and answers with the offset it expects next. A chunk of another snapshot (a newer snapshot, or a
//! new leader) at offset zero restarts the transfer, at another offset is
//! rejected so the sender restarts. Only a complete snapshot is installed,
//! and it is installed as a whole: the runtime persists it (temp file, fsync,
//! rename) and restores the state machine from it before applying anything
//! after it.
//!
//! Flow control (one chunk in flight per follower, whatever the size):
//! - the leader sends the next chunk only on an answer that **advances**
//!   the follower's offset; an answer at or behind the offset already
//!   acknowledged (the answer to a duplicate) is ignored. Without this rule
//!   every resent chunk started one more chunk-answer-chunk cycle that
//!   never ended: after `n` heartbeats `n` copies of each chunk were in
//!   flight, and a transfer of tens of MB slowed down quadratically
//!   (issue 18);
//! - a heartbeat resends the current chunk only when no answer advanced the
//!   transfer since the previous heartbeat (the chunk or its answer was
//!   lost);
//! - the snapshot being sent to a follower is pinned until it is installed
//!   or the transfer is abandoned: a newer local snapshot does not restart
//!   a transfer in progress (under a steady write load a big transfer would
//!   otherwise restart at every compaction and never finish). Once it is
//!   installed, the follower gets the entries after it, or the newer
//!   snapshot if the log behind it was compacted meanwhile;
//! - answers to chunks that do not complete the snapshot leave at once:
//!   they claim nothing durable (the buffer is in memory). The answer
//!   that installs the snapshot leaves only once the snapshot is durable.
//!
//! Memory bounds (the state machine serializes a snapshot into one buffer
//! and restores from one, so a snapshot is whole in memory at both ends):
//! - leader: its latest snapshot, plus any older one a transfer still in
//!   progress pinned (shared between transfers, dropped when the transfer
//!   ends or the follower leaves the configuration), plus one chunk
//!   (`Config::snapshot_chunk_bytes`, 256 KiB) per receiving follower on
//!   the wire: never one copy per follower;
//! - follower: the receive buffer, at most `Config::max_snapshot_bytes`
//!   (1 GiB by default; chunks past it are dropped), and at most the room
//!   the runtime gives it ([`Raft::set_snapshot_receive_room`]: a
//!   multi-group node shares one budget among its groups' buffers; a
//!   chunk past the room abandons the reception, whose leader starts over).
//!   A reception of an earlier term, or one the commit index covers, can
//!   never be extended again and is dropped at once; once complete the
//!   snapshot is kept for sending on (if this node leads later), handed to
//!   the runtime to save and to restore the state machine from: about
//!   three times the snapshot's size while it is installed.
//!
//! Progress: the leader reports every transfer ([`Raft::snapshot_sends`]);
//! the runtime logs its start, its progress every few seconds, every time
//! the follower sent it back to an earlier offset, and its end.
//! Measured (`benches/multi.rs`, `move` cell): 100 MB and 400 MB groups
//! move between nodes on loopback in a few seconds.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::Arc;

use super::message::{Body, Message};
use super::progress::Mode;
use super::raft::{Raft, Role};
use super::ready::InstalledSnapshot;
use super::types::{Entry, Index, NodeId, SnapshotMeta, Term};

/// Follower: a snapshot being received, from one leader in one term. Its
/// bytes come from that one sender: two leaders' snapshots of the same
/// metadata need not be the same bytes (a `HashMap` in the state, a new
/// state version during a rolling upgrade), so chunks of another sender or
/// term never extend it.
#[derive(Debug)]
struct Receiving {
    meta: SnapshotMeta,
    from: NodeId,
    term: Term,
    data: Vec<u8>,
}

/// Default size of one snapshot chunk.
pub const DEFAULT_CHUNK_BYTES: usize = 256 * 1024;

/// Snapshot state of one node.
#[derive(Debug, Default)]
pub(super) struct SnapshotTransfer {
    /// The latest local snapshot's data, for sending.
    local: Option<Arc<Vec<u8>>>,
    /// Leader: the transfer to each follower receiving a snapshot.
    sending: BTreeMap<NodeId, Sending>,
    /// Follower: the snapshot being received.
    receiving: Option<Receiving>,
    /// Follower: a complete snapshot waiting to be handed out in a Ready.
    received: Option<InstalledSnapshot>,
    /// Follower: the most bytes the receive buffer may hold, as the
    /// runtime last set it ([`Raft::set_snapshot_receive_room`]; `None`:
    /// only [`Config::max_snapshot_bytes`](super::Config::max_snapshot_bytes)).
    room: Option<u64>,
    /// The applied log's bytes since the local snapshot, as far as
    /// [`Raft::wants_snapshot`] counted them.
    log_bytes: Cell<LogBytes>,
}

/// How far [`Raft::wants_snapshot`] counted the bytes of the applied log
/// since the snapshot at `basis`: entries `(basis, through]` add up to
/// `bytes`. Applied entries are never truncated, so the count only grows
/// until the snapshot changes; each entry is counted once.
#[derive(Clone, Copy, Debug, Default)]
struct LogBytes {
    basis: Index,
    through: Index,
    bytes: u64,
}

/// Leader: one follower's snapshot transfer.
#[derive(Debug)]
struct Sending {
    /// The snapshot being sent (pinned: see the module documentation).
    meta: SnapshotMeta,
    data: Arc<Vec<u8>>,
    /// The offset the follower acknowledged holding (the next chunk's).
    acked: u64,
    /// No answer advanced the transfer since the last heartbeat.
    stalled: bool,
    /// Times the follower sent the transfer back to an earlier offset.
    restarts: u64,
}

/// A leader's snapshot transfer to one follower, as
/// [`Raft::snapshot_sends`] reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotSend {
    /// The follower.
    pub to: NodeId,
    /// The index the snapshot covers.
    pub index: Index,
    /// Bytes the follower acknowledged holding.
    pub acked: u64,
    /// The snapshot's size in bytes.
    pub total: u64,
    /// Times the follower sent the transfer back to an earlier offset (it
    /// restarted, or chunks were lost).
    pub restarts: u64,
}

impl SnapshotTransfer {
    pub(super) fn new(data: Option<Vec<u8>>) -> Self {
        SnapshotTransfer {
            local: data.map(Arc::new),
            ..Default::default()
        }
    }

    pub(super) fn abort_sends(&mut self) {
        self.sending.clear();
    }

    /// Drops the transfer to `to` (it no longer needs the snapshot).
    pub(super) fn end_send(&mut self, to: NodeId) {
        self.sending.remove(&to);
    }

    pub(super) fn has_received(&self) -> bool {
        self.received.is_some()
    }

    pub(super) fn take_received(&mut self) -> Option<InstalledSnapshot> {
        self.received.take()
    }

    /// Bytes of the snapshot being received (bounded by
    /// [`Config::max_snapshot_bytes`](super::Config::max_snapshot_bytes)).
    pub(super) fn receiving_len(&self) -> u64 {
        self.receiving.as_ref().map_or(0, |r| r.data.len() as u64)
    }

    /// The term of the snapshot being received, if any.
    pub(super) fn receiving_term(&self) -> Option<Term> {
        self.receiving.as_ref().map(|r| r.term)
    }

    /// Drops the snapshot being received if no chunk can extend it any
    /// more: it is of a term before `term` (its leader's chunks are stale
    /// now, Raft §5.1, and a later leader's start afresh), or the log
    /// committed through its index (a later chunk is answered "installed"
    /// at once). Its bytes would otherwise stay held until another
    /// snapshot replaced it.
    pub(super) fn forget_obsolete_receiving(&mut self, term: Term, committed: Index) {
        if self
            .receiving
            .as_ref()
            .is_some_and(|r| r.term < term || r.meta.index <= committed)
        {
            self.receiving = None;
        }
    }
}

impl Raft {
    /// Whether the log since the last snapshot has grown past the configured
    /// thresholds (at least `snapshot_entries` applied entries, adding up
    /// to at least `snapshot_log_ratio` times the last snapshot's size): the
    /// runtime should then take a snapshot of the state machine at
    /// [`RaftLog::applied`](super::log::RaftLog::applied) and call
    /// [`Raft::compact`].
    pub fn wants_snapshot(&self) -> bool {
        let threshold = self.cfg.snapshot_entries;
        let basis = self.log.snapshot().index;
        let applied = self.log.applied();
        if threshold == 0 || applied < basis.saturating_add(threshold) {
            return false;
        }
        let last = self.snapshots.local.as_ref().map_or(0, |d| d.len());
        // Saturating float-to-int conversion: a huge product asks for more
        // bytes than any log holds, never wraps.
        let need = (last as f64 * self.cfg.snapshot_log_ratio) as u64;
        if need == 0 {
            return true;
        }
        let mut c = self.snapshots.log_bytes.get();
        if c.basis != basis {
            c = LogBytes {
                basis,
                through: basis,
                bytes: 0,
            };
        }
        while c.through < applied && c.bytes < need {
            let Some(e) = self.log.entry(c.through + 1) else {
                break;
            };
            c.bytes += e.approx_size() as u64;
            c.through += 1;
        }
        self.snapshots.log_bytes.set(c);
        c.bytes >= need
    }

    /// The metadata of a snapshot of the state machine taken after applying
    /// every entry up to `index`, without compacting anything: the runtime
    /// saves the snapshot durably first and calls [`Raft::compact`] only
    /// once it is (Raft §7: the log may be discarded only behind a durable
    /// snapshot).
    pub fn snapshot_meta(&self, index: Index) -> Result<SnapshotMeta, CompactError> {
        if index > self.log.applied() || index > self.log.persisted() {
            return Err(CompactError::NotApplied {
                index,
                applied: self.log.applied(),
            });
        }
        if index <= self.log.snapshot().index {
            return Err(CompactError::Outdated(index));
        }
        let term = self.log.term(index).ok_or(CompactError::Outdated(index))?;
        Ok(SnapshotMeta {
            index,
            term,
            config: self.log.config_at(index).clone(),
        })
    }

    /// Records a snapshot of the state machine taken after applying every
    /// entry up to `index`, and forgets the log up to it.
    pub fn compact(&mut self, index: Index, data: Vec<u8>) -> Result<SnapshotMeta, CompactError> {
        self.compact_releasing(index, data, Vec::new())
            .map(|(meta, _)| meta)
    }

    /// [`Raft::compact`], handing back what the node let go: the compacted
    /// entries and the previous local snapshot's data. A run of 100,000
    /// entries takes milliseconds to drop; the caller drops them off its
    /// hot path. `room`: an empty vector for the log to go on in (see
    /// [`Released::entries`]; `Vec::new()` will do).
    pub fn compact_releasing(
        &mut self,
        index: Index,
        data: Vec<u8>,
        room: Vec<Entry>,
    ) -> Result<(SnapshotMeta, Released), CompactError> {
        if index > self.log.applied() || index > self.log.persisted() {
            return Err(CompactError::NotApplied {
                index,
                applied: self.log.applied(),
            });
        }
        if index <= self.log.snapshot().index {
            return Err(CompactError::Outdated(index));
        }
        let term = self.log.term(index).ok_or(CompactError::Outdated(index))?;
        let meta = SnapshotMeta {
            index,
            term,
            config: self.log.config_at(index).clone(),
        };
        let entries = self.log.compact_to(meta.clone(), room);
        let snapshot = self.snapshots.local.replace(Arc::new(data));
        Ok((meta, Released { entries, snapshot }))
    }

    /// The local snapshot's data, as kept for sending (tests only).
    #[cfg(test)]
    pub(crate) fn local_snapshot_data(&self) -> Option<&Arc<Vec<u8>>> {
        self.snapshots.local.as_ref()
    }

    /// Follower: the bytes held in the buffer of the snapshot being
    /// received (0 when none is).
    pub(crate) fn snapshot_receiving_bytes(&self) -> u64 {
        self.snapshots.receiving_len()
    }

    /// Follower: the most bytes the snapshot receive buffer may hold from
    /// now on (`None`: only [`Config::max_snapshot_bytes`](super::Config::max_snapshot_bytes)
    /// bounds it). A chunk that would take the buffer past it abandons
    /// the reception (dropped, counted as
    /// [`DropReason::SnapshotOverBudget`](super::DropReason::SnapshotOverBudget),
    /// not answered: lost, as far as the leader knows, Raft §5.3), and the
    /// leader's next chunk is answered with offset 0, so it starts over.
    /// The runtime of a multi-group node sets it before each chunk, from
    /// its share of a node-wide budget (`runtime::receive_budget`).
    pub(crate) fn set_snapshot_receive_room(&mut self, room: Option<u64>) {
        self.snapshots.room = room;
    }

    /// Leader: the snapshot transfers in progress, one per follower
    /// receiving a snapshot (for progress logs and metrics).
    pub fn snapshot_sends(&self) -> Vec<SnapshotSend> {
        self.snapshots
            .sending
            .iter()
            .map(|(to, s)| SnapshotSend {
                to: *to,
                index: s.meta.index,
                acked: s.acked,
                total: s.data.len() as u64,
                restarts: s.restarts,
            })
            .collect()
    }

    /// Leader: drops the transfers to nodes no longer in the configuration
    /// (and the snapshots they pinned).
    pub(super) fn forget_departed_sends(&mut self) {
        let progress = &self.progress;
        self.snapshots
            .sending
            .retain(|id, _| progress.contains_key(id));
    }

    /// Leader: starts sending the local snapshot to `to`.
    pub(super) fn send_snapshot(&mut self, to: NodeId) {
        let Some(data) = self.snapshots.local.clone() else {
            return; // nothing to send yet; retried on the next heartbeat
        };
        let meta = self.log.snapshot().clone();
        if let Some(pr) = self.progress.get_mut(&to) {
            pr.become_snapshot(meta.index);
        }
        self.snapshots.sending.insert(
            to,
            Sending {
                meta,
                data,
                acked: 0,
                stalled: false,
                restarts: 0,
            },
        );
        self.send_snapshot_chunk(to);
    }

    /// Leader, on a heartbeat: resends the chunk `to` is waiting for if no
    /// answer advanced the transfer since the previous heartbeat (a chunk
    /// or an answer was lost).
    pub(super) fn resend_snapshot_chunk(&mut self, to: NodeId) {
        match self.snapshots.sending.get_mut(&to) {
            Some(s) if s.stalled => self.send_snapshot_chunk(to),
            Some(s) => s.stalled = true,
            None => self.send_snapshot(to),
        }
    }

    /// Sends `to` the chunk at the offset it acknowledged.
    fn send_snapshot_chunk(&mut self, to: NodeId) {
        let chunk = self.cfg.snapshot_chunk_bytes.max(1);
        let Some(s) = self.snapshots.sending.get(&to) else {
            return;
        };
        let len = s.data.len();
        let start = usize::try_from(s.acked).unwrap_or(len).min(len);
        let end = start.saturating_add(chunk).min(len);
        let body = Body::InstallSnapshot {
            meta: s.meta.clone(),
            offset: start as u64,
            data: s.data[start..end].to_vec(),
            done: end == len,
        };
        self.send(to, body);
    }

    /// Leader: a follower answered a chunk.
    pub(super) fn handle_snapshot_response(&mut self, m: Message) {
        let Body::InstallSnapshotResponse {
            index,
            next_offset,
            done,
            rejected,
        } = m.body
        else {
            return;
        };
        if self.role != Role::Leader {
            return;
        }
        let Some(pr) = self.progress.get_mut(&m.from) else {
            return;
        };
        pr.recent_active = true;
        if pr.mode != Mode::Snapshot || pr.pending_snapshot != index {
            return; // stale
        }
        if done {
            pr.maybe_update(index);
            pr.become_probe();
            self.snapshots.sending.remove(&m.from);
            self.send_append_all(m.from, true);
            return;
        }
        let Some(s) = self.snapshots.sending.get_mut(&m.from) else {
            return;
        };
        if rejected {
            // The follower holds `next_offset` bytes of this snapshot (0:
            // none, it restarted or took another snapshot's chunks): go on
            // from there.
            if next_offset < s.acked {
                s.restarts += 1;
            }
            s.acked = next_offset.min(s.data.len() as u64);
        } else if next_offset > s.acked && next_offset <= s.data.len() as u64 {
            s.acked = next_offset;
        } else {
            return; // the answer to a duplicate: the chunk after it is in flight
        }
        s.stalled = false;
        self.send_snapshot_chunk(m.from);
    }

    /// Follower: one chunk of a snapshot.
    pub(super) fn handle_install_snapshot(&mut self, m: Message) {
        let Body::InstallSnapshot {
            meta,
            offset,
            data,
            done,
        } = m.body
        else {
            return;
        };
        let index = meta.index;
        let reply = |next_offset: u64, done: bool, rejected: bool| Body::InstallSnapshotResponse {
            index,
            next_offset,
            done,
            rejected,
        };
        if index <= self.log.committed() {
            // We already hold everything the snapshot covers.
            self.send(m.from, reply(0, true, false));
            return;
        }
        // The same snapshot from the same leader in the same term: only
        // then do chunks extend the buffer.
        let same = self
            .snapshots
            .receiving
            .as_ref()
            .is_some_and(|r| r.meta == meta && r.from == m.from && r.term == m.term);
        if !same {
            if offset != 0 {
                self.send(m.from, reply(0, false, true));
                return;
            }
            self.snapshots.receiving = Some(Receiving {
                meta: meta.clone(),
                from: m.from,
                term: m.term,
                data: Vec::new(),
            });
        }
        let held = self.snapshots.receiving_len();
        let end = held.saturating_add(data.len() as u64);
        if offset == held && self.snapshots.room.is_some_and(|room| end > room) {
            // Past the room this node gives the buffer now: abandoned,
            // its bytes released; the chunk is lost as far as the leader
            // knows (Raft §5.3), and its next one, at an offset the
            // follower no longer holds, starts the transfer over.
            self.snapshots.receiving = None;
            self.dropped
                .record(super::inbound::DropReason::SnapshotOverBudget);
            return;
        }
        if offset != held {
            // A duplicate (behind) or a gap (ahead): say where we are. A gap
            // is counted (a chunk was lost, or the sender is broken).
            if offset > held {
                self.dropped
                    .record(super::inbound::DropReason::SnapshotChunkOutOfOrder);
            }
            self.send(m.from, reply(held, false, offset > held));
            return;
        }
        let Some(Receiving { data: buf, .. }) = self.snapshots.receiving.as_mut() else {
            return;
        };
        buf.extend_from_slice(&data);
        let held = buf.len() as u64;
        if !done {
            self.send(m.from, reply(held, false, false));
            return;
        }
        let Some(Receiving { meta, data, .. }) = self.snapshots.receiving.take() else {
            return;
        };
        self.log.install_snapshot(meta.clone());
        // One buffer for both: the local snapshot to send on and the one
        // handed out to install (a copy would double the memory of a large
        // snapshot, and cost its copy on the node's task).
        let data = Arc::new(data);
        self.snapshots.local = Some(Arc::clone(&data));
        self.snapshots.received = Some(InstalledSnapshot { meta, data });
        self.on_config_changed();
        self.send(m.from, reply(held, true, false));
    }
}

/// What a compaction let go ([`Raft::compact_releasing`]): for the caller
/// to drop where it stalls nothing.
#[derive(Debug, Default)]
pub struct Released {
    /// The entries the new snapshot covers, in log order, in the vector
    /// the log grew in until now: emptied, it is the best `room` for the
    /// next [`Raft::compact_releasing`] (the log then grows again without
    /// new memory).
    pub entries: Vec<Entry>,
    /// The data of the local snapshot it replaced.
    pub snapshot: Option<Arc<Vec<u8>>>,
}

/// Why [`Raft::compact`] refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CompactError {
    /// The snapshot claims entries the state machine has not applied.
    #[error("cannot compact to {index}: only {applied} applied")]
    NotApplied {
        /// The requested index.
        index: Index,
        /// What has been applied.
        applied: Index,
    },
    /// The log is already compacted past this index.
    #[error("already compacted past {0}")]
    Outdated(Index),
}

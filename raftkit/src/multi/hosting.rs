//! Hosting a group's replica on demand, and retiring a removed one.
//!
//! A replica move ([`moves`](super::moves)) adds a node that does not host
//! the group yet as a learner of it. That node learns of the group from the
//! group's leader: the first **AppendEntries or InstallSnapshot** of a group
//! (or heartbeat) it does not host, arriving on a peer link, makes it start an *empty*
//! replica of the group (no configuration, no log: the state a single-group
//! peer joining a cluster starts in), which then catches up by the log or a
//! snapshot like any learner. Other messages (votes, responses, heartbeats
//! of a coalesced beat) never create a group.
//!
//! # Trust (DESIGN §5, issue 11)
//!
//! Peer links are mutual TLS with `node` certificates of the cluster's CA,
//! and a message's sender is the node its certificate names: a stranger
//! (no certificate, or a `client`/`admin` one) cannot reach this code at
//! all. A node certificate already lets its holder append entries to the
//! groups it shares; hosting on demand lets it also start an empty,
//! non-voting replica, which is bounded:
//! - at most [`HostingPolicy::max_groups`] groups per node (hostile input
//!   never grows memory without a bound);
//! - an empty replica never campaigns (it has no configuration), and one
//!   that received no configuration within [`HostingPolicy::orphan_after`]
//!   is removed again; nor is it ever bootstrapped: only a replica this
//!   node founded (`create_group`, `form_shards`: a durable `founded`
//!   marker in `groups/<id>`, written before the journal's `Create`
//!   record), that holds no configuration (its bootstrap failed) and that
//!   the journal holds no tombstone of (a `founded` marker whose deletion
//!   failed at a removal outlives it) is bootstrapped, by the founding call
//!   retried, with that call's members;
//! - a group this node left comes back only behind a **membership
//!   fence** (see "Moving back" below);
//! - within [`HostingPolicy::quarantine`] of a removal the in-memory
//!   tombstone refuses it too (kept for the window before the journal's
//!   removal record is durable);
//! - it can be switched off ([`MultiNodeBuilder::host_on_demand`](super::MultiNodeBuilder::host_on_demand));
//! - a group hosted here counts for nothing when group 0's leader decides
//!   whether a node certificate may write the placement, unless the
//!   placement lists the group (`multi::placement_auth`, review s58: a
//!   founder of its own group would otherwise make itself known by adding
//!   members as learners).
//!
//! # Retiring a removed replica
//!
//! A node whose replica of a group, once listed by a configuration, sees a
//! configuration without itself that is **committed** (its commit index
//! covers the configuration's index, and it is not joint) has been removed
//! (thesis §4.2.2): the node stops the replica, writes the group's removal
//! to the journal (durable), then deletes the group's snapshot directory.
//! "Once listed" matters: a replica hosted on demand catches up from a
//! snapshot or log whose configurations may all predate its addition, and
//! is not a removed member. The core sends a removed member one last
//! AppendEntries when its removal commits, so that it learns of the
//! commit; a node that misses it (down, cut off, or still installing a
//! snapshot) asks the group's members instead ([`removal`](super::removal)).
//! Crash safety:
//! - a crash before the removal record leaves the group in the journal;
//!   the restarted replica holds the configuration without itself, never
//!   campaigns (the core's rule for non-voters), and is retired on the
//!   group leader's answer ([`removal`](super::removal));
//! - a crash after it leaves at most an orphan snapshot directory, which
//!   the next start deletes ([`MultiNodeBuilder::start`](super::MultiNodeBuilder::start)
//!   sweeps `groups/<id>` directories of groups the journal does not hold).
//!
//! A replica is never deleted while its configuration is uncommitted: if
//! the removal were rolled back, the replica would again be a voter whose
//! log may be needed for a quorum.
//!
//! A replica hosted on demand is **joining** until a configuration it
//! holds lists its node (`listed` below, remembered per replica): it never
//! counts as removed before. What it
//! receives first predates its addition as a learner — the leader's latest
//! snapshot (taken before the configuration entry that added the learner,
//! so its configuration does not list it) and the log entries between that
//! snapshot and that entry — so a committed configuration without it says
//! nothing about a removal. Retiring it then (and, with the tombstone,
//! refusing the group for good) failed every move whose snapshot took
//! longer to save and restore than the retirer's period: moves of groups
//! of tens of MB (issue 18).
//!
//! # A retirement the journal refuses
//!
//! The removal record is a journal write, and the journal refuses every
//! write once one has failed (a full disk, an EIO: [`journal`](super::journal)
//! invariant 4) — failed by this very record, or earlier by any group's
//! write (the whole-runtime simulation's seed 494: a full disk failed the
//! journal, then a move took the node's only replica away). The replica
//! has stopped and left the node's table by then, but its log, hard state
//! (term, vote) and snapshot are still on disk, and nothing says it was
//! removed. The rules:
//!
//! - the group stays **retiring** on the node
//!   ([`MultiNode::pending_retirements`](super::MultiNode::pending_retirements),
//!   and an `error` event with the group, the reason, the fence and the
//!   error): it is not hosted on demand and not created again while its
//!   tombstone is not written — a new replica there would either take over
//!   the old replica's log, or, once the old one comes back at a restart,
//!   be a second replica of the group over one log;
//! - [`Journal::create_group`](super::Journal::create_group) of a group the
//!   journal holds is an error, never a silent reuse of the old log;
//! - the tombstone is retried on every round of the retirer; it is written
//!   once the journal accepts writes again, which for a failed journal
//!   means a restart of the node (which is what an operator does to a node
//!   whose storage failed). The restart replays the journal without the
//!   removal: the old replica starts again from its own log, hard state
//!   and snapshot files (deleted only after a durable tombstone) — the
//!   state of "a crash before the removal record" above, and safe for the
//!   same reason: a server that keeps its durable state may rejoin or be
//!   told of its removal (thesis §4.2.2); it is retired again by the rule
//!   that retired it, or on a member's answer ([`removal`](super::removal)).
//!   If the group was moved back to the node meanwhile, the old replica
//!   with its intact state is the one the leader catches up.
//!
//! # Moving back
//!
//! Operators move a replica away for maintenance and back again. A
//! group's members are named by their node's id, so the new replica on a
//! node the group left answers under the id of the old one, without its
//! log or its votes, while members that lag behind still hold older
//! configurations listing that id as a voter. Unguarded, the newcomer
//! counts itself a voter of the old configurations it catches up through
//! (a stale snapshot makes it one again): it could campaign, or give a
//! lagging candidate the vote the old replica already gave, and complete
//! a quorum of an old configuration for a leader missing committed
//! entries (the whole-runtime simulation found this, seed 1864). A
//! stale leader could also count its acknowledgements.
//!
//! Instead of a fresh id per replica (CockroachDB never reuses a replica
//! id; TiKV gives each peer a new id and checks the region epoch), which
//! would touch every place a member id stands for its node (links,
//! coalesced heartbeats, membership queries, placement, balancing), the
//! node keeps the old replica's **tombstone with a fence** in its journal
//! ([`Journal::fence`](super::Journal::fence), written with the removal
//! record, durable before any file is deleted, kept across checkpoints
//! and while a later replica is hosted): `(index, term)`, the index of
//! the committed configuration that removed the old replica and the
//! latest term it knew (read once it stopped: it never voted in a later
//! one). Any later replica of the group on the node starts behind it
//! ([`Config::membership_fence`](crate::core::Config::membership_fence)):
//!
//! - it starts in the fence's term, so leaders of earlier terms, which may
//!   not hold the removal, are refused (Raft §5.1); leaders of that term or
//!   later hold the committed removal (Leader Completeness, §5.4);
//! - it neither campaigns nor grants a vote while its configuration in
//!   force is at or below the fence's index (the old replica's history),
//!   and never grants a vote in a term up to the fence's (the old replica
//!   may have voted there). Past the fence its log holds the removal, so a
//!   candidate it votes for holds the removal too (the election
//!   restriction, §5.4.1) and counts it only by a configuration that added
//!   it back;
//! - configurations at or below the fence's index neither make it
//!   "listed" nor retire it (they removed its predecessor), here and in
//!   [`removal`](super::removal).
//!
//! The fence only goes up (a later replica's tombstone keeps the higher
//! of both parts). A removal recorded by an older journal, without a
//! fence, reads as [`LEGACY_FENCE`](super::journal::LEGACY_FENCE): the
//! node keeps refusing that group, as it did then.
//!
//! What a fresh replica id would give and the fence does not: messages the
//! old replica sent are not told apart from the new one's by their sender.
//! An acknowledgement of the old replica still in flight when the group
//! adds the node back (same leader, same term) counts as the new
//! replica's progress up to an index below the configuration that added
//! it back, so only for entries committed already (a configuration change
//! waits for the previous one to commit); the leader then probes back down
//! on the new replica's first refusal. It can make the move's catch-up
//! step end early, never an entry count as replicated that is not. An explicit [`create_group`](super::MultiNode::create_group)
//! of a group the node left is still refused: it would bootstrap a voter
//! with an empty log; a move brings the group back as a learner.
//!
//! An empty replica (no configuration, log or snapshot yet) is an orphan
//! only once it has heard nothing from a leader for
//! [`HostingPolicy::orphan_after`]: while a big snapshot streams in, every
//! chunk is leader contact, however long the transfer takes.
//!
//! # Snapshots received at once
//!
//! A replica hosted on demand is empty, so its leader sends it a snapshot,
//! in chunks the replica's core buffers in memory until the snapshot is
//! complete (each core's buffer up to `max_snapshot_bytes`, 1 GiB by
//! default). Since any node certificate may host groups here, and every
//! chunk keeps its group from being an orphan, these buffers alone could
//! hold up to [`HostingPolicy::max_groups`] times 1 GiB. Their sum is
//! bounded by one budget per node, [`HostingPolicy::snapshot_receive_bytes`]
//! (`runtime::receive_budget`): each group's node task takes from it what a
//! chunk may add before the core takes the chunk in, and gives back what
//! the buffer lets go (installed, replaced by another snapshot, abandoned
//! on a new term or once the log committed past it, or the replica
//! stopped or retired). A chunk the budget cannot cover abandons its
//! reception, releasing its bytes; the leader sees a lost chunk and starts
//! over (Raft §5.3, thesis §5.4 tolerate loss). Abandoning instead of
//! waiting means that receptions needing more than the budget together
//! cannot each hold part of it for ever; a reception alone always fits.
//! What the budget does not bound: a holder of a node certificate can
//! still fill it with receptions it keeps alive (any message of its, a
//! heartbeat or a repeated chunk, counts as leader contact, so those
//! groups are never retired as orphans), which holds up the node's real
//! transfers for as long as it goes on; and it can complete snapshots,
//! one after another, for groups whose configuration never lists this
//! node, which are then neither orphans nor removed and are kept (in
//! memory and on disk) until an operator removes them. Node certificates
//! are trusted to follow the protocol (`core::inbound`); the budget bounds
//! what is held at once.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::time::Instant;
use tracing::{info, warn};

use super::GroupId;
use crate::core::{Body, Index, Message, NodeId, Term};
use crate::runtime::PeerStatus;
use crate::storage::vfs::{OpenMode, Vfs};

/// How a node hosts groups on demand (see the [module documentation](self)).
#[derive(Clone, Debug)]
pub struct HostingPolicy {
    /// Whether a leader's message for an unknown group starts a replica.
    pub on_demand: bool,
    /// The most groups the node hosts; beyond it no replica is started on
    /// demand (groups created explicitly are not limited).
    pub max_groups: usize,
    /// How long a replica started on demand may stay without any
    /// configuration before it is removed.
    pub orphan_after: Duration,
    /// How long after removing a group's replica the node refuses to host
    /// it again on demand.
    pub quarantine: Duration,
    /// The most bytes the node's groups together hold in snapshot receive
    /// buffers (default [`DEFAULT_SNAPSHOT_RECEIVE_BYTES`], 2 GiB). A chunk
    /// that would take the total past it abandons its reception, which
    /// the group's leader starts over (see "Snapshots received at once"
    /// in the [module documentation](self)). It also caps each replica's
    /// largest snapshot (`max_snapshot_bytes`, 1 GiB by default): one
    /// larger than the budget could never be received here. A budget
    /// below 1 MiB is taken as 1 MiB (a budget below a chunk would refuse
    /// every snapshot, and its leaders would start over for ever).
    pub snapshot_receive_bytes: u64,
}

impl HostingPolicy {
    /// [`HostingPolicy::snapshot_receive_bytes`] as used: at least 1 MiB.
    pub(crate) fn receive_budget_bytes(&self) -> u64 {
        self.snapshot_receive_bytes.max(1 << 20)
    }
}

/// The default of [`HostingPolicy::snapshot_receive_bytes`]: 2 GiB, twice
/// the largest snapshot a replica takes by default
/// ([`DEFAULT_MAX_SNAPSHOT_BYTES`](crate::core::config::DEFAULT_MAX_SNAPSHOT_BYTES)),
/// so that the largest snapshot always fits beside another as large (two
/// big moves to this node at once), or beside any number of small ones.
pub const DEFAULT_SNAPSHOT_RECEIVE_BYTES: u64 = 2 * crate::core::config::DEFAULT_MAX_SNAPSHOT_BYTES;

impl Default for HostingPolicy {
    fn default() -> Self {
        HostingPolicy {
            on_demand: true,
            max_groups: 100_000,
            orphan_after: Duration::from_secs(30),
            quarantine: Duration::from_secs(2),
            snapshot_receive_bytes: DEFAULT_SNAPSHOT_RECEIVE_BYTES,
        }
    }
}

/// Whether `msg` is one that may start a replica of its group here: a
/// leader's AppendEntries, InstallSnapshot or heartbeat addressed to this
/// node.
pub(crate) fn may_host(me: NodeId, msg: &Message) -> bool {
    msg.to == me
        && msg.term > 0
        && matches!(
            msg.body,
            Body::AppendEntries { .. } | Body::InstallSnapshot { .. } | Body::Heartbeat { .. }
        )
}

/// Why a hosted replica should be retired, if it should.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Retire {
    /// A committed configuration no longer lists this node: the index of
    /// that configuration and the term it was learned in (the fence of a
    /// later replica of the group here, with the replica's last term).
    Removed((Index, Term)),
    /// A replica with no configuration, log or snapshot outlived
    /// [`HostingPolicy::orphan_after`].
    Orphan,
}

/// Whether the replica whose status is `st` on node `me` should be
/// retired. `quiet_for`: how long it has been hosted without hearing from
/// a leader (since it was hosted, or since the leader's last message,
/// whichever is later).
///
/// `listed` says whether this replica has ever held a configuration that
/// lists its node: a replica hosted on demand starts from the leader's
/// snapshot or log, whose configurations may all predate the node's
/// addition, so "a committed configuration without me" means removal only
/// after the node was a member (a learner whose leader crashed right after
/// sending such a snapshot was once retired by mistake, and its move never
/// finished: `multi_moves`'s leader-crash test; a joining replica of a
/// 100 MB group was retired by the snapshot it caught up through:
/// `multi_bigmove`).
pub(crate) fn retire_reason(
    me: NodeId,
    st: &PeerStatus,
    quiet_for: Duration,
    policy: &HostingPolicy,
    listed: bool,
    fence: Index,
) -> Option<Retire> {
    if st.fatal.is_some() {
        return None; // a failed node keeps its state for inspection
    }
    if st.config_index == 0 {
        let empty = st.last_index == 0 && st.snapshot_index == 0 && st.members.is_empty();
        return (empty && quiet_for >= policy.orphan_after).then_some(Retire::Orphan);
    }
    let listed_now = st.members.iter().any(|m| m.id == me);
    // Configurations up to the fence are an earlier replica's history,
    // which this one catches up through: its removal there is not ours.
    (listed && !listed_now && !st.joint && st.config_index > fence && st.commit >= st.config_index)
        .then_some(Retire::Removed((st.config_index, st.term)))
}

/// Groups removed recently, refused on demand for the quarantine.
#[derive(Debug, Default)]
pub(crate) struct Tombstones {
    removed: HashMap<GroupId, Instant>,
}

impl Tombstones {
    /// Records that `group` was removed now.
    pub(crate) fn bury(&mut self, group: GroupId) {
        self.removed.insert(group, Instant::now());
    }

    /// Whether `group` was removed less than `quarantine` ago (forgets
    /// tombstones that expired).
    pub(crate) fn quarantined(&mut self, group: GroupId, quarantine: Duration) -> bool {
        self.removed.retain(|_, at| at.elapsed() < quarantine);
        self.removed.contains_key(&group)
    }
}

/// The directory of `group`'s files under a node's data directory.
fn group_dir(dir: &Path, group: GroupId) -> PathBuf {
    dir.join("groups").join(group.to_string())
}

/// The marker that says a replica of `group` on this node once held a
/// configuration listing the node (see [`retire_reason`]'s `listed`).
fn listed_marker(dir: &Path, group: GroupId) -> PathBuf {
    group_dir(dir, group).join("listed")
}

/// Records durably that this node's replica of `group` held a
/// configuration listing the node: after a restart, a configuration
/// without the node then means a removal (a crash between seeing the
/// removal committed and retiring must not leave the replica for good),
/// while a replica that never was listed (hosted on demand, still catching
/// up through configurations that predate its addition) stays protected.
pub(crate) fn mark_listed(fs: &dyn Vfs, dir: &Path, group: GroupId) -> std::io::Result<()> {
    let gdir = group_dir(dir, group);
    fs.create_dir_all(&gdir)?;
    let file = fs.open(&listed_marker(dir, group), OpenMode::CreateTruncate)?;
    file.sync_all()?;
    fs.sync_dir(&gdir)?;
    fs.sync_dir(&dir.join("groups"))
}

/// Whether [`mark_listed`] recorded `group` (an unreadable directory reads
/// as not listed: the replica is then only retired on a leader's word,
/// see [`super::removal`]).
pub(crate) fn was_listed(fs: &dyn Vfs, dir: &Path, group: GroupId) -> bool {
    fs.list_dir(&group_dir(dir, group))
        .is_ok_and(|names| names.iter().any(|n| n == "listed"))
}

/// The marker that says this node founded `group` (see [`mark_founded`]).
fn founded_marker(dir: &Path, group: GroupId) -> PathBuf {
    group_dir(dir, group).join("founded")
}

/// Records durably, before the journal's `Create` record of `group`, that
/// this node creates it with its founding members
/// ([`MultiNode::create_group`](super::MultiNode::create_group)): a
/// failure between that record and the bootstrap leaves a replica with no
/// configuration, which the founding call, retried, bootstraps then; a
/// replica hosted on demand (no marker) also starts with none, and is
/// never bootstrapped: its configuration comes from the group's leader.
pub(crate) fn mark_founded(fs: &dyn Vfs, dir: &Path, group: GroupId) -> std::io::Result<()> {
    let gdir = group_dir(dir, group);
    fs.create_dir_all(&gdir)?;
    let file = fs.open(&founded_marker(dir, group), OpenMode::CreateTruncate)?;
    file.sync_all()?;
    fs.sync_dir(&gdir)?;
    fs.sync_dir(&dir.join("groups"))
}

/// Whether [`mark_founded`] recorded `group` (an unreadable directory reads
/// as not founded here: the replica is then never bootstrapped again).
pub(crate) fn was_founded(fs: &dyn Vfs, dir: &Path, group: GroupId) -> bool {
    fs.list_dir(&group_dir(dir, group))
        .is_ok_and(|names| names.iter().any(|n| n == "founded"))
}

/// Deletes `group`'s [`mark_listed`] and [`mark_founded`] markers that
/// are present, durably (the group's directory synced): before a replica
/// hosted on demand is recorded, so that an earlier replica's markers
/// whose deletion failed at its removal ([`delete_group_files`] only logs
/// that) never pass for the new replica's. A leftover `listed` would make
/// the new replica retire at a configuration past the fence that predates
/// its addition (see [`retire_reason`]).
pub(crate) fn clear_markers(fs: &dyn Vfs, dir: &Path, group: GroupId) -> std::io::Result<()> {
    let mut deleted = false;
    for (marker, present) in [
        (listed_marker(dir, group), was_listed(fs, dir, group)),
        (founded_marker(dir, group), was_founded(fs, dir, group)),
    ] {
        if present {
            fs.remove_file(&marker)?;
            deleted = true;
        }
    }
    if deleted {
        fs.sync_dir(&group_dir(dir, group))?;
    }
    Ok(())
}

/// Deletes the snapshot files of `group` (after its removal from the
/// journal) and its [`mark_listed`] and [`mark_founded`] markers. Failures are logged: a
/// leftover file is swept at the next start.
pub(crate) fn delete_group_files(fs: &dyn Vfs, dir: &Path, group: GroupId) {
    for (marker, present) in [
        (listed_marker(dir, group), was_listed(fs, dir, group)),
        (founded_marker(dir, group), was_founded(fs, dir, group)),
    ] {
        if present && let Err(e) = fs.remove_file(&marker) {
            warn!(group, path = %marker.display(), error = %e, "cannot delete a removed group's file");
        }
    }
    let snaps = group_dir(dir, group).join("snapshots");
    let Ok(names) = fs.list_dir(&snaps) else {
        return;
    };
    for name in names {
        let path = snaps.join(&name);
        if fs.is_dir(&path) {
            continue;
        }
        if let Err(e) = fs.remove_file(&path) {
            warn!(group, path = %path.display(), error = %e, "cannot delete a removed group's file");
        }
    }
    if let Err(e) = fs.sync_dir(&snaps) {
        warn!(group, error = %e, "cannot sync a removed group's directory");
    }
}

/// Deletes the files of every group directory whose group the journal
/// does not hold (left by a crash between a removal record and the
/// deletion of the files).
pub(crate) fn sweep(fs: &dyn Vfs, dir: &Path, held: &[GroupId]) {
    let Ok(names) = fs.list_dir(&dir.join("groups")) else {
        return;
    };
    for name in names {
        let Ok(group) = name.parse::<GroupId>() else {
            continue;
        };
        if !held.contains(&group) {
            info!(
                group,
                "deleting the files of a group removed before a crash"
            );
            delete_group_files(fs, dir, group);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::Role;
    use crate::runtime::MemberStatus;

    fn status(members: &[(NodeId, bool)], config_index: u64, commit: u64) -> PeerStatus {
        let mut st = PeerStatus {
            id: 1,
            role: Role::Follower,
            ..Default::default()
        };
        st.members = members
            .iter()
            .map(|(id, voter)| MemberStatus {
                id: *id,
                addr: None,
                voter: *voter,
                matched: None,
                next: None,
            })
            .collect();
        st.config_index = config_index;
        st.commit = commit;
        st.last_index = commit.max(config_index);
        st
    }

    #[test]
    fn only_a_committed_configuration_without_me_retires_a_replica() {
        let p = HostingPolicy::default();
        let me = 7;
        let t = Duration::ZERO;
        // Still a voter or learner: kept.
        assert_eq!(
            retire_reason(me, &status(&[(1, true), (7, true)], 5, 9), t, &p, true, 0),
            None
        );
        assert_eq!(
            retire_reason(me, &status(&[(1, true), (7, false)], 5, 9), t, &p, true, 0),
            None
        );
        // Removed, but the removal is not known committed: kept (it may be
        // rolled back and this replica's log needed).
        assert_eq!(
            retire_reason(me, &status(&[(1, true)], 5, 4), t, &p, true, 0),
            None
        );
        // Joint: kept until the joint configuration is left.
        let mut joint = status(&[(1, true)], 5, 9);
        joint.joint = true;
        assert_eq!(retire_reason(me, &joint, t, &p, true, 0), None);
        // Removed and committed: retired.
        assert_eq!(
            retire_reason(me, &status(&[(1, true)], 5, 5), t, &p, true, 0),
            Some(Retire::Removed((5, 0)))
        );
        // A replica that never held a configuration listing its node (a
        // learner still catching up from a snapshot taken before its
        // addition) is not removed: it was never a member.
        assert_eq!(
            retire_reason(me, &status(&[(1, true)], 5, 5), t, &p, false, 0),
            None
        );
        // A failed node keeps its state.
        let mut failed = status(&[(1, true)], 5, 5);
        failed.fatal = Some("disk".into());
        assert_eq!(retire_reason(me, &failed, t, &p, true, 0), None);
    }

    #[test]
    fn a_replica_moved_back_is_not_retired_by_its_predecessors_removal() {
        let p = HostingPolicy::default();
        let (me, t) = (7, Duration::ZERO);
        // The earlier replica's removal (committed at 5) is the fence: the
        // new replica catches up through it, having been listed by the
        // older configurations (or by a leftover marker).
        let removal = status(&[(1, true), (2, true)], 5, 5);
        assert_eq!(retire_reason(me, &removal, t, &p, true, 5), None);
        // Its own removal, past the fence, retires it.
        let mut later = status(&[(1, true), (2, true)], 9, 9);
        later.term = 6;
        assert_eq!(
            retire_reason(me, &later, t, &p, true, 5),
            Some(Retire::Removed((9, 6)))
        );
        // Without the fence the predecessor's removal would retire it.
        assert_eq!(
            retire_reason(me, &removal, t, &p, true, 0),
            Some(Retire::Removed((5, 0)))
        );
    }

    #[test]
    fn a_joining_replica_is_not_removed_by_the_configuration_it_catches_up_through() {
        let p = HostingPolicy::default();
        let me = 7;
        let t = Duration::ZERO;
        // The leader's snapshot at 300 predates the entry that added 7 as
        // a learner: installed and committed, it does not list 7.
        let mut stale = status(&[(1, true), (2, true), (3, true)], 300, 300);
        stale.snapshot_index = 300;
        assert_eq!(retire_reason(me, &stale, t, &p, false, 0), None);
        // Log entries after it, a configuration change of another move
        // among them, neither.
        let mut other_move = status(&[(1, true), (2, true), (4, true)], 310, 320);
        other_move.snapshot_index = 300;
        assert_eq!(retire_reason(me, &other_move, t, &p, false, 0), None);
        // Once listed (no longer joining), a later committed configuration
        // without 7 removes it.
        assert_eq!(
            retire_reason(me, &other_move, t, &p, true, 0),
            Some(Retire::Removed((310, 0)))
        );
    }

    #[test]
    fn an_empty_replica_is_an_orphan_only_after_the_timeout() {
        let p = HostingPolicy::default();
        let empty = status(&[], 0, 0);
        assert_eq!(
            retire_reason(7, &empty, Duration::from_secs(1), &p, false, 0),
            None
        );
        assert_eq!(
            retire_reason(7, &empty, p.orphan_after, &p, false, 0),
            Some(Retire::Orphan)
        );
        // One that received entries (but no configuration yet) is kept.
        let mut fed = empty.clone();
        fed.last_index = 3;
        assert_eq!(retire_reason(7, &fed, p.orphan_after, &p, false, 0), None);
    }

    #[test]
    fn only_a_leaders_append_or_snapshot_to_me_may_host() {
        let msg = |to, term, body| Message {
            from: 1,
            to,
            term,
            body,
        };
        let append = Body::AppendEntries {
            prev_index: 0,
            prev_term: 0,
            entries: Vec::new(),
            commit: 0,
        };
        assert!(may_host(7, &msg(7, 3, append.clone())));
        assert!(
            !may_host(7, &msg(8, 3, append.clone())),
            "not addressed to me"
        );
        assert!(!may_host(7, &msg(7, 0, append)), "term 0");
        let vote = Body::RequestVote {
            last_index: 9,
            last_term: 3,
            pre_vote: false,
            transfer: false,
        };
        assert!(!may_host(7, &msg(7, 3, vote)));
    }

    #[test]
    fn a_removed_group_is_quarantined_then_forgotten() {
        let mut t = Tombstones::default();
        assert!(!t.quarantined(5, Duration::from_secs(60)));
        t.bury(5);
        assert!(t.quarantined(5, Duration::from_secs(60)));
        assert!(!t.quarantined(6, Duration::from_secs(60)));
        assert!(!t.quarantined(5, Duration::ZERO));
        assert!(t.removed.is_empty());
    }

    #[test]
    fn the_listed_marker_survives_a_restart_and_goes_with_the_group_files() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let fs = crate::storage::vfs::real();
        let dir = tmp.path();
        assert!(!was_listed(&*fs, dir, 3), "nothing recorded yet");
        mark_listed(&*fs, dir, 3).expect("mark");
        assert!(was_listed(&*fs, dir, 3));
        assert!(!was_listed(&*fs, dir, 4), "per group");
        // A fresh handle (as after a restart) reads it from the disk.
        assert!(was_listed(&*crate::storage::vfs::real(), dir, 3));
        // Marking again is harmless; deleting the group's files removes it.
        mark_listed(&*fs, dir, 3).expect("mark again");
        delete_group_files(&*fs, dir, 3);
        assert!(!was_listed(&*fs, dir, 3));
    }

    /// The listing is durable once `mark_listed` returned: a crash right
    /// after it (the replica then sees its removal, a restart follows)
    /// leaves the marker, so the restarted replica counts as removed and
    /// is retired instead of waiting for a leader's word (teeth round 5,
    /// mutant 509: the marker's fsync skipped went unnoticed). Each of its
    /// three syncs is needed: the new marker's inode, its entry in the
    /// group's directory, and the group directory's entry in `groups/`.
    #[test]
    fn the_listed_marker_survives_a_crash_right_after_it_is_written() {
        use crate::storage::vfs::crash::CrashFs;
        let dir = Path::new("/node");
        let fs = CrashFs::new(dir);
        // As a started node has it: `groups/` durable, no directory of
        // group 3 yet (a replica hosted on demand that saved no snapshot).
        fs.create_dir_all(&dir.join("groups")).expect("groups");
        fs.sync_dir(dir).expect("sync the node directory");
        mark_listed(&fs, dir, 3).expect("mark");
        fs.crash();
        assert!(was_listed(&fs, dir, 3), "the listing was lost in a crash");
    }
}

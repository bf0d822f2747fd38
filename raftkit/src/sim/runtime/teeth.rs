//! Test-only runtime bugs ("teeth"): switches that make the runtime commit a
//! known defect, so that the simulation can show it catches each one.
//!
//! They exist only in builds with the `sim` feature: the runtime checks them
//! under `#[cfg(feature = "sim")]`, so a production build contains neither
//! the switches nor the branches. A switch is per thread: a simulation runs
//! a whole cluster on one thread (its current-thread executor), so
//! simulations running in parallel on other threads never see it.

use std::cell::Cell;

/// A runtime defect the simulation must catch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Tooth {
    /// The node task acknowledges appends (releases the messages waiting
    /// for durability) after its storage failed, as if the write had been
    /// durable. Raft §5.2/§5.3 need an acknowledged entry to be on stable
    /// storage.
    AckAfterStorageFailure,
    /// The node compacts its log behind a snapshot whose save failed: the
    /// entries exist nowhere on disk any more.
    CompactAfterFailedSave,
    /// The apply task applies a write a session already answered (a retry)
    /// again instead of answering it from the session table (thesis §6.3).
    ReapplyRetriedWrite,
    /// The apply task serves a read before its applied index reaches the
    /// read index (thesis §6.4 step 4).
    ReadBeforeApplied,
    /// The leader stamps entries with its raw wall clock instead of
    /// clamping it to its term's anchor plus its monotonic clock: a clock
    /// jump moves replicated time and expires sessions early (`session.rs`
    /// rule 7).
    UnclampedStamps,
    /// With several groups per node: the node's demultiplexer hands one
    /// message in eight of a group to the same node's replica of the next
    /// group (a group-tag mix-up; `multi` invariant "groups never see each
    /// other's messages"). Injected by the simulation's transport, as the
    /// multi-group links do not run in it.
    GroupTagMixUp,
    /// A leader serves `Consistency::Lease` reads from its state whether
    /// or not its lease holds (thesis §6.4.1): a deposed leader that has not
    /// heard of its successor answers with what it has.
    LeaseWithoutLease,
    /// A member answering a `Consistency::Stale` read reports the leader's
    /// commit index as the index it applied: the read claims to be fresher
    /// than the state it was served from.
    StaleOverstated,
    /// A replica brought back to a node it was moved away from starts
    /// without its membership fence: a new, empty replica under the id of
    /// the old one that counts itself a voter of the old configurations
    /// (`moves.rs`, "Moving back"). The mover also prefers moves back.
    RehostRemovedReplica,
}

impl Tooth {
    /// Every tooth.
    pub const ALL: [Tooth; 9] = [
        Tooth::AckAfterStorageFailure,
        Tooth::CompactAfterFailedSave,
        Tooth::ReapplyRetriedWrite,
        Tooth::ReadBeforeApplied,
        Tooth::UnclampedStamps,
        Tooth::GroupTagMixUp,
        Tooth::LeaseWithoutLease,
        Tooth::StaleOverstated,
        Tooth::RehostRemovedReplica,
    ];

    /// The name `RAFTKIT_SIM_RUNTIME_BUG` uses.
    pub fn name(self) -> &'static str {
        match self {
            Tooth::AckAfterStorageFailure => "ack_after_storage_failure",
            Tooth::CompactAfterFailedSave => "compact_after_failed_save",
            Tooth::ReapplyRetriedWrite => "reapply_retried_write",
            Tooth::ReadBeforeApplied => "read_before_applied",
            Tooth::UnclampedStamps => "unclamped_stamps",
            Tooth::GroupTagMixUp => "group_tag_mix_up",
            Tooth::LeaseWithoutLease => "lease_without_lease",
            Tooth::StaleOverstated => "stale_overstated",
            Tooth::RehostRemovedReplica => "rehost_removed_replica",
        }
    }

    /// The tooth named `name`.
    pub fn from_name(name: &str) -> Option<Tooth> {
        Tooth::ALL.into_iter().find(|t| t.name() == name.trim())
    }

    fn bit(self) -> u32 {
        1 << (self as u32)
    }
}

thread_local! {
    static ARMED: Cell<u32> = const { Cell::new(0) };
}

/// Whether `tooth` is armed on this thread.
pub(crate) fn on(tooth: Tooth) -> bool {
    ARMED.with(|a| a.get() & tooth.bit() != 0)
}

/// Arms `teeth` on this thread until the guard is dropped.
pub(crate) struct Armed(u32);

impl Armed {
    pub(crate) fn new(teeth: &[Tooth]) -> Armed {
        let bits = teeth.iter().fold(0, |b, t| b | t.bit());
        Armed(ARMED.with(|a| a.replace(bits)))
    }
}

impl Drop for Armed {
    fn drop(&mut self) {
        ARMED.with(|a| a.set(self.0));
    }
}

//! The probe: a transparent wrapper around the user's state machine that
//! tells the simulation what every replica applied.
//!
//! Peers of the simulation run `Probe<S>`: the runtime sees the user's
//! commands, outputs, error policies and snapshots unchanged (a probe's
//! snapshot is the user's snapshot plus one counter). Each apply is
//! recorded with its *position* (the number of user writes the replica has
//! applied, carried in snapshots so that a restored replica continues the
//! count), the encoded command, the encoded output and a hash of the
//! user's snapshot bytes after it.
//!
//! Invariant checked ([`Applies`]): replicas that applied the same position
//! applied the same command, got the same output and reached the same state
//! (a deterministic state machine on the same log). A difference is
//! reported as diverging replicas: either the logs differ (a Raft safety
//! bug) or the handler is not deterministic (a user bug).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::exec::fnv;
use crate::context::Ctx;
use crate::core::NodeId;
use crate::state_machine::{CodecError, ErrorPolicy, StateMachine, decode, encode};

/// One apply at one position, as the first replica recorded it.
#[derive(Clone, Debug)]
pub(crate) struct Applied {
    pub(crate) command: Vec<u8>,
    /// The log index of the entry (the same on every replica).
    pub(crate) index: u64,
    output: Vec<u8>,
    state: u64,
    node: NodeId,
    at: tokio::time::Instant,
}

/// What the replicas applied, position by position.
#[derive(Default)]
pub(crate) struct Applies {
    pub(crate) by_position: BTreeMap<u64, Applied>,
    /// The first divergence seen.
    pub(crate) divergence: Option<String>,
    /// Applies made off the replica's apply task: on its node task, which
    /// applies a lone small batch itself when the peer opted in
    /// (`PeerBuilder::apply_small_batches_inline`).
    pub(crate) inline: u64,
}

impl Applies {
    fn record(&mut self, node: NodeId, position: u64, new: Applied) {
        let Some(old) = self.by_position.get(&position) else {
            self.by_position.insert(position, new);
            return;
        };
        if self.divergence.is_some() {
            return;
        }
        let what = if old.command != new.command {
            Some("different commands (the replicated logs differ)")
        } else if old.output != new.output {
            Some("the same command with different outputs (a non-deterministic handler?)")
        } else if old.state != new.state {
            Some("the same command into different states (a non-deterministic handler?)")
        } else {
            None
        };
        if let Some(what) = what {
            self.divergence = Some(format!(
                "replicas {:#x} and {node:#x} applied {what} at write position {position} (log indexes {} and {}, commands {:02x?} and {:02x?}, outputs {:02x?} and {:02x?}, {:?} apart)",
                old.node,
                old.index,
                new.index,
                old.command,
                new.command,
                old.output,
                new.output,
                new.at - old.at
            ));
        }
    }
}

/// Where a replica's probe reports. It is set as a task-local ([`PROBE`])
/// for the apply task of each replica and for the start of the replica's
/// peer; a probe takes it when it is made (its `Default` in the peer's
/// start, its `restore` on the apply task) and keeps it, so that it
/// reports an apply wherever it runs: on the apply task, or on the node
/// task when the peer applies a small batch there
/// (`PeerBuilder::apply_small_batches_inline`), which has no task-local.
#[derive(Clone)]
pub(crate) struct ProbeCtx {
    pub(crate) node: NodeId,
    pub(crate) applies: Arc<Mutex<Applies>>,
}

tokio::task_local! {
    pub(crate) static PROBE: ProbeCtx;
}

/// The user's state machine `S`, counting and reporting its applies.
pub struct Probe<S> {
    inner: S,
    position: u64,
    /// Where this replica's applies are reported (see [`ProbeCtx`]); none
    /// outside the simulation's replicas.
    report: Option<ProbeCtx>,
}

/// The replica the probe being made belongs to (see [`ProbeCtx`]).
fn current() -> Option<ProbeCtx> {
    PROBE.try_with(ProbeCtx::clone).ok()
}

impl<S: Default> Default for Probe<S> {
    fn default() -> Self {
        Probe {
            inner: S::default(),
            position: 0,
            report: current(),
        }
    }
}

#[derive(Serialize, Deserialize)]
struct ProbeSnapshot {
    position: u64,
    state: Vec<u8>,
}

impl<S: StateMachine> StateMachine for Probe<S> {
    type Write = S::Write;
    type WriteOutput = S::WriteOutput;
    type Read = S::Read;
    type ReadOutput = S::ReadOutput;
    const NAME: &'static str = S::NAME;
    const SCHEMA_FINGERPRINT: u64 = S::SCHEMA_FINGERPRINT;

    fn schema() -> crate::schema::Schema {
        S::schema()
    }

    fn apply(&mut self, ctx: &mut Ctx, command: Self::Write) -> Self::WriteOutput {
        let encoded = encode("command", &command).unwrap_or_default();
        let output = self.inner.apply(ctx, command);
        self.position += 1;
        let index = ctx.index();
        // The probe's own replica; a probe made where no replica was set
        // (none is, today) reports through the task's. Only the apply task
        // has the task-local: an apply without it ran on the node task.
        let task = current();
        let inline = task.is_none();
        if let Some(ctx) = self.report.clone().or(task) {
            let state = self.inner.snapshot().map(|b| fnv(&b)).unwrap_or(0);
            let applied = Applied {
                command: encoded,
                index,
                output: encode("output", &output).unwrap_or_default(),
                state,
                node: ctx.node,
                at: tokio::time::Instant::now(),
            };
            if let Ok(mut a) = ctx.applies.lock() {
                a.record(ctx.node, self.position, applied);
                a.inline += u64::from(inline);
            }
        }
        output
    }

    fn query(&self, ctx: &Ctx, query: Self::Read) -> Self::ReadOutput {
        self.inner.query(ctx, query)
    }

    fn error_policy(command: &Self::Write) -> ErrorPolicy {
        S::error_policy(command)
    }

    fn handler_name(command: &Self::Write) -> &'static str {
        S::handler_name(command)
    }

    fn query_name(query: &Self::Read) -> &'static str {
        S::query_name(query)
    }

    fn snapshot(&self) -> Result<Vec<u8>, CodecError> {
        encode(
            "probe snapshot",
            &ProbeSnapshot {
                position: self.position,
                state: self.inner.snapshot()?,
            },
        )
    }

    /// The inner state machine's copy, if it gives one, with the probe's
    /// position as of now: the same bytes `snapshot` gives here.
    fn snapshot_copy(&self) -> Option<crate::state_machine::SnapshotCopy> {
        let state = self.inner.snapshot_copy()?;
        let position = self.position;
        Some(crate::state_machine::SnapshotCopy::new(move || {
            encode(
                "probe snapshot",
                &ProbeSnapshot {
                    position,
                    state: state.encode()?,
                },
            )
        }))
    }

    fn restore(data: &[u8]) -> Result<Self, CodecError> {
        let snap: ProbeSnapshot = decode("probe snapshot", data)?;
        Ok(Probe {
            inner: S::restore(&snap.state)?,
            position: snap.position,
            report: current(),
        })
    }
}

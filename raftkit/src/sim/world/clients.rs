//! The clients: each runs one operation at a time (put, get or
//! compare-and-swap on a random key, writes with unique values), retries on
//! "not the leader" and unknown outcomes, gives up after a deadline (the
//! outcome then stays unknown), and records every invocation and outcome
//! in the history the linearizability checker judges.

use std::collections::BTreeMap;

use rand::Rng;

use super::{Event, Step, World};
use crate::core::{Index, NodeId};
use crate::sim::kv::SimKvWrite;
use crate::sim::linearizability::{Key, KvOp, KvOutcome, OpId, Value};
use crate::sim::options::FailureKind;
use crate::sim::oracle::Violation;
use crate::state_machine::encode;

/// How long a client waits for an operation's outcome.
pub(super) const OP_TIMEOUT_MS: u64 = 400;
/// How long a client waits for one attempt of a read.
const READ_ATTEMPT_MS: u64 = 120;

pub(super) struct InFlight {
    pub(super) seq: u64,
    pub(super) op: KvOp,
    pub(super) id: OpId,
    pub(super) attempt: u32,
}

#[derive(Default)]
pub(super) struct Client {
    pub(super) hint: Option<NodeId>,
    pub(super) op: Option<InFlight>,
    pub(super) seq: u64,
    pub(super) counter: u64,
    pub(super) seen: BTreeMap<Key, Option<Value>>,
}

pub(super) enum Reply {
    Done(KvOutcome),
    /// Definitely not applied: retry elsewhere.
    Retry(Option<NodeId>),
}

impl World {
    /// The operation's deadline passed: its outcome stays unknown (it may
    /// have been applied) and the client moves on.
    pub(super) fn client_deadline(&mut self, client: usize, seq: u64) {
        let c = &mut self.clients[client];
        if c.op.as_ref().is_some_and(|op| op.seq == seq) {
            c.op = None;
            let think = self.rng.random_range(0..20);
            self.schedule(think, Event::ClientNext { client });
        }
    }

    /// A read attempt got no answer in time: try again, anywhere.
    pub(super) fn read_attempt_timeout(&mut self, client: usize, seq: u64, attempt: u32) {
        let c = &mut self.clients[client];
        if let Some(op) = c.op.as_mut()
            && op.seq == seq
            && op.attempt == attempt
        {
            op.attempt += 1;
            c.hint = None;
            let attempt = op.attempt;
            self.schedule(
                1,
                Event::ClientSend {
                    client,
                    seq,
                    attempt,
                },
            );
        }
    }

    pub(super) fn start_op(&mut self, client: usize) {
        if self.clients[client].op.is_some()
            || self.now >= self.end_at.saturating_sub(OP_TIMEOUT_MS)
        {
            return;
        }
        let key = self.rng.random_range(0..self.opts.keys);
        let roll = self.rng.random_range(0..100);
        let c = &mut self.clients[client];
        c.counter += 1;
        let value = ((client as u64 + 1) << 32) | c.counter;
        let op = if roll < 45 {
            KvOp::Put { key, value }
        } else if roll < 80 {
            KvOp::Get { key }
        } else {
            let expected = c.seen.get(&key).copied().flatten();
            KvOp::Cas {
                key,
                expected,
                new: value,
            }
        };
        c.seq += 1;
        let seq = c.seq;
        let id = self.history.invoke(client as u64, op, self.now);
        c.op = Some(InFlight {
            seq,
            op,
            id,
            attempt: 0,
        });
        self.report.ops += 1;
        self.schedule(OP_TIMEOUT_MS, Event::ClientDeadline { client, seq });
        self.schedule(
            0,
            Event::ClientSend {
                client,
                seq,
                attempt: 0,
            },
        );
    }

    pub(super) fn client_send(&mut self, client: usize, seq: u64, attempt: u32) -> Step {
        let c = &self.clients[client];
        let Some(op) = c.op.as_ref() else {
            return Ok(());
        };
        if op.seq != seq || op.attempt != attempt {
            return Ok(());
        }
        let target = match c.hint {
            Some(h) => h,
            None => self.ids[self.rng.random_range(0..self.ids.len())],
        };
        let op_kind = op.op;
        let try_lease = self.rng.random_bool(0.4);
        if self.nodes[&target].paused(self.now) {
            // The request waits for the paused process.
            let wait = self.nodes[&target].paused_until - self.now;
            self.schedule(
                wait,
                Event::ClientSend {
                    client,
                    seq,
                    attempt,
                },
            );
            return Ok(());
        }
        let node = self.nodes.get_mut(&target).expect("node exists");
        let Some(raft) = node.raft.as_mut() else {
            // Connection refused: definitely not applied.
            self.reply(client, seq, Reply::Retry(None));
            return Ok(());
        };
        match SimKvWrite::from_op(&op_kind) {
            Some(cmd) => {
                let bytes = encode("command", &cmd).map_err(|e| {
                    FailureKind::Safety(Violation {
                        property: "encoding",
                        detail: e.to_string(),
                    })
                })?;
                match raft.propose(bytes) {
                    Ok((index, term)) => {
                        node.proposals.insert(index, (term, client, seq));
                    }
                    Err(crate::core::ProposeError::NotLeader(nl)) => {
                        self.reply(client, seq, Reply::Retry(nl.leader))
                    }
                    Err(_) => self.reply(client, seq, Reply::Retry(None)),
                }
            }
            None => {
                let key = op_kind.key();
                // A lease read, served at once from the commit index, when
                // the node's clock is current (module docs of `world`).
                let clock_current =
                    (self.now.saturating_sub(node.last_tick)) * 10 <= node.tick_tenths;
                if try_lease
                    && clock_current
                    && let Some(index) = raft.lease_read()
                {
                    node.read_waiting.push((index, client, seq, key));
                    self.report.lease_reads += 1;
                    self.check_lease(target, index)?;
                    self.serve_reads(target);
                    return self.process(target);
                }
                let ctx = self.next_ctx;
                self.next_ctx += 1;
                match raft.read_index(ctx) {
                    Ok(()) => {
                        node.reads.insert(ctx, (client, seq, key));
                        self.schedule(
                            READ_ATTEMPT_MS,
                            Event::ReadAttemptTimeout {
                                client,
                                seq,
                                attempt,
                            },
                        );
                    }
                    Err(nl) => self.reply(client, seq, Reply::Retry(nl.leader)),
                }
            }
        }
        self.process(target)
    }

    pub(super) fn reply(&mut self, client: usize, seq: u64, reply: Reply) {
        let c = &mut self.clients[client];
        let Some(op) = c.op.as_mut() else { return };
        if op.seq != seq {
            return;
        }
        match reply {
            Reply::Done(outcome) => {
                if let KvOutcome::Get(v) = &outcome {
                    c.seen.insert(op.op.key(), *v);
                }
                if self.healed && !matches!(op.op, KvOp::Get { .. }) {
                    self.write_after_heal = true;
                }
                self.history.complete(op.id, self.now, outcome);
                c.op = None;
                self.report.completed += 1;
                let think = self.rng.random_range(0..10);
                self.schedule(think, Event::ClientNext { client });
            }
            Reply::Retry(hint) => {
                c.hint = hint;
                op.attempt += 1;
                let attempt = op.attempt;
                let backoff = self.rng.random_range(2..15);
                self.schedule(
                    backoff,
                    Event::ClientSend {
                        client,
                        seq,
                        attempt,
                    },
                );
            }
        }
    }

    /// A lease read at `index` on `id` is linearizable at its start only if
    /// no node knows of a later commit: a lease holder is the only leader
    /// that can exist (thesis §6.4.1), and its commit index, of its own
    /// term, covers every entry committed before. Checked for every lease
    /// read a client gets and, on every tick of a leader, for the read it
    /// could serve then (a client read in the unsafe window is rare: the
    /// clients of a cut-off leader soon all wait on writes). The history
    /// check sees a stale value only when a client wrote that key.
    pub(super) fn check_lease(&self, id: NodeId, index: Index) -> Step {
        if let Some((other, commit)) = self
            .nodes
            .iter()
            .filter_map(|(o, n)| n.raft.as_ref().map(|r| (*o, r.log().committed())))
            .find(|(_, c)| *c > index)
        {
            return Err(FailureKind::Linearizability(format!(
                "node {id} holds a lease read at index {index} while node {other} committed {commit}"
            )));
        }
        Ok(())
    }
}

//! The journal's commit thread and its snapshot worker (see the
//! [journal's module documentation](super), invariant 1 and its last
//! paragraph).
//!
//! Invariants: a group's writes are applied and completed in the order its
//! sink gave them; while a write of a group carrying a received snapshot is
//! with the snapshot worker, the group is *held* and its later writes wait
//! in order, and no other group waits for it; a held write's snapshot is
//! saved (durable) before any record of its write is, and its compaction
//! is recorded only if the save succeeded, and only if the group was not
//! removed meanwhile (a save completing after its group's removal never
//! brings the group back: nothing of it, nor of the writes held behind
//! it, is recorded; its file is deleted at once unless the journal holds
//! the group again). Every write is completed, whatever happens: a panic
//! in a save (the store's bug, a file-system call that panics) is caught
//! and fails that write, the writes held behind it and the journal; a
//! poisoned journal lock fails every write, the held ones included. None
//! is left pending (a group's shutdown barrier is a write, and
//! [`Journal::close`](super::Journal::close) waits for the held ones).

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::mpsc;
use tracing::{debug, error, info};

use super::GroupId;
use super::{GATHER_YIELDS, Job, MAX_BATCH_BYTES, Msg, Save, Shared, State};
use crate::core::types::{Index, Term};
use crate::runtime::persist::{Done, Write};
use crate::storage::StorageError;

/// The commit thread: takes every queued write, applies them in order,
/// syncs once, completes each. A write carrying a received snapshot goes
/// to the snapshot worker first; its group's later writes wait in `held`
/// until it comes back saved, while other groups' writes go on.
pub(super) async fn run(
    shared: Arc<Shared>,
    mut rx: mpsc::UnboundedReceiver<Msg>,
    saver: mpsc::UnboundedSender<Save>,
) {
    let mut batch: Batched = Vec::new();
    // The groups whose received snapshot is being saved, each with its
    // writes queued behind it, in order.
    let mut held: BTreeMap<GroupId, Held> = BTreeMap::new();
    while let Some(first) = rx.recv().await {
        let Ok(mut st) = shared.state() else {
            // A panic while the lock was held: nothing can be recorded
            // any more. Every write fails, the held ones too (their
            // save's outcome could never be recorded, and a held
            // snapshot's handle back here would keep this queue open).
            let (Msg::Write(job) | Msg::Saved { job, .. }) = first;
            fail_closed(job);
            if !held.is_empty() {
                error!(
                    groups = held.len(),
                    "the journal's lock is poisoned (a panic while it was held): failing the writes held behind received snapshots"
                );
            }
            for h in std::mem::take(&mut held).into_values() {
                h.queue.into_iter().for_each(fail_closed);
            }
            continue;
        };
        let mut taker = Taker {
            st: &mut st,
            held: &mut held,
            saver: &saver,
            batch: &mut batch,
            bytes: 0,
        };
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            taker.take_msg(msg);
            if taker.batch.len() < 65_536 && taker.bytes < MAX_BATCH_BYTES {
                next = rx.try_recv().ok();
                let mut yields = 0;
                while next.is_none() && yields < GATHER_YIELDS {
                    std::thread::yield_now();
                    yields += 1;
                    next = rx.try_recv().ok();
                }
            }
        }
        let synced = st.sync(&shared.counters);
        if synced.is_ok()
            && let Err(e) = st.maybe_checkpoint(&shared.counters)
        {
            debug!(error = %e, "checkpoint failed");
        }
        drop(st);
        shared
            .counters
            .writes
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        for (done, token, r) in batch.drain(..) {
            let outcome = match (&synced, r) {
                (Err(e), _) => Err(e.clone()),
                (Ok(()), Err(e)) => Err(e),
                (Ok(()), Ok(())) => Ok(token),
            };
            let _ = done.send(outcome);
        }
    }
}

/// The writes one sync completes: where each one's outcome goes, its
/// token, and whether it was applied.
type Batched = Vec<(Done, u64, Result<(), StorageError>)>;

/// A group whose received snapshot is being saved.
#[derive(Default)]
struct Held {
    /// The group's writes that came meanwhile, in order.
    queue: VecDeque<Job>,
    /// What the journal held of the group when the save began: whether
    /// its log, and its tombstone's fence.
    as_of: (bool, Option<(Index, Term)>),
}

/// One batch of the commit thread in the making (under the journal's lock).
struct Taker<'a> {
    st: &'a mut State,
    held: &'a mut BTreeMap<GroupId, Held>,
    saver: &'a mpsc::UnboundedSender<Save>,
    batch: &'a mut Batched,
    /// Entry bytes taken so far.
    bytes: usize,
}

impl Taker<'_> {
    fn take_msg(&mut self, msg: Msg) {
        match msg {
            Msg::Write(job) => match self.held.get_mut(&job.group) {
                Some(held) => held.queue.push_back(job),
                None => self.take(job, None),
            },
            Msg::Saved {
                job,
                at,
                result,
                panicked,
            } => {
                // The write's save is done: the rest of it, then the
                // group's writes that waited, until one holds it again.
                // A group removed meanwhile (its log gone, or a new
                // tombstone) is not brought back by the record of the
                // save: the write fails, and the sink's later writes with it
                // (invariant 4).
                let group = job.group;
                let Held { mut queue, as_of } = self.held.remove(&group).unwrap_or_default();
                if panicked && let Err(e) = &result {
                    // Invariant 4: the journal refuses every later write.
                    self.st.failed.get_or_insert_with(|| e.to_string());
                }
                let removed = (as_of.0 && !self.st.groups.contains_key(&group))
                    || self.st.removed.get(&group).copied() != as_of.1;
                match result {
                    Ok(()) if removed => self.refuse_late(job, at),
                    r => self.take(job, Some((at, r))),
                }
                while let Some(job) = queue.pop_front() {
                    match self.held.get_mut(&group) {
                        Some(again) => again.queue.push_back(job),
                        None => self.take(job, None),
                    }
                }
            }
        }
    }

    /// A received snapshot saved at `at` after its group was removed
    /// (`job`, its write): not recorded, the write fails
    /// ([`StorageError::Closed`]: nothing of it applied) and the sink's
    /// later writes with it (invariant 4), without an error logged (the
    /// group is merely gone). The removal deleted the group's snapshot
    /// files before this one was written: it is deleted now, under the
    /// journal's lock, while the journal does not hold the group, so
    /// before any new replica of it is created (a replica hosted again is
    /// created in the journal before its snapshot store opens,
    /// `MultiNode::host_on_demand`). If the journal holds the group
    /// again, or the store is busy (its lock held), the file is left to
    /// the next start's sweep: a new replica may have found it already.
    fn refuse_late(&mut self, job: Job, at: (Index, Term)) {
        let group = job.group;
        let hosted_again = self.st.groups.contains_key(&group);
        let deleted = !hosted_again
            && match job.snapshots.try_lock() {
                Ok(mut store) => store
                    .discard_all()
                    .map_err(|e| {
                        debug!(group, error = %e, "cannot delete a removed group's snapshot files");
                    })
                    .is_ok(),
                Err(_) => false,
            };
        info!(
            group,
            index = at.0,
            term = at.1,
            deleted,
            hosted_again,
            "a received snapshot was saved after its group was removed: not recorded"
        );
        job.record_removed();
        self.batch
            .push((job.done, job.token, Err(StorageError::Closed)));
    }

    /// Applies `job` to the batch, or hands its received snapshot to the
    /// snapshot worker and holds its group; `saved` is the outcome of its
    /// snapshot's save when it comes back from there.
    fn take(&mut self, mut job: Job, saved: Option<((Index, Term), Result<(), StorageError>)>) {
        self.bytes = job
            .write
            .entries
            .iter()
            .fold(self.bytes, |b, e| b.saturating_add(e.approx_size()));
        let r = match (job.refused(), saved) {
            (Some(e), _) | (None, Some((_, Err(e)))) => Err(e),
            (None, Some((at, Ok(())))) => {
                let write = std::mem::replace(&mut job.write, empty_write());
                self.st.apply_write(job.group, write, Some(at))
            }
            (None, None) => match job.write.snapshot.take() {
                Some(snapshot) => match job.reply.take() {
                    Some(reply) => {
                        let group = job.group;
                        match self.saver.send(Save {
                            job,
                            snapshot,
                            reply,
                        }) {
                            Ok(()) => {
                                let as_of = (
                                    self.st.groups.contains_key(&group),
                                    self.st.removed.get(&group).copied(),
                                );
                                self.held.insert(
                                    group,
                                    Held {
                                        queue: VecDeque::new(),
                                        as_of,
                                    },
                                );
                                return;
                            }
                            Err(mpsc::error::SendError(Save { job: back, .. })) => {
                                job = back;
                                Err(StorageError::Closed)
                            }
                        }
                    }
                    None => Err(StorageError::Closed),
                },
                None => {
                    let write = std::mem::replace(&mut job.write, empty_write());
                    self.st.apply_write(job.group, write, None)
                }
            },
        };
        if let Err(e) = &r {
            job.record_failure(e);
        }
        self.batch.push((job.done, job.token, r));
    }
}

/// A write of nothing (what is left of a job once its write was taken).
fn empty_write() -> Write {
    Write {
        snapshot: None,
        compact: None,
        entries: Vec::new(),
        hard_state: None,
    }
}

/// Fails `job` with [`StorageError::Closed`] (nothing of it applied),
/// and its sink's later writes with it (invariant 4).
fn fail_closed(job: Job) {
    job.record_failure(&StorageError::Closed);
    let _ = job.done.send(Err(StorageError::Closed));
}

/// The snapshot worker: saves each received snapshot handed to it (the
/// file written and fsynced, renamed into place, the directory fsynced:
/// [`SnapshotStore::save`](crate::storage::SnapshotStore::save)), outside
/// the journal's lock, and hands its write back to the commit thread,
/// always: a save that panics is caught and handed back failed
/// (`panicked`), and the journal fails.
pub(super) async fn save_snapshots(mut rx: mpsc::UnboundedReceiver<Save>) {
    while let Some(Save {
        job,
        snapshot,
        reply,
    }) = rx.recv().await
    {
        let at = (snapshot.meta.index, snapshot.meta.term);
        let saved = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            job.snapshots
                .lock()
                .map_err(|_| StorageError::Closed)
                .and_then(|mut store| store.save(&snapshot))
        }));
        drop(snapshot);
        let (result, panicked) = match saved {
            Ok(result) => (result, false),
            Err(payload) => {
                let cause = crate::handler_panic::message(payload.as_ref());
                error!(group = job.group, index = at.0, cause = %cause, "saving a received snapshot panicked; the journal refuses every later write");
                let cause = format!("saving a received snapshot panicked: {cause}");
                (Err(StorageError::Failed { cause }), true)
            }
        };
        if let Err(e) = &result {
            debug!(group = job.group, index = at.0, error = %e, "a received snapshot was not saved");
        }
        // The commit thread's queue stays open while `reply` lives.
        let msg = Msg::Saved {
            job,
            at,
            result,
            panicked,
        };
        if let Err(mpsc::error::SendError(msg)) = reply.send(msg) {
            let (Msg::Write(job) | Msg::Saved { job, .. }) = msg;
            let _ = job.done.send(Err(StorageError::Closed));
        }
    }
}

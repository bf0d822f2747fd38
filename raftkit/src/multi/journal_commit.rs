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
//! poisoned journal lock fails every write, the held ones included; a
//! panic in the commit thread itself is caught, fails the journal and
//! answers every write in flight (`Open::fail`). None is left pending (a group's shutdown barrier is a write, and
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
///
/// A panic in the loop (a bug of the write-ahead log, of the file system,
/// of a group's snapshot store) is caught: every write not yet answered
/// is answered then, the journal fails (invariant 4) and the thread ends
/// (see [`Open::fail`]). The node task's completion channel never closes
/// (it holds a sender itself), so a write dropped unanswered would leave
/// its group waiting for ever.
pub(super) async fn run(
    shared: Arc<Shared>,
    rx: mpsc::UnboundedReceiver<Msg>,
    saver: mpsc::UnboundedSender<Save>,
) {
    let mut open = Open {
        rx,
        batch: Vec::new(),
        held: BTreeMap::new(),
        in_hand: None,
        sync: SyncPhase::NotBegun,
    };
    let ended = {
        let mut looped = std::pin::pin!(commit_loop(&shared, &mut open, &saver));
        std::future::poll_fn(|cx| {
            let polled =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| looped.as_mut().poll(cx)));
            match polled {
                Ok(std::task::Poll::Pending) => std::task::Poll::Pending,
                Ok(std::task::Poll::Ready(())) => std::task::Poll::Ready(Ok(())),
                Err(payload) => std::task::Poll::Ready(Err(payload)),
            }
        })
        .await
    };
    if let Err(payload) = ended {
        let cause = crate::handler_panic::message(payload.as_ref());
        open.fail(&shared, &cause);
    }
}

/// The commit loop of [`run`], its writes in flight kept in `open`.
async fn commit_loop(shared: &Shared, open: &mut Open, saver: &mpsc::UnboundedSender<Save>) {
    while let Some(first) = open.rx.recv().await {
        let Ok(mut st) = shared.state() else {
            // A panic while the lock was held: nothing can be recorded
            // any more. Every write fails, the held ones too (their
            // save's outcome could never be recorded, and a held
            // snapshot's handle back here would keep this queue open).
            let (Msg::Write(job) | Msg::Saved { job, .. }) = first;
            // Every group learns it, with a write or not (invariant 4).
            shared.fault.send_if_modified(|f| {
                let first = f.is_none();
                if first {
                    *f = Some("the journal's lock is poisoned (a panic while it was held)".into());
                }
                first
            });
            fail_closed(job);
            if !open.held.is_empty() {
                error!(
                    groups = open.held.len(),
                    "the journal's lock is poisoned (a panic while it was held): failing the writes held behind received snapshots"
                );
            }
            for h in std::mem::take(&mut open.held).into_values() {
                h.queue.into_iter().for_each(fail_closed);
            }
            continue;
        };
        open.sync = SyncPhase::NotBegun;
        let mut taker = Taker {
            st: &mut st,
            held: &mut open.held,
            saver,
            batch: &mut open.batch,
            in_hand: &mut open.in_hand,
            bytes: 0,
        };
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            taker.take_msg(msg);
            if taker.batch.len() < 65_536 && taker.bytes < MAX_BATCH_BYTES {
                next = open.rx.try_recv().ok();
                let mut yields = 0;
                while next.is_none() && yields < GATHER_YIELDS {
                    std::thread::yield_now();
                    yields += 1;
                    next = open.rx.try_recv().ok();
                }
            }
        }
        open.sync = SyncPhase::Begun;
        let synced = st.sync(&shared.counters);
        open.sync = SyncPhase::Done(synced.clone());
        if synced.is_ok()
            && let Err(e) = st.maybe_checkpoint(&shared.counters)
        {
            debug!(error = %e, "checkpoint failed");
        }
        drop(st);
        shared
            .counters
            .writes
            .fetch_add(open.batch.len() as u64, Ordering::Relaxed);
        for (done, token, r) in open.batch.drain(..) {
            let _ = done.send(outcome(&synced, token, r));
        }
    }
}

/// A taken write's outcome once its batch's sync returned `synced`.
fn outcome(
    synced: &Result<(), StorageError>,
    token: u64,
    r: Result<(), StorageError>,
) -> Result<u64, StorageError> {
    match (synced, r) {
        (Err(e), _) => Err(e.clone()),
        (Ok(()), Err(e)) => Err(e),
        (Ok(()), Ok(())) => Ok(token),
    }
}

/// Where the current batch's sync stands (what a write taken into it is
/// answered if the commit thread panics).
enum SyncPhase {
    /// Not begun: nothing of the batch was written.
    NotBegun,
    /// Begun, not returned: the batch may be durable.
    Begun,
    /// Returned this (the batch is durable if `Ok`).
    Done(Result<(), StorageError>),
}

/// Every write the commit thread has not answered yet: queued, held
/// behind a received snapshot, in hand, taken into the current batch.
struct Open {
    rx: mpsc::UnboundedReceiver<Msg>,
    batch: Batched,
    /// The groups whose received snapshot is being saved, each with its
    /// writes queued behind it, in order.
    held: BTreeMap<GroupId, Held>,
    /// The write being taken (see [`InHand`]).
    in_hand: Option<InHand>,
    sync: SyncPhase,
}

/// A second handle on the completion of the write being taken, which a
/// panic meanwhile would drop unanswered: `(done, token, maybe)`, `maybe`
/// if its received snapshot is saved already (on disk, in force after a
/// restart). Cleared once the write is in the batch.
type InHand = (Done, u64, bool);

impl Open {
    /// After a panic in the commit loop (`cause`): the journal fails
    /// (every later write and call refused, invariant 4) and every write
    /// not answered yet is. A write answered "may have been applied"
    /// ([`StorageError::Failed`]) is one that may be durable: taken into a
    /// batch whose sync had begun and not returned, or whose received
    /// snapshot was saved; one the sync made durable is answered `Ok`
    /// (the panic came after it, in a checkpoint); every other one is
    /// answered "not applied" ([`StorageError::Closed`]): nothing of it
    /// was written, nor will be (its records only in memory, the journal
    /// failed). The queue is closed: later writes are refused at once.
    fn fail(mut self, shared: &Shared, cause: &str) {
        error!(
            cause = %cause,
            taken = self.batch.len(),
            held = self.held.len(),
            "the journal's commit thread panicked; failing its writes in flight, the journal refuses every later write"
        );
        let cause = format!("the journal's commit thread panicked: {cause}");
        shared
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .fail(cause.clone());
        let maybe = || StorageError::Failed {
            cause: format!("{cause} (this write may be durable)"),
        };
        if let Some((done, _, in_force)) = self.in_hand.take() {
            let _ = done.send(Err(if in_force {
                maybe()
            } else {
                StorageError::Closed
            }));
        }
        let synced = match std::mem::replace(&mut self.sync, SyncPhase::NotBegun) {
            SyncPhase::NotBegun => Err(StorageError::Closed),
            SyncPhase::Begun => Err(maybe()),
            SyncPhase::Done(synced) => synced,
        };
        for (done, token, r) in self.batch.drain(..) {
            let _ = done.send(outcome(&synced, token, r));
        }
        for h in std::mem::take(&mut self.held).into_values() {
            h.queue.into_iter().for_each(fail_closed);
        }
        self.rx.close();
        while let Ok(msg) = self.rx.try_recv() {
            match msg {
                Msg::Write(job) => fail_closed(job),
                Msg::Saved {
                    job,
                    result: Ok(()),
                    ..
                } => {
                    let e = maybe();
                    job.record_failure(&e);
                    let _ = job.done.send(Err(e));
                }
                Msg::Saved { job, .. } => fail_closed(job),
            }
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
    in_hand: &'a mut Option<InHand>,
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
                    self.st.fail(e.to_string());
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
    /// `MultiNode::host_on_demand`). If the store is busy (its lock
    /// held) and the group is not hosted again, the file is left to the
    /// next start's sweep. If the journal holds the group again, the file
    /// is left in the new replica's directory, and no sweep deletes it
    /// (`hosting::sweep` skips every group the journal holds): the new
    /// replica's store adopts it as its latest snapshot at its next open
    /// if it has no newer one, else prunes it once a newer save knows
    /// it. That is benign: the file is a committed prefix of the same
    /// group, and the journal is never compacted behind a missing
    /// snapshot; and rare (re-hosting within one save).
    fn refuse_late(&mut self, job: Job, at: (Index, Term)) {
        *self.in_hand = Some((job.done.clone(), job.token, false));
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
        *self.in_hand = None;
    }

    /// Applies `job` to the batch, or hands its received snapshot to the
    /// snapshot worker and holds its group; `saved` is the outcome of its
    /// snapshot's save when it comes back from there.
    fn take(&mut self, mut job: Job, saved: Option<((Index, Term), Result<(), StorageError>)>) {
        let in_force = matches!(saved, Some((_, Ok(()))));
        *self.in_hand = Some((job.done.clone(), job.token, in_force));
        self.bytes = job
            .write
            .entries
            .iter()
            .fold(self.bytes, |b, e| b.saturating_add(e.approx_size()));
        let r = match (job.refused(), saved) {
            (Some(e), _) | (None, Some((_, Err(e)))) => Err(e),
            // Its group was removed before it came (and not created
            // again): nothing of it is recorded, nor its snapshot saved.
            (None, None) if !is_empty(&job.write) && self.st.removed_not_held(job.group) => {
                info!(
                    group = job.group,
                    "a write of a group removed from this node: refused, not applied"
                );
                job.record_removed();
                Err(StorageError::Closed)
            }
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
                                *self.in_hand = None;
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
        *self.in_hand = None;
    }
}

/// Whether `write` records nothing (a barrier).
fn is_empty(write: &Write) -> bool {
    write.snapshot.is_none()
        && write.compact.is_none()
        && write.entries.is_empty()
        && write.hard_state.is_none()
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
        let saved_ok = result.is_ok();
        // The commit thread's queue stays open while `reply` lives.
        let msg = Msg::Saved {
            job,
            at,
            result,
            panicked,
        };
        // Refused only once the commit thread has ended after a panic: a
        // snapshot saved is on disk (in force after a restart), so its
        // write "may have been applied"; one not saved was not.
        if let Err(mpsc::error::SendError(msg)) = reply.send(msg) {
            let (Msg::Write(job) | Msg::Saved { job, .. }) = msg;
            let e = if saved_ok {
                StorageError::Failed {
                    cause: "the journal's commit thread ended; the received snapshot was saved (this write may be durable)".into(),
                }
            } else {
                StorageError::Closed
            };
            let _ = job.done.send(Err(e));
        }
    }
}

//! The byte budget of a node's inbox: how many bytes of peers' messages a
//! node holds received but not yet taken by its node task(s).
//!
//! A node's inbox used to be bounded by count only (4096 messages, and on
//! a multi-group node 4096 on the shared group inbox plus 4096 per group),
//! each message up to a frame (16 MiB by default): one holder of a `node`
//! certificate, or a node task slow under a burst of large AppendEntries,
//! could make a node hold 64 GiB (and a multi-group node that much per
//! group). The counts stay, and the bytes are now bounded too:
//!
//! - one [`InboxBytes`] per node (per [`QuicTransport`](super::QuicTransport)
//!   started by the runtime: a peer, or a multi-group node for all its
//!   groups), of [`INBOX_FRAMES`] (4) times the frame cap by default, 64
//!   MiB, shared by all the links of all its peers;
//! - every message a link reads is charged what it takes (`charge_of`:
//!   its frame's body, [`MESSAGE_OVERHEAD`] and an [`Entry`] per entry it
//!   decoded into) before it is handed on, and
//!   the charge ([`InboxCharge`]) travels with the message through the
//!   channels ([`Charged`]) until a node task takes it out of its inbox,
//!   or it is dropped (a full group inbox, a stopped node, a group not
//!   hosted): dropping the charge gives the bytes back, so nothing can
//!   leak them;
//! - a link whose message does not fit waits for the bytes: it stops
//!   reading its stream, QUIC flow control stops its dialer, whose
//!   outbound queue then drops its oldest messages (`transport::quic`,
//!   invariant 5). Nothing Raft needs is dropped on the receiving side for
//!   want of bytes (a multi-group node's per-group share excepted, below);
//! - a charge is at most the budget: one message of the largest size
//!   always fits (it waits for the others to be taken); and the budget is
//!   at least twice the most one frame the node accepts may be charged
//!   (`worst_charge`, [`InboxBytes::new`]), so that no frame takes more
//!   than half of it (a multi-group node's group share);
//! - a link charges a frame before it decodes it ([`read_charged`]): a
//!   large one in one grant, from its length prefix and its header (the
//!   entries it claims), before its body is taken from the reader; a small
//!   one ([`SMALL_CHARGE`]) once read. A waiting link holds no decoded
//!   message. It may hold received bytes uncharged: what quinn handed it
//!   while it read up to the frame's header, at most about a stream's
//!   receive window (`quic_tuning::STREAM_RECEIVE_WINDOW`, 1.25 MB) and
//!   the packets quinn keeps, per link; so a frame larger than a window is
//!   never buffered whole before it is charged, and nothing is decoded;
//! - one frame in progress per peer: a large frame is charged before its
//!   body arrives, so the charge must not be free to hold (found by
//!   review, stop 50: a holder of a node certificate sending a prefix and
//!   a header on each of 4 connections and never a body held the whole
//!   budget for ever). A peer's links take their large frames' charges
//!   one at a time ([`PeerGate`], by the node id of its certificate,
//!   across all its connections): the gate is what bounds a peer, to
//!   one frame in progress, charged at most its length and the [`Entry`]
//!   of each entry that length can hold (a frame claiming more is
//!   refused from its header, [`FrameError::EntriesPastFrame`](super::frame::FrameError::EntriesPastFrame)):
//!   with the defaults 16 MiB and 65,536 entries of ~112 bytes, about
//!   23 MiB, 36% of the budget; the rest is for the others (two
//!   compromised node ids hold about 72% of it: the threat model is one).
//!   A peer may hold its one frame as long as it keeps sending its body,
//!   however slowly (an honest slow link always gets its frame through:
//!   found by review, stop 51, a deadline on the whole body closed a
//!   slow honest link for good, as its leader resent the same frame);
//!   only a body of which no byte arrived for the handshake timeout
//!   ([`read_charged`]) closes its link (`CLOSE_PROTOCOL`) and gives its
//!   charge back: that frees a wedged link, not the budget from a hostile
//!   peer, which may reconnect and hold its frame again. An honest peer
//!   has one link to a node, which reads its frames one at a time anyway:
//!   the gate costs it nothing;
//! - small messages (votes, heartbeats, responses: Raft's liveness,
//!   §5.2) never wait behind another link's large one (on one link,
//!   frames are read in order: a heartbeat waits for the large frame
//!   before it on its own link): the budget's semaphore is fair
//!   (FIFO), so a large message waiting for its bytes holds every later
//!   request up. A small message takes the budget's bytes if it has them
//!   now, and otherwise waits for a reserve of its own (an eighth of the
//!   budget more, [`InboxBytes::charge_bytes`]), where no large message
//!   waits. Chosen over a non-FIFO budget, under which a stream of small
//!   messages could starve a large one for ever: large messages still
//!   get the whole budget in turn. A node holds at most the budget and
//!   its reserve;
//! - a multi-group node's demultiplexer never waits for one group
//!   (`multi::links`): a group's messages waiting in its inbox may hold at
//!   most half the budget ([`InboxBytes::group_share`]); one more is
//!   dropped and counted like a message for a full inbox, so one slow group
//!   never holds the bytes the others need; the messages waiting to be
//!   hosted on demand (for groups not hosted yet) hold at most that share
//!   together, as one group.
//!
//! A [`QuicTransport::start`](super::QuicTransport::start) given a plain
//! channel (a user's own) has no budget: what its receiver holds is its
//! own to bound.
//!
//! Invariant: the bytes charged and not given back are at most the
//! budget, and every message in a charged inbox (or on its way there from
//! a link) holds its charge.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc};

use super::quic::GroupInbound;
use crate::core::{Entry, Message, NodeId};

/// The default inbox budget, in frames of the node's frame cap: a few of
/// the largest messages, so that one always fits and a burst of them
/// streams while the node task steps the previous ones.
pub(crate) const INBOX_FRAMES: usize = 4;

/// What a decoded message takes beyond its encoded body (its struct, the
/// vectors' headers), charged per message so that a flood of tiny
/// messages counts too.
pub(crate) const MESSAGE_OVERHEAD: usize = 256;

/// The most bytes one charge may be (tokio's semaphore counts in `u32`).
const MAX_BUDGET: usize = u32::MAX as usize;

/// The largest charge of a small message (a vote, a heartbeat, a
/// response, an AppendEntries of a few entries): one that may take the
/// reserve ([`InboxBytes::charge_bytes`]).
pub(crate) const SMALL_CHARGE: usize = 4 * 1024;

/// The reserve for small messages, in parts of the budget: an eighth
/// (8 MiB of the default 64 MiB), at least [`SMALL_CHARGE`] times 8.
const RESERVE_PARTS: usize = 8;

/// A node's inbox budget (module doc).
#[derive(Debug)]
pub(crate) struct InboxBytes {
    bytes: Arc<Semaphore>,
    limit: usize,
    /// Woken whenever a charge gives bytes back to the budget: a small
    /// message waiting for the reserve takes the budget's bytes if they
    /// are free by then ([`InboxBytes::charge_bytes`]).
    freed: Arc<Notify>,
    /// The reserve of small messages (module doc, "Small messages").
    small: Arc<Semaphore>,
    #[cfg(test)]
    small_limit: usize,
    /// Per peer node id, the gate its links pass to have a large frame in
    /// progress ([`PeerGate`]); dead entries are pruned as gates are made.
    peers: std::sync::Mutex<HashMap<NodeId, Weak<PeerGate>>>,
    /// How many large frames' headers links have read (`read_charged`).
    #[cfg(test)]
    heads: AtomicUsize,
}

/// One peer's gate to have a large frame in progress (charged, its body
/// not read yet) on this node: held by one of its links at a time (module
/// doc, "One frame in progress per peer").
#[derive(Debug)]
pub(crate) struct PeerGate(tokio::sync::Mutex<()>);

/// The error of a charged large frame's body of which no byte arrived
/// for [`QuicConfig::handshake_timeout`](super::QuicConfig::handshake_timeout)
/// ([`read_charged`]), inside a [`FrameError::Io`](super::frame::FrameError::Io)
/// of kind `TimedOut` ([`is_body_stalled`]). The frame was not decoded
/// (nothing of it was applied); its link is closed and its charge given
/// back.
#[derive(Debug, thiserror::Error)]
#[error("no byte of a frame's body of {len} bytes arrived for {stall:?}")]
pub(crate) struct BodyStalled {
    /// The body's length (its prefix).
    pub(crate) len: usize,
    /// How long no byte of it arrived.
    pub(crate) stall: std::time::Duration,
}

/// Whether `e` is a [`BodyStalled`] (the peer is closed for it with
/// `CLOSE_PROTOCOL`, not as a failed stream).
pub(crate) fn is_body_stalled(e: &std::io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<BodyStalled>())
}

/// Bytes of an [`InboxBytes`] held by one message; given back when dropped.
#[derive(Debug)]
pub(crate) struct InboxCharge {
    /// Of the budget or its small reserve (none only if a semaphore were
    /// closed: they never are). One at most: a charge is granted whole,
    /// never added to (`InboxBytes::wait_for`), so no `Vec` (one
    /// allocation per message received, issue 16).
    permit: Option<OwnedSemaphorePermit>,
    /// The budget's [`InboxBytes::freed`], for a charge of the budget's
    /// bytes (not the reserve's): notified once they are given back.
    freed: Option<Arc<Notify>>,
    bytes: usize,
    /// The group whose inbox holds the message (a multi-group node):
    /// lowered by `bytes` when dropped.
    group: Option<Arc<AtomicUsize>>,
}

/// A message with the bytes it holds.
pub(crate) type Charged = (Message, InboxCharge);

/// A multi-group node's inbound item with the bytes it holds (a group's
/// message does; the others are small and carry none).
pub(crate) type ChargedGroup = (GroupInbound, Option<InboxCharge>);

/// What a message of `body` bytes (its frame body) is charged at least.
pub(crate) fn charge_for(body: usize) -> usize {
    body.saturating_add(MESSAGE_OVERHEAD)
}

/// The most a frame of at most `max_frame_bytes` is charged
/// ([`read_charged`]): its body and [`MESSAGE_OVERHEAD`], and an
/// [`Entry`] for each entry it may claim, at most one per
/// [`MIN_ENTRY_BYTES`](super::append_decode::MIN_ENTRY_BYTES) of its
/// body and at most [`MAX_ENTRIES_PER_APPEND`](crate::core::MAX_ENTRIES_PER_APPEND)
/// (more is refused from its header, uncharged).
pub(crate) fn worst_charge(max_frame_bytes: usize) -> usize {
    let entries = (max_frame_bytes / super::append_decode::MIN_ENTRY_BYTES)
        .min(crate::core::MAX_ENTRIES_PER_APPEND);
    charge_for(max_frame_bytes).saturating_add(entries.saturating_mul(std::mem::size_of::<Entry>()))
}

/// What `msg`, decoded from a frame body of `body` bytes, is charged: the
/// body and [`MESSAGE_OVERHEAD`], and for each entry it carries the
/// [`Entry`] it decodes into. Entries are what a small frame can expand
/// into when decoded (a 3-byte no-op takes ~120 bytes, `append_decode`):
/// charged by the body alone, a frame of tiny entries held ~40 times its
/// charge (found by review, stop 49).
#[cfg(test)]
pub(crate) fn charge_of(msg: &Message, body: usize) -> usize {
    let entries = match &msg.body {
        crate::core::Body::AppendEntries { entries, .. } => entries.len(),
        _ => 0,
    };
    charge_for(body).saturating_add(entries.saturating_mul(std::mem::size_of::<Entry>()))
}

impl InboxBytes {
    /// A budget of `INBOX_FRAMES` frames of `max_frame_bytes` (at least
    /// one frame and its overhead, at most `u32::MAX`).
    pub(crate) fn for_frames(max_frame_bytes: usize) -> Arc<InboxBytes> {
        Self::new(
            max_frame_bytes.saturating_mul(INBOX_FRAMES),
            max_frame_bytes,
        )
    }

    /// A budget of `limit` bytes, raised to twice the most one frame of
    /// `max_frame_bytes` may be charged ([`worst_charge`]; at most
    /// `u32::MAX`): one frame the node accepts never takes more than half
    /// the budget, so it fits a multi-group node's group share (found by
    /// review, stop 51: with a small frame cap, one frame of tiny entries
    /// was charged the whole budget, four frames of it, and on a
    /// multi-group node it was over the group share and dropped every
    /// time its leader resent it: the group stalled for good). With the
    /// default cap (16 MiB: 23.3 MiB at worst) this changes nothing; a
    /// frame cap under ~7.3 MiB gets a budget of more than four frames,
    /// at most ~29 MiB (a cap just under that).
    pub(crate) fn new(limit: usize, max_frame_bytes: usize) -> Arc<InboxBytes> {
        let floor = worst_charge(max_frame_bytes).saturating_mul(2);
        Self::fitting(limit.max(floor), max_frame_bytes)
    }

    /// A budget of `limit` bytes, raised only to fit one message of
    /// `max_frame_bytes` (its body and overhead, not the entries it may
    /// claim): for tests whose frames each carry one large entry, and
    /// which need a budget of a few of them.
    #[cfg(test)]
    pub(crate) fn exactly(limit: usize, max_frame_bytes: usize) -> Arc<InboxBytes> {
        Self::fitting(limit, max_frame_bytes)
    }

    /// A budget of `limit` bytes, raised to fit one message of
    /// `max_frame_bytes` (its body and overhead), at most `u32::MAX`.
    ///
    /// A budget over `u32::MAX` is clamped to it, with a warning (once,
    /// here: a node makes its budget once): one frame of such a cap may
    /// then take more than half the budget (found by review, stop 52: the
    /// clamp was silent).
    fn fitting(limit: usize, max_frame_bytes: usize) -> Arc<InboxBytes> {
        let wanted = limit.max(charge_for(max_frame_bytes));
        if wanted > MAX_BUDGET {
            tracing::warn!(
                wanted,
                max_frame_bytes,
                budget = MAX_BUDGET,
                worst_frame_charge = worst_charge(max_frame_bytes),
                "inbox budget clamped to u32::MAX bytes: one frame of this cap may take \
                 more than half of it (lower max_frame_bytes)"
            );
        }
        let limit = wanted.clamp(1, MAX_BUDGET);
        let small_limit = (limit / RESERVE_PARTS).max(SMALL_CHARGE * 8);
        Arc::new(InboxBytes {
            bytes: Arc::new(Semaphore::new(limit)),
            limit,
            freed: Arc::new(Notify::new()),
            small: Arc::new(Semaphore::new(small_limit)),
            #[cfg(test)]
            small_limit,
            peers: std::sync::Mutex::new(HashMap::new()),
            #[cfg(test)]
            heads: AtomicUsize::new(0),
        })
    }

    /// The budget, in bytes (its small reserve aside).
    #[cfg(test)]
    pub(crate) fn limit(&self) -> usize {
        self.limit
    }

    /// The bytes charged now (the budget's and its small reserve's).
    #[cfg(test)]
    pub(crate) fn held(&self) -> usize {
        self.limit.saturating_sub(self.bytes.available_permits())
            + self
                .small_limit
                .saturating_sub(self.small.available_permits())
    }

    /// The gate of peer `node`'s links (module doc, "One frame in
    /// progress per peer"): shared by all its links to this node while
    /// any holds it.
    pub(crate) fn peer_gate(&self, node: NodeId) -> Arc<PeerGate> {
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(gate) = peers.get(&node).and_then(Weak::upgrade) {
            return gate;
        }
        // At most one entry per open link (a node serves at most its
        // limit of peer connections): pruned as new ones are made.
        peers.retain(|_, gate| gate.strong_count() > 0);
        let gate = Arc::new(PeerGate(tokio::sync::Mutex::new(())));
        peers.insert(node, Arc::downgrade(&gate));
        gate
    }

    /// How many large frames' headers links have read, in all.
    #[cfg(test)]
    pub(crate) fn heads_read(&self) -> usize {
        self.heads.load(Ordering::Relaxed)
    }

    /// The most bytes one group's waiting messages may hold (module doc).
    pub(crate) fn group_share(&self) -> usize {
        self.limit / 2
    }

    /// Charges `msg`, decoded from `body` bytes (`charge_of`), once the
    /// budget has them (at most the whole budget: the largest message fits
    /// once the others are taken). Waits in turn with the other links (the
    /// semaphore is fair).
    #[cfg(test)]
    pub(crate) async fn charge(&self, msg: &Message, body: usize) -> InboxCharge {
        self.wait_for(charge_of(msg, body)).await
    }

    /// Charges a message of `bytes` (`charge_of`, or what its frame's
    /// header says before its body is read) once the budget has them
    /// (module doc, "Small messages"): a small one ([`SMALL_CHARGE`] at
    /// most) takes the budget's bytes if it has them now and otherwise
    /// waits for its reserve's, so it never waits behind a large one; a
    /// larger one waits for the budget's, in turn (the semaphore is fair,
    /// so the largest message still gets the whole budget once the others
    /// are taken).
    ///
    /// A small one waiting for the reserve takes the budget's bytes as
    /// soon as the budget has them free (found by review, stop 50 #5: it
    /// waited for the reserve only, while the budget it had found full
    /// was given back). It keeps its place in the reserve's queue
    /// meanwhile.
    pub(crate) async fn charge_bytes(&self, bytes: usize) -> InboxCharge {
        let bytes = bytes.min(self.limit);
        if bytes > SMALL_CHARGE {
            return self.wait_for(bytes).await;
        }
        let n = u32::try_from(bytes).unwrap_or(u32::MAX);
        if let Ok(permit) = Arc::clone(&self.bytes).try_acquire_many_owned(n) {
            return self.of_budget(permit, bytes);
        }
        let reserve = Arc::clone(&self.small).acquire_many_owned(n);
        let mut reserve = std::pin::pin!(reserve);
        loop {
            // Registered before the budget is looked at: bytes given back
            // after the look wake it.
            let freed = self.freed.notified();
            let mut freed = std::pin::pin!(freed);
            freed.as_mut().enable();
            if let Ok(permit) = Arc::clone(&self.bytes).try_acquire_many_owned(n) {
                return self.of_budget(permit, bytes);
            }
            tokio::select! {
                biased;
                permit = &mut reserve => {
                    let mut charge = InboxCharge::none();
                    // The semaphore is never closed, so this always holds one.
                    charge.permit = permit.ok();
                    charge.bytes = bytes;
                    return charge;
                }
                () = &mut freed => {}
            }
        }
    }

    /// A charge of `bytes` held by `permit`, of the budget's bytes.
    fn of_budget(&self, permit: OwnedSemaphorePermit, bytes: usize) -> InboxCharge {
        InboxCharge {
            permit: Some(permit),
            freed: Some(Arc::clone(&self.freed)),
            bytes,
            group: None,
        }
    }

    /// Charges `bytes` of the budget (at most the budget), waiting for
    /// them in turn, in one grant: a charge is never added to while it is
    /// held (found by review, stop 50: a large frame took its prefix's
    /// bytes, then waited for its entries' behind another frame's prefix,
    /// which waited for the bytes the first held: five near-cap frames at
    /// once stuck the budget for good).
    async fn wait_for(&self, bytes: usize) -> InboxCharge {
        let bytes = bytes.min(self.limit);
        let mut charge = InboxCharge::none();
        if bytes == 0 {
            return charge;
        }
        let n = u32::try_from(bytes).unwrap_or(u32::MAX);
        // Dropped unfinished (its link's task aborted), the wait gives back
        // what the fair semaphore had handed it so far: the small messages
        // waiting for the reserve are told (found by review, stop 52: they
        // were not, and waited while the budget had room).
        let told = TellOnDrop(Some(&self.freed));
        // The semaphore is never closed, so this always holds a permit.
        let permit = Arc::clone(&self.bytes).acquire_many_owned(n).await.ok();
        told.disarm();
        charge.permit = permit;
        charge.freed = Some(Arc::clone(&self.freed));
        charge.bytes = bytes;
        charge
    }
}

impl InboxCharge {
    /// No charge: a message that did not come from a link (a test's, or
    /// one a node hands itself) in a charged inbox.
    pub(crate) fn none() -> InboxCharge {
        InboxCharge {
            permit: None,
            freed: None,
            bytes: 0,
            group: None,
        }
    }

    /// The bytes charged.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Counts the charge in `group`'s tally (what its inbox holds) until
    /// dropped.
    pub(crate) fn count_in(&mut self, group: Arc<AtomicUsize>) {
        group.fetch_add(self.bytes, Ordering::Relaxed);
        if let Some(old) = self.group.replace(group) {
            old.fetch_sub(self.bytes, Ordering::Relaxed);
        }
    }
}

/// Tells the small messages waiting for the reserve
/// ([`InboxBytes::freed`]) when dropped armed: a large message's wait for
/// the budget dropped before it was granted, which gives back any part of
/// the budget handed to it.
struct TellOnDrop<'a>(Option<&'a Notify>);

impl TellOnDrop<'_> {
    /// The wait ended with its grant: nothing to tell.
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for TellOnDrop<'_> {
    fn drop(&mut self) {
        if let Some(freed) = self.0 {
            freed.notify_waiters();
        }
    }
}

impl Drop for InboxCharge {
    fn drop(&mut self) {
        if let Some(group) = &self.group {
            group.fetch_sub(self.bytes, Ordering::Relaxed);
        }
        // The bytes back first, then the small messages waiting for the
        // reserve told (`InboxBytes::charge_bytes`).
        drop(self.permit.take());
        if let Some(freed) = &self.freed {
            freed.notify_waiters();
        }
    }
}

/// Where a link hands a node's messages.
#[derive(Clone, Debug)]
pub(crate) enum InboxTx {
    /// A caller's channel: no budget (module doc).
    Plain(mpsc::Sender<Message>),
    /// A node task's inbox: each message holds its charge.
    Charged(mpsc::Sender<Charged>, Arc<InboxBytes>),
}

impl InboxTx {
    /// The budget its messages are charged to, if any.
    pub(crate) fn budget(&self) -> Option<&Arc<InboxBytes>> {
        match self {
            InboxTx::Plain(_) => None,
            InboxTx::Charged(_, budget) => Some(budget),
        }
    }

    /// Hands `msg` on with its `charge` (taken by the link before it read
    /// the message, [`read_charged`]; none for a plain channel), once the
    /// channel has room. `Err` if the receiver is gone.
    pub(crate) async fn send(&self, msg: Message, charge: Option<InboxCharge>) -> Result<(), ()> {
        match self {
            InboxTx::Plain(tx) => tx.send(msg).await.map_err(|_| ()),
            InboxTx::Charged(tx, _) => {
                let charge = charge.unwrap_or_else(InboxCharge::none);
                tx.send((msg, charge)).await.map_err(|_| ())
            }
        }
    }
}

/// The bytes of a frame's body that hold an AppendEntries' entry count
/// (`append_decode::claimed_entries`): a tag, a group, and six fields
/// before it, each a postcard varint of at most 10 bytes.
const CLAIM_HEAD: usize = 96;

/// Reads the next frame's body from `frames` (at most `max` bytes) with
/// its charge to `budget` (none without one), charged before the frame is
/// decoded, so that a link waiting for the budget holds no decoded
/// message (found by review, stop 50: a waiting link held its decoded
/// message and its frame outside the budget, up to ~2 frames per
/// connection):
///
/// - a frame whose body and overhead are more than [`SMALL_CHARGE`] is
///   charged those and the [`Entry`]s it claims (`charge_of`), from its
///   length prefix and its header ([`CLAIM_HEAD`]), in one grant, before
///   its body is taken from the reader, once `budget`'s [`PeerGate`] (the
///   peer's, held until the body is read) lets it; its body must then
///   keep arriving: [`BodyStalled`] once no byte of it came for `stall`
///   (the handshake timeout; module doc, "One frame in progress per
///   peer");
/// - an AppendEntries claiming more entries than one message may carry
///   ([`FrameError::TooManyEntries`](super::frame::FrameError::TooManyEntries))
///   or than its length can hold ([`FrameError::EntriesPastFrame`](super::frame::FrameError::EntriesPastFrame))
///   is refused from its header, uncharged;
/// - a small frame is read first (a waiting link holds at most
///   [`SMALL_CHARGE`] bytes of it) and charged all it takes at once, from
///   the reserve when the budget has no room now.
///
/// A link waiting here for its peer's gate or for the budget is aborted
/// when its connection closes (`accept::serve_peer` returns once the
/// connection's `accept_bi` fails, and its `JoinSet` aborts the link's
/// task): the gate and its place in the budget's queue are given up then
/// (`wait_tests`, review stop 51).
pub(crate) async fn read_charged(
    frames: &mut super::frame_reader::FrameReader,
    max: usize,
    budget: Option<(&InboxBytes, &PeerGate)>,
    stall: std::time::Duration,
) -> Result<(bytes::Bytes, Option<InboxCharge>), super::frame::FrameError> {
    use super::frame::FrameError;
    let Some((budget, gate)) = budget else {
        return Ok((frames.next(max).await?, None));
    };
    let len = frames.next_len(max).await?;
    if charge_for(len) <= SMALL_CHARGE {
        let body = frames.next(max).await?;
        let entries = claimed_entry_bytes(&body, body.len())?;
        let charge = budget
            .charge_bytes(charge_for(body.len()).saturating_add(entries))
            .await;
        return Ok((body, Some(charge)));
    }
    // One grant for all it takes (its header read first, its body not):
    // never a second wait while holding the first (`InboxBytes::wait_for`).
    let head = frames.next_head(max, CLAIM_HEAD).await?;
    #[cfg(test)]
    budget.heads.fetch_add(1, Ordering::Relaxed);
    let entries = claimed_entry_bytes(&head, len)?;
    // One large frame in progress per peer, across its links (module doc).
    let _in_progress = gate.0.lock().await;
    let charge = budget
        .charge_bytes(charge_for(len).saturating_add(entries))
        .await;
    // Its body must keep coming (module doc): however slowly, but not
    // stopped for `stall`.
    match frames.next_unless_stalled(max, stall).await? {
        Some(body) => Ok((body, Some(charge))),
        None => Err(FrameError::Io(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            BodyStalled { len, stall },
        ))),
    }
}

/// What the entries an AppendEntries frame of `len` bytes claims in its
/// header `head` take decoded (`charge_of`; nothing for another frame).
/// A claim of more than [`MAX_ENTRIES_PER_APPEND`](crate::core::MAX_ENTRIES_PER_APPEND)
/// entries, or of more than `len` bytes can hold (found by review, stop
/// 51: a 4 KiB frame claiming 65,536 entries was charged ~7 MiB before
/// its body came), is refused: serde would refuse the frame anyway.
fn claimed_entry_bytes(head: &[u8], len: usize) -> Result<usize, super::frame::FrameError> {
    use super::frame::FrameError;
    let Some(count) = super::append_decode::claimed_entries(head) else {
        return Ok(0);
    };
    let cap = crate::core::MAX_ENTRIES_PER_APPEND;
    if count > cap as u64 {
        return Err(FrameError::TooManyEntries { count, max: cap });
    }
    let room = len / super::append_decode::MIN_ENTRY_BYTES;
    let n = usize::try_from(count).unwrap_or(usize::MAX);
    if n > room {
        return Err(FrameError::EntriesPastFrame {
            count,
            len,
            max: room,
        });
    }
    Ok(n.saturating_mul(std::mem::size_of::<Entry>()))
}

/// Where a link hands a multi-group node's inbound items.
#[derive(Clone, Debug)]
pub(crate) enum GroupTx {
    /// `QuicConfig::group_inbox`: no budget.
    Plain(mpsc::Sender<GroupInbound>),
    /// A multi-group node's demultiplexer: each group message holds its
    /// charge.
    Charged(mpsc::Sender<ChargedGroup>, Arc<InboxBytes>),
}

impl GroupTx {
    /// The budget its group messages are charged to, if any.
    pub(crate) fn budget(&self) -> Option<&Arc<InboxBytes>> {
        match self {
            GroupTx::Plain(_) => None,
            GroupTx::Charged(_, budget) => Some(budget),
        }
    }

    /// Hands a group's `msg` on with its `charge` ([`read_charged`]),
    /// once the channel has room. `Err` if the receiver is gone.
    pub(crate) async fn send_msg(
        &self,
        group: u64,
        msg: Message,
        charge: Option<InboxCharge>,
    ) -> Result<(), ()> {
        match self {
            GroupTx::Plain(tx) => tx
                .send(GroupInbound::Msg { group, msg })
                .await
                .map_err(|_| ()),
            GroupTx::Charged(tx, _) => {
                let item = GroupInbound::Msg { group, msg };
                let charge = charge.unwrap_or_else(InboxCharge::none);
                tx.send((item, Some(charge))).await.map_err(|_| ())
            }
        }
    }

    /// Hands `item` (a small control item) on, waiting for room in the
    /// channel only. `Err` if the receiver is gone.
    pub(crate) async fn send(&self, item: GroupInbound) -> Result<(), ()> {
        match self {
            GroupTx::Plain(tx) => tx.send(item).await.map_err(|_| ()),
            GroupTx::Charged(tx, _) => tx.send((item, None)).await.map_err(|_| ()),
        }
    }

    /// Hands `item` on if the channel has room now; whether it did.
    pub(crate) fn try_send(&self, item: GroupInbound) -> bool {
        match self {
            GroupTx::Plain(tx) => tx.try_send(item).is_ok(),
            GroupTx::Charged(tx, _) => tx.try_send((item, None)).is_ok(),
        }
    }
}

/// A node task's inbox: a caller's transport's channel, or a charged one
/// (whose messages give their bytes back as they are taken).
#[derive(Debug)]
pub(crate) enum InboxRx {
    /// Messages of a transport the caller made (`PeerBuilder::transport`).
    Plain(mpsc::Receiver<Message>),
    /// Messages of the node's QUIC links, each with its charge.
    Charged(mpsc::Receiver<Charged>),
}

impl InboxRx {
    /// The next message (its charge given back); `None` once every sender
    /// is gone. Cancel-safe.
    pub(crate) async fn recv(&mut self) -> Option<Message> {
        match self {
            InboxRx::Plain(rx) => rx.recv().await,
            InboxRx::Charged(rx) => rx.recv().await.map(|(msg, _charge)| msg),
        }
    }

    /// The next message if one is queued (its charge given back).
    pub(crate) fn try_recv(&mut self) -> Option<Message> {
        match self {
            InboxRx::Plain(rx) => rx.try_recv().ok(),
            InboxRx::Charged(rx) => rx.try_recv().ok().map(|(msg, _charge)| msg),
        }
    }
}

#[cfg(test)]
#[path = "inbox_bytes_tests.rs"]
pub(crate) mod tests;

#[cfg(test)]
#[path = "inbox_wait_tests.rs"]
mod wait_tests;

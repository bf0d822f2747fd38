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
//! - every message a link reads is charged what it takes ([`charge_of`]:
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
//!   always fits (it waits for the others to be taken);
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

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use super::quic::GroupInbound;
use crate::core::{Body, Entry, Message};

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

/// A node's inbox budget (module doc).
#[derive(Debug)]
pub(crate) struct InboxBytes {
    bytes: Arc<Semaphore>,
    limit: usize,
}

/// Bytes of an [`InboxBytes`] held by one message; given back when dropped.
#[derive(Debug)]
pub(crate) struct InboxCharge {
    /// None only if the semaphore were closed (it never is).
    _permit: Option<OwnedSemaphorePermit>,
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

/// What `msg`, decoded from a frame body of `body` bytes, is charged: the
/// body and [`MESSAGE_OVERHEAD`], and for each entry it carries the
/// [`Entry`] it decodes into. Entries are what a small frame can expand
/// into when decoded (a 3-byte no-op takes ~120 bytes, `append_decode`):
/// charged by the body alone, a frame of tiny entries held ~40 times its
/// charge (found by review, stop 49).
pub(crate) fn charge_of(msg: &Message, body: usize) -> usize {
    let entries = match &msg.body {
        Body::AppendEntries { entries, .. } => entries.len(),
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

    /// A budget of `limit` bytes, raised to fit one message of
    /// `max_frame_bytes`.
    pub(crate) fn new(limit: usize, max_frame_bytes: usize) -> Arc<InboxBytes> {
        let limit = limit.max(charge_for(max_frame_bytes)).clamp(1, MAX_BUDGET);
        Arc::new(InboxBytes {
            bytes: Arc::new(Semaphore::new(limit)),
            limit,
        })
    }

    /// The budget, in bytes.
    #[cfg(test)]
    pub(crate) fn limit(&self) -> usize {
        self.limit
    }

    /// The bytes charged now.
    #[cfg(test)]
    pub(crate) fn held(&self) -> usize {
        self.limit.saturating_sub(self.bytes.available_permits())
    }

    /// The most bytes one group's waiting messages may hold (module doc).
    pub(crate) fn group_share(&self) -> usize {
        self.limit / 2
    }

    /// Charges `msg`, decoded from `body` bytes ([`charge_of`]), once the
    /// budget has them (at most the whole budget: the largest message fits
    /// once the others are taken). Waits in turn with the other links (the
    /// semaphore is fair).
    pub(crate) async fn charge(&self, msg: &Message, body: usize) -> InboxCharge {
        let bytes = charge_of(msg, body).min(self.limit);
        let n = u32::try_from(bytes).unwrap_or(u32::MAX);
        // The semaphore is never closed, so this always holds a permit.
        let permit = Arc::clone(&self.bytes).acquire_many_owned(n).await.ok();
        InboxCharge {
            _permit: permit,
            bytes,
            group: None,
        }
    }
}

impl InboxCharge {
    /// No charge: a message that did not come from a link (a test's, or
    /// one a node hands itself) in a charged inbox.
    pub(crate) fn none() -> InboxCharge {
        InboxCharge {
            _permit: None,
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

impl Drop for InboxCharge {
    fn drop(&mut self) {
        if let Some(group) = &self.group {
            group.fetch_sub(self.bytes, Ordering::Relaxed);
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
    /// Hands `msg` (whose frame body was `body` bytes) on, once the budget
    /// and the channel have room. `Err` if the receiver is gone.
    pub(crate) async fn send(&self, msg: Message, body: usize) -> Result<(), ()> {
        match self {
            InboxTx::Plain(tx) => tx.send(msg).await.map_err(|_| ()),
            InboxTx::Charged(tx, budget) => {
                let charge = budget.charge(&msg, body).await;
                tx.send((msg, charge)).await.map_err(|_| ())
            }
        }
    }
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
    /// Hands a group's `msg` (whose frame body was `body` bytes) on, once
    /// the budget and the channel have room. `Err` if the receiver is
    /// gone.
    pub(crate) async fn send_msg(&self, group: u64, msg: Message, body: usize) -> Result<(), ()> {
        match self {
            GroupTx::Plain(tx) => tx
                .send(GroupInbound::Msg { group, msg })
                .await
                .map_err(|_| ()),
            GroupTx::Charged(tx, budget) => {
                let charge = budget.charge(&msg, body).await;
                let item = GroupInbound::Msg { group, msg };
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

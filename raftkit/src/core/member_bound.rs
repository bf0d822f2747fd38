//! A bound on a [`Configuration`](super::Configuration)'s collections
//! while a peer's frame is decoded (found by review, stop 50: a
//! `Payload::Config` entry or an InstallSnapshot's `SnapshotMeta.config`
//! was decoded with no bound, and `MAX_MEMBERS` checked only in core,
//! after the inbox: a 16 MiB frame of one configuration naming ~4M
//! addresses took ~250 MiB decoded, ~15 times its charge to the inbox
//! budget).
//!
//! Within [`bounded`] (the transport's `decode_peer_frame`), a set of
//! voters, outgoing voters or learners, or a map of addresses, longer than
//! the bound is refused from its length (postcard writes it first), before
//! any of its elements is decoded, and the refused length is reported, so
//! that the frame is refused as `FrameError::TooManyItems`. Outside it
//! (storage, snapshots, tests) nothing changes. The encoding is the
//! derived one either way: only decoding is bounded, so the wire format
//! and every valid value's bytes are unchanged (rolling upgrades).
//!
//! Known limit: the bound is per collection, not per frame. Many
//! configurations that are each within the bound (for example many
//! `Payload::Config` entries in one AppendEntries) still decode whole, to
//! ~15 times the frame's charge to the inbox budget. A per-frame total was
//! tried (stop 52) and withdrawn: a leader of an older release batches by
//! bytes and entry count only, so its legitimate batch of more than ~400
//! configuration entries would be refused, the link closed and the same
//! batch resent for as long as that leader runs (a rolling upgrade breaks).
//! Bounding the total needs a leader that cuts its batch at the bound and a
//! receiver that enforces it only on links whose hello says so (a protocol
//! version or capability bit).

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::marker::PhantomData;

use serde::Deserializer;
use serde::de::{self, MapAccess, SeqAccess, Visitor};

use super::NodeId;

thread_local! {
    /// The bound of the [`bounded`] call running on this thread, if any.
    static BOUND: Cell<Option<usize>> = const { Cell::new(None) };
    /// The length of the first collection refused within it.
    static REFUSED: Cell<Option<u64>> = const { Cell::new(None) };
}

/// Runs `decode` with every configuration collection it decodes bounded
/// to `max` elements; returns its result and, if a collection was
/// refused, the length it claimed (the result is then an error).
pub(crate) fn bounded<T>(max: usize, decode: impl FnOnce() -> T) -> (T, Option<u64>) {
    let outer = BOUND.with(|b| b.replace(Some(max)));
    let outer_refused = REFUSED.with(|r| r.take());
    let out = decode();
    let refused = REFUSED.with(|r| r.replace(outer_refused));
    BOUND.with(|b| b.set(outer));
    (out, refused)
}

/// `Err` if `len` elements are over the running bound (recorded).
fn check<E: de::Error>(len: usize) -> Result<(), E> {
    match BOUND.with(Cell::get) {
        Some(max) if len > max => {
            let claimed = u64::try_from(len).unwrap_or(u64::MAX);
            REFUSED.with(|r| {
                if r.get().is_none() {
                    r.set(Some(claimed));
                }
            });
            Err(E::custom(format_args!(
                "a configuration collection of {len} elements, over the cap of {max}"
            )))
        }
        _ => Ok(()),
    }
}

struct SetVisitor;

impl<'de> Visitor<'de> for SetVisitor {
    type Value = BTreeSet<NodeId>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a set of node ids")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        check(seq.size_hint().unwrap_or(0))?;
        let mut set = BTreeSet::new();
        let mut n = 0usize;
        while let Some(id) = seq.next_element()? {
            n += 1;
            check(n)?;
            set.insert(id);
        }
        Ok(set)
    }
}

struct MapVisitor(PhantomData<()>);

impl<'de> Visitor<'de> for MapVisitor {
    type Value = BTreeMap<NodeId, String>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a map of node ids to addresses")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        check(map.size_hint().unwrap_or(0))?;
        let mut out = BTreeMap::new();
        let mut n = 0usize;
        while let Some((id, addr)) = map.next_entry()? {
            n += 1;
            check(n)?;
            out.insert(id, addr);
        }
        Ok(out)
    }
}

/// Deserializes a configuration's set of node ids (bounded within
/// [`bounded`]); the derived `BTreeSet` decoding otherwise.
pub(crate) fn set<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeSet<NodeId>, D::Error> {
    d.deserialize_seq(SetVisitor)
}

/// Deserializes a configuration's addresses (bounded within
/// [`bounded`]); the derived `BTreeMap` decoding otherwise.
pub(crate) fn map<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<NodeId, String>, D::Error> {
    d.deserialize_map(MapVisitor(PhantomData))
}

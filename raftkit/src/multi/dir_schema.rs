//! The schema a multi-group node's data directory records (see
//! [`crate::schema`], "Where schemas are checked"): one file `schema` at the
//! top of the directory, for the whole node, since every data group runs the
//! node's one state machine `S`. The placement group (group 0) runs
//! [`Placement`](super::Placement), which raftkit defines, not the user: it
//! is not recorded.
//!
//! Invariants (those of a single-group peer's directory):
//! - a start is refused with [`Error::SchemaMismatch`] naming the handler
//!   unless the binary's schema passes [`Schema::check_upgrade_from`] the
//!   recorded one, before the start writes anything;
//! - the file is rewritten for the new binary only once its start passed
//!   every step that can fail (the listening socket, the workers, every
//!   group's replica, whose snapshot may be migrated) and before any
//!   message from a peer reaches a group (the node's demultiplexer starts
//!   after it): a start that fails leaves the directory to the binary that
//!   ran on it.
//!
//! A directory without the file (a new one, or one written before
//! multi-group nodes recorded their schema) is accepted and recorded. The
//! oldest schema the directory recorded (`schema.floor`, written once by
//! [`save_schema`] before `schema` is first rewritten) is what the node's
//! [`crate::schema::SchemaBook`] assumes of a voter not heard from.
//!
//! # What a multi-group node's gate gives, and what it does not
//!
//! Unlike a single-group peer's (see the [`crate::schema::SchemaBook`]
//! module docs), a multi-group node's book (one for the node, shared by
//! every group it hosts) neither raises its floor nor tells a directory
//! that founded its cluster from one that joined it (review s61 schema
//! #6; the node's builder, `multi::node::builder`, builds the book without
//! its file and records the schema with [`save_schema`] whichever way the
//! node entered its cluster). What a user gets, per group (the leader of
//! a group checks each write against that group's voters):
//!
//! - a voter heard since the leader's node started (its hello on any link
//!   to that node) is taken to know what its binary knows: a write whose
//!   tag it lacks is refused with [`Error::Unsupported`], final until that
//!   voter is upgraded;
//! - a voter not heard since then is taken to know the oldest schema the
//!   directory recorded: for a new directory, **this node's own schema,
//!   even if the node joined an existing cluster**. So a node on a newer
//!   binary added mid-upgrade, leading a group while a voter of that group
//!   still on the older binary is unheard (down, or not linked yet),
//!   enables the newer writes, and that voter halts at the first such
//!   entry (its status shows `halted`; its log is kept) until it runs the
//!   newer binary. Add nodes on a newer binary only once every node runs
//!   it, or upgrade the cluster before adding nodes;
//! - no raise: after an upgrade v1 → v2 the floor stays v1, so after each
//!   restart a group leader refuses v2's new writes while a voter of the
//!   group is unheard (an [`Error::Unsupported`] whose
//!   [`Error::awaits_voter_link`] is true: it may succeed once that voter
//!   links), and proposes raftkit's newer log entries (the bounded session
//!   entries, [`crate::schema::Schema::runtime_log`]) only once every voter
//!   of the group was heard (no `schema.raised` is ever recorded). A voter
//!   gone for good is to be removed from its groups.

use std::path::Path;

use tracing::info;

use crate::error::Error;
use crate::schema::{Schema, load_oldest_schema, load_schema, save_schema};
use crate::storage::vfs::Vfs;

/// The schema `dir` records and the binary's, once checked.
pub(super) struct DirSchema {
    /// The binary's schema.
    pub(super) local: Schema,
    /// The directory's, if it records one.
    pub(super) stored: Option<Schema>,
    /// The oldest the directory recorded (`schema.floor`, else `stored`).
    pub(super) oldest: Option<Schema>,
}

impl DirSchema {
    /// Reads the schema `dir` records and refuses `local` if it cannot
    /// read the directory's log (see the module docs). Writes nothing.
    pub(super) fn check(fs: &dyn Vfs, dir: &Path, local: Schema) -> Result<DirSchema, Error> {
        let stored = load_schema(fs, dir)?;
        let oldest = load_oldest_schema(fs, dir)?.or_else(|| stored.clone());
        if let Some(old) = &stored {
            local.check_upgrade_from(old)?;
            if old != &local {
                info!(dir = %dir.display(), old_state_version = old.state_version, state_version = local.state_version, handlers = local.handlers.len(), old_handlers = old.handlers.len(), "multi-group node's data directory upgraded to a compatible schema");
            }
        }
        Ok(DirSchema {
            local,
            stored,
            oldest,
        })
    }

    /// Records the binary's schema in `dir`, unless it is recorded already.
    /// Called once every fallible step of the start has passed.
    pub(super) fn record(&self, fs: &dyn Vfs, dir: &Path) -> Result<(), Error> {
        if self.stored.as_ref() == Some(&self.local) {
            return Ok(());
        }
        save_schema(fs, dir, &self.local)
    }
}

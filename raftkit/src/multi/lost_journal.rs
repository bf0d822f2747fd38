//! The lost-journal refusal of a multi-group node: the shared journal of a
//! data directory that had one must exist, as a single-group peer's log
//! must (`runtime::persist`, the `wal.created` marker).
//!
//! A multi-group node whose `journal/` was lost (a restore from a partial
//! backup, an operator removing "logs") beside its groups' snapshots
//! started as new: every group at term 0 with no vote (a second vote in a
//! term it voted in, Raft §5.2), without the entries it acknowledged, and
//! the start's sweep then deleted the groups' directories as orphans
//! (`hosting::sweep`). [`open`] refuses such a directory instead, as
//! corruption naming `journal/`.
//!
//! Invariants:
//! - the marker `journal.created` in the data directory is written
//!   (atomically, its directory fsynced) once the journal's first segment
//!   is durable (`Wal::open_in` renames it into place and fsyncs the
//!   directory before it returns), before anything is written to the
//!   journal: a marker never names a journal that a crash can take;
//! - the journal is opened before any group starts and before anything is
//!   written under `groups/`, so any group's directory there (a name that
//!   is a group id, as `hosting::sweep` tells them; even an empty one, as
//!   a group the node left or hosted on demand leaves it) proves that a
//!   journal was created, also in a directory of a release before the
//!   marker;
//! - with neither the marker nor such a directory, the journal may be created:
//!   a new directory, or a first start that stopped before its journal was
//!   durable, opens as before. A directory of the previous release has its
//!   journal: it opens, and is marked.

use std::path::Path;

use super::GroupId;
use super::journal::{Journal, JournalOptions};
use crate::runtime::threads::Threads;
use crate::storage::StorageError;
use crate::storage::vfs::{SharedFs, Vfs, write_atomic};

/// The marker file in a multi-group node's data directory saying that its
/// journal (`journal/`) was created (see the module docs).
pub(crate) const JOURNAL_MARKER: &str = "journal.created";

/// Opens the journal of the multi-group node whose data directory is
/// `dir` (`dir/journal`), refusing a missing one that the directory proves
/// existed (module docs), then marks the directory if needed.
pub(crate) fn open(
    fs: &SharedFs,
    dir: &Path,
    opts: JournalOptions,
    threads: &Threads,
) -> Result<Journal, StorageError> {
    let marker = dir.join(JOURNAL_MARKER);
    let marked = match fs.read(&marker) {
        Ok(_) => true,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(StorageError::io("read", &marker, e)),
    };
    let why = if marked {
        Some(format!("{} records that it was created", marker.display()))
    } else {
        evidence(&**fs, dir)?
    };
    let journal_dir = dir.join("journal");
    let journal = Journal::open_checked(fs.clone(), &journal_dir, opts, threads, why.as_deref())?;
    if !marked {
        write_atomic(
            &**fs,
            &marker,
            b"raftkit: the multi-group journal in journal/ was created; a data directory \
              without it is refused\n",
        )?;
    }
    Ok(journal)
}

/// An entry under `dir/groups` whose name is a group id (the test
/// `hosting::sweep` uses to call something a group's files): only a node
/// whose journal was open creates one (`start_group` opens
/// `groups/<id>/snapshots`), and it stays when the node leaves the group
/// (`hosting::delete_group_files` keeps the empty `snapshots/`), so it
/// also proves a journal for a group the node left (whose tombstone and
/// vote fence lived only there) or hosted on demand; `None` if there is
/// none (or no `groups/`).
fn evidence(fs: &dyn Vfs, dir: &Path) -> Result<Option<String>, StorageError> {
    let groups = dir.join("groups");
    if !fs.is_dir(&groups) {
        return Ok(None);
    }
    let names = fs
        .list_dir(&groups)
        .map_err(|e| StorageError::io("list directory", &groups, e))?;
    Ok(names
        .iter()
        .find(|name| name.parse::<GroupId>().is_ok())
        .map(|name| {
            format!(
                "{} holds the files of group {name}, which only a node with a journal writes",
                groups.display()
            )
        }))
}

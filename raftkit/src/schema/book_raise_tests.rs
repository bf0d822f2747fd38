//! Tests of what a [`SchemaBook`] takes a voter it has not heard from to
//! apply, and of the raise that proves it (review s58 sessions #1 and #2):
//! a fresh data directory proves nothing of the other voters.

use super::{HandlerKind, Schema, SchemaBook, Shape};
use crate::core::NodeId;
use crate::schema::{load_raised_schema, save_schema};
use crate::storage::vfs::RealFs;

/// A schema of this raftkit (runtime log version [`crate::schema::RUNTIME_LOG`])
/// with write tag 0.
fn v2() -> Schema {
    let mut s = Schema::new("kv", 1, Shape::Unit);
    s.push(HandlerKind::Write, 0, "w0", Shape::Str, Shape::Unit);
    s
}

/// Whether the leader proposes the bounded session entries (rule 9 of
/// `runtime::session`).
fn bounded(book: &SchemaBook, voters: [NodeId; 2]) -> bool {
    crate::runtime::session::bounded(book, voters)
}

/// Review s58 sessions #1: a node started on a fresh data directory (a
/// machine replaced mid-upgrade) has heard nothing of the other voters:
/// one it has not heard from may still run the older raftkit, which halts
/// at the first bounded session entry. Only a raise proves otherwise.
#[test]
fn a_fresh_directory_takes_an_unheard_voter_to_apply_nothing_new() {
    let dir = tempfile::tempdir().unwrap();
    save_schema(&RealFs, dir.path(), &v2()).unwrap();
    let book = of_dir(dir.path());
    book.accept_peer(2, v2()).unwrap();
    assert!(
        !bounded(&book, [2, 3]),
        "a node on a fresh directory took voter 3, never heard, to apply runtime log version 2"
    );
    assert!(!book.knows_runtime_log(crate::schema::RUNTIME_LOG_FAIR_SESSIONS, [2, 3]));
}

/// After a raise (every voter heard on this raftkit), a voter not heard
/// from counts as this raftkit's runtime log, in memory at once and after
/// a restart from the directory (`schema.raised`).
#[test]
fn a_fresh_directory_takes_an_unheard_voter_to_apply_the_raise_once_proven() {
    let dir = tempfile::tempdir().unwrap();
    save_schema(&RealFs, dir.path(), &v2()).unwrap();
    let book = of_dir(dir.path());
    book.accept_peer(2, v2()).unwrap();
    book.accept_peer(3, v2()).unwrap();
    book.check_enabled(HandlerKind::Write, 0, [2, 3]).unwrap();
    book.wait_raise_written();
    assert!(bounded(&book, [2, 4]), "raised, voter 4 unheard");
    assert_eq!(load_raised_schema(&RealFs, dir.path()).unwrap(), Some(v2()));
    let restarted = of_dir(dir.path());
    restarted.accept_peer(2, v2()).unwrap();
    assert!(
        bounded(&restarted, [2, 3]),
        "the raise recorded did not survive a restart"
    );
}

/// The book of `dir` as a start builds it ([`SchemaBook::of_dir`]).
fn of_dir(dir: &std::path::Path) -> SchemaBook {
    let book =
        SchemaBook::of_dir(v2(), None, crate::storage::vfs::real(), dir.to_path_buf()).unwrap();
    book.hear_peers();
    book
}

/// Review s58 sessions #2: a book that never checks a write (a follower)
/// raises once hellos from every voter of its configuration proved it, so
/// that after a restart with a voter down it still proposes the bounded
/// entries should it lead.
#[test]
fn hellos_alone_raise_once_every_voter_was_heard() {
    let dir = tempfile::tempdir().unwrap();
    save_schema(&RealFs, dir.path(), &v2()).unwrap();
    let book = of_dir(dir.path());
    book.raise_on_hellos(|| vec![2, 3]);
    book.accept_peer(2, v2()).unwrap();
    book.wait_raise_written();
    assert_eq!(
        load_raised_schema(&RealFs, dir.path()).unwrap(),
        None,
        "raised with voter 3 unheard"
    );
    let old = {
        let mut s = v2();
        s.runtime_log = crate::schema::RUNTIME_LOG_FAIR_SESSIONS;
        s
    };
    book.accept_peer(3, old).unwrap();
    book.wait_raise_written();
    assert_eq!(
        load_raised_schema(&RealFs, dir.path()).unwrap(),
        None,
        "raised with voter 3 on an older runtime log"
    );
    book.accept_peer(3, v2()).unwrap();
    book.wait_raise_written();
    assert_eq!(
        load_raised_schema(&RealFs, dir.path()).unwrap(),
        Some(v2()),
        "hellos from every voter on this raftkit did not raise"
    );
    let restarted = of_dir(dir.path());
    restarted.accept_peer(2, v2()).unwrap();
    assert!(
        bounded(&restarted, [2, 3]),
        "a restarted book with voter 3 unheard fell back to the unbounded entries"
    );
}

/// No voters published yet (the node task has not run): a hello raises
/// nothing (review, stop 45).
#[test]
fn hellos_with_no_voter_known_raise_nothing() {
    let dir = tempfile::tempdir().unwrap();
    save_schema(&RealFs, dir.path(), &v2()).unwrap();
    let book = of_dir(dir.path());
    book.raise_on_hellos(Vec::new);
    book.accept_peer(2, v2()).unwrap();
    book.wait_raise_written();
    assert_eq!(load_raised_schema(&RealFs, dir.path()).unwrap(), None);
    assert!(!bounded(&book, [2, 3]));
}

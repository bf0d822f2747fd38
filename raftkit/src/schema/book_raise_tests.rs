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

/// A schema of this raftkit with the write tags `writes`.
fn with_writes(writes: &[u32]) -> Schema {
    let mut s = Schema::new("kv", 1, Shape::Unit);
    for &t in writes {
        s.push(
            HandlerKind::Write,
            t,
            &format!("w{t}"),
            Shape::Str,
            Shape::Unit,
        );
    }
    s
}

/// The book of a new directory as a start of `local` builds it, the node
/// founding its cluster (`joined` false) or joining one.
fn new_dir(local: &Schema, joined: bool) -> (tempfile::TempDir, SchemaBook) {
    let dir = tempfile::tempdir().unwrap();
    if joined {
        crate::schema::save_joined_schema(&RealFs, dir.path(), local).unwrap();
    } else {
        save_schema(&RealFs, dir.path(), local).unwrap();
    }
    let book = SchemaBook::of_dir(
        local.clone(),
        None,
        crate::storage::vfs::real(),
        dir.path().to_path_buf(),
    )
    .unwrap();
    book.hear_peers();
    (dir, book)
}

/// s60 schema #1: a node that joined its cluster on a new directory (a v2
/// machine provisioned mid-upgrade) and leads takes a voter it never
/// heard to know no write: that voter may run v1, and would halt at v2's
/// write tag 1. Once every voter was heard on v2 the floor is raised, and
/// a restart keeps it.
#[test]
fn a_joined_directory_takes_an_unheard_voter_to_know_no_write() {
    let (dir, book) = new_dir(&with_writes(&[0, 1]), true);
    book.accept_peer(2, with_writes(&[0, 1])).unwrap();
    for tag in [0, 1] {
        let e = book.check_enabled(HandlerKind::Write, tag, [2, 3]);
        assert!(
            matches!(&e, Err(crate::Error::Unsupported(m)) if m.contains("voter 3") && m.contains("joined its cluster")),
            "a leader that joined on a fresh directory enabled write tag {tag} for voter 3, never heard: {e:?}"
        );
    }
    // Voter 3 heard on v1: what it knows is enabled, v2's write is not,
    // and nothing is raised.
    book.accept_peer(3, with_writes(&[0])).unwrap();
    book.check_enabled(HandlerKind::Write, 0, [2, 3]).unwrap();
    assert!(book.check_enabled(HandlerKind::Write, 1, [2, 3]).is_err());
    book.wait_raise_written();
    assert_eq!(load_raised_schema(&RealFs, dir.path()).unwrap(), None);
    assert!(book.check_enabled(HandlerKind::Write, 0, [2, 4]).is_err());
    // Every voter on v2: raised, in memory and in the directory.
    book.accept_peer(3, with_writes(&[0, 1])).unwrap();
    book.check_enabled(HandlerKind::Write, 1, [2, 3]).unwrap();
    book.wait_raise_written();
    book.check_enabled(HandlerKind::Write, 1, [2, 4]).unwrap();
    let restarted = SchemaBook::of_dir(
        with_writes(&[0, 1]),
        Some(with_writes(&[0, 1])),
        crate::storage::vfs::real(),
        dir.path().to_path_buf(),
    )
    .unwrap();
    restarted.hear_peers();
    restarted
        .check_enabled(HandlerKind::Write, 1, [2, 3])
        .unwrap();
}

/// A node that founded its cluster (every founding member runs one
/// binary) takes a voter not heard yet to know its own schema: a new
/// cluster's writes do not wait for each voter to link.
#[test]
fn a_founded_directory_takes_an_unheard_voter_to_know_its_own_writes() {
    let (_dir, book) = new_dir(&with_writes(&[0, 1]), false);
    book.check_enabled(HandlerKind::Write, 0, [2, 3]).unwrap();
    book.check_enabled(HandlerKind::Write, 1, [2, 3]).unwrap();
}

/// The joined floor is kept by later saves (an upgrade of the joined
/// node) and replaced only by a raise; it has no write and runtime log 0.
#[test]
fn the_joined_floor_is_kept_across_saves_until_raised() {
    use crate::schema::{joined_floor, load_oldest_schema, raise_oldest_schema};
    let (v1, v2) = (with_writes(&[0]), with_writes(&[0, 1]));
    let floor = joined_floor(&v1);
    assert!(floor.handlers.iter().all(|h| h.kind != HandlerKind::Write));
    assert_eq!(floor.runtime_log, 0);
    let dir = tempfile::tempdir().unwrap();
    crate::schema::save_joined_schema(&RealFs, dir.path(), &v1).unwrap();
    assert_eq!(
        load_oldest_schema(&RealFs, dir.path()).unwrap(),
        Some(floor.clone())
    );
    save_schema(&RealFs, dir.path(), &v2).unwrap();
    assert_eq!(
        load_oldest_schema(&RealFs, dir.path()).unwrap(),
        Some(floor)
    );
    raise_oldest_schema(&RealFs, dir.path(), &v2).unwrap();
    assert_eq!(load_oldest_schema(&RealFs, dir.path()).unwrap(), Some(v2));
}

/// A node that joined on v2 a cluster still on v1, once every voter was
/// heard (on v1), records what they proved: v1's writes. After a restart
/// with a voter down it still enables them (not v2's): the joined floor
/// no longer refuses every write.
#[test]
fn a_joined_directory_records_the_writes_every_voter_was_heard_to_know() {
    use crate::schema::load_oldest_schema;
    let (v1, v2) = (with_writes(&[0]), with_writes(&[0, 1]));
    let (dir, book) = new_dir(&v2, true);
    book.raise_on_hellos(|| vec![2, 3]);
    book.accept_peer(2, v1.clone()).unwrap();
    book.wait_raise_written();
    assert_eq!(
        load_raised_schema(&RealFs, dir.path()).unwrap(),
        None,
        "raised with voter 3 unheard"
    );
    book.accept_peer(3, v1.clone()).unwrap();
    book.wait_raise_written();
    let floor = load_oldest_schema(&RealFs, dir.path()).unwrap();
    assert!(
        floor
            .as_ref()
            .is_some_and(|f| f.handler(HandlerKind::Write, 0).is_some()
                && f.handler(HandlerKind::Write, 1).is_none()),
        "the floor does not record v1's writes, proven by every voter: {floor:?}"
    );
    book.check_enabled(HandlerKind::Write, 0, [2, 4]).unwrap();
    assert!(book.check_enabled(HandlerKind::Write, 1, [2, 4]).is_err());
    let restarted = SchemaBook::of_dir(
        v2.clone(),
        Some(v2.clone()),
        crate::storage::vfs::real(),
        dir.path().to_path_buf(),
    )
    .unwrap();
    restarted.hear_peers();
    restarted.accept_peer(2, v2.clone()).unwrap();
    restarted
        .check_enabled(HandlerKind::Write, 0, [2, 3])
        .unwrap();
    let e = restarted.check_enabled(HandlerKind::Write, 1, [2, 3]);
    assert!(
        matches!(&e, Err(crate::Error::Unsupported(m)) if m.contains("voter 3")),
        "{e:?}"
    );
}

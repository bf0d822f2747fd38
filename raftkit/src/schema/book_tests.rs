//! Tests of [`SchemaBook`]'s gates: which writes and raftkit entries
//! it enables, the raise of the oldest schema, and promotions (moved out
//! of `book.rs`, past 1,000 lines with them).

use super::*;
use crate::schema::Shape;

fn schema(writes: &[u32]) -> Schema {
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

#[test]
fn a_new_write_is_enabled_once_every_voter_knows_it() {
    let book = SchemaBook::new(schema(&[0, 1]), Some(schema(&[0])));
    // Unknown voters are assumed to know the floor.
    book.check_enabled(HandlerKind::Write, 0, [2, 3]).unwrap();
    let e = book
        .check_enabled(HandlerKind::Write, 1, [2, 3])
        .unwrap_err();
    assert!(
        matches!(&e, Error::Unsupported(m) if m.contains("`w1` (write tag 1)")),
        "{e}"
    );
    book.accept_peer(2, schema(&[0, 1])).unwrap();
    assert!(book.check_enabled(HandlerKind::Write, 1, [2, 3]).is_err());
    book.accept_peer(3, schema(&[0])).unwrap();
    assert!(book.check_enabled(HandlerKind::Write, 1, [2, 3]).is_err());
    book.accept_peer(3, schema(&[0, 1])).unwrap();
    book.check_enabled(HandlerKind::Write, 1, [2, 3]).unwrap();
    // A tag this binary does not know is never enabled.
    assert!(matches!(
        book.check_enabled(HandlerKind::Write, 7, []),
        Err(Error::Unsupported(_))
    ));
    // An incompatible peer is refused and not recorded.
    let mut bad = schema(&[0]);
    bad.handlers[0].args = Shape::U64;
    assert!(book.accept_peer(4, bad).is_err());
    assert!(book.peer(4).is_none());
}

fn with_runtime_log(mut s: Schema, version: u32) -> Schema {
    s.runtime_log = version;
    s
}

/// raftkit's own newer log entries are proposed only once every voter
/// applies them (its hello, or the floor for a voter unheard since the
/// start), and a learner that does not is not promoted once they are.
#[test]
fn a_newer_runtime_entry_is_proposed_once_every_voter_applies_it() {
    let old = || with_runtime_log(schema(&[0]), 0);
    let book = SchemaBook::new(schema(&[0]), Some(old()));
    assert!(book.knows_runtime_log(1, []), "alone");
    assert!(!book.knows_runtime_log(1, [2, 3]), "voters on the floor");
    assert!(book.knows_runtime_log(0, [2, 3]));
    book.accept_peer(2, schema(&[0])).unwrap();
    assert!(!book.knows_runtime_log(1, [2, 3]), "voter 3 unheard");
    book.accept_peer(3, old()).unwrap();
    assert!(!book.knows_runtime_log(1, [2, 3]), "voter 3 is older");
    book.accept_peer(3, schema(&[0])).unwrap();
    assert!(book.knows_runtime_log(1, [2, 3]));
    assert!(book.knows_runtime_log(crate::schema::RUNTIME_LOG, [2, 3]));
    assert!(
        !book.knows_runtime_log(crate::schema::RUNTIME_LOG + 1, [2, 3]),
        "unknown to this binary"
    );
    // Enabled: a learner of the older raftkit is not promoted.
    book.accept_peer(4, old()).unwrap();
    match book.check_promotion(4, &[2, 3]) {
        Err(PromotionRefused::Shrinks(why)) => {
            let version = format!("log entries of version {}", crate::schema::RUNTIME_LOG);
            assert!(why.contains(&version), "{why}")
        }
        other => panic!("{other:?}"),
    }
    // Not enabled (voter 3 went back to the older raftkit's hello):
    // nothing to shrink.
    book.accept_peer(3, old()).unwrap();
    book.check_promotion(4, &[2, 3]).unwrap();
}

/// A voter this leader has not heard from since it started counts as
/// the oldest schema the directory recorded, whatever the floor says:
/// the floor is this node's own last schema, which says nothing of a
/// voter still down on the older binary (stop 44). Promotion keeps the
/// floor: the log may hold newer entries proposed before the restart.
#[test]
fn a_voter_not_heard_from_counts_as_the_oldest_runtime_log() {
    let old = || with_runtime_log(schema(&[0]), 0);
    // A leader restarted on the new binary: its directory's floor is
    // the new raftkit, its oldest schema the old one; voter 3 is down,
    // still on the old one.
    let book = SchemaBook::new(schema(&[0]), Some(schema(&[0]))).with_oldest(Some(old()));
    book.hear_peers();
    book.accept_peer(2, schema(&[0])).unwrap();
    assert!(
        !book.knows_runtime_log(1, [2, 3]),
        "a voter not heard from since the start was taken to apply runtime log version 1 (the floor)"
    );
    assert!(book.knows_runtime_log(0, [2, 3]));
    book.accept_peer(3, old()).unwrap();
    assert!(!book.knows_runtime_log(1, [2, 3]), "voter 3 is older");
    book.accept_peer(3, schema(&[0])).unwrap();
    assert!(book.knows_runtime_log(1, [2, 3]), "every voter heard");
    // Voters 2 and 3 unheard again (a new book): a learner of the
    // older raftkit is still not promoted, as the floor says entries
    // of version 1 may be in the log.
    let book = SchemaBook::new(schema(&[0]), Some(schema(&[0])));
    book.hear_peers();
    book.accept_peer(4, old()).unwrap();
    assert!(matches!(
        book.check_promotion(4, &[2, 3]),
        Err(PromotionRefused::Shrinks(_))
    ));
    // Without hellos (no QUIC) nothing would ever be heard: the floor
    // stands, and a new cluster proposes the newer entries.
    let book = SchemaBook::new(schema(&[0]), None);
    assert!(book.knows_runtime_log(1, [2, 3]));
}

/// A voter this leader has not heard from since it started counts, for
/// a write, as knowing only the oldest schema the data directory
/// recorded, not the floor (stop 45): after the leader restarted twice
/// on v2 the floor is v2's schema, which says nothing of a voter still
/// down on v1; that voter would halt at the first v2 write.
#[test]
fn a_voter_not_heard_from_counts_as_the_oldest_recorded_schema() {
    // v1 knows write tag 0, v2 adds tag 1. The leader's directory
    // recorded v1 first, then v2 (its first v2 start): floor v2.
    let book =
        SchemaBook::new(schema(&[0, 1]), Some(schema(&[0, 1]))).with_oldest(Some(schema(&[0])));
    book.hear_peers();
    book.accept_peer(2, schema(&[0, 1])).unwrap();
    let e = book.check_enabled(HandlerKind::Write, 1, [2, 3]);
    assert!(
        matches!(&e, Err(Error::Unsupported(m)) if m.contains("voter 3")),
        "a voter not heard from since the start was taken to know write tag 1 (the floor, v2): {e:?}"
    );
    // What every binary that ran on the directory knows stays enabled.
    book.check_enabled(HandlerKind::Write, 0, [2, 3]).unwrap();
    book.accept_peer(3, schema(&[0])).unwrap();
    assert!(book.check_enabled(HandlerKind::Write, 1, [2, 3]).is_err());
    book.accept_peer(3, schema(&[0, 1])).unwrap();
    book.check_enabled(HandlerKind::Write, 1, [2, 3]).unwrap();
    // Promotion keeps the floor for unheard voters (the stricter
    // choice: writes of tag 1 may be in the log from before).
    let book =
        SchemaBook::new(schema(&[0, 1]), Some(schema(&[0, 1]))).with_oldest(Some(schema(&[0])));
    book.hear_peers();
    book.accept_peer(4, schema(&[0])).unwrap();
    assert!(matches!(
        book.check_promotion(4, &[2, 3]),
        Err(PromotionRefused::Shrinks(_))
    ));
    // Without hellos (no QUIC) nothing would ever be heard: the floor
    // stands.
    let book =
        SchemaBook::new(schema(&[0, 1]), Some(schema(&[0, 1]))).with_oldest(Some(schema(&[0])));
    book.check_enabled(HandlerKind::Write, 1, [2, 3]).unwrap();
}

/// A data directory upgraded v1 then v2 (its `schema.floor` holds v1),
/// and a book of v2 reading it, as a start does.
fn upgraded_dir() -> (tempfile::TempDir, SchemaBook) {
    use crate::schema::{load_oldest_schema, save_schema};
    use crate::storage::vfs::RealFs;
    let dir = tempfile::tempdir().unwrap();
    save_schema(&RealFs, dir.path(), &schema(&[0])).unwrap();
    save_schema(&RealFs, dir.path(), &schema(&[0, 1])).unwrap();
    let book = SchemaBook::new(schema(&[0, 1]), Some(schema(&[0, 1])))
        .with_oldest(load_oldest_schema(&RealFs, dir.path()).unwrap())
        .with_oldest_file(crate::storage::vfs::real(), dir.path().to_path_buf());
    book.hear_peers();
    (dir, book)
}

/// Once every voter was heard on v2, the oldest schema is raised to v2,
/// in memory and in `schema.floor`: after a restart, a voter down or
/// not linked yet no longer keeps v2's new write refused.
#[test]
fn the_oldest_schema_is_raised_once_every_voter_was_heard_on_this_one() {
    use crate::schema::load_oldest_schema;
    use crate::storage::vfs::RealFs;
    let (dir, book) = upgraded_dir();
    assert!(book.check_enabled(HandlerKind::Write, 1, [2, 3]).is_err());
    book.accept_peer(2, schema(&[0, 1])).unwrap();
    book.accept_peer(3, schema(&[0, 1])).unwrap();
    book.check_enabled(HandlerKind::Write, 1, [2, 3]).unwrap();
    book.wait_raise_written();
    assert_eq!(
        load_oldest_schema(&RealFs, dir.path()).unwrap(),
        Some(schema(&[0, 1])),
        "the oldest schema recorded was not raised after every voter was heard on v2"
    );
    // In memory at once: a voter of a later configuration not heard
    // from is taken to know v2.
    book.check_enabled(HandlerKind::Write, 1, [2, 4]).unwrap();
    // After a restart (a new book from the directory), voter 3 not
    // heard from yet.
    let restarted = SchemaBook::new(schema(&[0, 1]), Some(schema(&[0, 1])))
        .with_oldest(load_oldest_schema(&RealFs, dir.path()).unwrap());
    restarted.hear_peers();
    restarted.accept_peer(2, schema(&[0, 1])).unwrap();
    restarted
        .check_enabled(HandlerKind::Write, 1, [2, 3])
        .unwrap();
}

/// A voter heard on an older schema, or not heard from, keeps the
/// oldest schema where it is.
#[test]
fn a_voter_on_an_older_schema_or_unheard_prevents_the_raise() {
    use crate::schema::load_oldest_schema;
    use crate::storage::vfs::RealFs;
    let (dir, book) = upgraded_dir();
    book.accept_peer(2, schema(&[0, 1])).unwrap();
    // Voter 3 unheard.
    book.check_enabled(HandlerKind::Write, 0, [2, 3]).unwrap();
    // Voter 3 heard on v1.
    book.accept_peer(3, schema(&[0])).unwrap();
    book.check_enabled(HandlerKind::Write, 0, [2, 3]).unwrap();
    assert!(book.check_enabled(HandlerKind::Write, 1, [2, 3]).is_err());
    book.wait_raise_written();
    assert_eq!(
        load_oldest_schema(&RealFs, dir.path()).unwrap(),
        Some(schema(&[0])),
        "the oldest schema was raised with a voter on v1 or unheard"
    );
    // Still refused for an unheard voter.
    let e = book
        .check_enabled(HandlerKind::Write, 1, [2, 4])
        .unwrap_err();
    assert!(matches!(e, Error::Unsupported(_)), "{e:?}");
}

/// With no voter given (the node task has not published its
/// configuration yet, so the voters read as none), nothing is raised:
/// a voter down on v1 would otherwise count as knowing v2 for good
/// (review, stop 45).
#[test]
fn no_voter_to_hear_raises_nothing() {
    use crate::schema::load_oldest_schema;
    use crate::storage::vfs::RealFs;
    let (dir, book) = upgraded_dir();
    book.check_enabled(HandlerKind::Write, 1, []).unwrap();
    book.wait_raise_written();
    assert_eq!(
        load_oldest_schema(&RealFs, dir.path()).unwrap(),
        Some(schema(&[0])),
        "the oldest schema was raised with no voter heard"
    );
    let e = book
        .check_enabled(HandlerKind::Write, 1, [2, 3])
        .unwrap_err();
    assert!(matches!(e, Error::Unsupported(_)), "{e:?}");
}

#[test]
fn a_learner_is_promoted_only_if_it_knows_every_enabled_write() {
    let book = SchemaBook::new(schema(&[0, 1]), None);
    // Without hellos (no QUIC), an unheard learner is taken to know
    // the floor, like a voter.
    book.check_promotion(4, &[2, 3]).unwrap();
    book.hear_peers();
    assert_eq!(
        book.check_promotion(4, &[2, 3]),
        Err(PromotionRefused::Unheard)
    );
    // Tag 1 is enabled (voters 2 and 3 are taken to know the floor):
    // a learner without it is refused.
    book.accept_peer(4, schema(&[0])).unwrap();
    match book.check_promotion(4, &[2, 3]) {
        Err(PromotionRefused::Shrinks(why)) => assert!(why.contains("write tag 1"), "{why}"),
        other => panic!("{other:?}"),
    }
    // Not enabled (voter 3 runs the older binary): nothing to shrink.
    book.accept_peer(3, schema(&[0])).unwrap();
    book.check_promotion(4, &[2, 3]).unwrap();
    // A lower state version than every voter's is refused.
    let mut newer = schema(&[0, 1]);
    newer.state_version = 2;
    let book = SchemaBook::new(newer.clone(), None);
    book.hear_peers();
    book.accept_peer(2, newer).unwrap();
    book.accept_peer(4, schema(&[0, 1])).unwrap();
    match book.check_promotion(4, &[2]) {
        Err(PromotionRefused::Shrinks(why)) => {
            assert!(why.contains("state version 1"), "{why}")
        }
        other => panic!("{other:?}"),
    }
}

/// A data directory upgraded from a raftkit applying runtime log
/// version 1 (its `schema.floor`) to this one, and a book of this
/// raftkit reading it, as a start does.
fn upgraded_runtime_dir() -> (tempfile::TempDir, SchemaBook) {
    use crate::schema::{load_oldest_schema, save_schema};
    use crate::storage::vfs::RealFs;
    let dir = tempfile::tempdir().unwrap();
    save_schema(&RealFs, dir.path(), &with_runtime_log(schema(&[0]), 1)).unwrap();
    save_schema(&RealFs, dir.path(), &schema(&[0])).unwrap();
    let book = SchemaBook::new(schema(&[0]), Some(schema(&[0])))
        .with_oldest(load_oldest_schema(&RealFs, dir.path()).unwrap())
        .with_oldest_file(crate::storage::vfs::real(), dir.path().to_path_buf());
    book.hear_peers();
    (dir, book)
}

/// Review s57 (sessions #2): a voter unheard since this node started
/// counts, for raftkit's own entries, as the oldest schema recorded,
/// raised or not, as for a write tag: once every voter was heard on
/// this raftkit, a leader that restarts (or a new one) with a voter
/// down keeps proposing the bounded session entries (rule 9 of
/// `runtime::session`) instead of falling back to the unbounded ones.
#[test]
fn an_unheard_voter_counts_as_the_raised_runtime_log() {
    use crate::schema::{RUNTIME_LOG_BOUNDED_SESSIONS, load_oldest_schema};
    use crate::storage::vfs::RealFs;
    let bounded =
        |book: &SchemaBook, voters: [NodeId; 2]| crate::runtime::session::bounded(book, voters);
    let (dir, book) = upgraded_runtime_dir();
    book.accept_peer(2, schema(&[0])).unwrap();
    assert!(!bounded(&book, [2, 3]), "not raised, voter 3 unheard");
    book.accept_peer(3, schema(&[0])).unwrap();
    assert!(bounded(&book, [2, 3]));
    book.check_enabled(HandlerKind::Write, 0, [2, 3]).unwrap();
    book.wait_raise_written();
    assert_eq!(
        load_oldest_schema(&RealFs, dir.path()).unwrap(),
        Some(schema(&[0]))
    );
    assert!(bounded(&book, [2, 4]), "raised, voter 4 unheard");
    // A leader that restarted: voter 3 down since.
    let restarted = SchemaBook::new(schema(&[0]), Some(schema(&[0])))
        .with_oldest(load_oldest_schema(&RealFs, dir.path()).unwrap())
        .with_raised(crate::schema::load_raised_schema(&RealFs, dir.path()).unwrap());
    restarted.hear_peers();
    restarted.accept_peer(2, schema(&[0])).unwrap();
    assert!(
        bounded(&restarted, [2, 3]),
        "the gate fell back to the unbounded entries with voter 3 unheard after the raise"
    );
    assert!(restarted.knows_runtime_log(RUNTIME_LOG_BOUNDED_SESSIONS, [2, 3]));
}

/// Review s57 (sessions #2): the oldest schema is raised only once
/// every voter was heard applying this binary's runtime log version
/// too, else the raise would take an unheard voter to apply entries it
/// cannot decode.
#[test]
fn voters_on_an_older_runtime_log_prevent_the_raise() {
    use crate::schema::load_oldest_schema;
    use crate::storage::vfs::RealFs;
    let (dir, book) = upgraded_runtime_dir();
    book.accept_peer(2, schema(&[0])).unwrap();
    book.accept_peer(3, with_runtime_log(schema(&[0]), 1))
        .unwrap();
    book.check_enabled(HandlerKind::Write, 0, [2, 3]).unwrap();
    book.wait_raise_written();
    assert_eq!(
        load_oldest_schema(&RealFs, dir.path()).unwrap(),
        Some(with_runtime_log(schema(&[0]), 1)),
        "raised with voter 3 applying runtime log version 1"
    );
    assert!(!crate::runtime::session::bounded(&book, [2, 4]));
}

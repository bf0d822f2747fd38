//! The conformance suite every [`LogStore`] must pass.
//!
//! Run it on your own store (say one on RocksDB) from a test:
//!
//! ```no_run
//! # use raftkit::storage::{conformance, MemLogStore};
//! // All checks, in one test:
//! conformance::run_all(MemLogStore::new);
//! // For a durable store, also the checks that reopen it: `reopen` gets a
//! // synced store, drops it, and opens the same data again.
//! # let reopen = |s: MemLogStore| s;
//! conformance::run_durable(MemLogStore::new, reopen);
//! ```
//!
//! or generate one `#[test]` per check with
//! [`log_store_conformance!`](crate::log_store_conformance):
//!
//! ```
//! # mod in_memory {
//! use raftkit::storage::MemLogStore;
//! raftkit::log_store_conformance!(MemLogStore::new);
//! # }
//! # mod durable {
//! # use raftkit::storage::MemLogStore;
//! # fn make_store() -> MemLogStore { MemLogStore::new() }
//! # fn reopen_store(store: MemLogStore) -> MemLogStore { store }
//! raftkit::log_store_conformance!(make_store, reopen = reopen_store);
//! # }
//! ```
//!
//! (each in its own module: the macro names the modules it generates).
//!
//! Every check takes a fresh, empty store and panics with a message naming
//! the broken rule. The checks pin down the contract documented on
//! [`LogStore`]: append (and its overwrite of a conflicting suffix), suffix
//! truncation, prefix compaction (including past the end of the log and onto
//! a conflicting log), range reads and their errors, terms at the
//! boundaries, the hard state, and, for durable stores, that all of it
//! survives a reopen after `sync`.

use super::{LogStore, StorageError};
use crate::core::types::{Configuration, Entry, HardState, Index, Payload, Term};

/// A check run on a fresh store.
pub type Check<S> = fn(S);
/// A check run on a fresh store with a reopen hook.
pub type DurableCheck<S> = fn(S, &mut dyn FnMut(S) -> S);

/// The names and functions of the checks for every store.
pub fn checks<S: LogStore>() -> Vec<(&'static str, Check<S>)> {
    vec![
        ("empty_store", empty_store::<S>),
        ("append_and_read", append_and_read::<S>),
        ("append_empty_is_noop", append_empty_is_noop::<S>),
        (
            "append_overwrites_conflicting_suffix",
            append_overwrites_conflicting_suffix::<S>,
        ),
        ("append_rejects_bad_input", append_rejects_bad_input::<S>),
        ("append_owned_is_append", append_owned_is_append::<S>),
        ("truncate_suffix", truncate_suffix::<S>),
        ("compact_prefix", compact_prefix::<S>),
        ("compact_past_last_index", compact_past_last_index::<S>),
        (
            "compact_conflicting_log_discards_it",
            compact_conflicting_log_discards_it::<S>,
        ),
        ("read_range_errors", read_range_errors::<S>),
        ("hard_state", hard_state::<S>),
        ("large_and_many_entries", large_and_many_entries::<S>),
    ]
}

/// The names and functions of the checks for durable stores.
pub fn durable_checks<S: LogStore>() -> Vec<(&'static str, DurableCheck<S>)> {
    vec![
        ("reopen_empty", reopen_empty::<S>),
        (
            "reopen_entries_and_hard_state",
            reopen_entries_and_hard_state::<S>,
        ),
        ("reopen_hard_state_changes", reopen_hard_state_changes::<S>),
        ("reopen_after_overwrite", reopen_after_overwrite::<S>),
        ("reopen_after_compaction", reopen_after_compaction::<S>),
        ("reopen_repeatedly", reopen_repeatedly::<S>),
    ]
}

/// Runs every check of [`checks`], each on a store from `make`.
pub fn run_all<S: LogStore>(mut make: impl FnMut() -> S) {
    for (name, check) in checks::<S>() {
        tracing::debug!(check = name, "log store conformance");
        check(make());
    }
}

/// Runs every check of [`checks`] and [`durable_checks`]. `reopen` gets a
/// store that was just synced, must drop (close) it and return the store
/// opened anew on the same data.
pub fn run_durable<S: LogStore>(mut make: impl FnMut() -> S, mut reopen: impl FnMut(S) -> S) {
    run_all(&mut make);
    for (name, check) in durable_checks::<S>() {
        tracing::debug!(check = name, "log store durable conformance");
        check(make(), &mut reopen);
    }
}

/// Generates one `#[test]` per conformance check, in a module named
/// `log_store_conformance`. `make` is an expression callable as
/// `make() -> S`; with `reopen = f`, `f(S) -> S` also gets the durable checks.
#[macro_export]
macro_rules! log_store_conformance {
    ($make:expr) => {
        $crate::log_store_conformance!(@tests $make; empty_store, append_and_read,
            append_empty_is_noop, append_overwrites_conflicting_suffix,
            append_rejects_bad_input, append_owned_is_append, truncate_suffix, compact_prefix,
            compact_past_last_index, compact_conflicting_log_discards_it,
            read_range_errors, hard_state, large_and_many_entries);
    };
    ($make:expr, reopen = $reopen:expr) => {
        $crate::log_store_conformance!($make);
        $crate::log_store_conformance!(@durable $make, $reopen; reopen_empty,
            reopen_entries_and_hard_state, reopen_hard_state_changes, reopen_after_overwrite,
            reopen_after_compaction, reopen_repeatedly);
    };
    (@tests $make:expr; $($check:ident),*) => {
        #[allow(non_snake_case)]
        mod log_store_conformance {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[test]
                fn $check() {
                    $crate::storage::conformance::$check(($make)());
                }
            )*
        }
    };
    (@durable $make:expr, $reopen:expr; $($check:ident),*) => {
        #[allow(non_snake_case)]
        mod log_store_conformance_durable {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[test]
                fn $check() {
                    let mut reopen = $reopen;
                    $crate::storage::conformance::$check(($make)(), &mut reopen);
                }
            )*
        }
    };
}

// ---------------------------------------------------------------- helpers

fn entry(index: Index, term: Term) -> Entry {
    let payload = match index % 3 {
        0 => Payload::Noop,
        1 => Payload::Command(format!("cmd {index} @ {term}").into_bytes().into()),
        _ => Payload::Config(Configuration::new([1, 2, index])),
    };
    Entry {
        term,
        index,
        payload,
    }
}

fn run(lo: Index, hi: Index, term: Term) -> Vec<Entry> {
    (lo..=hi).map(|i| entry(i, term)).collect()
}

fn ok<T>(what: &str, r: Result<T, StorageError>) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("{what}: unexpected error: {e}"),
    }
}

fn all<S: LogStore>(s: &S) -> Vec<Entry> {
    ok(
        "entries(first, last + 1)",
        s.entries(s.first_index(), s.last_index() + 1),
    )
}

fn assert_shape<S: LogStore>(s: &S, first: Index, last: Index, what: &str) {
    assert_eq!(s.first_index(), first, "{what}: first_index");
    assert_eq!(s.last_index(), last, "{what}: last_index");
}

/// Checks that the store holds exactly `expected` after the boundary
/// `(first - 1, boundary_term)`.
fn assert_log<S: LogStore>(
    s: &S,
    first: Index,
    boundary_term: Term,
    expected: &[Entry],
    what: &str,
) {
    let last = first + expected.len() as Index - 1;
    assert_shape(s, first, last, what);
    assert_eq!(all(s), expected, "{what}: entries");
    assert_eq!(
        ok("term", s.term(first - 1)),
        Some(boundary_term),
        "{what}: term at the boundary {}",
        first - 1
    );
    for e in expected {
        assert_eq!(
            ok("term", s.term(e.index)),
            Some(e.term),
            "{what}: term({})",
            e.index
        );
    }
    assert_eq!(
        ok("term", s.term(last + 1)),
        None,
        "{what}: term past the end"
    );
    if first >= 2 {
        assert_eq!(
            ok("term", s.term(first - 2)),
            None,
            "{what}: term below the boundary"
        );
    }
}

// ---------------------------------------------------------------- checks

/// A new store is empty: first 1, last 0, term(0) = 0, default hard state.
pub fn empty_store<S: LogStore>(s: S) {
    assert_log(&s, 1, 0, &[], "empty store");
    assert_eq!(
        s.hard_state(),
        HardState::default(),
        "empty store: hard state"
    );
    assert_eq!(ok("last_term", s.last_term()), 0, "empty store: last_term");
    assert!(
        matches!(s.entries(1, 2), Err(StorageError::Unavailable { .. })),
        "empty store: entries(1, 2) must be Unavailable"
    );
}

/// Appended entries read back identically, in whole and in part.
pub fn append_and_read<S: LogStore>(mut s: S) {
    let mut es = run(1, 4, 1);
    es.extend(run(5, 9, 2));
    es.extend(run(10, 10, 5));
    ok("append", s.append(&es[..3]));
    ok("append", s.append(&es[3..]));
    assert_log(&s, 1, 0, &es, "after append");
    assert_eq!(ok("entries", s.entries(3, 7)), es[2..6], "entries(3, 7)");
    assert_eq!(ok("entries", s.entries(10, 11)), es[9..], "entries(10, 11)");
    assert!(
        ok("entries", s.entries(4, 4)).is_empty(),
        "entries(4, 4) is empty"
    );
    assert!(
        ok("entries", s.entries(11, 11)).is_empty(),
        "entries(last + 1, last + 1) is empty"
    );
    assert_eq!(ok("last_term", s.last_term()), 5, "last_term");
    ok("sync", s.sync());
    assert_log(&s, 1, 0, &es, "after sync");
}

/// Appending nothing changes nothing.
pub fn append_empty_is_noop<S: LogStore>(mut s: S) {
    ok("append", s.append(&[]));
    assert_log(&s, 1, 0, &[], "empty append on empty log");
    ok("append", s.append(&run(1, 3, 1)));
    ok("append", s.append(&[]));
    assert_log(&s, 1, 0, &run(1, 3, 1), "empty append");
}

/// An append starting at or below the last index replaces the suffix.
pub fn append_overwrites_conflicting_suffix<S: LogStore>(mut s: S) {
    ok("append", s.append(&run(1, 10, 1)));
    ok("append", s.append(&run(6, 8, 2)));
    let mut expected = run(1, 5, 1);
    expected.extend(run(6, 8, 2));
    assert_log(&s, 1, 0, &expected, "overwrite in the middle");
    // Overwrite the very last entry, then extend.
    ok("append", s.append(&run(8, 12, 3)));
    expected.truncate(7);
    expected.extend(run(8, 12, 3));
    assert_log(&s, 1, 0, &expected, "overwrite the last entry");
    // Overwrite from the first entry.
    ok("append", s.append(&run(1, 2, 4)));
    assert_log(&s, 1, 0, &run(1, 2, 4), "overwrite from the first entry");
    ok("sync", s.sync());
    assert_log(&s, 1, 0, &run(1, 2, 4), "after sync");
}

/// [`LogStore::append_owned`] does exactly what `append` does: appends,
/// overwrites a conflicting suffix, ignores an empty batch, and refuses
/// (changing nothing) what `append` refuses.
pub fn append_owned_is_append<S: LogStore>(mut s: S) {
    ok("append_owned", s.append_owned(run(1, 10, 1)));
    ok("append_owned", s.append_owned(Vec::new()));
    assert_log(&s, 1, 0, &run(1, 10, 1), "append_owned");
    ok("append_owned", s.append_owned(run(6, 8, 2)));
    let mut expected = run(1, 5, 1);
    expected.extend(run(6, 8, 2));
    assert_log(
        &s,
        1,
        0,
        &expected,
        "append_owned over a conflicting suffix",
    );
    assert!(
        matches!(
            s.append_owned(run(10, 11, 2)),
            Err(StorageError::Invalid(_))
        ),
        "append_owned: a gap must be Invalid"
    );
    assert!(
        matches!(
            s.append_owned(vec![entry(9, 3), entry(10, 2)]),
            Err(StorageError::Invalid(_))
        ),
        "append_owned: falling terms must be Invalid"
    );
    assert!(
        matches!(
            s.append_owned(vec![entry(0, 2)]),
            Err(StorageError::Compacted { .. })
        ),
        "append_owned: index 0 is never appendable"
    );
    assert_log(&s, 1, 0, &expected, "after refused append_owned calls");
    ok("sync", s.sync());
    assert_log(&s, 1, 0, &expected, "append_owned, after sync");
}

/// Gaps, non-contiguous batches, falling terms and compacted indexes are
/// refused and change nothing.
pub fn append_rejects_bad_input<S: LogStore>(mut s: S) {
    ok("append", s.append(&run(1, 3, 2)));
    let before = run(1, 3, 2);
    assert!(
        matches!(s.append(&run(5, 6, 2)), Err(StorageError::Invalid(_))),
        "a gap must be Invalid"
    );
    let holes = vec![entry(4, 2), entry(6, 2)];
    assert!(
        matches!(s.append(&holes), Err(StorageError::Invalid(_))),
        "a non-contiguous batch must be Invalid"
    );
    let falling = vec![entry(4, 3), entry(5, 2)];
    assert!(
        matches!(s.append(&falling), Err(StorageError::Invalid(_))),
        "falling terms must be Invalid"
    );
    assert!(
        matches!(s.append(&run(4, 4, 1)), Err(StorageError::Invalid(_))),
        "a term below the previous entry's must be Invalid"
    );
    assert!(
        matches!(
            s.append(&[entry(0, 2)]),
            Err(StorageError::Compacted { .. })
        ),
        "index 0 is never appendable"
    );
    assert_log(&s, 1, 0, &before, "after refused appends");
    ok("compact", s.compact_prefix(2, 2));
    assert!(
        matches!(s.append(&run(2, 4, 2)), Err(StorageError::Compacted { .. })),
        "appending into the compacted prefix must be Compacted"
    );
    assert_log(
        &s,
        3,
        2,
        &before[2..],
        "after refused append into the compacted prefix",
    );
}

/// truncate_suffix removes entries from an index on; beyond the end it is a
/// no-op; below the first index it is an error.
pub fn truncate_suffix<S: LogStore>(mut s: S) {
    ok("append", s.append(&run(1, 10, 1)));
    // Exactly the last entry (found by mutation audit, stop 52, M9: a
    // store that kept it passed the kit).
    ok("truncate", s.truncate_suffix(10));
    assert_log(&s, 1, 0, &run(1, 9, 1), "truncate the last entry");
    ok("append", s.append(&run(10, 10, 2)));
    let mut expected = run(1, 9, 1);
    expected.extend(run(10, 10, 2));
    assert_log(
        &s,
        1,
        0,
        &expected,
        "append after truncating the last entry",
    );
    ok("truncate", s.truncate_suffix(8));
    assert_log(&s, 1, 0, &run(1, 7, 1), "truncate from 8");
    ok("truncate", s.truncate_suffix(100));
    assert_log(&s, 1, 0, &run(1, 7, 1), "truncate past the end");
    ok("truncate", s.truncate_suffix(8));
    assert_log(&s, 1, 0, &run(1, 7, 1), "truncate at last + 1");
    ok("append", s.append(&run(8, 9, 2)));
    let mut expected = run(1, 7, 1);
    expected.extend(run(8, 9, 2));
    assert_log(&s, 1, 0, &expected, "append after truncate");
    ok("compact", s.compact_prefix(3, 1));
    assert!(
        matches!(s.truncate_suffix(3), Err(StorageError::Compacted { .. })),
        "truncating into the compacted prefix must be Compacted"
    );
    ok("truncate", s.truncate_suffix(4));
    assert_log(
        &s,
        4,
        1,
        &[],
        "truncate from the first index empties the log",
    );
    ok("append", s.append(&run(4, 5, 3)));
    assert_log(&s, 4, 1, &run(4, 5, 3), "append after emptying");
    ok("sync", s.sync());
}

/// compact_prefix drops the prefix and keeps the boundary term.
pub fn compact_prefix<S: LogStore>(mut s: S) {
    let mut es = run(1, 5, 1);
    es.extend(run(6, 10, 2));
    ok("append", s.append(&es));
    ok("compact", s.compact_prefix(5, 1));
    assert_log(&s, 6, 1, &es[5..], "compact to 5");
    assert!(
        matches!(s.entries(5, 7), Err(StorageError::Compacted { .. })),
        "reading the compacted prefix must be Compacted"
    );
    ok("compact", s.compact_prefix(3, 1));
    assert_log(
        &s,
        6,
        1,
        &es[5..],
        "compacting below the first index is a no-op",
    );
    ok("compact", s.compact_prefix(5, 1));
    assert_log(
        &s,
        6,
        1,
        &es[5..],
        "compacting to the boundary again is a no-op",
    );
    ok("compact", s.compact_prefix(9, 2));
    assert_log(&s, 10, 2, &es[9..], "compact to 9");
    ok("compact", s.compact_prefix(10, 2));
    assert_log(&s, 11, 2, &[], "compact everything");
    ok("append", s.append(&run(11, 12, 3)));
    assert_log(
        &s,
        11,
        2,
        &run(11, 12, 3),
        "append after compacting everything",
    );
    ok("sync", s.sync());
}

/// Compacting past the last index empties the log and moves first_index.
pub fn compact_past_last_index<S: LogStore>(mut s: S) {
    ok("append", s.append(&run(1, 5, 1)));
    ok("compact", s.compact_prefix(20, 4));
    assert_log(&s, 21, 4, &[], "compact past the end");
    assert!(
        matches!(
            s.append(&run(20, 20, 4)),
            Err(StorageError::Compacted { .. })
        ),
        "appending at the boundary must be Compacted"
    );
    ok("append", s.append(&run(21, 23, 4)));
    assert_log(
        &s,
        21,
        4,
        &run(21, 23, 4),
        "append after compacting past the end",
    );
    // On an empty store too.
    ok("compact", s.compact_prefix(100, 5));
    assert_log(&s, 101, 5, &[], "compact past the end again");
    ok("sync", s.sync());
}

/// A snapshot whose last entry conflicts with the log replaces all of it.
pub fn compact_conflicting_log_discards_it<S: LogStore>(mut s: S) {
    ok("append", s.append(&run(1, 10, 1)));
    ok("compact", s.compact_prefix(5, 2));
    assert_log(&s, 6, 2, &[], "compact onto a conflicting entry");
    ok("append", s.append(&run(6, 7, 2)));
    assert_log(
        &s,
        6,
        2,
        &run(6, 7, 2),
        "append after the conflicting compaction",
    );
    ok("sync", s.sync());
}

/// Range reads fail clearly outside the log.
pub fn read_range_errors<S: LogStore>(mut s: S) {
    ok("append", s.append(&run(1, 10, 1)));
    ok("compact", s.compact_prefix(3, 1));
    assert!(
        matches!(s.entries(7, 5), Err(StorageError::Invalid(_))),
        "a reversed range must be Invalid"
    );
    assert!(
        matches!(s.entries(3, 5), Err(StorageError::Compacted { .. })),
        "a range below the first index must be Compacted"
    );
    assert!(
        matches!(s.entries(5, 12), Err(StorageError::Unavailable { .. })),
        "a range past the end must be Unavailable"
    );
    assert_eq!(
        ok("entries", s.entries(4, 11)),
        run(4, 10, 1),
        "the whole log"
    );
    assert_eq!(ok("term", s.term(2)), None, "term below the boundary");
    assert_eq!(ok("term", s.term(3)), Some(1), "term at the boundary");
    assert_eq!(ok("term", s.term(11)), None, "term past the end");
}

/// The hard state reads back what was saved, durable or not.
pub fn hard_state<S: LogStore>(mut s: S) {
    let hs = HardState {
        term: 7,
        vote: 3,
        commit: 0,
    };
    ok("save_hard_state", s.save_hard_state(hs));
    assert_eq!(s.hard_state(), hs, "hard state before sync");
    ok("sync", s.sync());
    assert_eq!(s.hard_state(), hs, "hard state after sync");
    let hs2 = HardState {
        term: 8,
        vote: 0,
        commit: 0,
    };
    ok("save_hard_state", s.save_hard_state(hs2));
    ok("save_hard_state", s.save_hard_state(hs2));
    assert_eq!(s.hard_state(), hs2, "hard state replaced");
    ok("sync", s.sync());
    ok("sync", s.sync());
    assert_eq!(s.hard_state(), hs2, "hard state after two syncs");
}

/// Many entries and a large one survive reads in any slicing.
pub fn large_and_many_entries<S: LogStore>(mut s: S) {
    let mut es: Vec<Entry> = Vec::new();
    for i in 1..=2000u64 {
        es.push(Entry {
            term: 1 + i / 500,
            index: i,
            payload: Payload::Command(vec![(i % 251) as u8; (i % 97) as usize].into()),
        });
    }
    es[1233].payload = Payload::Command(
        (0..200_000u32)
            .map(|x| (x % 256) as u8)
            .collect::<Vec<u8>>()
            .into(),
    );
    for chunk in es.chunks(137) {
        ok("append", s.append(chunk));
        if chunk[0].index % 3 == 0 {
            ok("sync", s.sync());
        }
    }
    ok("sync", s.sync());
    assert_log(&s, 1, 0, &es, "2000 entries");
    for (lo, hi) in [(1, 2), (1230, 1240), (1999, 2001), (500, 1500)] {
        assert_eq!(
            ok("entries", s.entries(lo, hi)),
            es[(lo - 1) as usize..(hi - 1) as usize],
            "entries({lo}, {hi})"
        );
    }
}

// ---------------------------------------------------------------- durable

/// A synced empty store reopens empty.
pub fn reopen_empty<S: LogStore>(mut s: S, reopen: &mut dyn FnMut(S) -> S) {
    ok("sync", s.sync());
    let s = reopen(s);
    assert_log(&s, 1, 0, &[], "reopened empty store");
    assert_eq!(
        s.hard_state(),
        HardState::default(),
        "reopened empty store: hard state"
    );
}

/// Synced entries and hard state survive a reopen, and appends continue.
pub fn reopen_entries_and_hard_state<S: LogStore>(mut s: S, reopen: &mut dyn FnMut(S) -> S) {
    let hs = HardState {
        term: 3,
        vote: 2,
        commit: 4,
    };
    ok("append", s.append(&run(1, 6, 3)));
    ok("save_hard_state", s.save_hard_state(hs));
    ok("sync", s.sync());
    let mut s = reopen(s);
    assert_log(&s, 1, 0, &run(1, 6, 3), "reopened");
    assert_eq!(s.hard_state(), hs, "reopened hard state");
    ok("append", s.append(&run(7, 8, 3)));
    ok("sync", s.sync());
    let s = reopen(s);
    assert_log(&s, 1, 0, &run(1, 8, 3), "reopened after appending more");
    assert_eq!(s.hard_state(), hs, "hard state after the second reopen");
}

/// Every change of the hard state survives a reopen, not only a new term:
/// a vote cast later in a term whose start was already saved (Raft Figure
/// 2: `votedFor` is persistent, so that a restarted voter cannot vote twice
/// in one term, §5.2), and a commit index raised within the term.
pub fn reopen_hard_state_changes<S: LogStore>(mut s: S, reopen: &mut dyn FnMut(S) -> S) {
    ok("append", s.append(&run(1, 3, 5)));
    let mut hs = HardState {
        term: 5,
        vote: 0,
        commit: 0,
    };
    ok("save_hard_state", s.save_hard_state(hs));
    ok("sync", s.sync());
    hs.vote = 2;
    ok("save_hard_state", s.save_hard_state(hs));
    ok("sync", s.sync());
    let mut s = reopen(s);
    assert_eq!(s.hard_state(), hs, "a vote cast within the term, reopened");
    hs.commit = 3;
    ok("save_hard_state", s.save_hard_state(hs));
    ok("sync", s.sync());
    let s = reopen(s);
    assert_eq!(s.hard_state(), hs, "a commit within the term, reopened");
}

/// Truncations and overwrites survive a reopen.
pub fn reopen_after_overwrite<S: LogStore>(mut s: S, reopen: &mut dyn FnMut(S) -> S) {
    ok("append", s.append(&run(1, 10, 1)));
    ok("sync", s.sync());
    ok("append", s.append(&run(4, 6, 2)));
    ok("truncate", s.truncate_suffix(6));
    ok("sync", s.sync());
    let mut expected = run(1, 3, 1);
    expected.extend(run(4, 5, 2));
    let mut s = reopen(s);
    assert_log(&s, 1, 0, &expected, "reopened after overwrite and truncate");
    ok("truncate", s.truncate_suffix(2));
    ok("sync", s.sync());
    let s = reopen(s);
    assert_log(&s, 1, 0, &run(1, 1, 1), "reopened after a truncation alone");
}

/// Compaction (within, past the end of, and conflicting with the log)
/// survives a reopen.
pub fn reopen_after_compaction<S: LogStore>(mut s: S, reopen: &mut dyn FnMut(S) -> S) {
    ok("append", s.append(&run(1, 10, 1)));
    ok("compact", s.compact_prefix(4, 1));
    ok("sync", s.sync());
    let mut s = reopen(s);
    assert_log(&s, 5, 1, &run(5, 10, 1), "reopened after compaction");
    ok("compact", s.compact_prefix(30, 2));
    ok("sync", s.sync());
    let mut s = reopen(s);
    assert_log(&s, 31, 2, &[], "reopened after compaction past the end");
    ok("append", s.append(&run(31, 35, 2)));
    ok("compact", s.compact_prefix(33, 3));
    ok("sync", s.sync());
    let s = reopen(s);
    assert_log(&s, 34, 3, &[], "reopened after a conflicting compaction");
}

/// A long mixed history survives a reopen after every sync.
pub fn reopen_repeatedly<S: LogStore>(mut s: S, reopen: &mut dyn FnMut(S) -> S) {
    let mut model = super::MemLogStore::new();
    for round in 1..=12u64 {
        let last = s.last_index();
        let term = round;
        let from = last.saturating_sub(round % 3).max(s.first_index());
        let batch = run(from, from + 40, term);
        ok("append", s.append(&batch));
        ok("model append", model.append(&batch));
        if round % 4 == 0 {
            let upto = s.last_index() - 25;
            let t = ok("term", s.term(upto)).unwrap_or(term);
            ok("compact", s.compact_prefix(upto, t));
            ok("model compact", model.compact_prefix(upto, t));
        }
        let hs = HardState {
            term,
            vote: round % 3,
            commit: s.first_index(),
        };
        ok("save_hard_state", s.save_hard_state(hs));
        ok("model", model.save_hard_state(hs));
        ok("sync", s.sync());
        s = reopen(s);
        let first = model.first_index();
        let boundary = ok("term", model.term(first - 1)).unwrap_or(0);
        assert_log(&s, first, boundary, &all(&model), &format!("round {round}"));
        assert_eq!(s.hard_state(), hs, "round {round}: hard state");
    }
}

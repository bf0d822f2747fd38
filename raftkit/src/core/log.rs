//! The replicated log as the core sees it (Raft §5.3).
//!
//! The core keeps every entry since the last snapshot in memory: the runtime
//! loads them from storage on start and the core hands new ones back to
//! storage through [`Ready`](super::Ready). Keeping the log here makes the
//! core a pure function of its inputs (no storage reads in the middle of a
//! step); snapshots bound the memory it takes.
//!
//! Four cursors describe what has happened to the entries:
//!
//! ```text
//!  snapshot.index < applied <= committed,   persisted <= last_index
//!                                           unstable  <= last_index + 1
//! ```
//!
//! - `committed`: known committed (Raft §5.3, §5.4.2).
//! - `applied`: handed to the state machine (through a `Ready`).
//! - `persisted`: durable in local storage (acknowledged by the runtime).
//! - `unstable`: the first index not yet handed to storage.
//!
//! Invariants: `entries[i].index == snapshot.index + 1 + i`; terms never
//! decrease along the log; committed entries are never truncated.
//! `committed_config` is the index of the last configuration entry at or
//! before `committed`, or at most `snapshot.index` when that is the
//! snapshot's configuration: it moves only when `committed` does (a
//! truncation never reaches a committed entry, a compaction only drops
//! entries the snapshot's configuration covers), so
//! [`RaftLog::committed_config`] answers without scanning.

use super::types::{Configuration, Entry, Index, Payload, SnapshotMeta, Term};

/// The in-memory log of one node.
#[derive(Clone, Debug)]
pub struct RaftLog {
    snapshot: SnapshotMeta,
    entries: Vec<Entry>,
    committed: Index,
    /// The index of the last configuration entry at or before
    /// `committed`; at most `snapshot.index` when none is held in
    /// `entries` (the snapshot's configuration is then the one).
    committed_config: Index,
    applied: Index,
    persisted: Index,
    unstable: Index,
}

impl RaftLog {
    /// A log restored from durable state: a snapshot (possibly empty) and the
    /// entries after it. Everything given is durable.
    pub fn restore(snapshot: SnapshotMeta, entries: Vec<Entry>, committed: Index) -> Self {
        let last = snapshot.index + entries.len() as Index;
        let committed = committed.clamp(snapshot.index, last);
        let mut log = RaftLog {
            applied: snapshot.index,
            persisted: last,
            unstable: last + 1,
            committed_config: snapshot.index,
            snapshot,
            entries,
            committed,
        };
        log.committed_config = log
            .last_config_in(log.snapshot.index, committed)
            .unwrap_or(log.snapshot.index);
        log
    }

    /// The index of the last configuration entry held in `(lo, hi]`, if
    /// any (a backward scan of that range only).
    fn last_config_in(&self, lo: Index, hi: Index) -> Option<Index> {
        let first = self.first_index();
        let from = lo.saturating_add(1).max(first);
        let hi = hi.min(self.last_index());
        if from > hi {
            return None;
        }
        let (a, b) = ((from - first) as usize, (hi - first) as usize);
        self.entries
            .get(a..=b)
            .unwrap_or_default()
            .iter()
            .rev()
            .find(|e| matches!(e.payload, Payload::Config(_)))
            .map(|e| e.index)
    }

    /// The snapshot the log starts after.
    pub fn snapshot(&self) -> &SnapshotMeta {
        &self.snapshot
    }

    /// The first index still held in memory (after the snapshot).
    pub fn first_index(&self) -> Index {
        self.snapshot.index + 1
    }

    /// The index of the last entry (or of the snapshot when empty).
    pub fn last_index(&self) -> Index {
        self.snapshot.index + self.entries.len() as Index
    }

    /// The term of the last entry.
    pub fn last_term(&self) -> Term {
        self.entries.last().map_or(self.snapshot.term, |e| e.term)
    }

    /// The commit index.
    pub fn committed(&self) -> Index {
        self.committed
    }

    /// The index up to which entries were handed to the state machine.
    pub fn applied(&self) -> Index {
        self.applied
    }

    /// The index up to which entries are durable locally.
    pub fn persisted(&self) -> Index {
        self.persisted
    }

    /// The term of the entry at `index`: `None` when it is compacted away
    /// (below the snapshot) or beyond the end.
    pub fn term(&self, index: Index) -> Option<Term> {
        if index == self.snapshot.index {
            return Some(self.snapshot.term);
        }
        self.entry(index).map(|e| e.term)
    }

    /// The entry at `index`, if held.
    pub fn entry(&self, index: Index) -> Option<&Entry> {
        if index <= self.snapshot.index {
            return None;
        }
        self.entries.get((index - self.snapshot.index - 1) as usize)
    }

    /// Whether the log holds an entry at `index` with `term` (the
    /// AppendEntries consistency check, Raft §5.3).
    pub fn matches(&self, index: Index, term: Term) -> bool {
        self.term(index) == Some(term)
    }

    /// Whether a candidate whose log ends at (`last_index`, `last_term`) is at
    /// least as up to date as this log (Raft §5.4.1).
    pub fn is_up_to_date(&self, last_index: Index, last_term: Term) -> bool {
        last_term > self.last_term()
            || (last_term == self.last_term() && last_index >= self.last_index())
    }

    /// Appends entries created by this node as leader.
    pub fn append(&mut self, entries: Vec<Entry>) {
        for e in entries {
            self.push(e);
        }
    }

    /// Appends one entry created by this node as leader (a proposal: no
    /// vector of one to allocate and free per write).
    pub fn push(&mut self, entry: Entry) {
        debug_assert_eq!(entry.index, self.last_index() + 1);
        self.entries.push(entry);
    }

    /// Appends a leader's entries after `prev_index`, truncating a
    /// conflicting suffix first (Raft §5.3: "If an existing entry conflicts
    /// with a new one, delete the existing entry and all that follow it").
    /// Entries already present with the same term are kept, so a stale or
    /// duplicated AppendEntries never truncates anything. Returns the index
    /// of the last entry of the message and whether the log was truncated.
    ///
    /// The caller has checked that the log matches at `prev_index` and
    /// that the entries follow it contiguously without conflicting with a
    /// committed entry (`inbound` drops any other AppendEntries). Should
    /// that ever not hold, the offending entry and the rest are ignored: the
    /// log's invariants are never broken and committed entries never
    /// truncated.
    pub fn append_after(&mut self, prev_index: Index, entries: Vec<Entry>) -> (Index, bool) {
        let mut last_new = prev_index;
        let mut truncated = false;
        for e in entries {
            let index = e.index;
            if Some(index) != last_new.checked_add(1) {
                break;
            }
            if index > self.snapshot.index {
                // (At or below our snapshot: committed, hence equal.)
                match self.term(index) {
                    Some(t) if t == e.term => {}
                    Some(_) if index <= self.committed => break,
                    Some(_) => {
                        self.truncate_from(index);
                        truncated = true;
                        self.entries.push(e);
                    }
                    None if index == self.last_index() + 1 => self.entries.push(e),
                    None => break,
                }
            }
            last_new = index;
        }
        (last_new, truncated)
    }

    /// Drops every entry from `index` on.
    fn truncate_from(&mut self, index: Index) {
        let keep = (index - self.snapshot.index - 1) as usize;
        self.entries.truncate(keep);
        self.persisted = self.persisted.min(index - 1);
        self.unstable = self.unstable.min(index);
    }

    /// Entries in `[lo, hi)` up to about `max_bytes` (at least one entry when
    /// the range is not empty). `None` when `lo` is compacted away.
    pub fn slice(&self, lo: Index, hi: Index, max_bytes: usize) -> Option<Vec<Entry>> {
        if lo <= self.snapshot.index {
            return None;
        }
        let hi = hi.min(self.last_index() + 1);
        if hi <= lo {
            return Some(Vec::new());
        }
        // `snapshot.index < lo < hi <= last_index + 1`: in range.
        let base = self.snapshot.index + 1;
        let held = self
            .entries
            .get((lo - base) as usize..(hi - base) as usize)
            .unwrap_or_default();
        // The entries that fit (at least one), then one exactly sized
        // clone of them: no per-index lookup or growth check per entry.
        let mut n = held.len();
        if max_bytes != usize::MAX {
            let mut size = 0;
            n = held
                .iter()
                .position(|e| {
                    size += e.approx_size();
                    size > max_bytes
                })
                .map_or(held.len(), |i| i.max(1));
        }
        Some(held.get(..n).unwrap_or_default().to_vec())
    }

    /// Raises the commit index (never lowers it).
    pub fn commit_to(&mut self, index: Index) {
        let index = index.min(self.last_index());
        if index > self.committed {
            // Each entry is looked at once, when it becomes committed.
            if let Some(at) = self.last_config_in(self.committed, index) {
                self.committed_config = at;
            }
            self.committed = index;
        }
    }

    /// Entries not yet handed to storage; marks them handed.
    pub fn take_unstable(&mut self) -> Vec<Entry> {
        let from = self.unstable.max(self.first_index());
        let out = self.slice(from, Index::MAX, usize::MAX).unwrap_or_default();
        self.unstable = self.last_index() + 1;
        out
    }

    /// Whether entries wait to be handed to storage.
    pub fn has_unstable(&self) -> bool {
        self.unstable <= self.last_index()
    }

    /// Storage reports entries up to (`index`, `term`) durable. A report for
    /// an entry that has since been replaced is ignored.
    pub fn persisted_to(&mut self, index: Index, term: Term) {
        if index > self.persisted && self.matches(index, term) && index < self.unstable {
            self.persisted = index;
        }
    }

    /// Committed, durable entries not yet handed to the state machine; marks
    /// them handed.
    pub fn take_committed(&mut self, max_bytes: usize) -> Vec<Entry> {
        let upto = self.committed.min(self.persisted);
        if upto <= self.applied {
            return Vec::new();
        }
        let out = self
            .slice(self.applied + 1, upto + 1, max_bytes)
            .unwrap_or_default();
        if let Some(last) = out.last() {
            self.applied = last.index;
        }
        out
    }

    /// Whether committed entries wait to be applied.
    pub fn has_committed(&self) -> bool {
        self.committed.min(self.persisted) > self.applied
    }

    /// The last configuration in the log or, failing that, the snapshot's,
    /// with the index it was appended at.
    pub fn last_config(&self) -> (Index, &Configuration) {
        self.entries
            .iter()
            .rev()
            .find_map(|e| match &e.payload {
                Payload::Config(c) => Some((e.index, c)),
                _ => None,
            })
            .unwrap_or((self.snapshot.index, &self.snapshot.config))
    }

    /// The last committed configuration: the last one appended at or
    /// before the commit index (`config_at(committed())`) with its index
    /// (the snapshot's index when it is the snapshot's), without scanning
    /// the log (module docs).
    pub fn committed_config(&self) -> (Index, &Configuration) {
        match self.entry(self.committed_config).map(|e| &e.payload) {
            Some(Payload::Config(c)) => (self.committed_config, c),
            _ => (self.snapshot.index, &self.snapshot.config),
        }
    }

    /// The configuration in force at `index`: the last one appended at or
    /// before it.
    pub fn config_at(&self, index: Index) -> &Configuration {
        self.entries
            .iter()
            .rev()
            .filter(|e| e.index <= index)
            .find_map(|e| match &e.payload {
                Payload::Config(c) => Some(c),
                _ => None,
            })
            .unwrap_or(&self.snapshot.config)
    }

    /// The largest index at or below `index` whose term is at most `term`,
    /// with that term: the follower's conflict hint and the leader's use of
    /// it (fast backtracking, Raft §5.3).
    pub fn find_conflict_by_term(&self, index: Index, term: Term) -> (Index, Term) {
        last_term_at_most(
            self.snapshot.index,
            index.min(self.last_index()),
            term,
            |i| self.term(i),
        )
    }

    /// Replaces the log's prefix by a snapshot. Entries after the snapshot are
    /// kept when the log agrees with the snapshot's last entry (Raft §7),
    /// otherwise the whole log is discarded.
    pub fn install_snapshot(&mut self, meta: SnapshotMeta) {
        let keep_tail = self.matches(meta.index, meta.term);
        if keep_tail {
            let drop = (meta.index - self.snapshot.index) as usize;
            self.entries.drain(..drop);
        } else {
            self.entries.clear();
        }
        self.committed = self.committed.max(meta.index);
        // The snapshot's configuration is the one at `meta.index`; a
        // configuration entry kept after it stays the last committed one.
        self.committed_config = if keep_tail {
            self.committed_config.max(meta.index)
        } else {
            meta.index
        };
        self.applied = self.applied.max(meta.index);
        if !keep_tail {
            self.persisted = meta.index;
            self.unstable = meta.index.saturating_add(1);
        } else {
            self.persisted = self.persisted.max(meta.index);
            self.unstable = self.unstable.max(meta.index.saturating_add(1));
        }
        self.snapshot = meta;
    }

    /// Forgets entries up to `index` because a local snapshot covers them,
    /// and returns them (in the log's old vector: the entries kept move
    /// into `room`, the ones let go do not move), so that the caller can
    /// drop them where dropping a long run of them stalls nothing. Only
    /// applied (hence committed, durable) entries can be compacted.
    ///
    /// `room` is an empty vector (anything in it is dropped) whose memory
    /// the log goes on in: the vector a former compaction returned, once
    /// emptied, is as large as the log grew, so the log grows again
    /// without new memory (each new page of which the kernel zeroes).
    pub fn compact_to(&mut self, meta: SnapshotMeta, room: Vec<Entry>) -> Vec<Entry> {
        assert!(meta.index <= self.applied && meta.index <= self.persisted);
        let mut kept = room;
        kept.clear();
        if meta.index <= self.snapshot.index {
            return kept;
        }
        let drop = (meta.index - self.snapshot.index) as usize;
        kept.extend(self.entries.drain(drop..));
        self.snapshot = meta;
        std::mem::replace(&mut self.entries, kept)
    }

    /// The entries held in memory.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// Test-only: sets the commit index as given, past the last entry too
    /// (a log no correct core holds, for the oracle's unit tests).
    #[cfg(all(test, feature = "sim"))]
    pub(crate) fn set_committed_unchecked(&mut self, index: Index) {
        self.committed = index;
        self.committed_config = self
            .last_config_in(self.snapshot.index, index)
            .unwrap_or(self.snapshot.index);
    }

    /// The storage cursors `(persisted, unstable)`, for the test-only
    /// `truncation_not_persisted` switch.
    #[cfg(any(test, feature = "sim"))]
    pub(super) fn storage_cursors(&self) -> (Index, Index) {
        (self.persisted, self.unstable)
    }

    /// Test-only `truncation_not_persisted`: puts back the storage cursors a
    /// truncation lowered, as if storage had not been told of it.
    #[cfg(any(test, feature = "sim"))]
    pub(super) fn forget_truncation(&mut self, (persisted, unstable): (Index, Index)) {
        self.persisted = persisted.min(self.last_index());
        self.unstable = unstable.min(self.last_index() + 1);
    }
}

/// [`RaftLog::find_conflict_by_term`] over any log given by `term_at`
/// (the term at an index, `None` below the snapshot at `lo`): the largest
/// index at or below `hi` whose term is at most `term`, with that term;
/// `(i, 0)` when that index is `i`, below the snapshot (unknown).
///
/// A binary search, in a logarithmic number of lookups: the hint comes in
/// a message, and a linear scan from it cost one step per entry. Terms
/// never decrease along a log (a leader appends entries of its current
/// term after its predecessors', and a follower's log matches a prefix of
/// a leader's, Raft §5.3, Log Matching), so the indexes whose term is at
/// most `term` are a prefix of it; the answer is the linear scan's (a test
/// compares them on every small log).
fn last_term_at_most(
    lo: Index,
    hi: Index,
    term: Term,
    mut term_at: impl FnMut(Index) -> Option<Term>,
) -> (Index, Term) {
    // The probe itself (the common answer), or an index below the
    // snapshot.
    match term_at(hi) {
        Some(t) if t <= term => return (hi, t),
        Some(_) => {}
        None => return (hi, 0),
    }
    // Invariant: `good` has a term at most `term` (`good_term`), `bad`
    // one above it (or none), `good < bad`.
    let (mut good, mut good_term) = match term_at(lo) {
        Some(t) if t <= term && lo < hi => (lo, t),
        // Even the snapshot's term is above it: the index below it.
        _ => return (lo.saturating_sub(1), 0),
    };
    let mut bad = hi;
    while bad - good > 1 {
        let mid = good + (bad - good) / 2;
        match term_at(mid) {
            Some(t) if t <= term => (good, good_term) = (mid, t),
            _ => bad = mid,
        }
    }
    (good, good_term)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The linear scan `find_conflict_by_term` was: the reference.
    fn linear(log: &RaftLog, index: Index, term: Term) -> (Index, Term) {
        let mut i = index.min(log.last_index());
        loop {
            match log.term(i) {
                Some(t) if t > term => i -= 1,
                Some(t) => return (i, t),
                None => return (i, 0),
            }
        }
    }

    /// Every log of up to 6 entries (terms rising by 0, 1 or 2) after a
    /// snapshot at 0 to 2, every probe index and term: the same answer as
    /// the linear scan.
    #[test]
    fn conflict_by_term_answers_as_the_linear_scan() {
        fn logs(len: usize, from: Term, out: &mut Vec<Vec<Term>>, cur: &mut Vec<Term>) {
            out.push(cur.clone());
            if cur.len() == len {
                return;
            }
            let last = cur.last().copied().unwrap_or(from);
            for step in 0..3 {
                cur.push(last + step);
                logs(len, from, out, cur);
                cur.pop();
            }
        }
        let mut checked = 0u64;
        for snap_index in 0..3u64 {
            for snap_term in 0..2u64 {
                if snap_index == 0 && snap_term > 0 {
                    continue;
                }
                let mut terms = Vec::new();
                logs(6, snap_term.max(1), &mut terms, &mut Vec::new());
                for t in terms {
                    let entries = t
                        .iter()
                        .enumerate()
                        .map(|(k, &term)| Entry {
                            term,
                            index: snap_index + 1 + k as Index,
                            payload: Payload::Noop,
                        })
                        .collect();
                    let snapshot = SnapshotMeta {
                        index: snap_index,
                        term: snap_term,
                        ..SnapshotMeta::default()
                    };
                    let log = RaftLog::restore(snapshot, entries, 0);
                    for index in 0..12 {
                        for term in 0..16 {
                            // The linear scan steps below an unknown index
                            // only when the snapshot's term is over `term`.
                            assert_eq!(
                                log.find_conflict_by_term(index, term),
                                linear(&log, index, term),
                                "snapshot ({snap_index}, {snap_term}), terms {t:?}, probe ({index}, {term})"
                            );
                            checked += 1;
                        }
                    }
                }
            }
        }
        assert!(checked > 100_000, "{checked}");
    }

    /// Found by review, stop 47: the search for a hint (given by a
    /// message) stepped down the log an index at a time: a million
    /// lookups for a hint a million entries below a log's end. Terms
    /// never decrease along the log: it takes a logarithmic number.
    #[test]
    fn conflict_by_term_takes_logarithmic_lookups() {
        const N: Index = 1 << 20;
        for (hi, term, want) in [(N, 0, (0, 0)), (N, 1, (N / 2, 1)), (N, 2, (N, 2))] {
            let mut lookups = 0u64;
            // Term 1 up to N / 2, then term 2; index 0 is the snapshot's.
            let got = last_term_at_most(0, hi, term, |i| {
                lookups += 1;
                Some(match i {
                    0 => 0,
                    i if i <= N / 2 => 1,
                    _ => 2,
                })
            });
            assert_eq!(got, want);
            assert!(
                lookups <= 2 * 21 + 2,
                "{lookups} lookups for the hint ({hi}, {term})"
            );
        }
    }

    fn ents(terms: &[Term]) -> Vec<Entry> {
        terms
            .iter()
            .enumerate()
            .map(|(i, &t)| Entry {
                term: t,
                index: i as Index + 1,
                payload: Payload::Noop,
            })
            .collect()
    }

    /// `committed_config` (kept up to date, no scan) answers as
    /// `config_at(committed)` (a scan) through appends, truncations,
    /// commits, compactions and snapshot installs, with and without a kept
    /// tail, in a pseudo-random mix.
    #[test]
    fn the_committed_configuration_is_the_one_at_the_commit_index() {
        let mut seed: u64 = 0x2545_F491_4F6C_DD1D;
        let mut next = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let conf = |k: u64| Configuration::new([1, 2, k + 3]);
        for _run in 0..50 {
            let mut log = RaftLog::restore(SnapshotMeta::default(), Vec::new(), 0);
            let mut term: Term = 1;
            let mut configs = 0;
            for step in 0..300 {
                let last = log.last_index();
                match next(10) {
                    0..=3 => {
                        configs += 1;
                        let payload = if next(3) == 0 {
                            Payload::Config(conf(configs))
                        } else {
                            Payload::Noop
                        };
                        log.push(Entry {
                            term,
                            index: last + 1,
                            payload,
                        });
                    }
                    4 if last > log.committed() => {
                        // A new leader's entry replaces an uncommitted suffix.
                        term += 1;
                        let at = log.committed() + 1 + next(last - log.committed());
                        configs += 1;
                        let e = Entry {
                            term,
                            index: at,
                            payload: Payload::Config(conf(configs)),
                        };
                        log.append_after(at - 1, vec![e]);
                    }
                    5 | 6 => log.commit_to(log.committed() + next(4)),
                    7 => {
                        log.persisted_to(last, log.last_term());
                        log.take_committed(usize::MAX);
                        let at = log.applied();
                        if at > log.snapshot().index {
                            let meta = SnapshotMeta {
                                index: at,
                                term: log.term(at).unwrap_or(0),
                                config: log.config_at(at).clone(),
                            };
                            log.compact_to(meta, Vec::new());
                        }
                    }
                    8 if last > log.snapshot().index => {
                        // A leader's snapshot the log agrees with.
                        let at = log.snapshot().index + 1 + next(last - log.snapshot().index);
                        let meta = SnapshotMeta {
                            index: at,
                            term: log.term(at).unwrap_or(0),
                            config: log.config_at(at).clone(),
                        };
                        log.install_snapshot(meta);
                    }
                    9 => {
                        // One it does not: the whole log goes.
                        term += 1;
                        configs += 1;
                        let meta = SnapshotMeta {
                            index: last + 1 + next(3),
                            term,
                            config: conf(configs),
                        };
                        log.install_snapshot(meta);
                    }
                    _ => {}
                }
                let (index, got) = log.committed_config();
                assert_eq!(
                    got,
                    log.config_at(log.committed()),
                    "step {step}: committed {} (config at {index}), snapshot {}",
                    log.committed(),
                    log.snapshot().index
                );
                assert!(index <= log.committed() && index >= log.snapshot().index);
            }
        }
    }

    #[test]
    fn append_after_truncates_only_conflicts() {
        let mut log = RaftLog::restore(SnapshotMeta::default(), ents(&[1, 1, 2, 2]), 1);
        // Duplicate: nothing changes.
        let (last, trunc) = log.append_after(1, ents(&[1, 1, 2])[1..].to_vec());
        assert_eq!((last, trunc, log.last_index()), (3, false, 4));
        // Conflict at 3.
        let mut new = ents(&[1, 1, 3]);
        new.drain(..2);
        let (last, trunc) = log.append_after(2, new);
        assert_eq!(
            (last, trunc, log.last_index(), log.last_term()),
            (3, true, 3, 3)
        );
        assert_eq!(log.persisted(), 2);
    }

    /// The guard of `append_after` (its docs): an AppendEntries that would
    /// truncate a committed entry, which `inbound` drops before it gets
    /// here, is ignored from that entry on, never applied (Raft §5.3 with
    /// Leader Completeness, §5.4: a committed entry is never replaced).
    #[test]
    fn append_after_never_truncates_a_committed_entry() {
        let mut log = RaftLog::restore(SnapshotMeta::default(), ents(&[1, 1, 2, 2]), 3);
        let mut conflicting = ents(&[1, 3, 3]);
        conflicting.drain(..1);
        let (last, trunc) = log.append_after(1, conflicting);
        assert_eq!(
            (last, trunc, log.last_index(), log.term(2)),
            (1, false, 4, Some(1)),
            "a committed entry was replaced"
        );
    }

    /// The guard's edge: the entry at the commit index itself is committed,
    /// so a conflicting entry there is ignored as well, never applied.
    #[test]
    fn append_after_never_truncates_the_entry_at_the_commit_index() {
        let mut log = RaftLog::restore(SnapshotMeta::default(), ents(&[1, 1, 2, 2]), 3);
        let mut conflicting = ents(&[1, 1, 3, 3]);
        conflicting.drain(..2);
        let (last, trunc) = log.append_after(2, conflicting);
        assert_eq!(
            (last, trunc, log.last_index(), log.term(3)),
            (2, false, 4, Some(2)),
            "the entry at the commit index was replaced"
        );
    }

    /// `slice` against the entry-by-entry definition: entries of
    /// `[lo, hi)` while their sizes add up to at most `max_bytes`, at
    /// least one; `None` below the snapshot.
    #[test]
    fn slice_takes_what_fits_and_at_least_one() {
        let mut log = RaftLog::restore(
            SnapshotMeta {
                index: 3,
                term: 1,
                config: Configuration::default(),
            },
            Vec::new(),
            3,
        );
        for i in 4..=20u64 {
            log.push(Entry {
                term: 2,
                index: i,
                payload: Payload::Command(vec![7; (i as usize * 7) % 40].into()),
            });
        }
        let reference = |lo: Index, hi: Index, max: usize| -> Option<Vec<Entry>> {
            if lo <= log.snapshot().index {
                return None;
            }
            let mut out = Vec::new();
            let mut size = 0;
            for index in lo..hi {
                let Some(e) = log.entry(index) else { break };
                size += e.approx_size();
                if !out.is_empty() && size > max {
                    break;
                }
                out.push(e.clone());
            }
            Some(out)
        };
        for lo in 0..=23 {
            for hi in 0..=24 {
                for max in [0, 1, 24, 30, 60, 100, 200, 1_000, usize::MAX] {
                    assert_eq!(
                        log.slice(lo, hi, max),
                        reference(lo, hi, max),
                        "slice({lo}, {hi}, {max})"
                    );
                }
            }
        }
        assert_eq!(
            log.slice(4, Index::MAX, usize::MAX).map(|v| v.len()),
            Some(17)
        );
    }

    #[test]
    fn conflict_hint_skips_a_whole_term() {
        let log = RaftLog::restore(SnapshotMeta::default(), ents(&[1, 1, 4, 4, 4, 4]), 0);
        assert_eq!(log.find_conflict_by_term(6, 2), (2, 1));
        assert_eq!(log.find_conflict_by_term(6, 4), (6, 4));
        assert_eq!(log.find_conflict_by_term(10, 5), (6, 4));
    }

    /// Storage reports durability by `(index, term)`: a report of an entry
    /// since replaced by a conflicting one (truncated, and its replacement
    /// already handed to storage but not yet synced) is ignored, or the
    /// follower would acknowledge an entry it has not written (Figure 2:
    /// respond only after the entries are stored; the replacement would be
    /// counted toward a commit and lost in a crash).
    #[test]
    fn a_durability_report_of_a_replaced_entry_is_ignored() {
        let mut log = RaftLog::restore(SnapshotMeta::default(), ents(&[1]), 1);
        log.append_after(1, ents(&[1, 2]).split_off(1));
        assert_eq!(log.take_unstable().len(), 1, "index 2 of term 2 handed");
        // A leader of term 3 replaces index 2 before that write is synced.
        let (_, truncated) = log.append_after(1, ents(&[1, 3]).split_off(1));
        assert!(truncated);
        assert_eq!(log.take_unstable().len(), 1, "index 2 of term 3 handed");
        log.persisted_to(2, 2);
        assert_eq!(log.persisted(), 1, "the replaced entry's report counts");
        log.persisted_to(2, 3);
        assert_eq!(log.persisted(), 2);
    }

    /// `append_after` never truncates a committed entry: an entry that
    /// conflicts with one at or below the commit index ends the append and
    /// the log is left as it was. `inbound` drops every AppendEntries that
    /// would carry one (see the method's docs), so only a direct call
    /// reaches the guard (`Some(_) if index <= self.committed => break`);
    /// without it, committed entry 2 is replaced and this test fails (s62,
    /// mutation teeth).
    #[test]
    fn an_entry_conflicting_with_a_committed_one_is_ignored() {
        let mut log = RaftLog::restore(SnapshotMeta::default(), ents(&[1, 1, 1]), 2);
        let (last_new, truncated) = log.append_after(1, ents(&[1, 2, 2]).split_off(1));
        assert_eq!(
            (last_new, truncated),
            (1, false),
            "an append over committed entry 2"
        );
        assert_eq!(
            (1..=3).map(|i| log.term(i)).collect::<Vec<_>>(),
            [Some(1), Some(1), Some(1)],
            "the log after an append that conflicts with committed entry 2"
        );
        assert_eq!(log.committed(), 2);
    }

    #[test]
    fn committed_entries_wait_for_persistence() {
        let mut log = RaftLog::restore(SnapshotMeta::default(), ents(&[1]), 1);
        log.append(vec![Entry {
            term: 1,
            index: 2,
            payload: Payload::Noop,
        }]);
        log.commit_to(2);
        assert_eq!(log.take_committed(usize::MAX).len(), 1);
        assert!(!log.has_committed());
        assert_eq!(log.take_unstable().len(), 1);
        log.persisted_to(2, 1);
        assert_eq!(log.take_committed(usize::MAX)[0].index, 2);
    }
}

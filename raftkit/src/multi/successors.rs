//! Rule 4's successors ([`super::placement_auth`]), kept across restarts:
//! for each group whose replica retired here on the committed configuration
//! that removed it, the voters of that configuration (the nodes the group
//! went on with), which group 0's leader lets write the placement for the
//! group while the placement still lists this node for it and this node
//! does not host it again (a move off this node whose record was lost: the
//! group's new node re-makes it).
//!
//! # Invariants
//!
//! - A retirement records its group's successors (or forgets the group's,
//!   when its last configuration names nobody: not committed, or joint) in
//!   the file `placement.successors` of the node's data directory,
//!   written atomically (temporary file, fsync, rename, directory fsync)
//!   **before** the journal's tombstone of the replica
//!   ([`Journal::remove_group`](super::Journal::remove_group)), so a
//!   removal acknowledged by the journal has its successors on disk. A
//!   crash in between leaves the successors of a group the journal still
//!   holds: the node hosts it again at start, and rule 4 never counts a
//!   hosted group.
//! - A start reads the file back. A file that cannot be read or does not
//!   decode (a CRC-32 guards the body) is ignored with a warning: rule 4
//!   then admits nobody for those groups, as before this file existed
//!   (fail closed: a refusal, never a grant).
//! - A failed write is logged; the successors are kept in memory, as they
//!   were before this file existed.
//!
//! # Bounds
//!
//! - **How long**: an entry counts for [`KEEP_FOR`] (one day) after its
//!   retirement (wall clock, `SystemTime`), then is dropped at the next
//!   write or start. A lost move record is normally re-made within
//!   seconds to minutes (the new node's periodic check); past a day the
//!   new node needs one of rules 1-3 (a listed node leading the group
//!   records it) or an admin writing the placement. An entry counts only
//!   while the clock reads within `KEEP_FOR` of its time, either side: a
//!   retirement recorded while the clock ran far ahead stops counting once
//!   the clock is corrected (review s60 placement #1); a clock set forward
//!   drops entries early (a refusal, the safe side).
//! - **How many**: at most [`MAX_KEPT`] groups (256), the most recent
//!   retirements; each with at most `core::MAX_MEMBERS` voters (a
//!   configuration is never longer), so the file stays below a few MB and
//!   [`MAX_FILE_BYTES`] bounds what a start reads.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::GroupId;
use crate::core::NodeId;
use crate::storage::StorageError;
use crate::storage::vfs::{OpenMode, Vfs, write_atomic};

/// The file, in the node's data directory.
pub(crate) const SUCCESSORS_FILE: &str = "placement.successors";
/// How long after its retirement a group's successors count.
pub(crate) const KEEP_FOR: Duration = Duration::from_secs(24 * 60 * 60);
/// The most groups whose successors are kept (the latest retirements).
pub(crate) const MAX_KEPT: usize = 256;
/// The largest file a start reads (a larger one is ignored).
pub(crate) const MAX_FILE_BYTES: usize = 4 << 20;

/// One group's successors and when its replica retired here.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Kept {
    /// The voters of the configuration that removed the replica, without
    /// this node.
    voters: Vec<NodeId>,
    /// When the replica retired, in seconds since the Unix epoch.
    retired_at: u64,
}

/// The file's body (postcard, behind its CRC-32).
#[derive(Serialize, Deserialize)]
struct Stored {
    groups: Vec<(GroupId, Kept)>,
}

/// The successors of the groups that retired here (module docs).
#[derive(Debug, Default)]
pub(crate) struct Successors {
    groups: BTreeMap<GroupId, Kept>,
}

/// Seconds since the Unix epoch (0 before it).
fn secs(at: SystemTime) -> u64 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn path(dir: &Path) -> PathBuf {
    dir.join(SUCCESSORS_FILE)
}

impl Successors {
    /// Reads the successors `dir` keeps, dropping those past [`KEEP_FOR`]
    /// at `now`; an unreadable or damaged file reads as none (module
    /// docs).
    pub(crate) fn load(fs: &dyn Vfs, dir: &Path, now: SystemTime) -> Successors {
        let file = path(dir);
        // The size first, so that a planted huge file is never read whole
        // (review s60 placement #2).
        match fs.open(&file, OpenMode::Existing).and_then(|f| f.size()) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Successors::default(),
            Ok(len) if len > MAX_FILE_BYTES as u64 => {
                tracing::warn!(path = %file.display(), len, max = MAX_FILE_BYTES, "an oversized successors file is ignored; none kept (a lost move record is re-made through rules 1-3 or an admin)");
                return Successors::default();
            }
            // A file that cannot be opened is reported by the read below.
            Ok(_) | Err(_) => {}
        }
        let bytes = match fs.read(&file) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Successors::default(),
            Err(e) => {
                tracing::warn!(path = %file.display(), error = %e, "cannot read rule 4's successors; none kept (a lost move record is re-made through rules 1-3 or an admin)");
                return Successors::default();
            }
        };
        match Successors::decode(&bytes) {
            Ok(mut kept) => {
                kept.prune(now);
                kept
            }
            Err(why) => {
                tracing::warn!(path = %file.display(), error = %why, "a damaged successors file is ignored; none kept (a lost move record is re-made through rules 1-3 or an admin)");
                Successors::default()
            }
        }
    }

    /// The file's contents as [`Successors`], or why not.
    fn decode(bytes: &[u8]) -> Result<Successors, String> {
        if bytes.len() > MAX_FILE_BYTES {
            return Err(format!("{} bytes, over {MAX_FILE_BYTES}", bytes.len()));
        }
        let Some((crc, body)) = bytes.split_first_chunk::<4>() else {
            return Err("too short".into());
        };
        if u32::from_le_bytes(*crc) != crc32fast::hash(body) {
            return Err("checksum mismatch".into());
        }
        let stored: Stored = postcard::from_bytes(body).map_err(|e| e.to_string())?;
        // This code never writes more; more would make `prune` scan for
        // long at start (review s60 placement #3).
        if stored.groups.len() > MAX_KEPT {
            return Err(format!("{} groups, over {MAX_KEPT}", stored.groups.len()));
        }
        Ok(Successors {
            groups: stored
                .groups
                .into_iter()
                .filter(|(_, k)| k.voters.len() <= crate::core::MAX_MEMBERS)
                .collect(),
        })
    }

    /// The file's contents, to be written by [`Self::write`] after the
    /// lock that guards `self` is released (its fsyncs must not hold up
    /// group 0's write checks, review s60 placement #4).
    pub(crate) fn encode(&self) -> Result<Vec<u8>, StorageError> {
        let stored = Stored {
            groups: self.groups.iter().map(|(g, k)| (*g, k.clone())).collect(),
        };
        let body = postcard::to_allocvec(&stored).map_err(|e| {
            StorageError::Invalid(format!("the successors file does not encode: {e}"))
        })?;
        let mut bytes = crc32fast::hash(&body).to_le_bytes().to_vec();
        bytes.extend_from_slice(&body);
        Ok(bytes)
    }

    /// Drops the entries past [`KEEP_FOR`] at `now`, then the oldest past
    /// [`MAX_KEPT`].
    fn prune(&mut self, now: SystemTime) {
        let now = secs(now);
        self.groups
            .retain(|_, k| now.abs_diff(k.retired_at) <= KEEP_FOR.as_secs());
        while self.groups.len() > MAX_KEPT {
            let oldest = self
                .groups
                .iter()
                .min_by_key(|(g, k)| (k.retired_at, **g))
                .map(|(g, _)| *g);
            match oldest {
                Some(g) => self.groups.remove(&g),
                None => break,
            };
        }
    }

    /// `group`'s successors, if its replica retired here within
    /// [`KEEP_FOR`] of `now`.
    pub(crate) fn get(&self, group: GroupId, now: SystemTime) -> Option<Vec<NodeId>> {
        let now = secs(now);
        self.groups
            .get(&group)
            .filter(|k| now.abs_diff(k.retired_at) <= KEEP_FOR.as_secs())
            .map(|k| k.voters.clone())
    }

    /// Records that `group`'s replica retired at `now` on a configuration
    /// whose other voters are `voters` (`None`: forgets the group's), and
    /// bounds what is kept.
    pub(crate) fn record(&mut self, group: GroupId, voters: Option<Vec<NodeId>>, now: SystemTime) {
        match voters {
            Some(voters) => {
                self.groups.insert(
                    group,
                    Kept {
                        voters,
                        retired_at: secs(now),
                    },
                );
            }
            None => {
                self.groups.remove(&group);
            }
        }
        self.prune(now);
    }

    /// Writes them to `dir` atomically (module docs): durable on return.
    #[cfg(test)]
    pub(crate) fn save(&self, fs: &dyn Vfs, dir: &Path) -> Result<(), StorageError> {
        Self::write(fs, dir, &self.encode()?)
    }

    /// Writes `bytes` (from [`Self::encoded`]) as the file, atomically
    /// and durably.
    pub(crate) fn write(fs: &dyn Vfs, dir: &Path, bytes: &[u8]) -> Result<(), StorageError> {
        write_atomic(fs, &path(dir), bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::vfs::RealFs;

    fn at(s: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(s)
    }

    #[test]
    fn successors_survive_a_reload_and_expire_after_keep_for() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let t0 = at(1_000_000);
        let mut s = Successors::default();
        s.record(1, Some(vec![7, 8]), t0);
        s.record(2, Some(vec![9]), t0);
        s.record(2, None, t0);
        s.save(&RealFs, dir.path()).expect("saved");
        let back = Successors::load(&RealFs, dir.path(), t0);
        assert_eq!(back.get(1, t0), Some(vec![7, 8]));
        assert_eq!(back.get(2, t0), None, "forgotten");
        let last = t0 + KEEP_FOR;
        assert_eq!(back.get(1, last), Some(vec![7, 8]));
        assert_eq!(back.get(1, last + Duration::from_secs(1)), None);
        let late = Successors::load(&RealFs, dir.path(), last + Duration::from_secs(1));
        assert!(late.groups.is_empty(), "dropped at a later start");
    }

    #[test]
    fn at_most_max_kept_groups_are_kept_the_latest() {
        let mut s = Successors::default();
        for g in 0..(MAX_KEPT as u64 + 10) {
            s.record(g + 1, Some(vec![5]), at(1_000 + g));
        }
        assert_eq!(s.groups.len(), MAX_KEPT);
        let now = at(1_000 + MAX_KEPT as u64 + 10);
        assert_eq!(s.get(1, now), None, "the oldest went first");
        assert_eq!(s.get(MAX_KEPT as u64 + 10, now), Some(vec![5]));
    }

    #[test]
    fn a_damaged_or_missing_file_keeps_nothing() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let now = at(5_000);
        assert!(Successors::load(&RealFs, dir.path(), now).groups.is_empty());
        let mut s = Successors::default();
        s.record(3, Some(vec![4]), now);
        s.save(&RealFs, dir.path()).expect("saved");
        let file = dir.path().join(SUCCESSORS_FILE);
        let mut bytes = std::fs::read(&file).expect("the file");
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(&file, &bytes).expect("damaged");
        assert!(Successors::load(&RealFs, dir.path(), now).groups.is_empty());
        std::fs::write(&file, [1u8, 2]).expect("truncated");
        assert!(Successors::load(&RealFs, dir.path(), now).groups.is_empty());
    }

    /// Review s60 placement #1: a retirement recorded while the clock ran
    /// far ahead stops counting once the clock is corrected.
    #[test]
    fn an_entry_recorded_ahead_of_the_clock_counts_only_within_keep_for_of_it() {
        let ahead = at(1_000_000) + 10 * KEEP_FOR;
        let mut s = Successors::default();
        s.record(1, Some(vec![7]), ahead);
        let corrected = at(1_000_000);
        assert_eq!(
            s.get(1, corrected),
            None,
            "an entry dated ten days ahead counted at the corrected time"
        );
        assert_eq!(s.get(1, ahead - KEEP_FOR), Some(vec![7]));
        s.prune(corrected);
        assert!(s.groups.is_empty(), "pruned at the corrected time");
    }

    /// Review s60 placement #2/#3: a file with more groups than this code
    /// writes, or larger than it ever is, is ignored whole.
    #[test]
    fn a_file_with_too_many_groups_or_too_many_bytes_keeps_nothing() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let now = at(5_000);
        let mut s = Successors::default();
        for g in 0..=(MAX_KEPT as u64) {
            s.groups.insert(
                g + 1,
                Kept {
                    voters: vec![4],
                    retired_at: 5_000,
                },
            );
        }
        s.save(&RealFs, dir.path()).expect("saved");
        assert!(
            Successors::load(&RealFs, dir.path(), now).groups.is_empty(),
            "a file of {} groups was taken",
            MAX_KEPT + 1
        );
        let file = dir.path().join(SUCCESSORS_FILE);
        std::fs::write(&file, vec![0u8; MAX_FILE_BYTES + 1]).expect("oversized");
        assert!(Successors::load(&RealFs, dir.path(), now).groups.is_empty());
    }
}

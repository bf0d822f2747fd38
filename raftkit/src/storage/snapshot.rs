//! Snapshot stores: the latest snapshot of the state machine, kept durably.
//!
//! # File format and atomicity ([`FileSnapshotStore`])
//!
//! A snapshot covering index `i` at term `t` is the file
//! `snapshot-{i:020}-{t:020}.snap`:
//!
//! ```text
//! magic:[u8; 8] = "RKSNAP01"  meta_len:u32le  postcard(SnapshotMeta)[meta_len]
//! data_len:u64le  data[data_len]  crc:u32le = crc32(everything before it)
//! ```
//!
//! It is written under a temporary name (`.snap.tmp`), fsynced, renamed into
//! place, and the directory fsynced; only then are snapshots beyond the
//! retention limit removed (and the directory fsynced again). A crash at any
//! point leaves either the old set of snapshots or the new one, plus perhaps
//! a temporary file that the next open deletes. A save that fails after its
//! rename (the directory fsync) leaves its file in place, untrusted by this
//! process; the next successful save removes it, as it removes old
//! snapshots whose removal failed, and an open removes the snapshots beyond
//! the retention limit (once the latest was verified). Invariants: every `.snap`
//! file in the directory is complete and checksummed; the latest snapshot is
//! the one with the highest index; `save` never lowers it.
//!
//! The log may be compacted up to a snapshot's index only after `save` has
//! returned `Ok` for it.

use std::path::{Path, PathBuf};

use tracing::{debug, info, warn};

use super::StorageError;
use super::vfs::{
    self, RenameSteps, SharedFs, create_dir_durable, sync_dir, sync_dir_and_parent, write_renamed,
};
use crate::core::types::{Index, SnapshotMeta, Term};

/// A snapshot: where it stands in the log, and the state machine's bytes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// The log position and configuration the snapshot covers.
    pub meta: SnapshotMeta,
    /// The serialized state machine.
    pub data: Vec<u8>,
}

/// Durable storage for snapshots.
pub trait SnapshotStore {
    /// Stores `snapshot` atomically: after a crash, either it is the latest
    /// snapshot or the previous latest still is. Fails with
    /// [`StorageError::Invalid`] if its index is below the latest one's.
    fn save(&mut self, snapshot: &Snapshot) -> Result<(), StorageError>;

    /// Reads the latest snapshot, verifying it.
    fn latest(&self) -> Result<Option<Snapshot>, StorageError>;

    /// The latest snapshot's metadata, without reading its data.
    fn latest_meta(&self) -> Option<SnapshotMeta>;

    /// Deletes every snapshot the store holds: its group was removed from
    /// this node, and a save finished after the removal had deleted the
    /// group's files (a multi-group journal's late save). The store holds
    /// nothing afterwards. The default deletes nothing (a store kept in
    /// memory is dropped with its group; a file store that does not
    /// delete leaves its files to whatever sweeps its directory).
    fn discard_all(&mut self) -> Result<(), StorageError> {
        Ok(())
    }
}

const MAGIC: [u8; 8] = *b"RKSNAP01";

/// Bytes of a snapshot file written between two fsyncs.
const SYNC_EVERY: usize = 1 << 20;

fn file_name(index: Index, term: Term) -> String {
    format!("snapshot-{index:020}-{term:020}.snap")
}

fn parse_name(name: &str) -> Option<(Index, Term)> {
    let rest = name.strip_prefix("snapshot-")?.strip_suffix(".snap")?;
    let (i, t) = rest.split_once('-')?;
    Some((i.parse().ok()?, t.parse().ok()?))
}

fn encode(snapshot: &Snapshot) -> Vec<u8> {
    // Encoding plain data into a Vec cannot fail.
    let meta = postcard::to_allocvec(&snapshot.meta).expect("postcard encoding into a Vec");
    let mut out = Vec::with_capacity(8 + 4 + meta.len() + 8 + snapshot.data.len() + 4);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&(meta.len() as u32).to_le_bytes());
    out.extend_from_slice(&meta);
    out.extend_from_slice(&(snapshot.data.len() as u64).to_le_bytes());
    out.extend_from_slice(&snapshot.data);
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

fn decode(path: &Path, bytes: &[u8]) -> Result<Snapshot, StorageError> {
    let bad = |offset: usize, reason: &str| StorageError::corrupt(path, offset as u64, reason);
    if bytes.len() < 8 + 4 + 8 + 4 {
        return Err(bad(0, "snapshot file too short"));
    }
    let (body, crc_bytes) = bytes.split_at(bytes.len() - 4);
    let crc = u32::from_le_bytes([crc_bytes[0], crc_bytes[1], crc_bytes[2], crc_bytes[3]]);
    if crc32fast::hash(body) != crc {
        return Err(bad(0, "snapshot checksum mismatch"));
    }
    if body[..8] != MAGIC {
        return Err(bad(0, "bad snapshot magic"));
    }
    let meta_len = u32::from_le_bytes([body[8], body[9], body[10], body[11]]) as usize;
    let meta_end = 12usize
        .checked_add(meta_len)
        .filter(|&e| e + 8 <= body.len())
        .ok_or_else(|| bad(8, "metadata length past the end"))?;
    let meta: SnapshotMeta = postcard::from_bytes(&body[12..meta_end])
        .map_err(|e| bad(12, &format!("undecodable metadata: {e}")))?;
    let mut len_bytes = [0u8; 8];
    len_bytes.copy_from_slice(&body[meta_end..meta_end + 8]);
    let data_len = u64::from_le_bytes(len_bytes);
    let data_start = meta_end + 8;
    if (body.len() - data_start) as u64 != data_len {
        return Err(bad(meta_end, "data length does not match the file size"));
    }
    Ok(Snapshot {
        meta,
        data: body[data_start..].to_vec(),
    })
}

/// A [`SnapshotStore`] keeping snapshots as files in a directory.
#[derive(Debug)]
pub struct FileSnapshotStore {
    fs: SharedFs,
    dir: PathBuf,
    retain_old: usize,
    /// `(index, term)` of the snapshots on disk, ascending.
    on_disk: Vec<(Index, Term)>,
    /// Snapshot files this process may have left in the directory outside
    /// `on_disk`: renamed into place by a save that failed after the rename
    /// (its directory fsync), or doomed by a retention whose removal
    /// failed. The next successful save removes them.
    strays: Vec<(Index, Term)>,
    latest_meta: Option<SnapshotMeta>,
}

impl FileSnapshotStore {
    /// Opens (or creates) a snapshot directory, keeping at most `retain_old`
    /// snapshots besides the latest.
    ///
    /// Deletes leftover temporary files and verifies the latest snapshot; a
    /// damaged one is [`StorageError::Corrupt`] (it was fsynced before it was
    /// renamed into place, so damage is never a crash artefact). Then
    /// removes the snapshots beyond the retention limit (a failure to is
    /// logged, and left to the next save).
    pub fn open(dir: impl AsRef<Path>, retain_old: usize) -> Result<Self, StorageError> {
        Self::open_in(vfs::real(), dir, retain_old)
    }

    /// [`FileSnapshotStore::open`] on the file system `fs` (see
    /// [`crate::storage::vfs`]).
    pub fn open_in(
        fs: SharedFs,
        dir: impl AsRef<Path>,
        retain_old: usize,
    ) -> Result<Self, StorageError> {
        let dir = dir.as_ref().to_path_buf();
        create_dir_durable(&*fs, &dir)?;
        let mut on_disk = Vec::new();
        let listing = fs
            .list_dir(&dir)
            .map_err(|e| StorageError::io("list directory", &dir, e))?;
        for name in listing {
            if name.ends_with(".snap.tmp") {
                let path = dir.join(&name);
                fs.remove_file(&path)
                    .map_err(|e| StorageError::io("remove", &path, e))?;
            } else if let Some(it) = parse_name(&name) {
                on_disk.push(it);
            }
        }
        // Whatever this open found or removed: a snapshot renamed into place
        // by a process that stopped before its directory fsync is trusted
        // (and the log compacted behind it) only once its entry is durable.
        sync_dir_and_parent(&*fs, &dir)?;
        on_disk.sort_unstable();
        let mut store = FileSnapshotStore {
            fs,
            dir,
            retain_old,
            on_disk,
            strays: Vec::new(),
            latest_meta: None,
        };
        store.latest_meta = store.latest()?.map(|s| s.meta);
        // Snapshots beyond the retention limit (a save that failed after its
        // rename, a removal that failed, a smaller limit than the last
        // process had): removed once the latest was verified. A failure
        // leaves them to the next save.
        let excess = store.on_disk.len().saturating_sub(store.retain_old + 1);
        let doomed: Vec<(Index, Term)> = store.on_disk.drain(..excess).collect();
        if let Err(e) = store.remove_snapshots(doomed) {
            warn!(dir = %store.dir.display(), error = %e, "cannot remove old snapshots at open");
        }
        Ok(store)
    }

    /// Removes the snapshot files `doomed` (a file already gone is fine)
    /// and fsyncs the directory. On failure, what was not removed is left
    /// to the next save ([`Self::strays`]); callers log the error and go
    /// on (a snapshot beyond the limit costs disk space, nothing else).
    fn remove_snapshots(&mut self, doomed: Vec<(Index, Term)>) -> Result<(), StorageError> {
        if doomed.is_empty() {
            return Ok(());
        }
        let mut left = doomed.into_iter();
        while let Some(old) = left.next() {
            let old_path = self.path(old);
            match self.fs.remove_file(&old_path) {
                Ok(()) => debug!(file = %old_path.display(), "removed old snapshot"),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    self.strays.push(old);
                    self.strays.extend(left);
                    return Err(StorageError::io("remove snapshot", &old_path, e));
                }
            }
        }
        sync_dir(&*self.fs, &self.dir)
    }

    /// The latest `(index, term)` among the snapshot files in `dir`, by
    /// their names alone, without opening, verifying or changing anything
    /// (`None` if `dir` is missing or holds none): whether a log existed
    /// beside them, asked before the log's directory is locked.
    pub(crate) fn latest_name_in(
        fs: &dyn super::vfs::Vfs,
        dir: &Path,
    ) -> Result<Option<(Index, Term)>, StorageError> {
        if !fs.is_dir(dir) {
            return Ok(None);
        }
        let names = fs
            .list_dir(dir)
            .map_err(|e| StorageError::io("list directory", dir, e))?;
        Ok(names.iter().filter_map(|n| parse_name(n)).max())
    }

    /// The directory holding the snapshots.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, (index, term): (Index, Term)) -> PathBuf {
        self.dir.join(file_name(index, term))
    }

    /// Writes `bytes` to a temporary file, fsyncs it, renames it to `path`
    /// and fsyncs the directory ([`write_renamed`]; a failure before the
    /// rename leaves no temporary file).
    fn write_file(&self, path: &Path, bytes: &[u8]) -> Result<(), StorageError> {
        let steps = RenameSteps {
            create: "create snapshot",
            fsync: "fsync snapshot",
            rename: "rename snapshot",
        };
        write_renamed(&*self.fs, path, steps, |file, tmp| {
            // In slices, each made durable before the next is written: the
            // log's fsyncs then wait behind at most one slice of a large
            // snapshot on a shared disk, never behind all of it.
            let mut offset = 0;
            for slice in bytes.chunks(SYNC_EVERY) {
                file.write_all_at(slice, offset as u64)
                    .map_err(|e| StorageError::io("write snapshot", tmp, e))?;
                offset += slice.len();
                if offset < bytes.len() {
                    file.sync_data()
                        .map_err(|e| StorageError::io("fsync snapshot", tmp, e))?;
                }
            }
            Ok(())
        })?;
        Ok(())
    }
}

impl SnapshotStore for FileSnapshotStore {
    fn save(&mut self, snapshot: &Snapshot) -> Result<(), StorageError> {
        let key = (snapshot.meta.index, snapshot.meta.term);
        if let Some(&(latest, _)) = self.on_disk.last()
            && key.0 < latest
        {
            return Err(StorageError::Invalid(format!(
                "snapshot at index {} is older than the latest at {latest}",
                key.0
            )));
        }
        let written = self.write_file(&self.path(key), &encode(snapshot));
        if written.is_err() {
            // The rename may have happened (the directory fsync failed):
            // then the file is in the directory, unknown to `on_disk`.
            if !self.on_disk.contains(&key) && !self.strays.contains(&key) {
                self.strays.push(key);
            }
        }
        written?;
        self.latest_meta = Some(snapshot.meta.clone());
        info!(
            index = key.0,
            term = key.1,
            bytes = snapshot.data.len(),
            "saved snapshot"
        );

        // A snapshot at the same index under another term is superseded; then
        // keep the newest `retain_old` of the rest.
        let mut doomed: Vec<(Index, Term)> = self
            .on_disk
            .iter()
            .copied()
            .filter(|&k| k.0 == key.0 && k != key)
            .collect();
        self.on_disk.retain(|&k| k.0 != key.0);
        let excess = self.on_disk.len().saturating_sub(self.retain_old);
        doomed.extend(self.on_disk.drain(..excess));
        self.on_disk.push(key);
        // And whatever failed saves and removals left behind.
        let on_disk = &self.on_disk;
        doomed.extend(self.strays.drain(..).filter(|k| !on_disk.contains(k)));
        // The new snapshot is durable: a failed removal of an old one (kept
        // in `strays`) or of its directory fsync (a removal that may come
        // back at a crash, removed again by the next open, which keeps no
        // more than the limit) is left to the next save or open. Failing
        // the save would stop a node over a received snapshot it holds, or
        // leave its log never compacted while the removal keeps failing.
        if let Err(e) = self.remove_snapshots(doomed) {
            warn!(
                dir = %self.dir.display(),
                index = key.0,
                term = key.1,
                error = %e,
                "saved the snapshot, but cannot remove old snapshots: left to the next save or open"
            );
        }
        Ok(())
    }

    fn latest(&self) -> Result<Option<Snapshot>, StorageError> {
        let Some(&key) = self.on_disk.last() else {
            return Ok(None);
        };
        let path = self.path(key);
        let bytes = self
            .fs
            .read(&path)
            .map_err(|e| StorageError::io("read snapshot", &path, e))?;
        let snap = decode(&path, &bytes)?;
        if (snap.meta.index, snap.meta.term) != key {
            return Err(StorageError::corrupt(
                &path,
                0,
                format!(
                    "file name says index {} term {}, metadata says index {} term {}",
                    key.0, key.1, snap.meta.index, snap.meta.term
                ),
            ));
        }
        Ok(Some(snap))
    }

    fn latest_meta(&self) -> Option<SnapshotMeta> {
        self.latest_meta.clone()
    }

    fn discard_all(&mut self) -> Result<(), StorageError> {
        let mut doomed = std::mem::take(&mut self.on_disk);
        doomed.append(&mut self.strays);
        self.latest_meta = None;
        self.remove_snapshots(doomed)
    }
}

/// A [`SnapshotStore`] in memory, keeping at most `retain_old` snapshots
/// besides the latest.
#[derive(Clone, Debug, Default)]
pub struct MemSnapshotStore {
    retain_old: usize,
    snapshots: Vec<Snapshot>,
}

impl MemSnapshotStore {
    /// An empty store keeping at most `retain_old` old snapshots.
    pub fn new(retain_old: usize) -> Self {
        MemSnapshotStore {
            retain_old,
            snapshots: Vec::new(),
        }
    }

    /// How many snapshots are kept (the latest included).
    pub fn len(&self) -> usize {
        self.snapshots.len()
    }

    /// Whether no snapshot was saved.
    pub fn is_empty(&self) -> bool {
        self.snapshots.is_empty()
    }
}

impl SnapshotStore for MemSnapshotStore {
    fn save(&mut self, snapshot: &Snapshot) -> Result<(), StorageError> {
        if let Some(latest) = self.snapshots.last()
            && snapshot.meta.index < latest.meta.index
        {
            return Err(StorageError::Invalid(format!(
                "snapshot at index {} is older than the latest at {}",
                snapshot.meta.index, latest.meta.index
            )));
        }
        self.snapshots
            .retain(|s| s.meta.index != snapshot.meta.index);
        self.snapshots.push(snapshot.clone());
        let excess = self.snapshots.len().saturating_sub(self.retain_old + 1);
        self.snapshots.drain(..excess);
        Ok(())
    }

    fn latest(&self) -> Result<Option<Snapshot>, StorageError> {
        Ok(self.snapshots.last().cloned())
    }

    fn latest_meta(&self) -> Option<SnapshotMeta> {
        self.snapshots.last().map(|s| s.meta.clone())
    }

    fn discard_all(&mut self) -> Result<(), StorageError> {
        self.snapshots.clear();
        Ok(())
    }
}

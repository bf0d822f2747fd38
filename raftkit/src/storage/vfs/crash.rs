//! A test-only in-memory [`Vfs`] that a test can crash, with the strict
//! reading of the durability contract (module docs of [`super`]): after a
//! crash only what was made durable is certain to be left.
//!
//! Model, stricter than the whole-runtime simulation's disk
//! (`sim::runtime::disk`, which keeps every directory at once and a file
//! whose name was synced):
//! - a file's bytes and length are durable as of its last sync
//!   ([`VfsFile::sync_data`] and [`VfsFile::sync_all`] alike: both persist
//!   the data and the size, as `fdatasync(2)` does);
//! - a new file's inode is durable only once the file itself was synced
//!   (`fsync(2)`: a directory fsync makes the *entry* durable, the file's
//!   own fsync its inode; a new file needs both, in the order of
//!   `storage::vfs::write_atomic`);
//! - the creation, renaming or removal of an entry (a file or a
//!   *directory*) is durable only after [`Vfs::sync_dir`] of its parent; a
//!   directory that did not survive takes its entries with it. A rename
//!   within one directory is one change (atomic, as ext4 journals it);
//! - the root given to [`CrashFs::new`] (and its ancestors) is durable.
//!
//! Two kinds of crash:
//! - [`CrashFs::crash`]: everything not durable is lost, and a durable name
//!   whose file was never synced is lost with it;
//! - [`CrashFs::crash_seeded`] (and an armed [`CrashFs::crash_in_sync`],
//!   a crash inside the `n`-th sync from now): what was not made durable
//!   *may* have reached the disk anyway, as writeback and the ext4 journal
//!   commit it in the background. Each unsynced write keeps a seeded
//!   subset of its 512-byte sectors (a disk writes the sectors of one
//!   write in any order; a kept sector past the durable size extends the
//!   file, with zeros in the sectors not kept), each unsynced length change
//!   is kept or not, both in their order; each directory keeps a seeded
//!   prefix of its unsynced entry changes (the journal commits them in
//!   order); a durable name whose file was never synced is lost, or kept
//!   holding only what of its unsynced writes was kept (ext4: the
//!   directory fsync committed the inode, delayed allocation had not
//!   written its data: an empty or partly zero file). A crash inside a
//!   sync is exactly such a crash before the sync returned: some but not
//!   all of the file's pending writes persisted. Nothing synced is ever
//!   lost.
//!
//! A failed sync, as Linux fails one ([`CrashFs::fail_syncs`]): the sync
//! returns EIO, nothing of it becomes durable, and its pages are marked
//! clean: the file's reads still see the failed writes, a later sync
//! does not write them (it makes durable only the changes since the failed
//! one), a crash drops them, and so does [`VfsFile::drop_cache`] (which
//! leaves reads seeing the durable bytes with the changes since made on
//! top: dirty pages stay cached).
//!
//! Preallocation ([`Vfs::preallocates`]) is off unless the file system was
//! made with [`CrashFs::preallocating`], which makes the write-ahead log
//! zero its segments ahead of the content and cut the zeros at sealing.
//!
//! Not modelled: locks (always granted), faults (wrap it in
//! [`FaultyFs`](super::FaultyFs)), renames across directories as one
//! change (two: the removal in the source, the creation in the target;
//! the stores never do them). Handles opened before a crash fail
//! afterwards.
//!
//! Test support only (`cfg(test)`).

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{OpenMode, Vfs, VfsFile, VfsLock};

/// The unit in which an unsynced write reaches the disk at a seeded crash.
const SECTOR: u64 = 512;

/// A change to a file's bytes not yet synced.
#[derive(Debug, Clone)]
enum Change {
    Write { at: u64, bytes: Vec<u8> },
    SetLen(u64),
}

#[derive(Debug, Default)]
struct Inode {
    /// What reads see: `durable` with `pending` applied, plus the writes
    /// of a failed sync (clean pages) until a crash or a
    /// [`VfsFile::drop_cache`].
    volatile: Vec<u8>,
    durable: Vec<u8>,
    /// The changes since the last sync (successful or failed), in order:
    /// the dirty pages.
    pending: Vec<Change>,
    /// Whether the file was synced since its creation.
    synced: bool,
}

impl Inode {
    /// The durable bytes with the dirty changes applied: what a sync makes
    /// durable, and what reads see once the clean pages were dropped.
    fn durable_and_dirty(&self) -> Vec<u8> {
        let mut bytes = self.durable.clone();
        for change in &self.pending {
            match change {
                Change::Write { at, bytes: w } => write_at(&mut bytes, *at, w),
                Change::SetLen(len) => bytes.resize(usize::try_from(*len).unwrap_or(usize::MAX), 0),
            }
        }
        bytes
    }
}

/// One change to a directory's entries, applied atomically.
#[derive(Debug, Clone)]
enum Entry {
    Link(PathBuf, u64),
    Unlink(PathBuf),
    Rename { from: PathBuf, to: PathBuf, id: u64 },
    Mkdir(PathBuf),
}

/// An armed crash inside a sync (see [`CrashFs::crash_in_sync`]).
#[derive(Debug, Clone, Copy)]
struct Armed {
    /// Syncs still to succeed before the one that crashes.
    after: u64,
    seed: u64,
}

#[derive(Debug, Default)]
struct State {
    generation: u64,
    next_inode: u64,
    preallocates: bool,
    dirs: BTreeSet<PathBuf>,
    durable_dirs: BTreeSet<PathBuf>,
    names: BTreeMap<PathBuf, u64>,
    durable_names: BTreeMap<PathBuf, u64>,
    /// Entry changes not yet made durable, by directory, in order.
    pending_entries: BTreeMap<PathBuf, Vec<Entry>>,
    inodes: BTreeMap<u64, Inode>,
    armed: Option<Armed>,
    /// Crashes inside a sync so far.
    crashed_in_sync: u64,
    /// Syncs of files whose path contains the fragment fail, as Linux
    /// fails them (module docs), this many more times.
    /// Syncs to fail: a path fragment, matching syncs to let through
    /// first, matching syncs to fail then.
    failing_syncs: Option<(String, u64, u64)>,
}

/// The crashable file system (see the module docs); clones share it.
#[derive(Clone, Debug)]
pub(crate) struct CrashFs {
    state: Arc<Mutex<State>>,
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{}: no such file or directory", path.display()),
    )
}

fn parent_of(path: &Path) -> PathBuf {
    path.parent().map(Path::to_path_buf).unwrap_or_default()
}

fn write_at(buf: &mut Vec<u8>, at: u64, bytes: &[u8]) {
    let start = usize::try_from(at).unwrap_or(usize::MAX);
    let end = start.saturating_add(bytes.len());
    if buf.len() < end {
        buf.resize(end, 0);
    }
    buf[start..end].copy_from_slice(bytes);
}

/// Applies to `bytes` a seeded part of `pending` (module docs): each
/// sector of a write kept or not, each length change kept or not, in order.
fn persist_some(bytes: &mut Vec<u8>, pending: &[Change], rng: &mut StdRng) {
    for change in pending {
        match change {
            Change::SetLen(len) => {
                if rng.random_bool(0.5) {
                    bytes.resize(usize::try_from(*len).unwrap_or(usize::MAX), 0);
                }
            }
            Change::Write { at, bytes: w } => {
                let mut off = 0usize;
                while off < w.len() {
                    let abs = at + off as u64;
                    let sector_end = (abs / SECTOR + 1) * SECTOR;
                    let n = ((sector_end - abs) as usize).min(w.len() - off);
                    if rng.random_bool(0.5) {
                        write_at(bytes, abs, &w[off..off + n]);
                    }
                    off += n;
                }
            }
        }
    }
}

impl State {
    fn record(&mut self, dir: PathBuf, change: Entry) {
        self.pending_entries.entry(dir).or_default().push(change);
    }

    /// The crash of the module docs: strict without `rng`, seeded with it.
    fn crash(&mut self, mut rng: Option<StdRng>) {
        self.generation += 1;
        self.armed = None;
        for (_, changes) in std::mem::take(&mut self.pending_entries) {
            let keep = rng
                .as_mut()
                .map_or(0, |r| r.random_range(0..=changes.len()));
            for change in changes.into_iter().take(keep) {
                match change {
                    Entry::Link(p, id) => {
                        self.durable_names.insert(p, id);
                    }
                    Entry::Unlink(p) => {
                        self.durable_names.remove(&p);
                    }
                    Entry::Rename { from, to, id } => {
                        self.durable_names.remove(&from);
                        self.durable_names.insert(to, id);
                    }
                    Entry::Mkdir(p) => {
                        self.durable_dirs.insert(p);
                    }
                }
            }
        }
        let durable_dirs = &self.durable_dirs;
        let kept: BTreeSet<PathBuf> = durable_dirs
            .iter()
            .filter(|d| d.ancestors().all(|a| durable_dirs.contains(a)))
            .cloned()
            .collect();
        // A durable name whose file was never synced: lost (strict), or
        // kept with what of its writes reached the disk (seeded).
        let mut unsynced_kept = BTreeMap::new();
        let mut names = BTreeMap::new();
        for (p, id) in &self.durable_names {
            if !p.parent().is_some_and(|d| kept.contains(d)) {
                continue;
            }
            let Some(inode) = self.inodes.get(id) else {
                continue;
            };
            let survives = inode.synced
                || *unsynced_kept
                    .entry(*id)
                    .or_insert_with(|| rng.as_mut().is_some_and(|r| r.random_bool(0.5)));
            if survives {
                names.insert(p.clone(), *id);
            }
        }
        let live: BTreeSet<u64> = names.values().copied().collect();
        self.inodes.retain(|id, _| live.contains(id));
        for inode in self.inodes.values_mut() {
            let mut bytes = std::mem::take(&mut inode.durable);
            if let Some(r) = rng.as_mut() {
                persist_some(&mut bytes, &inode.pending, r);
            }
            inode.pending.clear();
            inode.volatile = bytes.clone();
            inode.durable = bytes;
            inode.synced = true;
        }
        self.dirs = kept.clone();
        self.durable_dirs = kept;
        self.durable_names = names.clone();
        self.names = names;
    }

    /// Counts a sync; `Err` if it is the armed one, after crashing.
    fn sync_point(&mut self) -> io::Result<()> {
        let Some(armed) = self.armed.as_mut() else {
            return Ok(());
        };
        if armed.after > 0 {
            armed.after -= 1;
            return Ok(());
        }
        let seed = armed.seed;
        self.crash(Some(StdRng::seed_from_u64(seed)));
        self.crashed_in_sync += 1;
        Err(io::Error::other(
            "the machine crashed inside this sync (simulated)",
        ))
    }
}

impl CrashFs {
    /// An empty file system holding the durable directory `root`.
    pub(crate) fn new(root: &Path) -> CrashFs {
        let mut s = State::default();
        for dir in root.ancestors() {
            s.dirs.insert(dir.to_path_buf());
            s.durable_dirs.insert(dir.to_path_buf());
        }
        CrashFs {
            state: Arc::new(Mutex::new(s)),
        }
    }

    /// [`CrashFs::new`] whose [`Vfs::preallocates`] is true, as a real
    /// disk's: the write-ahead log zeros its segments ahead of the content
    /// and cuts the zeros when it seals one.
    pub(crate) fn preallocating(root: &Path) -> CrashFs {
        let fs = CrashFs::new(root);
        fs.lock_state().preallocates = true;
        fs
    }

    fn lock_state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A crash and restart: everything not durable is lost, and so is a
    /// durable name whose file was never synced (module docs).
    pub(crate) fn crash(&self) {
        self.lock_state().crash(None);
    }

    /// A crash and restart after which a part of what was not durable,
    /// drawn from `seed`, is found on disk anyway (module docs).
    pub(crate) fn crash_seeded(&self, seed: u64) {
        self.lock_state().crash(Some(StdRng::seed_from_u64(seed)));
    }

    /// Arms a crash inside a sync: after `after` more syncs
    /// ([`VfsFile::sync_data`], [`VfsFile::sync_all`] or [`Vfs::sync_dir`])
    /// succeed, the next one crashes the machine as
    /// [`CrashFs::crash_seeded`] with `seed` (what it was to make durable
    /// may have persisted in part) and fails; so does every handle opened
    /// before it.
    pub(crate) fn crash_in_sync(&self, after: u64, seed: u64) {
        self.lock_state().armed = Some(Armed { after, seed });
    }

    /// Makes the next `times` syncs ([`VfsFile::sync_data`],
    /// [`VfsFile::sync_all`]) of files whose path contains `fragment` fail
    /// with EIO as Linux fails them (module docs): nothing of them becomes
    /// durable, and their writes stay readable, as clean pages, until a
    /// crash or [`VfsFile::drop_cache`].
    pub(crate) fn fail_syncs(&self, fragment: &str, times: u64) {
        self.fail_syncs_after(fragment, 0, times);
    }

    /// [`CrashFs::fail_syncs`] after `skip` syncs of files whose path
    /// contains `fragment` succeeded: to fail a later sync of a file than
    /// its first (a renamed file matches under its new name only).
    pub(crate) fn fail_syncs_after(&self, fragment: &str, skip: u64, times: u64) {
        self.lock_state().failing_syncs = Some((fragment.to_string(), skip, times));
    }

    /// How many armed crashes ([`CrashFs::crash_in_sync`]) happened.
    pub(crate) fn crashes_in_sync(&self) -> u64 {
        self.lock_state().crashed_in_sync
    }
}

impl Vfs for CrashFs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut s = self.lock_state();
        let missing: Vec<PathBuf> = dir
            .ancestors()
            .filter(|d| !s.dirs.contains(*d))
            .map(Path::to_path_buf)
            .collect();
        for d in missing.into_iter().rev() {
            s.dirs.insert(d.clone());
            s.record(parent_of(&d), Entry::Mkdir(d));
        }
        Ok(())
    }

    fn is_dir(&self, path: &Path) -> bool {
        self.lock_state().dirs.contains(path)
    }

    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        let s = self.lock_state();
        if !s.dirs.contains(dir) {
            return Err(not_found(dir));
        }
        let children = s.names.keys().chain(s.dirs.iter());
        Ok(children
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name()?.to_str().map(str::to_string))
            .collect())
    }

    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Box<dyn VfsFile>> {
        let mut s = self.lock_state();
        if !path.parent().is_some_and(|d| s.dirs.contains(d)) {
            return Err(not_found(path));
        }
        let id = match (s.names.get(path).copied(), mode) {
            (Some(id), OpenMode::CreateTruncate) => {
                if let Some(inode) = s.inodes.get_mut(&id) {
                    inode.volatile.clear();
                    inode.pending.push(Change::SetLen(0));
                }
                id
            }
            (Some(id), OpenMode::Existing) => id,
            (None, OpenMode::CreateTruncate) => {
                s.next_inode += 1;
                let id = s.next_inode;
                s.inodes.insert(id, Inode::default());
                s.names.insert(path.to_path_buf(), id);
                s.record(parent_of(path), Entry::Link(path.to_path_buf(), id));
                id
            }
            (None, OpenMode::Existing) => return Err(not_found(path)),
        };
        Ok(Box::new(CrashFile {
            fs: self.clone(),
            id,
            generation: s.generation,
        }))
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        let s = self.lock_state();
        s.names
            .get(path)
            .and_then(|id| s.inodes.get(id))
            .map(|i| i.volatile.clone())
            .ok_or_else(|| not_found(path))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut s = self.lock_state();
        if !to.parent().is_some_and(|d| s.dirs.contains(d)) {
            return Err(not_found(to));
        }
        let id = s.names.remove(from).ok_or_else(|| not_found(from))?;
        s.names.insert(to.to_path_buf(), id);
        let (from_dir, to_dir) = (parent_of(from), parent_of(to));
        if from_dir == to_dir {
            let (from, to) = (from.to_path_buf(), to.to_path_buf());
            s.record(from_dir, Entry::Rename { from, to, id });
        } else {
            s.record(from_dir, Entry::Unlink(from.to_path_buf()));
            s.record(to_dir, Entry::Link(to.to_path_buf(), id));
        }
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut s = self.lock_state();
        s.names.remove(path).ok_or_else(|| not_found(path))?;
        s.record(parent_of(path), Entry::Unlink(path.to_path_buf()));
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut s = self.lock_state();
        let s = &mut *s;
        if !s.dirs.contains(dir) {
            return Err(not_found(dir));
        }
        s.sync_point()?;
        let child = |p: &PathBuf| p.parent() == Some(dir);
        s.durable_names.retain(|p, _| !child(p));
        s.durable_names.extend(
            s.names
                .iter()
                .filter(|(p, _)| child(p))
                .map(|(p, i)| (p.clone(), *i)),
        );
        s.durable_dirs.retain(|p| !child(p));
        s.durable_dirs
            .extend(s.dirs.iter().filter(|p| child(p)).cloned());
        s.pending_entries.remove(dir);
        Ok(())
    }

    fn lock(&self, _path: &Path) -> io::Result<Box<dyn VfsLock>> {
        Ok(Box::new(CrashLock))
    }

    fn preallocates(&self) -> bool {
        self.lock_state().preallocates
    }
}

#[derive(Debug)]
struct CrashLock;

impl VfsLock for CrashLock {}

#[derive(Debug)]
struct CrashFile {
    fs: CrashFs,
    id: u64,
    generation: u64,
}

impl CrashFile {
    fn with<R>(&self, f: impl FnOnce(&mut State, u64) -> io::Result<R>) -> io::Result<R> {
        let mut s = self.fs.lock_state();
        if s.generation != self.generation {
            return Err(io::Error::other("the handle did not survive the crash"));
        }
        if !s.inodes.contains_key(&self.id) {
            return Err(io::Error::other("the file is gone"));
        }
        f(&mut s, self.id)
    }

    fn inode<R>(&self, f: impl FnOnce(&mut Inode) -> R) -> io::Result<R> {
        self.with(|s, id| {
            s.inodes
                .get_mut(&id)
                .map(f)
                .ok_or_else(|| io::Error::other("the file is gone"))
        })
    }
}

impl VfsFile for CrashFile {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.inode(|i| {
            let start = usize::try_from(offset).ok()?;
            let bytes = i.volatile.get(start..start.checked_add(buf.len())?)?;
            buf.copy_from_slice(bytes);
            Some(())
        })?
        .ok_or_else(|| io::ErrorKind::UnexpectedEof.into())
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.inode(|i| {
            write_at(&mut i.volatile, offset, buf);
            i.pending.push(Change::Write {
                at: offset,
                bytes: buf.to_vec(),
            });
        })
    }

    fn size(&self) -> io::Result<u64> {
        self.inode(|i| i.volatile.len() as u64)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let len_usize = usize::try_from(len).map_err(io::Error::other)?;
        self.inode(|i| {
            i.volatile.resize(len_usize, 0);
            i.pending.push(Change::SetLen(len));
        })
    }

    fn sync_data(&self) -> io::Result<()> {
        self.with(|s, id| {
            s.sync_point()?;
            let names = &s.names;
            let failing = match &mut s.failing_syncs {
                Some((fragment, skip, times))
                    if *times > 0
                        && names.iter().any(|(p, i)| {
                            *i == id && p.to_string_lossy().contains(fragment.as_str())
                        }) =>
                {
                    if *skip > 0 {
                        *skip -= 1;
                        false
                    } else {
                        *times -= 1;
                        true
                    }
                }
                _ => false,
            };
            let inode = s
                .inodes
                .get_mut(&id)
                .ok_or_else(|| io::Error::other("the file is gone"))?;
            if failing {
                // The write-back failed and its pages were marked clean:
                // still read, never written (module docs).
                inode.pending.clear();
                return Err(io::Error::from_raw_os_error(5));
            }
            inode.durable = inode.durable_and_dirty();
            inode.pending.clear();
            inode.synced = true;
            Ok(())
        })
    }

    fn sync_all(&self) -> io::Result<()> {
        self.sync_data()
    }

    fn drop_cache(&self) -> io::Result<()> {
        self.inode(|i| i.volatile = i.durable_and_dirty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The model of the module docs, rule by rule.
    #[test]
    fn a_crash_keeps_exactly_what_was_made_durable() {
        let root = Path::new("/r");
        let fs = CrashFs::new(root);
        let sub = root.join("sub");
        fs.create_dir_all(&sub).expect("mkdir");
        // Synced file, synced entry, but the directory's own entry not
        // synced: lost with the directory.
        let f = fs
            .open(&sub.join("a"), OpenMode::CreateTruncate)
            .expect("create");
        f.write_all_at(b"abc", 0).expect("write");
        f.sync_all().expect("sync");
        fs.sync_dir(&sub).expect("sync sub");
        fs.crash();
        assert!(!fs.is_dir(&sub), "a directory whose entry was not synced");
        assert!(f.sync_all().is_err(), "a handle from before the crash");

        fs.create_dir_all(&sub).expect("mkdir");
        fs.sync_dir(root).expect("sync root");
        // A file whose entry was synced but not its inode; one synced but
        // whose entry was not; one synced with its entry, then written.
        let unsynced = fs
            .open(&sub.join("u"), OpenMode::CreateTruncate)
            .expect("u");
        unsynced.write_all_at(b"u", 0).expect("write u");
        let kept = fs
            .open(&sub.join("k"), OpenMode::CreateTruncate)
            .expect("k");
        kept.write_all_at(b"old", 0).expect("write k");
        kept.sync_data().expect("sync k");
        fs.sync_dir(&sub).expect("sync sub");
        kept.write_all_at(b"new!", 0).expect("rewrite k");
        let nameless = fs
            .open(&sub.join("n"), OpenMode::CreateTruncate)
            .expect("n");
        nameless.sync_all().expect("sync n");
        assert_eq!(fs.list_dir(&sub).expect("list").len(), 3);
        fs.crash();
        assert!(fs.is_dir(&sub));
        assert_eq!(fs.list_dir(&sub).expect("list"), vec!["k".to_string()]);
        assert_eq!(fs.read(&sub.join("k")).expect("read"), b"old");
    }

    /// A seeded crash keeps what was synced, and of the rest any part of
    /// the unsynced sectors, length changes and entry changes (module
    /// docs), over 128 seeds: every outcome the docs list is seen.
    #[test]
    fn a_seeded_crash_keeps_what_was_synced_and_some_of_the_rest() {
        let root = Path::new("/r");
        let (mut extended, mut gaps, mut cut_kept, mut cut_lost) = (0, 0, 0, 0);
        let (mut empty_kept, mut new_lost, mut renamed, mut not_renamed) = (0, 0, 0, 0);
        for seed in 0..128 {
            let fs = CrashFs::new(root);
            let synced: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8 + 1).collect();
            let f = fs
                .open(&root.join("f"), OpenMode::CreateTruncate)
                .expect("f");
            f.write_all_at(&synced, 0).expect("write");
            f.sync_data().expect("sync");
            // Unsynced: an append of three sectors' worth.
            f.write_all_at(&[7u8; 1500], 1000).expect("append");
            // A file cut, not synced.
            let c = fs
                .open(&root.join("c"), OpenMode::CreateTruncate)
                .expect("c");
            c.write_all_at(&[9u8; 100], 0).expect("write c");
            c.sync_all().expect("sync c");
            c.set_len(10).expect("cut");
            // A new file whose entry is synced, never the file.
            let n = fs
                .open(&root.join("n"), OpenMode::CreateTruncate)
                .expect("n");
            // A synced file renamed, the rename not synced.
            let t = fs
                .open(&root.join("t.tmp"), OpenMode::CreateTruncate)
                .expect("t");
            t.write_all_at(b"tmp", 0).expect("write t");
            t.sync_all().expect("sync t");
            fs.sync_dir(root).expect("sync root");
            n.write_all_at(b"never synced", 0).expect("write n");
            fs.rename(&root.join("t.tmp"), &root.join("t"))
                .expect("rename");
            fs.crash_seeded(seed);

            let got = fs.read(&root.join("f")).expect("a synced file survives");
            assert_eq!(got.get(..1000), Some(&synced[..]), "seed {seed}");
            let tail = got.get(1000..).unwrap_or_default();
            assert!(tail.iter().all(|&b| b == 7 || b == 0), "seed {seed}");
            extended += usize::from(!tail.is_empty());
            gaps += usize::from(tail.contains(&0));
            match fs.read(&root.join("c")).expect("c").len() {
                10 => cut_kept += 1,
                100 => cut_lost += 1,
                len => panic!("seed {seed}: c is {len} bytes"),
            }
            match fs.read(&root.join("n")) {
                Ok(bytes) => {
                    assert!(bytes.is_empty() || bytes == b"never synced", "seed {seed}");
                    empty_kept += usize::from(bytes.is_empty());
                }
                Err(_) => new_lost += 1,
            }
            let (old, new) = (
                fs.read(&root.join("t.tmp")).is_ok(),
                fs.read(&root.join("t")).is_ok(),
            );
            assert!(old != new, "seed {seed}: a rename is atomic ({old}, {new})");
            renamed += usize::from(new);
            not_renamed += usize::from(old);
        }
        for (what, n) in [
            ("an append kept in part", extended),
            ("an append with a lost sector before a kept one", gaps),
            ("a cut kept", cut_kept),
            ("a cut lost", cut_lost),
            ("a never-synced file kept empty", empty_kept),
            ("a never-synced file lost", new_lost),
            ("a rename kept", renamed),
            ("a rename lost", not_renamed),
        ] {
            assert!(n > 0, "no seed gave {what}");
        }
    }

    /// An armed crash fails the chosen sync and every handle after it;
    /// the syncs before it are durable.
    #[test]
    fn a_crash_inside_a_sync_fails_it_and_keeps_the_syncs_before() {
        let root = Path::new("/r");
        let fs = CrashFs::new(root);
        fs.crash_in_sync(2, 1);
        let f = fs
            .open(&root.join("f"), OpenMode::CreateTruncate)
            .expect("f");
        f.write_all_at(b"one", 0).expect("write");
        f.sync_data().expect("first sync");
        fs.sync_dir(root).expect("second sync");
        f.write_all_at(b"two", 3).expect("write");
        assert!(f.sync_data().is_err(), "the third sync crashes");
        assert!(f.write_all_at(b"x", 0).is_err(), "the handle is dead");
        assert_eq!(fs.crashes_in_sync(), 1);
        let got = fs.read(&root.join("f")).expect("f survives");
        assert!(got == b"one" || got == b"onetwo", "{got:?}");
        // Disarmed: later syncs succeed.
        let g = fs
            .open(&root.join("f"), OpenMode::Existing)
            .expect("reopen");
        g.sync_data().expect("a sync after the crash");
    }
}

//! A test-only in-memory [`Vfs`] that a test can crash, with the strict
//! reading of the durability contract (module docs of [`super`]): after
//! [`CrashFs::crash`] only what was made durable is left.
//!
//! Model, stricter than the whole-runtime simulation's disk
//! (`sim::runtime::disk`, which keeps every directory at once and a file
//! whose name was synced):
//! - a file's bytes and length are durable as of its last sync;
//! - a new file's inode is durable only once the file itself was synced
//!   (`fsync(2)`: a directory fsync makes the *entry* durable, the file's
//!   own fsync its inode; a new file needs both, in the order of
//!   `storage::vfs::write_atomic`). A durable name whose file was never
//!   synced is lost at a crash;
//! - the creation, renaming or removal of an entry (a file or a
//!   *directory*) is durable only after [`Vfs::sync_dir`] of its parent; a
//!   directory that did not survive takes its entries with it;
//! - the root given to [`CrashFs::new`] (and its ancestors) is durable.
//!
//! Not modelled: torn or partial unsynced writes (a crash keeps none of
//! them), locks (always granted), faults (wrap it in
//! [`FaultyFs`](super::FaultyFs)). Handles opened before a crash fail
//! afterwards.
//!
//! Test support only (`cfg(test)`).

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use super::{OpenMode, Vfs, VfsFile, VfsLock};

#[derive(Debug, Default)]
struct Inode {
    volatile: Vec<u8>,
    durable: Vec<u8>,
    /// Whether the file was synced since its creation.
    synced: bool,
}

#[derive(Debug, Default)]
struct State {
    generation: u64,
    next_inode: u64,
    dirs: BTreeSet<PathBuf>,
    durable_dirs: BTreeSet<PathBuf>,
    names: BTreeMap<PathBuf, u64>,
    durable_names: BTreeMap<PathBuf, u64>,
    inodes: BTreeMap<u64, Inode>,
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

    fn lock_state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A crash and restart: everything not durable is lost (module docs).
    pub(crate) fn crash(&self) {
        let mut s = self.lock_state();
        let s = &mut *s;
        s.generation += 1;
        let durable_dirs = &s.durable_dirs;
        let kept: BTreeSet<PathBuf> = durable_dirs
            .iter()
            .filter(|d| d.ancestors().all(|a| durable_dirs.contains(a)))
            .cloned()
            .collect();
        let inodes = &s.inodes;
        let names: BTreeMap<PathBuf, u64> = s
            .durable_names
            .iter()
            .filter(|(p, id)| {
                p.parent().is_some_and(|d| kept.contains(d))
                    && inodes.get(id).is_some_and(|i| i.synced)
            })
            .map(|(p, id)| (p.clone(), *id))
            .collect();
        let live: BTreeSet<u64> = names.values().copied().collect();
        s.inodes.retain(|id, _| live.contains(id));
        for inode in s.inodes.values_mut() {
            inode.volatile = inode.durable.clone();
        }
        s.dirs = kept.clone();
        s.durable_dirs = kept;
        s.durable_names = names.clone();
        s.names = names;
    }
}

impl Vfs for CrashFs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut s = self.lock_state();
        for d in dir.ancestors() {
            s.dirs.insert(d.to_path_buf());
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
                }
                id
            }
            (Some(id), OpenMode::Existing) => id,
            (None, OpenMode::CreateTruncate) => {
                s.next_inode += 1;
                let id = s.next_inode;
                s.inodes.insert(id, Inode::default());
                s.names.insert(path.to_path_buf(), id);
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
        let id = s.names.remove(from).ok_or_else(|| not_found(from))?;
        s.names.insert(to.to_path_buf(), id);
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut s = self.lock_state();
        s.names
            .remove(path)
            .map(|_| ())
            .ok_or_else(|| not_found(path))
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut s = self.lock_state();
        let s = &mut *s;
        if !s.dirs.contains(dir) {
            return Err(not_found(dir));
        }
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
        Ok(())
    }

    fn lock(&self, _path: &Path) -> io::Result<Box<dyn VfsLock>> {
        Ok(Box::new(CrashLock))
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
    fn with<R>(&self, f: impl FnOnce(&mut Inode) -> R) -> io::Result<R> {
        let mut s = self.fs.lock_state();
        if s.generation != self.generation {
            return Err(io::Error::other("the handle did not survive the crash"));
        }
        s.inodes
            .get_mut(&self.id)
            .map(f)
            .ok_or_else(|| io::Error::other("the file is gone"))
    }
}

impl VfsFile for CrashFile {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.with(|i| {
            let start = usize::try_from(offset).ok()?;
            let bytes = i.volatile.get(start..start.checked_add(buf.len())?)?;
            buf.copy_from_slice(bytes);
            Some(())
        })?
        .ok_or_else(|| io::ErrorKind::UnexpectedEof.into())
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let start = usize::try_from(offset).map_err(io::Error::other)?;
        self.with(|i| {
            let end = start + buf.len();
            if i.volatile.len() < end {
                i.volatile.resize(end, 0);
            }
            i.volatile[start..end].copy_from_slice(buf);
        })
    }

    fn size(&self) -> io::Result<u64> {
        self.with(|i| i.volatile.len() as u64)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let len = usize::try_from(len).map_err(io::Error::other)?;
        self.with(|i| i.volatile.resize(len, 0))
    }

    fn sync_data(&self) -> io::Result<()> {
        self.with(|i| {
            i.durable = i.volatile.clone();
            i.synced = true;
        })
    }

    fn sync_all(&self) -> io::Result<()> {
        self.sync_data()
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
}

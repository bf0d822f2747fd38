//! The file-system seam: every byte the write-ahead log and the snapshot
//! store read or write goes through a [`Vfs`].
//!
//! Three implementations exist or are planned:
//!
//! - [`RealFs`], the operating system's file system (`std::fs`, `pread`,
//!   `pwrite`, `fdatasync`, `flock`): what production runs on;
//! - [`FaultyFs`], a wrapper that injects the failures real disks have
//!   (ENOSPC, EIO on write, fsync, rename or directory fsync, short writes,
//!   writes that hang), switchable while the node runs: what the failure
//!   tests run on;
//! - a simulated in-memory disk (the whole-runtime simulation), which keeps
//!   written-but-unsynced bytes apart from durable ones so that a simulated
//!   crash can lose or tear them;
//! - (tests only) `crash::CrashFs`, an in-memory disk with the strict
//!   reading of the contract below, for unit tests of what one function
//!   makes durable: a crash loses everything unsynced, or keeps a seeded
//!   part of it (as writeback and a journal commit may), also from inside
//!   a sync; optionally preallocating, as a real disk.
//!
//! The interface is the small set of calls the stores need, with the
//! durability contract of POSIX spelled out so that a simulated disk can be
//! exact about it:
//!
//! - bytes written with [`VfsFile::write_all_at`] (and a length changed by
//!   [`VfsFile::set_len`]) are durable only after [`VfsFile::sync_data`] or
//!   [`VfsFile::sync_all`] on that file returned `Ok`;
//! - the creation, renaming and removal of a directory entry is durable only
//!   after [`Vfs::sync_dir`] on its directory returned `Ok`;
//! - a failed sync means nothing about what reached the disk: the caller
//!   must treat the file as lost (the stores stop; see
//!   [`StorageError::Failed`]).
//!
//! Nothing outside the stores branches on which implementation runs: a node
//! is given one (`PeerBuilder::file_system`, a testing hook) and uses it for
//! everything.

#[cfg(test)]
pub(crate) mod crash;
mod faults;

use std::ffi::OsString;
use std::fmt;
use std::fs::{File, OpenOptions, TryLockError};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use faults::{Fault, FaultRule, FaultyFs, FileOp};

use super::StorageError;

/// How [`Vfs::open`] opens a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenMode {
    /// Read and write; create the file if missing and truncate it to zero
    /// length if present.
    CreateTruncate,
    /// Read and write an existing file.
    Existing,
}

/// A file system, as the storage layer uses it. See the [module
/// documentation](self) for the durability contract.
pub trait Vfs: Send + Sync + fmt::Debug {
    /// Creates `dir` and its missing parents (not yet durable: sync the
    /// parent directory).
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Whether `path` is an existing directory.
    fn is_dir(&self, path: &Path) -> bool;
    /// The names of the entries in `dir` (names that are not UTF-8 are
    /// left out: the stores never create such names).
    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Opens a file.
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Box<dyn VfsFile>>;
    /// Reads a whole file.
    fn read(&self, path: &Path) -> io::Result<Vec<u8>>;
    /// Renames `from` to `to`, replacing `to` (durable after
    /// [`Vfs::sync_dir`]).
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Removes a file (durable after [`Vfs::sync_dir`]).
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Makes the creation, renaming and removal of the entries of `dir`
    /// durable (fsync of the directory).
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Takes an exclusive advisory lock on `path` (created if missing),
    /// held until the returned guard is dropped. Fails with
    /// [`io::ErrorKind::WouldBlock`] if another holder has it.
    fn lock(&self, path: &Path) -> io::Result<Box<dyn VfsLock>>;
    /// Whether the write-ahead log should write zeros ahead of its appends
    /// (see `storage::wal`, "Preallocation"): on a real disk an append then
    /// overwrites allocated blocks within the file's size, so `fdatasync`
    /// has no metadata (inode size, block map) to write. Default `false`:
    /// an in-memory model gains nothing from it and would only copy the
    /// zeros on every sync.
    fn preallocates(&self) -> bool {
        false
    }
}

/// An open file.
pub trait VfsFile: Send + Sync + fmt::Debug {
    /// Reads exactly `buf.len()` bytes at `offset`.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Writes all of `buf` at `offset` (durable after a sync). On failure
    /// any prefix of `buf` may have been written.
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// The file's current size in bytes.
    fn size(&self) -> io::Result<u64>;
    /// Cuts or extends the file to `len` bytes (durable after a sync).
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Makes the file's data and length durable (`fdatasync`).
    fn sync_data(&self) -> io::Result<()>;
    /// Makes the file's data and all its metadata durable (`fsync`).
    fn sync_all(&self) -> io::Result<()>;
    /// Drops the file's *clean* cached pages, so that the next reads come
    /// from the device (dirty pages stay: sync first to drop them all).
    ///
    /// Why: after a sync failed (EIO), Linux marks the pages whose
    /// write-back failed clean. They keep the new bytes, readable until
    /// evicted or rebooted, while the device never got them, and a later
    /// successful sync does not write them either. A process that opens
    /// the file again on the same boot would read, and trust, bytes that
    /// are not on the disk. A store calls this on a file that a previous
    /// process may have been writing, after syncing it and before reading
    /// it (see `storage::wal`, "Open").
    ///
    /// Best effort: [`RealFs`] uses `posix_fadvise(POSIX_FADV_DONTNEED)`
    /// on Linux and Android, which drops only the clean pages that nothing
    /// maps or holds (pages mapped, locked or in use by another reader,
    /// e.g. a backup, are kept, and it still succeeds); elsewhere, and by
    /// default, it does nothing. A model of a page cache (the test file
    /// systems) drops what a failed sync left readable.
    ///
    /// The default does nothing, so a custom [`Vfs`] gets this protection
    /// only if its files implement it: a file that wraps another (a
    /// [`RealFs`] file for metrics, encryption or quotas) must forward it.
    /// An error fails the log's open.
    fn drop_cache(&self) -> io::Result<()> {
        Ok(())
    }
}

/// A held lock (see [`Vfs::lock`]); dropping it releases the lock.
pub trait VfsLock: Send + Sync + fmt::Debug {}

/// A shared file system handle.
pub type SharedFs = Arc<dyn Vfs>;

/// The operating system's file system.
pub fn real() -> SharedFs {
    Arc::new(RealFs)
}

/// The operating system's file system: `std::fs` and positioned IO.
#[derive(Clone, Copy, Debug, Default)]
pub struct RealFs;

#[derive(Debug)]
struct RealFile(File);

#[derive(Debug)]
struct RealLock(#[allow(dead_code)] File);

impl VfsLock for RealLock {}

impl Vfs for RealFs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)
    }

    fn is_dir(&self, path: &Path) -> bool {
        path.is_dir()
    }

    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for item in std::fs::read_dir(dir)? {
            if let Ok(name) = item?.file_name().into_string() {
                names.push(name);
            }
        }
        Ok(names)
    }

    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Box<dyn VfsFile>> {
        let mut o = OpenOptions::new();
        o.read(true).write(true);
        if mode == OpenMode::CreateTruncate {
            o.create(true).truncate(true);
        }
        Ok(Box::new(RealFile(o.open(path)?)))
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        std::fs::read(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        // Directories cannot be opened for syncing on Windows, whose file
        // systems journal metadata: there this is a no-op.
        #[cfg(unix)]
        File::open(dir)?.sync_all()?;
        #[cfg(not(unix))]
        let _ = dir;
        Ok(())
    }

    fn lock(&self, path: &Path) -> io::Result<Box<dyn VfsLock>> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)?;
        match file.try_lock() {
            Ok(()) => Ok(Box::new(RealLock(file))),
            Err(TryLockError::WouldBlock) => Err(io::ErrorKind::WouldBlock.into()),
            Err(TryLockError::Error(e)) => Err(e),
        }
    }

    fn preallocates(&self) -> bool {
        true
    }
}

impl VfsFile for RealFile {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        #[cfg(unix)]
        {
            std::os::unix::fs::FileExt::read_exact_at(&self.0, buf, offset)
        }
        #[cfg(windows)]
        {
            let (mut buf, mut offset) = (buf, offset);
            while !buf.is_empty() {
                match std::os::windows::fs::FileExt::seek_read(&self.0, buf, offset) {
                    Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                    Ok(n) => {
                        buf = &mut buf[n..];
                        offset += n as u64;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        }
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        #[cfg(unix)]
        {
            std::os::unix::fs::FileExt::write_all_at(&self.0, buf, offset)
        }
        #[cfg(windows)]
        {
            let (mut buf, mut offset) = (buf, offset);
            while !buf.is_empty() {
                match std::os::windows::fs::FileExt::seek_write(&self.0, buf, offset) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(n) => {
                        buf = &buf[n..];
                        offset += n as u64;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        }
    }

    fn size(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }

    fn sync_all(&self) -> io::Result<()> {
        self.0.sync_all()
    }

    fn drop_cache(&self) -> io::Result<()> {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        {
            use std::os::fd::AsRawFd;
            // SAFETY: `posix_fadvise` only reads its integer arguments; the
            // descriptor is owned by `self.0`, open for the whole call.
            let rc =
                unsafe { libc::posix_fadvise(self.0.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
            // It returns the error number itself (not -1 and `errno`).
            if rc != 0 {
                return Err(io::Error::from_raw_os_error(rc));
            }
        }
        Ok(())
    }
}

/// Fsyncs `dir`, as a storage error.
pub(crate) fn sync_dir(fs: &dyn Vfs, dir: &Path) -> Result<(), StorageError> {
    fs.sync_dir(dir)
        .map_err(|e| StorageError::io("fsync directory", dir, e))
}

/// Creates `dir` and its missing parents, outermost first, making each new
/// entry durable in its parent before going on (a relative path's
/// outermost parent is the working directory): a directory whose files
/// were synced never vanishes at a power cut because its own entry, or an
/// ancestor's, was not.
pub(crate) fn create_dir_durable(fs: &dyn Vfs, dir: &Path) -> Result<(), StorageError> {
    let mut missing = Vec::new();
    let mut at = Some(dir);
    while let Some(d) = at.filter(|d| !d.as_os_str().is_empty() && !fs.is_dir(d)) {
        missing.push(d);
        at = d.parent();
    }
    for d in missing.into_iter().rev() {
        fs.create_dir_all(d)
            .map_err(|e| StorageError::io("create directory", d, e))?;
        let parent = d
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or_else(|| Path::new("."));
        sync_dir(fs, parent)?;
    }
    Ok(())
}

/// Fsyncs `dir` and its parent, whatever was found or changed there: what
/// a store calls once it opened `dir` (created by [`create_dir_durable`])
/// and cleaned it, before it trusts what it holds. A previous process may
/// have created the directory, or renamed a file into it, and stopped (a
/// kill, a failed fsync) before the fsync that made that entry durable; a
/// store that wrote on such an entry would acknowledge writes that a power
/// cut then takes with it. Only the parent: an ancestor further up created
/// and never synced is not looked for.
pub(crate) fn sync_dir_and_parent(fs: &dyn Vfs, dir: &Path) -> Result<(), StorageError> {
    let parent = dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| Path::new("."));
    sync_dir(fs, parent)?;
    sync_dir(fs, dir)
}

/// The temporary name a file is written under before it is renamed to
/// `path`: its whole file name followed by `.tmp` (`schema.floor` becomes
/// `schema.floor.tmp`), so that no two files of a directory share one (with
/// `Path::with_extension`, `schema` and `schema.floor` both went through
/// `schema.tmp`). A segment's is `….wal.tmp`, a snapshot's `….snap.tmp`:
/// the names their stores delete at open.
pub(crate) fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().map(OsString::from).unwrap_or_default();
    name.push(".tmp");
    path.with_file_name(name)
}

/// Writes a small file atomically: a temporary file (`path` with `.tmp`
/// appended to its file name), fsync, rename over `path`, directory fsync. A
/// failure before the rename removes the temporary file (nothing else
/// would until the next write of `path`: the stores using this delete no
/// leftovers at open).
pub fn write_atomic(fs: &dyn Vfs, path: &Path, bytes: &[u8]) -> Result<(), StorageError> {
    create_dir_durable(fs, parent_dir(path))?;
    let steps = RenameSteps {
        create: "create",
        fsync: "fsync",
        rename: "rename",
    };
    write_renamed(fs, path, steps, |file, tmp| {
        file.write_all_at(bytes, 0)
            .map_err(|e| StorageError::io("write", tmp, e))
    })?;
    Ok(())
}

/// The directory holding `path` (`.` for a bare file name).
fn parent_dir(path: &Path) -> &Path {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| Path::new("."))
}

/// What the errors of [`write_renamed`] call its steps (each store names
/// what it writes: `create segment`, `fsync snapshot`, ...).
#[derive(Clone, Copy, Debug)]
pub(crate) struct RenameSteps {
    /// Opening (creating) the temporary file.
    pub create: &'static str,
    /// Its `sync_all`.
    pub fsync: &'static str,
    /// Its rename to the final name.
    pub rename: &'static str,
}

/// Makes `path` appear whole or not at all: opens its temporary file
/// ([`temp_path`], created or truncated), lets `fill` write it (with any
/// syncs of its own; it is given the file and the temporary path for its
/// errors), fsyncs it (`sync_all`), renames it to `path`, then fsyncs the
/// directory of `path`. A failure up to and including the rename removes
/// the temporary file (the error returned is the first one); a failure of
/// the directory fsync leaves `path` in place, its entry perhaps not
/// durable. Returns the file, still open (now under `path`), and what
/// `fill` returned. The one implementation of this sequence:
/// [`write_atomic`], new WAL segments, snapshot files.
pub(crate) fn write_renamed<T>(
    fs: &dyn Vfs,
    path: &Path,
    steps: RenameSteps,
    fill: impl FnOnce(&dyn VfsFile, &Path) -> Result<T, StorageError>,
) -> Result<(Box<dyn VfsFile>, T), StorageError> {
    let tmp = temp_path(path);
    let renamed = write_and_rename(fs, &tmp, path, steps, fill);
    if renamed.is_err() {
        // Never leave a partial temporary file behind (with a WAL segment's
        // preallocation it holds zeros, often on a disk that just ran out of
        // room). The error that matters is the first one.
        let _ = fs.remove_file(&tmp);
    }
    let renamed = renamed?;
    sync_dir(fs, parent_dir(path))?;
    Ok(renamed)
}

/// [`write_renamed`] up to its rename.
fn write_and_rename<T>(
    fs: &dyn Vfs,
    tmp: &Path,
    path: &Path,
    steps: RenameSteps,
    fill: impl FnOnce(&dyn VfsFile, &Path) -> Result<T, StorageError>,
) -> Result<(Box<dyn VfsFile>, T), StorageError> {
    let file = fs
        .open(tmp, OpenMode::CreateTruncate)
        .map_err(|e| StorageError::io(steps.create, tmp, e))?;
    let filled = fill(&*file, tmp)?;
    file.sync_all()
        .map_err(|e| StorageError::io(steps.fsync, tmp, e))?;
    fs.rename(tmp, path)
        .map_err(|e| StorageError::io(steps.rename, tmp, e))?;
    Ok((file, filled))
}

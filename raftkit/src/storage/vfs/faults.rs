//! [`FaultyFs`]: a [`Vfs`] that injects the failures real disks have.
//!
//! A `FaultyFs` wraps another file system (normally [`RealFs`](super::RealFs))
//! and consults its rules before every call: a rule names an operation, an
//! optional path fragment, how many matching calls to let through first and
//! how many times to fire. Rules can be added and cleared while a node runs
//! (the handle is shared), so a test can let a cluster start on a healthy
//! disk and then fill it, break its fsync or slow it down.
//!
//! What each [`Fault`] does is what a real disk does in that situation:
//! `NoSpace` and `Io` fail the call before it reaches the disk (`ENOSPC`,
//! `EIO`); `ShortWrite` writes a prefix of the buffer and then fails with
//! `ENOSPC`, as a write that fills the disk does; `Hang` blocks the calling
//! thread and then performs the call, like a disk that stalls.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use super::{OpenMode, SharedFs, Vfs, VfsFile, VfsLock};

/// An operation a [`FaultRule`] can target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FileOp {
    /// Opening or creating a file.
    Open,
    /// Reading a file (positioned reads and whole-file reads).
    Read,
    /// Writing to a file.
    Write,
    /// Changing a file's length.
    SetLen,
    /// `fdatasync` or `fsync` of a file.
    Fsync,
    /// Renaming a file (matched against both names).
    Rename,
    /// Removing a file.
    Remove,
    /// Fsync of a directory.
    SyncDir,
    /// Creating a directory.
    CreateDir,
    /// Listing a directory.
    List,
    /// Locking a file.
    Lock,
}

/// What happens to a call a [`FaultRule`] fires on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The call fails with `ENOSPC` (no space left on device).
    NoSpace,
    /// The call fails with `EIO` (input/output error).
    Io,
    /// A write stores only its first `bytes` bytes, then fails with
    /// `ENOSPC`. On other operations this is [`Fault::NoSpace`].
    ShortWrite {
        /// How many bytes reach the file.
        bytes: usize,
    },
    /// The calling thread blocks for this long, then the call proceeds.
    Hang(Duration),
}

/// When a [`Fault`] fires.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FaultRule {
    /// The operation it targets.
    pub op: FileOp,
    /// Only paths containing this fragment (any path if `None`).
    pub path_contains: Option<String>,
    /// Let this many matching calls through before firing.
    pub skip: u64,
    /// Fire at most this many times (`None`: on every matching call).
    pub times: Option<u64>,
    /// What happens.
    pub fault: Fault,
}

impl FaultRule {
    /// A rule firing `fault` on every `op`, on any path.
    pub fn new(op: FileOp, fault: Fault) -> Self {
        FaultRule {
            op,
            path_contains: None,
            skip: 0,
            times: None,
            fault,
        }
    }

    /// Only on paths containing `fragment` (for example `".wal"` or
    /// `"snapshots"`).
    pub fn on(mut self, fragment: impl Into<String>) -> Self {
        self.path_contains = Some(fragment.into());
        self
    }

    /// Lets the first `n` matching calls through.
    pub fn after(mut self, n: u64) -> Self {
        self.skip = n;
        self
    }

    /// Fires at most `n` times.
    pub fn times(mut self, n: u64) -> Self {
        self.times = Some(n);
        self
    }

    fn matches(&self, op: FileOp, paths: &[&Path]) -> bool {
        self.op == op
            && self
                .path_contains
                .as_deref()
                .is_none_or(|frag| paths.iter().any(|p| p.to_string_lossy().contains(frag)))
    }
}

#[derive(Debug, Default)]
struct State {
    /// Each rule with the number of matching calls seen and times fired.
    rules: Vec<(FaultRule, u64, u64)>,
    fired: u64,
}

/// A file system that injects faults into another one (see
/// [`crate::storage::vfs`]): before every call it consults its rules (an
/// operation, an optional path fragment, how many matching calls to let
/// through first, how many times to fire); what each [`Fault`] does is what
/// a real disk does. Rules can be added and cleared while a node runs.
/// Cloning shares the rules.
#[derive(Clone)]
pub struct FaultyFs {
    inner: SharedFs,
    state: Arc<Mutex<State>>,
}

impl fmt::Debug for FaultyFs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultyFs")
            .field("inner", &self.inner)
            .field("fired", &self.fired())
            .finish_non_exhaustive()
    }
}

impl FaultyFs {
    /// Injects faults into `inner`; no rule is set yet.
    pub fn new(inner: SharedFs) -> Self {
        FaultyFs {
            inner,
            state: Arc::default(),
        }
    }

    /// Over the operating system's file system.
    pub fn over_real() -> Self {
        Self::new(super::real())
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A rule list is plain data: a panic elsewhere leaves it usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a rule (rules are consulted in the order they were added; the
    /// first that fires wins).
    pub fn inject(&self, rule: FaultRule) {
        self.state().rules.push((rule, 0, 0));
    }

    /// Removes every rule: the disk is healthy again.
    pub fn clear(&self) {
        self.state().rules.clear();
    }

    /// How many faults fired so far.
    pub fn fired(&self) -> u64 {
        self.state().fired
    }

    /// The fault to apply to this call, if a rule fires.
    fn check(&self, op: FileOp, paths: &[&Path]) -> Option<Fault> {
        let mut st = self.state();
        let mut hit = None;
        for (rule, seen, fired) in st.rules.iter_mut() {
            if !rule.matches(op, paths) {
                continue;
            }
            *seen += 1;
            if *seen > rule.skip && rule.times.is_none_or(|t| *fired < t) {
                *fired += 1;
                hit = Some(rule.fault);
                break;
            }
        }
        if hit.is_some() {
            st.fired += 1;
        }
        hit
    }

    /// Runs `call` unless a rule fires first; a hang delays it.
    fn guard<T>(
        &self,
        op: FileOp,
        paths: &[&Path],
        call: impl FnOnce() -> io::Result<T>,
    ) -> io::Result<T> {
        match self.check(op, paths) {
            None => call(),
            Some(Fault::Hang(d)) => {
                tracing::warn!(?op, path = %paths.first().map(|p| p.display().to_string()).unwrap_or_default(), hang_ms = d.as_millis() as u64, "injected fault: disk hangs");
                std::thread::sleep(d);
                call()
            }
            Some(fault) => {
                tracing::warn!(?op, path = %paths.first().map(|p| p.display().to_string()).unwrap_or_default(), ?fault, "injected fault");
                Err(error_of(fault))
            }
        }
    }
}

/// The error a fault produces: the operating system's own for its errno.
fn error_of(fault: Fault) -> io::Error {
    match fault {
        Fault::Io => os_error(5, io::ErrorKind::Other, "input/output error"),
        _ => os_error(28, io::ErrorKind::StorageFull, "no space left on device"),
    }
}

fn os_error(errno: i32, kind: io::ErrorKind, text: &str) -> io::Error {
    if cfg!(unix) {
        io::Error::from_raw_os_error(errno)
    } else {
        io::Error::new(kind, format!("injected: {text}"))
    }
}

impl Vfs for FaultyFs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        self.guard(FileOp::CreateDir, &[dir], || self.inner.create_dir_all(dir))
    }

    fn is_dir(&self, path: &Path) -> bool {
        self.inner.is_dir(path)
    }

    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        self.guard(FileOp::List, &[dir], || self.inner.list_dir(dir))
    }

    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Box<dyn VfsFile>> {
        let file = self.guard(FileOp::Open, &[path], || self.inner.open(path, mode))?;
        Ok(Box::new(FaultyFile {
            fs: self.clone(),
            path: path.to_path_buf(),
            file,
        }))
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        self.guard(FileOp::Read, &[path], || self.inner.read(path))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.guard(FileOp::Rename, &[from, to], || self.inner.rename(from, to))
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.guard(FileOp::Remove, &[path], || self.inner.remove_file(path))
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.guard(FileOp::SyncDir, &[dir], || self.inner.sync_dir(dir))
    }

    fn lock(&self, path: &Path) -> io::Result<Box<dyn VfsLock>> {
        self.guard(FileOp::Lock, &[path], || self.inner.lock(path))
    }

    fn preallocates(&self) -> bool {
        self.inner.preallocates()
    }
}

/// A file opened through a [`FaultyFs`]: its calls consult the same rules.
#[derive(Debug)]
struct FaultyFile {
    fs: FaultyFs,
    path: PathBuf,
    file: Box<dyn VfsFile>,
}

impl VfsFile for FaultyFile {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.fs.guard(FileOp::Read, &[&self.path], || {
            self.file.read_exact_at(buf, offset)
        })
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        match self.fs.check(FileOp::Write, &[&self.path]) {
            None => self.file.write_all_at(buf, offset),
            Some(Fault::Hang(d)) => {
                tracing::warn!(path = %self.path.display(), hang_ms = d.as_millis() as u64, "injected fault: write hangs");
                std::thread::sleep(d);
                self.file.write_all_at(buf, offset)
            }
            Some(Fault::ShortWrite { bytes }) => {
                let keep = bytes.min(buf.len());
                tracing::warn!(path = %self.path.display(), wrote = keep, of = buf.len(), "injected fault: short write, then ENOSPC");
                self.file.write_all_at(&buf[..keep], offset)?;
                Err(error_of(Fault::NoSpace))
            }
            Some(fault) => {
                tracing::warn!(path = %self.path.display(), ?fault, "injected fault on write");
                Err(error_of(fault))
            }
        }
    }

    fn size(&self) -> io::Result<u64> {
        self.file.size()
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.fs
            .guard(FileOp::SetLen, &[&self.path], || self.file.set_len(len))
    }

    fn sync_data(&self) -> io::Result<()> {
        self.fs
            .guard(FileOp::Fsync, &[&self.path], || self.file.sync_data())
    }

    fn sync_all(&self) -> io::Result<()> {
        self.fs
            .guard(FileOp::Fsync, &[&self.path], || self.file.sync_all())
    }

    fn drop_cache(&self) -> io::Result<()> {
        self.file.drop_cache()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_fire_by_operation_path_skip_and_count() {
        let dir = tempfile::tempdir().unwrap();
        let fs = FaultyFs::over_real();
        fs.inject(
            FaultRule::new(FileOp::Fsync, Fault::Io)
                .on("b.dat")
                .after(1)
                .times(1),
        );
        let a = fs
            .open(&dir.path().join("a.dat"), OpenMode::CreateTruncate)
            .unwrap();
        let b = fs
            .open(&dir.path().join("b.dat"), OpenMode::CreateTruncate)
            .unwrap();
        a.sync_data().unwrap(); // other path
        b.sync_data().unwrap(); // skipped
        let e = b.sync_data().unwrap_err(); // fires
        assert_eq!(e.raw_os_error(), Some(5), "{e}");
        b.sync_all().unwrap(); // fired its one time
        assert_eq!(fs.fired(), 1);
    }

    #[test]
    fn a_short_write_stores_a_prefix_and_reports_a_full_disk() {
        let dir = tempfile::tempdir().unwrap();
        let fs = FaultyFs::over_real();
        let path = dir.path().join("f");
        let f = fs.open(&path, OpenMode::CreateTruncate).unwrap();
        fs.inject(FaultRule::new(
            FileOp::Write,
            Fault::ShortWrite { bytes: 3 },
        ));
        let e = f.write_all_at(b"abcdef", 0).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::StorageFull);
        assert_eq!(std::fs::read(&path).unwrap(), b"abc");
        fs.clear();
        f.write_all_at(b"abcdef", 0).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"abcdef");
    }

    #[test]
    fn a_failed_rename_leaves_both_names_as_they_were() {
        let dir = tempfile::tempdir().unwrap();
        let fs = FaultyFs::over_real();
        let (from, to) = (dir.path().join("x.tmp"), dir.path().join("x"));
        std::fs::write(&from, b"1").unwrap();
        fs.inject(FaultRule::new(FileOp::Rename, Fault::NoSpace).on("x"));
        let e = fs.rename(&from, &to).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::StorageFull);
        assert!(from.exists() && !to.exists());
    }
}

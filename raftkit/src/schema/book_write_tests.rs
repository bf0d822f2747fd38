//! Tests of how a [`SchemaBook`] writes a raise (review s61 schema L2, L3
//! and #5): a partial raise racing the full one never ends on disk, a
//! raise enables nothing before it is durable, and a failed write leaves
//! the gate closed and is tried again.
//!
//! [`HookedFs`] (shared with the peer's watcher tests in
//! `runtime::heard_wait_tests`) is the real file system with two hooks:
//! the writes of `schema.floor` made to fail, and the directory fsync
//! after the rename onto `schema.raised` (the last step of a raise) held
//! until the test lets it go.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use super::{HandlerKind, Schema, SchemaBook, Shape};
use crate::error::Error;
use crate::schema::{load_oldest_schema, load_raised_schema, save_joined_schema, save_schema};
use crate::storage::vfs::{OpenMode, RealFs, Vfs, VfsFile, VfsLock};

/// How long a test waits for a condition before it fails (CI runs on a
/// loaded machine: generous).
pub(crate) const PATIENCE: Duration = Duration::from_secs(30);

/// The real file system, with the hooks of the module docs.
#[derive(Debug, Default)]
pub(crate) struct HookedFs {
    /// How many renames onto `schema.floor` are still to fail.
    fail_floor_writes: AtomicU32,
    /// The last path a rename targeted (to find the fsync of its directory).
    last_rename: Mutex<Option<PathBuf>>,
    /// When set, the next directory fsync after a rename onto
    /// `schema.raised` sends on the first channel, then waits for the
    /// second (at most [`PATIENCE`]).
    hold: Mutex<Option<(mpsc::Sender<()>, mpsc::Receiver<()>)>>,
}

impl HookedFs {
    /// Makes the next `n` writes of `schema.floor` fail (at their rename).
    pub(crate) fn fail_floor_writes(&self, n: u32) {
        self.fail_floor_writes.store(n, Ordering::SeqCst);
    }

    /// How many injected failures of `schema.floor` writes are left.
    pub(crate) fn floor_failures_left(&self) -> u32 {
        self.fail_floor_writes.load(Ordering::SeqCst)
    }

    /// Holds the last step of the next raise written (the directory fsync
    /// after `schema.raised` is renamed into place): returns a receiver
    /// told when the write reached it, and a sender that lets it go.
    pub(crate) fn hold_next_raise(&self) -> (mpsc::Receiver<()>, mpsc::Sender<()>) {
        let (reached_tx, reached_rx) = mpsc::channel();
        let (release_tx, release_rx) = mpsc::channel();
        *self.hold.lock().unwrap() = Some((reached_tx, release_rx));
        (reached_rx, release_tx)
    }
}

impl Vfs for HookedFs {
    fn create_dir_all(&self, dir: &Path) -> std::io::Result<()> {
        RealFs.create_dir_all(dir)
    }
    fn is_dir(&self, path: &Path) -> bool {
        RealFs.is_dir(path)
    }
    fn list_dir(&self, dir: &Path) -> std::io::Result<Vec<String>> {
        RealFs.list_dir(dir)
    }
    fn open(&self, path: &Path, mode: OpenMode) -> std::io::Result<Box<dyn VfsFile>> {
        RealFs.open(path, mode)
    }
    fn read(&self, path: &Path) -> std::io::Result<Vec<u8>> {
        RealFs.read(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> std::io::Result<()> {
        if to.ends_with("schema.floor")
            && self
                .fail_floor_writes
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
        {
            return Err(std::io::Error::other(
                "injected: the disk refuses the floor",
            ));
        }
        RealFs.rename(from, to)?;
        *self.last_rename.lock().unwrap() = Some(to.to_path_buf());
        Ok(())
    }
    fn remove_file(&self, path: &Path) -> std::io::Result<()> {
        RealFs.remove_file(path)
    }
    fn sync_dir(&self, dir: &Path) -> std::io::Result<()> {
        let after_raised = self
            .last_rename
            .lock()
            .unwrap()
            .take()
            .is_some_and(|p| p.ends_with("schema.raised"));
        let hold = if after_raised {
            self.hold.lock().unwrap().take()
        } else {
            None
        };
        if let Some((reached, release)) = hold {
            reached.send(()).ok();
            if release.recv_timeout(PATIENCE).is_err() {
                return Err(std::io::Error::other("the test never let the raise go"));
            }
        }
        RealFs.sync_dir(dir)
    }
    fn lock(&self, path: &Path) -> std::io::Result<Box<dyn VfsLock>> {
        RealFs.lock(path)
    }
}

/// A schema with the write tags `writes`.
pub(crate) fn with_writes(writes: &[u32]) -> Schema {
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

/// A directory upgraded from write tag 0 to tags 0 and 1 (its floor
/// holds tag 0 only), and the book of the second binary reading it as a
/// start does, writing through `fs`; it hears hellos.
fn upgraded(fs: Arc<HookedFs>) -> (tempfile::TempDir, SchemaBook) {
    let dir = tempfile::tempdir().unwrap();
    save_schema(&RealFs, dir.path(), &with_writes(&[0])).unwrap();
    save_schema(&RealFs, dir.path(), &with_writes(&[0, 1])).unwrap();
    let book = SchemaBook::of_dir(
        with_writes(&[0, 1]),
        Some(with_writes(&[0])),
        fs,
        dir.path().to_path_buf(),
    )
    .unwrap();
    book.hear_peers();
    book.set_raise_retry_delay(Duration::ZERO);
    (dir, book)
}

/// Whether the book enables write tag 1 with voter 4 never heard: only
/// once the oldest schema was raised to the local one.
fn enabled_for_unheard(book: &SchemaBook) -> bool {
    book.check_enabled(HandlerKind::Write, 1, [2, 4]).is_ok()
}

/// Review s61 schema #5: a raise enables a write for a voter not heard
/// only once it is durable (written, fsynced, its directory fsynced).
/// Else a node killed right after opened a gate that its restart closes
/// again (the raise is lost), and a write accepted before is refused
/// after.
#[test]
fn a_raise_enables_nothing_before_it_is_durable() {
    let fs = Arc::new(HookedFs::default());
    let (dir, book) = upgraded(fs.clone());
    let (reached, release) = fs.hold_next_raise();
    book.accept_peer(2, with_writes(&[0, 1])).unwrap();
    book.accept_peer(3, with_writes(&[0, 1])).unwrap();
    book.check_enabled(HandlerKind::Write, 1, [2, 3]).unwrap();
    reached
        .recv_timeout(PATIENCE)
        .expect("the raise was never written");
    assert!(
        !enabled_for_unheard(&book),
        "the raise enabled write tag 1 for unheard voter 4 before its directory fsync"
    );
    release.send(()).unwrap();
    book.wait_raise_written();
    assert!(
        enabled_for_unheard(&book),
        "the raise, durable, did not enable write tag 1 for unheard voter 4"
    );
    assert_eq!(
        load_raised_schema(&RealFs, dir.path()).unwrap(),
        Some(with_writes(&[0, 1]))
    );
}

/// Review s61 schema L3: a failed write of a raise enables nothing (the
/// gate stays as the disk has it) and is tried again at the next hello.
#[test]
fn a_failed_raise_write_enables_nothing_and_is_tried_again() {
    let fs = Arc::new(HookedFs::default());
    let (dir, book) = upgraded(fs.clone());
    book.raise_on_hellos(|| vec![2, 3]);
    fs.fail_floor_writes(1);
    book.accept_peer(2, with_writes(&[0, 1])).unwrap();
    book.accept_peer(3, with_writes(&[0, 1])).unwrap();
    book.wait_raise_written();
    assert_eq!(
        load_oldest_schema(&RealFs, dir.path()).unwrap(),
        Some(with_writes(&[0])),
        "the injected failure did not fail the write"
    );
    assert!(
        !enabled_for_unheard(&book),
        "a raise whose write failed enabled write tag 1 for unheard voter 4"
    );
    // The next hello tries it again.
    book.accept_peer(2, with_writes(&[0, 1])).unwrap();
    book.wait_raise_written();
    assert_eq!(
        load_oldest_schema(&RealFs, dir.path()).unwrap(),
        Some(with_writes(&[0, 1])),
        "the raise was not written again after its failure"
    );
    assert!(enabled_for_unheard(&book));
}

/// Review s61 schema L2: a partial raise racing the full one (the first
/// on a hello proving only part, the second on a checked write) never
/// leaves the partial schema on disk or in memory. Rounds run for two
/// seconds (no count that assumes a thread's speed); each must end with
/// the full raise.
#[test]
fn a_partial_raise_racing_the_full_one_never_ends_last() {
    let local = with_writes(&[0, 1]);
    let partial = with_writes(&[0]);
    let until = Instant::now() + Duration::from_secs(2);
    let mut round = 0u32;
    while Instant::now() < until {
        round += 1;
        let dir = tempfile::tempdir().unwrap();
        save_joined_schema(&RealFs, dir.path(), &local).unwrap();
        let book = Arc::new(
            SchemaBook::of_dir(
                local.clone(),
                None,
                crate::storage::vfs::real(),
                dir.path().to_path_buf(),
            )
            .unwrap(),
        );
        book.hear_peers();
        let start = Arc::new(std::sync::Barrier::new(2));
        let partly = {
            let (book, start, partial) = (book.clone(), start.clone(), partial.clone());
            std::thread::spawn(move || {
                start.wait();
                book.raise_partly(partial);
            })
        };
        start.wait();
        book.raise_oldest();
        partly.join().unwrap();
        book.wait_raise_written();
        let on_disk = load_oldest_schema(&RealFs, dir.path()).unwrap();
        assert_eq!(
            on_disk.as_ref(),
            Some(&local),
            "round {round}: the partial raise ended on disk after the full one"
        );
        let in_memory = book.oldest_now();
        assert_eq!(
            *in_memory, local,
            "round {round}: the partial raise ended in memory after the full one"
        );
    }
}

/// A raise written through [`HookedFs`] that fails keeps a checked write
/// for a heard voter enabled (the gate of heard voters does not depend on
/// the raise) and refuses with [`Error::Unsupported`] for an unheard one.
#[test]
fn a_failed_raise_keeps_heard_voters_enabled() {
    let fs = Arc::new(HookedFs::default());
    let (_dir, book) = upgraded(fs.clone());
    fs.fail_floor_writes(u32::MAX);
    book.accept_peer(2, with_writes(&[0, 1])).unwrap();
    book.accept_peer(3, with_writes(&[0, 1])).unwrap();
    book.check_enabled(HandlerKind::Write, 1, [2, 3]).unwrap();
    book.wait_raise_written();
    book.check_enabled(HandlerKind::Write, 1, [2, 3]).unwrap();
    let e = book.check_enabled(HandlerKind::Write, 1, [2, 4]);
    assert!(matches!(e, Err(Error::Unsupported(_))), "{e:?}");
}

/// The book of a new directory whose node joined its cluster (its floor
/// proves no write), running [`with_writes`] `[0, 1]`, writing through
/// `fs`; it hears hellos and tries a failed raise again at once.
pub(crate) fn joined_book(fs: Arc<HookedFs>) -> (tempfile::TempDir, Arc<SchemaBook>) {
    let dir = tempfile::tempdir().unwrap();
    let local = with_writes(&[0, 1]);
    save_joined_schema(&RealFs, dir.path(), &local).unwrap();
    let book = SchemaBook::of_dir(local, None, fs, dir.path().to_path_buf()).unwrap();
    book.hear_peers();
    book.set_raise_retry_delay(Duration::ZERO);
    (dir, Arc::new(book))
}

/// Review s61 schema L5: a refusal for a voter not heard says that the
/// same call may succeed later with no upgrade
/// ([`Error::awaits_voter_link`]); one for a voter heard on an older
/// binary, or for a tag this binary lacks, says it cannot before an
/// upgrade. The mark crosses the wire (whose `Unsupported` is unchanged,
/// so a client of any version decodes it).
#[test]
fn an_unsupported_says_whether_it_may_succeed_later() {
    let (_dir, book) = upgraded(Arc::new(HookedFs::default()));
    book.accept_peer(2, with_writes(&[0])).unwrap();
    let unheard = book.check_enabled(HandlerKind::Write, 1, [3]).unwrap_err();
    assert!(unheard.awaits_voter_link(), "{unheard}");
    let heard_old = book.check_enabled(HandlerKind::Write, 1, [2]).unwrap_err();
    assert!(
        !heard_old.awaits_voter_link()
            && heard_old
                .to_string()
                .contains("cannot succeed before voter 2 is upgraded"),
        "{heard_old}"
    );
    let unknown = book.check_enabled(HandlerKind::Write, 9, [2]).unwrap_err();
    assert!(
        !unknown.awaits_voter_link() && unknown.to_string().contains("cannot succeed"),
        "{unknown}"
    );
    let wire = crate::client::wire::WireError::from(unheard);
    let bytes = postcard::to_allocvec(&wire).unwrap();
    let back: crate::client::wire::WireError = postcard::from_bytes(&bytes).unwrap();
    assert!(Error::from(back).awaits_voter_link());
}

//! The storage layer's error type.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::core::types::Index;

/// An error from a [`LogStore`](super::LogStore) or
/// [`SnapshotStore`](super::SnapshotStore).
///
/// Errors split in two kinds (see [`StorageError::is_fatal`]):
///
/// - *fatal* errors ([`Io`](Self::Io), [`Full`](Self::Full),
///   [`Corrupt`](Self::Corrupt), [`Failed`](Self::Failed),
///   [`Closed`](Self::Closed), [`Locked`](Self::Locked)): the store can no
///   longer be trusted or used. A store that returned an IO error from a write
///   or an fsync refuses every later call with [`Failed`](Self::Failed): after
///   a failed fsync the page cache may hold data that will never reach the
///   disk, so retrying and carrying on could acknowledge lost writes. The
///   next process on the same boot is protected: Linux may mark those pages
///   clean (readable, never written), so the write-ahead log drops its last
///   segment's cached pages at open before reading it (`storage::wal`,
///   "Recovery"), best effort: pages mapped or in use elsewhere are kept.
///   Where that may not work (anything else reading the data directory; a
///   file system that ignores `POSIX_FADV_DONTNEED`, such as tmpfs, FUSE or
///   NFS; a custom `Vfs` whose files do not implement `drop_cache`; systems
///   other than Linux), restart a store whose fsync failed only after a reboot or after
///   dropping the page cache.
/// - *request* errors ([`Compacted`](Self::Compacted),
///   [`Unavailable`](Self::Unavailable), [`Invalid`](Self::Invalid)): the call
///   was wrong (or raced with compaction); the store did nothing and remains
///   usable.
///
/// The type is `Clone` (IO errors are shared behind an [`Arc`]) so that one
/// failed fsync can be reported to every request of a group commit.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// An operating-system call failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What the store was doing, e.g. `"fsync"` or `"write"`.
        op: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: Arc<io::Error>,
    },
    /// The disk (or quota) is full. Nothing already durable was damaged; the
    /// store refuses further writes.
    #[error("storage full: {op} {} failed: {source}", path.display())]
    Full {
        /// What the store was doing.
        op: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: Arc<io::Error>,
    },
    /// Stored data failed a check (checksum, framing, decoding, sequence)
    /// somewhere other than a torn tail. The store refuses to open rather
    /// than silently skip data.
    #[error("corrupt data in {} at offset {offset}: {reason}", file.display())]
    Corrupt {
        /// The file holding the bad bytes.
        file: PathBuf,
        /// The byte offset in `file` of the record (or header) that failed.
        offset: u64,
        /// What check failed.
        reason: String,
    },
    /// An earlier write or fsync failed; the store refuses any further use.
    #[error("storage failed earlier and refuses further use: {cause}")]
    Failed {
        /// The original error, rendered.
        cause: String,
    },
    /// The store (or the group-commit thread owning it) has shut down.
    #[error("storage is closed")]
    Closed,
    /// Another process (or another store in this process) holds the data
    /// directory.
    #[error("{} is locked by another store", path.display())]
    Locked {
        /// The lock file.
        path: PathBuf,
    },
    /// The requested index lies in the compacted prefix of the log.
    #[error("index {index} is compacted (first index is {first})")]
    Compacted {
        /// The index asked for.
        index: Index,
        /// The store's first index.
        first: Index,
    },
    /// The requested index lies beyond the end of the log.
    #[error("index {index} is beyond the last index {last}")]
    Unavailable {
        /// The index asked for.
        index: Index,
        /// The store's last index.
        last: Index,
    },
    /// The request breaks the store's contract (entries not contiguous,
    /// terms going backwards, an empty range reversed, ...). Nothing was done.
    #[error("invalid storage request: {0}")]
    Invalid(String),
}

impl StorageError {
    /// Whether the store that returned this error is unusable from now on.
    pub fn is_fatal(&self) -> bool {
        !matches!(
            self,
            StorageError::Compacted { .. }
                | StorageError::Unavailable { .. }
                | StorageError::Invalid(_)
        )
    }

    /// Wraps an IO error, classifying a full disk (or a quota or file size
    /// limit reached) as [`StorageError::Full`].
    pub fn io(op: &'static str, path: impl AsRef<Path>, source: io::Error) -> Self {
        let path = path.as_ref().to_path_buf();
        if matches!(
            source.kind(),
            io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded | io::ErrorKind::FileTooLarge
        ) {
            StorageError::Full {
                op,
                path,
                source: Arc::new(source),
            }
        } else {
            StorageError::Io {
                op,
                path,
                source: Arc::new(source),
            }
        }
    }

    /// A [`StorageError::Corrupt`] for `file` at `offset`.
    pub fn corrupt(file: impl AsRef<Path>, offset: u64, reason: impl Into<String>) -> Self {
        StorageError::Corrupt {
            file: file.as_ref().to_path_buf(),
            offset,
            reason: reason.into(),
        }
    }
}

//! The default embedded, segmented write-ahead log ([`Wal`]).
//!
//! # Why a hand-written format
//!
//! A Raft log needs exact crash semantics: "acknowledged only after fsync",
//! "a torn tail is cut back to the last good record", "corruption anywhere
//! else is an error, never skipped", suffix truncation and prefix compaction
//! that are safe at every crash point, and a fatal stop on any fsync error.
//! General-purpose embedded stores either bring far more than a log needs
//! (an LSM tree with its own WAL, compaction threads and tuning) or do not
//! document their behaviour at these edges (what is lost after a failed
//! fsync; whether a damaged record is skipped). The format here is small
//! enough to state completely and to test by crashing it, which is what the
//! rest of this page does.
//!
//! # Layout
//!
//! A data directory holds `LOCK` (an advisory lock: one `Wal` per directory)
//! and segment files `00000000000000000001.wal`, `...02.wal`, ... with
//! consecutive sequence numbers. A segment is a 16-byte header followed by
//! frames; a frame is a checksummed batch of typed records (entries, hard
//! state, truncate marker, compaction marker, segment start), encoded with
//! postcard. The byte-level format is documented in the sources,
//! `wal/record.rs` and `wal/segment.rs`.
//!
//! - Every [`sync`](crate::storage::LogStore::sync) writes **one frame**
//!   holding every record produced since the previous sync, with one
//!   `write`, then one `fdatasync`. Mutations before that are only in memory.
//! - Every segment begins with a *checkpoint* frame: the length at which the
//!   previous segment was sealed, and the hard state and compaction boundary
//!   that were durable when it was created. Replay can therefore start at any
//!   segment, and a sealed segment that lost bytes is detected even when it
//!   was cut exactly at a frame boundary.
//! - A segment is sealed when the next frame would push it past
//!   [`WalOptions::segment_size`]; the next segment is created under a
//!   temporary name with its header and checkpoint, fsynced, renamed, and the
//!   directory fsynced.
//! - **Preallocation** (on real disks): the active segment is kept ahead of
//!   its content by zeros, written in 256 KiB steps (at most the segment
//!   size), so that an append overwrites allocated blocks inside the file's
//!   size and its `fdatasync` writes no metadata. The content ends at the
//!   first zero frame header followed only by zeros (a frame's length is
//!   never zero). Sealing cuts the zeros off (fsynced) before the next
//!   segment is created, so sealed segments have no padding. Details:
//!   `wal/segment.rs`.
//!
//! # In memory
//!
//! The log keeps, per entry, a 32-byte index slot (term, frame, offset,
//! length, crc32) and reads payloads back from the files with `pread`. Terms
//! are answered from memory (the core asks for them constantly); payloads,
//! which dominate the size, stay on disk and in the page cache. A full entry
//! cache would double memory for the sake of the one reader (replication to
//! a lagging follower) that the page cache already serves well. The crc32 in
//! the slot is checked on every read, so bit rot that happens after open is
//! reported, not returned.
//!
//! # Recovery (open)
//!
//! Before the **last** segment is read, it is synced and its cached pages
//! dropped ([`VfsFile::drop_cache`](crate::storage::vfs::VfsFile::drop_cache),
//! `posix_fadvise(POSIX_FADV_DONTNEED)` on Linux): a previous process on
//! the same boot may have left frames there that never reached the disk,
//! and the open reports what it reads as durable (entries the node
//! acknowledges again without a write, a vote it grants again: Raft §5.2,
//! §5.3). Frames a killed process left dirty in the page cache are made
//! durable by the sync; frames whose `fdatasync` failed, which Linux keeps
//! cached but marks clean (never written, not even by a later sync), are
//! dropped, so the scan reads what the device holds.
//!
//! Only the last segment can hold either, so an open syncs that one file
//! (and the directory and its parent), never the sealed segments: each
//! fsync is a device cache flush on ext4 and XFS even for a clean file.
//! The invariant: *every byte of a sealed segment was made durable by a
//! successful sync before the next segment was created.* It holds on every
//! path that seals: a roll-over happens only inside a `sync` of a log that
//! has not failed, every earlier frame of the active segment was synced by
//! the `sync` that wrote it (a failed one fails the log: nothing is written
//! or rolled over after it), the segment's birth (header and checkpoint)
//! and an open's torn-tail repair and checkpoint frame are synced before
//! they return, and sealing syncs its cut of the preallocated zeros before
//! the next segment is created. A crash or a failure mid-roll leaves the
//! segment being sealed the last one (the next one never renamed into
//! place, or renamed whole: its own content was synced before its rename),
//! which the next open syncs. (Test:
//! `wal::open_cost_tests::an_open_syncs_the_last_segment_only`.) A sealed
//! segment written by a release before stop 56 on the same boot, after a
//! kill, then reopened without a sync and rolled over by that release, is
//! not covered. The remaining gap: `POSIX_FADV_DONTNEED` is best effort
//! and keeps clean pages that are mapped, locked or in use by another
//! reader (a backup reading the data directory); tmpfs, FUSE and network
//! file systems ignore it; a custom `Vfs` whose files do not implement
//! `drop_cache` does nothing; systems other than Linux and Android do not
//! call it. There, restart a node whose fsync failed only after a reboot
//! or after dropping the page cache.
//!
//! Segments are scanned oldest first; every frame is checked (header checksum
//! over the length, payload checksum) and replayed. In the **last** segment a
//! header that fails with only zeros from it to the end of the file is the
//! end of the content (the preallocated zeros). A frame that is incomplete,
//! or fails its payload checksum while only zeros follow it, or whose header
//! fails while only zeros follow the header (a write torn inside the
//! header, over zeros), is the *torn tail* of an interrupted write: its
//! bytes are overwritten with zeros (the file keeps its size) and fsynced.
//! Any other failure — in an earlier segment, or followed by more data — is
//! [`StorageError::Corrupt`](crate::storage::StorageError) naming the file
//! and the frame's offset, and the log refuses to open.
//! After replay every entry between the first and last index must be present;
//! a missing one (a removed or lost segment) is also `Corrupt`, as are a gap
//! in the segment sequence numbers and a sealed segment whose length differs
//! from the one recorded when it was sealed.
//!
//! # Crash safety, point by point
//!
//! The invariant: *the files always describe the state at the end of some
//! `sync` call, and never one older than the last `sync` that returned `Ok`.*
//!
//! - **Append / hard state.** Before `sync`: only memory changed; a crash
//!   loses them, and nobody was told they were durable. During the frame's
//!   `write` or before its `fdatasync` completes: the frame is wholly present
//!   (replayed) or torn (cut off); either is the end of a sync. After
//!   `fdatasync`: durable, and only then is `Ok` returned.
//! - **Suffix truncation** (explicit, or implied by an overwriting append) is
//!   a `Truncate` record in the same frame as whatever follows it. Since the
//!   frame is atomic, the log never shows the truncation without the new
//!   entries, nor the new entries on top of the old suffix.
//! - **Prefix compaction** is a `Compact` record (preceded by a `Truncate` of
//!   everything if the log conflicts with the snapshot, so replay never has
//!   to judge). Only after the frame holding it is fsynced are old segments
//!   removed — oldest first, only sealed ones whose highest entry is covered,
//!   with a directory fsync after each removal. A crash before a removal is
//!   durable leaves an old segment that replay reads and the `Compact` record
//!   discards again; removal in order keeps the surviving sequence numbers
//!   consecutive (a gap is reported as corruption). The hard state and the
//!   boundary in removed segments are superseded by the checkpoint frame of
//!   every later segment.
//! - **Segment roll-over.** The new segment is complete before it is visible
//!   (temporary name, fsync, rename, directory fsync); a leftover temporary
//!   file is deleted on open. The frame that prompted the roll-over is written
//!   to the new segment only after that.
//! - **Torn-tail repair** at open zeroes the torn bytes and fsyncs them
//!   before anything new is appended, so neither a later crash nor a later,
//!   shorter frame can leave torn bytes between good frames (test:
//!   `wal_crash::a_torn_frame_in_the_preallocated_zeros_is_zeroed`).
//! - **Preallocation steps** are written together with the frame that needs
//!   them (one `write`, one `fdatasync`): torn, they are the torn tail
//!   above. Sealing cuts the zeros and fsyncs the segment before the next
//!   segment exists, so a sealed segment never has a zero tail.
//!
//! # Failures
//!
//! An error from `write`, `fdatasync`, a rename, a removal or a directory
//! fsync is fatal: the `Wal` records it and refuses every later call with
//! [`StorageError::Failed`](crate::storage::StorageError::Failed). It never
//! retries: after a failed fsync the kernel may have dropped the dirty pages
//! and cleared the error, so a retry that "succeeds" proves nothing. A full
//! disk surfaces as [`StorageError::Full`](crate::storage::StorageError::Full)
//! and is fatal the same way; whatever part of a frame reached the disk is a
//! torn tail that the next open removes, so nothing durable is damaged.

#[cfg(test)]
mod bound_tests;
#[cfg(test)]
mod damage_tests;
#[cfg(test)]
mod hand_written;
mod log;
#[cfg(test)]
mod open_cost_tests;
mod record;
#[cfg(test)]
mod roll_failure_tests;
mod segment;

pub use log::{Wal, WalOptions};

//! The write-ahead log itself: [`Wal`], a [`LogStore`] over segment files.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};

use tracing::{debug, error, info};

use super::record::{
    FRAME_HEADER_LEN, FrameBuf, MAX_FRAME_LEN, Record, RecordRef, decode_record, split_records,
};
use super::segment::{Segment, parse_segment_name, segment_name};
use crate::core::inbound::MAX_INDEX;
use crate::core::types::{Entry, HardState, Index, Term};
use crate::storage::vfs::{
    self, SharedFs, Vfs, VfsLock, create_dir_durable, sync_dir, sync_dir_and_parent,
};
use crate::storage::{LogStore, StorageError, validate_append, validate_range};

/// The name of the lock file in a WAL directory.
const LOCK_FILE: &str = "LOCK";

/// Options for [`Wal::open`].
#[derive(Clone, Debug)]
pub struct WalOptions {
    /// The size at which the active segment is sealed and a new one started.
    /// A segment exceeds it by at most one frame (a frame never spans two
    /// segments). Default: 64 MiB.
    pub segment_size: u64,
}

impl Default for WalOptions {
    fn default() -> Self {
        WalOptions {
            segment_size: 64 << 20,
        }
    }
}

/// Where a frame lives.
#[derive(Clone, Copy, Debug)]
struct FrameLoc {
    seg: u64,
    offset: u64,
}

/// The in-memory index entry of one log entry: its term (so that `term()`
/// never touches the disk) and where its record lives.
#[derive(Clone, Copy, Debug)]
struct Slot {
    term: Term,
    /// The frame number ([`Wal::frames`]), or [`MISSING`] during replay.
    frame: u64,
    /// Offset of the record's bytes from the start of the frame.
    off: u32,
    len: u32,
    /// crc32 of the record's bytes, checked on every read.
    crc: u32,
}

/// Marks a slot whose entry lives in a segment that was removed; legal only
/// transiently during replay (a later compaction record must cover it).
const MISSING: u64 = u64::MAX;

/// At most this many entries missing in a row after replayed entries are
/// held as placeholders during replay (to be reported as lost below, unless
/// a later truncation drops them); a record further ahead is corruption at
/// once. A gap before any replayed entry is not bounded: it is held as one
/// range ([`Wal::replay_hole`]), since compaction removes whole segments,
/// oldest first, and the checkpoint of the first segment left records the
/// boundary of when it was created, however many entries the removed
/// segments held past it.
const MAX_REPLAY_GAP: usize = 1 << 20;

/// The default embedded write-ahead log: a [`LogStore`] over a directory of
/// segment files.
///
/// See the [module documentation](super) for the format and the
/// crash-safety argument.
#[derive(Debug)]
pub struct Wal {
    dir: PathBuf,
    opts: WalOptions,
    fs: SharedFs,
    _lock: Box<dyn VfsLock>,
    /// Ascending sequence numbers, consecutive; the back one is active.
    segments: VecDeque<Segment>,
    /// `frames[i]` is frame number `frame_base + i`.
    frames: VecDeque<FrameLoc>,
    frame_base: u64,
    /// Records since the last sync; written as one frame by `sync`.
    pending: FrameBuf,
    pending_max_entry: Index,
    pending_compact: bool,
    first: Index,
    boundary_term: Term,
    slots: VecDeque<Slot>,
    /// During replay only: the first index of entries missing before every
    /// replayed entry (`replay_hole..first`), which a later compaction
    /// record must cover. A segment's checkpoint records the compaction
    /// boundary of when the segment was created; segments removed since
    /// held the entries between it and this segment's first entry, and the
    /// compaction record that let them go comes later in the log.
    replay_hole: Option<Index>,
    hard_state: HardState,
    /// The hard state and boundary as of the last successful sync: what a new
    /// segment's checkpoint frame records.
    durable_hard_state: HardState,
    durable_boundary: (Index, Term),
    failed: Option<String>,
}

impl Wal {
    /// Opens (or creates) the log in `dir`.
    ///
    /// Scans every segment and verifies every checksum. A torn tail of the
    /// last segment is cut off; any other damage fails with
    /// [`StorageError::Corrupt`] naming the file and offset. Fails with
    /// [`StorageError::Locked`] if another `Wal` holds the directory (an
    /// advisory `flock` on `LOCK`; note that a child process forked while the
    /// log is open shares that lock until it `exec`s).
    pub fn open(dir: impl AsRef<Path>, opts: WalOptions) -> Result<Wal, StorageError> {
        Self::open_in(vfs::real(), dir, opts)
    }

    /// [`Wal::open`] on the file system `fs` (see [`crate::storage::vfs`]).
    pub fn open_in(
        fs: SharedFs,
        dir: impl AsRef<Path>,
        opts: WalOptions,
    ) -> Result<Wal, StorageError> {
        Self::open_or_refuse(fs, dir.as_ref(), opts, None)
    }

    /// [`Wal::open_in`] on a log that must exist: a directory holding no
    /// segment fails with [`StorageError::Corrupt`] naming it, saying
    /// `why` the log must exist, and nothing is created in it (an empty
    /// segment created there would let the next open take the lost log
    /// for a new one).
    pub(crate) fn open_existing_in(
        fs: SharedFs,
        dir: &Path,
        opts: WalOptions,
        why: &str,
    ) -> Result<Wal, StorageError> {
        Self::open_or_refuse(fs, dir, opts, Some(why))
    }

    /// Opens the log in `dir`; with `refuse_missing`, fails instead of
    /// creating a new log when `dir` holds no segment.
    fn open_or_refuse(
        fs: SharedFs,
        dir: &Path,
        opts: WalOptions,
        refuse_missing: Option<&str>,
    ) -> Result<Wal, StorageError> {
        let dir = dir.to_path_buf();
        create_dir_durable(&*fs, &dir)?;
        let lock = lock_dir(&*fs, &dir)?;

        let mut seqs = Vec::new();
        let listing = fs
            .list_dir(&dir)
            .map_err(|e| StorageError::io("list directory", &dir, e))?;
        for name in listing {
            if let Some(seq) = parse_segment_name(&name) {
                seqs.push(seq);
            } else if name.ends_with(".wal.tmp") {
                // A segment that was never renamed into place: never born.
                let path = dir.join(&name);
                fs.remove_file(&path)
                    .map_err(|e| StorageError::io("remove", &path, e))?;
            }
        }
        // Whatever this open found or removed: a segment renamed into place
        // by a process that stopped before its directory fsync is written on
        // (and acknowledged) only once its entry is durable.
        sync_dir_and_parent(&*fs, &dir)?;
        seqs.sort_unstable();
        for pair in seqs.windows(2) {
            if pair[1] != pair[0] + 1 {
                return Err(StorageError::corrupt(
                    dir.join(segment_name(pair[0] + 1)),
                    0,
                    format!(
                        "segment missing between {} and {}",
                        segment_name(pair[0]),
                        segment_name(pair[1])
                    ),
                ));
            }
        }

        let mut wal = Wal {
            dir,
            opts,
            fs,
            _lock: lock,
            segments: VecDeque::new(),
            frames: VecDeque::new(),
            frame_base: 0,
            pending: FrameBuf::new(),
            pending_max_entry: 0,
            pending_compact: false,
            first: 1,
            boundary_term: 0,
            slots: VecDeque::new(),
            replay_hole: None,
            hard_state: HardState::default(),
            durable_hard_state: HardState::default(),
            durable_boundary: (0, 0),
            failed: None,
        };

        if let (true, Some(why)) = (seqs.is_empty(), refuse_missing) {
            error!(dir = %wal.dir.display(), why, "the write-ahead log is missing");
            return Err(StorageError::corrupt(
                &wal.dir,
                0,
                format!(
                    "the write-ahead log is missing (the directory holds no segment) but {why}: \
                     its entries, term and vote are lost, and starting afresh could make this \
                     node vote twice in a term (Raft §5.2) or forget writes it acknowledged; \
                     restore the log from the same backup as the rest of the data directory, \
                     or remove the data directory and add the node back as a new member"
                ),
            ));
        }
        if seqs.is_empty() {
            let checkpoint = wal.checkpoint_frame();
            let step = Segment::step_for(&*wal.fs, wal.opts.segment_size);
            let seg = Segment::create(&*wal.fs, &wal.dir, 1, &checkpoint, step)?;
            debug!(file = %seg.path.display(), "created the first wal segment");
            // Checkpoint frames hold no entries: they need no frame number.
            wal.segments.push_back(seg);
        } else {
            let count = seqs.len();
            for (i, seq) in seqs.into_iter().enumerate() {
                let step = Segment::step_for(&*wal.fs, wal.opts.segment_size);
                let last = i + 1 == count;
                let path = wal.dir.join(segment_name(seq));
                let mut seg = Segment::open(&*wal.fs, path, seq, step, last)?;
                let mut max_entry = 0;
                let prev = wal.segments.back().map(|p| (p.path.clone(), p.len));
                seg.scan(last, |offset, payload| {
                    wal.replay_frame(
                        &seg_path(&wal.dir, seq),
                        seq,
                        offset,
                        payload,
                        &mut max_entry,
                        prev.as_ref(),
                    )
                })?;
                seg.max_entry = max_entry;
                wal.segments.push_back(seg);
            }
            if let Some(missing) = wal.replay_hole.take() {
                return Err(StorageError::corrupt(
                    &wal.dir,
                    0,
                    format!(
                        "entry {missing} is missing: a segment holding it was removed or lost (no compaction record covers entries {missing}..{})",
                        wal.first
                    ),
                ));
            }
            if let Some(i) = wal.slots.iter().position(|s| s.frame == MISSING) {
                return Err(StorageError::corrupt(
                    &wal.dir,
                    0,
                    format!(
                        "entry {} is missing: a segment holding it was removed or lost",
                        wal.first + i as Index
                    ),
                ));
            }
            // The last segment was synced and its cache dropped before the
            // scan (`Segment::open`), and a repair syncs what it writes:
            // what the scan reported is on the device. The sealed ones need
            // no sync (module docs of `wal`, "Recovery": each was synced
            // whole before the next one was created), and the directory
            // and its parent were synced above.
            wal.durable_hard_state = wal.hard_state;
            wal.durable_boundary = (wal.first - 1, wal.boundary_term);
            // Every segment must open with a checkpoint frame (so that older
            // segments can be removed); restore it if the torn tail took it.
            if let Some(mut active) = wal.segments.pop_back() {
                if active.len == super::segment::SEGMENT_HEADER_LEN {
                    // Built while `active` is out of the list, so that it
                    // records the length of the segment before it.
                    let checkpoint = wal.checkpoint_frame();
                    active.append(&checkpoint)?;
                    active.sync()?;
                    active.base_len = active.len;
                }
                wal.segments.push_back(active);
            }
        }
        info!(
            dir = %wal.dir.display(),
            segments = wal.segments.len(),
            first_index = wal.first,
            last_index = wal.last(),
            term = wal.hard_state.term,
            "opened write-ahead log"
        );
        Ok(wal)
    }

    /// The directory holding the segments.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The paths of the segment files, oldest first.
    pub fn segment_paths(&self) -> Vec<PathBuf> {
        self.segments.iter().map(|s| s.path.clone()).collect()
    }

    fn last(&self) -> Index {
        self.first + self.slots.len() as Index - 1
    }

    fn term_at(&self, index: Index) -> Option<Term> {
        if index + 1 == self.first {
            Some(self.boundary_term)
        } else if index >= self.first && index <= self.last() {
            Some(self.slots[(index - self.first) as usize].term)
        } else {
            None
        }
    }

    fn pending_frame_no(&self) -> u64 {
        self.frame_base + self.frames.len() as u64
    }

    fn check(&self) -> Result<(), StorageError> {
        match &self.failed {
            Some(cause) => Err(StorageError::Failed {
                cause: cause.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Records a fatal error: the store refuses any further use.
    fn fail(&mut self, e: StorageError) -> StorageError {
        error!(dir = %self.dir.display(), error = %e, "write-ahead log failed; refusing further use");
        self.failed = Some(e.to_string());
        e
    }

    /// The first frame of a new segment: the durable hard state and
    /// compaction boundary, so that replay can start at that segment.
    fn checkpoint_frame(&self) -> Vec<u8> {
        let mut f = FrameBuf::new();
        f.push(&RecordRef::SegmentStart {
            prev_len: self.segments.back().map_or(0, |s| s.len),
        });
        f.push(&RecordRef::HardState(&self.durable_hard_state));
        f.push(&RecordRef::Compact {
            upto: self.durable_boundary.0,
            term: self.durable_boundary.1,
        });
        f.finish().to_vec()
    }

    /// Applies one verified frame read during open.
    fn replay_frame(
        &mut self,
        path: &Path,
        seq: u64,
        offset: u64,
        payload: &[u8],
        max_entry: &mut Index,
        prev: Option<&(PathBuf, u64)>,
    ) -> Result<(), StorageError> {
        let frame = self.pending_frame_no();
        self.frames.push_back(FrameLoc { seg: seq, offset });
        let records = split_records(payload).map_err(|r| StorageError::corrupt(path, offset, r))?;
        for raw in records {
            let rec =
                decode_record(raw.bytes).map_err(|r| StorageError::corrupt(path, offset, r))?;
            match rec {
                Record::Entry(e) => {
                    if e.index < self.first {
                        return Err(StorageError::corrupt(
                            path,
                            offset,
                            format!("entry {} below the first index {}", e.index, self.first),
                        ));
                    }
                    if e.index > MAX_INDEX {
                        return Err(StorageError::corrupt(
                            path,
                            offset,
                            format!("entry at index {}, past any log", e.index),
                        ));
                    }
                    if self.slots.is_empty() && e.index > self.first {
                        // Entries missing before every replayed one: one
                        // range, for a later compaction record to cover.
                        self.replay_hole.get_or_insert(self.first);
                        self.first = e.index;
                    }
                    let pos = (e.index - self.first) as usize;
                    if pos > self.slots.len().saturating_add(MAX_REPLAY_GAP) {
                        // Only a lost segment leaves entries missing (and the
                        // open fails over it below); so many of them, only
                        // garbage: no placeholder per missing entry.
                        return Err(StorageError::corrupt(
                            path,
                            offset,
                            format!(
                                "entry {} is missing: entry {} comes after it",
                                self.last().wrapping_add(1),
                                e.index
                            ),
                        ));
                    }
                    self.slots.truncate(pos);
                    while self.slots.len() < pos {
                        self.slots.push_back(Slot {
                            term: 0,
                            frame: MISSING,
                            off: 0,
                            len: 0,
                            crc: 0,
                        });
                    }
                    self.slots.push_back(Slot {
                        term: e.term,
                        frame,
                        off: (FRAME_HEADER_LEN + raw.off) as u32,
                        len: raw.bytes.len() as u32,
                        crc: crc32fast::hash(raw.bytes),
                    });
                    *max_entry = (*max_entry).max(e.index);
                }
                Record::HardState(hs) => self.hard_state = hs,
                Record::Truncate { from } => {
                    if from < self.replay_hole.unwrap_or(self.first) {
                        return Err(StorageError::corrupt(
                            path,
                            offset,
                            format!(
                                "truncation from {from} below the first index {}",
                                self.first
                            ),
                        ));
                    }
                    match self.replay_hole {
                        // Into the missing range: what follows it is gone.
                        Some(missing) if from < self.first => {
                            self.slots.clear();
                            self.first = from;
                            if from <= missing {
                                self.replay_hole = None;
                            }
                        }
                        _ => self.slots.truncate((from - self.first) as usize),
                    }
                }
                Record::Compact { upto, term } => {
                    if upto > MAX_INDEX {
                        return Err(StorageError::corrupt(
                            path,
                            offset,
                            format!("compaction to index {upto}, past any log"),
                        ));
                    }
                    self.apply_compact(upto, term)
                }
                Record::SegmentStart { prev_len } => {
                    if let Some((prev_path, actual)) = prev
                        && *actual != prev_len
                    {
                        return Err(StorageError::corrupt(
                            prev_path,
                            (*actual).min(prev_len),
                            format!(
                                "segment is {actual} bytes long but was sealed at {prev_len} bytes"
                            ),
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    fn apply_compact(&mut self, upto: Index, term: Term) {
        if let Some(missing) = self.replay_hole
            && upto >= missing
        {
            // Covers the missing range, or its front.
            if upto + 1 >= self.first {
                self.replay_hole = None;
            } else {
                self.replay_hole = Some(upto + 1);
            }
            self.boundary_term = term;
        }
        if upto < self.first {
            return;
        }
        let drop = ((upto + 1 - self.first) as usize).min(self.slots.len());
        self.slots.drain(..drop);
        self.first = upto + 1;
        self.boundary_term = term;
    }

    /// Seals the active segment and starts the next one.
    fn roll_over(&mut self) -> Result<(), StorageError> {
        if let Some(active) = self.segments.back_mut() {
            active.seal()?;
        }
        let seq = self.segments.back().map_or(1, |s| s.seq + 1);
        let checkpoint = self.checkpoint_frame();
        let step = Segment::step_for(&*self.fs, self.opts.segment_size);
        let seg = Segment::create(&*self.fs, &self.dir, seq, &checkpoint, step)?;
        debug!(file = %seg.path.display(), "started a new wal segment");
        // The checkpoint frame holds no entries: it needs no frame number.
        self.segments.push_back(seg);
        Ok(())
    }

    /// Removes sealed segments holding only compacted entries, oldest first,
    /// fsyncing the directory after each removal so that the surviving
    /// segments always have consecutive sequence numbers.
    fn remove_compacted_segments(&mut self) -> Result<(), StorageError> {
        let boundary = self.durable_boundary.0;
        while self.segments.len() > 1 {
            let Some(oldest) = self.segments.front() else {
                break;
            };
            if oldest.max_entry > boundary {
                break;
            }
            let (seq, path) = (oldest.seq, oldest.path.clone());
            self.fs
                .remove_file(&path)
                .map_err(|e| StorageError::io("remove segment", &path, e))?;
            sync_dir(&*self.fs, &self.dir)?;
            self.segments.pop_front();
            while self.frames.front().is_some_and(|f| f.seg == seq) {
                self.frames.pop_front();
                self.frame_base += 1;
            }
            info!(file = %path.display(), compacted_upto = boundary, "removed a compacted wal segment");
        }
        Ok(())
    }

    fn sync_inner(&mut self) -> Result<(), StorageError> {
        let frame_len = self.pending.len() as u64;
        let needs_new_segment = self.segments.back().is_none_or(|active| {
            active.len > active.base_len && active.len + frame_len > self.opts.segment_size
        });
        if needs_new_segment {
            self.roll_over()?;
        }
        let frame_no = self.pending_frame_no();
        let Some(active) = self.segments.back_mut() else {
            return Err(StorageError::Closed);
        };
        let offset = active.append(self.pending.finish())?;
        active.sync()?;
        active.max_entry = active.max_entry.max(self.pending_max_entry);
        let seg = active.seq;
        debug_assert_eq!(frame_no, self.frame_base + self.frames.len() as u64);
        self.frames.push_back(FrameLoc { seg, offset });
        self.pending.clear();
        self.pending_max_entry = 0;
        self.durable_hard_state = self.hard_state;
        self.durable_boundary = (self.first - 1, self.boundary_term);
        if std::mem::take(&mut self.pending_compact) {
            self.remove_compacted_segments()?;
        }
        Ok(())
    }

    /// Reads and decodes the entries `lo..hi` (already validated).
    fn read_entries(&self, lo: Index, hi: Index) -> Result<Vec<Entry>, StorageError> {
        let mut out = Vec::with_capacity((hi - lo) as usize);
        let pending_no = self.pending_frame_no();
        let mut i = lo;
        while i < hi {
            let head = self.slots[(i - self.first) as usize];
            let mut j = i + 1;
            while j < hi && self.slots[(j - self.first) as usize].frame == head.frame {
                j += 1;
            }
            let tail = self.slots[(j - 1 - self.first) as usize];
            let span_start = head.off;
            let span_end = tail.off + tail.len;
            let owned;
            let (bytes, file, base): (&[u8], PathBuf, u64) = if head.frame == pending_no {
                (
                    self.pending.record_bytes(span_start, span_end - span_start),
                    self.dir.clone(),
                    0,
                )
            } else {
                let loc = self
                    .frames
                    .get(head.frame.wrapping_sub(self.frame_base) as usize)
                    .copied()
                    .ok_or_else(|| {
                        StorageError::corrupt(&self.dir, 0, format!("entry {i}: frame not indexed"))
                    })?;
                let seg = self
                    .segments
                    .iter()
                    .find(|s| s.seq == loc.seg)
                    .ok_or_else(|| {
                        StorageError::corrupt(&self.dir, 0, format!("entry {i}: segment gone"))
                    })?;
                let mut buf = vec![0u8; (span_end - span_start) as usize];
                let at = loc.offset + span_start as u64;
                seg.read_at(&mut buf, at)?;
                owned = buf;
                (&owned[..], seg.path.clone(), at)
            };
            for index in i..j {
                let slot = self.slots[(index - self.first) as usize];
                let rel = slot.off.checked_sub(span_start).unwrap_or(u32::MAX) as usize;
                let at = base + rel as u64;
                let rec = bytes
                    .get(rel..rel.saturating_add(slot.len as usize))
                    .ok_or_else(|| StorageError::corrupt(&file, at, "record outside its frame"))?;
                if crc32fast::hash(rec) != slot.crc {
                    return Err(StorageError::corrupt(
                        &file,
                        at,
                        format!("entry {index}: checksum mismatch on read"),
                    ));
                }
                match decode_record(rec).map_err(|r| StorageError::corrupt(&file, at, r))? {
                    Record::Entry(e) if e.index == index && e.term == slot.term => out.push(e),
                    other => {
                        return Err(StorageError::corrupt(
                            &file,
                            at,
                            format!("expected entry {index}, found {other:?}"),
                        ));
                    }
                }
            }
            i = j;
        }
        Ok(out)
    }
}

fn seg_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(segment_name(seq))
}

fn lock_dir(fs: &dyn Vfs, dir: &Path) -> Result<Box<dyn VfsLock>, StorageError> {
    let path = dir.join(LOCK_FILE);
    match fs.lock(&path) {
        Ok(lock) => Ok(lock),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Err(StorageError::Locked { path }),
        Err(e) => Err(StorageError::io("lock", &path, e)),
    }
}

impl LogStore for Wal {
    fn append(&mut self, entries: &[Entry]) -> Result<(), StorageError> {
        self.check()?;
        validate_append(entries, self.first, self.last(), |i| self.term_at(i))?;
        let Some(head) = entries.first() else {
            return Ok(());
        };
        if let Some(tail) = entries.last().filter(|e| e.index > MAX_INDEX) {
            return Err(StorageError::Invalid(format!(
                "entry at index {} is past the last usable index {MAX_INDEX}",
                tail.index
            )));
        }
        // A frame is at most MAX_FRAME_LEN bytes: refuse (harmlessly) an
        // append that could overflow the unsynced frame. The estimate is
        // generous: postcard's varints never exceed twice `approx_size`.
        let estimate: usize = entries.iter().map(|e| 2 * e.approx_size() + 64).sum();
        if self.pending.len().saturating_add(estimate) > MAX_FRAME_LEN as usize {
            return Err(StorageError::Invalid(format!(
                "{} bytes are waiting for sync; sync before appending {} more",
                self.pending.len(),
                estimate
            )));
        }
        if head.index <= self.last() {
            let from = head.index;
            self.pending.push(&RecordRef::Truncate { from });
            self.slots.truncate((from - self.first) as usize);
        }
        let frame = self.pending_frame_no();
        for e in entries {
            let pos = self.pending.push(&RecordRef::Entry(e));
            self.slots.push_back(Slot {
                term: e.term,
                frame,
                off: pos.off,
                len: pos.len,
                crc: pos.crc,
            });
        }
        self.pending_max_entry = self.pending_max_entry.max(self.last());
        Ok(())
    }

    fn truncate_suffix(&mut self, from: Index) -> Result<(), StorageError> {
        self.check()?;
        if from < self.first {
            return Err(StorageError::Compacted {
                index: from,
                first: self.first,
            });
        }
        if from <= self.last() {
            self.pending.push(&RecordRef::Truncate { from });
            self.slots.truncate((from - self.first) as usize);
        }
        Ok(())
    }

    fn compact_prefix(&mut self, upto: Index, term: Term) -> Result<(), StorageError> {
        self.check()?;
        if upto > MAX_INDEX {
            return Err(StorageError::Invalid(format!(
                "compaction to index {upto} is past the last usable index {MAX_INDEX}"
            )));
        }
        if upto < self.first {
            return Ok(());
        }
        if self.term_at(upto).is_some_and(|t| t != term) && !self.slots.is_empty() {
            // The log conflicts with the snapshot: discard all of it, and say
            // so explicitly so that replay never has to judge terms.
            let from = self.first;
            self.pending.push(&RecordRef::Truncate { from });
            self.slots.clear();
        }
        self.pending.push(&RecordRef::Compact { upto, term });
        self.apply_compact(upto, term);
        self.pending_compact = true;
        Ok(())
    }

    fn entries(&self, lo: Index, hi: Index) -> Result<Vec<Entry>, StorageError> {
        self.check()?;
        validate_range(lo, hi, self.first, self.last())?;
        self.read_entries(lo, hi)
    }

    fn term(&self, index: Index) -> Result<Option<Term>, StorageError> {
        self.check()?;
        Ok(self.term_at(index))
    }

    fn first_index(&self) -> Index {
        self.first
    }

    fn last_index(&self) -> Index {
        self.last()
    }

    fn save_hard_state(&mut self, hs: HardState) -> Result<(), StorageError> {
        self.check()?;
        if hs != self.hard_state {
            self.pending.push(&RecordRef::HardState(&hs));
            self.hard_state = hs;
        }
        Ok(())
    }

    fn hard_state(&self) -> HardState {
        self.hard_state
    }

    fn sync(&mut self) -> Result<(), StorageError> {
        self.check()?;
        if self.pending.is_empty() {
            return Ok(());
        }
        self.sync_inner().map_err(|e| self.fail(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::types::Payload;

    fn cmd(index: Index) -> Entry {
        Entry {
            term: 1,
            index,
            payload: Payload::Command(vec![index as u8; 8].into()),
        }
    }

    /// A log of entries 1..=3, then one more frame holding `record`, with a
    /// valid checksum (a buggy or foreign writer, not a torn write), opened
    /// again.
    fn reopened_after(record: RecordRef<'_>) -> Result<Wal, StorageError> {
        let mut frame = FrameBuf::new();
        frame.push(&record);
        reopened_with(frame.finish().to_vec())
    }

    /// A log of entries 1..=3, then the bytes `tail` at the end of its
    /// content, opened again.
    fn reopened_with(tail: Vec<u8>) -> Result<Wal, StorageError> {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("wal");
        let mut wal = Wal::open(&path, WalOptions::default()).expect("open");
        wal.append(&[cmd(1), cmd(2), cmd(3)]).expect("append");
        wal.sync().expect("sync");
        drop(wal);
        super::super::hand_written::write_after_frames(&path.join(segment_name(1)), &tail);
        let r = Wal::open(&path, WalOptions::default());
        drop(dir);
        r
    }

    /// Found by review (stop 41): records whose checksum holds but whose
    /// values cannot be (a compaction to the last index there is, an entry
    /// a trillion places past the log) overflowed in replay or made it
    /// allocate a placeholder per missing entry. They are corruption, said
    /// as such, like any other.
    #[test]
    fn a_record_with_impossible_indexes_is_corruption_not_a_panic() {
        let compact = reopened_after(RecordRef::Compact {
            upto: Index::MAX,
            term: 1,
        });
        assert!(
            matches!(compact, Err(StorageError::Corrupt { .. })),
            "{:?}",
            compact.map(|w| w.last_index())
        );
        let far = cmd(1 << 40);
        let entry = reopened_after(RecordRef::Entry(&far));
        assert!(
            matches!(entry, Err(StorageError::Corrupt { .. })),
            "{:?}",
            entry.map(|w| w.last_index())
        );
    }

    /// Found by audit (stop 52): the core takes an entry or a snapshot at
    /// index [`MAX_INDEX`] itself (it drops only indexes past it), but
    /// replay called both corrupt, so a snapshot at 2^62 from any holder of
    /// a node certificate (to a node outside a lease) left a data directory
    /// that never opened again. Replay now uses the core's comparison: the
    /// bound itself is taken, one past it is corruption.
    ///
    /// [`MAX_INDEX`]: crate::core::inbound::MAX_INDEX
    #[test]
    fn indexes_up_to_the_cores_bound_replay_and_one_past_it_is_corruption() {
        use crate::core::inbound::MAX_INDEX;
        for upto in [MAX_INDEX - 1, MAX_INDEX] {
            let dir = tempfile::tempdir().expect("tempdir");
            let mut wal = Wal::open(dir.path(), WalOptions::default()).expect("open");
            wal.compact_prefix(upto, 2).expect("compact");
            wal.sync().expect("sync");
            drop(wal);
            let wal = Wal::open(dir.path(), WalOptions::default());
            assert_eq!(
                wal.as_ref().map(|w| w.first_index()).ok(),
                Some(upto + 1),
                "a compaction to {upto}: {:?}",
                wal.err()
            );
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let mut wal = Wal::open(dir.path(), WalOptions::default()).expect("open");
        wal.compact_prefix(MAX_INDEX - 2, 1).expect("compact");
        wal.append(&[cmd(MAX_INDEX - 1), cmd(MAX_INDEX)])
            .expect("append");
        wal.sync().expect("sync");
        drop(wal);
        let wal = Wal::open(dir.path(), WalOptions::default());
        assert_eq!(
            wal.as_ref().map(|w| (w.first_index(), w.last_index())).ok(),
            Some((MAX_INDEX - 1, MAX_INDEX)),
            "entries up to {MAX_INDEX}: {:?}",
            wal.err()
        );
        let compact = reopened_after(RecordRef::Compact {
            upto: MAX_INDEX + 1,
            term: 1,
        });
        assert!(
            matches!(compact, Err(StorageError::Corrupt { .. })),
            "{:?}",
            compact.map(|w| w.first_index())
        );
    }

    /// Found by review (stop 52): only replay checked [`MAX_INDEX`], so a
    /// WAL took an entry or a compaction past it and never opened again.
    /// The write side now refuses them with `Invalid` (not fatal: the store
    /// still works), so write and replay share one comparison.
    ///
    /// [`MAX_INDEX`]: crate::core::inbound::MAX_INDEX
    #[test]
    fn writes_past_the_cores_bound_are_refused_and_the_wal_reopens() {
        use crate::core::inbound::MAX_INDEX;
        // An on-disk bound: lowering it would make existing data corrupt.
        assert_eq!(MAX_INDEX, 1 << 62);
        let dir = tempfile::tempdir().expect("tempdir");
        let mut wal = Wal::open(dir.path(), WalOptions::default()).expect("open");
        wal.compact_prefix(MAX_INDEX, 1).expect("compact");
        let append = wal.append(&[cmd(MAX_INDEX + 1)]);
        assert!(
            matches!(append, Err(StorageError::Invalid(_))),
            "append past the bound: {append:?}"
        );
        let compact = wal.compact_prefix(MAX_INDEX + 1, 1);
        assert!(
            matches!(compact, Err(StorageError::Invalid(_))),
            "compaction past the bound: {compact:?}"
        );
        wal.sync().expect("sync");
        drop(wal);
        let wal = Wal::open(dir.path(), WalOptions::default());
        assert_eq!(
            wal.as_ref().map(|w| (w.first_index(), w.last_index())).ok(),
            Some((MAX_INDEX + 1, MAX_INDEX)),
            "reopen: {:?}",
            wal.err()
        );
    }

    /// A frame of entry 4 larger than a disk sector.
    fn big_frame(index: Index) -> Vec<u8> {
        let big = Entry {
            term: 1,
            index,
            payload: Payload::Command(vec![7u8; 10_000].into()),
        };
        let mut frame = FrameBuf::new();
        frame.push(&RecordRef::Entry(&big));
        frame.finish().to_vec()
    }

    /// Found by review (stop 42): a write torn so that its header sector
    /// never reached the disk while later sectors of its payload did (a
    /// disk writes sectors in any order) was refused as corruption, and the
    /// node could not restart. In the last segment, with no frame header
    /// that checks out after it, nothing from there was ever synced (a
    /// synced frame after it would have its header): a torn tail.
    #[test]
    fn a_torn_write_whose_header_sector_was_lost_is_a_torn_tail() {
        let mut frame = big_frame(4);
        frame[..FRAME_HEADER_LEN].fill(0);
        let wal = reopened_with(frame);
        assert_eq!(
            wal.as_ref().map(|w| w.last_index()).ok(),
            Some(3),
            "{:?}",
            wal.err()
        );
    }

    /// Teeth the other way: the same lost header with a whole frame after
    /// it is corruption in the middle of the log (that frame was written,
    /// so the one before it was too), never cut off as a tail.
    #[test]
    fn a_lost_header_before_a_whole_frame_is_corruption() {
        let mut tail = big_frame(4);
        tail[..FRAME_HEADER_LEN].fill(0);
        tail.extend(big_frame(5));
        let wal = reopened_with(tail);
        assert!(
            matches!(wal, Err(StorageError::Corrupt { .. })),
            "{:?}",
            wal.map(|w| w.last_index())
        );
    }
}

//! One segment file of the write-ahead log.
//!
//! ```text
//! segment := magic:[u8; 8] = "RKWAL\0\0\x01"  seq:u64le  frame*
//! ```
//!
//! A segment is named `{seq:020}.wal`; sequence numbers of the segments in a
//! directory are consecutive. A segment is born complete: it is written under
//! a temporary name (`.wal.tmp`) with its header and its first frame (a
//! checkpoint of the hard state and the compaction boundary), fsynced,
//! renamed, and the directory fsynced. The checkpoint's first record gives
//! the previous segment's length at sealing, which open checks. So a segment with a damaged header is
//! corruption, never a crash artefact, and a leftover `.wal.tmp` is a
//! segment that was never born (it is deleted on open).
//!
//! Only the last segment is ever appended to. Its tail may be torn by a crash
//! after the last fsync; [`Segment::scan`] recognises a torn tail and cuts it
//! off (see its documentation for the exact rule).

use std::path::{Path, PathBuf};

use tracing::warn;

use super::record::{FRAME_HEADER_LEN, decode_header};
use crate::core::types::Index;
use crate::storage::StorageError;
use crate::storage::vfs::{OpenMode, Vfs, VfsFile, sync_dir};

/// The magic bytes opening every segment.
pub(crate) const SEGMENT_MAGIC: [u8; 8] = *b"RKWAL\0\0\x01";
/// The size of a segment header.
pub(crate) const SEGMENT_HEADER_LEN: u64 = 16;

/// An open segment file.
#[derive(Debug)]
pub(crate) struct Segment {
    /// The sequence number (from the file name and the header).
    pub seq: u64,
    /// The file's path.
    pub path: PathBuf,
    file: Box<dyn VfsFile>,
    /// The length of the valid content: the offset where the next frame goes.
    pub len: u64,
    /// The length of the header and the first (checkpoint) frame: a segment
    /// no longer than this holds no data worth rolling over from.
    pub base_len: u64,
    /// The highest entry index written in this segment (0 if none). A
    /// non-active segment whose `max_entry` is compacted can be removed.
    pub max_entry: Index,
}

/// The file name of segment `seq`.
pub(crate) fn segment_name(seq: u64) -> String {
    format!("{seq:020}.wal")
}

/// The sequence number in a segment file name, if it is one.
pub(crate) fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".wal")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

impl Segment {
    /// Creates segment `seq` in `dir` holding `first_frame`, durably: write a
    /// temporary file, fsync it, rename it into place, fsync the directory.
    pub fn create(
        fs: &dyn Vfs,
        dir: &Path,
        seq: u64,
        first_frame: &[u8],
    ) -> Result<Segment, StorageError> {
        let path = dir.join(segment_name(seq));
        let tmp = dir.join(format!("{}.tmp", segment_name(seq)));
        let file = fs
            .open(&tmp, OpenMode::CreateTruncate)
            .map_err(|e| StorageError::io("create segment", &tmp, e))?;
        let mut head = Vec::with_capacity(SEGMENT_HEADER_LEN as usize + first_frame.len());
        head.extend_from_slice(&SEGMENT_MAGIC);
        head.extend_from_slice(&seq.to_le_bytes());
        head.extend_from_slice(first_frame);
        file.write_all_at(&head, 0)
            .map_err(|e| StorageError::io("write segment", &tmp, e))?;
        file.sync_all()
            .map_err(|e| StorageError::io("fsync segment", &tmp, e))?;
        fs.rename(&tmp, &path)
            .map_err(|e| StorageError::io("rename segment", &tmp, e))?;
        sync_dir(fs, dir)?;
        Ok(Segment {
            seq,
            path,
            file,
            len: head.len() as u64,
            base_len: head.len() as u64,
            max_entry: 0,
        })
    }

    /// Opens an existing segment and checks its header. Call
    /// [`scan`](Self::scan) next.
    pub fn open(fs: &dyn Vfs, path: PathBuf, seq: u64) -> Result<Segment, StorageError> {
        let file = fs
            .open(&path, OpenMode::Existing)
            .map_err(|e| StorageError::io("open segment", &path, e))?;
        let len = file
            .size()
            .map_err(|e| StorageError::io("stat segment", &path, e))?;
        if len < SEGMENT_HEADER_LEN {
            return Err(StorageError::corrupt(&path, 0, "segment header truncated"));
        }
        let mut header = [0u8; SEGMENT_HEADER_LEN as usize];
        file.read_exact_at(&mut header, 0)
            .map_err(|e| StorageError::io("read segment", &path, e))?;
        if header[..8] != SEGMENT_MAGIC {
            return Err(StorageError::corrupt(&path, 0, "bad segment magic"));
        }
        let mut seq_bytes = [0u8; 8];
        seq_bytes.copy_from_slice(&header[8..16]);
        let found = u64::from_le_bytes(seq_bytes);
        if found != seq {
            return Err(StorageError::corrupt(
                &path,
                8,
                format!("segment header says sequence {found}, file name says {seq}"),
            ));
        }
        Ok(Segment {
            seq,
            path,
            file,
            len,
            base_len: SEGMENT_HEADER_LEN,
            max_entry: 0,
        })
    }

    /// Reads and verifies every frame, calling `on_frame(offset, payload)` for
    /// each valid one in order.
    ///
    /// A frame that fails is *torn* (and the file is cut back to its start,
    /// fsynced, and scanning ends) only if `last` (this is the last segment)
    /// and the failure can only be an interrupted write at the very end:
    ///
    /// - fewer bytes remain than a frame header, or the header checks out but
    ///   the payload extends past the end of the file;
    /// - the header checks out, the payload fails its checksum, and nothing
    ///   but zeros follows the frame;
    /// - the header fails its checksum and everything from it to the end of
    ///   the file is zero (a filesystem that extended the file but lost the
    ///   data, as ext4 can after a power cut).
    ///
    /// Any other failure, and any failure in a segment that is not the last,
    /// is [`StorageError::Corrupt`] naming this file and the frame's offset.
    pub fn scan(
        &mut self,
        last: bool,
        mut on_frame: impl FnMut(u64, &[u8]) -> Result<(), StorageError>,
    ) -> Result<(), StorageError> {
        let file_len = self.len;
        let mut pos = SEGMENT_HEADER_LEN;
        let mut first = true;
        while pos < file_len {
            let remaining = file_len - pos;
            if remaining < FRAME_HEADER_LEN as u64 {
                return self.torn_or_corrupt(last, pos, "incomplete frame header");
            }
            let mut hbuf = [0u8; FRAME_HEADER_LEN];
            self.read_at(&mut hbuf, pos)?;
            let header = match decode_header(&hbuf) {
                Ok(h) => h,
                Err(reason) => {
                    if last && self.all_zero(pos, file_len)? {
                        return self.torn_or_corrupt(last, pos, "zero-filled tail");
                    }
                    return Err(StorageError::corrupt(&self.path, pos, reason));
                }
            };
            let end = pos + FRAME_HEADER_LEN as u64 + header.len as u64;
            if end > file_len {
                return self.torn_or_corrupt(last, pos, "incomplete frame");
            }
            let mut payload = vec![0u8; header.len as usize];
            self.read_at(&mut payload, pos + FRAME_HEADER_LEN as u64)?;
            if crc32fast::hash(&payload) != header.crc {
                if last && self.all_zero(end, file_len)? {
                    return self.torn_or_corrupt(last, pos, "checksum mismatch in the last frame");
                }
                return Err(StorageError::corrupt(
                    &self.path,
                    pos,
                    "frame checksum mismatch",
                ));
            }
            on_frame(pos, &payload)?;
            pos = end;
            if first {
                self.base_len = end;
                first = false;
            }
        }
        Ok(())
    }

    fn torn_or_corrupt(
        &mut self,
        last: bool,
        pos: u64,
        reason: &'static str,
    ) -> Result<(), StorageError> {
        if !last {
            return Err(StorageError::corrupt(
                &self.path,
                pos,
                format!("{reason} in a segment that is not the last"),
            ));
        }
        warn!(
            file = %self.path.display(),
            offset = pos,
            dropped_bytes = self.len - pos,
            reason,
            "truncating the torn tail of the write-ahead log"
        );
        self.file
            .set_len(pos)
            .map_err(|e| StorageError::io("truncate torn tail of", &self.path, e))?;
        self.file
            .sync_all()
            .map_err(|e| StorageError::io("fsync segment", &self.path, e))?;
        self.len = pos;
        Ok(())
    }

    fn all_zero(&self, from: u64, to: u64) -> Result<bool, StorageError> {
        let mut buf = vec![0u8; 64 * 1024];
        let mut pos = from;
        while pos < to {
            let n = ((to - pos) as usize).min(buf.len());
            self.read_at(&mut buf[..n], pos)?;
            if buf[..n].iter().any(|&b| b != 0) {
                return Ok(false);
            }
            pos += n as u64;
        }
        Ok(true)
    }

    /// Reads `buf.len()` bytes at `offset`.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), StorageError> {
        self.file
            .read_exact_at(buf, offset)
            .map_err(|e| StorageError::io("read segment", &self.path, e))
    }

    /// Writes `bytes` at the end of the valid content (not yet durable) and
    /// returns the offset they were written at.
    pub fn append(&mut self, bytes: &[u8]) -> Result<u64, StorageError> {
        let at = self.len;
        self.file
            .write_all_at(bytes, at)
            .map_err(|e| StorageError::io("write segment", &self.path, e))?;
        self.len += bytes.len() as u64;
        Ok(at)
    }

    /// Makes everything written durable (`fdatasync`: the data and the file
    /// size, which is all a reader needs).
    pub fn sync(&self) -> Result<(), StorageError> {
        self.file
            .sync_data()
            .map_err(|e| StorageError::io("fsync segment", &self.path, e))
    }
}

//! Test support: bytes written into a segment by hand, after its last
//! frame (a buggy or foreign writer, a crafted frame, a torn one), as the
//! WAL's damage, bound and log tests write them.
//!
//! The segment format is the WAL's (`segment`, `record`): a
//! `SEGMENT_HEADER_LEN`-byte header, then frames
//! (`len:u32le crc hcrc payload[len]`), then preallocated zeros.

use std::path::Path;

use super::record::FRAME_HEADER_LEN;
use super::segment::SEGMENT_HEADER_LEN;

/// The offset where the frames of `bytes` (a segment) end: the first frame
/// header whose length is zero (the preallocated zeros), or the file's end.
pub(super) fn frames_end(bytes: &[u8]) -> usize {
    let mut end = SEGMENT_HEADER_LEN as usize;
    while let Some(h) = bytes.get(end..end + 4) {
        let n = u32::from_le_bytes(h.try_into().expect("4 bytes")) as usize;
        if n == 0 {
            break;
        }
        end += FRAME_HEADER_LEN + n;
    }
    end
}

/// Writes `tail` into the segment file `seg` where its frames end (over
/// its preallocated zeros, growing the file if they are too few).
pub(super) fn write_after_frames(seg: &Path, tail: &[u8]) {
    let mut bytes = std::fs::read(seg).expect("segment");
    let end = frames_end(&bytes);
    if bytes.len() < end + tail.len() {
        bytes.resize(end + tail.len(), 0);
    }
    bytes[end..end + tail.len()].copy_from_slice(tail);
    std::fs::write(seg, &bytes).expect("write");
}

//! The on-disk record format: frames of typed records.
//!
//! ```text
//! frame   := len:u32le  crc:u32le  hcrc:u32le  payload[len]
//!            crc  = crc32(payload)
//!            hcrc = crc32(len as 4 little-endian bytes)
//! payload := record*
//! record  := rlen:u32le  postcard(Record)[rlen]
//! ```
//!
//! Every [`sync`](crate::storage::LogStore::sync) writes exactly one frame
//! holding every record produced since the previous sync, so a frame is the
//! unit of atomicity: after a crash it is either wholly present and valid or
//! it is the torn tail.
//!
//! The length has its own checksum (`hcrc`) because a flipped bit in an
//! unprotected length could make a record in the middle of a segment appear
//! to extend past the end of the file, which would look exactly like a torn
//! tail and silently drop every later record. With `hcrc`, a damaged length is
//! reported as corruption; only a frame whose header checks out but whose
//! bytes are missing (or fail `crc` while being the last thing in the file)
//! is treated as torn.
//!
//! Invariants: `0 < len <= MAX_FRAME_LEN`; records inside a payload are
//! length-prefixed so that an entry can be read back alone with one `pread`
//! (the in-memory index stores its offset, length and crc32).

use serde::{Deserialize, Serialize};

use crate::core::types::{Entry, HardState, Index, Term};

/// The size of a frame header.
pub(crate) const FRAME_HEADER_LEN: usize = 12;
/// The largest payload a frame may carry (1 GiB). Larger values in a header
/// are corrupt.
pub(crate) const MAX_FRAME_LEN: u32 = 1 << 30;
/// The size of the length prefix of a record inside a payload.
pub(crate) const RECORD_PREFIX_LEN: usize = 4;

/// A typed record, as decoded from a payload.
///
/// The variant order is the on-disk tag (postcard encodes the declaration
/// index): append new variants at the end only.
#[derive(Debug, Deserialize)]
pub(crate) enum Record {
    /// A log entry. An entry at an index `<= last_index` first truncates the
    /// suffix from that index.
    Entry(Entry),
    /// The hard state from this point on.
    HardState(HardState),
    /// Every entry with index `>= from` is removed.
    Truncate {
        /// The first removed index.
        from: Index,
    },
    /// Every entry with index `<= upto` is removed; the term at `upto` is
    /// `term`. Applied unconditionally on replay: a conflict with the
    /// snapshot was already recorded as a `Truncate` before it.
    Compact {
        /// The last compacted index.
        upto: Index,
        /// Its term.
        term: Term,
    },
    /// Opens the checkpoint frame of every segment: the length of the
    /// previous segment when this one was started (0 for the first). A
    /// previous segment of another length lost or gained frames: corruption,
    /// even when it was cut exactly at a frame boundary.
    SegmentStart {
        /// The previous segment's length in bytes.
        prev_len: u64,
    },
}

/// The borrowed twin of [`Record`] used for encoding (same variants, same
/// order, so the encodings are identical).
#[derive(Debug, Serialize)]
pub(crate) enum RecordRef<'a> {
    /// See [`Record::Entry`].
    Entry(&'a Entry),
    /// See [`Record::HardState`].
    HardState(&'a HardState),
    /// See [`Record::Truncate`].
    Truncate {
        /// See [`Record::Truncate`].
        from: Index,
    },
    /// See [`Record::Compact`].
    Compact {
        /// See [`Record::Compact`].
        upto: Index,
        /// See [`Record::Compact`].
        term: Term,
    },
    /// See [`Record::SegmentStart`].
    SegmentStart {
        /// See [`Record::SegmentStart`].
        prev_len: u64,
    },
}

/// Where a record was placed inside a frame being built.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RecordPos {
    /// Offset of the record's postcard bytes from the start of the frame
    /// (header included).
    pub off: u32,
    /// Length of the postcard bytes.
    pub len: u32,
    /// crc32 of the postcard bytes.
    pub crc: u32,
}

/// A frame under construction: the header space followed by records.
#[derive(Debug)]
pub(crate) struct FrameBuf {
    buf: Vec<u8>,
}

impl FrameBuf {
    /// An empty frame.
    pub fn new() -> Self {
        FrameBuf {
            buf: vec![0; FRAME_HEADER_LEN],
        }
    }

    /// Whether no record has been pushed.
    pub fn is_empty(&self) -> bool {
        self.buf.len() == FRAME_HEADER_LEN
    }

    /// The frame's total size (header included).
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Encodes `rec` at the end of the frame.
    pub fn push(&mut self, rec: &RecordRef<'_>) -> RecordPos {
        let start = self.buf.len();
        self.buf.extend_from_slice(&[0; RECORD_PREFIX_LEN]);
        let buf = std::mem::take(&mut self.buf);
        // Encoding into a Vec cannot fail for these plain types.
        self.buf = postcard::to_extend(rec, buf).expect("postcard encoding into a Vec");
        let body = start + RECORD_PREFIX_LEN;
        let len = (self.buf.len() - body) as u32;
        self.buf[start..body].copy_from_slice(&len.to_le_bytes());
        RecordPos {
            off: body as u32,
            len,
            crc: crc32fast::hash(&self.buf[body..]),
        }
    }

    /// The bytes of a pushed record.
    pub fn record_bytes(&self, off: u32, len: u32) -> &[u8] {
        &self.buf[off as usize..(off + len) as usize]
    }

    /// Fills in the header and returns the complete frame.
    pub fn finish(&mut self) -> &[u8] {
        let payload_len = (self.buf.len() - FRAME_HEADER_LEN) as u32;
        let header = encode_header(payload_len, crc32fast::hash(&self.buf[FRAME_HEADER_LEN..]));
        self.buf[..FRAME_HEADER_LEN].copy_from_slice(&header);
        &self.buf
    }

    /// Empties the frame for reuse (keeping its allocation when modest).
    pub fn clear(&mut self) {
        if self.buf.capacity() > 16 << 20 {
            self.buf = Vec::new();
        }
        self.buf.clear();
        self.buf.extend_from_slice(&[0; FRAME_HEADER_LEN]);
    }
}

/// Encodes a frame header.
pub(crate) fn encode_header(len: u32, crc: u32) -> [u8; FRAME_HEADER_LEN] {
    let mut h = [0u8; FRAME_HEADER_LEN];
    h[0..4].copy_from_slice(&len.to_le_bytes());
    h[4..8].copy_from_slice(&crc.to_le_bytes());
    h[8..12].copy_from_slice(&crc32fast::hash(&len.to_le_bytes()).to_le_bytes());
    h
}

/// A decoded frame header.
#[derive(Clone, Copy, Debug)]
pub(crate) struct FrameHeader {
    /// Payload length.
    pub len: u32,
    /// crc32 of the payload.
    pub crc: u32,
}

/// Decodes a frame header, checking the length's own checksum and bounds.
pub(crate) fn decode_header(h: &[u8; FRAME_HEADER_LEN]) -> Result<FrameHeader, &'static str> {
    let word = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
    let (len, crc, hcrc) = (word(0), word(4), word(8));
    if crc32fast::hash(&len.to_le_bytes()) != hcrc {
        return Err("frame header checksum mismatch");
    }
    if len == 0 || len > MAX_FRAME_LEN {
        return Err("frame length out of range");
    }
    Ok(FrameHeader { len, crc })
}

/// One record inside a verified payload.
pub(crate) struct RawRecord<'a> {
    /// Offset of the record's postcard bytes within the payload.
    pub off: usize,
    /// The postcard bytes.
    pub bytes: &'a [u8],
}

/// Splits a verified payload into its records.
pub(crate) fn split_records(payload: &[u8]) -> Result<Vec<RawRecord<'_>>, String> {
    let mut out = Vec::new();
    let mut pos = 0usize;
    while pos < payload.len() {
        let Some(prefix) = payload.get(pos..pos + RECORD_PREFIX_LEN) else {
            return Err(format!("truncated record prefix at payload offset {pos}"));
        };
        let len = u32::from_le_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
        let body = pos + RECORD_PREFIX_LEN;
        let Some(bytes) = payload.get(body..body + len) else {
            return Err(format!(
                "record at payload offset {pos} claims {len} bytes past the payload end"
            ));
        };
        out.push(RawRecord { off: body, bytes });
        pos = body + len;
    }
    Ok(out)
}

/// Decodes one record's postcard bytes.
pub(crate) fn decode_record(bytes: &[u8]) -> Result<Record, String> {
    postcard::from_bytes(bytes).map_err(|e| format!("undecodable record: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::types::Payload;

    #[test]
    fn frame_roundtrip() {
        let e = Entry {
            term: 3,
            index: 7,
            payload: Payload::Command(vec![1, 2, 3].into()),
        };
        let mut f = FrameBuf::new();
        let p1 = f.push(&RecordRef::Entry(&e));
        let p2 = f.push(&RecordRef::Truncate { from: 9 });
        assert_eq!(
            crc32fast::hash(f.record_bytes(p1.off, p1.len)),
            p1.crc,
            "record crc"
        );
        let bytes = f.finish().to_vec();
        let header: [u8; FRAME_HEADER_LEN] = bytes[..FRAME_HEADER_LEN].try_into().unwrap();
        let h = decode_header(&header).unwrap();
        let payload = &bytes[FRAME_HEADER_LEN..];
        assert_eq!(h.len as usize, payload.len());
        assert_eq!(h.crc, crc32fast::hash(payload));
        let recs = split_records(payload).unwrap();
        assert_eq!(recs.len(), 2);
        assert_eq!(recs[0].off + FRAME_HEADER_LEN, p1.off as usize);
        assert_eq!(recs[1].off + FRAME_HEADER_LEN, p2.off as usize);
        match decode_record(recs[0].bytes).unwrap() {
            Record::Entry(d) => assert_eq!(d, e),
            other => panic!("unexpected {other:?}"),
        }
        assert!(matches!(
            decode_record(recs[1].bytes).unwrap(),
            Record::Truncate { from: 9 }
        ));
    }

    #[test]
    fn damaged_length_is_detected() {
        let mut h = encode_header(100, 5);
        h[1] ^= 0x10;
        assert!(decode_header(&h).is_err());
        assert!(decode_header(&[0; FRAME_HEADER_LEN]).is_err());
    }
}

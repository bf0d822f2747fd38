//! Versioned snapshots of the state: a header naming the state version,
//! then the postcard body.
//!
//! Layout: the 4 bytes `RKsv`, the state version (`u32`, little endian),
//! the postcard encoding of the state. A snapshot body without the header
//! (written before versions existed) is version 1.
//!
//! Restoring a snapshot of the current version decodes it; one of an older
//! version goes through the state machine's `migrate` hook
//! (`#[raftkit(version = N, migrate = path)]`); one of a newer version is
//! refused (the node runs an older binary than the one that wrote it).

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::state_machine::{CodecError, decode};

const MAGIC: [u8; 4] = *b"RKsv";
const HEADER: usize = 8;

/// Encodes `state` as a snapshot body of state version `version`.
pub fn encode_state<T: Serialize>(version: u32, state: &T) -> Result<Vec<u8>, CodecError> {
    // Straight after the header, into one buffer: a state is as large as
    // it gets, so encoding it apart and copying it behind the header cost a
    // second copy of it.
    let mut out = Vec::with_capacity(4096);
    encode_state_onto(version, state, &mut out)?;
    Ok(out)
}

/// [`encode_state`] at the end of `buf` (the runtime's reused snapshot
/// buffer, see [`SnapshotCopy::writing`](crate::state_machine::SnapshotCopy::writing)).
/// After an error, `buf` is empty.
pub fn encode_state_onto<T: Serialize>(
    version: u32,
    state: &T,
    buf: &mut Vec<u8>,
) -> Result<(), CodecError> {
    buf.extend_from_slice(&MAGIC);
    buf.extend_from_slice(&version.to_le_bytes());
    crate::state_machine::encode_onto("snapshot", state, buf)
}

/// The state version of a snapshot body and the body after the header.
pub fn split_header(data: &[u8]) -> (u32, &[u8]) {
    match data.split_first_chunk::<HEADER>() {
        Some((header, body)) if header[..4] == MAGIC => {
            let mut v = [0u8; 4];
            v.copy_from_slice(&header[4..]);
            (u32::from_le_bytes(v), body)
        }
        _ => (1, data),
    }
}

/// Decodes a snapshot body written by [`encode_state`] into a state of
/// version `version`, calling `migrate(from_version, body)` for an older
/// one.
pub fn decode_state<T: DeserializeOwned>(
    version: u32,
    data: &[u8],
    migrate: impl FnOnce(u32, &[u8]) -> Result<T, CodecError>,
) -> Result<T, CodecError> {
    let (from, body) = split_header(data);
    if from == version {
        decode("snapshot", body)
    } else if from < version {
        migrate(from, body)
    } else {
        Err(CodecError {
            what: "snapshot",
            reason: format!(
                "written with state version {from}, this binary knows versions up to {version}: run the newer binary on this node"
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state_machine::encode;

    #[test]
    fn versions_round_trip_migrate_and_refuse_newer() {
        let v1 = encode_state(1, &("a".to_string(), 3u64)).unwrap();
        let back: (String, u64) = decode_state(1, &v1, |_, _| unreachable!()).unwrap();
        assert_eq!(back, ("a".into(), 3));
        let migrated: (String, u64, Option<u8>) = decode_state(2, &v1, |from, body| {
            assert_eq!(from, 1);
            let (k, n): (String, u64) = decode("snapshot", body)?;
            Ok((k, n, None))
        })
        .unwrap();
        assert_eq!(migrated, ("a".into(), 3, None));
        let v3 = encode_state(3, &1u8).unwrap();
        let e = decode_state::<u8>(2, &v3, |_, _| unreachable!()).unwrap_err();
        assert!(e.reason.contains("version 3"), "{e}");
        // A body from before versions is version 1.
        let legacy = encode("snapshot", &7u32).unwrap();
        assert_eq!(split_header(&legacy), (1, &legacy[..]));
        assert_eq!(split_header(&[]), (1, &[][..]));
    }
}

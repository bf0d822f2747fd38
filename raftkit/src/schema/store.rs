//! The schema file of a data directory: the [`Schema`] of the binary that
//! last opened it, postcard behind a CRC-32, written atomically.

use std::path::Path;

use super::Schema;
use crate::error::Error;
use crate::storage::vfs::{Vfs, write_atomic};

const SCHEMA_FILE: &str = "schema";

/// Reads the schema file of `dir`, if there is one. A damaged file is a
/// storage error, never a silent "no schema".
pub fn load_schema(fs: &dyn Vfs, dir: &Path) -> Result<Option<Schema>, Error> {
    let path = dir.join(SCHEMA_FILE);
    let bytes = match fs.read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::Storage(format!("{}: {e}", path.display()))),
    };
    let damaged =
        |why: String| Error::Storage(format!("{}: damaged schema file: {why}", path.display()));
    let Some((crc, body)) = bytes.split_first_chunk::<4>() else {
        return Err(damaged("too short".into()));
    };
    if u32::from_le_bytes(*crc) != crc32fast::hash(body) {
        return Err(damaged("checksum mismatch".into()));
    }
    postcard::from_bytes(body)
        .map(Some)
        .map_err(|e| damaged(e.to_string()))
}

/// Writes the schema file of `dir` (temp file, fsync, rename, dir fsync).
pub fn save_schema(fs: &dyn Vfs, dir: &Path, schema: &Schema) -> Result<(), Error> {
    let body = postcard::to_allocvec(schema).map_err(|e| Error::Storage(e.to_string()))?;
    let mut bytes = crc32fast::hash(&body).to_le_bytes().to_vec();
    bytes.extend_from_slice(&body);
    write_atomic(fs, &dir.join(SCHEMA_FILE), &bytes).map_err(|e| Error::Storage(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::Shape;
    use crate::storage::vfs::RealFs;

    #[test]
    fn round_trip_and_damage_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load_schema(&RealFs, dir.path()).unwrap(), None);
        let schema = Schema::new("kv", 2, Shape::Str);
        save_schema(&RealFs, dir.path(), &schema).unwrap();
        assert_eq!(load_schema(&RealFs, dir.path()).unwrap(), Some(schema));
        let path = dir.path().join(SCHEMA_FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        assert!(matches!(
            load_schema(&RealFs, dir.path()),
            Err(Error::Storage(_))
        ));
        std::fs::write(&path, [1u8]).unwrap();
        assert!(matches!(
            load_schema(&RealFs, dir.path()),
            Err(Error::Storage(_))
        ));
    }
}

//! The schema files of a data directory, each postcard behind a CRC-32,
//! written atomically: `schema`, the [`Schema`] of the binary that last
//! opened it, `schema.floor`, the oldest schema the directory recorded
//! (what [`crate::schema::SchemaBook::check_enabled`] assumes of a voter not
//! heard from), and `schema.raised`, the schema of the last raise, written
//! only by [`raise_oldest_schema`]: the proof that every voter was heard on
//! it (what [`crate::schema::SchemaBook::knows_runtime_log`] assumes of a
//! voter not heard from; a fresh directory's floor is this node's own
//! schema and proves nothing of the other voters, review s58 sessions #1).
//!
//! Invariant: `schema.floor` exists before `schema` is ever rewritten
//! (and before the peer meta is first written):
//! [`save_schema`] writes it first, with the schema the `schema` file held
//! (the new one for a new directory), and never rewrites it. It is only
//! raised, by [`raise_oldest_schema`], to the schema the `schema` file
//! holds, once every voter was heard on a schema that knows all its
//! writes (see [`crate::schema::SchemaBook`]). A
//! directory whose `schema` a raftkit before `schema.floor` rewrote records,
//! at its first save by this one, the schema of the last binary that ran
//! on it; a binary before it ignores the file.
//!
//! A new directory records as its floor either its own schema, when its
//! node founds the cluster ([`save_schema`]: every founding member runs
//! one binary, so that schema is the cluster's first and is known to
//! every voter), or, when its node joins an existing cluster
//! ([`save_joined_schema`]), a schema with no write ([`joined_floor`]):
//! the cluster's other voters may still run an older binary, and this
//! node knows nothing of them until it hears them. A node's first start
//! writes both ([`save_new_schema`]) before the peer meta: a directory
//! without its meta counts as new at the next start, which writes them
//! anew, so no crash leaves a joining node's directory with its own
//! schema as floor (review s60 schema L1).

use std::path::Path;

use super::{HandlerKind, Schema};
use crate::error::Error;
use crate::storage::vfs::{Vfs, write_atomic};

const SCHEMA_FILE: &str = "schema";
const FLOOR_FILE: &str = "schema.floor";
const RAISED_FILE: &str = "schema.raised";

/// Reads the schema file of `dir`, if there is one. A damaged file is a
/// storage error, never a silent "no schema".
pub fn load_schema(fs: &dyn Vfs, dir: &Path) -> Result<Option<Schema>, Error> {
    load(fs, &dir.join(SCHEMA_FILE))
}

/// Reads the oldest schema `dir` recorded (file `schema.floor`), if there
/// is one: a directory that no raftkit with the file saved a schema in has
/// none (then the `schema` file, if any, is the oldest known). A damaged
/// file is a storage error.
pub fn load_oldest_schema(fs: &dyn Vfs, dir: &Path) -> Result<Option<Schema>, Error> {
    load(fs, &dir.join(FLOOR_FILE))
}

/// Reads the schema of the last raise `dir` recorded (file
/// `schema.raised`, written by [`raise_oldest_schema`] only), if there is
/// one: a directory never raised, or raised only by a raftkit before the
/// file, has none. A damaged file is a storage error.
pub fn load_raised_schema(fs: &dyn Vfs, dir: &Path) -> Result<Option<Schema>, Error> {
    load(fs, &dir.join(RAISED_FILE))
}

fn load(fs: &dyn Vfs, path: &Path) -> Result<Option<Schema>, Error> {
    let bytes = match fs.read(path) {
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

/// Writes the schema file of `dir` (temp file, fsync, rename, dir fsync),
/// after `schema.floor` if the directory has none yet: it records the
/// schema the file held before (`schema` for a new directory), so the
/// oldest schema is kept whatever crash follows.
pub fn save_schema(fs: &dyn Vfs, dir: &Path, schema: &Schema) -> Result<(), Error> {
    if load_oldest_schema(fs, dir)?.is_none() {
        let oldest = load_schema(fs, dir)?;
        save(fs, &dir.join(FLOOR_FILE), oldest.as_ref().unwrap_or(schema))?;
    }
    save(fs, &dir.join(SCHEMA_FILE), schema)
}

/// Writes the schema file of a new directory `dir` whose node joins an
/// existing cluster (it did not found it: no bootstrap), after
/// `schema.floor` if the directory has none yet, as [`save_schema`] does,
/// but with a floor that proves nothing ([`joined_floor`]): the other
/// voters of a cluster this node joined may run any older compatible
/// binary, so what this node's binary knows says nothing of them. A voter
/// not heard from is then taken to know no write until a raise proves
/// every voter knows this binary's ([`crate::schema::SchemaBook`]).
pub fn save_joined_schema(fs: &dyn Vfs, dir: &Path, schema: &Schema) -> Result<(), Error> {
    if load_oldest_schema(fs, dir)?.is_none() {
        let floor = match load_schema(fs, dir)? {
            Some(oldest) => oldest,
            None => joined_floor(schema),
        };
        save(fs, &dir.join(FLOOR_FILE), &floor)?;
    }
    save(fs, &dir.join(SCHEMA_FILE), schema)
}

/// Writes the schema files of a directory whose node starts for the first
/// time (it holds no peer meta yet): `schema.floor` (this node's own
/// `schema` if it founds its cluster, [`joined_floor`] if it joins one),
/// then `schema`, each atomically, whatever files an earlier first start
/// cut short left there. The caller writes the meta only after them (review
/// s60 schema L1), so that a crash at any point either leaves no meta (the
/// next start is a first start again and writes them anew) or leaves both.
pub(crate) fn save_new_schema(
    fs: &dyn Vfs,
    dir: &Path,
    schema: &Schema,
    joins: bool,
) -> Result<(), Error> {
    let floor = if joins {
        joined_floor(schema)
    } else {
        schema.clone()
    };
    save(fs, &dir.join(FLOOR_FILE), &floor)?;
    save(fs, &dir.join(SCHEMA_FILE), schema)
}

/// The floor of a directory that joined its cluster ([`save_joined_schema`]):
/// `schema` without its write handlers, at runtime log version 0, so that
/// a voter not heard from counts as knowing no write and none of
/// raftkit's newer entries. A binary before this one reads it as an
/// oldest schema like any other, and assumes as little.
pub fn joined_floor(schema: &Schema) -> Schema {
    let mut floor = schema.clone();
    floor.handlers.retain(|h| h.kind != HandlerKind::Write);
    floor.runtime_log = 0;
    floor
}

/// Raises the oldest schema `dir` recorded (file `schema.floor`) to
/// `schema`, written atomically (temp file, fsync, rename, dir fsync):
/// for [`crate::schema::SchemaBook`] once every voter was heard on a
/// schema that knows every write of `schema` (see its docs). The caller
/// passes the schema the `schema` file holds (this binary's, after its
/// start saved it), never one newer. Then records `schema` in
/// `schema.raised` ([`load_raised_schema`]), the proof of the raise: a
/// crash between the two writes leaves the floor raised without the
/// proof, which only makes a later start assume less.
pub fn raise_oldest_schema(fs: &dyn Vfs, dir: &Path, schema: &Schema) -> Result<(), Error> {
    save(fs, &dir.join(FLOOR_FILE), schema)?;
    save(fs, &dir.join(RAISED_FILE), schema)
}

fn save(fs: &dyn Vfs, path: &Path, schema: &Schema) -> Result<(), Error> {
    let body = postcard::to_allocvec(schema).map_err(|e| Error::Storage(e.to_string()))?;
    let mut bytes = crc32fast::hash(&body).to_le_bytes().to_vec();
    bytes.extend_from_slice(&body);
    write_atomic(fs, path, &bytes).map_err(|e| Error::Storage(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::Shape;
    use crate::storage::vfs::{RealFs, temp_path};

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

    /// `schema.floor` keeps the first schema saved, or the one a directory
    /// from before the file held, across later saves.
    #[test]
    fn the_oldest_schema_is_kept_across_saves() {
        let v = |n: u32| Schema::new("kv", n, Shape::Str);
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load_oldest_schema(&RealFs, dir.path()).unwrap(), None);
        save_schema(&RealFs, dir.path(), &v(1)).unwrap();
        save_schema(&RealFs, dir.path(), &v(2)).unwrap();
        save_schema(&RealFs, dir.path(), &v(3)).unwrap();
        assert_eq!(load_schema(&RealFs, dir.path()).unwrap(), Some(v(3)));
        assert_eq!(load_oldest_schema(&RealFs, dir.path()).unwrap(), Some(v(1)));
        // A directory whose `schema` an earlier raftkit wrote (no floor
        // file): its first save records that schema as the oldest.
        let dir = tempfile::tempdir().unwrap();
        save(&RealFs, &dir.path().join(SCHEMA_FILE), &v(1)).unwrap();
        save_schema(&RealFs, dir.path(), &v(2)).unwrap();
        save_schema(&RealFs, dir.path(), &v(3)).unwrap();
        assert_eq!(load_oldest_schema(&RealFs, dir.path()).unwrap(), Some(v(1)));
    }

    /// A file system on which another writer saves `schema` whole while
    /// the first temporary file is open: the write of `schema.floor`
    /// overlapped by one of `schema`.
    #[derive(Debug)]
    struct Overlapping {
        dir: std::path::PathBuf,
        schema: Schema,
        done: std::sync::atomic::AtomicBool,
    }

    impl Vfs for Overlapping {
        fn create_dir_all(&self, dir: &Path) -> std::io::Result<()> {
            RealFs.create_dir_all(dir)
        }
        fn is_dir(&self, path: &Path) -> bool {
            RealFs.is_dir(path)
        }
        fn list_dir(&self, dir: &Path) -> std::io::Result<Vec<String>> {
            RealFs.list_dir(dir)
        }
        fn open(
            &self,
            path: &Path,
            mode: crate::storage::vfs::OpenMode,
        ) -> std::io::Result<Box<dyn crate::storage::vfs::VfsFile>> {
            let file = RealFs.open(path, mode)?;
            let is_tmp = path.to_string_lossy().ends_with(".tmp");
            if is_tmp && !self.done.swap(true, std::sync::atomic::Ordering::SeqCst) {
                save(&RealFs, &self.dir.join(SCHEMA_FILE), &self.schema)
                    .expect("the overlapping save of `schema`");
            }
            Ok(file)
        }
        fn read(&self, path: &Path) -> std::io::Result<Vec<u8>> {
            RealFs.read(path)
        }
        fn rename(&self, from: &Path, to: &Path) -> std::io::Result<()> {
            RealFs.rename(from, to)
        }
        fn remove_file(&self, path: &Path) -> std::io::Result<()> {
            RealFs.remove_file(path)
        }
        fn sync_dir(&self, dir: &Path) -> std::io::Result<()> {
            RealFs.sync_dir(dir)
        }
        fn lock(&self, path: &Path) -> std::io::Result<Box<dyn crate::storage::vfs::VfsLock>> {
            RealFs.lock(path)
        }
    }

    /// `schema` and `schema.floor` are written through temporary files of
    /// their own (found by review, stop 47: both went through
    /// `schema.tmp`, so a write of one overlapping a write of the other
    /// wrote into the other's file, and a failed write removed the other's
    /// temporary file): a save of `schema` inside the write of the floor
    /// leaves both files whole and no temporary file.
    #[test]
    fn overlapping_writes_of_the_two_files_do_not_share_a_temporary_file() {
        let v = |n: u32| Schema::new("kv", n, Shape::Str);
        let dir = tempfile::tempdir().unwrap();
        let fs = Overlapping {
            dir: dir.path().to_path_buf(),
            schema: v(2),
            done: false.into(),
        };
        let raised = raise_oldest_schema(&fs, dir.path(), &v(1));
        assert!(
            raised.is_ok(),
            "the write of the floor failed: {:?}",
            raised.err()
        );
        assert!(fs.done.load(std::sync::atomic::Ordering::SeqCst));
        assert_eq!(load_schema(&RealFs, dir.path()).ok(), Some(Some(v(2))));
        assert_eq!(
            load_oldest_schema(&RealFs, dir.path()).ok(),
            Some(Some(v(1)))
        );
        let left: Vec<String> = RealFs
            .list_dir(dir.path())
            .unwrap()
            .into_iter()
            .filter(|n| n.ends_with(".tmp"))
            .collect();
        assert!(left.is_empty(), "temporary files left: {left:?}");
        assert_ne!(
            temp_path(&dir.path().join(SCHEMA_FILE)),
            temp_path(&dir.path().join(FLOOR_FILE))
        );
    }
}

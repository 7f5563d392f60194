//! The on-disk format of a collection: the SQLite schema and its `meta` table, how a document's
//! vector and fields are stored in a row, and the lock file that gives one process the
//! collection.

use std::path::Path;

use rusqlite::{Connection, OptionalExtension};

use crate::document::Fields;
use crate::error::{corrupt, db_err, io_err, Result, SearchError};
use crate::store::CollectionInfo;

/// The database file inside a collection directory.
pub const DB_FILE: &str = "collection.sqlite3";

/// Held (an exclusive file lock) while a process has the collection open: the in-memory state
/// and the derived indexes belong to one process at a time.
pub const LOCK_FILE: &str = "collection.lock";

pub(super) const SCHEMA_VERSION: &str = "1";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS documents (
    rowid INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    fields TEXT NOT NULL,
    vector BLOB NOT NULL,
    source_path TEXT,
    source_size INTEGER,
    source_mtime INTEGER,
    source_hash TEXT,
    gen INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS documents_gen ON documents(gen);
CREATE TABLE IF NOT EXISTS tombstones (rowid INTEGER NOT NULL, gen INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS tombstones_gen ON tombstones(gen);
";

/// True when `dir` holds a collection database.
pub(crate) fn exists(dir: &Path) -> bool {
    dir.join(DB_FILE).is_file()
}

/// Opens the database at `db_path` with the settings every connection uses, creating the
/// tables when missing.
pub(super) fn connect(db_path: &Path) -> Result<Connection> {
    let conn = Connection::open(db_path).map_err(db_err(db_path))?;
    conn.busy_timeout(std::time::Duration::from_secs(30))
        .map_err(db_err(db_path))?;
    // A document row (a 512-d f32 vector is 2 KB) fits once in a default 4 KB page, leaving
    // half of it empty; 16 KB pages hold seven. Only takes effect on a new database.
    conn.pragma_update(None, "page_size", 16384)
        .map_err(db_err(db_path))?;
    // WAL: readers never block the writer; FULL: a committed batch survives power loss too.
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(db_err(db_path))?;
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(db_err(db_path))?;
    conn.execute_batch(SCHEMA).map_err(db_err(db_path))?;
    Ok(conn)
}

/// A vector as stored: little-endian f32s.
pub(super) fn vector_to_blob(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// The vector stored for document `id` in the collection `dir`: exactly `dim` little-endian
/// f32s, all finite (what [`crate::store::Store::upsert`] accepts), or an error naming the
/// document.
pub(crate) fn decode_vector(dir: &Path, id: &str, blob: &[u8], dim: usize) -> Result<Vec<f32>> {
    if blob.len() != dim * 4 {
        return Err(corrupt(
            dir,
            format!(
                "documents table: document {id:?} has a vector of {} bytes, the collection's \
                 dimension {dim} needs {}",
                blob.len(),
                dim * 4
            ),
        ));
    }
    let v: Vec<f32> = blob
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    if let Some(i) = v.iter().position(|x| !x.is_finite()) {
        return Err(corrupt(
            dir,
            format!(
                "documents table: document {id:?} has a non-finite vector ({} at index {i})",
                v[i]
            ),
        ));
    }
    Ok(v)
}

/// The fields stored for document `id` in the collection `dir`: a JSON object, or an error
/// naming the document and the parse error.
pub(crate) fn parse_fields(dir: &Path, id: &str, text: &str) -> Result<Fields> {
    serde_json::from_str::<Fields>(text).map_err(|e| {
        corrupt(
            dir,
            format!("documents table: the fields of document {id:?} are not a JSON object: {e}"),
        )
    })
}

/// A value of the `meta` table, or an error naming the key when it is missing.
pub(crate) fn read_meta(conn: &Connection, dir: &Path, key: &str) -> Result<String> {
    let db_path = dir.join(DB_FILE);
    conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| {
        r.get::<_, String>(0)
    })
    .optional()
    .map_err(db_err(&db_path))?
    .ok_or_else(|| corrupt(dir, format!("meta table: key {key:?} is missing")))
}

/// The collection info (model, spec) stored in the `meta` table.
pub(crate) fn read_info(conn: &Connection, dir: &Path) -> Result<CollectionInfo> {
    let text = read_meta(conn, dir, "info")?;
    serde_json::from_str(&text).map_err(|e| {
        corrupt(
            dir,
            format!("meta table: key \"info\" is not a collection info: {e}"),
        )
    })
}

/// The schema version, which must be the one this gclip reads.
pub(crate) fn check_schema_version(conn: &Connection, dir: &Path) -> Result<()> {
    let version = read_meta(conn, dir, "schema_version")?;
    if version != SCHEMA_VERSION {
        return Err(SearchError::Database {
            path: dir.join(DB_FILE),
            message: format!("schema version {version:?}, this gclip reads {SCHEMA_VERSION}"),
        });
    }
    Ok(())
}

/// The generation of the last committed write, from the `meta` table.
pub(crate) fn read_generation(conn: &Connection, dir: &Path) -> Result<u64> {
    let g = read_meta(conn, dir, "generation")?;
    g.parse().map_err(|e| {
        corrupt(
            dir,
            format!("meta table: key \"generation\" holds {g:?}, not a generation: {e}"),
        )
    })
}

/// Seconds since the Unix epoch (0 for a clock before it).
pub(crate) fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Takes the collection's lock (held while the returned file is open): one process at a time.
pub(crate) fn lock_collection(dir: &Path) -> Result<std::fs::File> {
    if !exists(dir) {
        return Err(SearchError::NotACollection(dir.to_path_buf()));
    }
    let lock_path = dir.join(LOCK_FILE);
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(io_err(&lock_path))?;
    match lock.try_lock() {
        Ok(()) => Ok(lock),
        Err(std::fs::TryLockError::WouldBlock) => Err(SearchError::Invalid(format!(
            "collection {} is open in another process (a running `gclip serve`?); \
             stop it or use its HTTP API",
            dir.display()
        ))),
        Err(std::fs::TryLockError::Error(e)) => Err(io_err(&lock_path)(e)),
    }
}

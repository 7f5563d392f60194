//! The embedded backend: one directory holding a SQLite database (WAL mode; documents, fields,
//! vectors, the collection's model and spec) that is the source of truth, and derived indexes
//! beside it that are rebuilt from it when missing or stale.
//!
//! Every write is one transaction that also bumps the collection's *generation*; each document
//! row records the generation that last wrote it and each deletion leaves a tombstone, so a
//! derived index saved at generation `g` catches up by replaying what changed after `g`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, RwLock};

use rusqlite::{params, Connection, OptionalExtension};

use crate::ann::AnnState;
use crate::document::{Document, Fields};
use crate::error::{corrupt, db_err, io_err, Result, SearchError};
use crate::exact::{self, Quantized};
use crate::lexical::LexicalState;
use crate::memory::{Changes, Mem};
use crate::payload::slot_bits;
use crate::store::{
    CollectionInfo, FileState, Fusion, Hit, NewDocument, SearchMode, SearchRequest, Store,
    WriteReceipt,
};

/// The database file inside a collection directory.
pub const DB_FILE: &str = "collection.sqlite3";

/// Held (an exclusive file lock) while a process has the collection open: the in-memory state
/// and the derived indexes belong to one process at a time.
pub const LOCK_FILE: &str = "collection.lock";

const SCHEMA_VERSION: &str = "1";

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

/// Tuning of the embedded backend.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Below this many documents, `SearchMode::Auto` searches exactly and no HNSW index is kept.
    pub exact_below: usize,
}

impl Default for StoreOptions {
    /// 20,000 documents, or `GCLIP_EXACT_BELOW` from the environment.
    fn default() -> Self {
        let exact_below = std::env::var("GCLIP_EXACT_BELOW")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(20_000);
        Self { exact_below }
    }
}

/// A collection stored in a directory: SQLite plus derived indexes.
pub struct SqliteStore {
    /// Released when the store is dropped (or the process dies).
    _lock: std::fs::File,
    dir: PathBuf,
    db_path: PathBuf,
    info: CollectionInfo,
    options: StoreOptions,
    conn: Mutex<Connection>,
    mem: RwLock<Mem>,
    ann: AnnState,
    lexical: LexicalState,
}

fn vector_to_blob(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// The vector stored for document `id` in the collection `dir`: exactly `dim` little-endian
/// f32s, all finite (what [`Store::upsert`] accepts), or an error naming the document.
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

pub(crate) fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Takes the collection's lock (held while the returned file is open): one process at a time.
pub(crate) fn lock_collection(dir: &Path) -> Result<std::fs::File> {
    if !SqliteStore::exists(dir) {
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

impl SqliteStore {
    /// True when `dir` holds a collection database.
    pub fn exists(dir: &Path) -> bool {
        dir.join(DB_FILE).is_file()
    }

    fn connect(db_path: &Path) -> Result<Connection> {
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

    /// Creates a collection in `dir` (made if missing). Fails if one is already there.
    pub fn create(dir: &Path, mut info: CollectionInfo, options: StoreOptions) -> Result<Self> {
        if Self::exists(dir) {
            return Err(SearchError::Invalid(format!(
                "{} already holds a collection",
                dir.display()
            )));
        }
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let db_path = dir.join(DB_FILE);
        let conn = Self::connect(&db_path)?;
        if info.created == 0 {
            info.created = now_unix();
        }
        let info_json = serde_json::to_string(&info)
            .map_err(|e| SearchError::Invalid(format!("collection info: {e}")))?;
        conn.execute_batch("BEGIN IMMEDIATE")
            .map_err(db_err(&db_path))?;
        let write = || -> rusqlite::Result<()> {
            conn.execute(
                "INSERT INTO meta(key, value) VALUES ('schema_version', ?1), ('info', ?2), ('generation', '0')",
                params![SCHEMA_VERSION, info_json],
            )?;
            conn.execute_batch("COMMIT")
        };
        if let Err(e) = write() {
            let _ = conn.execute_batch("ROLLBACK");
            return Err(db_err(&db_path)(e));
        }
        drop(conn);
        Self::open(dir, options)
    }

    /// Opens the collection in `dir`, loading documents into memory and bringing the derived
    /// indexes up to date (rebuilding them when missing or unreadable).
    pub fn open(dir: &Path, options: StoreOptions) -> Result<Self> {
        Self::open_inner(dir, options, false)
    }

    /// Opens the collection after removing its derived indexes (HNSW, lexical), so that they
    /// are rebuilt from the database; the documents are not touched.
    pub(crate) fn open_rebuilding(dir: &Path, options: StoreOptions) -> Result<Self> {
        Self::open_inner(dir, options, true)
    }

    fn open_inner(dir: &Path, options: StoreOptions, rebuild_derived: bool) -> Result<Self> {
        let lock = lock_collection(dir)?;
        if rebuild_derived {
            for file in [crate::ann::ANN_FILE, crate::ann::ANN_META_FILE] {
                let path = dir.join(file);
                match std::fs::remove_file(&path) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        return Err(io_err(&path)(e))
                    }
                    _ => {}
                }
            }
            let lexical = dir.join(crate::lexical::LEXICAL_DIR);
            if lexical.exists() {
                std::fs::remove_dir_all(&lexical).map_err(io_err(&lexical))?;
            }
        }
        let db_path = dir.join(DB_FILE);
        let conn = Self::connect(&db_path)?;
        check_schema_version(&conn, dir)?;
        let info = read_info(&conn, dir)?;
        // Read once here so that a damaged counter stops the open, not the first write.
        read_generation(&conn, dir)?;
        let dim = info.model.dim;
        let mut mem = Mem::new(dim);
        {
            let mut stmt = conn
                .prepare("SELECT rowid, id, fields, vector FROM documents ORDER BY rowid")
                .map_err(db_err(&db_path))?;
            let mut rows = stmt.query([]).map_err(db_err(&db_path))?;
            while let Some(row) = rows.next().map_err(db_err(&db_path))? {
                let rowid: i64 = row.get(0).map_err(db_err(&db_path))?;
                let id: String = row.get(1).map_err(db_err(&db_path))?;
                let fields: String = row.get(2).map_err(db_err(&db_path))?;
                let blob: Vec<u8> = row.get(3).map_err(db_err(&db_path))?;
                let v = decode_vector(dir, &id, &blob, dim)?;
                mem.put(rowid, &id, parse_fields(dir, &id, &fields)?, &v);
            }
        }
        let store = Self {
            _lock: lock,
            dir: dir.to_path_buf(),
            db_path,
            info,
            options,
            conn: Mutex::new(conn),
            mem: RwLock::new(mem),
            ann: AnnState::new(dir, dim),
            lexical: LexicalState::new(dir),
        };
        store.sync_derived()?;
        Ok(store)
    }

    /// The collection directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The generation of the last committed write.
    pub fn generation(&self) -> Result<u64> {
        let conn = self.conn();
        read_generation(&conn, &self.dir)
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn mem(&self) -> std::sync::RwLockReadGuard<'_, Mem> {
        self.mem.read().unwrap_or_else(|p| p.into_inner())
    }

    fn mem_mut(&self) -> std::sync::RwLockWriteGuard<'_, Mem> {
        self.mem.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the HNSW index is used at the current size.
    fn wants_ann(&self, len: usize) -> bool {
        len >= self.options.exact_below
    }

    /// Brings the derived indexes to the database's generation: loads them, replays the changes
    /// since their generation, or rebuilds them from the documents.
    fn sync_derived(&self) -> Result<()> {
        let conn = self.conn();
        let generation = read_generation(&conn, &self.dir)?;
        let mem = self.mem();
        let changes = |since: u64| -> Result<Changes> { self.changes_since(&conn, since) };
        if self.wants_ann(mem.len()) {
            self.ann.sync(&mem, generation, &changes)?;
        }
        self.lexical
            .sync(&mem, &self.info.spec, generation, &changes)?;
        Ok(())
    }

    fn changes_since(&self, conn: &Connection, since: u64) -> Result<Changes> {
        let e = db_err(&self.db_path);
        let mut removed = Vec::new();
        let mut stmt = conn
            .prepare("SELECT rowid FROM tombstones WHERE gen > ?1")
            .map_err(&e)?;
        let mut rows = stmt.query([since as i64]).map_err(&e)?;
        while let Some(r) = rows.next().map_err(&e)? {
            removed.push(r.get::<_, i64>(0).map_err(&e)?);
        }
        let mut written = Vec::new();
        let mut stmt = conn
            .prepare("SELECT rowid FROM documents WHERE gen > ?1")
            .map_err(&e)?;
        let mut rows = stmt.query([since as i64]).map_err(&e)?;
        while let Some(r) = rows.next().map_err(&e)? {
            written.push(r.get::<_, i64>(0).map_err(&e)?);
        }
        Ok(Changes { removed, written })
    }

    /// Runs `f` in one write transaction that bumps the generation; returns the new generation.
    fn write<T>(
        &self,
        conn: &mut Connection,
        f: impl FnOnce(&rusqlite::Transaction, i64) -> rusqlite::Result<T>,
    ) -> Result<(T, u64)> {
        let e = db_err(&self.db_path);
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(&e)?;
        // A damaged counter is an error (the transaction rolls back when dropped): restarting
        // at 0 would make derived indexes saved at a later generation look newer than the data.
        let generation = read_generation(&tx, &self.dir)?
            .checked_add(1)
            .ok_or_else(|| {
                corrupt(
                    &self.dir,
                    "meta table: key \"generation\" is at its maximum",
                )
            })?;
        let out = f(&tx, generation as i64).map_err(&e)?;
        tx.execute(
            "UPDATE meta SET value = ?1 WHERE key = 'generation'",
            [generation.to_string()],
        )
        .map_err(&e)?;
        tx.commit().map_err(&e)?;
        Ok((out, generation))
    }

    fn hit(&self, mem: &Mem, slot: usize, score: f32) -> Hit {
        let fields = mem.fields[slot].clone();
        let image = self
            .info
            .spec
            .image_fields()
            .find_map(|f| fields.get(f).and_then(|v| v.as_str()).map(String::from));
        Hit {
            id: mem.ids[slot].clone(),
            score,
            cosine: None,
            bm25: None,
            image,
            fields,
        }
    }

    /// Vector search: `(slot, cosine)` best first, `k` of them.
    fn vector_search(
        &self,
        mem: &Mem,
        query: &[f32],
        k: usize,
        request: &SearchRequest,
    ) -> Result<Vec<(usize, f32)>> {
        if query.len() != mem.dim {
            return Err(SearchError::Dimension {
                got: query.len(),
                want: mem.dim,
            });
        }
        // Never more than there are documents (a user's limit can be anything).
        let k = k.min(mem.len());
        if k == 0 {
            return Ok(Vec::new());
        }
        // Equality, tag and numeric range conditions name the documents that can match:
        // exactly those, or a superset that the filter itself then checks.
        let candidates = request
            .filter
            .as_ref()
            .and_then(|f| mem.payload.candidates(f));
        // Exact candidates need no check of the filter (a scan reads only them); otherwise the
        // filter itself decides.
        let exact_candidates = candidates.as_ref().is_some_and(|c| c.exact);
        let keep = |slot: usize| -> bool {
            mem.alive[slot]
                && (exact_candidates
                    || request
                        .filter
                        .as_ref()
                        .is_none_or(|f| f.matches(&mem.ids[slot], &mem.fields[slot])))
        };
        let use_ann = match request.mode {
            SearchMode::Exact => false,
            SearchMode::Ann => true,
            // A selective filter leaves few documents: scanning them exactly is cheaper than a
            // graph walk that must step over all the others (and is exact).
            SearchMode::Auto => {
                self.wants_ann(mem.len())
                    && match (&request.filter, &candidates) {
                        (None, _) => true,
                        (Some(_), Some(c)) => !self.scan_beats_walk(c.rows.len(), mem.len()),
                        (Some(f), None) => {
                            estimated_matches(mem, f) > self.options.exact_below as f64
                        }
                    }
            }
        };
        if use_ann {
            // The graph walk visits any node: exact candidates become a bit per slot, a test
            // that does not touch the document's fields.
            let allowed = candidates
                .as_ref()
                .filter(|c| c.exact)
                .map(|c| slot_bits(c.rows.iter().copied(), mem.alive.len()));
            let walk_keep = |slot: usize| -> bool {
                match &allowed {
                    Some(bits) => mem.alive[slot] && bits[slot / 64] & (1 << (slot % 64)) != 0,
                    None => keep(slot),
                }
            };
            let filter: Option<&dyn Fn(usize) -> bool> =
                request.filter.is_some().then_some(&walk_keep);
            if let Some(found) = self.ann.search(mem, query, k, filter)? {
                // An approximate search that found fewer than asked while more documents may
                // match (a selective filter) falls through to the exact scan.
                if found.len() >= k.min(mem.len()) || request.filter.is_none() {
                    return Ok(found);
                }
            }
        }
        let rows = candidates.as_ref().map(|c| c.rows.as_slice());
        let found = match (request.mode, rows) {
            // Exact mode reads every f32 vector it scores.
            (SearchMode::Exact, Some(rows)) => {
                exact::top_k_of_rows(&mem.vectors, mem.dim, query, k, rows, &keep)
            }
            (SearchMode::Exact, None) => exact::top_k(&mem.vectors, mem.dim, query, k, &keep),
            _ => exact::top_k_quantized(
                Quantized {
                    codes: &mem.codes,
                    scales: &mem.scales,
                },
                &mem.vectors,
                mem.dim,
                query,
                k,
                rows,
                &keep,
            ),
        };
        Ok(found.into_iter().map(|s| (s.row, s.score)).collect())
    }

    /// Whether scanning `candidates` known documents exactly is cheaper than a filtered graph
    /// walk over a collection of `len`. The walk costs about (unfiltered walk) / (share
    /// matching) = t_walk · len / candidates, the scan t_row · candidates; they cross at
    /// candidates² = (t_walk / t_row) · len. Measured here (docs/BENCHMARKS.md): an unfiltered
    /// walk at 1,000,000 (M 32, ef 128) ≈ 1.5 ms, a scattered candidate row ≈ 40 ns as 8-bit
    /// codes.
    fn scan_beats_walk(&self, candidates: usize, len: usize) -> bool {
        const WALK_OVER_ROW: f64 = 40_000.0;
        candidates <= self.options.exact_below
            || (candidates as f64).powi(2) <= WALK_OVER_ROW * len as f64
    }
}

/// How many documents a filter matches, from an evenly spaced sample of up to 1,000 slots.
fn estimated_matches(mem: &Mem, filter: &crate::filter::Filter) -> f64 {
    let slots = mem.alive.len();
    if slots == 0 {
        return 0.0;
    }
    let step = (slots / 1000).max(1);
    let (mut seen, mut hits) = (0usize, 0usize);
    for s in (0..slots).step_by(step) {
        if mem.alive[s] {
            seen += 1;
            if filter.matches(&mem.ids[s], &mem.fields[s]) {
                hits += 1;
            }
        }
    }
    if seen == 0 {
        return mem.len() as f64;
    }
    hits as f64 / seen as f64 * mem.len() as f64
}

impl Store for SqliteStore {
    fn info(&self) -> &CollectionInfo {
        &self.info
    }

    fn len(&self) -> usize {
        self.mem().len()
    }

    fn upsert(&self, docs: Vec<NewDocument>) -> Result<WriteReceipt> {
        let dim = self.info.model.dim;
        for d in &docs {
            if d.id.is_empty() {
                return Err(SearchError::Invalid("document id is empty".into()));
            }
            if d.vector.len() != dim {
                return Err(SearchError::Dimension {
                    got: d.vector.len(),
                    want: dim,
                });
            }
            if d.vector.iter().any(|x| !x.is_finite()) {
                return Err(SearchError::Invalid(format!(
                    "document {:?} has a non-finite vector",
                    d.id
                )));
            }
        }
        let mut conn = self.conn();
        let (rowids, generation) = self.write(&mut conn, |tx, generation| {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO documents (id, fields, vector, source_path, source_size, source_mtime, source_hash, gen)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                 ON CONFLICT(id) DO UPDATE SET fields = excluded.fields, vector = excluded.vector,
                   source_path = excluded.source_path, source_size = excluded.source_size,
                   source_mtime = excluded.source_mtime, source_hash = excluded.source_hash,
                   gen = excluded.gen
                 RETURNING rowid",
            )?;
            let mut rowids = Vec::with_capacity(docs.len());
            for d in &docs {
                let fields = serde_json::Value::Object(d.fields.clone()).to_string();
                let s = d.source.as_ref();
                let rowid: i64 = stmt.query_row(
                    params![
                        d.id,
                        fields,
                        vector_to_blob(&d.vector),
                        s.map(|s| s.path.clone()),
                        s.map(|s| s.size as i64),
                        s.map(|s| s.mtime_ns),
                        s.map(|s| s.hash.clone()),
                        generation
                    ],
                    |r| r.get(0),
                )?;
                rowids.push(rowid);
            }
            Ok(rowids)
        })?;
        let count = docs.len();
        let mut mem = self.mem_mut();
        for (d, &rowid) in docs.into_iter().zip(&rowids) {
            mem.put(rowid, &d.id, d.fields, &d.vector);
        }
        let wants_ann = self.wants_ann(mem.len());
        self.ann.apply(&mem, &rowids, &[], wants_ann);
        self.lexical
            .apply(&mem, &self.info.spec, generation, &rowids, &[]);
        drop(mem);
        drop(conn);
        Ok(WriteReceipt { count, generation })
    }

    fn delete(&self, ids: &[String]) -> Result<WriteReceipt> {
        let mut conn = self.conn();
        let (removed, generation) = self.write(&mut conn, |tx, generation| {
            let mut del =
                tx.prepare_cached("DELETE FROM documents WHERE id = ?1 RETURNING rowid")?;
            let mut tomb =
                tx.prepare_cached("INSERT INTO tombstones(rowid, gen) VALUES (?1, ?2)")?;
            let mut removed = Vec::new();
            for id in ids {
                let rowid: Option<i64> = del.query_row([id], |r| r.get(0)).optional()?;
                if let Some(rowid) = rowid {
                    tomb.execute(params![rowid, generation])?;
                    removed.push(rowid);
                }
            }
            Ok(removed)
        })?;
        let mut mem = self.mem_mut();
        for id in ids {
            mem.remove(id);
        }
        let wants_ann = self.wants_ann(mem.len());
        self.ann.apply(&mem, &[], &removed, wants_ann);
        self.lexical
            .apply(&mem, &self.info.spec, generation, &[], &removed);
        Ok(WriteReceipt {
            count: removed.len(),
            generation,
        })
    }

    fn update_fields(&self, id: &str, fields: Fields) -> Result<WriteReceipt> {
        let mut conn = self.conn();
        let json = serde_json::Value::Object(fields.clone()).to_string();
        let (rowid, generation) = self.write(&mut conn, |tx, generation| {
            tx.query_row(
                "UPDATE documents SET fields = ?1, gen = ?2 WHERE id = ?3 RETURNING rowid",
                params![json, generation, id],
                |r| r.get::<_, i64>(0),
            )
            .optional()
        })?;
        let Some(rowid) = rowid else {
            return Err(SearchError::NotFound(id.to_string()));
        };
        let mut mem = self.mem_mut();
        if let Some(&slot) = mem.by_id.get(id) {
            mem.set_fields(slot, fields);
        }
        let wants_ann = self.wants_ann(mem.len());
        self.ann.apply(&mem, &[rowid], &[], wants_ann);
        self.lexical
            .apply(&mem, &self.info.spec, generation, &[rowid], &[]);
        Ok(WriteReceipt {
            count: 1,
            generation,
        })
    }

    fn get(&self, id: &str) -> Result<Option<Document>> {
        let mem = self.mem();
        Ok(mem.by_id.get(id).map(|&slot| Document {
            id: id.to_string(),
            fields: mem.fields[slot].clone(),
        }))
    }

    fn vector(&self, id: &str) -> Result<Option<Vec<f32>>> {
        let mem = self.mem();
        Ok(mem.by_id.get(id).map(|&slot| mem.vector(slot).to_vec()))
    }

    fn list(&self, skip: usize, limit: usize) -> Result<Vec<Document>> {
        // SQLite's LIMIT and OFFSET are signed: an offset past i64::MAX would wrap to a negative
        // one, which SQLite reads as none (the first page). No collection has that many rows.
        let (Ok(skip), Ok(limit)) = (
            i64::try_from(skip),
            i64::try_from(limit.min(i64::MAX as usize)),
        ) else {
            return Ok(Vec::new());
        };
        if limit == 0 {
            return Ok(Vec::new());
        }
        let conn = self.conn();
        let e = db_err(&self.db_path);
        let mut stmt = conn
            .prepare_cached("SELECT id, fields FROM documents ORDER BY id LIMIT ?1 OFFSET ?2")
            .map_err(&e)?;
        let rows = stmt
            .query_map(params![limit, skip], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
            })
            .map_err(&e)?;
        let rows = rows.collect::<rusqlite::Result<Vec<_>>>().map_err(&e)?;
        rows.into_iter()
            .map(|(id, fields)| {
                let fields = parse_fields(&self.dir, &id, &fields)?;
                Ok(Document { id, fields })
            })
            .collect()
    }

    fn search(&self, request: &SearchRequest) -> Result<Vec<Hit>> {
        let k = request.limit.saturating_add(request.offset);
        if k == 0 {
            return Ok(Vec::new());
        }
        let mem = self.mem();
        if let Some(filter) = &request.filter {
            mem.payload
                .check_filter(filter)
                .map_err(SearchError::Invalid)?;
        }
        let text = request
            .text
            .as_deref()
            .map(str::trim)
            .filter(|t| !t.is_empty());
        let ranked: Vec<(usize, f32, Option<f32>, Option<f32>)> = match (&request.vector, text) {
            (None, None) => {
                return Err(SearchError::Invalid(
                    "a query needs a vector (text/image) or lexical text".into(),
                ))
            }
            (Some(v), None) => self
                .vector_search(&mem, v, k, request)?
                .into_iter()
                .map(|(s, c)| (s, c, Some(c), None))
                .collect(),
            (None, Some(t)) => self
                .lexical
                .search(&mem, t, k, request.filter.as_ref())?
                .into_iter()
                .map(|(s, b)| (s, b, None, Some(b)))
                .collect(),
            (Some(v), Some(t)) => {
                // Each side ranks a deeper list than asked, so that fusion has overlap to use.
                let depth = k.max(50) * 2;
                let vec_hits = self.vector_search(&mem, v, depth, request)?;
                let lex_hits = self
                    .lexical
                    .search(&mem, t, depth, request.filter.as_ref())?;
                fuse(&vec_hits, &lex_hits, request.fusion)
            }
        };
        Ok(ranked
            .into_iter()
            .skip(request.offset)
            .take(request.limit)
            .map(|(slot, score, cosine, bm25)| {
                let mut h = self.hit(&mem, slot, score);
                if request.vector.is_some() && text.is_some() {
                    h.cosine = cosine;
                    h.bm25 = bm25;
                }
                h
            })
            .collect())
    }

    fn sources(&self) -> Result<Vec<(String, FileState)>> {
        let conn = self.conn();
        let e = db_err(&self.db_path);
        let mut stmt = conn
            .prepare("SELECT id, source_path, source_size, source_mtime, source_hash FROM documents WHERE source_path IS NOT NULL")
            .map_err(&e)?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    FileState {
                        path: r.get(1)?,
                        size: r.get::<_, i64>(2)? as u64,
                        mtime_ns: r.get(3)?,
                        hash: r.get(4)?,
                    },
                ))
            })
            .map_err(&e)?;
        rows.collect::<rusqlite::Result<Vec<_>>>().map_err(&e)
    }

    fn update_sources(&self, states: &[(String, FileState)]) -> Result<WriteReceipt> {
        let mut conn = self.conn();
        // Only file metadata changes: no derived index depends on it, so rows keep their gen.
        let (count, generation) = self.write(&mut conn, |tx, _| {
            let mut stmt = tx.prepare_cached(
                "UPDATE documents SET source_path = ?1, source_size = ?2, source_mtime = ?3, source_hash = ?4 WHERE id = ?5",
            )?;
            let mut n = 0;
            for (id, s) in states {
                n += stmt.execute(params![s.path, s.size as i64, s.mtime_ns, s.hash, id])?;
            }
            Ok(n)
        })?;
        Ok(WriteReceipt { count, generation })
    }

    fn flush(&self) -> Result<()> {
        let conn = self.conn();
        let generation = read_generation(&conn, &self.dir)?;
        let mem = self.mem();
        let wants_ann = self.wants_ann(mem.len());
        let ann_gen = self.ann.save(&mem, generation, wants_ann)?;
        let lex_gen = self.lexical.save()?;
        // Tombstones older than every saved index are no longer needed for catching up.
        let keep_from = ann_gen
            .unwrap_or(generation)
            .min(lex_gen.unwrap_or(generation));
        conn.execute("DELETE FROM tombstones WHERE gen <= ?1", [keep_from as i64])
            .map_err(db_err(&self.db_path))?;
        Ok(())
    }
}

/// Merges vector hits `(slot, cosine)` and lexical hits `(slot, bm25)`, both best first.
fn fuse(
    vector: &[(usize, f32)],
    lexical: &[(usize, f32)],
    fusion: Fusion,
) -> Vec<(usize, f32, Option<f32>, Option<f32>)> {
    let mut acc: HashMap<usize, (f32, Option<f32>, Option<f32>)> = HashMap::new();
    let max_bm25 = lexical.iter().map(|h| h.1).fold(0.0f32, f32::max);
    for (rank, &(slot, cos)) in vector.iter().enumerate() {
        let add = match fusion {
            Fusion::Rrf { k } => 1.0 / (k + rank as f32 + 1.0),
            Fusion::Weighted { vector, .. } => vector * cos,
        };
        let e = acc.entry(slot).or_insert((0.0, None, None));
        e.0 += add;
        e.1 = Some(cos);
    }
    for (rank, &(slot, bm25)) in lexical.iter().enumerate() {
        let add = match fusion {
            Fusion::Rrf { k } => 1.0 / (k + rank as f32 + 1.0),
            Fusion::Weighted { lexical, .. } if max_bm25 > 0.0 => lexical * bm25 / max_bm25,
            Fusion::Weighted { .. } => 0.0,
        };
        let e = acc.entry(slot).or_insert((0.0, None, None));
        e.0 += add;
        e.2 = Some(bm25);
    }
    let mut out: Vec<(usize, f32, Option<f32>, Option<f32>)> = acc
        .into_iter()
        .map(|(slot, (s, c, b))| (slot, s, c, b))
        .collect();
    out.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    out
}

//! The embedded backend: one directory holding a SQLite database (WAL mode; documents, fields,
//! vectors, the collection's model and spec) that is the source of truth, and derived indexes
//! beside it that are rebuilt from it when missing or stale.
//!
//! Every write is one transaction that also bumps the collection's *generation*; each document
//! row records the generation that last wrote it and each deletion leaves a tombstone, so a
//! derived index saved at generation `g` catches up by replaying what changed after `g`.
//!
//! Here: the store (opening, the write transaction, catching the derived indexes up) and the
//! [`Store`] operations. The tables, rows and lock file are in `schema.rs`; the documents held in
//! memory in `memory.rs`; how a search runs in `planner.rs`.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, RwLock};

use rusqlite::{params, Connection, OptionalExtension};

use crate::ann::AnnState;
use crate::document::{Document, Fields};
use crate::error::{corrupt, db_err, io_err, Result, SearchError};
use crate::lexical::LexicalState;
use crate::memory::{Changes, Mem};
use crate::planner::Planner;
use crate::store::{
    CollectionInfo, FileState, Hit, NewDocument, SearchRequest, Store, WriteReceipt,
};

mod schema;

pub use crate::planner::StoreOptions;
pub(crate) use schema::{
    check_schema_version, decode_vector, lock_collection, now_unix, parse_fields, read_generation,
    read_info,
};
use schema::{connect, vector_to_blob, SCHEMA_VERSION};
pub use schema::{DB_FILE, LOCK_FILE};

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

impl SqliteStore {
    /// True when `dir` holds a collection database.
    pub fn exists(dir: &Path) -> bool {
        schema::exists(dir)
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
        let conn = connect(&db_path)?;
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
        let conn = connect(&db_path)?;
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

    /// Brings the derived indexes to the database's generation: loads them, replays the changes
    /// since their generation, or rebuilds them from the documents.
    fn sync_derived(&self) -> Result<()> {
        let conn = self.conn();
        let generation = read_generation(&conn, &self.dir)?;
        let mem = self.mem();
        let changes = |since: u64| -> Result<Changes> { self.changes_since(&conn, since) };
        if self.options.wants_ann(mem.len()) {
            self.ann.sync(&mem, generation, &changes)?;
        }
        self.lexical
            .sync(&mem, &self.info.spec, generation, &changes)?;
        Ok(())
    }

    fn changes_since(&self, conn: &Connection, since: u64) -> Result<Changes> {
        let e = db_err(&self.db_path);
        // The rowids a query over one table selects for generations after `since`.
        let rowids = |sql: &str| -> Result<Vec<i64>> {
            let mut stmt = conn.prepare(sql).map_err(&e)?;
            let rows = stmt
                .query_map([since as i64], |r| r.get::<_, i64>(0))
                .map_err(&e)?;
            rows.collect::<rusqlite::Result<Vec<_>>>().map_err(&e)
        };
        Ok(Changes {
            removed: rowids("SELECT rowid FROM tombstones WHERE gen > ?1")?,
            written: rowids("SELECT rowid FROM documents WHERE gen > ?1")?,
        })
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
        let wants_ann = self.options.wants_ann(mem.len());
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
        let wants_ann = self.options.wants_ann(mem.len());
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
        let wants_ann = self.options.wants_ann(mem.len());
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
        let mem = self.mem();
        Planner {
            mem: &mem,
            ann: &self.ann,
            lexical: &self.lexical,
            spec: &self.info.spec,
            options: &self.options,
        }
        .search(request)
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
        let wants_ann = self.options.wants_ann(mem.len());
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

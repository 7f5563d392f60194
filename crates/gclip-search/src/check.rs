//! Verifying a collection (`gclip check`; for a collection on a Milvus server see
//! [`crate::milvus::check_collection`]): the database's integrity, every stored document, the
//! generation counter, and the derived indexes (HNSW, lexical) against the database. With
//! `repair`, the derived indexes are rebuilt from the database; documents are never changed,
//! unless `quarantine` is also asked for: then bad documents are first written out in full to
//! `quarantine/` inside the collection and removed from it, so that the rest opens again.
//!
//! What is checked, and what is not:
//! - SQLite's `PRAGMA integrity_check`; the `meta` table (schema version, collection info,
//!   generation counter) and that no row was written at a generation after the counter.
//! - Every document: its fields are a JSON object; its vector has the collection's dimension,
//!   only finite values, and unit length within [`NORM_TOLERANCE`] (vectors are stored
//!   normalised). A bad document is reported by id, never deleted.
//! - The HNSW index (when the collection is large enough to use one): its metadata, that its
//!   graph loads, and, when it was saved at the database's generation, that it holds exactly
//!   the collection's documents. One saved earlier is caught up at the next open (a note).
//! - The lexical index: that it opens and every segment reads, its generation, and, when it is
//!   at the database's generation, that it holds exactly the documents that have text.
//! - The 8-bit codes and the payload (field value) index live in memory only and are rebuilt
//!   from the vectors and fields at every open: there is nothing of them on disk to check.

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags};

use crate::ann::{self, AnnParams, Hnsw, SavedState};
use crate::collection::Location;
use crate::error::{db_err, io_err, Result, SearchError};
use crate::lexical::{self, document_text};
use crate::milvus::MilvusOptions;
use crate::sqlite::{self, SqliteStore, StoreOptions, DB_FILE};

/// How far a stored vector's length may be from 1.
pub const NORM_TOLERANCE: f32 = 1e-3;

/// At most this many lines of `PRAGMA integrity_check` output are reported.
const MAX_INTEGRITY_LINES: usize = 20;

/// How to check.
#[derive(Debug, Clone, Default)]
pub struct CheckOptions {
    /// Rebuild the derived indexes from the database (when the documents are sound).
    pub repair: bool,
    /// With `repair`: move the bad documents out of the collection first, into a JSON Lines
    /// file under `quarantine/` (id, fields as stored, source path, what was wrong).
    pub quarantine: bool,
    /// The store's options (the HNSW threshold decides whether an HNSW index is expected).
    pub store: StoreOptions,
}

/// Which part of a collection a problem is in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Component {
    /// The SQLite file itself (integrity check, unreadable tables).
    Database,
    /// The `meta` table: schema version, collection info, generation counter.
    Meta,
    /// One stored document, by id (or `rowid N` when even the id does not read).
    Document(String),
    /// The HNSW index (derived: `--repair` rebuilds it).
    Hnsw,
    /// The lexical index (derived: `--repair` rebuilds it).
    Lexical,
    /// A collection on a Milvus server as a whole (its count).
    Server,
}

impl Component {
    /// True for the indexes derived from the database, which a repair rebuilds.
    pub fn is_derived(&self) -> bool {
        matches!(self, Component::Hnsw | Component::Lexical)
    }
}

impl fmt::Display for Component {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Component::Database => f.write_str("database"),
            Component::Meta => f.write_str("meta"),
            Component::Document(id) => write!(f, "document {id:?}"),
            Component::Hnsw => f.write_str("HNSW index"),
            Component::Lexical => f.write_str("lexical index"),
            Component::Server => f.write_str("Milvus collection"),
        }
    }
}

/// One thing found wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub component: Component,
    pub message: String,
}

/// What a check found.
#[derive(Debug, Clone, Default)]
pub struct CheckReport {
    /// The collection directory; for a collection on a Milvus server its address (without
    /// the token).
    pub dir: PathBuf,
    /// Document rows read.
    pub documents: usize,
    /// The database's generation, when it reads.
    pub generation: Option<u64>,
    /// What is wrong; empty when the collection is sound.
    pub problems: Vec<Problem>,
    /// What is worth knowing but not wrong (a stale index that the next open catches up).
    pub notes: Vec<String>,
    /// What a repair did (empty without `repair`).
    pub repaired: Vec<String>,
    /// The SQLite rowids of the documents reported as bad, in the order found.
    pub bad_rowids: Vec<i64>,
    /// A collection on a Milvus server: nothing there is repaired by gclip.
    pub on_server: bool,
}

impl CheckReport {
    /// True when nothing is wrong.
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }

    /// The ids of the documents reported as bad.
    pub fn bad_documents(&self) -> Vec<&str> {
        self.problems
            .iter()
            .filter_map(|p| match &p.component {
                Component::Document(id) => Some(id.as_str()),
                _ => None,
            })
            .collect()
    }

    fn problem(&mut self, component: Component, message: impl Into<String>) {
        self.problems.push(Problem {
            component,
            message: message.into(),
        });
    }
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "collection {}: {} documents",
            self.dir.display(),
            self.documents
        )?;
        if let Some(g) = self.generation {
            write!(f, ", generation {g}")?;
        }
        writeln!(f)?;
        for r in &self.repaired {
            writeln!(f, "repaired: {r}")?;
        }
        for n in &self.notes {
            writeln!(f, "note: {n}")?;
        }
        for p in &self.problems {
            writeln!(f, "problem: {}: {}", p.component, p.message)?;
        }
        if self.is_clean() {
            write!(f, "ok: no problems found")
        } else {
            let derived = self
                .problems
                .iter()
                .filter(|p| p.component.is_derived())
                .count();
            write!(f, "{} problem(s)", self.problems.len())?;
            if self.on_server {
                return write!(
                    f,
                    "; a check changes nothing on a Milvus server: write the documents named \
                     again (gclip add) or delete them (gclip delete)"
                );
            }
            if derived > 0 && self.repaired.is_empty() {
                write!(
                    f,
                    "; `gclip check --repair` rebuilds the derived indexes ({derived} of them)"
                )?;
            }
            if derived < self.problems.len() {
                write!(
                    f,
                    "; documents are not changed by --repair alone (`--repair --quarantine` moves \
                     bad documents out to a file; database damage needs a backup)"
                )?;
            }
            Ok(())
        }
    }
}

/// Checks the collection in `dir`; with `options.repair`, rebuilds its derived indexes from the
/// database when the documents are sound, and returns the check made after the repair.
///
/// `dir` may be a `milvus://` address: then what a client can check is checked
/// ([`crate::milvus::check_collection`]), and `repair` is refused (Milvus keeps its own indexes).
///
/// Errors only when the collection cannot be examined at all (not a collection, open in
/// another process); everything found wrong inside it is a [`Problem`] in the report.
pub fn check_collection(dir: &Path, options: &CheckOptions) -> Result<CheckReport> {
    if let Location::Milvus(address) = Location::of(dir)? {
        if options.repair {
            return Err(SearchError::Invalid(format!(
                "{address}: --repair and --quarantine apply to collection directories; Milvus \
                 builds and keeps its own indexes, and a check never changes documents there"
            )));
        }
        return crate::milvus::check_collection(&address, MilvusOptions::from_env()?);
    }
    let report = {
        let _lock = sqlite::lock_collection(dir)?;
        examine(dir, &options.store)?
    };
    if !options.repair {
        return Ok(report);
    }
    let mut quarantined = None;
    let only_documents_bad = report
        .problems
        .iter()
        .all(|p| p.component.is_derived() || matches!(p.component, Component::Document(_)));
    if options.quarantine && only_documents_bad && !report.bad_rowids.is_empty() {
        let _lock = sqlite::lock_collection(dir)?;
        quarantined = Some(quarantine(dir, &report)?);
    } else if report.problems.iter().any(|p| !p.component.is_derived()) {
        let mut report = report;
        report.notes.push(
            "not repaired: the derived indexes are rebuilt from the documents, so the database \
             and document problems must be fixed first"
                .into(),
        );
        if options.quarantine && !only_documents_bad {
            report.notes.push(
                "not quarantined: only bad documents are moved out; the database and meta \
                 problems above need a backup"
                    .into(),
            );
        }
        return Ok(report);
    }
    // Opening with the derived indexes removed rebuilds them; flushing saves them.
    let store = SqliteStore::open_rebuilding(dir, options.store.clone())?;
    crate::store::Store::flush(&store)?;
    drop(store);
    let mut after = {
        let _lock = sqlite::lock_collection(dir)?;
        examine(dir, &options.store)?
    };
    if let Some((file, count)) = quarantined {
        after.repaired.push(format!(
            "moved {count} bad document(s) out of the collection into {}",
            file.display()
        ));
    }
    after
        .repaired
        .push(if after.documents >= options.store.exact_below {
            "rebuilt the HNSW index and the lexical index from the database".into()
        } else {
            format!(
                "rebuilt the lexical index from the database (no HNSW index below {} documents: \
             search is exact)",
                options.store.exact_below
            )
        });
    Ok(after)
}

/// Writes the bad documents of `report` to a new file under `DIR/quarantine/` (synced before
/// anything is deleted), then deletes them in one write that bumps the generation and leaves
/// tombstones, as a deletion through the store does. Returns the file and how many moved.
/// The caller holds the collection's lock.
fn quarantine(dir: &Path, report: &CheckReport) -> Result<(PathBuf, usize)> {
    use std::io::Write;
    let db_path = dir.join(DB_FILE);
    let mut conn = Connection::open(&db_path).map_err(db_err(&db_path))?;
    let folder = dir.join("quarantine");
    std::fs::create_dir_all(&folder).map_err(io_err(&folder))?;
    let generation = report.generation.unwrap_or(0);
    let stamp = sqlite::now_unix();
    let file_path = folder.join(format!("generation-{generation}-{stamp}.jsonl"));
    let mut lines = String::new();
    {
        let mut stmt = conn
            .prepare("SELECT id, fields, source_path FROM documents WHERE rowid = ?1")
            .map_err(db_err(&db_path))?;
        for &rowid in &report.bad_rowids {
            // Each column as far as it reads: the point is to lose nothing that can be saved.
            let row = stmt
                .query_row([rowid], |r| {
                    Ok((
                        r.get::<_, String>(0).ok(),
                        r.get::<_, String>(1).ok(),
                        r.get::<_, Option<String>>(2).ok().flatten(),
                    ))
                })
                .map_err(db_err(&db_path))?;
            let label = match &row.0 {
                Some(id) => Component::Document(id.clone()),
                None => Component::Document(format!("rowid {rowid}")),
            };
            let problems: Vec<&str> = report
                .problems
                .iter()
                .filter(|p| p.component == label)
                .map(|p| p.message.as_str())
                .collect();
            let line = serde_json::json!({
                "rowid": rowid,
                "id": row.0,
                "fields": row.1,
                "source_path": row.2,
                "problems": problems,
            });
            lines.push_str(&line.to_string());
            lines.push('\n');
        }
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&file_path)
        .map_err(io_err(&file_path))?;
    file.write_all(lines.as_bytes())
        .and_then(|_| file.sync_all())
        .map_err(io_err(&file_path))?;
    std::fs::File::open(&folder)
        .and_then(|d| d.sync_all())
        .map_err(io_err(&folder))?;

    let tx = conn.transaction().map_err(db_err(&db_path))?;
    let next = sqlite::read_generation(&tx, dir)?
        .checked_add(1)
        .ok_or_else(|| {
            crate::error::corrupt(dir, "meta table: key \"generation\" is at its maximum")
        })?;
    let write = |tx: &rusqlite::Transaction| -> rusqlite::Result<()> {
        for &rowid in &report.bad_rowids {
            tx.execute("DELETE FROM documents WHERE rowid = ?1", [rowid])?;
            tx.execute(
                "INSERT INTO tombstones(rowid, gen) VALUES (?1, ?2)",
                [rowid, next as i64],
            )?;
        }
        tx.execute(
            "UPDATE meta SET value = ?1 WHERE key = 'generation'",
            [next.to_string()],
        )?;
        Ok(())
    };
    write(&tx).map_err(db_err(&db_path))?;
    tx.commit().map_err(db_err(&db_path))?;
    Ok((file_path, report.bad_rowids.len()))
}

/// The whole check, read-only. The caller holds the collection's lock.
fn examine(dir: &Path, store: &StoreOptions) -> Result<CheckReport> {
    let mut report = CheckReport {
        dir: dir.to_path_buf(),
        ..Default::default()
    };
    let db_path = dir.join(DB_FILE);
    let conn = Connection::open_with_flags(
        &db_path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(db_err(&db_path))?;

    // 1. The file.
    let integrity = (|| -> rusqlite::Result<Vec<String>> {
        let mut stmt = conn.prepare("PRAGMA integrity_check")?;
        let lines = stmt
            .query_map([], |r| r.get::<_, String>(0))?
            .collect::<rusqlite::Result<Vec<String>>>()?;
        Ok(lines)
    })();
    match integrity {
        Err(e) => {
            report.problem(Component::Database, format!("{}: {e}", db_path.display()));
            return Ok(report);
        }
        Ok(lines) if lines != ["ok"] => {
            for l in lines.iter().take(MAX_INTEGRITY_LINES) {
                report.problem(Component::Database, format!("integrity check: {l}"));
            }
            if lines.len() > MAX_INTEGRITY_LINES {
                report.problem(
                    Component::Database,
                    format!(
                        "integrity check: {} more lines",
                        lines.len() - MAX_INTEGRITY_LINES
                    ),
                );
            }
        }
        Ok(_) => {}
    }

    // 2. The meta table.
    let meta_problem = |e: SearchError| match e {
        SearchError::Corrupt { message, .. } => message,
        e => e.to_string(),
    };
    if let Err(e) = sqlite::check_schema_version(&conn, dir) {
        report.problem(Component::Meta, meta_problem(e));
        return Ok(report);
    }
    let info = match sqlite::read_info(&conn, dir) {
        Ok(i) => i,
        Err(e) => {
            // Without the dimension and spec nothing else can be judged.
            report.problem(Component::Meta, meta_problem(e));
            return Ok(report);
        }
    };
    let generation = match sqlite::read_generation(&conn, dir) {
        Ok(g) => Some(g),
        Err(e) => {
            report.problem(Component::Meta, meta_problem(e));
            None
        }
    };
    report.generation = generation;
    if let Some(g) = generation {
        for table in ["documents", "tombstones"] {
            let max: rusqlite::Result<Option<i64>> =
                conn.query_row(&format!("SELECT MAX(gen) FROM {table}"), [], |r| r.get(0));
            match max {
                Ok(Some(m)) if m > g as i64 => report.problem(
                    Component::Meta,
                    format!(
                        "meta table: key \"generation\" is {g}, but the {table} table has rows \
                         written at generation {m}"
                    ),
                ),
                Ok(_) => {}
                Err(e) => report.problem(Component::Database, format!("{table} table: {e}")),
            }
        }
    }

    // 3. The documents.
    let dim = info.model.dim;
    let mut rowids: Vec<u64> = Vec::new();
    let mut with_text: Vec<u64> = Vec::new();
    // Documents whose fields do not read: whether the lexical index should hold them is unknown.
    let mut unknown_text: HashSet<u64> = HashSet::new();
    let scan = (|| -> rusqlite::Result<()> {
        let mut stmt =
            conn.prepare("SELECT rowid, id, fields, vector FROM documents ORDER BY rowid")?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            report.documents += 1;
            let rowid: i64 = row.get(0)?;
            rowids.push(rowid as u64);
            let id = match row.get::<_, String>(1) {
                Ok(id) => id,
                Err(e) => {
                    unknown_text.insert(rowid as u64);
                    report.bad_rowids.push(rowid);
                    report.problem(
                        Component::Document(format!("rowid {rowid}")),
                        format!("documents table: the id does not read: {e}"),
                    );
                    continue;
                }
            };
            let mut bad = |message: String| {
                if report.bad_rowids.last() != Some(&rowid) {
                    report.bad_rowids.push(rowid);
                }
                report.problem(Component::Document(id.clone()), message);
            };
            match row.get::<_, String>(2) {
                Ok(text) => match sqlite::parse_fields(dir, &id, &text) {
                    Ok(fields) => {
                        if !document_text(&fields, &info.spec).is_empty() {
                            with_text.push(rowid as u64);
                        }
                    }
                    Err(e) => {
                        unknown_text.insert(rowid as u64);
                        bad(meta_problem(e))
                    }
                },
                Err(e) => {
                    unknown_text.insert(rowid as u64);
                    bad(format!("documents table: the fields do not read: {e}"))
                }
            }
            match row.get::<_, Vec<u8>>(3) {
                Ok(blob) => match sqlite::decode_vector(dir, &id, &blob, dim) {
                    Ok(v) => {
                        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
                        if (norm - 1.0).abs() > NORM_TOLERANCE {
                            bad(format!(
                                "documents table: document {id:?} has a vector of length {norm}, \
                                 not 1 (vectors are stored normalised)"
                            ));
                        }
                    }
                    Err(e) => bad(meta_problem(e)),
                },
                Err(e) => bad(format!("documents table: the vector does not read: {e}")),
            }
        }
        Ok(())
    })();
    if let Err(e) = scan {
        report.problem(Component::Database, format!("documents table: {e}"));
        return Ok(report);
    }

    // 4. The derived indexes, against the database's generation.
    let Some(generation) = generation else {
        report.notes.push(
            "the derived indexes are not checked: their generations cannot be compared with a \
             damaged counter"
                .into(),
        );
        return Ok(report);
    };
    check_hnsw(dir, dim, generation, &rowids, store, &mut report);
    check_lexical(dir, generation, &mut with_text, &unknown_text, &mut report);
    Ok(report)
}

fn check_hnsw(
    dir: &Path,
    dim: usize,
    generation: u64,
    rowids: &[u64],
    store: &StoreOptions,
    report: &mut CheckReport,
) {
    if rowids.len() < store.exact_below {
        // The store keeps no HNSW index at this size (search is exact); it never reads one.
        return;
    }
    let params = AnnParams::default();
    let meta = match ann::inspect_saved(dir, dim, params, generation) {
        SavedState::Absent => {
            report.problem(
                Component::Hnsw,
                format!(
                    "{}: missing ({} documents, above the exact-search threshold of {}); the \
                     next open rebuilds it",
                    dir.join(ann::ANN_FILE).display(),
                    rowids.len(),
                    store.exact_below
                ),
            );
            return;
        }
        SavedState::Outdated(why) => {
            report
                .notes
                .push(format!("{why}; the next open rebuilds the HNSW index"));
            return;
        }
        SavedState::Damaged(why) => {
            report.problem(Component::Hnsw, why);
            return;
        }
        SavedState::Readable(meta) => meta,
    };
    let path = dir.join(ann::ANN_FILE);
    let h = match Hnsw::load(&path, dim, params) {
        Ok(h) => h,
        Err(e) => {
            report.problem(
                Component::Hnsw,
                format!("{}: does not load: {e}", path.display()),
            );
            return;
        }
    };
    if meta.generation < generation {
        report.notes.push(format!(
            "HNSW index saved at generation {}, the database is at {generation}: the next open \
             catches it up",
            meta.generation
        ));
        return;
    }
    if h.len() != meta.count {
        report.problem(
            Component::Hnsw,
            format!(
                "{}: holds {} vectors, its metadata says {}",
                path.display(),
                h.len(),
                meta.count
            ),
        );
    }
    let missing = rowids.iter().filter(|&&r| !h.contains(r)).count();
    if h.len() != rowids.len() || missing > 0 {
        report.problem(
            Component::Hnsw,
            format!(
                "{}: holds {} vectors for {} documents ({missing} documents missing) at the \
                 same generation",
                path.display(),
                h.len(),
                rowids.len()
            ),
        );
    }
}

fn check_lexical(
    dir: &Path,
    generation: u64,
    with_text: &mut [u64],
    unknown: &HashSet<u64>,
    report: &mut CheckReport,
) {
    let path = dir.join(lexical::LEXICAL_DIR);
    let saved = match lexical::inspect_saved(dir) {
        Ok(Some(s)) => s,
        Ok(None) => {
            report.problem(
                Component::Lexical,
                format!("{}: missing; the next open rebuilds it", path.display()),
            );
            return;
        }
        Err(e) => {
            report.problem(Component::Lexical, e.to_string());
            return;
        }
    };
    if saved.generation > generation {
        report.problem(
            Component::Lexical,
            format!(
                "{}: committed at generation {}, after the database's {generation}",
                path.display(),
                saved.generation
            ),
        );
        return;
    }
    if saved.generation < generation {
        report.notes.push(format!(
            "lexical index committed at generation {}, the database is at {generation}: the \
             next open catches it up",
            saved.generation
        ));
        return;
    }
    with_text.sort_unstable();
    let mut saved_rowids = saved.rowids;
    saved_rowids.retain(|r| !unknown.contains(r));
    if saved_rowids != with_text {
        let have: HashSet<u64> = saved_rowids.iter().copied().collect();
        let want: HashSet<u64> = with_text.iter().copied().collect();
        report.problem(
            Component::Lexical,
            format!(
                "{}: holds {} documents, the database {} with text ({} missing, {} not in the \
                 database or duplicated) at the same generation",
                path.display(),
                saved_rowids.len(),
                with_text.len(),
                want.difference(&have).count(),
                saved_rowids.len() - (have.intersection(&want).count())
            ),
        );
    }
}

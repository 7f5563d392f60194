//! The lexical index: BM25 (tantivy) over a document's text, kept beside the database like the
//! HNSW index: its commits carry the collection generation they reflect, and it is caught up or
//! rebuilt from the database when stale or missing.
//!
//! A document's indexed text is every string (and list of strings) among its fields, except the
//! image paths of the collection's image fields.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde_json::Value;
use tantivy::collector::TopDocs;
use tantivy::query::QueryParser;
use tantivy::schema::{Field, Schema, FAST, INDEXED, STORED, TEXT};
use tantivy::{doc, Index, IndexReader, IndexWriter, ReloadPolicy, Term};

use crate::document::{EmbedSpec, Fields};
use crate::error::{Result, SearchError};
use crate::filter::Filter;
use crate::memory::{Changes, Mem};

/// The lexical index directory inside a collection directory.
pub const LEXICAL_DIR: &str = "lexical";

fn lex_err(e: impl std::fmt::Display) -> SearchError {
    SearchError::Lexical(e.to_string())
}

struct Lex {
    index: Index,
    writer: Option<IndexWriter>,
    reader: IndexReader,
    rowid: Field,
    body: Field,
    /// Generation of the last committed state.
    committed: u64,
    /// Generation of the last applied, not yet committed, write.
    pending: Option<u64>,
}

/// The text a document contributes to the lexical index.
pub fn document_text(fields: &Fields, spec: &EmbedSpec) -> String {
    let mut out = String::new();
    let images: Vec<&str> = spec.image_fields().collect();
    for (name, value) in fields {
        if images.contains(&name.as_str()) {
            continue;
        }
        let mut push = |s: &str| {
            if !out.is_empty() {
                out.push('\n');
            }
            out.push_str(s);
        };
        match value {
            Value::String(s) => push(s),
            Value::Array(items) => items.iter().filter_map(Value::as_str).for_each(push),
            _ => {}
        }
    }
    out
}

impl Lex {
    fn schema() -> (Schema, Field, Field) {
        let mut b = Schema::builder();
        let rowid = b.add_u64_field("rowid", INDEXED | FAST | STORED);
        let body = b.add_text_field("body", TEXT);
        (b.build(), rowid, body)
    }

    fn open(dir: &Path) -> Result<Self> {
        let named = |e: &dyn std::fmt::Display| lex_err(format!("{}: {e}", dir.display()));
        let index = Index::open_in_dir(dir).map_err(|e| named(&e))?;
        let (schema, rowid, body) = Self::schema();
        if index.schema() != schema {
            return Err(named(&"the schema differs from this gclip's"));
        }
        let payload = index.load_metas().map_err(|e| named(&e))?.payload;
        let committed = match payload.as_deref().map(str::parse::<u64>) {
            Some(Ok(g)) => g,
            Some(Err(e)) => {
                return Err(named(&format!(
                    "the last commit's generation {payload:?} does not parse: {e}"
                )))
            }
            None => return Err(named(&"no generation in the last commit")),
        };
        Self::with_index(index, rowid, body, committed).map_err(|e| named(&e))
    }

    fn create(dir: &Path) -> Result<Self> {
        if dir.exists() {
            std::fs::remove_dir_all(dir).map_err(lex_err)?;
        }
        std::fs::create_dir_all(dir).map_err(lex_err)?;
        let (schema, rowid, body) = Self::schema();
        let index = Index::create_in_dir(dir, schema).map_err(lex_err)?;
        Self::with_index(index, rowid, body, 0)
    }

    fn with_index(index: Index, rowid: Field, body: Field, committed: u64) -> Result<Self> {
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()
            .map_err(lex_err)?;
        Ok(Self {
            index,
            writer: None,
            reader,
            rowid,
            body,
            committed,
            pending: None,
        })
    }

    fn writer(&mut self) -> Result<&mut IndexWriter> {
        if self.writer.is_none() {
            let w = self
                .index
                .writer_with_num_threads(1, 32_000_000)
                .map_err(lex_err)?;
            self.writer = Some(w);
        }
        self.writer.as_mut().ok_or_else(|| lex_err("no writer"))
    }

    fn put(&mut self, rowid: i64, text: &str) -> Result<()> {
        let (rf, bf) = (self.rowid, self.body);
        let w = self.writer()?;
        w.delete_term(Term::from_field_u64(rf, rowid as u64));
        if !text.is_empty() {
            w.add_document(doc!(rf => rowid as u64, bf => text))
                .map_err(lex_err)?;
        }
        Ok(())
    }

    fn remove(&mut self, rowid: i64) -> Result<()> {
        let rf = self.rowid;
        self.writer()?
            .delete_term(Term::from_field_u64(rf, rowid as u64));
        Ok(())
    }

    fn commit(&mut self) -> Result<()> {
        let Some(generation) = self.pending else {
            return Ok(());
        };
        let w = self.writer()?;
        let mut prepared = w.prepare_commit().map_err(lex_err)?;
        prepared.set_payload(&generation.to_string());
        prepared.commit().map_err(lex_err)?;
        self.reader.reload().map_err(lex_err)?;
        self.committed = generation;
        self.pending = None;
        Ok(())
    }
}

/// What a saved lexical index holds: the generation of its last commit and the rowids of its
/// documents, read from every segment (so that unreadable segment files are found).
pub(crate) struct SavedLexical {
    pub generation: u64,
    pub rowids: Vec<u64>,
}

/// Opens the lexical index of the collection in `collection_dir` read-only; `Ok(None)` when
/// there is none.
pub(crate) fn inspect_saved(collection_dir: &Path) -> Result<Option<SavedLexical>> {
    let dir = collection_dir.join(LEXICAL_DIR);
    if !dir.exists() {
        return Ok(None);
    }
    let l = Lex::open(&dir)?;
    let searcher = l.reader.searcher();
    let mut rowids = Vec::new();
    for seg in searcher.segment_readers() {
        let col = seg.fast_fields().u64("rowid").map_err(lex_err)?;
        let alive = seg.alive_bitset();
        for doc in 0..seg.max_doc() {
            if alive.is_some_and(|a| !a.is_alive(doc)) {
                continue;
            }
            if let Some(r) = col.first(doc) {
                rowids.push(r);
            }
        }
    }
    rowids.sort_unstable();
    Ok(Some(SavedLexical {
        generation: l.committed,
        rowids,
    }))
}

/// The lexical index of a store.
pub(crate) struct LexicalState {
    dir: PathBuf,
    inner: Mutex<Option<Lex>>,
}

impl LexicalState {
    pub fn new(collection_dir: &Path) -> Self {
        Self {
            dir: collection_dir.join(LEXICAL_DIR),
            inner: Mutex::new(None),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Lex>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Opens the index and replays the changes since its last commit, or rebuilds it.
    pub fn sync(
        &self,
        mem: &Mem,
        spec: &EmbedSpec,
        generation: u64,
        changes: &dyn Fn(u64) -> Result<Changes>,
    ) -> Result<()> {
        let mut inner = self.lock();
        if inner.is_some() {
            return Ok(());
        }
        // Derived from the database: an index that cannot be used is rebuilt from it, with a
        // warning naming what was wrong (a missing one, e.g. a new collection, quietly).
        let opened = if !self.dir.exists() {
            None
        } else {
            match Lex::open(&self.dir) {
                Ok(l) if l.committed <= generation => Some(l),
                Ok(l) => {
                    tracing::warn!(
                        "{}: committed at generation {}, after the database's {generation}; \
                         rebuilding it",
                        self.dir.display(),
                        l.committed
                    );
                    None
                }
                Err(e) => {
                    tracing::warn!(
                        "{}: does not open ({e}); rebuilding it from the database",
                        self.dir.display()
                    );
                    None
                }
            }
        };
        let lex = match opened {
            Some(mut l) => {
                let since = l.committed;
                if since < generation {
                    let c = changes(since)?;
                    apply_changes(&mut l, mem, spec, &c.written, &c.removed)?;
                    l.pending = Some(generation);
                    l.commit()?;
                }
                l
            }
            None => {
                tracing::info!(count = mem.len(), "building lexical index");
                let mut l = Lex::create(&self.dir)?;
                let all: Vec<i64> = (0..mem.alive.len())
                    .filter(|&s| mem.alive[s])
                    .map(|s| mem.rowids[s])
                    .collect();
                apply_changes(&mut l, mem, spec, &all, &[])?;
                l.pending = Some(generation);
                l.commit()?;
                l
            }
        };
        *inner = Some(lex);
        Ok(())
    }

    /// Applies a committed write (made visible to searches at the next search or save).
    pub fn apply(
        &self,
        mem: &Mem,
        spec: &EmbedSpec,
        generation: u64,
        written: &[i64],
        removed: &[i64],
    ) {
        let mut inner = self.lock();
        let Some(l) = inner.as_mut() else { return };
        match apply_changes(l, mem, spec, written, removed) {
            Ok(()) => l.pending = Some(generation),
            Err(e) => {
                // The database holds the write; the index is rebuilt on the next open.
                tracing::warn!("lexical index update failed, dropping it: {e}");
                *inner = None;
                let _ = std::fs::remove_dir_all(&self.dir);
            }
        }
    }

    /// BM25 search; `(slot, score)` best first, `k` of them that pass the filter.
    pub fn search(
        &self,
        mem: &Mem,
        text: &str,
        k: usize,
        filter: Option<&Filter>,
    ) -> Result<Vec<(usize, f32)>> {
        let mut inner = self.lock();
        let Some(l) = inner.as_mut() else {
            return Err(SearchError::Lexical(
                "the lexical index is not available".into(),
            ));
        };
        l.commit()?;
        let parser = QueryParser::for_index(&l.index, vec![l.body]);
        // Lenient: user text is words, not query syntax; what does not parse is dropped.
        let (query, _) = parser.parse_query_lenient(text);
        let searcher = l.reader.searcher();
        let k = k.min(mem.len());
        if k == 0 {
            return Ok(Vec::new());
        }
        let mut fetch = k.max(10);
        loop {
            let top = searcher
                .search(&query, &TopDocs::with_limit(fetch).order_by_score())
                .map_err(lex_err)?;
            let exhausted = top.len() < fetch;
            let mut out = Vec::new();
            for (score, addr) in top {
                let seg = searcher.segment_reader(addr.segment_ord);
                let col = seg.fast_fields().u64("rowid").map_err(lex_err)?;
                let Some(rowid) = col.first(addr.doc_id) else {
                    continue;
                };
                let Some(&slot) = mem.by_rowid.get(&(rowid as i64)) else {
                    continue;
                };
                if !mem.alive[slot] {
                    continue;
                }
                if filter.is_some_and(|f| !f.matches(&mem.ids[slot], &mem.fields[slot])) {
                    continue;
                }
                out.push((slot, score));
                if out.len() == k {
                    break;
                }
            }
            if out.len() >= k || exhausted || fetch >= mem.len().max(1) {
                return Ok(out);
            }
            fetch = fetch.saturating_mul(4);
        }
    }

    /// Commits pending writes; returns the generation the index reflects.
    pub fn save(&self) -> Result<Option<u64>> {
        let mut inner = self.lock();
        let Some(l) = inner.as_mut() else {
            return Ok(None);
        };
        l.commit()?;
        Ok(Some(l.committed))
    }
}

fn apply_changes(
    l: &mut Lex,
    mem: &Mem,
    spec: &EmbedSpec,
    written: &[i64],
    removed: &[i64],
) -> Result<()> {
    for &r in removed {
        l.remove(r)?;
    }
    for &r in written {
        match mem.by_rowid.get(&r) {
            Some(&slot) => l.put(r, &document_text(&mem.fields[slot], spec))?,
            None => l.remove(r)?,
        }
    }
    Ok(())
}

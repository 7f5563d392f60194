//! The approximate index: HNSW (usearch) over the documents' vectors, keyed by database rowid,
//! saved beside the database with the generation it reflects, and caught up or rebuilt from
//! the database when stale or missing.

use std::path::{Path, PathBuf};
use std::sync::RwLock;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use usearch::{Index, IndexOptions, MetricKind, ScalarKind};

use crate::document::dot;
use crate::error::{io_err, Result, SearchError};
use crate::memory::{Changes, Mem};

/// The HNSW file inside a collection directory.
pub const ANN_FILE: &str = "hnsw.usearch";
/// What the HNSW file reflects.
pub const ANN_META_FILE: &str = "hnsw.json";

/// HNSW parameters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AnnParams {
    /// Neighbours per node (M).
    pub connectivity: usize,
    /// Candidate list while inserting (efConstruction).
    pub expansion_add: usize,
    /// Candidate list while searching (ef); raised to the number of results asked for.
    pub expansion_search: usize,
    /// Store vectors as bf16 in the graph (half the memory, faster distance); final scores are
    /// always recomputed from the f32 vectors.
    pub bf16: bool,
}

impl Default for AnnParams {
    fn default() -> Self {
        Self {
            // recall@10 0.968 at p50 1.5 ms on 1,000,000 structured 512-d vectors
            // (docs/BENCHMARKS.md); M = 16 needed ef = 512 and 3.5 ms for the same recall.
            connectivity: 32,
            expansion_add: 128,
            expansion_search: 128,
            bf16: true,
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct AnnMeta {
    generation: u64,
    dim: usize,
    count: usize,
    params: AnnParams,
}

/// An HNSW index over vectors keyed by `u64`, independent of any store (the benchmark uses it
/// directly).
pub struct Hnsw {
    index: Index,
    params: AnnParams,
    /// Whether vectors may have been removed from the index (a replacement, a removal, or an
    /// index loaded from a file): adds then run one at a time. Concurrent adds after removals
    /// left a vector unreachable by searches now and then (tests/durability.rs, re-ingesting
    /// over a collection on two threads: about 1 run in 2); one at a time they do not.
    removed: std::sync::atomic::AtomicBool,
}

fn ann_err(e: impl std::fmt::Display) -> SearchError {
    SearchError::Ann(e.to_string())
}

impl Hnsw {
    /// An empty index.
    pub fn new(dim: usize, params: AnnParams) -> Result<Self> {
        let options = IndexOptions {
            dimensions: dim,
            // Vectors are unit length: inner product is cosine, and cheaper.
            metric: MetricKind::IP,
            quantization: if params.bf16 {
                ScalarKind::BF16
            } else {
                ScalarKind::F32
            },
            connectivity: params.connectivity,
            expansion_add: params.expansion_add,
            expansion_search: params.expansion_search,
            multi: false,
        };
        let index = Index::new(&options).map_err(ann_err)?;
        Ok(Self {
            index,
            params,
            removed: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Builds an index from `(key, vector)` pairs, inserting in parallel.
    pub fn build(
        dim: usize,
        params: AnnParams,
        items: &[(u64, &[f32])],
        progress: &(dyn Fn(usize) + Sync),
    ) -> Result<Self> {
        let h = Self::new(dim, params)?;
        h.index.reserve(items.len().max(16)).map_err(ann_err)?;
        h.add_in_parallel(items, progress)?;
        Ok(h)
    }

    /// Adds keys that are not in the index, on all threads (usearch's insertion is
    /// thread-safe once the capacity is reserved).
    fn add_in_parallel(
        &self,
        items: &[(u64, &[f32])],
        progress: &(dyn Fn(usize) + Sync),
    ) -> Result<()> {
        let done = std::sync::atomic::AtomicUsize::new(0);
        // Small enough chunks that a write's batch (1,000 documents is typical) spreads over
        // every thread; at most 1,024 between progress reports.
        let chunk = (items.len() / (8 * rayon::current_num_threads())).clamp(1, 1024);
        items.par_chunks(chunk).try_for_each(|chunk| -> Result<()> {
            for (key, v) in chunk {
                self.index.add(*key, v).map_err(ann_err)?;
            }
            let n = done.fetch_add(chunk.len(), std::sync::atomic::Ordering::Relaxed);
            progress(n + chunk.len());
            Ok(())
        })
    }

    /// Changes the search-time candidate list (ef).
    pub fn set_expansion_search(&mut self, ef: usize) {
        self.params.expansion_search = ef;
        self.index.change_expansion_search(ef);
    }

    /// Number of vectors.
    pub fn len(&self) -> usize {
        self.index.size()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds or replaces vectors; a batch is inserted on all threads while the index has never
    /// had a vector removed (see `removed`), one at a time after. A key given twice keeps its
    /// last vector.
    pub fn upsert(&self, items: &[(u64, &[f32])]) -> Result<()> {
        let mut last = std::collections::HashMap::with_capacity(items.len());
        for (i, (key, _)) in items.iter().enumerate() {
            last.insert(*key, i);
        }
        let unique: Vec<(u64, &[f32])> = items
            .iter()
            .enumerate()
            .filter(|(i, (key, _))| last[key] == *i)
            .map(|(_, &item)| item)
            .collect();
        let replaces = unique.iter().any(|(key, _)| self.index.contains(*key));
        let needed = self.index.size() + unique.len();
        if needed > self.index.capacity() {
            let cap = needed.max(self.index.capacity() * 2).max(1024);
            self.index.reserve(cap).map_err(ann_err)?;
        }
        if replaces || self.removed.load(std::sync::atomic::Ordering::Relaxed) {
            // One key at a time, each removed right before its new vector is added, as before
            // batches were inserted in parallel: removing a batch's keys first and then adding
            // lost vectors to searches.
            for (key, v) in &unique {
                if self.index.contains(*key) {
                    self.index.remove(*key).map_err(ann_err)?;
                    self.removed
                        .store(true, std::sync::atomic::Ordering::Relaxed);
                }
                self.index.add(*key, v).map_err(ann_err)?;
            }
            return Ok(());
        }
        self.add_in_parallel(&unique, &|_| {})
    }

    /// Whether a key is in the index.
    pub fn contains(&self, key: u64) -> bool {
        self.index.contains(key)
    }

    /// Removes a vector if present.
    pub fn remove(&self, key: u64) -> Result<()> {
        if self.index.contains(key) {
            self.index.remove(key).map_err(ann_err)?;
            self.removed
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(())
    }

    /// The `k` nearest keys with approximate similarity (1 − distance), best first; with a
    /// filter, only keys it accepts (the filter is applied during the graph walk).
    pub fn search(
        &self,
        query: &[f32],
        k: usize,
        filter: Option<&dyn Fn(u64) -> bool>,
    ) -> Result<Vec<(u64, f32)>> {
        if k == 0 || self.is_empty() {
            return Ok(Vec::new());
        }
        // usearch widens the candidate list to `k` itself; ef is set once (new, load,
        // set_expansion_search), never here, so concurrent searches share a constant config.
        let m = match filter {
            None => self.index.search(query, k),
            Some(f) => self.index.filtered_search(query, k, f),
        }
        .map_err(ann_err)?;
        Ok(m.keys
            .into_iter()
            .zip(m.distances)
            .map(|(k, d)| (k, 1.0 - d))
            .collect())
    }

    /// Saves to a file (atomically: a temporary file renamed over the old one).
    pub fn save(&self, path: &Path) -> Result<()> {
        let tmp = path.with_extension("tmp");
        let s = tmp
            .to_str()
            .ok_or_else(|| SearchError::Ann(format!("path {} is not UTF-8", tmp.display())))?;
        self.index.save(s).map_err(ann_err)?;
        std::fs::rename(&tmp, path).map_err(io_err(path))
    }

    /// Loads a saved index.
    pub fn load(path: &Path, dim: usize, params: AnnParams) -> Result<Self> {
        let s = path
            .to_str()
            .ok_or_else(|| SearchError::Ann(format!("path {} is not UTF-8", path.display())))?;
        let h = Self::new(dim, params)?;
        h.index.load(s).map_err(ann_err)?;
        h.removed.store(true, std::sync::atomic::Ordering::Relaxed);
        if h.index.dimensions() != dim {
            return Err(SearchError::Ann(format!(
                "{} has {} dimensions, expected {dim}",
                path.display(),
                h.index.dimensions()
            )));
        }
        h.index.change_expansion_search(params.expansion_search);
        Ok(h)
    }
}

/// What a saved index turned out to be when opening a store.
enum Saved {
    Usable(Hnsw, u64),
    Absent,
    Outdated(String),
    Damaged(String),
}

/// What the saved index's files say, before loading the graph.
pub(crate) enum SavedState {
    /// Neither file: never saved (or removed when the collection shrank below the threshold).
    Absent,
    /// Saved with other parameters (a newer gclip): rebuilt as a matter of course.
    Outdated(String),
    /// A file missing, unreadable or inconsistent with the database: the message says which.
    Damaged(String),
    /// The metadata reads and fits; the graph file is still to be loaded.
    Readable(SavedMeta),
}

/// What a saved HNSW index reflects.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SavedMeta {
    pub generation: u64,
    pub count: usize,
}

/// Reads the saved index's metadata in `dir` against the collection's dimension and the
/// database's generation.
pub(crate) fn inspect_saved(
    dir: &Path,
    dim: usize,
    params: AnnParams,
    generation: u64,
) -> SavedState {
    let meta_path = dir.join(ANN_META_FILE);
    let index_path = dir.join(ANN_FILE);
    let bytes = match std::fs::read(&meta_path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return if index_path.exists() {
                SavedState::Damaged(format!(
                    "{}: missing beside {}",
                    meta_path.display(),
                    index_path.display()
                ))
            } else {
                SavedState::Absent
            };
        }
        Err(e) => return SavedState::Damaged(format!("{}: {e}", meta_path.display())),
    };
    let meta: AnnMeta = match serde_json::from_slice(&bytes) {
        Ok(m) => m,
        Err(e) => {
            return SavedState::Damaged(format!("{}: does not parse: {e}", meta_path.display()))
        }
    };
    if meta.dim != dim {
        return SavedState::Damaged(format!(
            "{}: says {} dimensions, the collection has {dim}",
            meta_path.display(),
            meta.dim
        ));
    }
    if meta.generation > generation {
        return SavedState::Damaged(format!(
            "{}: saved at generation {}, after the database's {generation}",
            meta_path.display(),
            meta.generation
        ));
    }
    if meta.params != params {
        return SavedState::Outdated(format!(
            "{}: built with other parameters",
            meta_path.display()
        ));
    }
    if !index_path.is_file() {
        return SavedState::Damaged(format!(
            "{}: missing (its metadata {} is there)",
            index_path.display(),
            meta_path.display()
        ));
    }
    SavedState::Readable(SavedMeta {
        generation: meta.generation,
        count: meta.count,
    })
}

/// The HNSW index of a store: absent (exact search) until the collection is large enough.
pub(crate) struct AnnState {
    dir: PathBuf,
    dim: usize,
    params: AnnParams,
    inner: RwLock<Option<Hnsw>>,
}

impl AnnState {
    pub fn new(dir: &Path, dim: usize) -> Self {
        Self {
            dir: dir.to_path_buf(),
            dim,
            params: AnnParams::default(),
            inner: RwLock::new(None),
        }
    }

    fn all_items(mem: &Mem) -> Vec<(u64, &[f32])> {
        (0..mem.alive.len())
            .filter(|&s| mem.alive[s])
            .map(|s| (mem.rowids[s] as u64, mem.vector(s)))
            .collect()
    }

    fn rebuild(&self, mem: &Mem) -> Result<Hnsw> {
        let items = Self::all_items(mem);
        tracing::info!(count = items.len(), "building HNSW index");
        Hnsw::build(self.dim, self.params, &items, &|_| {})
    }

    fn replay(h: &Hnsw, mem: &Mem, changes: &Changes) -> Result<()> {
        for &r in &changes.removed {
            h.remove(r as u64)?;
        }
        let written: Vec<(u64, &[f32])> = changes
            .written
            .iter()
            .filter_map(|r| {
                mem.by_rowid
                    .get(r)
                    .map(|&slot| (*r as u64, mem.vector(slot)))
            })
            .collect();
        h.upsert(&written)
    }

    /// Loads the saved index and replays what changed since it was saved, or rebuilds it.
    pub fn sync(
        &self,
        mem: &Mem,
        generation: u64,
        changes: &dyn Fn(u64) -> Result<Changes>,
    ) -> Result<()> {
        let mut inner = self.inner.write().unwrap_or_else(|p| p.into_inner());
        if inner.is_some() {
            return Ok(());
        }
        // The index is derived from the database: one that cannot be used is rebuilt from it,
        // with a warning naming what was wrong (never silently).
        let loaded = match self.load_saved(generation) {
            Saved::Usable(h, saved_gen) => {
                // A database error here is an error, not a reason to rebuild.
                let c = changes(saved_gen)?;
                match Self::replay(&h, mem, &c) {
                    Err(e) => {
                        tracing::warn!(
                            "{}: replaying the changes since generation {saved_gen} failed \
                             ({e}); rebuilding it",
                            self.dir.join(ANN_FILE).display()
                        );
                        None
                    }
                    Ok(()) if h.len() != mem.len() => {
                        tracing::warn!(
                            "{}: holds {} vectors after catching up, the collection {}; \
                             rebuilding it",
                            self.dir.join(ANN_FILE).display(),
                            h.len(),
                            mem.len()
                        );
                        None
                    }
                    Ok(()) => Some(h),
                }
            }
            Saved::Absent => None,
            Saved::Outdated(why) => {
                tracing::info!("{why}; rebuilding the HNSW index");
                None
            }
            Saved::Damaged(why) => {
                tracing::warn!("{why}; rebuilding the HNSW index from the database");
                None
            }
        };
        *inner = Some(match loaded {
            Some(h) => h,
            None => self.rebuild(mem)?,
        });
        Ok(())
    }

    fn load_saved(&self, generation: u64) -> Saved {
        match inspect_saved(&self.dir, self.dim, self.params, generation) {
            SavedState::Absent => Saved::Absent,
            SavedState::Outdated(why) => Saved::Outdated(why),
            SavedState::Damaged(why) => Saved::Damaged(why),
            SavedState::Readable(meta) => {
                match Hnsw::load(&self.dir.join(ANN_FILE), self.dim, self.params) {
                    Ok(h) => Saved::Usable(h, meta.generation),
                    Err(e) => Saved::Damaged(format!(
                        "{}: does not load: {e}",
                        self.dir.join(ANN_FILE).display()
                    )),
                }
            }
        }
    }

    /// Applies a committed write; builds the index when the collection has just grown past
    /// the exact-search threshold.
    pub fn apply(&self, mem: &Mem, written: &[i64], removed: &[i64], wanted: bool) {
        let mut inner = self.inner.write().unwrap_or_else(|p| p.into_inner());
        let result = match inner.as_ref() {
            None if !wanted => Ok(()),
            None => self.rebuild(mem).map(|h| *inner = Some(h)),
            Some(h) => Self::replay(
                h,
                mem,
                &Changes {
                    removed: removed.to_vec(),
                    written: written.to_vec(),
                },
            ),
        };
        if let Err(e) = result {
            // The database holds the write; a broken in-memory index is dropped and rebuilt
            // on the next open, and searches fall back to exact meanwhile.
            tracing::warn!("HNSW update failed, dropping the index: {e}");
            *inner = None;
            let _ = std::fs::remove_file(self.dir.join(ANN_META_FILE));
        }
    }

    /// Searches, keeping only the slots `keep` accepts when given; `None` when there is no
    /// index (exact search is used instead).
    pub fn search(
        &self,
        mem: &Mem,
        query: &[f32],
        k: usize,
        keep: Option<&dyn Fn(usize) -> bool>,
    ) -> Result<Option<Vec<(usize, f32)>>> {
        let inner = self.inner.read().unwrap_or_else(|p| p.into_inner());
        let Some(h) = inner.as_ref() else {
            return Ok(None);
        };
        // A few extra candidates, re-ranked by exact cosine from the f32 vectors (the graph
        // may hold bf16, whose rounding can swap near neighbours). Without a filter the walk
        // calls no predicate (the index holds live documents only; a key deleted meanwhile is
        // dropped below).
        let n = k + k / 4 + 4;
        let found = match keep {
            Some(keep) => {
                let filter = |key: u64| mem.by_rowid.get(&(key as i64)).is_some_and(|&s| keep(s));
                h.search(query, n, Some(&filter))?
            }
            None => h.search(query, n, None)?,
        };
        let mut out: Vec<(usize, f32)> = found
            .into_iter()
            .filter_map(|(key, _)| mem.by_rowid.get(&(key as i64)).copied())
            .map(|slot| (slot, dot(mem.vector(slot), query)))
            .collect();
        out.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        out.truncate(k);
        Ok(Some(out))
    }

    /// Saves the index with the generation it reflects; returns that generation, or None when
    /// there is no index.
    pub fn save(&self, mem: &Mem, generation: u64, wanted: bool) -> Result<Option<u64>> {
        let inner = self.inner.read().unwrap_or_else(|p| p.into_inner());
        let Some(h) = inner.as_ref() else {
            if !wanted {
                let _ = std::fs::remove_file(self.dir.join(ANN_META_FILE));
                let _ = std::fs::remove_file(self.dir.join(ANN_FILE));
            }
            return Ok(None);
        };
        h.save(&self.dir.join(ANN_FILE))?;
        let meta = AnnMeta {
            generation,
            dim: self.dim,
            count: mem.len(),
            params: self.params,
        };
        let path = self.dir.join(ANN_META_FILE);
        let json = serde_json::to_vec(&meta).map_err(ann_err)?;
        gclip::fsutil::write_file_atomically(&path, &json).map_err(io_err(&path))?;
        Ok(Some(generation))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::random_unit_vectors;

    fn params() -> AnnParams {
        AnnParams {
            connectivity: 16,
            expansion_add: 64,
            expansion_search: 64,
            bf16: false,
        }
    }

    /// The nearest key, from a search as wide as the index: the batch tests check which vector
    /// a key holds, not the graph's recall (replacing half the keys of a small index one by
    /// one leaves a few vectors that an ef of 64 misses, depending on the insertion order of
    /// the parallel first batch).
    fn top(h: &Hnsw, query: &[f32]) -> u64 {
        h.search(query, h.len(), None).unwrap()[0].0
    }

    #[test]
    fn a_batch_upsert_adds_replaces_and_keeps_the_last_of_a_repeated_key() {
        let dim = 32;
        let data = random_unit_vectors(3_000, dim, 7);
        let row = |i: usize| &data[i * dim..(i + 1) * dim];
        let h = Hnsw::new(dim, params()).unwrap();
        let first: Vec<(u64, &[f32])> = (0..1_000).map(|i| (i as u64, row(i))).collect();
        h.upsert(&first).unwrap();
        assert_eq!(h.len(), 1_000);
        // Keys 0..500 get new vectors (rows 1000..1500); keys 1000..2000 are new; key 1999
        // comes twice, its second vector (row 2999) wins.
        let mut second: Vec<(u64, &[f32])> = (0..500).map(|i| (i as u64, row(1_000 + i))).collect();
        second.extend((1_000..2_000).map(|i| (i as u64, row(500 + i))));
        second.push((1_999, row(2_999)));
        h.upsert(&second).unwrap();
        assert_eq!(h.len(), 2_000);
        for i in (0..500).step_by(50) {
            assert_eq!(top(&h, row(1_000 + i)), i as u64, "replaced key {i}");
        }
        for i in (500..1_000).step_by(50) {
            assert_eq!(top(&h, row(i)), i as u64, "kept key {i}");
        }
        for i in (1_000..1_999).step_by(50) {
            assert_eq!(top(&h, row(500 + i)), i as u64, "added key {i}");
        }
        assert_eq!(top(&h, row(2_999)), 1_999);
        assert_ne!(
            top(&h, row(2_499)),
            1_999,
            "the first vector of a repeated key is gone"
        );
    }
}

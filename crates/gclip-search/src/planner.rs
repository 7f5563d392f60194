//! The query planner: how one search runs over an open collection. A vector query scans
//! exactly (a filter's candidates, or everything: f32, or 8-bit codes re-ranked in f32) or walks
//! the HNSW graph, whichever costs less for the filter's selectivity; a text query asks the BM25
//! index; a query with both fuses the two rankings.
//!
//! The planner reads the documents in memory ([`Mem`]), the derived indexes and the tuning; it
//! writes nothing and knows nothing of how the collection is stored.

use std::collections::HashMap;

use crate::ann::AnnState;
use crate::document::EmbedSpec;
use crate::error::{Result, SearchError};
use crate::exact::{self, Quantized};
use crate::filter::Filter;
use crate::lexical::LexicalState;
use crate::memory::Mem;
use crate::payload::slot_bits;
use crate::store::{Fusion, Hit, SearchMode, SearchRequest};

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

impl StoreOptions {
    /// Whether the HNSW index is kept and used at `len` documents.
    pub(crate) fn wants_ann(&self, len: usize) -> bool {
        len >= self.exact_below
    }
}

/// What one search reads: the documents, the derived indexes, the collection's embedding spec
/// (its image fields name a hit's image) and the tuning.
pub(crate) struct Planner<'a> {
    pub mem: &'a Mem,
    pub ann: &'a AnnState,
    pub lexical: &'a LexicalState,
    pub spec: &'a EmbedSpec,
    pub options: &'a StoreOptions,
}

impl Planner<'_> {
    /// The hits of `request`, best first: its `offset + limit` best, less the first `offset`.
    pub(crate) fn search(&self, request: &SearchRequest) -> Result<Vec<Hit>> {
        let k = request.limit.saturating_add(request.offset);
        if k == 0 {
            return Ok(Vec::new());
        }
        let mem = self.mem;
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
                .vector_search(v, k, request)?
                .into_iter()
                .map(|(s, c)| (s, c, Some(c), None))
                .collect(),
            (None, Some(t)) => self
                .lexical
                .search(mem, t, k, request.filter.as_ref())?
                .into_iter()
                .map(|(s, b)| (s, b, None, Some(b)))
                .collect(),
            (Some(v), Some(t)) => {
                // Each side ranks a deeper list than asked, so that fusion has overlap to use.
                let depth = k.max(50) * 2;
                let vec_hits = self.vector_search(v, depth, request)?;
                let lex_hits = self
                    .lexical
                    .search(mem, t, depth, request.filter.as_ref())?;
                fuse(&vec_hits, &lex_hits, request.fusion)
            }
        };
        Ok(ranked
            .into_iter()
            .skip(request.offset)
            .take(request.limit)
            .map(|(slot, score, cosine, bm25)| {
                let mut h = self.hit(slot, score);
                if request.vector.is_some() && text.is_some() {
                    h.cosine = cosine;
                    h.bm25 = bm25;
                }
                h
            })
            .collect())
    }

    fn hit(&self, slot: usize, score: f32) -> Hit {
        let mem = self.mem;
        let fields = mem.fields[slot].clone();
        let image = self
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
        query: &[f32],
        k: usize,
        request: &SearchRequest,
    ) -> Result<Vec<(usize, f32)>> {
        let mem = self.mem;
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
                self.options.wants_ann(mem.len())
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
fn estimated_matches(mem: &Mem, filter: &Filter) -> f64 {
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

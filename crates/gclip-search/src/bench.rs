//! The vector-search benchmark: recall@k of HNSW against exact search, and query latency with
//! and without a filter, on random unit vectors (the hardest case for a graph index: no
//! cluster structure to exploit).

use std::time::Instant;

use rayon::prelude::*;
use serde::Serialize;

use crate::ann::{AnnParams, Hnsw};
use crate::error::Result;
use crate::exact;

/// What to measure.
#[derive(Debug, Clone)]
pub struct AnnBenchPlan {
    pub count: usize,
    pub dim: usize,
    pub queries: usize,
    pub k: usize,
    /// Search-time candidate lists to try.
    pub expansions: Vec<usize>,
    /// Documents carry a category `key % categories`; filtered queries ask for one category.
    pub categories: usize,
    pub params: AnnParams,
    pub seed: u64,
    /// Vectors with structure like real embeddings: `Some(d)` draws them near a random
    /// `d`-dimensional subspace (latent Gaussian, random projection, 10 % isotropic noise);
    /// `None` draws uniform random directions in the full space.
    pub latent_dim: Option<usize>,
}

/// One line of results.
#[derive(Debug, Clone, Serialize)]
pub struct AnnBenchRow {
    pub count: usize,
    pub dim: usize,
    pub expansion_search: usize,
    /// `None` without a filter; otherwise the share of documents that match.
    pub filter_selectivity: Option<f64>,
    pub recall_at_k: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub exact_p50_ms: f64,
}

/// Build statistics.
#[derive(Debug, Clone, Serialize)]
pub struct AnnBuild {
    pub count: usize,
    pub dim: usize,
    pub seconds: f64,
    pub threads: usize,
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e3779b97f4a7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d049bb133111eb);
    x ^ (x >> 31)
}

/// `count` random unit vectors (Gaussian directions via Box–Muller), row-major.
pub fn random_unit_vectors(count: usize, dim: usize, seed: u64) -> Vec<f32> {
    let mut data = vec![0.0f32; count * dim];
    data.par_chunks_mut(dim).enumerate().for_each(|(i, row)| {
        let mut s = splitmix(seed ^ (i as u64).wrapping_mul(0x2545f4914f6cdd1d));
        for pair in row.chunks_mut(2) {
            s = splitmix(s);
            let u1 = ((s >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
            s = splitmix(s);
            let u2 = (s >> 11) as f64 / (1u64 << 53) as f64;
            let r = (-2.0 * u1.ln()).sqrt();
            let t = std::f64::consts::TAU * u2;
            pair[0] = (r * t.cos()) as f32;
            if pair.len() > 1 {
                pair[1] = (r * t.sin()) as f32;
            }
        }
        crate::document::normalize(row);
    });
    data
}

fn percentile(sorted_ms: &[f64], p: f64) -> f64 {
    if sorted_ms.is_empty() {
        return 0.0;
    }
    let i = ((sorted_ms.len() - 1) as f64 * p).round() as usize;
    sorted_ms[i]
}

/// `count` unit vectors near a random `latent`-dimensional subspace of `dim` dimensions.
pub fn structured_unit_vectors(count: usize, dim: usize, latent: usize, seed: u64) -> Vec<f32> {
    let latent = latent.clamp(1, dim);
    // The projection is shared by every call with the same seed (data and queries alike).
    let basis = random_unit_vectors(latent, dim, seed);
    let z = random_unit_vectors(count, latent, seed ^ 0x5eed ^ count as u64);
    let noise = random_unit_vectors(count, dim, seed ^ 0x0153 ^ count as u64);
    let mut data = vec![0.0f32; count * dim];
    data.par_chunks_mut(dim).enumerate().for_each(|(i, row)| {
        for (j, &w) in z[i * latent..(i + 1) * latent].iter().enumerate() {
            for (r, b) in row.iter_mut().zip(&basis[j * dim..(j + 1) * dim]) {
                *r += w * b;
            }
        }
        crate::document::normalize(row);
        for (r, n) in row.iter_mut().zip(&noise[i * dim..(i + 1) * dim]) {
            *r += 0.1 * n;
        }
        crate::document::normalize(row);
    });
    data
}

/// The data and query vectors of a benchmark: uniform random directions, or (with `latent`)
/// vectors near a random subspace, queries drawn the same way. Every benchmark (and the export
/// for other engines) uses this, so the same arguments give the same vectors everywhere.
pub fn bench_vectors(
    count: usize,
    queries: usize,
    dim: usize,
    seed: u64,
    latent: Option<usize>,
) -> (Vec<f32>, Vec<f32>) {
    match latent {
        None => (
            random_unit_vectors(count, dim, seed),
            random_unit_vectors(queries, dim, seed ^ 0xabcdef),
        ),
        Some(l) => (
            structured_unit_vectors(count, dim, l, seed),
            structured_unit_vectors(queries, dim, l, seed),
        ),
    }
}

/// Runs the benchmark; `progress` receives messages.
pub fn run_ann_bench(
    plan: &AnnBenchPlan,
    progress: &dyn Fn(&str),
) -> Result<(AnnBuild, Vec<AnnBenchRow>)> {
    let dim = plan.dim;
    progress(&format!(
        "generating {} vectors of {dim} dimensions",
        plan.count
    ));
    let (data, queries) = bench_vectors(plan.count, plan.queries, dim, plan.seed, plan.latent_dim);
    let items: Vec<(u64, &[f32])> = data
        .chunks_exact(dim)
        .enumerate()
        .map(|(i, v)| (i as u64, v))
        .collect();
    progress("building HNSW");
    let t = Instant::now();
    let mut index = Hnsw::build(dim, plan.params, &items, &|_| {})?;
    let build = AnnBuild {
        count: plan.count,
        dim,
        seconds: t.elapsed().as_secs_f64(),
        threads: rayon::current_num_threads(),
    };
    progress(&format!(
        "built in {:.1} s; exact ground truth",
        build.seconds
    ));
    let cats = plan.categories.max(1) as u64;
    let mut rows = Vec::new();
    for filtered in [false, true] {
        // Ground truth and exact latency (one query at a time, like a server request).
        let mut truth = Vec::with_capacity(plan.queries);
        let mut exact_ms = Vec::with_capacity(plan.queries);
        for (qi, q) in queries.chunks_exact(dim).enumerate() {
            let want = qi as u64 % cats;
            let keep = |row: usize| !filtered || row as u64 % cats == want;
            let t = Instant::now();
            let top = exact::top_k(&data, dim, q, plan.k, &keep);
            exact_ms.push(t.elapsed().as_secs_f64() * 1e3);
            truth.push(top.into_iter().map(|s| s.row as u64).collect::<Vec<_>>());
        }
        exact_ms.sort_by(f64::total_cmp);
        for &ef in &plan.expansions {
            index.set_expansion_search(ef);
            let h = &index;
            let mut ms = Vec::with_capacity(plan.queries);
            let mut hits = 0usize;
            for (qi, q) in queries.chunks_exact(dim).enumerate() {
                let want = qi as u64 % cats;
                let f = |key: u64| key % cats == want;
                let t = Instant::now();
                let found = if filtered {
                    h.search(q, plan.k, Some(&f))?
                } else {
                    h.search(q, plan.k, None)?
                };
                ms.push(t.elapsed().as_secs_f64() * 1e3);
                hits += found
                    .iter()
                    .filter(|(key, _)| truth[qi].contains(key))
                    .count();
            }
            ms.sort_by(f64::total_cmp);
            rows.push(AnnBenchRow {
                count: plan.count,
                dim,
                expansion_search: ef,
                filter_selectivity: filtered.then(|| 1.0 / cats as f64),
                recall_at_k: hits as f64 / (plan.queries * plan.k) as f64,
                p50_ms: percentile(&ms, 0.5),
                p99_ms: percentile(&ms, 0.99),
                exact_p50_ms: percentile(&exact_ms, 0.5),
            });
        }
    }
    Ok((build, rows))
}

/// What the collection benchmark measures: searches through a real collection (SQLite store,
/// payload index, query planner, HNSW), as a user's queries run.
#[derive(Debug, Clone)]
pub struct StoreBenchPlan {
    pub count: usize,
    pub dim: usize,
    pub queries: usize,
    pub k: usize,
    pub seed: u64,
    pub latent_dim: Option<usize>,
}

/// One filter's results through the collection.
#[derive(Debug, Clone, Serialize)]
pub struct StoreBenchRow {
    pub filter: String,
    /// Share of the documents the filter matches.
    pub selectivity: f64,
    /// Auto mode (the planner's choice) against exact search.
    pub recall_at_k: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Exact mode: every matching document scored.
    pub exact_p50_ms: f64,
}

/// How the collection benchmark's collection came to be searchable.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StoreBenchSetup {
    /// Documents this run wrote (0 when it reused a filled collection).
    pub written: usize,
    /// Seconds writing them took, acknowledged by the store (a directory: without an index).
    pub write_s: f64,
    /// Seconds opening took (a directory: loading it, and building its HNSW index when the
    /// fill left none).
    pub open_s: f64,
    /// Seconds from the flush until the backend's vector index covered every document (a
    /// server builds it in the background; 0 for a directory).
    pub index_s: f64,
    /// Documents still outside the vector index when the searches began (0 unless waiting
    /// for it gave up after [`INDEX_WAIT_LIMIT`]).
    pub unindexed: u64,
}

impl StoreBenchSetup {
    /// Documents written per second (0 when none were).
    pub fn documents_per_s(&self) -> f64 {
        self.written as f64 / self.write_s.max(1e-9)
    }
}

/// How long the collection benchmark waits for a server's vector index before searching.
pub const INDEX_WAIT_LIMIT: std::time::Duration = std::time::Duration::from_secs(3_600);

/// The filters of the collection benchmark and how each document's fields are drawn:
/// `category` one of ten (10 %), `shard` one of a hundred (1 %), `price` 0–999 (a range, which
/// the payload index does not cover).
pub const STORE_BENCH_FILTERS: [&str; 5] = [
    "",
    "category = c3",
    "shard = 7",
    "price < 100",
    "category = c3 AND price < 500",
];

/// Beside a benchmark collection: the plan it was filled for.
const STORE_BENCH_FILLED: &str = "bench-filled";

fn bench_fields(i: usize) -> crate::document::Fields {
    let mut f = crate::document::Fields::new();
    f.insert("category".into(), format!("c{}", i % 10).into());
    f.insert("shard".into(), ((i / 10) % 100).into());
    f.insert("price".into(), ((i * 7919) % 1000).into());
    f
}

/// Fills a collection in `dir` (or reuses the one a previous run left there, with the same
/// plan), waits until its vector index covers every document, and times searches through it,
/// one query at a time.
///
/// `dir` may be a `milvus://` address: the collection is created there, or reused when it was
/// made by a run with the same plan (one interrupted part-way is completed: the documents are
/// upserted by id). A collection made by anything else at that address is refused, never
/// replaced.
pub fn run_store_bench(
    plan: &StoreBenchPlan,
    dir: &std::path::Path,
    progress: &dyn Fn(&str),
) -> Result<(StoreBenchSetup, Vec<StoreBenchRow>)> {
    use crate::collection::{Collection, Location};
    use crate::document::EmbedSpec;
    use crate::error::SearchError;
    use crate::filter::Filter;
    use crate::sqlite::StoreOptions;
    use crate::store::{ModelIdentity, NewDocument, SearchMode, SearchRequest};

    let dim = plan.dim;
    let label = format!(
        "bench:{}x{}:seed{}:{}",
        plan.count,
        dim,
        plan.seed,
        plan.latent_dim
            .map(|l| format!("latent{l}"))
            .unwrap_or_else(|| "uniform".into())
    );
    let identity = ModelIdentity {
        model: label.clone(),
        arch: None,
        dim,
        precision: Default::default(),
    };
    let spec = EmbedSpec::parse("title", &[])?;
    // Written once a fill of a directory completes, so that reuse needs no opening (a million
    // documents take seconds to load) and an interrupted fill is never reused.
    let filled = dir.join(STORE_BENCH_FILLED);
    let to_fill = match Location::of(dir)? {
        Location::Dir(_) => {
            let reusable = Collection::exists(dir)
                && std::fs::read_to_string(&filled).is_ok_and(|done| done == label);
            if reusable {
                None
            } else {
                if dir.exists() {
                    std::fs::remove_dir_all(dir).map_err(crate::error::io_err(dir))?;
                }
                // No index while filling: it is built once, in parallel, when the collection
                // reopens.
                Some(Collection::create_with(
                    dir,
                    identity,
                    spec,
                    StoreOptions {
                        exact_below: usize::MAX,
                    },
                )?)
            }
        }
        Location::Milvus(address) => {
            if Collection::exists(dir) {
                let c = Collection::open(dir)?;
                if c.info().model.model != label {
                    return Err(SearchError::Invalid(format!(
                        "{address} holds a collection that is not this benchmark's ({label}); \
                         give the address of a new collection (it is not replaced)"
                    )));
                }
                (c.len() != plan.count).then_some(c)
            } else {
                Some(Collection::create(dir, identity, spec)?)
            }
        }
    };
    let mut setup = StoreBenchSetup::default();
    if let Some(c) = to_fill {
        progress(&format!("generating and storing {} documents", plan.count));
        let (data, _) = bench_vectors(plan.count, 0, dim, plan.seed, plan.latent_dim);
        let t = Instant::now();
        for (b, block) in data.chunks(20_000 * dim).enumerate() {
            let docs = block
                .chunks_exact(dim)
                .enumerate()
                .map(|(j, v)| {
                    let i = b * 20_000 + j;
                    NewDocument {
                        id: format!("d{i}"),
                        fields: bench_fields(i),
                        vector: v.to_vec(),
                        source: None,
                    }
                })
                .collect();
            c.upsert(docs)?;
        }
        setup.written = plan.count;
        setup.write_s = t.elapsed().as_secs_f64();
        progress(&format!(
            "stored {} documents in {:.1} s ({:.0} documents/s)",
            plan.count,
            setup.write_s,
            setup.documents_per_s()
        ));
        if c.dir().is_some() {
            std::fs::write(&filled, &label).map_err(crate::error::io_err(&filled))?;
        }
    }
    progress("opening (builds or loads the HNSW index)");
    let t = Instant::now();
    let c = Collection::open(dir)?;
    setup.open_s = t.elapsed().as_secs_f64();
    progress(&format!("open in {:.1} s", setup.open_s));
    let t = Instant::now();
    c.flush()?;
    loop {
        setup.unindexed = c.store().unindexed()?;
        if setup.unindexed == 0 || t.elapsed() >= INDEX_WAIT_LIMIT {
            break;
        }
        progress(&format!(
            "{} documents not in the vector index yet ({:.0} s)",
            setup.unindexed,
            t.elapsed().as_secs_f64()
        ));
        std::thread::sleep(std::time::Duration::from_secs(5));
    }
    setup.index_s = t.elapsed().as_secs_f64();
    if c.dir().is_none() {
        progress(&format!(
            "indexed {:.1} s after the flush ({} documents left out)",
            setup.index_s, setup.unindexed
        ));
    }
    let (_, queries) = bench_vectors(0, plan.queries, dim, plan.seed, plan.latent_dim);
    let mut rows = Vec::new();
    for text in STORE_BENCH_FILTERS {
        let filter = (!text.is_empty())
            .then(|| Filter::parse(text))
            .transpose()?;
        let matching = match &filter {
            None => plan.count,
            Some(f) => (0..plan.count)
                .filter(|&i| f.matches("", &bench_fields(i)))
                .count(),
        };
        let (mut auto_ms, mut exact_ms, mut hits) = (Vec::new(), Vec::new(), 0usize);
        for q in queries.chunks_exact(dim) {
            let mut request = SearchRequest {
                vector: Some(q.to_vec()),
                filter: filter.clone(),
                limit: plan.k,
                mode: SearchMode::Exact,
                ..Default::default()
            };
            let t = Instant::now();
            let truth = c.search(&request)?;
            exact_ms.push(t.elapsed().as_secs_f64() * 1e3);
            request.mode = SearchMode::Auto;
            let t = Instant::now();
            let got = c.search(&request)?;
            auto_ms.push(t.elapsed().as_secs_f64() * 1e3);
            hits += got
                .iter()
                .filter(|h| truth.iter().any(|t| t.id == h.id))
                .count();
        }
        auto_ms.sort_by(f64::total_cmp);
        exact_ms.sort_by(f64::total_cmp);
        rows.push(StoreBenchRow {
            filter: if text.is_empty() {
                "none".into()
            } else {
                text.into()
            },
            selectivity: matching as f64 / plan.count.max(1) as f64,
            recall_at_k: hits as f64 / (plan.queries * plan.k).max(1) as f64,
            p50_ms: percentile(&auto_ms, 0.5),
            p99_ms: percentile(&auto_ms, 0.99),
            exact_p50_ms: percentile(&exact_ms, 0.5),
        });
    }
    Ok((setup, rows))
}

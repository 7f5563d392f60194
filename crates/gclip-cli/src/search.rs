//! `gclip search C "text" | --image PATH | --query "text:weight"…`

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use gclip_search::encoder::Encoder;
use gclip_search::query::{parse_weighted, run_search, SearchOptions};
use gclip_search::{Filter, Fusion, Hit, QueryInput, QueryPart};

use crate::index::{load_embedder, open_existing_collection};

#[derive(Clone, Copy, ValueEnum)]
enum FusionArg {
    /// Reciprocal-rank fusion, k = 60.
    Rrf,
    /// 0.5 · cosine + 0.5 · normalised BM25.
    Weighted,
}

#[derive(Args)]
#[command(after_help = "Examples:
  gclip search photos \"a cat sleeping\" --limit 5
  gclip search photos --image query.jpg --json
  gclip search shop --query \"red dress:1.0\" --query \"floral:-0.3\" --filter 'price < 50 AND tags:summer'
  gclip search shop \"linen shirt\" --hybrid          # BM25 fused with vectors (RRF, k = 60)
Filters: FIELD = V, != , <, <=, >, >=, FIELD:TAG, AND, OR, NOT, parentheses.")]
pub struct SearchArgs {
    /// Collection directory, or milvus://HOST:PORT/NAME (vector search only: Milvus has no
    /// BM25, so --hybrid and --lexical are refused there).
    collection: PathBuf,
    /// Query text.
    text: Option<String>,
    /// Query image: a file, or an http(s) URL (fetched into the image cache).
    #[arg(long)]
    image: Option<PathBuf>,
    /// Weighted query part, `TEXT[:WEIGHT]`; repeat; negative weights push away.
    #[arg(long = "query")]
    queries: Vec<String>,
    /// Weighted image part, `PATH[:WEIGHT]` or `URL[:WEIGHT]`; repeat.
    #[arg(long = "image-query")]
    image_queries: Vec<String>,
    /// Documents like this one (its stored vector).
    #[arg(long)]
    like: Option<String>,
    /// Results to show.
    #[arg(long, default_value_t = 10, value_parser = crate::args::positive_count)]
    limit: usize,
    /// Results to skip (paging).
    #[arg(long, default_value_t = 0)]
    offset: usize,
    /// Filter on fields, e.g. 'price >= 10 AND (tags:red OR NOT sold)'.
    #[arg(long)]
    filter: Option<String>,
    /// Exact (brute-force) search instead of HNSW.
    #[arg(long)]
    exact: bool,
    /// Embed the query in this precision (fp32, bf16, int8) instead of the collection's.
    #[arg(long)]
    precision: Option<gclip::model::Precision>,
    /// Fuse BM25 over text fields with the vector results.
    #[arg(long)]
    hybrid: bool,
    /// BM25 only (no model needed).
    #[arg(long, conflicts_with = "hybrid")]
    lexical: bool,
    /// How hybrid results are fused.
    #[arg(long, value_enum, default_value = "rrf")]
    fusion: FusionArg,
    /// One JSON array of hits on stdout, best first.
    #[arg(long)]
    json: bool,
}

/// A query image: a URL is fetched (and cached), anything else is a local file.
fn image_input(value: &str) -> QueryInput {
    if gclip_search::remote::is_url(value) {
        QueryInput::ImageUrl(value.to_string())
    } else {
        QueryInput::ImageFile(PathBuf::from(value))
    }
}

pub fn run(args: SearchArgs) -> Result<()> {
    let collection = open_existing_collection(&args.collection)?;
    let filter = args.filter.as_deref().map(Filter::parse).transpose()?;
    let mut parts = Vec::new();
    if let Some(t) = &args.text {
        parts.push(QueryPart::new(QueryInput::Text(t.clone())));
    }
    if let Some(p) = &args.image {
        parts.push(QueryPart::new(image_input(&p.to_string_lossy())));
    }
    for q in &args.queries {
        let (text, weight) = parse_weighted(q);
        parts.push(QueryPart {
            input: QueryInput::Text(text),
            weight,
        });
    }
    for q in &args.image_queries {
        let (path, weight) = parse_weighted(q);
        parts.push(QueryPart {
            input: image_input(&path),
            weight,
        });
    }
    if let Some(id) = &args.like {
        parts.push(QueryPart::new(QueryInput::Document(id.clone())));
    }
    if parts.is_empty() {
        bail!("nothing to search for: give TEXT, --image, --query, --image-query or --like");
    }
    let options = SearchOptions {
        filter,
        limit: args.limit,
        offset: args.offset,
        exact: args.exact,
        hybrid: args.hybrid,
        lexical: args.lexical,
        fusion: match args.fusion {
            FusionArg::Rrf => Fusion::Rrf { k: 60.0 },
            FusionArg::Weighted => Fusion::Weighted {
                vector: 0.5,
                lexical: 0.5,
            },
        },
    };
    // A hybrid or lexical search without text is refused before the model loads.
    options.lexical_text(&parts)?;
    let embedder = if options.needs_vector() {
        Some(load_embedder(&collection, 32, args.precision)?)
    } else {
        None
    };
    let encoder = embedder.as_ref().map(|e| e as &dyn Encoder);
    let hits = run_search(collection.store(), encoder, &parts, options)?;
    if args.json {
        println!("{}", serde_json::to_string(&hits)?);
    } else {
        print_table(&hits, args.offset);
    }
    Ok(())
}

fn print_table(hits: &[Hit], offset: usize) {
    if hits.is_empty() {
        eprintln!("no results");
        return;
    }
    // Ids are printed whole (a cut id cannot be passed to update, delete or --like): the
    // column is as wide as the longest one.
    let id_width = hits
        .iter()
        .map(|h| h.id.chars().count())
        .max()
        .unwrap_or(0)
        .max("id".len());
    println!(
        "{:>4}  {:>7}  {:<id_width$}  image / fields",
        "rank", "score", "id"
    );
    for (i, h) in hits.iter().enumerate() {
        let detail = match &h.image {
            Some(p) if *p != h.id => p.clone(),
            // An indexed file's id is its path: printed once, without the field repeating it.
            _ => {
                let mut fields = h.fields.clone();
                fields.retain(|_, v| v.as_str() != Some(h.id.as_str()));
                if fields.is_empty() {
                    String::new()
                } else {
                    serde_json::Value::Object(fields).to_string()
                }
            }
        };
        let detail: String = detail.chars().take(100).collect();
        println!(
            "{:>4}  {:>7.4}  {:<id_width$}  {detail}",
            offset + i + 1,
            h.score,
            h.id
        );
    }
}

#[derive(Args)]
#[command(after_help = "Example:
  gclip search-bench --count 100000 --dim 512 --queries 200 --ef 64,128,256
  gclip search-bench --count 100000 --latent-dim 32
  gclip search-bench --count 100000 --latent-dim 32 --store /tmp/bench-collection
  gclip search-bench --count 100000 --latent-dim 32 --store milvus://127.0.0.1:19530/bench100k
  gclip search-bench --count 100000 --latent-dim 32 --export bench-data   # vectors for other engines

--export DIR writes data.npy (float32 [count, dim]), queries.npy (float32 [queries, dim]) and
meta.json, then exits without building the index. Document i has category i % categories;
filtered query qi asks for category qi % categories.")]
pub struct SearchBenchArgs {
    /// Random unit vectors in the index.
    #[arg(long, default_value_t = 100_000)]
    count: usize,
    #[arg(long, default_value_t = 512)]
    dim: usize,
    /// Queries timed (one at a time).
    #[arg(long, default_value_t = 200)]
    queries: usize,
    /// Recall@k.
    #[arg(long, default_value_t = 10)]
    k: usize,
    /// Search-time candidate lists (ef) to try, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "64,128,256")]
    ef: Vec<usize>,
    /// HNSW connectivity (M).
    #[arg(long, default_value_t = 32)]
    connectivity: usize,
    /// Insert-time candidate list (efConstruction).
    #[arg(long, default_value_t = 128)]
    ef_construction: usize,
    /// Graph vectors in f32 instead of bf16.
    #[arg(long)]
    f32: bool,
    /// Filtered queries select one category of this many.
    #[arg(long, default_value_t = 10)]
    categories: usize,
    /// Draw vectors near a random subspace of this dimension (structure like real embeddings)
    /// instead of uniform random directions.
    #[arg(long)]
    latent_dim: Option<usize>,
    /// Instead of the bare HNSW index: searches through a real collection in this directory
    /// (SQLite store, payload index, query planner, HNSW with the collection defaults), with
    /// and without filters of several kinds. The collection is kept and reused by the next run
    /// with the same --count, --dim and --latent-dim. A milvus://HOST:PORT/NAME address
    /// measures a collection on a Milvus server instead (created there, or reused when an
    /// earlier run with the same plan made it; any other collection there is refused).
    #[arg(long, value_name = "DIR|ADDRESS")]
    store: Option<PathBuf>,
    /// One JSON object per line instead of a table.
    #[arg(long)]
    json: bool,
    /// Write the generated data and query vectors (.npy) and meta.json to this directory and
    /// exit without building the index, so other engines can be measured on the same vectors.
    #[arg(long, value_name = "DIR")]
    export: Option<PathBuf>,
}

/// Writes the vectors `run_ann_bench` would generate for `plan` as `data.npy`, `queries.npy`
/// (little-endian float32, row-major) and `meta.json`.
fn export_bench_vectors(plan: &gclip_search::bench::AnnBenchPlan, dir: &Path) -> Result<()> {
    use candle_core::{Device, Tensor};
    let (data, queries) = gclip_search::bench::bench_vectors(
        plan.count,
        plan.queries,
        plan.dim,
        plan.seed,
        plan.latent_dim,
    );
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for (name, rows, values) in [
        ("data.npy", plan.count, data),
        ("queries.npy", plan.queries, queries),
    ] {
        let path = dir.join(name);
        Tensor::from_vec(values, (rows, plan.dim), &Device::Cpu)?
            .write_npy(&path)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let meta = serde_json::json!({
        "count": plan.count,
        "dim": plan.dim,
        "queries": plan.queries,
        "k": plan.k,
        "categories": plan.categories.max(1),
        "seed": plan.seed,
        "latent_dim": plan.latent_dim,
        "category_rule": "document i has category i % categories; filtered query qi asks for category qi % categories",
    });
    let path = dir.join("meta.json");
    std::fs::write(&path, serde_json::to_string_pretty(&meta)? + "\n")
        .with_context(|| format!("writing {}", path.display()))?;
    eprintln!(
        "wrote {} data and {} query vectors of {} dimensions to {}",
        plan.count,
        plan.queries,
        plan.dim,
        dir.display()
    );
    Ok(())
}

/// Every benchmark draws its vectors from this seed, so runs and exports compare.
const BENCH_SEED: u64 = 42;

fn vectors_kind(latent_dim: Option<usize>) -> String {
    match latent_dim {
        Some(l) => format!("vectors near a {l}-d subspace"),
        None => "uniform random vectors".to_string(),
    }
}

fn run_store_bench(args: &SearchBenchArgs, dir: &std::path::Path) -> Result<()> {
    use gclip_search::bench::{run_store_bench, StoreBenchPlan};
    let plan = StoreBenchPlan {
        count: args.count,
        dim: args.dim,
        queries: args.queries.max(1),
        k: args.k.max(1),
        seed: BENCH_SEED,
        latent_dim: args.latent_dim,
    };
    let (setup, rows) = run_store_bench(&plan, dir, &|m| eprintln!("{m}"))?;
    if args.json {
        println!("{}", serde_json::to_string(&setup)?);
        for r in &rows {
            println!("{}", serde_json::to_string(r)?);
        }
        return Ok(());
    }
    let shown = gclip_search::Location::shown(dir);
    println!(
        "collection {shown} of {} × {}-d {} on {} threads: Auto (planner) against Exact, one query at a time",
        args.count,
        args.dim,
        vectors_kind(args.latent_dim),
        rayon::current_num_threads()
    );
    if setup.written > 0 {
        println!(
            "written: {} documents in {:.1} s ({:.0} documents/s); opened in {:.1} s",
            setup.written,
            setup.write_s,
            setup.documents_per_s(),
            setup.open_s
        );
    }
    if gclip_search::Location::of(dir).is_ok_and(|l| matches!(l, gclip_search::Location::Milvus(_)))
    {
        println!(
            "vector index complete {:.1} s after the flush ({} documents outside it when searching began)",
            setup.index_s, setup.unindexed
        );
    }
    println!(
        "{:<30}  {:>6}  {:>9}  {:>8}  {:>8}  {:>10}",
        "filter", "match", "recall@k", "p50 ms", "p99 ms", "exact p50"
    );
    for r in rows {
        println!(
            "{:<30}  {:>5.1}%  {:>9.4}  {:>8.3}  {:>8.3}  {:>10.2}",
            r.filter,
            r.selectivity * 100.0,
            r.recall_at_k,
            r.p50_ms,
            r.p99_ms,
            r.exact_p50_ms
        );
    }
    Ok(())
}

pub fn run_bench(args: SearchBenchArgs) -> Result<()> {
    if let Some(dir) = &args.store {
        return run_store_bench(&args, dir);
    }
    use gclip_search::ann::AnnParams;
    use gclip_search::bench::{run_ann_bench, AnnBenchPlan};
    let plan = AnnBenchPlan {
        count: args.count,
        dim: args.dim,
        queries: args.queries.max(1),
        k: args.k.max(1),
        expansions: args.ef.clone(),
        categories: args.categories,
        params: AnnParams {
            connectivity: args.connectivity,
            expansion_add: args.ef_construction,
            expansion_search: args.ef.first().copied().unwrap_or(64),
            bf16: !args.f32,
        },
        seed: BENCH_SEED,
        latent_dim: args.latent_dim,
    };
    if let Some(dir) = &args.export {
        return export_bench_vectors(&plan, dir);
    }
    let (build, rows) = run_ann_bench(&plan, &|m| eprintln!("{m}"))?;
    if args.json {
        println!("{}", serde_json::to_string(&build)?);
        for r in &rows {
            println!("{}", serde_json::to_string(r)?);
        }
        return Ok(());
    }
    println!(
        "HNSW M={} efConstruction={} {}, {}: {} × {}-d built in {:.1} s on {} threads",
        args.connectivity,
        args.ef_construction,
        if args.f32 { "f32" } else { "bf16" },
        vectors_kind(args.latent_dim),
        build.count,
        build.dim,
        build.seconds,
        build.threads
    );
    println!(
        "{:>6}  {:>8}  {:>9}  {:>8}  {:>8}  {:>10}",
        "ef", "filter", "recall@k", "p50 ms", "p99 ms", "exact p50"
    );
    for r in rows {
        println!(
            "{:>6}  {:>8}  {:>9.4}  {:>8.3}  {:>8.3}  {:>10.2}",
            r.expansion_search,
            r.filter_selectivity
                .map(|s| format!("{:.0}%", s * 100.0))
                .unwrap_or_else(|| "none".into()),
            r.recall_at_k,
            r.p50_ms,
            r.p99_ms,
            r.exact_p50_ms
        );
    }
    Ok(())
}

//! Measures qdrant-edge (Qdrant's in-process engine) on the vectors that
//! `gclip search-bench --export DIR` writes, the way `gclip search-bench` measures gclip's HNSW:
//! build seconds, then for each ef recall@k against exact brute force and the p50/p99 latency of
//! single queries one at a time, without a filter and with a one-category filter.
//!
//! Usage: qdrant-edge-bench DIR [--ef 64,128,256] [--m 32] [--ef-construct 128] [--threads 2]
//!        [--segments 1] [--shard PATH] [--keep] [--json]

use std::error::Error;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::time::Instant;

use qdrant_edge::external::serde_json::{self, json, Value};
use qdrant_edge::{
    AcornSearchParams, Condition, CreateIndex, Distance, EdgeConfig, EdgeOptimizersConfig,
    EdgeShard, EdgeVectorParams, FieldCondition, FieldIndexOperations, Filter, HnswIndexConfig,
    JsonPath, Match, NamedQuery, PayloadFieldSchema, PayloadSchemaType, PointId,
    PointInsertOperations, PointOperations, PointStruct, PointStructPersisted, QueryEnum,
    QueryRequest, ScoringQuery, SearchParams, UpdateOperation, DEFAULT_VECTOR_NAME,
};

type Res<T> = Result<T, Box<dyn Error>>;

struct Options {
    dir: PathBuf,
    ef: Vec<usize>,
    m: usize,
    ef_construct: usize,
    threads: usize,
    segments: usize,
    shard: Option<PathBuf>,
    keep: bool,
    json: bool,
}

fn parse_options() -> Res<Options> {
    let mut o = Options {
        dir: PathBuf::new(),
        ef: vec![64, 128, 256],
        m: 32,
        ef_construct: 128,
        threads: 2,
        segments: 1,
        shard: None,
        keep: false,
        json: false,
    };
    let mut dir = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |name: &str| args.next().ok_or_else(|| format!("{name} needs a value"));
        match a.as_str() {
            "--ef" => {
                o.ef = value("--ef")?
                    .split(',')
                    .map(|s| s.trim().parse())
                    .collect::<Result<_, _>>()?
            }
            "--m" => o.m = value("--m")?.parse()?,
            "--ef-construct" => o.ef_construct = value("--ef-construct")?.parse()?,
            "--threads" => o.threads = value("--threads")?.parse()?,
            "--segments" => o.segments = value("--segments")?.parse()?,
            "--shard" => o.shard = Some(PathBuf::from(value("--shard")?)),
            "--keep" => o.keep = true,
            "--json" => o.json = true,
            "-h" | "--help" => {
                println!(
                    "qdrant-edge-bench DIR [--ef 64,128,256] [--m 32] [--ef-construct 128] \
                     [--threads 2] [--segments 1] [--shard PATH] [--keep] [--json]\n\
                     DIR holds data.npy, queries.npy and meta.json from \
                     `gclip search-bench --export DIR`."
                );
                std::process::exit(0);
            }
            s if s.starts_with('-') => return Err(format!("unknown option {s}").into()),
            s => dir = Some(PathBuf::from(s)),
        }
    }
    o.dir = dir.ok_or("give the export directory")?;
    Ok(o)
}

/// Reads a little-endian float32, C-order, two-dimensional `.npy` file: (rows, cols, values).
fn read_npy_f32(path: &Path) -> Res<(usize, usize, Vec<f32>)> {
    let mut f = BufReader::new(File::open(path).map_err(|e| format!("{}: {e}", path.display()))?);
    let mut magic = [0u8; 8];
    f.read_exact(&mut magic)?;
    if &magic[..6] != b"\x93NUMPY" {
        return Err(format!("{} is not a .npy file", path.display()).into());
    }
    let header_len = if magic[6] == 1 {
        let mut b = [0u8; 2];
        f.read_exact(&mut b)?;
        u16::from_le_bytes(b) as usize
    } else {
        let mut b = [0u8; 4];
        f.read_exact(&mut b)?;
        u32::from_le_bytes(b) as usize
    };
    let mut header = vec![0u8; header_len];
    f.read_exact(&mut header)?;
    let header = String::from_utf8(header)?;
    if !header.contains("'descr': '<f4'") || header.contains("'fortran_order': True") {
        return Err(format!("{}: want C-order '<f4', header {header}", path.display()).into());
    }
    let shape = header
        .split("'shape':")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .ok_or("no shape in .npy header")?;
    let dims: Vec<usize> = shape
        .trim()
        .trim_start_matches('(')
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let [rows, cols] = dims[..] else {
        return Err(format!("{}: want two dimensions, got {dims:?}", path.display()).into());
    };
    let mut bytes = Vec::with_capacity(rows * cols * 4);
    f.read_to_end(&mut bytes)?;
    if bytes.len() != rows * cols * 4 {
        return Err(format!(
            "{}: {} data bytes for {rows}×{cols}",
            path.display(),
            bytes.len()
        )
        .into());
    }
    let values = bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    Ok((rows, cols, values))
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    // Eight running sums so the compiler can vectorise the loop.
    let mut acc = [0.0f32; 8];
    let (ac, ar) = a.split_at(a.len() / 8 * 8);
    let (bc, br) = b.split_at(ac.len());
    for (x, y) in ac.chunks_exact(8).zip(bc.chunks_exact(8)) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in ar.iter().zip(br) {
        s += x * y;
    }
    s
}

/// Exact top-k rows by dot product among rows that `keep` accepts, best first.
fn exact_top_k(
    data: &[f32],
    dim: usize,
    q: &[f32],
    k: usize,
    keep: impl Fn(usize) -> bool,
) -> Vec<u64> {
    let mut top: Vec<(f32, usize)> = Vec::with_capacity(k + 1);
    for (row, v) in data.chunks_exact(dim).enumerate() {
        if !keep(row) {
            continue;
        }
        let s = dot(q, v);
        if top.len() < k || s > top[top.len() - 1].0 {
            let at = top.partition_point(|&(t, _)| t >= s);
            top.insert(at, (s, row));
            top.truncate(k);
        }
    }
    top.into_iter().map(|(_, r)| r as u64).collect()
}

fn percentile(sorted_ms: &[f64], p: f64) -> f64 {
    if sorted_ms.is_empty() {
        return 0.0;
    }
    sorted_ms[((sorted_ms.len() - 1) as f64 * p).round() as usize]
}

fn dir_size(path: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

fn category_filter(category: u64) -> Filter {
    let key: JsonPath = "category".parse().expect("valid JSON path");
    Filter::new_must(Condition::Field(FieldCondition::new_match(
        key,
        Match::from(category as i64),
    )))
}

fn main() -> Res<()> {
    let o = parse_options()?;
    let meta: Value = serde_json::from_reader(File::open(o.dir.join("meta.json"))?)?;
    let get = |k: &str| -> Res<usize> {
        Ok(meta[k]
            .as_u64()
            .ok_or_else(|| format!("meta.json lacks {k}"))? as usize)
    };
    let (k, cats) = (get("k")?, get("categories")?.max(1) as u64);
    let (count, dim, data) = read_npy_f32(&o.dir.join("data.npy"))?;
    let (nq, qdim, queries) = read_npy_f32(&o.dir.join("queries.npy"))?;
    if qdim != dim || count != get("count")? || nq != get("queries")? {
        return Err("data.npy / queries.npy do not match meta.json".into());
    }
    eprintln!("{count} × {dim}-d data, {nq} queries, k = {k}, {cats} categories");

    let shard_dir = o.shard.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("qdrant-edge-bench-{}", std::process::id()))
    });
    if shard_dir.exists() {
        std::fs::remove_dir_all(&shard_dir)?;
    }
    let hnsw = HnswIndexConfig {
        m: o.m,
        ef_construct: o.ef_construct,
        max_indexing_threads: o.threads,
        ..Default::default()
    };
    let config = EdgeConfig::builder()
        .vector(
            DEFAULT_VECTOR_NAME,
            // Full-precision float32 vectors in RAM, no quantization.
            EdgeVectorParams::builder(dim, Distance::Dot).build(),
        )
        .hnsw_config(hnsw)
        .optimizers(EdgeOptimizersConfig {
            default_segment_number: Some(o.segments),
            ..Default::default()
        })
        // gclip's search-bench builds in memory without a log; so does this.
        .wal_enabled(false)
        .max_search_threads(o.threads)
        .build();

    let t_build = Instant::now();
    let shard = EdgeShard::new(&shard_dir, config)?;
    // The payload index exists before the points arrive, as Qdrant recommends, so the HNSW build
    // can add payload-aware links for the field (it skips value blocks it judges the main graph
    // already connects: with m = 32 that includes a tenth of 100,000 points).
    shard.update(UpdateOperation::FieldIndexOperation(
        FieldIndexOperations::CreateIndex(CreateIndex {
            field_name: "category".parse().map_err(|()| "bad JSON path")?,
            field_schema: Some(PayloadFieldSchema::FieldType(PayloadSchemaType::Integer)),
        }),
    ))?;
    for (start, chunk) in data
        .chunks(1000 * dim)
        .enumerate()
        .map(|(i, c)| (i * 1000, c))
    {
        let points: Vec<PointStructPersisted> = chunk
            .chunks_exact(dim)
            .enumerate()
            .map(|(j, v)| {
                let id = (start + j) as u64;
                PointStruct::new(id, v.to_vec(), json!({ "category": id % cats })).into()
            })
            .collect();
        shard.update(UpdateOperation::PointOperation(
            PointOperations::UpsertPoints(PointInsertOperations::PointsList(points)),
        ))?;
    }
    let upsert_s = t_build.elapsed().as_secs_f64();
    eprintln!("upserted in {upsert_s:.1} s; optimizing (HNSW build)");
    shard.optimize()?;
    let build_s = t_build.elapsed().as_secs_f64();
    shard.flush()?;
    let info = shard.info()?;
    let disk = dir_size(&shard_dir);
    eprintln!(
        "built in {build_s:.1} s (upsert {upsert_s:.1} s + optimize {:.1} s); {} segments, {} points, \
         {} indexed vectors; {:.1} MiB on disk",
        build_s - upsert_s,
        info.segments_count,
        info.points_count,
        info.indexed_vectors_count,
        disk as f64 / (1 << 20) as f64
    );

    let mut rows = Vec::new();
    for filtered in [false, true] {
        eprintln!("exact ground truth (filter: {filtered})");
        let truth: Vec<Vec<u64>> = queries
            .chunks_exact(dim)
            .enumerate()
            .map(|(qi, q)| {
                let want = qi as u64 % cats;
                exact_top_k(&data, dim, q, k, |row| {
                    !filtered || row as u64 % cats == want
                })
            })
            .collect();
        // Filtered queries run twice: Qdrant's default filtered HNSW walk, then with ACORN
        // (which also explores neighbours of neighbours when the filter is selective).
        let acorn_modes: &[bool] = if filtered { &[false, true] } else { &[false] };
        for &acorn in acorn_modes {
            for &ef in &o.ef {
                let mut ms = Vec::with_capacity(nq);
                let mut hits = 0usize;
                for (qi, q) in queries.chunks_exact(dim).enumerate() {
                    let mut request = QueryRequest::new(k);
                    request.query = Some(ScoringQuery::Vector(QueryEnum::Nearest(
                        NamedQuery::default_dense(q.to_vec()),
                    )));
                    request.params = Some(SearchParams {
                        hnsw_ef: Some(ef),
                        acorn: acorn.then_some(AcornSearchParams {
                            enable: true,
                            max_selectivity: None,
                        }),
                        ..Default::default()
                    });
                    if filtered {
                        request.filter = Some(category_filter(qi as u64 % cats));
                    }
                    let t = Instant::now();
                    let found = shard.query(request)?;
                    ms.push(t.elapsed().as_secs_f64() * 1e3);
                    hits += found
                        .iter()
                        .filter(|p| matches!(p.id, PointId::NumId(id) if truth[qi].contains(&id)))
                        .count();
                }
                ms.sort_by(f64::total_cmp);
                rows.push(json!({
                    "engine": "qdrant-edge",
                    "count": count,
                    "dim": dim,
                    "expansion_search": ef,
                    "filter_selectivity": if filtered { Some(1.0 / cats as f64) } else { None },
                    "acorn": acorn,
                    "recall_at_k": hits as f64 / (nq * k) as f64,
                    "p50_ms": percentile(&ms, 0.5),
                    "p99_ms": percentile(&ms, 0.99),
                }));
            }
        }
    }

    let build = json!({
        "engine": "qdrant-edge",
        "count": count,
        "dim": dim,
        "seconds": build_s,
        "upsert_seconds": upsert_s,
        "threads": o.threads,
        "segments": info.segments_count,
        "disk_bytes": disk,
        "m": o.m,
        "ef_construct": o.ef_construct,
    });
    if o.json {
        println!("{build}");
        for r in &rows {
            println!("{r}");
        }
    } else {
        println!(
            "qdrant-edge HNSW m={} ef_construct={} f32, dot: {count} × {dim}-d built in {build_s:.1} s \
             (upsert {upsert_s:.1} s) on {} threads, {} segment(s), {:.1} MiB on disk",
            o.m,
            o.ef_construct,
            o.threads,
            info.segments_count,
            disk as f64 / (1 << 20) as f64
        );
        println!(
            "{:>6}  {:>10}  {:>9}  {:>8}  {:>8}",
            "ef", "filter", "recall@k", "p50 ms", "p99 ms"
        );
        for r in &rows {
            let filter = match r["filter_selectivity"].as_f64() {
                Some(s) if r["acorn"] == true => format!("{:.0}%+acorn", s * 100.0),
                Some(s) => format!("{:.0}%", s * 100.0),
                None => "none".into(),
            };
            println!(
                "{:>6}  {:>10}  {:>9.4}  {:>8.3}  {:>8.3}",
                r["expansion_search"].as_u64().unwrap_or(0),
                filter,
                r["recall_at_k"].as_f64().unwrap_or(0.0),
                r["p50_ms"].as_f64().unwrap_or(0.0),
                r["p99_ms"].as_f64().unwrap_or(0.0)
            );
        }
    }
    drop(shard);
    if !o.keep {
        std::fs::remove_dir_all(&shard_dir)?;
    }
    Ok(())
}

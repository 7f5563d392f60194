//! Ingest and search on a Milvus collection against the embedded backend, same documents and
//! queries: documents/s while writing in batches, then search latency (p50, p99) one query at a
//! time, top 10, the default mode of each.
//!
//! ```text
//! cargo run --release -p gclip-search --example milvus_bench -- \
//!     milvus://127.0.0.1:19530/bench 10000 512 [queries]
//! ```
//! The Milvus collection must not exist (it is created, and left there); the embedded one is
//! made in a temporary directory and removed. Vectors are random unit vectors (a fixed seed).

use std::path::Path;
use std::time::Instant;

use gclip_search::document::normalize;
use gclip_search::milvus::{MilvusAddress, MilvusOptions, MilvusStore};
use gclip_search::sqlite::{SqliteStore, StoreOptions};
use gclip_search::store::{CollectionInfo, Store};
use gclip_search::{EmbedSpec, ModelIdentity, NewDocument, SearchRequest};

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e3779b97f4a7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d049bb133111eb);
    x ^ (x >> 31)
}

fn unit_vector(seed: u64, dim: usize) -> Vec<f32> {
    let mut v: Vec<f32> = (0..dim as u64)
        .map(|i| (splitmix(seed.wrapping_mul(1_000_003) + i) % 20_001) as f32 / 10_000.0 - 1.0)
        .collect();
    normalize(&mut v);
    v
}

fn percentile(sorted_ms: &[f64], p: f64) -> f64 {
    let i = ((sorted_ms.len() as f64 - 1.0) * p).round() as usize;
    sorted_ms[i.min(sorted_ms.len() - 1)]
}

fn run(name: &str, store: &dyn Store, count: usize, dim: usize, queries: usize) {
    let start = Instant::now();
    for first in (0..count).step_by(1000) {
        let docs: Vec<NewDocument> = (first..(first + 1000).min(count))
            .map(|i| NewDocument {
                id: format!("doc{i:08}"),
                fields: serde_json::json!({"n": i, "tag": if i % 2 == 0 { "even" } else { "odd" }})
                    .as_object()
                    .cloned()
                    .unwrap_or_default(),
                vector: unit_vector(i as u64, dim),
                source: None,
            })
            .collect();
        if let Err(e) = store.upsert(docs) {
            eprintln!("{name}: {e}");
            std::process::exit(1);
        }
    }
    if let Err(e) = store.flush() {
        eprintln!("{name}: {e}");
        std::process::exit(1);
    }
    let ingest = start.elapsed().as_secs_f64();
    let mut ms = Vec::with_capacity(queries);
    for q in 0..queries {
        let request = SearchRequest {
            vector: Some(unit_vector(1_000_000_000 + q as u64, dim)),
            limit: 10,
            ..Default::default()
        };
        let t = Instant::now();
        if let Err(e) = store.search(&request) {
            eprintln!("{name}: {e}");
            std::process::exit(1);
        }
        ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    ms.sort_by(f64::total_cmp);
    println!(
        "{name}: {count} × {dim}-d ingested in {ingest:.1} s ({:.0} documents/s); search top 10: \
         p50 {:.2} ms, p99 {:.2} ms over {queries} queries",
        count as f64 / ingest,
        percentile(&ms, 0.5),
        percentile(&ms, 0.99)
    );
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 3 {
        eprintln!("usage: milvus_bench MILVUS_ADDRESS COUNT DIM [QUERIES]");
        std::process::exit(2);
    }
    let (Ok(count), Ok(dim)) = (args[1].parse::<usize>(), args[2].parse::<usize>()) else {
        eprintln!("COUNT and DIM are numbers");
        std::process::exit(2);
    };
    let queries = args.get(3).and_then(|q| q.parse().ok()).unwrap_or(200);
    let info = CollectionInfo {
        model: ModelIdentity {
            model: "bench".into(),
            arch: None,
            dim,
            precision: Default::default(),
        },
        spec: EmbedSpec::image(),
        created: 0,
    };
    let address = match MilvusAddress::parse(&args[0]) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let dir = std::env::temp_dir().join(format!("gclip-milvus-bench-{}", std::process::id()));
    match SqliteStore::create(Path::new(&dir), info.clone(), StoreOptions::default()) {
        Ok(embedded) => run("embedded", &embedded, count, dim, queries),
        Err(e) => eprintln!("embedded: {e}"),
    }
    let _ = std::fs::remove_dir_all(&dir);
    match MilvusStore::create(
        &address,
        info,
        MilvusOptions::from_env().expect("Milvus options"),
    ) {
        Ok(milvus) => run("milvus", &milvus, count, dim, queries),
        Err(e) => eprintln!("milvus: {e}"),
    }
}

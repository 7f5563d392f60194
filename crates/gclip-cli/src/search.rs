//! `gclip search C "text" | --image PATH | --query "text:weight"…`

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::{Args, ValueEnum};
use gclip_search::query::{parse_weighted, query_vector};
use gclip_search::{Filter, Fusion, Hit, QueryInput, QueryPart, SearchMode, SearchRequest};

use crate::index::{load_embedder, open_collection, ModelArgs};

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
    /// Collection directory.
    collection: PathBuf,
    /// Query text.
    text: Option<String>,
    /// Query image file.
    #[arg(long)]
    image: Option<PathBuf>,
    /// Weighted query part, `TEXT[:WEIGHT]`; repeat; negative weights push away.
    #[arg(long = "query")]
    queries: Vec<String>,
    /// Weighted image part, `PATH[:WEIGHT]`; repeat.
    #[arg(long = "image-query")]
    image_queries: Vec<String>,
    /// Documents like this one (its stored vector).
    #[arg(long)]
    like: Option<String>,
    /// Results to show.
    #[arg(long, default_value_t = 10)]
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

pub fn run(args: SearchArgs) -> Result<()> {
    let collection = open_collection(&args.collection, &ModelArgs::default(), None)?;
    let filter = args.filter.as_deref().map(Filter::parse).transpose()?;
    let mut parts = Vec::new();
    if let Some(t) = &args.text {
        parts.push(QueryPart::new(QueryInput::Text(t.clone())));
    }
    if let Some(p) = &args.image {
        parts.push(QueryPart::new(QueryInput::ImageFile(p.clone())));
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
            input: QueryInput::ImageFile(PathBuf::from(path)),
            weight,
        });
    }
    if let Some(id) = &args.like {
        parts.push(QueryPart::new(QueryInput::Document(id.clone())));
    }
    if parts.is_empty() {
        bail!("nothing to search for: give TEXT, --image, --query, --image-query or --like");
    }
    let lexical_text: Option<String> = if args.hybrid || args.lexical {
        let texts: Vec<String> = parts
            .iter()
            .filter(|p| p.weight > 0.0)
            .filter_map(|p| match &p.input {
                QueryInput::Text(t) => Some(t.clone()),
                _ => None,
            })
            .collect();
        if texts.is_empty() {
            bail!("--hybrid and --lexical need query text");
        }
        Some(texts.join(" "))
    } else {
        None
    };
    let vector = if args.lexical {
        None
    } else {
        let embedder = load_embedder(&collection, 32)?;
        Some(query_vector(&embedder, Some(collection.store()), &parts)?)
    };
    let request = SearchRequest {
        vector,
        text: lexical_text,
        filter,
        limit: args.limit,
        offset: args.offset,
        mode: if args.exact {
            SearchMode::Exact
        } else {
            SearchMode::Auto
        },
        fusion: match args.fusion {
            FusionArg::Rrf => Fusion::Rrf { k: 60.0 },
            FusionArg::Weighted => Fusion::Weighted {
                vector: 0.5,
                lexical: 0.5,
            },
        },
    };
    let hits = collection.search(&request)?;
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
    println!(
        "{:>4}  {:>7}  {:<28}  image / fields",
        "rank", "score", "id"
    );
    for (i, h) in hits.iter().enumerate() {
        let detail = match &h.image {
            Some(p) => p.clone(),
            None => serde_json::Value::Object(h.fields.clone()).to_string(),
        };
        let detail: String = detail.chars().take(100).collect();
        // Ids are often paths: keep their end.
        let n = h.id.chars().count();
        let id: String = if n > 28 {
            std::iter::once('…')
                .chain(h.id.chars().skip(n - 27))
                .collect()
        } else {
            h.id.clone()
        };
        println!(
            "{:>4}  {:>7.4}  {:<28}  {detail}",
            offset + i + 1,
            h.score,
            id
        );
    }
}

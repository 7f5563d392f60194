//! `gclip eval retrieval` and `gclip eval ranking`

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use gclip::embed::Embedder;
use gclip::eval::marqo_gs;
use gclip::eval::ranking::{evaluate, MetricSet, Qrels, Run};
use gclip::train::data::{DataSpec, Layout};
use gclip::train::evaluate::{
    load_eval_pairs, load_model, ranking_metrics, retrieval_metrics, Embedding,
};
use gclip::train::gs_ranking::{GsQueries, GsSet, GsSpec};
use gclip::train::loss::{FieldKind, FieldSpec};

#[derive(Subcommand)]
pub enum EvalCommand {
    /// Text→image and image→text Recall@1/5/10, mean and median rank (open_clip's metrics).
    Retrieval(RetrievalArgs),
    /// GCL's ranking metrics of a model on graded pairs, or of TREC qrels and run files.
    Ranking(Box<RankingArgs>),
}

/// The model and data options shared by both evaluations.
#[derive(Args)]
pub struct ModelData {
    /// Model: a model directory, an open_clip checkpoint file with --arch, or a gclip training
    /// checkpoint (run directory or step-N directory).
    #[arg(long)]
    model: Option<String>,
    /// open_clip architecture of a checkpoint file.
    // Only with --model: on its own it would be silently ignored.
    #[arg(long, requires = "model")]
    arch: Option<String>,
    /// Precision of the model: fp32, bf16 or int8.
    #[arg(long, default_value = "fp32")]
    precision: gclip::model::Precision,
    /// Evaluation pairs: JSONL ({"query": {...}, "doc": {...}, "score": x}) or a Marqo-GS CSV.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Folder that relative image paths are relative to (default: the data file's).
    #[arg(long)]
    image_root: Option<PathBuf>,
    /// Query fields: NAME[:KIND][:WEIGHT], comma-separated (KIND text or image; a field named
    /// `image` defaults to image).
    #[arg(long, default_value = "text")]
    query_fields: String,
    /// Document fields, as --query-fields. GCL's default for GS data is `image:0.9,title:0.1`.
    #[arg(long, default_value = "image")]
    doc_fields: String,
    /// GS CSV: the score column.
    #[arg(long, default_value = "score_linear")]
    score_column: String,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
#[command(after_help = "Examples:
  gclip eval retrieval --model runs/emoji --data emoji-test.jsonl
  gclip eval retrieval --model ./clip-vit-base-patch32 --data pairs.jsonl --query-fields caption --json")]
pub struct RetrievalArgs {
    #[command(flatten)]
    md: ModelData,
}

#[derive(Args)]
#[command(after_help = "Examples:
  gclip eval ranking --qrels test.qrels --run system.run --json
  gclip eval ranking --model runs/gcl --data query_1_product_id_1.csv --query-fields query --doc-fields image:0.9,title:0.1 --json
  gclip eval ranking --model runs/gcl --data test.jsonl --save-run test.run --save-qrels test.qrels
  gclip eval ranking --model runs/gcl --data query_0_product_id_0.csv --corpus corpus_1.json \
      --sample-queries 2000 --seed 1 --query-fields query --doc-fields image --json
  gclip eval ranking --model runs/gcl --corpus corpus_1.json \
      --ground-truth query_0_product_id_0_gt_test.json --query-fields query --doc-fields image

Marqo-GS (GCL's eval_gs_v1.py): a --corpus that is one JSON object (document id → fields, as
corpus_N.json) is searched whole; queries come from --ground-truth (all of its queries) or from
the split's CSV (--data; all queries, or --sample-queries N drawn as GCL draws them).

Keys: ndcg@K, map@K, recall@K, p@K, mrr@K for K in 1,2,3,4,5,6,8,10,12,20,30,...,100,200,500,1000;
err; rbp@0.7, rbp@0.8, rbp@0.9. nDCG/MAP/recall/P follow trec_eval (pytrec_eval), MRR BEIR,
ERR and RBP GCL's evaluation; see the gclip::eval::ranking documentation.")]
pub struct RankingArgs {
    /// TREC qrels file (`query 0 document grade`).
    #[arg(long, requires = "run", conflicts_with = "model")]
    qrels: Option<PathBuf>,
    /// TREC run file (`query Q0 document rank score tag`) or pytrec_eval JSON.
    #[arg(long)]
    run: Option<PathBuf>,
    #[command(flatten)]
    md: ModelData,
    /// Documents retrieved per query.
    #[arg(long, default_value_t = 1000, value_parser = crate::args::positive_count)]
    top_k: usize,
    /// Cut-offs (default: GCL's 1 … 1000).
    #[arg(long, value_delimiter = ',')]
    cutoffs: Option<Vec<usize>>,
    /// Extra documents to search: a JSONL (or GS CSV) of pairs whose document sides form the
    /// corpus (their queries are ignored), or a Marqo-GS corpus_N.json (one JSON object,
    /// document id → fields), all of whose documents are searched.
    #[arg(long)]
    corpus: Option<PathBuf>,
    /// Marqo-GS ground truth (query_…_gt_test.json, or the gt_results.json of GCL's script):
    /// query key → {document id → grade}; every query of it is evaluated. Needs a corpus JSON.
    #[arg(long, conflicts_with_all = ["qrels", "sample_queries"])]
    ground_truth: Option<PathBuf>,
    /// Marqo-GS: evaluate N queries of the --data CSV drawn as GCL draws its test queries
    /// (without replacement, weighted by their summed rescaled scores; GCL's scripts use 2000).
    /// Default: every query.
    #[arg(long, value_name = "N", conflicts_with = "qrels")]
    sample_queries: Option<usize>,
    /// Seed of --sample-queries (GCL's: 1).
    #[arg(long, default_value_t = 1)]
    seed: u32,
    /// Write the model's run as a TREC run file (Marqo-GS: as JSON {query: {document: score}}).
    #[arg(long)]
    save_run: Option<PathBuf>,
    /// Write the relevance labels as TREC qrels (Marqo-GS: as ground-truth JSON).
    #[arg(long)]
    save_qrels: Option<PathBuf>,
}

fn fields(spec: &str) -> Result<Vec<FieldSpec>> {
    spec.split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|f| {
            let parts: Vec<&str> = f.trim().split(':').collect();
            let name = parts[0].to_string();
            let mut kind = if name == "image" {
                FieldKind::Image
            } else {
                FieldKind::Text
            };
            let mut weight = 1.0;
            for p in &parts[1..] {
                match *p {
                    "text" => kind = FieldKind::Text,
                    "image" => kind = FieldKind::Image,
                    w => {
                        weight = w.parse().with_context(|| {
                            format!("field `{f}`: `{w}` is neither a kind nor a weight")
                        })?
                    }
                }
            }
            Ok(FieldSpec { name, kind, weight })
        })
        .collect()
}

/// The model as the evaluation functions embed with it, 64 rows at a time.
fn embedding(model: &Embedder) -> Result<Embedding<'_>> {
    Ok(Embedding::of(model, 64)?)
}

/// The metrics that count something rather than measure it.
const COUNTS: &[&str] = &["queries", "queries_evaluated"];

fn print(metrics: &BTreeMap<String, f64>, json: bool, main: &[&str]) {
    if json {
        println!("{}", serde_json::to_string(metrics).unwrap_or_default());
        return;
    }
    for k in main {
        match metrics.get(*k) {
            // Counts are whole numbers: `queries 25`, not `queries 25.0000`.
            Some(v) if COUNTS.contains(k) => println!("{k:<22} {v}"),
            Some(v) => println!("{k:<22} {v:.4}"),
            None => {}
        }
    }
}

fn dataset(
    md: &ModelData,
    q: &[FieldSpec],
    d: &[FieldSpec],
) -> Result<gclip::train::data::Dataset> {
    let path = md.data.clone().context("--data is required with --model")?;
    dataset_at(md, path, q, d)
}

fn dataset_at(
    md: &ModelData,
    path: PathBuf,
    q: &[FieldSpec],
    d: &[FieldSpec],
) -> Result<gclip::train::data::Dataset> {
    let data = DataSpec {
        layout: Layout::of_path(&path),
        path,
        image_root: md.image_root.clone(),
        score_column: md.score_column.clone(),
    };
    Ok(load_eval_pairs(&data, q, d, &mut |note| {
        eprintln!("{note}")
    })?)
}

pub fn run(cmd: EvalCommand) -> Result<()> {
    match cmd {
        EvalCommand::Retrieval(a) => {
            let md = &a.md;
            let model = load_model(
                md.model.as_deref().context("--model is required")?,
                md.arch.as_deref(),
                md.precision,
            )?;
            let (q, d) = (fields(&md.query_fields)?, fields(&md.doc_fields)?);
            let ds = dataset(md, &q, &d)?;
            let e = embedding(&model)?;
            let m = retrieval_metrics(&e, &ds, &q, &d)?;
            let map: BTreeMap<String, f64> = m.named().into_iter().collect();
            print(
                &map,
                md.json,
                &[
                    "text_to_image_R@1",
                    "text_to_image_R@5",
                    "text_to_image_R@10",
                    "text_to_image_mean_rank",
                    "text_to_image_median_rank",
                    "image_to_text_R@1",
                    "image_to_text_R@5",
                    "image_to_text_R@10",
                    "image_to_text_mean_rank",
                    "image_to_text_median_rank",
                ],
            );
        }
        EvalCommand::Ranking(a) => {
            let mut set = MetricSet::default();
            if let Some(c) = a.cutoffs.clone() {
                set.cutoffs = c;
            }
            let gs_corpus = match &a.corpus {
                Some(c) => marqo_gs::is_json_object_file(c)?,
                None => false,
            };
            let metrics = if gs_corpus || a.ground_truth.is_some() || a.sample_queries.is_some() {
                gs_ranking(&a, &set)?
            } else if let Some(qrels) = &a.qrels {
                let run = a.run.as_ref().context("--run is required with --qrels")?;
                evaluate(&Qrels::read(qrels)?, &Run::read(run)?, &set)
            } else {
                let md = &a.md;
                let model = load_model(
                    md.model
                        .as_deref()
                        .context("give --qrels and --run, or --model and --data")?,
                    md.arch.as_deref(),
                    md.precision,
                )?;
                let (q, d) = (fields(&md.query_fields)?, fields(&md.doc_fields)?);
                let ds = dataset(md, &q, &d)?;
                let e = embedding(&model)?;
                let corpus = match &a.corpus {
                    Some(c) => Some(dataset_at(md, c.clone(), &q, &d)?),
                    None => None,
                };
                let r = ranking_metrics(&e, &ds, corpus.as_ref(), &q, &d, a.top_k, &set)?;
                if let Some(p) = &a.save_run {
                    write(p, r.run.to_trec("gclip"))?;
                }
                if let Some(p) = &a.save_qrels {
                    write(p, r.qrels.to_trec())?;
                }
                r.metrics
            };
            print(
                &metrics,
                a.md.json,
                &[
                    "ndcg@10",
                    "mrr@10",
                    "map@1000",
                    "recall@10",
                    "p@10",
                    "err",
                    "rbp@0.7",
                    "rbp@0.8",
                    "rbp@0.9",
                    "queries",
                    "queries_evaluated",
                ],
            );
        }
    }
    Ok(())
}

/// GCL's evaluation on Marqo-GS files: every document of a corpus JSON, queries and grades
/// from a ground-truth file or from the split's CSV.
fn gs_ranking(a: &RankingArgs, set: &MetricSet) -> Result<BTreeMap<String, f64>> {
    let md = &a.md;
    let corpus_path = a.corpus.as_ref().context(
        "--ground-truth and --sample-queries need --corpus with a Marqo-GS corpus JSON \
         (corpus_N.json: document id → fields)",
    )?;
    if !marqo_gs::is_json_object_file(corpus_path)? {
        bail!(
            "{}: not a Marqo-GS corpus (one JSON object, document id → fields)",
            corpus_path.display()
        );
    }
    let model_name = md
        .model
        .as_deref()
        .context("--model is required to evaluate a corpus")?;
    let (q, d) = (fields(&md.query_fields)?, fields(&md.doc_fields)?);
    if let Some(p) = &md.data {
        if p.extension().is_none_or(|e| e != "csv") {
            bail!(
                "{}: with a Marqo-GS corpus, --data is the split's CSV \
                 (query_…_product_id_….csv)",
                p.display()
            );
        }
    }
    let queries = match (&a.ground_truth, &md.data) {
        (Some(gt), csv) => GsQueries::GroundTruth {
            path: gt.clone(),
            csv: csv.clone(),
        },
        (None, Some(csv)) => GsQueries::Csv {
            path: csv.clone(),
            sample: a.sample_queries,
            seed: a.seed,
        },
        (None, None) => {
            bail!("give --ground-truth, or --data with the split's CSV to take queries from")
        }
    };
    let spec = GsSpec {
        corpus: corpus_path.clone(),
        queries,
        image_root: md.image_root.clone(),
        query_fields: q,
        doc_fields: d,
        score_column: md.score_column.clone(),
        top_k: a.top_k,
    };
    let gs = GsSet::read(&spec, &mut |note| eprintln!("{note}"))?;
    eprintln!(
        "{} queries, {} documents",
        gs.query_ids.len(),
        gs.doc_ids.len()
    );
    let model = load_model(model_name, md.arch.as_deref(), md.precision)?;
    let run = gs.run(&embedding(&model)?)?;
    if let Some(p) = &a.save_run {
        write(p, run.to_json())?;
    }
    if let Some(p) = &a.save_qrels {
        write(p, gs.qrels.to_json())?;
    }
    Ok(evaluate(&gs.qrels, &run, set))
}

fn write(path: &Path, text: String) -> Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

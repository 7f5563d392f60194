//! Evaluation of a model on held-out pairs: retrieval (open_clip's metrics) for image–text
//! pairs, ranking (GCL's metrics) for graded query–document pairs. Used during training and by
//! `gclip eval`.
//!
//! This module embeds rows of field values ([`Embedding`]) and hands the vectors to the metrics
//! of [`crate::eval`]. It stays in `train` because the rows, their fields and their fusion are
//! training's ([`super::data`], [`super::loss`]), so a run's evaluation embeds exactly as it
//! trains; `eval` importing them would make `eval` and `train` import each other.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{Device, Tensor};

use super::checkpoint::{checkpoint_dir, load_checkpoint};
use super::data::{load, DataSpec, Dataset, FieldValue};
use super::loss::{fuse_fields, FieldEmbedding, FieldKind, FieldSpec, GclSpec, ScoreToWeight};
use super::TrainError;
use crate::embed::{EmbedError, Embedder, LoadOptions};
use crate::eval::ranking::{evaluate, graded_qrels, run_from_embeddings, MetricSet, RankingEval};
use crate::eval::retrieval::{clip_retrieval, RetrievalMetrics};
use crate::eval::zeroshot::ensemble_class_embeddings;
use crate::input::image::Preprocessor;
use crate::input::tokenizer::ClipTokenizer;
use crate::model::{Clip, Precision};
use crate::source::ModelSource;

/// What a side needs to be embedded.
pub struct Embedding<'a> {
    pub clip: &'a Clip,
    pub tokenizer: &'a ClipTokenizer,
    pub preprocessor: &'a Preprocessor,
    pub batch_size: usize,
}

/// Loads a model to evaluate: a gclip training checkpoint (a checkpoint directory, or a run
/// directory, whose newest checkpoint is read), restored in fp32 and then converted to
/// `precision`; or anything [`ModelSource::resolve`] takes (`arch` naming the architecture of an
/// open_clip checkpoint file), packed as it is read. The model must be able to embed text.
pub fn load_model(
    model: &str,
    arch: Option<&str>,
    precision: Precision,
) -> Result<Embedder, TrainError> {
    let path = Path::new(model);
    let embedder = if path.join("state.json").is_file() || path.join("checkpoints").is_dir() {
        let mut clip = load_checkpoint(&checkpoint_dir(path)?, &Device::Cpu)?.clip;
        clip.convert(precision, Default::default())?;
        Embedder::with_open_clip_inputs(clip)?
    } else {
        let options = LoadOptions {
            precision,
            ..Default::default()
        };
        Embedder::load_with(&ModelSource::resolve(model, arch)?, &Device::Cpu, options)?
    };
    tokenizer_of(&embedder)?;
    Ok(embedder)
}

/// The tokenizer of `embedder`'s model, or why it has none.
fn tokenizer_of(embedder: &Embedder) -> Result<&ClipTokenizer, TrainError> {
    Ok(embedder
        .inputs()
        .tokenizer()
        .map_err(|e| EmbedError::NoTokenizer(e.to_string()))?)
}

/// Pairs to evaluate on, read with the query and document fields of an evaluation and without
/// score weighting. Rows that could not be used are told to `note` in one line; a file without
/// a usable pair is an error.
pub fn load_eval_pairs(
    data: &DataSpec,
    query_fields: &[FieldSpec],
    doc_fields: &[FieldSpec],
    note: &mut dyn FnMut(String),
) -> Result<Dataset, TrainError> {
    let spec = GclSpec {
        score_to_weight: ScoreToWeight::None,
        query_fields: query_fields.to_vec(),
        doc_fields: doc_fields.to_vec(),
        extra_terms: vec![],
        mask_shared: false,
        weight_floor: 0.0,
    };
    let ds = load(data, &spec)?;
    if ds.skipped.total() > 0 {
        note(format!(
            "skipped {} of {} rows: {:?}",
            ds.skipped.total(),
            ds.rows_read,
            ds.skipped.counts
        ));
    }
    if ds.pairs.is_empty() {
        return Err(TrainError::Data("no usable pairs in the data".into()));
    }
    Ok(ds)
}

impl<'a> Embedding<'a> {
    /// The model and inputs of `embedder`, `batch_size` rows at a time.
    pub fn of(embedder: &'a Embedder, batch_size: usize) -> Result<Self, TrainError> {
        Ok(Self {
            clip: embedder.clip(),
            tokenizer: tokenizer_of(embedder)?,
            preprocessor: embedder.inputs().preprocessor(),
            batch_size,
        })
    }
}

impl Embedding<'_> {
    /// Fused, normalised embeddings of rows of field values (`specs` order), `[rows × dim]`.
    /// Rows whose image cannot be read lose that field (and fail if nothing is left).
    pub fn side(
        &self,
        rows: &[&[Option<FieldValue>]],
        specs: &[FieldSpec],
    ) -> Result<Vec<f32>, TrainError> {
        let dim = self.clip.config.embed_dim;
        let mut out = Vec::with_capacity(rows.len() * dim);
        let size = self.preprocessor.config().crop_size;
        for chunk in rows.chunks(self.batch_size.max(1)) {
            let n = chunk.len();
            let mut fields = Vec::new();
            for (k, spec) in specs.iter().enumerate() {
                let mut present = vec![true; n];
                let emb = match spec.kind {
                    FieldKind::Text => {
                        let texts: Vec<&str> = chunk
                            .iter()
                            .enumerate()
                            .map(|(i, r)| match &r[k] {
                                Some(FieldValue::Text(t)) => t.as_str(),
                                _ => {
                                    present[i] = false;
                                    ""
                                }
                            })
                            .collect();
                        let ids = self.tokenizer.encode_batch(&texts);
                        self.clip.text.forward(&ids)?.detach()
                    }
                    FieldKind::Image => {
                        let mut flat = Vec::with_capacity(n * 3 * size * size);
                        for (i, r) in chunk.iter().enumerate() {
                            let px = match &r[k] {
                                Some(FieldValue::Image(p)) => {
                                    self.preprocessor.pixels_from_path(p).ok()
                                }
                                _ => None,
                            };
                            match px {
                                Some(px) => flat.extend_from_slice(&px),
                                None => {
                                    present[i] = false;
                                    flat.extend(std::iter::repeat_n(0.0, 3 * size * size));
                                }
                            }
                        }
                        let t = Tensor::from_vec(flat, (n, 3, size, size), &Device::Cpu)?;
                        self.clip.vision.forward(&t)?.detach()
                    }
                };
                fields.push(FieldEmbedding {
                    name: spec.name.clone(),
                    embedding: emb,
                    present: if present.iter().all(|&p| p) {
                        None
                    } else {
                        Some(present)
                    },
                });
            }
            let fused = fuse_fields(&fields, specs)?;
            out.extend(fused.flatten_all()?.to_vec1::<f32>()?);
        }
        Ok(out)
    }
}

/// open_clip's retrieval metrics on pairs of one text query field and one image document field
/// (row `i`'s text matches row `i`'s image).
pub fn retrieval_metrics(
    e: &Embedding,
    data: &Dataset,
    query_fields: &[FieldSpec],
    doc_fields: &[FieldSpec],
) -> Result<RetrievalMetrics, TrainError> {
    let q: Vec<&[Option<FieldValue>]> = data.pairs.iter().map(|p| p.query.as_slice()).collect();
    let d: Vec<&[Option<FieldValue>]> = data.pairs.iter().map(|p| p.doc.as_slice()).collect();
    let text = e.side(&q, query_fields)?;
    let image = e.side(&d, doc_fields)?;
    Ok(clip_retrieval(&image, &text, e.clip.config.embed_dim))
}

/// GCL's ranking evaluation of a model on graded pairs: every distinct query searches every
/// distinct document of the set (by cosine of fused embeddings, top `k`); relevance labels are
/// the pair scores rescaled to integers 1–100 over the set.
///
/// `corpus` adds documents (the document side of its pairs) that no query of `data` grades, as
/// GCL searches the whole corpus of a split, not only its judged documents.
pub fn ranking_metrics(
    e: &Embedding,
    data: &Dataset,
    corpus: Option<&Dataset>,
    query_fields: &[FieldSpec],
    doc_fields: &[FieldSpec],
    k: usize,
    set: &MetricSet,
) -> Result<RankingEval, TrainError> {
    let mut queries: BTreeMap<u64, usize> = BTreeMap::new();
    let mut docs: BTreeMap<u64, &[Option<FieldValue>]> = BTreeMap::new();
    for p in data
        .pairs
        .iter()
        .chain(corpus.map_or(&[][..], |c| &c.pairs))
    {
        docs.entry(p.doc_key).or_insert(&p.doc);
    }
    for (i, p) in data.pairs.iter().enumerate() {
        queries.entry(p.query_key).or_insert(i);
    }
    let qrels = graded_qrels(
        data.pairs
            .iter()
            .map(|p| (hex_key(p.query_key), hex_key(p.doc_key), p.score)),
    );
    let q_rows: Vec<&[Option<FieldValue>]> = queries
        .values()
        .map(|&i| data.pairs[i].query.as_slice())
        .collect();
    let d_rows: Vec<&[Option<FieldValue>]> = docs.values().copied().collect();
    let q_ids: Vec<String> = queries.keys().map(|&k| hex_key(k)).collect();
    let d_ids: Vec<String> = docs.keys().map(|&k| hex_key(k)).collect();
    let qe = e.side(&q_rows, query_fields)?;
    let de = e.side(&d_rows, doc_fields)?;
    let run = run_from_embeddings(&q_ids, &qe, &d_ids, &de, e.clip.config.embed_dim, k);
    let metrics = evaluate(&qrels, &run, set);
    Ok(RankingEval {
        qrels,
        run,
        metrics,
    })
}

/// The id of a query or document key in qrels and runs: 16 hexadecimal digits.
fn hex_key(key: u64) -> String {
    format!("{key:016x}")
}

/// Zero-shot classification accuracy: each image is assigned the class whose prompt embeds
/// closest (cosine); `labels[i]` is image `i`'s class index into `prompts`.
pub fn zero_shot_accuracy(
    e: &Embedding,
    images: &[std::path::PathBuf],
    labels: &[usize],
    prompts: &[String],
) -> Result<f64, TrainError> {
    let single: Vec<Vec<String>> = prompts.iter().map(|p| vec![p.clone()]).collect();
    zero_shot_accuracy_ensemble(e, images, labels, &single)
}

/// Zero-shot classification accuracy with several prompts per class (`prompts[c]`, at least
/// one each), averaged as [`ensemble_class_embeddings`] does.
pub fn zero_shot_accuracy_ensemble(
    e: &Embedding,
    images: &[std::path::PathBuf],
    labels: &[usize],
    prompts: &[Vec<String>],
) -> Result<f64, TrainError> {
    let dim = e.clip.config.embed_dim;
    if prompts.iter().any(Vec::is_empty) {
        return Err(TrainError::Config(
            "zero-shot classification needs at least one prompt per class".into(),
        ));
    }
    let text_spec = [FieldSpec {
        name: "text".into(),
        kind: FieldKind::Text,
        weight: 1.0,
    }];
    let image_spec = [FieldSpec {
        name: "image".into(),
        kind: FieldKind::Image,
        weight: 1.0,
    }];
    let t_rows: Vec<Vec<Option<FieldValue>>> = prompts
        .iter()
        .flatten()
        .map(|p| vec![Some(FieldValue::Text(p.clone()))])
        .collect();
    let i_rows: Vec<Vec<Option<FieldValue>>> = images
        .iter()
        .map(|p| vec![Some(FieldValue::Image(p.clone()))])
        .collect();
    let t = e.side(
        &t_rows.iter().map(Vec::as_slice).collect::<Vec<_>>(),
        &text_spec,
    )?;
    let counts: Vec<usize> = prompts.iter().map(Vec::len).collect();
    let t = ensemble_class_embeddings(&t, dim, &counts);
    let im = e.side(
        &i_rows.iter().map(Vec::as_slice).collect::<Vec<_>>(),
        &image_spec,
    )?;
    let mut correct = 0usize;
    for (v, &label) in im.chunks_exact(dim).zip(labels) {
        let best = t
            .chunks_exact(dim)
            .map(|c| c.iter().zip(v).map(|(a, b)| a * b).sum::<f32>())
            .enumerate()
            .fold(
                (0, f32::NEG_INFINITY),
                |acc, (j, s)| if s > acc.1 { (j, s) } else { acc },
            )
            .0;
        correct += (best == label) as usize;
    }
    Ok(correct as f64 / labels.len().max(1) as f64)
}

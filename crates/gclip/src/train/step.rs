//! One batch's loss and parameter gradients: directly, or with gradient caching for
//! contrastive batches larger than memory allows.
//!
//! Gradient caching (Gao et al. 2021; open_clip's `--accum-freq` does the same): the loss of a
//! contrastive batch couples every pair, so it cannot be split into independent micro-batches.
//! Instead (1) every field is embedded in chunks without keeping a graph, (2) the loss and its
//! gradient with respect to the embeddings (and the logit scale) are computed on the whole
//! batch, and (3) each chunk is embedded again, with a graph, and back-propagated from its slice
//! of the embedding gradient (`Σ e ∘ ∂loss/∂e`). The parameter gradients equal the full-batch
//! ones up to rounding, while only one chunk's activations are alive at a time.

use candle_core::{Tensor, Var};

use super::blockwise::{self, BlockTrace, Keep};
use super::loss::{gcl_loss, FieldEmbedding, GclSpec, LossParts};
use super::params::{ParamSet, Tower};
use super::TrainError;
use crate::model::backward::KeptPrecision;
use crate::model::Clip;

/// A field's inputs for a batch.
#[derive(Debug, Clone)]
pub enum FieldData {
    /// Token rows, all of the same length (padded to the context length).
    Text(Vec<Vec<u32>>),
    /// Normalised pixels `[n, 3, size, size]`.
    Image(Tensor),
}

impl FieldData {
    fn len(&self) -> usize {
        match self {
            FieldData::Text(ids) => ids.len(),
            FieldData::Image(t) => t.dims().first().copied().unwrap_or(0),
        }
    }

    fn tower(&self) -> Tower {
        match self {
            FieldData::Text(_) => Tower::Text,
            FieldData::Image(_) => Tower::Vision,
        }
    }
}

/// One field of one side of a batch. Rows without the field hold placeholder inputs and are
/// marked absent in `present`.
#[derive(Debug, Clone)]
pub struct FieldBatch {
    pub name: String,
    pub data: FieldData,
    pub present: Option<Vec<bool>>,
}

/// A batch of query–document pairs, ready for the model.
#[derive(Debug, Clone)]
pub struct Batch {
    pub query: Vec<FieldBatch>,
    pub doc: Vec<FieldBatch>,
    /// Each pair's weight (STW of its score).
    pub weights: Vec<f32>,
    /// Identities of each pair's query and document, for the shared-pair mask.
    pub query_keys: Vec<u64>,
    pub doc_keys: Vec<u64>,
}

impl Batch {
    /// Number of pairs.
    pub fn len(&self) -> usize {
        self.weights.len()
    }

    pub fn is_empty(&self) -> bool {
        self.weights.is_empty()
    }
}

/// Embeds rows `start..start+len` of a field, `[len, embed]` (not normalised).
pub fn embed_rows(
    clip: &Clip,
    data: &FieldData,
    start: usize,
    len: usize,
) -> candle_core::Result<Tensor> {
    match data {
        FieldData::Text(ids) => clip.text.forward(&ids[start..start + len]),
        FieldData::Image(px) => clip.vision.forward(&px.narrow(0, start, len)?),
    }
}

/// The loss value and parts of a batch (as f64) and the gradient of every trainable parameter.
#[derive(Debug, Clone)]
pub struct StepOutput {
    pub loss: f64,
    pub main: f64,
    pub extra: Vec<f64>,
    pub grads: Vec<Tensor>,
}

fn scalar(t: &Tensor) -> Result<f64, TrainError> {
    Ok(t.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?)
}

fn parts_values(parts: &LossParts) -> Result<(f64, f64, Vec<f64>), TrainError> {
    Ok((
        scalar(&parts.total)?,
        scalar(&parts.main)?,
        parts
            .extra
            .iter()
            .map(scalar)
            .collect::<Result<Vec<_>, _>>()?,
    ))
}

fn check_batch(batch: &Batch) -> Result<(), TrainError> {
    let n = batch.len();
    if n < 2 {
        return Err(TrainError::Data(format!(
            "a contrastive batch needs at least 2 pairs, got {n}"
        )));
    }
    for f in batch.query.iter().chain(&batch.doc) {
        if f.data.len() != n || f.present.as_ref().is_some_and(|p| p.len() != n) {
            return Err(TrainError::Data(format!(
                "field `{}` has {} rows in a batch of {n}",
                f.name,
                f.data.len()
            )));
        }
    }
    if batch.query_keys.len() != n || batch.doc_keys.len() != n {
        return Err(TrainError::Data("keys do not match the batch size".into()));
    }
    Ok(())
}

/// The loss of `batch` and the parameter gradients, over the whole batch at once by candle's
/// autograd through one graph: the reference that the block-wise path of
/// [`loss_and_grads_planned`] is tested against.
pub fn loss_and_grads(
    clip: &Clip,
    params: &ParamSet,
    spec: &GclSpec,
    batch: &Batch,
) -> Result<StepOutput, TrainError> {
    check_batch(batch)?;
    let n = batch.len();
    let embed = |fields: &[FieldBatch]| -> Result<Vec<FieldEmbedding>, TrainError> {
        fields
            .iter()
            .map(|f| {
                Ok(FieldEmbedding {
                    name: f.name.clone(),
                    embedding: embed_rows(clip, &f.data, 0, n)?,
                    present: f.present.clone(),
                })
            })
            .collect()
    };
    let q = embed(&batch.query)?;
    let d = embed(&batch.doc)?;
    let parts = gcl_loss(
        spec,
        &q,
        &d,
        &clip.logit_scale,
        &batch.weights,
        &batch.query_keys,
        &batch.doc_keys,
    )?;
    let (loss, main, extra) = parts_values(&parts)?;
    let store = parts.total.backward()?;
    Ok(StepOutput {
        loss,
        main,
        extra,
        grads: params.grads(&store)?,
    })
}

/// Like [`loss_and_grads`], with gradient caching over chunks of `chunk` rows, and the towers'
/// backward pass walked block by block ([`super::blockwise`]). A single chunk keeps every
/// block's activations from the first pass; with several, each chunk is embedded again for its
/// backward pass. With a `recompute_share`, activation checkpointing: the first pass keeps each
/// chunk's block boundaries and the backward pass recomputes one block at a time, so no chunk is
/// embedded a third time. `recompute_share` is the share of each tower's blocks recomputed so
/// ([`blockwise::recomputes`]; 0: none, 1: all).
pub fn loss_and_grads_cached(
    clip: &Clip,
    params: &ParamSet,
    spec: &GclSpec,
    batch: &Batch,
    chunk: usize,
    recompute_share: f64,
    kept: KeptPrecision,
) -> Result<StepOutput, TrainError> {
    check_batch(batch)?;
    let n = batch.len();
    let chunk = chunk.max(1);
    let trains = |t: Tower| params.params.iter().any(|p| p.info.tower == t);
    let chunks: Vec<(usize, usize)> = (0..n)
        .step_by(chunk)
        .map(|start| (start, chunk.min(n - start)))
        .collect();
    // (1) Embeddings without graphs, as leaves of the loss graph, and for a tower that trains
    // what its backward pass reads: each block's activations when there is one chunk, the
    // block boundaries when recomputing blocks.
    let keep = if recompute_share > 0.0 {
        Some(Keep::Boundaries(recompute_share))
    } else if chunks.len() == 1 {
        Some(Keep::Activations)
    } else {
        None
    };
    type Leaf = (FieldEmbedding, Var, Vec<Option<BlockTrace>>);
    let leaves = |fields: &[FieldBatch]| -> Result<Vec<Leaf>, TrainError> {
        fields
            .iter()
            .map(|f| {
                let keep = keep.filter(|_| trains(f.data.tower()));
                let mut parts = Vec::new();
                let mut traces = Vec::new();
                for &(start, len) in &chunks {
                    if let Some(keep) = keep {
                        let (e, trace) = blockwise::forward(clip, &f.data, start, len, keep, kept)?;
                        parts.push(e);
                        traces.push(Some(trace));
                    } else {
                        parts.push(embed_rows(clip, &f.data, start, len)?.detach());
                        traces.push(None);
                    }
                }
                let var = Var::from_tensor(&Tensor::cat(&parts, 0)?)?;
                Ok((
                    FieldEmbedding {
                        name: f.name.clone(),
                        embedding: var.as_tensor().clone(),
                        present: f.present.clone(),
                    },
                    var,
                    traces,
                ))
            })
            .collect()
    };
    let q = leaves(&batch.query)?;
    let d = leaves(&batch.doc)?;
    let qe: Vec<FieldEmbedding> = q.iter().map(|(e, _, _)| e.clone()).collect();
    let de: Vec<FieldEmbedding> = d.iter().map(|(e, _, _)| e.clone()).collect();
    // (2) The loss and its gradient with respect to the embeddings and the logit scale.
    let parts = gcl_loss(
        spec,
        &qe,
        &de,
        &clip.logit_scale,
        &batch.weights,
        &batch.query_keys,
        &batch.doc_keys,
    )?;
    drop((qe, de));
    let (loss, main, extra) = parts_values(&parts)?;
    let store = parts.total.backward()?;
    drop(parts);
    let mut grads: Vec<Option<Tensor>> = params
        .params
        .iter()
        .map(|p| store.get(p.var.as_tensor()).cloned())
        .collect();
    // (3) Each tower's backward pass per chunk, from the cached embedding gradient (a chunk
    // without a trace is embedded again first).
    for (field, (_, var, traces)) in batch
        .query
        .iter()
        .chain(&batch.doc)
        .zip(q.into_iter().chain(d))
    {
        if !trains(field.data.tower()) {
            continue;
        }
        let Some(g_all) = store.get(var.as_tensor()) else {
            continue;
        };
        for (&(start, len), trace) in chunks.iter().zip(traces) {
            let g = g_all.narrow(0, start, len)?.detach();
            let trace = match trace {
                Some(trace) => trace,
                None => {
                    blockwise::forward(clip, &field.data, start, len, Keep::Activations, kept)?.1
                }
            };
            blockwise::backward(clip, &field.data, start, len, trace, &g, params, &mut grads)?;
        }
    }
    let grads = grads
        .into_iter()
        .zip(&params.params)
        .map(|(g, p)| match g {
            Some(g) => Ok(g),
            None => p.var.as_tensor().zeros_like(),
        })
        .collect::<candle_core::Result<Vec<_>>>()?;
    Ok(StepOutput {
        loss,
        main,
        extra,
        grads,
    })
}

/// How a step trades compute for memory: gradient caching over chunks of the contrastive
/// batch, activation checkpointing (of every block or a share of them), both or neither.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MemoryPlan {
    pub grad_cache_chunk: Option<usize>,
    pub activation_checkpointing: bool,
    /// With checkpointing, the share of each tower's blocks recomputed, in (0, 1]
    /// ([`blockwise::recomputes`]).
    pub checkpoint_share: f64,
    /// The precision the blocks keep their products' outputs in for the backward pass.
    pub kept_precision: KeptPrecision,
}

impl MemoryPlan {
    /// Why `share` cannot be [`Self::checkpoint_share`] beside `checkpointing`, if it cannot: it
    /// must be in (0, 1], and below 1 only with checkpointing. `prefix` goes before the two
    /// settings' names in the message (`train.` for the config file).
    pub fn check_share(share: f64, checkpointing: bool, prefix: &str) -> Result<(), String> {
        if !(share > 0.0 && share <= 1.0) {
            return Err(format!(
                "{prefix}checkpoint_share is {share}: it must be above 0 and at most 1 (the \
                 share of each tower's blocks that activation checkpointing recomputes)"
            ));
        }
        if share < 1.0 && !checkpointing {
            return Err(format!(
                "{prefix}checkpoint_share = {share} needs {prefix}activation_checkpointing = true"
            ));
        }
        Ok(())
    }
}

impl Default for MemoryPlan {
    fn default() -> Self {
        Self {
            grad_cache_chunk: None,
            activation_checkpointing: false,
            checkpoint_share: 1.0,
            kept_precision: KeptPrecision::F32,
        }
    }
}

/// The step the trainer runs: [`loss_and_grads_cached`] with the chunks and checkpointing that
/// `plan` asks for (one chunk of the whole batch without gradient caching).
pub fn loss_and_grads_planned(
    clip: &Clip,
    params: &ParamSet,
    spec: &GclSpec,
    batch: &Batch,
    plan: MemoryPlan,
) -> Result<StepOutput, TrainError> {
    let n = batch.len();
    let recompute = if plan.activation_checkpointing {
        plan.checkpoint_share
    } else {
        0.0
    };
    let chunk = plan.grad_cache_chunk.filter(|&c| c < n).unwrap_or(n);
    loss_and_grads_cached(
        clip,
        params,
        spec,
        batch,
        chunk,
        recompute,
        plan.kept_precision,
    )
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::train::gradcheck::tiny_config;
    use crate::train::init::init_open_clip;
    use crate::train::loss::{ExtraTerm, FieldKind, FieldSpec, ScoreToWeight};
    use crate::train::params::Freeze;
    use crate::train::rng::Rng;
    use candle_core::{DType, Device};

    pub(crate) fn synthetic_batch(n: usize, seed: u64) -> Batch {
        let mut r = Rng::new(seed);
        let ids = |r: &mut Rng| -> Vec<Vec<u32>> {
            (0..n)
                .map(|_| {
                    let len = 2 + r.below(4) as usize;
                    let mut row = vec![0u32; 6];
                    row[0] = 17;
                    for x in row.iter_mut().take(len - 1).skip(1) {
                        *x = 1 + r.below(15) as u32;
                    }
                    row[len - 1] = 19;
                    row
                })
                .collect()
        };
        let px: Vec<f32> = (0..n * 3 * 64).map(|_| r.normal() as f32).collect();
        Batch {
            query: vec![FieldBatch {
                name: "text".into(),
                data: FieldData::Text(ids(&mut r)),
                present: None,
            }],
            doc: vec![
                FieldBatch {
                    name: "image".into(),
                    data: FieldData::Image(
                        Tensor::from_vec(px, (n, 3, 8, 8), &Device::Cpu).unwrap(),
                    ),
                    present: Some((0..n).map(|i| i % 4 != 1).collect()),
                },
                FieldBatch {
                    name: "title".into(),
                    data: FieldData::Text(ids(&mut r)),
                    present: None,
                },
            ],
            weights: (0..n)
                .map(|i| 0.2 + 0.8 * ((i * 7) % n) as f32 / n as f32)
                .collect(),
            query_keys: (0..n as u64).map(|i| i / 2).collect(),
            doc_keys: (0..n as u64).map(|i| 100 + i % (n as u64 - 1)).collect(),
        }
    }

    pub(crate) fn gcl_spec() -> GclSpec {
        GclSpec {
            score_to_weight: ScoreToWeight::Linear,
            query_fields: vec![FieldSpec {
                name: "text".into(),
                kind: FieldKind::Text,
                weight: 1.0,
            }],
            doc_fields: vec![
                FieldSpec {
                    name: "image".into(),
                    kind: FieldKind::Image,
                    weight: 0.9,
                },
                FieldSpec {
                    name: "title".into(),
                    kind: FieldKind::Text,
                    weight: 0.1,
                },
            ],
            extra_terms: vec![ExtraTerm {
                query: "text".into(),
                doc: "title".into(),
                weight: 0.5,
            }],
            mask_shared: true,
            weight_floor: 0.0,
        }
    }

    #[test]
    fn gradient_cache_equals_full_batch_gradients() {
        let batch = synthetic_batch(7, 1);
        let spec = gcl_spec();
        for freeze in [
            Freeze::default(),
            Freeze {
                lock_image: true,
                ..Default::default()
            },
            Freeze {
                lock_text: true,
                lock_image: true,
                lock_image_unlocked_groups: 1,
                ..Default::default()
            },
            // The last image block trains, the first does not: the backward pass stops there.
            Freeze {
                lock_image: true,
                lock_image_unlocked_groups: 2,
                ..Default::default()
            },
        ] {
            let mut clip =
                init_open_clip(&tiny_config(false), 2, &Device::Cpu, DType::F32).unwrap();
            let set = ParamSet::attach(&mut clip, &freeze).unwrap();
            let full = loss_and_grads(&clip, &set, &spec, &batch).unwrap();
            for (chunk, recompute) in [
                (1, 0.0),
                (3, 0.0),
                (7, 0.0),
                (100, 0.0),
                (1, 1.0),
                (3, 1.0),
                (7, 1.0),
                (3, 0.5),
                (100, 0.5),
            ] {
                let cached = loss_and_grads_cached(
                    &clip,
                    &set,
                    &spec,
                    &batch,
                    chunk,
                    recompute,
                    KeptPrecision::F32,
                )
                .unwrap();
                assert!(
                    (full.loss - cached.loss).abs() < 1e-6,
                    "chunk {chunk} recompute {recompute}: loss"
                );
                let mut nonzero = 0;
                for ((a, b), p) in full.grads.iter().zip(&cached.grads).zip(&set.params) {
                    let scale = a
                        .abs()
                        .unwrap()
                        .max_all()
                        .unwrap()
                        .to_scalar::<f32>()
                        .unwrap();
                    let d = (a - b)
                        .unwrap()
                        .abs()
                        .unwrap()
                        .max_all()
                        .unwrap()
                        .to_scalar::<f32>()
                        .unwrap();
                    assert!(
                        d <= 1e-5 + 1e-4 * scale,
                        "chunk {chunk} recompute {recompute}: {} differs by {d} (scale {scale})",
                        p.info.name
                    );
                    nonzero += (scale > 0.0) as usize;
                }
                // Every trainable tensor but the token-embedding rows of unused ids gets some
                // gradient; a broken cache would leave whole towers at zero.
                assert!(
                    nonzero + 1 >= set.params.len(),
                    "only {nonzero} non-zero gradients"
                );
            }
        }
    }

    /// With bf16 products, activations kept in bf16: checkpointing recomputes exactly what the
    /// plain step keeps (the same gradients, bit for bit), and the gradients stay within bf16's
    /// rounding of those of activations kept in f32, without equalling them (so the rounding
    /// happened).
    #[test]
    fn activations_kept_in_bf16_round_alike_with_and_without_checkpointing() {
        let batch = synthetic_batch(7, 3);
        let spec = gcl_spec();
        for kernel in crate::model::lowp::Bf16Kernel::available() {
            let mut clip =
                init_open_clip(&tiny_config(false), 2, &Device::Cpu, DType::F32).unwrap();
            clip.set_dense_products(crate::model::DenseProducts::Bf16(kernel));
            let set = ParamSet::attach(&mut clip, &Freeze::default()).unwrap();
            let step = |recompute: f64, kept: KeptPrecision| {
                loss_and_grads_cached(&clip, &set, &spec, &batch, 7, recompute, kept).unwrap()
            };
            let max_abs =
                |t: &Tensor| -> f32 { t.abs().unwrap().max_all().unwrap().to_scalar().unwrap() };
            let plain = step(0.0, KeptPrecision::Bf16);
            for recompute in [1.0, 0.5] {
                let checkpointed = step(recompute, KeptPrecision::Bf16);
                assert_eq!(plain.loss, checkpointed.loss);
                for ((a, b), p) in plain.grads.iter().zip(&checkpointed.grads).zip(&set.params) {
                    let d = max_abs(&(a - b).unwrap());
                    assert_eq!(d, 0.0, "{kernel:?} {recompute}: {}", p.info.name);
                }
            }
            let f32_kept = step(0.0, KeptPrecision::F32);
            assert_eq!(plain.loss, f32_kept.loss, "the forward pass is the same");
            let mut differ = 0;
            for ((a, b), p) in plain.grads.iter().zip(&f32_kept.grads).zip(&set.params) {
                let d = max_abs(&(a - b).unwrap());
                let scale = max_abs(b);
                assert!(
                    d <= 2e-2 * scale + 1e-6,
                    "{kernel:?}: {} differs by {d} (scale {scale})",
                    p.info.name
                );
                differ += (d > 0.0) as usize;
            }
            assert!(
                differ > set.params.len() / 2,
                "only {differ} gradients differ"
            );
        }
    }
}

//! Contrastive objectives: CLIP's symmetric InfoNCE and Generalized Contrastive Learning (GCL).
//!
//! Both work on embeddings, never on the model, so the same code serves the plain full-batch
//! step and the gradient cache (which needs the loss's gradient with respect to the embeddings).
//! The formulas, with what every option changes, are in `docs/TRAINING.md`.
//!
//! * CLIP: `logits = exp(t)·L·Rᵀ` over L2-normalised rows,
//!   `loss = ½[CE(logits, diag) + CE(logitsᵀ, diag)]`.
//! * GCL: each pair's two cross-entropy terms are multiplied by a weight `w_i = STW(score_i)` and
//!   the sum is divided by `Σ w_i`; a side with several fields is embedded as
//!   `normalise(Σ_k θ_k·normalise(e_k))`; extra loss terms between chosen single fields may be
//!   added; and two pairs that share a query or a document are not negatives of each other.

use candle_core::{Device, Tensor, D};

use super::TrainError;

/// How a pair's relevance score becomes its weight in the GCL loss.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum ScoreToWeight {
    /// Every pair weighs 1: plain CLIP, whatever the scores.
    None,
    /// The score rescaled linearly from the data's range onto `[0.01, 1]` (the same map as the
    /// integer relevance labels `1…100` of GCL's evaluation, divided by 100).
    Linear,
    /// `1 / rank`, from the pair's rank (GS: `position`; JSONL: `rank`), 1-based.
    Reciprocal,
    /// The linearly rescaled score raised to the power `p`: `p > 1` favours the top of the
    /// ranking more steeply than `linear`.
    Power { p: f64 },
}

/// The range of scores in the training data, for the linear rescaling.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ScoreRange {
    pub min: f64,
    pub max: f64,
}

impl ScoreRange {
    /// The range of `scores` (finite values only); `None` when there are none.
    pub fn of(scores: impl IntoIterator<Item = f64>) -> Option<Self> {
        let mut r: Option<Self> = None;
        for s in scores.into_iter().filter(|s| s.is_finite()) {
            r = Some(match r {
                None => Self { min: s, max: s },
                Some(r) => Self {
                    min: r.min.min(s),
                    max: r.max.max(s),
                },
            });
        }
        r
    }

    /// `score` mapped onto `[0.01, 1]`; 1 when every score is equal.
    pub fn rescale(&self, score: f64) -> f64 {
        if self.max > self.min {
            0.01 + 0.99 * ((score - self.min) / (self.max - self.min)).clamp(0.0, 1.0)
        } else {
            1.0
        }
    }
}

impl ScoreToWeight {
    /// The weight of a pair.
    pub fn weight(
        &self,
        score: f64,
        rank: Option<u32>,
        range: &ScoreRange,
    ) -> Result<f64, TrainError> {
        match *self {
            ScoreToWeight::None => Ok(1.0),
            ScoreToWeight::Linear => Ok(range.rescale(score)),
            ScoreToWeight::Power { p } => Ok(range.rescale(score).powf(p)),
            ScoreToWeight::Reciprocal => match rank {
                Some(r) if r >= 1 => Ok(1.0 / r as f64),
                _ => Err(TrainError::Data(
                    "score_to_weight = reciprocal needs a rank (≥ 1) for every pair".into(),
                )),
            },
        }
    }
}

/// L2-normalises rows.
pub fn normalize(x: &Tensor) -> candle_core::Result<Tensor> {
    crate::model::vision::l2_normalize(x)
}

/// `log softmax` along the last dimension. The row maximum is subtracted for stability and
/// detached: it cancels out of the value, so it carries no gradient.
pub fn log_softmax(x: &Tensor) -> candle_core::Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let shifted = x.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    shifted.broadcast_sub(&lse)
}

/// The diagonal of a square matrix, `[n]`.
fn diagonal(x: &Tensor) -> candle_core::Result<Tensor> {
    let n = x.dim(0)?;
    let idx = Tensor::from_vec((0..n as u32).collect::<Vec<_>>(), (n, 1), x.device())?;
    x.gather(&idx, 1)?.squeeze(1)
}

/// A large negative logit for masked entries: finite, so no `0·∞`, and far below any scaled
/// cosine (the scale is clamped to 100).
const MASKED: f64 = -1e9;

/// The additive mask of a batch: `MASKED` at `(i, j)`, `i ≠ j`, where pairs `i` and `j` share a
/// query or a document; `None` when no two pairs share either.
pub fn shared_pair_mask(
    query_keys: &[u64],
    doc_keys: &[u64],
    device: &Device,
) -> candle_core::Result<Option<Tensor>> {
    let n = query_keys.len();
    if doc_keys.len() != n {
        candle_core::bail!("{n} query keys but {} document keys", doc_keys.len());
    }
    let mut any = false;
    let mut m = vec![0f32; n * n];
    for i in 0..n {
        for j in 0..n {
            if i != j && (query_keys[i] == query_keys[j] || doc_keys[i] == doc_keys[j]) {
                m[i * n + j] = MASKED as f32;
                any = true;
            }
        }
    }
    if !any {
        return Ok(None);
    }
    Ok(Some(Tensor::from_vec(m, (n, n), device)?))
}

/// The weighted symmetric contrastive loss of matched rows of `left` and `right` (both
/// `[n, d]`, L2-normalised), with `logit_scale` = t (the scale is `exp(t)`).
///
/// `weights` (`[n]`, non-negative, not all zero) weigh each pair's two cross-entropy terms and
/// the result is divided by their sum; `None` is weight 1 everywhere (CLIP). `mask` (`[n, n]`,
/// from [`shared_pair_mask`]) is added to the logits of both directions.
pub fn contrastive_loss(
    left: &Tensor,
    right: &Tensor,
    logit_scale: &Tensor,
    weights: Option<&Tensor>,
    mask: Option<&Tensor>,
) -> candle_core::Result<Tensor> {
    let n = left.dim(0)?;
    if right.dim(0)? != n || n == 0 {
        candle_core::bail!(
            "contrastive loss needs matched non-empty rows, got {} and {}",
            n,
            right.dim(0)?
        );
    }
    let scale = logit_scale.exp()?;
    let mut logits = left.matmul(&right.t()?)?.broadcast_mul(&scale)?;
    if let Some(m) = mask {
        logits = logits.broadcast_add(&m.to_dtype(logits.dtype())?)?;
    }
    let l2r = diagonal(&log_softmax(&logits)?)?;
    let r2l = diagonal(&log_softmax(&logits.t()?.contiguous()?)?)?;
    let per_pair = (l2r + r2l)?;
    match weights {
        None => per_pair.mean_all()?.affine(-0.5, 0.0),
        Some(w) => {
            let w = w.to_dtype(per_pair.dtype())?;
            let total = w.sum_all()?;
            (per_pair * &w)?
                .sum_all()?
                .broadcast_div(&total)?
                .affine(-0.5, 0.0)
        }
    }
}

/// CLIP's loss: [`contrastive_loss`] with unit weights and no mask.
pub fn clip_loss(
    image: &Tensor,
    text: &Tensor,
    logit_scale: &Tensor,
) -> candle_core::Result<Tensor> {
    contrastive_loss(image, text, logit_scale, None, None)
}

/// What a field holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FieldKind {
    /// Text, embedded by the text tower.
    Text,
    /// An image path, embedded by the image tower.
    Image,
}

/// One field of a side (query or document) and its weight θ in the side's embedding.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldSpec {
    pub name: String,
    pub kind: FieldKind,
    #[serde(default = "one")]
    pub weight: f64,
}

fn one() -> f64 {
    1.0
}

/// An extra loss term between one query field and one document field.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtraTerm {
    /// A query field name.
    pub query: String,
    /// A document field name.
    pub doc: String,
    pub weight: f64,
}

/// The embeddings of one field for a batch: `[n, d]`, not normalised, and which rows have
/// the field (`None`: all).
#[derive(Debug, Clone)]
pub struct FieldEmbedding {
    pub name: String,
    pub embedding: Tensor,
    pub present: Option<Vec<bool>>,
}

/// A side's embedding: `normalise(Σ_k θ_k·m_k·normalise(e_k))` over its fields, where `m_k` is
/// 1 for rows that have field k and 0 otherwise. Every row must have at least one field.
pub fn fuse_fields(fields: &[FieldEmbedding], specs: &[FieldSpec]) -> Result<Tensor, TrainError> {
    if fields.len() == 1 && fields[0].present.is_none() {
        return Ok(normalize(&fields[0].embedding)?);
    }
    let mut acc: Option<Tensor> = None;
    let mut covered: Option<Vec<bool>> = None;
    for spec in specs {
        let f = fields.iter().find(|f| f.name == spec.name).ok_or_else(|| {
            TrainError::Config(format!("no embeddings for field `{}`", spec.name))
        })?;
        let e = normalize(&f.embedding)?;
        let n = e.dim(0)?;
        let term = match &f.present {
            None => (e * spec.weight)?,
            Some(p) => {
                let m: Vec<f64> = p
                    .iter()
                    .map(|&b| if b { spec.weight } else { 0.0 })
                    .collect();
                let m = Tensor::from_vec(m, (n, 1), e.device())?.to_dtype(e.dtype())?;
                e.broadcast_mul(&m)?
            }
        };
        let here = f.present.clone().unwrap_or_else(|| vec![true; n]);
        covered = Some(match covered {
            None => here,
            Some(c) => c.iter().zip(&here).map(|(a, b)| *a || *b).collect(),
        });
        acc = Some(match acc {
            None => term,
            Some(a) => (a + term)?,
        });
    }
    let acc = acc.ok_or_else(|| TrainError::Config("a side has no fields".into()))?;
    if let Some(row) = covered.and_then(|c| c.iter().position(|&b| !b)) {
        return Err(TrainError::Data(format!(
            "batch row {row} has none of its side's fields"
        )));
    }
    Ok(normalize(&acc)?)
}

/// GCL's settings.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GclSpec {
    pub score_to_weight: ScoreToWeight,
    pub query_fields: Vec<FieldSpec>,
    pub doc_fields: Vec<FieldSpec>,
    #[serde(default)]
    pub extra_terms: Vec<ExtraTerm>,
    /// Mask pairs that share a query or a document out of each other's negatives.
    #[serde(default = "yes")]
    pub mask_shared: bool,
    /// The smallest weight a pair gets: `w = max(STW(score), weight_floor)`, in `[0, 1]`.
    #[serde(default)]
    pub weight_floor: f64,
}

fn yes() -> bool {
    true
}

impl GclSpec {
    /// A pair's weight in the loss: its score-to-weight value, raised to the floor.
    pub fn pair_weight(
        &self,
        score: f64,
        rank: Option<u32>,
        range: &ScoreRange,
    ) -> Result<f64, TrainError> {
        Ok(self
            .score_to_weight
            .weight(score, rank, range)?
            .max(self.weight_floor))
    }
}

/// The loss of one batch and its parts, for logging.
#[derive(Debug, Clone)]
pub struct LossParts {
    /// What is minimised.
    pub total: Tensor,
    /// The fused query–document term.
    pub main: Tensor,
    /// Each extra term, unweighted, in the order of the spec.
    pub extra: Vec<Tensor>,
}

/// The GCL loss of a batch: `main + Σ_e weight_e·term_e`. `weights` are the pairs' STW weights;
/// `query_keys`/`doc_keys` identify queries and documents for the shared-pair mask.
pub fn gcl_loss(
    spec: &GclSpec,
    query: &[FieldEmbedding],
    doc: &[FieldEmbedding],
    logit_scale: &Tensor,
    weights: &[f32],
    query_keys: &[u64],
    doc_keys: &[u64],
) -> Result<LossParts, TrainError> {
    let q = fuse_fields(query, &spec.query_fields)?;
    let d = fuse_fields(doc, &spec.doc_fields)?;
    let n = q.dim(0)?;
    if weights.len() != n {
        return Err(TrainError::Data(format!(
            "{} weights for a batch of {n}",
            weights.len()
        )));
    }
    if weights.iter().any(|w| !w.is_finite() || *w < 0.0) || weights.iter().all(|&w| w == 0.0) {
        return Err(TrainError::Data(
            "pair weights must be finite, non-negative and not all zero".into(),
        ));
    }
    let w = Tensor::from_vec(weights.to_vec(), n, q.device())?;
    let mask = if spec.mask_shared {
        shared_pair_mask(query_keys, doc_keys, q.device())?
    } else {
        None
    };
    let main = contrastive_loss(&q, &d, logit_scale, Some(&w), mask.as_ref())?;
    let mut total = main.clone();
    let mut extra = Vec::new();
    for term in &spec.extra_terms {
        let pick = |fields: &[FieldEmbedding], name: &str| -> Result<Tensor, TrainError> {
            let f = fields.iter().find(|f| f.name == name).ok_or_else(|| {
                TrainError::Config(format!("extra loss term names unknown field `{name}`"))
            })?;
            if f.present.as_ref().is_some_and(|p| p.iter().any(|b| !b)) {
                return Err(TrainError::Data(format!(
                    "extra loss term on field `{name}`, which some rows of the batch lack"
                )));
            }
            Ok(normalize(&f.embedding)?)
        };
        let l = pick(query, &term.query)?;
        let r = pick(doc, &term.doc)?;
        let t = contrastive_loss(&l, &r, logit_scale, Some(&w), mask.as_ref())?;
        total = (total + (&t * term.weight)?)?;
        extra.push(t);
    }
    Ok(LossParts { total, main, extra })
}

/// Clamps the log scale to `[0, ln 100]`, as open_clip does after every optimiser step.
pub fn clamp_logit_scale(t: f64) -> f64 {
    t.clamp(0.0, 100f64.ln())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::rng::Rng;
    use candle_core::DType;

    #[test]
    fn weight_floor_raises_only_the_weights_below_it() {
        let range = ScoreRange { min: 0.2, max: 1.0 };
        let spec = |stw, floor| GclSpec {
            score_to_weight: stw,
            query_fields: vec![],
            doc_fields: vec![],
            extra_terms: vec![],
            mask_shared: true,
            weight_floor: floor,
        };
        let w = |s: &GclSpec, score| s.pair_weight(score, Some(4), &range).unwrap();
        // linear: 0.2 -> 0.01, 0.6 -> 0.505, 1.0 -> 1; a floor of 0.2 lifts only the first.
        let lin = spec(ScoreToWeight::Linear, 0.0);
        assert!((w(&lin, 0.2) - 0.01).abs() < 1e-12);
        let floored = spec(ScoreToWeight::Linear, 0.2);
        assert!((w(&floored, 0.2) - 0.2).abs() < 1e-12);
        assert!((w(&floored, 0.6) - 0.505).abs() < 1e-12);
        assert!((w(&floored, 1.0) - 1.0).abs() < 1e-12);
        // power 2: 0.505² = 0.255025 stays above a floor of 0.1; reciprocal: 1/4 -> 0.3.
        let pow = spec(ScoreToWeight::Power { p: 2.0 }, 0.1);
        assert!((w(&pow, 0.6) - 0.255025).abs() < 1e-12);
        assert!((w(&pow, 0.2) - 0.1).abs() < 1e-12);
        let rec = spec(ScoreToWeight::Reciprocal, 0.3);
        assert!((w(&rec, 0.0) - 0.3).abs() < 1e-12);
        // A missing rank is still an error with a floor.
        assert!(rec.pair_weight(0.5, None, &range).is_err());
    }

    fn rows(n: usize, d: usize, seed: u64) -> Vec<Vec<f64>> {
        let mut r = Rng::new(seed);
        (0..n)
            .map(|_| {
                let v: Vec<f64> = (0..d).map(|_| r.normal()).collect();
                let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
                v.into_iter().map(|x| x / norm).collect()
            })
            .collect()
    }

    fn tensor(rows: &[Vec<f64>]) -> Tensor {
        let d = rows[0].len();
        Tensor::from_vec(rows.concat(), (rows.len(), d), &Device::Cpu).unwrap()
    }

    /// The definition, term by term, in plain f64 loops.
    #[allow(clippy::needless_range_loop)]
    fn reference(
        l: &[Vec<f64>],
        r: &[Vec<f64>],
        t: f64,
        w: &[f64],
        masked: &dyn Fn(usize, usize) -> bool,
    ) -> f64 {
        let n = l.len();
        let s = t.exp();
        let logit = |i: usize, j: usize| -> f64 {
            s * l[i].iter().zip(&r[j]).map(|(a, b)| a * b).sum::<f64>()
        };
        let mut total = 0.0;
        for i in 0..n {
            let lse_row = (0..n)
                .filter(|&j| !masked(i, j))
                .map(|j| logit(i, j).exp())
                .sum::<f64>()
                .ln();
            let lse_col = (0..n)
                .filter(|&j| !masked(j, i))
                .map(|j| logit(j, i).exp())
                .sum::<f64>()
                .ln();
            total += w[i] * ((lse_row - logit(i, i)) + (lse_col - logit(i, i)));
        }
        0.5 * total / w.iter().sum::<f64>()
    }

    fn value(t: &Tensor) -> f64 {
        t.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap()
    }

    #[test]
    fn clip_loss_is_the_symmetric_cross_entropy() {
        let (l, r) = (rows(6, 5, 1), rows(6, 5, 2));
        let t = Tensor::new(2.3f64, &Device::Cpu).unwrap();
        let got = value(&clip_loss(&tensor(&l), &tensor(&r), &t).unwrap());
        let want = reference(&l, &r, 2.3, &[1.0; 6], &|_, _| false);
        assert!((got - want).abs() < 1e-12, "{got} vs {want}");
        // Perfectly matched, well separated rows at a high scale: loss near 0.
        let eye: Vec<Vec<f64>> = (0..4)
            .map(|i| (0..4).map(|j| (i == j) as u8 as f64).collect())
            .collect();
        let t = Tensor::new(100f64.ln(), &Device::Cpu).unwrap();
        assert!(value(&clip_loss(&tensor(&eye), &tensor(&eye), &t).unwrap()) < 1e-40);
    }

    #[test]
    fn weighted_and_masked_loss_match_the_definition() {
        let (l, r) = (rows(7, 4, 3), rows(7, 4, 4));
        let w = [1.0, 0.5, 0.25, 0.01, 1.0, 0.0, 0.7];
        let wt = Tensor::from_vec(w.to_vec(), 7, &Device::Cpu).unwrap();
        let t = Tensor::new(1.7f64, &Device::Cpu).unwrap();
        // Pairs 0, 1, 2 share a query; pairs 4 and 6 share a document.
        let qk = [10, 10, 10, 11, 12, 13, 14];
        let dk = [20, 21, 22, 23, 24, 25, 24];
        let mask = shared_pair_mask(&qk, &dk, &Device::Cpu).unwrap().unwrap();
        let got =
            value(&contrastive_loss(&tensor(&l), &tensor(&r), &t, Some(&wt), Some(&mask)).unwrap());
        let masked = |i: usize, j: usize| i != j && (qk[i] == qk[j] || dk[i] == dk[j]);
        let want = reference(&l, &r, 1.7, &w, &masked);
        assert!((got - want).abs() < 1e-12, "{got} vs {want}");
        // Without the mask the value differs; scaling all weights changes nothing.
        let unmasked =
            value(&contrastive_loss(&tensor(&l), &tensor(&r), &t, Some(&wt), None).unwrap());
        assert!((unmasked - got).abs() > 1e-3);
        let wt3 = (&wt * 3.0).unwrap();
        let scaled = value(
            &contrastive_loss(&tensor(&l), &tensor(&r), &t, Some(&wt3), Some(&mask)).unwrap(),
        );
        assert!((scaled - got).abs() < 1e-12);
        // Unit weights and no shared keys: GCL is CLIP.
        assert!(shared_pair_mask(&[1, 2, 3], &[4, 5, 6], &Device::Cpu)
            .unwrap()
            .is_none());
        let ones = Tensor::ones(7, DType::F64, &Device::Cpu).unwrap();
        let g = value(&contrastive_loss(&tensor(&l), &tensor(&r), &t, Some(&ones), None).unwrap());
        let c = value(&clip_loss(&tensor(&l), &tensor(&r), &t).unwrap());
        assert!((g - c).abs() < 1e-12);
    }

    #[test]
    fn score_to_weight_functions() {
        let range = ScoreRange::of([2.0, 4.0, 12.0, f64::NAN]).unwrap();
        assert_eq!(
            range,
            ScoreRange {
                min: 2.0,
                max: 12.0
            }
        );
        let lin = |s| ScoreToWeight::Linear.weight(s, None, &range).unwrap();
        assert!((lin(2.0) - 0.01).abs() < 1e-12);
        assert!((lin(12.0) - 1.0).abs() < 1e-12);
        assert!((lin(7.0) - (0.01 + 0.99 * 0.5)).abs() < 1e-12);
        let pow = ScoreToWeight::Power { p: 2.0 }
            .weight(7.0, None, &range)
            .unwrap();
        assert!((pow - lin(7.0).powi(2)).abs() < 1e-12);
        assert_eq!(
            ScoreToWeight::Reciprocal
                .weight(0.0, Some(4), &range)
                .unwrap(),
            0.25
        );
        assert!(ScoreToWeight::Reciprocal.weight(0.0, None, &range).is_err());
        assert!(ScoreToWeight::Reciprocal
            .weight(0.0, Some(0), &range)
            .is_err());
        assert_eq!(ScoreToWeight::None.weight(-5.0, None, &range).unwrap(), 1.0);
        let flat = ScoreRange { min: 3.0, max: 3.0 };
        assert_eq!(ScoreToWeight::Linear.weight(3.0, None, &flat).unwrap(), 1.0);
    }

    #[test]
    fn multi_field_sides_and_extra_terms() {
        let (title, image, query) = (rows(4, 3, 5), rows(4, 3, 6), rows(4, 3, 7));
        // Unnormalised inputs: fusing normalises each field first.
        let scaled: Vec<Vec<f64>> = image
            .iter()
            .enumerate()
            .map(|(i, r)| r.iter().map(|x| x * (i + 2) as f64).collect())
            .collect();
        let doc = vec![
            FieldEmbedding {
                name: "title".into(),
                embedding: tensor(&title),
                present: None,
            },
            FieldEmbedding {
                name: "image".into(),
                embedding: tensor(&scaled),
                present: Some(vec![true, true, false, true]),
            },
        ];
        let specs = vec![
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
        ];
        let fused = fuse_fields(&doc, &specs).unwrap().to_vec2::<f64>().unwrap();
        for i in 0..4 {
            let m = if i == 2 { 0.0 } else { 0.9 };
            let v: Vec<f64> = (0..3)
                .map(|k| m * image[i][k] + 0.1 * title[i][k])
                .collect();
            let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
            for k in 0..3 {
                assert!((fused[i][k] - v[k] / norm).abs() < 1e-12);
            }
        }
        let q = vec![FieldEmbedding {
            name: "text".into(),
            embedding: tensor(&query),
            present: None,
        }];
        let spec = GclSpec {
            score_to_weight: ScoreToWeight::Linear,
            query_fields: vec![FieldSpec {
                name: "text".into(),
                kind: FieldKind::Text,
                weight: 1.0,
            }],
            doc_fields: specs.clone(),
            extra_terms: vec![ExtraTerm {
                query: "text".into(),
                doc: "title".into(),
                weight: 0.3,
            }],
            mask_shared: true,
            weight_floor: 0.0,
        };
        let t = Tensor::new(2.0f64, &Device::Cpu).unwrap();
        let w = [1.0f32, 0.5, 0.2, 0.9];
        let parts = gcl_loss(&spec, &q, &doc, &t, &w, &[1, 2, 3, 4], &[5, 6, 7, 8]).unwrap();
        let wf: Vec<f64> = w.iter().map(|&x| x as f64).collect();
        let main = reference(&query, &fused, 2.0, &wf, &|_, _| false);
        let extra = reference(&query, &title, 2.0, &wf, &|_, _| false);
        assert!((value(&parts.main) - main).abs() < 1e-6);
        assert!((value(&parts.extra[0]) - extra).abs() < 1e-6);
        assert!((value(&parts.total) - (main + 0.3 * extra)).abs() < 1e-6);
        // An extra term on a field some rows lack is refused, as is a row with no field.
        let mut bad = spec.clone();
        bad.extra_terms[0].doc = "image".into();
        assert!(matches!(
            gcl_loss(&bad, &q, &doc, &t, &w, &[1, 2, 3, 4], &[5, 6, 7, 8]),
            Err(TrainError::Data(_))
        ));
        let only_image = vec![doc[1].clone()];
        assert!(fuse_fields(&only_image, &specs[..1]).is_err());
        assert!(gcl_loss(&spec, &q, &doc, &t, &[0.0; 4], &[1, 2, 3, 4], &[5, 6, 7, 8]).is_err());
    }

    #[test]
    fn loss_gradients_match_finite_differences() {
        let (l, r) = (rows(5, 4, 8), rows(5, 4, 9));
        let qk = [1u64, 1, 2, 3, 4];
        let dk = [5u64, 6, 7, 8, 8];
        let inputs = [
            tensor(&l),
            tensor(&r),
            Tensor::new(1.3f64, &Device::Cpu).unwrap(),
            Tensor::from_vec(vec![1.0f64, 0.3, 0.5, 0.8, 0.1], 5, &Device::Cpu).unwrap(),
        ];
        crate::train::gradcheck::check("weighted masked contrastive loss", &inputs[..3], |t| {
            let mask = shared_pair_mask(&qk, &dk, &Device::Cpu).unwrap();
            let w = inputs[3].to_dtype(t[0].dtype()).unwrap();
            contrastive_loss(
                &normalize(&t[0]).unwrap(),
                &normalize(&t[1]).unwrap(),
                &t[2],
                Some(&w),
                mask.as_ref(),
            )
            .unwrap()
        });
    }
}

//! The configuration of a training run (`gclip train --config train.toml`) and the assembly of
//! everything it names: model, data, loader, evaluation and trainer.
//!
//! ```toml
//! [model]
//! arch = "ViT-B-32"              # from scratch (open_clip init), or:
//! # from = "./clip-vit-base-patch32"   # fine-tune any checkpoint the loader reads
//! # from_arch = "ViT-B-32"             # with an open_clip checkpoint file
//!
//! [data]
//! layout = "jsonl"               # or "gs" (a Marqo-GS split CSV)
//! path = "train.jsonl"
//!
//! [eval]                         # optional
//! path = "val.jsonl"
//! kind = "retrieval"             # or "ranking"
//! every = 100
//!
//! [loss]
//! kind = "clip"                  # or "gcl"
//!
//! [train]
//! steps = 1000
//! batch_size = 64
//! lr = 5e-4
//! output = "runs/first"
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};

use super::augment::AugmentConfig;
use super::data::{load, DataSpec, Dataset, Layout};
use super::evaluate::{ranking_metrics, retrieval_metrics, Embedding};
use super::init::init_open_clip;
use super::loader::{BatchSampler, Loader, LoaderConfig};
use super::loss::{ExtraTerm, FieldKind, FieldSpec, GclSpec, ScoreToWeight};
use super::optim::{AdamWConfig, Schedule, ScheduleKind};
use super::params::Freeze;
use super::precision::TrainPrecision;
use super::step::MemoryPlan;
use super::trainer::{TrainOptions, Trainer};
use super::TrainError;
use crate::eval::ranking::MetricSet;
use crate::input::image::{PreprocessConfig, Preprocessor};
use crate::input::pipeline::InputPipeline;
use crate::input::tokenizer::ClipTokenizer;
use crate::input::Convention;
use crate::model::backward::KeptPrecision;
use crate::model::{Clip, ClipConfig};
use crate::source::ModelSource;

/// `[model]`
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelSection {
    /// Train from scratch: an open_clip architecture name or config JSON path.
    pub arch: Option<String>,
    /// Fine-tune: a model directory, checkpoint file or hub-cache id.
    pub from: Option<String>,
    /// The architecture of an open_clip checkpoint file given in `from`.
    pub from_arch: Option<String>,
    /// From scratch only: the factor that multiplies cosine similarities at step 0,
    /// `exp(logit_scale)` (open_clip's default 1/0.07 ≈ 14.3; the loss caps it at 100).
    pub initial_logit_scale: Option<f64>,
}

/// `[data]` and `[eval]`'s data.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSection {
    #[serde(default = "jsonl")]
    pub layout: Layout,
    pub path: PathBuf,
    #[serde(default)]
    pub image_root: Option<PathBuf>,
    #[serde(default)]
    pub score_column: Option<String>,
}

fn jsonl() -> Layout {
    Layout::Jsonl
}

/// Which evaluation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EvalKind {
    Retrieval,
    Ranking,
}

/// `[eval]`
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalSection {
    #[serde(flatten)]
    pub data: DataSection,
    pub kind: EvalKind,
    /// Evaluate every this many steps (0: at the end only).
    #[serde(default)]
    pub every: u64,
    /// Documents retrieved per query (ranking).
    #[serde(default = "thousand")]
    pub top_k: usize,
    /// Extra documents to search (ranking): a JSONL of pairs whose document sides form the
    /// corpus (their queries are ignored).
    #[serde(default)]
    pub corpus: Option<PathBuf>,
}

fn thousand() -> usize {
    1000
}

/// Loss kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LossKind {
    Clip,
    Gcl,
}

/// Score-to-weight names in the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StwName {
    None,
    Linear,
    Reciprocal,
    Power,
}

/// `[loss]`
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LossSection {
    pub kind: LossKind,
    pub score_to_weight: StwName,
    /// The exponent of `power`.
    pub power: f64,
    pub query_fields: Option<Vec<FieldSpec>>,
    pub doc_fields: Option<Vec<FieldSpec>>,
    pub extra_terms: Vec<ExtraTerm>,
    pub mask_shared: Option<bool>,
    /// GCL: the smallest pair weight, `w = max(STW(score), weight_floor)`.
    pub weight_floor: f64,
}

impl Default for LossSection {
    fn default() -> Self {
        Self {
            kind: LossKind::Clip,
            score_to_weight: StwName::Linear,
            power: 2.0,
            query_fields: None,
            doc_fields: None,
            extra_terms: Vec::new(),
            mask_shared: None,
            weight_floor: 0.0,
        }
    }
}

impl LossSection {
    /// The objective: CLIP is one text query field and one image document field, unit weights,
    /// no mask (open_clip); GCL uses every option.
    pub fn objective(&self) -> Result<GclSpec, TrainError> {
        let text = || {
            vec![FieldSpec {
                name: "text".into(),
                kind: FieldKind::Text,
                weight: 1.0,
            }]
        };
        let image = || {
            vec![FieldSpec {
                name: "image".into(),
                kind: FieldKind::Image,
                weight: 1.0,
            }]
        };
        if !(0.0..=1.0).contains(&self.weight_floor) {
            return Err(TrainError::Config(format!(
                "loss.weight_floor must be between 0 and 1 (pair weights are at most 1), got {}",
                self.weight_floor
            )));
        }
        if self.kind == LossKind::Clip && self.weight_floor != 0.0 {
            return Err(TrainError::Config(
                "loss.weight_floor only applies to loss.kind = \"gcl\" (CLIP weighs every pair 1)"
                    .into(),
            ));
        }
        if self.kind == LossKind::Gcl
            && self.score_to_weight == StwName::Power
            && !(self.power.is_finite() && self.power > 0.0)
        {
            return Err(TrainError::Config(format!(
                "loss.power must be a positive number, got {}",
                self.power
            )));
        }
        let q = self.query_fields.clone().unwrap_or_else(text);
        let d = self.doc_fields.clone().unwrap_or_else(image);
        match self.kind {
            LossKind::Clip => {
                if q.len() != 1 || d.len() != 1 || !self.extra_terms.is_empty() {
                    return Err(TrainError::Config(
                        "loss = \"clip\" takes one query field and one document field and no extra terms; use loss.kind = \"gcl\" for more".into(),
                    ));
                }
                Ok(GclSpec {
                    score_to_weight: ScoreToWeight::None,
                    query_fields: q,
                    doc_fields: d,
                    extra_terms: vec![],
                    mask_shared: self.mask_shared.unwrap_or(false),
                    weight_floor: 0.0,
                })
            }
            LossKind::Gcl => Ok(GclSpec {
                score_to_weight: match self.score_to_weight {
                    StwName::None => ScoreToWeight::None,
                    StwName::Linear => ScoreToWeight::Linear,
                    StwName::Reciprocal => ScoreToWeight::Reciprocal,
                    StwName::Power => ScoreToWeight::Power { p: self.power },
                },
                query_fields: q,
                doc_fields: d,
                extra_terms: self.extra_terms.clone(),
                mask_shared: self.mask_shared.unwrap_or(true),
                weight_floor: self.weight_floor,
            }),
        }
    }
}

/// `[train]`
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainSection {
    pub steps: u64,
    pub batch_size: usize,
    pub lr: f64,
    pub warmup: u64,
    pub schedule: ScheduleKind,
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub max_grad_norm: Option<f64>,
    pub accum_steps: u64,
    pub grad_cache_chunk: Option<usize>,
    /// Recompute each residual block in the backward pass instead of keeping its activations.
    pub activation_checkpointing: bool,
    /// With `activation_checkpointing`, the share of each tower's blocks recomputed, in (0, 1]
    /// (1: every block); the others keep their activations: less recomputation for more
    /// memory.
    pub checkpoint_share: f64,
    /// `fp32` or `bf16` (mixed precision: bf16 products, f32 weights and everything else).
    pub precision: TrainPrecision,
    /// `f32` or `bf16`: the precision the blocks keep their products' outputs in between the
    /// forward and backward passes; unset, that of `precision` (bf16 halves those activations'
    /// memory, as PyTorch's bf16 autocast keeps them).
    pub kept_activations: Option<KeptPrecision>,
    pub seed: u64,
    pub output: PathBuf,
    pub checkpoint_every: u64,
    pub keep_checkpoints: usize,
    /// Training augmentation as the `[augment]` section sets it (by default open_clip's random
    /// resized crop, scale 0.9–1.0); false: the model's centre crop.
    pub augment: bool,
    pub prefetch: usize,
    /// `random` (open_clip) or `unique` (at most one pair per query and per document in a batch).
    pub batch_sampler: BatchSampler,
}

impl Default for TrainSection {
    fn default() -> Self {
        let a = AdamWConfig::default();
        Self {
            steps: 1000,
            batch_size: 64,
            lr: 5e-4,
            warmup: 100,
            schedule: ScheduleKind::Cosine,
            weight_decay: a.weight_decay,
            beta1: a.beta1,
            beta2: a.beta2,
            eps: a.eps,
            max_grad_norm: None,
            accum_steps: 1,
            grad_cache_chunk: None,
            activation_checkpointing: false,
            checkpoint_share: 1.0,
            precision: TrainPrecision::Fp32,
            kept_activations: None,
            seed: 0,
            output: PathBuf::from("runs/train"),
            checkpoint_every: 500,
            keep_checkpoints: 3,
            augment: true,
            prefetch: 2,
            batch_sampler: BatchSampler::Random,
        }
    }
}

/// The whole file.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    pub model: ModelSection,
    pub data: Option<DataSection>,
    pub eval: Option<EvalSection>,
    pub loss: LossSection,
    pub train: TrainSection,
    /// Used when `train.augment` is true.
    pub augment: AugmentConfig,
    pub freeze: Freeze,
}

impl TrainConfig {
    /// The trainer's options.
    pub fn options(&self) -> Result<TrainOptions, TrainError> {
        let t = &self.train;
        self.augment.validate().map_err(TrainError::Config)?;
        MemoryPlan::check_share(t.checkpoint_share, t.activation_checkpointing, "train.")
            .map_err(TrainError::Config)?;
        Ok(TrainOptions {
            total_steps: t.steps,
            accum_steps: t.accum_steps,
            grad_cache_chunk: t.grad_cache_chunk,
            activation_checkpointing: t.activation_checkpointing,
            checkpoint_share: t.checkpoint_share,
            precision: t.precision,
            kept_precision: t
                .kept_activations
                .unwrap_or_else(|| t.precision.kept_activations()),
            schedule: Schedule {
                kind: t.schedule,
                base_lr: t.lr,
                warmup_steps: t.warmup,
                total_steps: t.steps,
            },
            adamw: AdamWConfig {
                beta1: t.beta1,
                beta2: t.beta2,
                eps: t.eps,
                weight_decay: t.weight_decay,
            },
            max_grad_norm: t.max_grad_norm,
            checkpoint_every: t.checkpoint_every,
            keep_checkpoints: t.keep_checkpoints,
            eval_every: self.eval.as_ref().map_or(0, |e| e.every),
            seed: t.seed,
            freeze: self.freeze.clone(),
            objective: self.loss.objective()?,
        })
    }
}

fn data_spec(d: &DataSection) -> DataSpec {
    DataSpec {
        layout: d.layout,
        path: d.path.clone(),
        image_root: d.image_root.clone(),
        score_column: d
            .score_column
            .clone()
            .unwrap_or_else(|| "score_linear".into()),
    }
}

/// A run ready to start: the trainer, its batches and its evaluation set.
pub struct Session {
    pub config: TrainConfig,
    pub trainer: Trainer,
    pub loader: Loader,
    pub eval_data: Option<Dataset>,
    pub eval_corpus: Option<Dataset>,
    pub tokenizer: Arc<ClipTokenizer>,
    pub preprocess: PreprocessConfig,
    pub convention: Convention,
    /// The model directory of a fine-tuned source (for its tokenizer files at export).
    pub source_dir: Option<PathBuf>,
    pub run_dir: PathBuf,
}

/// The model of `[model]`, its input convention and directory.
fn model_of(cfg: &TrainConfig) -> Result<(Clip, Convention, Option<PathBuf>), TrainError> {
    match (&cfg.model.arch, &cfg.model.from) {
        (Some(arch), None) => {
            let c = ClipConfig::open_clip(arch)?;
            let mut clip = init_open_clip(&c, cfg.train.seed, &Device::Cpu, DType::F32)?;
            if let Some(scale) = cfg.model.initial_logit_scale {
                clip.logit_scale = Tensor::new(initial_log_scale(scale)?, &Device::Cpu)?;
            }
            Ok((clip, Convention::OpenClip, None))
        }
        (None, Some(_)) if cfg.model.initial_logit_scale.is_some() => Err(TrainError::Config(
            "[model] initial_logit_scale applies only to training from scratch (`arch`); a checkpoint given in `from` brings its own logit scale".into(),
        )),
        (None, Some(from)) => {
            let loaded = ModelSource::resolve(from, cfg.model.from_arch.as_deref())?.load(&Device::Cpu, DType::F32)?;
            Ok((loaded.clip, loaded.convention, loaded.dir))
        }
        _ => Err(TrainError::Config(
            "[model] needs exactly one of `arch` (train from scratch) or `from` (fine-tune a checkpoint)".into(),
        )),
    }
}

/// The logarithm stored as `logit_scale` for an initial factor `scale`, which must lie in
/// (0, 100] (the loss caps the factor at 100).
fn initial_log_scale(scale: f64) -> Result<f32, TrainError> {
    if scale.is_finite() && scale > 0.0 && scale <= 100.0 {
        Ok(scale.ln() as f32)
    } else {
        Err(TrainError::Config(format!(
            "[model] initial_logit_scale = {scale}: expected a factor above 0 and at most 100 (open_clip starts at 1/0.07 ≈ 14.3)"
        )))
    }
}

/// Loads everything a config names. With `resume`, the model and optimiser come from that
/// checkpoint (or run directory) instead of `[model]` (whose architecture must match).
pub fn prepare(cfg: TrainConfig, resume: Option<&Path>) -> Result<Session, TrainError> {
    let options = cfg.options()?;
    let (clip, convention, source_dir) = model_of(&cfg)?;
    let pipeline = InputPipeline::new(
        convention,
        source_dir.as_deref(),
        clip.config.text.context_length,
        clip.config.vision.image_size,
    )
    .map_err(|e| TrainError::Config(e.to_string()))?;
    let (tokenizer, preprocessor) = pipeline.into_parts();
    // One tokenizer for the loader and the evaluation: the vocabulary is read once.
    let tokenizer = Arc::new(
        tokenizer.map_err(|e| TrainError::Config(format!("the model has no tokenizer: {e}")))?,
    );
    let preprocess = preprocessor.config().clone();
    let data_section = cfg
        .data
        .as_ref()
        .ok_or_else(|| TrainError::Config("[data] path is required".into()))?;
    let dataset = load(&data_spec(data_section), &options.objective)?;
    if dataset.pairs.len() < cfg.train.batch_size {
        return Err(TrainError::Data(format!(
            "{}: {} usable pairs ({} rows read, {} skipped), fewer than one batch of {}",
            data_section.path.display(),
            dataset.pairs.len(),
            dataset.rows_read,
            dataset.skipped.total(),
            cfg.train.batch_size
        )));
    }
    let eval_data = match &cfg.eval {
        Some(e) => Some(load(&data_spec(&e.data), &options.objective)?),
        None => None,
    };
    let eval_corpus = match cfg.eval.as_ref().and_then(|e| e.corpus.as_ref()) {
        Some(c) => Some(load(
            &DataSpec {
                path: c.clone(),
                ..data_spec(&cfg.eval.as_ref().expect("checked").data)
            },
            &options.objective,
        )?),
        None => None,
    };
    let loader = Loader::new(
        dataset,
        &options.objective,
        Arc::clone(&tokenizer),
        LoaderConfig {
            batch_size: cfg.train.batch_size,
            seed: cfg.train.seed,
            sampler: cfg.train.batch_sampler,
            prefetch: cfg.train.prefetch,
            augment: cfg.train.augment.then_some(cfg.augment),
            preprocess: preprocess.clone(),
        },
    )?;
    let run_dir = cfg.train.output.clone();
    let trainer = match resume {
        Some(from) => {
            let t = Trainer::resume(from, options, &run_dir)?;
            if t.clip.config != clip.config {
                return Err(TrainError::Config(
                    "the checkpoint to resume has another architecture than [model]".into(),
                ));
            }
            t
        }
        None => Trainer::new(clip, options, &run_dir)?,
    };
    Ok(Session {
        config: cfg,
        trainer,
        loader,
        eval_data,
        eval_corpus,
        tokenizer,
        preprocess,
        convention,
        source_dir,
        run_dir,
    })
}

impl Session {
    /// Metrics of `clip` on the evaluation set (none without `[eval]`).
    pub fn evaluate(&self, clip: &Clip) -> Result<Vec<(String, f64)>, TrainError> {
        let (Some(e), Some(data)) = (&self.config.eval, &self.eval_data) else {
            return Ok(Vec::new());
        };
        evaluate_model(
            clip,
            &self.tokenizer,
            &self.preprocess,
            &self.trainer.options.objective,
            EvalSet {
                data,
                corpus: self.eval_corpus.as_ref(),
                kind: e.kind,
                top_k: e.top_k,
            },
        )
    }
}

/// An evaluation set and what to measure on it.
#[derive(Clone, Copy)]
pub struct EvalSet<'a> {
    pub data: &'a Dataset,
    /// Extra documents to search (ranking).
    pub corpus: Option<&'a Dataset>,
    pub kind: EvalKind,
    /// Documents retrieved per query (ranking).
    pub top_k: usize,
}

/// Metrics of a model on a dataset: open_clip's retrieval metrics, or GCL's ranking metrics
/// (nDCG@10, MRR@10, MAP@1000, ERR, RBP@0.7/0.8/0.9 and the rest at GCL's cut-offs).
pub fn evaluate_model(
    clip: &Clip,
    tokenizer: &ClipTokenizer,
    preprocess: &PreprocessConfig,
    objective: &GclSpec,
    set: EvalSet,
) -> Result<Vec<(String, f64)>, TrainError> {
    let EvalSet {
        data,
        corpus,
        kind,
        top_k,
    } = set;
    let pp = Preprocessor::new(preprocess.clone());
    let e = Embedding {
        clip,
        tokenizer,
        preprocessor: &pp,
        batch_size: 64,
    };
    match kind {
        EvalKind::Retrieval => {
            Ok(
                retrieval_metrics(&e, data, &objective.query_fields, &objective.doc_fields)?
                    .named(),
            )
        }
        EvalKind::Ranking => {
            let r = ranking_metrics(
                &e,
                data,
                corpus,
                &objective.query_fields,
                &objective.doc_fields,
                top_k,
                &MetricSet::default(),
            )?;
            Ok(r.metrics.into_iter().collect())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A config from JSON (the same serde model as the TOML file the CLI reads).
    fn parse(json: &str) -> Result<TrainConfig, String> {
        serde_json::from_str(json).map_err(|e| e.to_string())
    }

    #[test]
    fn weight_floor_and_power_are_validated() {
        let gcl = |extra: &str| {
            parse(&format!(r#"{{"loss": {{"kind": "gcl"{extra}}}}}"#))
                .unwrap()
                .loss
                .objective()
        };
        assert_eq!(gcl(r#", "weight_floor": 0.2"#).unwrap().weight_floor, 0.2);
        assert_eq!(gcl("").unwrap().weight_floor, 0.0);
        for bad in [r#", "weight_floor": 1.5"#, r#", "weight_floor": -0.1"#] {
            let e = gcl(bad).unwrap_err().to_string();
            assert!(
                e.contains("weight_floor must be between 0 and 1"),
                "{bad}: {e}"
            );
        }
        let e = parse(r#"{"loss": {"kind": "clip", "weight_floor": 0.2}}"#)
            .unwrap()
            .loss
            .objective()
            .unwrap_err()
            .to_string();
        assert!(e.contains("only applies to loss.kind = \"gcl\""), "{e}");
        let e = gcl(r#", "score_to_weight": "power", "power": 0"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("loss.power must be a positive number"), "{e}");
        assert!(gcl(r#", "score_to_weight": "power", "power": 0.5"#).is_ok());
    }

    #[test]
    fn augment_section_parses_and_is_checked_before_training() {
        let cfg = parse(r#"{"augment": {"hue": 0.05, "stroke": 1, "scale": [0.5, 1.0]}}"#).unwrap();
        assert_eq!((cfg.augment.hue, cfg.augment.stroke), (0.05, 1));
        assert_eq!(cfg.augment.scale, (0.5, 1.0));
        assert_eq!(cfg.augment.brightness, 0.0);
        assert!(cfg.options().is_ok());
        let e = parse(r#"{"augment": {"blur": 1}}"#).unwrap_err();
        assert!(e.contains("unknown field `blur`"), "{e}");
        let Err(e) = parse(r#"{"augment": {"hue": 0.7}}"#).unwrap().options() else {
            panic!("hue 0.7 accepted");
        };
        let e = e.to_string();
        assert!(e.contains("augment.hue must be between 0 and 0.5"), "{e}");
    }

    #[test]
    fn batch_sampler_parses_and_rejects_unknown_names() {
        assert_eq!(
            parse("{}").unwrap().train.batch_sampler,
            BatchSampler::Random
        );
        assert_eq!(
            parse(r#"{"train": {"batch_sampler": "unique"}}"#)
                .unwrap()
                .train
                .batch_sampler,
            BatchSampler::Unique
        );
        let e = parse(r#"{"train": {"batch_sampler": "one-per-query"}}"#).unwrap_err();
        assert!(e.contains("unknown variant") && e.contains("unique"), "{e}");
    }

    #[test]
    fn kept_activations_follow_the_precision_unless_set() {
        let kept = |json: &str| parse(json).unwrap().options().unwrap().kept_precision;
        assert_eq!(kept("{}"), KeptPrecision::F32);
        assert_eq!(
            kept(r#"{"train": {"precision": "bf16"}}"#),
            KeptPrecision::Bf16
        );
        assert_eq!(
            kept(r#"{"train": {"precision": "bf16", "kept_activations": "f32"}}"#),
            KeptPrecision::F32
        );
        assert_eq!(
            kept(r#"{"train": {"kept_activations": "bf16"}}"#),
            KeptPrecision::Bf16
        );
        let e = parse(r#"{"train": {"kept_activations": "int8"}}"#).unwrap_err();
        assert!(e.contains("int8") && e.contains("f32 or bf16"), "{e}");
    }

    #[test]
    fn precision_reaches_the_options_and_refuses_int8_and_unknown_names() {
        assert_eq!(
            parse("{}").unwrap().options().unwrap().precision,
            TrainPrecision::Fp32
        );
        let bf16 = parse(r#"{"train": {"precision": "bf16"}}"#).unwrap();
        assert_eq!(bf16.options().unwrap().precision, TrainPrecision::Bf16);
        for (bad, says) in [("int8", "for inference only"), ("half", "unknown")] {
            let e = parse(&format!(r#"{{"train": {{"precision": "{bad}"}}}}"#)).unwrap_err();
            assert!(
                e.contains(bad) && e.contains(says) && e.contains("fp32 or bf16"),
                "{e}"
            );
        }
    }

    #[test]
    fn initial_logit_scale_sets_the_scratch_model_and_is_refused_out_of_range_or_with_from() {
        let arch = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/models/oc-gelu/open_clip_config.json");
        let with = |extra: &str| {
            parse(&format!(
                r#"{{"model": {{"arch": {}{extra}}}}}"#,
                serde_json::to_string(&arch).unwrap()
            ))
            .unwrap()
        };
        let default = model_of(&with("")).unwrap().0.logit_scale_exp().unwrap();
        assert!((default - 1.0 / 0.07).abs() < 1e-3, "{default}");
        let set = model_of(&with(r#", "initial_logit_scale": 30"#)).unwrap().0;
        assert!((set.logit_scale_exp().unwrap() - 30.0).abs() < 1e-3);
        for bad in ["0", "-2", "150"] {
            let Err(e) = model_of(&with(&format!(r#", "initial_logit_scale": {bad}"#))) else {
                panic!("{bad} accepted");
            };
            let e = e.to_string();
            assert!(
                e.contains("initial_logit_scale") && e.contains("at most 100"),
                "{e}"
            );
        }
        let from = parse(r#"{"model": {"from": "somewhere", "initial_logit_scale": 20}}"#).unwrap();
        let Err(e) = model_of(&from) else {
            panic!("initial_logit_scale accepted with `from`");
        };
        assert!(
            e.to_string().contains("only to training from scratch"),
            "{e}"
        );
    }

    #[test]
    fn checkpoint_share_reaches_the_options_and_is_refused_out_of_range_or_alone() {
        let opts = |train: &str| {
            parse(&format!(r#"{{"train": {{{train}}}}}"#))
                .unwrap()
                .options()
        };
        assert_eq!(opts("").unwrap().checkpoint_share, 1.0);
        let half = opts(r#""activation_checkpointing": true, "checkpoint_share": 0.5"#).unwrap();
        assert!(half.activation_checkpointing && half.checkpoint_share == 0.5);
        for bad in ["0", "-0.5", "1.5"] {
            let Err(e) = opts(&format!(
                r#""activation_checkpointing": true, "checkpoint_share": {bad}"#
            )) else {
                panic!("{bad} accepted");
            };
            let e = e.to_string();
            assert!(
                e.contains("train.checkpoint_share is") && e.contains("at most 1"),
                "{e}"
            );
        }
        let Err(e) = opts(r#""checkpoint_share": 0.5"#) else {
            panic!("a share without checkpointing accepted");
        };
        assert!(
            e.to_string()
                .contains("needs train.activation_checkpointing = true"),
            "{e}"
        );
    }

    #[test]
    fn a_checkpointed_share_recomputes_that_many_blocks_evenly_spread() {
        use crate::train::blockwise::recomputes;
        let which = |blocks: usize, share: f64| -> Vec<usize> {
            (0..blocks).filter(|&i| recomputes(i, share)).collect()
        };
        assert_eq!(which(12, 1.0), (0..12).collect::<Vec<_>>());
        assert_eq!(which(12, 0.5), [1, 3, 5, 7, 9, 11]);
        assert_eq!(which(12, 0.4), [2, 4, 7, 9]);
        assert_eq!(which(10, 0.3), [3, 6, 9]);
        assert_eq!(which(2, 0.5), [1]);
        assert!(which(6, 0.1).is_empty());
    }
}

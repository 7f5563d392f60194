//! gclip's training math against PyTorch: open_clip's `ClipLoss`, a plain PyTorch transcription
//! of GCL's loss, `torch.optim.AdamW` with open_clip's parameter groups, and one whole open_clip
//! training step of a tiny CLIP. The fixtures (`tests/fixtures/train/`) are written by
//! `tools/gen_train_fixtures.py`; nothing here is a number copied from a run.
//!
//! Tolerances are stated per check, as a bound on the largest absolute difference relative to
//! the largest magnitude of the reference tensor (so they do not depend on the scale of a
//! gradient). f32 checks allow for the two libraries summing in different orders; the loss
//! checks are repeated in f64, where any difference beyond rounding is a real one.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, Var};
use gclip::model::{Clip, NamingScheme, Weights};
use gclip::source::ModelSource;
use gclip::train::config::LossSection;
use gclip::train::export::checkpoint_tensors;
use gclip::train::loss::{
    clip_loss, gcl_loss, normalize, ExtraTerm, FieldEmbedding, FieldKind, FieldSpec, GclSpec,
    ScoreRange, ScoreToWeight,
};
use gclip::train::optim::{AdamW, AdamWConfig, Schedule, ScheduleKind};
use gclip::train::params::{named_params, Freeze, ParamSet};
use gclip::train::step::{loss_and_grads, Batch, FieldBatch, FieldData};
use gclip::train::trainer::{BatchSource, TrainOptions, Trainer};
use gclip::train::TrainError;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/train")
}

fn load(name: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(dir().join(name), &Device::Cpu).unwrap()
}

fn manifest() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir().join("manifest.json")).unwrap()).unwrap()
}

fn get<'a>(m: &'a HashMap<String, Tensor>, name: &str) -> &'a Tensor {
    m.get(name)
        .unwrap_or_else(|| panic!("fixture tensor `{name}` missing"))
}

fn values(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn scalar(t: &Tensor) -> f64 {
    let v = values(t);
    assert_eq!(v.len(), 1);
    v[0]
}

/// A fixture's `[1]` tensor as a 0-d one (gclip's logit scale is a scalar tensor).
fn scalar_tensor(t: &Tensor, dtype: DType) -> Tensor {
    t.reshape(()).unwrap().to_dtype(dtype).unwrap()
}

/// The largest |a − b| and the largest |b|.
fn diff(a: &Tensor, b: &Tensor) -> (f64, f64) {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    let (a, b) = (values(a), values(b));
    let d = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max);
    let m = b.iter().map(|y| y.abs()).fold(0.0, f64::max);
    (d, m)
}

/// Asserts `max|got − want| ≤ rel · max|want|` (with `rel · 1e-30` as a floor for all-zero
/// references) and returns the relative difference, for the printed summary.
fn assert_close(what: &str, got: &Tensor, want: &Tensor, rel: f64) -> f64 {
    let (d, m) = diff(got, want);
    assert!(
        d <= rel * m.max(1e-30),
        "{what}: max |Δ| = {d:e}, {:.2e} of max |reference| = {m:e} (allowed {rel:e})",
        d / m.max(1e-30)
    );
    println!(
        "{what:<60} max|Δ| {d:.2e}  max|ref| {m:.2e}  rel {:.2e}",
        d / m.max(1e-30)
    );
    d / m.max(1e-30)
}

/// Asserts `|got − want| ≤ rel·|want|` for a scalar, and prints both.
fn assert_rel(what: &str, got: f64, want: f64, rel: f64) {
    let d = (got - want).abs();
    assert!(
        d <= rel * want.abs(),
        "{what}: gclip {got} vs PyTorch {want} (|Δ| {d:e}, allowed {rel:e} relative)"
    );
    println!("{what:<60} {got} vs {want} (|Δ| {d:.2e})");
}

// ------------------------------------------------------------------------------------------
// 1. open_clip's ClipLoss
// ------------------------------------------------------------------------------------------

/// The CLIP loss of raw (un-normalised) features as open_clip's model computes it: features
/// L2-normalised, scale `exp(t)`. Returns the loss and the gradients with respect to the raw
/// features, the normalised features and `t`.
fn gclip_clip_loss(
    image: &Tensor,
    text: &Tensor,
    t: &Tensor,
) -> (f64, Tensor, Tensor, Tensor, Tensor, Tensor) {
    let (vi, vt, vs) = (
        Var::from_tensor(image).unwrap(),
        Var::from_tensor(text).unwrap(),
        Var::from_tensor(t).unwrap(),
    );
    let loss = clip_loss(
        &normalize(vi.as_tensor()).unwrap(),
        &normalize(vt.as_tensor()).unwrap(),
        vs.as_tensor(),
    )
    .unwrap();
    let g = loss.backward().unwrap();
    // The gradient with respect to the normalised features: those as leaves of their own.
    let ni = Var::from_tensor(&normalize(image).unwrap()).unwrap();
    let nt = Var::from_tensor(&normalize(text).unwrap()).unwrap();
    let g2 = clip_loss(ni.as_tensor(), nt.as_tensor(), vs.as_tensor())
        .unwrap()
        .backward()
        .unwrap();
    (
        scalar(&loss),
        g.get(vi.as_tensor()).unwrap().clone(),
        g.get(vt.as_tensor()).unwrap().clone(),
        g2.get(ni.as_tensor()).unwrap().clone(),
        g2.get(nt.as_tensor()).unwrap().clone(),
        g.get(vs.as_tensor()).unwrap().clone(),
    )
}

#[test]
fn clip_loss_matches_open_clip_clip_loss() {
    let f = load("clip_loss.safetensors");
    // f32: the same inputs, each library's own summation order: 2e-6 of the largest
    // reference value is ~16 f32 ulps of it (measured: 2.3e-7 for the loss, 1.9e-7 for the
    // gradients). f64: the same computation in double precision, where only rounding may
    // differ: 1e-12 (measured: 1e-15).
    for (dtype, suffix, rel) in [(DType::F32, "", 2e-6), (DType::F64, "_f64", 1e-12)] {
        let image = get(&f, "image_raw").to_dtype(dtype).unwrap();
        let text = get(&f, "text_raw").to_dtype(dtype).unwrap();
        let t = scalar_tensor(get(&f, "logit_scale"), dtype);
        let (loss, gi, gt, gni, gnt, gs) = gclip_clip_loss(&image, &text, &t);
        let want = scalar(get(&f, &format!("loss{suffix}")));
        assert_rel(&format!("ClipLoss {dtype:?} loss"), loss, want, rel);
        let g = |n: &str| get(&f, &format!("{n}{suffix}")).clone();
        assert_close(
            &format!("ClipLoss {dtype:?} ∂/∂image (raw)"),
            &gi,
            &g("grad_image_raw"),
            rel,
        );
        assert_close(
            &format!("ClipLoss {dtype:?} ∂/∂text (raw)"),
            &gt,
            &g("grad_text_raw"),
            rel,
        );
        assert_close(
            &format!("ClipLoss {dtype:?} ∂/∂image (normalised)"),
            &gni,
            &g("grad_image_normed"),
            rel,
        );
        assert_close(
            &format!("ClipLoss {dtype:?} ∂/∂text (normalised)"),
            &gnt,
            &g("grad_text_normed"),
            rel,
        );
        assert_close(
            &format!("ClipLoss {dtype:?} ∂/∂logit_scale"),
            &gs.reshape(1).unwrap(),
            &g("grad_logit_scale"),
            rel,
        );
    }
    // The fixture is not degenerate: a loss well away from 0 and from chance, gradients of
    // every input of a size a sign or scale error would change.
    let loss = scalar(get(&f, "loss_f64"));
    assert!(loss > 0.1 && loss < (10f64).ln(), "loss {loss}");
    for n in ["grad_image_raw", "grad_text_raw", "grad_logit_scale"] {
        assert!(
            diff(get(&f, n), &get(&f, n).zeros_like().unwrap()).0 > 1e-3,
            "{n}"
        );
    }
}

// ------------------------------------------------------------------------------------------
// 2. GCL's weighted multi-field loss
// ------------------------------------------------------------------------------------------

fn gcl_spec(f: &HashMap<String, Tensor>) -> GclSpec {
    let theta = values(get(f, "field_weights"));
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
                weight: theta[0],
            },
            FieldSpec {
                name: "title".into(),
                kind: FieldKind::Text,
                weight: theta[1],
            },
        ],
        extra_terms: vec![ExtraTerm {
            query: "text".into(),
            doc: "title".into(),
            weight: scalar(get(f, "extra_weight")),
        }],
        mask_shared: true,
        weight_floor: 0.0,
    }
}

fn keys(t: &Tensor) -> Vec<u64> {
    t.to_vec1::<i64>()
        .unwrap()
        .into_iter()
        .map(|k| k as u64)
        .collect()
}

#[test]
fn gcl_loss_matches_a_pytorch_transcription_of_the_formula() {
    let f = load("gcl_loss.safetensors");
    let spec = gcl_spec(&f);
    // Linear score-to-weight, from the data's score range.
    let range = values(get(&f, "score_range"));
    let range = ScoreRange {
        min: range[0],
        max: range[1],
    };
    let weights: Vec<f32> = values(get(&f, "scores"))
        .iter()
        .map(|&s| spec.pair_weight(s, None, &range).unwrap() as f32)
        .collect();
    let want_w = values(get(&f, "pair_weights"));
    for (i, (w, v)) in weights.iter().zip(&want_w).enumerate() {
        // f32 roundings of the same f64 map (up to the order of one product and division).
        assert!(
            (*w as f64 - v).abs() <= 1.2e-7 * v,
            "pair {i} weight {w} vs {v}"
        );
    }
    let present: Vec<bool> = values(get(&f, "image_present"))
        .iter()
        .map(|&p| p == 1.0)
        .collect();
    assert!(present.iter().any(|p| !p), "some rows lack an image");
    let (qk, dk) = (keys(get(&f, "query_keys")), keys(get(&f, "doc_keys")));

    // As for ClipLoss: f32 2e-6 of the largest reference value (measured: 5.2e-7, the logit
    // scale's gradient), f64 1e-12 (measured: 1.1e-15).
    for (dtype, suffix, rel) in [(DType::F32, "", 2e-6), (DType::F64, "_f64", 1e-12)] {
        let var = |n: &str| Var::from_tensor(&get(&f, n).to_dtype(dtype).unwrap()).unwrap();
        let (q, title, image) = (
            var("query_text_raw"),
            var("doc_title_raw"),
            var("doc_image_raw"),
        );
        let t = Var::from_tensor(&scalar_tensor(get(&f, "logit_scale"), dtype)).unwrap();
        let field = |name: &str, v: &Var, present: Option<Vec<bool>>| FieldEmbedding {
            name: name.into(),
            embedding: v.as_tensor().clone(),
            present,
        };
        let parts = gcl_loss(
            &spec,
            &[field("text", &q, None)],
            &[
                field("image", &image, Some(present.clone())),
                field("title", &title, None),
            ],
            t.as_tensor(),
            &weights,
            &qk,
            &dk,
        )
        .unwrap();
        for (name, got) in [
            ("loss", &parts.total),
            ("loss_main", &parts.main),
            ("loss_extra", &parts.extra[0]),
        ] {
            let want = scalar(get(&f, &format!("{name}{suffix}")));
            assert_rel(&format!("GCL {dtype:?} {name}"), scalar(got), want, rel);
        }
        let g = parts.total.backward().unwrap();
        for (name, v) in [
            ("grad_query_text", &q),
            ("grad_doc_title", &title),
            ("grad_doc_image", &image),
        ] {
            let want = get(&f, &format!("{name}{suffix}"));
            assert_close(
                &format!("GCL {dtype:?} {name}"),
                g.get(v.as_tensor()).unwrap(),
                want,
                rel,
            );
        }
        // A row without an image gets exactly no gradient through it, as in PyTorch.
        let gi = g
            .get(image.as_tensor())
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap()
            .to_vec2::<f64>()
            .unwrap();
        for (row, p) in gi.iter().zip(&present) {
            assert!(*p || row.iter().all(|&x| x == 0.0), "{dtype:?}: {row:?}");
        }
        let gs = g.get(t.as_tensor()).unwrap().reshape(1).unwrap();
        assert_close(
            &format!("GCL {dtype:?} grad_logit_scale"),
            &gs,
            get(&f, &format!("grad_logit_scale{suffix}")),
            rel,
        );
    }
    // The fixture can tell the parts apart: leaving out the weights or the mask moves the
    // loss by far more than the tolerance above.
    let main = scalar(get(&f, "loss_main_f64"));
    let extra = scalar(get(&f, "loss_extra_f64"));
    assert!(main > 0.1 && extra > 0.1, "{main} {extra}");
    let want = scalar(get(&f, "loss_f64"));
    let field = |name: &str, present: Option<Vec<bool>>| FieldEmbedding {
        name: name.into(),
        embedding: get(&f, &format!("{}_raw", name_of(name)))
            .to_dtype(DType::F64)
            .unwrap(),
        present,
    };
    let t = scalar_tensor(get(&f, "logit_scale"), DType::F64);
    for (what, spec, w) in [
        ("unit weights", spec.clone(), vec![1f32; weights.len()]),
        (
            "no mask",
            GclSpec {
                mask_shared: false,
                ..spec.clone()
            },
            weights.clone(),
        ),
    ] {
        let q = [field("text", None)];
        let d = [field("image", Some(present.clone())), field("title", None)];
        let v = scalar(&gcl_loss(&spec, &q, &d, &t, &w, &qk, &dk).unwrap().total);
        assert!((v - want).abs() > 1e-3 * want, "{what}: {v} vs {want}");
    }
}

/// The fixture's tensor name of a field.
fn name_of(field: &str) -> &'static str {
    match field {
        "text" => "query_text",
        "image" => "doc_image",
        _ => "doc_title",
    }
}

// ------------------------------------------------------------------------------------------
// The tiny model
// ------------------------------------------------------------------------------------------

fn tiny() -> Clip {
    let src = ModelSource::resolve(dir().join("tiny").to_str().unwrap(), None).unwrap();
    let loaded = src.load(&Device::Cpu, DType::F32).unwrap();
    assert!(
        loaded.unused_tensors.is_empty(),
        "{:?}",
        loaded.unused_tensors
    );
    loaded.clip
}

/// Tensors named as open_clip names them (`prefix` + name), in gclip's stored layout, by
/// gclip's name: the loader's own name map does the translation.
fn as_gclip_layout(
    config: &Clip,
    f: &HashMap<String, Tensor>,
    prefix: &str,
) -> HashMap<String, Tensor> {
    let tensors: HashMap<String, Tensor> = f
        .iter()
        .filter_map(|(k, v)| k.strip_prefix(prefix).map(|n| (n.to_string(), v.clone())))
        .collect();
    let weights = Weights::from_tensors(tensors, &Device::Cpu, DType::F32).unwrap();
    assert_eq!(weights.scheme(), NamingScheme::OpenClip);
    let (clip, unused) = Clip::load(&config.config, &weights).unwrap();
    assert!(unused.is_empty(), "{unused:?}");
    named_params(&clip)
        .into_iter()
        .map(|(info, t)| (info.name, t))
        .collect()
}

/// Compares every parameter of `clip` with `want` (gclip's names and stored layout, from
/// [`as_gclip_layout`]), element by element: `|got − want| ≤ abs + rel·|want| + slack`, where
/// `slack` (per parameter and element, when given) is what a separately checked difference
/// upstream implies. Returns the largest difference.
fn assert_params(
    what: &str,
    clip: &Clip,
    want: &HashMap<String, Tensor>,
    abs: f64,
    rel: f64,
    slack: Option<&HashMap<String, Vec<f64>>>,
) -> f64 {
    let got = named_params(clip);
    assert_eq!(got.len(), want.len(), "{what}: parameter count");
    let mut worst = 0f64;
    let mut beyond_slack = 0f64;
    let mut failures = Vec::new();
    for (info, t) in &got {
        let name = &info.name;
        let w = values(&want[name]);
        let t = values(t);
        assert_eq!(t.len(), w.len(), "{name}");
        let s = slack.map(|s| &s[name]);
        let mut d_max = 0f64;
        let mut bad = 0;
        for (i, (a, b)) in t.iter().zip(&w).enumerate() {
            let d = (a - b).abs();
            d_max = d_max.max(d);
            let slack = s.map_or(0.0, |s| s[i]);
            beyond_slack = beyond_slack.max(d - slack);
            bad += (d > abs + rel * b.abs() + slack) as usize;
        }
        worst = worst.max(d_max);
        if bad > 0 {
            failures.push(format!(
                "{name}: {bad} of {} values off, max |Δ| {d_max:e}",
                t.len()
            ));
        }
    }
    println!("{what:<60} max|Δ| {worst:.2e}, beyond the slack {beyond_slack:.2e}");
    assert!(
        failures.is_empty(),
        "{what}: gclip differs from PyTorch:\n{}",
        failures.join("\n")
    );
    worst
}

fn adamw_config(m: &serde_json::Value) -> AdamWConfig {
    let a = &m["adamw"];
    AdamWConfig {
        beta1: a["betas"][0].as_f64().unwrap(),
        beta2: a["betas"][1].as_f64().unwrap(),
        eps: a["eps"].as_f64().unwrap(),
        weight_decay: a["weight_decay"].as_f64().unwrap(),
    }
}

// ------------------------------------------------------------------------------------------
// 3. AdamW with open_clip's parameter groups
// ------------------------------------------------------------------------------------------

#[test]
fn decay_groups_are_open_clip_trains() {
    let m = manifest();
    let mut clip = tiny();
    let set = ParamSet::attach(&mut clip, &Freeze::default()).unwrap();
    // gclip's names beside open_clip's, in the order both visit the model.
    let oc = checkpoint_tensors(&clip, NamingScheme::OpenClip).unwrap();
    assert_eq!(oc.len(), set.params.len());
    let decayed: Vec<&str> = m["adamw"]["decayed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let mut wrong = Vec::new();
    for ((oc_name, _), p) in oc.iter().zip(&set.params) {
        let torch = decayed.contains(&oc_name.as_str());
        if p.info.decays() != torch {
            wrong.push(format!(
                "{} ({oc_name}): gclip decays {}, open_clip {torch}",
                p.info.name,
                p.info.decays()
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn adamw_matches_torch_adamw_with_open_clip_groups() {
    let m = manifest();
    let f = load("adamw.safetensors");
    let mut clip = tiny();
    let set = ParamSet::attach(&mut clip, &Freeze::default()).unwrap();
    let mut opt = AdamW::new(&set, adamw_config(&m));
    let lrs: Vec<f64> = m["adamw"]["lrs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    for (k, lr) in lrs.iter().enumerate() {
        let step = k + 1;
        if step > 1 {
            // Each step starts from PyTorch's parameters, so rounding differences of earlier
            // steps do not add up (the moments keep gclip's own, equal up to rounding).
            let prev = as_gclip_layout(&clip, &f, &format!("step{}.param.", step - 1));
            for p in &set.params {
                p.var.set(&prev[&p.info.name]).unwrap();
            }
        }
        let grads = as_gclip_layout(&clip, &f, &format!("step{step}.grad."));
        let grads: Vec<Tensor> = set
            .params
            .iter()
            .map(|p| grads[&p.info.name].clone())
            .collect();
        opt.step(&set, &grads, *lr, None).unwrap();
        // The same gradients go in, so only rounding may differ: the two libraries order
        // AdamW's expression slightly differently, each rounding to a few ulps of the
        // parameter (2.5 ulps: 3e-7·|p|) plus a millionth of the step (1e-6·lr). A wrong decay
        // group moves a parameter by lr·λ·|p| = 2e-3·|p|, a wrong β, ε or bias correction far
        // more than an ulp.
        let want = as_gclip_layout(&clip, &f, &format!("step{step}.param."));
        assert_params(
            &format!("AdamW step {step} parameters"),
            &clip,
            &want,
            1e-6 * lr,
            3e-7,
            None,
        );
    }
}

// ------------------------------------------------------------------------------------------
// 4. One open_clip training step of the tiny model
// ------------------------------------------------------------------------------------------

struct OneBatch(Batch);

impl BatchSource for OneBatch {
    fn batches_per_epoch(&self) -> u64 {
        1
    }
    fn start_epoch(&mut self, _: u64, _: u64) -> Result<(), TrainError> {
        Ok(())
    }
    fn next_batch(&mut self) -> Result<Batch, TrainError> {
        Ok(self.0.clone())
    }
}

fn step_batch(f: &HashMap<String, Tensor>) -> Batch {
    let ids: Vec<Vec<u32>> = get(f, "input_ids")
        .to_vec2::<i64>()
        .unwrap()
        .into_iter()
        .map(|r| r.into_iter().map(|x| x as u32).collect())
        .collect();
    let n = ids.len();
    Batch {
        query: vec![FieldBatch {
            name: "text".into(),
            data: FieldData::Text(ids),
            present: None,
        }],
        doc: vec![FieldBatch {
            name: "image".into(),
            data: FieldData::Image(get(f, "pixel_values").clone()),
            present: None,
        }],
        weights: vec![1.0; n],
        query_keys: (0..n as u64).collect(),
        doc_keys: (0..n as u64).collect(),
    }
}

#[test]
fn one_training_step_matches_open_clip() {
    let m = manifest();
    let ms = &m["train_step"];
    let f = load("train_step.safetensors");
    let batch = step_batch(&f);
    let objective = LossSection::default().objective().unwrap();

    // The loss and every parameter's gradient, before the optimiser.
    let mut clip = tiny();
    let set = ParamSet::attach(&mut clip, &Freeze::default()).unwrap();
    let out = loss_and_grads(&clip, &set, &objective, &batch).unwrap();
    let want_loss = ms["loss"].as_f64().unwrap();
    // f32 through two blocks per tower (measured: 2.4e-7 relative).
    assert_rel("train step loss", out.loss, want_loss, 2e-6);
    let want_grads = as_gclip_layout(&clip, &f, "grad.");
    // The towers run different kernels (fused attention, GELU, LayerNorm) than PyTorch, each
    // rounding differently in f32; through two blocks per tower the gradients agree to
    // 3.3e-6 of each tensor's largest entry (measured), allowed 2e-5. A missing term, a wrong
    // transpose or a scale error is O(1).
    let mut worst = 0f64;
    for (p, g) in set.params.iter().zip(&out.grads) {
        let r = assert_close(
            &format!("∂loss/∂{}", p.info.name),
            g,
            &want_grads[&p.info.name],
            2e-5,
        );
        worst = worst.max(r);
    }
    println!("largest relative gradient difference: {worst:.2e}");

    // The whole step through the trainer: schedule, clipping, AdamW, clamp.
    let lr_base = ms["base_lr"].as_f64().unwrap();
    let options = TrainOptions {
        total_steps: ms["total_steps"].as_u64().unwrap(),
        accum_steps: 1,
        grad_cache_chunk: None,
        activation_checkpointing: false,
        checkpoint_share: 1.0,
        precision: gclip::train::precision::TrainPrecision::Fp32,
        kept_precision: gclip::model::backward::KeptPrecision::F32,
        schedule: Schedule {
            kind: ScheduleKind::Cosine,
            base_lr: lr_base,
            warmup_steps: ms["warmup"].as_u64().unwrap(),
            total_steps: ms["total_steps"].as_u64().unwrap(),
        },
        adamw: adamw_config(&m),
        max_grad_norm: Some(ms["max_grad_norm"].as_f64().unwrap()),
        checkpoint_every: 0,
        keep_checkpoints: 1,
        eval_every: 0,
        seed: 0,
        freeze: Freeze::default(),
        objective,
    };
    let run_dir = std::env::temp_dir().join(format!("gclip-train-ref-{}", std::process::id()));
    let mut trainer = Trainer::new(tiny(), options.clone(), &run_dir).unwrap();
    let log = trainer.step(&mut OneBatch(batch.clone())).unwrap();
    let want_lr = ms["lr"].as_f64().unwrap();
    assert!(
        (log.lr - want_lr).abs() <= 1e-15,
        "lr {} vs {want_lr}",
        log.lr
    );
    let want_norm = ms["grad_norm"].as_f64().unwrap();
    // The norm sums every gradient's square: the same f32 agreement as the gradients'
    // largest entries (measured: 2.1e-7 relative).
    assert_rel(
        "gradient norm (before clipping)",
        log.grad_norm,
        want_norm,
        2e-6,
    );
    // After the step: the same rounding allowance as the AdamW test (3e-7·|p| + 1e-6·lr),
    // plus what the gradient differences measured above imply. AdamW's first step from zero
    // moments moves a parameter by lr·u(c·g), u(x) = x/(|x| + ε), with c the clipping factor:
    // about lr·sign(g) where |g| ≫ ε, but where |g| is near or below ε (the key biases, whose
    // exact gradient is 0 since softmax ignores a per-query constant, get only rounding noise
    // from both libraries) the update follows the gradient's rounding. So each element may
    // differ by lr·|u(c·g_gclip) − u(c·g_torch)| more; everywhere else that is ~0. A wrong
    // decay group is lr·λ·|p| ≈ 5e-5·|p|, a wrong lr or clipping factor changes every
    // small-gradient element.
    let eps = m["adamw"]["eps"].as_f64().unwrap();
    let c = ms["max_grad_norm"].as_f64().unwrap() / (log.grad_norm + 1e-6);
    let u = |g: f64| c * g / ((c * g).abs() + eps);
    let slack: HashMap<String, Vec<f64>> = set
        .params
        .iter()
        .zip(&out.grads)
        .map(|(p, g)| {
            let ours = values(g);
            let theirs = values(&want_grads[&p.info.name]);
            let s = ours
                .iter()
                .zip(&theirs)
                .map(|(a, b)| log.lr * (u(*a) - u(*b)).abs())
                .collect();
            (p.info.name.clone(), s)
        })
        .collect();
    let want = as_gclip_layout(&trainer.clip, &f, "param.");
    assert_params(
        "train step parameters",
        &trainer.clip,
        &want,
        1e-6 * log.lr,
        3e-7,
        Some(&slack),
    );

    // The same step from a logit scale above ln(100): open_clip clamps after the optimiser,
    // so the scale ends at exactly ln(100) as f32 (clamping before the step would leave it
    // about lr away).
    let start = get(&f, "clamp.logit_scale_start");
    let before = scalar(get(&f, "clamp.logit_scale_before_clamp"));
    let want = get(&f, "clamp.logit_scale").to_vec1::<f32>().unwrap()[0];
    assert!(scalar(start) > 100f64.ln() && before > 100f64.ln() && before != want as f64);
    let mut clip = tiny();
    clip.logit_scale = scalar_tensor(start, DType::F32);
    let clamp_options = TrainOptions {
        max_grad_norm: Some(ms["clamp_max_grad_norm"].as_f64().unwrap()),
        ..options
    };
    let mut trainer = Trainer::new(clip, clamp_options, &run_dir).unwrap();
    trainer.step(&mut OneBatch(batch)).unwrap();
    let got = trainer.clip.logit_scale.to_scalar::<f32>().unwrap();
    assert_eq!(got, want, "logit scale after the clamp");
    println!("clamped logit scale {got} vs {want} (before the clamp: {before})");
    let _ = std::fs::remove_dir_all(&run_dir);
}

//! Finite-difference checks of every layer's gradient and of a whole tiny CLIP.
//!
//! Each check computes a scalar loss of some inputs (activations and parameters), takes its
//! gradient by back-propagation twice — in f32, where the fused CPU kernels and their hand-written
//! backward passes run, and in f64, where the composed candle ops run — and compares both with
//! central finite differences of the f64 loss: on single coordinates (which catches a gradient
//! wrong in one head or one row) and along a random direction over the whole tensor.

use candle_core::{DType, Device, Tensor, Var};

use crate::model::kernels::Activation;
use crate::model::layers::{Attention, LayerNorm, Linear, ResidualBlock};
use crate::model::precision::DenseProducts;
use crate::model::{Clip, ClipConfig};

use super::init::init_open_clip;
use super::params::{for_each_param_mut, named_params};
use super::rng::Rng;

fn random(shape: &[usize], rng: &mut Rng, scale: f64) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<f64> = (0..n).map(|_| rng.normal() * scale).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

fn scalar(t: &Tensor) -> f64 {
    t.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap()
}

fn flat(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn with_flat(t: &Tensor, v: Vec<f64>) -> Tensor {
    Tensor::from_vec(v, t.dims(), &Device::Cpu).unwrap()
}

/// The check described in the module documentation. `inputs` are f64; `loss` must accept
/// inputs of either dtype and return a scalar. Returns the largest relative error seen.
pub(crate) fn check(name: &str, inputs: &[Tensor], loss: impl Fn(&[Tensor]) -> Tensor) {
    let analytic = |dtype: DType| -> Vec<Vec<f64>> {
        let vars: Vec<Var> = inputs
            .iter()
            .map(|t| Var::from_tensor(&t.to_dtype(dtype).unwrap()).unwrap())
            .collect();
        let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let l = loss(&ts);
        let grads = l.backward().unwrap();
        ts.iter()
            .map(|t| match grads.get(t) {
                Some(g) => flat(g),
                None => vec![0.0; t.elem_count()],
            })
            .collect()
    };
    let g32 = analytic(DType::F32);
    let g64 = analytic(DType::F64);
    let eval = |k: usize, replacement: Tensor| -> f64 {
        let mut xs = inputs.to_vec();
        xs[k] = replacement;
        scalar(&loss(&xs))
    };
    let eps = 1e-5;
    let mut rng = Rng::new(1234);
    for (k, input) in inputs.iter().enumerate() {
        let base = flat(input);
        let n = base.len();
        // A few single coordinates, then one random direction.
        let mut probes: Vec<(Vec<f64>, f64, f64)> = Vec::new();
        let coords: Vec<usize> = if n <= 4 {
            (0..n).collect()
        } else {
            (0..4).map(|_| rng.below(n as u64) as usize).collect()
        };
        for &c in &coords {
            let mut d = vec![0.0; n];
            d[c] = 1.0;
            probes.push((d, g64[k][c], g32[k][c]));
        }
        let dir: Vec<f64> = (0..n).map(|_| rng.normal()).collect();
        let dot = |g: &[f64]| g.iter().zip(&dir).map(|(a, b)| a * b).sum::<f64>();
        probes.push((dir.clone(), dot(&g64[k]), dot(&g32[k])));
        let gnorm = g64[k].iter().map(|x| x * x).sum::<f64>().sqrt();
        for (d, an64, an32) in probes {
            let plus: Vec<f64> = base.iter().zip(&d).map(|(b, d)| b + eps * d).collect();
            let minus: Vec<f64> = base.iter().zip(&d).map(|(b, d)| b - eps * d).collect();
            let fd =
                (eval(k, with_flat(input, plus)) - eval(k, with_flat(input, minus))) / (2.0 * eps);
            let dnorm = d.iter().map(|x| x * x).sum::<f64>().sqrt();
            // Errors are measured against the size of the whole gradient along this probe.
            let scale = fd.abs().max(gnorm * dnorm * 1e-3).max(1e-8);
            let e64 = (an64 - fd).abs() / scale;
            let e32 = (an32 - fd).abs() / scale;
            assert!(
                e64 < 1e-4,
                "{name}: input {k}: f64 backprop {an64} vs finite difference {fd} (rel {e64})"
            );
            assert!(
                e32 < 2e-3,
                "{name}: input {k}: f32 fused backprop {an32} vs finite difference {fd} (rel {e32})"
            );
        }
        assert!(
            gnorm > 0.0,
            "{name}: input {k} gets no gradient at all (a stopped gradient?)"
        );
    }
}

/// Σ out ∘ R for a fixed random R: every output element matters, each differently.
fn weighted_sum(out: &Tensor, seed: u64) -> Tensor {
    let mut rng = Rng::new(seed);
    let r = random(out.dims(), &mut rng, 1.0)
        .to_dtype(out.dtype())
        .unwrap();
    (out * r).unwrap().sum_all().unwrap()
}

fn linear(w: &Tensor, b: &Tensor) -> Linear {
    Linear::dense(w.clone(), b.clone())
}

#[test]
fn layer_norm_gradients() {
    let mut r = Rng::new(1);
    let inputs = [
        random(&[2, 3, 24], &mut r, 1.5),
        (random(&[24], &mut r, 0.3) + 1.0).unwrap(),
        random(&[24], &mut r, 0.3),
    ];
    check("layer norm", &inputs, |t| {
        let ln = LayerNorm {
            weight: t[1].clone(),
            bias: t[2].clone(),
            eps: 1e-5,
        };
        weighted_sum(&ln.forward(&t[0]).unwrap(), 10)
    });
}

#[test]
fn linear_gradients_with_and_without_activation() {
    let mut r = Rng::new(2);
    let inputs = [
        random(&[2, 5, 12], &mut r, 1.0),
        random(&[12, 20], &mut r, 0.3),
        random(&[20], &mut r, 0.3),
    ];
    check("linear", &inputs, |t| {
        weighted_sum(&linear(&t[1], &t[2]).forward(&t[0]).unwrap(), 11)
    });
    for act in [Activation::Gelu, Activation::QuickGelu] {
        check(&format!("linear + {act:?}"), &inputs, |t| {
            weighted_sum(&linear(&t[1], &t[2]).forward_after(&t[0], act).unwrap(), 12)
        });
    }
}

#[test]
fn attention_gradients_causal_and_not() {
    let mut r = Rng::new(3);
    let w = 16;
    let inputs = [
        random(&[2, 6, w], &mut r, 1.0),
        random(&[w, 3 * w], &mut r, 0.4),
        random(&[3 * w], &mut r, 0.2),
        random(&[w, w], &mut r, 0.3),
        random(&[w], &mut r, 0.2),
    ];
    for causal in [false, true] {
        check(&format!("attention causal={causal}"), &inputs, |t| {
            let a = Attention {
                qkv: linear(&t[1], &t[2]),
                out: linear(&t[3], &t[4]),
                heads: 4,
                products: DenseProducts::F32,
            };
            weighted_sum(&a.forward(&t[0], causal).unwrap(), 13)
        });
    }
}

#[test]
fn residual_block_gradients() {
    let mut r = Rng::new(4);
    let (w, m) = (8, 32);
    let inputs = [
        random(&[2, 5, w], &mut r, 1.0),
        (random(&[w], &mut r, 0.2) + 1.0).unwrap(),
        random(&[w], &mut r, 0.2),
        random(&[w, 3 * w], &mut r, 0.5),
        random(&[3 * w], &mut r, 0.2),
        random(&[w, w], &mut r, 0.4),
        random(&[w], &mut r, 0.2),
        (random(&[w], &mut r, 0.2) + 1.0).unwrap(),
        random(&[w], &mut r, 0.2),
        random(&[w, m], &mut r, 0.4),
        random(&[m], &mut r, 0.2),
        random(&[m, w], &mut r, 0.3),
        random(&[w], &mut r, 0.2),
    ];
    for act in [Activation::Gelu, Activation::QuickGelu] {
        check(&format!("residual block {act:?}"), &inputs, |t| {
            let b = ResidualBlock {
                ln_1: LayerNorm {
                    weight: t[1].clone(),
                    bias: t[2].clone(),
                    eps: 1e-5,
                },
                attn: Attention {
                    qkv: linear(&t[3], &t[4]),
                    out: linear(&t[5], &t[6]),
                    heads: 2,
                    products: DenseProducts::F32,
                },
                ln_2: LayerNorm {
                    weight: t[7].clone(),
                    bias: t[8].clone(),
                    eps: 1e-5,
                },
                fc1: linear(&t[9], &t[10]),
                fc2: linear(&t[11], &t[12]),
                activation: act,
            };
            weighted_sum(&b.forward(&t[0], true).unwrap(), 14)
        });
    }
}

pub(crate) fn tiny_config(quick_gelu: bool) -> ClipConfig {
    let v = serde_json::json!({
        "embed_dim": 8,
        "quick_gelu": quick_gelu,
        "vision_cfg": {"image_size": 8, "patch_size": 4, "width": 16, "layers": 2, "head_width": 8},
        "text_cfg": {"context_length": 6, "vocab_size": 20, "width": 12, "heads": 2, "layers": 2}
    });
    ClipConfig::from_open_clip_value(&v, "tiny").unwrap()
}

/// Token rows ending (argmax pooling) at different positions.
pub(crate) fn tiny_ids() -> Vec<Vec<u32>> {
    vec![
        vec![17, 3, 5, 19, 0, 0],
        vec![17, 19, 0, 0, 0, 0],
        vec![17, 8, 8, 2, 19, 0],
    ]
}

/// The model with its parameters replaced by `params` (in [`named_params`] order).
fn with_params(base: &Clip, params: &[Tensor]) -> Clip {
    let mut clip = base.clone();
    let mut it = params.iter();
    for_each_param_mut(&mut clip, &mut |_, t| {
        *t = it.next().unwrap().clone();
        Ok(())
    })
    .unwrap();
    clip
}

fn check_tower_and_model(quick_gelu: bool) {
    let cfg = tiny_config(quick_gelu);
    let base = init_open_clip(&cfg, 9, &Device::Cpu, DType::F64).unwrap();
    // open_clip's init leaves tiny gradients for some parameters (zero biases, unit gains);
    // perturb every parameter so that each one matters.
    let mut r = Rng::new(5);
    let params: Vec<Tensor> = named_params(&base)
        .into_iter()
        .map(|(_, t)| {
            let noise = random(t.dims(), &mut r, 0.1);
            (t + noise).unwrap()
        })
        .collect();
    let pixels = random(&[3, 3, 8, 8], &mut r, 1.0);
    let ids = tiny_ids();
    let names: Vec<String> = named_params(&base)
        .into_iter()
        .map(|(i, _)| i.name)
        .collect();
    let vision: Vec<usize> = (0..names.len())
        .filter(|&i| names[i].starts_with("vision."))
        .collect();
    let text: Vec<usize> = (0..names.len())
        .filter(|&i| names[i].starts_with("text."))
        .collect();

    // Each tower alone.
    let pick = |idx: &[usize]| idx.iter().map(|&i| params[i].clone()).collect::<Vec<_>>();
    // The model with the parameters at `idx` replaced by `t`, all in `t`'s dtype.
    let clip_with = |idx: &[usize], t: &[Tensor]| {
        let mut all = params.clone();
        for (&i, x) in idx.iter().zip(t) {
            all[i] = x.clone();
        }
        let all: Vec<Tensor> = all
            .iter()
            .map(|p| p.to_dtype(t[0].dtype()).unwrap())
            .collect();
        with_params(&base, &all)
    };
    let vparams = pick(&vision);
    check(
        &format!("vision tower quick_gelu={quick_gelu}"),
        &vparams,
        |t| {
            let px = pixels.to_dtype(t[0].dtype()).unwrap();
            weighted_sum(&clip_with(&vision, t).vision.forward(&px).unwrap(), 21)
        },
    );
    let tparams = pick(&text);
    check(
        &format!("text tower quick_gelu={quick_gelu}"),
        &tparams,
        |t| weighted_sum(&clip_with(&text, t).text.forward(&ids).unwrap(), 22),
    );

    // The whole model under a contrastive-style loss of normalised embeddings and the scale.
    check(
        &format!("whole CLIP quick_gelu={quick_gelu}"),
        &params,
        |t| {
            let clip = with_params(&base, t);
            let px = pixels.to_dtype(t[0].dtype()).unwrap();
            let img =
                crate::model::vision::l2_normalize(&clip.vision.forward(&px).unwrap()).unwrap();
            let txt =
                crate::model::vision::l2_normalize(&clip.text.forward(&ids).unwrap()).unwrap();
            let logits = img
                .matmul(&txt.t().unwrap())
                .unwrap()
                .broadcast_mul(&clip.logit_scale.exp().unwrap())
                .unwrap();
            // log-sum-exp of each row minus the diagonal: CLIP's image→text cross-entropy.
            let lse = logits
                .exp()
                .unwrap()
                .sum_keepdim(1)
                .unwrap()
                .log()
                .unwrap()
                .sum_all()
                .unwrap();
            let diag = (logits * Tensor::eye(3, t[0].dtype(), &Device::Cpu).unwrap())
                .unwrap()
                .sum_all()
                .unwrap();
            (lse - diag).unwrap()
        },
    );
}

#[test]
fn towers_and_whole_clip_gradients_gelu() {
    check_tower_and_model(false);
}

#[test]
fn towers_and_whole_clip_gradients_quick_gelu() {
    check_tower_and_model(true);
}

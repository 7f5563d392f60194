//! Random initialisation for training from scratch, as open_clip initialises its `CLIP`.
//!
//! * Image tower: class and position embeddings and the projection are `N(0, width^-½)`; the
//!   patch convolution, the MLPs and the attention output keep PyTorch's default init
//!   (`U(±1/√fan_in)` for weights, and for the MLP biases); the fused q/k/v weight is Xavier
//!   uniform (`U(±√(6/(width + 3·width)))`), attention biases 0. (open_clip defines no init of
//!   its own for the vision transformer.)
//! * Text tower: token embedding `N(0, 0.02)`, position embedding `N(0, 0.01)`; in every block
//!   q/k/v `N(0, width^-½)`, attention output and MLP output `N(0, width^-½·(2·layers)^-½)`,
//!   MLP input `N(0, (2·width)^-½)`, attention biases 0, MLP biases PyTorch's default; the
//!   projection `N(0, width^-½)`.
//! * LayerNorm gains 1, biases 0; `logit_scale = ln(1/0.07)`.
//!
//! The values come from [`Rng`](super::rng::Rng) seeded by the caller, so a seed gives the same
//! model on every machine. The tensors are built under open_clip's checkpoint names and go
//! through the ordinary loader, so an initialised model is assembled exactly as a loaded one.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};

use crate::model::{Clip, ClipConfig, Weights};

use super::rng::Rng;
use super::TrainError;

struct Init<'a> {
    rng: &'a mut Rng,
    out: HashMap<String, Tensor>,
}

impl Init<'_> {
    fn put(&mut self, name: String, shape: &[usize], mut f: impl FnMut(&mut Rng) -> f64) {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| f(self.rng) as f32).collect();
        // Shapes come from a validated config; from_vec cannot fail on a matching length.
        let t = Tensor::from_vec(v, shape, &Device::Cpu).expect("shape matches data");
        self.out.insert(name, t);
    }
    fn normal(&mut self, name: String, shape: &[usize], std: f64) {
        self.put(name, shape, |r| r.normal() * std);
    }
    fn uniform(&mut self, name: String, shape: &[usize], bound: f64) {
        self.put(name, shape, |r| r.uniform_range(-bound, bound));
    }
    fn constant(&mut self, name: String, shape: &[usize], value: f64) {
        self.put(name, shape, |_| value);
    }
    fn layer_norm(&mut self, prefix: &str, width: usize) {
        self.constant(format!("{prefix}.weight"), &[width], 1.0);
        self.constant(format!("{prefix}.bias"), &[width], 0.0);
    }
}

/// A model of architecture `config` with open_clip's random initialisation, from `seed`.
pub fn init_open_clip(
    config: &ClipConfig,
    seed: u64,
    device: &Device,
    dtype: DType,
) -> Result<Clip, TrainError> {
    let mut rng = Rng::derive(seed, &[0x1417]);
    let mut i = Init {
        rng: &mut rng,
        out: HashMap::new(),
    };
    let v = &config.vision;
    let (w, p, e) = (v.width, v.patch_size, config.embed_dim);
    let scale = (w as f64).powf(-0.5);
    i.uniform(
        "visual.conv1.weight".into(),
        &[w, 3, p, p],
        1.0 / ((3 * p * p) as f64).sqrt(),
    );
    i.normal("visual.class_embedding".into(), &[w], scale);
    i.normal(
        "visual.positional_embedding".into(),
        &[v.tokens(), w],
        scale,
    );
    i.layer_norm("visual.ln_pre", w);
    for l in 0..v.layers {
        let b = format!("visual.transformer.resblocks.{l}");
        i.layer_norm(&format!("{b}.ln_1"), w);
        i.uniform(
            format!("{b}.attn.in_proj_weight"),
            &[3 * w, w],
            (6.0 / (4 * w) as f64).sqrt(),
        );
        i.constant(format!("{b}.attn.in_proj_bias"), &[3 * w], 0.0);
        i.uniform(
            format!("{b}.attn.out_proj.weight"),
            &[w, w],
            1.0 / (w as f64).sqrt(),
        );
        i.constant(format!("{b}.attn.out_proj.bias"), &[w], 0.0);
        i.layer_norm(&format!("{b}.ln_2"), w);
        let m = v.mlp_dim;
        i.uniform(
            format!("{b}.mlp.c_fc.weight"),
            &[m, w],
            1.0 / (w as f64).sqrt(),
        );
        i.uniform(format!("{b}.mlp.c_fc.bias"), &[m], 1.0 / (w as f64).sqrt());
        i.uniform(
            format!("{b}.mlp.c_proj.weight"),
            &[w, m],
            1.0 / (m as f64).sqrt(),
        );
        i.uniform(
            format!("{b}.mlp.c_proj.bias"),
            &[w],
            1.0 / (m as f64).sqrt(),
        );
    }
    i.layer_norm("visual.ln_post", w);
    i.normal("visual.proj".into(), &[w, e], scale);

    let t = &config.text;
    let (w, m) = (t.width, t.mlp_dim);
    let attn_std = (w as f64).powf(-0.5);
    let proj_std = attn_std * ((2 * t.layers) as f64).powf(-0.5);
    let fc_std = ((2 * w) as f64).powf(-0.5);
    i.normal("token_embedding.weight".into(), &[t.vocab_size, w], 0.02);
    i.normal("positional_embedding".into(), &[t.context_length, w], 0.01);
    for l in 0..t.layers {
        let b = format!("transformer.resblocks.{l}");
        i.layer_norm(&format!("{b}.ln_1"), w);
        i.normal(format!("{b}.attn.in_proj_weight"), &[3 * w, w], attn_std);
        i.constant(format!("{b}.attn.in_proj_bias"), &[3 * w], 0.0);
        i.normal(format!("{b}.attn.out_proj.weight"), &[w, w], proj_std);
        i.constant(format!("{b}.attn.out_proj.bias"), &[w], 0.0);
        i.layer_norm(&format!("{b}.ln_2"), w);
        i.normal(format!("{b}.mlp.c_fc.weight"), &[m, w], fc_std);
        i.uniform(format!("{b}.mlp.c_fc.bias"), &[m], 1.0 / (w as f64).sqrt());
        i.normal(format!("{b}.mlp.c_proj.weight"), &[w, m], proj_std);
        i.uniform(
            format!("{b}.mlp.c_proj.bias"),
            &[w],
            1.0 / (m as f64).sqrt(),
        );
    }
    i.layer_norm("ln_final", w);
    i.normal("text_projection".into(), &[w, e], attn_std);
    let logit_scale = Tensor::new((1.0f32 / 0.07).ln(), &Device::Cpu)?;
    let mut tensors = i.out;
    tensors.insert("logit_scale".into(), logit_scale);

    let weights = Weights::from_tensors(tensors, device, dtype)?;
    let (clip, unused) = Clip::load(config, &weights)?;
    debug_assert!(unused.is_empty(), "init made unused tensors: {unused:?}");
    Ok(clip)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::params::{named_params, ParamKind};

    fn tiny() -> ClipConfig {
        let v = serde_json::json!({
            "embed_dim": 16,
            "vision_cfg": {"image_size": 16, "patch_size": 8, "width": 32, "layers": 2, "head_width": 16},
            "text_cfg": {"context_length": 8, "vocab_size": 50, "width": 32, "heads": 2, "layers": 3}
        });
        ClipConfig::from_open_clip_value(&v, "tiny").unwrap()
    }

    fn std_of(t: &Tensor) -> (f64, f64) {
        let v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
        let n = v.len() as f64;
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
        let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
        (mean, var.sqrt())
    }

    #[test]
    fn follows_open_clip_scheme_and_is_seeded() {
        let cfg = tiny();
        let a = init_open_clip(&cfg, 5, &Device::Cpu, DType::F32).unwrap();
        let b = init_open_clip(&cfg, 5, &Device::Cpu, DType::F32).unwrap();
        let c = init_open_clip(&cfg, 6, &Device::Cpu, DType::F32).unwrap();
        let pa = named_params(&a);
        let pb = named_params(&b);
        let pc = named_params(&c);
        let mut differs = false;
        for (((ia, ta), (_, tb)), (_, tc)) in pa.iter().zip(&pb).zip(&pc) {
            let (va, vb, vc): (Vec<f32>, Vec<f32>, Vec<f32>) = (
                ta.flatten_all().unwrap().to_vec1().unwrap(),
                tb.flatten_all().unwrap().to_vec1().unwrap(),
                tc.flatten_all().unwrap().to_vec1().unwrap(),
            );
            assert_eq!(va, vb, "{} differs for the same seed", ia.name);
            differs |= va != vc;
        }
        assert!(differs, "another seed gives the same model");

        let get = |name: &str| {
            pa.iter()
                .find(|(i, _)| i.name == name)
                .map(|(i, t)| i.to_canonical(t).unwrap())
                .unwrap()
        };
        // Text: token N(0.02), position N(0.01), q/k/v N(width^-½), out N(width^-½ (2L)^-½).
        let checks = [
            ("text.token_embedding", 0.02),
            ("text.position_embedding", 0.01),
            ("text.layers.0.attn.qkv.weight", 32f64.powf(-0.5)),
            (
                "text.layers.1.attn.out.weight",
                32f64.powf(-0.5) / 6f64.sqrt(),
            ),
            ("text.layers.2.mlp.fc1.weight", 64f64.powf(-0.5)),
            ("text.projection", 32f64.powf(-0.5)),
            ("vision.position_embedding", 32f64.powf(-0.5)),
            // Xavier uniform: bound √(6/(4w)), std = bound/√3.
            (
                "vision.layers.0.attn.qkv.weight",
                (6.0f64 / 128.0).sqrt() / 3f64.sqrt(),
            ),
            // PyTorch default: U(±1/√fan_in), std = 1/√(3 fan_in).
            (
                "vision.layers.1.mlp.fc2.weight",
                1.0 / (3.0f64 * 128.0).sqrt(),
            ),
            ("vision.patch_embed.weight", 1.0 / (3.0f64 * 192.0).sqrt()),
        ];
        for (name, want) in checks {
            let (mean, std) = std_of(&get(name));
            assert!(mean.abs() < 0.2 * want, "{name}: mean {mean}");
            assert!(
                (std / want - 1.0).abs() < 0.15,
                "{name}: std {std}, open_clip's scheme gives {want}"
            );
        }
        for (info, t) in &pa {
            let v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
            match info.kind {
                ParamKind::Gain => assert!(v.iter().all(|&x| x == 1.0), "{}", info.name),
                ParamKind::Bias if info.name.contains("attn") || info.name.contains("ln") => {
                    assert!(v.iter().all(|&x| x == 0.0), "{}", info.name)
                }
                ParamKind::LogitScale => assert!((v[0] - (1.0f32 / 0.07).ln()).abs() < 1e-6),
                _ => {}
            }
        }
    }
}

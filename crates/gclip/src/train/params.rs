//! The parameters of a [`Clip`] model by name, and the training view of them: trainable
//! parameters become candle [`Var`]s placed into the model's own structs, so the module code
//! that serves inference computes the gradients too.
//!
//! Names are gclip's canonical tensor names, the ones the loader asks checkpoints for
//! (`vision.layers.3.attn.qkv.weight`, `text.projection`, `logit_scale`, …), with the shape a
//! checkpoint holds (`[out, in]` for linear weights, `[width, 3, p, p]` for the patch
//! embedding). Inside the model some are kept in another layout (linear weights transposed to
//! `[in, out]`, the patch embedding flattened to a matrix); [`ParamInfo`] says which and
//! converts both ways.

use candle_core::{Tensor, Var};

use crate::model::layers::{LayerNorm, Linear, ResidualBlock};
use crate::model::Clip;

use super::TrainError;

/// Which part of the model a parameter belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tower {
    Vision,
    Text,
    /// `logit_scale`.
    Shared,
}

/// What a parameter is, for weight decay and freezing rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamKind {
    /// A matrix of a linear layer inside a residual block.
    Weight,
    /// A bias vector.
    Bias,
    /// A LayerNorm gain.
    Gain,
    /// The patch convolution.
    PatchEmbedding,
    ClassEmbedding,
    PositionEmbedding,
    TokenEmbedding,
    /// The projection of a tower into the shared space.
    Projection,
    /// The learnt log temperature.
    LogitScale,
}

/// How the model stores a parameter relative to its canonical (checkpoint) shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoredLayout {
    /// As in checkpoints.
    AsIs,
    /// A linear weight held `[in, out]`; canonical `[out, in]`.
    Transposed,
    /// The patch convolution held `[width, 3·p·p]`; canonical `[width, 3, p, p]`.
    PatchMatrix { patch: usize },
}

/// Name and role of one parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamInfo {
    /// Canonical gclip name.
    pub name: String,
    pub tower: Tower,
    pub kind: ParamKind,
    pub layout: StoredLayout,
    /// The residual block index, for parameters inside the transformer stack.
    pub layer: Option<usize>,
}

impl ParamInfo {
    /// Whether AdamW's weight decay applies, as open_clip's training script decides it
    /// (`open_clip_train/main.py`: no decay for tensors of fewer than two dimensions and for
    /// names with `ln`, `bn`, `bias` or `logit_scale`): gains, biases, `logit_scale` and the
    /// class embedding are excluded; matrices, the patch convolution, the projections, the
    /// token embedding and both (2-D) position embeddings are decayed. (The models'
    /// `no_weight_decay()` lists that exclude position embeddings are only read by timm's
    /// optimisers, not by open_clip's default AdamW; `tests/train_reference.rs` checks these
    /// groups against the script's rule.)
    pub fn decays(&self) -> bool {
        !matches!(
            self.kind,
            ParamKind::Bias | ParamKind::Gain | ParamKind::ClassEmbedding | ParamKind::LogitScale
        )
    }

    /// The stored tensor in its canonical (checkpoint) shape.
    pub fn to_canonical(&self, stored: &Tensor) -> candle_core::Result<Tensor> {
        match self.layout {
            StoredLayout::AsIs => Ok(stored.clone()),
            StoredLayout::Transposed => stored.t()?.contiguous(),
            StoredLayout::PatchMatrix { patch } => {
                let (width, _) = stored.dims2()?;
                stored.reshape((width, 3, patch, patch))
            }
        }
    }

    /// A canonical tensor in the layout the model stores.
    pub fn from_canonical(&self, canonical: &Tensor) -> candle_core::Result<Tensor> {
        match self.layout {
            StoredLayout::AsIs => Ok(canonical.clone()),
            StoredLayout::Transposed => canonical.t()?.contiguous(),
            StoredLayout::PatchMatrix { .. } => {
                let width = canonical.dim(0)?;
                canonical.reshape((width, ()))
            }
        }
    }
}

type Visit<'f> = dyn FnMut(&ParamInfo, &mut Tensor) -> candle_core::Result<()> + 'f;

struct Visitor<'a, 'f> {
    f: &'a mut Visit<'f>,
}

impl Visitor<'_, '_> {
    fn one(
        &mut self,
        name: String,
        tower: Tower,
        kind: ParamKind,
        layout: StoredLayout,
        layer: Option<usize>,
        t: &mut Tensor,
    ) -> candle_core::Result<()> {
        let info = ParamInfo {
            name,
            tower,
            kind,
            layout,
            layer,
        };
        (self.f)(&info, t)
    }

    fn layer_norm(
        &mut self,
        prefix: &str,
        tower: Tower,
        layer: Option<usize>,
        ln: &mut LayerNorm,
    ) -> candle_core::Result<()> {
        let s = StoredLayout::AsIs;
        self.one(
            format!("{prefix}.weight"),
            tower,
            ParamKind::Gain,
            s,
            layer,
            &mut ln.weight,
        )?;
        self.one(
            format!("{prefix}.bias"),
            tower,
            ParamKind::Bias,
            s,
            layer,
            &mut ln.bias,
        )
    }

    fn linear(
        &mut self,
        prefix: &str,
        tower: Tower,
        layer: Option<usize>,
        l: &mut Linear,
    ) -> candle_core::Result<()> {
        let Some(weight) = l.dense_weight_mut()? else {
            candle_core::bail!(
                "{prefix}: packed (bf16/int8) weights cannot be trained; load the model in fp32"
            );
        };
        self.one(
            format!("{prefix}.weight"),
            tower,
            ParamKind::Weight,
            StoredLayout::Transposed,
            layer,
            weight,
        )?;
        self.one(
            format!("{prefix}.bias"),
            tower,
            ParamKind::Bias,
            StoredLayout::AsIs,
            layer,
            &mut l.bias,
        )
    }

    fn block(
        &mut self,
        tower_name: &str,
        tower: Tower,
        i: usize,
        b: &mut ResidualBlock,
    ) -> candle_core::Result<()> {
        let p = format!("{tower_name}.layers.{i}");
        self.layer_norm(&format!("{p}.ln_1"), tower, Some(i), &mut b.ln_1)?;
        self.linear(&format!("{p}.attn.qkv"), tower, Some(i), &mut b.attn.qkv)?;
        self.linear(&format!("{p}.attn.out"), tower, Some(i), &mut b.attn.out)?;
        self.layer_norm(&format!("{p}.ln_2"), tower, Some(i), &mut b.ln_2)?;
        self.linear(&format!("{p}.mlp.fc1"), tower, Some(i), &mut b.fc1)?;
        self.linear(&format!("{p}.mlp.fc2"), tower, Some(i), &mut b.fc2)
    }
}

/// Calls `f` on every parameter tensor of the model, in a fixed order (vision tower, text
/// tower, logit scale; inside a tower in forward order), with its canonical name and role.
/// `f` may replace the tensor (with one of the same stored shape).
pub fn for_each_param_mut(
    clip: &mut Clip,
    f: &mut dyn FnMut(&ParamInfo, &mut Tensor) -> candle_core::Result<()>,
) -> candle_core::Result<()> {
    let mut v = Visitor { f };
    let vt = Tower::Vision;
    let vis = &mut clip.vision;
    let patch = vis.config.patch_size;
    v.one(
        "vision.patch_embed.weight".into(),
        vt,
        ParamKind::PatchEmbedding,
        StoredLayout::PatchMatrix { patch },
        None,
        &mut vis.patch_embed,
    )?;
    v.one(
        "vision.class_embedding".into(),
        vt,
        ParamKind::ClassEmbedding,
        StoredLayout::AsIs,
        None,
        &mut vis.class_embedding,
    )?;
    v.one(
        "vision.position_embedding".into(),
        vt,
        ParamKind::PositionEmbedding,
        StoredLayout::AsIs,
        None,
        &mut vis.position_embedding,
    )?;
    v.layer_norm("vision.ln_pre", vt, None, &mut vis.ln_pre)?;
    for (i, b) in vis.transformer.blocks.iter_mut().enumerate() {
        v.block("vision", vt, i, b)?;
    }
    v.layer_norm("vision.ln_post", vt, None, &mut vis.ln_post)?;
    v.one(
        "vision.projection".into(),
        vt,
        ParamKind::Projection,
        StoredLayout::AsIs,
        None,
        &mut vis.projection,
    )?;

    let tt = Tower::Text;
    let text = &mut clip.text;
    v.one(
        "text.token_embedding".into(),
        tt,
        ParamKind::TokenEmbedding,
        StoredLayout::AsIs,
        None,
        text.token_embedding.tensor_mut()?,
    )?;
    v.one(
        "text.position_embedding".into(),
        tt,
        ParamKind::PositionEmbedding,
        StoredLayout::AsIs,
        None,
        &mut text.position_embedding,
    )?;
    for (i, b) in text.transformer.blocks.iter_mut().enumerate() {
        v.block("text", tt, i, b)?;
    }
    v.layer_norm("text.ln_final", tt, None, &mut text.ln_final)?;
    v.one(
        "text.projection".into(),
        tt,
        ParamKind::Projection,
        StoredLayout::AsIs,
        None,
        &mut text.projection,
    )?;
    v.one(
        "logit_scale".into(),
        Tower::Shared,
        ParamKind::LogitScale,
        StoredLayout::AsIs,
        None,
        &mut clip.logit_scale,
    )
}

/// Every parameter with its name and role, as the model stores it (tensors share storage
/// with the model).
pub fn named_params(clip: &Clip) -> Vec<(ParamInfo, Tensor)> {
    let mut copy = clip.clone();
    let mut out = Vec::new();
    // The visitor cannot fail here: it only clones.
    let _ = for_each_param_mut(&mut copy, &mut |info, t| {
        out.push((info.clone(), t.clone()));
        Ok(())
    });
    out
}

/// Every parameter in canonical (checkpoint) shape, by canonical name.
pub fn canonical_tensors(clip: &Clip) -> candle_core::Result<Vec<(String, Tensor)>> {
    named_params(clip)
        .into_iter()
        .map(|(info, t)| Ok((info.name.clone(), info.to_canonical(&t)?)))
        .collect()
}

/// Converts every parameter of the model to `dtype` (e.g. f64 for gradient checks).
pub fn convert_dtype(clip: &mut Clip, dtype: candle_core::DType) -> candle_core::Result<()> {
    for_each_param_mut(clip, &mut |_, t| {
        *t = t.to_dtype(dtype)?;
        Ok(())
    })
}

/// Which parameters training updates. open_clip's `--lock-image`, `--lock-text` (with their
/// unlocked-group counts) and a projection-only mode.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Freeze {
    /// Freeze the image tower (LiT: "locked image tuning").
    pub lock_image: bool,
    /// With `lock_image`: leave this many top groups of the image tower trainable. Groups, from
    /// the top: the projection; the last block with `ln_post`; each earlier block; the
    /// embeddings (patch, class, positions) with `ln_pre`.
    pub lock_image_unlocked_groups: usize,
    /// Freeze the text tower.
    pub lock_text: bool,
    /// With `lock_text`: top groups of the text tower left trainable (the projection; the last
    /// block with `ln_final`; each earlier block; the token and position embeddings).
    pub lock_text_unlocked_groups: usize,
    /// Train only the two projections and the logit scale.
    pub projections_only: bool,
    /// Keep the logit scale fixed.
    pub lock_logit_scale: bool,
}

impl Freeze {
    /// The group of a parameter counted from the top of its tower (0 = the projection).
    fn group_from_top(info: &ParamInfo, layers: usize) -> usize {
        match (info.kind, info.layer) {
            (ParamKind::Projection, _) => 0,
            (_, Some(i)) => layers - i,
            // ln_post / ln_final belong to the last block's group.
            (ParamKind::Gain | ParamKind::Bias, None)
                if info.name.contains("ln_post") || info.name.contains("ln_final") =>
            {
                1
            }
            _ => layers + 1,
        }
    }

    /// Whether the parameter is trained. `vision_layers` and `text_layers` are the depths of
    /// the two stacks.
    pub fn is_trainable(&self, info: &ParamInfo, vision_layers: usize, text_layers: usize) -> bool {
        if info.kind == ParamKind::LogitScale {
            return !self.lock_logit_scale;
        }
        if self.projections_only && info.kind != ParamKind::Projection {
            return false;
        }
        match info.tower {
            Tower::Vision if self.lock_image => {
                Self::group_from_top(info, vision_layers) < self.lock_image_unlocked_groups
            }
            Tower::Text if self.lock_text => {
                Self::group_from_top(info, text_layers) < self.lock_text_unlocked_groups
            }
            _ => true,
        }
    }
}

/// One trainable parameter.
#[derive(Debug, Clone)]
pub struct TrainParam {
    pub info: ParamInfo,
    pub var: Var,
}

/// The trainable parameters of a model, as `Var`s that the model's structs hold.
#[derive(Debug, Clone)]
pub struct ParamSet {
    pub params: Vec<TrainParam>,
    /// Names of the frozen parameters.
    pub frozen: Vec<String>,
}

impl ParamSet {
    /// Makes the parameters that `freeze` leaves trainable into `Var`s, in place in the model.
    /// Frozen parameters stay plain tensors: no gradient is computed for them, and a fully
    /// frozen tower builds no backward graph at all.
    pub fn attach(clip: &mut Clip, freeze: &Freeze) -> Result<Self, TrainError> {
        let (vl, tl) = (
            clip.vision.transformer.blocks.len(),
            clip.text.transformer.blocks.len(),
        );
        let mut params = Vec::new();
        let mut frozen = Vec::new();
        for_each_param_mut(clip, &mut |info, t| {
            if freeze.is_trainable(info, vl, tl) {
                let var = Var::from_tensor(&t.contiguous()?)?;
                *t = var.as_tensor().clone();
                params.push(TrainParam {
                    info: info.clone(),
                    var,
                });
            } else {
                *t = t.detach();
                frozen.push(info.name.clone());
            }
            Ok(())
        })?;
        if params.is_empty() {
            return Err(TrainError::Config(
                "every parameter is frozen: nothing to train".into(),
            ));
        }
        Ok(Self { params, frozen })
    }

    /// Number of trainable scalars.
    pub fn num_trainable(&self) -> usize {
        self.params.iter().map(|p| p.var.elem_count()).sum()
    }

    /// The trainable parameter called `name`.
    pub fn get(&self, name: &str) -> Option<&TrainParam> {
        self.params.iter().find(|p| p.info.name == name)
    }

    /// The gradient of each parameter (zeros where the loss does not depend on it).
    pub fn grads(
        &self,
        store: &candle_core::backprop::GradStore,
    ) -> candle_core::Result<Vec<Tensor>> {
        self.params
            .iter()
            .map(|p| match store.get(p.var.as_tensor()) {
                Some(g) => Ok(g.clone()),
                None => p.var.as_tensor().zeros_like(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::gradcheck::{tiny_config, tiny_ids};
    use crate::train::init::init_open_clip;
    use candle_core::{DType, Device};

    fn names(set: &ParamSet) -> Vec<String> {
        set.params.iter().map(|p| p.info.name.clone()).collect()
    }

    #[test]
    fn canonical_round_trip_and_names_match_the_loader() {
        let clip = init_open_clip(&tiny_config(false), 1, &Device::Cpu, DType::F32).unwrap();
        let params = named_params(&clip);
        // 2 vision blocks, 2 text blocks: 12 tensors each; 8 outside the vision stack (patch,
        // class, positions, ln_pre, ln_post, projection), 5 outside the text stack (tokens,
        // positions, ln_final, projection), and the scale.
        assert_eq!(params.len(), 2 * 12 + 8 + 2 * 12 + 5 + 1);
        for (info, t) in &params {
            let c = info.to_canonical(t).unwrap();
            let back = info.from_canonical(&c).unwrap();
            assert_eq!(back.dims(), t.dims(), "{}", info.name);
            let d = (back - t).unwrap().abs().unwrap().sum_all().unwrap();
            assert_eq!(d.to_scalar::<f32>().unwrap(), 0.0);
        }
        let qkv = params
            .iter()
            .find(|(i, _)| i.name == "vision.layers.1.attn.qkv.weight")
            .unwrap();
        assert_eq!(qkv.1.dims(), &[16, 48]);
        assert_eq!(qkv.0.to_canonical(&qkv.1).unwrap().dims(), &[48, 16]);
        let patch = params
            .iter()
            .find(|(i, _)| i.name == "vision.patch_embed.weight")
            .unwrap();
        assert_eq!(
            patch.0.to_canonical(&patch.1).unwrap().dims(),
            &[16, 3, 4, 4]
        );
    }

    #[test]
    fn freezing_selects_parameters_and_gradients_follow() {
        let cfg = tiny_config(false);
        let pixels = Tensor::ones((3, 3, 8, 8), DType::F32, &Device::Cpu).unwrap();
        let ids = tiny_ids();
        let before = init_open_clip(&cfg, 1, &Device::Cpu, DType::F32).unwrap();
        let out_before = before.vision.forward(&pixels).unwrap();

        let mut clip = before.clone();
        let lit = Freeze {
            lock_image: true,
            ..Default::default()
        };
        let set = ParamSet::attach(&mut clip, &lit).unwrap();
        assert!(names(&set).iter().all(|n| !n.starts_with("vision.")));
        assert!(set.frozen.iter().all(|n| n.starts_with("vision.")));
        assert_eq!(set.frozen.len(), 2 * 12 + 8);
        // Same outputs after attaching.
        let out_after = clip.vision.forward(&pixels).unwrap();
        let d = (&out_after - &out_before)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap();
        assert_eq!(d.to_scalar::<f32>().unwrap(), 0.0);
        // Gradients reach the text tower and the scale, and nothing is built for images.
        let loss = (clip.text.forward(&ids).unwrap().sum_all().unwrap()
            + out_after.sum_all().unwrap()
            + clip.logit_scale.clone())
        .unwrap();
        let grads = loss.backward().unwrap();
        for p in &set.params {
            if p.info.name != "logit_scale" {
                assert!(grads.get(p.var.as_tensor()).is_some(), "{}", p.info.name);
            }
        }
        assert!(grads.get(&clip.vision.projection).is_none());

        let mut clip = before.clone();
        let proj = Freeze {
            projections_only: true,
            ..Default::default()
        };
        let set = ParamSet::attach(&mut clip, &proj).unwrap();
        assert_eq!(
            names(&set),
            vec!["vision.projection", "text.projection", "logit_scale"]
        );

        let mut clip = before.clone();
        let partial = Freeze {
            lock_image: true,
            lock_image_unlocked_groups: 2,
            lock_text: true,
            lock_logit_scale: true,
            ..Default::default()
        };
        let set = ParamSet::attach(&mut clip, &partial).unwrap();
        let mut got = names(&set);
        got.sort();
        let mut want: Vec<String> = [
            "ln_1.weight",
            "ln_1.bias",
            "attn.qkv.weight",
            "attn.qkv.bias",
            "attn.out.weight",
            "attn.out.bias",
            "ln_2.weight",
            "ln_2.bias",
            "mlp.fc1.weight",
            "mlp.fc1.bias",
            "mlp.fc2.weight",
            "mlp.fc2.bias",
        ]
        .iter()
        .map(|s| format!("vision.layers.1.{s}"))
        .chain(
            [
                "vision.ln_post.weight",
                "vision.ln_post.bias",
                "vision.projection",
            ]
            .map(String::from),
        )
        .collect();
        want.sort();
        assert_eq!(got, want);

        let mut clip = before.clone();
        let all = Freeze {
            lock_image: true,
            lock_text: true,
            lock_logit_scale: true,
            ..Default::default()
        };
        assert!(matches!(
            ParamSet::attach(&mut clip, &all),
            Err(TrainError::Config(_))
        ));
    }
}

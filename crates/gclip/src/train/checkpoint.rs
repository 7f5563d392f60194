//! Training checkpoints: the model, AdamW's state and where the run is, written so that a
//! crash or Ctrl-C never leaves a corrupt checkpoint.
//!
//! A checkpoint is a directory `step-00000100/` under the run's `checkpoints/`:
//!
//! * `config.json`: the architecture (transformers' format, which expresses every gclip model);
//! * `model.safetensors`: every parameter, trainable or frozen, under open_clip's names;
//! * `optimizer.safetensors`: AdamW's moments `m.NAME`, `v.NAME` of the trainable parameters;
//! * `state.json`: step, data position, seed and the trainer's own record ([`TrainState`]).
//!
//! It is written into a hidden temporary directory, every file `fsync`ed, and renamed into
//! place (then the parent directory is `fsync`ed): a directory named `step-*` is complete.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use super::export::{checkpoint_tensors, hf_config_json, read_safetensors, safetensors_bytes};
use super::optim::{AdamW, Moments};
use super::params::ParamSet;
use super::TrainError;
use crate::fsutil::sync_dir;
use crate::model::{Clip, ClipConfig, NamingScheme, Weights};

/// Version of the checkpoint layout.
pub const FORMAT: u32 = 1;

/// Where a run stands.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TrainState {
    pub format: u32,
    /// Optimiser steps done.
    pub step: u64,
    /// The epoch in progress and how many of its batches were consumed.
    pub epoch: u64,
    pub batch_in_epoch: u64,
    /// Training pairs consumed so far.
    pub samples_seen: u64,
    pub seed: u64,
    /// Names of the trainable parameters.
    pub trainable: Vec<String>,
    /// The trainer's own record (its configuration, for checking a resume).
    #[serde(default)]
    pub extra: serde_json::Value,
}

fn step_dir_name(step: u64) -> String {
    format!("step-{step:08}")
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), TrainError> {
    use std::io::Write;
    let mut f = std::fs::File::create(path).map_err(|e| TrainError::io(path, e))?;
    f.write_all(bytes).map_err(|e| TrainError::io(path, e))?;
    f.sync_all().map_err(|e| TrainError::io(path, e))
}

/// Writes a checkpoint of step `state.step` under `root` and returns its directory.
pub fn save_checkpoint(
    root: &Path,
    clip: &Clip,
    params: &ParamSet,
    opt: &AdamW,
    state: &TrainState,
) -> Result<PathBuf, TrainError> {
    std::fs::create_dir_all(root).map_err(|e| TrainError::io(root, e))?;
    let name = step_dir_name(state.step);
    let tmp = root.join(format!(".{name}.tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| TrainError::io(&tmp, e))?;
    let result = (|| -> Result<(), TrainError> {
        let model = checkpoint_tensors(clip, NamingScheme::OpenClip)?;
        write_file(&tmp.join("model.safetensors"), &safetensors_bytes(&model)?)?;
        let cfg = serde_json::to_vec_pretty(&hf_config_json(&clip.config)).unwrap_or_default();
        write_file(&tmp.join("config.json"), &cfg)?;
        let mut moments = Vec::new();
        for (p, st) in params.params.iter().zip(&opt.state) {
            let st = st.borrow();
            let shape = p.var.shape().clone();
            moments.push((
                format!("m.{}", p.info.name),
                Tensor::from_vec(st.m.clone(), shape.clone(), &Device::Cpu)?,
            ));
            moments.push((
                format!("v.{}", p.info.name),
                Tensor::from_vec(st.v.clone(), shape, &Device::Cpu)?,
            ));
        }
        write_file(
            &tmp.join("optimizer.safetensors"),
            &safetensors_bytes(&moments)?,
        )?;
        let mut st = state.clone();
        st.format = FORMAT;
        st.trainable = params.params.iter().map(|p| p.info.name.clone()).collect();
        let mut json = serde_json::to_value(&st).unwrap_or_default();
        json["adamw_step"] = opt.step.into();
        write_file(
            &tmp.join("state.json"),
            &serde_json::to_vec_pretty(&json).unwrap_or_default(),
        )?;
        sync_dir(&tmp).map_err(|e| TrainError::io(&tmp, e))?;
        Ok(())
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    let dest = root.join(&name);
    if dest.exists() {
        // Re-saving a step (after a resume): move the old one aside first.
        let old = root.join(format!(".{name}.old-{}", std::process::id()));
        std::fs::rename(&dest, &old).map_err(|e| TrainError::io(&dest, e))?;
        std::fs::rename(&tmp, &dest).map_err(|e| TrainError::io(&dest, e))?;
        let _ = std::fs::remove_dir_all(&old);
    } else {
        std::fs::rename(&tmp, &dest).map_err(|e| TrainError::io(&dest, e))?;
    }
    sync_dir(root).map_err(|e| TrainError::io(root, e))?;
    Ok(dest)
}

/// Complete checkpoints under `root`, oldest first.
pub fn list_checkpoints(root: &Path) -> Result<Vec<(u64, PathBuf)>, TrainError> {
    let Ok(entries) = std::fs::read_dir(root) else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(step) = name
            .strip_prefix("step-")
            .and_then(|s| s.parse::<u64>().ok())
        {
            if e.path().join("state.json").is_file() {
                out.push((step, e.path()));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The checkpoint `path` names: `path` itself when it is a checkpoint (it holds `state.json`),
/// otherwise the newest complete checkpoint of a run directory (`checkpoints/step-*`).
pub fn checkpoint_dir(path: &Path) -> Result<PathBuf, TrainError> {
    if path.join("state.json").is_file() {
        return Ok(path.to_path_buf());
    }
    match list_checkpoints(&path.join("checkpoints"))?.pop() {
        Some((_, p)) => Ok(p),
        None => Err(TrainError::io(
            path,
            "neither a checkpoint (state.json) nor a run directory with checkpoints/step-*",
        )),
    }
}

/// Deletes all but the newest `keep` checkpoints, and temporary directories left by crashes.
pub fn prune_checkpoints(root: &Path, keep: usize) -> Result<(), TrainError> {
    let list = list_checkpoints(root)?;
    for (_, p) in list.iter().take(list.len().saturating_sub(keep.max(1))) {
        std::fs::remove_dir_all(p).map_err(|e| TrainError::io(p, e))?;
    }
    if let Ok(entries) = std::fs::read_dir(root) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let ours = name.ends_with(&format!("-{}", std::process::id()));
            if name.starts_with(".step-") && !ours {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    Ok(())
}

/// A checkpoint read back.
pub struct LoadedCheckpoint {
    pub dir: PathBuf,
    pub clip: Clip,
    pub state: TrainState,
    pub adamw_step: u64,
    /// AdamW moments by parameter name.
    pub moments: HashMap<String, Moments>,
}

fn bad(dir: &Path, message: impl Into<String>) -> TrainError {
    TrainError::Checkpoint {
        path: dir.to_path_buf(),
        message: message.into(),
    }
}

/// Reads a checkpoint directory (as written by [`save_checkpoint`]).
pub fn load_checkpoint(dir: &Path, device: &Device) -> Result<LoadedCheckpoint, TrainError> {
    let state_path = dir.join("state.json");
    let text = std::fs::read_to_string(&state_path).map_err(|e| {
        bad(
            dir,
            format!("no readable state.json ({e}); is this a gclip training checkpoint?"),
        )
    })?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| bad(dir, format!("state.json: {e}")))?;
    let state: TrainState =
        serde_json::from_value(json.clone()).map_err(|e| bad(dir, format!("state.json: {e}")))?;
    if state.format != FORMAT {
        return Err(bad(
            dir,
            format!(
                "checkpoint format {} (this gclip reads {FORMAT})",
                state.format
            ),
        ));
    }
    let adamw_step = json
        .get("adamw_step")
        .and_then(|v| v.as_u64())
        .ok_or_else(|| bad(dir, "state.json has no adamw_step"))?;
    let weights = Weights::open(&[dir.join("model.safetensors")], device, DType::F32)?;
    let clip = model_of(dir, &weights)?;
    let opt = read_safetensors(&dir.join("optimizer.safetensors"))?;
    let mut moments = HashMap::new();
    for name in &state.trainable {
        let get = |k: &str| -> Result<Vec<f32>, TrainError> {
            let t = opt
                .get(&format!("{k}.{name}"))
                .ok_or_else(|| bad(dir, format!("optimizer state has no `{k}.{name}`")))?;
            Ok(t.flatten_all()?.to_vec1::<f32>()?)
        };
        moments.insert(
            name.clone(),
            Moments {
                m: get("m")?,
                v: get("v")?,
            },
        );
    }
    Ok(LoadedCheckpoint {
        dir: dir.to_path_buf(),
        clip,
        state,
        adamw_step,
        moments,
    })
}

/// The mean of the model weights of `count` checkpoints of one run: `dir`'s and the `count - 1`
/// kept before it. Averaging the second half of a run's checkpoints lands nearer the centre of
/// the region its last steps wander in, which held-out accuracy prefers (docs/TRAINING.md);
/// only the model is averaged (an average is exported, not resumed from).
///
/// Every checkpoint must have `dir`'s architecture (the same `config.json`) and tensors; the
/// averaged ones are returned with the model, oldest first. Fewer than `count` kept is an
/// error that says how many there are.
pub fn average_checkpoints(
    dir: &Path,
    count: usize,
    device: &Device,
) -> Result<(Clip, Vec<(u64, PathBuf)>), TrainError> {
    if count == 0 {
        return Err(TrainError::Config(
            "averaging needs at least one checkpoint".into(),
        ));
    }
    let root = dir.parent().unwrap_or(Path::new("."));
    let all = list_checkpoints(root)?;
    let Some(last) = all.iter().position(|(_, p)| p == dir) else {
        return Err(bad(
            dir,
            format!("not among the checkpoints of {}", root.display()),
        ));
    };
    if last + 1 < count {
        return Err(bad(
            dir,
            format!(
                "averaging {count} checkpoints needs {count} up to this one, and {} holds {} \
                 (train.keep_checkpoints sets how many a run keeps)",
                root.display(),
                last + 1
            ),
        ));
    }
    let chosen = all[last + 1 - count..=last].to_vec();
    let config_bytes = |d: &Path| {
        std::fs::read(d.join("config.json")).map_err(|e| TrainError::io(d.join("config.json"), e))
    };
    let config_of_last = config_bytes(dir)?;
    let first = &chosen[0].1;
    let mut sum: Option<HashMap<String, Tensor>> = None;
    for (_, d) in &chosen {
        if config_bytes(d)? != config_of_last {
            return Err(bad(
                d,
                format!("another architecture (config.json) than {}", dir.display()),
            ));
        }
        let tensors = read_safetensors(&d.join("model.safetensors"))?;
        sum = Some(match sum {
            None => tensors,
            Some(mut acc) => {
                if acc.len() != tensors.len() {
                    return Err(bad(
                        d,
                        format!(
                            "{} tensors, {} has {}",
                            tensors.len(),
                            first.display(),
                            acc.len()
                        ),
                    ));
                }
                for (name, t) in tensors {
                    let a = acc.get_mut(&name).ok_or_else(|| {
                        bad(d, format!("tensor `{name}` is not in {}", first.display()))
                    })?;
                    if a.dims() != t.dims() {
                        return Err(bad(
                            d,
                            format!(
                                "tensor `{name}` has shape {:?}, not {:?}",
                                t.dims(),
                                a.dims()
                            ),
                        ));
                    }
                    *a = a.add(&t.to_dtype(a.dtype())?)?;
                }
                acc
            }
        });
    }
    let scale = 1.0 / count as f64;
    let mean = sum
        .unwrap_or_default()
        .into_iter()
        .map(|(name, t)| Ok((name, t.affine(scale, 0.0)?)))
        .collect::<Result<HashMap<_, _>, TrainError>>()?;
    let weights = Weights::from_tensors(mean, device, DType::F32)?;
    Ok((model_of(dir, &weights)?, chosen))
}

/// The model of checkpoint `dir` (its `config.json`) made of `weights`, every tensor used.
fn model_of(dir: &Path, weights: &Weights) -> Result<Clip, TrainError> {
    let config = ClipConfig::from_hf_file(&dir.join("config.json"))?;
    let (clip, unused) = Clip::load(&config, weights)?;
    if !unused.is_empty() {
        return Err(bad(
            dir,
            format!("unexpected tensors: {}", unused.join(", ")),
        ));
    }
    Ok(clip)
}

impl LoadedCheckpoint {
    /// Puts the saved moments into a fresh optimiser for `params`, which must be the same
    /// trainable parameters the checkpoint was saved with.
    pub fn restore_optimizer(&self, opt: &mut AdamW, params: &ParamSet) -> Result<(), TrainError> {
        let names: Vec<&String> = params.params.iter().map(|p| &p.info.name).collect();
        if names.len() != self.state.trainable.len()
            || names
                .iter()
                .zip(&self.state.trainable)
                .any(|(a, b)| *a != b)
        {
            return Err(bad(
                &self.dir,
                "the checkpoint was saved with other trainable parameters (different freeze options?)",
            ));
        }
        for (p, st) in params.params.iter().zip(&opt.state) {
            let saved = &self.moments[&p.info.name];
            if saved.m.len() != p.var.elem_count() || saved.v.len() != p.var.elem_count() {
                return Err(bad(
                    &self.dir,
                    format!("optimizer state of `{}` has the wrong size", p.info.name),
                ));
            }
            *st.borrow_mut() = saved.clone();
        }
        opt.step = self.adamw_step;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::init::init_open_clip;

    fn tiny(width: usize) -> ClipConfig {
        let v = serde_json::json!({
            "embed_dim": 8,
            "vision_cfg": {"image_size": 16, "patch_size": 8, "width": width, "layers": 1, "head_width": 8},
            "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2, "layers": 1}
        });
        ClipConfig::from_open_clip_value(&v, "tiny").unwrap()
    }

    /// The files of a checkpoint that averaging reads (and the state.json that marks it
    /// complete), for a freshly initialised model.
    fn write_model(root: &Path, step: u64, config: &ClipConfig, seed: u64) -> (PathBuf, Clip) {
        let clip = init_open_clip(config, seed, &Device::Cpu, DType::F32).unwrap();
        let dir = root.join(step_dir_name(step));
        std::fs::create_dir_all(&dir).unwrap();
        let model = checkpoint_tensors(&clip, NamingScheme::OpenClip).unwrap();
        std::fs::write(
            dir.join("model.safetensors"),
            safetensors_bytes(&model).unwrap(),
        )
        .unwrap();
        let cfg = serde_json::to_vec_pretty(&hf_config_json(&clip.config)).unwrap();
        std::fs::write(dir.join("config.json"), cfg).unwrap();
        std::fs::write(dir.join("state.json"), "{}").unwrap();
        (dir, clip)
    }

    fn tensor(clip: &Clip, name: &str) -> Vec<f32> {
        let all = checkpoint_tensors(clip, NamingScheme::OpenClip).unwrap();
        let (_, t) = all.into_iter().find(|(n, _)| n == name).unwrap();
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    #[test]
    fn averaging_takes_the_mean_of_the_newest_checkpoints_up_to_the_one_named() {
        let root = std::env::temp_dir().join(format!("gclip-average-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let config = tiny(16);
        let (_, a) = write_model(&root, 100, &config, 1);
        let (b_dir, b) = write_model(&root, 200, &config, 2);
        let (c_dir, c) = write_model(&root, 300, &config, 3);

        let name = "visual.conv1.weight";
        let (mean, used) = average_checkpoints(&c_dir, 2, &Device::Cpu).unwrap();
        assert_eq!(used.iter().map(|(s, _)| *s).collect::<Vec<_>>(), [200, 300]);
        let (tb, tc, tm) = (tensor(&b, name), tensor(&c, name), tensor(&mean, name));
        assert!(tb != tc);
        for ((x, y), m) in tb.iter().zip(&tc).zip(&tm) {
            assert!((m - (x + y) / 2.0).abs() <= 1e-6, "{m} against {x} and {y}");
        }
        // Up to an older checkpoint: the ones before it, never the newer.
        let (mean, used) = average_checkpoints(&b_dir, 2, &Device::Cpu).unwrap();
        assert_eq!(used.iter().map(|(s, _)| *s).collect::<Vec<_>>(), [100, 200]);
        let (ta, tm) = (tensor(&a, name), tensor(&mean, name));
        assert!((tm[0] - (ta[0] + tb[0]) / 2.0).abs() <= 1e-6);
        // One: the checkpoint itself.
        let (one, _) = average_checkpoints(&c_dir, 1, &Device::Cpu).unwrap();
        assert_eq!(tensor(&one, name), tc);

        let e = average_checkpoints(&c_dir, 4, &Device::Cpu)
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("averaging 4 checkpoints") && e.contains("holds 3"),
            "{e}"
        );
        let e = average_checkpoints(&c_dir, 0, &Device::Cpu)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("at least one"), "{e}");

        // Another architecture among them: refused, naming it.
        let (d_dir, _) = write_model(&root, 400, &tiny(24), 4);
        let (e_dir, _) = write_model(&root, 500, &config, 5);
        let e = average_checkpoints(&e_dir, 3, &Device::Cpu)
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains(&d_dir.display().to_string()) && e.contains("another architecture"),
            "{e}"
        );
        let _ = std::fs::remove_dir_all(&root);
    }
}

//! The training entry point that the command line and the Python package share: a
//! configuration (a TOML file, or a table built otherwise) with overrides, read into a
//! [`TrainConfig`]; then the run of a prepared [`Session`] with its evaluation.

use std::path::{Path, PathBuf};

use super::config::{evaluate_model, EvalSet, Session, TrainConfig};
use super::trainer::{Control, Evaluator, Event, RunSummary};
use super::TrainError;
use crate::model::Clip;

fn config_error(message: String) -> TrainError {
    TrainError::Config(message)
}

/// Sets `a.b.c = value` in a table, creating tables on the way.
fn set_path(root: &mut toml::Table, key: &str, value: toml::Value) -> Result<(), TrainError> {
    let mut parts: Vec<&str> = key.split('.').collect();
    let last = parts
        .pop()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| config_error(format!("override {key:?}: empty key")))?;
    let mut t = root;
    for p in parts {
        let entry = t
            .entry(p.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        t = entry
            .as_table_mut()
            .ok_or_else(|| config_error(format!("override {key}: `{p}` is not a table")))?;
    }
    t.insert(last.to_string(), value);
    Ok(())
}

/// An override's value: TOML (`1e-4`, `"gcl"`, `[1, 2]`), or the text itself when it is not
/// valid TOML (`loss.kind=gcl`).
fn parse_value(text: &str) -> toml::Value {
    let doc = format!("v = {text}");
    match doc.parse::<toml::Table>() {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(text.into())),
        Err(_) => toml::Value::String(text.to_string()),
    }
}

/// A configuration from a table of sections (`[model]`, `[data]`, `[train]`, …), with
/// `overrides` (`section.key=value`) applied. Relative paths in it (data, eval, corpus, output,
/// an architecture JSON or model directory) are taken relative to `base`; `origin` names the
/// table in messages.
pub fn config_from_table(
    mut table: toml::Table,
    overrides: &[String],
    base: &Path,
    origin: &str,
) -> Result<TrainConfig, TrainError> {
    for s in overrides {
        let (k, v) = s
            .split_once('=')
            .ok_or_else(|| config_error(format!("override {s:?}: expected KEY=VALUE")))?;
        set_path(&mut table, k.trim(), parse_value(v.trim()))?;
    }
    let mut cfg: TrainConfig = toml::Value::Table(table)
        .try_into()
        .map_err(|e| config_error(format!("{origin}: {e}")))?;
    let fix = |p: &mut PathBuf| {
        if p.is_relative() && !p.as_os_str().is_empty() {
            *p = base.join(&*p);
        }
    };
    fix(&mut cfg.train.output);
    for m in [&mut cfg.model.arch, &mut cfg.model.from]
        .into_iter()
        .flatten()
    {
        // Architecture names and hub ids stay as they are; relative paths that exist beside
        // the config are taken from there.
        let beside = base.join(&*m);
        if Path::new(m.as_str()).is_relative() && beside.exists() {
            *m = beside.display().to_string();
        }
    }
    if let Some(d) = cfg.data.as_mut() {
        fix(&mut d.path);
        if let Some(r) = d.image_root.as_mut() {
            fix(r);
        }
    }
    if let Some(e) = cfg.eval.as_mut() {
        fix(&mut e.data.path);
        if let Some(c) = e.corpus.as_mut() {
            fix(c);
        }
        if let Some(r) = e.data.image_root.as_mut() {
            fix(r);
        }
    }
    Ok(cfg)
}

/// Reads a TOML config file with `overrides` applied; relative paths in the file are relative
/// to the file's folder.
pub fn read_config(path: &Path, overrides: &[String]) -> Result<TrainConfig, TrainError> {
    let text = std::fs::read_to_string(path).map_err(|e| TrainError::io(path, e))?;
    let table: toml::Table = text
        .parse()
        .map_err(|e| config_error(format!("{}: not valid TOML: {e}", path.display())))?;
    let base = path.parent().unwrap_or(Path::new(""));
    config_from_table(table, overrides, base, &path.display().to_string())
}

impl Session {
    /// Trains to the configured number of steps, evaluating on the `[eval]` set on schedule;
    /// `observe` sees every step, evaluation and checkpoint, and may stop the run.
    pub fn run(
        &mut self,
        observe: &mut dyn FnMut(Event<'_>) -> Control,
    ) -> Result<RunSummary, TrainError> {
        let objective = self.trainer.options.objective.clone();
        let (eval, eval_data, eval_corpus, tokenizer, preprocess) = (
            &self.config.eval,
            &self.eval_data,
            &self.eval_corpus,
            &self.tokenizer,
            &self.preprocess,
        );
        let mut evaluator = |clip: &Clip| match (eval, eval_data) {
            (Some(e), Some(data)) => evaluate_model(
                clip,
                tokenizer,
                preprocess,
                &objective,
                EvalSet {
                    data,
                    corpus: eval_corpus.as_ref(),
                    kind: e.kind,
                    top_k: e.top_k,
                },
            ),
            _ => Ok(Vec::new()),
        };
        let evaluate: Option<&mut Evaluator> = if eval.is_some() {
            Some(&mut evaluator)
        } else {
            None
        };
        self.trainer.run(&mut self.loader, evaluate, observe)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_and_relative_paths() {
        let table: toml::Table = "[data]\npath = \"train.jsonl\"\n[train]\noutput = \"runs/a\"\n"
            .parse()
            .unwrap();
        let cfg = config_from_table(
            table,
            &[
                "train.steps=7".into(),
                "loss.kind=gcl".into(),
                "train.lr = 1e-4".into(),
            ],
            Path::new("/cfg"),
            "test",
        )
        .unwrap();
        assert_eq!(cfg.train.steps, 7);
        assert_eq!(cfg.train.lr, 1e-4);
        assert_eq!(cfg.train.output, Path::new("/cfg/runs/a"));
        assert_eq!(cfg.data.unwrap().path, Path::new("/cfg/train.jsonl"));
        for bad in ["nokey", "=1", "train.steps.x=1"] {
            let err = config_from_table(toml::Table::new(), &[bad.into()], Path::new(""), "t");
            assert!(matches!(err, Err(TrainError::Config(_))), "{bad}");
        }
        let err = config_from_table(
            "[train]\nstepz = 1\n".parse().unwrap(),
            &[],
            Path::new(""),
            "x.toml",
        );
        assert!(matches!(err, Err(TrainError::Config(m)) if m.starts_with("x.toml: ")));
    }
}

//! `gclip train` and `gclip export`

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use gclip::input::image::PreprocessConfig;
use gclip::train::checkpoint::{average_checkpoints, checkpoint_dir, load_checkpoint};
use gclip::train::config::prepare;
use gclip::train::export::{export_hf, export_open_clip, TokenizerSource};
use gclip::train::run::read_config;
use gclip::train::trainer::{Control, Event};

#[derive(Args)]
#[command(after_help = "Examples:
  gclip train --config train.toml
  gclip train --config train.toml --steps 200 --set train.lr=1e-4 --set loss.kind=\"gcl\"
  gclip train --config train.toml --resume            # continue from the newest checkpoint

Ctrl-C (or SIGTERM) stops after the current step, writes a checkpoint and exits with status 130
(143 for SIGTERM); run the same command with --resume to continue. A second Ctrl-C stops at
once, keeping the checkpoints already written.

The config file (TOML) has sections [model], [data], [eval], [loss], [train], [freeze];
docs/TRAINING.md describes every option. --set KEY=VALUE overrides any of them (VALUE is read
as TOML, or as a string when it is not valid TOML).")]
pub struct TrainArgs {
    /// The run's configuration (TOML).
    #[arg(long)]
    config: PathBuf,
    /// Override a config value: `section.key=value` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Optimiser steps (train.steps).
    #[arg(long)]
    steps: Option<u64>,
    /// Learning rate (train.lr).
    #[arg(long)]
    lr: Option<f64>,
    /// Pairs per batch (train.batch_size).
    #[arg(long)]
    batch_size: Option<usize>,
    /// Run directory for the log and checkpoints (train.output).
    #[arg(long)]
    output: Option<PathBuf>,
    /// Seed of initialisation, data order and augmentation (train.seed).
    #[arg(long)]
    seed: Option<u64>,
    /// Continue from the newest checkpoint of the run's output directory.
    #[arg(long)]
    resume: bool,
    /// Continue from this checkpoint directory or run directory.
    #[arg(long, conflicts_with = "resume")]
    resume_from: Option<PathBuf>,
    /// Precision of the matrix products: fp32, or bf16 (mixed precision: bf16 products, f32
    /// weights, optimizer state and loss). Overrides `train.precision`; int8 is for inference
    /// only.
    #[arg(long)]
    precision: Option<gclip::train::precision::TrainPrecision>,
}

/// The command line that continues an interrupted run: this one, with `--resume` in place of
/// any `--resume`/`--resume-from`.
pub fn resume_command(argv: &[String]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut it = argv.iter();
    if let Some(first) = it.next() {
        out.push(first.clone());
    }
    while let Some(a) = it.next() {
        if a == "--resume-from" {
            it.next();
        } else if a != "--resume" && !a.starts_with("--resume-from=") {
            out.push(a.clone());
        }
    }
    out.push("--resume".into());
    out.iter()
        .map(|a| shell_quote(a))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `a` as a POSIX shell word.
fn shell_quote(a: &str) -> String {
    let plain = !a.is_empty()
        && a.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@%+".contains(c));
    if plain {
        a.to_string()
    } else {
        format!("'{}'", a.replace('\'', "'\\''"))
    }
}

pub fn run(args: TrainArgs) -> Result<ExitCode> {
    let mut sets = args.set.clone();
    if let Some(p) = args.precision {
        sets.push(format!("train.precision=\"{p}\""));
    }
    if let Some(v) = args.steps {
        sets.push(format!("train.steps={v}"));
    }
    if let Some(v) = args.lr {
        sets.push(format!("train.lr={v:e}"));
    }
    if let Some(v) = args.batch_size {
        sets.push(format!("train.batch_size={v}"));
    }
    if let Some(v) = args.seed {
        sets.push(format!("train.seed={v}"));
    }
    let mut cfg = read_config(&args.config, &sets)?;
    // --output is relative to the current directory, like every other command-line path.
    if let Some(o) = args.output {
        cfg.train.output = o;
    }
    let resume = match (args.resume, args.resume_from) {
        (_, Some(p)) => Some(p),
        (true, None) => Some(cfg.train.output.clone()),
        (false, None) => None,
    };
    let mut session = prepare(cfg, resume.as_deref()).context("preparing the run")?;
    let ds = session.loader.dataset();
    eprintln!(
        "data: {} pairs from {} rows ({} skipped)",
        ds.pairs.len(),
        ds.rows_read,
        ds.skipped.total()
    );
    for (reason, n) in &ds.skipped.counts {
        eprintln!("  skipped {n} rows: {reason}");
    }
    for ex in ds.skipped.examples.iter().take(5) {
        eprintln!("    e.g. {ex}");
    }
    let t = &session.trainer;
    eprintln!(
        "model: {} trainable tensors ({} values), {} frozen; starting at step {} of {}",
        t.params.params.len(),
        t.params.num_trainable(),
        t.params.frozen.len(),
        t.state.step,
        t.options.total_steps
    );
    eprintln!("log:         {}", t.log_path().display());
    eprintln!("checkpoints: {}", t.checkpoint_root().display());

    let total = session.trainer.options.total_steps;
    let bar = if std::io::stderr().is_terminal() {
        let b = indicatif::ProgressBar::new(total);
        if let Ok(s) = indicatif::ProgressStyle::with_template(
            "{bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}",
        ) {
            b.set_style(s);
        }
        b.set_position(session.trainer.state.step);
        Some(b)
    } else {
        None
    };
    let print_every = (total / 20).max(1);
    let notice_bar = bar.clone();
    let interrupt = crate::interrupt::Interrupt::install(
        move |_| {
            let text = "interrupted: finishing the current step and writing a checkpoint \
                        (press Ctrl-C again to stop at once)";
            match &notice_bar {
                Some(b) => b.println(text),
                None => eprintln!("{text}"),
            }
        },
        "interrupted again: stopping at once; the checkpoints already written are complete",
    )?;
    let mut observe = |e: Event| -> Control {
        match e {
            Event::Step(s) => {
                let msg = format!(
                    "loss {:.4} lr {:.2e} scale {:.1} {:.1} samples/s",
                    s.loss, s.lr, s.logit_scale, s.samples_per_s
                );
                match &bar {
                    Some(b) => {
                        b.set_position(s.step);
                        b.set_message(msg);
                    }
                    None if s.step.is_multiple_of(print_every) || s.step == 1 => {
                        eprintln!("step {}/{total} {msg}", s.step)
                    }
                    None => {}
                }
            }
            Event::Eval { step, metrics } => {
                let line: Vec<String> = metrics
                    .iter()
                    .filter(|(k, _)| {
                        k.contains("R@1")
                            || k.contains("R@10")
                            || k == "ndcg@10"
                            || k == "mrr@10"
                            || k == "err"
                    })
                    .map(|(k, v)| format!("{k} {v:.4}"))
                    .collect();
                let text = format!("eval at step {step}: {}", line.join(", "));
                match &bar {
                    Some(b) => b.println(text),
                    None => eprintln!("{text}"),
                }
            }
            Event::Checkpoint { step, path } => {
                let text = format!("checkpoint at step {step}: {}", path.display());
                match &bar {
                    Some(b) => b.println(text),
                    None => eprintln!("{text}"),
                }
            }
        }
        if interrupt.received().is_some() {
            Control::Stop
        } else {
            Control::Continue
        }
    };
    let summary = session.run(&mut observe)?;
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    if let (Some(sig), true) = (interrupt.received(), summary.stopped_early) {
        eprintln!("interrupted at step {} of {total}", summary.steps_done);
        eprintln!("log:         {}", summary.log_path.display());
        if let Some(c) = &summary.last_checkpoint {
            eprintln!("checkpoint:  {}", c.display());
        }
        let argv: Vec<String> = std::env::args().collect();
        eprintln!("resume:      {}", resume_command(&argv));
        return Ok(ExitCode::from(crate::interrupt::exit_status(sig)));
    }
    eprintln!("done: {} steps", summary.steps_done);
    eprintln!("log:         {}", summary.log_path.display());
    if let Some(c) = &summary.last_checkpoint {
        eprintln!("checkpoint:  {}", c.display());
        eprintln!(
            "export:      gclip export --checkpoint {} --format hf --output EXPORT_DIR",
            c.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Format {
    /// transformers' layout: config.json, model.safetensors, tokenizer and preprocessor files.
    Hf,
    /// open_clip's hub layout: open_clip_config.json, open_clip_model.safetensors.
    OpenClip,
}

#[derive(Args)]
#[command(after_help = "Examples:
  gclip export --checkpoint runs/first --format hf --output exported/first-hf
  gclip export --checkpoint runs/first/checkpoints/step-00001000 --format open-clip --output exported/oc")]
pub struct ExportArgs {
    /// A checkpoint directory (step-N) or a run directory (its newest checkpoint).
    #[arg(long)]
    checkpoint: PathBuf,
    #[arg(long, value_enum)]
    format: Format,
    /// Output directory (created).
    #[arg(long)]
    output: PathBuf,
    /// Copy tokenizer files from this transformers model directory instead of generating
    /// open_clip's (hf format).
    #[arg(long)]
    tokenizer_from: Option<PathBuf>,
    /// Export the mean of the model weights of N checkpoints: the named one and the N - 1
    /// kept before it (the emoji recipe averages its last 12, docs/TRAINING.md).
    #[arg(long, value_name = "N")]
    average: Option<usize>,
}

pub fn export(args: ExportArgs) -> Result<()> {
    let dir = checkpoint_dir(&args.checkpoint)?;
    let (clip, what) = match args.average {
        None | Some(1) => {
            let ck = load_checkpoint(&dir, &candle_core::Device::Cpu)?;
            (
                ck.clip,
                format!("step {} of {}", ck.state.step, dir.display()),
            )
        }
        Some(n) => {
            let (mean, used) = average_checkpoints(&dir, n, &candle_core::Device::Cpu)?;
            let steps: Vec<String> = used.iter().map(|(s, _)| s.to_string()).collect();
            (
                mean,
                format!(
                    "the mean of {n} checkpoints (steps {}) in {}",
                    steps.join(", "),
                    dir.parent().unwrap_or(&dir).display()
                ),
            )
        }
    };
    let pp = PreprocessConfig::open_clip(clip.config.vision.image_size);
    let files = match args.format {
        Format::Hf => {
            let tok = match args.tokenizer_from {
                Some(d) => TokenizerSource::HfDir(d),
                None => TokenizerSource::OpenClip,
            };
            export_hf(&clip, &args.output, &pp, &tok)?
        }
        Format::OpenClip => export_open_clip(&clip, &args.output, &pp)?,
    };
    eprintln!("exported {what}");
    for f in files {
        println!("{}", f.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(s: &[&str]) -> Vec<String> {
        s.iter().map(|a| a.to_string()).collect()
    }

    #[test]
    fn resume_command_replaces_any_resume_option() {
        assert_eq!(
            resume_command(&argv(&["gclip", "train", "--config", "a.toml"])),
            "gclip train --config a.toml --resume"
        );
        assert_eq!(
            resume_command(&argv(&[
                "gclip",
                "train",
                "--resume-from",
                "runs/x/checkpoints/step-00000010",
                "--config",
                "a.toml",
                "--resume-from=other",
                "--resume",
            ])),
            "gclip train --config a.toml --resume"
        );
    }

    #[test]
    fn resume_command_quotes_words_the_shell_would_split() {
        assert_eq!(
            resume_command(&argv(&[
                "gclip",
                "train",
                "--config",
                "my runs/a.toml",
                "--set",
                "loss.kind=\"gcl\"",
                "--set",
                "x=it's",
            ])),
            "gclip train --config 'my runs/a.toml' --set 'loss.kind=\"gcl\"' --set 'x=it'\\''s' --resume"
        );
    }
}

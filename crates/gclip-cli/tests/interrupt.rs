//! Ctrl-C during `gclip train`: the first SIGINT finishes the step, writes a checkpoint and
//! exits with 130; `--resume` continues from that checkpoint. A second SIGINT stops at once.
#![cfg(unix)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/emoji-mini")
}

/// A run directory with a tiny CLIP's config: `steps` steps of `batch` pairs of the emoji
/// fixture, a model `width` wide.
fn tiny_run(name: &str, steps: u64, batch: usize, width: usize) -> (PathBuf, PathBuf) {
    let dir = std::env::temp_dir().join(format!("gclip-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("arch.json"),
        format!(
            r#"{{"embed_dim": 32,
                "vision_cfg": {{"image_size": 24, "patch_size": 6, "width": {width}, "layers": 2, "head_width": 32}},
                "text_cfg": {{"context_length": 16, "vocab_size": 49408, "width": {width}, "heads": 2, "layers": 2}}}}"#
        ),
    )
    .unwrap();
    let config = dir.join("train.toml");
    std::fs::write(
        &config,
        format!(
            "[model]\narch = \"arch.json\"\n\n[data]\npath = {:?}\n\n[train]\nsteps = {steps}\n\
             batch_size = {batch}\nlr = 1e-3\nwarmup = 0\nseed = 0\noutput = \"run\"\n\
             checkpoint_every = 0\n",
            fixtures()
                .join("clip-train-google.jsonl")
                .display()
                .to_string()
        ),
    )
    .unwrap();
    (dir, config)
}

fn spawn_train(config: &Path, extra: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_gclip"))
        .args(["--threads", "2", "train", "--config"])
        .arg(config)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Sends a signal with the shell's built-in `kill` (minimal systems may lack /bin/kill).
fn signal(child: &Child, name: &str) {
    let st = Command::new("sh")
        .args(["-c", &format!("kill -{name} {}", child.id())])
        .status()
        .unwrap();
    assert!(st.success());
}

/// Reads the child's stderr line by line, sending signals when lines matching the triggers
/// appear (in order); returns the whole of stderr and the exit status.
fn run_with_signals(
    mut child: Child,
    triggers: &[(&str, &str)],
) -> (String, std::process::ExitStatus) {
    let err = child.stderr.take().unwrap();
    let mut text = String::new();
    let mut next = 0;
    for line in BufReader::new(err).lines() {
        let line = line.unwrap();
        text.push_str(&line);
        text.push('\n');
        if let Some((pattern, sig)) = triggers.get(next) {
            if line.contains(pattern) {
                signal(&child, sig);
                next += 1;
            }
        }
    }
    let status = child.wait().unwrap();
    assert_eq!(
        next,
        triggers.len(),
        "not every trigger line appeared:\n{text}"
    );
    (text, status)
}

fn checkpoints(run: &Path) -> Vec<(u64, PathBuf)> {
    let mut v: Vec<(u64, PathBuf)> = std::fs::read_dir(run.join("checkpoints"))
        .map(|rd| {
            rd.filter_map(|e| {
                let p = e.ok()?.path();
                let n = p
                    .file_name()?
                    .to_str()?
                    .strip_prefix("step-")?
                    .parse()
                    .ok()?;
                Some((n, p))
            })
            .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn output(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn sigint_writes_a_checkpoint_exits_130_and_resume_continues() {
    let total = 100_000;
    let (dir, config) = tiny_run("sigint", total, 16, 32);
    let child = spawn_train(&config, &[]);
    let (err, status) = run_with_signals(child, &[(&format!("step 1/{total} "), "INT")]);
    assert_eq!(status.code(), Some(130), "{err}");
    assert!(
        err.contains("interrupted: finishing the current step"),
        "{err}"
    );
    let run = dir.join("run");
    let cks = checkpoints(&run);
    assert_eq!(
        cks.len(),
        1,
        "one checkpoint, written on the signal: {cks:?}\n{err}"
    );
    let (step, ck) = &cks[0];
    assert!(*step >= 1 && *step < total, "{step}");
    assert!(ck.join("state.json").is_file());
    assert!(
        err.contains(&format!("interrupted at step {step} of {total}")),
        "{err}"
    );
    assert!(
        err.contains(&format!("checkpoint:  {}", ck.display())),
        "{err}"
    );
    let resume_line = err
        .lines()
        .find_map(|l| l.strip_prefix("resume:"))
        .unwrap_or_else(|| panic!("no resume line:\n{err}"));
    assert!(
        resume_line.trim_end().ends_with(" --resume"),
        "{resume_line}"
    );
    assert!(resume_line.contains("--config"), "{resume_line}");

    // The run's log ends with the interruption.
    let log = std::fs::read_to_string(run.join("log.jsonl")).unwrap();
    let last: serde_json::Value = serde_json::from_str(log.lines().last().unwrap()).unwrap();
    assert_eq!(last["event"], "end");
    assert_eq!(last["stopped_early"], true);
    assert_eq!(last["step"], *step);

    // --resume picks the checkpoint up and runs the remaining steps (two, with --steps).
    let until = step + 2;
    let o = spawn_train(&config, &["--resume", "--steps", &until.to_string()])
        .wait_with_output()
        .unwrap();
    let err2 = output(&o);
    assert!(o.status.success(), "{err2}");
    assert!(
        err2.contains(&format!("starting at step {step} of {until}")),
        "{err2}"
    );
    assert!(err2.contains(&format!("done: {until} steps")), "{err2}");
    let steps: Vec<u64> = std::fs::read_to_string(run.join("log.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["event"] == "step")
        .filter_map(|v| v["step"].as_u64())
        .collect();
    // Every step once: the interrupted run's 1..=step, then the resumed run's two.
    assert_eq!(steps, (1..=until).collect::<Vec<_>>());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_second_sigint_stops_at_once() {
    // Steps long enough (a wider model, larger batches) that the second signal arrives while
    // the step the first one lets finish is still running.
    let total = 100_000;
    let (dir, config) = tiny_run("sigint-twice", total, 200, 256);
    let child = spawn_train(&config, &[]);
    let (err, status) = run_with_signals(
        child,
        &[
            (&format!("step 1/{total} "), "INT"),
            ("interrupted: finishing the current step", "INT"),
        ],
    );
    assert_eq!(status.code(), Some(130), "{err}");
    assert!(err.contains("interrupted again: stopping at once"), "{err}");
    assert!(!err.contains("interrupted at step"), "{err}");
    // Whatever is in checkpoints/ is complete (a checkpoint is renamed into place whole).
    for (_, ck) in checkpoints(&dir.join("run")) {
        assert!(ck.join("state.json").is_file(), "{}", ck.display());
    }
    let _ = std::fs::remove_dir_all(&dir);
}

//! `gclip classify`, `gclip similarity` and `gclip eval zeroshot` end to end, against the
//! open_clip / numpy numbers in tests/fixtures/zeroshot, and the README's tutorial commands.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn fixtures() -> PathBuf {
    root().join("tests/fixtures")
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("gclip-tasks-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn gclip<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gclip"))
        .args(args)
        .output()
        .expect("gclip runs")
}

/// `--model … --arch …` of the full-vocabulary open_clip test model.
fn model_args() -> Vec<String> {
    let dir = fixtures().join("models/oc-fullvocab");
    vec![
        "--model".into(),
        dir.join("open_clip_model.safetensors")
            .display()
            .to_string(),
        "--arch".into(),
        dir.join("open_clip_config.json").display().to_string(),
    ]
}

/// A sub-command with the test model.
fn with_model(sub: &str) -> Vec<String> {
    let mut a = vec![sub.to_string()];
    a.extend(model_args());
    a
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn reference(name: &str) -> Value {
    let p = fixtures().join("zeroshot").join(name);
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

fn floats(v: &Value) -> Vec<f64> {
    match v {
        Value::Array(a) => a.iter().flat_map(floats).collect(),
        Value::Number(n) => vec![n.as_f64().unwrap()],
        other => panic!("not a number: {other}"),
    }
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn json_lines(o: &Output) -> Vec<Value> {
    stdout(o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn classify_images() -> Vec<String> {
    strings(&reference("classify_reference.json")["images"])
        .iter()
        .map(|n| fixtures().join("images").join(n).display().to_string())
        .collect()
}

/// Checks `--json` output against a case of classify_reference.json: one object per image, in
/// order, with every label, sorted by probability, each within 1e-4 of open_clip's, and the
/// cosine beside it (what `/api/classify` calls `cosine` too), in the same order.
fn check_against_reference(o: &Output, case: &Value, images: &[String]) {
    assert!(o.status.success(), "{}", stderr(o));
    let name = case["name"].as_str().unwrap();
    let labels = strings(&case["labels"]);
    let want = floats(&case["probabilities"]);
    let lines = json_lines(o);
    assert_eq!(lines.len(), images.len(), "{name}");
    for (i, (line, image)) in lines.iter().zip(images).enumerate() {
        assert_eq!(line["image"].as_str().unwrap(), image);
        let ranked = line["labels"].as_array().unwrap();
        assert_eq!(ranked.len(), labels.len(), "{name}: all labels");
        let probabilities: Vec<f64> = ranked
            .iter()
            .map(|l| l["probability"].as_f64().unwrap())
            .collect();
        assert!(
            probabilities.windows(2).all(|w| w[0] >= w[1]),
            "{name}: sorted"
        );
        // The softmax keeps the cosines' order; a cosine is within [-1, 1].
        let cosines: Vec<f64> = ranked
            .iter()
            .map(|l| l["cosine"].as_f64().unwrap())
            .collect();
        assert!(cosines.windows(2).all(|w| w[0] >= w[1] - 1e-6), "{name}");
        assert!(cosines.iter().all(|c| c.abs() <= 1.0 + 1e-5), "{name}");
        for l in ranked {
            let j = labels
                .iter()
                .position(|x| x == l["label"].as_str().unwrap())
                .unwrap();
            let (got, p) = (
                l["probability"].as_f64().unwrap(),
                want[i * labels.len() + j],
            );
            assert!(
                (got - p).abs() <= 1e-4,
                "{name}: image {i} {l}: open_clip {p}"
            );
        }
    }
}

#[test]
fn classify_json_matches_open_clip_for_captions_templates_and_logit_scale() {
    let r = reference("classify_reference.json");
    let cases = r["cases"].as_array().unwrap();
    let images = classify_images();

    // Captions, no templates, the checkpoint's logit scale.
    let mut a = with_model("classify");
    a.push("--json".into());
    a.push("--labels".into());
    a.extend(strings(&cases[0]["labels"]));
    a.extend(images.iter().cloned());
    check_against_reference(&gclip(&a), &cases[0], &images);

    // Labels through three --template and --logit-scale 10.
    let mut a = with_model("classify");
    a.extend(args(&["--json", "--logit-scale", "10"]));
    for t in strings(&cases[1]["templates"]) {
        a.push("--template".into());
        a.push(t);
    }
    a.push("--labels".into());
    a.extend(strings(&cases[1]["labels"]));
    a.push("--".into());
    a.extend(images.iter().cloned());
    check_against_reference(&gclip(&a), &cases[1], &images);

    // --templates simple, labels from a file, images before the options.
    let dir = scratch("labels-file");
    let file = dir.join("labels.txt");
    std::fs::write(&file, strings(&cases[2]["labels"]).join("\r\n") + "\n\n").unwrap();
    let mut a = with_model("classify");
    a.extend(images.iter().cloned());
    a.extend(args(&["--json", "--templates", "simple", "--labels-file"]));
    a.push(file.display().to_string());
    check_against_reference(&gclip(&a), &cases[2], &images);
}

#[test]
fn classify_table_shows_top_k_and_threads_do_not_change_results() {
    let images = classify_images();
    let labels = args(&["cat", "dog", "horse", "rocket"]);
    let run = |extra: &[&str], json: bool| {
        let mut a = args(extra);
        a.extend(with_model("classify"));
        if json {
            a.push("--json".into());
        }
        a.extend(args(&["--top-k", "2", "--labels"]));
        a.extend(labels.iter().cloned());
        a.extend(images.iter().cloned());
        let o = gclip(&a);
        assert!(o.status.success(), "{}", stderr(&o));
        o
    };
    let table = stdout(&run(&[], false));
    let blocks: Vec<&str> = table.split("\n\n").collect();
    assert_eq!(blocks.len(), 3, "{table}");
    let json = json_lines(&run(&[], true));
    for ((block, image), line) in blocks.iter().zip(&images).zip(&json) {
        let rows: Vec<&str> = block.trim_end().lines().collect();
        assert_eq!(rows[0], image);
        assert_eq!(rows.len(), 3, "top-2: {block}");
        // Each row: the percentage and the label, in the JSON's order.
        for (row, l) in rows[1..].iter().zip(line["labels"].as_array().unwrap()) {
            let (pct, label) = row.trim().split_once("%  ").unwrap();
            assert_eq!(label, l["label"].as_str().unwrap());
            let p: f64 = pct.trim().parse().unwrap();
            assert!((p - 100.0 * l["probability"].as_f64().unwrap()).abs() <= 0.005 + 1e-9);
        }
    }
    // One thread, on the CPU named explicitly: the same numbers.
    let one = stdout(&run(&["--threads", "1", "--device", "cpu"], true));
    assert_eq!(one, stdout(&run(&[], true)));
}

#[test]
fn classify_continues_past_bad_images_and_names_them() {
    let dir = scratch("bad-images");
    let broken = dir.join("broken.png");
    std::fs::write(&broken, b"\x89PNG\r\n\x1a\nnot really").unwrap();
    let good = classify_images();
    let list = dir.join("list.jsonl");
    std::fs::write(
        &list,
        format!(
            "{{\"image\": \"{}\"}}\n{{\"text\": \"no image field\"}}\nmissing.jpg\n",
            good[1]
        ),
    )
    .unwrap();
    let mut a = with_model("classify");
    a.extend(args(&["--json", "--labels", "cat", "dog", "--input"]));
    a.push(list.display().to_string());
    a.push(good[0].clone());
    a.push(broken.display().to_string());
    let o = gclip(&a);
    assert!(!o.status.success(), "bad inputs must give a non-zero exit");
    let err = stderr(&o);
    assert!(err.contains("classified 2 of 5 images"), "{err}");
    assert!(
        err.contains("broken.png") && err.contains("missing.jpg"),
        "{err}"
    );
    assert!(
        err.contains("line 2") && err.contains("no \"image\" field"),
        "{err}"
    );
    let lines = json_lines(&o);
    assert_eq!(lines.len(), 5);
    // List first, then the command line, each in order.
    assert_eq!(lines[0]["image"].as_str().unwrap(), good[1]);
    assert!(lines[0]["labels"].is_array());
    assert!(lines[1]["error"].is_string());
    assert!(lines[2]["error"].as_str().unwrap().contains("missing.jpg"));
    assert_eq!(lines[3]["image"].as_str().unwrap(), good[0]);
    assert_eq!(lines[3]["labels"].as_array().unwrap().len(), 2);
    assert!(lines[4]["error"].as_str().unwrap().contains("broken.png"));
}

#[test]
fn classify_argument_errors_are_clear() {
    let mut a = with_model("classify");
    a.push(classify_images()[0].clone());
    let o = gclip(&a);
    assert!(
        !o.status.success() && stderr(&o).contains("no labels"),
        "{}",
        stderr(&o)
    );

    let mut a = with_model("classify");
    a.extend(args(&["--labels", "cat", "dog"]));
    let o = gclip(&a);
    assert!(
        !o.status.success() && stderr(&o).contains("no images"),
        "{}",
        stderr(&o)
    );

    let mut a = with_model("classify");
    a.extend(args(&["--template", "a photo", "--labels", "cat", "x.jpg"]));
    let o = gclip(&a);
    assert!(stderr(&o).contains("has no `{}`"), "{}", stderr(&o));

    let o = gclip(&args(&[
        "--device", "cuda", "classify", "--labels", "a", "b.jpg",
    ]));
    assert!(
        !o.status.success() && stderr(&o).contains("--device cpu"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn similarity_matrix_matches_open_clip() {
    let r = &reference("classify_reference.json")["similarity"];
    let texts = strings(&r["texts"]);
    let images: Vec<String> = strings(&r["images"])
        .iter()
        .map(|n| fixtures().join("images").join(n).display().to_string())
        .collect();
    let want = floats(&r["cosine"]); // 4 × 4: texts then images
    let mut base = with_model("similarity");
    base.push("--json".into());
    for t in &texts {
        base.extend(["--text".to_string(), t.clone()]);
    }
    for i in &images {
        base.extend(["--image".to_string(), i.clone()]);
    }
    let check = |extra: &[&str], rows: &[usize], cols: &[usize]| {
        let mut a = base.clone();
        a.extend(args(extra));
        let o = gclip(&a);
        assert!(o.status.success(), "{}", stderr(&o));
        let v = &json_lines(&o)[0];
        let got = floats(&v["matrix"]);
        assert_eq!(got.len(), rows.len() * cols.len());
        for (k, &r) in rows.iter().enumerate() {
            for (l, &c) in cols.iter().enumerate() {
                let (g, w) = (got[k * cols.len() + l], want[r * 4 + c]);
                assert!((g - w).abs() <= 1e-4, "{extra:?} [{r},{c}]: {g} vs {w}");
            }
        }
        v.clone()
    };
    // Default: rows are images, columns texts.
    let v = check(&[], &[2, 3], &[0, 1]);
    assert_eq!(v["rows"][0]["image"].as_str().unwrap(), images[0]);
    assert_eq!(v["columns"][1]["text"].as_str().unwrap(), texts[1]);
    // Everything against everything.
    check(&["--full"], &[0, 1, 2, 3], &[0, 1, 2, 3]);

    // Images only: image ↔ image, and the table names its columns.
    let mut a = with_model("similarity");
    for i in &images {
        a.extend(["--image".to_string(), i.clone()]);
    }
    let o = gclip(&a);
    let table = stdout(&o);
    assert!(o.status.success() && table.contains("[2] image"), "{table}");
    let last: Vec<f64> = table
        .lines()
        .last()
        .unwrap()
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().unwrap())
        .collect();
    assert!((last[0] - want[3 * 4 + 2]).abs() <= 1e-4 && (last[1] - 1.0).abs() <= 1e-4);
}

/// `eval zeroshot` on the emoji image-folder dataset: the metrics numpy computes from open_clip's
/// logits, with the names of the JSON map and simple templates, and with folder names and the
/// default 80 templates.
#[test]
fn eval_zeroshot_on_emoji_matches_the_python_metrics() {
    let r = reference("eval_reference.json");
    let runs = r["runs"].as_array().unwrap();
    let dataset = fixtures().join("zeroshot/emoji");
    let dir = scratch("eval");
    let predictions = dir.join("pred.jsonl");
    let mut a = args(&["eval", "zeroshot"]);
    a.extend(model_args());
    a.extend(args(&["--json", "--templates", "simple", "--classnames"]));
    a.push(
        fixtures()
            .join("zeroshot/emoji_classnames.json")
            .display()
            .to_string(),
    );
    a.push("--dataset".into());
    a.push(dataset.display().to_string());
    a.push("--predictions".into());
    a.push(predictions.display().to_string());
    let mut runs_args = vec![a];
    let mut b = args(&["eval", "zeroshot"]);
    b.extend(model_args());
    b.extend(args(&["--json", "--dataset"]));
    b.push(dataset.display().to_string());
    runs_args.push(b);
    for (a, run) in runs_args.iter().zip(runs) {
        let o = gclip(a);
        assert!(o.status.success(), "{}", stderr(&o));
        let v = &json_lines(&o)[0];
        let name = run["name"].as_str().unwrap();
        assert_eq!(v["images"], 36);
        assert_eq!(v["classes"], 9);
        assert_eq!(
            v["templates"].as_u64().unwrap() as usize,
            run["templates"].as_array().unwrap().len()
        );
        let m = &v["metrics"];
        assert_eq!(m["acc1"].as_f64(), run["top1"].as_f64(), "{name}");
        assert_eq!(m["acc5"].as_f64(), run["top5"].as_f64(), "{name}");
        let want = run["mean_per_class_recall"].as_f64().unwrap();
        assert!((m["mean_per_class_recall"].as_f64().unwrap() - want).abs() < 1e-12);
        let names: Vec<String> = v["per_class"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(names, strings(&run["classnames"]), "{name}");
    }
    let lines: Vec<Value> = std::fs::read_to_string(&predictions)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 36);
    let correct = lines.iter().filter(|l| l["correct"] == true).count();
    assert_eq!(
        correct as f64 / 36.0,
        runs[0]["top1"].as_f64().unwrap(),
        "predictions agree with the metric"
    );
    assert_eq!(lines[0]["top5"].as_array().unwrap().len(), 5);
}

#[test]
fn eval_zeroshot_reports_bad_images_and_scores_the_rest() {
    let dir = scratch("eval-bad");
    for class in ["flags", "symbols"] {
        let from = fixtures().join("zeroshot/emoji").join(class);
        std::fs::create_dir_all(dir.join(class)).unwrap();
        for e in std::fs::read_dir(from).unwrap() {
            let p = e.unwrap().path();
            std::fs::copy(&p, dir.join(class).join(p.file_name().unwrap())).unwrap();
        }
    }
    std::fs::write(dir.join("symbols/truncated.png"), b"\x89PNG\r\n\x1a\n").unwrap();
    let mut a = args(&["eval", "zeroshot"]);
    a.extend(model_args());
    a.extend(args(&[
        "--json",
        "--template",
        "an emoji of {}.",
        "--dataset",
    ]));
    a.push(dir.display().to_string());
    let o = gclip(&a);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("1 of 9 images") && stderr(&o).contains("truncated.png"),
        "{}",
        stderr(&o)
    );
    let v = &json_lines(&o)[0];
    assert_eq!(v["images"], 8);
    assert_eq!(v["templates"], 1);
    assert!(v["metrics"]["acc5"].is_null(), "two classes: no top-5");
    assert_eq!(v["failures"].as_array().unwrap().len(), 1);

    let o = gclip(&[
        "eval",
        "zeroshot",
        "--dataset",
        dir.join("flags").to_str().unwrap(),
    ]);
    assert!(stderr(&o).contains("no class folders"), "{}", stderr(&o));
}

#[test]
fn help_shows_runnable_examples() {
    for sub in [
        vec!["classify", "--help"],
        vec!["similarity", "--help"],
        vec!["eval", "zeroshot", "--help"],
    ] {
        let o = gclip(&sub);
        let text = stdout(&o);
        assert!(
            o.status.success() && text.contains("Example") && text.contains("gclip "),
            "{sub:?}: {text}"
        );
    }
}

/// The shell blocks between `<!-- tutorial:start -->` and `<!-- tutorial:end -->`, one command
/// per entry (continuation lines joined, comments dropped).
fn readme_tutorial_commands(readme: &str) -> Vec<String> {
    let start = readme
        .find("<!-- tutorial:start -->")
        .expect("tutorial markers");
    let end = readme.find("<!-- tutorial:end -->").unwrap();
    let mut commands = Vec::new();
    let mut current = String::new();
    for line in readme[start..end].lines() {
        let line = line.trim();
        if line.starts_with("```") || line.starts_with('#') || line.starts_with("<!--") {
            continue;
        }
        if let Some(part) = line.strip_suffix('\\') {
            current.push_str(part);
            current.push(' ');
        } else if !line.is_empty() {
            current.push_str(line);
            commands.push(std::mem::take(&mut current));
        }
    }
    commands
}

/// The README's tutorial, run as written with the test model in place of
/// openai/clip-vit-base-patch32 and three fixture photos as cat1.jpg … cat3.jpg.
#[test]
fn readme_tutorial_runs() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let commands = readme_tutorial_commands(&readme);
    assert!(commands.len() >= 4, "{commands:?}");
    let dir = scratch("readme");
    for (i, n) in ["photo_chelsea.jpg", "jpeg_420_q85.jpg", "photo_rocket.jpg"]
        .iter()
        .enumerate()
    {
        std::fs::copy(
            fixtures().join("images").join(n),
            dir.join(format!("cat{}.jpg", i + 1)),
        )
        .unwrap();
    }
    let model = model_args().join(" ");
    for c in &commands {
        assert!(c.starts_with("gclip "), "{c}");
        let c = c
            .replacen("gclip ", &format!("{} ", env!("CARGO_BIN_EXE_gclip")), 1)
            .replace("--model openai/clip-vit-base-patch32", &model);
        let o = Command::new("sh")
            .arg("-c")
            .arg(&c)
            .current_dir(&dir)
            .output()
            .unwrap();
        assert!(o.status.success(), "{c}: {}", stderr(&o));
        assert!(stdout(&o).contains("cat1.jpg"), "{c}: {}", stdout(&o));
    }
    // The first is the tutorial: three images, six captions, the top 5 of each.
    let o = Command::new("sh")
        .arg("-c")
        .arg(
            commands[0]
                .replacen("gclip ", &format!("{} ", env!("CARGO_BIN_EXE_gclip")), 1)
                .replace("--model openai/clip-vit-base-patch32", &model),
        )
        .current_dir(&dir)
        .output()
        .unwrap();
    let out = stdout(&o);
    let blocks: Vec<&str> = out.split("\n\n").collect();
    assert_eq!(blocks.len(), 3);
    assert!(blocks.iter().all(|b| b.trim_end().lines().count() == 6));

    // The Rust example is the one the library's doctest compiles.
    let lib = std::fs::read_to_string(root().join("crates/gclip/src/zeroshot.rs")).unwrap();
    let block = readme
        .split("```rust\n")
        .find(|b| b.contains("classify_image_files"))
        .unwrap();
    let block = &block[..block.find("```").unwrap()];
    for line in block.lines().filter(|l| !l.trim().is_empty()) {
        assert!(
            lib.contains(&format!("//! {line}\n")),
            "README line not in the doctest: {line}"
        );
    }
}

/// The offline example's output shown in the README is what the command prints.
#[test]
fn readme_offline_output_is_real() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let at = readme.find("repository's test model").unwrap();
    let rest = &readme[at..];
    let cmd_block = rest.split("```sh\n").nth(1).unwrap();
    let cmd_block = &cmd_block[..cmd_block.find("```").unwrap()];
    let command = cmd_block.replace("\\\n", " ");
    let shown = rest.split("```text\n").nth(1).unwrap();
    let shown = &shown[..shown.find("```").unwrap()];
    let o = Command::new("sh")
        .arg("-c")
        .arg(command.replacen("gclip ", &format!("{} ", env!("CARGO_BIN_EXE_gclip")), 1))
        .current_dir(root())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let got = stdout(&o);
    let (g, s): (Vec<&str>, Vec<&str>) = (got.lines().collect(), shown.lines().collect());
    assert_eq!(g.len(), s.len(), "{got}");
    for (g, s) in g.iter().zip(&s) {
        match (g.split_once('%'), s.split_once('%')) {
            (Some((gp, gl)), Some((sp, sl))) => {
                assert_eq!(gl, sl);
                let d: f64 = gp.trim().parse::<f64>().unwrap() - sp.trim().parse::<f64>().unwrap();
                assert!(d.abs() <= 0.011, "{g} vs README {s}");
            }
            _ => assert_eq!(g, s),
        }
    }
}

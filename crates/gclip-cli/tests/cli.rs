//! The `gclip` binary end to end: real files in, `.npy` / `.jsonl` out.

use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::{Device, Tensor};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("gclip-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn gclip(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_gclip"))
        .args(args)
        // bf16/int8 conversions go to a scratch cache, not the user's.
        .env(
            "GCLIP_CONVERTED_CACHE",
            std::env::temp_dir().join(format!("gclip-cli-{}-converted", std::process::id())),
        )
        .output()
        .expect("gclip runs")
}

fn full_vocab_model() -> (String, String) {
    let dir = fixtures().join("models/oc-fullvocab");
    (
        dir.join("open_clip_model.safetensors")
            .display()
            .to_string(),
        dir.join("open_clip_config.json").display().to_string(),
    )
}

fn read_npy(path: &Path) -> (Vec<usize>, Vec<f32>) {
    let t = Tensor::read_npy(path).expect("valid npy");
    (
        t.dims().to_vec(),
        t.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
    )
}

/// Raw captions in, through gclip's open_clip tokenizer and the model, equal the embeddings
/// open_clip computed from the same captions.
#[test]
fn embed_text_from_jsonl_matches_open_clip() {
    let dir = scratch("text");
    let captions: Vec<String> = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("models/oc-fullvocab/captions.json")).unwrap(),
    )
    .unwrap();
    let jsonl: String = captions
        .iter()
        .map(|c| serde_json::json!({ "text": c }).to_string() + "\n")
        .collect();
    std::fs::write(dir.join("captions.jsonl"), jsonl).unwrap();
    let (model, arch) = full_vocab_model();
    let out = dir.join("out.npy");
    let o = gclip(&[
        "embed",
        "text",
        "--model",
        &model,
        "--arch",
        &arch,
        "--input",
        dir.join("captions.jsonl").to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (shape, got) = read_npy(&out);
    assert_eq!(shape, vec![captions.len(), 16]);
    let reference = candle_core::safetensors::load(
        fixtures().join("models/oc-fullvocab/reference.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let want = reference["text_embeds"]
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let d = got
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(d <= 1e-4, "embeddings differ by {d}");
}

#[test]
fn embed_images_reports_bad_files_and_keeps_the_good_rows_in_order() {
    let dir = scratch("images");
    let images = fixtures().join("images");
    let mut good: Vec<PathBuf> = std::fs::read_dir(&images)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "png"))
        .collect();
    good.sort();
    good.truncate(3);
    std::fs::write(dir.join("broken.png"), b"\x89PNG\r\n\x1a\nnot really").unwrap();
    let list = format!(
        "{}\n{}\n{{\"image\": \"{}\"}}\n{}\nmissing.jpg\n",
        good[0].display(),
        dir.join("broken.png").display(),
        good[1].display(),
        good[2].display()
    );
    std::fs::write(dir.join("list.txt"), list).unwrap();
    let (model, arch) = full_vocab_model();
    let npy = dir.join("out.npy");
    let o = gclip(&[
        "embed",
        "image",
        "--model",
        &model,
        "--arch",
        &arch,
        "--input",
        dir.join("list.txt").to_str().unwrap(),
        "--output",
        npy.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "bad inputs must give a non-zero exit");
    assert!(stderr.contains("embedded 3 of 5"), "{stderr}");
    assert!(
        stderr.contains("line 2") && stderr.contains("broken.png"),
        "{stderr}"
    );
    assert!(
        stderr.contains("line 5") && stderr.contains("missing.jpg"),
        "{stderr}"
    );
    let (shape, rows) = read_npy(&npy);
    assert_eq!(shape, vec![3, 16]);

    // The same good images alone give the same rows, in the same order.
    let alone = dir.join("alone.npy");
    let paths: Vec<String> = good.iter().map(|p| p.display().to_string()).collect();
    let mut args = vec![
        "embed",
        "image",
        "--model",
        &model,
        "--arch",
        &arch,
        "--output",
        alone.to_str().unwrap(),
    ];
    args.extend(paths.iter().map(String::as_str));
    let o = gclip(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(read_npy(&alone).1, rows);

    // JSONL output carries every input, with its vector or its error.
    let jsonl = dir.join("out.jsonl");
    let o = gclip(&[
        "embed",
        "image",
        "--model",
        &model,
        "--arch",
        &arch,
        "--input",
        dir.join("list.txt").to_str().unwrap(),
        "--output",
        jsonl.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&jsonl)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 5);
    assert_eq!(lines[0]["embedding"].as_array().unwrap().len(), 16);
    assert!(lines[1]["error"].is_string() && lines[1].get("embedding").is_none());
    assert!(lines[4]["error"].as_str().unwrap().contains("missing.jpg"));
}

#[test]
fn bad_model_arguments_fail_fast_with_a_clear_message() {
    let (model, _) = full_vocab_model();
    let o = gclip(&[
        "embed",
        "text",
        "--model",
        &model,
        "--arch",
        "ViT-Nope",
        "hello",
        "--output",
        "/tmp/never.npy",
    ]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        stderr.contains("unknown architecture `ViT-Nope`") && stderr.contains("ViT-B-32"),
        "{stderr}"
    );

    let o = gclip(&[
        "embed",
        "text",
        "--model",
        &model,
        "hello",
        "--output",
        "/tmp/never.npy",
    ]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("--arch"));

    let o = gclip(&[
        "embed",
        "text",
        "--model",
        &model,
        "--arch",
        "ViT-B-32",
        "hello",
        "--output",
        "/tmp/never.txt",
    ]);
    assert!(String::from_utf8_lossy(&o.stderr).contains(".npy, .parquet or .jsonl"));
}

#[test]
fn help_shows_runnable_examples() {
    for sub in [
        vec!["--help"],
        vec!["embed", "--help"],
        vec!["bench", "--help"],
        vec!["bench-train", "--help"],
    ] {
        let o = gclip(&sub);
        let text = String::from_utf8_lossy(&o.stdout);
        assert!(
            o.status.success() && text.contains("Example") && text.contains("gclip "),
            "{sub:?}: {text}"
        );
    }
}

/// `gclip tokenize` writes the ids open_clip's tokenizer gives, as int64 [N, 77].
#[test]
fn tokenize_writes_the_reference_ids() {
    let dir = scratch("tokenize");
    let captions: Vec<String> = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("models/oc-fullvocab/captions.json")).unwrap(),
    )
    .unwrap();
    let jsonl: String = captions
        .iter()
        .map(|c| serde_json::json!({ "text": c }).to_string() + "\n")
        .collect();
    std::fs::write(dir.join("captions.jsonl"), jsonl).unwrap();
    let (model, arch) = full_vocab_model();
    let out = dir.join("ids.npy");
    let o = gclip(&[
        "tokenize",
        "--model",
        &model,
        "--arch",
        &arch,
        "--input",
        dir.join("captions.jsonl").to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let got = Tensor::read_npy(&out).unwrap();
    assert_eq!(got.dtype(), candle_core::DType::I64);
    let reference = candle_core::safetensors::load(
        fixtures().join("models/oc-fullvocab/reference.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    assert_eq!(
        got.to_vec2::<i64>().unwrap(),
        reference["input_ids"].to_vec2::<i64>().unwrap()
    );
}

/// `gclip preprocess` writes float32 [N, 3, H, W] for the images that decode and names the rest.
#[test]
fn preprocess_writes_pixels_and_reports_failures() {
    let dir = scratch("preprocess");
    std::fs::write(dir.join("empty.png"), b"").unwrap();
    let model = fixtures().join("models/hf-fullvocab");
    let img = fixtures().join("images/rgb_301x199.png");
    let out = dir.join("px.npy");
    let o = gclip(&[
        "preprocess",
        "--model",
        model.to_str().unwrap(),
        img.to_str().unwrap(),
        dir.join("empty.png").to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        stderr.contains("wrote 1 of 2") && stderr.contains("empty.png"),
        "{stderr}"
    );
    let t = Tensor::read_npy(&out).unwrap();
    assert_eq!(t.dims(), &[1, 3, 32, 32]);
    let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    // Normalised with CLIP's mean and std, pixels span roughly [-1.8, 2.2].
    assert!(v.iter().all(|x| (-1.9..=2.2).contains(x)) && v.iter().any(|&x| x != v[0]));
}

/// A directory with a transformers config and tokenizer files but no weights is enough for
/// `tokenize` and `preprocess` (the ids and pixels equal those from the full model directory);
/// commands that load the model name the missing weights.
#[test]
fn tokenizer_only_directory_tokenizes_and_preprocesses() {
    let dir = scratch("tokenizer-only");
    let full = fixtures().join("models/hf-fullvocab");
    let only = dir.join("model");
    std::fs::create_dir_all(&only).unwrap();
    for f in [
        "config.json",
        "merges.txt",
        "vocab.json",
        "tokenizer_config.json",
        "preprocessor_config.json",
    ] {
        std::fs::copy(full.join(f), only.join(f)).unwrap();
    }
    assert!(!only.join("model.safetensors").exists());
    let img = fixtures().join("images/rgb_301x199.png");
    for (cmd, item) in [
        ("tokenize", "a photo of a cat"),
        ("preprocess", img.to_str().unwrap()),
    ] {
        let mut outputs = Vec::new();
        for (name, model) in [("full", &full), ("only", &only)] {
            let out = dir.join(format!("{cmd}-{name}.npy"));
            let o = gclip(&[
                cmd,
                "--model",
                model.to_str().unwrap(),
                item,
                "--output",
                out.to_str().unwrap(),
            ]);
            assert!(
                o.status.success(),
                "{cmd} {name}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            outputs.push(std::fs::read(&out).unwrap());
        }
        assert!(outputs[0].len() > 128, "{cmd}: a header and data");
        assert_eq!(
            outputs[0], outputs[1],
            "{cmd}: same bytes from both directories"
        );
    }
    let o = gclip(&[
        "embed",
        "text",
        "--model",
        only.to_str().unwrap(),
        "hello",
        "--output",
        dir.join("never.npy").to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(stderr.contains("no weight file"), "{stderr}");
    assert!(!dir.join("never.npy").exists());
}

/// `--precision bf16` converts the weights once into the converted-weights cache and maps them
/// from there afterwards, as fp32 keeps them packed for the f32 panel kernel where the CPU has
/// one; a corrupt, truncated or stale cache file is reported, rebuilt and never used, and every
/// run embeds the same.
#[test]
fn converted_weights_are_cached_checked_and_rebuilt() {
    converted_weights_are_cached_checked_and_rebuilt_at("bf16");
    if gclip::model::lowp::F32PanelKernel::available().is_empty() {
        // fp32 weights are then read in place at every load: no cache file.
        let dir = scratch("converted-fp32-none");
        let (model, arch) = full_vocab_model();
        let o = Command::new(env!("CARGO_BIN_EXE_gclip"))
            .args(["embed", "text", "--model", &model, "--arch", &arch, "a cat"])
            .arg("--output")
            .arg(dir.join("out.npy"))
            .env("GCLIP_CONVERTED_CACHE", dir.join("cache"))
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let written: Vec<_> = std::fs::read_dir(dir.join("cache"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n.to_string_lossy().ends_with(".gclipcv"))
            .collect();
        assert!(written.is_empty(), "{written:?}");
    } else {
        converted_weights_are_cached_checked_and_rebuilt_at("fp32");
    }
}

fn converted_weights_are_cached_checked_and_rebuilt_at(precision: &str) {
    let dir = scratch(&format!("converted-{precision}"));
    let (model, arch) = full_vocab_model();
    let local_model = dir.join("model.safetensors");
    std::fs::copy(&model, &local_model).unwrap();
    let cache = dir.join("cache");
    std::fs::write(
        dir.join("captions.txt"),
        "a photo of a cat\nan emoji of a dog\n",
    )
    .unwrap();
    let run = |n: usize| {
        let out = dir.join(format!("out{n}.npy"));
        let o = Command::new(env!("CARGO_BIN_EXE_gclip"))
            .args(["embed", "text", "--precision", precision, "--model"])
            .arg(&local_model)
            .args(["--arch", &arch, "--input"])
            .arg(dir.join("captions.txt"))
            .arg("--output")
            .arg(&out)
            .env("GCLIP_CONVERTED_CACHE", &cache)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&o.stderr).to_string();
        assert!(o.status.success(), "{stderr}");
        (read_npy(&out).1, stderr)
    };
    // The converted-weights files (beside them, the record of the tensors found finite).
    let cache_files = || -> Vec<PathBuf> {
        std::fs::read_dir(&cache)
            .map(|d| {
                d.map(|e| e.unwrap().path())
                    .filter(|p| p.extension().is_some_and(|e| e == "gclipcv"))
                    .collect()
            })
            .unwrap_or_default()
    };
    let (want, stderr) = run(1);
    assert!(!stderr.contains("not used"), "{stderr}");
    let files = cache_files();
    assert_eq!(files.len(), 1, "{files:?}");
    let records = std::fs::read_dir(&cache)
        .unwrap()
        .filter(|e| {
            let name = e.as_ref().unwrap().file_name();
            name.to_string_lossy().ends_with("-finite.json")
        })
        .count();
    assert_eq!(records, 1);
    let file = files[0].clone();
    assert!(
        file.to_string_lossy()
            .ends_with(&format!("-{precision}.gclipcv")),
        "{file:?}"
    );
    let written = std::fs::metadata(&file).unwrap().modified().unwrap();

    // Used as it is: no warning, not rewritten, the same embeddings.
    let (got, stderr) = run(2);
    assert_eq!(got, want);
    assert!(!stderr.contains("not used"), "{stderr}");
    assert_eq!(
        std::fs::metadata(&file).unwrap().modified().unwrap(),
        written
    );

    // One flipped byte of packed data: detected by the checksum, rebuilt.
    let mut bytes = std::fs::read(&file).unwrap();
    let last = bytes.len() - 100;
    bytes[last] ^= 0x40;
    std::fs::write(&file, &bytes).unwrap();
    let (got, stderr) = run(3);
    assert_eq!(got, want);
    assert!(stderr.contains("checksum mismatch"), "{stderr}");
    let (_, stderr) = run(4);
    assert!(
        !stderr.contains("not used"),
        "rebuilt file not valid: {stderr}"
    );

    // Truncated: detected by its length.
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..bytes.len() / 2]).unwrap();
    let (got, stderr) = run(5);
    assert_eq!(got, want);
    assert!(stderr.contains("truncated"), "{stderr}");

    // The checkpoint replaced (same bytes, another modification time): stale, rebuilt.
    std::fs::remove_file(&local_model).unwrap();
    std::fs::copy(&model, &local_model).unwrap();
    let f = std::fs::File::options()
        .write(true)
        .open(&local_model)
        .unwrap();
    f.set_modified(std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000))
        .unwrap();
    drop(f);
    let (got, stderr) = run(6);
    assert_eq!(got, want);
    assert!(
        stderr.contains("another version of the checkpoint"),
        "{stderr}"
    );
    assert_eq!(cache_files(), vec![file]);
}

/// Training runs in fp32 or bf16: int8 and unknown precisions are refused before anything is
/// read, naming the precision and the choices.
#[test]
fn training_refuses_inference_only_and_unknown_precisions() {
    for (precision, says) in [("int8", "for inference only"), ("fp16", "unknown")] {
        let o = gclip(&[
            "train",
            "--config",
            "/nonexistent/run.toml",
            "--precision",
            precision,
        ]);
        assert!(!o.status.success());
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(
            stderr.contains(precision) && stderr.contains(says) && stderr.contains("fp32 or bf16"),
            "{stderr}"
        );
        assert!(!stderr.contains("/nonexistent"), "{stderr}");
    }
}

/// `gclip bench` says which kernels each precision ran, and `--portable-kernels` runs the
/// fallbacks that a CPU without AVX-512 BF16/VNNI gets.
#[test]
fn bench_names_the_kernels_of_each_precision() {
    let arch = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/models/oc-gelu/open_clip_config.json");
    let arch = arch.to_str().unwrap();
    let run = |extra: &[&str]| -> Vec<serde_json::Value> {
        let mut args = vec![
            "bench",
            "--arch",
            arch,
            "--batch",
            "2",
            "--tokens",
            "8",
            "--seconds",
            "0.05",
            "--precision",
            "fp32,bf16,int8",
            "--json",
        ];
        args.extend(extra);
        let o = gclip(&args);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let kernels = |rows: &[serde_json::Value], precision: &str| -> String {
        let row = rows.iter().find(|r| r["precision"] == precision).unwrap();
        row["kernels"].as_str().unwrap().to_string()
    };
    let fastest = run(&[]);
    // Random weights for inference run as a checkpoint's fp32 weights do: in place, or on
    // AVX-512 packed for the panel kernel at their first product and run there alone.
    let fp32 = kernels(&fastest, "fp32");
    if gclip::model::lowp::has_f32_panel_kernel() {
        assert_eq!(fp32, "f32 packed at first use (f32-panels-avx512)");
    } else {
        assert!(fp32.starts_with("f32 in place (f32-outin-"), "{fp32}");
    }
    assert!(kernels(&fastest, "bf16").starts_with("bf16-"));
    assert!(kernels(&fastest, "int8").contains("int8-"));
    // Packed before timing, as the server does, on AVX2 CPUs too; bf16 and int8 unchanged.
    let asked = run(&["--pack-f32"]);
    let panel_kernels = gclip::model::lowp::F32PanelKernel::available();
    match panel_kernels.last() {
        Some(best) => assert_eq!(
            kernels(&asked, "fp32"),
            format!("f32 packed when asked ({})", best.name())
        ),
        None => assert_eq!(kernels(&asked, "fp32"), fp32),
    }
    assert_eq!(kernels(&asked, "int8"), kernels(&fastest, "int8"));
    let portable = run(&["--portable-kernels"]);
    assert_eq!(kernels(&portable, "bf16"), "bf16-portable");
    assert_eq!(
        kernels(&portable, "int8"),
        "qkv bf16-portable, out/fc1/fc2 int8-portable"
    );
}

/// `gclip bench-train` prints a record per step and a summary, with and without activation
/// checkpointing and gradient caching, and in bf16, and names a bad batch size and a bad
/// precision for kept activations.
#[test]
fn bench_train_reports_steps_and_memory() {
    let arch = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/models/oc-gelu/open_clip_config.json");
    let arch = arch.to_str().unwrap();
    let base = ["bench-train", "--arch", arch, "--tokens", "6", "--json"];
    for extra in [
        vec!["--batch", "3", "--steps", "2"],
        vec![
            "--batch",
            "4",
            "--steps",
            "1",
            "--activation-checkpointing",
            "--grad-cache-chunk",
            "3",
        ],
        // bf16 keeps the blocks' activations in bf16 unless told otherwise.
        vec!["--batch", "3", "--steps", "1", "--precision", "bf16"],
    ] {
        let mut args = base.to_vec();
        args.extend(&extra);
        let o = gclip(&args);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let rows: Vec<serde_json::Value> = String::from_utf8_lossy(&o.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let steps: usize = extra[3].parse().unwrap();
        assert_eq!(rows.len(), steps + 2, "{rows:?}");
        assert!(rows[..=steps]
            .iter()
            .all(|r| r["event"] == "step" && r["loss"].as_f64().unwrap().is_finite()));
        let summary = &rows[steps + 1];
        assert!(summary["samples_per_s"].as_f64().unwrap() > 0.0);
        assert!(summary["peak_rss_mib"].as_f64().unwrap() > 1.0);
        assert_eq!(
            summary["activation_checkpointing"],
            extra.contains(&"--activation-checkpointing")
        );
        let kept = if extra.contains(&"bf16") {
            "bf16"
        } else {
            "f32"
        };
        assert_eq!(summary["kept_activations"], kept);
    }
    let o = gclip(&["bench-train", "--arch", arch, "--kept-activations", "int8"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("choose f32 or bf16"));
    let o = gclip(&["bench-train", "--arch", arch, "--batch", "1"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("at least 2 pairs"));
}

/// `gclip embed` of `list` (`--shard` when given) into `out`, in batches of 3.
fn embed_list(kind: &str, list: &Path, out: &Path, shard: Option<&str>) -> std::process::Output {
    let (model, arch) = full_vocab_model();
    let (list, out) = (list.to_str().unwrap(), out.to_str().unwrap());
    let mut args: Vec<&str> = vec![
        "embed",
        kind,
        "--model",
        model.as_str(),
        "--arch",
        arch.as_str(),
        "--input",
        list,
        "--output",
        out,
        "--batch-size",
        "3",
    ];
    if let Some(s) = shard {
        args.extend(["--shard", s]);
    }
    gclip(&args)
}

/// `gclip merge PARTS… --output OUT`.
fn merge(parts: &[&Path], out: &Path) -> std::process::Output {
    let mut args: Vec<&str> = vec!["merge"];
    args.extend(parts.iter().map(|p| p.to_str().unwrap()));
    args.extend(["--output", out.to_str().unwrap()]);
    gclip(&args)
}

/// The merged file holds the one run's ids, and its vectors to float rounding: a shard's
/// batches hold other items than the one run's, and the model's sums depend on batch size.
fn assert_same_as_one_run(merged: &Path, whole: &Path) -> String {
    let ((sm, vm), (sw, vw)) = (read_npy(merged), read_npy(whole));
    assert_eq!(sm, sw);
    let worst = vm
        .iter()
        .zip(&vw)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(worst < 1e-5, "vectors differ by up to {worst}");
    let ids = std::fs::read_to_string(merged.with_extension("ids.jsonl")).unwrap();
    assert_eq!(
        ids,
        std::fs::read_to_string(whole.with_extension("ids.jsonl")).unwrap()
    );
    ids
}

#[test]
fn sharded_image_embed_and_merge_equal_one_run() {
    let dir = scratch("shards-images");
    let images = fixtures().join("images");
    let mut lines: Vec<String> = [
        "photo_chelsea.jpg",
        "rgb_301x199.png",
        "p_trns_index.png",
        "photo_coffee.webp",
        "missing.png",
        "grey16.png",
        "tiff_rgb.tif",
        "gif_transparent.gif",
    ]
    .iter()
    .map(|f| images.join(f).display().to_string())
    .collect();
    lines.insert(3, "{\"image\": 42}".into());
    let list = dir.join("list.txt");
    std::fs::write(&list, lines.join("\n") + "\n").unwrap();
    let whole = dir.join("whole.npy");
    assert!(!embed_list("image", &list, &whole, None).status.success());
    let parts: Vec<PathBuf> = (0..3).map(|i| dir.join(format!("part{i}.npy"))).collect();
    for (i, p) in parts.iter().enumerate() {
        let o = embed_list("image", &list, p, Some(&format!("{i}/3")));
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(
            stderr.contains(&format!("(shard {i}/3 of 9 inputs)")),
            "{stderr}"
        );
    }
    // The parts in any order.
    let merged = dir.join("merged.npy");
    let o = merge(&[&parts[2], &parts[0], &parts[1]], &merged);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let ids = assert_same_as_one_run(&merged, &whole);
    // Inputs 3 (no image string) and 5 (a missing file) failed and have no row.
    let rows: Vec<serde_json::Value> = ids
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let index: Vec<u64> = rows.iter().map(|r| r["index"].as_u64().unwrap()).collect();
    assert_eq!(index, [0, 1, 2, 4, 6, 7, 8]);
    assert_eq!(rows[3]["line"], 5);
    assert_eq!(rows[0]["image"].as_str().unwrap(), lines[0]);
    // Overlapping parts, and a shard outside the list, are refused.
    let o = merge(&[&parts[0], &parts[0]], &dir.join("x.npy"));
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("more than one shard"));
    let o = embed_list("image", &list, &dir.join("y.npy"), Some("3/3"));
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("0 <= I < N"));
}

#[test]
fn sharded_text_embed_with_empty_shards_equals_one_run() {
    let dir = scratch("shards-texts");
    let list = dir.join("captions.jsonl");
    let captions = "{\"text\": \"a cat\"}\n{\"text\": \"\"}\n{\"text\": \"a dog on a sofa\"}\n";
    std::fs::write(&list, captions).unwrap();
    let whole = dir.join("whole.npy");
    assert!(embed_list("text", &list, &whole, None).status.success());
    // Five shards of three items: two are empty.
    let parts: Vec<PathBuf> = (0..5).map(|i| dir.join(format!("p{i}.npy"))).collect();
    for (i, p) in parts.iter().enumerate() {
        let o = embed_list("text", &list, p, Some(&format!("{i}/5")));
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let merged = dir.join("merged.npy");
    let refs: Vec<&Path> = parts.iter().map(PathBuf::as_path).collect();
    let o = merge(&refs, &merged);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_same_as_one_run(&merged, &whole);
}

#[test]
fn parquet_embed_and_merge_hold_what_npy_holds() {
    let dir = scratch("shards-parquet");
    let list = dir.join("captions.jsonl");
    let captions =
        "{\"text\": \"a cat\"}\n{\"text\": \"ça coûte 3€\"}\n{\"text\": \"a dog on a sofa\"}\n";
    std::fs::write(&list, captions).unwrap();
    let whole = dir.join("whole.npy");
    assert!(embed_list("text", &list, &whole, None).status.success());
    // One run into Parquet holds the .npy's rows and ids: read back through a merge into .npy.
    let whole_parquet = dir.join("whole.parquet");
    let o = embed_list("text", &list, &whole_parquet, None);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let back = dir.join("back.npy");
    assert!(merge(&[&whole_parquet], &back).status.success());
    assert_eq!(read_npy(&back), read_npy(&whole));
    assert_eq!(
        std::fs::read_to_string(back.with_extension("ids.jsonl")).unwrap(),
        std::fs::read_to_string(whole.with_extension("ids.jsonl")).unwrap()
    );
    // Shards in both formats merge into Parquet, and that into the one run's .npy.
    let parts = [dir.join("p0.parquet"), dir.join("p1.npy")];
    for (i, p) in parts.iter().enumerate() {
        let o = embed_list("text", &list, p, Some(&format!("{i}/2")));
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let merged = dir.join("merged.parquet");
    let o = merge(&[&parts[1], &parts[0]], &merged);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let merged_npy = dir.join("merged.npy");
    assert!(merge(&[&merged], &merged_npy).status.success());
    assert_same_as_one_run(&merged_npy, &whole);
    let o = merge(&[&merged], &dir.join("x.csv"));
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains(".npy or .parquet"));
}

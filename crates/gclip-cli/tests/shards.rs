//! `gclip embed --shard I/N` and `gclip merge`: the shards of a list, merged, are the one run:
//! the same rows with the same ids, in the same order. Vectors agree to float rounding, not bit
//! for bit: a shard's batches hold other items than the one run's, and the model's sums depend
//! on a batch's size.

use std::path::{Path, PathBuf};
use std::process::Command;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("gclip-shards-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn gclip(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_gclip"))
        .args(args)
        .output()
        .expect("gclip runs")
}

fn model() -> Vec<String> {
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

fn run(args: &[String]) -> std::process::Output {
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    gclip(&refs)
}

fn embed(kind: &str, list: &Path, out: &Path, shard: Option<&str>) -> std::process::Output {
    let mut args: Vec<String> = vec!["embed".into(), kind.into()];
    args.extend(model());
    args.extend([
        "--input".into(),
        list.display().to_string(),
        "--output".into(),
        out.display().to_string(),
        "--batch-size".into(),
        "3".into(),
    ]);
    if let Some(s) = shard {
        args.extend(["--shard".into(), s.into()]);
    }
    run(&args)
}

fn sidecar(npy: &Path) -> PathBuf {
    npy.with_extension("ids.jsonl")
}

/// The two .npy files hold the same shape and values within float rounding.
fn assert_same_vectors(a: &Path, b: &Path) {
    let read = |p: &Path| {
        let t = candle_core::Tensor::read_npy(p).expect("valid npy");
        (
            t.dims().to_vec(),
            t.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        )
    };
    let ((da, va), (db, vb)) = (read(a), read(b));
    assert_eq!(da, db);
    let worst = va
        .iter()
        .zip(&vb)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    assert!(worst < 1e-5, "vectors differ by up to {worst}");
}

/// Image shards (with unreadable items among them) merged equal one run.
#[test]
fn sharded_image_embed_and_merge_equal_one_run() {
    let dir = scratch("images");
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
    let out = embed("image", &list, &whole, None);
    assert!(!out.status.success(), "two items fail");
    let parts: Vec<PathBuf> = (0..3).map(|i| dir.join(format!("part{i}.npy"))).collect();
    for (i, p) in parts.iter().enumerate() {
        let out = embed("image", &list, p, Some(&format!("{i}/3")));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(&format!("(shard {i}/3 of 9 inputs)")),
            "{stderr}"
        );
    }
    let merged = dir.join("merged.npy");
    // Any order of the parts.
    let mut args = vec!["merge".to_string()];
    args.extend([&parts[2], &parts[0], &parts[1]].map(|p| p.display().to_string()));
    args.extend(["--output".into(), merged.display().to_string()]);
    let out = run(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_same_vectors(&merged, &whole);
    let ids = std::fs::read_to_string(sidecar(&merged)).unwrap();
    assert_eq!(ids, std::fs::read_to_string(sidecar(&whole)).unwrap());
    // Seven rows: inputs 3 (no image string) and 5 (missing file) failed.
    let rows: Vec<serde_json::Value> = ids
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let index: Vec<u64> = rows.iter().map(|r| r["index"].as_u64().unwrap()).collect();
    assert_eq!(index, [0, 1, 2, 4, 6, 7, 8]);
    assert_eq!(rows[3]["line"], 5);
    assert!(rows[0]["image"]
        .as_str()
        .unwrap()
        .ends_with("photo_chelsea.jpg"));

    // The same part twice is refused, as is a shard outside the list.
    let mut args = vec!["merge".to_string()];
    args.extend([&parts[0], &parts[0]].map(|p| p.display().to_string()));
    args.extend(["--output".into(), dir.join("x.npy").display().to_string()]);
    let out = run(&args);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("more than one shard"));
    let out = embed("image", &list, &dir.join("y.npy"), Some("3/3"));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("0 <= I < N"));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Text shards, more shards than items (some empty), merged equal one run.
#[test]
fn sharded_text_embed_with_empty_shards_equals_one_run() {
    let dir = scratch("texts");
    let list = dir.join("captions.jsonl");
    std::fs::write(
        &list,
        "{\"text\": \"a cat\"}\n{\"text\": \"\"}\n{\"text\": \"a dog on a sofa\"}\n",
    )
    .unwrap();
    let whole = dir.join("whole.npy");
    assert!(embed("text", &list, &whole, None).status.success());
    let mut args = vec!["merge".to_string()];
    for i in 0..5 {
        let p = dir.join(format!("p{i}.npy"));
        let out = embed("text", &list, &p, Some(&format!("{i}/5")));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        args.push(p.display().to_string());
    }
    let merged = dir.join("merged.npy");
    args.extend(["--output".into(), merged.display().to_string()]);
    let out = run(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_same_vectors(&merged, &whole);
    assert_eq!(
        std::fs::read_to_string(sidecar(&merged)).unwrap(),
        std::fs::read_to_string(sidecar(&whole)).unwrap()
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

//! Zero-shot classification, similarity and zero-shot evaluation against open_clip and numpy
//! (tests/fixtures/zeroshot, made by tools/gen_zeroshot_fixtures.py).

use std::path::{Path, PathBuf};

use candle_core::Device;
use gclip::embed::Embedder;
use gclip::eval::zeroshot::{evaluate, metrics, target_rank, EvalOptions, ImageFolder};
use gclip::source::ModelSource;
use gclip::zeroshot::{
    classify_image_files, similarity, ClassifyOptions, Item, SimilarityOptions, ZeroShotClassifier,
};
use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn reference(name: &str) -> Value {
    let path = fixtures().join("zeroshot").join(name);
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

fn embedder() -> Embedder {
    let dir = fixtures().join("models/oc-fullvocab");
    let source = ModelSource::resolve(
        dir.join("open_clip_model.safetensors").to_str().unwrap(),
        Some(dir.join("open_clip_config.json").to_str().unwrap()),
    )
    .unwrap();
    Embedder::load(&source, &Device::Cpu).unwrap()
}

fn floats(v: &Value) -> Vec<f32> {
    match v {
        Value::Array(a) => a.iter().flat_map(floats).collect(),
        Value::Number(n) => vec![n.as_f64().unwrap() as f32],
        other => panic!("not a number: {other}"),
    }
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Class vectors (renormalised template means) and probabilities (softmax over
/// `logit_scale · cos`) equal open_clip's `build_zero_shot_classifier` and softmax within 1e-4.
#[test]
fn classify_matches_open_clip() {
    let e = embedder();
    let r = reference("classify_reference.json");
    let images: Vec<PathBuf> = strings(&r["images"])
        .iter()
        .map(|n| fixtures().join("images").join(n))
        .collect();
    for case in r["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let labels = strings(&case["labels"]);
        let options = ClassifyOptions {
            templates: strings(&case["templates"]),
            logit_scale: case["logit_scale"].as_f64().map(|s| s as f32),
        };
        let classifier = ZeroShotClassifier::build(
            &e,
            &labels,
            &options.templates,
            options.logit_scale,
            &|_, _, _| {},
        )
        .unwrap();
        let d = max_diff(
            &classifier.class_vectors().data,
            &floats(&case["class_vectors"]),
        );
        assert!(d <= 1e-4, "{name}: class vectors differ by {d}");

        let result = classify_image_files(&e, &labels, &images, &options, &|_, _, _| {}).unwrap();
        let want = floats(&case["probabilities"]);
        for (i, ranked) in result.rankings.iter().enumerate() {
            let ranked = ranked.as_ref().unwrap();
            assert_eq!(ranked.len(), labels.len());
            assert!(ranked
                .windows(2)
                .all(|w| w[0].probability >= w[1].probability));
            for s in ranked {
                let j = labels.iter().position(|l| *l == s.label).unwrap();
                let p = want[i * labels.len() + j];
                assert!(
                    (s.probability - p).abs() <= 1e-4,
                    "{name}: image {i} label {}: {} vs open_clip {p}",
                    s.label,
                    s.probability
                );
            }
        }
    }
}

/// The full matrix between two texts and two images, each item against every item.
#[test]
fn similarity_matrix_matches_open_clip() {
    let e = embedder();
    let r = &reference("classify_reference.json")["similarity"];
    let mut items: Vec<Item> = strings(&r["texts"]).into_iter().map(Item::Text).collect();
    items.extend(
        strings(&r["images"])
            .iter()
            .map(|n| Item::Image(fixtures().join("images").join(n))),
    );
    let m = similarity(
        &e,
        &items,
        &items,
        &SimilarityOptions::default(),
        &|_, _, _| {},
    )
    .unwrap();
    assert_eq!(m.rows, vec![0, 1, 2, 3]);
    let d = max_diff(&m.values, &floats(&r["cosine"]));
    assert!(d <= 1e-4, "cosines differ by {d}");
    // Diagonal of a cosine matrix is 1.
    for i in 0..4 {
        assert!((m.row(i)[i] - 1.0).abs() < 1e-5);
    }
}

/// A bad image drops out of the similarity matrix (once, however often it is asked for) and
/// the rest is computed.
#[test]
fn similarity_leaves_out_bad_images() {
    let e = embedder();
    let missing = PathBuf::from("/nonexistent/cat.jpg");
    let rows = vec![
        Item::Image(missing.clone()),
        Item::Image(fixtures().join("images/photo_chelsea.jpg")),
    ];
    let columns = vec![
        Item::Text("a cat".into()),
        Item::Image(missing.clone()),
        Item::Text("a dog".into()),
    ];
    let m = similarity(
        &e,
        &rows,
        &columns,
        &SimilarityOptions {
            scores: gclip::zeroshot::Scores::Probabilities,
            logit_scale: None,
        },
        &|_, _, _| {},
    )
    .unwrap();
    assert_eq!(m.rows, vec![1]);
    assert_eq!(m.columns, vec![0, 2]);
    assert_eq!(m.failures.len(), 1);
    assert!(m.failures[0].1.to_string().contains("/nonexistent/cat.jpg"));
    let s: f32 = m.row(0).iter().sum();
    assert!((s - 1.0).abs() < 1e-6, "probabilities sum to {s}");
}

/// Top-1 / top-5 / mean per-class recall from gclip's metric code equal numpy's on random
/// logits (including a class without images and a case with fewer than 5 classes).
#[test]
fn metrics_match_numpy() {
    for case in reference("metrics_reference.json").as_array().unwrap() {
        let logits = floats(&case["logits"]);
        let targets: Vec<usize> = case["targets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_u64().unwrap() as usize)
            .collect();
        let classes = logits.len() / targets.len();
        let names: Vec<String> = (0..classes).map(|c| c.to_string()).collect();
        let m = metrics(&logits, &targets, &names).unwrap();
        assert_eq!(m.top1, case["top1"].as_f64().unwrap());
        assert_eq!(m.top5, case["top5"].as_f64());
        let want = case["mean_per_class_recall"].as_f64().unwrap();
        assert!(
            (m.mean_per_class_recall - want).abs() < 1e-12,
            "{} vs {want}",
            m.mean_per_class_recall
        );
    }
}

/// The emoji image-folder dataset end to end: folder classes, class names from a JSON map or
/// from folder names, template ensembles; logits agree with open_clip and the metrics with
/// numpy's computation on open_clip's logits.
#[test]
fn eval_zeroshot_on_emoji_matches_open_clip_and_numpy() {
    let e = embedder();
    let r = reference("eval_reference.json");
    let root = fixtures().join("zeroshot/emoji");
    let dataset = ImageFolder::open(&root).unwrap();
    let want_images = strings(&r["images"]);
    let got_images: Vec<String> = dataset
        .images
        .iter()
        .map(|(p, _)| p.strip_prefix(&root).unwrap().display().to_string())
        .collect();
    assert_eq!(got_images, want_images);
    let targets: Vec<usize> = dataset.images.iter().map(|(_, t)| *t).collect();
    let want_targets: Vec<usize> = r["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_u64().unwrap() as usize)
        .collect();
    assert_eq!(targets, want_targets);

    let runs = r["runs"].as_array().unwrap();
    for (run, named) in runs.iter().zip([true, false]) {
        let name = run["name"].as_str().unwrap();
        let ds = if named {
            dataset
                .clone()
                .with_classnames_file(&fixtures().join("zeroshot/emoji_classnames.json"))
                .unwrap()
        } else {
            dataset.clone()
        };
        assert_eq!(ds.classnames, strings(&run["classnames"]), "{name}");
        let options = EvalOptions {
            templates: strings(&run["templates"]),
        };
        let result = evaluate(&e, &ds, &options, &|_, _, _| {}).unwrap();
        assert!(result.failures.is_empty());
        let want_logits = floats(&run["logits"]);
        let d = max_diff(&result.logits, &want_logits);
        // Logits are 20 · cos: 1e-4 on cosines.
        assert!(d <= 2e-3, "{name}: logits differ by {d}");

        // The metrics must be the same numbers, which is only meaningful when no decision sits
        // on a near-tie: check the reference has none at the top-1 and top-5 boundaries.
        let classes = ds.class_count();
        for row in want_logits.chunks(classes) {
            let mut s = row.to_vec();
            s.sort_by(|a, b| b.total_cmp(a));
            assert!(
                s[0] - s[1] > 10.0 * d && s[4] - s[5] > 10.0 * d,
                "{name}: near tie"
            );
        }
        for (p, (row, &t)) in result
            .predictions
            .iter()
            .zip(want_logits.chunks(classes).zip(&targets))
        {
            assert_eq!(p.target, t);
            assert_eq!(
                target_rank(row, p.top[0]),
                0,
                "{name}: {}",
                p.image.display()
            );
        }
        let m = &result.metrics;
        assert_eq!(m.images, 36);
        assert_eq!(m.top1, run["top1"].as_f64().unwrap(), "{name}");
        assert_eq!(m.top5, run["top5"].as_f64(), "{name}");
        assert!(
            (m.mean_per_class_recall - run["mean_per_class_recall"].as_f64().unwrap()).abs()
                < 1e-12
        );
        // The metric arithmetic, recomputed from the predictions.
        let top1 = result
            .predictions
            .iter()
            .filter(|p| p.top[0] == p.target)
            .count();
        assert_eq!(m.top1, top1 as f64 / 36.0);
        let per_class_sum: usize = m.per_class.iter().map(|c| c.correct).sum();
        assert_eq!(per_class_sum, top1);
    }
}

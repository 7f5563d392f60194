//! `gclip eval ranking` on Marqo-GS files (tests/fixtures/marqo-gs, hand-written; its README
//! gives the expected values): a corpus JSON searched whole, queries from a ground-truth file
//! or drawn from the split's CSV as GCL draws them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn gs(name: &str) -> String {
    fixtures().join("marqo-gs").join(name).display().to_string()
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("gclip-eval-gs-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `eval ranking` with the tiny open_clip test model, image documents, `--json`, and `extra`.
fn eval(extra: &[&str]) -> Output {
    let m = fixtures().join("models/oc-fullvocab");
    let mut args: Vec<String> = [
        "eval",
        "ranking",
        "--model",
        m.join("open_clip_model.safetensors").to_str().unwrap(),
        "--arch",
        m.join("open_clip_config.json").to_str().unwrap(),
        "--query-fields",
        "query",
        "--doc-fields",
        "image:0.9,title:0.1",
        "--corpus",
        &gs("corpus_1.json"),
        "--json",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    Command::new(env!("CARGO_BIN_EXE_gclip"))
        .args(&args)
        .output()
        .unwrap()
}

fn metrics(o: &Output) -> BTreeMap<String, f64> {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

fn read_json(p: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
    k.sort();
    k
}

#[test]
fn ground_truth_queries_search_the_whole_corpus() {
    let dir = scratch("gt");
    let (run, qrels) = (dir.join("run.json"), dir.join("gt.json"));
    let o = eval(&[
        "--ground-truth",
        &gs("query_0_product_id_0_gt_test.json"),
        "--save-run",
        run.to_str().unwrap(),
        "--save-qrels",
        qrels.to_str().unwrap(),
    ]);
    let m = metrics(&o);
    assert_eq!(m["queries"], 2.0);
    assert_eq!(m["queries_evaluated"], 2.0);
    assert!((0.0..=1.0).contains(&m["ndcg@10"]), "{m:?}");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains("1 of 8 documents"),
        "107 is unusable: {stderr}"
    );
    let run = read_json(&run);
    assert_eq!(keys(&run), ["green tree_{!@#~}_", "red flag_{!@#~}_"]);
    for (_, docs) in run.as_object().unwrap() {
        // Every usable corpus document, including 108 that no query judges.
        assert_eq!(
            keys(docs),
            ["101", "102", "103", "104", "105", "106", "108"]
        );
    }
    // The ground truth as read, written back in the same layout.
    assert_eq!(
        read_json(&qrels),
        read_json(Path::new(&gs("query_0_product_id_0_gt_test.json")))
    );
    // The CSV is not needed: queries come from the keys. Cut-offs and top-k apply.
    let m1 = metrics(&eval(&[
        "--ground-truth",
        &gs("query_0_product_id_0_gt_test.json"),
        "--top-k",
        "1",
        "--cutoffs",
        "1",
    ]));
    assert_eq!(m1["queries"], 2.0);
    assert!(m1.contains_key("p@1") && !m1.contains_key("p@10"));
}

#[test]
fn csv_queries_are_all_or_drawn_as_gcl_draws_them() {
    let dir = scratch("csv");
    let qrels = dir.join("gt.json");
    let all = eval(&[
        "--data",
        &gs("query_0_product_id_0.csv"),
        "--save-qrels",
        qrels.to_str().unwrap(),
    ]);
    assert_eq!(metrics(&all)["queries"], 4.0);
    // GCL's grades: scores rescaled over the file to int(s/100·99 + 1).
    let gt = read_json(&qrels);
    assert_eq!(
        gt,
        serde_json::json!({
            "red flag_{!@#~}_": {"101": 100, "102": 80, "103": 40},
            "blue square_{!@#~}_": {"104": 100, "105": 10},
            "cheap hat_{!@#~}_": {"103": 60},
            "green tree_{!@#~}_": {"106": 100, "101": 1},
        })
    );
    for (n, expect) in [
        ("2", vec!["green tree_{!@#~}_", "red flag_{!@#~}_"]),
        (
            "3",
            vec![
                "blue square_{!@#~}_",
                "green tree_{!@#~}_",
                "red flag_{!@#~}_",
            ],
        ),
    ] {
        let o = eval(&[
            "--data",
            &gs("query_0_product_id_0.csv"),
            "--sample-queries",
            n,
            "--seed",
            "1",
            "--save-qrels",
            qrels.to_str().unwrap(),
        ]);
        assert_eq!(metrics(&o)["queries"], n.parse::<f64>().unwrap());
        assert_eq!(keys(&read_json(&qrels)), expect, "--sample-queries {n}");
    }
    // A different seed draws from the same weights, possibly other queries, never more.
    let o = eval(&[
        "--data",
        &gs("query_0_product_id_0.csv"),
        "--sample-queries",
        "9",
    ]);
    assert_eq!(
        metrics(&o)["queries"],
        4.0,
        "capped at the number of queries"
    );
}

#[test]
fn gs_arguments_fail_with_clear_messages() {
    let dir = scratch("bad");
    let bad_gt = dir.join("gt.json");
    std::fs::write(&bad_gt, r#"{"7": {"101": 1}}"#).unwrap();
    let o = eval(&["--ground-truth", bad_gt.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        stderr.contains("query `7`") && stderr.contains("--data"),
        "{stderr}"
    );
    // With the CSV, a key that is a query_id is looked up there.
    let o = eval(&[
        "--ground-truth",
        bad_gt.to_str().unwrap(),
        "--data",
        &gs("query_0_product_id_0.csv"),
    ]);
    assert_eq!(metrics(&o)["queries"], 1.0);
    // So is a key that is the query text.
    let text_gt = dir.join("text-gt.json");
    std::fs::write(&text_gt, r#"{"cheap hat": {"103": 60}, "7": {"101": 1}}"#).unwrap();
    let o = eval(&[
        "--ground-truth",
        text_gt.to_str().unwrap(),
        "--data",
        &gs("query_0_product_id_0.csv"),
    ]);
    assert_eq!(metrics(&o)["queries_evaluated"], 2.0);
    // With a corpus JSON, --data must be the split's CSV.
    let o = eval(&[
        "--data",
        fixtures()
            .join("emoji-mini/clip-train-google.jsonl")
            .to_str()
            .unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("split's CSV"));
    // Neither ground truth nor CSV.
    let o = eval(&[]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--ground-truth"));
}

//! The files of Marqo-GS-10M's evaluation, read as GCL's evaluation (`evals/eval_gs_v1.py`)
//! reads them, and its choice of test queries.
//!
//! * `corpus_N.json`: one JSON object, document id → document fields (`image_local`, `title`,
//!   …). GCL searches every document of it.
//! * ground truth (`*_gt_test.json`, `*_gt_dev.json`, and the `gt_results.json` GCL's script
//!   writes): one JSON object, query key → {document id → integer grade}. GCL evaluates every
//!   query of it.
//! * without a ground-truth file, GCL builds one from the split's CSV: scores are rescaled over
//!   the file to `int(((s − min)/(max − min))·99 + 1)` (all 1 when they do not vary), each
//!   query's weight is the sum of its rows' rescaled scores, and `top_q` queries (2,000 in its
//!   scripts) are drawn without replacement with probability proportional to that weight —
//!   pandas' `DataFrame.sample(n, weights, random_state=1)`, which is numpy's legacy
//!   `RandomState(1).choice(len, n, replace=False, p=w/Σw)` over the queries in sorted key
//!   order. [`sample_queries`] reproduces that draw (Mersenne Twister, numpy's 53-bit doubles,
//!   its cumulative-sum search). A sampled query's grades are the rescaled scores of its rows.
//! * a query key is the query fields' values, each followed by [`QUERY_KEY_SEPARATOR`]
//!   (`"red dress_{!@#~}_"` for the single field `query`).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use super::ranking::{relevance_labels, Qrels};
use super::InOrder;

/// What GCL appends to each query field's value to form a query key.
pub const QUERY_KEY_SEPARATOR: &str = "_{!@#~}_";

/// Errors reading Marqo-GS evaluation files.
#[derive(Debug, thiserror::Error)]
pub enum GsError {
    #[error("{path}: {message}")]
    Io { path: String, message: String },
    #[error("{path}: {message}")]
    Format { path: String, message: String },
    #[error("{0}")]
    Invalid(String),
}

fn io(path: &Path, e: impl std::fmt::Display) -> GsError {
    GsError::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

fn format_error(path: &Path, message: impl Into<String>) -> GsError {
    GsError::Format {
        path: path.display().to_string(),
        message: message.into(),
    }
}

/// GCL's query key of a query's field values.
pub fn query_key<S: AsRef<str>>(values: &[S]) -> String {
    values
        .iter()
        .map(|v| format!("{}{QUERY_KEY_SEPARATOR}", v.as_ref()))
        .collect()
}

/// The field values of a GCL query key, when it holds `n` of them.
pub fn query_values(key: &str, n: usize) -> Option<Vec<String>> {
    let body = key.strip_suffix(QUERY_KEY_SEPARATOR)?;
    let parts: Vec<String> = body
        .split(QUERY_KEY_SEPARATOR)
        .map(str::to_string)
        .collect();
    (parts.len() == n).then_some(parts)
}

/// Whether a file holds one JSON object (a Marqo-GS corpus or ground truth) rather than JSONL
/// pairs: it starts with `{` and its first line is not a pair (an object with `query` or
/// `doc`). Only the first 64 KiB are read.
pub fn is_json_object_file(path: &Path) -> Result<bool, GsError> {
    use std::io::Read;
    let f = std::fs::File::open(path).map_err(|e| io(path, e))?;
    let mut head = Vec::new();
    f.take(1 << 16)
        .read_to_end(&mut head)
        .map_err(|e| io(path, e))?;
    let text = String::from_utf8_lossy(&head);
    let t = text.trim_start();
    if !t.starts_with('{') {
        return Ok(false);
    }
    let first = t.lines().next().unwrap_or("");
    let is_pair = match serde_json::from_str::<serde_json::Value>(first) {
        Ok(serde_json::Value::Object(m)) => m.contains_key("query") || m.contains_key("doc"),
        _ => false,
    };
    Ok(!is_pair)
}

/// A corpus: document ids and their fields, in file order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Corpus {
    pub ids: Vec<String>,
    pub docs: Vec<serde_json::Map<String, serde_json::Value>>,
}

impl Corpus {
    /// Reads `corpus_N.json`: `{"<id>": {"image_local": "...", "title": "...", ...}, ...}`.
    pub fn read(path: &Path) -> Result<Self, GsError> {
        let text = std::fs::read_to_string(path).map_err(|e| io(path, e))?;
        Self::parse(&text).map_err(|m| format_error(path, m))
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        let entries: InOrder<serde_json::Value> = serde_json::from_str(text).map_err(|e| {
            if e.is_data() {
                "expected one JSON object: document id → fields".to_string()
            } else {
                format!("not valid JSON: {e}")
            }
        })?;
        let mut out = Self::default();
        // A repeated id keeps its first place and its last fields, as Python's json does.
        let mut seen: HashMap<String, usize> = HashMap::new();
        for (id, fields) in entries.0 {
            match fields {
                serde_json::Value::Object(f) => {
                    if let Some(&i) = seen.get(&id) {
                        out.docs[i] = f;
                    } else {
                        seen.insert(id.clone(), out.ids.len());
                        out.ids.push(id);
                        out.docs.push(f);
                    }
                }
                other => {
                    return Err(format!(
                        "document `{id}`: expected an object of fields, found {}",
                        kind(&other)
                    ))
                }
            }
        }
        Ok(out)
    }

    /// A document field as text: strings as they are, numbers and booleans printed, `null`,
    /// absent and empty values as `None` (GCL gives a missing field weight 0).
    pub fn field(&self, doc: usize, name: &str) -> Option<String> {
        match self.docs.get(doc)?.get(name)? {
            serde_json::Value::String(s) if !s.trim().is_empty() => Some(s.clone()),
            serde_json::Value::Number(n) => Some(n.to_string()),
            serde_json::Value::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    }
}

fn kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// Reads a ground-truth file: `{"<query key>": {"<document id>": grade, ...}, ...}`. Grades
/// may be written as integers or as numbers; they are rounded as GCL's `round()` does (half to
/// even).
pub fn read_ground_truth(path: &Path) -> Result<Qrels, GsError> {
    let text = std::fs::read_to_string(path).map_err(|e| io(path, e))?;
    parse_ground_truth(&text).map_err(|m| format_error(path, m))
}

pub fn parse_ground_truth(text: &str) -> Result<Qrels, String> {
    let v: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"))?;
    let serde_json::Value::Object(map) = v else {
        return Err("expected one JSON object: query → {document → grade}".into());
    };
    let mut q = Qrels::default();
    for (query, docs) in map {
        let serde_json::Value::Object(docs) = docs else {
            return Err(format!(
                "query `{query}`: expected an object document → grade, found {}",
                kind(&docs)
            ));
        };
        let grades = q.0.entry(query.clone()).or_default();
        for (doc, g) in docs {
            let g = g.as_f64().filter(|g| g.is_finite()).ok_or_else(|| {
                format!("query `{query}`, document `{doc}`: grade {g} is not a number")
            })?;
            grades.insert(doc, g.round_ties_even() as i64);
        }
    }
    Ok(q)
}

/// One row of a split's CSV, as GCL's evaluation uses it.
#[derive(Debug, Clone, PartialEq)]
pub struct TestRow {
    /// GCL's query key of the row's query fields.
    pub key: String,
    /// The query fields' values.
    pub query: Vec<String>,
    /// The row's `query_id` column, if there is one.
    pub query_id: Option<String>,
    pub doc: String,
    pub score: f64,
}

/// The rows of a split CSV, with rows GCL could not use counted by reason.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TestRows {
    pub rows: Vec<TestRow>,
    pub skipped: BTreeMap<String, u64>,
}

/// Reads a split CSV (`query_0_product_id_0.csv`, …): the query columns (GCL's left keys),
/// the document id column (`product_id`) and the score column (`score_linear`).
pub fn read_test_rows(
    path: &Path,
    query_columns: &[String],
    doc_column: &str,
    score_column: &str,
) -> Result<TestRows, GsError> {
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .from_path(path)
        .map_err(|e| io(path, e))?;
    let headers: Vec<String> = reader
        .headers()
        .map_err(|e| io(path, e))?
        .iter()
        .map(str::to_string)
        .collect();
    let col = |name: &str| headers.iter().position(|h| h == name);
    let missing = |name: &str| {
        format_error(
            path,
            format!("no `{name}` column (columns: {})", headers.join(", ")),
        )
    };
    let q_cols = query_columns
        .iter()
        .map(|c| col(c).ok_or_else(|| missing(c)))
        .collect::<Result<Vec<_>, _>>()?;
    let d_col = col(doc_column).ok_or_else(|| missing(doc_column))?;
    let s_col = col(score_column).ok_or_else(|| missing(score_column))?;
    let qid_col = col("query_id");
    let mut out = TestRows::default();
    for rec in reader.records() {
        let rec = match rec {
            Ok(r) => r,
            Err(_) => {
                *out.skipped.entry("invalid row".into()).or_default() += 1;
                continue;
            }
        };
        let Some(score) = rec
            .get(s_col)
            .and_then(|s| s.trim().parse::<f64>().ok())
            .filter(|s| s.is_finite())
        else {
            *out.skipped.entry("bad score".into()).or_default() += 1;
            continue;
        };
        let query: Vec<String> = q_cols
            .iter()
            .map(|&c| rec.get(c).unwrap_or("").to_string())
            .collect();
        let doc = rec.get(d_col).unwrap_or("").trim().to_string();
        if doc.is_empty() {
            *out.skipped.entry("no document id".into()).or_default() += 1;
            continue;
        }
        out.rows.push(TestRow {
            key: query_key(&query),
            query,
            query_id: qid_col.and_then(|c| rec.get(c)).map(str::to_string),
            doc,
            score,
        });
    }
    Ok(out)
}

/// Each row's grade: its score rescaled over all rows to 1…100 as GCL does.
pub fn grades(rows: &[TestRow]) -> Vec<i64> {
    relevance_labels(&rows.iter().map(|r| r.score).collect::<Vec<_>>())
}

/// The test queries GCL evaluates: all distinct query keys when `n` is `None` or not below
/// their number, otherwise `n` of them drawn with `seed` (GCL: 1) as pandas' weighted
/// `sample` draws them (see the module documentation). Returned by descending weight, then in
/// drawing order (GCL sorts by weight with an unstable sort; the set is the same).
pub fn sample_queries(rows: &[TestRow], n: Option<usize>, seed: u32) -> Vec<String> {
    let mut weight: BTreeMap<&str, u64> = BTreeMap::new();
    for (r, g) in rows.iter().zip(grades(rows)) {
        *weight.entry(&r.key).or_default() += g.max(0) as u64;
    }
    let keys: Vec<&str> = weight.keys().copied().collect();
    let w: Vec<u64> = weight.values().copied().collect();
    let chosen: Vec<usize> = match n {
        Some(n) if n < keys.len() => weighted_sample(&w, n, seed),
        _ => (0..keys.len()).collect(),
    };
    let mut order: Vec<usize> = (0..chosen.len()).collect();
    order.sort_by(|&a, &b| w[chosen[b]].cmp(&w[chosen[a]]).then(a.cmp(&b)));
    order
        .into_iter()
        .map(|i| keys[chosen[i]].to_string())
        .collect()
}

/// GCL's ground truth of `queries` from the CSV rows: each query's rows by descending grade,
/// the first `top_k` of them, document → grade (a document listed twice keeps the later, lower
/// grade, as GCL's dictionary does).
pub fn ground_truth(rows: &[TestRow], queries: &[String], top_k: usize) -> Qrels {
    let g = grades(rows);
    let mut by_query: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, r) in rows.iter().enumerate() {
        by_query.entry(&r.key).or_default().push(i);
    }
    let mut q = Qrels::default();
    for key in queries {
        let mut idx = by_query.get(key.as_str()).cloned().unwrap_or_default();
        idx.sort_by(|&a, &b| g[b].cmp(&g[a]));
        let docs = q.0.entry(key.clone()).or_default();
        for &i in idx.iter().take(top_k) {
            docs.insert(rows[i].doc.clone(), g[i]);
        }
    }
    q
}

/// numpy's legacy `RandomState` generator: MT19937 seeded with `init_genrand`, doubles from
/// two 32-bit outputs (53 bits).
pub struct NumpyRandomState {
    mt: [u32; 624],
    pos: usize,
}

impl NumpyRandomState {
    pub fn new(seed: u32) -> Self {
        let mut mt = [0u32; 624];
        mt[0] = seed;
        for i in 1..624 {
            mt[i] = 1_812_433_253u32
                .wrapping_mul(mt[i - 1] ^ (mt[i - 1] >> 30))
                .wrapping_add(i as u32);
        }
        Self { mt, pos: 624 }
    }

    fn refill(&mut self) {
        for k in 0..624 {
            let y = (self.mt[k] & 0x8000_0000) | (self.mt[(k + 1) % 624] & 0x7fff_ffff);
            let mag = if y & 1 == 1 { 0x9908_b0df } else { 0 };
            self.mt[k] = self.mt[(k + 397) % 624] ^ (y >> 1) ^ mag;
        }
        self.pos = 0;
    }

    pub fn next_u32(&mut self) -> u32 {
        if self.pos >= 624 {
            self.refill();
        }
        let mut y = self.mt[self.pos];
        self.pos += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }

    /// `random_sample()`: a double in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        let a = (self.next_u32() >> 5) as f64;
        let b = (self.next_u32() >> 6) as f64;
        (a * 67_108_864.0 + b) / 9_007_199_254_740_992.0
    }
}

/// `n` distinct indices drawn with probability proportional to `weights`, as pandas'
/// `sample(n, weights=w, random_state=seed)` draws them: numpy's
/// `RandomState(seed).choice(len, n, replace=False, p=w/Σw)`, which draws `n − found` uniforms
/// per round, zeroes the found indices' probabilities, searches the renormalised cumulative
/// sums and keeps each new index at its first draw. Indices with weight 0 are never drawn;
/// `n` is capped at the number of positive weights.
pub fn weighted_sample(weights: &[u64], n: usize, seed: u32) -> Vec<usize> {
    let n = n.min(weights.iter().filter(|&&w| w > 0).count());
    let total: u64 = weights.iter().sum();
    if n == 0 || total == 0 {
        return Vec::new();
    }
    let mut p: Vec<f64> = weights.iter().map(|&w| w as f64 / total as f64).collect();
    let mut rng = NumpyRandomState::new(seed);
    let mut found: Vec<usize> = Vec::with_capacity(n);
    let mut cdf = vec![0.0f64; p.len()];
    while found.len() < n {
        let x: Vec<f64> = (0..n - found.len()).map(|_| rng.next_f64()).collect();
        for &f in &found {
            p[f] = 0.0;
        }
        let mut acc = 0.0;
        for (c, &pi) in cdf.iter_mut().zip(&p) {
            acc += pi;
            *c = acc;
        }
        let last = acc;
        for c in cdf.iter_mut() {
            *c /= last;
        }
        let mut new: Vec<usize> = Vec::new();
        for xi in x {
            let i = cdf.partition_point(|&c| c <= xi).min(p.len() - 1);
            if !new.contains(&i) {
                new.push(i);
            }
        }
        found.extend(new);
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_state_matches_numpys_first_values() {
        // numpy: RandomState(1).random_sample(3), RandomState(0).random_sample(),
        // RandomState(5489).randint(2**32) (MT19937's reference seed: 3499211612).
        let mut r = NumpyRandomState::new(1);
        let v: Vec<f64> = (0..3).map(|_| r.next_f64()).collect();
        assert_eq!(
            v,
            [
                0.417022004702574,
                0.7203244934421581,
                0.00011437481734488664
            ]
        );
        assert_eq!(NumpyRandomState::new(0).next_f64(), 0.5488135039273248);
        assert_eq!(NumpyRandomState::new(5489).next_u32(), 3_499_211_612);
    }

    #[test]
    fn json_object_files_are_told_from_jsonl() {
        let dir = std::env::temp_dir().join(format!("gclip-gs-detect-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let check = |name: &str, text: &str| {
            let p = dir.join(name);
            std::fs::write(&p, text).unwrap();
            is_json_object_file(&p).unwrap()
        };
        assert!(check(
            "corpus.json",
            r#"{"9": {"title": "x"}, "10": {"title": "y"}}"#
        ));
        assert!(check(
            "pretty.json",
            "{\n  \"9\": {\n    \"title\": \"x\"\n  }\n}\n"
        ));
        assert!(!check(
            "pairs.jsonl",
            "{\"query\": {\"text\": \"a\"}, \"doc\": {\"image\": \"a.png\"}}\n{\"query\": {\"text\": \"b\"}, \"doc\": {\"image\": \"b.png\"}}\n"
        ));
        assert!(!check(
            "one.jsonl",
            r#"{"query": {"text": "a"}, "doc": {"image": "a.png"}}"#
        ));
        assert!(!check("data.csv", "query,product_id\n"));
        assert!(is_json_object_file(&dir.join("absent.json")).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn query_keys_round_trip() {
        let k = query_key(&["red dress"]);
        assert_eq!(k, "red dress_{!@#~}_");
        assert_eq!(query_values(&k, 1), Some(vec!["red dress".to_string()]));
        let k2 = query_key(&["a", "b"]);
        assert_eq!(k2, "a_{!@#~}_b_{!@#~}_");
        assert_eq!(query_values(&k2, 2), Some(vec!["a".into(), "b".into()]));
        assert_eq!(query_values(&k2, 1), None);
        assert_eq!(query_values("red dress", 1), None);
    }

    #[test]
    fn corpus_keeps_file_order_and_reads_fields() {
        let c = Corpus::parse(
            r#"{"9": {"image_local": "images/9.jpg", "title": "Red dress"},
                "10": {"image_local": "images/10.jpg", "title": null, "price": 12.5}}"#,
        )
        .unwrap();
        assert_eq!(c.ids, ["9", "10"]);
        assert_eq!(c.field(0, "title").as_deref(), Some("Red dress"));
        assert_eq!(c.field(1, "title"), None);
        assert_eq!(c.field(1, "price").as_deref(), Some("12.5"));
        assert_eq!(c.field(1, "missing"), None);
        let dup = Corpus::parse(r#"{"b": {"t": "1"}, "a": {"t": "2"}, "b": {"t": "3"}}"#).unwrap();
        assert_eq!(dup.ids, ["b", "a"]);
        assert_eq!(dup.field(0, "t").as_deref(), Some("3"));
        assert!(Corpus::parse(r#"{"9": "x"}"#)
            .unwrap_err()
            .contains("document `9`"));
        assert!(Corpus::parse("[1]").is_err());
    }

    #[test]
    fn ground_truth_file_is_read_with_gcl_rounding() {
        let q = parse_ground_truth(
            r#"{"red dress_{!@#~}_": {"9": 100, "10": 2.5, "11": 3.5}, "hat_{!@#~}_": {}}"#,
        )
        .unwrap();
        let d = &q.0["red dress_{!@#~}_"];
        assert_eq!((d["9"], d["10"], d["11"]), (100, 2, 4));
        assert!(q.0["hat_{!@#~}_"].is_empty());
        assert!(parse_ground_truth(r#"{"q": {"d": "high"}}"#)
            .unwrap_err()
            .contains("grade"));
        assert!(parse_ground_truth(r#"{"q": [1]}"#).is_err());
    }

    fn row(q: &str, doc: &str, score: f64) -> TestRow {
        TestRow {
            key: query_key(&[q]),
            query: vec![q.into()],
            query_id: None,
            doc: doc.into(),
            score,
        }
    }

    #[test]
    fn ground_truth_from_rows_rescales_and_keeps_top_k() {
        let rows = vec![
            row("a", "d1", 0.0),
            row("a", "d2", 10.0),
            row("a", "d3", 5.0),
            row("b", "d1", 10.0),
            // d2 twice for b: GCL's dictionary keeps the later (lower) grade.
            row("b", "d2", 10.0),
            row("b", "d2", 0.0),
        ];
        // int(((s − 0)/10)·99 + 1): 0 → 1, 5 → 50, 10 → 100.
        assert_eq!(grades(&rows), [1, 100, 50, 100, 100, 1]);
        let keys = vec![query_key(&["a"]), query_key(&["b"])];
        let q = ground_truth(&rows, &keys, 2);
        let a = &q.0[&keys[0]];
        assert_eq!(a.len(), 2, "top 2 of 3 rows");
        assert_eq!((a["d2"], a["d3"]), (100, 50));
        let b = &q.0[&keys[1]];
        assert_eq!((b["d1"], b["d2"]), (100, 100), "top 2 rows: both grade 100");
        let q3 = ground_truth(&rows, &keys, 3);
        assert_eq!(q3.0[&keys[1]]["d2"], 1);
    }

    #[test]
    fn weighted_sample_follows_numpy_choice() {
        // Expected values from numpy 2.4 (`RandomState(seed).choice(len(w), n, replace=False,
        // p=w/w.sum())`) and, where pandas 3.1 accepts the weights, its
        // `DataFrame.sample(n, weights=w, random_state=seed)` (the same draw).
        assert_eq!(weighted_sample(&[1, 2, 3, 4, 10], 3, 1), [3, 4, 0]);
        // 20 of 50: the first round draws 15 distinct indices, later rounds the rest.
        let w: Vec<u64> = (0..50).map(|i| (i * 37) % 100 + 1).collect();
        assert_eq!(
            weighted_sample(&w, 20, 1),
            [21, 35, 0, 15, 8, 5, 9, 17, 20, 27, 34, 10, 43, 2, 32, 41, 48, 18, 37, 45]
        );
        assert_eq!(weighted_sample(&w, 5, 7), [5, 37, 23, 35, 48]);
        // n above the number of positive weights: each of them once, zero weights never.
        assert_eq!(weighted_sample(&[5, 0, 1, 7], 10, 3), [3, 0, 2]);
        assert!(weighted_sample(&[0, 0], 1, 1).is_empty());
    }

    #[test]
    fn sample_queries_draws_by_summed_grade_and_orders_by_weight() {
        let mut rows = Vec::new();
        for (q, n) in [("a", 1), ("b", 3), ("c", 2), ("d", 6)] {
            for i in 0..n {
                rows.push(row(q, &format!("{q}{i}"), 10.0));
            }
        }
        rows.push(row("e", "e0", 0.0));
        // Grades: 100 for every row but e's (1): weights a 100, b 300, c 200, d 600, e 1.
        let first = |keys: Vec<String>| -> Vec<String> {
            keys.iter().map(|k| k[..1].to_string()).collect()
        };
        assert_eq!(
            first(sample_queries(&rows, None, 1)),
            ["d", "b", "c", "a", "e"]
        );
        assert_eq!(first(sample_queries(&rows, Some(9), 1)).len(), 5);
        // pandas: DataFrame.sample(2, weights=[100, 300, 200, 600, 1], random_state=1) over
        // a…e, sorted by weight: d, c.
        assert_eq!(first(sample_queries(&rows, Some(2), 1)), ["d", "c"]);
    }
}

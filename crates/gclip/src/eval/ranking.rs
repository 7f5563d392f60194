//! Ranking metrics with graded relevance, computed as GCL's evaluation (Marqo, `eval_gs_v1.py`)
//! computes them, and TREC `qrels` / `run` files so results of other systems can be scored the
//! same way.
//!
//! | key | definition | ties | averaged over |
//! | --- | --- | --- | --- |
//! | `ndcg@k` | trec_eval `ndcg_cut`: gain = grade, discount `log2(rank + 1)`, ideal from all judged grades | score descending, then document id descending (trec_eval) | queries in both qrels and run (as pytrec_eval, BEIR) |
//! | `map@k` | trec_eval `map_cut`: Σ precision at relevant ranks ≤ k / number relevant | as above | as above |
//! | `recall@k`, `p@k` | relevant retrieved in the top k / number relevant, / k | as above | as above |
//! | `mrr@k` | BEIR: 1 / rank of the first relevant document in the top k | score descending, run order | all qrels queries |
//! | `err` | GCL: `Σ_r p_stop·R_r / r`, `R = (2^g − 1)/2^g_max`, over the whole run list | score descending, run order | all qrels queries |
//! | `rbp@p` | GCL: `(1 − p) Σ_r (g/g_max)·p^(r−1)` | score descending, run order | all qrels queries |
//!
//! A document is relevant when its grade is ≥ 1. A query of the qrels missing from the run
//! scores 0 in the metrics averaged over all qrels queries and is left out of the others (as
//! `trec_eval` without `-c`); a query listed in the run with no results is evaluated (0).
//! Values are not rounded (BEIR rounds to 5 decimals).

use super::InOrder;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// Errors reading qrels or runs.
#[derive(Debug, thiserror::Error)]
pub enum RankingError {
    #[error("{path}: {message}")]
    Io { path: String, message: String },
    #[error("{path}, line {line}: {message}")]
    Parse {
        path: String,
        line: usize,
        message: String,
    },
}

/// Relevance grades: query → document → grade.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Qrels(pub BTreeMap<String, HashMap<String, i64>>);

/// Retrieved documents per query with their scores, in the order given.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Run(pub BTreeMap<String, Vec<(String, f64)>>);

fn read(path: &Path) -> Result<String, RankingError> {
    std::fs::read_to_string(path).map_err(|e| RankingError::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    })
}

impl Qrels {
    /// Parses TREC qrels: `query iteration document grade` per line.
    pub fn parse(text: &str, name: &str) -> Result<Self, RankingError> {
        let mut q: BTreeMap<String, HashMap<String, i64>> = BTreeMap::new();
        for (i, line) in text.lines().enumerate() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.is_empty() {
                continue;
            }
            let bad = |m: &str| RankingError::Parse {
                path: name.into(),
                line: i + 1,
                message: m.into(),
            };
            if f.len() != 4 {
                return Err(bad("expected `query iteration document grade`"));
            }
            let grade: i64 = f[3]
                .parse()
                .map_err(|_| bad(&format!("grade `{}` is not an integer", f[3])))?;
            q.entry(f[0].to_string())
                .or_default()
                .insert(f[2].to_string(), grade);
        }
        Ok(Self(q))
    }

    pub fn read(path: &Path) -> Result<Self, RankingError> {
        Self::parse(&read(path)?, &path.display().to_string())
    }

    /// The grades as TREC qrels, each query's documents in id order.
    pub fn to_trec(&self) -> String {
        let mut out = String::new();
        for (q, docs) in &self.0 {
            let mut docs: Vec<_> = docs.iter().collect();
            docs.sort();
            for (d, g) in docs {
                out.push_str(&format!("{q} 0 {d} {g}\n"));
            }
        }
        out
    }

    /// The grades as one JSON object `{query: {document: grade}}`, the form of Marqo-GS ground
    /// truth ([`super::marqo_gs::read_ground_truth`] reads it back).
    pub fn to_json(&self) -> String {
        nested_json(
            self.0
                .iter()
                .map(|(q, docs)| (q, docs.iter().map(|(d, g)| (d, *g)))),
        )
    }
}

/// `{query: {document: value}}` as one JSON object, keys sorted: what runs and qrels are saved as
/// when query keys contain spaces (Marqo-GS keys do), which the TREC formats cannot hold.
fn nested_json<'a, D, V>(by_query: impl Iterator<Item = (&'a String, D)>) -> String
where
    D: IntoIterator<Item = (&'a String, V)>,
    V: Into<serde_json::Value>,
{
    let mut outer = serde_json::Map::new();
    for (q, docs) in by_query {
        let mut inner = serde_json::Map::new();
        for (d, v) in docs {
            inner.insert(d.clone(), v.into());
        }
        outer.insert(q.clone(), serde_json::Value::Object(inner));
    }
    serde_json::Value::Object(outer).to_string()
}

impl Run {
    /// Parses a TREC run (`query Q0 document rank score tag`) or, when the text starts with
    /// `{`, a JSON object `{query: {document: score}}` as pytrec_eval and BEIR use (which can
    /// hold a query with no results). Order is kept as given.
    pub fn parse(text: &str, name: &str) -> Result<Self, RankingError> {
        if text.trim_start().starts_with('{') {
            return Self::parse_json(text, name);
        }
        let mut r: BTreeMap<String, Vec<(String, f64)>> = BTreeMap::new();
        let mut seen = std::collections::HashSet::new();
        for (i, line) in text.lines().enumerate() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.is_empty() {
                continue;
            }
            let bad = |m: String| RankingError::Parse {
                path: name.into(),
                line: i + 1,
                message: m,
            };
            if f.len() != 6 {
                return Err(bad("expected `query Q0 document rank score tag`".into()));
            }
            let score: f64 = f[4]
                .parse()
                .ok()
                .filter(|s: &f64| s.is_finite())
                .ok_or_else(|| bad(format!("score `{}` is not a finite number", f[4])))?;
            if !seen.insert((f[0].to_string(), f[2].to_string())) {
                return Err(bad(format!(
                    "document {} listed twice for query {}",
                    f[2], f[0]
                )));
            }
            r.entry(f[0].to_string())
                .or_default()
                .push((f[2].to_string(), score));
        }
        Ok(Self(r))
    }

    fn parse_json(text: &str, name: &str) -> Result<Self, RankingError> {
        // Entries in file order: a plain map would sort them and lose the order of ties.
        let parsed: InOrder<InOrder<f64>> =
            serde_json::from_str(text).map_err(|e| RankingError::Parse {
                path: name.into(),
                line: e.line(),
                message: e.to_string(),
            })?;
        Ok(Self(parsed.0.into_iter().map(|(q, s)| (q, s.0)).collect()))
    }

    pub fn read(path: &Path) -> Result<Self, RankingError> {
        Self::parse(&read(path)?, &path.display().to_string())
    }

    /// The run as a TREC run file.
    pub fn to_trec(&self, tag: &str) -> String {
        let mut out = String::new();
        for (q, docs) in &self.0 {
            for (i, (d, s)) in docs.iter().enumerate() {
                out.push_str(&format!("{q} Q0 {d} {} {s} {tag}\n", i + 1));
            }
        }
        out
    }

    /// The run as one JSON object `{query: {document: score}}`, as pytrec_eval writes runs
    /// ([`Run::parse`] reads it back).
    pub fn to_json(&self) -> String {
        nested_json(
            self.0
                .iter()
                .map(|(q, docs)| (q, docs.iter().map(|(d, s)| (d, *s)))),
        )
    }
}

/// Which metrics to compute.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricSet {
    /// Cut-offs of nDCG, MAP, recall, precision and MRR.
    pub cutoffs: Vec<usize>,
    /// Persistence values of RBP.
    pub rbp: Vec<f64>,
}

impl Default for MetricSet {
    /// GCL's cut-offs (1 … 1000) and RBP at 0.7, 0.8, 0.9.
    fn default() -> Self {
        Self {
            cutoffs: vec![
                1, 2, 3, 4, 5, 6, 8, 10, 12, 20, 30, 40, 50, 60, 70, 80, 90, 100, 200, 500, 1000,
            ],
            rbp: vec![0.7, 0.8, 0.9],
        }
    }
}

/// trec_eval's order: score descending, then document id descending.
fn trec_order(docs: &[(String, f64)]) -> Vec<&(String, f64)> {
    let mut v: Vec<&(String, f64)> = docs.iter().collect();
    v.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| b.0.cmp(&a.0)));
    v
}

/// Python's `sorted(key=score, reverse=True)`: score descending, ties in run order.
fn stable_order(docs: &[(String, f64)]) -> Vec<&(String, f64)> {
    let mut v: Vec<&(String, f64)> = docs.iter().collect();
    v.sort_by(|a, b| b.1.total_cmp(&a.1));
    v
}

/// Per-query values of the trec_eval family for one query.
fn trec_query(
    rels: &HashMap<String, i64>,
    docs: &[(String, f64)],
    k: usize,
) -> (f64, f64, f64, f64) {
    let ranked = trec_order(docs);
    let num_rel = rels.values().filter(|&&g| g >= 1).count();
    let grade = |d: &str| rels.get(d).copied().unwrap_or(0);
    let (mut dcg, mut rel_found, mut ap) = (0.0, 0usize, 0.0);
    for (i, (d, _)) in ranked.iter().take(k).enumerate() {
        let g = grade(d);
        if g > 0 {
            dcg += g as f64 / ((i + 2) as f64).log2();
        }
        if g >= 1 {
            rel_found += 1;
            ap += rel_found as f64 / (i + 1) as f64;
        }
    }
    let mut ideal: Vec<i64> = rels.values().copied().filter(|&g| g > 0).collect();
    ideal.sort_unstable_by(|a, b| b.cmp(a));
    let idcg: f64 = ideal
        .iter()
        .take(k)
        .enumerate()
        .map(|(i, &g)| g as f64 / ((i + 2) as f64).log2())
        .sum();
    let ndcg = if idcg > 0.0 { dcg / idcg } else { 0.0 };
    let (map, recall) = if num_rel > 0 {
        (ap / num_rel as f64, rel_found as f64 / num_rel as f64)
    } else {
        (0.0, 0.0)
    };
    (ndcg, map, recall, rel_found as f64 / k as f64)
}

/// GCL's ERR of one query.
fn err_query(rels: &HashMap<String, i64>, docs: &[(String, f64)]) -> f64 {
    let Some(&max) = rels.values().max() else {
        return 0.0;
    };
    let denom = 2f64.powi(max as i32);
    let (mut err, mut p_stop) = (0.0, 1.0);
    for (r, (d, _)) in stable_order(docs).into_iter().enumerate() {
        let g = rels.get(d).copied().unwrap_or(0);
        let prob = (2f64.powi(g as i32) - 1.0) / denom;
        err += p_stop * prob / (r + 1) as f64;
        p_stop *= 1.0 - prob;
    }
    err
}

/// GCL's RBP of one query (0 when no document has a positive grade).
fn rbp_query(rels: &HashMap<String, i64>, docs: &[(String, f64)], p: f64) -> f64 {
    let max = rels.values().copied().max().unwrap_or(0);
    if max <= 0 {
        return 0.0;
    }
    let mut total = 0.0;
    let mut w = 1.0;
    for (d, _) in stable_order(docs) {
        total += rels.get(d).copied().unwrap_or(0) as f64 / max as f64 * w;
        w *= p;
    }
    total * (1.0 - p)
}

/// BEIR's reciprocal rank of one query at cut-off `k`.
fn mrr_query(rels: &HashMap<String, i64>, docs: &[(String, f64)], k: usize) -> f64 {
    stable_order(docs)
        .into_iter()
        .take(k)
        .position(|(d, _)| rels.get(d).is_some_and(|&g| g > 0))
        .map_or(0.0, |r| 1.0 / (r + 1) as f64)
}

/// Formats an RBP key: `rbp@0.8`.
pub fn rbp_key(p: f64) -> String {
    format!("rbp@{p}")
}

/// Every metric of `set`, averaged as the module documentation says. Keys: `ndcg@k`, `map@k`,
/// `recall@k`, `p@k`, `mrr@k`, `err`, `rbp@p`, and `queries` (qrels queries) and
/// `queries_evaluated` (those also in the run).
pub fn evaluate(qrels: &Qrels, run: &Run, set: &MetricSet) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    type Judged<'a> = (&'a HashMap<String, i64>, &'a Vec<(String, f64)>);
    let both: Vec<Judged> = qrels
        .0
        .iter()
        .filter_map(|(q, rels)| run.0.get(q).map(|docs| (rels, docs)))
        .collect();
    let n_all = qrels.0.len().max(1) as f64;
    let n_both = both.len().max(1) as f64;
    let empty = Vec::new();
    let docs_of = |q: &str| run.0.get(q).unwrap_or(&empty);
    for &k in &set.cutoffs {
        let (mut nd, mut ma, mut re, mut pr) = (0.0, 0.0, 0.0, 0.0);
        for (rels, docs) in &both {
            let (a, b, c, d) = trec_query(rels, docs, k);
            nd += a;
            ma += b;
            re += c;
            pr += d;
        }
        out.insert(format!("ndcg@{k}"), nd / n_both);
        out.insert(format!("map@{k}"), ma / n_both);
        out.insert(format!("recall@{k}"), re / n_both);
        out.insert(format!("p@{k}"), pr / n_both);
        let mrr: f64 = qrels
            .0
            .iter()
            .map(|(q, rels)| mrr_query(rels, docs_of(q), k))
            .sum();
        out.insert(format!("mrr@{k}"), mrr / n_all);
    }
    let err: f64 = qrels
        .0
        .iter()
        .map(|(q, rels)| err_query(rels, docs_of(q)))
        .sum();
    out.insert("err".into(), err / n_all);
    for &p in &set.rbp {
        let v: f64 = qrels
            .0
            .iter()
            .map(|(q, rels)| rbp_query(rels, docs_of(q), p))
            .sum();
        out.insert(rbp_key(p), v / n_all);
    }
    out.insert("queries".into(), qrels.0.len() as f64);
    out.insert("queries_evaluated".into(), both.len() as f64);
    out
}

/// GCL's relevance labels: scores rescaled linearly over the whole test set to `[1, 100]` and
/// truncated to integers (`((s − min)/(max − min))·99 + 1`, then `int`); all 1 when the scores
/// do not vary.
pub fn relevance_labels(scores: &[f64]) -> Vec<i64> {
    let min = scores.iter().copied().fold(f64::INFINITY, f64::min);
    let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    scores
        .iter()
        .map(|&s| {
            if max > min {
                (((s - min) / (max - min)) * 99.0 + 1.0) as i64
            } else {
                1
            }
        })
        .collect()
}

/// GCL's qrels of graded pairs `(query id, document id, score)`: the scores become relevance
/// labels over the whole set ([`relevance_labels`]); a pair listed more than once keeps its
/// highest label.
pub fn graded_qrels(pairs: impl IntoIterator<Item = (String, String, f64)>) -> Qrels {
    let pairs: Vec<(String, String, f64)> = pairs.into_iter().collect();
    let labels = relevance_labels(&pairs.iter().map(|p| p.2).collect::<Vec<_>>());
    let mut qrels = Qrels::default();
    for ((query, doc, _), l) in pairs.into_iter().zip(labels) {
        let g = qrels.0.entry(query).or_default().entry(doc).or_insert(l);
        *g = (*g).max(l);
    }
    qrels
}

/// The qrels, run and metrics of a ranking evaluation.
pub struct RankingEval {
    pub qrels: Qrels,
    pub run: Run,
    pub metrics: BTreeMap<String, f64>,
}

/// The top `k` documents of each query by dot product of embedding rows (`dim` values each),
/// as a [`Run`]. Ties keep document order.
pub fn run_from_embeddings(
    query_ids: &[String],
    queries: &[f32],
    doc_ids: &[String],
    docs: &[f32],
    dim: usize,
    k: usize,
) -> Run {
    let docs: Vec<&[f32]> = docs.chunks_exact(dim).collect();
    let mut out = BTreeMap::new();
    for (q, qv) in query_ids.iter().zip(queries.chunks_exact(dim)) {
        let mut scored: Vec<(usize, f32)> = docs
            .iter()
            .enumerate()
            .map(|(j, d)| (j, qv.iter().zip(*d).map(|(a, b)| a * b).sum()))
            .collect();
        scored.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        scored.truncate(k);
        out.insert(
            q.clone(),
            scored
                .into_iter()
                .map(|(j, s)| (doc_ids[j].clone(), s as f64))
                .collect(),
        );
    }
    Run(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixtures() -> std::path::PathBuf {
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/ranking")
    }

    fn expected() -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("expected.json")).unwrap())
            .unwrap()
    }

    #[test]
    fn matches_pytrec_eval_beir_and_gcl_on_the_fixture() {
        let qrels = Qrels::read(&fixtures().join("qrels.txt")).unwrap();
        let run = Run::read(&fixtures().join("run.json")).unwrap();
        let set = MetricSet {
            cutoffs: vec![1, 2, 3, 5, 10, 20, 100],
            rbp: vec![0.7, 0.8, 0.9],
        };
        let got = evaluate(&qrels, &run, &set);
        let want = expected();
        let mut checked = 0;
        for (k, v) in want.as_object().unwrap() {
            if k.starts_with('_') {
                continue;
            }
            let w = v.as_f64().unwrap();
            let g = got[k];
            assert!((g - w).abs() < 1e-12, "{k}: gclip {g}, reference {w}");
            checked += 1;
        }
        assert_eq!(checked, 7 * 5 + 1 + 3);
        assert_eq!(
            got["queries_evaluated"],
            want["_evaluated_queries"].as_f64().unwrap()
        );
        // Per query, as pytrec_eval returns it.
        for (q, w) in want["_per_query_ndcg@10"].as_object().unwrap() {
            let (nd, ..) = trec_query(&qrels.0[q], &run.0[q], 10);
            assert!((nd - w.as_f64().unwrap()).abs() < 1e-12, "{q}");
        }
        // The TREC run file has the same results except the query with an empty list, which a
        // run file cannot express: that query is then left out of the trec_eval family.
        let trec = Run::read(&fixtures().join("run.txt")).unwrap();
        assert_eq!(trec.0.len() + 1, run.0.len());
        let t = evaluate(&qrels, &trec, &set);
        assert_eq!(t["queries_evaluated"], got["queries_evaluated"] - 1.0);
        assert_eq!(t["err"], got["err"]);
        assert!(
            (t["ndcg@10"] * (got["queries_evaluated"] - 1.0)
                - got["ndcg@10"] * got["queries_evaluated"])
                .abs()
                < 1e-12
        );
    }

    #[test]
    fn hand_computed_cases_and_tie_orders() {
        let qrels = Qrels::parse("q 0 a 2\nq 0 b 1\nq 0 c 0\n", "x").unwrap();
        // Ties at 0.5: trec_eval order is d, b, a (id descending); run order is a, b, d.
        let run = Run::parse(r#"{"q": {"a": 0.5, "b": 0.5, "c": 0.9, "d": 0.5}}"#, "x").unwrap();
        let m = evaluate(
            &qrels,
            &run,
            &MetricSet {
                cutoffs: vec![1, 2, 3, 4],
                rbp: vec![0.5],
            },
        );
        let idcg = 2.0 + 1.0 / 3f64.log2();
        assert!((m["ndcg@3"] - (1.0 / 4f64.log2()) / idcg).abs() < 1e-12);
        assert!((m["ndcg@4"] - (1.0 / 4f64.log2() + 2.0 / 5f64.log2()) / idcg).abs() < 1e-12);
        assert_eq!(m["p@2"], 0.0);
        assert!((m["map@4"] - (1.0 / 3.0 + 2.0 / 4.0) / 2.0).abs() < 1e-12);
        // MRR in run order: c (0), a (relevant) → 1/2.
        assert_eq!(m["mrr@2"], 0.5);
        assert_eq!(m["mrr@1"], 0.0);
        // ERR: ranks c, a, b, d; R = (2^g − 1)/4: 0, 3/4, 1/4, 0.
        let err = 0.75 / 2.0 + (1.0 - 0.75) * 0.25 / 3.0;
        assert!((m["err"] - err).abs() < 1e-12);
        let rbp = 0.5 * (0.0 + 1.0 * 0.5 + 0.5 * 0.25 + 0.0);
        assert!((m[&rbp_key(0.5)] - rbp).abs() < 1e-12);
        assert_eq!(rbp_key(0.8), "rbp@0.8");
        // Bad input is reported with its line.
        assert!(matches!(
            Qrels::parse("q 0 a\n", "f"),
            Err(RankingError::Parse { line: 1, .. })
        ));
        assert!(matches!(
            Run::parse("q Q0 a 1 0.5 t\nq Q0 a 2 0.4 t\n", "f"),
            Err(RankingError::Parse { line: 2, .. })
        ));
        assert!(Run::parse("q Q0 a 1 nan t\n", "f").is_err());
    }

    #[test]
    fn labels_and_embedding_runs() {
        assert_eq!(
            relevance_labels(&[0.0, 0.5, 1.0, 0.999]),
            vec![1, 50, 100, 99]
        );
        assert_eq!(relevance_labels(&[3.0, 3.0]), vec![1, 1]);
        let run = run_from_embeddings(
            &["q1".into()],
            &[1.0, 0.0],
            &["a".into(), "b".into(), "c".into()],
            &[0.0, 1.0, 1.0, 0.0, 1.0, 0.0],
            2,
            2,
        );
        assert_eq!(
            run.0["q1"],
            vec![("b".to_string(), 1.0), ("c".to_string(), 1.0)]
        );
        let trec = run.to_trec("t");
        assert_eq!(Run::parse(&trec, "t").unwrap(), run);
    }
}

//! Training data: query–document pairs with relevance scores, from a generic JSONL file or the
//! Marqo-GS-10M layout, validated once at load.
//!
//! * JSONL: one object per line, `{"query": {FIELD: value, …}, "doc": {FIELD: value, …},
//!   "score": x, "rank": n, "query_id": "…", "doc_id": "…"}`. Field values are strings: text, or
//!   an image path (relative paths are taken from `image_root`, else from the file's folder).
//!   `score` defaults to 1, `rank` is needed only by the reciprocal weighting, the ids default
//!   to the content of the side (two pairs with identical query fields share the query).
//! * GS: a split CSV of Marqo-GS-10M (`query_0_product_id_0.csv`, …) with the columns `query`,
//!   `query_id` (optional), `product_id`, `title`, `image_local`, `score_linear`,
//!   `score_reciprocal`, `position`. A query field `query` (or `text`) reads column `query`, a
//!   document field `image` reads `image_local`; any other field reads the column of its name.
//!   The score column is chosen by `score_column` (default `score_linear`); `position` is the
//!   rank.
//!
//! Rows that cannot be used (invalid JSON, a missing or empty text, an image file that does not
//! exist, a NaN or non-numeric score, no rank where one is needed) are skipped and counted by
//! reason; a few examples with line numbers are kept for the report. Images that exist but
//! cannot be decoded are found by the loader and counted there.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::loss::{FieldKind, FieldSpec, GclSpec, ScoreRange, ScoreToWeight};
use super::TrainError;

/// One field's value in a pair.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldValue {
    Text(String),
    Image(PathBuf),
}

/// A training pair: field values in the order of the objective's field lists (`None`: absent).
#[derive(Debug, Clone, PartialEq)]
pub struct Pair {
    pub query: Vec<Option<FieldValue>>,
    pub doc: Vec<Option<FieldValue>>,
    pub score: f64,
    pub rank: Option<u32>,
    pub query_key: u64,
    pub doc_key: u64,
    /// 1-based line (JSONL) or record (CSV) number, for messages.
    pub line: usize,
}

/// Rows skipped, by reason, with a few examples.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SkipReport {
    pub counts: BTreeMap<String, u64>,
    pub examples: Vec<String>,
}

impl SkipReport {
    pub fn add(&mut self, reason: &str, line: usize, detail: &str) {
        *self.counts.entry(reason.to_string()).or_default() += 1;
        if self.examples.len() < 10 {
            self.examples
                .push(format!("line {line}: {reason}: {detail}"));
        }
    }

    pub fn total(&self) -> u64 {
        self.counts.values().sum()
    }
}

/// The pairs of a data file.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub pairs: Vec<Pair>,
    pub rows_read: u64,
    pub skipped: SkipReport,
    /// Range of the scores kept (for the linear weighting).
    pub score_range: ScoreRange,
}

/// The file layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Layout {
    Jsonl,
    Gs,
}

impl Layout {
    /// The layout of a data file by its name: Marqo-GS for a `.csv` file, JSONL otherwise.
    pub fn of_path(path: &Path) -> Self {
        if path.extension().is_some_and(|e| e == "csv") {
            Layout::Gs
        } else {
            Layout::Jsonl
        }
    }
}

/// Where the data is and how to read it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSpec {
    pub layout: Layout,
    pub path: PathBuf,
    /// Folder that relative image paths are relative to.
    #[serde(default)]
    pub image_root: Option<PathBuf>,
    /// GS: the column holding the score.
    #[serde(default = "default_score_column")]
    pub score_column: String,
}

fn default_score_column() -> String {
    "score_linear".into()
}

/// FNV-1a, stable across platforms and versions, for query and document identities.
pub fn stable_hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

struct Ctx<'a> {
    spec: &'a GclSpec,
    image_root: PathBuf,
}

impl Ctx<'_> {
    fn value(
        &self,
        f: &FieldSpec,
        raw: Option<&str>,
    ) -> Result<Option<FieldValue>, (&'static str, String)> {
        let Some(raw) = raw else {
            return Ok(None);
        };
        match f.kind {
            FieldKind::Text => {
                if raw.trim().is_empty() {
                    Err(("empty text", format!("field `{}`", f.name)))
                } else {
                    Ok(Some(FieldValue::Text(raw.to_string())))
                }
            }
            FieldKind::Image => {
                if raw.trim().is_empty() {
                    return Err(("missing image", format!("field `{}` is empty", f.name)));
                }
                let p = PathBuf::from(raw);
                let p = if p.is_absolute() {
                    p
                } else {
                    self.image_root.join(p)
                };
                if p.is_file() {
                    Ok(Some(FieldValue::Image(p)))
                } else {
                    Err(("missing image", p.display().to_string()))
                }
            }
        }
    }

    /// Values of one side; an error when the side ends up with no field at all.
    fn side(
        &self,
        fields: &[FieldSpec],
        get: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Vec<Option<FieldValue>>, (&'static str, String)> {
        let vals = fields
            .iter()
            .map(|f| self.value(f, get(&f.name).as_deref()))
            .collect::<Result<Vec<_>, _>>()?;
        if vals.iter().all(Option::is_none) {
            let names: Vec<&str> = fields.iter().map(|f| f.name.as_str()).collect();
            return Err(("missing field", format!("none of {names:?}")));
        }
        Ok(vals)
    }

    fn check_extra(
        &self,
        query: &[Option<FieldValue>],
        doc: &[Option<FieldValue>],
    ) -> Result<(), (&'static str, String)> {
        for t in &self.spec.extra_terms {
            let has = |fields: &[FieldSpec], vals: &[Option<FieldValue>], name: &str| {
                fields
                    .iter()
                    .zip(vals)
                    .any(|(f, v)| f.name == name && v.is_some())
            };
            if !has(&self.spec.query_fields, query, &t.query)
                || !has(&self.spec.doc_fields, doc, &t.doc)
            {
                return Err((
                    "missing field",
                    format!("extra term {} ↔ {} needs both", t.query, t.doc),
                ));
            }
        }
        Ok(())
    }
}

fn finish(
    pairs: Vec<Pair>,
    rows_read: u64,
    mut skipped: SkipReport,
    spec: &GclSpec,
) -> Result<Dataset, TrainError> {
    let mut kept = Vec::with_capacity(pairs.len());
    for p in pairs {
        if spec.score_to_weight == ScoreToWeight::Reciprocal && p.rank.is_none_or(|r| r == 0) {
            skipped.add(
                "missing rank",
                p.line,
                "reciprocal weighting needs a rank ≥ 1",
            );
            continue;
        }
        kept.push(p);
    }
    let score_range =
        ScoreRange::of(kept.iter().map(|p| p.score)).unwrap_or(ScoreRange { min: 1.0, max: 1.0 });
    Ok(Dataset {
        pairs: kept,
        rows_read,
        skipped,
        score_range,
    })
}

/// Reads a data file for the objective's fields.
pub fn load(data: &DataSpec, spec: &GclSpec) -> Result<Dataset, TrainError> {
    let root = data
        .image_root
        .clone()
        .or_else(|| data.path.parent().map(Path::to_path_buf))
        .unwrap_or_default();
    let ctx = Ctx {
        spec,
        image_root: root,
    };
    match data.layout {
        Layout::Jsonl => load_jsonl(&data.path, &ctx),
        Layout::Gs => load_gs(&data.path, &data.score_column, &ctx),
    }
}

fn load_jsonl(path: &Path, ctx: &Ctx) -> Result<Dataset, TrainError> {
    let text = std::fs::read_to_string(path).map_err(|e| TrainError::io(path, e))?;
    let mut pairs = Vec::new();
    let mut skipped = SkipReport::default();
    let mut rows = 0;
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        rows += 1;
        let v: Value = match serde_json::from_str(line) {
            Ok(v) => v,
            Err(e) => {
                skipped.add("invalid row", line_no, &e.to_string());
                continue;
            }
        };
        let obj = |side: &str| v.get(side).and_then(Value::as_object).cloned();
        let (Some(q), Some(d)) = (obj("query"), obj("doc")) else {
            skipped.add(
                "invalid row",
                line_no,
                "needs objects \"query\" and \"doc\"",
            );
            continue;
        };
        let getter = |m: &serde_json::Map<String, Value>| {
            let m = m.clone();
            move |k: &str| match m.get(k) {
                Some(Value::String(s)) => Some(s.clone()),
                Some(Value::Null) | None => None,
                Some(other) => Some(other.to_string()),
            }
        };
        let score = match v.get("score") {
            None | Some(Value::Null) => Some(1.0),
            Some(s) => s.as_f64().filter(|x| x.is_finite()),
        };
        let Some(score) = score else {
            skipped.add("bad score", line_no, &format!("{}", v["score"]));
            continue;
        };
        let rank = v
            .get("rank")
            .and_then(Value::as_u64)
            .map(|r| r.min(u32::MAX as u64) as u32);
        let sides = ctx
            .side(&ctx.spec.query_fields, &getter(&q))
            .and_then(|qv| {
                ctx.side(&ctx.spec.doc_fields, &getter(&d))
                    .map(|dv| (qv, dv))
            })
            .and_then(|(qv, dv)| ctx.check_extra(&qv, &dv).map(|_| (qv, dv)));
        let (qv, dv) = match sides {
            Ok(x) => x,
            Err((reason, detail)) => {
                skipped.add(reason, line_no, &detail);
                continue;
            }
        };
        let key = |id: &str, side: &serde_json::Map<String, Value>| match v.get(id) {
            Some(Value::String(s)) => stable_hash(s.as_bytes()),
            Some(Value::Number(n)) => stable_hash(n.to_string().as_bytes()),
            _ => stable_hash(Value::Object(side.clone()).to_string().as_bytes()),
        };
        pairs.push(Pair {
            query: qv,
            doc: dv,
            score,
            rank,
            query_key: key("query_id", &q),
            doc_key: key("doc_id", &d),
            line: line_no,
        });
    }
    finish(pairs, rows, skipped, ctx.spec)
}

fn load_gs(path: &Path, score_column: &str, ctx: &Ctx) -> Result<Dataset, TrainError> {
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .from_path(path)
        .map_err(|e| TrainError::io(path, e))?;
    let headers: Vec<String> = reader
        .headers()
        .map_err(|e| TrainError::io(path, e))?
        .iter()
        .map(str::to_string)
        .collect();
    let col = |name: &str| headers.iter().position(|h| h == name);
    for required in ["query", "product_id", score_column] {
        if col(required).is_none() {
            return Err(TrainError::Data(format!(
                "{}: no `{required}` column (columns: {}); is this a Marqo-GS split CSV?",
                path.display(),
                headers.join(", ")
            )));
        }
    }
    let q_col = |name: &str| match name {
        "query" | "text" => col("query"),
        n => col(n),
    };
    let d_col = |name: &str| match name {
        "image" => col("image_local").or_else(|| col("image")),
        n => col(n),
    };
    let (score_i, pid_i, qid_i, pos_i) = (
        col(score_column).unwrap_or(0),
        col("product_id").unwrap_or(0),
        col("query_id"),
        col("position"),
    );
    let mut pairs = Vec::new();
    let mut skipped = SkipReport::default();
    let mut rows = 0;
    for (i, rec) in reader.records().enumerate() {
        let line_no = i + 2;
        rows += 1;
        let rec = match rec {
            Ok(r) => r,
            Err(e) => {
                skipped.add("invalid row", line_no, &e.to_string());
                continue;
            }
        };
        let cell = |c: Option<usize>| c.and_then(|c| rec.get(c)).map(str::to_string);
        let score = rec
            .get(score_i)
            .and_then(|s| s.trim().parse::<f64>().ok())
            .filter(|x| x.is_finite());
        let Some(score) = score else {
            skipped.add("bad score", line_no, rec.get(score_i).unwrap_or(""));
            continue;
        };
        let rank = pos_i
            .and_then(|c| rec.get(c))
            .and_then(|s| s.trim().parse::<f64>().ok())
            .filter(|x| x.is_finite() && *x >= 1.0)
            .map(|x| x as u32);
        let sides = ctx
            .side(&ctx.spec.query_fields, &|n| cell(q_col(n)))
            .and_then(|qv| {
                ctx.side(&ctx.spec.doc_fields, &|n| cell(d_col(n)))
                    .map(|dv| (qv, dv))
            })
            .and_then(|(qv, dv)| ctx.check_extra(&qv, &dv).map(|_| (qv, dv)));
        let (qv, dv) = match sides {
            Ok(x) => x,
            Err((reason, detail)) => {
                skipped.add(reason, line_no, &detail);
                continue;
            }
        };
        let qid = cell(qid_i)
            .or_else(|| cell(col("query")))
            .unwrap_or_default();
        pairs.push(Pair {
            query: qv,
            doc: dv,
            score,
            rank,
            query_key: stable_hash(qid.as_bytes()),
            doc_key: stable_hash(rec.get(pid_i).unwrap_or("").as_bytes()),
            line: line_no,
        });
    }
    finish(pairs, rows, skipped, ctx.spec)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::loss::ExtraTerm;
    use crate::train::step::tests::gcl_spec;

    fn spec(stw: ScoreToWeight) -> GclSpec {
        GclSpec {
            score_to_weight: stw,
            query_fields: vec![FieldSpec {
                name: "query".into(),
                kind: FieldKind::Text,
                weight: 1.0,
            }],
            extra_terms: vec![],
            // Documents as in the step tests: image 0.9 + title 0.1.
            ..gcl_spec()
        }
    }

    fn temp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("gclip-data-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("a.png"), b"not really a png").unwrap();
        d
    }

    #[test]
    fn jsonl_rows_are_validated_counted_and_keyed() {
        let d = temp("jsonl");
        let lines = [
            r#"{"query": {"query": "red shoes"}, "doc": {"image": "a.png", "title": "Shoe"}, "score": 0.5, "rank": 2}"#,
            r#"{"query": {"query": "red shoes"}, "doc": {"title": "Boot"}, "score": 0.9}"#,
            r#"{"query": {"query": "  "}, "doc": {"image": "a.png"}, "score": 1}"#,
            r#"{"query": {"query": "hat"}, "doc": {"image": "missing.png"}, "score": 1}"#,
            r#"{"query": {"query": "hat"}, "doc": {"image": "a.png"}, "score": "NaN"}"#,
            r#"{"query": {"query": "hat"}, "doc": {"other": "x"}}"#,
            r#"{broken"#,
            "",
            r#"{"query": {"query": "cap"}, "doc": {"image": "a.png"}, "query_id": "q7", "doc_id": 12}"#,
        ];
        std::fs::write(d.join("train.jsonl"), lines.join("\n")).unwrap();
        let data = DataSpec {
            layout: Layout::Jsonl,
            path: d.join("train.jsonl"),
            image_root: None,
            score_column: default_score_column(),
        };
        let ds = load(&data, &spec(ScoreToWeight::Linear)).unwrap();
        assert_eq!(ds.rows_read, 8);
        assert_eq!(ds.pairs.len(), 3);
        let c = &ds.skipped.counts;
        assert_eq!(
            (
                c["empty text"],
                c["missing image"],
                c["bad score"],
                c["missing field"],
                c["invalid row"]
            ),
            (1, 1, 1, 1, 1)
        );
        assert_eq!(ds.skipped.total() + ds.pairs.len() as u64, ds.rows_read);
        assert!(ds.skipped.examples[0].starts_with("line 3: empty text"));
        let (a, b, c3) = (&ds.pairs[0], &ds.pairs[1], &ds.pairs[2]);
        assert_eq!(a.doc[0], Some(FieldValue::Image(d.join("a.png"))));
        assert_eq!(b.doc[0], None);
        assert_eq!(a.query_key, b.query_key, "same query text, same key");
        assert_ne!(a.doc_key, b.doc_key);
        assert_eq!(c3.query_key, stable_hash(b"q7"));
        assert_eq!(c3.doc_key, stable_hash(b"12"));
        assert_eq!((c3.score, a.rank, b.rank), (1.0, Some(2), None));
        assert_eq!(ds.score_range, ScoreRange { min: 0.5, max: 1.0 });
        // Reciprocal weighting drops pairs without a rank; extra terms need both fields.
        let ds = load(&data, &spec(ScoreToWeight::Reciprocal)).unwrap();
        assert_eq!((ds.pairs.len(), ds.skipped.counts["missing rank"]), (1, 2));
        let mut s = spec(ScoreToWeight::None);
        s.extra_terms.push(ExtraTerm {
            query: "query".into(),
            doc: "title".into(),
            weight: 0.1,
        });
        assert_eq!(load(&data, &s).unwrap().pairs.len(), 2);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn gs_csv_reads_the_marqo_columns() {
        let d = temp("gs");
        let csv = "\"query\",\"query_id\",\"product_id\",\"title\",\"image_local\",\"score_linear\",\"score_reciprocal\",\"position\"\n\
            \"red shoes\",\"1\",\"p1\",\"Red, \"\"fancy\"\" shoe\",\"a.png\",\"96\",\"0.5\",\"2\"\n\
            \"red shoes\",\"1\",\"p2\",\"Boot\",\"nope.png\",\"95\",\"0.33\",\"3\"\n\
            \"hat\",\"2\",\"p1\",\"\",\"a.png\",\"\",\"1\",\"1\"\n\
            \"hat\",\"2\",\"p3\",\"Cap\",\"a.png\",\"80\",\"1\",\"1\"\n";
        std::fs::write(d.join("query_0_product_id_0.csv"), csv).unwrap();
        let data = DataSpec {
            layout: Layout::Gs,
            path: d.join("query_0_product_id_0.csv"),
            image_root: Some(d.clone()),
            score_column: default_score_column(),
        };
        let ds = load(&data, &spec(ScoreToWeight::Reciprocal)).unwrap();
        assert_eq!(ds.pairs.len(), 2);
        assert_eq!(
            (
                ds.skipped.counts["missing image"],
                ds.skipped.counts["bad score"]
            ),
            (1, 1)
        );
        let p = &ds.pairs[0];
        assert_eq!(p.query[0], Some(FieldValue::Text("red shoes".into())));
        assert_eq!(
            p.doc[1],
            Some(FieldValue::Text("Red, \"fancy\" shoe".into()))
        );
        assert_eq!((p.score, p.rank), (96.0, Some(2)));
        assert_eq!(p.query_key, stable_hash(b"1"));
        assert_eq!(ds.pairs[1].doc_key, stable_hash(b"p3"));
        let bad = DataSpec {
            score_column: "score_x".into(),
            ..data
        };
        assert!(matches!(
            load(&bad, &spec(ScoreToWeight::None)),
            Err(TrainError::Data(_))
        ));
        let _ = std::fs::remove_dir_all(&d);
    }
}

//! GCL's ranking evaluation of a model on Marqo-GS files (its `eval_gs_v1.py`): every document
//! of a corpus JSON is searched; the queries and their grades come from a ground-truth file or
//! from the split's CSV.
//!
//! It lives in `train` (not `eval`) because field values and the embedding of rows of them are
//! training's: a run evaluates its held-out pairs with the same code, so both sides embed alike,
//! and `train` already builds on `eval` (an `eval` module importing `train` would be a cycle).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::eval::marqo_gs::{self, Corpus, GsError};
use crate::eval::ranking::{run_from_embeddings, Qrels, Run};
use crate::train::data::FieldValue;
use crate::train::evaluate::Embedding;
use crate::train::loss::{FieldKind, FieldSpec};
use crate::train::TrainError;

/// Where a Marqo-GS evaluation's queries come from.
#[derive(Debug, Clone, PartialEq)]
pub enum GsQueries {
    /// Every query of a ground-truth JSON (query key → {document id → grade}). A split's CSV,
    /// when given, supplies the field values of queries whose key is its `query_id` or (one
    /// query field) the query itself.
    GroundTruth { path: PathBuf, csv: Option<PathBuf> },
    /// The queries of the split's CSV, graded from its scores: all of them, or `sample` drawn
    /// as GCL draws its test queries with `seed`.
    Csv {
        path: PathBuf,
        sample: Option<usize>,
        seed: u32,
    },
}

/// What to evaluate.
#[derive(Debug, Clone, PartialEq)]
pub struct GsSpec {
    /// The corpus JSON (`corpus_N.json`: document id → fields), searched whole.
    pub corpus: PathBuf,
    pub queries: GsQueries,
    /// Folder relative image paths are relative to (default: the CSV's folder for queries, the
    /// corpus's for documents).
    pub image_root: Option<PathBuf>,
    pub query_fields: Vec<FieldSpec>,
    pub doc_fields: Vec<FieldSpec>,
    /// The CSV's score column.
    pub score_column: String,
    /// Documents retrieved per query (also the depth of the CSV's ground truth).
    pub top_k: usize,
}

/// Errors preparing a Marqo-GS evaluation.
#[derive(Debug, thiserror::Error)]
pub enum GsRankingError {
    #[error(transparent)]
    Gs(#[from] GsError),
    #[error(
        "{}: query `{key}` is neither GCL's key of {fields} field(s) (values each followed by \
         `{}`) nor a query of --data",
        .path.display(),
        marqo_gs::QUERY_KEY_SEPARATOR
    )]
    UnknownQuery {
        path: PathBuf,
        key: String,
        fields: usize,
    },
    #[error("{}: no document to search", .0.display())]
    NoDocuments(PathBuf),
}

/// The queries and documents of an evaluation, as field values, with their grades.
pub struct GsSet {
    pub query_ids: Vec<String>,
    pub queries: Vec<Vec<Option<FieldValue>>>,
    pub doc_ids: Vec<String>,
    pub docs: Vec<Vec<Option<FieldValue>>>,
    pub qrels: Qrels,
    query_fields: Vec<FieldSpec>,
    doc_fields: Vec<FieldSpec>,
    top_k: usize,
}

impl GsSet {
    /// Reads the files of `spec`. What is left out (CSV rows GCL cannot use, queries and
    /// documents without a usable field) is told to `note`, one line each, as it is found.
    pub fn read(spec: &GsSpec, note: &mut dyn FnMut(String)) -> Result<Self, GsRankingError> {
        let q = &spec.query_fields;
        let csv = match &spec.queries {
            GsQueries::GroundTruth { csv, .. } => csv.as_deref(),
            GsQueries::Csv { path, .. } => Some(path.as_path()),
        };
        let columns: Vec<String> = q.iter().map(query_column).collect();
        let rows = match csv {
            Some(p) => {
                let r = marqo_gs::read_test_rows(p, &columns, "product_id", &spec.score_column)?;
                for (reason, n) in &r.skipped {
                    note(format!("{}: skipped {n} rows: {reason}", p.display()));
                }
                Some((p, r))
            }
            None => None,
        };
        let (qrels, queries): (Qrels, Vec<(String, Vec<String>)>) = match &spec.queries {
            GsQueries::GroundTruth { path: gt, .. } => {
                let qrels = marqo_gs::read_ground_truth(gt)?;
                let mut by_key: HashMap<&str, &[String]> = Default::default();
                if let Some((_, r)) = &rows {
                    // A key is GCL's query key, the CSV's query_id or (one query field) the
                    // query itself.
                    for row in r.rows.iter().rev() {
                        if let [only] = row.query.as_slice() {
                            by_key.insert(only, &row.query);
                        }
                        if let Some(id) = &row.query_id {
                            by_key.insert(id, &row.query);
                        }
                        by_key.insert(&row.key, &row.query);
                    }
                }
                let mut queries = Vec::with_capacity(qrels.0.len());
                for key in qrels.0.keys() {
                    let values = match by_key.get(key.as_str()) {
                        Some(v) => v.to_vec(),
                        None => marqo_gs::query_values(key, q.len()).ok_or_else(|| {
                            GsRankingError::UnknownQuery {
                                path: gt.clone(),
                                key: key.clone(),
                                fields: q.len(),
                            }
                        })?,
                    };
                    queries.push((key.clone(), values));
                }
                (qrels, queries)
            }
            GsQueries::Csv { sample, seed, .. } => {
                let r = rows.as_ref().map_or(&[][..], |(_, r)| &r.rows);
                let keys = marqo_gs::sample_queries(r, *sample, *seed);
                let qrels = marqo_gs::ground_truth(r, &keys, spec.top_k);
                let mut first: HashMap<&str, &[String]> = Default::default();
                for row in r.iter().rev() {
                    first.insert(&row.key, &row.query);
                }
                let queries = keys
                    .iter()
                    .map(|k| {
                        (
                            k.clone(),
                            first.get(k.as_str()).map_or(vec![], |v| v.to_vec()),
                        )
                    })
                    .collect();
                (qrels, queries)
            }
        };
        let query_root = spec
            .image_root
            .clone()
            .or_else(|| rows.as_ref().map(|(p, _)| folder_of(p)))
            .unwrap_or_default();
        let mut query_ids = Vec::with_capacity(queries.len());
        let mut query_rows = Vec::with_capacity(queries.len());
        for (key, values) in queries {
            let row: Vec<Option<FieldValue>> = q
                .iter()
                .zip(values)
                .map(|(f, v)| field_value(f.kind, v, &query_root))
                .collect();
            if row.iter().all(Option::is_none) {
                note(format!("query `{key}` has no usable field; it scores 0"));
                continue;
            }
            query_ids.push(key);
            query_rows.push(row);
        }

        let corpus_path = &spec.corpus;
        let corpus = Corpus::read(corpus_path)?;
        let doc_root = spec
            .image_root
            .clone()
            .unwrap_or_else(|| folder_of(corpus_path));
        let mut doc_ids = Vec::with_capacity(corpus.ids.len());
        let mut doc_rows = Vec::with_capacity(corpus.ids.len());
        let mut unusable = 0usize;
        for (i, id) in corpus.ids.iter().enumerate() {
            let row: Vec<Option<FieldValue>> = spec
                .doc_fields
                .iter()
                .map(|f| {
                    let raw = match f.name.as_str() {
                        "image" => corpus
                            .field(i, "image_local")
                            .or_else(|| corpus.field(i, "image")),
                        n => corpus.field(i, n),
                    };
                    raw.and_then(|r| field_value(f.kind, r, &doc_root))
                })
                .collect();
            if row.iter().all(Option::is_none) {
                unusable += 1;
                continue;
            }
            doc_ids.push(id.clone());
            doc_rows.push(row);
        }
        if unusable > 0 {
            note(format!(
                "{}: {unusable} of {} documents have none of the document fields (or their \
                 image is missing) and are not searched",
                corpus_path.display(),
                corpus.ids.len()
            ));
        }
        if doc_rows.is_empty() {
            return Err(GsRankingError::NoDocuments(corpus_path.clone()));
        }
        Ok(Self {
            query_ids,
            queries: query_rows,
            doc_ids,
            docs: doc_rows,
            qrels,
            query_fields: spec.query_fields.clone(),
            doc_fields: spec.doc_fields.clone(),
            top_k: spec.top_k,
        })
    }

    /// The model's run: each query's top documents by cosine of fused embeddings.
    pub fn run(&self, e: &Embedding) -> Result<Run, TrainError> {
        let qe = e.side(&as_slices(&self.queries), &self.query_fields)?;
        let de = e.side(&as_slices(&self.docs), &self.doc_fields)?;
        Ok(run_from_embeddings(
            &self.query_ids,
            &qe,
            &self.doc_ids,
            &de,
            e.clip.config.embed_dim,
            self.top_k,
        ))
    }
}

/// A GS CSV column of a query field: `text` is the `query` column, as in training data.
fn query_column(f: &FieldSpec) -> String {
    match f.name.as_str() {
        "text" => "query".into(),
        n => n.into(),
    }
}

/// A field value: text as it is, an image path relative to `root` unless absolute (`None`
/// when the file is missing).
fn field_value(kind: FieldKind, raw: String, root: &Path) -> Option<FieldValue> {
    match kind {
        FieldKind::Text => Some(FieldValue::Text(raw)),
        FieldKind::Image => {
            let p = PathBuf::from(raw);
            let p = if p.is_absolute() { p } else { root.join(p) };
            p.is_file().then_some(FieldValue::Image(p))
        }
    }
}

fn folder_of(p: &Path) -> PathBuf {
    p.parent().map(Path::to_path_buf).unwrap_or_default()
}

fn as_slices(rows: &[Vec<Option<FieldValue>>]) -> Vec<&[Option<FieldValue>]> {
    rows.iter().map(Vec::as_slice).collect()
}

//! `gclip check` of a collection on a Milvus server: what can be checked from a client.
//!
//! Opening the collection already checks that it exists, that its description names a gclip
//! model and embedding spec, and that its fields are gclip's with the model's vector dimension
//! (each an error naming the address when not). Then, as problems in the report:
//! - the vector field's index: HNSW with the inner product metric, and whether its build
//!   failed (one still being built is a note);
//! - every document, walked in id order: fields that read as a JSON object, a vector of finite
//!   values and unit length within [`NORM_TOLERANCE`], and, in a collection with a partition
//!   key or scalar fields, typed fields that hold what the document's fields say (rows written
//!   by another tool, a bulk insert say, may not);
//! - the server's count against the documents read.
//!
//! Nothing is repaired: Milvus builds and keeps its own indexes, and a document is never
//! changed by a check.

use std::path::PathBuf;

use milvus::data::FieldColumn;
use milvus::proto::common::IndexState;
use milvus::value::ValueVec;
use serde_json::Value as Json;

use super::scalar::ScalarValue;
use super::{column, ids_after, MilvusAddress, MilvusOptions, MilvusStore, VECTOR_FIELD};
use crate::check::{CheckReport, Component, Problem, NORM_TOLERANCE};
use crate::error::Result;
use crate::milvus::expr::{FIELDS_FIELD, ID_FIELD};
use crate::store::Store;

/// Checks the collection at `address` (opening it, which loads it when it is not loaded).
///
/// Errors when the collection cannot be examined: no server, no such collection, not a gclip
/// collection or another vector dimension than its model's; each names the address, never the
/// token. Everything else found wrong is a [`Problem`] in the report, whose `dir` is the
/// address (without the token).
pub fn check_collection(address: &MilvusAddress, options: MilvusOptions) -> Result<CheckReport> {
    let store = MilvusStore::open(address, options)?;
    let mut report = CheckReport {
        dir: PathBuf::from(address.to_string()),
        on_server: true,
        ..Default::default()
    };
    let info = store.info().clone();
    report.notes.push(format!(
        "model {} ({} dimensions), embedding {}",
        info.model.describe(),
        info.model.dim,
        info.spec.describe()
    ));
    if let Some(key) = store.partition_key() {
        report.notes.push(format!(
            "partition key `{key}` (tenants), {} partitions",
            store.partitions()?
        ));
    }
    if !store.scalar_fields().is_empty() {
        let declared: Vec<String> = store
            .scalar_fields()
            .iter()
            .map(|f| f.to_string())
            .collect();
        report.notes.push(format!(
            "scalar fields {} (filters on them read these typed fields)",
            declared.join(",")
        ));
    }
    store.check_index(&mut report)?;
    store.check_documents(&mut report)?;
    let counted = store.count()?;
    if counted != report.documents {
        report.problems.push(Problem {
            component: Component::Server,
            message: format!(
                "the server counts {counted} documents, {} were read (written to while checked?)",
                report.documents
            ),
        });
    }
    Ok(report)
}

impl MilvusStore {
    /// The vector field's index: one, HNSW, inner product, built.
    fn check_index(&self, report: &mut CheckReport) -> Result<()> {
        let name = self.conn.address.name.clone();
        let indexes = self
            .conn
            .call("describing the vector index", move |c| async move {
                c.describe_index(name, VECTOR_FIELD.to_string()).await
            });
        let indexes = match indexes {
            Ok(i) => i,
            // Milvus answers "index not found" as an error status.
            Err(e) if e.to_string().contains("index not found") => Vec::new(),
            Err(e) => return Err(e),
        };
        // Milvus 2.3 describes every index of the collection (the scalar fields' too).
        let mut scalar: Vec<String> = indexes
            .iter()
            .filter(|i| i.field_name() != VECTOR_FIELD)
            .map(|i| format!("{} {}", i.field_name(), i.params().index_type()))
            .collect();
        scalar.sort();
        if !scalar.is_empty() {
            report
                .notes
                .push(format!("scalar field indexes: {}", scalar.join(", ")));
        }
        let Some(index) = indexes.iter().find(|i| i.field_name() == VECTOR_FIELD) else {
            report.problems.push(Problem {
                component: Component::Hnsw,
                message: "the vector field has no index (gclip creates HNSW with the inner \
                          product metric); Milvus cannot load or search it"
                    .into(),
            });
            return Ok(());
        };
        let params = index.params();
        let (kind, metric) = (
            params.index_type().to_string(),
            params.metric_type().to_string(),
        );
        if kind != "HNSW" || metric != "IP" {
            report.problems.push(Problem {
                component: Component::Hnsw,
                message: format!(
                    "the vector index {:?} is {kind} with the {metric} metric, not HNSW with IP \
                     (gclip's scores are inner products of unit vectors)",
                    index.index_name()
                ),
            });
        }
        let setting = |key: &str| params.params().get(key).map(String::as_str).unwrap_or("?");
        report.notes.push(format!(
            "vector index {:?}: {kind}, metric {metric}, M {}, efConstruction {}",
            index.index_name(),
            setting("M"),
            setting("efConstruction")
        ));
        match index.state() {
            IndexState::Finished => {}
            IndexState::Failed => report.problems.push(Problem {
                component: Component::Hnsw,
                message: "the server says building the vector index failed".into(),
            }),
            state => report.notes.push(format!(
                "the vector index is {}: Milvus is still building it (recent documents are \
                 searched exhaustively meanwhile)",
                state.as_str_name()
            )),
        }
        Ok(())
    }

    /// Walks every document in id order, page by page, and judges it.
    fn check_documents(&self, report: &mut CheckReport) -> Result<()> {
        let page = self.conn.options.page.max(1);
        let columns: Vec<String> = self.typed.iter().flat_map(|f| f.column_names()).collect();
        let mut outputs = vec![FIELDS_FIELD, VECTOR_FIELD];
        outputs.extend(columns.iter().map(String::as_str));
        let mut last: Option<String> = None;
        loop {
            let cols = self.query_columns(
                "reading documents",
                ids_after(last.as_deref()),
                page,
                &outputs,
            )?;
            let rows = self.check_page(&cols, page)?;
            let Some(end) = rows.iter().map(|(id, ..)| id).max().cloned() else {
                return Ok(());
            };
            for (id, fields, vector, typed) in &rows {
                report.documents += 1;
                let mut bad = |message: String| {
                    report.problems.push(Problem {
                        component: Component::Document(id.clone()),
                        message,
                    })
                };
                match serde_json::from_slice::<Json>(fields) {
                    Ok(Json::Object(f)) => {
                        let mut cells = typed.as_slice();
                        for field in &self.typed {
                            let name = field.name.as_str();
                            let k = field.column_names().len().min(cells.len());
                            let (held, rest) = cells.split_at(k);
                            cells = rest;
                            let value = field.value_in(id, &f, "", "");
                            if value.is_ok_and(|v| field.holds(v, held)) {
                                continue;
                            }
                            let said = f.get(name).map_or("nothing".into(), |v| v.to_string());
                            let held = match held {
                                [_, ScalarValue::Bool(false)] => format!(
                                    "nothing (its presence field {} is false)",
                                    super::presence_name(name)
                                ),
                                [value, ..] => value.to_json().to_string(),
                                [] => "nothing".into(),
                            };
                            bad(if self.partition_key() == Some(name) {
                                format!(
                                    "its partition key field `{name}` holds {held} and its \
                                     fields say {said}: a search that names a tenant goes by \
                                     the first (written by another tool? write it again)"
                                )
                            } else {
                                format!(
                                    "its scalar field {field} holds {held} and its fields say \
                                     {said}: a filter on `{name}` goes by the first (written by \
                                     another tool? write it again)"
                                )
                            });
                        }
                    }
                    Ok(other) => bad(format!(
                        "its fields are JSON {}, not an object",
                        json_kind(&other)
                    )),
                    Err(e) => bad(format!("its fields do not read as JSON: {e}")),
                }
                if let Some(x) = vector.iter().find(|x| !x.is_finite()) {
                    bad(format!("its vector holds {x}"));
                } else {
                    let norm = vector.iter().map(|x| x * x).sum::<f32>().sqrt();
                    if (norm - 1.0).abs() > NORM_TOLERANCE {
                        bad(format!(
                            "its vector has length {norm}, not 1 (gclip stores unit vectors: \
                             scores would not be cosines)"
                        ));
                    }
                }
            }
            last = Some(end);
        }
    }

    /// One page of a check as (id, fields JSON as stored, vector), its columns checked against
    /// each other and against what was asked for, as for every reply.
    fn check_page<'a>(&self, cols: &'a [FieldColumn], limit: usize) -> Result<Vec<PageRow<'a>>> {
        let ids = match column(cols, ID_FIELD) {
            Some(ValueVec::String(ids)) => ids.as_slice(),
            None if cols.is_empty() => &[],
            _ => return Err(self.bad_reply("no id column")),
        };
        let n = ids.len();
        if n > limit {
            return Err(self.bad_reply(format!("{n} rows where at most {limit} were asked for")));
        }
        if n == 0 {
            return Ok(Vec::new());
        }
        let dim = self.info.model.dim;
        let fields = match column(cols, FIELDS_FIELD) {
            Some(ValueVec::Json(f)) if f.len() == n => f,
            _ => return Err(self.bad_reply(format!("the fields column has not {n} values"))),
        };
        let vectors = match column(cols, VECTOR_FIELD) {
            Some(ValueVec::Float(v)) if v.len() == n * dim => v,
            _ => {
                return Err(self.bad_reply(format!("the vector column has not {n} × {dim} numbers")))
            }
        };
        let typed = self
            .typed
            .iter()
            .flat_map(|f| f.column_names())
            .map(|name| match column(cols, &name) {
                Some(c) if ScalarValue::rows(c) == Some(n) => Ok(c),
                _ => Err(self.bad_reply(format!("the {name} column has not {n} values"))),
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(ids
            .iter()
            .zip(fields)
            .zip(vectors.chunks_exact(dim))
            .enumerate()
            .map(|(i, ((id, f), v))| {
                // Every typed column has n rows of a scalar type (above).
                let values = typed.iter().filter_map(|c| ScalarValue::at(c, i)).collect();
                (id.clone(), f.as_slice(), v, values)
            })
            .collect())
    }
}

/// A document of a page: id, fields JSON as stored, vector, the typed columns' values (the
/// store's `typed` order, each optional field's presence after its value).
type PageRow<'a> = (String, &'a [u8], &'a [f32], Vec<ScalarValue>);

fn json_kind(v: &Json) -> &'static str {
    match v {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "an array",
        Json::Object(_) => "an object",
    }
}

//! Ingestion: documents from JSONL/CSV files or a folder of images, embedded per the
//! collection's spec and committed in batches. A bad document fails alone; the batch goes on.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde_json::Value;

use crate::document::{combine, field_input, Document, EmbedSpec, Fields, Modality};
use crate::encoder::Encoder;
use crate::error::{io_err, Result, SearchError};
use crate::remote::{is_url, RemoteImages};
use crate::store::{FileState, NewDocument, Store};

/// One input document, or why its line is unusable; `label` names it in messages.
#[derive(Debug, Clone)]
pub struct InputDocument {
    pub label: String,
    pub doc: Result<Document, String>,
}

/// What an ingestion did.
#[derive(Debug, Default, Clone, PartialEq, serde::Serialize)]
pub struct IngestReport {
    /// Documents written (new or replaced).
    pub written: usize,
    /// Files skipped because they did not change.
    pub unchanged: usize,
    /// Files whose metadata changed but content did not.
    pub touched: usize,
    /// Documents removed (`--prune`).
    pub removed: usize,
    /// `(label, error)` of each input that failed.
    pub failed: Vec<(String, String)>,
}

/// Reported after each committed batch: everything up to here is durable.
#[derive(Debug)]
pub struct Committed<'a> {
    pub ids: &'a [String],
    pub done: usize,
    pub total: usize,
    pub generation: u64,
}

/// `(weight, vector)` of each embedded field a document has.
type WeightedParts = Vec<(f32, Vec<f32>)>;

/// A parsed input line: its number, its fields or why not, and its raw text.
type RawLine = (usize, Result<Fields, String>, String);

/// Embeds documents per `spec`: one result per document, in order.
pub fn embed_documents(
    encoder: &dyn Encoder,
    spec: &EmbedSpec,
    docs: &[&Document],
) -> Result<Vec<Result<Vec<f32>, String>>> {
    // Per document: (weight, vector) of each present field, or the first error.
    let mut parts: Vec<Result<WeightedParts, String>> = vec![Ok(Vec::new()); docs.len()];
    for field in &spec.fields {
        let present: Vec<(usize, &str)> = docs
            .iter()
            .enumerate()
            .filter_map(|(i, d)| field_input(&d.fields, &field.name).map(|v| (i, v)))
            .collect();
        if present.is_empty() {
            continue;
        }
        let results: Vec<Result<Vec<f32>, String>> = match field.modality {
            Modality::Text => {
                let texts: Vec<&str> = present.iter().map(|&(_, t)| t).collect();
                encoder.texts(&texts)?.into_iter().map(Ok).collect()
            }
            Modality::Image => {
                let values: Vec<&str> = present.iter().map(|&(_, p)| p).collect();
                embed_image_values(encoder, &values)?
            }
        };
        for (&(i, _), r) in present.iter().zip(results) {
            match (&mut parts[i], r) {
                (Ok(p), Ok(v)) => p.push((field.weight, v)),
                (slot @ Ok(_), Err(e)) => *slot = Err(format!("field {:?}: {e}", field.name)),
                (Err(_), _) => {}
            }
        }
    }
    let names: Vec<&str> = spec.fields.iter().map(|f| f.name.as_str()).collect();
    Ok(parts
        .into_iter()
        .map(|p| {
            let p = p?;
            if p.is_empty() {
                return Err(format!(
                    "none of the embedded fields ({}) is present",
                    names.join(", ")
                ));
            }
            let refs: Vec<(f32, &[f32])> = p.iter().map(|(w, v)| (*w, v.as_slice())).collect();
            combine(&refs).ok_or_else(|| "embedding is zero".to_string())
        })
        .collect())
}

/// Embeds images given as local paths or URLs (fetched into the image cache first); one
/// result per value, in order. A URL's failure names the URL.
pub fn embed_image_values(
    encoder: &dyn Encoder,
    values: &[&str],
) -> Result<Vec<Result<Vec<f32>, String>>> {
    let urls: Vec<&str> = values.iter().copied().filter(|v| is_url(v)).collect();
    let mut fetched = if urls.is_empty() {
        Vec::new()
    } else {
        RemoteImages::shared().fetch_all(&urls)
    }
    .into_iter();
    // Each value's local file, or why there is none.
    let local: Vec<Result<PathBuf, String>> = values
        .iter()
        .map(|v| {
            if is_url(v) {
                fetched
                    .next()
                    .unwrap_or_else(|| Err(format!("{v}: not fetched")))
            } else {
                Ok(PathBuf::from(v))
            }
        })
        .collect();
    let paths: Vec<PathBuf> = local
        .iter()
        .filter_map(|l| l.as_ref().ok())
        .cloned()
        .collect();
    let mut embedded = encoder.image_files(&paths)?.into_iter();
    Ok(values
        .iter()
        .zip(local)
        .map(|(v, l)| {
            l?;
            let r = embedded
                .next()
                .unwrap_or_else(|| Err("not embedded".into()));
            // The decoder names the cached file; the user knows the URL.
            if is_url(v) {
                r.map_err(|e| format!("{v}: {e}"))
            } else {
                r
            }
        })
        .collect())
}

/// What [`update_document`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct UpdateReport {
    /// An embedded field changed, so the document got a new vector.
    pub reembedded: bool,
    /// The collection's generation after the write.
    pub generation: u64,
}

/// Changes some fields of a document: each field of `patch` is set, or removed when null; the
/// others are kept. The document is embedded again only when a field its vector comes from
/// changed. Relative image paths are resolved against `base`.
pub fn update_document(
    store: &dyn Store,
    encoder: &dyn Encoder,
    id: &str,
    patch: &Fields,
    base: &Path,
) -> Result<UpdateReport> {
    if patch.contains_key("id") {
        return Err(SearchError::Invalid(
            "the id of a document cannot be changed (add a new document and delete this one)"
                .into(),
        ));
    }
    let doc = store
        .get(id)?
        .ok_or_else(|| SearchError::NotFound(id.to_string()))?;
    let mut fields = doc.fields.clone();
    for (k, v) in patch {
        if v.is_null() {
            fields.remove(k);
        } else {
            fields.insert(k.clone(), v.clone());
        }
    }
    let spec = &store.info().spec;
    let reembedded = spec
        .fields
        .iter()
        .any(|f| doc.fields.get(&f.name) != fields.get(&f.name));
    let receipt = if reembedded {
        let images: Vec<&str> = spec.image_fields().collect();
        let mut new_doc =
            document_from_fields(fields, "", base, &images).map_err(SearchError::Invalid)?;
        new_doc.id = id.to_string();
        let vector = embed_documents(encoder, spec, &[&new_doc])?
            .pop()
            .unwrap_or_else(|| Err("not embedded".into()))
            .map_err(|e| SearchError::Invalid(format!("document {id:?}: {e}")))?;
        store.upsert(vec![NewDocument {
            id: new_doc.id,
            fields: new_doc.fields,
            vector,
            source: None,
        }])?
    } else {
        store.update_fields(id, fields)?
    };
    Ok(UpdateReport {
        reembedded,
        generation: receipt.generation,
    })
}

/// Embeds and writes documents in batches of `batch_size`, calling `on_commit` after each
/// committed batch.
pub fn add_documents(
    store: &dyn Store,
    encoder: &dyn Encoder,
    inputs: Vec<InputDocument>,
    batch_size: usize,
    on_commit: &mut dyn FnMut(&Committed),
) -> Result<IngestReport> {
    let mut report = IngestReport::default();
    let total = inputs.len();
    let mut done = 0;
    let spec = store.info().spec.clone();
    for chunk in inputs.chunks(batch_size.max(1)) {
        let mut good: Vec<&Document> = Vec::new();
        for input in chunk {
            // Checked before embedding: a document the store refuses costs nothing more.
            let checked = input
                .doc
                .as_ref()
                .map_err(String::clone)
                .and_then(|d| store.check_fields(&d.id, &d.fields).map(|()| d));
            match checked {
                Ok(d) => good.push(d),
                Err(e) => report.failed.push((input.label.clone(), e)),
            }
        }
        let labels: HashMap<&str, &str> = chunk
            .iter()
            .filter_map(|i| {
                i.doc
                    .as_ref()
                    .ok()
                    .map(|d| (d.id.as_str(), i.label.as_str()))
            })
            .collect();
        let vectors = embed_documents(encoder, &spec, &good)?;
        let mut batch = Vec::new();
        for (d, v) in good.into_iter().zip(vectors) {
            match v {
                Ok(vector) => batch.push(NewDocument {
                    id: d.id.clone(),
                    fields: d.fields.clone(),
                    vector,
                    source: None,
                }),
                Err(e) => report.failed.push((
                    labels
                        .get(d.id.as_str())
                        .copied()
                        .unwrap_or(&d.id)
                        .to_string(),
                    e,
                )),
            }
        }
        done += chunk.len();
        if batch.is_empty() {
            continue;
        }
        let ids: Vec<String> = batch.iter().map(|d| d.id.clone()).collect();
        let receipt = store.upsert(batch)?;
        report.written += receipt.count;
        on_commit(&Committed {
            ids: &ids,
            done,
            total,
            generation: receipt.generation,
        });
    }
    Ok(report)
}

/// Reads documents from a `.jsonl` (one JSON object per line) or `.csv` (a header row) file.
/// The `id` field (string or number) becomes the id; without one, the id is a hash of the
/// line. Image fields of `spec` holding relative paths are resolved against the file's
/// directory and stored as absolute paths. In CSV, numbers become numbers and columns named
/// `tags` or `keywords` are split on `|`.
pub fn read_documents(path: &Path, spec: &EmbedSpec) -> Result<Vec<InputDocument>> {
    let text = std::fs::read_to_string(path).map_err(io_err(path))?;
    let base = path.parent().unwrap_or(Path::new("."));
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    let raw: Vec<RawLine> = match ext.as_deref() {
        Some("csv") => parse_csv(&text)?,
        Some("jsonl") | Some("ndjson") | Some("json") => text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| {
                let fields = match serde_json::from_str::<Value>(l) {
                    Ok(Value::Object(m)) => Ok(m),
                    Ok(_) => Err("line is not a JSON object".to_string()),
                    Err(e) => Err(format!("invalid JSON: {e}")),
                };
                (i + 1, fields, l.to_string())
            })
            .collect(),
        _ => {
            return Err(SearchError::Invalid(format!(
                "{}: documents must be .jsonl or .csv",
                path.display()
            )))
        }
    };
    let images: Vec<&str> = spec.image_fields().collect();
    Ok(raw
        .into_iter()
        .map(|(line, fields, raw_line)| InputDocument {
            label: format!("{}:{line}", path.display()),
            doc: fields.and_then(|f| document_from_fields(f, &raw_line, base, &images)),
        })
        .collect())
}

/// Makes a document from fields: takes out `id` (or hashes `raw`), resolves image paths.
pub fn document_from_fields(
    mut fields: Fields,
    raw: &str,
    base: &Path,
    image_fields: &[&str],
) -> Result<Document, String> {
    let id = match fields.remove("id") {
        Some(Value::String(s)) if !s.is_empty() => s,
        Some(Value::Number(n)) => n.to_string(),
        Some(other) => {
            return Err(format!(
                "\"id\" must be a non-empty string or a number, got {other}"
            ))
        }
        None => format!("{:016x}", xxhash_rust::xxh3::xxh3_64(raw.as_bytes())),
    };
    for name in image_fields {
        if let Some(Value::String(p)) = fields.get(*name) {
            if is_url(p) {
                continue;
            }
            let resolved = resolve_path(p, base);
            fields.insert(name.to_string(), Value::String(resolved));
        }
    }
    Ok(Document { id, fields })
}

fn resolve_path(p: &str, base: &Path) -> String {
    let path = Path::new(p);
    let joined = if path.is_absolute() || path.exists() {
        path.to_path_buf()
    } else {
        base.join(path)
    };
    std::fs::canonicalize(&joined)
        .unwrap_or(joined)
        .display()
        .to_string()
}

fn parse_csv(text: &str) -> Result<Vec<RawLine>> {
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .from_reader(text.as_bytes());
    let headers: Vec<String> = reader
        .headers()
        .map_err(|e| SearchError::Invalid(format!("CSV header: {e}")))?
        .iter()
        .map(|h| h.trim().to_string())
        .collect();
    let mut out = Vec::new();
    for (i, rec) in reader.records().enumerate() {
        let line = rec
            .as_ref()
            .ok()
            .and_then(|r| r.position().map(|p| p.line() as usize))
            .unwrap_or(i + 2);
        let row = match rec {
            Ok(r) => {
                let raw = r.iter().collect::<Vec<_>>().join(",");
                if r.len() != headers.len() {
                    (
                        line,
                        Err(format!(
                            "{} cells, the header has {}",
                            r.len(),
                            headers.len()
                        )),
                        raw,
                    )
                } else {
                    let mut fields = Fields::new();
                    for (h, cell) in headers.iter().zip(r.iter()) {
                        if cell.is_empty() {
                            continue;
                        }
                        let v = if h == "tags" || h == "keywords" {
                            Value::Array(
                                cell.split('|')
                                    .map(str::trim)
                                    .filter(|t| !t.is_empty())
                                    .map(|t| Value::String(t.into()))
                                    .collect(),
                            )
                        } else if h != "id" {
                            match cell.parse::<f64>() {
                                Ok(f) if f.is_finite() => serde_json::Number::from_f64(f)
                                    .map(Value::Number)
                                    .unwrap_or_else(|| Value::String(cell.into())),
                                _ => Value::String(cell.into()),
                            }
                        } else {
                            Value::String(cell.into())
                        };
                        fields.insert(h.clone(), v);
                    }
                    (line, Ok(fields), raw)
                }
            }
            Err(e) => (line, Err(format!("bad CSV record: {e}")), String::new()),
        };
        out.push(row);
    }
    Ok(out)
}

/// Options of [`index_directory`].
#[derive(Debug, Clone)]
pub struct IndexOptions {
    /// Files per committed batch.
    pub batch_size: usize,
    /// Remove documents whose file under the directory has vanished.
    pub prune: bool,
}

impl Default for IndexOptions {
    fn default() -> Self {
        Self {
            batch_size: 256,
            prune: false,
        }
    }
}

/// The state of a file now: size, modification time and content hash.
pub fn file_state(path: &Path) -> Result<FileState> {
    let meta = std::fs::metadata(path).map_err(io_err(path))?;
    let mtime_ns = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0);
    let bytes = gclip::input::image::read_image_file(path, gclip::input::image::max_image_bytes())
        .map_err(|e| SearchError::Invalid(e.to_string()))?;
    Ok(FileState {
        path: path.display().to_string(),
        size: meta.len(),
        mtime_ns,
        hash: format!("{:032x}", xxhash_rust::xxh3::xxh3_128(&bytes)),
    })
}

/// Indexes the images under `dir` (recursively) into a collection whose spec has one image
/// field: each file is a document whose id is its absolute path. Unchanged files (same path,
/// size, modification time and content hash) are skipped; changed ones re-embedded; with
/// `prune`, documents of vanished files under `dir` removed.
pub fn index_directory(
    store: &dyn Store,
    encoder: &dyn Encoder,
    dir: &Path,
    options: &IndexOptions,
    on_commit: &mut dyn FnMut(&Committed),
) -> Result<IngestReport> {
    let spec = &store.info().spec;
    let image_field = spec
        .image_fields()
        .next()
        .ok_or_else(|| {
            SearchError::Invalid(format!(
                "collection embeds {} and has no image field to index files into",
                spec.describe()
            ))
        })?
        .to_string();
    let dir = std::fs::canonicalize(dir).map_err(io_err(dir))?;
    let files =
        gclip::input::items::walk_images(&dir).map_err(|e| SearchError::Invalid(e.to_string()))?;
    let known: HashMap<String, (String, FileState)> = store
        .sources()?
        .into_iter()
        .map(|(id, s)| (s.path.clone(), (id, s)))
        .collect();
    let states: Vec<(PathBuf, Result<FileState>)> = files
        .par_iter()
        .map(|p| (p.clone(), file_state(p)))
        .collect();
    let mut report = IngestReport::default();
    let mut touched = Vec::new();
    let mut todo: Vec<(PathBuf, FileState)> = Vec::new();
    let mut seen = HashSet::new();
    for (path, state) in states {
        let key = path.display().to_string();
        seen.insert(key.clone());
        match state {
            Err(e) => report.failed.push((key, e.to_string())),
            Ok(s) => match known.get(&key) {
                Some((_, old)) if *old == s => report.unchanged += 1,
                Some((id, old)) if old.hash == s.hash && old.size == s.size => {
                    touched.push((id.clone(), s))
                }
                _ => todo.push((path, s)),
            },
        }
    }
    if !touched.is_empty() {
        report.touched = store.update_sources(&touched)?.count;
    }
    let total = todo.len();
    let mut done = 0;
    for chunk in todo.chunks(options.batch_size.max(1)) {
        // Each file's document fields, checked by the store before anything is embedded.
        let mut wanted = Vec::new();
        for (path, state) in chunk {
            let key = path.display().to_string();
            let mut fields = Fields::new();
            fields.insert(image_field.clone(), Value::String(key.clone()));
            if let Some(name) = path.file_name().and_then(|n| n.to_str()) {
                fields.insert("file_name".into(), Value::String(name.into()));
            }
            if let Ok(rel) = path.strip_prefix(&dir) {
                if let Some(parent) = rel.parent().and_then(|p| p.to_str()) {
                    if !parent.is_empty() {
                        fields.insert("folder".into(), Value::String(parent.into()));
                    }
                }
            }
            match store.check_fields(&key, &fields) {
                Ok(()) => wanted.push((path.clone(), key, fields, state)),
                Err(e) => report.failed.push((key, e)),
            }
        }
        let paths: Vec<PathBuf> = wanted.iter().map(|(p, ..)| p.clone()).collect();
        let vectors = if paths.is_empty() {
            Vec::new()
        } else {
            encoder.image_files(&paths)?
        };
        let mut batch = Vec::new();
        for ((_, key, fields, state), v) in wanted.into_iter().zip(vectors) {
            match v {
                Ok(vector) => batch.push(NewDocument {
                    id: key,
                    fields,
                    vector,
                    source: Some(state.clone()),
                }),
                Err(e) => report.failed.push((key, e)),
            }
        }
        done += chunk.len();
        if batch.is_empty() {
            continue;
        }
        let ids: Vec<String> = batch.iter().map(|d| d.id.clone()).collect();
        let receipt = store.upsert(batch)?;
        report.written += receipt.count;
        on_commit(&Committed {
            ids: &ids,
            done,
            total,
            generation: receipt.generation,
        });
    }
    if options.prune {
        let prefix = format!("{}{}", dir.display(), std::path::MAIN_SEPARATOR);
        let vanished: Vec<String> = known
            .iter()
            .filter(|(path, _)| path.starts_with(&prefix) && !seen.contains(*path))
            .map(|(_, (id, _))| id.clone())
            .collect();
        if !vanished.is_empty() {
            report.removed = store.delete(&vanished)?.count;
        }
    }
    Ok(report)
}

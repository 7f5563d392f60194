//! Embedding files for pipelines: a `.npy` matrix with a sidecar naming each row
//! (`X.ids.jsonl`) or a Parquet file holding both (`X.parquet`), deterministic shards of an
//! input list, and the merge of the shards' files into the file one run would have written.

mod parquet_file;

pub use parquet_file::{read_parquet, write_parquet};

use std::collections::HashSet;
use std::io::{BufRead, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use candle_core::{Device, Tensor};

use crate::input::items::ItemKind;
use crate::model::Embeddings;

/// Most shards a list may be split into.
pub const MAX_SHARDS: usize = 1_000_000;

/// Errors reading, writing or merging embedding files.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("{path}: {message}")]
    Io { path: PathBuf, message: String },
    #[error("{path}, line {line}: {message}")]
    Sidecar {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{0}")]
    Invalid(String),
}

pub(crate) fn io(path: &Path) -> impl Fn(std::io::Error) -> OutputError + '_ {
    move |e| OutputError::Io {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// Shard `index` of `count` (`I/N` on the command line, `0 <= I < N`): a contiguous,
/// deterministic part of an input list; the `count` shards of a list cover it exactly once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl FromStr for Shard {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("shard {s:?} must be I/N with 0 <= I < N <= {MAX_SHARDS}, e.g. 0/4");
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let index: usize = i.trim().parse().map_err(|_| bad())?;
        let count: usize = n.trim().parse().map_err(|_| bad())?;
        if count == 0 || count > MAX_SHARDS || index >= count {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl Shard {
    /// The items of a list of `len` this shard takes: `[len·I/N, len·(I+1)/N)`.
    pub fn range(&self, len: usize) -> Range<usize> {
        let at = |i: usize| (len as u128 * i as u128 / self.count as u128) as usize;
        at(self.index)..at(self.index + 1)
    }
}

/// What one row of an embedding file is: its position in the whole input list (before
/// sharding), its line in the list file (0 for items given otherwise), and the text or image
/// path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowId {
    pub index: usize,
    pub line: usize,
    pub kind: ItemKind,
    pub value: String,
}

impl RowId {
    fn to_json(&self) -> serde_json::Value {
        let mut obj = serde_json::Map::new();
        obj.insert("index".into(), self.index.into());
        if self.line > 0 {
            obj.insert("line".into(), self.line.into());
        }
        obj.insert(self.kind.field().into(), self.value.clone().into());
        serde_json::Value::Object(obj)
    }

    fn from_json(v: &serde_json::Value) -> Result<Self, String> {
        let index = v
            .get("index")
            .and_then(serde_json::Value::as_u64)
            .ok_or("no \"index\" number")? as usize;
        let line = v
            .get("line")
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0) as usize;
        let (kind, value) = [ItemKind::Text, ItemKind::Image]
            .into_iter()
            .find_map(|k| v.get(k.field()).and_then(|s| s.as_str()).map(|s| (k, s)))
            .ok_or("no \"text\" or \"image\" string")?;
        Ok(RowId {
            index,
            line,
            kind,
            value: value.to_string(),
        })
    }
}

/// The formats of embedding files, told by their extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileFormat {
    /// `.npy`, float32 `[N, D]`, with its `.ids.jsonl` sidecar.
    Npy,
    /// `.parquet`: index, line, text or image, embedding (`list<float32>`).
    Parquet,
}

impl FileFormat {
    /// The format of a file named `path`, if it is an embedding file's name.
    pub fn of(path: &Path) -> Option<Self> {
        match path.extension().and_then(|e| e.to_str()) {
            Some("npy") => Some(FileFormat::Npy),
            Some("parquet") => Some(FileFormat::Parquet),
            _ => None,
        }
    }

    fn of_existing(path: &Path) -> Result<Self, OutputError> {
        Self::of(path).ok_or_else(|| {
            OutputError::Invalid(format!(
                "{}: an embedding file must end in .npy or .parquet",
                path.display()
            ))
        })
    }
}

/// Writes embeddings and their ids in the format `path`'s extension names (`.npy` with its
/// sidecar, or `.parquet`); `kind` names a Parquet file's value column.
pub fn write_embeddings(
    path: &Path,
    embeddings: &Embeddings,
    ids: &[RowId],
    kind: ItemKind,
) -> Result<(), OutputError> {
    match FileFormat::of_existing(path)? {
        FileFormat::Npy => write_npy_with_ids(path, embeddings, ids),
        FileFormat::Parquet => write_parquet(path, embeddings, ids, kind),
    }
}

/// Reads an embedding file of either format with its ids.
pub fn read_embeddings(path: &Path) -> Result<(Embeddings, Vec<RowId>), OutputError> {
    match FileFormat::of_existing(path)? {
        FileFormat::Npy => read_npy_with_ids(path),
        FileFormat::Parquet => read_parquet(path),
    }
}

/// The sidecar of an embedding file: `X.npy` → `X.ids.jsonl`.
pub fn sidecar_path(npy: &Path) -> PathBuf {
    npy.with_extension("ids.jsonl")
}

/// Refuses to write rows and ids that do not pair up.
fn check_one_id_per_row(embeddings: &Embeddings, ids: &[RowId]) -> Result<(), OutputError> {
    if embeddings.len() != ids.len() {
        return Err(OutputError::Invalid(format!(
            "{} rows but {} ids",
            embeddings.len(),
            ids.len()
        )));
    }
    Ok(())
}

/// Writes `rows` of `embeddings` as float32 `[N, D]` `.npy` and their ids in the sidecar.
pub fn write_npy_with_ids(
    npy: &Path,
    embeddings: &Embeddings,
    ids: &[RowId],
) -> Result<(), OutputError> {
    check_one_id_per_row(embeddings, ids)?;
    Tensor::from_vec(
        embeddings.data.clone(),
        (embeddings.len(), embeddings.dim),
        &Device::Cpu,
    )
    .and_then(|t| t.write_npy(npy))
    .map_err(|e| OutputError::Io {
        path: npy.to_path_buf(),
        message: e.to_string(),
    })?;
    let path = sidecar_path(npy);
    let file = std::fs::File::create(&path).map_err(io(&path))?;
    let mut w = std::io::BufWriter::new(file);
    for id in ids {
        writeln!(w, "{}", id.to_json()).map_err(io(&path))?;
    }
    w.flush().map_err(io(&path))
}

/// Reads an embedding file and its sidecar.
pub fn read_npy_with_ids(npy: &Path) -> Result<(Embeddings, Vec<RowId>), OutputError> {
    let t = Tensor::read_npy(npy).map_err(|e| OutputError::Io {
        path: npy.to_path_buf(),
        message: format!("not a float32 [N, D] .npy file: {e}"),
    })?;
    let (rows, dim) = t.dims2().map_err(|_| OutputError::Io {
        path: npy.to_path_buf(),
        message: format!("expected a [N, D] matrix, found shape {:?}", t.dims()),
    })?;
    let data = t
        .flatten_all()
        .and_then(|t| t.to_vec1::<f32>())
        .map_err(|e| OutputError::Io {
            path: npy.to_path_buf(),
            message: format!("expected float32 values: {e}"),
        })?;
    let path = sidecar_path(npy);
    let file = std::fs::File::open(&path).map_err(io(&path))?;
    let mut ids = Vec::with_capacity(rows);
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(io(&path))?;
        if line.trim().is_empty() {
            continue;
        }
        let bad = |message: String| OutputError::Sidecar {
            path: path.clone(),
            line: i + 1,
            message,
        };
        let v: serde_json::Value =
            serde_json::from_str(&line).map_err(|e| bad(format!("invalid JSON: {e}")))?;
        ids.push(RowId::from_json(&v).map_err(|e| bad(e.to_string()))?);
    }
    if ids.len() != rows {
        return Err(OutputError::Invalid(format!(
            "{} has {rows} rows but its sidecar {} names {}",
            npy.display(),
            path.display(),
            ids.len()
        )));
    }
    Ok((Embeddings { dim, data }, ids))
}

/// Merges the embedding files of shards (`.npy` with sidecars or `.parquet`, mixed as may be):
/// the rows of all, ordered by their input index, as one run over the whole list writes them.
/// Shards must hold the same kind of item and dimension, and no input index twice; a shard
/// with no rows constrains nothing.
pub fn merge(parts: &[PathBuf]) -> Result<(Embeddings, Vec<RowId>), OutputError> {
    let mut all: Vec<(RowId, usize, usize)> = Vec::new();
    let mut files = Vec::with_capacity(parts.len());
    // The dimension, and the first file with rows that set it.
    let mut dim: Option<(usize, usize)> = None;
    for (f, p) in parts.iter().enumerate() {
        let (e, ids) = read_embeddings(p)?;
        match dim {
            _ if ids.is_empty() => {}
            None => dim = Some((e.dim, f)),
            Some((d, first)) if d != e.dim => {
                return Err(OutputError::Invalid(format!(
                    "{} has {}-dimensional rows, {} has {d}",
                    p.display(),
                    e.dim,
                    parts[first].display()
                )))
            }
            Some(_) => {}
        }
        all.extend(ids.into_iter().enumerate().map(|(r, id)| (id, f, r)));
        files.push(e);
    }
    if parts.is_empty() {
        return Err(OutputError::Invalid("nothing to merge".into()));
    }
    let dim = dim.map_or(files[0].dim, |(d, _)| d);
    if let Some((first, _, _)) = all.first() {
        if let Some((odd, f, _)) = all.iter().find(|(id, _, _)| id.kind != first.kind) {
            return Err(OutputError::Invalid(format!(
                "{} holds {}s, the others {}s",
                parts[*f].display(),
                odd.kind.field(),
                first.kind.field()
            )));
        }
    }
    all.sort_by_key(|(id, _, _)| id.index);
    let mut seen = HashSet::new();
    let mut out = Embeddings {
        dim,
        data: Vec::with_capacity(all.len() * dim),
    };
    let mut ids = Vec::with_capacity(all.len());
    for (id, f, r) in all {
        if !seen.insert(id.index) {
            return Err(OutputError::Invalid(format!(
                "input {} appears in more than one shard (again in {}); were the shards made from the same list?",
                id.index,
                parts[f].display()
            )));
        }
        out.data.extend_from_slice(files[f].row(r));
        ids.push(id);
    }
    Ok((out, ids))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_cover_a_list_once_in_order() {
        for len in [0usize, 1, 2, 7, 100, 101] {
            for count in [1usize, 2, 3, 8, 200] {
                let mut next = 0;
                for index in 0..count {
                    let r = Shard { index, count }.range(len);
                    assert_eq!(r.start, next, "len {len} shard {index}/{count}");
                    assert!(r.len() <= len / count + 1);
                    next = r.end;
                }
                assert_eq!(next, len);
            }
        }
    }

    #[test]
    fn shard_syntax() {
        assert_eq!("2/5".parse::<Shard>(), Ok(Shard { index: 2, count: 5 }));
        for bad in ["5/5", "0/0", "1", "a/2", "-1/2", "0/2000000"] {
            assert!(bad.parse::<Shard>().is_err(), "{bad}");
        }
    }

    #[test]
    fn merge_orders_rows_and_refuses_overlaps() {
        let dir = std::env::temp_dir().join(format!("gclip-output-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let id = |index: usize| RowId {
            index,
            line: index + 1,
            kind: ItemKind::Text,
            value: format!("t{index}"),
        };
        let a = dir.join("a.npy");
        let b = dir.join("b.npy");
        let e = |v: &[f32]| Embeddings {
            dim: 2,
            data: v.to_vec(),
        };
        write_npy_with_ids(&a, &e(&[2.0, 2.5, 4.0, 4.5]), &[id(2), id(4)]).unwrap();
        write_npy_with_ids(&b, &e(&[0.0, 0.5, 3.0, 3.5]), &[id(0), id(3)]).unwrap();
        let (m, ids) = merge(&[a.clone(), b.clone()]).unwrap();
        assert_eq!(m.data, [0.0, 0.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5]);
        assert_eq!(
            ids.iter().map(|i| i.index).collect::<Vec<_>>(),
            [0, 2, 3, 4]
        );
        assert_eq!(ids[1], id(2));
        assert!(matches!(
            merge(&[a.clone(), a.clone()]),
            Err(OutputError::Invalid(m)) if m.contains("more than one shard")
        ));
        assert!(write_npy_with_ids(&a, &e(&[1.0, 2.0]), &[]).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn image_id(index: usize, line: usize) -> RowId {
        RowId {
            index,
            line,
            kind: ItemKind::Image,
            value: format!("photos/{index} é.jpg"),
        }
    }

    #[test]
    fn parquet_round_trips_and_merges_with_npy() {
        let dir = tempfile::tempdir().unwrap();
        let dim = 5;
        // More rows than a row group holds, to cross a group boundary.
        let n = parquet_file::ROWS_PER_GROUP + 3;
        let ids: Vec<RowId> = (0..n).map(|i| image_id(2 * i, i % 3)).collect();
        let data: Vec<f32> = (0..n * dim).map(|v| v as f32 * 0.25 - 7.0).collect();
        let all = Embeddings { dim, data };
        let p = dir.path().join("all.parquet");
        write_embeddings(&p, &all, &ids, ItemKind::Image).unwrap();
        let (back, back_ids) = read_embeddings(&p).unwrap();
        assert_eq!(back, all);
        assert_eq!(back_ids, ids);

        // Shards in both formats merge into the one file.
        let split = 7;
        let head = Embeddings {
            dim,
            data: all.data[..split * dim].to_vec(),
        };
        let tail = Embeddings {
            dim,
            data: all.data[split * dim..].to_vec(),
        };
        let a = dir.path().join("a.npy");
        let b = dir.path().join("b.parquet");
        write_embeddings(&a, &tail, &ids[split..], ItemKind::Image).unwrap();
        write_embeddings(&b, &head, &ids[..split], ItemKind::Image).unwrap();
        let empty = dir.path().join("empty.parquet");
        write_embeddings(
            &empty,
            &Embeddings { dim, data: vec![] },
            &[],
            ItemKind::Image,
        )
        .unwrap();
        assert_eq!(read_embeddings(&empty).unwrap().0.dim, dim);
        let (m, m_ids) = merge(&[a, empty, b]).unwrap();
        assert_eq!(m, all);
        assert_eq!(m_ids, ids);
    }

    #[test]
    fn parquet_refuses_what_it_cannot_hold() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.parquet");
        let one = Embeddings {
            dim: 2,
            data: vec![1.0, 2.0],
        };
        assert!(write_embeddings(&p, &one, &[], ItemKind::Image).is_err());
        assert!(matches!(
            write_embeddings(&p, &one, &[image_id(0, 0)], ItemKind::Text),
            Err(OutputError::Invalid(m)) if m.contains("holds texts")
        ));
        assert!(matches!(
            write_embeddings(&dir.path().join("x.csv"), &one, &[image_id(0, 0)], ItemKind::Image),
            Err(OutputError::Invalid(m)) if m.contains(".npy or .parquet")
        ));
        std::fs::write(&p, b"not parquet").unwrap();
        assert!(matches!(read_embeddings(&p), Err(OutputError::Io { .. })));
    }
}

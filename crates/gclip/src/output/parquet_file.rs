//! Embedding files in Parquet, the format clip-retrieval's users load: one row per embedded
//! item with its input `index` (the row id), its list `line` (null for items given otherwise),
//! the `text` or `image` (path) it came from, and the `embedding` as a `list<float32>`.
//!
//! Written and read through the parquet crate's column API, so that no Arrow runtime is built;
//! files are written uncompressed (float vectors barely compress). The reader takes the
//! optional (nullable) variants of the same columns too, uncompressed or Snappy-compressed, as
//! pyarrow and Spark write them back.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use parquet::column::reader::ColumnReader;
use parquet::data_type::{ByteArray, ByteArrayType, FloatType, Int64Type};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use parquet::file::reader::FileReader;
use parquet::file::serialized_reader::SerializedFileReader;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;
use parquet::schema::types::ColumnPath;

use super::{OutputError, RowId};
use crate::input::items::ItemKind;
use crate::model::Embeddings;

/// Rows per row group: a reader holds one group's vectors at a time.
pub(super) const ROWS_PER_GROUP: usize = 16_384;
/// Key of the file metadata entry that records the embedding dimension, so that a file with no
/// rows still says it.
const DIM_KEY: &str = "gclip.embedding_dim";

fn error(path: &Path) -> impl Fn(parquet::errors::ParquetError) -> OutputError + '_ {
    move |e| OutputError::Io {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// Writes `embeddings` with their `ids` as a Parquet file; `kind` names the value column
/// (`text` or `image`).
pub fn write_parquet(
    path: &Path,
    embeddings: &Embeddings,
    ids: &[RowId],
    kind: ItemKind,
) -> Result<(), OutputError> {
    super::check_one_id_per_row(embeddings, ids)?;
    if let Some(odd) = ids.iter().find(|id| id.kind != kind) {
        return Err(OutputError::Invalid(format!(
            "row {} is of kind {}, the file holds {}s",
            odd.index,
            odd.kind.field(),
            kind.field()
        )));
    }
    let err = error(path);
    let schema = parse_message_type(&format!(
        "message gclip_embeddings {{
            required int64 index;
            optional int64 line;
            required binary {} (STRING);
            required group embedding (LIST) {{
                repeated group list {{
                    required float element;
                }}
            }}
        }}",
        kind.field()
    ))
    .map_err(&err)?;
    let props = WriterProperties::builder()
        .set_created_by(format!("gclip {}", env!("CARGO_PKG_VERSION")))
        .set_key_value_metadata(Some(vec![KeyValue::new(
            DIM_KEY.to_string(),
            embeddings.dim.to_string(),
        )]))
        // A dictionary of float values only grows the file before the writer gives up on it.
        .set_column_dictionary_enabled(
            ColumnPath::from(vec![
                "embedding".to_string(),
                "list".to_string(),
                "element".to_string(),
            ]),
            false,
        )
        .build();
    let file = File::create(path).map_err(super::io(path))?;
    let mut writer =
        SerializedFileWriter::new(file, Arc::new(schema), Arc::new(props)).map_err(&err)?;
    let dim = embeddings.dim;
    for (group, first) in (0..ids.len()).step_by(ROWS_PER_GROUP).enumerate() {
        let rows = &ids[first..(first + ROWS_PER_GROUP).min(ids.len())];
        let vectors = &embeddings.data[first * dim..(first + rows.len()) * dim];
        let mut rg = writer.next_row_group().map_err(&err)?;
        let mut column = 0;
        while let Some(mut col) = rg.next_column().map_err(&err)? {
            match column {
                0 => {
                    let index: Vec<i64> = rows.iter().map(|r| r.index as i64).collect();
                    col.typed::<Int64Type>()
                        .write_batch(&index, None, None)
                        .map_err(&err)?;
                }
                1 => {
                    // Definition level 1: a line number; 0: null (not from a list file).
                    let lines: Vec<i64> = rows
                        .iter()
                        .filter(|r| r.line > 0)
                        .map(|r| r.line as i64)
                        .collect();
                    let defined: Vec<i16> = rows.iter().map(|r| i16::from(r.line > 0)).collect();
                    col.typed::<Int64Type>()
                        .write_batch(&lines, Some(&defined), None)
                        .map_err(&err)?;
                }
                2 => {
                    let values: Vec<ByteArray> = rows
                        .iter()
                        .map(|r| ByteArray::from(r.value.as_str()))
                        .collect();
                    col.typed::<ByteArrayType>()
                        .write_batch(&values, None, None)
                        .map_err(&err)?;
                }
                _ => {
                    // Each row is a list of `dim` values: repetition level 0 starts a row, 1
                    // continues it; every value is defined (level 1, the list's).
                    let defined = vec![1i16; vectors.len()];
                    let repeated: Vec<i16> = (0..vectors.len())
                        .map(|i| i16::from(i % dim.max(1) != 0))
                        .collect();
                    col.typed::<FloatType>()
                        .write_batch(vectors, Some(&defined), Some(&repeated))
                        .map_err(&err)?;
                }
            }
            col.close().map_err(&err)?;
            column += 1;
        }
        rg.close().map_err(|e| OutputError::Io {
            path: path.to_path_buf(),
            message: format!("row group {group}: {e}"),
        })?;
    }
    writer.close().map_err(&err)?;
    Ok(())
}

/// One column of a row group, read whole: values, and the definition and repetition levels
/// that place them in rows.
struct Column<T> {
    values: Vec<T>,
    def: Vec<i16>,
    rep: Vec<i16>,
}

fn read_column<T: Default + Clone>(
    rows: usize,
    mut read: impl FnMut(
        usize,
        &mut Vec<i16>,
        &mut Vec<i16>,
        &mut Vec<T>,
    ) -> parquet::errors::Result<(usize, usize, usize)>,
) -> parquet::errors::Result<Column<T>> {
    let mut c = Column {
        values: Vec::new(),
        def: Vec::new(),
        rep: Vec::new(),
    };
    let mut done = 0;
    while done < rows {
        let (records, _, _) = read(rows - done, &mut c.def, &mut c.rep, &mut c.values)?;
        if records == 0 {
            break;
        }
        done += records;
    }
    Ok(c)
}

/// Whether row `i` of a flat column has a value (a required column has no levels to read).
fn is_defined<T>(c: &Column<T>, max: i16, i: usize) -> bool {
    max == 0 || c.def.get(i) == Some(&max)
}

/// The Parquet physical type a column must have, for messages.
fn wrong_type(name: &str, want: &str) -> String {
    format!("column {name:?} must hold {want}")
}

/// Reads an embedding file written by [`write_parquet`] (or the same columns written by
/// another tool, nullable or not): the vectors and their ids.
pub fn read_parquet(path: &Path) -> Result<(Embeddings, Vec<RowId>), OutputError> {
    let err = error(path);
    let invalid = |message: String| OutputError::Io {
        path: path.to_path_buf(),
        message,
    };
    let file = File::open(path).map_err(super::io(path))?;
    let reader = SerializedFileReader::new(file).map_err(&err)?;
    let meta = reader.metadata().file_metadata();
    let schema = meta.schema_descr();
    let find = |name: &str| {
        schema
            .columns()
            .iter()
            .position(|c| c.path().parts().first().map(String::as_str) == Some(name))
    };
    let index_col = find("index").ok_or_else(|| invalid("no \"index\" column".into()))?;
    let line_col = find("line");
    let (kind, value_col) = [ItemKind::Text, ItemKind::Image]
        .into_iter()
        .find_map(|k| find(k.field()).map(|c| (k, c)))
        .ok_or_else(|| invalid("no \"text\" or \"image\" column".into()))?;
    let embedding_col =
        find("embedding").ok_or_else(|| invalid("no \"embedding\" column".into()))?;
    let embedding = schema.column(embedding_col);
    if embedding.max_rep_level() != 1 {
        return Err(invalid(
            "column \"embedding\" must be a list of float32 values".into(),
        ));
    }
    let element_defined = embedding.max_def_level();
    let mut dim: Option<usize> = meta
        .key_value_metadata()
        .and_then(|kv| kv.iter().find(|kv| kv.key == DIM_KEY))
        .and_then(|kv| kv.value.as_deref()?.parse().ok());
    let mut data = Vec::new();
    let mut ids = Vec::new();
    for g in 0..reader.num_row_groups() {
        let rg = reader.get_row_group(g).map_err(&err)?;
        let rows = usize::try_from(rg.metadata().num_rows()).unwrap_or(0);
        let int64s = |col: usize, name: &str| -> Result<Column<i64>, OutputError> {
            match rg.get_column_reader(col).map_err(&err)? {
                ColumnReader::Int64ColumnReader(mut r) => {
                    read_column(rows, |n, d, rp, v| r.read_records(n, Some(d), Some(rp), v))
                        .map_err(&err)
                }
                _ => Err(invalid(wrong_type(name, "int64 values"))),
            }
        };
        let index = int64s(index_col, "index")?;
        let lines = line_col.map(|c| int64s(c, "line")).transpose()?;
        let values = match rg.get_column_reader(value_col).map_err(&err)? {
            ColumnReader::ByteArrayColumnReader(mut r) => {
                read_column(rows, |n, d, rp, v| r.read_records(n, Some(d), Some(rp), v))
                    .map_err(&err)?
            }
            _ => return Err(invalid(wrong_type(kind.field(), "strings"))),
        };
        let vectors = match rg.get_column_reader(embedding_col).map_err(&err)? {
            ColumnReader::FloatColumnReader(mut r) => {
                read_column(rows, |n, d, rp, v| r.read_records(n, Some(d), Some(rp), v))
                    .map_err(&err)?
            }
            _ => return Err(invalid(wrong_type("embedding", "a list of float32 values"))),
        };
        let index_max = schema.column(index_col).max_def_level();
        let value_max = schema.column(value_col).max_def_level();
        let line_max = line_col.map(|c| schema.column(c).max_def_level());
        let (mut next_index, mut next_line, mut next_value) = (0, 0, 0);
        let mut row_values = Vec::with_capacity(rows);
        for i in 0..rows {
            if !is_defined(&index, index_max, i) {
                return Err(invalid(format!("row {}: null index", ids.len() + 1)));
            }
            let id = index.values[next_index];
            next_index += 1;
            let line = match (&lines, line_max) {
                (Some(l), Some(max)) if is_defined(l, max, i) => {
                    next_line += 1;
                    l.values[next_line - 1]
                }
                _ => 0,
            };
            if !is_defined(&values, value_max, i) {
                return Err(invalid(format!(
                    "row {}: null {}",
                    ids.len() + 1,
                    kind.field()
                )));
            }
            let value = values.values[next_value]
                .as_utf8()
                .map_err(|e| invalid(format!("row {}: {e}", ids.len() + 1)))?
                .to_string();
            next_value += 1;
            let index = usize::try_from(id)
                .map_err(|_| invalid(format!("row {}: negative index {id}", ids.len() + 1)))?;
            row_values.push(RowId {
                index,
                line: usize::try_from(line).unwrap_or(0),
                kind,
                value,
            });
        }
        // The embedding's levels: a repetition level 0 starts a row; a value is present only
        // where the definition level is the element's.
        let mut next_value = 0;
        let mut row_len = Vec::with_capacity(rows);
        for (i, (&d, &r)) in vectors.def.iter().zip(&vectors.rep).enumerate() {
            if r == 0 {
                row_len.push(0usize);
            }
            let row = row_len.len();
            let Some(len) = row_len.last_mut() else {
                return Err(invalid(format!("embedding level {i} continues no row")));
            };
            if d == element_defined {
                data.push(vectors.values[next_value]);
                next_value += 1;
                *len += 1;
            } else if r > 0 {
                return Err(invalid(format!(
                    "row {}: a null value in its embedding",
                    ids.len() + row
                )));
            }
        }
        if row_len.len() != rows {
            return Err(invalid(format!(
                "row group {g}: {rows} rows but {} embeddings",
                row_len.len()
            )));
        }
        for (k, len) in row_len.into_iter().enumerate() {
            let want = *dim.get_or_insert(len);
            if len != want || len == 0 {
                return Err(invalid(format!(
                    "row {}: an embedding of {len} values, expected {want}",
                    ids.len() + k + 1
                )));
            }
        }
        ids.extend(row_values);
    }
    Ok((
        Embeddings {
            dim: dim.unwrap_or(0),
            data,
        },
        ids,
    ))
}

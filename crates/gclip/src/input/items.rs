//! Input lists for batch commands: JSONL (`{"text": …}` / `{"image": path}` per line) or plain
//! lines. A bad line becomes an error for that item only; the others go on.

use std::path::{Path, PathBuf};

/// What the items of a list are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ItemKind {
    Text,
    Image,
}

impl ItemKind {
    /// The JSONL field that holds an item of this kind.
    pub fn field(self) -> &'static str {
        match self {
            ItemKind::Text => "text",
            ItemKind::Image => "image",
        }
    }
}

/// One item of an input list: where it came from and its value, or why the line is unusable.
#[derive(Debug, Clone, PartialEq)]
pub struct InputItem {
    /// 1-based line number in the input file (0 for items given on the command line).
    pub line: usize,
    pub value: Result<String, String>,
}

/// Errors reading a whole list (a bad line is not one: it becomes a failed item).
#[derive(Debug, thiserror::Error)]
pub enum ItemsError {
    #[error("cannot read input list {path}: {message}")]
    Io { path: PathBuf, message: String },
}

/// Parses a list's text. Lines starting with `{` are JSON objects that must hold the kind's field
/// as a string; other non-blank lines are taken whole (blank lines are skipped, so an empty
/// caption needs JSONL: `{"text": ""}`).
pub fn parse_items(text: &str, kind: ItemKind) -> Vec<InputItem> {
    let field = kind.field();
    text.lines()
        .enumerate()
        .filter_map(|(i, raw)| {
            let line = raw.strip_suffix('\r').unwrap_or(raw);
            let trimmed = line.trim_start();
            if trimmed.is_empty() {
                return None;
            }
            let value = if trimmed.starts_with('{') {
                match serde_json::from_str::<serde_json::Value>(trimmed) {
                    Ok(v) => match v.get(field) {
                        Some(serde_json::Value::String(s)) => Ok(s.clone()),
                        Some(other) => {
                            Err(format!("field \"{field}\" must be a string, got {other}"))
                        }
                        None => Err(format!("no \"{field}\" field in the JSON object")),
                    },
                    Err(e) => Err(format!("invalid JSON: {e}")),
                }
            } else {
                Ok(line.to_string())
            };
            Some(InputItem { line: i + 1, value })
        })
        .collect()
}

/// Reads a list file.
pub fn read_items(path: &Path, kind: ItemKind) -> Result<Vec<InputItem>, ItemsError> {
    let bytes = std::fs::read(path).map_err(|e| ItemsError::Io {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let text = String::from_utf8(bytes).map_err(|e| ItemsError::Io {
        path: path.to_path_buf(),
        message: format!("not UTF-8 text (byte {})", e.utf8_error().valid_up_to()),
    })?;
    Ok(parse_items(&text, kind))
}

/// An image path from a list: as written when it exists from the current directory, otherwise
/// relative to the list file's own directory (lists usually sit beside their images).
pub fn resolve_image_path(value: &str, list_file: Option<&Path>) -> PathBuf {
    let p = PathBuf::from(value);
    if p.is_absolute() || p.exists() {
        return p;
    }
    match list_file.and_then(Path::parent) {
        Some(dir) if dir.join(&p).exists() => dir.join(p),
        _ => p,
    }
}

/// The image types [`walk_images`] finds, as messages name them.
pub const IMAGE_TYPES: &str = "JPEG, PNG, WebP, GIF, BMP, TIFF";

/// Whether a path names an image by its extension (one of [`IMAGE_TYPES`]), the test
/// [`walk_images`] applies.
pub fn is_image_path(path: &Path) -> bool {
    const EXTENSIONS: &[&str] = &["jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff"];
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// Image files under a directory, recursively, sorted, by extension.
pub fn walk_images(dir: &Path) -> Result<Vec<PathBuf>, ItemsError> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = std::fs::read_dir(&d).map_err(|e| ItemsError::Io {
            path: d.clone(),
            message: e.to_string(),
        })?;
        for entry in entries.flatten() {
            let p = entry.path();
            if p.is_dir() {
                stack.push(p);
            } else if is_image_path(&p) {
                out.push(p);
            }
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jsonl_and_plain_lines_mix_and_bad_lines_fail_alone() {
        let text = "a photo of a cat\r\n\n{\"text\": \"\"}\n{\"image\": \"x.png\"}\n{\"text\": 3}\n{broken\n  indented line\n";
        let items = parse_items(text, ItemKind::Text);
        let lines: Vec<usize> = items.iter().map(|i| i.line).collect();
        assert_eq!(lines, vec![1, 3, 4, 5, 6, 7]);
        assert_eq!(items[0].value, Ok("a photo of a cat".into()));
        assert_eq!(items[1].value, Ok(String::new()));
        assert!(items[2]
            .value
            .as_ref()
            .unwrap_err()
            .contains("no \"text\" field"));
        assert!(items[3]
            .value
            .as_ref()
            .unwrap_err()
            .contains("must be a string"));
        assert!(items[4]
            .value
            .as_ref()
            .unwrap_err()
            .contains("invalid JSON"));
        assert_eq!(items[5].value, Ok("  indented line".into()));
    }
}

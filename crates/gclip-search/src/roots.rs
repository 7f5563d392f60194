//! The folders a server may read local image files from.
//!
//! A document's image field may name a file on the machine that holds the collection. When the
//! operator indexes with the CLI, that is the point; when a client of the HTTP API names a file,
//! it would let the client read (as a thumbnail) or probe any file the server can open. So the
//! server reads local files only under roots: the folders its operator named
//! (`gclip serve --files-root DIR`) and the folders the CLI recorded with the collection when it
//! indexed files there (`files_roots.json` in the collection directory).
//!
//! Paths are compared after canonicalisation, so symbolic links cannot lead out of a root. A
//! path a client gives is first checked as written (absolute, no `..`, under a root), before the
//! file system is touched, so that the answer for a path outside the roots is the same whether
//! or not something exists there.

use std::collections::BTreeSet;
use std::path::{Component, Path, PathBuf};

use crate::error::{Result, SearchError};

/// The file in a collection directory that lists the folders its documents' images came from.
pub const ROOTS_FILE: &str = "files_roots.json";

/// What a client is told for a path it may not use, wherever that path points.
pub const OUTSIDE_ROOTS: &str = "local image paths must name a file under the server's --files-root folders (send the image bytes or a URL instead)";

/// The folders a collection's CLI-indexed images live in (none when the file is missing).
pub fn recorded_roots(collection_dir: &Path) -> Result<Vec<PathBuf>> {
    let path = collection_dir.join(ROOTS_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(crate::error::io_err(&path)(e)),
    };
    serde_json::from_str::<Vec<PathBuf>>(&text).map_err(|e| {
        SearchError::Invalid(format!(
            "{}: not a JSON list of folders ({e}); delete it and re-run gclip index/add to record the folders again",
            path.display()
        ))
    })
}

/// Adds `folders` to the collection's recorded roots (a folder already under a
/// recorded root adds nothing). Written to a temporary file and renamed, so that the list is
/// always whole.
pub fn record_roots(collection_dir: &Path, folders: &[PathBuf]) -> Result<()> {
    let existing = recorded_roots(collection_dir)?;
    let mut all: BTreeSet<PathBuf> = existing.iter().cloned().collect();
    for folder in folders {
        // A folder that does not exist holds no image to show (its documents failed).
        let Ok(canonical) = std::fs::canonicalize(folder) else {
            continue;
        };
        if !all.iter().any(|root| canonical.starts_with(root)) {
            // A new root may cover roots recorded before.
            all.retain(|root| !root.starts_with(&canonical));
            all.insert(canonical);
        }
    }
    if all.len() == existing.len() && all.iter().zip(&existing).all(|(a, b)| a == b) {
        return Ok(());
    }
    let path = collection_dir.join(ROOTS_FILE);
    let list: Vec<&PathBuf> = all.iter().collect();
    let json = serde_json::to_string_pretty(&list).map_err(std::io::Error::from);
    json.and_then(|json| gclip::fsutil::write_file_atomically(&path, json.as_bytes()))
        .map_err(crate::error::io_err(&path))
}

/// Records the folders of the local image files that `documents` name in `image_fields`
/// (relative paths taken from `base`), for the operator's own ingestion (CLI): the server may
/// then read them.
pub fn record_document_roots<'a>(
    collection_dir: &Path,
    documents: impl IntoIterator<Item = &'a crate::document::Fields>,
    image_fields: &[&str],
    base: &Path,
) -> Result<()> {
    let mut folders = BTreeSet::new();
    for fields in documents {
        for name in image_fields {
            let Some(serde_json::Value::String(v)) = fields.get(*name) else {
                continue;
            };
            if crate::remote::is_url(v) {
                continue;
            }
            if let Some(parent) = base.join(v).parent() {
                folders.insert(parent.to_path_buf());
            }
        }
    }
    let folders: Vec<PathBuf> = folders.into_iter().collect();
    record_roots(collection_dir, &folders)
}

/// Canonical root folders; paths are readable when they are inside one of them.
#[derive(Debug, Clone, Default)]
pub struct FileRoots {
    roots: Vec<PathBuf>,
}

impl FileRoots {
    /// Roots from folders that must exist (the operator's `--files-root`).
    pub fn new(folders: &[PathBuf]) -> Result<Self> {
        let roots = folders
            .iter()
            .map(|f| {
                let c = std::fs::canonicalize(f).map_err(crate::error::io_err(f))?;
                if !c.is_dir() {
                    return Err(SearchError::Invalid(format!(
                        "{}: a files root must be a folder",
                        f.display()
                    )));
                }
                Ok(c)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { roots })
    }

    /// These roots and those recorded with a collection.
    pub fn with_collection(&self, collection_dir: &Path) -> Result<Self> {
        let mut roots = self.roots.clone();
        roots.extend(recorded_roots(collection_dir)?);
        Ok(Self { roots })
    }

    pub fn is_empty(&self) -> bool {
        self.roots.is_empty()
    }

    fn covers(&self, path: &Path) -> bool {
        self.roots.iter().any(|r| path.starts_with(r))
    }

    /// A path a client gave for an image field, as the canonical file it names; relative paths
    /// are taken from the first root. Every refusal of a path outside the roots is the same
    /// [`OUTSIDE_ROOTS`] text, decided before the file system is asked anything about it.
    pub fn client_path(&self, value: &str) -> std::result::Result<PathBuf, String> {
        let given = Path::new(value);
        let absolute = if given.is_absolute() {
            given.to_path_buf()
        } else {
            match self.roots.first() {
                Some(first) => first.join(given),
                None => return Err(OUTSIDE_ROOTS.into()),
            }
        };
        let plain = absolute
            .components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
        if !plain || !self.covers(&absolute) {
            return Err(OUTSIDE_ROOTS.into());
        }
        match std::fs::canonicalize(&absolute) {
            Ok(real) if self.covers(&real) => Ok(real),
            // A link inside a root that leads out of it.
            Ok(_) => Err(OUTSIDE_ROOTS.into()),
            Err(_) => Err(format!(
                "{value}: no such file under the server's files roots"
            )),
        }
    }

    /// A stored image path, if the server may read it: its canonical file lies in a root.
    pub fn readable(&self, stored: &str) -> Option<PathBuf> {
        let real = std::fs::canonicalize(stored).ok()?;
        self.covers(&real).then_some(real)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_paths_stay_inside_the_roots() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("images");
        let secret = tmp.path().join("secret");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::create_dir_all(&secret).unwrap();
        std::fs::write(root.join("sub/a.png"), b"x").unwrap();
        std::fs::write(secret.join("private.png"), b"x").unwrap();
        #[cfg(unix)]
        std::os::unix::fs::symlink(secret.join("private.png"), root.join("link.png")).unwrap();
        let roots = FileRoots::new(std::slice::from_ref(&root)).unwrap();
        let real_root = std::fs::canonicalize(&root).unwrap();

        assert_eq!(
            roots.client_path("sub/a.png").unwrap(),
            real_root.join("sub/a.png")
        );
        let abs = real_root.join("sub/a.png");
        assert_eq!(roots.client_path(abs.to_str().unwrap()).unwrap(), abs);

        // Outside, existing or not, through .. or a link: one answer.
        let outside = [
            secret.join("private.png").display().to_string(),
            secret.join("missing.png").display().to_string(),
            "/etc/passwd".to_string(),
            "../secret/private.png".to_string(),
            "sub/../../secret/private.png".to_string(),
            format!("{}/../secret/private.png", real_root.display()),
            "/dev/zero".to_string(),
        ];
        for p in &outside {
            assert_eq!(roots.client_path(p).unwrap_err(), OUTSIDE_ROOTS, "{p}");
        }
        #[cfg(unix)]
        assert_eq!(roots.client_path("link.png").unwrap_err(), OUTSIDE_ROOTS);
        // Inside but missing says so (the roots are the operator's to disclose).
        assert!(roots
            .client_path("sub/none.png")
            .unwrap_err()
            .contains("no such file"));
        // No roots: every local path is refused.
        assert_eq!(
            FileRoots::default().client_path("a.png").unwrap_err(),
            OUTSIDE_ROOTS
        );

        assert!(roots.readable(abs.to_str().unwrap()).is_some());
        assert!(roots
            .readable(secret.join("private.png").to_str().unwrap())
            .is_none());
        #[cfg(unix)]
        assert!(roots
            .readable(root.join("link.png").to_str().unwrap())
            .is_none());
    }

    #[test]
    fn recorded_roots_accumulate_and_corruption_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        let coll = tmp.path().join("c");
        let a = tmp.path().join("a");
        std::fs::create_dir_all(a.join("deep")).unwrap();
        std::fs::create_dir_all(&coll).unwrap();
        assert!(recorded_roots(&coll).unwrap().is_empty());
        record_roots(&coll, &[a.join("deep")]).unwrap();
        record_roots(&coll, std::slice::from_ref(&a)).unwrap();
        record_roots(&coll, &[a.join("deep")]).unwrap();
        let canonical_a = std::fs::canonicalize(&a).unwrap();
        assert_eq!(recorded_roots(&coll).unwrap(), vec![canonical_a.clone()]);
        let roots = FileRoots::default().with_collection(&coll).unwrap();
        std::fs::write(a.join("deep/x.png"), b"x").unwrap();
        assert!(roots
            .readable(canonical_a.join("deep/x.png").to_str().unwrap())
            .is_some());

        std::fs::write(coll.join(ROOTS_FILE), b"{not json").unwrap();
        let e = recorded_roots(&coll).unwrap_err().to_string();
        assert!(e.contains(ROOTS_FILE), "{e}");
    }
}

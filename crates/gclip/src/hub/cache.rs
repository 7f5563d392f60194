//! The hub cache on disk: complete snapshots found without the network, and the refs, blobs
//! and snapshot links a download writes.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::plan::{plan, FileSet};
use super::{component_ok, io_err, is_commit_hash, read_json, Hub, HubError, ModelId};

/// A cached snapshot of a model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedSnapshot {
    /// `snapshots/<commit>`.
    pub dir: PathBuf,
    /// The commit the revision pointed to when the snapshot was made.
    pub commit: String,
    /// Whether every file gclip reads is there (or known not to exist in the repository);
    /// otherwise only the config and weights are.
    pub complete: bool,
}

impl Hub {
    /// The cached snapshot of a model, when it holds at least its config and weights.
    pub fn cached_snapshot(&self, id: &ModelId, arch: bool) -> Option<CachedSnapshot> {
        let repo_dir = self.config.repo_dir(&id.repo);
        let commit = if is_commit_hash(&id.revision) {
            id.revision.clone()
        } else {
            let r = std::fs::read_to_string(repo_dir.join("refs").join(&id.revision)).ok()?;
            r.trim().to_string()
        };
        if !component_ok(&commit) {
            return None;
        }
        let dir = repo_dir.join("snapshots").join(&commit);
        if !dir.is_dir() {
            return None;
        }
        let plan = plan(&id.repo, &mut SnapshotFiles { dir: &dir }, arch).ok()?;
        if !plan.required.iter().all(|f| dir.join(f).is_file()) {
            return None;
        }
        let no_exist = repo_dir.join(".no_exist").join(&commit);
        let complete = plan
            .optional
            .iter()
            .all(|f| dir.join(f).is_file() || no_exist.join(f).is_file());
        Some(CachedSnapshot {
            dir,
            commit,
            complete,
        })
    }
}

/// A snapshot folder on disk.
struct SnapshotFiles<'a> {
    dir: &'a Path,
}

impl FileSet for SnapshotFiles<'_> {
    fn has(&self, name: &str) -> bool {
        self.dir.join(name).is_file()
    }
    fn json(&mut self, name: &str) -> Result<Value, HubError> {
        read_json(&self.dir.join(name))
    }
}

/// Marks the cache as such for backup tools (the CACHEDIR.TAG standard), as huggingface_hub
/// does; best effort.
pub(super) fn tag_cache_dir(cache_dir: &Path) {
    let tag = cache_dir.join("CACHEDIR.TAG");
    if tag.exists() {
        return;
    }
    let made = std::fs::create_dir_all(cache_dir).and_then(|()| {
        std::fs::write(
            &tag,
            "Signature: 8a477f597d28d172789f06886806bc55\n\
             # This file is a cache directory tag created by gclip (Hugging Face hub cache).\n\
             # For information about cache directory tags, see:\n\
             #\thttps://bford.info/cachedir/\n",
        )
    });
    if let Err(e) = made {
        tracing::debug!("cannot write {}: {e}", tag.display());
    }
}

/// `refs/<revision>` holds `commit`, written atomically.
pub(super) fn write_ref(repo_dir: &Path, revision: &str, commit: &str) -> Result<(), HubError> {
    let path = repo_dir.join("refs").join(revision);
    if std::fs::read_to_string(&path).is_ok_and(|c| c == commit) {
        return Ok(());
    }
    let dir = path.parent().unwrap_or(repo_dir);
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    crate::fsutil::write_file_atomically(&path, commit.as_bytes())
        .map_err(|source| HubError::Io { path, source })
}

/// `pointer` → `target` (relative, pointing at `blob`); a copy of the blob where symlinks are
/// not supported.
pub(super) fn link(target: &Path, blob: &Path, pointer: &Path) -> Result<(), HubError> {
    let dir = pointer.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    if pointer.symlink_metadata().is_ok() {
        // A broken link, or a leftover: replace it.
        std::fs::remove_file(pointer).map_err(io_err(pointer))?;
    }
    #[cfg(unix)]
    let made = std::os::unix::fs::symlink(target, pointer);
    #[cfg(windows)]
    let made = std::os::windows::fs::symlink_file(target, pointer)
        .or_else(|_| std::fs::copy(blob, pointer).map(drop));
    #[cfg(not(any(unix, windows)))]
    let made = std::fs::copy(blob, pointer).map(drop);
    let _ = (target, blob);
    match made {
        Ok(()) => Ok(()),
        // Another process made the same entry in the meantime.
        Err(_) if pointer.is_file() => Ok(()),
        Err(e) => Err(HubError::Io {
            path: pointer.to_path_buf(),
            source: e,
        }),
    }
}

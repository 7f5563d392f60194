//! Files written whole or not at all: every file gclip writes in place of an older one (model
//! exports, converted-weights caches, hub refs, a collection's metadata, cached downloads) goes
//! through [`write_atomically`].

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// The hidden sibling that a write of `path` fills first: in the same directory, so the rename
/// stays on one file system, and unique to this process and call, so concurrent writers never
/// share one.
fn temporary_sibling(path: &Path) -> std::io::Result<PathBuf> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let name = path.file_name().ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{} is not a file path", path.display()),
        )
    })?;
    Ok(path.with_file_name(format!(
        ".{}.tmp-{}-{}",
        name.to_string_lossy(),
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )))
}

/// Writes `path` through `write` so that a crash or an error leaves the old file or the new one,
/// never a part: `write` fills a temporary sibling, which is flushed to disk and renamed over
/// `path`, and the directory is synced so that the rename lasts. The temporary file is removed
/// when anything fails.
pub fn write_atomically(
    path: &Path,
    write: impl FnOnce(&mut File) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let tmp = temporary_sibling(path)?;
    let written = (|| {
        let mut f = File::create(&tmp)?;
        write(&mut f)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
        sync_dir(dir.unwrap_or(Path::new(".")))
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// Whether [`write_atomically`] could write `path` now: its directory exists or can be made, and
/// a file can be created there (one is, then removed). For work done only to be written, such as
/// weights packed for a cache, skipped where the cache cannot keep them.
pub fn can_write(path: &Path) -> bool {
    let Ok(probe) = temporary_sibling(path) else {
        return false;
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if std::fs::create_dir_all(dir).is_err() {
            return false;
        }
    }
    let created = File::options().write(true).create_new(true).open(&probe);
    let _ = std::fs::remove_file(&probe);
    created.is_ok()
}

/// Bytes that this user may still write on the file system holding `dir` (`statvfs`'s available
/// blocks), or `None` where that cannot be asked (no such directory, another OS).
pub fn available_bytes(dir: &Path) -> Option<u64> {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
        let mut stat = std::mem::MaybeUninit::<libc::statvfs>::uninit();
        // SAFETY: `path` is NUL-terminated and outlives the call; `stat` has room for one
        // `statvfs`, which the call fills completely when it returns 0 (read only then).
        let stat = unsafe {
            if libc::statvfs(path.as_ptr(), stat.as_mut_ptr()) != 0 {
                return None;
            }
            stat.assume_init()
        };
        #[allow(clippy::unnecessary_cast)] // the fields' widths differ between targets
        Some((stat.f_bavail as u64).saturating_mul(stat.f_frsize as u64))
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        None
    }
}

/// [`write_atomically`] of `bytes`.
pub fn write_file_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_atomically(path, |f| f.write_all(bytes))
}

/// `fsync` of a directory, so that a rename in it is durable.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    #[test]
    fn available_bytes_are_known_for_a_directory_and_not_for_a_missing_one() {
        let dir = tempfile::tempdir().unwrap();
        assert!(available_bytes(dir.path()).is_some_and(|b| b > 0));
        assert_eq!(available_bytes(&dir.path().join("missing")), None);
    }

    use super::*;

    #[test]
    fn replaces_whole_files_and_leaves_the_old_one_on_error() {
        let dir = std::env::temp_dir().join(format!("gclip-fsutil-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("a.json");
        write_file_atomically(&path, b"one").unwrap();
        write_file_atomically(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        let failed = write_atomically(&path, |f| {
            f.write_all(b"partial")?;
            Err(std::io::Error::other("the writer failed"))
        });
        assert_eq!(failed.unwrap_err().to_string(), "the writer failed");
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        let left: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
        assert_eq!(left.len(), 1, "no temporary file is left behind");
        assert!(write_file_atomically(Path::new("/"), b"x").is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

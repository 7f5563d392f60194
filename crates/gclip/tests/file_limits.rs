//! Image files are read bounded: only regular files, never more than the size limit, and a
//! named pipe or a device fails at once instead of hanging or filling memory.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use gclip::input::image::{
    parse_max_image_bytes, read_image_file, ImageError, PreprocessConfig, Preprocessor,
    DEFAULT_MAX_IMAGE_BYTES,
};

fn fixture_image() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/images/clipart_0.png")
}

/// Runs `read_image_file` in a thread: a call that blocks fails the test instead of hanging it.
fn read_within_a_minute(path: &Path, max_bytes: u64) -> Result<Vec<u8>, ImageError> {
    let (tx, rx) = mpsc::channel();
    let p = path.to_path_buf();
    std::thread::spawn(move || {
        let _ = tx.send(read_image_file(&p, max_bytes));
    });
    rx.recv_timeout(Duration::from_secs(60))
        .unwrap_or_else(|_| panic!("reading {} blocked", path.display()))
}

fn assert_not_regular(err: ImageError, path: &Path, kind: &str) {
    let msg = err.to_string();
    assert!(
        matches!(err, ImageError::NotRegularFile { .. }),
        "wrong error: {msg}"
    );
    assert!(msg.contains("not a regular file"), "{msg}");
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert!(msg.contains(kind), "{msg}");
}

#[cfg(unix)]
#[test]
fn named_pipe_is_refused_without_blocking() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo.png");
    let status = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo runs");
    assert!(status.success());
    let err = read_within_a_minute(&fifo, DEFAULT_MAX_IMAGE_BYTES).unwrap_err();
    assert_not_regular(err, &fifo, "named pipe");
    // Through the preprocessor as well (the path the CLI and the server take).
    let pre = Preprocessor::new(PreprocessConfig::open_clip(32));
    let (tx, rx) = mpsc::channel();
    let f = fifo.clone();
    std::thread::spawn(move || {
        let _ = tx.send(pre.pixels_from_path(&f).map(|_| ()));
    });
    let err = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the preprocessor blocked on a named pipe")
        .unwrap_err();
    assert_not_regular(err, &fifo, "named pipe");
}

#[cfg(unix)]
#[test]
fn devices_are_refused() {
    let zero = Path::new("/dev/zero");
    if zero.exists() {
        let err = read_within_a_minute(zero, DEFAULT_MAX_IMAGE_BYTES).unwrap_err();
        assert_not_regular(err, zero, "character device");
    }
}

#[test]
fn directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let err = read_within_a_minute(dir.path(), DEFAULT_MAX_IMAGE_BYTES).unwrap_err();
    assert_not_regular(err, dir.path(), "directory");
}

#[test]
fn missing_file_is_an_io_error_naming_it_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nope.png");
    let err = read_image_file(&path, 10).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, ImageError::Io { .. }), "{msg}");
    assert_eq!(msg.matches("nope.png").count(), 1, "{msg}");
}

#[test]
fn files_over_the_limit_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.png");
    std::fs::write(&path, vec![7u8; 1000]).unwrap();
    let err = read_image_file(&path, 999).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, ImageError::FileTooLarge { limit: 999, .. }),
        "{msg}"
    );
    assert!(msg.contains("big.png") && msg.contains("999"), "{msg}");
    assert_eq!(read_image_file(&path, 1000).unwrap().len(), 1000);
    // The preprocessor applies its own limit.
    let mut cfg = PreprocessConfig::open_clip(32);
    cfg.max_file_bytes = 999;
    let err = Preprocessor::new(cfg).pixels_from_path(&path).unwrap_err();
    assert!(matches!(err, ImageError::FileTooLarge { .. }), "{err}");
}

#[test]
fn ordinary_images_still_work() {
    let path = fixture_image();
    let size = std::fs::metadata(&path).unwrap().len();
    let bytes = read_image_file(&path, size).unwrap();
    assert_eq!(bytes, std::fs::read(&path).unwrap());
    let pre = Preprocessor::new(PreprocessConfig::open_clip(32));
    assert_eq!(pre.pixels_from_path(&path).unwrap().len(), 3 * 32 * 32);
    // Just below the file's size, the same image is refused.
    let mut cfg = PreprocessConfig::open_clip(32);
    cfg.max_file_bytes = size - 1;
    assert!(Preprocessor::new(cfg).pixels_from_path(&path).is_err());
}

#[test]
fn size_limit_variable_is_parsed_in_one_place() {
    assert_eq!(parse_max_image_bytes(None), DEFAULT_MAX_IMAGE_BYTES);
    assert_eq!(parse_max_image_bytes(Some(" 1000 ")), 1000);
    assert_eq!(parse_max_image_bytes(Some("")), DEFAULT_MAX_IMAGE_BYTES);
    assert_eq!(parse_max_image_bytes(Some("0")), DEFAULT_MAX_IMAGE_BYTES);
    assert_eq!(parse_max_image_bytes(Some("lots")), DEFAULT_MAX_IMAGE_BYTES);
}

#[test]
fn pixel_limit_default_is_shared() {
    if std::env::var_os(gclip::input::image::MAX_IMAGE_PIXELS_VAR).is_none() {
        assert_eq!(gclip::input::image::max_image_pixels(), 40_000_000);
        assert_eq!(PreprocessConfig::open_clip(224).max_pixels, 40_000_000);
        assert_eq!(
            PreprocessConfig::transformers_default().max_pixels,
            40_000_000
        );
    }
}

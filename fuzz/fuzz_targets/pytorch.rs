//! PyTorch zip checkpoints (`.pt`/`.pth`/`.bin`) through gclip's own path: `Weights::open` (the
//! pickle, with and without a `state_dict` wrapper, after gclip's pickle and storage checks) on
//! the input written to a file; when gclip accepts the file, candle's reader of every tensor it
//! lists (what `Weights::get` calls). An allocation the input can size beyond the file is a
//! finding (libFuzzer's default `-rss_limit_mb=2048` reports it as an OOM).
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use candle_core::{DType, Device};
use gclip::model::weights::Weights;
use libfuzzer_sys::fuzz_target;

fn file() -> &'static PathBuf {
    static DIR: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    let (_, path) = DIR.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("model.pt");
        (dir, path)
    });
    path
}

fuzz_target!(|data: &[u8]| {
    let path = file();
    std::fs::write(path, data).expect("write the input");
    // A file gclip's checks accept must be safe to read in full: read every tensor it lists,
    // with candle's reader as `Weights::get` does, under both pickle layouts.
    if Weights::open(std::slice::from_ref(path), &Device::Cpu, DType::F32).is_err() {
        return;
    }
    for key in [None, Some("state_dict")] {
        let Ok(Ok(pth)) =
            std::panic::catch_unwind(|| candle_core::pickle::PthTensors::new(path, key))
        else {
            continue;
        };
        for name in pth.tensor_infos().keys() {
            if let Ok(Some(t)) = pth.get(name) {
                let _ = t.to_dtype(DType::F32);
            }
        }
    }
});

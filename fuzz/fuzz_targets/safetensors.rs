//! Safetensors checkpoints: gclip's `Weights::open` (header, names, naming scheme) on the
//! input written to a file, and candle's reader of every tensor in it (what `Weights::get`
//! calls for each tensor a model asks for).
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
        let path = dir.path().join("model.safetensors");
        (dir, path)
    });
    path
}

fuzz_target!(|data: &[u8]| {
    let path = file();
    std::fs::write(path, data).expect("write the input");
    let _ = Weights::open(std::slice::from_ref(path), &Device::Cpu, DType::F32);
    if let Ok(st) = candle_core::safetensors::SliceSafetensors::new(data) {
        for (name, _) in st.tensors() {
            if let Ok(t) = st.load(&name, &Device::Cpu) {
                let _ = t.to_dtype(DType::F32);
            }
        }
    }
});

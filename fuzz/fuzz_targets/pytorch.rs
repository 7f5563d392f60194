//! PyTorch zip checkpoints (`.pt`/`.pth`/`.bin`): gclip's `Weights::open` (the pickle, with and
//! without a `state_dict` wrapper) on the input written to a file, and candle's reader of every
//! tensor it lists (what `Weights::get` calls for each tensor a model asks for).
//!
//! Tensors whose declared size exceeds the whole input are not read: candle allocates the
//! declared size before reading, so a pickle claiming a huge storage is an out-of-memory, not
//! an error (issue 10: "pickle storage sizes checked against the archive's actual entry
//! sizes"; reproducer in fuzz/regressions/pytorch/). Remove the guard once the check is in.
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
    let _ = Weights::open(std::slice::from_ref(path), &Device::Cpu, DType::F32);
    for key in [None, Some("state_dict")] {
        let Ok(pth) = candle_core::pickle::PthTensors::new(path, key) else {
            continue;
        };
        for (name, info) in pth.tensor_infos() {
            let bytes = info
                .layout
                .dims()
                .iter()
                .try_fold(info.dtype.size_in_bytes(), |n, &d| n.checked_mul(d));
            if bytes.is_none_or(|b| b > data.len()) {
                continue;
            }
            if let Ok(Some(t)) = pth.get(name) {
                let _ = t.to_dtype(DType::F32);
            }
        }
    }
});

//! Model loading refuses damaged weights: NaN or infinite values (named, counted), and PyTorch
//! archives whose pickle describes storages or views that the archive does not hold.

use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use gclip::model::{ModelError, Weights};
use gclip::source::ModelSource;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/models")
        .join(name)
}

#[test]
fn non_finite_weights_are_refused_with_the_tensor_name() {
    let dir = tempfile::tempdir().unwrap();
    let src = fixture("hf-gelu");
    std::fs::copy(src.join("config.json"), dir.path().join("config.json")).unwrap();
    // A linear weight, the token table (used in place) and one of transformers' separate
    // q/k/v weights (read in place as part of the fused one).
    for name in [
        "text_model.encoder.layers.1.mlp.fc1.weight",
        "text_model.embeddings.token_embedding.weight",
        "vision_model.encoder.layers.0.self_attn.k_proj.weight",
    ] {
        let mut tensors =
            candle_core::safetensors::load(src.join("model.safetensors"), &Device::Cpu).unwrap();
        let t = &tensors[name];
        let mut values = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        values[17] = f32::NAN;
        let shape = t.dims().to_vec();
        tensors.insert(
            name.into(),
            Tensor::from_vec(values, shape, &Device::Cpu).unwrap(),
        );
        candle_core::safetensors::save(&tensors, dir.path().join("model.safetensors")).unwrap();
        let err = match ModelSource::HfDir(dir.path().to_path_buf()).load(&Device::Cpu, DType::F32)
        {
            Ok(_) => panic!("a checkpoint with NaN in {name} loaded"),
            Err(e) => e,
        };
        let msg = err.to_string();
        match &err {
            ModelError::NonFinite { name: n, count, .. } => {
                assert_eq!(n, name);
                assert_eq!(*count, 1);
            }
            other => panic!("wrong error: {other}"),
        }
        assert!(msg.contains(name) && msg.contains("1 non-finite"), "{msg}");
    }

    // Infinity in a half-precision tensor is caught too.
    let mut tensors = HashMapOf::new();
    tensors.insert(
        "visual.proj".to_string(),
        Tensor::new(
            &[[1f32, f32::INFINITY], [f32::NEG_INFINITY, 0.0]],
            &Device::Cpu,
        )
        .unwrap()
        .to_dtype(DType::F16)
        .unwrap(),
    );
    let path = dir.path().join("inf.safetensors");
    candle_core::safetensors::save(&tensors, &path).unwrap();
    let w = Weights::open(&[path], &Device::Cpu, DType::F32).unwrap();
    let err = w.get("vision.projection", &[2, 2]).unwrap_err();
    assert!(
        matches!(
            err,
            ModelError::NonFinite {
                count: 2,
                total: 4,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("visual.proj"), "{err}");
}

type HashMapOf = std::collections::HashMap<String, Tensor>;

// ---------------------------------------------------------------------------------------------
// PyTorch archives written by hand: `archive/data.pkl` (a pickle of one tensor, as
// `torch.save` writes it) and `archive/data/0` (the storage's bytes).

fn unicode(p: &mut Vec<u8>, s: &str) {
    p.push(b'X');
    p.extend((s.len() as u32).to_le_bytes());
    p.extend(s.as_bytes());
}

fn int(p: &mut Vec<u8>, v: i32) {
    p.push(b'J');
    p.extend(v.to_le_bytes());
}

fn long(p: &mut Vec<u8>, v: i64) {
    p.push(0x8a);
    p.push(8);
    p.extend(v.to_le_bytes());
}

/// `{"visual.proj": _rebuild_tensor_v2(storage(FloatStorage, "0", storage_elems), offset,
/// shape, stride, False, OrderedDict())}`.
fn state_dict_pickle(
    storage_elems: i64,
    offset: i32,
    shape: [i32; 2],
    stride: [i32; 2],
) -> Vec<u8> {
    let mut p = vec![0x80, 2, b'}', b'('];
    unicode(&mut p, "visual.proj");
    p.extend(b"ctorch._utils\n_rebuild_tensor_v2\n");
    p.push(b'(');
    p.push(b'(');
    unicode(&mut p, "storage");
    p.extend(b"ctorch\nFloatStorage\n");
    unicode(&mut p, "0");
    unicode(&mut p, "cpu");
    long(&mut p, storage_elems);
    p.push(b't');
    p.push(b'Q');
    int(&mut p, offset);
    int(&mut p, shape[0]);
    int(&mut p, shape[1]);
    p.push(0x86);
    int(&mut p, stride[0]);
    int(&mut p, stride[1]);
    p.push(0x86);
    p.push(0x89);
    p.extend(b"ccollections\nOrderedDict\n");
    p.push(b')');
    p.push(b'R');
    p.push(b't');
    p.push(b'R');
    p.push(b'u');
    p.push(b'.');
    p
}

fn write_pt(path: &Path, pickle: &[u8], storage: &[u8]) {
    let file = std::fs::File::create(path).unwrap();
    let mut zip = zip::ZipWriter::new(file);
    let opts =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    zip.start_file("archive/data.pkl", opts).unwrap();
    zip.write_all(pickle).unwrap();
    zip.start_file("archive/data/0", opts).unwrap();
    zip.write_all(storage).unwrap();
    zip.finish().unwrap();
}

fn floats(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn open_err(path: &Path) -> String {
    match Weights::open(&[path.to_path_buf()], &Device::Cpu, DType::F32) {
        Ok(_) => panic!("{} opened", path.display()),
        Err(e) => {
            assert!(matches!(e, ModelError::Checkpoint { .. }), "{e}");
            e.to_string()
        }
    }
}

#[test]
fn pytorch_storages_must_fit_in_the_archive() {
    let dir = tempfile::tempdir().unwrap();
    let data = floats(&[1.0, 2.0, 3.0, 4.0]);

    // The well-formed archive loads: the pickle written here is one the reader accepts.
    let good = dir.path().join("good.pt");
    write_pt(&good, &state_dict_pickle(4, 0, [2, 2], [2, 1]), &data);
    let w = Weights::open(&[good], &Device::Cpu, DType::F32).unwrap();
    // open_clip's projection is stored transposed.
    let t = w.get("vision.projection", &[2, 2]).unwrap();
    assert_eq!(t.to_vec2::<f32>().unwrap(), [[1.0, 3.0], [2.0, 4.0]]);

    // A pickle that claims a storage of 2^31 floats over a 16-byte entry.
    let huge = dir.path().join("huge.pt");
    write_pt(&huge, &state_dict_pickle(1 << 31, 0, [2, 2], [2, 1]), &data);
    let msg = open_err(&huge);
    assert!(
        msg.contains("visual.proj") && msg.contains("2147483648") && msg.contains("16 bytes"),
        "{msg}"
    );

    // A shape of 2^31 - 1 rows, storage to match: refused before anything is allocated.
    let rows = dir.path().join("rows.pt");
    write_pt(
        &rows,
        &state_dict_pickle(2 * i32::MAX as i64, 0, [i32::MAX, 2], [2, 1]),
        &data,
    );
    let msg = open_err(&rows);
    assert!(msg.contains("visual.proj"), "{msg}");

    // A negative storage size (a long that becomes huge once unsigned).
    let negative = dir.path().join("negative.pt");
    write_pt(&negative, &state_dict_pickle(-1, 0, [2, 2], [2, 1]), &data);
    assert!(open_err(&negative).contains("visual.proj"));

    // A view past the end of its storage: offset 1 with four elements in a storage of four.
    let offset = dir.path().join("offset.pt");
    write_pt(&offset, &state_dict_pickle(4, 1, [2, 2], [2, 1]), &data);
    let msg = open_err(&offset);
    assert!(
        msg.contains("visual.proj") && msg.contains("beyond its storage"),
        "{msg}"
    );

    // Strides that reach past the storage.
    let strided = dir.path().join("strided.pt");
    write_pt(&strided, &state_dict_pickle(4, 0, [2, 2], [4, 1]), &data);
    assert!(open_err(&strided).contains("beyond its storage"));
}

#[test]
fn model_errors_carry_no_backtrace_even_with_rust_backtrace() {
    // Re-run this test in a child process with RUST_BACKTRACE=1 (the variable is read once per
    // process, so setting it here would be too late and racy).
    if std::env::var_os("GCLIP_TEST_BACKTRACE_CHILD").is_none() {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "model_errors_carry_no_backtrace_even_with_rust_backtrace",
                "--exact",
                "--nocapture",
            ])
            .env("GCLIP_TEST_BACKTRACE_CHILD", "1")
            .env("RUST_BACKTRACE", "1")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{text}");
        assert!(text.contains("1 passed"), "{text}");
        return;
    }
    // A failing tensor operation: candle captures a backtrace into the error.
    let a = Tensor::zeros((2, 3), DType::F32, &Device::Cpu).unwrap();
    let e = a.matmul(&a).unwrap_err();
    let raw = e.to_string();
    assert!(
        raw.lines().count() > 3,
        "candle did not capture a backtrace, the test proves nothing: {raw}"
    );
    let has_frames = |s: &str| {
        s.contains("stack backtrace")
            || s.lines()
                .any(|l| l.trim_start().starts_with("0:") || l.trim_start().starts_with("at "))
    };
    assert!(has_frames(&raw), "{raw}");
    let msg = ModelError::from(e).to_string();
    assert!(!has_frames(&msg), "{msg}");
    assert_eq!(msg.lines().count(), 1, "{msg}");
    assert!(msg.contains("matmul"), "{msg}");

    // The same through a loaded model: pixels of the wrong size.
    let loaded = ModelSource::HfDir(fixture("hf-gelu"))
        .load(&Device::Cpu, DType::F32)
        .unwrap();
    let wrong = Tensor::zeros((1, 3, 7, 5), DType::F32, &Device::Cpu).unwrap();
    let err = loaded.clip.encode_pixels(&wrong, true).unwrap_err();
    let msg = err.to_string();
    assert!(!has_frames(&msg), "{msg}");
    // Error chains (as anyhow prints them with `{:#}`) add nothing either.
    let chained = format!("{:#}", anyhow::Error::from(err));
    assert!(!has_frames(&chained), "{chained}");
}

/// Reproducers the pytorch fuzz target found: each is an error, never a panic or a huge
/// allocation.
#[test]
fn fuzzed_pytorch_reproducers_are_errors() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/regressions/pytorch");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".pt"))
        .collect();
    names.sort();
    assert!(names.len() >= 3, "{names:?}");
    for name in names {
        let e = open_err(&dir.join(&name));
        assert!(e.contains(&name), "{name}: {e}");
    }
}

/// A pickle string whose declared length runs past the pickle is refused before candle's reader
/// reserves that length.
#[test]
fn pickle_strings_must_fit_in_the_pickle() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("long_string.pt");
    let mut pickle = vec![0x80, 2, b'}', b'(', b'X'];
    pickle.extend(4_000_000_000u32.to_le_bytes());
    pickle.extend(b"visual.proj");
    write_pt(&path, &pickle, &floats(&[1.0]));
    let e = open_err(&path);
    assert!(e.contains("declares 4000000000 bytes"), "{e}");

    // The same string with its true length gets past the check (to the reader's own error).
    let mut pickle = vec![0x80, 2, b'}', b'('];
    unicode(&mut pickle, "visual.proj");
    write_pt(&path, &pickle, &floats(&[1.0]));
    let e = open_err(&path);
    assert!(!e.contains("declares"), "{e}");
}

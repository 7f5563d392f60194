//! Image preprocessing against the reference pipelines.
//!
//! The fixtures (tests/fixtures/images, made by tools/gen_image_fixtures.py) hold, for every
//! input image and case, the 8-bit RGB pixels that open_clip's transform and transformers'
//! PIL `CLIPImageProcessor` produce before their float steps, and for a few cases the final
//! float tensors. Every image must match exactly, JPEG included (the decoder reproduces
//! libjpeg-turbo's output).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use gclip::input::image::{ImageError, PreprocessConfig, PreprocessConvention, Preprocessor};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/images")
}

#[derive(serde::Deserialize)]
struct Case {
    file: String,
    pil_mode: String,
    format: String,
    convention: String,
    size: usize,
    crop: usize,
    exif: bool,
    expected: String,
    tensor: Option<String>,
}

fn config(case: &Case) -> PreprocessConfig {
    let mut cfg = match case.convention.as_str() {
        "open_clip" => PreprocessConfig::open_clip(case.size),
        "transformers" => PreprocessConfig::transformers_default(),
        other => panic!("unknown convention {other}"),
    };
    cfg.image_size = case.size;
    cfg.crop_size = case.crop;
    cfg.apply_exif_orientation = case.exif;
    cfg
}

fn load_cases() -> Vec<Case> {
    let text = std::fs::read_to_string(fixtures().join("manifest.json")).expect("fixture manifest");
    serde_json::from_str(&text).expect("manifest parses")
}

#[test]
fn pixels_match_references() {
    let cases = load_cases();
    assert!(cases.len() >= 80, "expected the full fixture corpus");
    // (format, mode, convention) -> (cases, max difference)
    let mut table: BTreeMap<(String, String, String), (usize, u8)> = BTreeMap::new();
    let mut failures = Vec::new();
    for case in &cases {
        let pre = Preprocessor::new(config(case));
        let got = match pre.rgb8_from_path(&fixtures().join(&case.file)) {
            Ok(g) => g,
            Err(e) => {
                failures.push(format!("{} [{}]: {e}", case.file, case.convention));
                continue;
            }
        };
        let want = std::fs::read(fixtures().join(&case.expected)).unwrap();
        assert_eq!(
            (got.width, got.height),
            (case.crop, case.crop),
            "{}",
            case.file
        );
        assert_eq!(got.data.len(), want.len(), "{}", case.file);
        let (max, count) = got
            .data
            .iter()
            .zip(&want)
            .fold((0u8, 0usize), |(m, n), (a, b)| {
                (m.max(a.abs_diff(*b)), n + (a != b) as usize)
            });
        if max > 0 {
            failures.push(format!(
                "{} [{} {}->{} exif={}]: max diff {max}, {count} of {} samples differ",
                case.file,
                case.convention,
                case.size,
                case.crop,
                case.exif,
                want.len()
            ));
        }
        let e = table
            .entry((
                case.format.clone(),
                case.pil_mode.clone(),
                case.convention.clone(),
            ))
            .or_default();
        e.0 += 1;
        e.1 = e.1.max(max);

        if let Some(t) = &case.tensor {
            let want: Vec<f32> = std::fs::read(fixtures().join(t))
                .unwrap()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            let got = pre.normalize(&got);
            assert_eq!(got.len(), want.len());
            let worst = got
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            // Both references' float steps are reproduced operation for operation.
            let limit = 0.0;
            if worst > limit {
                failures.push(format!(
                    "{} [{}]: tensor differs by {worst}",
                    case.file, case.convention
                ));
            }
        }
    }
    eprintln!("format mode convention: cases, max difference (8-bit units)");
    for ((f, m, c), (n, max)) in &table {
        eprintln!("{f:5} {m:5} {c:12}: {n:3} cases, max diff {max}");
    }
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn bad_inputs_give_typed_errors_naming_the_file() {
    let dir = std::env::temp_dir().join(format!("gclip-bad-images-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = std::fs::read(fixtures().join("rgb_301x199.png")).unwrap();
    let jpeg = std::fs::read(fixtures().join("jpeg_420_q85.jpg")).unwrap();
    let write = |name: &str, bytes: &[u8]| {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    };
    let empty = write("empty.png", b"");
    let text = write("notes.jpg", b"this is not an image at all");
    let truncated_png = write("truncated.png", &good[..good.len() / 2]);
    let truncated_jpeg = write("truncated.jpg", &jpeg[..200]);
    // A PNG header claiming 100000 x 100000 pixels and nothing else.
    let mut bomb = b"\x89PNG\r\n\x1a\n".to_vec();
    let ihdr = [
        &100_000u32.to_be_bytes()[..],
        &100_000u32.to_be_bytes()[..],
        &[8, 2, 0, 0, 0],
    ]
    .concat();
    bomb.extend_from_slice(&(ihdr.len() as u32).to_be_bytes());
    let crc_input = [&b"IHDR"[..], &ihdr].concat();
    bomb.extend_from_slice(&crc_input);
    bomb.extend_from_slice(&crc32(&crc_input).to_be_bytes());
    let bomb = write("bomb.png", &bomb);
    let missing = dir.join("missing.png");
    let ok = fixtures().join("rgb_301x199.png");

    let pre = Preprocessor::new(PreprocessConfig::open_clip(64));
    let paths = vec![
        empty.clone(),
        text.clone(),
        ok.clone(),
        truncated_png.clone(),
        truncated_jpeg.clone(),
        bomb.clone(),
        missing.clone(),
    ];
    let results = pre.batch_from_paths(&paths);
    assert_eq!(results.len(), paths.len());
    let msg = |i: usize| match &results[i] {
        Err(e) => e.to_string(),
        Ok(_) => panic!("{} should fail", paths[i].display()),
    };
    assert!(matches!(results[0], Err(ImageError::Empty { .. })));
    assert!(matches!(results[1], Err(ImageError::UnknownFormat { .. })));
    assert_eq!(results[2].as_ref().map(|v| v.len()).ok(), Some(3 * 64 * 64));
    assert!(
        matches!(results[3], Err(ImageError::Corrupt { .. })),
        "{:?}",
        results[3]
    );
    assert!(
        matches!(results[4], Err(ImageError::Corrupt { .. })),
        "{:?}",
        results[4]
    );
    assert!(
        matches!(results[5], Err(ImageError::TooLarge { .. })),
        "{:?}",
        results[5]
    );
    assert!(matches!(results[6], Err(ImageError::Io { .. })));
    for i in [0, 1, 3, 4, 5, 6] {
        assert!(
            msg(i).contains(paths[i].file_name().unwrap().to_str().unwrap()),
            "{}",
            msg(i)
        );
    }
    assert!(msg(5).contains("max_pixels"), "{}", msg(5));

    // The limit is the caller's: a small one refuses an ordinary image, and says so.
    let mut cfg = PreprocessConfig::open_clip(64);
    cfg.max_pixels = 1000;
    let err = Preprocessor::new(cfg).rgb8_from_path(&ok).unwrap_err();
    assert!(
        matches!(
            err,
            ImageError::TooLarge {
                width: 301,
                height: 199,
                limit: 1000,
                ..
            }
        ),
        "{err}"
    );

    // Zero-sized images are refused from the header.
    let mut zero = good.clone();
    zero[16..20].copy_from_slice(&0u32.to_be_bytes());
    let crc = crc32(&zero[12..29]);
    zero[29..33].copy_from_slice(&crc.to_be_bytes());
    let err = pre.rgb8_from_bytes(&zero, "zero.png").unwrap_err();
    assert!(matches!(err, ImageError::ZeroSized { .. }), "{err}");
    assert!(err.to_string().contains("zero.png"));
    // A configuration that cannot produce pixels is an error, not a panic.
    let mut cfg = PreprocessConfig::open_clip(0);
    cfg.crop_size = 0;
    let err = Preprocessor::new(cfg).rgb8_from_path(&ok).unwrap_err();
    assert!(matches!(err, ImageError::Config(_)), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn transformers_config_from_json() {
    let cfg = PreprocessConfig::from_hf_preprocessor_json(
        r#"{"crop_size": {"height": 224, "width": 224}, "do_center_crop": true, "do_normalize": true,
            "do_resize": true, "feature_extractor_type": "CLIPFeatureExtractor",
            "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
            "resample": 3, "size": {"shortest_edge": 224}}"#,
    )
    .unwrap();
    assert_eq!(cfg.convention, PreprocessConvention::Transformers);
    assert_eq!((cfg.image_size, cfg.crop_size), (224, 224));
    let pre = Preprocessor::new(cfg);
    let t = pre
        .pixels_from_path(&fixtures().join("photo_china.jpg"))
        .unwrap();
    assert_eq!(t.len(), 3 * 224 * 224);
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[test]
fn corrupted_files_never_panic() {
    // Flip, cut and splice bytes of one fixture per format; every outcome must be a value or a
    // typed error, never a panic (which the decoder wrapper would report as "decoder panicked").
    let files = [
        "jpeg_420_q85.jpg",
        "jpeg_progressive.jpg",
        "jpeg_restart.jpg",
        "p_trns_index.png",
        "gif_transparent.gif",
        "bmp_8bit_palette.bmp",
        "tiff_rgb.tif",
        "webp_lossy.webp",
    ];
    let pre = Preprocessor::new(PreprocessConfig::open_clip(32));
    let mut seed = 7u64;
    let mut next = move || {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 33) as usize
    };
    for f in files {
        let good = std::fs::read(fixtures().join(f)).unwrap();
        if !fixtures().join(f).exists() {
            continue;
        }
        for round in 0..40 {
            let mut bad = good.clone();
            match round % 3 {
                0 => {
                    for _ in 0..1 + next() % 8 {
                        let i = next() % bad.len();
                        bad[i] ^= 1 << (next() % 8);
                    }
                }
                1 => bad.truncate(next() % bad.len()),
                _ => {
                    let i = next() % bad.len();
                    let j = next() % bad.len();
                    let (a, b) = (i.min(j), i.max(j));
                    bad.drain(a..b);
                }
            }
            if let Err(e) = pre.rgb8_from_bytes(&bad, f) {
                assert!(
                    !e.to_string().contains("panicked"),
                    "{f} round {round}: {e}"
                );
            }
        }
    }
}

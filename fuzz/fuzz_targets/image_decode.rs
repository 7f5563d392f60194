//! Image decoding (PNG, JPEG, GIF, BMP, WebP, TIFF: `gclip::input::decode::decode`) and, for
//! small images, the preprocessing that follows it.
//!
//! Every input must give a typed error or an image whose samples fill exactly
//! width × height × channels. A panic is a finding even though `decode` catches it (the
//! fuzzer's panic hook aborts first): a caught panic turns a corrupt file into
//! "decoder panicked" instead of an error naming what is wrong.
#![no_main]

use gclip::input::decode::{decode, Mode, Samples, Transparency};
use gclip::input::image::{PreprocessConfig, Preprocessor};
use libfuzzer_sys::fuzz_target;

/// Pixel cap: large enough for every seed, small enough that a header claiming the maximum
/// stays far below the fuzzer's memory limit.
const MAX_PIXELS: u64 = 1 << 22;

fuzz_target!(|data: &[u8]| {
    let Ok(img) = decode(data, MAX_PIXELS) else {
        return;
    };
    assert!(img.width > 0 && img.height > 0);
    assert!((img.width as u64) * (img.height as u64) <= MAX_PIXELS);
    let expected = img.width * img.height * img.mode.channels();
    match &img.samples {
        Samples::U8(v) => {
            assert_ne!(img.mode, Mode::I16);
            assert_eq!(
                v.len(),
                expected,
                "{:?} {}x{}",
                img.mode,
                img.width,
                img.height
            );
        }
        Samples::U16(v) => {
            assert_eq!(img.mode, Mode::I16);
            assert_eq!(v.len(), expected);
        }
    }
    assert!(img.palette.len() <= 256);
    if let Some(Transparency::Alphas(a)) = &img.transparency {
        assert!(a.len() <= 256);
    }
    if let Some(o) = img.orientation {
        assert!((1..=8).contains(&o));
    }
    // Preprocess small images both ways (the resize cost grows with the image).
    if img.width * img.height <= 1 << 16 {
        for cfg in [
            PreprocessConfig::open_clip(16),
            PreprocessConfig::transformers_default(),
        ] {
            let mut cfg = cfg;
            cfg.image_size = 16;
            cfg.crop_size = 16;
            cfg.apply_exif_orientation = true;
            let out = Preprocessor::new(cfg).rgb8_from_decoded(img.clone());
            assert_eq!(out.data.len(), 16 * 16 * 3);
        }
    }
});

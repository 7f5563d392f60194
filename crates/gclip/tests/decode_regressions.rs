//! Inputs that once made the image decoders panic or allocate for data the file does not hold
//! (found by reading the decoders for the fuzz targets in `fuzz/`, and by fuzzing). Each must
//! now give a typed error naming the problem; none may panic (`decode` would report a caught
//! panic as "decoder panicked").
//!
//! The files under `fuzz/regressions/image_decode/` are replayed too.

use std::path::Path;

use gclip::input::decode::{decode, DecodeError, Format};

/// A JPEG assembled from segments: SOI, then each `(marker, payload)` with its length, then
/// the entropy-coded bytes of a scan right after its SOS, then EOI.
fn jpeg(segments: &[(u8, Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let mut out = vec![0xFF, 0xD8];
    for (marker, payload, scan_data) in segments {
        out.extend_from_slice(&[0xFF, *marker]);
        out.extend_from_slice(&((payload.len() + 2) as u16).to_be_bytes());
        out.extend_from_slice(payload);
        out.extend_from_slice(scan_data);
    }
    out.extend_from_slice(&[0xFF, 0xD9]);
    out
}

fn dqt() -> (u8, Vec<u8>, Vec<u8>) {
    let mut p = vec![0u8];
    p.extend_from_slice(&[1u8; 64]);
    (0xDB, p, vec![])
}

/// One Huffman table with a single one-bit code for `symbol`.
fn dht(class: u8, id: u8, symbol: u8) -> (u8, Vec<u8>, Vec<u8>) {
    let mut p = vec![(class << 4) | id, 1];
    p.extend_from_slice(&[0u8; 15]);
    p.push(symbol);
    (0xC4, p, vec![])
}

/// A frame header: `(id, sampling HxV, quantisation table)` per component.
fn sof(marker: u8, w: u16, h: u16, comps: &[(u8, u8, u8)]) -> (u8, Vec<u8>, Vec<u8>) {
    let mut p = vec![8];
    p.extend_from_slice(&h.to_be_bytes());
    p.extend_from_slice(&w.to_be_bytes());
    p.push(comps.len() as u8);
    for &(id, hv, tq) in comps {
        p.extend_from_slice(&[id, hv, tq]);
    }
    (marker, p, vec![])
}

/// A scan of component 1 with tables 0/0, spectral band `ss..=se`, approximation `ah`/`al`.
fn sos(ss: u8, se: u8, ah: u8, al: u8, data: &[u8]) -> (u8, Vec<u8>, Vec<u8>) {
    (
        0xDA,
        vec![1, 1, 0x00, ss, se, (ah << 4) | al],
        data.to_vec(),
    )
}

fn expect_error(bytes: &[u8], max_pixels: u64, needle: &str) -> DecodeError {
    match decode(bytes, max_pixels) {
        Ok(img) => panic!(
            "expected an error containing {needle:?}, decoded {}x{}",
            img.width, img.height
        ),
        Err(e) => {
            let text = format!("{e:?}");
            assert!(!text.contains("panicked"), "{text}");
            assert!(text.contains(needle), "expected {needle:?} in {text}");
            e
        }
    }
}

#[test]
fn progressive_dc_category_above_15_is_an_error() {
    // A DC code meaning "a 100-bit difference": the progressive path read 100 bits (and
    // overflowed its shifts); libjpeg refuses DC categories above 15.
    let file = jpeg(&[
        dqt(),
        sof(0xC2, 8, 8, &[(1, 0x11, 0)]),
        dht(0, 0, 100),
        sos(0, 0, 0, 0, &[0x00, 0x00]),
    ]);
    let e = expect_error(&file, 1 << 20, "bad DC coefficient");
    assert!(matches!(e, DecodeError::Corrupt(Format::Jpeg, _)));
}

#[test]
fn baseline_dc_category_16_is_an_error() {
    let file = jpeg(&[
        dqt(),
        sof(0xC0, 8, 8, &[(1, 0x11, 0)]),
        dht(0, 0, 16),
        dht(1, 0, 0x00),
        sos(0, 63, 0, 0, &[0x00, 0x00, 0x00]),
    ]);
    expect_error(&file, 1 << 20, "bad DC coefficient");
}

#[test]
fn progressive_refinement_wraps_like_libjpeg() {
    // An AC coefficient of −1 << 15 = −32768, then a refinement at bit 14 that moves it
    // further from zero: 16-bit arithmetic wraps (libjpeg's JCOEF), it must not panic.
    let file = jpeg(&[
        dqt(),
        sof(0xC2, 8, 8, &[(1, 0x11, 0)]),
        dht(0, 0, 0x00),
        sos(0, 0, 0, 0, &[0x00]), // DC: category 0
        dht(1, 0, 0x01),
        sos(1, 1, 0, 15, &[0x00]), // AC 1: code "0" (run 0, 1 bit), bit "0" → −1 << 15
        dht(1, 0, 0x00),
        sos(1, 1, 15, 14, &[0x7F]), // refine: code "0" (EOB), correction bit "1"
    ]);
    let img = decode(&file, 1 << 20).expect("a decodable file");
    assert_eq!((img.width, img.height), (8, 8));
}

#[test]
fn jpeg_frame_larger_than_its_data_is_refused_before_allocating() {
    // 60000×60000 declared, a few bytes of data: refused from the header instead of
    // allocating 3.6 GB of planes.
    let file = jpeg(&[
        dqt(),
        sof(0xC2, 60000, 60000, &[(1, 0x11, 0)]),
        dht(0, 0, 0x00),
        sos(0, 0, 0, 0, &[0x00; 32]),
    ]);
    let e = expect_error(&file, u64::MAX, "needs more than");
    assert!(matches!(e, DecodeError::Corrupt(Format::Jpeg, _)));
}

#[test]
fn jpeg_fractional_sampling_is_unsupported() {
    // Luma 3×1 beside chroma 2×1: a 3:2 ratio, which libjpeg does not upsample either.
    let file = jpeg(&[
        dqt(),
        sof(0xC0, 16, 8, &[(1, 0x31, 0), (2, 0x21, 0), (3, 0x11, 0)]),
        dht(0, 0, 0x00),
        dht(1, 0, 0x00),
        (0xDA, vec![3, 1, 0, 2, 0, 3, 0, 0, 63, 0], vec![0; 64]),
    ]);
    let e = expect_error(&file, 1 << 20, "fractional sampling");
    assert!(matches!(e, DecodeError::Unsupported(Format::Jpeg, _)));
}

fn png_chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in kind.iter().chain(data) {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    let mut out = (data.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    out.extend_from_slice(&(!crc).to_be_bytes());
    out
}

#[test]
fn png_larger_than_its_compressed_data_is_refused_before_allocating() {
    // 20000×20000 RGB declared (1.2 GB), 11 bytes of deflate data.
    let mut file = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = 20000u32.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&20000u32.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    file.extend(png_chunk(b"IHDR", &ihdr));
    file.extend(png_chunk(
        b"IDAT",
        &[
            0x78, 0x9c, 0x63, 0x60, 0x00, 0x00, 0x00, 0x02, 0x00, 0x01, 0x00,
        ],
    ));
    file.extend(png_chunk(b"IEND", &[]));
    let e = expect_error(&file, u64::MAX, "cannot hold a 20000x20000 image");
    assert!(matches!(e, DecodeError::Corrupt(Format::Png, _)));
}

#[test]
fn tiff_orientation_outside_1_to_8_is_dropped() {
    // Found by fuzz/fuzz_targets/image_decode.rs: a 7x5 TIFF whose Orientation tag is 59 came
    // out with `orientation: Some(59)`, breaking `Decoded`'s documented 1..=8.
    let file = include_bytes!("../../../fuzz/regressions/image_decode/tiff_orientation_59.tif");
    let img = decode(file, 1 << 20).expect("a decodable TIFF");
    assert_eq!((img.width, img.height, img.orientation), (7, 5, None));
}

#[test]
fn fuzz_regressions_never_panic() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/regressions/image_decode");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return;
    };
    let mut n = 0;
    for entry in entries {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "md") {
            continue;
        }
        let bytes = std::fs::read(&path).unwrap();
        if let Err(e) = decode(&bytes, 1 << 22) {
            assert!(
                !format!("{e:?}").contains("panicked"),
                "{}: {e:?}",
                path.display()
            );
        }
        n += 1;
    }
    eprintln!("{n} fuzz regressions replayed");
}

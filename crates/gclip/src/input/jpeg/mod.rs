//! A JPEG decoder whose output matches libjpeg-turbo's default decompression, the one Pillow
//! uses (and so open_clip and transformers).
//!
//! Written from the JPEG specification (ITU T.81) and the documented behaviour of the IJG
//! library family, not from their source:
//!
//! * Huffman-coded baseline, extended and progressive frames (arithmetic coding, 12-bit and
//!   lossless JPEG are refused as unsupported), restart intervals, any sampling factors whose
//!   ratios to the largest are whole numbers (libjpeg refuses the others too).
//! * The accurate integer inverse DCT ("ISLOW": the Loeffler–Ligtenberg–Moschytz algorithm with
//!   13-bit constants and 2 extra bits between the passes), with libjpeg's range limiting.
//! * "Fancy" chroma upsampling: a triangle filter for 2:1 horizontal (`3/4, 1/4` weights, biases
//!   1 and 2), 2:1 vertical, and 2:1 both ways (`9/16, 3/16, 3/16, 1/16`, biases 8 and 7), with
//!   edge samples replicated; plain replication for other ratios and for planes at most two
//!   samples wide.
//! * YCbCr → RGB with 16-bit fixed-point tables (ITU-R BT.601 constants 1.402, 0.34414, 0.71414,
//!   1.772), YCCK → CMYK, and the colour space chosen from JFIF/Adobe markers and component ids.
//!
//! Bit-exactness with libjpeg-turbo is checked by the image fixture tests and, over 1,200
//! generated files, by `tests/jpeg_differential.rs`.

mod color;
mod entropy;
mod idct;
mod markers;

#[cfg(target_arch = "x86_64")]
mod avx2;

pub use markers::{decode, dimensions};

use super::format::{DecodeError, Format};

/// Zigzag position → natural (row-major) position within an 8×8 block.
const ZIGZAG: [usize; 64] = [
    0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5, 12, 19, 26, 33, 40, 48, 41, 34, 27, 20,
    13, 6, 7, 14, 21, 28, 35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51, 58, 59,
    52, 45, 38, 31, 39, 46, 53, 60, 61, 54, 47, 55, 62, 63,
];

/// Colour space of the decoded samples.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JpegColor {
    /// One grey channel.
    Grey,
    /// RGB.
    Rgb,
    /// CMYK as stored (Adobe files store it inverted; the caller handles polarity).
    Cmyk,
}

/// A decoded JPEG.
pub struct JpegImage {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// Colour space of `pixels`.
    pub color: JpegColor,
    /// Interleaved samples, rows top to bottom.
    pub pixels: Vec<u8>,
    /// The EXIF block (APP1), if any.
    pub exif: Option<Vec<u8>>,
}

fn corrupt(msg: impl Into<String>) -> DecodeError {
    DecodeError::Corrupt(Format::Jpeg, msg.into())
}

fn unsupported(msg: impl Into<String>) -> DecodeError {
    DecodeError::Unsupported(Format::Jpeg, msg.into())
}

struct Component {
    id: u8,
    h: usize,
    v: usize,
    tq: usize,
    /// Downsampled size in samples.
    w_samples: usize,
    h_samples: usize,
    /// Allocated blocks per row and column (whole MCUs).
    bw: usize,
    bh: usize,
    dc_table: usize,
    ac_table: usize,
    pred: i32,
    /// Coefficients in natural order, 64 per block (progressive frames only).
    coefs: Vec<i16>,
    /// Decoded samples, `bw * 8` per row (baseline frames decode straight into this).
    plane: Vec<u8>,
}

struct Frame {
    width: usize,
    height: usize,
    progressive: bool,
    comps: Vec<Component>,
    hmax: usize,
    vmax: usize,
    mcus_x: usize,
    mcus_y: usize,
}

/// Blocks one byte of entropy-coded data can hold at most: a block takes at least one bit
/// (a one-bit DC code in a progressive DC scan; baseline blocks take two).
const MIN_BLOCKS_PER_BYTE: usize = 8;

/// Bytes of zeros a scan may read past the end of the file before it counts as truncated.
const TRUNCATION_SLACK: usize = 16;

#[cfg(test)]
mod tests {
    use super::color::ycc_to_rgb;
    use super::idct::{idct_islow, range_limit};
    use super::*;

    #[test]
    fn flat_block_decodes_to_its_dc_level() {
        let mut coef = [0i16; 64];
        coef[0] = -16; // DC −16·q with q = 8 → −128 → sample level 128 − 16 = 112
        let q = [8u16; 64];
        let mut out = [0u8; 64];
        idct_islow(&coef, &q, &mut out, 8);
        assert!(out.iter().all(|&v| v == 112), "{out:?}");
    }

    #[test]
    fn avx2_idct_matches_portable_idct() {
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") {
            let mut seed = 12345u64;
            let mut next = move || {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (seed >> 33) as i32
            };
            for case in 0..2000 {
                let mut coef = [0i16; 64];
                let q: [u16; 64] = std::array::from_fn(|_| 1 + (next() % 60) as u16);
                let n = if case % 3 == 0 {
                    1
                } else {
                    1 + (next() % 64) as usize
                };
                for c in coef.iter_mut().take(n) {
                    *c = (next() % 400 - 200) as i16;
                }
                let (mut a, mut b) = ([0u8; 64], [0u8; 64]);
                idct_islow(&coef, &q, &mut a, 8);
                // SAFETY: AVX2 is available (checked above); `b` holds 8 rows of 8.
                unsafe { avx2::idct_islow(&coef, &q, &mut b, 8) };
                assert_eq!(a, b, "block {case}");
            }
        }
    }

    #[test]
    fn avx2_colour_conversion_matches_portable() {
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") {
            // Every (Cb, Cr) pair, with Y sweeping through its range.
            let n = 256 * 256;
            let y: Vec<u8> = (0..n).map(|i| (i * 7 % 256) as u8).collect();
            let cb: Vec<u8> = (0..n).map(|i| (i / 256) as u8).collect();
            let cr: Vec<u8> = (0..n).map(|i| (i % 256) as u8).collect();
            let mut out = vec![0u8; 3 * n];
            // SAFETY: AVX2 is available (checked above).
            let done = unsafe { avx2::ycc_to_rgb_row(&y, &cb, &cr, &mut out) };
            assert_eq!(done, n);
            for i in 0..n {
                assert_eq!(
                    out[3 * i..3 * i + 3],
                    ycc_to_rgb(y[i], cb[i], cr[i]),
                    "pixel {i}"
                );
            }
        }
    }

    #[test]
    fn range_limit_matches_table_layout() {
        assert_eq!(range_limit(0), 128);
        assert_eq!(range_limit(-128), 0);
        assert_eq!(range_limit(127), 255);
        assert_eq!(range_limit(300), 255);
        assert_eq!(range_limit(-300), 0);
    }

    #[test]
    fn truncated_and_garbage_are_errors() {
        assert!(decode(b"\xff\xd8\xff", 1 << 20).is_err());
        assert!(decode(b"\xff\xd8\xff\xc0\x00\x11\x08", 1 << 20).is_err());
    }
}

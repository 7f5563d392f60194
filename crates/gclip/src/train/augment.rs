//! Training augmentation. By default open_clip's training transform:
//! `RandomResizedCrop(size, scale=(0.9, 1.0), ratio=(3/4, 4/3), interpolation=BICUBIC)`, then
//! `ToTensor` and `Normalize`. Optional changes suited to drawings (the emoji recipe of issue 14,
//! where the held-out vendor draws the same concepts in another style) come on top, each off
//! at its default so that a configuration without them draws exactly the same crops as before:
//! a zoom-out (padding), colour jitter (brightness, contrast, saturation, hue, in that order),
//! random grayscale, and stroke thickness (a min or max filter).
//!
//! The crop box is drawn as torchvision's `RandomResizedCrop.get_params` draws it (ten tries at
//! a random area and log-uniform aspect ratio, then a centre-crop fallback), from a
//! [`Rng`](super::rng::Rng) stream derived from `(seed, epoch, sample, field)`, so augmentation
//! is reproducible and independent of the worker that runs it. The crop is resized with
//! Pillow's bicubic filter. Unlike open_clip, the image is converted to RGB before cropping
//! (open_clip resizes RGBA and palette images in their own mode first); for training
//! augmentation the difference is immaterial.

use crate::input::image::Rgb8Image;
use crate::input::resample::{resize_u8, Filter};

use super::rng::Rng;

/// The `[augment]` section of a training configuration (used when `train.augment` is true).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AugmentConfig {
    /// Range of the crop's area as a fraction of the (padded) image's.
    pub scale: (f64, f64),
    /// Range of the crop's aspect ratio (width / height).
    pub ratio: (f64, f64),
    /// Zoom out: each side is padded by a fraction of the image's width or height drawn from
    /// `[0, pad]`, filled with the mean colour of the image's border (white for a drawing
    /// flattened onto white), before the crop. 0: off.
    pub pad: f64,
    /// Brightness factor drawn from `[1 − b, 1 + b]` (torchvision's `ColorJitter`). 0: off.
    pub brightness: f64,
    /// Contrast factor drawn from `[1 − c, 1 + c]`, around the image's mean grey. 0: off.
    pub contrast: f64,
    /// Saturation factor drawn from `[1 − s, 1 + s]`, around each pixel's grey. 0: off.
    pub saturation: f64,
    /// Hue rotation drawn from `[−h, h]` turns of the colour circle (at most 0.5). 0: off.
    pub hue: f64,
    /// Probability of turning the image grey (ITU-R 601 luma, as Pillow's `L` mode). 0: off.
    pub grayscale: f64,
    /// Stroke thickness: a radius drawn from `−stroke..=stroke` pixels at the output size; a
    /// positive radius takes the minimum over a square window (dark lines on a light ground get
    /// thicker), a negative one the maximum (thinner). 0: off.
    pub stroke: usize,
}

impl Default for AugmentConfig {
    fn default() -> Self {
        Self {
            scale: (0.9, 1.0),
            ratio: (3.0 / 4.0, 4.0 / 3.0),
            pad: 0.0,
            brightness: 0.0,
            contrast: 0.0,
            saturation: 0.0,
            hue: 0.0,
            grayscale: 0.0,
            stroke: 0,
        }
    }
}

/// Largest stroke radius accepted (a 9 × 9 window).
pub const MAX_STROKE: usize = 4;

impl AugmentConfig {
    /// Checks every range; the error names the setting and the accepted values.
    pub fn validate(&self) -> Result<(), String> {
        let (s0, s1) = self.scale;
        if !(s0 > 0.0 && s0 <= s1 && s1 <= 1.0) {
            return Err(format!(
                "augment.scale must be [lo, hi] with 0 < lo <= hi <= 1, got [{s0}, {s1}]"
            ));
        }
        let (r0, r1) = self.ratio;
        if !(r0 > 0.0 && r0 <= r1 && r1.is_finite()) {
            return Err(format!(
                "augment.ratio must be [lo, hi] with 0 < lo <= hi, got [{r0}, {r1}]"
            ));
        }
        for (name, v, max) in [
            ("pad", self.pad, 1.0),
            ("brightness", self.brightness, 0.99),
            ("contrast", self.contrast, 0.99),
            ("saturation", self.saturation, 1.0),
            ("hue", self.hue, 0.5),
            ("grayscale", self.grayscale, 1.0),
        ] {
            if !(0.0..=max).contains(&v) {
                return Err(format!(
                    "augment.{name} must be between 0 and {max}, got {v}"
                ));
            }
        }
        if self.stroke > MAX_STROKE {
            return Err(format!(
                "augment.stroke must be at most {MAX_STROKE} pixels, got {}",
                self.stroke
            ));
        }
        Ok(())
    }
}

/// The crop box `(top, left, height, width)` for an image of `width × height`.
pub fn crop_box(
    width: usize,
    height: usize,
    cfg: &AugmentConfig,
    rng: &mut Rng,
) -> (usize, usize, usize, usize) {
    let area = (width * height) as f64;
    let (lr0, lr1) = (cfg.ratio.0.ln(), cfg.ratio.1.ln());
    for _ in 0..10 {
        let target = area * rng.uniform_range(cfg.scale.0, cfg.scale.1);
        let aspect = rng.uniform_range(lr0, lr1).exp();
        let w = (target * aspect).sqrt().round() as usize;
        let h = (target / aspect).sqrt().round() as usize;
        if w > 0 && h > 0 && w <= width && h <= height {
            let top = rng.below((height - h + 1) as u64) as usize;
            let left = rng.below((width - w + 1) as u64) as usize;
            return (top, left, h, w);
        }
    }
    let in_ratio = width as f64 / height as f64;
    let (w, h) = if in_ratio < cfg.ratio.0 {
        (
            width,
            ((width as f64 / cfg.ratio.0).round() as usize).max(1),
        )
    } else if in_ratio > cfg.ratio.1 {
        (
            ((height as f64 * cfg.ratio.1).round() as usize).max(1),
            height,
        )
    } else {
        (width, height)
    };
    (
        (height - h.min(height)) / 2,
        (width - w.min(width)) / 2,
        h.min(height),
        w.min(width),
    )
}

/// A random resized crop of `img` to `size × size`.
pub fn random_resized_crop(
    img: &Rgb8Image,
    size: usize,
    cfg: &AugmentConfig,
    rng: &mut Rng,
) -> Rgb8Image {
    let (top, left, h, w) = crop_box(img.width, img.height, cfg, rng);
    let mut crop = Vec::with_capacity(h * w * 3);
    for y in top..top + h {
        let row = (y * img.width + left) * 3;
        crop.extend_from_slice(&img.data[row..row + w * 3]);
    }
    Rgb8Image {
        width: size,
        height: size,
        data: resize_u8(&crop, w, h, 3, size, size, Filter::Bicubic),
    }
}

/// The whole training transform of one image: padding, crop, colour, grey, stroke (each only
/// when enabled, so draws of a disabled step are not taken from `rng`).
pub fn augment_image(
    img: &Rgb8Image,
    size: usize,
    cfg: &AugmentConfig,
    rng: &mut Rng,
) -> Rgb8Image {
    let padded;
    let src = if cfg.pad > 0.0 {
        padded = pad_with_border_colour(img, cfg.pad, rng);
        &padded
    } else {
        img
    };
    let mut out = random_resized_crop(src, size, cfg, rng);
    jitter_colour(&mut out, cfg, rng);
    if cfg.grayscale > 0.0 && rng.uniform() < cfg.grayscale {
        for p in out.data.chunks_exact_mut(3) {
            let y = luma(p[0] as f32, p[1] as f32, p[2] as f32).round() as u8;
            p.fill(y);
        }
    }
    if cfg.stroke > 0 {
        let radius = rng.below(2 * cfg.stroke as u64 + 1) as isize - cfg.stroke as isize;
        if radius != 0 {
            out = square_filter(&out, radius.unsigned_abs(), radius > 0);
        }
    }
    out
}

/// ITU-R 601 luma, the weights of Pillow's `L` conversion and torchvision's grayscale.
fn luma(r: f32, g: f32, b: f32) -> f32 {
    0.299 * r + 0.587 * g + 0.114 * b
}

fn pad_with_border_colour(img: &Rgb8Image, pad: f64, rng: &mut Rng) -> Rgb8Image {
    let (w, h) = (img.width, img.height);
    let mut side = |n: usize| (rng.uniform_range(0.0, pad) * n as f64).round() as usize;
    let (left, right, top, bottom) = (side(w), side(w), side(h), side(h));
    let mut sum = [0u64; 3];
    let mut count = 0u64;
    for y in 0..h {
        for x in 0..w {
            if y == 0 || y + 1 == h || x == 0 || x + 1 == w {
                let p = &img.data[(y * w + x) * 3..][..3];
                for c in 0..3 {
                    sum[c] += p[c] as u64;
                }
                count += 1;
            }
        }
    }
    let fill = sum.map(|s| (s as f64 / count.max(1) as f64).round() as u8);
    let (pw, ph) = (w + left + right, h + top + bottom);
    let mut data = fill.repeat(pw * ph);
    for y in 0..h {
        let dst = ((y + top) * pw + left) * 3;
        data[dst..dst + w * 3].copy_from_slice(&img.data[y * w * 3..(y + 1) * w * 3]);
    }
    Rgb8Image {
        width: pw,
        height: ph,
        data,
    }
}

/// Brightness, contrast, saturation and hue, in torchvision's definitions and in that order,
/// computed in f32 and rounded once.
fn jitter_colour(img: &mut Rgb8Image, cfg: &AugmentConfig, rng: &mut Rng) {
    let mut factor =
        |amount: f64| (amount > 0.0).then(|| rng.uniform_range(1.0 - amount, 1.0 + amount) as f32);
    let brightness = factor(cfg.brightness);
    let contrast = factor(cfg.contrast);
    let saturation = factor(cfg.saturation);
    let hue = (cfg.hue > 0.0).then(|| rng.uniform_range(-cfg.hue, cfg.hue) as f32);
    if brightness.is_none() && contrast.is_none() && saturation.is_none() && hue.is_none() {
        return;
    }
    let mut px: Vec<[f32; 3]> = img
        .data
        .chunks_exact(3)
        .map(|p| [p[0] as f32, p[1] as f32, p[2] as f32])
        .collect();
    let clamp = |v: f32| v.clamp(0.0, 255.0);
    if let Some(f) = brightness {
        px.iter_mut().for_each(|p| *p = p.map(|v| clamp(v * f)));
    }
    if let Some(f) = contrast {
        let mean = px.iter().map(|p| luma(p[0], p[1], p[2])).sum::<f32>() / px.len().max(1) as f32;
        px.iter_mut()
            .for_each(|p| *p = p.map(|v| clamp(mean + (v - mean) * f)));
    }
    if let Some(f) = saturation {
        for p in px.iter_mut() {
            let grey = luma(p[0], p[1], p[2]);
            *p = p.map(|v| clamp(grey + (v - grey) * f));
        }
    }
    if let Some(shift) = hue {
        for p in px.iter_mut() {
            let (h, s, v) = rgb_to_hsv(*p);
            *p = hsv_to_rgb((h + shift).rem_euclid(1.0), s, v);
        }
    }
    for (d, p) in img.data.chunks_exact_mut(3).zip(&px) {
        for c in 0..3 {
            d[c] = p[c].round() as u8;
        }
    }
}

/// Hue in turns `[0, 1)`, saturation in `[0, 1]`, value in `0..=255`.
fn rgb_to_hsv([r, g, b]: [f32; 3]) -> (f32, f32, f32) {
    let max = r.max(g).max(b);
    let min = r.min(g).min(b);
    let delta = max - min;
    let s = if max > 0.0 { delta / max } else { 0.0 };
    if delta == 0.0 {
        return (0.0, s, max);
    }
    let h = if max == r {
        ((g - b) / delta).rem_euclid(6.0)
    } else if max == g {
        (b - r) / delta + 2.0
    } else {
        (r - g) / delta + 4.0
    };
    (h / 6.0, s, max)
}

fn hsv_to_rgb(h: f32, s: f32, v: f32) -> [f32; 3] {
    let sector = h * 6.0;
    let i = (sector.floor() as i32).rem_euclid(6);
    let f = sector - sector.floor();
    let (p, q, t) = (v * (1.0 - s), v * (1.0 - s * f), v * (1.0 - s * (1.0 - f)));
    match i {
        0 => [v, t, p],
        1 => [q, v, p],
        2 => [p, v, t],
        3 => [p, q, v],
        4 => [t, p, v],
        _ => [v, p, q],
    }
}

/// Minimum (`take_min`) or maximum of each channel over the `(2r + 1)²` window around every
/// pixel, the window clipped at the edges; separable, rows then columns.
fn square_filter(img: &Rgb8Image, r: usize, take_min: bool) -> Rgb8Image {
    let (w, h) = (img.width, img.height);
    let (start, pick): (u8, fn(u8, u8) -> u8) = if take_min {
        (u8::MAX, u8::min)
    } else {
        (u8::MIN, u8::max)
    };
    // One pass along each row (neighbours 3 bytes apart) or each column (3·w apart).
    let pass = |src: &[u8], along_rows: bool| {
        let (step, len) = if along_rows { (3, w) } else { (3 * w, h) };
        let mut dst = vec![0u8; src.len()];
        for y in 0..h {
            for x in 0..w {
                let pos = if along_rows { x } else { y };
                let line_start = (y * w + x) * 3 - pos * step;
                let window = pos.saturating_sub(r)..=(pos + r).min(len - 1);
                for c in 0..3 {
                    dst[(y * w + x) * 3 + c] = window
                        .clone()
                        .map(|p| src[line_start + p * step + c])
                        .fold(start, pick);
                }
            }
        }
        dst
    };
    let rows = pass(&img.data, true);
    Rgb8Image {
        width: w,
        height: h,
        data: pass(&rows, false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crops_follow_torchvision_bounds_and_are_seeded() {
        let cfg = AugmentConfig::default();
        let mut areas = Vec::new();
        for k in 0..2000 {
            let mut r = Rng::derive(1, &[k]);
            let (t, l, h, w) = crop_box(64, 48, &cfg, &mut r);
            assert!(t + h <= 48 && l + w <= 64 && h > 0 && w > 0);
            let ratio = w as f64 / h as f64;
            // Rounding to whole pixels widens the bounds slightly.
            assert!(ratio > 0.7 && ratio < 1.4, "ratio {ratio}");
            areas.push((h * w) as f64 / (64.0 * 48.0));
            assert_eq!(
                (t, l, h, w),
                crop_box(64, 48, &cfg, &mut Rng::derive(1, &[k]))
            );
        }
        let min = areas.iter().cloned().fold(f64::MAX, f64::min);
        let max = areas.iter().cloned().fold(0.0, f64::max);
        assert!(min > 0.86 && max <= 1.0, "areas {min}..{max}");
        // Not always the same box.
        assert!(areas.iter().any(|&a| (a - areas[0]).abs() > 0.01));
        // A very wide image falls back to the widest allowed centre crop.
        let mut r = Rng::new(3);
        let (t, l, h, w) = crop_box(400, 10, &cfg, &mut r);
        assert_eq!((t, h), (0, 10));
        assert_eq!(w, 13);
        assert_eq!(l, (400 - 13) / 2);
    }

    #[test]
    fn crop_of_a_uniform_image_is_uniform_and_sized() {
        let img = Rgb8Image {
            width: 20,
            height: 30,
            data: [10u8, 200, 33].repeat(600),
        };
        let out = random_resized_crop(&img, 16, &AugmentConfig::default(), &mut Rng::new(1));
        assert_eq!(
            (out.width, out.height, out.data.len()),
            (16, 16, 16 * 16 * 3)
        );
        assert!(out.data.chunks(3).all(|p| p == [10, 200, 33]));
    }

    fn uniform(w: usize, h: usize, rgb: [u8; 3]) -> Rgb8Image {
        Rgb8Image {
            width: w,
            height: h,
            data: rgb.repeat(w * h),
        }
    }

    #[test]
    fn without_drawing_options_the_transform_is_the_crop_with_the_same_draws() {
        let mut img = uniform(40, 30, [0, 0, 0]);
        for (i, v) in img.data.iter_mut().enumerate() {
            *v = (i * 7 % 251) as u8;
        }
        let cfg = AugmentConfig::default();
        for k in 0..20 {
            let (mut a, mut b) = (Rng::derive(5, &[k]), Rng::derive(5, &[k]));
            let full = augment_image(&img, 16, &cfg, &mut a);
            let crop = random_resized_crop(&img, 16, &cfg, &mut b);
            assert_eq!(full, crop);
            assert_eq!(a.state(), b.state(), "the disabled steps drew numbers");
        }
    }

    #[test]
    fn colour_jitter_follows_its_ranges() {
        let cfg = AugmentConfig {
            brightness: 0.5,
            ..AugmentConfig::default()
        };
        let mut seen = Vec::new();
        for k in 0..200 {
            let out = augment_image(&uniform(8, 8, [100, 100, 100]), 8, &cfg, &mut Rng::new(k));
            let v = out.data[0];
            assert!(out.data.iter().all(|&x| x == v), "uniform stays uniform");
            assert!(
                (50..=150).contains(&v),
                "brightness factor outside 1 ± 0.5: {v}"
            );
            seen.push(v);
        }
        let (lo, hi) = (*seen.iter().min().unwrap(), *seen.iter().max().unwrap());
        assert!(
            lo < 65 && hi > 135,
            "draws do not cover the range: {lo}..{hi}"
        );

        // Saturation moves colours towards or away from their grey and keeps that grey; hue
        // leaves greys alone.
        let mut spreads = Vec::new();
        for k in 0..50 {
            let cfg = AugmentConfig {
                saturation: 0.5,
                ..AugmentConfig::default()
            };
            let out = augment_image(&uniform(4, 4, [150, 90, 90]), 4, &cfg, &mut Rng::new(k));
            let p = [out.data[0] as f32, out.data[1] as f32, out.data[2] as f32];
            assert!(
                (luma(p[0], p[1], p[2]) - luma(150.0, 90.0, 90.0)).abs() < 1.0,
                "{p:?}"
            );
            spreads.push(p[0] - p[1]);
        }
        assert!(spreads.iter().any(|&d| d < 40.0) && spreads.iter().any(|&d| d > 80.0));
        let out = augment_image(
            &uniform(4, 4, [90, 90, 90]),
            4,
            &AugmentConfig {
                hue: 0.5,
                contrast: 0.5,
                ..AugmentConfig::default()
            },
            &mut Rng::new(2),
        );
        assert!(out.data.iter().all(|&v| v == 90), "{:?}", &out.data[..3]);
    }

    #[test]
    fn hue_rotation_turns_red_into_green_and_back() {
        let (h, s, v) = rgb_to_hsv([255.0, 0.0, 0.0]);
        assert_eq!((h, s, v), (0.0, 1.0, 255.0));
        let green = hsv_to_rgb((h + 1.0 / 3.0).rem_euclid(1.0), s, v);
        assert!(
            (green[0]).abs() < 1e-3 && (green[1] - 255.0).abs() < 1e-3 && green[2].abs() < 1e-3
        );
        for rgb in [
            [12.0, 200.0, 77.0],
            [250.0, 250.0, 3.0],
            [0.0, 0.0, 9.0],
            [40.0, 10.0, 200.0],
        ] {
            let (h, s, v) = rgb_to_hsv(rgb);
            let back = hsv_to_rgb(h, s, v);
            for c in 0..3 {
                assert!((back[c] - rgb[c]).abs() < 1e-3, "{rgb:?} -> {back:?}");
            }
        }
    }

    #[test]
    fn grayscale_makes_channels_equal() {
        let cfg = AugmentConfig {
            grayscale: 1.0,
            ..AugmentConfig::default()
        };
        let out = augment_image(&uniform(6, 6, [255, 0, 0]), 6, &cfg, &mut Rng::new(3));
        assert!(
            out.data.chunks(3).all(|p| p == [76, 76, 76]),
            "{:?}",
            &out.data[..3]
        );
    }

    #[test]
    fn stroke_filter_thickens_or_removes_a_thin_dark_line() {
        let mut img = uniform(9, 5, [255, 255, 255]);
        for y in 0..5 {
            img.data[(y * 9 + 4) * 3..][..3].fill(0);
        }
        let dark_columns =
            |im: &Rgb8Image| (0..9).filter(|&x| im.data[(2 * 9 + x) * 3] == 0).count();
        assert_eq!(dark_columns(&square_filter(&img, 1, true)), 3);
        assert_eq!(dark_columns(&square_filter(&img, 2, true)), 5);
        assert_eq!(dark_columns(&square_filter(&img, 1, false)), 0);
        // The column pass: a horizontal line thickens into rows above and below.
        let mut across = uniform(5, 9, [255, 255, 255]);
        across.data[4 * 5 * 3..5 * 5 * 3].fill(0);
        let dark_rows = |im: &Rgb8Image| (0..9).filter(|&y| im.data[(y * 5 + 2) * 3] == 0).count();
        assert_eq!(dark_rows(&square_filter(&across, 1, true)), 3);
        assert_eq!(dark_rows(&square_filter(&across, 3, true)), 7);
        // Drawn radii cover thicker, thinner and unchanged.
        let cfg = AugmentConfig {
            scale: (1.0, 1.0),
            ratio: (9.0 / 5.0, 9.0 / 5.0),
            stroke: 1,
            ..AugmentConfig::default()
        };
        let mut counts = std::collections::BTreeSet::new();
        for k in 0..60 {
            let out = augment_image(&img, 9, &cfg, &mut Rng::new(k));
            counts.insert(dark_columns(&out) > 0);
        }
        assert_eq!(counts.len(), 2, "the drawn radius never changed sign");
    }

    #[test]
    fn padding_zooms_out_with_the_border_colour() {
        let mut img = uniform(20, 20, [0, 0, 0]);
        for y in 0..20 {
            for x in 0..20 {
                if y == 0 || y == 19 || x == 0 || x == 19 {
                    img.data[(y * 20 + x) * 3..][..3].fill(250);
                }
            }
        }
        let light = |im: &Rgb8Image| im.data.iter().filter(|&&v| v > 200).count();
        let cfg = AugmentConfig {
            scale: (1.0, 1.0),
            ratio: (0.5, 2.0),
            ..AugmentConfig::default()
        };
        let (mut plain, mut padded) = (0, 0);
        for k in 0..30 {
            plain += light(&augment_image(&img, 20, &cfg, &mut Rng::new(k)));
            let out = augment_image(
                &img,
                20,
                &AugmentConfig { pad: 0.5, ..cfg },
                &mut Rng::new(k),
            );
            assert_eq!((out.width, out.height, out.data.len()), (20, 20, 1200));
            padded += light(&out);
        }
        assert!(
            padded > plain * 2,
            "padding added no border: {padded} vs {plain}"
        );
    }

    #[test]
    fn settings_out_of_range_are_named() {
        for (cfg, name) in [
            (
                AugmentConfig {
                    hue: 0.6,
                    ..AugmentConfig::default()
                },
                "augment.hue",
            ),
            (
                AugmentConfig {
                    grayscale: -0.1,
                    ..AugmentConfig::default()
                },
                "augment.grayscale",
            ),
            (
                AugmentConfig {
                    stroke: 9,
                    ..AugmentConfig::default()
                },
                "augment.stroke",
            ),
            (
                AugmentConfig {
                    scale: (0.5, 1.5),
                    ..AugmentConfig::default()
                },
                "augment.scale",
            ),
            (
                AugmentConfig {
                    pad: f64::NAN,
                    ..AugmentConfig::default()
                },
                "augment.pad",
            ),
        ] {
            let e = cfg.validate().unwrap_err();
            assert!(e.contains(name), "{e}");
        }
        assert!(AugmentConfig::default().validate().is_ok());
    }
}

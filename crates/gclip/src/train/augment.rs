//! open_clip's training transform: `RandomResizedCrop(size, scale=(0.9, 1.0), ratio=(3/4, 4/3),
//! interpolation=BICUBIC)`, then `ToTensor` and `Normalize`.
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

/// Parameters of the random resized crop.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CropConfig {
    /// Range of the crop's area as a fraction of the image's.
    pub scale: (f64, f64),
    /// Range of the crop's aspect ratio (width / height).
    pub ratio: (f64, f64),
}

impl Default for CropConfig {
    fn default() -> Self {
        Self {
            scale: (0.9, 1.0),
            ratio: (3.0 / 4.0, 4.0 / 3.0),
        }
    }
}

/// The crop box `(top, left, height, width)` for an image of `width × height`.
pub fn crop_box(
    width: usize,
    height: usize,
    cfg: &CropConfig,
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
    cfg: &CropConfig,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crops_follow_torchvision_bounds_and_are_seeded() {
        let cfg = CropConfig::default();
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
        let out = random_resized_crop(&img, 16, &CropConfig::default(), &mut Rng::new(1));
        assert_eq!(
            (out.width, out.height, out.data.len()),
            (16, 16, 16 * 16 * 3)
        );
        assert!(out.data.chunks(3).all(|p| p == [10, 200, 33]));
    }
}

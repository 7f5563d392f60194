//! Image preprocessing in the two reference conventions: open_clip's transform and
//! transformers' PIL-based `CLIPImageProcessor`.
//!
//! A [`Preprocessor`] turns an image file into the `[3, crop, crop]` float tensor the vision
//! tower receives. Its 8-bit stage ([`Preprocessor::rgb8_from_path`]) reproduces the
//! reference pixels exactly: decoding keeps what a Pillow image would hold (see
//! [`super::decode`]), resizing follows Pillow bit for bit (see
//! [`super::resample`]), and each convention's order of operations is kept:
//!
//! * [`PreprocessConvention::OpenClip`]: `Resize(size, BICUBIC)` of the shorter side (the
//!   longer becomes `int(size * long / short)`) in the image's own mode, so palette images are
//!   resized with nearest neighbour and RGBA/LA premultiplied; `CenterCrop(size)` with offsets
//!   `round((H - h) / 2)` (half to even), zero padding when the image is smaller; then
//!   `convert("RGB")`, which drops alpha and shows the colour stored under transparent pixels;
//!   `ToTensor` and `Normalize(mean, std)`.
//! * [`PreprocessConvention::Transformers`]: converts to RGB *first*, compositing any alpha or
//!   transparency key onto white; resizes the shortest edge to `size["shortest_edge"]`;
//!   center-crops with `floor` offsets (zero padding, centred with `ceil`, when smaller);
//!   rescales by `rescale_factor` in double precision and normalises in single precision.
//!
//! EXIF orientation is ignored by default, as both references ignore it; set
//! [`PreprocessConfig::apply_exif_orientation`] to transpose images first (like Pillow's
//! `ImageOps.exif_transpose`).
//!
//! Images larger than [`PreprocessConfig::max_pixels`] are refused from their header, before
//! their pixels are decoded (a decompression-bomb guard), and files are read with
//! [`read_image_file`]: regular files only, at most [`PreprocessConfig::max_file_bytes`].

use std::path::{Path, PathBuf};

use rayon::prelude::*;

use super::decode::{self, DecodeError, Decoded, Mode, Samples, Transparency};
use super::resample::{self, Filter};

/// OpenAI CLIP's normalisation mean (RGB), used by open_clip by default.
pub const OPENAI_CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
/// OpenAI CLIP's normalisation standard deviation (RGB).
pub const OPENAI_CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_6, 0.275_777_1];

/// Default limit on decoded pixels per image (width × height), shared by the CLI, the library
/// and the server: 40,000,000 pixels (for example 8000 × 5000). Override it with the environment
/// variable [`MAX_IMAGE_PIXELS_VAR`] (read by [`max_image_pixels`]) or per preprocessor with
/// [`PreprocessConfig::max_pixels`].
///
/// The memory an image may take while decoding is width × height × bytes per decoded pixel:
/// 3 bytes for 8-bit RGB (120 MB at the limit), 4 for 8-bit RGBA (160 MB) and 8 for 16-bit RGBA
/// (320 MB), plus the 8-bit RGB copy that preprocessing converts it to. Images above the limit
/// are refused from their header, before any pixel is decoded (a decompression-bomb guard).
/// Pillow's own limit is 178,956,970 pixels (`Image.MAX_IMAGE_PIXELS * 2`); this one is lower
/// so that a few concurrent requests of a server stay within a few GB.
pub const DEFAULT_MAX_PIXELS: u64 = 40_000_000;

/// The environment variable that overrides [`DEFAULT_MAX_PIXELS`] (a positive integer).
pub const MAX_IMAGE_PIXELS_VAR: &str = "GCLIP_MAX_IMAGE_PIXELS";

/// Default limit on the size of one image file, local or downloaded: 50,000,000 bytes.
/// Override it with the environment variable [`MAX_IMAGE_BYTES_VAR`] (read by
/// [`max_image_bytes`]) or per preprocessor with [`PreprocessConfig::max_file_bytes`].
pub const DEFAULT_MAX_IMAGE_BYTES: u64 = 50_000_000;

/// The environment variable that overrides [`DEFAULT_MAX_IMAGE_BYTES`] (a positive integer).
pub const MAX_IMAGE_BYTES_VAR: &str = "GCLIP_MAX_IMAGE_BYTES";

/// The decoded-pixel limit in force: [`MAX_IMAGE_PIXELS_VAR`] when it is set to a positive
/// integer, else [`DEFAULT_MAX_PIXELS`]. The one place the variable is read (once per process).
pub fn max_image_pixels() -> u64 {
    static LIMIT: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *LIMIT
        .get_or_init(|| parse_max_image_pixels(std::env::var(MAX_IMAGE_PIXELS_VAR).ok().as_deref()))
}

/// The image file size limit in force: [`MAX_IMAGE_BYTES_VAR`] when it is set to a positive
/// integer, else [`DEFAULT_MAX_IMAGE_BYTES`]. The one place the variable is read (once per
/// process).
pub fn max_image_bytes() -> u64 {
    static LIMIT: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *LIMIT.get_or_init(|| parse_max_image_bytes(std::env::var(MAX_IMAGE_BYTES_VAR).ok().as_deref()))
}

/// The file size limit that the value of [`MAX_IMAGE_BYTES_VAR`] sets (`None`: unset). Values
/// that are not positive integers are ignored with a warning. For callers that read their
/// variables through their own lookup (see `gclip-search`'s `RemoteConfig::from_vars`).
pub fn parse_max_image_bytes(value: Option<&str>) -> u64 {
    parse_limit(MAX_IMAGE_BYTES_VAR, value, DEFAULT_MAX_IMAGE_BYTES)
}

/// The pixel limit that the value of [`MAX_IMAGE_PIXELS_VAR`] sets (`None`: unset); values that
/// are not positive integers are ignored with a warning.
pub fn parse_max_image_pixels(value: Option<&str>) -> u64 {
    parse_limit(MAX_IMAGE_PIXELS_VAR, value, DEFAULT_MAX_PIXELS)
}

fn parse_limit(var: &str, value: Option<&str>, default: u64) -> u64 {
    let Some(v) = value.map(str::trim).filter(|v| !v.is_empty()) else {
        return default;
    };
    match v.parse::<u64>() {
        Ok(n) if n > 0 => n,
        _ => {
            tracing::warn!("{var}={v:?} is not a positive integer: using the default {default}");
            default
        }
    }
}

/// Reads an image file of at most `max_bytes` bytes, refusing what is not a regular file.
///
/// The file is opened without blocking (a named pipe would otherwise wait for a writer forever)
/// and the opened file's metadata must say "regular file": directories, pipes, sockets and
/// devices such as `/dev/zero` are refused with [`ImageError::NotRegularFile`]. A file larger
/// than `max_bytes` is refused with [`ImageError::FileTooLarge`], and at most `max_bytes + 1`
/// bytes are ever read, so a file that grows while it is read cannot exceed the limit either.
pub fn read_image_file(path: &Path, max_bytes: u64) -> Result<Vec<u8>, ImageError> {
    use std::io::Read;
    let name = || path.display().to_string();
    let io = |source| ImageError::Io {
        name: name(),
        source,
    };
    // Checked before opening as well as after: opening some devices has effects of its own.
    check_regular(&std::fs::metadata(path).map_err(io)?, path)?;
    let file = open_nonblocking(path).map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    check_regular(&meta, path)?;
    let too_large = || ImageError::FileTooLarge {
        name: name(),
        limit: max_bytes,
    };
    if meta.len() > max_bytes {
        return Err(too_large());
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(max_bytes.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() as u64 > max_bytes {
        return Err(too_large());
    }
    Ok(bytes)
}

fn check_regular(meta: &std::fs::Metadata, path: &Path) -> Result<(), ImageError> {
    let ft = meta.file_type();
    if ft.is_file() {
        return Ok(());
    }
    let kind = if ft.is_dir() {
        "a directory"
    } else {
        special_file_kind(&ft)
    };
    Err(ImageError::NotRegularFile {
        name: path.display().to_string(),
        kind,
    })
}

#[cfg(unix)]
fn special_file_kind(ft: &std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if ft.is_fifo() {
        "a named pipe"
    } else if ft.is_socket() {
        "a socket"
    } else if ft.is_char_device() {
        "a character device"
    } else if ft.is_block_device() {
        "a block device"
    } else {
        "a special file"
    }
}

#[cfg(not(unix))]
fn special_file_kind(_: &std::fs::FileType) -> &'static str {
    "a special file"
}

#[cfg(unix)]
fn open_nonblocking(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    // O_NONBLOCK (no libc dependency for one constant): opening a named pipe then returns at
    // once instead of waiting for a writer; reads of regular files are unaffected.
    #[cfg(any(target_os = "linux", target_os = "android"))]
    const O_NONBLOCK: i32 = 0o4000;
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    const O_NONBLOCK: i32 = 0x0004; // macOS and the BSDs
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(O_NONBLOCK)
        .open(path)
}

#[cfg(not(unix))]
fn open_nonblocking(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::File::open(path)
}

/// Errors from decoding or preprocessing one image. Every variant that concerns a file names
/// it, so that batch callers can report failures per input.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The file could not be read.
    #[error("{name}: cannot read file: {source}")]
    Io {
        /// The file.
        name: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The file is empty.
    #[error("{name}: empty file (0 bytes), not an image")]
    Empty {
        /// The file.
        name: String,
    },
    /// The file is not in a supported format.
    #[error("{name}: not a recognised image (expected JPEG, PNG, WebP, GIF, BMP or TIFF)")]
    UnknownFormat {
        /// The file.
        name: String,
    },
    /// The data is malformed or truncated.
    #[error("{name}: invalid or truncated {format} data: {message}")]
    Corrupt {
        /// The file.
        name: String,
        /// The format it claims to be.
        format: &'static str,
        /// The decoder's message.
        message: String,
    },
    /// The path names a directory, a pipe, a socket or a device, not a file.
    #[error("{name}: not a regular file ({kind}); only image files can be read")]
    NotRegularFile {
        /// The path.
        name: String,
        /// What it is instead ("a directory", "a named pipe", …).
        kind: &'static str,
    },
    /// The file is larger than the configured limit.
    #[error(
        "{name}: file larger than the limit of {limit} bytes (raise it with GCLIP_MAX_IMAGE_BYTES)"
    )]
    FileTooLarge {
        /// The file.
        name: String,
        /// The limit in force.
        limit: u64,
    },
    /// The image has no pixels.
    #[error("{name}: image has a zero dimension ({width}x{height})")]
    ZeroSized {
        /// The file.
        name: String,
        /// Declared width.
        width: u64,
        /// Declared height.
        height: u64,
    },
    /// The image has more pixels than the configured limit.
    #[error(
        "{name}: {width}x{height} image exceeds the limit of {limit} pixels (decompression-bomb \
         guard); raise GCLIP_MAX_IMAGE_PIXELS or PreprocessConfig::max_pixels to accept it"
    )]
    TooLarge {
        /// The file.
        name: String,
        /// Declared width.
        width: u64,
        /// Declared height.
        height: u64,
        /// The limit in force.
        limit: u64,
    },
    /// A valid file using a variant this decoder does not support.
    #[error("{name}: unsupported {format} image: {message}")]
    Unsupported {
        /// The file.
        name: String,
        /// The format.
        format: &'static str,
        /// What is not supported.
        message: String,
    },
    /// A bad preprocessing configuration.
    #[error("invalid image preprocessing config: {0}")]
    Config(String),
}

impl ImageError {
    /// The error for a decoding failure of the image called `name`.
    pub fn from_decode(e: DecodeError, name: &str) -> ImageError {
        let name = name.to_string();
        match e {
            DecodeError::Empty => ImageError::Empty { name },
            DecodeError::UnknownFormat => ImageError::UnknownFormat { name },
            DecodeError::Corrupt(f, message) => ImageError::Corrupt {
                name,
                format: f.name(),
                message,
            },
            DecodeError::ZeroSized(width, height) => ImageError::ZeroSized {
                name,
                width,
                height,
            },
            DecodeError::TooLarge(width, height, limit) => ImageError::TooLarge {
                name,
                width,
                height,
                limit,
            },
            DecodeError::Unsupported(f, message) => ImageError::Unsupported {
                name,
                format: f.name(),
                message,
            },
        }
    }
}

/// Which reference pipeline to reproduce.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PreprocessConvention {
    /// open_clip's `image_transform(is_train=False)`: resize in the image's own mode, crop,
    /// then convert to RGB.
    OpenClip,
    /// transformers' PIL `CLIPImageProcessor`: convert to RGB (alpha onto white), resize, crop.
    Transformers,
}

/// Preprocessing settings. Build with [`PreprocessConfig::open_clip`] or
/// [`PreprocessConfig::from_hf_preprocessor_json`], then adjust fields if needed.
#[derive(Clone, Debug, PartialEq)]
pub struct PreprocessConfig {
    /// The reference pipeline.
    pub convention: PreprocessConvention,
    /// Target of the shorter side when resizing.
    pub image_size: usize,
    /// Side of the square center crop (the model's input resolution).
    pub crop_size: usize,
    /// Normalisation mean per RGB channel.
    pub mean: [f32; 3],
    /// Normalisation standard deviation per RGB channel.
    pub std: [f32; 3],
    /// Resampling filter for the resize (bicubic in both references).
    pub filter: Filter,
    /// Resize step on/off (`do_resize`).
    pub do_resize: bool,
    /// Center-crop step on/off (`do_center_crop`).
    pub do_center_crop: bool,
    /// Scale applied to 8-bit values before normalising (`1/255`).
    pub rescale_factor: f64,
    /// Normalisation on/off (`do_normalize`).
    pub do_normalize: bool,
    /// Transpose images according to their EXIF orientation tag first (off by default, as in
    /// both references).
    pub apply_exif_orientation: bool,
    /// Largest accepted image, in pixels (width × height); [`max_image_pixels`] by default
    /// (see [`DEFAULT_MAX_PIXELS`]).
    pub max_pixels: u64,
    /// Largest accepted image file, in bytes, for the `*_from_path` methods;
    /// [`max_image_bytes`] by default (see [`DEFAULT_MAX_IMAGE_BYTES`]).
    pub max_file_bytes: u64,
}

impl PreprocessConfig {
    /// open_clip's inference transform for a model of input resolution `image_size`, with
    /// OpenAI's mean and std (override `mean`/`std` for models trained with others).
    pub fn open_clip(image_size: usize) -> Self {
        PreprocessConfig {
            convention: PreprocessConvention::OpenClip,
            image_size,
            crop_size: image_size,
            mean: OPENAI_CLIP_MEAN,
            std: OPENAI_CLIP_STD,
            filter: Filter::Bicubic,
            do_resize: true,
            do_center_crop: true,
            rescale_factor: 1.0 / 255.0,
            do_normalize: true,
            apply_exif_orientation: false,
            max_pixels: max_image_pixels(),
            max_file_bytes: max_image_bytes(),
        }
    }

    /// transformers' `CLIPImageProcessor` defaults (shortest edge 224, crop 224, bicubic,
    /// OpenAI mean and std).
    pub fn transformers_default() -> Self {
        PreprocessConfig {
            convention: PreprocessConvention::Transformers,
            ..Self::open_clip(224)
        }
    }

    /// Read a Hugging Face `preprocessor_config.json` (the file's path, or its JSON text when
    /// the argument starts with `{`). Missing keys take `CLIPImageProcessor`'s defaults.
    pub fn from_hf_preprocessor_json(path_or_json: &str) -> Result<Self, ImageError> {
        let text = if path_or_json.trim_start().starts_with('{') {
            path_or_json.to_string()
        } else {
            std::fs::read_to_string(path_or_json).map_err(|source| ImageError::Io {
                name: path_or_json.to_string(),
                source,
            })?
        };
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| ImageError::Config(format!("preprocessor_config.json: {e}")))?;
        let mut cfg = Self::transformers_default();
        let bad = |k: &str| {
            ImageError::Config(format!(
                "preprocessor_config.json: unsupported value for \"{k}\""
            ))
        };
        let as_size = |x: &serde_json::Value| x.as_u64().filter(|&n| n > 0).map(|n| n as usize);
        if let Some(s) = v.get("size") {
            cfg.image_size = if let Some(n) = as_size(s) {
                n
            } else if let Some(n) = s.get("shortest_edge").and_then(as_size) {
                n
            } else {
                return Err(bad("size"));
            };
        }
        if let Some(c) = v.get("crop_size") {
            cfg.crop_size = if let Some(n) = as_size(c) {
                n
            } else {
                let h = c.get("height").and_then(as_size);
                let w = c.get("width").and_then(as_size);
                match (h, w) {
                    (Some(h), Some(w)) if h == w => h,
                    _ => return Err(bad("crop_size")),
                }
            };
        }
        let triple = |k: &str| -> Result<Option<[f32; 3]>, ImageError> {
            match v.get(k) {
                None => Ok(None),
                Some(a) => {
                    let a = a
                        .as_array()
                        .filter(|a| a.len() == 3)
                        .ok_or_else(|| bad(k))?;
                    let mut out = [0f32; 3];
                    for (o, x) in out.iter_mut().zip(a) {
                        *o = x.as_f64().ok_or_else(|| bad(k))? as f32;
                    }
                    Ok(Some(out))
                }
            }
        };
        if let Some(m) = triple("image_mean")? {
            cfg.mean = m;
        }
        if let Some(s) = triple("image_std")? {
            cfg.std = s;
        }
        if let Some(r) = v.get("resample") {
            cfg.filter = r
                .as_i64()
                .and_then(Filter::from_pil_id)
                .ok_or_else(|| bad("resample"))?;
        }
        if let Some(r) = v.get("rescale_factor") {
            cfg.rescale_factor = r.as_f64().ok_or_else(|| bad("rescale_factor"))?;
        }
        let flag = |k: &str, default: bool| -> Result<bool, ImageError> {
            match v.get(k) {
                None | Some(serde_json::Value::Null) => Ok(default),
                Some(b) => b.as_bool().ok_or_else(|| bad(k)),
            }
        };
        cfg.do_resize = flag("do_resize", true)?;
        cfg.do_center_crop = flag("do_center_crop", true)?;
        cfg.do_normalize = flag("do_normalize", true)?;
        if !flag("do_rescale", true)? {
            cfg.rescale_factor = 1.0;
        }
        if !flag("do_convert_rgb", true)? {
            return Err(ImageError::Config(
                "do_convert_rgb = false is not supported (CLIP needs RGB input)".into(),
            ));
        }
        Ok(cfg)
    }
}

/// An 8-bit RGB image, rows top to bottom, pixels interleaved (`HWC`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rgb8Image {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// `height * width * 3` bytes.
    pub data: Vec<u8>,
}

/// An image as a caller holds it: a file, an encoded file in memory, or decoded pixels.
#[derive(Clone, Debug)]
pub enum ImageInput {
    /// A file on disk (read with [`read_image_file`] under the configured size limit).
    File(PathBuf),
    /// An encoded file (JPEG, PNG, …) in memory; `name` is used in error messages.
    Encoded { name: String, bytes: Vec<u8> },
    /// Pixels already decoded ([`Decoded::from_pixels`]), preprocessed in their own mode as
    /// Pillow would preprocess the same image.
    Pixels(Decoded),
}

/// Turns image files into model input. Cheap to clone, `Send + Sync`: share one across
/// threads.
#[derive(Clone, Debug)]
pub struct Preprocessor {
    cfg: PreprocessConfig,
}

impl Preprocessor {
    /// A preprocessor for `cfg`.
    pub fn new(cfg: PreprocessConfig) -> Self {
        Preprocessor { cfg }
    }

    /// The configuration in use.
    pub fn config(&self) -> &PreprocessConfig {
        &self.cfg
    }

    /// Decode, resize, crop and convert a file to 8-bit RGB (before normalisation).
    pub fn rgb8_from_path(&self, path: &Path) -> Result<Rgb8Image, ImageError> {
        let name = path.display().to_string();
        let bytes = read_image_file(path, self.cfg.max_file_bytes)?;
        self.rgb8_from_bytes(&bytes, &name)
    }

    /// Like [`rgb8_from_path`](Self::rgb8_from_path) for an in-memory file; `name` is used
    /// in error messages.
    pub fn rgb8_from_bytes(&self, bytes: &[u8], name: &str) -> Result<Rgb8Image, ImageError> {
        if self.cfg.image_size == 0 || self.cfg.crop_size == 0 {
            return Err(ImageError::Config(
                "image_size and crop_size must be at least 1".into(),
            ));
        }
        let img = decode::decode(bytes, self.cfg.max_pixels)
            .map_err(|e| ImageError::from_decode(e, name))?;
        Ok(self.rgb8_from_decoded(img))
    }

    /// The 8-bit stage on an already decoded image.
    pub fn rgb8_from_decoded(&self, mut img: Decoded) -> Rgb8Image {
        if self.cfg.apply_exif_orientation {
            if let Some(o) = img.orientation {
                img = apply_orientation(img, o);
            }
        }
        match self.cfg.convention {
            PreprocessConvention::OpenClip => self.open_clip(img),
            PreprocessConvention::Transformers => self.transformers(img),
        }
    }

    /// Decode and preprocess a file into the normalised `[3, crop, crop]` tensor (CHW).
    pub fn pixels_from_path(&self, path: &Path) -> Result<Vec<f32>, ImageError> {
        Ok(self.normalize(&self.rgb8_from_path(path)?))
    }

    /// Like [`pixels_from_path`](Self::pixels_from_path) for an in-memory file.
    pub fn pixels_from_bytes(&self, bytes: &[u8], name: &str) -> Result<Vec<f32>, ImageError> {
        Ok(self.normalize(&self.rgb8_from_bytes(bytes, name)?))
    }

    /// Preprocess many files in parallel (rayon's pool); one result per input, in order.
    pub fn batch_from_paths(&self, paths: &[PathBuf]) -> Vec<Result<Vec<f32>, ImageError>> {
        paths.par_iter().map(|p| self.pixels_from_path(p)).collect()
    }

    /// Preprocess one image, however it is held, into the normalised `[3, crop, crop]` tensor.
    pub fn pixels_from_input(&self, input: &ImageInput) -> Result<Vec<f32>, ImageError> {
        match input {
            ImageInput::File(path) => self.pixels_from_path(path),
            ImageInput::Encoded { name, bytes } => self.pixels_from_bytes(bytes, name),
            ImageInput::Pixels(img) => Ok(self.normalize(&self.rgb8_from_decoded(img.clone()))),
        }
    }

    /// [`batch_from_paths`](Self::batch_from_paths) for images however they are held.
    pub fn batch_from_inputs(&self, inputs: &[ImageInput]) -> Vec<Result<Vec<f32>, ImageError>> {
        inputs
            .par_iter()
            .map(|i| self.pixels_from_input(i))
            .collect()
    }

    /// Scale and normalise an 8-bit RGB image into a CHW tensor, with each reference's
    /// floating-point steps: open_clip divides by 255 in single precision; transformers
    /// multiplies by `rescale_factor` in double precision and rounds to single.
    pub fn normalize(&self, img: &Rgb8Image) -> Vec<f32> {
        let plane = img.width * img.height;
        let mut out = vec![0f32; 3 * plane];
        let (mean, std) = if self.cfg.do_normalize {
            (self.cfg.mean, self.cfg.std)
        } else {
            ([0.0; 3], [1.0; 3])
        };
        let mut lut = [[0f32; 256]; 3];
        for (c, l) in lut.iter_mut().enumerate() {
            for (v, o) in l.iter_mut().enumerate() {
                let x = match self.cfg.convention {
                    PreprocessConvention::OpenClip => {
                        if self.cfg.rescale_factor == 1.0 / 255.0 {
                            v as f32 / 255.0
                        } else {
                            (v as f64 * self.cfg.rescale_factor) as f32
                        }
                    }
                    PreprocessConvention::Transformers => {
                        (v as f64 * self.cfg.rescale_factor) as f32
                    }
                };
                *o = (x - mean[c]) / std[c];
            }
        }
        for (i, px) in img.data.chunks_exact(3).enumerate() {
            for c in 0..3 {
                out[c * plane + i] = lut[c][px[c] as usize];
            }
        }
        out
    }

    fn open_clip(&self, img: Decoded) -> Rgb8Image {
        let img = if self.cfg.do_resize {
            let (w, h) = shortest_edge_size(img.width, img.height, self.cfg.image_size);
            resize_in_mode(img, w, h, self.cfg.filter)
        } else {
            img
        };
        let img = if self.cfg.do_center_crop {
            crop_torchvision(img, self.cfg.crop_size)
        } else {
            img
        };
        to_rgb(&img)
    }

    fn transformers(&self, img: Decoded) -> Rgb8Image {
        let mut rgb = match img {
            // Already RGB without a transparency key: no conversion, no copy.
            Decoded {
                mode: Mode::Rgb,
                transparency: None,
                samples: Samples::U8(data),
                width,
                height,
                ..
            } => Rgb8Image {
                width,
                height,
                data,
            },
            img => to_rgb_onto_white(&img),
        };
        if self.cfg.do_resize {
            let (w, h) = shortest_edge_size(rgb.width, rgb.height, self.cfg.image_size);
            if (w, h) != (rgb.width, rgb.height) {
                rgb.data =
                    resample::resize_u8(&rgb.data, rgb.width, rgb.height, 3, w, h, self.cfg.filter);
                rgb.width = w;
                rgb.height = h;
            }
        }
        if self.cfg.do_center_crop {
            rgb = crop_transformers(rgb, self.cfg.crop_size);
        }
        rgb
    }
}

/// Output size when the shorter side becomes `size` (torchvision's and transformers'
/// formula: the longer side is `int(size * long / short)` in double precision).
pub fn shortest_edge_size(width: usize, height: usize, size: usize) -> (usize, usize) {
    let (short, long) = if width <= height {
        (width, height)
    } else {
        (height, width)
    };
    let new_long = (size as f64 * long as f64 / short as f64) as usize;
    if width <= height {
        (size, new_long)
    } else {
        (new_long, size)
    }
}

/// Resize in the image's own mode, choosing the filter and alpha handling as Pillow does.
fn resize_in_mode(mut img: Decoded, w: usize, h: usize, filter: Filter) -> Decoded {
    if (w, h) == (img.width, img.height) {
        return img;
    }
    let (iw, ih) = (img.width, img.height);
    // Taken, not borrowed: premultiplying works in place instead of on a full-size copy.
    let samples = std::mem::replace(&mut img.samples, Samples::U8(Vec::new()));
    img.samples = match (samples, img.mode) {
        (Samples::U16(v), _) => Samples::U16(resample::resize_u16(&v, iw, ih, w, h, filter)),
        (Samples::U8(v), Mode::P | Mode::Bilevel) => {
            Samples::U8(resample::nearest(&v, iw, ih, 1, w, h))
        }
        (Samples::U8(v), Mode::La | Mode::Rgba) if filter != Filter::Nearest => {
            let c = img.mode.channels();
            let pre = premultiply(v, c);
            let out = resample::resize_u8(&pre, iw, ih, c, w, h, filter);
            Samples::U8(unpremultiply(out, c))
        }
        (Samples::U8(v), m) => {
            Samples::U8(resample::resize_u8(&v, iw, ih, m.channels(), w, h, filter))
        }
    };
    img.width = w;
    img.height = h;
    img
}

#[inline(always)]
fn muldiv255(a: u32, b: u32) -> u8 {
    let t = a * b + 128;
    (((t >> 8) + t) >> 8) as u8
}

/// Pillow's RGBA → RGBa (and LA → La): colour times alpha, rounded.
fn premultiply(v: Vec<u8>, c: usize) -> Vec<u8> {
    let mut out = v;
    for px in out.chunks_exact_mut(c) {
        let a = px[c - 1] as u32;
        for s in &mut px[..c - 1] {
            *s = muldiv255(*s as u32, a);
        }
    }
    out
}

/// Pillow's RGBa → RGBA: colour times 255 over alpha, truncated, clamped; unchanged when
/// alpha is 0 or 255.
fn unpremultiply(mut v: Vec<u8>, c: usize) -> Vec<u8> {
    for px in v.chunks_exact_mut(c) {
        let a = px[c - 1] as u32;
        if a != 0 && a != 255 {
            for s in &mut px[..c - 1] {
                *s = ((255 * *s as u32) / a).min(255) as u8;
            }
        }
    }
    v
}

/// torchvision's `CenterCrop` on a PIL image: pad with zeros (left/top get the smaller half)
/// when the image is smaller, then crop at `round((H - h) / 2)` with Python's half-to-even
/// rounding.
fn crop_torchvision(img: Decoded, size: usize) -> Decoded {
    let (w, h) = (img.width, img.height);
    let (pad_l, pad_t) = (size.saturating_sub(w) / 2, size.saturating_sub(h) / 2);
    let (pw, ph) = (w.max(size), h.max(size));
    let left = round_half_even_half(pw - size);
    let top = round_half_even_half(ph - size);
    // Crop window in the coordinates of the unpadded image (may start before it).
    let x0 = left as isize - pad_l as isize;
    let y0 = top as isize - pad_t as isize;
    window(img, x0, y0, size, size)
}

/// `round(n / 2)` with ties to even, as Python's `round` does.
fn round_half_even_half(n: usize) -> usize {
    let q = n / 2;
    if n % 2 == 1 && q % 2 == 1 {
        q + 1
    } else {
        q
    }
}

/// Cut a `cw`×`ch` window whose top-left corner is at (`x0`, `y0`); parts outside the image are
/// zero samples (palette index 0 for `P`).
fn window(mut img: Decoded, x0: isize, y0: isize, cw: usize, ch: usize) -> Decoded {
    if x0 == 0 && y0 == 0 && cw == img.width && ch == img.height {
        return img;
    }
    #[allow(clippy::too_many_arguments)]
    fn cut<T: Copy + Default>(
        src: &[T],
        w: usize,
        h: usize,
        c: usize,
        x0: isize,
        y0: isize,
        cw: usize,
        ch: usize,
    ) -> Vec<T> {
        let mut out = vec![T::default(); cw * ch * c];
        for y in 0..ch {
            let sy = y as isize + y0;
            if sy < 0 || sy >= h as isize {
                continue;
            }
            let xs = (-x0).max(0) as usize;
            let xe = ((w as isize - x0).min(cw as isize)).max(0) as usize;
            if xs >= xe {
                continue;
            }
            let sx = (xs as isize + x0) as usize;
            let row = sy as usize * w * c;
            out[(y * cw + xs) * c..(y * cw + xe) * c]
                .copy_from_slice(&src[row + sx * c..row + (sx + xe - xs) * c]);
        }
        out
    }
    let c = img.mode.channels();
    let (w, h) = (img.width, img.height);
    img.samples = match &img.samples {
        Samples::U8(v) => Samples::U8(cut(v, w, h, c, x0, y0, cw, ch)),
        Samples::U16(v) => Samples::U16(cut(v, w, h, c, x0, y0, cw, ch)),
    };
    img.width = cw;
    img.height = ch;
    img
}

/// transformers' `center_crop`: offsets `(H - h) // 2`; when the image is smaller, it is first
/// centred on a zero canvas with `ceil` padding.
fn crop_transformers(img: Rgb8Image, size: usize) -> Rgb8Image {
    let (w, h) = (img.width as isize, img.height as isize);
    let s = size as isize;
    let top = (h - s).div_euclid(2);
    let left = (w - s).div_euclid(2);
    // When the image is smaller, transformers centres it on a zero canvas with `ceil`
    // padding and cuts from `top + top_pad`; in image coordinates that is still `top`
    // (negative rows and columns read as zeros).
    let (x0, y0) = (left, top);
    let d = Decoded {
        format: decode::Format::Png,
        mode: Mode::Rgb,
        width: img.width,
        height: img.height,
        samples: Samples::U8(img.data),
        palette: Vec::new(),
        transparency: None,
        orientation: None,
    };
    let out = window(d, x0, y0, size, size);
    match out.samples {
        Samples::U8(data) => Rgb8Image {
            width: size,
            height: size,
            data,
        },
        Samples::U16(_) => unreachable!("RGB images are 8-bit"),
    }
}

/// Pillow's `convert("RGB")` for each mode.
fn to_rgb(img: &Decoded) -> Rgb8Image {
    let n = img.width * img.height;
    let mut out = Vec::with_capacity(n * 3);
    match (&img.samples, img.mode) {
        (Samples::U16(v), _) => {
            for &s in v {
                let g = if s > 255 { 255 } else { s as u8 };
                out.extend_from_slice(&[g, g, g]);
            }
        }
        (Samples::U8(v), Mode::Rgb) => out.extend_from_slice(v),
        (Samples::U8(v), Mode::Rgba) => {
            for p in v.chunks_exact(4) {
                out.extend_from_slice(&p[..3]);
            }
        }
        (Samples::U8(v), Mode::L | Mode::Bilevel | Mode::I16) => {
            for &g in v {
                out.extend_from_slice(&[g, g, g]);
            }
        }
        (Samples::U8(v), Mode::La) => {
            for p in v.chunks_exact(2) {
                out.extend_from_slice(&[p[0], p[0], p[0]]);
            }
        }
        (Samples::U8(v), Mode::P) => {
            let pal = full_palette(&img.palette);
            for &i in v {
                out.extend_from_slice(&pal[i as usize][..3]);
            }
        }
        (Samples::U8(v), Mode::Cmyk) => {
            for p in v.chunks_exact(4) {
                let nk = 255 - p[3] as i32;
                let ch = |c: u8| (nk - muldiv255(c as u32, nk as u32) as i32).clamp(0, 255) as u8;
                out.extend_from_slice(&[ch(p[0]), ch(p[1]), ch(p[2])]);
            }
        }
    }
    Rgb8Image {
        width: img.width,
        height: img.height,
        data: out,
    }
}

/// A 256-entry RGBA palette: the file's entries, then Pillow's grey ramp for the rest.
fn full_palette(p: &[[u8; 3]]) -> Vec<[u8; 4]> {
    (0..256)
        .map(|i| match p.get(i) {
            Some(c) => [c[0], c[1], c[2], 255],
            None => [i as u8, i as u8, i as u8, 255],
        })
        .collect()
}

/// transformers' `convert_to_rgb`: images with an alpha band or a transparency key become
/// RGBA (Pillow's `convert("RGBA")`) and are alpha-composited onto opaque white; others are
/// converted with `convert("RGB")`.
fn to_rgb_onto_white(img: &Decoded) -> Rgb8Image {
    let has_alpha = matches!(img.mode, Mode::La | Mode::Rgba) || img.transparency.is_some();
    if !has_alpha {
        return to_rgb(img);
    }
    let rgba = to_rgba(img);
    let mut out = Vec::with_capacity(img.width * img.height * 3);
    for p in rgba.chunks_exact(4) {
        let a = p[3] as u32;
        if a == 0 {
            out.extend_from_slice(&[255, 255, 255]);
            continue;
        }
        // Pillow's alpha_composite of `p` over opaque white, 7 extra bits of precision.
        let blend = 255 * (255 - a);
        let outa255 = a * 255 + blend;
        let coef1 = a * 255 * 255 * 128 / outa255;
        let coef2 = 255 * 128 - coef1;
        for &s in &p[..3] {
            let t = s as u32 * coef1 + 255 * coef2 + (0x80 << 7);
            out.push(((((t >> 8) + t) >> 8) >> 7) as u8);
        }
    }
    Rgb8Image {
        width: img.width,
        height: img.height,
        data: out,
    }
}

/// Pillow's `convert("RGBA")`, including its use of the transparency key.
fn to_rgba(img: &Decoded) -> Vec<u8> {
    let n = img.width * img.height;
    let mut out = Vec::with_capacity(n * 4);
    match (&img.samples, img.mode) {
        (Samples::U8(v), Mode::Rgba) => out.extend_from_slice(v),
        (Samples::U8(v), Mode::La) => {
            for p in v.chunks_exact(2) {
                out.extend_from_slice(&[p[0], p[0], p[0], p[1]]);
            }
        }
        (Samples::U8(v), Mode::P) => {
            let mut pal = full_palette(&img.palette);
            match &img.transparency {
                Some(Transparency::Index(i)) => pal[*i as usize][3] = 0,
                Some(Transparency::Alphas(a)) => {
                    for (e, &a) in pal.iter_mut().zip(a) {
                        e[3] = a;
                    }
                }
                _ => {}
            }
            for &i in v {
                out.extend_from_slice(&pal[i as usize]);
            }
        }
        _ => {
            // Through RGB, then the transparency key (compared on its low byte, as Pillow
            // does) makes matching pixels fully transparent, keeping their colour.
            let rgb = to_rgb(img);
            let key = match &img.transparency {
                Some(Transparency::Grey(g)) if img.mode != Mode::Cmyk && img.mode != Mode::Rgb => {
                    Some([*g as u8; 3])
                }
                Some(Transparency::Rgb(c)) if img.mode == Mode::Rgb => {
                    Some([c[0] as u8, c[1] as u8, c[2] as u8])
                }
                _ => None,
            };
            for p in rgb.data.chunks_exact(3) {
                let a = if Some([p[0], p[1], p[2]]) == key {
                    0
                } else {
                    255
                };
                out.extend_from_slice(&[p[0], p[1], p[2], a]);
            }
        }
    }
    out
}

/// Pillow's `ImageOps.exif_transpose` for orientation values 2..=8.
fn apply_orientation(mut img: Decoded, orientation: u16) -> Decoded {
    fn remap<T: Copy>(src: &[T], w: usize, h: usize, c: usize, o: u16) -> (Vec<T>, usize, usize) {
        let swap = o >= 5;
        let (ow, oh) = if swap { (h, w) } else { (w, h) };
        let mut out = Vec::with_capacity(src.len());
        for y in 0..oh {
            for x in 0..ow {
                let (sx, sy) = match o {
                    2 => (w - 1 - x, y),
                    3 => (w - 1 - x, h - 1 - y),
                    4 => (x, h - 1 - y),
                    5 => (y, x),
                    6 => (y, h - 1 - x),
                    7 => (w - 1 - y, h - 1 - x),
                    8 => (w - 1 - y, x),
                    _ => (x, y),
                };
                let i = (sy * w + sx) * c;
                out.extend_from_slice(&src[i..i + c]);
            }
        }
        (out, ow, oh)
    }
    if !(2..=8).contains(&orientation) {
        return img;
    }
    let c = img.mode.channels();
    let (w, h) = (img.width, img.height);
    let (samples, ow, oh) = match &img.samples {
        Samples::U8(v) => {
            let (o, ow, oh) = remap(v, w, h, c, orientation);
            (Samples::U8(o), ow, oh)
        }
        Samples::U16(v) => {
            let (o, ow, oh) = remap(v, w, h, c, orientation);
            (Samples::U16(o), ow, oh)
        }
    };
    img.samples = samples;
    img.width = ow;
    img.height = oh;
    img.orientation = None;
    img
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resize_sizes_follow_int_truncation() {
        assert_eq!(shortest_edge_size(640, 480, 224), (298, 224));
        assert_eq!(shortest_edge_size(480, 640, 224), (224, 298));
        assert_eq!(shortest_edge_size(10, 10, 224), (224, 224));
    }

    #[test]
    fn python_rounding_of_half_offsets() {
        // round(0.5) = 0, round(1.5) = 2, round(2.5) = 2, round(3.5) = 4
        assert_eq!(round_half_even_half(1), 0);
        assert_eq!(round_half_even_half(3), 2);
        assert_eq!(round_half_even_half(5), 2);
        assert_eq!(round_half_even_half(7), 4);
        assert_eq!(round_half_even_half(8), 4);
    }

    /// The second line of defence: a named pipe that appears after the first check (a race)
    /// is opened without waiting for a writer, and refused by the opened file's metadata.
    #[cfg(unix)]
    #[test]
    fn named_pipe_opens_without_blocking_and_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("pipe.jpg");
        let ok = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(ok.success());
        let (tx, rx) = std::sync::mpsc::channel();
        let f = fifo.clone();
        std::thread::spawn(move || {
            let _ = tx.send(open_nonblocking(&f).map(|file| file.metadata()));
        });
        let meta = rx
            .recv_timeout(std::time::Duration::from_secs(60))
            .expect("opening a named pipe blocked")
            .unwrap()
            .unwrap();
        let err = check_regular(&meta, &fifo).unwrap_err();
        assert!(err.to_string().contains("a named pipe"), "{err}");
    }

    #[test]
    fn premultiply_roundtrip_keeps_opaque() {
        let v = vec![10, 20, 30, 255, 200, 100, 50, 0];
        assert_eq!(unpremultiply(premultiply(v.clone(), 4), 4)[..4], v[..4]);
    }

    #[test]
    fn preprocessor_is_send_sync() {
        fn check<T: Send + Sync>() {}
        check::<Preprocessor>();
    }

    #[test]
    fn hf_json_parsing() {
        let cfg = PreprocessConfig::from_hf_preprocessor_json(
            r#"{"crop_size": {"height": 336, "width": 336}, "size": {"shortest_edge": 336},
                "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "resample": 3,
                "do_center_crop": true, "rescale_factor": 0.00392156862745098}"#,
        )
        .unwrap();
        assert_eq!(cfg.image_size, 336);
        assert_eq!(cfg.crop_size, 336);
        assert_eq!(cfg.mean, [0.5; 3]);
        assert_eq!(cfg.convention, PreprocessConvention::Transformers);
        assert!(PreprocessConfig::from_hf_preprocessor_json(r#"{"resample": 9}"#).is_err());
    }
}

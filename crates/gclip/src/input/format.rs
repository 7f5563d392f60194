//! What a decoder says about a file: its format, and why it could not be decoded. Its own
//! module so that the format decoders (`jpeg.rs`) and the dispatcher (`decode.rs`) both use it
//! without importing each other.

/// Which file format an image was decoded from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// JPEG / JFIF.
    Jpeg,
    /// PNG.
    Png,
    /// GIF.
    Gif,
    /// Windows bitmap.
    Bmp,
    /// WebP.
    Webp,
    /// TIFF.
    Tiff,
    /// Pixels handed over already decoded ([`super::decode::Decoded::from_pixels`]), not read from a file.
    Pixels,
}

impl Format {
    /// A short name for messages.
    pub fn name(self) -> &'static str {
        match self {
            Format::Jpeg => "JPEG",
            Format::Png => "PNG",
            Format::Gif => "GIF",
            Format::Bmp => "BMP",
            Format::Webp => "WebP",
            Format::Tiff => "TIFF",
            Format::Pixels => "raw pixels",
        }
    }

    /// Recognise a format from the first bytes of a file.
    pub fn sniff(bytes: &[u8]) -> Option<Format> {
        if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
            Some(Format::Jpeg)
        } else if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
            Some(Format::Png)
        } else if bytes.starts_with(b"GIF87a") || bytes.starts_with(b"GIF89a") {
            Some(Format::Gif)
        } else if bytes.starts_with(b"BM") && bytes.len() >= 26 {
            Some(Format::Bmp)
        } else if bytes.len() >= 12 && &bytes[0..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
            Some(Format::Webp)
        } else if bytes.starts_with(b"II*\0") || bytes.starts_with(b"MM\0*") {
            Some(Format::Tiff)
        } else {
            None
        }
    }
}

/// Why a file could not be decoded; `image.rs` adds the file name.
#[derive(Debug)]
pub enum DecodeError {
    /// Zero bytes.
    Empty,
    /// Not one of the supported formats.
    UnknownFormat,
    /// Malformed or truncated data.
    Corrupt(Format, String),
    /// A width or height of zero.
    ZeroSized(u64, u64),
    /// More pixels than allowed.
    TooLarge(u64, u64, u64),
    /// A valid file using a feature not supported here.
    Unsupported(Format, String),
}

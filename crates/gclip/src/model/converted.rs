//! The converted-weights cache: the bf16 and int8 linear weights of a model, packed once and
//! written to a file that later loads map and use in place, so that a reduced-precision model
//! starts without reading, converting and repacking its f32 checkpoint again. On a CPU with an
//! f32 panel kernel an fp32 inference load keeps its linear weights there too, packed for that
//! kernel (`PackedF32`): every product then runs the panel kernel from the first, without the
//! page faults of packing into fresh memory at every start (0.1–1.9 s on Zen 3's one-shot
//! `gclip classify`, docs/BENCHMARKS.md).
//!
//! One file per checkpoint and precision, named by a hash of the checkpoint's canonical path(s)
//! and the precision, in `GCLIP_CONVERTED_CACHE`, else `$XDG_CACHE_HOME/gclip/converted`, else
//! `~/.cache/gclip/converted`. The file records what it was made from (each source file's size,
//! modification time, inode and a hash of its first and last MiB) and a checksum of its packed
//! data; a file that does not match its source or its checksum, or that cannot be read, is
//! reported and rebuilt, never used. A file is written beside its final name and renamed into
//! place, so a reader never sees half of one, and a process that has mapped the old file keeps
//! it intact.
//!
//! The same directory holds, per checkpoint, the record of which stored tensors a load found
//! free of NaN and infinity (`<hash>-finite.json`, the same source identities), so that later
//! loads of the unchanged files skip that scan.
//!
//! Layout: `GCLIPCV1`, the header's length (u64 LE), the header (JSON), zero padding to a
//! multiple of 64 bytes, then the packed weights, each starting at a multiple of 64 bytes from
//! the start of the file (the kernels' alignment), native-endian as the kernels read them.

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::lowp::PackedF32;
use super::packed::PackedWeight;
use super::precision::{KernelChoice, Precision};
use crate::environment::Env;

const MAGIC: &[u8; 8] = b"GCLIPCV1";
/// Bumped whenever the packed layouts of `lowp` or this file's layout change.
const FORMAT: u32 = 1;
const ALIGN: usize = 64;
/// A header longer than this is refused before it is read (a ViT-L/14's holds ~100 entries).
const MAX_HEADER_BYTES: u64 = 4 << 20;
/// How much of each end of a source file its fingerprint hashes.
const FINGERPRINT_BYTES: u64 = 1 << 20;
/// The checksum hashes the packed data in pieces of this size, in parallel.
const CHECKSUM_PIECE: usize = 8 << 20;

/// Where converted weights are kept.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ConvertedCache {
    /// `GCLIP_CONVERTED_CACHE` (`off` disables the cache), else
    /// `$XDG_CACHE_HOME/gclip/converted`, else `$HOME/.cache/gclip/converted`
    /// ([`Env::converted_cache`]).
    #[default]
    FromEnvironment,
    /// This directory.
    At(PathBuf),
    /// No cache: bf16 and int8 weights are converted at every load.
    Off,
}

impl ConvertedCache {
    /// The cache directory, if any.
    pub fn dir(&self) -> Option<PathBuf> {
        match self {
            ConvertedCache::FromEnvironment => Env::process().converted_cache(),
            ConvertedCache::At(dir) => Some(dir.clone()),
            ConvertedCache::Off => None,
        }
    }
}

/// What a converted file was made from: one record per source file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SourceIdentity {
    path: PathBuf,
    size: u64,
    modified_ns: i128,
    inode: u64,
    device: u64,
    /// xxh3-64 of the first and last MiB, hex.
    fingerprint: String,
}

impl SourceIdentity {
    pub(crate) fn of(path: &Path) -> std::io::Result<Self> {
        let path = path.canonicalize()?;
        let mut file = File::open(&path)?;
        let meta = file.metadata()?;
        let size = meta.len();
        let modified_ns = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos() as i128);
        #[cfg(unix)]
        let (inode, device) = {
            use std::os::unix::fs::MetadataExt;
            (meta.ino(), meta.dev())
        };
        #[cfg(not(unix))]
        let (inode, device) = (0, 0);
        let mut hasher = xxhash_rust::xxh3::Xxh3::new();
        let mut head = vec![0u8; size.min(FINGERPRINT_BYTES) as usize];
        file.read_exact(&mut head)?;
        hasher.update(&head);
        let tail_start = size
            .saturating_sub(FINGERPRINT_BYTES)
            .max(head.len() as u64);
        let mut tail = Vec::with_capacity((size - tail_start) as usize);
        file.seek(SeekFrom::Start(tail_start))?;
        file.take(size - tail_start).read_to_end(&mut tail)?;
        hasher.update(&tail);
        Ok(Self {
            path,
            size,
            modified_ns,
            inode,
            device,
            fingerprint: format!("{:016x}", hasher.digest()),
        })
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Header {
    format: u32,
    precision: Precision,
    sources: Vec<SourceIdentity>,
    /// Bytes of packed data after the header's padding.
    data_len: u64,
    /// See [`checksum`].
    checksum: String,
    tensors: Vec<Entry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Entry {
    /// gclip's name of the weight (`vision.layers.0.attn.qkv.weight`).
    name: String,
    /// The precision this weight is packed in (int8 models keep some layers in bf16).
    precision: Precision,
    in_dim: usize,
    out_dim: usize,
    /// From the start of the packed data.
    offset: u64,
    len: u64,
}

/// Room left beside an fp32 conversion, so that writing one never fills a file system.
const FP32_SPARE_BYTES: u64 = 1 << 30;

/// Whether an fp32 conversion of `sources` (weights packed only to be written, see
/// `Weights::with_converted_cache`) can be written to `path` now: a file can be created in its
/// directory, and the file system has room for as many bytes as the checkpoint holds (more than
/// its packed linear weights take) and [`FP32_SPARE_BYTES`] besides, where it says.
pub(crate) fn can_hold_fp32(path: &Path, sources: &[SourceIdentity]) -> bool {
    if !crate::fsutil::can_write(path) {
        return false;
    }
    let needed = sources
        .iter()
        .fold(FP32_SPARE_BYTES, |n, s| n.saturating_add(s.size));
    let dir = path.parent().unwrap_or(Path::new("."));
    crate::fsutil::available_bytes(dir).is_none_or(|available| available >= needed)
}

/// The cache files of `sources` are named by this hash of their canonical paths.
fn stem_for(sources: &[SourceIdentity]) -> String {
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    for s in sources {
        hasher.update(s.path.as_os_str().as_encoded_bytes());
        hasher.update(&[0]);
    }
    format!("{:032x}", hasher.digest128())
}

/// The cache file for `sources` at `precision` in `dir`.
pub(crate) fn file_for(dir: &Path, sources: &[SourceIdentity], precision: Precision) -> PathBuf {
    dir.join(format!("{}-{precision}.gclipcv", stem_for(sources)))
}

/// The record of which stored tensors of `sources` an earlier load read and found finite, in
/// `dir`: a later load of the same, unchanged files skips the NaN/infinity pass over them (for
/// a ViT-B/32, reading 605 MB at every start).
pub(crate) fn finite_record_for(dir: &Path, sources: &[SourceIdentity]) -> PathBuf {
    dir.join(format!("{}-finite.json", stem_for(sources)))
}

#[derive(Debug, Serialize, Deserialize)]
struct FiniteRecord {
    format: u32,
    sources: Vec<SourceIdentity>,
    /// Names as stored in the files.
    tensors: BTreeSet<String>,
}

/// The tensors that `path` records as finite, when it was made from `sources` exactly as they
/// are now; why not otherwise (absent, unreadable, another format, or stale).
pub(crate) fn read_finite_record(
    path: &Path,
    sources: &[SourceIdentity],
) -> Result<BTreeSet<String>, String> {
    let file = File::open(path).map_err(|e| e.to_string())?;
    let mut text = Vec::new();
    file.take(MAX_HEADER_BYTES + 1)
        .read_to_end(&mut text)
        .map_err(|e| e.to_string())?;
    if text.len() as u64 > MAX_HEADER_BYTES {
        return Err(format!("longer than {MAX_HEADER_BYTES} bytes"));
    }
    let record: FiniteRecord =
        serde_json::from_slice(&text).map_err(|e| format!("not a finite-tensor record: {e}"))?;
    if record.format != FORMAT {
        return Err(format!("format {} is not {FORMAT}", record.format));
    }
    if record.sources != sources {
        return Err("the checkpoint changed since it was checked".into());
    }
    Ok(record.tensors)
}

/// Writes the record that the stored `tensors` of `sources` are finite.
pub(crate) fn write_finite_record(
    path: &Path,
    sources: &[SourceIdentity],
    tensors: &BTreeSet<String>,
) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let record = FiniteRecord {
        format: FORMAT,
        sources: sources.to_vec(),
        tensors: tensors.clone(),
    };
    crate::fsutil::write_file_atomically(path, &serde_json::to_vec(&record)?)
}

/// The checksum of `len` bytes of `file` from `start`: xxh3-64 of the xxh3-64 digests of
/// consecutive [`CHECKSUM_PIECE`]-byte pieces, hex, as [`PieceHasher`] gives it. The pieces are
/// read (not touched through the file's mapping, which would count every page of the file in
/// the process's memory, also those of weights it never uses) and hashed in parallel.
#[cfg(unix)]
fn checksum_of_file(file: &File, start: u64, len: u64) -> std::io::Result<String> {
    use std::os::unix::fs::FileExt;
    let pieces = len.div_ceil(CHECKSUM_PIECE as u64);
    let digests = (0..pieces)
        .into_par_iter()
        .map_init(Vec::new, |buf: &mut Vec<u8>, i| {
            let offset = i * CHECKSUM_PIECE as u64;
            buf.resize((len - offset).min(CHECKSUM_PIECE as u64) as usize, 0);
            file.read_exact_at(buf, start + offset)?;
            Ok(xxhash_rust::xxh3::xxh3_64(buf))
        })
        .collect::<std::io::Result<Vec<u64>>>()?;
    let digests: Vec<u8> = digests.into_iter().flat_map(u64::to_le_bytes).collect();
    Ok(format!("{:016x}", xxhash_rust::xxh3::xxh3_64(&digests)))
}

/// The checksum of data that arrives in slices (see `checksum_of_file`).
#[derive(Default)]
struct PieceHasher {
    piece: Vec<u8>,
    digests: Vec<u8>,
}

impl PieceHasher {
    fn update(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let take = (CHECKSUM_PIECE - self.piece.len()).min(bytes.len());
            self.piece.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.piece.len() == CHECKSUM_PIECE {
                self.flush();
            }
        }
    }

    fn flush(&mut self) {
        let digest = xxhash_rust::xxh3::xxh3_64(&self.piece);
        self.digests.extend_from_slice(&digest.to_le_bytes());
        self.piece.clear();
    }

    fn finish(mut self) -> String {
        if !self.piece.is_empty() {
            self.flush();
        }
        format!("{:016x}", xxhash_rust::xxh3::xxh3_64(&self.digests))
    }
}

fn padding(len: usize) -> usize {
    len.next_multiple_of(ALIGN) - len
}

/// A converted-weights file, mapped and checked.
pub(crate) struct ConvertedFile {
    map: Arc<memmap2::Mmap>,
    data_start: usize,
    entries: HashMap<String, Entry>,
}

impl ConvertedFile {
    /// Opens `path` if it exists. `Ok(None)`: no such file. `Err`: the file exists but is not
    /// a complete, intact conversion of `sources` at `precision` (the reason, for a warning).
    pub(crate) fn open(
        path: &Path,
        sources: &[SourceIdentity],
        precision: Precision,
    ) -> Result<Option<Self>, String> {
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("cannot open it: {e}")),
        };
        // SAFETY: the file is mapped read-only. Cache files are only ever replaced by renaming
        // a new file over them, never written in place, so the mapped bytes do not change
        // under us; a user truncating the file by hand while a model loads is the same risk
        // every memory-mapped reader (the safetensors loader included) accepts.
        let map =
            unsafe { memmap2::Mmap::map(&file) }.map_err(|e| format!("cannot map it: {e}"))?;
        let bytes: &[u8] = &map;
        if bytes.len() < 16 || &bytes[..8] != MAGIC {
            return Err("not a gclip converted-weights file".into());
        }
        let header_len = u64::from_le_bytes(bytes[8..16].try_into().unwrap_or_default());
        if header_len > MAX_HEADER_BYTES || header_len > bytes.len() as u64 - 16 {
            return Err(format!("header length {header_len} is out of bounds"));
        }
        let header_end = 16 + header_len as usize;
        let header: Header = serde_json::from_slice(&bytes[16..header_end])
            .map_err(|e| format!("unreadable header: {e}"))?;
        if header.format != FORMAT {
            return Err(format!(
                "format {} (this gclip writes {FORMAT})",
                header.format
            ));
        }
        if header.precision != precision {
            return Err(format!("holds {} weights", header.precision));
        }
        if header.sources != sources {
            return Err(
                "made from another version of the checkpoint (size, time or content \
                        differ)"
                    .into(),
            );
        }
        let data_start = header_end + padding(header_end);
        if bytes.len() as u64 != data_start as u64 + header.data_len {
            return Err(format!(
                "{} bytes long, expected {} (truncated or extended)",
                bytes.len(),
                data_start as u64 + header.data_len
            ));
        }
        #[cfg(unix)]
        let sum = checksum_of_file(&file, data_start as u64, header.data_len)
            .map_err(|e| format!("cannot read it: {e}"))?;
        #[cfg(not(unix))]
        let sum = {
            let mut hasher = PieceHasher::default();
            hasher.update(&bytes[data_start..]);
            hasher.finish()
        };
        if sum != header.checksum {
            return Err("checksum mismatch (the file is corrupt)".into());
        }
        let mut entries = HashMap::with_capacity(header.tensors.len());
        for e in header.tensors {
            let end = e.offset.checked_add(e.len);
            if !e.offset.is_multiple_of(ALIGN as u64) || end.is_none_or(|end| end > header.data_len)
            {
                return Err(format!("tensor `{}` lies outside the data", e.name));
            }
            entries.insert(e.name.clone(), e);
        }
        Ok(Some(Self {
            map: Arc::new(map),
            data_start,
            entries,
        }))
    }

    /// The fp32 weight gclip calls `name`, packed for the f32 panel kernel for `in_dim ×
    /// out_dim`, used in place; `None` when the file holds no such weight.
    pub(crate) fn panels(
        &self,
        name: &str,
        (in_dim, out_dim): (usize, usize),
    ) -> Option<Result<PackedF32, String>> {
        let e = self.entries.get(name)?;
        if e.precision != Precision::Fp32 || e.in_dim != in_dim || e.out_dim != out_dim {
            return None;
        }
        let offset = self.data_start + e.offset as usize;
        let weight = PackedF32::from_mapped(self.map.clone(), offset, in_dim, out_dim);
        Some(weight.and_then(|w| Self::check_len(name, e, w.as_bytes().len()).map(|()| w)))
    }

    fn check_len(name: &str, e: &Entry, bytes: usize) -> Result<(), String> {
        if bytes as u64 == e.len {
            Ok(())
        } else {
            Err(format!(
                "tensor `{name}` has {} bytes, expected {bytes}",
                e.len
            ))
        }
    }

    /// The weight gclip calls `name`, packed in `precision` for `in_dim × out_dim`, used in
    /// place; `None` when the file holds no such weight.
    pub(crate) fn packed(
        &self,
        name: &str,
        precision: Precision,
        (in_dim, out_dim): (usize, usize),
        kernels: KernelChoice,
    ) -> Option<Result<PackedWeight, String>> {
        let e = self.entries.get(name)?;
        if e.precision != precision || e.in_dim != in_dim || e.out_dim != out_dim {
            return None;
        }
        let offset = self.data_start + e.offset as usize;
        let weight = PackedWeight::from_mapped(
            self.map.clone(),
            offset,
            in_dim,
            out_dim,
            precision,
            kernels,
        );
        Some(weight.and_then(|w| Self::check_len(name, e, w.bytes()).map(|()| w)))
    }
}

/// One packed weight as a converted-weights file stores it.
pub(crate) struct StoredWeight<'a> {
    /// gclip's name of the weight.
    pub name: &'a str,
    pub precision: Precision,
    /// `(in_dim, out_dim)`
    pub dims: (usize, usize),
    pub bytes: &'a [u8],
}

/// Writes `weights` as the conversion of `sources` at `precision` to `path`: into a temporary
/// file beside it, synced, then renamed into place.
pub(crate) fn write(
    path: &Path,
    sources: &[SourceIdentity],
    precision: Precision,
    weights: &[StoredWeight],
) -> std::io::Result<()> {
    let mut tensors = Vec::with_capacity(weights.len());
    let mut offset = 0u64;
    for w in weights {
        let len = w.bytes.len() as u64;
        tensors.push(Entry {
            name: w.name.to_string(),
            precision: w.precision,
            in_dim: w.dims.0,
            out_dim: w.dims.1,
            offset,
            len,
        });
        offset = (offset + len).next_multiple_of(ALIGN as u64);
    }
    let data_len = offset;
    // The checksum is known only once the data has gone by; it has a fixed width, so the
    // header is written with a placeholder and rewritten in place at the end.
    let mut header = Header {
        format: FORMAT,
        precision,
        sources: sources.to_vec(),
        data_len,
        checksum: "0".repeat(16),
        tensors,
    };
    let placeholder = serde_json::to_vec(&header).map_err(std::io::Error::other)?;
    std::fs::create_dir_all(path.parent().unwrap_or(Path::new(".")))?;
    crate::fsutil::write_atomically(path, |file| {
        let mut f = std::io::BufWriter::new(file);
        f.write_all(MAGIC)?;
        f.write_all(&(placeholder.len() as u64).to_le_bytes())?;
        f.write_all(&placeholder)?;
        f.write_all(&vec![0u8; padding(16 + placeholder.len())])?;
        let mut hasher = PieceHasher::default();
        for (e, w) in header.tensors.iter().zip(weights) {
            let pad = vec![0u8; (e.len.next_multiple_of(ALIGN as u64) - e.len) as usize];
            for bytes in [w.bytes, &pad] {
                hasher.update(bytes);
                f.write_all(bytes)?;
            }
        }
        header.checksum = hasher.finish();
        let header = serde_json::to_vec(&header).map_err(std::io::Error::other)?;
        if header.len() != placeholder.len() {
            return Err(std::io::Error::other(
                "converted-weights header changed length",
            ));
        }
        let f = f.into_inner().map_err(|e| e.into_error())?;
        f.seek(SeekFrom::Start(16))?;
        f.write_all(&header)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::{LoadOptions, ModelSource};
    use candle_core::{DType, Device};

    /// An fp32 load whose cache directory cannot be made reads its weights in place, as without
    /// the cache, rather than packing them at every load for a file that is never written; with
    /// a cache it can write (and a CPU with an f32 panel kernel) it packs them and writes it.
    #[test]
    fn fp32_weights_are_packed_only_for_a_cache_that_can_be_written() {
        use crate::model::layers::LinearWeight;
        use crate::model::outin::OutInKernel;
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures");
        let source = ModelSource::HfDir(fixtures.join("models/hf-gelu"));
        let tmp = tempfile::tempdir().unwrap();
        let blocker = tmp.path().join("a-file");
        std::fs::write(&blocker, b"").unwrap();
        let packed_linears = |cache: ConvertedCache| {
            let options = LoadOptions {
                converted_cache: cache,
                ..Default::default()
            };
            let clip = source
                .load_in(&Device::Cpu, DType::F32, &options)
                .unwrap()
                .clip;
            let towers = [&clip.vision.transformer, &clip.text.transformer];
            let linears: Vec<_> = towers
                .iter()
                .flat_map(|t| &t.blocks)
                .flat_map(|b| [&b.attn.qkv, &b.attn.out, &b.fc1, &b.fc2])
                .map(|l| match &l.weight {
                    LinearWeight::Mapped(w) => w.panel_origin().is_some(),
                    other => panic!("an fp32 inference load maps its weights: {other:?}"),
                })
                .collect();
            assert!(!linears.is_empty());
            linears.iter().filter(|&&packed| packed).count()
        };
        assert_eq!(packed_linears(ConvertedCache::At(blocker.join("cache"))), 0);
        assert!(!blocker.join("cache").exists());
        let cache = tmp.path().join("cache");
        let written = packed_linears(ConvertedCache::At(cache.clone()));
        let files: Vec<_> = std::fs::read_dir(&cache)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with("-fp32.gclipcv"))
            .collect();
        if OutInKernel::chosen(KernelChoice::Fastest)
            .panel_kernel()
            .is_some()
        {
            assert!(written > 0);
            assert_eq!(files.len(), 1, "{files:?}");
        } else {
            assert_eq!(written, 0);
            assert!(files.is_empty(), "{files:?}");
        }
    }

    /// An fp32 conversion is written only where the file system has room for it: a checkpoint
    /// as large as the disk is refused, the fixture model's is not.
    #[test]
    fn fp32_conversions_need_room_for_the_checkpoint() {
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures");
        let source =
            SourceIdentity::of(&fixtures.join("models/hf-gelu/model.safetensors")).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = file_for(dir.path(), std::slice::from_ref(&source), Precision::Fp32);
        assert!(can_hold_fp32(&path, std::slice::from_ref(&source)));
        let available = crate::fsutil::available_bytes(dir.path()).unwrap();
        let huge = SourceIdentity {
            size: available,
            ..source.clone()
        };
        assert!(!can_hold_fp32(&path, &[huge]));
    }

    /// The second load maps the packed weights from the file and computes with them there:
    /// altered data with a matching checksum changes the embeddings (which a cache that was
    /// silently bypassed would not), and the file's own data gives exactly the embeddings of
    /// packing afresh. fp32 (where the CPU has an f32 panel kernel) as bf16 and int8: its
    /// weights packed for the panel kernel, the same embeddings as a load without the cache
    /// that packs them when asked (as the server does).
    #[test]
    fn a_valid_file_is_used_in_place() {
        use crate::model::layers::LinearWeight;
        use crate::model::outin::{OutInKernel, PanelOrigin};
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures");
        let source = ModelSource::HfDir(fixtures.join("models/hf-gelu"));
        let reference = candle_core::safetensors::load(
            fixtures.join("models/hf-gelu/reference.safetensors"),
            &Device::Cpu,
        )
        .unwrap();
        let pixels = &reference["pixel_values"];
        let cache = tempfile::tempdir().unwrap();
        let panels = OutInKernel::chosen(KernelChoice::Fastest)
            .panel_kernel()
            .is_some();
        let fp32 = panels.then_some(Precision::Fp32);
        for precision in [Precision::Bf16, Precision::Int8].into_iter().chain(fp32) {
            let load = |converted_cache: ConvertedCache| {
                let options = LoadOptions {
                    precision,
                    converted_cache,
                    ..Default::default()
                };
                source
                    .load_in(&Device::Cpu, DType::F32, &options)
                    .unwrap()
                    .clip
            };
            let mapped = |clip: &crate::model::Clip| {
                let towers = [&clip.vision.transformer, &clip.text.transformer];
                towers.iter().flat_map(|t| &t.blocks).all(|b| {
                    [&b.attn.qkv, &b.attn.out, &b.fc1, &b.fc2]
                        .iter()
                        .all(|l| match &l.weight {
                            LinearWeight::Packed(w) => w.is_mapped(),
                            LinearWeight::Mapped(w) => {
                                w.panel_origin() == Some(PanelOrigin::Mapped)
                            }
                            LinearWeight::Dense(_) => false,
                        })
                })
            };
            let fresh = load(ConvertedCache::Off);
            if precision == Precision::Fp32 {
                assert!(fresh.pack_f32_weights().unwrap() > 0);
            }
            assert!(!mapped(&fresh));
            let want = fresh.encode_pixels(pixels, true).unwrap();
            let at = ConvertedCache::At(cache.path().to_path_buf());
            let first = load(at.clone());
            assert!(!mapped(&first), "nothing to map before the file exists");
            if precision == Precision::Fp32 {
                // Packed by the load, for the file: not "when asked", which nobody did.
                let what = first.kernel_description();
                assert!(what.starts_with("f32 packed at load ("), "{what}");
            }
            assert_eq!(first.encode_pixels(pixels, true).unwrap(), want);
            let second = load(at.clone());
            assert!(mapped(&second), "{precision}");
            assert_eq!(second.encode_pixels(pixels, true).unwrap(), want);
            drop((first, second));

            // Alter every data byte, then give the file a matching checksum.
            let path = std::fs::read_dir(cache.path())
                .unwrap()
                .map(|e| e.unwrap().path())
                .find(|p| {
                    p.to_string_lossy()
                        .ends_with(&format!("-{precision}.gclipcv"))
                })
                .unwrap();
            let mut bytes = std::fs::read(&path).unwrap();
            let header_len = u64::from_le_bytes(bytes[8..16].try_into().unwrap()) as usize;
            let data_start = (16 + header_len).next_multiple_of(ALIGN);
            let mut header: Header = serde_json::from_slice(&bytes[16..16 + header_len]).unwrap();
            for e in &header.tensors {
                let start = data_start + e.offset as usize;
                // bf16: halve every weight; int8: quarter every scale (the words after the
                // corrections); fp32: quarter every weight; by lowering the exponent by one
                // in the high byte (bf16), by two in an f32's high byte.
                let words = &mut bytes[start..start + e.len as usize];
                let lower = |high: &mut u8| *high = high.wrapping_sub(u8::from(*high & 0x7f != 0));
                match e.precision {
                    Precision::Bf16 => words.chunks_exact_mut(2).for_each(|h| lower(&mut h[1])),
                    Precision::Fp32 => words.chunks_exact_mut(4).for_each(|f| lower(&mut f[3])),
                    Precision::Int8 => {
                        let npad = e.out_dim.next_multiple_of(crate::model::lowp::NR);
                        words[4 * npad..8 * npad]
                            .chunks_exact_mut(4)
                            .for_each(|f| lower(&mut f[3]));
                    }
                }
            }
            let mut hasher = PieceHasher::default();
            hasher.update(&bytes[data_start..]);
            header.checksum = hasher.finish();
            let new_header = serde_json::to_vec(&header).unwrap();
            assert_eq!(new_header.len(), header_len);
            bytes[16..16 + header_len].copy_from_slice(&new_header);
            std::fs::write(&path, &bytes).unwrap();
            let altered = load(at);
            assert!(mapped(&altered));
            assert_ne!(
                altered.encode_pixels(pixels, false).unwrap(),
                fresh.encode_pixels(pixels, false).unwrap()
            );
        }
    }
}

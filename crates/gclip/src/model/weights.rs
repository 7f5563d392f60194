//! Checkpoint reading: safetensors (memory-mapped) and PyTorch zip files, in the Hugging Face
//! and open_clip naming schemes, mapped once at load time onto gclip's own tensor names.
//!
//! The towers ask for tensors by gclip's names (`vision.layers.3.attn.qkv.weight`); this module
//! finds them under the checkpoint's names, fuses or transposes them into gclip's layout, checks
//! the shape and remembers what was used. Loading is strict: a missing or mis-shaped tensor is an
//! error naming it, and whatever the checkpoint holds that no module asked for is reported.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::safetensors::Load;
use candle_core::{DType, Device, Tensor};

use super::converted::{self, ConvertedCache, ConvertedFile, SourceIdentity, StoredWeight};
use super::kernels::RowBlocks;
use super::lowp::PackedF32;
use super::outin::{OutInKernel, OutInWeight, PanelOrigin};
use super::packed::PackedWeight;
use super::precision::{KernelChoice, Precision};
use super::{error_message, ModelError};

/// The two naming schemes of CLIP checkpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NamingScheme {
    /// transformers' `CLIPModel` (`vision_model.encoder.layers.N.self_attn.q_proj.weight`, …).
    HuggingFace,
    /// open_clip's `CLIP` (`visual.transformer.resblocks.N.attn.in_proj_weight`, …).
    OpenClip,
}

enum Store {
    SafeTensors(MappedSafetensors),
    Pth(candle_core::pickle::PthTensors),
    Memory(HashMap<String, Tensor>),
    /// Every requested tensor is generated: for benchmarks and tests, never for user models.
    Random,
}

/// A safetensors checkpoint (one file or several shards) mapped read-only for as long as any
/// tensor used in place from it lives (the text tower's token embedding), every tensor read
/// straight from the mapping.
struct MappedSafetensors {
    files: Vec<Arc<memmap2::Mmap>>,
    tensors: HashMap<String, MappedTensor>,
}

struct MappedTensor {
    file: usize,
    dtype: safetensors::Dtype,
    shape: Vec<usize>,
    /// Byte range in the file (checked against it when the header was read).
    bytes: std::ops::Range<usize>,
}

impl MappedSafetensors {
    fn open(paths: &[PathBuf]) -> Result<Self, ModelError> {
        let mut files = Vec::with_capacity(paths.len());
        let mut tensors = HashMap::new();
        for (index, path) in paths.iter().enumerate() {
            let bad = |message: String| ModelError::Checkpoint {
                path: path.clone(),
                message,
            };
            let file = std::fs::File::open(path).map_err(|e| ModelError::Io {
                path: path.clone(),
                message: e.to_string(),
            })?;
            // SAFETY: the file is mapped read-only; like every memory-mapped reader we rely on
            // it not being truncated by another process while the model uses it.
            let map = unsafe { memmap2::Mmap::map(&file) }
                .map_err(|e| bad(format!("cannot map the file: {e}")))?;
            // Checks the header, every tensor's size and that the offsets tile the file.
            let (header_len, metadata) = safetensors::SafeTensors::read_metadata(&map)
                .map_err(|e| bad(format!("not a readable safetensors file: {e}")))?;
            let data_start = 8 + header_len;
            for (name, info) in metadata.tensors() {
                let (start, end) = info.data_offsets;
                tensors.entry(name).or_insert(MappedTensor {
                    file: index,
                    dtype: info.dtype,
                    shape: info.shape.clone(),
                    bytes: data_start + start..data_start + end,
                });
            }
            files.push(Arc::new(map));
        }
        Ok(Self { files, tensors })
    }

    /// The tensor stored as `name`.
    fn view(&self, name: &str) -> Option<safetensors::tensor::TensorView<'_>> {
        let t = self.tensors.get(name)?;
        let bytes = self.files[t.file].get(t.bytes.clone())?;
        safetensors::tensor::TensorView::new(t.dtype, t.shape.clone(), bytes).ok()
    }

    /// Tensor `name` used in place as a 2-D f32 matrix, when it is stored as one: little-endian
    /// f32, two dimensions, 4-byte aligned in the mapping.
    fn f32_matrix(&self, name: &str) -> Option<MappedF32> {
        let t = self.tensors.get(name)?;
        let map = &self.files[t.file];
        let [rows, cols] = t.shape[..] else {
            return None;
        };
        let fits = t.dtype == safetensors::Dtype::F32
            && t.bytes.end <= map.len()
            && (map.as_ptr() as usize + t.bytes.start).is_multiple_of(4)
            && cfg!(target_endian = "little");
        fits.then(|| MappedF32 {
            map: map.clone(),
            bytes: t.bytes.clone(),
            rows,
            cols,
            in_file: true,
        })
    }

    /// Drops the pages of tensor `name` from this process (they stay in the page cache and
    /// come back on the next access): what has been copied or converted out of the mapping
    /// need not count in the process's memory.
    fn release(&self, name: &str) {
        let Some(t) = self.tensors.get(name) else {
            return;
        };
        let map = &self.files[t.file];
        // 4 KiB pages; where pages are larger, an unaligned range is refused and nothing
        // happens (the advice is an optimisation only).
        let page = 4096;
        let start = t.bytes.start.next_multiple_of(page);
        let end = t.bytes.end / page * page;
        if end > start {
            // SAFETY: the mapping is shared and read-only, so MADV_DONTNEED discards no data:
            // a later access reads the same bytes from the file again. Only whole pages inside
            // this tensor are advised.
            let _ = unsafe {
                map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, end - start)
            };
        }
    }
}

/// A row-major `[rows, cols]` f32 tensor used in place in a mapped checkpoint.
#[derive(Clone)]
pub struct MappedF32 {
    map: Arc<memmap2::Mmap>,
    /// Byte range in the mapping: in bounds, f32-aligned, `rows × cols × 4` long (checked when
    /// built).
    bytes: std::ops::Range<usize>,
    rows: usize,
    cols: usize,
    /// Whether the mapping is of a file (shared, read-only), whose released pages come back
    /// from the file, rather than anonymous memory, whose released pages would read as zeros.
    in_file: bool,
}

impl MappedF32 {
    /// `values` (`rows × cols`) copied into a read-only anonymous mapping of their own.
    fn anonymous(values: &[f32], rows: usize, cols: usize) -> std::io::Result<Self> {
        let len = std::mem::size_of_val(values);
        if rows.checked_mul(cols) != Some(values.len()) || len == 0 {
            return Err(std::io::Error::other(format!(
                "{} values are not a [{rows}, {cols}] matrix",
                values.len()
            )));
        }
        let mut map = memmap2::MmapMut::map_anon(len)?;
        for (dst, v) in map.chunks_exact_mut(4).zip(values) {
            dst.copy_from_slice(&v.to_ne_bytes());
        }
        Ok(Self {
            map: Arc::new(map.make_read_only()?),
            bytes: 0..len,
            rows,
            cols,
            in_file: false,
        })
    }

    /// Drops the whole pages of this matrix from the process when it lies in a mapped file
    /// (as `MappedSafetensors::release` does for a tensor): for a weight whose values have been copied into
    /// another layout and are not read here again, except rarely (they come back from the
    /// page cache on the next access).
    pub(crate) fn release_pages(&self) {
        if !self.in_file {
            return;
        }
        let page = 4096;
        let start = self.bytes.start.next_multiple_of(page);
        let end = self.bytes.end / page * page;
        if end > start {
            // SAFETY: the mapping is of a file, shared and read-only, so MADV_DONTNEED discards
            // no data: a later access reads the same bytes from the file again. Only whole
            // pages inside this matrix are advised.
            let _ = unsafe {
                self.map.unchecked_advise_range(
                    memmap2::UncheckedAdvice::DontNeed,
                    start,
                    end - start,
                )
            };
        }
    }

    pub fn dims(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }

    pub fn values(&self) -> &[f32] {
        let bytes = &self.map[self.bytes.clone()];
        // SAFETY: the range was checked in bounds, 4-byte aligned and rows × cols × 4 bytes
        // long when built; every bit pattern is a valid f32; the mapping is read-only and the
        // Arc keeps it alive for the borrow.
        unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast::<f32>(), self.rows * self.cols) }
    }
}

impl std::fmt::Debug for MappedF32 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MappedF32([{}, {}])", self.rows, self.cols)
    }
}

/// The tensors of one checkpoint, read lazily under gclip's names.
pub struct Weights {
    store: Store,
    /// Name without any `module.` prefix → name in the file.
    names: HashMap<String, String>,
    scheme: NamingScheme,
    path: PathBuf,
    device: Device,
    dtype: DType,
    /// The precision the transformer blocks' linear layers are built in (packed as they load).
    precision: Precision,
    kernels: KernelChoice,
    /// Whether the model is loaded to be trained: fp32 linear weights are then trainable
    /// `[in, out]` copies, else used in place in a mapped checkpoint where they can be.
    trainable: bool,
    used: RefCell<BTreeSet<String>>,
    /// Every checkpoint file (shards), for the converted-weights cache.
    files: Vec<PathBuf>,
    converted: Option<Converted>,
    /// Which stored tensors are known finite from an earlier load, and which this one checked.
    finite: Option<FiniteChecks>,
    /// How many stored tensors this load did not scan for NaN or infinity, because the
    /// finite-tensor record of the unchanged files lists them.
    finite_skipped: Cell<usize>,
}

/// The finite-tensor record of one load (see [`converted::finite_record_for`]).
struct FiniteChecks {
    path: PathBuf,
    sources: Vec<SourceIdentity>,
    /// From the record, when it matches the files as they are now.
    known: BTreeSet<String>,
    /// Found finite by this load.
    checked: RefCell<BTreeSet<String>>,
}

/// The converted-weights cache of one load (see [`super::converted`]).
struct Converted {
    path: PathBuf,
    sources: Vec<SourceIdentity>,
    /// The file to read from, when a valid one exists.
    file: Option<ConvertedFile>,
    /// Every weight packed in this load, from the file or converted afresh, by gclip name.
    packed: RefCell<Vec<(String, ConvertedWeight)>>,
    /// Whether any weight was converted afresh (the file is then written anew).
    fresh: Cell<bool>,
}

/// A weight that a load with the converted-weights cache packed, from the file or afresh.
enum ConvertedWeight {
    /// bf16 or int8.
    Packed(Arc<PackedWeight>),
    /// fp32, packed for the f32 panel kernel.
    Panels(Arc<OutInWeight>),
}

/// Where one gclip tensor comes from in a checkpoint (and where an exporter puts it).
pub(crate) enum SourceSpec {
    /// A tensor stored as it is, or transposed (open_clip's projections are `[width, embed]`).
    Single { name: String, transpose: bool },
    /// Several tensors concatenated along the first dimension (transformers' q, k, v).
    Concat(Vec<String>),
}

/// Buffers that checkpoints carry and CLIP never needs: not reported as unexpected.
fn is_known_buffer(name: &str) -> bool {
    name.ends_with("position_ids") || name == "attn_mask" || name.ends_with(".attn_mask")
}

impl Weights {
    /// Opens a checkpoint file: `.safetensors`, or a PyTorch zip (`.bin`, `.pt`, `.pth`), raw or
    /// wrapped in `{"state_dict": …}`, with or without a `module.` prefix. Several safetensors
    /// shards may be given for one model.
    pub fn open(paths: &[PathBuf], device: &Device, dtype: DType) -> Result<Self, ModelError> {
        let first = paths.first().ok_or_else(|| ModelError::Checkpoint {
            path: PathBuf::new(),
            message: "no checkpoint file given".into(),
        })?;
        for p in paths {
            if !p.is_file() {
                return Err(ModelError::Io {
                    path: p.clone(),
                    message: "checkpoint file not found".into(),
                });
            }
        }
        let is_safetensors = first.extension().is_some_and(|e| e == "safetensors");
        let (store, file_names): (Store, Vec<String>) = if is_safetensors {
            let st = MappedSafetensors::open(paths)?;
            let names = st.tensors.keys().cloned().collect();
            (Store::SafeTensors(st), names)
        } else {
            if paths.len() > 1 {
                return Err(ModelError::Checkpoint {
                    path: first.clone(),
                    message: "sharded checkpoints are only supported as safetensors".into(),
                });
            }
            let pth = open_pth(first)?;
            let names = pth.tensor_infos().keys().cloned().collect();
            (Store::Pth(pth), names)
        };
        let mut weights = Self::from_store(store, file_names, first.clone(), device, dtype)?;
        weights.files = paths.to_vec();
        Ok(weights)
    }

    /// Wraps tensors already in memory (tests, conversions), named as in a checkpoint.
    pub fn from_tensors(
        tensors: HashMap<String, Tensor>,
        device: &Device,
        dtype: DType,
    ) -> Result<Self, ModelError> {
        let names = tensors.keys().cloned().collect();
        Self::from_store(
            Store::Memory(tensors),
            names,
            PathBuf::from("<memory>"),
            device,
            dtype,
        )
    }

    fn from_store(
        store: Store,
        file_names: Vec<String>,
        path: PathBuf,
        device: &Device,
        dtype: DType,
    ) -> Result<Self, ModelError> {
        let names: HashMap<String, String> = file_names
            .into_iter()
            .map(|n| {
                let bare = n.strip_prefix("module.").unwrap_or(&n).to_string();
                (bare, n)
            })
            .collect();
        if names.is_empty() {
            return Err(ModelError::Checkpoint {
                path,
                message: "the file holds no tensors".into(),
            });
        }
        let scheme = detect_scheme(&names).ok_or_else(|| ModelError::Checkpoint {
            path: path.clone(),
            message: format!(
                "neither Hugging Face nor open_clip tensor names (first names: {})",
                names.keys().take(5).cloned().collect::<Vec<_>>().join(", ")
            ),
        })?;
        Ok(Self {
            store,
            names,
            scheme,
            path,
            device: device.clone(),
            dtype,
            precision: Precision::Fp32,
            kernels: KernelChoice::Fastest,
            trainable: true,
            used: RefCell::new(BTreeSet::new()),
            files: Vec::new(),
            converted: None,
            finite: None,
            finite_skipped: Cell::new(0),
        })
    }

    /// Builds the transformer blocks' linear layers in `precision` (packed one at a time as
    /// they are read, so no full f32 copy of them is ever held), with `kernels`.
    pub fn with_precision(mut self, precision: Precision, kernels: KernelChoice) -> Self {
        self.precision = precision;
        self.kernels = kernels;
        self
    }

    /// Loads the model for training (`true`, the default: fp32 linear weights become trainable
    /// `[in, out]` tensors) or for inference only (`false`: they are used in place in a mapped
    /// safetensors checkpoint, [`super::layers::LinearWeight::Mapped`]).
    pub fn for_training(mut self, trainable: bool) -> Self {
        self.trainable = trainable;
        self
    }

    /// Whether the model is loaded for training (see [`Weights::for_training`]).
    pub(crate) fn trainable(&self) -> bool {
        self.trainable
    }

    /// The linear weight gclip calls `name` (`[out, in]`), used in place in the mapped
    /// checkpoint when it is stored there as f32 rows (checked finite), with the out-in kernel
    /// of this load's kernel choice; `None` otherwise (read it with [`Weights::with_f32`]).
    /// With the converted-weights cache (a CPU with an f32 panel kernel, see
    /// [`Weights::with_converted_cache`]) every product runs the panel kernel over the copy
    /// packed in the cache file, or over a copy packed now for the file that
    /// [`Weights::save_converted`] writes.
    pub(crate) fn mapped_linear(
        &self,
        name: &str,
        shape: [usize; 2],
    ) -> Result<Option<Arc<OutInWeight>>, ModelError> {
        let Some(blocks) = self.mapped_row_blocks(name, shape)? else {
            return Ok(None);
        };
        let blocks = blocks.into_iter().map(|(_, block)| block).collect();
        let weight = Arc::new(OutInWeight::new(blocks, OutInKernel::chosen(self.kernels))?);
        let Some(c) = &self.converted else {
            return Ok(Some(weight));
        };
        let mapped = match c.file.as_ref().and_then(|f| f.panels(name, weight.dims())) {
            None => false,
            Some(found) => {
                let used = found
                    .and_then(|packed| weight.use_mapped_panels(packed).map_err(|e| e.to_string()));
                if let Err(reason) = &used {
                    tracing::warn!(
                        "converted-weights cache {}: {reason}; packing `{name}` again",
                        c.path.display()
                    );
                }
                used.is_ok()
            }
        };
        if !mapped {
            weight.pack_at_load()?;
            c.fresh.set(true);
        }
        c.packed
            .borrow_mut()
            .push((name.to_string(), ConvertedWeight::Panels(weight.clone())));
        Ok(Some(weight))
    }

    /// The fp32 linear weight gclip calls `name` (`[out, in]`) for inference where it cannot be
    /// used in place ([`Weights::mapped_linear`] gave `None`: a PyTorch archive, f16 values) and
    /// this CPU has an f32 panel kernel for the load's kernel choice: packed for that kernel as
    /// it is read (instead of a transposed copy for gemm), or mapped from the converted-weights
    /// cache without reading the checkpoint's tensor, and then written there. `None` for
    /// training loads, other devices and dtypes, and without a panel kernel.
    pub(crate) fn packed_f32_linear(
        &self,
        name: &str,
        shape: [usize; 2],
    ) -> Result<Option<Arc<OutInWeight>>, ModelError> {
        let kernel = OutInKernel::chosen(self.kernels);
        if self.trainable
            || kernel.panel_kernel().is_none()
            || !self.device.is_cpu()
            || self.dtype != DType::F32
            || matches!(self.store, Store::Random)
        {
            return Ok(None);
        }
        let dims = (shape[1], shape[0]);
        let from_file = self.take_from_converted_file(name, |file| {
            let found = file.panels(name, dims)?;
            Some(found.and_then(|packed| {
                OutInWeight::packed_only(packed, kernel, PanelOrigin::Mapped)
                    .map_err(|e| e.to_string())
            }))
        });
        let weight = match from_file.map(Arc::new) {
            Some(w) => w,
            None => {
                let packed = self.with_f32(name, shape, |rows| {
                    PackedF32::pack_rows(rows).map_err(ModelError::Unsupported)
                })?;
                if let Some(c) = &self.converted {
                    c.fresh.set(true);
                }
                Arc::new(OutInWeight::packed_only(packed, kernel, PanelOrigin::Load)?)
            }
        };
        if let Some(c) = &self.converted {
            c.packed
                .borrow_mut()
                .push((name.to_string(), ConvertedWeight::Panels(weight.clone())));
        }
        Ok(Some(weight))
    }

    /// The weight gclip calls `name` as `take` finds it in the converted-weights file (`None`
    /// where the file does not hold it), its stored tensors then counted as used; one the file
    /// holds but `take` refuses is reported (it is converted from the checkpoint again).
    fn take_from_converted_file<W>(
        &self,
        name: &str,
        take: impl FnOnce(&ConvertedFile) -> Option<Result<W, String>>,
    ) -> Option<W> {
        let c = self.converted.as_ref()?;
        let sources = self.stored_sources(name)?;
        match take(c.file.as_ref()?)? {
            Ok(w) => {
                self.used.borrow_mut().extend(sources);
                Some(w)
            }
            Err(reason) => {
                tracing::warn!(
                    "converted-weights cache {}: {reason}; converting `{name}` again",
                    c.path.display()
                );
                None
            }
        }
    }

    /// The names in the files of what gclip calls `name`, when every one is stored there.
    fn stored_sources(&self, name: &str) -> Option<Vec<String>> {
        let sources = self.source_names(name);
        sources
            .iter()
            .all(|s| self.names.contains_key(s))
            .then_some(sources)
    }

    /// Reads and writes the bf16/int8 linear weights of this checkpoint in `cache` (see
    /// [`super::converted`]): a valid converted file is used in place; a missing, stale or
    /// corrupt one is reported and rebuilt by [`Weights::save_converted`]. An fp32 load for
    /// inference (call [`Weights::for_training`] first) keeps there the linear weights it uses
    /// in place, packed for the f32 panel kernel, where this CPU and the kernel choice have
    /// one; other fp32 loads use only the record below. Weights that do not come from files
    /// use no cache.
    ///
    /// The same directory keeps the record of which stored tensors were found finite, so that
    /// a later load of the unchanged files (size, modification time, inode and the hash of
    /// their ends all equal) skips that pass, at any precision.
    pub fn with_converted_cache(mut self, cache: &ConvertedCache) -> Self {
        let Some(dir) = cache.dir() else {
            return self;
        };
        if self.files.is_empty() {
            return self;
        }
        let sources = match self
            .files
            .iter()
            .map(|p| SourceIdentity::of(p))
            .collect::<std::io::Result<Vec<_>>>()
        {
            Ok(sources) => sources,
            Err(e) => {
                tracing::warn!(
                    "not using the converted-weights cache for {}: {e}",
                    self.path.display()
                );
                return self;
            }
        };
        let record = converted::finite_record_for(&dir, &sources);
        let known = match converted::read_finite_record(&record, &sources) {
            Ok(known) => known,
            Err(reason) => {
                tracing::debug!(
                    "finite-tensor record {} not used: {reason}",
                    record.display()
                );
                BTreeSet::new()
            }
        };
        self.finite = Some(FiniteChecks {
            path: record,
            sources: sources.clone(),
            known,
            checked: RefCell::new(BTreeSet::new()),
        });
        let panels = !self.trainable && OutInKernel::chosen(self.kernels).panel_kernel().is_some();
        if self.precision == Precision::Fp32 && !panels {
            return self;
        }
        let path = converted::file_for(&dir, &sources, self.precision);
        let file = match ConvertedFile::open(&path, &sources, self.precision) {
            Ok(file) => file,
            Err(reason) => {
                tracing::warn!(
                    "converted-weights cache {} is not used ({reason}): converting {} again",
                    path.display(),
                    self.path.display()
                );
                None
            }
        };
        if self.precision == Precision::Fp32
            && file.is_none()
            && !converted::can_hold_fp32(&path, &sources)
        {
            // Packed only to be written: where the file cannot be, fp32 weights are read in
            // place as without the cache (packing at every load costs more than it saves a
            // one-shot command on AVX2 CPUs).
            tracing::debug!(
                "converted-weights cache {} cannot be written or has no room: fp32 weights \
                 stay in place",
                path.display()
            );
            return self;
        }
        self.converted = Some(Converted {
            path,
            sources,
            file,
            packed: RefCell::new(Vec::new()),
            fresh: Cell::new(false),
        });
        self
    }

    /// The linear weight gclip calls `name` (`[out, in]` in the checkpoint), packed for
    /// `precision`: in place from the converted-weights file when it holds it, otherwise packed
    /// from the checkpoint as it is read.
    pub(crate) fn packed_linear(
        &self,
        name: &str,
        [out_dim, in_dim]: [usize; 2],
        precision: Precision,
    ) -> Result<Arc<PackedWeight>, ModelError> {
        let from_file = self.take_from_converted_file(name, |file| {
            file.packed(name, precision, (in_dim, out_dim), self.kernels)
        });
        let weight = match from_file.map(Arc::new) {
            Some(w) => w,
            None => {
                let w = self.with_f32(name, [out_dim, in_dim], |rows| {
                    PackedWeight::pack(rows, precision, self.kernels)
                        .map_err(ModelError::Unsupported)
                })?;
                if let Some(c) = &self.converted {
                    c.fresh.set(true);
                }
                Arc::new(w)
            }
        };
        if let Some(c) = &self.converted {
            c.packed
                .borrow_mut()
                .push((name.to_string(), ConvertedWeight::Packed(weight.clone())));
        }
        Ok(weight)
    }

    /// Writes the converted-weights file when this load converted any weight afresh (call it
    /// once the whole model has loaded). A cache that cannot be written is reported, not an
    /// error: the model works without it.
    pub fn save_converted(&self) {
        self.save_finite_record();
        let Some(c) = &self.converted else {
            return;
        };
        if !c.fresh.get() {
            return;
        }
        let packed = c.packed.borrow();
        let mut stored = Vec::with_capacity(packed.len());
        for (name, w) in packed.iter() {
            let (precision, dims, bytes) = match w {
                ConvertedWeight::Packed(w) => (w.precision(), w.dims(), w.as_bytes()),
                ConvertedWeight::Panels(w) => match w.panel_bytes() {
                    Some(bytes) => (Precision::Fp32, w.dims(), bytes),
                    // Packed at load above, so never: a file without the weight would only
                    // send the next load back to packing it.
                    None => continue,
                },
            };
            stored.push(StoredWeight {
                name,
                precision,
                dims,
                bytes,
            });
        }
        match converted::write(&c.path, &c.sources, self.precision, &stored) {
            Ok(()) => tracing::info!("converted weights written to {}", c.path.display()),
            Err(e) => tracing::warn!(
                "could not write the converted-weights cache {}: {e} (GCLIP_CONVERTED_CACHE=off \
                 turns the cache off)",
                c.path.display()
            ),
        }
    }

    /// Adds the tensors this load found finite to the finite-tensor record (see
    /// [`Weights::with_converted_cache`]); a record that cannot be written is reported only.
    fn save_finite_record(&self) {
        let Some(f) = &self.finite else {
            return;
        };
        let checked = f.checked.borrow();
        if checked.is_subset(&f.known) {
            return;
        }
        let all: BTreeSet<String> = f.known.union(&checked).cloned().collect();
        if let Err(e) = converted::write_finite_record(&f.path, &f.sources, &all) {
            tracing::warn!(
                "could not write the finite-tensor record {}: {e}",
                f.path.display()
            );
        }
    }

    /// How many stored tensors this load did not scan for NaN or infinity because an earlier
    /// load of the same, unchanged files had (see [`Weights::with_converted_cache`]).
    pub fn finite_checks_skipped(&self) -> usize {
        self.finite_skipped.get()
    }

    /// Refuses stored tensor `file_name` if it holds NaN or infinity, counted by `count`
    /// unless the finite-tensor record already vouches for it.
    fn check_finite(
        &self,
        file_name: &str,
        total: usize,
        count: impl FnOnce() -> Result<usize, ModelError>,
    ) -> Result<(), ModelError> {
        if self
            .finite
            .as_ref()
            .is_some_and(|f| f.known.contains(file_name))
        {
            self.finite_skipped.set(self.finite_skipped.get() + 1);
            return Ok(());
        }
        self.refuse_non_finite(file_name, count()?, total)?;
        if let Some(f) = &self.finite {
            f.checked.borrow_mut().insert(file_name.to_string());
        }
        Ok(())
    }

    fn source_names(&self, name: &str) -> Vec<String> {
        match self.source_of(name) {
            SourceSpec::Single { name, .. } => vec![name],
            SourceSpec::Concat(parts) => parts,
        }
    }

    /// The precision and kernels the linear layers are built in.
    pub(crate) fn precision(&self) -> (Precision, KernelChoice) {
        (self.precision, self.kernels)
    }

    /// Random weights of whatever shape the architecture asks for (normal, std 0.02; LayerNorm
    /// gains 1; biases 0; logit scale ln(1/0.07)). Only for benchmarks and tests: every user-facing
    /// loading path goes through [`Weights::open`], which never invents a tensor.
    pub fn random(device: &Device, dtype: DType) -> Self {
        Self {
            store: Store::Random,
            names: HashMap::new(),
            scheme: NamingScheme::HuggingFace,
            path: PathBuf::from("<random>"),
            device: device.clone(),
            dtype,
            precision: Precision::Fp32,
            kernels: KernelChoice::Fastest,
            trainable: true,
            used: RefCell::new(BTreeSet::new()),
            files: Vec::new(),
            converted: None,
            finite: None,
            finite_skipped: Cell::new(0),
        }
    }

    /// The naming scheme found in the checkpoint.
    pub fn scheme(&self) -> NamingScheme {
        self.scheme
    }

    /// The checkpoint file (the first shard).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The tensor gclip calls `name`, with the given shape, in the load dtype and device.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor, ModelError> {
        if let Store::Random = self.store {
            return Ok(random_tensor(name, shape, &self.device)?.to_dtype(self.dtype)?);
        }
        let tensor = match self.source_of(name) {
            SourceSpec::Single {
                name: src,
                transpose,
            } => {
                let t = self.read(&src, name)?;
                if transpose {
                    super::kernels::transpose_2d(&t)?
                } else {
                    t
                }
            }
            SourceSpec::Concat(parts) => {
                let ts = parts
                    .iter()
                    .map(|p| self.read(p, name))
                    .collect::<Result<Vec<_>, _>>()?;
                Tensor::cat(&ts, 0)?
            }
        };
        if tensor.dims() != shape {
            return Err(ModelError::TensorShape {
                name: self.describe_source(name),
                path: self.path.clone(),
                expected: shape.to_vec(),
                found: tensor.dims().to_vec(),
            });
        }
        Ok(tensor.to_dtype(self.dtype)?.to_device(&self.device)?)
    }

    /// The 2-D f32 tensor gclip calls `name`, used in place in the mapped checkpoint when it is
    /// stored there as one little-endian f32 tensor of that shape (a lookup table then reads only
    /// the rows it is asked for), else `None` (read it with [`Weights::get`]). Non-finite values
    /// are refused.
    pub(crate) fn mapped_f32(
        &self,
        name: &str,
        [rows, cols]: [usize; 2],
    ) -> Result<Option<MappedF32>, ModelError> {
        let Some(blocks) = self.mapped_row_blocks(name, [rows, cols])? else {
            return Ok(None);
        };
        // A table stored as one tensor (a fused q/k/v would be several).
        let Ok([(file_name, table)]) = <[_; 1]>::try_from(blocks) else {
            return Ok(None);
        };
        // Checked: only the rows looked up later need to come back.
        self.release(file_name);
        Ok(Some(table))
    }

    /// A scalar parameter, stored as `[]` or `[1]` depending on the exporter.
    pub fn get_scalar(&self, name: &str) -> Result<Tensor, ModelError> {
        match self.get(name, &[]) {
            Err(ModelError::TensorShape { found, .. }) if found == [1] => {
                Ok(self.get(name, &[1])?.reshape(())?)
            }
            other => other,
        }
    }

    /// Checkpoint tensors that no module asked for (buffers CLIP never needs excluded).
    pub fn unused(&self) -> Vec<String> {
        let used = self.used.borrow();
        let mut unused: Vec<String> = self
            .names
            .keys()
            .filter(|n| !used.contains(*n) && !is_known_buffer(n))
            .cloned()
            .collect();
        unused.sort();
        unused
    }

    fn read(&self, source_name: &str, wanted_as: &str) -> Result<Tensor, ModelError> {
        let file_name = self
            .names
            .get(source_name)
            .ok_or_else(|| ModelError::MissingTensor {
                name: source_name.to_string(),
                path: self.path.clone(),
                needed_for: wanted_as.to_string(),
            })?;
        self.used.borrow_mut().insert(source_name.to_string());
        let bad = |e: candle_core::Error| ModelError::Checkpoint {
            path: self.path.clone(),
            message: format!("cannot read tensor `{file_name}`: {}", error_message(&e)),
        };
        let t = match &self.store {
            Store::SafeTensors(st) => {
                let t = st
                    .view(file_name)
                    .ok_or_else(|| ModelError::Checkpoint {
                        path: self.path.clone(),
                        message: format!("tensor `{file_name}` lies outside the file"),
                    })?
                    .load(&Device::Cpu)
                    .map_err(bad)?;
                // Copied out: the pages need not stay in this process.
                st.release(file_name);
                t
            }
            Store::Pth(pth) => {
                pth.get(file_name)
                    .map_err(bad)?
                    .ok_or_else(|| ModelError::MissingTensor {
                        name: source_name.to_string(),
                        path: self.path.clone(),
                        needed_for: wanted_as.to_string(),
                    })?
            }
            Store::Memory(map) => map[file_name].clone(),
            Store::Random => {
                return Err(ModelError::Checkpoint {
                    path: self.path.clone(),
                    message: format!("random weights have no stored tensor `{file_name}`"),
                })
            }
        };
        // Every stored tensor is read once per load: the one place to refuse NaN or infinity,
        // which would otherwise flow silently into every embedding.
        self.check_finite(file_name, t.elem_count(), || {
            count_non_finite(&t).map_err(bad)
        })?;
        Ok(t)
    }

    /// The error for a stored tensor holding `count` NaN or infinite values among `total`.
    fn refuse_non_finite(
        &self,
        file_name: &str,
        count: usize,
        total: usize,
    ) -> Result<(), ModelError> {
        if count == 0 {
            return Ok(());
        }
        Err(ModelError::NonFinite {
            name: file_name.to_string(),
            path: self.path.clone(),
            count,
            total,
        })
    }

    /// Calls `f` with the f32 values of the 2-D tensor gclip calls `name` (shape `shape`,
    /// row-major): in place in the memory-mapped file when it is stored there as f32 (as one
    /// tensor of that shape, or as blocks of its rows, like transformers' q, k and v), without a
    /// copy, so a linear weight is read once, straight into its transposed or packed form;
    /// otherwise from the tensor [`Weights::get`] builds. Non-finite values are refused either
    /// way.
    pub(crate) fn with_f32<R>(
        &self,
        name: &str,
        shape: [usize; 2],
        f: impl FnOnce(&RowBlocks) -> Result<R, ModelError>,
    ) -> Result<R, ModelError> {
        if let Some(blocks) = self.mapped_row_blocks(name, shape)? {
            let result = f(&RowBlocks::new(
                blocks.iter().map(|(_, piece)| piece.values()).collect(),
                shape[1],
            )?);
            // Read into its final form: the pages need not stay in this process.
            blocks
                .iter()
                .for_each(|(file_name, _)| self.release(file_name));
            return result;
        }
        let t = self
            .get(name, &shape)?
            .to_dtype(DType::F32)?
            .to_device(&Device::Cpu)?;
        let values = t.flatten_all()?.to_vec1::<f32>()?;
        f(&RowBlocks::whole(&values, shape[0], shape[1]))
    }

    /// The stored pieces of `name` used in place in the mapped file, with their names in the
    /// file, when every piece is an f32 matrix `[rows_i, shape[1]]` whose rows add up to
    /// `shape[0]` (checked finite, marked used); `None` when any is not (then
    /// [`Weights::get`] reads it).
    fn mapped_row_blocks(
        &self,
        name: &str,
        shape: [usize; 2],
    ) -> Result<Option<Vec<(&str, MappedF32)>>, ModelError> {
        if let (Store::Random, DType::F32, false, true) = (
            &self.store,
            self.dtype,
            self.trainable,
            self.device.is_cpu(),
        ) {
            // Random weights for inference take the path a checkpoint's would (what `gclip
            // bench` measures): their rows in a private anonymous mapping.
            let values = random_tensor(name, &shape, &Device::Cpu)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            let block = MappedF32::anonymous(&values, shape[0], shape[1]).map_err(|e| {
                ModelError::Checkpoint {
                    path: self.path.clone(),
                    message: format!("mapping random weights for `{name}`: {e}"),
                }
            })?;
            return Ok(Some(vec![("<random>", block)]));
        }
        let (Store::SafeTensors(st), DType::F32) = (&self.store, self.dtype) else {
            return Ok(None);
        };
        let sources = match self.source_of(name) {
            SourceSpec::Single {
                name,
                transpose: false,
            } => vec![name],
            SourceSpec::Single { .. } => return Ok(None),
            SourceSpec::Concat(parts) => parts,
        };
        let mut blocks = Vec::with_capacity(sources.len());
        let mut rows = 0;
        for src in &sources {
            let Some((file_name, piece)) = self.names.get(src).and_then(|f| {
                let piece = st.f32_matrix(f).filter(|p| p.dims().1 == shape[1])?;
                Some((f.as_str(), piece))
            }) else {
                return Ok(None);
            };
            rows += piece.dims().0;
            blocks.push((file_name, piece));
        }
        if rows != shape[0] {
            return Ok(None);
        }
        for (file_name, piece) in &blocks {
            let values = piece.values();
            self.check_finite(file_name, values.len(), || {
                Ok(super::kernels::count_non_finite_f32(values))
            })?;
        }
        self.used.borrow_mut().extend(sources);
        Ok(Some(blocks))
    }

    /// Releases the pages of stored tensor `file_name` (see [`MappedSafetensors::release`]).
    fn release(&self, file_name: &str) {
        if let Store::SafeTensors(st) = &self.store {
            st.release(file_name);
        }
    }

    fn describe_source(&self, name: &str) -> String {
        match self.source_of(name) {
            SourceSpec::Single { name, .. } => name,
            SourceSpec::Concat(parts) => parts.join(" + "),
        }
    }

    fn source_of(&self, name: &str) -> SourceSpec {
        match self.scheme {
            NamingScheme::HuggingFace => hf_source(name),
            NamingScheme::OpenClip => open_clip_source(name),
        }
    }
}

/// Where the tensor gclip calls `name` lives in a checkpoint of naming scheme `scheme`.
pub(crate) fn checkpoint_source(scheme: NamingScheme, name: &str) -> SourceSpec {
    match scheme {
        NamingScheme::HuggingFace => hf_source(name),
        NamingScheme::OpenClip => open_clip_source(name),
    }
}

fn random_tensor(name: &str, shape: &[usize], device: &Device) -> candle_core::Result<Tensor> {
    let is_norm = name.contains(".ln_");
    if name == "logit_scale" {
        Tensor::new((1.0f32 / 0.07).ln(), device)
    } else if is_norm && name.ends_with(".weight") {
        Tensor::ones(shape, DType::F32, device)
    } else if name.ends_with(".bias") {
        Tensor::zeros(shape, DType::F32, device)
    } else {
        Tensor::randn(0f32, 0.02, shape, device)
    }
}

/// How many of `values` are `bad`, in parallel for long slices.
fn count_values<T: Sync>(values: &[T], bad: impl Fn(&T) -> bool + Sync) -> usize {
    use rayon::prelude::*;
    const CHUNK: usize = 1 << 16;
    if values.len() <= CHUNK {
        values.iter().filter(|v| bad(v)).count()
    } else {
        values
            .par_chunks(CHUNK)
            .map(|c| c.iter().filter(|v| bad(v)).count())
            .sum()
    }
}

/// How many values of a floating-point tensor are NaN or infinite (0 for integer tensors).
/// One pass over the values, in parallel for large tensors.
fn count_non_finite(t: &Tensor) -> candle_core::Result<usize> {
    use candle_core::{CpuStorage, Storage};
    if !t.dtype().is_float() {
        return Ok(0);
    }
    let t = if t.device().is_cpu() {
        t.flatten_all()?
    } else {
        t.to_device(&Device::Cpu)?.flatten_all()?
    };
    let counted = {
        let (storage, layout) = t.storage_and_layout();
        match (&*storage, layout.contiguous_offsets()) {
            (Storage::Cpu(CpuStorage::F32(v)), Some((a, b))) => {
                Some(super::kernels::count_non_finite_f32(&v[a..b]))
            }
            (Storage::Cpu(CpuStorage::F64(v)), Some((a, b))) => {
                Some(count_values(&v[a..b], |x| !x.is_finite()))
            }
            (Storage::Cpu(CpuStorage::F16(v)), Some((a, b))) => {
                Some(count_values(&v[a..b], |x| !x.is_finite()))
            }
            (Storage::Cpu(CpuStorage::BF16(v)), Some((a, b))) => {
                Some(count_values(&v[a..b], |x| !x.is_finite()))
            }
            _ => None,
        }
    };
    match counted {
        Some(n) => Ok(n),
        // Other float formats (8-bit and smaller) are rare: widen them first.
        None if t.dtype() != DType::F32 => count_non_finite(&t.to_dtype(DType::F32)?),
        None => count_non_finite(&t.contiguous()?.copy()?),
    }
}

fn open_pth(path: &Path) -> Result<candle_core::pickle::PthTensors, ModelError> {
    let unreadable = |e: candle_core::Error| ModelError::Checkpoint {
        path: path.to_path_buf(),
        message: format!("not a readable PyTorch checkpoint: {}", error_message(&e)),
    };
    // Training checkpoints wrap the weights as {"state_dict": …, "epoch": …}; plain state
    // dicts have no such key, and reading them with it fails, so fall back to the whole file.
    // candle's pickle reader panics on some malformed pickles (a tensor rebuilt from too few
    // arguments): a bad file must be an error, not the end of the process.
    let read = |key: Option<&str>| {
        std::panic::catch_unwind(|| candle_core::pickle::PthTensors::new(path, key)).unwrap_or_else(
            |_| {
                Err(candle_core::Error::Msg(
                    "malformed pickle (the reader gave up on it)".into(),
                ))
            },
        )
    };
    check_pickle_lengths(path).map_err(|message| ModelError::Checkpoint {
        path: path.to_path_buf(),
        message: format!("not a readable PyTorch checkpoint: {message}"),
    })?;
    let pth = match read(Some("state_dict")) {
        Ok(p) if !p.tensor_infos().is_empty() => p,
        Ok(_) | Err(_) => read(None).map_err(unreadable)?,
    };
    check_pth_storages(path, pth.tensor_infos()).map_err(|message| ModelError::Checkpoint {
        path: path.to_path_buf(),
        message,
    })?;
    Ok(pth)
}

/// The largest pickle (`data.pkl`) read from a PyTorch zip: real checkpoints hold well under
/// 1 MiB of pickle (names, shapes, strides); the tensors are separate archive entries.
const MAX_PICKLE_BYTES: u64 = 64 << 20;

/// Walks the opcodes of every `data.pkl` in the archive, as candle's reader will, and checks
/// that each length-prefixed string fits in the bytes that follow it. candle allocates a
/// string's declared length before reading it, so a 1 KB pickle declaring a 4 GiB string would
/// reserve 4 GiB (and abort the process where memory is not overcommitted). The walk knows the
/// same opcodes as candle 0.11 and stops at the first other one, where candle stops too.
fn check_pickle_lengths(path: &Path) -> Result<(), String> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| format!("cannot open: {e}"))?;
    let mut zip = zip::ZipArchive::new(std::io::BufReader::new(file))
        .map_err(|e| format!("not a readable zip archive: {e}"))?;
    for index in 0..zip.len() {
        let mut entry = zip
            .by_index(index)
            .map_err(|e| format!("archive entry {index}: {e}"))?;
        let name = entry
            .name()
            .map_err(|e| format!("archive entry {index}: {e}"))?
            .into_owned();
        if !name.ends_with("data.pkl") {
            continue;
        }
        let mut pickle = Vec::new();
        (&mut entry)
            .take(MAX_PICKLE_BYTES + 1)
            .read_to_end(&mut pickle)
            .map_err(|e| format!("`{name}`: {e}"))?;
        if pickle.len() as u64 > MAX_PICKLE_BYTES {
            return Err(format!(
                "`{name}` is larger than {MAX_PICKLE_BYTES} bytes, far beyond any state dict's pickle"
            ));
        }
        check_pickle_opcodes(&pickle).map_err(|e| format!("`{name}`: {e}"))?;
    }
    Ok(())
}

fn check_pickle_opcodes(pickle: &[u8]) -> Result<(), String> {
    let mut pos = 0usize;
    let take = |pos: &mut usize, n: usize| -> Result<&[u8], String> {
        let end = pos
            .checked_add(n)
            .filter(|&end| end <= pickle.len())
            .ok_or_else(|| format!("the pickle ends inside the opcode at byte {}", *pos))?;
        let bytes = &pickle[*pos..end];
        *pos = end;
        Ok(bytes)
    };
    while pos < pickle.len() {
        let opcode = pickle[pos];
        let at = pos;
        pos += 1;
        let fixed = match opcode {
            b'.' => return Ok(()),
            0x80 | b'q' | b'K' | b'h' => 1,
            b'r' | b'J' | b'j' => 4,
            b'M' => 2,
            b'G' => 8,
            b')'
            | b'R'
            | b'('
            | b't'
            | b'Q'
            | 0x85..=0x89
            | b'N'
            | b's'
            | b'u'
            | b'}'
            | b'd'
            | b'b'
            | 0x81
            | b']'
            | b'a'
            | b'e' => 0,
            0x8a => usize::from(take(&mut pos, 1)?[0]),
            b'X' => {
                let len = u32::from_le_bytes(take(&mut pos, 4)?.try_into().unwrap_or_default());
                let remaining = pickle.len() - pos;
                if len as usize > remaining {
                    return Err(format!(
                        "a string at byte {at} declares {len} bytes, but only {remaining} follow"
                    ));
                }
                len as usize
            }
            b'c' => {
                // Module and class names, each ended by a newline.
                for _ in 0..2 {
                    let line = pickle[pos..]
                        .iter()
                        .position(|&b| b == b'\n')
                        .ok_or_else(|| format!("unterminated name at byte {at}"))?;
                    pos += line + 1;
                }
                0
            }
            // candle stops at any other opcode with an error of its own.
            _ => return Ok(()),
        };
        take(&mut pos, fixed)?;
    }
    Ok(())
}

/// Checks what the pickle of a PyTorch zip says about each tensor against the archive itself,
/// before any tensor is allocated: the storage the pickle declares (elements × element size)
/// must fit in the archive entry that holds it, that entry's size must be plausible for the
/// archive file (stored entries fit in the file; deflated ones within deflate's largest ratio),
/// and the tensor's view (offset, shape, strides) must lie inside its storage. A pickle that
/// claims 2^31 elements is refused here instead of being allocated.
fn check_pth_storages(
    path: &Path,
    infos: &HashMap<String, candle_core::pickle::TensorInfo>,
) -> Result<(), String> {
    let file = std::fs::File::open(path).map_err(|e| format!("cannot open: {e}"))?;
    let file_len = file
        .metadata()
        .map_err(|e| format!("cannot open: {e}"))?
        .len();
    let mut zip = zip::ZipArchive::new(std::io::BufReader::new(file))
        .map_err(|e| format!("not a readable PyTorch zip archive: {e}"))?;
    // Deflate cannot expand data by more than about 1032:1.
    const MAX_DEFLATE_RATIO: u64 = 1032;
    let mut names: Vec<&String> = infos.keys().collect();
    names.sort();
    for name in names {
        let info = &infos[name];
        let entry = zip.by_name(&info.path).map_err(|e| {
            format!(
                "tensor `{name}`: its storage `{}` cannot be read from the archive ({e})",
                info.path
            )
        })?;
        let entry_size = entry.size();
        let plausible = match entry.compression() {
            zip::CompressionMethod::Stored => {
                entry_size == entry.compressed_size() && entry_size <= file_len
            }
            _ => {
                entry.compressed_size() <= file_len
                    && entry_size
                        <= entry
                            .compressed_size()
                            .saturating_mul(MAX_DEFLATE_RATIO)
                            .saturating_add(1024)
            }
        };
        if !plausible {
            return Err(format!(
                "tensor `{name}`: archive entry `{}` claims {entry_size} bytes, more than the archive of {file_len} bytes can hold",
                info.path
            ));
        }
        let elem = info.dtype.size_in_bytes() as u64;
        let storage_elems = info.storage_size as u64;
        let storage_bytes = storage_elems.checked_mul(elem);
        if storage_bytes.is_none_or(|b| b > entry_size) {
            return Err(format!(
                "tensor `{name}`: the pickle declares a storage of {storage_elems} {:?} elements ({} bytes), but its archive entry `{}` holds {entry_size} bytes",
                info.dtype,
                storage_bytes.map_or_else(|| "more than 2^64".to_string(), |b| b.to_string()),
                info.path
            ));
        }
        let layout = &info.layout;
        // candle keeps the storage offset in bytes.
        let offset = layout.start_offset() as u64 / elem.max(1);
        let dims = layout.dims();
        let strides = layout.stride();
        let needed = if dims.contains(&0) {
            Some(0)
        } else {
            // The last element the view reaches, plus one.
            dims.iter()
                .zip(strides)
                .try_fold(offset, |acc, (&d, &s)| {
                    (d as u64 - 1)
                        .checked_mul(s as u64)
                        .and_then(|x| acc.checked_add(x))
                })
                .and_then(|last| last.checked_add(1))
                .and_then(|end| {
                    // What candle reads: the elements from the offset on, contiguously.
                    let count = dims
                        .iter()
                        .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64))?;
                    Some(end.max(offset.checked_add(count)?))
                })
        };
        if needed.is_none_or(|n| n > storage_elems) {
            return Err(format!(
                "tensor `{name}`: its view (offset {offset}, shape {dims:?}, strides {strides:?}) reaches beyond its storage of {storage_elems} elements"
            ));
        }
    }
    Ok(())
}

fn detect_scheme(names: &HashMap<String, String>) -> Option<NamingScheme> {
    let has = |prefix: &str| names.keys().any(|n| n.starts_with(prefix));
    if has("vision_model.") || has("text_model.") {
        Some(NamingScheme::HuggingFace)
    } else if has("visual.") || has("transformer.resblocks.") || has("token_embedding.") {
        Some(NamingScheme::OpenClip)
    } else {
        None
    }
}

/// Splits `vision.layers.3.attn.qkv.weight` into `("vision", Some(3), "attn.qkv.weight")`,
/// and `vision.ln_pre.weight` into `("vision", None, "ln_pre.weight")`.
fn split_name(name: &str) -> (&str, Option<&str>, &str) {
    let (tower, rest) = name.split_once('.').unwrap_or(("", name));
    if let Some(layer_rest) = rest.strip_prefix("layers.") {
        if let Some((idx, sub)) = layer_rest.split_once('.') {
            return (tower, Some(idx), sub);
        }
    }
    (tower, None, rest)
}

fn single(name: String) -> SourceSpec {
    SourceSpec::Single {
        name,
        transpose: false,
    }
}

fn hf_source(name: &str) -> SourceSpec {
    if name == "logit_scale" {
        return single(name.into());
    }
    let (tower, layer, sub) = split_name(name);
    let model = if tower == "vision" {
        "vision_model"
    } else {
        "text_model"
    };
    if let Some(i) = layer {
        let base = format!("{model}.encoder.layers.{i}");
        let (module, param) = sub.rsplit_once('.').unwrap_or((sub, ""));
        return match module {
            "attn.qkv" => SourceSpec::Concat(
                ["q_proj", "k_proj", "v_proj"]
                    .iter()
                    .map(|p| format!("{base}.self_attn.{p}.{param}"))
                    .collect(),
            ),
            "attn.out" => single(format!("{base}.self_attn.out_proj.{param}")),
            "ln_1" => single(format!("{base}.layer_norm1.{param}")),
            "ln_2" => single(format!("{base}.layer_norm2.{param}")),
            "mlp.fc1" => single(format!("{base}.mlp.fc1.{param}")),
            "mlp.fc2" => single(format!("{base}.mlp.fc2.{param}")),
            _ => single(format!("{base}.{sub}")),
        };
    }
    let mapped = match (tower, sub) {
        ("vision", "patch_embed.weight") => "vision_model.embeddings.patch_embedding.weight".into(),
        ("vision", "class_embedding") => "vision_model.embeddings.class_embedding".into(),
        ("vision", "position_embedding") => {
            "vision_model.embeddings.position_embedding.weight".into()
        }
        ("vision", "projection") => "visual_projection.weight".into(),
        ("text", "token_embedding") => "text_model.embeddings.token_embedding.weight".into(),
        ("text", "position_embedding") => "text_model.embeddings.position_embedding.weight".into(),
        ("text", "projection") => "text_projection.weight".into(),
        (_, s) => {
            let (module, param) = s.rsplit_once('.').unwrap_or((s, ""));
            let module = match module {
                "ln_pre" => "pre_layrnorm",
                "ln_post" => "post_layernorm",
                "ln_final" => "final_layer_norm",
                m => m,
            };
            format!("{model}.{module}.{param}")
        }
    };
    single(mapped)
}

fn open_clip_source(name: &str) -> SourceSpec {
    if name == "logit_scale" {
        return single(name.into());
    }
    let (tower, layer, sub) = split_name(name);
    let prefix = if tower == "vision" { "visual." } else { "" };
    if let Some(i) = layer {
        let base = format!("{prefix}transformer.resblocks.{i}");
        let (module, param) = sub.rsplit_once('.').unwrap_or((sub, ""));
        return single(match module {
            "attn.qkv" => format!("{base}.attn.in_proj_{param}"),
            "attn.out" => format!("{base}.attn.out_proj.{param}"),
            "mlp.fc1" => format!("{base}.mlp.c_fc.{param}"),
            "mlp.fc2" => format!("{base}.mlp.c_proj.{param}"),
            m => format!("{base}.{m}.{param}"),
        });
    }
    match (tower, sub) {
        ("vision", "patch_embed.weight") => single("visual.conv1.weight".into()),
        ("vision", "class_embedding") => single("visual.class_embedding".into()),
        ("vision", "position_embedding") => single("visual.positional_embedding".into()),
        ("vision", "projection") => SourceSpec::Single {
            name: "visual.proj".into(),
            transpose: true,
        },
        ("text", "token_embedding") => single("token_embedding.weight".into()),
        ("text", "position_embedding") => single("positional_embedding".into()),
        ("text", "projection") => SourceSpec::Single {
            name: "text_projection".into(),
            transpose: true,
        },
        (_, s) => single(format!("{prefix}{s}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name_of(spec: SourceSpec) -> String {
        match spec {
            SourceSpec::Single { name, .. } => name,
            SourceSpec::Concat(parts) => parts.join("+"),
        }
    }

    #[test]
    fn random_weights_for_inference_are_mapped_rows_and_for_training_dense() {
        let inference = Weights::random(&Device::Cpu, DType::F32).for_training(false);
        let w = inference
            .mapped_linear("vision.layers.0.mlp.fc1.weight", [12, 5])
            .unwrap()
            .expect("random inference weights run in place");
        assert_eq!(w.dims(), (5, 12));
        let rows = w.rows().unwrap();
        let values: Vec<f32> = (0..12).flat_map(|r| rows.row(r).to_vec()).collect();
        assert_eq!(values.len(), 60);
        // Normal with std 0.02, not a constant fill.
        assert!(values.iter().all(|v| v.is_finite() && v.abs() < 0.2));
        assert!(values.iter().any(|&v| v != values[0]));
        let training = Weights::random(&Device::Cpu, DType::F32);
        assert!(training
            .mapped_linear("vision.layers.0.mlp.fc1.weight", [12, 5])
            .unwrap()
            .is_none());
        assert!(MappedF32::anonymous(&[1.0; 6], 4, 2).is_err());
        assert!(MappedF32::anonymous(&[], 0, 3).is_err());
    }

    #[test]
    fn maps_names_of_both_schemes() {
        let cases = [
            ("vision.layers.3.attn.qkv.weight", "vision_model.encoder.layers.3.self_attn.q_proj.weight+vision_model.encoder.layers.3.self_attn.k_proj.weight+vision_model.encoder.layers.3.self_attn.v_proj.weight", "visual.transformer.resblocks.3.attn.in_proj_weight"),
            ("text.layers.0.mlp.fc2.bias", "text_model.encoder.layers.0.mlp.fc2.bias", "transformer.resblocks.0.mlp.c_proj.bias"),
            ("text.layers.11.ln_2.weight", "text_model.encoder.layers.11.layer_norm2.weight", "transformer.resblocks.11.ln_2.weight"),
            ("vision.ln_pre.bias", "vision_model.pre_layrnorm.bias", "visual.ln_pre.bias"),
            ("vision.ln_post.weight", "vision_model.post_layernorm.weight", "visual.ln_post.weight"),
            ("text.ln_final.weight", "text_model.final_layer_norm.weight", "ln_final.weight"),
            ("vision.projection", "visual_projection.weight", "visual.proj"),
            ("text.projection", "text_projection.weight", "text_projection"),
            ("vision.patch_embed.weight", "vision_model.embeddings.patch_embedding.weight", "visual.conv1.weight"),
            ("text.position_embedding", "text_model.embeddings.position_embedding.weight", "positional_embedding"),
        ];
        for (ours, hf, oc) in cases {
            assert_eq!(name_of(hf_source(ours)), hf, "{ours}");
            assert_eq!(name_of(open_clip_source(ours)), oc, "{ours}");
        }
        assert!(matches!(
            open_clip_source("text.projection"),
            SourceSpec::Single {
                transpose: true,
                ..
            }
        ));
        assert!(matches!(
            hf_source("text.projection"),
            SourceSpec::Single {
                transpose: false,
                ..
            }
        ));
    }
}

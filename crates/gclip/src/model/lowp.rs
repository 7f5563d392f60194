//! Low-precision matrix multiply kernels for linear layers: `y = x · W + b`.
//!
//! Two families:
//!
//! * **bf16**: weights stored as bf16 (round-to-nearest-even), activations
//!   rounded to bf16 per call, products accumulated in f32.
//! * **int8**: weights quantised symmetrically per output column, activations
//!   quantised symmetrically per row at run time, products accumulated exactly
//!   in i32 and rescaled to f32.
//!
//! Weights are packed once ([`PackedBf16::pack_out_in`], [`PackedInt8::pack_out_in`]) into
//! panels of [`NR`] output columns; the packed bytes can be saved and restored
//! with `as_bytes` / `from_bytes` (native endianness).
//!
//! Every public entry point validates shapes and returns `Err(String)` instead
//! of panicking; a kernel variant the CPU cannot run is also an `Err`.
//!
//! Threading: the work of one call is split over at most `threads` tasks (`threads == 0` means
//! the current rayon pool's size): on the kernels' own thread team, whose threads spin briefly
//! between calls instead of sleeping (`team.rs`), or on the rayon pool while another caller
//! holds the team; `threads == 1` runs on the calling thread alone.
//!
//! Scratch: each call packs the activations into a per-calling-thread scratch
//! buffer that is kept (thread-local) and reused by later calls on the same
//! thread, so steady-state calls do not allocate it again (int8 also allocates
//! one `Vec<f32>` of `rows` scales per call).

use std::cell::RefCell;
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use rayon::prelude::*;

use super::kernels::{act_row, Activation, RowBlocks};

#[cfg(target_arch = "x86_64")]
mod amx;
#[cfg(target_arch = "x86_64")]
mod amx_attention;
mod team;

/// Output columns per packed weight panel (two 16-lane vectors).
pub const NR: usize = 32;
/// K-steps (bf16 pairs / int8 quads) per K block. Measured on Zen 4: no K
/// blocking was fastest for CLIP's K <= 3072 (KC = 64..384 lost 5-20%), so
/// this only splits very long K.
const KC: usize = 2048;
/// Micro-row-blocks per tile (tile rows = `MC_BLOCKS * mr`).
const MC_BLOCKS: usize = 8;
/// Panels per tile (tile columns = `NC_PANELS * NR`).
const NC_PANELS: usize = 4;
/// Largest `in_dim` for which the int8 i32 accumulator cannot overflow
/// (|acc| <= 127 * 127 * in_dim < 2^31).
pub const MAX_INT8_IN_DIM: usize = 131_072;

// ---------------------------------------------------------------------------
// Kernel selection
// ---------------------------------------------------------------------------

/// bf16 kernel variants.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Bf16Kernel {
    /// Plain Rust, any CPU.
    Portable,
    /// AVX2 + FMA (Zen 1-3, Intel Haswell to Comet Lake): bf16 widened to f32 once per
    /// block of weights (staged), then f32 FMA.
    Avx2,
    /// AVX-512F: bf16 widened to f32, f32 FMA.
    Avx512,
    /// AVX-512 BF16: `vdpbf16ps`.
    Avx512Bf16,
    /// AMX-BF16 tiles (`tdpbf16ps`, Intel Sapphire Rapids+), AVX-512 BF16 for the edges.
    Amx,
}

/// int8 kernel variants.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Int8Kernel {
    /// Plain Rust, any CPU (i32 accumulation).
    Portable,
    /// AVX2: `vpmaddubsw` on |a| and the weights carrying a's sign, which cannot saturate
    /// (|a|, |w| <= 127), then `vpmaddwd` to i32; exact like the others.
    Avx2,
    /// AVX-512 VNNI: `vpdpbusd`.
    Avx512Vnni,
    /// AMX-INT8 tiles (`tdpbusd`, Intel Sapphire Rapids+), AVX-512 VNNI for the edges; equal
    /// to the VNNI kernel bit for bit.
    Amx,
}

#[cfg(target_arch = "x86_64")]
use super::kernels::has_avx2_fma;
#[cfg(not(target_arch = "x86_64"))]
fn has_avx2_fma() -> bool {
    false
}
#[cfg(target_arch = "x86_64")]
fn has_avx512() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
}
#[cfg(not(target_arch = "x86_64"))]
fn has_avx512() -> bool {
    false
}
#[cfg(target_arch = "x86_64")]
fn has_avx512bf16() -> bool {
    has_avx512()
        && std::arch::is_x86_feature_detected!("avx512bw")
        && std::arch::is_x86_feature_detected!("avx512vl")
        && std::arch::is_x86_feature_detected!("avx512bf16")
}
#[cfg(not(target_arch = "x86_64"))]
fn has_avx512bf16() -> bool {
    false
}
#[cfg(target_arch = "x86_64")]
fn has_avx512vnni() -> bool {
    has_avx512() && std::arch::is_x86_feature_detected!("avx512vnni")
}
#[cfg(not(target_arch = "x86_64"))]
fn has_avx512vnni() -> bool {
    false
}
#[cfg(target_arch = "x86_64")]
fn has_amx_bf16() -> bool {
    has_avx512bf16() && amx::support().bf16
}
#[cfg(not(target_arch = "x86_64"))]
fn has_amx_bf16() -> bool {
    false
}
#[cfg(target_arch = "x86_64")]
fn has_amx_int8() -> bool {
    has_avx512vnni() && std::arch::is_x86_feature_detected!("avx512bw") && amx::support().int8
}
#[cfg(not(target_arch = "x86_64"))]
fn has_amx_int8() -> bool {
    false
}

impl Bf16Kernel {
    /// Whether this CPU can run the variant.
    pub fn is_available(self) -> bool {
        match self {
            Bf16Kernel::Portable => true,
            Bf16Kernel::Avx2 => has_avx2_fma(),
            Bf16Kernel::Avx512 => has_avx512(),
            Bf16Kernel::Avx512Bf16 => has_avx512bf16(),
            Bf16Kernel::Amx => has_amx_bf16(),
        }
    }
    /// The variants this CPU can run, slowest first.
    pub fn available() -> Vec<Bf16Kernel> {
        [
            Bf16Kernel::Portable,
            Bf16Kernel::Avx2,
            Bf16Kernel::Avx512,
            Bf16Kernel::Avx512Bf16,
            Bf16Kernel::Amx,
        ]
        .into_iter()
        .filter(|k| k.is_available())
        .collect()
    }
    /// The fastest variant this CPU can run.
    pub fn best() -> Bf16Kernel {
        *Self::available().last().unwrap_or(&Bf16Kernel::Portable)
    }
    /// Short name.
    pub fn name(self) -> &'static str {
        match self {
            Bf16Kernel::Portable => "bf16-portable",
            Bf16Kernel::Avx2 => "bf16-avx2",
            Bf16Kernel::Avx512 => "bf16-avx512",
            Bf16Kernel::Avx512Bf16 => "bf16-avx512bf16",
            Bf16Kernel::Amx => "bf16-amx",
        }
    }
}

impl Int8Kernel {
    /// Whether this CPU can run the variant.
    pub fn is_available(self) -> bool {
        match self {
            Int8Kernel::Portable => true,
            Int8Kernel::Avx2 => has_avx2_fma(),
            Int8Kernel::Avx512Vnni => has_avx512vnni(),
            Int8Kernel::Amx => has_amx_int8(),
        }
    }
    /// The variants this CPU can run, slowest first.
    pub fn available() -> Vec<Int8Kernel> {
        [
            Int8Kernel::Portable,
            Int8Kernel::Avx2,
            Int8Kernel::Avx512Vnni,
            Int8Kernel::Amx,
        ]
        .into_iter()
        .filter(|k| k.is_available())
        .collect()
    }
    /// The fastest variant this CPU can run.
    pub fn best() -> Int8Kernel {
        *Self::available().last().unwrap_or(&Int8Kernel::Portable)
    }
    /// Short name.
    pub fn name(self) -> &'static str {
        match self {
            Int8Kernel::Portable => "int8-portable",
            Int8Kernel::Avx2 => "int8-avx2",
            Int8Kernel::Avx512Vnni => "int8-avx512vnni",
            Int8Kernel::Amx => "int8-amx",
        }
    }
}

// ---------------------------------------------------------------------------
// Conversions and quantisation
// ---------------------------------------------------------------------------

/// f32 -> bf16 bits, round to nearest even; NaN stays NaN (quietened).
#[inline(always)]
pub fn f32_to_bf16(x: f32) -> u16 {
    let b = x.to_bits();
    let rounded = (b.wrapping_add(0x7FFF + ((b >> 16) & 1)) >> 16) as u16;
    let nan = ((b >> 16) as u16) | 0x0040;
    if (b & 0x7FFF_FFFF) > 0x7F80_0000 {
        nan
    } else {
        rounded
    }
}

#[inline(always)]
fn bf16_row_generic(src: &[f32], dst: &mut [u16]) {
    for (d, &v) in dst.iter_mut().zip(src) {
        *d = f32_to_bf16(v);
    }
}

crate::simd_dispatch!(fn bf16_row(src: &[f32], dst: &mut [u16]) = bf16_row_generic);

/// bf16 bits -> f32 (exact).
#[inline]
pub fn bf16_to_f32(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}

/// Round to nearest even for |v| <= 2^22 (used for values within ±128).
#[inline]
fn rne_small(v: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0; // 1.5 * 2^23
    (v + MAGIC) - MAGIC
}

/// Scale of a row and the multiplier used to quantise it (see
/// [`quantize_row_i8`]); `inv` is `None` when every q is 0.
#[inline(always)]
fn row_quant_params(x: &[f32]) -> (f32, Option<f32>) {
    let mut max = 0f32;
    let mut bad = false;
    for &v in x {
        bad |= !v.is_finite();
        let a = v.abs();
        max = if a > max { a } else { max };
    }
    if bad {
        (f32::NAN, None)
    } else if max == 0.0 {
        (0.0, None)
    } else {
        (max / 127.0, Some(127.0 / max))
    }
}

/// The quantised value of `v` for multiplier `inv` (integer in ±127).
#[inline(always)]
fn quant(v: f32, inv: f32) -> f32 {
    rne_small(v * inv).clamp(-127.0, 127.0)
}

/// Quantise one activation row exactly as [`linear_int8`] does.
///
/// Returns the scale `s` (so `x ≈ s * q`): `max|x| / 127`, `0.0` for an
/// all-zero (or empty) row, and `NaN` when the row holds a NaN or infinity
/// (then every `q` is 0 and the output row of [`linear_int8`] is all NaN).
/// `q[k] = round_half_even(x[k] * (127 / max|x|))` clamped to `[-127, 127]`.
/// `q.len()` must be at least `x.len()`; only `q[..x.len()]` is written.
pub fn quantize_row_i8(x: &[f32], q: &mut [i8]) -> f32 {
    let q = &mut q[..x.len()];
    let (scale, inv) = row_quant_params(x);
    match inv {
        None => q.fill(0),
        Some(inv) => {
            for (d, &v) in q.iter_mut().zip(x) {
                *d = quant(v, inv) as i8;
            }
        }
    }
    scale
}

/// One activation row as u8 (`q + 128`), padded with 128 (q = 0) to
/// `out.len()`; returns the row scale.
#[inline(always)]
fn pack_row_u8(xr: &[f32], out: &mut [u8]) -> f32 {
    let (scale, inv) = row_quant_params(xr);
    let (head, tail) = out.split_at_mut(xr.len());
    match inv {
        None => head.fill(128),
        Some(inv) => {
            for (d, &v) in head.iter_mut().zip(xr) {
                *d = (quant(v, inv) as i32 + 128) as u8;
            }
        }
    }
    tail.fill(128);
    scale
}

/// u8 codes `q + 128` to the i8 codes `q` in place (also padding 128 to 0): flipping the top
/// bit subtracts 128 modulo 256.
#[inline(always)]
fn flip_code_offset(bytes: &mut [u8]) {
    for b in bytes {
        *b ^= 0x80;
    }
}

/// One activation row as bf16-rounded f32 bit patterns, zero padded.
#[inline(always)]
fn pack_row_f32pair(xr: &[f32], out: &mut [u32]) {
    let (head, tail) = out.split_at_mut(xr.len());
    for (d, &v) in head.iter_mut().zip(xr) {
        *d = (f32_to_bf16(v) as u32) << 16;
    }
    tail.fill(0);
}

// ---------------------------------------------------------------------------
// 64-byte aligned word buffer
// ---------------------------------------------------------------------------

/// `u32` words whose first element is 64-byte aligned: owned, or in place in a read-only
/// memory-mapped file (a converted-weights cache, see `super::converted`).
struct AlignedWords {
    store: WordStore,
    len: usize,
}

enum WordStore {
    /// The words start `off` elements into the vector.
    Owned { v: Vec<u32>, off: usize },
    /// The words start `byte_offset` bytes into the mapping (checked 64-byte aligned and in
    /// bounds when built).
    Mapped {
        map: Arc<memmap2::Mmap>,
        byte_offset: usize,
    },
}

fn align_off(ptr: *const u32) -> usize {
    // Vec<u32> is 4-byte aligned, so the byte distance is a multiple of 4.
    (ptr as usize).wrapping_neg() % 64 / 4
}

impl AlignedWords {
    fn zeroed(len: usize) -> Self {
        let v = vec![0u32; len + 16];
        let off = align_off(v.as_ptr());
        Self {
            store: WordStore::Owned { v, off },
            len,
        }
    }
    /// `len` words at `byte_offset` in `map`, which must lie inside it and be 64-byte aligned.
    fn mapped(map: Arc<memmap2::Mmap>, byte_offset: usize, len: usize) -> Result<Self, String> {
        let end = len
            .checked_mul(4)
            .and_then(|bytes| bytes.checked_add(byte_offset))
            .ok_or_else(|| "packed weight: size overflows".to_string())?;
        if end > map.len() {
            return Err(format!(
                "packed weight: bytes {byte_offset}..{end} lie outside the {}-byte file",
                map.len()
            ));
        }
        if !(map.as_ptr() as usize + byte_offset).is_multiple_of(64) {
            return Err(format!(
                "packed weight: offset {byte_offset} is not 64-byte aligned"
            ));
        }
        Ok(Self {
            store: WordStore::Mapped { map, byte_offset },
            len,
        })
    }
    fn is_mapped(&self) -> bool {
        matches!(self.store, WordStore::Mapped { .. })
    }
    fn words(&self) -> &[u32] {
        match &self.store {
            WordStore::Owned { v, off } => &v[*off..*off + self.len],
            WordStore::Mapped { map, byte_offset } => {
                // SAFETY: `mapped` checked that `len` words from `byte_offset` lie inside the
                // mapping and start 64-byte aligned (so u32-aligned); every bit pattern is a
                // valid u32; the mapping is read-only, never written through, and the Arc
                // keeps it alive as long as this borrow of `self`.
                unsafe {
                    std::slice::from_raw_parts(
                        map.as_ptr().add(*byte_offset).cast::<u32>(),
                        self.len,
                    )
                }
            }
        }
    }
    /// The owned words, to fill while packing (packing always starts from [`Self::zeroed`]).
    fn words_mut(&mut self) -> &mut [u32] {
        match &mut self.store {
            WordStore::Owned { v, off } => &mut v[*off..*off + self.len],
            WordStore::Mapped { .. } => &mut [],
        }
    }
    fn bytes(&self) -> &[u8] {
        let w = self.words();
        // SAFETY: `w` is a valid, initialised `[u32]`; u32 has no padding and
        // every byte pattern is a valid u8; u8 needs alignment 1; the byte
        // length is exactly `4 * w.len()` and the borrow keeps `self` alive.
        unsafe { std::slice::from_raw_parts(w.as_ptr().cast::<u8>(), w.len() * 4) }
    }
    /// `bytes.len()` must be a multiple of 4 (callers check the exact length).
    fn from_bytes(bytes: &[u8]) -> Self {
        let mut s = Self::zeroed(bytes.len() / 4);
        for (d, c) in s.words_mut().iter_mut().zip(bytes.chunks_exact(4)) {
            *d = u32::from_ne_bytes([c[0], c[1], c[2], c[3]]);
        }
        s
    }
}

impl Clone for AlignedWords {
    fn clone(&self) -> Self {
        match &self.store {
            WordStore::Mapped { map, byte_offset } => Self {
                store: WordStore::Mapped {
                    map: map.clone(),
                    byte_offset: *byte_offset,
                },
                len: self.len,
            },
            WordStore::Owned { .. } => {
                let mut s = Self::zeroed(self.len);
                s.words_mut().copy_from_slice(self.words());
                s
            }
        }
    }
}

impl PartialEq for AlignedWords {
    fn eq(&self, o: &Self) -> bool {
        self.words() == o.words()
    }
}

impl std::fmt::Debug for AlignedWords {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AlignedWords({} words)", self.len)
    }
}

thread_local! {
    static SCRATCH: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
    /// The hidden activations of a fused MLP ([`mlp_bf16_amx`]), beside its input's scratch.
    static HIDDEN_SCRATCH: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` on a 64-byte aligned scratch slice of `len` words (contents
/// unspecified) that is kept per thread between calls.
fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [u32]) -> R) -> R {
    with_scratch_in(&SCRATCH, len, f)
}

fn with_scratch_in<R>(
    slot: &'static std::thread::LocalKey<RefCell<Vec<u32>>>,
    len: usize,
    f: impl FnOnce(&mut [u32]) -> R,
) -> R {
    let mut v = slot.with(|s| std::mem::take(&mut *s.borrow_mut()));
    if v.len() < len + 16 {
        v = vec![0u32; len + 16];
    }
    let off = align_off(v.as_ptr());
    let r = f(&mut v[off..off + len]);
    slot.with(|s| *s.borrow_mut() = v);
    r
}

/// Frees the calling thread's scratch buffers (they are re-created on demand).
pub fn release_scratch() {
    SCRATCH.with(|s| *s.borrow_mut() = Vec::new());
    HIDDEN_SCRATCH.with(|s| *s.borrow_mut() = Vec::new());
}

fn checked_dims(a: usize, b: usize, what: &str) -> Result<usize, String> {
    a.checked_mul(b)
        .ok_or_else(|| format!("{what}: size {a} x {b} overflows"))
}

// ---------------------------------------------------------------------------
// Packed weights
// ---------------------------------------------------------------------------

/// bf16 weights packed for the microkernels.
///
/// Layout (words of two bf16): panel `p` of [`NR`] columns, then K-pair `kp`,
/// then column `j`: word = `bf16(w[2kp][n]) | bf16(w[2kp+1][n]) << 16` with
/// `n = p*NR + j`; K is padded to even and N to a multiple of `NR` with zeros.
#[derive(Clone, Debug, PartialEq)]
pub struct PackedBf16 {
    buf: AlignedWords,
    in_dim: usize,
    out_dim: usize,
}

fn bf16_words(in_dim: usize, out_dim: usize) -> Result<usize, String> {
    let panels = out_dim.div_ceil(NR);
    let per = checked_dims(in_dim.div_ceil(2), NR, "bf16 pack")?;
    checked_dims(panels, per, "bf16 pack")
}

impl PackedBf16 {
    /// Packs row-major `w[out_dim][in_dim]` (PyTorch's `nn.Linear` layout, y = x·wᵀ): each
    /// output channel is a contiguous row, read once; panels are packed in parallel.
    pub fn pack_out_in(w: &[f32], in_dim: usize, out_dim: usize) -> Result<Self, String> {
        checked_dims(in_dim, out_dim, "bf16 pack")?;
        if w.len() != in_dim * out_dim {
            return Err(format!(
                "bf16 pack: weight has {} values, expected {out_dim} x {in_dim}",
                w.len()
            ));
        }
        Self::pack_rows(&RowBlocks::whole(w, out_dim, in_dim))
    }

    /// [`Self::pack_out_in`] of a weight held in row blocks (`[out_dim, in_dim]`).
    pub(crate) fn pack_rows(w: &RowBlocks) -> Result<Self, String> {
        let (in_dim, out_dim) = (w.cols(), w.rows());
        let mut buf = AlignedWords::zeroed(bf16_words(in_dim, out_dim)?);
        let k2 = in_dim.div_ceil(2);
        if k2 > 0 {
            buf.words_mut()
                .par_chunks_mut(k2 * NR)
                .enumerate()
                .for_each(|(p, panel)| {
                    // Each output channel's row is converted whole (vectorised), then its
                    // K-pairs are laid into the panel's column for that channel.
                    let mut halves = vec![0u16; 2 * k2];
                    for j in 0..NR.min(out_dim.saturating_sub(p * NR)) {
                        bf16_row(w.row(p * NR + j), &mut halves[..in_dim]);
                        for (kp, pair) in halves.chunks_exact(2).enumerate() {
                            panel[kp * NR + j] = pair[0] as u32 | (pair[1] as u32) << 16;
                        }
                    }
                });
        }
        Ok(Self {
            buf,
            in_dim,
            out_dim,
        })
    }

    /// Packs row-major `w[in_dim][out_dim]` (y = x·w): the layout training keeps its weights
    /// in, and the layout of a batch's rows when they are the K side of a product (a weight
    /// gradient `xᵀ·g` packs `g`). Two consecutive rows give a panel's K-pairs; rows are rounded
    /// and panels packed in parallel.
    pub fn pack_in_out(w: &[f32], in_dim: usize, out_dim: usize) -> Result<Self, String> {
        checked_dims(in_dim, out_dim, "bf16 pack")?;
        if w.len() != in_dim * out_dim {
            return Err(format!(
                "bf16 pack: matrix has {} values, expected {in_dim} x {out_dim}",
                w.len()
            ));
        }
        let mut buf = AlignedWords::zeroed(bf16_words(in_dim, out_dim)?);
        let k2 = in_dim.div_ceil(2);
        if k2 == 0 || out_dim == 0 {
            return Ok(Self {
                buf,
                in_dim,
                out_dim,
            });
        }
        // Rounded first, whole rows at a time (a panel's pieces of 32 values are too short for
        // the vector conversion to pay), then interleaved into K-pairs panel by panel. An odd
        // K gets a zero row.
        let mut halves = vec![0u16; 2 * k2 * out_dim];
        halves
            .par_chunks_mut(out_dim)
            .zip(w.par_chunks(out_dim))
            .for_each(|(dst, src)| bf16_row(src, dst));
        buf.words_mut()
            .par_chunks_mut(k2 * NR)
            .enumerate()
            .for_each(|(p, panel)| {
                let n0 = p * NR;
                let width = NR.min(out_dim - n0);
                for (kp, words) in panel.chunks_exact_mut(NR).enumerate() {
                    let even = &halves[2 * kp * out_dim + n0..][..width];
                    let odd = &halves[(2 * kp + 1) * out_dim + n0..][..width];
                    for ((word, &lo), &hi) in words.iter_mut().zip(even).zip(odd) {
                        *word = lo as u32 | (hi as u32) << 16;
                    }
                }
            });
        Ok(Self {
            buf,
            in_dim,
            out_dim,
        })
    }

    /// Input features (K).
    pub fn in_dim(&self) -> usize {
        self.in_dim
    }
    /// Output features (N).
    pub fn out_dim(&self) -> usize {
        self.out_dim
    }
    /// The packed weights (native-endian; see the type docs for the layout).
    pub fn as_bytes(&self) -> &[u8] {
        self.buf.bytes()
    }
    /// Rebuilds from [`Self::as_bytes`] output (copied into an aligned buffer).
    pub fn from_bytes(bytes: &[u8], in_dim: usize, out_dim: usize) -> Result<Self, String> {
        let words = bf16_words(in_dim, out_dim)?;
        if bytes.len() != words * 4 {
            return Err(format!(
                "bf16 packed weight: {} bytes, expected {} for {in_dim} x {out_dim}",
                bytes.len(),
                words * 4
            ));
        }
        Ok(Self {
            buf: AlignedWords::from_bytes(bytes),
            in_dim,
            out_dim,
        })
    }
    /// Uses packed words in place: `in_dim × out_dim` weights at `byte_offset` in `map`, as
    /// [`Self::as_bytes`] wrote them (a converted-weights cache file).
    pub(crate) fn from_mapped(
        map: Arc<memmap2::Mmap>,
        byte_offset: usize,
        in_dim: usize,
        out_dim: usize,
    ) -> Result<Self, String> {
        Ok(Self {
            buf: AlignedWords::mapped(map, byte_offset, bf16_words(in_dim, out_dim)?)?,
            in_dim,
            out_dim,
        })
    }
    /// Whether the words are used in place in a mapped file.
    pub fn is_mapped(&self) -> bool {
        self.buf.is_mapped()
    }
    /// The bf16-rounded weight `w[k][n]` as f32 (for tests / debugging).
    pub fn get(&self, k: usize, n: usize) -> f32 {
        assert!(k < self.in_dim && n < self.out_dim);
        let k2 = self.in_dim.div_ceil(2);
        let word = self.buf.words()[(n / NR) * k2 * NR + (k / 2) * NR + n % NR];
        bf16_to_f32((word >> (16 * (k % 2))) as u16)
    }
}

/// int8 weights, symmetric per output column, packed for the microkernels.
///
/// Byte image (all native-endian 32-bit words), with `npad = ceil(N/NR)*NR`:
/// `corr: [i32; npad]` = `-128 * sum_k q[k][n]` (the u8-offset correction),
/// `scale: [f32; npad]` = `max_k |w[k][n]| / 127`, then the quantised weights:
/// panel `p`, K-quad `kq`, column `j`: word = bytes `q[4kq+t][p*NR+j]`,
/// `t = 0..4` (K padded to a multiple of 4 and N to `npad` with zeros).
/// `q = round_half_even(w / scale)` clamped to ±127. A column that contains a
/// NaN or infinity gets scale NaN and q = 0, so its outputs are NaN; an
/// all-zero column gets scale 0.
#[derive(Clone, Debug, PartialEq)]
pub struct PackedInt8 {
    buf: AlignedWords,
    in_dim: usize,
    out_dim: usize,
}

fn int8_words(in_dim: usize, out_dim: usize) -> Result<usize, String> {
    let panels = out_dim.div_ceil(NR);
    let per = checked_dims(in_dim.div_ceil(4), NR, "int8 pack")?;
    let data = checked_dims(panels, per, "int8 pack")?;
    data.checked_add(2 * panels * NR)
        .ok_or_else(|| "int8 pack: size overflows".to_string())
}

impl PackedInt8 {
    /// Quantises and packs row-major `w[out_dim][in_dim]` (PyTorch's layout): each output
    /// channel, whose scale is its own, is a contiguous row; panels are packed in parallel.
    pub fn pack_out_in(w: &[f32], in_dim: usize, out_dim: usize) -> Result<Self, String> {
        checked_dims(in_dim, out_dim, "int8 pack")?;
        if w.len() != in_dim * out_dim {
            return Err(format!(
                "int8 pack: weight has {} values, expected {out_dim} x {in_dim}",
                w.len()
            ));
        }
        Self::pack_rows(&RowBlocks::whole(w, out_dim, in_dim))
    }

    /// [`Self::pack_out_in`] of a weight held in row blocks (`[out_dim, in_dim]`).
    pub(crate) fn pack_rows(w: &RowBlocks) -> Result<Self, String> {
        let (in_dim, out_dim) = (w.cols(), w.rows());
        if in_dim > MAX_INT8_IN_DIM {
            return Err(format!(
                "int8 pack: in_dim {in_dim} > {MAX_INT8_IN_DIM} could overflow i32"
            ));
        }
        let mut buf = AlignedWords::zeroed(int8_words(in_dim, out_dim)?);
        let npad = out_dim.div_ceil(NR) * NR;
        let k4 = in_dim.div_ceil(4);
        let words = buf.words_mut();
        let (head, data) = words.split_at_mut(2 * npad);
        let (corrections, scales) = head.split_at_mut(npad);
        // One task per panel of NR output channels: its corrections, scales and packed quads.
        let panels = corrections
            .par_chunks_mut(NR)
            .zip(scales.par_chunks_mut(NR))
            .zip(data.par_chunks_mut((k4 * NR).max(1)))
            .enumerate();
        panels.for_each(|(p, ((corr, scale), panel))| {
            let mut col = vec![0i8; k4 * 4];
            for j in 0..NR.min(out_dim.saturating_sub(p * NR)) {
                let row = w.row(p * NR + j);
                // The same rule as the activations': scale max|w| / 127 (NaN for a row with a
                // non-finite value, whose codes are then 0), codes rounded half to even.
                let (s, inv) = row_quant_params(row);
                let mut sum = 0i32;
                for (q, &v) in col.iter_mut().zip(row) {
                    *q = inv.map_or(0, |inv| quant(v, inv) as i8);
                    sum += *q as i32;
                }
                corr[j] = (-128 * sum) as u32;
                scale[j] = s.to_bits();
                for (kq, quad) in col.chunks_exact(4).enumerate() {
                    panel[kq * NR + j] = u32::from_le_bytes([
                        quad[0] as u8,
                        quad[1] as u8,
                        quad[2] as u8,
                        quad[3] as u8,
                    ]);
                }
            }
        });
        Ok(Self {
            buf,
            in_dim,
            out_dim,
        })
    }

    /// Input features (K).
    pub fn in_dim(&self) -> usize {
        self.in_dim
    }
    /// Output features (N).
    pub fn out_dim(&self) -> usize {
        self.out_dim
    }
    /// Scales, corrections and quantised weights (see the type docs).
    pub fn as_bytes(&self) -> &[u8] {
        self.buf.bytes()
    }
    /// Rebuilds from [`Self::as_bytes`] output (copied into an aligned buffer).
    pub fn from_bytes(bytes: &[u8], in_dim: usize, out_dim: usize) -> Result<Self, String> {
        if in_dim > MAX_INT8_IN_DIM {
            return Err(format!("int8 packed weight: in_dim {in_dim} too large"));
        }
        let words = int8_words(in_dim, out_dim)?;
        if bytes.len() != words * 4 {
            return Err(format!(
                "int8 packed weight: {} bytes, expected {} for {in_dim} x {out_dim}",
                bytes.len(),
                words * 4
            ));
        }
        Ok(Self {
            buf: AlignedWords::from_bytes(bytes),
            in_dim,
            out_dim,
        })
    }
    /// Uses packed words in place: `in_dim × out_dim` weights at `byte_offset` in `map`, as
    /// [`Self::as_bytes`] wrote them (a converted-weights cache file).
    pub(crate) fn from_mapped(
        map: Arc<memmap2::Mmap>,
        byte_offset: usize,
        in_dim: usize,
        out_dim: usize,
    ) -> Result<Self, String> {
        if in_dim > MAX_INT8_IN_DIM {
            return Err(format!("int8 packed weight: in_dim {in_dim} too large"));
        }
        Ok(Self {
            buf: AlignedWords::mapped(map, byte_offset, int8_words(in_dim, out_dim)?)?,
            in_dim,
            out_dim,
        })
    }
    /// Whether the words are used in place in a mapped file.
    pub fn is_mapped(&self) -> bool {
        self.buf.is_mapped()
    }
    fn npad(&self) -> usize {
        self.out_dim.div_ceil(NR) * NR
    }
    /// Per-column scale of column `n`.
    pub fn scale(&self, n: usize) -> f32 {
        assert!(n < self.out_dim);
        f32::from_bits(self.buf.words()[self.npad() + n])
    }
    /// Quantised weight `q[k][n]`.
    pub fn q(&self, k: usize, n: usize) -> i8 {
        assert!(k < self.in_dim && n < self.out_dim);
        let k4 = self.in_dim.div_ceil(4);
        let word = self.buf.words()[2 * self.npad() + (n / NR) * k4 * NR + (k / 4) * NR + n % NR];
        (word >> (8 * (k % 4))) as u8 as i8
    }
    fn corr(&self) -> &[i32] {
        let w = &self.buf.words()[..self.npad()];
        // SAFETY: i32 and u32 have identical size and alignment and every bit
        // pattern is valid for both; the length is unchanged.
        unsafe { std::slice::from_raw_parts(w.as_ptr().cast::<i32>(), w.len()) }
    }
    fn scales(&self) -> &[f32] {
        let np = self.npad();
        let w = &self.buf.words()[np..2 * np];
        // SAFETY: f32 and u32 have identical size and alignment and every bit
        // pattern is a valid f32; the length is unchanged.
        unsafe { std::slice::from_raw_parts(w.as_ptr().cast::<f32>(), w.len()) }
    }
    fn data(&self) -> &[u32] {
        &self.buf.words()[2 * self.npad()..]
    }
}

// ---------------------------------------------------------------------------
// Activation packing
// ---------------------------------------------------------------------------

/// Number of parallel tasks to use.
pub(crate) fn effective_threads(threads: usize) -> usize {
    let pool = rayon::current_num_threads().max(1);
    if threads == 0 {
        pool
    } else {
        threads.min(pool)
    }
}

/// Runs `f(row_index, row, tmp)` for each `lda`-word row of `buf` on up to
/// `threads` tasks (contiguous row ranges); `tmp` is a per-task f32 buffer
/// of `tmp_len` values.
fn for_rows(
    buf: &mut [u32],
    lda: usize,
    threads: usize,
    tmp_len: usize,
    f: impl Fn(usize, &mut [u32], &mut [f32]) + Sync,
) {
    if lda == 0 {
        return;
    }
    let rows = buf.len() / lda;
    if threads <= 1 || rows <= 1 {
        let mut tmp = vec![0f32; tmp_len];
        for (i, r) in buf.chunks_exact_mut(lda).enumerate() {
            f(i, r, &mut tmp);
        }
        return;
    }
    let per = rows.div_ceil(threads);
    on_chunks(buf.chunks_mut(per * lda).collect(), threads, |c, chunk| {
        let mut tmp = vec![0f32; tmp_len];
        for (i, r) in chunk.chunks_exact_mut(lda).enumerate() {
            f(c * per + i, r, &mut tmp);
        }
    });
}

/// Row `r` of `x` (`in_dim` wide), passed through `act` into `tmp` when
/// there is one: the activated rows only ever exist one at a time, in cache.
#[inline(always)]
fn input_row<'a>(
    x: &'a [f32],
    r: usize,
    in_dim: usize,
    act: Option<Activation>,
    tmp: &'a mut [f32],
) -> &'a [f32] {
    let src = &x[r * in_dim..(r + 1) * in_dim];
    match act {
        None => src,
        Some(act) => {
            let tmp = &mut tmp[..in_dim];
            act_row(src, tmp, act);
            tmp
        }
    }
}

/// bf16 pairs as their halves, in memory order (the first value of a pair is its low half).
fn words_as_halves_mut(w: &mut [u32]) -> &mut [u16] {
    // SAFETY: u16 has no invalid values and an alignment that divides u32's, and the slice
    // covers exactly the same bytes.
    unsafe { std::slice::from_raw_parts_mut(w.as_mut_ptr().cast::<u16>(), w.len() * 2) }
}

fn words_as_bytes_mut(w: &mut [u32]) -> &mut [u8] {
    // SAFETY: the byte slice covers exactly the memory of `w` (4 bytes per
    // word), u8 has alignment 1 and no invalid bit patterns, and it borrows
    // `w` mutably for its whole lifetime, so there is no aliasing.
    unsafe { std::slice::from_raw_parts_mut(w.as_mut_ptr().cast::<u8>(), w.len() * 4) }
}

/// Activation layouts: row-major, `lda` words per row.
#[derive(Clone, Copy, PartialEq, Eq)]
enum AFormat {
    /// One f32 (bf16-rounded, as bits) per k; K padded to even with zeros.
    F32Pair,
    /// One bf16 per k in memory order (two per word); x86 only.
    Bf16,
}

/// Converts `act(x)` rows into `out` (rows × lda words) in the given layout.
fn pack_a_bf16(
    x: &[f32],
    in_dim: usize,
    act: Option<Activation>,
    lda: usize,
    fmt: AFormat,
    out: &mut [u32],
    threads: usize,
) {
    #[cfg(target_arch = "x86_64")]
    let (avx512, avx2) = (has_avx512(), has_avx2_fma());
    let tmp_len = if act.is_some() { in_dim } else { 0 };
    for_rows(out, lda, threads, tmp_len, |r, row, tmp| {
        let xr = input_row(x, r, in_dim, act, tmp);
        match fmt {
            #[cfg(target_arch = "x86_64")]
            AFormat::Bf16 => {
                // SAFETY: this layout is only chosen for the Avx512Bf16
                // kernel, after its CPU features were detected.
                unsafe { x86::pack_row_bf16(xr, row) }
            }
            #[cfg(target_arch = "x86_64")]
            AFormat::F32Pair if avx512 => {
                // SAFETY: avx512f was detected just above.
                unsafe { x86::pack_row_f32pair_avx512(xr, row) }
            }
            #[cfg(target_arch = "x86_64")]
            AFormat::F32Pair if avx2 => {
                // SAFETY: avx2 and fma were detected just above.
                unsafe { x86::pack_row_f32pair_avx2(xr, row) }
            }
            _ => pack_row_f32pair(xr, row),
        }
    });
}

/// Quantises `act(x)` rows into `lda` words each, scales into `sx`: u8 codes (`q + 128`, what
/// `vpdpbusd` multiplies), or with `signed` the codes `q` themselves as i8 (the AVX2 kernel's).
#[allow(clippy::too_many_arguments)]
fn pack_a_int8(
    x: &[f32],
    in_dim: usize,
    act: Option<Activation>,
    lda: usize,
    signed: bool,
    out: &mut [u32],
    sx: &mut [f32],
    threads: usize,
) {
    #[cfg(target_arch = "x86_64")]
    let avx512 = std::arch::is_x86_feature_detected!("avx512bw") && has_avx512();
    #[cfg(target_arch = "x86_64")]
    let avx2 = has_avx2_fma();
    let rows = sx.len();
    let per = rows.div_ceil(threads.max(1)).max(1);
    let tmp_len = if act.is_some() { in_dim } else { 0 };
    let work = |r0: usize, chunk: &mut [u32], sxc: &mut [f32]| {
        let mut tmp = vec![0f32; tmp_len];
        for (i, (row, s)) in chunk.chunks_exact_mut(lda).zip(sxc.iter_mut()).enumerate() {
            let xr = input_row(x, r0 + i, in_dim, act, &mut tmp);
            let bytes = words_as_bytes_mut(row);
            #[cfg(target_arch = "x86_64")]
            if avx512 {
                // SAFETY: avx512f and avx512bw were detected above.
                *s = unsafe { x86::pack_row_u8_avx512(xr, bytes) };
            } else if avx2 {
                // SAFETY: avx2 and fma were detected above.
                *s = unsafe { x86::pack_row_u8_avx2(xr, bytes) };
            } else {
                *s = pack_row_u8(xr, bytes);
            }
            #[cfg(not(target_arch = "x86_64"))]
            {
                *s = pack_row_u8(xr, bytes);
            }
            if signed {
                flip_code_offset(bytes);
            }
        }
    };
    if lda == 0 {
        sx.fill(0.0);
        return;
    }
    if threads <= 1 || rows <= 1 {
        work(0, out, sx);
        return;
    }
    let chunks = out.chunks_mut(per * lda).zip(sx.chunks_mut(per)).collect();
    on_chunks(chunks, threads, |c, (chunk, sxc)| work(c * per, chunk, sxc));
}

// ---------------------------------------------------------------------------
// Tile driver
// ---------------------------------------------------------------------------

/// One microkernel invocation: `m` rows (≤ the kernel's MR) × `ncols` columns.
struct Tile {
    /// K-steps to run.
    k: usize,
    /// Packed A (row-major, `lda` words per row) at the tile's first row
    /// and K offset; each K-step uses 1 word (2 for the f32-pair layout).
    a: *const u32,
    lda: usize,
    /// Packed B panel at this K offset; `NR` words per K-step.
    b: *const u32,
    /// Output tile (row stride `ldc`), `m` rows × `ncols` valid columns.
    c: *mut f32,
    ldc: usize,
    ncols: usize,
    /// First K block: initialise (bias / correction) instead of loading `c`.
    init: bool,
    /// Last K block: apply the epilogue (int8 scaling, residual) before storing.
    fin: bool,
    /// `ncols` bias values or null.
    bias: *const f32,
    /// int8: `NR` corrections and `NR` column scales; `m` row scales.
    corr: *const i32,
    wscale: *const f32,
    xscale: *const f32,
    /// Added to the result in the last K block (row stride `ldc`, like `c`), or null.
    resid: *const f32,
    /// Instead of `c` (then null): the output as bf16, `act` applied first, row stride `ldc`
    /// values. Only the AMX bf16 kernel writes this form ([`mlp_bf16_amx`]).
    c_bf16: *mut u16,
    act: Option<Activation>,
}

/// Runs one tile; `m` is the number of valid rows.
type KernFn = unsafe fn(&Tile, usize);

struct SendPtr<T>(*mut T);
impl<T> Clone for SendPtr<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for SendPtr<T> {}
// SAFETY: the pointer is only used to write disjoint tiles of the output
// slice, which outlives the parallel region (see `run_tiles`).
unsafe impl<T> Send for SendPtr<T> {}
// SAFETY: as above; concurrent tasks never touch the same element.
unsafe impl<T> Sync for SendPtr<T> {}

impl<T> SendPtr<T> {
    /// Method access makes closures capture the whole (Sync) wrapper.
    fn get(self) -> *mut T {
        self.0
    }
}

/// Where [`run_tiles`] writes the product: f32, or (AMX bf16 only) `act` of it as bf16.
enum Out<'a> {
    F32(&'a mut [MaybeUninit<f32>]),
    ActivatedBf16(&'a mut [u16], Activation),
}

struct Gemm<'a> {
    rows: usize,
    out: usize,
    ksteps: usize,
    mr: usize,
    lda: usize,
    astep: usize,
    a: &'a [u32],
    b: &'a [u32],
    bias: Option<&'a [f32]>,
    corr: Option<&'a [i32]>,
    wscale: Option<&'a [f32]>,
    xscale: Option<&'a [f32]>,
    residual: Option<&'a [f32]>,
    kern: KernFn,
    /// An AMX kernel: each task configures its thread's tiles, and the whole K runs in one
    /// call (the accumulators live in tiles, not in `dst`).
    amx: bool,
    /// A kernel that reads its weights staged: each K block of each panel is converted once
    /// by this function into a per-task scratch, which every row block then reads.
    stage: Option<StageFn>,
}

/// Converts `ksteps` K-steps of a packed panel (`NR` words each) into `ksteps *
/// STAGED_FLOATS_PER_STEP` floats of staged weights.
type StageFn = unsafe fn(*const u32, usize, *mut f32);

/// Floats of staged weights per K-step (two k values × the panel's `NR` columns).
const STAGED_FLOATS_PER_STEP: usize = 2 * NR;

/// K-steps per block of a staged kernel: one panel's staged block (64 steps × 32 columns × 2
/// k values × 4 bytes = 16 KiB) stays in a 32 KiB L1 cache next to the rows that read it.
const STAGED_KC: usize = 64;

/// Writes every element of the output's first `rows * out` (the first K block stores
/// whole tiles without reading them), so it may start uninitialised.
fn run_tiles(g: &Gemm, out: Out, threads: usize) {
    let kc = if g.amx {
        g.ksteps.max(1)
    } else if g.stage.is_some() {
        STAGED_KC
    } else {
        KC
    };
    let panels = g.out.div_ceil(NR);
    let mblocks = g.rows.div_ceil(g.mr);
    let mcb = if g.stage.is_some() {
        // At least MC_BLOCKS row blocks per tile, so that every staged block is read by that
        // many (50 rows in 6-row blocks make one tile of 9, not tiles of 8 and 1).
        mblocks.div_ceil((mblocks / MC_BLOCKS).max(1))
    } else {
        MC_BLOCKS
    };
    let ncp = NC_PANELS;
    // Everything the kernels touch is inside these slices (checked here so
    // the raw-pointer arithmetic below stays in bounds).
    let (dptr, hptr, act) = match out {
        Out::F32(dst) => {
            assert!(dst.len() >= g.rows * g.out);
            (dst.as_mut_ptr().cast::<f32>(), std::ptr::null_mut(), None)
        }
        Out::ActivatedBf16(dst, act) => {
            assert!(g.amx && g.residual.is_none() && dst.len() >= g.rows * g.out);
            (std::ptr::null_mut(), dst.as_mut_ptr(), Some(act))
        }
    };
    let (dptr, hptr) = (SendPtr(dptr), SendPtr(hptr));
    assert!(g.a.len() >= g.rows * g.lda && g.lda >= g.ksteps * g.astep);
    assert!(g.b.len() >= panels * g.ksteps * NR);
    assert!(g.bias.is_none_or(|b| b.len() >= g.out));
    assert!(g.corr.is_none_or(|b| b.len() >= panels * NR));
    assert!(g.wscale.is_none_or(|b| b.len() >= panels * NR));
    assert!(g.xscale.is_none_or(|b| b.len() >= g.rows));
    assert!(g.residual.is_none_or(|r| r.len() >= g.rows * g.out));
    if g.rows == 0 || g.out == 0 {
        return;
    }
    let tm = mblocks.div_ceil(mcb);
    let tn = panels.div_ceil(ncp);
    let items = tm * tn;
    let staged_len = if g.stage.is_some() {
        kc.min(g.ksteps) * STAGED_FLOATS_PER_STEP
    } else {
        0
    };
    let do_item = |i: usize, staged: &mut [f32]| {
        let (ti, tj) = (i % tm, i / tm);
        let mb_range = ti * mcb..((ti + 1) * mcb).min(mblocks);
        let p_range = tj * ncp..((tj + 1) * ncp).min(panels);
        let mut kc0 = 0;
        loop {
            let kl = kc.min(g.ksteps - kc0);
            let init = kc0 == 0;
            let fin = kc0 + kl >= g.ksteps;
            let run_tile = |p: usize, b: *const u32, mb: usize| {
                let c0 = p * NR;
                let r0 = mb * g.mr;
                let m = g.mr.min(g.rows - r0);
                // SAFETY (pointer arithmetic): all offsets are within the
                // slices asserted above: A rows `r0..r0+m` hold
                // `ksteps*astep` words each, B panel `p` spans `ksteps*NR`,
                // row `r0 + m - 1 < rows`, column `c0 + ncols <= out`, and
                // the per-column arrays hold `panels*NR` values.
                let t = unsafe {
                    Tile {
                        k: kl,
                        a: g.a.as_ptr().add(r0 * g.lda + kc0 * g.astep),
                        lda: g.lda,
                        b,
                        c: if dptr.get().is_null() {
                            dptr.get()
                        } else {
                            dptr.get().add(r0 * g.out + c0)
                        },
                        c_bf16: if hptr.get().is_null() {
                            hptr.get()
                        } else {
                            hptr.get().add(r0 * g.out + c0)
                        },
                        act,
                        ldc: g.out,
                        ncols: NR.min(g.out - c0),
                        init,
                        fin,
                        bias: g.bias.map_or(std::ptr::null(), |b| b.as_ptr().add(c0)),
                        corr: g.corr.map_or(std::ptr::null(), |b| b.as_ptr().add(c0)),
                        wscale: g.wscale.map_or(std::ptr::null(), |b| b.as_ptr().add(c0)),
                        xscale: g.xscale.map_or(std::ptr::null(), |b| b.as_ptr().add(r0)),
                        resid: g
                            .residual
                            .map_or(std::ptr::null(), |r| r.as_ptr().add(r0 * g.out + c0)),
                    }
                };
                // SAFETY: the tile satisfies the kernel contract (pointers
                // valid for the extents documented on `Tile`, `m <= mr`),
                // and the kernel was chosen only after its CPU features
                // were detected. Tiles of different items are disjoint
                // rectangles of `dst`, so no two tasks write the same
                // element.
                unsafe { (g.kern)(&t, m) };
            };
            // SAFETY: panel `p` spans `ksteps * NR` words from `(p * ksteps) * NR`, so the
            // block's `kl` steps from `kc0` are inside `g.b` (asserted above).
            let panel = |p: usize| unsafe { g.b.as_ptr().add((p * g.ksteps + kc0) * NR) };
            if g.amx {
                // Row blocks outside: each row block's activations are read from L1 for all
                // of the item's panels (3-20 % faster than panels outside on ViT-B/32's
                // shapes, two threads; items that take row blocks outside lost 5-10 %).
                for mb in mb_range.clone() {
                    for p in p_range.clone() {
                        run_tile(p, panel(p), mb);
                    }
                }
            } else {
                for p in p_range.clone() {
                    let mut b = panel(p);
                    if let Some(stage) = g.stage {
                        // SAFETY: `b` holds `kl * NR` words (above) and `staged` has room for
                        // `kl <= kc` steps; the stage function was chosen with its kernel, after
                        // the CPU features both need were detected.
                        unsafe { stage(b, kl, staged.as_mut_ptr()) };
                        b = staged.as_ptr().cast::<u32>();
                    }
                    for mb in mb_range.clone() {
                        run_tile(p, b, mb);
                    }
                }
            }
            kc0 += kl;
            if fin {
                break;
            }
        }
    };
    #[cfg(target_arch = "x86_64")]
    let tile_session = || {
        // SAFETY: `amx` is set only for the AMX kernels, chosen after `amx::support()`
        // reported them; the tasks below never nest (they call no rayon work while the
        // session lives).
        g.amx.then(|| unsafe { amx::TileSession::start() })
    };
    #[cfg(not(target_arch = "x86_64"))]
    let tile_session = || ();
    on_workers(
        items,
        threads,
        || (tile_session(), vec![0f32; staged_len]),
        |i, (_tiles, staged)| do_item(i, staged),
    );
}

/// Runs `work(item, state)` for items `0..items` on up to `workers` threads, each taking the
/// next item from a shared counter, with its own `state` made by `init` on the thread that
/// uses it (an AMX tile session belongs to its thread). `work` must call no rayon work: a
/// thread waiting in it could take up another worker and its state.
pub(crate) fn on_workers<S>(
    items: usize,
    workers: usize,
    init: impl Fn() -> S + Sync,
    work: impl Fn(usize, &mut S) + Sync,
) {
    let next = AtomicUsize::new(0);
    let worker = || {
        let mut state = init();
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            if i >= items {
                break;
            }
            work(i, &mut state);
        }
    };
    let workers = workers.min(items);
    if workers <= 1 {
        worker();
        return;
    }
    if team::run_on_team(workers, &|_| worker()).is_some() {
        return;
    }
    rayon::scope(|s| {
        for _ in 1..workers {
            s.spawn(|_| worker());
        }
        worker();
    });
}

/// Runs `work(index, chunk)` once for each of `chunks` on up to `workers` threads
/// ([`on_workers`]).
fn on_chunks<T: Send>(chunks: Vec<T>, workers: usize, work: impl Fn(usize, T) + Sync) {
    let slots: Vec<Mutex<Option<T>>> = chunks.into_iter().map(|c| Mutex::new(Some(c))).collect();
    on_workers(
        slots.len(),
        workers,
        || (),
        |i, ()| {
            let chunk = slots[i].lock().unwrap_or_else(|e| e.into_inner()).take();
            if let Some(chunk) = chunk {
                work(i, chunk);
            }
        },
    );
}

// ---------------------------------------------------------------------------
// Portable kernels
// ---------------------------------------------------------------------------

const PORTABLE_MR: usize = 4;

/// # Safety
/// `t` must satisfy the `Tile` contract with `m <= PORTABLE_MR` and the
/// f32-pair A layout.
unsafe fn kern_bf16_portable(t: &Tile, m: usize) {
    let nc = t.ncols;
    // SAFETY: per the Tile contract A rows `< m` hold `2 * k` words from `a`
    // (row stride `lda`), B holds `k * NR` words, and bias (when non-null)
    // holds `ncols` values.
    let (a, b, bias) = unsafe {
        (
            std::slice::from_raw_parts(t.a, (m - 1) * t.lda + 2 * t.k),
            std::slice::from_raw_parts(t.b, t.k * NR),
            (!t.bias.is_null()).then(|| std::slice::from_raw_parts(t.bias, nc)),
        )
    };
    let mut acc = [[0f32; NR]; PORTABLE_MR];
    for (i, row) in acc.iter_mut().enumerate().take(m) {
        if t.init {
            if let Some(bias) = bias {
                row[..nc].copy_from_slice(bias);
            }
        } else {
            // SAFETY: rows `< m` of the tile hold `ncols` valid elements.
            let c = unsafe { std::slice::from_raw_parts(t.c.add(i * t.ldc), nc) };
            row[..nc].copy_from_slice(c);
        }
    }
    for (kk, bk) in b.chunks_exact(NR).enumerate() {
        for (i, row) in acc.iter_mut().enumerate().take(m) {
            let ae = f32::from_bits(a[i * t.lda + 2 * kk]);
            let ao = f32::from_bits(a[i * t.lda + 2 * kk + 1]);
            for (r, &w) in row.iter_mut().zip(bk) {
                *r += ae * f32::from_bits(w << 16) + ao * f32::from_bits(w & 0xFFFF_0000);
            }
        }
    }
    for (i, row) in acc.iter().enumerate().take(m) {
        // SAFETY: rows `< m` of the tile hold `ncols` valid elements, and no
        // other task writes this tile.
        let c = unsafe { std::slice::from_raw_parts_mut(t.c.add(i * t.ldc), nc) };
        c.copy_from_slice(&row[..nc]);
        if t.fin && !t.resid.is_null() {
            // SAFETY: the residual has the tile's shape and row stride.
            let r = unsafe { std::slice::from_raw_parts(t.resid.add(i * t.ldc), nc) };
            for (d, r) in c.iter_mut().zip(r) {
                *d += r;
            }
        }
    }
}

/// # Safety
/// `t` must satisfy the `Tile` contract with `m <= PORTABLE_MR`, the u8 A
/// layout (one word per K-step), and non-null `corr`/`wscale`/`xscale`.
unsafe fn kern_int8_portable(t: &Tile, m: usize) {
    let nc = t.ncols;
    // SAFETY: per the Tile contract (see `run_tiles`).
    let (a, b, corr, ws, xs, bias) = unsafe {
        (
            std::slice::from_raw_parts(t.a, (m - 1) * t.lda + t.k),
            std::slice::from_raw_parts(t.b, t.k * NR),
            std::slice::from_raw_parts(t.corr, NR),
            std::slice::from_raw_parts(t.wscale, NR),
            std::slice::from_raw_parts(t.xscale, m),
            (!t.bias.is_null()).then(|| std::slice::from_raw_parts(t.bias, nc)),
        )
    };
    let mut acc = [[0i32; NR]; PORTABLE_MR];
    for (i, row) in acc.iter_mut().enumerate().take(m) {
        if t.init {
            row.copy_from_slice(corr);
        } else {
            // SAFETY: rows `< m` hold `ncols` elements; between K blocks they
            // hold i32 bit patterns written below (same size as f32).
            let c = unsafe { std::slice::from_raw_parts(t.c.add(i * t.ldc).cast::<i32>(), nc) };
            row[..nc].copy_from_slice(c);
        }
    }
    for (kk, bk) in b.chunks_exact(NR).enumerate() {
        for (i, row) in acc.iter_mut().enumerate().take(m) {
            // A bytes are in memory order (k, k+1, k+2, k+3).
            let au = a[i * t.lda + kk].to_ne_bytes();
            for (r, &w) in row.iter_mut().zip(bk) {
                let wb = w.to_le_bytes();
                let mut s = 0i32;
                for q in 0..4 {
                    s += au[q] as i32 * wb[q] as i8 as i32;
                }
                *r = r.wrapping_add(s);
            }
        }
    }
    for (i, row) in acc.iter().enumerate().take(m) {
        if t.fin {
            // SAFETY: as above; this task owns the tile.
            let c = unsafe { std::slice::from_raw_parts_mut(t.c.add(i * t.ldc), nc) };
            for (j, d) in c.iter_mut().enumerate() {
                let v = row[j] as f32 * (xs[i] * ws[j]);
                *d = v + bias.map_or(0.0, |b| b[j]);
            }
            if !t.resid.is_null() {
                // SAFETY: the residual has the tile's shape and row stride.
                let r = unsafe { std::slice::from_raw_parts(t.resid.add(i * t.ldc), nc) };
                for (d, r) in c.iter_mut().zip(r) {
                    *d += r;
                }
            }
        } else {
            // SAFETY: as above; i32 has the size and alignment of f32.
            let c = unsafe { std::slice::from_raw_parts_mut(t.c.add(i * t.ldc).cast::<i32>(), nc) };
            c.copy_from_slice(&row[..nc]);
        }
    }
}

// ---------------------------------------------------------------------------
// AVX-512 kernels
// ---------------------------------------------------------------------------

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{Tile, NR};
    use std::arch::x86_64::*;

    pub const BF16_MR: usize = 12;
    pub const AVX512_MR: usize = 8;
    pub const VNNI_MR: usize = 12;
    pub const AVX2_BF16_MR: usize = 6;
    pub const AVX2_INT8_MR: usize = 4;

    /// Lane masks for the two 16-column halves of a tile with `ncols` columns.
    #[inline(always)]
    pub(super) fn masks(ncols: usize) -> (__mmask16, __mmask16) {
        let full = if ncols >= NR {
            u32::MAX
        } else {
            (1u32 << ncols) - 1
        };
        (full as u16, (full >> 16) as u16)
    }

    /// The tile's bias in the two 16-column halves (`ncols` lanes kept by the masks), zeros
    /// when it has none.
    ///
    /// # Safety
    /// Tile contract: a non-null `t.bias` holds `t.ncols` values; the CPU supports avx512f.
    #[inline(always)]
    pub(super) unsafe fn bias_halves(t: &Tile, k0: __mmask16, k1: __mmask16) -> (__m512, __m512) {
        if t.bias.is_null() {
            return (_mm512_setzero_ps(), _mm512_setzero_ps());
        }
        // SAFETY: the masks keep the `ncols` lanes that the bias holds.
        unsafe {
            (
                _mm512_maskz_loadu_ps(k0, t.bias),
                _mm512_maskz_loadu_ps(k1, t.bias.add(16)),
            )
        }
    }

    /// Stores f32 accumulators into the tile, adding the residual in the
    /// last K block when there is one.
    ///
    /// # Safety
    /// Tile contract with `M` valid rows.
    #[inline(always)]
    unsafe fn store_f32<const M: usize>(
        t: &Tile,
        acc: &[[__m512; 2]; M],
        k0: __mmask16,
        k1: __mmask16,
    ) {
        let resid = t.fin && !t.resid.is_null();
        for (i, r) in acc.iter().enumerate() {
            // SAFETY: rows `< M` of `c` (and of the residual, which has the
            // tile's shape and stride) hold the `ncols` lanes the masks keep.
            unsafe {
                let c = t.c.add(i * t.ldc);
                let (mut v0, mut v1) = (r[0], r[1]);
                if resid {
                    let p = t.resid.add(i * t.ldc);
                    v0 = _mm512_add_ps(v0, _mm512_maskz_loadu_ps(k0, p));
                    v1 = _mm512_add_ps(v1, _mm512_maskz_loadu_ps(k1, p.add(16)));
                }
                _mm512_mask_storeu_ps(c, k0, v0);
                _mm512_mask_storeu_ps(c.add(16), k1, v1);
            }
        }
    }

    macro_rules! dispatch_m {
        ($name:ident, $inner:ident, $feat:literal, $($m:literal)*) => {
            /// # Safety
            /// `t` must satisfy the `Tile` contract and the CPU must support
            #[doc = $feat]
            pub unsafe fn $name(t: &Tile, m: usize) {
                // SAFETY: forwarded contract; `m` selects the instantiation.
                unsafe {
                    match m {
                        $($m => $inner::<$m>(t),)*
                        _ => {}
                    }
                }
            }
        };
    }

    /// # Safety
    /// Tile contract with `M` valid rows, one bf16-pair word per A entry; CPU
    /// supports avx512f + avx512bf16.
    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn bf16dp<const M: usize>(t: &Tile) {
        let (k0, k1) = masks(t.ncols);
        let mut acc = [[_mm512_setzero_ps(); 2]; M];
        // SAFETY (whole body): pointers are valid for the extents in the Tile
        // contract; masked loads/stores never touch lanes beyond `ncols`.
        unsafe {
            if t.init {
                if !t.bias.is_null() {
                    let b0 = _mm512_maskz_loadu_ps(k0, t.bias);
                    let b1 = _mm512_maskz_loadu_ps(k1, t.bias.add(16));
                    for r in acc.iter_mut() {
                        *r = [b0, b1];
                    }
                }
            } else {
                for (i, r) in acc.iter_mut().enumerate() {
                    let c = t.c.add(i * t.ldc);
                    *r = [
                        _mm512_maskz_loadu_ps(k0, c),
                        _mm512_maskz_loadu_ps(k1, c.add(16)),
                    ];
                }
            }
            let mut a = t.a;
            let mut b = t.b;
            for _ in 0..t.k {
                let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.cast()));
                let b1: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.add(16).cast()));
                for (i, r) in acc.iter_mut().enumerate() {
                    let av: __m512bh =
                        std::mem::transmute(_mm512_set1_epi32(*a.add(i * t.lda) as i32));
                    r[0] = _mm512_dpbf16_ps(r[0], av, b0);
                    r[1] = _mm512_dpbf16_ps(r[1], av, b1);
                }
                a = a.add(1);
                b = b.add(NR);
            }
            store_f32(t, &acc, k0, k1);
        }
    }
    dispatch_m!(kern_bf16dp, bf16dp, "avx512f and avx512bf16.", 1 2 3 4 5 6 7 8 9 10 11 12);

    /// # Safety
    /// Tile contract with `M` valid rows, f32-pair A entries; CPU supports
    /// avx512f.
    #[target_feature(enable = "avx512f")]
    unsafe fn bf16fma<const M: usize>(t: &Tile) {
        let (k0, k1) = masks(t.ncols);
        let mut acc = [[_mm512_setzero_ps(); 2]; M];
        // SAFETY (whole body): as in `bf16dp`.
        unsafe {
            if t.init {
                if !t.bias.is_null() {
                    let b0 = _mm512_maskz_loadu_ps(k0, t.bias);
                    let b1 = _mm512_maskz_loadu_ps(k1, t.bias.add(16));
                    for r in acc.iter_mut() {
                        *r = [b0, b1];
                    }
                }
            } else {
                for (i, r) in acc.iter_mut().enumerate() {
                    let c = t.c.add(i * t.ldc);
                    *r = [
                        _mm512_maskz_loadu_ps(k0, c),
                        _mm512_maskz_loadu_ps(k1, c.add(16)),
                    ];
                }
            }
            let hi = _mm512_set1_epi32(0xFFFF_0000u32 as i32);
            let mut a = t.a.cast::<f32>();
            let mut b = t.b;
            for _ in 0..t.k {
                let w0 = _mm512_loadu_si512(b.cast());
                let w1 = _mm512_loadu_si512(b.add(16).cast());
                let e0 = _mm512_castsi512_ps(_mm512_slli_epi32::<16>(w0));
                let o0 = _mm512_castsi512_ps(_mm512_and_si512(w0, hi));
                let e1 = _mm512_castsi512_ps(_mm512_slli_epi32::<16>(w1));
                let o1 = _mm512_castsi512_ps(_mm512_and_si512(w1, hi));
                for (i, r) in acc.iter_mut().enumerate() {
                    let ae = _mm512_set1_ps(*a.add(i * t.lda));
                    let ao = _mm512_set1_ps(*a.add(i * t.lda + 1));
                    r[0] = _mm512_fmadd_ps(ae, e0, r[0]);
                    r[1] = _mm512_fmadd_ps(ae, e1, r[1]);
                    r[0] = _mm512_fmadd_ps(ao, o0, r[0]);
                    r[1] = _mm512_fmadd_ps(ao, o1, r[1]);
                }
                a = a.add(2);
                b = b.add(NR);
            }
            store_f32(t, &acc, k0, k1);
        }
    }
    dispatch_m!(kern_bf16fma, bf16fma, "avx512f.", 1 2 3 4 5 6 7 8);

    /// # Safety
    /// Tile contract with `M` valid rows, one u8-quad word per A entry,
    /// non-null corr/wscale/xscale; CPU supports avx512f + avx512vnni.
    #[target_feature(enable = "avx512f,avx512vnni")]
    unsafe fn vnni<const M: usize>(t: &Tile) {
        let (k0, k1) = masks(t.ncols);
        let mut acc = [[_mm512_setzero_si512(); 2]; M];
        // SAFETY (whole body): as in `bf16dp`; `corr`/`wscale` hold `NR`
        // values (padded arrays), `xscale` holds `M`.
        unsafe {
            if t.init {
                let c0 = _mm512_loadu_si512(t.corr.cast());
                let c1 = _mm512_loadu_si512(t.corr.add(16).cast());
                for r in acc.iter_mut() {
                    *r = [c0, c1];
                }
            } else {
                for (i, r) in acc.iter_mut().enumerate() {
                    let c = t.c.add(i * t.ldc).cast::<i32>();
                    *r = [
                        _mm512_maskz_loadu_epi32(k0, c),
                        _mm512_maskz_loadu_epi32(k1, c.add(16)),
                    ];
                }
            }
            let mut a = t.a;
            let mut b = t.b;
            for _ in 0..t.k {
                let b0 = _mm512_loadu_si512(b.cast());
                let b1 = _mm512_loadu_si512(b.add(16).cast());
                for (i, r) in acc.iter_mut().enumerate() {
                    let av = _mm512_set1_epi32(*a.add(i * t.lda) as i32);
                    r[0] = _mm512_dpbusd_epi32(r[0], av, b0);
                    r[1] = _mm512_dpbusd_epi32(r[1], av, b1);
                }
                a = a.add(1);
                b = b.add(NR);
            }
            if t.fin {
                let s0 = _mm512_loadu_ps(t.wscale);
                let s1 = _mm512_loadu_ps(t.wscale.add(16));
                let (bi0, bi1) = bias_halves(t, k0, k1);
                let mut out = [[_mm512_setzero_ps(); 2]; M];
                for ((o, r), i) in out.iter_mut().zip(&acc).zip(0..) {
                    let xs = _mm512_set1_ps(*t.xscale.add(i));
                    let v0 = _mm512_mul_ps(_mm512_cvtepi32_ps(r[0]), _mm512_mul_ps(xs, s0));
                    let v1 = _mm512_mul_ps(_mm512_cvtepi32_ps(r[1]), _mm512_mul_ps(xs, s1));
                    *o = [_mm512_add_ps(v0, bi0), _mm512_add_ps(v1, bi1)];
                }
                store_f32(t, &out, k0, k1);
            } else {
                for (i, r) in acc.iter().enumerate() {
                    let c = t.c.add(i * t.ldc).cast::<i32>();
                    _mm512_mask_storeu_epi32(c, k0, r[0]);
                    _mm512_mask_storeu_epi32(c.add(16), k1, r[1]);
                }
            }
        }
    }
    dispatch_m!(kern_vnni, vnni, "avx512f and avx512vnni.", 1 2 3 4 5 6 7 8 9 10 11 12);

    // AVX2 has 16 vector registers and no lane masks: the kernels below run a tile's 32
    // columns as two halves of 16 (two 8-lane vectors), so that the accumulators of MR rows,
    // the weights and a broadcast fit in registers, and they read or write the columns past a
    // narrow tile's edge through `vmaskmov` lane masks.

    /// The lane mask of the first `n` (0..=8) of 8 lanes.
    #[inline(always)]
    fn lane_mask(n: usize) -> __m256i {
        // SAFETY: only needs AVX, which every caller's target features include.
        unsafe {
            _mm256_cmpgt_epi32(
                _mm256_set1_epi32(n.min(8) as i32),
                _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
            )
        }
    }

    /// The 16 columns `col0..col0 + 16` of a tile as two 8-lane halves: how many of each
    /// half's lanes are inside the tile, and their masks.
    struct Half16 {
        n: [usize; 2],
        mask: [__m256i; 2],
    }

    #[inline(always)]
    fn half16(ncols: usize, col0: usize) -> Half16 {
        let rest = ncols.saturating_sub(col0);
        let n = [rest.min(8), rest.saturating_sub(8).min(8)];
        Half16 {
            n,
            mask: [lane_mask(n[0]), lane_mask(n[1])],
        }
    }

    /// Loads the lanes of `p` that the half holds (zeros elsewhere).
    ///
    /// # Safety
    /// `p` is valid for reading `n` f32; CPU supports AVX.
    #[inline(always)]
    unsafe fn load8(p: *const f32, n: usize, mask: __m256i) -> __m256 {
        // SAFETY: a full load when all 8 lanes are valid, else a masked one that touches
        // only the first `n` lanes.
        unsafe {
            if n == 8 {
                _mm256_loadu_ps(p)
            } else {
                _mm256_maskload_ps(p, mask)
            }
        }
    }

    /// Stores the lanes of `v` that the half holds.
    ///
    /// # Safety
    /// `p` is valid for writing `n` f32; CPU supports AVX.
    #[inline(always)]
    unsafe fn store8(p: *mut f32, n: usize, mask: __m256i, v: __m256) {
        // SAFETY: as in `load8`, for writing.
        unsafe {
            if n == 8 {
                _mm256_storeu_ps(p, v)
            } else if n > 0 {
                _mm256_maskstore_ps(p, mask, v)
            }
        }
    }

    /// Stores f32 accumulators of 16 columns from `col0`, adding the residual in the last
    /// K block when there is one.
    ///
    /// # Safety
    /// Tile contract with `M` valid rows; CPU supports AVX2.
    #[inline(always)]
    unsafe fn store_f32_avx2<const M: usize>(
        t: &Tile,
        col0: usize,
        h: &Half16,
        acc: &[[__m256; 2]; M],
    ) {
        let resid = t.fin && !t.resid.is_null();
        for (i, r) in acc.iter().enumerate() {
            // SAFETY: rows `< M` of `c` (and of the residual, which has the tile's shape and
            // stride) hold the lanes the half keeps.
            unsafe {
                let c = t.c.add(i * t.ldc + col0);
                let (mut v0, mut v1) = (r[0], r[1]);
                if resid {
                    let p = t.resid.add(i * t.ldc + col0);
                    v0 = _mm256_add_ps(v0, load8(p, h.n[0], h.mask[0]));
                    v1 = _mm256_add_ps(v1, load8(p.add(8), h.n[1], h.mask[1]));
                }
                store8(c, h.n[0], h.mask[0], v0);
                store8(c.add(8), h.n[1], h.mask[1], v1);
            }
        }
    }

    /// Widens `ksteps` K-steps of a bf16 weight panel to f32 in the order
    /// [`kern_bf16_avx2`] reads them: the panel's two 16-column halves one after the other,
    /// each `2 * ksteps` rows of 16 values (row `2s` the even K of step `s`, row `2s + 1` the
    /// odd one). Widening once per block, not once per row block that uses it, is what lets
    /// the multiply-adds run at the f32 rate: widened in the inner loop (two more vector
    /// operations per two multiply-adds, and an extra broadcast per row), the kernel ran at
    /// about 65 % of it on Zen 1.
    ///
    /// # Safety
    /// `b` is valid for `ksteps * NR` words, `out` for `STAGED_FLOATS_PER_STEP * ksteps`
    /// floats; the CPU supports avx2 and fma.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn stage_bf16_avx2(b: *const u32, ksteps: usize, out: *mut f32) {
        let hi = _mm256_set1_epi32(0xFFFF_0000u32 as i32);
        for half in 0..2 {
            // SAFETY: the reads stay in the `ksteps * NR` words of `b`, the writes in the
            // `2 * ksteps * NR` floats of `out` (half `h` owns `[h * 2 * ksteps * 16, ..)`).
            unsafe {
                let dst = out.add(half * 2 * ksteps * 16);
                for s in 0..ksteps {
                    let src = b.add(s * NR + half * 16);
                    let w0 = _mm256_loadu_si256(src.cast());
                    let w1 = _mm256_loadu_si256(src.add(8).cast());
                    // Even k: the low bf16 of each word shifted up; odd k: the high one kept.
                    let even = dst.add(2 * s * 16);
                    _mm256_storeu_ps(even, _mm256_castsi256_ps(_mm256_slli_epi32::<16>(w0)));
                    _mm256_storeu_ps(
                        even.add(8),
                        _mm256_castsi256_ps(_mm256_slli_epi32::<16>(w1)),
                    );
                    let odd = even.add(16);
                    _mm256_storeu_ps(odd, _mm256_castsi256_ps(_mm256_and_si256(w0, hi)));
                    _mm256_storeu_ps(odd.add(8), _mm256_castsi256_ps(_mm256_and_si256(w1, hi)));
                }
            }
        }
    }

    /// # Safety
    /// Tile contract with `M` valid rows and f32-pair A entries, except that `t.b` points at
    /// `t.k` K-steps of weights staged by [`stage_bf16_avx2`] (f32, not bf16 words); CPU
    /// supports avx2 and fma.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn bf16avx2<const M: usize>(t: &Tile) {
        let kvalues = 2 * t.k;
        for (half, col0) in [0, 16].into_iter().enumerate() {
            if col0 >= t.ncols {
                break;
            }
            let h = half16(t.ncols, col0);
            let mut acc = [[_mm256_setzero_ps(); 2]; M];
            // SAFETY (whole body): pointers are valid for the extents in the Tile contract;
            // `load8`/`store8` touch only the lanes inside the tile; each staged half holds
            // `kvalues` rows of 16 floats whatever `ncols` is.
            unsafe {
                if t.init {
                    if !t.bias.is_null() {
                        let b0 = load8(t.bias.add(col0), h.n[0], h.mask[0]);
                        let b1 = load8(t.bias.add(col0 + 8), h.n[1], h.mask[1]);
                        for r in acc.iter_mut() {
                            *r = [b0, b1];
                        }
                    }
                } else {
                    for (i, r) in acc.iter_mut().enumerate() {
                        let c = t.c.add(i * t.ldc + col0);
                        *r = [
                            load8(c, h.n[0], h.mask[0]),
                            load8(c.add(8), h.n[1], h.mask[1]),
                        ];
                    }
                }
                // Every accumulator takes the even then the odd k of each step, as the
                // unstaged kernel did, so the sums are the same bits.
                // One pointer per row, indexed by k: the rows' addresses are not recomputed
                // in the loop.
                let rows: [*const f32; M] = std::array::from_fn(|i| t.a.add(i * t.lda).cast());
                let b = t.b.cast::<f32>().add(half * kvalues * 16);
                for k in 0..kvalues {
                    let w0 = _mm256_loadu_ps(b.add(16 * k));
                    let w1 = _mm256_loadu_ps(b.add(16 * k + 8));
                    for (r, row) in acc.iter_mut().zip(&rows) {
                        let av = _mm256_broadcast_ss(&*row.add(k));
                        r[0] = _mm256_fmadd_ps(av, w0, r[0]);
                        r[1] = _mm256_fmadd_ps(av, w1, r[1]);
                    }
                }
                store_f32_avx2(t, col0, &h, &acc);
            }
        }
    }
    dispatch_m!(kern_bf16_avx2, bf16avx2, "avx2 and fma.", 1 2 3 4 5 6);

    /// # Safety
    /// Tile contract with `M` valid rows, one i8-quad word per A entry (the signed codes),
    /// non-null wscale/xscale; CPU supports avx2 and fma.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn int8avx2<const M: usize>(t: &Tile) {
        let ones = _mm256_set1_epi16(1);
        for col0 in [0, 16] {
            if col0 >= t.ncols {
                break;
            }
            let h = half16(t.ncols, col0);
            // The signed A codes need no correction term: a first K block starts from zero.
            let mut acc = [[_mm256_setzero_si256(); 2]; M];
            // SAFETY (whole body): as in `bf16avx2`; `wscale` holds `NR` values (padded
            // arrays), `xscale` holds `M`; i32 and f32 have the same size and alignment.
            unsafe {
                if !t.init {
                    for (i, r) in acc.iter_mut().enumerate() {
                        let c = t.c.add(i * t.ldc + col0);
                        *r = [
                            _mm256_castps_si256(load8(c, h.n[0], h.mask[0])),
                            _mm256_castps_si256(load8(c.add(8), h.n[1], h.mask[1])),
                        ];
                    }
                }
                // One pointer per row, indexed by k: the rows' addresses are not recomputed
                // in the loop.
                let rows: [*const u32; M] = std::array::from_fn(|i| t.a.add(i * t.lda));
                let mut b = t.b.add(col0);
                for k in 0..t.k {
                    let w0 = _mm256_loadu_si256(b.cast());
                    let w1 = _mm256_loadu_si256(b.add(8).cast());
                    for (r, row) in acc.iter_mut().zip(&rows) {
                        let av = _mm256_set1_epi32(*row.add(k) as i32);
                        let aa = _mm256_abs_epi8(av);
                        // |a| * (w with a's sign) = a * w; each pair sum is at most
                        // 2 * 127 * 127 < 2^15, so `vpmaddubsw` never saturates.
                        let p0 = _mm256_maddubs_epi16(aa, _mm256_sign_epi8(w0, av));
                        let p1 = _mm256_maddubs_epi16(aa, _mm256_sign_epi8(w1, av));
                        r[0] = _mm256_add_epi32(r[0], _mm256_madd_epi16(p0, ones));
                        r[1] = _mm256_add_epi32(r[1], _mm256_madd_epi16(p1, ones));
                    }
                    b = b.add(NR);
                }
                if t.fin {
                    let s0 = _mm256_loadu_ps(t.wscale.add(col0));
                    let s1 = _mm256_loadu_ps(t.wscale.add(col0 + 8));
                    let (bi0, bi1) = if t.bias.is_null() {
                        (_mm256_setzero_ps(), _mm256_setzero_ps())
                    } else {
                        (
                            load8(t.bias.add(col0), h.n[0], h.mask[0]),
                            load8(t.bias.add(col0 + 8), h.n[1], h.mask[1]),
                        )
                    };
                    let mut out = [[_mm256_setzero_ps(); 2]; M];
                    for ((o, r), i) in out.iter_mut().zip(&acc).zip(0..) {
                        let xs = _mm256_set1_ps(*t.xscale.add(i));
                        let v0 = _mm256_mul_ps(_mm256_cvtepi32_ps(r[0]), _mm256_mul_ps(xs, s0));
                        let v1 = _mm256_mul_ps(_mm256_cvtepi32_ps(r[1]), _mm256_mul_ps(xs, s1));
                        *o = [_mm256_add_ps(v0, bi0), _mm256_add_ps(v1, bi1)];
                    }
                    store_f32_avx2(t, col0, &h, &out);
                } else {
                    for (i, r) in acc.iter().enumerate() {
                        let c = t.c.add(i * t.ldc + col0);
                        store8(c, h.n[0], h.mask[0], _mm256_castsi256_ps(r[0]));
                        store8(c.add(8), h.n[1], h.mask[1], _mm256_castsi256_ps(r[1]));
                    }
                }
            }
        }
    }
    dispatch_m!(kern_int8_avx2, int8avx2, "avx2 and fma.", 1 2 3 4);

    /// [`super::pack_row_f32pair`] compiled for AVX2.
    ///
    /// # Safety
    /// CPU supports avx2 and fma.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn pack_row_f32pair_avx2(xr: &[f32], out: &mut [u32]) {
        super::pack_row_f32pair(xr, out)
    }

    /// [`super::pack_row_u8`] compiled for AVX2.
    ///
    /// # Safety
    /// CPU supports avx2 and fma.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn pack_row_u8_avx2(xr: &[f32], out: &mut [u8]) -> f32 {
        super::pack_row_u8(xr, out)
    }

    /// Converts one row to bf16 (RNE, `vcvtneps2bf16`), zero padded to
    /// `2 * out.len()` values.
    ///
    /// # Safety
    /// CPU supports avx512f, avx512bw, avx512vl and avx512bf16.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    pub unsafe fn pack_row_bf16(xr: &[f32], out: &mut [u32]) {
        let total = 2 * out.len();
        let dst = out.as_mut_ptr().cast::<u16>();
        let mut c = 0;
        while c < total {
            let nx = xr.len().saturating_sub(c).min(16);
            let nd = (total - c).min(16);
            let mx = ((1u32 << nx) - 1) as u16;
            let md = ((1u32 << nd) - 1) as u16;
            // SAFETY: the masked load reads only `xr[c..c + nx]` (in bounds)
            // and the masked store writes only the `nd` u16 at `c..c + nd`,
            // which lie inside `out` (2 u16 per word).
            unsafe {
                let v = _mm512_maskz_loadu_ps(mx, xr.as_ptr().add(c.min(xr.len())));
                let h: __m256i = std::mem::transmute(_mm512_cvtneps_pbh(v));
                _mm256_mask_storeu_epi16(dst.add(c).cast(), md, h);
            }
            c += 16;
        }
    }

    /// [`super::pack_row_f32pair`] compiled for AVX-512.
    ///
    /// # Safety
    /// CPU supports avx512f.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn pack_row_f32pair_avx512(xr: &[f32], out: &mut [u32]) {
        super::pack_row_f32pair(xr, out)
    }

    /// Same result as [`super::pack_row_u8`] (bit for bit), with intrinsics.
    ///
    /// # Safety
    /// CPU supports avx512f and avx512bw; `out.len() >= xr.len()`.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub unsafe fn pack_row_u8_avx512(xr: &[f32], out: &mut [u8]) -> f32 {
        let n = xr.len();
        let p = xr.as_ptr();
        // For non-negative floats the bit patterns order like the values, and
        // every NaN/inf pattern is >= 0x7F80_0000.
        let absmask = _mm512_set1_epi32(0x7FFF_FFFF);
        let mut mx = _mm512_setzero_si512();
        let mut c = 0;
        while c < n {
            let m = ((1u32 << (n - c).min(16)) - 1) as u16;
            // SAFETY: masked load of `xr[c..c + min(16, n - c)]`, in bounds.
            let v = unsafe { _mm512_maskz_loadu_epi32(m, p.add(c).cast()) };
            mx = _mm512_max_epu32(mx, _mm512_and_si512(v, absmask));
            c += 16;
        }
        let maxbits = _mm512_reduce_max_epu32(mx);
        if maxbits >= 0x7F80_0000 || maxbits == 0 {
            out.fill(128);
            return if maxbits == 0 { 0.0 } else { f32::NAN };
        }
        let max = f32::from_bits(maxbits);
        let inv = _mm512_set1_ps(127.0 / max);
        let lo = _mm512_set1_epi32(-127);
        let hi = _mm512_set1_epi32(127);
        let off = _mm512_set1_epi32(128);
        let o = out.as_mut_ptr();
        let mut c = 0;
        while c < n {
            let m = ((1u32 << (n - c).min(16)) - 1) as u16;
            // SAFETY: masked load of in-bounds `xr` values and masked store of
            // the same count of bytes into `out` (`out.len() >= n`). The
            // conversion rounds to nearest even (default MXCSR), matching
            // `quant` for these magnitudes (|v * inv| <= 127 + rounding).
            unsafe {
                let v = _mm512_maskz_loadu_ps(m, p.add(c));
                let q = _mm512_cvtps_epi32(_mm512_mul_ps(v, inv));
                let q = _mm512_add_epi32(_mm512_min_epi32(_mm512_max_epi32(q, lo), hi), off);
                _mm512_mask_cvtepi32_storeu_epi8(o.add(c).cast(), m, q);
            }
            c += 16;
        }
        out[n..].fill(128);
        max / 127.0
    }
}

// ---------------------------------------------------------------------------
// Public entry points
// ---------------------------------------------------------------------------

fn check_common(
    x: &[f32],
    rows: usize,
    in_dim: usize,
    out_dim: usize,
    bias: &[f32],
    dst_len: usize,
) -> Result<(), String> {
    if x.len() != checked_dims(rows, in_dim, "x")? {
        return Err(format!(
            "x has {} values, expected {rows} x {in_dim}",
            x.len()
        ));
    }
    if dst_len != checked_dims(rows, out_dim, "dst")? {
        return Err(format!(
            "dst has {dst_len} values, expected {rows} x {out_dim}"
        ));
    }
    if !bias.is_empty() && bias.len() != out_dim {
        return Err(format!(
            "bias has {} values, expected {out_dim} (or 0 for none)",
            bias.len()
        ));
    }
    Ok(())
}

fn check_residual(residual: Option<&[f32]>, dst_len: usize) -> Result<(), String> {
    match residual {
        Some(r) if r.len() != dst_len => Err(format!(
            "residual has {} values, expected {dst_len} (the output's)",
            r.len()
        )),
        _ => Ok(()),
    }
}

/// Rows of packed activations a kernel reads: the AMX kernels load whole 16-row tiles, so
/// their input is zero padded to a multiple of 16 rows.
fn padded_rows(rows: usize, amx: bool) -> usize {
    #[cfg(target_arch = "x86_64")]
    if amx {
        return rows.div_ceil(amx::ROW_PAD) * amx::ROW_PAD;
    }
    let _ = amx;
    rows
}

/// `&mut [f32]` as the kernels' output type.
fn as_uninit(dst: &mut [f32]) -> &mut [MaybeUninit<f32>] {
    // SAFETY: `MaybeUninit<f32>` has the layout of `f32`, and the kernels
    // only ever store initialised f32 values through the result, so `dst`
    // stays initialised.
    unsafe { std::slice::from_raw_parts_mut(dst.as_mut_ptr().cast(), dst.len()) }
}

/// A new `rows × out_dim` output filled by `run` (which must write every
/// element, as [`run_tiles`] does), without zeroing it first.
fn new_output(
    rows: usize,
    out_dim: usize,
    run: impl FnOnce(&mut [MaybeUninit<f32>]) -> Result<(), String>,
) -> Result<Vec<f32>, String> {
    let len = checked_dims(rows, out_dim, "dst")?;
    let mut v = Vec::<f32>::with_capacity(len);
    run(&mut v.spare_capacity_mut()[..len])?;
    // SAFETY: `run` returned Ok, so every one of the first `len` elements
    // was written (the entry points store all of `rows × out_dim`, see
    // `run_tiles`), and `len <= capacity`.
    unsafe { v.set_len(len) };
    Ok(v)
}

/// `dst[rows][out] = x[rows][in] · W + bias` with bf16 inputs, f32 accumulation.
///
/// `x` is row-major f32 and is rounded to bf16 (RNE) inside; `bias` has
/// `out_dim` values or is empty (no bias). NaN/inf in `x` propagate like in
/// an f32 matmul (a NaN makes its whole output row NaN). Errors on shape
/// mismatch or when `kernel` is not available on this CPU.
pub fn linear_bf16(
    x: &[f32],
    rows: usize,
    w: &PackedBf16,
    bias: &[f32],
    dst: &mut [f32],
    kernel: Bf16Kernel,
    threads: usize,
) -> Result<(), String> {
    let fused = Fused::default();
    bf16_into(x, rows, fused, w, bias, as_uninit(dst), kernel, threads)
}

/// What a linear layer computes around its product, in the kernels' passes:
/// `act(x)·W + b + residual`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Fused<'a> {
    /// Applied (in f32) to each input row before it is rounded or quantised.
    pub act: Option<Activation>,
    /// `rows × out_dim` values added to the result (after the bias): a
    /// transformer block's skip connection.
    pub residual: Option<&'a [f32]>,
}

/// [`linear_bf16`] of `act(x)` plus the residual (see [`Fused`]), into a
/// new `rows × out_dim` vector. The result equals the unfused steps' bit for
/// bit: the activation is the f32 one, and the residual is added last.
pub fn linear_bf16_fused(
    x: &[f32],
    rows: usize,
    w: &PackedBf16,
    bias: &[f32],
    fused: Fused,
    kernel: Bf16Kernel,
    threads: usize,
) -> Result<Vec<f32>, String> {
    new_output(rows, w.out_dim, |dst| {
        bf16_into(x, rows, fused, w, bias, dst, kernel, threads)
    })
}

#[allow(clippy::too_many_arguments)]
fn bf16_into(
    x: &[f32],
    rows: usize,
    fused: Fused,
    w: &PackedBf16,
    bias: &[f32],
    dst: &mut [MaybeUninit<f32>],
    kernel: Bf16Kernel,
    threads: usize,
) -> Result<(), String> {
    check_common(x, rows, w.in_dim, w.out_dim, bias, dst.len())?;
    check_residual(fused.residual, dst.len())?;
    if !kernel.is_available() {
        return Err(format!("{} is not supported by this CPU", kernel.name()));
    }
    let mut stage: Option<StageFn> = None;
    let (mr, f32pair, kern): (usize, bool, KernFn) = match kernel {
        Bf16Kernel::Portable => (PORTABLE_MR, true, kern_bf16_portable),
        #[cfg(target_arch = "x86_64")]
        Bf16Kernel::Avx2 => {
            stage = Some(x86::stage_bf16_avx2);
            (x86::AVX2_BF16_MR, true, x86::kern_bf16_avx2)
        }
        #[cfg(target_arch = "x86_64")]
        Bf16Kernel::Avx512 => (x86::AVX512_MR, true, x86::kern_bf16fma),
        #[cfg(target_arch = "x86_64")]
        Bf16Kernel::Avx512Bf16 => (x86::BF16_MR, false, x86::kern_bf16dp),
        #[cfg(target_arch = "x86_64")]
        Bf16Kernel::Amx => (amx::MR, false, amx::kern_bf16),
        #[cfg(not(target_arch = "x86_64"))]
        _ => return Err(format!("{} is not supported here", kernel.name())),
    };
    if rows == 0 || w.out_dim == 0 {
        return Ok(());
    }
    let threads = effective_threads(threads);
    let ksteps = w.in_dim.div_ceil(2);
    let astep = if f32pair { 2 } else { 1 };
    let fmt = if f32pair {
        AFormat::F32Pair
    } else {
        AFormat::Bf16
    };
    let lda = ksteps * astep;
    let is_amx = kernel == Bf16Kernel::Amx;
    with_scratch(padded_rows(rows, is_amx) * lda, |a| {
        let (used, padding) = a.split_at_mut(rows * lda);
        pack_a_bf16(x, w.in_dim, fused.act, lda, fmt, used, threads);
        padding.fill(0);
        let g = Gemm {
            rows,
            out: w.out_dim,
            ksteps,
            mr,
            lda,
            astep,
            a,
            b: w.buf.words(),
            bias: (!bias.is_empty()).then_some(bias),
            corr: None,
            wscale: None,
            xscale: None,
            residual: fused.residual,
            kern,
            amx: is_amx,
            stage,
        };
        run_tiles(&g, Out::F32(dst), threads);
    });
    Ok(())
}

/// A transformer MLP in bf16 on AMX, `act(x·W1 + b1)·W2 + b2 (+ residual)`: fc1's tiles are
/// finished with the activation and stored as bf16 straight into fc2's packed input, so the
/// hidden layer is never written in f32 nor read back to be activated and converted (at batch
/// 32 that pass was a tenth of the bf16 image tower). The result equals [`linear_bf16_fused`]
/// for fc1, then for fc2 with `act` and the residual, bit for bit. Errors when AMX-BF16 is not
/// available, on shape mismatch, or when fc1's width is not a multiple of [`NR`].
#[allow(clippy::too_many_arguments)]
pub fn mlp_bf16_amx(
    x: &[f32],
    rows: usize,
    fc1: &PackedBf16,
    b1: &[f32],
    act: Activation,
    fc2: &PackedBf16,
    b2: &[f32],
    residual: Option<&[f32]>,
    threads: usize,
) -> Result<Vec<f32>, String> {
    let hidden = fc1.out_dim;
    if fc2.in_dim != hidden {
        return Err(format!(
            "mlp: fc1 gives {hidden} values per row, fc2 takes {}",
            fc2.in_dim
        ));
    }
    if !hidden.is_multiple_of(NR) {
        return Err(format!(
            "mlp: hidden width {hidden} is not a multiple of {NR}"
        ));
    }
    if b2.len() != fc2.out_dim && !b2.is_empty() {
        return Err(format!(
            "mlp: fc2 bias has {} values, not {}",
            b2.len(),
            fc2.out_dim
        ));
    }
    check_common(
        x,
        rows,
        fc1.in_dim,
        hidden,
        b1,
        checked_dims(rows, hidden, "hidden")?,
    )?;
    let out_len = checked_dims(rows, fc2.out_dim, "dst")?;
    check_residual(residual, out_len)?;
    if !Bf16Kernel::Amx.is_available() {
        return Err(format!(
            "{} is not supported by this CPU",
            Bf16Kernel::Amx.name()
        ));
    }
    #[cfg(target_arch = "x86_64")]
    {
        let threads = effective_threads(threads);
        let lda1 = fc1.in_dim.div_ceil(2);
        let lda2 = hidden / 2;
        let padded = padded_rows(rows, true);
        with_scratch_in(&HIDDEN_SCRATCH, padded * lda2, |h| {
            with_scratch(padded * lda1, |a| {
                let (used, padding) = a.split_at_mut(rows * lda1);
                pack_a_bf16(x, fc1.in_dim, None, lda1, AFormat::Bf16, used, threads);
                padding.fill(0);
                let g = Gemm {
                    rows,
                    out: hidden,
                    ksteps: lda1,
                    mr: amx::MR,
                    lda: lda1,
                    astep: 1,
                    a,
                    b: fc1.buf.words(),
                    bias: (!b1.is_empty()).then_some(b1),
                    corr: None,
                    wscale: None,
                    xscale: None,
                    residual: None,
                    kern: amx::kern_bf16,
                    amx: true,
                    stage: None,
                };
                let (used, padding) = h.split_at_mut(rows * lda2);
                padding.fill(0);
                run_tiles(
                    &g,
                    Out::ActivatedBf16(words_as_halves_mut(used), act),
                    threads,
                );
            });
            new_output(rows, fc2.out_dim, |dst| {
                let g = Gemm {
                    rows,
                    out: fc2.out_dim,
                    ksteps: lda2,
                    mr: amx::MR,
                    lda: lda2,
                    astep: 1,
                    a: h,
                    b: fc2.buf.words(),
                    bias: (!b2.is_empty()).then_some(b2),
                    corr: None,
                    wscale: None,
                    xscale: None,
                    residual,
                    kern: amx::kern_bf16,
                    amx: true,
                    stage: None,
                };
                run_tiles(&g, Out::F32(dst), threads);
                Ok(())
            })
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (act, threads);
        unreachable!("AMX is reported available on x86-64 only")
    }
}

/// `dst[rows][out] = x · W + bias` with int8 weights and per-row int8
/// activations: `dst[m][n] = sx[m] * sw[n] * acc[m][n] + bias[n]` where
/// `acc` is the exact i32 dot product of the quantised values and `sx` comes
/// from [`quantize_row_i8`]. A row of `x` holding NaN or infinity gives an
/// all-NaN output row. `bias` has `out_dim` values or is empty. Errors on
/// shape mismatch or when `kernel` is not available on this CPU.
pub fn linear_int8(
    x: &[f32],
    rows: usize,
    w: &PackedInt8,
    bias: &[f32],
    dst: &mut [f32],
    kernel: Int8Kernel,
    threads: usize,
) -> Result<(), String> {
    let fused = Fused::default();
    int8_into(x, rows, fused, w, bias, as_uninit(dst), kernel, threads)
}

/// [`linear_int8`] of `act(x)` plus the residual (see [`Fused`]), into a
/// new `rows × out_dim` vector, equal to the unfused steps' bit for bit.
pub fn linear_int8_fused(
    x: &[f32],
    rows: usize,
    w: &PackedInt8,
    bias: &[f32],
    fused: Fused,
    kernel: Int8Kernel,
    threads: usize,
) -> Result<Vec<f32>, String> {
    new_output(rows, w.out_dim, |dst| {
        int8_into(x, rows, fused, w, bias, dst, kernel, threads)
    })
}

#[allow(clippy::too_many_arguments)]
fn int8_into(
    x: &[f32],
    rows: usize,
    fused: Fused,
    w: &PackedInt8,
    bias: &[f32],
    dst: &mut [MaybeUninit<f32>],
    kernel: Int8Kernel,
    threads: usize,
) -> Result<(), String> {
    check_common(x, rows, w.in_dim, w.out_dim, bias, dst.len())?;
    check_residual(fused.residual, dst.len())?;
    if !kernel.is_available() {
        return Err(format!("{} is not supported by this CPU", kernel.name()));
    }
    let (mr, kern): (usize, KernFn) = match kernel {
        Int8Kernel::Portable => (PORTABLE_MR, kern_int8_portable),
        #[cfg(target_arch = "x86_64")]
        Int8Kernel::Avx2 => (x86::AVX2_INT8_MR, x86::kern_int8_avx2),
        #[cfg(target_arch = "x86_64")]
        Int8Kernel::Avx512Vnni => (x86::VNNI_MR, x86::kern_vnni),
        #[cfg(target_arch = "x86_64")]
        Int8Kernel::Amx => (amx::MR, amx::kern_int8),
        #[cfg(not(target_arch = "x86_64"))]
        _ => return Err(format!("{} is not supported here", kernel.name())),
    };
    if rows == 0 || w.out_dim == 0 {
        return Ok(());
    }
    let threads = effective_threads(threads);
    let ksteps = w.in_dim.div_ceil(4);
    let mut sx = vec![0f32; rows];
    let is_amx = kernel == Int8Kernel::Amx;
    with_scratch(padded_rows(rows, is_amx) * ksteps, |a| {
        let signed = kernel == Int8Kernel::Avx2;
        let (used, padding) = a.split_at_mut(rows * ksteps);
        pack_a_int8(
            x, w.in_dim, fused.act, ksteps, signed, used, &mut sx, threads,
        );
        padding.fill(0);
        let g = Gemm {
            rows,
            out: w.out_dim,
            ksteps,
            mr,
            lda: ksteps,
            astep: 1,
            a,
            b: w.data(),
            bias: (!bias.is_empty()).then_some(bias),
            corr: Some(w.corr()),
            wscale: Some(w.scales()),
            xscale: Some(&sx),
            residual: fused.residual,
            kern,
            amx: is_amx,
            stage: None,
        };
        run_tiles(&g, Out::F32(dst), threads);
    });
    Ok(())
}

/// Multi-head self-attention over `qkv: [batch, tokens, 3·width]` into `[batch, tokens, width]`
/// with both products (`Q·Kᵀ`, `P·V`) in bf16 on AMX tiles, f32 accumulation, scale and
/// softmax; `None` on a CPU without AMX-BF16 (the caller keeps its f32 path).
pub(crate) fn attention_amx_bf16(
    qkv: &[f32],
    batch: usize,
    tokens: usize,
    width: usize,
    heads: usize,
    causal: bool,
) -> Option<Vec<f32>> {
    #[cfg(target_arch = "x86_64")]
    if has_amx_bf16() {
        let mut out = vec![0f32; batch * tokens * width];
        // SAFETY: AMX-BF16 and AVX-512 BF16 were detected just above; attention ops run
        // between the linear kernels, never inside one's tile session.
        unsafe {
            amx_attention::attention(
                qkv,
                &mut out,
                batch,
                tokens,
                width,
                heads,
                causal,
                effective_threads(0),
            )
        };
        return Some(out);
    }
    let _ = (qkv, batch, tokens, width, heads, causal);
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    // The tests write weights as `w[k][n]` (y = x·w); the model packs PyTorch's `[out, in]`.
    fn pack_bf16(w: &[f32], k: usize, n: usize) -> Result<PackedBf16, String> {
        PackedBf16::pack_out_in(&crate::model::kernels::transpose_f32(w, k, n), k, n)
    }

    fn pack_int8(w: &[f32], k: usize, n: usize) -> Result<PackedInt8, String> {
        PackedInt8::pack_out_in(&crate::model::kernels::transpose_f32(w, k, n), k, n)
    }

    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> f32 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        }
        fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
            (0..n).map(|_| self.next() * scale).collect()
        }
    }

    fn r16(v: f32) -> f64 {
        bf16_to_f32(f32_to_bf16(v)) as f64
    }

    /// f64 reference on bf16-rounded inputs; returns (value, magnitude bound).
    fn ref_bf16(
        x: &[f32],
        rows: usize,
        w: &[f32],
        k: usize,
        n: usize,
        b: &[f32],
    ) -> Vec<(f64, f64)> {
        let mut out = Vec::with_capacity(rows * n);
        for m in 0..rows {
            for j in 0..n {
                let bj = b.get(j).map_or(0.0, |&v| v as f64);
                let (mut s, mut mag) = (bj, bj.abs());
                for kk in 0..k {
                    let p = r16(x[m * k + kk]) * r16(w[kk * n + j]);
                    s += p;
                    mag += p.abs();
                }
                out.push((s, mag));
            }
        }
        out
    }

    const SHAPES: &[(usize, usize, usize)] = &[
        (1, 1, 1),
        (3, 7, 5),
        (17, 33, 31),
        (100, 768, 47),
        (17, 768, 2304),
        (1, 64, 48),
        (13, 32, 64),
        (25, 400, 33),
        // AMX blocks of 32 rows: a full one plus a 16-row tile, and one row past a block.
        (48, 96, 64),
        (33, 64, 40),
    ];

    fn check_bf16(kernel: Bf16Kernel, rows: usize, k: usize, n: usize, threads: usize, seed: u64) {
        let mut rng = Rng(seed);
        let x = rng.vec(rows * k, 2.0);
        let w = rng.vec(k * n, 0.5);
        let b = rng.vec(n, 1.0);
        let p = pack_bf16(&w, k, n).unwrap();
        let mut y = vec![f32::NAN; rows * n];
        linear_bf16(&x, rows, &p, &b, &mut y, kernel, threads).unwrap();
        let r = ref_bf16(&x, rows, &w, k, n, &b);
        for (i, (&got, &(want, mag))) in y.iter().zip(&r).enumerate() {
            let err = (got as f64 - want).abs();
            assert!(
                err <= 1e-4 * mag + 1e-30,
                "{kernel:?} {rows}x{k}x{n} t{threads} at {i}: got {got}, want {want}, mag {mag}"
            );
        }
    }

    #[test]
    fn bf16_matches_reference() {
        for kernel in Bf16Kernel::available() {
            for (s, &(rows, k, n)) in SHAPES.iter().enumerate() {
                for threads in [1, 2] {
                    check_bf16(kernel, rows, k, n, threads, 7 + s as u64);
                }
            }
        }
    }

    #[test]
    fn bf16_packs_from_either_layout_alike() {
        for &(_, k, n) in SHAPES {
            let w = Rng(k as u64 * 131 + n as u64).vec(k * n, 3.0);
            let from_out_in = pack_bf16(&w, k, n).unwrap();
            let from_in_out = PackedBf16::pack_in_out(&w, k, n).unwrap();
            assert_eq!(from_in_out, from_out_in, "{k}x{n}");
        }
        let e = PackedBf16::pack_in_out(&[0.0; 5], 2, 3).unwrap_err();
        assert!(e.contains("5 values") && e.contains("2 x 3"), "{e}");
    }

    #[test]
    fn bf16_more_odd_shapes() {
        for kernel in Bf16Kernel::available() {
            for rows in [1, 3, 17, 100] {
                for k in [1, 7, 33, 768] {
                    for n in [1, 5, 31, 47] {
                        check_bf16(kernel, rows, k, n, 2, (rows * 31 + k * 7 + n) as u64);
                    }
                }
            }
        }
    }

    #[test]
    fn bf16_k_blocking_and_big_k() {
        // in_dim > 2*KC exercises several K blocks (partial last one).
        for kernel in Bf16Kernel::available() {
            check_bf16(kernel, 29, 3072, 40, 2, 99);
            check_bf16(kernel, 5, 2 * KC * 2 + 3, 33, 1, 98);
        }
    }

    #[test]
    fn bf16_special_values() {
        for kernel in Bf16Kernel::available() {
            let (rows, k, n) = (5, 9, 37);
            let mut rng = Rng(3);
            let w = rng.vec(k * n, 1.0);
            let p = pack_bf16(&w, k, n).unwrap();
            // all-zero x, no bias -> zeros; with bias -> bias
            let x = vec![0f32; rows * k];
            let mut y = vec![1f32; rows * n];
            linear_bf16(&x, rows, &p, &[], &mut y, kernel, 2).unwrap();
            assert!(y.iter().all(|&v| v == 0.0));
            let b = rng.vec(n, 1.0);
            linear_bf16(&x, rows, &p, &b, &mut y, kernel, 2).unwrap();
            for r in 0..rows {
                assert_eq!(&y[r * n..(r + 1) * n], &b[..]);
            }
            // NaN in row 2 -> whole row NaN, other rows finite
            let mut x = rng.vec(rows * k, 1.0);
            x[2 * k + 4] = f32::NAN;
            linear_bf16(&x, rows, &p, &b, &mut y, kernel, 2).unwrap();
            for r in 0..rows {
                let row = &y[r * n..(r + 1) * n];
                if r == 2 {
                    assert!(row.iter().all(|v| v.is_nan()), "{kernel:?}");
                } else {
                    assert!(row.iter().all(|v| v.is_finite()), "{kernel:?}");
                }
            }
            // large magnitudes (no overflow in f32)
            let x: Vec<f32> = rng.vec(rows * k, 1e15);
            let w2: Vec<f32> = rng.vec(k * n, 1e15);
            let p2 = pack_bf16(&w2, k, n).unwrap();
            linear_bf16(&x, rows, &p2, &[], &mut y, kernel, 1).unwrap();
            let r = ref_bf16(&x, rows, &w2, k, n, &[]);
            for (&got, &(want, mag)) in y.iter().zip(&r) {
                assert!((got as f64 - want).abs() <= 1e-4 * mag);
            }
            // rows == 0 is fine
            linear_bf16(&[], 0, &p, &b, &mut [], kernel, 2).unwrap();
        }
    }

    #[test]
    fn the_amx_mlp_equals_its_two_layers() {
        // fc1's tiles finished with the activation into fc2's bf16 input must give the bits of
        // fc1 in f32, then fc2 activating and converting that output. K = 100 leaves 2 K-steps
        // after the whole tiles, which the finish adds; rows cover partial and whole tiles.
        let mut rng = Rng(23);
        let (k, hidden, n) = (100, 160, 40);
        let (w1, w2) = (rng.vec(k * hidden, 0.3), rng.vec(hidden * n, 0.3));
        let (p1, p2) = (
            pack_bf16(&w1, k, hidden).unwrap(),
            pack_bf16(&w2, hidden, n).unwrap(),
        );
        let (b1, b2) = (rng.vec(hidden, 1.0), rng.vec(n, 1.0));
        let amx = Bf16Kernel::Amx;
        if !amx.is_available() {
            let e = mlp_bf16_amx(
                &[0.0; 100],
                1,
                &p1,
                &b1,
                Activation::Gelu,
                &p2,
                &b2,
                None,
                1,
            )
            .unwrap_err();
            assert!(e.contains("not supported"), "{e}");
            return;
        }
        for &rows in &[1, 16, 17, 33, 50, 77] {
            let x = rng.vec(rows * k, 3.0);
            let res = rng.vec(rows * n, 10.0);
            for act in [Activation::QuickGelu, Activation::Gelu] {
                for residual in [None, Some(&res[..])] {
                    for threads in [1, 2] {
                        let h =
                            linear_bf16_fused(&x, rows, &p1, &b1, Fused::default(), amx, threads)
                                .unwrap();
                        let fused = Fused {
                            act: Some(act),
                            residual,
                        };
                        let want =
                            linear_bf16_fused(&h, rows, &p2, &b2, fused, amx, threads).unwrap();
                        let got =
                            mlp_bf16_amx(&x, rows, &p1, &b1, act, &p2, &b2, residual, threads)
                                .unwrap();
                        assert_eq!(got, want, "{rows} rows, {act:?}, {threads} threads");
                    }
                }
            }
        }
        let narrow = pack_bf16(&w1[..k * 48], k, 48).unwrap();
        let e = mlp_bf16_amx(
            &[0.0; 100],
            1,
            &narrow,
            &[],
            Activation::Gelu,
            &p2,
            &b2,
            None,
            1,
        )
        .unwrap_err();
        assert!(
            e.contains("fc1 gives 48 values per row, fc2 takes 160"),
            "{e}"
        );
        let odd = pack_bf16(&w2[..48 * n], 48, n).unwrap();
        let e = mlp_bf16_amx(
            &[0.0; 100],
            1,
            &narrow,
            &[],
            Activation::Gelu,
            &odd,
            &b2,
            None,
            1,
        )
        .unwrap_err();
        assert!(e.contains("hidden width 48 is not a multiple of 32"), "{e}");
    }

    #[test]
    fn fused_steps_equal_the_unfused_ones() {
        // The activation fused into the input conversion and the residual added by the kernel
        // must give the very bits of an activated copy run through the plain entry points and
        // a separate sum, for every kernel (K = 9000 also runs several K blocks).
        use crate::model::kernels::act_row;
        let mut rng = Rng(17);
        for &(rows, k, n) in &[(1, 7, 5), (13, 100, 33), (37, 768, 70), (14, 9000, 40)] {
            let x = rng.vec(rows * k, 3.0);
            let w = rng.vec(k * n, 0.3);
            let b = rng.vec(n, 1.0);
            let res = rng.vec(rows * n, 10.0);
            let (pb, pi) = (pack_bf16(&w, k, n).unwrap(), pack_int8(&w, k, n).unwrap());
            for act in [None, Some(Activation::QuickGelu), Some(Activation::Gelu)] {
                let mut xa = x.clone();
                if let Some(act) = act {
                    for (d, s) in xa.chunks_exact_mut(k).zip(x.chunks_exact(k)) {
                        act_row(s, d, act);
                    }
                }
                for residual in [None, Some(&res[..])] {
                    let fused = Fused { act, residual };
                    let add = |y: &mut Vec<f32>| {
                        if let Some(r) = residual {
                            for (y, r) in y.iter_mut().zip(r) {
                                *y += r;
                            }
                        }
                    };
                    for kernel in Bf16Kernel::available() {
                        for threads in [1, 2] {
                            let mut want = vec![0f32; rows * n];
                            linear_bf16(&xa, rows, &pb, &b, &mut want, kernel, threads).unwrap();
                            add(&mut want);
                            let got = linear_bf16_fused(&x, rows, &pb, &b, fused, kernel, threads)
                                .unwrap();
                            assert_eq!(got, want, "{kernel:?} {fused:?} {rows}x{k}x{n}");
                        }
                    }
                    for kernel in Int8Kernel::available() {
                        for threads in [1, 2] {
                            let mut want = vec![0f32; rows * n];
                            linear_int8(&xa, rows, &pi, &b, &mut want, kernel, threads).unwrap();
                            add(&mut want);
                            let got = linear_int8_fused(&x, rows, &pi, &b, fused, kernel, threads)
                                .unwrap();
                            assert_eq!(got, want, "{kernel:?} {fused:?} {rows}x{k}x{n}");
                        }
                    }
                }
            }
        }
        let p = pack_bf16(&[1.0], 1, 1).unwrap();
        let none = Fused::default();
        let fused = linear_bf16_fused(&[], 0, &p, &[], none, Bf16Kernel::Portable, 1).unwrap();
        assert!(fused.is_empty());
        let short = Fused {
            act: None,
            residual: Some(&[1.0]),
        };
        assert!(linear_bf16_fused(&[1.0; 2], 2, &p, &[], short, Bf16Kernel::Portable, 1).is_err());
    }

    #[test]
    fn bf16_conversion() {
        assert_eq!(f32_to_bf16(1.0), 0x3F80);
        // halfway cases round to even
        assert_eq!(f32_to_bf16(f32::from_bits(0x3F80_8000)), 0x3F80);
        assert_eq!(f32_to_bf16(f32::from_bits(0x3F81_8000)), 0x3F82);
        assert_eq!(f32_to_bf16(f32::from_bits(0x3F80_8001)), 0x3F81);
        assert_eq!(f32_to_bf16(f32::INFINITY), 0x7F80);
        assert_eq!(f32_to_bf16(f32::MAX), 0x7F80);
        assert!(bf16_to_f32(f32_to_bf16(f32::NAN)).is_nan());
        // a NaN whose payload is only in the low bits must stay NaN
        assert!(bf16_to_f32(f32_to_bf16(f32::from_bits(0x7F80_0001))).is_nan());
    }

    #[test]
    fn shape_errors() {
        let w = vec![0f32; 6];
        assert!(PackedBf16::pack_out_in(&w, 2, 4).is_err());
        assert!(PackedInt8::pack_out_in(&w, 4, 2).is_err());
        let p = pack_bf16(&w, 2, 3).unwrap();
        let q = pack_int8(&w, 2, 3).unwrap();
        let mut y = vec![0f32; 6];
        let x = vec![0f32; 4];
        assert!(linear_bf16(&x[..3], 2, &p, &[], &mut y, Bf16Kernel::Portable, 1).is_err());
        assert!(linear_bf16(&x, 2, &p, &[], &mut y[..5], Bf16Kernel::Portable, 1).is_err());
        assert!(linear_bf16(&x, 2, &p, &[1.0], &mut y, Bf16Kernel::Portable, 1).is_err());
        assert!(linear_int8(&x[..3], 2, &q, &[], &mut y, Int8Kernel::Portable, 1).is_err());
        assert!(linear_int8(&x, 2, &q, &[0.0; 4], &mut y, Int8Kernel::Portable, 1).is_err());
        assert!(linear_bf16(&x, usize::MAX, &p, &[], &mut y, Bf16Kernel::Portable, 1).is_err());
        for k in [Bf16Kernel::Avx512, Bf16Kernel::Avx512Bf16] {
            let r = linear_bf16(&x, 2, &p, &[], &mut y, k, 1);
            assert_eq!(r.is_ok(), k.is_available());
        }
        let r = linear_int8(&x, 2, &q, &[], &mut y, Int8Kernel::Avx512Vnni, 1);
        assert_eq!(r.is_ok(), Int8Kernel::Avx512Vnni.is_available());
    }

    #[test]
    fn bytes_round_trip() {
        let mut rng = Rng(5);
        for &(k, n) in &[(1, 1), (7, 33), (768, 47)] {
            let w = rng.vec(k * n, 1.0);
            let p = pack_bf16(&w, k, n).unwrap();
            let p2 = PackedBf16::from_bytes(p.as_bytes(), k, n).unwrap();
            assert_eq!(p, p2);
            assert_eq!(p.as_bytes(), p2.as_bytes());
            assert!(PackedBf16::from_bytes(&p.as_bytes()[1..], k, n).is_err());
            assert!(PackedBf16::from_bytes(p.as_bytes(), k + 2, n).is_err());
            let q = pack_int8(&w, k, n).unwrap();
            let q2 = PackedInt8::from_bytes(q.as_bytes(), k, n).unwrap();
            assert_eq!(q, q2);
            assert!(PackedInt8::from_bytes(&q.as_bytes()[4..], k, n).is_err());
            assert!(PackedInt8::from_bytes(q.as_bytes(), k, n + NR).is_err());
            for kk in 0..k {
                for j in 0..n {
                    assert_eq!(p.get(kk, j) as f64, r16(w[kk * n + j]));
                }
            }
        }
    }

    /// Scalar reproduction of the int8 path: exact i32 dot of quantised data.
    fn ref_int8(x: &[f32], rows: usize, p: &PackedInt8, b: &[f32]) -> Vec<(f64, f64, i64)> {
        let (k, n) = (p.in_dim(), p.out_dim());
        let mut out = Vec::new();
        let mut q = vec![0i8; k];
        for m in 0..rows {
            let sx = quantize_row_i8(&x[m * k..(m + 1) * k], &mut q) as f64;
            for j in 0..n {
                let acc: i64 = (0..k).map(|kk| q[kk] as i64 * p.q(kk, j) as i64).sum();
                let s = sx * p.scale(j) as f64;
                let bj = b.get(j).map_or(0.0, |&v| v as f64);
                out.push((s * acc as f64 + bj, (s * acc as f64).abs() + bj.abs(), acc));
            }
        }
        out
    }

    fn check_int8(kernel: Int8Kernel, rows: usize, k: usize, n: usize, threads: usize, seed: u64) {
        let mut rng = Rng(seed);
        let x = rng.vec(rows * k, 3.0);
        let w = rng.vec(k * n, 0.2);
        let b = rng.vec(n, 1.0);
        let p = pack_int8(&w, k, n).unwrap();
        let mut y = vec![f32::NAN; rows * n];
        linear_int8(&x, rows, &p, &b, &mut y, kernel, threads).unwrap();
        let r = ref_int8(&x, rows, &p, &b);
        for (i, (&got, &(want, mag, _))) in y.iter().zip(&r).enumerate() {
            assert!(
                (got as f64 - want).abs() <= 1e-6 * mag + 1e-6,
                "{kernel:?} {rows}x{k}x{n} at {i}: got {got} want {want}"
            );
        }
        // close to the f32 result
        let mut exact = vec![0f64; rows * n];
        for m in 0..rows {
            for j in 0..n {
                exact[m * n + j] = b[j] as f64
                    + (0..k)
                        .map(|kk| x[m * k + kk] as f64 * w[kk * n + j] as f64)
                        .sum::<f64>();
            }
        }
        if k >= 32 && rows * n >= 32 {
            let dot: f64 = exact.iter().zip(&y).map(|(a, &b)| a * b as f64).sum();
            let na: f64 = exact.iter().map(|a| a * a).sum::<f64>().sqrt();
            let nb: f64 = y.iter().map(|&b| (b as f64).powi(2)).sum::<f64>().sqrt();
            assert!(dot / (na * nb) >= 0.999, "cosine {}", dot / (na * nb));
        }
    }

    #[test]
    fn int8_matches_reference() {
        for kernel in Int8Kernel::available() {
            for (s, &(rows, k, n)) in SHAPES.iter().enumerate() {
                for threads in [1, 2] {
                    check_int8(kernel, rows, k, n, threads, 11 + s as u64);
                }
            }
            for rows in [1, 3, 17, 100] {
                for k in [1, 7, 33, 768] {
                    for n in [1, 5, 31, 47] {
                        check_int8(kernel, rows, k, n, 2, (rows * 13 + k * 5 + n) as u64);
                    }
                }
            }
            check_int8(kernel, 29, 3072, 40, 2, 77);
            check_int8(kernel, 5, 4 * KC * 2 + 5, 33, 1, 78);
        }
    }

    #[test]
    fn int8_exact_integer_accumulators() {
        // Integer data with row max 127 and column max 127: both scales are
        // exactly 1, so dst equals the raw i32 accumulator.
        let (rows, k, n) = (19, 1029, 45);
        let mut rng = Rng(21);
        let ints = |rng: &mut Rng, len: usize| -> Vec<f32> {
            (0..len).map(|_| (rng.next() * 127.0).round()).collect()
        };
        let mut x = ints(&mut rng, rows * k);
        let mut w = ints(&mut rng, k * n);
        for m in 0..rows {
            x[m * k + m % k] = if m % 2 == 0 { 127.0 } else { -127.0 };
        }
        for j in 0..n {
            w[(j * 3 % k) * n + j] = -127.0;
        }
        let p = pack_int8(&w, k, n).unwrap();
        for kernel in Int8Kernel::available() {
            let mut y = vec![0f32; rows * n];
            linear_int8(&x, rows, &p, &[], &mut y, kernel, 2).unwrap();
            for m in 0..rows {
                for j in 0..n {
                    let acc: i64 = (0..k)
                        .map(|kk| x[m * k + kk] as i64 * w[kk * n + j] as i64)
                        .sum();
                    assert!(acc.abs() < 1 << 24);
                    assert_eq!(y[m * n + j], acc as f32, "{kernel:?} {m} {j}");
                }
            }
        }
    }

    #[test]
    fn int8_special_values() {
        for kernel in Int8Kernel::available() {
            let (rows, k, n) = (4, 13, 35);
            let mut rng = Rng(8);
            let w = rng.vec(k * n, 1.0);
            let b = rng.vec(n, 1.0);
            let p = pack_int8(&w, k, n).unwrap();
            let mut x = rng.vec(rows * k, 1.0);
            x[k..2 * k].fill(0.0); // zero row -> bias
            x[2 * k + 3] = f32::NAN; // NaN row -> NaN
            x[3 * k + 5] = f32::INFINITY; // inf row -> NaN
            let mut y = vec![0f32; rows * n];
            linear_int8(&x, rows, &p, &b, &mut y, kernel, 1).unwrap();
            assert!(y[..n].iter().all(|v| v.is_finite()));
            assert_eq!(&y[n..2 * n], &b[..]);
            assert!(y[2 * n..].iter().all(|v| v.is_nan()));
            // large magnitudes are fine (scales absorb them)
            let x = rng.vec(rows * k, 1e30);
            linear_int8(&x, rows, &p, &[], &mut y, kernel, 1).unwrap();
            assert!(y.iter().all(|v| v.is_finite()));
            // non-finite weight column -> NaN column
            let mut w2 = w.clone();
            w2[2 * n + 7] = f32::NAN;
            let p2 = pack_int8(&w2, k, n).unwrap();
            let x = rng.vec(rows * k, 1.0);
            linear_int8(&x, rows, &p2, &b, &mut y, kernel, 1).unwrap();
            for m in 0..rows {
                for j in 0..n {
                    assert_eq!(y[m * n + j].is_nan(), j == 7);
                }
            }
        }
    }

    #[test]
    fn quantize_row_rules() {
        let mut q = [0i8; 4];
        assert_eq!(quantize_row_i8(&[0.0; 4], &mut q), 0.0);
        assert_eq!(q, [0; 4]);
        let s = quantize_row_i8(&[1.0, -2.0, 0.5, 2.0], &mut q);
        assert_eq!(s, 2.0 / 127.0);
        assert_eq!(q, [64, -127, 32, 127]); // 63.5 -> 64 (ties to even), 31.75 -> 32
        assert!(quantize_row_i8(&[1.0, f32::NAN, 0.0, 0.0], &mut q).is_nan());
        assert_eq!(q, [0; 4]);
    }

    #[test]
    fn dispatch_runs_the_requested_variant() {
        #[cfg(target_arch = "x86_64")]
        {
            let av = Bf16Kernel::available();
            assert_eq!(
                av.contains(&Bf16Kernel::Avx512Bf16),
                std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512bf16")
            );
            let avx2 = std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma");
            assert_eq!(av.contains(&Bf16Kernel::Avx2), avx2);
            assert_eq!(Int8Kernel::available().contains(&Int8Kernel::Avx2), avx2);
            assert_eq!(
                Int8Kernel::available().contains(&Int8Kernel::Avx512Vnni),
                std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512vnni")
            );
        }
        assert_eq!(Bf16Kernel::best(), *Bf16Kernel::available().last().unwrap());
        if Bf16Kernel::available().contains(&Bf16Kernel::Amx) {
            assert!(Bf16Kernel::available().contains(&Bf16Kernel::Avx512Bf16));
        }
        // vdpbf16ps and tdpbf16ps treat denormal inputs as zero; the f32 paths do not. K = 1
        // runs AMX's edge code (vdpbf16ps), K = 32 its tiles.
        let tiny = f32::from_bits(0x0001_0000); // a bf16-exact denormal
        for k in [1, 32] {
            let p = pack_bf16(&vec![1.0; k], k, 1).unwrap();
            let mut x = vec![0.0; k];
            x[0] = tiny;
            for kernel in Bf16Kernel::available() {
                let mut y = [0f32];
                linear_bf16(&x, 1, &p, &[], &mut y, kernel, 1).unwrap();
                let flushed = y[0] == 0.0;
                let flushing = matches!(kernel, Bf16Kernel::Avx512Bf16 | Bf16Kernel::Amx);
                assert_eq!(flushed, flushing, "{kernel:?} K {k}");
            }
        }
        // int8 variants are bit-identical (exact integer math, same epilogue)
        let mut rng = Rng(42);
        let (rows, k, n) = (23, 100, 70);
        let x = rng.vec(rows * k, 1.0);
        let w = rng.vec(k * n, 1.0);
        let b = rng.vec(n, 1.0);
        let p = pack_int8(&w, k, n).unwrap();
        let mut y0 = vec![0f32; rows * n];
        linear_int8(&x, rows, &p, &b, &mut y0, Int8Kernel::Portable, 1).unwrap();
        for kernel in Int8Kernel::available() {
            let mut y = vec![0f32; rows * n];
            linear_int8(&x, rows, &p, &b, &mut y, kernel, 2).unwrap();
            assert_eq!(y, y0, "{kernel:?}");
        }
    }
}

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
mod bf16_attention;
mod pack;
mod portable;
mod select;
mod team;
mod weights;
#[cfg(target_arch = "x86_64")]
mod x86;

pub(crate) use pack::effective_threads;
use pack::*;
use portable::{kern_bf16_portable, kern_int8_portable, PORTABLE_MR};
use select::*;
pub use select::{Bf16Kernel, F32PanelKernel, Int8Kernel};
use weights::*;
pub use weights::{release_scratch, PackedBf16, PackedF32, PackedInt8};

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

#[inline(always)]
fn f32_row_from_bf16_generic(src: &[u16], dst: &mut [f32]) {
    for (d, &h) in dst.iter_mut().zip(src) {
        *d = bf16_to_f32(h);
    }
}

crate::simd_dispatch!(fn f32_row_from_bf16(src: &[u16], dst: &mut [f32]) = f32_row_from_bf16_generic);

/// Values per task of the whole-buffer conversions below (a quarter of a MiB of f32).
const CONVERSION_CHUNK: usize = 1 << 16;

/// `src` rounded to bf16 bits as [`f32_to_bf16`] rounds, converted in chunks on the rayon pool.
pub(crate) fn bf16_bits_of(src: &[f32]) -> Vec<u16> {
    let mut bits = vec![0u16; src.len()];
    bits.par_chunks_mut(CONVERSION_CHUNK)
        .zip(src.par_chunks(CONVERSION_CHUNK))
        .for_each(|(d, s)| bf16_row(s, d));
    bits
}

/// The f32 values of bf16 bits (exact), converted in chunks on the rayon pool.
pub(crate) fn f32_of_bf16_bits(bits: &[u16]) -> Vec<f32> {
    let mut values = vec![0f32; bits.len()];
    values
        .par_chunks_mut(CONVERSION_CHUNK)
        .zip(bits.par_chunks(CONVERSION_CHUNK))
        .for_each(|(d, s)| f32_row_from_bf16(s, d));
    values
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
    /// values, written by the AMX and AVX-512 BF16 kernels ([`mlp_bf16`]) in a tile that runs
    /// the whole K (`init` and `fin` both set).
    c_bf16: *mut u16,
    act: Option<Activation>,
    /// The weights the task reads next (null: none), `prefetch_lines` cache lines of them,
    /// which the AVX2 kernels fetch one line per K value while this tile re-reads its weights
    /// from cache. Prefetches never fault, so only the caller's accounting bounds them.
    prefetch: *const u8,
    prefetch_lines: usize,
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

/// Where [`run_tiles`] writes the product: f32, or (the AMX and AVX-512 BF16 kernels, the whole
/// K in one block) `act` of it as bf16.
enum Out<'a> {
    F32(&'a mut [MaybeUninit<f32>]),
    /// Rows `stride` values apart (at least the product's width).
    ActivatedBf16 {
        dst: &'a mut [u16],
        act: Activation,
        stride: usize,
    },
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
    /// K-steps per block when not the default of the kernel's kind.
    kblock: Option<usize>,
}

/// Converts `ksteps` K-steps of a packed panel (`NR` words each) into `ksteps *
/// STAGED_FLOATS_PER_STEP` floats of staged weights.
type StageFn = unsafe fn(*const u32, usize, *mut f32);

/// Floats of staged weights per K-step (two k values × the panel's `NR` columns).
const STAGED_FLOATS_PER_STEP: usize = 2 * NR;

/// K-steps per block of a staged kernel: one panel's staged block (64 steps × 32 columns × 2
/// k values × 4 bytes = 16 KiB) stays in a 32 KiB L1 cache next to the rows that read it.
const STAGED_KC: usize = 64;

/// The weight block that [`run_tiles`]' item over `panels` reads after panel `p`'s block at
/// K-step `kc0` (blocks of `kc` steps, K blocks outside, panels inside): `(panel, kc0)`, or
/// `None` after the item's last.
fn block_after(
    p: usize,
    kc0: usize,
    panels: &std::ops::Range<usize>,
    ksteps: usize,
    kc: usize,
) -> Option<(usize, usize)> {
    if p + 1 < panels.end {
        Some((p + 1, kc0))
    } else if kc0 + kc < ksteps {
        Some((panels.start, kc0 + kc))
    } else {
        None
    }
}

/// Writes every element of the output's first `rows * out` (the first K block stores
/// whole tiles without reading them), so it may start uninitialised.
fn run_tiles(g: &Gemm, out: Out, threads: usize) {
    let kc = if let Some(kc) = g.kblock {
        kc
    } else if g.amx {
        g.ksteps.max(1)
    } else if g.stage.is_some() {
        STAGED_KC
    } else {
        KC
    };
    let panels = g.out.div_ceil(NR);
    let mblocks = g.rows.div_ceil(g.mr);
    // Row tiles evened out: every row tile reads the whole weight, and a tile of one or two
    // blocks beside a full one (50 rows in 6-row blocks as 8 + 1) read it a second time for a
    // few rows, from memory in a tower (Zen 3, the image tower at batch 1 on the AVX2 panels,
    // docs/BENCHMARKS.md session 33). Staged kernels take at least MC_BLOCKS row blocks per
    // tile, so that every staged block is read by that many; the others about MC_BLOCKS (at
    // most 11), and as many row tiles as the threads need beside the panel tiles.
    let row_tiles = if g.stage.is_some() {
        (mblocks / MC_BLOCKS).max(1)
    } else {
        let panel_tiles = panels.div_ceil(NC_PANELS).max(1);
        ((mblocks + MC_BLOCKS / 2) / MC_BLOCKS)
            .max(1)
            .max(threads.div_ceil(panel_tiles).min(mblocks))
    };
    let mcb = mblocks.div_ceil(row_tiles).max(1);
    let ncp = NC_PANELS;
    // Everything the kernels touch is inside these slices (checked here so
    // the raw-pointer arithmetic below stays in bounds).
    // `ldc`: the output's row stride in values (the residual has the f32 output's).
    let (dptr, hptr, act, ldc) = match out {
        Out::F32(dst) => {
            assert!(dst.len() >= g.rows * g.out);
            (
                dst.as_mut_ptr().cast::<f32>(),
                std::ptr::null_mut(),
                None,
                g.out,
            )
        }
        Out::ActivatedBf16 { dst, act, stride } => {
            assert!(kc >= g.ksteps && g.residual.is_none() && stride >= g.out);
            assert!(g.rows == 0 || dst.len() >= (g.rows - 1) * stride + g.out);
            (std::ptr::null_mut(), dst.as_mut_ptr(), Some(act), stride)
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
            let run_tile = |p: usize, b: *const u32, mb: usize, prefetch: (*const u8, usize)| {
                let c0 = p * NR;
                let r0 = mb * g.mr;
                let m = g.mr.min(g.rows - r0);
                // SAFETY (pointer arithmetic): all offsets are within the
                // slices asserted above: A rows `r0..r0+m` hold
                // `ksteps*astep` words each, B panel `p` spans `ksteps*NR`,
                // row `r0 + m - 1 < rows` (output rows `ldc >= out` apart,
                // the residual's too), column `c0 + ncols <= out`, and
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
                            dptr.get().add(r0 * ldc + c0)
                        },
                        c_bf16: if hptr.get().is_null() {
                            hptr.get()
                        } else {
                            hptr.get().add(r0 * ldc + c0)
                        },
                        act,
                        ldc,
                        ncols: NR.min(g.out - c0),
                        init,
                        fin,
                        bias: g.bias.map_or(std::ptr::null(), |b| b.as_ptr().add(c0)),
                        corr: g.corr.map_or(std::ptr::null(), |b| b.as_ptr().add(c0)),
                        wscale: g.wscale.map_or(std::ptr::null(), |b| b.as_ptr().add(c0)),
                        xscale: g.xscale.map_or(std::ptr::null(), |b| b.as_ptr().add(r0)),
                        resid: g
                            .residual
                            .map_or(std::ptr::null(), |r| r.as_ptr().add(r0 * ldc + c0)),
                        prefetch: prefetch.0,
                        prefetch_lines: prefetch.1,
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
            // The weights this item reads after panel `p`'s block at `kc0`, as a start and a
            // count of cache lines; only ever prefetched, never read.
            let next_weights = |p: usize, kc0: usize| {
                let (p, kc0) = block_after(p, kc0, &p_range, g.ksteps, kc)?;
                let steps = kc.min(g.ksteps - kc0);
                let start = g.b.as_ptr().wrapping_add((p * g.ksteps + kc0) * NR);
                Some((start.cast::<u8>(), (steps * NR * 4).div_ceil(64)))
            };
            if g.amx {
                // Row blocks outside: each row block's activations are read from L1 for all
                // of the item's panels (3-20 % faster than panels outside on ViT-B/32's
                // shapes, two threads; items that take row blocks outside lost 5-10 %).
                for mb in mb_range.clone() {
                    for p in p_range.clone() {
                        run_tile(p, panel(p), mb, (std::ptr::null(), 0));
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
                    // One row tile reads the whole weight once, from memory: its second row
                    // block (the first if it has only one) fetches the weights that come next in
                    // this item while it re-reads this panel's from cache, so memory is not
                    // idle between panels (docs/BENCHMARKS.md, session 36).
                    let ahead = if tm == 1 { next_weights(p, kc0) } else { None };
                    let prefetch_mb = mb_range.start + usize::from(mb_range.len() > 1);
                    for mb in mb_range.clone() {
                        let prefetch = match ahead {
                            Some(words) if mb == prefetch_mb => words,
                            _ => (std::ptr::null(), 0),
                        };
                        run_tile(p, b, mb, prefetch);
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

/// `act` over one row of a low-precision layer's input, which is rounded to bf16 or quantised
/// to int8 right after: on AVX-512 CPUs the faster form of `x86::act_row_avx512` (relative
/// error below 1e-5 against [`act_row`], far inside bf16's 3.9e-3), elsewhere [`act_row`].
pub(crate) fn act_row_lowp(src: &[f32], dst: &mut [f32], act: Activation) {
    #[cfg(target_arch = "x86_64")]
    if super::kernels::has_avx512() {
        assert!(dst.len() >= src.len(), "act_row_lowp: dst shorter than src");
        // SAFETY: the CPU has AVX-512F (checked above) and `dst` is at least as long as `src`
        // (asserted), the kernel's two conditions.
        unsafe { x86::act_row_avx512(src, dst, act) };
        return;
    }
    act_row(src, dst, act);
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

/// The row stride, in words, of packed activation rows of `words` words: a cache line longer
/// when rows `words` apart would be a multiple of 4 KiB apart. A kernel reads one value from
/// each of its 12-14 rows per step, and rows 4 KiB apart all fall in one set of the L1 cache,
/// which has 8 ways (Zen 4; 12 on Sapphire Rapids): on Zen 4 the f32 panel kernel ran K = 3,072
/// at 80 % of K = 768's rate, and bf16 K = 2,048 at 85-95 % of K = 512's.
fn unaliased_stride(words: usize) -> usize {
    if words > 0 && (words * 4).is_multiple_of(4096) {
        words + 16
    } else {
        words
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
    let lhs = Lhs::Rows(x, None);
    bf16_into(lhs, rows, None, w, bias, as_uninit(dst), kernel, threads)
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
        let lhs = Lhs::Rows(x, fused.act);
        bf16_into(lhs, rows, fused.residual, w, bias, dst, kernel, threads)
    })
}

/// `act(x)ᵀ·W (+ residual)` for a row-major `x: [K, rows]` (`K = w.in_dim`), into a new
/// `rows × out_dim` vector: a weight gradient's product over a batch's rows, whose left-hand
/// side is the batch's inputs transposed (activated, for the layer after an MLP's activation),
/// plus the sum of the batch's earlier rows as the residual. The transpose (and activation) is
/// taken as the values are rounded to bf16 and is never made whole in f32. Equals
/// [`linear_bf16_fused`] of the transposed `x` with that activation and residual, bit for bit.
pub fn transposed_product_bf16(
    x: &[f32],
    rows: usize,
    w: &PackedBf16,
    fused: Fused,
    kernel: Bf16Kernel,
    threads: usize,
) -> Result<Vec<f32>, String> {
    let residual = fused.residual;
    new_output(rows, w.out_dim, |dst| {
        bf16_into(
            Lhs::Columns(x, fused.act),
            rows,
            residual,
            w,
            &[],
            dst,
            kernel,
            threads,
        )
    })
}

/// The left-hand side of a bf16 product, `rows × K`.
#[derive(Clone, Copy)]
enum Lhs<'a> {
    /// Row-major `[rows, K]`, each row passed through the activation first when there is one.
    Rows(&'a [f32], Option<Activation>),
    /// Row-major `[K, rows]`, read transposed, each value passed through the activation first
    /// when there is one.
    Columns(&'a [f32], Option<Activation>),
}

#[allow(clippy::too_many_arguments)]
fn bf16_into(
    lhs: Lhs,
    rows: usize,
    residual: Option<&[f32]>,
    w: &PackedBf16,
    bias: &[f32],
    dst: &mut [MaybeUninit<f32>],
    kernel: Bf16Kernel,
    threads: usize,
) -> Result<(), String> {
    let (Lhs::Rows(x, _) | Lhs::Columns(x, _)) = lhs;
    check_common(x, rows, w.in_dim, w.out_dim, bias, dst.len())?;
    check_residual(residual, dst.len())?;
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
    let lda = unaliased_stride(ksteps * astep);
    let is_amx = kernel == Bf16Kernel::Amx;
    with_scratch(padded_rows(rows, is_amx) * lda, |a| {
        let (used, padding) = a.split_at_mut(rows * lda);
        match lhs {
            Lhs::Rows(x, act) => pack_a_bf16(x, w.in_dim, act, lda, fmt, used, threads),
            Lhs::Columns(x, act) => pack_a_bf16_columns(x, w.in_dim, act, lda, fmt, used, threads),
        }
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
            residual,
            kern,
            amx: is_amx,
            stage,
            kblock: None,
        };
        run_tiles(&g, Out::F32(dst), threads);
    });
    Ok(())
}

/// An instruction whose one-core ceiling [`peak_multiply_adds`] measures: what the f32, bf16
/// and int8 AVX-512 kernels are built of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeakInstruction {
    /// `vfmadd231ps` (the f32 panel and out-in kernels).
    F32Fma,
    /// `vdpbf16ps` (the bf16 kernel of `avx512_bf16` CPUs).
    Bf16Dot,
    /// `vpdpbusd` (the int8 kernel of `avx512_vnni` CPUs).
    Int8Dot,
}

impl PeakInstruction {
    pub const ALL: [PeakInstruction; 3] = [Self::F32Fma, Self::Bf16Dot, Self::Int8Dot];

    pub fn name(self) -> &'static str {
        match self {
            Self::F32Fma => "vfmadd231ps zmm",
            Self::Bf16Dot => "vdpbf16ps zmm",
            Self::Int8Dot => "vpdpbusd zmm",
        }
    }

    /// Multiply-adds of one instruction on zmm registers: 16 f32 lanes of one, two bf16 pairs
    /// or four u8 × i8 quads per lane.
    pub fn multiply_adds_per_instruction(self) -> usize {
        match self {
            Self::F32Fma => 16,
            Self::Bf16Dot => 32,
            Self::Int8Dot => 64,
        }
    }

    /// Whether this CPU has the instruction.
    pub fn is_available(self) -> bool {
        match self {
            Self::F32Fma => has_avx512(),
            Self::Bf16Dot => has_avx512bf16(),
            Self::Int8Dot => has_avx512vnni(),
        }
    }
}

/// Multiply-adds per second that the calling thread retires in `instruction` on zmm registers
/// (independent accumulators, no memory operands) over at least `seconds`: the ceiling of a
/// kernel built of it, on one core. Run it on every thread at once for the CPU's ceiling (cores
/// may share units or clock down). `None` where the CPU lacks the instruction.
pub fn peak_multiply_adds(instruction: PeakInstruction, seconds: f64) -> Option<f64> {
    if !instruction.is_available() {
        return None;
    }
    #[cfg(target_arch = "x86_64")]
    {
        const ROUNDS: usize = 1 << 20;
        let run = |seed: f32| -> f32 {
            // SAFETY: `is_available` checked the instruction's CPU features above.
            unsafe {
                match instruction {
                    PeakInstruction::F32Fma => x86::peak_f32_fma(ROUNDS, seed),
                    PeakInstruction::Bf16Dot => x86::peak_bf16_dot(ROUNDS, seed),
                    PeakInstruction::Int8Dot => x86::peak_int8_dot(ROUNDS, seed),
                }
            }
        };
        let per_round = x86::PEAK_CHAINS * instruction.multiply_adds_per_instruction();
        std::hint::black_box(run(std::hint::black_box(0.5)));
        let start = std::time::Instant::now();
        let mut calls = 0usize;
        while calls < 2 || start.elapsed().as_secs_f64() < seconds {
            std::hint::black_box(run(std::hint::black_box(0.5)));
            calls += 1;
        }
        Some((calls * ROUNDS * per_round) as f64 / start.elapsed().as_secs_f64())
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = seconds;
        None
    }
}

/// Whether inference packs fp32 weights for the panel kernel at their first product on this
/// CPU: where it runs the AVX-512 one. (AVX2 CPUs pack for theirs only when a process asks,
/// `Clip::pack_f32_weights`: see `OutInWeight`'s choice.)
pub fn has_f32_panel_kernel() -> bool {
    F32PanelKernel::Avx512.is_available()
}

/// `act(x)·W + b (+ residual)` in f32 over weights packed by [`PackedF32`], into a new `rows ×
/// out_dim` vector: the product of many rows that gemm would otherwise run after repacking the
/// weight on every call. The activation is the f32 one ([`act_row`]). Every kernel adds the
/// bias, then the K products in order, then the residual: the variants give the same bits.
/// Errors on shape mismatch or when the CPU cannot run `kernel`.
pub fn linear_f32_fused(
    x: &[f32],
    rows: usize,
    w: &PackedF32,
    bias: &[f32],
    fused: Fused,
    kernel: F32PanelKernel,
    threads: usize,
) -> Result<Vec<f32>, String> {
    check_common(
        x,
        rows,
        w.in_dim,
        w.out_dim,
        bias,
        rows.saturating_mul(w.out_dim),
    )?;
    check_residual(fused.residual, rows * w.out_dim)?;
    if !kernel.is_available() {
        return Err(format!("{} is not supported by this CPU", kernel.name()));
    }
    #[cfg(target_arch = "x86_64")]
    let (mr, kern): (usize, KernFn) = match kernel {
        F32PanelKernel::Avx2 => (x86::AVX2_F32_MR, x86::kern_f32fma_avx2),
        F32PanelKernel::Avx512 => (x86::F32_MR, x86::kern_f32fma),
    };
    #[cfg(not(target_arch = "x86_64"))]
    let (mr, kern): (usize, KernFn) = unreachable!("no f32 panel kernel off x86");
    let threads = effective_threads(threads);
    let k = w.in_dim;
    let run = |a: &[u32], lda: usize, dst: &mut [MaybeUninit<f32>]| {
        let g = Gemm {
            rows,
            out: w.out_dim,
            ksteps: k,
            mr,
            lda,
            astep: 1,
            a,
            b: w.buf.words(),
            bias: (!bias.is_empty()).then_some(bias),
            corr: None,
            wscale: None,
            xscale: None,
            residual: fused.residual,
            kern,
            amx: false,
            stage: None,
            kblock: None,
        };
        run_tiles(&g, Out::F32(dst), threads);
    };
    // Rows that would alias in L1 (K = 3,072 ran at 80 % of K = 768's rate), and activated
    // ones (written anyway), are copied at a stride that does not.
    let lda = unaliased_stride(k);
    new_output(rows, w.out_dim, |dst| {
        if fused.act.is_none() && lda == k {
            run(pack::f32_bits(x), k, dst);
        } else {
            with_scratch(rows * lda, |a| {
                for (r, row) in a.chunks_exact_mut(lda.max(1)).enumerate() {
                    let (src, dst) = (
                        &x[r * k..(r + 1) * k],
                        pack::words_as_f32_mut(&mut row[..k]),
                    );
                    match fused.act {
                        Some(act) => act_row(src, dst, act),
                        None => dst.copy_from_slice(src),
                    }
                }
                run(a, lda, dst)
            });
        }
        Ok(())
    })
}

/// A transformer MLP in bf16, `act(x·W1 + b1)·W2 + b2 (+ residual)`, on AMX tiles or AVX-512
/// BF16 dot products (`kernel`): fc1's tiles are finished with the activation and stored as
/// bf16 straight into fc2's packed input, so the hidden layer is never written in f32 nor read
/// back to be activated and converted (at batch 32 that pass was a tenth of the bf16 image
/// tower on AMX; on Zen 4 the activation and its packing were 5 % of it). The result equals
/// [`linear_bf16_fused`] for fc1, then for fc2 with `act` and the residual, bit for bit. Errors
/// when `kernel` is another kernel or not available, on shape mismatch, or when fc1's width is
/// not a multiple of [`NR`].
#[allow(clippy::too_many_arguments)]
pub fn mlp_bf16(
    x: &[f32],
    rows: usize,
    fc1: &PackedBf16,
    b1: &[f32],
    act: Activation,
    fc2: &PackedBf16,
    b2: &[f32],
    residual: Option<&[f32]>,
    kernel: Bf16Kernel,
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
    if !matches!(kernel, Bf16Kernel::Amx | Bf16Kernel::Avx512Bf16) {
        return Err(format!(
            "mlp: the fused MLP runs on {} or {}, not {}",
            Bf16Kernel::Amx.name(),
            Bf16Kernel::Avx512Bf16.name(),
            kernel.name()
        ));
    }
    if !kernel.is_available() {
        return Err(format!("{} is not supported by this CPU", kernel.name()));
    }
    #[cfg(target_arch = "x86_64")]
    {
        let threads = effective_threads(threads);
        let amx = kernel == Bf16Kernel::Amx;
        let (mr, kern): (usize, KernFn) = if amx {
            (amx::MR, amx::kern_bf16)
        } else {
            (x86::BF16_MR, x86::kern_bf16dp)
        };
        let (ksteps1, ksteps2) = (fc1.in_dim.div_ceil(2), hidden / 2);
        let (lda1, lda2) = (unaliased_stride(ksteps1), unaliased_stride(ksteps2));
        let padded = padded_rows(rows, amx);
        with_scratch_in(&HIDDEN_SCRATCH, padded * lda2, |h| {
            with_scratch(padded * lda1, |a| {
                let (used, padding) = a.split_at_mut(rows * lda1);
                pack_a_bf16(x, fc1.in_dim, None, lda1, AFormat::Bf16, used, threads);
                padding.fill(0);
                let g = Gemm {
                    rows,
                    out: hidden,
                    ksteps: ksteps1,
                    mr,
                    lda: lda1,
                    astep: 1,
                    a,
                    b: fc1.buf.words(),
                    bias: (!b1.is_empty()).then_some(b1),
                    corr: None,
                    wscale: None,
                    xscale: None,
                    residual: None,
                    kern,
                    amx,
                    stage: None,
                    // The activated bf16 form is stored by a tile that runs the whole K.
                    kblock: Some(ksteps1.max(1)),
                };
                let (used, padding) = h.split_at_mut(rows * lda2);
                // The AMX tiles read whole rows past `rows` (a row's words past `ksteps2`, if
                // any, are never read).
                padding.fill(0);
                let out = Out::ActivatedBf16 {
                    dst: words_as_halves_mut(used),
                    act,
                    stride: lda2 * 2,
                };
                run_tiles(&g, out, threads);
            });
            new_output(rows, fc2.out_dim, |dst| {
                let g = Gemm {
                    rows,
                    out: fc2.out_dim,
                    ksteps: ksteps2,
                    mr,
                    lda: lda2,
                    astep: 1,
                    a: h,
                    b: fc2.buf.words(),
                    bias: (!b2.is_empty()).then_some(b2),
                    corr: None,
                    wscale: None,
                    xscale: None,
                    residual,
                    kern,
                    amx,
                    stage: None,
                    kblock: None,
                };
                run_tiles(&g, Out::F32(dst), threads);
                Ok(())
            })
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (act, threads);
        unreachable!("the fused MLP's kernels are reported available on x86-64 only")
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
            kblock: None,
        };
        run_tiles(&g, Out::F32(dst), threads);
    });
    Ok(())
}

/// Multi-head self-attention over `qkv: [batch, tokens, 3·width]` into `[batch, tokens, width]`
/// with both products (`Q·Kᵀ`, `P·V`) in bf16, f32 accumulation, scale and softmax: on AMX
/// tiles for `Bf16Kernel::Amx`, with `vdpbf16ps` for `Bf16Kernel::Avx512Bf16`. `None` for any
/// other kernel or one this CPU lacks (the caller keeps its f32 path).
pub(crate) fn attention_bf16(
    kernel: Bf16Kernel,
    qkv: &[f32],
    batch: usize,
    tokens: usize,
    width: usize,
    heads: usize,
    causal: bool,
) -> Option<Vec<f32>> {
    #[cfg(target_arch = "x86_64")]
    {
        let engine = match kernel {
            Bf16Kernel::Amx if has_amx_bf16() => bf16_attention::Engine::Amx,
            Bf16Kernel::Avx512Bf16 if has_avx512bf16() => bf16_attention::Engine::DotProducts,
            _ => return None,
        };
        let out = new_output(batch * tokens, width, |out| {
            // SAFETY: the engine's CPU features were detected just above (both include
            // AVX-512 BF16, BW and VL); attention ops run between the linear kernels, never
            // inside one's tile session. The kernel writes every value of `out`, as
            // `new_output` needs.
            unsafe {
                bf16_attention::attention(
                    engine,
                    qkv,
                    out,
                    batch,
                    tokens,
                    width,
                    heads,
                    causal,
                    effective_threads(0),
                )
            };
            Ok(())
        });
        out.ok()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (kernel, qkv, batch, tokens, width, heads, causal);
        None
    }
}

/// The gradient of [`attention_bf16`] on AMX with respect to `qkv`, given `d_out: [batch, tokens,
/// width]`, the gradient of its output: the five products of the backward pass in bf16 on AMX
/// tiles with f32 accumulation, the softmax and the score gradient in f32 (see
/// [`bf16_attention::attention_backward`]); `None` on a CPU without AMX-BF16.
pub(crate) fn attention_backward_amx_bf16(
    qkv: &[f32],
    d_out: &[f32],
    batch: usize,
    tokens: usize,
    width: usize,
    heads: usize,
    causal: bool,
) -> Option<Vec<f32>> {
    #[cfg(target_arch = "x86_64")]
    if has_amx_bf16() {
        let rows = batch * tokens;
        let d_qkv = new_output(rows, qkv.len() / rows.max(1), |d_qkv| {
            // SAFETY: AMX-BF16 and AVX-512 BF16 were detected just above; attention ops run
            // between the linear kernels, never inside one's tile session. The kernel writes
            // every value of `d_qkv`, as `new_output` needs.
            unsafe {
                bf16_attention::attention_backward(
                    qkv,
                    d_out,
                    d_qkv,
                    batch,
                    tokens,
                    width,
                    heads,
                    causal,
                    effective_threads(0),
                )
            };
            Ok(())
        });
        return d_qkv.ok();
    }
    let _ = (qkv, d_out, batch, tokens, width, heads, causal);
    None
}

#[cfg(test)]
mod tests;

//! AMX microkernels (Intel Advanced Matrix Extensions: Sapphire Rapids and later) for the bf16
//! and int8 linear layers of [`super`].
//!
//! The weights need no layout of their own: a packed panel's K-step rows of [`NR`] words are
//! exactly two AMX "B" tiles side by side (16 columns of bf16 pairs for `tdpbf16ps`, of byte
//! quads for `tdpbusd`), read with a 128-byte row stride, and the activations are packed as for
//! the AVX-512 kernels (bf16 in memory order, or u8 codes `q + 128`). One call computes a
//! 32 × 32 block in four accumulator tiles (tmm0..tmm3) from two A tiles (tmm4, tmm5) and two
//! B tiles (tmm6, tmm7), stores the accumulators to the stack, and finishes with AVX-512: the K
//! steps left over after the last whole tile (fewer than 16), the int8 correction, scales and
//! bias, and the residual. bf16 accumulators start from the bias, and a bf16 block of whole
//! tiles without a residual skips the finish: its tiles are stored straight into the output.
//!
//! Rust has no stable AMX intrinsics, so the tile instructions are inline assembly. The
//! operating system must grant each process the tile state (Linux: `arch_prctl`), which
//! [`support`] requests once; without that grant, or on another OS, AMX is reported absent and
//! the AVX-512 kernels run.

use std::arch::asm;
use std::arch::x86_64::*;
use std::marker::PhantomData;
use std::mem::MaybeUninit;
use std::sync::OnceLock;

use super::x86::{bias_halves, masks};
use super::{Tile, NR};

/// Rows per microkernel call: two A tiles of 16 rows.
pub const MR: usize = 32;
/// Rows per A tile.
const TILE_ROWS: usize = 16;
/// The packed activations must be readable (zero padded) to a multiple of this many rows: the
/// last call of a matrix loads whole 16-row A tiles.
pub const ROW_PAD: usize = 16;
/// K-steps (words) per tile multiply: a tile row holds 64 bytes.
const TILE_K: usize = 16;
/// Bytes between two K-steps of a packed weight panel (one row of both B tiles).
const B_ROW_BYTES: usize = NR * 4;

/// Which AMX multiplies this process may run.
#[derive(Clone, Copy, Debug, Default)]
pub struct Support {
    pub bf16: bool,
    pub int8: bool,
}

/// AMX support of this CPU and OS, detected once per process (the first call also asks Linux
/// for the tile state, see the module docs).
pub fn support() -> Support {
    static SUPPORT: OnceLock<Support> = OnceLock::new();
    *SUPPORT.get_or_init(detect)
}

fn detect() -> Support {
    let leaf7 = __cpuid_count(7, 0);
    let tile = leaf7.edx >> 24 & 1 == 1;
    let bf16 = leaf7.edx >> 22 & 1 == 1;
    let int8 = leaf7.edx >> 25 & 1 == 1;
    let osxsave = __cpuid(1).ecx >> 27 & 1 == 1;
    if !tile || !osxsave {
        return Support::default();
    }
    // XCR0 bits 17 (XTILECFG) and 18 (XTILEDATA): the OS saves the tile state.
    let xcr0_low: u32;
    // SAFETY: `xgetbv` with ecx = 0 reads XCR0; it is available because CPUID reports OSXSAVE,
    // and it touches no memory.
    unsafe {
        asm!("xgetbv", in("ecx") 0u32, out("eax") xcr0_low, out("edx") _,
             options(nomem, nostack, preserves_flags));
    }
    if xcr0_low & (3 << 17) != 3 << 17 || !request_tile_state() {
        return Support::default();
    }
    Support { bf16, int8 }
}

/// Asks Linux to enable the AMX tile data state for this process (`arch_prctl(ARCH_REQ_XCOMP_PERM,
/// XFEATURE_XTILEDATA)`, Linux 5.16+); without it the first tile instruction faults.
#[cfg(target_os = "linux")]
fn request_tile_state() -> bool {
    const SYS_ARCH_PRCTL: i64 = 158;
    const ARCH_REQ_XCOMP_PERM: i64 = 0x1023;
    const XFEATURE_XTILEDATA: i64 = 18;
    let ret: i64;
    // SAFETY: a raw `arch_prctl` system call with two integer arguments; the kernel reads no
    // memory of ours for this request. `syscall` clobbers rcx and r11, declared below.
    unsafe {
        asm!("syscall",
             inlateout("rax") SYS_ARCH_PRCTL => ret,
             in("rdi") ARCH_REQ_XCOMP_PERM,
             in("rsi") XFEATURE_XTILEDATA,
             lateout("rcx") _, lateout("r11") _,
             options(nostack));
    }
    ret == 0
}

#[cfg(not(target_os = "linux"))]
fn request_tile_state() -> bool {
    false
}

/// The tile configuration of one thread's AMX work: every tile 16 rows of 64 bytes. Dropping it
/// releases the tile state (`tilerelease`), so an idle thread does not carry 8 KiB of tile
/// registers through context switches.
pub struct TileSession {
    /// Tile state belongs to the thread that configured it.
    _not_send: PhantomData<*const ()>,
}

#[repr(C, align(64))]
struct TileConfig([u8; 64]);

impl TileSession {
    /// Configures the calling thread's tiles for the kernels of this module.
    ///
    /// # Safety
    /// [`support`] must have reported AMX (so the OS granted the tile state), and the calling
    /// thread must not be inside another session (the inner one's drop would release the
    /// outer's tiles).
    pub unsafe fn start() -> Self {
        let mut cfg = TileConfig([0; 64]);
        cfg.0[0] = 1; // palette 1: 8 tiles of at most 16 rows x 64 bytes
        for t in 0..8 {
            cfg.0[16 + 2 * t..18 + 2 * t].copy_from_slice(&64u16.to_le_bytes());
            cfg.0[48 + t] = 16;
        }
        // SAFETY: the caller guarantees AMX is usable; `cfg` is a valid 64-byte aligned palette-1
        // configuration that lives across the instruction.
        unsafe {
            asm!("ldtilecfg [{}]", in(reg) cfg.0.as_ptr(), options(nostack, readonly, preserves_flags));
        }
        Self {
            _not_send: PhantomData,
        }
    }
}

impl Drop for TileSession {
    fn drop(&mut self) {
        // SAFETY: this thread configured its tiles in `start`, so AMX is usable here.
        unsafe { asm!("tilerelease", options(nostack, nomem, preserves_flags)) };
    }
}

/// 32 × 32 accumulators as the tiles store them: row stride 128 bytes.
#[repr(C, align(64))]
struct Accumulators([u32; MR * NR]);

macro_rules! tile_product {
    ($name:ident, $op:literal) => {
        /// Multiplies the tile's first `steps` K-steps (a multiple of 16) of A rows `0..16`, or
        /// `0..32` with `two`, by the panel's 32 columns, starting from zero or, when `init`
        /// is not null, from the 32 values at `init` in every row; stores the 16 (32) rows of
        /// 32 accumulators at `out`, rows `out_stride` bytes apart.
        ///
        /// # Safety
        /// A [`TileSession`] is active on this thread; A holds 16 (32 with `two`) readable rows
        /// of at least `steps` words at stride `lda`; the panel holds `steps` K-steps; a
        /// non-null `init` holds 32 values of the accumulators' type; `out` has room for the
        /// rows written.
        #[inline(always)]
        unsafe fn $name(
            t: &Tile,
            two: bool,
            steps: usize,
            init: *const f32,
            out: *mut u8,
            out_stride: usize,
        ) {
            let lda_bytes = t.lda * 4;
            let mut a = t.a.cast::<u8>();
            let mut b = t.b.cast::<u8>();
            // SAFETY (whole body): tile loads read 16 rows of 64 bytes at the given strides,
            // inside A and the panel per the contract above, or the same 64 bytes of `init` 16
            // times (stride 0); the stores write 16 rows of 64 bytes at `out_stride` inside
            // `out`; tmm0..tmm7 are configured by the active session and are not used by
            // compiled code. Each tile is loaded just before the first product that reads it,
            // so loads overlap the products before them (a few % faster than all four loads
            // first).
            unsafe {
                if init.is_null() {
                    asm!(
                        "tilezero tmm0",
                        "tilezero tmm1",
                        "tilezero tmm2",
                        "tilezero tmm3",
                        options(nostack, nomem, preserves_flags)
                    );
                } else {
                    asm!(
                        "tileloadd tmm0, [{v} + {zero}*1]",
                        "tileloadd tmm1, [{v1} + {zero}*1]",
                        "tileloadd tmm2, [{v} + {zero}*1]",
                        "tileloadd tmm3, [{v1} + {zero}*1]",
                        v = in(reg) init,
                        v1 = in(reg) init.add(16),
                        zero = in(reg) 0usize,
                        options(nostack, readonly, preserves_flags)
                    );
                }
                for _ in 0..steps / TILE_K {
                    if two {
                        asm!(
                            "tileloadd tmm4, [{a} + {lda}*1]",
                            "tileloadd tmm6, [{b} + {bs}*1]",
                            concat!($op, " tmm0, tmm4, tmm6"),
                            "tileloadd tmm7, [{b2} + {bs}*1]",
                            concat!($op, " tmm1, tmm4, tmm7"),
                            "tileloadd tmm5, [{a2} + {lda}*1]",
                            concat!($op, " tmm2, tmm5, tmm6"),
                            concat!($op, " tmm3, tmm5, tmm7"),
                            a = in(reg) a,
                            a2 = in(reg) a.add(16 * lda_bytes),
                            b = in(reg) b,
                            b2 = in(reg) b.add(64),
                            lda = in(reg) lda_bytes,
                            bs = in(reg) B_ROW_BYTES,
                            options(nostack, readonly, preserves_flags)
                        );
                    } else {
                        asm!(
                            "tileloadd tmm4, [{a} + {lda}*1]",
                            "tileloadd tmm6, [{b} + {bs}*1]",
                            concat!($op, " tmm0, tmm4, tmm6"),
                            "tileloadd tmm7, [{b2} + {bs}*1]",
                            concat!($op, " tmm1, tmm4, tmm7"),
                            a = in(reg) a,
                            b = in(reg) b,
                            b2 = in(reg) b.add(64),
                            lda = in(reg) lda_bytes,
                            bs = in(reg) B_ROW_BYTES,
                            options(nostack, readonly, preserves_flags)
                        );
                    }
                    a = a.add(TILE_K * 4);
                    b = b.add(TILE_K * B_ROW_BYTES);
                }
                asm!(
                    "tilestored [{c} + {s}*1], tmm0",
                    "tilestored [{c1} + {s}*1], tmm1",
                    c = in(reg) out,
                    c1 = in(reg) out.add(64),
                    s = in(reg) out_stride,
                    options(nostack, preserves_flags)
                );
                if two {
                    asm!(
                        "tilestored [{c} + {s}*1], tmm2",
                        "tilestored [{c1} + {s}*1], tmm3",
                        c = in(reg) out.add(16 * out_stride),
                        c1 = in(reg) out.add(16 * out_stride + 64),
                        s = in(reg) out_stride,
                        options(nostack, preserves_flags)
                    );
                }
            }
        }
    };
}

tile_product!(product_bf16, "tdpbf16ps");
tile_product!(product_int8, "tdpbusd");

/// bf16 tile: `c = a·b + bias (+ residual)` for `m <= 32` rows, the panel's `ncols` columns.
///
/// # Safety
/// The `Tile` contract with `m <= MR`, one bf16-pair word per A entry, A rows readable up to
/// the next multiple of [`ROW_PAD`], the whole K in this call (`init` and `fin`), an active
/// [`TileSession`] on this thread, and a CPU with AMX-BF16 and AVX-512 BF16.
pub unsafe fn kern_bf16(t: &Tile, m: usize) {
    debug_assert!(t.init && t.fin && m <= MR);
    // Not zeroed: the tiles store rows 0..16 (0..32 for `m > 16`) whatever `steps` is, and
    // the finish reads rows below `m` only (a 4 KB memset per tile cost a quarter of the
    // kernel's time on AMX).
    let steps = t.k / TILE_K * TILE_K;
    let two = m > TILE_ROWS;
    // The bias is the accumulators' starting value whichever way the block is finished, so a
    // residual fused in gives the unfused steps' result bit for bit. The last panel's bias
    // (fewer than 32 columns) is padded here, since the tiles read 32 values.
    let mut bias_row = [0f32; NR];
    let init = if t.bias.is_null() || t.ncols == NR {
        t.bias
    } else {
        // SAFETY: a non-null bias holds `ncols` values (the `Tile` contract).
        let bias = unsafe { std::slice::from_raw_parts(t.bias, t.ncols) };
        bias_row[..t.ncols].copy_from_slice(bias);
        bias_row.as_ptr()
    };
    let whole_rows = m == if two { MR } else { TILE_ROWS };
    if t.act.is_some() {
        let mut acc = MaybeUninit::<Accumulators>::uninit();
        // SAFETY: forwarded contract, `c_bf16` set with `act` (see `Tile`); `init` as below.
        unsafe {
            product_bf16(t, two, steps, init, acc.as_mut_ptr().cast(), B_ROW_BYTES);
            finish_activated_bf16(t, m, steps, acc.as_mut_ptr());
        }
        return;
    }
    if steps == t.k && t.resid.is_null() && t.ncols == NR && whole_rows {
        // Whole tiles, no residual and no K-steps left over: the tiles are stored straight into
        // `c`, with no epilogue reading back what they just stored (6 % of the bf16 image
        // tower's time went there).
        // SAFETY: forwarded contract; the `m` rows of `c` hold the 32 columns (`ncols == NR`)
        // at `ldc` floats apart, and `init` is null or holds 32 values.
        unsafe { product_bf16(t, two, steps, init, t.c.cast(), t.ldc * 4) };
        return;
    }
    let mut acc = MaybeUninit::<Accumulators>::uninit();
    // SAFETY: forwarded contract (rows beyond `m` up to the 16-row tile are the zero padding);
    // `init` is null or holds 32 values.
    unsafe {
        product_bf16(t, two, steps, init, acc.as_mut_ptr().cast(), B_ROW_BYTES);
        finish_bf16(t, m, steps, acc.as_ptr());
    }
}

/// int8 tile: `c = (acc + corr)·sx·sw + bias (+ residual)`, the same float steps as the AVX-512
/// VNNI kernel, so the results are equal bit for bit.
///
/// # Safety
/// As [`kern_bf16`] with one u8-quad word per A entry, non-null corr/wscale/xscale, and a CPU
/// with AMX-INT8 and AVX-512 VNNI.
pub unsafe fn kern_int8(t: &Tile, m: usize) {
    debug_assert!(t.init && t.fin && m <= MR);
    let mut acc = MaybeUninit::<Accumulators>::uninit();
    let steps = t.k / TILE_K * TILE_K;
    // SAFETY: as in `kern_bf16`.
    unsafe {
        product_int8(
            t,
            m > TILE_ROWS,
            steps,
            std::ptr::null(),
            acc.as_mut_ptr().cast(),
            B_ROW_BYTES,
        );
        finish_int8(t, m, steps, acc.as_ptr());
    }
}

/// Adds K-steps `from..t.k` with `vdpbf16ps` to the accumulators (which start from the bias),
/// then the residual, and stores.
///
/// # Safety
/// As [`kern_bf16`].
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn finish_bf16(t: &Tile, m: usize, from: usize, acc: *const Accumulators) {
    let (k0, k1) = masks(t.ncols);
    // SAFETY (whole body): `acc` holds 32 rows of 32 values, the first `m` of them stored by
    // the tiles; A rows `< m` hold `t.k` words, the
    // panel `t.k` K-steps of NR words; c and the residual are read or written only in the
    // `ncols` lanes the masks keep, rows `< m`.
    unsafe {
        for i in 0..m {
            let row = acc.cast::<f32>().add(i * NR);
            let (v0, v1) = with_remaining_steps(t, i, from, row);
            store_row(t, i, v0, v1, k0, k1);
        }
    }
}

/// Row `i` of a bf16 block's 32 sums at `row`, with K-steps `from..t.k` (those after the last
/// whole tile) added by `vdpbf16ps`.
///
/// # Safety
/// `row` holds 32 f32; A row `i` holds `t.k` words and the panel `t.k` K-steps of NR words.
#[inline]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn with_remaining_steps(
    t: &Tile,
    i: usize,
    from: usize,
    row: *const f32,
) -> (__m512, __m512) {
    // SAFETY: per the contract above.
    unsafe {
        let mut v0 = _mm512_loadu_ps(row);
        let mut v1 = _mm512_loadu_ps(row.add(16));
        for kk in from..t.k {
            let av: __m512bh =
                std::mem::transmute(_mm512_set1_epi32(*t.a.add(i * t.lda + kk) as i32));
            let b = t.b.add(kk * NR);
            let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.cast()));
            let b1: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.add(16).cast()));
            v0 = _mm512_dpbf16_ps(v0, av, b0);
            v1 = _mm512_dpbf16_ps(v1, av, b1);
        }
        (v0, v1)
    }
}

/// Adds K-steps `from..t.k` to the accumulators (which start from the bias), then stores the
/// `ncols` values of each row at `c_bf16`, passed through `t.act`, rounded to bf16 as the dot-product
/// kernel's fused MLP does ([`super::x86::store_activated_bf16`]: the bits of the activated
/// input packing).
///
/// # Safety
/// As [`kern_bf16`], with `c_bf16` holding rows `< m` of `ncols` values at `ldc` apart.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn finish_activated_bf16(t: &Tile, m: usize, from: usize, acc: *mut Accumulators) {
    // SAFETY (whole body): `acc` holds 32 rows of 32 values, the first `m` stored by the tiles;
    // A rows `< m` hold `t.k` words and the panel `t.k` K-steps of NR words (the contract);
    // `c_bf16` holds rows `< m` (the contract) for the shared store.
    unsafe {
        let sums = acc.cast::<f32>();
        if from < t.k {
            for i in 0..m {
                let row = sums.add(i * NR);
                let (v0, v1) = with_remaining_steps(t, i, from, row);
                _mm512_storeu_ps(row, v0);
                _mm512_storeu_ps(row.add(16), v1);
            }
        }
        let rows = std::slice::from_raw_parts(sums.cast::<[f32; NR]>(), m);
        super::x86::store_activated_bf16(t, rows);
    }
}

/// Adds the correction and K-steps `from..t.k` with `vpdpbusd`, scales, adds the bias and
/// residual, and stores.
///
/// # Safety
/// As [`kern_int8`].
#[target_feature(enable = "avx512f,avx512vnni")]
unsafe fn finish_int8(t: &Tile, m: usize, from: usize, acc: *const Accumulators) {
    let (k0, k1) = masks(t.ncols);
    // SAFETY (whole body): as in `finish_bf16`; corr and wscale hold NR values (padded arrays),
    // xscale holds `m`.
    unsafe {
        let corr0 = _mm512_loadu_si512(t.corr.cast());
        let corr1 = _mm512_loadu_si512(t.corr.add(16).cast());
        let s0 = _mm512_loadu_ps(t.wscale);
        let s1 = _mm512_loadu_ps(t.wscale.add(16));
        let (bias0, bias1) = bias_halves(t, k0, k1);
        for i in 0..m {
            let row = acc.cast::<u32>().add(i * NR);
            let mut r0 = _mm512_add_epi32(_mm512_loadu_si512(row.cast()), corr0);
            let mut r1 = _mm512_add_epi32(_mm512_loadu_si512(row.add(16).cast()), corr1);
            for kk in from..t.k {
                let av = _mm512_set1_epi32(*t.a.add(i * t.lda + kk) as i32);
                let b = t.b.add(kk * NR);
                r0 = _mm512_dpbusd_epi32(r0, av, _mm512_loadu_si512(b.cast()));
                r1 = _mm512_dpbusd_epi32(r1, av, _mm512_loadu_si512(b.add(16).cast()));
            }
            let xs = _mm512_set1_ps(*t.xscale.add(i));
            let v0 = _mm512_mul_ps(_mm512_cvtepi32_ps(r0), _mm512_mul_ps(xs, s0));
            let v1 = _mm512_mul_ps(_mm512_cvtepi32_ps(r1), _mm512_mul_ps(xs, s1));
            store_row(
                t,
                i,
                _mm512_add_ps(v0, bias0),
                _mm512_add_ps(v1, bias1),
                k0,
                k1,
            );
        }
    }
}

/// Stores row `i` of the tile, adding the residual when there is one.
///
/// # Safety
/// Row `i` of `c` (and of the residual, which has the tile's shape and stride) holds the
/// `ncols` lanes the masks keep.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn store_row(
    t: &Tile,
    i: usize,
    mut v0: __m512,
    mut v1: __m512,
    k0: __mmask16,
    k1: __mmask16,
) {
    // SAFETY: per the contract above.
    unsafe {
        if !t.resid.is_null() {
            let r = t.resid.add(i * t.ldc);
            v0 = _mm512_add_ps(v0, _mm512_maskz_loadu_ps(k0, r));
            v1 = _mm512_add_ps(v1, _mm512_maskz_loadu_ps(k1, r.add(16)));
        }
        let c = t.c.add(i * t.ldc);
        _mm512_mask_storeu_ps(c, k0, v0);
        _mm512_mask_storeu_ps(c.add(16), k1, v1);
    }
}

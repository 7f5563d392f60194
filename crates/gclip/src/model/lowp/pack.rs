//! The left-hand side of a product packed for the kernels: activation rows (through the MLP's
//! activation when fused) or a matrix's columns, rounded to bf16 or quantised to int8.

use super::*;

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
            act_row_lowp(src, tmp, act);
            tmp
        }
    }
}

/// bf16 pairs as their halves, in memory order (the first value of a pair is its low half).
pub(super) fn words_as_halves_mut(w: &mut [u32]) -> &mut [u16] {
    // SAFETY: u16 has no invalid values and an alignment that divides u32's, and the slice
    // covers exactly the same bytes.
    unsafe { std::slice::from_raw_parts_mut(w.as_mut_ptr().cast::<u16>(), w.len() * 2) }
}

/// f32 values as the words the kernels read (their bits).
pub(super) fn f32_bits(x: &[f32]) -> &[u32] {
    // SAFETY: u32 and f32 have the same size and alignment, every bit pattern is a valid u32,
    // and the shared borrow covers exactly the same memory.
    unsafe { std::slice::from_raw_parts(x.as_ptr().cast::<u32>(), x.len()) }
}

/// Words as the f32 values they will hold.
pub(super) fn words_as_f32_mut(w: &mut [u32]) -> &mut [f32] {
    // SAFETY: u32 and f32 have the same size and alignment, every bit pattern is a valid f32,
    // and the slice borrows `w` mutably for its whole lifetime, so there is no aliasing.
    unsafe { std::slice::from_raw_parts_mut(w.as_mut_ptr().cast::<f32>(), w.len()) }
}

fn words_as_bytes_mut(w: &mut [u32]) -> &mut [u8] {
    // SAFETY: the byte slice covers exactly the memory of `w` (4 bytes per
    // word), u8 has alignment 1 and no invalid bit patterns, and it borrows
    // `w` mutably for its whole lifetime, so there is no aliasing.
    unsafe { std::slice::from_raw_parts_mut(w.as_mut_ptr().cast::<u8>(), w.len() * 4) }
}

/// Activation layouts: row-major, `lda` words per row.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum AFormat {
    /// One f32 (bf16-rounded, as bits) per k; K padded to even with zeros.
    F32Pair,
    /// One bf16 per k in memory order (two per word); x86 only.
    Bf16,
}

/// Converts `act(x)` rows into `out` (rows × lda words) in the given layout.
pub(super) fn pack_a_bf16(
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

/// Converts the columns of a row-major `[k, rows]` matrix into `out` (rows × lda words) in the
/// given layout: the rows of its transpose, which is never made in f32. Bands of 16 rows run
/// in parallel; each reads its 16 columns down the matrix, a few cache lines at a time.
pub(super) fn pack_a_bf16_columns(
    x: &[f32],
    k: usize,
    act: Option<Activation>,
    lda: usize,
    fmt: AFormat,
    out: &mut [u32],
    threads: usize,
) {
    const BAND: usize = 16;
    thread_local! {
        /// A band's columns, then their activations: `k × BAND` values each.
        static ACTIVATED: std::cell::RefCell<(Vec<f32>, Vec<f32>)> =
            const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
    }
    if lda == 0 {
        return;
    }
    let rows = out.len() / lda;
    let bands: Vec<&mut [u32]> = out.chunks_mut(BAND * lda).collect();
    let workers = threads.min(bands.len()).max(1);
    let pack = |x: &[f32], rows: usize, r0: usize, words: &mut [u32]| match fmt {
        #[cfg(target_arch = "x86_64")]
        AFormat::Bf16 => {
            // SAFETY: this layout is only chosen for the Avx512Bf16 and AMX kernels, after
            // their CPU features (avx512_bf16 among them) were detected; `x` holds `k` rows of
            // `rows` values and `words` whole rows of `lda >= k.div_ceil(2)` words.
            unsafe { x86::pack_columns_bf16(x, k, rows, r0, words, lda) }
        }
        _ => pack_columns_f32pair(x, k, rows, r0, words, lda),
    };
    on_chunks(bands, workers, |band, words| {
        let r0 = band * BAND;
        let Some(act) = act else {
            return pack(x, rows, r0, words);
        };
        // The band's columns side by side (`k × n`, a few cache lines per row of `x`), through
        // the activation in one call, then packed from there: the activated matrix is never
        // made whole.
        let n = words.len() / lda;
        ACTIVATED.with_borrow_mut(|(columns, activated)| {
            columns.clear();
            for row in x.chunks_exact(rows).take(k) {
                columns.extend_from_slice(&row[r0..r0 + n]);
            }
            activated.resize(columns.len(), 0.0);
            act_row_lowp(columns, activated, act);
            pack(activated, n, 0, words);
        });
    });
}

/// Columns `r0..` of a row-major `[k, rows]` matrix as rows of `lda` words in the
/// f32-pair layout (one bf16-rounded f32 per k, the rest of each row zero).
#[inline(always)]
fn pack_columns_f32pair_generic(
    x: &[f32],
    k: usize,
    rows: usize,
    r0: usize,
    out: &mut [u32],
    lda: usize,
) {
    for (i, row) in out.chunks_exact_mut(lda).enumerate() {
        let column = x[r0 + i..].iter().step_by(rows).take(k);
        for (word, &v) in row.iter_mut().zip(column) {
            *word = (f32_to_bf16(v) as u32) << 16;
        }
        row[k..].fill(0);
    }
}

crate::simd_dispatch!(fn pack_columns_f32pair(x: &[f32], k: usize, rows: usize, r0: usize, out: &mut [u32], lda: usize) = pack_columns_f32pair_generic);

/// Quantises `act(x)` rows into `lda` words each, scales into `sx`: u8 codes (`q + 128`, what
/// `vpdpbusd` multiplies), or with `signed` the codes `q` themselves as i8 (the AVX2 kernel's).
#[allow(clippy::too_many_arguments)]
pub(super) fn pack_a_int8(
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

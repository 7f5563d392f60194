//! Multi-head self-attention with both products in bf16, for the reduced-precision towers:
//! `S = Q·Kᵀ` and `O = P·V` take bf16 operands and accumulate in f32, while the scale, the
//! softmax and the output stay f32, as in PyTorch's bf16 autocast. The products run on AMX-BF16
//! tiles where the CPU has them (and in the backward pass of bf16 training there), or with
//! AVX-512 BF16 dot products (`vdpbf16ps`, Zen 4, Cooper Lake) on the same layouts.
//!
//! On ViT-B/32's 50 tokens and 64-wide heads one head is two 50 × 50 × 64 products, too small
//! for a general gemm to reach speed. Here each (sequence, head) is converted once into the
//! tiles' layouts, where `tdpbf16ps` reads them directly:
//! - Q: rows of bf16, the head width padded to a multiple of 32 with zeros (`A` tiles);
//! - Kᵀ: for each pair of head columns, one word per token holding the token's two bf16 values,
//!   a 32-bit transpose of K's rows (`B` tiles, pairs along the head width);
//! - P: rows of bf16, tokens padded to a multiple of 32 (`A` tiles);
//! - V: for each pair of tokens, one word per head column holding the two tokens' values, two
//!   rows interleaved (`B` tiles, pairs along the tokens).
//!
//! Padding rows and columns are zero and never written, so they add nothing to the products;
//! the rows and columns past the tokens are never read back.
//!
//! One ViT-B/32 layer's attention at batch 32 on two threads (Sapphire Rapids) took 1.7 ms
//! this way against 2.6 ms through the f32 gemm; per head, the conversions and the softmax
//! now cost more than the products.

use std::arch::asm;
use std::arch::x86_64::*;

use super::amx::TileSession;
use super::on_workers;
use super::x86::{masks, pack_row_bf16};

/// Rows (and 32-bit columns) of a tile.
const TILE: usize = 16;
/// bf16 values in one tile row (64 bytes): the K of one `tdpbf16ps`.
const TILE_K_BF16: usize = 32;

/// Which instructions multiply the bf16 operands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Engine {
    /// AMX-BF16 tiles (`tdpbf16ps`), inside a [`TileSession`].
    Amx,
    /// AVX-512 BF16 dot products (`vdpbf16ps`) on the same layouts: the A words are broadcast,
    /// the B rows loaded as they are.
    DotProducts,
}

/// Which part of a product a causal mask leaves needed, for the dot-product engine (the tiles
/// compute every block).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Triangle {
    /// All of it.
    Full,
    /// `S = Q·Kᵀ` under a causal mask: row i needs columns up to i (its softmax reads no
    /// further, so the blocks right of the diagonal are left unwritten).
    CausalColumns,
    /// `O = P·V` under a causal mask: P's row i is zero past column i, so the pairs past the
    /// block's last row add nothing and are skipped.
    CausalPairs,
}

/// The padded extents of one (sequence, head), and the engine of its products.
#[derive(Clone, Copy, Debug)]
struct Extents {
    engine: Engine,
    tokens: usize,
    head_dim: usize,
    /// Tokens padded to whole tiles: rows of Q, S, P and O, columns of S.
    tokens_rows: usize,
    /// Tokens padded to whole tile K-steps: columns of P, rows (in pairs) of V.
    tokens_k: usize,
    /// Head width padded to whole tile K-steps: columns of Q, rows (in pairs) of Kᵀ.
    head_k: usize,
    /// Head width padded to whole tiles: columns of V and O.
    head_cols: usize,
}

impl Extents {
    fn new(tokens: usize, head_dim: usize, engine: Engine) -> Self {
        Self {
            engine,
            tokens,
            head_dim,
            tokens_rows: tokens.div_ceil(TILE) * TILE,
            tokens_k: tokens.div_ceil(TILE_K_BF16) * TILE_K_BF16,
            head_k: head_dim.div_ceil(TILE_K_BF16) * TILE_K_BF16,
            head_cols: head_dim.div_ceil(TILE) * TILE,
        }
    }
    fn q_words(&self) -> usize {
        self.tokens_rows * self.head_k / 2
    }
    fn k_words(&self) -> usize {
        self.head_k / 2 * self.tokens_rows
    }
    fn v_words(&self) -> usize {
        self.tokens_k / 2 * self.head_cols
    }
}

/// One worker's buffers in the tiles' layouts, zeroed once: each item overwrites the same
/// live regions, so the padding stays zero.
struct Scratch {
    /// Per head of a group, `tokens_rows × head_k / 2` words: Q in bf16.
    q: Vec<u32>,
    /// Per head, `head_k / 2 × tokens_rows` words: Kᵀ, pairs along the head width.
    k_t: Vec<u32>,
    /// Per head, `tokens_k / 2 × head_cols` words: V, pairs along the tokens.
    v: Vec<u32>,
    /// `tokens_rows × tokens_k` floats: one head's scores, then its probabilities.
    scores: Vec<f32>,
    /// `tokens_rows × tokens_k / 2` words: one head's P in bf16.
    probs: Vec<u32>,
    /// `TILE × head_cols` floats: the last, partial row tile of one head's O.
    out_tail: Vec<f32>,
}

impl Scratch {
    fn new(e: &Extents, group: usize) -> Self {
        Self {
            q: vec![0; group * e.q_words()],
            k_t: vec![0; group * e.k_words()],
            v: vec![0; group * e.v_words()],
            scores: vec![0.0; e.tokens_rows * e.tokens_k],
            probs: vec![0; e.tokens_rows * e.tokens_k / 2],
            out_tail: vec![0.0; TILE * e.head_cols],
        }
    }
}

/// Attention over `qkv: [batch, tokens, 3·width]` (q, k, v side by side, heads contiguous in
/// each) into `out: [batch, tokens, width]`, on up to `threads` workers. Every value of `out`
/// is written, none read, so it need not be initialised.
///
/// # Safety
/// The CPU supports AVX-512 BF16 (`Bf16Kernel::Avx512Bf16` is available), and with
/// [`Engine::Amx`] the CPU and OS support AMX-BF16 (`Bf16Kernel::Amx` is available) and the
/// calling thread holds no [`TileSession`]; `qkv` and `out` have the sizes above with `width`
/// divisible by `heads`.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn attention(
    engine: Engine,
    qkv: &[f32],
    out: &mut [std::mem::MaybeUninit<f32>],
    batch: usize,
    tokens: usize,
    width: usize,
    heads: usize,
    causal: bool,
    threads: usize,
) {
    assert!(
        heads > 0 && width.is_multiple_of(heads),
        "attention: bad head count"
    );
    assert_eq!(qkv.len(), batch * tokens * 3 * width, "attention: qkv size");
    assert_eq!(out.len(), batch * tokens * width, "attention: output size");
    if batch == 0 || tokens == 0 {
        return;
    }
    let e = Extents::new(tokens, width / heads, engine);
    let out_addr = out.as_mut_ptr() as usize;
    over_head_groups(
        engine,
        batch,
        heads,
        threads,
        |group| Scratch::new(&e, group),
        |b, heads, scratch| {
            // SAFETY: the workers take distinct items, and an item writes only its heads'
            // columns of sequence b's rows of `out` (inside it by the asserted sizes).
            unsafe {
                heads_of_sequence(
                    qkv,
                    out_addr as *mut f32,
                    b,
                    heads,
                    width,
                    causal,
                    &e,
                    scratch,
                )
            };
        },
    );
}

/// Runs `run(b, heads, scratch)` for every sequence `b` and group of its heads, on up to
/// `threads` workers, each with its own `scratch(group size)` (and a [`TileSession`] for
/// [`Engine::Amx`]). An item is a group of one sequence's heads, the whole sequence when there
/// are enough sequences to share out: the group's q/k/v are converted in one pass over the
/// rows, where one head's 256-byte pieces 9 KB apart (ViT-B) stalled on memory.
///
/// # Safety
/// With [`Engine::Amx`], AMX-BF16 is usable (`Bf16Kernel::Amx` is available) and the calling
/// thread holds no [`TileSession`]; `run` starts no rayon work.
unsafe fn over_head_groups<S>(
    engine: Engine,
    batch: usize,
    heads: usize,
    threads: usize,
    scratch: impl Fn(usize) -> S + Sync,
    run: impl Fn(usize, std::ops::Range<usize>, &mut S) + Sync,
) {
    let workers = threads.clamp(1, batch * heads);
    let groups = (2 * workers).div_ceil(batch).clamp(1, heads);
    let group = heads.div_ceil(groups);
    let groups = heads.div_ceil(group);
    on_workers(
        batch * groups,
        workers,
        || {
            // SAFETY: AMX is usable when asked for (the contract), and the work calls no rayon
            // work while the session lives, so no other session starts on this thread inside it.
            let tiles = (engine == Engine::Amx).then(|| unsafe { TileSession::start() });
            (tiles, scratch(group))
        },
        |item, (_tiles, scratch)| {
            let (b, g) = (item / groups, item % groups);
            let first = g * group;
            run(b, first..(first + group).min(heads), scratch);
        },
    );
}

/// The heads `heads` of sequence `b`.
///
/// # Safety
/// The CPU has AVX-512 BF16, a [`TileSession`] is active on this thread for [`Engine::Amx`]
/// (`e.engine`), and the output block
/// of those heads (rows of sequence `b`, their columns, row stride `width`) is inside `out` and
/// written by no other thread meanwhile.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
unsafe fn heads_of_sequence(
    qkv: &[f32],
    out: *mut f32,
    b: usize,
    heads: std::ops::Range<usize>,
    width: usize,
    causal: bool,
    e: &Extents,
    s: &mut Scratch,
) {
    let (t, d) = (e.tokens, e.head_dim);
    let row = 3 * width;
    let seq = &qkv[b * t * row..(b + 1) * t * row];
    // Head `h`'s values of part 0 (q), 1 (k) or 2 (v) for token j.
    let part = |part: usize, h: usize, j: usize| {
        let at = j * row + part * width + h * d;
        &seq[at..at + d]
    };
    let n = heads.len();
    let (q_words, k_words, v_words) = (e.q_words(), e.k_words(), e.v_words());
    // SAFETY: this function's CPU features; each head's buffer has its extent's size.
    unsafe {
        rows_bf16(&|g, j| part(0, heads.start + g, j), n, e, &mut s.q);
        transpose_k(&|g, j| part(1, heads.start + g, j), n, e, &mut s.k_t);
        interleave_v(&|g, j| part(2, heads.start + g, j), n, e, &mut s.v);
    }
    let scale = 1.0 / (d as f32).sqrt();
    let p_words = e.tokens_k / 2;
    for (g, h) in heads.enumerate() {
        let (score_part, mix_part) = if causal {
            (Triangle::CausalColumns, Triangle::CausalPairs)
        } else {
            (Triangle::Full, Triangle::Full)
        };
        // SAFETY: the head's Q and Kᵀ in their extents' sizes, and `scores` `tokens_rows`
        // rows of `tokens_k` floats.
        unsafe {
            scores(
                &s.q[g * q_words..],
                &s.k_t[g * k_words..],
                &mut s.scores,
                e,
                score_part,
            )
        };
        for i in 0..t {
            let r = &mut s.scores[i * e.tokens_k..(i + 1) * e.tokens_k];
            let valid = if causal { i + 1 } else { t };
            softmax_row_bf16(
                r,
                valid,
                scale,
                &mut s.probs[i * p_words..(i + 1) * p_words],
            );
        }
        // O = P·V
        // SAFETY: P holds `tokens_rows` rows of `tokens_k` bf16, V `tokens_k / 2` rows of
        // `head_cols` words; the head's block of `out` (rows of sequence b, its d columns) is
        // this item's.
        unsafe {
            product_into_head(
                s.probs.as_ptr().cast(),
                s.v[g * v_words..].as_ptr().cast(),
                out.wrapping_add(b * t * width + h * d),
                width,
                e,
                &mut s.out_tail,
                mix_part,
            );
        }
    }
}

/// `S = A·Bᵀ` for one head into `s` (`tokens_rows` rows of `tokens_k` floats, the columns past
/// `tokens_rows` left as they are): `a` holds `tokens_rows` rows of `head_k` bf16 (Q or dO),
/// `b_t` the other operand's transpose, `head_k / 2` rows of `tokens_rows` words (Kᵀ or Vᵀ).
///
/// # Safety
/// The CPU has AVX-512 BF16, a [`TileSession`] is active on this thread for [`Engine::Amx`]
/// (`e.engine`), and the three buffers have at least those sizes.
#[inline(always)]
unsafe fn scores(a: &[u32], b_t: &[u32], s: &mut [f32], e: &Extents, triangle: Triangle) {
    assert!(
        a.len() >= e.q_words() && b_t.len() >= e.k_words() && s.len() >= e.tokens_rows * e.tokens_k
    );
    // SAFETY: the sizes asserted above; the row stride of S is `tokens_k ≥ tokens_rows`.
    unsafe {
        tile_matmul(
            e.engine,
            triangle,
            0,
            a.as_ptr().cast(),
            e.head_k * 2,
            b_t.as_ptr().cast(),
            e.tokens_rows * 4,
            s.as_mut_ptr().cast(),
            e.tokens_k * 4,
            e.tokens_rows,
            e.tokens_rows,
            e.head_k,
        );
    }
}

/// One worker's buffers for the backward pass, in the tiles' layouts (see [`Scratch`]) and
/// zeroed once: each item overwrites the same live regions, so the padding stays zero.
struct BackwardScratch {
    /// Per head: Q and dO as rows of bf16 (`A` tiles of S = Q·Kᵀ and dP = dO·Vᵀ).
    q: Vec<u32>,
    d_out: Vec<u32>,
    /// Per head: Kᵀ and Vᵀ, pairs along the head width (`B` tiles of S and dP).
    k_t: Vec<u32>,
    v_t: Vec<u32>,
    /// Per head: K, Q and dO, pairs along the tokens (`B` tiles of dQ, dK and dV).
    k_pairs: Vec<u32>,
    q_pairs: Vec<u32>,
    d_out_pairs: Vec<u32>,
    /// `tokens_rows × tokens_k` floats: S, then P.
    probs: Vec<f32>,
    /// `tokens_rows × tokens_k` floats: dP, then s·dS.
    d_probs: Vec<f32>,
    /// `tokens_rows × tokens_k / 2` words: s·dS as rows of bf16 (`A` tiles of dQ).
    d_scores: Vec<u32>,
    /// `tokens_rows × tokens_k / 2` words: Pᵀ, then s·dSᵀ, as rows of bf16 (`A` tiles of dV,
    /// then of dK).
    transposed: Vec<u32>,
    /// `TILE × head_cols` floats: the last, partial row tile of one head's product.
    out_tail: Vec<f32>,
}

impl BackwardScratch {
    fn new(e: &Extents, group: usize) -> Self {
        let probs = e.tokens_rows * e.tokens_k;
        Self {
            q: vec![0; group * e.q_words()],
            d_out: vec![0; group * e.q_words()],
            k_t: vec![0; group * e.k_words()],
            v_t: vec![0; group * e.k_words()],
            k_pairs: vec![0; group * e.v_words()],
            q_pairs: vec![0; group * e.v_words()],
            d_out_pairs: vec![0; group * e.v_words()],
            probs: vec![0.0; probs],
            d_probs: vec![0.0; probs],
            d_scores: vec![0; probs / 2],
            transposed: vec![0; probs / 2],
            out_tail: vec![0.0; TILE * e.head_cols],
        }
    }
}

/// The gradient of [`attention`] with respect to `qkv` (`d_qkv: [batch, tokens, 3·width]`),
/// given `d_out: [batch, tokens, width]`, the gradient of its output, on up to `threads`
/// workers. Per (sequence, head), with `P = softmax(s·QKᵀ)` recomputed from the bf16 operands as
/// the forward pass makes it: `dV = Pᵀ·dO`, `dP = dO·Vᵀ`, `dS = P ∘ (dP − rowsum(P ∘ dP))`,
/// `dQ = s·dS·K`, `dK = s·dSᵀ·Q`. The five products take bf16 operands (P and s·dS rounded
/// to bf16, as PyTorch's bf16 autocast rounds them) and accumulate in f32; the softmax and dS
/// are f32. Every value of `d_qkv` is written, none read, so it need not be initialised.
///
/// # Safety
/// As [`attention`], with `d_out` and `d_qkv` of the sizes above.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn attention_backward(
    qkv: &[f32],
    d_out: &[f32],
    d_qkv: &mut [std::mem::MaybeUninit<f32>],
    batch: usize,
    tokens: usize,
    width: usize,
    heads: usize,
    causal: bool,
    threads: usize,
) {
    assert!(
        heads > 0 && width.is_multiple_of(heads),
        "attention backward: bad head count"
    );
    let size = batch * tokens * width;
    assert_eq!(qkv.len(), 3 * size, "attention backward: qkv size");
    assert_eq!(d_out.len(), size, "attention backward: gradient size");
    assert_eq!(d_qkv.len(), 3 * size, "attention backward: output size");
    if batch == 0 || tokens == 0 {
        return;
    }
    let e = Extents::new(tokens, width / heads, Engine::Amx);
    let out_addr = d_qkv.as_mut_ptr() as usize;
    over_head_groups(
        Engine::Amx,
        batch,
        heads,
        threads,
        |group| BackwardScratch::new(&e, group),
        |b, heads, scratch| {
            // SAFETY: the workers take distinct items, and an item writes only its heads' q, k
            // and v columns of sequence b's rows of `d_qkv` (inside it by the asserted sizes).
            unsafe {
                head_gradients_of_sequence(
                    qkv,
                    d_out,
                    out_addr as *mut f32,
                    b,
                    heads,
                    width,
                    causal,
                    &e,
                    scratch,
                )
            };
        },
    );
}

/// The gradients of the heads `heads` of sequence `b`.
///
/// # Safety
/// A [`TileSession`] is active on this thread, the CPU has AVX-512 BF16, and the block of those
/// heads' q, k and v columns of sequence `b`'s rows (row stride `3·width`) is inside `d_qkv`
/// and written by no other thread meanwhile.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
unsafe fn head_gradients_of_sequence(
    qkv: &[f32],
    d_out: &[f32],
    d_qkv: *mut f32,
    b: usize,
    heads: std::ops::Range<usize>,
    width: usize,
    causal: bool,
    e: &Extents,
    s: &mut BackwardScratch,
) {
    let (t, d) = (e.tokens, e.head_dim);
    let row = 3 * width;
    let seq = &qkv[b * t * row..(b + 1) * t * row];
    let d_seq = &d_out[b * t * width..(b + 1) * t * width];
    let part = |part: usize, h: usize, j: usize| {
        let at = j * row + part * width + h * d;
        &seq[at..at + d]
    };
    let d_out_row = |h: usize, j: usize| &d_seq[j * width + h * d..][..d];
    let n = heads.len();
    let first = heads.start;
    // SAFETY: this function's CPU features; each head's buffer has its extent's size.
    unsafe {
        rows_bf16(&|g, j| part(0, first + g, j), n, e, &mut s.q);
        rows_bf16(&|g, j| d_out_row(first + g, j), n, e, &mut s.d_out);
        transpose_k(&|g, j| part(1, first + g, j), n, e, &mut s.k_t);
        transpose_k(&|g, j| part(2, first + g, j), n, e, &mut s.v_t);
        interleave_v(&|g, j| part(1, first + g, j), n, e, &mut s.k_pairs);
        interleave_v(&|g, j| part(0, first + g, j), n, e, &mut s.q_pairs);
        interleave_v(&|g, j| d_out_row(first + g, j), n, e, &mut s.d_out_pairs);
    }
    let scale = 1.0 / (d as f32).sqrt();
    let (q_words, k_words, v_words) = (e.q_words(), e.k_words(), e.v_words());
    let (tk, ds_words) = (e.tokens_k, e.tokens_k / 2);
    let seq_out = d_qkv.wrapping_add(b * t * row);
    for (g, h) in heads.enumerate() {
        let pairs = |v: &[u32]| v[g * v_words..].as_ptr().cast::<u8>();
        // SAFETY: the head's operands in their extents' sizes; `probs` and `d_probs` hold
        // `tokens_rows × tokens_k` floats.
        unsafe {
            let (q, k_t) = (&s.q[g * q_words..], &s.k_t[g * k_words..]);
            scores(q, k_t, &mut s.probs, e, Triangle::Full);
            let (d_out, v_t) = (&s.d_out[g * q_words..], &s.v_t[g * k_words..]);
            scores(d_out, v_t, &mut s.d_probs, e, Triangle::Full);
        }
        for i in 0..t {
            let valid = if causal { i + 1 } else { t };
            softmax_row_f32(&mut s.probs[i * tk..(i + 1) * tk], valid, scale);
        }
        transposed_bf16(&s.probs, t, e, &mut s.transposed);
        // dV = Pᵀ·dO
        // SAFETY: Pᵀ holds `tokens_rows` rows of `tokens_k` bf16, dO's pairs `tokens_k / 2`
        // rows of `head_cols` words; the head's v columns of sequence b are this item's.
        unsafe {
            product_into_head(
                s.transposed.as_ptr().cast(),
                pairs(&s.d_out_pairs),
                seq_out.wrapping_add(2 * width + h * d),
                row,
                e,
                &mut s.out_tail,
                Triangle::Full,
            );
        }
        for i in 0..t {
            let valid = if causal { i + 1 } else { t };
            score_gradient_row(
                &s.probs[i * tk..(i + 1) * tk],
                &mut s.d_probs[i * tk..(i + 1) * tk],
                valid,
                scale,
                &mut s.d_scores[i * ds_words..(i + 1) * ds_words],
            );
        }
        transposed_bf16(&s.d_probs, t, e, &mut s.transposed);
        // dQ = s·dS·K, dK = s·dSᵀ·Q
        // SAFETY: as above, for the head's q and k columns.
        unsafe {
            product_into_head(
                s.d_scores.as_ptr().cast(),
                pairs(&s.k_pairs),
                seq_out.wrapping_add(h * d),
                row,
                e,
                &mut s.out_tail,
                Triangle::Full,
            );
            product_into_head(
                s.transposed.as_ptr().cast(),
                pairs(&s.q_pairs),
                seq_out.wrapping_add(width + h * d),
                row,
                e,
                &mut s.out_tail,
                Triangle::Full,
            );
        }
    }
}

/// One row of P in f32 in place: `softmax(scale · s[..valid])`, zeros after it to the end of
/// `s`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
fn softmax_row_f32(s: &mut [f32], valid: usize, scale: f32) {
    let inv = exponentials(s, valid, scale);
    let lanes = |c: usize| masks(valid.saturating_sub(c)).0;
    for c in (0..s.len()).step_by(16) {
        let m = lanes(c);
        let store = masks(s.len() - c).0;
        // SAFETY: the load keeps lanes below `valid`, the store lanes below `s.len()`.
        unsafe {
            let x = _mm512_maskz_loadu_ps(m, s.as_ptr().add(c));
            _mm512_mask_storeu_ps(s.as_mut_ptr().add(c), store, _mm512_mul_ps(x, inv));
        }
    }
}

/// One row of `s·dS = s · P ∘ (dP − Σ P ∘ dP)` over `..valid`, zeros after it: in place of dP
/// in f32 and as bf16 pairs in `d_s` (`d_p.len() = 2 · d_s.len()`, a multiple of 32).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
fn score_gradient_row(p: &[f32], d_p: &mut [f32], valid: usize, scale: f32, d_s: &mut [u32]) {
    assert!(valid <= p.len() && p.len() == d_p.len() && d_p.len() == 2 * d_s.len());
    assert!(d_s.len().is_multiple_of(TILE));
    let lanes = |c: usize| masks(valid.saturating_sub(c)).0;
    let mut dot = _mm512_setzero_ps();
    for c in (0..valid).step_by(16) {
        let m = lanes(c);
        // SAFETY: the mask keeps lanes below `valid`, inside both rows.
        unsafe {
            let x = _mm512_maskz_loadu_ps(m, p.as_ptr().add(c));
            let y = _mm512_maskz_loadu_ps(m, d_p.as_ptr().add(c));
            dot = _mm512_fmadd_ps(x, y, dot);
        }
    }
    let dot = _mm512_set1_ps(_mm512_reduce_add_ps(dot));
    let scale_v = _mm512_set1_ps(scale);
    for (w, c) in (0..d_p.len()).step_by(32).enumerate() {
        // SAFETY: the masks keep the loads below `valid`; the stores write values c..c+32 of
        // `d_p` and words 16w..16w+16 of `d_s`, inside both (the lengths asserted above).
        unsafe {
            let [lo, hi] = [c, c + 16].map(|c| {
                let m = lanes(c);
                let x = _mm512_maskz_loadu_ps(m, p.as_ptr().add(c));
                let y = _mm512_maskz_loadu_ps(m, d_p.as_ptr().add(c));
                _mm512_mul_ps(_mm512_mul_ps(x, scale_v), _mm512_sub_ps(y, dot))
            });
            _mm512_storeu_ps(d_p.as_mut_ptr().add(c), lo);
            _mm512_storeu_ps(d_p.as_mut_ptr().add(c + 16), hi);
            let words = _mm512_cvtne2ps_pbh(hi, lo);
            _mm512_storeu_si512(
                d_s.as_mut_ptr().add(16 * w).cast(),
                std::mem::transmute::<__m512bh, __m512i>(words),
            );
        }
    }
}

/// The transpose of a `tokens_rows × tokens_k` f32 matrix `m` (rows from `rows` on taken as
/// zero) as `A` tiles: `tokens_rows` rows of `tokens_k / 2` words, word `(j, p)` holding
/// `m[2p][j]` and `m[2p + 1][j]` in bf16. Blocks of 32 rows × 16 columns are paired row by row
/// and transposed in registers.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
fn transposed_bf16(m: &[f32], rows: usize, e: &Extents, out: &mut [u32]) {
    let (tk, words) = (e.tokens_k, e.tokens_k / 2);
    assert!(m.len() >= e.tokens_rows * tk && out.len() >= e.tokens_rows * words);
    let rows = rows.min(e.tokens_rows);
    let interleave = pair_interleave();
    let load = |i: usize, j0: usize| {
        if i < rows {
            // SAFETY: row i < tokens_rows, columns j0..j0+16 ≤ tokens_rows ≤ tokens_k.
            unsafe { _mm512_loadu_ps(m.as_ptr().add(i * tk + j0)) }
        } else {
            _mm512_setzero_ps()
        }
    };
    for i0 in (0..tk).step_by(TILE_K_BF16) {
        for j0 in (0..e.tokens_rows).step_by(TILE) {
            let mut block = [_mm512_setzero_si512(); TILE];
            for (w, r) in block.iter_mut().enumerate() {
                let (lo, hi) = (load(i0 + 2 * w, j0), load(i0 + 2 * w + 1, j0));
                // SAFETY: __m512bh and __m512i are both 64 bytes of plain bits.
                let both = unsafe {
                    std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(hi, lo))
                };
                *r = _mm512_permutexvar_epi16(interleave, both);
            }
            transpose_16x16(&mut block);
            for (c, r) in block.iter().enumerate() {
                let at = (j0 + c) * words + i0 / 2;
                // SAFETY: row j0 + c < tokens_rows, words i0/2..i0/2+16 ≤ tokens_k / 2.
                unsafe { _mm512_storeu_si512(out[at..at + TILE].as_mut_ptr().cast(), *r) };
            }
        }
    }
}

/// The rows `0..tokens` of `heads` heads as `A` tiles, one `q_words` buffer per head: rows of
/// `head_k` bf16, zero padded.
///
/// # Safety
/// The CPU has AVX-512 BF16 and `out` holds `heads × q_words` words.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
unsafe fn rows_bf16<'a>(
    row: &impl Fn(usize, usize) -> &'a [f32],
    heads: usize,
    e: &Extents,
    out: &mut [u32],
) {
    assert!(out.len() >= heads * e.q_words());
    let row_words = e.head_k / 2;
    for i in 0..e.tokens {
        for g in 0..heads {
            let dst = &mut out[g * e.q_words() + i * row_words..][..row_words];
            // SAFETY: AVX-512 BF16 (this function's features).
            unsafe { pack_row_bf16(row(g, i), dst) };
        }
    }
}

/// The `permutexvar_epi16` indices that interleave two 16-value halves: element 2i of the
/// result is element i of the low half, 2i + 1 element i of the high half.
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
fn pair_interleave() -> __m512i {
    _mm512_set_epi16(
        31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6, 21, 5, 20, 4,
        19, 3, 18, 2, 17, 1, 16, 0,
    )
}

/// `A·B` into one head's `tokens × head_dim` block of an output with row stride `stride`
/// floats: A is `tokens_rows` rows of `tokens_k` bf16, B `tokens_k / 2` rows of `head_cols`
/// bf16 pairs. The whole row tiles go straight into the output when the head's width is whole
/// tiles, the rest through `tail` (`TILE × head_cols` floats).
///
/// # Safety
/// The CPU has AVX-512 BF16, a [`TileSession`] is active on this thread for [`Engine::Amx`]
/// (`e.engine`), A and B have the stated extents, and `out`
/// addresses `tokens` rows of `head_dim` floats at stride `stride` that no other thread writes
/// meanwhile.
#[inline(always)]
unsafe fn product_into_head(
    a: *const u8,
    b: *const u8,
    out: *mut f32,
    stride: usize,
    e: &Extents,
    tail: &mut [f32],
    triangle: Triangle,
) {
    let (t, d) = (e.tokens, e.head_dim);
    let a_words = e.tokens_k / 2;
    let direct = if d == e.head_cols { t / TILE * TILE } else { 0 };
    if direct > 0 {
        // SAFETY: A's first `direct` rows, B as stated; the tiles write rows `< t` of the
        // head's `d` columns.
        unsafe {
            tile_matmul(
                e.engine,
                triangle,
                0,
                a,
                e.tokens_k * 2,
                b,
                e.head_cols * 4,
                out.cast(),
                stride * 4,
                direct,
                e.head_cols,
                e.tokens_k,
            );
        }
    }
    for i0 in (direct..t).step_by(TILE) {
        // SAFETY: A's row tile at i0 (< tokens_rows), B as stated, `tail` one row tile of
        // `head_cols` floats.
        unsafe {
            tile_matmul(
                e.engine,
                triangle,
                i0,
                a.add(i0 * a_words * 4),
                e.tokens_k * 2,
                b,
                e.head_cols * 4,
                tail.as_mut_ptr().cast(),
                e.head_cols * 4,
                TILE,
                e.head_cols,
                e.tokens_k,
            );
        }
        for i in i0..(i0 + TILE).min(t) {
            let src = &tail[(i - i0) * e.head_cols..][..d];
            // SAFETY: row i < t of the head's block (the contract), which may not have been
            // initialised yet: written through the pointer, never read.
            unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), out.add(i * stride), d) };
        }
    }
}

/// `C = A·B`: A is `m × k` bf16 (`lda` bytes per row), B `k / 2` rows of `n` bf16 pairs
/// (`ldb` bytes per row), C `m × n` f32 (`ldc` bytes per row); m and n multiples of 16, k of
/// 32; A's first row is row `row0` of its sequence, which `triangle` needs (the tiles ignore
/// it and compute every block). On AMX, blocks of 2 × 2 output tiles (fewer at the edges) accumulate over all of k in
/// tmm0..tmm3 and are stored once: four independent accumulators keep the tile unit busy where
/// one waited out each product's latency. With dot products, see [`dot_product_matmul`].
///
/// # Safety
/// The CPU has AVX-512 BF16, with [`Engine::Amx`] a [`TileSession`] is active on this thread,
/// and the three matrices have the stated extents.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn tile_matmul(
    engine: Engine,
    triangle: Triangle,
    row0: usize,
    a: *const u8,
    lda: usize,
    b: *const u8,
    ldb: usize,
    c: *mut u8,
    ldc: usize,
    m: usize,
    n: usize,
    k: usize,
) {
    if engine == Engine::DotProducts {
        // SAFETY: forwarded contract; the strides are whole words and floats (the layouts'
        // rows are multiples of 16 words).
        unsafe {
            dot_product_matmul(
                a.cast(),
                lda / 4,
                b.cast(),
                ldb / 4,
                c.cast(),
                ldc / 4,
                (m, n, k / 2),
                triangle,
                row0,
            )
        };
        return;
    }
    let (row_tiles, col_tiles) = (m / TILE, n / TILE);
    let mut i = 0;
    while i < row_tiles {
        let two_rows = i + 1 < row_tiles;
        let mut j = 0;
        while j < col_tiles {
            let two_cols = j + 1 < col_tiles;
            // SAFETY: the block's rows and columns are inside the matrices (above).
            unsafe {
                tile_block(
                    a.add(i * TILE * lda),
                    lda,
                    b.add(j * 64),
                    ldb,
                    c.add(i * TILE * ldc + j * 64),
                    ldc,
                    k,
                    two_rows,
                    two_cols,
                )
            };
            j += 1 + two_cols as usize;
        }
        i += 1 + two_rows as usize;
    }
}

/// Output rows of one [`dot_product_block`]: 6 rows × 4 vectors of 16 columns fill 24 of the
/// 32 registers with accumulators, and each step broadcasts 6 words against 4 loaded vectors.
const DOT_ROWS: usize = 6;
const DOT_VECTORS: usize = 4;

/// [`tile_matmul`] with `vdpbf16ps`: `C = A·B` for A `m` rows of `pairs` words (`lda` words per
/// row), B `pairs` rows of `n` words (`ldb` words per row), C `m × n` f32 (`ldc` floats per
/// row), n a multiple of 16; only the part `triangle` needs when A's first row is row `row0`
/// of the sequence. Blocks of up to [`DOT_ROWS`] × [`DOT_VECTORS`]·16 outputs accumulate over
/// the pairs in registers and are stored once.
///
/// # Safety
/// The CPU has AVX-512 BF16 and the three matrices have the stated extents.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn dot_product_matmul(
    a: *const u32,
    lda: usize,
    b: *const u32,
    ldb: usize,
    c: *mut f32,
    ldc: usize,
    (m, n, pairs): (usize, usize, usize),
    triangle: Triangle,
    row0: usize,
) {
    for j0 in (0..n).step_by(16 * DOT_VECTORS) {
        for i0 in (0..m).step_by(DOT_ROWS) {
            let rows = (m - i0).min(DOT_ROWS);
            // The block's rows need the columns (or P's pairs) before `reach`.
            let reach = row0 + i0 + rows;
            let mut vectors = ((n - j0) / 16).min(DOT_VECTORS);
            let mut used_pairs = pairs;
            match triangle {
                Triangle::Full => {}
                Triangle::CausalColumns if j0 >= reach => continue,
                Triangle::CausalColumns => vectors = vectors.min((reach - j0).div_ceil(16)),
                Triangle::CausalPairs => used_pairs = pairs.min(reach.div_ceil(2)),
            }
            // SAFETY: rows i0.. < m of A and C, columns j0.. < n of B and C, pairs below
            // `pairs` (the contract).
            unsafe {
                let (a, b, c) = (a.add(i0 * lda), b.add(j0), c.add(i0 * ldc + j0));
                let p = used_pairs;
                match vectors {
                    1 => dot_product_rows::<1>(rows, a, lda, b, ldb, c, ldc, p),
                    2 => dot_product_rows::<2>(rows, a, lda, b, ldb, c, ldc, p),
                    3 => dot_product_rows::<3>(rows, a, lda, b, ldb, c, ldc, p),
                    _ => dot_product_rows::<4>(rows, a, lda, b, ldb, c, ldc, p),
                }
            }
        }
    }
}

/// [`dot_product_block`] for `rows` (1 to [`DOT_ROWS`]) rows.
///
/// # Safety
/// As [`dot_product_block`].
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn dot_product_rows<const V: usize>(
    rows: usize,
    a: *const u32,
    lda: usize,
    b: *const u32,
    ldb: usize,
    c: *mut f32,
    ldc: usize,
    pairs: usize,
) {
    // SAFETY: forwarded contract, `rows` selecting the instantiation.
    unsafe {
        match rows {
            1 => dot_product_block::<1, V>(a, lda, b, ldb, c, ldc, pairs),
            2 => dot_product_block::<2, V>(a, lda, b, ldb, c, ldc, pairs),
            3 => dot_product_block::<3, V>(a, lda, b, ldb, c, ldc, pairs),
            4 => dot_product_block::<4, V>(a, lda, b, ldb, c, ldc, pairs),
            5 => dot_product_block::<5, V>(a, lda, b, ldb, c, ldc, pairs),
            _ => dot_product_block::<6, V>(a, lda, b, ldb, c, ldc, pairs),
        }
    }
}

/// `R` rows × `V` vectors of 16 columns of `C = A·B` (see [`dot_product_matmul`]).
///
/// # Safety
/// The CPU has AVX-512 BF16; A holds `R` rows of `pairs` words at stride `lda`, B `pairs` rows
/// of `16·V` words at stride `ldb`, C `R` rows of `16·V` floats at stride `ldc`.
#[inline]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn dot_product_block<const R: usize, const V: usize>(
    a: *const u32,
    lda: usize,
    b: *const u32,
    ldb: usize,
    c: *mut f32,
    ldc: usize,
    pairs: usize,
) {
    let mut acc = [[_mm512_setzero_ps(); V]; R];
    // SAFETY (whole body): every load and store is inside the extents of the contract.
    unsafe {
        for p in 0..pairs {
            let bv: [__m512bh; V] = std::array::from_fn(|j| {
                std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(
                    b.add(p * ldb + 16 * j).cast(),
                ))
            });
            for (i, row) in acc.iter_mut().enumerate() {
                let av = std::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi32(
                    *a.add(i * lda + p) as i32,
                ));
                for (r, bj) in row.iter_mut().zip(&bv) {
                    *r = _mm512_dpbf16_ps(*r, av, *bj);
                }
            }
        }
        for (i, row) in acc.iter().enumerate() {
            for (j, r) in row.iter().enumerate() {
                _mm512_storeu_ps(c.add(i * ldc + 16 * j), *r);
            }
        }
    }
}

/// One block of [`tile_matmul`]: output tiles (0, 0), (0, 1) with `two_cols`, (1, 0) with
/// `two_rows` and (1, 1) with both, in tmm0..tmm3 from A tiles tmm4, tmm5 and B tiles tmm6,
/// tmm7.
///
/// # Safety
/// As [`tile_matmul`], for the 16 or 32 rows of A and C and 16 or 32 columns of B and C used.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn tile_block(
    a: *const u8,
    lda: usize,
    b: *const u8,
    ldb: usize,
    c: *mut u8,
    ldc: usize,
    k: usize,
    two_rows: bool,
    two_cols: bool,
) {
    // SAFETY (whole body): tile loads read 16 rows of 64 bytes inside A (rows 0..16 or
    // 16..32 of the block, bytes 64·ks..) or B (rows 16·ks.., bytes 0..64 or 64..128), stores
    // write 16 rows of 64 bytes inside C; tmm0..tmm7 belong to the active session and compiled
    // code does not use tiles. Tiles of a missing row or column are neither loaded nor used.
    unsafe {
        asm!(
            "tilezero tmm0",
            "tilezero tmm1",
            "tilezero tmm2",
            "tilezero tmm3",
            options(nostack, nomem, preserves_flags)
        );
        for ks in 0..k / TILE_K_BF16 {
            let a0 = a.add(ks * 64);
            let b0 = b.add(ks * TILE * ldb);
            asm!(
                "tileloadd tmm4, [{a} + {lda}*1]",
                "tileloadd tmm6, [{b} + {ldb}*1]",
                "tdpbf16ps tmm0, tmm4, tmm6",
                a = in(reg) a0,
                b = in(reg) b0,
                lda = in(reg) lda,
                ldb = in(reg) ldb,
                options(nostack, readonly, preserves_flags)
            );
            if two_cols {
                asm!(
                    "tileloadd tmm7, [{b} + {ldb}*1]",
                    "tdpbf16ps tmm1, tmm4, tmm7",
                    b = in(reg) b0.add(64),
                    ldb = in(reg) ldb,
                    options(nostack, readonly, preserves_flags)
                );
            }
            if two_rows {
                asm!(
                    "tileloadd tmm5, [{a} + {lda}*1]",
                    "tdpbf16ps tmm2, tmm5, tmm6",
                    a = in(reg) a0.add(TILE * lda),
                    lda = in(reg) lda,
                    options(nostack, readonly, preserves_flags)
                );
                if two_cols {
                    asm!(
                        "tdpbf16ps tmm3, tmm5, tmm7",
                        options(nostack, nomem, preserves_flags)
                    );
                }
            }
        }
        asm!(
            "tilestored [{c} + {ldc}*1], tmm0",
            c = in(reg) c,
            ldc = in(reg) ldc,
            options(nostack, preserves_flags)
        );
        if two_cols {
            asm!(
                "tilestored [{c} + {ldc}*1], tmm1",
                c = in(reg) c.add(64),
                ldc = in(reg) ldc,
                options(nostack, preserves_flags)
            );
        }
        if two_rows {
            asm!(
                "tilestored [{c} + {ldc}*1], tmm2",
                c = in(reg) c.add(TILE * ldc),
                ldc = in(reg) ldc,
                options(nostack, preserves_flags)
            );
            if two_cols {
                asm!(
                    "tilestored [{c} + {ldc}*1], tmm3",
                    c = in(reg) c.add(TILE * ldc + 64),
                    ldc = in(reg) ldc,
                    options(nostack, preserves_flags)
                );
            }
        }
    }
}

/// Kᵀ of `heads` heads in `B`-tile layout, one `k_words` buffer per head: word `(p, j)` (row p,
/// `tokens_rows` words per row) holds token j's bf16 values of head columns `2p` and `2p + 1`.
/// Each 16 tokens × 16 column pairs block is converted row by row and transposed in registers;
/// blocks of 16 tokens go outside the heads, so the rows are read in order.
///
/// # Safety
/// The CPU has AVX-512 BF16 and `k_t` holds `heads × k_words` words.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
unsafe fn transpose_k<'a>(
    k_row: &impl Fn(usize, usize) -> &'a [f32],
    heads: usize,
    e: &Extents,
    k_t: &mut [u32],
) {
    assert!(k_t.len() >= heads * e.k_words());
    for j0 in (0..e.tokens).step_by(TILE) {
        for g in 0..heads {
            let head = &mut k_t[g * e.k_words()..(g + 1) * e.k_words()];
            for c0 in (0..e.head_k).step_by(TILE_K_BF16) {
                let mut rows = [_mm512_setzero_si512(); TILE];
                for (jj, r) in rows.iter_mut().enumerate() {
                    let j = j0 + jj;
                    if j >= e.tokens {
                        break;
                    }
                    *r = bf16_words(&k_row(g, j)[c0..]);
                }
                transpose_16x16(&mut rows);
                for (pp, r) in rows.iter().enumerate() {
                    let at = (c0 / 2 + pp) * e.tokens_rows + j0;
                    // SAFETY: row `c0 / 2 + pp < head_k / 2`, words j0..j0+16 ≤ tokens_rows.
                    unsafe { _mm512_storeu_si512(head[at..at + TILE].as_mut_ptr().cast(), *r) };
                }
            }
        }
    }
}

/// V of `heads` heads in `B`-tile layout, one `v_words` buffer per head: word `(p, c)` (row p,
/// `head_cols` words per row) holds tokens `2p` and `2p + 1`'s bf16 values of head column c
/// (zero for a token past the end).
///
/// # Safety
/// The CPU has AVX-512 BF16 and `v` holds `heads × v_words` words.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
unsafe fn interleave_v<'a>(
    v_row: &impl Fn(usize, usize) -> &'a [f32],
    heads: usize,
    e: &Extents,
    v: &mut [u32],
) {
    assert!(v.len() >= heads * e.v_words());
    let interleave = pair_interleave();
    for p in 0..e.tokens.div_ceil(2) {
        for g in 0..heads {
            let first = v_row(g, 2 * p);
            let second = (2 * p + 1 < e.tokens).then(|| v_row(g, 2 * p + 1));
            let row = &mut v[g * e.v_words() + p * e.head_cols..][..e.head_cols];
            for c0 in (0..e.head_dim).step_by(TILE) {
                let lo = bf16_half(&first[c0..]);
                let hi = second.map_or(_mm256_setzero_si256(), |r| bf16_half(&r[c0..]));
                let both = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi);
                let words = _mm512_permutexvar_epi16(interleave, both);
                // SAFETY: words c0..c0+16 ≤ head_cols of the row.
                unsafe { _mm512_storeu_si512(row[c0..c0 + TILE].as_mut_ptr().cast(), words) };
            }
        }
    }
}

/// `exp(scale · s[j] − max)` in place of `s[..valid]` (the values after it left as they are),
/// returning `1 / Σ` on every lane: the shared first passes of a softmax row.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
fn exponentials(s: &mut [f32], valid: usize, scale: f32) -> __m512 {
    assert!(valid <= s.len());
    let lanes = |c: usize| masks(valid.saturating_sub(c)).0;
    let scale_v = _mm512_set1_ps(scale);
    let mut max = _mm512_set1_ps(f32::NEG_INFINITY);
    for c in (0..valid).step_by(16) {
        let m = lanes(c);
        // SAFETY: the mask keeps lanes below `valid ≤ s.len()`.
        let x = unsafe { _mm512_maskz_loadu_ps(m, s.as_ptr().add(c)) };
        max = _mm512_mask_max_ps(max, m, max, _mm512_mul_ps(x, scale_v));
    }
    let max = _mm512_set1_ps(_mm512_reduce_max_ps(max));
    let mut sum = _mm512_setzero_ps();
    for c in (0..valid).step_by(16) {
        let m = lanes(c);
        // SAFETY: as above, for the load and the masked store.
        unsafe {
            let x = _mm512_maskz_loadu_ps(m, s.as_ptr().add(c));
            let y = _mm512_maskz_mov_ps(m, exp_ps(_mm512_fmsub_ps(x, scale_v, max)));
            sum = _mm512_add_ps(sum, y);
            _mm512_mask_storeu_ps(s.as_mut_ptr().add(c), m, y);
        }
    }
    _mm512_set1_ps(1.0 / _mm512_reduce_add_ps(sum))
}

/// One row of P: `softmax(scale · s[..valid])` in bf16, zeros after it to the end of `p`
/// (`2 · p.len() ≤ s.len()` values); `s` is left holding the unnormalised exponentials. In
/// registers with masked tails: the f32 softmax of the towers' kernels, written for any row
/// length, spent most of its time on the scalar tails and lane reductions of 50-value rows.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
fn softmax_row_bf16(s: &mut [f32], valid: usize, scale: f32, p: &mut [u32]) {
    assert!(2 * p.len() <= s.len() && p.len().is_multiple_of(TILE));
    let inv = exponentials(s, valid, scale);
    let lanes = |c: usize| masks(valid.saturating_sub(c)).0;
    for (w, c) in (0..2 * p.len()).step_by(32).enumerate() {
        // SAFETY: the masks keep lanes below `valid ≤ s.len()`; the store writes words
        // 16w..16w+16 < p.len() (a multiple of 16).
        unsafe {
            let lo = _mm512_maskz_loadu_ps(lanes(c), s.as_ptr().add(c));
            let hi = _mm512_maskz_loadu_ps(lanes(c + 16), s.as_ptr().add(c + 16));
            let words = _mm512_cvtne2ps_pbh(_mm512_mul_ps(hi, inv), _mm512_mul_ps(lo, inv));
            _mm512_storeu_si512(
                p.as_mut_ptr().add(16 * w).cast(),
                std::mem::transmute::<__m512bh, __m512i>(words),
            );
        }
    }
}

/// `exp(x)` on 16 lanes, the same range reduction and polynomial as the towers'
/// `exp_f32` (relative error about 1e-7), evaluated with FMAs.
#[inline]
#[target_feature(enable = "avx512f")]
fn exp_ps(x: __m512) -> __m512 {
    const ROUND: f32 = 12_582_912.0;
    let x = _mm512_min_ps(
        _mm512_max_ps(x, _mm512_set1_ps(-87.0)),
        _mm512_set1_ps(88.0),
    );
    let round = _mm512_set1_ps(ROUND);
    let shifted = _mm512_fmadd_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E), round);
    let n = _mm512_sub_ps(shifted, round);
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693_145_75), x);
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428_606_8e-6), r);
    let mut poly = _mm512_set1_ps(1.0 / 5040.0);
    for coefficient in [
        1.0 / 720.0,
        1.0 / 120.0,
        1.0 / 24.0,
        1.0 / 6.0,
        0.5,
        1.0,
        1.0,
    ] {
        poly = _mm512_fmadd_ps(poly, r, _mm512_set1_ps(coefficient));
    }
    // `shifted` lies in [2^23, 2^24): its low bits hold n + 2^22 exactly.
    let n_bits = _mm512_sub_epi32(_mm512_castps_si512(shifted), _mm512_castps_si512(round));
    let scale = _mm512_slli_epi32::<23>(_mm512_add_epi32(n_bits, _mm512_set1_epi32(127)));
    _mm512_mul_ps(poly, _mm512_castsi512_ps(scale))
}

/// The first 32 values of `x` (fewer: zeros after them) as 16 words of bf16 pairs.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
fn bf16_words(x: &[f32]) -> __m512i {
    let (lo_mask, hi_mask) = masks(x.len());
    // SAFETY: the masked loads read only the first `min(32, x.len())` values.
    let (lo, hi) = unsafe {
        (
            _mm512_maskz_loadu_ps(lo_mask, x.as_ptr()),
            _mm512_maskz_loadu_ps(hi_mask, x.as_ptr().wrapping_add(16)),
        )
    };
    // SAFETY: __m512bh and __m512i are both 64 bytes of plain bits.
    unsafe { std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(hi, lo)) }
}

/// The first 16 values of `x` (fewer: zeros after them) as 16 bf16.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
fn bf16_half(x: &[f32]) -> __m256i {
    // SAFETY: the masked load reads only the first `min(16, x.len())` values.
    let v = unsafe { _mm512_maskz_loadu_ps(masks(x.len()).0, x.as_ptr()) };
    // SAFETY: __m256bh and __m256i are both 32 bytes of plain bits.
    unsafe { std::mem::transmute::<__m256bh, __m256i>(_mm512_cvtneps_pbh(v)) }
}

/// Transposes 16 × 16 words in place: four rounds, each swapping the off-diagonal blocks of
/// size 8, 4, 2, then 1 between paired rows.
#[inline]
#[target_feature(enable = "avx512f")]
fn transpose_16x16(rows: &mut [__m512i; TILE]) {
    for block in [8usize, 4, 2, 1] {
        let (lo, hi) = swap_indices(block);
        for i in 0..TILE {
            if i & block != 0 {
                continue;
            }
            let (x, y) = (rows[i], rows[i + block]);
            rows[i] = _mm512_permutex2var_epi32(x, lo, y);
            rows[i + block] = _mm512_permutex2var_epi32(x, hi, y);
        }
    }
}

/// The `permutex2var` indices of one transpose round: the first row keeps its columns without
/// bit `block` and takes the second row's columns `c − block` for the others; the second row
/// takes the first's `c + block` and keeps its own.
#[inline]
#[target_feature(enable = "avx512f")]
fn swap_indices(block: usize) -> (__m512i, __m512i) {
    let mut lo = [0i32; TILE];
    let mut hi = [0i32; TILE];
    for c in 0..TILE {
        if c & block == 0 {
            lo[c] = c as i32;
            hi[c] = (c + block) as i32;
        } else {
            lo[c] = (16 + c - block) as i32;
            hi[c] = (16 + c) as i32;
        }
    }
    // SAFETY: both arrays hold 16 i32 (64 bytes), read unaligned.
    unsafe {
        (
            _mm512_loadu_si512(lo.as_ptr().cast()),
            _mm512_loadu_si512(hi.as_ptr().cast()),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::super::{
        attention_backward_amx_bf16, attention_bf16, bf16_to_f32, f32_to_bf16, Bf16Kernel,
    };

    /// (batch, tokens, width, heads, causal): tokens that fill no tile, one tile, odd pairs;
    /// head widths of 64, 16 and 80 (ViT-H); whole row tiles stored straight into the output
    /// and partial ones through the tail; whole sequences per item, and a group of heads cut
    /// short.
    const SHAPES: [(usize, usize, usize, usize, bool); 8] = [
        (2, 50, 128, 2, false),
        (2, 77, 64, 4, true),
        (1, 1, 64, 1, false),
        (3, 17, 160, 2, true),
        (1, 33, 160, 2, false),
        (8, 20, 192, 3, false),
        (5, 40, 256, 4, true),
        (1, 23, 320, 5, false),
    ];

    fn bf16(x: f32) -> f64 {
        bf16_to_f32(f32_to_bf16(x)) as f64
    }

    /// Attention in f64 from bf16-rounded q, k, v and probabilities: what the tiles compute,
    /// up to the f32 accumulation order and exp's last bits.
    fn reference(
        qkv: &[f32],
        batch: usize,
        tokens: usize,
        width: usize,
        heads: usize,
        causal: bool,
    ) -> Vec<f32> {
        let d = width / heads;
        let row = 3 * width;
        let scale = 1.0 / (d as f64).sqrt();
        let mut out = vec![0f32; batch * tokens * width];
        for b in 0..batch {
            for h in 0..heads {
                let at = |j: usize, part: usize, c: usize| {
                    bf16(qkv[(b * tokens + j) * row + part * width + h * d + c])
                };
                for i in 0..tokens {
                    let valid = if causal { i + 1 } else { tokens };
                    let s: Vec<f64> = (0..valid)
                        .map(|j| (0..d).map(|c| at(i, 0, c) * at(j, 1, c)).sum::<f64>() * scale)
                        .collect();
                    let max = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = s.iter().map(|v| (v - max).exp()).collect();
                    let sum: f64 = e.iter().sum();
                    let p: Vec<f64> = e.iter().map(|v| bf16((v / sum) as f32)).collect();
                    for c in 0..d {
                        let o: f64 = (0..valid).map(|j| p[j] * at(j, 2, c)).sum();
                        out[(b * tokens + i) * width + h * d + c] = o as f32;
                    }
                }
            }
        }
        out
    }

    /// Both engines (AMX tiles and `vdpbf16ps`), each where the CPU has it; elsewhere the entry
    /// point declines, so the caller keeps its f32 path.
    #[test]
    fn bf16_attention_matches_bf16_rounded_reference() {
        for kernel in [Bf16Kernel::Amx, Bf16Kernel::Avx512Bf16] {
            if !kernel.is_available() {
                assert!(attention_bf16(kernel, &[0.0; 3], 1, 1, 1, 1, false).is_none());
                continue;
            }
            let mut state = 0x9E37_79B9_7F4A_7C15u64;
            for (batch, tokens, width, heads, causal) in SHAPES {
                let qkv: Vec<f32> = (0..batch * tokens * 3 * width)
                    .map(|_| {
                        state = state
                            .wrapping_mul(6364136223846793005)
                            .wrapping_add(1442695040888963407);
                        ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 4.0
                    })
                    .collect();
                let got =
                    attention_bf16(kernel, &qkv, batch, tokens, width, heads, causal).unwrap();
                let want = reference(&qkv, batch, tokens, width, heads, causal);
                let worst = got
                    .iter()
                    .zip(&want)
                    .map(|(g, w)| (g - w).abs())
                    .fold(0f32, f32::max);
                let what = format!(
                    "{}: batch {batch}, tokens {tokens}, width {width}, heads {heads}",
                    kernel.name()
                );
                assert!(worst < 2e-3, "{what}: worst difference {worst}");
                assert!(got.iter().all(|v| v.is_finite()), "{what}");
            }
        }
    }

    /// The fp32 and portable kernels have no bf16 attention: the caller's f32 path runs.
    #[test]
    fn bf16_attention_declines_other_kernels() {
        for kernel in [Bf16Kernel::Portable, Bf16Kernel::Avx2, Bf16Kernel::Avx512] {
            assert!(attention_bf16(kernel, &[0.0; 3], 1, 1, 1, 1, false).is_none());
        }
    }

    /// The gradient of `qkv` in f64 from the operands the tiles read: q, k, v and the output's
    /// gradient rounded to bf16, P recomputed from them, rounded for `dV = Pᵀ·dO`, and
    /// `s·dS` rounded for `dQ` and `dK`.
    fn backward_reference(
        qkv: &[f32],
        d_out: &[f32],
        (batch, tokens, width, heads, causal): (usize, usize, usize, usize, bool),
    ) -> Vec<f32> {
        let d = width / heads;
        let row = 3 * width;
        let scale = 1.0 / (d as f64).sqrt();
        let mut grad = vec![0f32; qkv.len()];
        for b in 0..batch {
            for h in 0..heads {
                let at = |j: usize, part: usize, c: usize| {
                    bf16(qkv[(b * tokens + j) * row + part * width + h * d + c])
                };
                let d_o = |i: usize, c: usize| bf16(d_out[(b * tokens + i) * width + h * d + c]);
                let mut p = vec![vec![0f64; tokens]; tokens];
                let mut d_s = vec![vec![0f64; tokens]; tokens];
                for i in 0..tokens {
                    let valid = if causal { i + 1 } else { tokens };
                    let s: Vec<f64> = (0..valid)
                        .map(|j| (0..d).map(|c| at(i, 0, c) * at(j, 1, c)).sum::<f64>() * scale)
                        .collect();
                    let max = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    let sum: f64 = s.iter().map(|v| (v - max).exp()).sum();
                    for j in 0..valid {
                        p[i][j] = (s[j] - max).exp() / sum;
                    }
                    let d_p: Vec<f64> = (0..valid)
                        .map(|j| (0..d).map(|c| d_o(i, c) * at(j, 2, c)).sum())
                        .collect();
                    let dot: f64 = (0..valid).map(|j| p[i][j] * d_p[j]).sum();
                    for j in 0..valid {
                        d_s[i][j] = bf16((scale * p[i][j] * (d_p[j] - dot)) as f32);
                    }
                }
                for j in 0..tokens {
                    for c in 0..d {
                        let base = (b * tokens + j) * row + h * d + c;
                        grad[base] =
                            (0..tokens).map(|i| d_s[j][i] * at(i, 1, c)).sum::<f64>() as f32;
                        grad[base + width] =
                            (0..tokens).map(|i| d_s[i][j] * at(i, 0, c)).sum::<f64>() as f32;
                        grad[base + 2 * width] = (0..tokens)
                            .map(|i| bf16(p[i][j] as f32) * d_o(i, c))
                            .sum::<f64>() as f32;
                    }
                }
            }
        }
        grad
    }

    #[test]
    fn amx_attention_gradient_matches_bf16_rounded_reference() {
        if !Bf16Kernel::Amx.is_available() {
            assert!(attention_backward_amx_bf16(&[0.0; 3], &[0.0], 1, 1, 1, 1, false).is_none());
            return;
        }
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        let mut random = |n: usize| -> Vec<f32> {
            (0..n)
                .map(|_| {
                    state = state
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 4.0
                })
                .collect()
        };
        for shape in SHAPES {
            let (batch, tokens, width, heads, causal) = shape;
            let qkv = random(batch * tokens * 3 * width);
            let d_out = random(batch * tokens * width);
            let got =
                attention_backward_amx_bf16(&qkv, &d_out, batch, tokens, width, heads, causal)
                    .unwrap();
            let want = backward_reference(&qkv, &d_out, shape);
            let largest = want.iter().fold(0f32, |m, v| m.max(v.abs()));
            let worst = got
                .iter()
                .zip(&want)
                .map(|(g, w)| (g - w).abs())
                .fold(0f32, f32::max);
            let what = format!("batch {batch}, tokens {tokens}, width {width}, heads {heads}");
            // One bf16 step of a rounded score gradient (2⁻⁸ relative) that the f32 dS and the
            // f64 reference round to neighbouring values moves a result by far less than this.
            assert!(
                worst <= 2e-3 * largest.max(1.0),
                "{what}, causal {causal}: worst difference {worst} (largest {largest})"
            );
            assert!(got.iter().all(|v| v.is_finite()), "{what}");
            // Every value is written: the gradient of a token's k and v under causal masking
            // is not all zero except for what the reference makes zero.
            let zeros = |v: &[f32]| v.iter().filter(|x| **x == 0.0).count();
            assert_eq!(zeros(&got), zeros(&want), "{what}, causal {causal}");
        }
    }
}

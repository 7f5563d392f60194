//! Packed weights ([`PackedBf16`], [`PackedInt8`]) in 64-byte aligned word buffers, owned or
//! in place in a mapped file, and the per-thread scratch that activation packing writes into.

use super::*;

/// `u32` words whose first element is 64-byte aligned: owned, or in place in a read-only
/// memory-mapped file (a converted-weights cache, see `super::converted`).
pub(super) struct AlignedWords {
    pub(super) store: WordStore,
    pub(super) len: usize,
}

pub(super) enum WordStore {
    /// The words start `off` elements into the vector.
    Owned { v: Vec<u32>, off: usize },
    /// The words start `byte_offset` bytes into the mapping (checked 64-byte aligned and in
    /// bounds when built).
    Mapped {
        map: Arc<memmap2::Mmap>,
        byte_offset: usize,
    },
}

pub(super) fn align_off(ptr: *const u32) -> usize {
    // Vec<u32> is 4-byte aligned, so the byte distance is a multiple of 4.
    (ptr as usize).wrapping_neg() % 64 / 4
}

/// Asks the kernel to back the whole 2 MiB pages inside `buf` with huge pages (where
/// transparent huge pages are enabled on request, as by default): a packed weight is written
/// once, right after it is allocated, and faulting it in 4 KiB at a time cost more system time
/// than the packing itself (ViT-B/32's fp32 panels: 0.25 s of 0.35 s for one `gclip classify`).
fn ask_for_huge_pages<T>(buf: &mut [MaybeUninit<T>]) {
    #[cfg(target_os = "linux")]
    {
        const HUGE: usize = 2 << 20;
        let start = (buf.as_mut_ptr() as usize).next_multiple_of(HUGE);
        let end = (buf.as_mut_ptr() as usize + std::mem::size_of_val(buf)) / HUGE * HUGE;
        if end > start {
            // SAFETY: the range lies inside `buf`, memory this process owns and has not yet
            // written; MADV_HUGEPAGE changes only how it is backed, never its contents.
            unsafe {
                libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = buf;
}

impl AlignedWords {
    pub(super) fn zeroed(len: usize) -> Self {
        let v = vec![0u32; len + 16];
        let off = align_off(v.as_ptr());
        Self {
            store: WordStore::Owned { v, off },
            len,
        }
    }
    /// `len` words written by `fill`, without zeroing them first (the packs rewrite every word
    /// of a buffer as large as the weights at each training step; zeroing it was a full extra
    /// pass over the memory).
    ///
    /// # Safety
    /// `fill` writes every element of the slice it is given.
    pub(super) unsafe fn filled_by(len: usize, fill: impl FnOnce(&mut [MaybeUninit<u32>])) -> Self {
        let mut v = Vec::<u32>::with_capacity(len + 16);
        ask_for_huge_pages(v.spare_capacity_mut());
        let off = align_off(v.as_ptr());
        let spare = &mut v.spare_capacity_mut()[..len + 16];
        let (head, rest) = spare.split_at_mut(off);
        let (words, tail) = rest.split_at_mut(len);
        head.iter_mut().chain(tail).for_each(|w| {
            w.write(0);
        });
        fill(words);
        // SAFETY: the first `len + 16 <= capacity` elements are initialised: the padding just
        // above, the words by `fill` (the caller's contract).
        unsafe { v.set_len(len + 16) };
        Self {
            store: WordStore::Owned { v, off },
            len,
        }
    }
    /// `len` words at `byte_offset` in `map`, which must lie inside it and be 64-byte aligned.
    pub(super) fn mapped(
        map: Arc<memmap2::Mmap>,
        byte_offset: usize,
        len: usize,
    ) -> Result<Self, String> {
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
    pub(super) fn is_mapped(&self) -> bool {
        matches!(self.store, WordStore::Mapped { .. })
    }
    pub(super) fn words(&self) -> &[u32] {
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
    pub(super) fn words_mut(&mut self) -> &mut [u32] {
        match &mut self.store {
            WordStore::Owned { v, off } => &mut v[*off..*off + self.len],
            WordStore::Mapped { .. } => &mut [],
        }
    }
    pub(super) fn bytes(&self) -> &[u8] {
        let w = self.words();
        // SAFETY: `w` is a valid, initialised `[u32]`; u32 has no padding and
        // every byte pattern is a valid u8; u8 needs alignment 1; the byte
        // length is exactly `4 * w.len()` and the borrow keeps `self` alive.
        unsafe { std::slice::from_raw_parts(w.as_ptr().cast::<u8>(), w.len() * 4) }
    }
    /// `bytes.len()` must be a multiple of 4 (callers check the exact length).
    pub(super) fn from_bytes(bytes: &[u8]) -> Self {
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
    pub(super) static SCRATCH: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
    /// The hidden activations of a fused MLP ([`mlp_bf16`]), beside its input's scratch.
    pub(super) static HIDDEN_SCRATCH: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` on a 64-byte aligned scratch slice of `len` words (contents
/// unspecified) that is kept per thread between calls.
pub(super) fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [u32]) -> R) -> R {
    with_scratch_in(&SCRATCH, len, f)
}

pub(super) fn with_scratch_in<R>(
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

pub(super) fn checked_dims(a: usize, b: usize, what: &str) -> Result<usize, String> {
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
    pub(super) buf: AlignedWords,
    pub(super) in_dim: usize,
    pub(super) out_dim: usize,
}

/// K-pairs `kp0..` of a row-major `[in_dim, out_dim]` matrix into their words of every
/// [`PackedBf16`] panel (`panels[p]` holds panel `p`'s words for those pairs, `NR` per pair):
/// zero beyond `out_dim`, and for an odd `in_dim` in the last pair's high halves. Each pair of
/// rows is read once, front to back.
#[inline(always)]
fn pack_pair_rows_generic(
    w: &[f32],
    in_dim: usize,
    out_dim: usize,
    kp0: usize,
    panels: &mut [&mut [MaybeUninit<u32>]],
) {
    let pair = |lo: f32, hi: f32| f32_to_bf16(lo) as u32 | (f32_to_bf16(hi) as u32) << 16;
    let pairs = panels.first().map_or(0, |p| p.len() / NR);
    let zeros = vec![0f32; out_dim];
    for i in 0..pairs {
        let kp = kp0 + i;
        let even = &w[2 * kp * out_dim..][..out_dim];
        let odd = if 2 * kp + 1 < in_dim {
            &w[(2 * kp + 1) * out_dim..][..out_dim]
        } else {
            &zeros[..]
        };
        for (p, panel) in panels.iter_mut().enumerate() {
            let n0 = p * NR;
            let words = &mut panel[i * NR..][..NR];
            let width = NR.min(out_dim - n0);
            let (even, odd) = (&even[n0..n0 + width], &odd[n0..n0 + width]);
            match (<&[f32; NR]>::try_from(even), <&[f32; NR]>::try_from(odd)) {
                // A whole panel over a constant width: the loop becomes vector code.
                (Ok(even), Ok(odd)) => {
                    for ((word, &lo), &hi) in words.iter_mut().zip(even).zip(odd) {
                        word.write(pair(lo, hi));
                    }
                }
                _ => {
                    for ((word, &lo), &hi) in words.iter_mut().zip(even).zip(odd) {
                        word.write(pair(lo, hi));
                    }
                    words[width..].iter_mut().for_each(|word| {
                        word.write(0);
                    });
                }
            }
        }
    }
}

crate::simd_dispatch!(fn pack_pair_rows(w: &[f32], in_dim: usize, out_dim: usize, kp0: usize, panels: &mut [&mut [MaybeUninit<u32>]]) = pack_pair_rows_generic);

pub(super) fn bf16_words(in_dim: usize, out_dim: usize) -> Result<usize, String> {
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
        let k2 = in_dim.div_ceil(2);
        let fill = |buf: &mut [MaybeUninit<u32>]| {
            if k2 == 0 {
                return;
            }
            buf.par_chunks_mut(k2 * NR)
                .enumerate()
                .for_each(|(p, panel)| {
                    // Each output channel's row is converted whole (vectorised), then its K-pairs
                    // are laid into the panel's column for that channel; columns past `out_dim`
                    // are zero.
                    let mut halves = vec![0u16; 2 * k2];
                    for j in 0..NR {
                        if p * NR + j < out_dim {
                            bf16_row(w.row(p * NR + j), &mut halves[..in_dim]);
                        } else {
                            halves.fill(0);
                        }
                        for (kp, pair) in halves.chunks_exact(2).enumerate() {
                            panel[kp * NR + j].write(pair[0] as u32 | (pair[1] as u32) << 16);
                        }
                    }
                });
        };
        // SAFETY: the buffer is `panels × k2 × NR` words (none when K or N is 0), and each
        // panel's task writes word `kp * NR + j` for every K-pair `kp < k2` and column `j < NR`.
        let buf = unsafe { AlignedWords::filled_by(bf16_words(in_dim, out_dim)?, fill) };
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
        let k2 = in_dim.div_ceil(2);
        let fill = |buf: &mut [MaybeUninit<u32>]| {
            if k2 == 0 || out_dim == 0 {
                return;
            }
            // Each task takes a range of K-pairs and writes their words into every panel: the
            // rows are read front to back (panel by panel, each K-pair's pieces of a panel's
            // width are strided reads, at half the speed on ViT-B/32's shapes).
            let tasks = rayon::current_num_threads().clamp(1, k2);
            let per = k2.div_ceil(tasks);
            let mut ranges: Vec<Vec<&mut [MaybeUninit<u32>]>> =
                (0..tasks).map(|_| Vec::new()).collect();
            for panel in buf.chunks_mut(k2 * NR) {
                for (range, words) in ranges.iter_mut().zip(panel.chunks_mut(per * NR)) {
                    range.push(words);
                }
            }
            ranges
                .into_par_iter()
                .enumerate()
                .for_each(|(t, mut panels)| {
                    pack_pair_rows(w, in_dim, out_dim, t * per, &mut panels)
                });
        };
        // SAFETY: the buffer is `panels × k2 × NR` words (an empty one when K or N is 0), and
        // every panel's words for every K-pair are in exactly one task's ranges, whose
        // `pack_pair_rows` writes all `NR` words of each pair it is given.
        let buf = unsafe { AlignedWords::filled_by(bf16_words(in_dim, out_dim)?, fill) };
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

/// f32 weights packed for the f32 panel kernel ([`linear_f32_fused`]): the layout of
/// [`PackedBf16`] with one f32 per K-step instead of a bf16 pair, panel `p`, K-step `k`, column
/// `j`: word = bits of `w[k][p*NR+j]`, N padded to a multiple of `NR` with zeros. A second copy
/// of weights that an fp32 load otherwise reads in place: made only for products of many rows,
/// where reading the weights in PyTorch's layout (or having gemm repack them per call) costs
/// more than the copy.
#[derive(Clone, Debug, PartialEq)]
pub struct PackedF32 {
    pub(super) buf: AlignedWords,
    pub(super) in_dim: usize,
    pub(super) out_dim: usize,
}

fn f32_words(in_dim: usize, out_dim: usize) -> Result<usize, String> {
    checked_dims(
        out_dim.div_ceil(NR),
        checked_dims(in_dim, NR, "f32 pack")?,
        "f32 pack",
    )
}

impl PackedF32 {
    /// Packs a weight held in row blocks (`[out_dim, in_dim]`, PyTorch's `nn.Linear` layout);
    /// panels are packed in parallel.
    pub(crate) fn pack_rows(w: &RowBlocks) -> Result<Self, String> {
        let (in_dim, out_dim) = (w.cols(), w.rows());
        let words = f32_words(in_dim, out_dim)?;
        let fill = |buf: &mut [MaybeUninit<u32>]| {
            if in_dim == 0 {
                return;
            }
            buf.par_chunks_mut(in_dim * NR)
                .enumerate()
                .for_each(|(p, panel)| {
                    for j in 0..NR {
                        let n = p * NR + j;
                        if n < out_dim {
                            for (k, &v) in w.row(n).iter().enumerate() {
                                panel[k * NR + j].write(v.to_bits());
                            }
                        } else {
                            for k in 0..in_dim {
                                panel[k * NR + j].write(0);
                            }
                        }
                    }
                });
        };
        // SAFETY: the buffer is `panels × in_dim × NR` words (none when K or N is 0), and each
        // panel's task writes word `k * NR + j` for every K-step `k < in_dim` and column `j < NR`.
        let buf = unsafe { AlignedWords::filled_by(words, fill) };
        Ok(Self {
            buf,
            in_dim,
            out_dim,
        })
    }

    /// Packs row-major `w[out_dim][in_dim]`.
    pub fn pack_out_in(w: &[f32], in_dim: usize, out_dim: usize) -> Result<Self, String> {
        if w.len() != checked_dims(in_dim, out_dim, "f32 pack")? {
            return Err(format!(
                "f32 pack: weight has {} values, expected {out_dim} x {in_dim}",
                w.len()
            ));
        }
        Self::pack_rows(&RowBlocks::whole(w, out_dim, in_dim))
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
    /// Uses packed words in place: `in_dim × out_dim` weights at `byte_offset` in `map`, as
    /// [`Self::as_bytes`] wrote them (a converted-weights cache file).
    pub(crate) fn from_mapped(
        map: Arc<memmap2::Mmap>,
        byte_offset: usize,
        in_dim: usize,
        out_dim: usize,
    ) -> Result<Self, String> {
        Ok(Self {
            buf: AlignedWords::mapped(map, byte_offset, f32_words(in_dim, out_dim)?)?,
            in_dim,
            out_dim,
        })
    }
    /// Whether the words are used in place in a mapped file.
    pub fn is_mapped(&self) -> bool {
        self.buf.is_mapped()
    }
    /// The weight back in row-major `[out_dim][in_dim]` (the packing keeps every value's bits).
    pub(crate) fn unpack_out_in(&self) -> Vec<f32> {
        let (k_len, words) = (self.in_dim, self.buf.words());
        let mut w = Vec::with_capacity(self.in_dim * self.out_dim);
        for n in 0..self.out_dim {
            let panel = &words[(n / NR) * k_len * NR..];
            w.extend((0..k_len).map(|k| f32::from_bits(panel[k * NR + n % NR])));
        }
        w
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
    pub(super) buf: AlignedWords,
    pub(super) in_dim: usize,
    pub(super) out_dim: usize,
}

pub(super) fn int8_words(in_dim: usize, out_dim: usize) -> Result<usize, String> {
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
    pub(super) fn npad(&self) -> usize {
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
    pub(super) fn corr(&self) -> &[i32] {
        let w = &self.buf.words()[..self.npad()];
        // SAFETY: i32 and u32 have identical size and alignment and every bit
        // pattern is valid for both; the length is unchanged.
        unsafe { std::slice::from_raw_parts(w.as_ptr().cast::<i32>(), w.len()) }
    }
    pub(super) fn scales(&self) -> &[f32] {
        let np = self.npad();
        let w = &self.buf.words()[np..2 * np];
        // SAFETY: f32 and u32 have identical size and alignment and every bit
        // pattern is a valid f32; the length is unchanged.
        unsafe { std::slice::from_raw_parts(w.as_ptr().cast::<f32>(), w.len()) }
    }
    pub(super) fn data(&self) -> &[u32] {
        &self.buf.words()[2 * self.npad()..]
    }
}

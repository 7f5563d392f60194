//! Vectors as 8-bit codes for scans: a quarter of the memory traffic of f32, which is what a scan
//! is bound by. A scan ranks by the codes, then re-ranks its best few by the f32 vectors, so the
//! scores it returns are exact cosines.
//!
//! Each vector `v` is stored as `round(v · 127 / max|v|)` with its scale `max|v| / 127`; the
//! code dot product times both scales approximates `v · q` within about 1e-3 for unit 512-d
//! vectors, far less than the gaps the re-ranking window covers.

/// Writes the codes of `v` and returns its scale (0 for a zero or non-finite vector).
pub(crate) fn quantize(v: &[f32], codes: &mut [i8]) -> f32 {
    let max = v.iter().fold(0f32, |m, x| m.max(x.abs()));
    if !max.is_finite() || max <= 0.0 {
        codes.fill(0);
        return 0.0;
    }
    let inv = 127.0 / max;
    for (c, x) in codes.iter_mut().zip(v) {
        *c = (x * inv).round().clamp(-127.0, 127.0) as i8;
    }
    max / 127.0
}

/// Asks the CPU to start loading `data` into cache, one request per 64-byte line.
#[inline(always)]
pub(crate) fn prefetch<T>(data: &[T]) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let start = data.as_ptr().cast::<u8>();
        for offset in (0..std::mem::size_of_val(data)).step_by(64) {
            // SAFETY: prefetching is a hint that never faults; the address is inside `data`.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(start.add(offset).cast()) };
        }
    }
}

/// Integer dot products of `query` with the code rows `rows` (each `dim` long) of `codes`.
#[inline(always)]
fn dot_rows_generic(codes: &[i8], dim: usize, query: &[i8], rows: &[u32], out: &mut [i32]) {
    const LANES: usize = 32;
    // Scattered rows (a filter's candidates) defeat the hardware prefetcher.
    const AHEAD: usize = 8;
    for (i, (o, &r)) in out.iter_mut().zip(rows).enumerate() {
        if let Some(&next) = rows.get(i + AHEAD) {
            let next = next as usize * dim;
            if let Some(row) = codes.get(next..next + dim) {
                prefetch(row);
            }
        }
        let start = r as usize * dim;
        let Some(row) = codes.get(start..start + dim) else {
            *o = 0;
            continue;
        };
        // Independent lanes of i16 products summed in i32: the shape the compiler turns into
        // multiply-add instructions.
        let mut acc = [0i32; LANES];
        let (a, b) = (row.chunks_exact(LANES), query.chunks_exact(LANES));
        let tail: i32 = a
            .remainder()
            .iter()
            .zip(b.remainder())
            .map(|(&x, &y)| x as i32 * y as i32)
            .sum();
        for (x, y) in a.zip(b) {
            for i in 0..LANES {
                acc[i] += (x[i] as i16 * y[i] as i16) as i32;
            }
        }
        *o = acc.iter().sum::<i32>() + tail;
    }
}

gclip::simd_dispatch!(pub(crate) fn dot_rows(codes: &[i8], dim: usize, query: &[i8], rows: &[u32], out: &mut [i32]) = dot_rows_generic);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_dot_products_approximate_the_float_ones() {
        let dim = 512;
        let data = crate::bench::random_unit_vectors(200, dim, 3);
        let q = crate::bench::random_unit_vectors(1, dim, 4);
        let mut codes = vec![0i8; data.len()];
        let scales: Vec<f32> = data
            .chunks_exact(dim)
            .zip(codes.chunks_exact_mut(dim))
            .map(|(v, c)| quantize(v, c))
            .collect();
        let mut qc = vec![0i8; dim];
        let qs = quantize(&q, &mut qc);
        let rows: Vec<u32> = (0..200).collect();
        let mut out = vec![0i32; 200];
        dot_rows(&codes, dim, &qc, &rows, &mut out);
        let mut generic = vec![0i32; 200];
        dot_rows_generic(&codes, dim, &qc, &rows, &mut generic);
        assert_eq!(out, generic);
        let mut worst = 0f32;
        for (r, v) in data.chunks_exact(dim).enumerate() {
            let exact = crate::document::dot(v, &q);
            let approx = out[r] as f32 * scales[r] * qs;
            worst = worst.max((exact - approx).abs());
        }
        assert!(worst < 2e-3, "worst error {worst}");
        assert_eq!(quantize(&[0.0; 4], &mut [1i8; 4]), 0.0);
    }
}

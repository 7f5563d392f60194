//! Brute-force nearest neighbours: every vector scored against the query, in parallel, with a
//! bounded heap per chunk.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;

use rayon::prelude::*;

use crate::document::dot;

/// A score and a row, ordered by score then row (so that ties are deterministic).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scored {
    pub score: f32,
    pub row: usize,
}

impl Eq for Scored {}

impl Ord for Scored {
    fn cmp(&self, other: &Self) -> Ordering {
        self.score
            .total_cmp(&other.score)
            .then_with(|| other.row.cmp(&self.row))
    }
}

impl PartialOrd for Scored {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Keeps the `k` best of what it is given.
pub struct TopK {
    k: usize,
    heap: BinaryHeap<Reverse<Scored>>,
}

impl TopK {
    pub fn new(k: usize) -> Self {
        Self {
            k,
            // A huge `k` (a user's limit) must not allocate up front.
            heap: BinaryHeap::with_capacity(k.min(4096) + 1),
        }
    }

    #[inline]
    pub fn push(&mut self, s: Scored) {
        if self.heap.len() < self.k {
            self.heap.push(Reverse(s));
        } else if let Some(Reverse(worst)) = self.heap.peek() {
            if s > *worst {
                self.heap.pop();
                self.heap.push(Reverse(s));
            }
        }
    }

    /// Best first.
    pub fn into_sorted(self) -> Vec<Scored> {
        let mut v: Vec<Scored> = self.heap.into_iter().map(|Reverse(s)| s).collect();
        v.sort_by(|a, b| b.cmp(a));
        v
    }
}

/// The `k` rows of `matrix` (rows of `dim` floats) with the largest dot product with `query`,
/// among those that `keep` accepts; best first.
pub fn top_k(
    matrix: &[f32],
    dim: usize,
    query: &[f32],
    k: usize,
    keep: &(dyn Fn(usize) -> bool + Sync),
) -> Vec<Scored> {
    let rows = matrix.len().checked_div(dim).unwrap_or(0);
    scan(rows, &|i| i, matrix, dim, query, k, keep)
}

/// [`top_k`] over the given rows only (a filter's candidates).
pub fn top_k_of_rows(
    matrix: &[f32],
    dim: usize,
    query: &[f32],
    k: usize,
    rows: &[u32],
    keep: &(dyn Fn(usize) -> bool + Sync),
) -> Vec<Scored> {
    scan(
        rows.len(),
        &|i| rows[i] as usize,
        matrix,
        dim,
        query,
        k,
        keep,
    )
}

/// Vectors also held as 8-bit codes ([`crate::quant`]), row for row with the f32 matrix.
#[derive(Clone, Copy)]
pub struct Quantized<'a> {
    pub codes: &'a [i8],
    pub scales: &'a [f32],
}

/// [`top_k`] (or [`top_k_of_rows`] with `rows`) ranking by the 8-bit codes, then re-ranking the
/// best `4k + 32` by the f32 vectors: about a quarter of the memory traffic, exact scores.
#[allow(clippy::too_many_arguments)]
pub fn top_k_quantized(
    quantized: Quantized<'_>,
    matrix: &[f32],
    dim: usize,
    query: &[f32],
    k: usize,
    rows: Option<&[u32]>,
    keep: &(dyn Fn(usize) -> bool + Sync),
) -> Vec<Scored> {
    if k == 0 || dim == 0 {
        return Vec::new();
    }
    let mut query_codes = vec![0i8; dim];
    let query_scale = crate::quant::quantize(query, &mut query_codes);
    let count = rows.map_or(matrix.len() / dim, <[u32]>::len);
    let window = k.saturating_mul(4).saturating_add(32);
    let best = best_of_chunks(count, window, &|range, top| {
        let kept: Vec<u32> = match rows {
            Some(rows) => rows[range]
                .iter()
                .copied()
                .filter(|&r| keep(r as usize))
                .collect(),
            None => range
                .map(|r| r as u32)
                .filter(|&r| keep(r as usize))
                .collect(),
        };
        let mut dots = vec![0i32; kept.len()];
        crate::quant::dot_rows(quantized.codes, dim, &query_codes, &kept, &mut dots);
        for (&r, &d) in kept.iter().zip(&dots) {
            top.push(Scored {
                score: d as f32 * quantized.scales[r as usize] * query_scale,
                row: r as usize,
            });
        }
    });
    let mut top = TopK::new(k);
    for s in best {
        top.push(Scored {
            score: dot(&matrix[s.row * dim..(s.row + 1) * dim], query),
            row: s.row,
        });
    }
    top.into_sorted()
}

/// Rows ahead of the one being scored whose memory is requested early: scattered rows (a
/// filter's candidates) defeat the hardware prefetcher, which does not cross pages.
const PREFETCH_AHEAD: usize = 8;

/// Asks the CPU to start loading a row into cache.
#[inline(always)]
fn prefetch_row(matrix: &[f32], row: usize, dim: usize) {
    if let Some(slice) = matrix.get(row * dim..(row + 1) * dim) {
        crate::quant::prefetch(slice);
    }
}

/// Scores rows `row_of(0..count)` in parallel chunks, each keeping its own best `k`.
fn scan(
    count: usize,
    row_of: &(dyn Fn(usize) -> usize + Sync),
    matrix: &[f32],
    dim: usize,
    query: &[f32],
    k: usize,
    keep: &(dyn Fn(usize) -> bool + Sync),
) -> Vec<Scored> {
    if k == 0 || dim == 0 {
        return Vec::new();
    }
    best_of_chunks(count, k, &|range, top| {
        let end = range.end;
        for i in range {
            if i + PREFETCH_AHEAD < end {
                prefetch_row(matrix, row_of(i + PREFETCH_AHEAD), dim);
            }
            let row = row_of(i);
            if keep(row) {
                top.push(Scored {
                    score: dot(&matrix[row * dim..(row + 1) * dim], query),
                    row,
                });
            }
        }
    })
}

/// The best `k` of `0..count`, scored in parallel chunks of 4,096 by `score_chunk` (which
/// pushes into its chunk's own best `k`), then merged; best first.
fn best_of_chunks(
    count: usize,
    k: usize,
    score_chunk: &(dyn Fn(std::ops::Range<usize>, &mut TopK) + Sync),
) -> Vec<Scored> {
    const CHUNK: usize = 4096;
    let partial: Vec<Vec<Scored>> = (0..count.div_ceil(CHUNK))
        .into_par_iter()
        .map(|c| {
            let mut top = TopK::new(k);
            score_chunk(c * CHUNK..count.min((c + 1) * CHUNK), &mut top);
            top.into_sorted()
        })
        .collect();
    let mut top = TopK::new(k);
    for s in partial.into_iter().flatten() {
        top.push(s);
    }
    top.into_sorted()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_equals_full_sort_with_and_without_filter() {
        let dim = 7;
        let n = 10_000;
        let mut state = 12345u64;
        let mut rnd = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % 10_000) as f32 / 5000.0 - 1.0
        };
        let matrix: Vec<f32> = (0..n * dim).map(|_| rnd()).collect();
        let q: Vec<f32> = (0..dim).map(|_| rnd()).collect();
        let mut all: Vec<Scored> = (0..n)
            .map(|row| Scored {
                score: dot(&matrix[row * dim..(row + 1) * dim], &q),
                row,
            })
            .collect();
        all.sort_by(|a, b| b.cmp(a));
        let got = top_k(&matrix, dim, &q, 25, &|_| true);
        assert_eq!(got, all[..25].to_vec());
        let odd: Vec<Scored> = all.iter().filter(|s| s.row % 2 == 1).copied().collect();
        let got = top_k(&matrix, dim, &q, 25, &|r| r % 2 == 1);
        assert_eq!(got, odd[..25].to_vec());
        assert_eq!(top_k(&matrix, dim, &q, 5, &|r| r == 3).len(), 1);
        let rows: Vec<u32> = (0..n as u32).filter(|r| r % 2 == 1).collect();
        let got = top_k_of_rows(&matrix, dim, &q, 25, &rows, &|_| true);
        assert_eq!(got, odd[..25].to_vec());
        let got = top_k_of_rows(&matrix, dim, &q, 25, &rows, &|r| r % 4 == 1);
        let quarter: Vec<Scored> = odd.iter().filter(|s| s.row % 4 == 1).copied().collect();
        assert_eq!(got, quarter[..25].to_vec());
    }

    #[test]
    fn quantized_scan_finds_the_exact_top_k_with_exact_scores() {
        let dim = 128;
        let n = 20_000;
        let matrix = crate::bench::structured_unit_vectors(n, dim, 16, 5);
        let mut codes = vec![0i8; matrix.len()];
        let scales: Vec<f32> = matrix
            .chunks_exact(dim)
            .zip(codes.chunks_exact_mut(dim))
            .map(|(v, c)| crate::quant::quantize(v, c))
            .collect();
        let q8 = Quantized {
            codes: &codes,
            scales: &scales,
        };
        let queries = crate::bench::structured_unit_vectors(20, dim, 16, 5);
        let rows: Vec<u32> = (0..n as u32).filter(|r| r % 3 != 0).collect();
        for q in queries.chunks_exact(dim) {
            let want = top_k(&matrix, dim, q, 10, &|_| true);
            assert_eq!(
                top_k_quantized(q8, &matrix, dim, q, 10, None, &|_| true),
                want
            );
            let want = top_k_of_rows(&matrix, dim, q, 10, &rows, &|r| r % 2 == 0);
            let got = top_k_quantized(q8, &matrix, dim, q, 10, Some(&rows), &|r| r % 2 == 0);
            assert_eq!(got, want);
        }
    }
}

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

/// Rows ahead of the one being scored whose memory is requested early: scattered rows (a
/// filter's candidates) defeat the hardware prefetcher, which does not cross pages.
const PREFETCH_AHEAD: usize = 8;

/// Asks the CPU to start loading a row into cache.
#[inline(always)]
fn prefetch_row(matrix: &[f32], row: usize, dim: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let Some(slice) = matrix.get(row * dim..(row + 1) * dim) else {
            return;
        };
        // One request per 64-byte cache line.
        for line in slice.chunks(16) {
            // SAFETY: prefetching is a hint that never faults; the pointer is inside `matrix`.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(line.as_ptr().cast()) };
        }
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
    const CHUNK: usize = 4096;
    let partial: Vec<Vec<Scored>> = (0..count.div_ceil(CHUNK))
        .into_par_iter()
        .map(|c| {
            let mut top = TopK::new(k);
            let end = count.min((c + 1) * CHUNK);
            for i in c * CHUNK..end {
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
}

//! Parallel passes over the rows of a matrix that also add up its columns: the bias and
//! parameter gradients of the row-wise ops.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape};
use rayon::prelude::*;

use super::contiguous_f32;

/// Rows per parallel task for a pass over `rows` rows that also accumulates column sums: about
/// four tasks per thread, each at least 8 rows so that its partial sums pay for themselves.
fn rows_per_task(rows: usize) -> usize {
    rows.div_ceil(4 * rayon::current_num_threads().max(1))
        .max(8)
}

/// Adds the partial column sums of two tasks.
fn add_partial_sums(mut a: Vec<f32>, b: Vec<f32>) -> Vec<f32> {
    for (x, y) in a.iter_mut().zip(&b) {
        *x += y;
    }
    a
}

/// Sums of the columns of a row-major `[rows, width]` matrix: each task adds up a band of rows,
/// then the bands' sums are added (candle's own reduction runs on one thread).
fn column_sums(m: &[f32], width: usize) -> Vec<f32> {
    let band = (rows_per_task(m.len() / width.max(1)) * width).max(1);
    m.par_chunks(band)
        .map(|rows| {
            let mut acc = vec![0f32; width];
            for row in rows.chunks_exact(width) {
                for (a, v) in acc.iter_mut().zip(row) {
                    *a += v;
                }
            }
            acc
        })
        .reduce(|| vec![0f32; width], add_partial_sums)
}

/// `Σ_rows m` of a `[rows, width]` tensor, as a `[width]` tensor, without a graph.
pub(super) struct ColumnSumOp;

impl CustomOp1 for ColumnSumOp {
    fn name(&self) -> &'static str {
        "gclip-column-sum"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let m = contiguous_f32(storage, layout, "column sum input")?;
        let (_, width) = layout.shape().dims2()?;
        Ok((CpuStorage::F32(column_sums(m, width)), Shape::from(width)))
    }
}

/// Runs `row(x_row, g_row, out_row, column_sums)` over all rows of `x` and `g` in parallel and
/// returns `[rows + sums, width]`: the per-row outputs, then `sums` rows of column sums (each
/// task accumulates its own partial sums, added up at the end). Gradients of a row-wise op and
/// of its broadcast parameters come out of one pass this way.
pub(super) fn rows_with_column_sums(
    x: &[f32],
    g: &[f32],
    width: usize,
    sums: usize,
    row: impl Fn(&[f32], &[f32], &mut [f32], &mut [f32]) + Sync,
) -> Vec<f32> {
    let rows = x.len() / width;
    let mut out = vec![0f32; (rows + sums) * width];
    let (per_row, tail) = out.split_at_mut(rows * width);
    let chunk_rows = rows_per_task(rows);
    let totals = per_row
        .par_chunks_mut(chunk_rows * width)
        .zip(x.par_chunks(chunk_rows * width))
        .zip(g.par_chunks(chunk_rows * width))
        .map(|((dst, xs), gs)| {
            let mut partial = vec![0f32; sums * width];
            for ((d, xr), gr) in dst
                .chunks_exact_mut(width)
                .zip(xs.chunks_exact(width))
                .zip(gs.chunks_exact(width))
            {
                row(xr, gr, d, &mut partial);
            }
            partial
        })
        .reduce(|| vec![0f32; sums * width], add_partial_sums);
    tail.copy_from_slice(&totals);
    out
}

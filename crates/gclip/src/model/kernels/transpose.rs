//! Transposes of f32 matrices in tiles, in parallel, and matrices held as blocks of rows (a
//! checkpoint's separate q, k and v read in place).

use candle_core::{Result, Tensor};
use rayon::prelude::*;

use super::{contiguous_f32, fusable};

/// The transpose of a 2-D tensor, contiguous. f32 CPU tensors go through a tiled copy in
/// parallel (loading a model transposes every linear weight, and candle's generic strided copy
/// took a third of a `gclip classify` process); other tensors through candle.
pub fn transpose_2d(t: &Tensor) -> Result<Tensor> {
    let (rows, cols) = t.dims2()?;
    if !fusable(t) || rows == 0 || cols == 0 {
        return t.t()?.contiguous();
    }
    let t = t.contiguous()?;
    let out = {
        let (storage, layout) = t.storage_and_layout();
        let candle_core::Storage::Cpu(cpu) = &*storage else {
            candle_core::bail!("transpose: not a CPU tensor");
        };
        let src = contiguous_f32(cpu, layout, "transpose input")?;
        transpose_f32(src, rows, cols)
    };
    Tensor::from_vec(out, (cols, rows), t.device())
}

/// A row-major `[rows, cols]` f32 matrix held as consecutive blocks of whole rows: a
/// checkpoint that stores q, k and v apart gives the fused q/k/v weight as three blocks, read
/// in place where they lie instead of concatenated into a copy first.
pub(crate) struct RowBlocks<'a> {
    /// Each block with the index of its first row.
    blocks: Vec<(usize, &'a [f32])>,
    rows: usize,
    cols: usize,
}

impl<'a> RowBlocks<'a> {
    /// Blocks of whole rows of `cols` values each, in row order.
    pub(crate) fn new(blocks: Vec<&'a [f32]>, cols: usize) -> Result<Self> {
        let mut rows = 0;
        let mut indexed = Vec::with_capacity(blocks.len());
        for block in blocks {
            if cols == 0 || block.len() % cols != 0 {
                candle_core::bail!(
                    "a block of {} values is not whole rows of {cols} values",
                    block.len()
                );
            }
            indexed.push((rows, block));
            rows += block.len() / cols;
        }
        Ok(Self {
            blocks: indexed,
            rows,
            cols,
        })
    }

    /// One contiguous matrix; `values` holds `rows × cols` values (slicing a row panics
    /// otherwise, so callers check the length first).
    pub(crate) fn whole(values: &'a [f32], rows: usize, cols: usize) -> Self {
        Self {
            blocks: vec![(0, values)],
            rows,
            cols,
        }
    }

    pub(crate) fn rows(&self) -> usize {
        self.rows
    }

    pub(crate) fn cols(&self) -> usize {
        self.cols
    }

    /// Row `r` (`r < rows`).
    pub(crate) fn row(&self, r: usize) -> &'a [f32] {
        let at = self.blocks.partition_point(|(first, _)| *first <= r) - 1;
        let (first, block) = self.blocks[at];
        &block[(r - first) * self.cols..(r - first + 1) * self.cols]
    }
}

/// `dst[c][r] = src[r][c]` for a row-major `[rows, cols]` matrix: 16 × 16 tiles are read as
/// 16 contiguous row pieces into a local block and written back as 16 contiguous column
/// pieces, so both sides move whole cache lines; bands of 16 destination rows run in parallel.
pub(crate) fn transpose_f32(src: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    transpose_blocks(&RowBlocks::whole(src, rows, cols))
}

/// [`transpose_f32`] of a matrix held in row blocks.
pub(crate) fn transpose_blocks(src: &RowBlocks) -> Vec<f32> {
    const T: usize = 16;
    let (rows, cols) = (src.rows(), src.cols());
    let mut dst = vec![0f32; rows * cols];
    if rows == 0 || cols == 0 {
        return dst;
    }
    dst.par_chunks_mut(T * rows)
        .enumerate()
        .for_each(|(band, out)| {
            let c0 = band * T;
            let width = out.len() / rows;
            let mut tile = [[0f32; T]; T];
            for r0 in (0..rows).step_by(T) {
                let height = T.min(rows - r0);
                for (r, line) in tile.iter_mut().enumerate().take(height) {
                    let row = src.row(r0 + r);
                    if width == T {
                        // Element by element over a constant length: vector moves, where a
                        // slice copy became a memmove call per 64 bytes.
                        for (d, s) in line.iter_mut().zip(&row[c0..c0 + T]) {
                            *d = *s;
                        }
                    } else {
                        line[..width].copy_from_slice(&row[c0..c0 + width]);
                    }
                }
                for (c, dst_row) in out.chunks_exact_mut(rows).enumerate() {
                    for (r, d) in dst_row[r0..r0 + height].iter_mut().enumerate() {
                        *d = tile[r][c];
                    }
                }
            }
        });
    dst
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiled_transpose_equals_candles_on_edge_shapes() {
        for (rows, cols) in [(1, 1), (1, 70), (70, 1), (33, 65), (64, 32), (100, 257)] {
            let data: Vec<f32> = (0..rows * cols).map(|i| i as f32 * 0.5 - 7.0).collect();
            let t = Tensor::from_vec(data, (rows, cols), &candle_core::Device::Cpu).unwrap();
            let ours = transpose_2d(&t).unwrap();
            assert_eq!(ours.dims(), [cols, rows]);
            let want = t.t().unwrap().contiguous().unwrap();
            assert_eq!(
                ours.to_vec2::<f32>().unwrap(),
                want.to_vec2::<f32>().unwrap(),
                "{rows}x{cols}"
            );
        }
    }

    #[test]
    fn row_blocks_read_like_their_concatenation() {
        // Blocks of 5, 16 and 12 rows (tiles of 16 straddle the block boundaries).
        let cols = 19;
        let data: Vec<f32> = (0..33 * cols).map(|i| i as f32 * 0.25 - 3.0).collect();
        let (a, rest) = data.split_at(5 * cols);
        let (b, c) = rest.split_at(16 * cols);
        let blocks = RowBlocks::new(vec![a, b, c], cols).unwrap();
        assert_eq!((blocks.rows(), blocks.cols()), (33, cols));
        for r in 0..33 {
            assert_eq!(blocks.row(r), &data[r * cols..(r + 1) * cols], "row {r}");
        }
        assert_eq!(transpose_blocks(&blocks), transpose_f32(&data, 33, cols));
        assert!(RowBlocks::new(vec![&data[..cols + 1]], cols).is_err());
    }
}

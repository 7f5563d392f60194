//! The portable kernels: plain Rust, for CPUs without AVX-512 (and forced dispatch in tests).

use super::*;

pub(super) const PORTABLE_MR: usize = 4;

/// # Safety
/// `t` must satisfy the `Tile` contract with `m <= PORTABLE_MR` and the
/// f32-pair A layout.
pub(super) unsafe fn kern_bf16_portable(t: &Tile, m: usize) {
    let nc = t.ncols;
    // SAFETY: per the Tile contract A rows `< m` hold `2 * k` words from `a`
    // (row stride `lda`), B holds `k * NR` words, and bias (when non-null)
    // holds `ncols` values.
    let (a, b, bias) = unsafe {
        (
            std::slice::from_raw_parts(t.a, (m - 1) * t.lda + 2 * t.k),
            std::slice::from_raw_parts(t.b, t.k * NR),
            (!t.bias.is_null()).then(|| std::slice::from_raw_parts(t.bias, nc)),
        )
    };
    let mut acc = [[0f32; NR]; PORTABLE_MR];
    for (i, row) in acc.iter_mut().enumerate().take(m) {
        if t.init {
            if let Some(bias) = bias {
                row[..nc].copy_from_slice(bias);
            }
        } else {
            // SAFETY: rows `< m` of the tile hold `ncols` valid elements.
            let c = unsafe { std::slice::from_raw_parts(t.c.add(i * t.ldc), nc) };
            row[..nc].copy_from_slice(c);
        }
    }
    for (kk, bk) in b.chunks_exact(NR).enumerate() {
        for (i, row) in acc.iter_mut().enumerate().take(m) {
            let ae = f32::from_bits(a[i * t.lda + 2 * kk]);
            let ao = f32::from_bits(a[i * t.lda + 2 * kk + 1]);
            for (r, &w) in row.iter_mut().zip(bk) {
                *r += ae * f32::from_bits(w << 16) + ao * f32::from_bits(w & 0xFFFF_0000);
            }
        }
    }
    for (i, row) in acc.iter().enumerate().take(m) {
        // SAFETY: rows `< m` of the tile hold `ncols` valid elements, and no
        // other task writes this tile.
        let c = unsafe { std::slice::from_raw_parts_mut(t.c.add(i * t.ldc), nc) };
        c.copy_from_slice(&row[..nc]);
        if t.fin && !t.resid.is_null() {
            // SAFETY: the residual has the tile's shape and row stride.
            let r = unsafe { std::slice::from_raw_parts(t.resid.add(i * t.ldc), nc) };
            for (d, r) in c.iter_mut().zip(r) {
                *d += r;
            }
        }
    }
}

/// # Safety
/// `t` must satisfy the `Tile` contract with `m <= PORTABLE_MR`, the u8 A
/// layout (one word per K-step), and non-null `corr`/`wscale`/`xscale`.
pub(super) unsafe fn kern_int8_portable(t: &Tile, m: usize) {
    let nc = t.ncols;
    // SAFETY: per the Tile contract (see `run_tiles`).
    let (a, b, corr, ws, xs, bias) = unsafe {
        (
            std::slice::from_raw_parts(t.a, (m - 1) * t.lda + t.k),
            std::slice::from_raw_parts(t.b, t.k * NR),
            std::slice::from_raw_parts(t.corr, NR),
            std::slice::from_raw_parts(t.wscale, NR),
            std::slice::from_raw_parts(t.xscale, m),
            (!t.bias.is_null()).then(|| std::slice::from_raw_parts(t.bias, nc)),
        )
    };
    let mut acc = [[0i32; NR]; PORTABLE_MR];
    for (i, row) in acc.iter_mut().enumerate().take(m) {
        if t.init {
            row.copy_from_slice(corr);
        } else {
            // SAFETY: rows `< m` hold `ncols` elements; between K blocks they
            // hold i32 bit patterns written below (same size as f32).
            let c = unsafe { std::slice::from_raw_parts(t.c.add(i * t.ldc).cast::<i32>(), nc) };
            row[..nc].copy_from_slice(c);
        }
    }
    for (kk, bk) in b.chunks_exact(NR).enumerate() {
        for (i, row) in acc.iter_mut().enumerate().take(m) {
            // A bytes are in memory order (k, k+1, k+2, k+3).
            let au = a[i * t.lda + kk].to_ne_bytes();
            for (r, &w) in row.iter_mut().zip(bk) {
                let wb = w.to_le_bytes();
                let mut s = 0i32;
                for q in 0..4 {
                    s += au[q] as i32 * wb[q] as i8 as i32;
                }
                *r = r.wrapping_add(s);
            }
        }
    }
    for (i, row) in acc.iter().enumerate().take(m) {
        if t.fin {
            // SAFETY: as above; this task owns the tile.
            let c = unsafe { std::slice::from_raw_parts_mut(t.c.add(i * t.ldc), nc) };
            for (j, d) in c.iter_mut().enumerate() {
                let v = row[j] as f32 * (xs[i] * ws[j]);
                *d = v + bias.map_or(0.0, |b| b[j]);
            }
            if !t.resid.is_null() {
                // SAFETY: the residual has the tile's shape and row stride.
                let r = unsafe { std::slice::from_raw_parts(t.resid.add(i * t.ldc), nc) };
                for (d, r) in c.iter_mut().zip(r) {
                    *d += r;
                }
            }
        } else {
            // SAFETY: as above; i32 has the size and alignment of f32.
            let c = unsafe { std::slice::from_raw_parts_mut(t.c.add(i * t.ldc).cast::<i32>(), nc) };
            c.copy_from_slice(&row[..nc]);
        }
    }
}

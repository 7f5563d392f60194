//! The scalar functions and reductions the kernels are built from, written so that the loops
//! calling them vectorise: `exp` and `erf` without branches, sums, maxima and dot products over
//! independent lanes, and the count of non-finite values.

use rayon::prelude::*;

/// Number of independent partial sums in reductions: enough lanes for one AVX-512 register, and
/// independent accumulators let the compiler vectorise without reassociating floats itself.
pub(super) const LANES: usize = 16;

/// `exp(x)` for f32 without branches, so that loops calling it vectorise. Range reduction
/// `x = n·ln2 + r` with |r| ≤ ln2/2, then a degree-7 Taylor polynomial: relative error about
/// 1e-7 over the clamped range, which is what `f32::exp` gives for the values a softmax sees.
#[inline(always)]
pub(crate) fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // Adding then subtracting 1.5·2^23 rounds to the nearest integer in any rounding-free way.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let shifted = x * LOG2E + ROUND;
    let n = shifted - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0
                    + r * (1.0 / 24.0
                        + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
    // `shifted` lies in [2^23, 2^24), where consecutive integers are consecutive bit patterns,
    // so its bits hold n exactly: integer arithmetic that vectorises, where `n as i32` (a
    // saturating conversion) made the compiler fall back to scalar code. A NaN x gives a NaN p,
    // so the scale it gets does not matter.
    let n_bits = shifted.to_bits().wrapping_sub(ROUND.to_bits());
    let scale = f32::from_bits(n_bits.wrapping_add(127) << 23);
    p * scale
}

/// `erf(x)` (Abramowitz & Stegun 7.1.26, absolute error below 1.5e-7), branch-free.
#[inline(always)]
pub(crate) fn erf_f32(x: f32) -> f32 {
    const P: f32 = 0.327_591_1;
    const A1: f32 = 0.254_829_6;
    const A2: f32 = -0.284_496_74;
    const A3: f32 = 1.421_413_8;
    const A4: f32 = -1.453_152_1;
    const A5: f32 = 1.061_405_4;
    let ax = x.abs();
    let t = 1.0 / (1.0 + P * ax);
    let poly = t * (A1 + t * (A2 + t * (A3 + t * (A4 + t * A5))));
    let y = 1.0 - poly * exp_f32(-ax * ax);
    y.copysign(x)
}

#[inline(always)]
pub(super) fn sum_lanes(xs: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let chunks = xs.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for i in 0..LANES {
            acc[i] += c[i];
        }
    }
    acc.iter().sum::<f32>() + rest.iter().sum::<f32>()
}

/// The largest value of `xs` (−∞ when empty), NaN ignored as `f32::max` does. A plain
/// `fold(f32::max)` compiles to a scalar loop (its NaN rule), which was half of a softmax.
#[inline(always)]
pub(super) fn max_lanes(xs: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = xs.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for i in 0..LANES {
            acc[i] = if c[i] > acc[i] { c[i] } else { acc[i] };
        }
    }
    acc.iter()
        .chain(rest)
        .fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m })
}

#[inline(always)]
pub(super) fn sum_sq_dev_lanes(xs: &[f32], mean: f32) -> f32 {
    let mut acc = [0f32; LANES];
    let chunks = xs.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for i in 0..LANES {
            let d = c[i] - mean;
            acc[i] += d * d;
        }
    }
    acc.iter().sum::<f32>() + rest.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>()
}

#[inline(always)]
pub(crate) fn dot_lanes(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let ca = a.chunks_exact(LANES);
    let cb = b.chunks_exact(LANES);
    let rest: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..LANES {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + rest
}

#[inline(always)]
fn count_non_finite_generic(xs: &[f32]) -> usize {
    // Exponent all ones: infinity or NaN. Summed as integers so that the loop vectorises.
    xs.iter()
        .map(|x| usize::from(x.to_bits() & 0x7f80_0000 == 0x7f80_0000))
        .sum()
}

simd_dispatch!(fn count_non_finite_run(xs: &[f32]) -> usize = count_non_finite_generic);

/// How many of `xs` are NaN or infinite, in parallel for long slices (a model load checks
/// every weight).
pub(crate) fn count_non_finite_f32(xs: &[f32]) -> usize {
    const CHUNK: usize = 1 << 16;
    if xs.len() <= CHUNK {
        count_non_finite_run(xs)
    } else {
        xs.par_chunks(CHUNK).map(count_non_finite_run).sum()
    }
}

#[inline(always)]
fn sum_of_squares_generic(xs: &[f32]) -> f64 {
    // Independent f64 lanes, so that the loop vectorises instead of waiting on one sum.
    let mut acc = [0f64; LANES];
    let chunks = xs.chunks_exact(LANES);
    let rest: f64 = chunks
        .remainder()
        .iter()
        .map(|&x| f64::from(x) * f64::from(x))
        .sum();
    for c in chunks {
        for i in 0..LANES {
            let x = f64::from(c[i]);
            acc[i] += x * x;
        }
    }
    acc.iter().sum::<f64>() + rest
}

simd_dispatch!(fn sum_of_squares_run(xs: &[f32]) -> f64 = sum_of_squares_generic);

/// `Σ x²` of `xs`, each square and the sum in f64, in parallel for long slices (the global
/// gradient norm of a training step reads every gradient).
pub(crate) fn sum_of_squares_f64(xs: &[f32]) -> f64 {
    const CHUNK: usize = 1 << 14;
    if xs.len() <= CHUNK {
        sum_of_squares_run(xs)
    } else {
        xs.par_chunks(CHUNK).map(sum_of_squares_run).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_lanes_is_the_max_and_ignores_nan() {
        for len in 0..40usize {
            let mut xs: Vec<f32> = (0..len).map(|i| ((i * 37 % 23) as f32) - 11.5).collect();
            if len > 3 {
                xs[len / 2] = f32::NAN;
            }
            let want = xs.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            assert_eq!(max_lanes(&xs), want, "length {len}");
        }
        assert_eq!(max_lanes(&[f32::NAN, -3.0]), -3.0);
        assert_eq!(max_lanes(&[]), f32::NEG_INFINITY);
    }

    #[test]
    fn exp_matches_std_over_softmax_range() {
        let mut worst = 0f32;
        let mut x = -80.0f32;
        while x < 80.0 {
            let rel = ((exp_f32(x) - x.exp()) / x.exp()).abs();
            worst = worst.max(rel);
            x += 0.013;
        }
        assert!(worst < 5e-7, "worst relative error {worst}");
    }

    #[test]
    fn erf_matches_reference_values() {
        // erf values from the definition, computed in f64 by series for |x| ≤ 3.
        fn erf64(x: f64) -> f64 {
            let mut sum = 0.0;
            let mut term = x;
            let mut n = 0.0;
            while term.abs() > 1e-17 || n < 5.0 {
                sum += term / (2.0 * n + 1.0);
                n += 1.0;
                term *= -x * x / n;
            }
            sum * 2.0 / std::f64::consts::PI.sqrt()
        }
        let mut x = -3.0f64;
        while x <= 3.0 {
            let d = (erf_f32(x as f32) as f64 - erf64(x)).abs();
            assert!(d < 3e-7, "erf({x}) off by {d}");
            x += 0.01;
        }
    }

    #[test]
    fn sum_of_squares_matches_a_plain_f64_sum() {
        // Short tails, one chunk, and several chunks summed in parallel.
        for len in (0..40).chain([1 << 14, (1 << 16) + 7]) {
            let xs: Vec<f32> = (0..len)
                .map(|i| ((i * 7919 % 1013) as f32 - 506.0) * 1e-3)
                .collect();
            let plain: f64 = xs.iter().map(|&x| f64::from(x) * f64::from(x)).sum();
            let got = sum_of_squares_f64(&xs);
            assert!(
                (got - plain).abs() <= 1e-12 * plain.max(1e-30),
                "{len} values: {got} against {plain}"
            );
            assert_eq!(
                sum_of_squares_run(&xs),
                sum_of_squares_generic(&xs),
                "{len} values"
            );
        }
        assert!(sum_of_squares_f64(&[f32::NAN, 1.0]).is_nan());
        assert_eq!(
            sum_of_squares_f64(&[f32::MAX, f32::MAX]),
            2.0 * f64::from(f32::MAX).powi(2)
        );
    }
}

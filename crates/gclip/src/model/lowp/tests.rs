use super::*;

// The tests write weights as `w[k][n]` (y = x·w); the model packs PyTorch's `[out, in]`.
fn pack_bf16(w: &[f32], k: usize, n: usize) -> Result<PackedBf16, String> {
    PackedBf16::pack_out_in(&crate::model::kernels::transpose_f32(w, k, n), k, n)
}

fn pack_int8(w: &[f32], k: usize, n: usize) -> Result<PackedInt8, String> {
    PackedInt8::pack_out_in(&crate::model::kernels::transpose_f32(w, k, n), k, n)
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.next() * scale).collect()
    }
}

fn r16(v: f32) -> f64 {
    bf16_to_f32(f32_to_bf16(v)) as f64
}

/// f64 reference on bf16-rounded inputs; returns (value, magnitude bound).
fn ref_bf16(x: &[f32], rows: usize, w: &[f32], k: usize, n: usize, b: &[f32]) -> Vec<(f64, f64)> {
    let mut out = Vec::with_capacity(rows * n);
    for m in 0..rows {
        for j in 0..n {
            let bj = b.get(j).map_or(0.0, |&v| v as f64);
            let (mut s, mut mag) = (bj, bj.abs());
            for kk in 0..k {
                let p = r16(x[m * k + kk]) * r16(w[kk * n + j]);
                s += p;
                mag += p.abs();
            }
            out.push((s, mag));
        }
    }
    out
}

const SHAPES: &[(usize, usize, usize)] = &[
    (1, 1, 1),
    (3, 7, 5),
    (17, 33, 31),
    (100, 768, 47),
    (17, 768, 2304),
    (1, 64, 48),
    (13, 32, 64),
    (25, 400, 33),
    // AMX blocks of 32 rows: a full one plus a 16-row tile, and one row past a block.
    (48, 96, 64),
    (33, 64, 40),
    // Activation rows 4 KiB apart in bf16 (and in the f32-pair layout of K = 1,024): packed at
    // a padded stride.
    (13, 2048, 40),
    (15, 1024, 33),
];

fn check_bf16(kernel: Bf16Kernel, rows: usize, k: usize, n: usize, threads: usize, seed: u64) {
    let mut rng = Rng(seed);
    let x = rng.vec(rows * k, 2.0);
    let w = rng.vec(k * n, 0.5);
    let b = rng.vec(n, 1.0);
    let p = pack_bf16(&w, k, n).unwrap();
    let mut y = vec![f32::NAN; rows * n];
    linear_bf16(&x, rows, &p, &b, &mut y, kernel, threads).unwrap();
    let r = ref_bf16(&x, rows, &w, k, n, &b);
    for (i, (&got, &(want, mag))) in y.iter().zip(&r).enumerate() {
        let err = (got as f64 - want).abs();
        assert!(
            err <= 1e-4 * mag + 1e-30,
            "{kernel:?} {rows}x{k}x{n} t{threads} at {i}: got {got}, want {want}, mag {mag}"
        );
    }
}

#[test]
fn bf16_matches_reference() {
    for kernel in Bf16Kernel::available() {
        for (s, &(rows, k, n)) in SHAPES.iter().enumerate() {
            for threads in [1, 2] {
                check_bf16(kernel, rows, k, n, threads, 7 + s as u64);
            }
        }
    }
}

#[test]
fn bf16_packs_from_either_layout_alike() {
    for &(_, k, n) in SHAPES {
        let w = Rng(k as u64 * 131 + n as u64).vec(k * n, 3.0);
        let from_out_in = pack_bf16(&w, k, n).unwrap();
        let from_in_out = PackedBf16::pack_in_out(&w, k, n).unwrap();
        assert_eq!(from_in_out, from_out_in, "{k}x{n}");
    }
    let e = PackedBf16::pack_in_out(&[0.0; 5], 2, 3).unwrap_err();
    assert!(e.contains("5 values") && e.contains("2 x 3"), "{e}");
}

#[test]
fn transposed_products_equal_products_of_the_transpose() {
    // `xᵀ·W` from `x: [K, rows]` read in place, against the rows of `xᵀ` made in f32: bit for
    // bit on every kernel, over K blocks of 32 with tails, odd K, bands of 16 rows with tails.
    for kernel in Bf16Kernel::available() {
        for (rows, k, n) in [
            (1, 1, 1),
            (16, 32, 32),
            (17, 33, 31),
            (40, 77, 64),
            (768, 1024, 40),
            (5, 1000, 3),
        ] {
            let mut rng = Rng((rows * 1_000_003 + k * 1009 + n) as u64);
            let mut x = rng.vec(k * rows, 3.0);
            // Values the conversions treat apart: NaN, infinity, a subnormal, ties to even.
            for (i, v) in [f32::NAN, f32::INFINITY, 1.0e-39, 1.0 + f32::EPSILON * 64.0]
                .into_iter()
                .enumerate()
            {
                if let Some(slot) = x.get_mut(i * 7) {
                    *slot = v;
                }
            }
            let w = pack_bf16(&rng.vec(k * n, 0.5), k, n).unwrap();
            let x_t = crate::model::kernels::transpose_f32(&x, k, rows);
            let earlier = rng.vec(rows * n, 10.0);
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            let cases = [
                (None, None),
                (Some(&earlier[..]), Some(Activation::QuickGelu)),
                (None, Some(Activation::Gelu)),
            ];
            for threads in [1, 2] {
                for (residual, act) in cases {
                    let fused = Fused { act, residual };
                    let want =
                        linear_bf16_fused(&x_t, rows, &w, &[], fused, kernel, threads).unwrap();
                    let got =
                        transposed_product_bf16(&x, rows, &w, fused, kernel, threads).unwrap();
                    let with = if residual.is_some() {
                        " + residual"
                    } else {
                        ""
                    };
                    assert_eq!(
                        bits(&got),
                        bits(&want),
                        "{kernel:?} {rows}x{k}x{n} t{threads}{with} {act:?}"
                    );
                }
            }
        }
    }
    let w = pack_bf16(&[0.0; 6], 2, 3).unwrap();
    let e = transposed_product_bf16(&[0.0; 5], 2, &w, Fused::default(), Bf16Kernel::Portable, 1)
        .unwrap_err();
    assert!(e.contains("5 values"), "{e}");
}

#[test]
fn bf16_more_odd_shapes() {
    for kernel in Bf16Kernel::available() {
        for rows in [1, 3, 17, 100] {
            for k in [1, 7, 33, 768] {
                for n in [1, 5, 31, 47] {
                    check_bf16(kernel, rows, k, n, 2, (rows * 31 + k * 7 + n) as u64);
                }
            }
        }
    }
}

#[test]
fn bf16_k_blocking_and_big_k() {
    // in_dim > 2*KC exercises several K blocks (partial last one).
    for kernel in Bf16Kernel::available() {
        check_bf16(kernel, 29, 3072, 40, 2, 99);
        check_bf16(kernel, 5, 2 * KC * 2 + 3, 33, 1, 98);
    }
}

#[test]
fn bf16_special_values() {
    for kernel in Bf16Kernel::available() {
        let (rows, k, n) = (5, 9, 37);
        let mut rng = Rng(3);
        let w = rng.vec(k * n, 1.0);
        let p = pack_bf16(&w, k, n).unwrap();
        // all-zero x, no bias -> zeros; with bias -> bias
        let x = vec![0f32; rows * k];
        let mut y = vec![1f32; rows * n];
        linear_bf16(&x, rows, &p, &[], &mut y, kernel, 2).unwrap();
        assert!(y.iter().all(|&v| v == 0.0));
        let b = rng.vec(n, 1.0);
        linear_bf16(&x, rows, &p, &b, &mut y, kernel, 2).unwrap();
        for r in 0..rows {
            assert_eq!(&y[r * n..(r + 1) * n], &b[..]);
        }
        // NaN in row 2 -> whole row NaN, other rows finite
        let mut x = rng.vec(rows * k, 1.0);
        x[2 * k + 4] = f32::NAN;
        linear_bf16(&x, rows, &p, &b, &mut y, kernel, 2).unwrap();
        for r in 0..rows {
            let row = &y[r * n..(r + 1) * n];
            if r == 2 {
                assert!(row.iter().all(|v| v.is_nan()), "{kernel:?}");
            } else {
                assert!(row.iter().all(|v| v.is_finite()), "{kernel:?}");
            }
        }
        // large magnitudes (no overflow in f32)
        let x: Vec<f32> = rng.vec(rows * k, 1e15);
        let w2: Vec<f32> = rng.vec(k * n, 1e15);
        let p2 = pack_bf16(&w2, k, n).unwrap();
        linear_bf16(&x, rows, &p2, &[], &mut y, kernel, 1).unwrap();
        let r = ref_bf16(&x, rows, &w2, k, n, &[]);
        for (&got, &(want, mag)) in y.iter().zip(&r) {
            assert!((got as f64 - want).abs() <= 1e-4 * mag);
        }
        // rows == 0 is fine
        linear_bf16(&[], 0, &p, &b, &mut [], kernel, 2).unwrap();
    }
}

#[test]
fn the_fused_mlp_equals_its_two_layers() {
    // fc1's tiles finished with the activation into fc2's bf16 input must give the bits of
    // fc1 in f32, then fc2 activating and converting that output, on each kernel that fuses.
    // K = 100 leaves 2 K-steps after AMX's whole tiles, which its finish adds; rows cover
    // partial and whole tiles of both kernels; K = 4,100 is more than one K block of the
    // unfused dot-product kernel (the fused fc1 runs it whole).
    let mut rng = Rng(23);
    let (hidden, n) = (160, 40);
    let w2 = rng.vec(hidden * n, 0.3);
    let p2 = pack_bf16(&w2, hidden, n).unwrap();
    let (b1, b2) = (rng.vec(hidden, 1.0), rng.vec(n, 1.0));
    for kernel in [Bf16Kernel::Amx, Bf16Kernel::Avx512Bf16] {
        for k in [100, 4100] {
            let w1 = rng.vec(k * hidden, 0.3);
            let p1 = pack_bf16(&w1, k, hidden).unwrap();
            if !kernel.is_available() {
                let x = vec![0.0; k];
                let e = mlp_bf16(&x, 1, &p1, &b1, Activation::Gelu, &p2, &b2, None, kernel, 1)
                    .unwrap_err();
                assert!(e.contains("not supported"), "{e}");
                continue;
            }
            let row_counts: &[usize] = if k > 1000 {
                &[1, 13, 50]
            } else {
                &[1, 11, 12, 16, 17, 33, 50, 77]
            };
            for &rows in row_counts {
                let x = rng.vec(rows * k, 3.0);
                let res = rng.vec(rows * n, 10.0);
                for act in [Activation::QuickGelu, Activation::Gelu] {
                    for residual in [None, Some(&res[..])] {
                        for threads in [1, 2] {
                            let h = linear_bf16_fused(
                                &x,
                                rows,
                                &p1,
                                &b1,
                                Fused::default(),
                                kernel,
                                threads,
                            )
                            .unwrap();
                            let fused = Fused {
                                act: Some(act),
                                residual,
                            };
                            let want =
                                linear_bf16_fused(&h, rows, &p2, &b2, fused, kernel, threads)
                                    .unwrap();
                            let got = mlp_bf16(
                                &x, rows, &p1, &b1, act, &p2, &b2, residual, kernel, threads,
                            )
                            .unwrap();
                            assert_eq!(
                                got, want,
                                "{kernel:?}, K {k}, {rows} rows, {act:?}, {threads} threads"
                            );
                        }
                    }
                }
            }
        }
    }
    let w1 = rng.vec(100 * 48, 0.3);
    let narrow = pack_bf16(&w1, 100, 48).unwrap();
    let mlp_error = |fc1: &PackedBf16, fc2: &PackedBf16, kernel| {
        mlp_bf16(
            &[0.0; 100],
            1,
            fc1,
            &[],
            Activation::Gelu,
            fc2,
            &[],
            None,
            kernel,
            1,
        )
        .unwrap_err()
    };
    let e = mlp_error(&narrow, &p2, Bf16Kernel::Avx512Bf16);
    assert!(
        e.contains("fc1 gives 48 values per row, fc2 takes 160"),
        "{e}"
    );
    let odd = pack_bf16(&w2[..48 * n], 48, n).unwrap();
    let e = mlp_error(&narrow, &odd, Bf16Kernel::Amx);
    assert!(e.contains("hidden width 48 is not a multiple of 32"), "{e}");
    let p1 = pack_bf16(&rng.vec(100 * hidden, 0.3), 100, hidden).unwrap();
    for other in [Bf16Kernel::Portable, Bf16Kernel::Avx512] {
        let e = mlp_error(&p1, &p2, other);
        assert!(e.contains("the fused MLP runs on"), "{e}");
        assert!(e.contains(other.name()), "{e}");
    }
}

#[test]
fn fused_steps_equal_the_unfused_ones() {
    // The activation fused into the input conversion and the residual added by the kernel
    // must give the very bits of an activated copy run through the plain entry points and
    // a separate sum, for every kernel (K = 9000 also runs several K blocks).
    let mut rng = Rng(17);
    for &(rows, k, n) in &[(1, 7, 5), (13, 100, 33), (37, 768, 70), (14, 9000, 40)] {
        let x = rng.vec(rows * k, 3.0);
        let w = rng.vec(k * n, 0.3);
        let b = rng.vec(n, 1.0);
        let res = rng.vec(rows * n, 10.0);
        let (pb, pi) = (pack_bf16(&w, k, n).unwrap(), pack_int8(&w, k, n).unwrap());
        for act in [None, Some(Activation::QuickGelu), Some(Activation::Gelu)] {
            let mut xa = x.clone();
            if let Some(act) = act {
                for (d, s) in xa.chunks_exact_mut(k).zip(x.chunks_exact(k)) {
                    act_row_lowp(s, d, act);
                }
            }
            for residual in [None, Some(&res[..])] {
                let fused = Fused { act, residual };
                let add = |y: &mut Vec<f32>| {
                    if let Some(r) = residual {
                        for (y, r) in y.iter_mut().zip(r) {
                            *y += r;
                        }
                    }
                };
                for kernel in Bf16Kernel::available() {
                    for threads in [1, 2] {
                        let mut want = vec![0f32; rows * n];
                        linear_bf16(&xa, rows, &pb, &b, &mut want, kernel, threads).unwrap();
                        add(&mut want);
                        let got =
                            linear_bf16_fused(&x, rows, &pb, &b, fused, kernel, threads).unwrap();
                        assert_eq!(got, want, "{kernel:?} {fused:?} {rows}x{k}x{n}");
                    }
                }
                for kernel in Int8Kernel::available() {
                    for threads in [1, 2] {
                        let mut want = vec![0f32; rows * n];
                        linear_int8(&xa, rows, &pi, &b, &mut want, kernel, threads).unwrap();
                        add(&mut want);
                        let got =
                            linear_int8_fused(&x, rows, &pi, &b, fused, kernel, threads).unwrap();
                        assert_eq!(got, want, "{kernel:?} {fused:?} {rows}x{k}x{n}");
                    }
                }
            }
        }
    }
    let p = pack_bf16(&[1.0], 1, 1).unwrap();
    let none = Fused::default();
    let fused = linear_bf16_fused(&[], 0, &p, &[], none, Bf16Kernel::Portable, 1).unwrap();
    assert!(fused.is_empty());
    let short = Fused {
        act: None,
        residual: Some(&[1.0]),
    };
    assert!(linear_bf16_fused(&[1.0; 2], 2, &p, &[], short, Bf16Kernel::Portable, 1).is_err());
}

#[test]
fn bf16_conversion() {
    assert_eq!(f32_to_bf16(1.0), 0x3F80);
    // halfway cases round to even
    assert_eq!(f32_to_bf16(f32::from_bits(0x3F80_8000)), 0x3F80);
    assert_eq!(f32_to_bf16(f32::from_bits(0x3F81_8000)), 0x3F82);
    assert_eq!(f32_to_bf16(f32::from_bits(0x3F80_8001)), 0x3F81);
    assert_eq!(f32_to_bf16(f32::INFINITY), 0x7F80);
    assert_eq!(f32_to_bf16(f32::MAX), 0x7F80);
    assert!(bf16_to_f32(f32_to_bf16(f32::NAN)).is_nan());
    // a NaN whose payload is only in the low bits must stay NaN
    assert!(bf16_to_f32(f32_to_bf16(f32::from_bits(0x7F80_0001))).is_nan());
}

#[test]
fn shape_errors() {
    let w = vec![0f32; 6];
    assert!(PackedBf16::pack_out_in(&w, 2, 4).is_err());
    assert!(PackedInt8::pack_out_in(&w, 4, 2).is_err());
    let p = pack_bf16(&w, 2, 3).unwrap();
    let q = pack_int8(&w, 2, 3).unwrap();
    let mut y = vec![0f32; 6];
    let x = vec![0f32; 4];
    assert!(linear_bf16(&x[..3], 2, &p, &[], &mut y, Bf16Kernel::Portable, 1).is_err());
    assert!(linear_bf16(&x, 2, &p, &[], &mut y[..5], Bf16Kernel::Portable, 1).is_err());
    assert!(linear_bf16(&x, 2, &p, &[1.0], &mut y, Bf16Kernel::Portable, 1).is_err());
    assert!(linear_int8(&x[..3], 2, &q, &[], &mut y, Int8Kernel::Portable, 1).is_err());
    assert!(linear_int8(&x, 2, &q, &[0.0; 4], &mut y, Int8Kernel::Portable, 1).is_err());
    assert!(linear_bf16(&x, usize::MAX, &p, &[], &mut y, Bf16Kernel::Portable, 1).is_err());
    for k in [Bf16Kernel::Avx512, Bf16Kernel::Avx512Bf16] {
        let r = linear_bf16(&x, 2, &p, &[], &mut y, k, 1);
        assert_eq!(r.is_ok(), k.is_available());
    }
    let r = linear_int8(&x, 2, &q, &[], &mut y, Int8Kernel::Avx512Vnni, 1);
    assert_eq!(r.is_ok(), Int8Kernel::Avx512Vnni.is_available());
}

#[test]
fn bytes_round_trip() {
    let mut rng = Rng(5);
    for &(k, n) in &[(1, 1), (7, 33), (768, 47)] {
        let w = rng.vec(k * n, 1.0);
        let p = pack_bf16(&w, k, n).unwrap();
        let p2 = PackedBf16::from_bytes(p.as_bytes(), k, n).unwrap();
        assert_eq!(p, p2);
        assert_eq!(p.as_bytes(), p2.as_bytes());
        assert!(PackedBf16::from_bytes(&p.as_bytes()[1..], k, n).is_err());
        assert!(PackedBf16::from_bytes(p.as_bytes(), k + 2, n).is_err());
        let q = pack_int8(&w, k, n).unwrap();
        let q2 = PackedInt8::from_bytes(q.as_bytes(), k, n).unwrap();
        assert_eq!(q, q2);
        assert!(PackedInt8::from_bytes(&q.as_bytes()[4..], k, n).is_err());
        assert!(PackedInt8::from_bytes(q.as_bytes(), k, n + NR).is_err());
        for kk in 0..k {
            for j in 0..n {
                assert_eq!(p.get(kk, j) as f64, r16(w[kk * n + j]));
            }
        }
    }
}

/// Scalar reproduction of the int8 path: exact i32 dot of quantised data.
fn ref_int8(x: &[f32], rows: usize, p: &PackedInt8, b: &[f32]) -> Vec<(f64, f64, i64)> {
    let (k, n) = (p.in_dim(), p.out_dim());
    let mut out = Vec::new();
    let mut q = vec![0i8; k];
    for m in 0..rows {
        let sx = quantize_row_i8(&x[m * k..(m + 1) * k], &mut q) as f64;
        for j in 0..n {
            let acc: i64 = (0..k).map(|kk| q[kk] as i64 * p.q(kk, j) as i64).sum();
            let s = sx * p.scale(j) as f64;
            let bj = b.get(j).map_or(0.0, |&v| v as f64);
            out.push((s * acc as f64 + bj, (s * acc as f64).abs() + bj.abs(), acc));
        }
    }
    out
}

fn check_int8(kernel: Int8Kernel, rows: usize, k: usize, n: usize, threads: usize, seed: u64) {
    let mut rng = Rng(seed);
    let x = rng.vec(rows * k, 3.0);
    let w = rng.vec(k * n, 0.2);
    let b = rng.vec(n, 1.0);
    let p = pack_int8(&w, k, n).unwrap();
    let mut y = vec![f32::NAN; rows * n];
    linear_int8(&x, rows, &p, &b, &mut y, kernel, threads).unwrap();
    let r = ref_int8(&x, rows, &p, &b);
    for (i, (&got, &(want, mag, _))) in y.iter().zip(&r).enumerate() {
        assert!(
            (got as f64 - want).abs() <= 1e-6 * mag + 1e-6,
            "{kernel:?} {rows}x{k}x{n} at {i}: got {got} want {want}"
        );
    }
    // close to the f32 result
    let mut exact = vec![0f64; rows * n];
    for m in 0..rows {
        for j in 0..n {
            exact[m * n + j] = b[j] as f64
                + (0..k)
                    .map(|kk| x[m * k + kk] as f64 * w[kk * n + j] as f64)
                    .sum::<f64>();
        }
    }
    if k >= 32 && rows * n >= 32 {
        let dot: f64 = exact.iter().zip(&y).map(|(a, &b)| a * b as f64).sum();
        let na: f64 = exact.iter().map(|a| a * a).sum::<f64>().sqrt();
        let nb: f64 = y.iter().map(|&b| (b as f64).powi(2)).sum::<f64>().sqrt();
        assert!(dot / (na * nb) >= 0.999, "cosine {}", dot / (na * nb));
    }
}

#[test]
fn int8_matches_reference() {
    for kernel in Int8Kernel::available() {
        for (s, &(rows, k, n)) in SHAPES.iter().enumerate() {
            for threads in [1, 2] {
                check_int8(kernel, rows, k, n, threads, 11 + s as u64);
            }
        }
        for rows in [1, 3, 17, 100] {
            for k in [1, 7, 33, 768] {
                for n in [1, 5, 31, 47] {
                    check_int8(kernel, rows, k, n, 2, (rows * 13 + k * 5 + n) as u64);
                }
            }
        }
        check_int8(kernel, 29, 3072, 40, 2, 77);
        check_int8(kernel, 5, 4 * KC * 2 + 5, 33, 1, 78);
    }
}

#[test]
fn int8_exact_integer_accumulators() {
    // Integer data with row max 127 and column max 127: both scales are
    // exactly 1, so dst equals the raw i32 accumulator.
    let (rows, k, n) = (19, 1029, 45);
    let mut rng = Rng(21);
    let ints = |rng: &mut Rng, len: usize| -> Vec<f32> {
        (0..len).map(|_| (rng.next() * 127.0).round()).collect()
    };
    let mut x = ints(&mut rng, rows * k);
    let mut w = ints(&mut rng, k * n);
    for m in 0..rows {
        x[m * k + m % k] = if m % 2 == 0 { 127.0 } else { -127.0 };
    }
    for j in 0..n {
        w[(j * 3 % k) * n + j] = -127.0;
    }
    let p = pack_int8(&w, k, n).unwrap();
    for kernel in Int8Kernel::available() {
        let mut y = vec![0f32; rows * n];
        linear_int8(&x, rows, &p, &[], &mut y, kernel, 2).unwrap();
        for m in 0..rows {
            for j in 0..n {
                let acc: i64 = (0..k)
                    .map(|kk| x[m * k + kk] as i64 * w[kk * n + j] as i64)
                    .sum();
                assert!(acc.abs() < 1 << 24);
                assert_eq!(y[m * n + j], acc as f32, "{kernel:?} {m} {j}");
            }
        }
    }
}

#[test]
fn int8_special_values() {
    for kernel in Int8Kernel::available() {
        let (rows, k, n) = (4, 13, 35);
        let mut rng = Rng(8);
        let w = rng.vec(k * n, 1.0);
        let b = rng.vec(n, 1.0);
        let p = pack_int8(&w, k, n).unwrap();
        let mut x = rng.vec(rows * k, 1.0);
        x[k..2 * k].fill(0.0); // zero row -> bias
        x[2 * k + 3] = f32::NAN; // NaN row -> NaN
        x[3 * k + 5] = f32::INFINITY; // inf row -> NaN
        let mut y = vec![0f32; rows * n];
        linear_int8(&x, rows, &p, &b, &mut y, kernel, 1).unwrap();
        assert!(y[..n].iter().all(|v| v.is_finite()));
        assert_eq!(&y[n..2 * n], &b[..]);
        assert!(y[2 * n..].iter().all(|v| v.is_nan()));
        // large magnitudes are fine (scales absorb them)
        let x = rng.vec(rows * k, 1e30);
        linear_int8(&x, rows, &p, &[], &mut y, kernel, 1).unwrap();
        assert!(y.iter().all(|v| v.is_finite()));
        // non-finite weight column -> NaN column
        let mut w2 = w.clone();
        w2[2 * n + 7] = f32::NAN;
        let p2 = pack_int8(&w2, k, n).unwrap();
        let x = rng.vec(rows * k, 1.0);
        linear_int8(&x, rows, &p2, &b, &mut y, kernel, 1).unwrap();
        for m in 0..rows {
            for j in 0..n {
                assert_eq!(y[m * n + j].is_nan(), j == 7);
            }
        }
    }
}

#[test]
fn quantize_row_rules() {
    let mut q = [0i8; 4];
    assert_eq!(quantize_row_i8(&[0.0; 4], &mut q), 0.0);
    assert_eq!(q, [0; 4]);
    let s = quantize_row_i8(&[1.0, -2.0, 0.5, 2.0], &mut q);
    assert_eq!(s, 2.0 / 127.0);
    assert_eq!(q, [64, -127, 32, 127]); // 63.5 -> 64 (ties to even), 31.75 -> 32
    assert!(quantize_row_i8(&[1.0, f32::NAN, 0.0, 0.0], &mut q).is_nan());
    assert_eq!(q, [0; 4]);
}

#[test]
fn every_cpu_variant_of_the_activation_codes_equals_the_portable_one() {
    let mut rng = Rng(5);
    let mut rows: Vec<Vec<f32>> = (0..80).map(|len| rng.vec(len, 3.0)).collect();
    // Ties (63.5 and 31.75 of 127 / 2), a value at the maximum with each sign, zeros, and
    // the rows that give no codes (all zero, NaN, infinity) at every position of a vector.
    let mut ties = vec![1.0, -2.0, 0.5, 2.0, -0.0, 0.0];
    ties.extend(rng.vec(40, 2.0));
    rows.push(ties);
    rows.push(vec![0.0; 37]);
    for (len, bad) in [(9, f32::NAN), (33, f32::INFINITY), (40, f32::NEG_INFINITY)] {
        for at in [0, len / 2, len - 1] {
            let mut row = rng.vec(len, 1.0);
            row[at] = bad;
            rows.push(row);
        }
    }
    for row in &rows {
        let padded = row.len().next_multiple_of(4) + 4;
        let mut want = vec![0u8; padded];
        let want_scale = pack_row_u8(row, &mut want);
        #[allow(unused_mut)]
        let mut variants: Vec<(&str, Vec<u8>, f32)> = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            if has_avx2_fma() {
                let mut got = vec![7u8; padded];
                // SAFETY: avx2 and fma were detected just above; `got` is longer than the row.
                let scale = unsafe { x86::pack_row_u8_avx2(row, &mut got) };
                variants.push(("avx2", got, scale));
            }
            if has_avx512() && std::arch::is_x86_feature_detected!("avx512bw") {
                let mut got = vec![7u8; padded];
                // SAFETY: avx512f and avx512bw were detected just above; `got` is longer.
                let scale = unsafe { x86::pack_row_u8_avx512(row, &mut got) };
                variants.push(("avx512", got, scale));
            }
        }
        for (name, got, scale) in variants {
            assert_eq!(got, want, "{name}, row of {}", row.len());
            assert_eq!(scale.to_bits(), want_scale.to_bits(), "{name} scale");
        }
    }
}

#[test]
fn dispatch_runs_the_requested_variant() {
    #[cfg(target_arch = "x86_64")]
    {
        let av = Bf16Kernel::available();
        assert_eq!(
            av.contains(&Bf16Kernel::Avx512Bf16),
            std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512bf16")
        );
        let avx2 = std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma");
        assert_eq!(av.contains(&Bf16Kernel::Avx2), avx2);
        assert_eq!(Int8Kernel::available().contains(&Int8Kernel::Avx2), avx2);
        assert_eq!(
            Int8Kernel::available().contains(&Int8Kernel::Avx512Vnni),
            std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512vnni")
        );
    }
    assert_eq!(Bf16Kernel::best(), *Bf16Kernel::available().last().unwrap());
    if Bf16Kernel::available().contains(&Bf16Kernel::Amx) {
        assert!(Bf16Kernel::available().contains(&Bf16Kernel::Avx512Bf16));
    }
    // vdpbf16ps and tdpbf16ps treat denormal inputs as zero; the f32 paths do not. K = 1
    // runs AMX's edge code (vdpbf16ps), K = 32 its tiles.
    let tiny = f32::from_bits(0x0001_0000); // a bf16-exact denormal
    for k in [1, 32] {
        let p = pack_bf16(&vec![1.0; k], k, 1).unwrap();
        let mut x = vec![0.0; k];
        x[0] = tiny;
        for kernel in Bf16Kernel::available() {
            let mut y = [0f32];
            linear_bf16(&x, 1, &p, &[], &mut y, kernel, 1).unwrap();
            let flushed = y[0] == 0.0;
            let flushing = matches!(kernel, Bf16Kernel::Avx512Bf16 | Bf16Kernel::Amx);
            assert_eq!(flushed, flushing, "{kernel:?} K {k}");
        }
    }
    // int8 variants are bit-identical (exact integer math, same epilogue)
    let mut rng = Rng(42);
    let (rows, k, n) = (23, 100, 70);
    let x = rng.vec(rows * k, 1.0);
    let w = rng.vec(k * n, 1.0);
    let b = rng.vec(n, 1.0);
    let p = pack_int8(&w, k, n).unwrap();
    let mut y0 = vec![0f32; rows * n];
    linear_int8(&x, rows, &p, &b, &mut y0, Int8Kernel::Portable, 1).unwrap();
    for kernel in Int8Kernel::available() {
        let mut y = vec![0f32; rows * n];
        linear_int8(&x, rows, &p, &b, &mut y, kernel, 2).unwrap();
        assert_eq!(y, y0, "{kernel:?}");
    }
}

#[test]
fn low_precision_activation_stays_within_1e5_of_the_f32_one() {
    // Every value from -30 to 30 in steps of 2^-10, tiny and huge ones, and a row length that
    // leaves a masked tail; relative error against the f32 layers' activation, plus 2e-7
    // absolute: below x = -4, GELU's 1 + erf(x/√2) cancels to a few 1e-5 in both forms, whose
    // f32 roundings differ by up to 1e-7 there.
    use crate::model::kernels::act_row;
    let mut src: Vec<f32> = (-30 * 1024..=30 * 1024)
        .map(|i| i as f32 / 1024.0)
        .collect();
    src.extend([
        1e-30, -1e-30, 1e-6, -1e-6, 80.0, -80.0, 1e6, -1e6, 0.0, -0.0,
    ]);
    src.push(0.75);
    assert_ne!(src.len() % 16, 0);
    for act in [Activation::QuickGelu, Activation::Gelu] {
        let (mut exact, mut fast) = (vec![0f32; src.len()], vec![0f32; src.len()]);
        act_row(&src, &mut exact, act);
        act_row_lowp(&src, &mut fast, act);
        let mut worst = (0f32, 0f32);
        for ((&x, &e), &f) in src.iter().zip(&exact).zip(&fast) {
            let error = (f - e).abs();
            assert!(
                error <= 1e-5 * e.abs() + 2e-7,
                "{act:?}({x}) = {f}, f32 layers {e} (relative {})",
                error / e.abs()
            );
            if e.abs() > 1e-2 && error / e.abs() > worst.1 {
                worst = (x, error / e.abs());
            }
        }
        eprintln!(
            "{act:?}: worst relative error {:.2e} at {}",
            worst.1, worst.0
        );
        // NaN stays NaN, infinities keep their sign's limit.
        let special = [f32::NAN, f32::INFINITY];
        let mut out = [0f32; 2];
        act_row_lowp(&special, &mut out, act);
        assert!(out[0].is_nan(), "{act:?}(NaN) = {}", out[0]);
        assert_eq!(out[1], f32::INFINITY, "{act:?}(inf)");
    }
}

/// Every f32 panel kernel this CPU runs against an f64 reference on the weights as stored, and
/// the variants against each other bit for bit: ragged rows (not a multiple of 6 or 14), columns
/// (not of 16 or 32), K at and off a multiple of 1,024 (the padded copy) and past one K block,
/// with and without bias, activation and residual, on one and two threads.
#[test]
fn f32_panels_match_the_f64_product() {
    let kernels = F32PanelKernel::available();
    for kernel in [F32PanelKernel::Avx2, F32PanelKernel::Avx512] {
        if !kernel.is_available() {
            let w = PackedF32::pack_out_in(&[1.0], 1, 1).expect("pack");
            let err = linear_f32_fused(&[1.0], 1, &w, &[], Fused::default(), kernel, 1)
                .expect_err("a kernel this CPU lacks");
            assert!(err.contains(kernel.name()), "{err}");
        }
    }
    assert_eq!(
        has_f32_panel_kernel(),
        kernels.contains(&F32PanelKernel::Avx512)
    );
    if kernels.is_empty() {
        eprintln!("skipped: this CPU has neither AVX2 + FMA nor AVX-512F");
        return;
    }
    let mut rng = Rng(7);
    let shapes = [
        (1, 1, 1),
        (15, 33, 31),
        (29, 1024, 70),
        (200, 96, 64),
        (3, 2048, 33),
        (7, 2100, 17),
    ];
    for &(rows, k, n) in &shapes {
        for (case, threads) in [(0, 1), (1, 2), (2, 2)] {
            let x = rng.vec(rows * k, 1.0);
            let w = rng.vec(n * k, 0.5);
            let bias = if case == 0 {
                Vec::new()
            } else {
                rng.vec(n, 1.0)
            };
            let residual = rng.vec(rows * n, 1.0);
            let act = (case == 2).then_some(Activation::QuickGelu);
            let fused = Fused {
                act,
                residual: (case != 0).then_some(&residual[..]),
            };
            let packed = PackedF32::pack_out_in(&w, k, n).expect("pack");
            let run = |kernel| {
                linear_f32_fused(&x, rows, &packed, &bias, fused, kernel, threads).expect("product")
            };
            let y = run(kernels[0]);
            assert_eq!(y.len(), rows * n);
            for &other in &kernels[1..] {
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                assert!(
                    bits(&run(other)) == bits(&y),
                    "rows {rows} k {k} n {n} case {case}: {} and {} differ",
                    kernels[0].name(),
                    other.name()
                );
            }
            let mut activated = vec![0f32; k];
            for r in 0..rows {
                let xr = &x[r * k..(r + 1) * k];
                let xr = match act {
                    Some(a) => {
                        act_row(xr, &mut activated, a);
                        &activated[..]
                    }
                    None => xr,
                };
                for j in 0..n {
                    let mut s = bias.get(j).map_or(0.0, |&b| b as f64);
                    let mut mag = s.abs();
                    for (kk, &xv) in xr.iter().enumerate() {
                        let p = xv as f64 * w[j * k + kk] as f64;
                        s += p;
                        mag += p.abs();
                    }
                    if case != 0 {
                        s += residual[r * n + j] as f64;
                        mag += residual[r * n + j].abs() as f64;
                    }
                    let got = y[r * n + j] as f64;
                    assert!(
                        (got - s).abs() <= 1e-6 * mag + 1e-6,
                        "rows {rows} k {k} n {n} case {case}: [{r}][{j}] = {got}, expected {s}"
                    );
                }
            }
        }
    }
    let w = PackedF32::pack_out_in(&[0.0; 6], 3, 2).expect("pack");
    for &kernel in &kernels {
        let run =
            |x: &[f32], bias: &[f32]| linear_f32_fused(x, 2, &w, bias, Fused::default(), kernel, 1);
        assert!(run(&[0.0; 5], &[]).is_err());
        assert!(run(&[0.0; 6], &[0.0]).is_err());
    }
    assert!(PackedF32::pack_out_in(&[0.0; 5], 3, 2).is_err());
}

#[test]
fn peak_rates_are_measured_for_the_instructions_this_cpu_has() {
    for instruction in PeakInstruction::ALL {
        let rate = peak_multiply_adds(instruction, 0.01);
        assert_eq!(
            rate.is_some(),
            instruction.is_available(),
            "{instruction:?}"
        );
        if let Some(r) = rate {
            // Even unoptimised (tests build this crate at opt-level 0) a core retires more than
            // 1e8 multiply-adds a second; a loop the compiler dropped would report far more than
            // any core's 1e13.
            assert!(
                r.is_finite() && r > 1e8 && r < 1e13,
                "{instruction:?}: {r} multiply-adds/s"
            );
        }
    }
}

#[test]
fn the_prefetched_block_is_the_one_the_item_reads_next() {
    for (panels, ksteps, kc) in [
        (0..1, 10, 64),
        (4..8, 10, 64),
        (4..7, 200, 64),
        (2..3, 129, 64),
        (0..4, 2048, 2048),
        (0..4, 2049, 2048),
    ] {
        // The order in which `run_tiles` reads an item's weight blocks: K blocks outside,
        // panels inside.
        let mut order = Vec::new();
        let mut kc0 = 0;
        while kc0 < ksteps {
            order.extend(panels.clone().map(|p| (p, kc0)));
            kc0 += kc;
        }
        for pair in order.windows(2) {
            let (p, k0) = pair[0];
            assert_eq!(
                block_after(p, k0, &panels, ksteps, kc),
                Some(pair[1]),
                "{panels:?} {ksteps} {kc}"
            );
        }
        let &(p, k0) = order.last().expect("a block");
        assert_eq!(block_after(p, k0, &panels, ksteps, kc), None);
    }
}

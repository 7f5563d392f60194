//! Multiply-add rate of the bf16 and int8 linear kernels (and of the f32 ones over weights in
//! place: the out-in kernel for the few-row shapes, gemm for the others)
//! on the shapes of ViT-B/32's layers,
//! for every kernel variant this CPU runs, so a kernel change can be measured alone (the
//! towers' benchmarks also time packing, attention and the elementwise steps).
//!
//! ```text
//! cargo run --release -p gclip --example bench_lowp -- [--threads N] [--seconds S] [--kernel NAME]
//!     [--shape NAME] [--rounds N] [--cold]
//! ```
//! `--cold` gives the packed kernels (f32 panels, bf16, int8) copies of the weight totalling
//! 256 MiB of f32, one per call in turn, so that each call reads its weight from memory as the
//! towers do.
//! `--shape NAME` runs only the shapes of that name (e.g. `fc1 b32`); `--rounds N` times each
//! product of a shape N times in turn and prints its median, so that kernels are compared under
//! the same load on a noisy machine.
//! Prints one line per (kernel, shape): rows × in × out, GFLOP/s (2 flops per multiply-add),
//! and for the AVX-512 kernels the share of the ceiling of the instruction they are built of,
//! measured first on `--threads` threads at once (`lowp::peak_multiply_adds`).

use std::time::{Duration, Instant};

use gclip::model::lowp::{
    self, Bf16Kernel, F32PanelKernel, Int8Kernel, PackedBf16, PackedF32, PackedInt8,
    PeakInstruction,
};
use gclip::model::outin::{gemm_add, out_in_add, OutInKernel, OUT_IN_MAX_ROWS};

/// (what, rows, in, out): the image tower at batch 32 (1,600 tokens), training at batch 64
/// (3,200 image tokens), and a weight-gradient product (K = 1,024 token rows).
const SHAPES: &[(&str, usize, usize, usize)] = &[
    ("qkv b32", 1600, 768, 2304),
    ("out b32", 1600, 768, 768),
    ("fc1 b32", 1600, 768, 3072),
    ("fc2 b32", 1600, 3072, 768),
    ("fc1 train", 3200, 768, 3072),
    ("fc2 train", 3200, 3072, 768),
    ("wgrad fc1", 768, 1024, 3072),
    ("wgrad fc2", 3072, 1024, 768),
    ("fc1 b1", 50, 768, 3072),
    ("fc2 b1", 50, 3072, 768),
    ("text fc1", 48, 512, 2048),
    ("text b1 fc1", 16, 512, 2048),
    ("text b1 fc2", 16, 2048, 512),
    ("one row", 1, 768, 3072),
    ("text qkv", 512, 512, 1536),
    ("text fc1", 512, 512, 2048),
    ("text fc2", 512, 2048, 512),
];

/// f32 bytes of the copies of a weight that `--cold` cycles through: several times any L3.
const COLD_BYTES: usize = 256 << 20;

/// A timed product that takes the next of `weights` at each call (`--cold`).
fn cycling<'a, W: 'a>(
    weights: std::rc::Rc<Vec<W>>,
    mut product: impl FnMut(&W) + 'a,
) -> Box<dyn FnMut() + 'a> {
    let mut turn = 0;
    Box::new(move || {
        product(&weights[turn % weights.len()]);
        turn += 1;
    })
}

/// `count` weights made by `pack`, for `kernels` to cycle through: none when no kernel of
/// theirs runs, so that a weight is packed (and copied, with --cold) only for kernels timed.
fn copies_for<K, T>(kernels: &[K], count: usize, pack: impl Fn() -> T) -> std::rc::Rc<Vec<T>> {
    let count = if kernels.is_empty() { 0 } else { count };
    std::rc::Rc::new((0..count).map(|_| pack()).collect())
}

fn pseudo_random(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        })
        .collect()
}

/// Calls `run` until `seconds` have passed (at least twice) and returns GFLOP/s.
fn rate(flops: f64, seconds: f64, mut run: impl FnMut()) -> f64 {
    run();
    let start = Instant::now();
    let mut n = 0u32;
    while n < 2 || start.elapsed() < Duration::from_secs_f64(seconds) {
        run();
        n += 1;
    }
    flops * n as f64 / start.elapsed().as_secs_f64() / 1e9
}

/// GFLOP/s of `instruction` with every one of `threads` threads running it at once.
fn peak_gflops(instruction: PeakInstruction, threads: usize, seconds: f64) -> Option<f64> {
    let rates: Vec<Option<f64>> = std::thread::scope(|s| {
        let runs: Vec<_> = (0..threads)
            .map(|_| s.spawn(move || lowp::peak_multiply_adds(instruction, seconds)))
            .collect();
        runs.into_iter()
            .map(|r| r.join().expect("peak thread"))
            .collect()
    });
    rates
        .into_iter()
        .sum::<Option<f64>>()
        .map(|r| 2.0 * r / 1e9)
}

/// The instruction a kernel (by name) is built of, where its ceiling is measured.
fn instruction_of(kernel: &str) -> Option<PeakInstruction> {
    match kernel {
        k if k.starts_with("f32-panels-avx512") || k.starts_with("f32-outin-avx512") => {
            Some(PeakInstruction::F32Fma)
        }
        "bf16-avx512bf16" => Some(PeakInstruction::Bf16Dot),
        "int8-avx512vnni" => Some(PeakInstruction::Int8Dot),
        _ => None,
    }
}

fn main() {
    let mut threads = 1usize;
    let mut seconds = 1.0f64;
    let mut only: Option<String> = None;
    let mut only_shape: Option<String> = None;
    let mut rounds = 1usize;
    let mut cold = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--threads" => {
                threads = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--threads N")
            }
            "--seconds" => {
                seconds = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--seconds S")
            }
            "--kernel" => only = args.next(),
            "--shape" => only_shape = args.next(),
            "--cold" => cold = true,
            "--rounds" => {
                rounds = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .filter(|&n| n > 0)
                    .expect("--rounds N (at least 1)")
            }
            other => panic!("unknown argument {other}"),
        }
    }
    let wanted = |name: &str| only.as_deref().is_none_or(|o| name.contains(o));
    println!("threads {threads}; GFLOP/s = 2 * rows * in * out / time");
    let peaks: Vec<(PeakInstruction, f64)> = PeakInstruction::ALL
        .into_iter()
        .filter_map(|i| Some((i, peak_gflops(i, threads, seconds.min(1.0))?)))
        .collect();
    for (i, g) in &peaks {
        println!(
            "ceiling {:<18} {g:>8.1} GFLOP/s on {threads} threads at once",
            i.name()
        );
    }
    let row = |kernel: &str, what: &str, rows: usize, din: usize, dout: usize, g: f64| {
        let share = instruction_of(kernel)
            .and_then(|i| peaks.iter().find(|(p, _)| *p == i))
            .map(|(_, peak)| format!(" {:>5.1} % of ceiling", 100.0 * g / peak))
            .unwrap_or_default();
        println!("{kernel:<22} {what:<10} {rows:>5} x {din:>4} x {dout:>4} {g:>8.1}{share}");
    };
    // The f32 products run on the current rayon pool; the low-precision ones take `threads`.
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("thread pool");
    for &(what, rows, din, dout) in SHAPES {
        if only_shape.as_deref().is_some_and(|o| o != what) {
            continue;
        }
        let x = pseudo_random(rows * din, 1);
        let w = pseudo_random(din * dout, 2);
        let bias = pseudo_random(dout, 3);
        let new_dst = || vec![0f32; rows * dout];
        let flops = 2.0 * (rows * din * dout) as f64;
        // With --cold, enough copies of each packed weight that each call reads its copy from
        // memory, as a tower does (its weights do not fit in the caches); one copy otherwise.
        let copy_count = if cold {
            COLD_BYTES.div_ceil(din * dout * 4).max(2)
        } else {
            1
        };
        // Every product of the shape, by name; timed in turn below.
        let mut runs: Vec<(String, Box<dyn FnMut() + '_>)> = Vec::new();
        if rows <= OUT_IN_MAX_ROWS {
            // The f32 weight read in place, as from a checkpoint: at a cache-line boundary, and
            // one float past it (where safetensors' header length usually leaves it).
            for kernel in OutInKernel::available() {
                for shift in [0, 1] {
                    let name = format!("{}+{shift}", kernel.name());
                    if !wanted(&name) {
                        continue;
                    }
                    let mut buffer = vec![0f32; din * dout + 32];
                    let aligned = (64 - buffer.as_ptr() as usize % 64) % 64 / 4;
                    let start = aligned + shift;
                    buffer[start..start + w.len()].copy_from_slice(&w);
                    let (x, pool, mut dst) = (&x, &pool, new_dst());
                    runs.push((
                        name,
                        Box::new(move || {
                            let placed = &buffer[start..start + din * dout];
                            pool.install(|| {
                                out_in_add(kernel, x, rows, placed, dout, din, &mut dst, dout)
                                    .expect("out-in product")
                            })
                        }),
                    ));
                }
            }
        }
        if rows > OUT_IN_MAX_ROWS && wanted("f32-gemm") {
            // f32 over the weight in place through gemm (which packs it per call), on
            // `threads` tasks: the rate the low-precision kernels must beat.
            let (x, w, pool, mut dst) = (&x, &w, &pool, new_dst());
            runs.push((
                "f32-gemm".into(),
                Box::new(move || {
                    pool.install(|| {
                        gemm_add(x, rows, w, dout, din, &mut dst, dout).expect("gemm product")
                    })
                }),
            ));
        }
        let panel_kernels: Vec<F32PanelKernel> = F32PanelKernel::available()
            .into_iter()
            .filter(|k| wanted(k.name()))
            .collect();
        let packed = copies_for(&panel_kernels, copy_count, || {
            PackedF32::pack_out_in(&w, din, dout).expect("pack f32")
        });
        for kernel in panel_kernels {
            let (x, bias) = (&x, &bias);
            let run = cycling(packed.clone(), move |w| {
                let fused = Default::default();
                let y = lowp::linear_f32_fused(x, rows, w, bias, fused, kernel, threads)
                    .expect("f32 product");
                std::hint::black_box(y);
            });
            runs.push((kernel.name().into(), run));
        }
        let bf16_kernels: Vec<Bf16Kernel> = Bf16Kernel::available()
            .into_iter()
            .filter(|k| wanted(k.name()))
            .collect();
        let packed = copies_for(&bf16_kernels, copy_count, || {
            PackedBf16::pack_out_in(&w, din, dout).expect("pack bf16")
        });
        for kernel in bf16_kernels {
            let (x, bias, mut dst) = (&x, &bias, new_dst());
            let run = cycling(packed.clone(), move |w| {
                lowp::linear_bf16(x, rows, w, bias, &mut dst, kernel, threads)
                    .expect("bf16 product")
            });
            runs.push((kernel.name().into(), run));
        }
        let int8_kernels: Vec<Int8Kernel> = Int8Kernel::available()
            .into_iter()
            .filter(|k| wanted(k.name()))
            .collect();
        let packed = copies_for(&int8_kernels, copy_count, || {
            PackedInt8::pack_out_in(&w, din, dout).expect("pack int8")
        });
        for kernel in int8_kernels {
            let (x, bias, mut dst) = (&x, &bias, new_dst());
            let run = cycling(packed.clone(), move |w| {
                lowp::linear_int8(x, rows, w, bias, &mut dst, kernel, threads)
                    .expect("int8 product")
            });
            runs.push((kernel.name().into(), run));
        }
        // In turn, `rounds` times, so that products are compared under the same load.
        let mut rates = vec![Vec::new(); runs.len()];
        for _ in 0..rounds {
            for ((_, run), rates) in runs.iter_mut().zip(&mut rates) {
                rates.push(rate(flops, seconds, run));
            }
        }
        for ((name, _), rates) in runs.iter().zip(&mut rates) {
            rates.sort_by(f64::total_cmp);
            row(name, what, rows, din, dout, rates[rates.len() / 2]);
        }
    }
    // A transformer MLP in bf16, fused (fc1's tiles activated straight into fc2's bf16 input)
    // and as its two layers one after the other; `in x out` is the width × the hidden width.
    for &(what, rows, width, hidden) in MLP_SHAPES {
        let x = pseudo_random(rows * width, 1);
        let residual = pseudo_random(rows * width, 4);
        let fc1 = PackedBf16::pack_out_in(&pseudo_random(hidden * width, 2), width, hidden)
            .expect("pack fc1");
        let fc2 = PackedBf16::pack_out_in(&pseudo_random(width * hidden, 3), hidden, width)
            .expect("pack fc2");
        let (b1, b2) = (pseudo_random(hidden, 5), pseudo_random(width, 6));
        let flops = 4.0 * (rows * width * hidden) as f64;
        let act = gclip::model::kernels::Activation::QuickGelu;
        for kernel in Bf16Kernel::available() {
            let fused = || {
                let y = lowp::mlp_bf16(
                    &x,
                    rows,
                    &fc1,
                    &b1,
                    act,
                    &fc2,
                    &b2,
                    Some(&residual),
                    kernel,
                    threads,
                );
                std::hint::black_box(y)
            };
            if !wanted(kernel.name()) || fused().is_err() {
                continue;
            }
            let g = rate(flops, seconds, || {
                fused().expect("fused mlp");
            });
            row(
                kernel.name(),
                &format!("{what} fused"),
                rows,
                width,
                hidden,
                g,
            );
            let g = rate(flops, seconds, || {
                let h = lowp::linear_bf16_fused(
                    &x,
                    rows,
                    &fc1,
                    &b1,
                    Default::default(),
                    kernel,
                    threads,
                )
                .expect("fc1");
                let steps = lowp::Fused {
                    act: Some(act),
                    residual: Some(&residual),
                };
                let y = lowp::linear_bf16_fused(&h, rows, &fc2, &b2, steps, kernel, threads)
                    .expect("fc2");
                std::hint::black_box(y);
            });
            row(
                kernel.name(),
                &format!("{what} 2 layers"),
                rows,
                width,
                hidden,
                g,
            );
        }
    }
}

/// (what, rows, width, hidden width) of the MLPs: the image tower at batch 32 and the text
/// tower at 32 × 77 tokens.
const MLP_SHAPES: &[(&str, usize, usize, usize)] =
    &[("mlp b32", 1600, 768, 3072), ("text mlp", 2464, 512, 2048)];

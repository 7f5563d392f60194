//! Images per second for decode + resize + crop (+ convert) on one thread, as open_clip's
//! transform does before its float steps, with a breakdown by stage.
//!
//! ```text
//! cargo run --release -p gclip --example bench_preprocess -- data/bench/photo_4000x3000.jpg data/bench/photo_640x480.png
//! ```
//! Options: `--size N` (default 224), `--transformers` (transformers' convention),
//! `--threads N` (also time a parallel batch on N threads), `--iters N` (a fixed number of
//! iterations instead of about three seconds per measurement).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use gclip::input::decode;
use gclip::input::image::{PreprocessConfig, PreprocessConvention, Preprocessor};

fn main() {
    let mut size = 224;
    let mut convention = PreprocessConvention::OpenClip;
    let mut threads = 0usize;
    let mut iters = 0u32;
    let mut files = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--size" => size = args.next().and_then(|v| v.parse().ok()).expect("--size N"),
            "--transformers" => convention = PreprocessConvention::Transformers,
            "--iters" => iters = args.next().and_then(|v| v.parse().ok()).expect("--iters N"),
            "--threads" => {
                threads = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--threads N")
            }
            _ => files.push(PathBuf::from(a)),
        }
    }
    if files.is_empty() {
        eprintln!("usage: bench_preprocess [--size N] [--transformers] [--threads N] FILE...");
        std::process::exit(2);
    }
    let mut cfg = PreprocessConfig::open_clip(size);
    cfg.convention = convention;
    let pre = Preprocessor::new(cfg);
    for path in &files {
        let bytes = std::fs::read(path).expect("readable file");
        let _ = pre.rgb8_from_path(path).expect("image decodes");
        let per_image = time(iters, || {
            std::hint::black_box(pre.rgb8_from_path(path).unwrap());
        });
        let decode_only = time(iters, || {
            std::hint::black_box(decode::decode(&bytes, u64::MAX).ok());
        });
        println!(
            "{}: {:.1} images/s on one thread ({:.1} ms/image: decode {:.1} ms, resize+crop+convert {:.1} ms), size {size}, {:?}",
            path.display(),
            1.0 / per_image.as_secs_f64(),
            ms(per_image),
            ms(decode_only),
            ms(per_image.saturating_sub(decode_only)),
            convention,
        );
        if threads > 1 {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let batch: Vec<PathBuf> = vec![path.clone(); threads * 8];
            let t0 = Instant::now();
            pool.install(|| pre.batch_from_paths(&batch));
            let dt = t0.elapsed().as_secs_f64();
            println!(
                "  batch of {} on {threads} threads: {:.1} images/s",
                batch.len(),
                batch.len() as f64 / dt
            );
        }
    }
}

fn time(iters: u32, mut f: impl FnMut()) -> Duration {
    let mut n = 0u32;
    let t0 = Instant::now();
    while (iters == 0 && (t0.elapsed() < Duration::from_secs(3) || n < 5)) || n < iters {
        f();
        n += 1;
    }
    t0.elapsed() / n
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

//! Latency of one zero-shot classify call (one image, the captions given) with the model
//! already loaded: what a program that keeps gclip in memory pays per request.
//!
//! ```text
//! cargo run --release -p gclip --example classify_latency -- MODEL_DIR IMAGE [--runs 20] \
//!     [--labels "a photo of a cat" …]
//! ```
//!
//! Prints the load time, then the median, minimum and maximum of `--runs` timed calls of
//! `classify_image_files` (six captions embedded, one image decoded, preprocessed and embedded,
//! softmax), after one untimed warm-up call. `tools/bench_classify.sh` runs it next to the
//! whole `gclip classify` process and the Python tutorial code (`tools/bench_classify.py`).

use std::path::PathBuf;
use std::time::Instant;

use candle_core::Device;
use gclip::embed::Embedder;
use gclip::source::ModelSource;
use gclip::zeroshot::{classify_image_files, ClassifyOptions};

const CAPTIONS: [&str; 6] = [
    "a photo of a cat",
    "a photo of a dog",
    "a photo of two cats",
    "a cat sleeping on a sofa",
    "a drawing of a cat",
    "a photo of a car",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let mut positional = Vec::new();
    let mut runs = 20usize;
    let mut labels: Vec<String> = Vec::new();
    while let Some(a) = args.next() {
        match a.as_str() {
            "--runs" => runs = args.next().ok_or("--runs N")?.parse()?,
            "--labels" => labels.extend(args.by_ref()),
            _ => positional.push(a),
        }
    }
    let [model, image] = <[String; 2]>::try_from(positional)
        .map_err(|_| "usage: classify_latency MODEL_DIR IMAGE [--runs N] [--labels …]")?;
    if labels.is_empty() {
        labels = CAPTIONS.iter().map(|s| s.to_string()).collect();
    }

    let t = Instant::now();
    let source = ModelSource::resolve(&model, None)?;
    let embedder = Embedder::load(&source, &Device::Cpu)?;
    println!("load: {:.1} ms", t.elapsed().as_secs_f64() * 1e3);

    let images = [PathBuf::from(&image)];
    let options = ClassifyOptions::default();
    let call = || classify_image_files(&embedder, &labels, &images, &options, &|_, _, _| {});
    let first = Instant::now();
    let result = call()?;
    println!("first call: {:.1} ms", first.elapsed().as_secs_f64() * 1e3);
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs.max(1) {
        let t = Instant::now();
        call()?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    println!(
        "warm call: median {:.1} ms, min {:.1} ms, max {:.1} ms ({} runs, {} threads)",
        times[times.len() / 2],
        times[0],
        times[times.len() - 1],
        times.len(),
        candle_core::utils::get_num_threads()
    );
    if let Some(Ok(ranked)) = result.rankings.first() {
        println!("top: {} ({:.4})", ranked[0].label, ranked[0].probability);
    }
    Ok(())
}

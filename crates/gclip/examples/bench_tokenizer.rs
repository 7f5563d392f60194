//! Tokenizer throughput on one core: `encode` of short captions like product titles.
//!
//! ```text
//! cargo run --release -p gclip --example bench_tokenizer [-- --hf tests/fixtures/tokenizer/hf] [--n 200000]
//! ```
//!
//! Prints captions per second for the open_clip convention (and the transformers convention when
//! `--hf DIR` is given), first with every caption distinct (cold word cache), then repeated passes
//! (warm cache), plus a few long or unusual inputs. `tools/bench_tokenizer.py` times open_clip and
//! transformers on the same captions.
//!
//! `--tokenizers-json FILE` (with `--hf`) also runs the Rust `tokenizers` crate, the library behind
//! transformers' fast tokenizer, on that `tokenizer.json`: its speed on the same captions (ids
//! checked against gclip's), and its agreement with the fixtures of `tests/fixtures/tokenizer/`
//! (the corpus at context 77 and the untruncated Unicode sweep), to decide whether gclip's
//! transformers convention should be that crate (issue 15).

use std::time::Instant;

use gclip::input::tokenizer::ClipTokenizer;

/// The same deterministic captions `tools/bench_tokenizer.py` makes.
fn captions(n: usize) -> Vec<String> {
    const BRANDS: [&str; 12] = [
        "Samsung",
        "Apple",
        "Nike",
        "IKEA",
        "Sony",
        "Bosch",
        "LEGO",
        "Philips",
        "Adidas",
        "Canon",
        "Müller",
        "Café Noir",
    ];
    const ITEMS: [&str; 16] = [
        "Wireless Headphones",
        "Running Shoes",
        "Smart TV",
        "Coffee Maker",
        "Desk Lamp",
        "Backpack",
        "Water Bottle",
        "Gaming Mouse",
        "T-Shirt",
        "Office Chair",
        "Phone Case",
        "Blender",
        "Sunglasses",
        "Wall Clock",
        "Yoga Mat",
        "Kitchen Knife Set",
    ];
    const COLOURS: [&str; 10] = [
        "Black",
        "White",
        "Navy Blue",
        "Red",
        "Grey",
        "Green",
        "Rose Gold",
        "Silver",
        "Beige",
        "Pink",
    ];
    const EXTRAS: [&str; 8] = [
        "2-Pack",
        "XL",
        "(2024 Model)",
        "- Waterproof",
        "with USB-C",
        "500ml",
        "Men's",
        "for Kids",
    ];
    let mut state: u64 = 42;
    let mut next = move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) as usize
    };
    (0..n)
        .map(|i| {
            format!(
                "{} {} {} {} {}{}",
                BRANDS[next() % BRANDS.len()],
                ITEMS[next() % ITEMS.len()],
                COLOURS[next() % COLOURS.len()],
                EXTRAS[next() % EXTRAS.len()],
                next() % 1000,
                if i % 10 == 0 {
                    " – Free Shipping!"
                } else {
                    ""
                }
            )
        })
        .collect()
}

fn bench(name: &str, tok: &ClipTokenizer, texts: &[String], passes: usize) {
    bench_with(name, texts, passes, |t| tok.encode(t)[1]);
}

/// Times `first_id` (the first id after the start token of a caption) over `passes` passes of
/// `texts` and prints the rate with a checksum of those ids.
fn bench_with(name: &str, texts: &[String], passes: usize, first_id: impl Fn(&str) -> u32) {
    let start = Instant::now();
    let mut checksum = 0u64;
    for _ in 0..passes {
        for t in texts {
            checksum = checksum.wrapping_add(first_id(t) as u64);
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let n = texts.len() * passes;
    println!(
        "{name:<44} {:>9.0} captions/s  {:>6.2} M/min  {:>6.2} µs/caption  (n={n}, checksum {checksum})",
        n as f64 / secs,
        n as f64 / secs * 60.0 / 1e6,
        secs * 1e6 / n as f64
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let n: usize = value("--n").and_then(|v| v.parse().ok()).unwrap_or(200_000);
    let texts = captions(n);
    println!("example caption: {:?}", texts[1]);
    println!("single thread; {} distinct captions", texts.len());

    let start = Instant::now();
    let oc = ClipTokenizer::open_clip_default().expect("embedded vocabulary");
    println!(
        "open_clip_default(): {:.1} ms",
        start.elapsed().as_secs_f64() * 1e3
    );
    bench("open_clip convention, first pass", &oc, &texts, 1);
    bench("open_clip convention, warm (3 passes)", &oc, &texts, 3);
    if let Some(dir) = value("--hf") {
        let start = Instant::now();
        let hf = ClipTokenizer::from_hf_dir(std::path::Path::new(&dir)).expect("hf dir");
        println!(
            "from_hf_dir(): {:.1} ms",
            start.elapsed().as_secs_f64() * 1e3
        );
        bench("transformers convention, first pass", &hf, &texts, 1);
        bench("transformers convention, warm (3 passes)", &hf, &texts, 3);
        if let Some(json) = value("--tokenizers-json") {
            tokenizers_crate(std::path::Path::new(&json), &hf, &texts);
        }
    }

    let odd: Vec<String> = vec![
        "Ã©tÃ© â€œmojibakeâ€ caf&eacute; ﬁne ＬＯＵＤ".to_owned(),
        "Ein Foto von einer Katze auf dem Sofa, Größe XL".to_owned(),
        "日本語のテキストと絵文字 😀👍🏽".to_owned(),
    ];
    let odd: Vec<String> = odd.iter().cycle().take(30_000).cloned().collect();
    bench("open_clip, non-ASCII captions", &oc, &odd, 1);

    let long = "the quick brown fox jumps over the lazy dog ".repeat(500);
    bench("open_clip, 22,000-character text", &oc, &[long], 20);
    let mut state = 7u64;
    let word: String = (0..100_000)
        .map(|_| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1);
            (b'a' + ((state >> 33) % 26) as u8) as char
        })
        .collect();
    bench("open_clip, one 100,000-letter word", &oc, &[word], 1);

    let batch: Vec<&str> = texts.iter().map(String::as_str).collect();
    let start = Instant::now();
    let out = oc.encode_batch(&batch);
    println!(
        "encode_batch ({} threads), open_clip: {:.0} captions/s ({} rows)",
        rayon::current_num_threads(),
        out.len() as f64 / start.elapsed().as_secs_f64(),
        out.len()
    );
}

/// The `tokenizers` crate on `json`: throughput on `texts` (untruncated ids compared with `hf`'s) and
/// agreement with the transformers ids of the tokenizer fixtures.
fn tokenizers_crate(json: &std::path::Path, hf: &ClipTokenizer, texts: &[String]) {
    use std::io::BufRead;
    use tokenizers::{Tokenizer, TruncationParams};

    let start = Instant::now();
    let mut crate_tok = Tokenizer::from_file(json).expect("tokenizer.json");
    println!(
        "tokenizers::Tokenizer::from_file(): {:.1} ms",
        start.elapsed().as_secs_f64() * 1e3
    );
    let untruncated = crate_tok.clone();
    crate_tok
        .with_truncation(Some(TruncationParams {
            max_length: 77,
            ..Default::default()
        }))
        .expect("truncation");
    let encode = |tok: &Tokenizer, text: &str, special: bool| -> Vec<u32> {
        tok.encode(text, special)
            .expect("tokenizers encode")
            .get_ids()
            .to_vec()
    };
    bench_with("tokenizers crate, one call per caption", texts, 1, |t| {
        encode(&crate_tok, t, true)[1]
    });
    let differ = texts
        .iter()
        .filter(|t| encode(&untruncated, t, false) != hf.tokenize_unpadded(t))
        .count();
    println!(
        "  ids differing from gclip's transformers convention: {differ} of {}",
        texts.len()
    );

    let fixtures =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tokenizer");
    let gz = |name: &str| {
        let file = std::fs::File::open(fixtures.join(name)).expect("tokenizer fixture");
        std::io::BufReader::new(flate2::read::GzDecoder::new(file))
    };
    let (mut corpus, mut corpus_same) = (0, 0);
    for line in gz("corpus.jsonl.gz").lines() {
        let v: serde_json::Value = serde_json::from_str(&line.expect("line")).expect("json");
        let want: Vec<u32> = serde_json::from_value(v["hf"].clone()).expect("hf ids");
        corpus += 1;
        corpus_same +=
            usize::from(encode(&crate_tok, v["text"].as_str().unwrap_or(""), true) == want);
    }
    let sweep: serde_json::Value =
        serde_json::from_reader(gz("unicode_sweep.json.gz")).expect("sweep");
    let (chunks, hf_ids) = (
        sweep["chunks"].as_array().expect("chunks"),
        sweep["hf"].as_array().expect("hf"),
    );
    let mut sweep_same = 0;
    let mut ours_same = 0;
    for (chunk, want) in chunks.iter().zip(hf_ids) {
        let chunk = chunk.as_str().unwrap_or("");
        let want: Vec<u32> = serde_json::from_value(want.clone()).expect("hf ids");
        sweep_same += usize::from(encode(&untruncated, chunk, false) == want);
        ours_same += usize::from(hf.tokenize_unpadded(chunk) == want);
    }
    println!(
        "  fixtures: corpus {corpus_same} / {corpus} (context 77); Unicode sweep {sweep_same} / {} \
         untruncated (gclip: {ours_same} / {})",
        chunks.len(),
        chunks.len()
    );
}

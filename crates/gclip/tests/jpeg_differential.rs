//! The JPEG decoder against libjpeg-turbo itself, over generated files.
//!
//! 1,200 deterministic images (gradients, noise, hard edges; 1×1 up to 300×200, odd sizes)
//! are encoded by libjpeg-turbo's `cjpeg` with varied settings (quality 1–100, 4:4:4, 4:2:2,
//! 4:2:0, 4:4:0, 4:1:1, 3:1 and mixed sampling, greyscale, RGB, progressive, restart intervals
//! in blocks and in rows, optimised Huffman tables) and decoded by `djpeg` with its defaults,
//! which are Pillow's: the accurate integer IDCT (JDCT_ISLOW), fancy upsampling, block
//! smoothing. gclip's decoder must give every pixel exactly, the tolerance the image fixtures
//! promise (`tests/image_preprocess.rs`: "every image must match exactly, JPEG included").
//!
//! Needs `cjpeg` and `djpeg` (Debian: `libjpeg-turbo-progs`, installed in CI by
//! `tools/ci_browser_setup.sh`). Without them the test fails, naming them, rather than passing
//! without having compared anything. Files that differ are written to
//! `$TMPDIR/gclip-jpeg-differential/` with their settings in the name.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use gclip::input::decode::{decode, Mode, Samples};

const IMAGES: usize = 1200;

/// A small deterministic generator (PCG-style LCG, high bits).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) as u32
    }

    fn below(&mut self, n: u32) -> u32 {
        self.next() % n
    }
}

/// The settings of one generated file.
struct Case {
    width: usize,
    height: usize,
    grey_input: bool,
    args: Vec<String>,
}

impl Case {
    fn describe(&self) -> String {
        format!("{}x{} {}", self.width, self.height, self.args.join(" "))
    }
}

fn case(i: usize) -> Case {
    let mut r = Rng(0x9e37_79b9_7f4a_7c15 ^ (i as u64).wrapping_mul(0x2545_f491_4f6c_dd1d));
    // Sizes: mostly anything up to 300×200, some degenerate and block-aligned ones.
    let (width, height) = match i % 10 {
        0 => (1 + r.below(3) as usize, 1 + r.below(3) as usize),
        1 => (1 + r.below(300) as usize, 1 + r.below(4) as usize),
        2 => (1 + r.below(4) as usize, 1 + r.below(200) as usize),
        3 => (
            8 * (1 + r.below(20) as usize),
            8 * (1 + r.below(16) as usize),
        ),
        4 => (
            16 * (1 + r.below(12) as usize) + 1,
            16 * (1 + r.below(8) as usize) - 1,
        ),
        _ => (1 + r.below(300) as usize, 1 + r.below(200) as usize),
    };
    let mut args: Vec<String> = Vec::new();
    let mut arg = |s: &str| args.push(s.to_string());
    // Colour: YCbCr with a sampling layout, greyscale, or RGB (no colour transform).
    let mut grey_input = false;
    match r.below(20) {
        0..=2 => arg("-grayscale"),
        3 => {
            grey_input = true; // a PGM input makes a one-component file
        }
        4 => {
            arg("-rgb");
            if r.below(2) == 0 {
                arg("-sample");
                arg("2x2,1x1,1x1");
            }
        }
        _ => {
            let sampling = [
                "1x1",
                "2x1",
                "2x2",
                "1x2",
                "4x1",
                "3x1",
                "1x3",
                "2x2,1x2,2x1",
                "2x1,1x1,2x1",
                "4x2",
                "1x4",
                "3x2",
            ];
            let s = if r.below(3) == 0 {
                "2x2" // Pillow's default and the commonest file
            } else {
                sampling[r.below(sampling.len() as u32) as usize]
            };
            arg("-sample");
            arg(s);
        }
    }
    let quality = match r.below(6) {
        0 => 1 + r.below(10),
        1 => 90 + r.below(11),
        _ => 1 + r.below(100),
    };
    arg("-quality");
    if r.below(8) == 0 {
        // Per-table qualities: luma and chroma tables differ more than usual.
        arg(&format!("{},{}", quality, 1 + r.below(100)));
    } else {
        arg(&quality.to_string());
    }
    if r.below(3) == 0 {
        arg("-progressive");
    }
    match r.below(4) {
        0 => {
            arg("-restart");
            arg(&format!("{}B", 1 + r.below(6)));
        }
        1 => {
            arg("-restart");
            arg(&(1 + r.below(3)).to_string());
        }
        _ => {}
    }
    if r.below(3) == 0 {
        arg("-optimize");
    }
    Case {
        width,
        height,
        grey_input,
        args,
    }
}

/// A PNM image: smooth gradients, noise of a random amplitude, and sometimes hard-edged bars
/// and saturated colours (which make the IDCT overshoot and exercise range limiting).
fn source_image(i: usize, c: &Case) -> Vec<u8> {
    let mut r = Rng(i as u64 + 1);
    let ch = if c.grey_input { 1 } else { 3 };
    let noise = [0, 4, 16, 64, 255][r.below(5) as usize];
    let bars = r.below(3) == 0;
    let phase: Vec<u32> = (0..3).map(|_| r.below(256)).collect();
    let mut out = format!(
        "{}\n{} {}\n255\n",
        if ch == 1 { "P5" } else { "P6" },
        c.width,
        c.height
    )
    .into_bytes();
    for y in 0..c.height {
        for x in 0..c.width {
            for (k, p) in phase.iter().take(ch).enumerate() {
                let gx = (x * 255 / c.width.max(2)) as u32;
                let gy = (y * 255 / c.height.max(2)) as u32;
                let mut v = (gx * (k as u32 + 1) + gy * (3 - k as u32) + p) / 2 % 256;
                if bars && (x / (3 + k) + y / 5) % 2 == 0 {
                    v = if v > 127 { 255 } else { 0 };
                }
                if noise > 0 {
                    v = (v + r.below(noise + 1)).saturating_sub(noise / 2).min(255);
                }
                out.push(v as u8);
            }
        }
    }
    out
}

fn run(tool: &str, args: &[String], input: &[u8]) -> Result<Vec<u8>, String> {
    let mut child = Command::new(tool)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{tool}: {e}"))?;
    let mut stdin = child.stdin.take().expect("piped stdin");
    let input = input.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child
        .wait_with_output()
        .map_err(|e| format!("{tool}: {e}"))?;
    writer
        .join()
        .expect("writer thread")
        .map_err(|e| format!("{tool}: writing its input: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{tool} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(out.stdout)
}

/// Parses djpeg's binary PGM/PPM output: (width, height, channels, samples).
fn parse_pnm(data: &[u8]) -> Result<(usize, usize, usize, Vec<u8>), String> {
    let mut fields = Vec::new();
    let mut pos = 0;
    while fields.len() < 4 {
        while pos < data.len() && data[pos].is_ascii_whitespace() {
            pos += 1;
        }
        let start = pos;
        while pos < data.len() && !data[pos].is_ascii_whitespace() {
            pos += 1;
        }
        if start == pos {
            return Err("short PNM header".into());
        }
        fields.push(String::from_utf8_lossy(&data[start..pos]).into_owned());
    }
    pos += 1; // the single whitespace byte after the maximum value
    let channels = match fields[0].as_str() {
        "P5" => 1,
        "P6" => 3,
        other => return Err(format!("unexpected PNM type {other}")),
    };
    let num = |s: &str| s.parse::<usize>().map_err(|e| format!("PNM header: {e}"));
    let (w, h) = (num(&fields[1])?, num(&fields[2])?);
    if fields[3] != "255" {
        return Err(format!("PNM maximum {}", fields[3]));
    }
    let samples = data
        .get(pos..pos + w * h * channels)
        .ok_or("short PNM data")?
        .to_vec();
    Ok((w, h, channels, samples))
}

fn tool_available(name: &str) -> bool {
    Command::new(name)
        .arg("-version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// Encode case `i`, decode it both ways; `Err` describes a difference or a failure.
fn check(i: usize, failures_dir: &PathBuf) -> Result<(), String> {
    let c = case(i);
    let jpeg = run("cjpeg", &c.args, &source_image(i, &c))?;
    let reference = run("djpeg", &["-pnm".to_string()], &jpeg)?;
    let (rw, rh, rc, want) = parse_pnm(&reference)?;
    let keep = |why: String| {
        let name = format!("{i:04}_{}.jpg", c.describe().replace([' ', ','], "_"));
        let _ = std::fs::create_dir_all(failures_dir);
        let _ = std::fs::write(failures_dir.join(&name), &jpeg);
        format!("case {i} ({}): {why} [kept as {name}]", c.describe())
    };
    let got = decode(&jpeg, u64::MAX).map_err(|e| keep(format!("gclip: {e:?}")))?;
    let channels = match got.mode {
        Mode::L => 1,
        Mode::Rgb => 3,
        m => return Err(keep(format!("gclip decoded mode {}", m.name()))),
    };
    if (got.width, got.height, channels) != (rw, rh, rc) {
        return Err(keep(format!(
            "gclip {}x{}x{channels}, djpeg {rw}x{rh}x{rc}",
            got.width, got.height
        )));
    }
    let Samples::U8(px) = &got.samples else {
        return Err(keep("16-bit samples".into()));
    };
    if px != &want {
        let differ = px.iter().zip(&want).filter(|(a, b)| a != b).count();
        let max = px
            .iter()
            .zip(&want)
            .map(|(a, b)| a.abs_diff(*b))
            .max()
            .unwrap_or(0);
        let first = px.iter().zip(&want).position(|(a, b)| a != b).unwrap_or(0);
        let (x, y) = ((first / channels) % rw, first / channels / rw);
        return Err(keep(format!(
            "{differ} of {} samples differ (max {max}); first at x={x} y={y} channel {}",
            want.len(),
            first % channels
        )));
    }
    Ok(())
}

#[test]
fn matches_libjpeg_turbo_on_generated_files() {
    assert!(
        tool_available("cjpeg") && tool_available("djpeg"),
        "cjpeg/djpeg (libjpeg-turbo) not found: the JPEG differential test needs them \
         (Debian: apt-get install libjpeg-turbo-progs, or bash tools/ci_browser_setup.sh)"
    );
    let failures_dir = std::env::temp_dir().join("gclip-jpeg-differential");
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .min(8);
    let failures: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let dir = &failures_dir;
                s.spawn(move || {
                    (t..IMAGES)
                        .step_by(threads)
                        .filter_map(|i| check(i, dir).err())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("worker"))
            .collect()
    });
    eprintln!(
        "{} generated JPEGs compared with djpeg, {} differ",
        IMAGES,
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {IMAGES} files differ from libjpeg-turbo:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn generated_cases_cover_the_settings() {
    // The generator really produces the variety the differential test claims.
    let cases: Vec<Case> = (0..IMAGES).map(case).collect();
    let count = |f: &dyn Fn(&Case) -> bool| cases.iter().filter(|c| f(c)).count();
    let has = |c: &Case, a: &str| c.args.iter().any(|x| x == a);
    let sampling = |c: &Case, s: &str| c.args.windows(2).any(|w| w[0] == "-sample" && w[1] == s);
    assert!(count(&|c| has(c, "-progressive")) > 200);
    assert!(count(&|c| has(c, "-restart")) > 200);
    assert!(count(&|c| has(c, "-optimize")) > 200);
    assert!(count(&|c| has(c, "-grayscale") || c.grey_input) > 100);
    assert!(count(&|c| has(c, "-rgb")) > 30);
    for s in ["1x1", "2x1", "2x2", "1x2", "4x1", "2x2,1x2,2x1"] {
        assert!(count(&|c| sampling(c, s)) > 15, "sampling {s}");
    }
    assert!(count(&|c| c.width == 1 || c.height == 1) > 20);
    assert!(count(&|c| c.width % 2 == 1 && c.height % 2 == 1) > 200);
    assert!(cases.iter().all(|c| c.width <= 300 && c.height <= 200));
    let qualities: std::collections::BTreeSet<&str> = cases
        .iter()
        .filter_map(|c| {
            c.args
                .windows(2)
                .find(|w| w[0] == "-quality")
                .map(|w| w[1].as_str())
        })
        .collect();
    assert!(qualities.contains("1") && qualities.contains("100"));
}

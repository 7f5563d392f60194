//! `--model ORG/NAME` end to end: the binary reads HF_ENDPOINT, HF_HUB_CACHE and HF_HUB_OFFLINE
//! from its environment, downloads from a fake hub on 127.0.0.1, then works from the cache.
//! Each run gets its own environment (set on the child process only).

#[path = "../../gclip/tests/support/fake_hub.rs"]
mod fake_hub;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use candle_core::Tensor;
use fake_hub::{closed_port, FakeHub, FakeRepo};

const COMMIT: &str = "5a2b1f0e9d8c7b6a5f4e3d2c1b0a9f8e7d6c5b4a";

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/models")
        .join(name)
}

/// Runs gclip with the hub variables set as given and every other hub variable removed.
fn gclip(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gclip"));
    for var in [
        "HF_HOME",
        "HF_HUB_CACHE",
        "HUGGINGFACE_HUB_CACHE",
        "HF_HUB_OFFLINE",
        "TRANSFORMERS_OFFLINE",
        "HF_ENDPOINT",
        "HF_TOKEN",
        "HUGGING_FACE_HUB_TOKEN",
        "HF_TOKEN_PATH",
    ] {
        cmd.env_remove(var);
    }
    cmd.args(args)
        .envs(env.iter().copied())
        .output()
        .expect("gclip runs")
}

#[test]
fn the_default_model_without_network_or_cache_fails_plainly_and_quickly() {
    let cache = tempfile::tempdir().unwrap();
    let cache_dir = cache.path().to_str().unwrap();
    let out = cache.path().join("out.npy");
    let args = ["embed", "text", "a cat", "--output", out.to_str().unwrap()];

    let o = gclip(
        &args,
        &[("HF_HUB_CACHE", cache_dir), ("HF_HUB_OFFLINE", "1")],
    );
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    for needle in ["openai/clip-vit-base-patch32", "HF_HUB_OFFLINE", "--model"] {
        assert!(stderr.contains(needle), "`{needle}` missing from: {stderr}");
    }

    let endpoint = format!("http://{}", closed_port());
    let t = Instant::now();
    let o = gclip(
        &args,
        &[("HF_HUB_CACHE", cache_dir), ("HF_ENDPOINT", &endpoint)],
    );
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    for needle in [
        "openai/clip-vit-base-patch32",
        "cannot be reached",
        "--model",
    ] {
        assert!(stderr.contains(needle), "`{needle}` missing from: {stderr}");
    }
    assert!(!out.exists());
}

#[test]
fn a_hub_model_is_downloaded_once_then_used_offline() {
    let dir = fixture("oc-fullvocab");
    let repo = FakeRepo::new("acme/oc-fullvocab", COMMIT).fixture_files(
        &dir,
        &["open_clip_config.json", "open_clip_model.safetensors"],
    );
    let fake = FakeHub::start(vec![repo]);
    let hf_home = tempfile::tempdir().unwrap();
    let cache = hf_home.path().join("hub");
    let endpoint = fake.endpoint();
    let run = |out: &Path, env: &[(&str, &str)]| {
        let args = [
            "embed",
            "text",
            "--model",
            "acme/oc-fullvocab",
            "a photo of a cat",
            "a dog",
            "--output",
            out.to_str().unwrap(),
        ];
        let o = gclip(&args, env);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        // Piped stderr: no progress bar drawn.
        assert!(!String::from_utf8_lossy(&o.stderr).contains("downloading"));
        Tensor::read_npy(out).unwrap()
    };

    let first = run(
        &hf_home.path().join("first.npy"),
        &[
            ("HF_HUB_CACHE", cache.to_str().unwrap()),
            ("HF_ENDPOINT", &endpoint),
        ],
    );
    assert_eq!(first.dims(), [2, 16]);
    assert!(cache
        .join("models--acme--oc-fullvocab/snapshots")
        .join(COMMIT)
        .join("open_clip_model.safetensors")
        .is_file());

    // Offline, finding the cache through HF_HOME this time: the cache alone, the same vectors.
    let connections = fake.connections();
    let second = run(
        &hf_home.path().join("second.npy"),
        &[
            ("HF_HOME", hf_home.path().to_str().unwrap()),
            ("HF_HUB_OFFLINE", "1"),
            ("HF_ENDPOINT", &endpoint),
        ],
    );
    assert_eq!(
        fake.connections(),
        connections,
        "offline run touched the hub"
    );
    assert_eq!(
        first.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        second.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    );
}

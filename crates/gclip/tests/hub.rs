//! Models by Hugging Face id: downloaded from a fake hub on the loopback interface (the real
//! hub's headers, redirects and errors) into a huggingface_hub-compatible cache, then loaded.
//! Every test has its own cache and configuration: nothing reads or sets process environment
//! variables (the environment rules are tested through `HubConfig::from_vars`).

mod support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use candle_core::{DType, Device};
use gclip::hub::{Hub, HubConfig, HubError, ModelId};
use gclip::model::ModelError;
use gclip::source::{Convention, ModelSource};
use support::fake_hub::{closed_port, git_oid, lfs_oid, FakeHub, FakeRepo, SilentServer};

const COMMIT_A: &str = "3d74acf9a28c67741b2f4f2ea7635f0aaf6f0268";
const COMMIT_B: &str = "84c9828e63dc9a9351d1fe637c346d4c1c4e2c08";
const COMMIT_C: &str = "c2d3b39d0f1a4e4f3cd8d5e6a7b8c9d0e1f2a3b4";

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/models")
        .join(name)
}

fn config(hub: &FakeHub, cache: &Path) -> HubConfig {
    let mut c = HubConfig::new(hub.endpoint(), cache);
    c.connect_timeout = Duration::from_secs(2);
    c.read_timeout = Duration::from_secs(2);
    c
}

fn hf_gelu_repo(id: &str, commit: &str) -> FakeRepo {
    FakeRepo::new(id, commit)
        .fixture_files(&fixture("hf-gelu"), &["config.json", "model.safetensors"])
        .file(
            ".gitattributes",
            "*.safetensors filter=lfs diff=lfs merge=lfs -text\n",
        )
        .file("README.md", "# a tiny CLIP\n")
        .file(
            "pytorch_model.bin",
            b"not to be downloaded: safetensors is preferred".to_vec(),
        )
        .file("tf_model.h5", b"never read".to_vec())
}

fn resolve(model: &str, hub: &Hub) -> Result<ModelSource, ModelError> {
    ModelSource::resolve_with(model, None, hub)
}

fn hub_err(r: Result<ModelSource, ModelError>) -> HubError {
    match r {
        Err(ModelError::Fetch(e)) => match e.downcast::<HubError>() {
            Ok(e) => *e,
            Err(e) => panic!("expected a hub error, got {e}"),
        },
        Err(e) => panic!("expected a hub error, got {e}"),
        Ok(s) => panic!("expected a hub error, got {s:?}"),
    }
}

/// The image embeddings of the fixture's reference pixels agree with the reference library's.
fn assert_embeds_like_reference(source: &ModelSource, fixture_name: &str) {
    let loaded = source.load(&Device::Cpu, DType::F32).expect("model loads");
    let r = candle_core::safetensors::load(
        fixture(fixture_name).join("reference.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let got = loaded.clip.encode_pixels(&r["pixel_values"], true).unwrap();
    let want: Vec<f32> = r["image_embeds"].flatten_all().unwrap().to_vec1().unwrap();
    assert_eq!(got.data.len(), want.len());
    let d = got
        .data
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(d < 1e-4, "{fixture_name}: image embeddings differ by {d}");
}

/// Every file under `dir`, relative, sorted.
fn tree(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() && !p.symlink_metadata().unwrap().is_symlink() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    out.sort();
    out
}

#[test]
fn transformers_model_is_downloaded_into_the_huggingface_cache_layout_and_loads() {
    let repo = hf_gelu_repo("acme/tiny-clip", COMMIT_A);
    let config_bytes = repo.files["config.json"].clone();
    let weights = repo.files["model.safetensors"].clone();
    let fake = FakeHub::start(vec![repo]);
    fake.set_token("hf_secret");
    let cache = tempfile::tempdir().unwrap();
    let mut cfg = config(&fake, cache.path());
    cfg.token = Some("hf_secret".into());
    let hub = Hub::new(cfg.clone());

    let source = resolve("acme/tiny-clip", &hub).expect("downloads");
    let repo_dir = cache.path().join("models--acme--tiny-clip");
    let snapshot = repo_dir.join("snapshots").join(COMMIT_A);
    assert_eq!(source, ModelSource::HfDir(snapshot.clone()));
    assert_eq!(
        std::fs::read_to_string(repo_dir.join("refs/main")).unwrap(),
        COMMIT_A,
        "refs/main holds the commit, without a newline"
    );

    // Snapshot entries are relative symlinks to blobs named by ETag: the git id of a regular
    // file, the sha256 (X-Linked-Etag, not the redirect's own ETag) of an LFS file.
    let config_link = std::fs::read_link(snapshot.join("config.json")).unwrap();
    assert_eq!(
        config_link,
        Path::new("../../blobs").join(git_oid(&config_bytes))
    );
    let weights_link = std::fs::read_link(snapshot.join("model.safetensors")).unwrap();
    assert_eq!(
        weights_link,
        Path::new("../../blobs").join(lfs_oid(&weights))
    );
    assert_eq!(
        std::fs::read(snapshot.join("model.safetensors")).unwrap(),
        weights
    );
    assert_eq!(
        std::fs::read(snapshot.join("config.json")).unwrap(),
        config_bytes
    );

    // Only the files the model needs; the missing optional ones recorded as huggingface_hub
    // records them; no temporary files left.
    let mut expected = vec![
        format!("blobs/{}", git_oid(&config_bytes)),
        format!("blobs/{}", lfs_oid(&weights)),
        "refs/main".to_string(),
        format!("snapshots/{COMMIT_A}/config.json"),
        format!("snapshots/{COMMIT_A}/model.safetensors"),
    ];
    for f in [
        "merges.txt",
        "preprocessor_config.json",
        "special_tokens_map.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "vocab.json",
    ] {
        expected.push(format!(".no_exist/{COMMIT_A}/{f}"));
    }
    expected.sort();
    assert_eq!(tree(&repo_dir), expected);
    assert!(std::fs::read_to_string(cache.path().join("CACHEDIR.TAG"))
        .unwrap()
        .starts_with("Signature: 8a477f597d28d172789f06886806bc55\n"));

    // What went over the wire: the listing, then HEAD + GET per file; the token to the hub and
    // never to the CDN; identity encoding on HEAD so that sizes are exact.
    let log = fake.log();
    let paths: Vec<String> = log
        .iter()
        .map(|r| {
            format!(
                "{} {} {}",
                r.server,
                r.method,
                r.path.split('?').next().unwrap()
            )
        })
        .collect();
    assert_eq!(
        paths[..3],
        [
            "hub GET /api/models/acme/tiny-clip/revision/main".to_string(),
            format!("hub HEAD /acme/tiny-clip/resolve/{COMMIT_A}/config.json"),
            format!("hub GET /acme/tiny-clip/resolve/{COMMIT_A}/config.json"),
        ],
        "{paths:#?}"
    );
    assert!(paths.contains(&format!(
        "hub HEAD /acme/tiny-clip/resolve/{COMMIT_A}/model.safetensors"
    )));
    assert!(paths.contains(&format!("cdn GET /repos/ab/cd/{}", lfs_oid(&weights))));
    assert!(
        !paths
            .iter()
            .any(|p| p.contains("pytorch_model.bin") || p.contains("tf_model.h5")),
        "{paths:#?}"
    );
    for r in &log {
        match r.server {
            "hub" => assert_eq!(r.header("authorization"), Some("Bearer hf_secret"), "{r:?}"),
            _ => assert_eq!(
                r.header("authorization"),
                None,
                "token leaked to the CDN: {r:?}"
            ),
        }
        if r.method == "HEAD" {
            assert_eq!(r.header("accept-encoding"), Some("identity"));
        }
    }

    assert_embeds_like_reference(&source, "hf-gelu");

    // A second resolve reads the cache without asking the hub anything.
    fake.clear_log();
    let connections = fake.connections();
    assert_eq!(resolve("acme/tiny-clip", &hub).unwrap(), source);
    assert_eq!(fake.connections(), connections);

    // Offline, with the hub gone: the cache alone.
    drop(fake);
    let mut offline = cfg.clone();
    offline.offline = true;
    offline.endpoint = format!("http://{}", closed_port());
    let source = resolve("acme/tiny-clip", &Hub::new(offline)).expect("from the cache");
    assert_eq!(source, ModelSource::HfDir(snapshot));
    assert_embeds_like_reference(&source, "hf-gelu");
}

#[test]
fn open_clip_models_download_their_open_clip_files_only() {
    let oc = fixture("oc-gelu");
    let plain = FakeRepo::new("acme/oc-tiny", COMMIT_A)
        .fixture_files(
            &oc,
            &["open_clip_config.json", "open_clip_model.safetensors"],
        )
        .file(
            "open_clip_pytorch_model.bin",
            b"the safetensors twin is preferred".to_vec(),
        )
        .file("README.md", "# open_clip\n");
    // Marqo's layout: a config.json of a custom wrapper (no text_config) beside open_clip files.
    let marqo = FakeRepo::new("acme/marqo-like", COMMIT_B)
        .fixture_files(&oc, &["open_clip_config.json", "open_clip_model.safetensors"])
        .file(
            "config.json",
            r#"{"architectures": ["MarqoFashionCLIP"], "model_type": "marqo_fashion_clip", "open_clip_model_name": "ViT-B-16"}"#,
        );
    let fake = FakeHub::start(vec![plain, marqo]);
    let cache = tempfile::tempdir().unwrap();
    let hub = Hub::new(config(&fake, cache.path()));

    for (id, commit) in [("acme/oc-tiny", COMMIT_A), ("acme/marqo-like", COMMIT_B)] {
        let source = resolve(id, &hub).expect("downloads");
        let snapshot = cache
            .path()
            .join(format!("models--{}", id.replace('/', "--")))
            .join("snapshots")
            .join(commit);
        assert_eq!(source, ModelSource::OpenClipDir(snapshot.clone()), "{id}");
        let loaded = source.load(&Device::Cpu, DType::F32).unwrap();
        assert_eq!(loaded.convention, Convention::OpenClip);
        assert_embeds_like_reference(&source, "oc-gelu");
        assert!(!snapshot.join("open_clip_pytorch_model.bin").exists());
        // From the cache the second time, and the same source.
        fake.clear_log();
        assert_eq!(resolve(id, &hub).unwrap(), source);
        assert!(fake.log().is_empty(), "{:?}", fake.log());
    }
    assert!(cache
        .path()
        .join(format!(
            "models--acme--marqo-like/snapshots/{COMMIT_B}/config.json"
        ))
        .is_file());

    // With --arch, a hub id stands for its checkpoint file.
    let arch = oc.join("open_clip_config.json").display().to_string();
    let source = ModelSource::resolve_with("acme/oc-tiny", Some(&arch), &hub).unwrap();
    assert_eq!(
        source,
        ModelSource::OpenClipFile {
            checkpoint: cache
                .path()
                .join("models--acme--oc-tiny/snapshots")
                .join(COMMIT_A)
                .join("open_clip_model.safetensors"),
            arch,
        }
    );
    assert_embeds_like_reference(&source, "oc-gelu");
}

/// Splits a safetensors file in two shards and their index, as transformers saves big models.
fn sharded(weights: &[u8]) -> (Vec<u8>, Vec<u8>, String) {
    let st = safetensors::SafeTensors::deserialize(weights).unwrap();
    let mut names: Vec<String> = st.names().into_iter().map(String::from).collect();
    names.sort();
    let half = names.len() / 2;
    let mut map = serde_json::Map::new();
    let mut shards = Vec::new();
    for (i, part) in [&names[..half], &names[half..]].into_iter().enumerate() {
        let file = format!("model-0000{}-of-00002.safetensors", i + 1);
        let views: Vec<(String, safetensors::tensor::TensorView)> = part
            .iter()
            .map(|n| (n.clone(), st.tensor(n).unwrap()))
            .collect();
        for n in part {
            map.insert(n.clone(), serde_json::Value::String(file.clone()));
        }
        shards.push(safetensors::serialize(views, None).unwrap());
    }
    let index = serde_json::json!({"metadata": {"total_size": weights.len()}, "weight_map": map});
    let second = shards.pop().unwrap();
    (shards.pop().unwrap(), second, index.to_string())
}

#[test]
fn sharded_safetensors_and_pytorch_bin_weights_are_downloaded_when_they_are_what_there_is() {
    let weights = std::fs::read(fixture("hf-gelu").join("model.safetensors")).unwrap();
    let (one, two, index) = sharded(&weights);
    let sharded_repo = FakeRepo::new("acme/sharded", COMMIT_A)
        .fixture_files(&fixture("hf-gelu"), &["config.json"])
        .file("model-00001-of-00002.safetensors", one)
        .file("model-00002-of-00002.safetensors", two)
        .file("model.safetensors.index.json", index)
        .file("pytorch_model.bin", b"not this one".to_vec());
    let bin_repo = FakeRepo::new("acme/bin-only", COMMIT_B).fixture_files(
        &fixture("hf-quickgelu"),
        &["config.json", "pytorch_model.bin"],
    );
    let fake = FakeHub::start(vec![sharded_repo, bin_repo]);
    let cache = tempfile::tempdir().unwrap();
    let hub = Hub::new(config(&fake, cache.path()));

    let source = resolve("acme/sharded", &hub).unwrap();
    let snapshot = cache
        .path()
        .join("models--acme--sharded/snapshots")
        .join(COMMIT_A);
    assert_eq!(source, ModelSource::HfDir(snapshot.clone()));
    for f in [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "model.safetensors.index.json",
    ] {
        assert!(snapshot.join(f).is_file(), "{f}");
    }
    assert!(!snapshot.join("pytorch_model.bin").exists());
    assert_embeds_like_reference(&source, "hf-gelu");

    let source = resolve("acme/bin-only", &hub).unwrap();
    assert_embeds_like_reference(&source, "hf-quickgelu");
}

#[test]
fn offline_mode_reads_the_cache_only_and_says_how_to_proceed() {
    let fake = FakeHub::start(vec![hf_gelu_repo("acme/tiny-clip", COMMIT_A)]);
    let cache = tempfile::tempdir().unwrap();
    let mut cfg = config(&fake, cache.path());
    cfg.offline = true;
    let e = hub_err(resolve("acme/tiny-clip", &Hub::new(cfg)));
    assert!(matches!(e, HubError::Offline { .. }), "{e:?}");
    let msg = e.to_string();
    for needle in [
        "acme/tiny-clip",
        "HF_HUB_OFFLINE",
        "--model",
        "not in the Hugging Face cache",
    ] {
        assert!(msg.contains(needle), "`{needle}` missing from: {msg}");
    }
    assert!(msg.contains(&cache.path().display().to_string()), "{msg}");
    assert_eq!(fake.connections(), 0, "offline mode opened a connection");
}

#[test]
fn an_unreachable_or_silent_hub_fails_within_seconds_with_a_plain_message() {
    let cache = tempfile::tempdir().unwrap();
    // Nothing listening: refused at once.
    let mut cfg = HubConfig::new(format!("http://{}", closed_port()), cache.path());
    cfg.connect_timeout = Duration::from_secs(2);
    cfg.read_timeout = Duration::from_millis(500);
    let t = Instant::now();
    let e = hub_err(resolve(
        "openai/clip-vit-base-patch32",
        &Hub::new(cfg.clone()),
    ));
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert!(matches!(e, HubError::Unreachable { .. }), "{e:?}");
    let msg = e.to_string();
    for needle in [
        "openai/clip-vit-base-patch32",
        "cannot be reached",
        "--model",
        "not in the Hugging Face cache",
    ] {
        assert!(msg.contains(needle), "`{needle}` missing from: {msg}");
    }

    // A server that accepts and never answers: the read timeout ends the wait.
    let silent = SilentServer::start();
    cfg.endpoint = format!("http://{}", silent.addr);
    let t = Instant::now();
    let e = hub_err(resolve("openai/clip-vit-base-patch32", &Hub::new(cfg)));
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert!(matches!(e, HubError::Unreachable { .. }), "{e:?}");
    assert!(!cache
        .path()
        .join("models--openai--clip-vit-base-patch32/refs")
        .exists());
}

#[test]
fn missing_private_gated_and_unauthorised_repositories_say_what_to_do() {
    let mut private = hf_gelu_repo("acme/private", COMMIT_A);
    private.private = true;
    let mut gated = hf_gelu_repo("acme/gated", COMMIT_B);
    gated.gated = true;
    let fake = FakeHub::start(vec![private, gated]);
    fake.set_token("hf_right");
    let cache = tempfile::tempdir().unwrap();
    let anonymous = Hub::new(config(&fake, cache.path()));

    let e = hub_err(resolve("acme/nope", &anonymous));
    assert!(matches!(e, HubError::RepoNotFound { .. }), "{e:?}");
    assert!(
        e.to_string().contains("acme/nope") && e.to_string().contains("HF_TOKEN"),
        "{e}"
    );

    let e = hub_err(resolve("acme/private", &anonymous));
    assert!(matches!(e, HubError::RepoNotFound { .. }), "{e:?}");

    let e = hub_err(resolve("acme/gated", &anonymous));
    assert!(matches!(e, HubError::Gated { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.contains("gated") && msg.contains("HF_TOKEN") && msg.contains("restricted"),
        "{msg}"
    );
    // Nothing usable was cached, so nothing is claimed.
    assert!(!cache.path().join("models--acme--gated/refs/main").exists());

    let mut wrong = config(&fake, cache.path());
    wrong.token = Some("hf_wrong".into());
    let e = hub_err(resolve("acme/gated", &Hub::new(wrong)));
    assert!(matches!(e, HubError::InvalidToken { .. }), "{e:?}");

    let mut right = config(&fake, cache.path());
    right.token = Some("hf_right".into());
    let right = Hub::new(right);
    assert!(resolve("acme/gated", &right).is_ok());
    assert!(resolve("acme/private", &right).is_ok());
    let e = hub_err(resolve("acme/private@no-such-branch", &right));
    assert!(matches!(e, HubError::RevisionNotFound { .. }), "{e:?}");
    assert!(e.to_string().contains("no-such-branch"), "{e}");
}

#[test]
fn interrupted_downloads_resume_or_leave_no_blob_behind() {
    let repo = hf_gelu_repo("acme/tiny-clip", COMMIT_A);
    let weights = repo.files["model.safetensors"].clone();
    let fake = FakeHub::start(vec![repo]);

    // Cut once: the download resumes where it stopped, with a Range request.
    let cache = tempfile::tempdir().unwrap();
    let hub = Hub::new(config(&fake, cache.path()));
    fake.cut_cdn(1);
    let source = resolve("acme/tiny-clip", &hub).expect("resumes");
    let ranges: Vec<String> = fake
        .log()
        .iter()
        .filter(|r| r.server == "cdn")
        .filter_map(|r| r.header("range").map(String::from))
        .collect();
    assert_eq!(ranges, [format!("bytes={}-", weights.len() / 2)]);
    assert_embeds_like_reference(&source, "hf-gelu");

    // Cut every time: an error, and neither a blob nor a temporary file nor a ref remains.
    let cache = tempfile::tempdir().unwrap();
    let hub = Hub::new(config(&fake, cache.path()));
    fake.cut_cdn(usize::MAX);
    let e = hub_err(resolve("acme/tiny-clip", &hub));
    assert!(matches!(e, HubError::Download { .. }), "{e:?}");
    assert!(e.to_string().contains("model.safetensors"), "{e}");
    let repo_dir = cache.path().join("models--acme--tiny-clip");
    let files = tree(&repo_dir);
    assert!(
        !files
            .iter()
            .any(|f| f.contains(&lfs_oid(&weights)) || f.ends_with(".incomplete")),
        "{files:#?}"
    );
    assert!(!repo_dir.join("refs/main").exists());
    assert_eq!(
        hub.cached_snapshot(&ModelId::parse("acme/tiny-clip").unwrap(), false),
        None
    );

    // The next try completes it, reusing the config already in the cache.
    fake.cut_cdn(0);
    fake.clear_log();
    assert!(resolve("acme/tiny-clip", &hub).is_ok());
    assert!(
        !fake.log().iter().any(|r| r.path.ends_with("/config.json")),
        "config.json was fetched again"
    );
}

#[test]
fn renamed_repositories_are_followed_through_relative_redirects() {
    let mut repo = hf_gelu_repo("acme/new-name", COMMIT_A);
    repo.old_id = Some("acme/old-name".into());
    let fake = FakeHub::start(vec![repo]);
    let cache = tempfile::tempdir().unwrap();
    let source = resolve("acme/old-name", &Hub::new(config(&fake, cache.path()))).unwrap();
    // Stored under the name asked for, as huggingface_hub does.
    assert_eq!(
        source,
        ModelSource::HfDir(
            cache
                .path()
                .join("models--acme--old-name/snapshots")
                .join(COMMIT_A)
        )
    );
    assert_embeds_like_reference(&source, "hf-gelu");
}

#[test]
fn an_incomplete_cache_is_completed_online_and_used_as_is_when_the_hub_is_down() {
    let fake = FakeHub::start(vec![hf_gelu_repo("acme/tiny-clip", COMMIT_A)]);
    let cache = tempfile::tempdir().unwrap();
    let cfg = config(&fake, cache.path());
    let hub = Hub::new(cfg.clone());
    let source = resolve("acme/tiny-clip", &hub).unwrap();
    let repo_dir = cache.path().join("models--acme--tiny-clip");
    let id = ModelId::parse("acme/tiny-clip").unwrap();
    assert!(hub.cached_snapshot(&id, false).unwrap().complete);

    // As a cache filled by `CLIPModel.from_pretrained` alone: config and weights, nothing
    // known about the tokenizer files.
    std::fs::remove_dir_all(repo_dir.join(".no_exist")).unwrap();
    assert!(!hub.cached_snapshot(&id, false).unwrap().complete);
    fake.clear_log();
    assert_eq!(resolve("acme/tiny-clip", &hub).unwrap(), source);
    let log = fake.log();
    assert_eq!(log.len(), 1, "only the listing: {log:#?}");
    assert!(hub.cached_snapshot(&id, false).unwrap().complete);

    // Incomplete again, and the hub is down: the cached config and weights are used.
    std::fs::remove_dir_all(repo_dir.join(".no_exist")).unwrap();
    drop(fake);
    assert_eq!(resolve("acme/tiny-clip", &Hub::new(cfg)).unwrap(), source);
}

#[test]
fn a_model_at_a_commit_is_cached_under_that_commit_without_a_ref() {
    let fake = FakeHub::start(vec![hf_gelu_repo("acme/tiny-clip", COMMIT_C)]);
    let cache = tempfile::tempdir().unwrap();
    let hub = Hub::new(config(&fake, cache.path()));
    let source = resolve(&format!("acme/tiny-clip@{COMMIT_C}"), &hub).unwrap();
    let repo_dir = cache.path().join("models--acme--tiny-clip");
    assert_eq!(
        source,
        ModelSource::HfDir(repo_dir.join("snapshots").join(COMMIT_C))
    );
    assert!(!repo_dir.join("refs").exists());
    assert!(fake
        .log()
        .iter()
        .any(|r| r.path == format!("/api/models/acme/tiny-clip/revision/{COMMIT_C}")));
}

#[test]
fn paths_that_are_not_model_ids_keep_the_local_file_error() {
    let cache = tempfile::tempdir().unwrap();
    let hub = Hub::new(HubConfig::new(
        format!("http://{}", closed_port()),
        cache.path(),
    ));
    for model in ["./no/such/dir", "/no/such/file.pt", "ViT-B-32.pt"] {
        match resolve(model, &hub) {
            Err(ModelError::Io { message, .. }) => {
                assert!(message.contains("no such file or directory"), "{message}")
            }
            other => panic!("{model}: {other:?}"),
        }
    }
}

#[test]
fn configuration_follows_huggingface_hub_environment_rules() {
    let from = |pairs: &[(&str, &str)]| {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        HubConfig::from_vars(move |k| map.get(k).cloned())
    };
    let c = from(&[("HOME", "/home/u")]);
    assert_eq!(c.cache_dir, Path::new("/home/u/.cache/huggingface/hub"));
    assert_eq!(c.endpoint, "https://huggingface.co");
    assert!(!c.offline);
    assert_eq!(c.token, None);
    assert_eq!(c.read_timeout, Duration::from_secs(10));
    assert!(c.connect_timeout <= Duration::from_secs(10));

    let c = from(&[("HOME", "/home/u"), ("XDG_CACHE_HOME", "/xdg")]);
    assert_eq!(c.cache_dir, Path::new("/xdg/huggingface/hub"));
    let c = from(&[
        ("HOME", "/home/u"),
        ("XDG_CACHE_HOME", "/xdg"),
        ("HF_HOME", "~/hf"),
    ]);
    assert_eq!(c.cache_dir, Path::new("/home/u/hf/hub"));
    let c = from(&[("HF_HOME", "/hf"), ("HUGGINGFACE_HUB_CACHE", "/legacy")]);
    assert_eq!(c.cache_dir, Path::new("/legacy"));
    let c = from(&[
        ("HF_HOME", "/hf"),
        ("HUGGINGFACE_HUB_CACHE", "/legacy"),
        ("HF_HUB_CACHE", "/c"),
    ]);
    assert_eq!(c.cache_dir, Path::new("/c"));

    for (v, want) in [
        ("1", true),
        ("true", true),
        ("ON", true),
        ("yes", true),
        ("0", false),
        ("no", false),
    ] {
        assert_eq!(
            from(&[("HF_HUB_OFFLINE", v)]).offline,
            want,
            "HF_HUB_OFFLINE={v}"
        );
    }
    assert!(from(&[("TRANSFORMERS_OFFLINE", "1")]).offline);
    // As in huggingface_hub, HF_HUB_OFFLINE wins when both are set.
    assert!(!from(&[("HF_HUB_OFFLINE", "0"), ("TRANSFORMERS_OFFLINE", "1")]).offline);

    assert_eq!(
        from(&[("HF_ENDPOINT", "https://hf-mirror.example/")]).endpoint,
        "https://hf-mirror.example"
    );

    let home = tempfile::tempdir().unwrap();
    std::fs::write(home.path().join("token"), "hf_from_file\n").unwrap();
    let hf_home = home.path().display().to_string();
    let hf_home = hf_home.as_str();
    assert_eq!(
        from(&[("HF_HOME", hf_home)]).token.as_deref(),
        Some("hf_from_file")
    );
    assert_eq!(
        from(&[
            ("HF_HOME", hf_home),
            ("HUGGING_FACE_HUB_TOKEN", "hf_legacy")
        ])
        .token
        .as_deref(),
        Some("hf_legacy")
    );
    assert_eq!(
        from(&[
            ("HF_HOME", hf_home),
            ("HUGGING_FACE_HUB_TOKEN", "hf_legacy"),
            ("HF_TOKEN", " hf_env ")
        ])
        .token
        .as_deref(),
        Some("hf_env")
    );
    std::fs::write(home.path().join("other"), "hf_other").unwrap();
    let other = home.path().join("other").display().to_string();
    let other = other.as_str();
    assert_eq!(
        from(&[("HF_HOME", "/none"), ("HF_TOKEN_PATH", other)])
            .token
            .as_deref(),
        Some("hf_other")
    );
    assert_eq!(
        from(&[
            ("HF_TOKEN", "hf_env"),
            ("HF_HUB_DISABLE_IMPLICIT_TOKEN", "1")
        ])
        .token,
        None
    );
    assert_eq!(
        from(&[("HF_HUB_DOWNLOAD_TIMEOUT", "3")]).read_timeout,
        Duration::from_secs(3)
    );
    // The token never shows in debug output.
    assert!(!format!("{:?}", from(&[("HF_TOKEN", "hf_env")])).contains("hf_env"));
}

#[test]
fn the_default_model_is_openai_vit_b_32() {
    assert_eq!(gclip::source::DEFAULT_MODEL, "openai/clip-vit-base-patch32");
    let id = ModelId::parse(gclip::source::DEFAULT_MODEL).unwrap();
    assert_eq!(id.revision, "main");
}

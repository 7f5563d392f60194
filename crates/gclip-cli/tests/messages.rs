//! What a newcomer's mistakes get: an error naming the real cause and the fix, never a message
//! about something else or a silent empty result; and output without repetitions, wrong
//! plurals, cut ids or terminal codes in a pipe (issue 15).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("gclip-messages-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn gclip_with(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gclip"))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("gclip runs")
}

fn gclip(args: &[&str]) -> Output {
    gclip_with(args, &[])
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The command failed, and its stderr says all of `wanted`.
fn fails_saying(o: &Output, wanted: &[&str]) -> String {
    let err = stderr(o);
    assert!(!o.status.success(), "should fail: {err}");
    for w in wanted {
        assert!(err.contains(w), "stderr lacks {w:?}: {err}");
    }
    err
}

/// The tiny test model as an open_clip checkpoint: `--model M --arch A`.
fn model_args() -> [String; 4] {
    let m = fixtures().join("models/oc-fullvocab");
    [
        "--model".into(),
        m.join("open_clip_model.safetensors").display().to_string(),
        "--arch".into(),
        m.join("open_clip_config.json").display().to_string(),
    ]
}

fn with_model<'a>(model: &'a [String; 4], args: &[&'a str]) -> Vec<&'a str> {
    let mut all = args.to_vec();
    all.extend(model.iter().map(String::as_str));
    all
}

#[test]
fn commands_without_model_say_how_to_create_a_collection() {
    let dir = scratch("not-a-collection");
    let photos = dir.join("photoz");
    std::fs::create_dir_all(&photos).unwrap();
    let p = photos.to_str().unwrap();
    for args in [
        vec!["search", p, "a cat"],
        vec!["update", p, "some-id", "--set", "price=1"],
        vec!["delete", p, "some-id"],
        vec!["serve", "--collection", p, "--addr", "127.0.0.1:0"],
    ] {
        let err = fails_saying(
            &gclip(&args),
            &["is not a gclip collection", "gclip index", "gclip add"],
        );
        // None of these commands has --model: the message must not ask for it alone.
        assert!(!err.contains("give --model"), "{args:?}: {err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn empty_inputs_are_named_and_index_creates_no_empty_collection() {
    let dir = scratch("empty");
    let model = model_args();
    let empty_list = dir.join("empty.txt");
    std::fs::write(&empty_list, "").unwrap();
    let empty_folder = dir.join("no-images");
    std::fs::create_dir_all(&empty_folder).unwrap();
    std::fs::write(empty_folder.join("notes.txt"), "not an image").unwrap();
    let out = dir.join("out.npy");
    let (list, folder, out) = (
        empty_list.to_str().unwrap(),
        empty_folder.to_str().unwrap(),
        out.to_str().unwrap(),
    );

    let o = gclip(&with_model(
        &model,
        &["embed", "text", "--input", list, "--output", out],
    ));
    let err = fails_saying(&o, &[&format!("--input {list} holds no items")]);
    assert!(!err.contains("give --input"), "{err}");

    let o = gclip(&with_model(
        &model,
        &["embed", "image", folder, "--output", out],
    ));
    let err = fails_saying(&o, &[&format!("folder {folder} holds no images")]);
    assert!(!err.contains("give --input"), "{err}");

    // Nothing given at all: then the message asks for input.
    let o = gclip(&with_model(&model, &["embed", "text", "--output", out]));
    fails_saying(&o, &["give --input FILE or items on the command line"]);

    let collection = dir.join("coll");
    let o = gclip(&with_model(
        &model,
        &[
            "index",
            folder,
            "--collection",
            collection.to_str().unwrap(),
        ],
    ));
    fails_saying(&o, &["holds no images", "nothing to index"]);
    assert!(!collection.exists(), "no empty collection is created");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn misuses_that_used_to_give_wrong_results_are_errors() {
    let dir = scratch("misuse");
    let model = model_args();
    let out = dir.join("out.npy");
    let out = out.to_str().unwrap();
    let photo = fixtures().join("images/clipart_0.png");
    let photo = photo.to_str().unwrap();

    // An image file given to `embed text` would be embedded as its file name.
    let o = gclip(&with_model(
        &model,
        &["embed", "text", photo, "--output", out],
    ));
    fails_saying(&o, &["is an image file", "gclip embed image"]);
    assert!(!Path::new(out).exists());

    // --arch without --model would be ignored (the default model has its own config).
    let o = gclip(&[
        "embed", "text", "a cat", "--arch", "ViT-B-32", "--output", out,
    ]);
    fails_saying(&o, &["--model"]);
    let o = gclip(&[
        "classify", "--labels", "cat", "--arch", "ViT-B-32", "--", photo,
    ]);
    fails_saying(&o, &["--model"]);

    // A limit of 0 shows nothing.
    let o = gclip(&["search", dir.to_str().unwrap(), "a cat", "--limit", "0"]);
    fails_saying(&o, &["--limit", "at least 1"]);
    let o = gclip(&with_model(
        &model,
        &["classify", "--labels", "cat", "--top-k", "0", "--", photo],
    ));
    fails_saying(&o, &["--top-k", "at least 1"]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn model_names_people_copy_are_understood_or_refused_by_family() {
    let dir = scratch("models");
    let out = dir.join("out.npy");
    let out = out.to_str().unwrap();
    // open_clip's `hf-hub:` spelling is the hub id: offline, with an empty cache, the message is
    // about the model not being cached, not about the id.
    let cache = dir.join("hf-cache");
    let o = gclip_with(
        &[
            "embed",
            "text",
            "a cat",
            "--model",
            "hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K",
            "--output",
            out,
        ],
        &[
            ("HF_HUB_OFFLINE", "1"),
            ("HF_HUB_CACHE", cache.to_str().unwrap()),
        ],
    );
    let err = fails_saying(&o, &["laion/CLIP-ViT-B-32-laion2B-s34B-b79K"]);
    assert!(!err.contains("not a Hugging Face model id"), "{err}");

    // A SigLIP directory is named as such.
    let siglip = dir.join("siglip");
    std::fs::create_dir_all(&siglip).unwrap();
    std::fs::write(
        siglip.join("config.json"),
        r#"{"model_type": "siglip", "architectures": ["SiglipModel"],
            "text_config": {"hidden_size": 768}, "vision_config": {"hidden_size": 768}}"#,
    )
    .unwrap();
    std::fs::write(siglip.join("model.safetensors"), b"not read").unwrap();
    let o = gclip(&[
        "embed",
        "text",
        "a cat",
        "--model",
        siglip.to_str().unwrap(),
        "--output",
        out,
    ]);
    let err = fails_saying(
        &o,
        &["SigLIP (model_type `siglip`) is not supported (supported: CLIP"],
    );
    assert!(!err.contains("vision_config"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn filters_on_unknown_fields_or_mismatched_types_are_errors() {
    let dir = scratch("filters");
    let model = model_args();
    let docs = dir.join("docs.jsonl");
    std::fs::write(
        &docs,
        concat!(
            r#"{"id": "cat", "text": "a cat", "price": 5}"#,
            "\n",
            r#"{"id": "dog", "text": "a dog", "price": 20, "tags": ["red"]}"#,
            "\n"
        ),
    )
    .unwrap();
    let c = dir.join("shop");
    let c = c.to_str().unwrap();
    let o = gclip(&with_model(
        &model,
        &["add", c, docs.to_str().unwrap(), "--embed", "text"],
    ));
    assert!(o.status.success(), "{}", stderr(&o));
    let o = gclip(&["search", c, "a cat", "--filter", "price >= 10"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("dog"));
    for (filter, wanted) in [
        (
            "nosuch:x",
            "no document has a field `nosuch` (fields: price, tags, text)",
        ),
        ("tags >= 3", "no document's `tags` is a number"),
        ("price:red", "`price` holds numbers only"),
    ] {
        let o = gclip(&["search", c, "a cat", "--filter", filter]);
        fails_saying(&o, &[wanted]);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn output_is_plain_whole_and_counted_right() {
    let dir = scratch("output");
    let model = model_args();

    // Warnings in a pipe: no colour codes, no timestamps.
    let out = dir.join("out.npy");
    let o = gclip_with(
        &with_model(
            &model,
            &["embed", "text", "a cat", "--output", out.to_str().unwrap()],
        ),
        &[("GCLIP_MAX_IMAGE_PIXELS", "lots")],
    );
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    let warning = err
        .lines()
        .find(|l| l.contains("GCLIP_MAX_IMAGE_PIXELS"))
        .unwrap_or_else(|| panic!("a warning about the variable: {err}"));
    assert!(!warning.contains('\u{1b}'), "{warning:?}");
    assert!(warning.trim_start().starts_with("WARN"), "{warning:?}");

    // One failed input: singular.
    let docs = dir.join("docs.jsonl");
    let long_id = "a-rather-long-document-identifier-that-used-to-be-cut-0001";
    std::fs::write(
        &docs,
        format!(
            "{{\"id\": \"{long_id}\", \"text\": \"a cat\"}}\n{{\"id\": \"empty\", \"price\": 3}}\n"
        ),
    )
    .unwrap();
    let c = dir.join("c");
    let c = c.to_str().unwrap();
    let o = gclip(&with_model(
        &model,
        &["add", c, docs.to_str().unwrap(), "--embed", "text"],
    ));
    let err = fails_saying(&o, &["error: 1 input failed"]);
    assert!(err.contains("holds 1 document\n"), "{err}");

    // Ids are printed whole.
    let o = gclip(&["search", c, "a cat"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains(long_id));

    // An indexed file's id is its path: printed once per row; a failed file is named once.
    let images = dir.join("images");
    std::fs::create_dir_all(&images).unwrap();
    std::fs::write(images.join("broken.png"), b"not a png").unwrap();
    std::fs::copy(
        fixtures().join("images/clipart_0.png"),
        images.join("a.png"),
    )
    .unwrap();
    let indexed = dir.join("indexed");
    let o = gclip(&with_model(
        &model,
        &[
            "index",
            images.to_str().unwrap(),
            "--collection",
            indexed.to_str().unwrap(),
        ],
    ));
    let err = fails_saying(
        &o,
        &["broken.png: not a recognised image", "1 input failed"],
    );
    let line = err.lines().find(|l| l.contains("broken.png")).unwrap();
    assert_eq!(line.matches("broken.png").count(), 1, "{err}");
    let o = gclip(&["search", indexed.to_str().unwrap(), "a cat"]);
    let table = String::from_utf8_lossy(&o.stdout).into_owned();
    let row = table.lines().nth(1).expect("one hit");
    assert_eq!(row.matches("images/a.png").count(), 1, "{table}");

    // Counts are whole numbers.
    let (qrels, run) = (dir.join("qrels.txt"), dir.join("run.txt"));
    std::fs::write(&qrels, "q1 0 d1 2\nq1 0 d2 0\nq2 0 d1 1\n").unwrap();
    std::fs::write(
        &run,
        "q1 Q0 d1 1 0.9 t\nq1 Q0 d2 2 0.5 t\nq2 Q0 d1 1 0.7 t\n",
    )
    .unwrap();
    let o = gclip(&[
        "eval",
        "ranking",
        "--qrels",
        qrels.to_str().unwrap(),
        "--run",
        run.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let table = String::from_utf8_lossy(&o.stdout).into_owned();
    let queries = table
        .lines()
        .find(|l| l.starts_with("queries "))
        .unwrap_or_else(|| panic!("{table}"));
    assert_eq!(
        queries.split_whitespace().collect::<Vec<_>>(),
        ["queries", "2"]
    );
    let _ = std::fs::remove_dir_all(&dir);
}

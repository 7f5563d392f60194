//! The command line against a real Milvus server (started here on free loopback ports, as
//! `gclip-search`'s Milvus tests do): `gclip add`, `gclip check` and `gclip search-bench
//! --store` on `milvus://` addresses, with a token in the address that must never be printed.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

#[path = "../../gclip-search/tests/support/milvus_server.rs"]
mod milvus_server;
use milvus_server::Server;

const SECRET: &str = "root:cl1secret";

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn gclip(args: &[&str]) -> Output {
    gclip_with(args, &[])
}

/// `gclip ARGS` with these environment variables (and no Milvus settings of the caller's).
fn gclip_with(args: &[&str], vars: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gclip"))
        .args(args)
        .env_remove("GCLIP_MILVUS_TOKEN")
        .env_remove("GCLIP_MILVUS_PARTITION_KEY")
        .envs(vars.iter().copied())
        .output()
        .expect("gclip runs")
}

/// Standard output and error together, checked for the token on the way.
fn said(o: &Output) -> String {
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(!all.contains("cl1secret"), "the token was printed: {all}");
    all
}

/// A fresh temporary directory holding `docs.jsonl`: one document per title (`d0`, `d1`, …,
/// with `price` its index).
fn documents_in_temp_dir(tag: &str, titles: &[&str]) -> (PathBuf, PathBuf) {
    let dir = std::env::temp_dir().join(format!("gclip-milvus-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let docs = dir.join("docs.jsonl");
    let mut text = String::new();
    for (k, t) in titles.iter().enumerate() {
        text += &serde_json::json!({"id": format!("d{k}"), "title": t, "price": k}).to_string();
        text.push('\n');
    }
    std::fs::write(&docs, text).unwrap();
    (dir, docs)
}

/// `gclip add COLLECTION DOCS --embed title` with the fixture model.
fn add_with_fixture_model(collection: &str, docs: &Path) -> Output {
    add_with_fixture_model_and(collection, docs, &[])
}

/// [`add_with_fixture_model`] with these environment variables.
fn add_with_fixture_model_and(collection: &str, docs: &Path, vars: &[(&str, &str)]) -> Output {
    let model = fixtures().join("models/oc-fullvocab");
    gclip_with(
        &[
            "add",
            collection,
            docs.to_str().unwrap(),
            "--embed",
            "title",
            "--model",
            model.join("open_clip_model.safetensors").to_str().unwrap(),
            "--arch",
            model.join("open_clip_config.json").to_str().unwrap(),
        ],
        vars,
    )
}

#[test]
fn check_and_search_bench_on_milvus_addresses() {
    let server = Server::shared();
    let address = server.address("shop");
    let with_token = format!("{address}?token={SECRET}");
    let (dir, docs) = documents_in_temp_dir(
        "cli",
        &["a photo of a cat", "a photo of a dog", "a red car", "soup"],
    );
    let add = add_with_fixture_model(&with_token, &docs);
    assert!(add.status.success(), "{}", said(&add));

    // A sound collection: exit 0, the report names the address and what was checked.
    let check = gclip(&["check", &with_token]);
    let report = said(&check);
    assert!(check.status.success(), "{report}");
    assert!(
        report.contains(&format!("collection {address}: 4 documents")),
        "{report}"
    );
    assert!(report.contains("HNSW, metric IP"), "{report}");
    assert!(report.contains("ok: no problems found"), "{report}");

    // --repair is refused, naming the address.
    let repair = gclip(&["check", &with_token, "--repair"]);
    let e = said(&repair);
    assert!(!repair.status.success(), "{e}");
    assert!(e.contains(&address) && e.contains("--repair"), "{e}");

    // No collection at the address: an error naming it.
    let absent = format!("{}?token={SECRET}", server.address("absent"));
    let none = gclip(&["check", &absent]);
    let e = said(&none);
    assert!(!none.status.success(), "{e}");
    assert!(e.contains(&server.address("absent")), "{e}");

    // search-bench through a Milvus collection: how it was set up, then one JSON row per filter.
    let bench_address = format!("{}?token={SECRET}", server.address("bench"));
    let bench_with = |more: &[&str]| {
        let plan = [
            "search-bench",
            "--store",
            &bench_address,
            "--count",
            "100",
            "--dim",
            "16",
        ];
        gclip(&[&plan[..], more].concat())
    };
    let bench = bench_with(&["--queries", "2", "--k", "5", "--json"]);
    let out = said(&bench);
    assert!(bench.status.success(), "{out}");
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&bench.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let (setup, rows) = lines.split_first().expect("output");
    assert_eq!(setup["written"], 100, "{out}");
    assert_eq!(setup["unindexed"], 0, "{out}");
    assert_eq!(rows.len(), 5, "{out}");
    assert_eq!(rows[0]["filter"], "none");
    assert_eq!(rows[2]["filter"], "shard = 7");
    assert_eq!(rows[2]["selectivity"], 0.1);
    assert!(rows.iter().all(|r| r["recall_at_k"] == 1.0), "{out}");
    // The table form names the collection by its address, without the token.
    let table = bench_with(&["--queries", "1"]);
    let out = said(&table);
    assert!(table.status.success(), "{out}");
    assert!(
        out.contains(&format!("collection {} of 100", server.address("bench"))),
        "{out}"
    );
    assert!(out.contains("vector index complete"), "{out}");
    assert!(
        !out.contains("written:"),
        "reused, not written again: {out}"
    );
    // The shop collection is not a benchmark's: refused.
    let refused = gclip(&["search-bench", "--store", &with_token, "--count", "100"]);
    let e = said(&refused);
    assert!(!refused.status.success(), "{e}");
    assert!(e.contains("not this benchmark's"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `gclip update` and `gclip delete` on a Milvus address do what they do to a directory
/// collection: the same search results afterwards, the same error for an unknown id (naming
/// the address, never the token).
#[test]
fn update_and_delete_on_a_milvus_address_match_a_directory_collection() {
    let server = Server::shared();
    let address = server.address("edits");
    let with_token = format!("{address}?token={SECRET}");
    let (dir, docs) = documents_in_temp_dir("edit", &["a photo of a cat", "soup", "a red car"]);
    let local = dir.join("local");
    let local = local.to_str().unwrap();
    let search = |collection: &str, query: &str| -> Vec<serde_json::Value> {
        let out = gclip(&["search", collection, query, "--json", "--limit", "3"]);
        let text = said(&out);
        assert!(out.status.success(), "{text}");
        serde_json::from_slice(&out.stdout).unwrap()
    };
    for collection in [local, &with_token] {
        let add = add_with_fixture_model(collection, &docs);
        assert!(add.status.success(), "{}", said(&add));
        // A field and the embedded text change: the vector is recomputed.
        let update = gclip(&[
            "update",
            collection,
            "d1",
            "--set",
            r#"{"price": 30, "title": "a photo of a cat"}"#,
        ]);
        let out = said(&update);
        assert!(update.status.success(), "{out}");
        assert!(out.contains("updated d1 (re-embedded)"), "{out}");
        let delete = gclip(&["delete", collection, "d2"]);
        assert!(delete.status.success(), "{}", said(&delete));
        let unknown = gclip(&["update", collection, "d9", "--set", r#"{"price": 1}"#]);
        let e = said(&unknown);
        assert!(!unknown.status.success(), "{e}");
        assert!(e.contains(r#"no document with id "d9""#), "{e}");
    }
    let e = said(&gclip(&["update", &with_token, "d9", "--set", "{}"]));
    assert!(e.contains(&address), "{e}");
    // A server that cannot be reached: the error names the address, not the token (said()).
    let closed = format!("milvus://127.0.0.1:9/x?token={SECRET}");
    let add = gclip(&["add", &closed, docs.to_str().unwrap(), "--embed", "title"]);
    let e = said(&add);
    assert!(!add.status.success(), "{e}");
    assert!(e.contains("milvus://127.0.0.1:9/x"), "{e}");
    for query in ["a photo of a cat", "soup", "a red car"] {
        let (want, got) = (search(local, query), search(&with_token, query));
        assert_eq!(want.len(), 2, "d2 was deleted: {want:?}");
        assert_eq!(got.len(), want.len(), "{query}: {got:?} vs {want:?}");
        // d0 and the updated d1 now hold the same text, so they tie: compared by id.
        let by_id = |r: &[serde_json::Value]| {
            let mut v: Vec<(String, serde_json::Value, f64)> = r
                .iter()
                .map(|x| {
                    let id = x["id"].as_str().unwrap().to_string();
                    (id, x["fields"].clone(), x["score"].as_f64().unwrap())
                })
                .collect();
            v.sort_by(|a, b| a.0.cmp(&b.0));
            v
        };
        let (got, want) = (by_id(&got), by_id(&want));
        for (g, w) in got.iter().zip(&want) {
            assert_eq!((&g.0, &g.1), (&w.0, &w.1), "{query}");
            assert!((g.2 - w.2).abs() < 1e-4, "{query}: {g:?} vs {w:?}");
        }
        assert_eq!(
            got.iter().map(|g| g.0.as_str()).collect::<Vec<_>>(),
            ["d0", "d1"]
        );
    }
    let d1 = search(&with_token, "soup")
        .into_iter()
        .find(|r| r["id"] == "d1")
        .unwrap();
    assert_eq!(d1["fields"]["price"], 30);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Tenants through the command line: `GCLIP_MILVUS_PARTITION_KEY=tenant gclip add` creates
/// the collection with the key; documents without a string tenant fail alone, by id and field
/// name, and the command says so and fails; a search filtered by tenant finds that tenant's
/// documents only; later commands need no variable (the key is the collection's); a key that
/// cannot be one is an error naming the variable, and nothing is created.
#[test]
fn tenants_through_the_command_line() {
    let server = Server::shared();
    let address = server.address("tenants");
    let with_token = format!("{address}?token={SECRET}");
    let dir = std::env::temp_dir().join(format!("gclip-milvus-tenants-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let docs = dir.join("docs.jsonl");
    let lines = [
        serde_json::json!({"id": "a1", "title": "a photo of a cat", "tenant": "acme", "stock": 3}),
        serde_json::json!({"id": "g1", "title": "a photo of a cat", "tenant": "globex", "stock": 5}),
        serde_json::json!({"id": "a2", "title": "a red car", "tenant": "acme", "stock": 9}),
        serde_json::json!({"id": "n1", "title": "soup", "stock": 1}),
        serde_json::json!({"id": "n2", "title": "soup", "tenant": 7, "stock": 1}),
        serde_json::json!({"id": "s1", "title": "soup", "tenant": "acme", "stock": "many"}),
    ];
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(&docs, text).unwrap();
    let add = |collection: &str, vars: &[(&str, &str)]| {
        add_with_fixture_model_and(collection, &docs, vars)
    };

    // A name that cannot be a partition key: refused before anything is created.
    let bad = add(&with_token, &[("GCLIP_MILVUS_PARTITION_KEY", "ten-ant")]);
    let e = said(&bad);
    assert!(!bad.status.success(), "{e}");
    assert!(e.contains(r#"GCLIP_MILVUS_PARTITION_KEY="ten-ant""#), "{e}");
    // So are partitions and scalar fields out of bounds, naming the variable.
    let key = ("GCLIP_MILVUS_PARTITION_KEY", "tenant");
    for (vars, says) in [
        (
            [key, ("GCLIP_MILVUS_PARTITIONS", "5000")],
            "GCLIP_MILVUS_PARTITIONS=\"5000\": give a whole number from 1 to 4096",
        ),
        (
            [key, ("GCLIP_MILVUS_SCALAR_FIELDS", "stock:integer")],
            "GCLIP_MILVUS_SCALAR_FIELDS: stock: unknown type \"integer\"",
        ),
    ] {
        let bad = add(&with_token, &vars);
        let e = said(&bad);
        assert!(!bad.status.success() && e.contains(says), "{e}");
    }
    let check = gclip(&["check", &with_token]);
    assert!(
        !check.status.success(),
        "nothing was created: {}",
        said(&check)
    );

    let out = add(
        &with_token,
        &[
            key,
            ("GCLIP_MILVUS_PARTITIONS", "8"),
            ("GCLIP_MILVUS_SCALAR_FIELDS", "stock:int"),
        ],
    );
    let e = said(&out);
    assert!(!out.status.success(), "three documents failed: {e}");
    assert!(e.contains("3 written"), "{e}");
    assert!(e.contains(r#"document "n1" has no field "tenant""#), "{e}");
    assert!(e.contains(r#"document "n2": field "tenant""#), "{e}");
    assert!(e.contains("is 7, not a string"), "{e}");
    assert!(
        e.contains(r#"document "s1": field "stock" (a scalar field stock:int of"#)
            && e.contains(r#"is "many", not a whole number"#),
        "{e}"
    );
    assert!(e.contains("3 inputs failed"), "{e}");

    let search = |filter: &str| -> Vec<String> {
        let out = gclip(&[
            "search",
            &with_token,
            "a photo of a cat",
            "--json",
            "--filter",
            filter,
        ]);
        let text = said(&out);
        assert!(out.status.success(), "{text}");
        let hits: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
        hits.iter()
            .map(|h| h["id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(search("tenant = acme"), ["a1", "a2"]);
    assert_eq!(search("tenant = globex"), ["g1"]);
    assert_eq!(search("tenant = initech"), Vec::<String>::new());
    assert_eq!(search("tenant = acme AND stock > 4.5"), ["a2"]);

    // The key is the collection's: check names it, with no variable set.
    let check = gclip(&["check", &with_token]);
    let report = said(&check);
    assert!(check.status.success(), "{report}");
    assert!(
        report.contains("partition key `tenant` (tenants), 8 partitions"),
        "{report}"
    );
    assert!(report.contains("scalar fields stock:int"), "{report}");
    assert!(
        report.contains(&format!("collection {address}: 3 documents")),
        "{report}"
    );
    // Another key asked of it: refused, naming both.
    let other = gclip_with(
        &["search", &with_token, "cat", "--filter", "tenant = acme"],
        &[("GCLIP_MILVUS_PARTITION_KEY", "region")],
    );
    let e = said(&other);
    assert!(!other.status.success(), "{e}");
    assert!(
        e.contains("the partition key `tenant`") && e.contains("region"),
        "{e}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

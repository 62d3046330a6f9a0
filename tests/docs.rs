//! The docs a new operator pastes from: the import example of the README
//! runs as written against a real Redis, the reference names every setting,
//! environment variable and error code the binary has, and no doc points
//! outside the repository.
#![allow(clippy::unwrap_used, missing_docs)]

mod support;

use std::{path::Path, process::Command};

use support::*;

fn read(path: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path)).unwrap()
}

/// The lines of the heredoc `cat > NAME <<'END'` … `END` in `text`.
fn heredoc(text: &str, name: &str) -> String {
    let (_, rest) = text
        .split_once(&format!("cat > {name} <<'LINES'\n"))
        .unwrap_or_else(|| panic!("no heredoc for {name}"));
    let (body, _) = rest.split_once("\nLINES\n").unwrap();
    format!("{body}\n")
}

#[test]
fn the_readme_import_example_imports_every_line() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tenants.jsonl");
    std::fs::write(&file, heredoc(&read("README.md"), "tenants.jsonl")).unwrap();
    for args in [&["import", "--dry-run"][..], &["import"][..]] {
        let out = Command::new(env!("CARGO_BIN_EXE_tether-ingress"))
            .args(args)
            .arg(&file)
            .env("TETHER_INGRESS_REDIS_URL", redis.url())
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{args:?}: {text}");
    }
    // The digest line and the hashed key are both there.
    assert_eq!(
        redis.cli(&[
            "EXISTS",
            "tether:apikey:26921fc537018a9ba757ea9c828672e394d0b31d66a69c821fb12c981e0d16b1"
        ]),
        "1"
    );
}

#[test]
fn the_reference_names_every_setting_variable_and_code() {
    let reference = read("docs/REFERENCE.md");
    let defaults: toml::Table = toml::from_str(&read("config/default.toml")).unwrap();
    for (section, table) in &defaults {
        for (key, value) in table.as_table().unwrap() {
            let keys: Vec<String> = match value.as_table() {
                Some(inner) => inner
                    .keys()
                    .map(|k| format!("{section}.{key}.{k}"))
                    .collect(),
                None => vec![format!("{section}.{key}")],
            };
            for key in keys {
                assert!(reference.contains(&format!("`{key}`")), "{key} missing");
            }
        }
    }
    let code = read("src/config/keys.rs");
    for name in code.split('"').filter(|s| s.starts_with("TETHER_INGRESS_")) {
        assert!(reference.contains(name), "{name} missing");
    }
    let openapi: serde_json::Value = serde_json::from_str(&read("openapi/openapi.json")).unwrap();
    let codes =
        openapi["components"]["schemas"]["WebhookErrorResponse"]["properties"]["code"]["enum"]
            .as_array()
            .unwrap();
    for code in codes {
        let code = code.as_str().unwrap();
        assert!(reference.contains(&format!("`{code}`")), "{code} missing");
    }
}

#[test]
fn no_doc_points_outside_the_repository() {
    for doc in ["README.md", "docs/DEPLOY.md", "docs/REFERENCE.md"] {
        let text = read(doc);
        for outside in ["../shared", "CONTRACT"] {
            assert!(!text.contains(outside), "{doc} cites {outside}");
        }
    }
}

/// The shell block of `text` that starts with `first`, after `first`.
fn block<'a>(text: &'a str, first: &str) -> &'a str {
    let (_, rest) = text
        .split_once(&format!("```sh\n{first}"))
        .unwrap_or_else(|| panic!("no block starting {first}"));
    let (body, _) = rest.split_once("```").unwrap();
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_walk_from_nothing_to_a_job_runs_as_written() {
    let redis = RedisServer::start();
    let ingress = Ingress::start_with(config_for(&redis.url())).await;
    let readme = read("README.md");
    let body = block(&readme, "B=target/release/tether-ingress");
    // The walk as written, against this test's ingress and binary; the
    // tail stops after the two entries instead of following (Ctrl-C).
    let script = format!("B={}{body}", env!("CARGO_BIN_EXE_tether-ingress"))
        .replace("http://127.0.0.1:8080", &format!("http://{}", ingress.addr))
        .replace("--from-start", "--from-start --limit 2");
    let out = tokio::process::Command::new("timeout")
        .args(["30", "bash", "-euc", &script])
        .env("TETHER_INGRESS_REDIS_URL", redis.url())
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(r#""matchedCount":2"#), "{stdout}");
    for workflow in ["wf_enrich", "wf_notify"] {
        assert!(stdout.contains(workflow), "{workflow}: {stdout}");
    }
}

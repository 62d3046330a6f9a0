//! `tether-ingress import` (the built binary) against a real redis-server
//! and a running ingress: what it writes is what requests see.
#![allow(clippy::unwrap_used, missing_docs)]

mod support;

use std::{
    io::Write,
    process::{Command, Output, Stdio},
    time::Duration,
};

use fred::prelude::*;
use http::StatusCode;
use support::*;

/// Runs `command` with `input` on its stdin; its output.
fn run_with_input(command: &mut Command, input: &str) -> Output {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// Runs `import ARGS` with `lines` on stdin.
fn import(redis: &RedisServer, args: &[&str], lines: &str) -> Output {
    run_with_input(
        Command::new(env!("CARGO_BIN_EXE_tether-ingress"))
            .arg("import")
            .args(args)
            .arg("-")
            .env("TETHER_INGRESS_REDIS_URL", redis.url())
            .stderr(Stdio::piped()),
        lines,
    )
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The summary row of `kind`: written, unchanged, removed, refused.
fn row(out: &Output, kind: &str) -> [u64; 4] {
    let stdout = text(&out.stdout);
    let line = stdout
        .lines()
        .find(|l| l.split_whitespace().next() == Some(kind))
        .unwrap_or_else(|| panic!("no {kind} row in {stdout}"));
    let n: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().unwrap())
        .collect();
    [n[0], n[1], n[2], n[3]]
}

const FILE: &str = concat!(
    r#"{"type":"apiKey","key":"imported_key_one","userId":"u_1","orgId":"o_1"}"#,
    "\n",
    r#"{"type":"apiKey","key":"imported_key_two","userId":"u_2","orgId":"o_1","rateLimitPerSec":50}"#,
    "\n",
    r#"{"type":"trigger","orgId":"o_1","webhookId":"wh_1","workflowIds":["wf_a","wf_b"]}"#,
    "\n",
    r#"{"type":"trigger","orgId":"o_1","webhookId":"wh_2","workflowIds":["wf_c"]}"#,
    "\n",
    r#"{"type":"outreachConfig","configurationId":"cfg_1","userId":"u_1","orgId":"o_1","active":true,"processId":"p_1","promptId":null}"#,
    "\n",
    r#"{"type":"orgProperties","orgId":"o_1","properties":{"jobTitle":"application","lastMessage":"conversation"}}"#,
    "\n",
);

async fn matched(ingress: &Ingress, key: &str, webhook: &str) -> Option<u64> {
    let (status, _, body) = ingress
        .workflow(Some(key), &format!(r#"{{"webhookId":"{webhook}"}}"#))
        .await;
    (status == StatusCode::ACCEPTED).then(|| json(&body)["data"]["matchedCount"].as_u64().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imported_keys_and_triggers_work_and_a_second_import_changes_nothing() {
    let redis = RedisServer::start();
    let ingress = Ingress::start(&redis.url()).await;
    let out = import(&redis, &[], FILE);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(row(&out, "apiKey"), [2, 0, 0, 0]);
    assert_eq!(row(&out, "trigger"), [2, 0, 0, 0]);
    assert_eq!(row(&out, "outreachConfig"), [1, 0, 0, 0]);
    assert_eq!(row(&out, "orgProperties"), [1, 0, 0, 0]);
    assert!(
        eventually(Duration::from_secs(1), || async {
            matched(&ingress, "imported_key_one", "wh_1").await == Some(2)
        })
        .await,
        "an imported key and trigger did not work within 1 s"
    );
    assert_eq!(matched(&ingress, "imported_key_two", "wh_2").await, Some(1));

    // Again: everything unchanged, nothing written.
    let out = import(&redis, &[], FILE);
    assert!(out.status.success());
    for kind in ["apiKey", "trigger", "outreachConfig", "orgProperties"] {
        let [written, unchanged, _, _] = row(&out, kind);
        assert_eq!(written, 0, "{kind}");
        assert!(unchanged > 0, "{kind}");
    }

    // The plain keys were never written anywhere: not as a key, not in a value.
    let r = redis.client().await;
    let dump = redis.cli(&["KEYS", "*"]);
    assert!(!dump.contains("imported_key"), "{dump}");
    // Two keys, two triggers, a configuration, properties, and the jobs.
    assert_eq!(dump.lines().count(), 7, "{dump}");
    for key in dump.lines() {
        let kind: String = r
            .custom(
                fred::types::CustomCommand::new_static(
                    "TYPE",
                    fred::types::ClusterHash::FirstKey,
                    false,
                ),
                vec![key],
            )
            .await
            .unwrap();
        if kind == "string" {
            let value: String = r.get(key).await.unwrap();
            assert!(!value.contains("imported_key"), "{key}: {value}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_revokes_what_the_file_lacks_and_keeps_the_rest() {
    let redis = RedisServer::start();
    let ingress = Ingress::start(&redis.url()).await;
    assert!(import(&redis, &[], FILE).status.success());
    assert!(
        eventually(Duration::from_secs(1), || async {
            matched(&ingress, "imported_key_one", "wh_1").await == Some(2)
        })
        .await
    );
    // A new file without key one and without trigger wh_2, and wf_b dropped
    // from wh_1; outreach and properties absent: left alone.
    let smaller = concat!(
        r#"{"type":"apiKey","key":"imported_key_two","userId":"u_2","orgId":"o_1","rateLimitPerSec":50}"#,
        "\n",
        r#"{"type":"trigger","orgId":"o_1","webhookId":"wh_1","workflowIds":["wf_a"]}"#,
        "\n",
    );
    // A dry run first: it says what would change and writes nothing.
    let before = redis.cli(&["DBSIZE"]);
    let dry = import(&redis, &["--prune", "--dry-run"], smaller);
    assert!(dry.status.success());
    let said = text(&dry.stdout);
    assert!(said.contains("remove apiKey tether:apikey:"), "{said}");
    assert!(
        said.contains("remove trigger tether:triggers:o_1:wh_2"),
        "{said}"
    );
    assert!(
        said.contains("write trigger tether:triggers:o_1:wh_1: add 0, remove 1"),
        "{said}"
    );
    assert_eq!(redis.cli(&["DBSIZE"]), before);
    assert_eq!(matched(&ingress, "imported_key_one", "wh_1").await, Some(2));

    let out = import(&redis, &["--prune"], smaller);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(row(&out, "apiKey"), [0, 1, 1, 0]);
    assert_eq!(row(&out, "trigger"), [1, 0, 1, 0]);
    assert_eq!(row(&out, "outreachConfig"), [0, 0, 0, 0]);
    assert!(
        eventually(Duration::from_secs(1), || async {
            let (status, _, _) = ingress
                .workflow(Some("imported_key_one"), r#"{"webhookId":"wh_1"}"#)
                .await;
            status == StatusCode::UNAUTHORIZED
        })
        .await,
        "a pruned key still worked after 1 s"
    );
    assert!(
        eventually(Duration::from_secs(1), || async {
            matched(&ingress, "imported_key_two", "wh_1").await == Some(1)
        })
        .await
    );
    assert_eq!(matched(&ingress, "imported_key_two", "wh_2").await, Some(0));
    let config: Option<String> = redis
        .client()
        .await
        .get("tether:outreach:config:cfg_1")
        .await
        .unwrap();
    assert!(config.is_some(), "a kind absent from the file was pruned");
}

#[tokio::test]
async fn bad_lines_are_refused_with_their_number_and_the_rest_imported() {
    let redis = RedisServer::start();
    let lines = concat!(
        r#"{"type":"apiKey","key":"imported_key_one","userId":"u_1","orgId":"o_1"}"#,
        "\n",
        "not json\n",
        r#"{"type":"apiKey","key":"secret_plain_key","orgId":"o_1"}"#,
        "\n",
        r#"{"type":"trigger","orgId":"o_1","webhookId":"wh_1","workflowIds":"wf_a"}"#,
        "\n",
        r#"{"type":"orgProperties","orgId":"o_1","properties":{"x":"nope"}}"#,
        "\n",
        r#"{"type":"gadget"}"#,
        "\n",
        r#"{"type":"trigger","orgId":"o_1","webhookId":"wh_1","workflowIds":["wf_a"]}"#,
        "\n",
    );
    let out = import(&redis, &[], lines);
    assert_eq!(out.status.code(), Some(1), "bad lines make the exit code 1");
    let errors = text(&out.stderr);
    for (n, says) in [
        (2, "not JSON"),
        (3, "apiKey: userId is missing"),
        (4, "trigger: workflowIds must be an array"),
        (5, "orgProperties: properties.x must be"),
        (6, "type \"gadget\""),
    ] {
        assert!(
            errors.contains(&format!("line {n}: {says}")),
            "line {n}: {errors}"
        );
    }
    assert!(!errors.contains("secret_plain_key"), "{errors}");
    assert_eq!(row(&out, "apiKey"), [1, 0, 0, 1]);
    assert_eq!(row(&out, "trigger"), [1, 0, 0, 1]);
    assert_eq!(row(&out, "orgProperties"), [0, 0, 0, 1]);
    assert!(text(&out.stdout).contains("2 lines of no known kind refused"));
}

/// `--prune` with a refused line prunes nothing: the line's key (here one
/// with a misspelt field) would be taken for one the file lacks and
/// deleted, revoking a key the operator meant to keep. Before, it was.
/// The good lines are still imported.
#[tokio::test]
async fn a_refused_line_withholds_the_prune() {
    let redis = RedisServer::start();
    assert!(import(&redis, &[], FILE).status.success());
    let keys = || redis.cli(&["KEYS", "tether:apikey:*"]).lines().count();
    assert_eq!(keys(), 2);
    let with_a_typo = concat!(
        r#"{"type":"apiKey","key":"imported_key_one","userId":"u_1","orgId":"o_1","Active":false}"#,
        "\n",
        r#"{"type":"apiKey","key":"imported_key_two","userId":"u_2","orgId":"o_1","rateLimitPerSec":60}"#,
        "\n",
    );
    for args in [&["--prune", "--dry-run"][..], &["--prune"]] {
        let out = import(&redis, args, with_a_typo);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let (said, errors) = (text(&out.stdout), text(&out.stderr));
        assert!(!said.contains("remove apiKey"), "{args:?}: {said}");
        assert!(said.contains("not pruned"), "{args:?}: {said}");
        assert!(errors.contains("nothing was pruned"), "{args:?}: {errors}");
        assert_eq!(row(&out, "apiKey"), [1, 0, 0, 1], "{args:?}");
        assert_eq!(keys(), 2, "{args:?}: a key was pruned");
    }
    let two: serde_json::Value = serde_json::from_str(&redis.cli(&[
        "GET",
        &format!("tether:apikey:{}", sha256_hex("imported_key_two")),
    ]))
    .unwrap();
    assert_eq!(two["rateLimitPerSec"], 60, "the good line was not imported");
}

/// A file saved by a Windows tool: a byte-order mark before the first line
/// and CRLF line ends. Every line is read; before, the mark made line 1
/// "not JSON".
#[tokio::test]
async fn a_byte_order_mark_and_crlf_line_ends_are_read() {
    let redis = RedisServer::start();
    let lines = format!("\u{feff}{}", FILE.replace('\n', "\r\n"));
    let out = import(&redis, &[], &lines);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(row(&out, "apiKey"), [2, 0, 0, 0]);
    assert_eq!(row(&out, "trigger"), [2, 0, 0, 0]);
    assert_eq!(row(&out, "outreachConfig"), [1, 0, 0, 0]);
    assert_eq!(row(&out, "orgProperties"), [1, 0, 0, 0]);
    // A mark elsewhere is no line end's business: that line is refused.
    let out = import(&redis, &[], &format!("{FILE}\u{feff}{{}}\n"));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("line 7: not JSON"),
        "{}",
        text(&out.stderr)
    );
}

/// A misspelt field the ingress reads would be stored as given and ignored:
/// a key meant to be disabled would stay active, one meant to be limited
/// would be unlimited. Such a line is refused; a field of the backend's own
/// is kept.
#[tokio::test]
async fn a_misspelt_field_is_refused_and_a_field_of_ones_own_is_kept() {
    let redis = RedisServer::start();
    let lines = concat!(
        r#"{"type":"apiKey","key":"meant_disabled","userId":"u_1","orgId":"o_1","Active":false}"#,
        "\n",
        r#"{"type":"apiKey","key":"meant_limited","userId":"u_1","orgId":"o_1","rate_limit_per_sec":5}"#,
        "\n",
        r#"{"type":"outreachConfig","configurationId":"cfg_1","userId":"u_1","orgId":"o_1","active":true,"procesId":"p_1"}"#,
        "\n",
        r#"{"type":"apiKey","key":"with_extras","userId":"u_1","orgId":"o_1","inactive":true,"name":"prod"}"#,
        "\n",
    );
    let out = import(&redis, &[], lines);
    assert_eq!(out.status.code(), Some(1));
    let errors = text(&out.stderr);
    for (n, says) in [
        (
            1,
            r#"apiKey: "Active" is not a field the ingress reads; did you mean active?"#,
        ),
        (
            2,
            r#"apiKey: "rate_limit_per_sec" is not a field the ingress reads; did you mean rateLimitPerSec?"#,
        ),
        (
            3,
            r#"outreachConfig: "procesId" is not a field the ingress reads; did you mean processId?"#,
        ),
    ] {
        assert!(
            errors.contains(&format!("line {n}: {says}")),
            "line {n}: {errors}"
        );
    }
    assert!(errors.contains("3 lines refused"), "{errors}");
    assert!(!errors.contains("meant_"), "a plain key in {errors}");
    assert_eq!(row(&out, "apiKey"), [1, 0, 0, 2]);
    assert_eq!(row(&out, "outreachConfig"), [0, 0, 0, 1]);
    let stored: Option<String> = redis
        .client()
        .await
        .get(format!("tether:apikey:{}", sha256_hex("with_extras")))
        .await
        .unwrap();
    let stored = stored.expect("the line with fields of its own was written");
    assert!(stored.contains(r#""name":"prod""#), "{stored}");
    assert!(stored.contains(r#""inactive":true"#), "{stored}");

    // One refused line is one line.
    let out = import(&redis, &[], "{\"type\":\"gadget\"}\n");
    assert!(
        text(&out.stdout).contains("1 line in "),
        "{}",
        text(&out.stdout)
    );
    assert!(
        text(&out.stderr).contains("1 line refused"),
        "{}",
        text(&out.stderr)
    );
}

fn node_example(args: &[&str], stdin: &str) -> Output {
    let dir = support::node::dir();
    assert!(
        dir.join("node_modules/ioredis").exists(),
        "the Node test packages are missing: run scripts/test, or `npm ci --prefix tests/node`"
    );
    run_with_input(
        Command::new("node")
            .args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env("NODE_PATH", dir.join("node_modules"))
            .stderr(Stdio::inherit()),
        stdin,
    )
}

/// `examples/backend-control-plane.js` (ioredis): what the backend writes
/// when a key is created or revoked and when a trigger changes is seen by
/// the running ingress within 1 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backend_snippet_s_changes_reach_the_ingress() {
    let redis = RedisServer::start();
    let ingress = Ingress::start(&redis.url()).await;
    let url = redis.url();
    let run = |args: &[&str]| {
        let mut all = vec!["examples/backend-control-plane.js", url.as_str()];
        all.extend_from_slice(args);
        let out = node_example(&all, "");
        assert!(out.status.success(), "{args:?}");
    };
    run(&["create-key", "backend_made_key", "u_1", "o_1"]);
    run(&["set-trigger", "o_1", "wh_1", "wf_a", "wf_b"]);
    assert!(
        eventually(Duration::from_secs(1), || async {
            matched(&ingress, "backend_made_key", "wh_1").await == Some(2)
        })
        .await,
        "the backend's key and trigger were not seen within 1 s"
    );
    run(&["set-trigger", "o_1", "wh_1", "wf_b"]);
    assert!(
        eventually(Duration::from_secs(1), || async {
            matched(&ingress, "backend_made_key", "wh_1").await == Some(1)
        })
        .await
    );
    run(&["revoke-key", "backend_made_key"]);
    assert!(
        eventually(Duration::from_secs(1), || async {
            let (status, _, _) = ingress
                .workflow(Some("backend_made_key"), r#"{"webhookId":"wh_1"}"#)
                .await;
            status == StatusCode::UNAUTHORIZED
        })
        .await,
        "a revoked key still worked after 1 s"
    );
}

/// `examples/export-to-import.js`: mongoexport-style documents become
/// import lines that import cleanly and work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exported_documents_convert_to_lines_that_import() {
    let hex = sha256_hex("exported_key");
    let keys = format!(
        r#"{{"_id":{{"$oid":"65a1"}},"keyHash":"{hex}","user":{{"$oid":"u_9"}},"organization":{{"$oid":"o_9"}},"isActive":true}}"#
    );
    let workflows = concat!(
        r#"{"_id":{"$oid":"wf_1"},"organization":{"$oid":"o_9"},"trigger":{"type":"webhook","webhookId":"wh_9"}}"#,
        "\n",
        r#"{"_id":{"$oid":"wf_2"},"organization":{"$oid":"o_9"},"trigger":{"type":"webhook","webhookId":"wh_9"}}"#,
        "\n",
        r#"{"_id":{"$oid":"wf_3"},"organization":{"$oid":"o_9"},"isActive":false,"trigger":{"type":"webhook","webhookId":"wh_9"}}"#,
        "\n",
    );
    let mut lines = String::new();
    for (collection, docs) in [("apikeys", keys.as_str()), ("workflows", workflows)] {
        let out = node_example(&["examples/export-to-import.js", collection], docs);
        assert!(out.status.success(), "{collection}");
        lines.push_str(&text(&out.stdout));
    }
    let redis = RedisServer::start();
    let ingress = Ingress::start(&redis.url()).await;
    let out = import(&redis, &[], &lines);
    assert!(out.status.success(), "{lines}\n{}", text(&out.stderr));
    assert_eq!(row(&out, "apiKey"), [1, 0, 0, 0]);
    assert_eq!(row(&out, "trigger"), [1, 0, 0, 0]);
    assert!(
        eventually(Duration::from_secs(1), || async {
            matched(&ingress, "exported_key", "wh_9").await == Some(2)
        })
        .await
    );
}

#[tokio::test]
async fn lines_that_are_not_text_too_long_or_unrepresentable_are_refused_alone() {
    let redis = RedisServer::start();
    let mut input = Vec::new();
    input.extend_from_slice(b"{\"type\":\"trigger\",\"orgId\":\"o_1\",\"webhookId\":\"w\xff\",\"workflowIds\":[\"a\"]}\n");
    input.extend_from_slice(
        br#"{"type":"trigger","orgId":"o:x","webhookId":"w","workflowIds":["wf_1"]}"#,
    );
    input.push(b'\n');
    input.extend_from_slice(br#"{"type":"apiKey","key":"k","userId":"u","orgId":"o","pad":""#);
    input.extend(std::iter::repeat_n(b'x', 2 << 20));
    input.extend_from_slice(b"\"}\n");
    input.extend_from_slice(
        br#"{"type":"trigger","orgId":"o_1","webhookId":"wh_1","workflowIds":["wf_a"]}"#,
    );
    input.push(b'\n');
    let mut child = Command::new(env!("CARGO_BIN_EXE_tether-ingress"))
        .args(["import", "-"])
        .env("TETHER_INGRESS_REDIS_URL", redis.url())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert_eq!(out.status.code(), Some(1), "bad lines make the exit code 1");
    let errors = text(&out.stderr);
    for (n, says) in [
        (1, "not UTF-8"),
        (2, "orgId must not contain ':'"),
        (3, "longer than 1048576 bytes"),
    ] {
        assert!(
            errors.contains(&format!("line {n}: ")) && errors.contains(says),
            "line {n}: {errors}"
        );
    }
    // The good line after them is imported; nothing of org `o:x` is.
    assert_eq!(row(&out, "trigger"), [1, 0, 0, 1]);
    assert_eq!(redis.cli(&["EXISTS", "tether:triggers:o_1:wh_1"]), "1");
    assert_eq!(redis.cli(&["EXISTS", "tether:triggers:o:x:w"]), "0");
    // The admin CLI refuses such an org id too.
    let refused = Command::new(env!("CARGO_BIN_EXE_tether-ingress"))
        .args(["triggers", "add", "o:x", "w", "wf_1"])
        .env("TETHER_INGRESS_REDIS_URL", redis.url())
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(1));
    assert!(text(&refused.stderr).contains("must not contain ':'"));
    assert_eq!(redis.cli(&["EXISTS", "tether:triggers:o:x:w"]), "0");
}

/// Redis failing part-way (here the user may write API keys but not
/// triggers, so the batch holding the first trigger is refused) ends the
/// import with exit 3 and the line from which to run it again, in words
/// (a lost connection read `IO Error: Os { code: 104, … }`); every line
/// before it is in, and the same import run again finishes the rest.
#[tokio::test]
async fn an_import_redis_stops_says_where_and_a_rerun_finishes_it() {
    let redis = RedisServer::start();
    redis.cli(&[
        "ACL",
        "SETUSER",
        "keys_only",
        "on",
        ">pw",
        "+@all",
        "~tether:apikey:*",
    ]);
    let mut lines = String::new();
    for i in 0..5_000 {
        lines.push_str(&format!(
            r#"{{"type":"apiKey","key":"user_resume_{i}","userId":"u","orgId":"o_1"}}"#
        ));
        lines.push('\n');
    }
    lines.push_str(r#"{"type":"trigger","orgId":"o_1","webhookId":"wh_1","workflowIds":["wf_a"]}"#);
    lines.push('\n');
    let url = redis.url().replacen("://", "://keys_only:pw@", 1);
    let out = run_with_input(
        Command::new(env!("CARGO_BIN_EXE_tether-ingress"))
            .args(["import", "-"])
            .env("TETHER_INGRESS_REDIS_URL", url)
            .stderr(Stdio::piped()),
        &lines,
    );
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    let said = text(&out.stderr);
    assert!(
        said.contains("redis failed during the import (NOPERM"),
        "{said}"
    );
    let from: u64 = said
        .split("every line before line ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no line to start from: {said}"));
    // Batches of 2,000: the third holds the trigger (line 5,001).
    assert_eq!(from, 4_001, "{said}");
    let keys = redis.cli(&["EVAL", "return #redis.call('KEYS','tether:apikey:*')", "0"]);
    assert!(keys.parse::<u64>().unwrap() >= from - 1, "{keys} keys");

    let again = import(&redis, &[], &lines);
    assert!(again.status.success(), "{}", text(&again.stderr));
    assert_eq!(row(&again, "apiKey")[1] + row(&again, "apiKey")[0], 5_000);
    assert!(row(&again, "apiKey")[1] >= from - 1);
    assert_eq!(row(&again, "trigger")[0], 1);
}

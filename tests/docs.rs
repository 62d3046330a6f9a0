//! The docs a new operator pastes from. Every fenced block of the README and
//! docs/DEPLOY.md is listed in [`EXAMPLES`] with what checks it: the shell
//! examples run as written against a real Redis (the quick start through
//! `scripts/run` itself, the BullMQ walk with the example Worker, the import,
//! the start commands through `check-config`), the snippets are checked
//! against what they stand for, and the rest says why it is not run. The
//! reference names every setting, environment variable and error code the
//! binary has, and no doc points outside the repository.
#![allow(clippy::unwrap_used, missing_docs)]

mod support;

use std::{
    os::unix::process::CommandExt,
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use support::*;

fn read(path: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path)).unwrap()
}

#[test]
fn the_readme_import_example_imports_every_line() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    // The whole block as written (the file, the dry run, the import, the
    // pruning dry run and the pruning), with `B` from the block before it.
    let block = example("README.md", "cat > tenants.jsonl <<'LINES'");
    let script = format!("B={}\n{block}", env!("CARGO_BIN_EXE_tether-ingress"));
    let (ok, out) = bash_in(dir.path(), &script, &redis.url());
    // A refused line would make `import` exit 1, and bash stop.
    assert!(ok, "{out}");
    // The digest line and the hashed key are both there.
    assert_eq!(
        redis.cli(&[
            "EXISTS",
            "tether:apikey:26921fc537018a9ba757ea9c828672e394d0b31d66a69c821fb12c981e0d16b1"
        ]),
        "1"
    );
    assert_eq!(redis.cli(&["SCARD", "tether:triggers:o_1:wh_leads"]), "2");
}

/// DEPLOY's least-privilege ACL user, created by its own line, serves both
/// webhooks in both sink modes, with an idempotency key and the global rate
/// limit, and Redis refuses it nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deploy_acl_user_serves_both_modes_and_is_never_refused() {
    let redis = RedisServer::start();
    let r = redis.client().await;
    seed_both_webhooks(&r).await;
    let line = example("docs/DEPLOY.md", "redis-cli ACL SETUSER tether-ingress").replacen(
        "redis-cli",
        &format!("redis-cli -p {}", redis.port),
        1,
    );
    let dir = tempfile::tempdir().unwrap();
    let (ok, out) = bash_in(dir.path(), &line, &redis.url());
    assert!(ok && out.trim() == "OK", "{out}");
    redis.cli(&["ACL", "LOG", "RESET"]);

    let url = format!("redis://tether-ingress:CHANGE_ME@127.0.0.1:{}", redis.port);
    serves_both_modes_as(&url, "bull", "acl").await;
    check_redis_passes(&url, &[]);
    check_redis_passes(&url, &[("TETHER_INGRESS_SINK", "bullmq")]);
    assert_eq!(
        redis.cli(&["ACL", "LOG"]),
        "",
        "Redis refused the user something"
    );
}

/// The key, trigger (two workflows) and outreach configuration
/// [`serves_both_modes_as`] posts to.
async fn seed_both_webhooks(r: &fred::clients::Client) {
    put_key(r, TEST_KEY, r#"{"userId":"u_1","orgId":"o_1"}"#).await;
    add_trigger(r, "o_1", "wh_1", &["wf_a", "wf_b"]).await;
    put_outreach_config(
        r,
        "cfg_1",
        r#"{"userId":"u_1","orgId":"o_1","active":true,"processId":"p_1","promptId":null}"#,
    )
    .await;
}

/// An ingress on `url` in streams and then BullMQ mode (under `prefix`),
/// with `Idempotency-Key` (keys tagged `tag`) and a global rate limit,
/// answers both webhooks: what the DEPLOY ACL tests ask of that user.
async fn serves_both_modes_as(url: &str, prefix: &str, tag: &str) {
    use http::{Request, StatusCode};
    use tether_ingress::config::{Config, RateLimitScope, SinkKind};

    for (n, sink) in [SinkKind::Streams, SinkKind::Bullmq]
        .into_iter()
        .enumerate()
    {
        let mut config = Config::default();
        config.redis.url = url.to_owned();
        config.server.listen = ([127, 0, 0, 1], 0).into();
        config.sink.kind = sink;
        config.bullmq.prefix = prefix.into();
        config.rate_limit.scope = RateLimitScope::Global;
        config.rate_limit.default_per_sec = std::num::NonZeroU32::new(1000);
        let ingress = Ingress::start_with(config.validate().unwrap()).await;
        let post = |path: &str, body: &str| {
            Request::post(ingress.uri(path))
                .header("authorization", format!("Bearer {TEST_KEY}"))
                .header("idempotency-key", format!("{tag}-{n}-{path}"))
                .body(http_body_util::Full::new(bytes::Bytes::copy_from_slice(
                    body.as_bytes(),
                )))
                .unwrap()
        };
        let (status, _, body) = ingress
            .request(post("/api/webhook/workflow", r#"{"webhookId":"wh_1"}"#))
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{sink:?}: {body:?}");
        assert_eq!(json(&body)["data"]["matchedCount"], 2, "{sink:?}");
        let (status, _, body) = ingress
            .request(post(
                "/api/webhook/outreach",
                r#"{"configurationId":"cfg_1","firstName":"Jane"}"#,
            ))
            .await;
        assert_eq!(status, StatusCode::OK, "{sink:?}: {body:?}");
        assert!(ingress.shutdown().await);
    }
}

/// The same user on a three-primary Cluster, made by DEPLOY's two lines on
/// every node: both modes served (BullMQ under a hash-tagged prefix), and
/// no node refuses it anything, topology reads and client tracking on
/// every primary included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deploy_acl_user_serves_a_cluster_and_is_never_refused() {
    use http::{Request, StatusCode};
    use support::cluster::Cluster;

    let cluster = Cluster::start(0).await;
    let r = client_at(&cluster.url()).await;
    seed_both_webhooks(&r).await;
    let user = example("docs/DEPLOY.md", "redis-cli ACL SETUSER tether-ingress");
    let topology = example(
        "docs/DEPLOY.md",
        "redis-cli -h NODE -p PORT ACL SETUSER tether-ingress",
    );
    let dir = tempfile::tempdir().unwrap();
    let nodes = cluster.primaries();
    assert_eq!(nodes.len(), 3);
    for port in &nodes {
        let on_node = format!("redis-cli -h 127.0.0.1 -p {port}");
        let lines = format!(
            "{}\n{}",
            user.replacen("redis-cli", &on_node, 1),
            topology.replacen("redis-cli -h NODE -p PORT", &on_node, 1)
        );
        let (ok, out) = bash_in(dir.path(), &lines, &cluster.url());
        assert!(ok && out.trim() == "OK\nOK", "{out}");
        cluster.cli(*port, &["ACL", "LOG", "RESET"]);
    }
    let url = cluster
        .url()
        .replacen("://", "://tether-ingress:CHANGE_ME@", 1);
    serves_both_modes_as(&url, "{bull}", "acl-cluster").await;
    let text = check_redis_passes(&url, &[]);
    assert_eq!(
        text.matches("sees the cluster serve all 16384 slots")
            .count(),
        3,
        "each primary's view of the cluster:\n{text}"
    );
    check_redis_passes(
        &url,
        &[
            ("TETHER_INGRESS_SINK", "bullmq"),
            ("TETHER_INGRESS_BULLMQ_PREFIX", "{bull}"),
        ],
    );
    // The binary as an operator starts it: no warning on a start where
    // nothing is wrong (each job writer said it could not connect, as it
    // asked before the cluster's topology was read).
    let log = LogFile::new();
    let binary = IngressProcess::spawn_logging(&[("TETHER_INGRESS_REDIS_URL", url)], log.writer());
    binary.wait_ready().await;
    let req = Request::post(format!("{}/api/webhook/workflow", binary.base()))
        .header("authorization", format!("Bearer {TEST_KEY}"))
        .body(http_body_util::Full::new(bytes::Bytes::from_static(
            br#"{"webhookId":"wh_1"}"#,
        )))
        .unwrap();
    let status = http_client().request(req).await.unwrap().status();
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(log.text(), "", "a clean start logged warnings");
    for port in &nodes {
        assert_eq!(
            cluster.cli(*port, &["ACL", "LOG"]),
            "",
            "the node on {port} refused the user something"
        );
    }
}

/// The same user behind Sentinel, made by DEPLOY's lines on every data node
/// and every sentinel: requests are served before and after the primary is
/// killed and the sentinels promote a replica, and neither a data node nor
/// a sentinel refuses the user anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deploy_acl_user_serves_behind_sentinel_through_a_failover() {
    use http::StatusCode;
    use support::sentinel::Sentinels;

    let mut deployment = Sentinels::start().await;
    let r = client_at(&format!("redis://127.0.0.1:{}", deployment.primary.port)).await;
    put_key(&r, TEST_KEY, r#"{"userId":"u_1","orgId":"o_1"}"#).await;
    add_trigger(&r, "o_1", "wh_1", &["wf_a"]).await;
    drop(r);
    let user = example("docs/DEPLOY.md", "redis-cli ACL SETUSER tether-ingress");
    let asker = example(
        "docs/DEPLOY.md",
        "redis-cli -h SENTINEL -p 26379 ACL SETUSER tether-ingress",
    );
    let dir = tempfile::tempdir().unwrap();
    let data: Vec<u16> = std::iter::once(deployment.primary.port)
        .chain(deployment.replicas.iter().map(|r| r.port))
        .collect();
    let run = |line: String| {
        let (ok, out) = bash_in(dir.path(), &line, "");
        assert!(ok && out.trim() == "OK", "{line}: {out}");
    };
    for port in &data {
        run(user.replacen("redis-cli", &format!("redis-cli -p {port}"), 1));
        deployment.server(*port).cli(&["ACL", "LOG", "RESET"]);
    }
    for port in &deployment.ports {
        run(asker.replacen(
            "redis-cli -h SENTINEL -p 26379",
            &format!("redis-cli -h 127.0.0.1 -p {port}"),
            1,
        ));
    }
    let url = deployment
        .url()
        .replacen("://", "://tether-ingress:CHANGE_ME@", 1);
    let config_url = url.clone();
    let mut config = tether_ingress::config::Config::default();
    config.redis.url = url;
    config.server.listen = ([127, 0, 0, 1], 0).into();
    let ingress = Ingress::start_with(config.validate().unwrap()).await;
    let accepted = || async {
        ingress
            .workflow(Some(TEST_KEY), r#"{"webhookId":"wh_1"}"#)
            .await
            .0
            == StatusCode::ACCEPTED
    };
    assert!(accepted().await);
    let text = check_redis_passes(&config_url, &[("TETHER_INGRESS_REDIS_WAIT_REPLICAS", "2")]);
    let primary = format!("127.0.0.1:{}", deployment.primary.port);
    assert!(
        text.contains(&format!(
            "ok    the sentinels (3 of 3 asked) name {primary} as the primary of tether-primary"
        )),
        "{text}"
    );
    // A sentinel of the URL that cannot be asked is said, the others
    // still name the primary.
    let gone = closed_port();
    let text = check_redis_passes(&format!("{config_url}&node=127.0.0.1:{}", gone.port), &[]);
    for said in [
        format!("warn  sentinel 127.0.0.1:{} cannot be asked (", gone.port),
        format!("ok    the sentinels (3 of 4 asked) name {primary}"),
    ] {
        assert!(text.contains(&said), "{said:?} missing:\n{text}");
    }
    let old = deployment.primary.port;
    deployment.primary.kill();
    assert!(
        eventually(Duration::from_secs(40), || async {
            let now = deployment.primary_port();
            now != old && now != 0 && accepted().await
        })
        .await,
        "no request was served by a new primary"
    );
    for port in data.iter().filter(|p| **p != old) {
        assert_eq!(
            deployment.server(*port).cli(&["ACL", "LOG"]),
            "",
            "the data node on {port} refused the user something"
        );
    }
    for port in &deployment.ports {
        let log = Command::new("redis-cli")
            .args(["-p", &port.to_string(), "ACL", "LOG"])
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&log.stdout).trim(),
            "",
            "the sentinel on {port} refused the user something"
        );
    }
}

/// DEPLOY's `check-redis` run as the user on `url` (with `env`): no check
/// fails (a stream no group reads yet is only a warning), and the user's
/// password is not shown.
fn check_redis_passes(url: &str, env: &[(&str, &str)]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_tether-ingress"))
        .arg("check-redis")
        .env("TETHER_INGRESS_REDIS_URL", url)
        // The user serves a global rate limit too: its records are asked.
        .env("TETHER_INGRESS_RATE_LIMIT_SCOPE", "global")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let said = format!("{text}{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{env:?}:\n{said}");
    assert!(
        !said.contains("FAIL") && !said.contains("CHANGE_ME") && !said.contains("may not"),
        "{said}"
    );
    for part in [
        "ok    the user may write jobs to ",
        "ok    the user may read the control plane",
        "ok    the user may keep the global rate limits under ",
        ", a primary",
    ] {
        assert!(text.contains(part), "{part:?} missing:\n{text}");
    }
    text.into_owned()
}

/// An operator reads what a metric means in the README's table: every
/// family the binary exports is named there in full.
#[test]
fn the_readme_names_every_metric() {
    let readme = read("README.md");
    let missing: Vec<&str> = tether_ingress::METRICS
        .iter()
        .map(|(name, _, _)| *name)
        .filter(|name| !readme.contains(&format!("`{name}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "README's metrics table lacks {missing:?}"
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

/// How a fenced block of the docs is checked.
enum Check {
    /// Run as written by the named test.
    Run(&'static str),
    /// Compared with what it stands for, by the named test.
    Checked(&'static str),
    /// Not run, and why.
    NotRun(&'static str),
}

use Check::{Checked, NotRun, Run};

/// Every fenced block of the README and docs/DEPLOY.md, by the start of its
/// first line.
const EXAMPLES: &[(&str, &str, Check)] = &[
    (
        "README.md",
        "scripts/run     # build and run",
        Run("the_quick_start_answers_as_the_readme_shows (scripts/test is CI's own command)"),
    ),
    (
        "README.md",
        "curl -s -X POST http://127.0.0.1:8080/api/webhook/workflow",
        Run("the_quick_start_answers_as_the_readme_shows"),
    ),
    (
        "README.md",
        "curl -s -X POST http://127.0.0.1:8080/api/webhook/outreach",
        Run("the_quick_start_answers_as_the_readme_shows"),
    ),
    (
        "README.md",
        "B=target/release/tether-ingress",
        Run("the_readme_walk_from_nothing_to_a_job_runs_as_written"),
    ),
    (
        "README.md",
        "cat > tenants.jsonl <<'LINES'",
        Run("the_readme_import_example_imports_every_line"),
    ),
    (
        "README.md",
        "TETHER_INGRESS_SINK=bullmq scripts/run",
        Run("the_readme_bullmq_walk_prints_both_jobs"),
    ),
    ("README.md", "┌", NotRun("a diagram")),
    (
        "README.md",
        "TETHER_INGRESS_TRUSTED_PROXIES=",
        Run("the_readme_start_commands_are_valid_configurations"),
    ),
    (
        "README.md",
        "TETHER_INGRESS_TLS_CERT_FILE=/etc/tether/tls/fullchain.pem",
        Run("the_readme_start_commands_are_valid_configurations"),
    ),
    (
        "README.md",
        "TETHER_INGRESS_REDIS_URL='rediss://",
        Run("the_readme_start_commands_are_valid_configurations"),
    ),
    (
        "README.md",
        "TETHER_INGRESS_REDIS_WAIT_REPLICAS=1 tether-ingress",
        Run("the_readme_start_commands_are_valid_configurations"),
    ),
    ("README.md", "main.rs ", NotRun("the module map")),
    (
        "README.md",
        "cargo build --profile dist",
        Checked(
            "every_doc_block_is_run_checked_or_named (the profile exists; the build takes minutes)",
        ),
    ),
    ("docs/DEPLOY.md", "flowchart LR", NotRun("a diagram")),
    (
        "docs/DEPLOY.md",
        "redis-cli ACL SETUSER tether-ingress",
        Run("the_deploy_acl_user_serves_both_modes_and_is_never_refused"),
    ),
    (
        "docs/DEPLOY.md",
        "redis-cli -h NODE -p PORT ACL SETUSER tether-ingress",
        Run("the_deploy_acl_user_serves_a_cluster_and_is_never_refused"),
    ),
    (
        "docs/DEPLOY.md",
        "redis-cli -h SENTINEL -p 26379 ACL SETUSER tether-ingress",
        Run("the_deploy_acl_user_serves_behind_sentinel_through_a_failover"),
    ),
    (
        "docs/DEPLOY.md",
        "mongoexport --collection=apikeys",
        NotRun(
            "mongoexport needs the backend's MongoDB; tests/import.rs runs \
             examples/export-to-import.js on mongoexport-shaped documents and \
             imports its output",
        ),
    ),
    (
        "docs/DEPLOY.md",
        r#"{"type":"apiKey","sha256":"<hex"#,
        NotRun(
            "the line format with placeholders; the README's import example, which \
             runs, has the same lines with real values",
        ),
    ),
    (
        "docs/DEPLOY.md",
        "const PREFIX = 'tether:';",
        Checked(
            "every_doc_block_is_run_checked_or_named (each line of code is in \
             examples/backend-control-plane.js, which tests/import.rs runs)",
        ),
    ),
    (
        "docs/DEPLOY.md",
        "location = /api/webhook/workflow",
        NotRun("a fragment of an nginx server block; nginx is not a test dependency"),
    ),
    (
        "docs/DEPLOY.md",
        "scrape_configs:",
        Checked(
            "every_doc_block_is_run_checked_or_named (`promtool check config`, \
             where promtool is installed)",
        ),
    ),
    (
        "docs/DEPLOY.md",
        "# tether-ingress as a sidecar in the backend's pod.",
        Checked("the_kubernetes_example_is_one_the_binary_takes"),
    ),
];

/// The Kubernetes example agrees with the binary and with itself: every
/// variable is one the ingress reads; its file and variables pass
/// `check-config`; the ports are the listeners'; the probes ask the metrics
/// listener; the spool is a directory inside its volume; the termination
/// grace covers the shutdown delay and the drain.
#[test]
fn the_kubernetes_example_is_one_the_binary_takes() {
    let yaml = example(
        "docs/DEPLOY.md",
        "# tether-ingress as a sidecar in the backend's pod.",
    );
    let lines: Vec<&str> = yaml.lines().map(str::trim).collect();
    // `{name: N, KEY: V}` items, as (N, V).
    let items = |key: &str| -> Vec<(String, String)> {
        let key = format!(", {key}: ");
        lines
            .iter()
            .filter_map(|l| {
                let (name, value) = l.strip_prefix("- {name: ")?.split_once(key.as_str())?;
                let value = value.strip_suffix('}').unwrap_or(value);
                // Other keys may follow (`readOnly: true`).
                let value = value.split(", ").next().unwrap_or(value);
                Some((name.to_owned(), value.trim_matches('"').to_owned()))
            })
            .collect()
    };
    let one = |items: &[(String, String)], name: &str| -> String {
        items
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("no {name} in the example"))
            .1
            .clone()
    };
    let env = items("value");
    let from_secrets: Vec<&str> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("- name: TETHER_"))
        .collect();
    assert!(!env.is_empty() && !from_secrets.is_empty());
    for name in env
        .iter()
        .map(|(n, _)| n.clone())
        .chain(from_secrets.iter().map(|n| format!("TETHER_{n}")))
    {
        assert!(
            tether_ingress::config::ENV
                .iter()
                .any(|(known, _)| *known == name),
            "{name} is not a variable the ingress reads"
        );
    }
    // The configuration file: the lines indented under its name.
    let raw: Vec<&str> = yaml.lines().collect();
    let at = raw
        .iter()
        .position(|l| l.trim() == "tether-ingress.toml: |")
        .expect("no configuration file in the example");
    let indent = raw[at + 1].len() - raw[at + 1].trim_start().len();
    let file: String = raw[at + 1..]
        .iter()
        .take_while(|l| l.len() > indent && l[..indent].trim().is_empty())
        .map(|l| format!("{}\n", &l[indent..]))
        .collect();
    let mounts = items("mountPath");
    let args = lines
        .iter()
        .find_map(|l| l.strip_prefix("args: "))
        .expect("no args");
    assert!(
        args.contains(&format!(
            r#""--config", "{}/tether-ingress.toml""#,
            one(&mounts, "config")
        )),
        "{args}"
    );
    // check-config with that file and those variables; the secret file is
    // the test's own, at the path the example mounts it under.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tether-ingress.toml"), &file).unwrap();
    std::fs::write(dir.path().join("jwt-secret"), "a-test-secret\n").unwrap();
    let secrets = one(&mounts, "secrets");
    let mut command = Command::new(env!("CARGO_BIN_EXE_tether-ingress"));
    command
        .arg("check-config")
        .arg("--config")
        .arg(dir.path().join("tether-ingress.toml"));
    for (name, value) in &env {
        let value = match value.strip_prefix(&format!("{secrets}/")) {
            Some(file) => dir.path().join(file).display().to_string(),
            None => value.clone(),
        };
        command.env(name, value);
    }
    let out = command.output().unwrap();
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{printed}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let setting = |key: &str| -> String {
        printed
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{key} = ")))
            .unwrap_or_else(|| panic!("no {key} in {printed}"))
            .to_owned()
    };
    let port = |addr: String| addr.rsplit_once(':').unwrap().1.to_owned();
    let ports = items("containerPort");
    assert_eq!(one(&ports, "http"), port(setting("server.listen")));
    assert_eq!(
        one(&ports, "metrics"),
        port(setting("server.metrics_listen"))
    );
    for probe in ["/readyz", "/healthz"] {
        assert!(
            lines.contains(&format!("httpGet: {{path: {probe}, port: metrics}}").as_str()),
            "{probe} is not probed on the metrics listener"
        );
    }
    // The spool is a directory the ingress makes inside its volume.
    let spool = setting("spool.dir");
    assert!(
        spool.starts_with(&format!("{}/", one(&mounts, "spool"))),
        "{spool}"
    );
    let ms = |key: &str| setting(key).parse::<u64>().unwrap();
    let delay = ms("server.shutdown_delay_ms");
    assert!(delay > 0);
    let grace_secs: u64 = lines
        .iter()
        .find_map(|l| l.strip_prefix("terminationGracePeriodSeconds: "))
        .expect("no termination grace")
        .parse()
        .unwrap();
    assert!(
        grace_secs * 1000 > delay + ms("server.shutdown_grace_ms"),
        "the termination grace does not cover the delay and the drain"
    );
}

/// The fenced blocks of `text`: (language, body), a block's indentation
/// taken off its lines.
fn fenced(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut open: Option<(String, usize, String)> = None;
    for line in text.lines() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        match &mut open {
            None => {
                if let Some(lang) = trimmed.strip_prefix("```") {
                    open = Some((lang.trim().to_owned(), indent, String::new()));
                }
            }
            Some((lang, fence, body)) => {
                if trimmed == "```" {
                    out.push((std::mem::take(lang), std::mem::take(body)));
                    open = None;
                } else {
                    body.push_str(line.get(*fence..).unwrap_or(trimmed));
                    body.push('\n');
                }
            }
        }
    }
    assert!(open.is_none(), "a fenced block is not closed");
    out
}

/// The body of the block of `doc` whose first line starts with `first`.
fn example(doc: &str, first: &str) -> String {
    fenced(&read(doc))
        .into_iter()
        .map(|(_, body)| body)
        .find(|body| body.trim_start().starts_with(first))
        .unwrap_or_else(|| panic!("{doc}: no block starting {first}"))
}

#[test]
fn every_doc_block_is_run_checked_or_named() {
    for doc in ["README.md", "docs/DEPLOY.md"] {
        for (lang, body) in fenced(&read(doc)) {
            let first = body.trim_start();
            let listed: Vec<_> = EXAMPLES
                .iter()
                .filter(|(d, start, _)| *d == doc && first.starts_with(start))
                .collect();
            assert_eq!(
                listed.len(),
                1,
                "{doc}: the {lang} block starting {:?} must be listed once in EXAMPLES",
                first.lines().next().unwrap_or_default()
            );
            let (_, _, NotRun(why) | Run(why) | Checked(why)) = listed[0];
            assert!(!why.is_empty());
        }
    }
    for (doc, first, _) in EXAMPLES {
        example(doc, first);
    }
    // The dist build's profile exists.
    let manifest: toml::Table = toml::from_str(&read("Cargo.toml")).unwrap();
    assert!(
        manifest["profile"].get("dist").is_some(),
        "no [profile.dist]"
    );
    // The backend's functions are the ones the tested example holds.
    let functions = example("docs/DEPLOY.md", "const PREFIX = 'tether:';");
    let tested = read("examples/backend-control-plane.js");
    for line in functions.lines().map(str::trim) {
        if !line.is_empty() && !line.starts_with("//") {
            assert!(tested.contains(line), "not in the example: {line}");
        }
    }
    // The scrape configuration is one Prometheus accepts.
    let scrape = example("docs/DEPLOY.md", "scrape_configs:");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("prometheus.yml");
    std::fs::write(&file, scrape).unwrap();
    match Command::new("promtool")
        .args(["check", "config"])
        .arg(&file)
        .output()
    {
        Ok(out) => assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(_) => eprintln!("promtool is not installed (scripts/test installs it): check skipped"),
    }
}

/// `script` run by bash in the repository, with the tests' Redis.
fn bash(script: &str, redis_url: &str) -> (bool, String) {
    bash_in(Path::new(env!("CARGO_MANIFEST_DIR")), script, redis_url)
}

/// `script` run by bash in `dir`, with the tests' Redis.
fn bash_in(dir: &Path, script: &str, redis_url: &str) -> (bool, String) {
    let out = Command::new("timeout")
        .args(["60", "bash", "-euo", "pipefail", "-c", script])
        .current_dir(dir)
        .env("TETHER_INGRESS_REDIS_URL", redis_url)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// A README line that runs in the foreground (`scripts/run`, a Worker), run
/// in the background in its own process group, stopped on drop.
struct Terminal(std::process::Child);

impl Terminal {
    fn open(line: &str, redis_url: &str, env: &[(&str, String)], stdout: Stdio) -> Self {
        let mut command = Command::new("bash");
        command
            .args(["-c", line])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env("TETHER_INGRESS_REDIS_URL", redis_url)
            .stdin(Stdio::null())
            .stdout(stdout)
            .process_group(0);
        for (name, value) in env {
            command.env(name, value);
        }
        Self(command.spawn().unwrap())
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        let group = format!("-{}", self.0.id());
        let _ = Command::new("kill").args(["-TERM", "--", &group]).status();
        let _ = self.0.wait();
    }
}

/// `scripts/run`'s line as pasted, on a port the kernel picks (8080 may be
/// taken), with the tests' build of the binary instead of a release build.
fn quick_start(line: &str, redis_url: &str) -> (Terminal, String) {
    let bin = env!("CARGO_BIN_EXE_tether-ingress");
    let mut terminal = Terminal::open(
        line,
        redis_url,
        &[
            ("TETHER_INGRESS_LISTEN", "127.0.0.1:0".into()),
            ("TETHER_INGRESS_BIN", bin.into()),
        ],
        Stdio::null(),
    );
    // The script starts the binary in the terminal's process group.
    let group = terminal.0.id();
    let mut ingress = None;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while ingress.is_none() && std::time::Instant::now() < deadline {
        assert!(
            matches!(terminal.0.try_wait(), Ok(None)),
            "scripts/run exited before it started the ingress"
        );
        ingress = in_group(group, bin);
        std::thread::sleep(Duration::from_millis(20));
    }
    let pid = ingress.expect("scripts/run started no ingress within 60 s");
    let alive = || std::path::Path::new(&format!("/proc/{pid}")).exists();
    let port = listening_port_of(pid, alive, Duration::from_secs(60))
        .expect("scripts/run's ingress never listened");
    (terminal, format!("127.0.0.1:{port}"))
}

/// The process of process group `group` running the executable `bin`.
fn in_group(group: u32, bin: &str) -> Option<u32> {
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            // `pid (comm) state ppid pgrp …`; comm may hold spaces.
            let (_, after) = stat.rsplit_once(") ")?;
            let pgrp: u32 = after.split_whitespace().nth(2)?.parse().ok()?;
            let exe = std::fs::read_link(entry.path().join("exe")).ok()?;
            (pgrp == group && exe == std::path::Path::new(bin)).then_some(pid)
        })
}

async fn wait_ready(addr: &str) {
    let url = format!("http://{addr}/readyz");
    assert!(
        eventually(Duration::from_secs(60), || async {
            Command::new("curl")
                .args(["-sf", "-o", "/dev/null", &url])
                .status()
                .is_ok_and(|s| s.success())
        })
        .await,
        "scripts/run's ingress never became ready on {addr}"
    );
}

/// The answers a block's comments show (`# {…}`), up to the first `…`.
fn shown_answers(block: &str) -> Vec<&str> {
    block
        .lines()
        .filter_map(|l| l.strip_prefix("# {"))
        .map(|l| &l[..l.find('…').unwrap_or(l.len())])
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quick_start_answers_as_the_readme_shows() {
    let redis = RedisServer::start();
    let first = example("README.md", "scripts/run     # build and run");
    let (_terminal, addr) = quick_start(first.lines().next().unwrap(), &redis.url());
    wait_ready(&addr).await;
    for (curl, jobs) in [
        (
            "curl -s -X POST http://127.0.0.1:8080/api/webhook/workflow",
            "wf_demo_1",
        ),
        (
            "curl -s -X POST http://127.0.0.1:8080/api/webhook/outreach",
            "cfg_demo",
        ),
    ] {
        let block = example("README.md", curl);
        let (ok, out) = bash(&block.replace("127.0.0.1:8080", &addr), &redis.url());
        assert!(ok, "{out}");
        let shown = shown_answers(&block);
        assert!(!shown.is_empty());
        for answer in shown {
            assert!(out.contains(&format!("{{{answer}")), "{answer}: {out}");
        }
        // The redis-cli line lists the jobs.
        assert!(out.contains(jobs), "{out}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_bullmq_walk_prints_both_jobs() {
    use tokio::io::AsyncBufReadExt;
    let redis = RedisServer::start();
    let block = example("README.md", "TETHER_INGRESS_SINK=bullmq scripts/run");
    // Commands, continuation lines joined, comments dropped.
    let commands: Vec<String> = block
        .replace("\\\n", " ")
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect();
    let mut terminals = Vec::new();
    let mut addr = String::new();
    let mut worker = None;
    for command in &commands {
        if command.contains("scripts/run") {
            let (terminal, at) = quick_start(command, &redis.url());
            wait_ready(&at).await;
            terminals.push(terminal);
            addr = at;
        } else if command.contains("npm ci") {
            // scripts/test has installed them; a second `npm ci` would
            // replace node_modules under the tests that are using it.
            assert!(node::dir().join("node_modules/bullmq").exists());
        } else if command.contains("examples/bullmq-worker.js") {
            let mut terminal = Terminal::open(command, &redis.url(), &[], Stdio::piped());
            let stdout = tokio::process::ChildStdout::from_std(terminal.0.stdout.take().unwrap());
            worker = Some(tokio::io::BufReader::new(stdout.unwrap()).lines());
            terminals.push(terminal);
        } else {
            // The lead, then the queue's jobs (two, instead of following).
            let command = command
                .replace("127.0.0.1:8080", &addr)
                .replace(
                    "target/release/tether-ingress",
                    env!("CARGO_BIN_EXE_tether-ingress"),
                )
                .replace("--from-start", "--from-start --limit 2");
            let (ok, out) = bash(&command, &redis.url());
            assert!(ok, "{command}: {out}");
            assert!(!out.contains("error"), "{command}: {out}");
        }
    }
    // The Worker prints each of the two matches as the README shows.
    let mut lines = worker.expect("no Worker line in the block");
    let mut workflows = Vec::new();
    for _ in 0..2 {
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("the Worker printed no job")
            .unwrap()
            .unwrap();
        let job: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(job["queue"], "workflow-runs", "{line}");
        assert_eq!(job["name"], "webhook", "{line}");
        assert_eq!(
            job["data"]["payload"],
            serde_json::json!({"lead":{"name":"Alex","phone":14155551234u64}}),
            "{line}"
        );
        let workflow = job["data"]["workflowId"].as_str().unwrap().to_owned();
        let id = job["id"].as_str().unwrap();
        let lead = lead_digest(&["wh_demo", r#"{"lead":{"name":"Alex","phone":14155551234}}"#]);
        assert!(
            id.ends_with(&format!("~demo_org~demo_user~{workflow}~{lead}")),
            "{line}"
        );
        workflows.push(workflow);
    }
    workflows.sort();
    assert_eq!(workflows, ["wf_demo_1", "wf_demo_2"]);
}

#[test]
fn the_readme_start_commands_are_valid_configurations() {
    let dir = tempfile::tempdir().unwrap();
    let etc = dir.path().join("etc/tether/");
    std::fs::create_dir_all(etc.join("tls")).unwrap();
    support::tls::pki(dir.path(), "docs", &["server"]);
    std::fs::copy(dir.path().join("server.crt"), etc.join("tls/fullchain.pem")).unwrap();
    std::fs::copy(dir.path().join("server.key"), etc.join("tls/privkey.pem")).unwrap();
    std::fs::copy(dir.path().join("docs-ca.crt"), etc.join("redis-ca.pem")).unwrap();
    for first in [
        "TETHER_INGRESS_TRUSTED_PROXIES=",
        "TETHER_INGRESS_TLS_CERT_FILE=/etc/tether/tls/fullchain.pem",
        "TETHER_INGRESS_REDIS_URL='rediss://",
        "TETHER_INGRESS_REDIS_WAIT_REPLICAS=1 tether-ingress",
    ] {
        let block = example("README.md", first);
        // The start command as written, asked to check its configuration
        // instead of serving; the files are this test's.
        let command = block.trim_end();
        let command = command
            .strip_suffix("tether-ingress")
            .unwrap_or_else(|| panic!("{command}: does not end by starting the ingress"));
        let script = format!(
            "{command}{} check-config",
            env!("CARGO_BIN_EXE_tether-ingress")
        )
        .replace("/etc/tether/", etc.to_str().unwrap());
        let (ok, out) = bash(&script, "redis://127.0.0.1:1");
        assert!(ok, "{script}: {out}");
        // Every value the command sets is in force, a URL's password masked.
        let assignments = command.replace("\\\n", " ");
        for assignment in assignments
            .split(" TETHER_INGRESS_")
            .map(|a| a.trim().trim_start_matches("TETHER_INGRESS_"))
            .filter(|a| !a.is_empty())
        {
            let (name, value) = assignment.split_once('=').unwrap();
            let value = value
                .trim()
                .trim_matches('\'')
                .replace("/etc/tether/", etc.to_str().unwrap());
            match value.split_once('@') {
                Some((with_password, host)) => {
                    let password = with_password.rsplit(':').next().unwrap();
                    assert!(out.contains(&format!(":***@{host}")), "{name}: {out}");
                    assert!(
                        !out.contains(&format!(":{password}@")),
                        "{name}: the password is shown: {out}"
                    );
                }
                None => assert!(
                    out.contains(&format!(" = {value}\n")),
                    "{name}={value}: {out}"
                ),
            }
        }
    }
}

//! The admin CLI (the built binary) against a real redis-server, with a
//! running ingress to show that what it writes is what the server reads.
#![allow(clippy::unwrap_used, missing_docs)]

mod support;

use std::{
    io::{BufRead, BufReader},
    process::{Command, Output, Stdio},
    time::Duration,
};

use http::StatusCode;
use support::*;

fn cli(redis: &RedisServer, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tether-ingress"))
        .args(args)
        .env("TETHER_INGRESS_REDIS_URL", redis.url())
        .output()
        .unwrap()
}

/// `child`'s output once it exits; killed, and the test failed with
/// `otherwise`, if it runs for 20 s.
fn output_within_20s(mut child: std::process::Child, otherwise: &str) -> Output {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            panic!("{otherwise}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).trim().to_owned()
}

#[tokio::test]
async fn quick_start_loop_key_trigger_request_job() {
    let redis = RedisServer::start();
    let ingress = Ingress::start(&redis.url()).await;

    let created = cli(
        &redis,
        &[
            "keys",
            "create",
            "--user",
            "u_1",
            "--org",
            "o_1",
            "--rate-limit",
            "20",
        ],
    );
    assert!(created.status.success(), "{created:?}");
    let key = stdout(&created);
    assert!(key.starts_with("user_") && key.len() == 5 + 64, "{key}");
    // Only the digest is stored, with the contract's record.
    let record = redis.cli(&["GET", &format!("tether:apikey:{}", sha256_hex(&key))]);
    let v: serde_json::Value = serde_json::from_str(&record).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"userId":"u_1","orgId":"o_1","active":true,"rateLimitPerSec":20})
    );
    assert_eq!(redis.cli(&["KEYS", &format!("*{key}*")]), "");
    assert_eq!(stdout(&cli(&redis, &["keys", "count"])), "1");

    assert!(
        cli(&redis, &["triggers", "add", "o_1", "wh_1", "wf_a", "wf_b"])
            .status
            .success()
    );
    assert_eq!(
        stdout(&cli(&redis, &["triggers", "list", "o_1"])),
        "wh_1\twf_a wf_b"
    );

    // jobs tail follows the stream as JSON lines.
    let mut tail = Command::new(env!("CARGO_BIN_EXE_tether-ingress"))
        .args(["jobs", "tail", "workflow", "--from-start", "--limit", "2"])
        .env("TETHER_INGRESS_REDIS_URL", redis.url())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let body = r#"{"webhookId":"wh_1","n":12345678901234567890}"#;
    // The key and the trigger reach the replica separately: until the
    // trigger has, the request is accepted with no match and writes nothing.
    assert!(
        eventually(Duration::from_secs(2), || async {
            let (status, _, answer) = ingress.workflow(Some(&key), body).await;
            status == StatusCode::ACCEPTED
                && serde_json::from_slice::<serde_json::Value>(&answer)
                    .is_ok_and(|v| v["data"]["matchedCount"] == 2)
        })
        .await
    );
    let lines: Vec<serde_json::Value> = tokio::task::spawn_blocking(move || {
        let out = tail.stdout.take().unwrap();
        let lines = BufReader::new(out)
            .lines()
            .map(|l| serde_json::from_str(&l.unwrap()).unwrap())
            .collect();
        assert!(tail.wait().unwrap().success());
        lines
    })
    .await
    .unwrap();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["workflowId"], "wf_a");
    assert_eq!(lines[1]["workflowId"], "wf_b");
    assert_eq!(lines[0]["payload"], r#"{"n":12345678901234567890}"#);
    assert!(lines[0]["id"].as_str().unwrap().contains('-'));

    // Disable, then revoke: each seen by the server within a second.
    assert!(cli(&redis, &["keys", "disable", &key]).status.success());
    assert!(
        eventually(Duration::from_secs(1), || async {
            ingress.workflow(Some(&key), body).await.0 == StatusCode::UNAUTHORIZED
        })
        .await
    );
    assert!(cli(&redis, &["keys", "revoke", &key]).status.success());
    assert_eq!(stdout(&cli(&redis, &["keys", "count"])), "0");
    let again = cli(&redis, &["keys", "revoke", &key]);
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("no such key"));

    assert!(
        cli(&redis, &["triggers", "remove", "o_1", "wh_1", "wf_a"])
            .status
            .success()
    );
    assert_eq!(
        stdout(&cli(&redis, &["triggers", "list", "o_1"])),
        "wh_1\twf_b"
    );
    assert!(
        cli(&redis, &["triggers", "remove", "o_1", "wh_1"])
            .status
            .success()
    );
    assert_eq!(stdout(&cli(&redis, &["triggers", "list", "o_1"])), "");
}

#[tokio::test]
async fn outreach_configuration_and_properties_from_the_cli() {
    let redis = RedisServer::start();
    let ingress = Ingress::start(&redis.url()).await;
    let key = stdout(&cli(
        &redis,
        &["keys", "create", "--user", "u_2", "--org", "o_2"],
    ));
    assert!(
        cli(
            &redis,
            &[
                "outreach",
                "put",
                "cfg_1",
                "--user",
                "u_2",
                "--org",
                "o_2",
                "--process",
                "p_1"
            ]
        )
        .status
        .success()
    );
    assert!(
        cli(
            &redis,
            &[
                "properties",
                "set",
                "o_2",
                "company=application",
                "note=conversation"
            ]
        )
        .status
        .success()
    );
    let post = || async {
        let req = http::Request::post(ingress.uri("/api/webhook/outreach"))
            .header("authorization", format!("Bearer {key}"))
            .body(http_body_util::Full::new(bytes::Bytes::from_static(
                br#"{"configurationId":"cfg_1","name":"Jane","company":"Acme","note":"hi"}"#,
            )))
            .unwrap();
        ingress.request(req).await.0
    };
    assert!(
        eventually(Duration::from_secs(1), || async {
            post().await == StatusCode::OK
        })
        .await
    );
    let r = redis.client().await;
    let got = entries(&r, "tether:jobs:outreach").await;
    let e = &got.last().unwrap().1;
    assert_eq!(field(e, "contacts"), r#"{"name":"Jane"}"#);
    assert_eq!(field(e, "applications"), r#"{"company":"Acme"}"#);
    assert_eq!(field(e, "conversations"), r#"{"note":"hi"}"#);
    assert!(
        cli(
            &redis,
            &[
                "outreach",
                "put",
                "cfg_1",
                "--user",
                "u_2",
                "--org",
                "o_2",
                "--process",
                "p_1",
                "--inactive"
            ]
        )
        .status
        .success()
    );
    assert!(
        eventually(Duration::from_secs(1), || async {
            post().await == StatusCode::BAD_REQUEST
        })
        .await
    );
}

#[test]
fn bad_arguments_and_unreachable_redis_have_distinct_exit_codes() {
    let redis = RedisServer::start();
    let bad = cli(&redis, &["properties", "set", "o_1", "x=nonsense"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("contact, application, conversation"));
    let nameless = cli(&redis, &["properties", "set", "o_1", "=contact"]);
    assert_eq!(nameless.status.code(), Some(1));
    let err = String::from_utf8_lossy(&nameless.stderr);
    assert!(err.contains("the field name must not be empty"), "{err}");
    assert_eq!(redis.cli(&["EXISTS", "tether:org:o_1:properties"]), "0");
    // `--limit 0` once followed the stream for ever, printing every entry.
    let tail = Command::new(env!("CARGO_BIN_EXE_tether-ingress"))
        .args(["jobs", "tail", "workflow", "--limit", "0"])
        .env("TETHER_INGRESS_REDIS_URL", redis.url())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let tail = output_within_20s(tail, "jobs tail --limit 0 did not end");
    assert_eq!(tail.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&tail.stderr).contains("'--limit <N>'"));
    assert_eq!(
        cli(&redis, &["keys", "create", "--user", "u"])
            .status
            .code(),
        Some(2)
    );
    assert_eq!(
        cli(&redis, &["triggers", "add", "o_1", "wh_1"])
            .status
            .code(),
        Some(2)
    );
    // Refused as the import refuses them, and nothing is written.
    for (args, says) in [
        (
            ["--user", "", "--org", "o_1", "--rate-limit", "5"],
            "user id must not be empty",
        ),
        (
            ["--user", "u", "--org", "o_1", "--rate-limit", "0"],
            "rate limit must be at least 1",
        ),
    ] {
        let out = cli(&redis, &[&["keys", "create"][..], &args[..]].concat());
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{err}");
        assert!(out.stdout.is_empty());
    }
    assert_eq!(stdout(&cli(&redis, &["keys", "count"])), "0");
    for (id, user) in [("", "u_1"), ("cfg_1", "")] {
        let out = cli(
            &redis,
            &["outreach", "put", id, "--user", user, "--org", "o_1"],
        );
        assert_eq!(out.status.code(), Some(1), "{id:?} {user:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("must not be empty"));
    }
    assert_eq!(redis.cli(&["KEYS", "tether:outreach:*"]), "");
    assert_eq!(
        cli(&redis, &["jobs", "tail", "nope", "--limit", "1"])
            .status
            .code(),
        Some(1)
    );
    let down = closed_port();
    let down_port = down.port;
    let down = Command::new(env!("CARGO_BIN_EXE_tether-ingress"))
        .args(["keys", "count"])
        .env(
            "TETHER_INGRESS_REDIS_URL",
            format!("redis://u:hunter2@127.0.0.1:{down_port}"),
        )
        .output()
        .unwrap();
    assert_eq!(down.status.code(), Some(3));
    let err = String::from_utf8_lossy(&down.stderr);
    // In words, not fred's debug form (`IO Error: Os { code: 111, … }`).
    let said =
        format!("cannot reach Redis at redis://u:***@127.0.0.1:{down_port}: Connection refused");
    assert!(err.trim_end().ends_with(&said), "{err}");
    assert!(!err.contains("hunter2"), "{err}");
}

#[test]
fn check_config_prints_effective_values_with_secrets_masked() {
    let out = Command::new(env!("CARGO_BIN_EXE_tether-ingress"))
        .arg("check-config")
        .env("TETHER_INGRESS_JWT_SECRET", "s3cr3t-value")
        .env("TETHER_INGRESS_LISTEN", "0.0.0.0:9000")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("server.listen = 0.0.0.0:9000"), "{text}");
    assert!(text.contains("auth.jwt_secret = **REDACTED**"), "{text}");
    assert!(!text.contains("s3cr3t-value"));
}

#[test]
fn a_misspelt_variable_stops_the_start_instead_of_being_ignored() {
    // Ignored, the typo would leave the jobs on the default Redis.
    let out = Command::new(env!("CARGO_BIN_EXE_tether-ingress"))
        .arg("check-config")
        .env(
            "TETHER_INGRESS_REDIS_URI",
            "redis://u:hunter2@10.0.0.9:6379",
        )
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("TETHER_INGRESS_REDIS_URI: not a variable tether-ingress reads; did you mean TETHER_INGRESS_REDIS_URL?"),
        "{err}"
    );
    assert!(!err.contains("hunter2"), "{err}");
    assert!(out.stdout.is_empty());
}

#[test]
fn a_tls_url_never_talks_plaintext_and_bad_tls_settings_stop_the_start() {
    // A plaintext Redis is listening: before TLS support, rediss:// reached it.
    let redis = RedisServer::start();
    let url = format!("rediss://u:hunter2@127.0.0.1:{}", redis.port);
    let out = Command::new(env!("CARGO_BIN_EXE_tether-ingress"))
        .args(["keys", "count"])
        .env("TETHER_INGRESS_REDIS_URL", &url)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "the TLS handshake must fail");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot reach Redis"), "{err}");
    assert!(!err.contains("hunter2"), "{err}");
    // Files that do not load, or files with a plaintext URL: exit 2 at start.
    let missing = std::env::temp_dir().join("tether-no-such-ca.pem");
    for (url, var) in [
        (url.as_str(), "TETHER_INGRESS_REDIS_TLS_CA_FILE"),
        (redis.url().as_str(), "TETHER_INGRESS_REDIS_TLS_CA_FILE"),
        (url.as_str(), "TETHER_INGRESS_REDIS_TLS_CERT_FILE"),
    ] {
        for args in [&["serve"][..], &["keys", "count"][..]] {
            let out = Command::new(env!("CARGO_BIN_EXE_tether-ingress"))
                .args(args)
                .env("TETHER_INGRESS_REDIS_URL", url)
                .env(var, &missing)
                .env("TETHER_INGRESS_LISTEN", "127.0.0.1:0")
                .output()
                .unwrap();
            assert_eq!(out.status.code(), Some(2), "{url} {var} {args:?}");
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.contains("redis.tls"), "{err}");
            assert!(!err.contains("hunter2"), "{err}");
        }
    }
}

#[test]
fn the_admin_cli_reaches_redis_over_a_unix_socket() {
    let redis = RedisServer::start();
    let out = Command::new(env!("CARGO_BIN_EXE_tether-ingress"))
        .args(["keys", "create", "--user", "u_1", "--org", "o_1"])
        .env("TETHER_INGRESS_REDIS_URL", redis.unix_url())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(redis.cli(&["DBSIZE"]), "1");
}

/// Runs the CLI with its standard output a pipe whose reader has already
/// gone, as `tether-ingress … | head -1` leaves it once `head` is done.
fn cli_into_closed_pipe(redis: &RedisServer, args: &[&str]) -> Output {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let child = Command::new(env!("CARGO_BIN_EXE_tether-ingress"))
        .args(args)
        .env("TETHER_INGRESS_REDIS_URL", redis.url())
        .stdout(writer)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // `jobs tail` used to write into the closed pipe for ever.
    output_within_20s(
        child,
        &format!("{args:?} kept running with nobody reading its output"),
    )
}

#[test]
fn a_reader_that_goes_away_ends_the_output_without_a_panic() {
    let redis = RedisServer::start();
    redis.cli(&["XADD", "tether:jobs:workflow", "*", "n", "1"]);
    for args in [
        &["check-config"][..],
        &["keys", "count"],
        &["jobs", "tail", "workflow", "--from-start"],
    ] {
        let out = cli_into_closed_pipe(&redis, args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert!(out.status.success(), "{args:?}: {:?} {err}", out.status);
    }
    // A new key nobody could see is taken back, and the failure said.
    let out = cli_into_closed_pipe(&redis, &["keys", "create", "--user", "u", "--org", "o"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("the new key was revoked"), "{err}");
    assert!(
        !err.contains("user_"),
        "the key must not be shown on stderr: {err}"
    );
    assert_eq!(redis.cli(&["KEYS", "tether:apikey:*"]), "");
}

#[test]
fn jobs_tail_follows_the_stream_across_redis_restarts() {
    let mut redis = RedisServer::start();
    let stream = "tether:jobs:workflow";
    redis.cli(&["XADD", stream, "*", "n", "1"]);
    let mut tail = Command::new(env!("CARGO_BIN_EXE_tether-ingress"))
        .args(["jobs", "tail", "workflow", "--limit", "3"])
        .env("TETHER_INGRESS_REDIS_URL", redis.url())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (lines, line) = std::sync::mpsc::channel();
    let out = tail.stdout.take().unwrap();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines() {
            let v: serde_json::Value = serde_json::from_str(&l.unwrap()).unwrap();
            let _ = lines.send(v["n"].as_str().unwrap_or_default().to_owned());
        }
    });
    let next = || line.recv_timeout(Duration::from_secs(30)).unwrap();
    // The tail's connection is named, and blocks in XREAD.
    let reading = |redis: &RedisServer| {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !redis
            .cli(&["CLIENT", "LIST"])
            .lines()
            .any(|l| l.contains("name=tether-ingress:admin ") && l.contains("cmd=xread"))
        {
            assert!(std::time::Instant::now() < deadline, "tail never read");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    reading(&redis);
    redis.cli(&["XADD", stream, "*", "n", "2"]);
    // From the end: the entry already there is not printed.
    assert_eq!(next(), "2");

    // Back with its data: the entry added at once, before the tail has
    // reconnected, is printed, and nothing twice.
    redis.save();
    redis.kill();
    redis.restart();
    redis.cli(&["XADD", stream, "*", "n", "3"]);
    assert_eq!(next(), "3");

    // Back without it: an entry whose id is below the last one printed is
    // still printed, the loss said.
    reading(&redis);
    redis.kill();
    redis.edit_offline(&[&["DEL", stream]]);
    redis.restart();
    redis.cli(&["XADD", stream, "1-1", "n", "4"]);
    assert_eq!(next(), "4");

    assert!(tail.wait().unwrap().success());
    let mut err = String::new();
    std::io::Read::read_to_string(&mut tail.stderr.take().unwrap(), &mut err).unwrap();
    assert_eq!(err.matches("lost Redis").count(), 2, "{err}");
    assert!(
        err.contains("came back without the entries already printed"),
        "{err}"
    );
}

/// `check-redis` says before serving what a serving ingress would meet
/// only while serving: a user that may not write the jobs or keep the
/// replica live fails, each named with Redis's answer and what it would
/// cost; an eviction policy that may drop jobs and a stream no group reads
/// are warnings. It exits 1 only when a check failed, and never shows the
/// password.
#[tokio::test]
async fn check_redis_names_what_the_user_may_not_do_and_what_redis_may_drop() {
    let redis = RedisServer::start();
    let r = redis.client().await;
    put_key(&r, "user_chk", r#"{"userId":"u_1","orgId":"o_1"}"#).await;
    add_trigger(&r, "o_1", "wh_1", &["wf_a"]).await;
    redis.cli(&[
        "XGROUP",
        "CREATE",
        "tether:jobs:workflow",
        "workers",
        "$",
        "MKSTREAM",
    ]);
    for user in [
        // Reads and scripts, but no XADD and no CLIENT TRACKING.
        "limited on >pw-limited ~tether:* +@read +@scripting +@connection +info +role -client|tracking",
        "full on >pw-full ~tether:* ~bull:* +@all",
        // The control plane and the job streams, nothing else.
        "keys_only on >pw-keys-only ~tether:apikey:* ~tether:triggers:* ~tether:org:* ~tether:outreach:* ~tether:jobs:* +@all",
    ] {
        let args: Vec<&str> = ["ACL", "SETUSER"]
            .into_iter()
            .chain(user.split(' '))
            .collect();
        assert_eq!(redis.cli(&args), "OK");
    }
    let check_with = |user: &str, password: &str, env: &[(&str, &str)]| {
        let out = Command::new(env!("CARGO_BIN_EXE_tether-ingress"))
            .arg("check-redis")
            .env(
                "TETHER_INGRESS_REDIS_URL",
                format!("redis://{user}:{password}@127.0.0.1:{}", redis.port),
            )
            .envs(env.iter().copied())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            !text.contains(password) && !err.contains(password),
            "{text}{err}"
        );
        (out.status.code(), text, err)
    };
    let check = |user: &str, password: &str| check_with(user, password, &[]);

    let (code, text, err) = check("limited", "pw-limited");
    assert_eq!(code, Some(1), "{text}{err}");
    assert!(err.contains("3 checks failed"), "{err}");
    for failed in [
        "FAIL  the user may not write jobs to stream tether:jobs:workflow (NOPERM",
        "FAIL  the user may not write jobs to stream tether:jobs:outreach (NOPERM",
        "FAIL  the user may not send CLIENT TRACKING to redis://limited:***@127.0.0.1:",
    ] {
        assert!(text.contains(failed), "{failed:?} missing:\n{text}");
    }
    assert!(
        text.contains("ok    the user may read the control plane: API keys: 1, triggers: 1"),
        "{text}"
    );

    assert_eq!(
        redis.cli(&["CONFIG", "SET", "maxmemory-policy", "allkeys-lru"]),
        "OK"
    );
    let (code, text, err) = check("full", "pw-full");
    assert_eq!(code, Some(0), "{text}{err}");
    for said in [
        "ok    the user may write jobs to stream tether:jobs:workflow",
        "ok    stream tether:jobs:workflow is read by workers (lag 0)",
        "warn  maxmemory-policy is allkeys-lru: Redis may evict job streams",
        "warn  stream tether:jobs:outreach does not exist yet",
    ] {
        assert!(text.contains(said), "{said:?} missing:\n{text}");
    }
    assert!(!text.contains("FAIL"), "{text}");
    // Where "nothing acknowledged is lost" ends: Redis's own durability.
    assert!(
        text.contains("keeps no append-only file: jobs it acknowledged since its last snapshot are lost if it restarts"),
        "{text}"
    );
    assert_eq!(redis.cli(&["CONFIG", "SET", "appendonly", "yes"]), "OK");
    let (_, text, _) = check("full", "pw-full");
    assert!(text.contains("keeps an append-only file"), "{text}");
    assert_eq!(redis.cli(&["CONFIG", "SET", "appendonly", "no"]), "OK");
    // Replicas asked for that the primary does not have: no job would
    // count as stored.
    let (code, text, err) = check_with(
        "full",
        "pw-full",
        &[("TETHER_INGRESS_REDIS_WAIT_REPLICAS", "1")],
    );
    assert_eq!(code, Some(1), "{text}{err}");
    assert!(
        text.contains(
            "replica(s) connected and redis.wait_replicas is 1: no job would count as stored"
        ),
        "{text}"
    );
    // The records kept besides jobs: a refusal only warns, since only the
    // requests using them are affected.
    let global = [("TETHER_INGRESS_RATE_LIMIT_SCOPE", "global")];
    let (code, text, err) = check_with("keys_only", "pw-keys-only", &global);
    assert_eq!(code, Some(0), "{text}{err}");
    for said in [
        "warn  the user may not GET, SET, EVALSHA on tether:idempotency:tether-check (NOPERM",
        "requests with an Idempotency-Key would get 503",
        "warn  the user may not GET, SET, EVALSHA on tether:ratelimit:tether-check (NOPERM",
        "each instance would limit keys by its own count",
    ] {
        assert!(text.contains(said), "{said:?} missing:\n{text}");
    }
    let (_, text, _) = check_with("full", "pw-full", &global);
    assert!(
        text.contains("ok    the user may keep the global rate limits under tether:ratelimit:"),
        "{text}"
    );
    // BullMQ mode: a paused queue takes jobs no Worker runs.
    redis.cli(&[
        "HSET",
        "bull:workflow-runs:meta",
        "paused",
        "1",
        "version",
        "bullmq:5.34.0",
    ]);
    let (code, text, err) = check_with("full", "pw-full", &[("TETHER_INGRESS_SINK", "bullmq")]);
    assert_eq!(code, Some(0), "{text}{err}");
    for said in [
        "ok    the user may write jobs to queue bull:workflow-runs",
        "warn  queue bull:workflow-runs is paused: jobs are added and acknowledged, but no Worker runs them",
        "ok    queue bull:workflow-runs: its Queue was made by bullmq:5.34.0",
        "ok    queue bull:outreach-runs: no Queue has written its version",
    ] {
        assert!(text.contains(said), "{said:?} missing:\n{text}");
    }
    // A maxmemory nearly reached: writes would soon be refused.
    let used: u64 = redis
        .cli(&["INFO", "memory"])
        .lines()
        .find_map(|l| l.trim().strip_prefix("used_memory:")?.parse().ok())
        .unwrap();
    let max = (used * 100 / 95).to_string();
    assert_eq!(redis.cli(&["CONFIG", "SET", "maxmemory", &max]), "OK");
    let (_, text, _) = check("full", "pw-full");
    assert!(
        text.contains("% of maxmemory is used (")
            && text.contains("once it is full Redis refuses writes (OOM) or evicts"),
        "{text}"
    );
    assert_eq!(redis.cli(&["CONFIG", "SET", "maxmemory", "0"]), "OK");
}

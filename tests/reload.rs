//! Reloading the configuration while serving: limits, streams and the JWT
//! secret change without dropping a request; an invalid file is refused.
#![allow(clippy::unwrap_used, missing_docs, clippy::disallowed_methods)]

mod support;

use std::{process::Command, sync::Arc, time::Duration};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use support::*;
use tether_ingress::{
    config::{Config, Secret},
    sign_jwt as sign,
};

const KEY: &str = "user_reload_key";

#[tokio::test]
async fn limits_streams_and_jwt_secret_change_without_dropping_requests() {
    let (redis, r) = redis_with_key_and_trigger(KEY, &["wf_a"]).await;
    let mut raw = Config::default();
    raw.redis.url = redis.url();
    raw.auth.jwt_secret = Some(Secret::new("old-secret"));
    let (ingress, reload) = Ingress::start_reloadable(raw.clone().validate().unwrap()).await;
    let ingress = Arc::new(ingress);
    let big = format!(r#"{{"webhookId":"wh_1","pad":"{}"}}"#, "x".repeat(200));
    let exp = tether_ingress::now_ms() / 1000 + 600;
    let claims = format!(r#"{{"userId":"u_1","orgId":"o_1","exp":{exp}}}"#);
    let old_jwt = sign(b"old-secret", r#"{"alg":"HS256"}"#, &claims);
    let new_jwt = sign(b"new-secret", r#"{"alg":"HS256"}"#, &claims);
    assert_eq!(
        ingress.workflow(Some(KEY), &big).await.0,
        StatusCode::ACCEPTED
    );
    assert_eq!(
        ingress
            .workflow(Some(&old_jwt), r#"{"webhookId":"wh_1"}"#)
            .await
            .0,
        StatusCode::ACCEPTED
    );

    // Load across the reload: every request must be answered 202.
    let load: Vec<_> = (0..400)
        .map(|i| {
            let ingress = ingress.clone();
            tokio::spawn(async move {
                ingress
                    .workflow(Some(KEY), &format!(r#"{{"webhookId":"wh_1","i":{i}}}"#))
                    .await
                    .0
            })
        })
        .collect();
    let mut new = raw.clone();
    new.server.max_body_bytes = 100;
    new.streams.workflow = "tether:jobs:workflow:v2".into();
    new.auth.jwt_secret = Some(Secret::new("new-secret"));
    reload.unbounded_send(new.validate().unwrap()).unwrap();
    for t in load {
        assert_eq!(t.await.unwrap(), StatusCode::ACCEPTED);
    }

    assert!(
        eventually(Duration::from_secs(5), || async {
            ingress.workflow(Some(KEY), &big).await.0 == StatusCode::PAYLOAD_TOO_LARGE
        })
        .await,
        "new body limit"
    );
    assert_eq!(
        ingress
            .workflow(Some(&new_jwt), r#"{"webhookId":"wh_1"}"#)
            .await
            .0,
        StatusCode::ACCEPTED
    );
    assert_eq!(
        ingress
            .workflow(Some(&old_jwt), r#"{"webhookId":"wh_1"}"#)
            .await
            .0,
        StatusCode::UNAUTHORIZED
    );
    let before = xlen(&r, "tether:jobs:workflow").await;
    assert_eq!(ingress.wh_1_status(KEY).await, StatusCode::ACCEPTED);
    assert_eq!(
        xlen(&r, "tether:jobs:workflow").await,
        before,
        "old stream untouched"
    );
    assert!(xlen(&r, "tether:jobs:workflow:v2").await >= 2);
    // 2 before the load + 400 during it, each written to one of the two streams.
    assert_eq!(
        xlen(&r, "tether:jobs:workflow").await + xlen(&r, "tether:jobs:workflow:v2").await,
        2 + 400 + 2
    );
}

/// The binary reading its configuration from `file`, serving on a port the
/// kernel picks (returned) against `redis`, logging at info level to a pipe.
fn serving_from_file(file: &std::path::Path, redis: &RedisServer) -> (std::process::Child, u16) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tether-ingress"))
        .args(["--config", file.to_str().unwrap()])
        .env("TETHER_INGRESS_LISTEN", "127.0.0.1:0")
        .env("TETHER_INGRESS_REDIS_URL", redis.url())
        .env("TETHER_INGRESS_LOG", "info,fred=error")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let port = listening_port(&mut child, Duration::from_secs(20)).expect("never listened");
    (child, port)
}

#[tokio::test]
async fn sighup_applies_a_valid_file_and_refuses_an_invalid_one() {
    let redis = RedisServer::start();
    let r = redis.client().await;
    put_key(&r, KEY, r#"{"userId":"u_1","orgId":"o_1"}"#).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.toml");
    std::fs::write(&file, "[server]\nmax_body_bytes = 1000\n").unwrap();
    let (mut child, port) = serving_from_file(&file, &redis);
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let post = |size: usize| {
        let client = client.clone();
        async move {
            let body = format!(r#"{{"webhookId":"wh_1","pad":"{}"}}"#, "x".repeat(size));
            let req = Request::post(format!("http://127.0.0.1:{port}/api/webhook/workflow"))
                .header("authorization", format!("Bearer {KEY}"))
                .body(Full::new(Bytes::from(body)))
                .unwrap();
            client
                .request(req)
                .await
                .map(|r| r.status())
                .unwrap_or(StatusCode::BAD_GATEWAY)
        }
    };
    assert!(
        eventually(Duration::from_secs(30), || async {
            post(500).await == StatusCode::ACCEPTED
        })
        .await
    );
    let hup = |pid: u32| signal(pid, "HUP");

    std::fs::write(&file, "[server]\nmax_body_bytes = 100\n").unwrap();
    hup(child.id());
    assert!(
        eventually(Duration::from_secs(5), || async {
            post(500).await == StatusCode::PAYLOAD_TOO_LARGE
        })
        .await,
        "valid reload applied"
    );

    std::fs::write(&file, "[server]\nmax_body_bytes = 0\nnot_a_setting = 1\n").unwrap();
    hup(child.id());
    // The refusal is logged; meanwhile the running configuration stays.
    let stdout = child.stdout.take().unwrap();
    let refused = tokio::task::spawn_blocking(move || {
        use std::io::BufRead;
        std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .any(|l| l.contains("configuration reload refused"))
    });
    assert_eq!(post(50).await, StatusCode::ACCEPTED);
    assert_eq!(post(500).await, StatusCode::PAYLOAD_TOO_LARGE);
    // The line is awaited before SIGTERM: a shutdown that overtook the
    // reload would end the process before it could log the refusal.
    let logged = tokio::time::timeout(Duration::from_secs(10), refused).await;
    signal(child.id(), "TERM");
    assert!(
        matches!(logged, Ok(Ok(true))),
        "no log line for the refused reload"
    );
    assert_eq!(child.wait().unwrap().code(), Some(0));
}

/// The HTTP settings of new connections follow a reload: a head deadline
/// cut from a minute to 300 ms closes a new connection whose head never
/// ends. (Connections share one HTTP builder per settings in force; a
/// stale one would keep the minute.)
#[tokio::test]
async fn a_reloaded_head_deadline_reaches_new_connections() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (redis, _r) = redis_with_key_and_trigger(KEY, &["wf_a"]).await;
    let mut raw = Config::default();
    raw.redis.url = redis.url();
    raw.server.header_read_timeout_ms = Duration::from_secs(60);
    let (ingress, reload) = Ingress::start_reloadable(raw.clone().validate().unwrap()).await;
    // A head that never ends: closed by the deadline, or still open after 3 s.
    let closed_in_time = || async {
        let mut s = tokio::net::TcpStream::connect(ingress.addr).await.unwrap();
        s.write_all(b"POST /api/webhook/workflow HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 512];
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
        loop {
            match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
                Err(_) => return false,
                Ok(Ok(0) | Err(_)) => return true,
                Ok(Ok(_)) => {}
            }
        }
    };
    assert!(!closed_in_time().await, "closed before the reload");
    let mut new = raw.clone();
    new.server.header_read_timeout_ms = Duration::from_millis(300);
    reload.unbounded_send(new.validate().unwrap()).unwrap();
    assert!(
        eventually(Duration::from_secs(15), closed_in_time).await,
        "new connections kept the old head deadline"
    );
}

/// A reload that sets a JWT secret ending in a newline (a TOML `"…\n"`
/// escape, or a value pasted with its line end) is warned about, as at
/// start, without the secret.
#[tokio::test]
async fn a_reloaded_jwt_secret_ending_in_a_newline_is_said() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.toml");
    std::fs::write(&file, "[auth]\njwt_secret = \"sekrit-of-ours\"\n").unwrap();
    let (mut child, _port) = serving_from_file(&file, &redis);
    let lines = {
        use std::io::BufRead;
        let (tx, rx) = std::sync::mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                let _ = tx.send(line);
            }
        });
        rx
    };
    let until = |what: &str| -> Vec<String> {
        let mut seen = Vec::new();
        while let Ok(line) = lines.recv_timeout(Duration::from_secs(20)) {
            let done = line.contains(what);
            seen.push(line);
            if done {
                return seen;
            }
        }
        panic!("no {what:?} in {seen:?}");
    };
    let started = until("listening");
    assert!(
        started.iter().all(|l| !l.contains("JWT secret")),
        "{started:?}"
    );
    std::fs::write(&file, "[auth]\njwt_secret = \"sekrit-of-ours\\n\"\n").unwrap();
    signal(child.id(), "HUP");
    let reloaded = until("JWT secret begins or ends with whitespace");
    assert!(
        reloaded.iter().any(|l| l.contains("auth.jwt_secret")),
        "{reloaded:?}"
    );
    assert!(
        reloaded.iter().all(|l| !l.contains("sekrit")),
        "{reloaded:?}"
    );
    signal(child.id(), "TERM");
    assert_eq!(child.wait().unwrap().code(), Some(0));
}

/// A reload that renames a job stream stops the old one's count of
/// consumer groups (NaN, which no comparison matches): its last count, 0
/// for a stream no group read, would otherwise go on firing the "no
/// consumer group" alert for a stream the ingress no longer writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_renamed_by_a_reload_is_no_longer_counted() {
    let redis = RedisServer::start();
    redis.cli(&["XADD", "old:jobs", "*", "f", "1"]);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.toml");
    std::fs::write(&file, "[streams]\nworkflow = \"old:jobs\"\n").unwrap();
    let (mut child, port) = serving_from_file(&file, &redis);
    let http = http_client();
    let shows = |line: &'static str| {
        let http = http.clone();
        async move {
            let req = Request::get(format!("http://127.0.0.1:{port}/metrics"))
                .body(Full::new(Bytes::new()))
                .unwrap();
            let Ok(res) = http.request(req).await else {
                return false;
            };
            let body = http_body_util::BodyExt::collect(res.into_body())
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            String::from_utf8_lossy(&body).lines().any(|l| l == line)
        }
    };
    let counted = eventually(Duration::from_secs(30), || {
        shows("tether_stream_groups{stream=\"old:jobs\"} 0")
    })
    .await;
    std::fs::write(&file, "[streams]\nworkflow = \"new:jobs\"\n").unwrap();
    signal(child.id(), "HUP");
    let uncounted = counted
        && eventually(Duration::from_secs(30), || {
            shows("tether_stream_groups{stream=\"old:jobs\"} NaN")
        })
        .await;
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(counted, "the stream's groups were never counted");
    assert!(uncounted, "the renamed stream is still counted");
}

//! Server-level behaviour: HTTP/2 cleartext, the connection cap, and the
//! built binary (configuration, readiness, SIGTERM → exit 0).
#![allow(clippy::unwrap_used, missing_docs, clippy::disallowed_methods)]

mod support;

use std::{process::Command, time::Duration};

use bytes::Bytes;
use http::{Request, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use support::*;

const KEY: &str = "user_server_key";

#[tokio::test]
async fn http2_prior_knowledge_on_the_same_port() {
    let (redis, r) = redis_with_key_and_trigger(KEY, &["wf_a"]).await;
    let ingress = Ingress::start(&redis.url()).await;
    let h2 = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<Full<Bytes>>();
    let mut tasks = Vec::new();
    for i in 0..20 {
        let h2 = h2.clone();
        let uri = ingress.uri("/api/webhook/workflow");
        tasks.push(tokio::spawn(async move {
            let req = Request::post(uri)
                .header("authorization", format!("Bearer {KEY}"))
                .body(Full::new(Bytes::from(format!(
                    r#"{{"webhookId":"wh_1","i":{i}}}"#
                ))))
                .unwrap();
            let res = h2.request(req).await.unwrap();
            (res.version(), res.status())
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), (Version::HTTP_2, StatusCode::ACCEPTED));
    }
    assert_eq!(xlen(&r, "tether:jobs:workflow").await, 20);
}

#[tokio::test]
async fn connections_over_the_cap_wait_for_a_free_slot() {
    let redis = RedisServer::start();
    let mut raw = tether_ingress::config::Config::default();
    raw.redis.url = redis.url();
    raw.server.max_connections = 2;
    // Long enough that the waiting connection is never refused here.
    raw.server.connection_queue_timeout_ms = std::time::Duration::from_millis(60_000);
    let ingress = Ingress::start_with(raw.validate().unwrap()).await;
    // The harness client holds one keep-alive connection; take the second slot.
    let held = tokio::net::TcpStream::connect(ingress.addr).await.unwrap();
    let mut held = Some(held);
    let (mut sender, conn) = {
        let stream = tokio::net::TcpStream::connect(ingress.addr).await.unwrap();
        hyper::client::conn::http1::handshake::<_, Full<Bytes>>(hyper_util::rt::TokioIo::new(
            stream,
        ))
        .await
        .unwrap()
    };
    tokio::spawn(conn);
    let third = tokio::spawn(async move {
        let req = Request::get("/healthz")
            .header("host", "x")
            .body(Full::new(Bytes::new()))
            .unwrap();
        sender.send_request(req).await.map(|r| r.status())
    });
    // The third connection is not served while two are open...
    let waited = tokio::time::timeout(Duration::from_millis(300), async {
        while !third.is_finished() {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(waited.is_err(), "served beyond the connection cap");
    // ...and is served as soon as one closes.
    drop(held.take());
    let status = tokio::time::timeout(Duration::from_secs(10), third)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(status, StatusCode::OK);
}

fn binary() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tether-ingress"))
}

/// `tether-ingress serve` with `toml` as its configuration file, on a free
/// port, against `redis`, logging warnings: the command (for a test's own
/// variables) and the file's directory, kept while the binary runs.
fn serve_with_file(toml: &str, redis: &RedisServer) -> (Command, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.toml");
    std::fs::write(&file, toml).unwrap();
    let mut command = binary();
    command
        .arg("serve")
        .arg("--config")
        .arg(&file)
        .env("TETHER_INGRESS_LISTEN", "127.0.0.1:0")
        .env("TETHER_INGRESS_REDIS_URL", redis.url())
        .env("TETHER_INGRESS_LOG", "warn");
    (command, dir)
}

#[test]
fn invalid_configuration_exits_2_with_every_problem() {
    let dir = std::env::temp_dir().join(format!("tether-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("bad.toml");
    std::fs::write(&file, "[server]\nmax_connections = 0\nmax_body_bytes = 0\n").unwrap();
    let out = binary()
        .args(["--config", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("server.max_connections") && err.contains("server.max_body_bytes"),
        "{err}"
    );
    let out = binary()
        .env("TETHER_INGRESS_LISTEN", "not-an-address")
        .env("TETHER_INGRESS_JWT_SECRET", "very-secret-value")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("server.listen"), "{err}");
    assert!(!err.contains("very-secret-value"));
    let out = binary()
        .args(["--config", "/nonexistent/x.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn the_binary_serves_from_env_and_exits_0_on_sigterm() {
    let (redis, r) = redis_with_key_and_trigger(KEY, &["wf_a"]).await;
    // The file sets the stream; env sets listen and Redis.
    let (mut command, _dir) = serve_with_file("[streams]\nworkflow = \"custom:jobs\"\n", &redis);
    let mut child = command.spawn().unwrap();
    let port = listening_port(&mut child, Duration::from_secs(20)).expect("never listened");
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let get = |path: &str| {
        let client = client.clone();
        let uri = format!("http://127.0.0.1:{port}{path}");
        async move {
            match client
                .request(Request::get(uri).body(Full::new(Bytes::new())).unwrap())
                .await
            {
                Ok(r) => r.status(),
                Err(_) => StatusCode::BAD_GATEWAY,
            }
        }
    };
    assert!(
        eventually(Duration::from_secs(30), || async {
            get("/readyz").await == StatusCode::OK
        })
        .await
    );
    let req = Request::post(format!("http://127.0.0.1:{port}/api/webhook/workflow"))
        .header("authorization", format!("Bearer {KEY}"))
        .body(Full::new(Bytes::from_static(br#"{"webhookId":"wh_1"}"#)))
        .unwrap();
    let res = client.request(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    let _ = res.into_body().collect().await;
    assert_eq!(xlen(&r, "custom:jobs").await, 1);

    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(0));
}

/// One HTTP/1.1 request on `conn`: the answer's head (lower-cased) and
/// body, read by its `content-length`.
async fn exchange(conn: &mut tokio::net::TcpStream, request: &str) -> (String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    conn.write_all(request.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&got).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let head = head.to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .map_or(0, |n| n.trim().parse().unwrap());
            if body.len() >= len {
                return (head, body.to_owned());
            }
        }
        let n = conn.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed before a whole answer: {text:?}");
        got.extend_from_slice(&buf[..n]);
    }
}

/// `tether-ingress healthcheck` (`--ready`) against the ingress on `port`:
/// its exit code and what it said on stderr.
fn healthcheck(port: u16, ready: bool) -> (Option<i32>, String) {
    let mut command = binary();
    command
        .arg("healthcheck")
        .env("TETHER_INGRESS_LISTEN", format!("127.0.0.1:{port}"));
    if ready {
        command.arg("--ready");
    }
    let out = command.output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn a_shutdown_delay_serves_on_says_stopping_and_a_second_signal_ends_it() {
    use tokio::io::AsyncReadExt;
    let (redis, r) = redis_with_key_and_trigger(KEY, &["wf_a"]).await;
    // Longer than the test may take: only the second signal ends it.
    let (mut command, _dir) = serve_with_file("[server]\nshutdown_delay_ms = 600000\n", &redis);
    let mut child = command.spawn().unwrap();
    let port = listening_port(&mut child, Duration::from_secs(20)).expect("never listened");
    let addr = format!("127.0.0.1:{port}");
    let connect = || tokio::net::TcpStream::connect(addr.clone());
    let post = format!(
        "POST /api/webhook/workflow HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {KEY}\r\ncontent-type: application/json\r\ncontent-length: 20\r\n\r\n{{\"webhookId\":\"wh_1\"}}"
    );
    let ready = "GET /readyz HTTP/1.1\r\nhost: x\r\n\r\n";
    assert!(
        eventually(Duration::from_secs(30), || async {
            match connect().await {
                Ok(mut c) => exchange(&mut c, ready).await.0.starts_with("http/1.1 200"),
                Err(_) => false,
            }
        })
        .await
    );
    assert_eq!(healthcheck(port, true).0, Some(0));
    assert_eq!(healthcheck(port, false).0, Some(0));
    // A keep-alive connection opened before the signal.
    let mut kept = connect().await.unwrap();
    let (head, _) = exchange(&mut kept, &post).await;
    assert!(head.starts_with("http/1.1 202"), "{head}");
    assert!(!head.contains("connection: close"), "{head}");

    let signal = |pid: u32| {
        assert!(
            Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .unwrap()
                .success()
        );
    };
    signal(child.id());
    // Balancers are told to go while requests are still served.
    assert!(
        eventually(Duration::from_secs(10), || async {
            let (head, body) = exchange(&mut connect().await.unwrap(), ready).await;
            head.starts_with("http/1.1 503") && body == r#"{"status":"stopping"}"#
        })
        .await,
        "readiness never said stopping"
    );
    // A container's health check says the same: alive, not ready.
    let (code, said) = healthcheck(port, true);
    assert_eq!(code, Some(1));
    assert!(
        said.contains(r#"503 Service Unavailable {"status":"stopping"}"#),
        "{said}"
    );
    assert_eq!(healthcheck(port, false).0, Some(0));
    // The kept connection is answered, told to close, and closed.
    let (head, _) = exchange(&mut kept, &post).await;
    assert!(head.starts_with("http/1.1 202"), "{head}");
    assert!(head.contains("connection: close"), "{head}");
    let mut rest = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(10), kept.read_to_end(&mut rest))
        .await
        .expect("the connection stayed open")
        .unwrap();
    assert_eq!(n, 0);
    // A new connection is still accepted and served, once.
    let (head, _) = exchange(&mut connect().await.unwrap(), &post).await;
    assert!(head.starts_with("http/1.1 202"), "{head}");
    assert!(head.contains("connection: close"), "{head}");
    assert_eq!(xlen(&r, "tether:jobs:workflow").await, 3);

    // The second signal ends the ten-minute delay: the process drains and exits.
    signal(child.id());
    let exited = eventually(Duration::from_secs(30), || {
        let done = child.try_wait().unwrap();
        async move { done.is_some() }
    })
    .await;
    if !exited {
        let _ = child.kill();
    }
    assert!(exited, "the second signal did not end the delay");
    assert_eq!(child.wait().unwrap().code(), Some(0));
    let (code, said) = healthcheck(port, false);
    assert_eq!(code, Some(1));
    assert!(said.contains(&format!("127.0.0.1:{port}")), "{said}");
}

#[tokio::test]
async fn json_logs_carry_the_request_id_and_never_a_secret() {
    let redis = RedisServer::start();
    let r = redis.client().await;
    put_key(&r, KEY, r#"{"userId":"u_1","orgId":"o_1"}"#).await;
    let mut child = binary()
        .env("TETHER_INGRESS_LISTEN", "127.0.0.1:0")
        .env("TETHER_INGRESS_REDIS_URL", redis.url())
        .env("TETHER_INGRESS_LOG_FORMAT", "json")
        .env("TETHER_INGRESS_LOG", "debug,fred=warn,hyper=warn,h2=warn")
        .env("TETHER_INGRESS_JWT_SECRET", "log-secret-value")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let port = listening_port(&mut child, Duration::from_secs(20)).expect("never listened");
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let post = |token: &'static str, id: &'static str| {
        let client = client.clone();
        async move {
            let req = Request::post(format!("http://127.0.0.1:{port}/api/webhook/workflow"))
                .header("authorization", format!("Bearer {token}"))
                .header("x-request-id", id)
                .body(Full::new(Bytes::from_static(br#"{"webhookId":"wh_1"}"#)))
                .unwrap();
            match client.request(req).await {
                Ok(r) => r.status(),
                Err(_) => StatusCode::BAD_GATEWAY,
            }
        }
    };
    assert!(
        eventually(Duration::from_secs(30), || async {
            post(KEY, "log-ok").await == StatusCode::ACCEPTED
        })
        .await
    );
    let bad = post("user_wrong_key_value", "log-bad").await;
    assert_eq!(bad, StatusCode::UNAUTHORIZED, "{bad}");
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let request_line = |id: &str| {
        // The last one: the readiness poll reuses the id while it gets 503.
        lines
            .iter()
            .rev()
            .find(|l| {
                // The caller's id itself, so a search by it finds the line.
                l["message"] == "request" && l["request_id"] == id
            })
            .cloned()
    };
    let ok = request_line("log-ok").expect("no request line for log-ok");
    assert_eq!(ok["status"], 202);
    assert_eq!(ok["route"], "workflow");
    assert_eq!(
        request_line("log-bad").expect("no request line for log-bad")["status"],
        401
    );
    assert!(
        lines
            .iter()
            .any(|l| { l["message"] == "request refused" && l["request_id"] == "log-bad" })
    );
    for secret in [KEY, "user_wrong_key_value", "log-secret-value"] {
        assert!(!text.contains(secret), "{secret} appeared in the logs");
    }
    // The start line says what the process serves with.
    let start = lines
        .iter()
        .find(|l| l["message"] == "tether-ingress listening")
        .expect("no start line");
    assert_eq!(start["addr"], format!("127.0.0.1:{port}"));
    assert_eq!(start["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(start["redis"], redis.url());
    assert_eq!(start["sink"], "streams");
    assert_eq!(start["spool"], "off");
    assert_eq!(start["upstream"], "none");
    assert_eq!(start["tls"], false);
}

#[tokio::test]
async fn sigterm_exits_even_if_redis_never_came_up() {
    let down = closed_port();
    let mut child = binary()
        .env("TETHER_INGRESS_LISTEN", "127.0.0.1:0")
        .env(
            "TETHER_INGRESS_REDIS_URL",
            format!("redis://127.0.0.1:{}", down.port),
        )
        .env("TETHER_INGRESS_LOG", "error")
        .spawn()
        .unwrap();
    let port = listening_port(&mut child, Duration::from_secs(20)).expect("never listened");
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let healthy = || {
        let client = client.clone();
        async move {
            let req = Request::get(format!("http://127.0.0.1:{port}/healthz"))
                .body(Full::new(Bytes::new()))
                .unwrap();
            client
                .request(req)
                .await
                .is_ok_and(|r| r.status() == StatusCode::OK)
        }
    };
    assert!(eventually(Duration::from_secs(30), healthy).await);
    assert_eq!(terminate(child).await, Some(0));
}

/// SIGTERM the moment the port takes connections: the signals are watched
/// before it opens, so even this one drains and exits 0 (not killed by the
/// signal's default action).
#[tokio::test]
async fn sigterm_as_soon_as_the_port_opens_still_exits_cleanly() {
    let redis = RedisServer::start();
    let mut child = binary()
        .env("TETHER_INGRESS_LISTEN", "127.0.0.1:0")
        .env("TETHER_INGRESS_REDIS_URL", redis.url())
        .env("TETHER_INGRESS_LOG", "error")
        .spawn()
        .unwrap();
    let port = listening_port(&mut child, Duration::from_secs(30)).expect("the port never opened");
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
    assert_eq!(terminate(child).await, Some(0));
}

#[tokio::test]
async fn a_shutdown_delay_serves_on_until_it_ends_then_drains() {
    let (redis, r) = redis_with_key_and_trigger(KEY, &["wf_a"]).await;
    let mut raw = tether_ingress::config::Config::default();
    raw.redis.url = redis.url();
    let delay = Duration::from_secs(5);
    raw.server.shutdown_delay_ms = delay;
    let mut ingress = Ingress::start_with(raw.validate().unwrap()).await;
    let addr = ingress.addr;

    let signalled = std::time::Instant::now();
    ingress.begin_shutdown();
    assert!(
        eventually(Duration::from_secs(5), || async {
            let (status, _, body) = ingress.get("/readyz").await;
            status == StatusCode::SERVICE_UNAVAILABLE && &body[..] == br#"{"status":"stopping"}"#
        })
        .await,
        "readiness never said stopping"
    );
    // Still serving: the job is written and acknowledged.
    let (status, headers, _) = ingress
        .request(
            http::Request::post(ingress.uri("/api/webhook/workflow"))
                .header("authorization", format!("Bearer {KEY}"))
                .body(http_body_util::Full::new(bytes::Bytes::from_static(
                    br#"{"webhookId":"wh_1"}"#,
                )))
                .unwrap(),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(headers["connection"], "close");
    assert_eq!(xlen(&r, "tether:jobs:workflow").await, 1);
    // The listener closes once the delay is over, not before.
    assert!(
        eventually(Duration::from_secs(30), || async {
            tokio::net::TcpStream::connect(addr).await.is_err()
        })
        .await
    );
    assert!(signalled.elapsed() >= delay, "{:?}", signalled.elapsed());
    assert!(ingress.shutdown().await, "drain did not complete");
}

/// The value of field `name` in a text log line (`name=value`).
fn field_of<'a>(line: &'a str, name: &str) -> &'a str {
    line.split_whitespace()
        .find_map(|f| f.strip_prefix(name)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {name}= in {line}"))
}

#[tokio::test]
async fn a_metrics_listener_answers_probes_while_the_webhook_listener_is_full() {
    use tokio::io::AsyncWriteExt;
    let (redis, _r) = redis_with_key_and_trigger(KEY, &["wf_a"]).await;
    // One connection fills the webhook listener; a waiting one is refused
    // after 200 ms.
    let (mut command, _dir) = serve_with_file(
        "[server]\nmax_connections = 1\nconnection_queue_timeout_ms = 200\n",
        &redis,
    );
    let log = LogFile::new();
    // An upstream nothing answers on: a request forwarded there gets 502.
    let upstream = closed_port();
    let child = command
        .env("TETHER_INGRESS_METRICS_LISTEN", "127.0.0.1:0")
        .env(
            "TETHER_INGRESS_UPSTREAM_URL",
            format!("http://127.0.0.1:{}", upstream.port),
        )
        .env("TETHER_INGRESS_LOG", "info")
        .stdout(log.writer())
        .spawn()
        .unwrap();
    let line = log
        .line_with("tether-ingress listening", Duration::from_secs(30))
        .await;
    let (main, metrics) = (field_of(&line, "addr"), field_of(&line, "metrics"));
    assert_ne!(main, metrics);
    let ask = |addr: &str, request: &'static str| {
        let addr = addr.to_owned();
        async move {
            match tokio::net::TcpStream::connect(addr).await {
                Ok(mut c) => exchange(&mut c, request).await,
                Err(e) => (e.to_string(), String::new()),
            }
        }
    };
    const READY: &str = "GET /readyz HTTP/1.1\r\nhost: x\r\n\r\n";
    const METRICS: &str = "GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n";
    assert!(
        eventually(Duration::from_secs(30), || async {
            ask(metrics, READY).await.0.starts_with("http/1.1 200")
        })
        .await
    );
    let (head, body) = ask(metrics, METRICS).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(body.contains("tether_http_requests_total"), "{body}");
    let (head, _) = ask(
        metrics,
        "POST /api/webhook/workflow HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n",
    )
    .await;
    assert!(head.starts_with("http/1.1 404"), "{head}");
    // The port callers reach no longer shows the metrics, nor forwards
    // the path to the upstream (which would answer 502 here).
    let (head, _) = ask(main, METRICS).await;
    assert!(head.starts_with("http/1.1 404"), "{head}");
    let (head, _) = ask(main, "GET /api/leads HTTP/1.1\r\nhost: x\r\n\r\n").await;
    assert!(head.starts_with("http/1.1 502"), "{head}");

    // A caller holds the webhook listener's one connection: there, a probe
    // waits and is refused; on the metrics listener it is answered at once.
    let mut held = tokio::net::TcpStream::connect(main).await.unwrap();
    held.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    let (head, _) = ask(main, READY).await;
    assert!(head.starts_with("http/1.1 503"), "{head}");
    let (head, body) = ask(metrics, READY).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert_eq!(body, r#"{"status":"ready"}"#);
    drop(held);
    assert_eq!(terminate(child).await, Some(0));
}

#[test]
fn a_metrics_listener_on_a_taken_port_stops_the_start() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = binary()
        .env("TETHER_INGRESS_LISTEN", "127.0.0.1:0")
        .env("TETHER_INGRESS_METRICS_LISTEN", &addr)
        .env("TETHER_INGRESS_REDIS_URL", "redis://127.0.0.1:1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("cannot listen on {addr} (server.metrics_listen)")),
        "{err}"
    );
}

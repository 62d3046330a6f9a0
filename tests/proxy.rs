//! Sidecar mode against a real upstream: forwarding, streaming, upgrades,
//! failures, and session JWTs on the workflow route.
#![allow(clippy::unwrap_used, missing_docs, clippy::disallowed_methods)]

mod support;

use std::{sync::atomic::Ordering, time::Duration};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use support::{upstream::Upstream, *};
use tether_ingress::{
    config::{Config, ServingThreads},
    sign_jwt as sign,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SECRET: &str = "jwt-test-secret";
const KEY: &str = "user_proxy_key";

async fn start(
    upstream: Option<&str>,
    secret: Option<&str>,
    tweak: impl FnOnce(&mut Config),
) -> (RedisServer, fred::clients::Client, Ingress) {
    let (redis, r) = redis_with_key_and_trigger(KEY, &["wf_a"]).await;
    let mut raw = Config::default();
    raw.redis.url = redis.url();
    if let Some(u) = upstream {
        raw.upstream.url = Some(u.to_owned().parse().unwrap());
    }
    if let Some(s) = secret {
        raw.auth.jwt_secret = Some(tether_ingress::config::Secret::new(s));
    }
    tweak(&mut raw);
    let ingress = Ingress::start_with(raw.validate().unwrap()).await;
    (redis, r, ingress)
}

fn client() -> hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>,
> {
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http()
}

#[tokio::test]
async fn other_requests_are_forwarded_unchanged() {
    let up = Upstream::start().await;
    // The test client stands for a load balancer here: its X-Forwarded-For is
    // kept and extended (tests/forwarded.rs has the untrusted case).
    let (_redis, _r, ingress) = start(Some(&up.url()), None, |c| {
        c.server.trusted_proxies = "127.0.0.1".parse().unwrap();
    })
    .await;
    let req = Request::put(ingress.uri("/api/contacts/42?expand=notes&x=%20y"))
        .header("x-custom", "one")
        .header("authorization", "Bearer session-token")
        .header("connection", "keep-alive, x-drop-me")
        .header("x-drop-me", "secret-hop")
        .header("keep-alive", "timeout=5")
        .header("x-forwarded-for", "203.0.113.9")
        .body(Full::new(Bytes::from_static(b"hello upstream")))
        .unwrap();
    let (status, headers, body) = ingress.request(req).await;
    assert_eq!(status, StatusCode::IM_A_TEAPOT);
    assert_eq!(headers["x-upstream"], "yes");
    assert!(headers.contains_key("x-request-id"));
    assert!(
        !headers.contains_key("x-upstream-hop"),
        "response hop-by-hop header passed"
    );
    assert!(!headers.contains_key("keep-alive"));
    let v = json(&body);
    assert_eq!(v["method"], "PUT");
    assert_eq!(v["uri"], "/api/contacts/42?expand=notes&x=%20y");
    assert_eq!(v["body_len"], 14);
    let h = &v["headers"];
    assert_eq!(h["x-custom"], "one");
    assert_eq!(h["authorization"], "Bearer session-token");
    assert_eq!(h["host"], ingress.addr.to_string());
    assert_eq!(h["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], ingress.addr.to_string());
    assert!(
        h.get("x-drop-me").is_none(),
        "header named in Connection passed"
    );
    assert!(h.get("keep-alive").is_none());
    // The ingress still answers its own routes.
    assert_eq!(ingress.get("/healthz").await.0, StatusCode::OK);
    // Other methods on those paths are the upstream's (its echo route: 418).
    for path in ["/healthz", "/readyz", "/metrics"] {
        let req = Request::post(ingress.uri(path))
            .body(Full::new(Bytes::new()))
            .unwrap();
        assert_eq!(
            ingress.request(req).await.0,
            StatusCode::IM_A_TEAPOT,
            "{path}"
        );
    }
    assert_eq!(ingress.wh_1_status(KEY).await, StatusCode::ACCEPTED);
}

#[tokio::test]
async fn eight_mib_upload_streams_through() {
    let up = Upstream::start().await;
    let (_redis, _r, ingress) = start(Some(&up.url()), None, |_| {}).await;
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
    let body = StreamBody::new(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, std::convert::Infallible>(Frame::data(b)), rx))
    }));
    let req = Request::post(ingress.uri("/upload"))
        .body(BodyExt::boxed(body))
        .unwrap();
    let c = client();
    let pending = tokio::spawn(async move { c.request(req).await });
    let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
    // The first MiB must reach the upstream before the rest is even sent:
    // an ingress that buffered the body would never let that happen.
    for _ in 0..16 {
        tx.send(chunk.clone()).await.unwrap();
    }
    let reached = eventually(Duration::from_secs(10), || async {
        up.state.uploaded.load(Ordering::SeqCst) >= 1 << 20
    })
    .await;
    assert!(reached, "upload was not streamed");
    for _ in 16..128 {
        tx.send(chunk.clone()).await.unwrap();
    }
    drop(tx);
    let res = pending.await.unwrap().unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, (8u64 << 20).to_string().as_bytes());
}

#[tokio::test]
async fn eight_mib_download_streams_through() {
    let up = Upstream::start().await;
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
    *up.state.download.lock().await = Some(rx);
    let (_redis, _r, ingress) = start(Some(&up.url()), None, |_| {}).await;
    let c = client();
    let req = Request::get(ingress.uri("/download"))
        .body(BodyExt::boxed(Full::new(Bytes::new())))
        .unwrap();
    let res = c.request(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let mut body = res.into_body();
    let chunk = Bytes::from(vec![b'y'; 64 * 1024]);
    let mut received = 0usize;
    // Send 1 MiB, read it all back before sending more: the ingress must pass
    // each part on without waiting for the end.
    for round in 0..8 {
        for _ in 0..16 {
            tx.send(chunk.clone()).await.unwrap();
        }
        let target = (round + 1) << 20;
        while received < target {
            let frame = tokio::time::timeout(Duration::from_secs(10), body.frame())
                .await
                .expect("download stalled")
                .unwrap()
                .unwrap();
            received += frame.into_data().map(|d| d.len()).unwrap_or(0);
        }
    }
    drop(tx);
    while let Some(f) = body.frame().await {
        received += f.unwrap().into_data().map(|d| d.len()).unwrap_or(0);
    }
    assert_eq!(received, 8 << 20);
}

#[tokio::test]
async fn trailers_come_back() {
    let up = Upstream::start().await;
    let (_redis, _r, ingress) = start(Some(&up.url()), None, |_| {}).await;
    let c = client();
    let req = Request::get(ingress.uri("/trailers"))
        .header("te", "trailers")
        .body(BodyExt::boxed(Full::new(Bytes::new())))
        .unwrap();
    let res = c.request(req).await.unwrap();
    let collected = res.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned().expect("no trailers");
    assert_eq!(trailers["x-checksum"], "abc123");
    assert_eq!(collected.to_bytes(), "payload");
}

#[tokio::test]
async fn websocket_upgrade_is_spliced() {
    let up = Upstream::start().await;
    let (_redis, _r, ingress) = start(Some(&up.url()), None, |_| {}).await;
    let mut s = tokio::net::TcpStream::connect(ingress.addr).await.unwrap();
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    for msg in [&b"\x81\x05hello"[..], b"\x81\x05world"] {
        s.write_all(msg).await.unwrap();
        let mut echo = vec![0u8; msg.len()];
        tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut echo))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(echo, msg);
    }
}

/// A downstream keep-alive connection sends its requests on one upstream
/// connection of its own; when the upstream closes that connection, the next
/// request opens a new one instead of failing.
#[tokio::test]
async fn a_connections_upstream_lane_is_reused_and_reopened() {
    let up = Upstream::start().await;
    let (_redis, _r, ingress) = start(Some(&up.url()), None, |_| {}).await;
    // The harness's client keeps one connection to the ingress.
    // (The test upstream answers its echo route with 418.)
    for path in ["/a", "/b", "/c"] {
        assert_eq!(ingress.get(path).await.0, StatusCode::IM_A_TEAPOT);
    }
    assert_eq!(up.state.connections.load(Ordering::SeqCst), 1);
    let (status, _, body) = ingress.get("/close").await;
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"closing"[..]));
    for path in ["/d", "/e"] {
        assert_eq!(ingress.get(path).await.0, StatusCode::IM_A_TEAPOT, "{path}");
    }
    assert_eq!(up.state.connections.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn upstream_failures_are_502_and_504() {
    let up = Upstream::start().await;
    let (_redis, _r, ingress) = start(Some(&up.url()), None, |raw| {
        raw.upstream.response_timeout_ms = std::time::Duration::from_millis(300)
    })
    .await;
    let (status, headers, body) = ingress.get("/slow").await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(json(&body)["code"], "UPSTREAM_TIMEOUT");
    assert!(headers.contains_key("x-request-id"));
    let down = closed_port();
    let closed = format!("http://127.0.0.1:{}", down.port);
    let (_redis2, _r2, ingress) = start(Some(&closed), None, |_| {}).await;
    let (status, _, body) = ingress.get("/api/anything").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(json(&body)["code"], "UPSTREAM_UNAVAILABLE");
}

fn token(header: &str, claims: &str) -> String {
    sign(SECRET.as_bytes(), header, claims)
}

fn now() -> u64 {
    tether_ingress::now_ms() / 1000
}

/// Session JWTs are taken as the backend takes them, held to jsonwebtoken
/// itself (the library Node backends verify them with) and the backend's
/// `userId || sub`: every token in the list is taken by both or refused by
/// both, for the same caller. Tokens the contract decides otherwise (no
/// `exp`, a claim named twice) are not in the list.
#[tokio::test]
async fn session_jwts_are_taken_as_jsonwebtoken_takes_them() {
    let (_redis, r, ingress) = start(None, Some(SECRET), |_| {}).await;
    let leeway = Config::default().auth.jwt_leeway_secs;
    let (hs, n) = (r#"{"alg":"HS256","typ":"JWT"}"#, now());
    let (exp, past, soon) = (n + 600, n - 60, n + 60);
    let id = r#""orgId":"o_1""#;
    let claims = [
        format!(r#"{{"userId":"u_1",{id},"exp":{exp}}}"#),
        format!(r#"{{"sub":"u_2",{id},"exp":{exp}}}"#),
        format!(r#"{{"userId":"u_1","sub":42,{id},"exp":{exp}}}"#),
        format!(r#"{{"userId":null,"sub":"u_2",{id},"exp":{exp}}}"#),
        format!(r#"{{"userId":"","sub":"u_2",{id},"exp":{exp}}}"#),
        format!(r#"{{"userId":0,"sub":"u_2",{id},"exp":{exp}}}"#),
        format!(r#"{{"userId":null,{id},"exp":{exp}}}"#),
        format!(r#"{{"userId":"u_1","exp":{exp}}}"#),
        format!(r#"{{"userId":"u_1","orgId":5,"exp":{exp}}}"#),
        format!(r#"{{"userId":"u_1","orgId":"","exp":{exp}}}"#),
        format!(r#"{{"userId":"u_1",{id},"exp":{past}}}"#),
        format!(r#"{{"userId":"u_1",{id},"exp":{}}}"#, n - 2),
        format!(r#"{{"userId":"u_1",{id},"exp":{exp}.5}}"#),
        format!(r#"{{"userId":"u_1",{id},"exp":"{exp}"}}"#),
        format!(r#"{{"userId":"u_1",{id},"exp":null}}"#),
        format!(r#"{{"userId":"u_1",{id},"exp":-1}}"#),
        format!(r#"{{"userId":"u_1",{id},"exp":1e12}}"#),
        format!(r#"{{"userId":"u_1",{id},"exp":{exp},"nbf":{soon}}}"#),
        format!(r#"{{"userId":"u_1",{id},"exp":{exp},"nbf":{}}}"#, n + 2),
        format!(r#"{{"userId":"u_1",{id},"exp":{exp},"nbf":"{n}"}}"#),
        format!(r#"{{"userId":"u_1",{id},"exp":{exp},"nbf":null}}"#),
        format!(r#"{{"userId":"u_1",{id},"exp":{exp},"iat":"{n}"}}"#),
        format!(r#"{{"userId":"u_1",{id},"exp":{exp},"iat":{soon}}}"#),
        format!(r#"{{"userId":"u_1",{id},"exp":{exp},"aud":"x","iss":"y","jti":"z"}}"#),
        "[1]".to_owned(),
    ];
    let mut tokens: Vec<String> = claims.iter().map(|c| token(hs, c)).collect();
    let plain = format!(r#"{{"userId":"u_1",{id},"exp":{exp}}}"#);
    for header in [
        r#"{"alg":"HS256"}"#,
        r#"{"alg":"HS256","typ":"at+jwt","kid":"k1"}"#,
        r#"{"alg":"HS512","typ":"JWT"}"#,
        r#"{"alg":"hs256","typ":"JWT"}"#,
        r#"{"alg":"none","typ":"JWT"}"#,
        r#"{"typ":"JWT"}"#,
    ] {
        tokens.push(token(header, &plain));
    }
    tokens.push(sign(b"wrong-secret", hs, &plain));
    let backend = support::node::jsonwebtoken(SECRET, leeway, &tokens).await;
    assert_eq!(backend.len(), tokens.len());
    let mut taken = 0;
    for (token, read) in tokens.iter().zip(backend) {
        let before = xlen(&r, "tether:jobs:workflow").await;
        let (status, _, resp) = ingress
            .workflow(Some(token), r#"{"webhookId":"wh_1"}"#)
            .await;
        let case = String::from_utf8_lossy(
            &base64::Engine::decode(
                &base64::engine::general_purpose::URL_SAFE_NO_PAD,
                token.split('.').nth(1).unwrap(),
            )
            .unwrap(),
        )
        .into_owned();
        match read {
            Ok((user, _)) => {
                assert_eq!(status, StatusCode::ACCEPTED, "{case}: {resp:?}");
                let got = entries(&r, "tether:jobs:workflow").await;
                assert_eq!(field(&got.last().unwrap().1, "userId"), user, "{case}");
                taken += 1;
            }
            Err(why) => {
                assert_eq!(
                    status,
                    StatusCode::UNAUTHORIZED,
                    "{case}: jsonwebtoken says {why}"
                );
                assert_eq!(xlen(&r, "tether:jobs:workflow").await, before, "{case}");
            }
        }
    }
    assert_eq!(taken, 15);
}

#[tokio::test]
async fn session_jwts_are_verified_with_a_secret() {
    let up = Upstream::start().await;
    let (_redis, r, ingress) = start(Some(&up.url()), Some(SECRET), |_| {}).await;
    let hs = r#"{"alg":"HS256","typ":"JWT"}"#;
    let body = r#"{"webhookId":"wh_1"}"#;
    let valid = token(
        hs,
        &format!(r#"{{"sub":"u_7","orgId":"o_1","exp":{}}}"#, now() + 600),
    );
    let (status, _, resp) = ingress.workflow(Some(&valid), body).await;
    assert_eq!(
        status,
        StatusCode::ACCEPTED,
        "{}",
        String::from_utf8_lossy(&resp)
    );
    assert_eq!(json(&resp)["data"]["matchedCount"], 1);
    let got = entries(&r, "tether:jobs:workflow").await;
    assert!(got[0].1.iter().any(|(k, v)| k == "userId" && v == "u_7"));

    let exp = now() + 600;
    let cases = [
        (
            token(
                hs,
                &format!(r#"{{"userId":"u","orgId":"o_1","exp":{}}}"#, now() - 120),
            ),
            "TOKEN_EXPIRED",
        ),
        (
            token(
                hs,
                &format!(
                    r#"{{"userId":"u","orgId":"o_1","exp":{exp},"nbf":{}}}"#,
                    now() + 120
                ),
            ),
            "TOKEN_EXPIRED",
        ),
        (
            sign(
                b"wrong-secret",
                hs,
                &format!(r#"{{"userId":"u","orgId":"o_1","exp":{exp}}}"#),
            ),
            "INVALID_TOKEN",
        ),
        (
            token(
                r#"{"alg":"HS512"}"#,
                &format!(r#"{{"userId":"u","orgId":"o_1","exp":{exp}}}"#),
            ),
            "INVALID_TOKEN",
        ),
        (
            token(
                r#"{"alg":"none"}"#,
                &format!(r#"{{"userId":"u","orgId":"o_1","exp":{exp}}}"#),
            ),
            "INVALID_TOKEN",
        ),
        (
            token(hs, &format!(r#"{{"orgId":"o_1","exp":{exp}}}"#)),
            "INVALID_TOKEN",
        ),
        (
            token(hs, &format!(r#"{{"userId":"u","exp":{exp}}}"#)),
            "INVALID_TOKEN",
        ),
        (
            token(hs, r#"{"userId":"u","orgId":"o_1"}"#),
            "INVALID_TOKEN",
        ),
        (
            token(
                hs,
                &format!(r#"{{"userId":"u","orgId":"o_1","orgId":"o_2","exp":{exp}}}"#),
            ),
            "INVALID_TOKEN",
        ),
        (
            "eyJhbGciOiJub25lIn0.eyJ1c2VySWQiOiJ1In0.Zm9v".to_owned(),
            "INVALID_TOKEN",
        ),
    ];
    for (t, code) in cases {
        let (status, _, resp) = ingress.workflow(Some(&t), body).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{t}");
        assert_eq!(json(&resp)["code"], code, "{t}");
    }
    // Nothing refused was written or forwarded.
    assert_eq!(xlen(&r, "tether:jobs:workflow").await, 1);
    // The outreach route takes API keys only, however valid the JWT.
    let req = Request::post(ingress.uri("/api/webhook/outreach"))
        .header("authorization", format!("Bearer {valid}"))
        .body(Full::new(Bytes::from_static(br#"{"configurationId":"c"}"#)))
        .unwrap();
    let (status, _, resp) = ingress.request(req).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(json(&resp)["code"], "API_KEY_REQUIRED");
}

#[tokio::test]
async fn without_a_secret_jwts_go_to_the_upstream_unchanged() {
    let up = Upstream::start().await;
    let (_redis, r, ingress) = start(Some(&up.url()), None, |_| {}).await;
    let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJ1c2VySWQiOiJ1In0.c2lnbmF0dXJl";
    let (status, _, resp) = ingress
        .workflow(Some(jwt), r#"{"webhookId":"wh_1","n":1}"#)
        .await;
    assert_eq!(status, StatusCode::IM_A_TEAPOT, "the upstream answered");
    let v = json(&resp);
    assert_eq!(v["uri"], "/api/webhook/workflow");
    assert_eq!(v["method"], "POST");
    assert_eq!(v["headers"]["authorization"], format!("Bearer {jwt}"));
    assert_eq!(v["body_len"], r#"{"webhookId":"wh_1","n":1}"#.len());
    assert_eq!(xlen(&r, "tether:jobs:workflow").await, 0);
    // API keys are still answered by the ingress.
    assert_eq!(ingress.wh_1_status(KEY).await, StatusCode::ACCEPTED);
}

/// With an upstream, a webhook path's other methods are the upstream's
/// ("every other request is forwarded"): a browser's CORS preflight gets
/// the backend's answer, not the ingress's 405; POST stays the ingress's.
#[tokio::test]
async fn other_methods_on_a_webhook_path_go_to_the_upstream() {
    let up = Upstream::start().await;
    let (_redis, r, ingress) = start(Some(&up.url()), None, |_| {}).await;
    for (method, path) in [
        (http::Method::OPTIONS, "/api/webhook/workflow"),
        (http::Method::GET, "/api/webhook/outreach"),
    ] {
        let req = Request::builder()
            .method(method.clone())
            .uri(ingress.uri(path))
            .header("origin", "https://forms.example.com")
            .header("access-control-request-method", "POST")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let (status, _, resp) = ingress.request(req).await;
        assert_eq!(
            status,
            StatusCode::IM_A_TEAPOT,
            "{method} {path}: the upstream answered"
        );
        let v = json(&resp);
        assert_eq!(v["method"], method.as_str());
        assert_eq!(v["uri"], path);
        assert_eq!(v["headers"]["origin"], "https://forms.example.com");
    }
    assert_eq!(ingress.wh_1_status(KEY).await, StatusCode::ACCEPTED);
    assert_eq!(xlen(&r, "tether:jobs:workflow").await, 1);
}

#[tokio::test]
async fn serving_threads_proxy_write_jobs_and_drain() {
    let up = Upstream::start().await;
    let (_redis, r, ingress) = start(Some(&up.url()), None, |raw| {
        raw.server.serving_threads = ServingThreads::Count(2)
    })
    .await;
    // Proxied requests run on a serving thread with their lane there too.
    for path in ["/a", "/b", "/c"] {
        assert_eq!(ingress.get(path).await.0, StatusCode::IM_A_TEAPOT);
    }
    assert_eq!(up.state.connections.load(Ordering::SeqCst), 1);
    // Webhooks awaited on a serving thread get their jobs from the shared writer.
    let (status, _, body) = ingress
        .workflow(Some(KEY), r#"{"webhookId":"wh_1","lead":{"n":1}}"#)
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body:?}");
    assert_eq!(xlen(&r, "tether:jobs:workflow").await, 1);
    assert!(ingress.shutdown().await, "drain across serving threads");
}

/// A backend that is down is logged with why, naming it, about once a
/// second rather than once per forwarded request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_is_down_is_logged_with_why_once_a_second() {
    let redis = RedisServer::start();
    let down = closed_port();
    let closed = format!("127.0.0.1:{}", down.port);
    let log_file = LogFile::new();
    let ingress = IngressProcess::spawn_logging(
        &[
            ("TETHER_INGRESS_REDIS_URL", redis.url()),
            ("TETHER_INGRESS_UPSTREAM_URL", format!("http://{closed}")),
        ],
        log_file.writer(),
    );
    ingress.wait_ready().await;
    let started = std::time::Instant::now();
    let http = http_client();
    for _ in 0..200 {
        let req = Request::get(format!("{}/api/anything", ingress.base()))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let res = http.request(req).await.unwrap();
        assert_eq!(res.status(), StatusCode::BAD_GATEWAY);
    }
    let seconds = started.elapsed().as_secs();
    let text = log_file.text();
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("upstream request failed"))
        .collect();
    assert!(
        !lines.is_empty(),
        "a backend that is down was not logged:\n{text}"
    );
    assert!(
        lines.len() as u64 <= seconds + 2,
        "{} lines in {seconds} s",
        lines.len()
    );
    assert!(
        lines[0].contains(&format!("upstream={closed}")) && lines[0].contains("refused"),
        "{}",
        lines[0]
    );
}

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
    let redis = RedisServer::start();
    let r = redis.client().await;
    put_key(&r, KEY, r#"{"userId":"u_1","orgId":"o_1"}"#).await;
    add_trigger(&r, "o_1", "wh_1", &["wf_a"]).await;
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
    let mut raw = tether_ingress::config::RawConfig::default();
    raw.redis.url = redis.url();
    raw.server.max_connections = 2;
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
    let redis = RedisServer::start();
    let r = redis.client().await;
    put_key(&r, KEY, r#"{"userId":"u_1","orgId":"o_1"}"#).await;
    add_trigger(&r, "o_1", "wh_1", &["wf_a"]).await;
    let port = free_port();
    let dir = std::env::temp_dir().join(format!("tether-bin-{}-{port}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("c.toml");
    // The file sets the stream; env sets listen and Redis.
    std::fs::write(&file, "[streams]\nworkflow = \"custom:jobs\"\n").unwrap();
    let mut child = binary()
        .args(["serve", "--config", file.to_str().unwrap()])
        .env("TETHER_INGRESS_LISTEN", format!("127.0.0.1:{port}"))
        .env("TETHER_INGRESS_REDIS_URL", redis.url())
        .env("TETHER_INGRESS_LOG", "warn")
        .spawn()
        .unwrap();
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
    let _ = std::fs::remove_dir_all(&dir);
}

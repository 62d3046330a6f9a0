//! Graceful shutdown: requests in flight when the signal comes are finished,
//! their jobs written, and nothing acknowledged is lost. Its own test binary,
//! so the process-wide in-flight gauge belongs to this test alone.
#![allow(clippy::unwrap_used, missing_docs)]

mod support;

use std::time::Duration;

use http::StatusCode;
use support::*;

const KEY: &str = "user_shutdown_key";
const STREAM: &str = "tether:jobs:workflow";

fn in_flight(metrics: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with("tether_http_requests_in_flight "))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
}

#[tokio::test]
async fn shutdown_finishes_requests_in_flight_and_loses_nothing() {
    let (redis, r) = redis_with_key_and_trigger(KEY, &["wf_a", "wf_b"]).await;
    let mut raw = tether_ingress::config::Config::default();
    raw.redis.url = redis.url();
    raw.redis.command_timeout_ms = std::time::Duration::from_millis(30_000);
    raw.server.shutdown_grace_ms = std::time::Duration::from_millis(30_000);
    let mut ingress = Ingress::start_with(raw.validate().unwrap()).await;

    // Hold every write in Redis so the requests stay in flight.
    assert_eq!(redis.cli(&["CLIENT", "PAUSE", "20000", "WRITE"]), "OK");
    const N: usize = 50;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let addr = ingress.addr;
    let mut tasks = Vec::new();
    for i in 0..N {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let req = http::Request::post(format!("http://{addr}/api/webhook/workflow"))
                .header("authorization", format!("Bearer {KEY}"))
                .body(http_body_util::Full::new(bytes::Bytes::from(format!(
                    r#"{{"webhookId":"wh_1","i":{i}}}"#
                ))))
                .unwrap();
            client.request(req).await.map(|r| r.status())
        }));
    }
    assert!(
        eventually(Duration::from_secs(10), || async {
            let (_, _, body) = ingress.get("/metrics").await;
            let v = in_flight(&String::from_utf8_lossy(&body));
            v == Some(N as f64)
        })
        .await,
        "requests did not reach the sink"
    );

    ingress.begin_shutdown();
    // New connections are refused once the listener is closed.
    assert!(
        eventually(Duration::from_secs(5), || async {
            tokio::net::TcpStream::connect(addr).await.is_err()
        })
        .await
    );
    assert_eq!(redis.cli(&["CLIENT", "UNPAUSE"]), "OK");
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), StatusCode::ACCEPTED);
    }
    assert!(ingress.shutdown().await, "drain did not complete");
    assert_eq!(xlen(&r, STREAM).await, 2 * N as u64);
}

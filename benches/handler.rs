//! The whole in-process handler (`App::dispatch`: routing, request id, auth,
//! body read, parse, match, job write, response, metrics), without the
//! HTTP connection. The app is the real one, built by `tether_ingress::build`
//! against a `redis-server` this bench starts on a free port; a job write is
//! therefore one XADD over loopback, and a bare fred XADD is the baseline
//! measured in the same run.
#![allow(missing_docs, clippy::unwrap_used)]

use std::{
    net::SocketAddr,
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use fred::prelude::*;
use http::Request;
use http_body_util::Full;
use std::hint::black_box;
use tether_ingress::{App, config::Config};

/// A typical aggregator lead: 440 bytes.
const LEAD_440: &str = r#"{"webhookId":"wh_64d2f9c5e8a1d4e001a0b1c3","source":"zillow","receivedVia":"premier-agent","lead":{"id":"zl_8f2c61d0-5d2e-4b8e-9c1e-7a9b3f2d1e44","name":"Alex Nguyen","email":"alex.nguyen@example.com","phone":"+14155551234","message":"Hi, I am interested in 1234 Market St #5. Is it still available for a viewing this weekend?","budget":{"min":850000,"max":1100000.00,"currency":"USD"},"tags":["buyer","pre-approved","vip"],"score":0.8712}}"#;
const KEY: &str = "user_bench_key";

struct Redis(Child);

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn request(body: &'static str, key: &str) -> Request<Full<Bytes>> {
    Request::post("/api/webhook/workflow")
        .header("authorization", format!("Bearer {key}"))
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap()
}

/// The same entry the handler writes (seven fields, `MAXLEN ~`), by a bare
/// fred client: the command's own cost.
async fn baseline_xadd(redis: &Client) -> String {
    let payload = &LEAD_440[43..];
    redis
        .xadd(
            "bench:baseline",
            false,
            ("MAXLEN", "~", 1_000_000),
            "*",
            vec![
                ("workflowId", "wf_1"),
                ("orgId", "o_1"),
                ("userId", "u_1"),
                ("webhookId", "wh_64d2f9c5e8a1d4e001a0b1c3"),
                ("payload", payload),
                ("receivedAt", "1700000000000"),
                ("requestId", "0123456789abcdef0123456789abcdef"),
            ],
        )
        .await
        .unwrap()
}

fn handler(c: &mut Criterion) {
    let port = free_port();
    let Ok(child) = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .spawn()
    else {
        eprintln!("handler bench skipped: redis-server not installed");
        return;
    };
    let _redis = Redis(child);
    let url = format!("redis://127.0.0.1:{port}");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (app, redis, _background) = rt.block_on(async {
        // Wait for the server to answer before the client's first connect:
        // fred's init() retried after a refused connection could wait
        // forever for a connect notice it had missed.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !Command::new("redis-cli")
            .args(["-p", &port.to_string(), "ping"])
            .output()
            .is_ok_and(|o| o.stdout.starts_with(b"PONG"))
        {
            assert!(Instant::now() < deadline, "redis did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let redis = Builder::from_config(fred::prelude::Config::from_url(&url).unwrap())
            .build()
            .unwrap();
        tokio::time::timeout(Duration::from_secs(10), redis.init())
            .await
            .expect("redis client did not connect")
            .unwrap();
        let digest: String = tether_ingress::digest_key(KEY.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let _: () = redis
            .set(
                format!("tether:apikey:{digest}"),
                r#"{"userId":"u_1","orgId":"o_1"}"#,
                None,
                None,
                false,
            )
            .await
            .unwrap();
        let _: () = redis
            .sadd("tether:triggers:o_1:wh_64d2f9c5e8a1d4e001a0b1c3", "wf_1")
            .await
            .unwrap();
        let mut raw = Config::default();
        raw.redis.url = url.clone();
        let (app, background) = tether_ingress::build(&raw.validate().unwrap()).unwrap();
        while !app.is_ready() {
            assert!(Instant::now() < deadline, "ingress not ready");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        (app, redis, background)
    });
    let peer = SocketAddr::from(([127, 0, 0, 1], 40000));
    let no_match: &'static str = Box::leak(
        LEAD_440
            .replace("wh_64d2f9c5e8a1d4e001a0b1c3", "wh_nothing")
            .into_boxed_str(),
    );

    let mut g = c.benchmark_group("handler");
    g.bench_function("refused_key", |b| {
        b.to_async(&rt).iter(|| async {
            black_box(
                app.dispatch(request(LEAD_440, "user_wrong"), peer)
                    .await
                    .status(),
            )
        })
    });
    g.bench_function("lead_440_no_match", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(app.dispatch(request(no_match, KEY), peer).await.status()) })
    });
    g.bench_function("lead_440_one_match", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(app.dispatch(request(LEAD_440, KEY), peer).await.status()) })
    });
    g.bench_function("baseline_fred_xadd", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(baseline_xadd(&redis).await) })
    });
    g.throughput(Throughput::Elements(64));
    g.bench_function("lead_440_one_match_64_concurrent", |b| {
        b.to_async(&rt).iter(|| {
            let app: Arc<App> = app.clone();
            async move {
                let tasks: Vec<_> = (0..64)
                    .map(|_| {
                        let app = app.clone();
                        tokio::spawn(async move {
                            app.dispatch(request(LEAD_440, KEY), peer).await.status()
                        })
                    })
                    .collect();
                for t in tasks {
                    black_box(t.await.unwrap());
                }
            }
        })
    });
    g.bench_function("baseline_fred_xadd_64_concurrent", |b| {
        b.to_async(&rt).iter(|| {
            let redis = redis.clone();
            async move {
                let tasks: Vec<_> = (0..64)
                    .map(|_| {
                        let redis = redis.clone();
                        tokio::spawn(async move { baseline_xadd(&redis).await })
                    })
                    .collect();
                for t in tasks {
                    black_box(t.await.unwrap());
                }
            }
        })
    });
    g.finish();
}

criterion_group!(benches, handler);
criterion_main!(benches);

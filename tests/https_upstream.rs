//! `https://` upstreams for the sidecar proxy: reached when the upstream's
//! certificate chains to `upstream.ca_file` and names its host; refused with
//! 502 (never an unverified connection) with another CA or the system's roots.
#![allow(clippy::unwrap_used, missing_docs)]

mod support;

use std::{convert::Infallible, path::Path};

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use support::{tls::pki, *};
use tether_ingress::config::Config;

/// An HTTPS server answering 200 with the request's path and its
/// X-Forwarded-Proto; returns its port.
async fn https_upstream(dir: &Path) -> u16 {
    let config =
        tether_ingress::server_config(&dir.join("upstream.crt"), &dir.join("upstream.key"))
            .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let svc = service_fn(|req: http::Request<hyper::body::Incoming>| async move {
                    let proto = req
                        .headers()
                        .get("x-forwarded-proto")
                        .map(|v| v.to_str().unwrap_or("").to_owned())
                        .unwrap_or_default();
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(format!(
                        "secure upstream {} {proto}",
                        req.uri().path()
                    )))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    port
}

async fn ingress_in_front(redis: &RedisServer, upstream: &str, ca: Option<&Path>) -> Ingress {
    let mut raw = Config::default();
    raw.redis.url = redis.url();
    raw.server.listen = ([127, 0, 0, 1], 0).into();
    raw.upstream.url = Some(upstream.to_owned().parse().unwrap());
    if let Some(ca) = ca {
        raw.upstream.ca_file = Some(ca.into());
    }
    Ingress::start_with(raw.validate().unwrap()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_upstream_is_verified_or_refused_with_502() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    pki(d, "good", &["upstream"]);
    pki(d, "other", &[]);
    let port = https_upstream(d).await;
    let url = format!("https://localhost:{port}");
    let redis = RedisServer::start();

    let trusted = ingress_in_front(&redis, &url, Some(&d.join("good-ca.crt"))).await;
    let (status, _, body) = trusted.get("/api/leads").await;
    assert_eq!(status, StatusCode::OK, "{body:?}");
    assert_eq!(&body[..], b"secure upstream /api/leads http");
    // Again: the pooled connection is reused.
    assert_eq!(trusted.get("/again").await.0, StatusCode::OK);

    for ca in [Some(d.join("other-ca.crt")), None] {
        let refused = ingress_in_front(&redis, &url, ca.as_deref()).await;
        let (status, _, body) = refused.get("/api/leads").await;
        assert_eq!(status, StatusCode::BAD_GATEWAY, "{ca:?}");
        assert_eq!(json(&body)["code"], "UPSTREAM_UNAVAILABLE");
    }
}

//! Comparators for the load harness: what a bare hyper server does with the
//! same requests, so the ingress's numbers have a baseline in the same run.
//!
//! ```text
//! cargo run --release --example comparator -- ok     127.0.0.1:9001           # read body, 200 "ok" (trivial upstream)
//! cargo run --release --example comparator -- accept 127.0.0.1:9002           # read body, 202 (hyper ceiling)
//! cargo run --release --example comparator -- xadd   127.0.0.1:9003 redis://127.0.0.1:6379
//!                                           # read body, one awaited XADD through fred, 202
//! cargo run --release --example comparator -- xadd-rs 127.0.0.1:9004 redis://127.0.0.1:6379
//!                                           # the same XADD through redis-rs's multiplexed connection
//! ```
//!
//! With `COMPARATOR_TLS_CERT` and `COMPARATOR_TLS_KEY` (PEM files) in the
//! environment it serves HTTPS through tokio-rustls with ALPN h2 and
//! http/1.1, as the ingress does: the baseline for HTTPS idle memory.
#![allow(missing_docs, clippy::unwrap_used, clippy::disallowed_methods)]

use std::{convert::Infallible, net::SocketAddr, sync::Arc};

use bytes::Bytes;
use fred::prelude::*;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};

#[derive(Clone, Copy)]
enum Mode {
    Ok,
    Accept,
    Xadd,
    XaddRs,
}

/// The seven fields of one workflow entry, as the ingress writes them.
fn entry(body: Bytes) -> Vec<(&'static str, Bytes)> {
    vec![
        ("workflowId", Bytes::from_static(b"wf_one")),
        ("orgId", Bytes::from_static(b"o_0")),
        ("userId", Bytes::from_static(b"u_0")),
        ("webhookId", Bytes::from_static(b"wh_one")),
        ("payload", body),
        ("receivedAt", Bytes::from_static(b"1795425600000")),
        (
            "requestId",
            Bytes::from_static(b"0193f1d2-7c3a-7b6e-9a51-3f0c2d4e5a6b"),
        ),
    ]
}

/// The Redis client of a mode that writes.
#[derive(Clone)]
enum Writer {
    Fred(Arc<Client>),
    RedisRs(redis::aio::MultiplexedConnection),
}

async fn handle(
    mode: Mode,
    redis: Option<Writer>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let body = req
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let (status, text) = match (mode, redis) {
        (Mode::Ok, _) => (StatusCode::OK, &b"ok"[..]),
        (Mode::Accept, _) => (StatusCode::ACCEPTED, &br#"{"success":true}"#[..]),
        (_, Some(Writer::Fred(client))) => {
            let fields: Vec<(&str, Bytes)> = if std::env::var_os("COMPARATOR_ONE_FIELD").is_some() {
                vec![("payload", body)]
            } else {
                entry(body)
            };
            let r: Result<Value, Error> = client
                .xadd(
                    "comparator:jobs",
                    false,
                    ("MAXLEN", "~", 1_000_000),
                    "*",
                    fields,
                )
                .await;
            match r {
                Ok(_) => (StatusCode::ACCEPTED, &br#"{"success":true}"#[..]),
                Err(_) => (StatusCode::SERVICE_UNAVAILABLE, &b"{}"[..]),
            }
        }
        (_, Some(Writer::RedisRs(mut conn))) => {
            let mut cmd = redis::cmd("XADD");
            cmd.arg("comparator:jobs")
                .arg("MAXLEN")
                .arg("~")
                .arg(1_000_000)
                .arg("*");
            for (k, v) in entry(body) {
                cmd.arg(k).arg(&v[..]);
            }
            match cmd.query_async::<redis::Value>(&mut conn).await {
                Ok(_) => (StatusCode::ACCEPTED, &br#"{"success":true}"#[..]),
                Err(_) => (StatusCode::SERVICE_UNAVAILABLE, &b"{}"[..]),
            }
        }
        (_, None) => (StatusCode::SERVICE_UNAVAILABLE, &b"{}"[..]),
    };
    let mut res = Response::new(Full::new(Bytes::from_static(text)));
    *res.status_mut() = status;
    Ok(res)
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: comparator ok|accept|xadd|xadd-rs ADDR [REDIS_URL]";
    let mode = match args.get(1).map(String::as_str) {
        Some("ok") => Mode::Ok,
        Some("accept") => Mode::Accept,
        Some("xadd") => Mode::Xadd,
        Some("xadd-rs") => Mode::XaddRs,
        _ => {
            eprintln!("{usage}");
            std::process::exit(2);
        }
    };
    let addr: SocketAddr = args.get(2).and_then(|a| a.parse().ok()).unwrap_or_else(|| {
        eprintln!("{usage}");
        std::process::exit(2)
    });
    let url = args
        .get(3)
        .cloned()
        .unwrap_or_else(|| "redis://127.0.0.1:6379".into());
    let redis = match mode {
        Mode::Xadd => {
            let client = Builder::from_config(Config::from_url(&url).unwrap())
                .build()
                .unwrap();
            client.init().await.unwrap();
            Some(Writer::Fred(Arc::new(client)))
        }
        Mode::XaddRs => {
            let client = redis::Client::open(url.as_str()).unwrap();
            let conn = client.get_multiplexed_async_connection().await.unwrap();
            Some(Writer::RedisRs(conn))
        }
        Mode::Ok | Mode::Accept => None,
    };
    let tls = tls_acceptor();
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let redis = redis.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| handle(mode, redis.clone(), req));
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            match tls {
                None => {
                    let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
                }
                Some(tls) => {
                    if let Ok(stream) = tls.accept(stream).await {
                        let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
                    }
                }
            }
        });
    }
}

/// A TLS acceptor when `COMPARATOR_TLS_CERT` and `COMPARATOR_TLS_KEY` name PEM files.
fn tls_acceptor() -> Option<tokio_rustls::TlsAcceptor> {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
    let cert = std::env::var("COMPARATOR_TLS_CERT").ok()?;
    let key = std::env::var("COMPARATOR_TLS_KEY").ok()?;
    let certs = CertificateDer::pem_file_iter(cert)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(key).unwrap();
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Some(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

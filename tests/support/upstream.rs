//! A real upstream for sidecar tests: a small hyper server on 127.0.0.1:0.
//!
//! Routes: `/echo` (method, URI, headers, body length as JSON), `/upload`
//! (counts body bytes as they arrive, visible to the test while streaming),
//! `/download` (streams N MiB as the test releases it), `/slow` (never
//! answers), `/trailers` (body plus trailers), `/ws` (101 then echoes bytes).

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use tokio::sync::{Notify, mpsc};

type Body = BoxBody<Bytes, Infallible>;

/// Shared with the test while requests stream.
#[derive(Default)]
pub struct UpstreamState {
    /// Bytes of `/upload` received so far.
    pub uploaded: AtomicU64,
    /// Woken on every upload chunk.
    pub upload_progress: Notify,
    /// Chunks for `/download`, fed by the test.
    pub download: tokio::sync::Mutex<Option<mpsc::Receiver<Bytes>>>,
    /// Connections accepted so far.
    pub connections: AtomicU64,
}

pub struct Upstream {
    pub addr: SocketAddr,
    pub state: Arc<UpstreamState>,
}

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|e| match e {}).boxed()
}

fn headers_json(h: &HeaderMap) -> serde_json::Value {
    let mut m = serde_json::Map::new();
    for (k, v) in h {
        let v = v.to_str().unwrap_or("").to_owned();
        m.entry(k.as_str().to_owned())
            .and_modify(|e| {
                if let serde_json::Value::String(s) = e {
                    s.push_str(", ");
                    s.push_str(&v);
                }
            })
            .or_insert(serde_json::Value::String(v));
    }
    serde_json::Value::Object(m)
}

async fn handle(
    state: Arc<UpstreamState>,
    mut req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_owned();
    let res = match path.as_str() {
        "/upload" => {
            let mut body = req.into_body();
            while let Some(Ok(frame)) = body.frame().await {
                if let Ok(d) = frame.into_data() {
                    state.uploaded.fetch_add(d.len() as u64, Ordering::SeqCst);
                    state.upload_progress.notify_waiters();
                }
            }
            Response::new(full(state.uploaded.load(Ordering::SeqCst).to_string()))
        }
        "/download" => {
            let rx = state.download.lock().await.take().unwrap();
            let stream = futures::stream::unfold(rx, |mut rx| async move {
                rx.recv()
                    .await
                    .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
            });
            Response::new(BodyExt::boxed(StreamBody::new(stream)))
        }
        // Answers, then closes the connection.
        "/close" => Response::builder()
            .header("connection", "close")
            .body(full("closing"))
            .unwrap(),
        "/slow" => {
            std::future::pending::<()>().await;
            unreachable!()
        }
        "/trailers" => {
            let mut trailers = HeaderMap::new();
            trailers.insert("x-checksum", "abc123".parse().unwrap());
            let frames = vec![
                Ok::<_, Infallible>(Frame::data(Bytes::from_static(b"payload"))),
                Ok(Frame::trailers(trailers)),
            ];
            Response::builder()
                .header("trailer", "x-checksum")
                .body(BodyExt::boxed(StreamBody::new(futures::stream::iter(
                    frames,
                ))))
                .unwrap()
        }
        "/ws" => {
            let on_upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                if let Ok(upgraded) = on_upgrade.await {
                    let mut io = TokioIo::new(upgraded);
                    let (mut r, mut w) = tokio::io::split(&mut io);
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                }
            });
            // The forwarding headers it was sent, told back on the 101.
            let mut res = Response::builder()
                .status(StatusCode::SWITCHING_PROTOCOLS)
                .header("connection", "upgrade")
                .header("upgrade", "websocket");
            for name in [
                "x-forwarded-for",
                "x-forwarded-proto",
                "x-forwarded-host",
                "x-real-ip",
                "forwarded",
            ] {
                if let Some(v) = req.headers().get(name) {
                    res = res.header(format!("x-seen-{name}"), v);
                }
            }
            res.body(full(Bytes::new())).unwrap()
        }
        _ => {
            let (parts, body) = req.into_parts();
            let len = body
                .collect()
                .await
                .map(|c| c.to_bytes().len())
                .unwrap_or(0);
            let v = serde_json::json!({
                "method": parts.method.as_str(),
                "uri": parts.uri.to_string(),
                "version": format!("{:?}", parts.version),
                "headers": headers_json(&parts.headers),
                "body_len": len,
            });
            Response::builder()
                .status(StatusCode::IM_A_TEAPOT)
                .header("content-type", "application/json")
                .header("x-upstream", "yes")
                .header("connection", "x-upstream-hop")
                .header("x-upstream-hop", "must-not-pass")
                .header("keep-alive", "timeout=5")
                .body(full(v.to_string()))
                .unwrap()
        }
    };
    Ok(res)
}

impl Upstream {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(UpstreamState::default());
        let s = state.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                s.connections.fetch_add(1, Ordering::SeqCst);
                let s = s.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| handle(s.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .with_upgrades()
                        .await;
                });
            }
        });
        Self { addr, state }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

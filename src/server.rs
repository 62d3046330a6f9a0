//! The accept loop: connection cap, first-byte timeout, HTTP/1.1 + h2c on
//! one port, and a bounded graceful drain. For each connection, in order:
//!
//! - A permit is taken *before* `accept`. At the cap, new connections wait
//!   in the kernel backlog for up to `connection_queue_timeout`; if no slot
//!   frees by then, waiting ones are answered 503 (`OVERLOADED`) and closed
//!   until one does, instead of being served badly.
//! - Accept errors (EMFILE and friends) are retried with doubling backoff.
//! - The connection is dealt round-robin to a serving thread ([`crate::cores`]).
//! - hyper keeps a silent connection open forever and has no header timeout on
//!   HTTP/2, so every connection must send a byte within `first_byte_timeout`;
//!   HTTP/1 heads (and idle keep-alives) are bounded by `header_read_timeout`.
//! - With `[server.tls]`, the TLS handshake must finish within
//!   `header_read_timeout` too (rustls; ALPN picks HTTP/2 or HTTP/1.1). A
//!   first byte that starts an HTTP method instead is answered 400
//!   (`HTTPS_REQUIRED`) in plain HTTP and closed.
//! - It is served (HTTP/1.1 or HTTP/2, h2c in plaintext, with upgrades for the
//!   proxy's WebSocket) until it closes or shutdown asks it to finish.

use std::{future::Future, pin::Pin, sync::Arc, time::Duration};

use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
use tokio::{
    net::TcpListener,
    sync::{Semaphore, watch},
};
use tracing::{debug, info, warn};

use crate::{
    error::Reject,
    metrics as m,
    service::Svc,
    settings::{Settings, SharedSettings},
    tls::ListenerTls,
};

/// How much of a request head the protocol layer takes before refusing it
/// itself: room beyond `server.max_header_bytes`, so that a head over the
/// limit reaches the service and gets the JSON 431.
fn head_room(max_header_bytes: usize) -> usize {
    max_header_bytes.saturating_add(64 * 1024)
}

/// A connection builder with the current settings (built per connection, so a
/// reload applies to the next connection).
fn builder(s: &Settings) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(s.server.header_read_timeout_ms)
        // hyper's own 431 has no body.
        .max_buf_size(head_room(s.server.max_header_bytes))
        .keep_alive(true);
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(s.server.http2_max_concurrent_streams)
        // The same room as HTTP/1's: h2's own 431 has no body either.
        .max_header_list_size(
            u32::try_from(head_room(s.server.max_header_bytes)).unwrap_or(u32::MAX),
        )
        .keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(10));
    b
}

/// Serves `listener` until `shutdown` resolves, then drains connections for
/// at most `shutdown_grace`. Returns true when every connection finished.
/// With `cores` (the serving threads' runtimes, [`crate::cores`]) each
/// connection is served on one of them; without, on the current runtime.
/// With `tls` the listener speaks TLS only.
///
/// Connections are served with upgrade support (WebSocket through the proxy),
/// so the drain is done here: each connection watches a shutdown signal and
/// shuts down gracefully on it, and the connection semaphore tells when the
/// last one is gone.
pub(crate) async fn serve(
    listener: TcpListener,
    svc: Svc,
    max_connections: usize,
    cores: &[tokio::runtime::Handle],
    settings: SharedSettings,
    tls: Option<ListenerTls>,
    shutdown: impl Future<Output = ()>,
) -> bool {
    let permits = Arc::new(Semaphore::new(max_connections));
    let (stop_tx, stop_rx) = watch::channel(false);
    let open = metrics::gauge!(m::CONNECTIONS_OPEN);
    let silent = metrics::counter!(m::CONNECTIONS_SILENT);
    let refused = metrics::counter!(m::CONNECTIONS_REFUSED);
    let mut backoff = Duration::from_millis(5);
    // Connections are dealt to the serving threads round-robin.
    let mut dealt = 0usize;
    let mut built = {
        let current = settings.load_full();
        let b = Arc::new(builder(&current));
        (current, b)
    };
    tokio::pin!(shutdown);
    loop {
        let permit = match permits.clone().try_acquire_owned() {
            Ok(p) => p,
            // At the cap: connections queue in the backlog for up to the
            // queue timeout; if no slot frees by then, waiting ones are
            // answered 503 and closed until one does.
            Err(_) => {
                let queue = settings.load().server.connection_queue_timeout_ms;
                let waited = tokio::select! {
                    p = permits.clone().acquire_owned() => p.ok(),
                    () = tokio::time::sleep(queue) => None,
                    () = &mut shutdown => break,
                };
                match waited {
                    Some(p) => p,
                    None => loop {
                        tokio::select! {
                            p = permits.clone().acquire_owned() => match p {
                                Ok(p) => break p,
                                Err(_) => return false,
                            },
                            r = listener.accept() => if let Ok((stream, _)) = r {
                                refused.increment(1);
                                tokio::spawn(refuse(stream, svc.connection_answer(&Reject::Overloaded)));
                            },
                            () = &mut shutdown => {
                                drop(listener);
                                return drain(stop_tx, permits, max_connections, &settings).await;
                            }
                        }
                    },
                }
            }
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(accepted) => {
                    backoff = Duration::from_millis(5);
                    accepted
                }
                Err(e) => {
                    warn!(error = %e, backoff_ms = backoff.as_millis() as u64, "accept failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let mut stop = stop_rx.clone();
        let current = settings.load_full();
        // One builder per settings in force, shared by their connections.
        if !Arc::ptr_eq(&current, &built.0) {
            built = (current.clone(), Arc::new(builder(&current)));
        }
        let builder = built.1.clone();
        let within = current.server.first_byte_timeout_ms;
        let handshake_timeout = current.server.header_read_timeout_ms;
        drop(current);
        let svc = svc.for_peer(peer);
        let open = open.clone();
        let silent = silent.clone();
        let (handle, stream) = if cores.is_empty() {
            (tokio::runtime::Handle::current(), Accepted::Tokio(stream))
        } else {
            dealt = dealt.wrapping_add(1);
            match stream.into_std() {
                Ok(s) => (cores[dealt % cores.len()].clone(), Accepted::Std(s)),
                Err(_) => continue,
            }
        };
        // One task type per protocol, each sized to its own state: a
        // plaintext connection's task carries no TLS state, a TLS one's
        // needs no box for it.
        match &tls {
            None => handle.spawn(async move {
                let _permit = permit;
                let Some((stream, _)) = first_byte(stream, within, &silent, &mut stop).await else {
                    return;
                };
                open.increment(1.0);
                let conn = std::pin::pin!(
                    builder.serve_connection_with_upgrades(TokioIo::new(stream), svc)
                );
                drive(conn, &mut stop).await;
                open.decrement(1.0);
            }),
            Some(config) => {
                let config = config.load_full();
                handle.spawn(async move {
                    let _permit = permit;
                    let Some((stream, first)) =
                        first_byte(stream, within, &silent, &mut stop).await
                    else {
                        return;
                    };
                    // A TLS connection opens with a handshake record; an
                    // upper-case letter is an HTTP method: a caller that
                    // wrote http:// for https:// is told so in words it
                    // can read, not with a TLS alert.
                    if first.is_ascii_uppercase() {
                        refuse(stream, svc.connection_answer(&Reject::HttpsRequired)).await;
                        return;
                    }
                    serve_tls(
                        &builder,
                        config,
                        stream,
                        svc,
                        &mut stop,
                        handshake_timeout,
                        &open,
                    )
                    .await;
                })
            }
        };
    }
    drop(listener);
    drain(stop_tx, permits, max_connections, &settings).await
}

/// Drives one connection's HTTP until it closes, or until `stop` asks it to
/// finish what it has in flight. The connection is pinned where its caller
/// built it: passed by value, its I/O state (a TLS stream is 1.2 KB) would
/// be held twice in the task.
async fn drive<I>(
    mut conn: Pin<&mut auto::UpgradeableConnection<'_, TokioIo<I>, Svc, TokioExecutor>>,
    stop: &mut watch::Receiver<bool>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = stop.changed() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        debug!(error = %e, "connection ended with an error");
    }
}

/// The TLS handshake, under the same deadline as an HTTP/1 head (a client
/// that opens TLS and stalls is closed like a plaintext one), then HTTP over
/// it: HTTP/2 or HTTP/1.1 as ALPN chose.
async fn serve_tls(
    builder: &auto::Builder<TokioExecutor>,
    config: Arc<rustls::ServerConfig>,
    stream: tokio::net::TcpStream,
    svc: Svc,
    stop: &mut watch::Receiver<bool>,
    handshake_timeout: Duration,
    open: &metrics::Gauge,
) {
    // The TLS stream goes straight into the connection: no second copy.
    let conn = std::pin::pin!(
        match handshake(config, stream, handshake_timeout, stop).await {
            Some(tls) => builder.serve_connection_with_upgrades(TokioIo::new(tls), svc),
            None => return,
        }
    );
    open.increment(1.0);
    drive(conn, stop).await;
    open.decrement(1.0);
}

/// The TLS handshake under `within`; `None` when it fails, times out, or
/// the server stops first.
async fn handshake(
    config: Arc<rustls::ServerConfig>,
    stream: tokio::net::TcpStream,
    within: Duration,
    stop: &mut watch::Receiver<bool>,
) -> Option<tokio_rustls::server::TlsStream<tokio::net::TcpStream>> {
    let accept = tokio_rustls::TlsAcceptor::from(config).accept(stream);
    tokio::select! {
        r = tokio::time::timeout(within, accept) => match r {
            Ok(Ok(stream)) => Some(stream),
            Ok(Err(e)) => {
                debug!(error = %e, "TLS handshake failed");
                None
            }
            Err(_) => {
                debug!("TLS handshake not finished in time; closing");
                None
            }
        },
        _ = stop.changed() => None,
    }
}

/// The socket on this thread's runtime and its first byte (peeked, still to
/// be read) once that arrives; `None` when it stays silent past `within`
/// (counted in `silent`), closes, or the server stops first.
async fn first_byte(
    stream: Accepted,
    within: Duration,
    silent: &metrics::Counter,
    stop: &mut watch::Receiver<bool>,
) -> Option<(tokio::net::TcpStream, u8)> {
    let stream = match stream {
        Accepted::Tokio(s) => s,
        Accepted::Std(s) => tokio::net::TcpStream::from_std(s).ok()?,
    };
    let mut probe = [0u8; 1];
    tokio::select! {
        r = tokio::time::timeout(within, stream.peek(&mut probe)) => match r {
            Ok(Ok(n)) if n > 0 => Some((stream, probe[0])),
            Ok(_) => None,
            Err(_) => {
                silent.increment(1);
                None
            }
        },
        _ = stop.changed() => None,
    }
}

/// An accepted connection, moved to another runtime as a std socket.
enum Accepted {
    Tokio(tokio::net::TcpStream),
    Std(std::net::TcpStream),
}

/// Answers a connection refused at the cap and closes it.
async fn refuse(mut stream: tokio::net::TcpStream, response: Vec<u8>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        stream.write_all(&response).await?;
        stream.shutdown().await?;
        // Read what the client sent before closing (a lingering close):
        // closing with unread data resets the connection, and the client
        // could lose the answer.
        let mut sink = [0u8; 4096];
        while stream.read(&mut sink).await? > 0 {}
        Ok::<_, std::io::Error>(())
    })
    .await;
}

/// Connections the metrics listener serves at once: scrapers and probes,
/// not callers.
const METRICS_CONNECTIONS: usize = 64;

/// Serves `server.metrics_listen` until `stop` turns true: `/metrics`,
/// `/healthz` and `/readyz` in plain HTTP/1.1 (anything else 404), on the
/// shared runtime, under a cap of its own, so probes and scrapes are
/// answered while the webhook listener is at its cap. It stays up through
/// the shutdown delay and the drain, so readiness is seen saying `stopping`.
pub(crate) async fn serve_metrics(
    listener: TcpListener,
    app: Arc<crate::app::App>,
    mut stop: watch::Receiver<bool>,
) {
    let permits = Arc::new(Semaphore::new(METRICS_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
            _ = stop.changed() => return,
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.changed() => return,
        };
        let (stream, _) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                debug!(error = %e, "metrics listener: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let (app, mut stop) = (app.clone(), stop.clone());
        let head_within = app.settings.load().server.header_read_timeout_ms;
        tokio::spawn(async move {
            let _permit = permit;
            let svc = hyper::service::service_fn(move |req| {
                let res = app.answer_metrics_listener(&req);
                std::future::ready(Ok::<_, std::convert::Infallible>(res))
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(head_within)
                .serve_connection(TokioIo::new(stream), svc);
            tokio::select! {
                _ = conn => {}
                _ = stop.changed() => {}
            }
        });
    }
}

/// Signals every connection to finish and waits up to the grace for them.
async fn drain(
    stop_tx: watch::Sender<bool>,
    permits: Arc<Semaphore>,
    max_connections: usize,
    settings: &SharedSettings,
) -> bool {
    info!("shutting down: draining connections");
    let _ = stop_tx.send(true);
    let all = u32::try_from(max_connections).unwrap_or(u32::MAX);
    let grace = settings.load().server.shutdown_grace_ms;
    match tokio::time::timeout(grace, permits.acquire_many(all)).await {
        Ok(_) => true,
        Err(_) => {
            warn!("shutdown grace elapsed with connections still open");
            false
        }
    }
}

//! Sidecar mode: every request the ingress does not answer itself goes to the
//! upstream backend, unchanged but for hop-by-hop headers.
//!
//! - Method, path and query are kept; the upstream's scheme and authority
//!   replace the request's. `Host` is kept (taken from `:authority` for h2).
//! - Hop-by-hop headers (RFC 9110 §7.6.1 plus every header named in
//!   `Connection`) are dropped both ways; `TE: trailers` is kept so trailers
//!   flow. The forwarding headers (`X-Forwarded-*`, `Forwarded`,
//!   `X-Real-IP`) are set by the one rule of `forwarded`: a trusted
//!   proxy's are kept and extended, anyone else's replaced.
//! - Bodies stream both ways frame by frame: nothing is buffered whole and
//!   there is no size cap. Trailers pass through.
//! - `Upgrade` requests (WebSocket) are forwarded with their upgrade headers;
//!   on `101` both connections are taken over and spliced until either closes.
//! - Keep-alive to the upstream with a connect timeout: each downstream
//!   connection has an upstream connection of its own ([`Lane`]), and a
//!   shared pool serves concurrent HTTP/2 streams and upgrades. No response
//!   head within the response timeout: 504; upstream unreachable: 502.
//! - An `https://` upstream is reached over TLS through the pool, its
//!   certificate verified against `upstream.ca_file` or the system's roots
//!   and its name against the URL's host (sent as SNI); one that does not
//!   verify gets 502, never an unverified connection.

use std::{net::SocketAddr, time::Duration};

use bytes::Bytes;
use http::{
    HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, Uri, Version,
    header::{
        CONNECTION, HOST, PROXY_AUTHENTICATE, PROXY_AUTHORIZATION, TE, TRANSFER_ENCODING, UPGRADE,
    },
    uri::{Authority, Scheme},
};
use http_body_util::{BodyExt, combinators::UnsyncBoxBody};
use hyper::{
    body::{Body, Incoming},
    client::conn::http1::SendRequest,
};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioIo},
};
use tracing::{debug, warn};

use crate::{
    error::Reject,
    forwarded,
    response::{REQUEST_ID, id_text},
    telemetry::Throttle,
};

/// Error type of bodies sent upstream.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Body type of requests sent upstream.
pub(crate) type UpstreamBody = UnsyncBoxBody<Bytes, BoxError>;

/// Hop-by-hop headers (RFC 9110 §7.6.1). `Trailer` is end-to-end and must
/// pass: hyper sends only the trailer fields it declares.
/// Names, not strings: a string key is parsed on every lookup.
const HOP_BY_HOP: [HeaderName; 7] = [
    CONNECTION,
    HeaderName::from_static("keep-alive"),
    PROXY_AUTHENTICATE,
    PROXY_AUTHORIZATION,
    TE,
    TRANSFER_ENCODING,
    UPGRADE,
];

/// Settings of the proxy.
#[derive(Debug, Clone)]
pub(crate) struct ProxySettings {
    /// Upstream base URL (`http://host:port`).
    pub url: Uri,
    /// Connect deadline.
    pub connect_timeout: Duration,
    /// True when the listener speaks TLS: `X-Forwarded-Proto: https`.
    pub downstream_tls: bool,
    /// TLS towards an `https://` upstream (its CA, or the system's roots).
    pub tls: Option<std::sync::Arc<rustls::ClientConfig>>,
}

/// The upstream's connection pool: plain TCP, or TLS for an `https://` one.
enum Pool {
    Plain(Client<HttpConnector, UpstreamBody>),
    Tls(Client<hyper_rustls::HttpsConnector<HttpConnector>, UpstreamBody>),
}

impl Pool {
    async fn request(
        &self,
        req: Request<UpstreamBody>,
    ) -> Result<Response<Incoming>, hyper_util::client::legacy::Error> {
        match self {
            Pool::Plain(client) => client.request(req).await,
            Pool::Tls(client) => client.request(req).await,
        }
    }
}

/// The pooled client in front of the upstream.
pub(crate) struct Proxy {
    client: Pool,
    /// Whether downstream connections get upstream connections of their own
    /// ([`Lane`]): plaintext upstreams only; an `https://` one is reached
    /// through the pool.
    lanes: bool,
    scheme: Scheme,
    authority: Authority,
    connect_timeout: Duration,
    /// Whether the listener speaks TLS (what `X-Forwarded-Proto` says).
    downstream_tls: bool,
}

/// One downstream connection's own keep-alive connection to the upstream.
///
/// An HTTP/1 downstream connection sends one request at a time, so its
/// requests go out on one upstream connection of its own: no pool lookup,
/// no lock held across an await (the sender is taken, then put back), no
/// hop through the pool's dispatch. A request that finds the lane busy (an
/// HTTP/2 connection's concurrent streams) or an upgrade goes through the
/// shared pool instead.
#[derive(Default)]
pub struct Lane(std::sync::Mutex<Option<SendRequest<UpstreamBody>>>);

impl Lane {
    fn take(&self) -> Option<SendRequest<UpstreamBody>> {
        self.0.lock().ok()?.take()
    }

    fn put(&self, sender: SendRequest<UpstreamBody>) {
        if let Ok(mut slot) = self.0.lock() {
            *slot = Some(sender);
        }
    }
}

/// Removes hop-by-hop headers, including those named in `Connection`.
/// Keeps `TE: trailers`, and the upgrade pair when `keep_upgrade`.
fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // Most messages carry none: one pass over the names, no removals.
    if !headers.keys().any(|n| HOP_BY_HOP.contains(n)) {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    let te_trailers = headers
        .get_all(TE)
        .iter()
        .any(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    let upgrade = keep_upgrade
        .then(|| headers.get(UPGRADE).cloned())
        .flatten();
    for name in named {
        headers.remove(name);
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    if te_trailers {
        headers.insert(TE, HeaderValue::from_static("trailers"));
    }
    if let Some(u) = upgrade {
        headers.insert(UPGRADE, u);
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

fn is_upgrade<B>(req: &Request<B>) -> bool {
    req.headers().contains_key(UPGRADE)
        && req
            .headers()
            .get_all(CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

// === impl Proxy ===

impl Proxy {
    /// Builds the client; the URL must be `http://host[:port]`, or
    /// `https://host[:port]` with `settings.tls`.
    pub(crate) fn new(settings: &ProxySettings) -> Option<Self> {
        let parts = settings.url.clone().into_parts();
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(settings.connect_timeout));
        connector.set_nodelay(true);
        let mut builder = Client::builder(TokioExecutor::new());
        builder.pool_idle_timeout(Duration::from_secs(60));
        let client = match &settings.tls {
            None => Pool::Plain(builder.build(connector)),
            Some(tls) => {
                connector.enforce_http(false);
                // The server is verified against `tls`'s roots and the
                // URL's host (also sent as SNI); never without.
                let https = hyper_rustls::HttpsConnectorBuilder::new()
                    .with_tls_config(tls.as_ref().clone())
                    .https_only()
                    .enable_http1()
                    .wrap_connector(connector);
                Pool::Tls(builder.build(https))
            }
        };
        Some(Self {
            client,
            lanes: settings.tls.is_none(),
            scheme: parts.scheme?,
            authority: parts.authority?,
            connect_timeout: settings.connect_timeout,
            downstream_tls: settings.downstream_tls,
        })
    }

    /// Forwards `req` from `peer` (`trusted`: a trusted proxy) and returns
    /// the upstream's answer. The request id goes along as `X-Request-Id`,
    /// so both sides log the same one.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn forward<B>(
        &self,
        mut req: Request<B>,
        peer: SocketAddr,
        trusted: bool,
        request_id: &HeaderValue,
        response_timeout: Duration,
        lane: Option<&Lane>,
    ) -> Result<Response<Incoming>, Reject>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let upgrade = is_upgrade(&req);
        // Taken before the request is consumed; resolves once we answer 101.
        let downstream_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
        let (mut parts, body) = req.into_parts();
        let host = parts.headers.get(HOST).cloned().or_else(|| {
            parts
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        });
        strip_hop_by_hop(&mut parts.headers, upgrade);
        if let Some(host) = &host {
            parts.headers.insert(HOST, host.clone());
        }
        forwarded::rewrite(
            &mut parts.headers,
            &forwarded::Hop {
                peer: peer.ip(),
                tls: self.downstream_tls,
                host: host.as_ref(),
                trusted,
            },
        );
        parts.headers.insert(REQUEST_ID, request_id.clone());
        let mut uri = Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone());
        if let Some(pq) = parts.uri.path_and_query() {
            uri = uri.path_and_query(pq.clone());
        }
        parts.uri = uri.build().map_err(|_| Reject::BadGateway)?;
        parts.version = Version::HTTP_11;
        let out = Request::from_parts(parts, body.map_err(Into::into).boxed_unsync());

        let sent = async {
            match lane {
                Some(lane) if !upgrade && self.lanes => self.via_lane(lane, out).await,
                _ => self.client.request(out).await.map_err(Into::into),
            }
        };
        // A backend that is down fails every forwarded request: one line a
        // second of each kind, the rest at debug level.
        static FAILED: Throttle = Throttle::new();
        static TIMED_OUT: Throttle = Throttle::new();
        let mut res = match tokio::time::timeout(response_timeout, sent).await {
            Err(_) => {
                match TIMED_OUT.admit() {
                    Some(held_back) => {
                        warn!(request_id = id_text(request_id), upstream = %self.authority, held_back, "upstream did not answer within upstream.response_timeout_ms; answering 504")
                    }
                    None => debug!(
                        request_id = id_text(request_id),
                        "upstream did not answer in time; answering 504"
                    ),
                }
                return Err(Reject::GatewayTimeout);
            }
            Ok(Err(e)) => {
                match FAILED.admit() {
                    Some(held_back) => {
                        warn!(request_id = id_text(request_id), upstream = %self.authority, error = %causes(&*e), held_back, "upstream request failed; answering 502")
                    }
                    None => {
                        debug!(request_id = id_text(request_id), error = %causes(&*e), "upstream request failed; answering 502")
                    }
                }
                return Err(Reject::BadGateway);
            }
            Ok(Ok(res)) => res,
        };
        if res.status() == StatusCode::SWITCHING_PROTOCOLS {
            if let Some(downstream) = downstream_upgrade {
                let upstream = hyper::upgrade::on(&mut res);
                let request_id = request_id.clone();
                tokio::spawn(async move {
                    match (downstream.await, upstream.await) {
                        (Ok(down), Ok(up)) => {
                            let _ = tokio::io::copy_bidirectional(
                                &mut TokioIo::new(down),
                                &mut TokioIo::new(up),
                            )
                            .await;
                        }
                        (d, u) => debug!(
                            request_id = id_text(&request_id),
                            down = d.is_ok(),
                            up = u.is_ok(),
                            "upgrade failed"
                        ),
                    }
                });
            }
            return Ok(res);
        }
        strip_hop_by_hop(res.headers_mut(), false);
        Ok(res)
    }
}

impl Proxy {
    /// Sends `req` on the lane's connection (opened on first use, reopened
    /// when the upstream closed it), or through the pool when the lane is
    /// busy.
    async fn via_lane(
        &self,
        lane: &Lane,
        mut req: Request<UpstreamBody>,
    ) -> Result<Response<Incoming>, BoxError> {
        // A connection of our own is sent the origin form (the pool makes
        // it from the absolute form itself); Host is already set.
        if let Some(pq) = req.uri().path_and_query().cloned() {
            *req.uri_mut() = Uri::from(pq);
        }
        if let Some(mut sender) = lane.take()
            && !sender.is_closed()
        {
            if !sender.is_ready() {
                // Another stream of this connection is using it.
                lane.put(sender);
                return Ok(self.client.request(req).await?);
            }
            match sender.try_send_request(req).await {
                Ok(res) => {
                    lane.put(sender);
                    return Ok(res);
                }
                // Not sent (the upstream closed the idle connection
                // first): send it on a fresh one.
                Err(mut e) => match e.take_message() {
                    Some(unsent) => req = unsent,
                    None => return Err(e.into_error().into()),
                },
            }
        }
        // Boxed: rare, and its connect and handshake would otherwise
        // grow every proxied request's future.
        let mut sender = Box::pin(self.open()).await?;
        let res = sender.send_request(req).await?;
        lane.put(sender);
        Ok(res)
    }

    /// Opens a keep-alive HTTP/1 connection to the upstream.
    async fn open(&self) -> Result<SendRequest<UpstreamBody>, BoxError> {
        let port = self
            .authority
            .port_u16()
            .unwrap_or(if self.scheme == Scheme::HTTPS {
                443
            } else {
                80
            });
        let addr = (self.authority.host(), port);
        let stream =
            tokio::time::timeout(self.connect_timeout, tokio::net::TcpStream::connect(addr))
                .await
                .map_err(|_| "upstream connect timed out")??;
        let _ = stream.set_nodelay(true);
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                debug!(error = %e, "upstream connection ended with an error");
            }
        });
        Ok(sender)
    }
}

/// An error and its causes, `outer: inner: innermost`: hyper's own text
/// ("client error (Connect)") does not say what failed.
fn causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let more = cause.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_are_dropped() {
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, HeaderValue::from_static("close, x-secret-hop"));
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        h.insert(TE, HeaderValue::from_static("trailers"));
        h.insert("x-end-to-end", HeaderValue::from_static("kept"));
        strip_hop_by_hop(&mut h, false);
        assert!(!h.contains_key(CONNECTION));
        assert!(!h.contains_key("x-secret-hop"));
        assert!(!h.contains_key("keep-alive"));
        assert!(!h.contains_key("transfer-encoding"));
        assert_eq!(h[TE], "trailers");
        assert_eq!(h["x-end-to-end"], "kept");
    }

    #[test]
    fn upgrade_pair_survives_when_asked() {
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(UPGRADE, HeaderValue::from_static("websocket"));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h[UPGRADE], "websocket");
        assert_eq!(h[CONNECTION], "upgrade");
    }
}

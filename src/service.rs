//! The hyper `Service`: routes a request, gives it its `X-Request-Id`,
//! counts and times it, and turns every [`Reject`] into its response in one
//! place.
//!
//! ```text
//! request → route (path, method) ─┬ webhook routes: webhook::handle(Workflow | Outreach)
//!                                 ├ /healthz, /readyz, /metrics: answered here
//!                                 └ anything else: the upstream (proxy), or 404
//!         → refusal → JSON envelope; request id set; counted → response
//! ```

use std::{
    convert::Infallible, future::Future, net::SocketAddr, pin::Pin, sync::Arc, time::Instant,
};

use bytes::Bytes;
use http::{
    HeaderValue, Method, Request, Response, StatusCode, Version,
    header::{ALLOW, CACHE_CONTROL, CONNECTION, CONTENT_TYPE, RETRY_AFTER},
};
use http_body_util::Either;
use hyper::body::Incoming;
use metrics::Gauge;
use tracing::{debug, warn};

use crate::{
    app::{App, Waiting},
    error::Reject,
    forwarded,
    metrics::{self as m, Route},
    outreach::Outreach,
    proxy::{BoxError, Lane},
    response::{REQUEST_ID, ResponseBody, full, id_text, json},
    telemetry::Throttle,
    webhook,
    workflow::Workflow,
};

/// Path of the workflow webhook.
pub(crate) const WORKFLOW_PATH: &str = "/api/webhook/workflow";
/// Path of the outreach webhook.
pub(crate) const OUTREACH_PATH: &str = "/api/webhook/outreach";

/// The route of a request. The webhook paths match as Express matches
/// them by default: one trailing `/` and any ASCII case
/// (`/API/Webhook/Workflow/`). Health, readiness and metrics answer only
/// their read methods; any other method on those paths is the upstream's,
/// like every path that is not the ingress's own.
fn route_of<B>(req: &Request<B>) -> Route {
    let path = req.uri().path();
    let read = matches!(*req.method(), Method::GET | Method::HEAD);
    let path = path.strip_suffix('/').unwrap_or(path);
    match path {
        WORKFLOW_PATH => Route::Workflow,
        OUTREACH_PATH => Route::Outreach,
        "/healthz" if read => Route::Health,
        "/readyz" if read => Route::Ready,
        "/metrics" if *req.method() == Method::GET => Route::Metrics,
        _ if path.eq_ignore_ascii_case(WORKFLOW_PATH) => Route::Workflow,
        _ if path.eq_ignore_ascii_case(OUTREACH_PATH) => Route::Outreach,
        _ => Route::Other,
    }
}

/// Approximate size of the request head as sent (request line and header
/// lines); hyper's own buffer is larger, so the limit is answered here with
/// the contract's JSON envelope.
fn head_size<B>(req: &Request<B>) -> usize {
    let line = req.method().as_str().len()
        + req.uri().path_and_query().map_or(1, |p| p.as_str().len())
        + 12;
    req.headers()
        .iter()
        .fold(line, |n, (k, v)| n + k.as_str().len() + v.len() + 4)
}

/// Counts a request in flight until dropped (also when the caller goes away).
struct InFlight<'a>(&'a Gauge);

impl<'a> InFlight<'a> {
    fn enter(g: &'a Gauge) -> Self {
        g.increment(1.0);
        Self(g)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

// === impl App ===

impl App {
    /// Answers one request from `peer`; never fails (errors become responses here).
    pub async fn call(
        &self,
        req: Request<Incoming>,
        peer: SocketAddr,
        lane: &Lane,
    ) -> Response<ResponseBody> {
        self.dispatch_on(req, peer, Some(lane)).await
    }

    /// Generic over the body so tests and benchmarks can call it without a socket.
    pub async fn dispatch<B>(&self, req: Request<B>, peer: SocketAddr) -> Response<ResponseBody>
    where
        B: hyper::body::Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<BoxError>,
    {
        self.dispatch_on(req, peer, None).await
    }

    /// [`App::dispatch`] with the connection's own upstream lane, if any.
    async fn dispatch_on<B>(
        &self,
        req: Request<B>,
        peer: SocketAddr,
        lane: Option<&Lane>,
    ) -> Response<ResponseBody>
    where
        B: hyper::body::Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<BoxError>,
    {
        let route = route_of(&req);
        // With an upstream, whatever the ingress does not serve is the
        // upstream's: on a webhook path, every method but POST (a browser's
        // CORS preflight, say), as the contract's "every other request".
        let upstreams = || {
            matches!(route, Route::Workflow | Route::Outreach)
                && req.method() != Method::POST
                && self.proxy.is_some()
        };
        if route == Route::Other || upstreams() {
            // Boxed: inline, the proxy's future would grow every
            // request's future (webhooks included) to its size.
            return Box::pin(self.proxied(req, peer, lane)).await;
        }
        let started = Instant::now();
        let request_id = self.request_ids.for_request(req.headers());
        let (head_limit, client) = {
            let settings = self.settings.load();
            let limit = settings.server.max_header_bytes;
            (limit, self.client_for_log(&req, peer, &settings))
        };
        let result = match (route, req.method()) {
            _ if head_size(&req) > head_limit => Err(Reject::HeadersTooLarge),
            // One line per webhook route.
            (Route::Workflow, &Method::POST) => {
                let _in_flight = InFlight::enter(&self.metrics.in_flight);
                webhook::handle(self, &Workflow, req, &request_id, peer).await
            }
            (Route::Outreach, &Method::POST) => {
                let _in_flight = InFlight::enter(&self.metrics.in_flight);
                webhook::handle(self, &Outreach, req, &request_id, peer).await
            }
            (Route::Workflow | Route::Outreach, _) => Err(Reject::MethodNotAllowed),
            // Not shown on the port callers reach, nor forwarded: the
            // upstream's own metrics are not the callers' either.
            // (`metrics_listen` needs a restart: the value in force is the
            // one the listener was bound with.)
            (Route::Metrics, _) if self.settings.load().server.metrics_listen.is_some() => {
                Err(Reject::NotFound)
            }
            (Route::Health | Route::Ready | Route::Metrics, _) => Ok(self.own_answer(route)),
            // Answered by `proxied` above.
            (Route::Other, _) => Err(Reject::NotFound),
        };
        self.finish(route, started, request_id, client, result)
    }

    /// The answer to the ingress's own read-only routes.
    fn own_answer(&self, route: Route) -> Response<ResponseBody> {
        match route {
            Route::Ready => self.readiness(),
            Route::Metrics => self.render_metrics(),
            _ => json(StatusCode::OK, Bytes::from_static(br#"{"status":"ok"}"#)),
        }
    }

    /// Answers a request on the metrics listener (`server.metrics_listen`):
    /// `/metrics`, `/healthz` and `/readyz` as on the webhook listener,
    /// anything else 404.
    pub(crate) fn answer_metrics_listener<B>(&self, req: &Request<B>) -> Response<ResponseBody> {
        let started = Instant::now();
        let request_id = self.request_ids.for_request(req.headers());
        let (route, result) = match route_of(req) {
            own @ (Route::Health | Route::Ready | Route::Metrics) => {
                (own, Ok(self.own_answer(own)))
            }
            _ => (Route::Other, Err(Reject::NotFound)),
        };
        self.finish(route, started, request_id, None, result)
    }

    /// The caller's address for the request log line (by the trusted
    /// proxies rule), found only when that line is written.
    fn client_for_log<B>(
        &self,
        req: &Request<B>,
        peer: SocketAddr,
        settings: &crate::settings::Settings,
    ) -> Option<std::net::IpAddr> {
        tracing::enabled!(tracing::Level::DEBUG)
            .then(|| forwarded::client(req.headers(), peer.ip(), &settings.server.trusted_proxies))
    }

    /// A request for the upstream (any path but the ingress's own).
    async fn proxied<B>(
        &self,
        req: Request<B>,
        peer: SocketAddr,
        lane: Option<&Lane>,
    ) -> Response<ResponseBody>
    where
        B: hyper::body::Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<BoxError>,
    {
        let started = Instant::now();
        let request_id = self.request_ids.for_request(req.headers());
        let settings = self.settings.load();
        let client = self.client_for_log(&req, peer, &settings);
        let result = match &self.proxy {
            _ if head_size(&req) > settings.server.max_header_bytes => Err(Reject::HeadersTooLarge),
            Some(proxy) => {
                let timeout = settings.upstream.response_timeout_ms;
                let trusted = settings.server.trusted_proxies.contains(peer.ip());
                drop(settings);
                proxy
                    .forward(req, peer, trusted, &request_id, timeout, lane)
                    .await
                    .map(|r| r.map(Either::Right))
            }
            None => Err(Reject::NotFound),
        };
        self.finish(Route::Other, started, request_id, client, result)
    }

    /// Turns a route's result into the response: refusals answered in one
    /// place, the request id set, the request counted and logged.
    fn finish(
        &self,
        route: Route,
        started: Instant,
        request_id: HeaderValue,
        client: Option<std::net::IpAddr>,
        result: Result<Response<ResponseBody>, Reject>,
    ) -> Response<ResponseBody> {
        let mut res = match result {
            Ok(res) => res,
            Err(reject) => self.refuse(&reject, &request_id),
        };
        // A replayed idempotent answer keeps the first request's id.
        if !res.headers().contains_key(REQUEST_ID) {
            res.headers_mut().insert(REQUEST_ID, request_id);
        }
        self.metrics.record(route, res.status(), started);
        // One line per request, at debug only; no query string (it may hold tokens).
        debug!(
            request_id = res.headers().get(REQUEST_ID).map_or("", id_text),
            route = route.label(),
            client = client.map(tracing::field::display),
            status = res.status().as_u16(),
            micros = started.elapsed().as_micros() as u64,
            "request"
        );
        res
    }

    /// The one place a refusal becomes a response.
    fn refuse(&self, reject: &Reject, request_id: &HeaderValue) -> Response<ResponseBody> {
        // During an outage every request is refused: one line a second of
        // each kind says so, the rest go to debug (the metrics count all).
        static UNAVAILABLE: Throttle = Throttle::new();
        static UNCONFIRMED: Throttle = Throttle::new();
        match reject {
            Reject::Unavailable(cause) => match UNAVAILABLE.admit() {
                Some(held_back) => {
                    warn!(request_id = id_text(request_id), error = %cause, held_back, "jobs not stored; answering 503")
                }
                None => {
                    debug!(request_id = id_text(request_id), error = %cause, "jobs not stored; answering 503")
                }
            },
            Reject::Unconfirmed(cause) => match UNCONFIRMED.admit() {
                Some(held_back) => warn!(
                    request_id = id_text(request_id),
                    error = %cause,
                    held_back,
                    "jobs sent but not confirmed; answering 503"
                ),
                None => {
                    debug!(request_id = id_text(request_id), error = %cause, "jobs sent but not confirmed; answering 503")
                }
            },
            other => debug!(
                request_id = id_text(request_id),
                code = other.code(),
                "request refused"
            ),
        }
        metrics::counter!(m::HTTP_REJECTS, "code" => reject.code()).increment(1);
        let mut res = json(
            reject.status(),
            Bytes::from_static(reject.body().as_bytes()),
        );
        if let Reject::RateLimited { retry_after_secs } = reject {
            res.headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(*retry_after_secs));
        } else if reject.retry_after() {
            res.headers_mut()
                .insert(RETRY_AFTER, self.settings.load().retry_after.clone());
        }
        if matches!(reject, Reject::MethodNotAllowed) {
            res.headers_mut()
                .insert(ALLOW, HeaderValue::from_static("POST"));
        }
        res
    }

    /// While the instance is stopping, an HTTP/1 answer closes its
    /// connection (hyper honours `Connection: close`), so a client's next
    /// request opens a connection the balancer sends elsewhere. An HTTP/2
    /// connection is told by the drain's GOAWAY, which names the last
    /// stream served; a switch of protocols keeps its connection.
    fn closing(&self, mut res: Response<ResponseBody>, http1: bool) -> Response<ResponseBody> {
        if http1 && self.is_stopping() && res.status() != StatusCode::SWITCHING_PROTOCOLS {
            res.headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
        }
        res
    }

    fn readiness(&self) -> Response<ResponseBody> {
        let body: &'static [u8] = match self.waiting_for() {
            // A balancer still sending here learns to stop before the drain.
            _ if self.is_stopping() => br#"{"status":"stopping"}"#,
            None => return json(StatusCode::OK, Bytes::from_static(br#"{"status":"ready"}"#)),
            Some(Waiting::Caches) => br#"{"status":"loading","waiting_for":"caches"}"#,
            Some(Waiting::JobWriter) => br#"{"status":"loading","waiting_for":"job_writer"}"#,
        };
        let mut res = json(StatusCode::SERVICE_UNAVAILABLE, Bytes::from_static(body));
        res.headers_mut()
            .insert(RETRY_AFTER, self.settings.load().retry_after.clone());
        res
    }

    fn render_metrics(&self) -> Response<ResponseBody> {
        metrics::gauge!(m::REPLICA_AGE).set(self.replica.out_of_touch_for().as_secs_f64());
        metrics::gauge!(m::FAIL_CLOSED).set(
            match self.settings.load().auth.fail_closed_after_secs {
                Some(limit) if self.replica.out_of_touch_for() > limit => 1.0,
                _ => 0.0,
            },
        );
        let text = m::render(self.prometheus.as_ref());
        let mut res = Response::new(full(Bytes::from(text)));
        res.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        );
        res.headers_mut()
            .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        res
    }
}

// === impl Svc ===

/// Per-connection service handle: one `Arc` clone and the peer's address.
#[derive(Clone)]
pub(crate) struct Svc {
    app: Arc<App>,
    peer: SocketAddr,
    lane: Arc<Lane>,
}

impl Svc {
    /// A handle not yet bound to a connection.
    pub(crate) fn new(app: Arc<App>) -> Self {
        Self {
            app,
            peer: SocketAddr::from(([0, 0, 0, 0], 0)),
            lane: Arc::default(),
        }
    }

    /// The handle for a connection from `peer`.
    pub(crate) fn for_peer(&self, peer: SocketAddr) -> Self {
        Self {
            app: self.app.clone(),
            peer,
            lane: Arc::default(),
        }
    }
}

impl Svc {
    /// A complete HTTP/1.1 answer for a connection refused before hyper
    /// sees it: `OVERLOADED` at the connection cap, `HTTPS_REQUIRED` for
    /// plain HTTP on a TLS listener.
    pub(crate) fn connection_answer(&self, reject: &Reject) -> Vec<u8> {
        metrics::counter!(m::HTTP_REJECTS, "code" => reject.code()).increment(1);
        let id = self.app.request_ids.for_request(&http::HeaderMap::new());
        let status = reject.status();
        let body = reject.body();
        let mut out = Vec::with_capacity(256 + body.len());
        out.extend_from_slice(
            format!(
                "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\nconnection: close",
                status.as_str(),
                status.canonical_reason().unwrap_or_default()
            )
            .as_bytes(),
        );
        if reject.retry_after() {
            let retry = self.app.settings.load().retry_after.clone();
            out.extend_from_slice(b"\r\nretry-after: ");
            out.extend_from_slice(retry.as_bytes());
        }
        out.extend_from_slice(b"\r\nx-request-id: ");
        out.extend_from_slice(id.as_bytes());
        out.extend_from_slice(format!("\r\ncontent-length: {}\r\n\r\n", body.len()).as_bytes());
        out.extend_from_slice(body.as_bytes());
        out
    }
}

impl hyper::service::Service<Request<Incoming>> for Svc {
    type Response = Response<ResponseBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let (app, peer, lane) = (self.app.clone(), self.peer, self.lane.clone());
        let http1 = req.version() < Version::HTTP_2;
        // Proxied requests get a future of their own size (one box, not the
        // webhook routes' larger future around the proxy's).
        if route_of(&req) == Route::Other {
            Box::pin(async move {
                let res = app.proxied(req, peer, Some(&lane)).await;
                Ok(app.closing(res, http1))
            })
        } else {
            Box::pin(async move {
                let res = app.call(req, peer, &lane).await;
                Ok(app.closing(res, http1))
            })
        }
    }
}

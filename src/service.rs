//! The hyper `Service`: routes a request, times it, counts it, and turns every
//! [`Reject`] into its response in one place. Every response carries
//! `X-Request-Id`.

use std::{
    convert::Infallible, future::Future, net::SocketAddr, pin::Pin, sync::Arc, time::Instant,
};

use bytes::Bytes;
use http::{
    HeaderValue, Method, Request, Response, StatusCode,
    header::{ALLOW, CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER},
};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use metrics::{Counter, Gauge, Histogram};
use metrics_exporter_prometheus::PrometheusHandle;
use tracing::{debug, info, warn};

use crate::{
    auth::{Authenticator, Credential},
    config::Config,
    error::Reject,
    metrics as m,
    outreach::{OrgProperties, OutreachConfigs},
    proxy::{BoxError, Lane, Proxy},
    replica::ReplicaStatus,
    response::{REQUEST_ID, RequestIds},
    route::WebhookIndex,
    settings::{Settings, SharedSettings, restart_needed},
    sink::Sink,
    webhook::{self, Kind},
};

/// Response body type of every route: the ingress's own, or the upstream's streamed.
pub type ResponseBody = Either<Full<Bytes>, Incoming>;

/// Path of the workflow webhook.
pub const WORKFLOW_PATH: &str = "/api/webhook/workflow";
/// Path of the outreach webhook.
pub const OUTREACH_PATH: &str = "/api/webhook/outreach";

/// Status labels with a pre-registered counter; anything else is "other".
const STATUSES: [u16; 16] = [
    200, 202, 400, 401, 404, 405, 408, 409, 413, 422, 429, 431, 500, 502, 503, 504,
];

/// Metric handles registered once, incremented on the hot path.
pub struct Handles {
    /// Requests by route × status (last column: other statuses).
    requests: Vec<[Counter; STATUSES.len() + 1]>,
    /// Latency by route.
    durations: Vec<Histogram>,
    /// Time for one request's jobs to be acknowledged.
    pub sink_duration: Histogram,
    /// Entries written for one request.
    pub sink_batch: Histogram,
    /// Entries written to the workflow stream.
    pub jobs_workflow: Counter,
    /// Entries written to the outreach stream.
    pub jobs_outreach: Counter,
    /// Webhook requests being handled.
    pub in_flight: Gauge,
}

/// Everything a request needs, shared by all connections.
pub struct App {
    /// Bearer → principal.
    pub auth: Authenticator,
    /// (org, webhookId) → workflows.
    pub triggers: Arc<WebhookIndex>,
    /// Outreach configurations.
    pub outreach_configs: Arc<OutreachConfigs>,
    /// Org dynamic properties.
    pub org_properties: Arc<OrgProperties>,
    /// Job writer.
    pub sink: Sink,
    /// Readiness and staleness of the caches.
    pub replica: Arc<ReplicaStatus>,
    /// Reloadable settings (limits, timeouts, streams, JWT secret).
    pub settings: SharedSettings,
    /// The configuration the process started with (for reload checks).
    pub boot: Config,
    /// Request id issuer.
    pub request_ids: RequestIds,
    /// Metric handles.
    pub metrics: Handles,
    /// Prometheus renderer, when this process owns the recorder.
    pub prometheus: Option<PrometheusHandle>,
    /// Sidecar upstream, when configured.
    pub proxy: Option<Proxy>,
}

/// Which route a request took: a bounded metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Workflow,
    Outreach,
    Health,
    Ready,
    Metrics,
    Other,
}

/// Wraps the ingress's own body.
pub fn full(body: Bytes) -> ResponseBody {
    Either::Left(Full::new(body))
}

impl Route {
    const ALL: [Route; 6] = [
        Route::Workflow,
        Route::Outreach,
        Route::Health,
        Route::Ready,
        Route::Metrics,
        Route::Other,
    ];

    fn index(self) -> usize {
        self as usize
    }

    fn label(self) -> &'static str {
        match self {
            Route::Workflow => "workflow",
            Route::Outreach => "outreach",
            Route::Health => "healthz",
            Route::Ready => "readyz",
            Route::Metrics => "metrics",
            Route::Other => "proxy",
        }
    }

    /// The route of a request. Health, readiness and metrics answer only
    /// their read methods; any other method on those paths is the
    /// upstream's, like every path that is not the ingress's own.
    fn of<B>(req: &Request<B>) -> Self {
        let path = req.uri().path();
        let read = matches!(*req.method(), Method::GET | Method::HEAD);
        match path.strip_suffix('/').unwrap_or(path) {
            WORKFLOW_PATH => Route::Workflow,
            OUTREACH_PATH => Route::Outreach,
            "/healthz" if read => Route::Health,
            "/readyz" if read => Route::Ready,
            "/metrics" if *req.method() == Method::GET => Route::Metrics,
            _ => Route::Other,
        }
    }
}

fn status_label(s: u16) -> &'static str {
    match s {
        200 => "200",
        202 => "202",
        400 => "400",
        401 => "401",
        404 => "404",
        405 => "405",
        408 => "408",
        409 => "409",
        413 => "413",
        422 => "422",
        429 => "429",
        431 => "431",
        500 => "500",
        502 => "502",
        503 => "503",
        504 => "504",
        _ => "other",
    }
}

// === impl Handles ===

impl Handles {
    /// Registers every handle with the installed recorder.
    pub fn register() -> Self {
        let requests = Route::ALL
            .iter()
            .map(|r| {
                std::array::from_fn(|i| {
                    let status = STATUSES.get(i).map_or("other", |s| status_label(*s));
                    metrics::counter!(m::HTTP_REQUESTS, "route" => r.label(), "status" => status)
                })
            })
            .collect();
        let durations = Route::ALL
            .iter()
            .map(|r| metrics::histogram!(m::HTTP_DURATION, "route" => r.label()))
            .collect();
        Self {
            requests,
            durations,
            sink_duration: metrics::histogram!(m::SINK_DURATION),
            sink_batch: metrics::histogram!(m::SINK_BATCH),
            jobs_workflow: metrics::counter!(m::JOBS_WRITTEN, "stream" => "workflow"),
            jobs_outreach: metrics::counter!(m::JOBS_WRITTEN, "stream" => "outreach"),
            in_flight: metrics::gauge!(m::HTTP_IN_FLIGHT),
        }
    }

    fn record(&self, route: Route, status: StatusCode, started: Instant) {
        let column = STATUSES
            .iter()
            .position(|s| *s == status.as_u16())
            .unwrap_or(STATUSES.len());
        if let Some(row) = self.requests.get(route.index()) {
            row[column].increment(1);
        }
        if let Some(h) = self.durations.get(route.index()) {
            h.record(started.elapsed().as_secs_f64());
        }
    }
}

/// A JSON response with the ingress's own body.
pub fn json(status: StatusCode, body: Bytes) -> Response<ResponseBody> {
    let mut res = Response::new(full(body));
    *res.status_mut() = status;
    res.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    res
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
        let route = Route::of(&req);
        if route == Route::Other {
            // Boxed: inline, the proxy's future would grow every
            // request's future (webhooks included) to its size.
            return Box::pin(self.proxied(req, peer, lane)).await;
        }
        let started = Instant::now();
        let request_id = self.request_ids.for_request(req.headers());
        let head_limit = self.settings.load().max_header_bytes;
        let result = match (route, req.method()) {
            _ if head_size(&req) > head_limit => Err(Reject::HeadersTooLarge),
            (Route::Workflow, &Method::POST) => {
                let _in_flight = InFlight::enter(&self.metrics.in_flight);
                webhook::handle(self, Kind::Workflow, req, &request_id, peer).await
            }
            (Route::Outreach, &Method::POST) => {
                let _in_flight = InFlight::enter(&self.metrics.in_flight);
                webhook::handle(self, Kind::Outreach, req, &request_id, peer).await
            }
            (Route::Workflow | Route::Outreach, _) => Err(Reject::MethodNotAllowed),
            (Route::Health, _) => Ok(json(
                StatusCode::OK,
                Bytes::from_static(br#"{"status":"ok"}"#),
            )),
            (Route::Ready, _) => Ok(self.readiness()),
            (Route::Metrics, _) => Ok(self.render_metrics()),
            // Answered by `proxied` above.
            (Route::Other, _) => Err(Reject::NotFound),
        };
        self.finish(route, started, request_id, result)
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
        let result = match &self.proxy {
            _ if head_size(&req) > settings.max_header_bytes => Err(Reject::HeadersTooLarge),
            Some(proxy) => {
                let timeout = settings.upstream_response_timeout;
                drop(settings);
                proxy
                    .forward(req, peer, &request_id, timeout, lane)
                    .await
                    .map(|r| r.map(Either::Right))
            }
            None => Err(Reject::NotFound),
        };
        self.finish(Route::Other, started, request_id, result)
    }

    /// Turns a route's result into the response: refusals answered in one
    /// place, the request id set, the request counted and logged.
    fn finish(
        &self,
        route: Route,
        started: Instant,
        request_id: HeaderValue,
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
            request_id = ?res.headers().get(REQUEST_ID),
            route = route.label(),
            status = res.status().as_u16(),
            micros = started.elapsed().as_micros() as u64,
            "request"
        );
        res
    }

    /// The one place a refusal becomes a response.
    fn refuse(&self, reject: &Reject, request_id: &HeaderValue) -> Response<ResponseBody> {
        match reject {
            Reject::Unavailable(cause) => {
                warn!(?request_id, error = %cause, "jobs not stored; answering 503")
            }
            other => debug!(?request_id, code = other.code(), "request refused"),
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

    /// Applies a reloaded configuration: swaps the reloadable settings and
    /// names those that need a restart. Requests in flight keep the settings
    /// they started with.
    pub fn reload(&self, new: &Config) {
        self.settings.store(Arc::new(Settings::from_config(new)));
        let restart = restart_needed(&self.boot, new);
        if restart.is_empty() {
            info!("configuration reloaded");
        } else {
            warn!(
                needs_restart = %restart.join(", "),
                "configuration reloaded; these settings keep their old values until a restart"
            );
        }
    }

    /// Authenticates a webhook request with the current settings. Before the
    /// first load an unknown key may simply not be loaded yet: 503, not 401.
    pub fn authenticate(
        &self,
        headers: &http::HeaderMap,
        settings: &Settings,
    ) -> Result<Credential, Reject> {
        match self.auth.authenticate(headers, settings.jwt.as_ref()) {
            Err(Reject::InvalidKey) if !self.is_ready() => Err(Reject::NotReady),
            // Fail closed: a key revoked while the replica was out of touch
            // with Redis must not keep working.
            Ok(Credential::ApiKey(_))
                if settings
                    .fail_closed_after
                    .is_some_and(|limit| self.replica.out_of_touch_for() > limit) =>
            {
                Err(Reject::AuthStale)
            }
            other => other,
        }
    }

    /// Ready once the caches are loaded and the job writer has connected.
    pub fn is_ready(&self) -> bool {
        self.replica.is_ready() && self.sink.has_connected()
    }

    fn readiness(&self) -> Response<ResponseBody> {
        if self.is_ready() {
            json(StatusCode::OK, Bytes::from_static(br#"{"status":"ready"}"#))
        } else {
            let mut res = json(
                StatusCode::SERVICE_UNAVAILABLE,
                Bytes::from_static(br#"{"status":"loading"}"#),
            );
            res.headers_mut()
                .insert(RETRY_AFTER, self.settings.load().retry_after.clone());
            res
        }
    }

    fn render_metrics(&self) -> Response<ResponseBody> {
        metrics::gauge!(m::REPLICA_AGE).set(self.replica.out_of_touch_for().as_secs_f64());
        metrics::gauge!(m::FAIL_CLOSED).set(match self.settings.load().fail_closed_after {
            Some(limit) if self.replica.out_of_touch_for() > limit => 1.0,
            _ => 0.0,
        });
        let text = self
            .prometheus
            .as_ref()
            .map(PrometheusHandle::render)
            .unwrap_or_default();
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
pub struct Svc {
    app: Arc<App>,
    peer: SocketAddr,
    lane: Arc<Lane>,
}

impl Svc {
    /// A handle not yet bound to a connection.
    pub fn new(app: Arc<App>) -> Self {
        Self {
            app,
            peer: SocketAddr::from(([0, 0, 0, 0], 0)),
            lane: Arc::default(),
        }
    }

    /// The handle for a connection from `peer`.
    pub fn for_peer(&self, peer: SocketAddr) -> Self {
        Self {
            app: self.app.clone(),
            peer,
            lane: Arc::default(),
        }
    }
}

impl Svc {
    /// A complete HTTP/1.1 503 answer (`OVERLOADED`), for a connection
    /// refused at the connection cap before hyper sees it.
    pub fn overloaded_response(&self) -> Vec<u8> {
        let reject = Reject::Overloaded;
        metrics::counter!(m::HTTP_REJECTS, "code" => reject.code()).increment(1);
        let id = self.app.request_ids.for_request(&http::HeaderMap::new());
        let retry = self.app.settings.load().retry_after.clone();
        let body = reject.body();
        let mut out = Vec::with_capacity(256 + body.len());
        out.extend_from_slice(b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nconnection: close\r\nretry-after: ");
        out.extend_from_slice(retry.as_bytes());
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
        // Proxied requests get a future of their own size (one box, not the
        // webhook routes' larger future around the proxy's).
        if Route::of(&req) == Route::Other {
            Box::pin(async move { Ok(app.proxied(req, peer, Some(&lane)).await) })
        } else {
            Box::pin(async move { Ok(app.call(req, peer, &lane).await) })
        }
    }
}

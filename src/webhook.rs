//! What both webhook routes share, and the seam a route plugs into.
//!
//! A route implements [`Webhook`]: its name, whether it takes API keys only,
//! and [`Webhook::accept`], its own work on an authenticated body. [`handle`]
//! runs the shared stages around it, cheapest refusal first:
//!
//! ```text
//! auth (API key or JWT; fail-closed check) → ready? → rate limit (per key)
//! → Idempotency-Key header checked → body (capped, deadline)
//! → key claimed in Redis, if one was sent → route's accept → answer
//! ```
//! A bad key costs a hash and a lookup, and never reaches Redis or the body.
//! A new route that writes the jobs of an existing kind is one module
//! implementing [`Webhook`] and one line in the service's dispatch. A route
//! with a job kind of its own also needs its record (`sink::job`), its
//! stream entry and BullMQ job layouts (`sink::streams`, `sink::bullmq`),
//! their spool encodings and replay (`sink::fallback`), its stream and
//! queue settings (`config`), its metrics, its OpenAPI entry and the
//! tests of each: about a dozen files.

use std::{future::Future, net::SocketAddr};

use bytes::{Bytes, BytesMut};
use http::{HeaderValue, Request, StatusCode};
use http_body_util::Either;
use hyper::body::Body;

use crate::{
    app::App,
    auth::{Credential, Principal},
    body::{decoded, read_limited},
    error::Reject,
    idempotency::{self, Answer, Begin},
    limit,
    proxy::BoxError,
    response::{ResponseBody, json},
    settings::Settings,
};

/// A webhook route: what differs between them.
pub(crate) trait Webhook: Sync {
    /// Its name: the idempotency namespace of its keys.
    fn name(&self) -> &'static str;

    /// True when it takes API keys only (a JWT gets 401); otherwise a
    /// verified JWT is accepted too, and an unverifiable one goes upstream.
    fn api_keys_only(&self) -> bool;

    /// Does the route's work on an authenticated request's body; returns
    /// the status and body to send.
    fn accept(
        &self,
        ctx: &Ctx<'_>,
        body: BytesMut,
    ) -> impl Future<Output = Result<(StatusCode, Bytes), Reject>> + Send;
}

/// What a route's work may use: the shared state, who is asking, the
/// request's id and the settings it started with.
pub(crate) struct Ctx<'a> {
    /// The shared state (replica views, sink, metrics).
    pub app: &'a App,
    /// The caller.
    pub principal: &'a Principal,
    /// `X-Request-Id` of the request.
    pub request_id: &'a HeaderValue,
    /// The settings loaded once for this request.
    pub settings: &'a Settings,
}

/// Header marking an answer replayed for a repeated Idempotency-Key.
pub(crate) const REPLAYED: &str = "idempotent-replayed";

/// Runs `route` on a request and returns the response to send (the request
/// id is added by the service, unless a replayed answer carries its own).
pub(crate) async fn handle<W, B>(
    app: &App,
    route: &W,
    req: Request<B>,
    request_id: &HeaderValue,
    peer: SocketAddr,
) -> Result<http::Response<ResponseBody>, Reject>
where
    W: Webhook,
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    let settings = app.settings.load();
    let principal = match app.authenticate(req.headers(), &settings)? {
        Credential::ApiKey(p) => p,
        Credential::Jwt(_) | Credential::UnverifiedJwt if route.api_keys_only() => {
            return Err(Reject::ApiKeyRequired);
        }
        Credential::Jwt(p) => p,
        // A JWT with no secret configured goes to the upstream unchanged
        // (the backend decides), or is refused when there is none either.
        Credential::UnverifiedJwt => {
            return match &app.proxy {
                // Boxed, like every path off the hot one: an inline future
                // would grow every request's future to its size.
                Some(proxy) => Box::pin(proxy.forward(
                    req,
                    peer,
                    settings.server.trusted_proxies.contains(peer.ip()),
                    request_id,
                    settings.upstream.response_timeout_ms,
                    None,
                ))
                .await
                .map(|r| r.map(Either::Right)),
                None => Err(Reject::JwtNotAccepted),
            };
        }
    };
    if !app.is_ready() {
        return Err(Reject::NotReady);
    }
    rate_limit(app, &principal, &settings).await?;
    let idempotency_key = idempotency::redis_key(
        req.headers(),
        &settings.redis.key_prefix,
        principal.org_id.as_str(),
        route.name(),
    )?;
    let (parts, body) = req.into_parts();
    let body = read_limited(
        &parts.headers,
        body,
        settings.server.max_body_bytes,
        settings.server.body_read_timeout_ms,
    )
    .await?;
    let body = decoded(&parts.headers, body, settings.server.max_body_bytes)?;
    let ctx = Ctx {
        app,
        principal: &principal,
        request_id,
        settings: &settings,
    };
    let Some(key) = idempotency_key else {
        let (status, body) = route.accept(&ctx, body).await?;
        return Ok(json(status, body));
    };
    Box::pin(idempotent(route, &ctx, body, key)).await
}

/// The rest of a request that carries an Idempotency-Key.
async fn idempotent<W: Webhook>(
    route: &W,
    ctx: &Ctx<'_>,
    body: BytesMut,
    key: String,
) -> Result<http::Response<ResponseBody>, Reject> {
    let fp = idempotency::fingerprint(&body);
    let claim = match idempotency::begin(
        ctx.app.sink.redis(),
        key,
        fp,
        ctx.request_id,
        ctx.settings.idempotency.wait_ms,
    )
    .await?
    {
        Begin::Replay(answer) => {
            let mut res = json(answer.status, answer.body);
            res.headers_mut()
                .insert(crate::response::REQUEST_ID, answer.request_id);
            res.headers_mut()
                .insert(REPLAYED, HeaderValue::from_static("true"));
            return Ok(res);
        }
        Begin::Fresh(claim) => claim,
    };
    let result = route.accept(ctx, body).await;
    let (status, body) = match &result {
        Ok((status, body)) => (*status, body.clone()),
        // A refusal of the request itself is its answer, kept like a success.
        Err(reject) if reject.status().is_client_error() => (
            reject.status(),
            Bytes::from_static(reject.body().as_bytes()),
        ),
        // Our side failed: free the key so the caller's retry does the work.
        Err(_) => {
            claim.release().await;
            return result.map(|(status, body)| json(status, body));
        }
    };
    claim
        .complete(
            &Answer {
                status,
                request_id: ctx.request_id.clone(),
                body,
            },
            ctx.settings.idempotency.window_secs,
        )
        .await;
    result.map(|(status, body)| json(status, body))
}

/// The key's rate limit: in Redis, shared by every instance, with
/// `rate_limit.scope = "global"` (this instance's own count when Redis does
/// not answer, or for a JWT); else this instance's.
async fn rate_limit(app: &App, principal: &Principal, settings: &Settings) -> Result<(), Reject> {
    let per_sec = match principal.rate_limit_per_sec {
        Some(r) => r,
        None => match settings.rate_limit.default_per_sec {
            Some(r) => r.get(),
            None => return Ok(()),
        },
    };
    // A burst of 0 is the limiter's "one second's worth".
    let burst = settings
        .rate_limit
        .burst
        .map_or(0, std::num::NonZeroU32::get);
    if (settings.rate_limit.scope == crate::config::RateLimitScope::Global)
        && let Some(digest) = &principal.digest
    {
        let mut key = format!("{}ratelimit:", settings.redis.key_prefix);
        crate::hex::push(&mut key, &digest[..]);
        match Box::pin(limit::check_global(app.sink.redis(), key, per_sec, burst)).await {
            Ok(verdict) => {
                return verdict
                    .map_err(|retry_after_secs| Reject::RateLimited { retry_after_secs });
            }
            // Counted, not logged per request: during an outage every
            // request would log it. A refusal by Redis's ACL lasts until
            // the ACL changes, and only this says it: a line a second.
            Err(e) => {
                static REFUSED: crate::telemetry::Throttle = crate::telemetry::Throttle::new();
                if crate::redis::not_permitted(&e)
                    && let Some(held_back) = REFUSED.admit()
                {
                    tracing::warn!(
                        error = %e.details(),
                        held_back,
                        "redis refuses this user the global rate limit's script (ACL): each instance limits keys by its own count until the user may EVALSHA, GET, SET and TIME on the keys under {}ratelimit:",
                        settings.redis.key_prefix
                    );
                }
                metrics::counter!(crate::metrics::GLOBAL_LIMIT_FALLBACKS).increment(1);
            }
        }
    }
    principal
        .limiter
        .check(per_sec, burst, limit::now_nanos())
        .map_err(|retry_after_secs| Reject::RateLimited { retry_after_secs })
}

//! What both webhook routes do before their own work, and the idempotency
//! wrapper around it:
//!
//! ```text
//! auth (API key or JWT; fail-closed check) → ready? → rate limit (per key)
//! → body (capped, deadline) → Idempotency-Key? → route's work → answer
//! ```
//! Cheapest refusal first: a bad key costs a hash and a lookup, and never
//! reaches Redis or the body.

use std::net::SocketAddr;

use bytes::Bytes;
use http::{HeaderValue, Request, StatusCode};
use http_body_util::Either;
use hyper::body::Body;

use crate::{
    auth::{Credential, Principal},
    body::read_limited,
    error::Reject,
    idempotency::{self, Answer, Begin},
    limit, outreach,
    proxy::BoxError,
    service::{App, ResponseBody, json},
    settings::Settings,
    workflow,
};

/// Which webhook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `POST /api/webhook/workflow`
    Workflow,
    /// `POST /api/webhook/outreach`
    Outreach,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::Workflow => "workflow",
            Kind::Outreach => "outreach",
        }
    }
}

/// Header marking an answer replayed for a repeated Idempotency-Key.
pub const REPLAYED: &str = "idempotent-replayed";

/// Runs a webhook route and returns the response to send (the request id is
/// added by the service, unless a replayed answer carries its own).
pub async fn handle<B>(
    app: &App,
    kind: Kind,
    req: Request<B>,
    request_id: &HeaderValue,
    peer: SocketAddr,
) -> Result<http::Response<ResponseBody>, Reject>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    let settings = app.settings.load();
    let credential = app.authenticate(req.headers(), &settings)?;
    let principal = match (kind, credential) {
        (Kind::Workflow, Credential::ApiKey(p) | Credential::Jwt(p)) => p,
        (Kind::Outreach, Credential::ApiKey(p)) => p,
        (Kind::Outreach, _) => return Err(Reject::ApiKeyRequired),
        // A JWT with no secret configured goes to the upstream unchanged
        // (the backend decides), or is refused when there is none either.
        (Kind::Workflow, Credential::UnverifiedJwt) => {
            return match &app.proxy {
                // Boxed, like every path off the hot one: an inline future
                // would grow every request's future to its size.
                Some(proxy) => Box::pin(proxy.forward(
                    req,
                    peer,
                    request_id,
                    settings.upstream_response_timeout,
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
    rate_limit(&principal, &settings)?;
    let idempotency_key = idempotency::redis_key(
        req.headers(),
        &app.boot.redis.key_prefix,
        principal.org_id.as_str(),
        kind.label(),
    )?;
    let (parts, body) = req.into_parts();
    let body = read_limited(
        &parts.headers,
        body,
        settings.max_body_bytes,
        settings.body_read_timeout,
    )
    .await?;
    let Some(key) = idempotency_key else {
        let (status, body) = process(app, kind, &principal, body, request_id, &settings).await?;
        return Ok(json(status, body));
    };
    Box::pin(idempotent(
        app, kind, &principal, body, key, request_id, &settings,
    ))
    .await
}

/// The rest of a request that carries an Idempotency-Key.
async fn idempotent(
    app: &App,
    kind: Kind,
    principal: &Principal,
    body: bytes::BytesMut,
    key: String,
    request_id: &HeaderValue,
    settings: &Settings,
) -> Result<http::Response<ResponseBody>, Reject> {
    let fp = idempotency::fingerprint(&body);
    let claim = match idempotency::begin(
        app.sink.redis(),
        key,
        fp,
        request_id,
        settings.idempotency_wait,
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
    let result = process(app, kind, principal, body, request_id, settings).await;
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
                request_id: request_id.clone(),
                body,
            },
            settings.idempotency_window,
        )
        .await;
    result.map(|(status, body)| json(status, body))
}

fn rate_limit(principal: &Principal, settings: &Settings) -> Result<(), Reject> {
    let per_sec = match principal.rate_limit_per_sec {
        Some(r) => r,
        None => match settings.rate_limit_default {
            Some(r) => r.get(),
            None => return Ok(()),
        },
    };
    // A burst of 0 is the limiter's "one second's worth".
    let burst = settings
        .rate_limit_burst
        .map_or(0, std::num::NonZeroU32::get);
    principal
        .limiter
        .check(per_sec, burst, limit::now_nanos())
        .map_err(|retry_after_secs| Reject::RateLimited { retry_after_secs })
}

async fn process(
    app: &App,
    kind: Kind,
    principal: &Principal,
    body: bytes::BytesMut,
    request_id: &HeaderValue,
    settings: &Settings,
) -> Result<(StatusCode, Bytes), Reject> {
    match kind {
        Kind::Workflow => workflow::process(app, principal, body, request_id, settings).await,
        Kind::Outreach => {
            Box::pin(outreach::process(
                app, principal, body, request_id, settings,
            ))
            .await
        }
    }
}

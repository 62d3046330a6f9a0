//! `POST /api/webhook/workflow`: the route's stages, cheapest refusal first.
//!
//! ```text
//! ready? → auth (SHA-256 → KeyTable) → body (capped) → parse (simd-json,
//! splice webhookId) → match (WebhookIndex, caller's org) → sink (XADD × N,
//! acknowledged) → 202
//! ```
//! Authentication runs before the body is read, so a flood of bad keys costs
//! a hash and a map lookup each and never reaches Redis.

use std::net::SocketAddr;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::Either;
use hyper::body::Body;

use crate::{
    auth::Credential,
    body::read_limited,
    error::Reject,
    metrics as m,
    parse::parse_envelope,
    proxy::BoxError,
    replica::now_ms,
    response::{decimal, workflow_accepted},
    service::{App, ResponseBody, json},
    sink::WorkflowJob,
};

/// Runs the route and returns the response to send.
///
/// A JWT with no secret configured goes to the upstream unchanged (the
/// backend decides), or is refused when there is no upstream either.
pub async fn handle<B>(
    app: &App,
    req: Request<B>,
    request_id: &HeaderValue,
    peer: SocketAddr,
) -> Result<Response<ResponseBody>, Reject>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    let settings = app.settings.load();
    let credential = app.authenticate(req.headers(), &settings)?;
    let principal = match credential {
        Credential::ApiKey(p) | Credential::Jwt(p) => p,
        Credential::UnverifiedJwt => {
            return match &app.proxy {
                Some(proxy) => proxy
                    .forward(req, peer, request_id, settings.upstream_response_timeout)
                    .await
                    .map(|r| r.map(Either::Right)),
                None => Err(Reject::JwtNotAccepted),
            };
        }
    };
    if !app.is_ready() {
        return Err(Reject::NotReady);
    }
    let (parts, body) = req.into_parts();
    let body = read_limited(&parts.headers, body, settings.max_body_bytes).await?;
    let received_at = now_ms();
    let envelope = parse_envelope(body)?;
    let workflows = app
        .triggers
        .lookup(principal.org_id.as_str(), envelope.webhook_id.as_str());
    let matched = workflows.as_ref().map_or(0, |w| w.len());
    if let Some(workflows) = workflows {
        let mut digits = [0u8; 20];
        let received_at = Bytes::copy_from_slice(decimal(received_at, &mut digits));
        let request_id = Bytes::copy_from_slice(request_id.as_bytes());
        let jobs: Vec<WorkflowJob> = workflows
            .iter()
            .map(|w| WorkflowJob {
                workflow_id: w.bytes().clone(),
                org_id: principal.org_id.bytes().clone(),
                user_id: principal.user_id.bytes().clone(),
                webhook_id: envelope.webhook_id.bytes().clone(),
                payload: envelope.payload.clone(),
                received_at: received_at.clone(),
                request_id: request_id.clone(),
            })
            .collect();
        let started = std::time::Instant::now();
        match app.sink.enqueue(&jobs, &settings).await {
            Ok(()) => {
                app.metrics
                    .sink_duration
                    .record(started.elapsed().as_secs_f64());
                app.metrics.sink_batch.record(jobs.len() as f64);
                app.metrics.jobs_workflow.increment(jobs.len() as u64);
            }
            Err(e) => {
                metrics::counter!(m::JOB_WRITE_FAILURES, "reason" => e.reason()).increment(1);
                return Err(Reject::Unavailable(e));
            }
        }
    }
    Ok(json(
        StatusCode::ACCEPTED,
        workflow_accepted(&envelope.webhook_id_json, matched),
    ))
}

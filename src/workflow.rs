//! `POST /api/webhook/workflow`: the route's stages, cheapest refusal first.
//!
//! ```text
//! [webhook: auth → ready? → rate limit → body → idempotency]
//!   → parse (simd-json, splice webhookId) → match (WebhookIndex, caller's
//!   org) → sink (one XADD, or one script call for several matches;
//!   acknowledged, or spooled) → 202
//! ```
//! Authentication runs before the body is read ([`crate::webhook`]), so a
//! flood of bad keys costs a hash and a map lookup each and never reaches Redis.
//! API keys and verified JWTs are both accepted.

use bytes::{Bytes, BytesMut};
use http::StatusCode;

use crate::{
    clock::now_ms,
    error::Reject,
    parse::parse_envelope,
    response::{decimal, workflow_accepted},
    sink::WorkflowJobs,
    webhook::{Ctx, Webhook},
};

/// `POST /api/webhook/workflow`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Workflow;

impl Webhook for Workflow {
    fn name(&self) -> &'static str {
        "workflow"
    }

    fn api_keys_only(&self) -> bool {
        false
    }

    /// Parse, match in the caller's org, store one job per match; returns
    /// the status and body to send.
    async fn accept(&self, ctx: &Ctx<'_>, body: BytesMut) -> Result<(StatusCode, Bytes), Reject> {
        let Ctx {
            app,
            principal,
            request_id,
            settings,
        } = *ctx;
        let received_at = now_ms();
        let envelope = parse_envelope(body)?;
        let workflows = app
            .triggers
            .lookup(principal.org_id.as_str(), envelope.webhook_id.as_str());
        let matched = workflows.as_ref().map_or(0, |w| w.len());
        if let Some(workflows) = workflows {
            let mut digits = [0u8; 20];
            let jobs = WorkflowJobs {
                workflows,
                org_id: principal.org_id.bytes().clone(),
                user_id: principal.user_id.bytes().clone(),
                webhook_id: envelope.webhook_id.bytes().clone(),
                payload: envelope.payload.clone(),
                received_at: Bytes::copy_from_slice(decimal(received_at, &mut digits)),
                request_id: Bytes::copy_from_slice(request_id.as_bytes()),
            };
            // Spooled or stored, the caller hears 202 either way.
            app.sink.enqueue(&jobs, settings).await?;
        }
        Ok((
            StatusCode::ACCEPTED,
            workflow_accepted(&envelope.webhook_id_json, matched),
        ))
    }
}

//! The shared state every request reads: the replica's views (keys,
//! triggers, outreach configurations, org properties), the sink, the
//! reloadable settings, the metric handles and the upstream. Built once by
//! [`crate::ingress::build`]; one `Arc` of it is cloned per connection.
//!
//! It also answers the questions every route asks of it: is the ingress
//! ready, who does this request authenticate as, and how a reloaded
//! configuration is applied.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use metrics_exporter_prometheus::PrometheusHandle;
use tracing::{error, info, warn};

use crate::{
    auth::{Authenticator, Credential},
    config::Config,
    error::Reject,
    metrics::{self as m, Handles},
    outreach_views::{OrgProperties, OutreachConfigs},
    proxy::Proxy,
    replica::ReplicaStatus,
    response::RequestIds,
    route::WebhookIndex,
    settings::{Settings, SharedSettings},
    sink::Sink,
    tls::ListenerTls,
};

/// Everything a request needs, shared by all connections.
pub struct App {
    /// Bearer → principal.
    pub(crate) auth: Authenticator,
    /// (org, webhookId) → workflows.
    pub(crate) triggers: Arc<WebhookIndex>,
    /// Outreach configurations.
    pub(crate) outreach_configs: Arc<OutreachConfigs>,
    /// Org dynamic properties.
    pub(crate) org_properties: Arc<OrgProperties>,
    /// Job writer.
    pub(crate) sink: Sink,
    /// Readiness and staleness of the caches.
    pub(crate) replica: Arc<ReplicaStatus>,
    /// Reloadable settings (limits, timeouts, streams, JWT secret).
    pub(crate) settings: SharedSettings,
    /// Request id issuer.
    pub(crate) request_ids: RequestIds,
    /// Metric handles.
    pub(crate) metrics: Handles,
    /// Prometheus renderer, when this process owns the recorder.
    pub(crate) prometheus: Option<PrometheusHandle>,
    /// Sidecar upstream, when configured.
    pub(crate) proxy: Option<Proxy>,
    /// The listener's TLS configuration, when it speaks TLS (reloaded on SIGHUP).
    pub(crate) listener_tls: Option<ListenerTls>,
    /// Set by a shutdown signal: the instance serves on through
    /// `server.shutdown_delay_ms` but tells balancers and clients to go.
    pub(crate) stopping: AtomicBool,
}

impl App {
    /// Applies a reloaded configuration: swaps the reloadable settings and
    /// names those that need a restart. Requests in flight keep the settings
    /// they started with.
    pub(crate) fn reload(&self, new: &Config) {
        let crate::config::Reload {
            applied,
            changed,
            restart_needed,
        } = crate::config::reload(&self.settings.load(), new);
        if let (Some(in_use), Some((cert, key))) = (&self.listener_tls, applied.server.tls.files())
        {
            // New connections get the new certificate, open ones keep theirs.
            // Files that do not load now (changed since they were checked)
            // leave the one in use.
            match crate::tls::server_config(cert, key) {
                Ok(config) => {
                    in_use.store(config);
                    info!("listener certificate reloaded");
                    note_certificate("listener", cert);
                }
                Err(e) => error!(
                    error = %e,
                    "listener certificate reload refused; keeping the one in use"
                ),
            }
        }
        self.settings.store(Arc::new(Settings::new(applied)));
        if changed.is_empty() && restart_needed.is_empty() {
            info!("configuration reloaded; no setting changed");
        } else if !changed.is_empty() {
            info!(applied = %changed.join(", "), "configuration reloaded");
        }
        if changed.iter().any(|key| key.starts_with("auth.jwt_secret"))
            && let Some(warning) = self.settings.load().auth.secret_warning()
        {
            warn!("{warning}");
        }
        if !restart_needed.is_empty() {
            warn!(
                needs_restart = %restart_needed.join(", "),
                "configuration reloaded; these settings keep their old values until a restart"
            );
        }
    }

    /// Authenticates a webhook request with the current settings. Before the
    /// first load an unknown key may simply not be loaded yet: 503, not 401.
    pub(crate) fn authenticate(
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
                    .auth
                    .fail_closed_after_secs
                    .is_some_and(|limit| self.replica.out_of_touch_for() > limit) =>
            {
                Err(Reject::AuthStale)
            }
            other => other,
        }
    }

    /// Marks the instance as stopping: `/readyz` answers 503 and HTTP/1
    /// answers close their connections, while requests are still served.
    pub(crate) fn begin_stopping(&self) {
        self.stopping.store(true, Ordering::Relaxed);
    }

    /// Whether a shutdown signal has come.
    pub(crate) fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }

    /// Ready once the caches are loaded and the job writer has connected.
    pub fn is_ready(&self) -> bool {
        self.waiting_for().is_none()
    }

    /// What readiness still waits for: the caches (the replica's first
    /// load) or the job writer's first connection (a Redis that is down,
    /// or a URL naming a replica); `None` once ready.
    pub(crate) fn waiting_for(&self) -> Option<Waiting> {
        if !self.replica.is_ready() {
            Some(Waiting::Caches)
        } else if !self.sink.has_connected() {
            Some(Waiting::JobWriter)
        } else {
            None
        }
    }
}

/// What a starting ingress waits for before it is ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Waiting {
    /// The replica's first load of the control plane.
    Caches,
    /// The job writer's first connection to a Redis primary.
    JobWriter,
}

/// How long before its expiry a certificate the ingress presents is warned
/// about when it is loaded.
const EXPIRY_WARNING: Duration = Duration::from_secs(14 * 24 * 3600);

/// Shows when certificate file `path` (`which`: `listener` or
/// `redis_client`) expires, and says at load one that has expired or
/// expires within [`EXPIRY_WARNING`]: rustls presents an expired
/// certificate without a word, and every client then refuses it.
pub(crate) fn note_certificate(which: &'static str, path: &std::path::Path) {
    let expires = match crate::tls::expires_at(path) {
        Ok(at) => at,
        Err(e) => {
            warn!(certificate = which, error = %e, "cannot read when this certificate expires");
            return;
        }
    };
    metrics::gauge!(m::TLS_CERTIFICATE_EXPIRY, "certificate" => which).set(expires as f64);
    let now = i64::try_from(crate::clock::now_ms() / 1000).unwrap_or(i64::MAX);
    let left = expires.saturating_sub(now);
    if let Some(said) = expiry_said(left) {
        warn!(certificate = which, file = %path.display(), expires_in_days = left / 86_400, "{said}");
    }
}

/// What to say of a certificate that expires in `left` seconds (negative:
/// expired), if anything.
fn expiry_said(left: i64) -> Option<&'static str> {
    if left <= 0 {
        Some(
            "this certificate has expired: TLS peers refuse it; replace the file (the listener's is re-read on SIGHUP)",
        )
    } else if left < EXPIRY_WARNING.as_secs() as i64 {
        Some(
            "this certificate expires soon: replace the file before it does (the listener's is re-read on SIGHUP)",
        )
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_certificate_is_said_once_expired_or_within_two_weeks_of_it() {
        assert!(expiry_said(-5).is_some_and(|s| s.contains("has expired")));
        assert!(expiry_said(0).is_some_and(|s| s.contains("has expired")));
        assert!(expiry_said(13 * 86_400).is_some_and(|s| s.contains("expires soon")));
        assert_eq!(expiry_said(15 * 86_400), None);
    }
}

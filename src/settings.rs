//! The settings that can change while the server runs (SIGHUP): limits,
//! timeouts, stream settings, the JWT secret. They sit behind one `ArcSwap`:
//! a request loads them once (an atomic load, no lock, no allocation) and
//! sees one consistent version even if a reload lands mid-request.
//!
//! What needs a new listener or new connections (listen address, connection
//! cap, Redis URL, key prefix, upstream URL, log format) is not reloaded:
//! [`restart_needed`] names it so the operator knows.

use std::{sync::Arc, time::Duration};

use arc_swap::ArcSwap;
use fred::types::Key;
use http::HeaderValue;

use crate::{auth::jwt::JwtVerifier, config::Config};

/// The reloadable part of the configuration, in the form the request path uses.
#[derive(Debug)]
pub struct Settings {
    /// Webhook body cap, bytes.
    pub max_body_bytes: usize,
    /// `Retry-After` value sent with 503.
    pub retry_after: HeaderValue,
    /// Workflow stream key.
    pub workflow_stream: Key,
    /// Outreach stream key.
    pub outreach_stream: Key,
    /// `MAXLEN ~` threshold.
    pub stream_maxlen: i64,
    /// Deadline of one job write.
    pub command_timeout: Duration,
    /// Upstream response head deadline.
    pub upstream_response_timeout: Duration,
    /// HS256 verifier, when a secret is configured.
    pub jwt: Option<JwtVerifier>,
    /// A silent connection is closed after this.
    pub first_byte_timeout: Duration,
    /// HTTP/1 head (and idle keep-alive) deadline.
    pub header_read_timeout: Duration,
    /// Request head cap, bytes.
    pub max_header_bytes: usize,
    /// HTTP/2 streams per connection.
    pub http2_max_concurrent_streams: u32,
    /// Drain deadline on shutdown.
    pub shutdown_grace: Duration,
}

/// Settings shared by every request, swapped whole on reload.
pub type SharedSettings = Arc<ArcSwap<Settings>>;

impl Settings {
    /// The reloadable settings of `config`.
    pub fn from_config(config: &Config) -> Self {
        Self {
            max_body_bytes: config.max_body_bytes.get(),
            retry_after: HeaderValue::from(config.retry_after_secs),
            workflow_stream: Key::from(config.workflow_stream.as_str()),
            outreach_stream: Key::from(config.outreach_stream.as_str()),
            stream_maxlen: config.stream_maxlen,
            command_timeout: config.command_timeout,
            upstream_response_timeout: config.upstream_response_timeout,
            jwt: config
                .jwt_secret
                .as_ref()
                .map(|s| JwtVerifier::new(s, config.jwt_leeway_secs)),
            first_byte_timeout: config.first_byte_timeout,
            header_read_timeout: config.header_read_timeout,
            max_header_bytes: config.max_header_bytes,
            http2_max_concurrent_streams: config.http2_max_concurrent_streams,
            shutdown_grace: config.shutdown_grace,
        }
    }

    /// A shared cell holding the settings of `config`.
    pub fn shared(config: &Config) -> SharedSettings {
        Arc::new(ArcSwap::from_pointee(Self::from_config(config)))
    }
}

/// The settings that differ between `running` and `new` but cannot change
/// without a restart.
pub fn restart_needed(running: &Config, new: &Config) -> Vec<&'static str> {
    let mut out = Vec::new();
    if running.listen != new.listen {
        out.push("server.listen");
    }
    if running.max_connections != new.max_connections {
        out.push("server.max_connections");
    }
    if running.redis_url != new.redis_url {
        out.push("redis.url");
    }
    if running.key_prefix != new.key_prefix {
        out.push("redis.key_prefix");
    }
    if running.connect_timeout != new.connect_timeout {
        out.push("redis.connect_timeout_ms");
    }
    if running.resync_interval != new.resync_interval {
        out.push("redis.resync_interval_secs");
    }
    if running.max_pending_commands != new.max_pending_commands {
        out.push("redis.max_pending_commands");
    }
    if running.upstream != new.upstream {
        out.push("upstream.url");
    }
    if running.upstream_connect_timeout != new.upstream_connect_timeout {
        out.push("upstream.connect_timeout_ms");
    }
    if running.log_json != new.log_json {
        out.push("log.format");
    }
    out
}

//! The settings that can change while the server runs (SIGHUP): limits,
//! timeouts, stream settings, the JWT secret. They sit behind one `ArcSwap`:
//! a request loads them once (an atomic load, no lock, no allocation) and
//! sees one consistent version even if a reload lands mid-request.
//!
//! What needs a new listener or new connections (listen address, connection
//! cap, Redis URL, key prefix, upstream URL, log format) is not reloaded:
//! [`restart_needed`] names it so the operator knows.

use std::{num::NonZeroU32, sync::Arc, time::Duration};

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
    /// Whole-body deadline on the webhook routes.
    pub body_read_timeout: Duration,
    /// Refuse keys once the replica is out of touch this long.
    pub fail_closed_after: Option<Duration>,
    /// How long an idempotency key's answer is kept.
    pub idempotency_window: Duration,
    /// How long a concurrent duplicate waits before 409.
    pub idempotency_wait: Duration,
    /// Requests per second for a key whose record sets none; `None`: unlimited.
    pub rate_limit_default: Option<NonZeroU32>,
    /// Back-to-back allowance; `None`: one second's worth.
    pub rate_limit_burst: Option<NonZeroU32>,
    /// One limit per key across every instance (kept in Redis).
    pub rate_limit_global: bool,
    /// Wait for a connection slot at the cap before refusing.
    pub connection_queue_timeout: Duration,
}

/// Settings shared by every request, swapped whole on reload.
pub type SharedSettings = Arc<ArcSwap<Settings>>;

impl Settings {
    /// The reloadable settings of `config`.
    pub fn from_config(config: &Config) -> Self {
        Self {
            max_body_bytes: config.server.max_body_bytes.get(),
            retry_after: HeaderValue::from(config.redis.retry_after_secs),
            workflow_stream: Key::from(config.streams.workflow.as_str()),
            outreach_stream: Key::from(config.streams.outreach.as_str()),
            stream_maxlen: config.streams.maxlen,
            command_timeout: config.redis.command_timeout,
            upstream_response_timeout: config.upstream.response_timeout,
            jwt: config
                .auth
                .jwt_secret
                .as_ref()
                .map(|s| JwtVerifier::new(s, config.auth.jwt_leeway_secs)),
            first_byte_timeout: config.server.first_byte_timeout,
            header_read_timeout: config.server.header_read_timeout,
            max_header_bytes: config.server.max_header_bytes,
            http2_max_concurrent_streams: config.server.http2_max_concurrent_streams.get(),
            shutdown_grace: config.server.shutdown_grace,
            body_read_timeout: config.server.body_read_timeout,
            fail_closed_after: config.auth.fail_closed_after,
            idempotency_window: config.idempotency.window,
            idempotency_wait: config.idempotency.wait,
            rate_limit_default: config.rate_limit.default_per_sec,
            rate_limit_burst: config.rate_limit.burst,
            rate_limit_global: config.rate_limit.scope == crate::config::RateLimitScope::Global,
            connection_queue_timeout: config.server.connection_queue_timeout,
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
    if running.server.listen != new.server.listen {
        out.push("server.listen");
    }
    if running.server.serving_threads != new.server.serving_threads {
        out.push("server.serving_threads");
    }
    if running.server.max_connections != new.server.max_connections {
        out.push("server.max_connections");
    }
    if running.redis.url != new.redis.url {
        out.push("redis.url");
    }
    if running.redis.key_prefix != new.redis.key_prefix {
        out.push("redis.key_prefix");
    }
    if running.redis.connect_timeout != new.redis.connect_timeout {
        out.push("redis.connect_timeout_ms");
    }
    if running.redis.resync_interval != new.redis.resync_interval {
        out.push("redis.resync_interval_secs");
    }
    if running.redis.resync_busy_percent != new.redis.resync_busy_percent {
        out.push("redis.resync_busy_percent");
    }
    if running.redis.wait_replicas != new.redis.wait_replicas {
        out.push("redis.wait_replicas");
    }
    if running.redis.max_pending_commands != new.redis.max_pending_commands {
        out.push("redis.max_pending_commands");
    }
    if running.server.tls.is_some() != new.server.tls.is_some() {
        out.push("server.tls (on or off)");
    }
    if running.upstream.url != new.upstream.url {
        out.push("upstream.url");
    }
    if running.upstream.ca_file != new.upstream.ca_file {
        out.push("upstream.ca_file");
    }
    if running.upstream.connect_timeout != new.upstream.connect_timeout {
        out.push("upstream.connect_timeout_ms");
    }
    if running.sink.kind != new.sink.kind {
        out.push("sink.kind");
    }
    if running.bullmq != new.bullmq {
        out.push("bullmq");
    }
    if running.rate_limit.scope != new.rate_limit.scope {
        out.push("rate_limit.scope");
    }
    if running.spool != new.spool {
        out.push("spool");
    }
    if running.log.format != new.log.format {
        out.push("log.format");
    }
    out
}

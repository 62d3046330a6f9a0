//! tether-ingress: a webhook ingress that authenticates lead webhooks from an
//! in-memory replica of Redis and enqueues one job per matched workflow, as
//! a Redis Streams entry or a BullMQ job (`sink.kind`).
//!
//! # Request path
//! ```text
//! TcpListener ─ server (conn cap, first-byte timeout, h1/h2c, graceful drain)
//!   └ cores (one single-threaded runtime per core serves each connection)
//!     └ service (route, X-Request-Id, metrics, Reject → JSON envelope)
//!         ├ webhook: auth ─ KeyTable ───────────┐ replica (one RESP3 connection:
//!         │          ready? → rate limit        │  CLIENT TRACKING BCAST + SCAN
//!         │          body (capped) → Idempotency │  resync) keeps the views live
//!         │   └ workflow: parse → match ─ WebhookIndex
//!         │   └ outreach: parse → OutreachConfigs, OrgProperties
//!         │          → sink (this core's writer: XADD MAXLEN ~ or BullMQ's
//!         │            add script, acknowledged, or the spool) → 202 / 200
//!         └ proxy: anything else → the upstream
//! ```
//! # Modules, in the order a request meets them
//! - `ingress`: the composition root ([`run`], [`build`]); `app`: the
//!   shared state; [`config`], `settings` (the running configuration),
//!   `reload`, `telemetry`, `shutdown`, `open_files` (the descriptor
//!   limit against `server.max_connections`).
//! - `server`, `cores`, `service`: connections and routing; `response`,
//!   `error`: every answer and every refusal.
//! - `webhook` (the stages both webhook routes share), `auth`, `limit`,
//!   `body`, `idempotency`.
//! - `workflow`, `outreach`: the two routes; `parse`; `route` and
//!   `outreach_views` (what each route looks up in the replica); `id`;
//!   `clock` (Unix time, as jobs and tokens carry it).
//! - `sink`: jobs into Redis (records, layout, writers, spool fallback);
//!   `spool`: the durable local log; `redis`: every Redis client, with `tls`
//!   for `rediss://`.
//! - `replica`: the live replica the views read; `proxy`: the sidecar path;
//!   `metrics`.
//! - Off the request path: `admin` (the CLI), `preflight` (`check-redis`),
//!   `probe` (`healthcheck`),
//!   `import`, `worker` (reading jobs back), [`fuzzing`].
//!
//! # The public surface
//! What the binary, the tests, the benchmarks, the fuzz targets and the
//! examples use, and nothing else: the modules are private.

mod ingress;
mod app;
pub mod config;
mod settings;
mod reload;
mod telemetry;
mod shutdown;
mod server;
mod cores;
mod open_files;
mod service;
mod response;
mod error;
mod webhook;
mod auth;
mod limit;
mod body;
mod idempotency;
mod workflow;
mod outreach;
mod outreach_views;
mod parse;
mod route;
mod id;
mod hex;
mod clock;
mod digest;
mod forwarded;
mod sink;
mod spool;
mod redis;
mod tls;
mod replica;
mod proxy;
mod metrics;
mod admin;
mod preflight;
mod probe;
mod import;
mod worker;
pub mod fuzzing;

pub use admin::{Admin, AdminError};
pub use app::App;
pub use auth::{digest_key, jwt::sign as sign_jwt};
pub use clock::now_ms;
pub use import::{Options as ImportOptions, import};
pub use ingress::{Background, StartError, build, run, run_with_reloads};
pub use metrics::ALL as METRICS;
pub use open_files::raise_open_file_limit;
pub use preflight::{Report as RedisReport, check_redis};
pub use probe::{ProbeError, healthcheck};
pub use redis::{Role as RedisRole, Target as RedisTarget, client as redis_client};
pub use reload::on_sighup;
pub use shutdown::signals as shutdown_signals;
pub use spool::{Spool, encode as spool_record};
pub use telemetry::{LogLevel, init as init_logging};
pub use tls::{ClientFiles, client_config, server_config};
pub use worker::{Polled, Worker};

/// The in-memory hot path's stages (authenticate, parse, match), for the
/// benchmarks and the allocation test that drive them without HTTP.
pub mod hot_path {
    pub use crate::auth::{Authenticator, Credential, KeyTable};
    pub use crate::parse::parse_envelope;
    pub use crate::replica::{Fetched, View};
    pub use crate::route::WebhookIndex;
}

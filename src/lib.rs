//! tether-ingress: a webhook ingress that authenticates lead webhooks from an
//! in-memory replica of Redis and enqueues one job per matched workflow on
//! Redis Streams.
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
//!         │          → sink (this core's writer; XADD MAXLEN ~, acknowledged,
//!         │            or the spool) → 202 / 200
//!         └ proxy: anything else → the upstream
//! ```
//! # Modules, in the order a request meets them
//! - [`ingress`]: the composition root ([`run`], [`build`]); [`app`]: the
//!   shared state; [`config`], [`settings`] (what reloads), [`reload`],
//!   [`telemetry`], [`shutdown`].
//! - [`server`], [`cores`], [`service`]: connections and routing;
//!   [`response`], [`error`]: every answer and every refusal.
//! - [`webhook`] (the route seam), [`auth`], [`limit`], [`body`],
//!   [`idempotency`]: the stages both webhook routes share.
//! - [`workflow`], [`outreach`]: the two routes; [`parse`], [`route`], [`id`].
//! - [`sink`]: jobs into Redis (records, layout, writers, spool fallback);
//!   [`spool`]: the durable local log; [`redis`]: every Redis client, with
//!   [`tls`] for `rediss://`.
//! - [`replica`]: the live replica the views read; [`proxy`]: the sidecar
//!   path; [`metrics`].
//! - Off the request path: [`admin`] (the CLI), [`worker`] (reading jobs
//!   back), [`fuzzing`].

pub mod ingress;
pub mod app;
pub mod config;
pub mod settings;
pub mod reload;
pub mod telemetry;
pub mod shutdown;
pub mod server;
pub mod cores;
pub mod service;
pub mod response;
pub mod error;
pub mod webhook;
pub mod auth;
pub mod limit;
pub mod body;
pub mod idempotency;
pub mod workflow;
pub mod outreach;
pub mod parse;
pub mod route;
pub mod id;
pub mod sink;
pub mod spool;
pub mod redis;
pub mod tls;
pub mod replica;
pub mod proxy;
pub mod metrics;
pub mod admin;
pub mod import;
pub mod worker;
pub mod fuzzing;

pub use ingress::{Background, StartError, build, run, run_with_reloads};

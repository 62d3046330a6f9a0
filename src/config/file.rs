//! The configuration's shape: [`Config`], one typed struct per section of
//! the file, and the built-in defaults it starts from.

use serde::{Deserialize, Serialize};

use super::{
    jobs::{Bullmq, Sink, Streams},
    problems::Problems,
    redis::Redis,
    sections::{Auth, Idempotency, Log, RateLimit, Spool, Upstream},
    server::Server,
};

/// The built-in defaults: the repository's `config/default.toml`, the one
/// place a default is written.
const DEFAULT_TOML: &str = include_str!("../../config/default.toml");

/// The configuration, one struct per section of the file. It serialises
/// back to the file's names and units, secrets masked and the Redis
/// password redacted: that is what `check-config` prints, so it cannot
/// leave a setting out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[server]`
    pub server: Server,
    /// `[redis]`
    pub redis: Redis,
    /// `[streams]`
    pub streams: Streams,
    /// `[sink]`
    pub sink: Sink,
    /// `[bullmq]`
    pub bullmq: Bullmq,
    /// `[upstream]`
    pub upstream: Upstream,
    /// `[auth]`
    pub auth: Auth,
    /// `[spool]`
    pub spool: Spool,
    /// `[idempotency]`
    pub idempotency: Idempotency,
    /// `[rate_limit]`
    pub rate_limit: RateLimit,
    /// `[log]`
    pub log: Log,
}

impl Config {
    /// Every section's ranges and cross-field rules.
    pub(super) fn check(&self, p: &mut Problems) {
        self.server.check(p);
        self.redis.check(p);
        self.streams.check(p);
        self.bullmq
            .check(self.sink.kind, self.redis.is_cluster(), p);
        self.upstream.check(p);
        self.auth.check(p);
        self.log.check(p);
        self.spool.check(p);
        self.idempotency.check(p);
    }
}

impl Default for Config {
    /// The built-in defaults (`config/default.toml`).
    fn default() -> Self {
        // A unit test deserialises and checks the built-in file, so this
        // cannot fail.
        #[allow(clippy::expect_used)]
        Config::deserialize(toml::Value::Table(default_table()))
            .expect("built-in defaults are valid")
    }
}

/// The built-in defaults as a TOML table.
pub(super) fn default_table() -> toml::Table {
    // Checked by a unit test; an empty table would be reported as every
    // setting missing, never a panic.
    toml::from_str(DEFAULT_TOML).unwrap_or_default()
}

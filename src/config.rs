//! Configuration: `config/default.toml` values built in, an optional TOML file
//! over them, `TETHER_INGRESS_*` environment variables over both.
//!
//! [`RawConfig`] is what the file says (serde, every field defaulted);
//! [`Config`] is the validated, typed form the rest of the crate uses
//! (`Duration`, `NonZero*`, `SocketAddr`). Every problem is collected and
//! reported at once, so an operator fixes a file in one pass.

use std::{
    fmt,
    net::SocketAddr,
    num::{NonZeroU32, NonZeroUsize},
    path::Path,
    time::Duration,
};

use serde::{Deserialize, Serialize};

/// Environment variable overriding `server.listen`.
pub const ENV_LISTEN: &str = "TETHER_INGRESS_LISTEN";
/// Environment variable overriding `redis.url`.
pub const ENV_REDIS_URL: &str = "TETHER_INGRESS_REDIS_URL";
/// Environment variable overriding `server.tls.cert_file`.
pub const ENV_TLS_CERT_FILE: &str = "TETHER_INGRESS_TLS_CERT_FILE";
/// Environment variable overriding `server.tls.key_file`.
pub const ENV_TLS_KEY_FILE: &str = "TETHER_INGRESS_TLS_KEY_FILE";
/// Environment variable overriding `redis.tls.ca_file`.
pub const ENV_REDIS_TLS_CA_FILE: &str = "TETHER_INGRESS_REDIS_TLS_CA_FILE";
/// Environment variable overriding `redis.tls.cert_file`.
pub const ENV_REDIS_TLS_CERT_FILE: &str = "TETHER_INGRESS_REDIS_TLS_CERT_FILE";
/// Environment variable overriding `redis.tls.key_file`.
pub const ENV_REDIS_TLS_KEY_FILE: &str = "TETHER_INGRESS_REDIS_TLS_KEY_FILE";
/// Environment variable overriding `upstream.ca_file`.
pub const ENV_UPSTREAM_CA_FILE: &str = "TETHER_INGRESS_UPSTREAM_CA_FILE";
/// Environment variable overriding `upstream.url`.
pub const ENV_UPSTREAM_URL: &str = "TETHER_INGRESS_UPSTREAM_URL";
/// Environment variable overriding `auth.jwt_secret`.
pub const ENV_JWT_SECRET: &str = "TETHER_INGRESS_JWT_SECRET";
/// Environment variable overriding `auth.jwt_secret_file`.
pub const ENV_JWT_SECRET_FILE: &str = "TETHER_INGRESS_JWT_SECRET_FILE";
/// Environment variable overriding `spool.dir`.
pub const ENV_SPOOL_DIR: &str = "TETHER_INGRESS_SPOOL_DIR";
/// Environment variable overriding `redis.wait_replicas`.
pub const ENV_REDIS_WAIT_REPLICAS: &str = "TETHER_INGRESS_REDIS_WAIT_REPLICAS";
/// Environment variable overriding `rate_limit.scope`.
pub const ENV_RATE_LIMIT_SCOPE: &str = "TETHER_INGRESS_RATE_LIMIT_SCOPE";
/// Environment variable overriding `sink.kind`.
pub const ENV_SINK: &str = "TETHER_INGRESS_SINK";
/// Environment variable overriding `bullmq.prefix`.
pub const ENV_BULLMQ_PREFIX: &str = "TETHER_INGRESS_BULLMQ_PREFIX";
/// Environment variable overriding `bullmq.workflow_queue`.
pub const ENV_BULLMQ_WORKFLOW_QUEUE: &str = "TETHER_INGRESS_BULLMQ_WORKFLOW_QUEUE";
/// Environment variable overriding `bullmq.outreach_queue`.
pub const ENV_BULLMQ_OUTREACH_QUEUE: &str = "TETHER_INGRESS_BULLMQ_OUTREACH_QUEUE";
/// Environment variable overriding `bullmq.job_options`.
pub const ENV_BULLMQ_JOB_OPTIONS: &str = "TETHER_INGRESS_BULLMQ_JOB_OPTIONS";
/// Environment variable overriding `log.level`.
pub const ENV_LOG: &str = "TETHER_INGRESS_LOG";
/// Environment variable overriding `log.format`.
pub const ENV_LOG_FORMAT: &str = "TETHER_INGRESS_LOG_FORMAT";

/// The built-in defaults: the repository's `config/default.toml`.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The path given.
        path: String,
        /// The I/O cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML or has unknown or mistyped settings.
    #[error("invalid config file {path}: {message}")]
    Parse {
        /// The path given.
        path: String,
        /// The parser's message.
        message: String,
    },
    /// One or more values are out of range; every problem is listed.
    #[error("invalid configuration:\n  - {}", .0.join("\n  - "))]
    Invalid(Vec<String>),
}

/// A secret that never prints: `Debug` and `Display` show `**REDACTED**`.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret's bytes, for the one place that uses them.
    pub fn expose(&self) -> &[u8] {
        self.0.as_bytes()
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

/// `redis://user:secret@host` → `redis://user:***@host`, for messages.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let creds = &url[scheme + 3..at];
            match creds.find(':') {
                Some(colon) => format!(
                    "{}{}:***{}",
                    &url[..scheme + 3],
                    &creds[..colon],
                    &url[at..]
                ),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// Whether `url` is a TLS Redis URL (`rediss://`, `rediss-sentinel://`,
/// `rediss-cluster://`).
pub fn is_tls_url(url: &str) -> bool {
    url.split_once("://").is_some_and(|(scheme, _)| {
        matches!(scheme, "rediss" | "rediss-sentinel" | "rediss-cluster")
    })
}

/// Whether `url` names a Redis Cluster (`redis-cluster://`,
/// `rediss-cluster://`).
fn is_cluster_url(url: &str) -> bool {
    url.split_once("://")
        .is_some_and(|(scheme, _)| matches!(scheme, "redis-cluster" | "rediss-cluster"))
}

/// The hash tag Redis Cluster hashes `key` by: the text between its first
/// `{` and the next `}`, when not empty.
fn hash_tag(key: &str) -> Option<&str> {
    let (_, after) = key.split_once('{')?;
    let (tag, _) = after.split_once('}')?;
    (!tag.is_empty()).then_some(tag)
}

/// Whether this build can honour a Redis URL; the error completes
/// "redis.url: <url> …". A URL fred would refuse only at connect time is
/// refused here, at start; a TLS URL is checked with its files by
/// [`check_redis_tls`].
fn check_redis_url(url: &str) -> Result<(), String> {
    let scheme = url.split_once("://").map_or("", |(scheme, _)| scheme);
    match scheme {
        "redis" => {}
        "redis+unix" => {
            let path = url.split_once("://").map_or("", |(_, rest)| rest);
            if !path.contains('/') {
                return Err("must name the socket's path: redis+unix:///path/to/redis.sock".into());
            }
        }
        "rediss" => {}
        "redis-sentinel" | "rediss-sentinel" => {
            if !url.contains("sentinelServiceName=") {
                return Err(
                    "must name the monitored primary: redis-sentinel://sentinel:26379?sentinelServiceName=NAME&node=sentinel2:26379"
                        .into(),
                );
            }
        }
        "redis-cluster" | "rediss-cluster" => {}
        _ => {
            return Err(
                "must start with redis://, rediss://, redis-sentinel://, rediss-sentinel://, redis-cluster://, rediss-cluster:// or redis+unix://"
                    .into(),
            );
        }
    }
    fred::types::config::Config::from_url(url)
        .map(drop)
        .map_err(|e| format!("is not a Redis URL: {}", e.details()))
}

/// The listener's `[server.tls]` files: both or neither, and they must load.
fn check_server_tls(tls: &RawServerTls) -> Result<Option<ServerTlsConfig>, String> {
    match (tls.cert_file.is_empty(), tls.key_file.is_empty()) {
        (true, true) => Ok(None),
        (false, false) => {
            let config = ServerTlsConfig {
                cert_file: tls.cert_file.clone().into(),
                key_file: tls.key_file.clone().into(),
            };
            crate::tls::server_config(&config.cert_file, &config.key_file)
                .map_err(|e| format!("server.tls: {e}"))?;
            Ok(Some(config))
        }
        _ => Err("server.tls: set cert_file and key_file together, or neither".into()),
    }
}

/// The `[redis.tls]` files, checked against the URL: a `rediss://` URL gets
/// a configuration that loads (CA file or system roots, the client pair
/// whole); a plaintext URL gets none, since files it would ignore suggest
/// the operator believes the connection is encrypted.
fn check_redis_tls(url: &str, tls: &RawRedisTls) -> Result<RedisTlsConfig, String> {
    let path = |s: &str| (!s.is_empty()).then(|| std::path::PathBuf::from(s));
    let config = RedisTlsConfig {
        ca_file: path(&tls.ca_file),
        cert_file: path(&tls.cert_file),
        key_file: path(&tls.key_file),
    };
    if !is_tls_url(url) {
        return if config == RedisTlsConfig::default() {
            Ok(config)
        } else {
            Err("redis.tls: files are set but redis.url is not a rediss:// (TLS) URL".into())
        };
    }
    if config.cert_file.is_some() != config.key_file.is_some() {
        return Err(
            "redis.tls: set cert_file and key_file together (mutual TLS), or neither".into(),
        );
    }
    crate::tls::client_config(config.files()).map_err(|e| format!("redis.tls: {e}"))?;
    Ok(config)
}

// === RawConfig: the file ===

/// The configuration file as written; every field has the built-in default.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawConfig {
    /// `[server]`
    pub server: RawServer,
    /// `[redis]`
    pub redis: RawRedis,
    /// `[streams]`
    pub streams: RawStreams,
    /// `[sink]`
    pub sink: RawSink,
    /// `[bullmq]`
    pub bullmq: RawBullmq,
    /// `[upstream]`
    pub upstream: RawUpstream,
    /// `[auth]`
    pub auth: RawAuth,
    /// `[log]`
    pub log: RawLog,
    /// `[spool]`
    pub spool: RawSpool,
    /// `[idempotency]`
    pub idempotency: RawIdempotency,
    /// `[rate_limit]`
    pub rate_limit: RawRateLimit,
}

/// `[server]` as written.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawServer {
    /// Bind address.
    pub listen: String,
    /// Connections served at once.
    pub max_connections: usize,
    /// First byte deadline, ms.
    pub first_byte_timeout_ms: u64,
    /// HTTP/1 head deadline, ms.
    pub header_read_timeout_ms: u64,
    /// Drain deadline on shutdown, ms.
    pub shutdown_grace_ms: u64,
    /// Webhook body cap, bytes.
    pub max_body_bytes: usize,
    /// Request head cap, bytes.
    pub max_header_bytes: usize,
    /// HTTP/2 streams per connection.
    pub http2_max_concurrent_streams: u32,
    /// Whole-body deadline on the webhook routes, ms.
    pub body_read_timeout_ms: u64,
    /// Time a connection may wait for a slot at the cap before it is refused, ms.
    pub connection_queue_timeout_ms: u64,
    /// Threads with a single-threaded runtime each that serve connections:
    /// `"auto"` (one per core), a count, or 0 (the shared runtime serves).
    pub serving_threads: RawThreads,
    /// `[server.tls]`
    pub tls: RawServerTls,
}

/// `[server.tls]` as written: the listener's PEM files; empty means plaintext.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawServerTls {
    /// Certificate chain, leaf first.
    pub cert_file: String,
    /// Private key.
    pub key_file: String,
}

/// `server.serving_threads` as written: `"auto"` or a count.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum RawThreads {
    /// A number of threads (0: none).
    Count(usize),
    /// A name; only `"auto"` (one per core) is valid.
    Named(String),
}

impl Default for RawThreads {
    fn default() -> Self {
        RawThreads::Named("auto".into())
    }
}

impl Default for RawServer {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            max_connections: 10_000,
            first_byte_timeout_ms: 10_000,
            header_read_timeout_ms: 10_000,
            shutdown_grace_ms: 10_000,
            max_body_bytes: 1 << 20,
            max_header_bytes: 16 * 1024,
            http2_max_concurrent_streams: 256,
            body_read_timeout_ms: 30_000,
            connection_queue_timeout_ms: 1_000,
            serving_threads: RawThreads::default(),
            tls: RawServerTls::default(),
        }
    }
}

/// `[redis]` as written.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawRedis {
    /// Redis URL.
    pub url: String,
    /// Control-plane key prefix.
    pub key_prefix: String,
    /// Per-command deadline, ms.
    pub command_timeout_ms: u64,
    /// Connect deadline, ms.
    pub connect_timeout_ms: u64,
    /// Safety-net full resync period, s.
    pub resync_interval_secs: u64,
    /// Share of the time (percent) a resync after the first load may keep
    /// busy; it pauses between pages for the rest.
    pub resync_busy_percent: u8,
    /// Cap on commands queued towards Redis.
    pub max_pending_commands: usize,
    /// Retry-After on 503, s.
    pub retry_after_secs: u32,
    /// Replicas that must hold a job before it counts as stored; 0: off.
    pub wait_replicas: u32,
    /// `[redis.tls]`
    pub tls: RawRedisTls,
}

/// `[redis.tls]` as written: PEM files for `rediss://` URLs; empty means none.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawRedisTls {
    /// CA certificates the server must chain to; empty: the system's roots.
    pub ca_file: String,
    /// Client certificate chain (mutual TLS).
    pub cert_file: String,
    /// Client private key (mutual TLS).
    pub key_file: String,
}

impl Default for RawRedis {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379".into(),
            key_prefix: "tether:".into(),
            command_timeout_ms: 2_000,
            connect_timeout_ms: 2_000,
            resync_interval_secs: 300,
            resync_busy_percent: 20,
            max_pending_commands: 100_000,
            retry_after_secs: 1,
            wait_replicas: 0,
            tls: RawRedisTls::default(),
        }
    }
}

/// `[streams]` as written.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawStreams {
    /// Workflow job stream.
    pub workflow: String,
    /// Outreach job stream.
    pub outreach: String,
    /// `MAXLEN ~` threshold.
    pub maxlen: i64,
}

impl Default for RawStreams {
    fn default() -> Self {
        Self {
            workflow: "tether:jobs:workflow".into(),
            outreach: "tether:jobs:outreach".into(),
            maxlen: 1_000_000,
        }
    }
}

/// `[sink]` as written.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawSink {
    /// `streams` or `bullmq`.
    pub kind: String,
}

impl Default for RawSink {
    fn default() -> Self {
        Self {
            kind: "streams".into(),
        }
    }
}

/// `[bullmq]` as written.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawBullmq {
    /// Key prefix of every queue (BullMQ's `prefix` option).
    pub prefix: String,
    /// Queue of the workflow jobs.
    pub workflow_queue: String,
    /// Queue of the outreach jobs.
    pub outreach_queue: String,
    /// Name of each workflow job.
    pub workflow_job_name: String,
    /// Name of each outreach job.
    pub outreach_job_name: String,
    /// JSON object of job options applied to every job; empty: none.
    pub job_options: String,
}

impl Default for RawBullmq {
    fn default() -> Self {
        Self {
            prefix: "bull".into(),
            workflow_queue: "workflow-runs".into(),
            outreach_queue: "outreach-runs".into(),
            workflow_job_name: "webhook".into(),
            outreach_job_name: "outreach".into(),
            job_options: String::new(),
        }
    }
}

/// `[upstream]` as written.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawUpstream {
    /// Backend URL; empty means none.
    pub url: String,
    /// Connect deadline, ms.
    pub connect_timeout_ms: u64,
    /// Response head deadline, ms.
    pub response_timeout_ms: u64,
    /// PEM CA an `https://` upstream must chain to; empty: the system's roots.
    pub ca_file: String,
}

impl Default for RawUpstream {
    fn default() -> Self {
        Self {
            url: String::new(),
            connect_timeout_ms: 2_000,
            response_timeout_ms: 30_000,
            ca_file: String::new(),
        }
    }
}

/// `[auth]` as written.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawAuth {
    /// HS256 secret; empty means none.
    pub jwt_secret: Secret,
    /// File holding the HS256 secret (trailing newline ignored); empty means none.
    pub jwt_secret_file: String,
    /// Clock skew allowed on `exp` and `nbf`, s.
    pub jwt_leeway_secs: u64,
    /// Refuse API keys once the replica has been out of touch with Redis
    /// this long, s; 0: never (serve from the last known state).
    pub fail_closed_after_secs: u64,
}

impl Default for RawAuth {
    fn default() -> Self {
        Self {
            jwt_secret: Secret::default(),
            jwt_secret_file: String::new(),
            jwt_leeway_secs: 5,
            fail_closed_after_secs: 0,
        }
    }
}

/// `[log]` as written.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawLog {
    /// tracing filter directive.
    pub level: String,
    /// `text` (human-readable) or `json` (one object per line).
    pub format: String,
}

impl Default for RawLog {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: "text".into(),
        }
    }
}

/// `[spool]` as written.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawSpool {
    /// Spool directory; empty means no spool.
    pub dir: String,
    /// Size cap of the spool, bytes.
    pub max_bytes: u64,
}

impl Default for RawSpool {
    fn default() -> Self {
        Self {
            dir: String::new(),
            max_bytes: 1 << 30,
        }
    }
}

/// `[idempotency]` as written.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawIdempotency {
    /// How long a key's answer is kept, s.
    pub window_secs: u64,
    /// How long a concurrent duplicate waits for the first request's answer
    /// before it gets 409, ms.
    pub wait_ms: u64,
}

impl Default for RawIdempotency {
    fn default() -> Self {
        Self {
            window_secs: 86_400,
            wait_ms: 5_000,
        }
    }
}

/// `[rate_limit]` as written.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawRateLimit {
    /// Requests per second per API key when its record sets no
    /// `rateLimitPerSec`; 0: unlimited.
    pub default_per_sec: u32,
    /// Requests a key may send back to back above its steady rate; 0: one
    /// second's worth.
    pub burst: u32,
    /// `instance` or `global`.
    pub scope: String,
}

impl Default for RawRateLimit {
    fn default() -> Self {
        Self {
            default_per_sec: 0,
            burst: 0,
            scope: "instance".into(),
        }
    }
}

impl RawConfig {
    /// Parses TOML text; `origin` names it in errors.
    pub fn from_toml(text: &str, origin: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_owned(),
            message: e.to_string(),
        })
    }

    /// Reads a TOML file (missing settings keep their defaults).
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_toml(&text, &path.display().to_string())
    }

    /// Applies `TETHER_INGRESS_*` overrides read through `env`
    /// (a closure so tests pass a map instead of the process environment).
    pub fn apply_env(&mut self, env: impl Fn(&str) -> Option<String>) {
        if let Some(v) = env(ENV_JWT_SECRET) {
            self.auth.jwt_secret = Secret::new(v);
        }
        if let Some(v) = env(ENV_REDIS_WAIT_REPLICAS) {
            // Not a number: out of range, so validate() names the setting.
            self.redis.wait_replicas = v.trim().parse().unwrap_or(u32::MAX);
        }
        let texts: [(&str, &mut String); 19] = [
            (ENV_LISTEN, &mut self.server.listen),
            (ENV_REDIS_URL, &mut self.redis.url),
            (ENV_TLS_CERT_FILE, &mut self.server.tls.cert_file),
            (ENV_TLS_KEY_FILE, &mut self.server.tls.key_file),
            (ENV_REDIS_TLS_CA_FILE, &mut self.redis.tls.ca_file),
            (ENV_REDIS_TLS_CERT_FILE, &mut self.redis.tls.cert_file),
            (ENV_REDIS_TLS_KEY_FILE, &mut self.redis.tls.key_file),
            (ENV_UPSTREAM_URL, &mut self.upstream.url),
            (ENV_UPSTREAM_CA_FILE, &mut self.upstream.ca_file),
            (ENV_JWT_SECRET_FILE, &mut self.auth.jwt_secret_file),
            (ENV_SPOOL_DIR, &mut self.spool.dir),
            (ENV_RATE_LIMIT_SCOPE, &mut self.rate_limit.scope),
            (ENV_SINK, &mut self.sink.kind),
            (ENV_BULLMQ_PREFIX, &mut self.bullmq.prefix),
            (ENV_BULLMQ_WORKFLOW_QUEUE, &mut self.bullmq.workflow_queue),
            (ENV_BULLMQ_OUTREACH_QUEUE, &mut self.bullmq.outreach_queue),
            (ENV_BULLMQ_JOB_OPTIONS, &mut self.bullmq.job_options),
            (ENV_LOG, &mut self.log.level),
            (ENV_LOG_FORMAT, &mut self.log.format),
        ];
        for (name, setting) in texts {
            if let Some(v) = env(name) {
                *setting = v;
            }
        }
    }

    /// Checks every value and converts to the typed [`Config`].
    pub fn validate(self) -> Result<Config, ConfigError> {
        let mut problems = Vec::new();
        let s = &self.server;
        let listen = s.listen.parse::<SocketAddr>().unwrap_or_else(|_| {
            problems.push(format!(
                "server.listen: {:?} is not an address like 127.0.0.1:8080",
                s.listen
            ));
            SocketAddr::from(([127, 0, 0, 1], 8080))
        });
        let nonzero = |v: usize, name: &str, problems: &mut Vec<String>| {
            NonZeroUsize::new(v).unwrap_or_else(|| {
                problems.push(format!("{name}: must be at least 1"));
                NonZeroUsize::MIN
            })
        };
        let max_connections = nonzero(s.max_connections, "server.max_connections", &mut problems);
        if s.max_connections > 1_000_000 {
            problems.push("server.max_connections: must be at most 1000000".into());
        }
        let max_body_bytes = nonzero(s.max_body_bytes, "server.max_body_bytes", &mut problems);
        if s.max_header_bytes < 8192 {
            problems.push("server.max_header_bytes: must be at least 8192".into());
        }
        let threads = match &s.serving_threads {
            RawThreads::Count(n) if *n > 256 => {
                problems.push("server.serving_threads: must be at most 256".into());
                0
            }
            RawThreads::Count(n) => *n,
            RawThreads::Named(name) if name == "auto" => crate::cores::per_core(),
            RawThreads::Named(_) => {
                problems.push(r#"server.serving_threads: must be "auto" or a number"#.into());
                0
            }
        };
        let serving_threads =
            NonZeroUsize::new(threads).map_or(ServingThreads::Shared, ServingThreads::PerThread);
        let http2_max_concurrent_streams = NonZeroU32::new(s.http2_max_concurrent_streams)
            .unwrap_or_else(|| {
                problems.push("server.http2_max_concurrent_streams: must be at least 1".into());
                NonZeroU32::MIN
            });
        for (name, ms) in [
            ("server.body_read_timeout_ms", s.body_read_timeout_ms),
            ("server.first_byte_timeout_ms", s.first_byte_timeout_ms),
            ("server.header_read_timeout_ms", s.header_read_timeout_ms),
            ("redis.command_timeout_ms", self.redis.command_timeout_ms),
            ("redis.connect_timeout_ms", self.redis.connect_timeout_ms),
        ] {
            if ms == 0 {
                problems.push(format!("{name}: must be at least 1"));
            }
        }
        let r = &self.redis;
        if let Err(problem) = check_redis_url(&r.url) {
            problems.push(format!("redis.url: {:?} {problem}", redact_url(&r.url)));
        }
        let server_tls = check_server_tls(&s.tls).unwrap_or_else(|problem| {
            problems.push(problem);
            None
        });
        let redis_tls = check_redis_tls(&r.url, &r.tls).unwrap_or_else(|problem| {
            problems.push(problem);
            RedisTlsConfig::default()
        });
        if r.key_prefix.is_empty() {
            problems.push("redis.key_prefix: must not be empty".into());
        }
        if r.resync_interval_secs == 0 {
            problems.push("redis.resync_interval_secs: must be at least 1".into());
        }
        if !(1..=100).contains(&r.resync_busy_percent) {
            problems.push("redis.resync_busy_percent: must be between 1 and 100".into());
        }
        let max_pending = nonzero(
            r.max_pending_commands,
            "redis.max_pending_commands",
            &mut problems,
        );
        if self.streams.workflow.is_empty() || self.streams.outreach.is_empty() {
            problems.push("streams.workflow and streams.outreach must not be empty".into());
        }
        if self.streams.maxlen < 1 {
            problems.push("streams.maxlen: must be at least 1".into());
        }
        let upstream = if self.upstream.url.is_empty() {
            None
        } else {
            match self.upstream.url.parse::<http::Uri>() {
                Ok(u)
                    if matches!(u.scheme_str(), Some("http" | "https"))
                        && u.authority().is_some() =>
                {
                    Some(u)
                }
                _ => {
                    problems.push(format!(
                        "upstream.url: {:?} must be an http:// or https:// URL like http://127.0.0.1:2212",
                        self.upstream.url
                    ));
                    None
                }
            }
        };
        let upstream_ca_file = (!self.upstream.ca_file.is_empty())
            .then(|| std::path::PathBuf::from(&self.upstream.ca_file));
        match upstream.as_ref().map(|u| u.scheme_str() == Some("https")) {
            Some(true) => {
                let files = crate::tls::ClientFiles {
                    ca: upstream_ca_file.as_deref(),
                    identity: None,
                };
                if let Err(e) = crate::tls::client_config(files) {
                    problems.push(format!("upstream.ca_file: {e}"));
                }
            }
            _ if upstream_ca_file.is_some() => problems
                .push("upstream.ca_file: set, but upstream.url is not an https:// URL".into()),
            _ => {}
        }
        for (name, ms) in [
            (
                "upstream.connect_timeout_ms",
                self.upstream.connect_timeout_ms,
            ),
            (
                "upstream.response_timeout_ms",
                self.upstream.response_timeout_ms,
            ),
        ] {
            if ms == 0 {
                problems.push(format!("{name}: must be at least 1"));
            }
        }
        let jwt_secret = match (
            self.auth.jwt_secret.is_empty(),
            self.auth.jwt_secret_file.is_empty(),
        ) {
            (true, true) => None,
            (false, true) => Some(self.auth.jwt_secret.clone()),
            (true, false) => match std::fs::read_to_string(&self.auth.jwt_secret_file) {
                Ok(text) if !text.trim_end_matches(['\r', '\n']).is_empty() => {
                    Some(Secret::new(text.trim_end_matches(['\r', '\n'])))
                }
                Ok(_) => {
                    problems.push(format!(
                        "auth.jwt_secret_file: {:?} is empty",
                        self.auth.jwt_secret_file
                    ));
                    None
                }
                Err(e) => {
                    problems.push(format!(
                        "auth.jwt_secret_file: cannot read {:?}: {e}",
                        self.auth.jwt_secret_file
                    ));
                    None
                }
            },
            (false, false) => {
                problems.push("auth: set jwt_secret or jwt_secret_file, not both".into());
                None
            }
        };
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            problems.push(format!(
                "log.level: {:?} is not a tracing filter",
                self.log.level
            ));
        }
        let log_format = match self.log.format.as_str() {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => {
                problems.push(format!(
                    "log.format: {other:?} must be \"text\" or \"json\""
                ));
                LogFormat::Text
            }
        };
        let spool_dir =
            (!self.spool.dir.is_empty()).then(|| std::path::PathBuf::from(&self.spool.dir));
        if spool_dir.is_some() && self.spool.max_bytes < 1 << 20 {
            problems.push("spool.max_bytes: must be at least 1048576".into());
        }
        if self.idempotency.window_secs == 0 {
            problems.push("idempotency.window_secs: must be at least 1".into());
        }
        if self.redis.wait_replicas > 100 {
            problems.push(format!(
                "redis.wait_replicas: {} must be a number of replicas from 0 to 100",
                if self.redis.wait_replicas == u32::MAX {
                    "the value".to_owned()
                } else {
                    self.redis.wait_replicas.to_string()
                }
            ));
        }
        let rate_limit_scope = match self.rate_limit.scope.as_str() {
            "instance" => RateLimitScope::Instance,
            "global" => RateLimitScope::Global,
            other => {
                problems.push(format!(
                    "rate_limit.scope: {other:?} must be \"instance\" or \"global\""
                ));
                RateLimitScope::Instance
            }
        };
        let sink_kind = match self.sink.kind.as_str() {
            "streams" => SinkKind::Streams,
            "bullmq" => SinkKind::Bullmq,
            other => {
                problems.push(format!(
                    "sink.kind: {other:?} must be \"streams\" or \"bullmq\""
                ));
                SinkKind::Streams
            }
        };
        let bullmq = check_bullmq(&self.bullmq, &mut problems);
        // A BullMQ job's script touches every key of its queue: in a
        // cluster they must share one slot, which a hash tag gives them.
        if sink_kind == SinkKind::Bullmq && is_cluster_url(&self.redis.url) {
            for queue in [&self.bullmq.workflow_queue, &self.bullmq.outreach_queue] {
                if hash_tag(&format!("{}:{queue}:", self.bullmq.prefix)).is_none() {
                    problems.push(format!(
                        "bullmq.prefix: {:?} needs a hash tag in a Redis Cluster, such as \"{{bull}}\", so that the keys of queue {queue:?} share one slot (or wrap the queue name in braces)",
                        self.bullmq.prefix
                    ));
                    break;
                }
            }
        }
        if !problems.is_empty() {
            return Err(ConfigError::Invalid(problems));
        }
        Ok(Config {
            server: ServerConfig {
                listen,
                max_connections,
                first_byte_timeout: Duration::from_millis(s.first_byte_timeout_ms),
                header_read_timeout: Duration::from_millis(s.header_read_timeout_ms),
                shutdown_grace: Duration::from_millis(s.shutdown_grace_ms),
                max_body_bytes,
                max_header_bytes: s.max_header_bytes,
                http2_max_concurrent_streams,
                body_read_timeout: Duration::from_millis(s.body_read_timeout_ms),
                connection_queue_timeout: Duration::from_millis(s.connection_queue_timeout_ms),
                serving_threads,
                tls: server_tls,
            },
            redis: RedisConfig {
                url: r.url.clone(),
                key_prefix: r.key_prefix.clone(),
                command_timeout: Duration::from_millis(r.command_timeout_ms),
                connect_timeout: Duration::from_millis(r.connect_timeout_ms),
                resync_interval: Duration::from_secs(r.resync_interval_secs),
                resync_busy_percent: r.resync_busy_percent,
                max_pending_commands: max_pending,
                wait_replicas: r.wait_replicas,
                retry_after_secs: r.retry_after_secs,
                tls: redis_tls,
            },
            streams: StreamsConfig {
                workflow: self.streams.workflow,
                outreach: self.streams.outreach,
                maxlen: self.streams.maxlen,
            },
            sink: SinkConfig { kind: sink_kind },
            bullmq,
            upstream: UpstreamConfig {
                url: upstream,
                ca_file: upstream_ca_file,
                connect_timeout: Duration::from_millis(self.upstream.connect_timeout_ms),
                response_timeout: Duration::from_millis(self.upstream.response_timeout_ms),
            },
            auth: AuthConfig {
                jwt_secret,
                jwt_secret_file: (!self.auth.jwt_secret_file.is_empty())
                    .then(|| std::path::PathBuf::from(&self.auth.jwt_secret_file)),
                jwt_leeway_secs: self.auth.jwt_leeway_secs,
                fail_closed_after: (self.auth.fail_closed_after_secs > 0)
                    .then(|| Duration::from_secs(self.auth.fail_closed_after_secs)),
            },
            spool: SpoolConfig {
                dir: spool_dir,
                max_bytes: self.spool.max_bytes,
            },
            idempotency: IdempotencyConfig {
                window: Duration::from_secs(self.idempotency.window_secs),
                wait: Duration::from_millis(self.idempotency.wait_ms),
            },
            rate_limit: RateLimitConfig {
                default_per_sec: NonZeroU32::new(self.rate_limit.default_per_sec),
                burst: NonZeroU32::new(self.rate_limit.burst),
                scope: rate_limit_scope,
            },
            log: LogConfig {
                level: self.log.level,
                format: log_format,
            },
        })
    }
}

// === Config: validated ===

/// The validated configuration, one struct per section of the file, with
/// real types (`Duration`, `Option` for what can be off, enums). It
/// serialises back to the file's section and key names and units, secrets
/// masked and the Redis password redacted: that is what `check-config`
/// prints, so it cannot leave a setting out.
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    /// `[server]`
    pub server: ServerConfig,
    /// `[redis]`
    pub redis: RedisConfig,
    /// `[streams]`
    pub streams: StreamsConfig,
    /// `[sink]`
    pub sink: SinkConfig,
    /// `[bullmq]`
    pub bullmq: BullmqConfig,
    /// `[upstream]`
    pub upstream: UpstreamConfig,
    /// `[auth]`
    pub auth: AuthConfig,
    /// `[spool]`
    pub spool: SpoolConfig,
    /// `[idempotency]`
    pub idempotency: IdempotencyConfig,
    /// `[rate_limit]`
    pub rate_limit: RateLimitConfig,
    /// `[log]`
    pub log: LogConfig,
}

/// `[server]`: the listener and its connections.
#[derive(Debug, Clone, Serialize)]
pub struct ServerConfig {
    /// Bind address.
    pub listen: SocketAddr,
    /// Connections served at once.
    pub max_connections: NonZeroUsize,
    /// A silent connection is closed after this.
    #[serde(rename = "first_byte_timeout_ms", with = "as_ms")]
    pub first_byte_timeout: Duration,
    /// HTTP/1 head (and idle keep-alive) deadline.
    #[serde(rename = "header_read_timeout_ms", with = "as_ms")]
    pub header_read_timeout: Duration,
    /// Drain deadline on shutdown.
    #[serde(rename = "shutdown_grace_ms", with = "as_ms")]
    pub shutdown_grace: Duration,
    /// Webhook body cap, bytes.
    pub max_body_bytes: NonZeroUsize,
    /// Request head cap, bytes.
    pub max_header_bytes: usize,
    /// HTTP/2 streams per connection.
    pub http2_max_concurrent_streams: NonZeroU32,
    /// Whole-body deadline on the webhook routes.
    #[serde(rename = "body_read_timeout_ms", with = "as_ms")]
    pub body_read_timeout: Duration,
    /// Wait for a connection slot at the cap before refusing.
    #[serde(rename = "connection_queue_timeout_ms", with = "as_ms")]
    pub connection_queue_timeout: Duration,
    /// Where connections are served.
    pub serving_threads: ServingThreads,
    /// `[server.tls]`: the listener speaks TLS only when set (written `""`
    /// when not).
    #[serde(serialize_with = "server_tls_or_empty")]
    pub tls: Option<ServerTlsConfig>,
}

/// `[server.tls]`: the listener's certificate chain and key (PEM).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServerTlsConfig {
    /// Certificate chain, leaf first.
    pub cert_file: std::path::PathBuf,
    /// Private key (its path, never its contents).
    pub key_file: std::path::PathBuf,
}

fn server_tls_or_empty<S: serde::Serializer>(
    tls: &Option<ServerTlsConfig>,
    s: S,
) -> Result<S::Ok, S::Error> {
    let none = ServerTlsConfig {
        cert_file: std::path::PathBuf::new(),
        key_file: std::path::PathBuf::new(),
    };
    tls.as_ref().unwrap_or(&none).serialize(s)
}

/// Where connections are served (`server.serving_threads`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServingThreads {
    /// On the shared multi-threaded runtime (written `0`).
    Shared,
    /// On this many threads with a single-threaded runtime each (`"auto"`
    /// is resolved to one per core).
    PerThread(NonZeroUsize),
}

impl ServingThreads {
    /// The number of serving threads (0: the shared runtime serves).
    pub fn count(self) -> usize {
        match self {
            ServingThreads::Shared => 0,
            ServingThreads::PerThread(n) => n.get(),
        }
    }
}

impl Serialize for ServingThreads {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.count() as u64)
    }
}

/// `[redis]`: the one Redis holding the control plane and the jobs.
#[derive(Debug, Clone, Serialize)]
pub struct RedisConfig {
    /// Redis URL (may hold a password: printed redacted).
    #[serde(serialize_with = "redacted_url")]
    pub url: String,
    /// Control-plane key prefix, e.g. `tether:`.
    pub key_prefix: String,
    /// Per-command deadline.
    #[serde(rename = "command_timeout_ms", with = "as_ms")]
    pub command_timeout: Duration,
    /// Connect deadline.
    #[serde(rename = "connect_timeout_ms", with = "as_ms")]
    pub connect_timeout: Duration,
    /// Safety-net resync period.
    #[serde(rename = "resync_interval_secs", with = "as_secs")]
    pub resync_interval: Duration,
    /// Share of the time (percent) a resync after the first load keeps busy.
    pub resync_busy_percent: u8,
    /// Cap on commands queued towards Redis.
    pub max_pending_commands: NonZeroUsize,
    /// Retry-After on 503, seconds.
    pub retry_after_secs: u32,
    /// Replicas that must hold a job (Redis `WAIT`) before it counts as
    /// stored; 0: off.
    pub wait_replicas: u32,
    /// `[redis.tls]`
    pub tls: RedisTlsConfig,
}

/// `[redis.tls]`: the PEM files of a `rediss://` connection.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RedisTlsConfig {
    /// CA certificates; `None`: the system's roots (written `""`).
    #[serde(serialize_with = "path_or_empty")]
    pub ca_file: Option<std::path::PathBuf>,
    /// Client certificate chain, for mutual TLS.
    #[serde(serialize_with = "path_or_empty")]
    pub cert_file: Option<std::path::PathBuf>,
    /// Client private key, for mutual TLS (its path, not its contents).
    #[serde(serialize_with = "path_or_empty")]
    pub key_file: Option<std::path::PathBuf>,
}

impl RedisTlsConfig {
    /// The files as the TLS module takes them.
    pub fn files(&self) -> crate::tls::ClientFiles<'_> {
        crate::tls::ClientFiles {
            ca: self.ca_file.as_deref(),
            identity: self.cert_file.as_deref().zip(self.key_file.as_deref()),
        }
    }
}

/// `[streams]`: where jobs go.
#[derive(Debug, Clone, Serialize)]
pub struct StreamsConfig {
    /// Workflow job stream.
    pub workflow: String,
    /// Outreach job stream.
    pub outreach: String,
    /// `MAXLEN ~` threshold.
    pub maxlen: i64,
}

/// `[sink]`: which layout jobs are written in.
#[derive(Debug, Clone, Serialize)]
pub struct SinkConfig {
    /// Streams or BullMQ queues.
    pub kind: SinkKind,
}

/// `sink.kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SinkKind {
    /// Redis Streams entries (`[streams]`).
    Streams,
    /// BullMQ jobs (`[bullmq]`), as the Node library's `queue.add` makes them.
    Bullmq,
}

/// `[bullmq]`: the queues of the BullMQ sink.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BullmqConfig {
    /// Key prefix of every queue.
    pub prefix: String,
    /// Queue of the workflow jobs.
    pub workflow_queue: String,
    /// Queue of the outreach jobs.
    pub outreach_queue: String,
    /// Name of each workflow job.
    pub workflow_job_name: String,
    /// Name of each outreach job.
    pub outreach_job_name: String,
    /// The `opts` every job is stored with, as BullMQ stores them (compact
    /// JSON, `attempts` always present, without the per-job `jobId`).
    pub job_options: String,
}

/// Job options BullMQ's standard add stores as given. Others (delay,
/// priority, lifo, parents, deduplication, repeat) change where a job goes
/// or need a script path this sink does not write, so they are refused.
const BULLMQ_OPTIONS: [&str; 6] = [
    "attempts",
    "backoff",
    "removeOnComplete",
    "removeOnFail",
    "keepLogs",
    "stackTraceLimit",
];

/// Checks `[bullmq]`, normalising `job_options` into the `opts` JSON BullMQ
/// stores: `attempts` defaults to 0, a numeric `backoff` becomes
/// `{"type":"fixed","delay":N}`, `keepLogs` is stored as `kl`.
fn check_bullmq(raw: &RawBullmq, problems: &mut Vec<String>) -> BullmqConfig {
    use serde_json::Value as J;
    let mut name = |what: &str, value: &str, colon_ok: bool| {
        if value.is_empty() {
            problems.push(format!("bullmq.{what}: must not be empty"));
        } else if !colon_ok && value.contains(':') {
            problems.push(format!("bullmq.{what}: {value:?} must not contain ':'"));
        }
    };
    name("prefix", &raw.prefix, true);
    name("workflow_queue", &raw.workflow_queue, false);
    name("outreach_queue", &raw.outreach_queue, false);
    name("workflow_job_name", &raw.workflow_job_name, true);
    name("outreach_job_name", &raw.outreach_job_name, true);
    if raw.workflow_queue == raw.outreach_queue && !raw.workflow_queue.is_empty() {
        problems.push("bullmq.outreach_queue: must differ from bullmq.workflow_queue".into());
    }
    let mut opts = serde_json::Map::new();
    opts.insert("attempts".into(), J::from(0));
    let text = raw.job_options.trim();
    if !text.is_empty() {
        let mut bad = |why: String| problems.push(format!("bullmq.job_options: {why}"));
        match serde_json::from_str::<J>(text) {
            Ok(J::Object(given)) => {
                for (key, value) in given {
                    let ok = match key.as_str() {
                        "attempts" | "keepLogs" | "stackTraceLimit" => value.as_u64().is_some(),
                        "backoff" => match &value {
                            J::Number(n) => n.as_u64().is_some(),
                            J::Object(o) => {
                                o.get("type").is_some_and(J::is_string)
                                    && o.get("delay").is_none_or(|d| d.as_u64().is_some())
                                    && o.get("jitter").is_none_or(|j| {
                                        j.as_f64().is_some_and(|j| (0.0..=1.0).contains(&j))
                                    })
                            }
                            _ => false,
                        },
                        "removeOnComplete" | "removeOnFail" => match &value {
                            J::Bool(_) => true,
                            J::Number(n) => n.as_u64().is_some(),
                            J::Object(o) => o.iter().all(|(k, v)| {
                                matches!(k.as_str(), "age" | "count" | "limit")
                                    && v.as_u64().is_some()
                            }),
                            _ => false,
                        },
                        other => {
                            bad(format!(
                                "{other:?} is not supported (supported: {})",
                                BULLMQ_OPTIONS.join(", ")
                            ));
                            continue;
                        }
                    };
                    if !ok {
                        bad(format!("{key:?} has an invalid value {value}"));
                        continue;
                    }
                    let value = match (key.as_str(), value) {
                        ("backoff", J::Number(delay)) => {
                            serde_json::json!({"type": "fixed", "delay": delay})
                        }
                        (_, value) => value,
                    };
                    let key = if key == "keepLogs" { "kl".into() } else { key };
                    opts.insert(key, value);
                }
            }
            Ok(_) => bad("must be a JSON object like {\"attempts\":3}".into()),
            Err(e) => bad(format!("not JSON: {e}")),
        }
    }
    BullmqConfig {
        prefix: raw.prefix.clone(),
        workflow_queue: raw.workflow_queue.clone(),
        outreach_queue: raw.outreach_queue.clone(),
        workflow_job_name: raw.workflow_job_name.clone(),
        outreach_job_name: raw.outreach_job_name.clone(),
        job_options: J::Object(opts).to_string(),
    }
}

/// `[upstream]`: the sidecar's backend.
#[derive(Debug, Clone, Serialize)]
pub struct UpstreamConfig {
    /// Backend URL; `None`: no upstream (written `""`).
    #[serde(serialize_with = "uri_or_empty")]
    pub url: Option<http::Uri>,
    /// Upstream connect deadline.
    #[serde(rename = "connect_timeout_ms", with = "as_ms")]
    pub connect_timeout: Duration,
    /// Upstream response head deadline.
    #[serde(rename = "response_timeout_ms", with = "as_ms")]
    pub response_timeout: Duration,
    /// CA an `https://` upstream must chain to; `None`: the system's roots.
    #[serde(serialize_with = "path_or_empty")]
    pub ca_file: Option<std::path::PathBuf>,
}

/// `[auth]`: JWT verification and fail-closed.
#[derive(Debug, Clone, Serialize)]
pub struct AuthConfig {
    /// HS256 secret, if any (from `jwt_secret` or `jwt_secret_file`;
    /// printed masked).
    #[serde(serialize_with = "masked")]
    pub jwt_secret: Option<Secret>,
    /// The file the secret was read from, if any.
    #[serde(serialize_with = "path_or_empty")]
    pub jwt_secret_file: Option<std::path::PathBuf>,
    /// Clock skew allowed on `exp` and `nbf`, seconds.
    pub jwt_leeway_secs: u64,
    /// Refuse keys once the replica is out of touch this long; `None`: never
    /// (written `0`).
    #[serde(rename = "fail_closed_after_secs", serialize_with = "secs_or_zero")]
    pub fail_closed_after: Option<Duration>,
}

/// `[spool]`: the local durable spool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SpoolConfig {
    /// Spool directory; `None`: no spool (written `""`).
    #[serde(serialize_with = "path_or_empty")]
    pub dir: Option<std::path::PathBuf>,
    /// Spool size cap, bytes.
    pub max_bytes: u64,
}

/// `[idempotency]`: `Idempotency-Key` answers.
#[derive(Debug, Clone, Serialize)]
pub struct IdempotencyConfig {
    /// How long an idempotency key's answer is kept.
    #[serde(rename = "window_secs", with = "as_secs")]
    pub window: Duration,
    /// How long a concurrent duplicate waits before 409.
    #[serde(rename = "wait_ms", with = "as_ms")]
    pub wait: Duration,
}

/// `[rate_limit]`: per-key limits.
#[derive(Debug, Clone, Serialize)]
pub struct RateLimitConfig {
    /// Requests per second for a key whose record sets none; `None`:
    /// unlimited (written `0`).
    #[serde(serialize_with = "count_or_zero")]
    pub default_per_sec: Option<NonZeroU32>,
    /// Back-to-back allowance; `None`: one second's worth (written `0`).
    #[serde(serialize_with = "count_or_zero")]
    pub burst: Option<NonZeroU32>,
    /// Per instance, or one limit across every instance on the Redis.
    pub scope: RateLimitScope,
}

/// `rate_limit.scope`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RateLimitScope {
    /// Each instance counts on its own.
    Instance,
    /// One count per key in Redis, shared by every instance.
    Global,
}

/// `[log]`: logging.
#[derive(Debug, Clone, Serialize)]
pub struct LogConfig {
    /// tracing filter.
    pub level: String,
    /// Line format.
    pub format: LogFormat,
}

/// `log.format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Durations written as whole milliseconds.
mod as_ms {
    pub(super) fn serialize<S: serde::Serializer>(
        d: &std::time::Duration,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }
}

/// Durations written as whole seconds.
mod as_secs {
    pub(super) fn serialize<S: serde::Serializer>(
        d: &std::time::Duration,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_secs())
    }
}

fn secs_or_zero<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.map_or(0, |d| d.as_secs()))
}

fn count_or_zero<S: serde::Serializer>(n: &Option<NonZeroU32>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u32(n.map_or(0, NonZeroU32::get))
}

fn path_or_empty<S: serde::Serializer>(
    p: &Option<std::path::PathBuf>,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_str(
        &p.as_ref()
            .map_or(std::borrow::Cow::Borrowed(""), |p| p.to_string_lossy()),
    )
}

fn uri_or_empty<S: serde::Serializer>(u: &Option<http::Uri>, s: S) -> Result<S::Ok, S::Error> {
    match u {
        Some(u) => s.collect_str(u),
        None => s.serialize_str(""),
    }
}

fn masked<S: serde::Serializer>(secret: &Option<Secret>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(if secret.is_some() { REDACTED } else { "" })
}

fn redacted_url<S: serde::Serializer>(url: &str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&redact_url(url))
}

/// What a secret prints as.
pub const REDACTED: &str = "**REDACTED**";

/// The configuration as `section.key = value` lines, in the file's names
/// and units, secrets masked: `check-config`'s output. It is the serialised
/// [`Config`], so every setting is in it.
pub fn describe(config: &Config) -> String {
    fn walk(prefix: &str, value: &toml::Value, out: &mut String) {
        use std::fmt::Write as _;
        match value {
            toml::Value::Table(table) => {
                for (key, v) in table {
                    let path = if prefix.is_empty() {
                        key.clone()
                    } else {
                        format!("{prefix}.{key}")
                    };
                    walk(&path, v, out);
                }
            }
            toml::Value::String(s) if s.is_empty() => {
                let _ = writeln!(out, "{prefix} = (none)");
            }
            toml::Value::String(s) => {
                let _ = writeln!(out, "{prefix} = {s}");
            }
            other => {
                let _ = writeln!(out, "{prefix} = {other}");
            }
        }
    }
    let mut out = String::new();
    match toml::Value::try_from(config) {
        Ok(value) => walk("", &value, &mut out),
        // Every field serialises to a TOML scalar; this cannot happen.
        Err(e) => out.push_str(&format!("(cannot describe the configuration: {e})\n")),
    }
    out
}

impl Config {
    /// Built-in defaults, then `path` if given, then the process environment.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let mut raw = match path {
            Some(p) => RawConfig::from_file(p)?,
            None => RawConfig::default(),
        };
        raw.apply_env(|k| std::env::var(k).ok());
        raw.validate()
    }
}

impl Default for Config {
    /// The built-in defaults (same as `config/default.toml`).
    fn default() -> Self {
        // The defaults are checked by a unit test, so this cannot fail.
        #[allow(clippy::expect_used)]
        RawConfig::default()
            .validate()
            .expect("built-in defaults are valid")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn default_toml_matches_built_in_defaults() {
        let parsed = RawConfig::from_toml(DEFAULT_TOML, "default.toml").unwrap();
        assert_eq!(parsed, RawConfig::default());
        assert!(RawConfig::default().validate().is_ok());
    }

    #[test]
    fn partial_file_keeps_other_defaults() {
        let raw = RawConfig::from_toml("[server]\nmax_body_bytes = 10\n", "t").unwrap();
        assert_eq!(raw.server.max_body_bytes, 10);
        assert_eq!(raw.redis, RawRedis::default());
    }

    #[test]
    fn unknown_setting_is_refused() {
        let err = RawConfig::from_toml("[server]\nlisten_addr = \"x\"\n", "t").unwrap_err();
        assert!(err.to_string().contains("listen_addr"), "{err}");
    }

    #[test]
    fn env_overrides_file() {
        let env: HashMap<&str, &str> = HashMap::from([
            (ENV_LISTEN, "0.0.0.0:9999"),
            (ENV_REDIS_URL, "redis://10.0.0.1:6380"),
            (ENV_JWT_SECRET, "s3cret"),
        ]);
        let mut raw = RawConfig::default();
        raw.apply_env(|k| env.get(k).map(|v| v.to_string()));
        let cfg = raw.validate().unwrap();
        assert_eq!(cfg.server.listen.port(), 9999);
        assert_eq!(cfg.redis.url, "redis://10.0.0.1:6380");
        assert_eq!(cfg.auth.jwt_secret.as_ref().unwrap().expose(), b"s3cret");
        assert!(!format!("{cfg:?}").contains("s3cret"));
    }

    #[test]
    fn bullmq_in_a_cluster_needs_a_hash_tag() {
        let check = |prefix: &str, queue: &str| {
            let mut raw = RawConfig::default();
            raw.redis.url = "redis-cluster://127.0.0.1:7000".into();
            raw.sink.kind = "bullmq".into();
            raw.bullmq.prefix = prefix.into();
            raw.bullmq.workflow_queue = queue.into();
            raw.bullmq.outreach_queue = format!("{queue}-out");
            raw.validate().map(drop).map_err(|e| e.to_string())
        };
        assert!(check("{bull}", "wf").is_ok());
        assert!(check("bull", "{wf}").is_ok());
        let err = check("bull", "wf").unwrap_err();
        assert!(err.contains("hash tag"), "{err}");
        assert!(
            check("bull{}", "wf").is_err(),
            "an empty tag hashes the whole key"
        );
        assert_eq!(hash_tag("a{b}c{d}"), Some("b"));
        // Off a cluster, any prefix does.
        let mut raw = RawConfig::default();
        raw.sink.kind = "bullmq".into();
        raw.bullmq.prefix = "bull".into();
        assert!(raw.validate().is_ok());
    }

    #[test]
    fn bullmq_settings_from_the_environment() {
        let env: HashMap<&str, &str> = HashMap::from([
            (ENV_SINK, "bullmq"),
            (ENV_BULLMQ_PREFIX, "{bull}"),
            (ENV_BULLMQ_WORKFLOW_QUEUE, "wf"),
            (ENV_BULLMQ_OUTREACH_QUEUE, "out"),
            (
                ENV_BULLMQ_JOB_OPTIONS,
                r#"{"attempts":3,"removeOnComplete":true}"#,
            ),
        ]);
        let mut raw = RawConfig::default();
        raw.apply_env(|k| env.get(k).map(|v| v.to_string()));
        let cfg = raw.validate().unwrap();
        assert_eq!(cfg.sink.kind, SinkKind::Bullmq);
        assert_eq!(
            (
                cfg.bullmq.prefix.as_str(),
                cfg.bullmq.workflow_queue.as_str(),
                cfg.bullmq.outreach_queue.as_str()
            ),
            ("{bull}", "wf", "out")
        );
        assert_eq!(
            cfg.bullmq.job_options,
            r#"{"attempts":3,"removeOnComplete":true}"#
        );
        for (var, value, says) in [
            (ENV_SINK, "kafka", "sink.kind"),
            (ENV_BULLMQ_WORKFLOW_QUEUE, "a:b", "bullmq.workflow_queue"),
            (ENV_BULLMQ_OUTREACH_QUEUE, "", "bullmq.outreach_queue"),
        ] {
            let mut raw = RawConfig::default();
            raw.apply_env(|k| (k == var).then(|| value.to_owned()));
            let err = raw.validate().unwrap_err().to_string();
            assert!(err.contains(says), "{var}={value}: {err}");
        }
    }

    #[test]
    fn jwt_secret_from_a_file() {
        let path = std::env::temp_dir().join(format!("tether-secret-{}", std::process::id()));
        std::fs::write(&path, "file-secret\n").unwrap();
        let mut raw = RawConfig::default();
        raw.auth.jwt_secret_file = path.display().to_string();
        let cfg = raw.clone().validate().unwrap();
        assert_eq!(cfg.auth.jwt_secret.unwrap().expose(), b"file-secret");
        raw.auth.jwt_secret = Secret::new("inline");
        assert!(raw.validate().is_err(), "both set");
        let _ = std::fs::remove_file(&path);
        let mut raw = RawConfig::default();
        raw.auth.jwt_secret_file = "/nonexistent/secret".into();
        assert!(raw.validate().is_err());
    }

    #[test]
    fn every_problem_is_reported() {
        let mut raw = RawConfig::default();
        raw.server.listen = "nope".into();
        raw.server.max_connections = 0;
        raw.redis.url = "http://x".into();
        let ConfigError::Invalid(problems) = raw.validate().unwrap_err() else {
            panic!("expected Invalid");
        };
        assert_eq!(problems.len(), 3, "{problems:?}");
    }

    #[test]
    fn redis_urls_this_build_cannot_honour_are_refused() {
        let check = |url: &str| {
            let mut raw = RawConfig::default();
            raw.redis.url = url.into();
            raw.validate().map(drop).map_err(|e| e.to_string())
        };
        assert!(check("redis://127.0.0.1:6379/0").is_ok());
        assert!(check("redis://user:pw@127.0.0.1:6379").is_ok());
        assert!(check("redis+unix:///tmp/redis.sock").is_ok());
        assert!(
            check(
                "redis-sentinel://u:pw@127.0.0.1:26379?sentinelServiceName=m&node=127.0.0.1:26380"
            )
            .is_ok()
        );
        assert!(check("redis-cluster://u:pw@127.0.0.1:7000?node=127.0.0.1:7001").is_ok());
        for (url, says) in [
            ("redis-sentinel://h:1", "sentinelServiceName"),
            ("http://h:1", "must start with"),
            ("redis+unix://", "path"),
        ] {
            let err = check(url).unwrap_err();
            assert!(err.contains(says), "{url}: {err}");
            assert!(!err.contains("hunter2"), "{err}");
        }
    }

    #[test]
    fn serving_threads_auto_count_or_refused() {
        let threads = |text: &str| {
            RawConfig::from_toml(&format!("[server]\nserving_threads = {text}\n"), "t")
                .map_err(|e| e.to_string())
                .and_then(|raw| raw.validate().map_err(|e| e.to_string()))
                .map(|c| c.server.serving_threads.count())
        };
        assert_eq!(threads(r#""auto""#), Ok(crate::cores::per_core()));
        assert_eq!(threads("3"), Ok(3));
        assert_eq!(threads("0"), Ok(0));
        for bad in [r#""many""#, "257", "-1"] {
            let err = threads(bad).unwrap_err();
            assert!(err.contains("serving_threads"), "{bad}: {err}");
        }
    }
    #[test]
    fn describe_masks_the_secret() {
        let mut raw = RawConfig::default();
        raw.auth.jwt_secret = Secret::new("top-secret");
        raw.redis.url = "redis://u:pw@h:1".into();
        let text = describe(&raw.validate().unwrap());
        assert!(text.contains("auth.jwt_secret = **REDACTED**"));
        assert!(!text.contains("top-secret"));
        assert!(!text.contains("pw@"));
    }

    #[test]
    fn describe_names_every_setting_of_the_default_file() {
        let text = describe(&Config::default());
        let described: std::collections::BTreeSet<&str> =
            text.lines().filter_map(|l| l.split(" = ").next()).collect();
        let file: toml::Table = toml::from_str(DEFAULT_TOML).unwrap();
        fn keys_of(prefix: &str, table: &toml::Table, out: &mut Vec<String>) {
            for (key, value) in table {
                let path = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                match value.as_table() {
                    Some(inner) => keys_of(&path, inner, out),
                    None => out.push(path),
                }
            }
        }
        let mut keys = Vec::new();
        keys_of("", &file, &mut keys);
        assert!(keys.len() > 30, "{keys:?}");
        let missing: Vec<&String> = keys
            .iter()
            .filter(|k| !described.contains(k.as_str()))
            .collect();
        assert!(
            missing.is_empty(),
            "check-config leaves out {missing:?}:\n{text}"
        );
        // And nothing that is not a setting.
        assert_eq!(described.len(), keys.len(), "{text}");
    }
}

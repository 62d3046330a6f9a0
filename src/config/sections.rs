//! The smaller sections: `[upstream]` (the sidecar's backend), `[auth]`,
//! `[rate_limit]`, `[idempotency]`, `[spool]` and `[log]`.

use std::{num::NonZeroU32, path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize};
use serde_with::{DurationMilliSeconds, DurationSeconds, serde_as};

use super::{
    forms::{self, Secret},
    problems::Problems,
};

/// `[upstream]`: the sidecar's backend.
#[serde_as]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    /// Backend URL; `None`: no upstream.
    #[serde(with = "forms::empty_as_none")]
    pub url: Option<http::Uri>,
    /// Upstream connect deadline.
    #[serde_as(as = "DurationMilliSeconds<u64>")]
    pub connect_timeout_ms: Duration,
    /// Upstream response head deadline.
    #[serde_as(as = "DurationMilliSeconds<u64>")]
    pub response_timeout_ms: Duration,
    /// CA an `https://` upstream must chain to; `None`: the system's roots.
    #[serde(with = "forms::empty_as_none")]
    pub ca_file: Option<PathBuf>,
}

impl Upstream {
    pub(super) fn check(&self, p: &mut Problems) {
        let https = match &self.url {
            Some(u)
                if matches!(u.scheme_str(), Some("http" | "https")) && u.authority().is_some() =>
            {
                let shown = forms::redact_url(&u.to_string());
                // The proxy forwards each request's own path and query and
                // the caller's own Authorization: anything else in the URL
                // would be ignored.
                if u.authority().is_some_and(|a| a.as_str().contains('@')) {
                    p.push(format!(
                        "upstream.url: {shown:?} must not hold a user or password: the caller's own Authorization is forwarded"
                    ));
                } else if u.path_and_query().is_some_and(|pq| pq.as_str() != "/") {
                    p.push(format!(
                        "upstream.url: {shown:?} must name only the scheme, host and port, like http://127.0.0.1:2212: each request keeps its own path and query"
                    ));
                }
                u.scheme_str() == Some("https")
            }
            Some(u) => {
                p.push(format!(
                    "upstream.url: {:?} must be an http:// or https:// URL like http://127.0.0.1:2212",
                    forms::redact_url(&u.to_string())
                ));
                false
            }
            None => false,
        };
        if https {
            let files = crate::tls::ClientFiles {
                ca: self.ca_file.as_deref(),
                identity: None,
            };
            if let Err(e) = crate::tls::client_config(files) {
                p.push(format!("upstream.ca_file: {e}"));
            }
        } else if self.ca_file.is_some() {
            p.push("upstream.ca_file: set, but upstream.url is not an https:// URL");
        }
        p.nonzero_duration("upstream.connect_timeout_ms", self.connect_timeout_ms);
        p.nonzero_duration("upstream.response_timeout_ms", self.response_timeout_ms);
    }
}

/// `[auth]`: JWT verification and fail-closed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Auth {
    /// HS256 secret, if any (printed masked).
    #[serde(with = "forms::empty_as_none")]
    pub jwt_secret: Option<Secret>,
    /// A file holding the secret instead (read when the configuration is).
    #[serde(with = "forms::empty_as_none")]
    pub jwt_secret_file: Option<SecretFile>,
    /// Clock skew allowed on `exp` and `nbf`, seconds.
    pub jwt_leeway_secs: u64,
    /// Refuse keys once the replica is out of touch this long; `None`: never.
    #[serde(with = "forms::secs_or_zero")]
    pub fail_closed_after_secs: Option<Duration>,
}

impl Auth {
    /// The HS256 secret in force, inline or from its file.
    pub(crate) fn secret(&self) -> Option<&Secret> {
        self.jwt_secret
            .as_ref()
            .or(self.jwt_secret_file.as_ref().map(|f| &f.secret))
    }

    /// A warning for the log when the secret begins or ends with
    /// whitespace: it works, byte for byte as the backend takes it, but is
    /// more likely a stray newline than meant.
    pub(crate) fn secret_warning(&self) -> Option<&'static str> {
        let secret = self.secret()?.expose();
        let padded = |b: Option<&u8>| b.is_some_and(u8::is_ascii_whitespace);
        (padded(secret.first()) || padded(secret.last())).then_some(
            "the JWT secret begins or ends with whitespace (a newline left by the file its value was written from?); it is used byte for byte, so a token signed with it trimmed is refused",
        )
    }

    pub(super) fn check(&self, p: &mut Problems) {
        if self.jwt_secret.is_some() && self.jwt_secret_file.is_some() {
            p.push("auth: set jwt_secret or jwt_secret_file, not both");
        }
    }
}

/// `auth.jwt_secret_file`: a path in the file (`""`: none), read whole
/// (trailing newline ignored) when the configuration is, so a reload
/// re-reads it. Two are equal when path and secret are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretFile {
    path: PathBuf,
    secret: Secret,
}

impl SecretFile {
    /// Reads the secret `path` holds; the error is in the operator's words.
    pub fn read(path: impl Into<PathBuf>) -> Result<Self, String> {
        let path = path.into();
        match std::fs::read_to_string(&path) {
            Ok(text) if !text.trim_end_matches(['\r', '\n']).is_empty() => Ok(Self {
                secret: Secret::new(text.trim_end_matches(['\r', '\n'])),
                path,
            }),
            Ok(_) => Err(format!("{:?} is empty", path.display().to_string())),
            Err(e) => Err(format!("cannot read {:?}: {e}", path.display().to_string())),
        }
    }
}

impl forms::Text for SecretFile {
    fn read(path: String) -> Result<Self, String> {
        Self::read(path)
    }
    fn show(&self) -> std::borrow::Cow<'_, str> {
        self.path.to_string_lossy()
    }
}

/// `[rate_limit]`: per-key limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// Requests per second for a key whose record sets none; `None`:
    /// unlimited.
    #[serde(with = "forms::count_or_zero")]
    pub default_per_sec: Option<NonZeroU32>,
    /// Back-to-back allowance; `None`: one second's worth.
    #[serde(with = "forms::count_or_zero")]
    pub burst: Option<NonZeroU32>,
    /// Per instance, or one limit across every instance on the Redis.
    pub scope: RateLimitScope,
}

/// `rate_limit.scope`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RateLimitScope {
    /// Each instance counts on its own.
    Instance,
    /// One count per key in Redis, shared by every instance.
    Global,
}

/// `[idempotency]`: `Idempotency-Key` answers.
#[serde_as]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Idempotency {
    /// How long an idempotency key's answer is kept.
    #[serde_as(as = "DurationSeconds<u64>")]
    pub window_secs: Duration,
    /// How long a concurrent duplicate waits before 409.
    #[serde_as(as = "DurationMilliSeconds<u64>")]
    pub wait_ms: Duration,
}

impl Idempotency {
    pub(super) fn check(&self, p: &mut Problems) {
        p.nonzero_duration("idempotency.window_secs", self.window_secs);
    }
}

/// `[spool]`: the local durable spool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spool {
    /// Spool directory; `None`: no spool.
    #[serde(with = "forms::empty_as_none")]
    pub dir: Option<PathBuf>,
    /// Spool size cap, bytes (at least 1 MiB).
    pub max_bytes: u64,
}

impl Spool {
    pub(super) fn check(&self, p: &mut Problems) {
        if self.dir.is_some() && self.max_bytes < 1 << 20 {
            p.push("spool.max_bytes: must be at least 1048576");
        }
    }
}

/// `[log]`: logging.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Log {
    /// tracing filter.
    pub level: String,
    /// Line format.
    pub format: LogFormat,
}

/// `log.format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

impl Log {
    /// The levels a bare directive may name.
    const LEVELS: [&'static str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

    pub(super) fn check(&self, p: &mut Problems) {
        if tracing_subscriber::EnvFilter::try_new(&self.level).is_err() {
            p.push(format!(
                "log.level: {:?} is not a tracing filter",
                self.level
            ));
            return;
        }
        // A bare word is a level or, to tracing, a target turned on alone:
        // "warning" or "verbose" would silence every line of the ingress's
        // own, its errors included.
        for word in self.level.split(',').map(str::trim) {
            let bare = !word.is_empty() && !word.contains(['=', '[', ':']);
            if bare && !Self::LEVELS.iter().any(|l| l.eq_ignore_ascii_case(word)) {
                p.push(format!(
                    "log.level: {word:?} is not a level ({}); a target goes with its level, as in fred=debug",
                    Self::LEVELS.join(", ")
                ));
            }
        }
    }
}

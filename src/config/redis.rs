//! `[redis]` and `[redis.tls]`: the one Redis holding the control plane and
//! the jobs, and the URLs this build can honour.

use std::{path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize};
use serde_with::{DurationMilliSeconds, DurationSeconds, serde_as};

use super::{forms, problems::Problems};

/// `[redis]`: the one Redis holding the control plane and the jobs.
#[serde_as]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Redis {
    /// Redis URL (may hold a password: printed redacted).
    #[serde(serialize_with = "forms::redacted_url")]
    pub url: String,
    /// Control-plane key prefix, e.g. `tether:`.
    pub key_prefix: String,
    /// Deadline of one command (a job write).
    #[serde_as(as = "DurationMilliSeconds<u64>")]
    pub command_timeout_ms: Duration,
    /// A writer whose writes in flight have had no reply for this long counts
    /// as stalled: new requests skip it (to the spool, or 503 at once) until it
    /// hears a reply or reconnects. Zero: off.
    #[serde_as(as = "DurationMilliSeconds<u64>")]
    pub stall_after_ms: Duration,
    /// Connect deadline.
    #[serde_as(as = "DurationMilliSeconds<u64>")]
    pub connect_timeout_ms: Duration,
    /// Safety-net resync period.
    #[serde_as(as = "DurationSeconds<u64>")]
    pub resync_interval_secs: Duration,
    /// Share of the time (percent) a resync after the first load keeps busy.
    pub resync_busy_percent: u8,
    /// Cap on commands queued towards Redis.
    pub max_pending_commands: usize,
    /// Retry-After on 503, seconds.
    pub retry_after_secs: u32,
    /// Replicas that must hold a job (Redis `WAIT`) before it counts as
    /// stored; 0: off.
    pub wait_replicas: u32,
    /// No connection stays idle longer than this (a `PING` goes out), so a
    /// Redis `timeout` (idle clients closed) does not close it; zero: off.
    #[serde_as(as = "DurationMilliSeconds<u64>")]
    pub keepalive_ms: Duration,
    /// `[redis.tls]`
    pub tls: RedisTls,
}

/// `[redis.tls]`: the PEM files of a `rediss://` connection.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisTls {
    /// CA certificates; `None`: the system's roots.
    #[serde(with = "forms::empty_as_none")]
    pub ca_file: Option<PathBuf>,
    /// Client certificate chain, for mutual TLS.
    #[serde(with = "forms::empty_as_none")]
    pub cert_file: Option<PathBuf>,
    /// Client private key, for mutual TLS (its path, not its contents).
    #[serde(with = "forms::empty_as_none")]
    pub key_file: Option<PathBuf>,
}

impl RedisTls {
    /// The files as the TLS module takes them.
    pub(crate) fn files(&self) -> crate::tls::ClientFiles<'_> {
        crate::tls::ClientFiles {
            ca: self.ca_file.as_deref(),
            identity: self.cert_file.as_deref().zip(self.key_file.as_deref()),
        }
    }
}

impl Redis {
    pub(super) fn check(&self, p: &mut Problems) {
        if let Err(problem) = check_url(&self.url) {
            p.push(format!(
                "redis.url: {:?} {problem}",
                forms::redact_url(&self.url)
            ));
        }
        if let Err(problem) = self.check_tls() {
            p.push(problem);
        }
        if self.key_prefix.is_empty() {
            p.push("redis.key_prefix: must not be empty");
        }
        p.nonzero_duration("redis.command_timeout_ms", self.command_timeout_ms);
        p.nonzero_duration("redis.connect_timeout_ms", self.connect_timeout_ms);
        p.nonzero_duration("redis.resync_interval_secs", self.resync_interval_secs);
        if !(1..=100).contains(&self.resync_busy_percent) {
            p.push("redis.resync_busy_percent: must be between 1 and 100");
        }
        p.at_least("redis.max_pending_commands", self.max_pending_commands, 1);
        if self.wait_replicas > 100 {
            p.push(format!(
                "redis.wait_replicas: {} must be a number of replicas from 0 to 100",
                self.wait_replicas
            ));
        }
    }

    /// `keepalive_ms`, when on.
    pub(crate) fn keepalive(&self) -> Option<Duration> {
        Some(self.keepalive_ms).filter(|d| !d.is_zero())
    }

    /// Whether the URL is a TLS one (`rediss://`, `rediss-sentinel://`,
    /// `rediss-cluster://`).
    pub(crate) fn uses_tls(&self) -> bool {
        scheme(&self.url)
            .is_some_and(|s| matches!(s, "rediss" | "rediss-sentinel" | "rediss-cluster"))
    }

    /// Whether the URL names a Redis Cluster.
    pub(super) fn is_cluster(&self) -> bool {
        scheme(&self.url).is_some_and(|s| matches!(s, "redis-cluster" | "rediss-cluster"))
    }

    /// The `[redis.tls]` files, checked against the URL: a TLS URL gets a
    /// configuration that loads (CA file or system roots, the client pair
    /// whole); a plaintext URL gets none, since files it would ignore
    /// suggest the operator believes the connection is encrypted.
    fn check_tls(&self) -> Result<(), String> {
        if !self.uses_tls() {
            return if self.tls == RedisTls::default() {
                Ok(())
            } else {
                Err("redis.tls: files are set but redis.url is not a rediss:// (TLS) URL".into())
            };
        }
        if self.tls.cert_file.is_some() != self.tls.key_file.is_some() {
            return Err(
                "redis.tls: set cert_file and key_file together (mutual TLS), or neither".into(),
            );
        }
        crate::tls::client_config(self.tls.files())
            .map(drop)
            .map_err(|e| format!("redis.tls: {e}"))
    }
}

fn scheme(url: &str) -> Option<&str> {
    url.split_once("://").map(|(scheme, _)| scheme)
}

/// Whether this build can honour a Redis URL; the error completes
/// "redis.url: <url> …". A URL fred would refuse only at connect time is
/// refused here, at start.
fn check_url(url: &str) -> Result<(), String> {
    match scheme(url).unwrap_or("") {
        "redis" | "rediss" | "redis-cluster" | "rediss-cluster" => {}
        "redis+unix" => {
            let path = url.split_once("://").map_or("", |(_, rest)| rest);
            if !path.contains('/') {
                return Err("must name the socket's path: redis+unix:///path/to/redis.sock".into());
            }
        }
        "redis-sentinel" | "rediss-sentinel" => {
            if url.contains("sentinelUsername=") || url.contains("sentinelPassword=") {
                return Err(
                    "sets sentinelUsername or sentinelPassword, which this build does not honour: it authenticates to the sentinels with the URL's own user and password"
                        .into(),
                );
            }
            if !url.contains("sentinelServiceName=") {
                return Err(
                    "must name the monitored primary: redis-sentinel://sentinel:26379?sentinelServiceName=NAME&node=sentinel2:26379"
                        .into(),
                );
            }
        }
        _ => {
            return Err(
                "must start with redis://, rediss://, redis-sentinel://, rediss-sentinel://, redis-cluster://, rediss-cluster:// or redis+unix://"
                    .into(),
            );
        }
    }
    check_parameters(url)?;
    fred::types::config::Config::from_url(url)
        .map(drop)
        .map_err(|e| {
            let mut why = format!("is not a Redis URL: {}", e.details());
            if unencoded_credentials(url) {
                why.push_str(
                    "; a user or password holding @ : / ? # or % must be percent-encoded (%40 %3A %2F %3F %23 %25)",
                );
            }
            why
        })
}

/// Whether `url` holds only query parameters fred reads for its scheme: it
/// ignores any other (`?db=2` would leave the jobs in database 0, where no
/// worker of database 2 looks).
fn check_parameters(url: &str) -> Result<(), String> {
    let Some((query, _)) = forms::query_of(url) else {
        return Ok(());
    };
    let scheme = scheme(url).unwrap_or("");
    let read: &[&str] = match scheme {
        "redis-cluster" | "rediss-cluster" => &["node"],
        "redis-sentinel" | "rediss-sentinel" => &["sentinelServiceName", "node"],
        _ => &[],
    };
    for pair in url[query].split('&').filter(|p| !p.is_empty()) {
        let key = pair.split_once('=').map_or(pair, |(k, _)| k);
        if read.contains(&key) {
            continue;
        }
        let takes = match read {
            [] => format!("a {scheme}:// URL takes none"),
            read => format!("a {scheme}:// URL takes {}", read.join(" and ")),
        };
        let hint = match key {
            "db" | "database" => "; a database goes in the path, as in redis://host:6379/2",
            "password" | "user" | "username" => {
                "; credentials go before the host, as in redis://user:password@host:6379"
            }
            _ => "",
        };
        return Err(format!(
            "has the query parameter {key:?}, which is not read ({takes}){hint}"
        ));
    }
    Ok(())
}

/// Whether the user and password of `url` (before its last `@`) hold a
/// character that ends them early unless percent-encoded: fred then
/// reports a bad port or host, far from the cause.
fn unencoded_credentials(url: &str) -> bool {
    let Some((_, rest)) = url.split_once("://") else {
        return false;
    };
    rest.rsplit_once('@').is_some_and(|(credentials, _)| {
        credentials.contains(['/', '?', '#', '@']) || credentials.matches(':').count() > 1
    })
}

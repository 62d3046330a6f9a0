//! `[server]` and `[server.tls]`: the listener and its connections.

use std::{net::SocketAddr, num::NonZeroUsize, path::PathBuf, time::Duration};

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_with::{DurationMilliSeconds, serde_as};

use super::{forms, problems::Problems};

/// `[server]`: the listener and its connections.
#[serde_as]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Server {
    /// Bind address.
    #[serde(with = "forms::socket_addr")]
    pub listen: SocketAddr,
    /// A listener of its own for `/metrics`, `/healthz` and `/readyz`,
    /// outside the connection cap; `None`: `/metrics` is on `listen`.
    #[serde(with = "forms::empty_as_none")]
    pub metrics_listen: Option<SocketAddr>,
    /// Connections served at once (1 to 1,000,000).
    pub max_connections: usize,
    /// A silent connection is closed after this.
    #[serde_as(as = "DurationMilliSeconds<u64>")]
    pub first_byte_timeout_ms: Duration,
    /// HTTP/1 head (and idle keep-alive) deadline.
    #[serde_as(as = "DurationMilliSeconds<u64>")]
    pub header_read_timeout_ms: Duration,
    /// Drain deadline on shutdown.
    #[serde_as(as = "DurationMilliSeconds<u64>")]
    pub shutdown_grace_ms: Duration,
    /// Serving on after the signal, readiness 503, before the drain.
    #[serde_as(as = "DurationMilliSeconds<u64>")]
    pub shutdown_delay_ms: Duration,
    /// Webhook body cap, bytes.
    pub max_body_bytes: usize,
    /// Request head cap, bytes (at least 8192).
    pub max_header_bytes: usize,
    /// HTTP/2 streams per connection.
    pub http2_max_concurrent_streams: u32,
    /// Where connections are served.
    pub serving_threads: ServingThreads,
    /// Whole-body deadline on the webhook routes.
    #[serde_as(as = "DurationMilliSeconds<u64>")]
    pub body_read_timeout_ms: Duration,
    /// Wait for a connection slot at the cap before refusing.
    #[serde_as(as = "DurationMilliSeconds<u64>")]
    pub connection_queue_timeout_ms: Duration,
    /// Proxies in front (the load balancer) whose forwarding headers are
    /// kept and extended; from any other peer they are replaced.
    pub trusted_proxies: TrustedProxies,
    /// `[server.tls]`
    pub tls: ServerTls,
}

/// `server.trusted_proxies`: addresses and CIDR ranges, IPv4 and IPv6,
/// written comma-separated (`"10.0.0.0/8, fd00::/8, 192.0.2.7"`); `""`:
/// nobody is trusted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<ipnet::IpNet>);

impl TrustedProxies {
    /// Whether `ip` (an IPv4 address seen as IPv6-mapped counts as IPv4)
    /// is a trusted proxy.
    pub(crate) fn contains(&self, ip: std::net::IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|net| net.contains(&ip))
    }
}

impl std::str::FromStr for TrustedProxies {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let mut nets = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let net = match part.parse::<ipnet::IpNet>() {
                Ok(net) => net.trunc(),
                Err(_) => match part.parse::<std::net::IpAddr>() {
                    Ok(ip) => ipnet::IpNet::from(ip),
                    Err(_) => {
                        return Err(format!(
                            "{part:?} is not an address or a CIDR range like 10.0.0.0/8 or fd00::/8"
                        ));
                    }
                },
            };
            nets.push(net);
        }
        Ok(Self(nets))
    }
}

impl Serialize for TrustedProxies {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let texts: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        s.serialize_str(&texts.join(", "))
    }
}

impl<'de> Deserialize<'de> for TrustedProxies {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// `[server.tls]`: the listener's PEM files; both empty means plaintext.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerTls {
    /// Certificate chain, leaf first.
    #[serde(with = "forms::empty_as_none")]
    pub cert_file: Option<PathBuf>,
    /// Private key (its path, never its contents).
    #[serde(with = "forms::empty_as_none")]
    pub key_file: Option<PathBuf>,
}

impl ServerTls {
    /// The certificate and key files when the listener speaks TLS.
    pub(crate) fn files(&self) -> Option<(&std::path::Path, &std::path::Path)> {
        self.cert_file.as_deref().zip(self.key_file.as_deref())
    }
}

/// Where connections are served (`server.serving_threads`): `"auto"` or a
/// count in the file; printed as the count in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServingThreads {
    /// One thread per core.
    Auto,
    /// This many threads with a single-threaded runtime each (0: the shared
    /// multi-threaded runtime serves).
    Count(usize),
}

impl ServingThreads {
    /// The number of serving threads (0: the shared runtime serves).
    pub(crate) fn count(self) -> usize {
        match self {
            ServingThreads::Auto => crate::cores::per_core(),
            ServingThreads::Count(n) => n,
        }
    }
}

impl Serialize for ServingThreads {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.count() as u64)
    }
}

impl<'de> Deserialize<'de> for ServingThreads {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Form {
            Count(usize),
            Named(String),
        }
        match Form::deserialize(d) {
            Ok(Form::Count(n)) => Ok(ServingThreads::Count(n)),
            Ok(Form::Named(name)) if name == "auto" => Ok(ServingThreads::Auto),
            _ => Err(serde::de::Error::custom(r#"must be "auto" or a number"#)),
        }
    }
}

/// Largest `server.max_body_bytes`.
const MAX_BODY_BYTES: usize = 64 << 20;

impl Server {
    pub(super) fn check(&self, p: &mut Problems) {
        p.at_least("server.max_connections", self.max_connections, 1);
        if self.max_connections > 1_000_000 {
            p.push("server.max_connections: must be at most 1000000");
        }
        p.at_least("server.max_body_bytes", self.max_body_bytes, 1);
        if self.max_body_bytes > MAX_BODY_BYTES {
            p.push(format!(
                "server.max_body_bytes: must be at most {MAX_BODY_BYTES} (64 MiB): a larger \
                 payload (up to 3 times the body once bytes that are not UTF-8 read as U+FFFD) \
                 outgrows one Redis value (512 MB) or spool record (256 MiB), and its job \
                 could never be stored"
            ));
        }
        p.at_least("server.max_header_bytes", self.max_header_bytes, 8192);
        p.at_least(
            "server.http2_max_concurrent_streams",
            self.http2_max_concurrent_streams as usize,
            1,
        );
        if let ServingThreads::Count(n) = self.serving_threads
            && n > 256
        {
            p.push("server.serving_threads: must be at most 256");
        }
        for (name, d) in [
            ("server.body_read_timeout_ms", self.body_read_timeout_ms),
            ("server.first_byte_timeout_ms", self.first_byte_timeout_ms),
            ("server.header_read_timeout_ms", self.header_read_timeout_ms),
        ] {
            p.nonzero_duration(name, d);
        }
        if self.metrics_listen == Some(self.listen) && self.listen.port() != 0 {
            p.push(format!(
                "server.metrics_listen: {} is server.listen too; give the metrics a port of their own, or \"\" to answer them on server.listen",
                self.listen
            ));
        }
        match (&self.tls.cert_file, &self.tls.key_file) {
            (None, None) => {}
            (Some(cert), Some(key)) => {
                if let Err(e) = crate::tls::server_config(cert, key) {
                    p.push(format!("server.tls: {e}"));
                }
            }
            _ => p.push("server.tls: set cert_file and key_file together, or neither"),
        }
    }

    /// `max_connections` as the semaphore takes it.
    pub(crate) fn connection_cap(&self) -> NonZeroUsize {
        NonZeroUsize::new(self.max_connections).unwrap_or(NonZeroUsize::MIN)
    }
}

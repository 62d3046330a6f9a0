//! `tether-ingress healthcheck`: asks a running ingress whether it is alive
//! (`/healthz`) or ready (`/readyz`), for a container's own health check
//! (Docker's `HEALTHCHECK`, ECS, Nomad) in an image with no HTTP client of
//! its own. It asks the address the configuration names: the metrics
//! listener when there is one, else the webhook listener; an address that
//! listens on every interface is asked on the loopback.

use std::{
    io::{Read, Write},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream},
    time::Duration,
};

use crate::config::Config;

/// How long the whole exchange may take.
const WITHIN: Duration = Duration::from_secs(2);

/// Why the health check failed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// No address to ask follows from the configuration.
    #[error("{0}")]
    NoAddress(&'static str),
    /// The ingress could not be reached or did not answer in time.
    #[error("{addr}: {source}")]
    Unreachable {
        /// The address asked.
        addr: SocketAddr,
        /// The I/O cause.
        #[source]
        source: std::io::Error,
    },
    /// It answered, but not 200.
    #[error("{addr} answered {answer}")]
    Unhealthy {
        /// The address asked.
        addr: SocketAddr,
        /// Its status line and body.
        answer: String,
    },
}

impl ProbeError {
    /// The exit code: `2` for a configuration that names nothing to ask,
    /// `1` for an ingress that is down or not healthy.
    pub fn exit_code(&self) -> u8 {
        match self {
            ProbeError::NoAddress(_) => 2,
            _ => 1,
        }
    }
}

/// The address a health check asks, from `config`.
pub(crate) fn address(config: &Config) -> Result<SocketAddr, ProbeError> {
    let mut addr = match config.server.metrics_listen {
        Some(addr) => addr,
        None if config.server.tls.files().is_some() => {
            return Err(ProbeError::NoAddress(
                "the listener speaks TLS: set server.metrics_listen (TETHER_INGRESS_METRICS_LISTEN), which is plain HTTP, to check it",
            ));
        }
        None => config.server.listen,
    };
    if addr.port() == 0 {
        return Err(ProbeError::NoAddress(
            "the listener's port is chosen when it starts (port 0): there is no address to ask",
        ));
    }
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr.ip() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
        });
    }
    Ok(addr)
}

/// Asks the ingress `config` describes for `/readyz` (`ready`) or
/// `/healthz`; `Ok` when it answers 200.
pub fn healthcheck(config: &Config, ready: bool) -> Result<(), ProbeError> {
    let addr = address(config)?;
    let path = if ready { "/readyz" } else { "/healthz" };
    let unreachable = |source| ProbeError::Unreachable { addr, source };
    let mut stream = TcpStream::connect_timeout(&addr, WITHIN).map_err(unreachable)?;
    stream.set_read_timeout(Some(WITHIN)).map_err(unreachable)?;
    stream
        .set_write_timeout(Some(WITHIN))
        .map_err(unreachable)?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n"
    )
    .map_err(unreachable)?;
    // The answers are small; a few KiB holds any of them.
    let mut answer = Vec::with_capacity(1024);
    stream
        .take(16 * 1024)
        .read_to_end(&mut answer)
        .map_err(unreachable)?;
    let text = String::from_utf8_lossy(&answer);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.lines().next().unwrap_or_default();
    if status.split_whitespace().nth(1) == Some("200") {
        Ok(())
    } else {
        Err(ProbeError::Unhealthy {
            addr,
            answer: format!("{status} {body}").trim().to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(toml: &str) -> Config {
        Config::from_toml(toml, "test").unwrap()
    }

    #[test]
    fn the_address_asked_follows_the_configuration() {
        let asked = |toml: &str| address(&config(toml)).map(|a| a.to_string());
        assert_eq!(asked("").unwrap(), "127.0.0.1:8080");
        assert_eq!(
            asked("[server]\nlisten = \"0.0.0.0:9000\"").unwrap(),
            "127.0.0.1:9000"
        );
        assert_eq!(
            asked("[server]\nlisten = \"[::]:9000\"").unwrap(),
            "[::1]:9000"
        );
        assert_eq!(
            asked("[server]\nmetrics_listen = \"10.0.0.5:9090\"").unwrap(),
            "10.0.0.5:9090"
        );
        let refused = |toml: &str| match address(&config(toml)) {
            Err(e @ ProbeError::NoAddress(_)) => {
                assert_eq!(e.exit_code(), 2);
                e.to_string()
            }
            other => panic!("{other:?}"),
        };
        assert!(refused("[server]\nlisten = \"127.0.0.1:0\"").contains("port 0"));
    }
}

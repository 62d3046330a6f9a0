//! The process's open-file limit against what `server.max_connections`
//! needs. Every client connection is a descriptor (two in sidecar mode: a
//! forwarded request holds one to the backend too), and a soft limit of
//! 1024, common under systemd and in containers, would stop accepting long
//! before the configured cap: connections past it wait in the kernel's
//! queue. At start the soft limit is raised as far as the hard limit
//! allows, and a limit still short of the need is said once, with what to
//! change.

use tracing::{info, warn};

use crate::config::Config;

/// Descriptors kept for everything but client connections: the Redis
/// connections (a writer per serving thread, the shared client, the
/// replica's, a Cluster's nodes), the spool's files, the listener and the
/// runtime's own.
const RESERVE: u64 = 256;

/// How many descriptors `config` may hold at once.
fn wanted(config: &Config) -> u64 {
    let per_connection = if config.upstream.url.is_some() { 2 } else { 1 };
    (config.server.max_connections as u64)
        .saturating_mul(per_connection)
        .saturating_add(RESERVE)
}

/// What the open-file limit allows against what is wanted.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// Enough already.
    Enough,
    /// Enough once raised from `from`.
    Raised { from: u64, to: u64 },
    /// Short even at the hard limit.
    Short { limit: u64 },
}

fn verdict(before: u64, after: u64, wanted: u64) -> Verdict {
    if after < wanted {
        Verdict::Short { limit: after }
    } else if after > before {
        Verdict::Raised {
            from: before,
            to: after,
        }
    } else {
        Verdict::Enough
    }
}

/// Raises the soft open-file limit towards what `config` needs (never
/// above the hard limit, never lowering it), and logs what it did: a raise
/// at info level, a limit still short as a warning naming the setting.
pub fn raise_open_file_limit(config: &Config) {
    let wanted = wanted(config);
    let outcome = rlimit::getrlimit(rlimit::Resource::NOFILE).and_then(|(soft, _)| {
        rlimit::increase_nofile_limit(wanted).map(|now| verdict(soft, now.max(soft), wanted))
    });
    match outcome {
        Ok(Verdict::Enough) => {}
        Ok(Verdict::Raised { from, to }) => {
            info!(
                from,
                to, "open-file limit raised for server.max_connections"
            );
        }
        Ok(Verdict::Short { limit }) => warn!(
            limit,
            wanted,
            max_connections = config.server.max_connections,
            "the open-file limit is below what server.max_connections needs: connections past it wait in the kernel's queue until one closes; raise the hard limit (LimitNOFILE= in a systemd unit, --ulimit nofile= for docker) or lower server.max_connections"
        ),
        Err(e) => warn!(error = %e, "cannot read or raise the open-file limit"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sidecar_wants_two_descriptors_per_connection() {
        let mut config = Config::default();
        config.server.max_connections = 1000;
        assert_eq!(wanted(&config), 1000 + RESERVE);
        config.upstream.url = Some(http::Uri::from_static("http://127.0.0.1:2212"));
        assert_eq!(wanted(&config), 2000 + RESERVE);
    }

    #[test]
    fn the_limit_is_enough_raised_or_short() {
        assert_eq!(verdict(20_000, 20_000, 10_256), Verdict::Enough);
        assert_eq!(
            verdict(1024, 10_256, 10_256),
            Verdict::Raised {
                from: 1024,
                to: 10_256
            }
        );
        assert_eq!(verdict(1024, 4096, 10_256), Verdict::Short { limit: 4096 });
    }
}

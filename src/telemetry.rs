//! Logging: one tracing subscriber for the process, writing human-readable
//! or JSON lines (`log.format`), its level filter behind a handle so a
//! reload (SIGHUP) can change `log.level` without a restart.

use std::{
    io::IsTerminal as _,
    sync::atomic::{AtomicU64, Ordering},
};

use tracing_subscriber::{
    EnvFilter, Registry, layer::SubscriberExt, reload, util::SubscriberInitExt,
};

use crate::config::{Log, LogFormat};

/// Changes the running log level.
pub struct LogLevel(reload::Handle<EnvFilter, Registry>);

impl LogLevel {
    /// Applies a new filter (already checked by the configuration's
    /// validation; one that does not parse leaves the running one).
    pub fn set(&self, level: &str) {
        if let Ok(filter) = EnvFilter::try_new(level) {
            let _ = self.0.reload(filter);
        }
    }
}

/// Installs the process's subscriber (once; a second call leaves the first
/// in place) and returns the handle that changes its level.
pub fn init(config: &Log) -> LogLevel {
    let (filter, handle) = reload::Layer::new(EnvFilter::new(&config.level));
    let registry = tracing_subscriber::registry().with(filter);
    let _ = match config.format {
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_ansi(false),
            )
            .try_init(),
        // Colour only on a terminal: a file or a pipe gets plain text.
        LogFormat::Text => registry
            .with(tracing_subscriber::fmt::layer().with_ansi(std::io::stdout().is_terminal()))
            .try_init(),
    };
    LogLevel(handle)
}

/// Lets one line of a kind through per second and counts the rest: for
/// events that come once per request during an outage (a 503 at every
/// request), which would otherwise write as many lines as requests. The
/// metrics count every one.
pub(crate) struct Throttle {
    /// Unix milliseconds from which the next line may go out.
    next_ms: AtomicU64,
    /// Lines held back since the last one let through.
    held: AtomicU64,
}

impl Throttle {
    const EVERY_MS: u64 = 1000;

    pub(crate) const fn new() -> Self {
        Self {
            next_ms: AtomicU64::new(0),
            held: AtomicU64::new(0),
        }
    }

    /// `Some(n)`: log this one, saying `n` were held back since the last;
    /// `None`: held back (counted).
    pub(crate) fn admit(&self) -> Option<u64> {
        self.admit_at(crate::clock::now_ms())
    }

    /// [`Self::admit`] at `now_ms` (Unix milliseconds).
    fn admit_at(&self, now_ms: u64) -> Option<u64> {
        let next = self.next_ms.load(Ordering::Relaxed);
        if now_ms >= next
            && self
                .next_ms
                .compare_exchange(
                    next,
                    now_ms + Self::EVERY_MS,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            Some(self.held.swap(0, Ordering::Relaxed))
        } else {
            self.held.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_a_second_gets_through_and_the_rest_are_counted() {
        let t = Throttle::new();
        assert_eq!(t.admit_at(10_000), Some(0));
        assert_eq!(t.admit_at(10_001), None);
        assert_eq!(t.admit_at(10_999), None);
        assert_eq!(t.admit_at(11_000), Some(2));
        assert_eq!(t.admit_at(11_500), None);
        assert_eq!(t.admit_at(13_000), Some(1));
    }
}

//! Logging: one tracing subscriber for the process, writing human-readable
//! or JSON lines (`log.format`), its level filter behind a handle so a
//! reload (SIGHUP) can change `log.level` without a restart.

use std::io::IsTerminal as _;

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

//! Reloading on SIGHUP: each signal re-reads the configuration (same file,
//! same environment). A valid one is yielded to the running ingress (which
//! applies what can change live, [`crate::settings`]) and its log level
//! applied; an invalid one is refused with a log line and the running
//! configuration stays.

use std::path::PathBuf;

use crate::{config::Config, telemetry::LogLevel};

/// The configurations SIGHUP brings, for [`crate::run_with_reloads`].
pub fn on_sighup(
    path: Option<PathBuf>,
    log_level: LogLevel,
) -> impl futures::Stream<Item = Config> + Send + 'static {
    #[cfg(unix)]
    let hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    #[cfg(not(unix))]
    let hup: Option<()> = None;
    futures::stream::unfold(
        (hup, path, log_level),
        |(mut hup, path, log_level)| async move {
            loop {
                #[cfg(unix)]
                hup.as_mut()?.recv().await?;
                #[cfg(not(unix))]
                hup?;
                match Config::load(path.as_deref()) {
                    Ok(config) => {
                        log_level.set(&config.log.level);
                        return Some((config, (hup, path, log_level)));
                    }
                    Err(e) => tracing::error!(
                        "configuration reload refused; keeping the running one: {e}"
                    ),
                }
            }
        },
    )
}

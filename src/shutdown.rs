//! The shutdown signal: SIGINT or SIGTERM, whichever comes first.

use std::future::Future;

/// Listens for SIGINT and SIGTERM from the moment it is called (inside the
/// runtime), and resolves on the first. Called before the listener serves,
/// so a signal that arrives before the returned future is first polled is
/// still a graceful shutdown, not the default action that ends the process
/// without a drain (as `reload::on_sighup` does for SIGHUP).
pub fn signal() -> impl Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let (term, int) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        );
        async move {
            // A signal that cannot be watched never resolves: the other one,
            // or a kill, still ends the process.
            let once = |s: std::io::Result<tokio::signal::unix::Signal>| async move {
                match s {
                    Ok(mut s) => {
                        s.recv().await;
                    }
                    Err(_) => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                () = once(term) => {}
                () = once(int) => {}
            }
        }
    }
    #[cfg(not(unix))]
    async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

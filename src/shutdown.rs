//! The shutdown signals: every SIGINT and SIGTERM, in order. The first
//! starts the shutdown; a later one cuts its waits short.

use futures::Stream;

/// Listens for SIGINT and SIGTERM from the moment it is called (inside the
/// runtime) and yields once per signal. Called before the listener serves,
/// so a signal that arrives before the stream is first polled is still a
/// graceful shutdown, not the default action that ends the process without
/// a drain (as `reload::on_sighup` does for SIGHUP).
pub fn signals() -> impl Stream<Item = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        // A signal that cannot be watched never arrives: the other one, or
        // a kill, still ends the process.
        let watch = |kind| signal(kind).ok();
        let state = (
            watch(SignalKind::terminate()),
            watch(SignalKind::interrupt()),
        );
        async fn next(s: Option<&mut tokio::signal::unix::Signal>) -> Option<()> {
            match s {
                Some(s) => s.recv().await,
                None => std::future::pending().await,
            }
        }
        futures::stream::unfold(state, |(mut term, mut int)| async move {
            let got = tokio::select! {
                got = next(term.as_mut()) => got,
                got = next(int.as_mut()) => got,
            };
            got.map(|()| ((), (term, int)))
        })
    }
    #[cfg(not(unix))]
    {
        futures::stream::unfold((), |()| async {
            tokio::signal::ctrl_c().await.ok().map(|()| ((), ()))
        })
    }
}

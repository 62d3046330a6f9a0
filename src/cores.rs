//! Serving threads: one single-threaded tokio runtime per thread.
//!
//! A connection dealt to a serving thread stays on it with everything its
//! requests touch: the tasks they spawn (the upstream lane's connection),
//! their timers, and the thread's own Redis writer (see
//! [`crate::sink::Sink`]), whose connection task runs there too. So a
//! request's wakeups never cross threads, the way nginx's one event loop per
//! worker avoids it. Work shared by all (the replica, the spool replay, the
//! accept loop) stays on the multi-threaded runtime.
//!
//! Code on a serving thread learns which one it is from [`current`], a
//! thread-local read, so per-thread state needs no lock and no lookup.

use std::cell::Cell;

use tokio::{runtime::Handle, sync::watch};
use tracing::warn;

thread_local! {
    static CURRENT: Cell<Option<usize>> = const { Cell::new(None) };
}

/// The index of the serving thread this code runs on (`None` off them).
pub(crate) fn current() -> Option<usize> {
    CURRENT.with(Cell::get)
}

// === impl Cores ===

/// The serving threads. Dropping it stops them (each finishes the task it
/// is polling and exits; what is left on it is dropped).
pub(crate) struct Cores {
    handles: Vec<Handle>,
    _stop: watch::Sender<()>,
}

impl Cores {
    /// Starts `n` threads; fewer when a thread or runtime cannot be started
    /// (logged), none for 0.
    pub(crate) fn start(n: usize) -> Self {
        let (stop, stopped) = watch::channel(());
        let mut handles = Vec::with_capacity(n);
        // Stops at the first thread that cannot start, so thread `i` is
        // always `handles[i]` (what `current` returns indexes per-thread state).
        for i in 0..n {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    warn!(error = %e, "cannot start a serving runtime");
                    break;
                }
            };
            let handle = rt.handle().clone();
            let mut stopped = stopped.clone();
            let started = std::thread::Builder::new()
                .name(format!("tether-serve-{i}"))
                .spawn(move || {
                    CURRENT.with(|c| c.set(Some(i)));
                    // Runs until the sender is dropped.
                    rt.block_on(async move { while stopped.changed().await.is_ok() {} });
                });
            if let Err(e) = started {
                warn!(error = %e, "cannot start a serving thread");
                break;
            }
            handles.push(handle);
        }
        Self {
            handles,
            _stop: stop,
        }
    }

    /// The runtimes, by thread index.
    pub(crate) fn handles(&self) -> &[Handle] {
        &self.handles
    }
}

/// How many serving threads "one per core" means here.
pub(crate) fn per_core() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
}

//! Spooled copies of writes whose fate Redis has not told yet.
//!
//! A write that timed out (or was in flight when its writer stalled) is
//! answered, and spooled, while its connection stays open: Redis may still
//! run it and reply. Such a write gets a [`Ticket`]; its spooled records
//! follow a marker naming the ticket. When the late reply arrives the ticket
//! is settled `Stored` (and a settlement record is appended to the spool, so
//! a restart knows it too): the replay skips those records, and the job is
//! not written twice. When the connection closes first, or Redis refused
//! the write, the ticket is settled `Replay`: the records are replayed (at
//! least once). The replay waits at a marker whose ticket is still pending.
//!
//! Only with a spool and without `redis.wait_replicas` (whose confirmation
//! comes from a later `WAIT`, not the write's own reply); otherwise nothing
//! here exists.

use std::{
    collections::HashMap,
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use tokio::sync::{Notify, mpsc};

/// Names one spooled write whose fate is pending.
pub(crate) type Ticket = u64;

/// What became of a ticketed write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fate {
    /// No reply yet, and its connection is open.
    Pending,
    /// Redis ran it: the spooled copy is skipped.
    Stored,
    /// Refused, or its connection closed first: the spooled copy is replayed.
    Replay,
}

/// The fates of the tickets issued by this process (and, after the start-up
/// scan, those a previous run settled as stored).
#[derive(Debug)]
pub(crate) struct Tickets {
    fates: Mutex<HashMap<Ticket, Fate>>,
    next: AtomicU64,
    /// Tickets settled `Stored`, for the spool's settlement records.
    stored: mpsc::UnboundedSender<Ticket>,
    /// Woken on every settlement (the replay may be waiting at a marker).
    settled: Notify,
}

impl Tickets {
    /// A registry, and the receiver of tickets settled `Stored`.
    pub(crate) fn new() -> (Self, mpsc::UnboundedReceiver<Ticket>) {
        // Unique across restarts: a previous run's tickets sit in the spool.
        let start = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX / 2));
        let (stored, rx) = mpsc::unbounded_channel();
        (
            Self {
                fates: Mutex::new(HashMap::new()),
                next: AtomicU64::new(start),
                stored,
                settled: Notify::new(),
            },
            rx,
        )
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Ticket, Fate>> {
        self.fates
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A new pending ticket.
    pub(crate) fn issue(&self) -> Ticket {
        let ticket = self.next.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(ticket, Fate::Pending);
        ticket
    }

    /// Records what became of `ticket`.
    pub(crate) fn settle(&self, ticket: Ticket, fate: Fate) {
        if let Some(f) = self.lock().get_mut(&ticket) {
            *f = fate;
        }
        if fate == Fate::Stored {
            let _ = self.stored.send(ticket);
        }
        self.settled.notify_waiters();
    }

    /// A settlement read back from the spool (a previous run's).
    pub(crate) fn remember_stored(&self, ticket: Ticket) {
        self.lock().insert(ticket, Fate::Stored);
    }

    /// What became of `ticket`; `None` for one this process never issued
    /// nor read settled (a previous run's, unsettled: replay it).
    pub(crate) fn fate(&self, ticket: Ticket) -> Option<Fate> {
        self.lock().get(&ticket).copied()
    }

    /// Drops `ticket` (its records were replayed or skipped, or never spooled).
    pub(crate) fn forget(&self, ticket: Ticket) {
        self.lock().remove(&ticket);
    }

    /// Resolves at the next settlement.
    pub(crate) async fn next_settlement(&self) {
        self.settled.notified().await;
    }

    /// Waits until `ticket` is settled, then forgets it: `Replay` for one
    /// it does not know.
    pub(crate) async fn settled(&self, ticket: Ticket) -> Fate {
        loop {
            let next = self.settled.notified();
            tokio::pin!(next);
            next.as_mut().enable();
            match self.fate(ticket) {
                Some(Fate::Pending) => {}
                fate => {
                    self.forget(ticket);
                    return fate.unwrap_or(Fate::Replay);
                }
            }
            // Re-checked each second as well, so no wake-up can be missed.
            let _ = tokio::time::timeout(std::time::Duration::from_secs(1), next).await;
        }
    }
}

//! The connections jobs are written through: one fred client per serving
//! thread ([`crate::cores`]), connected from that thread so its replies wake
//! requests without crossing threads, and one shared client for everything
//! off those threads (the spool replay, idempotency records). fred pipelines
//! commands from concurrent tasks onto its connection, so many requests'
//! writes leave in one write. The topology (one node, Sentinel, Cluster,
//! where a client holds a connection per primary and each command goes to its
//! key's) is decided where the clients are built ([`crate::redis`]).

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use fred::prelude::*;

use super::{error::SinkError, replicas::Confirmer};
use crate::redis::{self, Role, Target};

/// The shared client and the per-thread writers.
#[derive(Clone)]
pub(super) struct Writers {
    shared: Client,
    /// Indexed by [`crate::cores::current`].
    per_thread: Arc<[Client]>,
    /// With `redis.wait_replicas`: the shared client's confirmer, then one
    /// per writer, in `per_thread`'s order.
    confirmers: Option<Arc<[Confirmer]>>,
    /// Clients that have connected at least once.
    connected: Arc<AtomicUsize>,
    waiters: Arc<[tokio::task::JoinHandle<()>]>,
}

impl Writers {
    /// Builds the clients and starts connecting them in the background: the
    /// shared one on the current runtime, one writer on each of `cores`.
    pub(super) fn connect(
        target: &Target,
        max_pending_commands: usize,
        wait_replicas: u32,
        cores: &[tokio::runtime::Handle],
    ) -> Result<Self, Error> {
        let role = Role::Writer {
            max_pending_commands,
        };
        let shared = redis::client(target, role)?;
        let per_thread = cores
            .iter()
            .map(|_| redis::client(target, role))
            .collect::<Result<Vec<_>, _>>()?;
        let connected = Arc::new(AtomicUsize::new(0));
        // fred spawns a client's connection task on the runtime it is
        // connected from.
        let start = |client: &Client, runtime: &tokio::runtime::Handle| {
            let _entered = runtime.enter();
            let _task = client.connect();
            let (client, connected) = (client.clone(), connected.clone());
            runtime.spawn(async move {
                if client.wait_for_connect().await.is_ok() {
                    connected.fetch_add(1, Ordering::Release);
                }
            })
        };
        let here = tokio::runtime::Handle::current();
        let waiters = std::iter::once(start(&shared, &here))
            .chain(per_thread.iter().zip(cores).map(|(w, rt)| start(w, rt)))
            .collect();
        // Half the command deadline: the writes queued behind a WAIT in
        // Redis still get their answer in time.
        let wait_timeout = target.command_timeout / 2;
        let confirmers = (wait_replicas > 0).then(|| {
            std::iter::once((&shared, &here))
                .chain(per_thread.iter().zip(cores))
                .map(|(c, rt)| Confirmer::start(c.clone(), wait_replicas, wait_timeout, rt))
                .collect()
        });
        Ok(Self {
            shared,
            per_thread: per_thread.into(),
            confirmers,
            connected,
            waiters,
        })
    }

    /// The shared client.
    pub(super) fn shared(&self) -> &Client {
        &self.shared
    }

    /// The client job writes use on this thread.
    pub(super) fn current(&self) -> &Client {
        crate::cores::current()
            .and_then(|i| self.per_thread.get(i))
            .unwrap_or(&self.shared)
    }

    /// With `redis.wait_replicas`: returns once the replicas hold every job
    /// this thread's writer carried so far; without, at once.
    pub(super) async fn confirm(&self) -> Result<(), SinkError> {
        let Some(confirmers) = &self.confirmers else {
            return Ok(());
        };
        let index = crate::cores::current()
            .filter(|i| *i < self.per_thread.len())
            .map_or(0, |i| i + 1);
        match confirmers.get(index) {
            Some(c) => c.confirm().await,
            None => Ok(()),
        }
    }

    /// True once every client connected to Redis at least once.
    pub(super) fn have_connected(&self) -> bool {
        self.connected.load(Ordering::Acquire) == 1 + self.per_thread.len()
    }

    /// Closes the connections (after in-flight commands were answered).
    pub(super) async fn close(&self) {
        for waiter in self.waiters.iter() {
            waiter.abort();
        }
        let quits = std::iter::once(&self.shared)
            .chain(self.per_thread.iter())
            // QUIT on a client that never connected would wait for a connection.
            .filter(|c| c.is_connected())
            .map(|c| tokio::time::timeout(Duration::from_secs(2), c.quit()));
        futures::future::join_all(quits).await;
    }
}

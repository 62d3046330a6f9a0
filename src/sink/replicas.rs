//! `redis.wait_replicas`: a job counts as stored only once that many
//! replicas hold it, so a 2xx survives the loss of the primary.
//!
//! Redis's `WAIT N timeout` answers once N replicas acknowledged every write
//! sent before it on the same connection. So one `WAIT` confirms every job a
//! writer's connection carried before it: each writer has a [`Confirmer`]
//! whose task sends one `WAIT` for all the requests that finished their write
//! meanwhile (they queue while the previous `WAIT` is out), never one per
//! request. Fewer replicas in time, or no answer: those requests' jobs are
//! not confirmed and go to the spool, or get 503, like any unstored job.
//!
//! In a cluster, each primary's connection gets its own `WAIT` per batch.
//!
//! Off (`wait_replicas = 0`), none of this exists: no task, no channel, no
//! allocation on the request path.

use std::time::Duration;

use fred::{
    prelude::*,
    types::{ClusterHash, CustomCommand},
};
use tokio::sync::{mpsc, oneshot};

use super::error::SinkError;

/// How one `WAIT` ended, for everyone it covered.
#[derive(Debug, Clone, Copy)]
enum Outcome {
    Confirmed,
    /// Fewer replicas than asked acknowledged in time.
    Short,
    /// No answer from Redis in time.
    Timeout,
    /// The connection is gone, or Redis refused the command.
    Failed,
}

impl Outcome {
    fn into_result(self) -> Result<(), SinkError> {
        match self {
            Outcome::Confirmed => Ok(()),
            Outcome::Short => Err(SinkError::NotReplicated),
            // The jobs are on the primary either way: not confirmed.
            Outcome::Timeout | Outcome::Failed => Err(SinkError::NotReplicated),
        }
    }
}

/// `WAIT` as a plain command: fred's own holds the connection's other
/// commands back until it is answered; Redis itself already holds the
/// commands sent after it, and that is the batch the next `WAIT` confirms.
fn wait_command() -> CustomCommand {
    CustomCommand::new_static("WAIT", ClusterHash::Random, false)
}

/// One `WAIT` for `replicas` on `client`'s connection, at most `timeout`.
/// A cluster client has a connection per primary, each carrying the writes
/// of its own slots: each gets its `WAIT` (at once; one without writes
/// answers at once), and the worst outcome counts.
async fn wait(client: &Client, replicas: u32, timeout: Duration) -> Outcome {
    if !client.is_clustered() {
        return wait_on(client, None, replicas, timeout).await;
    }
    let primaries = crate::redis::primaries(client);
    if primaries.is_empty() {
        return Outcome::Failed;
    }
    let outcomes = futures::future::join_all(
        primaries
            .into_iter()
            .map(|node| wait_on(client, Some(node), replicas, timeout)),
    )
    .await;
    outcomes
        .into_iter()
        .max_by_key(|o| match o {
            Outcome::Confirmed => 0,
            Outcome::Short => 1,
            Outcome::Timeout => 2,
            Outcome::Failed => 3,
        })
        .unwrap_or(Outcome::Failed)
}

/// One `WAIT` on `client`'s connection to `node` (its only one when `None`).
async fn wait_on(
    client: &Client,
    node: Option<fred::types::config::Server>,
    replicas: u32,
    timeout: Duration,
) -> Outcome {
    let options = Options {
        timeout: Some(timeout + Duration::from_secs(1)),
        cluster_node: node,
        ..Default::default()
    };
    let millis = i64::try_from(timeout.as_millis())
        .unwrap_or(i64::MAX)
        .max(1);
    let acked: Result<i64, Error> = client
        .with_options(&options)
        .custom(wait_command(), vec![i64::from(replicas), millis])
        .await;
    match acked {
        Ok(n) if n >= i64::from(replicas) => Outcome::Confirmed,
        Ok(_) => Outcome::Short,
        Err(e) if *e.kind() == ErrorKind::Timeout => Outcome::Timeout,
        Err(_) => Outcome::Failed,
    }
}

/// Confirms the jobs one writer connection carried, a `WAIT` per batch.
#[derive(Debug, Clone)]
pub(super) struct Confirmer {
    requests: mpsc::UnboundedSender<oneshot::Sender<Outcome>>,
}

impl Confirmer {
    /// Starts the confirming task of `client` on `runtime` (where the
    /// client's connection runs).
    pub(super) fn start(
        client: Client,
        replicas: u32,
        timeout: Duration,
        runtime: &tokio::runtime::Handle,
    ) -> Self {
        let (requests, mut queue) = mpsc::unbounded_channel::<oneshot::Sender<Outcome>>();
        runtime.spawn(async move {
            let mut batch = Vec::new();
            while let Some(first) = queue.recv().await {
                // Everyone queued now wrote before this WAIT is sent.
                batch.push(first);
                while let Ok(next) = queue.try_recv() {
                    batch.push(next);
                }
                let outcome = wait(&client, replicas, timeout).await;
                for waiter in batch.drain(..) {
                    let _ = waiter.send(outcome);
                }
            }
        });
        Self { requests }
    }

    /// Returns once the replicas hold everything this connection wrote
    /// before the call (the caller's acknowledged jobs among them).
    pub(super) async fn confirm(&self) -> Result<(), SinkError> {
        let (tx, rx) = oneshot::channel();
        if self.requests.send(tx).is_err() {
            return Err(SinkError::NotReplicated);
        }
        rx.await.unwrap_or(Outcome::Failed).into_result()
    }
}

/// One `WAIT` on `client`, directly (for the spool's replay, which writes a
/// batch and then confirms it before moving on).
pub(super) async fn confirm_now(
    client: &Client,
    replicas: u32,
    timeout: Duration,
) -> Result<(), SinkError> {
    wait(client, replicas, timeout).await.into_result()
}

//! `redis.wait_replicas` for the spool's replay: a replayed batch counts as
//! stored only once that many replicas hold it.
//!
//! Redis's `WAIT N timeout` answers once N replicas acknowledged every write
//! sent before it on the same connection. The request path's writers end
//! each flushed batch with their own `WAIT` (`lane`); the replay, which
//! writes through the shared fred client, sends one here after each batch.
//! In a cluster, each primary's connection gets its own.

use std::time::Duration;

use fred::{
    prelude::*,
    types::{ClusterHash, CustomCommand},
};

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

/// One `WAIT` on `client`, directly (for the spool's replay, which writes a
/// batch and then confirms it before moving on).
pub(super) async fn confirm_now(
    client: &Client,
    replicas: u32,
    timeout: Duration,
) -> Result<(), SinkError> {
    wait(client, replicas, timeout).await.into_result()
}

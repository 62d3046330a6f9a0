//! The job sink: what a request's jobs become in Redis, acknowledged before
//! the caller hears 2xx.
//!
//! [`Sink::enqueue`] takes one request's [`WorkflowJobs`] (or an
//! [`OutreachJob`]), picks this thread's writer (`writers`), writes the
//! jobs in the configured [`Layout`] (`streams`: one `XADD`, or one script
//! call for several matches; `bullmq`: one script call adding every match
//! as a BullMQ job), and returns once Redis acknowledged every one. When
//! Redis cannot take them and a spool is configured, they are synced to the
//! spool instead and replayed later (`fallback`).
//!
//! One file per concern: [`job`] the records, `streams` and `bullmq` the
//! two layouts, `writers` the connections, `replicas` the `WAIT` that
//! confirms them with `redis.wait_replicas`, `fallback` the spool fallback and replay,
//! [`error`] the errors (a leaf). The children import each other, never this
//! facade.
//!
//! # Failure and delivery
//! - Disconnected client: refused at once ([`SinkError::Disconnected`]), so a
//!   caller gets a quick 503 rather than waiting out the command timeout.
//! - Each command has a deadline; the queue towards Redis is capped.
//! - A write is never re-sent by the client after a reconnect
//!   (`max_command_attempts = 1`): a caller told 503 will retry, and a replay
//!   would double its jobs. What remains ambiguous is a write Redis executed
//!   whose acknowledgement was lost (connection cut, or the deadline passed):
//!   the caller hears 503, retries, and the job exists twice. Delivery is
//!   therefore **at least once**; a worker drops a duplicate by
//!   (`requestId`, `workflowId`) when callers send their own `X-Request-Id`
//!   on retries, and otherwise by the payload's own lead id.

mod bullmq;
pub mod error;
mod fallback;
pub mod job;
mod replicas;
mod streams;
mod writers;

use std::sync::Arc;

use bytes::Bytes;
use fred::prelude::*;

pub use self::{
    error::{SinkError, SpoolError},
    job::{OutreachJob, Stored, WorkflowJobs},
};
use crate::{
    config::{Config, SinkKind},
    redis::Target,
    settings::{Settings, SharedSettings},
    spool::Spool,
};

/// The layout jobs are written in (`sink.kind`), fixed for the process.
#[derive(Debug, Clone)]
pub struct Layout(Option<Arc<bullmq::Queues>>);

impl Layout {
    /// The layout `config` selects.
    pub fn of(config: &Config) -> Self {
        Self(match config.sink.kind {
            SinkKind::Streams => None,
            SinkKind::Bullmq => Some(Arc::new(bullmq::Queues::new(&config.bullmq))),
        })
    }
}

/// Writes jobs to Redis through the per-thread writers, falling back to the
/// spool when one is configured.
#[derive(Clone)]
pub struct Sink {
    writers: writers::Writers,
    spool: Option<Spool>,
    layout: Layout,
    /// `redis.wait_replicas` and the `WAIT` deadline, when on.
    wait: Option<(u32, std::time::Duration)>,
}

impl Sink {
    /// Builds the clients and starts connecting them in the background
    /// (requests get [`SinkError::Disconnected`] until theirs is up): the
    /// shared one on the current runtime, one writer on each of `cores`.
    pub fn connect(
        target: &Target,
        max_pending_commands: usize,
        wait_replicas: u32,
        spool: Option<Spool>,
        cores: &[tokio::runtime::Handle],
        layout: Layout,
    ) -> Result<Self, Error> {
        Ok(Self {
            writers: writers::Writers::connect(target, max_pending_commands, wait_replicas, cores)?,
            spool,
            layout,
            wait: (wait_replicas > 0).then_some((wait_replicas, target.command_timeout / 2)),
        })
    }

    /// The shared client (for the idempotency store).
    pub fn redis(&self) -> &Client {
        self.writers.shared()
    }

    /// True once every client connected to Redis at least once.
    pub fn has_connected(&self) -> bool {
        self.writers.have_connected()
    }

    /// Stores every job of `jobs` (on the workflow stream of `settings`, or
    /// the workflow queue); `Ok` only once Redis acknowledged all of them, or
    /// (with a spool) they are synced to the spool. Several jobs are
    /// acknowledged, spooled or refused together (should Redis fail midway
    /// through the script, what it wrote stays; spooled stream copies are
    /// duplicates a worker drops by requestId and workflowId, spooled BullMQ
    /// jobs find theirs by id and add nothing).
    pub async fn enqueue(
        &self,
        jobs: &WorkflowJobs,
        settings: &Settings,
    ) -> Result<Stored, SinkError> {
        let queues = self.layout.0.as_deref();
        let spool_all = |out: &mut Vec<u8>| match queues {
            None => streams::spool_workflow(out, jobs, settings),
            Some(q) => bullmq::spool_workflow(out, q, jobs),
        };
        let writer = self.writers.current();
        if !writer.is_connected() {
            return Box::pin(fallback::spool_or(
                self.spool.as_ref(),
                SinkError::Disconnected,
                spool_all,
            ))
            .await;
        }
        let written = match queues {
            None => streams::write_workflow(writer, jobs, settings).await,
            // Boxed: the stream layout's future stays as small as before.
            Some(q) => Box::pin(bullmq::write_workflow(writer, q, jobs, settings)).await,
        };
        let stored = match written {
            Ok(()) if self.wait.is_some() => Box::pin(self.writers.confirm()).await,
            Ok(()) => Ok(()),
            Err(e) => Err(SinkError::from(e)),
        };
        match stored {
            Ok(()) => Ok(Stored::Redis),
            Err(e) => Box::pin(fallback::spool_or(self.spool.as_ref(), e, spool_all)).await,
        }
    }

    /// Stores one outreach job; returns its stream entry id (or BullMQ job
    /// id) once Redis acknowledged it, or `None` once it is synced to the
    /// spool.
    pub async fn enqueue_outreach(
        &self,
        job: &OutreachJob,
        settings: &Settings,
    ) -> Result<Option<Bytes>, SinkError> {
        let queues = self.layout.0.as_deref();
        let writer = self.writers.current();
        let error = if writer.is_connected() {
            let written = match queues {
                None => streams::write_outreach(writer, job, settings).await,
                Some(q) => Box::pin(bullmq::write_outreach(writer, q, job, settings)).await,
            };
            match written {
                Ok(id) if self.wait.is_none() => return Ok(Some(id)),
                Ok(id) => match Box::pin(self.writers.confirm()).await {
                    Ok(()) => return Ok(Some(id)),
                    Err(e) => e,
                },
                Err(e) => SinkError::from(e),
            }
        } else {
            SinkError::Disconnected
        };
        fallback::spool_or(self.spool.as_ref(), error, |out| match queues {
            None => streams::spool_outreach(out, job, settings),
            Some(q) => bullmq::spool_outreach(out, q, job),
        })
        .await
        .map(|_| None)
    }

    /// Starts replaying the spool into Redis (no-op without a spool).
    pub fn spawn_replay(
        &self,
        settings: SharedSettings,
        stop: tokio::sync::watch::Receiver<bool>,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let spool = self.spool.clone()?;
        Some(fallback::spawn_replay(
            spool,
            self.writers.shared().clone(),
            self.wait,
            settings,
            stop,
        ))
    }

    /// Closes the connections (after in-flight commands were answered).
    /// Call it before the serving threads stop: their writers' connection
    /// tasks run there.
    pub async fn close(&self) {
        self.writers.close().await;
    }
}

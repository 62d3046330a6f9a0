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
pub(crate) mod error;
mod fallback;
pub(crate) mod job;
mod replicas;
mod streams;
mod writers;

use std::sync::Arc;

use bytes::Bytes;
use fred::prelude::*;

pub(crate) use self::{
    error::SinkError,
    job::{OutreachJob, Stored, WorkflowJobs},
};
use crate::{
    config::{Config, SinkKind},
    error::Reject,
    metrics as m,
    redis::Target,
    settings::{Settings, SharedSettings},
    spool::Spool,
};

/// The layout jobs are written in (`sink.kind`), fixed for the process.
#[derive(Debug, Clone)]
pub(crate) enum Layout {
    /// One stream entry per job (`[streams]`).
    Streams,
    /// One BullMQ job per job (`[bullmq]`).
    Bullmq(Arc<bullmq::Queues>),
}

impl Layout {
    /// The layout `config` selects.
    pub(crate) fn of(config: &Config) -> Self {
        match config.sink.kind {
            SinkKind::Streams => Layout::Streams,
            SinkKind::Bullmq => Layout::Bullmq(Arc::new(bullmq::Queues::new(&config.bullmq))),
        }
    }

    async fn write_workflow(
        &self,
        writer: &Client,
        jobs: &WorkflowJobs,
        settings: &Settings,
    ) -> Result<(), Error> {
        match self {
            Layout::Streams => streams::write_workflow(writer, jobs, settings).await,
            // Boxed: the stream layout's future stays as small as before.
            Layout::Bullmq(q) => Box::pin(bullmq::write_workflow(writer, q, jobs, settings)).await,
        }
    }

    async fn write_outreach(
        &self,
        writer: &Client,
        job: &OutreachJob,
        settings: &Settings,
    ) -> Result<Bytes, Error> {
        match self {
            Layout::Streams => streams::write_outreach(writer, job, settings).await,
            Layout::Bullmq(q) => Box::pin(bullmq::write_outreach(writer, q, job, settings)).await,
        }
    }

    fn spool_workflow(&self, out: &mut Vec<u8>, jobs: &WorkflowJobs, settings: &Settings) {
        match self {
            Layout::Streams => streams::spool_workflow(out, jobs, settings),
            Layout::Bullmq(q) => bullmq::spool_workflow(out, q, jobs),
        }
    }

    fn spool_outreach(&self, out: &mut Vec<u8>, job: &OutreachJob, settings: &Settings) {
        match self {
            Layout::Streams => streams::spool_outreach(out, job, settings),
            Layout::Bullmq(q) => bullmq::spool_outreach(out, q, job),
        }
    }
}

/// The sink's metric handles, registered once.
#[derive(Clone)]
struct SinkMetrics {
    duration: metrics::Histogram,
    batch: metrics::Histogram,
    workflow: metrics::Counter,
    outreach: metrics::Counter,
}

/// Writes jobs to Redis through the per-thread writers, falling back to the
/// spool when one is configured.
#[derive(Clone)]
pub(crate) struct Sink {
    writers: writers::Writers,
    spool: Option<Spool>,
    layout: Layout,
    /// `redis.wait_replicas` and the `WAIT` deadline, when on.
    wait: Option<(u32, std::time::Duration)>,
    metrics: SinkMetrics,
}

impl Sink {
    /// Builds the clients and starts connecting them in the background
    /// (requests get [`SinkError::Disconnected`] until theirs is up): the
    /// shared one on the current runtime, one writer on each of `cores`.
    pub(crate) fn connect(
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
            metrics: SinkMetrics {
                duration: metrics::histogram!(m::SINK_DURATION),
                batch: metrics::histogram!(m::SINK_BATCH),
                workflow: metrics::counter!(m::JOBS_WRITTEN, "stream" => "workflow"),
                outreach: metrics::counter!(m::JOBS_WRITTEN, "stream" => "outreach"),
            },
        })
    }

    /// The shared client (for the idempotency store).
    pub(crate) fn redis(&self) -> &Client {
        self.writers.shared()
    }

    /// True once every client connected to Redis at least once.
    pub(crate) fn has_connected(&self) -> bool {
        self.writers.have_connected()
    }

    /// Stores every job of `jobs` (on the workflow stream of `settings`, or
    /// the workflow queue); `Ok` only once Redis acknowledged all of them, or
    /// (with a spool) they are synced to the spool. Several jobs are
    /// acknowledged, spooled or refused together (should Redis fail midway
    /// through the script, what it wrote stays; spooled stream copies are
    /// duplicates a worker drops by requestId and workflowId, spooled BullMQ
    /// jobs find theirs by id and add nothing). Times, counts and maps the
    /// outcome: a route only answers it.
    pub(crate) async fn enqueue(
        &self,
        jobs: &WorkflowJobs,
        settings: &Settings,
    ) -> Result<Stored, Reject> {
        let started = std::time::Instant::now();
        let stored = self.store_workflow(jobs, settings).await;
        if let Ok(Stored::Redis(())) = stored {
            self.metrics.batch.record(jobs.len() as f64);
        }
        self.account(started, jobs.len(), &self.metrics.workflow, stored)
    }

    async fn store_workflow(
        &self,
        jobs: &WorkflowJobs,
        settings: &Settings,
    ) -> Result<Stored, SinkError> {
        let spool_all = |out: &mut Vec<u8>| self.layout.spool_workflow(out, jobs, settings);
        let writer = self.writers.current();
        if !writer.is_connected() {
            return Box::pin(fallback::spool_or(
                self.spool.as_ref(),
                SinkError::Disconnected,
                spool_all,
            ))
            .await;
        }
        let stored = match self.layout.write_workflow(writer, jobs, settings).await {
            Ok(()) if self.wait.is_some() => Box::pin(self.writers.confirm()).await,
            Ok(()) => Ok(()),
            Err(e) => Err(SinkError::from(e)),
        };
        match stored {
            Ok(()) => Ok(Stored::Redis(())),
            Err(e) => Box::pin(fallback::spool_or(self.spool.as_ref(), e, spool_all)).await,
        }
    }

    /// Stores one outreach job: its stream entry id (or BullMQ job id) once
    /// Redis acknowledged it, or [`Stored::Spooled`] once it is synced to
    /// the spool.
    pub(crate) async fn enqueue_outreach(
        &self,
        job: &OutreachJob,
        settings: &Settings,
    ) -> Result<Stored<Bytes>, Reject> {
        let started = std::time::Instant::now();
        let stored = self.store_outreach(job, settings).await;
        self.account(started, 1, &self.metrics.outreach, stored)
    }

    async fn store_outreach(
        &self,
        job: &OutreachJob,
        settings: &Settings,
    ) -> Result<Stored<Bytes>, SinkError> {
        let writer = self.writers.current();
        let error = if writer.is_connected() {
            match self.layout.write_outreach(writer, job, settings).await {
                Ok(id) if self.wait.is_none() => return Ok(Stored::Redis(id)),
                Ok(id) => match Box::pin(self.writers.confirm()).await {
                    Ok(()) => return Ok(Stored::Redis(id)),
                    Err(e) => e,
                },
                Err(e) => SinkError::from(e),
            }
        } else {
            SinkError::Disconnected
        };
        fallback::spool_or(self.spool.as_ref(), error, |out| {
            self.layout.spool_outreach(out, job, settings)
        })
        .await
    }

    /// The bookkeeping of one request's write: its duration and jobs when
    /// Redis acknowledged them, the failure's reason, the caller's answer.
    fn account<T>(
        &self,
        started: std::time::Instant,
        jobs: usize,
        written: &metrics::Counter,
        stored: Result<Stored<T>, SinkError>,
    ) -> Result<Stored<T>, Reject> {
        match stored {
            Ok(Stored::Redis(id)) => {
                self.metrics
                    .duration
                    .record(started.elapsed().as_secs_f64());
                written.increment(jobs as u64);
                Ok(Stored::Redis(id))
            }
            Ok(Stored::Spooled) => Ok(Stored::Spooled),
            Err(e) => {
                metrics::counter!(m::JOB_WRITE_FAILURES, "reason" => e.reason()).increment(1);
                Err(Reject::from(e))
            }
        }
    }

    /// Starts replaying the spool into Redis (no-op without a spool).
    pub(crate) fn spawn_replay(
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
    pub(crate) async fn close(&self) {
        self.writers.close().await;
    }
}
